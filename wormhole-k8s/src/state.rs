//! What the agent last learned from the Kubernetes API, saved on disk so that an agent started
//! while the API server is unreachable can bring its node's pod network up anyway: the last
//! snapshot of the mesh (every node's name, key, endpoint and pod CIDRs, oldest claim first),
//! the cluster CIDRs read from kubeadm-config, and this Node's address (the underlay, for the
//! MTU).
//!
//! One JSON file ([`STATE_FILE`], beside the private key: `/var/lib/wormhole` by default),
//! written like the key: a `0600` temporary file, fsync, rename. It holds no secret (the PSK has
//! a file of its own, see [`crate::keys`]) but nobody else needs to read it. A missing or
//! unreadable file is no error: the agent then waits for the API as it would on a first start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wormhole_core::ErrorChain;
use wormhole_core::{NodeEntry, Snapshot};

use crate::Error;

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "kubernetes-state.json";

/// The state file's format version.
const VERSION: u32 = 1;

/// What is saved.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SavedState {
    /// The format version (1).
    pub version: u32,
    /// The cluster CIDRs last read from kubeadm-config.
    #[serde(default)]
    pub cluster_cidrs: Vec<IpNet>,
    /// This Node's InternalIP as last read.
    #[serde(default)]
    pub node_ip: Option<IpAddr>,
    /// The last snapshot's nodes, oldest claim first (this node included).
    #[serde(default)]
    pub nodes: Vec<SavedNode>,
    /// When the snapshot was saved, in seconds since the Unix epoch.
    #[serde(default)]
    pub saved_at: Option<u64>,
    /// The last snapshot's external peers (WormholePeers), so that a restart without the API
    /// server keeps them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<SavedExternal>,
}

/// One external peer (WormholePeer) of the saved snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SavedExternal {
    /// The WormholePeer's name.
    pub name: String,
    /// Public key, base64, as given.
    pub public_key: String,
    /// Endpoint as given.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allowed IPs as given.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Persistent keepalive in seconds.
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
    /// `WormholePeer/NAME`.
    #[serde(default)]
    pub origin: String,
}

/// One node of the saved snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SavedNode {
    /// Node name.
    pub name: String,
    /// Public key, base64, as published.
    pub public_key: String,
    /// Endpoint as published.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The Node's pod CIDRs.
    #[serde(default)]
    pub pod_cidrs: Vec<String>,
    /// Where the entry came from (`WormholeNode/NAME`), for messages.
    #[serde(default)]
    pub origin: String,
    /// Persistent keepalive as published (a node behind NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
    /// Where other nodes saw it (a node behind NAT; see [`Snapshot::observed_endpoints`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_endpoint: Option<String>,
}

impl SavedState {
    /// The saved nodes as a snapshot (oldest claim first, as saved), `None` if none was saved.
    /// Validation runs on it as on any snapshot.
    pub fn snapshot(&self, cluster_cidrs: &[IpNet]) -> Option<Snapshot> {
        if self.nodes.is_empty() {
            return None;
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeEntry {
                name: n.name.clone(),
                public_key: n.public_key.clone(),
                endpoint: n.endpoint.clone(),
                pod_cidrs: n.pod_cidrs.clone(),
                persistent_keepalive: n.persistent_keepalive,
                origin: n.origin.clone(),
            })
            .collect();
        let external = self
            .external
            .iter()
            .map(|p| NodeEntry {
                name: p.name.clone(),
                public_key: p.public_key.clone(),
                endpoint: p.endpoint.clone(),
                pod_cidrs: p.allowed_ips.clone(),
                persistent_keepalive: p.persistent_keepalive,
                origin: p.origin.clone(),
            })
            .collect();
        let observed_endpoints = self
            .nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.observed_endpoint.clone()?)))
            .collect();
        Some(Snapshot {
            cluster_cidrs: cluster_cidrs.to_vec(),
            nodes,
            rejected: Vec::new(),
            oldest_first: true,
            external,
            observed_endpoints,
            ..Snapshot::default()
        })
    }

    /// Replaces the saved nodes and external peers with `snapshot`'s, stamped now.
    pub fn set_snapshot(&mut self, snapshot: &Snapshot) {
        self.set_nodes(saved_nodes(snapshot));
        self.external = saved_external(snapshot);
    }

    /// Replaces the saved nodes with `nodes` (from [`saved_nodes`]), stamped now.
    pub(crate) fn set_nodes(&mut self, nodes: Vec<SavedNode>) {
        self.nodes = nodes;
        self.saved_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
    }

    /// A fingerprint of what is saved, the time stamp aside: equal contents, equal numbers.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            &self.cluster_cidrs,
            &self.node_ip,
            &self.nodes,
            &self.external,
        )
            .hash(&mut hasher);
        hasher.finish()
    }
}

