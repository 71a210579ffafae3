//! An HTTP/2 answer its client gives no room to: after `[server] idle_timeout`, its backend is
//! let go.
//!
//! HTTP/2 flow control is per stream. A client may give one stream a window of zero — its
//! answer's headers go out, its body never — and keep its connection busy with other streams.
//! The connection's idle clocks ([`crate::idle`]) then see bytes and exchanges moving and
//! never close it, and the stalled answer's backend (a `git upload-pack`, or a kept-alive
//! upstream connection) and its place among its principal's requests in flight would be held
//! for as long as the client likes. hyper polls an answer's body only when the stream has
//! room, so a timer that lives in the body is never looked at; this one is a task of its own.
//!
//! The rule is the one an HTTP/1 connection gets from its idle clocks: a client that takes
//! nothing of an answer for the idle timeout is done with it. "Takes nothing" means the body
//! has handed hyper a frame (or has been made and not yet polled) and hyper has not asked for
//! the next one since; a body waiting for its backend is not the client's doing and is left to
//! the upstream's own `idle_timeout`. When the timer fires, the backend's side of the answer is
//! dropped — which stops a CGI child, closes the upstream connection, frees the place in
//! flight and writes the request's log line with `outcome=idle-timeout` — and the body fails
//! when hyper next polls it, which resets the stream.
//!
//! A stream can also go untaken because the whole connection waits on its socket: a client
//! reading slowly but steadily over a slow link (or from a small buffer) leaves gitgate's
//! writes blocked, and the kernel wakes a blocked writer only once a third of its send buffer
//! has drained — with h2's and (over TLS) rustls's buffers full too, seconds or minutes between
//! two frames of one answer at a few KiB a second. That is no stall of the stream's own: each
//! look that finds the connection's writes blocked ([`crate::idle::Activity::writes_blocked`])
//! counts as the stream taking something, looked at every quarter of the limit once an answer
//! is due, and the connection's idle clocks — which watch its socket's send queue and what the
//! client acknowledges — close it if its client stopped reading altogether. A stream kept
//! without a window while others move is let go as before: its connection's socket takes what
//! gitgate writes. (A client that keeps the socket full with a slow download holds its other
//! streams too, as it would with one download per connection.)

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::gate::ResponseBody;
use crate::idle::{coarse_now_ms, Activity};

/// `handed_ms` while the body waits for its backend (its last poll was pending).
pub const WAITING_FOR_BACKEND: u64 = u64::MAX;

/// Whether a stalled answer, after `limit`, should be let go: `handed_ms` is when it last gave
/// hyper a frame (or was made), or [`WAITING_FOR_BACKEND`]. Returns how much longer to wait
/// otherwise.
pub fn stalled_for(now_ms: u64, handed_ms: u64, limit: Duration) -> Result<(), Duration> {
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    if handed_ms == WAITING_FOR_BACKEND {
        return Err(limit);
    }
    let waited = now_ms.saturating_sub(handed_ms);
    if waited >= limit_ms {
        Ok(())
    } else {
        Err(Duration::from_millis(limit_ms - waited))
    }
}

/// The part of an answer the watch shares with its body.
struct Held {
    /// The backend's side of the answer, taken by the watch when the client stalls.
    body: Mutex<Option<ResponseBody>>,
    /// See [`stalled_for`].
    handed_ms: AtomicU64,
}

/// An HTTP/2 answer's body under watch (see the module doc).
pub struct Watched {
    held: Arc<Held>,
    watch: tokio::task::AbortHandle,
}

/// `body`, an answer on `connection`, watched for a client that stops taking it for `limit`.
/// Must be called on a tokio runtime (the watch is a task).
pub fn watched(body: ResponseBody, limit: Duration, connection: Activity) -> ResponseBody {
    let held = Arc::new(Held {
        body: Mutex::new(Some(body)),
        handed_ms: AtomicU64::new(coarse_now_ms()),
    });
    let watch = tokio::spawn(watch(Arc::downgrade(&held), limit, connection)).abort_handle();
    Watched { held, watch }.boxed_unsync()
}

async fn watch(held: Weak<Held>, limit: Duration, connection: Activity) {
    // When a look last found the connection's writes blocked on its socket (see the module
    // doc); 0: never.
    let mut blocked_ms = 0;
    loop {
        let Some(answer) = held.upgrade() else {
            return;
        };
        let now_ms = coarse_now_ms();
        let handed_ms = match answer.handed_ms.load(Ordering::Acquire) {
            WAITING_FOR_BACKEND => WAITING_FOR_BACKEND,
            handed_ms => {
                if (blocked_ms > 0 || stalled_for(now_ms, handed_ms, limit).is_ok())
                    && connection.writes_blocked()
                {
                    blocked_ms = now_ms;
                }
                handed_ms.max(blocked_ms)
            }
        };
        let wait = match stalled_for(now_ms, handed_ms, limit) {
            Ok(()) => {
                let backend = answer.body.lock().unwrap_or_else(|e| e.into_inner()).take();
                tracing::info!(
                    idle_timeout_seconds = limit.as_secs(),
                    "an HTTP/2 answer's client took none of it for the idle timeout: its backend \
                     is let go and its stream reset"
                );
                CUTTING_OFF.with(|c| c.set(true));
                drop(backend);
                CUTTING_OFF.with(|c| c.set(false));
                return;
            }
            Err(wait) if blocked_ms > 0 => wait.min(limit / 4),
            Err(wait) => wait,
        };
        drop(answer);
        tokio::time::sleep(wait).await;
    }
}

