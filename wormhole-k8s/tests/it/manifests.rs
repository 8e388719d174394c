//! Every manifest in `deploy/` parses into k8s-openapi types, and says what the security model
//! needs it to say.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize as _;

#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    daemonsets: Vec<DaemonSet>,
    policies: Vec<ValidatingAdmissionPolicy>,
    policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
    crds: Vec<CustomResourceDefinition>,
}

fn load() -> Manifests {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let mut m = Manifests::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        // deploy/monitoring/ (the prometheus-operator's kinds) is checked by wormhole-agent.
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let value = yaml_serde::Value::deserialize(doc).unwrap();
            if value.is_null() {
                continue;
            }
            let kind = value["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file:?}: a document without kind"));
            macro_rules! push {
                ($list:ident) => {
                    m.$list.push(
                        yaml_serde::from_value(value.clone())
                            .unwrap_or_else(|e| panic!("{file:?} {kind}: {e}")),
                    )
                };
            }
            match kind {
                "Namespace" => push!(namespaces),
                "ServiceAccount" => push!(service_accounts),
                "ClusterRole" => push!(cluster_roles),
                "ClusterRoleBinding" => push!(cluster_role_bindings),
                "Role" => push!(roles),
                "RoleBinding" => push!(role_bindings),
                "DaemonSet" => push!(daemonsets),
                "ValidatingAdmissionPolicy" => push!(policies),
                "ValidatingAdmissionPolicyBinding" => push!(policy_bindings),
                "CustomResourceDefinition" => push!(crds),
                other => panic!("{file:?}: unexpected kind {other}"),
            }
        }
    }
    m
}

#[test]
fn every_manifest_parses_and_each_kind_is_there() {
    let m = load();
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(m.cluster_role_bindings.len(), 1);
    assert_eq!(m.daemonsets.len(), 1);
    assert_eq!(m.policies.len(), 1);
    assert_eq!(m.policy_bindings.len(), 1);
    let crds: Vec<_> = m
        .crds
        .iter()
        .map(|c| c.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(
        crds,
        ["wormholenodes.wormhole.dev", "wormholepeers.wormhole.dev"]
    );
}

#[test]
fn rbac_reads_nodes_never_writes_them_and_gets_one_secret() {
    let m = load();
    let rules = m.cluster_roles[0].rules.clone().unwrap();
    let nodes = rules
        .iter()
        .find(|r| r.resources.as_deref() == Some(&["nodes".to_owned()][..]))
        .unwrap();
    assert_eq!(nodes.verbs, ["get", "list", "watch"]);
    for rule in &rules {
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "secrets"),
            "no Secret access cluster-wide"
        );
        assert!(!rule.verbs.iter().any(|v| v == "*"), "no wildcard verbs");
    }
    let psk = m
        .roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("wormhole-psk"))
        .unwrap();
    let rule = &psk.rules.as_ref().unwrap()[0];
    assert_eq!(rule.verbs, ["get"]);
    assert_eq!(
        rule.resource_names.as_deref(),
        Some(&["wormhole-psk".to_owned()][..])
    );
    let binding = &m.cluster_role_bindings[0].subjects.as_ref().unwrap()[0];
    assert_eq!(
        (binding.name.as_str(), binding.namespace.as_deref()),
        ("wormhole", Some("wormhole"))
    );
}

