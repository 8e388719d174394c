//! Embeds the commit the binary is built from, for `wormhole version` and `--version`:
//! `GIT_COMMIT` when set (an image or package build that has no `.git`), else `git rev-parse
//! HEAD` of this workspace's own checkout, else `unknown` (a source tarball, a crates.io
//! package, no git installed). Nothing else varies: no time, host or path is embedded, so two
//! builds of one commit give the same binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = match std::env::var("GIT_COMMIT") {
        Ok(given) => checked(given.trim()).unwrap_or_else(|| {
            panic!("GIT_COMMIT={given:?} is not a commit id (7 to 64 hexadecimal digits)")
        }),
        Err(_) => from_git().unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo:rustc-env=WORMHOLE_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=WORMHOLE_TARGET={target}");
}

/// A commit id: 7 to 64 lowercase hexadecimal digits (SHA-1 or SHA-256, or abbreviated).
fn checked(text: &str) -> Option<String> {
    let ok = (7..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| text.to_ascii_lowercase())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).ok())
        .flatten()
        .map(|s| s.trim().to_owned())
}

/// HEAD of the checkout this workspace is, if it is one: a crate unpacked inside some other
/// repository (vendored, say) must not report that repository's commit.
fn from_git() -> Option<String> {
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let workspace = crate_dir.parent()?;
    let top = PathBuf::from(git(workspace, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != workspace.canonicalize().ok()? {
        return None;
    }
    // Built again when HEAD moves: a checkout or a commit (the branch's ref, loose or packed).
    // (Files that exist only: cargo runs a build script again at every build for a missing one.)
    let branch = git(workspace, &["symbolic-ref", "-q", "HEAD"]);
    for file in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(workspace, &["rev-parse", "--git-path", file])
            .map(|path| workspace.join(path))
            .filter(|path| path.is_file())
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    checked(&git(workspace, &["rev-parse", "HEAD"])?)
}
