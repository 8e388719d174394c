//! Pods: namespaces attached to a node by the standard CNI plugins, as a container runtime
//! does it.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::netns::Netns;

/// Where Debian's containernetworking-plugins live.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// A pod: a namespace with an `eth0` on its node's bridge.
pub struct Pod {
    /// The pod's namespace, `{node namespace}{pod}`.
    pub ns: Netns,
    /// `n{node}{pod}`, for messages.
    pub name: String,
    /// The index of the node it runs on.
    pub node: usize,
    /// Its IPv4 address (from host-local).
    pub ip4: String,
    /// Its IPv6 address (from host-local).
    pub ip6: String,
}

impl Pod {
    /// Attaches a new pod `pod` to node `node` (namespace `node_ns`) with the plugins of
    /// `conflist` (a parsed `.conflist`), run in order in the node as a container runtime does.
    /// host-local keeps its leases in `ipam_dir` (its default is shared by every node of this
    /// machine).
    pub fn attach(
        node_ns: &Netns,
        node: usize,
        pod: &str,
        conflist: &Value,
        ipam_dir: &Path,
    ) -> Pod {
        let ns = Netns::new(format!("{}{pod}", node_ns.name));
        let mut prev: Option<Value> = None;
        for plugin in conflist["plugins"].as_array().expect("plugins") {
            let mut p = plugin.clone();
            p["name"] = conflist["name"].clone();
            p["cniVersion"] = conflist["cniVersion"].clone();
            if p.get("ipam").is_some() {
                p["ipam"]["dataDir"] = json!(ipam_dir);
            }
            if let Some(prev) = &prev {
                p["prevResult"] = prev.clone();
            }
            let ty = p["type"].as_str().expect("type").to_owned();
            let plugin = Path::new(CNI_PATH).join(&ty);
            let mut child = node_ns
                .command(&[plugin.to_str().unwrap()])
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", &ns.name)
                .env("CNI_NETNS", ns.path())
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
            name: format!("n{node}{pod}"),
            node,
            ip4: address(false),
            ip6: address(true),
            ns,
        }
    }

    /// One `ping -c 1` with a reply timeout of `wait` seconds.
    pub fn ping_once(&self, target: &str, wait: &str) -> bool {
        self.ns
            .run(&["ping", "-c", "1", "-W", wait, target])
            .status
            .success()
    }

    /// Up to `attempts` pings of 2 s each; true as soon as one is answered.
    pub fn ping(&self, target: &str, attempts: u32) -> bool {
        (0..attempts).any(|_| self.ping_once(target, "2"))
    }
}
