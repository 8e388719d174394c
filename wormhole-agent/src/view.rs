//! The JSON the admin server serves at `/status` (what `wormhole status` shows): a stable,
//! serializable view of the reconciler's [`Status`].

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use wormhole_core::Status;

use crate::preflight::{Level, PreflightReport};

/// One row: an accepted peer or a rejected entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub public_key: Option<String>,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the latest handshake; `null` if none yet.
    pub latest_handshake_age_seconds: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// `ok`, `stale`, `never`, `unreachable`, `mtu-blackhole (max N)`, `lossy (N %)`,
    /// `rejected: <reason>`, or the change that could not be applied.
    pub state: String,
    /// What to check, for a state other than `ok`.
    #[serde(default)]
    pub hint: Option<String>,
    /// A peer outside the cluster (`[[external]]`), not probed.
    #[serde(default)]
    pub external: bool,
    /// Smoothed round-trip time of the probes through the tunnel, in milliseconds.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Round-trip time of the latest answered probe, in milliseconds.
    #[serde(default)]
    pub last_rtt_ms: Option<f64>,
    /// Share of the latest probes lost (0 to 1).
    #[serde(default)]
    pub probe_loss: Option<f64>,
    /// The largest packet seen to get through to the peer, in bytes.
    #[serde(default)]
    pub path_mtu: Option<u32>,
}

/// The latest reconcile pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassView {
    pub age_seconds: u64,
    pub duration_ms: f64,
    pub changes: usize,
    pub error: Option<String>,
}

/// Kubernetes mode: what this node publishes about itself, and where each setting comes from
/// (its options, or an annotation on its Node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSettingsView {
    /// `none` (behind NAT), `internal-ip` (the Node's InternalIP), or `IP:PORT`.
    pub endpoint: String,
    /// `flag` (the option, its environment variable or the config file) or `annotation`.
    pub endpoint_from: String,
    /// Seconds; `null`: off.
    pub persistent_keepalive: Option<u16>,
    /// `flag` or `annotation`.
    pub persistent_keepalive_from: String,
    /// Annotations of `wormhole.dev/` refused, each with why (their settings stay as they were).
    #[serde(default)]
    pub refused: Vec<String>,
}

impl NodeSettingsView {
    pub(crate) fn new(settings: &wormhole_k8s::LocalSettings) -> Self {
        let in_force = settings.in_force();
        NodeSettingsView {
            endpoint: in_force.endpoint.to_string(),
            endpoint_from: settings.endpoint_from().as_str().into(),
            persistent_keepalive: in_force.persistent_keepalive,
            persistent_keepalive_from: settings.keepalive_from().as_str().into(),
            refused: settings.refused().iter().map(ToString::to_string).collect(),
        }
    }
}

/// Everything `wormhole status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub node: String,
    pub public_key: Option<String>,
    pub backend: String,
    pub interface: String,
    pub mtu: u32,
    pub pod_cidrs: Vec<String>,
    pub ready: bool,
    /// Why not ready, when not (`Status::not_ready_reason`).
    #[serde(default)]
    pub not_ready: Option<String>,
    pub last_reconcile: Option<PassView>,
    pub source_error: Option<String>,
    pub passes: u64,
    pub errors: u64,
    pub peers: Vec<PeerView>,
    /// The running agent's latest preflight (`null` from agents without one, or before the
    /// first).
    #[serde(default)]
    pub preflight: Option<PreflightReport>,
    /// CNI configuration files that take precedence over Wormhole's (the container runtime
    /// uses the first by name): new pods on this node are not attached by Wormhole.
    #[serde(default)]
    pub foreign_cni_configs: Vec<String>,
    /// Kubernetes mode: this node's per-node settings (`null` in other modes, from agents
    /// without them, or before the Node was read).
    #[serde(default)]
    pub node_settings: Option<NodeSettingsView>,
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn age(now: SystemTime, t: SystemTime) -> u64 {
    now.duration_since(t).unwrap_or_default().as_secs()
}

