//! Reads what the preflight checks ([`crate::preflight`]) look at: sysctls, the CNI plugin and
//! configuration directories, `/dev/net/tun`, the wireguard module, the userspace program and
//! the underlay's MTU. Reads only: nothing here changes the host.

use std::ffi::OsString;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use wormhole_core::ErrorChain;
use wormhole_linux::Network;

use crate::preflight::{self, Facts, MtuFacts, Phase, PodCidrs, Sysctl};

/// At most this many CNI configuration files are read from the directory (the runtimes read
/// every one; a directory with more is broken anyway).
const MAX_CONF_FILES: usize = 4096;

/// What the checks need to know of the agent's options.
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    pub(crate) kubernetes: bool,
    pub(crate) backend: wormhole_linux::Backend,
    pub(crate) cni_conf_dir: Option<PathBuf>,
    pub(crate) cni_bin_dirs: Vec<PathBuf>,
    /// `--mtu`, if given.
    pub(crate) mtu: Option<u32>,
    /// The agent turns forwarding on.
    pub(crate) forwarding: bool,
    /// The host's network sysctls (`/proc/sys/net`, or where a container has them mounted).
    pub(crate) proc_sys_net: PathBuf,
    /// The address this node is reached at (the underlay's MTU is its interface's).
    pub(crate) local_ip: Option<IpAddr>,
}

/// Reads every fact: the files on the blocking pool, the MTU over `network`'s rtnetlink
/// connection. `applied`: the MTU in use (running).
pub(crate) async fn gather(
    inputs: &Inputs,
    network: &Network,
    pod_cidrs: PodCidrs,
    phase: Phase,
    applied: Option<u32>,
) -> Facts {
    let underlay = network
        .underlay_mtu(inputs.local_ip)
        .await
        .map_err(|e| ErrorChain(&e).to_string());
    let files = inputs.clone();
    let read = tokio::task::spawn_blocking(move || read_files(&files)).await;
    let files = read.unwrap_or_else(|e| FileFacts::unreadable(&e.to_string()));
    Facts {
        phase,
        kubernetes: inputs.kubernetes,
        pod_cidrs,
        bin_dirs: inputs.cni_bin_dirs.clone(),
        plugins: files.plugins,
        backend: inputs.backend.as_str(),
        wireguard_module: files.wireguard_module,
        tun: files.tun,
        userspace_program: files.userspace_program,
        ipv4_forward: files.ipv4_forward,
        ipv6_forward: files.ipv6_forward,
        agent_forwards: inputs.forwarding,
        bridge_nf_iptables: files.bridge_nf_iptables,
        bridge_nf_ip6tables: files.bridge_nf_ip6tables,
        conf_dir: inputs.cni_conf_dir.clone(),
        conf_files: files.conf_files,
        mtu: MtuFacts {
            underlay,
            given: inputs.mtu,
            applied,
        },
    }
}

/// What [`read_files`] read.
struct FileFacts {
    plugins: Vec<(&'static str, Vec<PathBuf>)>,
    wireguard_module: bool,
    tun: Result<(), String>,
    userspace_program: Option<Result<PathBuf, String>>,
    ipv4_forward: Sysctl,
    ipv6_forward: Sysctl,
    bridge_nf_iptables: Sysctl,
    bridge_nf_ip6tables: Sysctl,
    conf_files: Result<Option<Vec<Vec<u8>>>, String>,
}

impl FileFacts {
    /// Nothing could be read (the blocking task failed).
    fn unreadable(why: &str) -> Self {
        FileFacts {
            plugins: preflight::PLUGINS
                .iter()
                .map(|p| (*p, Vec::new()))
                .collect(),
            wireguard_module: false,
            tun: Err(why.to_owned()),
            userspace_program: None,
            ipv4_forward: Sysctl::default(),
            ipv6_forward: Sysctl::default(),
            bridge_nf_iptables: Sysctl::default(),
            bridge_nf_ip6tables: Sysctl::default(),
            conf_files: Err(why.to_owned()),
        }
    }
}

fn read_files(inputs: &Inputs) -> FileFacts {
    // `net.x.y` is `x/y` under the network sysctls' directory.
    let net = |name: &str| {
        sysctl(
            &inputs.proc_sys_net,
            name.strip_prefix("net.").unwrap_or(name),
        )
    };
    FileFacts {
        plugins: plugins(&inputs.cni_bin_dirs),
        wireguard_module: Path::new("/sys/module/wireguard").exists(),
        tun: tun(Path::new("/dev/net/tun")),
        userspace_program: (inputs.backend == wormhole_linux::Backend::Userspace)
            .then(userspace_program),
        ipv4_forward: net("net.ipv4.ip_forward"),
        ipv6_forward: net("net.ipv6.conf.all.forwarding"),
        bridge_nf_iptables: net("net.bridge.bridge-nf-call-iptables"),
        bridge_nf_ip6tables: net("net.bridge.bridge-nf-call-ip6tables"),
        conf_files: match &inputs.cni_conf_dir {
            Some(dir) => conf_files(dir),
            None => Ok(None),
        },
    }
}

/// The sysctl `name` (dotted) under `root` (`/proc/sys`): its value, trimmed (`None` when
/// absent or unreadable), and whether it opens for writing (nothing is written: a read-only
/// `/proc/sys`, as in a container, refuses the open).
pub(crate) fn sysctl(root: &Path, name: &str) -> Sysctl {
    let path = root.join(name.replace('.', "/"));
    Sysctl {
        value: std::fs::read_to_string(&path)
            .ok()
            .map(|v| v.trim().to_owned()),
        writable: std::fs::OpenOptions::new().write(true).open(&path).is_ok(),
    }
}

/// Each CNI plugin of the conflist and the directories of `dirs` holding it as an executable
/// file.
pub(crate) fn plugins(dirs: &[PathBuf]) -> Vec<(&'static str, Vec<PathBuf>)> {
    preflight::PLUGINS
        .iter()
        .map(|name| {
            let found = dirs
                .iter()
                .filter(|dir| {
                    std::fs::metadata(dir.join(name))
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
                .cloned()
                .collect();
            (*name, found)
        })
        .collect()
}

/// The names of the CNI configuration files in `dir` (not directories), as the runtimes list
/// them; `None` when `dir` does not exist.
pub(crate) fn conf_files(dir: &Path) -> Result<Option<Vec<Vec<u8>>>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name: OsString = entry.file_name();
        if !preflight::is_cni_config(name.as_bytes()) {
            continue;
        }
        if entry.path().is_dir() {
            continue;
        }
        if names.len() == MAX_CONF_FILES {
            return Err(format!(
                "more than {MAX_CONF_FILES} CNI configuration files: not all were read"
            ));
        }
        names.push(name.as_bytes().to_vec());
    }
    Ok(Some(names))
}

/// Opens `path` (`/dev/net/tun`) for reading and writing, as a TUN device is made, and closes
/// it again (no interface is created without an ioctl).
pub(crate) fn tun(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt as _;
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        _ => e.to_string(),
    })?;
    if !meta.file_type().is_char_device() {
        return Err("is not a character device".into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("cannot be opened: {e}"))
}

