//! Entry points shared by the cargo-fuzz target `cluster_status` (`fuzz/`) and the proptests
//! that run the same checks on stable (below). Each one panics when an invariant breaks. Not a
//! public API.
//!
//! What is fuzzed is what `wormhole status --cluster` and `wormhole graph` do with the replies
//! of the admin endpoints they are given: parse each as a [`StatusView`] (JSON, as served at
//! `/status`) and build the [`ClusterView`] from them.

use std::collections::BTreeSet;

use crate::cluster::{Cell, ClusterView, Health, Summary, bounded};
use crate::view::{PeerView, StatusView};

/// At most this many replies are read from one input.
const MAX_REPLIES: usize = 8;

/// Bytes as the replies of admin endpoints `10.0.0.i:9473`: a first byte with its low bit set
/// makes them from the rest through [`Bytes`] (small views over a few names and states, so
/// that they collide, serialized to JSON); otherwise the rest is up to `MAX_REPLIES` (8) bodies
/// separated by `0xff` (never in UTF-8 JSON). Each body is parsed as the client parses a
/// reply, then [`check_cluster`] runs.
pub fn cluster_status(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bodies: Vec<Vec<u8>> = if mode & 1 == 1 {
        let mut bytes = Bytes(rest);
        (0..bytes.byte() % MAX_REPLIES as u8 + 1)
            .map(|_| {
                let view = bytes.view();
                if bytes.byte().is_multiple_of(8) {
                    b"{\"node\":".to_vec()
                } else {
                    serde_json::to_vec(&view).expect("a view serializes")
                }
            })
            .collect()
    } else {
        rest.split(|&b| b == 0xff)
            .take(MAX_REPLIES)
            .map(<[u8]>::to_vec)
            .collect()
    };
    check_cluster(&replies(&bodies));
}

/// `bodies` as the replies of endpoints `10.0.0.i:9473`, each parsed as a `/status` reply.
pub fn replies(bodies: &[Vec<u8>]) -> Vec<(String, Result<StatusView, String>)> {
    bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let endpoint = format!("10.0.0.{i}:9473");
            let reply = serde_json::from_slice::<StatusView>(body)
                .map_err(|e| format!("{endpoint}: malformed status: {e}"));
            (endpoint, reply)
        })
        .collect()
}

/// The cluster view of `replies` (distinct endpoints) keeps its invariants:
/// - its nodes are at most the endpoints asked, with unique names;
/// - each reply read is one node's report, kept with its endpoint, holding only what that reply
///   says (no reply can replace or add to another's);
/// - every count ([`ClusterView::summary`], [`ClusterView::worst_by_square`],
///   [`ClusterView::broken`]) is what walking every pair with [`ClusterView::cell`] gives;
/// - it serializes (`-o json`).
pub fn check_cluster(replies: &[(String, Result<StatusView, String>)]) {
    let cluster = ClusterView::from_status_views(replies.to_vec());
    let n = cluster.nodes.len();
    assert!(
        n <= replies.len(),
        "{n} nodes from {} endpoints",
        replies.len()
    );
    let names: BTreeSet<&str> = cluster.nodes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), n, "a name twice");
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(cluster.position(&node.name), Some(i));
    }
    let unread = replies.iter().filter(|(_, r)| r.is_err()).count();
    assert_eq!(cluster.unreadable.len(), unread);
    for (endpoint, reply) in replies {
        let mine: Vec<_> = cluster
            .nodes
            .iter()
            .filter(|c| c.admin.as_deref() == Some(endpoint.as_str()))
            .collect();
        let Ok(view) = reply else {
            assert!(mine.is_empty(), "a node for {endpoint}, not read");
            continue;
        };
        assert_eq!(mine.len(), 1, "{endpoint}: its report, once");
        let report = mine[0].report.as_ref().expect("a report for a reply read");
        let said = |name: &str| -> Vec<&PeerView> {
            view.peers
                .iter()
                .filter(|p| p.name == name && !p.external)
                .collect()
        };
        for (peer, state) in &report.problems {
            assert!(
                said(peer)
                    .iter()
                    .any(|p| p.state != "ok" && bounded(&p.state) == *state),
                "{endpoint}: {peer} {state} is not in its reply"
            );
        }
        for peer in report.ok_peers.iter().flatten() {
            assert!(
                said(peer).iter().any(|p| p.state == "ok"),
                "{endpoint}: {peer} ok is not in its reply"
            );
            assert!(!report.problems.contains_key(peer));
        }
    }
    for per in [1, 2, 3] {
        let (summary, worst) = by_cells(&cluster, per);
        assert_eq!(cluster.summary(), summary, "summary");
        assert_eq!(cluster.worst_by_square(per), worst, "squares of {per}");
    }
    let mut broken = Vec::new();
    for from in 0..n {
        for to in 0..n {
            if let Cell::Problem(state) = cluster.cell(from, to)
                && Health::of(state).is_broken()
            {
                broken.push((from, to, state));
            }
        }
    }
    let mut listed = cluster.broken();
    listed.sort();
    broken.sort();
    assert_eq!(listed, broken, "broken pairs");
    let pairs: usize = cluster.most_broken().iter().map(|t| t.pairs).sum();
    assert_eq!(pairs, 2 * broken.len());
    serde_json::to_string(&cluster).expect("the view serializes");
}

