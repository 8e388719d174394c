//! Encryption proof: while pods talk (ICMP over IPv4 and IPv6, a TCP transfer), the underlay
//! carries nothing but WireGuard's UDP between the nodes' underlay addresses.

use std::time::Duration;

use wormhole_linux::Backend;

use crate::harness::{Cluster, overlay_ips, root_or_skip, underlay_ip};

/// The WireGuard port of every node.
const PORT: u16 = 51820;

/// What one line of `tcpdump -nn` on the underlay bridge shows.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The underlay's own housekeeping: ARP, and IGMP membership reports of its interfaces.
    Housekeeping,
    /// A UDP datagram between two nodes' WireGuard ports, with its UDP payload length.
    WireGuard(u64),
}

/// Classifies a capture line; anything but ARP and node-to-node UDP on the WireGuard port is
/// an error naming the line.
fn classify(line: &str, underlay: &[String]) -> Result<Seen, String> {
    let bad = || Err(format!("unexpected packet on the underlay: {line}"));
    // Inner addresses or protocols anywhere in the line are never acceptable.
    for marker in ["10.99.", "fd99:", "ICMP", "Flags [", "IP6", "TCP"] {
        if line.contains(marker) {
            return bad();
        }
    }
    let Some((_time, rest)) = line.split_once(' ') else {
        return bad();
    };
    if rest.starts_with("ARP, ") {
        return Ok(Seen::Housekeeping);
    }
    // "IP 192.168.77.1.51820 > 192.168.77.2.51820: UDP, length 148"
    let Some(rest) = rest.strip_prefix("IP ") else {
        return bad();
    };
    let Some((src, rest)) = rest.split_once(" > ") else {
        return bad();
    };
    // "IP 0.0.0.0 > 224.0.0.22: igmp v3 report, 1 group record(s)"
    if let Some((dst, what)) = rest.split_once(": ") {
        let local_source = src == "0.0.0.0" || underlay.iter().any(|ip| ip == src);
        if local_source && dst.starts_with("224.0.0.") && what.starts_with("igmp ") {
            return Ok(Seen::Housekeeping);
        }
    }
    let Some((dst, rest)) = rest.split_once(": UDP, length ") else {
        return bad();
    };
    let node_port = |end: &str| {
        underlay
            .iter()
            .any(|ip| end.strip_prefix(ip.as_str()) == Some(&format!(".{PORT}")))
    };
    if !node_port(src) || !node_port(dst) || src == dst {
        return bad();
    }
    match rest.trim().parse() {
        Ok(length) => Ok(Seen::WireGuard(length)),
        Err(_) => bad(),
    }
}

/// The number after `"key":` in the JSON object following `anchor` (no JSON parser in the
/// dev-dependencies; iperf3's output is regular enough).
fn json_number(text: &str, anchor: &str, key: &str) -> u64 {
    let after = &text[text
        .find(anchor)
        .unwrap_or_else(|| panic!("no {anchor} in {text}"))..];
    let after = &after[after
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} after {anchor} in {text}"))
        + key.len()
        + 3..];
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

