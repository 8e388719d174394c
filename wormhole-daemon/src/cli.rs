//! The command line. Every `run` flag can also come from a `WORMHOLE_*` environment variable or
//! from the TOML file named by `--config` (same names, with `_` for `-`); the command line wins
//! over the environment, which wins over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use serde::Deserialize;
use wormhole_agent::KubernetesOptions;
use wormhole_agent::PublishedEndpoint;
use wormhole_core::Escaped;
use wormhole_core::InterfaceName;
use wormhole_core::is_dns1123_subdomain;

/// Where the admin server listens by default: metrics, health and status, on loopback only.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9473";

/// How a command ended: its exit code, a contract (written in `--help` as [`EXIT_CODES`] and in
/// docs/configuration.md). clap exits with [`Exit::Usage`] itself for the arguments it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done, and all is well.
    Ok = 0,
    /// The command could not do its job.
    Error = 1,
    /// Invalid arguments or options (clap's code).
    Usage = 2,
    /// The agent did not answer (`status`), or no node did (`status --cluster`, `graph`).
    Unreachable = 3,
    /// Done, but not all is well, or the output is incomplete.
    NotOk = 4,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  ok: done, and all is well
  1  error: the command could not do its job (the message says why)
  2  usage: invalid arguments or options
  3  unreachable: `status`: the agent did not answer; `status --cluster`, `graph`: no node did
  4  not ok: `status`: a node peer is not ok, the agent is not ready, a preflight check failed
     or a CNI configuration takes precedence over Wormhole's; `status --cluster`: a pair is not
     ok, or a node was not read; `graph`: a node was not read; `peer-config`: a node was left
     out of the configuration (the agents refuse it: see stderr); `preflight`: a check failed
     (`error`; warnings alone exit 0)";

/// `wormhole run --help`'s examples (each is parsed by a test).
pub const RUN_EXAMPLES: &str = "\
Examples:
  # A node of a peers file (as scripts/demo.sh runs it):
  wormhole run --node-name n1 --peers /etc/wormhole/peers.toml
  # In Kubernetes, as the DaemonSet runs it, with /metrics for a Prometheus at 10.0.0.5:
  wormhole run --kubernetes --psk-secret wormhole-psk --metrics-allow 10.0.0.5
  # A node behind NAT: no endpoint published, keepalives hold the mapping open:
  wormhole run --kubernetes --endpoint none --persistent-keepalive 25
  # A large cluster: no series of its own for any peer, probes every 30 s:
  wormhole run --kubernetes --peer-metrics none --probe-interval 30s
  # Every option from a file (the command line and WORMHOLE_* variables win):
  wormhole run --config /etc/wormhole/wormhole.toml

Every flag can also be set by the environment variable shown in [env: ...], or in the --config
file (the same names with `_` for `-`).";

/// Wormhole: an encrypted pod network for Kubernetes, built on WireGuard.
#[derive(Debug, Parser)]
#[command(
    name = "wormhole",
    version,
    long_version = crate::version::LONG_VERSION,
    about,
    propagate_version = true,
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent on this node.
    #[command(after_help = RUN_EXAMPLES)]
    Run(Box<RunArgs>),
    /// Ask the running agent how its peers are doing (exit code 4 when any node peer is not ok;
    /// external peers do not count; 3 when the agent does not answer); with --cluster, every
    /// pair of nodes.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
    /// Draw the mesh as SVG (or DOT): nodes with their pod CIDRs, pairs coloured by state.
    #[command(after_help = EXIT_CODES)]
    Graph(GraphArgs),
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
    /// Replace the node's private key with a new one and print the new public key.
    RotateKey(RotateKeyArgs),
    /// Print a wg-quick configuration for an external peer (a peers file's `[[external]]` entry
    /// with --peers, else a WormholePeer): every node as a `[Peer]` with its endpoint and pod
    /// CIDRs (exit code 4 when a node the agents refuse is left out).
    #[command(after_help = EXIT_CODES)]
    PeerConfig(PeerConfigArgs),
    /// Print this binary's version, the commit it was built from, its features and the
    /// WireGuard backends compiled in.
    Version(VersionArgs),
    /// Print a shell completion script (e.g. `source <(wormhole completion bash)`).
    Completion(CompletionArgs),
    /// Print the manual page (roff: `wormhole man | man -l -`), or write one per command with
    /// --dir.
    Man(ManArgs),
    /// Check what this node needs for `wormhole run` with these options, changing nothing:
    /// pod CIDRs, CNI plugins, the backend's device, forwarding, br_netfilter, CNI
    /// configurations that take precedence over Wormhole's, the underlay MTU (exit code 4
    /// when a check fails).
    #[command(after_help = EXIT_CODES)]
    Preflight(Box<crate::preflight::PreflightArgs>),
    /// Remove every trace of Wormhole from this node: interface, routes, nftables table, the
    /// pods' bridge, conflist, state (the private key only with --remove-keys). Refuses while
    /// an agent runs here unless --force.
    #[command(after_help = EXIT_CODES)]
    Uninstall(crate::uninstall::UninstallArgs),
    /// Print the whole install as one YAML stream for `kubectl apply -f -` (Namespace, CRDs,
    /// RBAC, admission policy, DaemonSet), with the image and options set; --uninstall: the
    /// cleanup DaemonSet instead.
    #[command(after_help = MANIFESTS_EXAMPLES)]
    Manifests(Box<crate::manifests::ManifestsArgs>),
    /// Do nothing until stopped (SIGTERM or SIGINT): the container of the cleanup DaemonSet
    /// (`wormhole manifests --uninstall`), whose work is done by its init container; the image
    /// has no shell or `sleep`.
    Idle,
}

/// `wormhole manifests --help`'s examples.
const MANIFESTS_EXAMPLES: &str = "Examples:
  wormhole manifests --image registry.example.com/wormhole@sha256:... | kubectl apply -f -
  wormhole manifests --image registry.example.com/wormhole:0.1.0 --psk \\
      --cluster-cidr 10.244.0.0/16,fd00:10:244::/56 > wormhole.yaml
  wormhole manifests --uninstall --remove-keys --image registry.example.com/wormhole:0.1.0";

/// `wormhole version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: VersionFormat,
}

/// `wormhole version -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VersionFormat {
    /// One `name: value` line each.
    Text,
    /// A JSON object.
    Json,
}

/// `wormhole completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: crate::completion::Shell,
}

/// `wormhole man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `wormhole.1` and a page for every command (`wormhole-run.1`, ...) into this
    /// directory instead (e.g. /usr/local/share/man/man1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// A WireGuard implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendArg {
    /// The kernel module when present, else embedded.
    Auto,
    /// The Linux kernel module.
    Kernel,
    /// wireguard-go (or `WG_USERSPACE_IMPLEMENTATION`) over its UAPI socket.
    Userspace,
    /// An in-process gotatun device.
    Embedded,
}

