//! The released install run by a real container engine (issues 21 and 22): what
//! `scripts/release.sh` made (`WORMHOLE_RELEASE`: its directory) is installed as a user would.
//! Its image is pushed with skopeo to Debian's `docker-registry` on loopback and pulled from
//! there, by the digest `wormhole.yaml` names, by podman on every "node" (a network namespace on
//! the underlay, with a file system of its own under a directory), and run by `podman kube play`
//! (with runc) from the pod template of the DaemonSet in `wormhole.yaml`, against the fake API
//! server run as a process of its own. Then the usual proof: pods attached by the real CNI
//! plugins with the conflist the containerized agent wrote through its host path reach each
//! other across nodes over IPv4 and IPv6, the underlay carries only WireGuard, the manifest's
//! probes are answered, and every node published its WormholeNode. Last, the agents are
//! removed and the cleanup DaemonSet of `wormhole-uninstall.yaml` runs on every node: after it,
//! each node's namespace and host paths hold nothing Wormhole made.
//!
//! Between the manifest and podman stands [`kubelet_pod`], which does what the DaemonSet
//! controller and the kubelet would, and nothing else (each step says why podman cannot do it
//! itself); everything else in the pod spec (security context, capabilities, read-only root,
//! resources, volumes and mounts) reaches podman as written.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_json::{Value, json};
use wormhole_k8s::testing::FakeApi;
use wormhole_testkit::{pod_cidrs, underlay_ip};

use crate::harness::{
    Netns, Pod, TcpEcho, assert_only_wireguard, icmp_matrix, in_netns, poll, root_or_skip, scaled,
    tcp_matrix,
};

/// The fake API server's address, on a host of its own on the underlay.
const API: &str = "192.168.77.254:6443";
/// Where the kubeconfig is mounted in the pod (see [`kubelet_pod`]).
const KUBECONFIG_IN_POD: &str = "/var/run/secrets/wormhole-test/kubeconfig";
/// The conflist the agent writes.
const CONFLIST: &str = "10-wormhole.conflist";

/// `program`, killed if it runs longer than 2 minutes ([`scaled`]): podman, skopeo and
/// friends must not hang the suite.
fn bounded(program: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5"])
        .arg(format!("{}s", scaled(Duration::from_secs(120)).as_secs()))
        .arg(program);
    cmd
}

