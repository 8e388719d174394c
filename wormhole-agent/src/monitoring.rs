//! Tests of the monitoring pack, `deploy/monitoring/`: the PodMonitor and the PrometheusRule
//! against the prometheus-operator's own CRD schemas (`testdata/prometheus-operator/`), every
//! PromQL expression of the rules and of the Grafana dashboard through a PromQL parser
//! (`promql-parser`), and every metric, label and label value they select against what
//! [`Metrics`] renders, so that the pack cannot drift from the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, LabelModifier, VectorSelector};
use serde_json::Value;
use wormhole_core::{PeerStatus, PrivateKey, ProbeReport, RejectReason, Rejection, Status};

use crate::metrics::{Metrics, PeerMetrics};

const PACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/monitoring");
const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/prometheus-operator");

/// Labels Prometheus adds to every series it scrapes (`node`: podmonitor.yaml's relabeling),
/// and `le` of the histograms' buckets.
const TARGET_LABELS: [&str; 8] = [
    "node",
    "instance",
    "job",
    "namespace",
    "pod",
    "container",
    "endpoint",
    "le",
];

/// One sample of the exposition text: its name and labels.
type Sample = (String, BTreeMap<String, String>);

/// Every sample the agent can render: every state, node and external peers with all
/// per-peer series, a rejected entry, an error, a firewall drop, a refused admin connection.
fn rendered() -> Vec<Sample> {
    let now = SystemTime::now();
    let mut peers = Vec::new();
    for (i, state) in wormhole_core::PeerState::LABELS.iter().enumerate() {
        let mut p = PeerStatus::new(format!("n{i}"), PrivateKey::generate().public_key());
        let mut probe = ProbeReport::default();
        probe.sent = 20;
        probe.smoothed_rtt = Some(Duration::from_millis(1));
        probe.path_mtu = Some(1420);
        p.latest_handshake = match *state {
            "never" => None,
            "stale" => Some(now - Duration::from_secs(600)),
            _ => Some(now - Duration::from_secs(1)),
        };
        match *state {
            "unreachable" => probe.lost_in_a_row = 5,
            "mtu-blackhole" => probe.mtu_blackhole = true,
            "lossy" => probe.lost = 5,
            _ => {}
        }
        p.probe = Some(probe);
        assert_eq!(p.state(now).as_str(), *state);
        peers.push(p);
    }
    let mut laptop = PeerStatus::new("laptop", PrivateKey::generate().public_key());
    laptop.external = true;
    peers.push(laptop);
    let mut status = Status::default();
    status.mtu = 1420;
    status.peers = peers;
    status.rejected = vec![Rejection {
        name: "bad".into(),
        origin: "test".into(),
        reason: RejectReason::BadName,
        external: false,
    }];
    status.errors_by_kind = [("wireguard".to_owned(), 1)].into();
    status.firewall_drops = [("no_cleartext".to_owned(), 1)].into();
    let metrics = Metrics::new(PeerMetrics::All);
    metrics.observe_pass(Duration::from_millis(1));
    metrics.refused_admin_connection("other");
    parse_exposition(&metrics.render(&status, now))
}

/// The samples of an exposition text (no label value here holds a `"`, `,` or `}`).
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let series = &line[..line.rfind(' ').expect("a value")];
            let Some((name, labels)) = series.split_once('{') else {
                return (series.to_owned(), BTreeMap::new());
            };
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels)
        })
        .collect()
}