/// `--peer-metrics`: which peers get series of their own on /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerMetricsArg {
    /// Node peers that are not ok, the worst first, at most --peer-metrics-limit.
    Problems,
    /// Every peer: 7 series each, 7·N·(N−1) across a cluster of N nodes.
    All,
    /// None: the aggregates only.
    None,
}

/// `--foreign-cni`: what readiness makes of CNI configurations ahead of Wormhole's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForeignCniArg {
    /// Report them (log, status, preflight, Event); readiness unaffected.
    Warn,
    /// Report them, and fail /readyz while there are any.
    Fail,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

// `wormhole run --help`'s groups of flags.
const HEADING_GENERAL: &str = "General";
const HEADING_PEERS: &str = "Peers";
const HEADING_KUBERNETES: &str = "Kubernetes (with --kubernetes)";
const HEADING_WIREGUARD: &str = "WireGuard";
const HEADING_PODS: &str = "Pods and routes";
const HEADING_HEALTH: &str = "Health and resync";
const HEADING_ADMIN: &str = "Admin endpoints and metrics";

/// `wormhole run`. Options are `Option`s so that the config file can fill what is not given.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// A TOML file with any of these options (command line and environment win).
    #[arg(help_heading = HEADING_GENERAL, long, env = "WORMHOLE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name in the peers file [default: the host name].
    #[arg(help_heading = HEADING_PEERS, long, env = "WORMHOLE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Peers file, or a directory of `*.toml` peers files, re-read on change.
    #[arg(help_heading = HEADING_PEERS, long, env = "WORMHOLE_PEERS", value_name = "FILE|DIR")]
    pub peers: Option<PathBuf>,
    /// Take peers from the Kubernetes API (Node and WormholeNode objects).
    #[arg(help_heading = HEADING_PEERS, long, env = "WORMHOLE_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubeconfig for --kubernetes [default: in-cluster service account].
    #[arg(help_heading = HEADING_KUBERNETES, long, env = "WORMHOLE_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubernetes: the Secret holding the cluster PSK secret (key `psk`).
    #[arg(help_heading = HEADING_KUBERNETES, long, env = "WORMHOLE_PSK_SECRET", value_name = "NAME")]
    pub psk_secret: Option<String>,
    /// The namespace of --psk-secret [default: wormhole].
    #[arg(help_heading = HEADING_KUBERNETES, long, env = "WORMHOLE_PSK_SECRET_NAMESPACE", value_name = "NAMESPACE")]
    pub psk_secret_namespace: Option<String>,
    /// With --kubernetes: the endpoint to publish: `IP:PORT`, `IP` (with --listen-port),
    /// `none` behind NAT (peers learn it from this node's handshakes), or `internal-ip` (the
    /// Node's InternalIP and --listen-port) [default: internal-ip]. The Node annotation
    /// `wormhole.dev/endpoint` overrides it for one node.
    #[arg(help_heading = HEADING_KUBERNETES, long, env = "WORMHOLE_ENDPOINT", value_name = "IP:PORT|IP|none|internal-ip")]
    pub endpoint: Option<String>,
    /// With --kubernetes: a persistent keepalive in seconds, published for this node (behind
    /// NAT: it keeps the mapping open), used by it toward every peer and by every peer toward it.
    /// 0: off. The Node annotation `wormhole.dev/persistent-keepalive` overrides it for one
    /// node. (In a peers file: `persistent_keepalive` on the node's entry.)
    #[arg(help_heading = HEADING_KUBERNETES, long, env = "WORMHOLE_PERSISTENT_KEEPALIVE", value_name = "SECONDS", value_parser = keepalive_arg)]
    pub persistent_keepalive: Option<u16>,
    /// With --kubernetes: a range set aside for WormholePeers (machines outside the cluster);
    /// repeat for more. Their allowed IPs must lie in one; without any, every WormholePeer is
    /// refused. (With --peers: `external_cidrs` in the peers file.)
    #[arg(
        help_heading = HEADING_KUBERNETES,
        long,
        env = "WORMHOLE_EXTERNAL_CIDR",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub external_cidr: Vec<IpNet>,
    /// WireGuard interface name [default: wormhole0].
    #[arg(help_heading = HEADING_WIREGUARD, long, env = "WORMHOLE_INTERFACE")]
    pub interface: Option<String>,
    /// WireGuard UDP port [default: 51820].
    #[arg(help_heading = HEADING_WIREGUARD, long, env = "WORMHOLE_LISTEN_PORT")]
    pub listen_port: Option<u16>,
    /// WireGuard implementation [default: auto].
    #[arg(help_heading = HEADING_WIREGUARD, long, env = "WORMHOLE_BACKEND", value_enum)]
    pub backend: Option<BackendArg>,
    /// The node's private key, created 0600 if absent [default: /var/lib/wormhole/private.key].
    #[arg(help_heading = HEADING_WIREGUARD, long, env = "WORMHOLE_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Optional cluster secret (base64, `wg genpsk`) from which pair pre-shared keys are derived.
    #[arg(help_heading = HEADING_WIREGUARD, long, env = "WORMHOLE_PSK_FILE", value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// Overlay CIDR, IPv4 or IPv6; repeat for dual-stack (wins over the peers file's).
    #[arg(help_heading = HEADING_PODS, long, env = "WORMHOLE_CLUSTER_CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// WireGuard and pod MTU, or `auto` (underlay MTU - 80) [default: auto].
    #[arg(help_heading = HEADING_WIREGUARD, long, env = "WORMHOLE_MTU")]
    pub mtu: Option<String>,
    /// The pods' bridge, named in the CNI conflist [default: wormhole-br0].
    #[arg(help_heading = HEADING_PODS, long, env = "WORMHOLE_BRIDGE")]
    pub bridge: Option<String>,
    /// Where to write 10-wormhole.conflist [default: /etc/cni/net.d].
    #[arg(help_heading = HEADING_PODS, long, env = "WORMHOLE_CNI_CONF_DIR", value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The host's network sysctls, where IP forwarding is kept on [default: /proc/sys/net]; in
    /// a container (read-only /proc/sys), the host's /proc/sys/net mounted elsewhere.
    #[arg(help_heading = HEADING_PODS, long, env = "WORMHOLE_PROC_SYS_NET", value_name = "DIR")]
    pub proc_sys_net: Option<PathBuf>,
    /// CNI configurations that sort before 10-wormhole.conflist (the runtime uses the first):
    /// `warn` reports them (log, status, preflight, Event), `fail` also fails /readyz
    /// [default: warn].
    #[arg(help_heading = HEADING_PODS, long, env = "WORMHOLE_FOREIGN_CNI", value_enum)]
    pub foreign_cni: Option<ForeignCniArg>,
    /// Where the preflight looks for the CNI plugins (bridge, host-local, portmap, loopback);
    /// repeat for more, the container runtime's first [default: /opt/cni/bin, /usr/lib/cni].
    #[arg(
        help_heading = HEADING_PODS,
        long,
        env = "WORMHOLE_CNI_BIN_DIR",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    pub cni_bin_dir: Vec<PathBuf>,
    /// Time between full reconcile passes, 1s to 24h, e.g. 30s, 2m [default: 30s].
    #[arg(help_heading = HEADING_HEALTH, long, env = "WORMHOLE_RESYNC")]
    pub resync: Option<String>,
    /// How often each peer is probed through the tunnel for health, RTT, loss and path MTU,
    /// 1s to 1h, or `off` [default: 10s].
    #[arg(help_heading = HEADING_HEALTH, long, env = "WORMHOLE_PROBE_INTERVAL")]
    pub probe_interval: Option<String>,
    /// At most this many probes per second to all peers together, 1 to 10000 [default: 200].
    #[arg(help_heading = HEADING_HEALTH, long, env = "WORMHOLE_PROBE_RATE")]
    pub probe_rate: Option<u32>,
    /// Admin server (metrics, health, status) address [default: 127.0.0.1:9473]. Every client
    /// is served /healthz and /readyz; /status and /metrics only this host (loopback, or a
    /// client connecting from the address it connects to, as the kubelet does) and the sources
    /// of --admin-allow and --metrics-allow.
    #[arg(help_heading = HEADING_ADMIN, long, env = "WORMHOLE_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// A source (address or CIDR) besides this host that the admin server serves /status and
    /// /metrics, such as an operator's machine for `status --cluster --admin`; repeat for more.
    /// Pods on other nodes come from their node's address.
    #[arg(
        help_heading = HEADING_ADMIN,
        long,
        env = "WORMHOLE_ADMIN_ALLOW",
        value_delimiter = ',',
        value_name = "IP|CIDR",
        value_parser = parse_source
    )]
    pub admin_allow: Vec<IpNet>,
    /// A source (address or CIDR) besides this host that the admin server serves /metrics, such
    /// as a Prometheus (0.0.0.0/0,::/0: every client); repeat for more.
    #[arg(
        help_heading = HEADING_ADMIN,
        long,
        env = "WORMHOLE_METRICS_ALLOW",
        value_delimiter = ',',
        value_name = "IP|CIDR",
        value_parser = parse_source
    )]
    pub metrics_allow: Vec<IpNet>,
    /// Which peers get series of their own on /metrics [default: problems]. The aggregates
    /// (peers by state, traffic, errors) are always there.
    #[arg(help_heading = HEADING_ADMIN, long, env = "WORMHOLE_PEER_METRICS", value_enum)]
    pub peer_metrics: Option<PeerMetricsArg>,
    /// With --peer-metrics problems: at most this many peers, 1 to 100000 [default: 20].
    #[arg(help_heading = HEADING_ADMIN, long, env = "WORMHOLE_PEER_METRICS_LIMIT", value_name = "PEERS")]
    pub peer_metrics_limit: Option<usize>,
    /// Log format [default: text]; the level comes from RUST_LOG (default info).
    #[arg(help_heading = HEADING_GENERAL, long, env = "WORMHOLE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// On exit, remove the interface, routes, firewall table and conflist (for uninstalling).
    /// Without it, stopping leaves everything in place and pods keep talking.
    #[arg(help_heading = HEADING_GENERAL, long, env = "WORMHOLE_CLEANUP_ON_EXIT")]
    pub cleanup_on_exit: bool,
}

