//! The `WormholeNode` custom resource: `wormhole.dev/v1alpha1`, cluster-scoped, one per node and
//! named after it, owned by its Node (deleting the Node garbage-collects it).
//!
//! It holds only what an agent may say about itself: its public key and where to reach it. Pod
//! CIDRs are deliberately absent: they come from `Node.spec.podCIDRs`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What an agent publishes about its node.
// kube's `printcolumn(...)` repeats attribute names on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "wormhole.dev",
    version = "v1alpha1",
    kind = "WormholeNode",
    plural = "wormholenodes",
    shortname = "whn",
    status = "WormholeNodeStatus",
    printcolumn(
        name = "Key",
        type_ = "string",
        json_path = ".status.keyPrefix",
        description = "public key prefix"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint"),
    printcolumn(
        name = "Peers",
        type_ = "string",
        json_path = ".status.peers",
        description = "peers ok/total"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WormholeNodeSpec {
    /// WireGuard public key, base64.
    pub public_key: String,
    /// `ip:port` or `[ipv6]:port` other nodes send the first handshake to; absent behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// WireGuard UDP port.
    pub listen_port: u16,
}

/// How the node sees its peers (written on change only: no heartbeats).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WormholeNodeStatus {
    /// The first 8 characters of the public key, for `kubectl get`.
    #[serde(default)]
    pub key_prefix: String,
    /// `ok/total`, for `kubectl get`.
    #[serde(default)]
    pub peers: String,
    /// Peers with a recent handshake.
    #[serde(default)]
    pub peers_ok: u32,
    /// Peers whose handshake is older than 3 minutes.
    #[serde(default)]
    pub peers_stale: u32,
    /// Peers with no handshake yet.
    #[serde(default)]
    pub peers_never: u32,
    /// Entries this node refused.
    #[serde(default)]
    pub peers_rejected: u32,
    /// The latest reconcile error, if the latest pass failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When this status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_in_deploy_is_generated_from_the_type() {
        use kube::CustomResourceExt as _;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        let generated = format!(
            "{}{}",
            crate::CRD_HEADER,
            serde_yaml::to_string(&WormholeNode::crd()).unwrap()
        );
        assert!(
            on_disk == generated,
            "deploy/crd.yaml differs from the WormholeNode type: run\n  cargo run -p wormhole-k8s --example crd > deploy/crd.yaml"
        );
    }

    #[test]
    fn the_crd_is_cluster_scoped_with_status_and_columns() {
        use kube::CustomResourceExt as _;
        let crd = WormholeNode::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, "wormhole.dev");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Key", "Endpoint", "Peers", "Age"]);
        // Structural: the spec has no field for CIDRs, so the API server prunes any.
        let schema = serde_json::to_string(&version.schema).unwrap();
        assert!(!schema.to_lowercase().contains("cidr"), "{schema}");
        assert!(schema.contains("publicKey"));
    }
}
