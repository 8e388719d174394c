//! `wormhole graph`: the [`ClusterView`] as a picture, SVG ([`svg`]) or Graphviz DOT ([`dot`]).
//! What both draw: a node per cluster node with its pod CIDRs, and an edge per pair of nodes
//! coloured by the worse of its two directions, labelled with the cause when broken.

pub mod dot;
pub mod svg;

use wormhole_agent::{Cell, ClusterView, Health};

/// The colour of a class (Material palette, told apart by hue and, for edges, by dash too).
pub fn colour(health: Health) -> &'static str {
    match health {
        Health::Ok => "#2e7d32",
        Health::Unknown => "#9e9e9e",
        Health::Lossy => "#f9a825",
        Health::MtuBlackhole => "#8e24aa",
        Health::Stale => "#795548",
        Health::Unreachable => "#d32f2f",
        Health::Never => "#ef6c00",
        Health::Rejected => "#212121",
        Health::Other => "#c2185b",
    }
}

/// What a picture must say besides its nodes and pairs: the sources not read and the peers
/// named but not asked for (not escaped: each is, where it is drawn).
pub fn notes(cluster: &ClusterView) -> Vec<String> {
    cluster
        .unreadable
        .iter()
        .map(|why| format!("not read: {why}"))
        .chain(crate::matrix::not_asked(cluster).map(|n| n.trim().to_owned()))
        .collect()
}

/// An undirected pair of nodes as drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The ends (indices into the view's nodes), `a < b`.
    pub a: usize,
    /// See `a`.
    pub b: usize,
    /// The worse of the two directions.
    pub health: Health,
    /// For a broken pair: the cause, with its direction when only one side reports it or the
    /// two sides differ (`a -> b: lossy`).
    pub label: Option<String>,
}

/// Every pair `a < b` with the worse of its two directions (n²/2 pairs: for the circular
/// layout's ≤ 50 nodes).
pub fn edges(cluster: &ClusterView) -> Vec<Edge> {
    let n = cluster.nodes.len();
    let mut out = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for a in 0..n {
        for b in a + 1..n {
            out.push(edge(cluster, a, b));
        }
    }
    out
}

/// The pair `a < b` as drawn.
pub fn edge(cluster: &ClusterView, a: usize, b: usize) -> Edge {
    let (ab, ba) = (cluster.cell(a, b), cluster.cell(b, a));
    let health = ab.health().max(ba.health());
    let state = |cell: Cell<'_>| match cell {
        Cell::Problem(state) if Health::of(state).is_broken() => Some(state.to_owned()),
        _ => None,
    };
    let (name_a, name_b) = (&cluster.nodes[a].name, &cluster.nodes[b].name);
    let label = match (state(ab), state(ba)) {
        (Some(x), Some(y)) if x == y => Some(x),
        (Some(x), Some(y)) => Some(format!("{name_a} -> {name_b}: {x}; back: {y}")),
        (Some(x), None) => Some(format!("{name_a} -> {name_b}: {x}")),
        (None, Some(y)) => Some(format!("{name_b} -> {name_a}: {y}")),
        (None, None) => None,
    };
    Edge {
        a,
        b,
        health,
        label,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::matrix::tests::cluster;

    #[test]
    fn an_edge_is_the_worse_direction_labelled_with_its_cause() {
        let c = cluster(
            &["a", "b", "c"],
            &[
                ("a", "b", "mtu-blackhole (max 1344)"),
                ("b", "a", "mtu-blackhole (max 1344)"),
                ("a", "c", "lossy"),
                ("c", "a", "unreachable"),
            ],
        );
        let e = edges(&c);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].health, Health::MtuBlackhole);
        assert_eq!(e[0].label.as_deref(), Some("mtu-blackhole (max 1344)"));
        assert_eq!(e[1].health, Health::Unreachable);
        assert_eq!(
            e[1].label.as_deref(),
            Some("a -> c: lossy; back: unreachable")
        );
        assert_eq!((e[2].health, e[2].label.as_deref()), (Health::Ok, None));
    }
}

/// What the cluster views cost at 5,000 nodes (one node unreachable from every other, a few
/// MTU black holes), and at 15,000: `cargo test -p wormhole-daemon --bin wormhole -- --ignored
/// --nocapture five_thousand`. Prints each renderer's time and output size.
#[cfg(test)]
mod scale {
    use super::tests::cluster;
    use std::time::{Duration, Instant};
    use wormhole_agent::{ClusterNode, ClusterView};

