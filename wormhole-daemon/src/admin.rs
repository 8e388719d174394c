//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`. A deliberately tiny
//! HTTP/1.x server (GET only, one request per connection) on loopback by default.

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wormhole_core::ErrorChain;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wormhole_core::{Status, WireGuardDevice};

use crate::metrics::Metrics;
use crate::status::StatusView;

/// What the handlers read.
pub struct Admin {
    /// The reconciler's status.
    pub status: watch::Receiver<Status>,
    /// For fresh handshake times and counters on `/status` and `/metrics`.
    pub device: Arc<dyn WireGuardDevice>,
    /// Histogram state.
    pub metrics: Arc<Metrics>,
    /// `/healthz` fails when no pass finished within this long (the loop is stuck).
    pub liveness: Duration,
    /// When the agent started.
    pub started: SystemTime,
}

impl Admin {
    /// The status with the device's current counters (they move between passes).
    async fn fresh_status(&self) -> Status {
        let mut status = self.status.borrow().clone();
        if let Ok(Some(device)) = self.device.read().await {
            for peer in &mut status.peers {
                if let Some(stats) = device.stats.get(&peer.public_key) {
                    peer.latest_handshake = stats.latest_handshake;
                    peer.rx_bytes = stats.rx_bytes;
                    peer.tx_bytes = stats.tx_bytes;
                }
            }
        }
        status
    }

    async fn respond(&self, path: &str) -> (u16, &'static str, String) {
        let now = SystemTime::now();
        match path {
            "/metrics" => {
                let status = self.fresh_status().await;
                (
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(&status, now),
                )
            }
            "/status" => {
                let view = StatusView::new(&self.fresh_status().await, now);
                (
                    200,
                    "application/json",
                    serde_json::to_string_pretty(&view).expect("serializable"),
                )
            }
            "/readyz" if self.status.borrow().ready() => (200, "text/plain", "ready\n".into()),
            "/readyz" => (
                503,
                "text/plain",
                "not ready: no successful reconcile with the device present yet\n".into(),
            ),
            "/healthz" => {
                let last = self
                    .status
                    .borrow()
                    .last_pass
                    .as_ref()
                    .map(|p| p.at)
                    .unwrap_or(self.started);
                if now.duration_since(last).unwrap_or_default() <= self.liveness {
                    (200, "text/plain", "ok\n".into())
                } else {
                    (
                        503,
                        "text/plain",
                        "unhealthy: no reconcile pass finished recently\n".into(),
                    )
                }
            }
            _ => (
                404,
                "text/plain",
                "not found: try /status, /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }

    async fn handle(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        // Read the request head (bounded in size and time).
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n")
                && !head.windows(2).any(|w| w == b"\n\n")
            {
                let n = stream.read(&mut buf).await?;
                if n == 0 || head.len() > 8192 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if read.is_err() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&head);
        let mut parts = text.lines().next().unwrap_or("").split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let (code, kind, body) = if method == "GET" {
            self.respond(path).await
        } else {
            (405, "text/plain", "only GET\n".into())
        };
        let reason = match code {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        let reply = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let admin = admin.clone();
                tokio::spawn(async move {
                    if let Err(e) = admin.handle(stream).await {
                        tracing::debug!(error = %ErrorChain(&e), "admin connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
