//! The plumbing of the end-to-end suite, all through real programs: an "underlay" network
//! namespace with a bridge; "nodes" (namespaces plugged into it) each running the built `wormhole`
//! binary; "pods" (namespaces) attached to a node by the standard CNI plugins, driven with the
//! conflist that node's daemon wrote. Everything is removed on drop, also when a test panics.
//!
//! Names start with `whe{pid % 1000}{n}` so that tests can run in parallel threads and never
//! meet the demo's (`whdemo-*`) or the `wormhole-linux` suite's namespaces.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_wormhole");
/// Where Debian's containernetworking-plugins live.
pub(crate) const CNI_PATH: &str = "/usr/lib/cni";
/// Where userspace WireGuard (and the embedded device) put their UAPI sockets.
const SOCKET_DIR: &str = "/var/run/wireguard";
/// The conflist the daemon writes.
pub(crate) const CONFLIST: &str = "10-wormhole.conflist";
/// The daemon's default admin address (each node has its own loopback).
pub(crate) const ADMIN: &str = "127.0.0.1:9473";

/// True when running as root; otherwise says loudly that the test is skipped.
pub(crate) fn root_or_skip(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    // Straight to stderr, past the test harness's output capture: a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (network namespaces, TUN, nftables, CNI plugins); \
         run `sudo -E cargo test -p wormhole-daemon --test it` (CI runs it as root)"
    );
    false
}

/// Runs a command and returns its output, whatever its status.
pub(crate) fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command, panicking with its output if it fails; returns its stdout.
pub(crate) fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `d` times `WORMHOLE_TIME_FACTOR` (default 1): wall-clock limits stretch on slow machines (the
/// VM lane runs under TCG, 3-10x slower) instead of failing there.
pub(crate) fn scaled(d: Duration) -> Duration {
    let factor = std::env::var("WORMHOLE_TIME_FACTOR")
        .ok()
        .and_then(|f| f.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0);
    d.mul_f64(factor)
}

/// Calls `probe` every 50 ms until it returns `Some`, for at most `timeout` ([`scaled`]).
pub(crate) fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let timeout = scaled(timeout);
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit, at most `timeout`; kills it and returns `None` after that.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let status = poll(timeout, || child.try_wait().expect("try_wait"));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// Runs `f` on a fresh thread that has entered network namespace `ns` (the calling thread, and
/// so the test process, stays where it is). Sockets `f` creates belong to `ns`.
pub(crate) fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&path);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

