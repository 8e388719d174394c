//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the proptests that run the same
//! checks on stable. Each one panics when an invariant breaks. Not a public API.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::mesh::Mesh;
use crate::plan::{DeviceChange, plan as make_plan};
use crate::state::{DeviceState, FirewallPolicy, HostSettings, HostState, LinkState, PeerConfig};

/// Key parsing never panics and round-trips what it accepts.
pub fn parse_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = text.parse::<PublicKey>() {
        assert_eq!(key.to_base64().parse::<PublicKey>(), Ok(key));
    }
    if let Ok(key) = text.parse::<PrivateKey>() {
        assert_eq!(
            key.to_base64_secret().parse::<PrivateKey>().as_ref(),
            Ok(&key)
        );
    }
    let _ = text.parse::<PresharedKey>();
}

/// Peers-file parsing never panics, and whatever validation accepts satisfies the mesh
/// invariants (no shared name, key or overlapping CIDR; nothing outside the cluster), also when
/// built again on top of itself.
pub fn parse_peers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(snapshot) = crate::file_source::parse_peers_file(text, "fuzz") else {
        return;
    };
    check_mesh(&snapshot);
}

/// Builds a mesh from `snapshot` for each of its first nodes (and once more on top of the
/// result) and checks the invariants.
pub fn check_mesh(snapshot: &crate::Snapshot) {
    let cluster: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
    for local in snapshot.nodes.iter().take(2) {
        let key = local
            .public_key
            .parse()
            .unwrap_or(PublicKey::from_bytes([9; 32]));
        let Ok(first) = Mesh::build(&local.name, &key, &cluster, snapshot.clone(), None) else {
            continue;
        };
        first.check_invariants().unwrap();
        let again =
            Mesh::build(&local.name, &key, &cluster, snapshot.clone(), Some(&first)).unwrap();
        again.check_invariants().unwrap();
        // Building on top of itself changes nothing: the rule is stable.
        assert_eq!(first.peers, again.peers);
        assert_eq!(
            first.peers.len() + first.rejected.len(),
            snapshot.nodes.len() - 1
                + snapshot.rejected.len()
                + usize::from(
                    first
                        .rejected
                        .iter()
                        .any(|r| r.reason.kind() == "stale_local_key")
                )
        );
        // Reusing unchanged entries gives exactly what validating them again gives, also when
        // the snapshot is reordered and an entry changed.
        for rotate in [0, 1] {
            let mut changed = snapshot.clone();
            changed.nodes.rotate_left(rotate);
            if let Some(node) = changed.nodes.iter_mut().find(|n| n.name != local.name) {
                node.pod_cidrs.push("10.1.0.0/16".into());
            }
            let mut no_reuse = first.clone();
            no_reuse.entry_of.clear();
            no_reuse.peer_at.clear();
            let reused = Mesh::build(&local.name, &key, &cluster, changed.clone(), Some(&first));
            let fresh = Mesh::build(&local.name, &key, &cluster, changed, Some(&no_reuse));
            assert_eq!(
                reused.map(|m| (m.peers, m.rejected)).ok(),
                fresh.map(|m| (m.peers, m.rejected)).ok()
            );
        }
    }
}

/// Two host states decoded from bytes satisfy every planner invariant (see [`check_plan`]).
pub fn plan(data: &[u8]) {
    let mut bytes = Bytes(data);
    let desired = bytes.state();
    let observed = bytes.state();
    check_plan(&desired, &observed);
}

