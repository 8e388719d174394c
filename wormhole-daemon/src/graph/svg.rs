//! The mesh as SVG, written here (no Graphviz at run time): up to [`CIRCLE_MAX_NODES`] nodes on
//! a circle with an edge per pair, beyond that a heat map of the N×N matrix (rows = from,
//! columns = to). A panel beside either gives the legend, the counts and the broken pairs.
//!
//! The SVG is a few element kinds (`rect`, `line`, `circle`, `text`) written with `format!`: an
//! XML writer crate would add a dependency for what [`xml`] does — every string from outside is
//! first escaped like a terminal line ([`escape`]: no control characters, which XML 1.0 forbids
//! anyway) and then its markup characters become entities.

use std::f64::consts::PI;
use std::fmt::Write as _;

use wormhole_agent::{ClusterView, Health};
use wormhole_core::escape;

use super::{Edge, colour, edges};

/// The largest cluster drawn as a circle; beyond, a heat map.
pub const CIRCLE_MAX_NODES: usize = 50;
/// Broken edges labelled on the circle; with more, the panel lists them (labels would pile up).
const MAX_EDGE_LABELS: usize = 16;
/// A node with this many broken edges of one class is labelled with the cause (see
/// [`explain`]).
const EXPLAINS: usize = 3;
/// Broken pairs listed in the panel.
const MAX_PANEL_PAIRS: usize = 12;
/// Notes (sources not read, peers not asked for) listed in the panel.
const MAX_PANEL_NOTES: usize = 8;
/// Nodes listed in the panel's "where to look".
const MAX_PANEL_NODES: usize = 8;
/// The heat map's largest grid: beyond, each square covers several pairs (the worst shown).
const MAX_GRID: usize = 400;
/// Names longer than this are cut in labels.
const MAX_LABEL: usize = 32;
const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";
const PANEL_WIDTH: f64 = 440.0;
/// The heat map's `ok` background is its colour at this opacity (the problems stand out).
const OK_OPACITY: f64 = 0.35;

/// `text` for an XML attribute or text node: [`escape`]d, then `& < > " '` as entities.
pub fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in escape(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not characters in XML 1.0.
            '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// [`xml`] of `text` cut to `max` characters (marked with `…`).
fn label(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return xml(text);
    }
    let cut: String = text.chars().take(max - 1).collect();
    xml(&cut) + "…"
}

/// The SVG of `cluster`.
pub fn render(cluster: &ClusterView) -> String {
    if cluster.nodes.len() <= CIRCLE_MAX_NODES {
        circle(cluster)
    } else {
        heat_map(cluster)
    }
}

fn document(width: f64, height: f64, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" {FONT} font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n{body}</svg>\n"
    )
}

/// The dash pattern of an edge of class `health`: told apart without colour too.
fn dash(health: Health) -> &'static str {
    match health {
        Health::Unknown => " stroke-dasharray=\"4 4\"",
        Health::Stale => " stroke-dasharray=\"10 4\"",
        Health::Never => " stroke-dasharray=\"2 4\"",
        Health::Lossy => " stroke-dasharray=\"8 3 2 3\"",
        _ => "",
    }
}

/// The title line: counts of pairs.
fn title(cluster: &ClusterView, x: f64, y: f64) -> String {
    let s = cluster.summary();
    format!(
        "<text x=\"{x}\" y=\"{y}\" font-size=\"16\" font-weight=\"bold\">Wormhole mesh: {} nodes</text>\n\
         <text x=\"{x}\" y=\"{}\" fill=\"#455a64\">{} pairs (from -&gt; to): {} ok, {} broken, {} unknown</text>\n",
        s.nodes,
        y + 18.0,
        s.pairs,
        s.ok,
        s.broken,
        s.unknown
    )
}

