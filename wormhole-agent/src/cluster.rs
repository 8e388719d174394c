//! The cluster as its nodes see it, for `wormhole status --cluster` and `wormhole graph`: for
//! every node its pod CIDRs and what it reports about its peers, and from that the state of
//! every ordered pair (from, to). Built from the WormholeNodes of a cluster
//! ([`ClusterView::from_kubernetes`], each agent publishes its peers that are not `ok`) or from
//! the `/status` of each node's admin endpoint ([`ClusterView::from_status_views`]).
//!
//! What a node reports is its own claim: a report is kept with the source it came from (its
//! WormholeNode, or the admin endpoint that served it), so that no source can replace another
//! one's; the nodes of a view are the ones asked for (the WormholeNodes and Nodes, or the
//! endpoints given), however many peers a report names; and every count over the pairs is
//! linear in the reports (a 15,000-node cluster has 225 million pairs: none walks them).

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
    /// The admin endpoint (as given) its report was read from, for a view from admin endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
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
    /// Peers the reports name that are none of the nodes asked for (admin endpoints: give
    /// theirs to see them), most named first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_asked: Vec<String>,
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

/// A row of the matrix as a report gives it (see [`ClusterView::row`]).
struct Row<'a> {
    /// The cells that are problems: (to, state), `to` another node of the view.
    problems: Vec<(usize, &'a str)>,
    /// The cells that are `ok`.
    ok: RowOk,
}

/// The `ok` cells of a row.
enum RowOk {
    /// These (members, not among the problems, not the node itself).
    Listed(Vec<usize>),
    /// Every member other than the node itself and its problems (a report that counts its
    /// `ok` peers and knows them all).
    EveryMember,
    /// None.
    Nothing,
}

/// A peer the reports name that no reply read claims to be.
struct Named {
    /// How many reports name it.
    reports: usize,
    /// The latest report that did.
    last: usize,
    /// Its CIDRs, from the first report that gives them.
    pod_cidrs: Vec<String>,
}

/// The longest text (a state, a note) kept from a report; the rest is cut, marked with `…`.
const MAX_REPORT_TEXT: usize = 512;

