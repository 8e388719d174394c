//! Restart safety with the userspace backend (the data plane lives in wireguard-go, outside the
//! daemon): `kill -9` a daemon while a cross-node TCP connection carries data and start it again.
//! The connection survives, and the restart causes no handshake and no peer change anywhere.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{Backend, Cluster, Node, http_get, poll, root_or_skip, scaled, wait_timeout};

/// The device as `wg show IFACE dump` has it, minus the counters: the interface line (public
/// key, port, fwmark) and each peer's key, PSK, endpoint, allowed IPs and keepalive, sorted
/// (wireguard-go lists peers in no particular order).
fn device_config(node: &Node) -> Vec<String> {
    let mut lines: Vec<String> = node
        .wg(&["dump"])
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split('\t').collect();
            if i == 0 {
                // private key, public key, listen port, fwmark: leave the private key out.
                f[1..].join(" ")
            } else {
                // public key, psk, endpoint, allowed ips, handshake, rx, tx, keepalive.
                let mut allowed: Vec<&str> = f[3].split(',').collect();
                allowed.sort();
                [f[0], f[1], f[2], &allowed.join(","), f[7]].join(" ")
            }
        })
        .collect();
    lines[1..].sort();
    lines
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Everything that must not change: n1's device, and every node's latest handshakes.
fn snapshot(c: &Cluster) -> (Vec<String>, Vec<BTreeMap<String, u64>>) {
    (
        device_config(c.node(1)),
        c.nodes.iter().map(Node::handshakes).collect(),
    )
}

