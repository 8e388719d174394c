//! The cross-platform WireGuard configuration protocol over a UAPI socket (`get=1`, `set=1`),
//! for the userspace and embedded backends.
//!
//! We speak it ourselves rather than through `wireguard-control`, whose userspace side prints to
//! stdout (unknown keys such as boringtun's `own_public_key`, and errors), cannot represent a
//! device that reports only its public key, has no timeouts (a wedged device would hang the
//! reconciler) and reduces errors to "other error". Every request here has a 5 s timeout.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use nix::errno::Errno;
use wormhole_core::{DeviceChange, PeerField};
use wormhole_core::{DeviceState, ObservedDevice, PeerConfig, PeerStats};
use wormhole_core::{PresharedKey, PrivateKey, PublicKey};

/// What a `get=1` returned.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    /// The device.
    pub(crate) device: ObservedDevice,
    /// `own_public_key`, which boringtun reports instead of the private key.
    pub(crate) own_public_key: Option<PublicKey>,
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
pub(crate) fn parse(text: &str) -> std::io::Result<Reply> {
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
pub(crate) fn get(path: &Path) -> std::io::Result<Reply> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    get_over(&stream)
}

/// Every request's limit: a wedged device must not hang the reconciler.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `get=1` over a connected `stream` and parses the reply. The stream may carry more
/// requests afterwards (the embedded device's private socket does).
pub(crate) fn get_over(stream: &UnixStream) -> std::io::Result<Reply> {
    let reply = exchange(stream, b"get=1\n\n")?;
    let text =
        std::str::from_utf8(&reply).map_err(|_| invalid("UAPI reply is not UTF-8".into()))?;
    parse(text)
}

/// Serves the UAPI socket at `path` for a device we reach over `device` (the embedded device's
/// private socket), so `wg show` and `wg set` work on it as on any WireGuard interface: each
/// connection's one request is passed through and its reply passed back (both wiped after).
/// Returns when `device` is gone (checked at each connection; [`stop_serving`] makes one).
pub(crate) fn serve(
    listener: std::os::unix::net::UnixListener,
    device: std::sync::Weak<std::sync::Mutex<UnixStream>>,
) {
    for conn in listener.incoming() {
        let Some(device) = device.upgrade() else {
            return;
        };
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(TIMEOUT));
        let _ = conn.set_write_timeout(Some(TIMEOUT));
        // A request ends with an empty line.
        let mut request = zeroize::Zeroizing::new(String::new());
        let mut reader = BufReader::new(&conn);
        let complete = loop {
            let before = request.len();
            match reader.read_line(&mut request) {
                Ok(0) | Err(_) => break false,
                Ok(_) if request[before..].trim().is_empty() => break true,
                Ok(_) => {}
            }
        };
        if !complete || !(request.starts_with("get=1\n") || request.starts_with("set=1\n")) {
            let _ = conn.write_all(errno_reply(Errno::EINVAL).as_bytes());
            continue;
        }
        if changes_listen_port(&request) {
            // boringtun can index out of bounds when its port changes under traffic.
            tracing::warn!(
                "refused a UAPI request changing the embedded device's listen port: set --listen-port instead"
            );
            let _ = conn.write_all(errno_reply(Errno::EPERM).as_bytes());
            continue;
        }
        let request = if request.starts_with("set=1\n") {
            defuse_for_boringtun(&request)
        } else {
            request
        };
        let reply = exchange(&device.lock().unwrap(), request.as_bytes());
        let _ = match reply {
            Ok(reply) => conn.write_all(&reply),
            Err(_) => conn.write_all(errno_reply(Errno::EIO).as_bytes()),
        };
    }
}

/// A reply carrying only `errno`, for a request [`serve`] answers itself: `EINVAL` for a
/// malformed one, `EPERM` for a refused one, `EIO` when the device did not answer.
fn errno_reply(errno: Errno) -> String {
    format!("errno={}\n\n", errno as i32)
}

