//! Three nodes from one peers file, two pods per node attached from the daemon's own conflist:
//! every pod reaches every pod on the other nodes over ICMP and TCP, IPv4 and IPv6, and the
//! underlay carries nothing but WireGuard's UDP.

use std::net::IpAddr;

use crate::harness::{
    Backend, Cluster, TcpEcho, assert_only_wireguard, icmp_matrix, root_or_skip, tcp_matrix,
    underlay_offenders,
};

/// Bytes sent over each TCP connection of the matrix: many full-size segments.
const TCP_BYTES: usize = 256 * 1024;

#[test]
fn mesh_embedded() {
    if root_or_skip("mesh_embedded") {
        mesh(Backend::Embedded);
    }
}

#[test]
fn mesh_userspace() {
    if root_or_skip("mesh_userspace") {
        mesh(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn mesh_kernel() {
    if root_or_skip("mesh_kernel") {
        mesh(Backend::Kernel);
    }
}

fn mesh(backend: Backend) {
    let mut c = Cluster::new(3, backend);
    c.start_all(&[]);

    for node in &c.nodes {
        // The conflist is the daemon's: this node's pod CIDRs on its bridge, at the WireGuard MTU.
        let conf = node.conflist();
        let status = node.status_json();
        assert_eq!(status["backend"], backend.as_str(), "{status}");
        let mtu = status["mtu"].as_u64().unwrap();
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["type"], "bridge", "{conf}");
        assert_eq!(bridge["mtu"].as_u64(), Some(mtu), "{conf}");
        let i = node.index;
        assert_eq!(
            bridge["ipam"]["ranges"],
            serde_json::json!([[{"subnet": format!("10.99.{i}.0/24")}],
                               [{"subnet": format!("fd99:0:0:{i}::/64")}]]),
            "{conf}"
        );
        let link = node.ns.sh(&["ip", "-o", "link", "show", &node.iface]);
        assert!(link.contains(&format!(" mtu {mtu} ")), "{link}");
    }
    for i in 1..=3 {
        c.add_pods(i, &["a", "b"]);
    }
    let mtu = c.node(1).status_json()["mtu"].as_u64().unwrap();
    for pod in &c.pods {
        let link = pod.ns.sh(&["ip", "-o", "link", "show", "eth0"]);
        assert!(
            link.contains(&format!(" mtu {mtu} ")),
            "{}: pod MTU is not the WireGuard MTU {mtu}: {link}",
            pod.name
        );
        assert!(pod.ip4.parse::<IpAddr>().is_ok() && pod.ip6.parse::<IpAddr>().is_ok());
    }

    let servers: Vec<TcpEcho> = c.pods.iter().map(|p| TcpEcho::start(&p.ns.name)).collect();
    let capture = c.capture();
    let (pings, icmp_failures) = icmp_matrix(&c.pods);
    let (transfers, tcp_failures) = tcp_matrix(&c.pods, &servers, TCP_BYTES);
    let packets = capture.stop();
    drop(servers);

    let failures: Vec<String> = icmp_failures.into_iter().chain(tcp_failures).collect();
    assert!(
        failures.is_empty(),
        "{} of {} ICMP + {} TCP checks failed:\n{}\n{}",
        failures.len(),
        pings,
        transfers,
        failures.join("\n"),
        c.logs()
    );
    assert_eq!((pings, transfers), (48, 48));
    let wireguard = assert_only_wireguard(&packets);
    // Every ping and every transfer crossed the underlay, encrypted.
    let min = pings * 2 + transfers * TCP_BYTES / 1500;
    assert!(
        wireguard >= min,
        "only {wireguard} WireGuard packets on the underlay, expected at least {min}"
    );

    // Everyone talked to everyone: `wormhole status` is all ok and exits 0.
    for node in &c.nodes {
        let (code, table) = node.status(&[]);
        assert!(
            code.success(),
            "{}: wormhole status: {code}\n{table}",
            node.name
        );
        let others: Vec<String> = (1..=3)
            .filter(|&j| j != node.index)
            .map(|j| format!("n{j}"))
            .collect();
        for other in &others {
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with(other.as_str()) && l.ends_with(" ok")),
                "{}: no ok row for {other}:\n{table}",
                node.name
            );
        }
    }
    eprintln!(
        "mesh ({}): {pings} pings and {transfers} TCP transfers of {TCP_BYTES} bytes answered; \
         {wireguard} packets on the underlay, all WireGuard",
        backend.as_str()
    );
}

/// The underlay check itself: it accepts what a healthy capture holds and catches cleartext.
#[test]
fn underlay_check_catches_cleartext() {
    let healthy = [
        "08:52:31.835851 ARP, Request who-has 192.168.77.1 tell 192.168.77.3, length 28",
        "08:52:31.835880 IP 192.168.77.3.51820 > 192.168.77.1.51820: UDP, length 148",
        "09:00:07.557774 IP 0.0.0.0 > 224.0.0.22: igmp v3 report, 1 group record(s)",
    ]
    .map(String::from);
    assert_eq!(assert_only_wireguard(&healthy), 1);
    for leak in [
        "08:52:31.9 IP 10.99.1.2 > 10.99.2.2: ICMP echo request, id 1, seq 1, length 64",
        "08:52:31.9 IP 192.168.77.1.40000 > 192.168.77.2.5201: Flags [S], seq 1, length 0",
        "08:52:31.9 IP6 fd99:0:0:1::2 > fd99:0:0:2::2: ICMP6, echo request, id 1, seq 1",
        "08:52:31.9 IP 192.168.77.1.53 > 192.168.77.2.53: UDP, length 40",
        "08:52:31.9 IP 10.99.1.2 > 224.0.0.22: igmp v3 report, 1 group record(s)",
    ] {
        let lines = [healthy[1].clone(), healthy[2].clone(), leak.to_owned()];
        assert_eq!(underlay_offenders(&lines), (1, vec![leak]));
    }
}
