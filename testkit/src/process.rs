//! Commands, processes, names and skipping.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// True when running as root; otherwise says loudly that the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    // `cargo test` names the package it runs; a binary started by hand (the VM lane) runs in
    // its crate's directory, which bears the package's name.
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| {
        let dir = std::env::current_dir().unwrap_or_default();
        dir.file_name()
            .map_or("<crate>".into(), |n| n.to_string_lossy().into_owned())
    });
    // Straight to stderr, past the test harness's output capture: a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (network namespaces, TUN, nftables, CNI plugins); \
         run `sudo -E cargo test -p {package} --test it` (CI runs it as root)"
    );
    false
}

/// An error with its causes, `: `-separated (our errors keep the cause as `source`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// Runs a command and returns its output, whatever its status.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command, panicking with its output if it fails; returns its stdout.
pub fn sh(args: &[&str]) -> String {
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

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A number unique in this process.
pub(crate) fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A unique short prefix for one test's namespaces and interfaces: `{tag}{pid % 1000}q{n}`.
/// Each suite has its own tag, so that suites running at the same time never meet; the `q`
/// keeps two test processes of one suite apart (without it, pid 79's 4th test and pid 7's 94th
/// were both `…794`, and one's clean-up killed the other's daemons).
pub fn prefix(tag: &str) -> String {
    format!("{tag}{}q{}", std::process::id() % 1000, next())
}

/// The numeric fields `names` (e.g. `VmRSS:`) of `/proc/PID/status`, read once, in order.
pub fn proc_status<const N: usize>(pid: u32, names: [&str; N]) -> [u64; N] {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    names.map(|name| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    })
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let [rss, hwm] = proc_status(pid, ["VmRSS:", "VmHWM:"]);
    (rss, hwm)
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &text[text.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The pid of the `wireguard-go` serving `iface`, if one runs.
pub fn wireguard_go_pid(iface: &str) -> Option<u32> {
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
