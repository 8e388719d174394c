//! Prints the WormholeNode CRD as YAML: `cargo run -p wormhole-k8s --example crd > deploy/crd.yaml`.

use kube::CustomResourceExt as _;

fn main() {
    let yaml = yaml_serde::to_string(&wormhole_k8s::WormholeNode::crd()).expect("CRD serializes");
    print!("{}{yaml}", wormhole_k8s::CRD_HEADER);
}
