//! IP forwarding. Pods on other nodes are reached by routing, so this node's pods need
//! forwarding on for their families (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`).
//! The agent checks it at every pass and turns it on when it is off (at the first pass, and again
//! if someone turned it off); what it cannot turn on goes into
//! [`Status::forwarding_off`](wormhole_core::Status::forwarding_off), which makes the node not
//! ready, and into the log once.
//!
//! A container's `/proc/sys` is read-only. The DaemonSet therefore mounts the host's
//! `/proc/sys/net` at another path and names it with `--proc-sys-net`: network sysctls belong to
//! the network namespace of the process that opens them (the host's, with `hostNetwork`), and
//! writing them takes `CAP_NET_ADMIN`, which the agent holds anyway. No privileged container.

use std::path::PathBuf;

use ipnet::IpNet;
use tokio::sync::watch;
use wormhole_core::{ForwardingOff, Status};

/// The two sysctls: name, path under the `net` directory, IPv6.
const SYSCTLS: [(&str, &str, bool); 2] = [
    ("net.ipv4.ip_forward", "ipv4/ip_forward", false),
    (
        "net.ipv6.conf.all.forwarding",
        "ipv6/conf/all/forwarding",
        true,
    ),
];

/// What a sysctl was found to be at the latest check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    On,
    Off(String),
}

/// Keeps forwarding on in the host's network sysctls at `dir` (`/proc/sys/net` by default).
#[derive(Debug)]
pub(crate) struct Forwarding {
    dir: PathBuf,
    /// The latest finding of each sysctl (index into [`SYSCTLS`]), to log changes once.
    last: [Option<Found>; 2],
}

impl Forwarding {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Forwarding {
            dir,
            last: [None, None],
        }
    }

    /// Turns forwarding on for the families of `pod_cidrs`; returns what stays off, and why.
    pub(crate) fn ensure(&mut self, pod_cidrs: &[IpNet]) -> Vec<ForwardingOff> {
        let mut off = Vec::new();
        for (i, (sysctl, rel, v6)) in SYSCTLS.into_iter().enumerate() {
            if !pod_cidrs.iter().any(|c| matches!(c, IpNet::V6(_)) == v6) {
                self.last[i] = None;
                continue;
            }
            let path = self.dir.join(rel);
            let found = match std::fs::read_to_string(&path) {
                Ok(value) if value.trim() == "1" => Found::On,
                Ok(_) => match std::fs::write(&path, "1") {
                    Ok(()) => {
                        if self.last[i] == Some(Found::On) {
                            tracing::warn!(sysctl, path = %path.display(),
                                "IP forwarding was turned off by someone else; turned it on again");
                        } else {
                            tracing::info!(sysctl, path = %path.display(), "enabled IP forwarding");
                        }
                        Found::On
                    }
                    Err(e) => Found::Off(format!("cannot write {}: {e}", path.display())),
                },
                Err(e) => Found::Off(format!("cannot read {}: {e}", path.display())),
            };
            match (&found, &self.last[i]) {
                (Found::Off(reason), last) if last.as_ref() != Some(&found) => {
                    tracing::warn!(sysctl, %reason,
                        "IP forwarding is off and cannot be turned on: pods will not reach other \
                         nodes, and the node is not ready. In a container (read-only /proc/sys), \
                         mount the host's /proc/sys/net and name it with --proc-sys-net \
                         (deploy/daemonset.yaml does); elsewhere, run as root or set the sysctl");
                }
                (Found::On, Some(Found::Off(_))) => {
                    tracing::info!(sysctl, "IP forwarding is on again");
                }
                _ => {}
            }
            if let Found::Off(reason) = &found {
                off.push(ForwardingOff::new(sysctl, reason.clone()));
            }
            self.last[i] = Some(found);
        }
        off
    }
}

