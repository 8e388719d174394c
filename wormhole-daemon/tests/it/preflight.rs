//! `wormhole preflight`, the real binary in a node's namespace: each check reads the host for
//! real (plugins, sysctls, `/dev/net/tun`, the conflist directory, the underlay's MTU, the
//! peers file or the Node), says ok / warning / error with the fix, and the exit code is 4
//! exactly when one is an error. It changes nothing. In Kubernetes mode the pod CIDRs come from
//! the Node, and a running agent turns a foreign CNI configuration into an Event on it.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Backend, CONFLIST, Cluster, Node, poll, root_or_skip};
use crate::kubernetes::{api_for, kube_args};

/// `wormhole preflight` with node `node`'s `wormhole run` arguments and `extra`.
fn preflight(node: &Node, base: &[String], extra: &[&str]) -> Output {
    let mut args: Vec<&str> = vec![BIN, "preflight"];
    args.extend(base.iter().skip(1).map(String::as_str));
    args.extend_from_slice(extra);
    node.ns.run(&args)
}

/// `-o json`, parsed, with the exit code.
fn json(node: &Node, base: &[String], extra: &[&str]) -> (Option<i32>, Value) {
    let mut extra = extra.to_vec();
    extra.extend(["-o", "json"]);
    let out = preflight(node, base, &extra);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

/// The result and detail of check `name`.
fn check(report: &Value, name: &str) -> (String, String) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"));
    (
        c["result"].as_str().unwrap().to_owned(),
        c["detail"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn preflight_reads_the_host_and_fails_only_on_errors() {
    if !root_or_skip("preflight_reads_the_host_and_fails_only_on_errors") {
        return;
    }
    let cluster = Cluster::new(2, Backend::Embedded);
    let node = cluster.node(1);
    let base = node.args(&[]);
    let empty = cluster.work.path().join("no-plugins");
    std::fs::create_dir(&empty).unwrap();
    std::fs::create_dir_all(node.cni_dir()).unwrap();
    std::fs::write(node.cni_dir().join("05-cilium.conflist"), "{}").unwrap();
    node.ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    node.ns
        .sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]);
    let link_names = || -> Vec<String> {
        node.ns
            .sh(&["ip", "-br", "link"])
            .lines()
            .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
            .collect()
    };
    let links_before = link_names();

    // A node with problems: plugins missing, another network's configuration first.
    let (code, report) = json(node, &base, &["--cni-bin-dir", empty.to_str().unwrap()]);
    assert_eq!(code, Some(4), "{report}");
    assert_eq!(report["node"], "n1");
    let (result, detail) = check(&report, "pod-cidr");
    assert_eq!(result, "ok");
    assert!(
        detail.starts_with("10.99.1.0/24, fd99:0:0:1::/64 (peers file"),
        "{detail}"
    );
    let (result, detail) = check(&report, "cni-plugins");
    assert_eq!(result, "error");
    assert!(
        detail.starts_with("missing: bridge, host-local, portmap, loopback"),
        "{detail}"
    );
    assert_eq!(check(&report, "cni-config").0, "error");
    assert_eq!(
        report["foreign_cni_configs"],
        serde_json::json!(["05-cilium.conflist"])
    );
    assert_eq!(
        check(&report, "wireguard"),
        ("ok".into(), "embedded backend: /dev/net/tun opens".into())
    );
    // Off here, but the agent turns it on at start: a warning, not an error.
    assert_eq!(
        check(&report, "forwarding"),
        (
            "warning".into(),
            "net.ipv4.ip_forward = 0, net.ipv6.conf.all.forwarding = 0: the agent turns it on \
             at start"
                .into()
        )
    );
    assert_eq!(
        check(&report, "mtu"),
        ("ok".into(), "underlay 1500, WireGuard and pods 1420".into())
    );
    // It changed nothing.
    assert_eq!(link_names(), links_before);
    assert_eq!(
        node.ns.sh(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "0"
    );
    assert!(!node.cni_dir().join(CONFLIST).exists());
    assert!(node.ns.sh(&["nft", "list", "ruleset"]).is_empty());

    // The table for people: one row a check, the fix under each problem.
    let out = preflight(node, &base, &["--cni-bin-dir", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("preflight of node n1\n\nCHECK  "),
        "{table}"
    );
    assert!(
        table.contains("\ncni-plugins   error    missing: bridge"),
        "{table}"
    );
    assert!(
        table.contains("fix: install the standard CNI plugins"),
        "{table}"
    );
    assert!(
        table.contains("\nforwarding    warning  net.ipv4.ip_forward = 0"),
        "{table}"
    );
    assert!(
        table.ends_with("\n4 ok, 1 warning(s), 2 error(s)\n"),
        "{table}"
    );

    // Fixed: the plugins where they are, the other configuration gone: warnings only, exit 0.
    std::fs::remove_file(node.cni_dir().join("05-cilium.conflist")).unwrap();
    let (code, report) = json(node, &base, &["--cni-bin-dir", "/usr/lib/cni"]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(check(&report, "cni-plugins").0, "ok");
    assert_eq!(check(&report, "cni-config").0, "ok");
    // An MTU the underlay cannot carry.
    let (code, report) = json(
        node,
        &base,
        &["--cni-bin-dir", "/usr/lib/cni", "--mtu", "1480"],
    );
    assert_eq!(code, Some(4));
    let (result, detail) = check(&report, "mtu");
    assert_eq!(result, "error");
    assert!(
        detail.contains("exceeds the underlay MTU 1500 minus 80 = 1420"),
        "{detail}"
    );
    // A node the peers file does not know.
    let mut other = base.clone();
    let at = other.iter().position(|a| a == "--node-name").unwrap();
    other[at + 1] = "n9".into();
    let (code, report) = json(node, &other, &["--cni-bin-dir", "/usr/lib/cni"]);
    assert_eq!(code, Some(4));
    assert_eq!(
        check(&report, "pod-cidr"),
        (
            "error".into(),
            "the peers file has no [[node]] named n9".into()
        )
    );
    // A peers file that does not read: named, with the fix.
    let mut missing = base.clone();
    let at = missing.iter().position(|a| a == "--peers").unwrap();
    missing[at + 1] = "/nonexistent/peers.toml".into();
    let (code, report) = json(node, &missing, &["--cni-bin-dir", "/usr/lib/cni"]);
    assert_eq!(code, Some(4));
    let (result, detail) = check(&report, "pod-cidr");
    assert_eq!(result, "error");
    assert!(detail.contains("/nonexistent/peers.toml"), "{detail}");
    assert_eq!(
        report["checks"][0]["fix"],
        "fix the peers file: `wormhole run` refuses to start without one that reads and parses"
    );
}

#[test]
fn kubernetes_preflight_reads_the_node_and_a_foreign_configuration_is_an_event() {
    if !root_or_skip("kubernetes_preflight_reads_the_node_and_a_foreign_configuration_is_an_event")
    {
        return;
    }
    let mut cluster = Cluster::new(1, Backend::Embedded);
    let (_api_ns, _rt, api) = api_for(&cluster);
    let kubeconfig = cluster.work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let base = kube_args(&cluster, 1, &kubeconfig);

    // The controller manager allocated no pod CIDR to this Node.
    api.put_node("n1", &[], "192.168.77.1");
    let (code, report) = json(cluster.node(1), &base, &[]);
    assert_eq!(code, Some(4), "{report}");
    let (result, detail) = check(&report, "pod-cidr");
    assert_eq!(result, "error");
    assert_eq!(detail, "no pod CIDR allocated (Node n1, spec.podCIDRs)");
    let fix = report["checks"][0]["fix"].as_str().unwrap();
    assert!(fix.contains("--allocate-node-cidrs=true"), "{fix}");
    // Kubernetes mode: kube-proxy needs br_netfilter, so its absence would be an error here.
    assert!(matches!(
        check(&report, "br-netfilter").0.as_str(),
        "ok" | "error"
    ));
    // A Node name that does not exist.
    let mut other = base.clone();
    let at = other.iter().position(|a| a == "--node-name").unwrap();
    other[at + 1] = "n9".into();
    let (_, report) = json(cluster.node(1), &other, &[]);
    assert_eq!(
        check(&report, "pod-cidr"),
        ("error".into(), "Node n9 does not exist".into())
    );
    assert_eq!(
        report["checks"][0]["fix"],
        "--node-name must be this node's Node name (the DaemonSet sets it from spec.nodeName)"
    );
    // Allocated.
    api.put_node("n1", &["10.99.1.0/24", "fd99:0:0:1::/64"], "192.168.77.1");
    let (_, report) = json(cluster.node(1), &base, &[]);
    assert_eq!(
        check(&report, "pod-cidr"),
        (
            "ok".into(),
            "10.99.1.0/24, fd99:0:0:1::/64 (Node n1, spec.podCIDRs)".into()
        )
    );

    // The agent with flannel's conflist ahead of its own: an Event on its Node.
    let dir = cluster.node(1).cni_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-flannel.conflist"), "{}").unwrap();
    cluster.node_mut(1).start_with(base);
    cluster.node_mut(1).wait_ready();
    let event = poll(Duration::from_secs(30), || {
        api.events()
            .into_iter()
            .find(|e| e["reason"] == "ForeignCniConfig")
    })
    .unwrap_or_else(|| {
        panic!(
            "no ForeignCniConfig Event: {:#?}\n{}",
            api.events(),
            cluster.node(1).log_tail()
        )
    });
    assert_eq!(event["regarding"]["kind"], "Node");
    assert_eq!(event["regarding"]["name"], "n1");
    assert_eq!(event["type"], "Warning");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with("preflight cni-config: 10-flannel.conflist in ")
            && note.contains("(fix: to move this node to Wormhole, delete it"),
        "{note}"
    );
}
