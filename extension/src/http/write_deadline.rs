//! [`WriteDeadline`]: the stream under every accepted connection, bounding its writes and
//! telling the accept loop whether the connection waits on its client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::{Clock, Slot};

/// A stream whose writes fail with `TimedOut` once one has been pending for `timeout`: the
/// peer stopped reading. Reads are untouched (the sweeper's header timeout bounds them); they and
/// the writes only tell the accept loop whether the connection waits on its client.
#[derive(Debug)]
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Option<Duration>,
    stalled: Option<Pin<Box<Sleep>>>,
    /// The connection's slot and its listener's clock: a write that makes progress restarts
    /// its header timeout (an answer still going out is not a client gone quiet).
    slot: Option<(Arc<Slot>, Arc<Clock>)>,
}

impl<S> WriteDeadline<S> {
    /// `inner` with writes bounded by `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout: Some(timeout), stalled: None, slot: None }
    }

    pub(super) fn watched(inner: S, timeout: Option<Duration>, slot: Arc<Slot>, clock: Arc<Clock>) -> Self {
        Self { inner, timeout, stalled: None, slot: Some((slot, clock)) }
    }

    /// Bytes of an answer went out: its header timeout starts over (only real writes count: a
    /// flush with nothing to write, which hyper makes after every read, must not, or a client
    /// sending its head a byte at a time would never time out).
    fn progressed(&self, polled: &Poll<io::Result<usize>>) {
        if let (Some((slot, clock)), Poll::Ready(Ok(written))) = (&self.slot, polled)
            && *written > 0
        {
            slot.stamp(clock);
        }
    }

    /// After a write-side poll: progress clears the stall; pending starts (or checks) it.
    fn bound<T>(&mut self, polled: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if let Some((slot, _)) = &self.slot {
            slot.write_stalled.store(polled.is_pending(), Ordering::Release);
        }
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let Some(timeout) = self.timeout else { return polled };
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading")))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some((slot, _)) = &self.slot {
            slot.read_dry.store(polled.is_pending(), Ordering::Release);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(&polled);
        self.bound(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(&polled);
        self.bound(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound(polled, cx)
    }
}