#[test]
fn rbac_has_no_unused_verbs_and_events_only_in_default() {
    let m = load();
    let cluster_rules = m.cluster_roles[0].rules.clone().unwrap();
    let all_rules = cluster_rules
        .iter()
        .chain(m.roles.iter().flat_map(|r| r.rules.iter().flatten()));
    for rule in all_rules {
        // Every write is a server-side apply (patch); nothing replaces an object (update).
        assert!(
            !rule.verbs.iter().any(|v| v == "update"),
            "unused verb update: {rule:?}"
        );
    }
    let wormholenodes = |resource: &str| {
        cluster_rules
            .iter()
            .find(|r| r.resources.as_deref() == Some(&[resource.to_owned()][..]))
            .unwrap_or_else(|| panic!("no rule for {resource}"))
            .verbs
            .clone()
    };
    assert_eq!(wormholenodes("wormholenodes/status"), ["patch"]);
    // Delete on WormholeNodes only (a key rotation re-creates the agent's own), nothing else.
    assert_eq!(
        wormholenodes("wormholenodes"),
        ["get", "list", "watch", "create", "patch", "delete"]
    );
    // WormholePeers are written by admins only: an agent reads them and nothing more (no
    // status either), so a compromised node cannot let a machine of its own into the mesh.
    assert_eq!(wormholenodes("wormholepeers"), ["get", "list", "watch"]);
    for rule in cluster_rules
        .iter()
        .chain(m.roles.iter().flat_map(|r| r.rules.iter().flatten()))
    {
        if rule
            .resources
            .iter()
            .flatten()
            .any(|r| r.starts_with("wormholepeers"))
        {
            assert_eq!(
                rule.resources.as_deref(),
                Some(&["wormholepeers".to_owned()][..]),
                "no WormholePeer subresource for agents: {rule:?}"
            );
            assert!(
                rule.verbs
                    .iter()
                    .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                "an agent may only read WormholePeers: {rule:?}"
            );
        }
        if rule.verbs.iter().any(|v| v == "delete") {
            assert_eq!(
                rule.resources.as_deref(),
                Some(&["wormholenodes".to_owned()][..]),
                "delete on anything but wormholenodes: {rule:?}"
            );
        }
    }
    // Events: never cluster-wide. The agent's Events are about its Node, a cluster-scoped
    // object, and kube puts those in `default`.
    assert!(
        !cluster_rules
            .iter()
            .any(|r| r.resources.iter().flatten().any(|r| r == "events")),
        "Events may be created in every namespace"
    );
    let events: Vec<_> = m
        .roles
        .iter()
        .filter(|r| {
            r.rules
                .iter()
                .flatten()
                .any(|r| r.resources.iter().flatten().any(|r| r == "events"))
        })
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata.namespace.as_deref(), Some("default"));
    let rule = &events[0].rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&["events.k8s.io".to_owned()][..])
    );
    assert_eq!(rule.verbs, ["create", "patch"]);
    let name = events[0].metadata.name.clone().unwrap();
    let bound = m.role_bindings.iter().any(|b| {
        b.role_ref.name == name
            && b.metadata.namespace.as_deref() == Some("default")
            && b.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == "wormhole"
                    && s.namespace.as_deref() == Some("wormhole")
            })
    });
    assert!(
        bound,
        "the events Role is bound to the agent's service account"
    );
}

