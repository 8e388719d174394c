//! The reconciler on in-memory backends.

use std::time::{Duration, SystemTime};

use wormhole_core::PeerState;
use wormhole_core::{Error, KeyStore, PresharedKey, PrivateKey, PublicKey, Reconciler, Settings};
use wormhole_core::{HostState, PeerStats};
use wormhole_core::{MemoryBackends, MemoryKeyStore, MemorySource, MemorySourceHandle};
use wormhole_core::{NodeEntry, Snapshot};

fn entry(name: &str, key: &PublicKey, cidr: &str) -> NodeEntry {
    NodeEntry {
        name: name.into(),
        public_key: key.to_base64(),
        endpoint: Some(format!("192.168.77.{}:51820", name.len())),
        pod_cidrs: vec![cidr.into()],
        persistent_keepalive: None,
        origin: format!("test {name}"),
    }
}

struct Node {
    key: PrivateKey,
    backends: MemoryBackends,
}

impl Node {
    fn new() -> Self {
        Node {
            key: PrivateKey::generate(),
            backends: MemoryBackends::default(),
        }
    }

    fn reconciler(&self, secret: Option<PresharedKey>) -> Reconciler {
        let keys = MemoryKeyStore::new(self.key.clone(), secret);
        Reconciler::new(settings(), self.backends.handles(keys))
    }

    /// Its reconciler (no PSK) running on a memory source: the source's handle, the status, the
    /// task.
    fn run(
        &self,
    ) -> (
        MemorySourceHandle,
        tokio::sync::watch::Receiver<wormhole_core::Status>,
        tokio::task::JoinHandle<()>,
    ) {
        let r = self.reconciler(None);
        let status = r.status();
        let (handle, source) = MemorySource::channel();
        let task = tokio::spawn(r.run(source, std::future::pending()));
        (handle, status, task)
    }

    fn peer_keys(&self) -> Vec<PublicKey> {
        self.backends
            .device
            .state()
            .map(|d| d.peers.keys().copied().collect())
            .unwrap_or_default()
    }
}

fn settings() -> Settings {
    let mut settings = Settings::new("local", vec!["10.99.0.0/16".parse().unwrap()]);
    settings.backoff_min = Duration::from_millis(100);
    settings
}

fn snapshot(local: &PublicKey, peers: &[(&str, &PublicKey, &str)]) -> Snapshot {
    let mut nodes = vec![entry("local", local, "10.99.1.0/24")];
    nodes.extend(peers.iter().map(|(n, k, c)| entry(n, k, c)));
    Snapshot {
        nodes,
        ..Snapshot::default()
    }
}

#[tokio::test]
async fn adds_changes_and_removes_peers() {
    let node = Node::new();
    let me = node.key.public_key();
    let (a, b) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let mut r = node.reconciler(None);

    // Before any snapshot: observe only, change nothing.
    assert!(r.reconcile().await.unwrap().is_empty());
    assert_eq!(node.backends.writes(), 0);

    r.update(Ok(snapshot(&me, &[("a", &a, "10.99.2.0/24")])));
    let plan = r.reconcile().await.unwrap();
    assert!(plan.device.create);
    assert_eq!(node.peer_keys(), [a]);
    let (link, routes) = node.backends.network.state();
    assert!(link.up);
    assert_eq!(link.mtu, Some(1420));
    assert_eq!(
        link.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.99.1.1/32"]
    );
    assert_eq!(
        routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.99.2.0/24"]
    );
    assert!(node.backends.firewall.policy().is_some());

    // Add b.
    r.update(Ok(snapshot(
        &me,
        &[("a", &a, "10.99.2.0/24"), ("b", &b, "10.99.3.0/24")],
    )));
    let plan = r.reconcile().await.unwrap();
    assert_eq!(plan.device.changes.len(), 1, "{plan}");
    let mut keys = vec![a, b];
    keys.sort();
    assert_eq!(node.peer_keys(), keys);

    // Change b's CIDR: only b is updated, only its allowed IPs, and the routes follow.
    r.update(Ok(snapshot(
        &me,
        &[("a", &a, "10.99.2.0/24"), ("b", &b, "10.99.4.0/24")],
    )));
    let plan = r.reconcile().await.unwrap();
    assert_eq!(plan.device.changes.len(), 1, "{plan}");
    assert!(plan.to_string().contains("~ peer"), "{plan}");
    assert_eq!(plan.routes.len(), 2, "{plan}");
    let device = node.backends.device.state().unwrap();
    assert_eq!(
        device.peers[&b].allowed_ips,
        ["10.99.4.0/24".parse().unwrap()]
    );

    // Remove a.
    r.update(Ok(snapshot(&me, &[("b", &b, "10.99.4.0/24")])));
    r.reconcile().await.unwrap();
    assert_eq!(node.peer_keys(), [b]);
    let routes = node.backends.network.state().1;
    assert_eq!(
        routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.99.4.0/24"]
    );

    // Level-triggered: a further pass is a no-op.
    let writes = node.backends.writes();
    assert!(r.reconcile().await.unwrap().is_empty());
    assert_eq!(node.backends.writes(), writes);
}