impl StatusView {
    /// The view of `status` at `now`.
    pub fn new(status: &Status, now: SystemTime) -> Self {
        let mut peers: Vec<PeerView> = status
            .peers
            .iter()
            .map(|p| PeerView {
                name: p.name.clone(),
                public_key: Some(p.public_key.to_base64()),
                endpoint: p.endpoint.map(|e| e.to_string()),
                allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                latest_handshake_age_seconds: p.latest_handshake.map(|t| age(now, t)),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                // A change that could not be applied names its cause instead of a state.
                state: status
                    .peer_problems
                    .get(&p.public_key)
                    .cloned()
                    .unwrap_or_else(|| p.state(now).to_string()),
                external: p.external,
                hint: match status.peer_problems.contains_key(&p.public_key) {
                    true => None,
                    false => p.state(now).hint(),
                },
                rtt_ms: p.probe.and_then(|r| r.smoothed_rtt).map(millis),
                last_rtt_ms: p.probe.and_then(|r| r.last_rtt).map(millis),
                probe_loss: p.probe.filter(|r| r.sent > 0).map(|r| r.loss_ratio()),
                path_mtu: p.probe.and_then(|r| r.path_mtu),
            })
            .collect();
        peers.extend(status.rejected.iter().map(|r| PeerView {
            name: if r.name.is_empty() {
                format!("({})", r.origin)
            } else {
                r.name.clone()
            },
            public_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            latest_handshake_age_seconds: None,
            rx_bytes: 0,
            tx_bytes: 0,
            state: format!("rejected: {}", r.reason),
            hint: None,
            external: r.external,
            rtt_ms: None,
            last_rtt_ms: None,
            probe_loss: None,
            path_mtu: None,
        }));
        StatusView {
            node: status.node_name.clone(),
            public_key: status.public_key.map(|k| k.to_base64()),
            backend: status.backend.clone(),
            interface: status.interface.clone(),
            mtu: status.mtu,
            pod_cidrs: status.pod_cidrs.iter().map(ToString::to_string).collect(),
            ready: status.ready(),
            not_ready: status.not_ready_reason(),
            last_reconcile: status.last_pass.as_ref().map(|p| PassView {
                age_seconds: age(now, p.at),
                duration_ms: p.duration.as_secs_f64() * 1000.0,
                changes: p.changes,
                error: p.error.clone(),
            }),
            source_error: status.source_error.clone(),
            passes: status.passes,
            errors: status.errors,
            peers,
            preflight: None,
            foreign_cni_configs: Vec::new(),
            node_settings: None,
        }
    }

    /// The view with this node's per-node settings in it.
    pub(crate) fn with_node_settings(mut self, settings: Option<NodeSettingsView>) -> Self {
        self.node_settings = settings;
        self
    }

    /// The view with the agent's latest preflight in it.
    pub(crate) fn with_preflight(mut self, report: Option<PreflightReport>) -> Self {
        self.foreign_cni_configs = report
            .as_ref()
            .map(|r| r.foreign_cni_configs.clone())
            .unwrap_or_default();
        self.preflight = report;
        self
    }

    /// The agent is ready, every node peer is `ok` (and nothing was rejected), no preflight
    /// check failed, no CNI configuration takes precedence over Wormhole's and no annotation
    /// of this node was refused. External peers (a laptop that is off) do not count; preflight
    /// warnings do not either.
    pub fn all_ok(&self) -> bool {
        self.ready
            && self.peers.iter().all(|p| p.external || p.state == "ok")
            && self.foreign_cni_configs.is_empty()
            && self
                .node_settings
                .as_ref()
                .is_none_or(|s| s.refused.is_empty())
            && self
                .preflight
                .as_ref()
                .is_none_or(|r| r.worst() != Level::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wormhole_core::{RejectReason, Rejection};

    #[test]
    fn a_refused_external_peer_is_marked_external() {
        let mut status = Status::default();
        let rejected = |name: &str, external: bool| Rejection {
            name: name.into(),
            origin: format!("peers.toml {name}"),
            reason: RejectReason::NoExternalCidrs,
            external,
        };
        status.rejected = vec![rejected("laptop", true), rejected("node-b", false)];
        let view = StatusView::new(&status, SystemTime::now());
        let rows: Vec<(&str, bool)> = view
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.external))
            .collect();
        assert_eq!(rows, [("laptop", true), ("node-b", false)]);
        // The cluster view from admin endpoints draws the node (in place of an endpoint not
        // read), not the laptop.
        let cluster = crate::ClusterView::from_status_views(vec![
            ("127.0.0.1:9001".into(), Ok(view)),
            (
                "127.0.0.1:9002".into(),
                Err("127.0.0.1:9002: refused".into()),
            ),
        ]);
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert!(
            names.contains(&"node-b") && !names.contains(&"laptop"),
            "{names:?}"
        );
    }
}