/// Keeps `out` equal to `status` with forwarding checked (and turned on) at every change of it,
/// that is at every pass.
pub(crate) async fn follow(
    mut status: watch::Receiver<Status>,
    mut forwarding: Forwarding,
    out: watch::Sender<Status>,
) {
    loop {
        let mut current = status.borrow_and_update().clone();
        current.forwarding_off = forwarding.ensure(&current.pod_cidrs);
        out.send_replace(current);
        if status.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    /// A `net` directory with both sysctls at `v4` and `v6`.
    fn net_dir(v4: &str, v6: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ipv4")).unwrap();
        std::fs::create_dir_all(dir.path().join("ipv6/conf/all")).unwrap();
        std::fs::write(dir.path().join("ipv4/ip_forward"), v4).unwrap();
        std::fs::write(dir.path().join("ipv6/conf/all/forwarding"), v6).unwrap();
        dir
    }

    fn read(dir: &tempfile::TempDir, rel: &str) -> String {
        std::fs::read_to_string(dir.path().join(rel)).unwrap()
    }

    #[test]
    fn turns_on_the_families_of_the_pod_cidrs_only() {
        let dir = net_dir("0\n", "0\n");
        let mut f = Forwarding::new(dir.path().to_owned());
        assert!(f.ensure(&cidrs(&["10.99.1.0/24"])).is_empty());
        assert_eq!(read(&dir, "ipv4/ip_forward"), "1");
        assert_eq!(
            read(&dir, "ipv6/conf/all/forwarding"),
            "0\n",
            "no IPv6 pods"
        );
        assert!(
            f.ensure(&cidrs(&["10.99.1.0/24", "fd99:0:0:1::/64"]))
                .is_empty()
        );
        assert_eq!(read(&dir, "ipv6/conf/all/forwarding"), "1");
        // No pod CIDRs (none allocated yet): nothing needed, nothing touched.
        let dir = net_dir("0", "0");
        let mut f = Forwarding::new(dir.path().to_owned());
        assert!(f.ensure(&[]).is_empty());
        assert_eq!(read(&dir, "ipv4/ip_forward"), "0");
    }

    #[test]
    fn turned_off_by_someone_else_is_turned_on_again() {
        let dir = net_dir("1", "1");
        let mut f = Forwarding::new(dir.path().to_owned());
        let both = cidrs(&["10.99.1.0/24", "fd99:0:0:1::/64"]);
        assert!(f.ensure(&both).is_empty());
        std::fs::write(dir.path().join("ipv4/ip_forward"), "0").unwrap();
        assert!(f.ensure(&both).is_empty());
        assert_eq!(read(&dir, "ipv4/ip_forward"), "1");
    }

    #[test]
    fn what_cannot_be_turned_on_is_reported_with_the_reason() {
        // No such directory (as when --proc-sys-net names nothing): both off, each saying why.
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarding::new(dir.path().join("missing"));
        let off = f.ensure(&cidrs(&["10.99.1.0/24", "fd99:0:0:1::/64"]));
        assert_eq!(off.len(), 2, "{off:?}");
        assert_eq!(off[0].sysctl, "net.ipv4.ip_forward");
        assert!(
            off[0].reason.starts_with("cannot read ") && off[0].reason.contains("ipv4/ip_forward"),
            "{}",
            off[0].reason
        );
        assert_eq!(off[1].sysctl, "net.ipv6.conf.all.forwarding");
        // A sysctl that is off and cannot be written (a read-only /proc/sys is EROFS; here a
        // directory in the file's place, which no write can replace).
        let dir = net_dir("0", "1");
        std::fs::remove_file(dir.path().join("ipv4/ip_forward")).unwrap();
        std::fs::create_dir(dir.path().join("ipv4/ip_forward")).unwrap();
        let mut f = Forwarding::new(dir.path().to_owned());
        let off = f.ensure(&cidrs(&["10.99.1.0/24", "fd99:0:0:1::/64"]));
        assert_eq!(off.len(), 1, "{off:?}");
        assert!(
            off[0].reason.starts_with("cannot read "),
            "{}",
            off[0].reason
        );
    }

    #[tokio::test]
    async fn the_status_carries_what_is_off_so_the_node_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = watch::channel(Status::default());
        let (out, mut seen) = watch::channel(Status::default());
        let task = tokio::spawn(follow(rx, Forwarding::new(dir.path().join("missing")), out));
        tx.send_modify(|s| {
            s.configured = true;
            s.device_present = true;
            s.pod_cidrs = cidrs(&["10.99.1.0/24"]);
        });
        let status = seen
            .wait_for(|s| s.configured)
            .await
            .expect("the task publishes")
            .clone();
        assert!(!status.ready());
        assert_eq!(status.forwarding_off[0].sysctl, "net.ipv4.ip_forward");
        task.abort();
    }
}