#[tokio::test]
async fn source_failure_keeps_the_last_mesh() {
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let mut r = node.reconciler(None);
    r.update(Ok(snapshot(&me, &[("a", &a, "10.99.2.0/24")])));
    r.reconcile().await.unwrap();
    let before = node.backends.device.state();

    // The source fails...
    r.update(Err(Error::Source("api server unreachable".into())));
    assert!(r.reconcile().await.unwrap().is_empty());
    assert_eq!(node.backends.device.state(), before);
    let status = r.status().borrow().clone();
    assert_eq!(
        status.source_error.as_deref(),
        Some("peer source: api server unreachable")
    );
    assert_eq!(status.peers.len(), 1);

    // ...or sends a snapshot that makes no mesh (this node missing): the last mesh stays.
    r.update(Ok(Snapshot {
        nodes: vec![entry("other", &a, "10.99.2.0/24")],
        ..Snapshot::default()
    }));
    assert!(r.reconcile().await.unwrap().is_empty());
    assert_eq!(node.backends.device.state(), before);
    assert!(
        r.status()
            .borrow()
            .source_error
            .as_deref()
            .unwrap()
            .contains("not in the snapshot")
    );

    // Drift is still repaired from the last good mesh while the source is down.
    node.backends.device.set_state(None);
    r.reconcile().await.unwrap();
    assert_eq!(node.backends.device.state(), before);

    // Recovery clears the error.
    r.update(Ok(snapshot(&me, &[("a", &a, "10.99.2.0/24")])));
    r.reconcile().await.unwrap();
    assert_eq!(r.status().borrow().source_error, None);
}

/// A source that starts from a saved picture while its server is down yields the picture and
/// then the outage: the error must not discard the picture no pass has taken yet.
#[tokio::test]
async fn an_error_right_after_a_snapshot_does_not_discard_it() {
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let mut r = node.reconciler(None);
    r.update(Ok(snapshot(&me, &[("a", &a, "10.99.2.0/24")])));
    r.update(Err(Error::Source("api server unreachable".into())));
    r.reconcile().await.unwrap();
    assert_eq!(node.peer_keys(), [a], "the snapshot was applied");
    let status = r.status().borrow().clone();
    assert_eq!(status.peers.len(), 1);
    assert_eq!(
        status.source_error.as_deref(),
        Some("peer source: api server unreachable"),
        "and the outage is shown"
    );
    // The other way round, the snapshot is the news: no error.
    r.update(Err(Error::Source("api server unreachable".into())));
    r.update(Ok(snapshot(&me, &[("a", &a, "10.99.2.0/24")])));
    r.reconcile().await.unwrap();
    assert_eq!(r.status().borrow().source_error, None);
}

#[tokio::test(start_paused = true)]
async fn backend_failing_twice_then_recovering_converges() {
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let r = node.reconciler(None);
    let status = r.status();
    let (handle, source) = MemorySource::channel();
    handle.send(snapshot(&me, &[("a", &a, "10.99.2.0/24")]));
    node.backends.device.fail_next(2);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(r.run(source, async move {
        let _ = stopped.await;
    }));
    // Time is paused and auto-advances: the retries happen at 100 ms, then 200 ms.
    let mut status = status;
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| {
            s.errors == 2
                && s.last_pass
                    .as_ref()
                    .is_some_and(|p| p.error.is_none() && p.changes > 0)
        }),
    )
    .await
    .expect("converged after two failures")
    .unwrap();
    assert_eq!(node.peer_keys(), [a]);
    let s = status.borrow().clone();
    assert_eq!(s.errors_by_kind.get("wireguard"), Some(&2));
    assert!(s.ready());
    stop.send(()).unwrap();
    task.await.unwrap();
    // Stopping tore nothing down.
    assert_eq!(node.peer_keys(), [a]);
    assert!(node.backends.firewall.policy().is_some());
}

