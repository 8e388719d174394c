//! The whole Wormhole node agent inside your own program, on the real Linux backends (WireGuard,
//! routes, nftables), with peers from your own discovery.
//!
//! The discovery here is the simplest there is: the mesh arrives on standard input, one node per
//! line, a blank line ending each full picture:
//!
//! ```text
//! # name   public-key(base64)  endpoint(ip:port)   pod CIDRs (comma-separated)
//! node-a   hSDwCYkw...qbTmo=    192.168.77.1:51820  10.99.1.0/24
//! node-b   mJ3vZ9tQ...Xo1s=     192.168.77.2:51820  10.99.2.0/24
//!
//! ```
//!
//! The agent applies each picture (adding, changing and removing peers) until SIGINT or SIGTERM
//! (after the end of input, the last picture stays in force); the network stays in place when it
//! stops. Run it as root, for instance in
//! a network namespace:
//!
//! ```text
//! ip netns exec a target/debug/examples/embed_linux node-a /tmp/a.key 10.99.0.0/16 wh-a 127.0.0.1:9473
//! ```
//!
//! Arguments: node name, private key file (created if missing), cluster CIDR, WireGuard
//! interface, admin address. The backend is `auto`: the kernel module when loaded, else
//! WireGuard in this very process.

use std::error::Error;

use futures::Stream;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use wormhole_agent::{Agent, Peers};
use wormhole_core::{NodeEntry, RejectReason, Rejection, Snapshot};

/// Pictures of the mesh read from standard input: a stream of snapshots, one per blank line.
/// A read error is yielded as it is (`std::io::Error`: any error type does); the stream ends
/// with the input, and the last mesh stays.
fn stdin_peers() -> impl Stream<Item = Result<Snapshot, std::io::Error>> {
    let lines = BufReader::new(tokio::io::stdin()).lines();
    futures::stream::unfold((lines, 0), |(mut lines, mut number)| async move {
        let mut snapshot = Snapshot::default();
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => return Some((Err(e), (lines, number))),
            };
            number += 1;
            let line = line.trim();
            if line.is_empty() {
                return Some((Ok(snapshot), (lines, number)));
            }
            if line.starts_with('#') {
                continue;
            }
            let origin = format!("stdin line {number}");
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                // Text as read: the core validates keys, CIDRs and endpoints and rejects bad
                // nodes one by one, with the reason.
                [name, key, endpoint, cidrs] => snapshot.nodes.push(NodeEntry {
                    name: name.into(),
                    public_key: key.into(),
                    endpoint: Some(endpoint.into()),
                    pod_cidrs: cidrs.split(',').map(Into::into).collect(),
                    origin,
                    ..NodeEntry::default()
                }),
                // A malformed line is rejected here, alone.
                _ => snapshot.rejected.push(Rejection {
                    name: fields[0].into(),
                    origin,
                    reason: RejectReason::Invalid {
                        field: "line".into(),
                        reason: format!("expected 4 fields, found {}", fields.len()),
                    },
                    external: false,
                }),
            }
        }
    })
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(run());
    // Reading standard input holds a blocking thread that only returns at the next line: do not
    // wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error with its causes, one line.
            let mut text = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                text += &format!(": {c}");
                cause = c.source();
            }
            eprintln!("embed_linux: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [node, key_file, cluster, interface, admin] = &args[..] else {
        return Err("usage: embed_linux NODE KEY_FILE CLUSTER_CIDR INTERFACE ADMIN_ADDR".into());
    };
    let agent = Agent::builder(node.as_str(), Peers::stream(stdin_peers()))
        .key_file(key_file)
        .cluster_cidrs([cluster.parse()?])
        .interface(interface.parse()?)
        .cni_conf_dir(None)
        .admin_addr(Some(admin.parse()?))
        .build()?;
    let stop = async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    agent.run(stop).await?;
    Ok(())
}
