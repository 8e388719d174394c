//! The cluster as its nodes see it, for `wormhole status --cluster` and `wormhole graph`: for
//! every node its pod CIDRs and what it reports about its peers, and from that the state of
//! every ordered pair (from, to). Built from the WormholeNodes of a cluster
//! ([`ClusterView::from_kubernetes`], each agent publishes its peers that are not `ok`) or from
//! the `/status` of each node's admin endpoint ([`ClusterView::from_status_views`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use wormhole_k8s::ClusterObjects;

use crate::view::StatusView;
use crate::{EnvironmentError, Error};

/// What one node says about its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// How many peers are `ok`.
    pub ok: u32,
    /// The `ok` peers by name, where the source names them (an admin endpoint does; a
    /// WormholeNode only counts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok_peers: Option<BTreeSet<String>>,
    /// The peers that are not `ok`, by name, with their state (`lossy`, `mtu-blackhole (max
    /// 1344)`, `never`, `rejected`, ...).
    pub problems: BTreeMap<String, String>,
    /// Peers that are not `ok` beyond those listed (a WormholeNode lists at most 1,000).
    #[serde(default)]
    pub omitted: u32,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Its name.
    pub name: String,
    /// Its pod CIDRs.
    pub pod_cidrs: Vec<String>,
    /// Part of the mesh: it published its key (Kubernetes), or it reported or was named as a
    /// peer (admin endpoints).
    pub member: bool,
    /// What it says about its peers; `None` when it could not be read.
    pub report: Option<NodeReport>,
    /// Why there is no report, or what else it says is wrong (its latest reconcile error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Every node, sorted by name; pairs are read with [`ClusterView::cell`]. Serialized (for
/// `-o json`) as its nodes and unreadable sources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// The nodes, sorted by name.
    pub nodes: Vec<ClusterNode>,
    /// Sources that could not be read at all (an admin endpoint that did not answer), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, usize>,
    /// How many nodes are members (asked for every pair).
    #[serde(skip)]
    members: usize,
}

/// The class of a pair's state, worst last (the order colours and sorting use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Handshakes and probes get through.
    Ok,
    /// Nobody says (no report, or not listed).
    Unknown,
    /// Some probes are lost.
    Lossy,
    /// Large packets vanish.
    MtuBlackhole,
    /// Handshakes stopped.
    Stale,
    /// Handshakes work, probes do not.
    Unreachable,
    /// Never a handshake.
    Never,
    /// Refused by validation.
    Rejected,
    /// Anything else (a route conflict, a change the backend refused).
    Other,
}

impl Health {
    /// Every class, best first.
    pub const ALL: [Health; 9] = [
        Health::Ok,
        Health::Unknown,
        Health::Lossy,
        Health::MtuBlackhole,
        Health::Stale,
        Health::Unreachable,
        Health::Never,
        Health::Rejected,
        Health::Other,
    ];

    /// The class of a state text as a node reports it (`lossy (30 %)`, `rejected: ...`).
    pub fn of(state: &str) -> Health {
        let label = state
            .split([' ', ':', '('])
            .next()
            .unwrap_or_default()
            .trim();
        match label {
            "ok" => Health::Ok,
            "lossy" => Health::Lossy,
            "mtu-blackhole" => Health::MtuBlackhole,
            "stale" => Health::Stale,
            "unreachable" => Health::Unreachable,
            "never" => Health::Never,
            "rejected" => Health::Rejected,
            _ => Health::Other,
        }
    }

    /// Its name (`mtu-blackhole`, `unknown`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Unknown => "unknown",
            Health::Lossy => "lossy",
            Health::MtuBlackhole => "mtu-blackhole",
            Health::Stale => "stale",
            Health::Unreachable => "unreachable",
            Health::Never => "never",
            Health::Rejected => "rejected",
            Health::Other => "other",
        }
    }

    /// Broken: neither `ok` nor unknown.
    pub fn is_broken(self) -> bool {
        !matches!(self, Health::Ok | Health::Unknown)
    }
}

