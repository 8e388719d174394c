//! Nodes joining and leaving through the peers file: a fourth node becomes reachable from every
//! node's pods soon after it is added, and once removed its peer and routes disappear everywhere.

use std::io::BufRead as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::{Backend, Cluster, poll, root_or_skip, scaled, write_atomically};

/// What the tests assert; the goal (< 1 s) is measured in `measure`, not asserted.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(5);

/// Adds node 4 on `backend`, with its own peers file listing all four nodes (so it can run and
/// get a pod before the others hear of it), starts it and attaches pod `n4a`.
pub(crate) fn add_fourth(c: &mut Cluster, backend: Backend) {
    let i = c.add_node(backend);
    assert_eq!(i, 4);
    let own = c.work.path().join("peers-n4.toml");
    write_atomically(&own, &c.peers_text(&[1, 2, 3, 4], ""));
    let n4 = c.node_mut(4);
    n4.peers = own;
    n4.start(&[]);
    n4.wait_ready();
    c.add_pods(4, &["a"]);
}

/// Adds n4 to the shared peers file; returns, for the pods `n1a`..`n3a`, the time from the
/// rename until their first answered ping to `n4a` (`None`: not within 10 s).
///
/// Each pod pings every 10 ms (for 12 s; not `-w`, with which ping stops at the first error)
/// from before the change, and `ping -D` stamps each reply with the time it arrived: the
/// resolution is about 10 ms. Requests sent while the route is missing are refused; those sent
/// during the handshake wait in WireGuard's queue.
pub(crate) fn join(c: &Cluster) -> Vec<Option<Duration>> {
    let target = c.pod("n4a").ip4.clone();
    let sources: Vec<_> = (1..=3).map(|i| c.pod(&format!("n{i}a"))).collect();
    for pod in &sources {
        assert!(
            !pod.ping_once(&target, "0.2"),
            "{} reaches n4a before n4 is in the peers file",
            pod.name
        );
    }
    let mut pingers: Vec<_> = sources
        .iter()
        .map(|pod| {
            pod.ns
                .spawn(&["ping", "-D", "-n", "-i", "0.01", "-c", "1200", &target])
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    write_atomically(&c.peers, &c.peers_text(&[1, 2, 3, 4], ""));
    let changed = SystemTime::now();
    let times = std::thread::scope(|scope| {
        let handles: Vec<_> = pingers
            .iter_mut()
            .map(|child| {
                let stdout = child.stdout.take().unwrap();
                scope.spawn(move || first_reply(stdout, changed))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for mut child in pingers {
        let _ = child.kill();
        let _ = child.wait();
    }
    times
}

/// The arrival time of the first reply `ping -D` prints, as time since `since` (`None`: none
/// before ping ended).
fn first_reply(stdout: impl std::io::Read, since: SystemTime) -> Option<Duration> {
    let since = since.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter(|line| line.contains("bytes from"))
        .find_map(|line| {
            let stamp: f64 = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            Some(Duration::from_secs_f64((stamp - since).max(0.0)))
        })
}

/// Removes n4 from the shared peers file; returns the time until n4's peer and routes are gone
/// from n1..n3 (`None`: not within 10 s).
pub(crate) fn leave(c: &Cluster) -> Option<Duration> {
    write_atomically(&c.peers, &c.peers_text(&[1, 2, 3], ""));
    let changed = Instant::now();
    let key = c.node(4).public_key.clone();
    poll(Duration::from_secs(10), || {
        c.nodes[..3]
            .iter()
            .all(|n| {
                let routes = n.ns.wormhole_routes();
                !n.wg_peers().contains(&key)
                    && !routes.contains("10.99.4.0/24")
                    && !routes.contains("fd99:0:0:4::/64")
            })
            .then(|| changed.elapsed())
    })
}

#[test]
fn node_join_and_leave() {
    if root_or_skip("node_join_and_leave") {
        node_join_and_leave_on(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn node_join_and_leave_kernel() {
    if root_or_skip("node_join_and_leave_kernel") {
        node_join_and_leave_on(Backend::Kernel);
    }
}

fn node_join_and_leave_on(backend: Backend) {
    let mut c = Cluster::new(3, backend);
    c.start_all(&[]);
    for i in 1..=3 {
        c.add_pods(i, &["a"]);
    }
    add_fourth(&mut c, backend);

    let times = join(&c);
    eprintln!("join: file change -> first answered ping from n1a, n2a, n3a to n4a: {times:?}");
    for (i, t) in times.iter().enumerate() {
        assert!(
            t.is_some_and(|t| t < scaled(CONVERGENCE_BOUND)),
            "n{}a did not reach n4a within {CONVERGENCE_BOUND:?} of the file change: {t:?}\n{}",
            i + 1,
            c.logs()
        );
    }
    // Both families, both ways.
    let n4a = c.pod("n4a");
    for i in 1..=3 {
        let pod = c.pod(&format!("n{i}a"));
        for (from, to) in [(pod, &n4a.ip6), (n4a, &pod.ip4), (n4a, &pod.ip6)] {
            assert!(from.ping(to, 3), "{} -> {to} after the join", from.name);
        }
    }
    for node in &c.nodes[..3] {
        assert!(node.wg_peers().contains(&c.node(4).public_key));
        let routes = node.ns.wormhole_routes();
        assert!(
            routes.contains("10.99.4.0/24") && routes.contains("fd99:0:0:4::/64"),
            "{}: {routes}",
            node.name
        );
    }

    let gone = leave(&c);
    eprintln!("leave: file change -> n4's peer and routes gone from n1..n3: {gone:?}");
    assert!(
        gone.is_some_and(|t| t < scaled(CONVERGENCE_BOUND)),
        "n4's peer or routes still on some node {CONVERGENCE_BOUND:?} after it left: {gone:?}\n{}",
        c.logs()
    );
    // The others are untouched.
    for node in &c.nodes[..3] {
        let mut want: Vec<String> = c.nodes[..3]
            .iter()
            .filter(|n| n.index != node.index)
            .map(|n| n.public_key.clone())
            .collect();
        want.sort();
        assert_eq!(node.wg_peers(), want, "{}", node.name);
        let routes = node.ns.wormhole_routes();
        assert_eq!(routes.lines().count(), 4, "{}: {routes}", node.name);
        let names: Vec<String> = node.status_json()["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert!(!names.contains(&"n4".to_owned()), "{names:?}");
    }
    let (n1a, n2a, n3a) = (c.pod("n1a"), c.pod("n2a"), c.pod("n3a"));
    assert!(n1a.ping(&n2a.ip4, 2) && n3a.ping(&n1a.ip6, 2));
    // And n4 can come back.
    let again = join(&c);
    assert!(
        again
            .iter()
            .all(|t| t.is_some_and(|t| t < scaled(CONVERGENCE_BOUND))),
        "rejoin: {again:?}\n{}",
        c.logs()
    );
}
