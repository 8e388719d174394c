//! The agent's errors.

/// Why an agent could not be built, started or stopped in order.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given something invalid or contradictory; the message names the option
    /// and the fix. Returned by [`AgentBuilder::build`](crate::AgentBuilder::build), before
    /// anything touches the host.
    #[error("{0}")]
    Invalid(String),
    /// Start-up needs something the environment does not give (no Kubernetes configuration, no
    /// cluster CIDR anywhere, an unknown Node).
    #[error("{0}")]
    Environment(String),
    /// From the core or a backend.
    #[error(transparent)]
    Core(#[from] wormhole_core::Error),
    /// Local I/O.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
