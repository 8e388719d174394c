//! The Kubernetes [`PeerSource`]: reflectors over Nodes and WormholeNodes.
//!
//! The desired mesh is every Node that has a WormholeNode (owned by that very Node). A peer's
//! **allowed IPs come only from `Node.spec.podCIDRs`**: a WormholeNode has no field for CIDRs,
//! so an agent can publish its key and endpoint but can never claim addresses. This node's pod
//! CIDRs come from its own Node. A Node without pod CIDRs is "not ready" and left out (not an
//! error), except this node, which cannot be part of the mesh without them.
//!
//! While the API server is unreachable the stores keep their contents, so no peer is removed
//! during an outage; watches retry every 0.25 s to 2 s (with jitter), so the mesh converges
//! within seconds of the API server's return. A watch that resumes reports nothing until something
//! changes, so after a watch failure the source also asks the API server every 1-2 s (a list of
//! one object of each kind; a refused connection costs the server nothing, and once it answers
//! each agent asks once): the mesh is then yielded again and the error clears, change or no
//! change. Changes are debounced and a snapshot is only
//! yielded when it differs from the last one (Node status heartbeats change nothing).
//!
//! With a [`StateStore`] ([`KubePeerSource::with_state`]) every snapshot yielded is saved, and
//! an agent that starts while the API server is down (the watches fail, or have not listed
//! within a few seconds) yields the saved snapshot first: its node's pod network comes up with
//! the last known mesh and converges when the API server answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use wormhole_core::ErrorChain;

use async_trait::async_trait;
use futures::{Stream, StreamExt as _};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use wormhole_core::{NodeEntry, Snapshot};
use wormhole_core::{PeerSource, PublicKey};

use crate::KubeadmConfigError;
use crate::crd::{WormholeNode, WormholeNodeStatus};
use crate::peer::{WormholePeer, external_entries, slim_peer};
use crate::state::StateStore;
use crate::vote::{Choice, tally};
use crate::{ANNOTATION_PREFIX, API_TIMEOUT, Error, call};

/// A Node's pod CIDRs (`spec.podCIDRs`, or the older single `spec.podCIDR`).
pub(crate) fn pod_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = &node.spec else {
        return Vec::new();
    };
    match &spec.pod_cidrs {
        Some(cidrs) if !cidrs.is_empty() => cidrs.clone(),
        _ => spec.pod_cidr.iter().cloned().collect(),
    }
}

/// Whether `wh` is owned by `node` (same UID): a leftover of a deleted Node with the same name
/// is not.
pub(crate) fn owned_by(wh: &WormholeNode, node: &Node) -> bool {
    let uid = node.metadata.uid.as_deref();
    wh.owner_references()
        .iter()
        .any(|o| o.kind == "Node" && Some(o.uid.as_str()) == uid)
}

/// When a WormholeNode made its claim: its creation time, then its uid (creation times have one
/// second resolution), both set by the API server. Objects without them (never the case on a
/// real server) come last.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Claim {
    unknown: bool,
    created: Option<Time>,
    uid: String,
}

impl Default for Claim {
    fn default() -> Self {
        Claim {
            unknown: true,
            created: None,
            uid: String::new(),
        }
    }
}

pub(crate) fn claim(wh: &WormholeNode) -> Claim {
    match &wh.metadata.creation_timestamp {
        Some(created) => Claim {
            unknown: false,
            created: Some(created.clone()),
            uid: wh.metadata.uid.clone().unwrap_or_default(),
        },
        None => Claim::default(),
    }
}

/// The snapshot for `local` (whose key is `local_key`) from the Nodes and WormholeNodes given:
/// entries oldest claim first ([`Snapshot::oldest_first`]), by the WormholeNode's creation time
/// and uid, so the node that published a key first keeps it when another publishes the same.
/// Where nodes behind NAT are is the observers' vote at `now`, settled by `choice` (see
/// [`crate::vote`]).
pub(crate) fn snapshot(
    nodes: &[Arc<Node>],
    wormholes: &[Arc<WormholeNode>],
    local: &str,
    local_key: &PublicKey,
    cluster_cidrs: &[IpNet],
    choice: &mut Choice,
    now: tokio::time::Instant,
) -> Result<Snapshot, Error> {
    let published: HashMap<String, &WormholeNode> =
        wormholes.iter().map(|w| (w.name_any(), &**w)).collect();
    // Each entry with its claim: when and as what its WormholeNode was created.
    let mut entries: Vec<(Claim, NodeEntry)> = Vec::with_capacity(nodes.len());
    // The WormholeNodes of the mesh (owned by their Node): the observers of peers behind NAT.
    let mut observers: HashMap<String, &WormholeNode> = HashMap::new();
    let mut local_seen = false;
    for node in nodes {
        let name = node.name_any();
        let cidrs = pod_cidrs(node);
        if name == local {
            if cidrs.is_empty() {
                return Err(Error::NoPodCidrs {
                    node: local.to_owned(),
                });
            }
            local_seen = true;
            // The key as published (other nodes use it), else ours (not yet published).
            let published = published.get(&name).filter(|wh| owned_by(wh, node));
            let published_key = published.map(|wh| wh.spec.public_key.clone());
            if let Some(wh) = published {
                observers.insert(name.clone(), wh);
            }
            entries.push((
                published.map_or_else(Claim::default, |wh| claim(wh)),
                NodeEntry {
                    name,
                    public_key: published_key.unwrap_or_else(|| local_key.to_base64()),
                    endpoint: None,
                    pod_cidrs: cidrs,
                    // Our own keepalive as published (behind NAT): toward every peer.
                    persistent_keepalive: published.and_then(|wh| wh.spec.persistent_keepalive),
                    origin: format!("Node/{local}"),
                },
            ));
            continue;
        }
        if cidrs.is_empty() {
            tracing::debug!(node = %name, "no podCIDRs yet: not ready, left out");
            continue;
        }
        let Some(wh) = published.get(&name).filter(|wh| owned_by(wh, node)) else {
            tracing::debug!(node = %name, "no WormholeNode (owned by this Node) yet: left out");
            continue;
        };
        observers.insert(name.clone(), wh);
        entries.push((
            claim(wh),
            NodeEntry {
                public_key: wh.spec.public_key.clone(),
                endpoint: wh.spec.endpoint.clone(),
                pod_cidrs: cidrs,
                persistent_keepalive: wh.spec.persistent_keepalive,
                origin: format!("WormholeNode/{name}"),
                name,
            },
        ));
    }
    if !local_seen {
        return Err(Error::NodeNotFound {
            node: local.to_owned(),
        });
    }
    // Oldest claim first, so that validation lets the earlier claim win a conflict (a node that
    // copies another's public key loses, also on an agent starting without history). A stable
    // order too: equal pictures compare equal, validation reuses unchanged entries, and a new
    // node comes last without moving the others.
    entries.sort_by(|(a, ea), (b, eb)| (a, &ea.name).cmp(&(b, &eb.name)));
    let behind_nat: HashSet<&str> = entries
        .iter()
        .filter(|(_, e)| e.endpoint.is_none() && e.name != local)
        .map(|(_, e)| e.name.as_str())
        .collect();
    let reports = observers.iter().filter_map(|(observer, wh)| {
        let status = wh.status.as_ref()?;
        Some((observer.as_str(), status.observed_endpoints.as_slice()))
    });
    let observed_endpoints = choice.settle(tally(reports, &behind_nat), now);
    Ok(Snapshot {
        cluster_cidrs: cluster_cidrs.to_vec(),
        nodes: entries.into_iter().map(|(_, e)| e).collect(),
        rejected: Vec::new(),
        oldest_first: true,
        observed_endpoints,
        ..Snapshot::default()
    })
}

