//! Test "nodes": network namespaces on an underlay bridge, each with a tokio runtime whose
//! threads all live in the node's namespace, driving the real backends through the core
//! reconciler.

use std::io::{BufRead as _, Write as _};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use wormhole_core::memory::MemoryKeyStore;
use wormhole_core::mesh::{NodeEntry, Snapshot};
use wormhole_core::reconciler::Backends;
use wormhole_core::state::ObservedDevice;
use wormhole_core::{Plan, PrivateKey, Reconciler, Settings, WireGuardDevice};
use wormhole_linux::{Backend, Network, Nftables};

/// `d` times `WORMHOLE_TIME_FACTOR` (default 1): wall-clock limits stretch on slow machines (the
/// VM lane runs under TCG, 3-10x slower) instead of failing there.
pub(crate) fn scaled(d: Duration) -> Duration {
    let factor = std::env::var("WORMHOLE_TIME_FACTOR")
        .ok()
        .and_then(|f| f.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0);
    d.mul_f64(factor)
}

/// True when running as root; otherwise prints why the test is skipped.
pub(crate) fn root_or_skip(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    // Written to the process's stderr directly: libtest captures `eprintln!`, and a skip must
    // show.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (network namespaces, TUN, nftables); CI runs it as root"
    );
    false
}

