//! ICMP echo of an exact size, the probe behind per-peer health: sent to a peer's overlay
//! address, it goes through the tunnel and the peer's kernel answers it, so an answer shows that
//! the data path works (not only the handshake) for packets of that size.
//!
//! Written on raw sockets (made by `socket2`, driven as Tokio datagram sockets) rather than
//! with a ping crate: probes need an exact packet size up to the tunnel MTU and many concurrent probes
//! on one socket pair, which the maintained ping crates do not offer together. Needs
//! `CAP_NET_RAW`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// IPv4 header (no options) plus ICMP echo header.
const V4_HEADERS: u32 = 20 + 8;
/// IPv6 header plus ICMPv6 echo header.
const V6_HEADERS: u32 = 40 + 8;
/// The payload starts with a cookie of this many bytes.
const COOKIE_LEN: usize = 8;

/// Sends ICMP echo requests of an exact size and matches their replies. Cheap to share
/// (`Arc`); dropping it stops its receiving tasks.
#[derive(Debug)]
pub struct Pinger {
    v4: Arc<UdpSocket>,
    v6: Option<Arc<UdpSocket>>,
    shared: Arc<Shared>,
    receivers: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// Echo identifier of this pinger, and a random cookie in every payload: replies to other
    /// programs' pings (every raw socket sees every reply) are ignored.
    ident: u16,
    cookie: [u8; COOKIE_LEN],
    seq: AtomicU16,
    waiting: Mutex<HashMap<u16, Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    to: IpAddr,
    answered: oneshot::Sender<Instant>,
}

/// Removes a probe's waiter however its wait ends.
struct Forget<'a>(&'a Shared, u16);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.waiting.lock().expect("not poisoned").remove(&self.1);
    }
}

/// A raw ICMP socket, driven through Tokio's datagram socket type: `sendto` and `recvfrom`
/// are the same calls for raw sockets.
fn raw_socket(domain: Domain, protocol: Protocol) -> io::Result<UdpSocket> {
    let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

impl Pinger {
    /// Opens the raw ICMP sockets (IPv6 only where the host has IPv6) and starts receiving.
    /// Must be called inside a Tokio runtime; fails without `CAP_NET_RAW`.
    pub fn new() -> io::Result<Pinger> {
        let v4 = Arc::new(raw_socket(Domain::IPV4, Protocol::ICMPV4)?);
        let v6 = raw_socket(Domain::IPV6, Protocol::ICMPV6)
            .ok()
            .map(Arc::new);
        let mut random = [0u8; 2 + COOKIE_LEN];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
        let shared = Arc::new(Shared {
            ident: u16::from_be_bytes([random[0], random[1]]),
            cookie: random[2..].try_into().expect("cookie length"),
            seq: AtomicU16::new(0),
            waiting: Mutex::new(HashMap::new()),
        });
        let mut receivers = vec![tokio::spawn(receive(v4.clone(), false, shared.clone()))];
        if let Some(v6) = &v6 {
            receivers.push(tokio::spawn(receive(v6.clone(), true, shared.clone())));
        }
        Ok(Pinger {
            v4,
            v6,
            shared,
            receivers,
        })
    }

    /// The smallest packet [`Pinger::ping`] can send to an address of this family.
    pub fn min_size(v6: bool) -> u32 {
        (if v6 { V6_HEADERS } else { V4_HEADERS }) + COOKIE_LEN as u32
    }

    /// Sends one echo request to `to` that is exactly `size` bytes as an IP packet, and waits at
    /// most `timeout` for its reply: the round-trip time, or `None` if none came. An error means
    /// the request could not be sent (`size` above the route's MTU gives `EMSGSIZE`).
    pub async fn ping(
        &self,
        to: IpAddr,
        size: u32,
        timeout: Duration,
    ) -> io::Result<Option<Duration>> {
        let v6 = to.is_ipv6();
        let socket = match (v6, &self.v6) {
            (false, _) => &self.v4,
            (true, Some(socket)) => socket,
            (true, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this host has no IPv6 ICMP socket",
                ));
            }
        };
        if size < Pinger::min_size(v6) || size > 65_000 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("probe size {size} out of range"),
            ));
        }
        let (answered, reply) = oneshot::channel();
        let seq = self.shared.reserve(to, answered);
        let _forget = Forget(&self.shared, seq);
        let packet = self.shared.echo_request(v6, seq, size);
        let sent = socket.send_to(&packet, SocketAddr::new(to, 0)).await?;
        debug_assert_eq!(sent, packet.len());
        let start = Instant::now();
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(at)) => Ok(Some(at.saturating_duration_since(start))),
            _ => Ok(None),
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        for task in &self.receivers {
            task.abort();
        }
    }
}

