//! Events on the local Node for rejected peers and persistent reconcile failures, rate-limited
//! (each distinct problem at most once per [`EventSink::with_interval`], 10 minutes by default).

use std::collections::HashMap;
use std::time::{Duration, Instant};
use wormhole_core::ErrorChain;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use wormhole_core::Status;

use crate::EVENT_REPORTER;

/// A failing pass becomes an Event after this many in a row.
pub const PERSISTENT_FAILURES: u32 = 3;

/// Publishes Events about the local Node.
pub struct EventSink {
    recorder: Recorder,
    node: ObjectReference,
    interval: Duration,
    sent: HashMap<String, Instant>,
    passes_seen: u64,
    failures_in_a_row: u32,
}

/// What to say, before rate limiting: `(key, reason, note)`.
pub fn pending(status: &Status, failures_in_a_row: u32) -> Vec<(String, &'static str, String)> {
    let mut out: Vec<_> = status
        .rejected
        .iter()
        .map(|r| {
            (
                format!("rejected/{}/{}", r.name, r.reason.kind()),
                "PeerRejected",
                r.to_string(),
            )
        })
        .collect();
    if failures_in_a_row >= PERSISTENT_FAILURES {
        if let Some(error) = status.last_pass.as_ref().and_then(|p| p.error.as_ref()) {
            out.push((
                "reconcile".into(),
                "ReconcileFailing",
                format!("{failures_in_a_row} reconcile passes in a row failed: {error}"),
            ));
        }
    }
    out
}

impl EventSink {
    /// Events about Node `node`.
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: EVENT_REPORTER.into(),
            instance: Some(node.to_owned()),
        };
        EventSink {
            recorder: Recorder::new(client, reporter),
            node: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_owned()),
                ..Default::default()
            },
            interval: Duration::from_secs(600),
            sent: HashMap::new(),
            passes_seen: 0,
            failures_in_a_row: 0,
        }
    }

    /// The minimum time between two Events about the same problem.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Looks at a new status and publishes what is due. Errors are logged, never fatal.
    pub async fn observe(&mut self, status: &Status) {
        if status.passes > self.passes_seen {
            let failed = status.last_pass.as_ref().is_some_and(|p| p.error.is_some());
            self.failures_in_a_row = if failed {
                self.failures_in_a_row + 1
            } else {
                0
            };
            self.passes_seen = status.passes;
        }
        let now = Instant::now();
        for (key, reason, note) in pending(status, self.failures_in_a_row) {
            if self
                .sent
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < self.interval)
            {
                continue;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &self.node).await {
                Ok(()) => {
                    self.sent.insert(key, now);
                }
                Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot publish an Event"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wormhole_core::KeyError;
    use wormhole_core::mesh::{RejectReason, Rejection};
    use wormhole_core::status::PassInfo;

    #[test]
    fn rejections_and_persistent_failures_are_due() {
        let mut status = Status {
            rejected: vec![Rejection {
                name: "evil".into(),
                origin: "WormholeNode/evil".into(),
                reason: RejectReason::MalformedKey(KeyError::Base64),
            }],
            last_pass: Some(PassInfo {
                at: std::time::SystemTime::now(),
                duration: Duration::ZERO,
                changes: 0,
                error: Some("wireguard backend: boom".into()),
            }),
            ..Status::default()
        };
        let due = pending(&status, 1);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, "PeerRejected");
        assert!(due[0].2.contains("malformed public key"));
        let due = pending(&status, PERSISTENT_FAILURES);
        assert_eq!(due[1].1, "ReconcileFailing");
        status.rejected.clear();
        assert!(pending(&status, 0).is_empty());
    }
}
