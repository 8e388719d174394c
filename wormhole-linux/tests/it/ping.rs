//! [`Pinger`] for real, in a namespace of its own: echo requests of exact sizes over IPv4 and
//! IPv6, many at once on one socket pair, each matched to its own reply; no reply is `None`.

use std::net::IpAddr;
use std::time::Duration;

use wormhole_linux::Pinger;

use crate::harness::{Netns, prefix, root_or_skip};

#[test]
fn pings_of_exact_sizes_are_matched_to_their_replies() {
    if !root_or_skip("pings_of_exact_sizes_are_matched_to_their_replies") {
        return;
    }
    let ns = Netns::new(format!("{}p", prefix()));
    ns.sh(&["ip", "link", "set", "lo", "up"]);
    let rt = ns.runtime();
    rt.block_on(async {
        let pinger = std::sync::Arc::new(Pinger::new().expect("raw ICMP sockets (root)"));
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        for (to, sizes) in [
            (v4, [28 + 8, 64, 1420, 9000]),
            (v6, [48 + 8, 64, 1420, 9000]),
        ] {
            for size in sizes {
                let rtt = pinger
                    .ping(to, size, Duration::from_secs(2))
                    .await
                    .unwrap_or_else(|e| panic!("ping {to} size {size}: {e}"));
                assert!(rtt.is_some(), "no reply from {to} at {size} bytes");
            }
        }
        // Below the smallest size: refused, not sent.
        assert!(pinger.ping(v4, 20, Duration::from_secs(1)).await.is_err());
        // 200 at once, both families: every one answered, none confused with another.
        let all = (0..200u32).map(|i| {
            let pinger = pinger.clone();
            let to = if i % 2 == 0 { v4 } else { v6 };
            async move { pinger.ping(to, 64 + i, Duration::from_secs(5)).await }
        });
        let results = futures::future::join_all(all).await;
        let answered = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        assert_eq!(answered, 200, "{results:?}");
    });
    // An address nobody answers: no reply, whether the kernel refuses to send or not.
    ns.sh(&["ip", "route", "add", "unreachable", "10.255.0.0/16"]);
    rt.block_on(async {
        let pinger = Pinger::new().unwrap();
        let to: IpAddr = "10.255.0.1".parse().unwrap();
        match pinger.ping(to, 64, Duration::from_millis(300)).await {
            Ok(None) | Err(_) => {}
            Ok(Some(rtt)) => panic!("a reply from nowhere after {rtt:?}"),
        }
    });
}
