//! The mesh model: what a peer source reports ([`Snapshot`] of [`NodeEntry`]), and what
//! validation accepts ([`Mesh`] of [`NodeSpec`]), with a typed reason for every rejected peer.
//!
//! Validation keeps every good peer and rejects each bad one individually: a bad peer never takes
//! the mesh down. Conflicts between peers (same name, same key, overlapping pod CIDRs) are decided
//! by one deterministic rule, see [`Mesh::build`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::keys::{KeyError, PublicKey};
use crate::text::Escaped;
use crate::{Error, MeshError};

/// The most pod CIDRs one node may have. Kubernetes gives a Node at most two (one per family);
/// a peers file may route more subnets to a node, but each CIDR becomes an allowed IP and a route
/// on every other node, and the kernel backend is tested with one peer of 1,000 CIDRs. 1,024
/// leaves room far above ordinary use and keeps one hostile entry from costing every node.
pub const MAX_POD_CIDRS: usize = 1024;

/// A node as a peer source reports it, before validation. Fields are text so that validation, not
/// the source, decides what is malformed and says why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeEntry {
    /// Node name (the Kubernetes Node name, or any unique name).
    pub name: String,
    /// WireGuard public key, base64.
    pub public_key: String,
    /// `ip:port` or `[ipv6]:port`; `None` for a node that cannot be reached first (behind NAT).
    pub endpoint: Option<String>,
    /// Pod CIDRs of the node, IPv4 and/or IPv6.
    pub pod_cidrs: Vec<String>,
    /// Persistent keepalive in seconds (`0` means off).
    pub persistent_keepalive: Option<u16>,
    /// Where the entry came from, for messages (for example `peers.toml node[3]`).
    pub origin: String,
}

impl NodeEntry {
    /// An entry from typed values, for sources that have them (a source that passes raw text on
    /// to validation fills in the fields instead). No keepalive, and no origin: messages then
    /// name the node only; add them with [`Self::keepalive`] and [`Self::origin`].
    ///
    /// ```
    /// use wormhole_core::{NodeEntry, PrivateKey};
    /// let key = PrivateKey::generate().public_key();
    /// let entry = NodeEntry::new("node-a", key, Some("192.168.77.1:51820".parse().unwrap()),
    ///     vec!["10.99.1.0/24".parse().unwrap(), "fd99:0:0:1::/64".parse().unwrap()])
    ///     .keepalive(25)
    ///     .origin("inventory row 7");
    /// assert_eq!(entry.endpoint.as_deref(), Some("192.168.77.1:51820"));
    /// assert_eq!(entry.pod_cidrs, ["10.99.1.0/24", "fd99:0:0:1::/64"]);
    /// ```
    pub fn new(
        name: impl Into<String>,
        public_key: PublicKey,
        endpoint: Option<SocketAddr>,
        pod_cidrs: Vec<IpNet>,
    ) -> Self {
        NodeEntry {
            name: name.into(),
            public_key: public_key.to_base64(),
            endpoint: endpoint.map(|e| e.to_string()),
            pod_cidrs: pod_cidrs.iter().map(ToString::to_string).collect(),
            persistent_keepalive: None,
            origin: String::new(),
        }
    }

    /// Where the entry came from, for messages (for example `inventory row 7`).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// A persistent keepalive of `seconds` (`0`: off).
    pub fn keepalive(mut self, seconds: u16) -> Self {
        self.persistent_keepalive = Some(seconds);
        self
    }
}

/// A full desired picture from a peer source (see [`PeerStream`](crate::PeerStream)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The overlay (cluster) CIDRs, if the source knows them; configuration may override them.
    pub cluster_cidrs: Vec<IpNet>,
    /// Every node, the local one included.
    pub nodes: Vec<NodeEntry>,
    /// Entries the source itself could not read (wrong field types, unknown fields, ...).
    pub rejected: Vec<Rejection>,
    /// `nodes` (and `external`) are listed in the order their claims were made, oldest first
    /// (the Kubernetes source: by WormholeNode or WormholePeer creation time, then uid). Between
    /// conflicting newcomers the earlier entry then wins; when `false`, the one whose name sorts
    /// first. See [`Mesh::build`].
    pub oldest_first: bool,
    /// Peers outside the cluster (a CI runner, a laptop): their `pod_cidrs` are the allowed IPs
    /// they may send from, which must lie in `external_cidrs` (see [`Mesh::external`]).
    pub external: Vec<NodeEntry>,
    /// The ranges external peers' allowed IPs must lie in; none means no external peer is
    /// accepted.
    pub external_cidrs: Vec<IpNet>,
    /// For nodes that publish no endpoint (behind NAT), by node name: the `ip:port` other nodes
    /// see it at (from its handshakes with them). A hint only: used for a peer that has no
    /// endpoint of its own while the device knows no working one (see
    /// [`NodeSpec::observed_endpoint`]); an unusable one is ignored, and it never changes a
    /// peer's allowed IPs or routes.
    pub observed_endpoints: BTreeMap<String, String>,
}

/// A validated node.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// WireGuard public key.
    pub public_key: PublicKey,
    /// Where to send the first handshake; `None` waits for the peer to reach us.
    pub endpoint: Option<SocketAddr>,
    /// Pod CIDRs: the allowed IPs of this peer and the routes towards it.
    pub pod_cidrs: Vec<IpNet>,
    /// Persistent keepalive in seconds; never `Some(0)`.
    pub persistent_keepalive: Option<u16>,
    /// For a peer without `endpoint`: where other nodes see it ([`Snapshot::observed_endpoints`]).
    /// The device is pointed there only while it knows no working endpoint of its own for the
    /// peer (none, or none with a handshake in the last 3 minutes): WireGuard's roaming, which
    /// follows the peer's authenticated packets, wins.
    pub observed_endpoint: Option<SocketAddr>,
}

/// An entry validation (or the source) refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The entry's name as given (may be empty).
    pub name: String,
    /// Where the entry came from.
    pub origin: String,
    /// Why it was refused.
    pub reason: RejectReason,
    /// The entry was an external peer (a machine outside the cluster), not a node: no pair of
    /// the mesh, so no cell of the cluster matrix.
    pub external: bool,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "(no name)"
        } else {
            &self.name
        };
        let name = Escaped(name);
        if self.origin.is_empty() {
            write!(f, "{name}: {}", self.reason)
        } else {
            write!(f, "{name} ({}): {}", Escaped(&self.origin), self.reason)
        }
    }
}

