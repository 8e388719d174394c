//! Embedding `wormhole-core`: a [`Reconciler`] on the in-memory backends, fed snapshots by hand.
//!
//! The local host is `node-a`. Six snapshots follow one another, as a peer source would report
//! them: two peers, the same again, a node joining, a node changing its pod CIDR, a node leaving,
//! and a hostile entry claiming another node's pod CIDR. After each one the example runs one
//! reconcile pass and prints the plan it applied: the minimal changes to the WireGuard device,
//! the link, the routes and the firewall (`+` added, `-` removed, `~` changed). Unchanged peers
//! are never touched, so their WireGuard sessions survive. A bad entry is refused on its own,
//! with a reason, and the rest of the mesh keeps working.
//!
//! A real host swaps `MemoryBackends` for the Linux backends and hands a stream of snapshots
//! (see [`wormhole_core::PeerStream`]) to [`Reconciler::run`] instead of calling
//! [`Reconciler::update`] and [`Reconciler::reconcile`] by hand.
//!
//! ```text
//! cargo run -p wormhole-examples --example embed
//! ```

use std::net::SocketAddr;

use wormhole_core::{Error, PrivateKey, PublicKey, Reconciler, Settings};
use wormhole_core::{MemoryBackends, MemoryKeyStore};
use wormhole_core::{NodeEntry, Snapshot};

/// A node as a peer source reports it: name, key, underlay endpoint, pod CIDR.
fn node(name: &str, key: &PublicKey, host: u8, pod_cidr: &str) -> NodeEntry {
    let endpoint = SocketAddr::from(([192, 168, 77, host], 51820));
    let pod_cidr = pod_cidr.parse().expect("a CIDR");
    NodeEntry::new(name, *key, Some(endpoint), vec![pod_cidr]).origin("embed.rs")
}

/// Plans name peers by the first characters of their public key.
fn short(key: &PublicKey) -> String {
    key.to_base64()[..8].to_owned()
}

/// Hands `nodes` to the reconciler as a new snapshot, runs one pass and prints what it did.
async fn step(reconciler: &mut Reconciler, what: &str, nodes: &[NodeEntry]) -> Result<(), Error> {
    let snapshot = Snapshot {
        nodes: nodes.to_vec(),
        ..Snapshot::default()
    };
    reconciler.update(Ok(snapshot));
    let plan = reconciler.reconcile().await?;
    let status = reconciler.status().borrow().clone();
    print!(
        "\n{}. {what}\nplan ({} changes):\n{plan}",
        status.passes,
        plan.len()
    );
    let peers: Vec<String> = status
        .peers
        .iter()
        .map(|p| format!("{} {:?}", p.name, p.allowed_ips))
        .collect();
    println!("peers: {}", peers.join(", "));
    for rejection in &status.rejected {
        println!("rejected: {rejection}");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let me = PrivateKey::generate();
    let [b, c, d, mallory] = std::array::from_fn(|_| PrivateKey::generate().public_key());
    println!("This host is node-a, pod CIDR 10.99.1.0/24, in the overlay 10.99.0.0/16.");
    println!("Plans name peers by key:");
    for (name, key) in [
        ("node-b", b),
        ("node-c", c),
        ("node-d", d),
        ("mallory", mallory),
    ] {
        println!("  {} = {name}", short(&key));
    }

    let backends = MemoryBackends::default();
    let keys = MemoryKeyStore::new(me.clone(), None);
    let settings = Settings::new("node-a", vec!["10.99.0.0/16".parse().unwrap()]);
    let mut reconciler = Reconciler::new(settings, backends.handles(keys));

    let mut nodes = vec![
        node("node-a", &me.public_key(), 1, "10.99.1.0/24"),
        node("node-b", &b, 2, "10.99.2.0/24"),
        node("node-c", &c, 3, "10.99.3.0/24"),
    ];
    let r = &mut reconciler;
    step(
        r,
        "node-a (us), node-b and node-c: everything is created",
        &nodes,
    )
    .await?;
    step(r, "the same snapshot again: nothing to do", &nodes).await?;
    nodes.push(node("node-d", &d, 4, "10.99.4.0/24"));
    step(r, "node-d joins: one peer, one route", &nodes).await?;
    nodes[2].pod_cidrs = vec!["10.99.30.0/24".into()];
    step(
        r,
        "node-c moves to 10.99.30.0/24: its allowed IPs and route",
        &nodes,
    )
    .await?;
    nodes.remove(1);
    step(r, "node-b leaves", &nodes).await?;
    nodes.push(node("mallory", &mallory, 66, "10.99.4.0/24"));
    step(
        r,
        "mallory claims node-d's pod CIDR: refused, nothing changes",
        &nodes,
    )
    .await?;

    let device = backends.device.state().unwrap_or_default();
    let (link, routes) = backends.network.state();
    println!(
        "\nThe in-memory host now has {} WireGuard peers, link up: {}",
        device.peers.len(),
        link.up
    );
    println!(
        "routes via wormhole0: {routes:?}; {} backend writes in all",
        backends.writes()
    );
    Ok(())
}