/// The pod network CIDRs from kubeadm's ClusterConfiguration (`networking.podSubnet`, possibly
/// two, comma-separated); empty when there is no kubeadm-config ConfigMap.
pub async fn detect_cluster_cidrs(client: Client) -> Result<Vec<IpNet>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let Some(cm) = call(
        "get kube-system/kubeadm-config",
        API_TIMEOUT,
        api.get_opt("kubeadm-config"),
    )
    .await?
    else {
        return Ok(Vec::new());
    };
    let config = cm.data.as_ref().and_then(|d| d.get("ClusterConfiguration"));
    config.map_or(Ok(Vec::new()), |text| pod_subnets(text))
}

/// What we read of kubeadm's ClusterConfiguration; every other field is ignored.
#[derive(Debug, Default, serde::Deserialize)]
struct ClusterConfiguration {
    #[serde(default)]
    networking: Networking,
}

/// `ClusterConfiguration.networking`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Networking {
    #[serde(default)]
    pod_subnet: Option<String>,
}

/// The pod network CIDRs in kubeadm's ClusterConfiguration (YAML): `networking.podSubnet`, one
/// CIDR or, dual-stack, two comma-separated; empty when it names none.
pub fn pod_subnets(cluster_configuration: &str) -> Result<Vec<IpNet>, Error> {
    let config: Option<ClusterConfiguration> = yaml_serde::from_str(cluster_configuration)
        .map_err(|e| KubeadmConfigError::Yaml(Box::new(e)))?;
    let Some(subnets) = config.and_then(|c| c.networking.pod_subnet) else {
        return Ok(Vec::new());
    };
    subnets
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<IpNet>().map_err(|source| {
                KubeadmConfigError::PodSubnet {
                    value: c.to_owned(),
                    source,
                }
                .into()
            })
        })
        .collect()
}

/// Node objects hold much we do not need (status, images, managed fields): keep what the mesh
/// uses, so 5,000 Nodes stay small in memory. Of the annotations, only the local Node's
/// `wormhole.dev/` ones are kept: its per-node settings, which no other agent reads.
fn slim_node(node: &mut Node, local: &str) {
    node.status = None;
    node.metadata.managed_fields = None;
    node.metadata.labels = None;
    let annotations = node.metadata.annotations.take();
    if node.metadata.name.as_deref() == Some(local) {
        node.metadata.annotations = annotations.map(|mut all| {
            all.retain(|key, _| key.starts_with(ANNOTATION_PREFIX));
            all
        });
    }
}

/// This node's `wormhole.dev/` annotations, as [`KubePeerSource::node_annotations`] gives them.
pub type Annotations = BTreeMap<String, String>;

/// Keeps the spec and, of the status, only where the node observes peers behind NAT.
fn slim_wormhole(wh: &mut WormholeNode) {
    wh.metadata.managed_fields = None;
    wh.metadata.annotations = None;
    wh.status = wh
        .status
        .take()
        .filter(|s| !s.observed_endpoints.is_empty())
        .map(|s| WormholeNodeStatus {
            observed_endpoints: s.observed_endpoints,
            ..WormholeNodeStatus::default()
        });
}

/// Sleeps until `at` (never when `None`; the branch is disabled then).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type Changes = Pin<Box<dyn Stream<Item = Result<(), watcher::Error>> + Send>>;

/// The watches' retry delays: 0.25 s doubling to 2 s, each plus up to 0.25 s of jitter (so the
/// agents of a large cluster do not all retry at once), back to 0.25 s after 30 s without a
/// failure. kube's default grows to 30 s: the mesh would converge up to half a minute after the
/// API server is back. (A watcher reports progress before each list attempt, and the backoff is
/// told to reset on any progress: a reset right after a failure is ignored, or the delay would
/// never grow.)
struct Retry {
    next: Duration,
    jitter: std::collections::hash_map::RandomState,
    tries: u64,
    failed_at: Option<std::time::Instant>,
}

