//! `wormhole status`: fetches the view the agent serves at `/status` and prints it as a table.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use wormhole_agent::StatusView;
use wormhole_core::escape;

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// The table `wormhole status` prints. Every string in it came from the agent (and, through
/// it, from peer sources): each is escaped, so no name or message can move the cursor, clear
/// the screen or forge a line.
pub fn table(view: &StatusView) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".into()
        } else {
            escape(&items.join(",")).into_owned()
        }
    };
    let mut out = format!(
        "node {}  backend {}  interface {}  mtu {}  pod CIDRs {}\npublic key {}\n",
        escape(&view.node),
        escape(&view.backend),
        escape(&view.interface),
        view.mtu,
        list(&view.pod_cidrs),
        escape(view.public_key.as_deref().unwrap_or("-")),
    );
    match &view.last_reconcile {
        None => out += "last reconcile: none yet\n",
        Some(p) => {
            out += &format!(
                "last reconcile {} ago, {:.1} ms, {} change(s), {}\n",
                ago(p.age_seconds),
                p.duration_ms,
                p.changes,
                p.error
                    .as_deref()
                    .map_or("ok".to_owned(), |e| format!("error: {}", escape(e))),
            );
        }
    }
    if !view.ready {
        match &view.not_ready {
            Some(why) => out += &format!("NOT READY: {}\n", escape(why)),
            None => {
                out += "NOT READY: no mesh applied yet (waiting for the peer source, or the device is missing)\n"
            }
        }
    }
    if let Some(e) = &view.source_error {
        out += &format!("peer source error (last good mesh kept): {}\n", escape(e));
    }
    out += &settings_lines(view);
    out += &preflight_lines(view);
    out += "\n";
    let header = [
        "PEER",
        "ENDPOINT",
        "ALLOWED IPS",
        "HANDSHAKE",
        "RTT",
        "RX",
        "TX",
        "STATE",
    ];
    let rows: Vec<[String; 8]> = view
        .peers
        .iter()
        .map(|p| {
            [
                if p.external {
                    format!("{} (external)", escape(&p.name))
                } else {
                    escape(&p.name).into_owned()
                },
                escape(p.endpoint.as_deref().unwrap_or("-")).into_owned(),
                list(&p.allowed_ips),
                p.latest_handshake_age_seconds
                    .map_or("-".into(), |s| format!("{} ago", ago(s))),
                p.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1} ms")),
                bytes(p.rx_bytes),
                bytes(p.tx_bytes),
                escape(&p.state).into_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l += cell;
            } else {
                l += &format!("{cell:<w$}  ");
            }
        }
        l + "\n"
    };
    out += &line(&header);
    for row in &rows {
        out += &line(&row.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        out += "(no peers)\n";
    }
    let hints: Vec<String> = view
        .peers
        .iter()
        .filter_map(|p| {
            let hint = p.hint.as_deref()?;
            Some(format!("  {}: {}\n", escape(&p.name), escape(hint)))
        })
        .collect();
    if !hints.is_empty() {
        out += "\nwhat to check:\n";
        out += &hints.concat();
    }
    out
}

/// Kubernetes mode: the per-node settings in force and where each comes from, and every
/// annotation refused; escaped.
fn settings_lines(view: &StatusView) -> String {
    let Some(s) = &view.node_settings else {
        return String::new();
    };
    let keepalive = s
        .persistent_keepalive
        .map_or("off".to_owned(), |k| format!("{k} s"));
    let mut out = format!(
        "published endpoint {} ({}), persistent keepalive {keepalive} ({})\n",
        escape(&s.endpoint),
        escape(&s.endpoint_from),
        escape(&s.persistent_keepalive_from),
    );
    for refused in &s.refused {
        out += &format!("  REFUSED {}\n", escape(refused));
    }
    out
}

/// The preflight's summary, each check that is not ok with its fix, and the CNI
/// configurations that take precedence over Wormhole's; escaped.
fn preflight_lines(view: &StatusView) -> String {
    let mut out = String::new();
    if !view.foreign_cni_configs.is_empty() {
        out += &format!(
            "CNI: {} take(s) precedence over 10-wormhole.conflist: new pods on this node are not \
             attached by Wormhole (docs/migration.md)\n",
            escape(&view.foreign_cni_configs.join(", "))
        );
    }
    let Some(report) = &view.preflight else {
        return out;
    };
    out += &format!("preflight: {}\n", report.summary());
    for c in report
        .checks
        .iter()
        .filter(|c| c.result != wormhole_agent::Level::Ok)
    {
        out += &format!(
            "  {} {}: {}\n",
            c.result,
            escape(&c.check),
            escape(&c.detail)
        );
        if let Some(fix) = &c.fix {
            out += &format!("    fix: {}\n", escape(fix));
        }
    }
    out
}