impl Shared {
    /// A sequence number no probe in flight uses, registered for `to`.
    fn reserve(&self, to: IpAddr, answered: oneshot::Sender<Instant>) -> u16 {
        let mut waiting = self.waiting.lock().expect("not poisoned");
        loop {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            if let std::collections::hash_map::Entry::Vacant(slot) = waiting.entry(seq) {
                slot.insert(Waiter { to, answered });
                return seq;
            }
        }
    }

    /// The ICMP part of an echo request making a `size`-byte IP packet.
    fn echo_request(&self, v6: bool, seq: u16, size: u32) -> Vec<u8> {
        let headers = if v6 { V6_HEADERS } else { V4_HEADERS };
        let mut icmp = vec![0u8; 8 + (size - headers) as usize];
        icmp[0] = if v6 { 128 } else { 8 };
        icmp[4..6].copy_from_slice(&self.ident.to_be_bytes());
        icmp[6..8].copy_from_slice(&seq.to_be_bytes());
        icmp[8..8 + COOKIE_LEN].copy_from_slice(&self.cookie);
        // The kernel fills in ICMPv6 checksums (it covers a pseudo-header we do not build).
        if !v6 {
            let sum = checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        icmp
    }

    /// One received datagram: wakes the probe it answers, if any.
    fn answer(&self, v6: bool, datagram: &[u8], from: IpAddr) {
        let at = Instant::now();
        let icmp = if v6 {
            datagram
        } else {
            // Raw IPv4 sockets deliver the IP header too.
            let header = datagram.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
            datagram.get(header..).unwrap_or_default()
        };
        let reply_type = if v6 { 129 } else { 0 };
        if icmp.len() < 8 + COOKIE_LEN
            || icmp[0] != reply_type
            || icmp[1] != 0
            || icmp[4..6] != self.ident.to_be_bytes()
            || icmp[8..8 + COOKIE_LEN] != self.cookie
        {
            return;
        }
        let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
        let mut waiting = self.waiting.lock().expect("not poisoned");
        // Only from the address asked: a peer cannot answer for another (WireGuard checks
        // sources against allowed IPs, so the source is the peer the reply came through).
        if waiting.get(&seq).is_some_and(|w| w.to == from)
            && let Some(waiter) = waiting.remove(&seq)
        {
            let _ = waiter.answered.send(at);
        }
    }
}

async fn receive(socket: Arc<UdpSocket>, v6: bool, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => shared.answer(v6, &buf[..n], from.ip()),
            Err(e) => {
                tracing::debug!(error = %e, "ICMP receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_as_rfc_1071() {
        // An echo request with id 1, seq 1 and no payload: 0x08 0x00 .. 0x00 0x01 0x00 0x01.
        let mut icmp = [8, 0, 0, 0, 0, 1, 0, 1];
        let sum = checksum(&icmp);
        assert_eq!(sum, 0xf7fd);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(
            checksum(&icmp),
            0,
            "a packet with its checksum sums to zero"
        );
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn requests_have_the_exact_size_and_replies_are_matched() {
        let shared = Shared {
            ident: 0x1234,
            cookie: *b"wormhole",
            seq: AtomicU16::new(7),
            waiting: Mutex::new(HashMap::new()),
        };
        let to: IpAddr = "10.99.2.1".parse().unwrap();
        let (tx, mut rx) = oneshot::channel();
        let seq = shared.reserve(to, tx);
        let request = shared.echo_request(false, seq, 1420);
        assert_eq!(request.len() as u32 + 20, 1420);
        assert_eq!(checksum(&request), 0);
        // The reply as a raw IPv4 socket sees it: IP header, then the echoed ICMP.
        let mut reply = request.clone();
        reply[0] = 0;
        let mut datagram = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 99, 2, 1, 10, 99, 1, 1,
        ];
        datagram.extend_from_slice(&reply);
        // From another address (another peer, or a pod): ignored.
        shared.answer(false, &datagram, "10.99.3.1".parse().unwrap());
        assert!(rx.try_recv().is_err());
        // Another program's reply: ignored.
        let mut other = datagram.clone();
        other[20 + 4] ^= 1;
        shared.answer(false, &other, to);
        assert!(rx.try_recv().is_err());
        shared.answer(false, &datagram, to);
        assert!(rx.try_recv().is_ok());
        assert!(shared.waiting.lock().unwrap().is_empty());
    }
}
