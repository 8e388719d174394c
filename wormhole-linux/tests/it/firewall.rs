//! The firewall table `inet wormhole` at work: no cleartext when a route to a remote pod CIDR
//! is pointed at the underlay by hand (also for a host's packet that a kube-proxy-style DNAT
//! re-routes there), and no spoofed overlay sources from the underlay. Each proof has a control
//! run without our table, where the bad thing does happen.

use wormhole_core::RouteChange;
use wormhole_linux::Backend;

use crate::harness::{Cluster, Node, overlay_ips, root_or_skip, underlay_ip};

/// The IPv4 "no cleartext" drop counter of chain `egress` (on the postrouting hook).
fn no_cleartext(node: &Node) -> u64 {
    node.nft_counter("egress", &["ip daddr @cluster4", "\"no cleartext\""])
}

/// A Service address, routed (like any ClusterIP) by the default route to the underlay.
const CLUSTER_IP: &str = "10.96.0.99";

/// kube-proxy's shape for a host's packets to a ClusterIP: a DNAT in the nat output hook at
/// priority -100 (dstnat), after which the kernel re-routes the packet towards `backend`.
fn kube_proxy_dnat(node: &Node, backend: &str) {
    let script = format!(
        "table ip kube-proxy {{\n  chain nat-output {{\n    type nat hook output priority -100; \
         policy accept;\n    ip daddr {CLUSTER_IP} dnat to {backend}\n  }}\n}}\n"
    );
    let path = std::env::temp_dir().join(format!("{}-kube-proxy.nft", node.ns.name));
    std::fs::write(&path, script).unwrap();
    node.ns.sh(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

/// The IPv4 "spoofed overlay source" drop counter of chain `prerouting`.
fn spoofed(node: &Node) -> u64 {
    node.nft_counter(
        "prerouting",
        &["ip saddr @cluster4", "\"spoofed overlay source\""],
    )
}

fn overlay_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains("10.99.")).collect()
}

#[test]
fn no_cleartext_when_a_route_points_at_the_underlay() {
    if root_or_skip("no_cleartext_when_a_route_points_at_the_underlay") {
        no_cleartext_when_a_route_points_at_the_underlay_on(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn no_cleartext_when_a_route_points_at_the_underlay_kernel() {
    if root_or_skip("no_cleartext_when_a_route_points_at_the_underlay_kernel") {
        no_cleartext_when_a_route_points_at_the_underlay_on(Backend::Kernel);
    }
}

fn no_cleartext_when_a_route_points_at_the_underlay_on(backend: Backend) {
    let cluster = Cluster::new(2, backend);
    cluster.reconcile_all();
    let n1 = &cluster.nodes[0];
    let [target, _] = overlay_ips(2);
    assert!(n1.ping_until(&target, 10), "n1 cannot reach {target}");

    // Someone points node 2's pod CIDR at the underlay, replacing our route.
    n1.ns.sh(&[
        "ip",
        "route",
        "replace",
        "10.99.2.0/24",
        "via",
        &underlay_ip(2),
        "dev",
        "eth0",
    ]);
    let before = no_cleartext(n1);
    let capture = cluster.capture();
    assert!(
        !n1.ping(&target, 3),
        "a ping through the underlay got through"
    );
    let lines = capture.stop();
    assert_eq!(
        overlay_lines(&lines),
        Vec::<&String>::new(),
        "overlay traffic in clear on the underlay"
    );
    let after = no_cleartext(n1);
    assert!(
        after >= before + 3,
        "the no-cleartext rule dropped {} packets, not the 3 pings",
        after - before
    );

    // A Service whose backend is that pod: the host's packet to the ClusterIP is routed to the
    // underlay, DNATed to the pod, and re-routed by the foreign route, to the underlay again. It
    // must be dropped too (the rule judges the interface the packet really leaves by).
    n1.ns.sh(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "192.168.77.254",
        "dev",
        "eth0",
    ]);
    kube_proxy_dnat(n1, &target);
    let before = no_cleartext(n1);
    let capture = cluster.capture();
    assert!(
        !n1.ping(CLUSTER_IP, 3),
        "a ping to a DNATed ClusterIP got through the underlay"
    );
    let lines = capture.stop();
    let leaks: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("10.99.") || l.contains(CLUSTER_IP))
        .collect();
    assert_eq!(
        leaks,
        Vec::<&String>::new(),
        "DNATed overlay traffic in clear on the underlay"
    );
    let after = no_cleartext(n1);
    assert!(
        after >= before + 3,
        "the no-cleartext rule dropped {} DNATed packets, not the 3 pings",
        after - before
    );

    // Control: without our table the same pings leave in clear (node 2 may even answer them).
    n1.ns.sh(&["nft", "delete", "table", "inet", "wormhole"]);
    for (to, what) in [(target.as_str(), "ping"), (CLUSTER_IP, "DNATed ping")] {
        let capture = cluster.capture();
        n1.ping(to, 2);
        let lines = capture.stop();
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("> {target}: ICMP echo request"))),
            "the control {what} was not seen in clear: {lines:#?}"
        );
    }
    n1.ns.sh(&["nft", "delete", "table", "ip", "kube-proxy"]);

    // A pass never touches a route it does not own: it fails, saying so, and leaves it be. The
    // firewall goes first, so the table is back before the pass fails.
    let err = n1
        .resync()
        .expect_err("a pass succeeded over a foreign route");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "route 10.99.2.0/24: route conflict: 10.99.2.0/24 via {} dev eth0",
            underlay_ip(2)
        )),
        "{text}"
    );
    let route = n1.ns.sh(&["ip", "route", "show", "10.99.2.0/24"]);
    assert!(
        route.contains(&format!("via {}", underlay_ip(2))),
        "{route}"
    );
    let before = no_cleartext(n1);
    let capture = cluster.capture();
    assert!(!n1.ping(&target, 2));
    let lines = capture.stop();
    assert_eq!(overlay_lines(&lines), Vec::<&String>::new());
    assert!(no_cleartext(n1) >= before + 2);

    // Once the foreign route is gone, one pass restores ours and traffic flows again.
    n1.ns.sh(&["ip", "route", "del", "10.99.2.0/24"]);
    let plan = n1.resync().unwrap();
    assert_eq!(
        plan.routes,
        vec![RouteChange::Add("10.99.2.0/24".parse().unwrap())],
        "{plan}"
    );
    let ours = n1.ns.sh(&["ip", "route", "show", "proto", "87"]);
    assert!(
        ours.contains(&format!("10.99.2.0/24 dev {}", n1.iface)),
        "{ours}"
    );
    for target in overlay_ips(2) {
        assert!(n1.ping_until(&target, 5), "n1 cannot reach {target}");
    }
}

