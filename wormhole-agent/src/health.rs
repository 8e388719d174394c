//! Per-peer health: every peer is probed through the tunnel (ICMP echo to its overlay address,
//! answered by its kernel) at a low rate with jitter, within a packet budget shared by all peers.
//! Small probes measure reachability, round-trip time and loss; full-size probes find path-MTU
//! black holes, whose limit a binary search then measures (packetization-layer PMTU discovery
//! in the style of RFC 8899). The results go into each peer's [`ProbeReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use wormhole_core::{ProbeReport, PublicKey, Status, overlay_address};
use wormhole_linux::Pinger;

/// How probing runs (see [`AgentBuilder::probe_interval`](crate::AgentBuilder::probe_interval)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeSettings {
    /// Time between a peer's probe rounds (±20 % jitter).
    pub(crate) interval: Duration,
    /// At most this many probes per second to all peers together.
    pub(crate) rate: u32,
    /// The WireGuard MTU: the size of full-size probes.
    pub(crate) mtu: u32,
}

impl ProbeSettings {
    /// How long a probe's answer is waited for.
    fn timeout(&self) -> Duration {
        self.interval.min(Duration::from_secs(2))
    }
}

/// Small probes in the loss window.
const WINDOW: u32 = 20;
/// A full-size probe every this many rounds (every round while one is missing).
const BIG_EVERY: u64 = 3;
/// Full-size probes lost in a row, while small ones pass, before the size is searched.
const BIG_LOST_TO_SEARCH: u32 = 3;
/// The search stops when the sizes that pass and fail are this close (WireGuard pads to 16).
const SEARCH_STEP: u32 = 16;
/// A black hole's limit is searched again every this many rounds (the path may change).
const RESEARCH_EVERY: u64 = 30;

/// Round-trip times and loss reach the status at least this often (state changes within a
/// second).
const REFRESH: Duration = Duration::from_secs(10);

/// One peer's probe results, and what to probe next: pure, so it is tested without sockets, and
/// small (about 80 bytes), so that 5,000 peers cost little.
#[derive(Debug, Clone, Copy)]
struct PeerProbe {
    mtu: u32,
    /// The size of small probes.
    small: u32,
    /// The latest small probes' outcomes, newest in bit 0 (1: lost), `sent` of them.
    lost_bits: u32,
    sent: u32,
    lost_in_a_row: u32,
    last_rtt: Option<Duration>,
    smoothed_rtt: Option<Duration>,
    big_lost_in_a_row: u32,
    /// The largest size seen to pass.
    path_mtu: Option<u32>,
    /// Full size fails while small passes; `path_mtu` is the searched limit.
    blackhole: bool,
    /// The round of the latest search.
    searched_at: Option<u64>,
}

impl PeerProbe {
    fn new(mtu: u32, small: u32) -> Self {
        PeerProbe {
            mtu,
            small,
            lost_bits: 0,
            sent: 0,
            lost_in_a_row: 0,
            last_rtt: None,
            smoothed_rtt: None,
            big_lost_in_a_row: 0,
            path_mtu: None,
            blackhole: false,
            searched_at: None,
        }
    }

    fn small_result(&mut self, rtt: Option<Duration>) {
        // The loss window starts at the first answer: probes lost before a peer ever answered
        // (its tunnel not up yet: a node behind NAT waiting for its first handshake, a node
        // starting) say nothing about the path's loss. They still count in a row, so a peer
        // whose handshakes pass and whose data never does is `unreachable`.
        if rtt.is_some() && self.last_rtt.is_none() {
            self.lost_bits = 0;
            self.sent = 0;
        }
        self.lost_bits = ((self.lost_bits << 1) | u32::from(rtt.is_none())) & ((1 << WINDOW) - 1);
        self.sent = (self.sent + 1).min(WINDOW);
        match rtt {
            Some(rtt) => {
                self.lost_in_a_row = 0;
                self.last_rtt = Some(rtt);
                self.smoothed_rtt = Some(match self.smoothed_rtt {
                    None => rtt,
                    Some(s) => (s * 7 + rtt) / 8,
                });
                self.path_mtu = Some(self.path_mtu.unwrap_or(0).max(self.small));
            }
            None => self.lost_in_a_row += 1,
        }
    }

    /// Whether round `round` (whose small probe got `small_ok`) sends a full-size probe.
    fn wants_big(&self, round: u64, small_ok: bool) -> bool {
        small_ok && (round.is_multiple_of(BIG_EVERY) || self.big_lost_in_a_row > 0)
    }

