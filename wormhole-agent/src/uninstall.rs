//! [`Uninstall`]: takes Wormhole off a node (what `wormhole uninstall` runs, on the node or in a
//! cleanup DaemonSet's pod): every trace an agent leaves, each removed only if it is of the
//! kind Wormhole makes, the rest said and left alone. Idempotent: a second run finds nothing
//! and succeeds.
//!
//! What it removes, in order:
//! 1. the WireGuard interface (a `wireguard` link, or the `tun` link of the embedded or
//!    userspace device) and with it its addresses and the routes through it (protocol 87);
//!    a userspace implementation (wireguard-go) exits with its interface, and its UAPI socket
//!    in `/var/run/wireguard` goes with it (a stale one is removed);
//! 2. the nftables table `inet wormhole`;
//! 3. the pods' bridge (`wormhole-br0`, made by the CNI bridge plugin from our conflist) with
//!    its ports, the host ends of the pods' veths (their pod ends go with them: pods on this
//!    node lose their network, and must be restarted under the next one anyway), and
//!    host-local's leases for the network `wormhole` (`/var/lib/cni/networks/wormhole`);
//!    [`Uninstall::keep_bridge`] keeps all three, so that pods keep talking on this node until
//!    they are restarted;
//! 4. `10-wormhole.conflist` (and a temporary file of it left by a crash);
//! 5. the state directory's files: the Kubernetes state, the saved PSK, crash leftovers, the
//!    lock; the private key only with [`Uninstall::remove_keys`]; the directory when empty.
//!
//! IP forwarding stays on: the node's other networking (kube-proxy, the next pod network, the
//! container runtime's port mappings) needs it, and the agent never recorded whether it was
//! off before. The runtime's own cache of results (`/var/lib/cni/results`) is the runtime's:
//! it removes its entries as it deletes the pods.
//!
//! It refuses while an agent runs on the node (the agent holds a shared lock on
//! `STATE_DIR/agent.lock`, see [`crate::lock`]) unless [`Uninstall::force`]d: a running agent
//! would put everything back at its next pass.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wormhole_core::{ErrorChain, Escaped, HostNetwork as _, InterfaceName};
use wormhole_linux::{Network, Nftables};

use crate::{EnvironmentError, Error, cni, lock};

/// The files of the state directory that uninstall removes (besides the private key and the
/// lock). A file added to the state directory belongs here.
const STATE_FILES: [&str; 2] = [wormhole_k8s::STATE_FILE, wormhole_k8s::PSK_FILE];

/// The CNI network name of our conflist: host-local keeps its leases in a directory of this
/// name.
const CNI_NETWORK: &str = "wormhole";

/// How long a userspace implementation gets to exit after its interface is deleted.
const SOCKET_GRACE: Duration = Duration::from_secs(3);

/// Link kinds Wormhole makes for its WireGuard interface.
const WIREGUARD_KINDS: [&str; 2] = ["wireguard", "tun"];

/// One trace of Wormhole on the node: what it is, its name, and a word on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// What it is: `interface`, `routes`, `uapi-socket`, `nftables`, `pod-interfaces`,
    /// `bridge`, `ipam`, `conflist`, `file`, `directory`, `private-key`, `forwarding`.
    pub kind: String,
    /// Its name (an interface, a path, a table), escaped as are all strings here.
    pub name: String,
    /// More: how many routes, why it was kept or could not be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What [`Uninstall::run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UninstallReport {
    /// Removed, in order.
    pub removed: Vec<Trace>,
    /// Left in place on purpose, with why.
    pub kept: Vec<Trace>,
    /// Not removed, with why: the uninstall is incomplete (run it again once the cause is
    /// fixed).
    pub failed: Vec<Trace>,
    /// Forced while an agent was running.
    #[serde(default)]
    pub forced: bool,
}

/// Removes Wormhole from this node; every option defaults to `wormhole run`'s default.
///
/// Each trace is removed only if it is of the kind Wormhole makes (a `wireguard` or `tun`
/// interface, a bridge); the private key stays unless [`remove_keys`](Self::remove_keys), IP
/// forwarding stays on. Refused while an agent runs on the node (it holds a shared lock in its
/// state directory) unless [`force`](Self::force)d. Running it again finds nothing and succeeds.
///
/// ```no_run
/// # async fn demo() -> Result<(), wormhole_agent::Error> {
/// let report = wormhole_agent::Uninstall::new().remove_keys(true).run().await?;
/// for trace in &report.removed {
///     println!("removed {} {}", trace.kind, trace.name);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "call run() to uninstall"]
pub struct Uninstall {
    interface: InterfaceName,
    bridge: InterfaceName,
    cni_conf_dir: Option<PathBuf>,
    cni_data_dir: PathBuf,
    key_file: PathBuf,
    remove_keys: bool,
    keep_bridge: bool,
    force: bool,
    /// Off in unit tests only: they run in the host's namespace.
    network: bool,
}

