//! `examples/embed_linux.rs` for real: two network namespaces joined by a veth, the example (the
//! agent library with a custom peer source, on the Linux backends) in each, the mesh fed on
//! standard input. They converge: an address of one node's pod CIDR reaches the other's through
//! the tunnel. Needs root (skipped without it, except in CI where it must run). Run it with
//! `cargo test -p wormhole-examples`, which builds the example too (`--test embed_linux` alone
//! does not).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wormhole_core::PrivateKey;

fn root_or_skip(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI runs as root"
    );
    eprintln!("{test}: skipped (needs root)");
    false
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Wall-clock limits scale with `WORMHOLE_TIME_FACTOR` (a slow machine, a VM under TCG).
fn scaled(d: Duration) -> Duration {
    let factor: u32 = std::env::var("WORMHOLE_TIME_FACTOR")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or(1);
    d * factor.max(1)
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

fn in_ns(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The example's binary, built by `cargo test` beside this test's.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    debug.join("examples").join("embed_linux")
}

struct Lab {
    namespaces: Vec<String>,
    agents: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn the_embedded_agent_with_a_custom_source_converges_on_linux() {
    if !root_or_skip("the_embedded_agent_with_a_custom_source_converges_on_linux") {
        return;
    }
    let id = std::process::id() % 10000;
    let names = [format!("whx{id}a"), format!("whx{id}b")];
    let mut lab = Lab {
        namespaces: Vec::new(),
        agents: Vec::new(),
    };
    for ns in &names {
        ip(&["netns", "add", ns]);
        lab.namespaces.push(ns.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let (va, vb) = (format!("whx{id}va"), format!("whx{id}vb"));
    ip(&[
        "-n", &names[0], "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns",
        &names[1],
    ]);
    for (i, (ns, veth)) in names.iter().zip([&va, &vb]).enumerate() {
        let address = format!("192.168.77.{}/24", i + 1);
        ip(&["-n", ns, "addr", "add", &address, "dev", veth]);
        ip(&["-n", ns, "link", "set", veth, "up"]);
        // Like a real host: a default route (the MTU is detected on its interface), through a
        // gateway that is not there, so nothing reaches the other pod CIDR but the tunnel.
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            "192.168.77.254",
            "dev",
            veth,
        ]);
        // An address of this node's pod CIDR, for the test's pings.
        let pod = format!("10.99.{}.1/32", i + 1);
        ip(&["-n", ns, "addr", "add", &pod, "dev", "lo"]);
    }

    assert!(
        !in_ns(
            &names[0],
            &["ping", "-c1", "-W1", "-I", "10.99.1.1", "10.99.2.1"]
        ),
        "the other pod CIDR is reachable without the tunnel: the test proves nothing"
    );

    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<PrivateKey> = (0..2).map(|_| PrivateKey::generate()).collect();
    let mesh: String = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            format!(
                "node-{i} {} 192.168.77.{}:51820 10.99.{}.0/24\n",
                key.public_key(),
                i + 1,
                i + 1
            )
        })
        .collect::<String>()
        + "\n";
    for (i, ns) in names.iter().enumerate() {
        let key_file = dir.path().join(format!("node-{i}.key"));
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_file)
                .unwrap();
            file.write_all(keys[i].to_base64_secret().as_bytes())
                .unwrap();
        }
        let log = std::fs::File::create(dir.path().join(format!("node-{i}.log"))).unwrap();
        let mut agent = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(example())
            .args([
                &format!("node-{i}"),
                key_file.to_str().unwrap(),
                "10.99.0.0/16",
                &format!("whx{id}w{i}"),
                "127.0.0.1:9473",
            ])
            .stdin(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("run the example (built by cargo test)");
        agent
            .stdin
            .as_mut()
            .unwrap()
            .write_all(mesh.as_bytes())
            .unwrap();
        lab.agents.push(agent);
    }
    let logs = || {
        (0..2)
            .map(|i| {
                let text =
                    std::fs::read_to_string(dir.path().join(format!("node-{i}.log"))).unwrap();
                format!("--- node-{i} ---\n{text}")
            })
            .collect::<String>()
    };

    // Converged: node-0's pod address reaches node-1's, through the tunnel (nothing else
    // leads there: checked first).
    let start = Instant::now();
    let mut reached = false;
    while start.elapsed() < scaled(Duration::from_secs(30)) {
        if in_ns(
            &names[0],
            &["ping", "-c1", "-W1", "-I", "10.99.1.1", "10.99.2.1"],
        ) {
            reached = true;
            break;
        }
        for agent in &mut lab.agents {
            assert!(
                agent.try_wait().unwrap().is_none(),
                "an agent exited\n{}",
                logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(reached, "no convergence\n{}", logs());
    eprintln!("converged in {:?}", start.elapsed());
    // The route to the other pod CIDR is the WireGuard interface's.
    let route = Command::new("ip")
        .args(["-n", &names[0], "route", "get", "10.99.2.1"])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains(&format!("whx{id}w0")), "{route}");

    // SIGTERM stops each agent in order (exit status 0).
    for agent in &mut lab.agents {
        let pid = agent.id().to_string();
        // `ip netns exec` execs the example: the child is the agent itself.
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }
    for agent in &mut lab.agents {
        let deadline = Instant::now() + scaled(Duration::from_secs(5));
        let status = loop {
            if let Some(status) = agent.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no stop on SIGTERM\n{}", logs());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status}\n{}", logs());
    }
}
