//! [`EmbeddedDevice`]: an in-process boringtun device (feature `embedded`).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use wormhole_core::DevicePlan;
use wormhole_core::{Component, Error, PrivateKey, WireGuardDevice};
use wormhole_core::{DeviceState, ObservedDevice};

use super::SOCKET_DIR;
use crate::backend_error;

/// The in-process device and our end of its private UAPI socket.
///
/// boringtun is given one end of a socket pair instead of creating `/var/run/wireguard/*.sock`:
/// that way it registers no SIGTERM/SIGINT handling of its own (its socket mode blocks both
/// signals and reads them from a signalfd, taking the agent's stop requests), no other process
/// can configure our data plane, and requests are serialized on one stream.
///
/// For `wg show` and `wg set`, the agent serves `/var/run/wireguard/IFACE.sock` itself and
/// passes each request through ([`crate::uapi::serve`]).
struct Embedded {
    _handle: boringtun::device::DeviceHandle,
    uapi: Arc<Mutex<UnixStream>>,
    socket: PathBuf,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        crate::uapi::stop_serving(&self.socket);
    }
}

/// Binds the UAPI socket at `path` (0600; a stale one is replaced) and serves it for `device`
/// on a thread of its own.
fn serve_uapi(path: &Path, device: &Arc<Mutex<UnixStream>>) -> std::io::Result<()> {
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

/// A WireGuard device running inside this process (boringtun), on any host with
/// `/dev/net/tun`.
///
/// Its data plane lives and dies with this value (and the process): nothing of another
/// process's device is adopted. boringtun cannot modify a peer in place, so changing a peer
/// re-adds it, which restarts that peer's session only. `wg show` and `wg set` work on it
/// through `/var/run/wireguard/IFACE.sock`, which this process serves (a listen-port change
/// there is refused: boringtun can panic on it under traffic).
pub struct EmbeddedDevice {
    iface: String,
    socket: PathBuf,
    embedded: Mutex<Option<Embedded>>,
    /// The private key we last set (the embedded device reports only its public key).
    key: Mutex<Option<PrivateKey>>,
    /// The device's peers as last read or applied: an update re-adds a peer with its merged
    /// configuration, and reading all peers for that would cost more than the change.
    known: Arc<Mutex<Option<DeviceState>>>,
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
            embedded: Mutex::new(None),
            key: Mutex::new(None),
            known: Arc::default(),
        })
    }

    /// Our end of the device's UAPI socket, while the device exists.
    fn uapi(&self) -> Option<Arc<Mutex<UnixStream>>> {
        self.embedded
            .lock()
            .unwrap()
            .as_ref()
            .map(|e| e.uapi.clone())
    }

    /// Creates the device, unless one answers already.
    fn create(&self) -> Result<(), Error> {
        let mut embedded = self.embedded.lock().unwrap();
        let alive = embedded
            .as_ref()
            .is_some_and(|e| crate::uapi::get_over(&e.uapi.lock().unwrap()).is_ok());
        if alive {
            return Ok(());
        }
        use std::os::fd::IntoRawFd as _;
        let io = |e| {
            backend_error(
                Component::WireGuard,
                "create the embedded device's UAPI socket",
                e,
            )
        };
        let (ours, theirs) = UnixStream::pair().map_err(io)?;
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
        let handle = boringtun::device::DeviceHandle::new(&self.iface, config).map_err(|e| {
            Error::backend(
                Component::WireGuard,
                format!("create embedded device {}: {e:?}", self.iface),
            )
        })?;
        let uapi = Arc::new(Mutex::new(ours));
        // `wg` works on this interface too; the device runs without it if need be.
        if let Err(e) = serve_uapi(&self.socket, &uapi) {
            tracing::warn!(socket = %self.socket.display(), error = %e, "cannot serve the UAPI socket: `wg show` will not see this interface");
        }
        *embedded = Some(Embedded {
            _handle: handle,
            uapi,
            socket: self.socket.clone(),
        });
        // A new device: nothing of the old one's peers is there.
        *self.known.lock().unwrap() = None;
        Ok(())
    }
}

#[async_trait]
impl WireGuardDevice for EmbeddedDevice {
    fn kind(&self) -> &str {
        "embedded"
    }

    async fn read(&self) -> Result<Option<ObservedDevice>, Error> {
        // Our data plane lives here: nothing of another process's is ours to adopt.
        let Some(uapi) = self.uapi() else {
            return Ok(None);
        };
        let known = self.key.lock().unwrap().clone();
        let got = super::read_with(&self.iface, move || {
            crate::uapi::get_over(&uapi.lock().unwrap()).map(|reply| super::claim_key(reply, known))
        })
        .await?;
        match &got {
            Some(device) => *self.known.lock().unwrap() = Some(device.config.clone()),
            // A device that stopped is created again by the next plan.
            None => drop(self.embedded.lock().unwrap().take()),
        }
        Ok(got)
    }

    async fn apply(&self, plan: &DevicePlan) -> Result<(), Error> {
        if plan.create {
            self.create()?;
        }
        if plan.changes.is_empty() {
            return Ok(());
        }
        let uapi = self.uapi().ok_or_else(|| {
            Error::backend(
                Component::WireGuard,
                format!("configure {}: no embedded device", self.iface),
            )
        })?;
        let (changes, known) = (plan.clone(), self.known.clone());
        super::blocking(&self.iface, "configure", move || {
            let uapi = uapi.lock().unwrap();
            // Updates become re-adds with the merged config: what is there is known from the
            // last read or apply, else read.
            let mut known = known.lock().unwrap();
            let current = match known.take() {
                Some(state) => state,
                None => crate::uapi::get_over(&uapi)?.device.config,
            };
            crate::uapi::set_over(
                &uapi,
                &crate::uapi::boringtun_request(&changes.changes, &current),
            )?;
            let mut after = Some(current);
            wormhole_core::apply_device(&mut after, &changes);
            *known = after;
            Ok(())
        })
        .await?;
        super::remember_key(&self.key, plan);
        Ok(())
    }
}
