//! The embedded (gotatun) device's own cases: the two gotatun 0.10.2 bugs it works around
//! (`wormhole-linux/src/wireguard/GOTATUN-NOTES.md`), and a peer change on a 1,000-peer device
//! made in place.

use std::time::{Duration, SystemTime};

use wormhole_core::{DeviceChange, DevicePlan, NodeEntry, PeerField, PeerStats, PrivateKey};
use wormhole_linux::Backend;

use crate::harness::{Cluster, Node, chain, overlay_ips, root_or_skip};

/// Node `n`'s counters for `peer` as the device reports them.
fn stats(n: &Node, peer: &Node) -> PeerStats {
    n.observed()
        .stats
        .get(&peer.key.public_key())
        .copied()
        .unwrap_or_else(|| panic!("n{} has no peer n{}", n.index, peer.index))
}

/// How far apart two handshake times are.
fn apart(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

/// The UDP ports bound in `n`'s namespace (`ss -uln`).
fn udp_listening(n: &Node) -> String {
    n.ns.sh(&["ss", "-Huln"])
}

/// Pings until `from` has a session with `to`; its handshake time.
fn session(from: &Node, to: &Node) -> SystemTime {
    let [target, _] = overlay_ips(to.index);
    for _ in 0..20 {
        from.ping(&target, 1);
        if let Some(t) = stats(from, to).latest_handshake {
            return t;
        }
    }
    panic!("no handshake n{} -> n{}", from.index, to.index)
}

/// gotatun bug 1: a device built with no peers never binds its UDP socket (peers added later do
/// not bring the connection up). Our device sets the key after `build()`, which binds: a node
/// that starts alone listens, and a peer that appears later reaches it.
#[test]
fn a_device_started_with_no_peers_listens_embedded() {
    if !root_or_skip("a_device_started_with_no_peers_listens_embedded") {
        return;
    }
    let cluster = Cluster::new(2, Backend::Embedded);
    let [n1, n2] = [&cluster.nodes[0], &cluster.nodes[1]];
    let mut alone = cluster.snapshot();
    alone.nodes.truncate(1);
    n1.reconcile(&alone)
        .unwrap_or_else(|e| panic!("n1 alone: {}", chain(&e)));
    assert!(n1.observed().config.peers.is_empty());
    let ports = udp_listening(n1);
    assert!(ports.contains(":51820"), "n1 does not listen: {ports}");

    // n2 learns of n1 first and n1 only afterwards: n2's handshake must find n1's socket.
    n2.reconcile(&cluster.snapshot()).unwrap();
    n1.reconcile(&cluster.snapshot()).unwrap();
    let [n1_ip, _] = overlay_ips(1);
    assert!(n2.ping_until(&n1_ip, 10), "n2 cannot reach n1");
}

/// gotatun bug 2: after a listen-port change under load, `Device::wait()` can report a false
/// fatal error ("channel closed"). The device must not be taken for dead (which would re-create
/// it and drop every session): it keeps its state and sessions, and traffic flows on.
#[test]
fn listen_port_changes_under_traffic_keep_the_device_embedded() {
    if !root_or_skip("listen_port_changes_under_traffic_keep_the_device_embedded") {
        return;
    }
    let cluster = Cluster::new(2, Backend::Embedded);
    cluster.reconcile_all();
    let [n1, n2] = [&cluster.nodes[0], &cluster.nodes[1]];
    let handshake = session(n1, n2);
    let before = stats(n1, n2);
    let [target, _] = overlay_ips(2);
    // Load: a flood ping both ways while the port changes ten times.
    let mut floods = [
        n1.ns
            .spawn(&["ping", "-f", "-q", "-s", "1200", "-w", "6", &target]),
        n2.ns.spawn(&[
            "ping",
            "-f",
            "-q",
            "-s",
            "1200",
            "-w",
            "6",
            &overlay_ips(1)[0],
        ]),
    ];
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..10u16 {
        let device = n1.device.clone();
        let plan = DevicePlan {
            create: false,
            changes: vec![DeviceChange::SetListenPort(51821 + i % 2)],
        };
        n1.block_on(async move { device.apply(&plan).await })
            .unwrap_or_else(|e| panic!("port change {i}: {}", chain(&e)));
        std::thread::sleep(Duration::from_millis(300));
    }
    for f in &mut floods {
        let _ = f.wait();
    }
    // Still the same device (a re-created one would have no peers, no session, no counters).
    let observed = n1.observed();
    assert_eq!(observed.config.listen_port, Some(51822));
    assert!(n1.ping(&target, 3), "n1 lost n2 after the port changes");
    let after = stats(n1, n2);
    assert!(
        after.tx_bytes > before.tx_bytes && after.rx_bytes > before.rx_bytes,
        "{before:?} -> {after:?}"
    );
    assert!(
        apart(after.latest_handshake.unwrap(), handshake) <= Duration::from_millis(600)
            || after.latest_handshake.unwrap() > handshake,
        "the session vanished"
    );
    // The next pass puts the configured port back, and the device is still not re-created.
    let plan = n1.resync().unwrap();
    assert!(!plan.device.create, "{plan}");
    assert_eq!(n1.observed().config.listen_port, Some(51820));
    assert!(n1.ping_until(&target, 10), "n1 lost n2 after the repair");
}

/// A 1,000-peer device (997 extra peers with no endpoint): one peer change is one in-place
/// update; the other peer's session is untouched and the changed peer keeps its own.
#[test]
fn one_change_on_a_thousand_peer_device_is_in_place_embedded() {
    if !root_or_skip("one_change_on_a_thousand_peer_device_is_in_place_embedded") {
        return;
    }
    let cluster = Cluster::new(3, Backend::Embedded);
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let mut snapshot = cluster.snapshot();
    for i in 0..997usize {
        snapshot.nodes.push(NodeEntry {
            name: format!("x{i}"),
            public_key: PrivateKey::generate().public_key().to_base64(),
            endpoint: None,
            pod_cidrs: vec![format!("10.99.{}.{}/28", 100 + i / 16, (i % 16) * 16)],
            persistent_keepalive: None,
            origin: String::new(),
        });
    }
    for n in [n2, n3] {
        n.reconcile(&cluster.snapshot()).unwrap();
    }
    n1.reconcile(&snapshot)
        .unwrap_or_else(|e| panic!("n1: {}", chain(&e)));
    assert_eq!(
        n1.observed().config.peers.len(),
        999,
        "peers besides n1 itself"
    );
    let (h2, h3) = (session(n1, n2), session(n1, n3));
    let (before2, before3) = (stats(n1, n2), stats(n1, n3));
    std::thread::sleep(Duration::from_millis(1500));

    // n3 gets a keepalive: one in-place update.
    snapshot.nodes[2].persistent_keepalive = Some(25);
    let plan = n1.reconcile(&snapshot).unwrap();
    assert_eq!(
        plan.device.changes,
        vec![DeviceChange::UpdatePeer(
            n3.key.public_key(),
            vec![PeerField::Keepalive(Some(25))]
        )],
        "{plan}"
    );
    let observed = n1.observed();
    assert_eq!(observed.config.peers.len(), 999);
    assert_eq!(
        observed.config.peers[&n3.key.public_key()].persistent_keepalive,
        Some(25)
    );
    for (peer, handshake, before) in [(n2, h2, before2), (n3, h3, before3)] {
        assert!(
            n1.ping(&overlay_ips(peer.index)[0], 3),
            "n1 lost n{}",
            peer.index
        );
        let after = stats(n1, peer);
        assert!(
            after.tx_bytes > before.tx_bytes && after.rx_bytes > before.rx_bytes,
            "n{}: {before:?} -> {after:?}",
            peer.index
        );
        let now = after.latest_handshake.expect("the session vanished");
        assert!(
            apart(now, handshake) <= Duration::from_millis(600),
            "n{}: a new handshake: {handshake:?} -> {now:?}",
            peer.index
        );
    }
}

/// gotatun bug 3: a private-key change rebinds the same port, which can fail with `EADDRINUSE`
/// (the old socket outlives its stop for a moment) and leave the device with no connection. Key
/// changes under traffic must succeed and leave a working data plane.
#[test]
fn key_changes_under_traffic_rebind_embedded() {
    if !root_or_skip("key_changes_under_traffic_rebind_embedded") {
        return;
    }
    let cluster = Cluster::new(2, Backend::Embedded);
    cluster.reconcile_all();
    let [n1, n2] = [&cluster.nodes[0], &cluster.nodes[1]];
    session(n1, n2);
    let [target, _] = overlay_ips(2);
    let mut flood = n1
        .ns
        .spawn(&["ping", "-f", "-q", "-s", "1200", "-w", "5", &target]);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..10 {
        // Another key and back: two rebinds of port 51820 each round.
        for key in [PrivateKey::generate(), n1.key.clone()] {
            let device = n1.device.clone();
            let plan = DevicePlan {
                create: false,
                changes: vec![DeviceChange::SetPrivateKey(key)],
            };
            n1.block_on(async move { device.apply(&plan).await })
                .unwrap_or_else(|e| panic!("key change {i}: {}", chain(&e)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = flood.wait();
    let observed = n1.observed();
    assert_eq!(observed.config.private_key.as_ref(), Some(&n1.key));
    assert!(
        udp_listening(n1).contains(":51820"),
        "{}",
        udp_listening(n1)
    );
    assert!(
        n1.ping_until(&target, 10),
        "n1 lost n2 after the key changes"
    );
    let plan = n1.resync().unwrap();
    assert!(!plan.device.create, "re-created: {plan}");
}
