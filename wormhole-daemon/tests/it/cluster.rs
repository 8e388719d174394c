//! `wormhole status --cluster` and `wormhole graph` as a user runs them: from the WormholeNodes
//! that real publishers wrote to an API server (the fake one, over HTTP, with a kubeconfig), and
//! from admin endpoints given with `--admin`.

use std::io::{BufRead as _, Write as _};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use wormhole_agent::{PeerView, StatusView};
use wormhole_core::{PeerStatus, PrivateKey, ProbeReport, Status};
use wormhole_k8s::testing::FakeApi;
use wormhole_k8s::{PublishedEndpoint, Publisher};

use crate::harness::BIN;

/// Runs the binary without our own `WORMHOLE_*` and `KUBE*` variables.
fn wormhole(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("WORMHOLE_") || k.starts_with("KUBE") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wormhole")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A peer with a fresh handshake and, if given, a probe report.
fn peer(name: &str, probe: Option<ProbeReport>) -> PeerStatus {
    let mut p = PeerStatus::new(name, PrivateKey::generate().public_key());
    p.latest_handshake = Some(SystemTime::now() - Duration::from_secs(5));
    p.probe = probe;
    p
}

fn holed() -> ProbeReport {
    let mut r = ProbeReport::default();
    r.sent = 10;
    r.path_mtu = Some(1344);
    r.mtu_blackhole = true;
    r
}

#[test]
fn the_cluster_from_its_wormholenodes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(FakeApi::start());
    for (i, name) in ["n1", "n2", "n3", "n4"].iter().enumerate() {
        api.put_node(
            name,
            &[&format!("10.99.{}.0/24", i + 1)],
            &format!("192.168.77.{}", i + 1),
        );
    }
    // n1 and n3 lose large packets between them; n4 runs no agent (no WormholeNode).
    let views = [
        ("n1", vec![peer("n2", None), peer("n3", Some(holed()))]),
        ("n2", vec![peer("n1", None), peer("n3", None)]),
        ("n3", vec![peer("n1", Some(holed())), peer("n2", None)]),
    ];
    rt.block_on(async {
        for (name, peers) in views {
            let key = PrivateKey::generate().public_key();
            let mut publisher =
                Publisher::new(api.client(), name, 51820, PublishedEndpoint::InternalIp);
            publisher.publish_spec(&key).await.unwrap();
            let mut status = Status::default();
            status.public_key = Some(key);
            status.peers = peers;
            assert!(publisher.publish_status(&status).await.unwrap());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();

    let out = wormhole(&["status", "--cluster", "--kubeconfig", kubeconfig]);
    let matrix = text(&out);
    assert_eq!(out.status.code(), Some(4), "a broken pair: exit code 4");
    assert!(
        matrix.starts_with("4 nodes, 12 pairs (from -> to): 4 ok, 2 broken, 6 unknown\n"),
        "{matrix}"
    );
    assert!(
        matrix.contains(
            "FROM \\ TO  1 2 3 4\n\
             1 n1       - . M ?\n\
             2 n2       . - . ?\n\
             3 n3       M . - ?\n\
             4 n4       ? ? ? -\n"
        ),
        "{matrix}"
    );
    assert!(
        matrix.contains("  n1 -> n3: mtu-blackhole (max 1344)\n"),
        "{matrix}"
    );
    assert!(
        matrix.contains("  n4: no WormholeNode: is the wormhole agent running there?\n"),
        "{matrix}"
    );

    let out = wormhole(&[
        "status",
        "--cluster",
        "-o",
        "json",
        "--kubeconfig",
        kubeconfig,
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["nodes"][0]["report"]["problems"]["n3"],
        "mtu-blackhole (max 1344)"
    );
    assert_eq!(json["nodes"][0]["pod_cidrs"][0], "10.99.1.0/24");

    let out = wormhole(&["graph", "--kubeconfig", kubeconfig]);
    assert!(out.status.success(), "{out:?}");
    let svg = text(&out);
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(svg.contains(">mtu-blackhole (max 1344)</text>"), "{svg}");
    assert!(svg.contains(">10.99.3.0/24</tspan>"), "{svg}");

    let out = wormhole(&["graph", "-o", "dot", "--kubeconfig", kubeconfig]);
    let dot = text(&out);
    assert!(
        dot.contains(
            "\"n1\" -- \"n3\" [color=\"#8e24aa\", penwidth=2.5, label=\"mtu-blackhole (max 1344)\""
        ),
        "{dot}"
    );
}

/// Serves `GET /status` with `view` on a fresh loopback port, for any number of connections.
pub(crate) fn serve(view: &StatusView) -> String {
    let body = serde_json::to_vec(view).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = (&stream).write_all(head.as_bytes());
            let _ = (&stream).write_all(&body);
        }
    });
    addr.to_string()
}

pub(crate) fn view(node: &str, peers: &[(&str, &str)]) -> StatusView {
    let mut view = StatusView::new(&Status::default(), SystemTime::now());
    view.node = node.into();
    view.ready = true;
    view.pod_cidrs = vec![format!("10.99.{}.0/24", &node[1..])];
    view.peers = peers
        .iter()
        .map(|(name, state)| PeerView {
            name: (*name).into(),
            public_key: None,
            endpoint: None,
            allowed_ips: vec![format!("10.99.{}.0/24", &name[1..])],
            latest_handshake_age_seconds: Some(3),
            rx_bytes: 0,
            tx_bytes: 0,
            state: (*state).into(),
            hint: None,
            rtt_ms: Some(0.3),
            last_rtt_ms: Some(0.3),
            probe_loss: Some(0.0),
            path_mtu: Some(1420),
            external: false,
        })
        .collect();
    view
}

#[test]
fn the_cluster_from_admin_endpoints() {
    let a = serve(&view("n1", &[("n2", "ok"), ("n3", "lossy (30 %)")]));
    let b = serve(&view("n2", &[("n1", "ok"), ("n3", "ok")]));
    let silent = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = wormhole(&[
        "status",
        "--cluster",
        "--admin",
        &a,
        "--admin",
        &b,
        "--admin",
        &silent,
    ]);
    let matrix = text(&out);
    assert_eq!(out.status.code(), Some(4), "a pair not ok: exit code 4");
    assert!(
        matrix.starts_with("3 nodes, 6 pairs (from -> to): 3 ok, 1 broken, 2 unknown\n"),
        "{matrix}"
    );
    assert!(matrix.contains("  n1 -> n3: lossy (30 %)\n"), "{matrix}");
    assert!(
        matrix.contains(&format!(
            "  not read: cannot reach the wormhole agent at {silent}: "
        )),
        "{matrix}"
    );

    let out = wormhole(&["graph", "--admin", &a, "--admin", &b]);
    assert!(out.status.success());
    roxmltree::Document::parse(&text(&out)).expect("the SVG is XML");

    // A node not read: the picture says so (and so does stderr), and it is incomplete: 4.
    for format in ["svg", "dot"] {
        let out = wormhole(&[
            "graph", "-o", format, "--admin", &a, "--admin", &b, "--admin", &silent,
        ]);
        let drawn = text(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{format}: {err}");
        let note = format!("not read: cannot reach the wormhole agent at {silent}: ");
        assert!(drawn.contains(&note), "{format}: {note:?} not in {drawn}");
        assert!(err.contains(&note), "{format}: {note:?} not in {err}");
    }
    // No node answered: nothing to draw, exit code 3 (as for `status` with no agent).
    for args in [
        &["graph", "--admin", &silent][..],
        &["graph", "-o", "dot", "--admin", &silent],
        &["status", "--cluster", "--admin", &silent],
    ] {
        let out = wormhole(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains(&format!("cannot reach the wormhole agent at {silent}")),
            "{args:?}: {err}"
        );
    }

    // --admin is for --cluster: a usage error, exit code 2.
    let out = wormhole(&["status", "--admin", &a]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--admin and --kubeconfig go with --cluster")
    );
}

/// A view naming `peers` peers `p0`, `p1`, ... (all `never`) as node `node`.
fn flood(node: &str, peers: usize) -> StatusView {
    let names: Vec<String> = (0..peers).map(|i| format!("p{i}")).collect();
    let states: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "never")).collect();
    view(node, &states)
}

