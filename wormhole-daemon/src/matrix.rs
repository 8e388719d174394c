//! `wormhole status --cluster`: the [`ClusterView`] as text. Up to [`MATRIX_MAX_NODES`] nodes an
//! N×N matrix (rows = from, columns = to, one character per pair), beyond that a summary; both
//! followed by the broken pairs and the nodes in most of them. Every name and state came from
//! the nodes: each is escaped.

use std::fmt::Write as _;

use wormhole_agent::{Cell, ClusterView, Health};
use wormhole_core::escape;

/// The largest cluster shown as a matrix; from 100 nodes on, the compact form.
pub const MATRIX_MAX_NODES: usize = 99;
/// Broken pairs listed (the rest are counted; `-o json` has them all).
pub const MAX_PAIRS_LISTED: usize = 100;
/// Nodes listed among those in the most broken pairs.
const MAX_WORST_NODES: usize = 10;
/// Notes (nodes without a report, sources not read) listed.
const MAX_NOTES: usize = 20;
/// Node names longer than this are cut in the matrix's first column.
const MAX_NAME: usize = 40;

/// The matrix character of a class.
pub fn symbol(health: Health) -> char {
    match health {
        Health::Ok => '.',
        Health::Unknown => '?',
        Health::Lossy => 'L',
        Health::MtuBlackhole => 'M',
        Health::Stale => 'S',
        Health::Unreachable => 'U',
        Health::Never => 'N',
        Health::Rejected => 'R',
        Health::Other => 'X',
    }
}

