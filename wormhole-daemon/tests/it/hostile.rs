//! A peers file with bad entries next to good ones: each bad entry is rejected with its reason in
//! `wormhole status` (which then exits non-zero), none reaches the device or the routes, and the
//! good nodes keep working.

use std::collections::BTreeMap;

use crate::harness::{Backend, Cluster, http_get, new_key, root_or_skip, write_atomically};

#[test]
fn hostile_entries_are_rejected_and_the_rest_works() {
    if root_or_skip("hostile_entries_are_rejected_and_the_rest_works") {
        hostile_entries_are_rejected_and_the_rest_works_on(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn hostile_entries_are_rejected_and_the_rest_works_kernel() {
    if root_or_skip("hostile_entries_are_rejected_and_the_rest_works_kernel") {
        hostile_entries_are_rejected_and_the_rest_works_on(Backend::Kernel);
    }
}

fn hostile_entries_are_rejected_and_the_rest_works_on(backend: Backend) {
    let mut c = Cluster::new(3, backend);
    let fresh = new_key(&c.work.path().join("stranger.key"));
    // Names sort after n1..n3, so without history the good entries win every conflict.
    let hostile = format!(
        r#"
[[node]]
name = "x-bad-key"
public_key = "this is not a key"
endpoint = "192.168.77.201:51820"
pod_cidrs = ["10.99.7.0/24"]

[[node]]
name = "x-steals-cidr"
public_key = "{fresh}"
endpoint = "192.168.77.202:51820"
pod_cidrs = ["10.99.2.0/24"]

[[node]]
name = "x-dup-key"
public_key = "{}"
endpoint = "192.168.77.203:51820"
pod_cidrs = ["10.99.8.0/24"]

# Issue 20: an endpoint inside the overlay used to make every agent refuse the whole file.
[[node]]
name = "x-endpoint-in-overlay"
public_key = "{}"
endpoint = "10.99.9.1:51820"
pod_cidrs = ["10.99.9.0/24"]
"#,
        c.node(3).public_key,
        new_key(&c.work.path().join("overlay.key"))
    );
    write_atomically(&c.peers, &c.peers_text(&[1, 2, 3], &hostile));
    c.start_all(&[]);
    for i in 1..=3 {
        c.add_pods(i, &["a"]);
    }

    // The good nodes reach each other, both families.
    for from in &c.pods {
        for to in c.pods.iter().filter(|p| p.node != from.node) {
            for ip in [&to.ip4, &to.ip6] {
                assert!(
                    from.ping(ip, 2),
                    "{} -> {} ({ip}) with hostile entries in the file\n{}",
                    from.name,
                    to.name,
                    c.logs()
                );
            }
        }
    }

    for node in &c.nodes {
        let status = node.status_json();
        let states: BTreeMap<String, String> = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let state = |name: &str| {
            states
                .get(name)
                .unwrap_or_else(|| panic!("{}: no row for {name}: {status}", node.name))
                .as_str()
        };
        // Each reason, as this node sees it (the owner of the stolen CIDR or key says "ours").
        let expected = [
            ("x-bad-key", "malformed public key"),
            (
                "x-steals-cidr",
                if node.index == 2 {
                    "overlaps this node's pod CIDR 10.99.2.0/24"
                } else {
                    "overlaps 10.99.2.0/24 of node n2"
                },
            ),
            (
                "x-dup-key",
                if node.index == 3 {
                    "uses this node's own public key"
                } else {
                    "duplicate public key: already used by node n3"
                },
            ),
            (
                "x-endpoint-in-overlay",
                "endpoint 10.99.9.1:51820 lies inside the overlay CIDR",
            ),
        ];
        for (name, reason) in expected {
            let s = state(name);
            assert!(
                s.starts_with("rejected: ") && s.contains(reason),
                "{}: {name} should be rejected for {reason:?}, is {s:?}",
                node.name
            );
        }
        for other in c.nodes.iter().filter(|n| n.index != node.index) {
            assert_eq!(state(&other.name), "ok", "{}: {status}", node.name);
        }
        assert_eq!(states.len(), 6, "{}: {status}", node.name);

        // `wormhole status` (table and JSON) exits non-zero and shows the reasons.
        let (code, table) = node.status(&[]);
        assert!(!code.success(), "{}: status exited 0:\n{table}", node.name);
        assert!(table.contains("rejected: malformed public key"), "{table}");
        let (code, _) = node.status(&["-o", "json"]);
        assert!(!code.success());

        // Nothing of them on the device or in the routes.
        let mut want: Vec<String> = c
            .nodes
            .iter()
            .filter(|n| n.index != node.index)
            .map(|n| n.public_key.clone())
            .collect();
        want.sort();
        assert_eq!(node.wg_peers(), want, "{}", node.name);
        let allowed = node.wg(&["allowed-ips"]);
        for bad in ["10.99.7.", "10.99.8.", "10.99.9."] {
            assert!(!allowed.contains(bad), "{}: {allowed}", node.name);
        }
        let routes = node.ns.wormhole_routes();
        assert_eq!(routes.lines().count(), 4, "{}: {routes}", node.name);
        assert!(
            !routes.contains("10.99.7.")
                && !routes.contains("10.99.8.")
                && !routes.contains("10.99.9."),
            "{routes}"
        );
        if node.index != 2 {
            assert_eq!(routes.matches("10.99.2.0/24").count(), 1, "{routes}");
        }

        // And the metrics count them by reason.
        let (code, metrics) = http_get(&node.ns.name, "/metrics").expect("/metrics");
        assert_eq!(code, 200);
        assert!(
            metrics.contains("wormhole_rejected_peers{reason=\"malformed_key\"} 1"),
            "{metrics}"
        );
    }

    // A node that joins meanwhile is added everywhere, and an agent that starts with the bad
    // entries in the file gets its whole mesh (both used to be frozen out by the entry whose
    // endpoint lies in the overlay).
    let n4 = c.add_node(backend);
    write_atomically(&c.peers, &c.peers_text(&[1, 2, 3, 4], &hostile));
    c.node_mut(n4).start(&[]);
    c.node_mut(n4).wait_ready();
    c.add_pods(n4, &["b"]);
    let newcomer = c.pods.last().unwrap();
    for from in c.pods.iter().filter(|p| p.node != n4) {
        assert!(
            from.ping(&newcomer.ip4, 3),
            "{} -> the newcomer's pod\n{}",
            from.name,
            c.logs()
        );
    }
}
