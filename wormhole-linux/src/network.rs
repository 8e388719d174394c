//! The WireGuard interface as a link (up, MTU, addresses) and the routes through it, over
//! rtnetlink. Routes are marked with our own route protocol number, [`ROUTE_PROTOCOL`]: reading
//! and removing only ever concern routes carrying it, never anyone else's.
//!
//! `ip route show proto 87` lists ours.

use std::collections::BTreeSet;
use std::net::IpAddr;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use ipnet::IpNet;
use nix::errno::Errno;
use nix::errno::Errno::{EADDRNOTAVAIL, EEXIST, ENODEV, ESRCH};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, LinkWireguard, RouteMessageBuilder};
use wormhole_core::LinkState;
use wormhole_core::{Component, Error, FailedItem, HostNetwork, ItemFailure};
use wormhole_core::{LinkChange, RouteChange};

use crate::backend_error;

/// The route protocol number marking Wormhole's routes (87, ASCII `W`; unassigned in
/// `/etc/iproute2/rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 87;

/// WireGuard's overhead: outer IPv6 header (40) + UDP (8) + WireGuard (32).
pub const WIREGUARD_OVERHEAD: u32 = 80;

/// The interface's link and routes, through one rtnetlink connection.
#[derive(Debug, Clone)]
pub struct Network {
    iface: String,
    handle: Handle,
}

fn net_err(what: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| backend_error(Component::Network, what, e)
}

/// The kernel answered with `errno` (netlink carries it negated).
fn is_errno(e: &rtnetlink::Error, errno: Errno) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -(errno as i32))
}

fn route_destination(msg: &RouteMessage) -> Option<IpNet> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            IpNet::new(IpAddr::V4(*ip), msg.header.destination_prefix_length).ok()
        }
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
            IpNet::new(IpAddr::V6(*ip), msg.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

fn route_oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
}

