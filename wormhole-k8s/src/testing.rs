//! A fake Kubernetes API server for tests: real HTTP on a loopback (or test-namespace) socket,
//! spoken to by the real `kube` client, its watcher and its backoff.
//!
//! It implements exactly what Wormhole uses: list (with `limit`/`continue` paging) and chunked
//! watch of Nodes, WormholeNodes and WormholePeers with resourceVersions, `410 Gone` for versions older than the
//! last [`FakeApi::compact`], get, Node annotations ([`FakeApi::annotate_node`], as `kubectl
//! annotate` sets them), server-side apply of WormholeNodes and their status, Secret and
//! ConfigMap get, Event create/patch, and ownerReference garbage collection when a Node is
//! deleted. [`FakeApi::stop`] and [`FakeApi::start`] simulate an API server restart,
//! [`FakeApi::hang`] one that accepts requests and never answers. Applied
//! WormholeNodes must fit the CRD's `maxLength`s and may not change `spec.publicKey` in place
//! (the CRD's transition rule), as on a real server; they can be deleted (with a uid
//! precondition).
//!
//! Test-only code: behind the `fake-api` feature, hidden from the docs, not a public API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The watched kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Node.
    Node,
    /// `wormhole.dev/v1alpha1` WormholeNode.
    Wormhole,
    /// `wormhole.dev/v1alpha1` WormholePeer (written by admins: [`FakeApi::put_peer`]).
    Peer,
}

/// A request the server received (for asserting request shapes).
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// `Content-Type`.
    pub content_type: String,
    /// Body.
    pub body: String,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches asking for a version older than this get 410 Gone.
    oldest: u64,
    objects: BTreeMap<(Kind, String), Value>,
    history: Vec<(u64, Kind, &'static str, Value)>,
    secrets: BTreeMap<(String, String), Value>,
    configmaps: BTreeMap<(String, String), Value>,
    events: Vec<Value>,
    requests: Vec<Request>,
    next_uid: u64,
}

/// The fake API server.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    tx: broadcast::Sender<(u64, Kind, &'static str, Value)>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
    stop: Mutex<Option<broadcast::Sender<()>>>,
    hanging: std::sync::atomic::AtomicBool,
    /// WormholePeers are not served (their CRD is not installed): 404.
    peers_missing: std::sync::atomic::AtomicBool,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn query(target: &str, key: &str) -> Option<String> {
    let q = target.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_owned())
    })
}

/// The WormholeNode CRD's schema, as JSON.
fn crd_schema() -> Value {
    use kube::CustomResourceExt as _;
    let crd = crate::crd::WormholeNode::crd();
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap()
}

