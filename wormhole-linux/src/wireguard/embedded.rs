//! [`EmbeddedDevice`]: an in-process gotatun device (feature `embedded`), driven through
//! gotatun's Rust API.
//!
//! Two gotatun 0.10.2 bugs are worked around here (written up for upstream in
//! `GOTATUN-NOTES.md` beside this file):
//!
//! 1. A device built with no peers never binds its UDP socket: `build()` brings the connection up
//!    only when the builder was given peers, and adding peers later does not. We never give the
//!    builder the private key: the key is set through `Device::write` after `build()`, which
//!    brings the connection up (and binds the socket) whether or not there are peers.
//! 2. `Device::wait()` can report a false fatal error ("channel closed") after a listen-port
//!    change under load: the old connection's receive task sees its channel close before it is
//!    aborted. The error is sticky, so `wait()` cannot be trusted after it. We judge the device
//!    dead only when its TUN link is gone (or replaced: another ifindex); a fatal error with the
//!    link in place is logged and ignored.
//! 3. A change that rebinds the same port (a private-key change) can fail with `EADDRINUSE`: the
//!    old connection's UDP socket outlives its stop for a moment. gotatun then has no connection
//!    and nothing retries. We retry the rebind (key set to another and back in one write) for up
//!    to a second; if that fails, the device counts as dead and the next pass creates it again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use async_trait::async_trait;
use futures::FutureExt as _;
use gotatun::device::{DefaultDeviceTransports, Device, DeviceBuilder, Peer};
use gotatun::x25519;
use ipnet::IpNet;
use nix::errno::Errno;
use wormhole_core::{Component, Error, WireGuardDevice};
use wormhole_core::{DeviceChange, DevicePlan, PeerField};
use wormhole_core::{ObservedDevice, PeerConfig, PeerStats};
use wormhole_core::{PresharedKey, PrivateKey, PublicKey};

use super::SOCKET_DIR;

type Gotatun = Device<DefaultDeviceTransports>;

/// Threads of the data plane's own runtime.
const DATA_PLANE_THREADS: usize = 2;

/// `SO_RCVBUF` and `SO_SNDBUF` of the device's UDP socket (what recent wireguard-go asks for;
/// the kernel caps it at `net.core.rmem_max` / `wmem_max`). gotatun leaves the kernel's default
/// (`rmem_default`, 208 KiB here), which one TCP stream through the tunnel overruns: measured,
/// 259,003 datagrams dropped at the receiver's socket (`RcvbufErrors`) in ten 5 s streams, and
/// none with this (BENCHMARKS.md, "Embedded data plane: gotatun").
const UDP_BUFFER_BYTES: usize = 7 << 20;

/// What the reconciler, the UAPI server and the runtime share.
struct Shared {
    iface: String,
    /// The device; `None` once it is being stopped.
    device: tokio::sync::Mutex<Option<Gotatun>>,
    /// The TUN link's index when the device was created.
    ifindex: u32,
    /// gotatun reported a fatal error while its link was still there (bug 2): logged once.
    false_fatal: AtomicBool,
    /// The device is being stopped: the UAPI server stops too.
    stopping: AtomicBool,
    /// gotatun failed to set its connection up again (bug 3) and retries did not help: the data
    /// plane is down, so the device counts as dead.
    disconnected: AtomicBool,
}

