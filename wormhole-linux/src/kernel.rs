//! The kernel WireGuard module over generic netlink: read a device, apply changes to it.
//!
//! Two properties of the kernel's netlink interface shape this module, and are why we speak it
//! ourselves (with the message types of `netlink-packet-wireguard` and the request helper of
//! `netlink-request`, both MIT) rather than through `wireguard-control`:
//!
//! - **A dump splits a peer across messages.** When a peer's allowed IPs do not fit in one
//!   message, the next message continues that peer with only its public key and the rest of its
//!   allowed IPs. [`get`] merges fragments by public key: allowed IPs appended, every other field
//!   from the first fragment (the only one that carries them).
//! - **A request is at most one page (8 KiB here).** [`set`] never builds a bigger one: peers are
//!   packed into as many messages as they need, and a peer whose allowed IPs do not fit is split
//!   as `wg(8)` does, its first part with every field of the peer and the following parts with
//!   `WGPEER_F_UPDATE_ONLY` and the remaining allowed IPs.
//!
//! The kernel stops at the first peer it cannot apply in a message. When a message fails, its
//! peers are applied again one peer at a time (every change here is idempotent), so one bad peer
//! never blocks the others' changes, and the error names each peer that failed with its cause.
//!
//! No message or attribute is ever formatted with `Debug`: they carry private and preshared keys.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::time::UNIX_EPOCH;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_utils::Emitable as _;
use netlink_packet_wireguard::constants::{
    AF_INET, AF_INET6, WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS, WGPEER_F_UPDATE_ONLY,
};
use netlink_packet_wireguard::nlas::{
    WgAllowedIp, WgAllowedIpAttrs, WgDeviceAttrs, WgPeer, WgPeerAttrs,
};
use netlink_packet_wireguard::{Wireguard, WireguardCmd};
use wormhole_core::{DeviceChange, PeerField};
use wormhole_core::{DeviceState, ObservedDevice, PeerConfig, PeerStats};
use wormhole_core::{PresharedKey, PrivateKey, PublicKey};

/// Reads the device `iface` (an `ENODEV` error when it does not exist).
pub(crate) fn get(iface: &str) -> io::Result<ObservedDevice> {
    let request = GenlMessage::from_payload(Wireguard {
        cmd: WireguardCmd::GetDevice,
        nlas: vec![WgDeviceAttrs::IfName(iface.to_owned())],
    });
    let replies = netlink_request::netlink_request_genl(
        request,
        Some(NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK),
    )?;
    let mut parts = Vec::with_capacity(replies.len());
    for reply in replies {
        match reply.payload {
            NetlinkPayload::InnerMessage(message) => parts.push(message.payload.nlas),
            // Never formatted: a device message carries the private key.
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected netlink message in a WireGuard device dump",
                ));
            }
        }
    }
    Ok(merge(parts))
}

/// One device from the messages of a dump, peers split across messages merged by public key.
fn merge(messages: Vec<Vec<WgDeviceAttrs>>) -> ObservedDevice {
    let mut state = DeviceState::default();
    let mut peers: BTreeMap<PublicKey, PeerConfig> = BTreeMap::new();
    let mut stats: BTreeMap<PublicKey, PeerStats> = BTreeMap::new();
    for attr in messages.into_iter().flatten() {
        match attr {
            WgDeviceAttrs::PrivateKey(k) if k != [0; 32] => {
                state.private_key = Some(PrivateKey::from_bytes(k));
            }
            WgDeviceAttrs::ListenPort(p) if p != 0 => state.listen_port = Some(p),
            WgDeviceAttrs::Peers(list) => {
                for WgPeer(attrs) in list {
                    merge_peer(attrs, &mut peers, &mut stats);
                }
            }
            _ => {}
        }
    }
    for peer in peers.values_mut() {
        peer.allowed_ips.sort();
        peer.allowed_ips.dedup();
    }
    state.peers = peers;
    ObservedDevice {
        config: state,
        stats,
    }
}

