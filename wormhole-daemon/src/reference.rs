//! `docs/reference.md`: every command of the `wormhole` binary, every flag with its help, default
//! and environment variable, rendered as Markdown from the same clap definition as the parser
//! ([`crate::cli::Cli`]), so the reference cannot drift from the binary: a test fails while the
//! file differs from the rendering, and `WORMHOLE_BLESS=1` rewrites it.
//!
//! clap_mangen renders roff and clap's help renders terminal text; neither writes Markdown, so
//! this walks the [`clap::Command`] itself. Help texts are prose with `code` spans: the spans are
//! kept, every other character Markdown could read as syntax is escaped (a test parses the
//! output back with pulldown-cmark and compares the text).

use std::fmt::Write as _;

use clap::{Arg, ArgAction, Command};

/// Where the reference lives, from the workspace root.
pub const PATH: &str = "docs/reference.md";

/// The variable that makes the test rewrite [`PATH`] instead of comparing.
pub const BLESS: &str = "WORMHOLE_BLESS";

/// The whole reference, as Markdown.
pub fn markdown() -> String {
    use clap::CommandFactory as _;
    let root = crate::cli::Cli::command();
    let mut out = String::new();
    out.push_str("# Command-line reference\n\n");
    let _ = writeln!(
        out,
        "<!-- Generated from the clap definition of the `wormhole` command line \
         (wormhole-daemon/src/cli.rs) by wormhole-daemon/src/reference.rs. Do not edit: \
         `{BLESS}=1 cargo test -p wormhole-daemon --bin wormhole reference` rewrites it, and \
         the same test without {BLESS} fails while it differs. -->\n"
    );
    out.push_str(
        "Every command of `wormhole`, every flag with its help, its default and the environment \
         variable that can set it. For `wormhole run`, every option can also be set in the TOML \
         file given with `--config` (the same names with `_` for `-`); the command line beats \
         the environment, which beats the file. What the options mean together (the peers \
         file, per-node annotations, the start-up checks) is in \
         [configuration.md](configuration.md). Every command also takes `-h`/`--help` (`-h` a \
         summary, `--help` all of it) and `-V`/`--version`.\n\n",
    );
    let commands: Vec<&Command> = root
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .collect();
    for cmd in &commands {
        let name = format!("wormhole {}", cmd.get_name());
        let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "- [`{name}`](#{}): {}",
            slug(&name),
            inline(&one_line(&about))
        );
    }
    out.push('\n');
    command(&mut out, &root, "wormhole", None);
    let root_after = root.get_after_help().map(|a| a.to_string());
    for cmd in commands {
        command(
            &mut out,
            cmd,
            &format!("wormhole {}", cmd.get_name()),
            root_after.as_deref(),
        );
    }
    out
}

/// One command's section. `root_after` is the root's after-help (the exit codes): a command
/// that repeats it says so instead of printing it again.
fn command(out: &mut String, cmd: &Command, name: &str, root_after: Option<&str>) {
    let _ = writeln!(out, "## `{name}`\n");
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        paragraphs(out, &about.to_string(), "");
    }
    let _ = writeln!(out, "Usage: `{}`\n", usage(cmd, name));
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !is_generated(a))
        .collect();
    // Groups in the order of their first flag, as `--help` shows them.
    let mut headings: Vec<Option<&str>> = Vec::new();
    for arg in &args {
        let heading = heading_of(arg);
        if !headings.contains(&heading) {
            headings.push(heading);
        }
    }
    let grouped = headings.iter().any(Option::is_some);
    for heading in headings {
        if grouped {
            let _ = writeln!(out, "### {}\n", inline(heading.unwrap_or("Options")));
        }
        for arg in args.iter().filter(|a| heading_of(a) == heading) {
            flag(out, arg);
        }
    }
    if let Some(after) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        let after = after.to_string();
        if root_after == Some(after.as_str()) {
            out.push_str("Exit codes: as for [`wormhole`](#wormhole).\n\n");
        } else {
            fenced(out, &after);
        }
    }
}

/// `--help` and `--version`, which clap adds to every command.
fn is_generated(arg: &Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

fn heading_of(arg: &Arg) -> Option<&str> {
    if arg.is_positional() {
        Some("Arguments")
    } else {
        arg.get_help_heading()
    }
}

/// `wormhole run [OPTIONS]`, `wormhole peer-config [OPTIONS] <NAME>`, `wormhole <COMMAND>`.
fn usage(cmd: &Command, name: &str) -> String {
    let mut usage = name.to_owned();
    if cmd
        .get_arguments()
        .any(|a| !a.is_positional() && !a.is_hide_set() && !is_generated(a))
    {
        usage.push_str(" [OPTIONS]");
    }
    for arg in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        let value = value_name(arg);
        if arg.is_required_set() {
            let _ = write!(usage, " {value}");
        } else {
            let _ = write!(usage, " [{value}]");
        }
    }
    if cmd.has_subcommands() {
        usage.push_str(" <COMMAND>");
    }
    usage
}

