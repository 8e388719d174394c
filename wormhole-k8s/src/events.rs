//! Events on the local Node for rejected peers, degraded pairs (`PeerDegraded`: a peer turned
//! stale, unreachable, lossy or an MTU black hole) and persistent reconcile failures, rate-limited
//! (each distinct problem at most once per [`EventSink::with_interval`], 10 minutes by default).
//!
//! A node that publishes this node's public key (a cloned key file, or a compromised node copying
//! it) gives an Event on **both** Nodes, reason `PublicKeyConflict`: the two agents concerned
//! each see the other's entry carry their own key, so each Node is told even if one agent is
//! down or lies. Other agents report the conflict on their own Node only (`PeerRejected`), so a
//! conflict costs two Events per agent involved, not two per node of the cluster.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};
use wormhole_core::ErrorChain;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use wormhole_core::Escaped;
use wormhole_core::PeerState;
use wormhole_core::RejectReason;
use wormhole_core::Status;

use crate::EVENT_REPORTER;

/// At most this many `PeerDegraded` Events name a peer each; more degraded peers at once (one
/// broken node seen by this one, or this node's own underlay failing) make one
/// `PeersDegraded` Event counting them, so a bad moment costs a bounded number of Events.
pub(crate) const MAX_PEER_EVENTS: usize = 5;

/// A failing pass becomes an Event after this many in a row.
pub(crate) const PERSISTENT_FAILURES: u32 = 3;

/// Publishes Events about the local Node.
pub struct EventSink {
    recorder: Recorder,
    node: ObjectReference,
    interval: Duration,
    timeout: Duration,
    sent: HashMap<String, Instant>,
    passes_seen: u64,
    failures_in_a_row: u32,
}

/// One Event to publish, before rate limiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    /// Identifies the problem for rate limiting.
    pub key: String,
    /// The object it is about.
    pub regarding: Regarding,
    /// The Event's reason (`PeerRejected`, `PublicKeyConflict`, `ReconcileFailing`).
    pub reason: &'static str,
    /// The Event's note; user-controlled text in it is escaped.
    pub note: String,
}

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Regarding {
    /// This node's Node.
    Local,
    /// Another Node.
    Node(String),
    /// A WormholePeer (an external peer refused by this node).
    Peer(String),
}

/// What to say, before rate limiting.
pub(crate) fn pending(status: &Status, failures_in_a_row: u32, now: SystemTime) -> Vec<Due> {
    let mut out = Vec::new();
    for r in &status.rejected {
        // A refused WormholePeer: the Event is about it, where its admin looks (`kubectl
        // describe wormholepeer NAME`). Its name is the object's (the origin is set by the
        // source, not by the object).
        if let Some(peer) = r.origin.strip_prefix(crate::peer::ORIGIN_PREFIX)
            && peer == r.name
        {
            out.push(Due {
                key: format!("peer-rejected/{}/{}", r.name, r.reason.kind()),
                regarding: Regarding::Peer(r.name.clone()),
                reason: "PeerRejected",
                note: format!("{r} (seen by the agent on {})", Escaped(&status.node_name)),
            });
            continue;
        }
        if r.reason == RejectReason::LocalKey {
            // The node is named in our snapshot, so its name is the Node's (validated).
            let (other, local) = (Escaped(&r.name), Escaped(&status.node_name));
            let rule = "agents keep the key for the node whose WormholeNode was created first and \
                        refuse the other; a node publishing another node's public key has a \
                        copied key file or is compromised";
            out.push(Due {
                key: format!("key-conflict/{}/here", r.name),
                regarding: Regarding::Local,
                reason: "PublicKeyConflict",
                note: format!(
                    "node {other} publishes the public key of this node ({local}): {rule}"
                ),
            });
            out.push(Due {
                key: format!("key-conflict/{}/there", r.name),
                regarding: Regarding::Node(r.name.clone()),
                reason: "PublicKeyConflict",
                note: format!(
                    "this node ({other}) publishes the public key of node {local} (seen by the \
                     agent on {local}): {rule}"
                ),
            });
            continue;
        }
        out.push(Due {
            key: format!("rejected/{}/{}", r.name, r.reason.kind()),
            regarding: Regarding::Local,
            reason: "PeerRejected",
            note: r.to_string(),
        });
    }
    if let Some(error) = &status.source_error {
        // A mesh that could not be used (a cluster CIDR holding the underlay, a source that
        // fails): the last good mesh stays in force, and the operator is told why.
        out.push(Due {
            key: format!("mesh-not-applied/{error}"),
            regarding: Regarding::Local,
            reason: "MeshNotApplied",
            note: format!(
                "the new mesh was not applied (the last good one stays in force): {}",
                Escaped(error)
            ),
        });
    }
    out.extend(degraded(status, now));
    if failures_in_a_row >= PERSISTENT_FAILURES
        && let Some(error) = status.last_pass.as_ref().and_then(|p| p.error.as_ref())
    {
        out.push(Due {
            key: "reconcile".into(),
            regarding: Regarding::Local,
            reason: "ReconcileFailing",
            note: format!(
                "{failures_in_a_row} reconcile passes in a row failed: {}",
                Escaped(error)
            ),
        });
    }
    out
}

