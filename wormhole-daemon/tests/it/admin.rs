//! The admin server under abuse: a flood of slow and idle connections costs the agent a bounded
//! number of file descriptors and bounded memory, and never keeps a pass from being applied; a
//! flood from a pod never delays the kubelet's probes; a pod is served the probes only; a
//! squatted admin port does not keep the mesh from being applied, and is bound once it frees up.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::{
    ADMIN, Backend, Cluster, http_get, in_netns, new_key, poll, root_or_skip, rss_kib, scaled, sh,
    write_atomically,
};

/// What the agent allows (`admin::Limits::DEFAULT` in the binary): connections from this host
/// (the flood below comes from loopback), and the longest a connection lives.
const MAX_CONNECTIONS: usize = 16;
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
    // does not wait: the agent accepts every connection, and resets at once those over its
    // limits.
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

    // The first connections were served; past their deadline they are gone: the slow reader's
    // reply ends short (reset), the idle connection is closed (at the header timeout). The
    // others were reset at once.
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

/// The admin address as the DaemonSet sets it: the node's own (host) IP, where the kubelet
/// probes it and every pod can reach it.
fn host_admin(i: usize) -> SocketAddr {
    format!("{}:9473", wormhole_testkit::underlay_ip(i))
        .parse()
        .unwrap()
}

/// `GET path` at `addr` from inside namespace `ns` (a node, as the kubelet or an operator
/// there; or a pod), as the kubelet's probes send it: the status code, the body and how long
/// the exchange took; `None` without a complete reply within `limit`.
fn get_from(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Option<(u16, String, Duration)> {
    in_netns(ns, || {
        let start = Instant::now();
        let mut s = std::net::TcpStream::connect_timeout(&addr, limit).ok()?;
        s.set_read_timeout(Some(limit)).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.31\r\n\
             Connection: close\r\n\r\n"
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let took = start.elapsed();
        if took > limit {
            return None;
        }
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned(), took))
    })
}

/// Waits (bounded) until the agent of node `i` answers `/readyz` at `addr`, from the node.
fn wait_ready_at(c: &Cluster, i: usize, addr: SocketAddr) {
    let ns = c.node(i).ns.name.clone();
    let ready = poll(Duration::from_secs(30), || {
        get_from(&ns, addr, "/readyz", Duration::from_secs(2)).filter(|(code, ..)| *code == 200)
    });
    assert!(
        ready.is_some(),
        "n{i} not ready at {addr}\n{}",
        c.node(i).log_tail()
    );
}

/// Issue 20, item 5: a pod that holds many idle connections to the admin port on the host IP
/// (and keeps opening more) must not delay the kubelet's probes, which come from the host's
/// own address: each is answered within the kubelet's default timeout of 1 s.
#[test]
fn probes_answer_while_a_pod_floods_the_admin_port() {
    if !root_or_skip("probes_answer_while_a_pod_floods_the_admin_port") {
        return;
    }
    let mut c = Cluster::new(1, Backend::Embedded);
    let addr = host_admin(1);
    c.node_mut(1).start(&["--admin-addr", &addr.to_string()]);
    wait_ready_at(&c, 1, addr);
    c.add_pods(1, &["a"]);
    let node_ns = c.node(1).ns.name.clone();
    let pod_ns = c.pod("n1a").ns.name.clone();

    // The pod: 48 idle connections (more than every slot the agent had), then a new one every
    // 5 ms for as long as the probes run, all held open (up to 600).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let limit = scaled(Duration::from_secs(1));
    let (opened, probes) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            in_netns(&pod_ns, || {
                let mut open = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let connect =
                        || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500));
                    if open.len() < 600
                        && let Ok(s) = connect()
                    {
                        open.push(s);
                    }
                    if open.len() >= 48 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                open.len()
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        // The kubelet, from the node: ten probes 300 ms apart.
        let probes: Vec<Option<(u16, String, Duration)>> = (0..10)
            .map(|_| {
                let got = get_from(&node_ns, addr, "/healthz", limit);
                std::thread::sleep(Duration::from_millis(300));
                got
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (flood.join().unwrap(), probes)
    });
    let took: Vec<String> = probes
        .iter()
        .map(|p| {
            p.as_ref()
                .map_or("none".into(), |(_, _, t)| format!("{t:?}"))
        })
        .collect();
    eprintln!(
        "admin: {opened} connections from a pod; /healthz from the host answered in {took:?}"
    );
    assert!(opened >= 48, "the pod opened only {opened} connections");
    for (i, probe) in probes.iter().enumerate() {
        match probe {
            Some((200, body, _)) => assert_eq!(body, "ok\n"),
            other => panic!(
                "probe {i} of 10 while a pod floods the admin port: {other:?} (every one must \
                 answer 200 within {limit:?}; all: {took:?})\n{}",
                c.node(1).log_tail()
            ),
        }
    }
}