/// Why a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// A field has the wrong type, is missing or unknown (reported by the source).
    #[error("field {}: {}", Escaped(.field), Escaped(.reason))]
    Invalid {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The name is not a DNS-1123 subdomain (what Kubernetes allows for a Node name).
    #[error(
        "invalid name: must be a DNS-1123 subdomain like a Kubernetes Node name: 1-253 \
         characters, lowercase letters, digits, '-' and '.', each dot-separated part starting \
         and ending with a letter or digit"
    )]
    BadName,
    /// The public key does not parse.
    #[error("malformed public key: {0}")]
    MalformedKey(KeyError),
    /// Another entry has this name.
    #[error("duplicate name: already used by the entry at {}", Escaped(.other))]
    DuplicateName {
        /// The origin of the entry that kept the name.
        other: String,
    },
    /// Another node has this public key.
    #[error(
        "duplicate public key: already used by node {}, which keeps it; a node publishing \
         another node's key has a copied key file or is compromised",
        Escaped(.other)
    )]
    DuplicateKey {
        /// The node that kept the key.
        other: String,
    },
    /// The entry uses this node's own public key.
    #[error("uses this node's own public key")]
    LocalKey,
    /// The endpoint is not a usable `ip:port`.
    #[error("bad endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The endpoint lies inside a cluster or external CIDR (the overlay): handshakes to it would
    /// be routed into the tunnel itself.
    #[error(
        "endpoint {endpoint} lies inside the overlay CIDR {cidr}: WireGuard's packets to it \
         would be routed into the tunnel; publish the node's underlay address"
    )]
    EndpointInOverlay {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The cluster or external CIDR holding it.
        cidr: IpNet,
    },
    /// A pod CIDR does not parse or is not a network address.
    #[error("bad pod CIDR {cidr:?}: {reason}")]
    BadCidr {
        /// The CIDR as given.
        cidr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The entry lists more pod CIDRs than [`MAX_POD_CIDRS`].
    #[error("too many pod CIDRs ({count}): at most {max} per node")]
    TooManyCidrs {
        /// How many the entry lists.
        count: usize,
        /// The limit, [`MAX_POD_CIDRS`].
        max: usize,
    },
    /// A pod CIDR lies outside every cluster CIDR.
    #[error("pod CIDR {cidr} is outside the cluster CIDRs")]
    OutsideCluster {
        /// The offending CIDR.
        cidr: IpNet,
    },
    /// A pod CIDR overlaps another node's.
    #[error("pod CIDR {cidr} overlaps {other_cidr} of node {other}")]
    OverlapsPeer {
        /// The offending CIDR.
        cidr: IpNet,
        /// The CIDR it overlaps.
        other_cidr: IpNet,
        /// The node that owns `other_cidr`.
        other: String,
    },
    /// A pod CIDR overlaps this node's own.
    #[error("pod CIDR {cidr} overlaps this node's pod CIDR {local}")]
    OverlapsLocal {
        /// The offending CIDR.
        cidr: IpNet,
        /// The local CIDR it overlaps.
        local: IpNet,
    },
    /// An external peer's allowed IP outside the configured external CIDRs.
    #[error(
        "allowed IP {cidr} is outside the external CIDRs (external_cidrs, or --external-cidr): \
         external peers may only hold addresses set aside for them"
    )]
    OutsideExternal {
        /// The allowed IP.
        cidr: IpNet,
    },
    /// An external peer, while no external CIDR is configured: every external peer is refused
    /// until a range is set aside for them.
    #[error(
        "no external CIDRs are configured: set aside a range for external peers \
         (--external-cidr on every agent, or external_cidrs in the peers file)"
    )]
    NoExternalCidrs,
    /// An external peer's allowed IP overlapping the cluster CIDRs.
    #[error(
        "allowed IP {cidr} overlaps the cluster CIDR {cluster}: an external peer must never \
         claim pod addresses"
    )]
    ExternalOverlapsCluster {
        /// The allowed IP.
        cidr: IpNet,
        /// The cluster CIDR.
        cluster: IpNet,
    },
    /// The entry for this node lists a public key other than ours. Its pod CIDRs are still used,
    /// but other nodes cannot reach this one until the entry is updated.
    #[error("this node's entry lists a public key other than ours ({ours}): peers cannot reach us")]
    StaleLocalKey {
        /// Our actual public key, to publish.
        ours: PublicKey,
    },
}

impl RejectReason {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RejectReason::Invalid { .. } => "invalid_field",
            RejectReason::BadName => "bad_name",
            RejectReason::MalformedKey(_) => "malformed_key",
            RejectReason::DuplicateName { .. } => "duplicate_name",
            RejectReason::DuplicateKey { .. } => "duplicate_key",
            RejectReason::LocalKey => "local_key",
            RejectReason::BadEndpoint { .. } => "bad_endpoint",
            RejectReason::EndpointInOverlay { .. } => "endpoint_in_overlay",
            RejectReason::BadCidr { .. } => "bad_cidr",
            RejectReason::TooManyCidrs { .. } => "too_many_cidrs",
            RejectReason::OutsideCluster { .. } => "outside_cluster",
            RejectReason::OverlapsPeer { .. } => "overlaps_peer",
            RejectReason::OverlapsLocal { .. } => "overlaps_local",
            RejectReason::StaleLocalKey { .. } => "stale_local_key",
            RejectReason::OutsideExternal { .. } => "outside_external",
            RejectReason::NoExternalCidrs => "no_external_cidrs",
            RejectReason::ExternalOverlapsCluster { .. } => "external_overlaps_cluster",
        }
    }
}

/// The validated mesh: this node, its accepted peers and the refused entries.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// This node (its public key is the key store's, whatever the source said).
    pub local: NodeSpec,
    /// Accepted peers, sorted by name.
    pub peers: Vec<NodeSpec>,
    /// The overlay CIDRs every pod CIDR must lie in.
    pub cluster_cidrs: Vec<IpNet>,
    /// Refused entries, sorted by name.
    pub rejected: Vec<Rejection>,
    /// Accepted external peers (machines outside the cluster), sorted by name: their
    /// `pod_cidrs` are their allowed IPs, inside `external_cidrs` and outside the cluster CIDRs.
    /// Every node adds them; they get no pair PSK (they do not hold the cluster secret).
    pub external: Vec<NodeSpec>,
    /// The ranges external peers' allowed IPs lie in.
    pub external_cidrs: Vec<IpNet>,
    /// The snapshot this mesh was built from.
    snapshot: Snapshot,
    /// For each peer, the position of its entry in `snapshot` (to reuse unchanged entries).
    pub(crate) entry_of: Vec<u32>,
    /// For each entry of `snapshot`, the peer it became ([`NOT_A_PEER`] if none).
    pub(crate) peer_at: Vec<u32>,
}

/// Whether `name` is a DNS-1123 subdomain, as Kubernetes requires of a Node name: at most 253
/// characters, dot-separated parts of lowercase letters, digits and `-`, each starting and ending
/// with a letter or digit. Such a name is safe in a log line, a table or a Prometheus label.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            let b = part.as_bytes();
            b.first().is_some_and(alnum)
                && b.last().is_some_and(alnum)
                && b.iter().all(|c| alnum(c) || *c == b'-')
        })
}

fn check_name(name: &str) -> Result<(), RejectReason> {
    if is_dns1123_subdomain(name) {
        Ok(())
    } else {
        Err(RejectReason::BadName)
    }
}

/// Parses an endpoint as every node checks its peers' (a node publishing one it refuses is
/// refused by all its peers): an IP literal and a port, neither of them unusable. The error is
/// [`RejectReason::BadEndpoint`], naming the problem.
///
/// Refused: port 0; unspecified, loopback, multicast and broadcast addresses, also in their
/// IPv4-mapped IPv6 form (`[::ffff:127.0.0.1]`); an IPv6 link-local address without a zone id or
/// with one that cannot be an interface index (1 to 2^31-1 on Linux); a zone id on any other
/// address.
///
/// ```
/// assert!(wormhole_core::parse_endpoint("192.0.2.1:51820").is_ok());
/// let err = wormhole_core::parse_endpoint("127.0.0.1:51820").unwrap_err();
/// assert!(err.to_string().contains("loopback"));
/// ```
pub fn parse_endpoint(text: &str) -> Result<SocketAddr, RejectReason> {
    let bad = |reason| RejectReason::BadEndpoint {
        endpoint: text.to_owned(),
        reason,
    };
    let addr: SocketAddr = text
        .trim()
        .parse()
        .map_err(|_| bad("not an ip:port or [ipv6]:port (host names are not resolved)"))?;
    if addr.port() == 0 {
        return Err(bad("port 0"));
    }
    if let SocketAddr::V6(v6) = addr {
        // fe80::/10: reachable only through the interface the zone id names.
        let link_local = v6.ip().segments()[0] & 0xffc0 == 0xfe80;
        let zone = v6.scope_id();
        if link_local && zone == 0 {
            return Err(bad(
                "link-local address without a zone id (write [fe80::...%IFINDEX]:port)",
            ));
        }
        if link_local && i32::try_from(zone).is_err() {
            return Err(bad("zone id is not an interface index (1 to 2147483647)"));
        }
        if !link_local && zone != 0 {
            return Err(bad("zone id on an address that is not link-local"));
        }
    }
    // IPv4-mapped IPv6 addresses reach the IPv4 address they carry: judge that one.
    let ip = addr.ip().to_canonical();
    if ip.is_unspecified() {
        return Err(bad("unspecified address"));
    }
    if ip.is_loopback() {
        return Err(bad(
            "loopback address: a peer on another node cannot be reached there",
        ));
    }
    if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return Err(bad("multicast or broadcast address"));
    }
    Ok(addr)
}

