//! Kubernetes mode end to end: three namespace nodes whose daemons (`wormhole run --kubernetes`)
//! talk to the fake API server (`wormhole_k8s::testing`, real HTTP) listening on the underlay
//! bridge; pods on every node reach each other through WireGuard only; deleting a Node removes
//! it from every peer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wormhole_k8s::testing::{FakeApi, Kind};

use crate::harness::{
    Backend, Cluster, Netns, assert_only_wireguard, icmp_matrix, poll, root_or_skip,
};

/// The fake API server's address on the underlay bridge.
const API: &str = "192.168.77.254:6443";

/// A runtime whose threads live in network namespace `ns` (so the API server's sockets do).
fn runtime_in(ns: &str) -> tokio::runtime::Runtime {
    let path = format!("/var/run/netns/{ns}");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        })
        .build()
        .unwrap()
}

/// The API server on a host of its own on the underlay (192.168.77.254), with one Node per
/// cluster node. Returns its namespace, the runtime serving it, and the server.
fn api_for(cluster: &Cluster) -> (Netns, tokio::runtime::Runtime, Arc<FakeApi>) {
    let ns = Netns::new(format!("{}api", cluster.prefix));
    let outer = format!("{}va", cluster.prefix);
    ns.sh(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", &outer,
    ]);
    ns.sh(&["ip", "link", "set", &outer, "netns", &cluster.underlay.name]);
    cluster
        .underlay
        .sh(&["ip", "link", "set", &outer, "master", "br0", "up"]);
    ns.sh(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
    ns.sh(&["ip", "addr", "add", "192.168.77.254/24", "dev", "eth0"]);
    ns.sh(&["ip", "link", "set", "eth0", "up"]);
    let rt = runtime_in(&ns.name);
    let api = rt
        .block_on(rt.spawn(FakeApi::start_on(API.parse().unwrap())))
        .unwrap();
    for node in &cluster.nodes {
        let i = node.index;
        api.put_node(
            &node.name,
            &[&format!("10.99.{i}.0/24"), &format!("fd99:0:0:{i}::/64")],
            &format!("192.168.77.{i}"),
        );
    }
    (ns, rt, api)
}

/// `wormhole run --kubernetes` arguments for node `i`.
fn kube_args(cluster: &Cluster, i: usize, kubeconfig: &std::path::Path) -> Vec<String> {
    let node = cluster.node(i);
    [
        "run",
        "--kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        &node.name,
        "--cluster-cidr",
        "10.99.0.0/16",
        "--cluster-cidr",
        "fd99::/48",
        "--backend",
        node.backend.as_str(),
        "--interface",
        &node.iface,
        "--key-file",
        node.key_file.to_str().unwrap(),
        "--cni-conf-dir",
        node.cni_dir().to_str().unwrap(),
    ]
    .map(str::to_owned)
    .into()
}

/// The peers' names a node's `wormhole status` lists as accepted (not rejected).
fn accepted(cluster: &Cluster, i: usize) -> Vec<String> {
    let status = cluster.node(i).status_json();
    let mut names: Vec<String> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["state"].as_str().unwrap_or("").starts_with("rejected"))
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn kubernetes_mode_mesh_is_encrypted_and_follows_node_deletion() {
    if !root_or_skip("kubernetes_mode_mesh_is_encrypted_and_follows_node_deletion") {
        return;
    }
    let mut cluster = Cluster::new(3, Backend::Embedded);
    let (_api_ns, _rt, api) = api_for(&cluster);
    let kubeconfig = cluster.work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    for i in 1..=3 {
        let args = kube_args(&cluster, i, &kubeconfig);
        cluster.node_mut(i).start_with(args);
    }
    for i in 1..=3 {
        cluster.node_mut(i).wait_ready();
    }
    // Every agent published its WormholeNode, owned by its Node, with its InternalIP.
    for node in &cluster.nodes {
        let published = poll(Duration::from_secs(20), || {
            api.get(Kind::Wormhole, &node.name)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} published no WormholeNode\n{}",
                node.name,
                node.log_tail()
            )
        });
        assert_eq!(published["spec"]["publicKey"], node.public_key);
        assert_eq!(
            published["spec"]["endpoint"],
            format!("192.168.77.{}:51820", node.index)
        );
        let owner = &published["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Node");
        assert_eq!(
            owner["uid"],
            api.get(Kind::Node, &node.name).unwrap()["metadata"]["uid"]
        );
    }
    for i in 1..=3 {
        let others: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| format!("n{j}"))
            .collect();
        let converged = poll(Duration::from_secs(20), || {
            (accepted(&cluster, i) == others).then_some(())
        });
        assert!(
            converged.is_some(),
            "n{i} peers: {:?}\n{}",
            accepted(&cluster, i),
            cluster.logs()
        );
    }
    for i in 1..=3 {
        cluster.add_pods(i, &["a", "b"]);
    }

    let capture = cluster.capture();
    let (pairs, failures) = icmp_matrix(&cluster.pods);
    let lines = capture.stop();
    assert!(
        failures.is_empty(),
        "{} of {pairs} pod pairs failed: {failures:#?}\n{}",
        failures.len(),
        cluster.logs()
    );
    // The agents' API traffic (plain HTTP to the fake server here; TLS in a real cluster) is
    // the control plane, not pod traffic: leave it out, then only WireGuard may remain.
    let data_plane: Vec<String> = lines
        .into_iter()
        .filter(|l| !l.contains("192.168.77.254.6443"))
        .collect();
    let wireguard = assert_only_wireguard(&data_plane);
    assert!(
        wireguard >= pairs,
        "only {wireguard} WireGuard packets for {pairs} pings"
    );

    // Deleting n3's Node garbage-collects its WormholeNode: both others drop the peer and its
    // routes.
    let n3_key = cluster.node(3).public_key.clone();
    let started = Instant::now();
    api.delete_node("n3");
    for i in 1..=2 {
        let node = cluster.node(i);
        let gone = poll(Duration::from_secs(20), || {
            let peers = node.wg_peers();
            let routes = node.ns.wormhole_routes();
            (!peers.contains(&n3_key)
                && !routes.contains("10.99.3.0/24")
                && !routes.contains("fd99:0:0:3::/64"))
            .then_some(())
        });
        assert!(
            gone.is_some(),
            "n{i} still has n3: {:?}\n{}",
            node.wg_peers(),
            node.log_tail()
        );
    }
    eprintln!(
        "n3 left every peer {:?} after its Node was deleted",
        started.elapsed()
    );
    assert_eq!(accepted(&cluster, 1), ["n2"]);
    assert!(
        cluster.pod("n1a").ping(&cluster.pod("n2a").ip4, 3),
        "n1 and n2 still talk"
    );
}
