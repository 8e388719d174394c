//! Peers outside the cluster (issue 13), in file mode: a "laptop" namespace listed in the peers
//! file's `[[external]]`, configured only from `wormhole peer-config` (wg-quick semantics by
//! hand: `wg setconf`, the address, a route per allowed IP), reaches pods on every node and is
//! reached from them; a packet from it with a source outside its allowed IPs is dropped; the
//! underlay carries only WireGuard.

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::{
    BIN, Backend, Cluster, Netns, assert_only_wireguard, poll, pubkey, root_or_skip, scaled, sh,
    write_atomically,
};

/// wireguard-go in the foreground, killed on drop.
pub(crate) struct WireguardGo(Child);

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_external_peer_reaches_pods_on_every_node_embedded() {
    if root_or_skip("an_external_peer_reaches_pods_on_every_node_embedded") {
        external_peer(Backend::Embedded);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn an_external_peer_reaches_pods_on_every_node_kernel() {
    if root_or_skip("an_external_peer_reaches_pods_on_every_node_kernel") {
        external_peer(Backend::Kernel);
    }
}

/// The "laptop" namespace, configured from a `wormhole peer-config` output: wireguard-go, `wg
/// setconf`, its address and a route per allowed IP (what wg-quick does).
pub(crate) struct Laptop {
    pub(crate) ns: Netns,
    pub(crate) iface: String,
    /// The AllowedIPs of every `[Peer]`, routed into the interface.
    pub(crate) routes: Vec<String>,
    _wg: WireguardGo,
}

impl Laptop {
    /// A namespace on the underlay at 192.168.77.150.
    pub(crate) fn plug(c: &Cluster) -> Netns {
        let laptop = Netns::new(format!("{}l", c.prefix));
        laptop.plug(&c.underlay, &format!("{}xl", c.prefix), "192.168.77.150/24");
        laptop
    }

    /// Configures `ns` from `conf` with the private key `private`; its address must be
    /// 10.98.0.2/32.
    pub(crate) fn configure(c: &Cluster, ns: Netns, conf: &str, private: &str) -> Laptop {
        let iface = format!("{}wl", c.prefix);
        let mut setconf = String::new();
        let mut address = None;
        let mut routes = Vec::new();
        for line in conf.lines() {
            if let Some(a) = line.strip_prefix("Address = ") {
                address = Some(a.to_owned());
                continue;
            }
            if let Some(list) = line.strip_prefix("AllowedIPs = ") {
                routes.extend(list.split(", ").map(str::to_owned));
            }
            setconf += &line.replace("<the private key of laptop>", private.trim());
            setconf += "\n";
        }
        let address = address.unwrap_or_else(|| panic!("no Address in\n{conf}"));
        assert_eq!(address, "10.98.0.2/32", "{conf}");
        let file = c.work.path().join("laptop.conf");
        std::fs::write(&file, &setconf).unwrap();
        let wg = WireguardGo(
            ns.command(&["wireguard-go", "-f", &iface])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        assert!(
            poll(scaled(Duration::from_secs(10)), || {
                ns.run(&["ip", "link", "show", &iface])
                    .status
                    .success()
                    .then_some(())
            })
            .is_some(),
            "wireguard-go made no {iface}"
        );
        ns.sh(&["wg", "setconf", &iface, file.to_str().unwrap()]);
        ns.sh(&["ip", "addr", "add", &address, "dev", &iface]);
        ns.sh(&["ip", "link", "set", &iface, "mtu", "1420", "up"]);
        for route in &routes {
            ns.sh(&["ip", "route", "add", route, "dev", &iface]);
        }
        Laptop {
            ns,
            iface,
            routes,
            _wg: wg,
        }
    }

    /// A ping from `source` to `to` is answered (3 tries).
    pub(crate) fn ping(&self, source: &str, to: &str) -> bool {
        (0..3).any(|_| {
            self.ns
                .run(&["ping", "-c", "1", "-W", "2", "-I", source, to])
                .status
                .success()
        })
    }

    /// It reaches every pod of `c` and every pod reaches it; a packet from a source outside
    /// its allowed IPs (10.98.0.99) reaches no pod.
    pub(crate) fn reaches_every_pod_and_spoofing_is_dropped(&self, c: &Cluster) {
        for pod in &c.pods {
            assert!(
                self.ping("10.98.0.2", &pod.ip4),
                "laptop -> {} ({}): no answer\n{}\n{}",
                pod.name,
                pod.ip4,
                self.ns.sh(&["wg", "show", &self.iface]),
                c.logs()
            );
            assert!(
                pod.ping("10.98.0.2", 3),
                "{} -> laptop: no answer",
                pod.name
            );
        }
        // A source outside its allowed IPs: dropped by the node's WireGuard.
        self.ns
            .sh(&["ip", "addr", "add", "10.98.0.99/32", "dev", &self.iface]);
        for pod in &c.pods {
            assert!(
                !self.ping("10.98.0.99", &pod.ip4),
                "a packet from 10.98.0.99 (not the laptop's) reached {}",
                pod.name
            );
        }
        self.ns
            .sh(&["ip", "addr", "del", "10.98.0.99/32", "dev", &self.iface]);
    }
}

fn external_peer(backend: Backend) {
    let mut c = Cluster::new(2, backend);
    let laptop = Laptop::plug(&c);
    let private = sh(&[BIN, "genkey"]);
    let public = pubkey(&private);
    let text = format!(
        "external_cidrs = [\"10.98.0.0/24\"]\n{}\n[[external]]\nname = \"laptop\"\n\
         public_key = \"{public}\"\nendpoint = \"192.168.77.150:51820\"\n\
         allowed_ips = [\"10.98.0.2/32\"]\n",
        c.peers_text(&[1, 2], "")
    );
    write_atomically(&c.peers, &text);
    c.start_all(&[]);
    for i in [1, 2] {
        c.add_pods(i, &["a"]);
    }

    // The laptop, from the printed configuration only.
    let conf = sh(&[
        BIN,
        "peer-config",
        "laptop",
        "--peers",
        c.peers.to_str().unwrap(),
    ]);
    let laptop = Laptop::configure(&c, laptop, &conf, &private);
    assert_eq!(laptop.routes.len(), 4, "both nodes' pod CIDRs: {conf}");

    let capture = c.capture();
    laptop.reaches_every_pod_and_spoofing_is_dropped(&c);
    let packets = capture.stop();
    assert!(assert_only_wireguard(&packets) > 0, "no WireGuard packets");

    // The nodes show it as an external peer with a handshake.
    let view = c.node(1).status_json();
    let row = view["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "laptop")
        .unwrap_or_else(|| panic!("no laptop row: {view}"))
        .clone();
    assert_eq!(row["external"], true, "{row}");
    assert_eq!(row["state"], "ok", "{row}");
    assert_eq!(
        row["allowed_ips"],
        serde_json::json!(["10.98.0.2/32"]),
        "{row}"
    );
}