#[tokio::test(start_paused = true)]
async fn run_follows_the_source_and_resyncs_drift() {
    let node = Node::new();
    let me = node.key.public_key();
    let (a, b) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let (handle, mut status, task) = node.run();
    handle.send(snapshot(&me, &[("a", &a, "10.99.2.0/24")]));
    status.wait_for(|s| s.peers.len() == 1).await.unwrap();
    handle.send(snapshot(
        &me,
        &[("a", &a, "10.99.2.0/24"), ("b", &b, "10.99.3.0/24")],
    ));
    status.wait_for(|s| s.peers.len() == 2).await.unwrap();
    // Someone deletes the firewall table: the next resync tick repairs it.
    node.backends.firewall.set_policy(None);
    let passes = status.borrow().passes;
    status.wait_for(|s| s.passes > passes).await.unwrap();
    assert!(node.backends.firewall.policy().is_some());
    task.abort();
}

#[tokio::test]
async fn restart_over_a_correct_host_writes_nothing() {
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let snap = snapshot(&me, &[("a", &a, "10.99.2.0/24")]);
    let secret = Some(PresharedKey::generate());
    let mut first = node.reconciler(secret.clone());
    first.update(Ok(snap.clone()));
    first.reconcile().await.unwrap();
    drop(first);
    let writes = node.backends.writes();

    // A new daemon over the same host: adopts it, zero writes.
    let mut second = node.reconciler(secret);
    assert!(second.reconcile().await.unwrap().is_empty());
    // The device survived, but no mesh is applied yet: not ready.
    assert!(!second.status().borrow().ready());
    second.update(Ok(snap));
    let plan = second.reconcile().await.unwrap();
    assert!(plan.is_empty(), "{plan}");
    assert_eq!(node.backends.writes(), writes);
    assert!(second.status().borrow().ready());
}

#[tokio::test]
async fn pair_keys_match_on_both_ends_and_rotation_is_picked_up() {
    let (x, y) = (Node::new(), Node::new());
    let secret = PresharedKey::generate();
    let (kx, ky) = (x.key.public_key(), y.key.public_key());
    let mut rx = x.reconciler(Some(secret.clone()));
    let mut settings_y = settings();
    settings_y.node_name = "y".into();
    let keys_y = MemoryKeyStore::new(y.key.clone(), Some(secret));
    let mut ry = Reconciler::new(settings_y, y.backends.handles(keys_y));
    let nodes = vec![
        entry("local", &kx, "10.99.1.0/24"),
        entry("y", &ky, "10.99.2.0/24"),
    ];
    rx.update(Ok(Snapshot {
        nodes: nodes.clone(),
        ..Snapshot::default()
    }));
    ry.update(Ok(Snapshot {
        nodes,
        ..Snapshot::default()
    }));
    rx.reconcile().await.unwrap();
    ry.reconcile().await.unwrap();
    let psk_x = x.backends.device.state().unwrap().peers[&ky]
        .preshared_key
        .clone();
    let psk_y = y.backends.device.state().unwrap().peers[&kx]
        .preshared_key
        .clone();
    assert!(psk_x.is_some());
    assert_eq!(psk_x, psk_y);

    // Rotation through the key store: the next pass sets the new key, and status shows it.
    let keys = MemoryKeyStore::new(x.key.clone(), None);
    let rotated = keys.rotate().await.unwrap();
    let mut r = Reconciler::new(settings(), x.backends.handles(keys));
    r.update(Ok(Snapshot {
        nodes: vec![
            entry("local", &rotated.public_key(), "10.99.1.0/24"),
            entry("y", &ky, "10.99.2.0/24"),
        ],
        ..Snapshot::default()
    }));
    let plan = r.reconcile().await.unwrap();
    assert!(plan.to_string().contains("private key"), "{plan}");
    assert_eq!(
        x.backends.device.state().unwrap().private_key,
        Some(rotated.clone())
    );
    // The PSK was removed (no secret any more), and the peer otherwise untouched.
    assert_eq!(
        x.backends.device.state().unwrap().peers[&ky].preshared_key,
        None
    );
    assert_eq!(r.status().borrow().public_key, Some(rotated.public_key()));
}