/// `snapshot`'s nodes as they are saved (one copy, moved into the state by
/// [`SavedState::set_nodes`]: a 5,000-node mesh is saved without further copies).
pub(crate) fn saved_nodes(snapshot: &Snapshot) -> Vec<SavedNode> {
    snapshot
        .nodes
        .iter()
        .map(|n| SavedNode {
            name: n.name.clone(),
            public_key: n.public_key.clone(),
            endpoint: n.endpoint.clone(),
            pod_cidrs: n.pod_cidrs.clone(),
            origin: n.origin.clone(),
            persistent_keepalive: n.persistent_keepalive,
            observed_endpoint: snapshot.observed_endpoints.get(&n.name).cloned(),
        })
        .collect()
}

/// `snapshot`'s external peers as they are saved.
pub(crate) fn saved_external(snapshot: &Snapshot) -> Vec<SavedExternal> {
    snapshot
        .external
        .iter()
        .map(|p| SavedExternal {
            name: p.name.clone(),
            public_key: p.public_key.clone(),
            endpoint: p.endpoint.clone(),
            allowed_ips: p.pod_cidrs.clone(),
            persistent_keepalive: p.persistent_keepalive,
            origin: p.origin.clone(),
        })
        .collect()
}

/// The state file and what it holds, shared by the parts of the agent that save to it.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<SavedState>,
    /// Numbers each change; the writer skips a change a later write already covers.
    changes: AtomicU64,
    /// The number of the change last written.
    written: tokio::sync::Mutex<u64>,
    /// The size of the last text written.
    size: std::sync::atomic::AtomicUsize,
}

