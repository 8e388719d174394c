//! The peer source over real HTTP: follows Nodes and WormholeNodes, survives API restarts and
//! compaction, and takes CIDRs from Nodes only.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wormhole_core::{MemoryBackends, MemoryKeyStore};
use wormhole_core::{PeerSource, PrivateKey, PublicKey, Reconciler, Settings, Snapshot};
use wormhole_k8s::SecretKeyStore;
use wormhole_k8s::testing::FakeApi;
use wormhole_k8s::{EventSink, PublishedEndpoint};
use wormhole_k8s::{KubePeerSource, detect_cluster_cidrs};

fn key() -> PublicKey {
    PrivateKey::generate().public_key()
}

fn cluster() -> Vec<ipnet::IpNet> {
    vec![
        "10.99.0.0/16".parse().unwrap(),
        "fd99::/48".parse().unwrap(),
    ]
}

fn publish(api: &FakeApi, name: &str, key: &PublicKey, i: u8) {
    api.put_wormhole(name, json!({"publicKey": key.to_base64(), "endpoint": format!("192.168.77.{i}:51820"), "listenPort": 51820}));
}

async fn next(source: &mut KubePeerSource) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("a snapshot within 10 s")
        .expect("a good snapshot")
}

fn names(s: &Snapshot) -> Vec<&str> {
    s.nodes.iter().map(|n| n.name.as_str()).collect()
}

/// A cluster with `local` and peer `a`.
async fn cluster_with_a() -> (Arc<FakeApi>, PublicKey, PublicKey) {
    let api = FakeApi::start().await;
    let (me, a) = (key(), key());
    api.put_node("local", &["10.99.1.0/24"], "192.168.77.1");
    api.put_node("a", &["10.99.2.0/24", "fd99:0:0:2::/64"], "192.168.77.2");
    publish(&api, "a", &a, 2);
    (api, me, a)
}