#[tokio::test]
async fn status_reports_peer_states_and_rejections() {
    let node = Node::new();
    let me = node.key.public_key();
    let (a, b) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let mut r = node.reconciler(None);
    let mut snap = snapshot(&me, &[("a", &a, "10.99.2.0/24"), ("b", &b, "10.99.3.0/24")]);
    snap.nodes.push(entry(
        "thief",
        &PrivateKey::generate().public_key(),
        "10.99.2.0/24",
    ));
    r.update(Ok(snap));
    r.reconcile().await.unwrap();
    let now = SystemTime::now();
    node.backends.device.set_stats(
        a,
        PeerStats {
            latest_handshake: Some(now),
            rx_bytes: 10,
            tx_bytes: 20,
        },
    );
    node.backends.device.set_stats(
        b,
        PeerStats {
            latest_handshake: Some(now - Duration::from_secs(600)),
            ..PeerStats::default()
        },
    );
    r.reconcile().await.unwrap();
    let status = r.status().borrow().clone();
    let states: Vec<_> = status
        .peers
        .iter()
        .map(|p| (p.name.as_str(), p.state(now)))
        .collect();
    assert_eq!(states, [("a", PeerState::Ok), ("b", PeerState::Stale)]);
    assert_eq!(status.peers[0].rx_bytes, 10);
    assert_eq!(status.rejected.len(), 1);
    assert!(
        status.rejected[0]
            .to_string()
            .contains("overlaps 10.99.2.0/24 of node a")
    );
    assert_eq!(status.passes, 2);
    assert_eq!(status.backend, "memory");
    // A desired state for comparison: the status matches the mesh.
    let mesh = r.mesh().unwrap();
    let desired = HostState::desired(mesh, &node.key, None, &settings().host);
    assert_eq!(desired.device.unwrap().peers.len(), 2);
}

#[tokio::test]
async fn a_handshake_the_device_forgets_stays_seen() {
    // gotatun reports no handshake once a session expired: the peer that stopped answering is
    // stale, not never.
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let mut r = node.reconciler(None);
    r.update(Ok(snapshot(&me, &[("a", &a, "10.99.2.0/24")])));
    r.reconcile().await.unwrap();
    let then = SystemTime::now() - Duration::from_secs(600);
    node.backends.device.set_stats(
        a,
        PeerStats {
            latest_handshake: Some(then),
            ..PeerStats::default()
        },
    );
    r.reconcile().await.unwrap();
    node.backends.device.set_stats(a, PeerStats::default());
    r.reconcile().await.unwrap();
    let status = r.status().borrow().clone();
    assert_eq!(status.peers[0].latest_handshake, Some(then));
    assert_eq!(status.peers[0].state(SystemTime::now()), PeerState::Stale);
}

#[tokio::test]
async fn a_node_that_declares_keepalive_keeps_every_tunnel_alive() {
    // Behind NAT, only this node's own keepalives keep its mapping open for its peers.
    let node = Node::new();
    let me = node.key.public_key();
    let (a, b) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let mut r = node.reconciler(None);
    let mut snap = snapshot(&me, &[("a", &a, "10.99.2.0/24"), ("b", &b, "10.99.3.0/24")]);
    snap.nodes[0].persistent_keepalive = Some(25);
    snap.nodes[0].endpoint = None;
    snap.nodes[2].persistent_keepalive = Some(10);
    r.update(Ok(snap));
    r.reconcile().await.unwrap();
    let device = node.backends.device.state().unwrap();
    assert_eq!(device.peers[&a].persistent_keepalive, Some(25));
    assert_eq!(
        device.peers[&b].persistent_keepalive,
        Some(10),
        "the shorter wins"
    );
}

