//! The observers' vote on where a node behind NAT is (a node that publishes no endpoint).
//!
//! Each agent reports in its WormholeNode status where it sees such peers
//! (`status.observedEndpoints`). Those reports come from other nodes, any of which may be
//! compromised, so they are counted the way the security model (docs/security.md) promises:
//! - **one vote per observer and peer**: an observer listing a peer several times at one address
//!   votes once; listing it at different addresses (or unreadably) spoils its ballot for that
//!   peer; a node's report about itself is no vote;
//! - **a strict majority** of the observers that vote for a peer decides ([`tally`]); without
//!   one (a tie, a split), nothing changes;
//! - **a chosen endpoint moves at most once every [`HOLD`]** ([`Choice`]), so a flapping report
//!   cannot make every agent rewrite its device and its state file at every status write.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::crd::ObservedEndpoint;

/// How long a chosen endpoint stays before a different majority may move it.
pub(crate) const HOLD: Duration = Duration::from_secs(30);

/// The outcome of the vote on one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// More than half of the observers that voted for the peer saw it there.
    Majority(SocketAddr),
    /// Observers voted, but no address has more than half of the votes.
    Split,
}

/// One observer's ballot on one peer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ballot {
    For(SocketAddr),
    Spoiled,
}

/// Counts the votes of `observers` (each: its node name and its report) on the peers in
/// `wanted`, in time linear in the number of reports.
pub(crate) fn tally<'a>(
    observers: impl IntoIterator<Item = (&'a str, &'a [ObservedEndpoint])>,
    wanted: &HashSet<&str>,
) -> BTreeMap<String, Verdict> {
    // peer -> address -> votes
    let mut votes: HashMap<&str, HashMap<SocketAddr, usize>> = HashMap::new();
    let mut ballots: HashMap<&str, Ballot> = HashMap::new();
    for (observer, report) in observers {
        ballots.clear();
        for seen in report {
            let peer = seen.peer.as_str();
            if peer == observer || !wanted.contains(peer) {
                continue;
            }
            let ballot = seen
                .endpoint
                .parse::<SocketAddr>()
                .map_or(Ballot::Spoiled, Ballot::For);
            match ballots.entry(peer) {
                Entry::Vacant(v) => {
                    v.insert(ballot);
                }
                Entry::Occupied(mut o) if *o.get() != ballot => {
                    o.insert(Ballot::Spoiled);
                }
                Entry::Occupied(_) => {}
            }
        }
        for (peer, ballot) in ballots.drain() {
            if let Ballot::For(endpoint) = ballot {
                *votes.entry(peer).or_default().entry(endpoint).or_default() += 1;
            }
        }
    }
    votes
        .into_iter()
        .map(|(peer, counts)| {
            let total: usize = counts.values().sum();
            let verdict = counts
                .into_iter()
                .find(|(_, n)| 2 * n > total)
                .map_or(Verdict::Split, |(endpoint, _)| Verdict::Majority(endpoint));
            (peer.to_owned(), verdict)
        })
        .collect()
}

/// The endpoints chosen for peers behind NAT, kept across votes: a majority sets a peer's
/// endpoint at once when it has none, and moves it only [`HOLD`] after the last move; a split
/// vote keeps it; a peer nobody votes for any more loses it.
#[derive(Debug)]
pub(crate) struct Choice {
    chosen: HashMap<String, (SocketAddr, Instant)>,
    /// The earliest time a majority held back by [`HOLD`] may move a chosen endpoint.
    held: Option<Instant>,
    /// [`HOLD`], shorter in tests.
    hold: Duration,
}

impl Default for Choice {
    fn default() -> Self {
        Choice {
            chosen: HashMap::new(),
            held: None,
            hold: HOLD,
        }
    }
}

impl Choice {
    /// A choice whose endpoints move at most once per `hold` (tests).
    #[cfg(test)]
    pub(crate) fn with_hold(hold: Duration) -> Self {
        Choice {
            hold,
            ..Choice::default()
        }
    }

    /// Takes the `verdicts` of a new vote at `now` into account; returns the chosen endpoints
    /// by peer.
    pub(crate) fn settle(
        &mut self,
        verdicts: BTreeMap<String, Verdict>,
        now: Instant,
    ) -> BTreeMap<String, String> {
        self.chosen.retain(|peer, _| verdicts.contains_key(peer));
        self.held = None;
        for (peer, verdict) in verdicts {
            let Verdict::Majority(endpoint) = verdict else {
                continue;
            };
            match self.chosen.entry(peer) {
                Entry::Vacant(v) => {
                    v.insert((endpoint, now));
                }
                Entry::Occupied(mut o) => {
                    let (current, since) = *o.get();
                    if current == endpoint {
                        continue;
                    }
                    let allowed = since + self.hold;
                    if now >= allowed {
                        o.insert((endpoint, now));
                    } else {
                        self.held = Some(self.held.map_or(allowed, |h| h.min(allowed)));
                    }
                }
            }
        }
        self.chosen
            .iter()
            .map(|(peer, (endpoint, _))| (peer.clone(), endpoint.to_string()))
            .collect()
    }

