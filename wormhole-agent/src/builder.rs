//! [`AgentBuilder`]: every option of an agent, checked in [`AgentBuilder::build`] before anything
//! touches the host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use wormhole_core::InterfaceName;
use wormhole_core::PeerStream;
use wormhole_core::is_dns1123_subdomain;

use crate::metrics::PEER_METRICS_LIMIT_RANGE;
use crate::{Agent, Error, InvalidOption, PeerMetrics};

/// Where the mesh comes from.
#[non_exhaustive]
pub enum Peers {
    /// A peers file, or a directory of them (re-read when they change).
    File(PathBuf),
    /// The Kubernetes API: Nodes and WormholeNodes; this node publishes its own WormholeNode.
    Kubernetes(KubernetesOptions),
    /// Your own discovery, as a stream of snapshots ([`Peers::stream`]). Give the cluster CIDRs
    /// with [`AgentBuilder::cluster_cidrs`] unless its snapshots carry them.
    Custom(PeerStream),
}

impl Peers {
    /// A peers file or directory.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Peers::File(path.into())
    }

    /// The Kubernetes API.
    pub fn kubernetes(options: KubernetesOptions) -> Self {
        Peers::Kubernetes(options)
    }

    /// Your own peer source: any stream of snapshots, with errors of any type convertible into
    /// `Box<dyn Error + Send + Sync>`. The reconciler deduplicates, debounces and clears errors
    /// (see [`PeerStream`](wormhole_core::PeerStream)). A [`PeerSource`](wormhole_core::PeerSource) becomes one
    /// with [`wormhole_core::from_peer_source`].
    pub fn stream<S, E>(source: S) -> Self
    where
        S: futures::Stream<Item = Result<wormhole_core::Snapshot, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Peers::Custom(wormhole_core::peer_stream(source))
    }

    fn kind(&self) -> &'static str {
        match self {
            Peers::File(_) => "file",
            Peers::Kubernetes(_) => "kubernetes",
            Peers::Custom(_) => "custom",
        }
    }
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peers::File(path) => f.debug_tuple("File").field(path).finish(),
            Peers::Kubernetes(options) => f.debug_tuple("Kubernetes").field(options).finish(),
            Peers::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Options of the Kubernetes mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubernetesOptions {
    /// `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// `(namespace, name)` of the Secret holding the cluster's PSK.
    pub psk_secret: Option<(String, String)>,
    /// The endpoint this node publishes (default: its Node's InternalIP and the listen port),
    /// unless its Node's annotation `wormhole.dev/endpoint` says otherwise (see
    /// [`LocalSettings`](wormhole_k8s::LocalSettings)).
    pub endpoint: wormhole_k8s::PublishedEndpoint,
    /// The persistent keepalive this node publishes (seconds; for a node behind NAT): it and
    /// every peer use it toward each other. Its Node's annotation
    /// `wormhole.dev/persistent-keepalive` overrides it.
    pub persistent_keepalive: Option<u16>,
    /// The ranges WormholePeers' allowed IPs must lie in; none: every WormholePeer is refused.
    pub external_cidrs: Vec<IpNet>,
}

impl KubernetesOptions {
    /// In-cluster, no PSK, endpoint from the Node.
    pub fn in_cluster() -> Self {
        KubernetesOptions::default()
    }

    /// Talks to the API server of this kubeconfig file instead of the in-cluster one.
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = Some(path.into());
        self
    }

    /// Reads the cluster's PSK from this Secret (key `psk`).
    pub fn psk_secret(mut self, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        self.psk_secret = Some((namespace.into(), name.into()));
        self
    }

    /// Publishes this endpoint.
    pub fn endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = wormhole_k8s::PublishedEndpoint::Fixed(endpoint);
        self
    }

    /// Publishes no endpoint: this node is behind NAT, and its peers learn its address from
    /// its handshakes (give it a [`persistent_keepalive`](Self::persistent_keepalive)).
    pub fn behind_nat(mut self) -> Self {
        self.endpoint = wormhole_k8s::PublishedEndpoint::BehindNat;
        self
    }

    /// Publishes a persistent keepalive of `seconds` (0: off).
    pub fn persistent_keepalive(mut self, seconds: u16) -> Self {
        self.persistent_keepalive = Some(seconds).filter(|&s| s != 0);
        self
    }

    /// Accepts WormholePeers (machines outside the cluster) whose allowed IPs lie in these
    /// ranges (`--external-cidr`); without any, every WormholePeer is refused.
    pub fn external_cidrs(mut self, cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        self.external_cidrs = cidrs.into_iter().collect();
        self
    }
}