#[tokio::test]
async fn an_observed_endpoint_is_used_only_while_the_device_knows_no_working_one() {
    // Peers behind NAT publish no endpoint; other nodes report where they see them.
    let node = Node::new();
    let me = node.key.public_key();
    let (a, b, c) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let mut r = node.reconciler(None);
    let mut snap = snapshot(
        &me,
        &[
            ("a", &a, "10.99.2.0/24"),
            ("b", &b, "10.99.3.0/24"),
            ("c", &c, "10.99.4.0/24"),
        ],
    );
    snap.nodes[1].endpoint = None;
    snap.nodes[2].endpoint = None;
    let observed = |s: &mut Snapshot, list: &[(&str, &str)]| {
        s.observed_endpoints = list
            .iter()
            .map(|(n, e)| (n.to_string(), e.to_string()))
            .collect();
    };
    // c has an endpoint of its own: an observation never overrides it. b's is not an endpoint.
    observed(
        &mut snap,
        &[
            ("a", "203.0.113.7:4500"),
            ("b", "example.com:51820"),
            ("c", "203.0.113.9:1"),
        ],
    );
    r.update(Ok(snap.clone()));
    r.reconcile().await.unwrap();
    let device = node.backends.device.state().unwrap();
    let endpoint = |d: &wormhole_core::DeviceState, k: &PublicKey| d.peers[k].endpoint;
    assert_eq!(
        endpoint(&device, &a),
        Some("203.0.113.7:4500".parse().unwrap())
    );
    assert_eq!(endpoint(&device, &b), None, "a bad observation is ignored");
    assert_eq!(
        endpoint(&device, &c),
        Some("192.168.77.1:51820".parse().unwrap())
    );
    // The status shows the device as the pass read it: the next one.
    assert!(r.reconcile().await.unwrap().is_empty());
    let status = r.status().borrow().clone();
    let row = status.peers.iter().find(|p| p.name == "a").unwrap();
    assert!(row.endpoint_learned, "{row:?}");
    let row = status.peers.iter().find(|p| p.name == "c").unwrap();
    assert!(!row.endpoint_learned, "configured: {row:?}");

    // a roams (WireGuard follows its authenticated packets) and handshakes: that endpoint works
    // and stays, whatever the observers still say.
    let mut state = node.backends.device.state().unwrap();
    state.peers.get_mut(&a).unwrap().endpoint = Some("198.51.100.1:6000".parse().unwrap());
    node.backends.device.set_state(Some(state));
    node.backends.device.set_stats(
        a,
        PeerStats {
            latest_handshake: Some(SystemTime::now()),
            ..PeerStats::default()
        },
    );
    assert!(r.reconcile().await.unwrap().is_empty());
    let device = node.backends.device.state().unwrap();
    assert_eq!(
        endpoint(&device, &a),
        Some("198.51.100.1:6000".parse().unwrap())
    );

    // Without a handshake for 3 minutes, the endpoint the observers report wins again.
    node.backends.device.set_stats(
        a,
        PeerStats {
            latest_handshake: Some(SystemTime::now() - Duration::from_secs(200)),
            ..PeerStats::default()
        },
    );
    // (A new reconciler: this one remembers the handshake it saw, as an agent would for 3
    // minutes.)
    let mut r2 = node.reconciler(None);
    r2.update(Ok(snap.clone()));
    r2.reconcile().await.unwrap();
    let device = node.backends.device.state().unwrap();
    assert_eq!(
        endpoint(&device, &a),
        Some("203.0.113.7:4500".parse().unwrap())
    );

    // When the observers no longer report it, the learned endpoint is left alone.
    observed(&mut snap, &[]);
    r2.update(Ok(snap));
    r2.reconcile().await.unwrap();
    let device = node.backends.device.state().unwrap();
    assert_eq!(
        endpoint(&device, &a),
        Some("203.0.113.7:4500".parse().unwrap())
    );
}

#[tokio::test]
async fn the_pass_hook_sees_every_pass_and_its_plan() {
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let mut r = node.reconciler(None);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    r.on_pass(move |info, plan| {
        log.lock()
            .unwrap()
            .push((info.error.is_some(), plan.map(|p| p.len())));
    });
    r.update(Ok(snapshot(&me, &[("a", &a, "10.99.2.0/24")])));
    let applied = r.reconcile().await.unwrap().len();
    node.backends.firewall.fail_next(1);
    node.backends.firewall.set_policy(None);
    assert!(r.reconcile().await.is_err());
    assert_eq!(
        *seen.lock().unwrap(),
        [(false, Some(applied)), (true, None)]
    );
}