/// `<FILE|DIR>`, `<PEER_METRICS>`: what `--help` shows after the flag.
fn value_name(arg: &Arg) -> String {
    match arg.get_value_names() {
        Some(names) => names
            .iter()
            .map(|n| format!("<{n}>"))
            .collect::<Vec<_>>()
            .join(" "),
        None => format!("<{}>", arg.get_id().as_str().to_uppercase()),
    }
}

/// One flag: a list item with its name, environment variable and default, then its help and
/// its values.
fn flag(out: &mut String, arg: &Arg) {
    let mut name = String::new();
    if let Some(short) = arg.get_short() {
        let _ = write!(name, "-{short}");
    }
    if let Some(long) = arg.get_long() {
        if !name.is_empty() {
            name.push_str(", ");
        }
        let _ = write!(name, "--{long}");
    }
    if arg.get_action().takes_values() {
        if !name.is_empty() {
            name.push(' ');
        }
        name.push_str(&value_name(arg));
    }
    let mut facts = vec![format!("`{name}`")];
    if matches!(arg.get_action(), ArgAction::Append) {
        facts.push("repeatable".into());
    }
    if let Some(env) = arg.get_env() {
        let separated = if arg.get_value_delimiter().is_some() {
            " (comma-separated)"
        } else {
            ""
        };
        let boolean = if arg.get_action().takes_values() {
            ""
        } else {
            " (`true` or `false`)"
        };
        facts.push(format!(
            "env `{}`{separated}{boolean}",
            env.to_string_lossy()
        ));
    }
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    // The options `run` reads from a config file too have no clap default (a default would
    // hide the file's value): their help names it as `[default: ...]`, as `--help` shows it.
    let (help, written_default) = split_default(&help);
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .collect();
    if !defaults.is_empty() {
        facts.push(format!("default {}", defaults.join(", ")));
    } else if let Some(default) = written_default {
        facts.push(written(&default));
    }
    if arg.is_required_set() {
        facts.push("required".into());
    }
    let _ = writeln!(out, "- {}\n", facts.join(" · "));
    paragraphs(out, &help, "  ");
    // A switch's possible values are `true` and `false`: said with its variable.
    let values: Vec<_> = if arg.get_action().takes_values() {
        arg.get_possible_values()
            .into_iter()
            .filter(|v| !v.is_hide_set())
            .collect()
    } else {
        Vec::new()
    };
    if !values.is_empty() {
        out.push_str("  Values:\n\n");
        for value in values {
            match value.get_help() {
                Some(help) => {
                    let _ = writeln!(
                        out,
                        "  - `{}`: {}",
                        value.get_name(),
                        inline(&one_line(&help.to_string()))
                    );
                }
                None => {
                    let _ = writeln!(out, "  - `{}`", value.get_name());
                }
            }
        }
        out.push('\n');
    }
}

/// A default written in a help text: values (`wormhole0`, `/opt/cni/bin, /usr/lib/cni`) as
/// code, prose (`the host name`) as text.
fn written(default: &str) -> String {
    let parts: Vec<&str> = default.split(", ").collect();
    if parts
        .iter()
        .all(|p| !p.is_empty() && !p.contains([' ', '`']))
    {
        let values: Vec<String> = parts.iter().map(|p| format!("`{p}`")).collect();
        format!("default {}", values.join(", "))
    } else {
        format!("default: {}", inline(default))
    }
}

/// Splits a trailing or embedded `[default: ...]` off a help text.
fn split_default(help: &str) -> (String, Option<String>) {
    let Some(start) = help.find("[default: ") else {
        return (help.to_owned(), None);
    };
    let rest = &help[start + "[default: ".len()..];
    let Some(end) = rest.find(']') else {
        return (help.to_owned(), None);
    };
    let default = one_line(&rest[..end]);
    let mut text = help[..start].trim_end().to_owned();
    let after = rest[end + 1..].trim_start();
    if !after.is_empty() {
        if !text.is_empty() && !after.starts_with(['.', ',', ';', ':']) {
            text.push(' ');
        }
        text.push_str(after);
    }
    (text, Some(default))
}

/// Help text as Markdown paragraphs (blank lines separate them; lines within one are joined),
/// each line indented by `indent`.
fn paragraphs(out: &mut String, text: &str, indent: &str) {
    for para in text.split("\n\n") {
        let para = one_line(para);
        if para.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{indent}{}\n", block_safe(&inline(&para)));
    }
}

