//! `wormhole`: the agent of the Wormhole encrypted pod network.
//!
//! `wormhole run` keeps this node's WireGuard interface, routes, nftables table and CNI conflist
//! equal to the mesh its peers file describes; `wormhole status` asks it how its peers are doing
//! (`--cluster`: every pair of nodes, [`matrix`]); `wormhole graph` draws the mesh ([`graph`]);
//! `genkey`, `pubkey` and `rotate-key` manage keys; `version`, `completion` and `man` describe
//! the binary ([`version`], [`completion`], [`manpage`]). The agent itself is the `wormhole-agent`
//! library; this binary parses options ([`cli`]), hands them to it ([`run::run`]) and prints.

// A binary: `pub` items are crate-wide by construction.
#![allow(unreachable_pub)]

mod cli;
mod cluster;
mod completion;
#[cfg(test)]
mod doc_links;
mod graph;
mod manifests;
mod manpage;
mod matrix;
mod peer_config;
mod preflight;
#[cfg(test)]
mod reference;
mod run;
mod status;
mod uninstall;
mod version;

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

/// Why a command stopped, with its exit code. Printed as one line (`error: ` and the causes),
/// never with a backtrace: a user's mistake is no crash (a panic keeps its backtrace).
struct Failure {
    code: cli::Exit,
    error: anyhow::Error,
}