fn encrypted_on_the_wire(backend: Backend) {
    let cluster = Cluster::new(2, backend);
    cluster.reconcile_all();
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let underlay: Vec<String> = (1..=2).map(underlay_ip).collect();
    let [v4_2, _] = overlay_ips(2);
    let [v4_1, _] = overlay_ips(1);
    assert!(
        n1.ping_until(&v4_2, 10),
        "n1 cannot reach {v4_2} ({backend:?})"
    );

    // Control: the capture and the classifier do see cleartext when there is some.
    let capture = cluster.capture();
    assert!(n1.ping(&underlay_ip(2), 2));
    let lines = capture.stop();
    let cleartext: Vec<_> = lines
        .iter()
        .filter(|l| classify(l, &underlay).is_err())
        .collect();
    assert!(
        cleartext
            .iter()
            .any(|l| l.contains("192.168.77.1 > 192.168.77.2: ICMP echo request")),
        "the control capture missed a cleartext ping: {lines:#?}"
    );

    // The real thing: pings both ways on both families, then a TCP transfer.
    let mut server = n2.ns.spawn(&["iperf3", "-s", "-1", "-B", &v4_2]);
    let capture = cluster.capture();
    for (a, b) in [(n1, n2), (n2, n1)] {
        for target in overlay_ips(b.index) {
            assert!(a.ping(&target, 3), "n{} cannot reach {target}", a.index);
        }
    }
    let mut attempts = 0;
    let report = loop {
        // Rate-limited so that tcpdump keeps up with every packet.
        let out = n1.ns.run(&[
            "iperf3", "-c", &v4_2, "-B", &v4_1, "-t", "1", "-b", "10M", "-J",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break text;
        }
        attempts += 1;
        assert!(attempts < 50, "iperf3 client failed: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines = capture.stop();
    let _ = server.kill();
    let _ = server.wait();
    let received = json_number(&report, "\"sum_received\"", "bytes");
    assert!(
        received > 500_000,
        "the TCP transfer moved {received} bytes"
    );

    let mut packets = 0u64;
    let mut bytes = 0u64;
    let mut problems = Vec::new();
    for line in &lines {
        match classify(line, &underlay) {
            Ok(Seen::WireGuard(length)) => {
                packets += 1;
                bytes += length;
            }
            Ok(Seen::Housekeeping) => {}
            Err(e) => problems.push(e),
        }
    }
    assert!(
        problems.is_empty(),
        "{backend:?}: cleartext or foreign packets on the underlay:\n{}",
        problems.join("\n")
    );
    // 12 pings and their replies plus the transfer: the capture really watched the traffic.
    assert!(
        packets > 300,
        "{backend:?}: only {packets} WireGuard packets captured"
    );
    assert!(
        bytes >= received,
        "{backend:?}: {bytes} bytes of WireGuard payload cannot carry {received} bytes of TCP"
    );
}

#[test]
fn classifier_accepts_only_wireguard_and_housekeeping() {
    let underlay = vec!["192.168.77.1".to_owned(), "192.168.77.2".to_owned()];
    let ok = "10:00:00.000001 IP 192.168.77.1.51820 > 192.168.77.2.51820: UDP, length 148";
    assert_eq!(classify(ok, &underlay), Ok(Seen::WireGuard(148)));
    let arp = "10:00:00.000001 ARP, Request who-has 192.168.77.2 tell 192.168.77.1, length 28";
    assert_eq!(classify(arp, &underlay), Ok(Seen::Housekeeping));
    let igmp = "10:00:00.000001 IP 0.0.0.0 > 224.0.0.22: igmp v3 report, 1 group record(s)";
    assert_eq!(classify(igmp, &underlay), Ok(Seen::Housekeeping));
    for bad in [
        "10:00:00.000001 IP 10.99.1.1 > 10.99.2.1: ICMP echo request, id 1, seq 1, length 64",
        "10:00:00.000001 IP 192.168.77.1.51820 > 192.168.77.2.5201: UDP, length 148",
        "10:00:00.000001 IP 192.168.77.1.51820 > 192.168.77.9.51820: UDP, length 148",
        "10:00:00.000001 IP 192.168.77.1.40000 > 192.168.77.2.5201: Flags [S], seq 1, length 0",
        "10:00:00.000001 IP6 fe80::1 > ff02::2: ICMP6, router solicitation, length 16",
        "10:00:00.000001 STP 802.1d, Config, Flags [none]",
        "10:00:00.000001 IP 10.99.1.1 > 224.0.0.22: igmp v3 report, 1 group record(s)",
        "10:00:00.000001 IP 192.168.77.1 > 224.0.0.251: igmp v2 report 10.99.1.1",
        "10:00:00.000001 IP 192.168.77.1 > 192.168.77.2: ICMP echo request, id 1, seq 1, length 64",
    ] {
        assert!(classify(bad, &underlay).is_err(), "{bad}");
    }
}

#[test]
fn encrypted_on_the_wire_userspace_wireguard_go() {
    if root_or_skip("encrypted_on_the_wire_userspace_wireguard_go") {
        encrypted_on_the_wire(Backend::Userspace);
    }
}

#[test]
fn encrypted_on_the_wire_embedded() {
    if root_or_skip("encrypted_on_the_wire_embedded") {
        encrypted_on_the_wire(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn encrypted_on_the_wire_kernel() {
    if root_or_skip("encrypted_on_the_wire_kernel") {
        encrypted_on_the_wire(Backend::Kernel);
    }
}
