//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`, on loopback by default
//! (the DaemonSet binds it on the host IP, where every pod can reach it: treat clients as
//! untrusted).
//!
//! HTTP is hyper's (HTTP/1.0 and 1.1, GET only, one request per connection). What a client can
//! cost is bounded, whatever it does:
//! - at most [`Limits::connections`] connections are open at a time; more wait in the kernel's
//!   accept queue, holding none of the agent's file descriptors or memory;
//! - each connection lives at most [`Limits::deadline`], request and reply together, however
//!   slowly the client sends or reads;
//! - no request reads the device: `/status` and `/metrics` are rendered from the status the
//!   reconciler publishes, with the device's counters (handshakes, bytes) read at most once per
//!   [`FRESH_FOR`] whatever the number of requests, and each rendered body is one shared buffer
//!   that every connection sending it points to.
//!
//! [`listen_and_serve`] binds in the background and keeps retrying: a busy or squatted admin
//! port never keeps the mesh from being applied.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore, watch};
use wormhole_core::ObservedDevice;
use wormhole_core::{ErrorChain, Status, WireGuardDevice};

use crate::metrics::Metrics;
use crate::view::StatusView;

/// Rendered bodies, and the device's counters behind them, are reused for this long.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);
/// A device read for counters that takes longer is given up (the status's counters are served).
const DEVICE_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The socket send buffer of an admin connection (the kernel doubles it for its bookkeeping).
const SEND_BUFFER: usize = 64 * 1024;
/// Between attempts to bind the admin address.
pub(crate) const BIND_RETRY: Duration = Duration::from_secs(2);
/// A failure to bind is logged again (as a warning) at most this often while it lasts.
const BIND_WARN_EVERY: Duration = Duration::from_secs(60);

/// What the admin server allows one client, and all of them together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at a time.
    pub connections: usize,
    /// The longest a connection lives, reading the request and writing the reply.
    pub deadline: Duration,
}

impl Limits {
    /// Plenty for probes, a scraper and `wormhole status`; with the deadline, a flood of
    /// connections costs at most this many sockets and buffers.
    pub(crate) const DEFAULT: Limits = Limits {
        connections: 32,
        deadline: Duration::from_secs(10),
    };
}

/// What the handlers read.
pub(crate) struct Admin {
    /// The reconciler's status.
    pub status: watch::Receiver<Status>,
    /// For fresh handshake times and counters on `/status` and `/metrics` (read at most once
    /// per [`FRESH_FOR`]).
    pub device: Arc<dyn WireGuardDevice>,
    /// Histogram state.
    pub metrics: Arc<Metrics>,
    /// `/healthz` fails when no pass finished within this long (the loop is stuck).
    pub liveness: Duration,
    /// When the agent started.
    pub started: SystemTime,
}

#[derive(Clone, Copy)]
enum Body {
    Status,
    Metrics,
}

/// The latest rendered bodies and device counters. Behind an async mutex: concurrent requests
/// for a stale body wait for the one render (and device read) in progress instead of each
/// doing their own.
struct Cache {
    /// Our own handle on the reconciler's status, to notice its changes.
    status: watch::Receiver<Status>,
    /// The device as last read (counters, learned endpoints), and when.
    counters: Option<(Instant, ObservedDevice)>,
    status_body: Option<(Instant, Bytes)>,
    metrics_body: Option<(Instant, Bytes)>,
}

struct Server {
    admin: Arc<Admin>,
    cache: Mutex<Cache>,
}

/// The status with the newer of its counters and the device's (they move between passes), and
/// the endpoint the device learned for a peer that has none configured (a peer behind NAT is
/// known by its handshakes).
fn with_counters(mut status: Status, device: &ObservedDevice) -> Status {
    for peer in &mut status.peers {
        if peer.endpoint.is_none() {
            peer.endpoint = device
                .config
                .peers
                .get(&peer.public_key)
                .and_then(|c| c.endpoint);
        }
        if let Some(stats) = device.stats.get(&peer.public_key) {
            peer.latest_handshake = peer.latest_handshake.max(stats.latest_handshake);
            peer.rx_bytes = peer.rx_bytes.max(stats.rx_bytes);
            peer.tx_bytes = peer.tx_bytes.max(stats.tx_bytes);
        }
    }
    status
}

