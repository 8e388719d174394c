//! End-to-end suite of the `wormhole` binary: nodes and pods in network namespaces, the real
//! CNI plugins, wireguard-go or the embedded device, and nothing of the crates' insides.
//!
//! Run as root: `sudo -E cargo test -p wormhole-daemon --test it` (without root the tests that
//! need namespaces print `SKIPPED <name>: needs root` and pass). The measurements behind
//! `BENCHMARKS.md` are an ignored test:
//! `cargo test -p wormhole-daemon --release --test it -- --ignored --nocapture measure`.

mod admin;
mod churn;
mod cli;
mod cluster;
mod container;
mod external;
mod harness;
mod health;
mod hostile;
mod kubernetes;
mod kubernetes_external;
mod kubernetes_settings;
mod manifests;
mod measure;
mod mesh;
mod migration;
mod nat;
mod preflight;
mod relay;
mod restart;
mod services;
mod startup;
mod uninstall;
