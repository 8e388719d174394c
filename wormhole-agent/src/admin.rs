//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`, on loopback by default
//! (the DaemonSet binds it on the host IP, where every pod can reach it: treat clients as
//! untrusted).
//!
//! Who a client is comes from its source address ([`Client`]): this host (loopback, or the very
//! address it connected to: the kubelet probing a hostNetwork pod connects to the node's own
//! address from the host, and so does `wormhole status`), a source named by `--admin-allow` or
//! `--metrics-allow`, or anyone else (pods, other hosts). Everyone is served the probes
//! (`/healthz`, `/readyz`); `/status` (every peer, its endpoint and handshakes) only this host
//! and `--admin-allow` sources; `/metrics` those and `--metrics-allow` sources.
//!
//! HTTP is hyper's (HTTP/1.0 and 1.1, GET only, one request per connection). The probes are
//! always answered, and what a client can cost is bounded, whatever it does:
//! - every connection is accepted at once, and one over its class's limits ([`Limits`]: this
//!   host's own, the allowed sources', everyone else's, and [`Limits::per_source`] for any one
//!   address other than this host) is reset at once: no other source can fill the slots or the
//!   accept queue that this host's connections (the kubelet's probes) need;
//! - a client has [`Limits::header_timeout`] to send its request, and each connection lives at
//!   most [`Limits::deadline`], request and reply together, however slowly the client sends or
//!   reads;
//! - no request reads the device: `/status` and `/metrics` are rendered from the status the
//!   reconciler publishes, with the device's counters (handshakes, bytes) read at most once per
//!   [`FRESH_FOR`] whatever the number of requests, and each rendered body is one shared buffer
//!   that every connection sending it points to.
//!
//! [`listen_and_serve`] binds in the background and keeps retrying: a busy or squatted admin
//! port never keeps the mesh from being applied.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use wormhole_core::ObservedDevice;
use wormhole_core::{ErrorChain, Status, WireGuardDevice};

use crate::ForeignCni;
use crate::metrics::Metrics;
use crate::preflight::PreflightReport;
use crate::view::NodeSettingsView;
use crate::view::StatusView;

/// Rendered bodies, and the device's counters behind them, are reused for this long.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);
/// A device read for counters that takes longer is given up (the status's counters are served).
const DEVICE_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The socket send buffer of an admin connection (the kernel doubles it for its bookkeeping).
const SEND_BUFFER: usize = 64 * 1024;
/// Between attempts to bind the admin address.
pub(crate) const BIND_RETRY: Duration = Duration::from_secs(2);
/// A failure to bind is logged again (as a warning) at most this often while it lasts.
const BIND_WARN_EVERY: Duration = Duration::from_secs(60);

/// What the admin server allows one client, and each class of clients together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections from this host at a time (the kubelet's probes, `wormhole status`).
    pub host: usize,
    /// Connections from `--admin-allow` and `--metrics-allow` sources at a time, together.
    pub allowed: usize,
    /// Connections from every other source (pods, other hosts) at a time, together.
    pub others: usize,
    /// Connections from any one address other than this host's at a time.
    pub per_source: usize,
    /// The longest a client may take to send its request head.
    pub header_timeout: Duration,
    /// The longest a connection lives, reading the request and writing the reply.
    pub deadline: Duration,
}

impl Limits {
    /// Plenty for probes, a scraper and `wormhole status`; with the timeouts, a flood of
    /// connections costs at most this many sockets and buffers, and never this host's slots.
    pub(crate) const DEFAULT: Limits = Limits {
        host: 16,
        allowed: 16,
        others: 32,
        per_source: 4,
        header_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(10),
    };
}

/// Which sources besides this host are served more than the probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Access {
    /// Served everything (`--admin-allow`).
    pub status: Vec<IpNet>,
    /// Served `/metrics` (`--metrics-allow`).
    pub metrics: Vec<IpNet>,
}

/// Who a client is, from its source address: what it is served, and whose slots it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// This host: a loopback address, or the address the client connected to (only this
    /// host's network namespace can connect from the very address it connects to: a packet
    /// from elsewhere with a local source address is dropped as a martian, and the handshake's
    /// reply would not reach it anyway). The kubelet's probes, `wormhole status`. Everything.
    Host,
    /// An `--admin-allow` source: everything.
    Operator,
    /// A `--metrics-allow` source: `/metrics` and the probes.
    Scraper,
    /// Anyone else (pods, other hosts): the probes.
    Other,
}

