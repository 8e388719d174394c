//! `wormhole manifests`: the whole install as one YAML stream (`kubectl apply -f`), or with
//! `--uninstall` the cleanup DaemonSet that runs `wormhole uninstall` on every node.
//!
//! The files in `deploy/` are the source, compiled into the binary: the output is those
//! documents in the order `kubectl apply` needs them (the Namespace first, the CRDs before
//! anything could use them, the DaemonSet last), with the options set in the DaemonSet's
//! container. Options edit the parsed documents, never text, so the output is valid YAML for
//! every input; each value is checked first (a bad one is a usage error naming the flag).

use std::fmt::Write as _;

use clap::Args;
use ipnet::IpNet;
use yaml_serde::{Mapping, Value};

use crate::cli::{BackendArg, parse_cidr, parse_source};

/// The install, in the order `kubectl apply -f` must create it.
const INSTALL: [(&str, &str); 5] = [
    (
        "deploy/namespace.yaml",
        include_str!("../../deploy/namespace.yaml"),
    ),
    ("deploy/crd.yaml", include_str!("../../deploy/crd.yaml")),
    ("deploy/rbac.yaml", include_str!("../../deploy/rbac.yaml")),
    (
        "deploy/admission-policy.yaml",
        include_str!("../../deploy/admission-policy.yaml"),
    ),
    (
        "deploy/daemonset.yaml",
        include_str!("../../deploy/daemonset.yaml"),
    ),
];

/// `--monitoring`: the Prometheus Operator's kinds (their CRDs must be installed).
const MONITORING: [(&str, &str); 2] = [
    (
        "deploy/monitoring/podmonitor.yaml",
        include_str!("../../deploy/monitoring/podmonitor.yaml"),
    ),
    (
        "deploy/monitoring/prometheusrule.yaml",
        include_str!("../../deploy/monitoring/prometheusrule.yaml"),
    ),
];

/// `--monitoring`: the Grafana dashboard, for a ConfigMap picked up by Grafana's sidecar.
const DASHBOARD: &str = include_str!("../../deploy/monitoring/dashboard.json");

/// `--arch`: what `scripts/image.sh --arch` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86-64.
    Amd64,
    /// 64-bit ARM.
    Arm64,
}

