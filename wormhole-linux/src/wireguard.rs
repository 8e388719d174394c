//! WireGuard devices: kernel (generic netlink, [`crate::kernel`]), userspace and embedded (an
//! in-process boringtun device), both over their UAPI socket ([`crate::uapi`]).
//!
//! Every change is incremental: a [`DevicePlan`] becomes requests naming only the peers and
//! fields that change, so unchanged peers keep their sessions. Netlink and UAPI calls are
//! blocking, so every call runs in `spawn_blocking`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use wormhole_core::plan::{DeviceChange, DevicePlan};
#[cfg(feature = "embedded")]
use wormhole_core::state::DeviceState;
use wormhole_core::state::ObservedDevice;
use wormhole_core::{Error, FailedItem, ItemFailure, PrivateKey, WireGuardDevice};

use crate::backend_error;

/// Which WireGuard implementation runs the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The Linux kernel module; the link is created through rtnetlink.
    Kernel,
    /// An external userspace implementation (`wireguard-go` unless `WG_USERSPACE_IMPLEMENTATION`
    /// names another) over its UAPI socket; started when its socket is absent. Its data plane
    /// outlives the daemon, so restarts drop no traffic.
    Userspace,
    /// An in-process boringtun device. Works on any host with `/dev/net/tun`, but its data plane
    /// dies with the daemon, and (boringtun cannot modify a peer in place) changing a peer
    /// re-adds it, which restarts that peer's session.
    #[cfg(feature = "embedded")]
    Embedded,
}

impl Backend {
    /// Lowercase name, as the `--backend` flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
            #[cfg(feature = "embedded")]
            Backend::Embedded => "embedded",
        }
    }

    /// `auto`: the kernel module when this host has it, else embedded (or userspace when built
    /// without the `embedded` feature).
    pub fn detect() -> Backend {
        if std::path::Path::new("/sys/module/wireguard").exists() {
            return Backend::Kernel;
        }
        #[cfg(feature = "embedded")]
        return Backend::Embedded;
        #[cfg(not(feature = "embedded"))]
        Backend::Userspace
    }
}

/// The in-process device and our end of its private UAPI socket.
///
/// boringtun is given one end of a socket pair instead of creating `/var/run/wireguard/*.sock`:
/// that way it registers no SIGTERM/SIGINT handling of its own (its socket mode blocks both
/// signals and reads them from a signalfd, taking the agent's stop requests), no other process
/// can configure our data plane, and requests are serialized on one stream.
///
/// For `wg show` and `wg set`, the agent serves `/var/run/wireguard/IFACE.sock` itself and
/// passes each request through ([`crate::uapi::serve`]).
#[cfg(feature = "embedded")]
struct Embedded {
    _handle: boringtun::device::DeviceHandle,
    uapi: Arc<Mutex<std::os::unix::net::UnixStream>>,
    socket: PathBuf,
}

#[cfg(feature = "embedded")]
impl Drop for Embedded {
    fn drop(&mut self) {
        crate::uapi::stop_serving(&self.socket);
    }
}

/// Binds the UAPI socket at `path` (0600; a stale one is replaced) and serves it for `device`
/// on a thread of its own.
#[cfg(feature = "embedded")]
fn serve_uapi(
    path: &std::path::Path,
    device: &Arc<Mutex<std::os::unix::net::UnixStream>>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(SOCKET_DIR)?;
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let device = Arc::downgrade(device);
    std::thread::Builder::new()
        .name("wormhole-uapi".into())
        .spawn(move || crate::uapi::serve(listener, device))?;
    Ok(())
}

