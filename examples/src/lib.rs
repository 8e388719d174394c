//! Runnable examples: see `embed.rs` and `custom_peer_source.rs`.
