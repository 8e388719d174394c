//! Applying WireGuard configuration: our backend against `wg syncconf`, side by side, on fresh
//! devices of the same kind in a network namespace of our own.
//!
//! - (a) a 1,000-peer configuration applied to a fresh device through our backend: read the
//!   device, [`plan()`] from what was read to the desired state, apply the plan (what a
//!   reconcile pass does for the device);
//! - (b) the same configuration with `wg syncconf IFACE FILE` on a second fresh device;
//! - (c) one peer's allowed IPs changed on the 1,000-peer device through our backend (read,
//!   plan, apply: what a resync tick does), and (c') the same without the read (plan against the
//!   state the previous pass left, apply: what a pass for a source change does);
//! - (d) the same change with `wg syncconf` of the whole file.
//!
//! Every case runs several times (fresh devices for (a) and (b) each time), ours and `wg`
//! interleaved in alternating order with a pause before each; each result is checked by reading
//! the device back, outside the timing. The read in (c) is profiled (UAPI round trip, parse). The userspace backend (wireguard-go)
//! is measured; the embedded backend only for (a) and (b), see the notes printed.
//!
//! Run as root: `cargo bench -p wormhole-linux --bench apply` (`WORMHOLE_BENCH_REPS` sets the
//! number of repetitions, default 11).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wormhole_core::{DeviceChange, DevicePlan, PeerField};
use wormhole_core::{DeviceState, HostSettings};
use wormhole_core::{HostState, Mesh, NodeEntry, PrivateKey, Snapshot, WireGuardDevice, plan};
use wormhole_linux::{Backend, KernelDevice, Network, SOCKET_DIR};

/// The UAPI protocol module itself, for profiling its parser (it is not public API; its unit
/// tests are not run from here).
#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../src/uapi.rs"]
mod uapi;

/// Peers in the configuration.
const PEERS: usize = 1_000;
/// The peer whose allowed IPs change in (c) and (d).
const CHANGED: usize = PEERS / 2;
/// Its IPv4 pod CIDR after the change (unused by any other peer).
const MOVED_CIDR: &str = "10.254.0.0/24";
/// Listen ports: our device and the `wg syncconf` device live side by side.
const OUR_PORT: u16 = 51820;
const WG_PORT: u16 = 51821;
/// Pause before each measurement.
const SETTLE: Duration = Duration::from_millis(200);

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "SKIPPED apply benchmark: needs root (network namespace, TUN devices); \
             run `sudo -E cargo bench -p wormhole-linux --bench apply`"
        );
        return;
    }
    let reps: usize = std::env::var("WORMHOLE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11)
        .max(1);
    let tag = format!("whb{}", std::process::id() % 10_000);
    let ns = Namespace::enter(&tag);
    let fixture = Fixture::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("# Applying a {PEERS}-peer WireGuard configuration ({reps} repetitions each)");
    println!();
    println!("{}", machine());
    println!();

    // WORMHOLE_BENCH_BACKENDS picks the kinds (default: the two this machine has; the VM lane
    // runs `kernel`).
    let wanted =
        std::env::var("WORMHOLE_BENCH_BACKENDS").unwrap_or_else(|_| "userspace,embedded".into());
    for name in wanted.split(',').map(str::trim) {
        match name {
            "kernel" => {
                let kernel = Kind {
                    backend: Backend::Kernel,
                    label: "kernel (netlink)",
                };
                run_kind(&rt, &ns, &fixture, &kernel, reps, true).print(&kernel);
            }
            "userspace" => {
                let userspace = Kind {
                    backend: Backend::Userspace,
                    label: "userspace (wireguard-go)",
                };
                run_kind(&rt, &ns, &fixture, &userspace, reps, true).print(&userspace);
            }
            "embedded" => {
                let embedded = Kind {
                    backend: Backend::Embedded,
                    label: "embedded (gotatun)",
                };
                run_kind(&rt, &ns, &fixture, &embedded, reps, false).print(&embedded);
                println!(
                    "(c) and (d) are not measured on the embedded device yet: they compare `wg syncconf` \
                     baselines, and the embedded device is driven through gotatun's Rust API."
                );
            }
            other => panic!(
                "WORMHOLE_BENCH_BACKENDS: unknown backend {other:?} (kernel, userspace, embedded)"
            ),
        }
    }
    drop(rt);
    ns.leave();
}

