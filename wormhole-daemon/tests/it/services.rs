//! Kubernetes Services over Wormhole, the way kube-proxy makes them: a fixture with kube-proxy's
//! hooks and priorities (DNAT in nat prerouting and nat output at priority -100, a
//! KUBE-MARK-MASQ-style mark and its masquerade in nat postrouting), written once in iptables-nft
//! syntax (kube-proxy's iptables mode) and once in nft syntax (its nftables mode), each with the
//! three masquerade settings (no `--cluster-cidr`, `--cluster-cidr`, `masqueradeAll`).
//!
//! With each of the six, over IPv4 and IPv6, TCP and UDP: a pod and the host network of node 1
//! reach a ClusterIP whose backend is on node 1 and one whose backend is on node 2, and a client
//! outside the cluster reaches a NodePort of node 1 whose backend is on node 2
//! (`externalTrafficPolicy: Cluster`: kube-proxy masquerades) and one whose backend is on node 1
//! (`Local`: the client's address is kept). Each backend reports the source address it saw, which
//! must be the one kube-proxy (and, for a host-network client of another node's pod, Wormhole's
//! masquerade) gives it. The underlay carries nothing of the overlay in clear, and a DNATed
//! packet whose new route leads to the underlay is dropped.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{Backend, Cluster, Netns, in_netns, root_or_skip, scaled, underlay_offenders};

#[test]
fn services_embedded() {
    if root_or_skip("services_embedded") {
        services(Backend::Embedded);
    }
}

#[test]
fn services_userspace() {
    if root_or_skip("services_userspace") {
        services(Backend::Userspace);
    }
}

#[test]
#[ignore = "needs the WireGuard kernel module: runs in the VM lane (scripts/vm-lane.sh)"]
fn services_kernel() {
    if root_or_skip("services_kernel") {
        services(Backend::Kernel);
    }
}

/// The port every backend pod listens on, TCP and UDP.
const TARGET_PORT: u16 = 8080;
/// The cluster (overlay) CIDRs, as the harness's peers file has them.
const CLUSTER: [&str; 2] = ["10.99.0.0/16", "fd99::/48"];
/// A client outside the cluster, on the underlay (also the nodes' default gateway).
const OUTSIDE: [&str; 2] = ["192.168.77.254", "2001:db8:77::254"];
/// Bytes each TCP client sends: several full-size segments through the tunnel.
const TCP_BYTES: usize = 64 * 1024;

/// Node `i`'s addresses on the underlay (the IPv6 one added by this fixture).
fn node_ip(i: usize, v6: bool) -> IpAddr {
    if v6 {
        format!("2001:db8:77::{i}").parse().unwrap()
    } else {
        format!("192.168.77.{i}").parse().unwrap()
    }
}

/// Node `i`'s overlay address: its WireGuard interface's and its bridge's.
fn overlay_ip(i: usize, v6: bool) -> IpAddr {
    if v6 {
        format!("fd99:0:0:{i}::1").parse().unwrap()
    } else {
        format!("10.99.{i}.1").parse().unwrap()
    }
}

fn ip(addr: &str) -> IpAddr {
    addr.parse().unwrap()
}

/// kube-proxy's proxy mode, as far as the rules' syntax goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// iptables mode through iptables-nft (`iptables-nft-restore`): tables `ip nat`, `ip6 nat`.
    Iptables,
    /// nftables mode: tables `ip kube-proxy`, `ip6 kube-proxy`.
    Nft,
}

/// kube-proxy's masquerade setting for ClusterIP traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Masquerade {
    /// No `--cluster-cidr` (no local traffic detection): only hairpin traffic is masqueraded.
    NoClusterCidr,
    /// `--cluster-cidr`: traffic to a ClusterIP from outside the cluster CIDR is masqueraded.
    ClusterCidr,
    /// `masqueradeAll: true`: all traffic to a ClusterIP is masqueraded.
    All,
}

