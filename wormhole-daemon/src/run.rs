//! `wormhole run`: the resolved options handed to the agent library, with SIGTERM and SIGINT as
//! its shutdown.

use wormhole_agent::{Agent, AgentBuilder, Backend, ForeignCni, Peers};

use crate::Error;
use crate::cli::{BackendArg, Config, ForeignCniArg, PeerSourceKind};

/// SIGTERM and SIGINT, listened for from the first moment of [`run`] on every backend, so a
/// stop request at any time ends the agent in order (and `--cleanup-on-exit` runs).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> Result<Self, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind| {
            signal(kind).map_err(|source| Error::Io {
                what: "listen for SIGTERM and SIGINT".into(),
                source,
            })
        };
        Ok(StopSignals {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
        })
    }

    /// Completes at the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM"),
            _ = self.int.recv() => tracing::info!("SIGINT"),
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    // First of all: from here on a stop request ends the agent in order, whenever it comes.
    let mut stop = StopSignals::listen()?;
    agent(config).build()?.run(stop.recv()).await?;
    Ok(())
}

/// The agent of `config` (also what `wormhole preflight` checks for).
pub fn agent(config: Config) -> AgentBuilder {
    let peers = match config.source {
        PeerSourceKind::File(path) => Peers::file(path),
        PeerSourceKind::Kubernetes(options) => Peers::kubernetes(options),
    };
    let mut agent = Agent::builder(config.node_name, peers)
        .interface(config.interface)
        .listen_port(config.listen_port)
        .backend(match config.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Kernel => Backend::Kernel,
            BackendArg::Userspace => Backend::Userspace,
            BackendArg::Embedded => Backend::Embedded,
        })
        .key_file(config.key_file)
        .cluster_cidrs(config.cluster_cidrs)
        .bridge(config.bridge)
        .cni_conf_dir(Some(config.cni_conf_dir))
        .proc_sys_net(config.proc_sys_net)
        .resync(config.resync)
        .probe_interval(config.probe_interval)
        .probe_rate(config.probe_rate)
        .admin_addr(Some(config.admin_addr))
        .admin_allow(config.admin_allow)
        .metrics_allow(config.metrics_allow)
        .peer_metrics(config.peer_metrics)
        .cleanup_on_exit(config.cleanup_on_exit)
        .foreign_cni(match config.foreign_cni {
            ForeignCniArg::Warn => ForeignCni::Warn,
            ForeignCniArg::Fail => ForeignCni::Fail,
        });
    if !config.cni_bin_dirs.is_empty() {
        agent = agent.cni_bin_dirs(config.cni_bin_dirs);
    }
    if let Some(psk) = config.psk_file {
        agent = agent.psk_file(psk);
    }
    if let Some(mtu) = config.mtu {
        agent = agent.mtu(mtu);
    }
    agent
}
