//! Only what belongs enters the tunnel (issue 20): this node's own traffic, its pods, and
//! DNAT'd (Service) traffic. A host on the underlay that holds no key and routes the overlay via
//! a node used to reach another node's pods and overlay address, arriving there as the node it
//! went through (SNAT'd to its overlay address); an external peer could relay through one node
//! into another's pods the same way. Both are dropped now, and counted
//! (`wormhole_firewall_dropped_packets_total{rule="relay_into_the_tunnel"}`). The firewall is
//! the same on every backend, so there is no kernel twin.

use std::time::Duration;

use crate::external::Laptop;
use crate::harness::{
    BIN, Backend, Cluster, Netns, http_get, poll, pubkey, root_or_skip, scaled, sh,
    write_atomically,
};

#[test]
fn nothing_is_relayed_into_the_tunnel() {
    if root_or_skip("nothing_is_relayed_into_the_tunnel") {
        nothing_is_relayed(Backend::Embedded);
    }
}

/// The node's count of packets dropped as relays into the tunnel, from its metrics.
fn relay_drops(c: &Cluster, i: usize) -> u64 {
    let (code, metrics) = http_get(&c.node(i).ns.name, "/metrics").expect("metrics");
    assert_eq!(code, 200, "{metrics}");
    metrics
        .lines()
        .find(|l| {
            l.starts_with("wormhole_firewall_dropped_packets_total{rule=\"relay_into_the_tunnel\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn nothing_is_relayed(backend: Backend) {
    let mut c = Cluster::new(2, backend);
    let laptop = Laptop::plug(&c);
    let private = sh(&[BIN, "genkey"]);
    let public = pubkey(&private);
    let text = format!(
        "external_cidrs = [\"10.98.0.0/24\"]\n{}\n[[external]]\nname = \"laptop\"\n\
         public_key = \"{public}\"\nendpoint = \"192.168.77.150:51820\"\n\
         allowed_ips = [\"10.98.0.2/32\"]\n",
        c.peers_text(&[1, 2], "")
    );
    write_atomically(&c.peers, &text);
    // The firewall's counters are read at every resync.
    c.start_all(&["--resync", "1s"]);
    for i in [1, 2] {
        c.add_pods(i, &["a"]);
    }
    let far_pod = c.pods.iter().find(|p| p.node == 2).unwrap().ip4.clone();

    // A host on the underlay with no key, routing the overlay via node 1.
    let host = Netns::new(format!("{}h", c.prefix));
    host.plug(&c.underlay, &format!("{}xh", c.prefix), "192.168.77.160/24");
    host.sh(&["ip", "route", "add", "10.99.0.0/16", "via", "192.168.77.1"]);
    let ping = |ns: &Netns, source: &str, to: &str| {
        ns.run(&["ping", "-c", "2", "-i", "0.3", "-W", "1", "-I", source, to])
            .status
            .success()
    };
    for to in [far_pod.as_str(), "10.99.2.1"] {
        assert!(
            !ping(&host, "192.168.77.160", to),
            "a host without a key reached {to} through node 1\n{}",
            c.node(1)
                .ns
                .sh(&["nft", "list", "table", "inet", "wormhole"])
        );
    }
    // Each try of the hostile host is counted.
    assert!(
        poll(scaled(Duration::from_secs(10)), || (relay_drops(&c, 1)
            >= 2)
            .then_some(()))
        .is_some(),
        "no relay drops counted on node 1"
    );

    // The laptop reaches node 2's pod directly, through its own tunnel to node 2...
    let conf = sh(&[
        BIN,
        "peer-config",
        "laptop",
        "--peers",
        c.peers.to_str().unwrap(),
    ]);
    let laptop = Laptop::configure(&c, laptop, &conf, &private);
    assert!(laptop.ping("10.98.0.2", &far_pod), "laptop -> node 2's pod");
    // ...but not through node 1: a laptop that sends node 2's pod CIDR to node 1 is dropped
    // there (it used to arrive at node 2 as node 1's overlay address).
    let wg = |args: &[&str]| laptop.ns.sh(&[&["wg"], args].concat());
    let node1 = c.node(1).public_key.clone();
    let node2 = c.node(2).public_key.clone();
    wg(&["set", &laptop.iface, "peer", &node2, "remove"]);
    wg(&[
        "set",
        &laptop.iface,
        "peer",
        &node1,
        "allowed-ips",
        "10.99.1.0/24,10.99.2.0/24,fd99:0:0:1::/64",
    ]);
    let before = relay_drops(&c, 1);
    assert!(
        !laptop.ping("10.98.0.2", &far_pod),
        "the laptop reached node 2's pod through node 1"
    );
    assert!(
        poll(scaled(Duration::from_secs(10)), || (relay_drops(&c, 1)
            > before)
            .then_some(()))
        .is_some(),
        "the laptop's relay was not counted"
    );
    // What belongs still passes: node 1's own pod, through node 1.
    let near_pod = c.pods.iter().find(|p| p.node == 1).unwrap().ip4.clone();
    assert!(
        laptop.ping("10.98.0.2", &near_pod),
        "laptop -> node 1's pod"
    );
}