impl Retry {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(2);
    const RESET_AFTER: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Retry {
            next: Self::MIN,
            jitter: Default::default(),
            tries: 0,
            failed_at: None,
        }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        use std::hash::BuildHasher as _;
        self.tries += 1;
        self.failed_at = Some(std::time::Instant::now());
        let jitter = self.jitter.hash_one(self.tries) % Self::MIN.as_millis() as u64;
        let delay = self.next + Duration::from_millis(jitter);
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for Retry {
    fn reset(&mut self) {
        if self
            .failed_at
            .is_none_or(|at| at.elapsed() >= Self::RESET_AFTER)
        {
            self.next = Self::MIN;
        }
    }
}

/// A [`PeerSource`] over the Kubernetes API.
pub struct KubePeerSource {
    client: Client,
    nodes: Store<Node>,
    wormholes: Store<WormholeNode>,
    /// WormholePeers: external peers, see [`crate::peer`].
    peers: Store<WormholePeer>,
    /// The WormholePeer watch failed before its first listing (say, the CRD is not installed):
    /// the mesh goes on without external peers rather than waiting for them.
    peers_failed: Arc<std::sync::atomic::AtomicBool>,
    external_cidrs: Vec<IpNet>,
    changes: Changes,
    local: String,
    local_key: PublicKey,
    cluster_cidrs: Vec<IpNet>,
    debounce: Duration,
    last: Option<Snapshot>,
    failed: bool,
    /// Where snapshots are saved.
    state: Option<StateStore>,
    /// The saved snapshot, until it is used or a live one overtakes it.
    saved: Option<Snapshot>,
    /// How long to wait for the first listing before using the saved snapshot.
    grace: Duration,
    started: tokio::time::Instant,
    /// A watch error held back while the saved snapshot was yielded: reported next.
    held: Option<watcher::Error>,
    /// A watch failure was logged: the next ones (retries) are debug, until a snapshot again.
    warned: bool,
    /// A watch failed and has reported no progress since: the API server is asked whether it
    /// answers again.
    outage: bool,
    /// Where nodes behind NAT are, as the observers' votes settled (see [`crate::vote`]).
    choice: Choice,
    /// This node's `wormhole.dev/` annotations once the Node watch listed (`None` before).
    annotations: tokio::sync::watch::Sender<Option<Annotations>>,
}

impl KubePeerSource {
    /// Watches Nodes and WormholeNodes for the node `local` whose key is `local_key`.
    pub fn new(
        client: Client,
        local: &str,
        local_key: PublicKey,
        cluster_cidrs: Vec<IpNet>,
    ) -> Self {
        let (nodes, node_writer) = reflector::store();
        let (wormholes, wh_writer) = reflector::store();
        let node_changes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .backoff(Retry::new())
            .modify({
                let local = local.to_owned();
                move |node| slim_node(node, &local)
            })
            .reflect(node_writer)
            .map(|e| e.map(drop));
        let wh_changes = watcher(
            Api::<WormholeNode>::all(client.clone()),
            watcher::Config::default(),
        )
        .backoff(Retry::new())
        .modify(slim_wormhole)
        .reflect(wh_writer)
        .map(|e| e.map(drop));
        let (peers, peer_changes, peers_failed) = watch_peers(&client);
        KubePeerSource {
            client,
            nodes,
            wormholes,
            peers,
            peers_failed,
            external_cidrs: Vec::new(),
            changes: Box::pin(futures::stream::select(
                futures::stream::select(node_changes, wh_changes),
                peer_changes,
            )),
            local: local.to_owned(),
            local_key,
            cluster_cidrs,
            debounce: Duration::from_millis(25),
            last: None,
            failed: false,
            state: None,
            saved: None,
            grace: Duration::from_secs(3),
            started: tokio::time::Instant::now(),
            held: None,
            warned: false,
            outage: false,
            choice: Choice::default(),
            annotations: tokio::sync::watch::Sender::new(None),
        }
    }

    /// This node's annotations in `wormhole.dev/` (its per-node settings, see
    /// [`LocalSettings`](crate::LocalSettings)), from the Node watch the mesh uses (no request
    /// of its own): `None` until the Nodes were listed, then updated as the source runs (it is
    /// polled by whoever takes its snapshots). Empty if the Node has none, or is missing.
    pub fn node_annotations(&self) -> tokio::sync::watch::Receiver<Option<Annotations>> {
        self.annotations.subscribe()
    }

    /// Passes this node's annotations on, once the Nodes were listed, if they changed.
    fn pass_annotations(&self) {
        use futures::FutureExt as _;
        let listed = self
            .nodes
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok());
        if !listed {
            return;
        }
        let node = self.nodes.get(&reflector::ObjectRef::new(&self.local));
        let current = node
            .and_then(|n| n.metadata.annotations.clone())
            .unwrap_or_default();
        self.annotations.send_if_modified(|known| {
            let changed = known.as_ref() != Some(&current);
            if changed {
                *known = Some(current);
            }
            changed
        });
    }

    /// The ranges WormholePeers' allowed IPs must lie in (`--external-cidr`); without any, every
    /// WormholePeer is refused (reason `no_external_cidrs`).
    pub fn with_external_cidrs(mut self, cidrs: Vec<IpNet>) -> Self {
        self.external_cidrs = cidrs;
        self
    }

    /// How long to gather changes before building a snapshot (default 25 ms).
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Saves every snapshot yielded in `state`, and starts from the one saved there when the API
    /// server fails or has not answered within the grace time ([`Self::with_grace`]).
    pub fn with_state(mut self, state: StateStore) -> Self {
        self.saved = state.saved().snapshot(&self.cluster_cidrs);
        self.state = Some(state);
        self
    }

    /// How long to wait for the API server at start before using the saved snapshot (default
    /// 3 s; a failing watch uses it at once).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Yields the saved snapshot (once), saying why.
    fn use_saved(&mut self, why: &str) -> Option<Snapshot> {
        let mut saved = self.saved.take()?;
        saved.external_cidrs = self.external_cidrs.clone();
        let path = self.state.as_ref().map(|s| s.path().display().to_string());
        tracing::warn!(nodes = saved.nodes.len(), path = ?path,
            "{why}: applying the mesh saved at the last change until it answers");
        self.last = Some(saved.clone());
        Some(saved)
    }