/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the whole exchange (connect, request, reply) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest reply read: the view of 5,000 peers is about 2 MiB of JSON.
const MAX_REPLY_BYTES: usize = 16 << 20;

/// Why a view could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No connection, no reply in time, or the connection broke: no agent answered.
    #[error("{0}")]
    Unreachable(String),
    /// Something answered, but not with a status view (another HTTP status, a body too large,
    /// malformed JSON).
    #[error("{0}")]
    Reply(String),
}

/// Fetches the view from the agent at `addr` (`GET /status`, HTTP/1.1 with hyper's client).
pub fn fetch(addr: SocketAddr) -> Result<StatusView, FetchError> {
    fetch_all(&[addr]).pop().expect("one answer per address")
}

/// Fetches the views of the agents at `addrs`, all at once (a node that does not answer costs
/// [`REQUEST_TIMEOUT`] once, not once per node); one answer per address, in order.
pub fn fetch_all(addrs: &[SocketAddr]) -> Vec<Result<StatusView, FetchError>> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return addrs
                .iter()
                .map(|_| Err(FetchError::Reply(format!("cannot start the runtime: {e}"))))
                .collect();
        }
    };
    runtime.block_on(async {
        let tasks: Vec<_> = addrs
            .iter()
            .map(|&addr| {
                tokio::spawn(async move {
                    tokio::time::timeout(REQUEST_TIMEOUT, get(addr))
                        .await
                        .unwrap_or_else(|_| {
                            Err(unreachable(
                                addr,
                                format_args!("no reply within {REQUEST_TIMEOUT:?}"),
                            ))
                        })
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(
                task.await
                    .unwrap_or_else(|e| Err(FetchError::Reply(format!("fetch failed: {e}")))),
            );
        }
        out
    })
}

fn unreachable(addr: SocketAddr, why: impl std::fmt::Display) -> FetchError {
    FetchError::Unreachable(format!(
        "cannot reach the wormhole agent at {addr}: {why} (is `wormhole run` running? see --admin-addr)"
    ))
}

async fn get(addr: SocketAddr) -> Result<StatusView, FetchError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            unreachable(
                addr,
                format_args!("no connection within {CONNECT_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| unreachable(addr, e))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(addr, e))?;
    // Drives the connection; ends when `sender` is dropped or the agent closes it.
    tokio::spawn(connection);
    let request = Request::get("/status")
        .header(HOST, "wormhole")
        .body(Empty::<Bytes>::new())
        .expect("a constant request is valid");
    let reply = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(addr, e))?;
    if reply.status() != StatusCode::OK {
        let answered = format!("agent answered {:?} {}", reply.version(), reply.status());
        // Its reason (a refusal names what to change), the first line of at most 1 KiB.
        let reason = Limited::new(reply.into_body(), 1024)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        let reason = String::from_utf8_lossy(&reason);
        let reason = reason.lines().next().unwrap_or_default().trim();
        return Err(FetchError::Reply(if reason.is_empty() {
            answered
        } else {
            format!("{answered}: {}", escape(reason))
        }));
    }
    let body = Limited::new(reply.into_body(), MAX_REPLY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                FetchError::Reply(format!(
                    "the agent's status is larger than {MAX_REPLY_BYTES} bytes"
                ))
            } else {
                unreachable(addr, e)
            }
        })?
        .to_bytes();
    // What `wormhole_agent::fuzzing::cluster_status` fuzzes: the same parse of the same type.
    serde_json::from_slice(&body)
        .map_err(|e| FetchError::Reply(format!("malformed status from the agent: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use wormhole_agent::{PassView, PeerView};
    use wormhole_core::Status;
    use wormhole_core::{KeyError, PrivateKey};
    use wormhole_core::{PeerStatus, ProbeReport};
    use wormhole_core::{RejectReason, Rejection};

    /// Serves one connection at a fresh address: reads the request head, then writes `reply`.
    fn serve_once(reply: Vec<u8>) -> SocketAddr {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            // The client may hang up early (a reply too large): not this thread's concern.
            let _ = (&stream).write_all(&reply);
        });
        addr
    }

    fn empty_view() -> StatusView {
        StatusView::new(&Status::default(), SystemTime::now())
    }

    #[test]
    fn fetch_reads_the_view() {
        let body = serde_json::to_vec(&empty_view()).unwrap();
        let mut reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        reply.extend(body);
        let view = fetch(serve_once(reply)).unwrap();
        assert_eq!(view, empty_view());
    }

    #[test]
    fn fetch_says_who_is_unreachable_and_what_to_check() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = fetch(addr).unwrap_err();
        assert!(matches!(err, FetchError::Unreachable(_)), "{err:?}");
        let err = err.to_string();
        assert!(
            err.starts_with(&format!("cannot reach the wormhole agent at {addr}: "))
                && err.ends_with("(is `wormhole run` running? see --admin-addr)"),
            "{err}"
        );
    }

    #[test]
    fn fetch_reports_other_answers_and_bounds_the_body() {
        let addr = serve_once(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec());
        assert_eq!(
            fetch(addr).unwrap_err(),
            FetchError::Reply("agent answered HTTP/1.1 404 Not Found".into())
        );
        // A refusal's reason is shown (its first line, escaped).
        let body =
            "forbidden: /status is served to this host and to --admin-allow sources \x1b[2J\nmore";
        let addr = serve_once(
            format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
        assert_eq!(
            fetch(addr).unwrap_err(),
            FetchError::Reply(
                "agent answered HTTP/1.1 403 Forbidden: forbidden: /status is served to this host \
                 and to --admin-allow sources \\u{1b}[2J"
                    .into()
            )
        );
        let size = MAX_REPLY_BYTES + 1;
        let mut reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").into_bytes();
        reply.resize(reply.len() + size, b' ');
        let err = fetch(serve_once(reply)).unwrap_err();
        assert_eq!(
            err,
            FetchError::Reply(format!(
                "the agent's status is larger than {MAX_REPLY_BYTES} bytes"
            ))
        );
        let addr = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec());
        let err = fetch(addr).unwrap_err().to_string();
        assert!(
            err.starts_with("malformed status from the agent: "),
            "{err}"
        );
    }

    #[test]
    fn the_table_escapes_what_it_did_not_write() {
        let hostile = "x\u{1b}[2J\u{1b}]0;owned\u{7}\r\u{202e}y";
        let view = StatusView {
            node: hostile.into(),
            public_key: None,
            backend: hostile.into(),
            interface: hostile.into(),
            mtu: 1420,
            pod_cidrs: vec![hostile.into()],
            ready: false,
            not_ready: None,
            last_reconcile: Some(PassView {
                age_seconds: 1,
                duration_ms: 1.0,
                changes: 0,
                error: Some(hostile.into()),
            }),
            source_error: Some(hostile.into()),
            passes: 1,
            errors: 1,
            peers: vec![PeerView {
                name: hostile.into(),
                public_key: Some(hostile.into()),
                endpoint: Some(hostile.into()),
                allowed_ips: vec![hostile.into()],
                latest_handshake_age_seconds: None,
                rx_bytes: 0,
                tx_bytes: 0,
                state: hostile.into(),
                hint: Some(hostile.into()),
                external: false,
                rtt_ms: None,
                last_rtt_ms: None,
                probe_loss: None,
                path_mtu: None,
            }],
            preflight: Some(wormhole_agent::PreflightReport {
                checks: vec![wormhole_agent::Check {
                    check: hostile.into(),
                    result: wormhole_agent::Level::Error,
                    detail: hostile.into(),
                    fix: Some(hostile.into()),
                }],
                foreign_cni_configs: vec![hostile.into()],
            }),
            foreign_cni_configs: vec![hostile.into()],
            node_settings: Some(wormhole_agent::NodeSettingsView {
                endpoint: hostile.into(),
                endpoint_from: hostile.into(),
                persistent_keepalive: Some(25),
                persistent_keepalive_from: hostile.into(),
                refused: vec![hostile.into()],
            }),
        };
        let text = table(&view);
        let bad: Vec<char> = text
            .chars()
            .filter(|&c| (c.is_control() && c != '\n') || c == '\u{202e}')
            .collect();
        assert!(bad.is_empty(), "{bad:?} in {text:?}");
        assert!(text.contains("x\\u{1b}[2J"), "{text}");
    }

    #[test]
    fn states_and_table() {
        let now = SystemTime::now();
        let peer = |name: &str, handshake: Option<u64>| {
            let mut v = PeerStatus::new(name, PrivateKey::generate().public_key());
            v.endpoint = Some("192.168.77.2:51820".parse().unwrap());
            v.allowed_ips = vec!["10.99.2.0/24".parse().unwrap()];
            v.latest_handshake = handshake.map(|s| now - Duration::from_secs(s));
            v.rx_bytes = 2048;
            v.tx_bytes = 10;
            v
        };
        let status = {
            let mut v = Status::default();
            v.node_name = "n1".into();
            v.peers = vec![
                peer("fresh", Some(5)),
                peer("old", Some(600)),
                peer("silent", None),
                {
                    let mut p = peer("holed", Some(5));
                    let mut r = ProbeReport::default();
                    r.sent = 20;
                    r.smoothed_rtt = Some(Duration::from_micros(1500));
                    r.path_mtu = Some(1344);
                    r.mtu_blackhole = true;
                    p.probe = Some(r);
                    p
                },
            ];
            v.rejected = vec![Rejection {
                name: "bad".into(),
                origin: "peers.toml:9 node[2]".into(),
                reason: RejectReason::MalformedKey(KeyError::Base64),
                external: false,
            }];
            v
        };
        let view = StatusView::new(&status, now);
        let states: Vec<_> = view.peers.iter().map(|p| p.state.as_str()).collect();
        assert_eq!(
            states,
            [
                "ok",
                "stale",
                "never",
                "mtu-blackhole (max 1344)",
                "rejected: malformed public key: not valid base64"
            ]
        );
        let text = table(&view);
        assert!(text.contains("1.5 ms"), "{text}");
        assert!(
            text.contains("what to check:\n  old: no handshake for over 3 min"),
            "{text}"
        );
        assert!(
            text.contains(
                "  holed: packets above 1344 bytes vanish on the path: set the MTU to 1344"
            ),
            "{text}"
        );
        assert!(
            text.contains("  silent: no handshake yet: the public key"),
            "{text}"
        );
        assert!(!view.all_ok());
        let text = table(&view);
        assert!(text.contains("fresh"), "{text}");
        assert!(text.contains("5s ago"), "{text}");
        assert!(text.contains("2.0 KiB"), "{text}");
        assert!(text.contains("last reconcile: none yet"), "{text}");
        let json = serde_json::to_string(&view).unwrap();
        assert_eq!(serde_json::from_str::<StatusView>(&json).unwrap(), view);
        assert!(text.contains("NOT READY"), "{text}");
        let ok = StatusView {
            peers: view.peers[..1].to_vec(),
            ..view
        };
        assert!(!ok.all_ok(), "every peer ok, but not ready: not ok");
        let mut offline = view.peers[2].clone();
        offline.external = true;
        let with_laptop = StatusView {
            ready: true,
            not_ready: None,
            peers: vec![view.peers[0].clone(), offline],
            ..ok.clone()
        };
        assert!(
            with_laptop.all_ok(),
            "an external peer that is off does not count"
        );
        let ready = StatusView { ready: true, ..ok };
        assert!(ready.all_ok());
        assert!(!table(&ready).contains("NOT READY"));

        // A preflight error, or a CNI configuration ahead of ours: not ok, and said.
        let check = |result, detail: &str| wormhole_agent::Check {
            check: "cni-config".into(),
            result,
            detail: detail.into(),
            fix: Some("delete it".into()),
        };
        let warned = StatusView {
            preflight: Some(wormhole_agent::PreflightReport {
                checks: vec![check(wormhole_agent::Level::Warning, "meh")],
                foreign_cni_configs: vec![],
            }),
            ..ready.clone()
        };
        assert!(warned.all_ok(), "a warning is no failure");
        assert!(table(&warned).contains("preflight: 0 ok, 1 warning(s), 0 error(s)\n  warning cni-config: meh\n    fix: delete it\n"), "{}", table(&warned));
        let shadowed = StatusView {
            preflight: Some(wormhole_agent::PreflightReport {
                checks: vec![check(
                    wormhole_agent::Level::Error,
                    "10-flannel.conflist first",
                )],
                foreign_cni_configs: vec!["10-flannel.conflist".into()],
            }),
            foreign_cni_configs: vec!["10-flannel.conflist".into()],
            ..ready.clone()
        };
        assert!(!shadowed.all_ok());
        let text = table(&shadowed);
        assert!(
            text.contains("CNI: 10-flannel.conflist take(s) precedence over 10-wormhole.conflist"),
            "{text}"
        );

        // Per-node settings: shown with where they come from; a refused annotation is not ok.
        let settings = wormhole_agent::NodeSettingsView {
            endpoint: "none".into(),
            endpoint_from: "annotation".into(),
            persistent_keepalive: None,
            persistent_keepalive_from: "flag".into(),
            refused: Vec::new(),
        };
        let annotated = StatusView {
            node_settings: Some(settings.clone()),
            ..ready.clone()
        };
        assert!(annotated.all_ok());
        assert!(
            table(&annotated).contains(
                "published endpoint none (annotation), persistent keepalive off (flag)\n"
            ),
            "{}",
            table(&annotated)
        );
        let refused = StatusView {
            node_settings: Some(wormhole_agent::NodeSettingsView {
                refused: vec![
                    "annotation wormhole.dev/persistent-keepalive=\"25s\" refused: ...".into(),
                ],
                ..settings
            }),
            ..ready.clone()
        };
        assert!(!refused.all_ok(), "a refused annotation is not ok");
        assert!(
            table(&refused).contains(
                "\n  REFUSED annotation wormhole.dev/persistent-keepalive=\"25s\" refused: ...\n"
            ),
            "{}",
            table(&refused)
        );
        assert!(
            !table(&ready).contains("published endpoint"),
            "not in other modes"
        );
    }
}