/// The overlay: the cluster and external CIDRs (the firewall keeps both to the tunnel).
fn overlay_of(cluster_cidrs: &[IpNet], external_cidrs: &[IpNet]) -> Vec<IpNet> {
    cluster_cidrs
        .iter()
        .chain(external_cidrs)
        .copied()
        .collect()
}

/// The overlay CIDR (cluster or external) holding `address`, if any; an IPv4-mapped IPv6 address
/// is judged by the IPv4 address it carries.
pub(crate) fn overlay_holding(overlay: &[IpNet], address: IpAddr) -> Option<IpNet> {
    let address = address.to_canonical();
    overlay.iter().find(|c| c.contains(&address)).copied()
}

/// [`parse_endpoint`], also refusing an address inside the `overlay` CIDRs: WireGuard's own
/// packets to it would be routed into the tunnel, and the no-cleartext and anti-spoofing rules
/// would drop the underlay traffic of every node that tried.
fn parse_endpoint_outside(text: &str, overlay: &[IpNet]) -> Result<SocketAddr, RejectReason> {
    let endpoint = parse_endpoint(text)?;
    match overlay_holding(overlay, endpoint.ip()) {
        Some(cidr) => Err(RejectReason::EndpointInOverlay { endpoint, cidr }),
        None => Ok(endpoint),
    }
}

/// Parses a pod CIDR, refusing addresses with host bits set.
pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, RejectReason> {
    let bad = |reason: String| RejectReason::BadCidr {
        cidr: text.to_owned(),
        reason,
    };
    // std's address parser is several times faster than ipnet's, and this runs per CIDR per pass.
    let net = text
        .trim()
        .split_once('/')
        .and_then(|(addr, len)| {
            let len = if len.len() <= 3 && len.bytes().all(|b| b.is_ascii_digit()) {
                len.parse().ok()?
            } else {
                return None;
            };
            IpNet::new(addr.parse::<IpAddr>().ok()?, len).ok()
        })
        .ok_or_else(|| bad("not an address/prefix".into()))?;
    if net.trunc() != net {
        return Err(bad(format!(
            "host bits set (did you mean {}?)",
            net.trunc()
        )));
    }
    Ok(net)
}

/// Pairwise-disjoint CIDRs, each with an owner, answering "what overlaps this?" in O(log n).
#[derive(Default)]
struct CidrIndex {
    // (is_v6, first address) -> (last address, cidr, owner)
    by_start: BTreeMap<(bool, u128), (u128, IpNet, String)>,
}

