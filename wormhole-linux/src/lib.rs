//! `wormhole-linux`: the Linux host backends of Wormhole, implementing `wormhole-core`'s traits.
//!
//! Start with [`Network`] (the interface's link, addresses and routes) and [`Backend::device`]
//! (the WireGuard device of the backend chosen by `--backend`; [`Backend::detect`] is `auto`),
//! and hand both with [`Nftables`] to `wormhole_core`'s reconciler.
//!
//! # Public API
//!
//! The whole public surface, one path each (every module is private; `tests/it/api.rs` pins
//! each item's signature, so a change to this list is a reviewed change to that test):
//!
//! - WireGuard, [`WireGuardDevice`](wormhole_core::WireGuardDevice) one type per backend:
//!   - [`KernelDevice`]`::new(Arc<Network>)`: the kernel module, over generic netlink (spoken
//!     by our own small `kernel` module), its link created through rtnetlink;
//!   - [`UapiDevice`]`::new(&str)`: a userspace implementation's UAPI socket (wireguard-go,
//!     or any other), started when absent;
//!   - [`EmbeddedDevice`]`::new(&str)` (feature `embedded`, on by default): an in-process
//!     gotatun device;
//!   - [`Backend`] (`#[non_exhaustive]`): `Kernel`, `Userspace`, `Embedded`; [`Backend::as_str`],
//!     [`Backend::detect`] (`auto`), [`Backend::device`] (`Arc<dyn WireGuardDevice>`);
//!   - [`SOCKET_DIR`]: where UAPI sockets live.
//! - [`Network`]: [`HostNetwork`](wormhole_core::HostNetwork) over rtnetlink: the link, its
//!   addresses and MTU, and the routes we own (route protocol [`ROUTE_PROTOCOL`]);
//!   [`Network::new`], [`Network::interface`], [`Network::wireguard_mtu`] (underlay MTU −
//!   [`WIREGUARD_OVERHEAD`]), [`Network::underlay_mtu`], [`Network::underlay_addresses`],
//!   [`Network::delete_link`], [`Network::link_kind`], [`Network::delete_ports`] (the last
//!   two for `wormhole uninstall`).
//! - [`Pinger`]: ICMP echo of an exact size through the tunnel, the probe behind per-peer
//!   health and path-MTU discovery; [`Pinger::new`], [`Pinger::ping`], [`Pinger::min_size`].
//! - [`Nftables`]: [`Firewall`](wormhole_core::Firewall) as one nftables table,
//!   `inet` [`NFT_TABLE`], replaced atomically; [`Nftables::new`], [`Nftables::delete`].
//!
//! Errors are `wormhole_core::Error`; no type of a dependency (rtnetlink, netlink packets,
//! gotatun) appears in a public signature.
//!
//! This is a crate of its own, rather than modules of `wormhole-core`, so that the core builds in
//! seconds with no netlink or gotatun dependency for embedders that
//! bring their own backends, and so that rtnetlink's API churn stays behind one crate boundary.
#![cfg(target_os = "linux")]

mod firewall;
mod kernel;
mod network;
mod ping;
// Serving the protocol (`wg show`, `wg set`) is for the embedded device only.
#[cfg_attr(not(feature = "embedded"), allow(dead_code))]
mod uapi;
mod wireguard;

pub use firewall::{NFT_TABLE, Nftables};
pub use network::{Network, ROUTE_PROTOCOL, WIREGUARD_OVERHEAD};
pub use ping::Pinger;
#[cfg(feature = "embedded")]
pub use wireguard::EmbeddedDevice;
pub use wireguard::{Backend, KernelDevice, SOCKET_DIR, UapiDevice};

use wormhole_core::{Component, Error};

/// A backend error with its cause.
pub(crate) fn backend_error(
    backend: Component,
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::backend_caused(backend, message, source)
}