/// `GET path` on the admin server of the daemon in `ns`: the status code and the body.
pub(crate) fn http_get(ns: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = ADMIN.parse().unwrap();
    in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: wormhole\r\n\r\n").ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    })
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique short prefix for one test's namespaces and interfaces.
pub(crate) fn prefix() -> String {
    format!(
        "whe{}{}",
        std::process::id() % 1000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Writes `text` to `path` atomically (temporary file in the same directory + rename), the way
/// the peers file must be changed.
pub(crate) fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// `wormhole genkey` into `path` (0600); returns the public key from `wormhole pubkey`.
pub(crate) fn new_key(path: &Path) -> String {
    let private = sh(&[BIN, "genkey"]);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    pubkey(&private)
}

/// `wormhole pubkey` of a private key.
pub(crate) fn pubkey(private: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "wormhole pubkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A network namespace, deleted (with every process in it) on drop.
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    pub(crate) fn new(name: String) -> Self {
        let _ = run(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// `ip netns exec NAME args...`, unchecked.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// `ip netns exec NAME args...`, checked; returns stdout.
    pub(crate) fn sh(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `args` in the background with stdout piped (killed at the latest with the
    /// namespace).
    pub(crate) fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Starts tcpdump on `iface` in this namespace; returns once it captures.
    pub(crate) fn capture(&self, iface: &str, dir: &Path) -> Capture {
        let file = dir.join(format!("{}-{iface}.pcap", self.name));
        let mut child = self
            .command(&[
                "tcpdump",
                "-i",
                iface,
                "--immediate-mode",
                "-nn",
                "-U",
                "-s",
                "200",
                "-w",
            ])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // tcpdump says "listening on IFACE" once the capture is active.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening on") {
                    let _ = tx.send(Ok(()));
                }
                said.push(line);
            }
            let _ = tx.send(Err(said.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Capture { child, file },
            Ok(Err(said)) => panic!("tcpdump on {iface} in {} failed: {said}", self.name),
            Err(e) => panic!("tcpdump on {iface} in {} did not start: {e}", self.name),
        }
    }

    /// `ip route show proto 87` (the daemon's routes), both families, one route per line.
    pub(crate) fn wormhole_routes(&self) -> String {
        let mut routes = self.sh(&["ip", "-4", "route", "show", "proto", "87"]);
        routes += &self.sh(&["ip", "-6", "route", "show", "proto", "87"]);
        routes
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let pids = run(&["ip", "netns", "pids", &self.name]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = run(&["kill", "-9", pid]);
        }
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A running tcpdump, killed on drop.
pub(crate) struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Stops the capture; returns one line per packet (`tcpdump -r FILE -nn`).
    pub(crate) fn stop(mut self) -> Vec<String> {
        // Let packets in flight reach the file: on a busy machine tcpdump lags, so wait until
        // the file has stopped growing for 300 ms (at most 5 s).
        let size = || std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let (mut last, mut still, started) = (size(), 0, Instant::now());
        while still < 3 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        let _ = run(&["kill", "-INT", &self.child.id().to_string()]);
        let _ = wait_timeout(&mut self.child, Duration::from_secs(5));
        let out = run(&["tcpdump", "-r", self.file.to_str().unwrap(), "-nn"]);
        assert!(
            out.status.success(),
            "tcpdump -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sorts a capture of the underlay (`tcpdump -r -nn` lines): the number of WireGuard packets
/// (UDP between node addresses on port 51820), and every packet that is neither that nor the
/// underlay's ARP and IGMP, or that shows anything of the overlay.
pub(crate) fn underlay_offenders(lines: &[String]) -> (usize, Vec<&str>) {
    let mut wireguard = 0;
    let mut offenders = Vec::new();
    for line in lines {
        let t: Vec<&str> = line.split_whitespace().collect();
        let leaks = ["10.99.", "fd99", "ICMP", "Flags ["]
            .iter()
            .any(|n| line.contains(n));
        let is_wireguard = t.len() > 5
            && t[1] == "IP"
            && t[2].starts_with("192.168.77.")
            && t[2].ends_with(".51820")
            && t[3] == ">"
            && t[4].starts_with("192.168.77.")
            && t[4].ends_with(".51820:")
            && t[5].starts_with("UDP");
        // The underlay's own housekeeping: ARP, and IGMP reports of its interfaces.
        let housekeeping = t.get(1) == Some(&"ARP,")
            || (t.get(1) == Some(&"IP")
                && t.get(4).is_some_and(|d| d.starts_with("224.0.0."))
                && line.contains(": igmp "));
        if leaks || !(is_wireguard || housekeeping) {
            offenders.push(line.as_str());
        } else if is_wireguard {
            wireguard += 1;
        }
    }
    (wireguard, offenders)
}

/// Asserts a capture of the underlay holds only WireGuard (and ARP, IGMP); returns the WireGuard
/// packets.
pub(crate) fn assert_only_wireguard(lines: &[String]) -> usize {
    let (wireguard, offenders) = underlay_offenders(lines);
    assert!(
        offenders.is_empty(),
        "{} of {} packets on the underlay are not WireGuard UDP/51820, e.g.:\n{}",
        offenders.len(),
        lines.len(),
        offenders[..offenders.len().min(20)].join("\n")
    );
    wireguard
}

/// A WireGuard implementation the daemon can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// boringtun inside the daemon.
    Embedded,
    /// wireguard-go, a separate process.
    Userspace,
    /// The kernel module (only in the VM lane: `scripts/vm-lane.sh`).
    Kernel,
}

impl Backend {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Userspace => "userspace",
            Backend::Kernel => "kernel",
        }
    }
}

/// A running `wormhole run`, killed (SIGKILL) on drop.
pub(crate) struct Daemon {
    child: Child,
}

impl Daemon {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the daemon has exited.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill9(mut self) {
        self.child.kill().expect("kill -9 the daemon");
        self.child.wait().expect("reap the daemon");
    }

    /// Sends `signal` (`TERM`, `INT`) and waits at most `limit` ([`scaled`]) for the exit.
    pub(crate) fn signal_and_wait(mut self, signal: &str, limit: Duration) -> Option<ExitStatus> {
        sh(&["kill", &format!("-{signal}"), &self.pid().to_string()]);
        wait_timeout(&mut self.child, limit)
    }

    /// SIGTERM; waits (bounded) for the exit.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        sh(&["kill", "-TERM", &self.pid().to_string()]);
        wait_timeout(&mut self.child, Duration::from_secs(15))
            .expect("the daemon did not exit within 15 s of SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: a namespace on the underlay (192.168.77.i), a key, a work directory, and maybe a
/// running daemon.
pub(crate) struct Node {
    pub(crate) daemon: Option<Daemon>,
    pub(crate) ns: Netns,
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) iface: String,
    pub(crate) backend: Backend,
    pub(crate) dir: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) public_key: String,
    /// The peers file this node's daemon reads.
    pub(crate) peers: PathBuf,
}

impl Node {
    pub(crate) fn cni_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// This node's entry in a peers file.
    pub(crate) fn entry(&self) -> String {
        let i = self.index;
        format!(
            "\n[[node]]\nname = \"{}\"\npublic_key = \"{}\"\nendpoint = \"192.168.77.{i}:51820\"\n\
             pod_cidrs = [\"10.99.{i}.0/24\", \"fd99:0:0:{i}::/64\"]\n",
            self.name, self.public_key
        )
    }

    /// The arguments of `wormhole run` for this node, `extra` appended.
    pub(crate) fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--node-name",
            &self.name,
            "--peers",
            self.peers.to_str().unwrap(),
            "--backend",
            self.backend.as_str(),
            "--interface",
            &self.iface,
            "--key-file",
            self.key_file.to_str().unwrap(),
            "--cni-conf-dir",
            self.cni_dir().to_str().unwrap(),
        ]
        .map(str::to_owned)
        .into();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Starts `wormhole run` in the node (log appended to `dir/log`).
    pub(crate) fn start(&mut self, extra: &[&str]) {
        let args = self.args(extra);
        self.start_with(args);
    }

    /// Starts the binary in the node with exactly `args` (log appended to `dir/log`).
    pub(crate) fn start_with(&mut self, args: Vec<String>) {
        assert!(self.daemon.is_none(), "{}: already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, BIN])
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start wormhole run");
        self.daemon = Some(Daemon { child });
    }

    /// The end of the daemon's log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} log (last lines) ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(80)..].join("\n")
        )
    }

    /// Waits (bounded) until the daemon answers `/readyz` with 200.
    pub(crate) fn wait_ready(&mut self) {
        let ns = self.ns.name.clone();
        let daemon = self.daemon.as_mut().expect("daemon started");
        let mut exited = None;
        let ready = poll(Duration::from_secs(30), || {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                exited = Some(status);
                return Some(false);
            }
            http_get(&ns, "/readyz")
                .filter(|(code, _)| *code == 200)
                .map(|_| true)
        });
        assert!(
            ready == Some(true),
            "{} not ready (exited: {exited:?})\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// The conflist the daemon wrote, once it is there (bounded wait).
    pub(crate) fn conflist(&self) -> Value {
        let path = self.cni_dir().join(CONFLIST);
        let text = poll(Duration::from_secs(10), || {
            std::fs::read_to_string(&path).ok()
        })
        .unwrap_or_else(|| panic!("{} wrote no conflist\n{}", self.name, self.log_tail()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
    }

    /// `wormhole status` with `args` in the node: exit status and stdout.
    pub(crate) fn status(&self, args: &[&str]) -> (ExitStatus, String) {
        let mut full = vec![BIN, "status"];
        full.extend_from_slice(args);
        let out = self.ns.run(&full);
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `wormhole status -o json`, parsed.
    pub(crate) fn status_json(&self) -> Value {
        let out = self.ns.run(&[BIN, "status", "-o", "json"]);
        let (text, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: wormhole status -o json ({}): {e}: {text}{err}\n{}",
                self.name,
                out.status,
                self.log_tail()
            )
        })
    }

    /// `wg show IFACE args...`.
    pub(crate) fn wg(&self, args: &[&str]) -> String {
        let mut full = vec!["wg", "show", &self.iface];
        full.extend_from_slice(args);
        self.ns.sh(&full)
    }

    /// The device's peers' public keys.
    pub(crate) fn wg_peers(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.wg(&["peers"]).lines().map(str::to_owned).collect();
        keys.sort();
        keys
    }

    /// `wg show IFACE latest-handshakes`: public key → seconds since the epoch (0: never).
    pub(crate) fn handshakes(&self) -> BTreeMap<String, u64> {
        self.wg(&["latest-handshakes"])
            .lines()
            .filter_map(|l| {
                let (key, t) = l.split_once('\t')?;
                Some((key.to_owned(), t.trim().parse().ok()?))
            })
            .collect()
    }

    /// Attaches a new pod (namespace `{node ns}{pod}`) with the CNI plugins of this node's
    /// conflist, run in order as a container runtime does.
    pub(crate) fn add_pod(&self, pod: &str) -> Pod {
        let conf = self.conflist();
        let ns = Netns::new(format!("{}{pod}", self.ns.name));
        let mut prev: Option<Value> = None;
        for plugin in conf["plugins"].as_array().expect("plugins") {
            let mut p = plugin.clone();
            p["name"] = conf["name"].clone();
            p["cniVersion"] = conf["cniVersion"].clone();
            if p.get("ipam").is_some() {
                // host-local's default dataDir is shared by every node on this machine.
                p["ipam"]["dataDir"] = json!(self.dir.join("ipam"));
            }
            if let Some(prev) = &prev {
                p["prevResult"] = prev.clone();
            }
            let ty = p["type"].as_str().expect("type").to_owned();
            let mut child = Command::new("ip")
                .args(["netns", "exec", &self.ns.name])
                .arg(Path::new(CNI_PATH).join(&ty))
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", &ns.name)
                .env("CNI_NETNS", format!("/var/run/netns/{}", ns.name))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", CNI_PATH)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("CNI plugin {ty}: {e} (install containernetworking-plugins)")
                });
            child
                .stdin
                .take()
                .unwrap()
                .write_all(p.to_string().as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "CNI {ty} ADD for {}: {}{}\nconfig: {p}",
                ns.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            prev = Some(serde_json::from_slice(&out.stdout).expect("CNI result"));
        }
        let result = prev.expect("a result");
        let address = |v6: bool| {
            result["ips"]
                .as_array()
                .expect("ips")
                .iter()
                .filter_map(|ip| ip["address"].as_str())
                .find(|a| a.contains(':') == v6)
                .and_then(|a| a.split('/').next())
                .unwrap_or_else(|| panic!("no IPv{} in {result}", if v6 { 6 } else { 4 }))
                .to_owned()
        };
        Pod {
            name: format!("n{}{pod}", self.index),
            node: self.index,
            ip4: address(false),
            ip6: address(true),
            ns,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.daemon.take();
        // A userspace or embedded device killed with its namespace leaves its socket behind.
        let _ = std::fs::remove_file(format!("{SOCKET_DIR}/{}.sock", self.iface));
    }
}

/// A pod: a namespace with an `eth0` on its node's bridge.
pub(crate) struct Pod {
    pub(crate) ns: Netns,
    /// `n{node}{pod}`, for messages.
    pub(crate) name: String,
    pub(crate) node: usize,
    pub(crate) ip4: String,
    pub(crate) ip6: String,
}

impl Pod {
    /// One `ping -c 1` with a reply timeout of `wait` seconds.
    pub(crate) fn ping_once(&self, target: &str, wait: &str) -> bool {
        self.ns
            .run(&["ping", "-c", "1", "-W", wait, target])
            .status
            .success()
    }

    /// Up to `attempts` pings of 2 s each; true as soon as one is answered.
    pub(crate) fn ping(&self, target: &str, attempts: u32) -> bool {
        (0..attempts).any(|_| self.ping_once(target, "2"))
    }
}

/// An underlay, nodes on it, their pods and a work directory; all removed on drop.
pub(crate) struct Cluster {
    // Dropped in this order: pods, nodes (daemons first), underlay, files.
    pub(crate) pods: Vec<Pod>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) underlay: Netns,
    pub(crate) prefix: String,
    /// The shared peers file.
    pub(crate) peers: PathBuf,
    pub(crate) work: tempfile::TempDir,
}

impl Cluster {
    /// An underlay bridge and `n` nodes on `backend`, and a peers file listing all of them.
    /// No daemon runs yet.
    pub(crate) fn new(n: usize, backend: Backend) -> Self {
        let prefix = prefix();
        let work = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .unwrap();
        let underlay = Netns::new(format!("{prefix}u"));
        underlay.sh(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        underlay.sh(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        underlay.sh(&["ip", "link", "add", "br0", "type", "bridge"]);
        underlay.sh(&["ip", "link", "set", "br0", "up"]);
        let mut cluster = Cluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            underlay,
            peers: work.path().join("peers.toml"),
            prefix,
            work,
        };
        for _ in 0..n {
            cluster.add_node(backend);
        }
        let all: Vec<usize> = (1..=n).collect();
        write_atomically(&cluster.peers, &cluster.peers_text(&all, ""));
        cluster
    }

    /// Plugs node `len + 1` into the underlay (no daemon yet; it reads the shared peers file
    /// unless its `peers` is changed). Returns its index.
    pub(crate) fn add_node(&mut self, backend: Backend) -> usize {
        let i = self.nodes.len() + 1;
        let prefix = &self.prefix;
        let ns = Netns::new(format!("{prefix}n{i}"));
        let outer = format!("{prefix}v{i}");
        ns.sh(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", &outer,
        ]);
        ns.sh(&["ip", "link", "set", &outer, "netns", &self.underlay.name]);
        self.underlay
            .sh(&["ip", "link", "set", &outer, "master", "br0", "up"]);
        ns.sh(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
        ns.sh(&[
            "ip",
            "addr",
            "add",
            &format!("192.168.77.{i}/24"),
            "dev",
            "eth0",
        ]);
        ns.sh(&["ip", "link", "set", "eth0", "up"]);
        let dir = self.work.path().join(format!("n{i}"));
        std::fs::create_dir(&dir).unwrap();
        let key_file = dir.join("private.key");
        let public_key = new_key(&key_file);
        self.nodes.push(Node {
            daemon: None,
            ns,
            index: i,
            name: format!("n{i}"),
            // Userspace UAPI sockets share /var/run/wireguard: names must be unique host-wide.
            iface: format!("{prefix}w{i}"),
            backend,
            dir,
            key_file,
            public_key,
            peers: self.peers.clone(),
        });
        i
    }

    /// Node `i` (1-based).
    pub(crate) fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    pub(crate) fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    /// A peers file listing nodes `indices`, then `extra` (more TOML).
    pub(crate) fn peers_text(&self, indices: &[usize], extra: &str) -> String {
        let mut text = String::from("cluster_cidrs = [\"10.99.0.0/16\", \"fd99::/48\"]\n");
        for &i in indices {
            text += &self.node(i).entry();
        }
        text + extra
    }

    /// Starts every node's daemon, then waits until all are ready.
    pub(crate) fn start_all(&mut self, extra: &[&str]) {
        for node in &mut self.nodes {
            node.start(extra);
        }
        for node in &mut self.nodes {
            node.wait_ready();
        }
    }

    /// Attaches pods named `names` to node `i`.
    pub(crate) fn add_pods(&mut self, i: usize, names: &[&str]) {
        for name in names {
            let pod = self.node(i).add_pod(name);
            self.pods.push(pod);
        }
    }

    /// The pod called `name` (e.g. `n1a`).
    pub(crate) fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Starts tcpdump on the underlay bridge.
    pub(crate) fn capture(&self) -> Capture {
        self.underlay.capture("br0", self.work.path())
    }

    /// Every node's log tail.
    pub(crate) fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(Node::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Every ordered pair of pods on different nodes, over IPv4 and IPv6: (from, to, address).
pub(crate) fn cross_node_pairs(pods: &[Pod]) -> Vec<(&Pod, &Pod, String)> {
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
pub(crate) fn icmp_matrix(pods: &[Pod]) -> (usize, Vec<String>) {
    let pairs = cross_node_pairs(pods);
    let failures = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .map(|from| {
                let mine: Vec<_> = pairs
                    .iter()
                    .filter(|(f, _, _)| f.name == from.name)
                    .collect();
                scope.spawn(move || {
                    mine.into_iter()
                        .filter(|(f, _, ip)| !f.ping(ip, 4))
                        .map(|(f, t, ip)| format!("ICMP {} -> {} ({ip})", f.name, t.name))
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
pub(crate) struct TcpEcho {
    pub(crate) port: u16,
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
    pub(crate) fn start(ns: &str) -> Self {
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
pub(crate) fn tcp_send(ns: &str, to: SocketAddr, len: usize) -> Result<(), String> {
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
pub(crate) fn tcp_matrix(pods: &[Pod], servers: &[TcpEcho], len: usize) -> (usize, Vec<String>) {
    let pairs = cross_node_pairs(pods);
    let port_of = |pod: &Pod| {
        let i = pods.iter().position(|p| p.name == pod.name).unwrap();
        servers[i].port
    };
    let failures = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .map(|from| {
                let mine: Vec<_> = pairs
                    .iter()
                    .filter(|(f, _, _)| f.name == from.name)
                    .map(|(f, t, ip)| {
                        let addr = SocketAddr::new(ip.parse().unwrap(), port_of(t));
                        (f.ns.name.clone(), f.name.clone(), t.name.clone(), addr)
                    })
                    .collect();
                scope.spawn(move || {
                    mine.into_iter()
                        .filter_map(|(ns, f, t, addr)| {
                            tcp_send(&ns, addr, len)
                                .err()
                                .map(|e| format!("TCP {f} -> {t} ({addr}): {e}"))
                        })
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

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// utime + stime of a process (all its threads), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &text[text.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The pid of the `wireguard-go` serving `iface`, if one runs.
pub(crate) fn wireguard_go_pid(iface: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"wireguard-go"))
                    && args.get(1) == Some(&iface.as_bytes())
            })
        })
}
