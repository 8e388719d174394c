//! Per-node settings: what a node publishes about itself (where it is reached, its persistent
//! keepalive), given to every agent by its options (`--endpoint`, `--persistent-keepalive`: one
//! DaemonSet for all nodes) and overridden for one node by annotations on its Node
//! ([`ENDPOINT_ANNOTATION`](crate::ENDPOINT_ANNOTATION),
//! [`PERSISTENT_KEEPALIVE_ANNOTATION`](crate::PERSISTENT_KEEPALIVE_ANNOTATION)), which only that
//! node's agent reads.
//!
//! A flag and an annotation take the same values, parsed by the same functions
//! ([`PublishedEndpoint::parse`], [`parse_keepalive`]). [`LocalSettings`] follows the
//! annotations: a valid one overrides the option, a removed one gives the option back, and a
//! refused one (a bad value, an unknown `wormhole.dev/` key) changes nothing: the value in force
//! stays (the option's, or the last good annotation's) and the refusal is kept with its reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;

use ipnet::IpNet;
use wormhole_core::{Escaped, RejectReason};

use crate::{
    ANNOTATION_PREFIX, ENDPOINT_ANNOTATION, LISTEN_PORT_ANNOTATION, PERSISTENT_KEEPALIVE_ANNOTATION,
};

/// The endpoint a node publishes in its WormholeNode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishedEndpoint {
    /// Its Node's InternalIP (IPv4 preferred) and the listen port (`internal-ip`).
    #[default]
    InternalIp,
    /// This address (a public address, or a port forward on the node's NAT).
    Fixed(SocketAddr),
    /// None (`none`): the node is behind NAT and cannot be reached first. Its peers learn its
    /// address from its handshakes (it should set a persistent keepalive), and nodes it cannot
    /// reach either from where other nodes observe it.
    BehindNat,
}

/// The longest value quoted back in a refusal (an annotation value may be 256 KiB).
const MAX_QUOTED: usize = 64;

impl PublishedEndpoint {
    /// What `--endpoint` and the `wormhole.dev/endpoint` annotation take: `none` (behind NAT),
    /// `internal-ip` (the Node's InternalIP: the default), `IP` (that address and
    /// `listen_port`), `IP:PORT` or `[IPv6]:PORT`. The address must be one peers accept
    /// ([`wormhole_core::parse_endpoint`]: not loopback, unspecified, multicast, broadcast,
    /// port 0); every peer would refuse this node with it.
    ///
    /// ```
    /// use wormhole_k8s::PublishedEndpoint;
    /// assert_eq!(PublishedEndpoint::parse("none", 51820), Ok(PublishedEndpoint::BehindNat));
    /// assert_eq!(
    ///     PublishedEndpoint::parse("203.0.113.5", 51820),
    ///     Ok(PublishedEndpoint::Fixed("203.0.113.5:51820".parse().unwrap()))
    /// );
    /// assert!(PublishedEndpoint::parse("nat.example:1", 51820).is_err());
    /// ```
    pub fn parse(text: &str, listen_port: u16) -> Result<Self, SettingError> {
        let text = text.trim();
        match text {
            "none" => return Ok(PublishedEndpoint::BehindNat),
            "internal-ip" => return Ok(PublishedEndpoint::InternalIp),
            _ => {}
        }
        let address = match text.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, listen_port).to_string(),
            Err(_) if text.parse::<SocketAddr>().is_ok() => text.to_owned(),
            Err(_) => return Err(SettingError::EndpointSyntax),
        };
        match wormhole_core::parse_endpoint(&address) {
            Ok(endpoint) => Ok(PublishedEndpoint::Fixed(endpoint)),
            Err(RejectReason::BadEndpoint { reason, .. }) => Err(SettingError::Endpoint(reason)),
            Err(other) => unreachable!("parse_endpoint gives BadEndpoint only, not {other:?}"),
        }
    }
}

/// The text [`PublishedEndpoint::parse`] reads back: `internal-ip`, `none`, or the address.
impl std::fmt::Display for PublishedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishedEndpoint::InternalIp => f.write_str("internal-ip"),
            PublishedEndpoint::Fixed(address) => address.fmt(f),
            PublishedEndpoint::BehindNat => f.write_str("none"),
        }
    }
}

