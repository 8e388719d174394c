//! `wormhole-k8s`: the Kubernetes binding of Wormhole.
//!
//! - [`crd::WormholeNode`]: a cluster-scoped object per node, named after it and owned by it,
//!   holding only what the agent may claim: its public key and endpoint.
//! - [`source::KubePeerSource`]: a [`PeerSource`](wormhole_core::PeerSource) over reflectors of
//!   Nodes and WormholeNodes. **Allowed IPs come only from `Node.spec.podCIDRs`** (written by the
//!   controller manager's IPAM): a WormholeNode cannot add CIDRs.
//! - [`publisher::Publisher`]: server-side applies this node's WormholeNode (on change only).
//! - [`keys::SecretKeyStore`]: the cluster secret for pre-shared keys from a Kubernetes Secret.
//! - [`events::EventSink`]: rate-limited Events on the local Node for rejected peers and
//!   persistent reconcile failures.
//!
//! Manifests live in `deploy/`; `deploy/crd.yaml` is generated from [`crd::WormholeNode`]
//! (`cargo run -p wormhole-k8s --example crd > deploy/crd.yaml`) and a test fails when it differs.

pub mod crd;
pub mod events;
pub mod keys;
pub mod publisher;
pub mod source;
#[cfg(feature = "fake-api")]
#[doc(hidden)]
pub mod testing;

/// The API group of our custom resource.
pub const GROUP: &str = "wormhole.dev";
/// The field manager of every server-side apply the agent makes.
pub const FIELD_MANAGER: &str = "wormhole-agent";
/// The key of the cluster secret in the PSK Secret's data.
pub const PSK_SECRET_KEY: &str = "psk";
/// The first line of `deploy/crd.yaml`.
pub const CRD_HEADER: &str = "# Generated from wormhole-k8s/src/crd.rs: cargo run -p wormhole-k8s --example crd > deploy/crd.yaml\n";
/// The controller name on Events.
pub const EVENT_REPORTER: &str = "wormhole";

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
    /// The cluster holds something we cannot use.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn api(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Api { context, source }
    }
}

impl From<Error> for wormhole_core::Error {
    fn from(e: Error) -> Self {
        wormhole_core::Error::Source(Box::new(e))
    }
}
