//! Prometheus metrics, rendered from the reconciler's status at each scrape (so peers that left
//! leave no stale series), plus the reconcile-duration histogram kept across scrapes.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use wormhole_core::Status;

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

/// Metrics that need memory across scrapes.
#[derive(Debug)]
pub(crate) struct Metrics {
    reconcile_duration: Histogram,
    /// Admin connections refused at once (over their class's limits), by class of client.
    admin_refused: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        // 1 ms to ~16 s.
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15);
        Metrics {
            reconcile_duration: Histogram::new(buckets),
            admin_refused: Family::default(),
        }
    }
}

fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, LabelValue(v.into()))]
}

impl Metrics {
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
        for state in wormhole_core::PeerState::LABELS {
            peers.get_or_create(&label("state", state)).set(0);
        }
        let handshake_age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let rx = Family::<Labels, Counter>::default();
        let tx = Family::<Labels, Counter>::default();
        let rtt = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let loss = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let path_mtu = Family::<Labels, Gauge>::default();
        for p in &status.peers {
            peers
                .get_or_create(&label("state", p.state(now).as_str()))
                .inc();
            let peer = label("peer", p.name.clone());
            if let Some(t) = p.latest_handshake {
                handshake_age
                    .get_or_create(&peer)
                    .set(now.duration_since(t).unwrap_or_default().as_secs_f64());
            }
            rx.get_or_create(&peer).inc_by(p.rx_bytes);
            tx.get_or_create(&peer).inc_by(p.tx_bytes);
            if let Some(probe) = p.probe {
                if let Some(t) = probe.smoothed_rtt {
                    rtt.get_or_create(&peer).set(t.as_secs_f64());
                }
                if probe.sent > 0 {
                    loss.get_or_create(&peer).set(probe.loss_ratio());
                }
                if let Some(mtu) = probe.path_mtu {
                    path_mtu.get_or_create(&peer).set(i64::from(mtu));
                }
            }
        }
        registry.register(
            "peers",
            "Accepted peers by state (ok; stale: handshake older than 3 min; never; unreachable, \
             mtu-blackhole, lossy: from probes through the tunnel)",
            peers,
        );
        registry.register(
            "peer_rtt_seconds",
            "Smoothed round-trip time of the probes through the tunnel to each peer",
            rtt,
        );
        registry.register(
            "peer_probe_loss_ratio",
            "Share of the latest probes to each peer that were lost",
            loss,
        );
        registry.register(
            "peer_path_mtu_bytes",
            "Largest packet seen to get through the tunnel to each peer",
            path_mtu,
        );
        registry.register(
            "peer_handshake_age_seconds",
            "Seconds since the latest handshake with each peer",
            handshake_age,
        );
        registry.register("peer_receive_bytes", "Bytes received from each peer", rx);
        registry.register("peer_transmit_bytes", "Bytes sent to each peer", tx);

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
        registry.register("mtu", "WireGuard (and pod) MTU", mtu);
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
    use wormhole_core::PeerStatus;
    use wormhole_core::PrivateKey;

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
        let m = Metrics::default();
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
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