/// One Service (TCP and UDP on the same port) with one endpoint.
#[derive(Debug, Clone)]
struct Service {
    name: &'static str,
    cluster_ip: IpAddr,
    port: u16,
    /// The endpoint: a pod's address, and its node.
    backend: IpAddr,
    backend_node: usize,
    /// The NodePort, and whether `externalTrafficPolicy` is `Local`.
    node_port: Option<(u16, bool)>,
}

impl Service {
    fn v6(&self) -> bool {
        self.cluster_ip.is_ipv6()
    }

    /// `PORT-name-proto`-style chain suffix.
    fn id(&self, proto: &str) -> String {
        format!("{}-{proto}", self.name)
    }
}

/// `addr:port` as DNAT targets spell it.
fn target(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// The iptables-restore input kube-proxy's iptables mode would write on node `node` for
/// `services` (one family).
fn iptables_rules(services: &[Service], node: usize, masq: Masquerade, v6: bool) -> String {
    let cluster = CLUSTER[usize::from(v6)];
    let host = if v6 { "/128" } else { "/32" };
    let mut chains = vec![
        "KUBE-SERVICES".to_owned(),
        "KUBE-NODEPORTS".to_owned(),
        "KUBE-POSTROUTING".to_owned(),
        "KUBE-MARK-MASQ".to_owned(),
    ];
    let mut rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            .to_owned(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .to_owned(),
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".to_owned(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".to_owned(),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".to_owned(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully"
            .to_owned(),
    ];
    for svc in services.iter().filter(|s| s.v6() == v6) {
        for proto in ["tcp", "udp"] {
            let id = svc.id(proto).to_uppercase();
            let (svc_chain, sep, ext, svl) = (
                format!("KUBE-SVC-{id}"),
                format!("KUBE-SEP-{id}"),
                format!("KUBE-EXT-{id}"),
                format!("KUBE-SVL-{id}"),
            );
            chains.extend([svc_chain.clone(), sep.clone()]);
            let (cip, port) = (svc.cluster_ip, svc.port);
            let dest = format!("-d {cip}{host} -p {proto} -m {proto} --dport {port}");
            rules.push(format!("-A KUBE-SERVICES {dest} -j {svc_chain}"));
            match masq {
                Masquerade::NoClusterCidr => {}
                Masquerade::ClusterCidr => rules.push(format!(
                    "-A {svc_chain} ! -s {cluster} {dest} -j KUBE-MARK-MASQ"
                )),
                Masquerade::All => rules.push(format!("-A {svc_chain} {dest} -j KUBE-MARK-MASQ")),
            }
            rules.push(format!("-A {svc_chain} -j {sep}"));
            let backend = svc.backend;
            rules.push(format!("-A {sep} -s {backend}{host} -j KUBE-MARK-MASQ"));
            rules.push(format!(
                "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {}",
                target(backend, TARGET_PORT)
            ));
            let Some((node_port, local)) = svc.node_port else {
                continue;
            };
            chains.push(ext.clone());
            rules.push(format!(
                "-A KUBE-NODEPORTS -p {proto} -m {proto} --dport {node_port} -j {ext}"
            ));
            if local {
                chains.push(svl.clone());
                rules.push(format!("-A {ext} -s {cluster} -j {svc_chain}"));
                rules.push(format!(
                    "-A {ext} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
                ));
                rules.push(format!(
                    "-A {ext} -m addrtype --src-type LOCAL -j {svc_chain}"
                ));
                rules.push(format!("-A {ext} -j {svl}"));
                if svc.backend_node == node {
                    rules.push(format!("-A {svl} -j {sep}"));
                }
            } else {
                rules.push(format!("-A {ext} -j KUBE-MARK-MASQ"));
                rules.push(format!("-A {ext} -j {svc_chain}"));
            }
        }
    }
    rules.push(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be \
         the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
            .to_owned(),
    );
    let mut text = String::from("*nat\n");
    for chain in chains {
        text += &format!(":{chain} - [0:0]\n");
    }
    text + &rules.join("\n") + "\nCOMMIT\n"
}

/// The nft script kube-proxy's nftables mode would load on node `node` for `services` (one
/// family; its verdict maps spelled out as rules).
fn nft_rules(services: &[Service], node: usize, masq: Masquerade, v6: bool) -> String {
    let (family, ip) = if v6 { ("ip6", "ip6") } else { ("ip", "ip") };
    let cluster = CLUSTER[usize::from(v6)];
    let loopback = if v6 { "::1" } else { "127.0.0.0/8" };
    // Chains are declared before the chains that jump to them.
    let mut chains: Vec<(String, Vec<String>)> = vec![
        (
            "mark-for-masquerade".into(),
            vec!["meta mark set meta mark or 0x4000".into()],
        ),
        (
            "masquerading".into(),
            vec![
                "meta mark & 0x4000 == 0 return".into(),
                "meta mark set meta mark xor 0x4000".into(),
                "masquerade fully-random".into(),
            ],
        ),
    ];
    let mut services_chain = Vec::new();
    let mut nodeports = Vec::new();
    for svc in services.iter().filter(|s| s.v6() == v6) {
        for proto in ["tcp", "udp"] {
            let id = svc.id(proto);
            let (cip, port, backend) = (svc.cluster_ip, svc.port, svc.backend);
            let dest = format!("{ip} daddr {cip} {proto} dport {port}");
            chains.push((
                format!("endpoint-{id}"),
                vec![
                    format!("{ip} saddr {backend} jump mark-for-masquerade"),
                    format!(
                        "meta l4proto {proto} dnat to {}",
                        target(backend, TARGET_PORT)
                    ),
                ],
            ));
            let mut service = Vec::new();
            match masq {
                Masquerade::NoClusterCidr => {}
                Masquerade::ClusterCidr => service.push(format!(
                    "{dest} {ip} saddr != {cluster} jump mark-for-masquerade"
                )),
                Masquerade::All => service.push(format!("{dest} jump mark-for-masquerade")),
            }
            service.push(format!("goto endpoint-{id}"));
            chains.push((format!("service-{id}"), service));
            services_chain.push(format!("{dest} goto service-{id}"));
            let Some((node_port, local)) = svc.node_port else {
                continue;
            };
            let external = if local {
                let mut rules = vec![
                    format!("{ip} saddr {cluster} goto service-{id}"),
                    "fib saddr type local jump mark-for-masquerade".to_owned(),
                    format!("fib saddr type local goto service-{id}"),
                ];
                if svc.backend_node == node {
                    rules.push(format!("goto endpoint-{id}"));
                }
                rules
            } else {
                vec![
                    "jump mark-for-masquerade".to_owned(),
                    format!("goto service-{id}"),
                ]
            };
            chains.push((format!("external-{id}"), external));
            nodeports.push(format!("{proto} dport {node_port} goto external-{id}"));
        }
    }
    chains.push(("nodeports".into(), nodeports));
    services_chain.push(format!(
        "fib daddr type local {ip} daddr != {loopback} jump nodeports"
    ));
    chains.push(("services".into(), services_chain));
    let mut text = format!("table {family} kube-proxy {{\n");
    for (name, rules) in chains {
        text += &format!("  chain {name} {{\n");
        for rule in rules {
            text += &format!("    {rule}\n");
        }
        text += "  }\n";
    }
    for (name, hook, priority, to) in [
        ("nat-prerouting", "prerouting", "-100", "services"),
        ("nat-output", "output", "-100", "services"),
        ("nat-postrouting", "postrouting", "100", "masquerading"),
    ] {
        text += &format!(
            "  chain {name} {{\n    type nat hook {hook} priority {priority}; policy accept;\n    \
             jump {to}\n  }}\n"
        );
    }
    text + "}\n"
}

/// Loads kube-proxy's rules for `services` into `ns` (node `node`), both families.
fn install(
    ns: &Netns,
    dir: &std::path::Path,
    syntax: Syntax,
    masq: Masquerade,
    services: &[Service],
    node: usize,
) {
    for v6 in [false, true] {
        let path = dir.join(format!("{}-kube-proxy-{}.rules", ns.name, u8::from(v6)));
        let (text, cmd) = match syntax {
            Syntax::Iptables => (
                iptables_rules(services, node, masq, v6),
                if v6 {
                    vec!["ip6tables-nft-restore"]
                } else {
                    vec!["iptables-nft-restore"]
                },
            ),
            Syntax::Nft => (nft_rules(services, node, masq, v6), vec!["nft", "-f"]),
        };
        std::fs::write(&path, &text).unwrap();
        let mut args = cmd;
        args.push(path.to_str().unwrap());
        let out = ns.run(&args);
        assert!(
            out.status.success(),
            "in {}: {args:?}: {}\n{text}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Removes what [`install`] loaded.
fn uninstall(ns: &Netns, syntax: Syntax) {
    let table = match syntax {
        Syntax::Iptables => "nat",
        Syntax::Nft => "kube-proxy",
    };
    for family in ["ip", "ip6"] {
        ns.sh(&["nft", "delete", "table", family, table]);
    }
}

/// A Service endpoint in a pod: on TCP and UDP port [`TARGET_PORT`] (both families) it answers
/// with the source address it saw (and, for TCP, the number of bytes it read to the end).
/// Stopped on drop.
struct Endpoint {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn canonical(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

impl Endpoint {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = in_netns(ns, || {
            (
                TcpListener::bind(("::", TARGET_PORT)).expect("bind TCP"),
                UdpSocket::bind(("::", TARGET_PORT)).expect("bind UDP"),
            )
        });
        let stopping = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            tcp.set_nonblocking(true).unwrap();
            let mut handlers = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match tcp.accept() {
                    Ok((mut stream, peer)) => handlers.push(std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(scaled(Duration::from_secs(20))));
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut n = 0usize;
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) => break,
                                Ok(k) => n += k,
                                Err(_) => return,
                            }
                        }
                        let _ = writeln!(stream, "{} {n}", canonical(peer));
                    })),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        let stopping = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            udp.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(canonical(peer).to_string().as_bytes(), peer);
                }
            }
        });
        Endpoint {
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// From namespace `ns`, sends [`TCP_BYTES`] to `to`; the source address the backend saw.
fn tcp_who(ns: &str, to: SocketAddr) -> Result<IpAddr, String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, scaled(Duration::from_secs(5)))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(scaled(Duration::from_secs(10))))
            .unwrap();
        s.set_write_timeout(Some(scaled(Duration::from_secs(10))))
            .unwrap();
        s.write_all(&vec![7u8; TCP_BYTES])
            .map_err(|e| format!("send: {e}"))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| format!("read the answer: {e}"))?;
        let (peer, n) = reply
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("answer {reply:?}"))?;
        if n != TCP_BYTES.to_string() {
            return Err(format!("the backend read {n} bytes of {TCP_BYTES}"));
        }
        peer.parse().map_err(|e| format!("answer {reply:?}: {e}"))
    })
}

