//! The `WormholeNode` custom resource: `wormhole.dev/v1alpha1`, cluster-scoped, one per node and
//! named after it, owned by its Node (deleting the Node garbage-collects it).
//!
//! It holds only what an agent may say about itself: its public key and where to reach it. Pod
//! CIDRs are deliberately absent: they come from `Node.spec.podCIDRs`.
//!
//! Every string field has a `maxLength`: a node cannot publish a megabyte that every agent then
//! reads and logs. `spec.publicKey` is immutable (a CEL transition rule, `self == oldSelf`): a
//! node changes keys by deleting its WormholeNode and creating it again, which makes a new, later
//! claim. So no node can switch an older WormholeNode to another node's key and win the key
//! conflict with it (see the security model, docs/security.md).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `maxLength` of `spec.publicKey`: base64 of 32 bytes.
pub const MAX_PUBLIC_KEY: usize = 44;
/// `maxLength` of `spec.endpoint`: `[` + the longest IPv6 text (45, IPv4-mapped) + `%` and a
/// zone id (11) + `]:65535`.
pub const MAX_ENDPOINT: usize = 64;
/// `maxLength` of `status.lastError`; the publisher truncates longer errors.
pub const MAX_ERROR: usize = 1024;
/// `maxItems` of `status.problems`: a node lists at most this many peers that are not ok
/// (sorted by name) and counts the rest in `status.problemsOmitted`. A worst-case list (every
/// name 253 bytes) stays near 300 KB, well under the API server's object size limit, in a
/// broken 5,000-node cluster.
pub const MAX_PROBLEMS: usize = 1000;
/// `maxItems` of `status.observedEndpoints`: a node reports where it sees at most this many
/// peers behind NAT (by name).
pub const MAX_OBSERVED: usize = 1000;
/// `maxLength` of `status.problems[].peer`: a Node name (DNS-1123 subdomain).
pub const MAX_PEER_NAME: usize = 253;
/// `maxLength` of `status.problems[].state`: the longest stable state text
/// (`mtu-blackhole (max 4294967295)` is 30 bytes).
pub const MAX_STATE: usize = 64;
/// The message of the rule that makes `spec.publicKey` immutable.
pub(crate) const PUBLIC_KEY_IMMUTABLE: &str =
    "publicKey is immutable: delete the WormholeNode and create it again to change keys";

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
    /// WireGuard public key, base64. Immutable: to change keys, delete the WormholeNode and
    /// create it again.
    #[schemars(length(max = MAX_PUBLIC_KEY))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": PUBLIC_KEY_IMMUTABLE,
    }]))]
    pub public_key: String,
    /// `ip:port` or `[ipv6]:port` other nodes send the first handshake to; absent behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ENDPOINT))]
    pub endpoint: Option<String>,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// Persistent keepalive in seconds, for a node behind NAT: it sends one to every peer this
    /// often, and its peers to it, so that its NAT keeps the mapping open. Absent or 0: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

