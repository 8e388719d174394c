//! Publishes this node's WormholeNode by server-side apply (field manager
//! [`FIELD_MANAGER`](crate::FIELD_MANAGER)): its public key and endpoint, owned by its Node so
//! that deleting the Node garbage-collects it; and a status summary: peer counts and the peers
//! that are not `ok` with their state ([`published_state`]: stable details only). Writes happen
//! only when something changed: no heartbeats, and no write for round-trip times or loss
//! percentages that move with every probe.
//!
//! `spec.publicKey` is immutable (see [`crate::crd`]): after a key rotation the publisher deletes
//! its WormholeNode (only that object, by uid) and creates it again with the new key.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;
use wormhole_core::{PeerState, STALE_AFTER};
use wormhole_core::{PublicKey, Status};

use crate::crd::{
    MAX_ERROR, MAX_OBSERVED, MAX_PEER_NAME, MAX_PROBLEMS, ObservedEndpoint, PeerProblem,
    WormholeNode, WormholeNodeSpec, WormholeNodeStatus,
};
use crate::settings::{NodeSettings, PublishedEndpoint};
use crate::{API_TIMEOUT, Error, FIELD_MANAGER, call};

/// The node's first InternalIP (IPv4 preferred) from its status.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let ips: Vec<IpAddr> = addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied()
}

/// `text` cut to at most `max` bytes (a character boundary), marked with `…` when cut: what the
/// CRD's `maxLength` of a status field accepts.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// A peer state as published in `status.problems`: the label with its stable details only.
/// `mtu-blackhole (max 1344)` stays while the path does; a loss percentage moves with every
/// probe, so `lossy` is published without it (else every probe could be an API write).
pub fn published_state(state: PeerState) -> String {
    match state {
        PeerState::Lossy { .. } => state.as_str().to_owned(),
        other => other.to_string(),
    }
}

/// The peers without an endpoint of their own that this node saw in the last 3 minutes, and
/// where: what it publishes in `status.observedEndpoints`.
fn observed_endpoints(status: &Status, now: SystemTime) -> Vec<ObservedEndpoint> {
    let mut seen: Vec<ObservedEndpoint> = status
        .peers
        .iter()
        .filter(|p| p.endpoint_learned && !p.external && p.name.len() <= MAX_PEER_NAME)
        .filter(|p| {
            p.latest_handshake
                .is_some_and(|t| now.duration_since(t).unwrap_or_default() <= STALE_AFTER)
        })
        .filter_map(|p| {
            Some(ObservedEndpoint {
                peer: p.name.clone(),
                endpoint: p.endpoint?.to_string(),
            })
        })
        .collect();
    seen.sort();
    seen.truncate(MAX_OBSERVED);
    seen
}

/// The status summary of `status` at `now` (without the time, which changes every pass).
pub(crate) fn summary(status: &Status, now: SystemTime) -> WormholeNodeStatus {
    let states: Vec<PeerState> = status.peers.iter().map(|p| p.state(now)).collect();
    let count = |state| states.iter().filter(|s| **s == state).count() as u32;
    let ok = count(PeerState::Ok);
    let mut problems: Vec<PeerProblem> = status
        .peers
        .iter()
        .zip(&states)
        // An external peer (a laptop) is no pair of the mesh: not a problem of the matrix.
        .filter(|(p, state)| **state != PeerState::Ok && !p.external)
        .map(|(p, state)| PeerProblem {
            peer: truncate(&p.name, MAX_PEER_NAME),
            state: published_state(*state),
        })
        .chain(
            status
                .rejected
                .iter()
                // A refused external peer (a WormholePeer) is no node of the matrix either.
                .filter(|r| !r.name.is_empty() && !r.external)
                .map(|r| PeerProblem {
                    peer: truncate(&r.name, MAX_PEER_NAME),
                    state: "rejected".into(),
                }),
        )
        .collect();
    problems.sort();
    let omitted = problems.len().saturating_sub(MAX_PROBLEMS) as u32;
    problems.truncate(MAX_PROBLEMS);
    WormholeNodeStatus {
        key_prefix: status
            .public_key
            .map(|k| k.to_base64()[..8].to_owned())
            .unwrap_or_default(),
        peers: format!("{ok}/{}", status.peers.len()),
        peers_ok: ok,
        peers_stale: count(PeerState::Stale),
        peers_never: count(PeerState::Never),
        peers_rejected: status.rejected.len() as u32,
        last_error: status
            .last_pass
            .as_ref()
            .and_then(|p| p.error.as_deref())
            .map(|e| truncate(e, MAX_ERROR)),
        problems,
        problems_omitted: omitted,
        observed_endpoints: observed_endpoints(status, now),
        last_reconcile: None,
    }
}