/// A backend measured against `wg syncconf` on a device of the same kind.
struct Kind {
    backend: Backend,
    label: &'static str,
}

/// The desired states and the equivalent `wg` configuration files.
struct Fixture {
    /// The device part of the desired state for 1,000 peers (nothing else: no link, routes or
    /// firewall, so plans hold device changes only).
    desired: HostState,
    /// The same with peer [`CHANGED`]'s IPv4 pod CIDR moved to [`MOVED_CIDR`].
    changed: HostState,
    /// `wg` configuration files for both.
    file: PathBuf,
    changed_file: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let key = PrivateKey::generate();
        let cluster: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/48".parse().unwrap()];
        let mut nodes: Vec<NodeEntry> = (0..PEERS).map(peer_entry).collect();
        nodes.push(NodeEntry {
            name: "local".into(),
            public_key: key.public_key().to_base64(),
            endpoint: Some("172.31.255.254:51820".into()),
            pod_cidrs: vec!["10.255.255.0/24".into(), "fd00:0:0:ffff::/64".into()],
            persistent_keepalive: None,
            origin: String::new(),
        });
        let snapshot = Snapshot {
            nodes,
            ..Snapshot::default()
        };
        let mut moved = snapshot.clone();
        moved.nodes[CHANGED].pod_cidrs[0] = MOVED_CIDR.into();
        let host = HostSettings {
            listen_port: OUR_PORT,
            ..HostSettings::default()
        };
        let device_only = |snapshot: Snapshot| {
            let mesh = Mesh::build("local", &key.public_key(), &cluster, snapshot, None).unwrap();
            assert_eq!(mesh.peers.len(), PEERS, "{:?}", mesh.rejected);
            HostState {
                device: HostState::desired(&mesh, &key, None, &host).device,
                ..HostState::default()
            }
        };
        let desired = device_only(snapshot);
        let changed = device_only(moved);
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let file = dir.join(format!("wormhole-bench-{pid}.conf"));
        let changed_file = dir.join(format!("wormhole-bench-{pid}-changed.conf"));
        write_wg_config(&file, &key, device(&desired));
        write_wg_config(&changed_file, &key, device(&changed));
        Fixture {
            desired,
            changed,
            file,
            changed_file,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.changed_file);
    }
}

/// Peer `i`: pod CIDRs `10.(i/256).(i%256).0/24` and `fd00:0:0:i::/64`, endpoint in
/// 172.16.0.0/12, no keepalive (so that no handshake traffic starts during the measurement).
fn peer_entry(i: usize) -> NodeEntry {
    let n = u16::try_from(i).unwrap();
    NodeEntry {
        name: format!("node-{i:05}"),
        public_key: PrivateKey::generate().public_key().to_base64(),
        endpoint: Some(
            SocketAddr::from((Ipv4Addr::from(0xac10_0000_u32 + u32::from(n) + 1), 51820))
                .to_string(),
        ),
        pod_cidrs: vec![
            format!("10.{}.{}.0/24", i / 256, i % 256),
            format!("{}/64", Ipv6Addr::new(0xfd00, 0, 0, n, 0, 0, 0, 0)),
        ],
        persistent_keepalive: None,
        origin: String::new(),
    }
}

fn device(state: &HostState) -> &DeviceState {
    state.device.as_ref().unwrap()
}

/// The `wg` configuration file of `state`, listening on [`WG_PORT`].
fn write_wg_config(path: &Path, key: &PrivateKey, state: &DeviceState) {
    let mut text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {WG_PORT}\n",
        key.to_base64_secret().as_str()
    );
    for (public, peer) in &state.peers {
        let ips: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
        text += &format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\nEndpoint = {}\n",
            public.to_base64(),
            ips.join(", "),
            peer.endpoint.unwrap()
        );
    }
    std::fs::write(path, text).unwrap();
}

/// A network namespace this process's main thread (and so every thread and child it creates
/// from now on) lives in.
struct Namespace {
    name: String,
}

