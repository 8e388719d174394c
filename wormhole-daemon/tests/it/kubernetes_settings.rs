//! Per-node settings through Node annotations: one DaemonSet (identical arguments on every node)
//! serves a node behind NAT once its Node is annotated, without a restart; a bad annotation is
//! refused (Event, status, log) and the value in force stays; no other node reads it.

use std::time::Duration;

use serde_json::Value;
use wormhole_k8s::testing::Kind;
use wormhole_k8s::{ENDPOINT_ANNOTATION, PERSISTENT_KEEPALIVE_ANNOTATION};

use crate::harness::{Backend, Cluster, icmp_matrix, poll, root_or_skip, scaled};
use crate::kubernetes::{api_for, kube_args};

#[test]
fn kubernetes_node_annotations_put_one_node_behind_nat_without_a_restart() {
    if root_or_skip("kubernetes_node_annotations_put_one_node_behind_nat_without_a_restart") {
        annotations_put_one_node_behind_nat(Backend::Embedded);
    }
}

/// n1 and n2 on the underlay, n3 behind a NAT router (masquerade, no port forward; its Node's
/// InternalIP is its private address 172.16.3.2). Every agent runs with the same arguments, as
/// one DaemonSet starts them: n3 first publishes its unreachable InternalIP. Annotating its Node
/// `wormhole.dev/endpoint: none` and `wormhole.dev/persistent-keepalive: 25` changes its
/// WormholeNode while its agent keeps running, and every pod then reaches every other. A bad
/// keepalive annotation is refused with an Event, in `wormhole status` and in the log, and the
/// WormholeNode keeps 25. n1's and n2's WormholeNodes never change.
fn annotations_put_one_node_behind_nat(backend: Backend) {
    let mut c = Cluster::new(2, backend);
    let n3 = c.add_node_behind_nat(backend);
    let (_api_ns, _rt, api) = api_for(&c);
    let kubeconfig = c.work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    for i in [1, 2, n3] {
        let args = kube_args(&c, i, &kubeconfig);
        c.node_mut(i).start_with(args);
        c.node_mut(i).wait_ready();
    }
    let spec = |name: &str| api.get(Kind::Wormhole, name).map(|w| w["spec"].clone());
    // The DaemonSet's setting: every node publishes its InternalIP, n3 its private one.
    let published = |name: &str, endpoint: &str| {
        poll(scaled(Duration::from_secs(20)), || {
            spec(name).filter(|s| s["endpoint"] == endpoint)
        })
        .unwrap_or_else(|| panic!("{name} published {:?}\n{}", spec(name), c.logs()))
    };
    let before = [
        published("n1", "192.168.77.1:51820"),
        published("n2", "192.168.77.2:51820"),
    ];
    published("n3", "172.16.3.2:51820");
    let from_flags = serde_json::json!({
        "endpoint": "internal-ip", "endpoint_from": "flag",
        "persistent_keepalive": null, "persistent_keepalive_from": "flag", "refused": [],
    });
    assert_eq!(settings(&c, n3), from_flags);
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .map(|n| n.daemon.as_ref().unwrap().pid())
        .collect();

    // The admin annotates n3's Node while everything runs.
    let annotated_at = std::time::Instant::now();
    api.annotate_node("n3", ENDPOINT_ANNOTATION, Some("none"));
    api.annotate_node("n3", PERSISTENT_KEEPALIVE_ANNOTATION, Some("25"));
    let nat = poll(scaled(Duration::from_secs(20)), || {
        spec("n3").filter(|s| s.get("endpoint").is_none() && s["persistentKeepalive"] == 25)
    });
    assert!(
        nat.is_some(),
        "n3's WormholeNode did not follow its annotations: {:?}\n{}",
        spec("n3"),
        c.logs()
    );
    eprintln!(
        "n3's WormholeNode followed its annotations {:?} after they were set",
        annotated_at.elapsed()
    );
    // `/status` is rendered at most once a second.
    let annotated = serde_json::json!({
        "endpoint": "none", "endpoint_from": "annotation",
        "persistent_keepalive": 25, "persistent_keepalive_from": "annotation", "refused": [],
    });
    let shown = poll(scaled(Duration::from_secs(5)), || {
        Some(settings(&c, n3)).filter(|s| *s == annotated)
    });
    assert!(shown.is_some(), "{}", settings(&c, n3));
    // n1 and n2 learn where n3 is from its handshakes: every pair works, through the NAT.
    for i in [1, 2] {
        let node = c.node(i);
        let row = poll(scaled(Duration::from_secs(60)), || {
            let view = node.status_json();
            let row = view["peers"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "n3")?
                .clone();
            (row["state"] == "ok").then_some(row)
        })
        .unwrap_or_else(|| panic!("n{i} never reached n3\n{}", c.logs()));
        assert_eq!(
            row["endpoint"], "192.168.77.203:51820",
            "n3's router: {row}"
        );
    }
    for i in [1, 2, n3] {
        c.add_pods(i, &["a"]);
    }
    let (pings, failures) = icmp_matrix(&c.pods);
    assert!(
        failures.is_empty(),
        "{} of {pings} pod pairs failed with n3 behind NAT by annotation:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        c.logs()
    );

    // A bad value: refused (Event on n3's Node, status, log), and the keepalive in force stays.
    api.annotate_node("n3", PERSISTENT_KEEPALIVE_ANNOTATION, Some("soon"));
    let refused = poll(scaled(Duration::from_secs(20)), || {
        let refused = settings(&c, n3)["refused"].as_array()?.clone();
        (!refused.is_empty()).then_some(refused)
    })
    .unwrap_or_else(|| panic!("the bad annotation was not refused\n{}", c.logs()));
    assert_eq!(
        refused,
        [Value::from(
            "annotation wormhole.dev/persistent-keepalive=\"soon\" refused: not a whole number \
             of seconds from 0 (off) to 65535, such as 25"
        )]
    );
    assert_eq!(settings(&c, n3)["persistent_keepalive"], 25);
    let event = poll(scaled(Duration::from_secs(20)), || {
        api.events()
            .into_iter()
            .find(|e| e["reason"] == "AnnotationRefused")
    })
    .unwrap_or_else(|| panic!("no AnnotationRefused Event: {:#?}", api.events()));
    assert_eq!(event["regarding"]["kind"], "Node");
    assert_eq!(event["regarding"]["name"], "n3");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with("annotation wormhole.dev/persistent-keepalive=\"soon\" refused: ")
            && note.ends_with(
                "the value in force stays: endpoint none (annotation), persistent keepalive \
                 25 s (annotation)"
            ),
        "{note}"
    );
    let log = std::fs::read_to_string(c.node(n3).log()).unwrap();
    assert!(
        log.contains("annotation wormhole.dev/persistent-keepalive=\\\"soon\\\" refused")
            || log.contains("annotation wormhole.dev/persistent-keepalive=\"soon\" refused"),
        "{}",
        c.node(n3).log_tail()
    );
    let (code, text) = c.node(n3).status(&[]);
    assert_eq!(
        code.code(),
        Some(4),
        "a refused annotation is not ok: {text}"
    );
    assert!(
        text.contains("published endpoint none (annotation), persistent keepalive 25 s (annotation)\n  REFUSED annotation wormhole.dev/persistent-keepalive=\"soon\" refused:"),
        "{text}"
    );
    std::thread::sleep(scaled(Duration::from_secs(2)));
    let kept = spec("n3").unwrap();
    assert_eq!(
        kept["persistentKeepalive"], 25,
        "the old value kept: {kept}"
    );
    assert!(kept.get("endpoint").is_none(), "{kept}");

    // Fixed: nothing refused any more, the same settings.
    api.annotate_node("n3", PERSISTENT_KEEPALIVE_ANNOTATION, Some("25"));
    let cleared = poll(scaled(Duration::from_secs(20)), || {
        settings(&c, n3)["refused"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    });
    assert!(cleared.is_some(), "{}", settings(&c, n3));

    // n3's annotations changed nothing on n1 and n2: their WormholeNodes, their settings, their
    // Events. No agent restarted.
    for (i, was) in [1, 2].into_iter().zip(before) {
        let name = format!("n{i}");
        assert_eq!(spec(&name).unwrap(), was, "{name}");
        assert_eq!(settings(&c, i), from_flags, "{name}");
    }
    let events: Vec<Value> = api
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "AnnotationRefused")
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["regarding"]["name"] == "n3" && e["reportingInstance"] == "n3"),
        "only n3's agent reads n3's annotations: {events:#?}"
    );
    for (node, pid) in c.nodes.iter_mut().zip(pids) {
        let daemon = node.daemon.as_mut().unwrap();
        assert_eq!(daemon.pid(), pid);
        assert_eq!(daemon.try_wait(), None, "{} exited", node.name);
    }
}

/// Node `i`'s per-node settings as `wormhole status -o json` shows them.
fn settings(c: &Cluster, i: usize) -> Value {
    c.node(i).status_json()["node_settings"].clone()
}