/// A preformatted block (the exit codes, `run`'s examples), in a fence longer than any run of
/// backticks inside.
fn fenced(out: &mut String, text: &str) {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    let _ = writeln!(out, "{fence}text\n{}\n{fence}\n", text.trim_end());
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Escapes what Markdown would read as inline syntax, keeping `code` spans as they are. A
/// backtick without its pair is escaped too.
pub fn inline(text: &str) -> String {
    let ticks = text.matches('`').count();
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_code = false;
    let mut seen = 0;
    for c in text.chars() {
        if c == '`' {
            seen += 1;
            // The last of an odd number has no pair: plain text.
            if ticks % 2 == 1 && seen == ticks {
                out.push_str("\\`");
            } else {
                in_code = !in_code;
                out.push(c);
            }
            continue;
        }
        if !in_code && "\\*_[]<>|~&#!".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes what would open a block at the start of a paragraph: a list (`-`, `+`, `1.`), a
/// setext underline or thematic break (`=`, `-`).
fn block_safe(line: &str) -> String {
    if line.starts_with(['-', '+', '=']) {
        return format!("\\{line}");
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 && line[digits..].starts_with(['.', ')']) {
        return format!("{}\\{}", &line[..digits], &line[digits..]);
    }
    line.to_owned()
}

/// GitHub's anchor for a heading: lowercased, punctuation other than `-` and `_` dropped,
/// spaces as `-`.
pub fn slug(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| {
            if c == ' ' {
                Some('-')
            } else if c.is_alphanumeric() || c == '-' || c == '_' {
                Some(c.to_lowercase().next().unwrap_or(c))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};

    fn workspace_file(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    }

    /// docs/reference.md is what the command line renders; `WORMHOLE_BLESS=1` rewrites it.
    #[test]
    fn the_reference_is_rendered_from_the_cli() {
        let rendered = markdown();
        let path = workspace_file(PATH);
        if std::env::var_os(BLESS).is_some_and(|v| v == "1") {
            std::fs::write(&path, &rendered).unwrap();
            return;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != rendered {
            let line = on_disk
                .lines()
                .zip(rendered.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| on_disk.lines().count().min(rendered.lines().count()));
            panic!(
                "{PATH} differs from the command line, from line {}:\n  file:     {:?}\n  \
                 rendered: {:?}\nRewrite it with {BLESS}=1 cargo test -p wormhole-daemon --bin \
                 wormhole reference",
                line + 1,
                on_disk.lines().nth(line).unwrap_or("<end>"),
                rendered.lines().nth(line).unwrap_or("<end>"),
            );
        }
    }

    /// The text of a Markdown fragment, as a reader sees it (code spans with their backticks).
    fn text_of(markdown: &str) -> String {
        let mut text = String::new();
        for event in Parser::new(markdown) {
            match event {
                Event::Text(t) => text.push_str(&t),
                Event::Code(c) => {
                    text.push('`');
                    text.push_str(&c);
                    text.push('`');
                }
                Event::SoftBreak => text.push(' '),
                Event::Start(Tag::Paragraph) | Event::End(TagEnd::Paragraph) => {}
                other => panic!("{markdown:?} renders {other:?}"),
            }
        }
        text
    }

    #[test]
    fn help_texts_come_out_as_written() {
        for text in [
            "a_b *c* [d](e) <f> `g_h *i*` x|y ~z~ &amp; #1 ![img](x) \\n",
            "an odd ` backtick",
            "- not a list",
            "1. not a list",
            "== not a heading",
            "`*.toml` files, `IP:PORT|IP`, <https://example.com>",
        ] {
            assert_eq!(text_of(&block_safe(&inline(text))), text, "{text:?}");
        }
    }

    /// Every help text of the command line (flags, values, commands) reads back as written.
    #[test]
    fn every_help_text_survives_the_markdown() {
        use clap::CommandFactory as _;
        fn each(cmd: &Command, texts: &mut Vec<String>) {
            texts.extend(cmd.get_about().map(|a| a.to_string()));
            texts.extend(cmd.get_long_about().map(|a| a.to_string()));
            for arg in cmd.get_arguments() {
                texts.extend(arg.get_help().map(|h| h.to_string()));
                texts.extend(arg.get_long_help().map(|h| h.to_string()));
                for value in arg.get_possible_values() {
                    texts.extend(value.get_help().map(|h| h.to_string()));
                }
            }
            for sub in cmd.get_subcommands() {
                each(sub, texts);
            }
        }
        let mut texts = Vec::new();
        each(&crate::cli::Cli::command(), &mut texts);
        assert!(texts.len() > 50, "{}", texts.len());
        for text in texts {
            for para in text.split("\n\n") {
                let para = one_line(para);
                assert_eq!(text_of(&block_safe(&inline(&para))), para);
            }
        }
    }

    #[test]
    fn defaults_written_in_the_help_are_split_off() {
        assert_eq!(
            split_default("WireGuard UDP port [default: 51820]."),
            ("WireGuard UDP port.".into(), Some("51820".into()))
        );
        assert_eq!(
            split_default("The sysctls [default: /proc/sys/net]; in a container, else"),
            (
                "The sysctls; in a container, else".into(),
                Some("/proc/sys/net".into())
            )
        );
        assert_eq!(split_default("no default"), ("no default".into(), None));
    }

    #[test]
    fn anchors_are_githubs() {
        assert_eq!(slug("wormhole peer-config"), "wormhole-peer-config");
        assert_eq!(
            slug("Per-node settings (Node annotations)"),
            "per-node-settings-node-annotations"
        );
        assert_eq!(
            slug("The whole cluster: `wormhole status --cluster` and `wormhole graph`"),
            "the-whole-cluster-wormhole-status---cluster-and-wormhole-graph"
        );
    }
}