impl Arch {
    fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// Where the DaemonSets name the nodes' architecture.
const ARCH_SELECTOR: [&str; 5] = [
    "spec",
    "template",
    "spec",
    "nodeSelector",
    "kubernetes.io/arch",
];

/// CIDRs as a comma-separated list (an env value, the header's flags).
fn joined(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The agent's admin port (the DaemonSet's `WORMHOLE_ADMIN_ADDR`).
const ADMIN_PORT: &str = "9473";

/// The PSK Secret `--psk` names (created by the operator: docs/install.md).
pub const PSK_SECRET: &str = "wormhole-psk";

/// `wormhole manifests`.
#[derive(Debug, Args)]
pub struct ManifestsArgs {
    /// The agent's image, as your nodes pull it, best by digest
    /// (`registry.example.com/wormhole@sha256:...`, as `scripts/release.sh` fills in).
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// The nodes' architecture the image is built for: the DaemonSets run only there
    /// (`nodeSelector` `kubernetes.io/arch`).
    #[arg(long, value_enum, default_value = "amd64")]
    pub arch: Arch,
    /// The cluster CIDRs (comma-separated or repeated), when the agents cannot read them from
    /// kubeadm's ConfigMap (`networking.podSubnet`).
    #[arg(long, value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr, conflicts_with = "uninstall")]
    pub cluster_cidr: Vec<IpNet>,
    /// Use pre-shared keys from the Secret `wormhole-psk` in the namespace `wormhole`, key
    /// `psk` (create it before the DaemonSet: `kubectl -n wormhole create secret generic
    /// wormhole-psk --from-literal=psk="$(wg genpsk)"`). The rendered output never holds a key.
    #[arg(long, conflicts_with = "uninstall")]
    pub psk: bool,
    /// The range set aside for WormholePeers (machines outside the cluster); without it every
    /// WormholePeer is refused.
    #[arg(long, value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr, conflicts_with = "uninstall")]
    pub external_cidr: Vec<IpNet>,
    /// The WireGuard backend [default: auto].
    #[arg(long, value_enum, conflicts_with = "uninstall")]
    pub backend: Option<BackendArg>,
    /// Who may scrape /metrics besides the node itself (addresses or CIDRs, comma-separated):
    /// your Prometheus's. Also adds the `prometheus.io/*` scrape annotations to the pods.
    #[arg(long, value_delimiter = ',', value_name = "IP|CIDR", value_parser = parse_source, conflicts_with = "uninstall")]
    pub metrics_allow: Vec<IpNet>,
    /// Add the monitoring pack: PodMonitor and PrometheusRule (the Prometheus Operator's CRDs
    /// must be installed) and the Grafana dashboard as a ConfigMap labelled
    /// `grafana_dashboard: "1"`.
    #[arg(long, conflicts_with = "uninstall")]
    pub monitoring: bool,
    /// Render the cleanup instead: a DaemonSet `wormhole-uninstall` whose init container runs
    /// `wormhole uninstall` on every node (a pod is ready once its node is clean). Apply it
    /// after deleting the install, delete it when every pod is ready.
    #[arg(long)]
    pub uninstall: bool,
    /// With --uninstall: also remove each node's private key.
    #[arg(long, requires = "uninstall")]
    pub remove_keys: bool,
}

/// A usage error of `wormhole manifests`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ManifestsError(String);

impl ManifestsArgs {
    /// The YAML stream these arguments ask for.
    pub fn render(&self) -> Result<String, ManifestsError> {
        check_image(&self.image)?;
        let docs = if self.uninstall {
            self.cleanup()?
        } else {
            self.install()?
        };
        let mut out = format!(
            "# Wormhole {}: {}, rendered by `wormhole manifests{}`.\n",
            env!("CARGO_PKG_VERSION"),
            if self.uninstall {
                "the cleanup DaemonSet (docs/uninstall.md)"
            } else {
                "the whole install (kubectl apply -f; docs/install.md)"
            },
            self.command_line(),
        );
        for doc in docs {
            out.push_str("---\n");
            out.push_str(&yaml_serde::to_string(&doc).map_err(|e| {
                ManifestsError(format!("cannot write a rendered document as YAML: {e}"))
            })?);
        }
        Ok(out)
    }

    /// The flags given, for the header (every value was checked: no newline gets through).
    fn command_line(&self) -> String {
        let mut line = format!(" --image {}", self.image);
        if self.arch != Arch::Amd64 {
            let _ = write!(line, " --arch {}", self.arch.as_str());
        }
        if !self.cluster_cidr.is_empty() {
            let _ = write!(line, " --cluster-cidr {}", joined(&self.cluster_cidr));
        }
        if self.psk {
            line.push_str(" --psk");
        }
        if !self.external_cidr.is_empty() {
            let _ = write!(line, " --external-cidr {}", joined(&self.external_cidr));
        }
        if let Some(backend) = self.backend {
            let _ = write!(line, " --backend {}", backend_name(backend));
        }
        if !self.metrics_allow.is_empty() {
            let _ = write!(line, " --metrics-allow {}", joined(&self.metrics_allow));
        }
        for (on, flag) in [
            (self.monitoring, " --monitoring"),
            (self.uninstall, " --uninstall"),
            (self.remove_keys, " --remove-keys"),
        ] {
            if on {
                line.push_str(flag);
            }
        }
        line
    }