fn merge_peer(
    attrs: Vec<WgPeerAttrs>,
    peers: &mut BTreeMap<PublicKey, PeerConfig>,
    stats: &mut BTreeMap<PublicKey, PeerStats>,
) {
    let Some(key) = attrs.iter().find_map(|a| match a {
        WgPeerAttrs::PublicKey(k) => Some(PublicKey::from_bytes(*k)),
        _ => None,
    }) else {
        return;
    };
    // The first fragment creates the entries; a continuation only adds allowed IPs.
    let config = peers.entry(key).or_insert_with(|| PeerConfig {
        endpoint: None,
        allowed_ips: Vec::new(),
        persistent_keepalive: None,
        preshared_key: None,
    });
    let counters = stats.entry(key).or_default();
    for attr in attrs {
        match attr {
            WgPeerAttrs::Endpoint(e) => config.endpoint = Some(e),
            WgPeerAttrs::PersistentKeepalive(k) if k != 0 => {
                config.persistent_keepalive = Some(k);
            }
            WgPeerAttrs::PresharedKey(k) if k != [0; 32] => {
                config.preshared_key = Some(PresharedKey::from_bytes(k));
            }
            WgPeerAttrs::LastHandshake(t) if t != UNIX_EPOCH => {
                counters.latest_handshake = Some(t);
            }
            WgPeerAttrs::RxBytes(n) => counters.rx_bytes = n,
            WgPeerAttrs::TxBytes(n) => counters.tx_bytes = n,
            WgPeerAttrs::AllowedIps(ips) => {
                config
                    .allowed_ips
                    .extend(ips.iter().filter_map(from_allowed));
            }
            _ => {}
        }
    }
}

fn from_allowed(ip: &WgAllowedIp) -> Option<IpNet> {
    let address = ip.0.iter().find_map(|a| match a {
        WgAllowedIpAttrs::IpAddr(a) => Some(*a),
        _ => None,
    })?;
    let prefix = ip.0.iter().find_map(|a| match a {
        WgAllowedIpAttrs::Cidr(c) => Some(*c),
        _ => None,
    })?;
    IpNet::new(address, prefix).ok().map(|n| n.trunc())
}

fn to_allowed(net: &IpNet) -> WgAllowedIp {
    let family = match net.addr() {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    };
    WgAllowedIp(vec![
        WgAllowedIpAttrs::Family(family),
        WgAllowedIpAttrs::IpAddr(net.network()),
        WgAllowedIpAttrs::Cidr(net.prefix_len()),
    ])
}

/// The peers that could not be applied, each with the kernel's answer; every other change was.
#[derive(Debug)]
pub(crate) struct PeerFailures(pub(crate) Vec<(PublicKey, io::Error)>);

/// Applies `changes` to `iface` in messages of at most `max` bytes of attributes.
pub(crate) fn set(iface: &str, changes: &[DeviceChange]) -> Result<(), SetError> {
    let family = resolve_family()?;
    let failures = apply_with(
        iface,
        changes,
        netlink_request::max_genl_payload_length(),
        |nlas| {
            let mut message = GenlMessage::from_payload(Wireguard {
                cmd: WireguardCmd::SetDevice,
                nlas,
            });
            message.set_resolved_family_id(family);
            netlink_request::netlink_request_genl(message, Some(NLM_F_REQUEST | NLM_F_ACK))
                .map(drop)
        },
    )?;
    if failures.0.is_empty() {
        Ok(())
    } else {
        Err(SetError::Peers(failures))
    }
}

/// Why [`set`] failed.
#[derive(Debug)]
pub(crate) enum SetError {
    /// A device-level change (key, port) or the request itself failed: nothing may be applied.
    Device(io::Error),
    /// These peers failed; every other change was applied.
    Peers(PeerFailures),
}