/// `program args...`, panicking with its output (and `hint`) if it cannot run or fails.
fn checked(cmd: &mut Command, hint: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} ({hint})"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{} ({hint})",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET path` at `addr` from network namespace `ns`: the status code and the body (of
/// `Content-Length`, or up to the end: the fake API server keeps connections open).
fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    in_netns(ns, || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        (&s).write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .ok()?;
        let mut reader = std::io::BufReader::new(&s);
        let mut status = String::new();
        reader.read_line(&mut status).ok()?;
        let code = status.split_whitespace().nth(1)?.parse().ok()?;
        let mut length = None;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).ok()?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut body = Vec::new();
        match length {
            Some(n) => {
                body.resize(n, 0);
                reader.read_exact(&mut body).ok()?;
            }
            None => {
                reader.read_to_end(&mut body).ok()?;
            }
        }
        Some((code, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// Debian's `docker-registry` on a free loopback port, storing under `dir`; killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("docker-registry: {e} (apt-get install docker-registry)"));
        let registry = Registry { child, addr };
        let api: SocketAddr = registry.addr.parse().unwrap();
        let up = poll(Duration::from_secs(20), || {
            let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(1)).ok()?;
            write!(s, "GET /v2/ HTTP/1.0\r\n\r\n").ok()?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).ok()?;
            reply.starts_with("HTTP/1.0 200").then_some(())
        });
        assert!(up.is_some(), "docker-registry did not answer on {api}");
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake API server as a process of its own: this test binary running [`fake_api_server`] in
/// the API host's namespace. It serves until its stdin closes (this handle's drop, or this
/// process's death).
struct ApiProcess {
    child: Child,
}

impl ApiProcess {
    fn start(ns: &Netns, spec: &Value) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut child = ns
            .command(&[exe.to_str().unwrap()])
            .args([
                "--exact",
                "container::fake_api_server",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WORMHOLE_FAKE_API", spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake API server process");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("fake API server listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(scaled(Duration::from_secs(30)))
            .expect("the fake API server process did not start");
        ApiProcess { child }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake API server's process (started by the container test with `WORMHOLE_FAKE_API`, a JSON
/// object: `listen`, `nodes` as `[name, [pod CIDRs], InternalIP]`, `pod_subnet` for kubeadm's
/// ClusterConfiguration). Serves until its stdin closes.
#[test]
#[ignore = "the fake API server process of the container test, which starts it"]
fn fake_api_server() {
    let Ok(spec) = std::env::var("WORMHOLE_FAKE_API") else {
        eprintln!("fake_api_server: WORMHOLE_FAKE_API is not set: the container test starts this");
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("WORMHOLE_FAKE_API is JSON");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listen: SocketAddr = spec["listen"].as_str().unwrap().parse().unwrap();
    let api = rt.block_on(FakeApi::start_on(listen));
    for node in spec["nodes"].as_array().unwrap() {
        let cidrs: Vec<&str> = node[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        api.put_node(node[0].as_str().unwrap(), &cidrs, node[2].as_str().unwrap());
    }
    api.put_configmap(
        "kube-system",
        "kubeadm-config",
        json!({"ClusterConfiguration": format!("networking:\n  podSubnet: {}\n",
            spec["pod_subnet"].as_str().unwrap())}),
    );
    println!("fake API server listening on {}", api.addr());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// A node for the kubelet: its name, its address (`status.hostIP`), and the directory that
/// stands for its root file system.
struct KubeletNode<'a> {
    name: &'a str,
    ip: &'a str,
    root: &'a Path,
}

/// The DaemonSet in the released manifest `file`, as JSON.
fn released_daemonset(file: &Path) -> Value {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/release.sh writes it)", file.display()));
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("the released manifest parses"))
        .find(|doc| doc["kind"] == "DaemonSet")
        .unwrap_or_else(|| panic!("no DaemonSet in {}", file.display()))
}

/// Expands `$(NAME)` with `vars` as Kubernetes does in env values, command and args (`$$` is a
/// `$`; an unknown name stays as written).
fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out += &rest[..at];
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(name) = rest
            .strip_prefix("$(")
            .and_then(|r| r.split_once(')'))
            .map(|(name, _)| name)
            && let Some((_, value)) = vars.iter().rev().find(|(n, _)| n == name)
        {
            out += value;
            rest = &rest[name.len() + 3..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out + rest
}

/// The Pod the DaemonSet controller and the kubelet would run on `node`, for `podman kube play`:
/// 1. The DaemonSet controller's part: a Pod of `spec.template`, named `{daemonset}-{node}`, in
///    the DaemonSet's namespace, with `spec.nodeName`.
/// 2. The image: the manifest's `REPOSITORY@DIGEST` stands for your registry's
///    (`scripts/release.sh --repository`); here `image`, the loopback registry's, by the same
///    digest.
/// 3. The downward API: `valueFrom.fieldRef` env (`spec.nodeName`, `status.hostIP`,
///    `status.podIP`, which is the host's with hostNetwork, `metadata.name`,
///    `metadata.namespace`) become values, then `$(VAR)` is expanded in env values, command and
///    args (podman 4.3 does neither).
/// 4. The service account: the kubelet mounts a token for the agent's in-cluster config; the
///    fake API server speaks plain HTTP without auth, so the pod gets a kubeconfig (a read-only
///    host file) and `WORMHOLE_KUBECONFIG` instead.
/// 5. Host paths: each node has its own file system under `node.root` (`/etc/cni/net.d` is
///    `ROOT/etc/cni/net.d`), except the kernel's `/dev` and `/proc`, which are the host's: a
///    network sysctl is that of the opener's network namespace, and `/dev/net/tun` is one device.
/// 6. hostNetwork: podman runs in the node's namespace; `ports` are informational with
///    hostNetwork, and podman 4.3 refuses them there, so they are dropped.
/// 7. Probes: the kubelet sends them from the node to the pod's (host's) address; the caller
///    does that ([`probe`]). Podman would run an `httpGet` probe as `curl` inside the container
///    (the image has neither shell nor curl) from a systemd timer (none here), so they are not
///    given to podman.
/// 8. Init containers: the kubelet runs each once per pod start and keeps it when it exited
///    (its status and log: `kubectl logs -c NAME`); podman's default for `kube play` removes
///    it once it ran, so the pod asks podman to keep it
///    (`io.podman.annotations.init.container.type: always`), and since podman would then
///    restart an init container that exited 0 under `restartPolicy: Always` (podman#16343),
///    the pod's policy becomes `OnFailure`, which restarts what the kubelet would: a failed one.
fn kubelet_pod(ds: &Value, node: &KubeletNode, image: &str, kubeconfig: &Path) -> Value {
    let template = &ds["spec"]["template"];
    let pod_name = format!("{}-{}", ds["metadata"]["name"].as_str().unwrap(), node.name);
    let namespace = ds["metadata"]["namespace"].as_str().unwrap().to_owned();
    let mut spec = template["spec"].clone();
    assert_eq!(spec["hostNetwork"], true, "the agent runs with hostNetwork");
    // The DaemonSet controller places a pod only where its nodeSelector matches: these nodes
    // are this machine, and the image was built for it.
    if let Some(selector) = spec.as_object_mut().unwrap().remove("nodeSelector") {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        assert_eq!(selector["kubernetes.io/arch"], arch, "{selector}");
    }
    spec["nodeName"] = json!(node.name);
    let field = |path: &str| -> String {
        match path {
            "spec.nodeName" => node.name.to_owned(),
            "status.hostIP" | "status.podIP" => node.ip.to_owned(),
            "metadata.name" => pod_name.clone(),
            "metadata.namespace" => namespace.clone(),
            other => panic!("the test's kubelet does not know fieldRef {other}: add it"),
        }
    };
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec[list].as_array_mut() else {
            continue;
        };
        for c in containers {
            let written = c["image"].as_str().unwrap();
            let digest = image.split_once('@').map(|(_, d)| d);
            assert!(
                digest.is_some() && written.split_once('@').map(|(_, d)| d) == digest,
                "the manifest's image {written} is not the image released ({image})"
            );
            c["image"] = json!(image);
            let mut vars: Vec<(String, String)> = Vec::new();
            let mut env = Vec::new();
            for e in c["env"].as_array().cloned().unwrap_or_default() {
                let name = e["name"].as_str().unwrap().to_owned();
                let value = if let Some(from) = e.get("valueFrom") {
                    let path = from["fieldRef"]["fieldPath"].as_str().unwrap_or_else(|| {
                        panic!("the test's kubelet handles fieldRef env only, not {from}")
                    });
                    field(path)
                } else {
                    expand(e["value"].as_str().unwrap_or(""), &vars)
                };
                vars.push((name.clone(), value.clone()));
                env.push(json!({"name": name, "value": value}));
            }
            env.push(json!({"name": "WORMHOLE_KUBECONFIG", "value": KUBECONFIG_IN_POD}));
            c["env"] = json!(env);
            for key in ["command", "args"] {
                if let Some(list) = c[key].as_array_mut() {
                    for arg in list {
                        *arg = json!(expand(arg.as_str().unwrap(), &vars));
                    }
                }
            }
            let object = c.as_object_mut().unwrap();
            object.remove("ports");
            object.remove("livenessProbe");
            object.remove("readinessProbe");
            object.remove("startupProbe");
            object
                .entry("volumeMounts")
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "wormhole-test-kubeconfig", "mountPath": KUBECONFIG_IN_POD, "readOnly": true}));
        }
    }
    for volume in spec["volumes"].as_array_mut().unwrap() {
        if let Some(host) = volume.get_mut("hostPath") {
            let path = host["path"].as_str().unwrap().to_owned();
            if !(path.starts_with("/dev/") || path.starts_with("/proc/")) {
                host["path"] = json!(format!("{}{path}", node.root.display()));
            }
        }
    }
    spec["volumes"].as_array_mut().unwrap().push(json!({
        "name": "wormhole-test-kubeconfig",
        "hostPath": {"path": kubeconfig.to_str().unwrap(), "type": "File"}
    }));
    let mut metadata = json!({
        "name": pod_name,
        "namespace": namespace,
        "labels": template["metadata"]["labels"],
    });
    if let Some(annotations) = template["metadata"].get("annotations") {
        metadata["annotations"] = annotations.clone();
    }
    if spec.get("initContainers").is_some() {
        metadata["annotations"]["io.podman.annotations.init.container.type"] = json!("always");
        spec["restartPolicy"] = json!("OnFailure");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

/// The manifest's probe `kind` (`livenessProbe`, `readinessProbe`) of the agent's container, as
/// the kubelet sends it for a hostNetwork pod on `node_ip`: GET `path` at `node_ip:port`, from
/// the node. Returns the status code and the body.
fn probe(ds: &Value, kind: &str, ns: &str, node_ip: &str) -> Option<(u16, String)> {
    let get = &ds["spec"]["template"]["spec"]["containers"][0][kind]["httpGet"];
    let path = get["path"].as_str().unwrap();
    let port = get["port"].as_u64().expect("a numeric probe port");
    http_get(ns, format!("{node_ip}:{port}").parse().unwrap(), path)
}

/// The containers.conf of these tests: runc (crun's setrlimit is refused here), limits this
/// machine grants, no systemd.
const CONTAINERS_CONF: &str = "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \
    \"nproc=4096:4096\"]\npids_limit = 0\n[engine]\nruntime = \"runc\"\ncgroup_manager = \
    \"cgroupfs\"\nevents_logger = \"file\"\n";

/// A node whose pods podman runs: its namespace, and a directory for its file system and its
/// podman (storage, state), so that nodes share nothing but the kernel and the underlay.
struct ContainerNode {
    ns: Netns,
    index: usize,
    name: String,
    root: PathBuf,
    conf: PathBuf,
    /// The pod file of the running pod, if any.
    playing: Option<PathBuf>,
}

impl ContainerNode {
    fn new(ns: Netns, index: usize, work: &Path, conf: &Path) -> Self {
        let root = work.join(format!("n{index}"));
        std::fs::create_dir_all(root.join("podman/tmp")).unwrap();
        ContainerNode {
            ns,
            index,
            name: format!("n{index}"),
            root,
            conf: conf.to_owned(),
            playing: None,
        }
    }

    fn ip(&self) -> String {
        underlay_ip(self.index)
    }

    /// `podman` with this node's storage and state.
    fn podman(&self, in_node: bool) -> Command {
        let store = self.root.join("podman");
        let mut cmd = if in_node {
            let mut c = bounded("nsenter");
            c.arg(format!("--net=/var/run/netns/{}", self.ns.name))
                .arg("podman");
            c
        } else {
            bounded("podman")
        };
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("TMPDIR", store.join("tmp"))
            .arg("--root")
            .arg(store.join("storage"))
            .arg("--runroot")
            .arg(store.join("run"))
            .arg("--tmpdir")
            .arg(store.join("libpod"))
            .arg("--volumepath")
            .arg(store.join("volumes"));
        cmd
    }

    /// Runs `pod` (a Pod) with `podman kube play` in the node's namespace.
    fn play(&mut self, pod: &Value, file: &str) {
        let path = self.root.join(file);
        std::fs::write(&path, serde_json::to_string_pretty(pod).unwrap()).unwrap();
        checked(
            self.podman(true).args(["kube", "play"]).arg(&path),
            "podman kube play",
        );
        self.playing = Some(path);
    }

    /// Stops and removes the running pod.
    fn down(&mut self) {
        if let Some(path) = self.playing.take() {
            checked(
                self.podman(true).args(["kube", "down"]).arg(&path),
                "podman kube down",
            );
        }
    }

    /// The agent container's log.
    fn logs(&self, container: &str) -> String {
        let out = self
            .podman(false)
            .args(["logs", container])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn log_tail(&self, container: &str) -> String {
        let text = self.logs(container);
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({container}) log, last lines ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// A sysctl of the node's namespace.
    fn sysctl(&self, name: &str) -> String {
        self.ns.sh(&["sysctl", "-n", name]).trim().to_owned()
    }
}

impl Drop for ContainerNode {
    fn drop(&mut self) {
        // Containers first (their processes, their overlay mounts), then the storage.
        let _ = self
            .podman(false)
            .args(["pod", "rm", "--all", "--force", "--time", "1"])
            .stdin(Stdio::null())
            .output();
        let _ = self
            .podman(false)
            .args(["system", "reset", "--force"])
            .stdin(Stdio::null())
            .output();
    }
}

#[test]
#[ignore = "needs a release: scripts/test.sh makes one (scripts/release.sh) and runs this with WORMHOLE_RELEASE"]
fn container_the_released_install_runs_in_podman_on_every_node_and_uninstalls() {
    if !root_or_skip("container_the_released_install_runs_in_podman_on_every_node_and_uninstalls") {
        return;
    }
    let release = PathBuf::from(std::env::var("WORMHOLE_RELEASE").expect(
        "WORMHOLE_RELEASE: the directory scripts/release.sh wrote (target/release-artifacts)",
    ));
    let layout = release.join("image/oci");
    // The release's kustomize base renders the install as it is.
    let kustomized = checked(
        bounded("kubectl").arg("kustomize").arg(&release),
        "apt-get install kubernetes-client",
    );
    let count = |text: &str| {
        yaml_serde::Deserializer::from_str(text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .filter(|doc| !doc.is_null())
            .count()
    };
    let install = std::fs::read_to_string(release.join("wormhole.yaml")).unwrap();
    assert_eq!(count(&kustomized), count(&install));
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(layout.join("index.json"))
            .unwrap_or_else(|e| panic!("{}/index.json: {e}", layout.display())),
    )
    .unwrap();
    let manifest = &index["manifests"][0];
    let tag = manifest["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap();
    let digest = manifest["digest"].as_str().unwrap();
    let work = tempfile::Builder::new()
        .prefix("whc-")
        .tempdir_in("/var/tmp")
        .unwrap();

    // The image, into a registry on loopback.
    let registry = Registry::start(work.path());
    let reference = format!("{}/wormhole:{tag}", registry.addr);
    let by_digest = format!("{}/wormhole@{digest}", registry.addr);
    checked(
        bounded("skopeo").args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{reference}"),
        ]),
        "apt-get install skopeo",
    );
    let pushed = checked(
        bounded("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{reference}"),
        ]),
        "skopeo inspect",
    );
    assert_eq!(pushed.trim(), digest, "the registry serves another image");

    // The underlay, the API server's host and three nodes.
    let prefix = wormhole_testkit::prefix("whc");
    let underlay = Netns::underlay(format!("{prefix}u"));
    let api_ns = Netns::new(format!("{prefix}api"));
    api_ns.plug(&underlay, &format!("{prefix}va"), "192.168.77.254/24");
    let conf = work.path().join("containers.conf");
    std::fs::write(&conf, CONTAINERS_CONF).unwrap();
    let mut nodes: Vec<ContainerNode> = (1..=3)
        .map(|i| ContainerNode::new(underlay.node(&prefix, i), i, work.path(), &conf))
        .collect();
    // What each node held before Wormhole: the cleanup must leave exactly that.
    let before: Vec<String> = nodes
        .iter()
        .map(|n| crate::uninstall::state(&n.ns))
        .collect();
    // Forwarding off, as on a host nobody set it on (a new namespace inherits IPv4's from the
    // machine's).
    for node in &nodes {
        node.ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        node.ns
            .sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]);
    }
    let spec = json!({
        "listen": API,
        "pod_subnet": "10.99.0.0/16,fd99::/48",
        "nodes": nodes.iter().map(|n| json!([n.name, pod_cidrs(n.index), n.ip()])).collect::<Vec<_>>(),
    });
    let _api = ApiProcess::start(&api_ns, &spec);
    // The kubeconfig names a cluster CA, as the in-cluster config always does (the service
    // account's ca.crt): the fake server speaks plain HTTP, so it is never used, but without one
    // the kube client wants the system's CA roots, which the image does not ship (and in a
    // cluster never needs).
    let ca = work.path().join("ca.pem");
    checked(
        bounded("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-subj",
                "/CN=wormhole-test-ca",
                "-days",
                "1",
                "-keyout",
            ])
            .arg(work.path().join("ca.key"))
            .arg("-out")
            .arg(&ca),
        "apt-get install openssl",
    );
    let ca_data = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&ca).unwrap())
    };
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{API}\n\
             \x20   certificate-authority-data: {ca_data}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n\
             users:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();

    // Every node pulls the image from the registry, as its kubelet would.
    for node in &nodes {
        checked(
            node.podman(false)
                .args(["pull", "--quiet", "--tls-verify=false", &by_digest]),
            "podman pull",
        );
    }
    let ds = released_daemonset(&release.join("wormhole.yaml"));
    let kubelet_node = |node: &ContainerNode| {
        let ip = node.ip();
        (node.name.clone(), ip, node.root.clone())
    };
    let pod_of = |ds: &Value, node: &ContainerNode| {
        let (name, ip, root) = kubelet_node(node);
        kubelet_pod(
            ds,
            &KubeletNode {
                name: &name,
                ip: &ip,
                root: &root,
            },
            &by_digest,
            &kubeconfig,
        )
    };
    let container = |node: &ContainerNode| format!("wormhole-{}-wormhole", node.name);

    // As the manifest was before the fix: without the host's /proc/sys/net the agent cannot turn
    // forwarding on (the container's /proc/sys is read-only), and readiness says so.
    {
        let n1 = &mut nodes[0];
        let mut pod = pod_of(&ds, n1);
        let c = &mut pod["spec"]["containers"][0];
        let sysctls = "host-proc-sys-net";
        c["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["name"] != sysctls);
        c["env"]
            .as_array_mut()
            .unwrap()
            .retain(|e| e["name"] != "WORMHOLE_PROC_SYS_NET");
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .retain(|v| v["name"] != sysctls);
        n1.play(&pod, "pod-without-sysctls.json");
        let (ns, ip) = (n1.ns.name.clone(), n1.ip());
        let said = poll(Duration::from_secs(60), || {
            probe(&ds, "readinessProbe", &ns, &ip).filter(|(_, body)| body.contains("forwarding"))
        })
        .unwrap_or_else(|| {
            panic!(
                "readiness never said that forwarding is off: {:?}\n{}",
                probe(&ds, "readinessProbe", &ns, &ip),
                n1.log_tail(&container(n1))
            )
        });
        assert_eq!(said.0, 503, "{said:?}");
        assert!(
            said.1.contains("net.ipv4.ip_forward (cannot write /proc/sys/net/ipv4/ip_forward: Read-only file system")
                && said.1.contains("net.ipv6.conf.all.forwarding (cannot write"),
            "{said:?}"
        );
        assert_eq!(n1.sysctl("net.ipv4.ip_forward"), "0");
        n1.down();
    }

    // The shipped pod on every node, one after the other: from `podman kube play`, and from
    // the agent's process start (the container's StartedAt), to ready; then both probes.
    for node in &mut nodes {
        let pod = pod_of(&ds, node);
        let played = Instant::now();
        node.play(&pod, "pod.json");
        let (ns, ip) = (node.ns.name.clone(), node.ip());
        let ready = poll(Duration::from_secs(60), || {
            probe(&ds, "readinessProbe", &ns, &ip)
                .filter(|(code, _)| *code == 200)
                .map(|_| (played.elapsed(), std::time::SystemTime::now()))
        })
        .unwrap_or_else(|| {
            panic!(
                "{} not ready: {:?}\n{}",
                node.name,
                probe(&ds, "readinessProbe", &ns, &ip),
                node.log_tail(&container(node))
            )
        });
        let started: u64 = checked(
            node.podman(false).args([
                "inspect",
                "--format",
                "{{.State.StartedAt.UnixNano}}",
                &container(node),
            ]),
            "podman inspect",
        )
        .trim()
        .parse()
        .unwrap();
        let started = std::time::UNIX_EPOCH + Duration::from_nanos(started);
        let live = probe(&ds, "livenessProbe", &ns, &ip);
        assert_eq!(
            live.as_ref().map(|(code, _)| *code),
            Some(200),
            "{}: liveness {live:?}",
            node.name
        );
        eprintln!(
            "{}: ready {:.2} s after podman kube play, {:.2} s after the agent's process started",
            node.name,
            ready.0.as_secs_f64(),
            ready
                .1
                .duration_since(started)
                .unwrap_or_default()
                .as_secs_f64()
        );
    }
    // The agent turned forwarding on through the host path, before any pod made the CNI bridge
    // plugin do it; nothing in its log says it could not.
    for node in &nodes {
        assert_eq!(node.sysctl("net.ipv4.ip_forward"), "1", "{}", node.name);
        assert_eq!(
            node.sysctl("net.ipv6.conf.all.forwarding"),
            "1",
            "{}",
            node.name
        );
        let log = node.logs(&container(node));
        assert!(
            !log.contains("cannot enable IP forwarding") && !log.contains("forwarding is off"),
            "{}\n{log}",
            node.name
        );
    }
    // Every node published its WormholeNode, owned by its Node, with its address.
    let api: SocketAddr = API.parse().unwrap();
    for node in &nodes {
        let path = format!("/apis/wormhole.dev/v1alpha1/wormholenodes/{}", node.name);
        let (code, body) = poll(Duration::from_secs(30), || {
            http_get(&api_ns.name, api, &path).filter(|(code, _)| *code == 200)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} published no WormholeNode\n{}",
                node.name,
                node.log_tail(&container(node))
            )
        });
        let object: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(code, 200);
        assert_eq!(
            object["spec"]["endpoint"],
            format!("{}:51820", node.ip()),
            "{object}"
        );
        assert_eq!(object["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(object["spec"]["publicKey"].as_str().map(str::len), Some(44));
    }

    // Pods attached by the real CNI plugins, from the conflist the agent wrote on its host path.
    let mut pods: Vec<Pod> = Vec::new();
    for node in &nodes {
        let path = node.root.join("etc/cni/net.d").join(CONFLIST);
        let text = poll(Duration::from_secs(20), || {
            std::fs::read_to_string(&path).ok()
        })
        .unwrap_or_else(|| panic!("{} wrote no {}", node.name, path.display()));
        let conflist: Value = serde_json::from_str(&text).unwrap();
        pods.push(Pod::attach(
            &node.ns,
            node.index,
            "a",
            &conflist,
            // host-local's default data directory, on the node's file system.
            &node.root.join("var/lib/cni/networks"),
        ));
    }
    let logs = || {
        nodes
            .iter()
            .map(|n| n.log_tail(&container(n)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let capture = underlay.capture("br0");
    let (pairs, failures) = icmp_matrix(&pods);
    assert!(
        failures.is_empty(),
        "{} of {pairs} pod pairs failed: {failures:#?}\n{}",
        failures.len(),
        logs()
    );
    let servers: Vec<TcpEcho> = pods.iter().map(|p| TcpEcho::start(&p.ns.name)).collect();
    let (transfers, failures) = tcp_matrix(&pods, &servers, 256 * 1024);
    assert!(
        failures.is_empty(),
        "{} of {transfers} TCP transfers failed: {failures:#?}\n{}",
        failures.len(),
        logs()
    );
    let lines = capture.stop();
    // The agents' API traffic is the control plane (plain HTTP to the fake server here, TLS in a
    // cluster); everything else on the underlay must be WireGuard.
    let data_plane: Vec<String> = lines
        .into_iter()
        .filter(|l| !l.contains("192.168.77.254.6443"))
        .collect();
    let wireguard = assert_only_wireguard(&data_plane);
    assert!(
        wireguard >= pairs,
        "only {wireguard} WireGuard packets for {pairs} pings"
    );
    drop(servers);
    // The pods stay attached through the cleanup: their interfaces on the bridge go with it.
    for node in &mut nodes {
        node.down();
    }

    // The cleanup DaemonSet on every node (its init container runs `wormhole uninstall`; the
    // kubelet would then start `wormhole idle`): the node holds what it held before Wormhole,
    // its host paths nothing Wormhole wrote but the key (kept without --remove-keys).
    let cleanup = released_daemonset(&release.join("wormhole-uninstall.yaml"));
    for node in &mut nodes {
        let pod = pod_of(&cleanup, node);
        let path = node.root.join("cleanup.json");
        std::fs::write(&path, serde_json::to_string_pretty(&pod).unwrap()).unwrap();
        // podman runs the init container to its end before it starts the pod's container (and
        // fails the play if it fails): its state and log say how the uninstall went.
        let played = node
            .podman(true)
            .args(["kube", "play"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        node.playing = Some(path);
        let init = format!("wormhole-uninstall-{}-uninstall", node.name);
        let state = node
            .podman(false)
            .args([
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                &init,
            ])
            .output()
            .unwrap();
        let log = node.logs(&init);
        assert_eq!(
            String::from_utf8_lossy(&state.stdout).trim(),
            "exited 0",
            "{}: the uninstall: {log}\nkube play: {}{}",
            node.name,
            String::from_utf8_lossy(&played.stdout),
            String::from_utf8_lossy(&played.stderr)
        );
        assert!(played.status.success(), "{}: {played:?}", node.name);
        assert!(log.contains("10-wormhole.conflist"), "{}: {log}", node.name);
        node.down();
    }
    for (node, before) in nodes.iter().zip(&before) {
        assert_eq!(&crate::uninstall::state(&node.ns), before, "{}", node.name);
        let conf = node.root.join("etc/cni/net.d");
        assert!(!conf.join(CONFLIST).exists(), "{}", node.name);
        let state: Vec<_> = std::fs::read_dir(node.root.join("var/lib/wormhole"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(state, ["private.key"], "{}", node.name);
        for gone in [
            "var/lib/cni/networks/wormhole",
            "run/wireguard/wormhole0.sock",
        ] {
            assert!(!node.root.join(gone).exists(), "{}: {gone} left", node.name);
        }
    }
    drop(pods);
}
