//! The address plan of the suites: node `i` sits at `192.168.77.i` on the underlay and owns the
//! pod CIDRs `10.99.i.0/24` and `fd99:0:0:i::/64` of the overlay.

/// The overlay (cluster CIDRs) of these tests.
pub const CLUSTER_CIDRS: [&str; 2] = ["10.99.0.0/16", "fd99::/48"];

/// Node `i`'s underlay address.
pub fn underlay_ip(i: usize) -> String {
    format!("192.168.77.{i}")
}

/// Node `i`'s pod CIDRs (IPv4, IPv6).
pub fn pod_cidrs(i: usize) -> [String; 2] {
    [format!("10.99.{i}.0/24"), format!("fd99:0:0:{i}::/64")]
}

/// Node `i`'s overlay addresses (on its WireGuard interface).
pub fn overlay_ips(i: usize) -> [String; 2] {
    [format!("10.99.{i}.1"), format!("fd99:0:0:{i}::1")]
}
