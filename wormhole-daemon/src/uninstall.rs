//! `wormhole uninstall`: removes every trace of Wormhole from this node (what a cleanup
//! DaemonSet or the node's operator runs), printing what it removed; the work is
//! [`wormhole_agent::Uninstall`]'s.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use wormhole_agent::{Trace, Uninstall, UninstallReport};
use wormhole_core::{InterfaceName, escape};

use crate::cli::Output;

/// `wormhole uninstall`. Where the agent ran with other names or paths, give the same flags
/// (or environment, or `--config` file) as to `wormhole run`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also remove the node's private key (without it, a node installed again keeps its
    /// public key).
    #[arg(long)]
    pub remove_keys: bool,
    /// Keep the pods' bridge, their interfaces on it and their address leases: pods on this
    /// node keep talking to each other until they are restarted.
    #[arg(long)]
    pub keep_bridge: bool,
    /// Go ahead although an agent runs on this node (it would put back what is removed at its
    /// next pass unless stopped).
    #[arg(long)]
    pub force: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// The `wormhole run` config file to read the names and paths below from (command line
    /// and environment win).
    #[arg(long, env = "WORMHOLE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The WireGuard interface [default: wormhole0].
    #[arg(long, env = "WORMHOLE_INTERFACE")]
    pub interface: Option<String>,
    /// The pods' bridge [default: wormhole-br0].
    #[arg(long, env = "WORMHOLE_BRIDGE")]
    pub bridge: Option<String>,
    /// Where 10-wormhole.conflist was written [default: /etc/cni/net.d].
    #[arg(long, env = "WORMHOLE_CNI_CONF_DIR", value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// host-local's data directory; its `wormhole` directory holds the pods' leases
    /// [default: /var/lib/cni/networks].
    #[arg(long, env = "WORMHOLE_CNI_DATA_DIR", value_name = "DIR")]
    pub cni_data_dir: Option<PathBuf>,
    /// The agent's key file; its directory is the state directory
    /// [default: /var/lib/wormhole/private.key].
    #[arg(long, env = "WORMHOLE_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// What uninstall reads of a `wormhole run` config file (the other options are ignored).
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    interface: Option<String>,
    bridge: Option<String>,
    cni_conf_dir: Option<PathBuf>,
    cni_data_dir: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

impl UninstallArgs {
    /// The uninstall these arguments ask for, checked (bad names are a usage error).
    pub fn resolve(self) -> Result<Uninstall, String> {
        let file: FileConfig = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
            }
        };
        let name = |given: Option<String>, file: Option<String>, default: &str, flag: &str| {
            given
                .or(file)
                .as_deref()
                .unwrap_or(default)
                .parse::<InterfaceName>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        let interface = name(self.interface, file.interface, "wormhole0", "--interface")?;
        let bridge = name(self.bridge, file.bridge, "wormhole-br0", "--bridge")?;
        if interface == bridge {
            return Err(format!(
                "--bridge and --interface are both {interface}: they must differ"
            ));
        }
        let mut uninstall = Uninstall::new()
            .interface(interface)
            .bridge(bridge)
            .remove_keys(self.remove_keys)
            .keep_bridge(self.keep_bridge)
            .force(self.force);
        if let Some(dir) = self.cni_conf_dir.or(file.cni_conf_dir) {
            uninstall = uninstall.cni_conf_dir(Some(dir));
        }
        if let Some(dir) = self.cni_data_dir.or(file.cni_data_dir) {
            uninstall = uninstall.cni_data_dir(dir);
        }
        if let Some(path) = self.key_file.or(file.key_file) {
            uninstall = uninstall.key_file(path);
        }
        Ok(uninstall)
    }
}

fn line(verb: &str, t: &Trace) -> String {
    let detail = t
        .detail
        .as_deref()
        .map(|d| format!(" ({})", escape(d)))
        .unwrap_or_default();
    format!("{verb} {} {}{detail}\n", escape(&t.kind), escape(&t.name))
}

/// What `wormhole uninstall` prints: each trace removed, kept and not removed, one a line.
pub fn text(report: &UninstallReport) -> String {
    let mut out = String::new();
    if report.forced {
        out += "forced: an agent runs on this node and will put things back unless stopped\n";
    }
    if report.removed.is_empty() && report.failed.is_empty() {
        out += "nothing to remove: no trace of Wormhole on this node\n";
    }
    for t in &report.removed {
        out += &line("removed", t);
    }
    for t in &report.failed {
        out += &line("NOT REMOVED", t);
    }
    for t in &report.kept {
        out += &line("kept", t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: &str, name: &str, detail: Option<&str>) -> Trace {
        Trace {
            kind: kind.into(),
            name: name.into(),
            detail: detail.map(Into::into),
        }
    }

    #[test]
    fn says_what_it_removed_kept_and_could_not_remove() {
        let report = UninstallReport {
            removed: vec![
                t("interface", "wormhole0", Some("tun link")),
                t("nftables", "inet wormhole", None),
            ],
            kept: vec![t("private-key", "/var/lib/wormhole/private.key", None)],
            failed: vec![t("bridge", "wormhole-br0", Some("a\u{1b}[2J"))],
            forced: false,
        };
        assert_eq!(
            text(&report),
            "removed interface wormhole0 (tun link)\n\
             removed nftables inet wormhole\n\
             NOT REMOVED bridge wormhole-br0 (a\\u{1b}[2J)\n\
             kept private-key /var/lib/wormhole/private.key\n"
        );
        let empty = UninstallReport {
            kept: report.kept.clone(),
            ..Default::default()
        };
        assert!(text(&empty).starts_with("nothing to remove"));
    }

    #[test]
    fn names_are_checked_and_a_config_file_is_read() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            let mut full = vec!["wormhole", "uninstall"];
            full.extend_from_slice(args);
            match crate::cli::Cli::try_parse_from(full).unwrap().command {
                crate::cli::Command::Uninstall(args) => args.resolve(),
                _ => unreachable!(),
            }
        };
        let err = parse(&["--interface", "s*"]).unwrap_err();
        assert!(
            err.starts_with("--interface: invalid interface name"),
            "{err}"
        );
        let err = parse(&["--bridge", "wormhole0"]).unwrap_err();
        assert!(err.contains("must differ"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "interface = \"wg\\\"x\"\nresync = \"30s\"\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(
            err.starts_with("--interface: invalid interface name"),
            "{err}"
        );
        std::fs::write(&path, "interface = \"wg7\"\nresync = \"30s\"\n").unwrap();
        assert!(parse(&["--config", path.to_str().unwrap()]).is_ok());
    }
}
