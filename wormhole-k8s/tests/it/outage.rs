//! API server outages (issue 9 item 16): no request waits forever, the PSK and the last mesh are
//! saved so that an agent starting while the API server is down still has them, and the mesh
//! converges within seconds of the API server's return.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use serde_json::json;
use wormhole_core::{KeyStore as _, PeerSource, PresharedKey, PrivateKey, PublicKey, Snapshot};
use wormhole_k8s::EventSink;
use wormhole_k8s::SecretKeyStore;
use wormhole_k8s::testing::FakeApi;
use wormhole_k8s::{KubePeerSource, detect_cluster_cidrs};
use wormhole_k8s::{PublishedEndpoint, Publisher};
use wormhole_k8s::{STATE_FILE, StateStore};

fn cluster() -> Vec<ipnet::IpNet> {
    vec![
        "10.99.0.0/16".parse().unwrap(),
        "fd99::/48".parse().unwrap(),
    ]
}

fn publish(api: &FakeApi, name: &str, key: &PublicKey, i: u8) {
    api.put_wormhole(
        name,
        json!({"publicKey": key.to_base64(), "endpoint": format!("192.168.77.{i}:51820"), "listenPort": 51820}),
    );
}

fn names(s: &Snapshot) -> Vec<&str> {
    s.nodes.iter().map(|n| n.name.as_str()).collect()
}