/// Applies this node's WormholeNode.
pub struct Publisher {
    api: Api<WormholeNode>,
    nodes: Api<Node>,
    name: String,
    listen_port: u16,
    endpoint: PublishedEndpoint,
    persistent_keepalive: Option<u16>,
    /// The spec last applied, and the uid of the object it was applied to.
    last_spec: Option<(WormholeNodeSpec, Option<String>)>,
    last_status: Option<WormholeNodeStatus>,
    /// The least time between two status writes (see [`Publisher::with_status_interval`]).
    status_interval: Duration,
    /// When the status was last written.
    status_written: Option<tokio::time::Instant>,
    /// A changed status waits for the interval to pass.
    status_pending: bool,
    /// The Node's uid and InternalIP, read once: the agent publishes on every status change,
    /// and the Node need not be fetched each time. Forgotten when an apply fails.
    node: Option<(String, Option<IpAddr>)>,
    /// The deadline of each request.
    timeout: Duration,
}

impl Publisher {
    /// Publishes for node `name`, listening on `listen_port`, reached at `endpoint`.
    pub fn new(client: Client, name: &str, listen_port: u16, endpoint: PublishedEndpoint) -> Self {
        Publisher {
            api: Api::all(client.clone()),
            nodes: Api::all(client),
            name: name.to_owned(),
            listen_port,
            endpoint,
            persistent_keepalive: None,
            last_spec: None,
            last_status: None,
            status_interval: Duration::ZERO,
            status_written: None,
            status_pending: false,
            node: None,
            timeout: API_TIMEOUT,
        }
    }

    /// Publishes a persistent keepalive of `seconds` (a node behind NAT): every peer then uses
    /// it toward this node, and this node toward every peer.
    pub fn with_keepalive(mut self, seconds: Option<u16>) -> Self {
        self.persistent_keepalive = seconds.filter(|&s| s != 0);
        self
    }

    /// Publishes these settings from the next [`publish_spec`](Self::publish_spec) on (which
    /// writes only if the spec changes): what [`LocalSettings`](crate::LocalSettings) keeps in
    /// force as this node's annotations change.
    pub fn set_settings(&mut self, settings: NodeSettings) {
        self.endpoint = settings.endpoint;
        self.persistent_keepalive = settings.persistent_keepalive.filter(|&s| s != 0);
    }

