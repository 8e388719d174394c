//! A cheap snapshot of what the reconciler knows, for `wormhole status`, metrics and health.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::keys::PublicKey;
use crate::mesh::Rejection;

/// A handshake older than this makes a peer [`PeerState::Stale`] (WireGuard re-keys every two
/// minutes while traffic flows).
pub const STALE_AFTER: Duration = Duration::from_secs(180);

/// How a peer is doing, from the handshake first and then from probing through the tunnel (see
/// [`ProbeReport`]): the first that applies of never, stale, unreachable, mtu-blackhole, lossy, ok.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerState {
    /// A handshake within [`STALE_AFTER`], and the probes (if any) get through.
    Ok,
    /// The latest handshake is older than [`STALE_AFTER`].
    Stale,
    /// No handshake yet.
    Never,
    /// Handshakes work, but the latest [`UNREACHABLE_AFTER`] probes through the tunnel were lost.
    Unreachable,
    /// Small probes get through, full-size ones vanish: packets above `max` bytes are lost on
    /// the path (a path-MTU black hole).
    MtuBlackhole {
        /// The largest packet (bytes, on the WireGuard interface) that gets through.
        max: u32,
    },
    /// At least [`LOSSY_AFTER`] of the latest probes were lost.
    Lossy {
        /// The share of the window's probes lost, in percent.
        percent: u8,
    },
}

impl PeerState {
    /// Lowercase label without details (`ok`, `stale`, `never`, `unreachable`, `mtu-blackhole`,
    /// `lossy`), for metrics labels; [`Display`](std::fmt::Display) adds the details.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Ok => "ok",
            PeerState::Stale => "stale",
            PeerState::Never => "never",
            PeerState::Unreachable => "unreachable",
            PeerState::MtuBlackhole { .. } => "mtu-blackhole",
            PeerState::Lossy { .. } => "lossy",
        }
    }

    /// Every label [`as_str`](Self::as_str) gives.
    pub const LABELS: [&'static str; 6] = [
        "ok",
        "stale",
        "never",
        "unreachable",
        "mtu-blackhole",
        "lossy",
    ];

    /// What an operator should check, for every state but `ok`.
    pub fn hint(self) -> Option<String> {
        Some(match self {
            PeerState::Ok => return None,
            PeerState::Never => "no handshake yet: the public key published for this peer may \
                not be the one its agent holds (compare `wormhole status` on both nodes), or its \
                endpoint's UDP port is unreachable"
                .into(),
            PeerState::Stale => "no handshake for over 3 min: the peer's agent or device is down, \
                or its endpoint changed"
                .into(),
            PeerState::Unreachable => "handshakes work but probes through the tunnel are lost: \
                something on the path drops WireGuard data packets, or the peer's host drops \
                ICMP from the overlay"
                .into(),
            PeerState::MtuBlackhole { max } => format!(
                "packets above {max} bytes vanish on the path: set the MTU to {max} or lower \
                 (--mtu {max}) on every node, or raise the underlay's MTU"
            ),
            PeerState::Lossy { percent } => format!(
                "{percent} % of the probes through the tunnel are lost: check the underlay \
                 between the two nodes (link errors, congestion, tc qdiscs)"
            ),
        })
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerState::MtuBlackhole { max } => write!(f, "mtu-blackhole (max {max})"),
            PeerState::Lossy { percent } => write!(f, "lossy ({percent} %)"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// This many probes lost in a row make a peer with a working handshake
/// [`PeerState::Unreachable`].
pub const UNREACHABLE_AFTER: u32 = 5;

/// This many probes lost in the window make a peer [`PeerState::Lossy`] (one lost probe is
/// noise).
pub const LOSSY_AFTER: u32 = 2;

/// What probing a peer through the tunnel found (an agent that probes fills it in; see
/// [`PeerStatus::probe`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeReport {
    /// Probes in the loss window (the latest ones, small ones only).
    pub sent: u32,
    /// How many of those were lost.
    pub lost: u32,
    /// Probes lost in a row, up to now.
    pub lost_in_a_row: u32,
    /// Round-trip time of the latest answered probe.
    pub last_rtt: Option<std::time::Duration>,
    /// Smoothed round-trip time (RFC 6298 weights: 7/8 old, 1/8 new).
    pub smoothed_rtt: Option<std::time::Duration>,
    /// The largest packet (bytes, on the WireGuard interface) seen to get through.
    pub path_mtu: Option<u32>,
    /// Full-size packets vanish while small ones pass: `path_mtu` is the most that gets through.
    pub mtu_blackhole: bool,
}

impl ProbeReport {
    /// Lost probes in the window as a ratio (0 with no probes yet).
    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            f64::from(self.lost) / f64::from(self.sent)
        }
    }

    /// The state these results alone give (for a peer whose handshake is fresh).
    pub fn state(&self) -> PeerState {
        if self.lost_in_a_row >= UNREACHABLE_AFTER {
            PeerState::Unreachable
        } else if let (true, Some(max)) = (self.mtu_blackhole, self.path_mtu) {
            PeerState::MtuBlackhole { max }
        } else if self.lost >= LOSSY_AFTER {
            PeerState::Lossy {
                // At most 100: lost <= sent.
                percent: (self.loss_ratio() * 100.0).round().min(100.0) as u8,
            }
        } else {
            PeerState::Ok
        }
    }
}