/// What `--persistent-keepalive` and the `wormhole.dev/persistent-keepalive` annotation take:
/// whole seconds from 0 to 65535, 0 meaning off (`None`).
///
/// ```
/// use wormhole_k8s::parse_keepalive;
/// assert_eq!(parse_keepalive("25"), Ok(Some(25)));
/// assert_eq!(parse_keepalive("0"), Ok(None));
/// assert!(parse_keepalive("25s").is_err());
/// ```
pub fn parse_keepalive(text: &str) -> Result<Option<u16>, SettingError> {
    let seconds: u16 = text
        .trim()
        .parse()
        .map_err(|_| SettingError::KeepaliveSyntax)?;
    Ok(Some(seconds).filter(|&s| s != 0))
}

/// Why the value of a per-node setting is refused (a flag's or an annotation's: the same text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingError {
    /// Not `none`, `internal-ip`, an address, or an address and port.
    #[error(
        "not none, internal-ip, IP, IP:PORT or [IPv6]:PORT (host names are not resolved): a \
         node behind NAT takes none"
    )]
    EndpointSyntax,
    /// An address every peer would refuse.
    #[error("{0}")]
    Endpoint(&'static str),
    /// An address inside the overlay: every peer would refuse it.
    #[error(
        "lies inside the overlay CIDR {0}: WireGuard's packets to it would be routed into the \
         tunnel, and every peer would refuse this node; give the node's underlay (or public) address"
    )]
    EndpointInOverlay(IpNet),
    /// Not a number of seconds.
    #[error("not a whole number of seconds from 0 (off) to 65535, such as 25")]
    KeepaliveSyntax,
    /// `wormhole.dev/listen-port`: deliberately not a per-node setting.
    #[error(
        "the listen port is not a per-node setting: it is the DaemonSet's --listen-port, bound \
         at start; behind a port forward, set {ENDPOINT_ANNOTATION} to the public IP:PORT instead"
    )]
    ListenPort,
    /// Another key in `wormhole.dev/` (a typo?).
    #[error(
        "not a setting this agent reads (it reads {ENDPOINT_ANNOTATION} and {PERSISTENT_KEEPALIVE_ANNOTATION})"
    )]
    UnknownKey,
}

/// An annotation on this node's Node that was refused: the setting in force stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedAnnotation {
    /// The annotation's key.
    pub key: String,
    /// Its value, cut to 64 characters.
    pub value: String,
    /// Why.
    pub error: SettingError,
}

/// `annotation KEY="VALUE" refused: WHY`, the key and value escaped.
impl std::fmt::Display for RefusedAnnotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "annotation {}=\"{}\" refused: {}",
            Escaped(&self.key),
            Escaped(&self.value),
            self.error
        )
    }
}

/// What a node publishes about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeSettings {
    /// Where it is reached.
    pub endpoint: PublishedEndpoint,
    /// Its persistent keepalive in seconds (`None`: off).
    pub persistent_keepalive: Option<u16>,
}

/// Where a setting in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The agent's options: a flag, its environment variable, or the config file.
    Flag,
    /// An annotation on this node's Node.
    Annotation,
}

impl Origin {
    /// `flag` or `annotation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Flag => "flag",
            Origin::Annotation => "annotation",
        }
    }
}

/// The per-node settings in force on this node: its options, overridden by its Node's
/// annotations. A valid annotation overrides the option, a removed one gives the option back,
/// and a refused one (a bad value, an unknown `wormhole.dev/` key) changes nothing: the value
/// in force stays (the option's, or the last good annotation's) and the refusal is kept with its
/// reason ([`refused`](Self::refused)).
#[derive(Debug, Clone)]
pub struct LocalSettings {
    options: NodeSettings,
    listen_port: u16,
    overlay: Vec<IpNet>,
    in_force: NodeSettings,
    endpoint_from: Origin,
    keepalive_from: Origin,
    refused: Vec<RefusedAnnotation>,
}

impl LocalSettings {
    /// The options' settings in force, until [`follow`](Self::follow) reads annotations.
    /// `listen_port` completes an endpoint annotation without a port; an endpoint annotation
    /// inside `overlay` (the cluster and external CIDRs) is refused.
    pub fn new(options: NodeSettings, listen_port: u16, overlay: Vec<IpNet>) -> Self {
        LocalSettings {
            options,
            listen_port,
            overlay,
            in_force: options,
            endpoint_from: Origin::Flag,
            keepalive_from: Origin::Flag,
            refused: Vec::new(),
        }
    }

