//! Kubernetes mode: this node's per-node settings (endpoint, persistent keepalive) as its Node's
//! annotations set them over the agent's options ([`LocalSettings`]), followed while the agent
//! runs: a change is published (the publisher writes the WormholeNode, every other node follows
//! it), a refused annotation is told in the log (once), in `/status` and as a Node Event
//! (`AnnotationRefused`, rate-limited like the others), and leaves the value in force as it is.

use tokio::sync::watch;
use wormhole_core::Escaped;
use wormhole_k8s::{
    Annotations, EventSink, LocalSettings, NodeSettings, PublishedEndpoint, RefusedAnnotation,
};

use crate::view::NodeSettingsView;

/// The Event reason of a refused annotation.
pub(crate) const REFUSED_REASON: &str = "AnnotationRefused";

/// Follows this node's annotations (from the peer source's Node watch).
pub(crate) struct Follower {
    settings: LocalSettings,
    annotations: watch::Receiver<Option<Annotations>>,
    /// What `/status` shows.
    view: watch::Sender<Option<NodeSettingsView>>,
    /// The annotations were read once: publishing may start.
    known: bool,
    /// The source is gone (shutdown): nothing more to follow.
    closed: bool,
}

impl Follower {
    pub(crate) fn new(
        settings: LocalSettings,
        annotations: watch::Receiver<Option<Annotations>>,
        view: watch::Sender<Option<NodeSettingsView>>,
    ) -> Self {
        Follower {
            settings,
            annotations,
            view,
            known: false,
            closed: false,
        }
    }

    /// Whether this node's annotations were read: until then nothing is published (else a node
    /// annotated as behind NAT would publish the DaemonSet's endpoint first, at every start).
    pub(crate) fn known(&self) -> bool {
        self.known
    }

    /// Reads the annotations if they changed: the new settings in force when they changed (or
    /// were read for the first time), each new refusal and change logged, `/status` updated.
    pub(crate) fn update(&mut self) -> Option<NodeSettings> {
        if self.known && !self.annotations.has_changed().unwrap_or(false) {
            return None;
        }
        let annotations = self.annotations.borrow_and_update().clone()?;
        let first = !self.known;
        self.known = true;
        let before: Vec<RefusedAnnotation> = self.settings.refused().to_vec();
        let changed = self.settings.follow(&annotations);
        for refused in self.settings.refused() {
            if !before.contains(refused) {
                tracing::warn!(
                    "{refused}; in force: {} (README: Per-node settings)",
                    self.settings.describe()
                );
            }
        }
        self.view
            .send_replace(Some(NodeSettingsView::new(&self.settings)));
        if !(changed || first) {
            return None;
        }
        let in_force = self.settings.in_force();
        tracing::info!("per-node settings: {}", self.settings.describe());
        if in_force.endpoint == PublishedEndpoint::BehindNat
            && in_force.persistent_keepalive.is_none()
        {
            tracing::warn!(
                "this node publishes no endpoint (behind NAT) and no persistent keepalive: its NAT may close the mapping and peers then cannot reach it until it sends again; set one (--persistent-keepalive 25, or the annotation wormhole.dev/persistent-keepalive)"
            );
        }
        Some(in_force)
    }

    /// An Event on this Node for each refused annotation (each value at most once per the
    /// sink's interval).
    pub(crate) async fn report(&self, events: &mut EventSink, node: &str) {
        for refused in self.settings.refused() {
            let key = format!("annotation/{}={}", refused.key, refused.value);
            let note = format!(
                "{refused} (on Node {}): the value in force stays: {}",
                Escaped(node),
                self.settings.describe()
            );
            events.warn_node(&key, REFUSED_REASON, note).await;
        }
    }

    /// Resolves when the annotations change; never once the source is gone.
    pub(crate) async fn changed(&mut self) {
        if self.closed || self.annotations.changed().await.is_err() {
            self.closed = true;
            std::future::pending::<()>().await;
        }
    }
}
