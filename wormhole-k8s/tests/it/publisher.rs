//! The publisher's exact requests: server-side apply with our field manager, an owner reference
//! to the Node, writes on change only.

use std::time::{Duration, SystemTime};

use wormhole_core::PeerStatus;
use wormhole_core::{PrivateKey, Status};
use wormhole_k8s::Publisher;
use wormhole_k8s::testing::{FakeApi, Kind};

#[tokio::test]
async fn applies_its_own_wormholenode_on_change_only() {
    let api = FakeApi::start().await;
    let uid = api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let key = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51820, None);
    assert!(publisher.publish_spec(&key).await.unwrap());

    let applies: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(applies.len(), 1);
    let apply = &applies[0];
    assert!(
        apply
            .target
            .starts_with("/apis/wormhole.dev/v1alpha1/wormholenodes/n1?"),
        "{}",
        apply.target
    );
    assert!(
        apply.target.contains("fieldManager=wormhole-agent"),
        "{}",
        apply.target
    );
    assert!(apply.target.contains("force=true"), "{}", apply.target);
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    let body: serde_json::Value = serde_json::from_str(&apply.body).unwrap();
    assert_eq!(body["spec"]["publicKey"], key.to_base64());
    assert_eq!(
        body["spec"]["endpoint"], "192.168.77.1:51820",
        "the Node's InternalIP and our port"
    );
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], uid);
    assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert!(body["spec"].get("podCIDRs").is_none());

    // No change, no write, and no second read of the Node.
    assert!(!publisher.publish_spec(&key).await.unwrap());
    let node_reads = api
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/api/v1/nodes/n1"))
        .count();
    assert_eq!(node_reads, 1, "the Node is read once");
    // A new key (rotation) is published.
    let rotated = PrivateKey::generate().public_key();
    assert!(publisher.publish_spec(&rotated).await.unwrap());
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["spec"]["publicKey"],
        rotated.to_base64()
    );

    // Status: written once, then only when the summary changes (no heartbeats).
    let now = SystemTime::now();
    let mut status = {
        let mut v = Status::default();
        v.public_key = Some(rotated);
        v.peers = vec![PeerStatus::new("n2", PrivateKey::generate().public_key())];
        v
    };
    assert!(publisher.publish_status(&status).await.unwrap());
    assert!(!publisher.publish_status(&status).await.unwrap());
    status.peers[0].latest_handshake = Some(now - Duration::from_secs(3));
    status.peers[0].rx_bytes = 999; // counters alone are not a change
    assert!(publisher.publish_status(&status).await.unwrap());
    let stored = api.get(Kind::Wormhole, "n1").unwrap();
    assert_eq!(stored["status"]["peers"], "1/1");
    assert_eq!(stored["status"]["keyPrefix"], &rotated.to_base64()[..8]);
    let status_applies = api
        .requests()
        .iter()
        .filter(|r| r.target.contains("/n1/status?"))
        .count();
    assert_eq!(status_applies, 2);

    // Deleting the Node garbage-collects its WormholeNode (the ownerReference at work).
    api.delete_node("n1");
    assert!(api.get(Kind::Wormhole, "n1").is_none());
}

#[tokio::test]
async fn the_endpoint_flag_wins_and_ipv6_is_bracketed() {
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "fd00::1");
    let key = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51821, None);
    publisher.publish_spec(&key).await.unwrap();
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["spec"]["endpoint"],
        "[fd00::1]:51821"
    );
    let mut publisher = Publisher::new(
        api.client(),
        "n1",
        51821,
        Some("203.0.113.7:4000".parse().unwrap()),
    );
    publisher.publish_spec(&key).await.unwrap();
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["spec"]["endpoint"],
        "203.0.113.7:4000"
    );
}

#[tokio::test]
async fn an_overlong_error_is_cut_to_what_the_crd_accepts() {
    use wormhole_core::PassInfo;
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let key = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51820, None);
    publisher.publish_spec(&key).await.unwrap();
    // A pass that failed for 500 peers: an error far longer than status.lastError's maxLength.
    let error = (0..500)
        .map(|i| format!("peer n{i}: route conflict: 10.99.{i}.0/24"))
        .collect::<Vec<_>>()
        .join("; ");
    assert!(error.len() > 10_000);
    let status = {
        let mut v = Status::default();
        v.public_key = Some(key);
        v.last_pass = Some(PassInfo::new(
            SystemTime::now(),
            Duration::ZERO,
            0,
            Some(error.clone()),
        ));
        v
    };
    publisher
        .publish_status(&status)
        .await
        .expect("the API server accepts the status");
    let stored = api.get(Kind::Wormhole, "n1").unwrap();
    let last_error = stored["status"]["lastError"].as_str().unwrap();
    assert!(last_error.len() <= wormhole_k8s::MAX_ERROR);
    assert!(last_error.starts_with("peer n0: route conflict: 10.99.0.0/24; peer n1"));
    assert!(last_error.ends_with('…'), "marked as cut");
}

/// The CRD makes `spec.publicKey` immutable: a rotation deletes the WormholeNode (that object
/// only, by uid) and creates it again, a new claim; also after a restart, when the publisher
/// has to read which key the API server holds.
#[tokio::test]
async fn a_rotated_key_recreates_the_wormholenode() {
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let first = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51820, None);
    assert!(publisher.publish_spec(&first).await.unwrap());
    let status = {
        let mut v = Status::default();
        v.public_key = Some(first);
        v
    };
    assert!(publisher.publish_status(&status).await.unwrap());
    let uid = |api: &FakeApi| {
        api.get(Kind::Wormhole, "n1").unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let uid_first = uid(&api);

    let second = PrivateKey::generate().public_key();
    assert!(
        publisher
            .publish_spec(&second)
            .await
            .expect("a rotated key is published")
    );
    let stored = api.get(Kind::Wormhole, "n1").unwrap();
    assert_eq!(stored["spec"]["publicKey"], second.to_base64());
    let uid_second = uid(&api);
    assert_ne!(uid_second, uid_first, "a new object: a new claim");
    let deletes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert!(
        deletes[0]
            .target
            .starts_with("/apis/wormhole.dev/v1alpha1/wormholenodes/n1")
    );
    let body: serde_json::Value = serde_json::from_str(&deletes[0].body).unwrap();
    assert_eq!(
        body["preconditions"]["uid"], uid_first,
        "only the object it replaces"
    );
    // The new object starts without status: it is written again.
    let status = {
        let mut v = Status::default();
        v.public_key = Some(second);
        v
    };
    assert!(publisher.publish_status(&status).await.unwrap());
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["status"]["keyPrefix"],
        &second.to_base64()[..8]
    );

    // A restarted agent (a new publisher) with a key rotated while it was down.
    let third = PrivateKey::generate().public_key();
    let mut restarted = Publisher::new(api.client(), "n1", 51820, None);
    assert!(restarted.publish_spec(&third).await.unwrap());
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["spec"]["publicKey"],
        third.to_base64()
    );
    assert_ne!(uid(&api), uid_second);
    // Same key after a restart: applied in place, not re-created.
    let uid_third = uid(&api);
    let mut again = Publisher::new(api.client(), "n1", 51820, None);
    again.publish_spec(&third).await.unwrap();
    assert_eq!(uid(&api), uid_third);
}
