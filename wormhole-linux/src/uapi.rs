//! A reader for the cross-platform WireGuard configuration protocol (`get=1` on the UAPI socket).
//!
//! `wireguard-control` writes configuration for us, but its userspace reader prints keys it does
//! not know to stdout (boringtun's `own_public_key`, on every read) and cannot represent a device
//! that reports only its public key, so we read with this instead.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use wormhole_core::state::{DeviceState, ObservedDevice, PeerConfig, PeerStats};
use wormhole_core::{PresharedKey, PrivateKey, PublicKey};

/// What a `get=1` returned.
#[derive(Debug, Default)]
pub struct Reply {
    /// The device.
    pub device: ObservedDevice,
    /// `own_public_key`, which boringtun reports instead of the private key.
    pub own_public_key: Option<PublicKey>,
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

fn hex32(value: &str) -> std::io::Result<[u8; 32]> {
    let bytes = value.as_bytes();
    if bytes.len() != 64 {
        return Err(invalid("key of wrong length in UAPI reply".into()));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text =
            std::str::from_utf8(pair).map_err(|_| invalid("bad hex in UAPI reply".into()))?;
        out[i] =
            u8::from_str_radix(text, 16).map_err(|_| invalid("bad hex in UAPI reply".into()))?;
    }
    Ok(out)
}

/// Handshake "times" before this are ages: boringtun reports the time *since* the handshake
/// where the protocol says the time *of* it.
const AGE_CUTOFF: u64 = 30 * 365 * 24 * 3600;

/// Parses a `get=1` reply (everything up to and including `errno=`).
pub fn parse(text: &str) -> std::io::Result<Reply> {
    let mut reply = Reply::default();
    let mut peer: Option<(PublicKey, PeerConfig, PeerStats)> = None;
    let mut peers = BTreeMap::new();
    let mut stats = BTreeMap::new();
    let (mut secs, mut nsecs) = (0u64, 0u32);
    let now = SystemTime::now();
    let mut finish =
        |peer: &mut Option<(PublicKey, PeerConfig, PeerStats)>, secs: &mut u64, nsecs: &mut u32| {
            if let Some((key, mut config, mut stat)) = peer.take() {
                config.allowed_ips.sort();
                if *secs != 0 || *nsecs != 0 {
                    let t = Duration::new(*secs, *nsecs);
                    stat.latest_handshake = Some(if *secs < AGE_CUTOFF {
                        now - t
                    } else {
                        SystemTime::UNIX_EPOCH + t
                    });
                }
                (*secs, *nsecs) = (0, 0);
                peers.insert(key, config);
                stats.insert(key, stat);
            }
        };
    let mut device = DeviceState::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| invalid(format!("bad UAPI line {line:?}")))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| invalid(format!("bad number for {key}")))
        };
        match (key, &mut peer) {
            ("errno", _) => {
                let errno: i32 = value.parse().map_err(|_| invalid("bad errno".into()))?;
                if errno != 0 {
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
            }
            ("public_key", _) => {
                finish(&mut peer, &mut secs, &mut nsecs);
                let key = PublicKey::from_bytes(hex32(value)?);
                peer = Some((key, PeerConfig::default(), PeerStats::default()));
            }
            ("private_key", None) => {
                let bytes = hex32(value)?;
                if bytes != [0; 32] {
                    device.private_key = Some(PrivateKey::from_bytes(bytes));
                }
            }
            ("own_public_key", None) => {
                reply.own_public_key = Some(PublicKey::from_bytes(hex32(value)?))
            }
            ("listen_port", None) => {
                device.listen_port = Some(number(value)? as u16).filter(|&p| p != 0)
            }
            ("fwmark" | "protocol_version", _) => {}
            ("preshared_key", Some((_, config, _))) => {
                let bytes = hex32(value)?;
                config.preshared_key = (bytes != [0; 32]).then(|| PresharedKey::from_bytes(bytes));
            }
            ("endpoint", Some((_, config, _))) => {
                config.endpoint = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|_| invalid(format!("bad endpoint {value}")))?,
                );
            }
            ("persistent_keepalive_interval", Some((_, config, _))) => {
                config.persistent_keepalive = Some(number(value)? as u16).filter(|&k| k != 0);
            }
            ("allowed_ip", Some((_, config, _))) => {
                let net: IpNet = value
                    .parse()
                    .map_err(|_| invalid(format!("bad allowed_ip {value}")))?;
                config.allowed_ips.push(net.trunc());
            }
            ("last_handshake_time_sec", Some(_)) => secs = number(value)?,
            ("last_handshake_time_nsec", Some(_)) => nsecs = number(value)? as u32,
            ("rx_bytes", Some((_, _, stat))) => stat.rx_bytes = number(value)?,
            ("tx_bytes", Some((_, _, stat))) => stat.tx_bytes = number(value)?,
            _ => tracing::debug!(key, "ignoring UAPI key"),
        }
    }
    finish(&mut peer, &mut secs, &mut nsecs);
    device.peers = peers;
    reply.device = ObservedDevice {
        config: device,
        stats,
    };
    Ok(reply)
}

/// Sends `get=1` to the socket at `path` and parses the reply.
pub fn get(path: &Path) -> std::io::Result<Reply> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"get=1\n\n")?;
    let mut text = String::new();
    let mut reader = BufReader::new(stream);
    loop {
        let before = text.len();
        if reader.read_line(&mut text)? == 0 {
            break;
        }
        if text[before..].starts_with("errno=") {
            break;
        }
    }
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wireguard_go_and_boringtun_replies() {
        let key = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
        let text = format!(
            "private_key={key}\nlisten_port=51820\npublic_key={key}\npreshared_key={zero}\n\
             protocol_version=1\nendpoint=[fd00::1]:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=0\n\
             allowed_ip=10.99.2.0/24\nallowed_ip=fd99:0:0:2::/64\nerrno=0\n\n",
            zero = "0".repeat(64)
        );
        let reply = parse(&text).unwrap();
        let device = &reply.device.config;
        assert!(device.private_key.is_some());
        assert_eq!(device.listen_port, Some(51820));
        let (peer_key, peer) = device.peers.iter().next().unwrap();
        assert_eq!(peer.preshared_key, None);
        assert_eq!(peer.persistent_keepalive, None);
        assert_eq!(peer.endpoint, Some("[fd00::1]:51820".parse().unwrap()));
        assert_eq!(peer.allowed_ips.len(), 2);
        let stat = reply.device.stats[peer_key];
        assert_eq!((stat.rx_bytes, stat.tx_bytes), (20, 10));
        assert_eq!(
            stat.latest_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );

        // boringtun: own_public_key, and an age where a time should be.
        let text =
            format!("own_public_key={key}\npublic_key={key}\nlast_handshake_time_sec=3\nerrno=0\n");
        let reply = parse(&text).unwrap();
        assert!(reply.own_public_key.is_some());
        assert_eq!(reply.device.config.private_key, None);
        let t = reply
            .device
            .stats
            .values()
            .next()
            .unwrap()
            .latest_handshake
            .unwrap();
        let age = SystemTime::now().duration_since(t).unwrap().as_secs();
        assert!((2..=4).contains(&age), "{age}");
    }

    #[test]
    fn errors_are_reported() {
        let err = parse("errno=19\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(19));
        assert!(parse("public_key=zz\n").is_err());
        assert!(parse("garbage\n").is_err());
    }
}
