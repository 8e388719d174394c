//! Property tests of the reports other nodes write, through the same functions the cargo-fuzz
//! targets call.

use proptest::prelude::*;
use wormhole_k8s::fuzzing;

/// A report entry: mostly about the peers behind NAT the vote is about, at a few addresses,
/// sometimes unreadable or of the wrong type.
fn entry() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("nat0"), Just("nat1"), Just("nat2"), Just("x")],
        prop_oneof![
            Just("\"203.0.113.1:1\""),
            Just("\"203.0.113.2:2\""),
            Just("\"[::ffff:203.0.113.1]:1\""),
            Just("\"[0::1]:7\""),
            Just("\"[::1]:7\""),
            Just("\"nowhere\""),
            Just("5"),
        ],
    )
        .prop_map(|(peer, endpoint)| format!("{{\"peer\":\"{peer}\",\"endpoint\":{endpoint}}}"))
}

/// A status: an observed-endpoint list (or something else in its place) and a counter that may
/// not fit.
fn status() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            proptest::collection::vec(entry(), 0..6).prop_map(|e| format!("[{}]", e.join(","))),
            Just("\"everywhere\"".to_owned()),
            Just("null".to_owned()),
        ],
        prop_oneof![Just("1"), Just("-1"), Just("1099511627776"), Just("\"x\"")],
    )
        .prop_map(|(list, counter)| {
            format!("{{\"observedEndpoints\":{list},\"peersOk\":{counter}}}")
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// One vote per observer and peer, a strict majority decides, and no status fails to read.
    #[test]
    fn observed_endpoint_votes(statuses in proptest::collection::vec(status(), 0..8)) {
        fuzzing::observed_endpoints(format!("[{}]", statuses.join(",")).as_bytes());
    }

    #[test]
    fn observed_endpoint_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::observed_endpoints(&bytes);
    }
}
