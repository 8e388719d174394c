//! The Kubernetes [`PeerSource`]: reflectors over Nodes and WormholeNodes.
//!
//! The desired mesh is every Node that has a WormholeNode (owned by that very Node). A peer's
//! **allowed IPs come only from `Node.spec.podCIDRs`**: a WormholeNode has no field for CIDRs,
//! so an agent can publish its key and endpoint but can never claim addresses. This node's pod
//! CIDRs come from its own Node. A Node without pod CIDRs is "not ready" and left out (not an
//! error), except this node, which cannot be part of the mesh without them.
//!
//! Watches use kube's default backoff; while the API server is unreachable the stores keep their
//! contents, so no peer is removed during an outage. Changes are debounced and a snapshot is only
//! yielded when it differs from the last one (Node status heartbeats change nothing).

use std::collections::HashMap;
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
use wormhole_core::mesh::{NodeEntry, Snapshot};
use wormhole_core::{PeerSource, PublicKey};

use crate::Error;
use crate::crd::WormholeNode;

/// A Node's pod CIDRs (`spec.podCIDRs`, or the older single `spec.podCIDR`).
pub fn pod_cidrs(node: &Node) -> Vec<String> {
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
fn owned_by(wh: &WormholeNode, node: &Node) -> bool {
    let uid = node.metadata.uid.as_deref();
    wh.owner_references()
        .iter()
        .any(|o| o.kind == "Node" && Some(o.uid.as_str()) == uid)
}

/// When a WormholeNode made its claim: its creation time, then its uid (creation times have one
/// second resolution), both set by the API server. Objects without them (never the case on a
/// real server) come last.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
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

fn claim(wh: &WormholeNode) -> Claim {
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
pub fn snapshot(
    nodes: &[Arc<Node>],
    wormholes: &[Arc<WormholeNode>],
    local: &str,
    local_key: &PublicKey,
    cluster_cidrs: &[IpNet],
) -> Result<Snapshot, Error> {
    let published: HashMap<String, &WormholeNode> =
        wormholes.iter().map(|w| (w.name_any(), &**w)).collect();
    // Each entry with its claim: when and as what its WormholeNode was created.
    let mut entries: Vec<(Claim, NodeEntry)> = Vec::with_capacity(nodes.len());
    let mut local_seen = false;
    for node in nodes {
        let name = node.name_any();
        let cidrs = pod_cidrs(node);
        if name == local {
            if cidrs.is_empty() {
                return Err(Error::Invalid(format!(
                    "this node ({local}) has no spec.podCIDRs yet: is the controller manager allocating \
                     node CIDRs (--allocate-node-cidrs, kubeadm --pod-network-cidr)?"
                )));
            }
            local_seen = true;
            // The key as published (other nodes use it), else ours (not yet published).
            let published = published.get(&name).filter(|wh| owned_by(wh, node));
            let published_key = published.map(|wh| wh.spec.public_key.clone());
            entries.push((
                published.map_or_else(Claim::default, |wh| claim(wh)),
                NodeEntry {
                    name,
                    public_key: published_key.unwrap_or_else(|| local_key.to_base64()),
                    endpoint: None,
                    pod_cidrs: cidrs,
                    persistent_keepalive: None,
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
        entries.push((
            claim(wh),
            NodeEntry {
                public_key: wh.spec.public_key.clone(),
                endpoint: wh.spec.endpoint.clone(),
                pod_cidrs: cidrs,
                persistent_keepalive: None,
                origin: format!("WormholeNode/{name}"),
                name,
            },
        ));
    }
    if !local_seen {
        return Err(Error::Invalid(format!(
            "Node {local} not found (check --node-name)"
        )));
    }
    // Oldest claim first, so that validation lets the earlier claim win a conflict (a node that
    // copies another's public key loses, also on an agent starting without history). A stable
    // order too: equal pictures compare equal, validation reuses unchanged entries, and a new
    // node comes last without moving the others.
    entries.sort_by(|(a, ea), (b, eb)| (a, &ea.name).cmp(&(b, &eb.name)));
    Ok(Snapshot {
        cluster_cidrs: cluster_cidrs.to_vec(),
        nodes: entries.into_iter().map(|(_, e)| e).collect(),
        rejected: Vec::new(),
        oldest_first: true,
    })
}

/// The pod network CIDRs from kubeadm's ClusterConfiguration (`networking.podSubnet`, possibly
/// two, comma-separated); empty when there is no kubeadm-config ConfigMap.
pub async fn detect_cluster_cidrs(client: Client) -> Result<Vec<IpNet>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let Some(cm) = api
        .get_opt("kubeadm-config")
        .await
        .map_err(Error::api("get kube-system/kubeadm-config"))?
    else {
        return Ok(Vec::new());
    };
    let config = cm
        .data
        .as_ref()
        .and_then(|d| d.get("ClusterConfiguration"))
        .cloned()
        .unwrap_or_default();
    let Some(line) = config
        .lines()
        .find(|l| l.trim_start().starts_with("podSubnet:"))
    else {
        return Ok(Vec::new());
    };
    let value = line
        .trim_start()
        .trim_start_matches("podSubnet:")
        .trim()
        .trim_matches(['"', '\'']);
    value
        .split(',')
        .map(|c| {
            c.trim().parse::<IpNet>().map_err(|_| {
                Error::Invalid(format!("kubeadm-config podSubnet {c:?} is not a CIDR"))
            })
        })
        .collect()
}

/// Node objects hold much we do not need (status, images, managed fields): keep what the mesh
/// uses, so 5,000 Nodes stay small in memory.
fn slim_node(node: &mut Node) {
    node.status = None;
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.metadata.labels = None;
}

fn slim_wormhole(wh: &mut WormholeNode) {
    wh.metadata.managed_fields = None;
    wh.metadata.annotations = None;
    wh.status = None;
}

type Changes = Pin<Box<dyn Stream<Item = Result<(), watcher::Error>> + Send>>;

/// A [`PeerSource`] over the Kubernetes API.
pub struct KubePeerSource {
    nodes: Store<Node>,
    wormholes: Store<WormholeNode>,
    changes: Changes,
    local: String,
    local_key: PublicKey,
    cluster_cidrs: Vec<IpNet>,
    debounce: Duration,
    last: Option<Snapshot>,
    failed: bool,
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
            .default_backoff()
            .modify(slim_node)
            .reflect(node_writer)
            .map(|e| e.map(drop));
        let wh_changes = watcher(Api::<WormholeNode>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(slim_wormhole)
            .reflect(wh_writer)
            .map(|e| e.map(drop));
        KubePeerSource {
            nodes,
            wormholes,
            changes: Box::pin(futures::stream::select(node_changes, wh_changes)),
            local: local.to_owned(),
            local_key,
            cluster_cidrs,
            debounce: Duration::from_millis(25),
            last: None,
            failed: false,
        }
    }

    /// How long to gather changes before building a snapshot (default 25 ms).
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
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
        nodes
            && self
                .wormholes
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
    }
}

#[async_trait]
impl PeerSource for KubePeerSource {
    async fn next(&mut self) -> Result<wormhole_core::Snapshot, wormhole_core::Error> {
        loop {
            match self.changes.next().await {
                None => {
                    return Err(Error::Invalid("the Kubernetes watch streams ended".into()).into());
                }
                Some(Err(e)) => {
                    // kube retries with backoff; report once per outage, keep the last mesh.
                    tracing::warn!(error = %ErrorChain(&e), "Kubernetes watch failed; retrying");
                    if !self.failed {
                        self.failed = true;
                        return Err(wormhole_core::Error::Source(Box::new(e)));
                    }
                    continue;
                }
                Some(Ok(())) => {}
            }
            // Gather what follows closely, then look once.
            let until = tokio::time::sleep(self.debounce);
            tokio::pin!(until);
            loop {
                tokio::select! {
                    () = &mut until => break,
                    more = self.changes.next() => if more.is_none() { break },
                }
            }
            // Until both kinds were listed once, keep driving the watches (only polling them
            // makes progress: waiting on the stores here would never end).
            if !self.listed() {
                continue;
            }
            let snapshot = snapshot(
                &self.nodes.state(),
                &self.wormholes.state(),
                &self.local,
                &self.local_key,
                &self.cluster_cidrs,
            );
            match snapshot {
                Err(e) if !self.failed => {
                    self.failed = true;
                    return Err(e.into());
                }
                Err(e) => tracing::debug!(error = %ErrorChain(&e), "still no usable snapshot"),
                Ok(snapshot) => {
                    // After an error the same picture must be yielded again: it clears the error.
                    if self.failed || self.last.as_ref() != Some(&snapshot) {
                        self.failed = false;
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
        let s = snapshot(&nodes, &whs, "local", &me, &[]).unwrap();
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
        let s = snapshot(&nodes, &whs, "local", &me, &cluster).unwrap();
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
    fn this_node_without_cidrs_or_missing_is_an_error() {
        let me = PrivateKey::generate().public_key();
        let err = snapshot(&[node("local", &[])], &[], "local", &me, &[]).unwrap_err();
        assert!(err.to_string().contains("--allocate-node-cidrs"), "{err}");
        let err = snapshot(&[node("x", &["10.99.1.0/24"])], &[], "local", &me, &[]).unwrap_err();
        assert!(err.to_string().contains("check --node-name"), "{err}");
    }
}
