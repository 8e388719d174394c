//! The planner: [`plan`]`(desired, observed)` is the minimal list of changes that turns
//! `observed` into `desired`. It is a pure function: no I/O, no clock.
//!
//! Minimal means: a peer is added, removed, or has only its differing fields updated; nothing
//! replaces all peers (that would reset every handshake); `plan(x, x)` is empty.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::mesh::Mesh;
use crate::state::{DeviceState, FirewallPolicy, HostState, LinkState, PeerConfig};

/// One field of a peer that changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerField {
    /// Set the endpoint.
    Endpoint(SocketAddr),
    /// Replace the allowed IPs with these.
    AllowedIps(Vec<IpNet>),
    /// Set (or turn off) the persistent keepalive.
    Keepalive(Option<u16>),
    /// Set (or remove) the pre-shared key.
    PresharedKey(Option<PresharedKey>),
}

/// One change to the WireGuard device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// Set the device's private key.
    SetPrivateKey(PrivateKey),
    /// Set the UDP listen port.
    SetListenPort(u16),
    /// Remove a peer.
    RemovePeer(PublicKey),
    /// Change some fields of an existing peer; the others are left as they are.
    UpdatePeer(PublicKey, Vec<PeerField>),
    /// Add a peer.
    AddPeer(PublicKey, PeerConfig),
}

/// Changes to the WireGuard device, in order: create, then removals, updates, additions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicePlan {
    /// The interface does not exist and must be created first.
    pub create: bool,
    /// The changes.
    pub changes: Vec<DeviceChange>,
}

/// One change to the WireGuard interface's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// Bring the link up.
    SetUp,
    /// Set the MTU.
    SetMtu(u32),
    /// Add an address.
    AddAddress(IpNet),
    /// Remove an address.
    RemoveAddress(IpNet),
}

/// One change to the routes through the WireGuard interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Route this CIDR through the interface.
    Add(IpNet),
    /// Remove our route to this CIDR.
    Remove(IpNet),
}

/// Everything to change on the host, per backend. Apply in field order: firewall first, so the
/// no-cleartext rules are in place before any route exists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Replace the firewall ruleset with this policy.
    pub firewall: Option<FirewallPolicy>,
    /// WireGuard device changes.
    pub device: DevicePlan,
    /// Link changes.
    pub link: Vec<LinkChange>,
    /// Route changes.
    pub routes: Vec<RouteChange>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of changes (device creation and a firewall replacement count as one each).
    pub fn len(&self) -> usize {
        usize::from(self.firewall.is_some())
            + usize::from(self.device.create)
            + self.device.changes.len()
            + self.link.len()
            + self.routes.len()
    }

    /// Applies the plan to a state, as a perfect backend would. In-memory backends use this.
    pub fn apply_to(&self, state: &mut HostState) {
        if let Some(policy) = &self.firewall {
            state.firewall = Some(policy.clone());
        }
        apply_device(&mut state.device, &self.device);
        apply_link(&mut state.link, &self.link);
        apply_routes(&mut state.routes, &self.routes);
    }
}

/// Applies device changes to an in-memory device (`None`: absent).
pub fn apply_device(device: &mut Option<DeviceState>, plan: &DevicePlan) {
    if plan.create && device.is_none() {
        *device = Some(DeviceState::default());
    }
    let Some(device) = device else { return };
    for change in &plan.changes {
        match change {
            DeviceChange::SetPrivateKey(key) => device.private_key = Some(key.clone()),
            DeviceChange::SetListenPort(port) => device.listen_port = Some(*port),
            DeviceChange::RemovePeer(key) => {
                device.peers.remove(key);
            }
            DeviceChange::AddPeer(key, config) => {
                device.peers.insert(*key, config.clone());
            }
            DeviceChange::UpdatePeer(key, fields) => {
                let peer = device.peers.entry(*key).or_default();
                for field in fields {
                    match field {
                        PeerField::Endpoint(e) => peer.endpoint = Some(*e),
                        PeerField::AllowedIps(ips) => peer.allowed_ips = ips.clone(),
                        PeerField::Keepalive(k) => peer.persistent_keepalive = *k,
                        PeerField::PresharedKey(k) => peer.preshared_key = k.clone(),
                    }
                }
            }
        }
    }
}

