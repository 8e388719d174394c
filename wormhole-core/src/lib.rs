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
//! Where to start:
//! - [`keys`]: WireGuard keys, redacted and zeroized secrets, pair pre-shared keys.
//! - [`mesh`]: [`NodeEntry`] (what a source reports), [`Mesh`] (what validation accepted, with a
//!   reason for every rejected peer).
//! - [`state`] and [`plan`]: the host as data, and the pure, minimal diff between two of them.
//! - [`source`]: peer sources are streams of snapshots (any `Stream<Item = Result<Snapshot, E>>`);
//!   the reconciler deduplicates, debounces and clears errors. [`PeerSource`] is the trait form.
//! - [`backend`]: the traits a host implements ([`WireGuardDevice`], [`HostNetwork`],
//!   [`Firewall`], [`KeyStore`]); [`memory`] has in-memory implementations.
//! - [`reconciler`]: the level-triggered loop tying it together, and its [`Status`].
//! - [`file_source`]: the peers-file source (a TOML file or a directory of them), following
//!   changes through filesystem notifications.
//! - [`text`]: [`text::Escaped`], for printing names and messages that came from outside.
//!
//! ```
//! use wormhole_core::{memory, Reconciler, Settings, PrivateKey};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), wormhole_core::Error> {
//! let backends = memory::Backends::default();
//! let keys = memory::MemoryKeyStore::new(PrivateKey::generate(), None);
//! let settings = Settings::new("node-a", vec!["10.99.0.0/16".parse().unwrap()]);
//! let mut reconciler = Reconciler::new(settings, backends.handles(keys));
//! // Feed snapshots with `reconciler.update(..)` and run passes, or hand a stream of them
//! // to `reconciler.run(..)`.
//! # let _ = &mut reconciler;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod backend;
mod error;
pub mod file_source;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod keystore;
pub mod memory;
pub mod mesh;
pub mod plan;
pub mod reconciler;
pub mod source;
pub mod state;
pub mod status;
pub mod text;

pub use backend::{Firewall, HostNetwork, WireGuardDevice};
pub use error::{Component, Error, ErrorChain, FailedItem, ItemFailure, MeshError};
pub use file_source::FilePeerSource;
pub use ipnet::IpNet;
pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use keystore::{FileKeyStore, KeyStore};
pub use mesh::{Mesh, NodeEntry, NodeSpec, RejectReason, Rejection, Snapshot};
pub use plan::{Plan, plan};
pub use reconciler::{Backends, Reconciler, Settings};
pub use source::{PeerSource, PeerStream};
pub use state::HostState;
pub use status::Status;