// Every agent reads every WormholeNode, and a node writes its own status: a status this type
// cannot read must never fail the reader's watch (one object failing to decode fails the whole
// list, and every agent's mesh would freeze). So each field is read on its own, and a field that
// does not decode (a counter beyond `u32`, a malformed list) is read as its default instead of
// failing the object. The schema also bounds every counter, so that the API server refuses such
// values in the first place.
/// How the node sees its peers (written on change only: no heartbeats).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WormholeNodeStatus {
    /// The first 8 characters of the public key, for `kubectl get`.
    #[serde(default, deserialize_with = "lenient")]
    #[schemars(length(max = 8))]
    pub key_prefix: String,
    /// `ok/total`, for `kubectl get`.
    #[serde(default, deserialize_with = "lenient")]
    #[schemars(length(max = 32))]
    pub peers: String,
    /// Peers with a recent handshake.
    #[serde(default, deserialize_with = "lenient")]
    #[schemars(range(max = u32::MAX))]
    pub peers_ok: u32,
    /// Peers whose handshake is older than 3 minutes.
    #[serde(default, deserialize_with = "lenient")]
    #[schemars(range(max = u32::MAX))]
    pub peers_stale: u32,
    /// Peers with no handshake yet.
    #[serde(default, deserialize_with = "lenient")]
    #[schemars(range(max = u32::MAX))]
    pub peers_never: u32,
    /// Entries this node refused.
    #[serde(default, deserialize_with = "lenient")]
    #[schemars(range(max = u32::MAX))]
    pub peers_rejected: u32,
    /// The latest reconcile error, if the latest pass failed (its first 1,024 bytes).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = MAX_ERROR))]
    pub last_error: Option<String>,
    /// Peers that are not `ok` from this node, by name (at most 1,000, `MAX_PROBLEMS`): their state
    /// label with its stable details only (`mtu-blackhole (max 1344)`, but `lossy` without the
    /// percent, which moves with every probe), so the object changes only when a state does.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = MAX_PROBLEMS))]
    pub problems: Vec<PeerProblem>,
    /// Peers that are not `ok` beyond the first 1,000 (not listed).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "is_zero")]
    #[schemars(range(max = u32::MAX))]
    pub problems_omitted: u32,
    /// For peers that publish no endpoint (behind NAT): where this node sees them, from a
    /// handshake in the last 3 minutes (at most 1,000, `MAX_OBSERVED`; sorted by peer). Nodes
    /// that cannot reach such a peer otherwise (both behind NAT) send their handshakes there.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = MAX_OBSERVED))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["peer"]))]
    pub observed_endpoints: Vec<ObservedEndpoint>,
    /// When this status last changed (RFC 3339).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 64))]
    pub last_reconcile: Option<String>,
}