#[test]
fn the_daemonset_is_host_network_with_only_net_admin_and_net_raw() {
    let m = load();
    let pod = m.daemonsets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("wormhole"));
    assert!(
        pod.tolerations
            .unwrap()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
    let c = &pod.containers[0];
    let security = c.security_context.as_ref().unwrap();
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let caps = security.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_owned(), "NET_RAW".to_owned()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&c.liveness_probe), "/healthz");
    assert_eq!(probe_path(&c.readiness_probe), "/readyz");
    let env = c.env.as_ref().unwrap();
    let node_name = env.iter().find(|e| e.name == "WORMHOLE_NODE_NAME").unwrap();
    let field = node_name
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    assert!(
        c.args
            .as_ref()
            .unwrap()
            .contains(&"--kubernetes".to_owned())
    );
    // The host paths mounted writable are exactly those the agent writes: its conflist, its
    // key and state, its UAPI socket, the network sysctls (forwarding; the container's
    // /proc/sys is read-only, and WORMHOLE_PROC_SYS_NET names where they are); and the TUN
    // device. Nothing it only reads is writable: the CNI plugins in /opt/cni/bin, which its
    // preflight looks for, are mounted read-only.
    let volumes = pod.volumes.unwrap();
    let mounts = c.volume_mounts.as_ref().unwrap();
    let mut writable: Vec<String> = mounts
        .iter()
        .filter(|m| m.read_only != Some(true))
        .filter_map(|m| {
            let volume = volumes.iter().find(|v| v.name == m.name).unwrap();
            volume.host_path.as_ref().map(|h| h.path.clone())
        })
        .collect();
    writable.sort();
    assert_eq!(
        writable,
        [
            "/dev/net/tun",
            "/etc/cni/net.d",
            "/proc/sys/net",
            "/run/wireguard",
            "/var/lib/wormhole"
        ]
    );
    let sysctls = mounts
        .iter()
        .find(|m| {
            volumes.iter().any(|v| {
                v.name == m.name
                    && v.host_path.as_ref().map(|h| h.path.as_str()) == Some("/proc/sys/net")
            })
        })
        .unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value("WORMHOLE_PROC_SYS_NET").as_deref(),
        Some(sysctls.mount_path.as_str())
    );
    let plugins = mounts
        .iter()
        .find(|m| m.mount_path == "/opt/cni/bin")
        .unwrap();
    assert_eq!(plugins.read_only, Some(true));
    for volume in &volumes {
        assert!(
            mounts.iter().any(|m| m.name == volume.name),
            "volume {} is never mounted",
            volume.name
        );
    }
    let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert!(requests.contains_key("memory") && requests.contains_key("cpu"));
}

/// Issue 22: the docs call the PSK Secret optional, so the shipped DaemonSet must not need
/// it (an agent given --psk-secret for a Secret that does not exist never becomes ready).
/// Pre-shared keys are turned on by setting WORMHOLE_PSK_SECRET, as its comment says.
#[test]
fn the_daemonset_runs_without_the_optional_psk_secret() {
    let m = load();
    let c = &m.daemonsets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert!(
        !args.iter().any(|a| a.starts_with("--psk-secret")),
        "the default DaemonSet passes {args:?}: without the Secret no node becomes ready"
    );
    let env = c.env.clone().unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.name == "WORMHOLE_PSK_SECRET"),
        "the default DaemonSet sets WORMHOLE_PSK_SECRET"
    );
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/daemonset.yaml"
    ))
    .unwrap();
    assert!(
        text.contains("# - name: WORMHOLE_PSK_SECRET\n            #   value: wormhole-psk"),
        "the DaemonSet shows how to turn pre-shared keys on"
    );
}

#[test]
fn the_admission_policy_binds_writes_to_the_token_node() {
    let m = load();
    let policy = m.policies[0].spec.as_ref().unwrap();
    let rules = policy
        .match_constraints
        .as_ref()
        .unwrap()
        .resource_rules
        .as_ref()
        .unwrap();
    let resources = rules[0].resources.as_ref().unwrap();
    assert!(
        resources.contains(&"wormholenodes".to_owned())
            && resources.contains(&"wormholenodes/status".to_owned())
    );
    let checks: Vec<&str> = policy
        .validations
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.expression.as_str())
        .collect();
    assert!(
        checks[0].contains("authentication.kubernetes.io/node-name")
            && checks[0].contains("request.name")
    );
    assert!(checks[1].contains("ownerReferences"));
    let binding = m.policy_bindings[0].spec.as_ref().unwrap();
    assert_eq!(binding.policy_name, m.policies[0].metadata.name.clone());
    assert_eq!(
        binding.validation_actions.as_deref(),
        Some(&["Deny".to_owned()][..])
    );
    // The binding's scope is explicit: the same resources, no parameters, no selector.
    assert!(binding.param_ref.is_none());
    let scope = binding.match_resources.as_ref().expect("matchResources");
    assert_eq!(scope.resource_rules.as_ref(), Some(rules));
    assert!(scope.namespace_selector.is_none() && scope.object_selector.is_none());
}