/// `text` cut to [`MAX_REPORT_TEXT`] characters.
pub(crate) fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_REPORT_TEXT) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// The CIDRs of `texts` that parse, in canonical form (a report's are its claim: what is not
/// a CIDR is dropped).
fn cidrs(texts: &[String]) -> Vec<String> {
    texts
        .iter()
        .filter_map(|t| t.parse::<ipnet::IpNet>().ok())
        .map(|c| c.to_string())
        .collect()
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
            not_asked: Vec::new(),
            index,
            members,
        }
    }

    /// Whether some node's report could be read (`false`: no node answered, or none has
    /// published a status).
    pub fn any_report(&self) -> bool {
        self.nodes.iter().any(|n| n.report.is_some())
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

    /// The row of node `from` as its report gives it: the cells that are not unknown, found
    /// from the report's own entries (cost: its size, not the number of nodes). `None`
    /// without a report (every cell of the row unknown).
    fn row(&self, from: usize) -> Option<Row<'_>> {
        let report = self.nodes[from].report.as_ref()?;
        let problems = report
            .problems
            .iter()
            .filter_map(|(name, state)| {
                let to = self.position(name)?;
                (to != from).then_some((to, state.as_str()))
            })
            .collect();
        let ok = match &report.ok_peers {
            Some(names) => RowOk::Listed(
                names
                    .iter()
                    .filter_map(|name| {
                        let to = self.position(name)?;
                        (to != from && self.nodes[to].member && !report.problems.contains_key(name))
                            .then_some(to)
                    })
                    .collect(),
            ),
            None if report.omitted > 0 => RowOk::Nothing,
            None if report.ok as usize + report.problems.len() + 1 >= self.members => {
                RowOk::EveryMember
            }
            None => RowOk::Nothing,
        };
        Some(Row { problems, ok })
    }

    /// Counts of `ok`, broken and unknown pairs: what [`cell`](Self::cell) gives for every
    /// pair, counted from the reports (linear in their size, never n²).
    pub fn summary(&self) -> Summary {
        let n = self.nodes.len();
        let mut s = Summary {
            nodes: n,
            pairs: n * n.saturating_sub(1),
            ..Summary::default()
        };
        for from in 0..n {
            let Some(row) = self.row(from) else {
                s.unknown += n - 1;
                continue;
            };
            for (_, state) in &row.problems {
                match Health::of(state) {
                    Health::Ok => s.ok += 1,
                    _ => s.broken += 1,
                }
            }
            let ok = match &row.ok {
                RowOk::Listed(to) => to.len(),
                RowOk::EveryMember => {
                    let itself = usize::from(self.nodes[from].member);
                    let named = row
                        .problems
                        .iter()
                        .filter(|(to, _)| self.nodes[*to].member)
                        .count();
                    self.members - itself - named
                }
                RowOk::Nothing => 0,
            };
            s.ok += ok;
            s.unknown += n - 1 - row.problems.len() - ok;
        }
        s
    }

    /// The pairs in squares of `per` × `per` (rows = from, columns = to, both by position),
    /// each square the worst [`Health`] of its pairs (a square holding only a node's pair
    /// with itself: [`Health::Ok`]); row-major, `n.div_ceil(per)` squares a side. Costs the
    /// reports' size plus a counter per square of each row: linear in the nodes for a bounded
    /// number of squares (the heat map's).
    pub fn worst_by_square(&self, per: usize) -> Vec<Health> {
        let n = self.nodes.len();
        let per = per.max(1);
        let grid = n.div_ceil(per);
        let mut worst = vec![Health::Ok; grid * grid];
        // Per column of squares: its nodes, and its members.
        let width = |c: usize| per.min(n - c * per);
        let mut members = vec![0usize; grid];
        for (i, node) in self.nodes.iter().enumerate() {
            members[i / per] += usize::from(node.member);
        }
        // Per column of squares, for the current row: the cells known (ok or a problem), and
        // the members among its problems.
        let mut known = vec![0usize; grid];
        let mut member_problems = vec![0usize; grid];
        for from in 0..n {
            let line = from / per;
            let squares = &mut worst[line * grid..(line + 1) * grid];
            let others = |c: usize| width(c) - usize::from(c == line);
            let Some(row) = self.row(from) else {
                for (c, square) in squares.iter_mut().enumerate() {
                    if others(c) > 0 {
                        *square = (*square).max(Health::Unknown);
                    }
                }
                continue;
            };
            known.fill(0);
            member_problems.fill(0);
            for &(to, state) in &row.problems {
                let c = to / per;
                known[c] += 1;
                member_problems[c] += usize::from(self.nodes[to].member);
                squares[c] = squares[c].max(Health::of(state));
            }
            match &row.ok {
                RowOk::Listed(to) => {
                    for &to in to {
                        known[to / per] += 1;
                    }
                }
                RowOk::EveryMember => {
                    let itself = usize::from(self.nodes[from].member);
                    for (c, k) in known.iter_mut().enumerate() {
                        *k += members[c] - usize::from(c == line) * itself - member_problems[c];
                    }
                }
                RowOk::Nothing => {}
            }
            for (c, square) in squares.iter_mut().enumerate() {
                if known[c] < others(c) {
                    *square = (*square).max(Health::Unknown);
                }
            }
        }
        worst
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

    /// The view from each node's `/status`, fetched from the admin endpoints given: one
    /// `(endpoint, reply)` each, an `Err` being an endpoint that could not be read (`why`,
    /// naming the endpoint).
    ///
    /// A reply's node name is its claim. Each report stays with its endpoint: two endpoints
    /// claiming one name are both shown, by `name@endpoint`, with a note (neither is taken for
    /// the node, whose pairs stay unknown), and a name that is no valid node name is replaced
    /// by the endpoint. The nodes are the endpoints asked: a peer named by the reports but
    /// not read is a node (without a report) only in place of an endpoint that could not be
    /// read, the peers named by most reports first; the others are listed in
    /// [`not_asked`](Self::not_asked). Costs the replies' size.
    pub fn from_status_views(views: Vec<(String, Result<StatusView, String>)>) -> Self {
        let mut unreadable = Vec::new();
        let mut read: Vec<(String, StatusView)> = Vec::new();
        for (endpoint, view) in views {
            match view {
                Ok(view) => read.push((endpoint, view)),
                Err(why) => unreadable.push(why),
            }
        }
        // Claimed names, and who claims each.
        let mut claims: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (_, view)) in read.iter().enumerate() {
            if wormhole_core::is_dns1123_subdomain(&view.node) {
                claims.entry(view.node.as_str()).or_default().push(i);
            }
        }
        let mut nodes: Vec<ClusterNode> = Vec::with_capacity(read.len() + unreadable.len());
        // Per peer name not read: how many reports name it, and its CIDRs.
        let mut named: HashMap<&str, Named> = HashMap::new();
        for (i, (endpoint, view)) in read.iter().enumerate() {
            let mut report = NodeReport::default();
            let mut ok_peers = BTreeSet::new();
            for peer in &view.peers {
                // A rejected entry without a name is shown as `(origin)`, an external peer (a
                // laptop, a VM) is no node of the mesh and is not probed, and what is not a
                // node name names no node: none is drawn.
                if peer.external || !wormhole_core::is_dns1123_subdomain(&peer.name) {
                    continue;
                }
                if peer.state == "ok" {
                    ok_peers.insert(peer.name.clone());
                } else {
                    report
                        .problems
                        .insert(peer.name.clone(), bounded(&peer.state));
                }
                if !claims.contains_key(peer.name.as_str()) {
                    let entry = named.entry(peer.name.as_str()).or_insert(Named {
                        reports: 0,
                        last: usize::MAX,
                        pod_cidrs: Vec::new(),
                    });
                    // One count per report, however often it names the peer.
                    if entry.last != i {
                        entry.reports += 1;
                        entry.last = i;
                    }
                    if entry.pod_cidrs.is_empty() {
                        entry.pod_cidrs = cidrs(&peer.allowed_ips);
                    }
                }
            }
            ok_peers.retain(|name| !report.problems.contains_key(name));
            report.ok = u32::try_from(ok_peers.len()).unwrap_or(u32::MAX);
            report.ok_peers = Some(ok_peers);
            let mut note = view
                .last_reconcile
                .as_ref()
                .and_then(|p| p.error.as_deref())
                .or(view.source_error.as_deref())
                .map(bounded);
            let name = match claims.get(view.node.as_str()) {
                Some(by) if by.len() == 1 => view.node.clone(),
                Some(by) => {
                    let others: Vec<&str> = by
                        .iter()
                        .filter(|&&j| j != i)
                        .map(|&j| read[j].0.as_str())
                        .collect();
                    note = Some(format!(
                        "{} also says it is node {name}; which endpoint is {name} cannot be \
                         told, so neither is taken for it (pairs with {name} are unknown)",
                        others.join(", "),
                        name = view.node
                    ));
                    format!("{}@{endpoint}", view.node)
                }
                None => {
                    note = Some(format!(
                        "its reply names no valid node (\"{}\"): shown by its address",
                        bounded(&view.node)
                    ));
                    endpoint.clone()
                }
            };
            nodes.push(ClusterNode {
                name,
                pod_cidrs: cidrs(&view.pod_cidrs),
                member: true,
                report: Some(report),
                note,
                admin: Some(endpoint.clone()),
            });
        }
        // An endpoint that could not be read is a node whose name is not known: the peers the
        // reports name most take those places.
        let mut candidates: Vec<(&str, Named)> = named.into_iter().collect();
        candidates.sort_by(|a, b| b.1.reports.cmp(&a.1.reports).then(a.0.cmp(b.0)));
        let reports = read.len();
        let mut candidates = candidates.into_iter();
        for (name, peer) in candidates.by_ref().take(unreadable.len()) {
            let count = peer.reports;
            nodes.push(ClusterNode {
                name: name.to_owned(),
                pod_cidrs: peer.pod_cidrs,
                member: true,
                report: None,
                note: Some(format!(
                    "its admin endpoint was not read (named by {count} of the {reports} nodes read)"
                )),
                admin: None,
            });
        }
        let not_asked = candidates.map(|(name, _)| name.to_owned()).collect();
        let mut view = ClusterView::new(nodes, unreadable);
        view.not_asked = not_asked;
        view
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
                    admin: None,
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
                admin: None,
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
                            .map(|p| (p.peer.clone(), bounded(&p.state)))
                            .collect(),
                        omitted: status.problems_omitted,
                    });
                    entry.note = status.last_error.as_deref().map(bounded);
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
    use std::time::Duration;

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

    /// The reply of admin endpoint `127.0.0.1:900i`.
    fn at(i: u16, reply: Result<StatusView, String>) -> (String, Result<StatusView, String>) {
        (format!("127.0.0.1:{}", 9000 + i), reply)
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
            preflight: None,
            foreign_cni_configs: Vec::new(),
            node_settings: None,
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
            at(
                1,
                Ok(view(
                    "a",
                    vec![peer("b", "ok"), peer("c", "mtu-blackhole (max 1344)")],
                )),
            ),
            at(
                2,
                Ok(view("b", vec![peer("a", "ok"), peer("c", "lossy (30 %)")])),
            ),
            at(3, Err("127.0.0.1:9003: connection refused".into())),
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
            at(1, Ok(view("a", vec![peer("b", "ok")]))),
            at(2, Ok(view("b", vec![peer("a", "ok"), peer("c", "ok")]))),
            at(
                3,
                Ok(view(
                    "c",
                    vec![peer("b", "ok"), peer("(peers.toml:3)", "rejected: x")],
                )),
            ),
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

    #[test]
    fn a_reply_cannot_replace_another_nodes_report() {
        // The endpoint at :9003 says it is `a`, and that `a` reaches nobody.
        let views = vec![
            at(1, Ok(view("a", vec![peer("b", "ok"), peer("c", "lossy")]))),
            at(2, Ok(view("b", vec![peer("a", "ok"), peer("c", "ok")]))),
            at(
                3,
                Ok(view("a", vec![peer("b", "never"), peer("c", "never")])),
            ),
            at(4, Ok(view("c", vec![peer("a", "ok"), peer("b", "ok")]))),
        ];
        let cluster = ClusterView::from_status_views(views);
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a@127.0.0.1:9001", "a@127.0.0.1:9003", "b", "c"]);
        // Each report is the one its endpoint served.
        let honest = &cluster.nodes[0];
        assert_eq!(honest.admin.as_deref(), Some("127.0.0.1:9001"));
        let problems = &honest.report.as_ref().unwrap().problems;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems["c"], "lossy");
        for node in &cluster.nodes[..2] {
            let note = node.note.as_deref().unwrap();
            assert!(note.contains("also says it is node a"), "{note}");
        }
        // Nobody is taken for `a`: what the others say about `a` is unknown, not the liar's.
        let (b, c) = (2, 3);
        assert_eq!(cluster.position("a"), None);
        assert_eq!(cluster.cell(c, b), Cell::Ok);
        assert_eq!(cluster.cell(0, c), Cell::Problem("lossy"));
        assert!(matches!(cluster.cell(1, c), Cell::Problem("never")));
        assert!(matches!(cluster.cell(b, 0), Cell::Unknown(_)));
        // A name that is no node name is replaced by the endpoint.
        let cluster = ClusterView::from_status_views(vec![at(
            1,
            Ok(view("\u{1b}[2J", vec![peer("b", "ok")])),
        )]);
        assert_eq!(cluster.nodes[0].name, "127.0.0.1:9001");
        assert!(
            cluster.nodes[0]
                .note
                .as_deref()
                .unwrap()
                .contains("names no valid node")
        );
    }

    #[test]
    fn the_nodes_are_those_asked_however_many_peers_a_reply_names() {
        let flood: Vec<PeerView> = (0..8_000)
            .map(|i| peer(&format!("p{i}"), "never"))
            .chain([peer("c", "never")])
            .collect();
        let views = vec![
            at(1, Ok(view("a", vec![peer("b", "ok"), peer("c", "never")]))),
            at(2, Ok(view("b", vec![peer("a", "ok"), peer("c", "never")]))),
            at(3, Ok(view("h", flood))),
            at(4, Err("127.0.0.1:9004: connection refused".into())),
        ];
        let cluster = ClusterView::from_status_views(views);
        // Four endpoints asked, four nodes: the one not read is `c`, named by every report.
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "h"]);
        assert!(
            cluster.nodes[2]
                .note
                .as_deref()
                .unwrap()
                .contains("named by 3 of the 3 nodes read")
        );
        assert_eq!(cluster.not_asked.len(), 8_000);
        assert_eq!(cluster.not_asked[0], "p0");
        let s = cluster.summary();
        assert_eq!((s.nodes, s.pairs, s.broken), (4, 12, 3));
        assert_eq!(cluster.broken().len(), 3);
    }

    use crate::fuzzing::by_cells;

    #[test]
    fn the_counts_are_those_of_every_cell() {
        // Reports of every kind: listed ok peers, counted ones (complete, incomplete, cut),
        // none; members and not; a problem that says ok; a name that is no node.
        let mut nodes: Vec<ClusterNode> = (0..9)
            .map(|i| ClusterNode {
                name: format!("n{i}"),
                pod_cidrs: Vec::new(),
                member: i != 4,
                report: None,
                note: None,
                admin: None,
            })
            .collect();
        let problems = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        nodes[0].report = Some(NodeReport {
            ok: 2,
            ok_peers: Some(["n1", "n2", "n4", "n0", "zz"].map(String::from).into()),
            problems: problems(&[("n2", "lossy"), ("n3", "never"), ("n0", "never")]),
            omitted: 0,
        });
        nodes[1].report = Some(NodeReport {
            ok: 6,
            ok_peers: None,
            problems: problems(&[("n4", "stale"), ("n5", "ok")]),
            omitted: 0,
        });
        nodes[2].report = Some(NodeReport {
            ok: 1,
            ok_peers: None,
            problems: problems(&[("n3", "never")]),
            omitted: 0,
        });
        nodes[3].report = Some(NodeReport {
            ok: 9,
            ok_peers: None,
            problems: problems(&[("n8", "rejected: x")]),
            omitted: 3,
        });
        nodes[5].report = Some(NodeReport::default());
        let cluster = ClusterView::new(nodes, Vec::new());
        for per in [1, 2, 3, 4, 9, 20] {
            let (summary, worst) = by_cells(&cluster, per);
            assert_eq!(cluster.summary(), summary, "per {per}");
            assert_eq!(cluster.worst_by_square(per), worst, "per {per}");
        }
        let empty = ClusterView::new(Vec::new(), Vec::new());
        assert_eq!(empty.summary(), Summary::default());
        assert!(empty.worst_by_square(1).is_empty());
    }

    /// How many times more `big` costs than `small` (each returns the time of what it
    /// measures): the best of five rounds each, taken in turns. `small` does its work as many
    /// times over as `big` has more input, so that both take about as long (and a busy machine
    /// slows both alike): linear is about 1, quadratic the size ratio.
    pub(crate) fn cost_ratio(small: &dyn Fn() -> Duration, big: &dyn Fn() -> Duration) -> f64 {
        let (mut t_small, mut t_big) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            t_small = t_small.min(small());
            t_big = t_big.min(big());
        }
        t_big.as_secs_f64() / t_small.as_secs_f64()
    }

    /// The time `f` takes.
    fn timed(f: impl FnOnce()) -> Duration {
        let started = std::time::Instant::now();
        f();
        started.elapsed()
    }

    #[test]
    fn the_views_are_linear_in_the_reports() {
        // Compared by cost ratio (see `cost_ratio`), not by time, so that a slow or busy
        // machine does not fail it: eight times the nodes must cost about eight times as much
        // (n²: 64 times), so about as much as the small view done eight times.
        let cluster = |n: usize| {
            let names: Vec<String> = (0..n).map(|i| format!("node-{i:05}")).collect();
            let objects = ClusterObjects {
                wormhole_nodes: names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let sick = &names[(i * 7 + 1) % n];
                        wormhole_node(name, n as u32 - 2, &[(sick.as_str(), "lossy")], 0)
                    })
                    .collect(),
                nodes: Vec::new(),
            };
            ClusterView::from_kubernetes(&objects)
        };
        let (small, big) = (cluster(1_000), cluster(8_000));
        let work = |c: &ClusterView| {
            let s = c.summary();
            assert_eq!(s.broken, c.nodes.len());
            let worst = c.worst_by_square(c.nodes.len().div_ceil(400));
            assert!(worst.contains(&Health::Lossy));
            assert_eq!(c.most_broken().len(), c.nodes.len());
        };
        let ratio = cost_ratio(&|| timed(|| (0..8).for_each(|_| work(&small))), &|| {
            timed(|| work(&big))
        });
        assert!(ratio < 4.0, "8x the nodes cost {:.1}x as much", ratio * 8.0);
        // One reply naming n peers, beside two honest ones: from a fresh copy of the replies
        // each time (copied before the clock starts).
        let flood = |n: usize| {
            let peers: Vec<PeerView> = (0..n).map(|i| peer(&format!("p{i}"), "never")).collect();
            vec![
                at(1, Ok(view("a", vec![peer("b", "ok")]))),
                at(2, Ok(view("b", vec![peer("a", "ok")]))),
                at(3, Ok(view("h", peers))),
            ]
        };
        let (small, big) = (flood(4_000), flood(32_000));
        let read = |views: &Vec<(String, Result<StatusView, String>)>| {
            let views = views.clone();
            timed(|| {
                let c = ClusterView::from_status_views(views);
                assert_eq!(c.nodes.len(), 3);
                let _ = (c.summary(), c.worst_by_square(1), c.most_broken());
            })
        };
        let ratio = cost_ratio(&|| (0..8).map(|_| read(&small)).sum(), &|| read(&big));
        assert!(ratio < 4.0, "8x the peers cost {:.1}x as much", ratio * 8.0);
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
