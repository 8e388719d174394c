//! The numbers in `BENCHMARKS.md` ("wormhole daemon"), measured on the real binary:
//!
//! ```sh
//! sudo -E cargo test -p wormhole-daemon --release --test it -- --ignored --nocapture measure
//! ```
//!
//! It prints a Markdown report: machine, stripped binary size, daemon RSS with 3 and 1,000
//! peers and idle CPU over 60 s at each (embedded and userspace backends), pod-to-pod TCP
//! throughput through the mesh next to wireguard-go configured by hand with `wg` between the
//! same namespaces, and node-join convergence. It takes about five minutes. `measure_memory`
//! and `measure_throughput` (below) measure one part each, on a release build of the daemon.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::churn::{add_fourth, join, leave};
use crate::harness::{
    BIN, Backend, Cluster, cpu_ticks, poll, pubkey, root_or_skip, run, sh, wireguard_go_pid,
    write_atomically,
};

const IDLE: Duration = Duration::from_secs(60);
const EXTRA_PEERS: usize = 997;
const THROUGHPUT_RUNS: usize = 5;
const THROUGHPUT_SECONDS: &str = "5";
const JOIN_RUNS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Fake peers `first..first + n`: fresh keys, endpoints in the underlay subnet that nobody answers
/// (no traffic goes to them), disjoint /26 and /64 pod CIDRs.
fn fake_peers(first: usize, n: usize, keys: &[String]) -> String {
    let mut text = String::new();
    for (i, key) in keys.iter().enumerate().skip(first).take(n) {
        let _ = write!(
            text,
            "\n[[node]]\nname = \"fake{i}\"\npublic_key = \"{}\"\nendpoint = \"192.168.77.{}:{}\"\n\
             pod_cidrs = [\"10.99.{}.{}/26\", \"fd99:0:0:{:x}::/64\"]\n",
            key,
            10 + i % 240,
            52000 + i / 240,
            4 + i / 4,
            (i % 4) * 64,
            0x1000 + i
        );
    }
    text
}

/// CPU time over one idle window, in clock ticks: the agent, and wireguard-go (userspace).
#[derive(Clone, Copy)]
struct Idle {
    agent: u64,
    wg_go: Option<u64>,
}

/// Memory of one process (`/proc/PID/status`, KiB).
#[derive(Clone, Copy)]
struct Memory {
    rss: u64,
    hwm: u64,
    /// `RssAnon`: the heap and stacks, without the mapped binary and libraries.
    anon: u64,
    threads: u64,
}

fn memory(pid: u32) -> Memory {
    let [rss, hwm, anon, threads] =
        wormhole_testkit::proc_status(pid, ["VmRSS:", "VmHWM:", "RssAnon:", "Threads:"]);
    Memory {
        rss,
        hwm,
        anon,
        threads,
    }
}

struct Resources {
    backend: Backend,
    idle3: Idle,
    idle1000: Idle,
    rss3: Memory,
    rss3_wg_go: Option<Memory>,
    rss1000: Memory,
    rss1000_wg_go: Option<Memory>,
    apply1000: Duration,
    pass1000_ms: f64,
}

/// A rendezvous of the `n` threads that share `count`: each waits (bounded) until all have
/// come, so that their idle windows are the same stretch of time.
fn meet(count: &std::sync::atomic::AtomicUsize, n: usize) {
    use std::sync::atomic::Ordering;
    let mine = count.fetch_add(1, Ordering::SeqCst) + 1;
    let target = mine.div_ceil(n) * n;
    let met = poll(Duration::from_secs(600), || {
        (count.load(Ordering::SeqCst) >= target).then_some(())
    });
    assert!(
        met.is_some(),
        "the other resource runs did not come within 600 s"
    );
}

/// CPU ticks of `pid` (and of `wg_go`) over [`IDLE`], started together with the other runs.
fn idle(pid: u32, wg_go: Option<u32>, sync: (&std::sync::atomic::AtomicUsize, usize)) -> Idle {
    meet(sync.0, sync.1);
    let (t0, w0) = (cpu_ticks(pid), wg_go.map(cpu_ticks));
    std::thread::sleep(IDLE);
    let (t1, w1) = (cpu_ticks(pid), wg_go.map(cpu_ticks));
    Idle {
        agent: t1 - t0,
        wg_go: w0.zip(w1).map(|(a, b)| b - a),
    }
}

