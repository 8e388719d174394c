//! `wormhole-k8s`: the Kubernetes binding of Wormhole.
//!
//! - [`WormholeNode`]: a cluster-scoped object per node, named after it and owned by it,
//!   holding only what the agent may claim: its public key and endpoint.
//! - [`WormholePeer`]: a cluster-scoped object per machine outside the cluster (a laptop, a CI
//!   runner), created by admins only: its key, allowed IPs (inside the agents'
//!   `--external-cidr`) and optional endpoint. Every agent adds it as an external peer.
//! - [`KubePeerSource`]: a [`PeerSource`](wormhole_core::PeerSource) over reflectors of
//!   Nodes, WormholeNodes and WormholePeers. **Allowed IPs come only from `Node.spec.podCIDRs`** (written by the
//!   controller manager's IPAM): a WormholeNode cannot add CIDRs.
//! - [`Publisher`]: server-side applies this node's WormholeNode (on change only).
//! - [`LocalSettings`]: what this node publishes about itself (endpoint, persistent
//!   keepalive): the agent's options, overridden by annotations on its own Node
//!   ([`ENDPOINT_ANNOTATION`], [`PERSISTENT_KEEPALIVE_ANNOTATION`]) that no other agent reads.
//! - [`SecretKeyStore`]: the cluster secret for pre-shared keys from a Kubernetes Secret.
//! - [`EventSink`]: rate-limited Events on the local Node for rejected peers, degraded pairs
//!   and persistent reconcile failures.
//! - [`read_cluster`]: every WormholeNode and Node, for the cluster-wide views
//!   (`wormhole status --cluster`, `wormhole graph`).
//! - [`StateStore`]: what the agent last learned from the API (its mesh, the cluster
//!   CIDRs, its Node's address), saved `0600` beside the private key, so an agent started while
//!   the API server is down applies its last known mesh instead of waiting for it.
//!
//! **API outages.** Every request has a deadline ([`API_TIMEOUT`]; watches are bounded by the
//! watcher's idle timeout and the client's read timeout, see [`configure_client`]), no pass
//! waits on the API once the PSK is known, and nothing the agent needs to start comes only from
//! the API: the PSK, cluster CIDRs and the last mesh are saved under `/var/lib/wormhole`.
//!
//! Manifests live in `deploy/`; `deploy/crd.yaml` is generated from [`WormholeNode`] and
//! [`WormholePeer`] ([`crd_yaml`]: `cargo run -p wormhole-k8s --example crd > deploy/crd.yaml`)
//! and a test fails when it differs.

use std::future::Future;
use std::time::Duration;

mod cluster;
mod crd;
mod events;
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod peer;
mod publisher;
mod settings;
mod source;
mod state;
/// A fake API server speaking real HTTP to the real kube client, for tests (feature `fake-api`).
#[cfg(feature = "fake-api")]
#[doc(hidden)]
pub mod testing;
mod vote;

// The public API, one path per item (module paths are private).
pub use cluster::{ClusterObjects, read_cluster};
pub use crd::{
    MAX_ENDPOINT, MAX_ERROR, MAX_OBSERVED, MAX_PEER_NAME, MAX_PROBLEMS, MAX_PUBLIC_KEY, MAX_STATE,
    ObservedEndpoint, PeerProblem, WormholeNode, WormholeNodeSpec, WormholeNodeStatus,
};
pub use events::EventSink;
pub use keys::{PSK_FILE, PskError, SecretKeyStore, parse_psk};
pub use peer::{
    MAX_ALLOWED_IPS, MAX_CIDR, PEER_PLURAL, WormholePeer, WormholePeerSpec, read_external,
};
pub use publisher::{Publisher, internal_ip, published_state};
pub use settings::{
    LocalSettings, NodeSettings, Origin, PublishedEndpoint, RefusedAnnotation, SettingError,
    parse_keepalive,
};
pub use source::{Annotations, KubePeerSource, detect_cluster_cidrs, pod_subnets};
pub use state::{STATE_FILE, SavedExternal, SavedNode, SavedState, StateStore};