    /// Follows this node's annotations (all of them, or only those in `wormhole.dev/`): the
    /// settings they give, each refused one leaving its setting as it is. Returns whether the
    /// settings in force changed.
    pub fn follow(&mut self, annotations: &BTreeMap<String, String>) -> bool {
        let before = self.in_force;
        let mut refused = Vec::new();
        let mut refuse = |key: &str, value: &str, error: SettingError| {
            refused.push(RefusedAnnotation {
                key: key.to_owned(),
                value: quoted(value),
                error,
            });
        };
        let ours = (Bound::Included(ANNOTATION_PREFIX), Bound::Unbounded);
        for (key, value) in annotations.range::<str, _>(ours) {
            if !key.starts_with(ANNOTATION_PREFIX) {
                break;
            }
            let error = match key.as_str() {
                ENDPOINT_ANNOTATION | PERSISTENT_KEEPALIVE_ANNOTATION => continue,
                LISTEN_PORT_ANNOTATION => SettingError::ListenPort,
                _ => SettingError::UnknownKey,
            };
            refuse(key, value, error);
        }
        match annotations.get(ENDPOINT_ANNOTATION) {
            None => {
                self.in_force.endpoint = self.options.endpoint;
                self.endpoint_from = Origin::Flag;
            }
            Some(text) => match self.endpoint(text) {
                Ok(endpoint) => {
                    self.in_force.endpoint = endpoint;
                    self.endpoint_from = Origin::Annotation;
                }
                Err(error) => refuse(ENDPOINT_ANNOTATION, text, error),
            },
        }
        match annotations.get(PERSISTENT_KEEPALIVE_ANNOTATION) {
            None => {
                self.in_force.persistent_keepalive = self.options.persistent_keepalive;
                self.keepalive_from = Origin::Flag;
            }
            Some(text) => match parse_keepalive(text) {
                Ok(seconds) => {
                    self.in_force.persistent_keepalive = seconds;
                    self.keepalive_from = Origin::Annotation;
                }
                Err(error) => refuse(PERSISTENT_KEEPALIVE_ANNOTATION, text, error),
            },
        }
        refused.sort_by(|a, b| a.key.cmp(&b.key));
        self.refused = refused;
        self.in_force != before
    }

    /// `text` as an endpoint annotation: [`PublishedEndpoint::parse`], outside the overlay.
    fn endpoint(&self, text: &str) -> Result<PublishedEndpoint, SettingError> {
        let endpoint = PublishedEndpoint::parse(text, self.listen_port)?;
        if let PublishedEndpoint::Fixed(address) = endpoint {
            let ip = address.ip().to_canonical();
            if let Some(cidr) = self.overlay.iter().find(|c| c.contains(&ip)) {
                return Err(SettingError::EndpointInOverlay(*cidr));
            }
        }
        Ok(endpoint)
    }

    /// The settings in force.
    pub fn in_force(&self) -> NodeSettings {
        self.in_force
    }

    /// Where the endpoint in force comes from.
    pub fn endpoint_from(&self) -> Origin {
        self.endpoint_from
    }

    /// Where the persistent keepalive in force comes from.
    pub fn keepalive_from(&self) -> Origin {
        self.keepalive_from
    }

    /// The annotations refused at the last [`follow`](Self::follow), by key.
    pub fn refused(&self) -> &[RefusedAnnotation] {
        &self.refused
    }

    /// The settings in force as one line: `endpoint E (from), persistent keepalive K (from)`.
    pub fn describe(&self) -> String {
        let keepalive = match self.in_force.persistent_keepalive {
            Some(s) => format!("{s} s"),
            None => "off".into(),
        };
        format!(
            "endpoint {} ({}), persistent keepalive {keepalive} ({})",
            self.in_force.endpoint,
            self.endpoint_from.as_str(),
            self.keepalive_from.as_str()
        )
    }
}