#[tokio::test(start_paused = true)]
async fn source_changes_plan_against_the_last_pass_and_ticks_read_the_host() {
    let node = Node::new();
    let me = node.key.public_key();
    let (a, b) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let (handle, mut status, task) = node.run();
    handle.send(snapshot(&me, &[("a", &a, "10.99.2.0/24")]));
    status.wait_for(|s| s.peers.len() == 1).await.unwrap();
    let reads = node.backends.device.reads();

    // A source change: planned against what the last pass left, no read.
    handle.send(snapshot(
        &me,
        &[("a", &a, "10.99.2.0/24"), ("b", &b, "10.99.3.0/24")],
    ));
    status.wait_for(|s| s.peers.len() == 2).await.unwrap();
    assert_eq!(
        node.backends.device.reads(),
        reads,
        "a source change read the device"
    );
    let mut keys = vec![a, b];
    keys.sort();
    assert_eq!(node.peer_keys(), keys);

    // Someone removes b by hand: the next resync tick reads the host and repairs it.
    let mut device = node.backends.device.state().unwrap();
    device.peers.remove(&b);
    node.backends.device.set_state(Some(device));
    let passes = status.borrow().passes;
    status.wait_for(|s| s.passes > passes).await.unwrap();
    assert!(node.backends.device.reads() > reads);
    assert_eq!(node.peer_keys(), keys, "the tick repaired the drift");

    // A failed pass forgets what it knew: the retry reads the host.
    node.backends.network.fail_next(1);
    let reads = node.backends.device.reads();
    handle.send(snapshot(&me, &[("a", &a, "10.99.2.0/24")]));
    status
        .wait_for(|s| s.peers.len() == 1 && s.last_pass.as_ref().is_some_and(|p| p.error.is_none()))
        .await
        .unwrap();
    assert!(
        node.backends.device.reads() > reads,
        "the retry after a failure read the host"
    );
    assert_eq!(node.peer_keys(), [a]);
    task.abort();
}

/// A cluster CIDR holding this host's underlay address or gateway, or this node's endpoint,
/// would make the firewall drop the node's own underlay traffic: the mesh is refused with the
/// conflict named, and the last good mesh stays in force.
#[tokio::test]
async fn cluster_cidrs_holding_the_underlay_are_refused() {
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let keys = MemoryKeyStore::new(node.key.clone(), None);
    let mut settings = Settings::new("local", Vec::new());
    settings.underlay = vec!["10.1.0.5".parse().unwrap(), "10.1.0.1".parse().unwrap()];
    let mut r = Reconciler::new(settings, node.backends.handles(keys));
    let status = r.status();

    let with_cluster = |cidr: &str| Snapshot {
        cluster_cidrs: vec![cidr.parse().unwrap()],
        ..snapshot(&me, &[("a", &a, "10.99.2.0/24")])
    };
    r.update(Ok(with_cluster("10.99.0.0/16")));
    r.reconcile().await.unwrap();
    assert_eq!(node.peer_keys(), [a]);

    // 10.0.0.0/8 holds the host's 10.1.0.5; 0.0.0.0/0 holds everything; 192.168.0.0/16 holds
    // the nodes' endpoints (192.168.77.x).
    for (cidr, named) in [
        (
            "10.0.0.0/8",
            "this host's underlay address or default gateway (10.1.0.5)",
        ),
        ("0.0.0.0/0", "(10.1.0.5)"),
        (
            "192.168.0.0/16",
            "the endpoint of this node (local) (192.168.77.5)",
        ),
    ] {
        let mut snapshot = with_cluster(cidr);
        if cidr == "192.168.0.0/16" {
            // Pod CIDRs inside the bad cluster CIDR, so only the underlay rule can refuse it.
            snapshot.nodes[0].pod_cidrs = vec!["192.168.1.0/24".into()];
            snapshot.nodes[1].pod_cidrs = vec!["192.168.2.0/24".into()];
        }
        r.update(Ok(snapshot));
        r.reconcile().await.unwrap();
        let error = status.borrow().source_error.clone().expect("not refused");
        assert!(
            error.contains(&format!("cluster CIDR {cidr} contains")) && error.contains(named),
            "{error}"
        );
        // The last good mesh is still what the host has.
        assert_eq!(node.peer_keys(), [a]);
        assert_eq!(
            node.backends.firewall.policy().unwrap().cluster_cidrs,
            ["10.99.0.0/16".parse().unwrap()]
        );
    }
}