thread_local! {
    /// Set while the watch drops a stalled answer's backend, for its log line's outcome.
    static CUTTING_OFF: Cell<bool> = const { Cell::new(false) };
}

/// Whether what is being dropped now is a stalled answer the watch let go of.
pub fn cutting_off() -> bool {
    CUTTING_OFF.with(Cell::get)
}

impl Body for Watched {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let mut body = self.held.body.lock().unwrap_or_else(|e| e.into_inner());
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of the answer for the idle timeout",
            ))));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let handed = match &polled {
            Poll::Pending => WAITING_FOR_BACKEND,
            _ => coarse_now_ms(),
        };
        self.held.handed_ms.store(handed, Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self.held.body.lock() {
            Ok(body) => body.as_ref().is_some_and(Body::is_end_stream),
            Err(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.held.body.lock() {
            Ok(body) => body.as_ref().map(Body::size_hint).unwrap_or_default(),
            Err(_) => SizeHint::default(),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_waiting_for_its_backend_is_never_stalled() {
        let limit = Duration::from_secs(5);
        assert_eq!(
            stalled_for(1_000_000, WAITING_FOR_BACKEND, limit),
            Err(limit)
        );
    }

    #[test]
    fn an_answer_not_taken_for_the_limit_is_stalled() {
        let limit = Duration::from_secs(5);
        assert_eq!(
            stalled_for(10_000, 7_000, limit),
            Err(Duration::from_secs(2))
        );
        assert_eq!(stalled_for(12_000, 7_000, limit), Ok(()));
        assert_eq!(stalled_for(90_000, 7_000, limit), Ok(()));
        // A clock read before the frame was noted: not yet.
        assert_eq!(stalled_for(6_000, 7_000, limit), Err(limit));
    }

    #[tokio::test]
    async fn a_body_taken_to_its_end_stops_its_watch() {
        let body = http_body_util::Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut w = watched(body, Duration::from_millis(50), Activity::new());
        let frame = w.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(w.frame().await.is_none());
        drop(w);
    }

    /// A body whose backend never has anything, holding `K` until dropped.
    struct NeverReady<K>(K);

    impl<K: Unpin> Body for NeverReady<K> {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Pending
        }
    }

    /// Notes, when dropped, whether the watch was cutting a stalled answer off.
    struct Flag(
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::atomic::AtomicBool>,
    );

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
            self.1.store(cutting_off(), Ordering::SeqCst);
        }
    }

    fn flagged() -> (
        ResponseBody,
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let as_cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = NeverReady(Flag(dropped.clone(), as_cut.clone())).boxed_unsync();
        (body, dropped, as_cut)
    }

    /// Whether the watch lets the answer go (`dropped`) within 10 s, looked at every 20 ms.
    /// Waited for, not slept: the watch is a task on the test's own runtime, and a thread held
    /// (a loaded machine) past the watch's timer and the test's sleep wakes with both due and
    /// polls the test first, before the watch has run.
    async fn let_go(dropped: &std::sync::atomic::AtomicBool) -> bool {
        for _ in 0..500 {
            if dropped.load(Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        dropped.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_body_nobody_polls_is_let_go_and_then_fails() {
        let (body, dropped, as_cut) = flagged();
        let mut w = watched(body, Duration::from_millis(100), Activity::new());
        assert!(let_go(&dropped).await, "a stalled answer was kept");
        assert!(as_cut.load(Ordering::SeqCst), "not let go as a stall");
        assert!(!cutting_off());
        let err = w.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_body_waiting_for_its_backend_is_kept() {
        let (body, dropped, _) = flagged();
        let mut w = watched(body, Duration::from_millis(100), Activity::new());
        // Polled: pending (the backend has nothing yet), and so for longer than the limit.
        let waiting = tokio::time::timeout(Duration::from_millis(400), w.frame()).await;
        assert!(waiting.is_err(), "the stand-in backend answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !dropped.load(Ordering::SeqCst),
            "a body waiting for its backend was let go"
        );
        drop(w);
        assert!(dropped.load(Ordering::SeqCst));
    }

    /// An answer whose backend was let go never says it is at its end: hyper would end the
    /// stream cleanly, and the client take a cut-off answer for a whole one.
    #[tokio::test]
    async fn a_body_let_go_is_not_at_its_end() {
        let (body, dropped, _) = flagged();
        let mut w = watched(body, Duration::from_millis(100), Activity::new());
        assert!(let_go(&dropped).await, "a stalled answer was kept");
        assert!(!w.is_end_stream(), "a body let go said it was at its end");
        assert!(w.frame().await.unwrap().is_err());
    }

    /// An answer dropped (taken to its end, or its client gone) takes its watch with it: no
    /// task is left sleeping out the idle timeout for each answer.
    #[tokio::test]
    async fn a_body_dropped_takes_its_watch_with_it() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let (body, _, _) = flagged();
        let w = watched(body, Duration::from_secs(300), Activity::new());
        // The watch runs and sleeps.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        drop(w);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            metrics.num_alive_tasks(),
            before,
            "the watch outlived its answer"
        );
    }
}