/// One accepted peer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Node name.
    pub name: String,
    /// Public key.
    pub public_key: PublicKey,
    /// Endpoint as configured, else as WireGuard learned it.
    pub endpoint: Option<SocketAddr>,
    /// `endpoint` is not configured: the device learned it (from the peer's packets, or from
    /// where other nodes observe the peer). What a node publishes as its observation of a peer
    /// behind NAT.
    pub endpoint_learned: bool,
    /// Allowed IPs (the node's pod CIDRs).
    pub allowed_ips: Vec<IpNet>,
    /// Latest handshake, as the device reported it.
    pub latest_handshake: Option<SystemTime>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Probing through the tunnel, when the agent probes (`None`: not probed, or no result yet).
    pub probe: Option<ProbeReport>,
    /// A peer outside the cluster ([`Mesh::external`](crate::Mesh::external)): not probed (it
    /// has no overlay address of ours to answer at).
    pub external: bool,
}

impl PeerStatus {
    /// Peer `name` with key `public_key`: no endpoint, allowed IPs, handshake or traffic yet (the
    /// reconciler fills these in; tests and status pages of your own may too).
    pub fn new(name: impl Into<String>, public_key: PublicKey) -> Self {
        PeerStatus {
            name: name.into(),
            public_key,
            endpoint: None,
            endpoint_learned: false,
            allowed_ips: Vec::new(),
            latest_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            probe: None,
            external: false,
        }
    }

    /// The peer's state at `now`.
    pub fn state(&self, now: SystemTime) -> PeerState {
        match self.latest_handshake {
            None => PeerState::Never,
            Some(t) if now.duration_since(t).unwrap_or_default() > STALE_AFTER => PeerState::Stale,
            Some(_) => self.probe.map_or(PeerState::Ok, |p| p.state()),
        }
    }
}

/// The outcome of one reconcile pass.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassInfo {
    /// When it started.
    pub at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// How many changes it applied.
    pub changes: usize,
    /// Its error, if it failed.
    pub error: Option<String>,
}

impl PassInfo {
    /// A pass that started `at`, took `duration` and applied `changes` changes, failing with
    /// `error` if any (the reconciler makes these; tests and status pages of your own may too).
    pub fn new(at: SystemTime, duration: Duration, changes: usize, error: Option<String>) -> Self {
        PassInfo {
            at,
            duration,
            changes,
            error,
        }
    }
}

/// Everything `wormhole status` shows.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// This node's name.
    pub node_name: String,
    /// This node's public key, once loaded.
    pub public_key: Option<PublicKey>,
    /// The WireGuard backend in use.
    pub backend: String,
    /// The WireGuard interface.
    pub interface: String,
    /// The WireGuard MTU.
    pub mtu: u32,
    /// This node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// Accepted peers, by name.
    pub peers: Vec<PeerStatus>,
    /// Peers with a change the backends could not apply in the latest pass (for example
    /// `route conflict: 10.99.2.0/24 dev eth0 proto static`), by public key; retried every pass.
    pub peer_problems: BTreeMap<PublicKey, String>,
    /// Refused entries with their reasons.
    pub rejected: Vec<Rejection>,
    /// The latest pass.
    pub last_pass: Option<PassInfo>,
    /// The latest successful pass.
    pub last_success: Option<SystemTime>,
    /// Passes so far.
    pub passes: u64,
    /// Failed passes so far.
    pub errors: u64,
    /// Failed passes by [`Error::kind`](crate::Error::kind).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The peer source's latest error, while it lasts (the last good mesh stays in force).
    pub source_error: Option<String>,
    /// The WireGuard device exists (as of the latest pass).
    pub device_present: bool,
    /// A pass has applied a mesh (not merely observed the host before the first snapshot).
    pub configured: bool,
    /// Packets the firewall dropped so far, by rule ([`Firewall::drops`](crate::Firewall::drops)).
    pub firewall_drops: BTreeMap<String, u64>,
    /// IP forwarding this node's pods need (one entry per family of its pod CIDRs) that is off,
    /// with why it could not be turned on: their packets to and from other nodes are dropped,
    /// so the node is not [ready](Self::ready). Kept by an agent that manages forwarding.
    pub forwarding_off: Vec<ForwardingOff>,
}