#[tokio::test]
async fn follows_node_add_update_delete_and_cidr_changes() {
    let (api, me, _) = cluster_with_a().await;
    let mut source = KubePeerSource::new(api.client(), "local", me, cluster());
    let s = next(&mut source).await;
    assert_eq!(names(&s), ["a", "local"]);
    assert_eq!(s.nodes[0].pod_cidrs, ["10.99.2.0/24", "fd99:0:0:2::/64"]);
    assert_eq!(s.nodes[0].endpoint.as_deref(), Some("192.168.77.2:51820"));

    // A Node without a WormholeNode is not a peer yet; once published, it is.
    api.put_node("b", &["10.99.3.0/24"], "192.168.77.3");
    publish(&api, "b", &key(), 3);
    let s = next(&mut source).await;
    assert_eq!(names(&s), ["a", "b", "local"]);

    // IPAM changes a's CIDR.
    api.put_node("a", &["10.99.20.0/24"], "192.168.77.2");
    let s = next(&mut source).await;
    assert_eq!(s.nodes[0].pod_cidrs, ["10.99.20.0/24"]);

    // Deleting b's Node garbage-collects its WormholeNode; b leaves.
    api.delete_node("b");
    let s = next(&mut source).await;
    assert_eq!(names(&s), ["a", "local"]);
    assert!(
        api.get(wormhole_k8s::testing::Kind::Wormhole, "b")
            .is_none()
    );

    // A heartbeat-like rewrite of a Node that changes nothing yields nothing.
    api.put_node("a", &["10.99.20.0/24"], "192.168.77.2");
    assert!(
        tokio::time::timeout(Duration::from_millis(700), source.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_wormholenode_cannot_claim_cidrs() {
    let (api, me, a) = cluster_with_a().await;
    // a claims local's CIDR and the whole cluster through fields the type does not have.
    api.put_wormhole(
        "a",
        json!({"publicKey": a.to_base64(), "listenPort": 51820, "podCIDRs": ["10.99.1.0/24"],
               "allowedIPs": ["10.99.0.0/16"], "podCIDR": "10.99.1.0/24"}),
    );
    let mut source = KubePeerSource::new(api.client(), "local", me, cluster());
    let s = next(&mut source).await;
    assert_eq!(s.nodes[0].name, "a");
    assert_eq!(
        s.nodes[0].pod_cidrs,
        ["10.99.2.0/24", "fd99:0:0:2::/64"],
        "CIDRs come from the Node only"
    );
}

/// Issue 20: a node writes its own WormholeNode status, and every agent reads every
/// WormholeNode. A status the type cannot read (a counter beyond `u32`, a list that is no list)
/// used to fail the watch of every agent (one object failing to decode fails the whole list):
/// nodes that joined afterwards never appeared, and an agent starting then got no mesh. It is
/// read field by field now: the node stays, the rest of the mesh follows the API.
#[tokio::test]
async fn a_status_the_type_cannot_read_freezes_nobody() {
    let (api, me, _) = cluster_with_a().await;
    let mut source = KubePeerSource::new(api.client(), "local", me, cluster());
    assert_eq!(names(&next(&mut source).await), ["a", "local"]);
    api.put_wormhole_status(
        "a",
        json!({"peersOk": 1u64 << 40, "peersStale": -1, "observedEndpoints": "everywhere",
               "problems": [{"peer": 5}], "keyPrefix": "abcd"}),
    );
    api.put_node("b", &["10.99.3.0/24"], "192.168.77.3");
    publish(&api, "b", &key(), 3);
    let s = next(&mut source).await;
    assert_eq!(names(&s), ["a", "b", "local"]);
    // An agent starting now lists everything.
    let mut fresh = KubePeerSource::new(api.client(), "local", me, cluster());
    assert_eq!(names(&next(&mut fresh).await), ["a", "b", "local"]);
}

/// Issue 9: an outage in which nothing changes. A watch that resumes reports nothing until
/// something changes, so the source used to show the outage's error until the next change
/// (forever, in a quiet cluster): it must yield the mesh again within seconds of the API
/// server's return, which clears the error.
#[tokio::test]
async fn the_error_clears_after_an_outage_in_which_nothing_changed() {
    let (api, me, _) = cluster_with_a().await;
    let mut source = KubePeerSource::new(api.client(), "local", me, cluster());
    let before = next(&mut source).await;
    api.stop().await;
    let error = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("the outage is reported within 10 s");
    assert!(error.is_err(), "an error during the outage: {error:?}");
    // Let the watches fail a few times, as in a real outage.
    let quiet = tokio::time::timeout(Duration::from_secs(3), source.next()).await;
    assert!(quiet.is_err(), "nothing more during the outage: {quiet:?}");
    api.restart().await;
    let back = std::time::Instant::now();
    let after = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("the mesh again within 10 s of the API server's return")
        .expect("a good snapshot");
    eprintln!(
        "the mesh again {:?} after the API server came back",
        back.elapsed()
    );
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(after, before, "the same mesh");
}

#[tokio::test]
async fn survives_an_api_server_restart_and_410_gone_without_removing_peers() {
    let (api, me, _) = cluster_with_a().await;
    api.put_node("b", &["10.99.3.0/24"], "192.168.77.3");
    publish(&api, "b", &key(), 3);
    let mut source = KubePeerSource::new(api.client(), "local", me, cluster());
    assert_eq!(names(&next(&mut source).await), ["a", "b", "local"]);

    // The API server goes away. Whatever the source says meanwhile, it never drops a peer.
    api.stop().await;
    let outage = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match source.next().await {
                Ok(s) => assert_eq!(
                    names(&s),
                    ["a", "b", "local"],
                    "a peer vanished during the outage"
                ),
                Err(e) => eprintln!("during the outage: {e}"),
            }
        }
    })
    .await;
    assert!(outage.is_err(), "the loop only ends by timeout");

    // While it was down, c joined and etcd compacted: the watch resumes with 410 Gone, the
    // watcher lists again and converges.
    api.put_node("c", &["10.99.4.0/24"], "192.168.77.4");
    publish(&api, "c", &key(), 4);
    api.compact();
    api.restart().await;
    let s = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(s) = source.next().await
                && names(&s).contains(&"c")
            {
                return s;
            }
        }
    })
    .await
    .expect("converged after the restart");
    assert_eq!(names(&s), ["a", "b", "c", "local"]);
    // Each kind was listed twice: at start, and again after the 410.
    let lists = |prefix: &str| {
        api.requests()
            .iter()
            .filter(|r| r.target.starts_with(prefix) && !r.target.contains("watch="))
            .count()
    };
    assert!(
        lists("/api/v1/nodes?") >= 2,
        "Nodes were listed again after 410 Gone"
    );
    assert!(
        lists("/apis/wormhole.dev/v1alpha1/wormholenodes?") >= 2,
        "WormholeNodes were listed again"
    );
}