#[test]
fn restart_keeps_connections_and_handshakes() {
    if root_or_skip("restart_keeps_connections_and_handshakes") {
        restart_keeps_connections_and_handshakes_on(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn restart_keeps_connections_and_handshakes_kernel() {
    if root_or_skip("restart_keeps_connections_and_handshakes_kernel") {
        restart_keeps_connections_and_handshakes_on(Backend::Kernel);
    }
}

fn restart_keeps_connections_and_handshakes_on(backend: Backend) {
    let mut c = Cluster::new(3, backend);
    c.start_all(&[]);
    for i in 1..=3 {
        c.add_pods(i, &["a"]);
    }
    let (n1a, n2a, n3a) = (c.pod("n1a"), c.pod("n2a"), c.pod("n3a"));
    // Sessions between every pair of nodes.
    for (from, to) in [(n1a, n2a), (n1a, n3a), (n2a, n3a)] {
        assert!(
            from.ping(&to.ip4, 3),
            "{} -> {} before the restart\n{}",
            from.name,
            to.name,
            c.logs()
        );
    }

    // A TCP transfer from a pod on n1 to a pod on n2, 8 s long.
    let mut server = n2a.ns.spawn(&["iperf3", "-s", "-1"]);
    let listening = poll(Duration::from_secs(10), || {
        let out = n2a.ns.sh(&["ss", "-Htln", "sport = :5201"]);
        (!out.trim().is_empty()).then_some(())
    });
    assert!(listening.is_some(), "iperf3 -s did not listen");
    let tx_before = tx_to(c.node(1), &c.node(2).public_key);
    let client = n1a
        .ns
        .spawn(&["iperf3", "-c", &n2a.ip4, "-t", "8", "-i", "1", "-J"]);
    let started = Instant::now();
    // Wait until the connection carries data (1 MiB through n1's tunnel to n2) ...
    let flowing = poll(Duration::from_secs(5), || {
        (tx_to(c.node(1), &c.node(2).public_key) > tx_before + (1 << 20)).then_some(())
    });
    assert!(flowing.is_some(), "no data through the tunnel");
    // ... and until a handshake caused by the restart could not share a second with the last one.
    let latest = c
        .nodes
        .iter()
        .flat_map(|n| n.handshakes().into_values())
        .max();
    let latest = latest.expect("handshakes");
    while now() < latest + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = snapshot(&c);
    for (node, shakes) in c.nodes.iter().zip(&before.1) {
        assert_eq!(shakes.len(), 2, "{}: {shakes:?}", node.name);
        assert!(shakes.values().all(|&t| t > 0), "{}: {shakes:?}", node.name);
    }

    // kill -9 and start again with the same arguments.
    let n1 = c.node_mut(1);
    n1.daemon.take().unwrap().kill9();
    assert_eq!(
        device_config(n1),
        before.0,
        "the device changed when the daemon died"
    );
    n1.start(&[]);
    n1.wait_ready();
    // The restart's first pass with the peers file. `/readyz` alone does not say it happened:
    // see `readyz_after_a_restart_means_the_peers_file_is_applied`.
    let loaded = poll(Duration::from_secs(10), || mesh_loaded(n1, 2).then_some(()));
    assert!(
        loaded.is_some(),
        "n1 did not load its peers after the restart\n{}",
        n1.log_tail()
    );
    let after = snapshot(&c);
    assert!(
        started.elapsed() < scaled(Duration::from_secs(7)),
        "the restart took too long to happen during the transfer ({:?})",
        started.elapsed()
    );

    // The transfer completes on the same connection.
    let mut client = client;
    let code = wait_timeout(&mut client, Duration::from_secs(20));
    let mut json = String::new();
    std::io::Read::read_to_string(client.stdout.as_mut().unwrap(), &mut json).unwrap();
    let _ = wait_timeout(&mut server, Duration::from_secs(5));
    let report: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("iperf3 -J output: {e}: {json}\n{}", c.logs()));
    assert!(
        code.is_some_and(|s| s.success()) && report.get("error").is_none(),
        "iperf3 failed across the restart ({code:?}): {}\n{}",
        report.get("error").unwrap_or(&Value::Null),
        c.logs()
    );
    let intervals: Vec<u64> = report["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sum"]["bytes"].as_u64().unwrap())
        .collect();
    assert!(
        intervals.len() >= 8 && intervals.iter().all(|&b| b > 0),
        "a stall during the restart: bytes per second {intervals:?}"
    );
    assert_eq!(
        report["start"]["connected"].as_array().map(Vec::len),
        Some(1),
        "one data connection, never re-established"
    );

    assert_eq!(
        after.0, before.0,
        "n1's peers or device changed across the restart"
    );
    for ((node, b), a) in c.nodes.iter().zip(&before.1).zip(&after.1) {
        assert_eq!(
            a,
            b,
            "{}: latest handshakes changed across n1's restart\n{}",
            node.name,
            c.logs()
        );
    }
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    eprintln!(
        "restart: {received} bytes in {} one-second intervals across kill -9 + restart, \
         handshakes unchanged",
        intervals.len()
    );
}

/// `/readyz` answers 200 only once the daemon has applied its peers file, also after a restart
/// on a host where the device already exists (the data plane outlived the daemon).
#[test]
fn readyz_after_a_restart_means_the_peers_file_is_applied() {
    if root_or_skip("readyz_after_a_restart_means_the_peers_file_is_applied") {
        readyz_after_a_restart_means_the_peers_file_is_applied_on(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn readyz_after_a_restart_means_the_peers_file_is_applied_kernel() {
    if root_or_skip("readyz_after_a_restart_means_the_peers_file_is_applied_kernel") {
        readyz_after_a_restart_means_the_peers_file_is_applied_on(Backend::Kernel);
    }
}

fn readyz_after_a_restart_means_the_peers_file_is_applied_on(backend: Backend) {
    let mut c = Cluster::new(2, backend);
    c.start_all(&[]);
    let n1 = c.node_mut(1);
    assert!(mesh_loaded(n1, 1), "{}", n1.status_json());
    for attempt in 1..=3 {
        n1.daemon.take().unwrap().kill9();
        n1.start(&[]);
        // `/status` carries the same `ready` as `/readyz` and the peers of the same moment.
        let ns = n1.ns.name.clone();
        let first_ready = poll(Duration::from_secs(30), || {
            let (_, body) = http_get(&ns, "/status")?;
            let status: Value = serde_json::from_str(&body).ok()?;
            (status["ready"] == true).then_some(status)
        })
        .unwrap_or_else(|| panic!("not ready after restart {attempt}\n{}", n1.log_tail()));
        assert!(
            mesh_loaded_in(&first_ready, 1),
            "restart {attempt}: the daemon reports ready (/readyz 200) before it applied its peers \
             file; `/status` at that moment: {first_ready}\n{}",
            n1.log_tail()
        );
        n1.wait_ready();
    }
}

/// `status` lists `peers` peers and the node's own pod CIDRs: a pass applied the peers file.
fn mesh_loaded_in(status: &Value, peers: usize) -> bool {
    status["peers"].as_array().map(Vec::len) == Some(peers)
        && status["pod_cidrs"].as_array().map(Vec::len) == Some(2)
}

fn mesh_loaded(node: &Node, peers: usize) -> bool {
    mesh_loaded_in(&node.status_json(), peers)
}

/// Bytes `node` sent to the peer with `key` (`wg show IFACE transfer`).
fn tx_to(node: &Node, key: &str) -> u64 {
    node.wg(&["transfer"])
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0] == key).then(|| f[2].parse().unwrap())
        })
        .unwrap_or(0)
}