/// A peer whose endpoint lies in the overlay (a compromised node publishing one, or a typo) is
/// refused alone, with its reason: the rest of the mesh keeps following the source (a node that
/// joins is added, one that leaves is removed), and a reconciler that starts with it in the
/// snapshot gets every other peer. This used to refuse the whole snapshot.
#[tokio::test]
async fn a_peer_endpoint_inside_the_overlay_hurts_only_that_peer() {
    let node = Node::new();
    let me = node.key.public_key();
    let [a, b, c] = [(); 3].map(|()| PrivateKey::generate().public_key());
    let bad = |mut snapshot: Snapshot, endpoint: &str| {
        let b = snapshot.nodes.iter_mut().find(|n| n.name == "b").unwrap();
        b.endpoint = Some(endpoint.into());
        snapshot
    };
    let mut r = node.reconciler(None);
    let status = r.status();
    r.update(Ok(snapshot(
        &me,
        &[("a", &a, "10.99.2.0/24"), ("b", &b, "10.99.3.0/24")],
    )));
    r.reconcile().await.unwrap();
    assert_eq!(node.peer_keys().len(), 2);

    // b moves its endpoint into the overlay (an IPv4-mapped form too) while c joins.
    for endpoint in ["10.99.7.1:51820", "[::ffff:10.99.7.1]:51820"] {
        r.update(Ok(bad(
            snapshot(
                &me,
                &[
                    ("a", &a, "10.99.2.0/24"),
                    ("b", &b, "10.99.3.0/24"),
                    ("c", &c, "10.99.4.0/24"),
                ],
            ),
            endpoint,
        )));
        r.reconcile().await.unwrap();
        let s = status.borrow().clone();
        assert_eq!(s.source_error, None, "the snapshot as a whole is fine");
        let mut keys = node.peer_keys();
        keys.sort();
        let mut want = vec![a, c];
        want.sort();
        assert_eq!(keys, want, "c joined, b refused alone ({endpoint})");
        assert_eq!(s.rejected.len(), 1, "{:?}", s.rejected);
        assert_eq!(s.rejected[0].name, "b");
        assert_eq!(s.rejected[0].reason.kind(), "endpoint_in_overlay");
        let text = s.rejected[0].to_string();
        assert!(
            text.contains("lies inside the overlay CIDR 10.99.0.0/16"),
            "{text}"
        );
    }

    // a leaves: removed, although b is still bad.
    r.update(Ok(bad(
        snapshot(&me, &[("b", &b, "10.99.3.0/24"), ("c", &c, "10.99.4.0/24")]),
        "10.99.7.1:51820",
    )));
    r.reconcile().await.unwrap();
    assert_eq!(node.peer_keys(), [c]);

    // An agent that starts now gets its mesh (c), not nothing.
    let fresh = Node::new();
    let mut r = Reconciler::new(
        settings(),
        fresh
            .backends
            .handles(MemoryKeyStore::new(node.key.clone(), None)),
    );
    r.update(Ok(bad(
        snapshot(&me, &[("b", &b, "10.99.3.0/24"), ("c", &c, "10.99.4.0/24")]),
        "10.99.7.1:51820",
    )));
    r.reconcile().await.unwrap();
    assert_eq!(fresh.peer_keys(), [c]);
    assert_eq!(r.status().borrow().source_error, None);
}

/// Passes counted so far.
fn passes(status: &tokio::sync::watch::Receiver<wormhole_core::Status>) -> u64 {
    status.borrow().passes
}

