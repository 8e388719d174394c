//! The firewall as one nftables table of our own, `inet wormhole`, replaced atomically.
//!
//! The ruleset is rendered as nft's own text syntax and loaded with `nft -f -`, which applies a
//! whole file as one transaction: the table is created (if absent), deleted and re-created in that
//! same transaction, so there is never a moment without rules. We drive the `nft` binary rather
//! than a netlink library because the text we load is exactly what `nft list table inet wormhole`
//! shows a person troubleshooting, the syntax is stable across nftables releases, and it costs no
//! dependency; the `nftables` crate would only wrap the same binary in JSON.
//!
//! Drift (a rule deleted by hand, the table flushed or deleted) is detected by comparing
//! `nft list table inet wormhole`, without its counter values, with what it printed right after
//! our last apply. After a restart nothing is known, so the first pass re-applies once
//! (atomically, without disruption). The same listing gives the packets each `drop` rule has
//! dropped since the table was last loaded ([`Firewall::drops`]), by the rule's comment.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use async_trait::async_trait;
use ipnet::IpNet;
use wormhole_core::{Component, Error, Firewall};
use wormhole_core::{FirewallPolicy, overlay_address};

use crate::backend_error;

/// The table's name (family `inet`).
pub const NFT_TABLE: &str = "wormhole";

/// Our nftables table.
#[derive(Debug)]
pub struct Nftables {
    nft: String,
    /// The policy last applied and how `nft list` printed it right after (without counters).
    last: Mutex<Option<(FirewallPolicy, String)>>,
    /// Packets dropped by rule, as of the latest read.
    drops: Mutex<BTreeMap<String, u64>>,
}

impl Default for Nftables {
    fn default() -> Self {
        Nftables {
            nft: "nft".into(),
            last: Mutex::new(None),
            drops: Mutex::new(BTreeMap::new()),
        }
    }
}

fn set(name: &str, v6: bool, nets: &[IpNet]) -> String {
    let kind = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    // nft refuses overlapping intervals: keep only the outermost of nested CIDRs (for example
    // cluster CIDRs 10.0.0.0/8 and 10.99.0.0/16 given together).
    let family: Vec<&IpNet> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V6(_)) == v6)
        .collect();
    let mut elements: Vec<String> = family
        .iter()
        .filter(|n| !family.iter().any(|o| o != *n && o.contains(**n)))
        .map(ToString::to_string)
        .collect();
    elements.sort();
    elements.dedup();
    let mut s = format!("  set {name} {{\n    type {kind}\n    flags interval\n");
    if !elements.is_empty() {
        s += &format!("    elements = {{ {} }}\n", elements.join(", "));
    }
    s + "  }\n"
}