    /// The install: deploy/'s documents with the options set.
    fn install(&self) -> Result<Vec<Value>, ManifestsError> {
        if let Some((e, c)) = self.external_cidr.iter().find_map(|e| {
            self.cluster_cidr
                .iter()
                .find(|c| c.contains(e) || e.contains(*c))
                .map(|c| (e, c))
        }) {
            return Err(ManifestsError(format!(
                "--external-cidr {e} overlaps --cluster-cidr {c}: external peers need a range of \
                 their own, outside the pods' addresses"
            )));
        }
        let mut docs = documents(&INSTALL)?;
        let ds = daemonset(&mut docs)?;
        set(ds, &ARCH_SELECTOR, self.arch.as_str().into())?;
        let container = agent_container(ds)?;
        container.insert("image".into(), self.image.clone().into());
        if !self.cluster_cidr.is_empty() {
            set_env(
                container,
                "WORMHOLE_CLUSTER_CIDR",
                &joined(&self.cluster_cidr),
            )?;
        }
        if self.psk {
            set_env(container, "WORMHOLE_PSK_SECRET", PSK_SECRET)?;
        }
        if !self.external_cidr.is_empty() {
            set_env(
                container,
                "WORMHOLE_EXTERNAL_CIDR",
                &joined(&self.external_cidr),
            )?;
        }
        if let Some(backend) = self.backend {
            set_env(container, "WORMHOLE_BACKEND", backend_name(backend))?;
        }
        if !self.metrics_allow.is_empty() {
            set_env(
                container,
                "WORMHOLE_METRICS_ALLOW",
                &joined(&self.metrics_allow),
            )?;
            let annotations = mapping_at(ds, &["spec", "template", "metadata", "annotations"])?;
            for (key, value) in [
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", ADMIN_PORT),
                ("prometheus.io/path", "/metrics"),
            ] {
                annotations.insert(key.into(), value.into());
            }
        }
        if self.monitoring {
            docs.extend(documents(&MONITORING)?);
            docs.push(dashboard_config_map()?);
        }
        Ok(docs)
    }