    /// A watch failed (kube retries with backoff): before the first listing the saved
    /// snapshot is yielded (the error next); otherwise the error is reported once per outage,
    /// and the last mesh stays.
    fn on_error(
        &mut self,
        e: watcher::Error,
    ) -> Option<Result<wormhole_core::Snapshot, wormhole_core::Error>> {
        self.outage = true;
        if self.warned {
            tracing::debug!(error = %ErrorChain(&e), "Kubernetes watch failed again; retrying");
        } else {
            self.warned = true;
            tracing::warn!(error = %ErrorChain(&e), "Kubernetes watch failed; retrying every 0.25-2 s (further failures are logged at debug level)");
        }
        if !self.listed() {
            let why = format!("the Kubernetes API server fails ({})", ErrorChain(&e));
            if let Some(saved) = self.use_saved(&why) {
                self.held = Some(e);
                return Some(Ok(saved));
            }
        }
        if !self.failed {
            self.failed = true;
            return Some(Err(wormhole_core::Error::Source(Box::new(e))));
        }
        None
    }

    /// Saves `snapshot` in the background (the pass does not wait for the disk).
    fn persist(&self, snapshot: &Snapshot) {
        let Some(state) = self.state.clone() else {
            return;
        };
        // One copy of the nodes, moved into the state (a snapshot clone would be two).
        let nodes = crate::state::saved_nodes(snapshot);
        let external = crate::state::saved_external(snapshot);
        tokio::spawn(async move {
            let save = move |s: &mut crate::state::SavedState| {
                s.set_nodes(nodes);
                s.external = external;
            };
            if let Err(e) = state.save(save).await {
                tracing::warn!(error = %ErrorChain(&e), "cannot save the mesh for restarts without the API server");
            }
        });
    }
}

