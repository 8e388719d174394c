//! Moving a cluster from flannel, as docs/migration.md says, step by step: the
//! nodes start with flannel's conflist (`10-flannel.conflist`: the bridge plugin on `cni0`
//! with the node's pod CIDR, as flannel delegates it) and pods attached by it, the container
//! runtime choosing the lexically first configuration as containerd and CRI-O do. Wormhole's
//! agents report the configuration that wins over theirs (status, log, preflight, readiness
//! with `--foreign-cni fail`); after its steps (delete flannel's conflist and bridge,
//! restart the pods) they report nothing, and the restarted pods reach pods on other nodes
//! through Wormhole.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use wormhole_testkit::pod_cidrs;

use crate::harness::{
    BIN, Backend, CONFLIST, Cluster, Pod, http_get, icmp_matrix, poll, root_or_skip,
};

/// The configuration a container runtime uses: the first `*.conf`, `*.conflist` or `*.json`
/// in the directory by name (containerd, CRI-O); its name and contents.
fn runtime_choice(dir: &Path) -> (String, Value) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [".conf", ".conflist", ".json"]
                .iter()
                .any(|x| n.ends_with(x))
        })
        .collect();
    names.sort();
    let first = names.first().expect("a CNI configuration").clone();
    let text = std::fs::read_to_string(dir.join(&first)).unwrap();
    (first, serde_json::from_str(&text).unwrap())
}