/// An error with its causes, `: `-separated (our errors keep the cause as `source`).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// Runs a command, panicking with its output if it fails.
pub(crate) fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output, whatever its status.
pub(crate) fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique short prefix for this test's namespaces and interfaces.
pub(crate) fn prefix() -> String {
    format!(
        "w{}{}",
        std::process::id() % 1000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace, deleted (with every process in it) on drop.
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    pub(crate) fn new(name: String) -> Self {
        let _ = run(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME args...`, checked.
    pub(crate) fn sh(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip netns exec NAME args...`, unchecked.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts `args` in this namespace in the background (killed at the latest when the
    /// namespace is dropped).
    pub(crate) fn spawn(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Starts tcpdump on `iface` of this namespace; returns once it captures.
    pub(crate) fn capture(&self, iface: &str) -> Capture {
        let file = std::env::temp_dir().join(format!(
            "{}-{iface}-{}.pcap",
            self.name,
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "tcpdump", "-i", iface])
            // Headers are all we look at. --immediate-mode hands over each packet as it comes
            // (by default the kernel batches them up to a second, and a stop loses the batch);
            // -U writes each one to the file at once.
            .args(["-nn", "--immediate-mode", "-U", "-s", "128", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // tcpdump prints "listening on IFACE" once the capture is active.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening on") {
                    let _ = tx.send(Ok(()));
                }
                said.push(line);
            }
            let _ = tx.send(Err(said.join("\n")));
        });
        match rx.recv_timeout(scaled(Duration::from_secs(10))) {
            Ok(Ok(())) => Capture { child, file },
            Ok(Err(said)) => panic!("tcpdump on {iface} in {} failed: {said}", self.name),
            Err(e) => panic!("tcpdump on {iface} in {} did not start: {e}", self.name),
        }
    }

    /// A tokio runtime all of whose threads (workers and blocking pool) enter this namespace.
    pub(crate) fn runtime(&self) -> tokio::runtime::Runtime {
        let path = format!("/var/run/netns/{}", self.name);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            })
            .build()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let pids = run(&["ip", "netns", "pids", &self.name]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = run(&["kill", "-9", pid]);
        }
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// The overlay of these tests.
pub(crate) fn cluster() -> Vec<ipnet::IpNet> {
    vec![
        "10.99.0.0/16".parse().unwrap(),
        "fd99::/48".parse().unwrap(),
    ]
}

/// Node `i`'s underlay address.
pub(crate) fn underlay_ip(i: usize) -> String {
    format!("192.168.77.{i}")
}

/// Node `i`'s overlay addresses (on its WireGuard interface).
pub(crate) fn overlay_ips(i: usize) -> [String; 2] {
    [format!("10.99.{i}.1"), format!("fd99:0:0:{i}::1")]
}

/// A node: a namespace on the underlay, its key, and a reconciler on the real backends.
pub(crate) struct Node {
    pub(crate) index: usize,
    pub(crate) iface: String,
    pub(crate) key: PrivateKey,
    pub(crate) ns: Netns,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) reconciler: Arc<Mutex<Reconciler>>,
    pub(crate) device: Arc<dyn WireGuardDevice>,
}

impl Node {
    /// Runs `f` on the node's runtime (inside its namespace).
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        self.rt.block_on(self.rt.spawn(f)).unwrap()
    }

    /// The node's entry in the peers snapshot.
    pub(crate) fn entry(&self) -> NodeEntry {
        let i = self.index;
        NodeEntry {
            name: format!("n{i}"),
            public_key: self.key.public_key().to_base64(),
            endpoint: Some(format!("{}:51820", underlay_ip(i))),
            pod_cidrs: vec![format!("10.99.{i}.0/24"), format!("fd99:0:0:{i}::/64")],
            persistent_keepalive: None,
            origin: String::new(),
        }
    }

    /// One reconcile pass with `snapshot`.
    pub(crate) fn reconcile(&self, snapshot: &Snapshot) -> Result<Plan, wormhole_core::Error> {
        let r = self.reconciler.clone();
        let snapshot = snapshot.clone();
        self.block_on(async move {
            let mut r = r.lock().await;
            r.update(Ok(snapshot));
            r.reconcile().await
        })
    }

    /// One reconcile pass with no new snapshot.
    pub(crate) fn resync(&self) -> Result<Plan, wormhole_core::Error> {
        let r = self.reconciler.clone();
        self.block_on(async move { r.lock().await.reconcile().await })
    }

    /// `ping -c N` from this node; true when every reply came back.
    pub(crate) fn ping(&self, target: &str, count: u32) -> bool {
        let count = count.to_string();
        self.ns
            .run(&["ping", "-c", &count, "-i", "0.2", "-W", "2", target])
            .status
            .success()
    }

    /// `wg show IFACE ARGS...`.
    pub(crate) fn wg(&self, args: &[&str]) -> String {
        let mut full = vec!["wg", "show", &self.iface];
        full.extend_from_slice(args);
        self.ns.sh(&full)
    }

    /// The device as our backend reads it (configuration and per-peer counters).
    pub(crate) fn observed(&self) -> ObservedDevice {
        let device = self.device.clone();
        self.block_on(async move { device.read().await })
            .unwrap_or_else(|e| panic!("n{}: read device: {e}", self.index))
            .unwrap_or_else(|| panic!("n{}: no device", self.index))
    }

    /// The packets counted by the rules of `inet wormhole` chain `chain` whose line contains
    /// every one of `needles` (summed when several rules match).
    pub(crate) fn nft_counter(&self, chain: &str, needles: &[&str]) -> u64 {
        let listing = self
            .ns
            .sh(&["nft", "list", "chain", "inet", "wormhole", chain]);
        let mut matched = 0;
        let mut packets = 0;
        for line in listing.lines() {
            if needles.iter().all(|n| line.contains(n)) {
                matched += 1;
                let count = line
                    .split("counter packets ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no counter in {line:?}"));
                packets += count;
            }
        }
        assert!(
            matched > 0,
            "no rule with {needles:?} in chain {chain}:\n{listing}"
        );
        packets
    }

    /// Pings `target` once at a time until a reply comes back (bounded); true on success.
    pub(crate) fn ping_until(&self, target: &str, attempts: u32) -> bool {
        let attempts = scaled(Duration::from_secs(attempts.into())).as_secs() as u32;
        (0..attempts).any(|_| self.ping(target, 1))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test may leave an embedded (boringtun) device wedged, and dropping a
            // wedged device blocks forever: leak it instead, so the failure is reported.
            std::mem::forget(self.device.clone());
        }
        // wireguard-go killed with the namespace leaves its socket behind.
        let socket = format!("{}/{}.sock", wormhole_linux::SOCKET_DIR, self.iface);
        let _ = std::fs::remove_file(socket);
    }
}

