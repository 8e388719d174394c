//! Peers outside the cluster (issue 13) in Kubernetes mode: a WormholePeer created in the fake
//! API server; two namespace nodes (`wormhole run --kubernetes --external-cidr`) add it; the
//! "laptop" namespace, configured only from `wormhole peer-config` run in Kubernetes mode (from
//! the laptop, through the API server), reaches pods on every node and is reached from them; a
//! packet from it with a source outside its allowed IPs is dropped; the underlay carries only
//! WireGuard (and the control plane's API traffic). A hostile WormholePeer (claiming a node's
//! pod addresses) is refused on every node, shown in `wormhole status` and as an Event about it,
//! and disturbs nothing. Deleting the WormholePeer removes it from every node.

use std::time::Duration;

use serde_json::json;

use crate::external::Laptop;
use crate::harness::{
    BIN, Backend, Cluster, assert_only_wireguard, poll, pubkey, root_or_skip, sh,
};
use crate::kubernetes::{accepted, api_for, kube_args};

#[test]
fn a_wormhole_peer_reaches_pods_on_every_node_and_leaves_when_deleted() {
    if root_or_skip("a_wormhole_peer_reaches_pods_on_every_node_and_leaves_when_deleted") {
        wormhole_peer(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn a_wormhole_peer_reaches_pods_on_every_node_and_leaves_when_deleted_kernel() {
    if root_or_skip("a_wormhole_peer_reaches_pods_on_every_node_and_leaves_when_deleted_kernel") {
        wormhole_peer(Backend::Kernel);
    }
}

fn wormhole_peer(backend: Backend) {
    let mut c = Cluster::new(2, backend);
    let (_api_ns, _rt, api) = api_for(&c);
    let kubeconfig = c.work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let laptop = Laptop::plug(&c);
    let private = sh(&[BIN, "genkey"]);
    let public = pubkey(&private);
    // What an admin applies.
    api.put_peer(
        "laptop",
        json!({"publicKey": public.trim(), "allowedIPs": ["10.98.0.2/32"],
               "endpoint": "192.168.77.150:51820"}),
    );
    // A hostile one: a node's pod addresses, inside a misconfigured external range.
    let thief = pubkey(&sh(&[BIN, "genkey"]));
    api.put_peer(
        "thief",
        json!({"publicKey": thief.trim(), "allowedIPs": ["10.99.1.7/32"]}),
    );
    for i in 1..=2 {
        let mut args = kube_args(&c, i, &kubeconfig);
        args.extend(
            [
                "--external-cidr",
                "10.98.0.0/24",
                "--external-cidr",
                "10.99.1.0/28",
            ]
            .map(str::to_owned),
        );
        c.node_mut(i).start_with(args);
    }
    for i in 1..=2 {
        c.node_mut(i).wait_ready();
    }
    for (i, other) in [(1, "n2"), (2, "n1")] {
        let converged = poll(Duration::from_secs(20), || {
            (accepted(&c, i).contains(&other.to_owned())).then_some(())
        });
        assert!(
            converged.is_some(),
            "n{i}: {:?}\n{}",
            accepted(&c, i),
            c.logs()
        );
    }
    for i in 1..=2 {
        c.add_pods(i, &["a"]);
    }

    // The laptop, from `wormhole peer-config` in Kubernetes mode only, run on the laptop.
    let peer_config = |name: &str, external_cidrs: &[&str]| {
        let mut args = vec![
            BIN,
            "peer-config",
            name,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--cluster-cidr",
            "10.99.0.0/16",
            "--cluster-cidr",
            "fd99::/48",
        ];
        for cidr in external_cidrs {
            args.extend(["--external-cidr", cidr]);
        }
        laptop.run(&args)
    };
    let out = peer_config("laptop", &["10.98.0.0/24", "10.99.1.0/28"]);
    let conf = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "peer-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The hostile one gets no configuration, and says why.
    let refused = peer_config("thief", &["10.99.1.0/28"]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        why.contains("refused by the nodes") && why.contains("overlaps the cluster CIDR"),
        "{why}"
    );
    let laptop = Laptop::configure(&c, laptop, &conf, &private);
    assert_eq!(laptop.routes.len(), 4, "both nodes' pod CIDRs: {conf}");
    for node in &c.nodes {
        assert!(
            conf.contains(&node.public_key),
            "{} missing: {conf}",
            node.name
        );
        assert!(
            conf.contains(&format!("Endpoint = 192.168.77.{}:51820", node.index)),
            "{conf}"
        );
    }

    let capture = c.capture();
    laptop.reaches_every_pod_and_spoofing_is_dropped(&c);
    let lines = capture.stop();
    // The agents' API traffic is the control plane (TLS in a real cluster): leave it out.
    let data_plane: Vec<String> = lines
        .into_iter()
        .filter(|l| !l.contains("192.168.77.254.6443"))
        .collect();
    assert!(
        assert_only_wireguard(&data_plane) > 0,
        "no WireGuard packets"
    );

    // Every node shows the laptop as an external peer, and the thief as refused.
    for node in &c.nodes {
        let view = node.status_json();
        let rows = view["peers"].as_array().unwrap();
        let row = |name: &str| {
            rows.iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{}: no {name} row: {view}", node.name))
                .clone()
        };
        let laptop_row = row("laptop");
        assert_eq!(laptop_row["external"], true, "{laptop_row}");
        assert_eq!(laptop_row["state"], "ok", "{laptop_row}");
        let thief_row = row("thief");
        let state = thief_row["state"].as_str().unwrap();
        assert!(
            state.starts_with("rejected: allowed IP 10.99.1.7/32 overlaps the cluster CIDR"),
            "{thief_row}"
        );
        assert!(!node.wg_peers().contains(&thief.trim().to_owned()));
    }
    // ... and as an Event about the WormholePeer.
    let events = poll(Duration::from_secs(10), || {
        let about: Vec<serde_json::Value> = api
            .events()
            .into_iter()
            .filter(|e| {
                e["regarding"]["kind"] == "WormholePeer" && e["regarding"]["name"] == "thief"
            })
            .collect();
        (about.len() >= 2).then_some(about)
    })
    .unwrap_or_else(|| {
        panic!(
            "no Event about WormholePeer thief from each node: {:#?}",
            api.events()
        )
    });
    assert!(
        events.iter().all(|e| e["reason"] == "PeerRejected"),
        "{events:#?}"
    );

    // Deleting the WormholePeer removes it from every node: peer and routes.
    api.delete_peer("laptop");
    for node in &c.nodes {
        let gone = poll(Duration::from_secs(20), || {
            (!node.wg_peers().contains(&public.trim().to_owned())
                && !node.ns.wormhole_routes().contains("10.98.0.2"))
            .then_some(())
        });
        assert!(
            gone.is_some(),
            "{} still has the laptop: {:?}\n{}",
            node.name,
            node.wg_peers(),
            node.log_tail()
        );
    }
    assert!(
        !laptop.ping("10.98.0.2", &c.pods[0].ip4),
        "the deleted laptop still reaches a pod"
    );
}
