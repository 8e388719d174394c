//! The one integration-test binary of `wormhole-core`.

mod props;
mod reconciler;