/// Where userspace implementations put their UAPI sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// A WireGuard device driven through one of the [`Backend`]s.
pub struct WgDevice {
    iface: String,
    backend: Backend,
    #[cfg(feature = "embedded")]
    embedded: Mutex<Option<Embedded>>,
    /// The private key we last set (the embedded device reports only its public key).
    key: Mutex<Option<PrivateKey>>,
    /// The embedded device's peers as last read or applied: an update re-adds a peer with its
    /// merged configuration, and reading all peers for that would cost more than the change.
    #[cfg(feature = "embedded")]
    known: Arc<Mutex<Option<DeviceState>>>,
    network: Option<Arc<crate::Network>>,
}

impl std::fmt::Debug for WgDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgDevice")
            .field("iface", &self.iface)
            .field("backend", &self.backend)
            .finish()
    }
}

impl WgDevice {
    /// A device named `iface` on `backend`. The kernel backend creates its link through
    /// `network` (rtnetlink); the others ignore it.
    pub fn new(
        iface: &str,
        backend: Backend,
        network: Option<Arc<crate::Network>>,
    ) -> Result<Self, Error> {
        iface.parse::<wormhole_core::state::InterfaceName>()?;
        Ok(WgDevice {
            iface: iface.to_owned(),
            backend,
            #[cfg(feature = "embedded")]
            embedded: Mutex::new(None),
            key: Mutex::new(None),
            #[cfg(feature = "embedded")]
            known: Arc::default(),
            network,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Our end of the embedded device's UAPI socket, while the device exists.
    #[cfg(feature = "embedded")]
    fn embedded_uapi(&self) -> Option<Arc<Mutex<std::os::unix::net::UnixStream>>> {
        self.embedded
            .lock()
            .unwrap()
            .as_ref()
            .map(|e| e.uapi.clone())
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(SOCKET_DIR).join(format!("{}.sock", self.iface))
    }

    /// A UAPI socket that accepts connections (a stale file left by a dead process does not).
    fn socket_alive(&self) -> bool {
        std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let iface = self.iface.clone();
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::backend("wireguard", format!("{what} {iface}: task failed: {e}")))?
            .map_err(|e| backend_error("wireguard", format!("{what} {iface}"), e))
    }

    /// Creates the device: the kernel link, the userspace process, or the embedded device.
    async fn create(&self) -> Result<(), Error> {
        match self.backend {
            Backend::Kernel => {
                let network = self.network.as_ref().ok_or_else(|| {
                    Error::backend("wireguard", "the kernel backend needs a network handle")
                })?;
                network.create_wireguard_link().await
            }
            Backend::Userspace => {
                if self.socket_alive() {
                    return Ok(());
                }
                let iface = self.iface.clone();
                let socket = self.socket();
                self.blocking("start userspace WireGuard for", move || {
                    start_userspace(&iface, &socket)
                })
                .await
            }
            #[cfg(feature = "embedded")]
            Backend::Embedded => {
                let mut embedded = self.embedded.lock().unwrap();
                let alive = embedded
                    .as_ref()
                    .is_some_and(|e| crate::uapi::get_over(&e.uapi.lock().unwrap()).is_ok());
                if alive {
                    return Ok(());
                }
                use std::os::fd::IntoRawFd as _;
                let io =
                    |e| backend_error("wireguard", "create the embedded device's UAPI socket", e);
                let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io)?;
                ours.set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(io)?;
                ours.set_write_timeout(Some(Duration::from_secs(5)))
                    .map_err(io)?;
                let config = boringtun::device::DeviceConfig {
                    n_threads: 2,
                    use_connected_socket: true,
                    use_multi_queue: false,
                    // boringtun owns this end from here on.
                    uapi_fd: theirs.into_raw_fd(),
                };
                let handle =
                    boringtun::device::DeviceHandle::new(&self.iface, config).map_err(|e| {
                        Error::backend(
                            "wireguard",
                            format!("create embedded device {}: {e:?}", self.iface),
                        )
                    })?;
                let uapi = Arc::new(Mutex::new(ours));
                // `wg` works on this interface too; the device runs without it if need be.
                if let Err(e) = serve_uapi(&self.socket(), &uapi) {
                    tracing::warn!(socket = %self.socket().display(), error = %e, "cannot serve the UAPI socket: `wg show` will not see this interface");
                }
                *embedded = Some(Embedded {
                    _handle: handle,
                    uapi,
                    socket: self.socket(),
                });
                // A new device: nothing of the old one's peers is there.
                *self.known.lock().unwrap() = None;
                Ok(())
            }
        }
    }
}

/// Why the userspace implementation `program` could not be started, and the fix.
fn spawn_error(program: &str, e: &std::io::Error) -> std::io::Error {
    let text = if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "{program} not found in PATH: install it (Debian: apt install wireguard-go) \
             or set WG_USERSPACE_IMPLEMENTATION"
        )
    } else {
        format!("cannot run {program}: {e} (set WG_USERSPACE_IMPLEMENTATION)")
    };
    std::io::Error::new(e.kind(), text)
}

