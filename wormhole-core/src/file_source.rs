//! The peers-file source: see [`FilePeerSource`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ipnet::IpNet;
use serde::Deserialize;

use crate::Error;
use crate::mesh::{NodeEntry, RejectReason, Rejection, Snapshot, parse_cidr};
use crate::source::PeerSource;

const NODE_FIELDS: &str = "name, public_key, endpoint, pod_cidrs, persistent_keepalive";
const EXTERNAL_FIELDS: &str = "name, public_key, endpoint, allowed_ips, persistent_keepalive";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    cluster_cidrs: Vec<String>,
    #[serde(default)]
    node: Vec<toml::Spanned<toml::Table>>,
    #[serde(default)]
    external_cidrs: Vec<String>,
    #[serde(default)]
    external: Vec<toml::Spanned<toml::Table>>,
}

/// The offsets of `text`'s line ends, so [`line_of`] finds a line in O(log n) (counting from the
/// start for every entry made parsing a file of n entries O(n²)).
fn line_ends(text: &str) -> Vec<usize> {
    text.match_indices('\n').map(|(i, _)| i).collect()
}

/// The 1-based line of byte `offset`, given the [`line_ends`] of its text.
fn line_of(ends: &[usize], offset: usize) -> usize {
    ends.partition_point(|&end| end < offset) + 1
}

/// Reads one `[[node]]` table (or, with `external`, one `[[external]]` table, whose
/// `allowed_ips` take the place of `pod_cidrs`); an error names the field.
fn node_entry(table: &toml::Table, origin: String, external: bool) -> Result<NodeEntry, Rejection> {
    let (fields, cidrs) = if external {
        (EXTERNAL_FIELDS, "allowed_ips")
    } else {
        (NODE_FIELDS, "pod_cidrs")
    };
    let name = table
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let reject = |field: &str, reason: String| Rejection {
        name: name.clone(),
        origin: origin.clone(),
        reason: RejectReason::Invalid {
            field: field.to_owned(),
            reason,
        },
        external,
    };
    let string = |field: &str, required: bool| -> Result<Option<String>, Rejection> {
        match table.get(field) {
            None if required => Err(reject(field, "missing".into())),
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(reject(
                field,
                format!("expected a string, found {}", v.type_str()),
            )),
        }
    };
    if let Some(unknown) = table
        .keys()
        .find(|k| !fields.split(", ").any(|f| f == k.as_str()))
    {
        return Err(reject(
            unknown,
            format!("unknown field (expected one of {fields})"),
        ));
    }
    string("name", true)?;
    let public_key = string("public_key", true)?.unwrap_or_default();
    let endpoint = string("endpoint", false)?;
    let pod_cidrs = match table.get(cidrs) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                v => Err(reject(
                    cidrs,
                    format!("expected strings, found {}", v.type_str()),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(reject(
                cidrs,
                format!("expected an array, found {}", v.type_str()),
            ));
        }
    };
    let persistent_keepalive = match table.get("persistent_keepalive") {
        None => None,
        Some(toml::Value::Integer(n)) => Some(
            u16::try_from(*n)
                .map_err(|_| reject("persistent_keepalive", format!("{n} is not in 0..=65535")))?,
        ),
        Some(v) => {
            return Err(reject(
                "persistent_keepalive",
                format!("expected seconds, found {}", v.type_str()),
            ));
        }
    };
    Ok(NodeEntry {
        name,
        public_key,
        endpoint,
        pod_cidrs,
        persistent_keepalive,
        origin,
    })
}