/// Every count over the pairs, walking each pair with [`ClusterView::cell`] (n²: for checks).
pub(crate) fn by_cells(cluster: &ClusterView, per: usize) -> (Summary, Vec<Health>) {
    let n = cluster.nodes.len();
    let grid = n.div_ceil(per);
    let mut s = Summary {
        nodes: n,
        pairs: n * n.saturating_sub(1),
        ..Summary::default()
    };
    let mut worst = vec![Health::Ok; grid * grid];
    for from in 0..n {
        for to in (0..n).filter(|&to| to != from) {
            let health = cluster.cell(from, to).health();
            match health {
                Health::Ok => s.ok += 1,
                Health::Unknown => s.unknown += 1,
                _ => s.broken += 1,
            }
            let square = &mut worst[(from / per) * grid + to / per];
            *square = (*square).max(health);
        }
    }
    (s, worst)
}

/// A reader that turns arbitrary bytes into small status views over a few names and states,
/// so that names collide (two endpoints claiming a node, a peer named twice) often.
pub struct Bytes<'a>(pub &'a [u8]);

/// Names a reply may use: node names, a rejected entry's `(origin)`, and ones that are no
/// node name.
const NAMES: [&str; 8] = ["a", "b", "c", "d", "e.x", "(peers.toml:3)", "B_ad", ""];
/// States a peer may be in.
const STATES: [&str; 7] = [
    "ok",
    "lossy (30 %)",
    "never",
    "mtu-blackhole (max 1344)",
    "rejected: x",
    "route conflict",
    "ok ",
];

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn name(&mut self) -> String {
        NAMES[usize::from(self.byte()) % NAMES.len()].to_owned()
    }

    /// A status view.
    pub fn view(&mut self) -> StatusView {
        let mut view = StatusView {
            node: self.name(),
            public_key: None,
            backend: "embedded".into(),
            interface: "wormhole0".into(),
            mtu: 1420,
            pod_cidrs: vec![format!("10.99.{}.0/24", self.byte())],
            ready: true,
            not_ready: None,
            last_reconcile: None,
            source_error: self.byte().is_multiple_of(4).then(|| "x".repeat(600)),
            passes: 1,
            errors: 0,
            peers: Vec::new(),
            preflight: None,
            foreign_cni_configs: Vec::new(),
            node_settings: None,
        };
        for _ in 0..self.byte() % 6 {
            let name = self.name();
            let flags = self.byte();
            view.peers.push(PeerView {
                allowed_ips: vec![if flags & 2 == 0 {
                    format!("10.99.{}.0/24", flags)
                } else {
                    "not a cidr".into()
                }],
                state: STATES[usize::from(self.byte()) % STATES.len()].to_owned(),
                external: flags & 1 == 1,
                name,
                public_key: None,
                endpoint: None,
                latest_handshake_age_seconds: Some(3),
                rx_bytes: 0,
                tx_bytes: 0,
                hint: None,
                rtt_ms: None,
                last_rtt_ms: None,
                probe_loss: None,
                path_mtu: None,
            });
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Small views from bytes (the fuzz target's structured half).
        #[test]
        fn cluster_views_from_structured_replies(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut with_mode = vec![1];
            with_mode.extend(data);
            cluster_status(&with_mode);
        }

        /// Raw bodies: mostly not JSON, sometimes a view with bytes changed.
        #[test]
        fn cluster_views_from_raw_replies(
            data in proptest::collection::vec(any::<u8>(), 0..120),
            seed in proptest::collection::vec(any::<u8>(), 0..40),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        ) {
            cluster_status(&[&[0][..], &data].concat());
            // Valid JSON views, then a few bytes of one changed.
            let mut bytes = Bytes(&seed);
            let mut bodies: Vec<Vec<u8>> = (0..3)
                .map(|_| serde_json::to_vec(&bytes.view()).unwrap())
                .collect();
            for (at, value) in flips {
                let body = &mut bodies[at % 3];
                let i = at % body.len();
                body[i] = value;
            }
            check_cluster(&replies(&bodies));
        }
    }
}
