//! The reconciler: see [`Reconciler`].

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use tokio::sync::watch;

use futures::{Stream, StreamExt as _};

use crate::backend::{Firewall, HostNetwork, WireGuardDevice};
use crate::error::{FailedItem, ItemFailure};
use crate::keystore::KeyStore;
use crate::mesh::{Mesh, Snapshot};
use crate::plan::{Plan, plan};
use crate::state::{HostSettings, HostState, ObservedDevice};
use crate::status::{PassInfo, PeerStatus, STALE_AFTER, Status};
use crate::text::Escaped;
use crate::{Error, PrivateKey, PublicKey};

/// What the reconciler needs to know besides the mesh.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This node's name in the snapshots.
    pub node_name: String,
    /// Overlay CIDRs; when non-empty they win over the source's.
    pub cluster_cidrs: Vec<IpNet>,
    /// Interface, bridge, port and MTU.
    pub host: HostSettings,
    /// Time between passes when nothing happens (drift repair). Default 30 s.
    pub resync: Duration,
    /// First retry delay after a failed pass. Default 500 ms.
    pub backoff_min: Duration,
    /// Longest retry delay. Default 30 s.
    pub backoff_max: Duration,
    /// Addresses the cluster CIDRs must not contain (this host's underlay addresses and default
    /// gateways; the daemon fills them in), nor this node's own endpoint: a mesh whose cluster
    /// CIDRs hold one is refused, and the last good mesh stays. A peer whose endpoint lies in
    /// the overlay is refused alone, by validation.
    pub underlay: Vec<IpAddr>,
    /// How long [`Reconciler::run`] gathers source items after the first of a burst before one
    /// pass takes them all. Default 25 ms.
    pub debounce: Duration,
}

impl Settings {
    /// Defaults for node `node_name` with these cluster CIDRs (empty: take the source's).
    pub fn new(node_name: impl Into<String>, cluster_cidrs: Vec<IpNet>) -> Self {
        Settings {
            node_name: node_name.into(),
            cluster_cidrs,
            host: HostSettings::default(),
            resync: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            underlay: Vec::new(),
            debounce: Duration::from_millis(25),
        }
    }

    /// The retry delay after `failures` consecutive failed passes.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_min
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// The backends a reconciler drives.
#[derive(Clone)]
pub struct Backends {
    /// Key store.
    pub keys: Arc<dyn KeyStore>,
    /// WireGuard device.
    pub device: Arc<dyn WireGuardDevice>,
    /// Link and routes.
    pub network: Arc<dyn HostNetwork>,
    /// Firewall.
    pub firewall: Arc<dyn Firewall>,
}

/// The reconciler: a level-triggered loop that keeps the host equal to the desired mesh.
///
/// Each pass reads the observed state from the backends, builds the desired state from the last
/// good mesh, plans the difference and applies it. A pass runs when the source reports news
/// and on every resync tick; a failed pass is retried with capped exponential backoff. A pass
/// for a source change plans against the host as the previous successful pass left it instead of
/// reading it all again (at thousands of peers the read is most of the work); the resync tick,
/// and any pass after a failure, reads everything, so drift is repaired within one `resync`. Nothing is
/// ever torn down because of an error, and a restart adopts what already exists: before the first
/// good snapshot nothing is planned, and an already-correct host plans to zero changes.
///
/// [`Reconciler::run`] takes the source as a stream and owns what every source would otherwise
/// do for itself (see [`PeerStream`](crate::PeerStream) for the contract):
/// - **Debouncing**: the first item after a quiet time opens a window of
///   [`Settings::debounce`]; every item arriving in it is taken, in order, and one pass follows
///   at its end (a burst costs one pass, and a change waits at most `debounce`).
/// - **Deduplication**: at the end of the window, a snapshot equal to the mesh in force (while
///   no source error is shown), or an error equal to the one shown, causes no pass.
/// - **Errors**: an error keeps the last good mesh and is shown in
///   [`Status::source_error`]; the next snapshot that makes a valid mesh clears it, even if it
///   equals the mesh in force (that one does cause a pass). An error queued right behind a
///   snapshot no pass has taken yet does not discard it ([`Reconciler::update`]). After an
///   error the source is polled again one second later, so a failing source cannot spin.
///
/// Keeps a host equal to the mesh a peer source describes.
pub struct Reconciler {
    settings: Settings,
    backends: Backends,
    /// A source update not yet taken into account.
    pending: Option<Result<Snapshot, Error>>,
    /// A source error that came after a snapshot still pending: shown once that snapshot is
    /// taken into account (the error does not discard it).
    pending_error: Option<Error>,
    /// The last good mesh (it keeps the snapshot it was built from).
    mesh: Option<Mesh>,
    status: watch::Sender<Status>,
    hook: Option<PassHook>,
    /// The host as the last successful pass left it (what was read, with the plan applied) and
    /// the device counters last read. Passes triggered by the source plan against it instead of
    /// reading everything again; resync ticks, and any pass after a failure, read the host.
    expected: Option<(HostState, Option<ObservedDevice>)>,
    /// The text of the plan last logged while it has not been applied in full (a retry of the
    /// same plan logs one line).
    last_plan: Option<String>,
}

/// Called after every pass with its outcome and, if it succeeded, the plan it applied.
pub(crate) type PassHook = Box<dyn FnMut(&PassInfo, Option<&Plan>) + Send + Sync>;

impl Reconciler {
    /// A reconciler with no mesh yet: until a snapshot arrives it only observes.
    pub fn new(settings: Settings, backends: Backends) -> Self {
        let status = Status {
            node_name: settings.node_name.clone(),
            backend: backends.device.kind().to_owned(),
            interface: settings.host.interface.to_string(),
            mtu: settings.host.mtu,
            ..Status::default()
        };
        Reconciler {
            settings,
            backends,
            pending: None,
            pending_error: None,
            mesh: None,
            status: watch::channel(status).0,
            hook: None,
            expected: None,
            last_plan: None,
        }
    }