impl Namespace {
    fn enter(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name]);
        let file = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        run(&["ip", "link", "set", "lo", "up"]);
        Namespace {
            name: name.to_owned(),
        }
    }

    /// Stops what we started in the namespace (the wireguard-go daemons) and deletes it.
    fn leave(self) {
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .unwrap();
        let me = std::process::id().to_string();
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            // Our own process lives here, and so did `ip netns pids` itself.
            if pid != me {
                let _ = Command::new("kill").arg(pid).output();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }

    /// A fresh interface name.
    fn iface(&self, role: &str, rep: usize) -> String {
        format!("{}{role}{rep}", self.name)
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_else(|e| format!("{program}: {e}"))
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "machine: {cpus} CPUs, {cpu}; load average {}\n{}\n{}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        version("wg"),
        version("wireguard-go")
    )
}

/// A fresh, empty device of `kind` (the process started, nothing configured).
fn fresh(rt: &tokio::runtime::Runtime, kind: &Kind, iface: &str) -> Arc<dyn WireGuardDevice> {
    // The kernel backend creates its link over rtnetlink.
    let network = {
        let iface = iface.to_owned();
        Arc::new(rt.block_on(async move { Network::new(&iface) }).unwrap())
    };
    let device = kind.backend.device(&network).unwrap();
    let d = device.clone();
    rt.block_on(async move {
        d.apply(&DevicePlan {
            create: true,
            changes: vec![],
        })
        .await
    })
    .unwrap();
    device
}

/// Removes a device made by [`fresh`]: deletes the link (wireguard-go exits when its TUN goes
/// away) and waits for its socket to go.
fn destroy(device: Arc<dyn WireGuardDevice>, iface: &str) {
    let embedded = device.kind() == Backend::Embedded.as_str();
    drop(device);
    if !embedded {
        let _ = Command::new("ip").args(["link", "del", iface]).status();
    }
    let socket = Path::new(SOCKET_DIR).join(format!("{iface}.sock"));
    for _ in 0..100 {
        if !socket.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(socket);
}

/// Times of one pass through our backend.
#[derive(Clone, Copy, Default)]
struct Phases {
    read: Duration,
    plan: Duration,
    apply: Duration,
}

impl Phases {
    fn total(&self) -> Duration {
        self.read + self.plan + self.apply
    }
}

/// Read, plan against `desired`, apply: one reconcile pass's work on the device.
fn ours(
    rt: &tokio::runtime::Runtime,
    device: &Arc<dyn WireGuardDevice>,
    desired: &HostState,
) -> Result<Phases, String> {
    let device = device.clone();
    let desired = desired.clone();
    rt.block_on(async move {
        let start = Instant::now();
        let read = device
            .read()
            .await
            .map_err(|e| format!("read: {e}"))?
            .ok_or("the device is gone")?;
        let read_done = Instant::now();
        let observed = HostState {
            device: Some(read.config),
            ..HostState::default()
        };
        let plan = plan(&desired, &observed);
        let plan_done = Instant::now();
        device
            .apply(&plan.device)
            .await
            .map_err(|e| format!("apply: {e}"))?;
        let applied = Instant::now();
        assert!(
            plan.firewall.is_none() && plan.link.is_empty() && plan.routes.is_empty(),
            "{plan}"
        );
        Ok(Phases {
            read: read_done - start,
            plan: plan_done - read_done,
            apply: applied - plan_done,
        })
    })
}

/// `wg syncconf IFACE FILE`, timed (the process's start included: that is what a user pays).
fn syncconf(iface: &str, file: &Path) -> Result<Duration, String> {
    let start = Instant::now();
    let out = Command::new("wg")
        .args(["syncconf", iface])
        .arg(file)
        .output()
        .unwrap();
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "wg syncconf {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(elapsed)
}

/// The device's peers, read back through the UAPI socket, or for a kernel device through our
/// netlink reader (checked against `wg show dump` by the VM lane's tests); outside any timing.
fn peers_of(iface: &str) -> Result<DeviceState, String> {
    let socket = Path::new(SOCKET_DIR).join(format!("{iface}.sock"));
    if !socket.exists() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        return rt
            .block_on(async {
                KernelDevice::new(Arc::new(Network::new(iface)?))?
                    .read()
                    .await
            })
            .map_err(|e| format!("read back {iface}: {e}"))?
            .map(|d| d.config)
            .ok_or_else(|| format!("read back {iface}: no device"));
    }
    uapi::get(&socket)
        .map(|reply| reply.device.config)
        .map_err(|e| format!("read back {iface}: {e}"))
}

