//! Preflight: what a node needs before (and while) Wormhole runs on it, checked one item at a
//! time, each `ok`, `warning` or `error` with what was found and the fix. `wormhole preflight`
//! prints it ([`Agent::preflight`](crate::Agent::preflight)); the agent runs it at start and
//! again after each reconcile pass (at most every [`RECHECK_EVERY`]), logs what changes, serves
//! it in `/status` and, in Kubernetes mode, turns problems into Events on its Node.
//!
//! Every check is a small pure function over [`Facts`], what was read from the host
//! ([`crate::host`] reads them): the checks are unit-tested here, the reading once for real.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wormhole_core::Escaped;

use crate::cni::CONFLIST;

/// How a check came out; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// Works, but something is off or may bite later (the fix says what to do).
    Warning,
    /// Something Wormhole needs is missing or wrong: pods on this node will not work as they
    /// should until the fix is applied.
    Error,
}

impl Level {
    /// `ok`, `warning`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The check's stable name: `pod-cidr`, `cni-plugins`, `cni-config`, `wireguard`,
    /// `forwarding`, `br-netfilter`, `mtu`.
    pub check: String,
    /// How it came out.
    pub result: Level,
    /// What was found. Names read from the host in it are escaped.
    pub detail: String,
    /// What to do about it (for a result other than `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check, in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    /// The checks' results.
    pub checks: Vec<Check>,
    /// The CNI configuration files that take precedence over Wormhole's `10-wormhole.conflist`
    /// (the container runtime uses the first file by name), sorted; at most
    /// [`MAX_LISTED`] of them.
    #[serde(default)]
    pub foreign_cni_configs: Vec<String>,
}

impl PreflightReport {
    /// The worst result (`ok` for no checks).
    pub fn worst(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.result)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// How many checks came out `level`.
    pub fn count(&self, level: Level) -> usize {
        self.checks.iter().filter(|c| c.result == level).count()
    }

    /// `7 ok, 1 warning, 0 errors`.
    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} warning(s), {} error(s)",
            self.count(Level::Ok),
            self.count(Level::Warning),
            self.count(Level::Error)
        )
    }
}

/// The least time between two preflights of a running agent (passes can come many a second
/// while nodes churn).
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// At most this many names of foreign CNI configuration files are listed.
pub const MAX_LISTED: usize = 20;

/// The CNI plugins the conflist uses.
pub(crate) const PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];

/// Where CNI plugins are looked for by default: the container runtimes' default first
/// (containerd's and CRI-O's `/opt/cni/bin`), then Debian's package's.
pub const DEFAULT_CNI_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];

/// Where the host-local IPAM plugin keeps its leases by default (one directory per network
/// name: `wormhole`).
pub const DEFAULT_CNI_DATA_DIR: &str = "/var/lib/cni/networks";

/// This node's pod CIDRs, as far as they could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PodCidrs {
    /// Allocated (never empty): the CIDRs, and where they were read (for the detail).
    Assigned { cidrs: Vec<IpNet>, from: String },
    /// Not allocated (or unusable): why, and the fix.
    Missing { why: String, fix: String },
    /// Could not be read (the API server did not answer): why.
    Unknown { why: String },
}

impl PodCidrs {
    /// Whether IPv4 and IPv6 are in use (both when unknown).
    fn families(&self) -> (bool, bool) {
        match self {
            PodCidrs::Assigned { cidrs, .. } if !cidrs.is_empty() => (
                cidrs.iter().any(|c| matches!(c, IpNet::V4(_))),
                cidrs.iter().any(|c| matches!(c, IpNet::V6(_))),
            ),
            _ => (true, true),
        }
    }
}

/// A sysctl as read: its value (`None`: absent, such as `net.bridge.*` without br_netfilter),
/// and whether this process could write it (`/proc/sys` is read-only in a container).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Sysctl {
    pub(crate) value: Option<String>,
    pub(crate) writable: bool,
}

impl Sysctl {
    fn on(&self) -> bool {
        self.value.as_deref() == Some("1")
    }
}

/// Before the agent starts (`wormhole preflight`) or while it runs: some things the agent
/// fixes itself at start (forwarding), and some it settled (the MTU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    BeforeStart,
    Running,
}

/// The MTU as read and as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MtuFacts {
    /// The underlay's MTU, or why it could not be read.
    pub(crate) underlay: Result<u32, String>,
    /// `--mtu`, if given.
    pub(crate) given: Option<u32>,
    /// Running: the MTU in use (given, or detected at start).
    pub(crate) applied: Option<u32>,
}

