//! `wormhole-core`: the mesh model, planner and reconciler of Wormhole, an encrypted pod network
//! built on WireGuard.
//!
//! Data flows one way:
//!
//! ```text
//! source ──────snapshot──▶ Mesh (validated) ──▶ desired HostState
//!                                                     │
//!              backends ──read──▶ observed HostState ─┴─▶ plan() ──▶ Plan ──▶ backends apply
//! ```
//!
//! Every public item has one path, at the crate root. Where to start:
//! - Keys: [`PrivateKey`], [`PublicKey`], [`PresharedKey`] (redacted and zeroized secrets, pair
//!   pre-shared keys), kept by a [`KeyStore`] such as [`FileKeyStore`].
//! - The mesh: [`NodeEntry`] (what a source reports, in a [`Snapshot`]) and [`Mesh`] (what
//!   validation accepted, with a [`Rejection`] and its [`RejectReason`] for every refused peer).
//! - The host as data ([`HostState`]) and the pure, minimal diff between two of them ([`plan()`],
//!   a [`Plan`]).
//! - Peer sources are streams of snapshots (any `Stream<Item = Result<Snapshot, E>>`, see
//!   [`peer_stream`]); the reconciler deduplicates, debounces and clears errors. [`PeerSource`]
//!   is the trait form, [`from_peer_source`] its adapter; [`FilePeerSource`] reads a peers file
//!   (or a directory of them), following changes through filesystem notifications.
//! - The traits a host implements: [`WireGuardDevice`], [`HostNetwork`], [`Firewall`]; the
//!   `Memory*` types ([`MemoryBackends`]) are in-memory implementations for tests and embedders.
//! - [`Reconciler`]: the level-triggered loop tying it together, and its [`Status`].
//! - [`Escaped`], for printing names and messages that came from outside.
//! - [`write_file_atomically`]: the one writer of every file the agent persists (atomic, `0600`
//!   for secrets, never blocked by what a crash left).
//!
//! ```
//! use wormhole_core::{MemoryBackends, MemoryKeyStore, PrivateKey, Reconciler, Settings};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), wormhole_core::Error> {
//! let backends = MemoryBackends::default();
//! let keys = MemoryKeyStore::new(PrivateKey::generate(), None);
//! let settings = Settings::new("node-a", vec!["10.99.0.0/16".parse().unwrap()]);
//! let mut reconciler = Reconciler::new(settings, backends.handles(keys));
//! // Feed snapshots with `reconciler.update(..)` and run passes, or hand a stream of them
//! // to `reconciler.run(..)`.
//! # let _ = &mut reconciler;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod atomic_file;
mod backend;
mod error;
mod file_source;
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod keystore;
mod memory;
mod mesh;
mod plan;
mod reconciler;
mod source;
mod state;
mod status;
mod text;

// The public API, one path per item (module paths are private; `fuzzing` is for the fuzz crate).
pub use atomic_file::{FileAccess, write_file_atomically};
pub use backend::{Firewall, HostNetwork, WireGuardDevice};
pub use error::{Component, Error, ErrorChain, FailedItem, ItemFailure, MeshError};
pub use file_source::{FilePeerSource, load_peers_file, parse_peers_file};
pub use ipnet::IpNet;
pub use keys::{KEY_LEN, KeyError, PairDeriver, PresharedKey, PrivateKey, PublicKey};
pub use keystore::{FileKeyStore, KeyStore, read_secret_file, write_secret_file};
pub use memory::{
    MemoryBackends, MemoryDevice, MemoryFirewall, MemoryKeyStore, MemoryNetwork, MemorySource,
    MemorySourceHandle,
};
pub use mesh::{
    MAX_POD_CIDRS, Mesh, NodeEntry, NodeSpec, RejectReason, Rejection, Snapshot,
    is_dns1123_subdomain, parse_endpoint,
};
pub use plan::{
    DeviceChange, DevicePlan, LinkChange, PeerField, Plan, PlanDisplay, RouteChange, apply_device,
    plan,
};
pub use reconciler::{Backends, Reconciler, Settings};
pub use source::{PeerSource, PeerStream, from_peer_source, peer_stream};
pub use state::{
    DeviceState, FirewallPolicy, HostSettings, HostState, InterfaceName, LinkState, ObservedDevice,
    PeerConfig, PeerStats, overlay_address,
};
pub use status::{
    ForwardingOff, LOSSY_AFTER, PassInfo, PeerState, PeerStatus, ProbeReport, STALE_AFTER, Status,
    UNREACHABLE_AFTER,
};
pub use text::{Escaped, escape};
