//! Prints the WormholeNode and WormholePeer CRDs as YAML:
//! `cargo run -p wormhole-k8s --example crd > deploy/crd.yaml`.

fn main() {
    print!("{}", wormhole_k8s::crd_yaml());
}