/// Applies link changes to an in-memory link.
pub(crate) fn apply_link(link: &mut LinkState, changes: &[LinkChange]) {
    for change in changes {
        match change {
            LinkChange::SetUp => link.up = true,
            LinkChange::SetMtu(mtu) => link.mtu = Some(*mtu),
            LinkChange::AddAddress(a) => {
                link.addresses.insert(*a);
            }
            LinkChange::RemoveAddress(a) => {
                link.addresses.remove(a);
            }
        }
    }
}

/// Applies route changes to an in-memory routing table.
pub(crate) fn apply_routes(routes: &mut BTreeSet<IpNet>, changes: &[RouteChange]) {
    for change in changes {
        match change {
            RouteChange::Add(r) => {
                routes.insert(*r);
            }
            RouteChange::Remove(r) => {
                routes.remove(r);
            }
        }
    }
}

/// The fields of `observed` that differ from `desired`. A desired endpoint of `None` accepts
/// any observed endpoint (WireGuard learns it when the peer reaches us).
fn peer_fields(desired: &PeerConfig, observed: &PeerConfig) -> Vec<PeerField> {
    let mut fields = Vec::new();
    if let Some(endpoint) = desired.endpoint
        && observed.endpoint != Some(endpoint)
    {
        fields.push(PeerField::Endpoint(endpoint));
    }
    if desired.allowed_ips != observed.allowed_ips {
        fields.push(PeerField::AllowedIps(desired.allowed_ips.clone()));
    }
    if desired.persistent_keepalive != observed.persistent_keepalive {
        fields.push(PeerField::Keepalive(desired.persistent_keepalive));
    }
    if desired.preshared_key != observed.preshared_key {
        fields.push(PeerField::PresharedKey(desired.preshared_key.clone()));
    }
    fields
}

fn plan_device(desired: Option<&DeviceState>, observed: Option<&DeviceState>) -> DevicePlan {
    let Some(desired) = desired else {
        return DevicePlan::default();
    };
    let empty = DeviceState::default();
    let create = observed.is_none();
    let observed = observed.unwrap_or(&empty);
    let mut changes = Vec::new();
    if let Some(key) = &desired.private_key
        && observed.private_key.as_ref() != Some(key)
    {
        changes.push(DeviceChange::SetPrivateKey(key.clone()));
    }
    if let Some(port) = desired.listen_port
        && observed.listen_port != Some(port)
    {
        changes.push(DeviceChange::SetListenPort(port));
    }
    // Both maps are sorted by key: walk them side by side, no lookups.
    let mut additions = Vec::new();
    let mut have = observed.peers.iter().peekable();
    for (key, want) in &desired.peers {
        while let Some((old, _)) = have.next_if(|(old, _)| *old < key) {
            changes.push(DeviceChange::RemovePeer(*old));
        }
        match have.next_if(|(old, _)| *old == key) {
            Some((_, have)) => {
                let fields = peer_fields(want, have);
                if !fields.is_empty() {
                    changes.push(DeviceChange::UpdatePeer(*key, fields));
                }
            }
            None => additions.push(DeviceChange::AddPeer(*key, want.clone())),
        }
    }
    changes.extend(have.map(|(old, _)| DeviceChange::RemovePeer(*old)));
    changes.extend(additions);
    DevicePlan { create, changes }
}

fn plan_link(desired: &LinkState, observed: &LinkState) -> Vec<LinkChange> {
    let mut changes = Vec::new();
    if desired.up && !observed.up {
        changes.push(LinkChange::SetUp);
    }
    if let Some(mtu) = desired.mtu
        && observed.mtu != Some(mtu)
    {
        changes.push(LinkChange::SetMtu(mtu));
    }
    changes.extend(
        observed
            .addresses
            .difference(&desired.addresses)
            .map(|a| LinkChange::RemoveAddress(*a)),
    );
    changes.extend(
        desired
            .addresses
            .difference(&observed.addresses)
            .map(|a| LinkChange::AddAddress(*a)),
    );
    changes
}