/// Peers that worked and no longer do: stale (handshakes stopped), unreachable, an MTU black
/// hole, lossy. `never` is not a degradation (every peer starts there). Keyed by peer and label
/// (not the loss percentage), so a pair that stays broken, or flaps, is told once per interval.
fn degraded(status: &Status, now: SystemTime) -> Vec<Due> {
    let mut bad: Vec<(&str, PeerState)> = status
        .peers
        .iter()
        // An external peer (a laptop) comes and goes: not a pair of the mesh degrading.
        .filter(|p| !p.external)
        .map(|p| (p.name.as_str(), p.state(now)))
        .filter(|(_, s)| !matches!(s, PeerState::Ok | PeerState::Never))
        .collect();
    bad.sort();
    let local = Escaped(&status.node_name);
    if bad.len() > MAX_PEER_EVENTS {
        let mut labels: Vec<&str> = bad.iter().map(|(_, s)| s.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        let first: Vec<String> = bad[..3]
            .iter()
            .map(|(name, state)| format!("{} ({state})", Escaped(name)))
            .collect();
        return vec![Due {
            key: "peers-degraded".into(),
            regarding: Regarding::Local,
            reason: "PeersDegraded",
            note: format!(
                "{} peers of this node ({local}) are degraded ({}), among them {}: run `wormhole status` on this node and `wormhole status --cluster` to see which pairs",
                bad.len(),
                labels.join(", "),
                first.join(", ")
            ),
        }];
    }
    bad.into_iter()
        .map(|(name, state)| Due {
            key: format!("degraded/{name}/{}", state.as_str()),
            regarding: Regarding::Local,
            reason: "PeerDegraded",
            note: format!(
                "the path from this node ({local}) to peer {} is {state}: {}",
                Escaped(name),
                state.hint().unwrap_or_default()
            ),
        })
        .collect()
}

impl EventSink {
    /// Events about Node `node`.
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: EVENT_REPORTER.into(),
            instance: Some(node.to_owned()),
        };
        EventSink {
            recorder: Recorder::new(client, reporter),
            node: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_owned()),
                ..Default::default()
            },
            interval: Duration::from_secs(600),
            timeout: crate::API_TIMEOUT,
            sent: HashMap::new(),
            passes_seen: 0,
            failures_in_a_row: 0,
        }
    }

    /// The deadline of each request (default [`API_TIMEOUT`](crate::API_TIMEOUT)).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The minimum time between two Events about the same problem.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Looks at a new status and publishes what is due. Errors are logged, never fatal.
    pub async fn observe(&mut self, status: &Status) {
        if status.passes > self.passes_seen {
            let failed = status.last_pass.as_ref().is_some_and(|p| p.error.is_some());
            self.failures_in_a_row = if failed {
                self.failures_in_a_row + 1
            } else {
                0
            };
            self.passes_seen = status.passes;
        }
        for due in pending(status, self.failures_in_a_row, SystemTime::now()) {
            self.publish(due).await;
        }
    }

    /// A Warning Event on the local Node about something of this node's host (such as a
    /// preflight check that failed), rate-limited like the others by `key`: reason `reason`
    /// (UpperCamelCase), `note` already escaped where it quotes the outside world.
    pub async fn warn_node(&mut self, key: &str, reason: &'static str, note: String) {
        self.publish(Due {
            key: format!("node/{key}"),
            regarding: Regarding::Local,
            reason,
            note,
        })
        .await;
    }

    /// Publishes `due` unless the same problem was published within the interval.
    async fn publish(&mut self, due: Due) {
        let now = Instant::now();
        if self
            .sent
            .get(&due.key)
            .is_some_and(|at| now.duration_since(*at) < self.interval)
        {
            return;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: due.reason.into(),
            note: Some(due.note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let other;
        let regarding = match &due.regarding {
            Regarding::Local => &self.node,
            Regarding::Node(name) => {
                other = ObjectReference {
                    name: Some(name.clone()),
                    ..self.node.clone()
                };
                &other
            }
            Regarding::Peer(name) => {
                other = ObjectReference {
                    api_version: Some(format!("{}/v1alpha1", crate::GROUP)),
                    kind: Some("WormholePeer".into()),
                    name: Some(name.clone()),
                    ..Default::default()
                };
                &other
            }
        };
        let key = due.key;
        let published = crate::call(
            "publish an Event",
            self.timeout,
            self.recorder.publish(&event, regarding),
        )
        .await;
        match published {
            Ok(()) => {
                self.sent.insert(key, now);
            }
            Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot publish an Event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wormhole_core::KeyError;
    use wormhole_core::PassInfo;
    use wormhole_core::{PeerStatus, ProbeReport};
    use wormhole_core::{RejectReason, Rejection};

    #[test]
    fn rejections_and_persistent_failures_are_due() {
        let mut status = Status::default();
        status.rejected = vec![Rejection {
            name: "evil".into(),
            origin: "WormholeNode/evil".into(),
            reason: RejectReason::MalformedKey(KeyError::Base64),
            external: false,
        }];
        status.last_pass = Some(PassInfo::new(
            std::time::SystemTime::now(),
            Duration::ZERO,
            0,
            Some("wireguard backend: boom".into()),
        ));
        let due = pending(&status, 1, SystemTime::now());
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].reason, "PeerRejected");
        assert_eq!(due[0].regarding, Regarding::Local);
        assert!(due[0].note.contains("malformed public key"));
        let due = pending(&status, PERSISTENT_FAILURES, SystemTime::now());
        assert_eq!(due[1].reason, "ReconcileFailing");
        status.rejected.clear();
        assert!(pending(&status, 0, SystemTime::now()).is_empty());
    }

    #[test]
    fn a_refused_wormhole_peer_is_an_event_about_it() {
        let mut status = Status::default();
        status.node_name = "n1".into();
        status.rejected = vec![
            Rejection {
                name: "laptop".into(),
                origin: "WormholePeer/laptop".into(),
                reason: RejectReason::NoExternalCidrs,
                external: true,
            },
            // A node's entry is still about this Node.
            Rejection {
                name: "n2".into(),
                origin: "WormholeNode/n2".into(),
                reason: RejectReason::MalformedKey(KeyError::Base64),
                external: false,
            },
        ];
        let due = pending(&status, 0, SystemTime::now());
        assert_eq!(due.len(), 2, "{due:?}");
        assert_eq!(due[0].regarding, Regarding::Peer("laptop".into()));
        assert_eq!(due[0].reason, "PeerRejected");
        assert_eq!(due[0].key, "peer-rejected/laptop/no_external_cidrs");
        assert!(due[0].note.contains("--external-cidr"), "{}", due[0].note);
        assert!(
            due[0].note.contains("seen by the agent on n1"),
            "{}",
            due[0].note
        );
        assert_eq!(due[1].regarding, Regarding::Local);
    }

    #[test]
    fn a_refused_mesh_is_an_event_naming_why() {
        let mut status = Status::default();
        status.source_error = Some("cluster CIDR 10.0.0.0/8 contains this host's underlay address or default gateway (10.1.0.5): ...".into());
        let due = pending(&status, 0, SystemTime::now());
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].reason, "MeshNotApplied");
        assert!(
            due[0].note.contains("cluster CIDR 10.0.0.0/8 contains"),
            "{}",
            due[0].note
        );
        assert!(
            due[0].note.contains("last good one stays"),
            "{}",
            due[0].note
        );
    }

    fn peer(name: &str, handshake_ago: Option<u64>, probe: Option<ProbeReport>) -> PeerStatus {
        let mut p = PeerStatus::new(name, wormhole_core::PrivateKey::generate().public_key());
        p.latest_handshake =
            handshake_ago.map(|s| std::time::SystemTime::now() - Duration::from_secs(s));
        p.probe = probe;
        p
    }

    fn lossy(lost: u32) -> ProbeReport {
        let mut r = ProbeReport::default();
        r.sent = 10;
        r.lost = lost;
        r
    }

    #[test]
    fn a_degraded_pair_is_an_event_naming_the_peer_and_the_cause() {
        let mut status = Status::default();
        status.node_name = "n1".into();
        status.peers = vec![
            peer("fine", Some(5), None),
            peer("new\u{1b}[2J", None, None),
            peer("holed", Some(5), {
                let mut r = ProbeReport::default();
                r.sent = 10;
                r.path_mtu = Some(1344);
                r.mtu_blackhole = true;
                Some(r)
            }),
            peer("lossy", Some(5), Some(lossy(3))),
        ];
        let due = pending(&status, 0, SystemTime::now());
        let keys: Vec<&str> = due.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            ["degraded/holed/mtu-blackhole", "degraded/lossy/lossy"],
            "never is not a degradation"
        );
        assert_eq!(due[0].reason, "PeerDegraded");
        assert!(
            due[0]
                .note
                .contains("to peer holed is mtu-blackhole (max 1344): packets above 1344"),
            "{}",
            due[0].note
        );
        // The loss percentage is not in the key: a moving percentage is one problem.
        status.peers[3] = peer("lossy", Some(5), Some(lossy(5)));
        assert_eq!(
            pending(&status, 0, SystemTime::now())[1].key,
            "degraded/lossy/lossy"
        );
    }

    #[test]
    fn many_degraded_peers_make_one_event() {
        let mut status = Status::default();
        status.node_name = "n1".into();
        status.peers = (0..100)
            .map(|i| peer(&format!("n{i:03}\u{1b}"), Some(600), None))
            .collect();
        let due = pending(&status, 0, SystemTime::now());
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].reason, "PeersDegraded");
        assert!(
            due[0].note.starts_with(
                "100 peers of this node (n1) are degraded (stale), among them n000\\u{1b} (stale)"
            ),
            "{}",
            due[0].note
        );
        assert!(!due[0].note.contains('\u{1b}'));
        assert!(
            due[0]
                .note
                .ends_with("run `wormhole status` on this node and `wormhole status --cluster` to see which pairs"),
            "{}",
            due[0].note
        );
    }
}