/// `name` escaped and cut to `max` characters (marked with `…`).
fn short(name: &str, max: usize) -> String {
    let name = escape(name);
    if name.chars().count() <= max {
        return name.into_owned();
    }
    let mut out: String = name.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The text `wormhole status --cluster` prints.
pub fn render(cluster: &ClusterView) -> String {
    let s = cluster.summary();
    let mut out = format!(
        "{} nodes, {} pairs (from -> to): {} ok, {} broken, {} unknown\n",
        s.nodes, s.pairs, s.ok, s.broken, s.unknown
    );
    if cluster.nodes.is_empty() {
        out += "(no nodes)\n";
    } else if cluster.nodes.len() <= MATRIX_MAX_NODES {
        out += "\n";
        out += &matrix(cluster);
    } else {
        out += &by_class(cluster);
    }
    let broken = cluster.broken();
    if !broken.is_empty() {
        let worst = cluster.most_broken();
        if cluster.nodes.len() > 2 {
            out += "\nnodes in the most broken pairs (look at these first):\n";
            for trouble in worst.iter().take(MAX_WORST_NODES) {
                let _ = writeln!(
                    out,
                    "  {}: {} of {} pairs ({})",
                    escape(&cluster.nodes[trouble.node].name),
                    trouble.pairs,
                    2 * (cluster.nodes.len() - 1),
                    trouble.classes_text()
                );
            }
        }
        out += "\nbroken pairs (from -> to: state):\n";
        let lines = pair_lines(cluster, &broken);
        for (_, line) in lines.iter().take(MAX_PAIRS_LISTED) {
            let _ = writeln!(out, "  {}", escape(line));
        }
        if lines.len() > MAX_PAIRS_LISTED {
            let _ = writeln!(
                out,
                "  ... and {} more (-o json lists them all)",
                lines.len() - MAX_PAIRS_LISTED
            );
        }
    }
    let notes: Vec<String> = cluster
        .unreadable
        .iter()
        .map(|why| format!("  not read: {}\n", escape(why)))
        .chain(not_asked(cluster))
        .chain(cluster.nodes.iter().filter_map(|n| {
            let note = n.note.as_deref()?;
            Some(format!("  {}: {}\n", escape(&n.name), escape(note)))
        }))
        .collect();
    if !notes.is_empty() {
        out += "\nnotes:\n";
        for note in notes.iter().take(MAX_NOTES) {
            out += note;
        }
        if notes.len() > MAX_NOTES {
            let _ = writeln!(out, "  ... and {} more", notes.len() - MAX_NOTES);
        }
    }
    out
}

/// Peers named in [`ClusterView::not_asked`] that a note shows.
const MAX_NOT_ASKED: usize = 5;

/// The note on the peers the reports name that were not asked for, if any: how many, and the
/// first few.
pub(crate) fn not_asked(cluster: &ClusterView) -> Option<String> {
    let names = &cluster.not_asked;
    if names.is_empty() {
        return None;
    }
    let shown: Vec<String> = names
        .iter()
        .take(MAX_NOT_ASKED)
        .map(|n| short(n, MAX_NAME))
        .collect();
    Some(format!(
        "  {} peer{} named by the nodes read {} not asked for (give {} --admin to include {}): {}{}\n",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        if names.len() == 1 { "was" } else { "were" },
        if names.len() == 1 { "its" } else { "their" },
        if names.len() == 1 { "it" } else { "them" },
        shown.join(", "),
        if names.len() > MAX_NOT_ASKED {
            ", …"
        } else {
            ""
        }
    ))
}

/// A pair state group of at least this many pairs is one line.
const GROUP: usize = 3;

/// The broken pairs as lines, one per pair, except that pairs sharing an end and a class (a
/// node every other one finds unreachable) are one line: `node-a -> 5 nodes: lossy`,
/// `every node -> node-c: never`. Biggest groups first, then single pairs in order; each with
/// its class. Not escaped: each line is, where it is shown.
pub(crate) fn pair_lines(
    cluster: &ClusterView,
    broken: &[(usize, usize, &str)],
) -> Vec<(Health, String)> {
    use std::collections::BTreeMap;
    // (end, is the `to` end, class) -> pairs.
    let mut groups: BTreeMap<(usize, bool, Health), Vec<usize>> = BTreeMap::new();
    for (i, (from, to, state)) in broken.iter().enumerate() {
        let health = Health::of(state);
        groups.entry((*from, false, health)).or_default().push(i);
        groups.entry((*to, true, health)).or_default().push(i);
    }
    let mut order: Vec<_> = groups
        .into_iter()
        .filter(|(_, v)| v.len() >= GROUP)
        .collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let mut done = vec![false; broken.len()];
    let mut out = Vec::new();
    let others = cluster.nodes.len() - 1;
    for ((end, is_to, health), pairs) in order {
        let pairs: Vec<usize> = pairs.into_iter().filter(|&i| !done[i]).collect();
        if pairs.len() < GROUP {
            continue;
        }
        let first = broken[pairs[0]].2;
        let state = if pairs.iter().all(|&i| broken[i].2 == first) {
            first.to_owned()
        } else {
            health.label().to_owned()
        };
        let name = &cluster.nodes[end].name;
        let many = if pairs.len() == others {
            "every node".to_owned()
        } else {
            format!("{} nodes", pairs.len())
        };
        out.push((
            health,
            if is_to {
                format!("{many} -> {name}: {state}")
            } else {
                format!("{name} -> {many}: {state}")
            },
        ));
        for i in pairs {
            done[i] = true;
        }
    }
    for (i, (from, to, state)) in broken.iter().enumerate() {
        if !done[i] {
            out.push((
                Health::of(state),
                format!(
                    "{} -> {}: {state}",
                    cluster.nodes[*from].name, cluster.nodes[*to].name
                ),
            ));
        }
    }
    out
}

/// The N×N matrix: a header of column numbers (digits stacked from 10 nodes on), one row per
/// node, a legend.
fn matrix(cluster: &ClusterView) -> String {
    let n = cluster.nodes.len();
    let digits = n.to_string().len();
    let names: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| short(&node.name, MAX_NAME))
        .collect();
    let name_width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    // " 7 node-a  " before the cells, at least as wide as the title.
    const TITLE: &str = "FROM \\ TO";
    let lead = (digits + 1 + name_width + 2).max(TITLE.len() + 2);
    let mut out = String::new();
    for row in 0..digits {
        let title = if row + 1 == digits { TITLE } else { "" };
        let _ = write!(out, "{title:<lead$}");
        for col in 1..=n {
            let number = format!("{col:>digits$}");
            let c = number.as_bytes()[row] as char;
            let _ = write!(out, "{c} ");
        }
        out = out.trim_end().to_owned() + "\n";
    }
    for (from, name) in names.iter().enumerate() {
        let prefix = format!("{:>digits$} {name}", from + 1);
        let _ = write!(out, "{prefix:<lead$}");
        for to in 0..n {
            let c = match cluster.cell(from, to) {
                Cell::Itself => '-',
                cell => symbol(cell.health()),
            };
            let _ = write!(out, "{c} ");
        }
        out = out.trim_end().to_owned() + "\n";
    }
    out += &legend();
    out
}

/// The legend: each character and its class.
fn legend() -> String {
    let mut out = String::from("\n");
    for health in Health::ALL {
        let _ = write!(out, "{} {}  ", symbol(health), health.label());
    }
    out += "- itself\n";
    out
}