impl From<io::Error> for SetError {
    fn from(e: io::Error) -> Self {
        SetError::Device(e)
    }
}

/// The generic netlink family id of `wireguard` (`ENOENT` when the module is not loaded).
fn resolve_family() -> io::Result<u16> {
    use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
    use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
    let request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
    });
    let replies = netlink_request::netlink_request_genl(request, Some(NLM_F_REQUEST | NLM_F_ACK))?;
    replies
        .iter()
        .find_map(|reply| match reply {
            NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(m),
                ..
            } => m.payload.nlas.iter().find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            }),
            _ => None,
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no wireguard netlink family"))
}

/// One change as netlink peer parts (a peer's allowed IPs split to fit `max`), or `None` for a
/// device-level change.
fn peer_parts(change: &DeviceChange, max: usize) -> Option<(PublicKey, Vec<WgPeer>)> {
    let (key, mut head, ips, replace) = match change {
        DeviceChange::SetPrivateKey(_) | DeviceChange::SetListenPort(_) => return None,
        DeviceChange::RemovePeer(k) => {
            return Some((
                *k,
                vec![WgPeer(vec![
                    WgPeerAttrs::PublicKey(*k.as_bytes()),
                    WgPeerAttrs::Flags(WGPEER_F_REMOVE_ME),
                ])],
            ));
        }
        DeviceChange::UpdatePeer(k, fields) => {
            let mut head = Vec::new();
            let mut ips = None;
            for field in fields {
                match field {
                    PeerField::Endpoint(e) => head.push(WgPeerAttrs::Endpoint(*e)),
                    PeerField::Keepalive(k) => {
                        head.push(WgPeerAttrs::PersistentKeepalive(k.unwrap_or(0)));
                    }
                    PeerField::PresharedKey(k) => head.push(WgPeerAttrs::PresharedKey(
                        k.as_ref().map_or([0; 32], |k| *k.secret_bytes()),
                    )),
                    PeerField::AllowedIps(list) => ips = Some(list.as_slice()),
                }
            }
            (*k, head, ips.unwrap_or_default(), ips.is_some())
        }
        DeviceChange::AddPeer(k, c) => {
            let mut head = Vec::new();
            head.extend(c.endpoint.map(WgPeerAttrs::Endpoint));
            head.extend(c.persistent_keepalive.map(WgPeerAttrs::PersistentKeepalive));
            head.extend(
                c.preshared_key
                    .as_ref()
                    .map(|k| WgPeerAttrs::PresharedKey(*k.secret_bytes())),
            );
            // Replace, so a half-applied earlier attempt leaves nothing stale behind.
            (*k, head, c.allowed_ips.as_slice(), true)
        }
    };
    head.insert(0, WgPeerAttrs::PublicKey(*key.as_bytes()));
    if replace {
        head.push(WgPeerAttrs::Flags(WGPEER_F_REPLACE_ALLOWEDIPS));
    }
    let mut parts = Vec::new();
    let mut current = head;
    let mut list: Vec<WgAllowedIp> = Vec::new();
    let mut len = peer_len(&current);
    for net in ips {
        let ip = to_allowed(net);
        if len + ip.buffer_len() > max && !list.is_empty() {
            current.push(WgPeerAttrs::AllowedIps(std::mem::take(&mut list)));
            parts.push(WgPeer(std::mem::replace(
                &mut current,
                vec![
                    WgPeerAttrs::PublicKey(*key.as_bytes()),
                    WgPeerAttrs::Flags(WGPEER_F_UPDATE_ONLY),
                ],
            )));
            len = peer_len(&current);
        }
        len += ip.buffer_len();
        list.push(ip);
    }
    if !list.is_empty() {
        current.push(WgPeerAttrs::AllowedIps(list));
    }
    parts.push(WgPeer(current));
    Some((key, parts))
}