/// Starts the userspace implementation for `iface` and waits for its UAPI socket.
fn start_userspace(iface: &str, socket: &std::path::Path) -> std::io::Result<()> {
    let program = std::env::var("WG_USERSPACE_IMPLEMENTATION")
        .or_else(|_| std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION"))
        .unwrap_or_else(|_| "wireguard-go".into());
    std::fs::create_dir_all(SOCKET_DIR)?;
    // wireguard-go daemonizes itself unless WG_PROCESS_FOREGROUND is set: the data plane then
    // survives the daemon.
    let output = std::process::Command::new(&program)
        .arg(iface)
        .env_remove("WG_PROCESS_FOREGROUND")
        .output()
        .map_err(|e| spawn_error(&program, &e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(std::io::Error::other(format!(
            "{program} exited with {}: {}",
            output.status,
            stderr.trim()
        )));
    }
    for _ in 0..150 {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(std::io::Error::other(format!(
        "{program} started but {} did not appear",
        socket.display()
    )))
}

fn is_absent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // The embedded device's socket closed: the device stopped.
    matches!(
        e.kind(),
        NotFound | ConnectionRefused | UnexpectedEof | BrokenPipe | ConnectionReset
    ) || e.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32)
}

#[async_trait]
impl WireGuardDevice for WgDevice {
    fn kind(&self) -> &str {
        self.backend.as_str()
    }

    async fn read(&self) -> Result<Option<ObservedDevice>, Error> {
        // Our data plane lives here: nothing of another process's is ours to adopt.
        #[cfg(feature = "embedded")]
        let embedded = match self.backend {
            Backend::Embedded => match self.embedded_uapi() {
                Some(uapi) => Some(uapi),
                None => return Ok(None),
            },
            _ => None,
        };
        let got = if self.backend == Backend::Kernel {
            let iface = self.iface.clone();
            tokio::task::spawn_blocking(move || crate::kernel::get(&iface)).await
        } else {
            let socket = self.socket();
            let known = self.key.lock().unwrap().clone();
            #[cfg(feature = "embedded")]
            let get = move || match embedded {
                Some(uapi) => crate::uapi::get_over(&uapi.lock().unwrap()),
                None => crate::uapi::get(&socket),
            };
            #[cfg(not(feature = "embedded"))]
            let get = move || crate::uapi::get(&socket);
            tokio::task::spawn_blocking(move || {
                get().map(|mut reply| {
                    let config = &mut reply.device.config;
                    if config.private_key.is_none() {
                        // Only claim the key we set if the device reports its public half.
                        config.private_key =
                            known.filter(|k| Some(k.public_key()) == reply.own_public_key);
                    }
                    reply.device
                })
            })
            .await
        };
        match got.map_err(|e| Error::backend("wireguard", format!("read task failed: {e}")))? {
            Ok(device) => {
                #[cfg(feature = "embedded")]
                if self.backend == Backend::Embedded {
                    *self.known.lock().unwrap() = Some(device.config.clone());
                }
                Ok(Some(device))
            }
            Err(e) if is_absent(&e) => {
                // An embedded device that stopped is created again by the next plan.
                #[cfg(feature = "embedded")]
                self.embedded.lock().unwrap().take();
                Ok(None)
            }
            Err(e) => Err(backend_error(
                "wireguard",
                format!("read {}", self.iface),
                e,
            )),
        }
    }

    async fn apply(&self, plan: &DevicePlan) -> Result<(), Error> {
        if plan.create {
            self.create().await?;
        }
        if plan.changes.is_empty() {
            return Ok(());
        }
        match self.backend {
            Backend::Kernel => {
                let (iface, changes) = (self.iface.clone(), plan.changes.clone());
                let result =
                    tokio::task::spawn_blocking(move || crate::kernel::set(&iface, &changes))
                        .await
                        .map_err(|e| {
                            Error::backend(
                                "wireguard",
                                format!("configure {}: task failed: {e}", self.iface),
                            )
                        })?;
                match result {
                    Ok(()) => {}
                    Err(crate::kernel::SetError::Device(e)) => {
                        return Err(backend_error(
                            "wireguard",
                            format!("configure {}", self.iface),
                            e,
                        ));
                    }
                    Err(crate::kernel::SetError::Peers(failures)) => {
                        return Err(Error::Partial {
                            backend: "wireguard",
                            failures: failures
                                .0
                                .into_iter()
                                .map(|(key, e)| ItemFailure {
                                    item: FailedItem::Peer(key),
                                    reason: format!("configure {}: {e}", self.iface),
                                })
                                .collect(),
                        });
                    }
                }
            }
            Backend::Userspace => {
                let (socket, request) = (self.socket(), crate::uapi::set_request(&plan.changes));
                self.blocking("configure", move || crate::uapi::set(&socket, &request))
                    .await?;
            }
            #[cfg(feature = "embedded")]
            Backend::Embedded => {
                let uapi = self.embedded_uapi().ok_or_else(|| {
                    Error::backend(
                        "wireguard",
                        format!("configure {}: no embedded device", self.iface),
                    )
                })?;
                let (plan, known) = (plan.clone(), self.known.clone());
                self.blocking("configure", move || {
                    let uapi = uapi.lock().unwrap();
                    // Updates become re-adds with the merged config: what is there is known
                    // from the last read or apply, else read.
                    let mut known = known.lock().unwrap();
                    let current = match known.take() {
                        Some(state) => state,
                        None => crate::uapi::get_over(&uapi)?.device.config,
                    };
                    crate::uapi::set_over(
                        &uapi,
                        &crate::uapi::boringtun_request(&plan.changes, &current),
                    )?;
                    let mut after = Some(current);
                    wormhole_core::plan::apply_device(&mut after, &plan);
                    *known = after;
                    Ok(())
                })
                .await?;
            }
        }
        if let Some(key) = plan.changes.iter().find_map(|c| match c {
            DeviceChange::SetPrivateKey(k) => Some(k),
            _ => None,
        }) {
            *self.key.lock().unwrap() = Some(key.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_userspace_implementation_names_the_fix() {
        let missing = std::process::Command::new("wormhole-test-no-such-program")
            .output()
            .unwrap_err();
        let e = spawn_error("wireguard-go", &missing);
        assert_eq!(
            e.to_string(),
            "wireguard-go not found in PATH: install it (Debian: apt install wireguard-go) \
             or set WG_USERSPACE_IMPLEMENTATION"
        );
    }

    #[tokio::test]
    async fn kernel_backend_needs_a_network_and_names_are_checked() {
        assert!(WgDevice::new("this-name-is-too-long", Backend::Kernel, None).is_err());
        let device = WgDevice::new("wh-test0", Backend::Kernel, None).unwrap();
        let err = device
            .apply(&DevicePlan {
                create: true,
                changes: vec![],
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("network handle"), "{err}");
        assert_eq!(device.kind(), "kernel");
    }
}
