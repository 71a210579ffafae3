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
//! period. The task holds the connection's places under `max_connections` and its address's cap
//! ([`Places`]) until the socket closes: a socket that lingers is still one of the client's.

use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::idle::send_queue_of;
use crate::server::Places;

/// How long a closed connection's send queue may stay as it is (a client that stopped
/// reading) before the socket is closed all the same. The README promises it of a stop ("given
/// up once nothing has moved for 5 s"), and a test holds it to that.
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
    /// The connection's places, given back when the socket closes (by the lingering task if
    /// it lingers).
    places: Option<Places>,
}

impl ClosingStream {
    pub fn new(inner: TcpStream, watcher: Option<Watcher>, places: Option<Places>) -> Self {
        ClosingStream {
            inner: Some(inner),
            watcher,
            places,
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
            runtime.spawn(linger(stream, self.watcher.take(), self.places.take()));
        }
    }
}

/// Keep `stream` until its send queue has gone out (see the module's doc).
async fn linger(mut stream: TcpStream, _watcher: Option<Watcher>, _places: Option<Places>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::server::graceful::GracefulShutdown;

    /// A loopback connection whose server side (first) holds bytes in its send queue that the
    /// client (second) has not read: written to until the socket takes no more.
    fn a_full_send_queue() -> (TcpStream, std::net::TcpStream) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let chunk = [0u8; 64 * 1024];
        loop {
            match server.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(send_queue_of(server.as_raw_fd()) > 0);
        (TcpStream::from_std(server).unwrap(), client)
    }

    /// A client that stopped reading does not keep a closed connection's socket for good: it
    /// is let go once its send queue has not shrunk for [`NO_PROGRESS`] — the 5 s the README
    /// promises of a stop ("given up once nothing has moved for 5 s"): not before, and not a
    /// second later (with the time the client's window takes to stop opening). The test takes
    /// that long.
    #[tokio::test]
    async fn a_queue_that_stopped_moving_is_given_up_after_no_progress() {
        const PROMISED: Duration = Duration::from_secs(5);
        let (server, _client) = a_full_send_queue();
        let started = tokio::time::Instant::now();
        tokio::time::timeout(PROMISED * 4, linger(server, None, None))
            .await
            .expect("still lingering long after the queue stopped moving");
        let took = started.elapsed();
        assert!(took >= PROMISED, "given up after {took:?}");
        // The queue may still move a little at first (the client's window opening): measured
        // 5.37 s, and 6.37 s with a second more, which is no longer the promise. The bound
        // between leaves a loaded machine's late timers 0.8 s.
        assert!(
            took < PROMISED + Duration::from_millis(1200),
            "given up only after {took:?}"
        );
    }

    /// A client that has closed its side ends the wait at once: with nothing of its left
    /// unread, the socket's close is no reset, and the kernel still sends what is queued.
    #[tokio::test]
    async fn a_client_that_closes_its_side_ends_the_wait_at_once() {
        let (server, client) = a_full_send_queue();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let started = tokio::time::Instant::now();
        tokio::time::timeout(NO_PROGRESS * 4, linger(server, None, None))
            .await
            .expect("still lingering");
        // Far from both the moment it takes and the NO_PROGRESS it would wait otherwise.
        assert!(
            started.elapsed() < NO_PROGRESS / 4,
            "{:?}",
            started.elapsed()
        );
    }

    /// A stop waits for a closed connection's last bytes: dropped with bytes queued, the
    /// stream hands its watcher to the lingering, which holds it until the client has gone.
    #[tokio::test]
    async fn a_stop_waits_while_a_closed_connections_last_bytes_go_out() {
        let graceful = GracefulShutdown::new();
        let (server, client) = a_full_send_queue();
        drop(ClosingStream::new(server, Some(graceful.watcher()), None));
        let mut stop = std::pin::pin!(graceful.shutdown());
        assert!(
            tokio::time::timeout(NO_PROGRESS / 4, stop.as_mut())
                .await
                .is_err(),
            "the stop did not wait for the last bytes"
        );
        drop(client);
        tokio::time::timeout(NO_PROGRESS / 4, stop)
            .await
            .expect("the stop still waited once the client had gone");
    }
}
