//! The agent's errors.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use wormhole_core::Escaped;

use crate::builder::NODE_NAME_RULE;

/// A boxed cause.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why an agent could not be built, started or stopped in order.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given something invalid or contradictory; the message names the option
    /// and the fix. Returned by [`AgentBuilder::build`](crate::AgentBuilder::build), before
    /// anything touches the host.
    #[error(transparent)]
    Invalid(#[from] InvalidOption),
    /// Start-up needs something the environment does not give (no Kubernetes configuration, no
    /// cluster CIDR anywhere, an unknown Node).
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
    /// From the core or a backend.
    #[error(transparent)]
    Core(#[from] wormhole_core::Error),
    /// Local I/O.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An option the [`AgentBuilder`](crate::AgentBuilder) refuses (see [`Error::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOption {
    /// The node name is not a DNS-1123 subdomain.
    #[error("invalid node name \"{}\": {NODE_NAME_RULE}", Escaped(name))]
    NodeName {
        /// The name as given.
        name: String,
    },
    /// The pod bridge and the WireGuard interface have the same name.
    #[error(
        "the bridge and the interface are both {name}: the pod bridge and the WireGuard interface must differ"
    )]
    BridgeIsInterface {
        /// The name of both.
        name: String,
    },
    /// A cluster CIDR with host bits set.
    #[error("invalid cluster CIDR {cidr}: host bits set (did you mean {}?)", cidr.trunc())]
    ClusterCidrHostBits {
        /// The CIDR as given.
        cidr: IpNet,
    },
    /// An MTU outside 1280..65535.
    #[error("invalid MTU {mtu}: must be 1280..65535 (IPv6 needs at least 1280)")]
    Mtu {
        /// The MTU as given.
        mtu: u32,
    },
    /// A resync period outside [`RESYNC_RANGE`](crate::RESYNC_RANGE).
    #[error("invalid resync period {period:?}: must be 1s..24h")]
    Resync {
        /// The period as given.
        period: Duration,
    },
    /// A probe interval outside [`PROBE_INTERVAL_RANGE`](crate::PROBE_INTERVAL_RANGE).
    #[error("invalid probe interval {period:?}: must be 1s..1h (or off)")]
    ProbeInterval {
        /// The interval as given.
        period: Duration,
    },
    /// A probe rate outside [`PROBE_RATE_RANGE`](crate::PROBE_RATE_RANGE).
    #[error("invalid probe rate {rate}: must be 1..10000 probes per second")]
    ProbeRate {
        /// The rate as given.
        rate: u32,
    },
    /// A [`PeerMetrics::Problems`](crate::PeerMetrics::Problems) limit outside
    /// [`PEER_METRICS_LIMIT_RANGE`](crate::PEER_METRICS_LIMIT_RANGE).
    #[error(
        "invalid peer metrics limit {limit}: must be 1..100000 (for no per-peer series, use none)"
    )]
    PeerMetricsLimit {
        /// The limit as given.
        limit: usize,
    },
    /// Listen port 0.
    #[error("invalid listen port 0: peers must know the port (51820 is WireGuard's)")]
    ListenPortZero,
    /// Both a PSK file and a Kubernetes PSK Secret.
    #[error("a PSK file and a Kubernetes PSK Secret exclude each other: pick one")]
    PskFileAndSecret,
    /// The embedded backend was asked for in a build without it.
    #[error("this build has no embedded backend (feature `embedded` of wormhole-agent)")]
    NoEmbeddedBackend,
}

/// What start-up needs and the environment does not give (see [`Error::Environment`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvironmentError {
    /// The peers file cannot be used at start: missing, unreadable, or it does not parse.
    /// (Once the agent runs, a bad change keeps the last good mesh instead.)
    #[error("cannot start without a peers file that reads and parses (--peers FILE|DIR): {source}")]
    PeersFile {
        /// What is wrong, naming the file.
        #[source]
        source: wormhole_core::Error,
    },
    /// The private key file cannot be read, or is unsafe or corrupt, or cannot be created
    /// (its directory is not writable).
    #[error("the private key (--key-file) cannot be loaded or created: {source}")]
    KeyFile {
        /// What is wrong, naming the file.
        #[source]
        source: wormhole_core::Error,
    },
    /// The PSK file given cannot be used: missing, unsafe or not a key.
    #[error("the cluster secret (--psk-file) cannot be used: {source}")]
    PskFile {
        /// What is wrong, naming the file.
        #[source]
        source: wormhole_core::Error,
    },
    /// The API server answered that this Node cannot be read (it does not exist, or we may not
    /// read it).
    #[error("get Node {node} (is the node name right?): {message}")]
    NodeRefused {
        /// This node's name.
        node: String,
        /// The API server's message.
        message: String,
    },
    /// The API server could not be asked for this Node, and no address was saved.
    #[error("get Node {node}: {source}")]
    NodeUnreachable {
        /// This node's name.
        node: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// Kubernetes mode without cluster CIDRs, given or in kubeadm-config.
    #[error(
        "no cluster CIDR: give the cluster CIDRs (--cluster-cidr) (no kubeadm-config ConfigMap to read networking.podSubnet from)"
    )]
    NoClusterCidr,
    /// The kubeconfig file given cannot be used.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Cause,
    },
    /// No kubeconfig given, and not running in a cluster.
    #[error("not running in a cluster ({source}): give a kubeconfig (--kubeconfig)")]
    NotInCluster {
        /// Why the in-cluster configuration is missing.
        #[source]
        source: Cause,
    },
    /// No kubeconfig given, and none found where kubectl looks (`KUBECONFIG`,
    /// `~/.kube/config`), nor an in-cluster service account.
    #[error(
        "no Kubernetes configuration ({source}): set KUBECONFIG or give a kubeconfig (--kubeconfig)"
    )]
    NoKubeconfig {
        /// Why none was found.
        #[source]
        source: Cause,
    },
    /// `wormhole uninstall` while an agent runs on this node (it holds the lock in its state
    /// directory): the agent would put back what uninstall removes.
    #[error(
        "an agent is running on this node (it holds {}): stop it first (delete the DaemonSet, or stop its service), or force the uninstall (--force)",
        lock.display()
    )]
    AgentRunning {
        /// The lock file.
        lock: PathBuf,
    },
    /// The Kubernetes client cannot be built from the configuration.
    #[error("Kubernetes client: {source}")]
    KubeClient {
        /// Why.
        #[source]
        source: Cause,
    },
}
