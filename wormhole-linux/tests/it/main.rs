//! The one integration-test binary of `wormhole-linux`: real backends in network namespaces.
//!
//! These tests need root (network namespaces, TUN, nftables). Without root each test prints a
//! loud SKIPPED line and passes; CI runs them as root, where nothing is skipped.

mod api;
mod conflict;
mod drift;
mod embedded;
mod encryption;
mod firewall;
mod harness;
mod kernel;
mod mesh;
mod ping;
mod sessions;
mod teardown;
mod uapi;