impl Server {
    /// The body of `/status` or `/metrics`: shared, rendered at most once per [`FRESH_FOR`]
    /// (and again as soon as the reconciler publishes a new status).
    async fn body(&self, which: Body) -> Bytes {
        let mut cache = self.cache.lock().await;
        if cache.status.has_changed().unwrap_or(false) {
            cache.status_body = None;
            cache.metrics_body = None;
        }
        let slot = match which {
            Body::Status => &cache.status_body,
            Body::Metrics => &cache.metrics_body,
        };
        if let Some((_, body)) = slot.as_ref().filter(|(at, _)| at.elapsed() < FRESH_FOR) {
            return body.clone();
        }
        if cache
            .counters
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= FRESH_FOR)
        {
            let read = tokio::time::timeout(DEVICE_READ_TIMEOUT, self.admin.device.read()).await;
            let device = match read {
                Ok(Ok(Some(device))) => device,
                Ok(Ok(None)) => ObservedDevice::default(),
                Ok(Err(e)) => {
                    tracing::debug!(error = %ErrorChain(&e), "admin: cannot read the device's counters");
                    ObservedDevice::default()
                }
                Err(_) => {
                    tracing::debug!("admin: reading the device's counters timed out");
                    ObservedDevice::default()
                }
            };
            cache.counters = Some((Instant::now(), device));
        }
        let status = cache.status.borrow_and_update().clone();
        let status = match &cache.counters {
            Some((_, counters)) => with_counters(status, counters),
            None => status,
        };
        let now = SystemTime::now();
        let body = Bytes::from(match which {
            Body::Status => {
                serde_json::to_string_pretty(&StatusView::new(&status, now)).expect("serializable")
            }
            Body::Metrics => self.admin.metrics.render(&status, now),
        });
        let slot = match which {
            Body::Status => &mut cache.status_body,
            Body::Metrics => &mut cache.metrics_body,
        };
        *slot = Some((Instant::now(), body.clone()));
        body
    }

    async fn respond(&self, method: &Method, path: &str) -> (StatusCode, &'static str, Bytes) {
        const TEXT: &str = "text/plain";
        if method != Method::GET {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                Bytes::from_static(b"only GET\n"),
            );
        }
        let admin = &self.admin;
        match path {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.body(Body::Metrics).await,
            ),
            "/status" => (
                StatusCode::OK,
                "application/json",
                self.body(Body::Status).await,
            ),
            "/readyz" => match admin.status.borrow().not_ready_reason() {
                None => (StatusCode::OK, TEXT, Bytes::from_static(b"ready\n")),
                Some(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    Bytes::from(format!("not ready: {why}\n")),
                ),
            },
            "/healthz" => {
                let last = admin
                    .status
                    .borrow()
                    .last_pass
                    .as_ref()
                    .map(|p| p.at)
                    .unwrap_or(admin.started);
                if SystemTime::now().duration_since(last).unwrap_or_default() <= admin.liveness {
                    (StatusCode::OK, TEXT, Bytes::from_static(b"ok\n"))
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        Bytes::from_static(b"unhealthy: no reconcile pass finished recently\n"),
                    )
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                Bytes::from_static(b"not found: try /status, /metrics, /healthz, /readyz\n"),
            ),
        }
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (code, kind, body) = self.respond(request.method(), request.uri().path()).await;
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = code;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
        Ok(response)
    }
}

/// Serves on `listener` with the default [`Limits`] until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    serve_with(listener, admin, Limits::DEFAULT).await;
}

/// Serves on `listener` within `limits` until the task is dropped.
pub(crate) async fn serve_with(listener: TcpListener, admin: Arc<Admin>, limits: Limits) {
    let server = Arc::new(Server {
        cache: Mutex::new(Cache {
            status: admin.status.clone(),
            counters: None,
            status_body: None,
            metrics_body: None,
        }),
        admin,
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // One request per connection (as before; `Connection: close`), and a request head of at
    // most 16 KiB (hyper's smallest buffer limit is 8 KiB).
    http.keep_alive(false).max_buf_size(16 * 1024);
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        // A slot first: while every slot is taken, connections wait in the accept queue.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The kernel's memory for the connection is bounded too: a reply is written into at
        // most SEND_BUFFER bytes of socket buffer (autotuning would grow it to megabytes).
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER) {
            tracing::debug!(error = %ErrorChain(&e), "admin: cannot set SO_SNDBUF");
        }
        let handler = server.clone();
        let service = hyper::service::service_fn(move |request| {
            let handler = handler.clone();
            async move { handler.handle(request).await }
        });
        let http = http.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let connection = http.serve_connection(TokioIo::new(&mut stream), service);
            match tokio::time::timeout(limits.deadline, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %ErrorChain(&e), "admin connection"),
                Err(_) => {
                    // Reset rather than close: a closed socket would keep sending what is
                    // left in its buffer to a client that does not read, for minutes.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    tracing::debug!(
                        deadline = ?limits.deadline,
                        "admin connection reset at its deadline (slow or idle client)"
                    );
                }
            }
            drop(stream);
            drop(slot);
        });
    }
}

