//! The plumbing of the end-to-end suite, all through real programs: an "underlay" network
//! namespace with a bridge; "nodes" (namespaces plugged into it) each running the built `wormhole`
//! binary; "pods" (namespaces) attached to a node by the standard CNI plugins, driven with the
//! conflist that node's daemon wrote. Everything is removed on drop, also when a test panics.
//!
//! Names start with `whe{pid % 1000}{n}` so that tests can run in parallel threads and never
//! meet the demo's (`whdemo-*`) or the `wormhole-linux` suite's namespaces.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use wormhole_testkit::{CLUSTER_CIDRS, pod_cidrs, underlay_ip};
pub(crate) use wormhole_testkit::{
    Capture, Netns, Pod, TcpEcho, assert_only_wireguard, cpu_ticks, icmp_matrix, in_netns, poll,
    root_or_skip, rss_kib, run, scaled, sh, tcp_matrix, underlay_offenders, wait_timeout,
    wireguard_go_pid,
};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_wormhole");
/// Where userspace WireGuard (and the embedded device) put their UAPI sockets.
const SOCKET_DIR: &str = "/var/run/wireguard";
/// The conflist the daemon writes.
pub(crate) const CONFLIST: &str = "10-wormhole.conflist";
/// The daemon's default admin address (each node has its own loopback).
pub(crate) const ADMIN: &str = "127.0.0.1:9473";

/// `GET path` on the admin server of the daemon in `ns`: the status code and the body.
pub(crate) fn http_get(ns: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = ADMIN.parse().unwrap();
    in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: wormhole\r\n\r\n").ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    })
}

/// A unique short prefix for one test's namespaces and interfaces (`whe…`; the
/// `wormhole-linux` suite uses `w…`).
pub(crate) fn prefix() -> String {
    wormhole_testkit::prefix("whe")
}

/// Writes `text` to `path` atomically (temporary file in the same directory + rename), the way
/// the peers file must be changed.
pub(crate) fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// `wormhole genkey` into `path` (0600); returns the public key from `wormhole pubkey`.
pub(crate) fn new_key(path: &Path) -> String {
    let private = sh(&[BIN, "genkey"]);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    pubkey(&private)
}

/// `wormhole pubkey` of a private key.
pub(crate) fn pubkey(private: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "wormhole pubkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A WireGuard implementation the daemon can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// gotatun inside the daemon.
    Embedded,
    /// wireguard-go, a separate process.
    Userspace,
    /// The kernel module (only in the VM lane: `scripts/vm-lane.sh`).
    Kernel,
}

impl Backend {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Userspace => "userspace",
            Backend::Kernel => "kernel",
        }
    }
}

/// A running `wormhole run`, killed (SIGKILL) on drop.
pub(crate) struct Daemon {
    child: Child,
}

impl Daemon {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the daemon has exited.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill9(mut self) {
        self.child.kill().expect("kill -9 the daemon");
        self.child.wait().expect("reap the daemon");
    }

    /// Sends `signal` (`TERM`, `INT`) and waits at most `limit` ([`scaled`]) for the exit.
    pub(crate) fn signal_and_wait(mut self, signal: &str, limit: Duration) -> Option<ExitStatus> {
        sh(&["kill", &format!("-{signal}"), &self.pid().to_string()]);
        wait_timeout(&mut self.child, limit)
    }

    /// SIGTERM; waits (bounded) for the exit.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        sh(&["kill", "-TERM", &self.pid().to_string()]);
        wait_timeout(&mut self.child, Duration::from_secs(15))
            .expect("the daemon did not exit within 15 s of SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: a namespace on the underlay (192.168.77.i), a key, a work directory, and maybe a
/// running daemon.
pub(crate) struct Node {
    pub(crate) daemon: Option<Daemon>,
    pub(crate) ns: Netns,
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) iface: String,
    pub(crate) backend: Backend,
    pub(crate) dir: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) public_key: String,
    /// The peers file this node's daemon reads.
    pub(crate) peers: PathBuf,
    /// The daemon binary it runs.
    pub(crate) bin: String,
    /// Behind a NAT router (its namespace; dropped after the node): no endpoint in the peers
    /// file, and a persistent keepalive.
    pub(crate) router: Option<Netns>,
}

impl Node {
    pub(crate) fn cni_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// This node's entry in a peers file.
    pub(crate) fn entry(&self) -> String {
        let [v4, v6] = pod_cidrs(self.index);
        if self.router.is_some() {
            return format!(
                "\n[[node]]\nname = \"{}\"\npublic_key = \"{}\"\npersistent_keepalive = 25\n\
                 pod_cidrs = [\"{v4}\", \"{v6}\"]\n",
                self.name, self.public_key
            );
        }
        format!(
            "\n[[node]]\nname = \"{}\"\npublic_key = \"{}\"\nendpoint = \"{}:51820\"\n\
             pod_cidrs = [\"{v4}\", \"{v6}\"]\n",
            self.name,
            self.public_key,
            underlay_ip(self.index)
        )
    }

