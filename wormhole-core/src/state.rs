//! The host as data: one [`HostState`] type describes both what we want (built from a [`Mesh`]
//! by [`HostState::desired`]) and what the backends observed. [`plan`](crate::plan()) diffs two
//! of them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use ipnet::IpNet;

use crate::Error;
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::mesh::Mesh;

/// A network interface name as Linux accepts it and as it can be pasted into a firewall rule or
/// a CNI file: 1 to 15 bytes, not `.` or `..`, and none of `/`, `:`, whitespace, quotes,
/// backslashes, glob characters (`*?[]`) or control characters. The only way to make one is
/// [`str::parse`], so everything that renders names (the nftables ruleset among them) gets only
/// validated ones.
///
/// ```
/// use wormhole_core::InterfaceName;
/// assert_eq!("wormhole0".parse::<InterfaceName>().unwrap().as_str(), "wormhole0");
/// assert!("s*".parse::<InterfaceName>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for InterfaceName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > 15 {
            Some("it is longer than 15 bytes")
        } else if name == "." || name == ".." {
            Some("it is . or ..")
        } else if name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/:\"'\\*?[]".contains(c))
        {
            Some("it contains one of / : whitespace quotes \\ * ? [ ] or a control character")
        } else {
            None
        };
        match reason {
            None => Ok(InterfaceName(name.to_owned())),
            Some(reason) => Err(Error::InterfaceName {
                name: name.to_owned(),
                reason,
            }),
        }
    }
}

/// One WireGuard peer's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerConfig {
    /// Endpoint. In a desired state `None` means "leave whatever WireGuard learned".
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs, sorted.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive in seconds; `None` is off.
    pub persistent_keepalive: Option<u16>,
    /// Pre-shared key.
    pub preshared_key: Option<PresharedKey>,
}

/// Counters WireGuard keeps for a peer (observed only; never planned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// When the latest handshake completed.
    pub latest_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// A WireGuard device's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    /// The device's private key.
    pub private_key: Option<PrivateKey>,
    /// UDP listen port.
    pub listen_port: Option<u16>,
    /// Peers by public key.
    pub peers: BTreeMap<PublicKey, PeerConfig>,
}

/// What a [`WireGuardDevice`](crate::WireGuardDevice) reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedDevice {
    /// Its configuration.
    pub config: DeviceState,
    /// Per-peer counters.
    pub stats: BTreeMap<PublicKey, PeerStats>,
}

/// The WireGuard interface as a network link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Administratively up.
    pub up: bool,
    /// MTU, if known.
    pub mtu: Option<u32>,
    /// Addresses on the interface.
    pub addresses: BTreeSet<IpNet>,
}

/// What the firewall must enforce; a [`Firewall`](crate::Firewall) renders it as rules.
///
/// It depends on the overlay and this node only, not on the peers: peers come and go without
/// a firewall change (remote pod sources are "cluster CIDRs that are not ours").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallPolicy {
    /// The WireGuard interface: the only way overlay traffic may leave the host.
    pub interface: InterfaceName,
    /// The pod bridge.
    pub bridge: InterfaceName,
    /// The overlay CIDRs.
    pub cluster_cidrs: Vec<IpNet>,
    /// This node's pod CIDRs.
    pub local_pod_cidrs: Vec<IpNet>,
    /// The WireGuard MTU, for TCP MSS clamping.
    pub mtu: u32,
}

/// The network configuration of the host that Wormhole manages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostState {
    /// The WireGuard device; `None` when the interface does not exist.
    pub device: Option<DeviceState>,
    /// The WireGuard interface's link settings.
    pub link: LinkState,
    /// Routes through the WireGuard interface that Wormhole owns.
    pub routes: BTreeSet<IpNet>,
    /// The firewall policy in force, `None` when absent or tampered with.
    pub firewall: Option<FirewallPolicy>,
}

/// The host-level settings the desired state needs besides the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// WireGuard interface name.
    pub interface: InterfaceName,
    /// Pod bridge name.
    pub bridge: InterfaceName,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// WireGuard MTU (the pods use the same one).
    pub mtu: u32,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            interface: InterfaceName("wormhole0".into()),
            bridge: InterfaceName("wormhole-br0".into()),
            listen_port: 51820,
            mtu: 1420,
        }
    }
}

/// The address this node uses on the WireGuard interface inside `cidr`: its first host address,
/// as a host route (`/32` or `/128`). The CNI bridge gets the same address as the pods' gateway.
pub fn overlay_address(cidr: &IpNet) -> IpNet {
    let first: IpAddr = match cidr {
        IpNet::V4(n) => (u32::from(n.network()).saturating_add(1))
            .to_be_bytes()
            .into(),
        IpNet::V6(n) => (u128::from(n.network()).saturating_add(1))
            .to_be_bytes()
            .into(),
    };
    IpNet::from(first)
}