fn range(net: &IpNet) -> (bool, u128, u128) {
    match net {
        IpNet::V4(n) => (
            false,
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

impl CidrIndex {
    /// An existing CIDR overlapping `net`, with its owner.
    fn overlap(&self, net: &IpNet) -> Option<(IpNet, &str)> {
        let (v6, start, end) = range(net);
        // Entries are disjoint, so only the last one starting at or before `start` can contain
        // it, and any other overlapping entry starts inside `net`.
        let before = self.by_start.range(..=(v6, start)).next_back();
        if let Some(((fam, _), (last, cidr, owner))) = before
            && *fam == v6
            && *last >= start
        {
            return Some((*cidr, owner));
        }
        self.by_start
            .range((v6, start)..=(v6, end))
            .next()
            .map(|(_, (_, cidr, owner))| (*cidr, owner.as_str()))
    }

    fn insert(&mut self, net: IpNet, owner: &str) {
        let (v6, start, end) = range(&net);
        self.by_start
            .insert((v6, start), (end, net, owner.to_owned()));
    }
}

/// `Mesh::peer_at` of an entry that is not a peer.
const NOT_A_PEER: u32 = u32::MAX;

/// The first two overlapping CIDRs of `cidrs` (in the order given), in O(n log n): sorted by
/// start, any overlap shows between neighbours.
fn own_overlap(cidrs: &[IpNet]) -> Option<(IpNet, IpNet)> {
    let mut ranges: Vec<((bool, u128, u128), usize)> = cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| (range(c), i))
        .collect();
    ranges.sort_unstable();
    ranges
        .windows(2)
        .find(|w| w[0].0.0 == w[1].0.0 && w[1].0.1 <= w[0].0.2)
        .map(|w| {
            let (a, b) = (w[0].1.min(w[1].1), w[0].1.max(w[1].1));
            (cidrs[a], cidrs[b])
        })
}

/// The CIDR of `sorted` (disjoint, sorted by start) that overlaps `net`, in O(log n): only the
/// last one starting at or before `net`'s end can (the ones before it end before it starts).
fn overlap_in_sorted(sorted: &[IpNet], net: &IpNet) -> Option<IpNet> {
    let (v6, start, end) = range(net);
    let after = sorted.partition_point(|c| {
        let (cv6, cstart, _) = range(c);
        (cv6, cstart) <= (v6, end)
    });
    let candidate = sorted[..after].last()?;
    let (cv6, _, cend) = range(candidate);
    (cv6 == v6 && cend >= start).then_some(*candidate)
}

/// Whether `outer` holds all of `inner`.
fn holds(outer: &IpNet, inner: &IpNet) -> bool {
    let ((fo, so, eo), (fi, si, ei)) = (range(outer), range(inner));
    fo == fi && so <= si && ei <= eo
}

/// What a peer entry looks like on its own, before it is compared with the others.
struct Candidate<'a> {
    position: usize,
    entry: &'a NodeEntry,
    spec: NodeSpec,
}

/// The checks that need no other entry.
fn check_alone(
    entry: &NodeEntry,
    local_key: &PublicKey,
    cluster_cidrs: &[IpNet],
    overlay: &[IpNet],
    local_cidrs: &[IpNet],
) -> Result<NodeSpec, RejectReason> {
    check_entry(
        entry,
        local_key,
        overlay,
        "pod CIDR of the same node",
        |cidr| {
            if !cluster_cidrs.iter().any(|c| holds(c, &cidr)) {
                return Err(RejectReason::OutsideCluster { cidr });
            }
            if let Some(local) = overlap_in_sorted(local_cidrs, &cidr) {
                return Err(RejectReason::OverlapsLocal { cidr, local });
            }
            Ok(())
        },
    )
}

/// The checks every entry (node or external peer) passes on its own: name, key (not ours),
/// endpoint (usable, and outside the `overlay` CIDRs), and its CIDRs, each parsed and passed to
/// `check_cidr`, none overlapping another of the entry (`what` names them in that message).
fn check_entry(
    entry: &NodeEntry,
    local_key: &PublicKey,
    overlay: &[IpNet],
    what: &str,
    mut check_cidr: impl FnMut(IpNet) -> Result<(), RejectReason>,
) -> Result<NodeSpec, RejectReason> {
    check_name(&entry.name)?;
    let public_key: PublicKey = entry
        .public_key
        .parse()
        .map_err(RejectReason::MalformedKey)?;
    if public_key == *local_key {
        return Err(RejectReason::LocalKey);
    }
    let endpoint = entry
        .endpoint
        .as_deref()
        .map(|text| parse_endpoint_outside(text, overlay))
        .transpose()?;
    if entry.pod_cidrs.len() > MAX_POD_CIDRS {
        return Err(RejectReason::TooManyCidrs {
            count: entry.pod_cidrs.len(),
            max: MAX_POD_CIDRS,
        });
    }
    let mut pod_cidrs: Vec<IpNet> = Vec::with_capacity(entry.pod_cidrs.len());
    for text in &entry.pod_cidrs {
        let cidr = parse_cidr(text)?;
        check_cidr(cidr)?;
        pod_cidrs.push(cidr);
    }
    if let Some((first, second)) = own_overlap(&pod_cidrs) {
        return Err(RejectReason::BadCidr {
            cidr: second.to_string(),
            reason: format!("overlaps {first}, another {what}"),
        });
    }
    pod_cidrs.sort();
    Ok(NodeSpec {
        name: entry.name.clone(),
        public_key,
        endpoint,
        pod_cidrs,
        persistent_keepalive: entry.persistent_keepalive.filter(|&k| k != 0),
        observed_endpoint: None,
    })
}

/// True when no two candidates share a name, a key or an overlapping CIDR: then every one is
/// accepted whatever the order, and the ranked pass can be skipped. Sorts `candidates` by name.
fn conflict_free(candidates: &mut [Candidate<'_>]) -> bool {
    candidates.sort_unstable_by(|a, b| a.spec.name.cmp(&b.spec.name));
    if candidates
        .windows(2)
        .any(|w| w[0].spec.name == w[1].spec.name)
    {
        return false;
    }
    // Keys are random: ordering by their first 16 bytes settles almost every comparison.
    let prefix =
        |k: &PublicKey| u128::from_be_bytes(k.as_bytes()[..16].try_into().expect("16 bytes"));
    let mut keys: Vec<(u128, &PublicKey)> = candidates
        .iter()
        .map(|c| (prefix(&c.spec.public_key), &c.spec.public_key))
        .collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return false;
    }
    // Per family, so that CIDRs listed in order stay sorted (and sorting them is cheap).
    let (mut v4, mut v6): (Vec<_>, Vec<_>) = candidates
        .iter()
        .flat_map(|c| c.spec.pod_cidrs.iter().map(range))
        .partition(|(v6, _, _)| !v6);
    v4.sort_unstable();
    v6.sort_unstable();
    // Sorted by start, any overlap shows between neighbours.
    let overlap = |ranges: &[(bool, u128, u128)]| ranges.windows(2).any(|w| w[1].1 <= w[0].2);
    !overlap(&v4) && !overlap(&v6)
}

impl Mesh {
    /// Validates `snapshot` for the node `local_name` whose key is `local_key`.
    ///
    /// `cluster_cidrs` (from configuration) wins over the snapshot's; one of them must be
    /// non-empty. The local node's entry must be present and its pod CIDRs valid, otherwise the
    /// whole snapshot is an error (and the caller keeps its last good mesh).
    ///
    /// **Conflict rule.** Entries are considered in this order, and each one is accepted unless
    /// it conflicts (same name, same key, overlapping pod CIDR) with one accepted before it:
    /// 1. peers accepted in `previous` whose name, key and pod CIDRs are unchanged;
    /// 2. peers accepted in `previous` (same name and key) whose pod CIDRs changed;
    /// 3. newcomers;
    ///
    /// and within each group by name, then public key text, then position. So a newcomer never
    /// evicts an established owner, and the outcome does not depend on the source's ordering.
    /// A source that knows when each entry made its claim lists them oldest first and sets
    /// [`Snapshot::oldest_first`]: within each group the earlier claim then wins, so a node
    /// publishing another node's key loses also on an agent that starts without history.
    ///
    /// An entry equal to the one that produced a peer of `previous` (under the same local node and
    /// cluster CIDRs) is not parsed again: steady-state passes cost little.
    pub fn build(
        local_name: &str,
        local_key: &PublicKey,
        cluster_cidrs: &[IpNet],
        snapshot: Snapshot,
        previous: Option<&Mesh>,
    ) -> Result<Mesh, Error> {
        let mut mesh = Self::validate(local_name, local_key, cluster_cidrs, &snapshot, previous)?;
        mesh.validate_external(&snapshot);
        mesh.use_observations(&snapshot.observed_endpoints);
        mesh.snapshot = snapshot;
        Ok(mesh)
    }

    /// Sets each peer's [`NodeSpec::observed_endpoint`]: only for a peer with no endpoint of its
    /// own, and only a usable `ip:port` outside the overlay (an observer's bad text is ignored,
    /// not held against the peer).
    fn use_observations(&mut self, observed: &BTreeMap<String, String>) {
        let overlay = overlay_of(&self.cluster_cidrs, &self.external_cidrs);
        for peer in &mut self.peers {
            peer.observed_endpoint = match (&peer.endpoint, observed.get(&peer.name)) {
                (None, Some(text)) => match parse_endpoint_outside(text, &overlay) {
                    Ok(endpoint) => Some(endpoint),
                    Err(reason) => {
                        tracing::debug!(peer = %peer.name, %reason, "observed endpoint ignored");
                        None
                    }
                },
                _ => None,
            };
        }
    }

    /// Checks the snapshot's external peers against the accepted nodes: each is accepted unless
    /// its name or key is taken (by a node, or by an external peer before it), or an allowed IP
    /// is outside the external CIDRs, overlaps the cluster CIDRs or another external peer's.
    /// "Before it": in the snapshot's order when it lists claims oldest first (so a new external
    /// peer never evicts an established one), else by name.
    fn validate_external(&mut self, snapshot: &Snapshot) {
        self.external_cidrs = snapshot.external_cidrs.clone();
        let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
        let mut names: HashMap<String, String> = std::iter::once(&self.local)
            .chain(&self.peers)
            .map(|n| (n.name.clone(), format!("node {}", n.name)))
            .collect();
        let mut keys: HashMap<PublicKey, String> = std::iter::once(&self.local)
            .chain(&self.peers)
            .map(|n| (n.public_key, n.name.clone()))
            .collect();
        let mut taken = CidrIndex::default();
        let overlay = overlay_of(&self.cluster_cidrs, &self.external_cidrs);
        let mut entries: Vec<&NodeEntry> = snapshot.external.iter().collect();
        if !snapshot.oldest_first {
            entries.sort_by(|a, b| (&a.name, &a.public_key).cmp(&(&b.name, &b.public_key)));
        }
        for entry in entries {
            let checked = if let Some(other) = names.get(&entry.name) {
                Err(RejectReason::DuplicateName {
                    other: other.clone(),
                })
            } else if self.external_cidrs.is_empty() {
                Err(RejectReason::NoExternalCidrs)
            } else {
                check_entry(
                    entry,
                    &self.local.public_key,
                    &overlay,
                    "allowed IP of the same peer",
                    |cidr| {
                        if !self.external_cidrs.iter().any(|r| holds(r, &cidr)) {
                            return Err(RejectReason::OutsideExternal { cidr });
                        }
                        if let Some(cluster) =
                            self.cluster_cidrs.iter().find(|c| overlaps(c, &cidr))
                        {
                            return Err(RejectReason::ExternalOverlapsCluster {
                                cidr,
                                cluster: *cluster,
                            });
                        }
                        match taken.overlap(&cidr) {
                            Some((other_cidr, other)) => Err(RejectReason::OverlapsPeer {
                                cidr,
                                other_cidr,
                                other: other.to_owned(),
                            }),
                            None => Ok(()),
                        }
                    },
                )
                .and_then(|spec| match keys.get(&spec.public_key) {
                    Some(other) => Err(RejectReason::DuplicateKey {
                        other: other.clone(),
                    }),
                    None => Ok(spec),
                })
            };
            match checked {
                Ok(spec) => {
                    names.insert(spec.name.clone(), entry.origin.clone());
                    keys.insert(spec.public_key, spec.name.clone());
                    for cidr in &spec.pod_cidrs {
                        taken.insert(*cidr, &spec.name);
                    }
                    self.external.push(spec);
                }
                Err(reason) => self.rejected.push(Rejection {
                    name: entry.name.clone(),
                    origin: entry.origin.clone(),
                    reason,
                    external: true,
                }),
            }
        }
        self.external.sort_by(|a, b| a.name.cmp(&b.name));
        self.rejected
            .sort_by(|a, b| (&a.name, &a.origin).cmp(&(&b.name, &b.origin)));
    }

    /// The snapshot this mesh was built from.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The peer `previous` built from an entry equal to `entry`.
    fn reused(&self, position: usize, entry: &NodeEntry) -> Option<NodeSpec> {
        // Sources usually keep their order: look at the same place first, then by name.
        let peer = match self.peer_at.get(position) {
            Some(&i) if i != NOT_A_PEER && self.snapshot.nodes[position] == *entry => i as usize,
            _ => {
                let i = self
                    .peers
                    .binary_search_by(|p| p.name.as_str().cmp(&entry.name))
                    .ok()?;
                let was = self.snapshot.nodes.get(*self.entry_of.get(i)? as usize)?;
                if was != entry {
                    return None;
                }
                i
            }
        };
        Some(self.peers[peer].clone())
    }

    fn validate(
        local_name: &str,
        local_key: &PublicKey,
        cluster_cidrs: &[IpNet],
        snapshot: &Snapshot,
        previous: Option<&Mesh>,
    ) -> Result<Mesh, Error> {
        let cluster_cidrs = if cluster_cidrs.is_empty() {
            &snapshot.cluster_cidrs[..]
        } else {
            cluster_cidrs
        };
        if cluster_cidrs.is_empty() {
            return Err(MeshError::NoClusterCidrs.into());
        }
        if !is_dns1123_subdomain(local_name) {
            return Err(MeshError::BadLocalName {
                name: local_name.to_owned(),
            }
            .into());
        }
        let mut rejected = snapshot.rejected.clone();

        // The local node: the entry with our name (and our key, if several have our name).
        let mut local_entries: Vec<&NodeEntry> = snapshot
            .nodes
            .iter()
            .filter(|e| e.name == local_name)
            .collect();
        let ours = local_entries
            .iter()
            .position(|e| e.public_key.parse::<PublicKey>().as_ref() == Ok(local_key))
            .unwrap_or(0);
        if local_entries.is_empty() {
            return Err(MeshError::LocalNodeMissing {
                name: local_name.to_owned(),
            }
            .into());
        }
        let local_entry = local_entries.remove(ours);
        if local_entry.pod_cidrs.len() > MAX_POD_CIDRS {
            return Err(MeshError::LocalNode(RejectReason::TooManyCidrs {
                count: local_entry.pod_cidrs.len(),
                max: MAX_POD_CIDRS,
            })
            .into());
        }
        let mut local_cidrs: Vec<IpNet> = Vec::new();
        for text in &local_entry.pod_cidrs {
            let cidr = parse_cidr(text).map_err(MeshError::LocalNode)?;
            if !cluster_cidrs.iter().any(|c| c.contains(&cidr)) {
                return Err(MeshError::LocalCidrOutsideCluster { cidr }.into());
            }
            local_cidrs.push(cidr);
        }
        if let Some((first, second)) = own_overlap(&local_cidrs) {
            return Err(MeshError::LocalCidrOverlap { first, second }.into());
        }
        // Sorted by start (`overlap_in_sorted` relies on it).
        local_cidrs.sort_by_key(range);
        if local_entry.public_key.parse::<PublicKey>().as_ref() != Ok(local_key) {
            rejected.push(Rejection {
                name: local_entry.name.clone(),
                origin: local_entry.origin.clone(),
                reason: RejectReason::StaleLocalKey { ours: *local_key },
                external: false,
            });
        }
        let local = NodeSpec {
            name: local_name.to_owned(),
            public_key: *local_key,
            endpoint: local_entry
                .endpoint
                .as_deref()
                .and_then(|e| parse_endpoint(e).ok()),
            pod_cidrs: local_cidrs.clone(),
            // This node's own keepalive (behind NAT): applied toward every peer.
            persistent_keepalive: local_entry.persistent_keepalive.filter(|&k| k != 0),
            observed_endpoint: None,
        };
        let finish = |accepted: Vec<(NodeSpec, usize)>, mut rejected: Vec<Rejection>| {
            rejected.sort_by(|a, b| (&a.name, &a.origin).cmp(&(&b.name, &b.origin)));
            let entry_of: Vec<u32> = accepted.iter().map(|(_, i)| *i as u32).collect();
            let mut peer_at = vec![NOT_A_PEER; snapshot.nodes.len()];
            for (peer, &position) in entry_of.iter().enumerate() {
                peer_at[position as usize] = peer as u32;
            }
            let peers = accepted.into_iter().map(|(spec, _)| spec).collect();
            let cluster_cidrs = cluster_cidrs.to_vec();
            let snapshot = Snapshot::default();
            Mesh {
                local: local.clone(),
                peers,
                cluster_cidrs,
                rejected,
                external: Vec::new(),
                external_cidrs: Vec::new(),
                snapshot,
                entry_of,
                peer_at,
            }
        };
        // Entries unchanged since `previous` keep their validated form, if nothing they were
        // checked against (our key, our CIDRs, the cluster and external CIDRs) changed either.
        let reuse = previous.filter(|p| {
            p.local.name == local_name
                && p.local.public_key == *local_key
                && p.local.pod_cidrs == local.pod_cidrs
                && p.cluster_cidrs == cluster_cidrs
                && p.external_cidrs == snapshot.external_cidrs
        });
        // No endpoint may lie in the overlay, external ranges included.
        let overlay = overlay_of(cluster_cidrs, &snapshot.external_cidrs);

        // Peers: first the checks each entry passes alone, then the ordered conflict checks.
        let mut candidates = Vec::with_capacity(snapshot.nodes.len());
        for (position, entry) in snapshot.nodes.iter().enumerate() {
            if std::ptr::eq(entry, local_entry) {
                continue;
            }
            let reject = |reason| Rejection {
                name: entry.name.clone(),
                origin: entry.origin.clone(),
                reason,
                external: false,
            };
            if entry.name == local_name {
                rejected.push(reject(RejectReason::DuplicateName {
                    other: local_entry.origin.clone(),
                }));
                continue;
            }
            let checked = match reuse.and_then(|p| p.reused(position, entry)) {
                Some(spec) => Ok(spec),
                None => check_alone(entry, local_key, cluster_cidrs, &overlay, &local_cidrs),
            };
            match checked {
                Ok(spec) => candidates.push(Candidate {
                    position,
                    entry,
                    spec,
                }),
                Err(reason) => rejected.push(reject(reason)),
            }
        }
        if conflict_free(&mut candidates) {
            // The common case: already sorted by name, nothing to decide.
            return Ok(finish(
                candidates
                    .into_iter()
                    .map(|c| (c.spec, c.position))
                    .collect(),
                rejected,
            ));
        }
        let established: HashMap<&str, &NodeSpec> = previous
            .map(|m| m.peers.iter().map(|p| (p.name.as_str(), p)).collect())
            .unwrap_or_default();
        let rank = |c: &Candidate<'_>| match established.get(c.spec.name.as_str()) {
            Some(p) if p.public_key == c.spec.public_key && p.pod_cidrs == c.spec.pod_cidrs => 0,
            Some(p) if p.public_key == c.spec.public_key => 1,
            _ => 2,
        };
        // Back to input order, then a stable sort: position breaks the remaining ties.
        candidates.sort_by_key(|c| c.position);
        let mut ranked: Vec<(u8, Candidate<'_>)> =
            candidates.into_iter().map(|c| (rank(&c), c)).collect();
        if snapshot.oldest_first {
            // The source listed the oldest claim first: keep its order within each group.
            ranked.sort_by_key(|(r, _)| *r);
        } else {
            ranked.sort_by(|(ra, a), (rb, b)| {
                (ra, &a.spec.name, &a.entry.public_key).cmp(&(
                    rb,
                    &b.spec.name,
                    &b.entry.public_key,
                ))
            });
        }

        let mut names: HashMap<&str, &str> = HashMap::new();
        let mut keys: HashMap<PublicKey, &str> = HashMap::new();
        let mut index = CidrIndex::default();
        let mut peers = Vec::with_capacity(ranked.len());
        for (
            _,
            Candidate {
                entry,
                spec,
                position,
            },
        ) in ranked
        {
            let verdict = if let Some(other) = names.get(spec.name.as_str()) {
                Err(RejectReason::DuplicateName {
                    other: (*other).to_owned(),
                })
            } else if let Some(other) = keys.get(&spec.public_key) {
                Err(RejectReason::DuplicateKey {
                    other: (*other).to_owned(),
                })
            } else if let Some((cidr, (other_cidr, other))) = spec
                .pod_cidrs
                .iter()
                .find_map(|c| index.overlap(c).map(|o| (*c, o)))
            {
                Err(RejectReason::OverlapsPeer {
                    cidr,
                    other_cidr,
                    other: other.to_owned(),
                })
            } else {
                Ok(())
            };
            match verdict {
                Ok(()) => {
                    names.insert(&entry.name, &entry.origin);
                    keys.insert(spec.public_key, &entry.name);
                    for cidr in &spec.pod_cidrs {
                        index.insert(*cidr, &spec.name);
                    }
                    peers.push((spec, position));
                }
                Err(reason) => rejected.push(Rejection {
                    name: entry.name.clone(),
                    origin: entry.origin.clone(),
                    reason,
                    external: false,
                }),
            }
        }
        peers.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name));
        Ok(finish(peers, rejected))
    }

    /// The accepted peer called `name`.
    pub fn peer(&self, name: &str) -> Option<&NodeSpec> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Checks the mesh invariants: no two nodes (local included) share a name, a key or an
    /// overlapping pod CIDR, and every pod CIDR lies in a cluster CIDR. Used by tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut index = CidrIndex::default();
        for node in std::iter::once(&self.local).chain(&self.peers) {
            if !names.insert(&node.name) {
                return Err(format!("name {} twice", node.name));
            }
            if !keys.insert(node.public_key) {
                return Err(format!("key of {} twice", node.name));
            }
            for cidr in &node.pod_cidrs {
                if let Some((other, owner)) = index.overlap(cidr) {
                    return Err(format!(
                        "{cidr} of {} overlaps {other} of {owner}",
                        node.name
                    ));
                }
                if !self.cluster_cidrs.iter().any(|c| c.contains(cidr)) {
                    return Err(format!("{cidr} of {} outside the cluster", node.name));
                }
                index.insert(*cidr, &node.name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;

    pub(crate) fn entry(name: &str, key: &PublicKey, cidrs: &[&str]) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            public_key: key.to_base64(),
            endpoint: Some("192.168.77.9:51820".into()),
            pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            persistent_keepalive: None,
            origin: format!("test {name}"),
        }
    }

    fn key() -> PublicKey {
        PrivateKey::generate().public_key()
    }

    fn cluster() -> Vec<IpNet> {
        vec![
            "10.99.0.0/16".parse().unwrap(),
            "fd99::/48".parse().unwrap(),
        ]
    }

    fn build(local_key: &PublicKey, nodes: Vec<NodeEntry>, prev: Option<&Mesh>) -> Mesh {
        let snapshot = Snapshot {
            nodes,
            ..Default::default()
        };
        Mesh::build("local", local_key, &cluster(), snapshot, prev).unwrap()
    }

    fn reasons(mesh: &Mesh) -> Vec<(&str, &'static str)> {
        mesh.rejected
            .iter()
            .map(|r| (r.name.as_str(), r.reason.kind()))
            .collect()
    }

    #[test]
    fn each_bad_peer_is_rejected_with_its_reason_and_the_rest_kept() {
        let me = key();
        let (a, b) = (key(), key());
        // Two entries named "a": without history the smaller key text wins, so make it a's.
        let mut a2 = key();
        while a2.to_base64() < a.to_base64() {
            a2 = key();
        }
        let mut bad_endpoint = entry("bad-endpoint", &key(), &["10.99.9.0/24"]);
        bad_endpoint.endpoint = Some("example.com:51820".into());
        let nodes = vec![
            entry("local", &me, &["10.99.1.0/24", "fd99:0:0:1::/64"]),
            entry("a", &a, &["10.99.2.0/24", "fd99:0:0:2::/64"]),
            entry("bad-key", &key(), &["10.99.3.0/24"]),
            entry("a", &a2, &["10.99.4.0/24"]),
            entry("dup-key", &a, &["10.99.5.0/24"]),
            entry("uses-my-key", &me, &["10.99.6.0/24"]),
            entry("outside", &key(), &["10.100.0.0/24"]),
            entry("steals-a", &key(), &["10.99.2.128/25"]),
            entry("steals-local", &key(), &["10.99.0.0/20"]),
            entry("host-bits", &key(), &["10.99.7.1/24"]),
            entry("", &key(), &["10.99.8.0/24"]),
            bad_endpoint,
            entry("b", &b, &["10.99.10.0/24"]),
        ];
        let mut nodes = nodes;
        nodes[2].public_key = "AAAA".into();
        let mesh = build(&me, nodes, None);
        let names: Vec<_> = mesh.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let mut got = reasons(&mesh);
        got.sort();
        assert_eq!(
            got,
            [
                ("", "bad_name"),
                ("a", "duplicate_name"),
                ("bad-endpoint", "bad_endpoint"),
                ("bad-key", "malformed_key"),
                ("dup-key", "duplicate_key"),
                ("host-bits", "bad_cidr"),
                ("outside", "outside_cluster"),
                ("steals-a", "overlaps_peer"),
                ("steals-local", "overlaps_local"),
                ("uses-my-key", "local_key"),
            ]
        );
        mesh.check_invariants().unwrap();
        let msg = mesh
            .rejected
            .iter()
            .find(|r| r.name == "host-bits")
            .unwrap()
            .to_string();
        assert!(msg.contains("did you mean 10.99.7.0/24"), "{msg}");
    }

    #[test]
    fn a_newcomer_never_evicts_an_established_owner() {
        let me = key();
        let (old, new) = (key(), key());
        // "aaa" sorts first, so on a first build it would win...
        let first = build(
            &me,
            vec![
                entry("local", &me, &["10.99.1.0/24"]),
                entry("zzz", &old, &["10.99.2.0/24"]),
            ],
            None,
        );
        let nodes = vec![
            entry("aaa", &new, &["10.99.2.0/24"]),
            entry("local", &me, &["10.99.1.0/24"]),
            entry("zzz", &old, &["10.99.2.0/24"]),
        ];
        // ...but "zzz" is established and keeps its CIDR.
        let second = build(&me, nodes.clone(), Some(&first));
        assert_eq!(second.peers.len(), 1);
        assert_eq!(second.peers[0].name, "zzz");
        assert_eq!(reasons(&second), [("aaa", "overlaps_peer")]);
        // Without history the rule is by name: deterministic whatever the order.
        let fresh = build(&me, nodes.iter().rev().cloned().collect(), None);
        assert_eq!(fresh.peers[0].name, "aaa");
    }

    #[test]
    fn local_node_problems() {
        let me = key();
        let snapshot = Snapshot {
            nodes: vec![entry("x", &key(), &[])],
            ..Default::default()
        };
        let err = Mesh::build("local", &me, &cluster(), snapshot.clone(), None).unwrap_err();
        assert!(
            matches!(&err, Error::Mesh(MeshError::LocalNodeMissing { name }) if name == "local"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "invalid mesh: this node (local) is not in the snapshot"
        );
        let err = Mesh::build("x", &me, &[], snapshot.clone(), None).unwrap_err();
        assert!(
            matches!(err, Error::Mesh(MeshError::NoClusterCidrs)),
            "{err:?}"
        );
        let snapshot = Snapshot {
            nodes: vec![entry("local", &me, &["10.5.0.0/24"])],
            ..Default::default()
        };
        assert!(Mesh::build("local", &me, &cluster(), snapshot, None).is_err());
        // A stale key in our own entry is reported, but our CIDRs are still used.
        let mesh = build(&me, vec![entry("local", &key(), &["10.99.1.0/24"])], None);
        assert_eq!(reasons(&mesh), [("local", "stale_local_key")]);
        assert_eq!(
            mesh.local.pod_cidrs,
            ["10.99.1.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(mesh.local.public_key, me);
    }

    #[test]
    fn names_must_be_dns_1123_subdomains() {
        let me = key();
        let long_ok = "a".repeat(253);
        let long_bad = "a".repeat(254);
        let good = [
            "a",
            "0",
            "node-1",
            "n1.example.com",
            "a-b.c-d",
            long_ok.as_str(),
        ];
        let bad = [
            "A",
            "Node",
            "node_1",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a b",
            "evil\",peer=\"x",
            "\u{1b}[2Jx",
            "n\u{e9}",
            long_bad.as_str(),
        ];
        let mut nodes = vec![entry("local", &me, &["10.99.1.0/24"])];
        for (i, name) in good.iter().enumerate() {
            nodes.push(entry(name, &key(), &[&format!("10.99.{}.0/24", i + 2)]));
        }
        for (i, name) in bad.iter().enumerate() {
            nodes.push(entry(name, &key(), &[&format!("10.99.{}.0/24", i + 100)]));
        }
        let mesh = build(&me, nodes, None);
        let mut accepted: Vec<_> = mesh.peers.iter().map(|p| p.name.as_str()).collect();
        accepted.sort();
        let mut want = good.to_vec();
        want.sort();
        assert_eq!(accepted, want);
        assert_eq!(mesh.rejected.len(), bad.len());
        assert!(mesh.rejected.iter().all(|r| r.reason.kind() == "bad_name"));
        let msg = mesh.rejected[0].reason.to_string();
        assert!(msg.contains("DNS-1123"), "{msg}");
        // This node's own name too.
        let snapshot = Snapshot {
            nodes: vec![entry("Local", &me, &["10.99.1.0/24"])],
            ..Default::default()
        };
        let err = Mesh::build("Local", &me, &cluster(), snapshot, None).unwrap_err();
        assert!(err.to_string().contains("DNS-1123"), "{err}");
    }

    #[test]
    fn rejections_print_user_text_escaped() {
        let hostile = "x\u{1b}[2J\u{202e}\r\ny\u{7}";
        let shown = [
            Rejection {
                name: hostile.into(),
                origin: hostile.into(),
                reason: RejectReason::Invalid {
                    field: hostile.into(),
                    reason: hostile.into(),
                },
                external: false,
            },
            Rejection {
                name: hostile.into(),
                origin: String::new(),
                reason: RejectReason::DuplicateName {
                    other: hostile.into(),
                },
                external: false,
            },
        ]
        .map(|r| r.to_string());
        for text in shown {
            assert!(
                !text
                    .chars()
                    .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
                "{text:?}"
            );
            assert!(text.contains("x\\u{1b}[2J\\u{202e}\\r\\ny\\u{7}"), "{text}");
        }
    }

    #[test]
    fn pod_cidrs_per_node_are_capped() {
        let me = key();
        let many = |n: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("fd99:0:0:{:x}:{:x}::/96", 0x100 + i / 65536, i % 65536))
                .collect()
        };
        let at_cap = many(MAX_POD_CIDRS);
        let over = many(40_001);
        let mut ok = entry("ok", &key(), &[]);
        ok.pod_cidrs = at_cap;
        let mut huge = entry("huge", &key(), &[]);
        huge.pod_cidrs = over;
        let started = std::time::Instant::now();
        let mesh = build(
            &me,
            vec![entry("local", &me, &["10.99.1.0/24"]), ok, huge],
            None,
        );
        assert_eq!(mesh.peers.len(), 1);
        assert_eq!(mesh.peers[0].pod_cidrs.len(), MAX_POD_CIDRS);
        assert_eq!(reasons(&mesh), [("huge", "too_many_cidrs")]);
        let msg = mesh.rejected[0].reason.to_string();
        assert!(msg.contains("40001") && msg.contains("at most"), "{msg}");
        // Refused before any parsing: this costs nothing.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn overlapping_pod_cidrs_of_one_node_are_found_wherever_they_are() {
        let me = key();
        let mut cidrs: Vec<String> = (0..500).map(|i| format!("fd99:0:0:{i:x}::/64")).collect();
        cidrs.insert(0, "10.99.2.0/24".into());
        cidrs.push("10.99.3.0/24".into());
        cidrs.push("10.99.2.128/25".into());
        let mut e = entry("a", &key(), &[]);
        e.pod_cidrs = cidrs;
        let mesh = build(&me, vec![entry("local", &me, &["10.99.1.0/24"]), e], None);
        assert_eq!(reasons(&mesh), [("a", "bad_cidr")]);
        let msg = mesh.rejected[0].to_string();
        assert!(
            msg.contains("10.99.2.0/24") && msg.contains("10.99.2.128/25"),
            "{msg}"
        );
    }

    #[test]
    fn the_earlier_claim_wins_when_the_source_lists_oldest_first() {
        let me = key();
        let stolen = key();
        // "zeta" claimed the key first; "alpha" (sorting first) copies it later.
        let nodes = vec![
            entry("local", &me, &["10.99.1.0/24"]),
            entry("zeta", &stolen, &["10.99.2.0/24"]),
            entry("alpha", &stolen, &["10.99.3.0/24"]),
        ];
        let snapshot = Snapshot {
            nodes: nodes.clone(),
            oldest_first: true,
            ..Default::default()
        };
        let mesh = Mesh::build("local", &me, &cluster(), snapshot, None).unwrap();
        assert_eq!(mesh.peers.len(), 1);
        assert_eq!(mesh.peers[0].name, "zeta");
        assert_eq!(reasons(&mesh), [("alpha", "duplicate_key")]);
        assert_eq!(
            mesh.rejected[0].reason,
            RejectReason::DuplicateKey {
                other: "zeta".into()
            }
        );
        // A source without claim order: by name, as before.
        let by_name = build(&me, nodes, None);
        assert_eq!(by_name.peers[0].name, "alpha");
    }

    #[test]
    fn endpoints() {
        assert!(parse_endpoint("192.168.1.2:51820").is_ok());
        assert!(parse_endpoint("[fd00::1]:51820").is_ok());
        assert!(parse_endpoint("169.254.1.2:51820").is_ok());
        assert!(parse_endpoint("[::ffff:10.0.0.1]:51820").is_ok());
        assert!(parse_endpoint("[fe80::1%2]:51820").is_ok());
        for bad in [
            "1.2.3.4",
            "1.2.3.4:0",
            "0.0.0.0:1",
            "[::]:1",
            "224.0.0.1:5",
            "host:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        for (bad, why) in [
            ("127.0.0.1:51820", "loopback"),
            ("127.8.9.10:51820", "loopback"),
            ("[::1]:51820", "loopback"),
            ("[::ffff:127.0.0.1]:51820", "loopback"),
            ("[::ffff:0.0.0.0]:51820", "unspecified"),
            ("[::ffff:224.0.0.1]:51820", "multicast"),
            ("[::ffff:255.255.255.255]:51820", "broadcast"),
            ("[ff02::1]:51820", "multicast"),
            ("[fe80::1%4294967295]:51820", "zone id"),
            ("[fe80::1%0]:51820", "zone id"),
            ("[fe80::1]:51820", "zone id"),
            ("[fd00::1%3]:51820", "zone id"),
        ] {
            let err = parse_endpoint(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn external_peers_are_checked_against_nodes_ranges_and_each_other() {
        let local = PrivateKey::generate().public_key();
        let node_b = PrivateKey::generate().public_key();
        let [laptop, ci, thief, copycat, twin] =
            std::array::from_fn(|_| PrivateKey::generate().public_key());
        let text = format!(
            "cluster_cidrs = [\"10.99.0.0/16\"]\nexternal_cidrs = [\"10.98.0.0/24\", \"10.99.200.0/24\"]\n\
             [[node]]\nname = \"a\"\npublic_key = \"{local}\"\npod_cidrs = [\"10.99.1.0/24\"]\n\
             [[node]]\nname = \"b\"\npublic_key = \"{node_b}\"\npod_cidrs = [\"10.99.2.0/24\"]\n\
             [[external]]\nname = \"laptop\"\npublic_key = \"{laptop}\"\nallowed_ips = [\"10.98.0.2/32\"]\n\
             [[external]]\nname = \"ci\"\npublic_key = \"{ci}\"\nallowed_ips = [\"10.98.0.0/30\"]\n\
             [[external]]\nname = \"thief\"\npublic_key = \"{thief}\"\nallowed_ips = [\"10.99.200.1/32\"]\n\
             [[external]]\nname = \"outside\"\npublic_key = \"{copycat}\"\nallowed_ips = [\"10.97.0.1/32\"]\n\
             [[external]]\nname = \"b\"\npublic_key = \"{twin}\"\nallowed_ips = [\"10.98.0.9/32\"]\n\
             [[external]]\nname = \"copy\"\npublic_key = \"{node_b}\"\nallowed_ips = [\"10.98.0.10/32\"]\n"
        );
        let snapshot = crate::parse_peers_file(&text, "peers.toml").unwrap();
        let mesh = Mesh::build("a", &local, &[], snapshot, None).unwrap();
        let accepted: Vec<&str> = mesh.external.iter().map(|p| p.name.as_str()).collect();
        // By name: "ci" (10.98.0.0/30) comes first and holds 10.98.0.2, so "laptop" overlaps it.
        assert_eq!(accepted, ["ci"]);
        let reason = |name: &str| {
            mesh.rejected
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("{name} not rejected: {:?}", mesh.rejected))
                .reason
                .kind()
        };
        assert_eq!(reason("laptop"), "overlaps_peer");
        assert_eq!(reason("thief"), "external_overlaps_cluster");
        assert_eq!(reason("outside"), "outside_external");
        assert_eq!(reason("b"), "duplicate_name");
        assert_eq!(reason("copy"), "duplicate_key");
        assert_eq!(mesh.peers.len(), 1, "the nodes are untouched");
    }

    #[test]
    fn an_endpoint_inside_the_overlay_is_refused_with_its_entry_alone() {
        let local = PrivateKey::generate().public_key();
        let [b, c, nat, laptop, phone] =
            std::array::from_fn(|_| PrivateKey::generate().public_key());
        let text = format!(
            "cluster_cidrs = [\"10.99.0.0/16\", \"fd99::/48\"]\nexternal_cidrs = [\"10.98.0.0/24\"]\n\
             [[node]]\nname = \"a\"\npublic_key = \"{local}\"\npod_cidrs = [\"10.99.1.0/24\"]\n\
             [[node]]\nname = \"b\"\npublic_key = \"{b}\"\nendpoint = \"[fd99::7]:51820\"\npod_cidrs = [\"10.99.2.0/24\"]\n\
             [[node]]\nname = \"c\"\npublic_key = \"{c}\"\nendpoint = \"10.98.0.5:51820\"\npod_cidrs = [\"10.99.3.0/24\"]\n\
             [[node]]\nname = \"nat\"\npublic_key = \"{nat}\"\npod_cidrs = [\"10.99.4.0/24\"]\n\
             [[external]]\nname = \"laptop\"\npublic_key = \"{laptop}\"\nendpoint = \"10.99.9.9:1\"\nallowed_ips = [\"10.98.0.2/32\"]\n\
             [[external]]\nname = \"phone\"\npublic_key = \"{phone}\"\nendpoint = \"192.0.2.1:1\"\nallowed_ips = [\"10.98.0.3/32\"]\n"
        );
        let mut snapshot = crate::parse_peers_file(&text, "peers.toml").unwrap();
        // An observer reports the node behind NAT at an overlay address: ignored, not held
        // against the node.
        snapshot
            .observed_endpoints
            .insert("nat".into(), "10.99.200.1:4000".into());
        let mesh = Mesh::build("a", &local, &[], snapshot, None).unwrap();
        let kinds: Vec<(&str, &str)> = mesh
            .rejected
            .iter()
            .map(|r| (r.name.as_str(), r.reason.kind()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("b", "endpoint_in_overlay"),
                ("c", "endpoint_in_overlay"),
                ("laptop", "endpoint_in_overlay"),
            ]
        );
        let peers: Vec<&str> = mesh.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["nat"]);
        assert_eq!(mesh.peers[0].observed_endpoint, None);
        assert_eq!(mesh.external.len(), 1, "phone kept");
        assert!(
            mesh.rejected[1]
                .to_string()
                .contains("endpoint 10.98.0.5:51820 lies inside the overlay CIDR 10.98.0.0/24"),
            "{}",
            mesh.rejected[1]
        );
    }

    #[test]
    fn listed_oldest_first_the_earlier_external_peer_keeps_its_addresses() {
        let local = PrivateKey::generate().public_key();
        let [old, new] = std::array::from_fn(|_| PrivateKey::generate().public_key());
        let snapshot = |oldest_first| Snapshot {
            cluster_cidrs: vec!["10.99.0.0/16".parse().unwrap()],
            nodes: vec![NodeEntry::new(
                "a",
                local,
                None,
                vec!["10.99.1.0/24".parse().unwrap()],
            )],
            // "zz-laptop" was made first; "aa-greedy" (sorting first) overlaps it later.
            external: vec![
                NodeEntry::new(
                    "zz-laptop",
                    old,
                    None,
                    vec!["10.98.0.2/32".parse().unwrap()],
                ),
                NodeEntry::new(
                    "aa-greedy",
                    new,
                    None,
                    vec!["10.98.0.0/24".parse().unwrap()],
                ),
            ],
            external_cidrs: vec!["10.98.0.0/16".parse().unwrap()],
            oldest_first,
            ..Snapshot::default()
        };
        let accepted = |oldest_first| {
            let mesh = Mesh::build("a", &local, &[], snapshot(oldest_first), None).unwrap();
            mesh.external
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(accepted(true), ["zz-laptop"]);
        assert_eq!(accepted(false), ["aa-greedy"], "by name otherwise");
    }

    #[test]
    fn without_external_cidrs_every_external_peer_is_refused_naming_the_fix() {
        let local = PrivateKey::generate().public_key();
        let laptop = PrivateKey::generate().public_key();
        let text = format!(
            "cluster_cidrs = [\"10.99.0.0/16\"]\n\
             [[node]]\nname = \"a\"\npublic_key = \"{local}\"\npod_cidrs = [\"10.99.1.0/24\"]\n\
             [[external]]\nname = \"laptop\"\npublic_key = \"{laptop}\"\nallowed_ips = [\"10.98.0.2/32\"]\n"
        );
        let snapshot = crate::parse_peers_file(&text, "peers.toml").unwrap();
        let mesh = Mesh::build("a", &local, &[], snapshot, None).unwrap();
        assert!(mesh.external.is_empty());
        assert_eq!(mesh.rejected.len(), 1, "{:?}", mesh.rejected);
        let r = &mesh.rejected[0];
        assert_eq!(r.reason.kind(), "no_external_cidrs");
        assert!(r.to_string().contains("--external-cidr"), "{r}");
    }
}
