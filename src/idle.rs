//! When a client connection counts as idle, and so is closed after `[server] idle_timeout`.
//!
//! Two clocks, and a connection is idle when either has run for the timeout:
//!
//! - **No byte moved** either way. This is what cuts off a stalled transfer, and a keep-alive
//!   HTTP/1.1 connection on which nothing happens.
//! - **No request open**, and none opened or ended. Bytes alone are not enough on HTTP/2: a
//!   client may send a PING (or SETTINGS, or WINDOW_UPDATE) every few minutes and so hold a
//!   connection, and one place under `max_connections`, without ever sending a request, let
//!   alone a token. A request is open from the moment hyper hands it to gitgate until its
//!   response body has been sent or dropped.
//!
//! Nothing here limits the total time of a request: a clone that keeps streaming keeps its
//! connection however long it takes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gate::ResponseBody;

/// How long a connection has been idle, in milliseconds since it opened: the longer of the
/// time since its last byte and, when no request is open, the time since the last one opened
/// or ended (`quiet_since_ms`).
pub fn idle_ms(now_ms: u64, last_byte_ms: u64, open_requests: usize, quiet_since_ms: u64) -> u64 {
    let bytes = now_ms.saturating_sub(last_byte_ms);
    if open_requests > 0 {
        return bytes;
    }
    bytes.max(now_ms.saturating_sub(quiet_since_ms))
}

/// One connection's clocks, shared by its byte stream, its requests and its idle timer.
#[derive(Clone)]
pub struct Activity(Arc<Clocks>);

struct Clocks {
    start: Instant,
    last_byte_ms: AtomicU64,
    open_requests: AtomicUsize,
    quiet_since_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Activity(Arc::new(Clocks {
            start: Instant::now(),
            last_byte_ms: AtomicU64::new(0),
            open_requests: AtomicUsize::new(0),
            quiet_since_ms: AtomicU64::new(0),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.0.start.elapsed().as_millis() as u64
    }

    fn byte_moved(&self) {
        self.0.last_byte_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long the connection has been idle (see the module doc).
    pub fn idle(&self) -> Duration {
        Duration::from_millis(idle_ms(
            self.now_ms(),
            self.0.last_byte_ms.load(Ordering::Relaxed),
            self.0.open_requests.load(Ordering::Acquire),
            self.0.quiet_since_ms.load(Ordering::Acquire),
        ))
    }

    /// A request has come in; it stays open until the returned value is dropped.
    pub fn request_opened(&self) -> OpenRequest {
        self.0.open_requests.fetch_add(1, Ordering::AcqRel);
        OpenRequest(self.clone())
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// A request of the connection that has not finished yet.
pub struct OpenRequest(Activity);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let clocks = &self.0 .0;
        // The quiet clock first: whoever sees the count at zero also sees when it got there.
        clocks
            .quiet_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        clocks.open_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request open until it has been sent or dropped.
pub struct OpenBody {
    inner: ResponseBody,
    _open: OpenRequest,
}

impl OpenBody {
    pub fn new(inner: ResponseBody, open: OpenRequest) -> Self {
        OpenBody { inner, _open: open }
    }
}

impl Body for OpenBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's byte stream, noting every successful read or write.
pub struct ActivityIo<IO> {
    inner: IO,
    activity: Activity,
}

impl<IO> ActivityIo<IO> {
    pub fn new(inner: IO, activity: Activity) -> Self {
        ActivityIo { inner, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ActivityIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.byte_moved();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ActivityIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.byte_moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.byte_moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_moving_do_not_keep_a_connection_without_requests() {
        // PINGs every second, no request since the connection opened at 0.
        assert_eq!(idle_ms(300_000, 299_000, 0, 0), 300_000);
        // The last request ended at 100 s.
        assert_eq!(idle_ms(300_000, 299_000, 0, 100_000), 200_000);
    }

    #[test]
    fn an_open_request_counts_only_bytes() {
        // A clone streaming for an hour is not idle ...
        assert_eq!(idle_ms(3_600_000, 3_599_990, 1, 0), 10);
        // ... but one on which nothing has moved for five minutes is.
        assert_eq!(idle_ms(3_600_000, 3_300_000, 1, 0), 300_000);
    }

    #[test]
    fn a_quiet_keep_alive_connection_is_idle_by_either_clock() {
        assert_eq!(idle_ms(10_000, 4_000, 0, 4_000), 6_000);
        assert_eq!(idle_ms(10_000, 4_000, 0, 3_990), 6_010);
    }

    #[test]
    fn clocks_never_run_backwards() {
        assert_eq!(idle_ms(5, 10, 0, 20), 0);
    }

    #[test]
    fn a_request_is_open_until_its_guard_is_dropped() {
        let activity = Activity::new();
        let a = activity.request_opened();
        let b = activity.request_opened();
        assert_eq!(activity.0.open_requests.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(activity.0.open_requests.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(activity.0.open_requests.load(Ordering::Relaxed), 0);
    }
}
