//! `wormhole peer-config NAME`: a ready wg-quick configuration for an external peer (a machine
//! outside the cluster: an `[[external]]` entry of the peers file, or in Kubernetes mode a
//! WormholePeer), with every node as a `[Peer]`: its endpoint and pod CIDRs.
//!
//! The peers file, or the cluster's Nodes, WormholeNodes and WormholePeers, are validated as an
//! agent validates them (from the first node's point of view: every agent accepts the same nodes
//! and external peers), so a configuration is printed only for an external peer the nodes
//! accept, and only accepted nodes appear in it. A node left out is named with its reason
//! ([`Config::left_out`], and a comment in the configuration): the configuration is then
//! incomplete, and `wormhole peer-config` says so by its exit code.

use ipnet::IpNet;
use wormhole_core::{Mesh, NodeSpec, PublicKey, Snapshot, escape};

/// Where the snapshot came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A peers file (`--peers`).
    File,
    /// The cluster's Nodes, WormholeNodes and WormholePeers.
    Kubernetes,
}

impl Origin {
    fn what(self) -> &'static str {
        match self {
            Origin::File => "the peers file",
            Origin::Kubernetes => "the cluster",
        }
    }

    fn entries(self) -> &'static str {
        match self {
            Origin::File => "[[external]] entries",
            Origin::Kubernetes => "WormholePeers the nodes accept",
        }
    }
}

/// A configuration, and the nodes it leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The wg-quick configuration.
    pub text: String,
    /// The nodes the agents refuse, each as `name (origin): reason`, escaped: not in the
    /// configuration.
    pub left_out: Vec<String>,
}

