//! When a client connection counts as idle, and so is closed after `[server] idle_timeout`.
//!
//! Two clocks, and a connection is idle when either has run for the timeout:
//!
//! - **No byte moved** either way. This is what cuts off a stalled transfer, and a keep-alive
//!   HTTP/1.1 connection on which nothing happens.
//! - **No exchange moving**: no request waiting for its answer, and no frame of a request body
//!   arrived, no answer started, sent a frame or ended. Bytes alone are not enough on HTTP/2: a client may send a PING (or
//!   SETTINGS, or WINDOW_UPDATE) every few minutes and so hold a connection, and one place under
//!   `max_connections`, without ever sending a request, let alone a token — or send one request
//!   with a flow-control window of zero, so that its answer never moves. While a request waits
//!   for its answer (the backend working) only the byte clock counts; a push whose backend has
//!   answered with its headers first (git http-backend does) moves the clock with every frame
//!   of its body that it uploads.
//!
//! And a connection with nothing going on — no request waiting, no answer streaming — has only
//! `[server] header_read_timeout` from its start (its accept, the TLS handshake included) or its
//! last answer to send a request (see [`until_idle`]). hyper's own header deadline starts at a
//! request's first byte, and on HTTP/2 not at all, so a client that connects and sends nothing —
//! or finishes a TLS handshake, or an HTTP/2 preface, or half a header block, or one cheap
//! request, and goes quiet — would otherwise hold a place under `max_connections` for the whole
//! idle timeout. HTTP/1 keep-alive connections get the same from hyper already.
//!
//! Nothing here limits the total time of a request: a clone that keeps streaming keeps its
//! connection however long it takes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use rustix::time::{clock_gettime, ClockId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gate::ResponseBody;

/// How long a connection has been idle, in milliseconds: the time since its
/// last byte while a request waits for its answer, else the longer of that and the time since
/// an answer last started, sent a frame or ended (`last_answer_ms`).
pub fn idle_ms(now_ms: u64, last_byte_ms: u64, unanswered: usize, last_answer_ms: u64) -> u64 {
    let bytes = now_ms.saturating_sub(last_byte_ms);
    if unanswered > 0 {
        return bytes;
    }
    bytes.max(now_ms.saturating_sub(last_answer_ms))
}

/// One connection's clocks, shared by its byte stream, its requests and its idle timer.
#[derive(Clone)]
pub struct Activity(Arc<Clocks>);

struct Clocks {
    last_byte_ms: AtomicU64,
    unanswered: AtomicUsize,
    last_answer_ms: AtomicU64,
    /// Answers whose body is still on its way out.
    answering: AtomicUsize,
    /// The connection's socket, for the send-queue check before an idle close (-1: none).
    socket: std::sync::atomic::AtomicI32,
    /// gitgate closed the connection for idling: what was unfinished on it did not end by its
    /// client's leaving.
    closed_for_idling: std::sync::atomic::AtomicBool,
    /// A request came over HTTP/2, whose control frames (PING, SETTINGS) a client acknowledges
    /// as it would data: its acknowledgements do not show that it reads.
    http2: std::sync::atomic::AtomicBool,
    /// The last answer was a ref advertisement: its client's POST is to come on this
    /// connection, after git has done its part (a push packs its objects first, for seconds).
    rpc_expected: std::sync::atomic::AtomicBool,
    /// Told when a request comes after an advertisement (see [`Activity::rpc_came`]).
    rpc_came: tokio::sync::Notify,
    /// Requests opened on the connection so far: at a stop, whether its client went on asking.
    opened: AtomicU64,
    /// The last write to the connection's stream did not take all it was given (or waited):
    /// bytes of an answer may still be in hyper's buffers.
    write_unfinished: std::sync::atomic::AtomicBool,
    /// The client closed the connection (its end of the stream came) when everything written
    /// had been taken by the socket and acknowledged by the client's TCP, on HTTP/1: it had
    /// every byte handed to the connection (see [`Activity::left_with_everything`]).
    left_with_everything: std::sync::atomic::AtomicBool,
    /// Writes to the connection's stream that took bytes, so far: whether the connection wrote
    /// after a moment (see [`Activity::all_out_since`]).
    writes: AtomicU64,
}

/// Milliseconds on the coarse monotonic clock. Its few milliseconds of resolution are plenty
/// for timeouts counted in seconds, and reading it costs a few nanoseconds (no hardware
/// counter is read): the clocks here move on every read, write and response frame.
pub(crate) fn coarse_now_ms() -> u64 {
    let t = clock_gettime(ClockId::MonotonicCoarse);
    (t.tv_sec as u64).saturating_mul(1000) + t.tv_nsec as u64 / 1_000_000
}

impl Activity {
    pub fn new() -> Self {
        let now = coarse_now_ms();
        Activity(Arc::new(Clocks {
            last_byte_ms: AtomicU64::new(now),
            unanswered: AtomicUsize::new(0),
            last_answer_ms: AtomicU64::new(now),
            answering: AtomicUsize::new(0),
            socket: std::sync::atomic::AtomicI32::new(-1),
            closed_for_idling: std::sync::atomic::AtomicBool::new(false),
            http2: std::sync::atomic::AtomicBool::new(false),
            rpc_expected: std::sync::atomic::AtomicBool::new(false),
            rpc_came: tokio::sync::Notify::new(),
            opened: AtomicU64::new(0),
            write_unfinished: std::sync::atomic::AtomicBool::new(false),
            left_with_everything: std::sync::atomic::AtomicBool::new(false),
            writes: AtomicU64::new(0),
        }))
    }