/// Parses the text of one peers file. `origin` (usually the path) prefixes every entry's origin.
///
/// ```
/// let text = r#"
/// cluster_cidrs = ["10.99.0.0/16"]
/// [[node]]
/// name = "node-a"
/// public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
/// pod_cidrs = ["10.99.1.0/24"]
/// "#;
/// let snapshot = wormhole_core::parse_peers_file(text, "peers.toml").unwrap();
/// assert_eq!(snapshot.nodes[0].origin, "peers.toml:3 node[0]");
/// ```
pub fn parse_peers_file(text: &str, origin: &str) -> Result<Snapshot, String> {
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!("line {}: ", line_of(&line_ends(text), s.start)))
            .unwrap_or_default();
        format!("{at}{}", e.message())
    })?;
    let ends = line_ends(text);
    let mut snapshot = Snapshot::default();
    for (i, text_cidr) in doc.cluster_cidrs.iter().enumerate() {
        let cidr: IpNet = parse_cidr(text_cidr).map_err(|r| format!("cluster_cidrs[{i}]: {r}"))?;
        snapshot.cluster_cidrs.push(cidr);
    }
    for (i, node) in doc.node.iter().enumerate() {
        let origin = format!("{origin}:{} node[{i}]", line_of(&ends, node.span().start));
        match node_entry(node.get_ref(), origin, false) {
            Ok(entry) => snapshot.nodes.push(entry),
            Err(rejection) => snapshot.rejected.push(rejection),
        }
    }
    for (i, text_cidr) in doc.external_cidrs.iter().enumerate() {
        let cidr: IpNet = parse_cidr(text_cidr).map_err(|r| format!("external_cidrs[{i}]: {r}"))?;
        snapshot.external_cidrs.push(cidr);
    }
    for (i, peer) in doc.external.iter().enumerate() {
        let origin = format!(
            "{origin}:{} external[{i}]",
            line_of(&ends, peer.span().start)
        );
        match node_entry(peer.get_ref(), origin, true) {
            Ok(entry) => snapshot.external.push(entry),
            Err(rejection) => snapshot.rejected.push(rejection),
        }
    }
    Ok(snapshot)
}

/// What the file (or directory) looked like when last read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Files(Vec<(PathBuf, u64, Option<SystemTime>, u64)>),
    Unreadable(String),
}

/// The files to read: `path` itself, or the `*.toml` files in it, sorted.
fn files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let file = entry?.path();
        let hidden = file
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if !hidden && file.extension().is_some_and(|e| e == "toml") && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt as _;
    let read = || -> std::io::Result<_> {
        let mut prints = Vec::new();
        for file in files(path)? {
            let meta = std::fs::metadata(&file)?;
            prints.push((file, meta.len(), meta.modified().ok(), meta.ino()));
        }
        Ok(prints)
    };
    read().map_or_else(
        |e| Fingerprint::Unreadable(e.to_string()),
        Fingerprint::Files,
    )
}

/// Reads and parses a peers file or directory once.
pub fn load_peers_file(path: &Path) -> Result<Snapshot, Error> {
    let err = |message: String| Error::PeersFile {
        path: path.to_owned(),
        message,
    };
    let mut snapshot = Snapshot::default();
    // The file that gave the cluster CIDRs: every other file giving them must agree.
    let mut cluster_from: Option<PathBuf> = None;
    let files = files(path).map_err(|e| err(e.to_string()))?;
    // In a directory, each file is an entry of its own: one that cannot be read or parsed is
    // refused alone (its nodes drop out) while the others keep working. A single file is the
    // whole picture: if it is broken, the last good mesh stays.
    let in_directory = files.len() != 1 || files[0] != path;
    for file in files {
        let origin = file.display().to_string();
        let part = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_peers_file(&text, &origin));
        let part = match part {
            Ok(part) => part,
            Err(message) if in_directory => {
                snapshot.rejected.push(Rejection {
                    name: String::new(),
                    origin,
                    reason: RejectReason::Invalid {
                        field: "(the whole file)".into(),
                        reason: message,
                    },
                    external: false,
                });
                continue;
            }
            Err(message) => {
                return Err(Error::PeersFile {
                    path: file,
                    message,
                });
            }
        };
        if !part.cluster_cidrs.is_empty() {
            let mut theirs = part.cluster_cidrs.clone();
            theirs.sort();
            theirs.dedup();
            match &cluster_from {
                None => {
                    snapshot.cluster_cidrs = theirs;
                    cluster_from = Some(file.clone());
                }
                Some(first) if snapshot.cluster_cidrs != theirs => {
                    let list = |c: &[ipnet::IpNet]| {
                        c.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(err(format!(
                        "cluster_cidrs differ: {} has [{}], {} has [{}]; give them in one file, or the same in every file",
                        first.display(),
                        list(&snapshot.cluster_cidrs),
                        file.display(),
                        list(&theirs)
                    )));
                }
                Some(_) => {}
            }
        }
        snapshot.nodes.extend(part.nodes);
        snapshot.external.extend(part.external);
        snapshot.external_cidrs.extend(part.external_cidrs);
        snapshot.rejected.extend(part.rejected);
    }
    Ok(snapshot)
}

