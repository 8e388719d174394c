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
    /// [`changed`](Self::changed) saw a change (and so marked it seen) that
    /// [`update`](Self::update) has not read yet.
    pending: bool,
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
            pending: false,
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
        let changed =
            std::mem::take(&mut self.pending) || self.annotations.has_changed().unwrap_or(false);
        if self.known && !changed {
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
                    "{refused}; in force: {} (docs/configuration.md: Per-node settings)",
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
        self.pending = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wormhole_k8s::{ENDPOINT_ANNOTATION, PERSISTENT_KEEPALIVE_ANNOTATION};

    fn follower() -> (
        Follower,
        watch::Sender<Option<Annotations>>,
        watch::Receiver<Option<NodeSettingsView>>,
    ) {
        let (tx, rx) = watch::channel(None);
        let (view_tx, view_rx) = watch::channel(None);
        let flags = NodeSettings {
            endpoint: PublishedEndpoint::InternalIp,
            persistent_keepalive: None,
        };
        let settings = LocalSettings::new(flags, 51820, Vec::new());
        (Follower::new(settings, rx, view_tx), tx, view_rx)
    }

    fn annotations(pairs: &[(&str, &str)]) -> Option<Annotations> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The publisher waits for the annotations, then gets every change that `changed` wakes it
    /// for (it used to miss them: waking marks the change seen).
    #[tokio::test]
    async fn every_change_of_the_annotations_reaches_the_publisher() {
        let (mut follower, tx, view) = follower();
        assert_eq!(follower.update(), None);
        assert!(
            !follower.known(),
            "nothing published before the Node is read"
        );
        tx.send_replace(annotations(&[]));
        follower.changed().await;
        assert_eq!(
            follower.update(),
            Some(NodeSettings::default()),
            "the flags, once read"
        );
        assert!(follower.known());
        assert_eq!(follower.update(), None, "nothing new");

        tx.send_replace(annotations(&[
            (ENDPOINT_ANNOTATION, "none"),
            (PERSISTENT_KEEPALIVE_ANNOTATION, "25"),
        ]));
        tokio::time::timeout(std::time::Duration::from_secs(5), follower.changed())
            .await
            .unwrap();
        assert_eq!(
            follower.update(),
            Some(NodeSettings {
                endpoint: PublishedEndpoint::BehindNat,
                persistent_keepalive: Some(25),
            })
        );
        assert_eq!(view.borrow().as_ref().unwrap().endpoint, "none");

        // A refused value: no new settings, the refusal in the view.
        tx.send_replace(annotations(&[
            (ENDPOINT_ANNOTATION, "none"),
            (PERSISTENT_KEEPALIVE_ANNOTATION, "soon"),
        ]));
        follower.changed().await;
        assert_eq!(follower.update(), None);
        let shown = view.borrow().clone().unwrap();
        assert_eq!(shown.persistent_keepalive, Some(25));
        assert_eq!(shown.refused.len(), 1, "{shown:?}");

        // The source gone (shutdown): changed() never resolves again.
        drop(tx);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), follower.changed()).await;
        assert!(waited.is_err());
    }
}