/// `wormhole status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// The agent's admin address.
    #[arg(long, env = "WORMHOLE_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// Every pair of nodes: an N×N matrix (rows = from, columns = to), from the cluster's
    /// WormholeNodes, or with --admin from the nodes' admin endpoints (exit code 4 when any pair
    /// is not ok or a node was not read, 3 when none was).
    #[arg(long)]
    pub cluster: bool,
    /// Where the cluster's view comes from.
    #[command(flatten)]
    pub source: ClusterSource,
}

/// Where `status --cluster` and `graph` read the cluster from.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterSource {
    /// A node's admin endpoint (HOST:PORT, its `--admin-addr`); repeat for every node (peers
    /// file mode). Without it, the cluster's WormholeNodes are read from Kubernetes.
    #[arg(long = "admin", value_name = "HOST:PORT")]
    pub admin: Vec<String>,
    /// Kubeconfig for reading WormholeNodes [default: KUBECONFIG, ~/.kube/config, in a Pod
    /// its service account].
    #[arg(long, value_name = "FILE", conflicts_with = "admin")]
    pub kubeconfig: Option<PathBuf>,
}

/// `wormhole graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "svg")]
    pub output: GraphFormat,
    /// Where the cluster's view comes from.
    #[command(flatten)]
    pub source: ClusterSource,
}

/// `wormhole graph -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// SVG: a circle up to 50 nodes, a heat map of the matrix beyond.
    Svg,
    /// Graphviz DOT (for `dot`, `circo`, `neato`).
    Dot,
}

/// `wormhole status -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// The JSON behind the table.
    Json,
}

/// `wormhole peer-config`.
#[derive(Debug, Args)]
pub struct PeerConfigArgs {
    /// The external peer's name: an `[[external]]` entry of the peers file, or a WormholePeer.
    pub name: String,
    /// The peers file or directory. Without it, the cluster's WormholePeers, WormholeNodes and
    /// Nodes are read from Kubernetes.
    #[arg(long, env = "WORMHOLE_PEERS", value_name = "FILE|DIR")]
    pub peers: Option<PathBuf>,
    /// Kubeconfig for reading the cluster [default: KUBECONFIG, ~/.kube/config, in a Pod its
    /// service account].
    #[arg(long, value_name = "FILE", conflicts_with = "peers")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the agents' --external-cidr (repeat for more); the WormholePeer is
    /// checked against them as the agents check it.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR",
        conflicts_with = "peers"
    )]
    pub external_cidr: Vec<IpNet>,
    /// Kubernetes mode: the agents' --cluster-cidr, if they are given one [default: from
    /// kubeadm-config, as the agents read it].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR",
        conflicts_with = "peers"
    )]
    pub cluster_cidr: Vec<IpNet>,
    /// Also route this Service CIDR through the first node (e.g. 10.96.0.0/12).
    #[arg(long)]
    pub service_cidr: Option<IpNet>,
}

