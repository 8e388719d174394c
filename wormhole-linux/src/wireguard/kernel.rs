//! [`KernelDevice`]: the kernel module, over generic netlink ([`crate::kernel`]).

use std::sync::Arc;

use async_trait::async_trait;
use wormhole_core::DevicePlan;
use wormhole_core::ObservedDevice;
use wormhole_core::{Component, Error, FailedItem, ItemFailure, WireGuardDevice};

use crate::{Network, backend_error};

/// A WireGuard device of the Linux kernel module, named after its [`Network`]'s interface.
///
/// The link is created through rtnetlink (the network handle); peers and keys are read and set
/// over generic netlink, in messages that never exceed the kernel's limit, one bad peer never
/// blocking the others.
pub struct KernelDevice {
    network: Arc<Network>,
}

impl std::fmt::Debug for KernelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDevice")
            .field("iface", &self.network.interface())
            .finish_non_exhaustive()
    }
}

impl KernelDevice {
    /// The kernel device on `network`'s interface (checked as an interface name), its link
    /// created through `network`.
    pub fn new(network: Arc<Network>) -> Result<Self, Error> {
        super::check_name(network.interface())?;
        Ok(KernelDevice { network })
    }

    fn iface(&self) -> &str {
        self.network.interface()
    }
}

#[async_trait]
impl WireGuardDevice for KernelDevice {
    fn kind(&self) -> &str {
        "kernel"
    }

    async fn read(&self) -> Result<Option<ObservedDevice>, Error> {
        let iface = self.iface().to_owned();
        super::read_with(self.iface(), move || crate::kernel::get(&iface)).await
    }

    async fn apply(&self, plan: &DevicePlan) -> Result<(), Error> {
        if plan.create {
            self.network.create_wireguard_link().await?;
        }
        if plan.changes.is_empty() {
            return Ok(());
        }
        let (iface, changes) = (self.iface().to_owned(), plan.changes.clone());
        let result = tokio::task::spawn_blocking(move || crate::kernel::set(&iface, &changes))
            .await
            .map_err(|e| {
                backend_error(
                    Component::WireGuard,
                    format!("configure {}: task failed", self.iface()),
                    e,
                )
            })?;
        match result {
            Ok(()) => Ok(()),
            Err(crate::kernel::SetError::Device(e)) => Err(backend_error(
                Component::WireGuard,
                format!("configure {}", self.iface()),
                e,
            )),
            Err(crate::kernel::SetError::Peers(failures)) => Err(Error::Partial {
                backend: Component::WireGuard,
                failures: failures
                    .0
                    .into_iter()
                    .map(|(key, e)| ItemFailure {
                        item: FailedItem::Peer(key),
                        reason: format!("configure {}: {e}", self.iface()),
                    })
                    .collect(),
            }),
        }
    }
}
