//! A peer source of your own: peers polled from an HTTP endpoint, as a stream.
//!
//! A source is any `Stream` of `Result<Snapshot, E>`, `E` being any error type: no trait to
//! implement. `http_peers` fetches `http://ADDR/peers` every 100 ms (with hyper's client: the
//! HTTP is not the point here) and yields every list it reads. It keeps no state: the reconciler
//! passes over a list equal to the mesh in force, takes lists that follow closely in one pass,
//! and clears the error of a failed GET at the next list. The body is plain text, one node per
//! line:
//!
//! ```text
//! # name   public-key(base64)  endpoint(ip:port or -)  pod CIDRs (comma-separated)
//! node-a   hSDwCYkw...qbTmo=    192.168.77.1:51820      10.99.1.0/24,fd99:0:1::/64
//! ```
//!
//! A line without four fields is rejected on its own; `wormhole-core` validates the rest. If the
//! server cannot be reached, the stream yields the error and the last good mesh stays.
//!
//! `main` serves a changing list on 127.0.0.1 and hands the stream to [`Reconciler::run`] on
//! in-memory backends, printing each plan applied: three lists, so three plans, although the
//! source yields about fifteen. It stops once the server goes away.
//!
//! ```text
//! cargo run -p wormhole-examples --example custom_peer_source
//! ```

use std::convert::Infallible;
use std::time::Duration;

use futures::Stream;
use http_body_util::{BodyExt as _, Empty, Full, Limited};
use hyper::body::Bytes;
use hyper::{Response, Uri, server::conn::http1, service::service_fn};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use wormhole_core::{MemoryBackends, MemoryKeyStore};
use wormhole_core::{NodeEntry, RejectReason, Rejection, Snapshot};
use wormhole_core::{PrivateKey, Reconciler, Settings};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The peers listed at `url`, read every `interval`: a list, or why there is none.
fn http_peers(url: Uri, interval: Duration) -> impl Stream<Item = Result<Snapshot, BoxError>> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    futures::stream::unfold(false, move |wait| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            if wait {
                tokio::time::sleep(interval).await;
            }
            let list = match fetch(&client, &url).await {
                Ok(body) => Ok(parse(&body, &url.to_string())),
                Err(e) => Err(format!("GET {url}: {}", wormhole_core::ErrorChain(&*e)).into()),
            };
            Some((list, true))
        }
    })
}

/// One GET of the list: 2 s at most, 1 MiB at most, `200 OK` only.
async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &Uri,
) -> Result<String, BoxError> {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let response = tokio::time::timeout(TIMEOUT, client.get(url.clone())).await??;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()).into());
    }
    let body = Limited::new(response.into_body(), 1 << 20).collect();
    let body = tokio::time::timeout(TIMEOUT, body).await??.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
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
                external: false,
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

    let backends = MemoryBackends::default();
    let keys = MemoryKeyStore::new(me, None);
    let cluster = vec!["10.99.0.0/16".parse()?, "fd99::/48".parse()?];
    let settings = Settings::new("node-a", cluster);
    let mut reconciler = Reconciler::new(settings, backends.handles(keys));
    reconciler.on_pass(|_, plan| {
        if let Some(plan) = plan.filter(|p| !p.is_empty()) {
            print!("\nplan:\n{plan}");
        }
    });
    let report = reconciler.status();
    let mut status = reconciler.status();
    let stop = async move {
        let _ = status.wait_for(|s| s.source_error.is_some()).await;
    };
    let url = format!("http://{addr}/peers").parse()?;
    let source = http_peers(url, Duration::from_millis(100));
    tokio::time::timeout(Duration::from_secs(10), reconciler.run(source, stop)).await?;

    let report = report.borrow().clone();
    for rejection in &report.rejected {
        println!("rejected: {rejection}");
    }
    let peers = backends.device.state().map_or(0, |d| d.peers.len());
    println!(
        "\nsource error: {}\nthe host keeps its last good mesh: {peers} WireGuard peer(s) after {} passes",
        report.source_error.unwrap_or_default(),
        report.passes
    );
    Ok(())
}
