//! In-memory implementations of every trait, for tests and embedders. Each backend counts its
//! reads and writes and can be told to fail its next `n` writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::backend::{Firewall, HostNetwork, WireGuardDevice};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::keystore::KeyStore;
use crate::mesh::Snapshot;
use crate::plan::{DevicePlan, LinkChange, RouteChange, apply_device, apply_link, apply_routes};
use crate::state::{DeviceState, FirewallPolicy, LinkState, ObservedDevice, PeerStats};
use crate::{Component, Error, reconciler};

/// Write counting and fault injection shared by the in-memory backends.
#[derive(Debug, Default)]
struct Writes {
    count: AtomicU64,
    fail: AtomicU32,
    reads: AtomicU64,
}

impl Writes {
    fn read(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
    }

    fn write(&self, backend: Component) -> Result<(), Error> {
        let failing = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Error::backend(backend, "injected failure"));
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

macro_rules! fault_injection {
    ($ty:ty) => {
        impl $ty {
            /// Successful writes so far.
            pub fn writes(&self) -> u64 {
                self.writes.count.load(Ordering::SeqCst)
            }
            /// Reads so far.
            pub fn reads(&self) -> u64 {
                self.writes.reads.load(Ordering::SeqCst)
            }
            /// Makes the next `n` writes fail.
            pub fn fail_next(&self, n: u32) {
                self.writes.fail.store(n, Ordering::SeqCst);
            }
        }
    };
}

/// An in-memory WireGuard device.
#[derive(Debug, Default)]
pub struct MemoryDevice {
    state: Mutex<Option<DeviceState>>,
    stats: Mutex<BTreeMap<PublicKey, PeerStats>>,
    writes: Writes,
}
fault_injection!(MemoryDevice);

impl MemoryDevice {
    /// The current configuration (`None`: no interface).
    pub fn state(&self) -> Option<DeviceState> {
        self.state.lock().unwrap().clone()
    }
    /// Replaces the configuration, as if someone changed it by hand.
    pub fn set_state(&self, state: Option<DeviceState>) {
        *self.state.lock().unwrap() = state;
    }
    /// Sets a peer's counters, as traffic would.
    pub fn set_stats(&self, key: PublicKey, stats: PeerStats) {
        self.stats.lock().unwrap().insert(key, stats);
    }
}

#[async_trait]
impl WireGuardDevice for MemoryDevice {
    fn kind(&self) -> &str {
        "memory"
    }
    async fn read(&self) -> Result<Option<ObservedDevice>, Error> {
        self.writes.read();
        let config = self.state.lock().unwrap().clone();
        let stats = self.stats.lock().unwrap().clone();
        Ok(config.map(|config| ObservedDevice { config, stats }))
    }
    async fn apply(&self, plan: &DevicePlan) -> Result<(), Error> {
        self.writes.write(Component::WireGuard)?;
        apply_device(&mut self.state.lock().unwrap(), plan);
        Ok(())
    }
}

/// An in-memory link and routing table.
#[derive(Debug, Default)]
pub struct MemoryNetwork {
    state: Mutex<(LinkState, BTreeSet<IpNet>)>,
    writes: Writes,
}
fault_injection!(MemoryNetwork);

impl MemoryNetwork {
    /// The current link and routes.
    pub fn state(&self) -> (LinkState, BTreeSet<IpNet>) {
        self.state.lock().unwrap().clone()
    }
    /// Replaces link and routes, as if someone changed them by hand.
    pub fn set_state(&self, link: LinkState, routes: BTreeSet<IpNet>) {
        *self.state.lock().unwrap() = (link, routes);
    }
}

#[async_trait]
impl HostNetwork for MemoryNetwork {
    async fn read(&self) -> Result<(LinkState, BTreeSet<IpNet>), Error> {
        self.writes.read();
        Ok(self.state.lock().unwrap().clone())
    }
    async fn apply(&self, link: &[LinkChange], routes: &[RouteChange]) -> Result<(), Error> {
        self.writes.write(Component::Network)?;
        let mut state = self.state.lock().unwrap();
        apply_link(&mut state.0, link);
        apply_routes(&mut state.1, routes);
        Ok(())
    }
}

/// An in-memory firewall.
#[derive(Debug, Default)]
pub struct MemoryFirewall {
    policy: Mutex<Option<FirewallPolicy>>,
    writes: Writes,
}
fault_injection!(MemoryFirewall);

impl MemoryFirewall {
    /// The policy in force.
    pub fn policy(&self) -> Option<FirewallPolicy> {
        self.policy.lock().unwrap().clone()
    }
    /// Replaces the policy, as if someone changed the rules by hand (`None`: table deleted).
    pub fn set_policy(&self, policy: Option<FirewallPolicy>) {
        *self.policy.lock().unwrap() = policy;
    }
}

#[async_trait]
impl Firewall for MemoryFirewall {
    async fn read(&self) -> Result<Option<FirewallPolicy>, Error> {
        self.writes.read();
        Ok(self.policy.lock().unwrap().clone())
    }
    async fn apply(&self, policy: &FirewallPolicy) -> Result<(), Error> {
        self.writes.write(Component::Firewall)?;
        *self.policy.lock().unwrap() = Some(policy.clone());
        Ok(())
    }
}

/// A key store in memory.
#[derive(Debug)]
pub struct MemoryKeyStore {
    key: Mutex<PrivateKey>,
    cluster_secret: Mutex<Option<PresharedKey>>,
}

impl MemoryKeyStore {
    /// A store holding `key` and, optionally, a cluster secret.
    pub fn new(key: PrivateKey, cluster_secret: Option<PresharedKey>) -> Self {
        MemoryKeyStore {
            key: Mutex::new(key),
            cluster_secret: Mutex::new(cluster_secret),
        }
    }
    /// Replaces the cluster secret.
    pub fn set_cluster_secret(&self, secret: Option<PresharedKey>) {
        *self.cluster_secret.lock().unwrap() = secret;
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn load_or_create(&self) -> Result<PrivateKey, Error> {
        Ok(self.key.lock().unwrap().clone())
    }
    async fn rotate(&self) -> Result<PrivateKey, Error> {
        let key = PrivateKey::generate();
        *self.key.lock().unwrap() = key.clone();
        Ok(key)
    }
    async fn cluster_secret(&self) -> Result<Option<PresharedKey>, Error> {
        Ok(self.cluster_secret.lock().unwrap().clone())
    }
}

/// A peer source (a [`Stream`](futures::Stream)) fed by hand through a [`MemorySourceHandle`].
#[derive(Debug)]
pub struct MemorySource {
    rx: mpsc::UnboundedReceiver<Result<Snapshot, Error>>,
}

/// Sends snapshots (or failures) to a [`MemorySource`].
#[derive(Debug, Clone)]
pub struct MemorySourceHandle {
    tx: mpsc::UnboundedSender<Result<Snapshot, Error>>,
}

impl MemorySource {
    /// A source and the handle that feeds it.
    pub fn channel() -> (MemorySourceHandle, MemorySource) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MemorySourceHandle { tx }, MemorySource { rx })
    }
}