impl Failure {
    /// Invalid arguments or options that clap could not tell.
    fn usage(message: impl std::fmt::Display) -> Self {
        Failure {
            code: cli::Exit::Usage,
            error: anyhow::anyhow!("{message}\n\nFor more information, try '--help'."),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: cli::Exit::Error,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match command(cli) {
        Ok(exit) => exit.into(),
        Err(Failure { code, error }) => {
            // `{:#}`: the causes on one line, and no backtrace whatever RUST_BACKTRACE says
            // (`{:?}` would print the one anyhow captured).
            eprintln!("error: {error:#}");
            code.into()
        }
    }
}

/// The sources a cluster view could not read, on stderr (at most [`MAX_NOT_READ`]): the view
/// itself may go to a file.
fn say_not_read(cluster: &wormhole_agent::ClusterView) {
    for why in cluster.unreadable.iter().take(MAX_NOT_READ) {
        eprintln!("not read: {}", wormhole_core::escape(why));
    }
    if cluster.unreadable.len() > MAX_NOT_READ {
        eprintln!("... and {} more", cluster.unreadable.len() - MAX_NOT_READ);
    }
}

/// Sources not read named on stderr.
const MAX_NOT_READ: usize = 20;

/// How a command over a cluster view ends: no report at all is [`cli::Exit::Unreachable`] (said
/// on stderr), a source not read or (with `pairs`) a pair not `ok` is [`cli::Exit::NotOk`].
fn cluster_exit(cluster: &wormhole_agent::ClusterView, pairs: bool) -> cli::Exit {
    say_not_read(cluster);
    if !cluster.any_report() {
        eprintln!(
            "error: no node answered{}",
            if cluster.unreadable.is_empty() {
                " (no node has published its status: is the wormhole agent running?)"
            } else {
                ""
            }
        );
        return cli::Exit::Unreachable;
    }
    let s = cluster.summary();
    if !cluster.unreadable.is_empty() || (pairs && s.ok != s.pairs) {
        cli::Exit::NotOk
    } else {
        cli::Exit::Ok
    }
}

fn command(cli: cli::Cli) -> Result<cli::Exit, Failure> {
    match cli.command {
        cli::Command::Run(args) => {
            let config = args.resolve().map_err(Failure::usage)?;
            init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(run::run(config))?;
            Ok(cli::Exit::Ok)
        }
        cli::Command::Status(args) if args.cluster => {
            let cluster = cluster::read(&args.source).map_err(anyhow::Error::msg)?;
            match args.output {
                cli::Output::Json => println!("{}", serde_json::to_string_pretty(&cluster)?),
                cli::Output::Table => print!("{}", matrix::render(&cluster)),
            }
            Ok(cluster_exit(&cluster, true))
        }
        cli::Command::Status(args) => {
            if !args.source.admin.is_empty() || args.source.kubeconfig.is_some() {
                return Err(Failure::usage("--admin and --kubeconfig go with --cluster"));
            }
            let view = status::fetch(args.admin_addr).map_err(|e| Failure {
                code: match e {
                    status::FetchError::Unreachable(_) => cli::Exit::Unreachable,
                    _ => cli::Exit::Error,
                },
                error: e.into(),
            })?;
            match args.output {
                cli::Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                cli::Output::Table => print!("{}", status::table(&view)),
            }
            Ok(if view.all_ok() {
                cli::Exit::Ok
            } else {
                cli::Exit::NotOk
            })
        }
        cli::Command::Graph(args) => {
            let cluster = cluster::read(&args.source).map_err(anyhow::Error::msg)?;
            match args.output {
                cli::GraphFormat::Svg => print!("{}", graph::svg::render(&cluster)),
                cli::GraphFormat::Dot => print!("{}", graph::dot::render(&cluster)),
            }
            Ok(cluster_exit(&cluster, false))
        }
        cli::Command::Manifests(args) => {
            print!(
                "{}",
                args.render().map_err(|e| Failure::usage(e.to_string()))?
            );
            Ok(cli::Exit::Ok)
        }
        cli::Command::Idle => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = term.recv() => {}
                    r = tokio::signal::ctrl_c() => r?,
                }
                Ok::<_, std::io::Error>(())
            })?;
            Ok(cli::Exit::Ok)
        }
        cli::Command::Genkey => {
            println!("{}", *PrivateKey::generate().to_base64_secret());
            Ok(cli::Exit::Ok)
        }
        cli::Command::Pubkey => {
            let mut text = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_to_string(&mut text)?;
            let key: PrivateKey = text
                .parse()
                .map_err(|e| anyhow::anyhow!("stdin: invalid private key: {e}"))?;
            println!("{}", key.public_key());
            Ok(cli::Exit::Ok)
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
            let config = peer_config::render(snapshot, &args.name, args.service_cidr, origin)
                .map_err(anyhow::Error::msg)?;
            print!("{}", config.text);
            if config.left_out.is_empty() {
                return Ok(cli::Exit::Ok);
            }
            eprintln!(
                "warning: the configuration leaves out {} node(s) that the agents refuse:",
                config.left_out.len()
            );
            for node in &config.left_out {
                eprintln!("  {node}");
            }
            Ok(cli::Exit::NotOk)
        }
        cli::Command::Version(args) => {
            let info = version::BuildInfo::current();
            match args.output {
                cli::VersionFormat::Text => print!("{}", info.text()),
                cli::VersionFormat::Json => println!("{}", serde_json::to_string_pretty(&info)?),
            }
            Ok(cli::Exit::Ok)
        }
        cli::Command::Completion(args) => {
            std::io::Write::write_all(&mut std::io::stdout(), &completion::script(args.shell))?;
            Ok(cli::Exit::Ok)
        }
        cli::Command::Man(args) => {
            match args.dir {
                None => std::io::Write::write_all(&mut std::io::stdout(), &manpage::page()?)?,
                Some(dir) => {
                    for page in manpage::write_all(&dir).map_err(|e| Error::Io {
                        what: format!("write the manual pages into {}", dir.display()),
                        source: e,
                    })? {
                        println!("{}", page.display());
                    }
                }
            }
            Ok(cli::Exit::Ok)
        }
        cli::Command::Preflight(args) => {
            let args = *args;
            let config = args.run.resolve().map_err(Failure::usage)?;
            let node = config.node_name.clone();
            let agent = run::agent(config).build()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(agent.preflight())?;
            match args.output {
                cli::Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&preflight::Json {
                        node: &node,
                        report: &report,
                    })?
                ),
                cli::Output::Table => print!("{}", preflight::table(&node, &report)),
            }
            Ok(if report.worst() == wormhole_agent::Level::Error {
                cli::Exit::NotOk
            } else {
                cli::Exit::Ok
            })
        }
        cli::Command::Uninstall(args) => {
            let output = args.output;
            let uninstall = args.resolve().map_err(Failure::usage)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(uninstall.run())?;
            match output {
                cli::Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                cli::Output::Table => print!("{}", uninstall::text(&report)),
            }
            if !report.failed.is_empty() {
                return Err(anyhow::anyhow!(
                    "{} trace(s) of Wormhole could not be removed (see above): fix the cause \
                     and run `wormhole uninstall` again",
                    report.failed.len()
                )
                .into());
            }
            Ok(cli::Exit::Ok)
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
            Ok(cli::Exit::Ok)
        }
    }
}
