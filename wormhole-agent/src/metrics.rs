//! Prometheus metrics, rendered from the reconciler's status at each scrape (so peers that left
//! leave no stale series), plus the reconcile-duration histogram kept across scrapes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use wormhole_core::{PeerState, PeerStatus, PublicKey, Status};

type Labels = Vec<(&'static str, LabelValue)>;

/// A label value escaped as the text exposition format requires (`\\`, `\"`, `\n`):
/// prometheus-client writes values as they are, so a `"` in a peer's name would end the value
/// and forge a label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LabelValue(String);

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        let mut rest = self.0.as_str();
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..at])?;
            encoder.write_str(match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[at + 1..];
        }
        encoder.write_str(rest)
    }
}

/// Which peers get series of their own on `/metrics` (`--peer-metrics`). The aggregates
/// (`wormhole_peers{state}`, the traffic totals, ...) are always there.
///
/// Each peer with series of its own costs seven (its state, handshake age, round-trip time,
/// probe loss, path MTU, bytes received and sent): every node's view of every other node is
/// 7·N·(N−1) series across a cluster of N nodes, 1.7 million at 500 nodes. The default,
/// [`PeerMetrics::DEFAULT`], names only the peers that need a look, at most
/// [`DEFAULT_PEER_METRICS_LIMIT`] of them per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerMetrics {
    /// Every peer, node or external, whatever its state (a cluster's series grow with the
    /// square of its nodes).
    All,
    /// Only node peers that are not `ok`, the worst first (unreachable, mtu-blackhole, stale,
    /// never, lossy; then by name), at most `limit` of them; how many were left out is
    /// `wormhole_peer_metrics_omitted_peers`. A healthy cluster has no per-peer series at all.
    Problems {
        /// At most this many peers ([`PEER_METRICS_LIMIT_RANGE`]).
        limit: usize,
    },
    /// No per-peer series: the aggregates only.
    None,
}

/// The default limit of [`PeerMetrics::Problems`]: 20 peers, 140 series per node at most; a
/// mass outage in a 500-node cluster then costs 70,000 series, not 1.7 million.
pub const DEFAULT_PEER_METRICS_LIMIT: usize = 20;

/// The range of [`PeerMetrics::Problems`]'s limit.
pub const PEER_METRICS_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 1..=100_000;

impl PeerMetrics {
    /// `Problems { limit: DEFAULT_PEER_METRICS_LIMIT }`.
    pub const DEFAULT: PeerMetrics = PeerMetrics::Problems {
        limit: DEFAULT_PEER_METRICS_LIMIT,
    };
}

impl Default for PeerMetrics {
    fn default() -> Self {
        PeerMetrics::DEFAULT
    }
}

/// Which of the not-`ok` peers come first when [`PeerMetrics::Problems`] must leave some out.
fn severity(state: PeerState) -> u8 {
    match state {
        PeerState::Unreachable => 0,
        PeerState::MtuBlackhole { .. } => 1,
        PeerState::Stale => 2,
        PeerState::Never => 3,
        PeerState::Lossy { .. } => 4,
        // `Ok`, and any state added later.
        _ => 5,
    }
}

/// The bytes received and sent over every peer, kept monotonic across scrapes: a peer that
/// leaves (or whose device counters restart) hands what it had counted to `retired`, so the
/// totals never go down while the agent runs, as a Prometheus counter must not.
#[derive(Debug, Default)]
struct Traffic {
    /// Each peer's counters at the previous scrape, by public key.
    last: HashMap<PublicKey, (u64, u64)>,
    /// What peers that left or restarted had counted.
    retired: (u64, u64),
}