fn check_peers(iface: &str, want: &HostState, what: &str) -> Result<(), String> {
    let got = peers_of(iface)?;
    if got.peers != device(want).peers {
        return Err(format!(
            "{what}: {iface} holds {} peers, not the {PEERS} wanted",
            got.peers.len()
        ));
    }
    Ok(())
}

/// `get=1` on the UAPI socket, by hand: the reply's text and the round trip's duration
/// (the implementation's serialization and the socket, without our parsing).
fn raw_get(iface: &str) -> (String, Duration) {
    use std::io::{BufRead as _, Write as _};
    let socket = Path::new(SOCKET_DIR).join(format!("{iface}.sock"));
    let start = Instant::now();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.write_all(b"get=1\n\n").unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut text = String::new();
    loop {
        let before = text.len();
        if reader.read_line(&mut text).unwrap() == 0 || text[before..].starts_with("errno=") {
            break;
        }
    }
    (text, start.elapsed())
}

/// What one backend kind measured.
#[derive(Default)]
struct Results {
    full_ours: Vec<Phases>,
    full_wg: Vec<Duration>,
    one_ours: Vec<Phases>,
    one_wg: Vec<Duration>,
    /// Profile of the read on the 1,000-peer device: UAPI round trip, then our parse.
    get: Vec<Duration>,
    parse: Vec<Duration>,
    /// Why the measurement stopped early, if it did.
    failure: Option<String>,
}

