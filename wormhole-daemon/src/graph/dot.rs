//! The mesh as Graphviz DOT (`wormhole graph -o dot`), for `dot`, `circo` or `neato`, or any
//! tool that reads DOT: a node per cluster node labelled with its pod CIDRs, an edge per pair
//! coloured like the SVG's. Beyond [`ALL_EDGES_MAX_NODES`] nodes only the pairs that are not
//! `ok` are edges (a 5,000-node mesh has 12.5 million pairs).

use std::fmt::Write as _;

use wormhole_agent::{ClusterView, Health};
use wormhole_core::escape;

use super::{colour, edges};

/// Notes (sources not read, ...) under the title.
const MAX_NOTES: usize = 8;

/// The largest cluster whose `ok` pairs are edges too.
pub const ALL_EDGES_MAX_NODES: usize = 50;

/// `text` as a DOT quoted string's content: [`escape`]d (no control characters), then `\` and
/// `"` escaped (DOT reads `\n`, `\l`, `\N` in labels: a name's backslash must stay a backslash).
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in escape(text).chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The DOT text of `cluster`.
pub fn render(cluster: &ClusterView) -> String {
    let s = cluster.summary();
    let n = cluster.nodes.len();
    let mut out = String::from("graph wormhole {\n");
    // The title, then the notes (sources not read ...), one per line (the `\n` written by us,
    // after quoting).
    let notes = super::notes(cluster);
    let mut label = quoted(&format!(
        "Wormhole mesh: {} nodes; {} pairs (from -> to): {} ok, {} broken, {} unknown",
        s.nodes, s.pairs, s.ok, s.broken, s.unknown
    ));
    label.pop();
    for note in notes.iter().take(MAX_NOTES) {
        let q = quoted(note);
        label += "\\n";
        label += &q[1..q.len() - 1];
    }
    if notes.len() > MAX_NOTES {
        let _ = write!(label, "\\n... and {} more", notes.len() - MAX_NOTES);
    }
    label.push('"');
    let _ = writeln!(
        out,
        "  graph [layout=circo, overlap=false, fontname=\"sans-serif\", labelloc=t, label={label}];"
    );
    out += "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", fontname=\"sans-serif\"];\n";
    out += "  edge [fontname=\"sans-serif\", fontsize=10];\n";
    for node in &cluster.nodes {
        // A label of name and CIDRs, one per line (`\n` written by us, after quoting).
        let mut label = quoted(&node.name);
        label.pop();
        for cidr in &node.pod_cidrs {
            label += "\\n";
            let q = quoted(cidr);
            label += &q[1..q.len() - 1];
        }
        label.push('"');
        let fill = if node.report.is_some() {
            ""
        } else {
            ", fillcolor=\"#e0e0e0\", style=\"rounded,filled,dashed\""
        };
        let _ = writeln!(out, "  {} [label={label}{fill}];", quoted(&node.name));
    }
    if n > ALL_EDGES_MAX_NODES {
        let _ = writeln!(
            out,
            "  // {n} nodes: pairs that are ok are not drawn ({} of {}).",
            s.ok, s.pairs
        );
    }
    let all = if n <= ALL_EDGES_MAX_NODES {
        edges(cluster)
    } else {
        broken_edges(cluster)
    };
    for e in all {
        let mut attrs = format!("color=\"{}\"", colour(e.health));
        match e.health {
            Health::Ok => {}
            Health::Unknown => attrs += ", style=dashed",
            _ => attrs += ", penwidth=2.5",
        }
        if let Some(label) = &e.label {
            let _ = write!(
                attrs,
                ", label={}, fontcolor=\"{}\"",
                quoted(label),
                colour(e.health)
            );
        }
        let _ = writeln!(
            out,
            "  {} -- {} [{attrs}];",
            quoted(&cluster.nodes[e.a].name),
            quoted(&cluster.nodes[e.b].name)
        );
    }
    out += "}\n";
    out
}

/// The edges of the broken pairs only, from the reports' problem lists (no walk over n² pairs).
fn broken_edges(cluster: &ClusterView) -> Vec<super::Edge> {
    let mut pairs: Vec<(usize, usize)> = cluster
        .broken()
        .into_iter()
        .map(|(from, to, _)| (from.min(to), from.max(to)))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
        .into_iter()
        .map(|(a, b)| super::edge(cluster, a, b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::cluster;

    #[test]
    fn nodes_carry_their_cidrs_and_broken_edges_their_cause() {
        let c = cluster(
            &["node-a", "node-b", "node-c"],
            &[("node-b", "node-c", "lossy"), ("node-c", "node-b", "lossy")],
        );
        let dot = render(&c);
        assert!(dot.starts_with("graph wormhole {\n"), "{dot}");
        assert!(
            dot.contains("  \"node-a\" [label=\"node-a\\n10.99.0.0/24\"];\n"),
            "{dot}"
        );
        assert!(
            dot.contains("  \"node-a\" -- \"node-b\" [color=\"#2e7d32\"];\n"),
            "{dot}"
        );
        assert!(
            dot.contains(
                "  \"node-b\" -- \"node-c\" [color=\"#f9a825\", penwidth=2.5, label=\"lossy\", fontcolor=\"#f9a825\"];\n"
            ),
            "{dot}"
        );
        assert!(dot.ends_with("}\n"));
    }

    #[test]
    fn hostile_names_stay_inside_their_quotes() {
        let hostile = "a\" -- \"evil\" [label=x]; \\\n\u{1b}[2J";
        let mut c = cluster(&["b", hostile], &[("b", hostile, hostile)]);
        c.unreadable.push(hostile.into());
        c.not_asked.push(hostile.into());
        let dot = render(&c);
        assert!(!dot.contains('\u{1b}'));
        assert!(
            dot.contains("\"a\\\" -- \\\"evil\\\" [label=x]; \\\\\\\\\\\\n\\\\u{1b}[2J\""),
            "{dot}"
        );
        // Outside its strings, no line holds anything from a name.
        for line in dot.lines() {
            let (mut outside, mut in_string, mut chars) = (String::new(), false, line.chars());
            while let Some(c) = chars.next() {
                match (in_string, c) {
                    (true, '\\') => {
                        chars.next();
                    }
                    (_, '"') => in_string = !in_string,
                    (false, c) => outside.push(c),
                    (true, _) => {}
                }
            }
            assert!(!in_string, "unterminated string: {line}");
            assert!(
                !outside.contains("evil") && !outside.contains("label=x"),
                "{line}"
            );
        }
    }

    #[test]
    fn a_big_cluster_draws_only_its_broken_pairs() {
        let names: Vec<String> = (0..60).map(|i| format!("n{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let c = cluster(&refs, &[("n03", "n40", "never")]);
        let dot = render(&c);
        assert_eq!(dot.matches(" -- ").count(), 1, "{dot}");
        assert!(dot.contains("pairs that are ok are not drawn"));
    }
}
