//! A [`PeerSource`] of your own: peers polled from an HTTP endpoint.
//!
//! `HttpPeerSource` fetches `http://ADDR/peers` every 100 ms (with hyper's client: the HTTP is
//! not the point here) and yields a [`Snapshot`] only when the body changed. The body is plain
//! text, one node per line:
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

use std::convert::Infallible;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt as _, Empty, Full, Limited};
use hyper::body::Bytes;
use hyper::{Response, Uri, server::conn::http1, service::service_fn};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use wormhole_core::memory::{Backends, MemoryKeyStore};
use wormhole_core::mesh::{NodeEntry, RejectReason, Rejection, Snapshot};
use wormhole_core::{Error, PeerSource, PrivateKey, Reconciler, Settings};

/// Peers polled from `url`.
struct HttpPeerSource {
    url: Uri,
    interval: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// The body behind the last snapshot yielded.
    last: Option<String>,
}

impl HttpPeerSource {
    fn new(url: Uri, interval: Duration) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        HttpPeerSource {
            url,
            interval,
            client,
            last: None,
        }
    }

    /// One GET of the list: 2 s at most, 1 MiB at most, `200 OK` only.
    async fn fetch(&self) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        const TIMEOUT: Duration = Duration::from_secs(2);
        let response = tokio::time::timeout(TIMEOUT, self.client.get(self.url.clone())).await??;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()).into());
        }
        let body = Limited::new(response.into_body(), 1 << 20).collect();
        let body = tokio::time::timeout(TIMEOUT, body).await??.to_bytes();
        Ok(String::from_utf8(body.to_vec())?)
    }
}

#[async_trait]
impl PeerSource for HttpPeerSource {
    async fn next(&mut self) -> Result<Snapshot, Error> {
        loop {
            let body = self.fetch().await.map_err(|e| {
                self.last = None; // Re-yield the list when the server is back: clears the error.
                let why = wormhole_core::ErrorChain(&*e);
                Error::Source(format!("GET {}: {why}", self.url).into())
            })?;
            if self.last.as_ref() != Some(&body) {
                let snapshot = parse(&body, &self.url.to_string());
                self.last = Some(body);
                return Ok(snapshot);
            }
            tokio::time::sleep(self.interval).await;
        }
    }
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

/// The "discovery service": serves the current value of `list` to every request, until
/// aborted. One request per connection, so clients notice at once when it goes away.
async fn serve(listener: TcpListener, list: watch::Receiver<String>) {
    while let Ok((stream, _)) = listener.accept().await {
        let list = list.clone();
        let reply = service_fn(move |_request| {
            let body = Full::new(Bytes::from(list.borrow().clone()));
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });
        let connection = http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), reply);
        tokio::spawn(connection);
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
    let url = format!("http://{addr}/peers").parse()?;
    let mut source = HttpPeerSource::new(url, Duration::from_millis(100));
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