/// `value` cut to [`MAX_QUOTED`] characters, marked with `…` when cut.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED) {
        None => value.to_owned(),
        Some((end, _)) => format!("{}…", &value[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn fixed(text: &str) -> PublishedEndpoint {
        PublishedEndpoint::Fixed(text.parse().unwrap())
    }

    #[test]
    fn an_endpoint_is_none_internal_ip_an_address_or_an_address_and_port() {
        let parse = |text: &str| PublishedEndpoint::parse(text, 4000);
        assert_eq!(parse("none"), Ok(PublishedEndpoint::BehindNat));
        assert_eq!(parse(" none "), Ok(PublishedEndpoint::BehindNat));
        assert_eq!(parse("internal-ip"), Ok(PublishedEndpoint::InternalIp));
        assert_eq!(parse("203.0.113.5"), Ok(fixed("203.0.113.5:4000")));
        assert_eq!(parse("203.0.113.5:51999"), Ok(fixed("203.0.113.5:51999")));
        assert_eq!(parse("fd00::1"), Ok(fixed("[fd00::1]:4000")));
        assert_eq!(parse("[fd00::1]:5"), Ok(fixed("[fd00::1]:5")));
        // Every text it gives reads back as itself.
        for e in [
            PublishedEndpoint::BehindNat,
            PublishedEndpoint::InternalIp,
            fixed("203.0.113.5:4000"),
            fixed("[fd00::1]:5"),
        ] {
            assert_eq!(parse(&e.to_string()), Ok(e));
        }
        for bad in [
            "",
            "None",
            "nat.example:1",
            "203.0.113.5:",
            "[fd00::1]",
            "1.2.3.4:99999",
        ] {
            assert_eq!(parse(bad), Err(SettingError::EndpointSyntax), "{bad:?}");
        }
        // What every peer would refuse is refused here, with the peers' reason.
        let err = parse("127.0.0.1").unwrap_err();
        assert!(err.to_string().starts_with("loopback address"), "{err}");
        let err = parse("192.0.2.1:0").unwrap_err();
        assert_eq!(err.to_string(), "port 0");
        assert!(parse("0.0.0.0:1").is_err());
        assert!(parse("[fe80::1]:1").is_err(), "link-local without a zone");
    }

    #[test]
    fn a_keepalive_is_whole_seconds_and_zero_is_off() {
        assert_eq!(parse_keepalive("25"), Ok(Some(25)));
        assert_eq!(parse_keepalive(" 65535 "), Ok(Some(65535)));
        assert_eq!(parse_keepalive("0"), Ok(None));
        for bad in ["", "-1", "65536", "25s", "2.5", "off"] {
            assert_eq!(
                parse_keepalive(bad),
                Err(SettingError::KeepaliveSyntax),
                "{bad:?}"
            );
        }
    }

    fn options() -> NodeSettings {
        NodeSettings {
            endpoint: PublishedEndpoint::InternalIp,
            persistent_keepalive: None,
        }
    }

    #[test]
    fn annotations_override_the_options_and_removing_them_gives_the_options_back() {
        let mut s = LocalSettings::new(options(), 51820, Vec::new());
        assert_eq!(s.in_force(), options());
        assert!(!s.follow(&annotations(&[("other.io/x", "y")])));
        assert_eq!(s.endpoint_from(), Origin::Flag);

        let nat = annotations(&[
            (ENDPOINT_ANNOTATION, "none"),
            (PERSISTENT_KEEPALIVE_ANNOTATION, "25"),
            ("zzz.example/after", "1"),
        ]);
        assert!(s.follow(&nat));
        assert_eq!(
            s.in_force(),
            NodeSettings {
                endpoint: PublishedEndpoint::BehindNat,
                persistent_keepalive: Some(25)
            }
        );
        assert_eq!(
            (s.endpoint_from(), s.keepalive_from()),
            (Origin::Annotation, Origin::Annotation)
        );
        assert!(s.refused().is_empty());
        assert_eq!(
            s.describe(),
            "endpoint none (annotation), persistent keepalive 25 s (annotation)"
        );
        assert!(!s.follow(&nat), "the same annotations change nothing");

        // Only the keepalive left: the endpoint is the option's again.
        assert!(s.follow(&annotations(&[(PERSISTENT_KEEPALIVE_ANNOTATION, "25")])));
        assert_eq!(s.in_force().endpoint, PublishedEndpoint::InternalIp);
        assert_eq!(s.endpoint_from(), Origin::Flag);
        // An annotation can turn an option off: 0.
        let mut s = LocalSettings::new(
            NodeSettings {
                endpoint: PublishedEndpoint::BehindNat,
                persistent_keepalive: Some(25),
            },
            51820,
            Vec::new(),
        );
        assert!(s.follow(&annotations(&[
            (ENDPOINT_ANNOTATION, "internal-ip"),
            (PERSISTENT_KEEPALIVE_ANNOTATION, "0"),
        ])));
        assert_eq!(s.in_force(), options());
        assert!(s.follow(&BTreeMap::new()));
        assert_eq!(s.in_force().persistent_keepalive, Some(25));
    }

    #[test]
    fn a_refused_annotation_keeps_the_value_in_force_and_says_why() {
        let overlay: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap()];
        let mut s = LocalSettings::new(options(), 51820, overlay);
        // Refused from the start: the options stay.
        assert!(!s.follow(&annotations(&[(PERSISTENT_KEEPALIVE_ANNOTATION, "25s")])));
        assert_eq!(s.in_force(), options());
        assert_eq!(s.keepalive_from(), Origin::Flag);
        assert_eq!(
            s.refused()[0].to_string(),
            "annotation wormhole.dev/persistent-keepalive=\"25s\" refused: not a whole number \
             of seconds from 0 (off) to 65535, such as 25"
        );
        // A good value, then a bad one: the good one stays (nothing lost), and so does its origin.
        assert!(s.follow(&annotations(&[
            (ENDPOINT_ANNOTATION, "203.0.113.5:4000"),
            (PERSISTENT_KEEPALIVE_ANNOTATION, "25"),
        ])));
        assert!(!s.follow(&annotations(&[
            (ENDPOINT_ANNOTATION, "10.244.3.7"),
            (PERSISTENT_KEEPALIVE_ANNOTATION, "soon\u{1b}[2J"),
        ])));
        assert_eq!(
            s.in_force(),
            NodeSettings {
                endpoint: fixed("203.0.113.5:4000"),
                persistent_keepalive: Some(25)
            }
        );
        assert_eq!(s.keepalive_from(), Origin::Annotation);
        let refused: Vec<String> = s.refused().iter().map(ToString::to_string).collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].starts_with(
                "annotation wormhole.dev/endpoint=\"10.244.3.7\" refused: lies inside the overlay \
                 CIDR 10.244.0.0/16"
            ),
            "{}",
            refused[0]
        );
        // Text from the Node is escaped where it is shown.
        assert!(
            refused[1].contains("=\"soon\\u{1b}[2J\" refused"),
            "{}",
            refused[1]
        );
        // Fixed: the refusal goes, the value stays.
        assert!(!s.follow(&annotations(&[
            (ENDPOINT_ANNOTATION, "203.0.113.5:4000"),
            (PERSISTENT_KEEPALIVE_ANNOTATION, "25"),
        ])));
        assert!(s.refused().is_empty());
    }

    #[test]
    fn unknown_keys_of_ours_are_refused_and_others_ignored() {
        let mut s = LocalSettings::new(options(), 51820, Vec::new());
        let long = "x".repeat(300);
        assert!(!s.follow(&annotations(&[
            ("wormhole.dev/endpiont", "none"),
            ("wormhole.dev/listen-port", "51999"),
            ("wormhole.dev/x", &long),
            ("wormhole.devx/other", "1"),
            ("kilo.squat.ai/force-endpoint", "1.2.3.4:5"),
            ("node.alpha.kubernetes.io/ttl", "0"),
        ])));
        assert_eq!(s.in_force(), options());
        let refused: Vec<(&str, &SettingError)> = s
            .refused()
            .iter()
            .map(|r| (r.key.as_str(), &r.error))
            .collect();
        assert_eq!(
            refused,
            [
                ("wormhole.dev/endpiont", &SettingError::UnknownKey),
                ("wormhole.dev/listen-port", &SettingError::ListenPort),
                ("wormhole.dev/x", &SettingError::UnknownKey),
            ]
        );
        assert!(
            s.refused()[0].to_string().ends_with(
                "(it reads wormhole.dev/endpoint and wormhole.dev/persistent-keepalive)"
            )
        );
        assert_eq!(s.refused()[2].value.chars().count(), MAX_QUOTED + 1);
        assert!(s.refused()[2].value.ends_with('…'));
    }
}