    /// A full-size probe's result; true when the limit must be searched now.
    fn big_result(&mut self, round: u64, passed: bool) -> bool {
        if passed {
            self.big_lost_in_a_row = 0;
            self.blackhole = false;
            self.path_mtu = Some(self.mtu);
            return false;
        }
        self.big_lost_in_a_row += 1;
        let due = match (self.blackhole, self.searched_at) {
            (true, Some(at)) => round >= at + RESEARCH_EVERY,
            _ => true,
        };
        self.big_lost_in_a_row >= BIG_LOST_TO_SEARCH && due
    }

    /// The search's outcome: the largest size that passed.
    fn searched(&mut self, round: u64, max: u32) {
        self.blackhole = true;
        self.path_mtu = Some(max);
        self.searched_at = Some(round);
    }

    fn report(&self) -> ProbeReport {
        let mut r = ProbeReport::default();
        r.sent = self.sent;
        r.lost = self.lost_bits.count_ones();
        r.lost_in_a_row = self.lost_in_a_row;
        r.last_rtt = self.last_rtt;
        r.smoothed_rtt = self.smoothed_rtt;
        r.path_mtu = self.path_mtu;
        r.mtu_blackhole = self.blackhole;
        r
    }
}

/// Binary search of the largest size in `passes..fails` that gets through, to
/// [`SEARCH_STEP`]; `try_size` is asked about each size tried (twice before a size counts as
/// failing: a single loss is not a limit).
async fn search<F, Fut>(mut passes: u32, mut fails: u32, mut try_size: F) -> u32
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while fails - passes > SEARCH_STEP {
        let mid = passes + (fails - passes) / 2;
        if try_size(mid).await || try_size(mid).await {
            passes = mid;
        } else {
            fails = mid;
        }
    }
    passes
}

/// At most `rate` probes a second, for all peers together: each probe waits for its slot.
#[derive(Debug)]
struct Budget {
    next: Mutex<Instant>,
    gap: Duration,
}

impl Budget {
    fn new(rate: u32) -> Self {
        Budget {
            next: Mutex::new(Instant::now()),
            gap: Duration::from_secs(1) / rate.max(1),
        }
    }