/// The peers file: a TOML file, or a directory of `*.toml` files, hot-reloaded on change.
///
/// This format is a public contract:
///
/// ```toml
/// cluster_cidrs = ["10.99.0.0/16", "fd99::/48"]   # optional; --cluster-cidr wins
/// [[node]]
/// name = "node-a"
/// public_key = "<base64>"
/// endpoint = "192.168.77.1:51820"                 # optional ([v6]:port allowed)
/// pod_cidrs = ["10.99.1.0/24", "fd99:0:1::/64"]
/// persistent_keepalive = 25                       # optional, seconds
/// ```
///
/// Machines outside the cluster are `[[external]]` entries (fields `name`, `public_key`,
/// optional `endpoint`, `allowed_ips`, optional `persistent_keepalive`), accepted only with
/// allowed IPs inside the top-level `external_cidrs` (see [`Snapshot::external`]).
///
/// Every node, this one included, is listed. A bad entry is rejected on its own, with its file,
/// line and field; a file that does not parse as a whole (or a directory with such a file) is an
/// error, and the reconciler keeps the last good mesh. In a directory, files whose names start
/// with `.` are ignored, so editors' and `kubectl`'s temporary files do no harm.
///
/// Changes are noticed through filesystem notifications (inotify on Linux) on the directory that
/// holds the file (or the directory itself), and on the directory of the file a symlink points
/// to: a directory, not the file, because an atomic replacement (temporary file + rename) or the
/// symlink swap of a Kubernetes ConfigMap volume puts a new inode in place. A notification only
/// says "look again": what counts is the files' metadata (size, modification time, inode),
/// compared with what was last read, which is also polled every
/// [`FilePeerSource::with_interval`] (250 ms by default) in case notifications are missing
/// (another OS, no inotify, no watch left, a network filesystem). A change is read once the
/// metadata has held still for 20 ms (or a fifth of the interval, if shorter), so a writer that
/// is not atomic is usually not read halfway; still, write the file atomically.
///
/// Notifications use inotify through `nix` (already a dependency of the workspace) rather than
/// the `notify` crate: one file descriptor driven by the Tokio reactor, no background thread,
/// no new dependencies; other systems fall back to polling. The source therefore needs a Tokio
/// runtime with IO enabled (`enable_all`, as `#[tokio::main]` does).
///
/// A [`PeerSource`] reading a peers file or a directory of them, re-read when they change (see
/// the [`FilePeerSource`] docs). Hand it to the reconciler with
/// [`source::from_peer_source`](crate::source::from_peer_source).
#[derive(Debug)]
pub struct FilePeerSource {
    path: PathBuf,
    interval: Duration,
    last: Option<Fingerprint>,
    /// Notifications, once set up (at the first read, and again after every change, as a
    /// symlink may point elsewhere now); `None`: polling only.
    watch: Option<watch::Watch>,
    /// Setting up notifications failed once (logged once; polling goes on).
    unwatched: bool,
}

impl FilePeerSource {
    /// Watches `path` (a file or a directory of `*.toml`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FilePeerSource {
            path: path.into(),
            interval: Duration::from_millis(250),
            last: None,
            watch: None,
            unwatched: false,
        }
    }

    /// How often to look for changes without a notification (default 250 ms).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets up notifications for the directories that matter now; on failure, polling only.
    fn rewatch(&mut self) {
        self.watch = None;
        match watch::Watch::new(&self.path) {
            Ok(watch) => {
                if self.unwatched {
                    tracing::info!(path = %self.path.display(), "watching the peers file for changes again");
                    self.unwatched = false;
                }
                self.watch = Some(watch);
            }
            Err(e) if !self.unwatched => {
                self.unwatched = true;
                tracing::warn!(path = %self.path.display(), error = %e, interval = ?self.interval,
                    "cannot watch the peers file for changes; polling it");
            }
            Err(_) => {}
        }
    }

    /// Waits for a notification or the poll interval, whichever comes first.
    async fn wait(&mut self) {
        let Some(watch) = &self.watch else {
            return tokio::time::sleep(self.interval).await;
        };
        tokio::select! {
            changed = watch.changed() => {
                if let Err(e) = changed {
                    tracing::warn!(path = %self.path.display(), error = %e, "peers file notifications failed; polling it");
                    self.unwatched = true;
                    self.watch = None;
                }
            }
            () = tokio::time::sleep(self.interval) => {}
        }
    }
}

