//! The publisher's exact requests: server-side apply with our field manager, an owner reference
//! to the Node, writes on change only.

use std::time::{Duration, SystemTime};

use wormhole_core::PeerStatus;
use wormhole_core::{PrivateKey, Status};
use wormhole_k8s::testing::{FakeApi, Kind};
use wormhole_k8s::{NodeSettings, PublishedEndpoint, Publisher};

#[tokio::test]
async fn applies_its_own_wormholenode_on_change_only() {
    let api = FakeApi::start().await;
    let uid = api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let key = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
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
    let mut publisher = Publisher::new(api.client(), "n1", 51821, PublishedEndpoint::InternalIp);
    publisher.publish_spec(&key).await.unwrap();
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["spec"]["endpoint"],
        "[fd00::1]:51821"
    );
    let mut publisher = Publisher::new(
        api.client(),
        "n1",
        51821,
        PublishedEndpoint::Fixed("203.0.113.7:4000".parse().unwrap()),
    );
    publisher.publish_spec(&key).await.unwrap();
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["spec"]["endpoint"],
        "203.0.113.7:4000"
    );
}

/// Per-node settings changed while running (an annotation): the next publish writes the new
/// spec, once, without reading the Node again; back to the InternalIP works too.
#[tokio::test]
async fn changed_settings_are_published_once_without_reading_the_node_again() {
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let key = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
    assert!(publisher.publish_spec(&key).await.unwrap());
    let spec = || api.get(Kind::Wormhole, "n1").unwrap()["spec"].clone();
    assert_eq!(spec()["endpoint"], "192.168.77.1:51820");

    publisher.set_settings(NodeSettings {
        endpoint: PublishedEndpoint::BehindNat,
        persistent_keepalive: Some(25),
    });
    assert!(publisher.publish_spec(&key).await.unwrap());
    assert!(spec().get("endpoint").is_none(), "{}", spec());
    assert_eq!(spec()["persistentKeepalive"], 25);
    assert!(
        !publisher.publish_spec(&key).await.unwrap(),
        "no change, no write"
    );

    publisher.set_settings(NodeSettings::default());
    assert!(publisher.publish_spec(&key).await.unwrap());
    assert_eq!(spec()["endpoint"], "192.168.77.1:51820");
    assert!(spec().get("persistentKeepalive").is_none(), "{}", spec());
    let node_reads = api
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/api/v1/nodes/n1"))
        .count();
    assert_eq!(node_reads, 1, "the Node is read once");
}

#[tokio::test]
async fn an_overlong_error_is_cut_to_what_the_crd_accepts() {
    use wormhole_core::PassInfo;
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let key = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
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
    let mut publisher = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
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
    let mut restarted = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
    assert!(restarted.publish_spec(&third).await.unwrap());
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["spec"]["publicKey"],
        third.to_base64()
    );
    assert_ne!(uid(&api), uid_second);
    // Same key after a restart: applied in place, not re-created.
    let uid_third = uid(&api);
    let mut again = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
    again.publish_spec(&third).await.unwrap();
    assert_eq!(uid(&api), uid_third);
}

/// Probing moves round-trip times and loss percentages every few seconds: none of that is an
/// API write. A state change is exactly one, and the problems list names the peer with the
/// stable part of its state.
#[tokio::test]
async fn rtt_and_loss_jitter_are_no_write_a_state_change_is_one() {
    use wormhole_core::ProbeReport;
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let key = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
    publisher.publish_spec(&key).await.unwrap();
    let probe = |rtt_us: u64, lost: u32| {
        let mut r = ProbeReport::default();
        r.sent = 10;
        r.lost = lost;
        r.last_rtt = Some(Duration::from_micros(rtt_us));
        r.smoothed_rtt = Some(Duration::from_micros(rtt_us + 40));
        r.path_mtu = Some(1420);
        r
    };
    let mut status = {
        let mut v = Status::default();
        v.public_key = Some(key);
        v.peers = ["n2", "n3"]
            .iter()
            .map(|name| {
                let mut p = PeerStatus::new(*name, PrivateKey::generate().public_key());
                p.latest_handshake = Some(SystemTime::now() - Duration::from_secs(5));
                p.probe = Some(probe(900, 0));
                p
            })
            .collect();
        v
    };
    let writes = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.target.contains("/n1/status?"))
            .count()
    };
    assert!(publisher.publish_status(&status).await.unwrap());
    assert_eq!(writes(&api), 1);

    // 100 probe rounds: RTTs, one lost probe now and then, counters: no write.
    for round in 0..100u64 {
        for p in &mut status.peers {
            p.probe = Some(probe(500 + round * 37 % 900, (round % 7 == 0) as u32));
            p.rx_bytes += 1000;
            p.latest_handshake = Some(SystemTime::now() - Duration::from_secs(round % 100));
        }
        assert!(
            !publisher.publish_status(&status).await.unwrap(),
            "round {round}"
        );
    }
    assert_eq!(writes(&api), 1);

    // n3 turns lossy: one write, naming it as `lossy` (no percentage).
    status.peers[1].probe = Some(probe(800, 3));
    assert!(publisher.publish_status(&status).await.unwrap());
    assert_eq!(writes(&api), 2);
    let stored = api.get(Kind::Wormhole, "n1").unwrap();
    assert_eq!(stored["status"]["peersOk"], 1);
    assert_eq!(
        stored["status"]["problems"],
        serde_json::json!([{ "peer": "n3", "state": "lossy" }])
    );
    // Its loss moves (30 %, 50 %, 40 %) and its RTT too: still lossy, no write.
    for lost in [5, 4, 3, 5] {
        status.peers[1].probe = Some(probe(700 + u64::from(lost), lost));
        assert!(!publisher.publish_status(&status).await.unwrap());
    }
    assert_eq!(writes(&api), 2);
    // n2 gets an MTU black hole: one write, with the size that gets through.
    let mut holed = probe(900, 0);
    holed.path_mtu = Some(1344);
    holed.mtu_blackhole = true;
    status.peers[0].probe = Some(holed);
    assert!(publisher.publish_status(&status).await.unwrap());
    assert!(!publisher.publish_status(&status).await.unwrap());
    assert_eq!(writes(&api), 3);
    let stored = api.get(Kind::Wormhole, "n1").unwrap();
    assert_eq!(
        stored["status"]["problems"][0],
        serde_json::json!({ "peer": "n2", "state": "mtu-blackhole (max 1344)" })
    );
    // Both recover: one write, and the list is gone.
    status.peers[0].probe = Some(probe(900, 0));
    status.peers[1].probe = Some(probe(900, 0));
    assert!(publisher.publish_status(&status).await.unwrap());
    assert_eq!(writes(&api), 4);
    let stored = api.get(Kind::Wormhole, "n1").unwrap();
    assert_eq!(stored["status"]["peersOk"], 2);
    assert!(
        stored["status"]
            .get("problems")
            .is_none_or(|p| p.as_array().unwrap().is_empty())
    );
}