    /// `n` nodes whose reports count their `ok` peers (as WormholeNodes do), one problem
    /// each, and a few nodes without a report. Built from JSON: no n² in the building either.
    fn counted(n: usize) -> ClusterView {
        let nodes = (0..n)
            .map(|i| {
                let report = (i % 97 != 5).then(|| {
                    serde_json::json!({
                        "ok": n - 2,
                        "problems": {format!("node-{:05}", (i * 7 + 1) % n): "lossy (3 %)"},
                    })
                });
                serde_json::from_value::<ClusterNode>(serde_json::json!({
                    "name": format!("node-{i:05}"),
                    "pod_cidrs": [format!("10.{}.{}.0/24", i / 256, i % 256)],
                    "member": true,
                    "report": report,
                }))
                .unwrap()
            })
            .collect();
        ClusterView::new(nodes, Vec::new())
    }

    /// How many times more `big` costs than `small` (each returns the time of what it
    /// measures): the best of five rounds each, taken in turns. `small` does its work as many
    /// times over as `big` has more input, so that both take about as long (and a busy machine
    /// slows both alike): linear is about 1, quadratic the size ratio.
    fn cost_ratio(small: &dyn Fn() -> Duration, big: &dyn Fn() -> Duration) -> f64 {
        let (mut t_small, mut t_big) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            t_small = t_small.min(small());
            t_big = t_big.min(big());
        }
        t_big.as_secs_f64() / t_small.as_secs_f64()
    }

    /// The time `f` takes.
    fn timed(f: impl FnOnce()) -> Duration {
        let started = Instant::now();
        f();
        started.elapsed()
    }

    /// `status --cluster`, `graph` (the heat map) and `graph -o dot` cost about eight times as
    /// much for eight times the nodes (n²: 64 times), so about as much as the small view drawn
    /// eight times. Compared by cost ratio, not by time, so that a slow or busy machine does
    /// not fail it.
    #[test]
    fn every_view_is_linear_in_the_nodes() {
        let (small, big) = (counted(1_000), counted(8_000));
        for (what, view) in [
            (
                "status --cluster",
                &crate::matrix::render as &dyn Fn(&ClusterView) -> String,
            ),
            ("graph", &super::svg::render),
            ("graph -o dot", &super::dot::render),
        ] {
            let ratio = cost_ratio(
                &|| {
                    timed(|| {
                        for _ in 0..8 {
                            assert!(!view(&small).is_empty());
                        }
                    })
                },
                &|| timed(|| assert!(!view(&big).is_empty())),
            );
            assert!(
                ratio < 4.0,
                "{what}: 8x the nodes cost {:.1}x as much",
                ratio * 8.0
            );
        }
    }

    #[test]
    #[ignore = "a measurement"]
    fn five_thousand_nodes() {
        let names: Vec<String> = (0..5000).map(|i| format!("node-{i:04}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut problems: Vec<(&str, &str, &str)> = Vec::new();
        for other in &refs[1..] {
            problems.push(("node-0000", *other, "unreachable"));
            problems.push((*other, "node-0000", "unreachable"));
        }
        for i in 1..20 {
            problems.push((refs[i], refs[i + 100], "mtu-blackhole (max 1380)"));
        }
        let c = cluster(&refs, &problems);
        let time = |what: &str, f: &dyn Fn() -> usize| {
            let start = Instant::now();
            let size = f();
            eprintln!(
                "{what}: {:.2} s, {size} bytes",
                start.elapsed().as_secs_f64()
            );
        };
        time("summary", &|| {
            let s = c.summary();
            assert_eq!(s.broken, 2 * 4999 + 19);
            0
        });
        time("status --cluster (text)", &|| {
            crate::matrix::render(&c).len()
        });
        time("graph (SVG heat map)", &|| super::svg::render(&c).len());
        time("graph -o dot", &|| super::dot::render(&c).len());
        // 15,000 nodes whose reports count their peers (as WormholeNodes do).
        let c = counted(15_000);
        time("15,000 nodes: status --cluster (text)", &|| {
            crate::matrix::render(&c).len()
        });
        time("15,000 nodes: graph (SVG heat map)", &|| {
            super::svg::render(&c).len()
        });
        time("15,000 nodes: graph -o dot", &|| {
            super::dot::render(&c).len()
        });
    }
}
