//! Drift repair: a peer, a route and the whole nft table deleted by hand are all restored by one
//! reconcile pass, which changes nothing else.

use wormhole_core::{DeviceChange, RouteChange};
use wormhole_linux::Backend;

use crate::harness::{Cluster, overlay_ips, root_or_skip};

fn one_pass_repairs_drift(backend: Backend) {
    let cluster = Cluster::new(3, backend);
    cluster.reconcile_all();
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    for target in overlay_ips(2) {
        assert!(n1.ping_until(&target, 10), "n1 cannot reach {target}");
    }
    let key2 = n2.key.public_key();
    let key2_text = key2.to_base64();
    let route = format!("10.99.2.0/24 dev {}", n1.iface);

    // Drift, by hand.
    n1.ns
        .sh(&["wg", "set", &n1.iface, "peer", &key2_text, "remove"]);
    n1.ns
        .sh(&["ip", "route", "del", "10.99.2.0/24", "dev", &n1.iface]);
    n1.ns.sh(&["nft", "delete", "table", "inet", "wormhole"]);
    assert!(!n1.wg(&["peers"]).contains(&key2_text));
    assert!(
        !n1.ns
            .sh(&["ip", "route", "show", "proto", "87"])
            .contains(&route)
    );
    assert!(
        !n1.ns
            .run(&["nft", "list", "table", "inet", "wormhole"])
            .status
            .success()
    );
    assert!(
        !n1.ping(&overlay_ips(2)[0], 1),
        "reachable despite the drift"
    );

    // One pass puts back exactly what was deleted.
    let plan = n1.resync().unwrap();
    assert!(plan.firewall.is_some(), "{plan}");
    assert!(!plan.device.create, "{plan}");
    assert!(
        matches!(&plan.device.changes[..], [DeviceChange::AddPeer(k, _)] if *k == key2),
        "{plan}"
    );
    assert!(plan.link.is_empty(), "{plan}");
    assert_eq!(
        plan.routes,
        vec![RouteChange::Add("10.99.2.0/24".parse().unwrap())],
        "{plan}"
    );

    let allowed = n1.wg(&["allowed-ips"]);
    assert!(
        allowed.contains(&format!("{key2_text}\t10.99.2.0/24 fd99:0:0:2::/64"))
            || allowed.contains(&format!("{key2_text}\tfd99:0:0:2::/64 10.99.2.0/24")),
        "{allowed}"
    );
    let endpoints = n1.wg(&["endpoints"]);
    assert!(
        endpoints.contains(&format!("{key2_text}\t192.168.77.2:51820")),
        "{endpoints}"
    );
    let ours = n1.ns.sh(&["ip", "route", "show", "proto", "87"]);
    assert!(ours.contains(&route), "{ours}");
    let table = n1.ns.sh(&["nft", "list", "table", "inet", "wormhole"]);
    for rule in [
        "\"no cleartext\"",
        "\"spoofed overlay source\"",
        "10.99.0.0/16",
    ] {
        assert!(table.contains(rule), "{rule} missing from\n{table}");
    }
    for target in overlay_ips(2).into_iter().chain(overlay_ips(3)) {
        assert!(
            n1.ping_until(&target, 5),
            "n1 cannot reach {target} after the repair"
        );
    }
    let plan = n1.resync().unwrap();
    assert!(plan.is_empty(), "{plan}");
}

#[test]
fn one_pass_repairs_drift_userspace_wireguard_go() {
    if root_or_skip("one_pass_repairs_drift_userspace_wireguard_go") {
        one_pass_repairs_drift(Backend::Userspace);
    }
}

#[test]
fn one_pass_repairs_drift_embedded() {
    if root_or_skip("one_pass_repairs_drift_embedded") {
        one_pass_repairs_drift(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn one_pass_repairs_drift_kernel() {
    if root_or_skip("one_pass_repairs_drift_kernel") {
        one_pass_repairs_drift(Backend::Kernel);
    }
}
