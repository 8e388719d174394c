//! `wormhole-linux`: the Linux host backends of Wormhole, implementing `wormhole-core`'s traits.
//!
//! - [`WireGuardDevice`](wormhole_core::WireGuardDevice), one type per backend: [`KernelDevice`]
//!   (the kernel module over generic netlink, spoken by our own small `kernel` module),
//!   [`UapiDevice`] (a userspace implementation's UAPI socket: wireguard-go, boringtun-cli) and
//!   [`EmbeddedDevice`] (an in-process boringtun device, feature `embedded`, on by default);
//!   [`Backend::device`] builds the one a [`Backend`] names.
//! - [`network::Network`]: [`HostNetwork`](wormhole_core::HostNetwork) over rtnetlink: the link,
//!   its addresses and MTU, and the routes we own (route protocol [`network::ROUTE_PROTOCOL`]).
//! - [`firewall::Nftables`]: [`Firewall`](wormhole_core::Firewall) as one nftables table,
//!   `inet wormhole`, replaced atomically.
//!
//! This is a crate of its own, rather than modules of `wormhole-core`, so that the core builds in
//! seconds with no netlink or boringtun dependency for embedders that
//! bring their own backends, and so that rtnetlink's API churn stays behind one crate boundary.
#![cfg(target_os = "linux")]

pub mod firewall;
mod kernel;
pub mod network;
pub mod uapi;
pub mod wireguard;

pub use firewall::Nftables;
pub use network::Network;
#[cfg(feature = "embedded")]
pub use wireguard::EmbeddedDevice;
pub use wireguard::{Backend, KernelDevice, SOCKET_DIR, UapiDevice};

use wormhole_core::Error;

/// A backend error with its cause.
pub(crate) fn backend_error(
    backend: &'static str,
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Backend {
        backend,
        message: message.into(),
        source: Some(Box::new(source)),
    }
}