fn run_kind(
    rt: &tokio::runtime::Runtime,
    ns: &Namespace,
    fx: &Fixture,
    kind: &Kind,
    reps: usize,
    one_peer: bool,
) -> Results {
    let mut results = Results::default();
    let mut keep = None;
    for rep in 0..reps {
        let initial = &kind.backend.as_str()[..1];
        let (ours_name, wg_name) = (
            ns.iface(&format!("{initial}o"), rep),
            ns.iface(&format!("{initial}w"), rep),
        );
        let ours_device = fresh(rt, kind, &ours_name);
        let wg_device = fresh(rt, kind, &wg_name);
        // Interleaved, the order alternating, each after a pause, so that noise, a device's
        // start-up and the other measurement's aftermath hit both alike.
        let mut measure = || -> Result<(), String> {
            for first in [rep % 2 == 0, rep % 2 != 0] {
                std::thread::sleep(SETTLE);
                if first {
                    results.full_ours.push(ours(rt, &ours_device, &fx.desired)?);
                } else {
                    results.full_wg.push(syncconf(&wg_name, &fx.file)?);
                }
            }
            check_peers(&ours_name, &fx.desired, "(a)")?;
            check_peers(&wg_name, &fx.desired, "(b)")
        };
        if let Err(e) = measure() {
            // A crashed embedded device cannot even be dropped (boringtun waits forever on
            // its lock): leave both to the process's exit.
            std::mem::forget(ours_device);
            std::mem::forget(wg_device);
            for name in [&ours_name, &wg_name] {
                let _ = std::fs::remove_file(Path::new(SOCKET_DIR).join(format!("{name}.sock")));
            }
            results.failure = Some(format!("repetition {}: {e}", rep + 1));
            return results;
        }
        if rep + 1 == reps && one_peer {
            keep = Some((ours_device, ours_name, wg_device, wg_name));
        } else {
            destroy(ours_device, &ours_name);
            destroy(wg_device, &wg_name);
        }
    }
    let Some((ours_device, ours_name, wg_device, wg_name)) = keep else {
        return results;
    };
    // (c), then (d), alternating between the changed and the original configuration so that
    // every repetition is a real change.
    for rep in 0..reps {
        let (state, file) = if rep % 2 == 0 {
            (&fx.changed, &fx.changed_file)
        } else {
            (&fx.desired, &fx.file)
        };
        let before = if kind.backend == Backend::Kernel {
            peers_of(&ours_name).unwrap()
        } else {
            let (text, round_trip) = raw_get(&ours_name);
            let start = Instant::now();
            let before = uapi::parse(&text).unwrap().device.config;
            results.parse.push(start.elapsed());
            results.get.push(round_trip);
            before
        };
        for first in [rep % 4 < 2, rep % 4 >= 2] {
            std::thread::sleep(SETTLE);
            if first {
                results
                    .one_ours
                    .push(ours(rt, &ours_device, state).unwrap());
            } else {
                results.one_wg.push(syncconf(&wg_name, file).unwrap());
            }
        }
        check_peers(&ours_name, state, "(c)").unwrap();
        check_peers(&wg_name, state, "(d)").unwrap();
        // Exactly one peer changed, by one field.
        let observed = HostState {
            device: Some(before),
            ..HostState::default()
        };
        let plan = plan(state, &observed);
        assert!(
            matches!(&plan.device.changes[..], [DeviceChange::UpdatePeer(_, f)]
                if matches!(&f[..], [PeerField::AllowedIps(_)])),
            "{plan}"
        );
    }
    destroy(ours_device, &ours_name);
    destroy(wg_device, &wg_name);
    results
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn min(xs: &[Duration]) -> Duration {
    xs.iter().copied().min().unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

impl Results {
    fn print(&self, kind: &Kind) {
        println!("## {}", kind.label);
        println!();
        if let Some(failure) = &self.failure {
            println!(
                "**Stopped early** after {} of (a) and {} of (b): {failure} (a device that \
                 stops answering: see the implementation's panic message above, if any)",
                self.full_ours.len(),
                self.full_wg.len()
            );
            println!();
            if self.full_ours.is_empty() || self.full_wg.is_empty() {
                return;
            }
        }
        println!("| case | median | min | read / plan / apply (medians) |");
        println!("|---|---|---|---|");
        let row = |name: &str, xs: &[Duration], phases: Option<&[Phases]>| {
            let breakdown = phases.map_or("—".to_owned(), |p| {
                let part = |f: fn(&Phases) -> Duration| ms(median(p.iter().map(f).collect()));
                format!(
                    "{} / {} / {}",
                    part(|p| p.read),
                    part(|p| p.plan),
                    part(|p| p.apply)
                )
            });
            println!(
                "| {name} | {} | {} | {breakdown} |",
                ms(median(xs.to_vec())),
                ms(min(xs))
            );
        };
        let totals = |p: &[Phases]| p.iter().map(Phases::total).collect::<Vec<_>>();
        let (a, b) = (totals(&self.full_ours), self.full_wg.clone());
        row(
            &format!("(a) {PEERS} peers, fresh device: ours (read + plan + apply)"),
            &a,
            Some(&self.full_ours),
        );
        row(
            &format!("(b) {PEERS} peers, fresh device: `wg syncconf`"),
            &b,
            None,
        );
        let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
        if !self.one_ours.is_empty() {
            let (c, d) = (totals(&self.one_ours), self.one_wg.clone());
            row(
                &format!("(c) one peer's allowed IPs, {PEERS}-peer device: ours"),
                &c,
                Some(&self.one_ours),
            );
            let c2: Vec<Duration> = self.one_ours.iter().map(|p| p.plan + p.apply).collect();
            row(
                "(c') the same change as a pass for a source change does it: plan + apply",
                &c2,
                None,
            );
            row(
                &format!("(d) one peer's allowed IPs, {PEERS}-peer device: `wg syncconf`"),
                &d,
                None,
            );
            println!();
            println!(
                "(a)/(b) = {:.2} (median), {:.2} (min); goal ≤ 1",
                ratio(median(a.clone()), median(b.clone())),
                ratio(min(&a), min(&b))
            );
            println!(
                "(d)/(c) = {:.1} (median), {:.1} (min) with the read; (d)/(c') = {:.1} (median), \
                 {:.1} (min) as the daemon applies a change; goal ≥ 10",
                ratio(median(d.clone()), median(c.clone())),
                ratio(min(&d), min(&c)),
                ratio(median(d.clone()), median(c2.clone())),
                ratio(min(&d), min(&c2))
            );
            if !self.get.is_empty() {
                println!(
                    "profile of the read in (c): UAPI `get=1` round trip {} + our parse {} (medians); \
                 apply of the one-peer plan alone: {} → `wg syncconf` / apply alone = {:.0}",
                    ms(median(self.get.clone())),
                    ms(median(self.parse.clone())),
                    ms(median(self.one_ours.iter().map(|p| p.apply).collect())),
                    ratio(
                        median(d.clone()),
                        median(self.one_ours.iter().map(|p| p.apply).collect())
                    )
                );
            }
        } else {
            println!();
            println!(
                "(a)/(b) = {:.2} (median), {:.2} (min); goal ≤ 1",
                ratio(median(a.clone()), median(b.clone())),
                ratio(min(&a), min(&b))
            );
        }
        println!();
    }
}
