//! What `wormhole uninstall` uses to take a node apart: a link's kind (it deletes only the kinds
//! it makes), a bridge's ports, and deletions that say whether there was anything to delete.

use wormhole_core::Firewall as _;
use wormhole_linux::{Network, Nftables};

use crate::harness::{Netns, prefix, root_or_skip};

#[test]
fn kinds_ports_and_deletions_that_say_what_they_found() {
    if !root_or_skip("kinds_ports_and_deletions_that_say_what_they_found") {
        return;
    }
    let ns = Netns::new(format!("{}t", prefix()));
    ns.sh(&["ip", "link", "add", "br-t", "type", "bridge"]);
    ns.sh(&["ip", "tuntap", "add", "dev", "tun-t", "mode", "tun"]);
    for pod in ["a", "b"] {
        let host = format!("veth-{pod}");
        ns.sh(&[
            "ip",
            "link",
            "add",
            &host,
            "type",
            "veth",
            "peer",
            "name",
            &format!("pod-{pod}"),
        ]);
        ns.sh(&["ip", "link", "set", &host, "master", "br-t"]);
    }
    let rt = ns.runtime();
    // Spawned: the runtime's threads are in the namespace, the test's own thread is not.
    rt.block_on(rt.spawn(async {
        let kind = |name: &'static str| async move {
            Network::new(name).unwrap().link_kind().await.unwrap()
        };
        assert_eq!(kind("br-t").await.as_deref(), Some("bridge"));
        assert_eq!(kind("tun-t").await.as_deref(), Some("tun"));
        assert_eq!(kind("veth-a").await.as_deref(), Some("veth"));
        assert_eq!(kind("lo").await.as_deref(), Some(""), "no kind: not ours");
        assert_eq!(kind("absent0").await, None);

        let bridge = Network::new("br-t").unwrap();
        assert_eq!(bridge.delete_ports().await.unwrap(), ["veth-a", "veth-b"]);
        assert!(bridge.delete_ports().await.unwrap().is_empty());
        assert!(bridge.delete_link().await.unwrap());
        assert!(
            !bridge.delete_link().await.unwrap(),
            "gone: nothing to delete"
        );
        assert!(bridge.delete_ports().await.unwrap().is_empty());

        let firewall = Nftables::new();
        assert!(!firewall.delete().await.unwrap(), "no table yet");
        let policy = wormhole_core::FirewallPolicy {
            interface: "tun-t".parse().unwrap(),
            bridge: "br-t".parse().unwrap(),
            cluster_cidrs: vec!["10.99.0.0/16".parse().unwrap()],
            local_pod_cidrs: vec!["10.99.1.0/24".parse().unwrap()],
            mtu: 1420,
        };
        firewall.apply(&policy).await.unwrap();
        assert!(firewall.delete().await.unwrap());
        assert!(!firewall.delete().await.unwrap());
    }))
    .unwrap();
    // The pods' ends went with their host ends; the TUN link is untouched.
    let links = ns.sh(&["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("veth-") && !links.contains("pod-") && !links.contains("br-t"),
        "{links}"
    );
    assert!(links.contains("tun-t"), "{links}");
    assert!(
        !ns.run(&["nft", "list", "table", "inet", "wormhole"])
            .status
            .success()
    );
}
