//! The command line as a user meets it: keys, refusals with clear messages, and what stopping
//! the daemon leaves behind.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{
    BIN, Backend, CONFLIST, Cluster, Netns, new_key, poll, prefix, pubkey, root_or_skip, run,
    scaled, sh, wait_timeout, write_atomically,
};

/// Runs the binary (in namespace `ns` if given) without our own `WORMHOLE_*`, `KUBE*` and
/// `*BACKTRACE` variables (so errors read as a user sees them), bounded in time.
fn wormhole(ns: Option<&Netns>, args: &[&str]) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("WORMHOLE_") || k.starts_with("KUBE") || k.ends_with("BACKTRACE") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    assert!(
        status.is_some(),
        "wormhole {args:?} did not exit within 20 s"
    );
    child.wait_with_output().unwrap()
}

fn with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn genkey_pubkey_round_trip_and_match_wg() {
    let mut seen = Vec::new();
    for _ in 0..3 {
        let out = wormhole(None, &["genkey"]);
        assert!(out.status.success());
        let private = String::from_utf8(out.stdout).unwrap();
        assert_eq!(private.trim().len(), 44, "{private:?}");
        assert!(!seen.contains(&private), "genkey repeated a key");
        let ours = pubkey(&private);
        let theirs = with_stdin(&["wg", "pubkey"], &private);
        assert!(
            theirs.status.success(),
            "wg pubkey (wireguard-tools): {}",
            String::from_utf8_lossy(&theirs.stderr)
        );
        assert_eq!(ours, String::from_utf8(theirs.stdout).unwrap().trim());
        // And the other way: a key from `wg genkey` gives the same public key in both.
        let wg_key = with_stdin(&["wg", "genkey"], "");
        let wg_key = String::from_utf8(wg_key.stdout).unwrap();
        let theirs = with_stdin(&["wg", "pubkey"], &wg_key);
        assert_eq!(
            pubkey(&wg_key),
            String::from_utf8(theirs.stdout).unwrap().trim()
        );
        seen.push(private);
    }
    let bad = with_stdin(&[BIN, "pubkey"], "not a key\n");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("invalid private key"), "{err}");
}

