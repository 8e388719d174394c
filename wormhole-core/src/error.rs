use std::path::PathBuf;

use ipnet::IpNet;

use crate::keys::{KeyError, PublicKey};

/// Every error `wormhole-core` returns.
///
/// Messages are lowercase and never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key could not be parsed.
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What we were doing ("read", "write", "rename", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key file is readable or writable by group or others.
    #[error(
        "refusing key file {path}: mode {mode:04o} gives access to group or others \
         (run: chmod 600 {path})",
        path = path.display()
    )]
    InsecureKeyFile {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file exists but does not hold one base64 key.
    #[error("key file {path}: {source}", path = path.display())]
    KeyFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: KeyError,
    },
    /// A peers file as a whole could not be used (the last good mesh is kept).
    #[error("peers file {path}: {message}", path = path.display())]
    PeersFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, with line and column where known.
        message: String,
    },
    /// The snapshot cannot make a mesh at all (for example the local node is missing).
    #[error("invalid mesh: {0}")]
    Mesh(#[from] MeshError),
    /// A network interface name that Linux or our rules cannot take.
    #[error(
        "invalid interface name {name:?}: {reason} (1-15 bytes; no / : whitespace quotes \\ * ? [ ] or control characters)"
    )]
    InterfaceName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A cluster CIDR holds an underlay address: applying it would cut the node off.
    #[error(
        "cluster CIDR {cidr} contains {what} ({address}): its traffic would be dropped as \
         overlay traffic, WireGuard's included; choose cluster CIDRs that exclude the underlay \
         network (the last good mesh stays in force)"
    )]
    ClusterCidrConflict {
        /// The cluster CIDR.
        cidr: IpNet,
        /// The underlay address inside it.
        address: std::net::IpAddr,
        /// Whose address it is.
        what: String,
    },
    /// A peer source failed.
    #[error("peer source: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A key store could not give the node's key or the cluster secret (for example the
    /// Kubernetes Secret holding the PSK cannot be read). Counted as a key error, not a peer
    /// source one.
    #[error("key store: {0}")]
    KeyStore(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A host backend failed.
    #[error("{backend} backend: {message}")]
    Backend {
        /// Which backend.
        backend: Component,
        /// What failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A backend applied every change but these: each failed item with its reason. The
    /// reconciler shows each on its peer's row in the status and retries them; nothing else is
    /// held back by them.
    #[error("{backend} backend: {} change(s) not applied, every other change applied: {}",
        failures.len(), ItemFailure::list(failures))]
    Partial {
        /// Which backend ([`Component::Host`] for several).
        backend: Component,
        /// What failed, and why.
        failures: Vec<ItemFailure>,
    },
}

/// Why a snapshot cannot make a mesh at all (see [`Error::Mesh`]). A bad *peer* is not an
/// error: it is rejected with a [`RejectReason`](crate::RejectReason) and the rest is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// Neither the snapshot nor the settings give cluster CIDRs.
    #[error("no cluster CIDRs: set cluster_cidrs in the peers file or --cluster-cidr")]
    NoClusterCidrs,
    /// This node's own name is not a valid node name.
    #[error(
        "this node's name \"{}\": {}",
        crate::text::Escaped(name),
        crate::RejectReason::BadName
    )]
    BadLocalName {
        /// The name as given.
        name: String,
    },
    /// The snapshot has no entry for this node.
    #[error("this node ({}) is not in the snapshot", crate::text::Escaped(name))]
    LocalNodeMissing {
        /// This node's name.
        name: String,
    },
    /// This node's entry is invalid (for example a malformed pod CIDR, or too many).
    #[error("this node: {0}")]
    LocalNode(crate::RejectReason),
    /// One of this node's pod CIDRs is outside every cluster CIDR.
    #[error("this node's pod CIDR {cidr} is outside the cluster CIDRs")]
    LocalCidrOutsideCluster {
        /// The pod CIDR.
        cidr: IpNet,
    },
    /// Two of this node's pod CIDRs overlap.
    #[error("this node's pod CIDR {second} overlaps {first}, another of its own")]
    LocalCidrOverlap {
        /// The first of the two.
        first: IpNet,
        /// The one overlapping it.
        second: IpNet,
    },
}