/// Issue 20, item 7: on the host IP, a pod is served the probes only, not the status (which
/// names every peer, its endpoint and its handshakes) nor the metrics; this host is served
/// everything. `--admin-allow` and `--metrics-allow` open them to sources named explicitly.
#[test]
fn pods_are_served_the_probes_only() {
    if !root_or_skip("pods_are_served_the_probes_only") {
        return;
    }
    let mut c = Cluster::new(2, Backend::Embedded);
    let addr = host_admin(1);
    c.node_mut(1).start(&["--admin-addr", &addr.to_string()]);
    wait_ready_at(&c, 1, addr);
    c.add_pods(1, &["a", "b"]);
    let node_ns = c.node(1).ns.name.clone();
    let n2_ns = c.node(2).ns.name.clone();
    let (pod_a, pod_b) = (c.pod("n1a").ns.name.clone(), c.pod("n1b").ns.name.clone());
    let pod_a_ip = c.pod("n1a").ip4.clone();
    let limit = scaled(Duration::from_secs(5));
    let get = |ns: &str, path: &str| {
        get_from(ns, addr, path, limit)
            .map(|(code, body, _)| (code, body))
            .unwrap_or_else(|| panic!("no reply to GET {path} from {ns}"))
    };
    // What a pod must not learn: the peers' names, endpoints and keys.
    let n2_key = c.node(2).public_key.clone();
    let secrets = ["n2", "192.168.77.2", n2_key.as_str()];
    let refused = |who: &str, path: &str, (code, body): (u16, String)| {
        assert_eq!(code, 403, "{who} GET {path}: {code} {body}");
        assert!(
            secrets.iter().all(|s| !body.contains(s)),
            "{who} GET {path} was told: {body}"
        );
    };

    // A pod: the probes, nothing else.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(&pod_a, path).0, 200, "pod GET {path}");
    }
    refused("a pod", "/status", get(&pod_a, "/status"));
    refused("a pod", "/metrics", get(&pod_a, "/metrics"));
    // Another host (n2, from the underlay): the same.
    refused("another host", "/status", get(&n2_ns, "/status"));
    // This host: everything, and `wormhole status` at the host address works.
    let (code, status) = get(&node_ns, "/status");
    assert_eq!(code, 200, "{status}");
    assert!(status.contains("192.168.77.2:51820"), "{status}");
    assert_eq!(get(&node_ns, "/metrics").0, 200);
    let out = c.node(1).ns.run(&[
        crate::harness::BIN,
        "status",
        "-o",
        "json",
        "--admin-addr",
        &addr.to_string(),
    ]);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("wormhole status at {addr}: {e}: {out:?}"));
    assert_eq!(view["peers"][0]["name"], "n2", "{view}");

    // Named explicitly: n2's address is served everything, pod a the metrics.
    let stopped = c.node_mut(1).daemon.take().unwrap().terminate();
    assert!(stopped.success(), "{stopped:?}");
    c.node_mut(1).start(&[
        "--admin-addr",
        &addr.to_string(),
        "--admin-allow",
        &wormhole_testkit::underlay_ip(2),
        "--metrics-allow",
        &format!("{pod_a_ip}/32"),
    ]);
    wait_ready_at(&c, 1, addr);
    let (code, status) = get(&n2_ns, "/status");
    assert_eq!(code, 200, "n2 (--admin-allow) GET /status: {status}");
    assert!(status.contains("192.168.77.2:51820"), "{status}");
    assert_eq!(get(&n2_ns, "/metrics").0, 200);
    let (code, metrics) = get(&pod_a, "/metrics");
    assert_eq!(code, 200, "pod a (--metrics-allow) GET /metrics: {metrics}");
    assert!(metrics.contains("wormhole_peers{"), "{metrics}");
    refused("pod a (--metrics-allow)", "/status", get(&pod_a, "/status"));
    refused("pod b", "/metrics", get(&pod_b, "/metrics"));
    assert_eq!(get(&pod_b, "/healthz").0, 200);
}