/// A broken 5,000-node cluster: each node lists at most `MAX_PROBLEMS` peers and counts the
/// rest, and the API server accepts the object.
#[tokio::test]
async fn the_problems_list_is_bounded() {
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let key = PrivateKey::generate().public_key();
    let mut publisher = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp);
    publisher.publish_spec(&key).await.unwrap();
    let status = {
        let mut v = Status::default();
        v.public_key = Some(key);
        v.peers = (0..4999)
            .map(|i| {
                PeerStatus::new(
                    format!("{}-{i:04}", "x".repeat(240)),
                    PrivateKey::generate().public_key(),
                )
            })
            .collect();
        v
    };
    assert!(publisher.publish_status(&status).await.unwrap());
    let stored = api.get(Kind::Wormhole, "n1").unwrap();
    let problems = stored["status"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), wormhole_k8s::MAX_PROBLEMS);
    assert_eq!(stored["status"]["problemsOmitted"], 4999 - 1000);
    assert_eq!(problems[0]["state"], "never");
    assert!(
        problems[0]["peer"].as_str().unwrap().ends_with("-0000"),
        "sorted by name"
    );
    let size = serde_json::to_string(&stored).unwrap().len();
    assert!(size < 512 * 1024, "{size} bytes");
}

/// A pair that flaps between `ok` and `lossy`: with a status interval, the first change is
/// written at once and the flapping within the interval once, at its end, with the latest state.
#[tokio::test]
async fn a_flapping_state_is_written_once_per_interval() {
    use wormhole_core::ProbeReport;
    let api = FakeApi::start().await;
    api.put_node("n1", &["10.99.1.0/24"], "192.168.77.1");
    let key = PrivateKey::generate().public_key();
    let interval = Duration::from_millis(500);
    let mut publisher = Publisher::new(api.client(), "n1", 51820, PublishedEndpoint::InternalIp)
        .with_status_interval(interval);
    publisher.publish_spec(&key).await.unwrap();
    let mut status = {
        let mut v = Status::default();
        v.public_key = Some(key);
        let mut p = PeerStatus::new("n2", PrivateKey::generate().public_key());
        p.latest_handshake = Some(SystemTime::now());
        v.peers = vec![p];
        v
    };
    let set_lost = |status: &mut Status, lost: u32| {
        let mut r = ProbeReport::default();
        r.sent = 10;
        r.lost = lost;
        status.peers[0].probe = Some(r);
    };
    let writes = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.target.contains("/n1/status?"))
            .count()
    };
    assert!(
        publisher.publish_status(&status).await.unwrap(),
        "the first at once"
    );
    assert_eq!(publisher.status_due(), None);
    // Flapping within the interval: held back, due when it ends.
    for round in 0..6 {
        set_lost(&mut status, if round % 2 == 0 { 3 } else { 0 });
        assert!(!publisher.publish_status(&status).await.unwrap());
    }
    set_lost(&mut status, 3);
    assert!(!publisher.publish_status(&status).await.unwrap());
    let due = publisher.status_due().expect("a change waits");
    assert_eq!(writes(&api), 1);
    tokio::time::sleep_until(due).await;
    assert!(
        publisher.publish_status(&status).await.unwrap(),
        "due: written"
    );
    assert_eq!(writes(&api), 2);
    assert_eq!(
        api.get(Kind::Wormhole, "n1").unwrap()["status"]["problems"][0]["state"],
        "lossy",
        "the latest state"
    );
    // Back to the written state within the interval: nothing waits, nothing is written.
    set_lost(&mut status, 0);
    assert!(!publisher.publish_status(&status).await.unwrap());
    set_lost(&mut status, 3);
    assert!(!publisher.publish_status(&status).await.unwrap());
    assert_eq!(publisher.status_due(), None);
    assert_eq!(writes(&api), 2);
}