/// The API group of our custom resource.
pub const GROUP: &str = "wormhole.dev";
/// The field manager of every server-side apply the agent makes.
pub const FIELD_MANAGER: &str = "wormhole-agent";
/// The prefix of the annotations on a Node that its agent reads (see [`LocalSettings`]); every
/// other agent ignores them.
pub const ANNOTATION_PREFIX: &str = "wormhole.dev/";
/// Node annotation: the endpoint this node publishes, overriding `--endpoint` (same values:
/// `none`, `internal-ip`, `IP`, `IP:PORT`, `[IPv6]:PORT`).
pub const ENDPOINT_ANNOTATION: &str = "wormhole.dev/endpoint";
/// Node annotation: this node's persistent keepalive in seconds, overriding
/// `--persistent-keepalive` (same values: 0 to 65535, 0 off).
pub const PERSISTENT_KEEPALIVE_ANNOTATION: &str = "wormhole.dev/persistent-keepalive";
/// Node annotation refused on purpose, saying why: the listen port is bound at start, not a
/// per-node setting ([`SettingError::ListenPort`]).
pub const LISTEN_PORT_ANNOTATION: &str = "wormhole.dev/listen-port";
/// The key of the cluster secret in the PSK Secret's data.
pub const PSK_SECRET_KEY: &str = "psk";
/// The first line of `deploy/crd.yaml`.
pub const CRD_HEADER: &str = "# Generated from wormhole-k8s/src/crd.rs and peer.rs: cargo run -p wormhole-k8s --example crd > deploy/crd.yaml\n";
/// `deploy/crd.yaml`: [`CRD_HEADER`], then the WormholeNode and WormholePeer CRDs as YAML
/// documents.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    let yaml = |crd| yaml_serde::to_string(&crd).expect("a CRD serializes");
    format!(
        "{CRD_HEADER}{}---\n{}",
        yaml(WormholeNode::crd()),
        yaml(WormholePeer::crd())
    )
}

/// The controller name on Events.
pub const EVENT_REPORTER: &str = "wormhole";
/// The deadline of every single request to the API server (get, apply, delete, Event).
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection to the API server may stay silent: longer than a watch's
/// server-side timeout (290 s) and the watcher's own idle timeout (295 s), so it only ends a
/// request the server stopped answering (a list, or the start of a watch).
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Sets the client's timeouts: connect and write [`API_TIMEOUT`], read [`READ_TIMEOUT`] counted
/// from the last write. kube's default read timeout is none: a request the server accepted and
/// never answered would wait forever.
pub fn configure_client(config: &mut kube::Config) {
    config.connect_timeout = Some(API_TIMEOUT);
    config.write_timeout = Some(API_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
}

/// Runs one request with a deadline of `after`.
pub(crate) async fn call<T>(
    context: impl Into<String>,
    after: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    let context = context.into();
    match tokio::time::timeout(after, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::Api { context, source }),
        Err(_) => Err(Error::Timeout { context, after }),
    }
}

/// Errors of the Kubernetes binding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server answered with an error, or could not be reached.
    #[error("kubernetes API: {context}: {source}")]
    Api {
        /// What we were doing.
        context: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("kubernetes API: {context}: no answer within {after:?}")]
    Timeout {
        /// What we were doing.
        context: String,
        /// The deadline.
        after: Duration,
    },
    /// This node's Node has no `spec.podCIDRs` (yet): it cannot be part of the mesh.
    #[error(
        "this node ({node}) has no spec.podCIDRs yet: is the controller manager allocating \
         node CIDRs (--allocate-node-cidrs, kubeadm --pod-network-cidr)?"
    )]
    NoPodCidrs {
        /// This node's name.
        node: String,
    },
    /// This node's Node does not exist.
    #[error("Node {node} not found (check --node-name)")]
    NodeNotFound {
        /// The name looked for.
        node: String,
    },
    /// A Node without `metadata.uid` (a WormholeNode's ownerReference needs it).
    #[error("Node {node} has no uid")]
    NodeWithoutUid {
        /// The Node's name.
        node: String,
    },
    /// The PSK Secret has no [`PSK_SECRET_KEY`] value.
    #[error("Secret {secret} has no key {PSK_SECRET_KEY:?}")]
    PskMissing {
        /// `namespace/name`.
        secret: String,
    },
    /// The PSK Secret's value is not a key.
    #[error("Secret {secret} key {PSK_SECRET_KEY:?}: {source}")]
    PskInvalid {
        /// `namespace/name`.
        secret: String,
        /// What is wrong with the value.
        #[source]
        source: keys::PskError,
    },
    /// The saved state could not be written (see [`StateStore`]).
    #[error("saving state: {what}: {source}")]
    SaveState {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The cluster or the client did something we cannot use.
    #[error("{0}")]
    Invalid(String),
    /// kubeadm's ClusterConfiguration (ConfigMap `kube-system/kubeadm-config`) cannot be used.
    #[error("kubeadm-config ClusterConfiguration: {0}")]
    KubeadmConfig(#[from] KubeadmConfigError),
    /// Saving or reading local state.
    #[error(transparent)]
    Local(#[from] wormhole_core::Error),
}

/// What is wrong with kubeadm's ClusterConfiguration (see [`source::pod_subnets`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeadmConfigError {
    /// It is not YAML, or `networking.podSubnet` is not a string.
    #[error("{0}")]
    Yaml(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// One of the comma-separated values of `networking.podSubnet` is not a CIDR.
    #[error("networking.podSubnet {value:?} is not a CIDR")]
    PodSubnet {
        /// The value.
        value: String,
        /// Why.
        #[source]
        source: ipnet::AddrParseError,
    },
}

impl From<Error> for wormhole_core::Error {
    fn from(e: Error) -> Self {
        wormhole_core::Error::Source(Box::new(e))
    }
}