/// `wormhole_core::MemoryKeyStore` is not a file key store: a key file in `dir`.
fn key_file(dir: &std::path::Path) -> wormhole_core::FileKeyStore {
    let path = dir.join("private.key");
    std::fs::write(&path, PrivateKey::generate().to_base64_secret().as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    wormhole_core::FileKeyStore::new(path)
}

/// Every kind of request the agent makes, against an API server that accepts connections and
/// never answers: each gives up (kube's default read timeout is none, so before, each waited
/// forever). Runs them together, with the production deadline.
#[tokio::test]
async fn no_request_waits_forever_on_a_hanging_api_server() {
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    api.hang(true);
    let dir = tempfile::tempdir().unwrap();
    let keys = SecretKeyStore::new(
        key_file(dir.path()),
        api.client(),
        "wormhole",
        "wormhole-psk",
    );
    let mut publisher = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
    let mut events = EventSink::new(api.client(), "n1");
    let status = {
        let mut v = wormhole_core::Status::default();
        v.node_name = "n1".into();
        v.rejected = vec![wormhole_core::Rejection {
            name: "evil".into(),
            origin: "WormholeNode/evil".into(),
            reason: wormhole_core::RejectReason::MalformedKey(wormhole_core::KeyError::Base64),
            external: false,
        }];
        v
    };
    let key = PrivateKey::generate().public_key();
    let started = Instant::now();
    let all = async {
        tokio::join!(
            keys.cluster_secret(),
            detect_cluster_cidrs(api.client()),
            publisher.publish_spec(&key),
            events.observe(&status),
        )
    };
    let (psk, cidrs, published, ()) = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("a request to a hanging API server never gave up");
    let took = started.elapsed();
    let psk = psk.unwrap_err().to_string();
    assert!(psk.contains("no answer within 10s"), "{psk}");
    let cidrs = cidrs.unwrap_err().to_string();
    assert!(
        cidrs.contains("kubeadm-config: no answer within"),
        "{cidrs}"
    );
    let published = published.unwrap_err().to_string();
    assert!(
        published.contains("get Node n1: no answer within"),
        "{published}"
    );
    assert!(api.events().is_empty());
    eprintln!("every request gave up after {took:?}");
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

/// The PSK is saved 0600 beside the key when read; while the API server is down (or hangs) the
/// one last read is used, also by a restarted agent; a changed Secret is picked up once the API
/// server answers again.
#[tokio::test]
async fn the_psk_is_saved_and_used_while_the_api_server_is_down() {
    let api = FakeApi::start().await;
    let first = PresharedKey::generate();
    api.put_secret(
        "wormhole",
        "wormhole-psk",
        "psk",
        first.to_base64_secret().as_bytes(),
    );
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join(wormhole_k8s::PSK_FILE);
    let store = |client| {
        SecretKeyStore::new(key_file(dir.path()), client, "wormhole", "wormhole-psk")
            .with_saved(&saved)
            .with_refresh(Duration::ZERO)
            .with_timeout(Duration::from_millis(500))
    };
    let keys = store(api.client());
    assert_eq!(keys.cluster_secret().await.unwrap(), Some(first.clone()));
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "saved like the private key");
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap().trim(),
        *first.to_base64_secret()
    );

    // Down: the running agent keeps its PSK.
    api.stop().await;
    assert_eq!(keys.cluster_secret().await.unwrap(), Some(first.clone()));
    // Restarted while down: the saved PSK.
    let restarted = store(api.client());
    assert_eq!(
        restarted.cluster_secret().await.unwrap(),
        Some(first.clone())
    );

    // Hanging: given up on after the deadline, the PSK stays.
    api.restart().await;
    api.hang(true);
    let started = Instant::now();
    assert_eq!(
        restarted.cluster_secret().await.unwrap(),
        Some(first.clone())
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Back, with a new Secret: picked up and saved.
    api.hang(false);
    let second = PresharedKey::generate();
    api.put_secret("wormhole", "wormhole-psk", "psk", second.secret_bytes());
    assert_eq!(
        restarted.cluster_secret().await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap().trim(),
        *second.to_base64_secret()
    );

    // Without a saved PSK and without the API server, it is an error (as before).
    api.stop().await;
    let empty = tempfile::tempdir().unwrap();
    let never = SecretKeyStore::new(
        key_file(empty.path()),
        api.client(),
        "wormhole",
        "wormhole-psk",
    )
    .with_saved(empty.path().join("psk"));
    assert!(never.cluster_secret().await.is_err());
}

/// The source saves every snapshot; a source started while the API server is down yields the
/// saved one at once, then reports the outage, and yields the live picture within seconds of
/// the API server's return (with what changed meanwhile).
#[tokio::test]
async fn a_source_started_while_the_api_server_is_down_yields_the_saved_mesh() {
    let api = FakeApi::start().await;
    let me = PrivateKey::generate().public_key();
    api.put_node("local", &["10.99.1.0/24"], "192.168.77.1");
    api.put_node("a", &["10.99.2.0/24"], "192.168.77.2");
    publish(&api, "a", &PrivateKey::generate().public_key(), 2);
    // An external peer is saved and restored too.
    api.put_peer(
        "laptop",
        json!({"publicKey": PrivateKey::generate().public_key().to_base64(),
               "allowedIPs": ["10.98.0.2/32"], "persistentKeepalive": 25}),
    );
    let external: Vec<ipnet::IpNet> = vec!["10.98.0.0/24".parse().unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);

    let mut source = KubePeerSource::new(api.client(), "local", me, cluster())
        .with_external_cidrs(external.clone())
        .with_state(StateStore::open(&path));
    let live = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&live), ["a", "local"]);
    assert_eq!(live.external.len(), 1);
    // Saved in the background.
    let mut saved = StateStore::open(&path).saved();
    for _ in 0..200 {
        if !saved.nodes.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        saved = StateStore::open(&path).saved();
    }
    let mut restored = saved.snapshot(&cluster()).unwrap();
    restored.external_cidrs = external.clone();
    assert_eq!(restored, live);
    drop(source);

    // The API server goes down; meanwhile node b joins.
    api.stop().await;
    api.put_node("b", &["10.99.3.0/24"], "192.168.77.3");
    publish(&api, "b", &PrivateKey::generate().public_key(), 3);

    let started = Instant::now();
    let mut restarted = KubePeerSource::new(api.client(), "local", me, cluster())
        .with_state(StateStore::open(&path))
        .with_external_cidrs(external.clone());
    let first = tokio::time::timeout(Duration::from_secs(10), restarted.next())
        .await
        .expect("no snapshot while the API server is down")
        .expect("the saved snapshot");
    assert_eq!(first, live, "the saved mesh, as it was");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Then the outage is reported (the reconciler keeps the mesh and shows the error).
    let err = tokio::time::timeout(Duration::from_secs(10), restarted.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("watch") || err.to_string().contains("list"),
        "{err}"
    );

    // Down for a while (the watches back off), then back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    api.restart().await;
    let back = Instant::now();
    let converged = tokio::time::timeout(Duration::from_secs(10), restarted.next())
        .await
        .expect("no snapshot after the API server came back")
        .unwrap();
    let took = back.elapsed();
    assert_eq!(names(&converged), ["a", "b", "local"]);
    eprintln!("converged {took:?} after the API server came back");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// An API server that accepts the watches and never answers them: after the grace time the
/// saved snapshot is used.
#[tokio::test]
async fn a_hanging_api_server_at_start_gives_the_saved_mesh_after_the_grace_time() {
    let api = FakeApi::start().await;
    let me = PrivateKey::generate().public_key();
    api.put_node("local", &["10.99.1.0/24"], "192.168.77.1");
    api.put_node("a", &["10.99.2.0/24"], "192.168.77.2");
    publish(&api, "a", &PrivateKey::generate().public_key(), 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    let store = StateStore::open(&path);
    let live = {
        let mut source =
            KubePeerSource::new(api.client(), "local", me, cluster()).with_state(store.clone());
        tokio::time::timeout(Duration::from_secs(10), source.next())
            .await
            .unwrap()
            .unwrap()
    };
    store.save(|s| s.set_snapshot(&live)).await.unwrap();

    api.hang(true);
    let started = Instant::now();
    let mut restarted = KubePeerSource::new(api.client(), "local", me, cluster())
        .with_state(StateStore::open(&path))
        .with_grace(Duration::from_secs(1));
    let first = tokio::time::timeout(Duration::from_secs(10), restarted.next())
        .await
        .expect("nothing while the API server hangs")
        .unwrap();
    assert_eq!(first, live);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
