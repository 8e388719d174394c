//! [`UapiDevice`]: a userspace implementation (wireguard-go, ...) over its UAPI socket.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use wormhole_core::DevicePlan;
use wormhole_core::ObservedDevice;
use wormhole_core::{Error, PrivateKey, WireGuardDevice};

use super::SOCKET_DIR;

/// A WireGuard device run by a userspace implementation (`wireguard-go` unless
/// `WG_USERSPACE_IMPLEMENTATION` names another), driven through its UAPI socket
/// `/var/run/wireguard/IFACE.sock` ([`SOCKET_DIR`](crate::SOCKET_DIR)).
///
/// Creating the device starts the implementation when its socket does not answer; it
/// daemonizes, so its data plane outlives this process (a restart drops no traffic) and an
/// existing one is adopted.
pub struct UapiDevice {
    iface: String,
    socket: PathBuf,
    /// The private key we last set (some implementations report only its public half).
    key: Mutex<Option<PrivateKey>>,
}

impl std::fmt::Debug for UapiDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UapiDevice")
            .field("iface", &self.iface)
            .finish_non_exhaustive()
    }
}

impl UapiDevice {
    /// The userspace device named `iface` (checked as an interface name).
    pub fn new(iface: &str) -> Result<Self, Error> {
        super::check_name(iface)?;
        Ok(UapiDevice {
            iface: iface.to_owned(),
            socket: super::socket_path(iface),
            key: Mutex::new(None),
        })
    }

    /// A UAPI socket that accepts connections (a stale file left by a dead process does not).
    fn socket_alive(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }
}

/// Why the userspace implementation `program` could not be started, and the fix.
fn spawn_error(program: &str, e: &std::io::Error) -> std::io::Error {
    let text = if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "{program} not found in PATH: install it (Debian: apt install wireguard-go) \
             or set WG_USERSPACE_IMPLEMENTATION"
        )
    } else {
        format!("cannot run {program}: {e} (set WG_USERSPACE_IMPLEMENTATION)")
    };
    std::io::Error::new(e.kind(), text)
}

/// Starts the userspace implementation for `iface` and waits for its UAPI socket.
fn start_userspace(iface: &str, socket: &Path) -> std::io::Result<()> {
    let program = std::env::var("WG_USERSPACE_IMPLEMENTATION")
        .or_else(|_| std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION"))
        .unwrap_or_else(|_| "wireguard-go".into());
    std::fs::create_dir_all(SOCKET_DIR)?;
    // wireguard-go daemonizes itself unless WG_PROCESS_FOREGROUND is set: the data plane then
    // survives the daemon.
    let output = std::process::Command::new(&program)
        .arg(iface)
        .env_remove("WG_PROCESS_FOREGROUND")
        .output()
        .map_err(|e| spawn_error(&program, &e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(std::io::Error::other(format!(
            "{program} exited with {}: {}",
            output.status,
            stderr.trim()
        )));
    }
    for _ in 0..150 {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(std::io::Error::other(format!(
        "{program} started but {} did not appear",
        socket.display()
    )))
}

#[async_trait]
impl WireGuardDevice for UapiDevice {
    fn kind(&self) -> &str {
        "userspace"
    }

    async fn read(&self) -> Result<Option<ObservedDevice>, Error> {
        let socket = self.socket.clone();
        let known = self.key.lock().unwrap().clone();
        super::read_with(&self.iface, move || {
            crate::uapi::get(&socket).map(|reply| super::claim_key(reply, known))
        })
        .await
    }

    async fn apply(&self, plan: &DevicePlan) -> Result<(), Error> {
        if plan.create && !self.socket_alive() {
            let (iface, socket) = (self.iface.clone(), self.socket.clone());
            super::blocking(&self.iface, "start userspace WireGuard for", move || {
                start_userspace(&iface, &socket)
            })
            .await?;
        }
        if plan.changes.is_empty() {
            return Ok(());
        }
        let (socket, request) = (self.socket.clone(), crate::uapi::set_request(&plan.changes));
        super::blocking(&self.iface, "configure", move || {
            crate::uapi::set(&socket, &request)
        })
        .await?;
        super::remember_key(&self.key, plan);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_userspace_implementation_names_the_fix() {
        let missing = std::process::Command::new("wormhole-test-no-such-program")
            .output()
            .unwrap_err();
        let e = spawn_error("wireguard-go", &missing);
        assert_eq!(
            e.to_string(),
            "wireguard-go not found in PATH: install it (Debian: apt install wireguard-go) \
             or set WG_USERSPACE_IMPLEMENTATION"
        );
    }
}