impl Client {
    /// The client connected from `peer` to `local`.
    pub(crate) fn of(peer: IpAddr, local: IpAddr, access: &Access) -> Client {
        // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
        let (peer, local) = (peer.to_canonical(), local.to_canonical());
        if peer.is_loopback() || peer == local {
            Client::Host
        } else if access.status.iter().any(|net| net.contains(&peer)) {
            Client::Operator
        } else if access.metrics.iter().any(|net| net.contains(&peer)) {
            Client::Scraper
        } else {
            Client::Other
        }
    }

    /// May read `/status`.
    fn status(self) -> bool {
        matches!(self, Client::Host | Client::Operator)
    }

    /// May read `/metrics`.
    fn metrics(self) -> bool {
        self != Client::Other
    }

    /// The class of its connection slots, as the refused-connections metric names it.
    fn class(self) -> &'static str {
        match self {
            Client::Host => "host",
            Client::Operator | Client::Scraper => "allowed",
            Client::Other => "other",
        }
    }
}

/// The connections one class of clients holds: at most `limit` in all, and `per_source` from
/// any one address.
struct Pool {
    limit: usize,
    per_source: usize,
    /// How many in all, and from each address that holds any (at most `limit` entries).
    held: std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection's place in its [`Pool`], given back when dropped.
struct Slot {
    pool: Arc<Pool>,
    source: IpAddr,
}

impl Pool {
    fn new(limit: usize, per_source: usize) -> Arc<Pool> {
        Arc::new(Pool {
            limit,
            per_source,
            held: std::sync::Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `source`, if its pool and its address have one left.
    fn take(self: &Arc<Self>, source: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_source) = &mut *held;
        let mine = by_source.get(&source).copied().unwrap_or(0);
        if *total >= self.limit || mine >= self.per_source {
            return None;
        }
        *total += 1;
        by_source.insert(source, mine + 1);
        Some(Slot {
            pool: self.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.pool.held.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_source) = &mut *held;
        *total -= 1;
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// The pools of the three classes of clients.
struct Pools {
    host: Arc<Pool>,
    allowed: Arc<Pool>,
    others: Arc<Pool>,
}

impl Pools {
    fn new(limits: &Limits) -> Self {
        Pools {
            // This host's clients all come from one or two addresses: no cap per address.
            host: Pool::new(limits.host, limits.host),
            allowed: Pool::new(limits.allowed, limits.per_source),
            others: Pool::new(limits.others, limits.per_source),
        }
    }

    fn take(&self, client: Client, source: IpAddr) -> Option<Slot> {
        match client {
            Client::Host => &self.host,
            Client::Operator | Client::Scraper => &self.allowed,
            Client::Other => &self.others,
        }
        .take(source.to_canonical())
    }
}

/// What the handlers read.
pub(crate) struct Admin {
    /// The reconciler's status.
    pub status: watch::Receiver<Status>,
    /// For fresh handshake times and counters on `/status` and `/metrics` (read at most once
    /// per [`FRESH_FOR`]).
    pub device: Arc<dyn WireGuardDevice>,
    /// Histogram state.
    pub metrics: Arc<Metrics>,
    /// `/healthz` fails when no pass finished within this long (the loop is stuck).
    pub liveness: Duration,
    /// When the agent started.
    pub started: SystemTime,
    /// Who besides this host may read `/status` and `/metrics`.
    pub access: Access,
    /// The running agent's latest preflight (in `/status`; foreign CNI configurations in it
    /// fail `/readyz` with [`ForeignCni::Fail`]).
    pub preflight: watch::Receiver<Option<PreflightReport>>,
    /// What `/readyz` makes of foreign CNI configurations.
    pub foreign_cni: ForeignCni,
    /// Kubernetes mode: this node's per-node settings (in `/status`).
    pub node_settings: watch::Receiver<Option<NodeSettingsView>>,
}

impl Admin {
    /// With [`ForeignCni::Fail`], why `/readyz` fails: the CNI configurations that take
    /// precedence over Wormhole's (names escaped by the preflight).
    fn foreign_cni_block(&self) -> Option<String> {
        if self.foreign_cni != ForeignCni::Fail {
            return None;
        }
        let report = self.preflight.borrow();
        let foreign = &report.as_ref()?.foreign_cni_configs;
        if foreign.is_empty() {
            return None;
        }
        Some(format!(
            "not ready: {} take(s) precedence over {} (--foreign-cni fail): new pods on this \
             node would not get Wormhole's network\n",
            foreign.join(", "),
            crate::cni::CONFLIST
        ))
    }
}

#[derive(Clone, Copy)]
enum Body {
    Status,
    Metrics,
}

/// The latest rendered bodies and device counters. Behind an async mutex: concurrent requests
/// for a stale body wait for the one render (and device read) in progress instead of each
/// doing their own.
struct Cache {
    /// Our own handle on the reconciler's status, to notice its changes.
    status: watch::Receiver<Status>,
    /// The device as last read (counters, learned endpoints), and when.
    counters: Option<(Instant, ObservedDevice)>,
    status_body: Option<(Instant, Bytes)>,
    metrics_body: Option<(Instant, Bytes)>,
}

struct Server {
    admin: Arc<Admin>,
    cache: Mutex<Cache>,
}

/// The status with the newer of its counters and the device's (they move between passes), and
/// the endpoint the device learned for a peer that has none configured (a peer behind NAT is
/// known by its handshakes).
fn with_counters(mut status: Status, device: &ObservedDevice) -> Status {
    for peer in &mut status.peers {
        if peer.endpoint.is_none() {
            peer.endpoint = device
                .config
                .peers
                .get(&peer.public_key)
                .and_then(|c| c.endpoint);
        }
        if let Some(stats) = device.stats.get(&peer.public_key) {
            peer.latest_handshake = peer.latest_handshake.max(stats.latest_handshake);
            peer.rx_bytes = peer.rx_bytes.max(stats.rx_bytes);
            peer.tx_bytes = peer.tx_bytes.max(stats.tx_bytes);
        }
    }
    status
}

impl Server {
    /// The body of `/status` or `/metrics`: shared, rendered at most once per [`FRESH_FOR`]
    /// (and again as soon as the reconciler publishes a new status).
    async fn body(&self, which: Body) -> Bytes {
        let mut cache = self.cache.lock().await;
        if cache.status.has_changed().unwrap_or(false) {
            cache.status_body = None;
            cache.metrics_body = None;
        }
        let slot = match which {
            Body::Status => &cache.status_body,
            Body::Metrics => &cache.metrics_body,
        };
        if let Some((_, body)) = slot.as_ref().filter(|(at, _)| at.elapsed() < FRESH_FOR) {
            return body.clone();
        }
        if cache
            .counters
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= FRESH_FOR)
        {
            let read = tokio::time::timeout(DEVICE_READ_TIMEOUT, self.admin.device.read()).await;
            let device = match read {
                Ok(Ok(Some(device))) => device,
                Ok(Ok(None)) => ObservedDevice::default(),
                Ok(Err(e)) => {
                    tracing::debug!(error = %ErrorChain(&e), "admin: cannot read the device's counters");
                    ObservedDevice::default()
                }
                Err(_) => {
                    tracing::debug!("admin: reading the device's counters timed out");
                    ObservedDevice::default()
                }
            };
            cache.counters = Some((Instant::now(), device));
        }
        let status = cache.status.borrow_and_update().clone();
        let status = match &cache.counters {
            Some((_, counters)) => with_counters(status, counters),
            None => status,
        };
        let now = SystemTime::now();
        let body = Bytes::from(match which {
            Body::Status => {
                let preflight = self.admin.preflight.borrow().clone();
                let settings = self.admin.node_settings.borrow().clone();
                let view = StatusView::new(&status, now)
                    .with_preflight(preflight)
                    .with_node_settings(settings);
                serde_json::to_string_pretty(&view).expect("serializable")
            }
            Body::Metrics => self.admin.metrics.render(&status, now),
        });
        let slot = match which {
            Body::Status => &mut cache.status_body,
            Body::Metrics => &mut cache.metrics_body,
        };
        *slot = Some((Instant::now(), body.clone()));
        body
    }

    async fn respond(
        &self,
        method: &Method,
        path: &str,
        client: Client,
    ) -> (StatusCode, &'static str, Bytes) {
        const TEXT: &str = "text/plain";
        if method != Method::GET {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                Bytes::from_static(b"only GET\n"),
            );
        }
        let admin = &self.admin;
        match path {
            "/status" if !client.status() => (
                StatusCode::FORBIDDEN,
                TEXT,
                Bytes::from_static(
                    b"forbidden: /status is served to this host and to --admin-allow sources only \
                      (pods and other hosts are served /healthz and /readyz)\n",
                ),
            ),
            "/metrics" if !client.metrics() => (
                StatusCode::FORBIDDEN,
                TEXT,
                Bytes::from_static(
                    b"forbidden: /metrics is served to this host and to --admin-allow and \
                      --metrics-allow sources only (pods and other hosts are served /healthz \
                      and /readyz)\n",
                ),
            ),
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.body(Body::Metrics).await,
            ),
            "/status" => (
                StatusCode::OK,
                "application/json",
                self.body(Body::Status).await,
            ),
            "/readyz" => {
                let not_ready = admin.status.borrow().not_ready_reason();
                match (not_ready, admin.foreign_cni_block()) {
                    (Some(why), _) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        Bytes::from(format!("not ready: {why}\n")),
                    ),
                    (None, Some(why)) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, Bytes::from(why)),
                    (None, None) => (StatusCode::OK, TEXT, Bytes::from_static(b"ready\n")),
                }
            }
            "/healthz" => {
                let last = admin
                    .status
                    .borrow()
                    .last_pass
                    .as_ref()
                    .map(|p| p.at)
                    .unwrap_or(admin.started);
                if SystemTime::now().duration_since(last).unwrap_or_default() <= admin.liveness {
                    (StatusCode::OK, TEXT, Bytes::from_static(b"ok\n"))
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        Bytes::from_static(b"unhealthy: no reconcile pass finished recently\n"),
                    )
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                Bytes::from_static(b"not found: try /status, /metrics, /healthz, /readyz\n"),
            ),
        }
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        client: Client,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (code, kind, body) = self
            .respond(request.method(), request.uri().path(), client)
            .await;
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = code;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
        Ok(response)
    }
}

/// Serves on `listener` with the default [`Limits`] until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    serve_with(listener, admin, Limits::DEFAULT).await;
}