/// Every vector selector of `expr`, and the labels of its `by`/`without` clauses.
fn walk<'e>(expr: &'e Expr, selectors: &mut Vec<&'e VectorSelector>, grouping: &mut Vec<String>) {
    match expr {
        Expr::Aggregate(a) => {
            if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) = &a.modifier {
                grouping.extend(l.labels.iter().cloned());
            }
            walk(&a.expr, selectors, grouping);
            if let Some(param) = &a.param {
                walk(param, selectors, grouping);
            }
        }
        Expr::Unary(u) => walk(&u.expr, selectors, grouping),
        Expr::Binary(b) => {
            walk(&b.lhs, selectors, grouping);
            walk(&b.rhs, selectors, grouping);
        }
        Expr::Paren(p) => walk(&p.expr, selectors, grouping),
        Expr::Subquery(s) => walk(&s.expr, selectors, grouping),
        Expr::VectorSelector(v) => selectors.push(v),
        Expr::MatrixSelector(m) => selectors.push(&m.vs),
        Expr::Call(c) => {
            for arg in &c.args.args {
                walk(arg, selectors, grouping);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses `expr` (from `origin`) and checks that every metric it selects is rendered, with a
/// sample that every matcher on the agent's own labels accepts, and that every label it
/// matches or groups by is one the agent or Prometheus gives.
fn check_expr(origin: &str, expr: &str, samples: &[Sample]) -> BTreeSet<String> {
    let parsed = promql_parser::parser::parse(expr)
        .unwrap_or_else(|e| panic!("{origin}: {expr:?} does not parse: {e}"));
    let (mut selectors, mut grouping) = (Vec::new(), Vec::new());
    walk(&parsed, &mut selectors, &mut grouping);
    assert!(!selectors.is_empty(), "{origin}: {expr:?} reads no metric");
    let mut names = BTreeSet::new();
    let mut known_labels: BTreeSet<String> = TARGET_LABELS.map(String::from).into();
    for selector in selectors {
        let name = selector
            .name
            .clone()
            .unwrap_or_else(|| panic!("{origin}: {expr:?}: a selector without a metric name"));
        let of_metric: Vec<&Sample> = samples.iter().filter(|(n, _)| *n == name).collect();
        assert!(
            !of_metric.is_empty(),
            "{origin}: {expr:?} reads {name}, which the agent does not render"
        );
        let own: Vec<_> = selector
            .matchers
            .matchers
            .iter()
            .filter(|m| !TARGET_LABELS.contains(&m.name.as_str()))
            .collect();
        for m in &own {
            assert!(
                of_metric.iter().any(|(_, l)| l.contains_key(&m.name)),
                "{origin}: {expr:?}: {name} has no label {:?}",
                m.name
            );
        }
        assert!(
            of_metric.iter().any(|(_, labels)| own
                .iter()
                .all(|m| m.is_match(labels.get(&m.name).map_or("", String::as_str)))),
            "{origin}: {expr:?}: no {name} sample the agent renders matches {}",
            selector.matchers
        );
        // Positive matchers only: a negative one matches what is not there.
        for m in own.iter().filter(|m| matches!(m.op, MatchOp::Equal)) {
            assert!(
                !m.value.is_empty(),
                "{origin}: {expr:?}: {m} matches nothing"
            );
        }
        known_labels.extend(of_metric.iter().flat_map(|(_, l)| l.keys().cloned()));
        names.insert(name);
    }
    for label in grouping {
        assert!(
            known_labels.contains(&label),
            "{origin}: {expr:?} groups by {label:?}, a label none of its metrics has"
        );
    }
    names
}

/// `value` as JSON (YAML parsed with yaml_serde).
fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let yaml: yaml_serde::Value =
        yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Strict, as `kubectl apply --validate=strict` is: an object schema that lists its
/// properties refuses any other (unless it keeps unknown fields).
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let open = map.contains_key("additionalProperties")
                || map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if map.contains_key("properties") && !open {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(strict);
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// Checks `object` against the CRD in `crd_file`: its apiVersion and kind, and its whole body
/// against the served version's OpenAPI schema, strictly.
fn validate_against_crd(object: &Value, crd_file: &str, origin: &str) {
    let crd = yaml_file(&format!("{CRDS}/{crd_file}"));
    let group = crd["spec"]["group"].as_str().unwrap();
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
    assert_eq!(object["kind"], kind, "{origin}");
    let version = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| object["apiVersion"] == format!("{group}/{}", v["name"].as_str().unwrap()))
        .unwrap_or_else(|| {
            panic!(
                "{origin}: apiVersion {} is not served",
                object["apiVersion"]
            )
        });
    assert_eq!(version["served"], true, "{origin}");
    let mut schema = version["schema"]["openAPIV3Schema"].clone();
    strict(&mut schema);
    let validator = jsonschema::validator_for(&schema).expect("the CRD's schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{origin} is refused by {crd_file}:\n{}",
        errors.join("\n")
    );
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    assert!(
        wormhole_core::is_dns1123_subdomain(name),
        "{origin}: metadata.name {name:?}"
    );
}

#[test]
fn the_crd_check_refuses_what_the_operator_refuses() {
    // The check itself: a misspelt field, a wrong type, a missing required field.
    let good = yaml_file(&format!("{PACK}/podmonitor.yaml"));
    validate_against_crd(
        &good,
        "monitoring.coreos.com_podmonitors.yaml",
        "podmonitor.yaml",
    );
    for (change, says) in [
        (
            "/spec/podMetricsEndpoints/0/intervall",
            "Additional properties are not allowed",
        ),
        ("/spec/podMetricsEndpoints/0/interval", "does not match"),
        (
            "/spec/podMetricsEndpoints/0/relabelings/0/action",
            "is not one of",
        ),
    ] {
        let mut bad = good.clone();
        let (parent, field) = change.rsplit_once('/').unwrap();
        bad.pointer_mut(parent).unwrap()[field] = Value::String("30 seconds".into());
        let result = std::panic::catch_unwind(|| {
            validate_against_crd(&bad, "monitoring.coreos.com_podmonitors.yaml", change)
        });
        let message = *result
            .expect_err(&format!("{change} accepted"))
            .downcast::<String>()
            .unwrap();
        assert!(message.contains(says), "{change}: {message}");
    }
}

#[test]
fn the_podmonitor_fits_the_operator_and_the_daemonset() {
    let monitor = yaml_file(&format!("{PACK}/podmonitor.yaml"));
    validate_against_crd(
        &monitor,
        "monitoring.coreos.com_podmonitors.yaml",
        "podmonitor.yaml",
    );
    // It selects the DaemonSet's pods, in their namespace, by a port they name.
    let daemonset = yaml_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/daemonset.yaml"
    ));
    assert_eq!(
        monitor["metadata"]["namespace"],
        daemonset["metadata"]["namespace"]
    );
    let pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let selected = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selected.is_empty());
    for (k, v) in selected {
        assert_eq!(pod_labels.get(k), Some(v), "the pods have no label {k}={v}");
    }
    let ports: Vec<&Value> = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .map(|p| &p["name"])
        .collect();
    for endpoint in monitor["spec"]["podMetricsEndpoints"].as_array().unwrap() {
        assert!(ports.contains(&&endpoint["port"]), "{endpoint}: {ports:?}");
        assert_eq!(endpoint["path"], "/metrics");
    }
}

