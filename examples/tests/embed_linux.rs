//! `examples/embed_linux.rs` for real: two network namespaces joined by a veth, the example (the
//! agent library with a custom peer source, on the Linux backends) in each, the mesh fed on
//! standard input. They converge: an address of one node's pod CIDR reaches the other's through
//! the tunnel. Needs root (skipped without it, except in CI where it must run). Run it with
//! `cargo test -p wormhole-examples`, which builds the example too (`--test embed_linux` alone
//! does not).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wormhole_core::PrivateKey;
use wormhole_testkit::{Netns, poll, prefix, root_or_skip, wait_timeout};

/// The example's binary, built by `cargo test` beside this test's.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    debug.join("examples").join("embed_linux")
}

/// The agents, killed on drop (before their namespaces go).
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for agent in &mut self.0 {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

#[test]
fn the_embedded_agent_with_a_custom_source_converges_on_linux() {
    if !root_or_skip("the_embedded_agent_with_a_custom_source_converges_on_linux") {
        return;
    }
    let prefix = prefix("whx");
    let underlay = Netns::underlay(format!("{prefix}u"));
    let nodes: Vec<Netns> = (1..=2).map(|i| underlay.node(&prefix, i)).collect();
    for (i, ns) in nodes.iter().enumerate() {
        // Like a real host: a default route (the MTU is detected on its interface), through a
        // gateway that is not there, so nothing reaches the other pod CIDR but the tunnel.
        ns.sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "192.168.77.254",
            "dev",
            "eth0",
        ]);
        // An address of this node's pod CIDR, for the test's pings.
        ns.sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.99.{}.1/32", i + 1),
            "dev",
            "lo",
        ]);
    }
    let ping = || {
        nodes[0]
            .run(&["ping", "-c1", "-W1", "-I", "10.99.1.1", "10.99.2.1"])
            .status
            .success()
    };
    assert!(
        !ping(),
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
    let mut agents = Agents(Vec::new());
    for (i, ns) in nodes.iter().enumerate() {
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
        let interface = format!("{prefix}w{i}");
        let mut agent = ns
            .command(&[
                example().to_str().unwrap(),
                &format!("node-{i}"),
                key_file.to_str().unwrap(),
                "10.99.0.0/16",
                &interface,
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
        agents.0.push(agent);
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
    // leads there: checked above).
    let start = Instant::now();
    let reached = poll(Duration::from_secs(30), || {
        for agent in &mut agents.0 {
            assert!(
                agent.try_wait().unwrap().is_none(),
                "an agent exited\n{}",
                logs()
            );
        }
        ping().then_some(())
    });
    assert!(reached.is_some(), "no convergence\n{}", logs());
    eprintln!("converged in {:?}", start.elapsed());
    // The route to the other pod CIDR is the WireGuard interface's.
    let route = nodes[0].sh(&["ip", "route", "get", "10.99.2.1"]);
    assert!(route.contains(&format!("{prefix}w0")), "{route}");

    // SIGTERM stops each agent in order (exit status 0).
    for agent in &mut agents.0 {
        // `ip netns exec` execs the example: the child is the agent itself.
        let pid = agent.id().to_string();
        wormhole_testkit::sh(&["kill", "-TERM", &pid]);
    }
    for agent in &mut agents.0 {
        let status = wait_timeout(agent, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no stop on SIGTERM within 5 s\n{}", logs()));
        assert!(status.success(), "{status}\n{}", logs());
    }
}