/// The nft script enforcing `policy` (without the table's replacement preamble).
pub(crate) fn render(policy: &FirewallPolicy) -> String {
    let wg = format!("\"{}\"", policy.interface);
    let br = format!("\"{}\"", policy.bridge);
    // MSS = MTU - IP header - TCP header.
    let mss4 = policy.mtu.saturating_sub(40);
    let mss6 = policy.mtu.saturating_sub(60);
    // Without a pod CIDR of a family the node has no overlay address of it, and no peer accepts
    // such a source from us anyway: no rule.
    let mut foreign = String::new();
    for (v6, ip, set) in [(false, "ip", "local4"), (true, "ip6", "local6")] {
        if let Some(cidr) = policy
            .local_pod_cidrs
            .iter()
            .find(|c| matches!(c, IpNet::V6(_)) == v6)
        {
            let to = overlay_address(cidr).addr();
            foreign += &format!(
                "    oifname {wg} {ip} saddr != @{set} snat {ip} to {to} comment \"foreign source into the tunnel\"\n"
            );
        }
    }
    let mut s = format!("table inet {NFT_TABLE} {{\n");
    for v6 in [false, true] {
        let f = if v6 { "6" } else { "4" };
        s += &set(&format!("cluster{f}"), v6, &policy.cluster_cidrs);
        s += &set(&format!("local{f}"), v6, &policy.local_pod_cidrs);
    }
    s += &format!(
        r#"
  # Anti-spoofing. An overlay source may arrive only from the tunnel (another node's pods, which
  # WireGuard has already checked against that peer's allowed IPs) or from the bridge (our own
  # pods). From anywhere else, such as the underlay, it is dropped; so is a peer claiming one of
  # our pods' addresses, and a pod claiming an address that is not on this node.
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    iifname != {{ {wg}, {br}, "lo" }} ip saddr @cluster4 counter drop comment "spoofed overlay source"
    iifname != {{ {wg}, {br}, "lo" }} ip6 saddr @cluster6 counter drop comment "spoofed overlay source"
    iifname {wg} ip saddr @local4 counter drop comment "peer claims a local pod source"
    iifname {wg} ip6 saddr @local6 counter drop comment "peer claims a local pod source"
    iifname {br} ip saddr @cluster4 ip saddr != @local4 counter drop comment "pod claims a remote pod source"
    iifname {br} ip6 saddr @cluster6 ip6 saddr != @local6 counter drop comment "pod claims a remote pod source"
  }}

  # Forwarding through the tunnel. Only what belongs enters it: our pods (anti-spoofed above),
  # and traffic a Service or NodePort DNAT'd here (its replies too); this host's own traffic is
  # not forwarded. Everything else is a relay and dropped: a host on the underlay with no key that
  # routes the overlay via this node, another peer (an external one) reaching through us, or
  # tunnel traffic bound for the underlay.
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname {br} oifname {wg} accept
    iifname {wg} oifname {br} accept
    ct status dnat accept
    oifname {wg} counter drop comment "relay into the tunnel"
    iifname {wg} counter drop comment "relay out of the tunnel"
  }}

  # No cleartext: traffic to the overlay leaves only through the tunnel, to our pods or to this
  # host itself. Judged on the postrouting hook, where the output interface is final for forwarded
  # and locally generated traffic alike: kube-proxy DNATs a host's packet to a ClusterIP in the nat
  # output hook, after which the kernel re-routes it, so output-hook chains still see the interface
  # of the route to the ClusterIP (usually the underlay), not the one the packet leaves by.
  chain egress {{
    type filter hook postrouting priority filter; policy accept;
    ip daddr @cluster4 oifname != {{ {wg}, {br}, "lo" }} counter drop comment "no cleartext"
    ip6 daddr @cluster6 oifname != {{ {wg}, {br}, "lo" }} counter drop comment "no cleartext"
    oifname {wg} meta nfproto ipv4 tcp flags syn / syn,rst tcp option maxseg size set {mss4} comment "clamp MSS to the tunnel MTU"
    oifname {wg} meta nfproto ipv6 tcp flags syn / syn,rst tcp option maxseg size set {mss6} comment "clamp MSS to the tunnel MTU"
  }}

  # Pods reaching beyond the overlay leave with the node's address. Packets entering the tunnel
  # with a source outside this node's pod CIDRs (a host-network client of a ClusterIP whose
  # backend is on another node, with the node's underlay address as source) leave with the node's
  # overlay address: the receiving peer drops any source outside our allowed IPs. Packets into
  # our bridge keep their source.
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @local4 ip daddr != @cluster4 oifname != {br} masquerade
    ip6 saddr @local6 ip6 daddr != @cluster6 oifname != {br} masquerade
{foreign}  }}
}}
"#
    );
    s
}

