//! Sessions survive: changing one peer touches that peer only. With traffic flowing from node 1
//! to node 2, node 3's entry changes; node 1's session with node 2 carries on without a new
//! handshake (its latest-handshake time stays put while its counters grow).

use std::time::{Duration, SystemTime};

use wormhole_core::PeerStats;
use wormhole_core::{DeviceChange, PeerField};
use wormhole_linux::Backend;

use crate::harness::{Cluster, Node, chain, overlay_ips, root_or_skip};

/// Node 1's counters for `peer` as our backend reads them.
fn stats(n1: &Node, peer: &Node) -> PeerStats {
    n1.observed()
        .stats
        .get(&peer.key.public_key())
        .copied()
        .unwrap_or_else(|| panic!("n1 has no peer n{}", peer.index))
}

/// `wg show IFACE latest-handshakes` for `peer` (seconds since the epoch).
fn wg_latest_handshake(n1: &Node, peer: &Node) -> u64 {
    let key = peer.key.public_key().to_base64();
    let text = n1.wg(&["latest-handshakes"]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}\t")))
        .unwrap_or_else(|| panic!("no n{} in {text}", peer.index))
        .trim()
        .parse()
        .unwrap()
}

/// How far apart two handshake times are.
fn apart(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

fn changing_one_peer_keeps_the_others_sessions(backend: Backend) {
    let cluster = Cluster::new(3, backend);
    cluster.reconcile_all();
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let [target, _] = overlay_ips(2);

    // Traffic to node 2 until a session exists.
    let mut tries = 0;
    let before = loop {
        n1.ping(&target, 1);
        let s = stats(n1, n2);
        if s.latest_handshake.is_some() {
            break s;
        }
        tries += 1;
        assert!(tries < 20, "no handshake with n2 ({backend:?})");
    };
    let handshake = before.latest_handshake.unwrap();
    let wg_handshake = matches!(backend, Backend::Userspace | Backend::Kernel)
        .then(|| wg_latest_handshake(n1, n2));
    // Any new handshake from now on has a visibly later time.
    std::thread::sleep(Duration::from_millis(1500));

    // Node 3 gets a persistent keepalive.
    let mut snapshot = cluster.snapshot();
    snapshot.nodes[2].persistent_keepalive = Some(25);
    let plan = n1
        .reconcile(&snapshot)
        .unwrap_or_else(|e| panic!("{backend:?}: changing n3 failed: {}", chain(&e)));
    assert_eq!(
        plan.device.changes,
        vec![DeviceChange::UpdatePeer(
            n3.key.public_key(),
            vec![PeerField::Keepalive(Some(25))]
        )],
        "{plan}"
    );
    assert!(
        !plan.device.create && plan.firewall.is_none() && plan.link.is_empty(),
        "{plan}"
    );
    assert!(plan.routes.is_empty(), "{plan}");
    let n3_config = &n1.observed().config.peers[&n3.key.public_key()];
    assert_eq!(n3_config.persistent_keepalive, Some(25));

    // More traffic to node 2 over the same session.
    assert!(n1.ping(&target, 3), "n1 lost n2 after changing n3");
    let after = stats(n1, n2);
    assert!(
        after.tx_bytes > before.tx_bytes && after.rx_bytes > before.rx_bytes,
        "{backend:?}: counters did not grow: {before:?} -> {after:?}"
    );
    let now = after.latest_handshake.expect("the session vanished");
    // The embedded device reports the handshake's age (the time is now minus that): allow for that.
    let slack = match backend {
        Backend::Userspace | Backend::Kernel => Duration::ZERO,
        _ => Duration::from_millis(600),
    };
    assert!(
        apart(now, handshake) <= slack,
        "{backend:?}: a new handshake with n2: {handshake:?} -> {now:?}"
    );
    if let Some(seconds) = wg_handshake {
        assert_eq!(wg_latest_handshake(n1, n2), seconds, "wg show disagrees");
    }
}

#[test]
fn changing_one_peer_keeps_the_others_sessions_userspace_wireguard_go() {
    if root_or_skip("changing_one_peer_keeps_the_others_sessions_userspace_wireguard_go") {
        changing_one_peer_keeps_the_others_sessions(Backend::Userspace);
    }
}

#[test]
fn changing_one_peer_keeps_the_others_sessions_embedded() {
    if root_or_skip("changing_one_peer_keeps_the_others_sessions_embedded") {
        changing_one_peer_keeps_the_others_sessions(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn changing_one_peer_keeps_the_others_sessions_kernel() {
    if root_or_skip("changing_one_peer_keeps_the_others_sessions_kernel") {
        changing_one_peer_keeps_the_others_sessions(Backend::Kernel);
    }
}
