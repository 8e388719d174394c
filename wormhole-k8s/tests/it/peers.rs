//! WormholePeers (external peers, issue 13) over real HTTP: the source puts them in the
//! snapshot, validation judges each on its own (a bad one disturbs no node and no other peer),
//! a refused one is an Event about it, and a deleted one leaves.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wormhole_core::{MemoryBackends, MemoryKeyStore, Mesh};
use wormhole_core::{PeerSource, PrivateKey, PublicKey, Reconciler, Settings, Snapshot};
use wormhole_k8s::testing::FakeApi;
use wormhole_k8s::{EventSink, KubePeerSource};

fn key() -> PublicKey {
    PrivateKey::generate().public_key()
}

fn cluster() -> Vec<ipnet::IpNet> {
    vec!["10.99.0.0/16".parse().unwrap()]
}

/// The external range, and a misconfigured one holding node a's pods (a WormholePeer in it is
/// still refused).
fn external() -> Vec<ipnet::IpNet> {
    vec![
        "10.98.0.0/16".parse().unwrap(),
        "10.99.2.0/24".parse().unwrap(),
    ]
}

async fn next(source: &mut KubePeerSource) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("a snapshot within 10 s")
        .expect("a good snapshot")
}

/// A cluster with `local` and node `a` (whose key is returned).
async fn cluster_with_a() -> (Arc<FakeApi>, PublicKey) {
    let api = FakeApi::start().await;
    let a = key();
    api.put_node("local", &["10.99.1.0/24"], "192.168.77.1");
    api.put_node("a", &["10.99.2.0/24"], "192.168.77.2");
    api.put_wormhole(
        "a",
        json!({"publicKey": a.to_base64(), "endpoint": "192.168.77.2:51820", "listenPort": 51820}),
    );
    (api, a)
}

fn peer(api: &FakeApi, name: &str, key: &str, allowed: &[&str]) {
    api.put_peer(name, json!({"publicKey": key, "allowedIPs": allowed}));
}

#[tokio::test]
async fn wormhole_peers_are_external_peers_and_a_bad_one_disturbs_no_other() {
    let (api, a) = cluster_with_a().await;
    let laptop = key();
    api.put_peer(
        "laptop",
        json!({"publicKey": laptop.to_base64(), "allowedIPs": ["10.98.0.2/32"],
               "endpoint": "192.168.77.150:51820", "persistentKeepalive": 25}),
    );
    // Created later, each bad in its own way (and most sorting before "laptop").
    peer(&api, "aa-greedy", &key().to_base64(), &["10.98.0.0/24"]);
    peer(&api, "thief", &key().to_base64(), &["10.99.2.7/32"]);
    peer(&api, "a", &key().to_base64(), &["10.98.1.1/32"]);
    peer(&api, "copycat", &a.to_base64(), &["10.98.1.2/32"]);
    peer(&api, "garbage", "not-a-key", &["10.98.1.3/32"]);
    peer(&api, "outsider", &key().to_base64(), &["192.168.0.0/16"]);

    let local = PrivateKey::generate();
    let backends = MemoryBackends::default();
    let mut r = Reconciler::new(
        Settings::new("local", cluster()),
        backends.handles(MemoryKeyStore::new(local.clone(), None)),
    );
    let mut source = KubePeerSource::new(api.client(), "local", local.public_key(), cluster())
        .with_external_cidrs(external());
    let s = next(&mut source).await;
    let listed: Vec<&str> = s.external.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        listed,
        [
            "laptop",
            "aa-greedy",
            "thief",
            "a",
            "copycat",
            "garbage",
            "outsider"
        ],
        "oldest claim first"
    );
    assert_eq!(s.external[0].origin, "WormholePeer/laptop");
    assert_eq!(s.external[0].persistent_keepalive, Some(25));
    assert_eq!(s.external_cidrs, external());
    r.update(Ok(s));
    r.reconcile().await.unwrap();
    let status = r.status().borrow().clone();
    let peers: Vec<(&str, bool)> = status
        .peers
        .iter()
        .map(|p| (p.name.as_str(), p.external))
        .collect();
    assert_eq!(peers, [("a", false), ("laptop", true)], "{status:#?}");
    let row = status.peers.iter().find(|p| p.name == "laptop").unwrap();
    assert_eq!(
        row.allowed_ips,
        ["10.98.0.2/32".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(row.endpoint, Some("192.168.77.150:51820".parse().unwrap()));
    let mut rejected: Vec<(&str, &str)> = status
        .rejected
        .iter()
        .map(|r| (r.name.as_str(), r.reason.kind()))
        .collect();
    rejected.sort_unstable();
    assert_eq!(
        rejected,
        [
            ("a", "duplicate_name"),
            ("aa-greedy", "overlaps_peer"),
            ("copycat", "duplicate_key"),
            ("garbage", "malformed_key"),
            ("outsider", "outside_external"),
            ("thief", "external_overlaps_cluster"),
        ]
    );

    // Each refusal is a rate-limited Event about the WormholePeer itself.
    let mut events = EventSink::new(api.client(), "local");
    events.observe(&status).await;
    events.observe(&status).await;
    let sent = api.events();
    assert_eq!(sent.len(), 6, "{sent:#?}");
    for event in &sent {
        assert_eq!(event["reason"], "PeerRejected");
        assert_eq!(event["regarding"]["kind"], "WormholePeer", "{event}");
        assert_eq!(event["regarding"]["apiVersion"], "wormhole.dev/v1alpha1");
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("seen by the agent on local"),
            "{event}"
        );
    }
    let about: Vec<&str> = sent
        .iter()
        .map(|e| e["regarding"]["name"].as_str().unwrap())
        .collect();
    assert!(
        about.contains(&"a") && about.contains(&"thief"),
        "{about:?}"
    );

    // Deleting the laptop removes it; the greedy one then overlaps nobody and is accepted.
    api.delete_peer("laptop");
    let s = next(&mut source).await;
    r.update(Ok(s));
    r.reconcile().await.unwrap();
    let status = r.status().borrow().clone();
    let peers: Vec<&str> = status.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(peers, ["a", "aa-greedy"]);
}