/// How long a change must hold still before it is read (at most; a fifth of the poll interval
/// if that is shorter).
const SETTLE: Duration = Duration::from_millis(20);

#[async_trait]
impl PeerSource for FilePeerSource {
    async fn next(&mut self) -> Result<Snapshot, Error> {
        loop {
            let now = fingerprint(&self.path);
            if self.last.as_ref() != Some(&now) {
                // Let a writer that is not atomic finish before reading.
                tokio::time::sleep(SETTLE.min(self.interval / 5)).await;
                // Before looking again, so that any later change is notified: a symlink may
                // point to another directory now, a missing directory may exist.
                self.rewatch();
                if fingerprint(&self.path) != now {
                    continue;
                }
                self.last = Some(now);
                let path = self.path.clone();
                return tokio::task::spawn_blocking(move || load_peers_file(&path))
                    .await
                    .map_err(|e| Error::Source(e.into()))?;
            }
            self.wait().await;
        }
    }
}

/// Filesystem notifications: inotify on Linux.
#[cfg(target_os = "linux")]
mod watch {
    use std::os::fd::{AsFd as _, AsRawFd, RawFd};
    use std::path::{Path, PathBuf};

    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use tokio::io::unix::AsyncFd;

    /// An inotify instance on the directories where a change of the peers file shows.
    #[derive(Debug)]
    pub(super) struct Watch(AsyncFd<Fd>);

    #[derive(Debug)]
    struct Fd(Inotify);

    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    /// The directories to watch for `path`: the directory itself, or the one holding the file;
    /// and the same for where symlinks lead, if elsewhere.
    fn directories(path: &Path) -> Vec<PathBuf> {
        let of = |p: &Path| -> PathBuf {
            if p.is_dir() {
                p.to_owned()
            } else {
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                    _ => PathBuf::from("."),
                }
            }
        };
        let mut dirs = vec![of(path)];
        if let Ok(real) = std::fs::canonicalize(path) {
            let real = of(&real);
            if std::fs::canonicalize(&dirs[0]).ok().as_ref() != Some(&real) {
                dirs.push(real);
            }
        }
        dirs
    }

    impl Watch {
        pub(super) fn new(path: &Path) -> std::io::Result<Watch> {
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
            let events = AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_ATTRIB
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_ONLYDIR;
            for dir in directories(path) {
                inotify.add_watch(&dir, events).map_err(|e| {
                    std::io::Error::new(
                        std::io::Error::from(e).kind(),
                        format!("watch {}: {e}", dir.display()),
                    )
                })?;
            }
            // Deprecated in Tokio 1.54 for types that may not own their descriptor (its
            // replacement, `register`, is `unsafe`, which this crate forbids). `Fd` owns the
            // inotify descriptor, and nothing closes or replaces it while registered.
            #[allow(deprecated)]
            let fd = AsyncFd::new(Fd(inotify))?;
            Ok(Watch(fd))
        }

        /// Waits until something happened in a watched directory.
        pub(super) async fn changed(&self) -> std::io::Result<()> {
            loop {
                let mut ready = self.0.readable().await?;
                match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
                    Ok(Ok(events)) if !events.is_empty() => return Ok(()),
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => return Err(e),
                }
            }
        }
    }
}

/// Elsewhere: no notifications, polling only.
#[cfg(not(target_os = "linux"))]
mod watch {
    #[derive(Debug)]
    pub(super) struct Watch;