/// A `set=1` request from outside (`wg set` through [`serve`]) made safe for boringtun, which
/// panics on any change to a peer it already has: every peer section that does not remove its
/// peer is preceded by a removal of it, so it becomes remove + add. Fields the request does not
/// name are dropped with the old peer; the agent's next pass repairs what it owns.
pub(crate) fn defuse_for_boringtun(request: &str) -> zeroize::Zeroizing<String> {
    let mut out = zeroize::Zeroizing::new(String::with_capacity(request.len() * 2));
    let mut lines = request.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(key) = line.strip_prefix("public_key=") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let mut section = vec![line];
        while let Some(next) = lines.next_if(|l| !l.starts_with("public_key=") && !l.is_empty()) {
            section.push(next);
        }
        if !section.contains(&"remove=true") {
            out.push_str(&format!("public_key={key}\nremove=true\n"));
        }
        for l in section {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out
}

/// A `set=1` request from outside that changes the listen port: refused on the embedded device
/// (boringtun has a race there that panics under traffic; the agent sets the port only on a
/// device it has just created).
fn changes_listen_port(request: &str) -> bool {
    request.starts_with("set=1\n") && request.lines().any(|l| l.starts_with("listen_port="))
}

/// Wakes [`serve`] at `path` so it notices its device is gone, and removes the socket.
pub(crate) fn stop_serving(path: &Path) {
    let _ = UnixStream::connect(path);
    let _ = std::fs::remove_file(path);
}

/// Sends `request` over `stream` and returns the reply through its `errno=` line and the empty
/// line after it, in a buffer that is wiped when dropped (a reply may hold the private key).
fn exchange(stream: &UnixStream, request: &[u8]) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut stream = stream;
    stream.write_all(request)?;
    let mut reply = zeroize::Zeroizing::new(Vec::with_capacity(16 * 1024));
    let mut chunk = zeroize::Zeroizing::new([0u8; 8 * 1024]);
    while !ends_with_errno_line(&reply) {
        let n = stream.read(&mut chunk[..])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the device closed its UAPI socket before answering (did it stop?)",
            ));
        }
        if reply.len() + n > reply.capacity() {
            let mut bigger = zeroize::Zeroizing::new(Vec::with_capacity(reply.capacity() * 2 + n));
            bigger.extend_from_slice(&reply);
            reply = bigger;
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    // A reply left over from an earlier request on a shared stream starts with an empty line.
    while reply.first() == Some(&b'\n') {
        reply.remove(0);
    }
    if !reply.ends_with(b"\n\n") {
        reply.push(b'\n');
    }
    Ok(reply)
}

/// The reply so far holds a complete `errno=N` line (the last line of every reply).
fn ends_with_errno_line(reply: &[u8]) -> bool {
    let Some(end) = reply.iter().rposition(|&b| b == b'\n') else {
        return false;
    };
    reply[..end]
        .split(|&b| b == b'\n')
        .any(|line| line.starts_with(b"errno="))
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
        assert_eq!(err.raw_os_error(), Some(Errno::ENODEV as i32));
        assert!(parse("public_key=zz\n").is_err());
        assert!(parse("garbage\n").is_err());
    }
}

/// Lowercase hex of a key, as the protocol wants it.
fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn peer_lines(out: &mut String, key: &PublicKey, fields: &[PeerField]) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "public_key={}", hex(key.as_bytes()));
    for field in fields {
        match field {
            PeerField::Endpoint(e) => {
                let _ = writeln!(out, "endpoint={e}");
            }
            PeerField::AllowedIps(ips) => {
                out.push_str("replace_allowed_ips=true\n");
                for ip in ips {
                    let _ = writeln!(out, "allowed_ip={ip}");
                }
            }
            PeerField::Keepalive(k) => {
                let _ = writeln!(out, "persistent_keepalive_interval={}", k.unwrap_or(0));
            }
            PeerField::PresharedKey(k) => {
                let bytes = k.as_ref().map_or([0; 32], |k| *k.secret_bytes());
                let _ = writeln!(out, "preshared_key={}", hex(&bytes));
            }
        }
    }
}

/// The fields that set a peer up from nothing.
pub(crate) fn fields_of(config: &PeerConfig) -> Vec<PeerField> {
    let mut fields = vec![PeerField::AllowedIps(config.allowed_ips.clone())];
    fields.extend(config.endpoint.map(PeerField::Endpoint));
    fields.extend(
        config
            .persistent_keepalive
            .map(|k| PeerField::Keepalive(Some(k))),
    );
    fields.extend(
        config
            .preshared_key
            .clone()
            .map(|k| PeerField::PresharedKey(Some(k))),
    );
    fields
}