/// Everything the checks look at, read from the host (and the API server or peers file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) phase: Phase,
    pub(crate) kubernetes: bool,
    pub(crate) pod_cidrs: PodCidrs,
    /// The directories searched for CNI plugins, in order.
    pub(crate) bin_dirs: Vec<PathBuf>,
    /// Each of [`PLUGINS`] and the directories (of `bin_dirs`) holding it as an executable.
    pub(crate) plugins: Vec<(&'static str, Vec<PathBuf>)>,
    /// The backend in use (`kernel`, `userspace`, `embedded`).
    pub(crate) backend: &'static str,
    /// `/sys/module/wireguard` exists.
    pub(crate) wireguard_module: bool,
    /// `/dev/net/tun` opened for reading and writing, or why not.
    pub(crate) tun: Result<(), String>,
    /// Userspace backend: the program (`wireguard-go`, or `WG_USERSPACE_IMPLEMENTATION`) and
    /// where it was found, or why not.
    pub(crate) userspace_program: Option<Result<PathBuf, String>>,
    pub(crate) ipv4_forward: Sysctl,
    pub(crate) ipv6_forward: Sysctl,
    /// The agent turns forwarding on at start (`AgentBuilder::forwarding`, on by default).
    pub(crate) agent_forwards: bool,
    pub(crate) bridge_nf_iptables: Sysctl,
    pub(crate) bridge_nf_ip6tables: Sysctl,
    /// The CNI configuration directory, if the agent writes a conflist.
    pub(crate) conf_dir: Option<PathBuf>,
    /// Its CNI configuration files' names (`*.conf`, `*.conflist`, `*.json`, as the runtimes
    /// read them), or why they could not be listed (`None`: the directory does not exist).
    pub(crate) conf_files: Result<Option<Vec<Vec<u8>>>, String>,
    pub(crate) mtu: MtuFacts,
}

/// Runs every check over `facts`.
pub(crate) fn report(facts: &Facts) -> PreflightReport {
    let foreign = shadowing(facts.conf_files.as_ref().ok().and_then(|f| f.as_deref()));
    PreflightReport {
        checks: vec![
            pod_cidr(&facts.pod_cidrs),
            cni_plugins(&facts.plugins, &facts.bin_dirs),
            cni_config(facts.conf_dir.as_deref(), &facts.conf_files, &foreign),
            wireguard(facts),
            forwarding(facts),
            br_netfilter(facts),
            mtu(&facts.mtu, facts.phase),
        ],
        foreign_cni_configs: foreign.iter().take(MAX_LISTED).cloned().collect(),
    }
}

fn check(name: &str, result: Level, detail: String, fix: Option<String>) -> Check {
    Check {
        check: name.into(),
        result,
        detail,
        fix,
    }
}