/// Which WireGuard implementation carries the tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// The kernel module when this host has it loaded, else the embedded one (the userspace
    /// one in a build without the `embedded` feature).
    #[default]
    Auto,
    /// The kernel module.
    Kernel,
    /// A userspace implementation over its UAPI socket (wireguard-go, or
    /// `WG_USERSPACE_IMPLEMENTATION`).
    Userspace,
    /// In the agent's own process (needs the `embedded` feature).
    Embedded,
}

/// What readiness (`/readyz`) makes of CNI configuration files that take precedence over
/// Wormhole's (the container runtime uses the first file by name: `05-cilium.conflist` or
/// `10-flannel.conflist` before `10-wormhole.conflist`). Either way they are reported in the
/// log, `/status`, the preflight and (Kubernetes mode) an Event on the Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForeignCni {
    /// Report them; readiness is unaffected (the default: moving a cluster to Wormhole starts
    /// with the agents running beside the old network).
    #[default]
    Warn,
    /// Report them, and answer `/readyz` with 503 while there are any, so that a rollout stops
    /// at a node where new pods would not get Wormhole's network.
    Fail,
}

/// What [`AgentBuilder::build`] checked.
pub(crate) struct Options {
    pub(crate) node_name: String,
    pub(crate) interface: InterfaceName,
    pub(crate) listen_port: u16,
    pub(crate) backend: wormhole_linux::Backend,
    pub(crate) key_file: PathBuf,
    pub(crate) psk_file: Option<PathBuf>,
    pub(crate) cluster_cidrs: Vec<IpNet>,
    pub(crate) mtu: Option<u32>,
    pub(crate) bridge: InterfaceName,
    pub(crate) cni_conf_dir: Option<PathBuf>,
    pub(crate) resync: Duration,
    pub(crate) probe_interval: Option<Duration>,
    pub(crate) probe_rate: u32,
    pub(crate) admin_addr: Option<SocketAddr>,
    pub(crate) admin_allow: Vec<IpNet>,
    pub(crate) metrics_allow: Vec<IpNet>,
    pub(crate) peer_metrics: PeerMetrics,
    pub(crate) forwarding: bool,
    pub(crate) proc_sys_net: PathBuf,
    pub(crate) cleanup_on_exit: bool,
    pub(crate) foreign_cni: ForeignCni,
    pub(crate) cni_bin_dirs: Vec<PathBuf>,
}

/// Builds an [`Agent`]; start with [`Agent::builder`]. Every option has the default of
/// `wormhole run`.
#[derive(Debug)]
#[must_use = "call build() to get the agent"]
pub struct AgentBuilder {
    node_name: String,
    peers: Peers,
    interface: InterfaceName,
    listen_port: u16,
    backend: Backend,
    key_file: PathBuf,
    psk_file: Option<PathBuf>,
    cluster_cidrs: Vec<IpNet>,
    mtu: Option<u32>,
    bridge: InterfaceName,
    cni_conf_dir: Option<PathBuf>,
    resync: Duration,
    probe_interval: Option<Duration>,
    probe_rate: u32,
    admin_addr: Option<SocketAddr>,
    admin_allow: Vec<IpNet>,
    metrics_allow: Vec<IpNet>,
    peer_metrics: PeerMetrics,
    forwarding: bool,
    proc_sys_net: PathBuf,
    cleanup_on_exit: bool,
    foreign_cni: ForeignCni,
    cni_bin_dirs: Vec<PathBuf>,
}

/// The range of [`AgentBuilder::resync`]: a shorter period would spin the agent, a longer one
/// would overflow timers.
pub const RESYNC_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

/// The range of [`AgentBuilder::probe_interval`].
pub const PROBE_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// The range of [`AgentBuilder::probe_rate`] (probes per second).
pub const PROBE_RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;

/// What a node name must be, for error messages.
pub const NODE_NAME_RULE: &str = "must be a DNS-1123 subdomain, as Kubernetes requires of Node \
     names: 1-253 characters, lowercase letters, digits, '-' and '.', each dot-separated part \
     starting and ending with a letter or digit (for example node-1)";