    /// A push's advertisement (or its probe) was answered over HTTP/1: its POST is to come
    /// (see `Clocks::rpc_expected`), and a stop lets it come.
    pub fn rpc_expected(&self) {
        self.0.rpc_expected.store(true, Ordering::Release);
    }

    /// Whether a push's POST is to come on this connection (see [`Activity::rpc_expected`]).
    pub fn expects_rpc(&self) -> bool {
        self.0.rpc_expected.load(Ordering::Acquire)
    }

    /// Whether an HTTP/1 request waits for its answer to begin: it may be a push's
    /// advertisement or probe, after which the push's POST comes (see `server`'s stop).
    pub fn http1_answer_pending(&self) -> bool {
        !self.0.http2.load(Ordering::Relaxed) && self.0.unanswered.load(Ordering::Acquire) > 0
    }

    /// Whether the connection has nothing in flight but waits for a push's POST: a stop does
    /// not close it then, for at most the wait for a request from the stop's start (see
    /// `until_closed`).
    pub fn awaits_rpc(&self) -> bool {
        self.expects_rpc() && self.nothing_in_flight()
    }

    /// Once no POST is awaited any more: it came (or another request did).
    pub async fn rpc_came(&self) {
        loop {
            let came = self.0.rpc_came.notified();
            if !self.0.rpc_expected.load(Ordering::Acquire) {
                return;
            }
            came.await;
        }
    }

    /// The connection speaks HTTP/2 (see `Clocks::http2`).
    pub fn speaks_http2(&self) {
        self.0.http2.store(true, Ordering::Relaxed);
    }

    /// What the client has acknowledged, when that shows it reads an answer: on HTTP/1, while
    /// a request is in flight (see [`Acknowledged`]).
    fn bytes_acked_of_an_answer(&self) -> Option<u64> {
        if self.0.http2.load(Ordering::Relaxed) || self.nothing_in_flight() {
            return None;
        }
        self.bytes_acked()
    }

    /// Whether the client, when it closed the connection, had every byte handed to it: on
    /// HTTP/1 (whose answers hyper writes in order, with nothing held back per stream), with
    /// nothing left unwritten in the stream's last write and nothing in the socket's send queue
    /// unacknowledged. A client that closes with unread bytes resets the connection instead
    /// (no end of stream is read); one that closed before the rest of an answer was written
    /// had not acknowledged it. What is written is all the answer's bytes handed to hyper.
    pub fn left_with_everything(&self) -> bool {
        self.0.left_with_everything.load(Ordering::Acquire)
    }

    /// The end of the client's stream was read: whether it had everything (see
    /// [`Activity::left_with_everything`]), read now, while the socket is open.
    fn client_closed(&self) {
        let everything = !self.0.http2.load(Ordering::Relaxed)
            && !self.0.write_unfinished.load(Ordering::Relaxed)
            && self.0.socket.load(Ordering::Relaxed) >= 0
            && self.send_queue() == 0;
        self.0
            .left_with_everything
            .store(everything, Ordering::Release);
    }

    /// A write to the stream took `written` of `offered` bytes (`None`: it waited or failed).
    fn wrote(&self, written: Option<usize>, offered: usize) {
        let unfinished = written.is_none_or(|n| n < offered);
        self.0.write_unfinished.store(unfinished, Ordering::Relaxed);
        if written.is_some_and(|n| n > 0) {
            self.0.writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The writes to the connection's stream so far (see [`Activity::all_out_since`]).
    pub fn writes(&self) -> u64 {
        self.0.writes.load(Ordering::Relaxed)
    }

    /// Whether, on HTTP/2, everything the connection had to write when its write count was
    /// `writes` is out and acknowledged: it has written since, its last write took all it was
    /// given, and its socket's send queue is empty (all acknowledged by the client's TCP).
    /// Asked when a stream ends unfinished (the client reset it): h2 writes what it holds for
    /// its streams each time it drives the connection, until the socket takes no more, so a
    /// write after the moment that left nothing unwritten, with nothing unacknowledged, took
    /// everything queued by then. Asked only while the socket is open (it is set to none when
    /// the connection's stream is dropped).
    pub fn all_out_since(&self, writes: u64) -> bool {
        self.0.http2.load(Ordering::Relaxed)
            && self.writes() > writes
            && !self.0.write_unfinished.load(Ordering::Relaxed)
            && self.0.socket.load(Ordering::Relaxed) >= 0
            && self.send_queue() == 0
    }

    /// Whether the connection's writes wait on its socket: its last write did not take all it
    /// was given (or waited), and the socket's send queue holds bytes its client has not
    /// acknowledged. Every answer on it then waits on its client's reading, not on its own
    /// stream's window (see `crate::stall`). Never while no socket is watched.
    pub fn writes_blocked(&self) -> bool {
        self.0.write_unfinished.load(Ordering::Relaxed) && self.send_queue() > 0
    }

    /// Whether gitgate closed the connection for idling (see [`until_idle_or_drained`]).
    pub fn closed_for_idling(&self) -> bool {
        self.0.closed_for_idling.load(Ordering::Acquire)
    }

    /// The TCP socket under the connection, whose send queue is read before an idle close.
    pub fn watch_socket(&self, fd: std::os::fd::RawFd) {
        self.0.socket.store(fd, Ordering::Relaxed);
    }

    /// Bytes written to the socket that the client has not acknowledged yet; 0 when unknown.
    fn send_queue(&self) -> u64 {
        let fd = self.0.socket.load(Ordering::Relaxed);
        if fd < 0 {
            return 0;
        }
        // `fd` is the connection's own socket, open while the connection (and so this call,
        // made while it is driven) lives.
        send_queue_of(fd)
    }

    /// The bytes of the connection the client has acknowledged (TCP_INFO's
    /// `tcpi_bytes_acked`, Linux 4.1 on); `None` when unknown.
    fn bytes_acked(&self) -> Option<u64> {
        let fd = self.0.socket.load(Ordering::Relaxed);
        if fd < 0 {
            return None;
        }
        // SAFETY: tcp_info is plain data; all zeroes is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: TCP_INFO writes at most `len` bytes into `info`, which has that size, and
        // sets `len` to what it wrote; `fd` is the connection's own socket, open while the
        // connection (and so this call, made while it is driven) lives.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                &mut info as *mut libc::tcp_info as *mut libc::c_void,
                &mut len,
            )
        };
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
        (r == 0 && len as usize >= needed).then_some(info.tcpi_bytes_acked)
    }