    /// A handle on the status, updated after every pass; `borrow()` is cheap.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Calls `hook` after every pass (for metrics, or to show plans as they are applied).
    pub fn on_pass(&mut self, hook: impl FnMut(&PassInfo, Option<&Plan>) + Send + Sync + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// The mesh in force (the last good one).
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// Hands the reconciler a source update; the next pass takes it into account. An error (or a
    /// snapshot that makes no valid mesh) keeps the last good mesh in force. An error right
    /// after a snapshot that no pass has taken yet does not discard it (a source that starts
    /// from a saved picture while its server is down yields the picture, then the outage): the
    /// snapshot applies, and the error is shown.
    pub fn update(&mut self, update: Result<Snapshot, Error>) {
        match (update, self.pending.take()) {
            (Err(e), Some(Ok(snapshot))) => {
                self.pending = Some(Ok(snapshot));
                self.pending_error = Some(e);
            }
            (update, _) => {
                self.pending = Some(update);
                self.pending_error = None;
            }
        }
    }

    /// Whether the pending update calls for a pass: not a snapshot equal to the mesh in force
    /// while no error is shown, nor the error already shown. Without news, the pending update
    /// is dropped.
    fn take_news(&mut self) -> bool {
        let shown = self.status.borrow().source_error.clone();
        let news = match &self.pending {
            None => false,
            Some(Err(e)) => shown.as_deref() != Some(&crate::ErrorChain(e).to_string()),
            Some(Ok(snapshot)) => {
                shown.is_some()
                    || self.pending_error.is_some()
                    || self.mesh.as_ref().is_none_or(|m| m.snapshot() != snapshot)
            }
        };
        if !news {
            self.pending = None;
        }
        news
    }

    /// Takes the pending update into account (or rebuilds the mesh after a key change), then
    /// shows a source error that came after it.
    fn refresh_mesh(&mut self, key: &PrivateKey) {
        let error = self.pending_error.take();
        self.take_pending(key);
        if let Some(e) = error {
            tracing::warn!(error = %crate::ErrorChain(&e), "keeping the last good mesh");
            self.status
                .send_modify(|s| s.source_error = Some(crate::ErrorChain(&e).to_string()));
        }
    }

    fn take_pending(&mut self, key: &PrivateKey) {
        let public = key.public_key();
        let rebuilt = match (self.pending.take(), &self.mesh) {
            (Some(Err(e)), _) => Err(e),
            // The same picture again (a source may repeat itself): nothing to rebuild.
            (Some(Ok(snapshot)), Some(mesh))
                if mesh.local.public_key == public && *mesh.snapshot() == snapshot =>
            {
                self.status.send_modify(|s| s.source_error = None);
                return;
            }
            (Some(Ok(snapshot)), _) => self.build(snapshot, &public),
            // A new key (rotation): rebuild the last good picture around it.
            (None, Some(mesh)) if mesh.local.public_key != public => {
                self.build(mesh.snapshot().clone(), &public)
            }
            (None, _) => return,
        };
        match rebuilt {
            Ok(mesh) => {
                let old = self
                    .mesh
                    .as_ref()
                    .map(|m| &m.rejected[..])
                    .unwrap_or_default();
                for rejection in mesh.rejected.iter().filter(|r| !old.contains(r)) {
                    tracing::warn!(
                        peer = %Escaped(&rejection.name),
                        origin = %Escaped(&rejection.origin),
                        reason = %rejection.reason,
                        "peer rejected"
                    );
                }
                self.status.send_modify(|s| s.source_error = None);
                self.mesh = Some(mesh);
            }
            Err(e) => {
                let kept = if self.mesh.is_some() {
                    "keeping the last good mesh"
                } else {
                    "no mesh yet"
                };
                tracing::warn!(error = %crate::ErrorChain(&e), "{kept}");
                self.status
                    .send_modify(|s| s.source_error = Some(crate::ErrorChain(&e).to_string()));
            }
        }
    }

    fn build(&self, snapshot: Snapshot, public: &crate::PublicKey) -> Result<Mesh, Error> {
        let s = &self.settings;
        let mesh = Mesh::build(
            &s.node_name,
            public,
            &s.cluster_cidrs,
            snapshot,
            self.mesh.as_ref(),
        )?;
        underlay_outside_overlay(&mesh, &s.underlay)?;
        Ok(mesh)
    }

    async fn observe(&self) -> Result<(HostState, Option<ObservedDevice>), Error> {
        let b = &self.backends;
        let (device, (link, routes), firewall) =
            tokio::try_join!(b.device.read(), b.network.read(), b.firewall.read())?;
        let state = HostState {
            device: device.as_ref().map(|d| d.config.clone()),
            link,
            routes,
            firewall,
        };
        Ok((state, device))
    }

    /// Applies `plan`. Changes a backend could not apply while it applied the rest (a peer the
    /// kernel refused, a route that exists and is not ours) are returned, not raised: the other
    /// steps still run, so one peer's problem never holds back another's changes.
    async fn apply(&self, plan: &Plan) -> Result<Vec<ItemFailure>, Error> {
        let b = &self.backends;
        let mut failures = Vec::new();
        let mut partial = |result: Result<(), Error>| match result {
            Err(Error::Partial { failures: f, .. }) => {
                failures.extend(f);
                Ok(())
            }
            other => other,
        };
        if let Some(policy) = &plan.firewall {
            b.firewall.apply(policy).await?;
        }
        if plan.device.create || !plan.device.changes.is_empty() {
            partial(b.device.apply(&plan.device).await)?;
        }
        if !plan.link.is_empty() || !plan.routes.is_empty() {
            partial(b.network.apply(&plan.link, &plan.routes).await)?;
        }
        Ok(failures)
    }

    /// One pass. With `read` false and the host as the last pass left it known, that is used
    /// instead of reading the backends. Returns the plan, the device as last read (for
    /// counters), and whether the device exists now.
    async fn pass(&mut self, read: bool) -> Result<PassOutcome, Error> {
        let key = self.backends.keys.load_or_create().await?;
        let secret = self.backends.keys.cluster_secret().await?;
        self.refresh_mesh(&key);
        self.status
            .send_modify(|s| s.public_key = Some(key.public_key()));
        // Taken: a failure below leaves nothing cached, so the next pass reads the host.
        let (observed, device) = match (read, self.expected.take()) {
            (false, Some(known)) => known,
            _ => self.observe().await?,
        };
        let mut failures = Vec::new();
        let plan = match &self.mesh {
            // Nothing desired yet: adopt what is there, change nothing.
            None => Plan::default(),
            Some(mesh) => {
                let mut desired =
                    HostState::desired(mesh, &key, secret.as_ref(), &self.settings.host);
                // Peers with a handshake in the last 3 minutes, as the device reports them or
                // as the status remembers them (a device may forget one).
                let now = SystemTime::now();
                let fresh = |at: &Option<SystemTime>| {
                    at.is_some_and(|t| now.duration_since(t).unwrap_or_default() <= STALE_AFTER)
                };
                // Only when some peer has an observation: no work per pass otherwise.
                let observations = mesh.peers.iter().any(|p| p.observed_endpoint.is_some());
                let handshaken: HashSet<PublicKey> = if !observations {
                    HashSet::new()
                } else {
                    let status = self.status.borrow();
                    let by_status = status
                        .peers
                        .iter()
                        .filter(|p| fresh(&p.latest_handshake))
                        .map(|p| p.public_key);
                    let by_device = device.iter().flat_map(|d| {
                        d.stats
                            .iter()
                            .filter(|(_, s)| fresh(&s.latest_handshake))
                            .map(|(k, _)| *k)
                    });
                    by_status.chain(by_device).collect()
                };
                desired.use_observed_endpoints(mesh, &observed, |peer| handshaken.contains(peer));
                let plan = plan(&desired, &observed);
                if !plan.is_empty() {
                    // A retry of the same plan is one line, not the whole plan again.
                    let text = plan.display(Some(mesh)).to_string();
                    if self.last_plan.as_deref() == Some(&text) {
                        tracing::info!("retrying the same {} change(s)", plan.len());
                    } else {
                        tracing::info!("applying {} change(s):\n{text}", plan.len());
                        self.last_plan = Some(text);
                    }
                    failures = self.apply(&plan).await?;
                }
                plan
            }
        };
        let mut after = observed;
        plan.apply_to(&mut after);
        let present = after.device.is_some();
        if failures.is_empty() {
            self.last_plan = None;
            self.expected = Some((after, device.clone()));
        }
        // else: not all of the plan is in place; the next pass reads the host.
        Ok(PassOutcome {
            plan,
            device,
            present,
            failures,
        })
    }

    /// Runs one pass: read the host, plan, apply. Returns the plan it applied.
    pub async fn reconcile(&mut self) -> Result<Plan, Error> {
        self.reconcile_reading(true).await
    }

    /// A pass for a source change: plans against the host as the last pass left it when that is
    /// known (resync ticks repair what others changed meanwhile), else reads it.
    pub async fn reconcile_change(&mut self) -> Result<Plan, Error> {
        self.reconcile_reading(false).await
    }

    async fn reconcile_reading(&mut self, read: bool) -> Result<Plan, Error> {
        let started = Instant::now();
        let at = SystemTime::now();
        let result = self.pass(read).await;
        let duration = started.elapsed();
        let mesh = self.mesh.as_ref();
        // Items that failed alone: the pass counts as failed (retried with backoff), but
        // everything else it applied is shown, and the failures on their peers' rows.
        let partial = result
            .as_ref()
            .ok()
            .filter(|o| !o.failures.is_empty())
            .map(|o| Error::Partial {
                backend: crate::Component::Host,
                failures: o.failures.clone(),
            });
        let error = result.as_ref().err().or(partial.as_ref());
        let info = PassInfo {
            at,
            duration,
            changes: result.as_ref().map_or(0, |o| o.plan.len()),
            error: error.map(|e| crate::ErrorChain(e).to_string()),
        };
        if let Some(hook) = &mut self.hook {
            hook(&info, result.as_ref().ok().map(|o| &o.plan));
        }
        self.status.send_modify(|s| {
            s.passes += 1;
            s.last_pass = Some(info);
            if let Ok(outcome) = &result {
                if outcome.failures.is_empty() {
                    s.last_success = Some(at);
                }
                s.device_present = outcome.present;
                s.firewall_drops = self.backends.firewall.drops();
                if let Some(mesh) = mesh {
                    s.configured = true;
                    s.pod_cidrs = mesh.local.pod_cidrs.clone();
                    s.rejected = mesh.rejected.clone();
                    s.peers = peer_statuses(mesh, outcome.device.as_ref(), &s.peers);
                    s.peer_problems = peer_problems(mesh, &outcome.failures);
                }
            }
            if let Some(e) = error {
                s.errors += 1;
                *s.errors_by_kind.entry(e.kind().to_owned()).or_default() += 1;
            }
        });
        match (result, partial) {
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
            (Ok(outcome), None) => Ok(outcome.plan),
        }
    }

    /// Runs until `shutdown` completes: a pass for every source change (debounced and
    /// deduplicated, see the [`Reconciler`] docs) and resync tick, with backoff after failures.
    /// Returns without tearing anything down.
    ///
    /// `source` is any stream of snapshots; its errors may be of any type convertible into
    /// `Box<dyn Error + Send + Sync>`: they are shown as [`Error::Source`], except a
    /// [`wormhole_core::Error`](Error), kept as it is. See [`PeerStream`](crate::PeerStream).
    pub async fn run<S, E>(mut self, source: S, shutdown: impl Future<Output = ()>)
    where
        S: Stream<Item = Result<Snapshot, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use tokio::time::Instant;
        let source = source.map(|item| item.map_err(crate::source::source_error));
        tokio::pin!(source);
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        // The next resync tick or retry; the first pass adopts what is there.
        let mut next_pass = Instant::now();
        // The end of the debounce window, while one is open.
        let mut window: Option<Instant> = None;
        // After a source error: when to poll the source again.
        let mut paused: Option<Instant> = None;
        let mut source_open = true;
        loop {
            // A pass for a source change plans against what the last pass left; ticks read.
            let for_change = tokio::select! {
                () = &mut shutdown => break,
                item = source.next(), if source_open && paused.is_none() => {
                    match item {
                        Some(item) => {
                            if item.is_err() {
                                paused = Some(Instant::now() + SOURCE_RETRY);
                            }
                            self.update(item);
                            window.get_or_insert(Instant::now() + self.settings.debounce);
                        }
                        None => {
                            source_open = false;
                            tracing::error!("peer source stopped; keeping the last good mesh");
                        }
                    }
                    continue;
                }
                () = sleep_until_some(paused), if paused.is_some() => {
                    paused = None;
                    continue;
                }
                () = sleep_until_some(window), if window.is_some() => {
                    window = None;
                    if !self.take_news() {
                        continue;
                    }
                    true
                }
                () = tokio::time::sleep_until(next_pass) => false,
            };
            let result = self.reconcile_reading(!for_change).await;
            match result {
                Ok(_) => {
                    failures = 0;
                    next_pass = Instant::now() + self.settings.resync;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = self.settings.backoff(failures);
                    tracing::warn!(error = %crate::ErrorChain(&e), retry_in = ?delay, "reconcile failed");
                    next_pass = Instant::now() + delay;
                }
            }
        }
        tracing::info!("reconciler stopped; interface, routes and rules left in place");
    }
}

/// How long [`Reconciler::run`] waits after a source error before polling the source again.
const SOURCE_RETRY: Duration = Duration::from_secs(1);

/// Sleeps until `at` (`None`: forever; the branches using it are disabled then).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Refuses cluster CIDRs that hold an underlay address of this host (given in `underlay`, or
/// this node's own endpoint): the no-cleartext and anti-spoofing rules would drop the underlay
/// traffic itself, WireGuard's included, and cut the node off. Only this node's own settings
/// can fail here: a peer's endpoint inside the overlay is refused with that peer alone
/// ([`RejectReason::EndpointInOverlay`](crate::RejectReason::EndpointInOverlay)).
fn underlay_outside_overlay(mesh: &Mesh, underlay: &[IpAddr]) -> Result<(), Error> {
    let overlay: Vec<IpNet> = mesh
        .cluster_cidrs
        .iter()
        .chain(&mesh.external_cidrs)
        .copied()
        .collect();
    let host = underlay.iter().map(|ip| {
        (
            *ip,
            "this host's underlay address or default gateway".to_owned(),
        )
    });
    let own = mesh.local.endpoint.map(|e| {
        (
            e.ip(),
            format!("the endpoint of this node ({})", mesh.local.name),
        )
    });
    for (address, what) in host.chain(own) {
        if let Some(cidr) = crate::mesh::overlay_holding(&overlay, address) {
            return Err(Error::ClusterCidrConflict {
                cidr,
                address: address.to_canonical(),
                what,
            });
        }
    }
    Ok(())
}

/// What one pass did: the plan, the device as last read (for counters), whether the device
/// exists now, and the changes that failed alone.
struct PassOutcome {
    plan: Plan,
    device: Option<ObservedDevice>,
    present: bool,
    failures: Vec<ItemFailure>,
}

/// Failed items on the peers they concern: a route by the peer whose pod CIDR it is.
fn peer_problems(mesh: &Mesh, failures: &[ItemFailure]) -> BTreeMap<PublicKey, String> {
    let mut problems: BTreeMap<PublicKey, String> = BTreeMap::new();
    for failure in failures {
        let peer = match failure.item {
            FailedItem::Peer(key) => Some(key),
            FailedItem::Route(net) => mesh
                .peers
                .iter()
                .find(|p| p.pod_cidrs.contains(&net))
                .map(|p| p.public_key),
        };
        if let Some(key) = peer {
            let text = problems.entry(key).or_default();
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&failure.reason);
        }
    }
    problems
}