    async fn slot(&self) {
        let at = {
            let mut next = self.next.lock().expect("not poisoned");
            let at = (*next).max(Instant::now());
            *next = at + self.gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// A fraction in [0, 1), for jitter.
fn random_fraction() -> f64 {
    use rand_core::RngCore as _;
    f64::from(rand_core::OsRng.next_u32()) / (f64::from(u32::MAX) + 1.0)
}

/// What the scheduler keeps per peer.
#[derive(Debug)]
struct Entry {
    target: IpAddr,
    probe: PeerProbe,
    round: u64,
}

type Entries = Arc<Mutex<BTreeMap<PublicKey, Entry>>>;

/// What a round needs besides its peer.
#[derive(Debug, Clone)]
struct Rounds {
    pinger: Arc<Pinger>,
    budget: Arc<Budget>,
    settings: ProbeSettings,
    entries: Entries,
    done: tokio::sync::mpsc::UnboundedSender<PublicKey>,
    /// Set when a round changed its peer's state: published within a second.
    state_changed: Arc<std::sync::atomic::AtomicBool>,
}

impl Rounds {
    /// One probe of `size` to `target`, within the budget: its round-trip time, or `None`.
    async fn ping(&self, target: IpAddr, size: u32) -> Option<Duration> {
        self.budget.slot().await;
        match self
            .pinger
            .ping(target, size, self.settings.timeout())
            .await
        {
            Ok(rtt) => rtt,
            Err(e) => {
                tracing::debug!(%target, size, error = %e, "probe not sent");
                None
            }
        }
    }

    /// One round for `key`: a small probe, a full-size one when due, a search when one is
    /// missing; then the results are stored and the scheduler told.
    async fn run(self, key: PublicKey, target: IpAddr) {
        let Some((mut state, round)) = self
            .entries
            .lock()
            .expect("not poisoned")
            .get(&key)
            .map(|e| (e.probe, e.round))
        else {
            let _ = self.done.send(key);
            return;
        };
        let rtt = self.ping(target, state.small).await;
        state.small_result(rtt);
        if state.wants_big(round, rtt.is_some()) {
            let passed = self.ping(target, state.mtu).await.is_some();
            if state.big_result(round, passed) {
                let max = search(state.small, state.mtu, |size| {
                    let this = self.clone();
                    async move { this.ping(target, size).await.is_some() }
                })
                .await;
                tracing::info!(%target, max, mtu = state.mtu, "path-MTU black hole: larger packets vanish");
                state.searched(round, max);
            }
        }
        if let Some(e) = self.entries.lock().expect("not poisoned").get_mut(&key)
            && e.target == target
        {
            if e.probe.sent == 0 || e.probe.report().state() != state.report().state() {
                self.state_changed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            e.probe = state;
            e.round = round + 1;
        }
        let _ = self.done.send(key);
    }
}

/// The address a peer is probed at: the overlay address of its first IPv4 pod CIDR, else of its
/// first one.
fn target(allowed_ips: &[ipnet::IpNet]) -> Option<IpAddr> {
    allowed_ips
        .iter()
        .find(|c| c.addr().is_ipv4())
        .or(allowed_ips.first())
        .map(|c| overlay_address(c).addr())
}

/// `interval` ± 20 %.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * random_fraction())
}

/// Keeps `out` equal to the reconciler's status with each peer's probe report in it (within a
/// second of a state change, and every [`REFRESH`] otherwise): probes the peers of `status`, or, with `settings` `None` or no raw
/// socket, passes the status through.
///
/// One task schedules every peer's rounds (the next round of each peer in one ordered set);
/// a round runs as a task of its own only while its probes are in flight, so 5,000 peers cost
/// 5,000 small entries, not 5,000 tasks.
pub(crate) async fn run(
    mut status: watch::Receiver<Status>,
    settings: Option<ProbeSettings>,
    out: watch::Sender<Status>,
) {
    let pinger = match settings.map(|_| Pinger::new()) {
        Some(Ok(p)) => Some(Arc::new(p)),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot open ICMP sockets (CAP_NET_RAW needed): peers are not probed");
            None
        }
        None => None,
    };
    let (Some(settings), Some(pinger)) = (settings, pinger) else {
        loop {
            let current = status.borrow_and_update().clone();
            out.send_replace(current);
            if status.changed().await.is_err() {
                return;
            }
        }
    };
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let rounds = Rounds {
        pinger,
        budget: Arc::new(Budget::new(settings.rate)),
        settings,
        entries: Arc::default(),
        done,
        state_changed: Arc::default(),
    };
    // Each peer is either idle, by the time of its next round, or has a round in flight.
    let mut due: BTreeSet<(Instant, PublicKey)> = BTreeSet::new();
    let mut in_flight: BTreeSet<PublicKey> = BTreeSet::new();
    let mut running = tokio::task::JoinSet::new();
    let mut publish = tokio::time::interval(Duration::from_secs(1));
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peers_changed = true;
    let mut publish_now = true;
    let mut published = Instant::now();
    loop {
        if publish_now {
            publish_now = false;
            published = Instant::now();
            let mut merged = status.borrow().clone();
            {
                let entries = rounds.entries.lock().expect("not poisoned");
                for p in &mut merged.peers {
                    p.probe = entries
                        .get(&p.public_key)
                        .filter(|e| e.probe.sent > 0)
                        .map(|e| e.probe.report());
                }
            }
            out.send_if_modified(|current| {
                let changed = *current != merged;
                *current = merged;
                changed
            });
        }
        if peers_changed {
            peers_changed = false;
            let wanted: BTreeMap<PublicKey, IpAddr> = status
                .borrow_and_update()
                .peers
                .iter()
                .filter(|p| !p.external)
                .filter_map(|p| Some((p.public_key, target(&p.allowed_ips)?)))
                .collect();
            let mut entries = rounds.entries.lock().expect("not poisoned");
            entries.retain(|key, e| wanted.get(key) == Some(&e.target));
            due.retain(|(_, key)| entries.contains_key(key));
            for (key, addr) in wanted {
                entries.entry(key).or_insert_with(|| {
                    // Spread over the interval.
                    let first = Instant::now() + settings.interval.mul_f64(random_fraction());
                    if !in_flight.contains(&key) {
                        due.insert((first, key));
                    }
                    let small = Pinger::min_size(addr.is_ipv6()).max(64);
                    Entry {
                        target: addr,
                        probe: PeerProbe::new(settings.mtu, small),
                        round: 0,
                    }
                });
            }
        }
        let now = Instant::now();
        while let Some(&(at, key)) = due.first()
            && at <= now
        {
            due.pop_first();
            let target = rounds
                .entries
                .lock()
                .expect("not poisoned")
                .get(&key)
                .map(|e| e.target);
            if let Some(target) = target {
                in_flight.insert(key);
                running.spawn(rounds.clone().run(key, target));
            }
        }
        let next = due.first().map(|(at, _)| *at);
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                peers_changed = true;
                publish_now = true;
            }
            Some(key) = finished.recv() => {
                in_flight.remove(&key);
                if rounds.entries.lock().expect("not poisoned").contains_key(&key) {
                    due.insert((Instant::now() + jittered(settings.interval), key));
                }
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = sleep_until_some(next) => {}
            // A state change within a second; round-trip times and loss every REFRESH (merging
            // thousands of peers every second would cost more than probing them).
            _ = publish.tick() => {
                publish_now = rounds.state_changed.swap(false, std::sync::atomic::Ordering::Relaxed)
                    || published.elapsed() >= REFRESH;
            }
        }
    }
    running.abort_all();
}

/// Sleeps until `at`, or forever with none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_probes_give_loss_rtt_and_unreachable() {
        let mut p = PeerProbe::new(1420, 64);
        assert_eq!(p.report().sent, 0);
        p.small_result(Some(Duration::from_millis(8)));
        p.small_result(Some(Duration::from_millis(16)));
        let r = p.report();
        assert_eq!((r.sent, r.lost), (2, 0));
        assert_eq!(r.last_rtt, Some(Duration::from_millis(16)));
        assert_eq!(r.smoothed_rtt, Some(Duration::from_millis(9)));
        for _ in 0..wormhole_core::UNREACHABLE_AFTER {
            p.small_result(None);
        }
        assert_eq!(p.report().state(), wormhole_core::PeerState::Unreachable);
        p.small_result(Some(Duration::from_millis(8)));
        assert_eq!(p.report().lost_in_a_row, 0);
        // The window keeps the latest WINDOW results only.
        for _ in 0..WINDOW {
            p.small_result(Some(Duration::from_millis(8)));
        }
        assert_eq!((p.report().sent, p.report().lost), (WINDOW, 0));
    }

    #[test]
    fn probes_lost_before_the_first_answer_are_no_loss() {
        let mut p = PeerProbe::new(1420, 64);
        for _ in 0..4 {
            p.small_result(None);
        }
        assert_eq!(p.report().lost_in_a_row, 4);
        p.small_result(Some(Duration::from_millis(3)));
        let r = p.report();
        assert_eq!((r.sent, r.lost), (1, 0));
        assert_eq!(r.state(), wormhole_core::PeerState::Ok);
        // From then on, every loss counts.
        p.small_result(None);
        p.small_result(None);
        p.small_result(Some(Duration::from_millis(3)));
        let r = p.report();
        assert_eq!((r.sent, r.lost), (4, 2));
        assert!(
            matches!(r.state(), wormhole_core::PeerState::Lossy { .. }),
            "{:?}",
            r.state()
        );
    }

    #[test]
    fn full_size_probes_find_black_holes_and_their_end() {
        let mut p = PeerProbe::new(1420, 64);
        assert!(p.wants_big(0, true));
        assert!(!p.wants_big(1, true), "every third round");
        assert!(!p.wants_big(0, false), "no size test while small ones fail");
        assert!(!p.big_result(0, false));
        assert!(p.wants_big(1, true), "every round while one is missing");
        assert!(!p.big_result(1, false));
        assert!(p.big_result(2, false), "search after the third in a row");
        p.searched(2, 1136);
        let r = p.report();
        assert!(r.mtu_blackhole);
        assert_eq!(r.path_mtu, Some(1136));
        assert!(!p.big_result(3, false), "not searched again at once");
        assert!(p.big_result(2 + RESEARCH_EVERY, false), "but after a while");
        assert!(!p.big_result(40, true));
        assert!(!p.report().mtu_blackhole, "full size passes again: healed");
        assert_eq!(p.report().path_mtu, Some(1420));
    }

    #[tokio::test]
    async fn the_search_finds_the_limit_within_a_step_despite_a_lost_probe() {
        for limit in [64, 65, 600, 1136, 1140, 1419] {
            let mut lost_once = false;
            let tried = std::cell::RefCell::new(Vec::new());
            let max = search(64, 1420, |size| {
                tried.borrow_mut().push(size);
                // One probe that would pass is lost; the retry passes.
                let passes = size <= limit && std::mem::replace(&mut lost_once, true);
                async move { passes }
            })
            .await;
            assert!(
                max <= limit && limit - max <= SEARCH_STEP,
                "limit {limit}: found {max}"
            );
            assert!(tried.borrow().len() <= 16, "{:?}", tried.borrow());
        }
    }

    #[tokio::test]
    async fn the_budget_spaces_probes() {
        let budget = Arc::new(Budget::new(500));
        let start = Instant::now();
        // 100 probes from 10 peers at once: 500 a second at most, so at least 198 ms.
        let peers: Vec<_> = (0..10)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        budget.slot().await;
                    }
                })
            })
            .collect();
        for p in peers {
            p.await.unwrap();
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(198), "{took:?}");
    }

    #[test]
    fn probe_targets() {
        let nets = |s: &[&str]| s.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>();
        assert_eq!(
            target(&nets(&["fd99:0:2::/64", "10.99.2.0/24"])),
            Some("10.99.2.1".parse().unwrap())
        );
        assert_eq!(
            target(&nets(&["fd99:0:2::/64"])),
            Some("fd99:0:2::1".parse().unwrap())
        );
        assert_eq!(target(&[]), None);
    }
}
