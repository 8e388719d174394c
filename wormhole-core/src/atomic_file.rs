//! The one writer of every file the agent persists: see [`write_file_atomically`].

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::Error;

/// Who may read a file written by [`write_file_atomically`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileAccess {
    /// The owner only: `0600` from the moment the file exists, so a secret is never readable by
    /// anyone else, not even for an instant (a missing directory is created `0700`). Keys, the
    /// saved PSK, the saved Kubernetes state.
    Secret,
    /// Everyone may read it: `0644` (a missing directory is created `0755`). Configuration
    /// other programs read, such as the CNI conflist.
    Public,
}

impl FileAccess {
    fn file_mode(self) -> u32 {
        match self {
            FileAccess::Secret => 0o600,
            FileAccess::Public => 0o644,
        }
    }

    fn dir_mode(self) -> u32 {
        match self {
            FileAccess::Secret => 0o700,
            FileAccess::Public => 0o755,
        }
    }
}

/// How old a leftover temporary file must be before a write removes it. Far longer than any
/// write takes, so the file of a writer at work in another process (`wormhole rotate-key`
/// beside the agent) is never taken from it.
const STALE: Duration = Duration::from_secs(600);

/// Makes `path` hold exactly `contents`, atomically: a reader (or a crash at any moment) sees the
/// old file or the new one, never a part of either.
///
/// The contents go to a temporary file in the same directory, named `.NAME.tmp.` and random
/// characters and created exclusively (`O_EXCL`, never through a symlink planted at its name)
/// with the final mode; then fsync, rename over `path`, fsync of the directory. A missing
/// directory is created. No leftover of an earlier crash can block a write (an earlier writer
/// named its temporary file after its PID, which in a container is always 1): a taken name is
/// skipped for another random one, and leftovers of `path` older than ten minutes are removed
/// after a successful write. On error the temporary file is removed and `path` is untouched.
///
/// Blocking: call it from `spawn_blocking` in async code. Every file the agent persists goes
/// through here (the key, the saved PSK and Kubernetes state through [`write_secret_file`], the
/// CNI conflist).
///
/// [`write_secret_file`]: crate::write_secret_file
pub fn write_file_atomically(
    path: &Path,
    contents: &[u8],
    access: FileAccess,
) -> Result<(), Error> {
    let io = |action: &'static str, at: &Path| {
        let path = at.to_owned();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let Some(name) = path.file_name() else {
        return Err(io("write", path)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        )));
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(access.dir_mode())
        .create(dir)
        .map_err(|e| match std::fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "a file is in the way, not a directory",
            ),
            _ => e,
        })
        .map_err(io("create directory", dir))?;
    let prefix = leftover_prefix(name);
    // tempfile: a random name, retried while taken, created O_EXCL with this mode (0600 before a
    // byte is written), removed when dropped on any error below.
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(10)
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io("create a temporary file for", path))?;
    if access == FileAccess::Public {
        // An exact mode, whatever the umask.
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(access.file_mode()))
            .map_err(io("set the mode of a temporary file for", path))?;
    }
    file.write_all(contents).map_err(io("write", path))?;
    file.as_file().sync_all().map_err(io("sync", path))?;
    file.persist(path)
        .map_err(|e| io("rename a temporary file to", path)(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))?;
    remove_stale_leftovers(dir, &prefix);
    Ok(())
}

/// The beginning of the name of every temporary file written for a file named `name`, by this
/// writer (`.NAME.tmp.` + random) and by the writers before it (`.NAME.tmp.PID`).
fn leftover_prefix(name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp.");
    prefix
}