    /// The cleanup: the Namespace and a DaemonSet `wormhole-uninstall` made from the agent's
    /// (same image, namespace, tolerations, priority, host network and security context), whose
    /// init container runs `wormhole uninstall` and whose container then idles.
    ///
    /// Its host paths are the parents of what the agent wrote (`/var/lib`, `/run`, both
    /// `Directory`: every node has them) and `/etc/cni/net.d`, so that the kubelet creates
    /// nothing on a node (the agent's `DirectoryOrCreate` would) and the state directory is no
    /// mount point (it can be removed); nothing else (no `/dev/net/tun`, no sysctls).
    fn cleanup(&self) -> Result<Vec<Value>, ManifestsError> {
        let mut docs = documents(&INSTALL)?;
        let namespace = docs
            .iter()
            .find(|d| d["kind"] == "Namespace")
            .cloned()
            .ok_or_else(|| ManifestsError("deploy/namespace.yaml has no Namespace".into()))?;
        let mut ds = daemonset(&mut docs)?.clone();
        let name = "wormhole-uninstall";
        let labels: Mapping = [("app.kubernetes.io/name".into(), Value::from(name))]
            .into_iter()
            .collect();
        set(&mut ds, &["metadata", "name"], name.into())?;
        for path in [
            &["metadata", "labels"][..],
            &["spec", "selector", "matchLabels"],
            &["spec", "template", "metadata", "labels"],
        ] {
            set(&mut ds, path, Value::Mapping(labels.clone()))?;
        }
        set(&mut ds, &ARCH_SELECTOR, self.arch.as_str().into())?;
        // Every node at once: nothing runs on them that a cleanup could disturb.
        set(
            &mut ds,
            &["spec", "updateStrategy"],
            yaml("{type: RollingUpdate, rollingUpdate: {maxUnavailable: 100%}}")?,
        )?;
        let spec = mapping_at(&mut ds, &["spec", "template", "spec"])?;
        // No API access: the cleanup reads nothing from the cluster.
        spec.remove("serviceAccountName");
        spec.insert("automountServiceAccountToken".into(), false.into());
        let agent = spec
            .get("containers")
            .and_then(Value::as_sequence)
            .and_then(|c| c.first())
            .and_then(Value::as_mapping)
            .cloned()
            .ok_or_else(|| ManifestsError("deploy/daemonset.yaml has no container".into()))?;
        let mut args = vec![Value::from("uninstall")];
        if self.remove_keys {
            args.push("--remove-keys".into());
        }
        let mounts = yaml(
            "[{name: host-var-lib, mountPath: /var/lib}, {name: host-run, mountPath: /run}, \
             {name: cni-conf, mountPath: /etc/cni/net.d}]",
        )?;
        let container = |name: &str, args: Vec<Value>, mounts: Option<Value>| {
            let mut c = Mapping::new();
            c.insert("name".into(), name.into());
            c.insert("image".into(), self.image.clone().into());
            c.insert("args".into(), Value::Sequence(args));
            for key in ["securityContext", "resources"] {
                if let Some(v) = agent.get(key) {
                    c.insert(key.into(), v.clone());
                }
            }
            if let Some(mounts) = mounts {
                c.insert("volumeMounts".into(), mounts);
            }
            Value::Mapping(c)
        };
        spec.insert(
            "initContainers".into(),
            Value::Sequence(vec![container("uninstall", args, Some(mounts))]),
        );
        spec.insert(
            "containers".into(),
            Value::Sequence(vec![container("idle", vec!["idle".into()], None)]),
        );
        spec.insert(
            "volumes".into(),
            yaml(
                "[{name: host-var-lib, hostPath: {path: /var/lib, type: Directory}}, \
                 {name: host-run, hostPath: {path: /run, type: Directory}}, \
                 {name: cni-conf, hostPath: {path: /etc/cni/net.d, type: DirectoryOrCreate}}]",
            )?,
        );
        Ok(vec![namespace, ds])
    }
}

/// A YAML literal of this file.
fn yaml(text: &str) -> Result<Value, ManifestsError> {
    yaml_serde::from_str(text).map_err(|e| ManifestsError(format!("{text}: {e}")))
}

/// `--backend`'s value as the agent's flag spells it.
fn backend_name(backend: BackendArg) -> &'static str {
    match backend {
        BackendArg::Auto => "auto",
        BackendArg::Kernel => "kernel",
        BackendArg::Userspace => "userspace",
        BackendArg::Embedded => "embedded",
    }
}

/// An image reference as the OCI distribution grammar has it (what a runtime can pull):
/// `[host[:port]/]path[:tag][@sha256:hex]`, the host of letters, digits, `.` and `-`, each
/// path component of lowercase letters and digits joined by `.`, `_`, `__` or dashes, the tag
/// of letters, digits, `.`, `_` and `-` (not first `.` or `-`, at most 128). It reaches the
/// output and the header comment, so nothing else may get through.
fn check_image(image: &str) -> Result<(), ManifestsError> {
    let bad = |why: &str| {
        Err(ManifestsError(format!(
            "--image {}: {why}; give the image reference your nodes pull, such as \
             registry.example.com/wormhole:0.1.0 or registry.example.com/wormhole@sha256:<64 hex \
             digits> (scripts/release.sh fills it in)",
            wormhole_core::Escaped(image)
        )))
    };
    if image.is_empty() || image.len() > 512 {
        return bad("must be 1 to 512 characters");
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if !ok {
            return bad("the digest must be sha256: and 64 lowercase hex digits");
        }
    }
    // The last component may carry a tag; a first one with `.` or `:`, or `localhost`, is the
    // registry's host.
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last..].split_once(':') {
        Some((_, tag)) => (&name[..name.len() - tag.len() - 1], Some(tag)),
        None => (name, None),
    };
    if let Some(tag) = tag {
        let ok = (1..=128).contains(&tag.len())
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return bad(
                "the tag must be 1 to 128 letters, digits, `.`, `_` or `-`, not first `.` or `-`",
            );
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost")
    {
        let (host, port) = match components[0].split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (components[0], None),
        };
        let host_ok = host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !host_ok {
            return bad("the registry's host must be letters, digits, `.` and `-`");
        }
        if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
            return bad("the registry's port must be a number");
        }
        components.remove(0);
    }
    if !components.iter().all(|c| path_component(c)) {
        return bad(
            "each part of the name must be lowercase letters and digits, joined by `.`, `_`, \
             `__` or `-`",
        );
    }
    Ok(())
}