#[tokio::test]
async fn a_bad_key_is_rejected_with_an_event_and_the_rest_works() {
    let (api, me, _) = cluster_with_a().await;
    api.put_node("evil", &["10.99.5.0/24"], "192.168.77.5");
    api.put_wormhole(
        "evil",
        json!({"publicKey": "not-a-key", "listenPort": 51820}),
    );
    let local = PrivateKey::generate();
    let _ = me;
    let backends = MemoryBackends::default();
    let mut r = Reconciler::new(
        Settings::new("local", cluster()),
        backends.handles(MemoryKeyStore::new(local.clone(), None)),
    );
    let mut source = KubePeerSource::new(api.client(), "local", local.public_key(), cluster());
    r.update(Ok(next(&mut source).await));
    r.reconcile().await.unwrap();
    let status = r.status().borrow().clone();
    assert_eq!(status.peers.len(), 1);
    assert_eq!(status.rejected.len(), 1);
    assert!(
        status.rejected[0]
            .to_string()
            .contains("malformed public key")
    );

    let mut events = EventSink::new(api.client(), "local");
    events.observe(&status).await;
    events.observe(&status).await; // rate-limited: no second Event
    let sent = api.events();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["reason"], "PeerRejected");
    assert_eq!(sent[0]["type"], "Warning");
    assert_eq!(sent[0]["regarding"]["kind"], "Node");
    assert_eq!(sent[0]["regarding"]["name"], "local");
    assert!(sent[0]["note"].as_str().unwrap().contains("evil"));
    // In `default`, the one namespace where deploy/rbac.yaml lets the agent create Events.
    let posts: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/events"))
        .collect();
    assert!(!posts.is_empty());
    for r in posts {
        assert!(
            r.target
                .starts_with("/apis/events.k8s.io/v1/namespaces/default/events"),
            "{}",
            r.target
        );
    }
}

/// A PSK Secret that cannot be read is a key error (kind `key`, "key store: ..."), not a peer
/// source error: the peer source is fine, and the status must not send anyone looking there.
#[tokio::test]
async fn an_unreadable_psk_secret_is_a_key_error() {
    let (api, _, _) = cluster_with_a().await;
    let local = PrivateKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let file = wormhole_core::FileKeyStore::new(dir.path().join("key"));
    let keys = SecretKeyStore::new(file, api.client(), "wormhole", "wormhole-psk");
    let backends = MemoryBackends::default();
    let mut r = Reconciler::new(Settings::new("local", cluster()), backends.handles(keys));
    let mut source = KubePeerSource::new(api.client(), "local", local.public_key(), cluster());
    r.update(Ok(next(&mut source).await));

    let err = r.reconcile().await.unwrap_err();
    assert!(matches!(err, wormhole_core::Error::KeyStore(_)), "{err:?}");
    assert_eq!(err.kind(), "key");
    let text = wormhole_core::ErrorChain(&err).to_string();
    assert!(
        text.starts_with("key store: kubernetes API: get Secret wormhole/wormhole-psk"),
        "{text}"
    );
    let status = r.status().borrow().clone();
    assert_eq!(
        status.errors_by_kind.into_iter().collect::<Vec<_>>(),
        [("key".to_owned(), 1)]
    );
    assert_eq!(status.source_error, None);
    assert_eq!(backends.writes(), 0);
}