/// Reads a status field on its own: a value that does not decode as `T` is read as `T`'s default
/// (see [`WormholeNodeStatus`]).
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A peer that is not `ok`, as one node sees it (an entry of `status.problems`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerProblem {
    /// The peer's node name.
    #[schemars(length(max = MAX_PEER_NAME))]
    pub peer: String,
    /// `stale`, `never`, `unreachable`, `lossy`, `mtu-blackhole (max N)` or `rejected`.
    #[schemars(length(max = MAX_STATE))]
    pub state: String,
}

/// Where a node sees a peer that publishes no endpoint (an entry of
/// `status.observedEndpoints`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedEndpoint {
    /// The peer's node name.
    #[schemars(length(max = MAX_PEER_NAME))]
    pub peer: String,
    /// `ip:port` or `[ipv6]:port` its packets come from.
    #[schemars(length(max = MAX_ENDPOINT))]
    pub endpoint: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_in_deploy_is_generated_from_the_type() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        let generated = crate::crd_yaml();
        assert!(
            on_disk == generated,
            "deploy/crd.yaml differs from the WormholeNode and WormholePeer types: run\n  cargo run -p wormhole-k8s --example crd > deploy/crd.yaml"
        );
    }

    /// Every string in the schema, by path, with its `maxLength`.
    fn strings(schema: &serde_json::Value, path: &str, out: &mut Vec<(String, Option<u64>)>) {
        if schema["type"] == "string" {
            out.push((path.to_owned(), schema["maxLength"].as_u64()));
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, inner) in props {
                strings(inner, &format!("{path}.{name}"), out);
            }
        }
        if !schema["items"].is_null() {
            strings(&schema["items"], &format!("{path}[]"), out);
        }
    }

    #[test]
    fn every_string_field_has_a_max_length() {
        use kube::CustomResourceExt as _;
        let crd = WormholeNode::crd();
        let schema = serde_json::to_value(
            &crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema,
        )
        .unwrap();
        let mut found = Vec::new();
        strings(&schema, "", &mut found);
        let names: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert!(
            names.contains(&".spec.publicKey") && names.contains(&".status.lastError"),
            "{names:?}"
        );
        let unbounded: Vec<&str> = found
            .iter()
            .filter(|(_, max)| max.is_none())
            .map(|(p, _)| p.as_str())
            .collect();
        assert!(unbounded.is_empty(), "no maxLength: {unbounded:?}");
        let max = |path: &str| found.iter().find(|(p, _)| p == path).unwrap().1.unwrap();
        // Exactly what a valid value needs: a base64 key, the longest endpoint we accept.
        assert_eq!(max(".spec.publicKey"), 44);
        let longest = "[0000:0000:0000:0000:0000:ffff:255.255.255.255%2147483647]:65535";
        assert_eq!(max(".spec.endpoint"), longest.len() as u64);
    }

    /// Every integer in the schema, by path, with its bounds and format.
    fn integers(schema: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
        if schema["type"] == "integer" {
            let bounds = format!(
                "{} {} {}",
                schema["format"], schema["minimum"], schema["maximum"]
            );
            out.push((path.to_owned(), bounds));
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, inner) in props {
                integers(inner, &format!("{path}.{name}"), out);
            }
        }
        if !schema["items"].is_null() {
            integers(&schema["items"], &format!("{path}[]"), out);
        }
    }

    /// The API server checks `minimum` and `maximum` but not `format`: without both bounds a
    /// node could store a counter its peers' agents cannot decode.
    #[test]
    fn every_integer_field_is_bounded_to_its_type() {
        use kube::CustomResourceExt as _;
        for crd in [WormholeNode::crd(), crate::WormholePeer::crd()] {
            let schema = serde_json::to_value(
                &crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema,
            )
            .unwrap();
            let mut found = Vec::new();
            integers(&schema, "", &mut found);
            assert!(!found.is_empty());
            for (path, bounds) in found {
                assert!(
                    ["\"uint16\" 0.0 65535.0", "\"uint32\" 0.0 4294967295.0"]
                        .contains(&bounds.as_str()),
                    "{}{path}: {bounds}",
                    crd.spec.names.kind
                );
            }
        }
    }

    /// Each status field is read on its own: one that does not decode is its default, and the
    /// object is still read (see `WormholeNodeStatus`).
    #[test]
    fn a_status_field_that_does_not_decode_is_read_as_its_default() {
        let status: WormholeNodeStatus = serde_json::from_value(serde_json::json!({
            "peersOk": 1u64 << 40, "peersNever": 3, "problems": "all of them",
            "observedEndpoints": [{"peer": "nat1", "endpoint": "203.0.113.1:1"}],
        }))
        .unwrap();
        assert_eq!(status.peers_ok, 0);
        assert_eq!(status.peers_never, 3);
        assert!(status.problems.is_empty());
        assert_eq!(status.observed_endpoints.len(), 1);
    }

    /// `status.observedEndpoints` is a map keyed by peer for the API server: one entry per
    /// peer, so an observer cannot vote twice for the same peer.
    #[test]
    fn observed_endpoints_are_a_list_map_keyed_by_peer() {
        use kube::CustomResourceExt as _;
        let crd = WormholeNode::crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let list =
            &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["observedEndpoints"];
        assert_eq!(list["x-kubernetes-list-type"], "map");
        assert_eq!(
            list["x-kubernetes-list-map-keys"],
            serde_json::json!(["peer"])
        );
        assert_eq!(
            list["items"]["required"],
            serde_json::json!(["endpoint", "peer"])
        );
    }

    #[test]
    fn the_public_key_is_immutable_by_a_cel_transition_rule() {
        use kube::CustomResourceExt as _;
        let crd = WormholeNode::crd();
        let schema = serde_json::to_value(
            &crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema,
        )
        .unwrap();
        let rules =
            schema["properties"]["spec"]["properties"]["publicKey"]["x-kubernetes-validations"]
                .as_array()
                .expect("a CEL rule on spec.publicKey");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["message"], PUBLIC_KEY_IMMUTABLE);
        let rule = cel::Program::compile(rules[0]["rule"].as_str().unwrap()).unwrap();
        // What the API server does on an update: the rule sees the new and the old value.
        let allows = |new: &str, old: &str| {
            let mut context = cel::Context::default();
            context.add_variable_from_value("self", new);
            context.add_variable_from_value("oldSelf", old);
            rule.execute(&context).unwrap() == cel::Value::Bool(true)
        };
        let (mine, victims) = (
            "6ZdWcYDWqaD7Kj0kmDxAWqUi2ojUhXuI3RO5eKMxdGs=",
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
        );
        assert!(allows(mine, mine), "an unchanged key (an endpoint update)");
        assert!(!allows(victims, mine), "a key changed in place");
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