/// A repository path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
fn path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Every run of separators is one of the allowed ones.
    c.split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        .filter(|run| !run.is_empty())
        .all(|run| matches!(run, "." | "_" | "__") || run.bytes().all(|b| b == b'-'))
        && c.bytes().all(|b| alnum(b) || b"._-".contains(&b))
}

/// Every document of `files`, parsed (empty ones dropped).
fn documents(files: &[(&str, &str)]) -> Result<Vec<Value>, ManifestsError> {
    let mut docs = Vec::new();
    for (file, text) in files {
        for doc in yaml_serde::Deserializer::from_str(text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| ManifestsError(format!("{file} (compiled in): {e}")))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    Ok(docs)
}

/// The DaemonSet among `docs`.
fn daemonset(docs: &mut [Value]) -> Result<&mut Value, ManifestsError> {
    docs.iter_mut()
        .find(|d| d["kind"] == "DaemonSet")
        .ok_or_else(|| ManifestsError("deploy/daemonset.yaml has no DaemonSet".into()))
}

/// The DaemonSet's container named `wormhole`.
fn agent_container(ds: &mut Value) -> Result<&mut Mapping, ManifestsError> {
    mapping_at(ds, &["spec", "template", "spec"])?
        .get_mut("containers")
        .and_then(Value::as_sequence_mut)
        .and_then(|list| list.iter_mut().find(|c| c["name"] == "wormhole"))
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| ManifestsError("deploy/daemonset.yaml has no container `wormhole`".into()))
}

/// The mapping at `path` under `value`, made (empty) where missing.
fn mapping_at<'a>(value: &'a mut Value, path: &[&str]) -> Result<&'a mut Mapping, ManifestsError> {
    let mut at = value;
    for key in path {
        let map = at
            .as_mapping_mut()
            .ok_or_else(|| ManifestsError(format!("{key}: its parent is not a mapping")))?;
        at = map
            .entry((*key).into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if at.is_null() {
            *at = Value::Mapping(Mapping::new());
        }
    }
    at.as_mapping_mut()
        .ok_or_else(|| ManifestsError(format!("{}: not a mapping", path.join("."))))
}

/// Sets `path` (its last key in the mapping at the rest) to `new`.
fn set(value: &mut Value, path: &[&str], new: Value) -> Result<(), ManifestsError> {
    let (last, parent) = path.split_last().expect("a path");
    mapping_at(value, parent)?.insert((*last).into(), new);
    Ok(())
}

/// Sets the container's env variable `name` to `value`, replacing one of that name.
fn set_env(container: &mut Mapping, name: &str, value: &str) -> Result<(), ManifestsError> {
    let env = container
        .entry("env".into())
        .or_insert_with(|| Value::Sequence(Vec::new()))
        .as_sequence_mut()
        .ok_or_else(|| ManifestsError("the container's env is not a list".into()))?;
    env.retain(|e| e["name"] != name);
    let mut entry = Mapping::new();
    entry.insert("name".into(), name.into());
    entry.insert("value".into(), value.into());
    env.push(Value::Mapping(entry));
    Ok(())
}