    fn now_ms(&self) -> u64 {
        coarse_now_ms()
    }

    fn byte_moved(&self) {
        self.0.last_byte_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn answer_moved(&self) {
        self.0
            .last_answer_ms
            .store(self.now_ms(), Ordering::Release);
    }

    /// A frame of a request body arrived: the exchange is moving even while its answer (a CGI
    /// backend sends its headers before it reads a push) waits for the body's end.
    pub fn request_body_moved(&self) {
        self.answer_moved();
    }

    /// How long the connection has waited for a request: since its start or its last answer,
    /// while no request waits for its answer and no answer is on its way out; else zero.
    pub fn waiting_for_request(&self) -> Duration {
        if self.0.unanswered.load(Ordering::Acquire) > 0
            || self.0.answering.load(Ordering::Acquire) > 0
        {
            return Duration::ZERO;
        }
        let last = self.0.last_answer_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// No request waits for its answer and no answer is on its way out.
    fn nothing_in_flight(&self) -> bool {
        self.0.unanswered.load(Ordering::Acquire) == 0
            && self.0.answering.load(Ordering::Acquire) == 0
    }

    /// How long the connection has been idle (see the module doc).
    pub fn idle(&self) -> Duration {
        Duration::from_millis(idle_ms(
            self.now_ms(),
            self.0.last_byte_ms.load(Ordering::Relaxed),
            self.0.unanswered.load(Ordering::Acquire),
            self.0.last_answer_ms.load(Ordering::Acquire),
        ))
    }

    /// A request has come in; it waits for its answer until [`OpenBody::new`] takes the returned
    /// value, or it is dropped.
    pub fn request_opened(&self) -> OpenRequest {
        self.0.unanswered.fetch_add(1, Ordering::AcqRel);
        self.0.opened.fetch_add(1, Ordering::Relaxed);
        if self.0.rpc_expected.load(Ordering::Relaxed)
            && self.0.rpc_expected.swap(false, Ordering::AcqRel)
        {
            self.0.rpc_came.notify_waiters();
        }
        OpenRequest(Some(self.clone()))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// A request of the connection that is waiting for its answer.
pub struct OpenRequest(Option<Activity>);

impl OpenRequest {
    /// The request has its answer (or was dropped): it no longer waits.
    fn stop_waiting(&mut self) -> Option<Activity> {
        let activity = self.0.take()?;
        // The answer clock first: whoever sees the count drop also sees when it did.
        activity.answer_moved();
        activity.0.unanswered.fetch_sub(1, Ordering::AcqRel);
        Some(activity)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

/// A response body on its way out: each frame it yields, and its end, move the answer clock.
pub struct OpenBody {
    inner: ResponseBody,
    activity: Option<Activity>,
}

impl OpenBody {
    pub fn new(inner: ResponseBody, mut request: OpenRequest) -> Self {
        let activity = request.stop_waiting();
        if let Some(a) = &activity {
            a.0.answering.fetch_add(1, Ordering::AcqRel);
        }
        OpenBody { inner, activity }
    }
}

/// An answer made without its request being counted (a panic's `500`).
impl From<ResponseBody> for OpenBody {
    fn from(inner: ResponseBody) -> Self {
        OpenBody {
            inner,
            activity: None,
        }
    }
}

impl Body for OpenBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(_))), Some(activity)) = (&polled, &self.activity) {
            activity.answer_moved();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        if let Some(activity) = &self.activity {
            activity.answer_moved();
            activity.0.answering.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Why [`until_idle`] closed a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed<T> {
    /// It ended by itself, with this.
    Ended(T),
    /// Idle for the idle limit (see the module doc).
    Idle,
    /// No request for `request_within` while nothing else went on.
    NoRequest,
}

/// Drives `conn` until it ends, or the connection has been idle for `limit`, or has waited for
/// a request for `request_within` ([`Activity::waiting_for_request`]); `conn` is then dropped,
/// which closes it — after at most [`ENDED_WITHIN`] of letting it close itself, when its
/// stream was wrapped in [`EndableIo`] and `ending` is that stream's [`Ending`].
pub async fn until_idle<F: Future>(
    conn: F,
    activity: &Activity,
    limit: Duration,
    request_within: Duration,
    ending: Option<&Ending>,
) -> Closed<F::Output> {
    until_idle_or_drained(conn, activity, limit, request_within, None, ending).await
}

/// How long a connection with nothing in flight is waited for once the server drains: HTTP/2's
/// graceful close waits for the client's answer to its PING, which a client need not send.
pub const DRAINED_WITHIN: Duration = Duration::from_secs(1);

/// [`until_idle`], and once `draining` turns true, `request_within` is at most
/// [`DRAINED_WITHIN`]: a connection with no request in flight then holds the stop a second at
/// most, however its client answers the GOAWAY.
pub async fn until_idle_or_drained<F: Future>(
    conn: F,
    activity: &Activity,
    limit: Duration,
    request_within: Duration,
    mut draining: Option<tokio::sync::watch::Receiver<bool>>,
    ending: Option<&Ending>,
) -> Closed<F::Output> {
    tokio::pin!(conn);
    let closed = until_closed(
        conn.as_mut(),
        activity,
        limit,
        request_within,
        &mut draining,
    )
    .await;
    if matches!(closed, Closed::Idle) {
        activity.0.closed_for_idling.store(true, Ordering::Release);
    }
    if let (Closed::Idle | Closed::NoRequest, Some(ending)) = (&closed, ending) {
        ending.end();
        let _ = tokio::time::timeout(ENDED_WITHIN, conn).await;
    }
    closed
}

/// The loop of [`until_idle_or_drained`], leaving `conn` to its caller.
async fn until_closed<F: Future>(
    mut conn: Pin<&mut F>,
    activity: &Activity,
    limit: Duration,
    request_within: Duration,
    draining: &mut Option<tokio::sync::watch::Receiver<bool>>,
) -> Closed<F::Output> {
    // When this connection saw the drain begin. An HTTP/2 client that never answers the
    // GOAWAY's PING is still let open new streams by hyper (the GOAWAY names the highest stream
    // id until the PING comes back), and each answer would restart the wait for a request: a
    // client sending one every half second would hold the stop for the whole grace period.
    // From DRAINED_WITHIN after the drain began, the connection is closed at the first moment
    // nothing is in flight on it, whatever answers came since.
    let mut drain_began: Option<tokio::time::Instant> = None;
    // When this connection saw the stop begin, for the wait for a push's POST.
    let mut stop_began: Option<tokio::time::Instant> = None;
    // How many requests its client had opened when the drain began.
    let mut opened_at_drain: Option<u64> = None;
    // The socket's send queue as last looked at during the drain, and when it last moved.
    let mut queue = (0u64, tokio::time::Instant::now());
    // What the client has acknowledged, looked at when the timer wakes (see below).
    let mut acknowledged = Acknowledged::default();
    let wait_for_request = request_within;
    loop {
        let stopping = draining.as_ref().is_some_and(|d| *d.borrow());
        // A connection awaiting a push's POST (git packing its objects) is given the wait for
        // a request from the stop's start, not the drain's second — once, however many
        // advertisements its client asks for meanwhile.
        let post_wait_left = stopping
            .then(|| *stop_began.get_or_insert_with(tokio::time::Instant::now))
            .map(|began| wait_for_request.saturating_sub(began.elapsed()))
            .filter(|left| !left.is_zero());
        let exempt = |activity: &Activity| post_wait_left.is_some() && activity.awaits_rpc();
        let awaiting_post = exempt(activity);
        let drained = stopping && !awaiting_post;
        // An HTTP/2 answer whose body hyper has taken whole may still be in h2's buffers,
        // waiting for its client's window, and in the socket: closed now, its last megabytes
        // would be lost to a client reading slowly (seen: clones cut at a SIGTERM, logged
        // `complete`). hyper's graceful shutdown closes such a connection itself once its
        // streams are sent; it is let, while bytes move and its client asks for nothing new
        // (one that does is closed at the first moment with nothing in flight, below; one that
        // stopped reading, once nothing has moved for NO_PROGRESS).
        let h2_finishing = drained && activity.0.http2.load(Ordering::Relaxed) && {
            let at =
                *opened_at_drain.get_or_insert_with(|| activity.0.opened.load(Ordering::Relaxed));
            let queued = activity.send_queue();
            if queued != queue.0 {
                queue = (queued, tokio::time::Instant::now());
            }
            // Moving: its client sent a byte within the second (a window update: it reads),
            // or the queue moved within closing's NO_PROGRESS. One that stopped reading is
            // closed as any other, and its socket's queue given up after NO_PROGRESS more.
            let moving = activity.idle() < DRAINED_WITHIN
                || (queued > 0 && queue.1.elapsed() < crate::closing::NO_PROGRESS);
            activity.0.opened.load(Ordering::Relaxed) == at && moving
        };
        let request_within = if drained {
            request_within.min(DRAINED_WITHIN)
        } else {
            request_within
        };
        // At least every quarter of the limit, for the looks at what the client acknowledged.
        let mut wait = limit
            .saturating_sub(activity.idle())
            .min(request_within.saturating_sub(activity.waiting_for_request()))
            .min(limit / 4);
        if let Some(left) = post_wait_left.filter(|_| awaiting_post) {
            wait = wait.min(left);
        }
        let drain_over = drained && {
            let began = *drain_began.get_or_insert_with(tokio::time::Instant::now);
            let past = began.elapsed();
            wait = wait.min(if past >= DRAINED_WITHIN {
                DRAIN_RECHECK
            } else {
                DRAINED_WITHIN - past
            });
            past >= DRAINED_WITHIN
        };
        let drain_begins = async {
            match draining.as_mut().filter(|_| !drained) {
                Some(d) => {
                    if d.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let post_comes = async {
            if awaiting_post {
                activity.rpc_came().await
            } else {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            out = conn.as_mut() => return Closed::Ended(out),
            () = drain_begins => {}
            () = post_comes => {}
            _ = tokio::time::sleep(wait) => {
                // A client reading slowly but steadily moves no byte through gitgate's writes
                // for a while — the kernel wakes a blocked writer only once a third of its send
                // buffer has drained: at 8 KiB/s, minutes — yet is not idle: it acknowledges
                // bytes, in bursts seconds apart as its window reopens.
                acknowledged.look(activity.bytes_acked_of_an_answer(), activity.now_ms());
                if activity.idle() >= limit {
                    let moved_at = match acknowledged.grew_within(limit, activity.now_ms()) {
                        Some(at) => at,
                        // No growth seen (or no look yet): the next second decides.
                        None => match still_reading(conn.as_mut(), activity).await {
                            Err(out) => return Closed::Ended(out),
                            Ok(false) => return Closed::Idle,
                            Ok(true) => activity.now_ms(),
                        },
                    };
                    // The clocks move to when the client last read: one that stops now is
                    // idle a timeout after that.
                    activity.0.last_byte_ms.fetch_max(moved_at, Ordering::Relaxed);
                    if activity.0.answering.load(Ordering::Acquire) > 0 {
                        activity.0.last_answer_ms.fetch_max(moved_at, Ordering::AcqRel);
                    }
                    continue;
                }
                if h2_finishing {
                    continue;
                }
                // The answer that ended since the loop last looked may have been a push's
                // probe: its POST is awaited now, and is given the wait for a request from the
                // stop's start, not the drain's second.
                let within = if exempt(activity) {
                    wait_for_request
                } else {
                    request_within
                };
                if activity.waiting_for_request() >= within {
                    return Closed::NoRequest;
                }
                // (The answer just ended may be a push's probe, after which its POST comes.)
                if drain_over && activity.nothing_in_flight() && !exempt(activity) {
                    return Closed::NoRequest;
                }
            }
        }
    }
}

/// When the client last acknowledged bytes, as the idle timer saw it at its wakes (at least
/// every quarter of the idle timeout): a client reading slowly but steadily frees its window in
/// bursts as far apart as its reads take to free a segment or half its buffer — seconds —
/// while gitgate's blocked writes move no byte for much longer. Such a client is not idle; one
/// that acknowledged nothing for the timeout (give or take a quarter) is.
#[derive(Default)]
struct Acknowledged {
    /// The count (TCP_INFO's `tcpi_bytes_acked`) at the last look.
    count: Option<u64>,
    /// When a look last found it grown (coarse milliseconds).
    grew_at_ms: Option<u64>,
}

impl Acknowledged {
    /// A look at the count `acked` at `now_ms`. Pure: the count and the time are given.
    fn look(&mut self, acked: Option<u64>, now_ms: u64) {
        let Some(now) = acked else {
            return;
        };
        if self.count.is_some_and(|before| now > before) {
            self.grew_at_ms = Some(now_ms);
        }
        self.count = Some(now);
    }

    /// When the count last grew, if that was less than `limit` before `now_ms`.
    fn grew_within(&self, limit: Duration, now_ms: u64) -> Option<u64> {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        self.grew_at_ms
            .filter(|&at| now_ms.saturating_sub(at) < limit_ms)
    }
}

/// Whether a connection about to be closed for idling still has a client reading: within
/// [`SEND_QUEUE_PROBE`], its send queue shrinks or it acknowledges bytes. `Err` with the
/// connection's outcome when it ends meanwhile.
async fn still_reading<F: Future>(
    mut conn: Pin<&mut F>,
    activity: &Activity,
) -> Result<bool, F::Output> {
    let queued = activity.send_queue();
    if queued == 0 {
        return Ok(false);
    }
    let acked = activity.bytes_acked_of_an_answer();
    tokio::select! {
        out = conn.as_mut() => return Err(out),
        _ = tokio::time::sleep(SEND_QUEUE_PROBE) => {}
    }
    let grew = matches!((acked, activity.bytes_acked_of_an_answer()), (Some(a), Some(b)) if b > a);
    Ok(grew || activity.send_queue() < queued)
}

/// Bytes written to the TCP socket `fd` (open) that its peer has not acknowledged yet; 0 when
/// unknown.
pub fn send_queue_of(fd: std::os::fd::RawFd) -> u64 {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for a TCP socket) writes one int through the pointer, which
    // points at `queued`; the caller keeps `fd` open.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int) };
    if r == 0 {
        u64::try_from(queued).unwrap_or(0)
    } else {
        0
    }
}

/// How often a draining connection past [`DRAINED_WITHIN`] looks for a moment with nothing in
/// flight (see `until_closed`).
const DRAIN_RECHECK: Duration = Duration::from_millis(100);

/// How long the send queue of a connection about to be closed for idling is watched for a
/// client still reading.
const SEND_QUEUE_PROBE: Duration = Duration::from_secs(1);

/// How long a connection closed for idling may take to close itself (see [`EndableIo`]).
pub const ENDED_WITHIN: Duration = Duration::from_secs(1);

/// A TLS connection's plaintext stream, which an idle close ends the way a client's leaving
/// would: its reads see the end of the stream. hyper then closes the connection itself, which
/// shuts the stream down: rustls sends `close_notify` before the TCP FIN, so the client reads
/// a clean end instead of a truncation (which strict TLS clients log as an attack). Dropping
/// the connection, as the idle close otherwise does, sends the FIN alone. A connection that
/// cannot close itself within [`ENDED_WITHIN`] (a client that stopped reading, whose window
/// holds the alert back) is dropped as before.
pub struct EndableIo<IO> {
    inner: IO,
    ending: Ending,
}

/// The switch of an [`EndableIo`].
#[derive(Clone, Default)]
pub struct Ending(Arc<EndingState>);

#[derive(Default)]
struct EndingState {
    ended: std::sync::atomic::AtomicBool,
    /// The task last left waiting for a read, woken by [`Ending::end`], so that a read waiting
    /// on the socket sees the end whoever polls next. Taken only when a read is pending.
    reader: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Ending {
    /// Every read from now on sees the end of the stream.
    pub fn end(&self) {
        self.0.ended.store(true, Ordering::SeqCst);
        let reader = self
            .0
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    fn ended(&self) -> bool {
        self.0.ended.load(Ordering::SeqCst)
    }
}

impl<IO> EndableIo<IO> {
    pub fn new(inner: IO, ending: Ending) -> Self {
        EndableIo { inner, ending }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for EndableIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.ending.ended() {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_pending() {
            // Kept under the lock `end` takes it with, and the switch looked at again after:
            // an `end` in between is seen here or wakes this waker.
            let mut reader = self
                .ending
                .0
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if self.ending.ended() {
                return Poll::Ready(Ok(()));
            }
            match reader.as_mut() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *reader = Some(cx.waker().clone()),
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for EndableIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

impl<IO> Drop for ActivityIo<IO> {
    fn drop(&mut self) {
        // The socket closes with the stream (or is handed on to linger): its number is no
        // longer the connection's to look at.
        self.activity.0.socket.store(-1, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ActivityIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) {
            if buf.filled().len() > before {
                self.activity.byte_moved();
            } else if room {
                // The end of the client's stream: it closed the connection (or its sending).
                self.activity.client_closed();
            }
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
        let written = match &polled {
            Poll::Ready(Ok(n)) => Some(*n),
            _ => None,
        };
        self.activity.wrote(written, buf.len());
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
        let written = match &polled {
            Poll::Ready(Ok(n)) => Some(*n),
            _ => None,
        };
        self.activity
            .wrote(written, bufs.iter().map(|b| b.len()).sum());
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

    /// What the idle close looks at before closing: the bytes a client has not acknowledged
    /// (the send queue), which shrink, and those it has (TCP_INFO), which grow, as it reads,
    /// however slowly, while gitgate's writes stay blocked.
    #[test]
    fn the_send_queue_shrinks_and_acknowledgements_grow_as_a_slow_client_reads() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let activity = Activity::new();
        assert_eq!(activity.send_queue(), 0, "no socket watched");
        assert_eq!(activity.bytes_acked(), None, "no socket watched");
        activity.watch_socket(server.as_raw_fd());
        assert_eq!(activity.send_queue(), 0, "nothing written");
        // Fill the client's receive buffer and the server's send queue.
        server.set_nonblocking(true).unwrap();
        let chunk = [7u8; 64 * 1024];
        while server.write(&chunk).is_ok() {}
        std::thread::sleep(Duration::from_millis(50));
        let queued = activity.send_queue();
        assert!(queued > 0);
        let acked = activity.bytes_acked().unwrap();
        assert!(acked > 0);
        // The client reads a little: both move by about as much (it may take a moment for the
        // acknowledgements to arrive).
        let mut buf = vec![0u8; 1024 * 1024];
        let mut read = 0;
        while read < buf.len() {
            read += client.read(&mut buf[read..]).unwrap();
        }
        let moved = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            activity.send_queue() < queued && activity.bytes_acked().unwrap() > acked
        });
        assert!(
            moved,
            "{queued} -> {}, {acked} -> {:?}",
            activity.send_queue(),
            activity.bytes_acked()
        );
    }

    /// A client is reading while a look saw its count grow within the timeout; the time is
    /// that of the look that saw it, so one that stops is idle a timeout later.
    #[test]
    fn acknowledgements_count_as_reading_for_a_timeout() {
        let limit = Duration::from_secs(10);
        let mut seen = Acknowledged::default();
        seen.look(None, 0);
        seen.look(Some(100), 1_000);
        assert_eq!(
            seen.grew_within(limit, 2_000),
            None,
            "one look: no growth seen"
        );
        seen.look(Some(100), 3_500);
        assert_eq!(seen.grew_within(limit, 4_000), None, "no growth");
        seen.look(Some(164_000), 6_000);
        assert_eq!(seen.grew_within(limit, 10_500), Some(6_000));
        assert_eq!(seen.grew_within(limit, 15_999), Some(6_000));
        seen.look(Some(164_000), 16_000);
        assert_eq!(
            seen.grew_within(limit, 16_000),
            None,
            "a timeout since it grew"
        );
        seen.look(None, 17_000);
        assert_eq!(seen.count, Some(164_000), "an unknown count keeps the last");
    }

    #[test]
    fn bytes_moving_do_not_keep_a_connection_without_requests() {
        // PINGs every second, no request since the connection opened at 0.
        assert_eq!(idle_ms(300_000, 299_000, 0, 0), 300_000);
        // The last answer ended at 100 s.
        assert_eq!(idle_ms(300_000, 299_000, 0, 100_000), 200_000);
    }

    #[test]
    fn an_answer_that_does_not_move_does_not_keep_a_connection() {
        // Answered at 10 s, not a frame since (a zero flow-control window), PINGs flowing.
        assert_eq!(idle_ms(310_000, 309_500, 0, 10_000), 300_000);
        // A clone streaming for an hour is not idle.
        assert_eq!(idle_ms(3_600_000, 3_599_990, 0, 3_599_995), 10);
    }

    #[test]
    fn a_request_waiting_for_its_answer_counts_only_bytes() {
        // A push uploading for an hour before the backend answers is not idle ...
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
    fn a_request_waits_until_answered_or_dropped() {
        let activity = Activity::new();
        let waiting = || activity.0.unanswered.load(Ordering::Relaxed);
        let a = activity.request_opened();
        let b = activity.request_opened();
        assert_eq!(waiting(), 2);
        let body = OpenBody::new(crate::gate::text(hyper::StatusCode::OK, "x").into_body(), a);
        assert_eq!(waiting(), 1);
        drop(b);
        assert_eq!(waiting(), 0);
        drop(body);
        assert_eq!(waiting(), 0);
    }

    /// How long ago, in milliseconds, a clock of `activity` was last moved.
    fn since(activity: &Activity, clock: &AtomicU64) -> u64 {
        activity
            .now_ms()
            .saturating_sub(clock.load(Ordering::Acquire))
    }

    /// Whether a clock read (before this call) as moved `ago` ms ago was moved at `before` or
    /// later. The coarse clock lags by a tick at most (4 or 10 ms); 50 ms is far above that and
    /// far below the 300 ms that the tests' sleeps add to a clock left unmoved. Measured, not
    /// a fixed bound: a loaded machine may hold the test's thread for any time between the
    /// move and the read, and both sides then count it.
    fn moved_since(ago: u64, before: std::time::Instant) -> bool {
        u128::from(ago) <= before.elapsed().as_millis() + 50
    }

    /// While an answer is on its way out, the connection does not wait for a request, however
    /// long the answer takes; once it has ended, it does, from its end.
    #[test]
    fn an_answer_on_its_way_out_holds_the_wait_for_a_request_until_it_ends() {
        let activity = Activity::new();
        let body = OpenBody::new(
            crate::gate::text(hyper::StatusCode::OK, "x").into_body(),
            activity.request_opened(),
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(activity.waiting_for_request(), Duration::ZERO);
        drop(body);
        assert!(
            activity.nothing_in_flight(),
            "an ended answer is still in flight"
        );
        std::thread::sleep(Duration::from_millis(300));
        let waited = activity.waiting_for_request();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
    }

    /// A request that stops waiting (answered or dropped) moves the answer clock: the wait for
    /// the next request counts from then, not from the connection's start.
    #[test]
    fn the_wait_for_a_request_counts_from_when_the_last_one_stopped_waiting() {
        let activity = Activity::new();
        let request = activity.request_opened();
        std::thread::sleep(Duration::from_millis(300));
        let dropping = std::time::Instant::now();
        drop(request);
        let waited = activity.waiting_for_request();
        assert!(
            moved_since(u64::try_from(waited.as_millis()).unwrap(), dropping),
            "{waited:?}, dropped {:?} ago",
            dropping.elapsed()
        );
    }

    /// Each frame an answer yields moves the answer clock: an answer still streaming is an
    /// exchange moving.
    #[test]
    fn each_frame_of_an_answer_moves_the_answer_clock() {
        let activity = Activity::new();
        let mut body = OpenBody::new(
            crate::gate::text(hyper::StatusCode::OK, "x").into_body(),
            activity.request_opened(),
        );
        std::thread::sleep(Duration::from_millis(300));
        let polling = std::time::Instant::now();
        let polled =
            Pin::new(&mut body).poll_frame(&mut Context::from_waker(std::task::Waker::noop()));
        assert!(matches!(polled, Poll::Ready(Some(Ok(_)))));
        let ago = since(&activity, &activity.0.last_answer_ms);
        assert!(
            moved_since(ago, polling),
            "the answer clock was last moved {ago} ms ago, polled {:?} ago",
            polling.elapsed()
        );
        drop(body);
    }

    /// Only a read that brings bytes moves the byte clock; one that finds the end of the stream
    /// does not.
    #[tokio::test]
    async fn a_read_that_brings_nothing_is_no_byte_moved() {
        use tokio::io::AsyncReadExt;
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(300));
        let mut buf = [0u8; 16];
        let mut empty = ActivityIo::new(tokio::io::empty(), activity.clone());
        assert_eq!(empty.read(&mut buf).await.unwrap(), 0);
        let since_end = since(&activity, &activity.0.last_byte_ms);
        assert!(
            since_end >= 200,
            "the byte clock moved at the end: {since_end} ms ago"
        );
        let mut one = ActivityIo::new(&b"x"[..], activity.clone());
        let reading = std::time::Instant::now();
        assert_eq!(one.read(&mut buf).await.unwrap(), 1);
        let since_byte = since(&activity, &activity.0.last_byte_ms);
        assert!(
            moved_since(since_byte, reading),
            "{since_byte} ms, read {:?} ago",
            reading.elapsed()
        );
    }

    /// Once ended, an [`EndableIo`] reads the end of the stream, even with bytes there to
    /// read.
    #[tokio::test]
    async fn an_ended_stream_reads_its_end_whatever_is_there() {
        use tokio::io::AsyncReadExt;
        let ending = Ending::default();
        let mut io = EndableIo::new(&b"GET / HTTP/1.1\r\n"[..], ending.clone());
        ending.end();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
    }

    /// A read left waiting on the socket is woken when the stream is ended, and then reads its
    /// end: the connection closes itself without waiting for the client.
    #[tokio::test]
    async fn a_read_waiting_when_the_stream_is_ended_is_woken_and_sees_the_end() {
        struct Woken(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Woken {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let (_client, server) = tokio::io::duplex(64);
        let ending = Ending::default();
        let mut io = EndableIo::new(server, ending.clone());
        let woken = Arc::new(Woken(std::sync::atomic::AtomicBool::new(false)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut storage = [0u8; 64];
        let mut buf = ReadBuf::new(&mut storage);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
        ending.end();
        assert!(
            woken.0.load(Ordering::SeqCst),
            "the waiting read was not woken"
        );
        assert!(matches!(
            Pin::new(&mut io).poll_read(&mut cx, &mut buf),
            Poll::Ready(Ok(()))
        ));
        assert!(buf.filled().is_empty());
    }

    /// A connected pair of TCP sockets: (gitgate's side, the client's).
    fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    /// What an HTTP/2 client acknowledges does not show that it reads (it acknowledges PINGs
    /// and SETTINGS as well): only an HTTP/1 connection's count is looked at, and only while a
    /// request is in flight.
    #[test]
    fn acknowledgements_count_only_for_an_http1_answer_in_flight() {
        use std::os::fd::AsRawFd;
        let (server, _client) = socket_pair();
        let activity = Activity::new();
        activity.watch_socket(server.as_raw_fd());
        assert_eq!(
            activity.bytes_acked_of_an_answer(),
            None,
            "nothing in flight"
        );
        let request = activity.request_opened();
        assert!(
            activity.bytes_acked_of_an_answer().is_some(),
            "HTTP/1 in flight"
        );
        activity.speaks_http2();
        assert_eq!(activity.bytes_acked_of_an_answer(), None, "HTTP/2");
        drop(request);
    }

    /// A connection about to be closed for idling whose send queue shrinks within the probe
    /// still has a client reading, even when no acknowledgement count is looked at (HTTP/2, or
    /// nothing in flight); one with nothing queued has none.
    #[tokio::test]
    async fn a_send_queue_that_shrinks_shows_a_client_still_reading() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let (mut server, mut client) = socket_pair();
        let activity = Activity::new();
        activity.watch_socket(server.as_raw_fd());
        let never = std::pin::pin!(std::future::pending::<()>());
        assert!(matches!(still_reading(never, &activity).await, Ok(false)));
        server.set_nonblocking(true).unwrap();
        let chunk = [7u8; 64 * 1024];
        while server.write(&chunk).is_ok() {}
        std::thread::sleep(Duration::from_millis(50));
        assert!(activity.send_queue() > 0);
        let reader = std::thread::spawn(move || {
            // Well within the probe's second.
            std::thread::sleep(Duration::from_millis(200));
            let mut buf = vec![0u8; 1024 * 1024];
            let mut read = 0;
            while read < buf.len() {
                read += client.read(&mut buf[read..]).unwrap();
            }
            client
        });
        let never = std::pin::pin!(std::future::pending::<()>());
        assert!(matches!(still_reading(never, &activity).await, Ok(true)));
        drop(reader.join().unwrap());
    }

    /// Once the server drains, a connection that has already waited a second or more for a
    /// request is closed at once, not a second after the drain began.
    #[tokio::test]
    async fn a_drain_closes_a_connection_long_without_a_request_at_once() {
        let activity = Activity::new();
        tokio::time::sleep(DRAINED_WITHIN * 3 / 2).await;
        let (_stop, draining) = tokio::sync::watch::channel(true);
        let began = std::time::Instant::now();
        let closed = until_idle_or_drained(
            std::future::pending::<()>(),
            &activity,
            Duration::from_secs(60),
            Duration::from_secs(30),
            Some(draining),
            None,
        )
        .await;
        assert_eq!(closed, Closed::NoRequest);
        assert!(
            began.elapsed() < DRAINED_WITHIN / 3,
            "closed after {:?}",
            began.elapsed()
        );
    }

    /// A connection the loop last looked at with nothing awaited (a push's probe in flight
    /// during a drain: a second for a request) that awaits the push's POST by the time its
    /// timer wakes (the probe answered) is given the wait for a request from the stop's start.
    /// It was closed whenever the wake came a second or more after the probe's answer ended —
    /// about half the time on a busy machine — and a push whose pack came later was cut off.
    /// Here the event loop is held past the second before the POST is marked as awaited.
    #[tokio::test]
    async fn a_post_awaited_after_the_loop_last_looked_is_given_the_wait_for_a_request() {
        let activity = Activity::new();
        let (_stop, draining) = tokio::sync::watch::channel(true);
        // The probe's answer has ended; its POST is not marked as awaited yet.
        drop(activity.request_opened());
        let closing = until_idle_or_drained(
            std::future::pending::<()>(),
            &activity,
            Duration::from_secs(60),
            Duration::from_secs(12),
            Some(draining),
            None,
        );
        let marked_late = async {
            // The loop has looked once (nothing awaited: a second for a request)...
            tokio::task::yield_now().await;
            // ...and this thread is held past that second before the POST is marked, as a
            // busy event loop may be.
            std::thread::sleep(DRAINED_WITHIN + Duration::from_millis(300));
            activity.rpc_expected();
            std::future::pending::<()>().await
        };
        let outcome = tokio::time::timeout(DRAINED_WITHIN * 3, async {
            tokio::select! {
                biased;
                closed = closing => closed,
                () = marked_late => unreachable!(),
            }
        })
        .await;
        assert!(outcome.is_err(), "closed: {outcome:?}");
    }
}