/// The configuration of external peer `name` from `snapshot` (read from `origin`);
/// `service_cidr`, if given, is routed through the first node (kube-proxy there forwards to the
/// Service's endpoints).
pub fn render(
    snapshot: Snapshot,
    name: &str,
    service_cidr: Option<IpNet>,
    origin: Origin,
) -> Result<Config, String> {
    let what = origin.what();
    let refused = |rejected: &[wormhole_core::Rejection]| -> Vec<String> {
        rejected
            .iter()
            .filter(|r| !r.external)
            .map(ToString::to_string)
            .collect()
    };
    // Any node's point of view: validation gives every agent the same nodes and externals.
    // One with an endpoint of its own if there is one: a node behind NAT gets the endpoint
    // other nodes observe for it only as a peer.
    let with_key = |n: &wormhole_core::NodeEntry| {
        Some((n.name.clone(), n.public_key.parse::<PublicKey>().ok()?))
    };
    let (first_name, first_key) = snapshot
        .nodes
        .iter()
        .filter(|n| n.endpoint.is_some())
        .find_map(with_key)
        .or_else(|| snapshot.nodes.iter().find_map(with_key))
        .ok_or_else(|| {
            let mut why = refused(&snapshot.rejected);
            why.extend(snapshot.nodes.iter().map(|n| {
                format!(
                    "{} ({}): invalid public key \"{}\"",
                    escape(&n.name),
                    escape(&n.origin),
                    escape(&n.public_key)
                )
            }));
            if why.is_empty() {
                format!("{what} lists no node")
            } else {
                format!(
                    "{what} lists no usable node (one with a valid public key):\n  {}",
                    why.join("\n  ")
                )
            }
        })?;
    let mesh = Mesh::build(&first_name, &first_key, &[], snapshot, None)
        .map_err(|e| format!("{what} is not usable: {e}"))?;
    let Some(peer) = mesh.external.iter().find(|p| p.name == name) else {
        return Err(match mesh.rejected.iter().find(|r| r.name == name) {
            Some(r) => format!("external peer refused by the nodes: {r}"),
            None => format!(
                "no external peer named \"{}\" in {what} ({}: {})",
                escape(name),
                origin.entries(),
                mesh.external
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    };
    let list = |nets: &[IpNet]| {
        nets.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "# wg-quick configuration of the external peer {name}, made by `wormhole peer-config`.\n\
         # Put its private key below (the one whose public key is {key}), then:\n\
         #   wg-quick up ./wormhole.conf\n\
         [Interface]\n\
         PrivateKey = <the private key of {name}>\n\
         Address = {address}\n",
        name = peer.name,
        key = peer.public_key,
        address = list(&peer.pod_cidrs),
    );
    if let Some(endpoint) = peer.endpoint {
        out += &format!("ListenPort = {}\n", endpoint.port());
    }
    let left_out = refused(&mesh.rejected);
    for node in &left_out {
        out += &format!("# left out (refused by the nodes): {node}\n");
    }
    let mut nodes: Vec<&NodeSpec> = std::iter::once(&mesh.local).chain(&mesh.peers).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for (i, node) in nodes.iter().enumerate() {
        let mut allowed = node.pod_cidrs.clone();
        if i == 0 {
            allowed.extend(service_cidr);
        }
        out += &format!(
            "\n# node {}\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
            node.name,
            node.public_key,
            list(&allowed)
        );
        match (node.endpoint, node.observed_endpoint) {
            (Some(endpoint), _) => out += &format!("Endpoint = {endpoint}\n"),
            // Behind NAT: where the other nodes see it (Kubernetes mode); its NAT lets the
            // laptop in only once the node has sent to the laptop too (its keepalive does when
            // the laptop has an endpoint).
            (None, Some(seen)) => {
                out += &format!("# behind NAT: where the other nodes see it\nEndpoint = {seen}\n");
            }
            (None, None) => {}
        }
        if let Some(seconds) = peer.persistent_keepalive {
            out += &format!("PersistentKeepalive = {seconds}\n");
        }
    }
    Ok(Config {
        text: out,
        left_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wormhole_core::{PrivateKey, parse_peers_file};

    fn file(extra: &str) -> (String, PublicKey) {
        let (a, b, laptop) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let text = format!(
            "cluster_cidrs = [\"10.99.0.0/16\"]\nexternal_cidrs = [\"10.98.0.0/24\"]\n\
             [[node]]\nname = \"b\"\npublic_key = \"{b}\"\nendpoint = \"192.168.77.2:51820\"\npod_cidrs = [\"10.99.2.0/24\"]\n\
             [[node]]\nname = \"a\"\npublic_key = \"{a}\"\nendpoint = \"192.168.77.1:51820\"\npod_cidrs = [\"10.99.1.0/24\"]\n\
             [[external]]\nname = \"laptop\"\npublic_key = \"{laptop}\"\nallowed_ips = [\"10.98.0.2/32\"]\n\
             persistent_keepalive = 25\n{extra}"
        );
        (text, laptop)
    }

    #[test]
    fn a_config_with_every_node() {
        let (text, laptop) = file("");
        let snapshot = parse_peers_file(&text, "peers.toml").unwrap();
        let config = render(
            snapshot,
            "laptop",
            Some("10.96.0.0/12".parse().unwrap()),
            Origin::File,
        )
        .unwrap();
        assert!(config.left_out.is_empty());
        let conf = config.text;
        assert!(conf.contains(&format!("public key is {laptop}")), "{conf}");
        assert!(
            conf.contains(
                "[Interface]\nPrivateKey = <the private key of laptop>\nAddress = 10.98.0.2/32\n"
            ),
            "{conf}"
        );
        // Nodes by name; the service CIDR through the first.
        let a = conf.find("# node a").unwrap();
        let b = conf.find("# node b").unwrap();
        assert!(a < b, "{conf}");
        assert!(conf.contains("AllowedIPs = 10.99.1.0/24, 10.96.0.0/12\nEndpoint = 192.168.77.1:51820\nPersistentKeepalive = 25\n"), "{conf}");
        assert!(
            conf.contains("AllowedIPs = 10.99.2.0/24\nEndpoint = 192.168.77.2:51820\n"),
            "{conf}"
        );
        assert!(
            !conf.contains("ListenPort"),
            "no endpoint, no fixed port: {conf}"
        );
    }

    #[test]
    fn a_node_behind_nat_gets_the_endpoint_its_peers_observe() {
        let (text, _) = file("");
        let mut snapshot = parse_peers_file(&text, "peers.toml").unwrap();
        let b = snapshot.nodes.iter_mut().find(|n| n.name == "b").unwrap();
        b.endpoint = None;
        snapshot
            .observed_endpoints
            .insert("b".into(), "203.0.113.7:4500".into());
        let conf = render(snapshot, "laptop", None, Origin::File).unwrap().text;
        assert!(
            conf.contains(
                "AllowedIPs = 10.99.2.0/24\n# behind NAT: where the other nodes see it\n\
                 Endpoint = 203.0.113.7:4500\n"
            ),
            "{conf}"
        );
    }

    #[test]
    fn a_refused_node_is_named_with_its_reason() {
        // c's pod CIDR is outside the cluster CIDRs; d's entry has a misspelled field.
        let c = PrivateKey::generate().public_key();
        let (text, _) = file(&format!(
            "[[node]]\nname = \"c\"\npublic_key = \"{c}\"\npod_cidrs = [\"10.1.0.0/24\"]\n\
             [[node]]\nname = \"d\"\npublickey = \"{c}\"\npod_cidrs = [\"10.99.4.0/24\"]\n"
        ));
        let snapshot = parse_peers_file(&text, "peers.toml").unwrap();
        let config = render(snapshot, "laptop", None, Origin::File).unwrap();
        assert_eq!(config.left_out.len(), 2, "{:?}", config.left_out);
        assert!(
            config.left_out[0].starts_with("c (peers.toml:"),
            "{:?}",
            config.left_out
        );
        assert!(config.left_out[0].contains("outside the cluster CIDRs"));
        assert!(config.left_out[1].starts_with("d (peers.toml:"));
        assert!(config.left_out[1].contains("publickey"));
        assert!(
            config
                .text
                .contains("# left out (refused by the nodes): c (peers.toml:")
        );
        assert!(!config.text.contains("# node c\n"));
        // Every node refused: each named with its reason.
        let text = format!(
            "cluster_cidrs = [\"10.99.0.0/16\"]\n[[node]]\nname = \"a\"\npublickey = \"{c}\"\n\
             [[node]]\nname = \"b\"\npublic_key = \"not a key\\u001b[2J\"\n"
        );
        let snapshot = parse_peers_file(&text, "peers.toml").unwrap();
        let err = render(snapshot, "laptop", None, Origin::File).unwrap_err();
        assert!(err.contains("lists no usable node"), "{err}");
        assert!(err.contains("a (peers.toml:2 node[0]): "), "{err}");
        assert!(err.contains("publickey"), "{err}");
        assert!(
            err.contains("b (peers.toml:5 node[1]): invalid public key \"not a key\\u{1b}[2J\""),
            "{err}"
        );
    }

    #[test]
    fn refused_and_unknown_peers_say_why() {
        let thief = PrivateKey::generate().public_key();
        let (text, _) = file(&format!(
            "[[external]]\nname = \"thief\"\npublic_key = \"{thief}\"\nallowed_ips = [\"10.99.1.7/32\"]\n"
        ));
        let snapshot = parse_peers_file(&text, "peers.toml").unwrap();
        let err = render(snapshot.clone(), "thief", None, Origin::File).unwrap_err();
        assert!(err.contains("external peer refused by the nodes"), "{err}");
        assert!(err.contains("outside the external CIDRs"), "{err}");
        let err = render(snapshot, "nobody\u{1b}[2J", None, Origin::File).unwrap_err();
        assert!(
            err.contains("no external peer named \"nobody\\u{1b}[2J\""),
            "{err}"
        );
        assert!(err.contains("entries: laptop"), "{err}");
    }
}