impl StateStore {
    /// Opens the state file at `path` (its contents are read now). A missing, unreadable or
    /// corrupt file gives an empty state (and a warning for the last two).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let state = match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<SavedState>(&text) {
                Ok(state) if state.version == VERSION => state,
                Ok(state) => {
                    tracing::warn!(path = %path.display(), version = state.version,
                        "saved Kubernetes state has an unknown version: ignored");
                    SavedState::default()
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e,
                        "saved Kubernetes state is corrupt: ignored (it is written again)");
                    SavedState::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedState::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %ErrorChain(&e),
                    "cannot read the saved Kubernetes state: ignored");
                SavedState::default()
            }
        };
        StateStore {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(state),
                changes: AtomicU64::new(0),
                written: tokio::sync::Mutex::new(0),
                size: Default::default(),
            }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What is saved now.
    pub fn saved(&self) -> SavedState {
        self.inner.state.lock().unwrap().clone()
    }

    /// Changes the state with `change` and writes the file if anything changed (atomically,
    /// `0600`). Concurrent saves are written in order; one that a later write covers is skipped.
    pub async fn save(&self, change: impl FnOnce(&mut SavedState)) -> Result<(), Error> {
        let (text, number) = {
            let mut state = self.inner.state.lock().unwrap();
            // Compared by fingerprint, not by a copy: the state holds the whole mesh.
            let before = state.fingerprint();
            change(&mut state);
            state.version = VERSION;
            if state.fingerprint() == before {
                return Ok(());
            }
            // Sized like the last file, so the text is not grown (and copied) piece by piece.
            let mut text = Vec::with_capacity(self.inner.size.load(Ordering::Relaxed) + 4096);
            serde_json::to_writer(&mut text, &*state).map_err(|e| Error::SaveState {
                what: "the state does not serialize",
                source: e.into(),
            })?;
            self.inner.size.store(text.len(), Ordering::Relaxed);
            let text = String::from_utf8(text).map_err(|e| Error::SaveState {
                what: "the state is not UTF-8",
                source: e.into(),
            })?;
            (text, self.inner.changes.fetch_add(1, Ordering::SeqCst) + 1)
        };
        let mut written = self.inner.written.lock().await;
        if *written >= number {
            return Ok(());
        }
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || wormhole_core::write_secret_file(&path, &text))
            .await
            .map_err(|e| Error::SaveState {
                what: "blocking task failed",
                source: e.into(),
            })??;
        *written = number;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_saved_mesh_keeps_keepalives_and_observed_endpoints() {
        let entry = |name: &str, endpoint: Option<&str>, keepalive: Option<u16>| NodeEntry {
            name: name.into(),
            public_key: format!("key-of-{name}"),
            endpoint: endpoint.map(Into::into),
            pod_cidrs: vec!["10.99.1.0/24".into()],
            persistent_keepalive: keepalive,
            origin: format!("WormholeNode/{name}"),
        };
        let snapshot = Snapshot {
            cluster_cidrs: vec!["10.99.0.0/16".parse().unwrap()],
            nodes: vec![
                entry("a", Some("192.168.77.1:51820"), None),
                entry("edge", None, Some(25)),
            ],
            oldest_first: true,
            observed_endpoints: [("edge".to_owned(), "203.0.113.7:51820".to_owned())].into(),
            ..Snapshot::default()
        };
        let mut state = SavedState::default();
        state.set_snapshot(&snapshot);
        let text = serde_json::to_string(&state).unwrap();
        let read: SavedState = serde_json::from_str(&text).unwrap();
        assert_eq!(read.snapshot(&snapshot.cluster_cidrs), Some(snapshot));
        // A file written before these fields reads as before.
        let old = r#"{"version":1,"nodes":[{"name":"a","publicKey":"k","podCidrs":[]}]}"#;
        let read: SavedState = serde_json::from_str(old).unwrap();
        assert_eq!(read.nodes[0].persistent_keepalive, None);
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            cluster_cidrs: vec![],
            nodes: vec![
                NodeEntry {
                    name: "b".into(),
                    public_key: "kb".into(),
                    endpoint: Some("192.168.77.2:51820".into()),
                    pod_cidrs: vec!["10.99.2.0/24".into()],
                    persistent_keepalive: None,
                    origin: "WormholeNode/b".into(),
                },
                NodeEntry {
                    name: "a".into(),
                    public_key: "ka".into(),
                    endpoint: None,
                    pod_cidrs: vec!["10.99.1.0/24".into(), "fd99:0:0:1::/64".into()],
                    persistent_keepalive: None,
                    origin: "Node/a".into(),
                },
            ],
            rejected: vec![],
            oldest_first: true,
            external: vec![NodeEntry {
                name: "laptop".into(),
                public_key: "kl".into(),
                endpoint: Some("192.168.77.150:51820".into()),
                pod_cidrs: vec!["10.98.0.2/32".into()],
                persistent_keepalive: Some(25),
                origin: "WormholePeer/laptop".into(),
            }],
            ..Snapshot::default()
        }
    }

    #[tokio::test]
    async fn saves_0600_atomically_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let store = StateStore::open(&path);
        assert_eq!(store.saved(), SavedState::default());
        assert!(store.saved().snapshot(&[]).is_none());
        let cidrs: Vec<IpNet> = vec!["10.99.0.0/16".parse().unwrap()];
        store
            .save(|s| {
                s.set_snapshot(&snapshot());
                s.cluster_cidrs = cidrs.clone();
                s.node_ip = Some("192.168.77.1".parse().unwrap());
            })
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");

        // A restarted agent reads the same picture, oldest claim first as saved.
        let again = StateStore::open(&path).saved();
        assert_eq!(again.cluster_cidrs, cidrs);
        assert_eq!(again.node_ip, Some("192.168.77.1".parse().unwrap()));
        let restored = again.snapshot(&cidrs).unwrap();
        assert!(restored.oldest_first);
        assert_eq!(restored.cluster_cidrs, cidrs);
        assert_eq!(restored.nodes, snapshot().nodes);
        assert_eq!(restored.external, snapshot().external, "external peers too");
    }

    /// An agent killed while saving (in a container: always PID 1) leaves a temporary file; the
    /// next agent saves all the same.
    #[tokio::test]
    async fn a_save_interrupted_by_a_crash_never_blocks_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        for pid in [std::process::id(), 1] {
            let tmp = dir.path().join(format!(".{STATE_FILE}.tmp.{pid}"));
            std::fs::write(tmp, "{\"version\":").unwrap();
        }
        let store = StateStore::open(&path);
        store.save(|s| s.set_snapshot(&snapshot())).await.unwrap();
        assert_eq!(StateStore::open(&path).saved().nodes.len(), 2);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, "{ not json").unwrap();
        let store = StateStore::open(&path);
        assert_eq!(store.saved(), SavedState::default());
        store.save(|s| s.set_snapshot(&snapshot())).await.unwrap();
        assert_eq!(StateStore::open(&path).saved().nodes.len(), 2);
    }

    #[tokio::test]
    async fn concurrent_saves_end_with_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let store = StateStore::open(&path);
        let tasks: Vec<_> = (0..20u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .save(|s| s.node_ip = Some(IpAddr::from([192, 168, 77, i])))
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // The file holds what memory holds: the last change made.
        assert_eq!(StateStore::open(&path).saved(), store.saved());
    }
}