/// The compact form's counts: pairs by class.
fn by_class(cluster: &ClusterView) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for (from, to, state) in cluster.broken() {
        let _ = (from, to);
        *counts.entry(Health::of(state)).or_insert(0usize) += 1;
    }
    if counts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(h, c)| format!("{c} {}", h.label()))
        .collect();
    format!(
        "broken by cause: {} (matrix shown up to {MATRIX_MAX_NODES} nodes)\n",
        parts.join(", ")
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wormhole_agent::{ClusterNode, NodeReport};

    /// A cluster of `names` where `problems` are the (from, to, state) that are not ok.
    pub(crate) fn cluster(names: &[&str], problems: &[(&str, &str, &str)]) -> ClusterView {
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mine: BTreeMap<String, String> = problems
                    .iter()
                    .filter(|(from, _, _)| from == name)
                    .map(|(_, to, state)| (to.to_string(), state.to_string()))
                    .collect();
                ClusterNode {
                    name: name.to_string(),
                    pod_cidrs: vec![format!("10.99.{i}.0/24")],
                    member: true,
                    report: Some(NodeReport {
                        ok: (names.len() - 1 - mine.len()) as u32,
                        ok_peers: None,
                        problems: mine,
                        omitted: 0,
                    }),
                    note: None,
                    admin: None,
                }
            })
            .collect();
        ClusterView::new(nodes, Vec::new())
    }

    #[test]
    fn a_small_cluster_is_a_matrix_with_the_broken_pairs_below() {
        let c = cluster(
            &["node-a", "node-b", "node-c"],
            &[
                ("node-a", "node-c", "mtu-blackhole (max 1344)"),
                ("node-c", "node-a", "mtu-blackhole (max 1344)"),
                ("node-b", "node-c", "lossy"),
            ],
        );
        let text = render(&c);
        assert!(
            text.starts_with(
                "3 nodes, 6 pairs (from -> to): 3 ok, 3 broken, 0 unknown\n\n\
                 FROM \\ TO  1 2 3\n\
                 1 node-a   - . M\n\
                 2 node-b   . - L\n\
                 3 node-c   M . -\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "broken pairs (from -> to: state):\n  node-a -> node-c: mtu-blackhole (max 1344)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "look at these first):\n  node-c: 3 of 4 pairs (2 mtu-blackhole, 1 lossy)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(". ok  ? unknown  L lossy  M mtu-blackhole"),
            "{text}"
        );
    }

    #[test]
    fn column_numbers_are_stacked_from_ten_nodes_on() {
        let names: Vec<String> = (1..=12).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let text = render(&cluster(&names, &[]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            format!("{}1 1 1", " ".repeat(11 + 9 * 2)),
            "{text}"
        );
        assert_eq!(lines[3], "FROM \\ TO  1 2 3 4 5 6 7 8 9 0 1 2", "{text}");
        assert_eq!(lines[4], " 1 n1      - . . . . . . . . . . .", "{text}");
        assert!(!text.contains("broken pairs"));
    }

    #[test]
    fn a_big_cluster_is_a_summary_with_only_the_broken_pairs() {
        let names: Vec<String> = (0..150).map(|i| format!("node-{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut problems = Vec::new();
        // node-000 is unreachable both ways, from and to everyone: two lines.
        for other in &refs[1..] {
            problems.push(("node-000", *other, "unreachable"));
            problems.push((*other, "node-000", "unreachable"));
        }
        // 140 pairs that share nothing: a line each, 100 at most.
        for i in 1..141 {
            problems.push((refs[i], refs[(i + 1) % 149 + 1], "lossy"));
        }
        let text = render(&cluster(&refs, &problems));
        assert!(
            text.starts_with(
                "150 nodes, 22350 pairs (from -> to): 21912 ok, 438 broken, 0 unknown\n\
                 broken by cause: 140 lossy, 298 unreachable"
            ),
            "{text}"
        );
        assert!(!text.contains("FROM"), "no matrix");
        assert!(
            text.contains(
                "look at these first):\n  node-000: 298 of 298 pairs (298 unreachable)\n  \
                 node-003: 4 of 298 pairs (2 lossy, 2 unreachable)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "broken pairs (from -> to: state):\n  node-000 -> every node: unreachable\n  \
                 every node -> node-000: unreachable\n  node-001 -> node-003: lossy\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  ... and 42 more (-o json lists them all)\n"),
            "{text}"
        );
        assert!(text.lines().count() < 130, "{}", text.lines().count());
    }

    #[test]
    fn hostile_names_and_states_are_escaped() {
        let hostile = "x\u{1b}[2J\u{1b}]0;owned\u{7}\r\u{202e}y";
        let mut c = cluster(&["a", hostile], &[("a", hostile, hostile)]);
        c.nodes[0].note = Some(hostile.into());
        c.unreadable.push(hostile.into());
        let text = render(&c);
        let bad: Vec<char> = text
            .chars()
            .filter(|&c| (c.is_control() && c != '\n') || c == '\u{202e}')
            .collect();
        assert!(bad.is_empty(), "{bad:?} in {text:?}");
        assert!(text.contains("x\\u{1b}[2J"), "{text}");
    }
}