/// The panel at `x`: legend (`squares` for the heat map's swatches), the nodes in the most
/// broken pairs with their causes, the first broken pairs. Returns its bottom.
fn panel(cluster: &ClusterView, x: f64, y: f64, squares: bool, out: &mut String) -> f64 {
    let mut y = y;
    out.push_str("<g class=\"panel\">\n");
    let _ = writeln!(
        out,
        "<text x=\"{x}\" y=\"{y}\" font-weight=\"bold\">Legend</text>"
    );
    y += 8.0;
    for health in Health::ALL {
        y += 18.0;
        let swatch = if squares {
            // `ok` is the map's background, drawn lighter.
            let opacity = if health == Health::Ok {
                OK_OPACITY
            } else {
                1.0
            };
            format!(
                "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\" fill-opacity=\"{opacity}\"/>",
                x + 12.0,
                y - 10.0,
                colour(health)
            )
        } else {
            format!(
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"4\"{}/>",
                y - 4.0,
                x + 36.0,
                y - 4.0,
                colour(health),
                dash(health)
            )
        };
        let _ = writeln!(
            out,
            "{swatch}<text x=\"{}\" y=\"{y}\">{}</text>",
            x + 46.0,
            health.label()
        );
    }
    let worst = cluster.most_broken();
    if !worst.is_empty() {
        y += 30.0;
        let _ = writeln!(
            out,
            "<text x=\"{x}\" y=\"{y}\" font-weight=\"bold\">Where to look (broken pairs per node)</text>"
        );
        y += 2.0;
        for trouble in worst.iter().take(MAX_PANEL_NODES) {
            y += 17.0;
            let _ = write!(
                out,
                "<text x=\"{x}\" y=\"{y}\"><tspan font-weight=\"bold\">{}</tspan>: {} of {}",
                label(&cluster.nodes[trouble.node].name, 20),
                trouble.pairs,
                2 * (cluster.nodes.len() - 1)
            );
            for (i, (health, count)) in trouble.classes.iter().enumerate() {
                let _ = write!(
                    out,
                    "{}<tspan fill=\"{}\">{count} {}</tspan>",
                    if i == 0 { " — " } else { ", " },
                    colour(*health),
                    health.label()
                );
            }
            out.push_str("</text>\n");
        }
        if worst.len() > MAX_PANEL_NODES {
            y += 17.0;
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{y}\" fill=\"#455a64\">… and {} more nodes</text>",
                worst.len() - MAX_PANEL_NODES
            );
        }
    }
    let broken = cluster.broken();
    if !broken.is_empty() {
        y += 30.0;
        let _ = writeln!(
            out,
            "<text x=\"{x}\" y=\"{y}\" font-weight=\"bold\">Broken pairs (from -&gt; to)</text>"
        );
        y += 2.0;
        let lines = crate::matrix::pair_lines(cluster, &broken);
        for (health, line) in lines.iter().take(MAX_PANEL_PAIRS) {
            y += 16.0;
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{y}\"><tspan fill=\"{}\">\u{25a0}</tspan> {}</text>",
                colour(*health),
                label(line, 60)
            );
        }
        if lines.len() > MAX_PANEL_PAIRS {
            y += 16.0;
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{y}\" fill=\"#455a64\">… and {} more (wormhole status --cluster)</text>",
                lines.len() - MAX_PANEL_PAIRS
            );
        }
    }
    let notes = super::notes(cluster);
    if !notes.is_empty() {
        y += 30.0;
        let _ = writeln!(
            out,
            "<text x=\"{x}\" y=\"{y}\" font-weight=\"bold\">Notes</text>"
        );
        y += 2.0;
        for note in notes.iter().take(MAX_PANEL_NOTES) {
            y += 16.0;
            // Wrapped to the panel's width, three lines at most; the whole note is the
            // tooltip.
            let _ = write!(
                out,
                "<text x=\"{x}\" y=\"{y}\" fill=\"#455a64\"><title>{}</title>",
                xml(note)
            );
            for (i, line) in wrap(note, NOTE_WIDTH, 3).iter().enumerate() {
                if i > 0 {
                    y += 15.0;
                }
                let dy = if i == 0 { 0 } else { 15 };
                let _ = write!(out, "<tspan x=\"{x}\" dy=\"{dy}\">{}</tspan>", xml(line));
            }
            out.push_str("</text>\n");
        }
        if notes.len() > MAX_PANEL_NOTES {
            y += 16.0;
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{y}\" fill=\"#455a64\">… and {} more (wormhole status --cluster)</text>",
                notes.len() - MAX_PANEL_NOTES
            );
        }
    }
    out.push_str("</g>\n");
    y + 20.0
}