fn name(text: &str) -> InterfaceName {
    text.parse().expect("a valid default interface name")
}

impl AgentBuilder {
    pub(crate) fn new(node_name: impl Into<String>, peers: Peers) -> Self {
        AgentBuilder {
            node_name: node_name.into(),
            peers,
            interface: name("wormhole0"),
            listen_port: 51820,
            backend: Backend::Auto,
            key_file: "/var/lib/wormhole/private.key".into(),
            psk_file: None,
            cluster_cidrs: Vec::new(),
            mtu: None,
            bridge: name("wormhole-br0"),
            cni_conf_dir: Some("/etc/cni/net.d".into()),
            resync: Duration::from_secs(30),
            probe_interval: Some(Duration::from_secs(10)),
            probe_rate: 200,
            admin_addr: Some(([127, 0, 0, 1], 9473).into()),
            admin_allow: Vec::new(),
            metrics_allow: Vec::new(),
            peer_metrics: PeerMetrics::DEFAULT,
            forwarding: true,
            proc_sys_net: "/proc/sys/net".into(),
            cleanup_on_exit: false,
            foreign_cni: ForeignCni::Warn,
            cni_bin_dirs: crate::preflight::DEFAULT_CNI_BIN_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }

    /// The WireGuard interface (default `wormhole0`).
    pub fn interface(mut self, name: InterfaceName) -> Self {
        self.interface = name;
        self
    }

    /// The UDP port WireGuard listens on (default 51820).
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = port;
        self
    }

