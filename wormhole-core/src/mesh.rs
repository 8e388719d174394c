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

use crate::Error;
use crate::keys::{KeyError, PublicKey};

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

/// A full desired picture from a [`PeerSource`](crate::PeerSource).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The overlay (cluster) CIDRs, if the source knows them; configuration may override them.
    pub cluster_cidrs: Vec<IpNet>,
    /// Every node, the local one included.
    pub nodes: Vec<NodeEntry>,
    /// Entries the source itself could not read (wrong field types, unknown fields, ...).
    pub rejected: Vec<Rejection>,
}

/// A validated node.
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
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "(no name)"
        } else {
            &self.name
        };
        if self.origin.is_empty() {
            write!(f, "{name}: {}", self.reason)
        } else {
            write!(f, "{name} ({}): {}", self.origin, self.reason)
        }
    }
}

/// Why a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// A field has the wrong type, is missing or unknown (reported by the source).
    #[error("field {field}: {reason}")]
    Invalid {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The name is empty, too long or holds whitespace or control characters.
    #[error("invalid name: must be 1-253 printable characters without whitespace")]
    BadName,
    /// The public key does not parse.
    #[error("malformed public key: {0}")]
    MalformedKey(KeyError),
    /// Another entry has this name.
    #[error("duplicate name: already used by the entry at {other}")]
    DuplicateName {
        /// The origin of the entry that kept the name.
        other: String,
    },
    /// Another node has this public key.
    #[error("duplicate public key: already used by node {other}")]
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
    /// A pod CIDR does not parse or is not a network address.
    #[error("bad pod CIDR {cidr:?}: {reason}")]
    BadCidr {
        /// The CIDR as given.
        cidr: String,
        /// What is wrong with it.
        reason: String,
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
            RejectReason::BadCidr { .. } => "bad_cidr",
            RejectReason::OutsideCluster { .. } => "outside_cluster",
            RejectReason::OverlapsPeer { .. } => "overlaps_peer",
            RejectReason::OverlapsLocal { .. } => "overlaps_local",
            RejectReason::StaleLocalKey { .. } => "stale_local_key",
        }
    }
}

/// The validated mesh: this node, its accepted peers and the refused entries.
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
    /// The snapshot this mesh was built from.
    snapshot: Snapshot,
    /// For each peer, the position of its entry in `snapshot` (to reuse unchanged entries).
    pub(crate) entry_of: Vec<u32>,
    /// For each entry of `snapshot`, the peer it became ([`NOT_A_PEER`] if none).
    pub(crate) peer_at: Vec<u32>,
}

fn check_name(name: &str) -> Result<(), RejectReason> {
    let printable = if name.is_ascii() {
        name.bytes().all(|b| b.is_ascii_graphic())
    } else {
        name.chars().all(|c| !c.is_whitespace() && !c.is_control())
    };
    let ok = !name.is_empty() && name.len() <= 253 && printable;
    if ok {
        Ok(())
    } else {
        Err(RejectReason::BadName)
    }
}

/// Parses an endpoint: an IP literal and a port, neither of them unusable.
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
    let ip = addr.ip();
    if ip.is_unspecified() {
        return Err(bad("unspecified address"));
    }
    if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return Err(bad("multicast or broadcast address"));
    }
    Ok(addr)
}

