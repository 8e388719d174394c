//! A [`PeerSource`] of your own: peers polled from an HTTP endpoint.
//!
//! `HttpPeerSource` fetches `http://ADDR/peers` every 100 ms with a tiny hand-written HTTP/1.1
//! GET client over a tokio `TcpStream` (no HTTP crate), and yields a [`Snapshot`] only when the
//! body changed. The body is plain text, one node per line (no JSON, to stay dependency-free):
//!
//! ```text
//! # name   public-key(base64)  endpoint(ip:port or -)  pod CIDRs (comma-separated)
//! node-a   hSDwCYkw...qbTmo=    192.168.77.1:51820      10.99.1.0/24,fd99:0:1::/64
//! ```
//!
//! A line without four fields is rejected on its own; `wormhole-core` validates the rest. If the
//! server cannot be reached, `next` returns `Error::Source` and the last good mesh stays.
//!
//! `main` serves a changing list on 127.0.0.1 and drives a [`Reconciler`] on in-memory backends
//! by hand to print each plan (a daemon would hand the source to [`Reconciler::run`]). It stops
//! by itself once the server goes away.
//!
//! ```text
//! cargo run -p wormhole-examples --example custom_peer_source
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wormhole_core::memory::{Backends, MemoryKeyStore};
use wormhole_core::mesh::{NodeEntry, RejectReason, Rejection, Snapshot};
use wormhole_core::{Error, PeerSource, PrivateKey, Reconciler, Settings};

/// Peers polled from `http://{addr}{path}`.
struct HttpPeerSource {
    addr: SocketAddr,
    path: String,
    interval: Duration,
    /// The body behind the last snapshot yielded.
    last: Option<String>,
}

#[async_trait]
impl PeerSource for HttpPeerSource {
    async fn next(&mut self) -> Result<Snapshot, Error> {
        let url = format!("http://{}{}", self.addr, self.path);
        loop {
            let body = get(self.addr, &self.path).await.map_err(|e| {
                self.last = None; // Re-yield the list when the server is back: clears the error.
                Error::Source(format!("GET {url}: {e}").into())
            })?;
            if self.last.as_ref() != Some(&body) {
                let snapshot = parse(&body, &url);
                self.last = Some(body);
                return Ok(snapshot);
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// A minimal HTTP/1.1 GET: one request per connection, `200 OK` only, no chunked bodies, 2 s
/// timeouts, 1 MiB at most.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    let mut limited = stream.take(1 << 20);
    tokio::time::timeout(TIMEOUT, limited.read_to_string(&mut response)).await??;
    // `Connection: close`: the body is everything after the head.
    let no_head = || std::io::Error::other("no end of head");
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(no_head)?;
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(std::io::Error::other(format!(
            "unexpected response {status:?}"
        )));
    }
    Ok(body.to_owned())
}

/// Parses the line format; `#` starts a comment line.
fn parse(body: &str, url: &str) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (n, line) in body.lines().enumerate() {
        let origin = format!("{url} line {}", n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [] => {}
            [first, ..] if first.starts_with('#') => {}
            [name, key, endpoint, cidrs] => snapshot.nodes.push(NodeEntry {
                name: name.into(),
                public_key: key.into(),
                endpoint: (endpoint != "-").then(|| endpoint.into()),
                pod_cidrs: cidrs.split(',').map(Into::into).collect(),
                origin,
                ..NodeEntry::default()
            }),
            _ => snapshot.rejected.push(Rejection {
                name: fields[0].into(),
                origin,
                reason: RejectReason::Invalid {
                    field: "line".into(),
                    reason: format!("expected 4 fields, found {}", fields.len()),
                },
            }),
        }
    }
    snapshot
}

/// Serves the current value of `list` as text/plain to every request, until aborted.
async fn serve(listener: TcpListener, list: watch::Receiver<String>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let body = list.borrow().clone();
        tokio::spawn(async move {
            // Read the request head (any request gets the list), then answer.
            let mut lines = BufReader::new(&mut stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.is_empty() {
                    break;
                }
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let me = PrivateKey::generate();
    let a = me.public_key();
    let [b, c] = std::array::from_fn(|_| PrivateKey::generate().public_key());
    let a = format!("node-a {a} 192.168.77.1:51820 10.99.1.0/24\n");
    let b = format!("node-b {b} 192.168.77.2:51820 10.99.2.0/24,fd99:0:0:2::/64\n");
    let c = format!("node-c {c} - 10.99.3.0/24\n");
    let lists = [
        format!("# node-a is us\n{a}{b}"),
        format!("{a}{b}{c}"),
        format!("{a}{c}node-x only-two-fields\n"),
    ];

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (list, served) = watch::channel(lists[0].clone());
    let server = tokio::spawn(serve(listener, served));
    println!("serving the peer list on http://{addr}/peers");
    // The "cluster": two changes to the list, then the server goes away.
    tokio::spawn(async move {
        for next in &lists[1..] {
            tokio::time::sleep(Duration::from_millis(500)).await;
            list.send_replace(next.clone());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.abort();
    });

    let backends = Backends::default();
    let keys = MemoryKeyStore::new(me, None);
    let cluster = vec!["10.99.0.0/16".parse()?, "fd99::/48".parse()?];
    let settings = Settings::new("node-a", cluster);
    let mut reconciler = Reconciler::new(settings, backends.handles(keys));
    let mut source = HttpPeerSource {
        addr,
        path: "/peers".into(),
        interval: Duration::from_millis(100),
        last: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let update = tokio::time::timeout_at(deadline, source.next()).await?;
        let update = update.inspect_err(|e| println!("\nsource failed, stopping: {e}"));
        let Ok(snapshot) = update else { break };
        let names: Vec<_> = snapshot.nodes.iter().map(|n| &n.name[..]).collect();
        println!("\nnew list: {}", names.join(", "));
        reconciler.update(Ok(snapshot));
        print!("plan:\n{}", reconciler.reconcile().await?);
        for rejection in &reconciler.status().borrow().rejected {
            println!("rejected: {rejection}");
        }
    }
    let peers = backends.device.state().map_or(0, |d| d.peers.len());
    println!("the host keeps its last good mesh: {peers} WireGuard peer(s)");
    Ok(())
}
