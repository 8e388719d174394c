//! `wormhole`: the agent of the Wormhole encrypted pod network.
//!
//! `wormhole run` keeps this node's WireGuard interface, routes, nftables table and CNI conflist
//! equal to the mesh its peers file describes; `wormhole status` asks it how its peers are doing
//! (`--cluster`: every pair of nodes, [`matrix`]); `wormhole graph` draws the mesh ([`graph`]);
//! `genkey`, `pubkey` and `rotate-key` manage keys. The agent itself is the `wormhole-agent`
//! library; this binary parses options ([`cli`]), hands them to it ([`run::run`]) and prints.

// A binary: `pub` items are crate-wide by construction.
#![allow(unreachable_pub)]

mod cli;
mod cluster;
mod graph;
mod matrix;
mod peer_config;
mod run;
mod status;

use std::io::Read as _;
use std::process::ExitCode;

use clap::Parser as _;
use wormhole_core::{FileKeyStore, KeyStore, PrivateKey};

/// The daemon's errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad or conflicting options.
    #[error("{0}")]
    Config(String),
    /// From the agent library.
    #[error(transparent)]
    Agent(#[from] wormhole_agent::Error),
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

fn init_logging(format: cli::LogFormat) {
    // kube's client logs an ERROR for every failed request: during an API outage that is a
    // line per retry, each repeating what our own warning (with its cause) already says.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        cli::LogFormat::Json => builder.json().init(),
        cli::LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Run(args) => {
            let config = args.resolve().map_err(anyhow::Error::msg)?;
            init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(run::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Status(args) if args.cluster => {
            let cluster = cluster::read(&args.source).map_err(anyhow::Error::msg)?;
            match args.output {
                cli::Output::Json => println!("{}", serde_json::to_string_pretty(&cluster)?),
                cli::Output::Table => print!("{}", matrix::render(&cluster)),
            }
            let s = cluster.summary();
            Ok(if s.ok == s.pairs && cluster.unreadable.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        cli::Command::Status(args) => {
            if !args.source.admin.is_empty() || args.source.kubeconfig.is_some() {
                anyhow::bail!("--admin and --kubeconfig go with --cluster");
            }
            let view = status::fetch(args.admin_addr).map_err(anyhow::Error::msg)?;
            match args.output {
                cli::Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                cli::Output::Table => print!("{}", status::table(&view)),
            }
            Ok(if view.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        cli::Command::Graph(args) => {
            let cluster = cluster::read(&args.source).map_err(anyhow::Error::msg)?;
            match args.output {
                cli::GraphFormat::Svg => print!("{}", graph::svg::render(&cluster)),
                cli::GraphFormat::Dot => print!("{}", graph::dot::render(&cluster)),
            }
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Genkey => {
            println!("{}", *PrivateKey::generate().to_base64_secret());
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Pubkey => {
            let mut text = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_to_string(&mut text)?;
            let key: PrivateKey = text
                .parse()
                .map_err(|e| anyhow::anyhow!("stdin: invalid private key: {e}"))?;
            println!("{}", key.public_key());
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::PeerConfig(args) => {
            let (snapshot, origin) = match &args.peers {
                Some(path) => (
                    wormhole_core::load_peers_file(path)?,
                    peer_config::Origin::File,
                ),
                None => {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let snapshot = runtime
                        .block_on(wormhole_agent::read_external_peers(
                            args.kubeconfig.as_deref(),
                            args.cluster_cidr.clone(),
                            args.external_cidr.clone(),
                        ))
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "cannot read the cluster's WormholePeers (or pass --peers FILE): {}",
                                wormhole_core::ErrorChain(&e)
                            )
                        })?;
                    (snapshot, peer_config::Origin::Kubernetes)
                }
            };
            let text = peer_config::render(snapshot, &args.name, args.service_cidr, origin)
                .map_err(anyhow::Error::msg)?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::RotateKey(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().build()?;
            let key = runtime.block_on(FileKeyStore::new(&args.key_file).rotate())?;
            println!("{}", key.public_key());
            eprintln!(
                "new key written to {}; the running agent uses it from its next pass. \
                 Publish the public key above in the peers file for this node.",
                args.key_file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