impl KubePeerSource {
    /// Both reflectors have completed their first list.
    fn listed(&self) -> bool {
        use futures::FutureExt as _;
        let nodes = self
            .nodes
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok());
        let ready = |store: &Store<_>| {
            store
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        };
        nodes
            && ready(&self.wormholes)
            && (self
                .peers
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
                || self.peers_failed.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The WormholePeer reflector. Its failures are logged here (the first at warn, the next at
/// debug until it lists again) and do not count as an API outage: a cluster without the
/// WormholePeer CRD (an agent upgraded before `deploy/crd.yaml`) keeps its mesh of nodes, and the
/// watch keeps retrying, so the peers appear once the CRD is applied.
fn watch_peers(
    client: &Client,
) -> (
    Store<WormholePeer>,
    Changes,
    Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let (store, writer) = reflector::store();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = failed.clone();
    let listed = store.clone();
    let changes = watcher(
        Api::<WormholePeer>::all(client.clone()),
        watcher::Config::default(),
    )
    .backoff(Retry::new())
    .modify(slim_peer)
    .reflect(writer)
    .filter_map(move |e| {
        futures::future::ready(match e {
            Ok(watcher::Event::InitDone) | Ok(watcher::Event::Apply(_)) | Ok(watcher::Event::Delete(_)) => {
                if flag.swap(false, Ordering::Relaxed) {
                    tracing::info!("the WormholePeer watch works again");
                }
                Some(Ok(()))
            }
            Ok(_) => Some(Ok(())),
            Err(e) => {
                if flag.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %ErrorChain(&e), "WormholePeer watch failed again; retrying");
                    None
                } else {
                    tracing::warn!(error = %ErrorChain(&e), "cannot watch WormholePeers (is the WormholePeer CRD of deploy/crd.yaml applied?): going on without external peers, retrying every 0.25-2 s");
                    // A first failure before the first listing wakes the source: the mesh is
                    // yielded without the peers. Later (an outage), the node watches report it.
                    use futures::FutureExt as _;
                    let ready = listed
                        .wait_until_ready()
                        .now_or_never()
                        .is_some_and(|r| r.is_ok());
                    (!ready).then_some(Ok(()))
                }
            }
        })
    });
    (store, Box::pin(changes), failed)
}

/// How often the API server is asked whether it answers again after a watch failure: this,
/// plus as much again at random (so a large cluster's agents do not ask at once).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The API server answers again: one object of each watched kind can be listed (what the
/// watches need, permissions included), each within [`API_TIMEOUT`].
async fn api_answers(client: Client) -> bool {
    let one = kube::api::ListParams::default().limit(1);
    let nodes = Api::<Node>::all(client.clone());
    let wormholes = Api::<WormholeNode>::all(client);
    let both = async {
        nodes.list_metadata(&one).await.is_ok() && wormholes.list_metadata(&one).await.is_ok()
    };
    tokio::time::timeout(API_TIMEOUT, both)
        .await
        .unwrap_or(false)
}

/// Waits for the API server to answer again, asking every 1-2 [`PROBE_EVERY`]s.
async fn until_api_answers(client: Client) {
    use std::hash::BuildHasher as _;
    let jitter = std::collections::hash_map::RandomState::new();
    for tries in 0u64.. {
        let extra = jitter.hash_one(tries) % PROBE_EVERY.as_millis() as u64;
        tokio::time::sleep(PROBE_EVERY + Duration::from_millis(extra)).await;
        if api_answers(client.clone()).await {
            return;
        }
    }
}

#[async_trait]
impl PeerSource for KubePeerSource {
    async fn next(&mut self) -> Result<wormhole_core::Snapshot, wormhole_core::Error> {
        if let Some(e) = self.held.take() {
            self.failed = true;
            return Err(wormhole_core::Error::Source(Box::new(e)));
        }
        loop {
            let deadline = self.started + self.grace;
            let grace = self.saved.is_some();
            // A watch failed after the first listing: a resumed watch says nothing until
            // something changes, so ask the server whether it is back.
            let probe = self.outage && self.listed();
            // A new majority for a node behind NAT held back: vote again when it may apply.
            let held = self.choice.held_until();
            let change = tokio::select! {
                change = self.changes.next() => Some(change),
                () = sleep_until_some(held), if held.is_some() => Some(Some(Ok(()))),
                () = tokio::time::sleep_until(deadline), if grace => None,
                () = until_api_answers(self.client.clone()), if probe => {
                    tracing::debug!("the Kubernetes API server answers again");
                    Some(Some(Ok(())))
                }
            };
            let change = match change {
                Some(change) => change,
                None => {
                    let why = format!(
                        "the Kubernetes API server has not answered within {:?}",
                        self.grace
                    );
                    if let Some(saved) = self.use_saved(&why) {
                        return Ok(saved);
                    }
                    continue;
                }
            };
            match change {
                None => {
                    return Err(Error::Invalid("the Kubernetes watch streams ended".into()).into());
                }
                Some(Err(e)) => {
                    if let Some(result) = self.on_error(e) {
                        return result;
                    }
                    continue;
                }
                Some(Ok(())) => self.outage = false,
            }
            // Gather what follows closely, then look once.
            let until = tokio::time::sleep(self.debounce);
            tokio::pin!(until);
            let mut failed = None;
            loop {
                tokio::select! {
                    () = &mut until => break,
                    more = self.changes.next() => match more {
                        None => break,
                        // Not swallowed: a failing first list must reach the saved snapshot.
                        Some(Err(e)) => {
                            failed = Some(e);
                            break;
                        }
                        Some(Ok(())) => {}
                    },
                }
            }
            // Before the snapshot: a change of annotations alone changes no snapshot.
            self.pass_annotations();
            if let Some(e) = failed
                && let Some(result) = self.on_error(e)
            {
                return result;
            }
            // Until both kinds were listed once, keep driving the watches (only polling them
            // makes progress: waiting on the stores here would never end).
            if !self.listed() {
                continue;
            }
            // A live picture: the saved one is not needed any more.
            self.saved = None;
            let snapshot = snapshot(
                &self.nodes.state(),
                &self.wormholes.state(),
                &self.local,
                &self.local_key,
                &self.cluster_cidrs,
                &mut self.choice,
                tokio::time::Instant::now(),
            )
            .map(|mut s| {
                s.external = external_entries(&self.peers.state());
                s.external_cidrs = self.external_cidrs.clone();
                s
            });
            match snapshot {
                Err(e) if !self.failed => {
                    self.failed = true;
                    return Err(e.into());
                }
                Err(e) => tracing::debug!(error = %ErrorChain(&e), "still no usable snapshot"),
                Ok(snapshot) => {
                    // Equal pictures are skipped here only to spare the reconciler a wake-up (it
                    // drops them too); after an error the picture is yielded, change or no
                    // change: the reconciler clears the error with it.
                    if self.warned {
                        self.warned = false;
                        tracing::info!("Kubernetes watches are back");
                    }
                    if self.failed || self.last.as_ref() != Some(&snapshot) {
                        self.failed = false;
                        if self.last.as_ref() != Some(&snapshot) {
                            self.persist(&snapshot);
                        }
                        self.last = Some(snapshot.clone());
                        return Ok(snapshot);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use wormhole_core::PrivateKey;

    use crate::crd::WormholeNodeSpec;

    fn cidrs(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn pod_subnets_reads_networking_pod_subnet_as_yaml() {
        // kubeadm's own layout, dual-stack.
        let kubeadm = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\n\
                       networking:\n  dnsDomain: cluster.local\n  \
                       podSubnet: 10.244.0.0/16,fd00:10:244::/56\n  serviceSubnet: 10.96.0.0/12\n";
        assert_eq!(
            pod_subnets(kubeadm).unwrap(),
            cidrs(&["10.244.0.0/16", "fd00:10:244::/56"])
        );
        // Quoted (either quote), spaces after the comma, comments anywhere.
        let quoted = "# written by hand\nnetworking:   # the pod network\n  \
                      podSubnet: \"10.1.0.0/16, fd01::/48\" # dual-stack\n";
        assert_eq!(
            pod_subnets(quoted).unwrap(),
            cidrs(&["10.1.0.0/16", "fd01::/48"])
        );
        assert_eq!(
            pod_subnets("networking: {podSubnet: '10.2.0.0/16'}").unwrap(),
            cidrs(&["10.2.0.0/16"])
        );
        // `networking` after other keys, its keys in another order, a flow mapping beside it.
        let reordered = "etcd:\n  local: {dataDir: /var/lib/etcd}\nnetworking:\n  \
                         serviceSubnet: 10.96.0.0/12\n  podSubnet: 10.3.0.0/16\n  \
                         dnsDomain: cluster.local\nclusterName: kubernetes\n";
        assert_eq!(pod_subnets(reordered).unwrap(), cidrs(&["10.3.0.0/16"]));
    }

    #[test]
    fn pod_subnets_takes_only_networking_pod_subnet() {
        // A podSubnet in another mapping is not the cluster's (the line scanner took it).
        let elsewhere = "apiServer:\n  extraArgs:\n    podSubnet: 10.9.0.0/16\n\
                         networking:\n  serviceSubnet: 10.96.0.0/12\n";
        assert_eq!(pod_subnets(elsewhere).unwrap(), []);
        let before = "controllerManager:\n  podSubnet: 10.9.0.0/16\nnetworking:\n  \
                      podSubnet: 10.4.0.0/16\n";
        assert_eq!(pod_subnets(before).unwrap(), cidrs(&["10.4.0.0/16"]));
        // Missing: no field, no networking, an empty document, an empty value.
        for none in [
            "networking:\n  dnsDomain: cluster.local\n",
            "apiVersion: kubeadm.k8s.io/v1beta3\n",
            "",
            "# nothing\n",
            "networking:\n  podSubnet: \"\"\n",
        ] {
            assert_eq!(pod_subnets(none).unwrap(), [], "{none:?}");
        }
    }

    #[test]
    fn pod_subnets_says_what_is_wrong() {
        let err = pod_subnets("networking:\n  podSubnet: 10.0.0.0/16,10.300.0.0/16\n").unwrap_err();
        assert!(
            matches!(&err, Error::KubeadmConfig(KubeadmConfigError::PodSubnet { value, .. }) if value == "10.300.0.0/16"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "kubeadm-config ClusterConfiguration: networking.podSubnet \"10.300.0.0/16\" is not a CIDR"
        );
        for bad in ["networking: [", "networking:\n  podSubnet: [10.0.0.0/16]\n"] {
            let err = pod_subnets(bad).unwrap_err();
            assert!(
                matches!(err, Error::KubeadmConfig(KubeadmConfigError::Yaml(_))),
                "{bad:?}: {err:?}"
            );
        }
    }

    fn node(name: &str, cidrs: &[&str]) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn wormhole(name: &str, owner_uid: &str, key: &PublicKey) -> Arc<WormholeNode> {
        let mut wh = WormholeNode::new(
            name,
            WormholeNodeSpec {
                public_key: key.to_base64(),
                endpoint: Some("192.168.77.9:51820".into()),
                listen_port: 51820,
                persistent_keepalive: None,
            },
        );
        wh.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: name.into(),
            uid: owner_uid.into(),
            ..Default::default()
        }]);
        Arc::new(wh)
    }

    /// `wh` with no endpoint and a keepalive (behind NAT), or reporting `seen` (peer, endpoint).
    fn behind_nat(wh: Arc<WormholeNode>, keepalive: Option<u16>) -> Arc<WormholeNode> {
        let mut wh = Arc::unwrap_or_clone(wh);
        wh.spec.endpoint = None;
        wh.spec.persistent_keepalive = keepalive;
        Arc::new(wh)
    }

    fn observing(wh: Arc<WormholeNode>, seen: &[(&str, &str)]) -> Arc<WormholeNode> {
        let mut wh = Arc::unwrap_or_clone(wh);
        wh.status = Some(WormholeNodeStatus {
            observed_endpoints: seen
                .iter()
                .map(|(peer, endpoint)| crate::crd::ObservedEndpoint {
                    peer: peer.to_string(),
                    endpoint: endpoint.to_string(),
                })
                .collect(),
            ..WormholeNodeStatus::default()
        });
        slim_wormhole(&mut wh);
        Arc::new(wh)
    }

    #[test]
    fn nodes_behind_nat_get_the_endpoint_most_observers_report() {
        let me = PrivateKey::generate().public_key();
        let k = |_: ()| PrivateKey::generate().public_key();
        let names = ["local", "a", "b", "c", "nat1", "nat2", "nat3", "orphan"];
        let nodes: Vec<Arc<Node>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| node(n, &[&format!("10.99.{}.0/24", i + 1)]))
            .collect();
        let nat1 = "203.0.113.1:51820";
        let liar = "198.51.100.66:51820";
        let whs = vec![
            // a and b see nat1 at the same address, c lies: two observers win over one.
            observing(
                wormhole("a", "uid-a", &k(())),
                &[("nat1", nat1), ("nat2", "203.0.113.2:4000")],
            ),
            observing(
                wormhole("b", "uid-b", &k(())),
                &[("nat1", nat1), ("c", liar)],
            ),
            observing(
                wormhole("c", "uid-c", &k(())),
                &[("nat1", liar), ("nat3", "bad")],
            ),
            // A node's report about itself does not count; nat3's only report is unusable.
            behind_nat(
                observing(
                    wormhole("nat1", "uid-nat1", &k(())),
                    &[("nat1", liar), ("nat2", "203.0.113.2:4000")],
                ),
                Some(25),
            ),
            behind_nat(wormhole("nat2", "uid-nat2", &k(())), Some(25)),
            behind_nat(wormhole("nat3", "uid-nat3", &k(())), None),
            // Not owned by its Node: not an observer.
            observing(
                wormhole("orphan", "uid-someone-else", &k(())),
                &[("nat1", liar), ("nat1", liar)],
            ),
        ];
        let snap = snapshot(
            &nodes,
            &whs,
            "local",
            &me,
            &cidrs(&["10.99.0.0/16"]),
            &mut Choice::default(),
            tokio::time::Instant::now(),
        )
        .unwrap();
        let observed: Vec<(&str, &str)> = snap
            .observed_endpoints
            .iter()
            .map(|(n, e)| (n.as_str(), e.as_str()))
            .collect();
        // c has an endpoint of its own: a report about it is not used.
        assert_eq!(observed, [("nat1", nat1), ("nat2", "203.0.113.2:4000")]);
        let keepalive = |name: &str| {
            snap.nodes
                .iter()
                .find(|n| n.name == name)
                .unwrap()
                .persistent_keepalive
        };
        assert_eq!(keepalive("nat1"), Some(25));
        assert_eq!(keepalive("a"), None);

        // A tie (one observer each) decides nothing, whatever the order of the reports (it used
        // to go to the lowest address: one liar beat one honest observer).
        let whs2 = vec![
            observing(wormhole("a", "uid-a", &k(())), &[("nat1", "203.0.113.9:1")]),
            observing(wormhole("b", "uid-b", &k(())), &[("nat1", "203.0.113.1:1")]),
            behind_nat(wormhole("nat1", "uid-nat1", &k(())), None),
        ];
        for list in [whs2.clone(), whs2.into_iter().rev().collect()] {
            let snap = snapshot(
                &nodes,
                &list,
                "local",
                &me,
                &cidrs(&["10.99.0.0/16"]),
                &mut Choice::default(),
                tokio::time::Instant::now(),
            )
            .unwrap();
            assert!(snap.observed_endpoints.is_empty(), "{snap:?}");
        }
    }

    /// Issue 20: one node listing a peer behind NAT six times used to outvote five honest
    /// observers (every list entry counted).
    #[test]
    fn an_observer_votes_once_per_peer() {
        let me = PrivateKey::generate().public_key();
        let k = || PrivateKey::generate().public_key();
        let names = ["local", "a", "b", "c", "d", "e", "liar", "nat"];
        let nodes: Vec<Arc<Node>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| node(n, &[&format!("10.99.{}.0/24", i + 1)]))
            .collect();
        let honest = "203.0.113.1:51820";
        let mut whs: Vec<Arc<WormholeNode>> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| observing(wormhole(n, &format!("uid-{n}"), &k()), &[("nat", honest)]))
            .collect();
        whs.push(observing(
            wormhole("liar", "uid-liar", &k()),
            &[("nat", "192.0.2.1:1"); 6],
        ));
        whs.push(behind_nat(wormhole("nat", "uid-nat", &k()), Some(25)));
        let snap = snapshot(
            &nodes,
            &whs,
            "local",
            &me,
            &cidrs(&["10.99.0.0/16"]),
            &mut Choice::default(),
            tokio::time::Instant::now(),
        )
        .unwrap();
        assert_eq!(snap.observed_endpoints["nat"], honest);
    }

    /// A new majority for a node behind NAT is held back until the last move is `hold` old, and
    /// then applied without any other change to wake the source.
    #[tokio::test]
    async fn a_held_back_majority_applies_when_its_time_comes() {
        use crate::testing::FakeApi;
        use serde_json::json;
        let api = FakeApi::start().await;
        let me = PrivateKey::generate().public_key();
        api.put_node("local", &["10.99.1.0/24"], "192.168.77.1");
        for (i, name) in ["a", "b", "nat"].iter().enumerate() {
            api.put_node(name, &[&format!("10.99.{}.0/24", i + 2)], "192.168.77.9");
            let mut spec = json!({"publicKey": PrivateKey::generate().public_key().to_base64(),
                                  "listenPort": 51820, "persistentKeepalive": 25});
            if *name != "nat" {
                spec["endpoint"] = json!(format!("192.168.77.{}:51820", i + 2));
            }
            api.put_wormhole(name, spec);
        }
        let report = |endpoint: &str| {
            for observer in ["a", "b"] {
                api.put_wormhole_status(
                    observer,
                    json!({"observedEndpoints": [{"peer": "nat", "endpoint": endpoint}]}),
                );
            }
        };
        report("203.0.113.1:1000");
        let hold = Duration::from_millis(1500);
        let mut source = KubePeerSource::new(api.client(), "local", me, cidrs(&["10.99.0.0/16"]));
        source.choice = Choice::with_hold(hold);
        let next = async |source: &mut KubePeerSource| {
            tokio::time::timeout(Duration::from_secs(10), source.next())
                .await
                .expect("a snapshot within 10 s")
                .unwrap()
        };
        let first = next(&mut source).await;
        assert_eq!(first.observed_endpoints["nat"], "203.0.113.1:1000");
        let moved = std::time::Instant::now();
        report("203.0.113.2:2000");
        let second = next(&mut source).await;
        assert_eq!(second.observed_endpoints["nat"], "203.0.113.2:2000");
        let waited = moved.elapsed();
        assert!(waited >= hold / 2, "moved after {waited:?}, hold {hold:?}");
    }

    /// Per-node settings: only this node's `wormhole.dev/` annotations are kept (memory at
    /// 15,000 Nodes) and passed on, also when they change nothing in the mesh; another Node's
    /// are never read.
    #[tokio::test]
    async fn only_this_nodes_own_annotations_are_kept_and_passed_on() {
        use crate::testing::FakeApi;
        let api = FakeApi::start().await;
        let me = PrivateKey::generate().public_key();
        api.put_node("local", &["10.99.1.0/24"], "192.168.77.1");
        api.put_node("other", &["10.99.2.0/24"], "192.168.77.2");
        api.annotate_node("local", crate::ENDPOINT_ANNOTATION, Some("none"));
        api.annotate_node("local", "node.alpha.kubernetes.io/ttl", Some("0"));
        api.annotate_node("other", crate::ENDPOINT_ANNOTATION, Some("192.0.2.9:1"));
        let mut source = KubePeerSource::new(api.client(), "local", me, cidrs(&["10.99.0.0/16"]));
        let mut annotations = source.node_annotations();
        assert_eq!(
            *annotations.borrow(),
            None,
            "not known before the Nodes are listed"
        );
        let driven = tokio::spawn(async move {
            let first = source.next().await;
            (source, first)
        });
        let wait = async |rx: &mut tokio::sync::watch::Receiver<Option<Annotations>>| {
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .expect("annotations within 10 s")
                .unwrap();
            rx.borrow_and_update().clone().unwrap()
        };
        let ours = |pairs: &[(&str, &str)]| -> Annotations {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            wait(&mut annotations).await,
            ours(&[(crate::ENDPOINT_ANNOTATION, "none")])
        );
        let (mut source, first) = driven.await.unwrap();
        first.unwrap();
        let stored = |source: &KubePeerSource, name: &str| {
            source
                .nodes
                .get(&reflector::ObjectRef::new(name))
                .unwrap()
                .metadata
                .annotations
                .clone()
        };
        assert_eq!(
            stored(&source, "other"),
            None,
            "another Node's are not kept"
        );
        assert_eq!(
            stored(&source, "local"),
            Some(ours(&[(crate::ENDPOINT_ANNOTATION, "none")]))
        );
        // A change of this node's annotations alone: passed on, though the mesh is the same.
        api.annotate_node("local", crate::PERSISTENT_KEEPALIVE_ANNOTATION, Some("25"));
        let next = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), source.next()).await;
        });
        assert_eq!(
            wait(&mut annotations).await,
            ours(&[
                (crate::ENDPOINT_ANNOTATION, "none"),
                (crate::PERSISTENT_KEEPALIVE_ANNOTATION, "25")
            ])
        );
        // Another node's: nothing here.
        api.annotate_node("other", crate::PERSISTENT_KEEPALIVE_ANNOTATION, Some("5"));
        api.annotate_node("local", crate::ENDPOINT_ANNOTATION, None);
        assert_eq!(
            wait(&mut annotations).await,
            ours(&[(crate::PERSISTENT_KEEPALIVE_ANNOTATION, "25")])
        );
        next.abort();
    }

    #[test]
    fn our_own_published_keepalive_applies_to_the_local_entry() {
        let key = PrivateKey::generate().public_key();
        let nodes = vec![node("local", &["10.99.1.0/24"])];
        let whs = vec![behind_nat(wormhole("local", "uid-local", &key), Some(20))];
        let snap = snapshot(
            &nodes,
            &whs,
            "local",
            &key,
            &cidrs(&["10.99.0.0/16"]),
            &mut Choice::default(),
            tokio::time::Instant::now(),
        )
        .unwrap();
        assert_eq!(snap.nodes[0].persistent_keepalive, Some(20));
        assert!(snap.observed_endpoints.is_empty());
    }

    #[test]
    fn allowed_ips_come_from_nodes_only_and_unready_nodes_are_left_out() {
        let me = PrivateKey::generate().public_key();
        let k = |_: ()| PrivateKey::generate().public_key();
        let nodes = vec![
            node("local", &["10.99.1.0/24"]),
            node("a", &["10.99.2.0/24", "fd99:0:0:2::/64"]),
            node("no-cidrs", &[]),
            node("no-wormhole", &["10.99.4.0/24"]),
            node("stale-owner", &["10.99.5.0/24"]),
        ];
        let whs = vec![
            wormhole("a", "uid-a", &k(())),
            wormhole("no-cidrs", "uid-no-cidrs", &k(())),
            wormhole("stale-owner", "uid-of-a-deleted-node", &k(())),
            wormhole("orphan", "uid-orphan", &k(())),
        ];
        let s = snapshot(
            &nodes,
            &whs,
            "local",
            &me,
            &[],
            &mut Choice::default(),
            tokio::time::Instant::now(),
        )
        .unwrap();
        let names: Vec<_> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "local"]);
        assert_eq!(s.nodes[0].pod_cidrs, ["10.99.2.0/24", "fd99:0:0:2::/64"]);
        assert_eq!(s.nodes[1].public_key, me.to_base64());
        assert_eq!(s.nodes[0].origin, "WormholeNode/a");
    }

    /// `wormhole(..)` created at `at` with this uid.
    fn created(wh: Arc<WormholeNode>, at: &str, uid: &str) -> Arc<WormholeNode> {
        let mut wh = (*wh).clone();
        wh.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at.parse().unwrap()),
        );
        wh.metadata.uid = Some(uid.into());
        Arc::new(wh)
    }

    #[test]
    fn the_older_wormhole_node_keeps_a_key_that_a_newer_one_copies() {
        let me = PrivateKey::generate().public_key();
        let victim = PrivateKey::generate().public_key();
        let cluster: Vec<IpNet> = vec!["10.99.0.0/16".parse().unwrap()];
        let nodes = vec![
            node("local", &["10.99.1.0/24"]),
            node("alpha", &["10.99.2.0/24"]),
            node("zeta", &["10.99.3.0/24"]),
            node("beta", &["10.99.4.0/24"]),
        ];
        // zeta published the key first; alpha (sorting first) copied it a day later; beta copied
        // it in the same second as zeta, but with a larger uid.
        let whs = vec![
            created(
                wormhole("alpha", "uid-alpha", &victim),
                "2026-01-02T00:00:00Z",
                "a",
            ),
            created(
                wormhole("zeta", "uid-zeta", &victim),
                "2026-01-01T00:00:00Z",
                "m",
            ),
            created(
                wormhole("beta", "uid-beta", &victim),
                "2026-01-01T00:00:00Z",
                "z",
            ),
        ];
        let s = snapshot(
            &nodes,
            &whs,
            "local",
            &me,
            &cluster,
            &mut Choice::default(),
            tokio::time::Instant::now(),
        )
        .unwrap();
        // A restarting agent: no history.
        let mesh = wormhole_core::Mesh::build("local", &me, &cluster, s, None).unwrap();
        let peers: Vec<_> = mesh.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["zeta"]);
        let mut rejected: Vec<_> = mesh
            .rejected
            .iter()
            .map(|r| (r.name.as_str(), r.reason.to_string()))
            .collect();
        rejected.sort();
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        for (name, reason) in &rejected {
            assert!(
                reason.contains("already used by node zeta"),
                "{name}: {reason}"
            );
        }
    }

    #[test]
    fn watch_retries_grow_to_two_seconds_and_progress_between_failures_does_not_reset_them() {
        use kube::runtime::utils::Backoff as _;
        let mut retry = Retry::new();
        let mut delays = Vec::new();
        for _ in 0..6 {
            delays.push(retry.next().unwrap());
            // A watcher reports progress (Init) before each list attempt.
            retry.reset();
        }
        let base: Vec<u128> = delays
            .iter()
            .map(|d| d.as_millis() - d.as_millis() % 250)
            .collect();
        assert_eq!(base, [250, 500, 1000, 2000, 2000, 2000], "{delays:?}");
        assert!(delays.iter().all(|d| *d < Duration::from_millis(2250)));
    }

    #[test]
    fn this_node_without_cidrs_or_missing_is_an_error() {
        let me = PrivateKey::generate().public_key();
        let err = snapshot(
            &[node("local", &[])],
            &[],
            "local",
            &me,
            &[],
            &mut Choice::default(),
            tokio::time::Instant::now(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::NoPodCidrs { node } if node == "local"),
            "{err:?}"
        );
        assert!(err.to_string().contains("--allocate-node-cidrs"), "{err}");
        let err = snapshot(
            &[node("x", &["10.99.1.0/24"])],
            &[],
            "local",
            &me,
            &[],
            &mut Choice::default(),
            tokio::time::Instant::now(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::NodeNotFound { node } if node == "local"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "Node local not found (check --node-name)");
    }
}