/// Which host backend an [`Error::Backend`] or [`Error::Partial`] comes from; its name is the
/// error's [`kind`](Error::kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Component {
    /// The WireGuard device.
    WireGuard,
    /// Links, addresses and routes.
    Network,
    /// The firewall ruleset.
    Firewall,
    /// Several of them (a pass's item failures, all backends together).
    Host,
}

impl Component {
    /// Its stable name: `wireguard`, `network`, `firewall`, `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::WireGuard => "wireguard",
            Component::Network => "network",
            Component::Firewall => "firewall",
            Component::Host => "host",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change a backend could not apply (see [`Error::Partial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    /// What it was about.
    pub item: FailedItem,
    /// Why, for a person (for example `route conflict: 10.99.2.0/24 dev eth0 proto static`).
    pub reason: String,
}

/// What an [`ItemFailure`] was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailedItem {
    /// A WireGuard peer, by public key.
    Peer(PublicKey),
    /// A route to a peer's pod CIDR.
    Route(IpNet),
}

impl ItemFailure {
    fn list(failures: &[ItemFailure]) -> String {
        failures
            .iter()
            .map(|f| match f.item {
                FailedItem::Peer(k) => format!("peer {k}: {}", f.reason),
                FailedItem::Route(n) => format!("route {n}: {}", f.reason),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Error {
    /// A backend error without an underlying cause.
    pub fn backend(backend: Component, message: impl Into<String>) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// A backend error with its cause.
    pub fn backend_caused(
        backend: Component,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A short, stable label for metrics: `key` (keys, key files, the key store and its cluster
    /// secret), `io`, `source`, `mesh`, or the backend's [`Component`] name (`wireguard`,
    /// `network`, `firewall`, `host`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Key(_)
            | Error::KeyFile { .. }
            | Error::InsecureKeyFile { .. }
            | Error::KeyStore(_) => "key",
            Error::Io { .. } => "io",
            Error::PeersFile { .. } | Error::Source(_) => "source",
            Error::Mesh(_) | Error::InterfaceName { .. } | Error::ClusterCidrConflict { .. } => {
                "mesh"
            }
            Error::Backend { backend, .. } | Error::Partial { backend, .. } => backend.as_str(),
        }
    }
}

/// Displays an error followed by its causes, `: `-separated (`a: b: c`), so a log line or a
/// status field shows why, not only what. A cause whose text the line already ends with (an
/// error that prints its source itself) is not repeated.
///
/// ```
/// use wormhole_core::ErrorChain;
/// let cause = std::io::Error::other("no such device");
/// let e = wormhole_core::Error::backend_caused(
///     wormhole_core::Component::WireGuard,
///     "configure wh0",
///     cause,
/// );
/// assert_eq!(ErrorChain(&e).to_string(), "wireguard backend: configure wh0: no such device");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let more = cause.to_string();
            if !text.ends_with(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_shows_every_cause_once() {
        // Io prints its source itself: not repeated.
        let e = Error::Io {
            action: "read",
            path: "/x".into(),
            source: std::io::Error::other("denied"),
        };
        assert_eq!(ErrorChain(&e).to_string(), "read /x: denied");
        // Backend keeps it as a source only: shown.
        let e = Error::backend_caused(
            Component::WireGuard,
            "start userspace WireGuard for wh0",
            std::io::Error::other("wireguard-go not found in PATH"),
        );
        assert_eq!(
            ErrorChain(&e).to_string(),
            "wireguard backend: start userspace WireGuard for wh0: wireguard-go not found in PATH"
        );
        assert_eq!(
            e.to_string(),
            "wireguard backend: start userspace WireGuard for wh0"
        );
    }

    #[test]
    fn kinds_are_stable_labels() {
        let key_store = Error::KeyStore("secret unreadable".into());
        assert_eq!(key_store.kind(), "key");
        assert_eq!(key_store.to_string(), "key store: secret unreadable");
        assert_eq!(Error::Source("down".into()).kind(), "source");
        assert_eq!(Error::from(MeshError::NoClusterCidrs).kind(), "mesh");
        for (c, name) in [
            (Component::WireGuard, "wireguard"),
            (Component::Network, "network"),
            (Component::Firewall, "firewall"),
            (Component::Host, "host"),
        ] {
            assert_eq!(Error::backend(c, "x").kind(), name);
            assert_eq!(
                Error::backend(c, "x").to_string(),
                format!("{name} backend: x")
            );
        }
    }
}