/// Serves on `listener` within `limits` until the task is dropped.
pub(crate) async fn serve_with(listener: TcpListener, admin: Arc<Admin>, limits: Limits) {
    let server = Arc::new(Server {
        cache: Mutex::new(Cache {
            status: admin.status.clone(),
            counters: None,
            status_body: None,
            metrics_body: None,
        }),
        admin,
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // One request per connection (as before; `Connection: close`), and a request head of at
    // most 16 KiB (hyper's smallest buffer limit is 8 KiB), sent within the header timeout.
    http.keep_alive(false)
        .max_buf_size(16 * 1024)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let pools = Pools::new(&limits);
    let mut warned: Option<Instant> = None;
    loop {
        // Accept at once, whatever is open: a connection that waited in the accept queue would
        // wait behind whoever filled it, the kubelet's probes too.
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let local = stream.local_addr().map_or(peer.ip(), |a| a.ip());
        let client = Client::of(peer.ip(), local, &server.admin.access);
        let Some(slot) = pools.take(client, peer.ip()) else {
            // Reset at once: the connection costs nothing more, and the client learns now.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            server
                .admin
                .metrics
                .refused_admin_connection(client.class());
            if warned.is_none_or(|at| at.elapsed() >= BIND_WARN_EVERY) {
                tracing::warn!(
                    source = %peer.ip(), class = client.class(),
                    "admin: refusing connections over the limits (at most {} at a time from \
                     any one address other than this host's, {} from pods and other hosts, {} \
                     from allowed sources, {} from this host); the probes from this host are \
                     answered regardless; counted in wormhole_admin_connections_refused_total",
                    limits.per_source, limits.others, limits.allowed, limits.host
                );
                warned = Some(Instant::now());
            }
            continue;
        };
        // The kernel's memory for the connection is bounded too: a reply is written into at
        // most SEND_BUFFER bytes of socket buffer (autotuning would grow it to megabytes).
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER) {
            tracing::debug!(error = %ErrorChain(&e), "admin: cannot set SO_SNDBUF");
        }
        let handler = server.clone();
        let service = hyper::service::service_fn(move |request| {
            let handler = handler.clone();
            async move { handler.handle(request, client).await }
        });
        let http = http.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let connection = http.serve_connection(TokioIo::new(&mut stream), service);
            match tokio::time::timeout(limits.deadline, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %ErrorChain(&e), "admin connection"),
                Err(_) => {
                    // Reset rather than close: a closed socket would keep sending what is
                    // left in its buffer to a client that does not read, for minutes.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    tracing::debug!(
                        deadline = ?limits.deadline,
                        "admin connection reset at its deadline (slow client)"
                    );
                }
            }
            drop(stream);
            drop(slot);
        });
    }
}