    /// The arguments of `wormhole run` for this node, `extra` appended.
    pub(crate) fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--node-name",
            &self.name,
            "--peers",
            self.peers.to_str().unwrap(),
            "--backend",
            self.backend.as_str(),
            "--interface",
            &self.iface,
            "--key-file",
            self.key_file.to_str().unwrap(),
            "--cni-conf-dir",
            self.cni_dir().to_str().unwrap(),
        ]
        .map(str::to_owned)
        .into();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Starts `wormhole run` in the node (log appended to `dir/log`).
    pub(crate) fn start(&mut self, extra: &[&str]) {
        let args = self.args(extra);
        self.start_with(args);
    }

    /// Starts the binary in the node with exactly `args` (log appended to `dir/log`).
    pub(crate) fn start_with(&mut self, args: Vec<String>) {
        assert!(self.daemon.is_none(), "{}: already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = self
            .ns
            .command(&[&self.bin])
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start wormhole run");
        self.daemon = Some(Daemon { child });
    }

    /// The end of the daemon's log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} log (last lines) ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(80)..].join("\n")
        )
    }

    /// Waits (bounded) until the daemon answers `/readyz` with 200.
    pub(crate) fn wait_ready(&mut self) {
        let ns = self.ns.name.clone();
        let daemon = self.daemon.as_mut().expect("daemon started");
        let mut exited = None;
        let ready = poll(Duration::from_secs(30), || {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                exited = Some(status);
                return Some(false);
            }
            http_get(&ns, "/readyz")
                .filter(|(code, _)| *code == 200)
                .map(|_| true)
        });
        assert!(
            ready == Some(true),
            "{} not ready (exited: {exited:?})\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// The conflist the daemon wrote, once it is there (bounded wait).
    pub(crate) fn conflist(&self) -> Value {
        let path = self.cni_dir().join(CONFLIST);
        let text = poll(Duration::from_secs(10), || {
            std::fs::read_to_string(&path).ok()
        })
        .unwrap_or_else(|| panic!("{} wrote no conflist\n{}", self.name, self.log_tail()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
    }

    /// `wormhole status` with `args` in the node: exit status and stdout.
    pub(crate) fn status(&self, args: &[&str]) -> (ExitStatus, String) {
        let mut full = vec![BIN, "status"];
        full.extend_from_slice(args);
        let out = self.ns.run(&full);
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `wormhole status -o json`, parsed.
    pub(crate) fn status_json(&self) -> Value {
        let out = self.ns.run(&[BIN, "status", "-o", "json"]);
        let (text, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: wormhole status -o json ({}): {e}: {text}{err}\n{}",
                self.name,
                out.status,
                self.log_tail()
            )
        })
    }

    /// `wg show IFACE args...`.
    pub(crate) fn wg(&self, args: &[&str]) -> String {
        let mut full = vec!["wg", "show", &self.iface];
        full.extend_from_slice(args);
        self.ns.sh(&full)
    }

    /// The device's peers' public keys.
    pub(crate) fn wg_peers(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.wg(&["peers"]).lines().map(str::to_owned).collect();
        keys.sort();
        keys
    }

    /// `wg show IFACE latest-handshakes`: public key → seconds since the epoch (0: never).
    pub(crate) fn handshakes(&self) -> BTreeMap<String, u64> {
        self.wg(&["latest-handshakes"])
            .lines()
            .filter_map(|l| {
                let (key, t) = l.split_once('\t')?;
                Some((key.to_owned(), t.trim().parse().ok()?))
            })
            .collect()
    }

    /// Attaches a new pod (namespace `{node ns}{pod}`) with the CNI plugins of this node's
    /// conflist, run in order as a container runtime does.
    pub(crate) fn add_pod(&self, pod: &str) -> Pod {
        Pod::attach(
            &self.ns,
            self.index,
            pod,
            &self.conflist(),
            &self.dir.join("ipam"),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.daemon.take();
        // A userspace or embedded device killed with its namespace leaves its socket behind.
        let _ = std::fs::remove_file(format!("{SOCKET_DIR}/{}.sock", self.iface));
    }
}

/// An underlay, nodes on it, their pods and a work directory; all removed on drop.
pub(crate) struct Cluster {
    // Dropped in this order: pods, nodes (daemons first), underlay, files.
    pub(crate) pods: Vec<Pod>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) underlay: Netns,
    pub(crate) prefix: String,
    /// The shared peers file.
    pub(crate) peers: PathBuf,
    pub(crate) work: tempfile::TempDir,
    /// The daemon binary its nodes run ([`BIN`] unless [`Cluster::with_daemon`]).
    pub(crate) bin: String,
}

impl Cluster {
    /// An underlay bridge and `n` nodes on `backend`, and a peers file listing all of them.
    /// No daemon runs yet.
    pub(crate) fn new(n: usize, backend: Backend) -> Self {
        Self::with_daemon(n, backend, BIN)
    }

    /// [`Cluster::new`] with nodes running the daemon at `bin` (to compare builds in one run).
    pub(crate) fn with_daemon(n: usize, backend: Backend, bin: &str) -> Self {
        let prefix = prefix();
        let work = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .unwrap();
        let underlay = Netns::underlay(format!("{prefix}u"));
        let mut cluster = Cluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            underlay,
            peers: work.path().join("peers.toml"),
            prefix,
            work,
            bin: bin.to_owned(),
        };
        for _ in 0..n {
            cluster.add_node(backend);
        }
        let all: Vec<usize> = (1..=n).collect();
        write_atomically(&cluster.peers, &cluster.peers_text(&all, ""));
        cluster
    }

    /// Plugs node `len + 1` into the underlay (no daemon yet; it reads the shared peers file
    /// unless its `peers` is changed). Returns its index.
    pub(crate) fn add_node(&mut self, backend: Backend) -> usize {
        let ns = self.underlay.node(&self.prefix, self.nodes.len() + 1);
        self.push_node(backend, ns, None)
    }

    /// Node `len + 1` in namespace `ns` (behind `router`, if any): its work directory, a key,
    /// the shared peers file. Returns its index.
    fn push_node(&mut self, backend: Backend, ns: Netns, router: Option<Netns>) -> usize {
        let i = self.nodes.len() + 1;
        let dir = self.work.path().join(format!("n{i}"));
        std::fs::create_dir(&dir).unwrap();
        let key_file = dir.join("private.key");
        let public_key = new_key(&key_file);
        self.nodes.push(Node {
            daemon: None,
            ns,
            index: i,
            name: format!("n{i}"),
            // Userspace UAPI sockets share /var/run/wireguard: names must be unique host-wide.
            iface: format!("{}w{i}", self.prefix),
            backend,
            dir,
            key_file,
            public_key,
            peers: self.peers.clone(),
            bin: self.bin.clone(),
            router,
        });
        i
    }

    /// Node `len + 1` behind a NAT router: the router sits on the underlay at
    /// `192.168.77.(200 + i)` and masquerades the node's private network `172.16.i.0/24`, with
    /// no inbound port forward (only replies to what the node sent get in) and, like a home
    /// router, drops whatever else arrives for itself. The node's entry has no endpoint and a
    /// persistent keepalive of 25 s. Returns its index.
    pub(crate) fn add_node_behind_nat(&mut self, backend: Backend) -> usize {
        let i = self.nodes.len() + 1;
        let prefix = self.prefix.clone();
        let router = Netns::new(format!("{prefix}r{i}"));
        router.plug(
            &self.underlay,
            &format!("{prefix}x{i}"),
            &format!("192.168.77.{}/24", 200 + i),
        );
        let ns = Netns::new(format!("{prefix}n{i}"));
        router.sh(&[
            "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        router.sh(&[
            "ip",
            "addr",
            "add",
            &format!("172.16.{i}.1/24"),
            "dev",
            "lan0",
        ]);
        router.sh(&["ip", "link", "set", "lan0", "up"]);
        router.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let nat = "table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n  \
                   oifname \"eth0\" masquerade\n }\n chain filter_forward {\n  type filter hook forward \
                   priority filter; policy drop;\n  ct state established,related accept\n  \
                   iifname \"lan0\" accept\n }\n chain filter_input {\n  type filter hook input \
                   priority filter; policy drop;\n  ct state established,related accept\n  \
                   iifname \"lan0\" accept\n }\n}\n";
        router.nft(nat);
        ns.sh(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
        ns.sh(&[
            "ip",
            "addr",
            "add",
            &format!("172.16.{i}.2/24"),
            "dev",
            "eth0",
        ]);
        ns.sh(&["ip", "link", "set", "eth0", "up"]);
        ns.sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("172.16.{i}.1"),
        ]);
        self.push_node(backend, ns, Some(router))
    }

    /// Node `i` (1-based).
    pub(crate) fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    pub(crate) fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    /// A peers file listing nodes `indices`, then `extra` (more TOML).
    pub(crate) fn peers_text(&self, indices: &[usize], extra: &str) -> String {
        let [v4, v6] = CLUSTER_CIDRS;
        let mut text = format!("cluster_cidrs = [\"{v4}\", \"{v6}\"]\n");
        for &i in indices {
            text += &self.node(i).entry();
        }
        text + extra
    }

    /// Starts every node's daemon, then waits until all are ready.
    pub(crate) fn start_all(&mut self, extra: &[&str]) {
        for node in &mut self.nodes {
            node.start(extra);
        }
        for node in &mut self.nodes {
            node.wait_ready();
        }
    }

    /// Attaches pods named `names` to node `i`.
    pub(crate) fn add_pods(&mut self, i: usize, names: &[&str]) {
        for name in names {
            let pod = self.node(i).add_pod(name);
            self.pods.push(pod);
        }
    }

    /// The pod called `name` (e.g. `n1a`).
    pub(crate) fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Starts tcpdump on the underlay bridge.
    pub(crate) fn capture(&self) -> Capture {
        self.underlay.capture("br0")
    }

    /// Every node's log tail.
    pub(crate) fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(Node::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}