/// Writes the line of a device-level change (key, port); false for peer changes.
fn device_line(out: &mut String, change: &DeviceChange) -> bool {
    use std::fmt::Write as _;
    match change {
        DeviceChange::SetPrivateKey(k) => {
            let _ = writeln!(out, "private_key={}", hex(k.secret_bytes()));
        }
        DeviceChange::SetListenPort(p) => {
            let _ = writeln!(out, "listen_port={p}");
        }
        _ => return false,
    }
    true
}

/// The body of a `set=1` request carrying `changes` (holds secrets: zeroized on drop).
pub(crate) fn set_request(changes: &[DeviceChange]) -> zeroize::Zeroizing<String> {
    use std::fmt::Write as _;
    let mut out = zeroize::Zeroizing::new(String::from("set=1\n"));
    for change in changes {
        if device_line(&mut out, change) {
            continue;
        }
        match change {
            DeviceChange::SetPrivateKey(_) | DeviceChange::SetListenPort(_) => {}
            DeviceChange::RemovePeer(k) => {
                let _ = writeln!(out, "public_key={}\nremove=true", hex(k.as_bytes()));
            }
            DeviceChange::UpdatePeer(k, fields) => peer_lines(&mut out, k, fields),
            DeviceChange::AddPeer(k, config) => peer_lines(&mut out, k, &fields_of(config)),
        }
    }
    out.push('\n');
    out
}

/// [`set_request`] for boringtun 0.7, whose parser carries a peer section's `remove`,
/// `endpoint`, keepalive and pre-shared key over into the next section: updates become remove +
/// add ([`without_updates`]), every added peer states each field (keepalive 0 and an all-zero
/// key mean "none" to WireGuard), removals come first and peers without an endpoint before any
/// that sets one, so nothing is inherited.
pub(crate) fn boringtun_request(
    changes: &[DeviceChange],
    current: &DeviceState,
) -> zeroize::Zeroizing<String> {
    use std::fmt::Write as _;
    let changes = without_updates(changes, current);
    let mut out = zeroize::Zeroizing::new(String::from("set=1\n"));
    let mut removals = String::new();
    let mut additions: Vec<(bool, String)> = Vec::new();
    for change in &changes {
        if device_line(&mut out, change) {
            continue;
        }
        match change {
            DeviceChange::SetPrivateKey(_) | DeviceChange::SetListenPort(_) => {}
            DeviceChange::RemovePeer(k) => {
                let _ = writeln!(removals, "public_key={}\nremove=true", hex(k.as_bytes()));
            }
            DeviceChange::AddPeer(k, config) => {
                // boringtun panics (aborting the agent) on an add for a peer it already has:
                // never let that depend on our picture of the device being current.
                if !changes.contains(&DeviceChange::RemovePeer(*k)) {
                    let _ = writeln!(removals, "public_key={}\nremove=true", hex(k.as_bytes()));
                }
                let mut section = String::new();
                let mut fields = vec![
                    PeerField::AllowedIps(config.allowed_ips.clone()),
                    PeerField::Keepalive(config.persistent_keepalive),
                    PeerField::PresharedKey(config.preshared_key.clone()),
                ];
                fields.extend(config.endpoint.map(PeerField::Endpoint));
                peer_lines(&mut section, k, &fields);
                section.push_str("remove=false\n");
                additions.push((config.endpoint.is_some(), section));
            }
            DeviceChange::UpdatePeer(..) => unreachable!("without_updates removed updates"),
        }
    }
    additions.sort_by_key(|(has_endpoint, _)| *has_endpoint);
    out.push_str(&removals);
    for (_, mut section) in additions {
        out.push_str(&section);
        zeroize::Zeroize::zeroize(&mut section);
    }
    out.push('\n');
    out
}

/// Sends one `set=1` request (from [`set_request`] or [`boringtun_request`]) to the socket at
/// `path`.
pub(crate) fn set(path: &Path, request: &str) -> std::io::Result<()> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    set_over(&stream, request)
}

/// Sends one `set=1` request over a connected `stream` (which may carry more afterwards).
pub(crate) fn set_over(stream: &UnixStream, request: &str) -> std::io::Result<()> {
    let reply = exchange(stream, request.as_bytes())?;
    let text = String::from_utf8_lossy(&reply);
    let errno = text.lines().find_map(|l| l.strip_prefix("errno="));
    match errno.map(str::parse::<i32>) {
        Some(Ok(0)) => Ok(()),
        Some(Ok(errno)) => Err(std::io::Error::from_raw_os_error(errno)),
        _ => Err(invalid(format!(
            "unexpected UAPI reply {:?} (did the device crash?)",
            text.trim()
        ))),
    }
}

