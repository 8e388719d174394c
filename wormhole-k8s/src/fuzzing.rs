//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the proptests that run the same
//! checks on stable. Each one panics when an invariant breaks. Not a public API.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;

use crate::crd::WormholeNodeStatus;
use crate::vote::{Choice, Verdict, tally};

/// The peers behind NAT the observed-endpoint vote is about.
const WANTED: [&str; 3] = ["nat0", "nat1", "nat2"];

/// `data` is JSON: a list of WormholeNode statuses, the i-th written by observer `o{i}` (or by
/// `nat{i}`, a peer reporting about itself, for i < 3 when the list is longer than 3). Reading
/// any of them never fails an object that is a JSON object; the vote gives a peer an endpoint
/// exactly when more than half of the observers with one readable, unambiguous report about it
/// agree (checked against a plain count), and the settled choice only holds majorities.
pub fn observed_endpoints(data: &[u8]) {
    let Ok(values) = serde_json::from_slice::<Vec<serde_json::Value>>(data) else {
        return;
    };
    let mut statuses = Vec::new();
    for value in values {
        let is_object = value.is_object();
        match serde_json::from_value::<WormholeNodeStatus>(value) {
            Ok(status) => statuses.push(status),
            Err(e) => assert!(!is_object, "an object failed to decode: {e}"),
        }
    }
    let names: Vec<String> = (0..statuses.len())
        .map(|i| {
            if statuses.len() > 3 && i < 3 {
                format!("nat{i}")
            } else {
                format!("o{i}")
            }
        })
        .collect();
    let wanted: HashSet<&str> = WANTED.into();
    let verdicts = tally(
        names
            .iter()
            .zip(&statuses)
            .map(|(n, s)| (n.as_str(), s.observed_endpoints.as_slice())),
        &wanted,
    );
    // The plain count: per peer, each observer's distinct readings of its reports about it.
    let mut expected: BTreeMap<String, Verdict> = BTreeMap::new();
    for peer in WANTED {
        let ballots: Vec<SocketAddr> = names
            .iter()
            .zip(&statuses)
            .filter(|(observer, _)| observer.as_str() != peer)
            .filter_map(|(_, status)| {
                let readings: BTreeSet<Option<SocketAddr>> = status
                    .observed_endpoints
                    .iter()
                    .filter(|seen| seen.peer == peer)
                    .map(|seen| seen.endpoint.parse().ok())
                    .collect();
                match readings.into_iter().collect::<Vec<_>>()[..] {
                    [only] => only,
                    _ => None,
                }
            })
            .collect();
        if ballots.is_empty() {
            continue;
        }
        let winner = ballots
            .iter()
            .find(|e| 2 * ballots.iter().filter(|b| b == e).count() > ballots.len());
        expected.insert(
            peer.to_owned(),
            winner.map_or(Verdict::Split, |e| Verdict::Majority(*e)),
        );
    }
    assert_eq!(verdicts, expected);
    let chosen = Choice::default().settle(verdicts.clone(), tokio::time::Instant::now());
    for (peer, endpoint) in &chosen {
        assert_eq!(
            verdicts.get(peer),
            Some(&Verdict::Majority(endpoint.parse().unwrap()))
        );
    }
}