/// Binds `addr` and serves, until the task is dropped. A failure to bind (the port is busy or
/// squatted, the address is not up yet) is logged and retried every [`BIND_RETRY`] in the
/// background, so that the mesh is applied regardless.
pub(crate) async fn listen_and_serve(addr: SocketAddr, admin: Arc<Admin>) {
    let mut failures = 0u64;
    let mut warned: Option<Instant> = None;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(e) => {
                failures += 1;
                if warned.is_none_or(|at| at.elapsed() >= BIND_WARN_EVERY) {
                    tracing::warn!(
                        %addr, attempts = failures, error = %ErrorChain(&e),
                        "cannot listen on --admin-addr (another process holds the port?): \
                         /status, /metrics and the probes are unavailable until it can; the mesh \
                         is applied regardless; retrying every {}s",
                        BIND_RETRY.as_secs()
                    );
                    warned = Some(Instant::now());
                } else {
                    tracing::debug!(%addr, attempts = failures, error = %ErrorChain(&e), "cannot listen on --admin-addr yet");
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    };
    if failures > 0 {
        tracing::info!(%addr, failed_attempts = failures, "admin server listening at last: /status /metrics /healthz /readyz");
    } else {
        tracing::info!(%addr, "admin server: /status /metrics /healthz /readyz");
    }
    serve(listener, admin).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use wormhole_core::DeviceState;
    use wormhole_core::MemoryDevice;
    use wormhole_core::PrivateKey;
    use wormhole_core::{PeerStats, PeerStatus, PublicKey};

    /// An agent's admin state with one peer, over an in-memory device that counts its reads.
    fn admin() -> (
        Arc<Admin>,
        watch::Sender<Status>,
        Arc<MemoryDevice>,
        PublicKey,
    ) {
        let peer = PrivateKey::generate().public_key();
        let device = Arc::new(MemoryDevice::default());
        device.set_state(Some(DeviceState::default()));
        device.set_stats(
            peer,
            PeerStats {
                latest_handshake: Some(SystemTime::now()),
                rx_bytes: 4096,
                tx_bytes: 1,
            },
        );
        let (tx, rx) = watch::channel({
            let mut v = Status::default();
            v.node_name = "n1".into();
            v.peers = vec![PeerStatus::new("n2", peer)];
            v
        });
        let admin = Admin {
            status: rx,
            device: device.clone(),
            metrics: Arc::new(Metrics::default()),
            liveness: Duration::from_secs(60),
            started: SystemTime::now(),
        };
        (Arc::new(admin), tx, device, peer)
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// A raw `GET path HTTP/1.0`, as `wormhole status` and the e2e harness send it: the status
    /// line and the body.
    async fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: wormhole\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
            .await
            .expect("a reply within 10 s")
            .unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("a head");
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_and_metrics_do_not_read_the_device_per_request() {
        let (admin, tx, device, peer) = admin();
        let (listener, addr) = listener().await;
        let server = tokio::spawn(serve(listener, admin));

        let before = device.reads();
        let start = Instant::now();
        let requests = 200;
        let mut clients = Vec::new();
        for i in 0..requests {
            let path = if i % 2 == 0 { "/status" } else { "/metrics" };
            clients.push(tokio::spawn(async move { get(addr, path).await }));
        }
        for client in clients {
            let (line, body) = client.await.unwrap();
            assert!(line.ends_with(" 200 OK"), "{line}");
            // The device's counters, not the status's zeros.
            assert!(
                body.contains("\"rx_bytes\": 4096")
                    || body.contains("wormhole_peer_receive_bytes_total{peer=\"n2\"} 4096"),
                "{body}"
            );
        }
        let reads = device.reads() - before;
        let bound = start.elapsed().as_secs() + 1;
        assert!(
            reads <= bound,
            "{requests} requests read the device {reads} times in {:?} (at most {bound}: once per second)",
            start.elapsed()
        );

        // Still fresh: new counters show within a second, a new status at once.
        device.set_stats(
            peer,
            PeerStats {
                latest_handshake: Some(SystemTime::now()),
                rx_bytes: 8192,
                tx_bytes: 1,
            },
        );
        tx.send_modify(|s| s.node_name = "renamed".into());
        let (_, body) = get(addr, "/status").await;
        assert!(body.contains("\"node\": \"renamed\""), "{body}");
        tokio::time::sleep(FRESH_FOR).await;
        let (_, body) = get(addr, "/status").await;
        assert!(body.contains("\"rx_bytes\": 8192"), "{body}");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endpoints_answer_http_1_0_as_before() {
        let (admin, tx, _, _) = admin();
        let (listener, addr) = listener().await;
        let server = tokio::spawn(serve(listener, admin));
        assert_eq!(
            get(addr, "/readyz").await.0,
            "HTTP/1.0 503 Service Unavailable"
        );
        tx.send_modify(|s| {
            s.configured = true;
            s.device_present = true;
        });
        assert_eq!(
            get(addr, "/readyz").await,
            ("HTTP/1.0 200 OK".into(), "ready\n".into())
        );
        assert_eq!(get(addr, "/healthz").await.0, "HTTP/1.0 200 OK");
        assert_eq!(get(addr, "/nope").await.0, "HTTP/1.0 404 Not Found");
        let (line, body) = get(addr, "/status?x=1").await;
        assert_eq!(line, "HTTP/1.0 200 OK");
        let view: StatusView = serde_json::from_str(&body).unwrap();
        assert_eq!(view.node, "n1");

        // Not GET: refused. HTTP/1.1 gets HTTP/1.1, and the connection is closed after one reply.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
        assert!(reply.contains("connection: close"), "{reply}");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_bounded_and_closed_at_their_deadline() {
        let (admin, tx, _, _) = admin();
        let (listener, addr) = listener().await;
        let limits = Limits {
            connections: 4,
            deadline: Duration::from_millis(1500),
        };
        let server = tokio::spawn(serve_with(listener, admin, limits));

        // Idle clients take every slot; one more waits in the accept queue.
        let start = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..limits.connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let waiting = tokio::spawn(async move {
            let reply = get(addr, "/healthz").await;
            (reply, start.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "a 5th connection was served past the limit of 4"
        );

        // At the deadline the idle ones are closed (EOF), and the waiting one is served.
        for mut s in idle {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("an idle connection was not closed within 10 s")
                .unwrap_or(0);
            assert_eq!(n, 0, "an idle connection got data");
        }
        let ((line, _), took) = waiting.await.unwrap();
        assert_eq!(line, "HTTP/1.0 200 OK");
        assert!(
            took >= limits.deadline - Duration::from_millis(200),
            "served after {took:?}, before the idle connections' deadline"
        );
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{:?}",
            start.elapsed()
        );

        // A slow reader of a large body is reset at its deadline: what it reads afterwards ends
        // short of the Content-Length, with a reset.
        tx.send_modify(|s| {
            s.peers = (0..5000)
                .map(|i| PeerStatus::new(format!("peer-{i}"), PrivateKey::generate().public_key()))
                .collect();
        });
        // (A small receive buffer: on loopback, the kernel would otherwise take megabytes.)
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(b"GET /status HTTP/1.0\r\n\r\n").await.unwrap();
        tokio::time::sleep(limits.deadline + Duration::from_millis(500)).await;
        let mut reply = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
            .await
            .expect("the reply never ended");
        let text = String::from_utf8_lossy(&reply);
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a content-length")
            .parse()
            .unwrap();
        // Reset, not merely closed: a closed socket would go on sending its buffer for minutes.
        assert!(
            length > 1_000_000
                && body.len() < length
                && matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "a client that did not read for longer than the deadline got {} of {length} bytes \
             ({ended:?})",
            body.len()
        );
        server.abort();
    }
}