/// boringtun cannot modify a peer in place (it panics): an update becomes remove + add with
/// the peer's merged configuration, which restarts that peer's session only.
pub(crate) fn without_updates(
    changes: &[DeviceChange],
    current: &DeviceState,
) -> Vec<DeviceChange> {
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        match change {
            DeviceChange::UpdatePeer(key, fields) => {
                let mut config = current.peers.get(key).cloned().unwrap_or_default();
                for field in fields {
                    match field {
                        PeerField::Endpoint(e) => config.endpoint = Some(*e),
                        PeerField::AllowedIps(ips) => config.allowed_ips = ips.clone(),
                        PeerField::Keepalive(k) => config.persistent_keepalive = *k,
                        PeerField::PresharedKey(k) => config.preshared_key = k.clone(),
                    }
                }
                out.push(DeviceChange::RemovePeer(*key));
                out.push(DeviceChange::AddPeer(*key, config));
            }
            other => out.push(other.clone()),
        }
    }
    out
}

#[cfg(test)]
mod set_tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PrivateKey::from_bytes([n; 32]).public_key()
    }

    #[test]
    fn set_requests_name_only_what_changes() {
        let net: IpNet = "10.99.2.0/24".parse().unwrap();
        let text = set_request(&[
            DeviceChange::SetListenPort(51820),
            DeviceChange::RemovePeer(key(1)),
            DeviceChange::UpdatePeer(
                key(2),
                vec![PeerField::AllowedIps(vec![net]), PeerField::Keepalive(None)],
            ),
        ]);
        let k1 = hex(key(1).as_bytes());
        let k2 = hex(key(2).as_bytes());
        assert_eq!(
            *text,
            format!(
                "set=1\nlisten_port=51820\npublic_key={k1}\nremove=true\npublic_key={k2}\n\
                 replace_allowed_ips=true\nallowed_ip=10.99.2.0/24\npersistent_keepalive_interval=0\n\n"
            )
        );
        let psk = PresharedKey::from_bytes([7; 32]);
        let add = set_request(&[DeviceChange::AddPeer(
            key(3),
            PeerConfig {
                endpoint: Some("[fd00::1]:51820".parse().unwrap()),
                allowed_ips: vec![net],
                persistent_keepalive: Some(25),
                preshared_key: Some(psk),
            },
        )]);
        assert!(add.contains("endpoint=[fd00::1]:51820\n"), "{}", *add);
        assert!(add.contains(&format!("preshared_key={}\n", "07".repeat(32))));
        assert!(add.contains("persistent_keepalive_interval=25\n"));
    }

    #[test]
    fn outside_set_requests_cannot_make_boringtun_panic() {
        let k = hex(key(2).as_bytes());
        let request = format!(
            "set=1\nprivate_key={k}\npublic_key={k}\nallowed_ip=10.99.2.0/24\n\
             public_key={k}\nremove=true\npublic_key={k}\nendpoint=192.0.2.1:1\n\n"
        );
        let got = defuse_for_boringtun(&request);
        assert_eq!(
            got.as_str(),
            format!(
                "set=1\nprivate_key={k}\npublic_key={k}\nremove=true\npublic_key={k}\n\
                 allowed_ip=10.99.2.0/24\npublic_key={k}\nremove=true\npublic_key={k}\n\
                 remove=true\npublic_key={k}\nendpoint=192.0.2.1:1\n\n"
            )
        );
    }

    #[test]
    fn errno_replies_are_linux_errnos() {
        // What `wg` decodes: the numbers are Linux's on every architecture Wormhole runs on.
        assert_eq!(errno_reply(Errno::EINVAL), "errno=22\n\n");
        assert_eq!(errno_reply(Errno::EPERM), "errno=1\n\n");
        assert_eq!(errno_reply(Errno::EIO), "errno=5\n\n");
    }

    #[test]
    fn outside_listen_port_changes_are_refused() {
        assert!(changes_listen_port("set=1\nlisten_port=51821\n\n"));
        assert!(!changes_listen_port("get=1\n\n"));
        assert!(!changes_listen_port(
            "set=1\npublic_key=00\nremove=true\n\n"
        ));
    }

    #[test]
    fn boringtun_adds_are_removals_first() {
        // Even when our picture says the peer is absent (a stale picture must not abort us).
        let add = DeviceChange::AddPeer(key(3), PeerConfig::default());
        let request = boringtun_request(&[add], &DeviceState::default());
        let k = hex(key(3).as_bytes());
        let remove = request
            .find(&format!("public_key={k}\nremove=true"))
            .expect("no removal");
        let add = request
            .find(&format!("public_key={k}\nallowed_ip"))
            .or_else(|| request.rfind(&format!("public_key={k}\n")))
            .unwrap();
        assert!(remove < add, "{}", request.as_str());
    }

    #[test]
    fn boringtun_requests_leave_nothing_to_inherit() {
        let mut current = DeviceState::default();
        current.peers.insert(
            key(2),
            PeerConfig {
                allowed_ips: vec!["10.99.2.0/24".parse().unwrap()],
                ..Default::default()
            },
        );
        let with_endpoint = PeerConfig {
            endpoint: Some("192.168.77.4:51820".parse().unwrap()),
            allowed_ips: vec!["10.99.4.0/24".parse().unwrap()],
            persistent_keepalive: Some(25),
            preshared_key: Some(PresharedKey::from_bytes([7; 32])),
        };
        let text = boringtun_request(
            &[
                DeviceChange::AddPeer(key(4), with_endpoint),
                DeviceChange::UpdatePeer(key(2), vec![PeerField::Keepalive(Some(10))]),
                DeviceChange::RemovePeer(key(1)),
            ],
            &current,
        );
        let all: Vec<&str> = text.split("public_key=").skip(1).collect();
        assert_eq!(all.len(), 5, "{}", *text);
        let (k1, k2, k4) = (
            hex(key(1).as_bytes()),
            hex(key(2).as_bytes()),
            hex(key(4).as_bytes()),
        );
        // Removals first (1, 2's half of its update, and 4 before its add), then 2 (no
        // endpoint), then 4.
        let (removals, sections) = all.split_at(3);
        let mut removed: Vec<&str> = removals.iter().map(|s| &s[..64]).collect();
        removed.sort();
        let mut want = vec![k1.as_str(), k2.as_str(), k4.as_str()];
        want.sort();
        assert_eq!(removed, want, "{}", *text);
        assert!(removals.iter().all(|s| s.contains("remove=true")));
        assert!(sections[0].starts_with(&k2), "{}", *text);
        assert!(sections[1].starts_with(&k4), "{}", *text);
        for added in sections {
            for field in [
                "remove=false",
                "replace_allowed_ips=true",
                "persistent_keepalive_interval=",
                "preshared_key=",
            ] {
                assert!(added.contains(field), "{field} missing in {added}");
            }
        }
        assert!(
            sections[0].contains("persistent_keepalive_interval=10")
                && !sections[0].contains("endpoint=")
        );
        assert!(sections[0].contains(&format!("preshared_key={}", "0".repeat(64))));
        assert!(sections[1].contains("endpoint=192.168.77.4:51820"));
    }

    #[test]
    fn updates_become_remove_and_add_with_the_merged_config() {
        let mut current = DeviceState::default();
        let endpoint: SocketAddr = "192.168.77.2:51820".parse().unwrap();
        current.peers.insert(
            key(2),
            PeerConfig {
                endpoint: Some(endpoint),
                allowed_ips: vec!["10.99.2.0/24".parse().unwrap()],
                ..Default::default()
            },
        );
        let changes = without_updates(
            &[
                DeviceChange::SetListenPort(1),
                DeviceChange::UpdatePeer(key(2), vec![PeerField::Keepalive(Some(25))]),
            ],
            &current,
        );
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[1], DeviceChange::RemovePeer(key(2)));
        let DeviceChange::AddPeer(k, config) = &changes[2] else {
            panic!("{changes:?}")
        };
        assert_eq!(*k, key(2));
        assert_eq!(config.endpoint, Some(endpoint), "unchanged fields are kept");
        assert_eq!(config.persistent_keepalive, Some(25));
        assert_eq!(config.allowed_ips.len(), 1);
    }
}
