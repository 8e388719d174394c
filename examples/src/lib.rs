//! Runnable examples: see `embed.rs`, `embed_linux.rs` and `custom_peer_source.rs`.