impl Shared {
    /// The device still runs: its TUN link is there with the index it was created with. A
    /// fatal error gotatun reports while the link is there is not trusted (bug 2).
    async fn alive(&self) -> bool {
        let link = nix::net::if_::if_nametoindex(self.iface.as_str()).ok() == Some(self.ifindex);
        if !link || self.disconnected.load(Ordering::Relaxed) {
            return false;
        }
        let mut device = self.device.lock().await;
        let Some(device) = device.as_mut() else {
            return false;
        };
        if device.wait().now_or_never().is_some() && !self.false_fatal.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                iface = %self.iface,
                "gotatun reported a fatal error but its link is still there: ignored (a known gotatun bug after a listen-port change)"
            );
        }
        true
    }

    /// The device's state, straight from gotatun (no text round trip).
    async fn observe(&self) -> Option<ObservedDevice> {
        let device = self.device.lock().await;
        let device = device.as_ref()?;
        let (key, port, peers) = device
            .read(async |d| {
                let key = d
                    .private_key()
                    .map(|k| PrivateKey::from_bytes(k.to_bytes()));
                (key, d.listen_port(), d.peers().await)
            })
            .await;
        let now = SystemTime::now();
        let mut observed = ObservedDevice::default();
        observed.config.private_key = key;
        observed.config.listen_port = Some(port).filter(|&p| p != 0);
        for p in peers {
            let key = PublicKey::from_bytes(p.peer.public_key.to_bytes());
            let mut allowed_ips: Vec<IpNet> = p
                .peer
                .allowed_ips
                .iter()
                .filter_map(|n| IpNet::new(n.network(), n.prefix()).ok())
                .map(|n| n.trunc())
                .collect();
            allowed_ips.sort();
            observed.config.peers.insert(
                key,
                PeerConfig {
                    endpoint: p.peer.endpoint,
                    allowed_ips,
                    persistent_keepalive: p.peer.keepalive.filter(|&k| k != 0),
                    preshared_key: p
                        .peer
                        .preshared_key
                        .filter(|k| *k != [0; 32])
                        .map(PresharedKey::from_bytes),
                },
            );
            observed.stats.insert(
                key,
                PeerStats {
                    latest_handshake: p.stats.last_handshake.and_then(|age| now.checked_sub(age)),
                    rx_bytes: p.stats.rx_bytes as u64,
                    tx_bytes: p.stats.tx_bytes as u64,
                },
            );
        }
        Some(observed)
    }

    /// Applies `changes` in one `Device::write`: peers change in place (`modify_peer`), so their
    /// sessions carry on.
    async fn apply(&self, changes: Vec<DeviceChange>) -> std::io::Result<()> {
        let device = self.device.lock().await;
        let device = device
            .as_ref()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        let result = device
            .write(async |w| -> std::io::Result<()> {
                // The key first: gotatun cannot create a peer without it (it panics).
                for change in &changes {
                    if let DeviceChange::SetPrivateKey(k) = change {
                        w.set_private_key(x25519::StaticSecret::from(*k.secret_bytes()))
                            .await;
                    }
                }
                let keyed = w.private_key().is_some();
                for change in changes {
                    match change {
                        DeviceChange::SetPrivateKey(_) => {}
                        // With no key, gotatun's receive task would panic on the rebind this
                        // triggers: the port waits for the key.
                        DeviceChange::SetListenPort(port) if keyed => w.set_listen_port(port),
                        DeviceChange::SetListenPort(_) => return Err(no_key()),
                        DeviceChange::RemovePeer(k) => {
                            w.remove_peer(&x25519::PublicKey::from(*k.as_bytes())).await;
                        }
                        DeviceChange::AddPeer(k, config) => {
                            if !keyed {
                                return Err(no_key());
                            }
                            w.add_or_update_peer(peer(&k, &config)).await;
                        }
                        DeviceChange::UpdatePeer(k, fields) => {
                            let key = x25519::PublicKey::from(*k.as_bytes());
                            let changed = w
                                .modify_peer(&key, |m| {
                                    for field in &fields {
                                        match field {
                                            PeerField::Endpoint(e) => m.set_endpoint(Some(*e)),
                                            PeerField::AllowedIps(ips) => {
                                                m.clear_allowed_ips();
                                                m.add_allowed_ips(ips.iter().map(network));
                                            }
                                            PeerField::Keepalive(k) => m.set_keepalive(*k),
                                            PeerField::PresharedKey(k) => m.set_preshared_key(
                                                k.as_ref().map(|k| *k.secret_bytes()),
                                            ),
                                        }
                                    }
                                })
                                .await;
                            if !changed && keyed {
                                // Gone meanwhile: added with what the change names.
                                let mut config = PeerConfig::default();
                                merge(&mut config, &fields);
                                w.add_peer(peer(&k, &config));
                            }
                        }
                    }
                }
                Ok(())
            })
            .await;
        let mut result = match result {
            Ok(r) => return r,
            Err(e) => e,
        };
        // Bug 3: the rebind after a key change can fail with EADDRINUSE (the old connection's
        // socket outlives its stop for a moment), leaving the device with no connection and
        // nothing to retry: retry the rebind until the old socket is gone.
        for _ in 0..RECONNECT_TRIES {
            if !is_addr_in_use(&result) {
                break;
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
            match reconnect(device).await {
                Ok(()) => return Ok(()),
                Err(e) => result = e,
            }
        }
        // Left without a connection: taken for dead, so the next pass creates it again.
        self.disconnected.store(true, Ordering::Relaxed);
        Err(std::io::Error::other(result.to_string()))
    }
}

