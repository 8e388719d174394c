//! The kernel's netlink limits: a dump splits a peer across messages, and a request holds at
//! most one page. Each test checks what our backend reads against `wg show IFACE dump` (wg(8)'s
//! own reading of the same device) and that a second pass plans nothing.
//!
//! Kernel only: these run in the VM lane (`scripts/vm-lane.sh`).

use std::collections::BTreeMap;

use wormhole_core::NodeEntry;
use wormhole_core::{PrivateKey, PublicKey};
use wormhole_linux::Backend;

use crate::harness::{Cluster, Node, chain, root_or_skip};

/// A peer that exists only on paper: a fresh key, an endpoint on the test's own underlay that
/// nobody holds (and no traffic is ever sent to it).
fn paper_peer(i: usize, pod_cidrs: Vec<String>) -> NodeEntry {
    NodeEntry {
        name: format!("paper{i}"),
        public_key: PrivateKey::generate().public_key().to_base64(),
        endpoint: Some(format!(
            "{}:{}",
            crate::harness::underlay_ip(200),
            20000 + i
        )),
        pod_cidrs,
        persistent_keepalive: None,
        origin: String::new(),
    }
}

/// `/28` number `n` inside 10.99.16.0/20.. (clear of the nodes' `10.99.{i}.0/24`).
fn small_v4(n: usize) -> String {
    format!("10.99.{}.{}/28", 16 + n / 16, (n % 16) * 16)
}

/// One peer as `wg show IFACE dump` prints it: endpoint, sorted allowed IPs, handshake, rx, tx.
type WgRow = (String, Vec<String>, u64, u64, u64);

fn wg_dump(node: &Node) -> BTreeMap<String, WgRow> {
    let text = node.wg(&["dump"]);
    // The first line is the device; then one line per peer:
    // public-key psk endpoint allowed-ips latest-handshake rx tx keepalive
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let mut ips: Vec<String> = f[3].split(',').map(str::to_owned).collect();
            ips.sort();
            let n = |s: &str| s.parse::<u64>().unwrap();
            (
                f[0].to_owned(),
                (f[2].to_owned(), ips, n(f[4]), n(f[5]), n(f[6])),
            )
        })
        .collect()
}

/// Our backend's reading in the same shape as [`wg_dump`].
fn our_dump(node: &Node) -> BTreeMap<String, WgRow> {
    let observed = node.observed();
    observed
        .config
        .peers
        .iter()
        .map(|(key, peer)| {
            let stats = observed.stats.get(key).cloned().unwrap_or_default();
            let mut ips: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
            ips.sort();
            let handshake = stats
                .latest_handshake
                .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())
                .unwrap_or(0);
            (
                key.to_base64(),
                (
                    peer.endpoint.map_or("(none)".into(), |e| e.to_string()),
                    ips,
                    handshake,
                    stats.rx_bytes,
                    stats.tx_bytes,
                ),
            )
        })
        .collect()
}

/// Nodes 1 and 2 of a kernel cluster, with `extra` paper peers added to node 1's snapshot; node
/// 1 has a real session with node 2. Returns node 2's key.
fn with_paper_peers(cluster: &Cluster, extra: Vec<NodeEntry>) -> PublicKey {
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let plain = cluster.snapshot();
    n2.reconcile(&plain).unwrap();
    let mut big = plain.clone();
    big.nodes.extend(extra);
    let plan = n1
        .reconcile(&big)
        .unwrap_or_else(|e| panic!("the big snapshot: {}", chain(&e)));
    assert!(!plan.is_empty());
    let target = crate::harness::overlay_ips(2)[0].clone();
    assert!(n1.ping_until(&target, 10), "n1 cannot reach {target}");
    n2.key.public_key()
}

fn same_reading_as_wg_and_nothing_to_plan(n1: &Node, peers: usize, n2: &PublicKey) {
    let ours = our_dump(n1);
    let theirs = wg_dump(n1);
    assert_eq!(ours.len(), peers, "peers read");
    for (key, row) in &theirs {
        assert_eq!(ours.get(key), Some(row), "peer {key}: ours vs wg show dump");
    }
    let real = &ours[&n2.to_base64()];
    assert!(real.2 > 0, "node 2's handshake read as never: {real:?}");
    assert!(real.3 > 0 && real.4 > 0, "node 2's counters read as zero");
    let plan = n1.resync().unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(plan.is_empty(), "a second pass changed things: {plan}");
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn a_thousand_peers_read_back_whole_kernel() {
    if !root_or_skip("a_thousand_peers_read_back_whole_kernel") {
        return;
    }
    let cluster = Cluster::new(2, Backend::Kernel);
    let extra = (0..1000)
        .map(|i| {
            paper_peer(
                i,
                vec![small_v4(i), format!("fd99:0:0:{:x}::/64", 0x100 + i)],
            )
        })
        .collect();
    let n2 = with_paper_peers(&cluster, extra);
    same_reading_as_wg_and_nothing_to_plan(&cluster.nodes[0], 1001, &n2);
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn a_peer_with_a_thousand_cidrs_is_applied_and_read_back_kernel() {
    if !root_or_skip("a_peer_with_a_thousand_cidrs_is_applied_and_read_back_kernel") {
        return;
    }
    let cluster = Cluster::new(2, Backend::Kernel);
    let big = paper_peer(0, (0..1000).map(small_v4).collect());
    let n2 = with_paper_peers(&cluster, vec![big.clone()]);
    let n1 = &cluster.nodes[0];
    same_reading_as_wg_and_nothing_to_plan(n1, 2, &n2);

    // One more change to the big peer (drop a CIDR) and one to node 2 in the same pass: both
    // land (before, the oversized peer failed the whole update, the other change with it).
    let mut snapshot = cluster.snapshot();
    let mut smaller = big;
    smaller.pod_cidrs.pop();
    snapshot.nodes.push(smaller);
    for node in &mut snapshot.nodes {
        if node.name == "n2" {
            node.persistent_keepalive = Some(7);
        }
    }
    n1.reconcile(&snapshot)
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let ours = our_dump(n1);
    let paper = ours
        .iter()
        .find(|(k, _)| **k != n2.to_base64())
        .map(|(_, row)| row.1.len());
    assert_eq!(paper, Some(999));
    let keepalive = n1.wg(&["persistent-keepalive"]);
    assert!(
        keepalive.contains(&format!("{}\t7", n2.to_base64())),
        "node 2's keepalive not applied:\n{keepalive}"
    );
    let plan = n1.resync().unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(plan.is_empty(), "a second pass changed things: {plan}");
}
