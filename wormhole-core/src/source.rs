//! Peer sources as streams: see [`PeerStream`].

use std::pin::Pin;

use async_trait::async_trait;
use futures::{Stream, StreamExt as _};

use crate::Error;
use crate::mesh::Snapshot;

/// Peer sources: where the desired mesh comes from (a peers file, Kubernetes, or your own
/// discovery).
///
/// A source is any [`Stream`] of `Result<Snapshot, E>` (futures' `Stream`; `tokio_stream`,
/// `futures::stream::unfold` or a channel make one), handed to
/// [`Reconciler::run`](crate::Reconciler::run). `E` is any error that converts into
/// `Box<dyn std::error::Error + Send + Sync>` (your own error type, `std::io::Error`, a
/// `String`, ...): it becomes [`Error::Source`], except a [`wormhole_core::Error`](Error),
/// which is kept as it is (not wrapped twice).
///
/// The contract is small, because the reconciler owns the rest:
/// - Yield a whole [`Snapshot`] whenever the picture may have changed. Repeating an equal
///   snapshot is free: it causes no pass (**deduplication**).
/// - Snapshots that follow each other closely are taken together: one pass, for the last one
///   (**debouncing**, [`Settings::debounce`](crate::Settings::debounce), 25 ms by default).
/// - Yield an error when the picture cannot be had: the last good mesh stays in force, the
///   error is shown in [`Status::source_error`](crate::Status::source_error), and the
///   reconciler polls the source again one second later. The error is **cleared by the next
///   snapshot that makes a valid mesh, equal to the mesh in force or not**: a source need not
///   remember that it failed, it yields its picture again when it has one.
/// - An error right behind a snapshot no pass has taken yet does not discard it: the snapshot
///   is applied and the error shown.
/// - A stream that ends leaves the last good mesh in force (and is logged as an error).
///
/// ```
/// use futures::StreamExt as _;
/// use wormhole_core::Snapshot;
///
/// // Any stream: here, a snapshot every time a channel delivers one.
/// let (tx, rx) = tokio::sync::mpsc::channel::<Snapshot>(4);
/// let source = futures::stream::unfold(rx, |mut rx| async move {
///     let snapshot = rx.recv().await?;
///     Some((Ok::<_, std::io::Error>(snapshot), rx))
/// });
/// let boxed: wormhole_core::PeerStream = wormhole_core::peer_stream(source);
/// # drop((tx, boxed));
/// ```
///
/// A source written against the [`PeerSource`] trait (an `async fn next`) becomes a stream with
/// [`from_peer_source`].
///
/// A peer source with its error type erased: what an agent stores.
pub type PeerStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Error>> + Send>>;

/// `stream`, boxed, its errors converted as [`Reconciler::run`](crate::Reconciler::run) does.
pub fn peer_stream<S, E>(stream: S) -> PeerStream
where
    S: Stream<Item = Result<Snapshot, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Box::pin(stream.map(|item| item.map_err(source_error)))
}

/// A source error as the reconciler keeps it: a [`wormhole_core::Error`](Error) as it is,
/// anything else as [`Error::Source`].
pub(crate) fn source_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    match e.into().downcast::<Error>() {
        Ok(ours) => *ours,
        Err(theirs) => Error::Source(theirs),
    }
}

/// A source as a trait, for sources more naturally written as a loop around `await`
/// ([`FilePeerSource`](crate::FilePeerSource), the Kubernetes source). Turn it into a stream with
/// [`from_peer_source`]. Writing a [`Stream`] instead needs no `async-trait`.
///
/// `next` need not be cancel-safe: the stream [`from_peer_source`] makes keeps an unfinished
/// call and resumes it.
#[async_trait]
pub trait PeerSource: Send {
    /// Waits until the desired picture may have changed and returns it whole. The first call
    /// returns as soon as a snapshot is available. See the [`PeerStream`] docs for what the
    /// reconciler does with it (equal snapshots are dropped, errors cleared by the next good
    /// snapshot).
    async fn next(&mut self) -> Result<Snapshot, Error>;
}

#[async_trait]
impl<S: PeerSource + ?Sized> PeerSource for Box<S> {
    async fn next(&mut self) -> Result<Snapshot, Error> {
        (**self).next().await
    }
}

/// The stream of what `source.next()` returns, call after call.
pub fn from_peer_source<P: PeerSource + 'static>(source: P) -> PeerStream {
    Box::pin(futures::stream::unfold(source, |mut source| async move {
        let item = source.next().await;
        Some((item, source))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("their error")]
    struct Theirs;

    #[test]
    fn errors_convert_once() {
        let ours = Error::PeersFile {
            path: "p".into(),
            message: "m".into(),
        };
        assert!(matches!(source_error(ours), Error::PeersFile { .. }));
        let e = source_error(Theirs);
        assert_eq!(e.to_string(), "peer source: their error");
        assert_eq!(
            source_error("plain text").to_string(),
            "peer source: plain text"
        );
    }
}