/// From namespace `ns`, one datagram to `to` (up to `tries` tries); the source address the
/// backend saw.
fn udp_who(ns: &str, to: SocketAddr, tries: u32) -> Result<IpAddr, String> {
    in_netns(ns, move || {
        let any: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
        s.connect(to).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(scaled(Duration::from_secs(2))))
            .unwrap();
        let mut last = String::new();
        for _ in 0..tries {
            if let Err(e) = s.send(b"who") {
                last = format!("send: {e}");
                continue;
            }
            let mut buf = [0u8; 100];
            match s.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    return text.parse().map_err(|e| format!("answer {text:?}: {e}"));
                }
                Err(e) => last = format!("receive: {e}"),
            }
        }
        Err(last)
    })
}

/// One client → Service check: who connects, where, and the source the backend must see.
struct Case {
    what: String,
    ns: String,
    to: SocketAddr,
    udp: bool,
    want: IpAddr,
}

impl Case {
    fn run(&self) -> Result<(), String> {
        let seen = if self.udp {
            udp_who(&self.ns, self.to, 3)
        } else {
            tcp_who(&self.ns, self.to)
        }?;
        if seen == self.want {
            Ok(())
        } else {
            Err(format!(
                "the backend saw source {seen}, expected {}",
                self.want
            ))
        }
    }
}