/// A reader that turns arbitrary bytes into small host states over a few keys and CIDRs, so that
/// states collide often.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn cidr(&mut self) -> IpNet {
        let n = self.byte() % 4;
        if self.flag() {
            format!("fd99:0:{n}::/64").parse().unwrap()
        } else {
            format!("10.99.{n}.0/24").parse().unwrap()
        }
    }

    fn peer(&mut self) -> PeerConfig {
        let endpoint = self
            .flag()
            .then(|| SocketAddr::from(([192, 168, 0, self.byte() % 3 + 1], 51820)));
        let allowed_ips: BTreeSet<IpNet> = (0..self.byte() % 3).map(|_| self.cidr()).collect();
        PeerConfig {
            endpoint,
            allowed_ips: allowed_ips.into_iter().collect(),
            persistent_keepalive: self.flag().then(|| u16::from(self.byte() % 3 + 1)),
            preshared_key: self
                .flag()
                .then(|| PresharedKey::from_bytes([self.byte() % 2; 32])),
        }
    }

    /// A host state.
    pub fn state(&mut self) -> HostState {
        let device = self.flag().then(|| DeviceState {
            private_key: self
                .flag()
                .then(|| PrivateKey::from_bytes([self.byte() % 2 + 1; 32])),
            listen_port: self.flag().then(|| 51820 + u16::from(self.byte() % 2)),
            peers: (0..self.byte() % 6)
                .map(|_| (PublicKey::from_bytes([self.byte() % 8; 32]), self.peer()))
                .collect(),
        });
        HostState {
            device,
            link: LinkState {
                up: self.flag(),
                mtu: self.flag().then(|| 1400 + u32::from(self.byte() % 3)),
                addresses: (0..self.byte() % 3).map(|_| self.cidr()).collect(),
            },
            routes: (0..self.byte() % 4).map(|_| self.cidr()).collect(),
            firewall: self.flag().then(|| FirewallPolicy {
                interface: HostSettings::default().interface,
                bridge: HostSettings::default().bridge,
                cluster_cidrs: Vec::new(),
                local_pod_cidrs: Vec::new(),
                mtu: 1400 + u32::from(self.byte() % 2),
            }),
        }
    }
}

/// `observed` with `desired`'s "don't care" fields filled from `observed`: what applying a plan
/// must produce.
fn expected(desired: &HostState, observed: &HostState) -> HostState {
    let mut want = desired.clone();
    match (&mut want.device, &observed.device) {
        (None, have) => want.device = have.clone(),
        (Some(want), have) => {
            let empty = DeviceState::default();
            let have = have.as_ref().unwrap_or(&empty);
            if want.private_key.is_none() {
                want.private_key = have.private_key.clone();
            }
            if want.listen_port.is_none() {
                want.listen_port = have.listen_port;
            }
            for (key, peer) in &mut want.peers {
                if peer.endpoint.is_none() {
                    peer.endpoint = have.peers.get(key).and_then(|p| p.endpoint);
                }
            }
        }
    }
    want.link.up |= observed.link.up;
    want.link.mtu = want.link.mtu.or(observed.link.mtu);
    if want.firewall.is_none() {
        want.firewall = observed.firewall.clone();
    }
    want
}

/// The planner invariants:
/// - `plan(x, x)` is empty;
/// - applying `plan(d, o)` to `o` yields `d` (where `d` cares), and planning again is empty;
/// - a peer already as desired is never touched (so no plan "replaces all peers"), no peer is
///   both removed and added, and an update lists only fields that differ.
pub fn check_plan(desired: &HostState, observed: &HostState) {
    assert!(
        make_plan(desired, desired).is_empty(),
        "plan(d, d) not empty"
    );
    assert!(
        make_plan(observed, observed).is_empty(),
        "plan(o, o) not empty"
    );
    let plan = make_plan(desired, observed);
    let mut applied = observed.clone();
    plan.apply_to(&mut applied);
    assert_eq!(
        applied,
        expected(desired, observed),
        "applying the plan did not yield the desired state\n{plan}"
    );
    assert!(
        make_plan(desired, &applied).is_empty(),
        "not converged after one plan"
    );

    let (Some(want), have) = (&desired.device, &observed.device) else {
        assert!(plan.device.changes.is_empty() && !plan.device.create);
        return;
    };
    let empty = DeviceState::default();
    let have = have.as_ref().unwrap_or(&empty);
    let mut touched = BTreeSet::new();
    for change in &plan.device.changes {
        let key = match change {
            DeviceChange::RemovePeer(k) => {
                assert!(!want.peers.contains_key(k), "removed a desired peer");
                k
            }
            DeviceChange::AddPeer(k, _) => {
                assert!(!have.peers.contains_key(k), "re-added an existing peer");
                k
            }
            DeviceChange::UpdatePeer(k, fields) => {
                assert!(!fields.is_empty(), "empty update");
                k
            }
            DeviceChange::SetPrivateKey(_) | DeviceChange::SetListenPort(_) => continue,
        };
        assert!(touched.insert(*key), "peer touched twice");
    }
    for (key, peer) in &want.peers {
        let mut as_wanted = peer.clone();
        if let Some(have_peer) = have.peers.get(key) {
            if as_wanted.endpoint.is_none() {
                as_wanted.endpoint = have_peer.endpoint;
            }
            if *have_peer == as_wanted {
                assert!(
                    !touched.contains(key),
                    "touched a peer that was already as desired"
                );
            }
        }
    }
}