/// Removes the temporary files for the same file left by crashes (older than [`STALE`]), so
/// they do not pile up; best effort.
fn remove_stale_leftovers(dir: &Path, prefix: &OsStr) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !entry.file_name().as_bytes().starts_with(prefix.as_bytes()) {
            continue;
        }
        // Not following a symlink: its own age, and remove_file removes the link itself.
        let Ok(meta) = entry.metadata() else { continue };
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= STALE);
        if stale && !meta.is_dir() {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(),
                    "removed a temporary file left by an earlier crash"),
                Err(e) => tracing::debug!(path = %path.display(), error = %e,
                    "cannot remove a temporary file left by an earlier crash"),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Every name a temporary file of ours could have had: the old writer's (PID-named: ours,
    /// and 1, the agent's PID in a container) and this writer's (random), as files (empty,
    /// half-written, unreadable), a symlink to a file of someone else, a directory.
    pub(crate) fn plant_leftovers(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
        let pid = std::process::id();
        let at = |suffix: &str| dir.join(format!(".{name}.tmp.{suffix}"));
        let planted = vec![
            at(&pid.to_string()),
            at("1"),
            at("kQ3vZ8wXy1"),
            at("a"),
            at("dir"),
        ];
        std::fs::write(&planted[0], "half of a ke").unwrap();
        std::os::unix::fs::symlink(dir.join("victim"), &planted[1]).unwrap();
        std::fs::write(&planted[2], "").unwrap();
        std::fs::write(&planted[3], "x").unwrap();
        std::fs::set_permissions(&planted[3], std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::create_dir(&planted[4]).unwrap();
        std::fs::write(dir.join("victim"), "precious").unwrap();
        planted
    }

    /// Sets the modification time of `path` (not following a symlink) `age` into the past.
    fn age(path: &Path, age: Duration) {
        let then = nix::sys::time::TimeSpec::from(
            (SystemTime::now() - age)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap(),
        );
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &then,
            &then,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    #[test]
    fn leftovers_of_any_name_never_block_a_write() {
        for access in [FileAccess::Secret, FileAccess::Public] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("file");
            let planted = plant_leftovers(dir.path(), "file");
            // First creation, and replacement, both with the leftovers in place.
            write_file_atomically(&path, b"one", access).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"one");
            write_file_atomically(&path, b"two", access).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"two");
            assert_eq!(mode(&path), access.file_mode(), "{access:?}");
            assert_eq!(
                std::fs::read_to_string(dir.path().join("victim")).unwrap(),
                "precious",
                "a leftover symlink was followed"
            );
            // Recent leftovers may belong to a writer at work elsewhere: left alone.
            assert!(planted.iter().all(|p| p.symlink_metadata().is_ok()));
            // Only the file and the leftovers: nothing of ours was left beside them.
            assert_eq!(names(dir.path()).len(), planted.len() + 2);
        }
    }

    #[test]
    fn stale_leftovers_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        let planted = plant_leftovers(dir.path(), "private.key");
        // Not ours: another file's leftover, and a file whose name only looks alike.
        let other = dir.path().join(".state.json.tmp.1");
        let alike = dir.path().join("private.key.tmp.1");
        for p in [&other, &alike] {
            std::fs::write(p, "theirs").unwrap();
        }
        for p in planted.iter().chain([&other, &alike]) {
            age(p, STALE + Duration::from_secs(1));
        }
        write_file_atomically(&path, b"key", FileAccess::Secret).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                ".private.key.tmp.dir",
                ".state.json.tmp.1",
                "private.key",
                "private.key.tmp.1",
                "victim"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("victim")).unwrap(),
            "precious"
        );
    }

    /// A write that fails half-way (here: the disk is full) leaves the old file whole and no
    /// temporary file; the next write goes through.
    #[test]
    fn a_failed_write_leaves_the_old_file_whole() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!(
                "SKIPPED a_failed_write_leaves_the_old_file_whole: needs root (mounts a tmpfs)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path().join("fs");
        std::fs::create_dir(&fs).unwrap();
        // A tmpfs of 64 KiB, in a mount namespace of a child process so the host sees nothing.
        let script = format!(
            "set -e; mount -t tmpfs -o size=64k tmpfs {fs}; \
             printf old > {fs}/state.json; \
             exec \"$0\" --exact atomic_file::tests::a_failed_write_child --nocapture",
            fs = fs.display()
        );
        let out = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .arg(std::env::current_exe().unwrap())
            .env("WORMHOLE_TEST_FULL_FS", &fs)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The half of [`a_failed_write_leaves_the_old_file_whole`] that runs inside its mount
    /// namespace (does nothing elsewhere).
    #[test]
    fn a_failed_write_child() {
        let Some(fs) = std::env::var_os("WORMHOLE_TEST_FULL_FS") else {
            return;
        };
        let path = Path::new(&fs).join("state.json");
        let err = write_file_atomically(&path, &vec![b'x'; 1 << 20], FileAccess::Secret)
            .unwrap_err()
            .to_string();
        assert!(err.contains("No space left on device"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(names(Path::new(&fs)), ["state.json"]);
        write_file_atomically(&path, b"new", FileAccess::Secret).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn a_missing_directory_is_created_private_for_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/private.key");
        write_file_atomically(&path, b"k", FileAccess::Secret).unwrap();
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        assert_eq!(mode(&path), 0o600);
        let conf = dir.path().join("net.d/10-x.conflist");
        write_file_atomically(&conf, b"{}", FileAccess::Public).unwrap();
        assert_eq!(mode(&dir.path().join("net.d")), 0o755);
        assert_eq!(mode(&conf), 0o644);
        // A path component that is a file: the error names the directory.
        let err = write_file_atomically(&path.join("x"), b"k", FileAccess::Secret)
            .unwrap_err()
            .to_string();
        assert!(err.contains("private.key: a file is in the way"), "{err}");
    }
}