/// Runs `nft ARGS`, feeding it `stdin`; its stdout, or its stderr as the error.
fn run(nft: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let what = format!("{nft} {}", args.join(" "));
    let mut child = Command::new(nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            backend_error(
                Component::Firewall,
                format!("run {what} (is nftables installed?)"),
                e,
            )
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| backend_error(Component::Firewall, format!("write to {what}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| backend_error(Component::Firewall, format!("wait for {what}"), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::backend(
            Component::Firewall,
            format!("{what}: {}", stderr.trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `listing` without its counter values (`counter packets 5 bytes 300` becomes `counter`).
fn stateless(listing: &str) -> String {
    let mut out = String::with_capacity(listing.len());
    let mut rest = listing;
    while let Some(at) = rest.find("counter packets ") {
        out.push_str(&rest[..at + "counter".len()]);
        rest = &rest[at + "counter".len()..];
        // Skip " packets N bytes M".
        for word in ["packets", "bytes"] {
            let trimmed = rest.trim_start();
            let Some(after) = trimmed.strip_prefix(word) else {
                break;
            };
            let after = after.trim_start();
            let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            rest = &after[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// The packets each `drop` rule with a counter and a comment has dropped, summed by label (the
/// comment in snake case: `relay_into_the_tunnel`).
fn dropped(listing: &str) -> BTreeMap<String, u64> {
    let mut drops = BTreeMap::new();
    for line in listing.lines() {
        let Some((_, counted)) = line.split_once("counter packets ") else {
            continue;
        };
        let Some((_, comment)) = counted.split_once(" drop comment \"") else {
            continue;
        };
        let packets: u64 = counted
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let label: String = comment
            .trim_end_matches('"')
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("_")
            .to_ascii_lowercase();
        *drops.entry(label).or_default() += packets;
    }
    drops
}

/// The table as nft prints it, counters included; `None` when absent.
fn listing(nft: &str) -> Result<Option<String>, Error> {
    match run(nft, &["list", "table", "inet", NFT_TABLE], None) {
        Ok(text) => Ok(Some(text)),
        // nft tells why only in prose (the kernel's ENOENT through strerror, in the locale's
        // language) and exits 1 for every error: ask which tables exist instead, a listing that
        // succeeds whether ours is there or not. If even that fails, the first error stands.
        Err(e) => match run(nft, &["list", "tables", "inet"], None) {
            Ok(tables) if !lists_our_table(&tables) => Ok(None),
            _ => Err(e),
        },
    }
}

/// `nft list tables inet` output names our table.
fn lists_our_table(tables: &str) -> bool {
    let ours = format!("table inet {NFT_TABLE}");
    tables.lines().any(|line| line.trim() == ours)
}

/// The whole-table replacement script: one transaction that makes sure the table exists,
/// deletes it, and (with `rules`) creates it anew.
fn replacement(rules: &str) -> String {
    format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n{rules}")
}

impl Nftables {
    /// Uses `nft` from `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with the nft path on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&str) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let nft = self.nft.clone();
        tokio::task::spawn_blocking(move || f(&nft))
            .await
            .map_err(|e| backend_error(Component::Firewall, "blocking task failed", e))?
    }

    /// Checks that `nft` runs and may read the ruleset (installed, and with `CAP_NET_ADMIN`),
    /// changing nothing: for start-up, so a host without nftables is refused at once with its
    /// cause rather than at every pass.
    pub async fn check(&self) -> Result<(), Error> {
        self.blocking(|nft| run(nft, &["list", "tables"], None))
            .await
            .map(drop)
    }

    /// Deletes the table (for `--cleanup-on-exit` and `wormhole uninstall`); absent is fine.
    /// Returns whether it was there.
    pub async fn delete(&self) -> Result<bool, Error> {
        *self.last.lock().unwrap() = None;
        self.blocking(|nft| {
            let existed = listing(nft)?.is_some();
            run(nft, &["-f", "-"], Some(&replacement("")))?;
            Ok(existed)
        })
        .await
    }
}

#[async_trait]
impl Firewall for Nftables {
    async fn read(&self) -> Result<Option<FirewallPolicy>, Error> {
        let Some((policy, expected)) = self.last.lock().unwrap().clone() else {
            return Ok(None);
        };
        let listing = self.blocking(listing).await?;
        *self.drops.lock().unwrap() = listing.as_deref().map(dropped).unwrap_or_default();
        if listing.as_deref().map(stateless).as_deref() == Some(expected.as_str()) {
            Ok(Some(policy))
        } else {
            tracing::warn!(
                "nftables table inet {NFT_TABLE} was changed by someone else; restoring it"
            );
            Ok(None)
        }
    }

    async fn apply(&self, policy: &FirewallPolicy) -> Result<(), Error> {
        let script = replacement(&render(policy));
        let listing = self
            .blocking(move |nft| {
                run(nft, &["-f", "-"], Some(&script))?;
                listing(nft)
            })
            .await?
            .ok_or_else(|| {
                Error::backend(Component::Firewall, "table missing right after applying it")
            })?;
        *self.drops.lock().unwrap() = dropped(&listing);
        *self.last.lock().unwrap() = Some((policy.clone(), stateless(&listing)));
        Ok(())
    }

    fn drops(&self) -> BTreeMap<String, u64> {
        self.drops.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FirewallPolicy {
        FirewallPolicy {
            interface: "wormhole0".parse().unwrap(),
            bridge: "wormhole-br0".parse().unwrap(),
            cluster_cidrs: vec![
                "10.99.0.0/16".parse().unwrap(),
                "fd99::/48".parse().unwrap(),
            ],
            local_pod_cidrs: vec!["10.99.1.0/24".parse().unwrap()],
            mtu: 1420,
        }
    }

    #[test]
    fn renders_every_rule_family_for_both_stacks() {
        let text = render(&policy());
        assert!(text.contains(
            "set cluster6 {\n    type ipv6_addr\n    flags interval\n    elements = { fd99::/48 }"
        ));
        assert!(text.contains(
            "set local4 {\n    type ipv4_addr\n    flags interval\n    elements = { 10.99.1.0/24 }"
        ));
        // Nested cluster CIDRs collapse to the outermost (nft refuses overlapping intervals).
        let mut nested = policy();
        nested.cluster_cidrs.push("10.0.0.0/8".parse().unwrap());
        nested.cluster_cidrs.push("10.0.0.0/8".parse().unwrap());
        assert!(
            render(&nested).contains("elements = { 10.0.0.0/8 }"),
            "{}",
            render(&nested)
        );
        // Nothing about peers: they come and go without a firewall change.
        assert!(!text.contains("remote4") && !text.contains("10.99.2."));
        // No IPv6 local CIDR: the set exists, empty.
        assert!(text.contains("set local6 {\n    type ipv6_addr\n    flags interval\n  }"));
        assert!(text.contains("maxseg size set 1380"));
        assert!(text.contains("maxseg size set 1360"));
        assert_eq!(text.matches("\"no cleartext\"").count(), 2);
        assert_eq!(text.matches("masquerade").count(), 2);
        // No cleartext is judged where the output interface is final (after kube-proxy's DNAT
        // in nat output has re-routed a host's packet), not in the output hook.
        let egress = text.split("chain egress {").nth(1).unwrap();
        let egress = &egress[..egress.find("\n  }").unwrap()];
        assert!(egress.contains("type filter hook postrouting priority filter;"));
        assert_eq!(egress.matches("\"no cleartext\"").count(), 2);
        assert_eq!(egress.matches("maxseg size set").count(), 2);
        assert!(!text.contains("hook output"));
        // A foreign source entering the tunnel takes the node's overlay address; IPv4 only here,
        // since this node has no IPv6 pod CIDR.
        assert!(text.contains(
            r#"oifname "wormhole0" ip saddr != @local4 snat ip to 10.99.1.1 comment "foreign source into the tunnel""#
        ));
        assert!(!text.contains("snat ip6"));
        let mut dual = policy();
        dual.local_pod_cidrs.push("fd99:0:1::/64".parse().unwrap());
        assert!(render(&dual).contains(
            r#"oifname "wormhole0" ip6 saddr != @local6 snat ip6 to fd99:0:1::1 comment "foreign source into the tunnel""#
        ));
        assert!(text.contains(
            r#"iifname != { "wormhole0", "wormhole-br0", "lo" } ip saddr @cluster4 counter drop"#
        ));
        assert_eq!(text.matches("spoofed overlay source").count(), 2);
    }

    #[test]
    fn counters_are_read_by_rule_and_left_out_of_the_comparison() {
        let listing = "table inet wormhole {\n\tchain forward {\n\
            \t\tiifname \"wormhole-br0\" oifname \"wormhole0\" accept\n\
            \t\toifname \"wormhole0\" counter packets 7 bytes 420 drop comment \"relay into the tunnel\"\n\
            \t\tip daddr @cluster4 counter packets 2 bytes 80 drop comment \"no cleartext\"\n\
            \t\tip6 daddr @cluster6 counter packets 3 bytes 90 drop comment \"no cleartext\"\n\
            \t\tip saddr 1.2.3.4 counter packets 9 bytes 9 accept\n\t}\n}\n";
        let drops = dropped(listing);
        assert_eq!(
            drops.into_iter().collect::<Vec<_>>(),
            [
                ("no_cleartext".to_owned(), 5),
                ("relay_into_the_tunnel".to_owned(), 7)
            ]
        );
        let plain = stateless(listing);
        assert!(
            !plain.contains("packets") && !plain.contains("bytes"),
            "{plain}"
        );
        assert!(
            plain.contains("oifname \"wormhole0\" counter drop comment \"relay into the tunnel\"")
        );
        assert!(plain.contains("ip saddr 1.2.3.4 counter accept"));
        assert_eq!(
            stateless(&listing.replace("packets 7", "packets 70000")),
            plain
        );
    }

    #[test]
    fn only_what_belongs_is_forwarded_into_the_tunnel() {
        let text = render(&policy());
        let forward = text.split("chain forward {").nth(1).unwrap();
        let forward = &forward[..forward.find("\n  }").unwrap()];
        let rules: Vec<&str> = forward
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("type"))
            .collect();
        assert_eq!(
            rules,
            [
                r#"iifname "wormhole-br0" oifname "wormhole0" accept"#,
                r#"iifname "wormhole0" oifname "wormhole-br0" accept"#,
                "ct status dnat accept",
                r#"oifname "wormhole0" counter drop comment "relay into the tunnel""#,
                r#"iifname "wormhole0" counter drop comment "relay out of the tunnel""#,
            ]
        );
    }

    #[test]
    fn our_table_is_found_among_others() {
        assert!(lists_our_table("table inet filter\ntable inet wormhole\n"));
        assert!(!lists_our_table(
            "table inet filter\ntable inet wormhole2\n"
        ));
        assert!(!lists_our_table(""));
    }

    #[tokio::test]
    async fn a_missing_nft_binary_is_a_clear_error() {
        let nft = Nftables {
            nft: "/nonexistent/nft".into(),
            ..Nftables::default()
        };
        let err = nft.apply(&policy()).await.unwrap_err();
        assert!(err.to_string().contains("is nftables installed?"), "{err}");
        assert_eq!(nft.read().await.unwrap(), None);
    }
}