/// An underlay bridge in its own namespace, and nodes attached to it.
pub(crate) struct Cluster {
    pub(crate) underlay: Netns,
    pub(crate) nodes: Vec<Node>,
}

impl Cluster {
    /// `n` nodes on one underlay, each configured with `backend` (not yet reconciled).
    pub(crate) fn new(n: usize, backend: Backend) -> Self {
        let prefix = prefix();
        let underlay = Netns::new(format!("{prefix}u"));
        underlay.sh(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        underlay.sh(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        underlay.sh(&["ip", "link", "add", "br0", "type", "bridge"]);
        underlay.sh(&["ip", "link", "set", "br0", "up"]);
        let nodes = (1..=n)
            .map(|i| Self::node(&prefix, &underlay, i, backend))
            .collect();
        Cluster { underlay, nodes }
    }

    fn node(prefix: &str, underlay: &Netns, i: usize, backend: Backend) -> Node {
        let ns = Netns::new(format!("{prefix}n{i}"));
        let outer = format!("{prefix}v{i}");
        // Create the pair inside the node, move one end to the underlay.
        ns.sh(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", &outer,
        ]);
        ns.sh(&["ip", "link", "set", &outer, "netns", &underlay.name]);
        underlay.sh(&["ip", "link", "set", &outer, "master", "br0", "up"]);
        ns.sh(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
        ns.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", underlay_ip(i)),
            "dev",
            "eth0",
        ]);
        ns.sh(&["ip", "link", "set", "eth0", "up"]);
        let iface = format!("{prefix}wg{i}");
        let rt = ns.runtime();
        let key = PrivateKey::generate();
        let keys = MemoryKeyStore::new(key.clone(), None);
        let iface2 = iface.clone();
        let (device, network, firewall) = rt
            .block_on(rt.spawn(async move {
                let network = Arc::new(Network::new(&iface2).unwrap());
                let device = backend.device(&network).unwrap();
                (device, network, Arc::new(Nftables::new()))
            }))
            .unwrap();
        let mut settings = Settings::new(format!("n{i}"), cluster());
        settings.host.interface = iface.parse().unwrap();
        let backends = Backends {
            keys: Arc::new(keys),
            device: device.clone(),
            network,
            firewall,
        };
        let reconciler = Arc::new(Mutex::new(Reconciler::new(settings, backends)));
        Node {
            index: i,
            iface,
            key,
            ns,
            rt,
            reconciler,
            device,
        }
    }

    /// Everyone's entries.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.iter().map(Node::entry).collect(),
            ..Snapshot::default()
        }
    }

    /// One pass on every node with the full snapshot.
    pub(crate) fn reconcile_all(&self) {
        let snapshot = self.snapshot();
        for node in &self.nodes {
            node.reconcile(&snapshot)
                .unwrap_or_else(|e| panic!("n{}: {}", node.index, chain(&e)));
        }
    }

    /// Starts tcpdump on the underlay bridge; stop it with [`Capture::stop`].
    pub(crate) fn capture(&self) -> Capture {
        self.underlay.capture("br0")
    }
}

/// A running tcpdump.
pub(crate) struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    /// Stops the capture and returns one line per packet (`tcpdump -r -nn`).
    pub(crate) fn stop(mut self) -> Vec<String> {
        // Let packets in flight reach the capture.
        std::thread::sleep(Duration::from_millis(300));
        let _ = run(&["kill", "-INT", &self.child.id().to_string()]);
        let _ = self.child.wait();
        let out = run(&["tcpdump", "-r", self.file.to_str().unwrap(), "-nn"]);
        assert!(
            out.status.success(),
            "tcpdump -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}