/// The dashboard as a ConfigMap for Grafana's dashboard sidecar.
fn dashboard_config_map() -> Result<Value, ManifestsError> {
    let mut map = yaml(
        "{apiVersion: v1, kind: ConfigMap, metadata: {name: wormhole-dashboard, namespace: \
         wormhole, labels: {grafana_dashboard: \"1\", app.kubernetes.io/name: wormhole}}}",
    )?;
    set(&mut map, &["data", "wormhole.json"], Value::from(DASHBOARD))?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// `wormhole manifests ARGS`, parsed as the binary does.
    fn args(list: &[&str]) -> Result<ManifestsArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ManifestsArgs,
        }
        Cli::try_parse_from(std::iter::once("manifests").chain(list.iter().copied()))
            .map(|c| c.args)
    }

    fn render(list: &[&str]) -> Vec<Value> {
        let text = args(list).unwrap().render().unwrap();
        yaml_serde::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect()
    }

    const IMAGE: &str = "registry.example.com/wormhole:0.1.0";
    /// The image `deploy/daemonset.yaml` names: what `scripts/image.sh` tags, in no registry
    /// (`--image` replaces it).
    const SHIPPED_IMAGE: &str = concat!("wormhole:", env!("CARGO_PKG_VERSION"));

    fn kinds(docs: &[Value]) -> Vec<&str> {
        docs.iter().map(|d| d["kind"].as_str().unwrap()).collect()
    }

    fn env(docs: &[Value]) -> Vec<(String, String)> {
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        ds["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
            .collect()
    }

    #[test]
    fn the_default_install_is_deploy_in_apply_order() {
        let docs = render(&["--image", IMAGE]);
        let kinds = kinds(&docs);
        assert_eq!(kinds.first(), Some(&"Namespace"));
        assert_eq!(kinds.last(), Some(&"DaemonSet"));
        let crd = kinds
            .iter()
            .position(|k| *k == "CustomResourceDefinition")
            .unwrap();
        let policy = kinds
            .iter()
            .position(|k| *k == "ValidatingAdmissionPolicy")
            .unwrap();
        assert!(crd < policy, "{kinds:?}");
        // Every document of deploy/ (but monitoring/) is there, unchanged but for the image
        // and the architecture.
        let mut shipped = documents(&INSTALL).unwrap();
        let ds = daemonset(&mut shipped).unwrap();
        set(ds, &ARCH_SELECTOR, "amd64".into()).unwrap();
        let container = agent_container(ds).unwrap();
        assert_eq!(container["image"], SHIPPED_IMAGE);
        container.insert("image".into(), IMAGE.into());
        assert_eq!(docs, shipped);
        assert!(!env(&docs).iter().any(|(n, _)| n == "WORMHOLE_PSK_SECRET"));
    }

    #[test]
    fn options_reach_the_agent_container() {
        let docs = render(&[
            "--image",
            "registry.example.com:5000/net/wormhole@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--psk",
            "--external-cidr",
            "10.98.0.0/24",
            "--backend",
            "userspace",
            "--metrics-allow",
            "10.0.0.9,10.1.0.0/16",
        ]);
        let env = env(&docs);
        let get = |name: &str| {
            let all: Vec<_> = env.iter().filter(|(n, _)| n == name).collect();
            assert_eq!(all.len(), 1, "{name} once: {env:?}");
            all[0].1.clone()
        };
        assert_eq!(
            get("WORMHOLE_CLUSTER_CIDR"),
            "10.244.0.0/16,fd00:10:244::/56"
        );
        assert_eq!(get("WORMHOLE_PSK_SECRET"), PSK_SECRET);
        assert_eq!(get("WORMHOLE_EXTERNAL_CIDR"), "10.98.0.0/24");
        assert_eq!(get("WORMHOLE_BACKEND"), "userspace");
        assert_eq!(get("WORMHOLE_METRICS_ALLOW"), "10.0.0.9/32,10.1.0.0/16");
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        let pod = &ds["spec"]["template"];
        assert!(
            pod["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .ends_with("abcdef")
        );
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/port"],
            ADMIN_PORT
        );
    }

    #[test]
    fn monitoring_adds_the_pack() {
        let docs = render(&["--monitoring", "--image", IMAGE]);
        let kinds = kinds(&docs);
        for kind in ["PodMonitor", "PrometheusRule", "ConfigMap"] {
            assert!(kinds.contains(&kind), "{kinds:?}");
        }
        let map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
        let json: serde_json::Value =
            serde_json::from_str(map["data"]["wormhole.json"].as_str().unwrap()).unwrap();
        assert!(json["panels"].is_array());
    }

    #[test]
    fn the_cleanup_runs_uninstall_on_every_node_with_the_agents_host_paths() {
        let docs = render(&[
            "--uninstall",
            "--remove-keys",
            "--image",
            "r.example/w:1",
            "--arch",
            "arm64",
        ]);
        assert_eq!(kinds(&docs), ["Namespace", "DaemonSet"]);
        let ds = &docs[1];
        assert_eq!(ds["metadata"]["name"], "wormhole-uninstall");
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["automountServiceAccountToken"], false);
        let init = &spec["initContainers"][0];
        assert_eq!(
            init["args"],
            yaml_serde::from_str::<Value>("[uninstall, --remove-keys]").unwrap()
        );
        assert_eq!(init["image"], "r.example/w:1");
        assert_eq!(spec["containers"][0]["args"][0], "idle");
        let mounts: Vec<&str> = init["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        // The parents of the agent's state, leases and UAPI sockets, and the conflists.
        assert_eq!(mounts, ["/var/lib", "/run", "/etc/cni/net.d"]);
        let volumes: Vec<(&str, &str)> = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["hostPath"]["path"].as_str().unwrap(),
                    v["hostPath"]["type"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            volumes,
            [
                ("/var/lib", "Directory"),
                ("/run", "Directory"),
                ("/etc/cni/net.d", "DirectoryOrCreate")
            ]
        );
        assert_eq!(spec["nodeSelector"]["kubernetes.io/arch"], "arm64");
        // Its selector cannot adopt the agent's pods.
        assert_eq!(
            ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            "wormhole-uninstall"
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_and_the_fix() {
        for image in [
            "",
            "wormhole:1\nkind: Secret",
            "wormhole@sha256:abc",
            "wormhole:",
            "/wormhole",
            "registry//wormhole",
            "wormhole:-x",
            "Registry.Example.com/Wormhole:1",
            "wor+mhole:1",
            "localhost:abc/w:1",
            "a__b/c..d",
            "a___b",
            "w@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let err = args(&["--image", image])
                .unwrap()
                .render()
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--image "), "{image:?}: {err}");
            assert!(err.contains("give the image reference"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        for ok in [
            "wormhole:0.1.0",
            "localhost:5000/wormhole",
            "Registry.Example.com:5000/net/worm-hole__x.y:v1.0_rc-1",
            "a.b/c/d:e_1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            check_image(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // The image is required: the shipped `wormhole:VERSION` is in no registry.
        assert!(args(&[]).is_err());
        for bad in [
            &["--cluster-cidr", "10.0.0.0/33"][..],
            &["--cluster-cidr", "10.244.0.1/16"],
            &["--external-cidr", "10.98.0.5/24"],
            &["--remove-keys"],
            &["--uninstall", "--monitoring"],
            &["--uninstall", "--psk"],
            &["--uninstall", "--backend", "kernel"],
        ] {
            let mut list = vec!["--image", IMAGE];
            list.extend_from_slice(bad);
            assert!(args(&list).is_err(), "{bad:?}");
        }
        let overlap = args(&[
            "--image",
            IMAGE,
            "--cluster-cidr",
            "10.0.0.0/8",
            "--external-cidr",
            "10.98.0.0/24",
        ])
        .unwrap()
        .render()
        .unwrap_err()
        .to_string();
        assert!(
            overlap.contains("overlaps --cluster-cidr 10.0.0.0/8"),
            "{overlap}"
        );
    }
}