/// One backend's resource run: node n1 of a 3-node mesh with 3 peers, then 1,000 (997 fake):
/// memory after each and CPU over an idle window at each. The daemons get `extra` arguments.
/// `sync` is shared with the runs of the other backends (and how many there are), so that the
/// idle windows overlap.
fn resources(
    backend: Backend,
    bin: &str,
    extra: &[&str],
    keys: &[String],
    sync: (&std::sync::atomic::AtomicUsize, usize),
) -> Resources {
    let mut c = Cluster::with_daemon(3, backend, bin);
    // n1 reads its own file: the three nodes plus one more peer (3 peers); later 1,000 peers.
    let own = c.work.path().join("peers-n1.toml");
    write_atomically(&own, &c.peers_text(&[1, 2, 3], &fake_peers(0, 1, keys)));
    c.node_mut(1).peers = own.clone();
    c.start_all(extra);
    for i in 1..=3 {
        c.add_pods(i, &["a"]);
    }
    for to in ["n2a", "n3a"] {
        assert!(c.pod("n1a").ping(&c.pod(to).ip4, 3), "n1a -> {to}");
    }
    let n1 = c.node(1);
    let pid = n1.daemon.as_ref().unwrap().pid();
    let wg_go = (backend == Backend::Userspace).then(|| wireguard_go_pid(&n1.iface).unwrap());
    std::thread::sleep(Duration::from_secs(2));

    let idle3 = idle(pid, wg_go, sync);
    let rss3 = memory(pid);
    let rss3_wg_go = wg_go.map(memory);
    assert_eq!(n1.wg_peers().len(), 3);

    let text = c.peers_text(&[1, 2, 3], &fake_peers(0, EXTRA_PEERS + 1, keys));
    write_atomically(&own, &text);
    let changed = Instant::now();
    let applied = poll(Duration::from_secs(120), || {
        let status = n1.status_json();
        let peers = status["peers"].as_array().unwrap().len();
        (peers == 1000
            && status["last_reconcile"]["error"].is_null()
            && n1.wg_peers().len() == 1000)
            .then(|| (changed.elapsed(), status))
    });
    let (apply1000, status) = applied.expect("1,000 peers applied within 120 s");
    let pass1000_ms = status["last_reconcile"]["duration_ms"].as_f64().unwrap();
    let routes = n1.ns.wormhole_routes().lines().count();
    assert_eq!(routes, 2000, "1,000 peers, one v4 and one v6 route each");
    std::thread::sleep(Duration::from_secs(2));
    let idle1000 = idle(pid, wg_go, sync);
    assert_eq!(n1.wg_peers().len(), 1000);
    Resources {
        backend,
        idle3,
        idle1000,
        rss3,
        rss3_wg_go,
        rss1000: memory(pid),
        rss1000_wg_go: wg_go.map(memory),
        apply1000,
        pass1000_ms,
    }
}

