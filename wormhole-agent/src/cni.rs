//! The CNI conflist: the standard `bridge` + `host-local` plugins put pods on our bridge, with
//! the node's pod CIDRs and the WireGuard MTU, then `portmap` and `loopback`.

use std::path::Path;

use ipnet::IpNet;
use serde_json::json;
use wormhole_core::FileAccess;

/// The file we own in the CNI configuration directory. `10-` sorts it before most others.
pub(crate) const CONFLIST: &str = "10-wormhole.conflist";

/// The conflist for pods on `bridge` in `pod_cidrs`, with `mtu`.
pub(crate) fn render(bridge: &str, pod_cidrs: &[IpNet], mtu: u32) -> String {
    let ranges: Vec<_> = pod_cidrs
        .iter()
        .map(|c| json!([{ "subnet": c.to_string() }]))
        .collect();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "wormhole",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "isDefaultGateway": true,
                // Our nftables table masquerades; the plugin's own rules would duplicate it.
                "ipMasq": false,
                "hairpinMode": true,
                "mtu": mtu,
                "ipam": { "type": "host-local", "ranges": ranges }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "loopback" }
        ]
    });
    let mut text = serde_json::to_string_pretty(&conf).expect("JSON values serialize");
    text.push('\n');
    text
}

/// Makes `dir/10-wormhole.conflist` hold `text`: nothing is written when it already does (so
/// calling this on every pass repairs a deleted or edited file at no cost otherwise); else the
/// file is replaced atomically by the agent's one file writer
/// ([`write_file_atomically`](wormhole_core::write_file_atomically): temporary file, fsync,
/// rename; never blocked by a crash's leftovers), so the runtime never reads half a file. Its
/// temporary file's name (`.10-wormhole.conflist.tmp.*`) has no `.conflist` suffix: runtimes
/// ignore it. Other files in `dir` are left alone. Returns whether the file was (re)written.
pub(crate) fn write(dir: &Path, text: &str) -> Result<bool, wormhole_core::Error> {
    let path = dir.join(CONFLIST);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    wormhole_core::write_file_atomically(&path, text.as_bytes(), FileAccess::Public)?;
    Ok(true)
}

/// Removes our conflist (for `--cleanup-on-exit`).
pub(crate) fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(CONFLIST)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn renders_a_dual_stack_bridge_with_the_mtu() {
        let cidrs: Vec<IpNet> = vec![
            "10.99.1.0/24".parse().unwrap(),
            "fd99:0:0:1::/64".parse().unwrap(),
        ];
        let text = render("wormhole-br0", &cidrs, 1420);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "wormhole-br0");
        assert_eq!(bridge["mtu"], 1420);
        assert_eq!(bridge["isDefaultGateway"], true);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.99.1.0/24");
        assert_eq!(bridge["ipam"]["ranges"][1][0]["subnet"], "fd99:0:0:1::/64");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][2]["type"], "loopback");
    }

    #[test]
    fn writes_atomically_and_leaves_other_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("99-other.conflist"), "theirs").unwrap();
        assert!(write(dir.path(), "one").unwrap());
        let path = dir.path().join(CONFLIST);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644, "the runtime reads it");
        assert!(!write(dir.path(), "one").unwrap(), "rewrote an equal file");
        write(dir.path(), "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["10-wormhole.conflist", "99-other.conflist"]);
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert!(dir.path().join("99-other.conflist").exists());
    }

    #[test]
    fn the_temporary_file_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // Every name a temporary file of ours had or has: the PID (ours, or 1 in a container)
        // and random characters.
        for suffix in [
            std::process::id().to_string(),
            "1".into(),
            "aB3dE5gH7j".into(),
        ] {
            let tmp = dir.path().join(format!(".{CONFLIST}.tmp.{suffix}"));
            std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        }
        write(dir.path(), "ours").unwrap();
        write(dir.path(), "ours again").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CONFLIST)).unwrap(),
            "ours again"
        );
    }
}
