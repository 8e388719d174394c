//! The cross-platform WireGuard configuration protocol over a UAPI socket (`get=1`, `set=1`),
//! for the userspace and embedded backends.
//!
//! We speak it ourselves rather than through `wireguard-control`, whose userspace side prints to
//! stdout (unknown keys such as boringtun's `own_public_key`, and errors), cannot represent a
//! device that reports only its public key, has no timeouts (a wedged device would hang the
//! reconciler) and reduces errors to "other error". Every request here has a 5 s timeout.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
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

/// What the UAPI server allows its clients (the socket is `0600`: they are root, but a hung or
/// buggy client must not take the device's socket away from the others, nor its memory).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeLimits {
    /// The largest request read, in bytes; a longer one is refused (`EMSGSIZE`). `wg setconf`
    /// writes about 270 bytes a peer: 8 MiB holds 30,000 peers.
    pub(crate) max_request: usize,
    /// Clients served at once; more wait in the kernel's queue (for at most [`Self::timeout`]
    /// each of those ahead of them takes).
    pub(crate) clients: usize,
    /// The longest a client may take to send its request, and again to read the reply.
    pub(crate) timeout: Duration,
}

impl ServeLimits {
    /// What the embedded device's socket allows.
    pub(crate) const DEFAULT: ServeLimits = ServeLimits {
        max_request: 8 << 20,
        clients: 4,
        timeout: TIMEOUT,
    };
}

/// Why a request was not read.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    /// Longer than [`ServeLimits::max_request`].
    TooLarge,
    /// The client stopped, or took too long, before the empty line that ends a request.
    Incomplete,
}

/// Binds a UAPI socket at `path` that never exists with a mode other than `0600`: it is bound
/// in a private (`0700`) directory beside `path`, made `0600` there, and renamed into place
/// (replacing a stale socket). What an earlier crash left of such a directory is removed.
pub(crate) fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a socket path in a directory", path.display()),
        ));
    };
    let prefix = format!(".{}.bind-", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    // Created 0700 (the umask can only take bits away), under a name nobody could have made
    // ready for us (`create` fails if it exists): nobody else can reach what is in it.
    let private = dir.join(format!(
        "{prefix}{:016x}",
        rand_core::RngCore::next_u64(&mut rand_core::OsRng)
    ));
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    }
    let staged = private.join("s");
    let bound = std::os::unix::net::UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Serves the UAPI socket at `path` for the embedded device, so `wg show` and `wg set` work on