/// The state of the pair (from, to) as `from` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// from == to.
    Itself,
    /// `ok`.
    Ok,
    /// Not `ok`: the state `from` reports.
    Problem(&'a str),
    /// Nobody says; why.
    Unknown(&'static str),
}

impl Cell<'_> {
    /// Its class (`Itself` counts as `ok`).
    pub fn health(self) -> Health {
        match self {
            Cell::Itself | Cell::Ok => Health::Ok,
            Cell::Problem(state) => Health::of(state),
            Cell::Unknown(_) => Health::Unknown,
        }
    }
}

/// A node in broken pairs (see [`ClusterView::most_broken`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    /// The node (an index into the view's nodes).
    pub node: usize,
    /// Broken pairs it is an end of (both directions counted).
    pub pairs: usize,
    /// Those pairs by class, most first.
    pub classes: Vec<(Health, usize)>,
}

impl Trouble {
    /// `10 lossy, 2 never`.
    pub fn classes_text(&self) -> String {
        self.classes
            .iter()
            .map(|(h, c)| format!("{c} {}", h.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Pair counts over the whole cluster (ordered pairs, from != to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Nodes.
    pub nodes: usize,
    /// Ordered pairs: n × (n − 1).
    pub pairs: usize,
    /// Pairs `ok`.
    pub ok: usize,
    /// Pairs broken (neither `ok` nor unknown).
    pub broken: usize,
    /// Pairs nobody reports on.
    pub unknown: usize,
}

impl ClusterView {
    /// A view of `nodes` (sorted here by name; a name given twice keeps its first entry).
    pub fn new(mut nodes: Vec<ClusterNode>, unreadable: Vec<String>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|b, a| a.name == b.name);
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let members = nodes.iter().filter(|n| n.member).count();
        ClusterView {
            nodes,
            unreadable,
            index,
            members,
        }
    }

    /// The position of node `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The pair (from, to) as node `from` sees it (indices into [`nodes`](Self::nodes)).
    pub fn cell(&self, from: usize, to: usize) -> Cell<'_> {
        if from == to {
            return Cell::Itself;
        }
        let (node, peer) = (&self.nodes[from], &self.nodes[to]);
        let Some(report) = &node.report else {
            return Cell::Unknown("no report from this node");
        };
        if let Some(state) = report.problems.get(&peer.name) {
            return Cell::Problem(state);
        }
        if !peer.member {
            return Cell::Unknown("not in the mesh");
        }
        match &report.ok_peers {
            Some(ok) if ok.contains(&peer.name) => Cell::Ok,
            Some(_) => Cell::Unknown("not among this node's peers"),
            None if report.omitted > 0 => Cell::Unknown("not listed (too many problems)"),
            None if report.ok as usize + report.problems.len() + 1 >= self.members => Cell::Ok,
            None => Cell::Unknown("this node does not know every peer yet"),
        }
    }

    /// Counts of `ok`, broken and unknown pairs.
    pub fn summary(&self) -> Summary {
        let n = self.nodes.len();
        let mut s = Summary {
            nodes: n,
            pairs: n * n.saturating_sub(1),
            ..Summary::default()
        };
        for from in 0..n {
            for to in (0..n).filter(|&to| to != from) {
                match self.cell(from, to).health() {
                    Health::Ok => s.ok += 1,
                    Health::Unknown => s.unknown += 1,
                    _ => s.broken += 1,
                }
            }
        }
        s
    }

    /// The broken pairs `(from, to, state)`, by from then to (read from the reports' problem
    /// lists: no walk over all n² pairs).
    pub fn broken(&self) -> Vec<(usize, usize, &str)> {
        let mut out = Vec::new();
        for (from, node) in self.nodes.iter().enumerate() {
            let Some(report) = &node.report else { continue };
            for (peer, state) in &report.problems {
                if let Some(to) = self.position(peer)
                    && to != from
                    && Health::of(state).is_broken()
                {
                    out.push((from, to, state.as_str()));
                }
            }
        }
        out
    }

    /// The nodes in the most broken pairs (either end), most first, with the pairs by class;
    /// nodes in none are left out. A node that every other one reports is usually the one to
    /// look at.
    pub fn most_broken(&self) -> Vec<Trouble> {
        let mut by_node: Vec<BTreeMap<Health, usize>> = vec![BTreeMap::new(); self.nodes.len()];
        for (from, to, state) in self.broken() {
            let health = Health::of(state);
            *by_node[from].entry(health).or_default() += 1;
            *by_node[to].entry(health).or_default() += 1;
        }
        let mut out: Vec<Trouble> = by_node
            .into_iter()
            .enumerate()
            .filter(|(_, classes)| !classes.is_empty())
            .map(|(node, classes)| {
                let mut classes: Vec<(Health, usize)> = classes.into_iter().collect();
                classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                Trouble {
                    node,
                    pairs: classes.iter().map(|(_, c)| c).sum(),
                    classes,
                }
            })
            .collect();
        out.sort_by(|a, b| b.pairs.cmp(&a.pairs).then(a.node.cmp(&b.node)));
        out
    }

    /// The view from each node's `/status` (fetched from its admin endpoint); an `Err` is a
    /// source that could not be read (`address: why`). Peers named by a node but not read
    /// themselves appear without a report.
    pub fn from_status_views(views: Vec<Result<StatusView, String>>) -> Self {
        let mut nodes: BTreeMap<String, ClusterNode> = BTreeMap::new();
        let mut unreadable = Vec::new();
        let mut cidrs_seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for view in views {
            let view = match view {
                Ok(view) => view,
                Err(why) => {
                    unreadable.push(why);
                    continue;
                }
            };
            let mut report = NodeReport {
                ok_peers: Some(BTreeSet::new()),
                ..NodeReport::default()
            };
            for peer in &view.peers {
                // A rejected entry without a name is shown as `(origin)`, an external peer (a
                // laptop, a VM) is no node of the mesh and is not probed: neither is drawn.
                if peer.name.starts_with('(') || peer.external {
                    continue;
                }
                if !peer.allowed_ips.is_empty() {
                    cidrs_seen
                        .entry(peer.name.clone())
                        .or_insert_with(|| peer.allowed_ips.clone());
                }
                if peer.state == "ok" {
                    report.ok += 1;
                    if let Some(ok) = &mut report.ok_peers {
                        ok.insert(peer.name.clone());
                    }
                } else {
                    report
                        .problems
                        .insert(peer.name.clone(), peer.state.clone());
                }
            }
            let note = view
                .last_reconcile
                .as_ref()
                .and_then(|p| p.error.clone())
                .or(view.source_error.clone());
            nodes.insert(
                view.node.clone(),
                ClusterNode {
                    name: view.node.clone(),
                    pod_cidrs: view.pod_cidrs.clone(),
                    member: true,
                    report: Some(report),
                    note,
                },
            );
        }
        for (name, cidrs) in cidrs_seen {
            nodes.entry(name.clone()).or_insert(ClusterNode {
                name,
                pod_cidrs: cidrs,
                member: true,
                report: None,
                note: Some("its admin endpoint was not read".into()),
            });
        }
        // Named only as a problem (rejected, say): a node too, without a report.
        let named: Vec<String> = nodes
            .values()
            .filter_map(|n| n.report.as_ref())
            .flat_map(|r| r.problems.keys().cloned())
            .collect();
        for name in named {
            nodes.entry(name.clone()).or_insert(ClusterNode {
                name,
                pod_cidrs: Vec::new(),
                member: true,
                report: None,
                note: Some("its admin endpoint was not read".into()),
            });
        }
        ClusterView::new(nodes.into_values().collect(), unreadable)
    }

    /// The view from a cluster's WormholeNodes (each agent's published peer summary) and Nodes
    /// (pod CIDRs; a Node without a WormholeNode runs no agent).
    pub fn from_kubernetes(objects: &ClusterObjects) -> Self {
        let mut nodes: BTreeMap<String, ClusterNode> = BTreeMap::new();
        for node in &objects.nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let spec = node.spec.as_ref();
            let pod_cidrs = spec
                .and_then(|s| s.pod_cidrs.clone())
                .filter(|c| !c.is_empty())
                .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
                .unwrap_or_default();
            nodes.insert(
                name.clone(),
                ClusterNode {
                    name,
                    pod_cidrs,
                    member: false,
                    report: None,
                    note: Some("no WormholeNode: is the wormhole agent running there?".into()),
                },
            );
        }
        for wh in &objects.wormhole_nodes {
            let Some(name) = wh.metadata.name.clone() else {
                continue;
            };
            let entry = nodes.entry(name.clone()).or_insert(ClusterNode {
                name,
                pod_cidrs: Vec::new(),
                member: true,
                report: None,
                note: None,
            });
            entry.member = true;
            entry.note = None;
            match &wh.status {
                None => entry.note = Some("no status published yet".into()),
                Some(status) => {
                    entry.report = Some(NodeReport {
                        ok: status.peers_ok,
                        ok_peers: None,
                        problems: status
                            .problems
                            .iter()
                            .map(|p| (p.peer.clone(), p.state.clone()))
                            .collect(),
                        omitted: status.problems_omitted,
                    });
                    entry.note = status.last_error.clone();
                }
            }
        }
        ClusterView::new(nodes.into_values().collect(), Vec::new())
    }

    /// Reads the cluster's WormholeNodes and Nodes with the kubeconfig at `kubeconfig`, else
    /// the usual one (`KUBECONFIG`, `~/.kube/config`, or in a Pod its service account).
    pub async fn read_kubernetes(kubeconfig: Option<&Path>) -> Result<Self, Error> {
        let client = client_for(kubeconfig).await?;
        let objects = wormhole_k8s::read_cluster(client, wormhole_k8s::API_TIMEOUT)
            .await
            .map_err(wormhole_core::Error::from)?;
        Ok(ClusterView::from_kubernetes(&objects))
    }
}

/// A client with the kubeconfig at `kubeconfig`, else the usual one (`KUBECONFIG`,
/// `~/.kube/config`, or in a Pod its service account).
async fn client_for(kubeconfig: Option<&Path>) -> Result<kube::Client, Error> {
    let mut config = match kubeconfig {
        Some(path) => {
            let unusable = |e: kube::config::KubeconfigError| EnvironmentError::Kubeconfig {
                path: path.to_owned(),
                source: Box::new(e),
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(unusable)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(unusable)?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| EnvironmentError::NoKubeconfig {
                source: Box::new(e),
            })?,
    };
    wormhole_k8s::configure_client(&mut config);
    Ok(
        kube::Client::try_from(config).map_err(|e| EnvironmentError::KubeClient {
            source: Box::new(e),
        })?,
    )
}

/// The mesh as every agent sees it, WormholePeers included (what `wormhole peer-config`
/// needs in Kubernetes mode), read with the kubeconfig at `kubeconfig` (else the usual one):
/// every Node, WormholeNode and WormholePeer. `cluster_cidrs` empty: from kubeadm-config, as
/// the agents read them; `external_cidrs`: the agents' `--external-cidr`.
pub async fn read_external_peers(
    kubeconfig: Option<&Path>,
    cluster_cidrs: Vec<ipnet::IpNet>,
    external_cidrs: Vec<ipnet::IpNet>,
) -> Result<wormhole_core::Snapshot, Error> {
    let client = client_for(kubeconfig).await?;
    Ok(wormhole_k8s::read_external(
        client,
        cluster_cidrs,
        external_cidrs,
        wormhole_k8s::API_TIMEOUT,
    )
    .await
    .map_err(wormhole_core::Error::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::PeerView;

    fn peer(name: &str, state: &str) -> PeerView {
        PeerView {
            name: name.into(),
            public_key: None,
            endpoint: None,
            allowed_ips: vec![format!("10.99.{}.0/24", name.len())],
            latest_handshake_age_seconds: Some(5),
            rx_bytes: 0,
            tx_bytes: 0,
            state: state.into(),
            hint: None,
            rtt_ms: None,
            last_rtt_ms: None,
            probe_loss: None,
            path_mtu: None,
            external: false,
        }
    }

    fn view(node: &str, peers: Vec<PeerView>) -> StatusView {
        StatusView {
            node: node.into(),
            public_key: None,
            backend: "embedded".into(),
            interface: "wormhole0".into(),
            mtu: 1420,
            pod_cidrs: vec![format!("10.99.{}.0/24", node.len())],
            ready: true,
            not_ready: None,
            last_reconcile: None,
            source_error: None,
            passes: 1,
            errors: 0,
            peers,
        }
    }

    #[test]
    fn health_classifies_every_state_text() {
        for (text, want) in [
            ("ok", Health::Ok),
            ("lossy", Health::Lossy),
            ("lossy (30 %)", Health::Lossy),
            ("mtu-blackhole (max 1344)", Health::MtuBlackhole),
            ("stale", Health::Stale),
            ("never", Health::Never),
            ("unreachable", Health::Unreachable),
            ("rejected", Health::Rejected),
            ("rejected: malformed public key", Health::Rejected),
            ("route conflict: 10.99.2.0/24 dev eth0", Health::Other),
            ("", Health::Other),
        ] {
            assert_eq!(Health::of(text), want, "{text:?}");
        }
        assert!(Health::ALL.windows(2).all(|w| w[0] < w[1]));
        assert!(!Health::Unknown.is_broken() && Health::Lossy.is_broken());
    }

    #[test]
    fn admin_views_give_every_pair_with_peers_not_read_as_unknown_rows() {
        let views = vec![
            Ok(view(
                "a",
                vec![peer("b", "ok"), peer("c", "mtu-blackhole (max 1344)")],
            )),
            Ok(view("b", vec![peer("a", "ok"), peer("c", "lossy (30 %)")])),
            Err("127.0.0.1:9 (c): connection refused".into()),
        ];
        let cluster = ClusterView::from_status_views(views);
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(cluster.unreadable.len(), 1);
        assert_eq!(
            cluster.nodes[2].pod_cidrs,
            ["10.99.1.0/24"],
            "from a's peer"
        );
        assert_eq!(cluster.cell(0, 0), Cell::Itself);
        assert_eq!(cluster.cell(0, 1), Cell::Ok);
        assert_eq!(
            cluster.cell(0, 2),
            Cell::Problem("mtu-blackhole (max 1344)")
        );
        assert_eq!(cluster.cell(1, 2).health(), Health::Lossy);
        assert!(matches!(cluster.cell(2, 0), Cell::Unknown(_)));
        let s = cluster.summary();
        assert_eq!(
            (s.nodes, s.pairs, s.ok, s.broken, s.unknown),
            (3, 6, 2, 2, 2)
        );
        assert_eq!(
            cluster.broken(),
            [(0, 2, "mtu-blackhole (max 1344)"), (1, 2, "lossy (30 %)")]
        );
        let worst = cluster.most_broken();
        let worst: Vec<(usize, usize)> = worst.iter().map(|t| (t.node, t.pairs)).collect();
        assert_eq!(worst, [(2, 2), (0, 1), (1, 1)]);
        assert_eq!(
            cluster.most_broken()[0].classes_text(),
            "1 lossy, 1 mtu-blackhole"
        );
    }

    #[test]
    fn a_node_that_does_not_name_a_peer_says_nothing_about_it() {
        let views = vec![
            Ok(view("a", vec![peer("b", "ok")])),
            Ok(view("b", vec![peer("a", "ok"), peer("c", "ok")])),
            Ok(view(
                "c",
                vec![peer("b", "ok"), peer("(peers.toml:3)", "rejected: x")],
            )),
        ];
        let cluster = ClusterView::from_status_views(views);
        assert_eq!(
            cluster.nodes.len(),
            3,
            "no node for an unnamed entry or an external peer"
        );
        assert_eq!(
            cluster.cell(0, 2),
            Cell::Unknown("not among this node's peers")
        );
        assert_eq!(cluster.cell(2, 1), Cell::Ok);
    }

    fn wormhole_node(
        name: &str,
        ok: u32,
        problems: &[(&str, &str)],
        omitted: u32,
    ) -> wormhole_k8s::WormholeNode {
        let mut wh = wormhole_k8s::WormholeNode::new(
            name,
            wormhole_k8s::WormholeNodeSpec {
                public_key: String::new(),
                endpoint: None,
                listen_port: 51820,
                persistent_keepalive: None,
            },
        );
        wh.status = Some(wormhole_k8s::WormholeNodeStatus {
            peers_ok: ok,
            problems: problems
                .iter()
                .map(|(peer, state)| wormhole_k8s::PeerProblem {
                    peer: (*peer).into(),
                    state: (*state).into(),
                })
                .collect(),
            problems_omitted: omitted,
            ..Default::default()
        });
        wh
    }

    fn node(name: &str, cidr: &str) -> k8s_openapi::api::core::v1::Node {
        k8s_openapi::api::core::v1::Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidrs: Some(vec![cidr.into()]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn wormhole_nodes_give_every_pair_from_counts_and_problem_lists() {
        let objects = ClusterObjects {
            wormhole_nodes: vec![
                wormhole_node("a", 2, &[("d", "never")], 0),
                wormhole_node("b", 2, &[("d", "lossy")], 0),
                // d's list was cut: whatever it does not list is unknown.
                wormhole_node("d", 0, &[("a", "never")], 2),
                // c knows only two of its three peers.
                wormhole_node("c", 2, &[], 0),
            ],
            nodes: ["a", "b", "c", "d", "e"]
                .iter()
                .enumerate()
                .map(|(i, n)| node(n, &format!("10.99.{i}.0/24")))
                .collect(),
        };
        let cluster = ClusterView::from_kubernetes(&objects);
        let (a, b, c, d, e) = (0, 1, 2, 3, 4);
        assert_eq!(cluster.nodes[e].name, "e");
        assert!(!cluster.nodes[e].member);
        assert!(cluster.nodes[e].note.as_deref().unwrap().contains("agent"));
        assert_eq!(cluster.nodes[b].pod_cidrs, ["10.99.1.0/24"]);
        assert_eq!(cluster.cell(a, b), Cell::Ok);
        assert_eq!(cluster.cell(a, d), Cell::Problem("never"));
        assert_eq!(cluster.cell(b, d).health(), Health::Lossy);
        assert_eq!(cluster.cell(a, e), Cell::Unknown("not in the mesh"));
        assert_eq!(
            cluster.cell(e, a),
            Cell::Unknown("no report from this node")
        );
        assert_eq!(
            cluster.cell(d, b),
            Cell::Unknown("not listed (too many problems)")
        );
        assert_eq!(
            cluster.cell(c, a),
            Cell::Unknown("this node does not know every peer yet")
        );
        assert_eq!(cluster.broken().len(), 3);
        assert_eq!(
            (
                cluster.most_broken()[0].node,
                cluster.most_broken()[0].pairs
            ),
            (d, 3)
        );
    }

    #[test]
    fn a_big_cluster_is_counted_without_surprises() {
        // 300 nodes, one of which drops large packets to and from everyone.
        let names: Vec<String> = (0..300).map(|i| format!("node-{i:03}")).collect();
        let objects = ClusterObjects {
            wormhole_nodes: names
                .iter()
                .map(|n| {
                    if n == "node-007" {
                        let problems: Vec<(&str, &str)> = names
                            .iter()
                            .filter(|m| *m != n)
                            .map(|m| (m.as_str(), "mtu-blackhole (max 1344)"))
                            .collect();
                        wormhole_node(n, 0, &problems, 0)
                    } else {
                        wormhole_node(n, 298, &[("node-007", "mtu-blackhole (max 1344)")], 0)
                    }
                })
                .collect(),
            nodes: Vec::new(),
        };
        let cluster = ClusterView::from_kubernetes(&objects);
        let s = cluster.summary();
        assert_eq!(s.pairs, 300 * 299);
        assert_eq!(s.broken, 2 * 299);
        assert_eq!(s.unknown, 0);
        assert_eq!(s.ok, s.pairs - s.broken);
        let worst = &cluster.most_broken()[0];
        assert_eq!((worst.node, worst.pairs), (7, 2 * 299));
        assert_eq!(worst.classes, [(Health::MtuBlackhole, 598)]);
    }
}
