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
/// MTU black holes): `cargo test -p wormhole-daemon --bin wormhole -- --ignored --nocapture
/// five_thousand`. Prints each renderer's time and output size.
#[cfg(test)]
mod scale {
    use super::tests::cluster;
    use std::time::Instant;

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
    }
}