fn link_mtu(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

impl Network {
    /// Opens an rtnetlink connection (in the calling thread's network namespace) for `iface`.
    /// Must be called inside a tokio runtime: the connection runs as a task of it.
    pub fn new(iface: &str) -> Result<Self, Error> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| backend_error(Component::Network, "open rtnetlink socket", e))?;
        tokio::spawn(connection);
        Ok(Network {
            iface: iface.to_owned(),
            handle,
        })
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_errno(&e, ENODEV) => Ok(None),
            Err(e) => Err(net_err(format!("get link {name}"))(e)),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, Error> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_errno(&e, ENODEV) => Ok(None),
            Err(e) => Err(net_err(format!("get link #{index}"))(e)),
        }
    }

    async fn index(&self) -> Result<u32, Error> {
        match self.link_by_name(&self.iface).await? {
            Some(link) => Ok(link.header.index),
            None => Err(Error::backend(
                Component::Network,
                format!("interface {} does not exist", self.iface),
            )),
        }
    }

    /// Creates the interface as a kernel WireGuard link (for the kernel backend).
    pub(crate) async fn create_wireguard_link(&self) -> Result<(), Error> {
        match self
            .handle
            .link()
            .add(LinkWireguard::new(&self.iface).build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, EEXIST) => Ok(()),
            Err(e) => Err(net_err(format!(
                "create WireGuard link {} (is the wireguard kernel module available? try --backend embedded)",
                self.iface
            ))(e)),
        }
    }

    /// Deletes the interface (for `--cleanup-on-exit` and `wormhole uninstall`); absent is
    /// fine. Returns whether it was there.
    pub async fn delete_link(&self) -> Result<bool, Error> {
        let Some(link) = self.link_by_name(&self.iface).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            // Gone in the meantime (a userspace device exiting).
            Err(e) if is_errno(&e, ENODEV) => Ok(false),
            Err(e) => Err(net_err(format!("delete link {}", self.iface))(e)),
        }
    }

    /// The interface's kind as `ip -d link` names it (`wireguard`, `tun`, `bridge`, `veth`,
    /// ...; empty for a link without one, such as a physical NIC), or `None` when it does not
    /// exist: `wormhole uninstall` deletes only links of the kinds it makes.
    pub async fn link_kind(&self) -> Result<Option<String>, Error> {
        let Some(link) = self.link_by_name(&self.iface).await? else {
            return Ok(None);
        };
        let kind = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Kind(kind) => Some(kind.to_string()),
                _ => None,
            }),
            _ => None,
        });
        Ok(Some(kind.unwrap_or_default()))
    }

    /// Deletes every port of the interface (a bridge's: the host ends of the pods' veths,
    /// whose other ends go with them), for `wormhole uninstall`. Returns their names, sorted.
    pub async fn delete_ports(&self) -> Result<Vec<String>, Error> {
        let Some(bridge) = self.link_by_name(&self.iface).await? else {
            return Ok(Vec::new());
        };
        let master = bridge.header.index;
        let mut ports = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(net_err("dump links".into()))?
        {
            let enslaved = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(m) if *m == master));
            if enslaved {
                let name = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                ports.push((link.header.index, name.unwrap_or_default()));
            }
        }
        let mut deleted = Vec::new();
        for (index, name) in ports {
            match self.handle.link().del(index).execute().await {
                Ok(()) => deleted.push(name),
                // Gone with its pod in the meantime.
                Err(e) if is_errno(&e, ENODEV) => {}
                Err(e) => {
                    return Err(net_err(format!("delete {name}, a port of {}", self.iface))(
                        e,
                    ));
                }
            }
        }
        deleted.sort();
        Ok(deleted)
    }

    async fn routes(&self, index: u32) -> Result<BTreeSet<IpNet>, Error> {
        let mut owned = BTreeSet::new();
        let requests = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for request in requests {
            let mut routes = self.handle.route().get(request).execute();
            while let Some(route) = routes
                .try_next()
                .await
                .map_err(net_err("dump routes".into()))?
            {
                if route.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
                    && route_oif(&route) == Some(index)
                {
                    owned.extend(route_destination(&route));
                }
            }
        }
        Ok(owned)
    }

    /// The route(s) to exactly `net` in `ip route` terms (`10.99.2.0/24 via 192.168.77.9 dev
    /// eth0 proto static`), for an error message; `net` alone when they cannot be read.
    async fn describe_route(&self, net: &IpNet) -> String {
        let request = match net {
            IpNet::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut found = Vec::new();
        let mut routes = self.handle.route().get(request).execute();
        while let Ok(Some(route)) = routes.try_next().await {
            if route_destination(&route) != Some(*net) {
                continue;
            }
            let mut text = net.to_string();
            for attr in &route.attributes {
                match attr {
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => {
                        text += &format!(" via {ip}")
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => {
                        text += &format!(" via {ip}")
                    }
                    _ => {}
                }
            }
            if let Some(oif) = route_oif(&route) {
                let name = match self.link_by_index(oif).await {
                    Ok(Some(link)) => link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    }),
                    _ => None,
                };
                text += &format!(" dev {}", name.unwrap_or_else(|| format!("#{oif}")));
            }
            let protocol = match route.header.protocol {
                RouteProtocol::Other(n) => n.to_string(),
                p => format!("{p:?}").to_lowercase(),
            };
            text += &format!(" proto {protocol}");
            found.push(text);
        }
        if found.is_empty() {
            net.to_string()
        } else {
            found.join(", ")
        }
    }

    fn route_message(&self, index: u32, net: &IpNet) -> Result<RouteMessage, Error> {
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .map_err(|e| backend_error(Component::Network, format!("route {net}"), e))?;
        Ok(builder
            .output_interface(index)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .scope(RouteScope::Link)
            .build())
    }

    async fn addresses(&self, index: u32) -> Result<Vec<(IpNet, AddressMessage)>, Error> {
        let mut found = Vec::new();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(net_err("dump addresses".into()))?
        {
            // Link-local addresses belong to the kernel, not to us.
            let link_local = |n: &IpNet| match n {
                IpNet::V6(n) => n.addr().segments()[0] & 0xffc0 == 0xfe80,
                IpNet::V4(n) => n.addr().is_link_local(),
            };
            if msg.header.index == index
                && let Some(net) = address_of(&msg).filter(|n| !link_local(n))
            {
                found.push((net, msg));
            }
        }
        Ok(found)
    }

    /// The MTU of the underlay: the interface holding `local` (this node's endpoint address) if
    /// given, else the interface of the default route (IPv4, then IPv6).
    pub async fn underlay_mtu(&self, local: Option<IpAddr>) -> Result<u32, Error> {
        let oif = match local {
            Some(ip) => {
                let mut addrs = self.handle.address().get().set_address_filter(ip).execute();
                let msg = addrs
                    .try_next()
                    .await
                    .map_err(net_err(format!("find address {ip}")))?;
                msg.map(|m| m.header.index)
            }
            // The first default route's interface, IPv4 before IPv6.
            None => self.default_routes().await?.iter().find_map(route_oif),
        };
        let what = local.map_or("a default route".to_owned(), |ip| format!("address {ip}"));
        let index = oif.ok_or_else(|| {
            Error::backend(
                Component::Network,
                format!("cannot detect the underlay MTU: no interface with {what} (set --mtu)"),
            )
        })?;
        let link = self.link_by_index(index).await?;
        link.as_ref().and_then(link_mtu).ok_or_else(|| {
            Error::backend(
                Component::Network,
                format!("cannot detect the underlay MTU: link #{index} has none (set --mtu)"),
            )
        })
    }

    /// The addresses the overlay must never contain: the gateways of this host's default routes
    /// and every address on the interfaces those routes leave by (the underlay). A cluster CIDR
    /// holding one of them would make the firewall drop the node's own underlay traffic.
    pub async fn underlay_addresses(&self) -> Result<Vec<IpAddr>, Error> {
        let mut found = Vec::new();
        let mut oifs = BTreeSet::new();
        for r in self.default_routes().await? {
            oifs.extend(route_oif(&r));
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => found.push(IpAddr::V4(*ip)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => found.push(IpAddr::V6(*ip)),
                    _ => {}
                }
            }
        }
        for index in oifs {
            found.extend(
                self.addresses(index)
                    .await?
                    .into_iter()
                    .map(|(n, _)| n.addr()),
            );
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// The default routes of the main table, IPv4 first, then IPv6.
    async fn default_routes(&self) -> Result<Vec<RouteMessage>, Error> {
        let mut found = Vec::new();
        for request in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut routes = self.handle.route().get(request).execute();
            while let Some(r) = routes
                .try_next()
                .await
                .map_err(net_err("dump routes".into()))?
            {
                if r.header.destination_prefix_length == 0
                    && r.header.table == RouteHeader::RT_TABLE_MAIN
                {
                    found.push(r);
                }
            }
        }
        Ok(found)
    }

    /// The WireGuard MTU for this host: underlay MTU − [`WIREGUARD_OVERHEAD`].
    pub async fn wireguard_mtu(&self, local: Option<IpAddr>) -> Result<u32, Error> {
        Ok(self
            .underlay_mtu(local)
            .await?
            .saturating_sub(WIREGUARD_OVERHEAD)
            .max(1280))
    }
}