    /// The deadline of each request (default [`API_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The least time between two status writes (default none). A state that changes again
    /// within it (a pair flapping between `ok` and `lossy`) is written once, when the interval
    /// ends (call [`publish_status`](Self::publish_status) again at
    /// [`status_due`](Self::status_due)), with the latest summary: a cluster of flapping pairs
    /// costs each node at most one write per interval.
    pub fn with_status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval;
        self
    }

    /// When a changed status that waits for the interval is due; `None` if none waits.
    pub fn status_due(&self) -> Option<tokio::time::Instant> {
        let written = self.status_written?;
        self.status_pending.then(|| written + self.status_interval)
    }

    /// Applies the spec (key and endpoint) if it changed since the last apply. Returns whether
    /// it wrote.
    pub async fn publish_spec(&mut self, key: &PublicKey) -> Result<bool, Error> {
        let (uid, internal_ip) = match &self.node {
            Some(known) => known.clone(),
            None => {
                let node = call(
                    format!("get Node {}", self.name),
                    self.timeout,
                    self.nodes.get(&self.name),
                )
                .await?;
                let uid = node
                    .metadata
                    .uid
                    .clone()
                    .ok_or_else(|| Error::NodeWithoutUid {
                        node: self.name.clone(),
                    })?;
                let ip = internal_ip(&node);
                self.node = Some((uid.clone(), ip));
                (uid, ip)
            }
        };
        let endpoint = match self.endpoint {
            PublishedEndpoint::Fixed(e) => Some(e),
            PublishedEndpoint::BehindNat => None,
            PublishedEndpoint::InternalIp => {
                internal_ip.map(|ip| SocketAddr::new(ip, self.listen_port))
            }
        };
        let spec = WormholeNodeSpec {
            public_key: key.to_base64(),
            endpoint: endpoint.map(|e| e.to_string()),
            listen_port: self.listen_port,
            persistent_keepalive: self.persistent_keepalive,
        };
        if self.last_spec.as_ref().map(|(s, _)| s) == Some(&spec) {
            return Ok(false);
        }
        // The key the API server holds for us: the one we applied last, else read it (a
        // restart, or a failed apply).
        let stored = match self.last_spec.take() {
            Some((spec, uid)) => Some((spec.public_key, uid)),
            None => call(
                format!("get WormholeNode {}", self.name),
                self.timeout,
                self.api.get_opt(&self.name),
            )
            .await?
            .map(|wh| (wh.spec.public_key, wh.metadata.uid)),
        };
        if let Some((old_key, uid)) = stored.filter(|(k, _)| *k != spec.public_key) {
            // The key is immutable: a new key is a new WormholeNode (a new, later claim).
            self.delete(uid).await?;
            tracing::info!(node = %self.name, old_key = %old_key, new_key = %spec.public_key,
                "public key changed: deleted this node's WormholeNode to create it with the new key");
            self.last_status = None;
        }
        let object = json!({
            "apiVersion": "wormhole.dev/v1alpha1",
            "kind": "WormholeNode",
            "metadata": {
                "name": self.name,
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": self.name, "uid": uid,
                }],
            },
            "spec": spec,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = match call(
            format!("apply WormholeNode {}", self.name),
            self.timeout,
            self.api.patch(&self.name, &params, &Patch::Apply(&object)),
        )
        .await
        {
            Ok(applied) => applied,
            Err(e) => {
                // The Node may have been re-created (new uid): read it again next time, and
                // what the API server holds too.
                self.node = None;
                return Err(e);
            }
        };
        tracing::info!(node = %self.name, endpoint = ?spec.endpoint,
            persistent_keepalive = ?spec.persistent_keepalive, "published WormholeNode");
        self.last_spec = Some((spec, applied.metadata.uid));
        Ok(true)
    }

    /// Deletes this node's WormholeNode, only the object with `uid` if known (not one created
    /// since). Already gone is fine.
    async fn delete(&self, uid: Option<String>) -> Result<(), Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let deleted = call(
            format!("delete WormholeNode {}", self.name),
            self.timeout,
            self.api.delete(&self.name, &params),
        )
        .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(Error::Api {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies the status summary if it changed (and the status interval has passed since the
    /// last write; else it is due at [`status_due`](Self::status_due)). Returns whether it wrote.
    pub async fn publish_status(&mut self, status: &Status) -> Result<bool, Error> {
        let now = SystemTime::now();
        let summary = summary(status, now);
        if self.last_status.as_ref() == Some(&summary) || self.last_spec.is_none() {
            self.status_pending = false;
            return Ok(false);
        }
        if let Some(written) = self.status_written
            && written.elapsed() < self.status_interval
            && self.last_status.is_some()
        {
            self.status_pending = true;
            return Ok(false);
        }
        let mut with_time = summary.clone();
        with_time.last_reconcile = Some(k8s_openapi::jiff::Timestamp::now().to_string());
        let object = json!({
            "apiVersion": "wormhole.dev/v1alpha1",
            "kind": "WormholeNode",
            "metadata": { "name": self.name },
            "status": with_time,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        call(
            format!("apply WormholeNode {} status", self.name),
            self.timeout,
            self.api
                .patch_status(&self.name, &params, &Patch::Apply(&object)),
        )
        .await?;
        self.last_status = Some(summary);
        self.status_written = Some(tokio::time::Instant::now());
        self.status_pending = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    #[test]
    fn the_summary_lists_the_mesh_peers_that_are_not_ok_but_no_external_peer() {
        use wormhole_core::{PeerStatus, PrivateKey};
        let now = SystemTime::now();
        let mut status = Status::default();
        let peer = |name: &str, handshake: Option<u64>, external: bool| {
            let mut p = PeerStatus::new(name, PrivateKey::generate().public_key());
            p.latest_handshake = handshake.map(|s| now - Duration::from_secs(s));
            p.external = external;
            p
        };
        status.peers = vec![
            peer("b", Some(600), false),
            peer("a", None, false),
            peer("c", Some(5), false),
            peer("laptop", None, true),
        ];
        let rejected = |name: &str, external: bool| wormhole_core::Rejection {
            name: name.into(),
            origin: format!("test/{name}"),
            reason: wormhole_core::RejectReason::NoExternalCidrs,
            external,
        };
        status.rejected = vec![rejected("refused-laptop", true), rejected("d", false)];
        let s = summary(&status, now);
        let listed: Vec<(&str, &str)> = s
            .problems
            .iter()
            .map(|p| (p.peer.as_str(), p.state.as_str()))
            .collect();
        assert_eq!(listed, [("a", "never"), ("b", "stale"), ("d", "rejected")]);
        assert_eq!((s.peers_ok, s.problems_omitted), (1, 0));
    }

    #[test]
    fn a_node_reports_where_it_sees_the_peers_without_an_endpoint_while_they_answer() {
        use wormhole_core::{PeerStatus, PrivateKey};
        let now = SystemTime::now();
        let peer = |name: &str, endpoint: &str, learned: bool, handshake: Option<u64>| {
            let mut p = PeerStatus::new(name, PrivateKey::generate().public_key());
            p.endpoint = Some(endpoint.parse().unwrap());
            p.endpoint_learned = learned;
            p.latest_handshake = handshake.map(|s| now - Duration::from_secs(s));
            p
        };
        let mut laptop = peer("laptop", "198.51.100.9:1", true, Some(5));
        laptop.external = true;
        let mut status = Status::default();
        status.peers = vec![
            peer("nat2", "203.0.113.2:4000", true, Some(5)),
            peer("nat1", "203.0.113.1:51820", true, Some(170)),
            // Configured: nothing to observe.
            peer("public", "192.168.77.1:51820", false, Some(5)),
            // Not heard from in 3 minutes: its NAT may have moved it.
            peer("gone", "203.0.113.3:51820", true, Some(200)),
            peer("silent", "203.0.113.4:51820", true, None),
            laptop,
        ];
        let seen: Vec<(String, String)> = summary(&status, now)
            .observed_endpoints
            .into_iter()
            .map(|o| (o.peer, o.endpoint))
            .collect();
        assert_eq!(
            seen,
            [
                ("nat1".to_owned(), "203.0.113.1:51820".to_owned()),
                ("nat2".to_owned(), "203.0.113.2:4000".to_owned())
            ]
        );
    }

    #[test]
    fn truncate_keeps_a_character_boundary_and_the_limit() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate(&"é".repeat(100), 11);
        assert!(cut.len() <= 11, "{cut}");
        assert_eq!(cut, "éééé…");
        let cut = truncate(&"x".repeat(5000), MAX_ERROR);
        assert_eq!(cut.len(), MAX_ERROR);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn internal_ip_prefers_ipv4() {
        let node = |addrs: &[(&str, &str)]| Node {
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let n = node(&[
            ("Hostname", "n1"),
            ("InternalIP", "fd00::5"),
            ("InternalIP", "10.0.0.5"),
        ]);
        assert_eq!(internal_ip(&n), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(
            internal_ip(&node(&[("InternalIP", "fd00::5")])),
            Some("fd00::5".parse().unwrap())
        );
        assert_eq!(internal_ip(&node(&[("ExternalIP", "1.2.3.4")])), None);
    }
}