impl Traffic {
    /// The totals with `status`'s peers counted, remembering their counters for the next call.
    fn totals(&mut self, status: &Status) -> (u64, u64) {
        let mut now = HashMap::with_capacity(status.peers.len());
        let (mut rx, mut tx) = self.retired;
        for p in &status.peers {
            let (last_rx, last_tx) = self.last.remove(&p.public_key).unwrap_or_default();
            if p.rx_bytes < last_rx {
                self.retired.0 += last_rx;
                rx += last_rx;
            }
            if p.tx_bytes < last_tx {
                self.retired.1 += last_tx;
                tx += last_tx;
            }
            rx += p.rx_bytes;
            tx += p.tx_bytes;
            now.insert(p.public_key, (p.rx_bytes, p.tx_bytes));
        }
        // Peers gone since the previous scrape.
        for (gone_rx, gone_tx) in self.last.values() {
            self.retired.0 += gone_rx;
            self.retired.1 += gone_tx;
            rx += gone_rx;
            tx += gone_tx;
        }
        self.last = now;
        (rx, tx)
    }
}

/// Metrics that need memory across scrapes.
#[derive(Debug)]
pub(crate) struct Metrics {
    peer_metrics: PeerMetrics,
    reconcile_duration: Histogram,
    /// Admin connections refused at once (over their class's limits), by class of client.
    admin_refused: Family<Labels, Counter>,
    traffic: Mutex<Traffic>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(PeerMetrics::DEFAULT)
    }
}

fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, LabelValue(v.into()))]
}

/// The per-peer families.
#[derive(Default)]
struct PerPeer {
    state: Family<Labels, Gauge>,
    handshake_age: Family<Labels, Gauge<f64, AtomicU64>>,
    rx: Family<Labels, Counter>,
    tx: Family<Labels, Counter>,
    rtt: Family<Labels, Gauge<f64, AtomicU64>>,
    loss: Family<Labels, Gauge<f64, AtomicU64>>,
    path_mtu: Family<Labels, Gauge>,
}

impl PerPeer {
    fn add(&self, p: &PeerStatus, state: PeerState, now: SystemTime) {
        let peer = label("peer", p.name.clone());
        let mut with_state = peer.clone();
        with_state.push(("state", LabelValue(state.as_str().into())));
        self.state.get_or_create(&with_state).set(1);
        if let Some(t) = p.latest_handshake {
            self.handshake_age
                .get_or_create(&peer)
                .set(now.duration_since(t).unwrap_or_default().as_secs_f64());
        }
        self.rx.get_or_create(&peer).inc_by(p.rx_bytes);
        self.tx.get_or_create(&peer).inc_by(p.tx_bytes);
        if let Some(probe) = p.probe {
            if let Some(t) = probe.smoothed_rtt {
                self.rtt.get_or_create(&peer).set(t.as_secs_f64());
            }
            if probe.sent > 0 {
                self.loss.get_or_create(&peer).set(probe.loss_ratio());
            }
            if let Some(mtu) = probe.path_mtu {
                self.path_mtu.get_or_create(&peer).set(i64::from(mtu));
            }
        }
    }

    fn register(self, registry: &mut Registry) {
        registry.register(
            "peer_state",
            "1 for each peer with series of its own (--peer-metrics), labelled with its state",
            self.state,
        );
        registry.register(
            "peer_rtt_seconds",
            "Smoothed round-trip time of the probes through the tunnel to each peer",
            self.rtt,
        );
        registry.register(
            "peer_probe_loss_ratio",
            "Share of the latest probes to each peer that were lost",
            self.loss,
        );
        registry.register(
            "peer_path_mtu_bytes",
            "Largest packet seen to get through the tunnel to each peer",
            self.path_mtu,
        );
        registry.register(
            "peer_handshake_age_seconds",
            "Seconds since the latest handshake with each peer",
            self.handshake_age,
        );
        registry.register(
            "peer_receive_bytes",
            "Bytes received from each peer",
            self.rx,
        );
        registry.register("peer_transmit_bytes", "Bytes sent to each peer", self.tx);
    }
}