/// What the API server decides for one write to a WormholeNode under the policy, evaluated
/// with a CEL interpreter: `None` if the policy does not apply (its matchConditions), else
/// whether every validation holds.
fn admits(m: &Manifests, request: &serde_json::Value, object: &serde_json::Value) -> Option<bool> {
    let policy = m.policies[0].spec.as_ref().unwrap();
    let eval = |expression: &str| {
        let program =
            cel::Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
        let mut context = cel::Context::default();
        context.add_variable_from_value("request", cel::to_value(request).unwrap());
        context.add_variable_from_value("object", cel::to_value(object).unwrap());
        match program.execute(&context) {
            Ok(cel::Value::Bool(b)) => b,
            other => panic!("{expression}: {other:?}"),
        }
    };
    let matched = policy
        .match_conditions
        .iter()
        .flatten()
        .all(|c| eval(&c.expression));
    matched.then(|| {
        policy
            .validations
            .iter()
            .flatten()
            .all(|v| eval(&v.expression))
    })
}

/// A write by `user` (bound to `node`, if any) to the WormholeNode `name`, owned by Node `owner`.
fn write(
    operation: &str,
    user: &str,
    node: Option<&str>,
    name: &str,
    owner: &str,
) -> (serde_json::Value, serde_json::Value) {
    let mut user_info = serde_json::json!({"username": user});
    if let Some(node) = node {
        user_info["extra"] = serde_json::json!({
            "authentication.kubernetes.io/node-name": [node],
            "authentication.kubernetes.io/pod-name": ["wormhole-x7k2p"],
        });
    }
    let request = serde_json::json!({
        "operation": operation, "name": name, "subResource": "", "userInfo": user_info,
    });
    let object = if operation == "DELETE" {
        serde_json::Value::Null
    } else {
        serde_json::json!({"metadata": {"name": name, "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": owner, "uid": "u"}]}})
    };
    (request, object)
}

/// Issue 9 item 18: the policy must not depend on the agent's namespace or account name.
#[test]
fn the_admission_policy_holds_the_agent_wherever_it_is_installed() {
    let m = load();
    let decide = |operation, user, node, name, owner| {
        let (request, object) = write(operation, user, node, name, owner);
        admits(&m, &request, &object)
    };
    for agent in [
        "system:serviceaccount:wormhole:wormhole",
        // Renamed namespace, renamed account, or installed in kube-system like many CNIs.
        "system:serviceaccount:network-system:wormhole",
        "system:serviceaccount:wormhole:wormhole-agent",
        "system:serviceaccount:kube-system:wormhole",
    ] {
        for op in ["CREATE", "UPDATE"] {
            assert_eq!(
                decide(op, agent, Some("n1"), "n1", "n1"),
                Some(true),
                "{agent} {op} its own"
            );
            assert_eq!(
                decide(op, agent, Some("n1"), "n2", "n2"),
                Some(false),
                "{agent} {op} another node's WormholeNode is denied"
            );
            assert_eq!(
                decide(op, agent, Some("n1"), "n1", "n2"),
                Some(false),
                "{agent} {op} its own owned by another Node is denied"
            );
            assert_eq!(
                decide(op, agent, None, "n1", "n1"),
                Some(false),
                "{agent} {op} with a token bound to no node is denied"
            );
        }
        assert_eq!(decide("DELETE", agent, Some("n1"), "n1", "n1"), Some(true));
        assert_eq!(decide("DELETE", agent, Some("n1"), "n2", "n2"), Some(false));
    }
    // The garbage collector deletes the WormholeNode of a deleted Node; people and components
    // that are not service accounts are left to RBAC.
    for user in [
        "system:serviceaccount:kube-system:generic-garbage-collector",
        "system:kube-controller-manager",
        "kubernetes-admin",
    ] {
        assert_eq!(decide("DELETE", user, None, "n2", "n2"), None, "{user}");
        assert_eq!(decide("CREATE", user, None, "n2", "n2"), None, "{user}");
    }
}
