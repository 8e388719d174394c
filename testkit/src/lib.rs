//! Test support shared by the network-namespace suites of `wormhole-linux` and
//! `wormhole-daemon` (`tests/it`); not published.
//!
//! Start with [`Netns`] (a namespace, deleted with its processes on drop), [`Netns::underlay`]
//! and [`Netns::node`] (a bridge and the "nodes" plugged into it), [`Capture`] (tcpdump) and
//! [`Pod`] (a namespace attached by the real CNI plugins). Wall-clock limits go through
//! [`scaled`], so that `WORMHOLE_TIME_FACTOR` stretches them on slow machines (the VM lane).
//!
//! Everything here is about the host, not about Wormhole's insides: each suite keeps its own
//! `harness.rs` for what is specific to it (reconcilers on the real backends, or the built
//! `wormhole` binary) and re-exports from here what its tests use.

mod addresses;
mod capture;
mod netns;
mod pod;
mod process;
mod time;
mod traffic;

pub use addresses::{CLUSTER_CIDRS, overlay_ips, pod_cidrs, underlay_ip};
pub use capture::{Capture, assert_only_wireguard, underlay_offenders};
pub use netns::{Netns, in_netns};
pub use pod::{CNI_PATH, Pod};
pub use process::{
    chain, cpu_ticks, prefix, proc_status, root_or_skip, rss_kib, run, sh, wireguard_go_pid,
};
pub use time::{poll, scaled, wait_timeout};
pub use traffic::{TcpEcho, cross_node_pairs, icmp_matrix, tcp_matrix, tcp_send};
