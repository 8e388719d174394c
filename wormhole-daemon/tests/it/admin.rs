//! The admin server under abuse: a flood of slow and idle connections costs the agent a bounded
//! number of file descriptors and bounded memory, and never keeps a pass from being applied; a
//! squatted admin port does not keep the mesh from being applied, and is bound once it frees up.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::{
    ADMIN, Backend, Cluster, http_get, in_netns, new_key, poll, root_or_skip, rss_kib, scaled, sh,
    write_atomically,
};

/// What the agent allows (`admin::Limits::DEFAULT` in the binary).
const MAX_CONNECTIONS: usize = 32;
const DEADLINE: Duration = Duration::from_secs(10);

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// Entries the agent rejects (malformed keys): each a row of `/status`, so many make it large.
fn junk(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "\n[[node]]\nname = \"x-junk-{i}\"\npublic_key = \"not a key {i}\"\n\
                 endpoint = \"192.168.77.201:51820\"\npod_cidrs = [\"10.99.200.0/24\"]\n"
            )
        })
        .collect()
}

#[test]
fn admin_flood_is_bounded_and_passes_still_apply() {
    if !root_or_skip("admin_flood_is_bounded_and_passes_still_apply") {
        return;
    }
    let mut c = Cluster::new(1, Backend::Embedded);
    // A /status of ~300 kB: more than the socket buffers of a connection hold, so a client
    // that does not read keeps the reply's end in the agent.
    let junk = junk(1_000);
    write_atomically(&c.peers, &c.peers_text(&[1], &junk));
    c.start_all(&[]);
    let ns = c.node(1).ns.name.clone();
    let pid = c.node(1).daemon.as_ref().unwrap().pid();
    let (code, status) = http_get(&ns, "/status").expect("/status");
    assert_eq!(code, 200);
    let status_len = status.len();
    assert!(status_len > 250_000, "/status is only {status_len} bytes");

    // As in a container with a modest open-file limit.
    sh(&["prlimit", "--pid", &pid.to_string(), "--nofile=512:512"]);
    let (fds0, (rss0, _)) = (open_fds(pid), rss_kib(pid));

    // 600 connections at once: every tenth asks for /status and never reads (with a small
    // receive buffer, as a slow client far away), the others send nothing at all. Connecting
    // does not wait: what the agent does not accept, the kernel holds off (accept queue, then
    // SYN retries), and that costs the agent nothing.
    let addr: SocketAddr = ADMIN.parse().unwrap();
    let flood_start = Instant::now();
    let mut clients: Vec<(bool, socket2::Socket)> = in_netns(&ns, || {
        let clients: Vec<(bool, socket2::Socket)> = (0..600)
            .map(|i| {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                socket.set_nonblocking(true).unwrap();
                match socket.connect(&addr.into()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
                    Err(e) => panic!("connection {i}: {e}"),
                }
                (i % 10 == 0, socket)
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        for (_, socket) in clients.iter().filter(|(slow, _)| *slow) {
            // Fails (not connected yet) where the kernel holds the connection off.
            let _ = (&*socket).write(b"GET /status HTTP/1.0\r\nHost: wormhole\r\n\r\n");
        }
        clients
    });
    std::thread::sleep(scaled(Duration::from_secs(3)));
    let (fds1, (rss1, _)) = (open_fds(pid), rss_kib(pid));
    eprintln!(
        "admin flood: /status {status_len} bytes; open fds {fds0} -> {fds1}; VmRSS {rss0} -> {rss1} KiB"
    );
    let fd_bound = fds0 + MAX_CONNECTIONS + 16;
    assert!(
        fds1 <= fd_bound,
        "600 connections: the agent holds {fds1} open files ({fds0} before; at most {fd_bound})\n{}",
        c.node(1).log_tail()
    );
    assert!(
        rss1 < rss0 + 64 * 1024,
        "600 connections: VmRSS {rss0} -> {rss1} KiB\n{}",
        c.node(1).log_tail()
    );

    // A pass during the flood applies: a new node's route appears.
    let key = new_key(&c.work.path().join("n9.key"));
    let n9 = format!(
        "\n[[node]]\nname = \"n9\"\npublic_key = \"{key}\"\nendpoint = \"192.168.77.9:51820\"\n\
         pod_cidrs = [\"10.99.9.0/24\"]\n"
    );
    write_atomically(&c.peers, &c.peers_text(&[1], &format!("{n9}{junk}")));
    let applied = poll(Duration::from_secs(20), || {
        c.node(1)
            .ns
            .wormhole_routes()
            .contains("10.99.9.0/24")
            .then_some(())
    });
    assert!(
        applied.is_some(),
        "a peer added during the flood was not applied\n{}",
        c.node(1).log_tail()
    );

    // The first connections were accepted at once; past their deadline they are gone: the slow
    // reader's reply ends short (reset), the idle connection is closed.
    let past = scaled(DEADLINE + Duration::from_secs(3));
    std::thread::sleep(past.saturating_sub(flood_start.elapsed()));
    let (_, slow) = &mut clients[0];
    slow.set_nonblocking(false).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = Vec::new();
    let ended = slow.read_to_end(&mut reply);
    let body = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| reply.len() - at - 4);
    let cut = match &ended {
        Ok(_) => body < status_len,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        cut,
        "a client that did not read for {past:?} still got {body} bytes of a {status_len}-byte \
         body ({ended:?})"
    );
    let (_, idle) = &mut clients[1];
    idle.set_nonblocking(false).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf);
    assert!(
        matches!(n, Ok(0))
            || n.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "an idle connection was still open after {past:?}: {n:?}"
    );

    // The flood ends: the agent answers again at once, and let go of what it held.
    drop(clients);
    let ready = poll(Duration::from_secs(10), || {
        http_get(&ns, "/readyz").filter(|(code, _)| *code == 200)
    });
    assert!(
        ready.is_some(),
        "no /readyz after the flood\n{}",
        c.node(1).log_tail()
    );
    // Within the per-connection deadline (10 s) and give or take what a pass in progress holds
    // (netlink and UAPI sockets, the state file): the flood itself was 600 connections.
    let released = poll(Duration::from_secs(15), || {
        let fds = open_fds(pid);
        (fds <= fds0 + 8).then_some(fds)
    });
    eprintln!("admin flood: open fds after {released:?}");
    assert!(
        released.is_some(),
        "{} open files after the flood ({fds0} before)",
        open_fds(pid)
    );
}