/// Runs [`resources`] for `backends` side by side (one thread each, idle windows together).
fn resources_side_by_side(
    backends: &[Backend],
    bin: &str,
    extra: &[&str],
    keys: &[String],
) -> Vec<Resources> {
    let count = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = backends
            .iter()
            .map(|&b| {
                let count = &count;
                s.spawn(move || resources(b, bin, extra, keys, (count, backends.len())))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The Markdown table and lines for [`resources_side_by_side`]'s results.
fn resources_report(r: &mut String, res: &[Resources]) {
    let tck: f64 = sh(&["getconf", "CLK_TCK"]).trim().parse().unwrap();
    let secs = IDLE.as_secs();
    let cpu = |ticks: u64| {
        let s = ticks as f64 / tck;
        format!("{s:.2} s ({:.2}%)", s / IDLE.as_secs_f64() * 100.0)
    };
    let _ = writeln!(
        r,
        "\n| backend | process | VmRSS 3 peers | VmRSS 1,000 peers | VmHWM 1,000 peers | RssAnon 3 -> 1,000 peers | threads (1,000 peers) | CPU over {secs} s idle, 3 peers | CPU over {secs} s idle, 1,000 peers |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|---|---|---|");
    let row = |r: &mut String, backend: &str, process: &str, m3: Memory, m: Memory, i3, i| {
        let _ = writeln!(
            r,
            "| {backend} | {process} | {} | {} | {} | {} -> {} | {} | {} | {} |",
            mib(m3.rss),
            mib(m.rss),
            mib(m.hwm),
            mib(m3.anon),
            mib(m.anon),
            m.threads,
            cpu(i3),
            cpu(i)
        );
    };
    for x in res {
        let b = x.backend.as_str();
        row(
            r,
            b,
            "`wormhole run`",
            x.rss3,
            x.rss1000,
            x.idle3.agent,
            x.idle1000.agent,
        );
        if let (Some(m3), Some(m), Some(i3), Some(i)) = (
            x.rss3_wg_go,
            x.rss1000_wg_go,
            x.idle3.wg_go,
            x.idle1000.wg_go,
        ) {
            row(r, b, "`wireguard-go` (data plane)", m3, m, i3, i);
            let sum = |a: Memory, b: Memory| Memory {
                rss: a.rss + b.rss,
                hwm: a.hwm + b.hwm,
                anon: a.anon + b.anon,
                threads: a.threads + b.threads,
            };
            row(
                r,
                b,
                "**both**",
                sum(x.rss3, m3),
                sum(x.rss1000, m),
                x.idle3.agent + i3,
                x.idle1000.agent + i,
            );
        }
    }
    let _ = writeln!(r);
    for x in res {
        let total = |m: Memory, w: Option<Memory>| m.rss + w.map_or(0, |w| w.rss);
        let (t3, t1000) = (
            total(x.rss3, x.rss3_wg_go),
            total(x.rss1000, x.rss1000_wg_go),
        );
        let _ = writeln!(
            r,
            "- {}: 3 -> 1,000 peers: file change to 1,000 peers on the device {:.2} s; that pass took {:.0} ms; VmRSS of the data plane's processes {} -> {}: {:.1} KiB per added peer",
            x.backend.as_str(),
            x.apply1000.as_secs_f64(),
            x.pass1000_ms,
            mib(t3),
            mib(t1000),
            (t1000 as f64 - t3 as f64) / EXTRA_PEERS as f64
        );
    }
}

/// iperf3 client in namespace `ns` to `server` for a few seconds: received bits per second.
fn iperf(ns: &crate::harness::Netns, server: &str) -> f64 {
    let out = ns.run(&["iperf3", "-c", server, "-t", THROUGHPUT_SECONDS, "-J"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J");
    assert!(
        out.status.success() && report.get("error").is_none(),
        "iperf3 -c {server}: {report}"
    );
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
}

/// A wireguard-go device configured by hand with `wg` + `ip` in each of the first two nodes
/// (10.98.0.1 and .2, port 51821); its UAPI sockets are removed on drop.
struct HandWireGuard {
    ifaces: Vec<String>,
}

impl Drop for HandWireGuard {
    fn drop(&mut self) {
        for iface in &self.ifaces {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
        }
    }
}

fn hand_wireguard(c: &Cluster, mtu: u64) -> HandWireGuard {
    let ifaces: Vec<String> = (1..=2).map(|i| format!("{}h{i}", c.prefix)).collect();
    let guard = HandWireGuard {
        ifaces: ifaces.clone(),
    };
    let keys: Vec<(std::path::PathBuf, String)> = (1..=2)
        .map(|i| {
            let path = c.work.path().join(format!("hand{i}.key"));
            let private = sh(&["wg", "genkey"]);
            std::fs::write(&path, &private).unwrap();
            (path, pubkey(&private))
        })
        .collect();
    for i in 1..=2 {
        let (me, peer) = (i - 1, 2 - i);
        let ns = &c.node(i).ns;
        ns.sh(&["wireguard-go", &ifaces[me]]);
        ns.sh(&[
            "wg",
            "set",
            &ifaces[me],
            "listen-port",
            "51821",
            "private-key",
            keys[me].0.to_str().unwrap(),
            "peer",
            &keys[peer].1,
            "allowed-ips",
            &format!("10.98.0.{}/32", peer + 1),
            "endpoint",
            &format!("192.168.77.{}:51821", peer + 1),
        ]);
        ns.sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.98.0.{i}/24"),
            "dev",
            &ifaces[me],
        ]);
        ns.sh(&[
            "ip",
            "link",
            "set",
            &ifaces[me],
            "mtu",
            &mtu.to_string(),
            "up",
        ]);
    }
    guard
}

/// Bits per second per run, the three paths alternated.
struct Throughput {
    /// Pod n1a to pod n2a through the mesh (the number that matters).
    mesh_pods: Vec<f64>,
    /// Node n1 to n2's overlay address 10.99.2.1 through the mesh: the same path shape as `hand`.
    mesh_nodes: Vec<f64>,
    /// Node n1 to node n2 through wireguard-go configured by hand with `wg` and `ip`.
    hand: Vec<f64>,
}

fn throughput(backend: Backend) -> Throughput {
    let mut c = Cluster::new(2, backend);
    c.start_all(&[]);
    c.add_pods(1, &["a"]);
    c.add_pods(2, &["a"]);
    let mtu = c.node(1).status_json()["mtu"].as_u64().unwrap();
    let _hand = hand_wireguard(&c, mtu);
    let (n1a, n2a) = (c.pod("n1a"), c.pod("n2a"));
    let (n1, n2) = (&c.node(1).ns, &c.node(2).ns);
    let _servers = [n2a.ns.spawn(&["iperf3", "-s"]), n2.spawn(&["iperf3", "-s"])];
    assert!(n1a.ping(&n2a.ip4, 3), "mesh path");
    assert!(
        (0..3).any(|_| n1
            .run(&["ping", "-c1", "-W2", "10.98.0.2"])
            .status
            .success()),
        "hand-configured path"
    );
    assert!(
        (0..3).any(|_| n1
            .run(&["ping", "-c1", "-W2", "10.99.2.1"])
            .status
            .success()),
        "mesh node-to-node path"
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut t = Throughput {
        mesh_pods: Vec::new(),
        mesh_nodes: Vec::new(),
        hand: Vec::new(),
    };
    for _ in 0..THROUGHPUT_RUNS {
        t.mesh_pods.push(iperf(&n1a.ns, &n2a.ip4));
        t.hand.push(iperf(n1, "10.98.0.2"));
        t.mesh_nodes.push(iperf(n1, "10.99.2.1"));
    }
    t
}

/// Join and leave runs on a 4-node cluster: per run, the time until each of n1a..n3a first
/// reaches n4a, and the time until n4's peer and routes are gone everywhere.
fn convergence(backend: Backend, bin: &str, runs: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let mut c = Cluster::with_daemon(3, backend, bin);
    c.start_all(&[]);
    for i in 1..=3 {
        c.add_pods(i, &["a"]);
    }
    add_fourth(&mut c, backend);
    // Leave first, so that every measured join starts from the same state.
    write_atomically(&c.peers, &c.peers_text(&[1, 2, 3], ""));
    std::thread::sleep(Duration::from_secs(1));
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let times = join(&c);
        joins.push(
            times
                .iter()
                .map(|t| t.expect("joined within 10 s").as_secs_f64())
                .collect(),
        );
        std::thread::sleep(Duration::from_millis(500));
        leaves.push(leave(&c).expect("left within 10 s").as_secs_f64());
        std::thread::sleep(Duration::from_millis(500));
    }
    (joins, leaves)
}

fn first_line(args: &[&str]) -> String {
    let out = run(args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().next().unwrap_or("").trim().to_owned()
}

#[test]
#[ignore = "takes minutes; run with --release --ignored --nocapture measure (as root)"]
fn measure() {
    if !root_or_skip("measure") {
        return;
    }
    let mut r = String::new();
    let lscpu = sh(&["lscpu"]);
    let model = lscpu
        .lines()
        .find(|l| l.starts_with("Model name:"))
        .map(|l| l["Model name:".len()..].trim().to_owned())
        .unwrap_or_default();
    let load = |r: &mut String, when: &str| {
        let l = std::fs::read_to_string("/proc/loadavg").unwrap();
        let _ = writeln!(r, "- load average {when}: {}", l.trim());
    };
    let _ = writeln!(
        r,
        "- machine: {} CPUs (`nproc`), `lscpu` model name `{model}`, kernel {}",
        sh(&["nproc"]).trim(),
        sh(&["uname", "-r"]).trim()
    );
    let _ = writeln!(
        r,
        "- {}, {}, {}",
        first_line(&["wireguard-go", "--version"]),
        first_line(&["iperf3", "--version"]),
        first_line(&["rustc", "--version"])
    );
    load(&mut r, "at start");

    // Binary.
    let size = std::fs::metadata(BIN).unwrap().len();
    let file = sh(&["file", "-L", BIN]);
    let _ = writeln!(
        r,
        "- binary: `{BIN}`, {size} bytes ({:.2} MB, {:.2} MiB); `file`: {}",
        size as f64 / 1e6,
        size as f64 / 1048576.0,
        file.split(": ").nth(1).unwrap_or("").trim()
    );
    if !BIN.contains("/release/") {
        let _ = writeln!(r, "- WARNING: not a release build; run with --release");
    }

    // 1,000 fresh keys for the fake peers.
    let keys: Vec<String> = (0..=EXTRA_PEERS)
        .map(|_| pubkey(&sh(&[BIN, "genkey"])))
        .collect();

    // Resources, both backends side by side (idle windows together; CPU is per process).
    let res = resources_side_by_side(&[Backend::Embedded, Backend::Userspace], BIN, &[], &keys);
    resources_report(&mut r, &res);
    load(&mut r, "after the resource runs");

    // Throughput.
    let _ = writeln!(
        r,
        "\n| backend | run | mesh pod->pod | mesh node->node | hand wireguard-go node->node | pod->pod / hand |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for backend in [Backend::Userspace, Backend::Embedded] {
        let t = throughput(backend);
        let paired: Vec<f64> = t
            .mesh_pods
            .iter()
            .zip(&t.hand)
            .map(|(m, h)| m / h)
            .collect();
        for (i, ratio) in paired.iter().enumerate() {
            let _ = writeln!(
                r,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {ratio:.2} |",
                backend.as_str(),
                i + 1,
                t.mesh_pods[i] / 1e6,
                t.mesh_nodes[i] / 1e6,
                t.hand[i] / 1e6,
            );
        }
        let (pods, nodes, hand) = (median(t.mesh_pods), median(t.mesh_nodes), median(t.hand));
        let _ = writeln!(
            r,
            "| {} | **median** | **{:.0}** | **{:.0}** | **{:.0}** | **{:.2}** (median of the runs) |",
            backend.as_str(),
            pods / 1e6,
            nodes / 1e6,
            hand / 1e6,
            median(paired)
        );
        ratios.push((backend, pods / hand, nodes / hand));
    }
    let _ = writeln!(r, "\n(Mbit/s, iperf3 -t {THROUGHPUT_SECONDS}, received)");
    for (b, pods, nodes) in &ratios {
        let _ = writeln!(
            r,
            "- {}: median mesh pod->pod / median hand = {pods:.3}; median mesh node->node / median hand = {nodes:.3}",
            b.as_str()
        );
    }
    load(&mut r, "after the throughput runs");

    // Join convergence.
    let _ = writeln!(
        r,
        "\n| backend | run | n1a, n2a, n3a first reach n4a (s) | all three (s) | leave: n4 gone everywhere (s) |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|");
    for backend in [Backend::Embedded, Backend::Userspace] {
        let (joins, leaves) = convergence(backend, BIN, JOIN_RUNS);
        let mut firsts = Vec::new();
        let mut alls = Vec::new();
        for (i, (j, l)) in joins.iter().zip(&leaves).enumerate() {
            let all = j.iter().copied().fold(0.0, f64::max);
            firsts.extend(j.iter().copied());
            alls.push(all);
            let _ = writeln!(
                r,
                "| {} | {} | {} | {all:.2} | {l:.2} |",
                backend.as_str(),
                i + 1,
                j.iter()
                    .map(|t| format!("{t:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(
            r,
            "| {} | **median** | **{:.2}** (of all {} pod pings) | **{:.2}** | **{:.2}** |",
            backend.as_str(),
            median(firsts.clone()),
            firsts.len(),
            median(alls),
            median(leaves)
        );
    }
    load(&mut r, "at the end");
    println!("\n===== measure report =====\n{r}");
}

/// Join latency alone (peers file rename -> first answered pod ping), embedded backend, for
/// this build and, if `WORMHOLE_BEFORE_BIN` names another build of the daemon, for that one
/// first, in the same run (BENCHMARKS.md, "Join latency in file mode"):
///
/// ```sh
/// cp target/debug/wormhole /tmp/wormhole-before   # built from the commit to compare with
/// WORMHOLE_BEFORE_BIN=/tmp/wormhole-before WORMHOLE_JOIN_RUNS=12 \
///   cargo test -p wormhole-daemon --test it -- --ignored --nocapture measure_join
/// ```
#[test]
#[ignore = "takes a minute or two; run with --ignored --nocapture measure_join (as root)"]
fn measure_join() {
    if !root_or_skip("measure_join") {
        return;
    }
    let runs: usize = std::env::var("WORMHOLE_JOIN_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    let mut builds = Vec::new();
    if let Ok(before) = std::env::var("WORMHOLE_BEFORE_BIN") {
        builds.push(("before", before));
    }
    builds.push(("this build", BIN.to_owned()));
    let mut r = String::new();
    let _ = writeln!(
        r,
        "| build | joins | first reply per pod: median (min-max), s | all three: median, s |\n|---|---|---|---|"
    );
    for (name, bin) in &builds {
        let (joins, _) = convergence(Backend::Embedded, bin, runs);
        let firsts: Vec<f64> = joins.iter().flatten().copied().collect();
        let alls: Vec<f64> = joins
            .iter()
            .map(|j| j.iter().copied().fold(0.0, f64::max))
            .collect();
        eprintln!("{name}: {joins:?}");
        let min = firsts.iter().copied().fold(f64::INFINITY, f64::min);
        let max = firsts.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            r,
            "| {name} | {runs} | {:.3} ({min:.3}-{max:.3}) of {} pings | {:.3} |",
            median(firsts.clone()),
            firsts.len(),
            median(alls)
        );
    }
    println!("{r}");
}

/// What the path of the daemon at `bin` says of its build (copies of release builds keep
/// "release" in their directory name).
fn build_label(bin: &str) -> &'static str {
    if bin.contains("release") {
        " (release)"
    } else {
        " (DEBUG build)"
    }
}

/// One backend's mesh for [`measure_throughput`]: two nodes with a pod each, iperf3 servers
/// running, and the processes that carry its data plane (the agents for embedded, wireguard-go
/// for userspace).
struct Lane {
    c: Cluster,
    _servers: Vec<std::process::Child>,
    data_plane: Vec<u32>,
}

impl Lane {
    fn new(backend: Backend, bin: &str) -> Lane {
        let mut c = Cluster::with_daemon(2, backend, bin);
        c.start_all(&[]);
        c.add_pods(1, &["a"]);
        c.add_pods(2, &["a"]);
        let servers = vec![
            c.pod("n2a").ns.spawn(&["iperf3", "-s"]),
            c.node(2).ns.spawn(&["iperf3", "-s"]),
        ];
        assert!(
            c.pod("n1a").ping(&c.pod("n2a").ip4, 3),
            "{backend:?}: pod path"
        );
        assert!(
            (0..3).any(|_| c
                .node(1)
                .ns
                .run(&["ping", "-c1", "-W2", "10.99.2.1"])
                .status
                .success()),
            "{backend:?}: node path"
        );
        let data_plane = (1..=2)
            .map(|i| match backend {
                Backend::Userspace => wireguard_go_pid(&c.node(i).iface).unwrap(),
                _ => c.node(i).daemon.as_ref().unwrap().pid(),
            })
            .collect();
        Lane {
            c,
            _servers: servers,
            data_plane,
        }
    }

    fn ticks(&self) -> u64 {
        self.data_plane.iter().map(|&p| cpu_ticks(p)).sum()
    }

    /// One iperf3 run pod->pod or node->node: (Mbit/s, data-plane cores busy on average).
    fn run(&self, pods: bool, tck: f64) -> (f64, f64) {
        let (t0, start) = (self.ticks(), Instant::now());
        let bps = if pods {
            iperf(&self.c.pod("n1a").ns, &self.c.pod("n2a").ip4)
        } else {
            iperf(&self.c.node(1).ns, "10.99.2.1")
        };
        let cores = (self.ticks() - t0) as f64 / tck / start.elapsed().as_secs_f64();
        (bps / 1e6, cores)
    }
}

/// Throughput of the embedded backend next to wireguard-go (`--backend userspace`), both meshes
/// up at once, rounds alternating between them (BENCHMARKS.md, "Embedded data plane: gotatun"):
///
/// ```sh
/// cargo build --release -p wormhole-daemon
/// WORMHOLE_BENCH_BIN=$CARGO_TARGET_DIR/release/wormhole WORMHOLE_THROUGHPUT_RUNS=5 \
///   cargo test -p wormhole-daemon --test it -- --ignored --nocapture measure_throughput
/// ```
///
/// With `WORMHOLE_BEFORE_BIN` naming another build of the daemon, a third mesh runs the embedded
/// backend of that build, in the same rounds (a change to the data plane, before and after).
#[test]
#[ignore = "takes a minute or two; run with --ignored --nocapture measure_throughput (as root)"]
fn measure_throughput() {
    if !root_or_skip("measure_throughput") {
        return;
    }
    let bin = std::env::var("WORMHOLE_BENCH_BIN").unwrap_or_else(|_| BIN.to_owned());
    let before = std::env::var("WORMHOLE_BEFORE_BIN").ok();
    let runs: usize = std::env::var("WORMHOLE_THROUGHPUT_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(THROUGHPUT_RUNS);
    let tck: f64 = sh(&["getconf", "CLK_TCK"]).trim().parse().unwrap();
    // The last lane is wireguard-go, the one the others are divided by.
    let mut lanes: Vec<(&str, Lane)> = Vec::new();
    if let Some(before) = &before {
        lanes.push(("embedded (before)", Lane::new(Backend::Embedded, before)));
    }
    lanes.push(("embedded", Lane::new(Backend::Embedded, &bin)));
    lanes.push(("wireguard-go", Lane::new(Backend::Userspace, &bin)));
    let n = lanes.len();
    std::thread::sleep(Duration::from_millis(500));
    let mut r = String::new();
    let _ = writeln!(
        r,
        "- daemon `{bin}`{}{}; {} CPUs; load average at start: {}",
        build_label(&bin),
        before
            .as_ref()
            .map(|b| format!("; before: `{b}`{}", build_label(b)))
            .unwrap_or_default(),
        sh(&["nproc"]).trim(),
        std::fs::read_to_string("/proc/loadavg").unwrap().trim()
    );
    let names: Vec<String> = lanes
        .iter()
        .map(|(name, _)| format!(" {name} Mbit/s (cores) |"))
        .collect();
    let ratios: Vec<String> = lanes[..n - 1]
        .iter()
        .map(|(name, _)| format!(" {name} ÷ wireguard-go |"))
        .collect();
    let _ = writeln!(r, "\n| round | path |{}{}", names.concat(), ratios.concat());
    let _ = writeln!(r, "|---|---|{}", "---|".repeat(2 * n - 1));
    // (lane, pods) -> (Mbit/s, cores) per round.
    let mut got: std::collections::BTreeMap<(usize, bool), Vec<(f64, f64)>> = Default::default();
    for round in 1..=runs {
        for pods in [true, false] {
            // Rotate which lane goes first, too.
            let order = (0..n).map(|i| (i + round - 1) % n);
            let mut this = vec![(0.0, 0.0); n];
            for i in order {
                this[i] = lanes[i].1.run(pods, tck);
                got.entry((i, pods)).or_default().push(this[i]);
            }
            let cells: Vec<String> = this
                .iter()
                .map(|(m, c)| format!(" {m:.0} ({c:.2}) |"))
                .collect();
            let ratios: Vec<String> = this[..n - 1]
                .iter()
                .map(|(m, _)| format!(" {:.2} |", m / this[n - 1].0))
                .collect();
            let _ = writeln!(
                r,
                "| {round} | {} |{}{}",
                if pods { "pod->pod" } else { "node->node" },
                cells.concat(),
                ratios.concat()
            );
        }
    }
    let _ = writeln!(
        r,
        "\n(iperf3 -t {THROUGHPUT_SECONDS}, one TCP stream, received; cores = CPU time of the data-plane processes on both nodes ÷ wall time: the agents for embedded, wireguard-go for userspace)\n"
    );
    for pods in [true, false] {
        let m = |i: usize| median(got[&(i, pods)].iter().map(|x| x.0).collect());
        let per_core = |i: usize| median(got[&(i, pods)].iter().map(|x| x.0 / x.1).collect());
        let lines: Vec<String> = (0..n - 1)
            .map(|i| {
                format!(
                    "{} {:.0} Mbit/s (**ratio {:.2}**, per core {:.0})",
                    lanes[i].0,
                    m(i),
                    m(i) / m(n - 1),
                    per_core(i)
                )
            })
            .collect();
        let _ = writeln!(
            r,
            "- {}: medians: {}; wireguard-go {:.0} Mbit/s (per core {:.0})",
            if pods { "pod->pod" } else { "node->node" },
            lines.join("; "),
            m(n - 1),
            per_core(n - 1)
        );
    }
    let _ = writeln!(
        r,
        "- load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap().trim()
    );
    println!("\n===== throughput report =====\n{r}");
}

/// Memory and idle CPU at 3 and 1,000 peers, the embedded backend next to the userspace one
/// (the agent plus wireguard-go), both meshes up at once and their idle windows together
/// (BENCHMARKS.md, "Embedded data plane: gotatun"):
///
/// ```sh
/// cargo build --release -p wormhole-daemon
/// WORMHOLE_BENCH_BIN=$CARGO_TARGET_DIR/release/wormhole \
///   cargo test -p wormhole-daemon --test it -- --ignored --nocapture measure_memory
/// ```
///
/// `WORMHOLE_DAEMON_ARGS` adds arguments to every daemon (e.g. `--probe-interval off`).
#[test]
#[ignore = "takes three minutes; run with --ignored --nocapture measure_memory (as root)"]
fn measure_memory() {
    if !root_or_skip("measure_memory") {
        return;
    }
    let bin = std::env::var("WORMHOLE_BENCH_BIN").unwrap_or_else(|_| BIN.to_owned());
    let args = std::env::var("WORMHOLE_DAEMON_ARGS").unwrap_or_default();
    let extra: Vec<&str> = args.split_whitespace().collect();
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap()
            .trim()
            .to_owned()
    };
    let mut r = String::new();
    let _ = writeln!(
        r,
        "- daemon `{bin}`{} {args}; {} CPUs; {}; load average at start: {}",
        build_label(&bin),
        sh(&["nproc"]).trim(),
        first_line(&["wireguard-go", "--version"]),
        load()
    );
    let keys: Vec<String> = (0..=EXTRA_PEERS)
        .map(|_| pubkey(&sh(&[&bin, "genkey"])))
        .collect();
    let res = resources_side_by_side(
        &[Backend::Embedded, Backend::Userspace],
        &bin,
        &extra,
        &keys,
    );
    resources_report(&mut r, &res);
    let total = |x: &Resources| x.rss1000.rss + x.rss1000_wg_go.map_or(0, |w| w.rss);
    if let [embedded, userspace] = &res[..] {
        let _ = writeln!(
            r,
            "- 1,000 peers: embedded {} vs userspace agent + wireguard-go {}: **ratio {:.2}** (goal ≤ 1)",
            mib(total(embedded)),
            mib(total(userspace)),
            total(embedded) as f64 / total(userspace) as f64
        );
    }
    let _ = writeln!(r, "- load average at the end: {}", load());
    println!("\n===== memory report =====\n{r}");
}