impl Default for Uninstall {
    fn default() -> Self {
        Uninstall {
            interface: "wormhole0".parse().expect("a valid name"),
            bridge: "wormhole-br0".parse().expect("a valid name"),
            cni_conf_dir: Some("/etc/cni/net.d".into()),
            cni_data_dir: crate::DEFAULT_CNI_DATA_DIR.into(),
            key_file: "/var/lib/wormhole/private.key".into(),
            remove_keys: false,
            keep_bridge: false,
            force: false,
            network: true,
        }
    }
}

/// `path` for a report, escaped.
fn shown(path: &Path) -> String {
    Escaped(&path.to_string_lossy()).to_string()
}

/// An error and its causes, escaped (they may quote a name read from the host).
fn why(e: &wormhole_core::Error) -> String {
    wormhole_core::escape(&ErrorChain(e).to_string()).into_owned()
}

fn trace(kind: &str, name: impl Into<String>, detail: Option<String>) -> Trace {
    Trace {
        kind: kind.into(),
        name: name.into(),
        detail,
    }
}

impl Uninstall {
    /// With the defaults of `wormhole run`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The WireGuard interface (default `wormhole0`).
    pub fn interface(mut self, name: InterfaceName) -> Self {
        self.interface = name;
        self
    }

    /// The pods' bridge (default `wormhole-br0`).
    pub fn bridge(mut self, name: InterfaceName) -> Self {
        self.bridge = name;
        self
    }

