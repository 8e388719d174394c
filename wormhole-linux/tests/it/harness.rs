//! Test "nodes": network namespaces on an underlay bridge, each with a tokio runtime whose
//! threads all live in the node's namespace, driving the real backends through the core
//! reconciler.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use wormhole_core::Backends;
use wormhole_core::MemoryKeyStore;
use wormhole_core::ObservedDevice;
use wormhole_core::{NodeEntry, Snapshot};
use wormhole_core::{Plan, PrivateKey, Reconciler, Settings, WireGuardDevice};
use wormhole_linux::{Backend, Network, Nftables};
use wormhole_testkit::{CLUSTER_CIDRS, Capture, pod_cidrs, scaled};
pub(crate) use wormhole_testkit::{Netns, chain, overlay_ips, root_or_skip, underlay_ip};

/// A unique short prefix for this test's namespaces and interfaces (`w…`; the daemon's suite
/// uses `whe…`).
pub(crate) fn prefix() -> String {
    wormhole_testkit::prefix("w")
}

/// The overlay of these tests.
pub(crate) fn cluster() -> Vec<ipnet::IpNet> {
    CLUSTER_CIDRS.iter().map(|c| c.parse().unwrap()).collect()
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
            pod_cidrs: pod_cidrs(i).into(),
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
            // A failed test may leave a device wedged, and dropping a wedged embedded device
            // could block: leak it instead, so the failure is reported.
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
        let underlay = Netns::underlay(format!("{prefix}u"));
        let nodes = (1..=n)
            .map(|i| Self::node(&prefix, &underlay, i, backend))
            .collect();
        Cluster { underlay, nodes }
    }

    fn node(prefix: &str, underlay: &Netns, i: usize, backend: Backend) -> Node {
        let ns = underlay.node(prefix, i);
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