/// One hostile admin endpoint among honest ones: the node name in a reply is only its claim,
/// so it can replace no other node's report (each report is kept with the endpoint it came
/// from), and the peers it names cost nothing beyond the nodes asked for.
#[test]
fn a_hostile_endpoint_can_neither_replace_a_report_nor_flood_the_view() {
    let n1 = serve(&view("n1", &[("n2", "ok"), ("n3", "lossy (30 %)")]));
    let n2 = serve(&view("n2", &[("n1", "ok"), ("n3", "ok")]));
    // Says it is n1, and that n1 reaches nobody.
    let liar = serve(&view("n1", &[("n2", "never"), ("n3", "never")]));
    let out = wormhole(&[
        "status",
        "--cluster",
        "-o",
        "json",
        "--admin",
        &n1,
        "--admin",
        &n2,
        "--admin",
        &liar,
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    let honest = nodes
        .iter()
        .find(|n| n["report"]["problems"]["n3"] == "lossy (30 %)")
        .unwrap_or_else(|| panic!("n1's own report was replaced: {json:#}"));
    assert_eq!(
        honest["report"]["problems"].as_object().unwrap().len(),
        1,
        "{json:#}"
    );
    assert_eq!(honest["admin"], n1.as_str(), "{json:#}");
    let liar_row = nodes
        .iter()
        .find(|n| n["admin"] == liar.as_str())
        .unwrap_or_else(|| panic!("no row for the endpoint {liar}: {json:#}"));
    assert_ne!(liar_row["name"], "n1", "{json:#}");
    // The table names the conflict; neither endpoint is taken for n1.
    let out = wormhole(&[
        "status",
        "--cluster",
        "--admin",
        &n1,
        "--admin",
        &n2,
        "--admin",
        &liar,
    ]);
    let table = text(&out);
    assert!(table.contains("also says it is node n1"), "{table}");

    // One endpoint naming 8,000 peers: the view has the nodes asked for, no more, and the
    // peers named but not asked for are counted, not drawn.
    let big = serve(&flood("n3", 8_000));
    let started = std::time::Instant::now();
    let out = wormhole(&[
        "status",
        "--cluster",
        "-o",
        "json",
        "--admin",
        &n1,
        "--admin",
        &n2,
        "--admin",
        &big,
    ]);
    let took = started.elapsed();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["nodes"].as_array().unwrap().len(), 3, "{took:?}");
    assert_eq!(json["not_asked"].as_array().unwrap().len(), 8_000);
    let out = wormhole(&[
        "status",
        "--cluster",
        "--admin",
        &n1,
        "--admin",
        &n2,
        "--admin",
        &big,
    ]);
    let table = text(&out);
    assert!(table.starts_with("3 nodes, 6 pairs"), "{table}");
    assert!(
        table.contains("8000 peers named by the nodes read were not asked for"),
        "{table}"
    );
    assert!(table.lines().count() < 60, "{table}");
    let out = wormhole(&["graph", "--admin", &n1, "--admin", &n2, "--admin", &big]);
    assert!(out.status.success(), "{out:?}");
    let svg = text(&out);
    assert!(svg.len() < 64 << 10, "{} bytes", svg.len());
}

/// A real mesh of six agents probing each other, with a fault per kind injected as in the
/// health tests: `wormhole status --cluster` and `wormhole graph`, run in one node against
/// every node's admin endpoint, name each broken pair with its cause. With
/// `WORMHOLE_EXAMPLE_DIR` set, the outputs are written there (the example of docs/troubleshooting.md).
#[test]
fn the_matrix_of_a_real_mesh_names_every_fault() {
    use crate::harness::{Backend, Cluster, root_or_skip, write_atomically};
    use crate::health::{NAMED_WITHIN, inject, until};
    use wormhole_testkit::underlay_ip;
    if !root_or_skip("the_matrix_of_a_real_mesh_names_every_fault") {
        return;
    }
    let mut c = Cluster::new(6, Backend::Embedded);
    // n3 is published with a key that is not its own (it reads the truth).
    let all: Vec<usize> = (1..=6).collect();
    let text = c.peers_text(&all, "");
    let wrong = crate::harness::new_key(&c.work.path().join("not-n3.key"));
    write_atomically(&c.peers, &text.replace(&c.node(3).public_key, &wrong));
    let own = c.work.path().join("n3-peers.toml");
    write_atomically(&own, &text);
    c.node_mut(3).peers = own;
    // Admin endpoints on the underlay, for `--admin` from another node: n1, where the
    // operator runs `status --cluster`, is allowed to read every node's /status.
    let operator = underlay_ip(1);
    for node in &mut c.nodes {
        node.start(&[
            "--probe-interval",
            "1s",
            "--admin-addr",
            "0.0.0.0:9473",
            "--admin-allow",
            &operator,
        ]);
    }
    for i in [1, 2, 4, 5, 6] {
        c.node_mut(i).wait_ready();
    }
    until(
        &c,
        "n3 never, every other pair ok",
        NAMED_WITHIN,
        |me, s| {
            s.len() == 5
                && s.iter().all(|(peer, state)| match (me, peer.as_str()) {
                    ("n3", _) | (_, "n3") => state == "never",
                    _ => state == "ok",
                })
        },
    );
    // An MTU black hole between n1 and n2, 30 % of n4's underlay UDP lost, n6's agent stopped.
    for (from, to) in [(1, 2), (2, 1)] {
        inject(
            &c,
            from,
            &[format!(
                "ip daddr {} udp dport 51820 ip length > 1200 drop",
                underlay_ip(to)
            )],
        );
    }
    inject(
        &c,
        4,
        &["oifname \"eth0\" meta l4proto udp numgen random mod 100 < 30 drop".into()],
    );
    let stopped = c.node_mut(6).daemon.take().unwrap().terminate();
    assert!(stopped.success(), "{stopped:?}");
    until(&c, "every fault named", NAMED_WITHIN, |me, s| {
        s.iter().all(|(peer, state)| match (me, peer.as_str()) {
            ("n3", _) | (_, "n3") => state == "never",
            (_, "n6") => state == "unreachable",
            ("n1", "n2") | ("n2", "n1") => state.starts_with("mtu-blackhole (max "),
            ("n4", _) | (_, "n4") => state.starts_with("lossy ("),
            _ => state == "ok",
        })
    });
    let mut args = vec![BIN];
    let admins: Vec<String> = (1..=6)
        .map(|i| format!("{}:9473", underlay_ip(i)))
        .collect();
    for a in &admins {
        args.extend(["--admin", a.as_str()]);
    }
    let run = |command: &[&str]| {
        let mut full = vec![BIN];
        full.extend_from_slice(command);
        full.extend_from_slice(&args[1..]);
        c.node(1).ns.run(&full)
    };
    let out = run(&["status", "--cluster"]);
    let matrix = text_of(&out);
    assert_eq!(out.status.code(), Some(4), "{matrix}");
    for line in [
        "6 nodes, 30 pairs (from -> to): ",
        "FROM \\ TO  1 2 3 4 5 6\n1 n1       - M N L . U\n",
        "5 n5       . . N L - U\n6 n6       ? ? ? ? ? -\n",
        "n3: 9 of 10 pairs (9 never)",
        "  n3 -> every node: never\n",
        "  n1 -> n2: mtu-blackhole (max ",
        &format!(
            "  not read: cannot reach the wormhole agent at {}",
            admins[5]
        ),
    ] {
        assert!(matrix.contains(line), "{line:?} not in\n{matrix}");
    }
    let svg_out = run(&["graph"]);
    let svg = text_of(&svg_out);
    roxmltree::Document::parse(&svg).expect("the SVG is XML");
    assert!(svg.contains(">never with 5 peers</tspan>"), "{svg}");
    let dot = text_of(&run(&["graph", "-o", "dot"]));
    assert!(dot.contains("\"n1\" -- \"n2\" [color=\"#8e24aa\""), "{dot}");
    if let Some(dir) = std::env::var_os("WORMHOLE_EXAMPLE_DIR") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("status-cluster.txt"), &matrix).unwrap();
        std::fs::write(dir.join("mesh.svg"), &svg).unwrap();
        std::fs::write(dir.join("mesh.dot"), &dot).unwrap();
    }
    for i in [1, 2, 4] {
        c.node(i)
            .ns
            .sh(&["nft", "delete", "table", "inet", "fault"]);
    }
}

fn text_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
