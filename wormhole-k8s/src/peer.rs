//! The `WormholePeer` custom resource: `wormhole.dev/v1alpha1`, cluster-scoped, one per machine
//! outside the cluster (a CI runner, a laptop, a database VM) that reaches pods over the mesh.
//!
//! **Created by admins, never by agents**: the agent's ClusterRole may only get, list and watch
//! WormholePeers (`deploy/rbac.yaml`). Every agent adds each one as a WireGuard peer whose
//! allowed IPs are `spec.allowedIPs`, after the same checks as a peers file's `[[external]]`
//! entry ([`wormhole_core::Mesh::build`]): inside the agent's `--external-cidr` ranges, outside
//! the cluster CIDRs, overlapping no other peer. A refused WormholePeer is left out on its own (the
//! others stay), listed in `wormhole status` and told as a `PeerRejected` Event about it.
//!
//! There is no status: every agent judges each WormholePeer the same way, and one object
//! written by every agent would be a hot spot that a compromised node could also falsify. An
//! agent writes only its own WormholeNode; refusals are Events and each node's status.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, CustomResource, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wormhole_core::{NodeEntry, PublicKey, Snapshot};

use crate::Error;
use crate::cluster::list_all;
use crate::crd::{MAX_ENDPOINT, MAX_PUBLIC_KEY, WormholeNode};