fn list(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn dirs(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| Escaped(&p.to_string_lossy()).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// This node has pod CIDRs.
pub(crate) fn pod_cidr(pod_cidrs: &PodCidrs) -> Check {
    match pod_cidrs {
        PodCidrs::Assigned { cidrs, from } => check(
            "pod-cidr",
            Level::Ok,
            format!("{} ({from})", list(cidrs)),
            None,
        ),
        PodCidrs::Missing { why, fix } => {
            check("pod-cidr", Level::Error, why.clone(), Some(fix.clone()))
        }
        PodCidrs::Unknown { why } => check(
            "pod-cidr",
            Level::Warning,
            format!("cannot tell: {why}"),
            Some("run the preflight again where the peer source can be read".into()),
        ),
    }
}

/// The CNI plugins of the conflist are installed, where the container runtime looks (the
/// first of `bin_dirs`).
pub(crate) fn cni_plugins(plugins: &[(&'static str, Vec<PathBuf>)], bin_dirs: &[PathBuf]) -> Check {
    let missing: Vec<&str> = plugins
        .iter()
        .filter(|(_, found)| found.is_empty())
        .map(|(name, _)| *name)
        .collect();
    let names = plugins
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    if !missing.is_empty() {
        return check(
            "cni-plugins",
            Level::Error,
            format!(
                "missing: {} (looked in {})",
                missing.join(", "),
                dirs(bin_dirs)
            ),
            Some(
                "install the standard CNI plugins: `apt install containernetworking-plugins` \
                 (Debian, Ubuntu: into /usr/lib/cni), or unpack a release of \
                 github.com/containernetworking/plugins into /opt/cni/bin; in a container, mount \
                 the host's plugin directory and name it with --cni-bin-dir"
                    .into(),
            ),
        );
    }
    let Some(first) = bin_dirs.first() else {
        return check("cni-plugins", Level::Ok, names, None);
    };
    let away: Vec<&(&str, Vec<PathBuf>)> = plugins
        .iter()
        .filter(|(_, found)| !found.contains(first))
        .collect();
    let first_dir = dirs(std::slice::from_ref(first));
    if away.is_empty() {
        return check(
            "cni-plugins",
            Level::Ok,
            format!("{names} in {first_dir}"),
            None,
        );
    }
    let elsewhere: Vec<PathBuf> = away
        .iter()
        .flat_map(|(_, found)| found.first().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let which = if away.len() == plugins.len() {
        "all".to_owned()
    } else {
        away.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    };
    check(
        "cni-plugins",
        Level::Warning,
        format!(
            "{which} only in {}, not in {first_dir} (where the container runtime looks by default)",
            dirs(&elsewhere)
        ),
        Some(format!(
            "the container runtime must look where they are (containerd: the CRI plugin's \
             `bin_dir`, CRI-O: `plugin_dirs`), or link them into {}; if the runtime looks \
             elsewhere, name its directory first with --cni-bin-dir",
            dirs(std::slice::from_ref(first))
        )),
    )
}

/// The CNI configuration files that sort before ours, as the runtimes read the directory
/// (`*.conf`, `*.conflist`, `*.json`; the first by byte order is used), sorted and escaped.
pub(crate) fn shadowing(names: Option<&[Vec<u8>]>) -> Vec<String> {
    let mut before: Vec<&Vec<u8>> = names
        .unwrap_or_default()
        .iter()
        .filter(|n| is_cni_config(n) && n.as_slice() < CONFLIST.as_bytes())
        .collect();
    before.sort();
    before
        .into_iter()
        .map(|n| Escaped(&String::from_utf8_lossy(n)).to_string())
        .collect()
}

/// A name the runtimes read as a CNI configuration (libcni's extensions).
pub(crate) fn is_cni_config(name: &[u8]) -> bool {
    [&b".conf"[..], b".conflist", b".json"]
        .iter()
        .any(|ext| name.ends_with(ext) && name.len() > ext.len())
}

/// No other CNI configuration takes precedence over ours.
pub(crate) fn cni_config(
    conf_dir: Option<&Path>,
    files: &Result<Option<Vec<Vec<u8>>>, String>,
    foreign: &[String],
) -> Check {
    let Some(dir) = conf_dir else {
        return check(
            "cni-config",
            Level::Ok,
            "this agent writes no CNI configuration".into(),
            None,
        );
    };
    let dir = Escaped(&dir.to_string_lossy()).to_string();
    match files {
        Err(why) => check(
            "cni-config",
            Level::Warning,
            format!("cannot list {dir}: {why}"),
            Some("check the directory's permissions (the runtime reads it too)".into()),
        ),
        Ok(None) => check(
            "cni-config",
            Level::Ok,
            format!("{dir} does not exist yet: the agent creates it with {CONFLIST}"),
            None,
        ),
        Ok(Some(_)) if foreign.is_empty() => check(
            "cni-config",
            Level::Ok,
            format!("no other CNI configuration in {dir} sorts before {CONFLIST}"),
            None,
        ),
        Ok(Some(_)) => {
            let shown = foreign.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>();
            let more = foreign.len() - shown.len();
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            check(
                "cni-config",
                Level::Error,
                format!(
                    "{}{more} in {dir} sort(s) before {CONFLIST}: the container runtime uses the \
                     first file, so new pods on this node are attached by that network, not by \
                     Wormhole",
                    shown.join(", ")
                ),
                Some(format!(
                    "to move this node to Wormhole, delete {} from {dir} once Wormhole is ready, \
                     then restart the pods on this node (docs/migration.md)",
                    if foreign.len() == 1 { "it" } else { "them" }
                )),
            )
        }
    }
}

/// The chosen backend has what it needs.
pub(crate) fn wireguard(facts: &Facts) -> Check {
    let tun_fix = "load the tun module (`modprobe tun`); in a container, mount the host's \
                   /dev/net/tun (a hostPath of type CharDevice) and grant NET_ADMIN";
    match facts.backend {
        "kernel" if facts.wireguard_module => check(
            "wireguard",
            Level::Ok,
            "kernel backend: the wireguard module is loaded".into(),
            None,
        ),
        "kernel" => check(
            "wireguard",
            Level::Error,
            "kernel backend: the wireguard module is not loaded".into(),
            Some(
                "`modprobe wireguard` (in Linux since 5.6; persist it in /etc/modules-load.d/), \
                 or use --backend embedded (needs /dev/net/tun)"
                    .into(),
            ),
        ),
        backend => {
            let program = match &facts.userspace_program {
                Some(Err(why)) => {
                    return check(
                        "wireguard",
                        Level::Error,
                        format!("{backend} backend: {why}"),
                        Some(
                            "install wireguard-go (Debian: apt install wireguard-go) or name \
                             another implementation in WG_USERSPACE_IMPLEMENTATION; or use \
                             --backend embedded"
                                .into(),
                        ),
                    );
                }
                Some(Ok(path)) => format!(", {}", Escaped(&path.to_string_lossy())),
                None => String::new(),
            };
            match &facts.tun {
                Ok(()) => check(
                    "wireguard",
                    Level::Ok,
                    format!("{backend} backend: /dev/net/tun opens{program}"),
                    None,
                ),
                Err(why) => check(
                    "wireguard",
                    Level::Error,
                    format!("{backend} backend: /dev/net/tun: {why}"),
                    Some(tun_fix.into()),
                ),
            }
        }
    }
}

/// IP forwarding is on for the families in use (pods on other nodes are reached by routing).
pub(crate) fn forwarding(facts: &Facts) -> Check {
    let (v4, v6) = facts.pod_cidrs.families();
    let wanted = [
        (v4, "net.ipv4.ip_forward", &facts.ipv4_forward),
        (v6, "net.ipv6.conf.all.forwarding", &facts.ipv6_forward),
    ];
    let off: Vec<(&str, &Sysctl)> = wanted
        .iter()
        .filter(|(used, _, s)| *used && !s.on())
        .map(|(_, name, s)| (*name, *s))
        .collect();
    let shown = |(name, s): &(&str, &Sysctl)| match &s.value {
        Some(v) => format!("{name} = {}", Escaped(v)),
        None => format!("{name} is absent"),
    };
    if off.is_empty() {
        let on: Vec<&str> = wanted
            .iter()
            .filter(|(used, _, _)| *used)
            .map(|(_, n, _)| *n)
            .collect();
        return check(
            "forwarding",
            Level::Ok,
            format!("{} = 1", on.join(", ")),
            None,
        );
    }
    let found = off.iter().map(shown).collect::<Vec<_>>().join(", ");
    let assignments = off
        .iter()
        .map(|(n, _)| format!("{n}=1"))
        .collect::<Vec<_>>()
        .join(" ");
    let host_fix = format!(
        "on the host: `sysctl -w {assignments}`, persisted in /etc/sysctl.d/; in a container, \
         /proc/sys is read-only: mount the host's /proc/sys/net and name it with \
         --proc-sys-net (the shipped DaemonSet does), or set it on the host"
    );
    if off.iter().any(|(_, s)| s.value.is_none()) {
        return check(
            "forwarding",
            Level::Error,
            format!("{found}: IPv6 is disabled on this host, but the pod CIDRs include IPv6"),
            Some(
                "enable IPv6 (remove ipv6.disable=1 from the kernel command line), or give \
                 this node IPv4 pod CIDRs only"
                    .into(),
            ),
        );
    }
    match facts.phase {
        Phase::BeforeStart if facts.agent_forwards && off.iter().all(|(_, s)| s.writable) => check(
            "forwarding",
            Level::Warning,
            format!("{found}: the agent turns it on at start"),
            Some(format!(
                "nothing (or turn it on for good: `sysctl -w {assignments}`, persisted in \
                     /etc/sysctl.d/)"
            )),
        ),
        Phase::BeforeStart if facts.agent_forwards => check(
            "forwarding",
            Level::Error,
            format!(
                "{found}, and the agent cannot turn it on here (read-only: see --proc-sys-net)"
            ),
            Some(host_fix),
        ),
        _ => check(
            "forwarding",
            Level::Error,
            format!("{found}: pods will not reach other nodes"),
            Some(host_fix),
        ),
    }
}

/// kube-proxy sees bridged pod-to-pod packets: br_netfilter loaded, its sysctls on.
pub(crate) fn br_netfilter(facts: &Facts) -> Check {
    let (_, v6) = facts.pod_cidrs.families();
    let mut wanted = vec![(
        "net.bridge.bridge-nf-call-iptables",
        &facts.bridge_nf_iptables,
    )];
    if v6 {
        wanted.push((
            "net.bridge.bridge-nf-call-ip6tables",
            &facts.bridge_nf_ip6tables,
        ));
    }
    // Only kube-proxy needs it: with peers files there may be none.
    let level = if facts.kubernetes {
        Level::Error
    } else {
        Level::Warning
    };
    let why = "kube-proxy's rules see a pod's packets to another pod on the same bridge only \
               through it: without it, a Service whose backend is on the client's node fails";
    if wanted.iter().any(|(_, s)| s.value.is_none()) {
        return check(
            "br-netfilter",
            level,
            format!(
                "br_netfilter is not loaded ({} is absent): {why}",
                wanted[0].0
            ),
            Some(
                "`modprobe br_netfilter` (persist it in /etc/modules-load.d/), then \
                 `sysctl -w net.bridge.bridge-nf-call-iptables=1 \
                 net.bridge.bridge-nf-call-ip6tables=1`"
                    .into(),
            ),
        );
    }
    let off: Vec<String> = wanted
        .iter()
        .filter(|(_, s)| !s.on())
        .map(|(n, s)| format!("{n} = {}", Escaped(s.value.as_deref().unwrap_or(""))))
        .collect();
    if off.is_empty() {
        let on: Vec<&str> = wanted.iter().map(|(n, _)| *n).collect();
        return check(
            "br-netfilter",
            Level::Ok,
            format!("br_netfilter loaded, {} = 1", on.join(", ")),
            None,
        );
    }
    check(
        "br-netfilter",
        level,
        format!("{}: {why}", off.join(", ")),
        Some(
            "`sysctl -w net.bridge.bridge-nf-call-iptables=1 \
             net.bridge.bridge-nf-call-ip6tables=1`, persisted in /etc/sysctl.d/"
                .into(),
        ),
    )
}

/// What the WireGuard MTU would be from an underlay MTU (`auto`).
fn derived(underlay: u32) -> u32 {
    underlay
        .saturating_sub(wormhole_linux::WIREGUARD_OVERHEAD)
        .max(1280)
}

/// The underlay's MTU leaves room for WireGuard's overhead and IPv6's minimum.
pub(crate) fn mtu(facts: &MtuFacts, phase: Phase) -> Check {
    let overhead = wormhole_linux::WIREGUARD_OVERHEAD;
    let underlay = match &facts.underlay {
        Ok(u) => *u,
        Err(why) => {
            return match facts.given {
                Some(given) => check(
                    "mtu",
                    Level::Warning,
                    format!("cannot read the underlay MTU ({why}); using --mtu {given}"),
                    Some(format!(
                        "make sure --mtu is the underlay MTU minus {overhead} or less"
                    )),
                ),
                None => check(
                    "mtu",
                    Level::Error,
                    format!("cannot read the underlay MTU: {why}"),
                    Some(format!(
                        "set --mtu (the underlay MTU minus {overhead}, at least 1280)"
                    )),
                ),
            };
        }
    };
    let room = underlay.saturating_sub(overhead);
    if let Some(given) = facts.given {
        if given > room {
            return check(
                "mtu",
                Level::Error,
                format!(
                    "--mtu {given} exceeds the underlay MTU {underlay} minus {overhead} = \
                     {room}: larger packets are fragmented or lost (an MTU black hole)"
                ),
                Some(format!("--mtu {room}, or auto")),
            );
        }
        return check(
            "mtu",
            Level::Ok,
            format!("underlay {underlay}, WireGuard and pods {given} (--mtu)"),
            None,
        );
    }
    if room < 1280 {
        return check(
            "mtu",
            Level::Error,
            format!(
                "underlay MTU {underlay} leaves {room} for WireGuard, below IPv6's minimum of \
                 1280: packets over {room} bytes are lost"
            ),
            Some(format!(
                "raise the underlay MTU to at least {} (jumbo frames, or the provider's setting)",
                1280 + overhead
            )),
        );
    }
    match (phase, facts.applied) {
        (Phase::Running, Some(applied)) if applied != derived(underlay) => check(
            "mtu",
            Level::Warning,
            format!(
                "the underlay MTU is {underlay} now, but the agent detected another at start \
                 and uses {applied}"
            ),
            Some(format!(
                "restart the agent to use {} (and restart pods for their MTU)",
                derived(underlay)
            )),
        ),
        _ => check(
            "mtu",
            Level::Ok,
            format!(
                "underlay {underlay}, WireGuard and pods {}",
                derived(underlay)
            ),
            None,
        ),
    }
}

/// The pod CIDRs of a peers file's entry for `node`.
pub(crate) fn from_peers_file(snapshot: &wormhole_core::Snapshot, node: &str) -> PodCidrs {
    let Some(entry) = snapshot.nodes.iter().find(|n| n.name == node) else {
        return PodCidrs::Missing {
            why: format!("the peers file has no [[node]] named {}", Escaped(node)),
            fix: "add this node's entry (name = --node-name) with its pod_cidrs".into(),
        };
    };
    from_texts(
        &entry.pod_cidrs,
        &format!("peers file, {}", Escaped(&entry.origin)),
        || {
            "give the entry pod_cidrs (one IPv4 and/or one IPv6 range inside the cluster CIDRs)"
                .into()
        },
    )
}

/// The pod CIDRs of a Node (`spec.podCIDRs`, else `spec.podCIDR`).
pub(crate) fn from_node(node: &k8s_openapi::api::core::v1::Node) -> PodCidrs {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let spec = node.spec.as_ref();
    let mut texts: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if texts.is_empty() {
        texts.extend(spec.and_then(|s| s.pod_cidr.clone()));
    }
    from_texts(
        &texts,
        &format!("Node {}, spec.podCIDRs", Escaped(name)),
        || {
            "the controller manager allocates pod CIDRs only with --allocate-node-cidrs=true and \
             --cluster-cidr (kubeadm: `kubeadm init --pod-network-cidr=10.244.0.0/16`); nodes \
             that joined before need it set by hand or to join again"
                .into()
        },
    )
}

fn from_texts(texts: &[String], from: &str, fix: impl Fn() -> String) -> PodCidrs {
    if texts.is_empty() {
        return PodCidrs::Missing {
            why: format!("no pod CIDR allocated ({from})"),
            fix: fix(),
        };
    }
    let mut cidrs = Vec::new();
    for text in texts {
        match text.trim().parse::<IpNet>() {
            Ok(net) => cidrs.push(net),
            Err(_) => {
                return PodCidrs::Missing {
                    why: format!("{} is not a CIDR ({from})", Escaped(text)),
                    fix: fix(),
                };
            }
        }
    }
    PodCidrs::Assigned {
        cidrs,
        from: from.to_owned(),
    }
}

/// The address this node is reached at, for the underlay MTU: a peers file entry's endpoint.
pub(crate) fn endpoint_ip(snapshot: &wormhole_core::Snapshot, node: &str) -> Option<IpAddr> {
    let me = snapshot.nodes.iter().find(|n| n.name == node)?;
    me.endpoint
        .as_deref()?
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|e| e.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> Sysctl {
        Sysctl {
            value: Some("1".into()),
            writable: true,
        }
    }

    fn off(writable: bool) -> Sysctl {
        Sysctl {
            value: Some("0".into()),
            writable,
        }
    }

    fn absent() -> Sysctl {
        Sysctl::default()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    /// A healthy host, every check ok.
    fn good() -> Facts {
        Facts {
            phase: Phase::Running,
            kubernetes: true,
            pod_cidrs: PodCidrs::Assigned {
                cidrs: vec![net("10.99.1.0/24"), net("fd99:0:0:1::/64")],
                from: "Node n1, spec.podCIDRs".into(),
            },
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            plugins: PLUGINS
                .iter()
                .map(|p| (*p, vec![PathBuf::from("/opt/cni/bin")]))
                .collect(),
            backend: "embedded",
            wireguard_module: false,
            tun: Ok(()),
            userspace_program: None,
            ipv4_forward: on(),
            ipv6_forward: on(),
            agent_forwards: true,
            bridge_nf_iptables: on(),
            bridge_nf_ip6tables: on(),
            conf_dir: Some("/etc/cni/net.d".into()),
            conf_files: Ok(Some(vec![b"10-wormhole.conflist".to_vec()])),
            mtu: MtuFacts {
                underlay: Ok(1500),
                given: None,
                applied: Some(1420),
            },
        }
    }

    fn result(report: &PreflightReport, name: &str) -> Check {
        report
            .checks
            .iter()
            .find(|c| c.check == name)
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}"))
    }

    #[test]
    fn a_healthy_host_is_all_ok_in_a_fixed_order() {
        let r = report(&good());
        let names: Vec<&str> = r.checks.iter().map(|c| c.check.as_str()).collect();
        assert_eq!(
            names,
            [
                "pod-cidr",
                "cni-plugins",
                "cni-config",
                "wireguard",
                "forwarding",
                "br-netfilter",
                "mtu"
            ]
        );
        for c in &r.checks {
            assert_eq!(c.result, Level::Ok, "{c:?}");
            assert!(c.fix.is_none(), "{c:?}");
        }
        assert_eq!(r.worst(), Level::Ok);
        assert_eq!(r.summary(), "7 ok, 0 warning(s), 0 error(s)");
        assert!(r.foreign_cni_configs.is_empty());
        assert_eq!(
            result(&r, "pod-cidr").detail,
            "10.99.1.0/24, fd99:0:0:1::/64 (Node n1, spec.podCIDRs)"
        );
    }

    #[test]
    fn pod_cidrs_missing_unknown_or_malformed() {
        let c = pod_cidr(&PodCidrs::Missing {
            why: "no pod CIDR allocated (Node n1, spec.podCIDRs)".into(),
            fix: "allocate".into(),
        });
        assert_eq!(
            (c.result, c.fix.as_deref()),
            (Level::Error, Some("allocate"))
        );
        let c = pod_cidr(&PodCidrs::Unknown {
            why: "the API server did not answer".into(),
        });
        assert_eq!(c.result, Level::Warning);
        assert!(c.detail.contains("did not answer"), "{c:?}");

        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"}, "spec": {}
        }))
        .unwrap();
        let PodCidrs::Missing { why, fix } = from_node(&node) else {
            panic!()
        };
        assert!(why.contains("no pod CIDR allocated (Node n1"), "{why}");
        assert!(fix.contains("--allocate-node-cidrs"), "{fix}");
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.99.1.0/24"}
        }))
        .unwrap();
        assert!(
            matches!(from_node(&node), PodCidrs::Assigned { cidrs, .. } if cidrs == [net("10.99.1.0/24")])
        );
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.99.1.0/24", "nope\u{1b}[2J"]}
        }))
        .unwrap();
        let PodCidrs::Missing { why, .. } = from_node(&node) else {
            panic!()
        };
        assert!(why.contains("nope\\u{1b}[2J is not a CIDR"), "{why}");

        let snapshot = wormhole_core::Snapshot {
            nodes: vec![wormhole_core::NodeEntry {
                name: "n1".into(),
                public_key: String::new(),
                endpoint: Some("192.168.77.1:51820".into()),
                pod_cidrs: vec![],
                persistent_keepalive: None,
                origin: "peers.toml node[0]".into(),
            }],
            ..Default::default()
        };
        let PodCidrs::Missing { why, .. } = from_peers_file(&snapshot, "n1") else {
            panic!()
        };
        assert!(why.contains("peers.toml node[0]"), "{why}");
        assert!(
            matches!(from_peers_file(&snapshot, "n2"), PodCidrs::Missing { why, .. } if why.contains("no [[node]] named n2"))
        );
        assert_eq!(
            endpoint_ip(&snapshot, "n1"),
            Some("192.168.77.1".parse().unwrap())
        );
    }

    #[test]
    fn plugins_missing_or_where_the_runtime_does_not_look() {
        let mut f = good();
        f.plugins[2].1.clear();
        f.plugins[3].1.clear();
        let c = cni_plugins(&f.plugins, &f.bin_dirs);
        assert_eq!(c.result, Level::Error);
        assert_eq!(
            c.detail,
            "missing: portmap, loopback (looked in /opt/cni/bin, /usr/lib/cni)"
        );
        assert!(c.fix.unwrap().contains("containernetworking-plugins"));

        let mut f = good();
        for p in &mut f.plugins {
            p.1 = vec!["/usr/lib/cni".into()];
        }
        let c = cni_plugins(&f.plugins, &f.bin_dirs);
        assert_eq!(c.result, Level::Warning, "{c:?}");
        assert_eq!(
            c.detail,
            "all only in /usr/lib/cni, not in /opt/cni/bin (where the container runtime looks \
             by default)"
        );
        assert!(c.fix.unwrap().contains("bin_dir"));
        f.plugins[0].1.push("/opt/cni/bin".into());
        f.plugins[1].1.push("/opt/cni/bin".into());
        let c = cni_plugins(&f.plugins, &f.bin_dirs);
        assert!(
            c.detail
                .starts_with("portmap, loopback only in /usr/lib/cni, not in /opt/cni/bin"),
            "{c:?}"
        );
    }

    #[test]
    fn conflists_that_sort_first_are_found_as_the_runtimes_read_them() {
        let names: Vec<Vec<u8>> = [
            "10-flannel.conflist",
            "05-cilium.conflist",
            "10-wormhole.conflist",
            "99-loopback.conf",
            "00-notes.txt",
            "01-old.conf",
            "02-x.json",
            ".conf",
            ".10-wormhole.conflist.tmp.abc",
            "10-wormhole.conflist.bak",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        assert_eq!(
            shadowing(Some(&names)),
            [
                "01-old.conf",
                "02-x.json",
                "05-cilium.conflist",
                "10-flannel.conflist"
            ]
        );
        assert!(shadowing(None).is_empty());
        // Byte order, as the runtimes sort: digits, then upper case, then lower case.
        let names = vec![b"10-Zeta.conflist".to_vec(), b"10-zeta.conflist".to_vec()];
        assert_eq!(shadowing(Some(&names)), ["10-Zeta.conflist"]);
        // A hostile name is escaped.
        let names = vec![b"0\x1b[2J.conf".to_vec()];
        assert_eq!(shadowing(Some(&names)), ["0\\u{1b}[2J.conf"]);

        let mut f = good();
        f.conf_files = Ok(Some(vec![
            b"10-flannel.conflist".to_vec(),
            b"10-wormhole.conflist".to_vec(),
        ]));
        let r = report(&f);
        assert_eq!(r.foreign_cni_configs, ["10-flannel.conflist"]);
        let c = result(&r, "cni-config");
        assert_eq!(c.result, Level::Error);
        assert!(
            c.detail.starts_with(
                "10-flannel.conflist in /etc/cni/net.d sort(s) before 10-wormhole.conflist"
            ),
            "{c:?}"
        );
        assert!(c.fix.unwrap().contains("delete it from /etc/cni/net.d"));

        let many: Vec<Vec<u8>> = (0..25)
            .map(|i| format!("0{i:02}.conf").into_bytes())
            .collect();
        f.conf_files = Ok(Some(many));
        let r = report(&f);
        assert_eq!(r.foreign_cni_configs.len(), MAX_LISTED);
        assert!(result(&r, "cni-config").detail.contains(" and 5 more in "));

        let c = cni_config(Some(Path::new("/etc/cni/net.d")), &Ok(None), &[]);
        assert_eq!(c.result, Level::Ok);
        let c = cni_config(
            Some(Path::new("/etc/cni/net.d")),
            &Err("permission denied".into()),
            &[],
        );
        assert_eq!(c.result, Level::Warning);
        assert_eq!(cni_config(None, &Ok(None), &[]).result, Level::Ok);
    }

    #[test]
    fn each_backend_needs_its_own_device() {
        let mut f = good();
        f.backend = "kernel";
        assert_eq!(wireguard(&f).result, Level::Error);
        assert!(wireguard(&f).fix.unwrap().contains("modprobe wireguard"));
        f.wireguard_module = true;
        assert_eq!(wireguard(&f).result, Level::Ok);
        f.tun = Err("No such file or directory".into());
        assert_eq!(wireguard(&f).result, Level::Ok, "the kernel needs no TUN");

        f.backend = "embedded";
        let c = wireguard(&f);
        assert_eq!(c.result, Level::Error);
        assert_eq!(
            c.detail,
            "embedded backend: /dev/net/tun: No such file or directory"
        );
        assert!(c.fix.unwrap().contains("CharDevice"));

        f.backend = "userspace";
        f.tun = Ok(());
        f.userspace_program = Some(Err("wireguard-go is not in PATH".into()));
        let c = wireguard(&f);
        assert_eq!(c.result, Level::Error);
        assert!(c.fix.unwrap().contains("apt install wireguard-go"));
        f.userspace_program = Some(Ok("/usr/bin/wireguard-go".into()));
        let c = wireguard(&f);
        assert_eq!(c.result, Level::Ok);
        assert!(c.detail.ends_with("/usr/bin/wireguard-go"), "{c:?}");
    }

    #[test]
    fn forwarding_off_is_a_warning_only_where_the_agent_can_turn_it_on() {
        let mut f = good();
        f.phase = Phase::BeforeStart;
        f.ipv4_forward = off(true);
        let c = forwarding(&f);
        assert_eq!(c.result, Level::Warning, "{c:?}");
        assert_eq!(
            c.detail,
            "net.ipv4.ip_forward = 0: the agent turns it on at start"
        );
        // A container: /proc/sys read-only.
        f.ipv4_forward = off(false);
        let c = forwarding(&f);
        assert_eq!(c.result, Level::Error);
        assert!(c.detail.contains("read-only"), "{c:?}");
        assert!(c.fix.unwrap().contains("sysctl -w net.ipv4.ip_forward=1"));
        // Told not to touch it.
        f.ipv4_forward = off(true);
        f.agent_forwards = false;
        assert_eq!(forwarding(&f).result, Level::Error);
        // Running, and still off: the agent could not.
        let mut f = good();
        f.ipv6_forward = off(true);
        let c = forwarding(&f);
        assert_eq!(c.result, Level::Error);
        assert_eq!(
            c.detail,
            "net.ipv6.conf.all.forwarding = 0: pods will not reach other nodes"
        );
        // IPv6 off, but only IPv4 in use: fine; with IPv6 pod CIDRs: an error of its own.
        f.ipv6_forward = absent();
        assert_eq!(forwarding(&f).result, Level::Error);
        assert!(forwarding(&f).detail.contains("IPv6 is disabled"));
        f.pod_cidrs = PodCidrs::Assigned {
            cidrs: vec![net("10.99.1.0/24")],
            from: "x".into(),
        };
        let c = forwarding(&f);
        assert_eq!(
            (c.result, c.detail.as_str()),
            (Level::Ok, "net.ipv4.ip_forward = 1")
        );
    }

    #[test]
    fn br_netfilter_is_an_error_with_kube_proxy_only() {
        let mut f = good();
        f.bridge_nf_iptables = absent();
        f.bridge_nf_ip6tables = absent();
        let c = br_netfilter(&f);
        assert_eq!(c.result, Level::Error);
        assert!(c.detail.starts_with("br_netfilter is not loaded"), "{c:?}");
        assert!(c.fix.unwrap().contains("modprobe br_netfilter"));
        f.kubernetes = false;
        assert_eq!(br_netfilter(&f).result, Level::Warning);
        f.kubernetes = true;
        f.bridge_nf_iptables = on();
        f.bridge_nf_ip6tables = off(true);
        let c = br_netfilter(&f);
        assert_eq!(c.result, Level::Error);
        assert!(
            c.detail
                .starts_with("net.bridge.bridge-nf-call-ip6tables = 0"),
            "{c:?}"
        );
        // IPv4 only: the IPv6 switch does not matter.
        f.pod_cidrs = PodCidrs::Assigned {
            cidrs: vec![net("10.99.1.0/24")],
            from: "x".into(),
        };
        assert_eq!(br_netfilter(&f).result, Level::Ok);
    }

    #[test]
    fn mtu_room_for_wireguard_and_ipv6() {
        let m =
            |underlay: Result<u32, String>, given: Option<u32>, applied: Option<u32>| MtuFacts {
                underlay,
                given,
                applied,
            };
        let c = mtu(&m(Ok(1500), None, None), Phase::BeforeStart);
        assert_eq!(
            (c.result, c.detail.as_str()),
            (Level::Ok, "underlay 1500, WireGuard and pods 1420")
        );
        let c = mtu(&m(Ok(1450), Some(1420), Some(1420)), Phase::Running);
        assert_eq!(c.result, Level::Error);
        assert!(
            c.detail
                .contains("exceeds the underlay MTU 1450 minus 80 = 1370"),
            "{c:?}"
        );
        assert_eq!(c.fix.as_deref(), Some("--mtu 1370, or auto"));
        assert_eq!(
            mtu(&m(Ok(1500), Some(1380), None), Phase::BeforeStart).result,
            Level::Ok
        );
        let c = mtu(&m(Ok(1300), None, None), Phase::BeforeStart);
        assert_eq!(c.result, Level::Error);
        assert!(c.fix.unwrap().contains("at least 1360"));
        let c = mtu(
            &m(Err("no default route".into()), None, None),
            Phase::BeforeStart,
        );
        assert_eq!(c.result, Level::Error);
        assert!(c.fix.unwrap().contains("set --mtu"));
        assert_eq!(
            mtu(
                &m(Err("no default route".into()), Some(1400), None),
                Phase::BeforeStart
            )
            .result,
            Level::Warning
        );
        // Running: the underlay changed since start.
        let c = mtu(&m(Ok(9000), None, Some(1420)), Phase::Running);
        assert_eq!(c.result, Level::Warning);
        assert!(c.fix.unwrap().contains("restart the agent to use 8920"));
        assert_eq!(
            mtu(&m(Ok(1500), None, Some(1420)), Phase::Running).result,
            Level::Ok
        );
    }

    #[test]
    fn the_report_is_serialized_for_status_and_scripts() {
        let mut f = good();
        f.bridge_nf_iptables = absent();
        let r = report(&f);
        assert_eq!(r.worst(), Level::Error);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"][0]["result"], "ok");
        assert!(json["checks"][0].get("fix").is_none());
        assert_eq!(json["checks"][5]["check"], "br-netfilter");
        assert_eq!(json["checks"][5]["result"], "error");
        let back: PreflightReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }
}
