//! The documentation's links resolve: every relative link (and image) in README.md,
//! BENCHMARKS.md and docs/*.md names a file or directory of the repository, and a `#anchor`
//! names a heading of the page it points at (GitHub's anchors: [`crate::reference::slug`],
//! repeats numbered `-1`, `-2`, ...).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use crate::reference::slug;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The pages checked: README.md, BENCHMARKS.md and every docs/*.md.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_FOOTNOTES
}

/// The anchors of a page's headings, as GitHub makes them.
fn anchors(markdown: &str) -> Vec<String> {
    let mut anchors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(markdown, options()) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let n = seen.entry(base.clone()).or_insert(0);
                anchors.push(if *n == 0 { base } else { format!("{base}-{n}") });
                *n += 1;
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            _ => {}
        }
    }
    anchors
}

/// Every link and image destination of a page.
fn links(markdown: &str) -> Vec<String> {
    Parser::new_ext(markdown, options())
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                Some(dest_url.to_string())
            }
            _ => None,
        })
        .collect()
}

/// What is wrong with one link of `page`, if anything.
fn check(page: &Path, dest: &str) -> Option<String> {
    if dest.contains("://") || dest.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match dest.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (dest, None),
    };
    let target = if path.is_empty() {
        page.to_path_buf()
    } else if path.starts_with('/') {
        return Some(format!(
            "{dest}: absolute paths do not work on GitHub or in a clone"
        ));
    } else {
        page.parent().unwrap().join(path)
    };
    if !target.exists() {
        return Some(format!("{dest}: no such file"));
    }
    let anchor = anchor.filter(|a| !a.is_empty())?;
    if target.extension().is_none_or(|e| e != "md") {
        return Some(format!(
            "{dest}: an anchor into a file that is not Markdown"
        ));
    }
    let text = std::fs::read_to_string(&target).unwrap();
    if anchors(&text).iter().any(|a| a == anchor) {
        None
    } else {
        Some(format!("{dest}: no heading with that anchor"))
    }
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut count = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for dest in links(&text) {
            count += 1;
            if let Some(problem) = check(&page, &dest) {
                let name = page.strip_prefix(root()).unwrap_or(&page).display();
                broken.push(format!("{name}: {problem}"));
            }
        }
    }
    assert!(count > 50, "only {count} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// docs/index.md lists every page of docs/.
#[test]
fn the_index_lists_every_page() {
    let docs = root().join("docs");
    let index = std::fs::read_to_string(docs.join("index.md")).unwrap();
    let listed = links(&index);
    for page in pages() {
        if page.parent() != Some(docs.as_path()) || page.ends_with("index.md") {
            continue;
        }
        let name = page.file_name().unwrap().to_str().unwrap();
        assert!(
            listed.iter().any(|l| l == name),
            "docs/index.md does not link {name}"
        );
    }
}

#[test]
fn anchors_and_links_are_found() {
    let page = "# A `b` c\n\n## A b c\n\n### Exit codes\n\nSee [x](#exit-codes), ![i](y.svg).\n";
    assert_eq!(anchors(page), ["a-b-c", "a-b-c-1", "exit-codes"]);
    assert_eq!(links(page), ["#exit-codes", "y.svg"]);
}