#[test]
fn spoofed_overlay_sources_from_the_underlay_are_dropped() {
    if root_or_skip("spoofed_overlay_sources_from_the_underlay_are_dropped") {
        spoofed_overlay_sources_from_the_underlay_are_dropped_on(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn spoofed_overlay_sources_from_the_underlay_are_dropped_kernel() {
    if root_or_skip("spoofed_overlay_sources_from_the_underlay_are_dropped_kernel") {
        spoofed_overlay_sources_from_the_underlay_are_dropped_on(Backend::Kernel);
    }
}

fn spoofed_overlay_sources_from_the_underlay_are_dropped_on(backend: Backend) {
    let cluster = Cluster::new(2, backend);
    cluster.reconcile_all();
    let n1 = &cluster.nodes[0];
    let [local, _] = overlay_ips(1);
    let [remote, _] = overlay_ips(2);
    assert!(n1.ping_until(&remote, 10), "n1 cannot reach {remote}");
    // Reverse-path filtering off, so that only our table stands in the way.
    for conf in ["all", "default", "eth0"] {
        n1.ns.sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{conf}.rp_filter=0"),
        ]);
    }

    // An attacker on the underlay claims to be pod 10.99.2.5 on node 2.
    let u = &cluster.underlay;
    u.sh(&["ip", "addr", "add", "192.168.77.254/24", "dev", "br0"]);
    u.sh(&["ip", "addr", "add", "10.99.2.5/32", "dev", "br0"]);
    u.sh(&["ip", "route", "add", "10.99.1.0/24", "via", &underlay_ip(1)]);
    let inject = |count: &str| {
        let out = u.run(&[
            "ping",
            "-c",
            count,
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "10.99.2.5",
            &local,
        ]);
        assert!(!out.status.success(), "the spoofed ping got an answer");
    };
    let replies = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("{local} > 10.99.2.5: ICMP echo reply")))
            .count()
    };

    let before = spoofed(n1);
    let capture = n1.ns.capture(&n1.iface);
    inject("3");
    let lines = capture.stop();
    assert_eq!(
        replies(&lines),
        0,
        "n1 answered a spoofed packet: {lines:#?}"
    );
    let after = spoofed(n1);
    assert!(
        after >= before + 3,
        "the anti-spoofing rule dropped {} packets, not the 3 injected",
        after - before
    );

    // Control: without our table node 1 answers, into the tunnel towards the "owner".
    n1.ns.sh(&["nft", "delete", "table", "inet", "wormhole"]);
    let capture = n1.ns.capture(&n1.iface);
    inject("3");
    let lines = capture.stop();
    assert!(
        replies(&lines) >= 3,
        "without the table n1 did not answer the spoofed pings: {lines:#?}"
    );

    // One pass restores the table, and the drop.
    let plan = n1.resync().unwrap();
    assert!(plan.firewall.is_some(), "{plan}");
    assert_eq!(plan.len(), 1, "{plan}");
    let capture = n1.ns.capture(&n1.iface);
    inject("3");
    let lines = capture.stop();
    assert_eq!(
        replies(&lines),
        0,
        "n1 answered a spoofed packet: {lines:#?}"
    );
    assert!(spoofed(n1) >= 3);
}