/// flannel's configuration as its plugin hands it to the bridge plugin: `cni0`, the node's pod
/// CIDRs (from the same `Node.spec.podCIDRs` Wormhole uses), MTU 1450 (VXLAN).
fn flannel_conflist(node: usize) -> String {
    let [v4, v6] = pod_cidrs(node);
    let conf = json!({
        "name": "cbr0",
        "cniVersion": "1.0.0",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "hairpinMode": true,
                "ipMasq": false,
                "mtu": 1450,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": v4 }], [{ "subnet": v6 }]]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    serde_json::to_string_pretty(&conf).unwrap()
}

/// Attaches pod `name` to node `i` as the runtime would: with its first configuration.
fn runtime_attach(cluster: &Cluster, i: usize, name: &str) -> (String, Pod) {
    let node = cluster.node(i);
    let (file, conflist) = runtime_choice(&node.cni_dir());
    let pod = Pod::attach(&node.ns, i, name, &conflist, &node.dir.join("ipam"));
    (file, pod)
}

#[test]
fn moving_from_flannel_as_the_readme_says() {
    if !root_or_skip("moving_from_flannel_as_the_readme_says") {
        return;
    }
    let mut cluster = Cluster::new(2, Backend::Embedded);
    // Before Wormhole: flannel's conflist on every node, and a pod attached by it.
    let mut old_pods = Vec::new();
    for i in 1..=2 {
        let dir = cluster.node(i).cni_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("10-flannel.conflist"), flannel_conflist(i)).unwrap();
        let (file, pod) = runtime_attach(&cluster, i, "old");
        assert_eq!(file, "10-flannel.conflist");
        old_pods.push(pod);
    }
    assert!(
        cluster
            .node(1)
            .ns
            .sh(&["ip", "-o", "link"])
            .contains("cni0")
    );

    // Step 2: Wormhole's agents start (node 2 asks readiness to fail while flannel's wins).
    cluster.node_mut(1).start(&["--resync", "2s"]);
    cluster.node_mut(1).wait_ready();
    cluster
        .node_mut(2)
        .start(&["--resync", "2s", "--foreign-cni", "fail"]);
    let n2 = cluster.node(2).ns.name.clone();
    let blocked = poll(Duration::from_secs(30), || {
        http_get(&n2, "/readyz")
            .filter(|(code, _)| *code == 503 && cluster.node(2).cni_dir().join(CONFLIST).exists())
    });
    let (_, body) =
        blocked.unwrap_or_else(|| panic!("node 2 never answered /readyz\n{}", cluster.logs()));

    // Each agent says so: status (JSON and table, exit code 4), log, preflight, readiness.
    for i in 1..=2 {
        let node = cluster.node(i);
        let json = poll(Duration::from_secs(20), || {
            let v = node.status_json();
            (!v["foreign_cni_configs"].as_array()?.is_empty()).then_some(v)
        })
        .unwrap_or_else(|| {
            panic!(
                "n{i}: no foreign CNI configuration reported\n{}",
                node.log_tail()
            )
        });
        assert_eq!(json["foreign_cni_configs"], json!(["10-flannel.conflist"]));
        let check = json["preflight"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "cni-config")
            .unwrap()
            .clone();
        assert_eq!(check["result"], "error", "{check}");
        let (exit, table) = node.status(&[]);
        assert_eq!(exit.code(), Some(4), "{table}");
        assert!(
            table.contains("CNI: 10-flannel.conflist take(s) precedence over 10-wormhole.conflist"),
            "{table}"
        );
        assert!(
            node.log_tail()
                .contains("preflight: 10-flannel.conflist in "),
            "n{i}: nothing logged\n{}",
            node.log_tail()
        );
        let mut args = node.args(&[]);
        args[0] = "preflight".into();
        let args: Vec<&str> = std::iter::once(BIN)
            .chain(args.iter().map(String::as_str))
            .collect();
        let out = node.ns.run(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(4), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("cni-config") && l.contains("error")),
            "{text}"
        );
        assert!(
            text.contains("fix: to move this node to Wormhole, delete it"),
            "{text}"
        );
    }
    assert!(
        body.contains("not ready: 10-flannel.conflist take(s) precedence"),
        "{body}"
    );
    assert_eq!(
        http_get(&cluster.node(1).ns.name, "/readyz").map(|r| r.0),
        Some(200),
        "--foreign-cni warn: reported, readiness unaffected"
    );
    // And for a reason: the runtime still attaches new pods with flannel's configuration.
    let (file, stray) = runtime_attach(&cluster, 1, "stray");
    assert_eq!(file, "10-flannel.conflist");
    old_pods.push(stray);

    // Step 3, on every node: flannel's conflist, bridge and leases go.
    for i in 1..=2 {
        let node = cluster.node(i);
        std::fs::remove_file(node.cni_dir().join("10-flannel.conflist")).unwrap();
        node.ns.sh(&["ip", "link", "delete", "cni0"]);
        std::fs::remove_dir_all(node.dir.join("ipam/cbr0")).unwrap();
    }
    // The agents see it within a pass: status all well, node 2 ready.
    for i in 1..=2 {
        let node = cluster.node(i);
        let clean = poll(Duration::from_secs(30), || {
            let v = node.status_json();
            v["foreign_cni_configs"].as_array()?.is_empty().then_some(v)
        });
        assert!(
            clean.is_some(),
            "n{i} still reports flannel\n{}",
            node.log_tail()
        );
    }
    let ready = poll(Duration::from_secs(30), || {
        http_get(&n2, "/readyz").filter(|(code, _)| *code == 200)
    });
    assert!(
        ready.is_some(),
        "node 2 not ready after the migration\n{}",
        cluster.logs()
    );

    // Step 4: every pod started under flannel is restarted (deleted, created again): now with
    // Wormhole's configuration, on its bridge.
    drop(old_pods);
    for i in 1..=2 {
        let (file, pod) = runtime_attach(&cluster, i, "new");
        assert_eq!(file, CONFLIST);
        let [v4, _] = pod_cidrs(i);
        let net: ipnet::IpNet = v4.parse().unwrap();
        assert!(
            net.contains(&pod.ip4.parse::<std::net::IpAddr>().unwrap()),
            "{}",
            pod.ip4
        );
        cluster.pods.push(pod);
    }
    assert!(
        cluster
            .node(1)
            .ns
            .sh(&["ip", "-o", "link", "show", "master", "wormhole-br0"])
            .contains("veth"),
        "the new pod is not on Wormhole's bridge"
    );
    let (pairs, failures) = icmp_matrix(&cluster.pods);
    assert_eq!(pairs, 4, "both directions, both families");
    assert!(failures.is_empty(), "{failures:?}\n{}", cluster.logs());
    for i in 1..=2 {
        let (exit, table) = cluster.node(i).status(&[]);
        assert_eq!(exit.code(), Some(0), "n{i}: {table}");
    }
}
