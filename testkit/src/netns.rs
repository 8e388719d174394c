//! Network namespaces: running things in them, and wiring them to an underlay bridge.

use std::process::{Child, Command, Output, Stdio};

use crate::addresses::underlay_ip;
use crate::process::{run, sh};

/// A network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    /// The name under `/var/run/netns`.
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (replacing a leftover of that name) with `lo` up.
    pub fn new(name: String) -> Self {
        let _ = run(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// An underlay: namespace `name` with a bridge `br0`, IPv6 off (the underlay is IPv4).
    pub fn underlay(name: String) -> Self {
        let underlay = Netns::new(name);
        underlay.sh(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        underlay.sh(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        underlay.sh(&["ip", "link", "add", "br0", "type", "bridge"]);
        underlay.sh(&["ip", "link", "set", "br0", "up"]);
        underlay
    }

    /// Node `i` on this underlay: namespace `{prefix}n{i}` whose `eth0` (`192.168.77.i/24`) is
    /// a veth to `{prefix}v{i}` on `br0`.
    pub fn node(&self, prefix: &str, i: usize) -> Netns {
        let ns = Netns::new(format!("{prefix}n{i}"));
        ns.plug(
            self,
            &format!("{prefix}v{i}"),
            &format!("{}/24", underlay_ip(i)),
        );
        // Forwarding off, as on a host nobody set it on (a new namespace may inherit the
        // machine's): whatever needs it on must turn it on.
        for sysctl in ["net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"] {
            ns.sh(&["sysctl", "-qw", sysctl]);
        }
        ns
    }

    /// Gives this namespace an `eth0` with `address` (IPv4 only), a veth whose other end,
    /// `outer`, is a port of `underlay`'s `br0`.
    pub fn plug(&self, underlay: &Netns, outer: &str, address: &str) {
        // Create the pair inside this namespace, move one end to the underlay.
        self.sh(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", outer,
        ]);
        self.sh(&["ip", "link", "set", outer, "netns", &underlay.name]);
        underlay.sh(&["ip", "link", "set", outer, "master", "br0", "up"]);
        self.sh(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
        self.sh(&["ip", "addr", "add", address, "dev", "eth0"]);
        self.sh(&["ip", "link", "set", "eth0", "up"]);
    }

    /// `ip netns exec NAME args...`, to be configured and started by the caller.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// `ip netns exec NAME args...`, unchecked.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// `nft -f -` with `ruleset` on its stdin, in this namespace; checked.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write as _;
        let mut child = self
            .command(&["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(ruleset.as_bytes())
            .expect("write the ruleset to nft");
        let status = child.wait().expect("wait for nft");
        assert!(
            status.success(),
            "in {}: nft -f - failed: {ruleset}",
            self.name
        );
    }

    /// `ip netns exec NAME args...`, checked; returns stdout.
    pub fn sh(&self, args: &[&str]) -> String {
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

    /// Starts `args` in the background with stdout and stderr piped (killed at the latest with
    /// the namespace).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// A tokio runtime all of whose threads (workers and blocking pool) enter this namespace,
    /// so that the sockets and netlink handles its tasks open belong to it.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        let path = self.path();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(move || enter(&path))
            .build()
            .unwrap()
    }

    /// `ip route show proto 87` (Wormhole's routes), both families, one route per line.
    pub fn wormhole_routes(&self) -> String {
        let mut routes = self.sh(&["ip", "-4", "route", "show", "proto", "87"]);
        routes += &self.sh(&["ip", "-6", "route", "show", "proto", "87"]);
        routes
    }

    /// `/var/run/netns/NAME`.
    pub(crate) fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
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

/// Runs `f` on a fresh thread that has entered network namespace `ns` (the calling thread, and
/// so the test process, stays where it is). Sockets `f` creates belong to `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
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

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}
