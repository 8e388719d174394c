//! Nodes behind NAT (issue 13), in file mode: a node whose router masquerades it and forwards
//! no port inward publishes no endpoint; its own keepalives (and probes) reach its peers, which
//! learn its public address from its handshakes (WireGuard roaming), and from then on its pods
//! reach and are reached from every other node's pods. The underlay carries only WireGuard.

use std::time::Duration;

use crate::harness::{
    Backend, Cluster, assert_only_wireguard, icmp_matrix, poll, root_or_skip, scaled,
    write_atomically,
};

#[test]
fn a_node_behind_nat_joins_the_mesh_embedded() {
    if root_or_skip("a_node_behind_nat_joins_the_mesh_embedded") {
        behind_nat(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn a_node_behind_nat_joins_the_mesh_kernel() {
    if root_or_skip("a_node_behind_nat_joins_the_mesh_kernel") {
        behind_nat(Backend::Kernel);
    }
}

fn behind_nat(backend: Backend) {
    let mut c = Cluster::new(2, backend);
    let hidden = c.add_node_behind_nat(backend);
    write_atomically(&c.peers, &c.peers_text(&[1, 2, hidden], ""));
    // The public nodes first: a handshake to a port nobody listens on yet would draw an ICMP
    // port-unreachable on the underlay.
    for i in [1, 2, hidden] {
        c.node_mut(i).start(&[]);
        c.node_mut(i).wait_ready();
    }
    let capture = c.capture();
    // n3 is reached once it has spoken: its keepalive (on every peer, as it declares one) or
    // its first probe.
    let router = format!("192.168.77.{}:51820", 200 + hidden);
    for i in [1, 2] {
        let node = c.node(i);
        let learned = poll(scaled(Duration::from_secs(30)), || {
            let view = node.status_json();
            let row = view["peers"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "n3")?
                .clone();
            (row["state"] == "ok").then_some(row)
        });
        let row = learned.unwrap_or_else(|| {
            panic!(
                "n{i} never heard from n3 behind NAT\n{}\n{}",
                node.status(&[]).1,
                c.logs()
            )
        });
        assert_eq!(
            row["endpoint"],
            router.as_str(),
            "learned from the handshake: {row}"
        );
    }
    for i in [1, 2, hidden] {
        c.add_pods(i, &["a"]);
    }
    let (pings, failures) = icmp_matrix(&c.pods);
    assert!(
        failures.is_empty(),
        "{} of {pings} pod pairs failed (both ways, n3 behind NAT):\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        c.logs()
    );
    let packets = capture.stop();
    let wireguard = assert_only_wireguard(&packets);
    assert!(wireguard > 0, "no WireGuard packets seen");
}