/// it as on any WireGuard interface: up to [`ServeLimits::clients`] clients at once, each
/// connection's one request read (at most [`ServeLimits::max_request`] bytes, within
/// [`ServeLimits::timeout`]; wiped after) and `answer` giving its reply (an incomplete request
/// is passed as ""), one `answer` at a time. Returns when `serving` says the device is gone
/// (checked at each connection, [`stop_serving`] makes one), once the clients being served are
/// done.
pub(crate) fn serve(
    listener: std::os::unix::net::UnixListener,
    limits: ServeLimits,
    serving: impl Fn() -> bool,
    answer: impl Fn(&str) -> Option<zeroize::Zeroizing<String>> + Sync,
) {
    use std::sync::{Condvar, Mutex};
    let clients = limits.clients.max(1);
    let active = Mutex::new(0usize);
    let freed = Condvar::new();
    // Requests are read in parallel, answered one at a time: two `wg set` never interleave.
    let answering = Mutex::new(());
    std::thread::scope(|scope| {
        loop {
            {
                let mut n = active.lock().unwrap_or_else(|e| e.into_inner());
                while *n >= clients {
                    n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
                }
            }
            let conn = match listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // Out of file descriptors, say: not a reason to stop, nor to spin.
                    tracing::debug!(error = %e, "UAPI accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if !serving() {
                return;
            }
            *active.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            let (active, freed, answering, answer) = (&active, &freed, &answering, &answer);
            let spawned = std::thread::Builder::new()
                .name("wormhole-uapi-client".into())
                .spawn_scoped(scope, move || {
                    serve_one(&conn, limits, |request| {
                        let _one = answering.lock().unwrap_or_else(|e| e.into_inner());
                        answer(request)
                    });
                    drop(conn);
                    *active.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                    freed.notify_one();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a thread for a UAPI client");
                *active.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            }
        }
    });
}

/// Reads one request from `conn`, and writes what `answer` gives (nothing for `None`).
fn serve_one(
    conn: &UnixStream,
    limits: ServeLimits,
    answer: impl FnOnce(&str) -> Option<zeroize::Zeroizing<String>>,
) {
    let reply = match read_request(conn, limits) {
        Ok(request) => answer(&request),
        Err(Unread::Incomplete) => answer(""),
        Err(Unread::TooLarge) => {
            tracing::warn!(
                max_bytes = limits.max_request,
                "a UAPI request longer than the limit was refused (EMSGSIZE)"
            );
            Some(errno_reply(Errno::EMSGSIZE))
        }
    };
    if let Some(reply) = reply {
        let _ = write_within(conn, reply.as_bytes(), limits.timeout);
    }
}

/// The request on `conn`: everything through the first empty line, read within
/// [`ServeLimits::timeout`] into a buffer of at most [`ServeLimits::max_request`] bytes that
/// is wiped when dropped (a request may hold keys), however the client sends it.
fn read_request(
    conn: &UnixStream,
    limits: ServeLimits,
) -> Result<zeroize::Zeroizing<String>, Unread> {
    use zeroize::Zeroize as _;
    let deadline = std::time::Instant::now() + limits.timeout;
    let mut request = zeroize::Zeroizing::new(Vec::with_capacity(4096.min(limits.max_request)));
    let mut chunk = zeroize::Zeroizing::new([0u8; 8 * 1024]);
    let end = loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(Unread::Incomplete)?;
        conn.set_read_timeout(Some(left))
            .map_err(|_| Unread::Incomplete)?;
        let n = match (&*conn).read(&mut chunk[..]) {
            Ok(0) | Err(_) => return Err(Unread::Incomplete),
            Ok(n) => n,
        };
        if request.len() + n > limits.max_request {
            return Err(Unread::TooLarge);
        }
        // Grown by hand into a new wiped buffer: a reallocation would leave a copy behind.
        if request.len() + n > request.capacity() {
            let size = (request.capacity() * 2)
                .max(request.len() + n)
                .min(limits.max_request);
            let mut bigger = zeroize::Zeroizing::new(Vec::with_capacity(size));
            bigger.extend_from_slice(&request);
            request = bigger;
        }
        // The empty line may start in what was read before (its first `\n`).
        let from = request.len().saturating_sub(1);
        request.extend_from_slice(&chunk[..n]);
        if request.first() == Some(&b'\n') {
            break 1;
        }
        if let Some(at) = request[from..].windows(2).position(|w| w == b"\n\n") {
            break from + at + 2;
        }
    };
    request.truncate(end);
    match String::from_utf8(std::mem::take(&mut *request)) {
        Ok(text) => Ok(zeroize::Zeroizing::new(text)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(Unread::Incomplete)
        }
    }
}

/// Writes `bytes` to `conn` within `limit` in all, however slowly the client reads.
fn write_within(conn: &UnixStream, mut bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    while !bytes.is_empty() {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        conn.set_write_timeout(Some(left))?;
        match (&*conn).write(bytes) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A reply carrying only `errno` (0: success).
pub(crate) fn errno_reply(errno: Errno) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!("errno={}\n\n", errno as i32))
}