/// A note's line in the panel, in characters.
const NOTE_WIDTH: usize = 64;

/// `text` in lines of at most `width` characters, broken at spaces where it can be, at most
/// `max` lines (the last one cut and marked with `…` if the text goes on).
fn wrap(text: &str, width: usize, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        // A word longer than a line: cut it.
        while word.chars().count() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let cut = word
                .char_indices()
                .nth(width)
                .map_or(word.len(), |(i, _)| i);
            lines.push(word[..cut].to_owned());
            word = &word[cut..];
        }
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    if lines.len() > max {
        lines.truncate(max);
        let last = &mut lines[max - 1];
        let keep: String = last.chars().take(width.saturating_sub(1)).collect();
        *last = keep + "…";
    }
    lines
}

/// A node's label for broken edges it explains: their class, how many, and their state when
/// they all share it.
type Explanation = (Health, usize, Option<String>);

/// Which node explains which broken edges: a node with at least [`EXPLAINS`] broken edges of
/// one class (a node whose underlay drops packets, one with a wrong key) is labelled once with
/// the cause, instead of each of its edges. Returns, per node, its explanations (class, how
/// many, the state if they all share it), and per edge whether a node explains it.
fn explain(cluster: &ClusterView, edges: &[Edge]) -> (Vec<Vec<Explanation>>, Vec<bool>) {
    let n = cluster.nodes.len();
    let mut candidates: Vec<(usize, usize, Health)> = Vec::new();
    for node in 0..n {
        for health in Health::ALL.into_iter().filter(|h| h.is_broken()) {
            let count = edges
                .iter()
                .filter(|e| e.health == health && (e.a == node || e.b == node))
                .count();
            if count >= EXPLAINS {
                candidates.push((count, node, health));
            }
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut explained = vec![false; edges.len()];
    let mut notes = vec![Vec::new(); n];
    for (_, node, health) in candidates {
        let mine: Vec<usize> = (0..edges.len())
            .filter(|&i| {
                let e = &edges[i];
                !explained[i] && e.health == health && (e.a == node || e.b == node)
            })
            .collect();
        if mine.len() < EXPLAINS {
            continue;
        }
        let first = edges[mine[0]].label.clone();
        let same = mine
            .iter()
            .all(|&i| edges[i].label == first)
            .then_some(first)
            .flatten()
            .filter(|l| !l.contains("->"));
        for &i in &mine {
            explained[i] = true;
        }
        notes[node].push((health, mine.len(), same));
    }
    (notes, explained)
}

/// ≤ 50 nodes on a circle, their names and pod CIDRs outside it.
fn circle(cluster: &ClusterView) -> String {
    let n = cluster.nodes.len();
    let radius = (n as f64 * 18.0).clamp(200.0, 480.0);
    let margin = 170.0;
    let top = 60.0;
    let (cx, cy) = (margin + radius, top + margin + radius);
    let at = |i: usize| {
        let angle = -PI / 2.0 + 2.0 * PI * i as f64 / n.max(1) as f64;
        (angle, cx + radius * angle.cos(), cy + radius * angle.sin())
    };
    let mut body = title(cluster, 20.0, 28.0);
    let all = edges(cluster);
    let broken: Vec<&Edge> = all.iter().filter(|e| e.health.is_broken()).collect();
    let (notes, explained) = explain(cluster, &all);
    // Healthy and unknown pairs under the broken ones.
    for e in all.iter().filter(|e| !e.health.is_broken()) {
        let ((_, x1, y1), (_, x2, y2)) = (at(e.a), at(e.b));
        let opacity = if n > 20 { 0.25 } else { 0.5 };
        let _ = writeln!(
            body,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{}\" \
             stroke-width=\"1.5\" stroke-opacity=\"{opacity}\"{}/>",
            colour(e.health),
            dash(e.health)
        );
    }
    for e in &broken {
        let ((_, x1, y1), (_, x2, y2)) = (at(e.a), at(e.b));
        let _ = writeln!(
            body,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{}\" \
             stroke-width=\"3.5\"{}><title>{}</title></line>",
            colour(e.health),
            dash(e.health),
            xml(e.label.as_deref().unwrap_or_default())
        );
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (angle, x, y) = at(i);
        let (fill, stroke_dash) = match node.report {
            Some(_) => ("#ffffff", ""),
            None => ("#e0e0e0", " stroke-dasharray=\"3 2\""),
        };
        let _ = writeln!(
            body,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"8\" fill=\"{fill}\" stroke=\"#37474f\" \
             stroke-width=\"2\"{stroke_dash}/>"
        );
        let (lx, ly) = (
            cx + (radius + 16.0) * angle.cos(),
            cy + (radius + 16.0) * angle.sin(),
        );
        let anchor = if angle.cos().abs() < 0.25 {
            "middle"
        } else if angle.cos() > 0.0 {
            "start"
        } else {
            "end"
        };
        let lines = 1 + node.pod_cidrs.len().min(2) + notes[i].len();
        // Above the top nodes, below the bottom ones, centred on the others.
        let first = if angle.sin() < -0.9 {
            ly - 4.0 - 13.0 * (lines - 1) as f64
        } else if angle.sin() > 0.9 {
            ly + 12.0
        } else {
            ly + 4.0 - 6.5 * (lines - 1) as f64
        };
        let _ = write!(
            body,
            "<text x=\"{lx:.1}\" y=\"{first:.1}\" text-anchor=\"{anchor}\"><tspan font-weight=\"bold\">{}</tspan>",
            label(&node.name, MAX_LABEL)
        );
        for cidr in node.pod_cidrs.iter().take(2) {
            let _ = write!(
                body,
                "<tspan x=\"{lx:.1}\" dy=\"13\" font-size=\"11\" fill=\"#546e7a\">{}</tspan>",
                label(cidr, 43)
            );
        }
        for (health, count, state) in &notes[i] {
            let cause = state.as_deref().unwrap_or(health.label());
            let _ = write!(
                body,
                "<tspan x=\"{lx:.1}\" dy=\"14\" font-size=\"11\" font-weight=\"bold\" fill=\"{}\">{} with {count} peers</tspan>",
                colour(*health),
                label(cause, 40)
            );
        }
        if let Some(note) = &node.note {
            let _ = write!(body, "<title>{}</title>", xml(note));
        }
        body += "</text>\n";
    }
    let unexplained: Vec<&Edge> = all
        .iter()
        .zip(&explained)
        .filter(|(e, done)| e.health.is_broken() && !**done)
        .map(|(e, _)| e)
        .collect();
    if unexplained.len() <= MAX_EDGE_LABELS {
        for e in unexplained {
            let ((_, x1, y1), (_, x2, y2)) = (at(e.a), at(e.b));
            let (mx, my) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
            let text = e.label.as_deref().unwrap_or_default();
            let shown: String = text.chars().take(48).collect();
            let width = shown.chars().count() as f64 * 6.3 + 10.0;
            let _ = writeln!(
                body,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"17\" rx=\"4\" \
                 fill=\"#ffffff\" fill-opacity=\"0.92\" stroke=\"{}\"/>\
                 <text x=\"{mx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{}\">{}</text>",
                mx - width / 2.0,
                my - 12.0,
                colour(e.health),
                my + 1.0,
                colour(e.health),
                label(text, 48)
            );
        }
    }
    let width = 2.0 * (margin + radius);
    let panel_height = panel(cluster, width, top + 20.0, false, &mut body);
    let height = (top + 2.0 * (margin + radius)).max(panel_height);
    if n == 0 {
        let _ = writeln!(body, "<text x=\"{cx}\" y=\"{cy}\">(no nodes)</text>");
    }
    document(width + PANEL_WIDTH, height, &body)
}

/// More than 50 nodes: the N×N matrix as coloured squares (rows = from, columns = to),
/// `ok` as the background, each square the worst of the pairs it covers.
fn heat_map(cluster: &ClusterView) -> String {
    let n = cluster.nodes.len();
    let per = n.div_ceil(MAX_GRID);
    let grid = n.div_ceil(per);
    // From the reports, not pair by pair: linear in the nodes (≤ MAX_GRID squares a side).
    let worst = cluster.worst_by_square(per);
    let cell = (900.0 / grid as f64).clamp(2.0, 14.0);
    let named = per == 1 && cell >= 6.0;
    let font = cell.min(10.0);
    let (left, top) = if named {
        (200.0, 100.0 + 160.0)
    } else {
        (60.0, 110.0)
    };
    let side = cell * grid as f64;
    let mut body = title(cluster, 20.0, 28.0);
    let _ = writeln!(
        body,
        "<text x=\"20\" y=\"66\" fill=\"#455a64\">rows: from, columns: to{}</text>",
        if per > 1 {
            format!(", each square {per}×{per} pairs (the worst shown), nodes sorted by name")
        } else {
            ", nodes sorted by name".into()
        }
    );
    let _ = writeln!(
        body,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{side:.1}\" height=\"{side:.1}\" fill=\"{}\" fill-opacity=\"{OK_OPACITY}\"/>",
        colour(Health::Ok)
    );
    for (i, health) in worst.iter().enumerate() {
        if *health == Health::Ok {
            continue;
        }
        let (row, col) = (i / grid, i % grid);
        let _ = writeln!(
            body,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"{}\"/>",
            left + col as f64 * cell,
            top + row as f64 * cell,
            colour(*health)
        );
    }
    if named {
        for (i, node) in cluster.nodes.iter().enumerate() {
            let offset = i as f64 * cell + cell / 2.0 + font / 3.0;
            let _ = writeln!(
                body,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"{font:.1}\">{}</text>",
                left - 4.0,
                top + offset,
                label(&node.name, 28)
            );
            let (x, y) = (left + offset, top - 4.0);
            let _ = writeln!(
                body,
                "<text x=\"{x:.1}\" y=\"{y:.1}\" transform=\"rotate(-90 {x:.1} {y:.1})\" font-size=\"{font:.1}\">{}</text>",
                label(&node.name, 28)
            );
        }
    } else {
        let _ = writeln!(
            body,
            "<text x=\"{left}\" y=\"{:.1}\" fill=\"#455a64\">to: {} … {}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#455a64\" text-anchor=\"end\">from: {}</text>",
            top - 6.0,
            label(&cluster.nodes[0].name, 24),
            label(&cluster.nodes[n - 1].name, 24),
            left - 4.0,
            top + 12.0,
            label(&cluster.nodes[0].name, 8),
        );
    }
    let width = left + side + 40.0;
    let panel_height = panel(cluster, width, 100.0, true, &mut body);
    let height = (top + side + 40.0).max(panel_height);
    document(width + PANEL_WIDTH, height, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::cluster;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}\n{svg}"))
    }

    #[test]
    fn a_small_mesh_is_a_circle_with_broken_pairs_coloured_and_labelled() {
        let c = cluster(
            &["node-a", "node-b", "node-c", "node-d"],
            &[
                ("node-a", "node-c", "mtu-blackhole (max 1344)"),
                ("node-c", "node-a", "mtu-blackhole (max 1344)"),
            ],
        );
        let svg = render(&c);
        let doc = parse(&svg);
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let circles = root
            .descendants()
            .filter(|n| n.has_tag_name("circle"))
            .count();
        assert_eq!(circles, 4);
        let lines: Vec<_> = root.children().filter(|n| n.has_tag_name("line")).collect();
        assert_eq!(lines.len(), 6, "one per pair");
        let purple = lines
            .iter()
            .filter(|l| l.attribute("stroke") == Some(colour(Health::MtuBlackhole)))
            .count();
        assert_eq!(purple, 1);
        let texts: String = root
            .descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .filter(|t| !t.trim().is_empty())
            .collect::<Vec<_>>()
            .join("|");
        assert!(texts.contains("node-a|10.99.0.0/24"), "{texts}");
        assert!(texts.contains("mtu-blackhole (max 1344)"), "{texts}");
        assert!(texts.contains("10 ok, 2 broken, 0 unknown"), "{texts}");
    }

    #[test]
    fn notes_are_wrapped_to_the_panel() {
        assert_eq!(wrap("", 10, 3), Vec::<String>::new());
        assert_eq!(wrap("a bb ccc dddd", 6, 3), ["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("abcdefghij k", 4, 5), ["abcd", "efgh", "ij k"]);
        assert_eq!(wrap("aaa bbb ccc ddd", 3, 2), ["aaa", "bb…"]);
        for text in ["x".repeat(500), "é ".repeat(300)] {
            let lines = wrap(&text, NOTE_WIDTH, 3);
            assert!(lines.len() <= 3);
            assert!(lines.iter().all(|l| l.chars().count() <= NOTE_WIDTH));
        }
    }

    #[test]
    fn hostile_names_are_escaped_and_the_svg_stays_xml() {
        let hostile = "<script>alert(1)</script>&\"'\u{1b}[2J\u{0}\u{fffe}\u{202e}";
        let mut c = cluster(&["a", hostile], &[("a", hostile, hostile)]);
        c.nodes[0].note = Some(hostile.into());
        c.nodes[0].pod_cidrs = vec![hostile.into()];
        c.unreadable.push(hostile.into());
        c.not_asked.push(hostile.into());
        let svg = render(&c);
        let doc = parse(&svg);
        assert!(!svg.contains("<script"), "{svg}");
        assert!(
            doc.descendants().all(|n| n.tag_name().name() != "script"),
            "no element from a name"
        );
        let text: String = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(
            text.contains("<script>alert(1)</script>&\"'\\u{1b}[2J"),
            "{text}"
        );
        assert!(!text.contains('\u{202e}') && !text.contains('\u{1b}'));
    }

    #[test]
    fn more_than_fifty_nodes_are_a_heat_map() {
        let names: Vec<String> = (0..120).map(|i| format!("node-{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let c = cluster(
            &refs,
            &[
                ("node-005", "node-100", "lossy"),
                ("node-100", "node-005", "never"),
            ],
        );
        let svg = render(&c);
        let doc = parse(&svg);
        let root = doc.root_element();
        assert_eq!(
            root.descendants()
                .filter(|n| n.has_tag_name("circle"))
                .count(),
            0
        );
        let squares: Vec<_> = root
            .children()
            .filter(|n| n.has_tag_name("rect"))
            .filter(|n| n.attribute("width") == n.attribute("height"))
            .filter(|n| ![Some(colour(Health::Ok)), Some("#ffffff")].contains(&n.attribute("fill")))
            .map(|n| n.attribute("fill").unwrap())
            .collect();
        assert_eq!(squares, [colour(Health::Lossy), colour(Health::Never)]);
        assert!(svg.contains(">node-119</text>"), "names on the axes");
    }

    #[test]
    fn a_huge_cluster_stays_a_bounded_picture() {
        let names: Vec<String> = (0..2000).map(|i| format!("n{i:04}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let problems: Vec<(&str, &str, &str)> = refs[1..]
            .iter()
            .map(|to| ("n0000", *to, "unreachable"))
            .collect();
        let svg = render(&cluster(&refs, &problems));
        parse(&svg);
        assert!(svg.len() < 1 << 20, "{} bytes", svg.len());
        assert!(svg.contains("each square 5×5 pairs"), "grid of 400");
    }
}