/// Binds `addr` and serves, until the task is dropped. A failure to bind (the port is busy or
/// squatted, the address is not up yet) is logged and retried every [`BIND_RETRY`] in the
/// background, so that the mesh is applied regardless.
pub(crate) async fn listen_and_serve(addr: SocketAddr, admin: Arc<Admin>) {
    let mut failures = 0u64;
    let mut warned: Option<Instant> = None;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(e) => {
                failures += 1;
                if warned.is_none_or(|at| at.elapsed() >= BIND_WARN_EVERY) {
                    tracing::warn!(
                        %addr, attempts = failures, error = %ErrorChain(&e),
                        "cannot listen on --admin-addr (another process holds the port?): \
                         /status, /metrics and the probes are unavailable until it can; the mesh \
                         is applied regardless; retrying every {}s",
                        BIND_RETRY.as_secs()
                    );
                    warned = Some(Instant::now());
                } else {
                    tracing::debug!(%addr, attempts = failures, error = %ErrorChain(&e), "cannot listen on --admin-addr yet");
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    };
    let access = &admin.access;
    let (status_from, metrics_from) = (nets(&access.status), nets(&access.metrics));
    if failures > 0 {
        tracing::info!(%addr, failed_attempts = failures, status_from, metrics_from, "admin server listening at last: /healthz /readyz to every client, /status and /metrics to this host and the sources named");
    } else {
        tracing::info!(%addr, status_from, metrics_from, "admin server: /healthz /readyz to every client, /status and /metrics to this host and the sources named");
    }
    serve(listener, admin).await;
}

/// `nets` for a log line: comma-separated, or `none`.
fn nets(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "none".into();
    }
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use wormhole_core::DeviceState;
    use wormhole_core::MemoryDevice;
    use wormhole_core::PrivateKey;
    use wormhole_core::{PeerStats, PeerStatus, PublicKey};

    /// An agent's admin state with one peer, over an in-memory device that counts its reads.
    fn admin() -> (
        Arc<Admin>,
        watch::Sender<Status>,
        Arc<MemoryDevice>,
        PublicKey,
    ) {
        let peer = PrivateKey::generate().public_key();
        let device = Arc::new(MemoryDevice::default());
        device.set_state(Some(DeviceState::default()));
        device.set_stats(
            peer,
            PeerStats {
                latest_handshake: Some(SystemTime::now()),
                rx_bytes: 4096,
                tx_bytes: 1,
            },
        );
        let (tx, rx) = watch::channel({
            let mut v = Status::default();
            v.node_name = "n1".into();
            v.peers = vec![PeerStatus::new("n2", peer)];
            v
        });
        let admin = Admin {
            status: rx,
            device: device.clone(),
            metrics: Arc::new(Metrics::new(crate::PeerMetrics::All)),
            liveness: Duration::from_secs(60),
            started: SystemTime::now(),
            access: Access::default(),
            preflight: watch::channel(None).1,
            foreign_cni: ForeignCni::Warn,
            node_settings: watch::channel(None).1,
        };
        (Arc::new(admin), tx, device, peer)
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// A raw `GET path HTTP/1.0`, as `wormhole status` and the e2e harness send it: the status
    /// line and the body.
    async fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: wormhole\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
            .await
            .expect("a reply within 10 s")
            .unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("a head");
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_and_metrics_do_not_read_the_device_per_request() {
        let (admin, tx, device, peer) = admin();
        let (listener, addr) = listener().await;
        let server = tokio::spawn(serve(listener, admin));

        let before = device.reads();
        let start = Instant::now();
        let requests = 200;
        let mut clients = Vec::new();
        // Half as many at a time as this host may hold connections (a client sees the end of
        // its reply a moment before the server gives its slot back).
        let slots = Arc::new(tokio::sync::Semaphore::new(Limits::DEFAULT.host / 2));
        for i in 0..requests {
            let path = if i % 2 == 0 { "/status" } else { "/metrics" };
            let slot = slots.clone().acquire_owned().await.unwrap();
            clients.push(tokio::spawn(async move {
                let reply = get(addr, path).await;
                drop(slot);
                reply
            }));
        }
        for client in clients {
            let (line, body) = client.await.unwrap();
            assert!(line.ends_with(" 200 OK"), "{line}");
            // The device's counters, not the status's zeros.
            assert!(
                body.contains("\"rx_bytes\": 4096")
                    || body.contains("wormhole_peer_receive_bytes_total{peer=\"n2\"} 4096"),
                "{body}"
            );
        }
        let reads = device.reads() - before;
        let bound = start.elapsed().as_secs() + 1;
        assert!(
            reads <= bound,
            "{requests} requests read the device {reads} times in {:?} (at most {bound}: once per second)",
            start.elapsed()
        );

        // Still fresh: new counters show within a second, a new status at once.
        device.set_stats(
            peer,
            PeerStats {
                latest_handshake: Some(SystemTime::now()),
                rx_bytes: 8192,
                tx_bytes: 1,
            },
        );
        tx.send_modify(|s| s.node_name = "renamed".into());
        let (_, body) = get(addr, "/status").await;
        assert!(body.contains("\"node\": \"renamed\""), "{body}");
        tokio::time::sleep(FRESH_FOR).await;
        let (_, body) = get(addr, "/status").await;
        assert!(body.contains("\"rx_bytes\": 8192"), "{body}");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endpoints_answer_http_1_0_as_before() {
        let (admin, tx, _, _) = admin();
        let (listener, addr) = listener().await;
        let server = tokio::spawn(serve(listener, admin));
        assert_eq!(
            get(addr, "/readyz").await.0,
            "HTTP/1.0 503 Service Unavailable"
        );
        tx.send_modify(|s| {
            s.configured = true;
            s.device_present = true;
        });
        assert_eq!(
            get(addr, "/readyz").await,
            ("HTTP/1.0 200 OK".into(), "ready\n".into())
        );
        assert_eq!(get(addr, "/healthz").await.0, "HTTP/1.0 200 OK");
        assert_eq!(get(addr, "/nope").await.0, "HTTP/1.0 404 Not Found");
        let (line, body) = get(addr, "/status?x=1").await;
        assert_eq!(line, "HTTP/1.0 200 OK");
        let view: StatusView = serde_json::from_str(&body).unwrap();
        assert_eq!(view.node, "n1");

        // Not GET: refused. HTTP/1.1 gets HTTP/1.1, and the connection is closed after one reply.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
        assert!(reply.contains("connection: close"), "{reply}");
        server.abort();
    }

    #[tokio::test]
    async fn foreign_cni_configurations_are_in_status_and_fail_readiness_when_asked() {
        let report = crate::PreflightReport {
            checks: vec![crate::Check {
                check: "cni-config".into(),
                result: crate::Level::Error,
                detail: "10-flannel.conflist in /etc/cni/net.d sort(s) before ...".into(),
                fix: Some("delete it".into()),
            }],
            foreign_cni_configs: vec!["10-flannel.conflist".into()],
        };
        for (policy, want) in [
            (ForeignCni::Warn, "HTTP/1.0 200 OK"),
            (ForeignCni::Fail, "HTTP/1.0 503 Service Unavailable"),
        ] {
            let (admin, tx, device, _) = admin();
            let (preflight_tx, preflight) = watch::channel(None);
            let admin = Arc::new(Admin {
                preflight,
                foreign_cni: policy,
                node_settings: watch::channel(None).1,
                status: admin.status.clone(),
                device,
                metrics: admin.metrics.clone(),
                liveness: admin.liveness,
                started: admin.started,
                access: Access::default(),
            });
            tx.send_modify(|s| {
                s.configured = true;
                s.device_present = true;
            });
            let (listener, addr) = listener().await;
            let server = tokio::spawn(serve(listener, admin));
            assert_eq!(
                get(addr, "/readyz").await.0,
                "HTTP/1.0 200 OK",
                "no report yet"
            );
            preflight_tx.send_replace(Some(report.clone()));
            let (line, body) = get(addr, "/readyz").await;
            assert_eq!(line, want, "{policy:?}: {body}");
            if policy == ForeignCni::Fail {
                assert!(
                    body.starts_with(
                        "not ready: 10-flannel.conflist take(s) precedence over \
                         10-wormhole.conflist (--foreign-cni fail)"
                    ),
                    "{body}"
                );
            }
            tx.send_modify(|s| s.passes += 1);
            let view: StatusView = serde_json::from_str(&get(addr, "/status").await.1).unwrap();
            assert_eq!(view.foreign_cni_configs, ["10-flannel.conflist"]);
            assert_eq!(view.preflight.as_ref(), Some(&report));
            assert!(!view.all_ok(), "a foreign configuration is not ok");
            server.abort();
        }
    }

    #[test]
    fn clients_are_told_apart_by_their_source() {
        let access = Access {
            status: vec![
                "192.0.2.7/32".parse().unwrap(),
                "2001:db8::/64".parse().unwrap(),
            ],
            metrics: vec![
                "10.244.0.0/16".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap(),
            ],
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let node = ip("192.168.1.10");
        for (peer, local, want) in [
            // The kubelet probing a hostNetwork pod: from the node's address, to it.
            ("192.168.1.10", "192.168.1.10", Client::Host),
            ("127.0.0.1", "127.0.0.1", Client::Host),
            ("127.0.0.2", "127.0.0.1", Client::Host),
            ("::1", "::1", Client::Host),
            ("::ffff:192.168.1.10", "::ffff:192.168.1.10", Client::Host),
            ("::ffff:127.0.0.1", "192.168.1.10", Client::Host),
            // A pod on this node, another node (or a pod there, masqueraded as it).
            ("10.99.1.5", "192.168.1.10", Client::Other),
            ("192.168.1.11", "192.168.1.10", Client::Other),
            // Named: --admin-allow wins over --metrics-allow.
            ("192.0.2.7", "192.168.1.10", Client::Operator),
            ("::ffff:192.0.2.7", "::ffff:192.168.1.10", Client::Operator),
            ("2001:db8::5", "2001:db8::1", Client::Operator),
            ("192.0.2.8", "192.168.1.10", Client::Scraper),
            ("10.244.3.4", "192.168.1.10", Client::Scraper),
        ] {
            assert_eq!(
                Client::of(ip(peer), ip(local), &access),
                want,
                "{peer} -> {local}"
            );
        }
        // Nothing named: only this host is more than a prober.
        assert_eq!(
            Client::of(ip("192.0.2.7"), node, &Access::default()),
            Client::Other
        );
    }

    #[test]
    fn pools_cap_each_class_and_each_source() {
        let limits = Limits {
            host: 3,
            allowed: 2,
            others: 4,
            per_source: 2,
            ..Limits::DEFAULT
        };
        let pools = Pools::new(&limits);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (pod, pod2, pod3) = (ip("10.99.1.5"), ip("10.99.1.6"), ip("10.99.1.7"));
        let a = pools.take(Client::Other, pod).expect("1st from a pod");
        let _b = pools.take(Client::Other, pod).expect("2nd from a pod");
        assert!(pools.take(Client::Other, pod).is_none(), "3rd from one pod");
        // The same address as ::ffff:a.b.c.d counts as the same source.
        assert!(pools.take(Client::Other, ip("::ffff:10.99.1.5")).is_none());
        let _c = pools.take(Client::Other, pod2).expect("another pod");
        let _d = pools.take(Client::Other, pod2).expect("another pod, 2nd");
        assert!(
            pools.take(Client::Other, pod3).is_none(),
            "every other slot held"
        );
        // This host's slots and the allowed sources' are their own.
        let host = ip("192.168.1.10");
        let held: Vec<Slot> = (0..3)
            .map(|_| pools.take(Client::Host, host).expect("this host"))
            .collect();
        assert!(
            pools.take(Client::Host, host).is_none(),
            "4th from this host"
        );
        let _e = pools
            .take(Client::Scraper, ip("192.0.2.8"))
            .expect("scraper");
        let _f = pools
            .take(Client::Operator, ip("192.0.2.7"))
            .expect("operator");
        assert!(pools.take(Client::Operator, ip("192.0.2.9")).is_none());
        // Given back when dropped.
        drop(a);
        let _g = pools
            .take(Client::Other, pod3)
            .expect("a slot was given back");
        drop(held);
        assert!(pools.take(Client::Host, host).is_some());
        assert_eq!(pools.others.held.lock().unwrap().1.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_client_is_served_what_it_may_read() {
        let (admin, _tx, _, _) = admin();
        let server = Server {
            cache: Mutex::new(Cache {
                status: admin.status.clone(),
                counters: None,
                status_body: None,
                metrics_body: None,
            }),
            admin,
        };
        let get = Method::GET;
        for (client, status, metrics) in [
            (Client::Host, 200, 200),
            (Client::Operator, 200, 200),
            (Client::Scraper, 403, 200),
            (Client::Other, 403, 403),
        ] {
            let (code, _, body) = server.respond(&get, "/status", client).await;
            assert_eq!(code.as_u16(), status, "{client:?} /status");
            let text = String::from_utf8_lossy(&body);
            // A refusal tells nothing of the peers, and says who is served.
            assert_eq!(text.contains("n2"), status == 200, "{client:?}: {text}");
            if status == 403 {
                assert!(text.contains("--admin-allow"), "{text}");
            }
            let (code, _, body) = server.respond(&get, "/metrics", client).await;
            assert_eq!(code.as_u16(), metrics, "{client:?} /metrics");
            let text = String::from_utf8_lossy(&body);
            assert_eq!(text.contains("peer=\"n2\""), metrics == 200, "{text}");
            for path in ["/healthz", "/readyz"] {
                let (code, _, _) = server.respond(&get, path, client).await;
                assert!(code == 200 || code == 503, "{client:?} {path}: {code}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_bounded_and_closed_at_their_deadline() {
        let (admin, tx, _, _) = admin();
        let (listener, addr) = listener().await;
        let limits = Limits {
            host: 4,
            header_timeout: Duration::from_millis(500),
            deadline: Duration::from_millis(2500),
            ..Limits::DEFAULT
        };
        let metrics = admin.metrics.clone();
        let server = tokio::spawn(serve_with(listener, admin, limits));

        // Idle clients take every slot of this host; one more is refused at once (reset),
        // not left waiting behind them.
        let start = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..limits.host {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut buf = [0u8; 64];
        // (On loopback the reset can come before `connect` returns.)
        let refused = tokio::time::timeout(Duration::from_secs(1), async {
            TcpStream::connect(addr).await?.read(&mut buf).await
        })
        .await
        .expect("a connection over the limit was left waiting");
        assert!(
            matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "a 5th connection past the limit of 4: {refused:?}"
        );
        let text = metrics.render(&Status::default(), SystemTime::now());
        assert!(
            text.contains("wormhole_admin_connections_refused_total{client=\"host\"} 1"),
            "{text}"
        );

        // At the header timeout the idle ones are closed, and the slots serve again.
        for mut s in idle {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("an idle connection was not closed within 10 s")
                .unwrap_or(0);
            assert_eq!(n, 0, "an idle connection got data");
        }
        let took = start.elapsed();
        assert!(
            took >= limits.header_timeout - Duration::from_millis(100)
                && took < limits.deadline - Duration::from_millis(500),
            "idle connections closed after {took:?} (header timeout {:?}, deadline {:?})",
            limits.header_timeout,
            limits.deadline
        );
        let (line, _) = get(addr, "/healthz").await;
        assert_eq!(line, "HTTP/1.0 200 OK");

        // A slow reader of a large body is reset at its deadline: what it reads afterwards ends
        // short of the Content-Length, with a reset.
        tx.send_modify(|s| {
            s.peers = (0..5000)
                .map(|i| PeerStatus::new(format!("peer-{i}"), PrivateKey::generate().public_key()))
                .collect();
        });
        // (A small receive buffer: on loopback, the kernel would otherwise take megabytes.)
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(b"GET /status HTTP/1.0\r\n\r\n").await.unwrap();
        tokio::time::sleep(limits.deadline + Duration::from_millis(500)).await;
        let mut reply = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
            .await
            .expect("the reply never ended");
        let text = String::from_utf8_lossy(&reply);
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a content-length")
            .parse()
            .unwrap();
        // Reset, not merely closed: a closed socket would go on sending its buffer for minutes.
        assert!(
            length > 1_000_000
                && body.len() < length
                && matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "a client that did not read for longer than the deadline got {} of {length} bytes \
             ({ended:?})",
            body.len()
        );
        server.abort();
    }
}