impl HostState {
    /// What the host should look like for `mesh`.
    ///
    /// With a cluster secret, each peer gets the pair key derived from it (see
    /// [`PresharedKey::derive_pair`]).
    ///
    /// Persistent keepalive: a peer's own setting, and this node's toward every peer (a node
    /// that declares one is typically behind NAT, and only its own keepalives keep its mapping
    /// open so that peers can reach it); the shorter of the two when both are set.
    pub fn desired(
        mesh: &Mesh,
        private_key: &PrivateKey,
        cluster_secret: Option<&PresharedKey>,
        host: &HostSettings,
    ) -> HostState {
        let local_key = private_key.public_key();
        let deriver = cluster_secret.map(PresharedKey::pair_deriver);
        let mut peers: BTreeMap<PublicKey, PeerConfig> = mesh
            .peers
            .iter()
            .map(|p| {
                let config = PeerConfig {
                    endpoint: p.endpoint,
                    allowed_ips: p.pod_cidrs.clone(),
                    persistent_keepalive: match (
                        p.persistent_keepalive,
                        mesh.local.persistent_keepalive,
                    ) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                    preshared_key: deriver
                        .as_ref()
                        .map(|d| d.derive(&local_key, &p.public_key)),
                };
                (p.public_key, config)
            })
            .collect();
        // External peers: their allowed IPs, no pair PSK (they do not hold the cluster secret).
        peers.extend(mesh.external.iter().map(|p| {
            let config = PeerConfig {
                endpoint: p.endpoint,
                allowed_ips: p.pod_cidrs.clone(),
                persistent_keepalive: p.persistent_keepalive.or(mesh.local.persistent_keepalive),
                preshared_key: None,
            };
            (p.public_key, config)
        }));
        let routes: BTreeSet<IpNet> = mesh
            .peers
            .iter()
            .chain(&mesh.external)
            .flat_map(|p| p.pod_cidrs.iter().copied())
            .collect();
        HostState {
            device: Some(DeviceState {
                private_key: Some(private_key.clone()),
                listen_port: Some(host.listen_port),
                peers,
            }),
            link: LinkState {
                up: true,
                mtu: Some(host.mtu),
                addresses: mesh.local.pod_cidrs.iter().map(overlay_address).collect(),
            },
            firewall: Some(FirewallPolicy {
                interface: host.interface.clone(),
                bridge: host.bridge.clone(),
                // The overlay as the firewall sees it: external peers' ranges too (never in
                // cleartext, never masqueraded, never from the underlay or a pod).
                cluster_cidrs: mesh
                    .cluster_cidrs
                    .iter()
                    .chain(&mesh.external_cidrs)
                    .copied()
                    .collect(),
                local_pod_cidrs: mesh.local.pod_cidrs.clone(),
                mtu: host.mtu,
            }),
            routes,
        }
    }

    /// Points each peer that has no endpoint of its own at the one other nodes observe for it
    /// ([`NodeSpec::observed_endpoint`](crate::NodeSpec::observed_endpoint), a node behind NAT)
    /// where the device (`observed`) knows no working one: none at all, or another one without
    /// a fresh handshake (`fresh` says whether a peer had one in the last 3 minutes). An
    /// endpoint WireGuard learned from the peer's own packets, and that works, is kept.
    pub fn use_observed_endpoints(
        &mut self,
        mesh: &Mesh,
        observed: &HostState,
        fresh: impl Fn(&PublicKey) -> bool,
    ) {
        let Some(device) = self.device.as_mut() else {
            return;
        };
        for peer in &mesh.peers {
            let Some(seen) = peer.observed_endpoint.filter(|_| peer.endpoint.is_none()) else {
                continue;
            };
            let Some(config) = device.peers.get_mut(&peer.public_key) else {
                continue;
            };
            let current = observed
                .device
                .as_ref()
                .and_then(|d| d.peers.get(&peer.public_key))
                .and_then(|c| c.endpoint);
            let working = current.is_some_and(|c| c != seen && fresh(&peer.public_key));
            if !working {
                config.endpoint = Some(seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_like_linux_and_nft_need() {
        for good in [
            "wormhole0",
            "wh-n1",
            "cni0",
            "eth0.100",
            "br_pods",
            "a",
            "123456789012345",
        ] {
            assert_eq!(good.parse::<InterfaceName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\"b",
            "a'b",
            "a\\b",
            "s*",
            "a?",
            "a[0]",
            "e\u{1b}[2J",
            "é-very-long-name",
        ] {
            let err = bad.parse::<InterfaceName>().unwrap_err();
            assert!(
                err.to_string().starts_with("invalid interface name"),
                "{err}"
            );
        }
    }

    #[test]
    fn overlay_addresses() {
        let v4: IpNet = "10.99.1.0/24".parse().unwrap();
        let v6: IpNet = "fd99:0:1::/64".parse().unwrap();
        assert_eq!(overlay_address(&v4).to_string(), "10.99.1.1/32");
        assert_eq!(overlay_address(&v6).to_string(), "fd99:0:1::1/128");
    }
}