/// The minimal changes that turn `observed` into `desired`.
///
/// ```
/// use wormhole_core::{plan, HostState};
/// let state = HostState::default();
/// assert!(plan(&state, &state).is_empty());
/// ```
pub fn plan(desired: &HostState, observed: &HostState) -> Plan {
    let routes = observed
        .routes
        .difference(&desired.routes)
        .map(|r| RouteChange::Remove(*r))
        .chain(
            desired
                .routes
                .difference(&observed.routes)
                .map(|r| RouteChange::Add(*r)),
        )
        .collect();
    Plan {
        firewall: desired
            .firewall
            .clone()
            .filter(|f| observed.firewall.as_ref() != Some(f)),
        device: plan_device(desired.device.as_ref(), observed.device.as_ref()),
        link: plan_link(&desired.link, &observed.link),
        routes,
    }
}

/// A [`Plan`] printed with node names from a mesh (see [`Plan::display`]).
pub struct PlanDisplay<'a> {
    plan: &'a Plan,
    mesh: Option<&'a Mesh>,
}

impl Plan {
    /// Formats the plan naming peers as `name (key prefix)` when `mesh` knows them.
    pub fn display<'a>(&'a self, mesh: Option<&'a Mesh>) -> PlanDisplay<'a> {
        PlanDisplay { plan: self, mesh }
    }
}

impl fmt::Display for Plan {
    /// One line per change, `+` added, `-` removed, `~` changed; secrets never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.display(None).fmt(f)
    }
}

impl fmt::Display for PlanDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |key: &PublicKey| {
            let prefix = &key.to_base64()[..8];
            let name = self
                .mesh
                .and_then(|m| m.peers.iter().find(|p| p.public_key == *key));
            match name {
                Some(peer) => format!("{} ({prefix})", peer.name),
                None => prefix.to_owned(),
            }
        };
        let plan = self.plan;
        if plan.is_empty() {
            return writeln!(f, "  (no changes)");
        }
        if let Some(p) = &plan.firewall {
            writeln!(
                f,
                "  ~ firewall: table for {} and {}",
                p.interface, p.bridge
            )?;
        }
        if plan.device.create {
            writeln!(f, "  + device")?;
        }
        for change in &plan.device.changes {
            match change {
                DeviceChange::SetPrivateKey(k) => {
                    writeln!(f, "  ~ private key (public {})", short(&k.public_key()))?
                }
                DeviceChange::SetListenPort(p) => writeln!(f, "  ~ listen port {p}")?,
                DeviceChange::RemovePeer(k) => writeln!(f, "  - peer {}", short(k))?,
                DeviceChange::AddPeer(k, c) => {
                    let ips: Vec<_> = c.allowed_ips.iter().map(ToString::to_string).collect();
                    let endpoint = c.endpoint.map_or("(learned)".to_owned(), |e| e.to_string());
                    writeln!(
                        f,
                        "  + peer {} endpoint {endpoint} allowed {}",
                        short(k),
                        ips.join(",")
                    )?
                }
                DeviceChange::UpdatePeer(k, fields) => {
                    let names: Vec<_> = fields
                        .iter()
                        .map(|field| match field {
                            PeerField::Endpoint(e) => format!("endpoint={e}"),
                            PeerField::AllowedIps(ips) => format!("allowed={ips:?}"),
                            PeerField::Keepalive(k) => format!("keepalive={k:?}"),
                            PeerField::PresharedKey(k) => {
                                format!("psk={}", if k.is_some() { "set" } else { "none" })
                            }
                        })
                        .collect();
                    writeln!(f, "  ~ peer {} {}", short(k), names.join(" "))?
                }
            }
        }
        for change in &plan.link {
            match change {
                LinkChange::SetUp => writeln!(f, "  ~ link up")?,
                LinkChange::SetMtu(m) => writeln!(f, "  ~ mtu {m}")?,
                LinkChange::AddAddress(a) => writeln!(f, "  + address {a}")?,
                LinkChange::RemoveAddress(a) => writeln!(f, "  - address {a}")?,
            }
        }
        for change in &plan.routes {
            match change {
                RouteChange::Add(r) => writeln!(f, "  + route {r}")?,
                RouteChange::Remove(r) => writeln!(f, "  - route {r}")?,
            }
        }
        Ok(())
    }
}