/// The first string in `value` longer than its `maxLength` in `schema`, or array longer than its
/// `maxItems`, as the API server words it (`spec.endpoint: Too long: may not be more than 64
/// bytes`).
fn too_long(schema: &Value, value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(text) => {
            let max = schema["maxLength"].as_u64()?;
            (text.chars().count() as u64 > max)
                .then(|| format!("{path}: Too long: may not be more than {max} bytes"))
        }
        Value::Object(fields) => fields.iter().find_map(|(key, field)| {
            let inner = schema["properties"].get(key)?;
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            too_long(inner, field, &path)
        }),
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                return Some(format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    items.len()
                ));
            }
            items
                .iter()
                .enumerate()
                .find_map(|(i, item)| too_long(&schema["items"], item, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

impl FakeApi {
    /// Starts a server on `addr` (port 0 picks one).
    pub async fn start_on(addr: SocketAddr) -> Arc<FakeApi> {
        let (tx, _) = broadcast::channel(100_000);
        let listener = TcpListener::bind(addr).await.expect("bind fake API server");
        let addr = listener.local_addr().unwrap();
        let api = Arc::new(FakeApi {
            state: Arc::default(),
            tx,
            addr,
            server: Mutex::new(None),
            stop: Mutex::new(None),
            hanging: Default::default(),
            peers_missing: Default::default(),
        });
        api.serve(listener);
        api
    }

    /// Starts a server on a free loopback port.
    pub async fn start() -> Arc<FakeApi> {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `kube` client for it (plain HTTP, no auth).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig file's text pointing at it.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n\
             users:\n- name: fake\n  user: {{}}\n",
            self.addr
        )
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let (stop_tx, _) = broadcast::channel(1);
        *self.stop.lock().unwrap() = Some(stop_tx.clone());
        let api = self.clone();
        // Subscribed before the task runs: a stop sent before its first poll is not lost.
        let mut stop = stop_tx.subscribe();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.recv() => return,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let api = api.clone();
                        let mut stop = stop_tx.subscribe();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.recv() => {}
                                _ = api.connection(stream) => {}
                            }
                        });
                    }
                }
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }

    /// Simulates the API server going away: closes the listener and every connection (watches
    /// included). State is kept.
    pub async fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        let task = self.server.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Makes the server accept connections and read requests but never answer (a hung or
    /// black-holed API server), until called with `false`. Requests received while hanging are
    /// never answered.
    pub fn hang(&self, hanging: bool) {
        self.hanging
            .store(hanging, std::sync::atomic::Ordering::SeqCst);
    }

    /// Serves WormholePeers (the default), or answers 404 for them as a server without their
    /// CRD does.
    pub fn serve_peers(&self, on: bool) {
        self.peers_missing
            .store(!on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The kind at `path`, if served.
    fn served(&self, path: &str) -> Option<(Kind, Option<String>, bool)> {
        let (kind, name, sub) = Self::kind_of(path)?;
        let missing = self.peers_missing.load(std::sync::atomic::Ordering::SeqCst);
        (kind != Kind::Peer || !missing).then(|| (kind, name.map(str::to_owned), sub))
    }

    /// Brings a stopped server back on the same address.
    pub async fn restart(self: &Arc<Self>) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Makes every watch from an older resourceVersion fail with 410 Gone (as etcd compaction
    /// does), forcing watchers to list again.
    pub fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        s.oldest = s.rv;
        s.history.clear();
    }

    fn record(
        &self,
        s: &mut State,
        kind: Kind,
        name: &str,
        kind_of_event: &'static str,
        mut object: Value,
    ) -> Value {
        s.rv += 1;
        object["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        if kind_of_event == "DELETED" {
            s.objects.remove(&(kind, name.to_owned()));
        } else {
            s.objects.insert((kind, name.to_owned()), object.clone());
        }
        s.history.push((s.rv, kind, kind_of_event, object.clone()));
        let _ = self.tx.send((s.rv, kind, kind_of_event, object.clone()));
        object
    }

    fn uid(s: &mut State) -> String {
        s.next_uid += 1;
        format!("00000000-0000-0000-0000-{:012}", s.next_uid)
    }

    /// Adds or replaces a Node with these pod CIDRs and InternalIP. Returns its uid.
    pub fn put_node(&self, name: &str, pod_cidrs: &[&str], internal_ip: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let existing = s.objects.get(&(Kind::Node, name.to_owned())).cloned();
        let uid = match &existing {
            Some(o) => o["metadata"]["uid"].as_str().unwrap().to_owned(),
            None => Self::uid(&mut s),
        };
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}]},
        });
        let event = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(&mut s, Kind::Node, name, event, node);
        uid
    }

    /// Sets (`Some`) or removes (`None`) an annotation on a Node, as `kubectl annotate node`
    /// does; the Node must exist.
    pub fn annotate_node(&self, name: &str, key: &str, value: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        let mut node = s
            .objects
            .get(&(Kind::Node, name.to_owned()))
            .cloned()
            .unwrap_or_else(|| panic!("no Node {name}"));
        let metadata = node["metadata"].as_object_mut().unwrap();
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap();
        match value {
            Some(value) => annotations.insert(key.to_owned(), json!(value)),
            None => annotations.remove(key),
        };
        self.record(&mut s, Kind::Node, name, "MODIFIED", node);
    }

    /// Deletes a Node and, like the garbage collector, the objects it owns.
    pub fn delete_node(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        let Some(node) = s.objects.get(&(Kind::Node, name.to_owned())).cloned() else {
            return;
        };
        let uid = node["metadata"]["uid"].clone();
        self.record(&mut s, Kind::Node, name, "DELETED", node);
        let owned: Vec<(String, Value)> = s
            .objects
            .iter()
            .filter(|((k, _), o)| {
                *k == Kind::Wormhole
                    && o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|((_, n), o)| (n.clone(), o.clone()))
            .collect();
        for (n, o) in owned {
            self.record(&mut s, Kind::Wormhole, &n, "DELETED", o);
        }
    }

    /// Writes a WormholeNode as given (an agent's object, possibly hostile), owned by the Node
    /// of the same name if it exists.
    pub fn put_wormhole(&self, name: &str, spec: Value) {
        let mut s = self.state.lock().unwrap();
        let owner = s
            .objects
            .get(&(Kind::Node, name.to_owned()))
            .map(|n| n["metadata"]["uid"].clone());
        let existing = s.objects.get(&(Kind::Wormhole, name.to_owned())).cloned();
        let uid = match &existing {
            Some(o) => o["metadata"]["uid"].clone(),
            None => json!(Self::uid(&mut s)),
        };
        let mut object = json!({
            "apiVersion": "wormhole.dev/v1alpha1", "kind": "WormholeNode",
            "metadata": {"name": name, "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
        });
        if let Some(owner) = owner {
            object["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": owner}]);
        }
        let event = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(&mut s, Kind::Wormhole, name, event, object);
    }

    /// Replaces the status of a WormholeNode as given (what its node's agent may write, possibly
    /// hostile); the WormholeNode must exist.
    pub fn put_wormhole_status(&self, name: &str, status: Value) {
        let mut s = self.state.lock().unwrap();
        let mut object = s
            .objects
            .get(&(Kind::Wormhole, name.to_owned()))
            .cloned()
            .unwrap_or_else(|| panic!("no WormholeNode {name}"));
        object["status"] = status;
        self.record(&mut s, Kind::Wormhole, name, "MODIFIED", object);
    }

    /// Creates or replaces a WormholePeer (what an admin's `kubectl apply` does), as given.
    pub fn put_peer(&self, name: &str, spec: Value) {
        let mut s = self.state.lock().unwrap();
        let existing = s.objects.get(&(Kind::Peer, name.to_owned())).cloned();
        let uid = match &existing {
            Some(o) => o["metadata"]["uid"].clone(),
            None => json!(Self::uid(&mut s)),
        };
        let object = json!({
            "apiVersion": "wormhole.dev/v1alpha1", "kind": "WormholePeer",
            "metadata": {"name": name, "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
        });
        let event = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(&mut s, Kind::Peer, name, event, object);
    }

    /// Deletes a WormholePeer (an admin's `kubectl delete`).
    pub fn delete_peer(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some(object) = s.objects.get(&(Kind::Peer, name.to_owned())).cloned() {
            self.record(&mut s, Kind::Peer, name, "DELETED", object);
        }
    }

    /// An object as stored.
    pub fn get(&self, kind: Kind, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(kind, name.to_owned()))
            .cloned()
    }

    /// Stores a Secret with one `key: value` (value as raw bytes).
    pub fn put_secret(&self, namespace: &str, name: &str, key: &str, value: &[u8]) {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(value);
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace}, "data": {key: data}});
        self.state
            .lock()
            .unwrap()
            .secrets
            .insert((namespace.into(), name.into()), secret);
    }

    /// Stores a ConfigMap with this data.
    pub fn put_configmap(&self, namespace: &str, name: &str, data: Value) {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": data});
        self.state
            .lock()
            .unwrap()
            .configmaps
            .insert((namespace.into(), name.into()), cm);
    }

    /// Events created so far.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// Requests received so far (watch and list requests included).
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    async fn connection(self: Arc<Self>, stream: TcpStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            );
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((k, v)) = header.split_once(':') {
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => length = v.trim().parse().unwrap_or(0),
                        "content-type" => content_type = v.trim().to_owned(),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            let body = String::from_utf8_lossy(&body).into_owned();
            self.state.lock().unwrap().requests.push(Request {
                method: method.clone(),
                target: target.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
            });
            if self.hanging.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let watch = query(&target, "watch").is_some_and(|w| w == "true" || w == "1");
            if watch && method == "GET" {
                self.watch(&target, &mut write).await;
                return;
            }
            let (code, reply) = self.handle(&method, &target, &content_type, &body);
            let text = reply.to_string();
            let head = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                text.len()
            );
            if write.write_all(head.as_bytes()).await.is_err()
                || write.write_all(text.as_bytes()).await.is_err()
            {
                return;
            }
        }
    }

    fn kind_of(path: &str) -> Option<(Kind, Option<&str>, bool)> {
        let (kind, rest) = if let Some(rest) = path.strip_prefix("/api/v1/nodes") {
            (Kind::Node, rest)
        } else if let Some(rest) = path.strip_prefix("/apis/wormhole.dev/v1alpha1/wormholenodes") {
            (Kind::Wormhole, rest)
        } else if let Some(rest) = path.strip_prefix("/apis/wormhole.dev/v1alpha1/wormholepeers") {
            (Kind::Peer, rest)
        } else {
            return None;
        };
        let rest = rest.trim_start_matches('/');
        let (name, sub) = match rest.split_once('/') {
            Some((n, s)) => (Some(n), s == "status"),
            None if rest.is_empty() => (None, false),
            None => (Some(rest), false),
        };
        Some((kind, name, sub))
    }

    fn handle(&self, method: &str, target: &str, content_type: &str, body: &str) -> (u16, Value) {
        let path = target.split('?').next().unwrap_or("");
        let mut s = self.state.lock().unwrap();
        if let Some((kind, name, status_sub)) = self.served(path) {
            return match (method, name.as_deref()) {
                ("GET", None) => {
                    let items: Vec<Value> = s
                        .objects
                        .iter()
                        .filter(|((k, _), _)| *k == kind)
                        .map(|(_, o)| o.clone())
                        .collect();
                    let limit: usize = query(target, "limit")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(usize::MAX);
                    let start: usize = query(target, "continue")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
                    let mut metadata = json!({"resourceVersion": s.rv.to_string()});
                    if start + page.len() < items.len() {
                        metadata["continue"] = json!((start + page.len()).to_string());
                    }
                    let list_kind = match kind {
                        Kind::Node => "NodeList",
                        Kind::Wormhole => "WormholeNodeList",
                        Kind::Peer => "WormholePeerList",
                    };
                    (
                        200,
                        json!({"kind": list_kind, "apiVersion": "v1", "metadata": metadata, "items": page}),
                    )
                }
                ("GET", Some(name)) => match s.objects.get(&(kind, name.to_owned())) {
                    Some(o) => (200, o.clone()),
                    None => (404, status(404, "NotFound", &format!("{name} not found"))),
                },
                ("PATCH", Some(name)) if kind == Kind::Wormhole => {
                    if !content_type.starts_with("application/apply-patch") {
                        return (
                            415,
                            status(415, "UnsupportedMediaType", "only server-side apply"),
                        );
                    }
                    if query(target, "fieldManager").is_none() {
                        return (
                            422,
                            status(422, "Invalid", "fieldManager is required for apply"),
                        );
                    }
                    let Ok(patch) = serde_json::from_str::<Value>(body) else {
                        return (400, status(400, "BadRequest", "body is not JSON"));
                    };
                    let existing = s.objects.get(&(kind, name.to_owned())).cloned();
                    let mut object = match existing {
                        Some(o) => o,
                        None if status_sub => {
                            return (404, status(404, "NotFound", &format!("{name} not found")));
                        }
                        None => {
                            let uid = Self::uid(&mut s);
                            json!({"apiVersion": "wormhole.dev/v1alpha1", "kind": "WormholeNode",
                                   "metadata": {"name": name, "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z"}})
                        }
                    };
                    let old_key = object["spec"]["publicKey"].clone();
                    if !status_sub && !old_key.is_null() && patch["spec"]["publicKey"] != old_key {
                        // The CRD's transition rule on spec.publicKey: self == oldSelf.
                        return (
                            422,
                            status(
                                422,
                                "Invalid",
                                &format!(
                                    "WormholeNode.wormhole.dev \"{name}\" is invalid: spec.publicKey: \
                                     Invalid value: \"string\": {}",
                                    crate::crd::PUBLIC_KEY_IMMUTABLE
                                ),
                            ),
                        );
                    }
                    if status_sub {
                        object["status"] = patch["status"].clone();
                    } else {
                        object["spec"] = patch["spec"].clone();
                        if let Some(refs) = patch["metadata"].get("ownerReferences") {
                            object["metadata"]["ownerReferences"] = refs.clone();
                        }
                    }
                    // Like the API server: the object must fit the CRD's schema.
                    if let Some(problem) = too_long(&crd_schema(), &object, "") {
                        return (
                            422,
                            status(
                                422,
                                "Invalid",
                                &format!(
                                    "WormholeNode.wormhole.dev \"{name}\" is invalid: {problem}"
                                ),
                            ),
                        );
                    }
                    let event = if s.objects.contains_key(&(kind, name.to_owned())) {
                        "MODIFIED"
                    } else {
                        "ADDED"
                    };
                    drop(s);
                    let mut s = self.state.lock().unwrap();
                    let stored = self.record(&mut s, kind, name, event, object);
                    (200, stored)
                }
                ("DELETE", Some(name)) if kind == Kind::Wormhole => {
                    let Some(object) = s.objects.get(&(kind, name.to_owned())).cloned() else {
                        return (404, status(404, "NotFound", &format!("{name} not found")));
                    };
                    let params: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                    let want = &params["preconditions"]["uid"];
                    if !want.is_null() && *want != object["metadata"]["uid"] {
                        return (
                            409,
                            status(
                                409,
                                "Conflict",
                                &format!(
                                    "Precondition failed: UID in precondition: {want}, UID in object meta: {}",
                                    object["metadata"]["uid"]
                                ),
                            ),
                        );
                    }
                    let deleted = self.record(&mut s, kind, name, "DELETED", object);
                    (200, deleted)
                }
                _ => (
                    405,
                    status(
                        405,
                        "MethodNotAllowed",
                        "not supported by the fake API server",
                    ),
                ),
            };
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                match s.secrets.get(&((*ns).to_owned(), (*name).to_owned())) {
                    Some(o) => (200, o.clone()),
                    None => (
                        404,
                        status(404, "NotFound", &format!("secrets \"{name}\" not found")),
                    ),
                }
            }
            ("GET", ["api", "v1", "namespaces", ns, "configmaps", name]) => {
                match s.configmaps.get(&((*ns).to_owned(), (*name).to_owned())) {
                    Some(o) => (200, o.clone()),
                    None => (
                        404,
                        status(404, "NotFound", &format!("configmaps \"{name}\" not found")),
                    ),
                }
            }
            (
                "POST" | "PATCH",
                [
                    "apis",
                    "events.k8s.io",
                    "v1",
                    "namespaces",
                    _ns,
                    "events",
                    ..,
                ],
            ) => {
                let event: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                s.events.push(event.clone());
                (201, event)
            }
            _ => (
                404,
                status(
                    404,
                    "NotFound",
                    &format!("the fake API server does not serve {method} {path}"),
                ),
            ),
        }
    }

    async fn watch(&self, target: &str, write: &mut tokio::net::tcp::OwnedWriteHalf) {
        let path = target.split('?').next().unwrap_or("");
        let Some((kind, None, _)) = self.served(path) else {
            return;
        };
        let since: u64 = query(target, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut live = self.tx.subscribe();
        let backlog: Result<Vec<(u64, Kind, &'static str, Value)>, ()> = {
            let s = self.state.lock().unwrap();
            if since < s.oldest {
                Err(())
            } else {
                Ok(s.history
                    .iter()
                    .filter(|(rv, k, _, _)| *rv > since && *k == kind)
                    .cloned()
                    .collect())
            }
        };
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let send = |value: Value| {
            let line = format!("{value}\n");
            format!("{:x}\r\n{line}\r\n", line.len())
        };
        let backlog = match backlog {
            Ok(b) => b,
            Err(()) => {
                let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                let _ = write.write_all(send(gone).as_bytes()).await;
                let _ = write.write_all(b"0\r\n\r\n").await;
                return;
            }
        };
        let mut last = since;
        for (rv, _, event, object) in backlog {
            last = rv;
            if write
                .write_all(send(json!({"type": event, "object": object})).as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
        while let Ok((rv, k, event, object)) = live.recv().await {
            if k != kind || rv <= last {
                continue;
            }
            if write
                .write_all(send(json!({"type": event, "object": object})).as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