/// Parses a pod CIDR, refusing addresses with host bits set.
pub fn parse_cidr(text: &str) -> Result<IpNet, RejectReason> {
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
        if let Some(((fam, _), (last, cidr, owner))) = before {
            if *fam == v6 && *last >= start {
                return Some((*cidr, owner));
            }
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

/// Whether two CIDRs share any address (for prefixes: one contains the other).
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    let ((fa, sa, ea), (fb, sb, eb)) = (range(a), range(b));
    fa == fb && sa <= eb && sb <= ea
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
    local_cidrs: &[IpNet],
) -> Result<NodeSpec, RejectReason> {
    check_name(&entry.name)?;
    let public_key: PublicKey = entry
        .public_key
        .parse()
        .map_err(RejectReason::MalformedKey)?;
    if public_key == *local_key {
        return Err(RejectReason::LocalKey);
    }
    let endpoint = entry.endpoint.as_deref().map(parse_endpoint).transpose()?;
    let mut pod_cidrs: Vec<IpNet> = Vec::with_capacity(entry.pod_cidrs.len());
    for text in &entry.pod_cidrs {
        let cidr = parse_cidr(text)?;
        if !cluster_cidrs.iter().any(|c| holds(c, &cidr)) {
            return Err(RejectReason::OutsideCluster { cidr });
        }
        if let Some(local) = local_cidrs.iter().find(|l| overlaps(l, &cidr)) {
            return Err(RejectReason::OverlapsLocal {
                cidr,
                local: *local,
            });
        }
        if pod_cidrs.iter().any(|own| overlaps(own, &cidr)) {
            return Err(RejectReason::BadCidr {
                cidr: text.clone(),
                reason: "overlaps another pod CIDR of the same node".into(),
            });
        }
        pod_cidrs.push(cidr);
    }
    pod_cidrs.sort();
    Ok(NodeSpec {
        name: entry.name.clone(),
        public_key,
        endpoint,
        pod_cidrs,
        persistent_keepalive: entry.persistent_keepalive.filter(|&k| k != 0),
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
        mesh.snapshot = snapshot;
        Ok(mesh)
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
            return Err(Error::Mesh(
                "no cluster CIDRs: set cluster_cidrs in the peers file or --cluster-cidr".into(),
            ));
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
            return Err(Error::Mesh(format!(
                "this node ({local_name}) is not in the snapshot"
            )));
        }
        let local_entry = local_entries.remove(ours);
        let mut local_cidrs: Vec<IpNet> = Vec::new();
        for text in &local_entry.pod_cidrs {
            let cidr = parse_cidr(text).map_err(|r| Error::Mesh(format!("this node: {r}")))?;
            if !cluster_cidrs.iter().any(|c| c.contains(&cidr)) {
                return Err(Error::Mesh(format!(
                    "this node's pod CIDR {cidr} is outside the cluster CIDRs"
                )));
            }
            if local_cidrs.iter().any(|l| overlaps(l, &cidr)) {
                return Err(Error::Mesh(format!(
                    "this node's pod CIDR {cidr} overlaps another of its own"
                )));
            }
            local_cidrs.push(cidr);
        }
        local_cidrs.sort();
        if local_entry.public_key.parse::<PublicKey>().as_ref() != Ok(local_key) {
            rejected.push(Rejection {
                name: local_entry.name.clone(),
                origin: local_entry.origin.clone(),
                reason: RejectReason::StaleLocalKey { ours: *local_key },
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
            persistent_keepalive: None,
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
                snapshot,
                entry_of,
                peer_at,
            }
        };
        // Entries unchanged since `previous` keep their validated form, if nothing they were
        // checked against (our key, our CIDRs, the cluster CIDRs) changed either.
        let reuse = previous.filter(|p| {
            p.local.name == local_name
                && p.local.public_key == *local_key
                && p.local.pod_cidrs == local.pod_cidrs
                && p.cluster_cidrs == cluster_cidrs
        });

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
            };
            if entry.name == local_name {
                rejected.push(reject(RejectReason::DuplicateName {
                    other: local_entry.origin.clone(),
                }));
                continue;
            }
            let checked = match reuse.and_then(|p| p.reused(position, entry)) {
                Some(spec) => Ok(spec),
                None => check_alone(entry, local_key, cluster_cidrs, &local_cidrs),
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
        ranked.sort_by(|(ra, a), (rb, b)| {
            (ra, &a.spec.name, &a.entry.public_key).cmp(&(rb, &b.spec.name, &b.entry.public_key))
        });

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
        assert!(err.to_string().contains("not in the snapshot"), "{err}");
        let err = Mesh::build("x", &me, &[], snapshot.clone(), None).unwrap_err();
        assert!(err.to_string().contains("no cluster CIDRs"), "{err}");
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
    fn endpoints() {
        assert!(parse_endpoint("192.168.1.2:51820").is_ok());
        assert!(parse_endpoint("[fd00::1]:51820").is_ok());
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
    }
}
