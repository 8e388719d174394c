//! The one integration-test binary of `wormhole-k8s`: the real `kube` client against a fake API
//! server speaking real HTTP (`wormhole_k8s::testing`), and the manifests in `deploy/`.

mod manifests;
mod node_events;
mod outage;
mod peers;
mod props;
mod publisher;
mod source;