/// `wormhole rotate-key`.
#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// The key file to replace.
    #[arg(
        long,
        env = "WORMHOLE_KEY_FILE",
        default_value = "/var/lib/wormhole/private.key"
    )]
    pub key_file: PathBuf,
}

/// The config file: the same options as `wormhole run`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    peers: Option<PathBuf>,
    #[serde(default)]
    kubernetes: bool,
    kubeconfig: Option<PathBuf>,
    psk_secret: Option<String>,
    psk_secret_namespace: Option<String>,
    endpoint: Option<String>,
    persistent_keepalive: Option<u16>,
    #[serde(default)]
    external_cidr: Vec<IpNet>,
    interface: Option<String>,
    listen_port: Option<u16>,
    backend: Option<BackendArg>,
    key_file: Option<PathBuf>,
    psk_file: Option<PathBuf>,
    #[serde(default)]
    cluster_cidr: Vec<IpNet>,
    mtu: Option<toml::Value>,
    bridge: Option<String>,
    cni_conf_dir: Option<PathBuf>,
    proc_sys_net: Option<PathBuf>,
    foreign_cni: Option<ForeignCniArg>,
    #[serde(default)]
    cni_bin_dir: Vec<PathBuf>,
    resync: Option<String>,
    probe_interval: Option<String>,
    probe_rate: Option<u32>,
    admin_addr: Option<SocketAddr>,
    #[serde(default)]
    admin_allow: Vec<String>,
    #[serde(default)]
    metrics_allow: Vec<String>,
    peer_metrics: Option<PeerMetricsArg>,
    peer_metrics_limit: Option<usize>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    cleanup_on_exit: bool,
}

/// Where peers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSourceKind {
    /// A peers file or directory.
    File(PathBuf),
    /// The Kubernetes API.
    Kubernetes(KubernetesOptions),
}

/// Everything `wormhole run` needs, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    pub source: PeerSourceKind,
    pub interface: InterfaceName,
    pub listen_port: u16,
    pub backend: BackendArg,
    pub key_file: PathBuf,
    pub psk_file: Option<PathBuf>,
    pub cluster_cidrs: Vec<IpNet>,
    /// `None`: detect.
    pub mtu: Option<u32>,
    pub bridge: InterfaceName,
    pub cni_conf_dir: PathBuf,
    pub proc_sys_net: PathBuf,
    pub resync: Duration,
    /// `None`: no probing.
    pub probe_interval: Option<Duration>,
    pub probe_rate: u32,
    pub admin_addr: SocketAddr,
    /// Sources besides this host served `/status` and `/metrics`.
    pub admin_allow: Vec<IpNet>,
    /// Sources besides this host served `/metrics`.
    pub metrics_allow: Vec<IpNet>,
    /// Which peers get series of their own.
    pub peer_metrics: wormhole_agent::PeerMetrics,
    pub log_format: LogFormat,
    pub cleanup_on_exit: bool,
    pub foreign_cni: ForeignCniArg,
    /// Empty: the agent's default.
    pub cni_bin_dirs: Vec<PathBuf>,
}

/// Parses a source of `--admin-allow` or `--metrics-allow`: an address (one host) or a CIDR.
pub fn parse_source(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    if text.parse::<IpNet>().is_err() {
        return Err(format!(
            "{} is neither an address nor a CIDR (for example 192.0.2.7, 192.0.2.0/24 or \
             2001:db8::/64)",
            Escaped(text)
        ));
    }
    parse_cidr(text)
}

/// Parses a CIDR, refused with host bits set (`10.244.0.1/16`): what the agent would refuse.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text.trim().parse().map_err(|_| {
        format!(
            "{} is not a CIDR (for example 10.244.0.0/16 or fd00:10:244::/56)",
            Escaped(text)
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

/// The range every duration option must lie in: a shorter period would spin the agent, a longer
/// one (up to `u64::MAX` seconds) would overflow the timer and abort the process.
pub const DURATION_RANGE: std::ops::RangeInclusive<Duration> = wormhole_agent::RESYNC_RANGE;

/// Parses `30s`, `2m`, `1500ms`, `1h` or a bare number of seconds, between 1s and 24h
/// ([`DURATION_RANGE`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let out_of_range =
        || format!("duration {text:?} is out of range: use 1s to 24h (for example 30s, 2m, 1h)");
    let n: u64 = match number.parse() {
        Ok(n) => n,
        // All digits but too large for u64.
        Err(_) if !number.is_empty() => return Err(out_of_range()),
        Err(_) => return Err(format!("invalid duration {text:?} (try 30s, 2m, 1h)")),
    };
    let millis_per_unit: u64 = match unit {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    let d = n
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(out_of_range)?;
    if !DURATION_RANGE.contains(&d) {
        return Err(out_of_range());
    }
    Ok(d)
}

/// `--peer-metrics` and `--peer-metrics-limit` together.
fn peer_metrics(
    mode: Option<PeerMetricsArg>,
    limit: Option<usize>,
) -> Result<wormhole_agent::PeerMetrics, String> {
    use wormhole_agent::PeerMetrics;
    match (mode.unwrap_or(PeerMetricsArg::Problems), limit) {
        (PeerMetricsArg::Problems, limit) => {
            let limit = limit.unwrap_or(wormhole_agent::DEFAULT_PEER_METRICS_LIMIT);
            if !wormhole_agent::PEER_METRICS_LIMIT_RANGE.contains(&limit) {
                return Err(format!(
                    "--peer-metrics-limit {limit}: must be 1 to 100000 peers (for no per-peer \
                     series, use --peer-metrics none)"
                ));
            }
            Ok(PeerMetrics::Problems { limit })
        }
        (mode, Some(_)) => Err(format!(
            "--peer-metrics-limit goes with --peer-metrics problems, not {}",
            match mode {
                PeerMetricsArg::All => "all (every peer)",
                _ => "none (no peer)",
            }
        )),
        (PeerMetricsArg::All, None) => Ok(PeerMetrics::All),
        (PeerMetricsArg::None, None) => Ok(PeerMetrics::None),
    }
}

/// `--persistent-keepalive`: the parser of the annotation `wormhole.dev/persistent-keepalive`
/// (0 is off, as there).
fn keepalive_arg(text: &str) -> Result<u16, String> {
    wormhole_agent::parse_keepalive(text)
        .map(|seconds| seconds.unwrap_or(0))
        .map_err(|e| e.to_string())
}

fn parse_mtu(text: &str) -> Result<Option<u32>, String> {
    if text.trim() == "auto" {
        return Ok(None);
    }
    let mtu: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid --mtu {text:?}: a number or auto"))?;
    if !(1280..=65535).contains(&mtu) {
        return Err(format!(
            "invalid --mtu {mtu}: must be 1280..65535 (IPv6 needs at least 1280)"
        ));
    }
    Ok(Some(mtu))
}

use wormhole_agent::NODE_NAME_RULE;

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|n| !n.is_empty())
}