/// The packets dropped so far by the "no cleartext" rules of `inet wormhole` (both families).
fn no_cleartext_drops(ns: &Netns) -> u64 {
    let listing = ns.sh(&["nft", "list", "chain", "inet", "wormhole", "egress"]);
    let counts: Vec<u64> = listing
        .lines()
        .filter(|l| l.contains("\"no cleartext\""))
        .map(|l| {
            l.split("counter packets ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no counter in {l:?}"))
        })
        .collect();
    assert_eq!(counts.len(), 2, "{listing}");
    counts.iter().sum()
}

/// Packets on the underlay besides WireGuard's that this fixture adds: IPv6 neighbour discovery
/// and MLD (the nodes have IPv6 on the underlay here), and the outside client's own conversations
/// with node 1's NodePorts. None may show anything of the overlay or a ClusterIP.
fn expected_underlay_traffic(line: &str, node_ports: &[u16]) -> bool {
    if ["10.99.", "fd99", "10.96.", "fd96"]
        .iter()
        .any(|n| line.contains(n))
    {
        return false;
    }
    let t: Vec<&str> = line.split_whitespace().collect();
    let neighbour = t.get(1) == Some(&"IP6")
        && [
            "ICMP6, neighbor solicitation",
            "ICMP6, neighbor advertisement",
            "ICMP6, router solicitation",
            "multicast listener report",
        ]
        .iter()
        .any(|k| line.contains(k));
    let node_port = (t.get(1) == Some(&"IP") || t.get(1) == Some(&"IP6"))
        && [false, true].iter().any(|&v6| {
            let (outside, node) = (OUTSIDE[usize::from(v6)], node_ip(1, v6));
            node_ports.iter().any(|p| {
                let at_node = format!("{node}.{p}");
                let (Some(src), Some(dst)) = (t.get(2), t.get(4)) else {
                    return false;
                };
                let dst = dst.trim_end_matches(':');
                (src.starts_with(&format!("{outside}.")) && dst == at_node)
                    || (*src == at_node && dst.starts_with(&format!("{outside}.")))
            })
        });
    neighbour || node_port
}