/// `maxItems` of `spec.allowedIPs`: each one is an allowed IP and a route on every node. A
/// machine needs one or two; 64 leaves room for a small site behind it.
pub const MAX_ALLOWED_IPS: usize = 64;
/// `maxLength` of one `spec.allowedIPs` entry: the longest CIDR text
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128`).
pub const MAX_CIDR: usize = 49;
/// The origin of a WormholePeer's entry (`WormholePeer/NAME`), in messages and rejections.
pub(crate) const ORIGIN_PREFIX: &str = "WormholePeer/";
/// The kind's plural, in API paths and RBAC rules.
pub const PEER_PLURAL: &str = "wormholepeers";

/// A machine outside the cluster that every node adds as a WireGuard peer.
// kube's `printcolumn(...)` repeats attribute names on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "wormhole.dev",
    version = "v1alpha1",
    kind = "WormholePeer",
    plural = "wormholepeers",
    shortname = "whp",
    printcolumn(
        name = "AllowedIPs",
        type_ = "string",
        json_path = ".spec.allowedIPs",
        description = "the addresses it may send from"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WormholePeerSpec {
    /// WireGuard public key of the machine, base64 (`wg pubkey`).
    #[schemars(length(max = MAX_PUBLIC_KEY))]
    pub public_key: String,
    /// The addresses it may send from and is reached at (CIDRs): inside an `--external-cidr`
    /// range of the agents, outside the cluster CIDRs.
    #[serde(rename = "allowedIPs")]
    #[schemars(length(min = 1, max = MAX_ALLOWED_IPS), inner(length(max = MAX_CIDR)))]
    pub allowed_ips: Vec<String>,
    /// `ip:port` or `[ipv6]:port` the nodes send the first handshake to; absent when the
    /// machine has no fixed address (it then reaches the nodes first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ENDPOINT))]
    pub endpoint: Option<String>,
    /// Persistent keepalive in seconds, for a machine behind NAT (`0` or absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

/// The WormholePeers as external entries of a snapshot, oldest claim first (creation time, then
/// uid, then name: a stable order, so equal pictures compare equal). Validation
/// ([`wormhole_core::Mesh::build`], with [`Snapshot::oldest_first`]) then lets the earlier
/// WormholePeer keep addresses or a key a later one also claims: adding a bad WormholePeer never
/// evicts a working one. Each is otherwise judged on its own.
pub(crate) fn external_entries(peers: &[Arc<WormholePeer>]) -> Vec<NodeEntry> {
    let mut entries: Vec<(_, NodeEntry)> = peers
        .iter()
        .map(|p| {
            let name = p.name_any();
            let meta = &p.metadata;
            let claim = (
                meta.creation_timestamp.is_none(),
                meta.creation_timestamp.clone(),
                meta.uid.clone(),
            );
            (
                claim,
                NodeEntry {
                    public_key: p.spec.public_key.clone(),
                    endpoint: p.spec.endpoint.clone(),
                    pod_cidrs: p.spec.allowed_ips.clone(),
                    persistent_keepalive: p.spec.persistent_keepalive,
                    origin: format!("{ORIGIN_PREFIX}{name}"),
                    name,
                },
            )
        })
        .collect();
    entries.sort_by(|(a, ea), (b, eb)| (a, &ea.name).cmp(&(b, &eb.name)));
    entries.into_iter().map(|(_, e)| e).collect()
}

/// Drops what the mesh does not use.
pub(crate) fn slim_peer(peer: &mut WormholePeer) {
    peer.metadata.managed_fields = None;
    peer.metadata.annotations = None;
}

/// The mesh as every agent sees it, for `wormhole peer-config` in Kubernetes mode: every Node,
/// WormholeNode and WormholePeer (listed, each request within `timeout`), from the point of view
/// of the node whose WormholeNode was created first (every agent accepts the same nodes and
/// external peers). `cluster_cidrs` empty: read from kubeadm-config, as the agents do.
/// `external_cidrs`: the agents' `--external-cidr`.
pub async fn read_external(
    client: Client,
    cluster_cidrs: Vec<IpNet>,
    external_cidrs: Vec<IpNet>,
    timeout: std::time::Duration,
) -> Result<Snapshot, Error> {
    let cluster_cidrs = if cluster_cidrs.is_empty() {
        crate::detect_cluster_cidrs(client.clone()).await?
    } else {
        cluster_cidrs
    };
    if cluster_cidrs.is_empty() {
        return Err(Error::Invalid(
            "no cluster CIDR: pass --cluster-cidr (no kubeadm-config ConfigMap names one)".into(),
        ));
    }
    let nodes: Vec<Arc<Node>> = list_all(&Api::<Node>::all(client.clone()), "Nodes", timeout)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let wormholes: Vec<Arc<WormholeNode>> = list_all(
        &Api::<WormholeNode>::all(client.clone()),
        "WormholeNodes",
        timeout,
    )
    .await?
    .into_iter()
    .map(Arc::new)
    .collect();
    let peers: Vec<Arc<WormholePeer>> =
        list_all(&Api::<WormholePeer>::all(client), "WormholePeers", timeout)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
    // The oldest claim's node, with the key it published.
    let by_name: HashMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), &**n)).collect();
    let mut published: Vec<(&WormholeNode, &Node)> = wormholes
        .iter()
        .filter_map(|wh| {
            let node = *by_name.get(&wh.name_any())?;
            let ok =
                crate::source::owned_by(wh, node) && !crate::source::pod_cidrs(node).is_empty();
            ok.then_some((&**wh, node))
        })
        .collect();
    published.sort_by_key(|(wh, _)| (crate::source::claim(wh), wh.name_any()));
    let Some((first, key)) = published
        .iter()
        .find_map(|(wh, _)| Some((wh.name_any(), wh.spec.public_key.parse::<PublicKey>().ok()?)))
    else {
        return Err(Error::Invalid(
            "no node has published a WormholeNode with a valid key yet: is the agent running?"
                .into(),
        ));
    };
    // One look, without history: only a strict majority of the observers counts.
    let mut snapshot = crate::source::snapshot(
        &nodes,
        &wormholes,
        &first,
        &key,
        &cluster_cidrs,
        &mut crate::vote::Choice::default(),
        tokio::time::Instant::now(),
    )?;
    // The snapshot is the first node's, which leaves out its own endpoint: an external peer
    // needs it.
    let endpoint = published
        .iter()
        .find(|(wh, _)| wh.name_any() == first)
        .and_then(|(wh, _)| wh.spec.endpoint.clone());
    if let Some(entry) = snapshot.nodes.iter_mut().find(|n| n.name == first) {
        entry.endpoint = endpoint;
    }
    snapshot.external = external_entries(&peers);
    snapshot.external_cidrs = external_cidrs;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, created: &str, uid: &str, ips: &[&str]) -> Arc<WormholePeer> {
        let mut p = WormholePeer::new(
            name,
            WormholePeerSpec {
                public_key: wormhole_core::PrivateKey::generate()
                    .public_key()
                    .to_base64(),
                allowed_ips: ips.iter().map(|c| c.to_string()).collect(),
                endpoint: None,
                persistent_keepalive: Some(25),
            },
        );
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            created.parse().unwrap(),
        ));
        p.metadata.uid = Some(uid.into());
        Arc::new(p)
    }

    #[test]
    fn entries_are_oldest_claim_first_and_the_older_keeps_its_addresses() {
        // "zz" was created first; "aa" (sorting first) overlaps it a day later; "mm" in the
        // same second as "zz", with a larger uid.
        let peers = [
            peer("aa", "2026-01-02T00:00:00Z", "1", &["10.98.0.0/24"]),
            peer("mm", "2026-01-01T00:00:00Z", "9", &["10.98.1.1/32"]),
            peer("zz", "2026-01-01T00:00:00Z", "5", &["10.98.0.2/32"]),
        ];
        let entries = external_entries(&peers);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["zz", "mm", "aa"]);
        assert_eq!(entries[0].origin, "WormholePeer/zz");
        assert_eq!(entries[0].pod_cidrs, ["10.98.0.2/32"]);
        assert_eq!(entries[0].persistent_keepalive, Some(25));

        let local = wormhole_core::PrivateKey::generate().public_key();
        let snapshot = Snapshot {
            cluster_cidrs: vec!["10.99.0.0/16".parse().unwrap()],
            nodes: vec![NodeEntry::new(
                "n1",
                local,
                None,
                vec!["10.99.1.0/24".parse().unwrap()],
            )],
            oldest_first: true,
            external: entries,
            external_cidrs: vec!["10.98.0.0/16".parse().unwrap()],
            ..Snapshot::default()
        };
        let mesh = wormhole_core::Mesh::build("n1", &local, &[], snapshot, None).unwrap();
        let accepted: Vec<&str> = mesh.external.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            accepted,
            ["mm", "zz"],
            "the later, overlapping one is refused"
        );
        assert_eq!(mesh.rejected.len(), 1);
        assert_eq!(mesh.rejected[0].name, "aa");
        assert_eq!(mesh.rejected[0].reason.kind(), "overlaps_peer");
    }

    #[test]
    fn every_field_is_bounded_and_named_as_documented() {
        use kube::CustomResourceExt as _;
        let crd = WormholePeer::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.plural, PEER_PLURAL);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version.subresources.is_none(),
            "no status: agents never write it"
        );
        let schema =
            serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["properties"]["publicKey"]["maxLength"], 44);
        assert_eq!(spec["properties"]["endpoint"]["maxLength"], 64);
        let ips = &spec["properties"]["allowedIPs"];
        assert_eq!(ips["maxItems"], MAX_ALLOWED_IPS);
        assert_eq!(ips["minItems"], 1);
        assert_eq!(ips["items"]["maxLength"], MAX_CIDR);
        assert_eq!(
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128".len(),
            MAX_CIDR
        );
        assert_eq!(
            spec["properties"]["persistentKeepalive"]["maximum"].as_f64(),
            Some(65535.0),
            "{spec}"
        );
        let mut required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort_unstable();
        assert_eq!(required, ["allowedIPs", "publicKey"]);
    }
}