#[test]
fn squatted_admin_port_does_not_stop_the_mesh() {
    if !root_or_skip("squatted_admin_port_does_not_stop_the_mesh") {
        return;
    }
    let mut c = Cluster::new(2, Backend::Embedded);
    // Someone else holds n1's admin address before the agent starts.
    let squatter = in_netns(&c.node(1).ns.name, || {
        std::net::TcpListener::bind(ADMIN).expect("squat the admin address")
    });
    c.node_mut(2).start(&[]);
    c.node_mut(2).wait_ready();
    c.node_mut(1).start(&[]);

    // The mesh is applied all the same: n2 on the device, its route, the conflist.
    let n1 = c.node(1);
    let n2_key = c.node(2).public_key.clone();
    let applied = poll(Duration::from_secs(30), || {
        let peers = n1.ns.run(&["wg", "show", &n1.iface, "peers"]);
        (String::from_utf8_lossy(&peers.stdout).trim() == n2_key
            && n1.ns.wormhole_routes().contains("10.99.2.0/24"))
        .then_some(())
    });
    assert!(
        applied.is_some(),
        "n1 did not apply the mesh while its admin port was taken (peers {:?}, routes {:?})\n{}",
        n1.ns.run(&["wg", "show", &n1.iface, "peers"]),
        n1.ns.run(&["ip", "route"]),
        n1.log_tail()
    );
    c.add_pods(1, &["a"]);
    c.add_pods(2, &["a"]);
    let to = c.pod("n2a").ip4.clone();
    assert!(
        c.pod("n1a").ping(&to, 3),
        "n1a -> n2a with n1's admin port taken\n{}",
        c.logs()
    );
    let log = std::fs::read_to_string(c.node(1).log()).unwrap();
    assert!(
        log.contains("cannot listen on --admin-addr") && log.contains("retrying"),
        "the busy admin port is not reported\n{}",
        c.node(1).log_tail()
    );

    // The port frees up: the agent binds it (it kept retrying) and serves.
    drop(squatter);
    let ns = c.node(1).ns.name.clone();
    let ready = poll(Duration::from_secs(15), || {
        http_get(&ns, "/readyz").filter(|(code, _)| *code == 200)
    });
    assert!(
        ready.is_some(),
        "the admin port was not bound after it freed up\n{}",
        c.node(1).log_tail()
    );
    let status = c.node(1).status_json();
    assert_eq!(status["peers"][0]["name"], "n2", "{status}");
    let log = std::fs::read_to_string(c.node(1).log()).unwrap();
    assert!(log.contains("admin server listening at last"), "{log}");
}