fn services(backend: Backend) {
    let started = Instant::now();
    let mut c = Cluster::new(2, backend);
    c.start_all(&[]);
    c.add_pods(1, &["a", "b"]);
    c.add_pods(2, &["a"]);

    // What kube-proxy needs of a node: br_netfilter (so that a pod's reply to another pod on the
    // same bridge passes conntrack and is un-DNATed) and a default route (a ClusterIP is routed
    // like any other address before kube-proxy's DNAT). Node addresses are dual-stack here: the
    // underlay gets IPv6, and the outside client sits on it, also as the default gateway.
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        let _ = crate::harness::run(&["modprobe", "br_netfilter"]);
    }
    let u = &c.underlay;
    u.sh(&["sysctl", "-qw", "net.ipv6.conf.br0.disable_ipv6=0"]);
    u.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", OUTSIDE[0]),
        "dev",
        "br0",
    ]);
    u.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{}/64", OUTSIDE[1]),
        "dev",
        "br0",
        "nodad",
    ]);
    for node in &c.nodes {
        let ns = &node.ns;
        for setting in [
            "net.bridge.bridge-nf-call-iptables=1",
            "net.bridge.bridge-nf-call-ip6tables=1",
            "net.ipv6.conf.eth0.disable_ipv6=0",
            "net.ipv6.conf.eth0.accept_ra=0",
        ] {
            ns.sh(&["sysctl", "-qw", setting]);
        }
        let v6 = format!("{}/64", node_ip(node.index, true));
        ns.sh(&["ip", "addr", "add", &v6, "dev", "eth0", "nodad"]);
        ns.sh(&["ip", "route", "add", "default", "via", OUTSIDE[0]]);
        ns.sh(&["ip", "-6", "route", "add", "default", "via", OUTSIDE[1]]);
    }

    let backends: Vec<Endpoint> = ["n1a", "n2a"]
        .iter()
        .map(|p| Endpoint::start(&c.pod(p).ns.name))
        .collect();
    // One handshake before the walk, so that its first case does not wait for it.
    assert!(
        c.pod("n1b").ping(&c.pod("n2a").ip4, 5),
        "n1b cannot reach n2a\n{}",
        c.logs()
    );

    let runs = [
        (Syntax::Iptables, Masquerade::NoClusterCidr),
        (Syntax::Iptables, Masquerade::ClusterCidr),
        (Syntax::Iptables, Masquerade::All),
        (Syntax::Nft, Masquerade::NoClusterCidr),
        (Syntax::Nft, Masquerade::ClusterCidr),
        (Syntax::Nft, Masquerade::All),
    ];
    let mut failures = Vec::new();
    let mut checks = 0;
    let mut all_node_ports = Vec::new();
    let capture = c.capture();
    for (run, &(syntax, masq)) in runs.iter().enumerate() {
        // Ports differ from run to run, so no conntrack entry of an earlier run is reused.
        let base = u16::try_from(run).unwrap() * 10;
        let mut services = Vec::new();
        for v6 in [false, true] {
            let pod_ip = |p: &str| ip(if v6 { &c.pod(p).ip6 } else { &c.pod(p).ip4 });
            let cip = |n: u8| {
                ip(&if v6 {
                    format!("fd96::{n}")
                } else {
                    format!("10.96.0.{n}")
                })
            };
            services.push(Service {
                name: "same",
                cluster_ip: cip(10),
                port: 1000 + base,
                backend: pod_ip("n1a"),
                backend_node: 1,
                node_port: None,
            });
            services.push(Service {
                name: "remote",
                cluster_ip: cip(20),
                port: 1001 + base,
                backend: pod_ip("n2a"),
                backend_node: 2,
                node_port: Some((30000 + base, false)),
            });
            services.push(Service {
                name: "local",
                cluster_ip: cip(30),
                port: 1002 + base,
                backend: pod_ip("n1a"),
                backend_node: 1,
                node_port: Some((30001 + base, true)),
            });
        }
        for node in &c.nodes {
            install(&node.ns, c.work.path(), syntax, masq, &services, node.index);
        }

        let mut cases = Vec::new();
        for svc in &services {
            let v6 = svc.v6();
            let fam = if v6 { "IPv6" } else { "IPv4" };
            let pod = c.pod("n1b");
            let pod_ip = ip(if v6 { &pod.ip6 } else { &pod.ip4 });
            let overlay = overlay_ip(1, v6);
            for udp in [false, true] {
                let proto = if udp { "UDP" } else { "TCP" };
                let to = SocketAddr::new(svc.cluster_ip, svc.port);
                if svc.name != "local" {
                    // A pod keeps its address unless kube-proxy masquerades everything.
                    let want = if masq == Masquerade::All {
                        overlay
                    } else {
                        pod_ip
                    };
                    cases.push(Case {
                        what: format!("{fam} {proto} pod n1b -> ClusterIP {} ({to})", svc.name),
                        ns: pod.ns.name.clone(),
                        to,
                        udp,
                        want,
                    });
                    // The host's underlay address is kept into the bridge unless kube-proxy
                    // masquerades; into the tunnel it becomes the node's overlay address
                    // (kube-proxy's masquerade or Wormhole's).
                    let want = if svc.backend_node == 1 && masq == Masquerade::NoClusterCidr {
                        node_ip(1, v6)
                    } else {
                        overlay
                    };
                    cases.push(Case {
                        what: format!("{fam} {proto} host n1 -> ClusterIP {} ({to})", svc.name),
                        ns: c.node(1).ns.name.clone(),
                        to,
                        udp,
                        want,
                    });
                }
                if let Some((node_port, local)) = svc.node_port {
                    let to = SocketAddr::new(node_ip(1, v6), node_port);
                    // Cluster policy: kube-proxy masquerades; Local: the client is kept.
                    let want = if local {
                        ip(OUTSIDE[usize::from(v6)])
                    } else {
                        overlay
                    };
                    cases.push(Case {
                        what: format!(
                            "{fam} {proto} outside -> NodePort {} of n1 ({to}, backend on n{})",
                            svc.name, svc.backend_node
                        ),
                        ns: c.underlay.name.clone(),
                        to,
                        udp,
                        want,
                    });
                    all_node_ports.push(node_port);
                }
            }
        }
        for case in &cases {
            checks += 1;
            if let Err(e) = case.run() {
                failures.push(format!("{syntax:?} {masq:?}: {}: {e}", case.what));
            }
        }
        for node in &c.nodes {
            uninstall(&node.ns, syntax);
        }
    }
    let packets = capture.stop();
    drop(backends);

    assert!(
        failures.is_empty(),
        "{} of {checks} Service checks failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        c.logs()
    );
    // Per family and protocol: 2 clients of "same", 2 clients and the NodePort of "remote", the
    // NodePort of "local".
    assert_eq!(checks, runs.len() * 2 * 2 * 6);
    let (wireguard, offenders) = underlay_offenders(&packets);
    let offenders: Vec<&str> = offenders
        .into_iter()
        .filter(|l| !expected_underlay_traffic(l, &all_node_ports))
        .collect();
    assert!(
        offenders.is_empty(),
        "{} of {} packets on the underlay are neither WireGuard nor expected, e.g.:\n{}",
        offenders.len(),
        packets.len(),
        offenders[..offenders.len().min(20)].join("\n")
    );
    assert!(wireguard > 0, "no WireGuard packet on the underlay");
    let walked = started.elapsed();

    // A DNATed packet whose new route leads to the underlay is dropped, from a pod (DNAT in nat
    // prerouting) and from the host (nat output): someone points node 2's pod CIDRs at the
    // underlay by hand.
    let (syntax, masq) = (Syntax::Nft, Masquerade::NoClusterCidr);
    let services: Vec<Service> = [false, true]
        .into_iter()
        .map(|v6| Service {
            name: "remote",
            cluster_ip: ip(if v6 { "fd96::20" } else { "10.96.0.20" }),
            port: 2000,
            backend: ip(if v6 {
                &c.pod("n2a").ip6
            } else {
                &c.pod("n2a").ip4
            }),
            backend_node: 2,
            node_port: None,
        })
        .collect();
    let n1 = c.node(1);
    install(&n1.ns, c.work.path(), syntax, masq, &services, 1);
    n1.ns.sh(&[
        "ip",
        "route",
        "replace",
        "10.99.2.0/24",
        "via",
        "192.168.77.2",
        "dev",
        "eth0",
    ]);
    n1.ns.sh(&[
        "ip",
        "-6",
        "route",
        "replace",
        "fd99:0:0:2::/64",
        "via",
        "2001:db8:77::2",
        "dev",
        "eth0",
    ]);
    let drops_before = no_cleartext_drops(&n1.ns);
    let capture = c.capture();
    let mut leaked = Vec::new();
    for svc in &services {
        let to = SocketAddr::new(svc.cluster_ip, svc.port);
        for ns in [&c.pod("n1b").ns.name, &n1.ns.name] {
            if let Ok(seen) = udp_who(ns, to, 1) {
                leaked.push(format!("{ns} -> {to} answered (source {seen})"));
            }
        }
    }
    let packets = capture.stop();
    assert!(leaked.is_empty(), "{leaked:?}");
    let cleartext: Vec<&String> = packets
        .iter()
        .filter(|l| {
            ["10.99.", "fd99", "10.96.", "fd96"]
                .iter()
                .any(|n| l.contains(n))
        })
        .collect();
    assert!(
        cleartext.is_empty(),
        "DNATed overlay traffic in clear on the underlay:\n{cleartext:#?}"
    );
    // Dropped by our rule, not lost on the way: one datagram per client and family.
    let drops = no_cleartext_drops(&n1.ns) - drops_before;
    assert!(
        drops >= 4,
        "the no-cleartext rule dropped {drops} packets, not the 4 DNATed datagrams"
    );

    eprintln!(
        "services ({}): {checks} Service checks ({} kube-proxy rule sets) answered with the \
         expected source in {:.1} s; {wireguard} WireGuard packets on the underlay, nothing else \
         of the overlay; DNATed packets routed to the underlay dropped",
        backend.as_str(),
        runs.len(),
        walked.as_secs_f64()
    );
}
