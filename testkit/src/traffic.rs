//! Traffic between pods: ICMP and TCP across every pair of nodes.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{enter, in_netns};
use crate::pod::Pod;

/// Every ordered pair of pods on different nodes, over IPv4 and IPv6: (from, to, address).
pub fn cross_node_pairs(pods: &[Pod]) -> Vec<(&Pod, &Pod, String)> {
    let mut pairs = Vec::new();
    for from in pods {
        for to in pods.iter().filter(|p| p.node != from.node) {
            pairs.push((from, to, to.ip4.clone()));
            pairs.push((from, to, to.ip6.clone()));
        }
    }
    pairs
}

/// Pings every cross-node pair (sources in parallel); returns the failures.
///
/// Each pair gets up to 4 pings of 2 s: when two nodes initiate a handshake at the same moment
/// (as parallel sources make them do), each drops the other's response and WireGuard itself
/// retries only after REKEY_TIMEOUT (5 s, plus jitter). A broken path fails all four.
pub fn icmp_matrix(pods: &[Pod]) -> (usize, Vec<String>) {
    matrix(pods, |from, to, ip| {
        (!from.ping(ip, 4)).then(|| format!("ICMP {} -> {} ({ip})", from.name, to.name))
    })
}

/// Runs `check` on every cross-node pair, each source's pairs on a thread of its own; returns
/// the number of pairs and the failures `check` reported.
fn matrix(
    pods: &[Pod],
    check: impl Fn(&Pod, &Pod, &str) -> Option<String> + Sync,
) -> (usize, Vec<String>) {
    let pairs = cross_node_pairs(pods);
    let (pairs, check) = (&pairs, &check);
    let failures = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .map(|from| {
                scope.spawn(move || {
                    pairs
                        .iter()
                        .filter(|(f, _, _)| f.name == from.name)
                        .filter_map(|(f, t, ip)| check(f, t, ip))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    (pairs.len(), failures)
}

/// A TCP server in a pod that reads each connection to its end and answers with the byte count
/// and a checksum of what it read. Stopped on drop.
pub struct TcpEcho {
    /// The port it listens on.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn checksum(data: &[u8], mut state: u64) -> u64 {
    for &b in data {
        state = (state ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    state
}

const CHECKSUM_START: u64 = 0xcbf2_9ce4_8422_2325;

impl TcpEcho {
    /// Listens on `[::]:0` (both families) in `ns`.
    pub fn start(ns: &str) -> Self {
        let path = format!("/var/run/netns/{ns}");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let listener = std::net::TcpListener::bind("[::]:0").expect("bind [::]:0");
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            listener.set_nonblocking(true).unwrap();
            let mut handlers = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => handlers.push(std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                        let mut buf = vec![0u8; 64 * 1024];
                        let (mut n, mut sum) = (0u64, CHECKSUM_START);
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) => break,
                                Ok(k) => {
                                    n += k as u64;
                                    sum = checksum(&buf[..k], sum);
                                }
                                Err(_) => return,
                            }
                        }
                        let mut reply = n.to_be_bytes().to_vec();
                        reply.extend_from_slice(&sum.to_be_bytes());
                        let _ = stream.write_all(&reply);
                    })),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("TCP server started");
        TcpEcho {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From pod namespace `ns`, sends `len` bytes to `to` over TCP and checks the server read them
/// all, intact.
pub fn tcp_send(ns: &str, to: SocketAddr, len: usize) -> Result<(), String> {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 251) as u8).collect();
    let want = (len as u64, checksum(&data, CHECKSUM_START));
    in_netns(ns, move || {
        // Long enough for a WireGuard handshake retry (see `icmp_matrix`).
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(&data).map_err(|e| format!("send: {e}"))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut reply = [0u8; 16];
        s.read_exact(&mut reply)
            .map_err(|e| format!("read the answer: {e}"))?;
        let got = (
            u64::from_be_bytes(reply[..8].try_into().unwrap()),
            u64::from_be_bytes(reply[8..].try_into().unwrap()),
        );
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "server read {} bytes (checksum {:x}), sent {} ({:x})",
                got.0, got.1, want.0, want.1
            ))
        }
    })
}

/// Sends `len` bytes over TCP between every cross-node pair (sources in parallel; `servers[i]`
/// listens in `pods[i]`); returns the number of transfers and the failures.
pub fn tcp_matrix(pods: &[Pod], servers: &[TcpEcho], len: usize) -> (usize, Vec<String>) {
    let port_of = |pod: &Pod| {
        let i = pods.iter().position(|p| p.name == pod.name).unwrap();
        servers[i].port
    };
    matrix(pods, |from, to, ip| {
        let addr = SocketAddr::new(ip.parse().unwrap(), port_of(to));
        tcp_send(&from.ns.name, addr, len)
            .err()
            .map(|e| format!("TCP {} -> {} ({addr}): {e}", from.name, to.name))
    })
}
