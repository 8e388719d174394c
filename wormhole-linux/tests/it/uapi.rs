//! The embedded device's UAPI socket (what `wg show` and `wg set` talk to) under clients that
//! misbehave: an idle client does not hold up another one, an oversize request is refused
//! after a bounded read, and the socket is `0600`.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use wormhole_linux::Backend;
use wormhole_testkit::scaled;

use crate::harness::{Cluster, root_or_skip};

/// The UAPI socket of the node's interface.
fn socket(iface: &str) -> String {
    format!("{}/{iface}.sock", wormhole_linux::SOCKET_DIR)
}

/// A `get=1` over a new connection: the reply through its `errno=` line, and how long it took.
fn get(path: &str, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {path}: {e}"));
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(b"get=1\n\n").unwrap();
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("errno=") {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "no reply to get=1 within {limit:?} ({e}; {} bytes so far)",
                reply.len()
            ),
        }
    }
    (
        String::from_utf8_lossy(&reply).into_owned(),
        start.elapsed(),
    )
}

/// A client that connected and sends nothing (a hung `wg`, or a partial request) does not keep
/// another client waiting: the second one is answered at once.
#[test]
fn an_idle_uapi_client_does_not_block_another_embedded() {
    if !root_or_skip("an_idle_uapi_client_does_not_block_another_embedded") {
        return;
    }
    let cluster = Cluster::new(1, Backend::Embedded);
    cluster.reconcile_all();
    let path = socket(&cluster.nodes[0].iface);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "{path} has mode {mode:o}");

    let idle = UnixStream::connect(&path).unwrap();
    let mut partial = UnixStream::connect(&path).unwrap();
    partial.write_all(b"get=1\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let limit = scaled(Duration::from_secs(1));
    let (reply, took) = get(&path, scaled(Duration::from_secs(10)));
    eprintln!("uapi: get=1 behind two clients that send nothing answered in {took:?}");
    assert!(
        reply.contains("private_key=") && reply.contains("errno=0"),
        "{reply:?}"
    );
    assert!(
        took < limit,
        "a get=1 took {took:?} behind two clients that send nothing (at most {limit:?})"
    );
    drop((idle, partial));
}

/// A request that never ends is read up to a bound, then refused (`EMSGSIZE`) and the
/// connection closed: the device does not buffer whatever a client sends. The device answers
/// on afterwards.
#[test]
fn an_oversize_uapi_request_is_refused_embedded() {
    if !root_or_skip("an_oversize_uapi_request_is_refused_embedded") {
        return;
    }
    let cluster = Cluster::new(1, Backend::Embedded);
    cluster.reconcile_all();
    let path = socket(&cluster.nodes[0].iface);

    let mut s = UnixStream::connect(&path).unwrap();
    s.set_write_timeout(Some(scaled(Duration::from_secs(10))))
        .unwrap();
    // set=1 and then endless lines, never the empty line that ends a request.
    s.write_all(b"set=1\n").unwrap();
    let line = b"listen_port=51820\n".repeat(4096);
    let total = 64usize << 20;
    let mut sent = 0;
    let refused = loop {
        if sent >= total {
            break None;
        }
        match s.write(&line) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    assert!(
        refused.is_some(),
        "the device read a {sent}-byte request without refusing it"
    );
    eprintln!(
        "oversize request: refused after {sent} bytes sent ({:?})",
        refused
    );
    // What the device answered before it closed, if the client can still read it.
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("errno=90\n"),
        "the reply to an oversize request: {reply:?}"
    );

    let (reply, _) = get(&path, scaled(Duration::from_secs(10)));
    assert!(
        reply.contains("errno=0"),
        "after the oversize request: {reply:?}"
    );
}