/// A forwarding sysctl that is off although this node's pods need it (an entry of
/// [`Status::forwarding_off`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingOff {
    /// The sysctl, e.g. `net.ipv4.ip_forward`.
    pub sysctl: String,
    /// Why it could not be turned on (e.g. `cannot write /proc/sys/net/ipv4/ip_forward:
    /// Read-only file system`).
    pub reason: String,
}

impl ForwardingOff {
    /// `sysctl` is off, for `reason`.
    pub fn new(sysctl: impl Into<String>, reason: impl Into<String>) -> Self {
        ForwardingOff {
            sysctl: sysctl.into(),
            reason: reason.into(),
        }
    }
}

impl Status {
    /// Ready: a pass that had a mesh succeeded, the device exists, and no forwarding the pods
    /// need is off. A pass before the first snapshot (after a restart, over a device that
    /// survived) does not count.
    pub fn ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the node is not [ready](Self::ready), in one line (for `/readyz`); `None` when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !(self.configured && self.device_present) {
            return Some("no successful reconcile with the device present yet".into());
        }
        if self.forwarding_off.is_empty() {
            return None;
        }
        let off: Vec<String> = self
            .forwarding_off
            .iter()
            .map(|f| format!("{} ({})", f.sysctl, f.reason))
            .collect();
        Some(format!(
            "IP forwarding is off, pods cannot reach other nodes: {}",
            off.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;

    fn report(sent: u32, lost: u32, in_a_row: u32) -> ProbeReport {
        ProbeReport {
            sent,
            lost,
            lost_in_a_row: in_a_row,
            ..ProbeReport::default()
        }
    }

    #[test]
    fn the_handshake_decides_first_then_the_probes() {
        let now = SystemTime::now();
        let mut p = PeerStatus::new("b", PrivateKey::generate().public_key());
        // Probes lost, but no handshake: the cause is the handshake.
        p.probe = Some(report(10, 10, 10));
        assert_eq!(p.state(now), PeerState::Never);
        p.latest_handshake = Some(now - STALE_AFTER - Duration::from_secs(1));
        assert_eq!(p.state(now), PeerState::Stale);
        p.latest_handshake = Some(now - Duration::from_secs(5));
        assert_eq!(p.state(now), PeerState::Unreachable);
        p.probe = None;
        assert_eq!(p.state(now), PeerState::Ok);
    }

    #[test]
    fn forwarding_off_makes_a_configured_node_not_ready_and_says_why() {
        let mut status = Status::default();
        assert_eq!(
            status.not_ready_reason().as_deref(),
            Some("no successful reconcile with the device present yet")
        );
        status.configured = true;
        status.device_present = true;
        assert!(status.ready());
        status.forwarding_off.push(ForwardingOff::new(
            "net.ipv6.conf.all.forwarding",
            "cannot write /proc/sys/net/ipv6/conf/all/forwarding: Read-only file system",
        ));
        assert!(!status.ready());
        assert_eq!(
            status.not_ready_reason().unwrap(),
            "IP forwarding is off, pods cannot reach other nodes: net.ipv6.conf.all.forwarding \
             (cannot write /proc/sys/net/ipv6/conf/all/forwarding: Read-only file system)"
        );
    }

    #[test]
    fn probe_results_name_causes() {
        assert_eq!(report(0, 0, 0).state(), PeerState::Ok);
        assert_eq!(
            report(20, 1, 1).state(),
            PeerState::Ok,
            "one lost probe is noise"
        );
        assert_eq!(report(20, 6, 2).state(), PeerState::Lossy { percent: 30 });
        assert_eq!(
            report(20, 6, UNREACHABLE_AFTER - 1).state(),
            PeerState::Lossy { percent: 30 }
        );
        assert_eq!(
            report(20, 6, UNREACHABLE_AFTER).state(),
            PeerState::Unreachable
        );
        let mut hole = report(20, 0, 0);
        hole.path_mtu = Some(1344);
        assert_eq!(hole.state(), PeerState::Ok, "a path MTU alone is no fault");
        hole.mtu_blackhole = true;
        assert_eq!(hole.state(), PeerState::MtuBlackhole { max: 1344 });
        assert_eq!(hole.state().to_string(), "mtu-blackhole (max 1344)");
        assert!(hole.state().hint().unwrap().contains("--mtu 1344"));
        assert_eq!(PeerState::Lossy { percent: 30 }.to_string(), "lossy (30 %)");
        assert!(PeerState::Never.hint().unwrap().contains("public key"));
        assert_eq!(PeerState::Ok.hint(), None);
        for s in [
            PeerState::Ok,
            PeerState::Stale,
            PeerState::Never,
            PeerState::Unreachable,
            PeerState::MtuBlackhole { max: 1 },
            PeerState::Lossy { percent: 1 },
        ] {
            assert!(PeerState::LABELS.contains(&s.as_str()));
        }
    }
}