#[async_trait]
impl HostNetwork for Network {
    async fn read(&self) -> Result<(LinkState, BTreeSet<IpNet>), Error> {
        let Some(link) = self.link_by_name(&self.iface).await? else {
            return Ok((LinkState::default(), BTreeSet::new()));
        };
        let index = link.header.index;
        let state = LinkState {
            up: link.header.flags.contains(LinkFlags::Up),
            mtu: link_mtu(&link),
            addresses: self
                .addresses(index)
                .await?
                .into_iter()
                .map(|(n, _)| n)
                .collect(),
        };
        Ok((state, self.routes(index).await?))
    }

    async fn apply(&self, link: &[LinkChange], routes: &[RouteChange]) -> Result<(), Error> {
        let index = self.index().await?;
        let iface = &self.iface;
        for change in link {
            match change {
                LinkChange::SetUp => {
                    let msg = LinkUnspec::new_with_index(index).up().build();
                    self.handle
                        .link()
                        .set(msg)
                        .execute()
                        .await
                        .map_err(net_err(format!("set {iface} up")))?;
                }
                LinkChange::SetMtu(mtu) => {
                    let msg = LinkUnspec::new_with_index(index).mtu(*mtu).build();
                    self.handle
                        .link()
                        .set(msg)
                        .execute()
                        .await
                        .map_err(net_err(format!("set {iface} mtu {mtu}")))?;
                }
                LinkChange::AddAddress(net) => {
                    let request = self
                        .handle
                        .address()
                        .add(index, net.addr(), net.prefix_len());
                    match request.execute().await {
                        Err(e) if !is_errno(&e, EEXIST) => {
                            return Err(net_err(format!("add address {net} to {iface}"))(e));
                        }
                        _ => {}
                    }
                }
                LinkChange::RemoveAddress(net) => {
                    for (have, msg) in self.addresses(index).await? {
                        if have == *net {
                            match self.handle.address().del(msg).execute().await {
                                Err(e) if !is_errno(&e, EADDRNOTAVAIL) => {
                                    return Err(net_err(format!(
                                        "remove address {net} from {iface}"
                                    ))(e));
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        // A route someone else holds for a peer's CIDR fails that route alone.
        let mut conflicts = Vec::new();
        for change in routes {
            match change {
                RouteChange::Add(net) => {
                    let msg = self.route_message(index, net)?;
                    match self.handle.route().add(msg).execute().await {
                        Ok(()) => {}
                        Err(e) if is_errno(&e, EEXIST) => conflicts.push(ItemFailure {
                            item: FailedItem::Route(*net),
                            reason: format!(
                                "route conflict: {} (not ours: remove it, or fix the overlap)",
                                self.describe_route(net).await
                            ),
                        }),
                        Err(e) => return Err(net_err(format!("add route {net} dev {iface}"))(e)),
                    }
                }
                RouteChange::Remove(net) => {
                    let msg = self.route_message(index, net)?;
                    match self.handle.route().del(msg).execute().await {
                        Err(e) if !is_errno(&e, ESRCH) => {
                            return Err(net_err(format!("remove route {net}"))(e));
                        }
                        _ => {}
                    }
                }
            }
        }
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(Error::Partial {
                backend: Component::Network,
                failures: conflicts,
            })
        }
    }
}
