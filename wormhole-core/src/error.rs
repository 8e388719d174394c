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
    Mesh(String),
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
    /// A host backend failed.
    #[error("{backend} backend: {message}")]
    Backend {
        /// Which backend ("wireguard", "network", "firewall", ...).
        backend: &'static str,
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
        /// Which backend ("wireguard", "network", or "host" for several).
        backend: &'static str,
        /// What failed, and why.
        failures: Vec<ItemFailure>,
    },
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
    pub fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// A short, stable label for metrics ("key", "io", "backend:wireguard", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Key(_) | Error::KeyFile { .. } | Error::InsecureKeyFile { .. } => "key",
            Error::Io { .. } => "io",
            Error::PeersFile { .. } | Error::Source(_) => "source",
            Error::Mesh(_) | Error::InterfaceName { .. } | Error::ClusterCidrConflict { .. } => {
                "mesh"
            }
            Error::Backend { backend, .. } | Error::Partial { backend, .. } => backend,
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
/// let e = wormhole_core::Error::Backend {
///     backend: "wireguard",
///     message: "configure wh0".into(),
///     source: Some(Box::new(cause)),
/// };
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
        let e = Error::Backend {
            backend: "wireguard",
            message: "start userspace WireGuard for wh0".into(),
            source: Some(Box::new(std::io::Error::other(
                "wireguard-go not found in PATH",
            ))),
        };
        assert_eq!(
            ErrorChain(&e).to_string(),
            "wireguard backend: start userspace WireGuard for wh0: wireguard-go not found in PATH"
        );
        assert_eq!(
            e.to_string(),
            "wireguard backend: start userspace WireGuard for wh0"
        );
    }
}