#[tokio::test]
async fn psk_from_a_secret_converges_without_restart() {
    let (api, _, a) = cluster_with_a().await;
    let local = PrivateKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let file = wormhole_core::FileKeyStore::new(dir.path().join("key"));
    std::fs::write(dir.path().join("key"), local.to_base64_secret().as_bytes()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.path().join("key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // Read on every pass here (the agent reads it at most once a minute).
    let keys = SecretKeyStore::new(file, api.client(), "wormhole", "wormhole-psk")
        .with_refresh(Duration::ZERO);
    let backends = MemoryBackends::default();
    let mut r = Reconciler::new(Settings::new("local", cluster()), backends.handles(keys));
    let mut source = KubePeerSource::new(api.client(), "local", local.public_key(), cluster());
    r.update(Ok(next(&mut source).await));

    // Configured but absent: a clear error, nothing applied.
    let err = r.reconcile().await.unwrap_err().to_string();
    assert!(err.contains("Secret wormhole/wormhole-psk"), "{err}");
    assert_eq!(backends.writes(), 0);

    let first = wormhole_core::PresharedKey::generate();
    api.put_secret(
        "wormhole",
        "wormhole-psk",
        "psk",
        first.to_base64_secret().as_bytes(),
    );
    r.reconcile().await.unwrap();
    let psk = |b: &MemoryBackends| b.device.state().unwrap().peers[&a].preshared_key.clone();
    assert_eq!(
        psk(&backends),
        Some(first.derive_pair(&local.public_key(), &a))
    );

    let second = wormhole_core::PresharedKey::generate();
    api.put_secret("wormhole", "wormhole-psk", "psk", second.secret_bytes());
    r.reconcile().await.unwrap();
    assert_eq!(
        psk(&backends),
        Some(second.derive_pair(&local.public_key(), &a))
    );
}

#[tokio::test]
async fn cluster_cidrs_from_kubeadm_config() {
    let api = FakeApi::start().await;
    assert!(detect_cluster_cidrs(api.client()).await.unwrap().is_empty());
    api.put_configmap(
        "kube-system",
        "kubeadm-config",
        json!({"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta3\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16,fd00:10:244::/56\n  serviceSubnet: 10.96.0.0/12\n"}),
    );
    let cidrs = detect_cluster_cidrs(api.client()).await.unwrap();
    assert_eq!(
        cidrs,
        [
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse::<ipnet::IpNet>().unwrap()
        ]
    );
}

#[tokio::test]
async fn a_node_publishing_this_nodes_key_gives_both_nodes_an_event() {
    use wormhole_core::RejectReason;
    use wormhole_core::Rejection;
    let api = FakeApi::start().await;
    let status = {
        let mut v = wormhole_core::Status::default();
        v.node_name = "local".into();
        v.rejected = vec![Rejection {
            name: "copycat".into(),
            origin: "WormholeNode/copycat".into(),
            reason: RejectReason::LocalKey,
            external: false,
        }];
        v
    };
    let mut events = EventSink::new(api.client(), "local");
    events.observe(&status).await;
    events.observe(&status).await; // rate-limited: nothing more
    let sent = api.events();
    let about = |node: &str| {
        sent.iter()
            .filter(|e| e["regarding"]["kind"] == "Node" && e["regarding"]["name"] == node)
            .collect::<Vec<_>>()
    };
    for node in ["local", "copycat"] {
        let on = about(node);
        assert_eq!(on.len(), 1, "{node}: {sent:#?}");
        assert_eq!(on[0]["reason"], "PublicKeyConflict");
        assert_eq!(on[0]["type"], "Warning");
        let note = on[0]["note"].as_str().unwrap();
        assert!(
            note.contains("copycat") && note.contains("local") && note.contains("compromised"),
            "{note}"
        );
    }
    assert_eq!(sent.len(), 2, "{sent:#?}");
}

/// Item 14's limit closed: a compromised node whose WormholeNode is older than the victim's
/// cannot switch it to the victim's key in place (the API server refuses, as the CRD's rule
/// says); going through delete and create makes its claim the newer one, so every agent,
/// restarted or not, keeps the victim.
#[tokio::test]
async fn an_older_node_cannot_switch_to_a_victims_key() {
    use kube::api::{Api, Patch, PatchParams};
    use wormhole_k8s::Publisher;
    use wormhole_k8s::WormholeNode;
    let api = FakeApi::start().await;
    api.put_node("local", &["10.99.1.0/24"], "192.168.77.1");
    api.put_node("old", &["10.99.2.0/24"], "192.168.77.2");
    api.put_node("victim", &["10.99.3.0/24"], "192.168.77.3");
    let (old_key, victim_key) = (key(), key());
    // "old" published first, the victim later.
    Publisher::new(api.client(), "old", 51820, PublishedEndpoint::InternalIp)
        .publish_spec(&old_key)
        .await
        .unwrap();
    Publisher::new(api.client(), "victim", 51820, PublishedEndpoint::InternalIp)
        .publish_spec(&victim_key)
        .await
        .unwrap();

    // In place: refused.
    let whs: Api<WormholeNode> = Api::all(api.client());
    let object = json!({
        "apiVersion": "wormhole.dev/v1alpha1", "kind": "WormholeNode",
        "metadata": {"name": "old"},
        "spec": {"publicKey": victim_key.to_base64(), "endpoint": "192.168.77.2:51820", "listenPort": 51820},
    });
    let err = whs
        .patch(
            "old",
            &PatchParams::apply("wormhole-agent").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("publicKey is immutable"),
                "{}",
                status.message
            );
        }
        other => panic!("not refused by the API server: {other}"),
    }
    assert_eq!(
        api.get(wormhole_k8s::testing::Kind::Wormhole, "old")
            .unwrap()["spec"]["publicKey"],
        old_key.to_base64()
    );

    // Deleted and created again with the victim's key: a newer claim, which loses.
    Publisher::new(api.client(), "old", 51820, PublishedEndpoint::InternalIp)
        .publish_spec(&victim_key)
        .await
        .unwrap();
    let local = PrivateKey::generate();
    let mut source = KubePeerSource::new(api.client(), "local", local.public_key(), cluster());
    let snapshot = next(&mut source).await;
    let mesh = wormhole_core::Mesh::build("local", &local.public_key(), &cluster(), snapshot, None)
        .unwrap();
    let peers: Vec<_> = mesh.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(peers, ["victim"], "a restarting agent keeps the victim");
    assert_eq!(mesh.rejected.len(), 1);
    assert_eq!(mesh.rejected[0].name, "old");
    assert!(
        mesh.rejected[0]
            .reason
            .to_string()
            .contains("already used by node victim"),
        "{}",
        mesh.rejected[0].reason
    );
}
