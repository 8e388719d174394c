//! The agent's presence on a node, told by a lock: every running agent holds a *shared* lock on
//! `agent.lock` in its state directory (`/var/lib/wormhole`), and `wormhole uninstall` takes it
//! *exclusively*, so it can tell that an agent runs (and refuse) without a PID file that a
//! crash would leave stale: the kernel drops a lock with the last descriptor of its process.
//! Shared, so that two agents at once (an old and a new one during an upgrade) never exclude
//! each other. Works across containers as long as they mount the same host directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The lock file's name in the state directory.
pub(crate) const LOCK_FILE: &str = "agent.lock";

/// A held lock (released when dropped, or when the process ends however it ends).
#[derive(Debug)]
pub(crate) struct Held {
    _file: File,
}

/// Opens (creating it 0600, empty) the lock file in `dir`. Nothing is ever written to it.
fn open(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
}

/// The lock path in `dir`, for messages.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE)
}

/// What a running agent holds: a shared lock in `dir`. Fails when `dir` is not writable or an
/// uninstall holds the lock right now.
pub(crate) fn hold_shared(dir: &Path) -> std::io::Result<Held> {
    let file = open(dir)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(Held { _file: file }),
        Err(TryLockError::WouldBlock) => Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "{} is held by `wormhole uninstall` right now",
                path(dir).display()
            ),
        )),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// What `wormhole uninstall` takes: the lock in `dir` exclusively. `Ok(None)`: an agent holds
/// it (it runs on this node). A missing `dir` has no agent to hold anything: `Ok(Some)` with
/// no file made.
pub(crate) fn try_exclusive(dir: &Path) -> std::io::Result<Option<Option<Held>>> {
    if !dir.is_dir() {
        return Ok(Some(None));
    }
    let file = open(dir)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Some(Held { _file: file }))),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_share_the_lock_and_an_uninstall_excludes_them() {
        let dir = tempfile::tempdir().unwrap();
        let one = hold_shared(dir.path()).unwrap();
        let two = hold_shared(dir.path()).expect("an old and a new agent at once");
        assert!(
            try_exclusive(dir.path()).unwrap().is_none(),
            "agents run: uninstall must see them"
        );
        drop(one);
        assert!(
            try_exclusive(dir.path()).unwrap().is_none(),
            "one still runs"
        );
        drop(two);
        let uninstall = try_exclusive(dir.path()).unwrap().expect("no agent left");
        assert!(uninstall.is_some());
        let err = hold_shared(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("held by `wormhole uninstall`"),
            "{err}"
        );
        drop(uninstall);
        hold_shared(dir.path()).expect("uninstall done");
    }

    #[test]
    fn a_missing_state_directory_has_no_agent_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("wormhole");
        assert!(matches!(try_exclusive(&missing), Ok(Some(None))));
        assert!(!missing.exists());
    }
}