impl Metrics {
    /// Metrics whose per-peer series follow `peer_metrics`.
    pub(crate) fn new(peer_metrics: PeerMetrics) -> Self {
        // 1 ms to ~16 s.
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15);
        Metrics {
            peer_metrics,
            reconcile_duration: Histogram::new(buckets),
            admin_refused: Family::default(),
            traffic: Mutex::default(),
        }
    }

    /// Records one reconcile pass.
    pub(crate) fn observe_pass(&self, duration: Duration) {
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// Counts one admin connection refused from a client of class `client` (`host`, `allowed`,
    /// `other`).
    pub(crate) fn refused_admin_connection(&self, client: &'static str) {
        self.admin_refused
            .get_or_create(&label("client", client))
            .inc();
    }

    /// The exposition text for `status` at `now`.
    pub(crate) fn render(&self, status: &Status, now: SystemTime) -> String {
        let mut registry = Registry::with_prefix("wormhole");

        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&label("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        registry.register("build_info", "Build information", info);

        let peers = Family::<Labels, Gauge>::default();
        let external = Family::<Labels, Gauge>::default();
        for state in PeerState::LABELS {
            peers.get_or_create(&label("state", state)).set(0);
            external.get_or_create(&label("state", state)).set(0);
        }
        let per_peer = PerPeer::default();
        // Problems mode: the node peers that are not ok, with their states.
        let mut problems = Vec::new();
        for p in &status.peers {
            let state = p.state(now);
            let family = if p.external { &external } else { &peers };
            family.get_or_create(&label("state", state.as_str())).inc();
            match self.peer_metrics {
                PeerMetrics::All => per_peer.add(p, state, now),
                PeerMetrics::Problems { .. } if !p.external && state != PeerState::Ok => {
                    problems.push((severity(state), p.name.as_str(), p, state));
                }
                _ => {}
            }
        }
        let mut omitted = 0;
        if let PeerMetrics::Problems { limit } = self.peer_metrics {
            if problems.len() > limit {
                // The `limit` worst in linear time; names break ties, so the same peers keep
                // their series from one scrape to the next.
                problems.select_nth_unstable_by_key(limit, |&(rank, name, ..)| (rank, name));
                omitted = problems.len() - limit;
                problems.truncate(limit);
            }
            for (_, _, p, state) in problems {
                per_peer.add(p, state, now);
            }
        }
        registry.register(
            "peers",
            "Node peers by state (ok; stale: handshake older than 3 min; never; unreachable, \
             mtu-blackhole, lossy: from probes through the tunnel)",
            peers,
        );
        registry.register(
            "external_peers",
            "External peers (WormholePeers, [[external]] entries) by state",
            external,
        );
        per_peer.register(&mut registry);
        let omitted_gauge = Gauge::<i64>::default();
        omitted_gauge.set(i64::try_from(omitted).unwrap_or(i64::MAX));
        registry.register(
            "peer_metrics_omitted_peers",
            "Node peers not ok left without series of their own by --peer-metrics-limit",
            omitted_gauge,
        );
        let (rx_total, tx_total) = self
            .traffic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .totals(status);
        let rx = Counter::<u64>::default();
        rx.inc_by(rx_total);
        registry.register(
            "receive_bytes",
            "Bytes received from all peers through the tunnel",
            rx,
        );
        let tx = Counter::<u64>::default();
        tx.inc_by(tx_total);
        registry.register(
            "transmit_bytes",
            "Bytes sent to all peers through the tunnel",
            tx,
        );

        let mut by_reason: BTreeMap<&str, i64> = BTreeMap::new();
        for r in &status.rejected {
            *by_reason.entry(r.reason.kind()).or_default() += 1;
        }
        let rejected = Family::<Labels, Gauge>::default();
        for (reason, n) in by_reason {
            rejected.get_or_create(&label("reason", reason)).set(n);
        }
        registry.register(
            "rejected_peers",
            "Peers refused by validation, by reason",
            rejected,
        );

        let errors = Family::<Labels, Counter>::default();
        for (kind, n) in &status.errors_by_kind {
            errors
                .get_or_create(&label("kind", kind.clone()))
                .inc_by(*n);
        }
        registry.register(
            "reconcile_errors",
            "Failed reconcile passes by kind of error",
            errors,
        );
        let drops = Family::<Labels, Counter>::default();
        for (rule, n) in &status.firewall_drops {
            drops.get_or_create(&label("rule", rule.clone())).inc_by(*n);
        }
        registry.register(
            "firewall_dropped_packets",
            "Packets the firewall dropped since its table was last loaded, by rule (no_cleartext, \
             spoofed_overlay_source, relay_into_the_tunnel, relay_out_of_the_tunnel, ...)",
            drops,
        );
        let passes = Counter::<u64>::default();
        passes.inc_by(status.passes);
        registry.register("reconciles", "Reconcile passes", passes);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            self.reconcile_duration.clone(),
        );
        let ready = Gauge::<i64>::default();
        ready.set(i64::from(status.ready()));
        registry.register(
            "ready",
            "1 when the first reconcile succeeded and the device exists",
            ready,
        );
        let source_ok = Gauge::<i64>::default();
        source_ok.set(i64::from(status.source_error.is_none()));
        registry.register(
            "peer_source_ok",
            "0 while the peer source reports an error",
            source_ok,
        );
        let mtu = Gauge::<i64>::default();
        mtu.set(i64::from(status.mtu));
        registry.register_with_unit(
            "mtu",
            "WireGuard (and pod) MTU",
            prometheus_client::registry::Unit::Bytes,
            mtu,
        );
        registry.register(
            "admin_connections_refused",
            "Admin connections refused at once because their class of client (host: this host's \
             own addresses; allowed: --admin-allow and --metrics-allow sources; other: pods and \
             other hosts) or their source address held as many as it may",
            self.admin_refused.clone(),
        );

        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wormhole_core::{PrivateKey, ProbeReport};

    #[test]
    fn label_values_are_escaped() {
        let now = SystemTime::now();
        let status = {
            let mut v = Status::default();
            v.peers = vec![{
                let mut v =
                    PeerStatus::new("a\",peer=\"forged\\\n", PrivateKey::generate().public_key());
                v.rx_bytes = 1;
                v.tx_bytes = 2;
                v
            }];
            v
        };
        let text = Metrics::default().render(&status, now);
        assert!(
            text.contains(
                "wormhole_peer_receive_bytes_total{peer=\"a\\\",peer=\\\"forged\\\\\\n\"} 1\n"
            ),
            "{text}"
        );
        // Every sample line has exactly one label set, and no line starts inside a value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("wormhole_"), "{line:?}");
        }
    }

    #[test]
    fn renders_peer_states_and_histogram() {
        let now = SystemTime::now();
        let status = {
            let mut v = Status::default();
            v.passes = 3;
            v.peers = vec![{
                let mut v = PeerStatus::new("n2", PrivateKey::generate().public_key());
                v.latest_handshake = Some(now - Duration::from_secs(7));
                v.rx_bytes = 100;
                v.tx_bytes = 50;
                v
            }];
            v.errors_by_kind = [("wireguard".to_owned(), 2)].into();
            v.firewall_drops = [("relay_into_the_tunnel".to_owned(), 4)].into();
            v
        };
        let m = Metrics::new(PeerMetrics::All);
        m.observe_pass(Duration::from_millis(3));
        let text = m.render(&status, now);
        for needle in [
            "wormhole_peers{state=\"ok\"} 1",
            "wormhole_peers{state=\"never\"} 0",
            "wormhole_peer_handshake_age_seconds{peer=\"n2\"} 7",
            "wormhole_peer_receive_bytes_total{peer=\"n2\"} 100",
            "wormhole_reconcile_errors_total{kind=\"wireguard\"} 2",
            "wormhole_reconciles_total 3",
            "wormhole_firewall_dropped_packets_total{rule=\"relay_into_the_tunnel\"} 4",
            "wormhole_reconcile_duration_seconds_count 1",
            "wormhole_build_info{version=",
            "wormhole_peer_state{peer=\"n2\",state=\"ok\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    /// A peer in `state` at `now` (`external`: a WormholePeer or `[[external]]` entry).
    fn peer(name: &str, state: &str, now: SystemTime) -> PeerStatus {
        let mut p = PeerStatus::new(name, PrivateKey::generate().public_key());
        p.rx_bytes = 10;
        p.tx_bytes = 20;
        let mut probe = ProbeReport::default();
        probe.sent = 20;
        probe.smoothed_rtt = Some(Duration::from_millis(2));
        probe.path_mtu = Some(1420);
        match state {
            "never" => {}
            "stale" => p.latest_handshake = Some(now - Duration::from_secs(600)),
            _ => p.latest_handshake = Some(now - Duration::from_secs(5)),
        }
        match state {
            "unreachable" => probe.lost_in_a_row = 5,
            "mtu-blackhole" => probe.mtu_blackhole = true,
            "lossy" => probe.lost = 4,
            _ => {}
        }
        p.probe = Some(probe);
        assert_eq!(p.state(now).as_str(), state, "the fixture of {name}");
        p
    }

    fn status_of(peers: Vec<PeerStatus>) -> Status {
        let mut v = Status::default();
        v.mtu = 1420;
        v.peers = peers;
        v
    }

    /// The peers that have series of their own (from `wormhole_peer_state`), sorted.
    fn named(text: &str) -> Vec<String> {
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("wormhole_peer_state{peer=\""))
            .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
            .collect();
        names.sort();
        names
    }

    /// Sample lines of per-peer series.
    fn per_peer_lines(text: &str) -> usize {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains("{peer="))
            .count()
    }

    #[test]
    fn a_healthy_cluster_has_no_per_peer_series_by_default() {
        let now = SystemTime::now();
        let peers = (0..500)
            .map(|i| peer(&format!("n{i}"), "ok", now))
            .collect();
        let text = Metrics::default().render(&status_of(peers), now);
        assert_eq!(per_peer_lines(&text), 0, "{text}");
        assert!(text.contains("wormhole_peers{state=\"ok\"} 500"), "{text}");
    }

    #[test]
    fn default_metrics_of_a_mass_outage_stay_bounded() {
        // Every peer unreachable: the default names 20 of them (7 series each), not 1,000.
        let now = SystemTime::now();
        let peers = (0..1000)
            .map(|i| peer(&format!("n{i:04}"), "unreachable", now))
            .collect();
        let text = Metrics::default().render(&status_of(peers), now);
        let lines = per_peer_lines(&text);
        assert!(lines <= 7 * 20, "{lines} per-peer series");
        assert!(
            text.contains("wormhole_peers{state=\"unreachable\"} 1000"),
            "{text}"
        );
    }

    #[test]
    fn problems_names_the_worst_node_peers_first_up_to_the_limit() {
        let now = SystemTime::now();
        let mut external = peer("laptop", "never", now);
        external.external = true;
        let status = status_of(vec![
            peer("a-ok", "ok", now),
            peer("b-lossy", "lossy", now),
            peer("c-never", "never", now),
            peer("d-never", "never", now),
            peer("e-stale", "stale", now),
            peer("f-blackhole", "mtu-blackhole", now),
            peer("g-unreachable", "unreachable", now),
            external,
        ]);
        let m = Metrics::new(PeerMetrics::Problems { limit: 4 });
        let text = m.render(&status, now);
        assert_eq!(
            named(&text),
            ["c-never", "e-stale", "f-blackhole", "g-unreachable"],
            "{text}"
        );
        for needle in [
            "wormhole_peer_metrics_omitted_peers 2",
            "wormhole_peer_state{peer=\"f-blackhole\",state=\"mtu-blackhole\"} 1",
            "wormhole_peer_rtt_seconds{peer=\"g-unreachable\"} 0.002",
            "wormhole_peer_path_mtu_bytes{peer=\"f-blackhole\"} 1420",
            // The aggregates count every peer; external ones apart.
            "wormhole_peers{state=\"never\"} 2",
            "wormhole_peers{state=\"ok\"} 1",
            "wormhole_external_peers{state=\"never\"} 1",
            "wormhole_external_peers{state=\"ok\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // Within the limit: every node peer not ok, none omitted.
        let text = Metrics::new(PeerMetrics::Problems { limit: 20 }).render(&status, now);
        assert_eq!(named(&text).len(), 6, "{text}");
        assert!(
            text.contains("wormhole_peer_metrics_omitted_peers 0"),
            "{text}"
        );
    }

    #[test]
    fn all_gives_seven_series_per_peer_and_none_gives_none() {
        let now = SystemTime::now();
        let mut external = peer("laptop", "ok", now);
        external.external = true;
        let status = status_of(vec![
            peer("a", "ok", now),
            peer("b", "unreachable", now),
            external,
        ]);
        let text = Metrics::new(PeerMetrics::All).render(&status, now);
        assert_eq!(named(&text), ["a", "b", "laptop"], "{text}");
        // State, handshake age, RTT, loss, path MTU, received, sent.
        assert_eq!(per_peer_lines(&text), 3 * 7, "{text}");
        let text = Metrics::new(PeerMetrics::None).render(&status, now);
        assert_eq!(per_peer_lines(&text), 0, "{text}");
        assert!(
            text.contains("wormhole_peers{state=\"unreachable\"} 1"),
            "{text}"
        );
        assert!(text.contains("wormhole_receive_bytes_total 30"), "{text}");
    }

    #[test]
    fn traffic_totals_never_go_down() {
        let now = SystemTime::now();
        let m = Metrics::new(PeerMetrics::None);
        let total = |status: &Status| {
            let text = m.render(status, now);
            let value = |name: &str| -> u64 {
                let line = text.lines().find(|l| l.starts_with(name)).unwrap();
                line.rsplit(' ').next().unwrap().parse().unwrap()
            };
            (
                value("wormhole_receive_bytes_total "),
                value("wormhole_transmit_bytes_total "),
            )
        };
        let (mut a, mut b) = (peer("a", "ok", now), peer("b", "ok", now));
        (a.rx_bytes, a.tx_bytes, b.rx_bytes, b.tx_bytes) = (100, 1, 50, 2);
        assert_eq!(total(&status_of(vec![a.clone(), b.clone()])), (150, 3));
        // b leaves: what it had counted stays counted.
        assert_eq!(total(&status_of(vec![a.clone()])), (150, 3));
        // a's device counters start again (its peer was re-created): from 100 to 10.
        (a.rx_bytes, a.tx_bytes) = (10, 0);
        assert_eq!(total(&status_of(vec![a.clone()])), (160, 3));
        // b comes back with fresh counters.
        (b.rx_bytes, b.tx_bytes) = (5, 5);
        assert_eq!(total(&status_of(vec![a, b])), (165, 8));
    }

    #[test]
    fn rendering_is_linear_in_the_peers() {
        // Half the peers not ok (the limit's selection), every mode: twice the peers may cost
        // about twice the time, never four times.
        let now = SystemTime::now();
        let status = |n: usize| {
            status_of(
                (0..n)
                    .map(|i| {
                        let state = if i % 2 == 0 { "ok" } else { "unreachable" };
                        peer(&format!("n{i:05}"), state, now)
                    })
                    .collect(),
            )
        };
        // Four times the peers: linear costs about 4x, quadratic 16x. The two sizes are timed
        // in turns, best of seven each, so that a busy machine slows both alike.
        let (small, large) = (status(2000), status(8000));
        for mode in [PeerMetrics::DEFAULT, PeerMetrics::All, PeerMetrics::None] {
            let m = Metrics::new(mode);
            let time = |s: &Status| {
                let t = std::time::Instant::now();
                std::hint::black_box(m.render(s, now));
                t.elapsed()
            };
            let (mut a, mut b) = (std::time::Duration::MAX, std::time::Duration::MAX);
            for _ in 0..7 {
                a = a.min(time(&small));
                b = b.min(time(&large));
            }
            let ratio = b.as_secs_f64() / a.as_secs_f64();
            assert!(
                ratio < 8.0,
                "{mode:?}: 2,000 peers {a:?}, 8,000 {b:?} ({ratio:.1}x)"
            );
        }
    }

    #[test]
    fn names_carry_their_units() {
        let text = Metrics::default().render(&status_of(Vec::new()), SystemTime::now());
        assert!(text.contains("\nwormhole_mtu_bytes 1420\n"), "{text}");
        assert!(!text.contains("\nwormhole_mtu "), "{text}");
    }
}
