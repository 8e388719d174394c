use std::path::PathBuf;

use crate::keys::KeyError;

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
            Error::Mesh(_) => "mesh",
            Error::Backend { backend, .. } => backend,
        }
    }
}
