//! `wormhole man`: the manual pages, rendered by clap_mangen from the same definition of the
//! command line as the parser: `wormhole(1)` on stdout, or with `--dir` one page per command
//! (`wormhole.1`, `wormhole-run.1`, ...). No date is printed, so the pages of one commit are the
//! same bytes whenever they are made.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

/// `wormhole(1)`, as roff.
pub fn page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(crate::cli::Cli::command()).render(&mut out)?;
    Ok(out)
}

/// Writes `wormhole.1` and a page for every subcommand (`wormhole-run.1`, ...) into `dir`
/// (created if missing), and returns their paths.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn each(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            each(sub, dir, written)?;
        }
        written.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    // As clap_mangen::generate_to does it (subcommands named `wormhole-run`, ...), keeping the
    // paths.
    let mut cmd = crate::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    each(cmd, dir, &mut written)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Renders `page` with man(1) (`man -l`), as a user reads it, failing on any warning of
    /// groff's.
    fn rendered(page: &Path) -> String {
        let out = Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_STDERR", "1")
            .env("MANROFFOPT", "-ww")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .expect("man runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{page:?}: {stderr}"
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn the_pages_render_with_man() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("stdout.1");
        std::fs::write(&main, page().unwrap()).unwrap();
        let text = rendered(&main);
        for needle in [
            "NAME",
            "SYNOPSIS",
            "SUBCOMMANDS",
            "wormhole-run(1)",
            "wormhole-man(1)",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
        let pages = write_all(&dir.path().join("man1")).unwrap();
        let names: Vec<_> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        for name in [
            "wormhole.1",
            "wormhole-run.1",
            "wormhole-status.1",
            "wormhole-completion.1",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        let run = rendered(&dir.path().join("man1/wormhole-run.1"));
        for needle in ["--peer-metrics", "WORMHOLE_PEER_METRICS", "Examples:"] {
            assert!(run.contains(needle), "{needle} not in\n{run}");
        }
        // The same bytes every time: no date.
        assert_eq!(page().unwrap(), page().unwrap());
        let roff = String::from_utf8(page().unwrap()).unwrap();
        let title = roff.lines().find(|l| l.starts_with(".TH ")).unwrap();
        assert!(
            !title
                .split(|c: char| !c.is_ascii_digit())
                .any(|digits| digits.len() >= 4),
            "a date in {title:?}"
        );
    }
}