    impl Watch {
        pub(super) fn new(_: &std::path::Path) -> std::io::Result<Watch> {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no filesystem notifications on this system",
            ))
        }

        pub(super) async fn changed(&self) -> std::io::Result<()> {
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mesh, PrivateKey, PublicKey};

    fn node(name: &str, key: &str, cidr: &str) -> String {
        format!(
            "[[node]]\nname = \"{name}\"\npublic_key = \"{key}\"\nendpoint = \"192.168.77.2:51820\"\npod_cidrs = [\"{cidr}\"]\n\n"
        )
    }

    fn key() -> PublicKey {
        PrivateKey::generate().public_key()
    }

    #[test]
    fn five_entries_one_bad_key_gives_four_peers_and_one_named_error() {
        let me = key();
        let mut text = String::from("cluster_cidrs = [\"10.99.0.0/16\", \"fd99::/48\"]\n\n");
        text += &node("local", &me.to_base64(), "10.99.1.0/24");
        text += &node("a", &key().to_base64(), "10.99.2.0/24");
        text += &node("b", &key().to_base64(), "10.99.3.0/24");
        text += &node("bad", "not-a-key", "10.99.4.0/24");
        text += &node("c", &key().to_base64(), "10.99.5.0/24");
        text += &node("d", &key().to_base64(), "10.99.6.0/24");
        let snapshot = parse_peers_file(&text, "peers.toml").unwrap();
        let mesh = Mesh::build("local", &me, &[], snapshot, None).unwrap();
        assert_eq!(mesh.peers.len(), 4);
        assert_eq!(mesh.rejected.len(), 1);
        let err = mesh.rejected[0].to_string();
        assert!(
            err.starts_with("bad (peers.toml:21 node[3]): malformed public key"),
            "{err}"
        );
    }

    #[test]
    fn bad_fields_are_rejected_per_entry_with_position_and_field() {
        let k = key().to_base64();
        let text = format!(
            "[[node]]\nname = \"a\"\npublic_key = \"{k}\"\npod_cidrs = \"10.0.0.0/24\"\n\n\
             [[node]]\nname = \"b\"\npublic_key = \"{k}\"\npodcidrs = []\n\n\
             [[node]]\nname = \"c\"\npublic_key = \"{k}\"\npersistent_keepalive = 70000\n\n\
             [[node]]\nname = \"d\"\n\n\
             [[node]]\nname = \"e\"\npublic_key = 5\n"
        );
        let snapshot = parse_peers_file(&text, "f").unwrap();
        assert!(snapshot.nodes.is_empty());
        let got: Vec<String> = snapshot.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(
            got[0].starts_with("a (f:1 node[0]): field pod_cidrs: expected an array"),
            "{}",
            got[0]
        );
        assert!(
            got[1].contains("field podcidrs: unknown field"),
            "{}",
            got[1]
        );
        assert!(
            got[2].contains("field persistent_keepalive: 70000 is not in"),
            "{}",
            got[2]
        );
        assert!(got[3].contains("field public_key: missing"), "{}", got[3]);
        assert!(
            got[4].contains("field public_key: expected a string, found integer"),
            "{}",
            got[4]
        );
    }

    #[test]
    fn a_broken_file_is_one_error_with_a_line() {
        let err = parse_peers_file(
            "cluster_cidrs = [\"10.99.0.0/16\"]\n[[node]\nname = 1\n",
            "f",
        )
        .unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        let err = parse_peers_file("cluster_cidr = []\n", "f").unwrap_err();
        assert!(err.contains("unknown field `cluster_cidr`"), "{err}");
        let err = parse_peers_file("cluster_cidrs = [\"10.99.0.1/16\"]\n", "f").unwrap_err();
        assert!(err.contains("cluster_cidrs[0]"), "{err}");
    }

    #[test]
    fn a_big_peers_file_parses_in_linear_time() {
        // Counting lines from the start for each entry made parsing quadratic. Compared by
        // ratio, not by time, so a slow machine does not fail it: ten times the entries must
        // cost about ten times as much (quadratic: about a hundred).
        let file = |n: u32| {
            let key = key().to_base64();
            let mut text = String::from("cluster_cidrs = [\"10.0.0.0/8\"]\n");
            for i in 0..n {
                text += &node(
                    &format!("n{i}"),
                    &key,
                    &format!("10.{}.{}.0/24", i / 256, i % 256),
                );
                text += "# padding, as comments in a generated file would be ...................\n";
            }
            text
        };
        let time = |text: &str| {
            let started = std::time::Instant::now();
            let snapshot = parse_peers_file(text, "f").unwrap();
            (started.elapsed(), snapshot)
        };
        let (small, big) = (file(800), file(8_000));
        let (t_small, _) = time(&small);
        let (t_big, snapshot) = time(&big);
        assert_eq!(snapshot.nodes.len(), 8_000);
        assert_eq!(
            snapshot.nodes[7_999].origin,
            format!("f:{} node[7999]", 2 + 7_999 * 7)
        );
        let ratio = t_big.as_secs_f64() / t_small.as_secs_f64();
        assert!(
            ratio < 30.0,
            "10x the entries took {ratio:.0}x as long ({t_small:?} -> {t_big:?})"
        );
    }

    #[test]
    fn cluster_cidrs_of_a_directory_must_agree_between_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "a.toml",
            "cluster_cidrs = [\"10.99.0.0/16\", \"fd99::/48\"]\n",
        );
        // The same set in another order, and a file without any: fine.
        write(
            "b.toml",
            "cluster_cidrs = [\"fd99::/48\", \"10.99.0.0/16\"]\n",
        );
        write("c.toml", &node("c", &key().to_base64(), "10.99.3.0/24"));
        let snapshot = load_peers_file(dir.path()).unwrap();
        assert_eq!(snapshot.cluster_cidrs.len(), 2);
        // A file that widens them (10.0.0.0/8 would hold the underlay on many networks).
        write("d.toml", "cluster_cidrs = [\"10.0.0.0/8\"]\n");
        let err = load_peers_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cluster_cidrs differ"), "{err}");
        assert!(
            err.contains("a.toml has [10.99.0.0/16, fd99::/48]"),
            "{err}"
        );
        assert!(err.contains("d.toml has [10.0.0.0/8]"), "{err}");
    }

    /// Issue 20: in a directory, a file that does not parse used to refuse the whole picture
    /// (every node's mesh froze); it is refused alone now. A single file is the whole picture.
    #[test]
    fn a_broken_file_in_a_directory_is_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("a.toml", &node("a", &key().to_base64(), "10.99.1.0/24"));
        write("b.toml", "[[node]]\nname = \"b\n");
        write("c.toml", &node("c", &key().to_base64(), "10.99.3.0/24"));
        let snapshot = load_peers_file(dir.path()).unwrap();
        let names: Vec<&str> = snapshot.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(snapshot.rejected.len(), 1);
        let text = snapshot.rejected[0].to_string();
        assert!(
            text.contains("b.toml") && text.contains("(the whole file)"),
            "{text}"
        );
        let err = load_peers_file(&dir.path().join("b.toml")).unwrap_err();
        assert!(err.to_string().contains("b.toml"), "{err}");
    }

    #[tokio::test]
    async fn reloads_on_change_and_reads_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key().to_base64(), key().to_base64());
        std::fs::write(dir.path().join("a.toml"), node("a", &a, "10.99.1.0/24")).unwrap();
        std::fs::write(dir.path().join(".hidden.toml"), "garbage [[").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "garbage [[").unwrap();
        let mut source = FilePeerSource::new(dir.path()).with_interval(Duration::from_millis(20));
        let first = source.next().await.unwrap();
        assert_eq!(first.nodes.len(), 1);
        assert_eq!(
            first.nodes[0].origin,
            format!("{}:1 node[0]", dir.path().join("a.toml").display())
        );
        // Nothing changes: next() keeps waiting.
        let waited = tokio::time::timeout(Duration::from_millis(150), source.next()).await;
        assert!(waited.is_err());
        std::fs::write(dir.path().join("b.toml"), node("b", &b, "10.99.2.0/24")).unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), source.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.nodes.len(), 2);
        // A broken file in a directory is refused alone (the others stay).
        std::fs::write(dir.path().join("b.toml"), "[[node]\n").unwrap();
        let broken = tokio::time::timeout(Duration::from_secs(5), source.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(broken.nodes.len(), 1);
        let refused = broken.rejected[0].to_string();
        assert!(
            refused.contains("b.toml") && refused.contains("line 1"),
            "{refused}"
        );
    }

    /// With a poll interval of a minute, only a notification explains a change seen within a
    /// second: an atomic replacement (rename), a symlink swap as a ConfigMap volume makes, and
    /// a new file in a directory.
    #[tokio::test]
    #[cfg(target_os = "linux")]
    async fn notifications_see_changes_well_under_the_poll_interval() {
        let interval = Duration::from_secs(60);
        let quick = Duration::from_secs(1);
        let (a, b, c) = (key().to_base64(), key().to_base64(), key().to_base64());
        let dir = tempfile::tempdir().unwrap();

        // A file replaced by rename.
        let file = dir.path().join("peers.toml");
        std::fs::write(&file, node("a", &a, "10.99.1.0/24")).unwrap();
        let mut source = FilePeerSource::new(&file).with_interval(interval);
        assert_eq!(source.next().await.unwrap().nodes.len(), 1);
        let replace = |text: String| {
            let tmp = dir.path().join(".peers.toml.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        };
        for n in 2..=3 {
            let mut text = node("a", &a, "10.99.1.0/24") + &node("b", &b, "10.99.2.0/24");
            if n == 3 {
                text += &node("c", &c, "10.99.3.0/24");
            }
            let started = std::time::Instant::now();
            replace(text);
            let got = tokio::time::timeout(quick, source.next())
                .await
                .expect("the rename was not noticed within a second")
                .unwrap();
            assert_eq!(got.nodes.len(), n);
            eprintln!("rename noticed after {:?}", started.elapsed());
        }

        // A ConfigMap volume: peers.toml -> ..data/peers.toml, ..data -> ..v1; the update makes
        // ..v2 and renames a new ..data symlink over the old one.
        let volume = dir.path().join("volume");
        let version = |v: &str, text: String| {
            std::fs::create_dir_all(volume.join(v)).unwrap();
            std::fs::write(volume.join(v).join("peers.toml"), text).unwrap();
            let tmp = volume.join("..data_tmp");
            std::os::unix::fs::symlink(v, &tmp).unwrap();
            std::fs::rename(&tmp, volume.join("..data")).unwrap();
        };
        version("..v1", node("a", &a, "10.99.1.0/24"));
        std::os::unix::fs::symlink("..data/peers.toml", volume.join("peers.toml")).unwrap();
        let mut source = FilePeerSource::new(volume.join("peers.toml")).with_interval(interval);
        assert_eq!(source.next().await.unwrap().nodes.len(), 1);
        for (i, v) in ["..v2", "..v3"].into_iter().enumerate() {
            let mut text = node("a", &a, "10.99.1.0/24") + &node("b", &b, "10.99.2.0/24");
            if i == 1 {
                text += &node("c", &c, "10.99.3.0/24");
            }
            version(v, text);
            let got = tokio::time::timeout(quick, source.next())
                .await
                .expect("the symlink swap was not noticed within a second")
                .unwrap();
            assert_eq!(got.nodes.len(), 2 + i);
        }

        // A directory of files: one more file.
        let peers = dir.path().join("peers.d");
        std::fs::create_dir(&peers).unwrap();
        std::fs::write(peers.join("a.toml"), node("a", &a, "10.99.1.0/24")).unwrap();
        let mut source = FilePeerSource::new(&peers).with_interval(interval);
        assert_eq!(source.next().await.unwrap().nodes.len(), 1);
        std::fs::write(peers.join(".b.tmp"), node("b", &b, "10.99.2.0/24")).unwrap();
        std::fs::rename(peers.join(".b.tmp"), peers.join("b.toml")).unwrap();
        let got = tokio::time::timeout(quick, source.next())
            .await
            .expect("the new file was not noticed within a second")
            .unwrap();
        assert_eq!(got.nodes.len(), 2);
    }
}