/// The reconciler owns deduplication: a snapshot equal to the mesh in force causes no pass.
#[tokio::test(start_paused = true)]
async fn an_equal_snapshot_causes_no_pass() {
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let (handle, mut status, task) = node.run();
    let snap = snapshot(&me, &[("a", &a, "10.99.2.0/24")]);
    handle.send(snap.clone());
    status.wait_for(|s| s.peers.len() == 1).await.unwrap();
    let before = passes(&status);
    for _ in 0..3 {
        handle.send(snap.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(passes(&status), before, "a pass for an equal snapshot");
    // A different one is news.
    handle.send(snapshot(&me, &[("a", &a, "10.99.3.0/24")]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(passes(&status), before + 1);
    task.abort();
}

/// The reconciler owns debouncing: snapshots that follow each other closely are one pass, for
/// the last one.
#[tokio::test(start_paused = true)]
async fn a_burst_of_snapshots_is_one_pass() {
    let node = Node::new();
    let me = node.key.public_key();
    let peers: Vec<PublicKey> = (0..5)
        .map(|_| PrivateKey::generate().public_key())
        .collect();
    let (handle, mut status, task) = node.run();
    // The first pass (no mesh yet: adopt) is out of the way.
    status.wait_for(|s| s.passes == 1).await.unwrap();
    let names = ["a", "b", "c", "d", "e"];
    let cidrs: Vec<String> = (2..7).map(|i| format!("10.99.{i}.0/24")).collect();
    // Five snapshots 4 ms apart, each adding a peer: within the 25 ms window.
    for n in 1..=5 {
        let list: Vec<(&str, &PublicKey, &str)> = (0..n)
            .map(|i| (names[i], &peers[i], cidrs[i].as_str()))
            .collect();
        handle.send(snapshot(&me, &list));
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    status.wait_for(|s| s.peers.len() == 5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(passes(&status), 2, "one pass for the burst");
    assert_eq!(node.peer_keys().len(), 5);
    task.abort();
}

/// Errors are cleared by the next good snapshot, even one equal to the mesh in force: a source
/// need not remember that it failed.
#[tokio::test(start_paused = true)]
async fn an_equal_snapshot_after_an_error_clears_it() {
    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let (handle, mut status, task) = node.run();
    let snap = snapshot(&me, &[("a", &a, "10.99.2.0/24")]);
    handle.send(snap.clone());
    status.wait_for(|s| s.peers.len() == 1).await.unwrap();
    handle.fail("api server unreachable");
    status.wait_for(|s| s.source_error.is_some()).await.unwrap();
    // The same error again is no news: no pass.
    let shown = passes(&status);
    handle.fail("api server unreachable");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(passes(&status), shown);
    handle.send(snap);
    status.wait_for(|s| s.source_error.is_none()).await.unwrap();
    assert_eq!(node.peer_keys(), [a]);
    task.abort();
}

/// Any stream is a source, with any error type: a foreign error is shown as a source error, a
/// `wormhole_core::Error` as it is (not wrapped twice).
#[tokio::test(start_paused = true)]
async fn a_stream_with_its_own_error_type_is_a_source() {
    use futures::StreamExt as _;

    #[derive(Debug)]
    struct InventoryDown;
    impl std::fmt::Display for InventoryDown {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("inventory down")
        }
    }
    impl std::error::Error for InventoryDown {}

    let node = Node::new();
    let me = node.key.public_key();
    let a = PrivateKey::generate().public_key();
    let r = node.reconciler(None);
    let mut status = r.status();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Snapshot, InventoryDown>>();
    let source = futures::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) });
    let task = tokio::spawn(r.run(source, std::future::pending()));
    tx.send(Ok(snapshot(&me, &[("a", &a, "10.99.2.0/24")])))
        .unwrap();
    status.wait_for(|s| s.peers.len() == 1).await.unwrap();
    tx.send(Err(InventoryDown)).unwrap();
    let shown = status
        .wait_for(|s| s.source_error.is_some())
        .await
        .unwrap()
        .source_error
        .clone();
    assert_eq!(shown.as_deref(), Some("peer source: inventory down"));
    task.abort();

    // wormhole-core's own error: kept as it is.
    let r = node.reconciler(None);
    let mut status = r.status();
    let unreadable = Error::PeersFile {
        path: "peers.toml".into(),
        message: "line 1: expected `=`".into(),
    };
    let source =
        futures::stream::iter([Err::<Snapshot, _>(unreadable)]).chain(futures::stream::pending());
    let task = tokio::spawn(r.run(source, std::future::pending()));
    let shown = status
        .wait_for(|s| s.source_error.is_some())
        .await
        .unwrap()
        .source_error
        .clone();
    assert_eq!(
        shown.as_deref(),
        Some("peers file peers.toml: line 1: expected `=`")
    );
    task.abort();
}