/// The userspace implementation the agent would start (`WG_USERSPACE_IMPLEMENTATION`, else
/// `wireguard-go`), found in `PATH`.
fn userspace_program() -> Result<PathBuf, String> {
    let program = std::env::var("WG_USERSPACE_IMPLEMENTATION")
        .or_else(|_| std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION"))
        .unwrap_or_else(|_| "wireguard-go".into());
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_program(&program, &path)
}

/// `program` (a path, or a name looked up in the `PATH` value `path`) as an executable file.
pub(crate) fn find_program(program: &str, path: &std::ffi::OsStr) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let shown = wormhole_core::Escaped(program);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!("{shown} is not an executable file"))
        };
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("{shown} is not in PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn reads_plugins_configurations_and_sysctls_from_a_tree() {
        let root = tempfile::tempdir().unwrap();
        let (opt, lib) = (root.path().join("opt"), root.path().join("lib"));
        std::fs::create_dir_all(&opt).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        executable(&opt.join("bridge"));
        executable(&lib.join("bridge"));
        executable(&lib.join("host-local"));
        std::fs::write(opt.join("portmap"), "not executable").unwrap();
        std::fs::create_dir(opt.join("loopback")).unwrap();
        let found = plugins(&[opt.clone(), lib.clone()]);
        assert_eq!(
            found,
            [
                ("bridge", vec![opt.clone(), lib.clone()]),
                ("host-local", vec![lib.clone()]),
                ("portmap", vec![]),
                ("loopback", vec![]),
            ]
        );

        let conf = root.path().join("net.d");
        assert_eq!(conf_files(&conf), Ok(None));
        std::fs::create_dir(&conf).unwrap();
        for name in ["10-flannel.conflist", "10-wormhole.conflist", "README"] {
            std::fs::write(conf.join(name), "{}").unwrap();
        }
        std::fs::create_dir(conf.join("00-dir.conf")).unwrap();
        let mut names = conf_files(&conf).unwrap().unwrap();
        names.sort();
        assert_eq!(
            names,
            [
                b"10-flannel.conflist".to_vec(),
                b"10-wormhole.conflist".to_vec()
            ]
        );

        let sys = root.path().join("sys");
        std::fs::create_dir_all(sys.join("net/ipv4")).unwrap();
        std::fs::write(sys.join("net/ipv4/ip_forward"), "1\n").unwrap();
        let s = sysctl(&sys, "net.ipv4.ip_forward");
        assert_eq!(s.value.as_deref(), Some("1"));
        assert!(s.writable);
        let s = sysctl(&sys, "net.bridge.bridge-nf-call-iptables");
        assert_eq!((s.value, s.writable), (None, false));
    }

    #[test]
    fn tun_must_be_a_character_device_that_opens() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(tun(&dir.path().join("tun")), Err("does not exist".into()));
        std::fs::write(dir.path().join("tun"), "").unwrap();
        assert_eq!(
            tun(&dir.path().join("tun")),
            Err("is not a character device".into())
        );
        // /dev/null is a character device that opens.
        assert_eq!(tun(Path::new("/dev/null")), Ok(()));
    }

    #[test]
    fn programs_are_found_in_path() {
        let dir = tempfile::tempdir().unwrap();
        executable(&dir.path().join("wireguard-go"));
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert_eq!(
            find_program("wireguard-go", &path),
            Ok(dir.path().join("wireguard-go"))
        );
        assert_eq!(
            find_program("boringtun", &path),
            Err("boringtun is not in PATH".into())
        );
        let full = dir.path().join("wireguard-go");
        assert_eq!(find_program(full.to_str().unwrap(), &path), Ok(full));
        assert!(find_program("/nonexistent/x", &path).is_err());
    }
}
