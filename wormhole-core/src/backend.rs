//! The traits a host implements. Each has an in-memory implementation in [`memory`](crate::memory)
//! for tests and embedders; the Linux implementations live in their own modules. Peer sources
//! are streams: see [`source`](crate::source).

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use ipnet::IpNet;

use crate::Error;
use crate::plan::{DevicePlan, LinkChange, RouteChange};
use crate::state::{FirewallPolicy, LinkState, ObservedDevice};

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
    /// Packets our ruleset has dropped so far, by rule (a short stable label such as
    /// `relay_into_tunnel`), as of the latest [`read`](Self::read); empty when unknown.
    fn drops(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}