#[test]
fn the_alert_rules_fit_the_operator_and_read_what_the_agent_renders() {
    let rule = yaml_file(&format!("{PACK}/prometheusrule.yaml"));
    validate_against_crd(
        &rule,
        "monitoring.coreos.com_prometheusrules.yaml",
        "prometheusrule.yaml",
    );
    let samples = rendered();
    let mut alerts = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let alert = r["alert"].as_str().expect("alerting rules only");
            let expr = r["expr"].as_str().unwrap();
            check_expr(alert, expr, &samples);
            assert!(r["for"].is_string(), "{alert}: no `for`");
            assert!(r["labels"]["severity"].is_string(), "{alert}: no severity");
            for key in ["summary", "description"] {
                assert!(r["annotations"][key].is_string(), "{alert}: no {key}");
            }
            assert!(alerts.insert(alert.to_owned()), "{alert} twice");
        }
    }
    // What the monitoring pack promises: peer down, MTU black hole, no handshake, pass errors.
    for wanted in [
        "WormholePeerDown",
        "WormholeMtuBlackhole",
        "WormholeNoHandshake",
        "WormholeReconcileErrors",
    ] {
        assert!(alerts.contains(wanted), "no {wanted} in {alerts:?}");
    }
}

/// Every PromQL expression of the dashboard, with where it is: the panels' targets and the
/// `label_values(SELECTOR, LABEL)` of its variables (a Grafana function around a selector).
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            out.push((
                format!("panel {title:?}"),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"].as_str().unwrap();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {}: {query:?}", var["name"]));
        out.push((
            format!("variable {}", var["name"]),
            inner.0.trim().to_owned(),
        ));
    }
    out
}

#[test]
fn the_dashboard_queries_parse_and_read_what_the_agent_renders() {
    let path = format!("{PACK}/dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let samples = rendered();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut read = BTreeSet::new();
    for (origin, expr) in exprs {
        // Grafana's variables, as Grafana fills them in.
        let expr = expr
            .replace("$__rate_interval", "2m")
            .replace("$node", ".*");
        assert!(
            !expr.contains('$'),
            "{origin}: an unknown variable in {expr:?}"
        );
        read.extend(check_expr(&origin, &expr, &samples));
    }
    // The headline series are on it.
    for name in [
        "wormhole_peers",
        "wormhole_peer_state",
        "wormhole_ready",
        "wormhole_receive_bytes_total",
        "wormhole_reconcile_errors_total",
        "wormhole_mtu_bytes",
    ] {
        assert!(read.contains(name), "the dashboard does not show {name}");
    }
    // Every panel reads the dashboard's data source variable, has a unique id and fits the
    // 24-column grid.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{}",
            panel["title"]
        );
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
    }
}

#[test]
fn the_expression_check_catches_drift() {
    // The checks above can fail: a renamed metric, a label or a state that does not exist.
    let samples = rendered();
    for (expr, says) in [
        ("wormhole_mtu", "which the agent does not render"),
        ("wormhole_peers{state=\"mtu_blackhole\"}", "matches"),
        ("wormhole_peers{stat!=\"ok\"}", "has no label \"stat\""),
        ("sum by (peer) (wormhole_peers)", "groups by \"peer\""),
        ("sum(wormhole_peers", "does not parse"),
    ] {
        let message = *std::panic::catch_unwind(|| check_expr("test", expr, &samples))
            .expect_err(expr)
            .downcast::<String>()
            .unwrap();
        assert!(message.contains(says), "{expr}: {message}");
    }
}
