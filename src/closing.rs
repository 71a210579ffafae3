//! A client connection's socket, closed only once what was written to it has reached the
//! client.
//!
//! When gitgate ends a connection while its last answer is still in the socket's send queue —
//! an HTTP/2 clone at a stop, whose stream hyper finished writing (the request is logged
//! `complete`) while megabytes wait for a slow client — closing the socket with bytes from the
//! client unread (HTTP/2 WINDOW_UPDATEs, PINGs: the client acknowledges what it reads) makes
//! the kernel send a reset, which throws away everything still queued. The client then sees
//! `Connection reset by peer` a few megabytes short of the pack (seen: 10 of 14 curl clones and
//! 2 of 2 git clones over HTTP/2 cut at a SIGTERM). So the socket, once hyper has dropped it
//! with bytes still queued, is kept by a task of its own: its writing side shut down (the FIN
//! goes after the queued bytes), what the client sends read and dropped, until the queue is
//! empty, the client closes, or the queue stops shrinking for [`NO_PROGRESS`]. The stop waits
//! for that task as it waits for the connection (a [`Watcher`] of its own), within the grace
//! period.

use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::idle::send_queue_of;

/// How long a closed connection's send queue may stay as it is (a client that stopped
/// reading) before the socket is closed all the same.
pub const NO_PROGRESS: Duration = Duration::from_secs(5);

/// How often the send queue is looked at while the client sends nothing.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// A connection's TCP stream, which lingers at its drop while its send queue holds bytes.
pub struct ClosingStream {
    /// Taken by the drop, for the lingering task.
    inner: Option<TcpStream>,
    /// Held by the lingering task, so that a stop waits for it; dropped with the stream
    /// otherwise.
    watcher: Option<Watcher>,
}

impl ClosingStream {
    pub fn new(inner: TcpStream, watcher: Option<Watcher>) -> Self {
        ClosingStream {
            inner: Some(inner),
            watcher,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        // Taken only in `drop`, after which nothing polls it.
        Pin::new(
            self.inner
                .as_mut()
                .expect("the stream is taken only when dropped"),
        )
    }
}

impl Drop for ClosingStream {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        if send_queue_of(stream.as_raw_fd()) == 0 {
            return;
        }
        // Outside a runtime (never, while serving), the stream closes as it would have.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream, self.watcher.take()));
        }
    }
}

/// Keep `stream` until its send queue has gone out (see the module's doc).
async fn linger(mut stream: TcpStream, _watcher: Option<Watcher>) {
    // hyper shut it down already when it closed the connection itself; a second shutdown
    // fails harmlessly.
    let _ = stream.shutdown().await;
    let mut scratch = [0u8; 4096];
    let mut queued = send_queue_of(stream.as_raw_fd());
    let mut moved_at = tokio::time::Instant::now();
    while queued > 0 && moved_at.elapsed() < NO_PROGRESS {
        tokio::select! {
            read = stream.read(&mut scratch) => match read {
                // The client closed, or reset: nothing more can reach it.
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
        let now = send_queue_of(stream.as_raw_fd());
        if now < queued {
            moved_at = tokio::time::Instant::now();
        }
        queued = now;
    }
}

impl AsyncRead for ClosingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for ClosingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}