impl MemorySourceHandle {
    /// Publishes a new snapshot.
    pub fn send(&self, snapshot: Snapshot) {
        let _ = self.tx.send(Ok(snapshot));
    }
    /// Makes the source report a failure.
    pub fn fail(&self, message: &str) {
        let _ = self.tx.send(Err(Error::Source(message.into())));
    }
}

/// A stream of what the handles sent; it ends when every handle is dropped.
impl futures::Stream for MemorySource {
    type Item = Result<Snapshot, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// One of each in-memory backend, shared with the reconciler.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackends {
    /// The WireGuard device.
    pub device: Arc<MemoryDevice>,
    /// Link and routes.
    pub network: Arc<MemoryNetwork>,
    /// The firewall.
    pub firewall: Arc<MemoryFirewall>,
}

impl MemoryBackends {
    /// The reconciler's view of these backends, with `keys` as key store.
    pub fn handles(&self, keys: impl KeyStore + 'static) -> reconciler::Backends {
        reconciler::Backends {
            keys: Arc::new(keys),
            device: self.device.clone(),
            network: self.network.clone(),
            firewall: self.firewall.clone(),
        }
    }

    /// Successful writes across all three backends.
    pub fn writes(&self) -> u64 {
        self.device.writes() + self.network.writes() + self.firewall.writes()
    }
}