/// The encoded length of a peer with `attrs` and an empty allowed-IPs list, as the only entry of
/// a `Peers` attribute (each allowed IP then adds its own length).
fn peer_len(attrs: &[WgPeerAttrs]) -> usize {
    let mut attrs = attrs.to_vec();
    attrs.push(WgPeerAttrs::AllowedIps(Vec::new()));
    WgDeviceAttrs::Peers(vec![WgPeer(attrs)]).buffer_len()
}

/// Packs peer parts into messages of at most `max` bytes (each starting with the interface
/// name). `first` holds device-level attributes for the first message.
fn pack(
    iface: &str,
    first: Vec<WgDeviceAttrs>,
    parts: Vec<WgPeer>,
    max: usize,
) -> Vec<Vec<WgDeviceAttrs>> {
    let name = WgDeviceAttrs::IfName(iface.to_owned());
    let mut messages = Vec::new();
    let mut head = vec![name.clone()];
    head.extend(first);
    let mut peers: Vec<WgPeer> = Vec::new();
    // The length of `head` plus a `Peers` attribute holding `peers`.
    let empty = WgDeviceAttrs::Peers(Vec::new()).buffer_len();
    let mut len = head.as_slice().buffer_len() + empty;
    for part in parts {
        // A peer's own length inside the list: the list's growth when it is added.
        let part_len = WgDeviceAttrs::Peers(vec![part.clone()]).buffer_len() - empty;
        if len + part_len > max && !peers.is_empty() {
            let mut message = std::mem::replace(&mut head, vec![name.clone()]);
            message.push(WgDeviceAttrs::Peers(std::mem::take(&mut peers)));
            messages.push(message);
            len = head.as_slice().buffer_len() + empty;
        }
        len += part_len;
        peers.push(part);
    }
    if !peers.is_empty() {
        head.push(WgDeviceAttrs::Peers(peers));
    }
    if head.len() > 1 {
        messages.push(head);
    }
    messages
}

