//! `wormhole run` refused at start: each error names its file or option and the real cause, and
//! nothing (a key file, a conflist, an interface) is left behind by a refused start. And the
//! files the agent persists are written whatever a crash left beside them (in a container the
//! agent is PID 1, so a name taken from the PID is always the same).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{BIN, Netns, new_key, poll, prefix, pubkey, root_or_skip, wait_timeout};

/// `ip` by its full path: a test runs it with a `PATH` that lacks `nft`.
fn ip() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("iproute2's ip")
}

/// A scratch node to start agents in (no default route, so no MTU can be detected), and a
/// directory for their files, readable by everyone (one case runs as `nobody`).
struct Scratch {
    ns: Netns,
    dir: tempfile::TempDir,
    iface: String,
}

impl Scratch {
    fn new() -> Self {
        let p = prefix();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch {
            ns: Netns::new(format!("{p}s")),
            dir,
            iface: format!("{p}w"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A valid peers file listing node `n1` with a new key.
    fn peers(&self) -> PathBuf {
        let peers = self.path("peers.toml");
        let key = self.path("n1.key");
        if !key.exists() {
            let public = new_key(&key);
            std::fs::write(
                &peers,
                format!(
                    "cluster_cidrs = [\"10.99.0.0/16\"]\n[[node]]\nname = \"n1\"\n\
                     public_key = \"{public}\"\npod_cidrs = [\"10.99.1.0/24\"]\n"
                ),
            )
            .unwrap();
        }
        peers
    }

    /// `wormhole run` for node n1 in the namespace, after `wrapper` (`setpriv ...`,
    /// `unshare ...`), with `env` set and our own `WORMHOLE_*`/`*BACKTRACE` variables removed.
    fn command(&self, wrapper: &[&str], env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut cmd = Command::new(ip());
        cmd.args(["netns", "exec", &self.ns.name])
            .args(wrapper)
            .args([BIN, "run", "--node-name", "n1", "--interface", &self.iface])
            .arg("--cni-conf-dir")
            .arg(self.path("cni"))
            .args(["--backend", "embedded", "--admin-addr", "127.0.0.1:0"])
            .args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("WORMHOLE_") || k.starts_with("KUBE") || k.ends_with("BACKTRACE") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        cmd
    }

    /// Runs a start that must be refused; returns its stderr, after checking that it left
    /// nothing behind: no key file at `key`, no conflist, no interface.
    fn refused(&self, wrapper: &[&str], env: &[(&str, &str)], args: &[&str], key: &Path) -> String {
        let mut child = self
            .command(wrapper, env, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(20));
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            status.is_some_and(|s| !s.success()),
            "wormhole run {args:?} was not refused: {err}"
        );
        assert!(
            !key.exists(),
            "{args:?}: a key file was created by a refused start: {err}"
        );
        assert!(
            !self.path("cni").exists(),
            "{args:?}: a conflist was written"
        );
        let link = self.ns.run(&["ip", "link", "show", &self.iface]);
        assert!(!link.status.success(), "{args:?}: an interface was created");
        err
    }
}

fn assert_names(err: &str, needles: &[&str]) {
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

#[test]
fn a_peers_file_that_cannot_be_used_stops_the_start_with_its_cause() {
    if !root_or_skip("a_peers_file_that_cannot_be_used_stops_the_start_with_its_cause") {
        return;
    }
    let s = Scratch::new();
    let good = s.peers();
    // A key directory anyone may write to: a regression would create the key there, even
    // as nobody.
    let keys = s.path("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o777)).unwrap();
    let key = keys.join("private.key");
    let key_arg = key.to_str().unwrap();
    let run = |wrapper: &[&str], peers: &Path| {
        s.refused(
            wrapper,
            &[],
            &["--peers", peers.to_str().unwrap(), "--key-file", key_arg],
            &key,
        )
    };

    // Missing.
    let missing = s.path("missing.toml");
    let err = run(&[], &missing);
    assert_names(
        &err,
        &[
            missing.to_str().unwrap(),
            "No such file or directory",
            "--peers",
        ],
    );
    assert!(!err.contains("MTU"), "{err}");

    // Unreadable: a path through a regular file.
    let through_file = good.join("peers.toml");
    let err = run(&[], &through_file);
    assert_names(&err, &[through_file.to_str().unwrap(), "Not a directory"]);

    // Unreadable: no permission (root reads anything: run as nobody).
    let locked = s.path("locked.toml");
    std::fs::copy(&good, &locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let err = run(&nobody, &locked);
    assert_names(&err, &[locked.to_str().unwrap(), "Permission denied"]);

    // Malformed: the line and what is wrong.
    let malformed = s.path("malformed.toml");
    std::fs::write(&malformed, "cluster_cidrs = [\"10.99.0.0/16\"]\n[[node]\n").unwrap();
    let err = run(&[], &malformed);
    assert_names(
        &err,
        &[
            malformed.to_str().unwrap(),
            "line 2",
            "invalid table header",
        ],
    );
    let unknown = s.path("unknown.toml");
    std::fs::write(&unknown, "[[nodes]]\nname = \"n1\"\n").unwrap();
    let err = run(&[], &unknown);
    assert_names(&err, &[unknown.to_str().unwrap(), "nodes"]);

    // A directory: a file in it that does not parse is refused alone (issue 20: one entry
    // never stops the others), so the start goes on with the good file, as far as the missing
    // default route here.
    let dir = s.path("peers.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&good, dir.join("a.toml")).unwrap();
    std::fs::write(dir.join("b.toml"), "[[node]]\nname = \n").unwrap();
    let err = run(&[], &dir);
    assert_names(&err, &["no interface with a default route", "--mtu"]);

    // And the good file starts (as far as the missing default route: the next test).
    assert!(!key.exists());
}

#[test]
fn key_psk_and_state_directory_errors_name_their_cause() {
    if !root_or_skip("key_psk_and_state_directory_errors_name_their_cause") {
        return;
    }
    let s = Scratch::new();
    let peers = s.peers();
    let peers = peers.to_str().unwrap();
    let refused = |args: &[&str], key: &Path| {
        let mut all = vec!["--peers", peers, "--mtu", "1400"];
        all.extend_from_slice(args);
        s.refused(&[], &[], &all, key)
    };

    // The key file is a directory.
    let dir = s.path("keydir");
    std::fs::create_dir(&dir).unwrap();
    let err = refused(&["--key-file", dir.to_str().unwrap()], &dir.join("x"));
    assert_names(
        &err,
        &["--key-file", dir.to_str().unwrap(), "not a regular file"],
    );

    // Its directory is a file.
    let through_file = Path::new(peers).join("private.key");
    let err = refused(
        &["--key-file", through_file.to_str().unwrap()],
        &through_file,
    );
    assert_names(&err, &["--key-file", "Not a directory"]);

    // Corrupt: said, and left as it is (not replaced by a new key).
    let corrupt = s.path("corrupt.key");
    std::fs::write(&corrupt, "not a key\n").unwrap();
    std::fs::set_permissions(&corrupt, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = s
        .command(&[], &[], &["--peers", peers, "--mtu", "1400"])
        .args(["--key-file", corrupt.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_timeout(&mut child, Duration::from_secs(20)).is_some_and(|s| !s.success()));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_names(
        &err,
        &["--key-file", corrupt.to_str().unwrap(), "not valid base64"],
    );
    assert_eq!(std::fs::read_to_string(&corrupt).unwrap(), "not a key\n");

    // A PSK file that is missing, or not a key: named, and no key created for it.
    let key = s.path("private.key");
    let key_arg = key.to_str().unwrap();
    let psk = s.path("psk");
    let err = refused(
        &["--key-file", key_arg, "--psk-file", psk.to_str().unwrap()],
        &key,
    );
    assert_names(
        &err,
        &[
            "--psk-file",
            psk.to_str().unwrap(),
            "no such file",
            "wg genpsk",
        ],
    );
    std::fs::write(&psk, "short\n").unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused(
        &["--key-file", key_arg, "--psk-file", psk.to_str().unwrap()],
        &key,
    );
    assert_names(&err, &["--psk-file", psk.to_str().unwrap()]);

    // A state directory that cannot be written (a read-only mount, in a mount namespace of
    // the agent's own).
    let state = s.path("state");
    std::fs::create_dir(&state).unwrap();
    let key = state.join("private.key");
    let script = format!(
        "mount --bind {d} {d} && mount -o remount,ro,bind {d} && exec \"$@\"",
        d = state.display()
    );
    let err = s.refused(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ],
        &[],
        &[
            "--peers",
            peers,
            "--mtu",
            "1400",
            "--key-file",
            key.to_str().unwrap(),
        ],
        &key,
    );
    assert_names(
        &err,
        &["--key-file", key.to_str().unwrap(), "Read-only file system"],
    );
}

#[test]
fn a_host_without_nft_is_refused_at_start() {
    if !root_or_skip("a_host_without_nft_is_refused_at_start") {
        return;
    }
    let s = Scratch::new();
    let peers = s.peers();
    let key = s.path("private.key");
    let err = s.refused(
        &[],
        &[("PATH", "/nonexistent")],
        &[
            "--peers",
            peers.to_str().unwrap(),
            "--mtu",
            "1400",
            "--key-file",
            key.to_str().unwrap(),
        ],
        &key,
    );
    assert_names(&err, &["nft", "is nftables installed?", "No such file"]);
}

/// No default route: the MTU cannot be detected, and the error says so (and what to set),
/// creating nothing; with `--mtu` nothing needs a default route. That start runs as PID 1 (as
/// in a container) beside what a crash during the first key creation left: the key is made.
#[test]
fn no_default_route_needs_only_mtu_and_a_crash_leftover_blocks_no_first_start() {
    if !root_or_skip("no_default_route_needs_only_mtu_and_a_crash_leftover_blocks_no_first_start") {
        return;
    }
    let s = Scratch::new();
    let peers = s.peers();
    let peers = peers.to_str().unwrap();
    let state = s.path("state");
    let key = state.join("private.key");
    let key_arg = key.to_str().unwrap();
    let err = s.refused(&[], &[], &["--peers", peers, "--key-file", key_arg], &key);
    assert_names(
        &err,
        &["cannot detect the underlay MTU", "default route", "--mtu"],
    );

    // The first key creation was killed half-way, in a container (PID 1).
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join(".private.key.tmp.1"), "hSDwCYkwp1R0i3").unwrap();
    let log = s.path("agent.log");
    let mut agent = s
        .command(
            &["unshare", "--pid", "--fork", "--kill-child"],
            &[],
            &["--peers", peers, "--key-file", key_arg, "--mtu", "1400"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = poll(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.contains("starting") || agent.try_wait().unwrap().is_some()).then_some(text)
    });
    // The agent is the child of unshare; stop it in order.
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children", pid = agent.id()))
            .unwrap_or_default();
    for pid in children.split_whitespace() {
        let _ = Command::new("kill").args(["-TERM", pid]).status();
    }
    if wait_timeout(&mut agent, Duration::from_secs(20)).is_none() {
        panic!("the agent did not stop on SIGTERM");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        started.is_some_and(|t| t.contains("starting")),
        "the agent did not start: {text}"
    );
    assert!(text.contains("created private key"), "{text}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = pubkey(&std::fs::read_to_string(&key).unwrap());
    assert!(text.contains(&public), "{text}");
}

/// `wormhole rotate-key` as PID 1 (in a container) beside what an earlier crash left under every
/// name a writer of ours used: the new key is written.
#[test]
fn rotate_key_as_pid_1_is_not_blocked_by_a_crash_leftover() {
    if !root_or_skip("rotate_key_as_pid_1_is_not_blocked_by_a_crash_leftover") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    let old = new_key(&key);
    for name in [".private.key.tmp.1", ".private.key.tmp.Ab3dE5gH7j"] {
        std::fs::write(dir.path().join(name), "half a k").unwrap();
    }
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", BIN, "rotate-key"])
        .arg("--key-file")
        .arg(&key)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rotate-key failed: {err}");
    let new = pubkey(&std::fs::read_to_string(&key).unwrap());
    assert_ne!(new, old);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), new);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
