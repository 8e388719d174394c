//! WireGuard devices, one type per backend, each implementing
//! [`WireGuardDevice`](wormhole_core::WireGuardDevice):
//!
//! - [`KernelDevice`]: the kernel module over generic netlink ([`crate::kernel`]); its link is
//!   created through rtnetlink ([`Network`]).
//! - [`UapiDevice`]: a userspace implementation (wireguard-go, ...) over its UAPI socket
//!   ([`crate::uapi`]), started when its socket is absent.
//! - [`EmbeddedDevice`] (feature `embedded`): an in-process gotatun device, driven through its
//!   Rust API on a runtime of its own.
//!
//! [`Backend`] names them; [`Backend::detect`] is `auto`, and [`Backend::device`] builds the
//! device of a backend chosen at run time.
//!
//! Every change is incremental: a [`DevicePlan`](wormhole_core::DevicePlan) becomes
//! requests naming only the peers and fields that change, so unchanged peers keep their
//! sessions. Netlink and UAPI calls are blocking, so every call runs in `spawn_blocking`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use wormhole_core::ObservedDevice;
use wormhole_core::{Component, Error, PrivateKey, WireGuardDevice};
use wormhole_core::{DeviceChange, DevicePlan};

use crate::{Network, backend_error};

#[cfg(feature = "embedded")]
mod embedded;
mod kernel;
mod userspace;

#[cfg(feature = "embedded")]
pub use embedded::EmbeddedDevice;
pub use kernel::KernelDevice;
pub use userspace::UapiDevice;

/// Which WireGuard implementation runs the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The Linux kernel module ([`KernelDevice`]); the link is created through rtnetlink.
    Kernel,
    /// An external userspace implementation (`wireguard-go` unless `WG_USERSPACE_IMPLEMENTATION`
    /// names another) over its UAPI socket ([`UapiDevice`]); started when its socket is absent.
    /// Its data plane outlives the daemon, so restarts drop no traffic.
    Userspace,
    /// An in-process gotatun device ([`EmbeddedDevice`]). Works on any host with
    /// `/dev/net/tun`; peers change in place (sessions kept), but its data plane dies with the
    /// daemon.
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

    /// The device of this backend for `network`'s interface, for a backend chosen at run time
    /// (`--backend`, or `auto` through [`Backend::detect`]). Only the kernel device keeps
    /// `network` (to create its link); construct a device type directly to pass only what it
    /// needs.
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), wormhole_core::Error> {
    /// use std::sync::Arc;
    /// use wormhole_linux::{Backend, Network};
    ///
    /// let network = Arc::new(Network::new("wormhole0")?);
    /// let backend = Backend::detect();
    /// let device = backend.device(&network)?;
    /// assert_eq!(device.kind(), backend.as_str());
    /// # Ok(()) }
    /// ```
    pub fn device(self, network: &Arc<Network>) -> Result<Arc<dyn WireGuardDevice>, Error> {
        Ok(match self {
            Backend::Kernel => Arc::new(KernelDevice::new(network.clone())?),
            Backend::Userspace => Arc::new(UapiDevice::new(network.interface())?),
            #[cfg(feature = "embedded")]
            Backend::Embedded => Arc::new(EmbeddedDevice::new(network.interface())?),
        })
    }
}

/// Where userspace implementations put their UAPI sockets (`SOCKET_DIR/IFACE.sock`).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Checks an interface name (every device's constructor does).
fn check_name(iface: &str) -> Result<(), Error> {
    iface.parse::<wormhole_core::InterfaceName>()?;
    Ok(())
}

/// The UAPI socket of `iface`.
fn socket_path(iface: &str) -> PathBuf {
    PathBuf::from(SOCKET_DIR).join(format!("{iface}.sock"))
}

/// Runs `f` on the blocking pool; its I/O error becomes a backend error about `what iface`.
async fn blocking<T: Send + 'static>(
    iface: &str,
    what: &'static str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            backend_error(
                Component::WireGuard,
                format!("{what} {iface}: task failed"),
                e,
            )
        })?
        .map_err(|e| backend_error(Component::WireGuard, format!("{what} {iface}"), e))
}

/// The device does not exist (or, embedded, its socket closed: the device stopped).
fn is_absent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        NotFound | ConnectionRefused | UnexpectedEof | BrokenPipe | ConnectionReset
    ) || e.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32)
}

/// A read run on the blocking pool, as [`WireGuardDevice::read`] answers it: an absent device
/// is `None`.
async fn read_with(
    iface: &str,
    f: impl FnOnce() -> std::io::Result<ObservedDevice> + Send + 'static,
) -> Result<Option<ObservedDevice>, Error> {
    let got = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| backend_error(Component::WireGuard, "read task failed", e))?;
    match got {
        Ok(device) => Ok(Some(device)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(backend_error(
            Component::WireGuard,
            format!("read {iface}"),
            e,
        )),
    }
}

/// A UAPI reply as the device it describes. A userspace device may report only its public key
/// or nothing of its key: the private key we set is claimed only if the device
/// reports its public half.
fn claim_key(mut reply: crate::uapi::Reply, known: Option<PrivateKey>) -> ObservedDevice {
    let config = &mut reply.device.config;
    if config.private_key.is_none() {
        config.private_key = known.filter(|k| Some(k.public_key()) == reply.own_public_key);
    }
    reply.device
}

/// Remembers the private key `plan` set, if it set one.
fn remember_key(key: &Mutex<Option<PrivateKey>>, plan: &DevicePlan) {
    if let Some(k) = plan.changes.iter().find_map(|c| match c {
        DeviceChange::SetPrivateKey(k) => Some(k),
        _ => None,
    }) {
        *key.lock().unwrap() = Some(k.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_are_checked_and_kinds_named() {
        let long = "this-name-is-too-long";
        assert!(KernelDevice::new(Arc::new(Network::new(long).unwrap())).is_err());
        assert!(UapiDevice::new(long).is_err());
        #[cfg(feature = "embedded")]
        assert!(EmbeddedDevice::new(long).is_err());
        let network = Arc::new(Network::new("wh-test0").unwrap());
        for backend in [
            Backend::Kernel,
            Backend::Userspace,
            #[cfg(feature = "embedded")]
            Backend::Embedded,
        ] {
            assert_eq!(backend.device(&network).unwrap().kind(), backend.as_str());
        }
    }
}