/// How often, and how far apart, [`Shared::apply`] retries a rebind that found its port taken.
const RECONNECT_TRIES: usize = 40;
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

fn is_addr_in_use(e: &gotatun::device::Error) -> bool {
    matches!(e, gotatun::device::Error::Bind(io, _) if io.kind() == std::io::ErrorKind::AddrInUse)
}

/// Makes gotatun set its connection up again with the same key and port: its API rebinds only
/// on a change, so the key is set to another one and back within one write (one rebind).
async fn reconnect(device: &Gotatun) -> Result<(), gotatun::device::Error> {
    device
        .write(async |w| {
            if let Some(key) = w.private_key().cloned() {
                let other = PrivateKey::generate();
                w.set_private_key(x25519::StaticSecret::from(*other.secret_bytes()))
                    .await;
                w.set_private_key(key).await;
            }
        })
        .await
}

fn no_key() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "the embedded device has no private key yet",
    )
}

/// `fields` applied onto `config`.
fn merge(config: &mut PeerConfig, fields: &[PeerField]) {
    for field in fields {
        match field {
            PeerField::Endpoint(e) => config.endpoint = Some(*e),
            PeerField::AllowedIps(ips) => config.allowed_ips = ips.clone(),
            PeerField::Keepalive(k) => config.persistent_keepalive = *k,
            PeerField::PresharedKey(k) => config.preshared_key = k.clone(),
        }
    }
}

fn network(net: &IpNet) -> ipnetwork::IpNetwork {
    // Our prefixes are valid by construction (an IpNet's prefix fits its family).
    ipnetwork::IpNetwork::new(net.network(), net.prefix_len()).expect("a valid prefix")
}

fn peer(key: &PublicKey, config: &PeerConfig) -> Peer {
    let mut peer = Peer::new(x25519::PublicKey::from(*key.as_bytes()))
        .with_allowed_ips(config.allowed_ips.iter().map(network));
    peer.endpoint = config.endpoint;
    peer.keepalive = config.persistent_keepalive;
    peer.preshared_key = config.preshared_key.as_ref().map(|k| *k.secret_bytes());
    peer
}

/// A running device: its runtime (threads of its own, so the data plane never waits behind the
/// reconciler's tasks) and what it shares.
struct Running {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        crate::uapi::stop_serving(&self.socket);
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let shared = self.shared.clone();
        // A runtime cannot be dropped (nor blocked on) from async code: stop the device and drop
        // its runtime on a thread of their own, and wait for that so that the TUN link is gone
        // when this returns.
        let stopper = std::thread::Builder::new()
            .name("wormhole-wg-stop".into())
            .spawn(move || {
                runtime.block_on(async {
                    let device = shared.device.lock().await.take();
                    if let Some(device) = device {
                        device.stop().await;
                    }
                });
                drop(runtime);
            });
        if let Ok(stopper) = stopper {
            let _ = stopper.join();
        }
    }
}

/// A WireGuard device running inside this process (gotatun), on any host with `/dev/net/tun`.
///
/// Its data plane lives and dies with this value (and the process): nothing of another
/// process's device is adopted. It runs on a tokio runtime of its own (two threads). Peers
/// change in place, so a changed peer keeps its session; `read` takes the configuration,
/// counters and handshake times from the device itself. `wg show` and `wg set` work on it
/// through `/var/run/wireguard/IFACE.sock`, which this process serves: `get` is answered from
/// the device, and `set` is applied through the same Rust API as the agent's own changes.
pub struct EmbeddedDevice {
    iface: String,
    socket: PathBuf,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for EmbeddedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDevice")
            .field("iface", &self.iface)
            .finish_non_exhaustive()
    }
}

