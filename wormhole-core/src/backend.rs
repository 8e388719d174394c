//! The traits a host implements. Each has an in-memory implementation in [`memory`](crate::memory)
//! for tests and embedders; the Linux implementations live in their own modules.

use std::collections::BTreeSet;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::Error;
use crate::mesh::Snapshot;
use crate::plan::{DevicePlan, LinkChange, RouteChange};
use crate::state::{FirewallPolicy, LinkState, ObservedDevice};

/// Where the desired mesh comes from: a peers file, Kubernetes, or your own discovery.
///
/// The reconciler drives a source from a task of its own, so `next` need not be cancel-safe.
#[async_trait]
pub trait PeerSource: Send {
    /// Waits until the desired picture may have changed and returns it whole. The first call
    /// returns as soon as a snapshot is available. An error keeps the last good mesh in force;
    /// the reconciler waits a second before calling again. After an error, return the next good
    /// snapshot even if it equals the one before the error: that is what clears the error.
    async fn next(&mut self) -> Result<Snapshot, Error>;
}

#[async_trait]
impl<S: PeerSource + ?Sized> PeerSource for Box<S> {
    async fn next(&mut self) -> Result<Snapshot, Error> {
        (**self).next().await
    }
}

/// A WireGuard device (kernel, userspace over UAPI, or embedded).
#[async_trait]
pub trait WireGuardDevice: Send + Sync {
    /// A short name of the implementation, for status ("kernel", "userspace", "memory", ...).
    fn kind(&self) -> &str;
    /// The device's configuration and counters; `None` if the interface does not exist.
    async fn read(&self) -> Result<Option<ObservedDevice>, Error>;
    /// Applies the changes in order, touching nothing else: unchanged peers keep their sessions.
    async fn apply(&self, plan: &DevicePlan) -> Result<(), Error>;
}

/// The WireGuard interface as a link (up, MTU, addresses) and the routes through it.
#[async_trait]
pub trait HostNetwork: Send + Sync {
    /// The link (default, i.e. down and empty, if absent) and the routes *we own* through it.
    async fn read(&self) -> Result<(LinkState, BTreeSet<IpNet>), Error>;
    /// Applies link changes, then route changes. Never touches routes we do not own.
    async fn apply(&self, link: &[LinkChange], routes: &[RouteChange]) -> Result<(), Error>;
}

/// The firewall: one ruleset of our own, replaced as a whole, atomically.
#[async_trait]
pub trait Firewall: Send + Sync {
    /// The policy in force, or `None` if our ruleset is absent or differs from the last one
    /// applied (someone changed it by hand): the next pass then replaces it.
    async fn read(&self) -> Result<Option<FirewallPolicy>, Error>;
    /// Replaces our ruleset with one enforcing `policy`, in one transaction.
    async fn apply(&self, policy: &FirewallPolicy) -> Result<(), Error>;
}
