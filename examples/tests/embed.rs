//! `examples/embed.rs` runs to its end and shows what it promises: minimal plans (nothing for a
//! repeated snapshot, one peer and one route for a join) and the hostile claim refused. Run it
//! with `cargo test -p wormhole-examples`, which builds the example too.

use std::process::Command;

#[test]
fn the_embed_example_shows_minimal_plans_and_refuses_the_hostile_claim() {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    let out = Command::new(debug.join("examples").join("embed"))
        .output()
        .expect("the example is built by `cargo test -p wormhole-examples`");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", out.status);
    for want in [
        "2. the same snapshot again: nothing to do\nplan (0 changes):",
        "3. node-d joins: one peer, one route\nplan (2 changes):",
        "rejected: mallory (embed.rs): pod CIDR 10.99.4.0/24 overlaps 10.99.4.0/24 of node node-d",
        "The in-memory host now has 2 WireGuard peers, link up: true",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