/// Applies `changes` through `send` (one netlink request per call), in messages of at most
/// `max` bytes; a failed message is retried one peer at a time. Returns the peers that failed.
fn apply_with(
    iface: &str,
    changes: &[DeviceChange],
    max: usize,
    mut send: impl FnMut(Vec<WgDeviceAttrs>) -> io::Result<()>,
) -> Result<PeerFailures, io::Error> {
    // Room for one peer part: a message also names the interface.
    let room = max - WgDeviceAttrs::IfName(iface.to_owned()).buffer_len();
    let mut device = Vec::new();
    let mut peers = Vec::new();
    for change in changes {
        match change {
            DeviceChange::SetPrivateKey(k) => {
                device.push(WgDeviceAttrs::PrivateKey(*k.secret_bytes()));
            }
            DeviceChange::SetListenPort(p) => device.push(WgDeviceAttrs::ListenPort(*p)),
            _ => peers.extend(peer_parts(change, room)),
        }
    }
    // Device-level settings first and on their own: a failure there is the device's, not a peer's.
    if !device.is_empty() {
        let mut message = vec![WgDeviceAttrs::IfName(iface.to_owned())];
        message.extend(device);
        send(message)?;
    }
    let mut failures = Vec::new();
    let all: Vec<WgPeer> = peers.iter().flat_map(|(_, p)| p.iter().cloned()).collect();
    let batched_ok = pack(iface, Vec::new(), all, max)
        .into_iter()
        .all(|message| send(message).is_ok());
    if !batched_ok {
        // Find the culprits: every peer again on its own (all changes are idempotent).
        for (key, parts) in peers {
            for message in pack(iface, Vec::new(), parts, max) {
                if let Err(e) = send(message) {
                    failures.push((key, e));
                    break;
                }
            }
        }
    }
    Ok(PeerFailures(failures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};

    /// The page-sized limit the kernel uses here, as `netlink-request` computes it.
    const MAX: usize = 8192 - 16 - 4;

    fn key(n: u16) -> PublicKey {
        let mut bytes = [1u8; 32];
        bytes[1..3].copy_from_slice(&n.to_be_bytes());
        PrivateKey::from_bytes(bytes).public_key()
    }

    fn nets(n: u32) -> Vec<IpNet> {
        (0..n)
            .map(|i| IpNet::new(IpAddr::from([10, (i >> 8) as u8, i as u8, 0]), 24).unwrap())
            .collect()
    }

    fn config(ips: Vec<IpNet>) -> PeerConfig {
        PeerConfig {
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
            allowed_ips: ips,
            persistent_keepalive: Some(25),
            preshared_key: Some(PresharedKey::from_bytes([7; 32])),
        }
    }

    fn message_len(nlas: &[WgDeviceAttrs]) -> usize {
        nlas.buffer_len()
    }

    /// What a device would hold after the messages, decoded back through `merge` (the same
    /// structure a dump has: peers split across messages).
    fn as_dump(messages: &[Vec<WgDeviceAttrs>]) -> ObservedDevice {
        merge(messages.to_vec())
    }

    #[test]
    fn a_peer_with_1000_cidrs_is_split_under_the_limit() {
        let change = DeviceChange::AddPeer(key(1), config(nets(1000)));
        let mut sent = Vec::new();
        let failures = apply_with("wh0", &[change], MAX, |m| {
            sent.push(m);
            Ok(())
        })
        .unwrap();
        assert!(failures.0.is_empty());
        assert!(sent.len() >= 3, "{} messages", sent.len());
        for m in &sent {
            assert!(message_len(m) <= MAX, "{} > {MAX}", message_len(m));
        }
        // The first part carries the peer's fields and replaces; the rest only add IPs.
        let peers = |m: &Vec<WgDeviceAttrs>| match &m[1] {
            WgDeviceAttrs::Peers(p) => p.clone(),
            _ => panic!("no peers"),
        };
        let first = &peers(&sent[0])[0].0;
        assert!(first.contains(&WgPeerAttrs::Flags(WGPEER_F_REPLACE_ALLOWEDIPS)));
        assert!(first.contains(&WgPeerAttrs::PersistentKeepalive(25)));
        for m in &sent[1..] {
            let part = &peers(m)[0].0;
            assert!(part.contains(&WgPeerAttrs::Flags(WGPEER_F_UPDATE_ONLY)));
            assert!(!part.iter().any(|a| matches!(a, WgPeerAttrs::Endpoint(_))));
        }
        let got = as_dump(&sent);
        let mut want = nets(1000);
        want.sort();
        assert_eq!(got.config.peers[&key(1)].allowed_ips, want);
        assert_eq!(got.config.peers[&key(1)].persistent_keepalive, Some(25));
    }

    #[test]
    fn many_peers_are_batched_under_the_limit() {
        let changes: Vec<_> = (0..1000)
            .map(|i| DeviceChange::AddPeer(key(i), config(nets(2))))
            .collect();
        let mut sent = Vec::new();
        apply_with("wh0", &changes, MAX, |m| {
            sent.push(m);
            Ok(())
        })
        .unwrap();
        assert!(
            sent.len() > 10 && sent.len() < 100,
            "{} messages",
            sent.len()
        );
        assert!(sent.iter().all(|m| message_len(m) <= MAX));
        assert_eq!(as_dump(&sent).config.peers.len(), 1000);
    }

    #[test]
    fn one_failing_peer_does_not_block_the_others() {
        let bad = key(500);
        let changes: Vec<_> = (0..1000)
            .map(|i| DeviceChange::AddPeer(key(i), config(nets(2))))
            .chain([DeviceChange::SetListenPort(51820)])
            .collect();
        let mut applied: BTreeMap<PublicKey, usize> = BTreeMap::new();
        let failures = apply_with("wh0", &changes, MAX, |m| {
            // Like the kernel: peers in order, stopping at the first it cannot apply.
            for attr in m {
                if let WgDeviceAttrs::Peers(peers) = attr {
                    for WgPeer(attrs) in peers {
                        let WgPeerAttrs::PublicKey(k) = attrs[0] else {
                            panic!("key first")
                        };
                        let k = PublicKey::from_bytes(k);
                        if k == bad {
                            return Err(io::Error::from(Errno::EINVAL));
                        }
                        *applied.entry(k).or_default() += 1;
                    }
                }
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(failures.0.len(), 1);
        assert_eq!(failures.0[0].0, bad);
        assert_eq!(failures.0[0].1.raw_os_error(), Some(Errno::EINVAL as i32));
        assert_eq!(applied.len(), 999, "every other peer applied");
    }

    #[test]
    fn a_device_failure_is_the_devices() {
        let changes = [
            DeviceChange::SetListenPort(1),
            DeviceChange::RemovePeer(key(1)),
        ];
        let err = apply_with("wh0", &changes, MAX, |m| {
            if m.iter().any(|a| matches!(a, WgDeviceAttrs::ListenPort(_))) {
                Err(io::Error::from(Errno::EADDRINUSE))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EADDRINUSE as i32));
    }

    #[test]
    fn updates_name_only_what_changes() {
        let change = DeviceChange::UpdatePeer(
            key(2),
            vec![PeerField::Keepalive(None), PeerField::PresharedKey(None)],
        );
        let (_, parts) = peer_parts(&change, MAX).unwrap();
        assert_eq!(
            parts,
            vec![WgPeer(vec![
                WgPeerAttrs::PublicKey(*key(2).as_bytes()),
                WgPeerAttrs::PersistentKeepalive(0),
                WgPeerAttrs::PresharedKey([0; 32]),
            ])]
        );
        let (_, parts) = peer_parts(&DeviceChange::RemovePeer(key(3)), MAX).unwrap();
        assert_eq!(
            parts[0].0,
            vec![
                WgPeerAttrs::PublicKey(*key(3).as_bytes()),
                WgPeerAttrs::Flags(WGPEER_F_REMOVE_ME)
            ]
        );
    }

    #[test]
    fn dump_fragments_merge_by_key() {
        let k = key(9);
        let endpoint: SocketAddr = "192.0.2.9:51820".parse().unwrap();
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let first = vec![
            WgDeviceAttrs::IfName("wh0".into()),
            WgDeviceAttrs::ListenPort(51820),
            WgDeviceAttrs::Peers(vec![WgPeer(vec![
                WgPeerAttrs::PublicKey(*k.as_bytes()),
                WgPeerAttrs::Endpoint(endpoint),
                WgPeerAttrs::PersistentKeepalive(0),
                WgPeerAttrs::LastHandshake(when),
                WgPeerAttrs::RxBytes(10),
                WgPeerAttrs::TxBytes(20),
                WgPeerAttrs::AllowedIps(nets(2).iter().map(to_allowed).collect()),
            ])]),
        ];
        // What the kernel sends next: the key and the rest of the allowed IPs, nothing else.
        let rest = vec![
            WgDeviceAttrs::IfName("wh0".into()),
            WgDeviceAttrs::Peers(vec![WgPeer(vec![
                WgPeerAttrs::PublicKey(*k.as_bytes()),
                WgPeerAttrs::AllowedIps(nets(5)[2..].iter().map(to_allowed).collect()),
            ])]),
        ];
        let got = merge(vec![first, rest]);
        assert_eq!(got.config.peers.len(), 1);
        let peer = &got.config.peers[&k];
        assert_eq!(peer.allowed_ips, nets(5));
        assert_eq!(peer.endpoint, Some(endpoint));
        assert_eq!(peer.persistent_keepalive, None);
        assert_eq!(got.stats[&k].latest_handshake, Some(when));
        assert_eq!((got.stats[&k].rx_bytes, got.stats[&k].tx_bytes), (10, 20));
        assert_eq!(got.config.listen_port, Some(51820));
    }
}
