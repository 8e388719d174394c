//! `wormhole uninstall`: after it, a node's namespace holds nothing Wormhole made. The node's
//! links, addresses, routes (every table) and nftables ruleset are compared with what they were
//! before the agent first ran; its files (conflist, leases, state) are gone, the key only when
//! asked; the pods' interfaces went with the bridge; wireguard-go exited. It refuses while the
//! agent runs, and a second run finds nothing.

use std::path::Path;
use std::process::Output;

use crate::harness::{
    BIN, Backend, CONFLIST, Cluster, Netns, Node, root_or_skip, wireguard_go_pid,
};

/// What a namespace holds that a program could have made: links, addresses, routes of every
/// table, the nftables ruleset. Counters and the kernel's link indices left out.
pub(crate) fn state(ns: &Netns) -> String {
    let mut out = String::new();
    for args in [
        &["ip", "-o", "link", "show"][..],
        &["ip", "-o", "addr", "show"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["nft", "list", "ruleset"],
    ] {
        out += &format!("$ {}\n", args.join(" "));
        for line in ns.sh(args).lines() {
            // `3: eth0@if4: <...>`: the index changes nothing of substance, nor does whether
            // the underlay's carrier was up yet when the first snapshot was taken.
            let line = line.split_once(": ").map_or(line, |(_, rest)| rest);
            let words: Vec<&str> = line.split(' ').collect();
            let mut kept = Vec::new();
            let mut i = 0;
            while i < words.len() {
                match words[i] {
                    "state" => i += 2,
                    word => {
                        kept.push(word.replace("NO-CARRIER,", ""));
                        i += 1;
                    }
                }
            }
            out += &kept.join(" ");
            out += "\n";
        }
    }
    out
}

/// `wormhole uninstall` for `node` with `extra` arguments, in its namespace.
fn uninstall(node: &Node, extra: &[&str]) -> Output {
    let mut args = vec![
        BIN,
        "uninstall",
        "--interface",
        &node.iface,
        "--key-file",
        node.key_file.to_str().unwrap(),
    ];
    let cni = node.cni_dir();
    let data = node.dir.join("ipam");
    args.extend(["--cni-conf-dir", cni.to_str().unwrap()]);
    args.extend(["--cni-data-dir", data.to_str().unwrap()]);
    args.extend_from_slice(extra);
    node.ns.run(&args)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The names in `dir`, sorted (none when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn uninstall_leaves_nothing_wormhole_made_embedded() {
    if root_or_skip("uninstall_leaves_nothing_wormhole_made_embedded") {
        uninstall_leaves_nothing_wormhole_made_on(Backend::Embedded);
    }
}

#[test]
fn uninstall_leaves_nothing_wormhole_made_userspace() {
    if root_or_skip("uninstall_leaves_nothing_wormhole_made_userspace") {
        uninstall_leaves_nothing_wormhole_made_on(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn uninstall_leaves_nothing_wormhole_made_kernel() {
    if root_or_skip("uninstall_leaves_nothing_wormhole_made_kernel") {
        uninstall_leaves_nothing_wormhole_made_on(Backend::Kernel);
    }
}

fn uninstall_leaves_nothing_wormhole_made_on(backend: Backend) {
    let mut cluster = Cluster::new(2, backend);
    let before = state(&cluster.node(1).ns);
    let files_before = names(&cluster.node(1).dir);
    assert_eq!(files_before, ["private.key"]);

    cluster.start_all(&[]);
    cluster.add_pods(1, &["a", "b"]);
    cluster.add_pods(2, &["a"]);
    let target = cluster.pod("n2a").ip4.clone();
    assert!(
        cluster.pod("n1a").ping(&target, 10),
        "no mesh to take apart\n{}",
        cluster.logs()
    );
    let node = cluster.node(1);
    let running = state(&node.ns);
    assert_ne!(running, before);
    assert!(node.cni_dir().join(CONFLIST).exists());
    assert!(node.dir.join("ipam/wormhole").exists());
    assert!(node.dir.join("agent.lock").exists());
    let socket = format!("/var/run/wireguard/{}.sock", node.iface);

    // While the agent runs: refused, and nothing removed.
    let out = uninstall(node, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("error: an agent is running on this node")
            && stderr.contains("agent.lock")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        state(&node.ns),
        running,
        "a refused uninstall changed the node"
    );

    // The agent stops, then the node is cleaned. The kernel's and wireguard-go's data planes
    // outlive it; the embedded one dies with it, and a crash leaves its UAPI socket behind.
    let daemon = cluster.node_mut(1).daemon.take().unwrap();
    if backend == Backend::Embedded {
        daemon.kill9();
    } else {
        assert!(daemon.terminate().success());
        assert!(
            cluster.pod("n1a").ping(&target, 3),
            "stopping dropped the network"
        );
    }
    let node = cluster.node(1);
    if backend == Backend::Userspace {
        assert!(
            wireguard_go_pid(&node.iface).is_some(),
            "wireguard-go outlives the agent"
        );
    }
    let out = uninstall(node, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let iface = &node.iface;
    let mut lines = match backend {
        Backend::Embedded => vec![format!(
            "removed uapi-socket {socket} (left by a stopped device)"
        )],
        Backend::Userspace => vec![
            format!("removed interface {iface} (tun link)"),
            format!(
                "removed uapi-socket {socket} (its userspace WireGuard exited with the interface)"
            ),
        ],
        Backend::Kernel => vec![format!("removed interface {iface} (wireguard link)")],
    };
    if backend != Backend::Embedded {
        lines.push(format!(
            "removed routes proto 87 dev {iface} (2 route(s), with the interface)"
        ));
    }
    lines.extend([
        "removed nftables inet wormhole\n".into(),
        "removed pod-interfaces 2 on wormhole-br0 (".into(),
        "removed bridge wormhole-br0\n".into(),
        format!(
            "removed ipam {}\n",
            node.dir.join("ipam/wormhole").display()
        ),
        format!(
            "removed conflist {}\n",
            node.cni_dir().join(CONFLIST).display()
        ),
        format!("kept private-key {}", node.key_file.display()),
        "kept forwarding net.ipv4.ip_forward".into(),
    ]);
    for line in lines {
        assert!(stdout.contains(&line), "no {line:?} in\n{stdout}");
    }

    // Nothing Wormhole made is left in the namespace: as before the agent first ran.
    assert_eq!(state(&node.ns), before);
    assert!(!Path::new(&socket).exists(), "{socket} left");
    assert!(
        wireguard_go_pid(&node.iface).is_none(),
        "wireguard-go left running"
    );
    assert!(
        names(&node.cni_dir()).is_empty(),
        "{:?}",
        names(&node.cni_dir())
    );
    assert!(!node.dir.join("ipam/wormhole").exists());
    assert_eq!(names(&node.dir), ["cni", "ipam", "log", "private.key"]);
    // The pods' interfaces went with their host ends.
    for pod in ["n1a", "n1b"] {
        let links = cluster.pod(pod).ns.sh(&["ip", "-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "{pod}: {links}");
    }
    // Forwarding stays as the agent left it (on): others need it.
    assert_eq!(
        node.ns.sh(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );
    // The other node is untouched.
    assert!(
        cluster
            .node(2)
            .ns
            .sh(&["ip", "-o", "link"])
            .contains(&cluster.node(2).iface)
    );

    // Again: nothing to remove, exit 0; then the key, when asked.
    let out = uninstall(node, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("nothing to remove"), "{stdout}");
    let out = uninstall(node, &["--remove-keys", "-o", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["removed"][0]["kind"], "private-key", "{report}");
    assert_eq!(report["removed"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["failed"].as_array().unwrap().is_empty());
    assert!(!node.key_file.exists());
    assert_eq!(names(&node.dir), ["cni", "ipam", "log"]);
}

/// `--keep-bridge` leaves the pods on this node talking to each other; a name that is not one
/// of the kinds Wormhole makes is never deleted.
#[test]
fn uninstall_keeps_the_bridge_when_asked_and_deletes_only_what_wormhole_makes() {
    if !root_or_skip("uninstall_keeps_the_bridge_when_asked_and_deletes_only_what_wormhole_makes") {
        return;
    }
    let mut cluster = Cluster::new(2, Backend::Embedded);
    cluster.start_all(&[]);
    cluster.add_pods(1, &["a", "b"]);
    let daemon = cluster.node_mut(1).daemon.take().unwrap();
    assert!(daemon.terminate().success());
    let node = cluster.node(1);

    let out = uninstall(node, &["--keep-bridge"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("kept bridge wormhole-br0"), "{stdout}");
    assert!(!stdout.contains("removed bridge"), "{stdout}");
    let links = node.ns.sh(&["ip", "-o", "link"]);
    assert!(
        links.contains("wormhole-br0") && !links.contains(&node.iface),
        "{links}"
    );
    let other = cluster.pod("n1b").ip4.clone();
    assert!(
        cluster.pod("n1a").ping(&other, 3),
        "pods on the node lost each other"
    );
    assert!(node.dir.join("ipam/wormhole").exists(), "their leases kept");

    // The underlay's interface given by mistake: refused, named.
    let out = node.ns.run(&[
        BIN,
        "uninstall",
        "--interface",
        "eth0",
        "--bridge",
        "lo",
        "--cni-conf-dir",
        node.cni_dir().to_str().unwrap(),
        "--key-file",
        node.key_file.to_str().unwrap(),
        "--cni-data-dir",
        node.dir.join("ipam").to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("NOT REMOVED interface eth0 (a veth link, not one Wormhole makes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("NOT REMOVED bridge lo (a plain link, not a bridge"),
        "{stdout}"
    );
    assert!(
        stderr.contains("2 trace(s) of Wormhole could not be removed"),
        "{stderr}"
    );
    assert!(node.ns.sh(&["ip", "-o", "link"]).contains("eth0"));
}
