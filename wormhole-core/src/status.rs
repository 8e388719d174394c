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

/// How a peer is doing.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerState {
    /// A handshake within [`STALE_AFTER`].
    Ok,
    /// The latest handshake is older than [`STALE_AFTER`].
    Stale,
    /// No handshake yet.
    Never,
}

impl PeerState {
    /// Lowercase label (`ok`, `stale`, `never`).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Ok => "ok",
            PeerState::Stale => "stale",
            PeerState::Never => "never",
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
    /// Allowed IPs (the node's pod CIDRs).
    pub allowed_ips: Vec<IpNet>,
    /// Latest handshake, as the device reported it.
    pub latest_handshake: Option<SystemTime>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

impl PeerStatus {
    /// Peer `name` with key `public_key`: no endpoint, allowed IPs, handshake or traffic yet (the
    /// reconciler fills these in; tests and status pages of your own may too).
    pub fn new(name: impl Into<String>, public_key: PublicKey) -> Self {
        PeerStatus {
            name: name.into(),
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            latest_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    /// The peer's state at `now`.
    pub fn state(&self, now: SystemTime) -> PeerState {
        match self.latest_handshake {
            None => PeerState::Never,
            Some(t) if now.duration_since(t).unwrap_or_default() > STALE_AFTER => PeerState::Stale,
            Some(_) => PeerState::Ok,
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
}

impl Status {
    /// Ready: a pass that had a mesh succeeded, and the device exists. A pass before the first
    /// snapshot (after a restart, over a device that survived) does not count.
    pub fn ready(&self) -> bool {
        self.configured && self.device_present
    }
}
