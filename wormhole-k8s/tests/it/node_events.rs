//! Warnings about the node's own host (a preflight check, a foreign CNI configuration) become
//! Events on its Node, rate-limited per problem like every other Event.

use std::time::Duration;

use wormhole_k8s::EventSink;
use wormhole_k8s::testing::FakeApi;

#[tokio::test]
async fn host_warnings_are_rate_limited_events_on_the_node() {
    let api = FakeApi::start().await;
    let mut events = EventSink::new(api.client(), "n1").with_interval(Duration::from_secs(600));
    let note = "10-flannel.conflist in /etc/cni/net.d sorts before 10-wormhole.conflist";
    events
        .warn_node("cni-config/a", "ForeignCniConfig", note.into())
        .await;
    events
        .warn_node("cni-config/a", "ForeignCniConfig", note.into())
        .await;
    events
        .warn_node(
            "br-netfilter/x",
            "PreflightFailed",
            "br_netfilter is not loaded".into(),
        )
        .await;
    let sent = api.events();
    assert_eq!(sent.len(), 2, "the repeat is held back: {sent:#?}");
    assert_eq!(sent[0]["reason"], "ForeignCniConfig");
    assert_eq!(sent[0]["type"], "Warning");
    assert_eq!(sent[0]["note"], note);
    assert_eq!(sent[0]["regarding"]["kind"], "Node");
    assert_eq!(sent[0]["regarding"]["name"], "n1");
    assert_eq!(sent[1]["reason"], "PreflightFailed");
}