/// The peers' rows from the device's counters. The latest handshake is the newest seen, in this
/// pass or an earlier one: a device may forget it once the session expires (gotatun reports no
/// handshake then), which would turn a peer that stopped answering from `stale` into `never`.
fn peer_statuses(
    mesh: &Mesh,
    device: Option<&ObservedDevice>,
    previous: &[PeerStatus],
) -> Vec<PeerStatus> {
    let seen: BTreeMap<PublicKey, SystemTime> = previous
        .iter()
        .filter_map(|p| Some((p.public_key, p.latest_handshake?)))
        .collect();
    mesh.peers
        .iter()
        .map(|p| (p, false))
        .chain(mesh.external.iter().map(|p| (p, true)))
        .map(|(p, external)| {
            let stats = device
                .and_then(|d| d.stats.get(&p.public_key))
                .copied()
                .unwrap_or_default();
            let learned = device
                .and_then(|d| d.config.peers.get(&p.public_key))
                .and_then(|c| c.endpoint);
            PeerStatus {
                name: p.name.clone(),
                public_key: p.public_key,
                endpoint: p.endpoint.or(learned),
                endpoint_learned: p.endpoint.is_none() && learned.is_some(),
                allowed_ips: p.pod_cidrs.clone(),
                latest_handshake: stats.latest_handshake.max(seen.get(&p.public_key).copied()),
                rx_bytes: stats.rx_bytes,
                tx_bytes: stats.tx_bytes,
                probe: None,
                external,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryBackends, MemoryKeyStore};
    use crate::mesh::NodeEntry;

    /// Issue 9: the saved picture and the outage queued together while a pass ran; the picture
    /// must apply and the outage be shown.
    #[tokio::test(start_paused = true)]
    async fn a_snapshot_with_an_error_queued_behind_it_is_applied() {
        let key = PrivateKey::generate();
        let peer = PrivateKey::generate().public_key();
        let entry = |name: &str, key: &PublicKey, cidr: &str| NodeEntry {
            name: name.into(),
            public_key: key.to_base64(),
            endpoint: Some("192.168.77.2:51820".into()),
            pod_cidrs: vec![cidr.into()],
            persistent_keepalive: None,
            origin: name.into(),
        };
        let snapshot = Snapshot {
            nodes: vec![
                entry("local", &key.public_key(), "10.99.1.0/24"),
                entry("a", &peer, "10.99.2.0/24"),
            ],
            ..Snapshot::default()
        };
        let backends = MemoryBackends::default();
        let settings = Settings::new("local", vec!["10.99.0.0/16".parse().unwrap()]);
        let r = Reconciler::new(settings, backends.handles(MemoryKeyStore::new(key, None)));
        // Both queued in the source before the reconciler looks: each goes through `update`.
        let queued = futures::stream::iter([
            Ok(snapshot),
            Err(Error::Source("api server unreachable".into())),
        ])
        .chain(futures::stream::pending());
        let mut status = r.status();
        let task = tokio::spawn(r.run(queued, std::future::pending()));
        status.wait_for(|s| s.source_error.is_some()).await.unwrap();
        task.abort();
        let status = status.borrow().clone();
        assert!(status.ready(), "the snapshot applied: {status:?}");
        assert_eq!(status.peers.len(), 1);
        assert_eq!(
            status.source_error.as_deref(),
            Some("peer source: api server unreachable")
        );
    }
}
