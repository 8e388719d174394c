//! Property tests: the planner and validation invariants, through the same functions the
//! cargo-fuzz targets call.

use proptest::prelude::*;
use wormhole_core::fuzzing;
use wormhole_core::{NodeEntry, Snapshot};
use wormhole_core::{PrivateKey, PublicKey};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// plan(x, x) is empty; applying plan(d, o) to o yields d; no plan replaces all peers.
    #[test]
    fn planner_invariants(data in proptest::collection::vec(any::<u8>(), 0..160)) {
        fuzzing::plan(&data);
    }

    #[test]
    fn key_parsing_never_panics(text in ".{0,60}", bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
        fuzzing::parse_key(text.as_bytes());
        fuzzing::parse_key(&bytes);
    }

    #[test]
    fn peers_file_parsing_never_panics(text in "(\\[\\[node\\]\\]\n|name = \"[ab]\"\n|pod_cidrs = \\[\"10.[0-9].0.0/16\"\\]\n|public_key = \"[A-Za-z0-9+/=]{0,44}\"\n|x\n|=\n)*") {
        fuzzing::parse_peers(text.as_bytes());
    }

    /// Validation never accepts two nodes with overlapping CIDRs, nor gives a peer the local
    /// CIDR, whatever the entries and their order.
    #[test]
    fn validation_never_accepts_overlaps(entries in proptest::collection::vec(entry(), 1..12)) {
        fuzzing::check_mesh(&Snapshot { nodes: entries, ..Snapshot::default() });
    }
}

fn keys() -> Vec<PublicKey> {
    (1..=5u8)
        .map(|i| PrivateKey::from_bytes([i; 32]).public_key())
        .collect()
}

/// Entries drawn from small pools of names, keys and CIDRs, so that they collide often.
fn entry() -> impl Strategy<Value = NodeEntry> {
    let cidr = prop_oneof![
        (0u8..6).prop_map(|n| format!("10.99.{n}.0/24")),
        (0u8..6).prop_map(|n| format!("10.99.{n}.128/25")),
        Just("10.99.0.0/20".to_owned()),
        (0u8..3).prop_map(|n| format!("fd99:0:{n}::/64")),
        Just("fd99::/48".to_owned()),
        Just("10.98.0.0/16".to_owned()),
        Just("192.168.0.0/24".to_owned()),
    ];
    (
        prop::sample::select(vec!["a", "b", "c", "d", "e", "f"]),
        prop_oneof![
            prop::sample::select(keys()).prop_map(|k| k.to_base64()),
            Just("bad".to_owned())
        ],
        proptest::collection::vec(cidr, 0..3),
    )
        .prop_map(|(name, public_key, pod_cidrs)| NodeEntry {
            name: name.to_owned(),
            public_key,
            endpoint: Some("192.168.77.1:51820".into()),
            pod_cidrs,
            persistent_keepalive: None,
            origin: String::new(),
        })
}
