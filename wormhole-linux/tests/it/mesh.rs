//! Meshes of 2 and 3 nodes on the real backends: connectivity over IPv4 and IPv6.

use wormhole_linux::Backend;

use crate::harness::{Cluster, overlay_ips, root_or_skip};

fn mesh_pings(n: usize, backend: Backend) {
    let cluster = Cluster::new(n, backend);
    cluster.reconcile_all();
    for a in &cluster.nodes {
        for b in &cluster.nodes {
            if a.index == b.index {
                continue;
            }
            for target in overlay_ips(b.index) {
                assert!(
                    a.ping(&target, 2),
                    "n{} cannot reach {target} ({backend:?})",
                    a.index
                );
            }
        }
    }
    // A second pass changes nothing.
    for node in &cluster.nodes {
        let plan = node.resync().unwrap();
        assert!(
            plan.firewall.is_none() && plan.device.changes.is_empty() && plan.routes.is_empty(),
            "{plan}"
        );
    }
}

#[test]
fn two_nodes_embedded() {
    if root_or_skip("two_nodes_embedded") {
        mesh_pings(2, Backend::Embedded);
    }
}

#[test]
fn three_nodes_embedded() {
    if root_or_skip("three_nodes_embedded") {
        mesh_pings(3, Backend::Embedded);
    }
}

#[test]
fn three_nodes_userspace_wireguard_go() {
    if root_or_skip("three_nodes_userspace_wireguard_go") {
        mesh_pings(3, Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn two_nodes_kernel() {
    if root_or_skip("two_nodes_kernel") {
        mesh_pings(2, Backend::Kernel);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn three_nodes_kernel() {
    if root_or_skip("three_nodes_kernel") {
        mesh_pings(3, Backend::Kernel);
    }
}
