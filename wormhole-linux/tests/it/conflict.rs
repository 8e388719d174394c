//! A route someone else holds for one peer's pod CIDR fails that peer alone: every other peer's
//! routes and changes are applied, and the status names the foreign route on that peer's row.

use wormhole_core::{Error, FailedItem};
use wormhole_linux::Backend;

use crate::harness::{Cluster, chain, overlay_ips, root_or_skip};

fn a_foreign_route_fails_only_its_peer(backend: Backend) {
    let cluster = Cluster::new(3, backend);
    let (n1, n2, n3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    // Someone else's route to node 2's pod CIDR (exactly; ours is the same prefix).
    n1.ns.sh(&[
        "ip",
        "route",
        "add",
        "10.99.2.0/24",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    let snapshot = cluster.snapshot();
    for node in [n2, n3] {
        node.reconcile(&snapshot)
            .unwrap_or_else(|e| panic!("n{}: {}", node.index, chain(&e)));
    }
    let err = n1.reconcile(&snapshot).unwrap_err();
    let Error::Partial { failures, .. } = &err else {
        panic!("not a partial failure: {}", chain(&err));
    };
    assert_eq!(
        failures.iter().map(|f| f.item).collect::<Vec<_>>(),
        [FailedItem::Route("10.99.2.0/24".parse().unwrap())],
        "{}",
        chain(&err)
    );
    // Node 3 (later in the plan than node 2's route) converged: reachable over both families.
    for target in overlay_ips(3) {
        assert!(
            n1.ping_until(&target, 5),
            "n1 cannot reach {target} ({backend:?})"
        );
    }
    // Node 2's row names the foreign route; node 3's does not.
    let status = n1.reconciler.blocking_lock().status().borrow().clone();
    let problem = status.peer_problems.get(&n2.key.public_key());
    assert_eq!(
        problem.map(String::as_str),
        Some(
            "route conflict: 10.99.2.0/24 dev eth0 proto static (not ours: remove it, or fix the overlap)"
        ),
        "{status:?}"
    );
    assert!(!status.peer_problems.contains_key(&n3.key.public_key()));
    assert!(
        status.ready(),
        "one peer's conflict keeps the node from ready"
    );

    // The foreign route goes: the next pass applies node 2's and clears the problem.
    n1.ns
        .sh(&["ip", "route", "del", "10.99.2.0/24", "proto", "static"]);
    n1.resync().unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(
        n1.ping_until(&overlay_ips(2)[0], 5),
        "n1 cannot reach n2 after the repair"
    );
    let status = n1.reconciler.blocking_lock().status().borrow().clone();
    assert!(
        status.peer_problems.is_empty(),
        "{:?}",
        status.peer_problems
    );
}

#[test]
fn a_foreign_route_fails_only_its_peer_embedded() {
    if root_or_skip("a_foreign_route_fails_only_its_peer_embedded") {
        a_foreign_route_fails_only_its_peer(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn a_foreign_route_fails_only_its_peer_kernel() {
    if root_or_skip("a_foreign_route_fails_only_its_peer_kernel") {
        a_foreign_route_fails_only_its_peer(Backend::Kernel);
    }
}