#[tokio::test]
async fn without_external_cidrs_every_wormhole_peer_is_refused_naming_the_flag() {
    let (api, _) = cluster_with_a().await;
    peer(&api, "laptop", &key().to_base64(), &["10.98.0.2/32"]);
    let local = PrivateKey::generate();
    let mut source = KubePeerSource::new(api.client(), "local", local.public_key(), cluster());
    let s = next(&mut source).await;
    let mesh = Mesh::build("local", &local.public_key(), &cluster(), s, None).unwrap();
    assert!(mesh.external.is_empty());
    let names: Vec<&str> = mesh.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a"], "the nodes are untouched");
    assert_eq!(mesh.rejected.len(), 1, "{:?}", mesh.rejected);
    assert_eq!(mesh.rejected[0].reason.kind(), "no_external_cidrs");
    let text = mesh.rejected[0].to_string();
    assert!(text.contains("--external-cidr"), "{text}");
    assert!(text.starts_with("laptop (WormholePeer/laptop): "), "{text}");
}

/// An agent upgraded before the WormholePeer CRD is applied: the WormholePeer watch fails (404),
/// the mesh of nodes is yielded all the same, and the peers appear once the CRD is there.
#[tokio::test]
async fn a_cluster_without_the_wormholepeer_crd_keeps_its_mesh() {
    let (api, _) = cluster_with_a().await;
    api.serve_peers(false);
    let local = PrivateKey::generate();
    let mut source = KubePeerSource::new(api.client(), "local", local.public_key(), cluster())
        .with_external_cidrs(external());
    let s = next(&mut source).await;
    assert_eq!(s.nodes.len(), 2);
    assert!(s.external.is_empty());
    api.serve_peers(true);
    peer(&api, "laptop", &key().to_base64(), &["10.98.0.2/32"]);
    let s = next(&mut source).await;
    let names: Vec<&str> = s.external.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["laptop"]);
}

/// `wormhole peer-config` in Kubernetes mode reads what every agent reads.
#[tokio::test]
async fn read_external_gives_the_agents_picture() {
    let (api, a) = cluster_with_a().await;
    let local = key();
    api.put_wormhole(
        "local",
        json!({"publicKey": local.to_base64(), "endpoint": "192.168.77.1:51820", "listenPort": 51820}),
    );
    let laptop = key();
    peer(&api, "laptop", &laptop.to_base64(), &["10.98.0.2/32"]);
    let s =
        wormhole_k8s::read_external(api.client(), cluster(), external(), Duration::from_secs(5))
            .await
            .unwrap();
    let mut keys: Vec<String> = s.nodes.iter().map(|n| n.public_key.clone()).collect();
    keys.sort();
    let mut want = vec![a.to_base64(), local.to_base64()];
    want.sort();
    assert_eq!(keys, want, "every node with its published key");
    let mut endpoints: Vec<Option<&str>> = s.nodes.iter().map(|n| n.endpoint.as_deref()).collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        [Some("192.168.77.1:51820"), Some("192.168.77.2:51820")],
        "every node with its endpoint, the one whose point of view it is included"
    );
    assert_eq!(s.external.len(), 1);
    assert_eq!(s.external_cidrs, external());
    // No cluster CIDR given and no kubeadm-config: says what to pass.
    let err = wormhole_k8s::read_external(api.client(), vec![], external(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--cluster-cidr"), "{err}");
}