impl EmbeddedDevice {
    /// The embedded device named `iface` (checked as an interface name); it is created by the
    /// first plan that asks for it.
    pub fn new(iface: &str) -> Result<Self, Error> {
        super::check_name(iface)?;
        Ok(EmbeddedDevice {
            iface: iface.to_owned(),
            socket: super::socket_path(iface),
            running: Mutex::new(None),
        })
    }

    /// The running device's shared state and a handle of its runtime.
    fn shared(&self) -> Option<(Arc<Shared>, tokio::runtime::Handle)> {
        let running = self.running.lock().unwrap();
        let r = running.as_ref()?;
        Some((r.shared.clone(), r.runtime.as_ref()?.handle().clone()))
    }

    /// Creates the device (a running one that is still alive is kept).
    async fn create(&self, port: Option<u16>) -> Result<(), Error> {
        if let Some((shared, handle)) = self.shared() {
            let alive = handle
                .spawn(async move { shared.alive().await })
                .await
                .unwrap_or(false);
            if alive {
                return Ok(());
            }
        }
        // The old one goes first (its TUN link and name with it): dropping it blocks.
        let old = self.running.lock().unwrap().take();
        if let Some(old) = old {
            tokio::task::spawn_blocking(move || drop(old))
                .await
                .map_err(|e| crate::backend_error(Component::WireGuard, "stop old device", e))?;
        }
        let fail = |what: String| Error::backend(Component::WireGuard, what);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(DATA_PLANE_THREADS)
            .thread_name("wormhole-wg")
            .enable_all()
            .build()
            .map_err(|e| {
                crate::backend_error(Component::WireGuard, "start the data plane's runtime", e)
            })?;
        let iface = self.iface.clone();
        let device = runtime
            .spawn(async move {
                // No key and no peers here (bug 1): the first write sets the key, which binds.
                DeviceBuilder::new()
                    .with_default_udp()
                    .udp_recv_buffer_size(UDP_BUFFER_BYTES)
                    .udp_send_buffer_size(UDP_BUFFER_BYTES)
                    .with_listen_port(port.unwrap_or(0))
                    .create_tun(&iface)
                    .map_err(|e| e.to_string())?
                    .build()
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| crate::backend_error(Component::WireGuard, "create task failed", e))?
            .map_err(|e| fail(format!("create embedded device {}: {e}", self.iface)))?;
        let ifindex = nix::net::if_::if_nametoindex(self.iface.as_str()).map_err(|e| {
            crate::backend_error(
                Component::WireGuard,
                format!("find the link of {}", self.iface),
                std::io::Error::from(e),
            )
        })?;
        let shared = Arc::new(Shared {
            iface: self.iface.clone(),
            device: tokio::sync::Mutex::new(Some(device)),
            ifindex,
            false_fatal: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            disconnected: AtomicBool::new(false),
        });
        // `wg` works on this interface too; the device runs without it if need be.
        if let Err(e) = serve_uapi(&self.socket, &shared, runtime.handle()) {
            tracing::warn!(socket = %self.socket.display(), error = %e, "cannot serve the UAPI socket: `wg show` will not see this interface");
        }
        *self.running.lock().unwrap() = Some(Running {
            shared,
            runtime: Some(runtime),
            socket: self.socket.clone(),
        });
        Ok(())
    }
}

/// Binds the UAPI socket at `path` (never with a mode other than 0600; a stale one is
/// replaced) and serves it for the device on a thread of its own, until the device is gone.
fn serve_uapi(
    path: &Path,
    shared: &Arc<Shared>,
    handle: &tokio::runtime::Handle,
) -> std::io::Result<()> {
    std::fs::create_dir_all(SOCKET_DIR)?;
    let listener = crate::uapi::bind(path)?;
    let shared: Weak<Shared> = Arc::downgrade(shared);
    let handle = handle.clone();
    std::thread::Builder::new()
        .name("wormhole-uapi".into())
        .spawn(move || {
            let live = || {
                let shared = shared.upgrade()?;
                (!shared.stopping.load(Ordering::Relaxed)).then_some(shared)
            };
            crate::uapi::serve(
                listener,
                crate::uapi::ServeLimits::DEFAULT,
                || live().is_some(),
                |request| Some(handle.block_on(answer(live()?, request))),
            )
        })?;
    Ok(())
}

/// The reply to one UAPI request from outside (`wg show`, `wg set`).
async fn answer(shared: Arc<Shared>, request: &str) -> zeroize::Zeroizing<String> {
    if !(request.starts_with("get=1\n") || request.starts_with("set=1\n")) {
        return crate::uapi::errno_reply(Errno::EINVAL);
    }
    let Some(current) = shared.observe().await else {
        return crate::uapi::errno_reply(Errno::ENODEV);
    };
    if request.starts_with("get=1\n") {
        return crate::uapi::format_get(&current);
    }
    let changes = match crate::uapi::parse_set(request, &current.config) {
        Ok(changes) => changes,
        Err(errno) => return crate::uapi::errno_reply(errno),
    };
    match shared.apply(changes).await {
        Ok(()) => crate::uapi::errno_reply(Errno::from_raw(0)),
        Err(e) => {
            tracing::warn!(error = %e, "a UAPI set on the embedded device failed");
            crate::uapi::errno_reply(Errno::EINVAL)
        }
    }
}

#[async_trait]
impl WireGuardDevice for EmbeddedDevice {
    fn kind(&self) -> &str {
        "embedded"
    }