    /// When a majority held back by [`HOLD`] may take effect: the vote should be taken again
    /// then, even if nothing else changed.
    pub(crate) fn held_until(&self) -> Option<Instant> {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seen: &[(&str, &str)]) -> Vec<ObservedEndpoint> {
        seen.iter()
            .map(|(peer, endpoint)| ObservedEndpoint {
                peer: (*peer).to_owned(),
                endpoint: (*endpoint).to_owned(),
            })
            .collect()
    }

    fn vote(observers: &[(&str, Vec<ObservedEndpoint>)]) -> BTreeMap<String, Verdict> {
        let wanted: HashSet<&str> = ["nat"].into();
        tally(observers.iter().map(|(o, r)| (*o, r.as_slice())), &wanted)
    }

    const HONEST: &str = "203.0.113.10:4000";
    const LIAR: &str = "192.0.2.1:1";

    fn majority(endpoint: &str) -> Verdict {
        Verdict::Majority(endpoint.parse().unwrap())
    }

    /// The hostile review's first case: one node listing the peer six times used to outvote
    /// five honest observers.
    #[test]
    fn one_observer_listing_a_peer_many_times_votes_once() {
        let mut observers: Vec<(&str, Vec<ObservedEndpoint>)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|o| (*o, report(&[("nat", HONEST)])))
            .collect();
        observers.push(("liar", report(&[("nat", LIAR); 6])));
        assert_eq!(vote(&observers)["nat"], majority(HONEST));
    }

    /// The second case: one honest observer against one liar with a lower address used to go
    /// to the liar (ties went to the lowest address). A tie decides nothing now.
    #[test]
    fn a_tie_decides_nothing() {
        let observers = [
            ("honest", report(&[("nat", HONEST)])),
            ("liar", report(&[("nat", LIAR)])),
        ];
        assert_eq!(vote(&observers)["nat"], Verdict::Split);
        let mut choice = Choice::default();
        let now = Instant::now();
        // Chosen while the honest observer was alone; the liar's arrival changes nothing.
        let alone = vote(&observers[..1]);
        assert_eq!(choice.settle(alone, now)["nat"], HONEST);
        let chosen = choice.settle(vote(&observers), now + HOLD * 10);
        assert_eq!(chosen["nat"], HONEST);
        // Without history, a split vote chooses nothing.
        assert!(Choice::default().settle(vote(&observers), now).is_empty());
    }

    #[test]
    fn a_strict_majority_of_the_voters_decides() {
        let three = |third: &str| {
            vote(&[
                ("a", report(&[("nat", HONEST)])),
                ("b", report(&[("nat", HONEST)])),
                ("c", report(&[("nat", third)])),
            ])
        };
        assert_eq!(three(LIAR)["nat"], majority(HONEST), "2 of 3");
        // Four voters, two each: no majority.
        let four = vote(&[
            ("a", report(&[("nat", HONEST)])),
            ("b", report(&[("nat", HONEST)])),
            ("c", report(&[("nat", LIAR)])),
            ("d", report(&[("nat", LIAR)])),
        ]);
        assert_eq!(four["nat"], Verdict::Split);
    }

    #[test]
    fn spoiled_ballots_self_reports_and_other_peers_do_not_count() {
        let observers = [
            // Two addresses for one peer, or an unreadable one: the ballot is spoiled.
            ("double", report(&[("nat", LIAR), ("nat", "192.0.2.2:2")])),
            ("garbled", report(&[("nat", LIAR), ("nat", "nowhere")])),
            // The peer about itself.
            ("nat", report(&[("nat", LIAR)])),
            // A peer that is not behind NAT.
            ("x", report(&[("other", LIAR)])),
            ("honest", report(&[("nat", HONEST), ("nat", HONEST)])),
        ];
        let verdicts = vote(&observers);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts["nat"], majority(HONEST));
    }

    #[test]
    fn a_chosen_endpoint_moves_at_most_once_per_hold() {
        let at = |endpoint: &str| vote(&[("a", report(&[("nat", endpoint)]))]);
        let start = Instant::now();
        let mut choice = Choice::default();
        assert_eq!(choice.settle(at(HONEST), start)["nat"], HONEST);
        assert_eq!(choice.held_until(), None);
        // A new majority right away is held back, and when it may apply is known.
        let moved = "203.0.113.11:4000";
        assert_eq!(choice.settle(at(moved), start + HOLD / 2)["nat"], HONEST);
        assert_eq!(choice.held_until(), Some(start + HOLD));
        assert_eq!(choice.settle(at(moved), start + HOLD)["nat"], moved);
        assert_eq!(choice.held_until(), None);
        // Flapping every second moves it once per HOLD at most.
        let mut moves = 0;
        let mut last = moved.to_owned();
        for second in 1..=120u32 {
            let endpoint = if second % 2 == 0 { HONEST } else { moved };
            let now = start + HOLD + Duration::from_secs(second.into());
            let chosen = choice.settle(at(endpoint), now)["nat"].clone();
            if chosen != last {
                moves += 1;
                last = chosen;
            }
        }
        assert!(moves <= 4, "{moves} moves in 120 s");
        // Nobody votes for the peer any more: its endpoint is forgotten.
        assert!(choice.settle(BTreeMap::new(), start + HOLD * 9).is_empty());
    }
}