#[test]
fn run_refuses_bad_invocations_clearly() {
    // As root, in a scratch namespace: if a refusal regressed, the daemon would get to work there
    // rather than on this host.
    let ns = nix::unistd::Uid::effective()
        .is_root()
        .then(|| Netns::new(format!("{}x", prefix())));
    let dir = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], needles: &[&str]| {
        let out = wormhole(ns.as_ref(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "wormhole {args:?} succeeded: {err}");
        for needle in needles {
            assert!(
                err.contains(needle),
                "wormhole {args:?}: {needle:?} not in {err:?}"
            );
        }
    };
    // Every invocation names a key file of ours: the default one is on the host.
    let scratch_key = dir.path().join("scratch.key");
    let scratch_key = scratch_key.to_str().unwrap();
    refused(
        &["run", "--node-name", "n1", "--key-file", scratch_key],
        &["no peer source", "--peers"],
    );
    // Outside a cluster and without --kubeconfig, Kubernetes mode says what to pass.
    refused(
        &[
            "run",
            "--node-name",
            "n1",
            "--kubernetes",
            "--key-file",
            scratch_key,
        ],
        &["not running in a cluster", "--kubeconfig"],
    );
    refused(
        &[
            "run",
            "--node-name",
            "n1",
            "--kubernetes",
            "--peers",
            "/nonexistent",
            "--key-file",
            scratch_key,
        ],
        &["--peers and --kubernetes exclude each other"],
    );

    let peers = dir.path().join("peers.toml");
    let key = dir.path().join("private.key");
    let public = new_key(&key);
    std::fs::write(
        &peers,
        format!(
            "cluster_cidrs = [\"10.99.0.0/16\"]\n[[node]]\nname = \"n1\"\npublic_key = \"{public}\"\n\
             pod_cidrs = [\"10.99.1.0/24\"]\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cni = dir.path().join("cni");
    let iface = format!("{}x", prefix());
    refused(
        &[
            "run",
            "--node-name",
            "n1",
            "--peers",
            peers.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
            "--interface",
            &iface,
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--backend",
            "embedded",
        ],
        &[key.to_str().unwrap(), "chmod 600"],
    );
    assert!(!cni.exists(), "a conflist was written with a refused key");
    if let Some(ns) = &ns {
        let link = ns.run(&["ip", "link", "show", &iface]);
        assert!(!link.status.success(), "an interface was created");
    }
    // The key was left as it was, not replaced.
    assert_eq!(pubkey(&std::fs::read_to_string(&key).unwrap()), public);
}

#[test]
fn sigterm_leaves_the_network_and_cleanup_on_exit_removes_it() {
    if root_or_skip("sigterm_leaves_the_network_and_cleanup_on_exit_removes_it") {
        sigterm_leaves_the_network_and_cleanup_on_exit_removes_it_on(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn sigterm_leaves_the_network_and_cleanup_on_exit_removes_it_kernel() {
    if root_or_skip("sigterm_leaves_the_network_and_cleanup_on_exit_removes_it_kernel") {
        sigterm_leaves_the_network_and_cleanup_on_exit_removes_it_on(Backend::Kernel);
    }
}

fn sigterm_leaves_the_network_and_cleanup_on_exit_removes_it_on(backend: Backend) {
    // Userspace: the data plane lives in wireguard-go, so it can outlive the daemon.
    let mut c = Cluster::new(2, backend);
    c.start_all(&[]);
    c.add_pods(1, &["a"]);
    c.add_pods(2, &["a"]);
    let talk = |c: &Cluster| {
        let (n1a, n2a) = (c.pod("n1a"), c.pod("n2a"));
        n1a.ping(&n2a.ip4, 2) && n2a.ping(&n1a.ip6, 2)
    };
    assert!(talk(&c));
    let conflist = c.node(1).cni_dir().join(CONFLIST);
    let other = c.node(1).cni_dir().join("99-other.conflist");
    std::fs::write(&other, "{}").unwrap();

    let present = |c: &Cluster| {
        let n1 = c.node(1);
        let link = n1
            .ns
            .run(&["ip", "link", "show", &n1.iface])
            .status
            .success();
        let routes = n1.ns.wormhole_routes();
        let routes = routes.contains("10.99.2.0/24") && routes.contains("fd99:0:0:2::/64");
        let table = n1
            .ns
            .run(&["nft", "list", "table", "inet", "wormhole"])
            .status
            .success();
        [link, routes, table, conflist.exists()]
    };
    assert_eq!(present(&c), [true; 4]);

    let n1 = c.node_mut(1);
    let status = n1.daemon.take().unwrap().terminate();
    assert!(status.success(), "SIGTERM: {status}\n{}", n1.log_tail());
    assert_eq!(
        present(&c),
        [true; 4],
        "[interface, routes, nft table, conflist] after SIGTERM\n{}",
        c.logs()
    );
    // Pods keep talking while no daemon runs.
    assert!(talk(&c), "pods stopped talking after SIGTERM\n{}", c.logs());
    assert!(c.node(1).log_tail().contains("left in place"));

    let n1 = c.node_mut(1);
    n1.start(&["--cleanup-on-exit"]);
    n1.wait_ready();
    let status = n1.daemon.take().unwrap().terminate();
    assert!(status.success(), "SIGTERM: {status}\n{}", n1.log_tail());
    let gone = poll(Duration::from_secs(5), || {
        (present(&c) == [false; 4]).then_some(())
    });
    assert!(
        gone.is_some(),
        "[interface, routes, nft table, conflist] after --cleanup-on-exit: {:?}\n{}",
        present(&c),
        c.logs()
    );
    assert!(
        other.exists(),
        "--cleanup-on-exit removed someone else's conflist"
    );
}

/// Rounds of [`signals_stop_the_agent`] on the backends of this host (the 20), and in the
/// VM lane, where the kernel twin runs at time factor 4 within a fixed budget.
const SIGNAL_ROUNDS: usize = 20;
const SIGNAL_ROUNDS_KERNEL: usize = 5;

/// The agent's phases after start, as moments (ms after it catches the signal) to stop it at:
/// start-up (key, MTU, WireGuard device: a few ms here), the first passes, and steady state.
const SIGNAL_PHASES: [(&str, std::ops::Range<u64>); 3] = [
    ("start-up", 0..15),
    ("first pass", 15..500),
    ("steady state", 500..1500),
];

/// Whether process `pid` catches `signal` (`TERM`, `INT`): its `SigCgt` mask, polled every
/// millisecond for at most 10 s ([`scaled`]).
fn catches(pid: u32, signal: &str) -> bool {
    let bit = match signal {
        "TERM" => 1u64 << (15 - 1),
        "INT" => 1u64 << (2 - 1),
        _ => panic!("signal {signal}"),
    };
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(10));
    while std::time::Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
        if caught.is_some_and(|mask| mask & bit != 0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// A small xorshift64* generator: random moments without a dependency, reproducible from the
/// seed a failure prints (`WORMHOLE_SIGNAL_SEED=N` replays it).
struct Moments(u64);

impl Moments {
    fn new() -> (Self, u64) {
        let seed = std::env::var("WORMHOLE_SIGNAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                t.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        (Moments(seed | 1), seed)
    }

    fn in_range(&mut self, range: &std::ops::Range<u64>) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        range.start + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (range.end - range.start)
    }
}

/// SIGTERM at a random moment after start stops the agent within 2 s ([`scaled`]) with status 0,
/// `rounds` times, on `backend`, and `--cleanup-on-exit` then ran: the interface and the nft table
/// are gone. The moments are spread over the agent's phases ([`SIGNAL_PHASES`], in turn); every
/// other round starts over a network a killed (-9) agent left behind, so that the agent also
/// adopts before it is stopped. A last round sends SIGINT.
fn signals_stop_the_agent(backend: Backend, rounds: usize) {
    let (mut moments, seed) = Moments::new();
    let mut c = Cluster::new(2, backend);
    c.node_mut(2).start(&[]);
    c.node_mut(2).wait_ready();
    let mut stops = Vec::new();
    let mut during_start_up = 0;
    for round in 0..=rounds {
        let n1 = c.node_mut(1);
        if round % 2 == 1 {
            // The network of an agent that died without stopping (the next one adopts it).
            n1.start(&[]);
            n1.wait_ready();
            n1.daemon.take().unwrap().kill9();
        }
        let _ = std::fs::remove_file(n1.log());
        let (phase, range) = &SIGNAL_PHASES[round % SIGNAL_PHASES.len()];
        let wait_ms = moments.in_range(range);
        let signal = if round == rounds { "INT" } else { "TERM" };
        let what = format!(
            "{backend:?}, round {round} (seed {seed}): SIG{signal} {wait_ms} ms after start ({phase})"
        );
        n1.start(&["--cleanup-on-exit"]);
        // After start = from the moment the agent catches the signal (its first act; before
        // that the kernel's default action would end it, which no program can prevent).
        let pid = n1.daemon.as_ref().unwrap().pid();
        assert!(
            catches(pid, signal),
            "{what}: the agent never caught SIG{signal}\n{}",
            n1.log_tail()
        );
        std::thread::sleep(Duration::from_millis(wait_ms));
        let sent = std::time::Instant::now();
        let exited = n1
            .daemon
            .take()
            .unwrap()
            .signal_and_wait(signal, Duration::from_secs(2));
        let stop = sent.elapsed();
        assert!(
            exited.is_some_and(|s| s.success()),
            "{what}: {exited:?} (not stopped with status 0 within {:?})\n{}",
            scaled(Duration::from_secs(2)),
            n1.log_tail()
        );
        stops.push(stop);
        let log = std::fs::read_to_string(n1.log()).unwrap_or_default();
        during_start_up += usize::from(log.contains("stopped during start-up"));
        // --cleanup-on-exit ran before the exit: the interface and the nft table are gone.
        let link = n1.ns.run(&["ip", "link", "show", &n1.iface]);
        let table = n1.ns.run(&["nft", "list", "table", "inet", "wormhole"]);
        assert!(
            !link.status.success() && !table.status.success(),
            "{what}: left behind despite --cleanup-on-exit: interface {}, nft table {}\n{}",
            link.status.success(),
            table.status.success(),
            n1.log_tail()
        );
    }
    stops.sort();
    eprintln!(
        "signals_stop_the_agent {backend:?}: {} stops ({during_start_up} during start-up; seed \
         {seed}), signal to exit: median {:?}, max {:?}",
        stops.len(),
        stops[stops.len() / 2],
        stops[stops.len() - 1]
    );
}

#[test]
fn signals_stop_the_agent_embedded() {
    if root_or_skip("signals_stop_the_agent_embedded") {
        signals_stop_the_agent(Backend::Embedded, SIGNAL_ROUNDS);
    }
}

#[test]
fn signals_stop_the_agent_userspace() {
    if root_or_skip("signals_stop_the_agent_userspace") {
        signals_stop_the_agent(Backend::Userspace, SIGNAL_ROUNDS);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn signals_stop_the_agent_kernel() {
    if root_or_skip("signals_stop_the_agent_kernel") {
        signals_stop_the_agent(Backend::Kernel, SIGNAL_ROUNDS_KERNEL);
    }
}

/// `wormhole rotate-key` under a running agent, with pair PSKs from a cluster secret (a key
/// change changes every pair's PSK too): the agent takes the new key at its next pass, keeps
/// running (no library panic aborts it), and the pair talks again once the peers file has the
/// new public key.
fn key_rotation_under_a_running_agent(backend: Backend) {
    let mut c = Cluster::new(2, backend);
    let secret = c.work.path().join("cluster.psk");
    std::fs::write(&secret, sh(&["wg", "genpsk"])).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let psk = format!("--psk-file={}", secret.display());
    c.start_all(&[&psk]);
    c.add_pods(1, &["a"]);
    c.add_pods(2, &["a"]);
    assert!(
        c.pod("n1a").ping(&c.pod("n2a").ip4, 3),
        "no traffic before the rotation"
    );

    let n1 = c.node_mut(1);
    let out = run(&[
        BIN,
        "rotate-key",
        "--key-file",
        n1.key_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    n1.public_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    write_atomically(&c.peers, &c.peers_text(&[1, 2], ""));

    let (n1a, n2a) = (c.pod("n1a"), c.pod("n2a"));
    let talking = poll(Duration::from_secs(20), || {
        (n1a.ping(&n2a.ip4, 1) && n2a.ping(&n1a.ip6, 1)).then_some(())
    });
    for i in [1, 2] {
        let node = c.node_mut(i);
        let exited = node.daemon.as_mut().unwrap().try_wait();
        assert!(
            exited.is_none(),
            "{backend:?}: n{i} exited during the rotation: {exited:?}\n{}",
            node.log_tail()
        );
    }
    assert!(
        talking.is_some(),
        "{backend:?}: no traffic after the rotation\n{}",
        c.logs()
    );
    let status = c.node(1).status_json();
    assert_eq!(
        status["public_key"],
        c.node(1).public_key.as_str(),
        "{status}"
    );
}

#[test]
fn key_rotation_under_a_running_agent_embedded() {
    if root_or_skip("key_rotation_under_a_running_agent_embedded") {
        key_rotation_under_a_running_agent(Backend::Embedded);
    }
}

#[test]
fn key_rotation_under_a_running_agent_userspace() {
    if root_or_skip("key_rotation_under_a_running_agent_userspace") {
        key_rotation_under_a_running_agent(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn key_rotation_under_a_running_agent_kernel() {
    if root_or_skip("key_rotation_under_a_running_agent_kernel") {
        key_rotation_under_a_running_agent(Backend::Kernel);
    }
}

/// `wg set` on the agent's interface, the way an operator pokes at a node: on the embedded
/// backend it goes through the agent's own UAPI socket and is applied through gotatun's API (the
/// peer changes in place). The agent keeps running and its next pass repairs the peer.
fn wg_set_by_hand_cannot_crash_the_agent(backend: Backend) {
    let mut c = Cluster::new(2, backend);
    c.start_all(&["--resync", "1s"]);
    let (n1, n2_key) = (c.node(1), c.node(2).public_key.clone());
    let allowed = |n1: &crate::harness::Node| n1.wg(&["allowed-ips"]);
    let before = allowed(n1);
    assert!(before.contains("10.99.2.0/24"), "{before}");
    n1.ns.sh(&[
        "wg",
        "set",
        &n1.iface,
        "peer",
        &n2_key,
        "allowed-ips",
        "10.99.2.0/24,fd99:0:0:2::/64,10.99.200.0/24",
        "persistent-keepalive",
        "7",
    ]);
    let repaired = poll(Duration::from_secs(15), || {
        (allowed(c.node(1)) == before).then_some(())
    });
    let n1 = c.node_mut(1);
    let exited = n1.daemon.as_mut().unwrap().try_wait();
    assert!(
        exited.is_none(),
        "{backend:?}: the agent died after `wg set`: {exited:?}\n{}",
        n1.log_tail()
    );
    assert!(
        repaired.is_some(),
        "{backend:?}: not repaired: {}\n{}",
        allowed(c.node(1)),
        c.logs()
    );

    // The listen port by hand: applied (on the embedded device too, since gotatun), then
    // repaired; the agent lives on.
    let n1 = c.node(1);
    let out = n1.ns.run(&["wg", "set", &n1.iface, "listen-port", "51999"]);
    assert!(out.status.success(), "{backend:?}: {out:?}");
    let port = poll(Duration::from_secs(15), || {
        (n1.wg(&["listen-port"]).trim() == "51820").then_some(())
    });
    assert!(port.is_some(), "{backend:?}: listen port not 51820 again");
    let n1 = c.node_mut(1);
    let exited = n1.daemon.as_mut().unwrap().try_wait();
    assert!(
        exited.is_none(),
        "{backend:?}: the agent died: {exited:?}\n{}",
        n1.log_tail()
    );
}

#[test]
fn wg_set_by_hand_cannot_crash_the_agent_embedded() {
    if root_or_skip("wg_set_by_hand_cannot_crash_the_agent_embedded") {
        wg_set_by_hand_cannot_crash_the_agent(Backend::Embedded);
    }
}

#[test]
fn wg_set_by_hand_cannot_crash_the_agent_userspace() {
    if root_or_skip("wg_set_by_hand_cannot_crash_the_agent_userspace") {
        wg_set_by_hand_cannot_crash_the_agent(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn wg_set_by_hand_cannot_crash_the_agent_kernel() {
    if root_or_skip("wg_set_by_hand_cannot_crash_the_agent_kernel") {
        wg_set_by_hand_cannot_crash_the_agent(Backend::Kernel);
    }
}

/// Runs the binary with `env` set on top of [`wormhole`]'s clean environment.
fn wormhole_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("WORMHOLE_") || k.starts_with("KUBE") || k.ends_with("BACKTRACE") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// An address where nothing listens.
fn closed_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// Exit codes are a contract, written in `--help` and docs/configuration.md: 0 all well, 1 an error, 2 a
/// usage error (clap's, and ours), 3 the agent (or no node) could be reached, 4 something is
/// not ok. A user error never prints a backtrace, whatever `RUST_BACKTRACE` says.
#[test]
fn exit_codes_are_a_contract() {
    use crate::cluster::{serve, view};
    let code = |args: &[&str]| {
        let out = wormhole(None, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Usage errors: 2, from clap or from our own checks of the options.
    for args in [
        &["status", "--no-such-flag"][..],
        &["no-such-command"],
        &["status", "--admin-addr", "not an address"],
        &["status", "--admin", "127.0.0.1:1"],
        &["status", "--kubeconfig", "/nonexistent"],
    ] {
        let (got, err) = code(args);
        assert_eq!(got, Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    // The agent cannot be reached: 3.
    let closed = closed_port();
    let (got, err) = code(&["status", "--admin-addr", &closed]);
    assert_eq!(got, Some(3), "{err}");
    assert!(
        err.contains(&format!("cannot reach the wormhole agent at {closed}")),
        "{err}"
    );
    // A peer is not ok: 4 (the table is printed).
    let sick = serve(&view("n1", &[("n2", "ok"), ("n3", "never")]));
    let out = wormhole(None, &["status", "--admin-addr", &sick]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("never"));
    // All well: 0.
    let well = serve(&view("n1", &[("n2", "ok"), ("n3", "ok")]));
    let (got, err) = code(&["status", "--admin-addr", &well]);
    assert_eq!(got, Some(0), "{err}");
    // An error that is neither: 1 (a private key that does not parse).
    let bad = with_stdin(&[BIN, "pubkey"], "not a key\n");
    assert_eq!(bad.status.code(), Some(1));

    // Documented where a user looks.
    for args in [&["--help"][..], &["status", "--help"]] {
        let out = wormhole(None, args);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Exit codes:"), "{args:?}: {help}");
        for line in ["2  usage", "3  unreachable", "4  not ok"] {
            assert!(help.contains(line), "{args:?}: {line:?} not in {help}");
        }
    }
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    assert!(docs.contains("## Exit codes"), "docs/configuration.md");

    // No backtrace for a user error, even when asked for one.
    for env in [("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "full")] {
        for args in [
            &["status", "--admin-addr", closed.as_str()][..],
            &[
                "peer-config",
                "laptop",
                "--peers",
                "/nonexistent/peers.toml",
            ],
        ] {
            let out = wormhole_with(&[env], args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?}");
            assert!(
                !err.to_lowercase().contains("backtrace") && !err.contains(" at /"),
                "{env:?} {args:?}: {err}"
            );
            assert!(err.starts_with("error: "), "{env:?} {args:?}: {err}");
        }
    }
}

/// `wormhole peer-config` prints a configuration without the nodes the agents refuse, but says
/// which and why (stderr, and a comment in the file), and exits 4 since it is incomplete; a
/// peers file whose nodes are all refused says why each was, not just "no valid key".
#[test]
fn peer_config_says_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let key =
        || crate::harness::pubkey(&String::from_utf8(wormhole(None, &["genkey"]).stdout).unwrap());
    let (a, b, laptop) = (key(), key(), key());
    let peers = dir.path().join("peers.toml");
    let head = "cluster_cidrs = [\"10.99.0.0/16\"]\nexternal_cidrs = [\"10.98.0.0/24\"]\n";
    let external = format!(
        "[[external]]\nname = \"laptop\"\npublic_key = \"{laptop}\"\nallowed_ips = [\"10.98.0.2/32\"]\n"
    );
    // n2's pod CIDR lies outside the cluster CIDR: every agent refuses it.
    std::fs::write(
        &peers,
        format!(
            "{head}[[node]]\nname = \"n1\"\npublic_key = \"{a}\"\nendpoint = \"192.168.77.1:51820\"\n\
             pod_cidrs = [\"10.99.1.0/24\"]\n\
             [[node]]\nname = \"n2\"\npublic_key = \"{b}\"\nendpoint = \"192.168.77.2:51820\"\n\
             pod_cidrs = [\"10.1.2.0/24\"]\n{external}"
        ),
    )
    .unwrap();
    let path = peers.to_str().unwrap();
    let out = wormhole(None, &["peer-config", "laptop", "--peers", path]);
    let (conf, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(conf.contains("# node n1\n[Peer]"), "{conf}");
    assert!(!conf.contains("# node n2\n"), "{conf}");
    for text in [&conf, &err] {
        assert!(text.contains("n2"), "{text}");
        assert!(text.contains("outside the cluster CIDRs"), "{text}");
    }

    // A misspelled field: every node refused, each with its reason.
    std::fs::write(
        &peers,
        format!(
            "{head}[[node]]\nname = \"n1\"\npublickey = \"{a}\"\npod_cidrs = [\"10.99.1.0/24\"]\n{external}"
        ),
    )
    .unwrap();
    let out = wormhole(None, &["peer-config", "laptop", "--peers", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert!(err.contains("publickey"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
    assert!(err.contains(":3 node[0]"), "the entry's line: {err}");
}
