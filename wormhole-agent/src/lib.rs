//! `wormhole-agent`: the Wormhole node agent as a library — everything `wormhole run` does,
//! behind a typed builder, for distributions that run Wormhole inside their own node agent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wormhole_agent::Error> {
//! use wormhole_agent::{Agent, Backend, Peers};
//!
//! let agent = Agent::builder("node-a", Peers::file("/etc/wormhole/peers.toml"))
//!     .backend(Backend::Auto)
//!     .key_file("/var/lib/wormhole/private.key")
//!     .build()?;
//! // Runs until the future resolves (here: Ctrl-C); the network stays in place afterwards.
//! agent.run(async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```
//!
//! What one agent does, in order:
//! 1. **Start-up** ([`Agent::start`]): loads (or creates) the node's private key and the PSK,
//!    connects to the peer source (a peers file, the Kubernetes API, or your own
//!    [`PeerSource`](wormhole_core::PeerSource)), opens the WireGuard device of the chosen
//!    backend and detects the MTU. Nothing on the host changes yet, and an error here names its
//!    cause (and, where known, the fix).
//! 2. **Running** ([`Running::run_until`]): the reconciler keeps the WireGuard interface, the
//!    routes and the nftables table equal to the mesh; beside it the agent writes the CNI
//!    conflist, probes every peer through the tunnel (health, round-trip time, loss, path MTU),
//!    serves `/metrics`, `/healthz`, `/readyz` and `/status` (optional; pods get the probes
//!    only, see [`AgentBuilder::admin_addr`]), keeps IP forwarding on (not ready while it
//!    cannot), and in Kubernetes mode publishes this node's WormholeNode and Events.
//! 3. **Stop**: when the shutdown future resolves. The network is left in place (a restart drops
//!    no traffic) unless [`AgentBuilder::cleanup_on_exit`] was asked for.
//!
//! Around it: [`Agent::preflight`] checks what the node needs for the agent ([`PreflightReport`],
//! what `wormhole preflight` prints; the running agent checks the same after its passes and
//! serves the result in `/status`), and [`Uninstall`] takes every trace of Wormhole off a node
//! (what `wormhole uninstall` runs; refused while an agent runs there).
//!
//! [`ClusterView`] is the cluster as its nodes see it (every pair's state), read from the
//! WormholeNodes or from each node's `/status`: what `wormhole status --cluster` and `wormhole
//! graph` show.
//!
//! Signals are the host process's business: the agent never installs a handler (the `wormhole`
//! binary turns SIGTERM and SIGINT into the shutdown future).

mod admin;
mod agent;
mod builder;
mod checkup;
mod cluster;
mod cni;
mod error;
mod forwarding;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod host;
mod lock;
mod metrics;
#[cfg(test)]
mod monitoring;
mod node_settings;
mod preflight;
mod uninstall;
mod view;

pub use agent::{Agent, Running};
pub use builder::{
    AgentBuilder, Backend, ForeignCni, KubernetesOptions, NODE_NAME_RULE, PROBE_INTERVAL_RANGE,
    PROBE_RATE_RANGE, Peers, RESYNC_RANGE,
};
pub use cluster::{
    Cell, ClusterNode, ClusterView, Health, NodeReport, Summary, Trouble, read_external_peers,
};
pub use error::{EnvironmentError, Error, InvalidOption};
pub use metrics::{DEFAULT_PEER_METRICS_LIMIT, PEER_METRICS_LIMIT_RANGE, PeerMetrics};
pub use preflight::{
    Check, DEFAULT_CNI_BIN_DIRS, DEFAULT_CNI_DATA_DIR, Level, MAX_LISTED, PreflightReport,
};
pub use uninstall::{Trace, Uninstall, UninstallReport};
pub use view::{NodeSettingsView, PassView, PeerView, StatusView};
/// What [`KubernetesOptions`] takes, and the parsers `wormhole run` shares with the Node
/// annotations that override them.
pub use wormhole_k8s::{PublishedEndpoint, SettingError, parse_keepalive};

/// The Rust examples of the library guide (docs/library.md), compiled as doctests so that they
/// stay true.
#[cfg(doctest)]
#[doc = include_str!("../../docs/library.md")]
pub struct LibraryGuideDoctests;