    async fn read(&self) -> Result<Option<ObservedDevice>, Error> {
        // Our data plane lives here: nothing of another process's is ours to adopt.
        let Some((shared, handle)) = self.shared() else {
            return Ok(None);
        };
        let got = handle
            .spawn(async move {
                if shared.alive().await {
                    shared.observe().await
                } else {
                    None
                }
            })
            .await
            .map_err(|e| crate::backend_error(Component::WireGuard, "read task failed", e))?;
        if got.is_none() {
            // A device that stopped is created again by the next plan.
            let old = self.running.lock().unwrap().take();
            if let Some(old) = old {
                let _ = tokio::task::spawn_blocking(move || drop(old)).await;
            }
        }
        Ok(got)
    }

    async fn apply(&self, plan: &DevicePlan) -> Result<(), Error> {
        if plan.create {
            let port = plan.changes.iter().find_map(|c| match c {
                DeviceChange::SetListenPort(p) => Some(*p),
                _ => None,
            });
            self.create(port).await?;
        }
        if plan.changes.is_empty() {
            return Ok(());
        }
        let (shared, handle) = self.shared().ok_or_else(|| {
            Error::backend(
                Component::WireGuard,
                format!("configure {}: no embedded device", self.iface),
            )
        })?;
        let changes = plan.changes.clone();
        handle
            .spawn(async move { shared.apply(changes).await })
            .await
            .map_err(|e| crate::backend_error(Component::WireGuard, "configure task failed", e))?
            .map_err(|e| {
                crate::backend_error(Component::WireGuard, format!("configure {}", self.iface), e)
            })
    }
}

#[cfg(test)]
mod tests {
    /// gotatun's `Tunn` (one per peer) holds eight session slots. Upstream 0.10.2 stores them
    /// inline, ~2.2 KiB each used or not (18,944 bytes a peer); our patch (vendor/README.md)
    /// boxes them, so an idle peer's `Tunn` is 1,600 bytes. This fails if the patch is lost, e.g.
    /// on a gotatun upgrade that drops `[patch.crates-io]` before upstream boxes the slots.
    #[test]
    fn a_peers_tunnel_does_not_hold_its_session_slots_inline() {
        let size = std::mem::size_of::<gotatun::noise::Tunn>();
        println!("size_of::<gotatun::noise::Tunn>() = {size} bytes");
        assert!(
            size <= 4096,
            "gotatun::noise::Tunn is {size} bytes: are the session slots inline again (vendor/gotatun.patch)?"
        );
    }
}