    /// Where the conflist was written (default `/etc/cni/net.d`; `None`: none was).
    pub fn cni_conf_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cni_conf_dir = dir;
        self
    }

    /// host-local's data directory (default `/var/lib/cni/networks`): its `wormhole`
    /// subdirectory holds the pods' leases.
    pub fn cni_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cni_data_dir = dir.into();
        self
    }

    /// The agent's key file (default `/var/lib/wormhole/private.key`); its directory is the
    /// state directory.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = path.into();
        self
    }

    /// Also removes the private key (default false: a node that comes back keeps its identity).
    pub fn remove_keys(mut self, on: bool) -> Self {
        self.remove_keys = on;
        self
    }

    /// Leaves the bridge, the pods' interfaces on it and their leases (default false).
    pub fn keep_bridge(mut self, on: bool) -> Self {
        self.keep_bridge = on;
        self
    }

    /// Goes ahead even while an agent runs on this node (default false; it would put back what
    /// this removes at its next pass unless it is stopped right after).
    pub fn force(mut self, on: bool) -> Self {
        self.force = on;
        self
    }

    fn state_dir(&self) -> PathBuf {
        self.key_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    }

    /// Removes every trace (the interface and its routes, the nftables table, the bridge and
    /// its ports, the leases, the conflist, the state files), in the calling thread's network
    /// namespace. An item that cannot be removed is listed in [`UninstallReport::failed`] and
    /// the others are still removed. Errors only when an agent runs here (unless
    /// [`force`](Self::force)d), or when that cannot be told.
    pub async fn run(self) -> Result<UninstallReport, Error> {
        let state_dir = self.state_dir();
        let mut report = UninstallReport::default();
        let lock_path = lock::path(&state_dir);
        let held = match lock::try_exclusive(&state_dir) {
            Ok(Some(held)) => held,
            Ok(None) if self.force => {
                report.forced = true;
                None
            }
            Ok(None) => return Err(EnvironmentError::AgentRunning { lock: lock_path }.into()),
            Err(source) if !self.force => {
                return Err(Error::Io {
                    what: format!(
                        "cannot tell whether an agent runs on this node ({})",
                        lock_path.display()
                    ),
                    source,
                });
            }
            Err(_) => None,
        };

        if self.network {
            self.network_traces(&mut report).await;
        }
        if self.keep_bridge {
            report.kept.push(trace(
                "bridge",
                self.bridge.to_string(),
                Some("kept as asked, with the pods' interfaces and their leases".into()),
            ));
        } else {
            let leases = self.cni_data_dir.join(CNI_NETWORK);
            remove_dir(&mut report, "ipam", &leases);
        }
        if let Some(dir) = &self.cni_conf_dir {
            remove_file(&mut report, "conflist", &dir.join(cni::CONFLIST));
            remove_leftovers(&mut report, dir, cni::CONFLIST);
        }
        for name in STATE_FILES {
            remove_file(&mut report, "file", &state_dir.join(name));
            remove_leftovers(&mut report, &state_dir, name);
        }
        let key_name = self.key_file.file_name().unwrap_or(OsStr::new(""));
        if self.remove_keys {
            remove_file(&mut report, "private-key", &self.key_file);
            remove_leftovers(&mut report, &state_dir, &key_name.to_string_lossy());
        } else if self.key_file.exists() {
            report.kept.push(trace(
                "private-key",
                shown(&self.key_file),
                Some("kept: pass --remove-keys to remove it".into()),
            ));
        }
        report.kept.push(trace(
            "forwarding",
            "net.ipv4.ip_forward, net.ipv6.conf.all.forwarding",
            Some(
                "left on: the node's other networking (kube-proxy, the next pod network) needs \
                 it, and whether it was off before Wormhole is not known"
                    .into(),
            ),
        ));
        // Last, while still holding it: no agent started in the meantime.
        if held.is_some() {
            let _ = std::fs::remove_file(&lock_path);
        }
        drop(held);
        if state_dir != Path::new(".") && std::fs::remove_dir(&state_dir).is_ok() {
            report
                .removed
                .push(trace("directory", shown(&state_dir), None));
        }
        Ok(report)
    }

    /// The interface and its routes, the UAPI socket, the nftables table, the bridge and its
    /// ports.
    async fn network_traces(&self, report: &mut UninstallReport) {
        self.interface_and_routes(report).await;
        let table = format!("inet {}", wormhole_linux::NFT_TABLE);
        match Nftables::new().delete().await {
            Ok(true) => report.removed.push(trace("nftables", table, None)),
            Ok(false) => {}
            Err(e) => report.failed.push(trace("nftables", table, Some(why(&e)))),
        }
        if !self.keep_bridge {
            self.bridge_and_pods(report).await;
        }
    }

    /// The WireGuard interface with its routes, and the UAPI socket of a userspace or embedded
    /// device.
    async fn interface_and_routes(&self, report: &mut UninstallReport) {
        let name = self.interface.as_str();
        let socket = Path::new(wormhole_linux::SOCKET_DIR).join(format!("{name}.sock"));
        let socket_was_there = std::fs::symlink_metadata(&socket).is_ok();
        let network = match Network::new(name) {
            Ok(network) => network,
            Err(e) => {
                report.failed.push(trace("interface", name, Some(why(&e))));
                return;
            }
        };
        match network.link_kind().await {
            Ok(None) => {}
            Ok(Some(kind)) if WIREGUARD_KINDS.contains(&kind.as_str()) => {
                let routes = match network.read().await {
                    Ok((_, routes)) => routes.len(),
                    Err(_) => 0,
                };
                match network.delete_link().await {
                    Ok(_) => {
                        report
                            .removed
                            .push(trace("interface", name, Some(format!("{kind} link"))));
                        if routes > 0 {
                            report.removed.push(trace(
                                "routes",
                                format!("proto {} dev {name}", wormhole_linux::ROUTE_PROTOCOL),
                                Some(format!("{routes} route(s), with the interface")),
                            ));
                        }
                    }
                    Err(e) => report.failed.push(trace("interface", name, Some(why(&e)))),
                }
            }
            Ok(Some(kind)) => report.failed.push(trace(
                "interface",
                name,
                Some(format!(
                    "a {} link, not one Wormhole makes (wireguard or tun): not deleted; check \
                     --interface",
                    if kind.is_empty() { "plain" } else { &kind }
                )),
            )),
            Err(e) => report.failed.push(trace("interface", name, Some(why(&e)))),
        }
        self.uapi_socket(report, &socket, socket_was_there).await;
    }

    /// The UAPI socket: its process (wireguard-go) exits and removes it when its interface is
    /// deleted; a file nobody serves is removed; one still served is reported.
    async fn uapi_socket(&self, report: &mut UninstallReport, socket: &Path, was_there: bool) {
        let served = |path: PathBuf| async move {
            tokio::task::spawn_blocking(move || {
                std::os::unix::net::UnixStream::connect(&path).is_ok()
            })
            .await
            .unwrap_or(false)
        };
        let exited = || {
            trace(
                "uapi-socket",
                shown(socket),
                Some("its userspace WireGuard exited with the interface".into()),
            )
        };
        if std::fs::symlink_metadata(socket).is_err() {
            if was_there {
                report.removed.push(exited());
            }
            return;
        }
        let deadline = tokio::time::Instant::now() + SOCKET_GRACE;
        let mut was_served = false;
        while served(socket.to_owned()).await {
            was_served = true;
            if tokio::time::Instant::now() >= deadline {
                report.failed.push(trace(
                    "uapi-socket",
                    shown(socket),
                    Some(
                        "still served by a running process (an agent, or a userspace WireGuard \
                         whose interface is gone): stop it, then run uninstall again"
                            .into(),
                    ),
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match std::fs::remove_file(socket) {
            Ok(()) => report.removed.push(trace(
                "uapi-socket",
                shown(socket),
                Some("left by a stopped device".into()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && was_served => {
                report.removed.push(exited())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .failed
                .push(trace("uapi-socket", shown(socket), Some(e.to_string()))),
        }
    }

    /// The pods' bridge and its ports.
    async fn bridge_and_pods(&self, report: &mut UninstallReport) {
        let name = self.bridge.as_str();
        let fail = |report: &mut UninstallReport, why: String| {
            report.failed.push(trace("bridge", name, Some(why)));
        };
        let network = match Network::new(name) {
            Ok(network) => network,
            Err(e) => return fail(report, why(&e)),
        };
        match network.link_kind().await {
            Ok(None) => {}
            Ok(Some(kind)) if kind == "bridge" => {
                match network.delete_ports().await {
                    Ok(ports) if ports.is_empty() => {}
                    Ok(ports) => {
                        let count = ports.len();
                        let mut names: Vec<String> = ports
                            .iter()
                            .take(10)
                            .map(|p| Escaped(p).to_string())
                            .collect();
                        if count > names.len() {
                            names.push(format!("and {} more", count - names.len()));
                        }
                        report.removed.push(trace(
                            "pod-interfaces",
                            format!("{count} on {name}"),
                            Some(names.join(", ")),
                        ));
                    }
                    Err(e) => return fail(report, why(&e)),
                }
                match network.delete_link().await {
                    Ok(_) => report.removed.push(trace("bridge", name, None)),
                    Err(e) => fail(report, why(&e)),
                }
            }
            Ok(Some(kind)) => fail(
                report,
                format!(
                    "a {} link, not a bridge: not deleted; check --bridge",
                    if kind.is_empty() { "plain" } else { &kind }
                ),
            ),
            Err(e) => fail(report, why(&e)),
        }
    }
}

/// Removes the file at `path` (never following a symlink: the link itself goes).
fn remove_file(report: &mut UninstallReport, kind: &str, path: &Path) {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Ok(meta) if meta.is_dir() => report.failed.push(trace(
            kind,
            shown(path),
            Some("a directory, not a file: not removed".into()),
        )),
        _ => match std::fs::remove_file(path) {
            Ok(()) => report.removed.push(trace(kind, shown(path), None)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .failed
                .push(trace(kind, shown(path), Some(e.to_string()))),
        },
    }
}

/// Removes the directory at `path` and what it holds (a symlink is removed, not followed).
fn remove_dir(report: &mut UninstallReport, kind: &str, path: &Path) {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Ok(meta) if !meta.is_dir() => remove_file(report, kind, path),
        _ => match std::fs::remove_dir_all(path) {
            Ok(()) => report.removed.push(trace(kind, shown(path), None)),
            Err(e) => report
                .failed
                .push(trace(kind, shown(path), Some(e.to_string()))),
        },
    }
}

/// Removes the temporary files the one writer ([`wormhole_core::write_file_atomically`]) may
/// have left for `name` in `dir` after a crash (`.NAME.tmp.*`, files only).
fn remove_leftovers(report: &mut UninstallReport, dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.tmp.");
    for entry in entries.flatten() {
        if entry.file_name().as_bytes().starts_with(prefix.as_bytes())
            && entry.file_type().is_ok_and(|t| !t.is_dir())
        {
            remove_file(report, "file", &entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything but the network: files in a state directory, a conflist, leases.
    #[tokio::test]
    async fn removes_our_files_only_and_keeps_the_key_unless_asked() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let conf = root.path().join("net.d");
        let data = root.path().join("networks");
        for dir in [&state, &conf, &data.join("wormhole"), &data.join("cbr0")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let write = |path: PathBuf| std::fs::write(path, "x").unwrap();
        write(state.join("private.key"));
        write(state.join(".private.key.tmp.kQ3vZ8wXy1"));
        write(state.join("kubernetes-state.json"));
        write(state.join("psk"));
        write(state.join(".psk.tmp.1"));
        write(state.join("notes.txt"));
        write(conf.join("10-wormhole.conflist"));
        write(conf.join(".10-wormhole.conflist.tmp.77"));
        write(conf.join("10-flannel.conflist"));
        write(data.join("wormhole/10.99.1.2"));
        write(data.join("cbr0/10.244.0.2"));
        let victim = root.path().join("victim");
        write(victim.clone());
        std::os::unix::fs::symlink(&victim, state.join(".psk.tmp.2")).unwrap();

        let uninstall = || {
            Uninstall {
                network: false,
                ..Uninstall::new()
            }
            .interface("whfx-no0".parse().unwrap())
            .bridge("whfx-nobr0".parse().unwrap())
            .cni_conf_dir(Some(conf.clone()))
            .cni_data_dir(&data)
            .key_file(state.join("private.key"))
        };
        let report = uninstall().run().await.unwrap();
        let removed: Vec<&str> = report.removed.iter().map(|t| t.name.as_str()).collect();
        let name = |p: PathBuf| p.to_string_lossy().into_owned();
        for gone in [
            data.join("wormhole"),
            conf.join("10-wormhole.conflist"),
            conf.join(".10-wormhole.conflist.tmp.77"),
            state.join("kubernetes-state.json"),
            state.join("psk"),
            state.join(".psk.tmp.1"),
            state.join(".psk.tmp.2"),
        ] {
            assert!(
                removed.contains(&name(gone.clone()).as_str()),
                "{gone:?} in {removed:?}"
            );
            assert!(std::fs::symlink_metadata(&gone).is_err(), "{gone:?}");
        }
        assert!(report.failed.is_empty(), "{report:?}");
        assert!(!report.forced);
        // Not ours, or not asked for.
        for kept in [
            conf.join("10-flannel.conflist"),
            data.join("cbr0/10.244.0.2"),
            state.join("private.key"),
            state.join(".private.key.tmp.kQ3vZ8wXy1"),
            state.join("notes.txt"),
            victim.clone(),
        ] {
            assert!(kept.exists(), "{kept:?} removed");
        }
        let kept: Vec<&str> = report.kept.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(kept, ["private-key", "forwarding"]);

        // Again: nothing left to remove but the key, when asked for it.
        let report = uninstall().remove_keys(true).run().await.unwrap();
        let removed: Vec<(&str, &str)> = report
            .removed
            .iter()
            .map(|t| (t.kind.as_str(), t.name.as_str()))
            .collect();
        assert_eq!(
            removed,
            [
                ("private-key", name(state.join("private.key")).as_str()),
                (
                    "file",
                    name(state.join(".private.key.tmp.kQ3vZ8wXy1")).as_str()
                ),
            ]
        );
        assert!(state.join("notes.txt").exists(), "a file not ours stays");
        std::fs::remove_file(state.join("notes.txt")).unwrap();
        let report = uninstall().run().await.unwrap();
        assert_eq!(report.removed.len(), 1, "{report:?}");
        assert_eq!(report.removed[0].kind, "directory");
        assert!(!state.exists());
        let report = uninstall().run().await.unwrap();
        assert!(
            report.removed.is_empty() && report.failed.is_empty(),
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn refuses_while_an_agent_holds_the_lock_unless_forced() {
        let root = tempfile::tempdir().unwrap();
        let held = lock::hold_shared(root.path()).unwrap();
        std::fs::write(root.path().join("psk"), "x").unwrap();
        let uninstall = || {
            Uninstall {
                network: false,
                ..Uninstall::new()
            }
            .interface("whfx-no0".parse().unwrap())
            .bridge("whfx-nobr0".parse().unwrap())
            .cni_conf_dir(None)
            .cni_data_dir(root.path().join("networks"))
            .key_file(root.path().join("private.key"))
        };
        let err = uninstall().run().await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("an agent is running on this node") && text.contains("agent.lock"),
            "{text}"
        );
        assert!(root.path().join("psk").exists(), "refused: nothing removed");
        let report = uninstall().force(true).run().await.unwrap();
        assert!(report.forced);
        assert!(!root.path().join("psk").exists());
        drop(held);
    }
}