impl RunArgs {
    /// Merges command line/environment, config file and defaults, and checks the result.
    pub fn resolve(self) -> Result<Config, String> {
        let file: FileConfig = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
            }
        };
        let kubernetes = self.kubernetes || file.kubernetes;
        let psk_secret_given = self.psk_secret.is_some() || file.psk_secret.is_some();
        if psk_secret_given && !kubernetes {
            return Err("--psk-secret needs --kubernetes (use --psk-file with --peers)".into());
        }
        if psk_secret_given && (self.psk_file.is_some() || file.psk_file.is_some()) {
            return Err("--psk-secret and --psk-file exclude each other: pick one".into());
        }
        let external_cidrs = if self.external_cidr.is_empty() {
            file.external_cidr
        } else {
            self.external_cidr
        };
        if !external_cidrs.is_empty() && !kubernetes {
            return Err(
                "--external-cidr goes with --kubernetes (with --peers, list external_cidrs in the peers file)"
                    .into(),
            );
        }
        if let Some(bad) = external_cidrs.iter().find(|c| c.trunc() != **c) {
            return Err(format!(
                "invalid --external-cidr {bad}: host bits set (did you mean {}?)",
                bad.trunc()
            ));
        }
        let peers = self.peers.or(file.peers);
        let source = match (peers, kubernetes) {
            (Some(_), true) => {
                return Err("--peers and --kubernetes exclude each other: pick one".into());
            }
            (Some(_), false)
                if self.endpoint.is_some()
                    || file.endpoint.is_some()
                    || self.persistent_keepalive.is_some()
                    || file.persistent_keepalive.is_some() =>
            {
                return Err(
                    "--endpoint and --persistent-keepalive are for --kubernetes: with \
                            --peers, set endpoint and persistent_keepalive on the node's \
                            [[node]] entry in the peers file"
                        .into(),
                );
            }
            (Some(path), false) => PeerSourceKind::File(path),
            (None, true) => {
                let mut options = KubernetesOptions::in_cluster();
                if let Some(path) = self.kubeconfig.or(file.kubeconfig) {
                    options = options.kubeconfig(path);
                }
                if let Some(name) = self.psk_secret.or(file.psk_secret) {
                    let ns = self.psk_secret_namespace.or(file.psk_secret_namespace);
                    options = options.psk_secret(ns.as_deref().unwrap_or("wormhole"), name);
                }
                if let Some(text) = self.endpoint.or(file.endpoint) {
                    // The parser of the annotation wormhole.dev/endpoint: one syntax for both.
                    let listen_port = self.listen_port.or(file.listen_port).unwrap_or(51820);
                    options.endpoint = PublishedEndpoint::parse(&text, listen_port)
                        .map_err(|e| format!("invalid --endpoint \"{}\": {e}", Escaped(&text)))?;
                }
                if let Some(seconds) = self.persistent_keepalive.or(file.persistent_keepalive) {
                    options = options.persistent_keepalive(seconds);
                }
                options = options.external_cidrs(external_cidrs);
                PeerSourceKind::Kubernetes(options)
            }
            (None, false) => {
                return Err("no peer source: pass --peers FILE|DIR (or --kubernetes)".into());
            }
        };
        let node_name = match self.node_name.or(file.node_name) {
            Some(name) if is_dns1123_subdomain(&name) => name,
            Some(name) => {
                return Err(format!(
                    "invalid --node-name \"{}\": {NODE_NAME_RULE}",
                    Escaped(&name)
                ));
            }
            // Like the kubelet: the host name, lowercased.
            None => match hostname().map(|h| h.to_lowercase()) {
                Some(name) if is_dns1123_subdomain(&name) => name,
                Some(name) => {
                    return Err(format!(
                        "the host name \"{}\" is not a valid node name ({NODE_NAME_RULE}): \
                         pass --node-name",
                        Escaped(&name)
                    ));
                }
                None => return Err("no node name: pass --node-name".into()),
            },
        };
        let mtu = match (self.mtu, file.mtu) {
            (Some(text), _) => parse_mtu(&text)?,
            (None, Some(toml::Value::Integer(n))) => parse_mtu(&n.to_string())?,
            (None, Some(toml::Value::String(s))) => parse_mtu(&s)?,
            (None, Some(other)) => {
                return Err(format!(
                    "config file: mtu must be a number or \"auto\", not {other}"
                ));
            }
            (None, None) => None,
        };
        let resync = parse_duration(self.resync.or(file.resync).as_deref().unwrap_or("30s"))
            .map_err(|e| format!("--resync: {e}"))?;
        let probe_interval = match self
            .probe_interval
            .or(file.probe_interval)
            .as_deref()
            .unwrap_or("10s")
        {
            "off" => None,
            text => {
                let every = parse_duration(text).map_err(|e| format!("--probe-interval: {e}"))?;
                if !wormhole_agent::PROBE_INTERVAL_RANGE.contains(&every) {
                    return Err(format!(
                        "--probe-interval {text:?}: must be 1s to 1h, or off"
                    ));
                }
                Some(every)
            }
        };
        let probe_rate = self.probe_rate.or(file.probe_rate).unwrap_or(200);
        if !wormhole_agent::PROBE_RATE_RANGE.contains(&probe_rate) {
            return Err(format!(
                "--probe-rate {probe_rate}: must be 1 to 10000 probes per second"
            ));
        }
        let interface: InterfaceName = self
            .interface
            .or(file.interface)
            .as_deref()
            .unwrap_or("wormhole0")
            .parse()
            .map_err(|e| format!("--interface: {e}"))?;
        let bridge: InterfaceName = self
            .bridge
            .or(file.bridge)
            .as_deref()
            .unwrap_or("wormhole-br0")
            .parse()
            .map_err(|e| format!("--bridge: {e}"))?;
        if bridge == interface {
            return Err(format!(
                "--bridge and --interface are both {interface}: the pod bridge and the WireGuard interface must differ"
            ));
        }
        let cluster_cidrs = if self.cluster_cidr.is_empty() {
            file.cluster_cidr
        } else {
            self.cluster_cidr
        };
        if let Some(bad) = cluster_cidrs.iter().find(|c| c.trunc() != **c) {
            return Err(format!(
                "invalid --cluster-cidr {bad}: host bits set (did you mean {}?)",
                bad.trunc()
            ));
        }
        let sources = |flag: Vec<IpNet>, file: Vec<String>, name: &str| {
            if !flag.is_empty() {
                return Ok(flag);
            }
            file.iter()
                .map(|text| {
                    parse_source(text)
                        .map_err(|e| format!("invalid {name} in the config file: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let admin_allow = sources(self.admin_allow, file.admin_allow, "admin_allow")?;
        let metrics_allow = sources(self.metrics_allow, file.metrics_allow, "metrics_allow")?;
        let peer_metrics = peer_metrics(
            self.peer_metrics.or(file.peer_metrics),
            self.peer_metrics_limit.or(file.peer_metrics_limit),
        )?;
        Ok(Config {
            node_name,
            source,
            interface,
            listen_port: self.listen_port.or(file.listen_port).unwrap_or(51820),
            backend: self.backend.or(file.backend).unwrap_or(BackendArg::Auto),
            key_file: self
                .key_file
                .or(file.key_file)
                .unwrap_or_else(|| "/var/lib/wormhole/private.key".into()),
            psk_file: self.psk_file.or(file.psk_file),
            cluster_cidrs,
            mtu,
            bridge,
            cni_conf_dir: self
                .cni_conf_dir
                .or(file.cni_conf_dir)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            proc_sys_net: self
                .proc_sys_net
                .or(file.proc_sys_net)
                .unwrap_or_else(|| "/proc/sys/net".into()),
            resync,
            probe_interval,
            probe_rate,
            admin_addr: self
                .admin_addr
                .or(file.admin_addr)
                .unwrap_or_else(|| DEFAULT_ADMIN_ADDR.parse().expect("valid default")),
            admin_allow,
            metrics_allow,
            peer_metrics,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            cleanup_on_exit: self.cleanup_on_exit || file.cleanup_on_exit,
            foreign_cni: self
                .foreign_cni
                .or(file.foreign_cni)
                .unwrap_or(ForeignCniArg::Warn),
            cni_bin_dirs: if self.cni_bin_dir.is_empty() {
                file.cni_bin_dir
            } else {
                self.cni_bin_dir
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut full = vec!["wormhole", "run"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Run(args) => args.resolve(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let c = parse(&["--peers", "/p.toml", "--node-name", "a"]).unwrap();
        assert_eq!(c.interface.as_str(), "wormhole0");
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.backend, BackendArg::Auto);
        assert_eq!(c.mtu, None);
        assert_eq!(c.resync, Duration::from_secs(30));
        assert_eq!(c.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert_eq!(c.source, PeerSourceKind::File("/p.toml".into()));
        assert_eq!(c.proc_sys_net, PathBuf::from("/proc/sys/net"));
        let c = parse(&[
            "--peers",
            "/p",
            "--proc-sys-net",
            "/host/proc/sys/net",
            "--node-name",
            "a",
            "--mtu",
            "1380",
            "--resync",
            "1500ms",
            "--cluster-cidr",
            "10.99.0.0/16",
            "--cluster-cidr",
            "fd99::/48",
            "--backend",
            "userspace",
        ])
        .unwrap();
        assert_eq!(c.mtu, Some(1380));
        assert_eq!(c.resync, Duration::from_millis(1500));
        assert_eq!(c.cluster_cidrs.len(), 2);
        assert_eq!(c.backend, BackendArg::Userspace);
        assert_eq!(c.proc_sys_net, PathBuf::from("/host/proc/sys/net"));
    }

    #[test]
    fn bad_input_is_named() {
        let err = parse(&["--node-name", "a"]).unwrap_err();
        assert!(err.contains("no peer source"), "{err}");
        let err = parse(&["--peers", "p", "--kubernetes", "--node-name", "a"]).unwrap_err();
        assert!(err.contains("exclude each other"), "{err}");
        let err = parse(&["--peers", "p", "--node-name", "a", "--mtu", "9"]).unwrap_err();
        assert!(err.contains("1280"), "{err}");
        let err = parse(&["--peers", "p", "--node-name", "a", "--resync", "3 weeks"]).unwrap_err();
        assert!(err.contains("--resync"), "{err}");
        let err = parse(&[
            "--peers",
            "p",
            "--node-name",
            "a",
            "--cluster-cidr",
            "10.99.0.1/16",
        ])
        .unwrap_err();
        assert!(err.contains("did you mean 10.99.0.0/16"), "{err}");
        let err = parse(&[
            "--peers",
            "p",
            "--node-name",
            "a",
            "--interface",
            "much-too-long-name",
        ])
        .unwrap_err();
        assert!(err.contains("--interface"), "{err}");
    }

    #[test]
    fn admin_sources_are_addresses_or_cidrs() {
        let base = ["--peers", "/p", "--node-name", "a"];
        let c = parse(&base).unwrap();
        assert!(c.admin_allow.is_empty() && c.metrics_allow.is_empty());
        let mut args = base.to_vec();
        args.extend([
            "--admin-allow",
            "192.0.2.7",
            "--admin-allow",
            "2001:db8::/64",
            "--metrics-allow",
            "0.0.0.0/0,::/0",
        ]);
        let c = parse(&args).unwrap();
        let text = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(text(&c.admin_allow), ["192.0.2.7/32", "2001:db8::/64"]);
        assert_eq!(text(&c.metrics_allow), ["0.0.0.0/0", "::/0"]);
        for (bad, says) in [
            ("192.0.2.7/24", "did you mean 192.0.2.0/24"),
            ("pods", "neither an address nor a CIDR"),
            ("10.0.0.0/33", "neither an address nor a CIDR"),
        ] {
            let mut args = base.to_vec();
            args.extend(["--admin-allow", bad]);
            let err = parse(&args).unwrap_err();
            assert!(err.contains("--admin-allow") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn admin_sources_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "admin_allow = [\"192.0.2.7\"]\nmetrics_allow = [\"10.244.0.0/16\"]\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let c = parse(&["--peers", "/p", "--node-name", "a", "--config", file]).unwrap();
        assert_eq!(c.admin_allow, ["192.0.2.7/32".parse::<IpNet>().unwrap()]);
        assert_eq!(c.metrics_allow, ["10.244.0.0/16".parse::<IpNet>().unwrap()]);
        std::fs::write(&path, "metrics_allow = [\"10.244.0.1/16\"]\n").unwrap();
        let err = parse(&["--peers", "/p", "--node-name", "a", "--config", file]).unwrap_err();
        assert!(
            err.contains("invalid metrics_allow in the config file")
                && err.contains("did you mean 10.244.0.0/16"),
            "{err}"
        );
    }

    #[test]
    fn external_cidrs_go_to_the_kubernetes_source_only() {
        let c = parse(&[
            "--kubernetes",
            "--node-name",
            "a",
            "--external-cidr",
            "10.98.0.0/24",
            "--external-cidr",
            "fd98::/64",
        ])
        .unwrap();
        let PeerSourceKind::Kubernetes(options) = c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(
            options.external_cidrs,
            [
                "10.98.0.0/24".parse().unwrap(),
                "fd98::/64".parse().unwrap()
            ] as [IpNet; 2]
        );
        let err = parse(&[
            "--peers",
            "p",
            "--node-name",
            "a",
            "--external-cidr",
            "10.98.0.0/24",
        ])
        .unwrap_err();
        assert!(err.contains("external_cidrs in the peers file"), "{err}");
        let err = parse(&[
            "--kubernetes",
            "--node-name",
            "a",
            "--external-cidr",
            "10.98.0.1/24",
        ])
        .unwrap_err();
        assert!(err.contains("did you mean 10.98.0.0/24"), "{err}");
    }

    #[test]
    fn interface_and_bridge_names_cannot_reach_the_firewall_unchecked() {
        // `s*` would turn the no-cleartext rule's `oifname != "s*"` into a wildcard.
        for (flag, bad) in [
            ("--bridge", "s*"),
            ("--bridge", "br\"0"),
            ("--interface", "wg\"0"),
            ("--interface", "wg?"),
            ("--bridge", "a[b]"),
            ("--bridge", ""),
            ("--interface", "wg\n0"),
            ("--bridge", "much-too-long-name"),
        ] {
            let err = parse(&["--peers", "p", "--node-name", "a", flag, bad])
                .expect_err(&format!("{flag} {bad:?} accepted"));
            assert!(
                err.starts_with(&format!("{flag}: invalid interface name")),
                "{err}"
            );
        }
        let err =
            parse(&["--peers", "p", "--node-name", "a", "--bridge", "wormhole0"]).unwrap_err();
        assert!(err.contains("must differ"), "{err}");
        let c = parse(&["--peers", "p", "--node-name", "a", "--bridge", "cni0"]).unwrap();
        assert_eq!(c.bridge.as_str(), "cni0");
    }

    #[test]
    fn durations_are_range_checked_at_parse_time() {
        let resync = |d: &str| parse(&["--peers", "p", "--node-name", "a", "--resync", d]);
        for (ok, want) in [
            ("1s", Duration::from_secs(1)),
            ("1000ms", Duration::from_secs(1)),
            ("90", Duration::from_secs(90)),
            ("24h", Duration::from_secs(86_400)),
            ("1440m", Duration::from_secs(86_400)),
        ] {
            assert_eq!(resync(ok).unwrap().resync, want, "{ok}");
        }
        for bad in [
            "18446744073709551615s",
            "18446744073709551615m",
            "18446744073709551615h",
            "99999999999999999999999s",
            "86401s",
            "25h",
            "999ms",
            "0s",
        ] {
            let err = resync(bad).expect_err(bad);
            assert!(
                err.contains("--resync") && err.contains("1s") && err.contains("24h"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn node_names_must_be_dns_1123_subdomains() {
        for bad in [
            "Node1",
            "node_1",
            "-a",
            "a..b",
            "evil\",peer=\"x",
            "\u{1b}[2Jx",
        ] {
            let flag = format!("--node-name={bad}");
            let err = parse(&["--peers", "p", &flag]).expect_err(bad);
            assert!(
                err.contains("--node-name") && err.contains("DNS-1123"),
                "{bad}: {err}"
            );
            assert!(!err.contains('\u{1b}'), "{err:?}");
        }
        let c = parse(&["--peers", "p", "--node-name", "node-1.example"]).unwrap();
        assert_eq!(c.node_name, "node-1.example");
    }

    #[test]
    fn config_file_fills_what_the_command_line_does_not_give() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wormhole.toml");
        std::fs::write(
            &path,
            "node_name = \"from-file\"\npeers = \"/etc/wormhole/peers.toml\"\nmtu = 1400\nlisten_port = 4000\n",
        )
        .unwrap();
        let c = parse(&["--config", path.to_str().unwrap(), "--listen-port", "5000"]).unwrap();
        assert_eq!(c.node_name, "from-file");
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.listen_port, 5000, "the command line wins");
        std::fs::write(&path, "node_nam = \"typo\"\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("unknown field `node_nam`"), "{err}");
    }

    #[test]
    fn endpoint_options_behind_nat() {
        use wormhole_k8s::PublishedEndpoint;
        let kube = |extra: &[&str]| {
            let mut args = vec!["--kubernetes", "--node-name", "a"];
            args.extend_from_slice(extra);
            parse(&args).map(|c| match c.source {
                PeerSourceKind::Kubernetes(k) => (k.endpoint, k.persistent_keepalive),
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(kube(&[]).unwrap(), (PublishedEndpoint::InternalIp, None));
        assert_eq!(
            kube(&["--endpoint", "none", "--persistent-keepalive", "25"]).unwrap(),
            (PublishedEndpoint::BehindNat, Some(25))
        );
        assert_eq!(
            kube(&["--endpoint", "[fd00::1]:4000"]).unwrap(),
            (
                PublishedEndpoint::Fixed("[fd00::1]:4000".parse().unwrap()),
                None
            )
        );
        assert_eq!(
            kube(&["--persistent-keepalive", "0"]).unwrap(),
            (PublishedEndpoint::InternalIp, None),
            "0 is off"
        );
        let err = kube(&["--endpoint", "nat.example:1"]).unwrap_err();
        assert!(
            err.contains("invalid --endpoint \"nat.example:1\"") && err.contains("none"),
            "{err}"
        );
        // The syntax of the annotation wormhole.dev/endpoint (one parser): an address alone
        // takes the listen port, internal-ip is the default said out loud, and an address every
        // peer would refuse is refused here.
        assert_eq!(
            kube(&["--endpoint", "203.0.113.5", "--listen-port", "4000"]).unwrap(),
            (
                PublishedEndpoint::Fixed("203.0.113.5:4000".parse().unwrap()),
                None
            )
        );
        assert_eq!(
            kube(&["--endpoint", "internal-ip"]).unwrap(),
            (PublishedEndpoint::InternalIp, None)
        );
        let err = kube(&["--endpoint", "127.0.0.1:51820"]).unwrap_err();
        assert!(
            err.starts_with("invalid --endpoint \"127.0.0.1:51820\": loopback address"),
            "{err}"
        );
        let err = kube(&["--persistent-keepalive", "25s"]).unwrap_err();
        assert!(err.contains("not a whole number of seconds"), "{err}");
        let err = kube(&["--persistent-keepalive", "70000"]).unwrap_err();
        assert!(err.contains("--persistent-keepalive"), "{err}");
        for flag in [["--endpoint", "none"], ["--persistent-keepalive", "25"]] {
            let err = parse(&["--peers", "p", "--node-name", "a", flag[0], flag[1]]).unwrap_err();
            assert!(err.contains("[[node]] entry in the peers file"), "{err}");
        }
    }

    #[test]
    fn run_help_groups_every_flag_and_its_examples_parse() {
        use clap::CommandFactory as _;
        let mut cli = Cli::command();
        let run = cli.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        let headings = [
            HEADING_GENERAL,
            HEADING_PEERS,
            HEADING_KUBERNETES,
            HEADING_WIREGUARD,
            HEADING_PODS,
            HEADING_HEALTH,
            HEADING_ADMIN,
        ];
        let mut at = 0;
        for heading in headings {
            let found = help[at..]
                .find(&format!("\n{heading}:\n"))
                .unwrap_or_else(|| panic!("no group {heading:?} (in this order) in\n{help}"));
            at += found + 1;
        }
        // Every flag but --help and --version is in a group.
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_help_heading()
                    .is_some_and(|h| headings.contains(&h)),
                "--{id} is in no group"
            );
        }
        // The examples are real invocations.
        assert!(help.contains("Examples:"), "{help}");
        let examples: Vec<&str> = RUN_EXAMPLES
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("wormhole run"))
            .collect();
        assert!(examples.len() >= 4, "{examples:?}");
        for example in examples {
            let words: Vec<&str> = example.split_whitespace().collect();
            let parsed = Cli::try_parse_from(&words)
                .unwrap_or_else(|e| panic!("{example}: {e}"))
                .command;
            let Command::Run(mut args) = parsed else {
                panic!("{example}")
            };
            match args.config.take() {
                // A config file's path: it parses; what the file holds is another test's.
                Some(path) => assert_eq!(path, PathBuf::from("/etc/wormhole/wormhole.toml")),
                None => {
                    if args.node_name.is_none() {
                        args.node_name = Some("node-1".into());
                    }
                    args.resolve().unwrap_or_else(|e| panic!("{example}: {e}"));
                }
            }
        }
    }

    #[test]
    fn every_run_flag_and_its_variable_is_in_the_configuration_page() {
        use clap::CommandFactory as _;
        let readme = include_str!("../../docs/configuration.md");
        let cli = Cli::command();
        let run = cli.find_subcommand("run").unwrap();
        for arg in run.get_arguments() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let row = format!("| `--{long}");
            let line = readme
                .lines()
                .find(|l| l.starts_with(&row))
                .unwrap_or_else(|| panic!("no docs/configuration.md row for --{long}"));
            assert!(
                line.contains(&format!("`{}`", env.to_str().unwrap())),
                "the row of --{long} in docs/configuration.md does not name {env:?}: {line}"
            );
        }
    }

    #[test]
    fn peer_metrics_options() {
        use wormhole_agent::PeerMetrics;
        let base = ["--peers", "p", "--node-name", "a"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args).map(|c| c.peer_metrics)
        };
        assert_eq!(with(&[]).unwrap(), PeerMetrics::Problems { limit: 20 });
        assert_eq!(with(&["--peer-metrics", "all"]).unwrap(), PeerMetrics::All);
        assert_eq!(
            with(&["--peer-metrics", "none"]).unwrap(),
            PeerMetrics::None
        );
        assert_eq!(
            with(&["--peer-metrics-limit", "5"]).unwrap(),
            PeerMetrics::Problems { limit: 5 }
        );
        for (extra, says) in [
            (
                &["--peer-metrics-limit", "0"][..],
                "must be 1 to 100000 peers (for no per-peer series, use --peer-metrics none)",
            ),
            (
                &["--peer-metrics", "all", "--peer-metrics-limit", "5"][..],
                "--peer-metrics-limit goes with --peer-metrics problems, not all",
            ),
            (&["--peer-metrics", "some"][..], "invalid value 'some'"),
        ] {
            let err = with(extra).unwrap_err();
            assert!(err.contains(says), "{extra:?}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "peer_metrics = \"none\"\n").unwrap();
        let file = path.to_str().unwrap();
        assert_eq!(with(&["--config", file]).unwrap(), PeerMetrics::None);
    }

    #[test]
    fn foreign_cni_and_plugin_directories() {
        let c = parse(&["--peers", "p", "--node-name", "a"]).unwrap();
        assert_eq!(c.foreign_cni, ForeignCniArg::Warn);
        assert!(c.cni_bin_dirs.is_empty());
        let c = parse(&[
            "--peers",
            "p",
            "--node-name",
            "a",
            "--foreign-cni",
            "fail",
            "--cni-bin-dir",
            "/host/opt/cni/bin,/usr/lib/cni",
        ])
        .unwrap();
        assert_eq!(c.foreign_cni, ForeignCniArg::Fail);
        assert_eq!(
            c.cni_bin_dirs,
            [PathBuf::from("/host/opt/cni/bin"), "/usr/lib/cni".into()]
        );
        let err = parse(&[
            "--peers",
            "p",
            "--node-name",
            "a",
            "--foreign-cni",
            "ignore",
        ])
        .unwrap_err();
        assert!(
            err.contains("--foreign-cni") && err.contains("warn, fail"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "foreign_cni = \"fail\"\ncni_bin_dir = [\"/x\"]\n").unwrap();
        let file = path.to_str().unwrap();
        let c = parse(&["--peers", "p", "--node-name", "a", "--config", file]).unwrap();
        assert_eq!(c.foreign_cni, ForeignCniArg::Fail);
        assert_eq!(c.cni_bin_dirs, [PathBuf::from("/x")]);
    }

    #[test]
    fn probe_options() {
        let c = parse(&["--peers", "p", "--node-name", "a"]).unwrap();
        assert_eq!(c.probe_interval, Some(Duration::from_secs(10)));
        assert_eq!(c.probe_rate, 200);
        let c = parse(&[
            "--peers",
            "p",
            "--node-name",
            "a",
            "--probe-interval",
            "off",
        ])
        .unwrap();
        assert_eq!(c.probe_interval, None);
        let c = parse(&[
            "--peers",
            "p",
            "--node-name",
            "a",
            "--probe-interval",
            "2s",
            "--probe-rate",
            "50",
        ])
        .unwrap();
        assert_eq!(
            (c.probe_interval, c.probe_rate),
            (Some(Duration::from_secs(2)), 50)
        );
        for (flag, value, want) in [
            ("--probe-interval", "2h", "must be 1s to 1h, or off"),
            ("--probe-interval", "often", "invalid duration"),
            ("--probe-rate", "0", "must be 1 to 10000"),
        ] {
            let err = parse(&["--peers", "p", "--node-name", "a", flag, value]).unwrap_err();
            assert!(err.contains(flag) && err.contains(want), "{err}");
        }
    }
}