/// The `get=1` reply describing `device`, as wireguard-go writes it (holds the private key:
/// zeroized on drop).
pub(crate) fn format_get(device: &ObservedDevice) -> zeroize::Zeroizing<String> {
    use std::fmt::Write as _;
    let mut out =
        zeroize::Zeroizing::new(String::with_capacity(256 * (1 + device.config.peers.len())));
    let config = &device.config;
    if let Some(k) = &config.private_key {
        let _ = writeln!(out, "private_key={}", hex(k.secret_bytes()));
    }
    if let Some(p) = config.listen_port {
        let _ = writeln!(out, "listen_port={p}");
    }
    for (key, peer) in &config.peers {
        let _ = writeln!(out, "public_key={}", hex(key.as_bytes()));
        let psk = peer
            .preshared_key
            .as_ref()
            .map_or([0; 32], |k| *k.secret_bytes());
        let _ = writeln!(out, "preshared_key={}", hex(&psk));
        out.push_str("protocol_version=1\n");
        if let Some(e) = peer.endpoint {
            let _ = writeln!(out, "endpoint={e}");
        }
        let stats = device.stats.get(key).copied().unwrap_or_default();
        let since = stats
            .latest_handshake
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "last_handshake_time_sec={}\nlast_handshake_time_nsec={}\ntx_bytes={}\nrx_bytes={}\n\
             persistent_keepalive_interval={}",
            since.as_secs(),
            since.subsec_nanos(),
            stats.tx_bytes,
            stats.rx_bytes,
            peer.persistent_keepalive.unwrap_or(0)
        );
        for ip in &peer.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

/// One peer section of a `set=1` request.
struct Section {
    key: PublicKey,
    remove: bool,
    update_only: bool,
    replace_allowed_ips: bool,
    allowed_ips: Vec<IpNet>,
    fields: Vec<PeerField>,
}

/// A `set=1` request from outside (`wg set`, `wg setconf`) as changes to apply to a device whose
/// configuration is `current`: what the protocol means, with peers changed in place (fields the
/// request does not name are kept). `replace_peers=true` removes the peers the request does not
/// name. Malformed input is `EINVAL`; `fwmark` is not supported (`EOPNOTSUPP`, unless 0).
pub(crate) fn parse_set(request: &str, current: &DeviceState) -> Result<Vec<DeviceChange>, Errno> {
    let mut changes = Vec::new();
    let mut replace_peers = false;
    let mut sections: Vec<Section> = Vec::new();
    let bad = |_| Errno::EINVAL;
    for line in request.lines().skip(1) {
        if line.is_empty() {
            break;
        }
        let (key, value) = line.split_once('=').ok_or(Errno::EINVAL)?;
        match (key, sections.last_mut()) {
            ("private_key", None) => {
                let bytes = hex32(value).map_err(bad)?;
                if bytes == [0; 32] {
                    return Err(Errno::EINVAL);
                }
                changes.push(DeviceChange::SetPrivateKey(PrivateKey::from_bytes(bytes)));
            }
            ("listen_port", None) => changes.push(DeviceChange::SetListenPort(
                value.parse().map_err(|_| Errno::EINVAL)?,
            )),
            ("fwmark", None) => {
                if value != "0" {
                    return Err(Errno::EOPNOTSUPP);
                }
            }
            ("replace_peers", None) => replace_peers = value == "true",
            ("public_key", _) => sections.push(Section {
                key: PublicKey::from_bytes(hex32(value).map_err(bad)?),
                remove: false,
                update_only: false,
                replace_allowed_ips: false,
                allowed_ips: Vec::new(),
                fields: Vec::new(),
            }),
            ("remove", Some(s)) => s.remove = value == "true",
            ("update_only", Some(s)) => s.update_only = value == "true",
            ("preshared_key", Some(s)) => {
                let bytes = hex32(value).map_err(bad)?;
                s.fields.push(PeerField::PresharedKey(
                    (bytes != [0; 32]).then(|| PresharedKey::from_bytes(bytes)),
                ));
            }
            ("endpoint", Some(s)) => s.fields.push(PeerField::Endpoint(
                value.parse().map_err(|_| Errno::EINVAL)?,
            )),
            ("persistent_keepalive_interval", Some(s)) => {
                let k: u16 = value.parse().map_err(|_| Errno::EINVAL)?;
                s.fields
                    .push(PeerField::Keepalive(Some(k).filter(|&k| k != 0)));
            }
            ("replace_allowed_ips", Some(s)) => {
                if value == "true" {
                    s.replace_allowed_ips = true;
                    s.allowed_ips.clear();
                }
            }
            ("allowed_ip", Some(s)) => {
                let net: IpNet = value.parse().map_err(|_| Errno::EINVAL)?;
                s.allowed_ips.push(net.trunc());
            }
            ("protocol_version", _) => {}
            _ => return Err(Errno::EINVAL),
        }
    }
    let named: std::collections::BTreeSet<PublicKey> = sections.iter().map(|s| s.key).collect();
    if replace_peers {
        for key in current.peers.keys().filter(|k| !named.contains(k)) {
            changes.push(DeviceChange::RemovePeer(*key));
        }
    }
    for mut s in sections {
        let existing = current.peers.get(&s.key);
        if s.remove {
            if existing.is_some() {
                changes.push(DeviceChange::RemovePeer(s.key));
            }
            continue;
        }
        if s.replace_allowed_ips || !s.allowed_ips.is_empty() {
            let mut ips = if s.replace_allowed_ips {
                Vec::new()
            } else {
                existing.map(|p| p.allowed_ips.clone()).unwrap_or_default()
            };
            for ip in s.allowed_ips {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            s.fields.push(PeerField::AllowedIps(ips));
        }
        match existing {
            Some(_) => changes.push(DeviceChange::UpdatePeer(s.key, s.fields)),
            None if s.update_only => {}
            None => {
                let mut config = PeerConfig::default();
                for field in s.fields {
                    match field {
                        PeerField::Endpoint(e) => config.endpoint = Some(e),
                        PeerField::AllowedIps(ips) => config.allowed_ips = ips,
                        PeerField::Keepalive(k) => config.persistent_keepalive = k,
                        PeerField::PresharedKey(k) => config.preshared_key = k,
                    }
                }
                changes.push(DeviceChange::AddPeer(s.key, config));
            }
        }
    }
    Ok(changes)
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
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Binding again and again while another thread looks at the path as fast as it can: the
    /// socket is never seen with a mode other than 0600 (bound in place and chmod-ed after, it
    /// was there for a moment with the umask's mode, 0755 under the usual 022).
    #[test]
    fn the_socket_never_exists_with_another_mode_than_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg-test.sock");
        let done = Arc::new(AtomicBool::new(false));
        let (seen, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let watcher = {
            let (path, done, seen, bad) = (path.clone(), done.clone(), seen.clone(), bad.clone());
            std::thread::spawn(move || {
                let mut modes = std::collections::BTreeSet::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(meta) = std::fs::symlink_metadata(&path) {
                        seen.fetch_add(1, Ordering::Relaxed);
                        let mode = meta.permissions().mode() & 0o7777;
                        if !meta.file_type().is_socket() || mode != 0o600 {
                            bad.fetch_add(1, Ordering::Relaxed);
                            modes.insert(format!("{mode:o}"));
                        }
                    }
                }
                modes
            })
        };
        for _ in 0..500 {
            let listener = bind(&path).unwrap();
            drop(listener);
        }
        done.store(true, Ordering::Relaxed);
        let modes = watcher.join().unwrap();
        assert!(
            seen.load(Ordering::Relaxed) > 0,
            "the watcher never saw the socket"
        );
        assert_eq!(
            bad.load(Ordering::Relaxed),
            0,
            "the socket was seen with modes {modes:?} ({} looks in all)",
            seen.load(Ordering::Relaxed)
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        // Nothing left beside it but the socket.
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["wg-test.sock"]);
        // A private directory left by a crash mid-bind is cleared by the next bind.
        std::fs::create_dir(dir.path().join(".wg-test.sock.bind-crashed")).unwrap();
        drop(bind(&path).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A served socket in a temporary directory: every request's length, and how many are
    /// being answered at once at most.
    struct Served {
        path: std::path::PathBuf,
        stop: Arc<AtomicBool>,
        server: Option<std::thread::JoinHandle<()>>,
        _dir: tempfile::TempDir,
    }

    impl Served {
        fn new(limits: ServeLimits) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.sock");
            let listener = bind(&path).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let server = std::thread::spawn(move || {
                serve(
                    listener,
                    limits,
                    || !flag.load(Ordering::Relaxed),
                    |request| {
                        Some(zeroize::Zeroizing::new(format!(
                            "len={}\nerrno=0\n\n",
                            request.len()
                        )))
                    },
                )
            });
            Served {
                path,
                stop,
                server: Some(server),
                _dir: dir,
            }
        }

        /// Sends `request` and reads the reply to its end.
        fn ask(&self, request: &[u8]) -> String {
            let mut s = UnixStream::connect(&self.path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(request);
            let mut reply = Vec::new();
            let _ = s.read_to_end(&mut reply);
            String::from_utf8_lossy(&reply).into_owned()
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            stop_serving(&self.path);
            if let Some(server) = self.server.take() {
                server.join().unwrap();
            }
        }
    }

    const SMALL: ServeLimits = ServeLimits {
        max_request: 1024,
        clients: 2,
        timeout: Duration::from_millis(1500),
    };

    #[test]
    fn requests_end_at_the_first_empty_line_and_are_bounded() {
        let served = Served::new(SMALL);
        assert_eq!(served.ask(b"get=1\n\n"), "len=7\nerrno=0\n\n");
        // What follows the empty line is not part of the request.
        assert_eq!(served.ask(b"get=1\n\nmore\n\n"), "len=7\nerrno=0\n\n");
        assert_eq!(served.ask(b"\nget=1\n\n"), "len=1\nerrno=0\n\n");
        // Exactly at the limit: read; one byte over: refused.
        let mut at_limit = vec![b'x'; SMALL.max_request - 2];
        at_limit.extend_from_slice(b"\n\n");
        assert_eq!(served.ask(&at_limit), "len=1024\nerrno=0\n\n");
        let mut over = vec![b'x'; SMALL.max_request - 1];
        over.extend_from_slice(b"\n\n");
        assert_eq!(served.ask(&over), "errno=90\n\n");
        // Not UTF-8, or cut short: answered as an empty request.
        assert_eq!(served.ask(b"get=\xff\n\n"), "len=0\nerrno=0\n\n");
        assert_eq!(served.ask(b"get=1\n"), "len=0\nerrno=0\n\n");
    }

    #[test]
    fn a_slow_client_is_cut_at_the_timeout_and_idle_ones_block_nobody() {
        let served = Served::new(SMALL);
        // One client trickles a request a byte at a time, another sends nothing: a third is
        // answered at once all the same.
        let start = std::time::Instant::now();
        let mut slow = UnixStream::connect(&served.path).unwrap();
        let idle = UnixStream::connect(&served.path).unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..40 {
                if slow.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut reply = String::new();
            let _ = slow.read_to_string(&mut reply);
            reply
        });
        std::thread::sleep(Duration::from_millis(100));
        // Both slots are taken: the third waits for the first to be freed, which the timeout
        // bounds.
        assert_eq!(served.ask(b"get=1\n\n"), "len=7\nerrno=0\n\n");
        let took = start.elapsed();
        assert!(
            took < SMALL.timeout + Duration::from_secs(1),
            "answered after {took:?}"
        );
        // The trickling client was cut at the timeout, not after its 4 s.
        assert_eq!(trickle.join().unwrap(), "len=0\nerrno=0\n\n");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        drop(idle);

        // With a free slot, no wait at all.
        let idle = UnixStream::connect(&served.path).unwrap();
        let start = std::time::Instant::now();
        assert_eq!(served.ask(b"get=1\n\n"), "len=7\nerrno=0\n\n");
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        drop(idle);
    }

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

/// Sends one `set=1` request (from [`set_request`]) to the socket at `path`.
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
    fn errno_replies_are_linux_errnos() {
        // What `wg` decodes: the numbers are Linux's on every architecture Wormhole runs on.
        assert_eq!(*errno_reply(Errno::EINVAL), "errno=22\n\n");
        assert_eq!(*errno_reply(Errno::EPERM), "errno=1\n\n");
        assert_eq!(*errno_reply(Errno::EIO), "errno=5\n\n");
    }

    #[test]
    fn outside_set_requests_change_peers_in_place() {
        let (k1, k2, k3) = (
            hex(key(1).as_bytes()),
            hex(key(2).as_bytes()),
            hex(key(3).as_bytes()),
        );
        let mut current = DeviceState::default();
        let net: IpNet = "10.99.2.0/24".parse().unwrap();
        for n in [1, 2] {
            current.peers.insert(
                key(n),
                PeerConfig {
                    allowed_ips: vec![net],
                    ..Default::default()
                },
            );
        }
        // `wg set IFACE peer K2 allowed-ips A,B persistent-keepalive 7` + a removal + an add.
        let request = format!(
            "set=1\nlisten_port=51999\npublic_key={k2}\npersistent_keepalive_interval=7\n\
             replace_allowed_ips=true\nallowed_ip=10.99.2.0/24\nallowed_ip=10.99.200.0/24\n\
             public_key={k1}\nremove=true\npublic_key={k3}\nendpoint=192.0.2.1:1\n\n"
        );
        let changes = parse_set(&request, &current).unwrap();
        let other: IpNet = "10.99.200.0/24".parse().unwrap();
        assert_eq!(
            changes,
            vec![
                DeviceChange::SetListenPort(51999),
                DeviceChange::UpdatePeer(
                    key(2),
                    vec![
                        PeerField::Keepalive(Some(7)),
                        PeerField::AllowedIps(vec![net, other])
                    ]
                ),
                DeviceChange::RemovePeer(key(1)),
                DeviceChange::AddPeer(
                    key(3),
                    PeerConfig {
                        endpoint: Some("192.0.2.1:1".parse().unwrap()),
                        ..Default::default()
                    }
                ),
            ]
        );
        // Without replace_allowed_ips, allowed IPs are added to the peer's; replace_peers removes
        // the peers not named.
        let request =
            format!("set=1\nreplace_peers=true\npublic_key={k2}\nallowed_ip=10.99.200.0/24\n\n");
        let changes = parse_set(&request, &current).unwrap();
        assert_eq!(
            changes,
            vec![
                DeviceChange::RemovePeer(key(1)),
                DeviceChange::UpdatePeer(key(2), vec![PeerField::AllowedIps(vec![net, other])]),
            ]
        );
        assert_eq!(
            parse_set("set=1\nbogus=1\n\n", &current),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            parse_set("set=1\nfwmark=3\n\n", &current),
            Err(Errno::EOPNOTSUPP)
        );
    }

    #[test]
    fn get_replies_read_back() {
        let mut device = ObservedDevice::default();
        device.config.private_key = Some(PrivateKey::from_bytes([9; 32]));
        device.config.listen_port = Some(51820);
        let config = PeerConfig {
            endpoint: Some("[fd00::1]:51820".parse().unwrap()),
            allowed_ips: vec![
                "10.99.2.0/24".parse().unwrap(),
                "fd99:0:0:2::/64".parse().unwrap(),
            ],
            persistent_keepalive: Some(25),
            preshared_key: Some(PresharedKey::from_bytes([7; 32])),
        };
        device.config.peers.insert(key(2), config);
        let stats = PeerStats {
            latest_handshake: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
            rx_bytes: 20,
            tx_bytes: 10,
        };
        device.stats.insert(key(2), stats);
        let text = format_get(&device);
        let back = parse(&text).unwrap().device;
        assert_eq!(back, device, "{}", *text);
    }
}