    /// The WireGuard implementation (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The node's private key (created 0600 if missing; default
    /// `/var/lib/wormhole/private.key`). Its directory also keeps what the agent must not lose
    /// between restarts (the PSK and mesh last read from Kubernetes).
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = path.into();
        self
    }

    /// A file holding the cluster's PSK (not with a Kubernetes PSK Secret).
    pub fn psk_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.psk_file = Some(path.into());
        self
    }

    /// The overlay CIDRs every pod CIDR lies in (default: from the peer source, or in
    /// Kubernetes mode from kubeadm-config).
    pub fn cluster_cidrs(mut self, cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        self.cluster_cidrs = cidrs.into_iter().collect();
        self
    }

    /// The WireGuard MTU (default: the underlay's minus 80).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// The pod bridge named in the CNI conflist (default `wormhole-br0`).
    pub fn bridge(mut self, name: InterfaceName) -> Self {
        self.bridge = name;
        self
    }

    /// Where the CNI conflist is written (default `/etc/cni/net.d`); `None` writes none (your
    /// distribution configures pods itself).
    pub fn cni_conf_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cni_conf_dir = dir;
        self
    }

    /// The time between passes when nothing changes (drift repair; default 30 s, 1 s to 24 h).
    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every;
        self
    }

    /// How often each peer is probed through the tunnel (ICMP echo to its overlay address, ±20 %
    /// jitter; default 10 s, 1 s to 1 h); `None` probes nothing. Probes give each peer's
    /// round-trip time, loss and path MTU, and the states `unreachable`, `lossy` and
    /// `mtu-blackhole`. Needs `CAP_NET_RAW` (without it the agent warns and probes nothing).
    pub fn probe_interval(mut self, every: Option<Duration>) -> Self {
        self.probe_interval = every;
        self
    }

    /// At most this many probes a second to all peers together (default 200, 1 to 10,000): with
    /// many peers the interval stretches instead. A probe is one ICMP echo of 64 bytes, or of
    /// the MTU for the size checks (one round in three).
    pub fn probe_rate(mut self, per_second: u32) -> Self {
        self.probe_rate = per_second;
        self
    }

    /// The admin server's address (default `127.0.0.1:9473`); `None` serves nothing. Every
    /// client is served the probes (`/healthz`, `/readyz`); `/status` and `/metrics` only this
    /// host (loopback, or a client connecting from the address it connects to, as the kubelet
    /// and `wormhole status` on the node do) and the sources of [`Self::admin_allow`] and
    /// [`Self::metrics_allow`].
    pub fn admin_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.admin_addr = addr;
        self
    }

    /// Sources besides this host that the admin server serves everything, `/status` (every
    /// peer with its endpoint and handshakes) and `/metrics` (default none): an operator's
    /// address, for `wormhole status --cluster --admin`. A pod on another node reaches the
    /// admin port from its node's address: naming the nodes' addresses names every pod.
    pub fn admin_allow(mut self, sources: Vec<IpNet>) -> Self {
        self.admin_allow = sources;
        self
    }

    /// Sources besides this host (and [`Self::admin_allow`]) that the admin server serves
    /// `/metrics` (default none): a Prometheus, or `0.0.0.0/0` and `::/0` to let every client
    /// read the metrics (peer names, handshake ages and traffic per peer).
    pub fn metrics_allow(mut self, sources: Vec<IpNet>) -> Self {
        self.metrics_allow = sources;
        self
    }

    /// Which peers get series of their own on `/metrics` (default [`PeerMetrics::DEFAULT`]:
    /// the node peers that are not ok, at most 20); the aggregates are always there.
    pub fn peer_metrics(mut self, peer_metrics: PeerMetrics) -> Self {
        self.peer_metrics = peer_metrics;
        self
    }

    /// Keeps IP forwarding on for the families of this node's pod CIDRs, checked at every pass
    /// (default true; pods on other nodes are reached by routing). Forwarding that cannot be
    /// turned on makes the node not ready ([`Status::forwarding_off`](wormhole_core::Status::forwarding_off)).
    /// `false` leaves forwarding to you and out of readiness.
    pub fn forwarding(mut self, on: bool) -> Self {
        self.forwarding = on;
        self
    }

    /// Where the host's network sysctls are (default `/proc/sys/net`); forwarding is turned on
    /// there. In a container, whose `/proc/sys` is read-only, mount the host's `/proc/sys/net`
    /// at another path and name it here (`deploy/daemonset.yaml` mounts it at
    /// `/host/proc/sys/net`): a network sysctl is that of the network namespace of the process
    /// that opens it, the host's with `hostNetwork`.
    pub fn proc_sys_net(mut self, dir: impl Into<PathBuf>) -> Self {
        self.proc_sys_net = dir.into();
        self
    }

    /// At stop, removes the interface, the firewall table and the conflist (default false: a
    /// restart keeps every connection).
    pub fn cleanup_on_exit(mut self, on: bool) -> Self {
        self.cleanup_on_exit = on;
        self
    }

    /// What readiness makes of CNI configuration files that take precedence over Wormhole's
    /// (default [`ForeignCni::Warn`]).
    pub fn foreign_cni(mut self, policy: ForeignCni) -> Self {
        self.foreign_cni = policy;
        self
    }

    /// Where the preflight looks for the CNI plugins the conflist uses (default
    /// `/opt/cni/bin`, then `/usr/lib/cni`); the first is where the container runtime looks.
    /// In a container, mount the host's directory and name it here.
    pub fn cni_bin_dirs(mut self, dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        self.cni_bin_dirs = dirs.into_iter().collect();
        self
    }

    /// Checks every option and their combinations; nothing touches the host yet.
    pub fn build(self) -> Result<Agent, Error> {
        if !is_dns1123_subdomain(&self.node_name) {
            return Err(InvalidOption::NodeName {
                name: self.node_name,
            }
            .into());
        }
        if self.bridge == self.interface {
            return Err(InvalidOption::BridgeIsInterface {
                name: self.interface.to_string(),
            }
            .into());
        }
        if let Some(bad) = self.cluster_cidrs.iter().find(|c| c.trunc() != **c) {
            return Err(InvalidOption::ClusterCidrHostBits { cidr: *bad }.into());
        }
        if let Some(mtu) = self.mtu.filter(|m| !(1280..=65535).contains(m)) {
            return Err(InvalidOption::Mtu { mtu }.into());
        }
        if !RESYNC_RANGE.contains(&self.resync) {
            return Err(InvalidOption::Resync {
                period: self.resync,
            }
            .into());
        }
        if let Some(every) = self
            .probe_interval
            .filter(|d| !PROBE_INTERVAL_RANGE.contains(d))
        {
            return Err(InvalidOption::ProbeInterval { period: every }.into());
        }
        if !PROBE_RATE_RANGE.contains(&self.probe_rate) {
            return Err(InvalidOption::ProbeRate {
                rate: self.probe_rate,
            }
            .into());
        }
        if let PeerMetrics::Problems { limit } = self.peer_metrics
            && !PEER_METRICS_LIMIT_RANGE.contains(&limit)
        {
            return Err(InvalidOption::PeerMetricsLimit { limit }.into());
        }
        if self.listen_port == 0 {
            return Err(InvalidOption::ListenPortZero.into());
        }
        if let Peers::Kubernetes(KubernetesOptions {
            psk_secret: Some(_),
            ..
        }) = &self.peers
            && self.psk_file.is_some()
        {
            return Err(InvalidOption::PskFileAndSecret.into());
        }
        let backend = match self.backend {
            Backend::Auto => wormhole_linux::Backend::detect(),
            Backend::Kernel => wormhole_linux::Backend::Kernel,
            Backend::Userspace => wormhole_linux::Backend::Userspace,
            #[cfg(feature = "embedded")]
            Backend::Embedded => wormhole_linux::Backend::Embedded,
            #[cfg(not(feature = "embedded"))]
            Backend::Embedded => {
                return Err(InvalidOption::NoEmbeddedBackend.into());
            }
        };
        tracing::debug!(peers = self.peers.kind(), "agent options checked");
        let options = Options {
            node_name: self.node_name,
            interface: self.interface,
            listen_port: self.listen_port,
            backend,
            key_file: self.key_file,
            psk_file: self.psk_file,
            cluster_cidrs: self.cluster_cidrs,
            mtu: self.mtu,
            bridge: self.bridge,
            cni_conf_dir: self.cni_conf_dir,
            resync: self.resync,
            probe_interval: self.probe_interval,
            probe_rate: self.probe_rate,
            admin_addr: self.admin_addr,
            admin_allow: self.admin_allow,
            metrics_allow: self.metrics_allow,
            peer_metrics: self.peer_metrics,
            forwarding: self.forwarding,
            proc_sys_net: self.proc_sys_net,
            cleanup_on_exit: self.cleanup_on_exit,
            foreign_cni: self.foreign_cni,
            cni_bin_dirs: self.cni_bin_dirs,
        };
        Ok(Agent::new(options, self.peers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> AgentBuilder {
        AgentBuilder::new("node-1", Peers::file("/nonexistent/peers.toml"))
    }

    fn refused(builder: AgentBuilder, want: &str) {
        match builder.build() {
            Err(e @ Error::Invalid(_)) => {
                let message = e.to_string();
                assert!(message.contains(want), "{message:?} does not say {want:?}")
            }
            Err(other) => panic!("not Invalid: {other}"),
            Ok(_) => panic!("built, but should say {want:?}"),
        }
    }

    #[test]
    fn invalid_options_and_combinations_fail_at_build() {
        refused(
            AgentBuilder::new("Node_1\u{1b}[2J", Peers::file("/p")),
            "invalid node name \"Node_1\\u{1b}[2J\"",
        );
        refused(
            builder().probe_interval(Some(Duration::from_millis(100))),
            "invalid probe interval 100ms: must be 1s..1h",
        );
        refused(builder().probe_rate(0), "invalid probe rate 0");
        refused(
            builder().bridge(name("wormhole0")),
            "the bridge and the interface are both wormhole0",
        );
        refused(
            builder().cluster_cidrs(["10.99.1.0/16".parse().unwrap()]),
            "did you mean 10.99.0.0/16?",
        );
        refused(builder().mtu(1000), "invalid MTU 1000");
        refused(
            builder().resync(Duration::from_millis(10)),
            "must be 1s..24h",
        );
        refused(builder().listen_port(0), "invalid listen port 0");
        refused(
            builder().peer_metrics(PeerMetrics::Problems { limit: 0 }),
            "invalid peer metrics limit 0: must be 1..100000 (for no per-peer series, use none)",
        );
        refused(
            AgentBuilder::new(
                "node-1",
                Peers::kubernetes(KubernetesOptions::in_cluster().psk_secret("wormhole", "psk")),
            )
            .psk_file("/etc/wormhole/psk"),
            "exclude each other",
        );
        assert!(builder().build().is_ok());
    }

    #[test]
    fn debug_shows_no_custom_source_internals() {
        let secretive =
            futures::stream::pending::<Result<wormhole_core::Snapshot, std::io::Error>>();
        let text = format!("{:?}", Peers::stream(secretive));
        assert_eq!(text, "Custom(..)");
    }
}
