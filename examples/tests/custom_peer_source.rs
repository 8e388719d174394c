//! `examples/custom_peer_source.rs` runs to its end by itself: three lists from its discovery
//! server become three plans (the source yields a list every 100 ms; the reconciler passes over
//! the repeats), the bad line is rejected on its own, and when the server goes away
//! the source fails and the last good mesh stays. Run it with `cargo test -p wormhole-examples`,
//! which builds the example too (`--test custom_peer_source` alone does not).

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_custom_source_example_follows_its_server_and_exits() {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    let mut child = Command::new(debug.join("examples").join("custom_peer_source"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("the example is built by `cargo test -p wormhole-examples`");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the example did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{status}\n{out}");
    assert_eq!(out.matches("\nplan:\n").count(), 3, "{out}");
    for line in [
        "+ peer ",
        "- peer ",
        "expected 4 fields, found 2",
        "source error: peer source: GET http://127.0.0.1:",
        "the host keeps its last good mesh: 1 WireGuard peer(s)",
    ] {
        assert!(out.contains(line), "{line:?} missing in\n{out}");
    }
}
