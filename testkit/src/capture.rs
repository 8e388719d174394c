//! Packet captures with tcpdump, and sorting what an underlay capture saw.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::process::{next, run};
use crate::time::{scaled, wait_timeout};

/// A running tcpdump, killed (and its file removed) on drop.
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Netns {
    /// Starts tcpdump on `iface` in this namespace; returns once it captures.
    pub fn capture(&self, iface: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("{}-{iface}-{}.pcap", self.name, next()));
        // Headers are all we look at. --immediate-mode hands over each packet as it comes (by
        // default the kernel batches them up to a second, and a stop loses the batch); -U
        // writes each one to the file at once.
        let mut child = self
            .command(&["tcpdump", "-i", iface])
            .args(["--immediate-mode", "-nn", "-U", "-s", "200", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // tcpdump says "listening on IFACE" once the capture is active.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening on") {
                    let _ = tx.send(Ok(()));
                }
                said.push(line);
            }
            let _ = tx.send(Err(said.join("\n")));
        });
        match rx.recv_timeout(scaled(Duration::from_secs(10))) {
            Ok(Ok(())) => Capture { child, file },
            Ok(Err(said)) => panic!("tcpdump on {iface} in {} failed: {said}", self.name),
            Err(e) => panic!("tcpdump on {iface} in {} did not start: {e}", self.name),
        }
    }
}

impl Capture {
    /// Stops the capture; returns one line per packet (`tcpdump -r FILE -nn`).
    pub fn stop(mut self) -> Vec<String> {
        // Let packets in flight reach the file: on a busy machine tcpdump lags, so wait until
        // the file has stopped growing for 300 ms (at most 5 s).
        let size = || std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let (mut last, mut still, started) = (size(), 0, Instant::now());
        while still < 3 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        let _ = run(&["kill", "-INT", &self.child.id().to_string()]);
        let _ = wait_timeout(&mut self.child, Duration::from_secs(5));
        let out = run(&["tcpdump", "-r", self.file.to_str().unwrap(), "-nn"]);
        assert!(
            out.status.success(),
            "tcpdump -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Sorts a capture of the underlay (`tcpdump -r -nn` lines): the number of WireGuard packets
/// (UDP between node addresses on port 51820), and every packet that is neither that nor the
/// underlay's ARP and IGMP, or that shows anything of the overlay.
pub fn underlay_offenders(lines: &[String]) -> (usize, Vec<&str>) {
    let mut wireguard = 0;
    let mut offenders = Vec::new();
    for line in lines {
        let t: Vec<&str> = line.split_whitespace().collect();
        let leaks = ["10.99.", "fd99", "ICMP", "Flags ["]
            .iter()
            .any(|n| line.contains(n));
        let is_wireguard = t.len() > 5
            && t[1] == "IP"
            && t[2].starts_with("192.168.77.")
            && t[2].ends_with(".51820")
            && t[3] == ">"
            && t[4].starts_with("192.168.77.")
            && t[4].ends_with(".51820:")
            && t[5].starts_with("UDP");
        // The underlay's own housekeeping: ARP, and IGMP reports of its interfaces.
        let housekeeping = t.get(1) == Some(&"ARP,")
            || (t.get(1) == Some(&"IP")
                && t.get(4).is_some_and(|d| d.starts_with("224.0.0."))
                && line.contains(": igmp "));
        if leaks || !(is_wireguard || housekeeping) {
            offenders.push(line.as_str());
        } else if is_wireguard {
            wireguard += 1;
        }
    }
    (wireguard, offenders)
}

/// Asserts a capture of the underlay holds only WireGuard (and ARP, IGMP); returns the WireGuard
/// packets.
pub fn assert_only_wireguard(lines: &[String]) -> usize {
    let (wireguard, offenders) = underlay_offenders(lines);
    assert!(
        offenders.is_empty(),
        "{} of {} packets on the underlay are not WireGuard UDP/51820, e.g.:\n{}",
        offenders.len(),
        lines.len(),
        offenders[..offenders.len().min(20)].join("\n")
    );
    wireguard
}
