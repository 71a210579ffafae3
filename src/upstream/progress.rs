//! When a request body last moved, for the backends' waits on an answer.
//!
//! A backend may take its time before it answers, as long as the client's upload is still
//! moving: git http-backend reads a whole push before it says more than its headers, and
//! another CGI program may read it all before even those. So "no answer for `idle`" is counted
//! from the later of the wait's start and the upload's last frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// Shared between a request body on its way to the backend and the task waiting for the answer.
#[derive(Clone)]
pub struct Progress {
    start: Instant,
    /// One allocation per request for all the upload's flags.
    shared: Arc<Moved>,
}

/// What an upload has done, as both sides see it.
#[derive(Default)]
struct Moved {
    /// When something last moved, in milliseconds from [`Progress::start`].
    last_ms: AtomicU64,
    /// The upload waits for the client (its body was asked for a frame and had none), not for
    /// the backend to read on; see [`Progress::waiting_for_client`].
    waiting: AtomicBool,
    /// The upload is over: the body's end has been sent on (see [`Progress::finished`]).
    finished: AtomicBool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            start: Instant::now(),
            shared: Arc::default(),
        }
    }

    /// Whether the upload now waits for the client's next frame (`true`), or for nothing from
    /// it: the backend reads on, or the upload is over (`false`).
    pub fn waiting(&self, for_client: bool) {
        self.shared.waiting.store(for_client, Ordering::Relaxed);
    }

    /// Whether the upload waits for the client: a silence then is the client's, not the
    /// backend's ([`UploadStalled`]).
    pub fn waiting_for_client(&self) -> bool {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// The upload is over: all of the body has been sent on.
    pub fn finished(&self) {
        self.shared.finished.store(true, Ordering::Relaxed);
    }

    /// Whether the upload is over (see [`Progress::finished`]).
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Relaxed)
    }

    /// Something moved now.
    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.shared.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long since something last moved (or since [`Progress::new`]).
    pub fn idle(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.shared.last_ms.load(Ordering::Relaxed)))
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// An answer's body went silent for the idle time while the client's upload, unfinished, had
/// stopped arriving as long: the backend waits for the client, whose doing the stop is (logged
/// as `idle-timeout`, not counted as an upstream error).
#[derive(Debug)]
pub struct UploadStalled(pub Duration);

impl std::fmt::Display for UploadStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body stopped arriving: nothing came for {}s while the backend waited \
             for it",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for UploadStalled {}

impl UploadStalled {
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, self)
    }

    /// Whether `e` is an [`UploadStalled`].
    pub fn is(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<UploadStalled>())
    }
}

/// The backend died on a request body it could not read (git's `fatal: unexpected line`,
/// `protocol error: ...`) after its answer had begun: the client's doing (logged as
/// `malformed-request`, not counted as an upstream error). Carries how the backend ended.
#[derive(Debug)]
pub struct MalformedRequest(pub String);

impl std::fmt::Display for MalformedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "git could not read the request and ended its answer: {}",
            self.0
        )
    }
}

impl std::error::Error for MalformedRequest {}

impl MalformedRequest {
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }

    /// Whether `e` is a [`MalformedRequest`].
    pub fn is(e: &std::io::Error) -> bool {
        e.get_ref()
            .is_some_and(|inner| inner.is::<MalformedRequest>())
    }
}

/// git http-backend refused a chunked request larger than it buffers (a fetch whose
/// negotiation names hundreds of thousands of refs): its `GIT_HTTP_MAX_REQUEST_BUFFER`, which
/// gitgate sets from `[upstream] max_request_buffer_mib` — and only from it, the backend's
/// environment being cleared, so git's own advice to set the variable would not help. This
/// server's setting, not a backend failure; carries how the backend ended.
#[derive(Debug)]
pub struct OverRequestBuffer(pub String);

impl std::fmt::Display for OverRequestBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request is larger than git http-backend takes: raise [upstream] \
             max_request_buffer_mib (git's GIT_HTTP_MAX_REQUEST_BUFFER, 10 MiB unless set, \
             which gitgate passes on from that setting only); {}",
            self.0
        )
    }
}

impl std::error::Error for OverRequestBuffer {}

impl OverRequestBuffer {
    /// Whether `e` is an [`OverRequestBuffer`].
    pub fn is(e: &std::io::Error) -> bool {
        e.get_ref()
            .is_some_and(|inner| inner.is::<OverRequestBuffer>())
    }
}

/// How long an answer's body has been silent, for a body that fails after `idle` of it: its
/// own frames and those of a request body still going up both count as moving.
///
/// The timer is armed only when the body first has to wait: a small answer already buffered
/// when its headers arrive (most info/refs, every error) never touches the timer wheel. A
/// frame only notes its time; the timer is moved when it fires early (frames came since it was
/// set), so a clone's tens of thousands of frames cost a clock read each, not a timer-wheel
/// move each.
pub struct Silence {
    idle: Duration,
    last: tokio::time::Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Silence {
    /// Counting from now.
    pub fn new(idle: Duration) -> Silence {
        Silence {
            idle,
            last: tokio::time::Instant::now(),
            timer: None,
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The answer moved now.
    pub fn heard(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    /// Ready once neither the answer nor `upload` has moved for `idle`; else pending, woken
    /// when that may have come.
    pub fn poll_over(&mut self, upload: Option<&Progress>, cx: &mut Context<'_>) -> Poll<()> {
        let mut last = self.last;
        if let Some(upload) = upload {
            let now = tokio::time::Instant::now();
            last = last.max(now.checked_sub(upload.idle()).unwrap_or(now));
        }
        let deadline = last + self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Something moved since the timer was set: wait from then.
                Poll::Ready(()) if timer.deadline() < deadline => timer.as_mut().reset(deadline),
                Poll::Ready(()) => return Poll::Ready(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_from_the_last_touch() {
        let p = Progress::new();
        std::thread::sleep(Duration::from_millis(300));
        assert!(p.idle() >= Duration::from_millis(300));
        let touching = std::time::Instant::now();
        p.clone().touch();
        // Measured, not bounded by a fixed time: a loaded machine may hold the thread for any
        // time between the touch and the read. Both count whole milliseconds; 50 ms is far
        // above that and far below the 300 ms an untouched `p` would show besides.
        let idle = p.idle();
        assert!(
            idle <= touching.elapsed() + Duration::from_millis(50),
            "{idle:?}, touched {:?} ago",
            touching.elapsed()
        );
    }

    /// The upload's state is told as set: waiting for the client, then not.
    #[test]
    fn whether_the_upload_waits_for_the_client_is_told_as_set() {
        let p = Progress::new();
        assert!(!p.waiting_for_client());
        p.clone().waiting(true);
        assert!(p.waiting_for_client());
        p.waiting(false);
        assert!(!p.waiting_for_client());
    }

    /// One look at `s`: whether it is silent now (no upload).
    async fn look(s: &mut Silence) -> Poll<()> {
        std::future::poll_fn(|cx| Poll::Ready(s.poll_over(None, cx))).await
    }

    /// An answer heard from after its timer was set is given the whole idle time again from
    /// then: the timer that fires at the old deadline is moved, not obeyed.
    #[tokio::test]
    async fn an_answer_heard_from_is_not_silent_until_the_idle_time_has_passed_since() {
        let idle = Duration::from_millis(300);
        let mut s = Silence::new(idle);
        assert!(look(&mut s).await.is_pending(), "silent at once");
        // Well past the first deadline; nobody looked meanwhile.
        tokio::time::sleep(idle * 3).await;
        s.heard();
        let heard = tokio::time::Instant::now();
        assert!(
            look(&mut s).await.is_pending(),
            "silent right after the answer moved"
        );
        tokio::time::timeout(idle * 10, std::future::poll_fn(|cx| s.poll_over(None, cx)))
            .await
            .expect("never silent");
        assert!(
            heard.elapsed() >= idle / 3,
            "silent after {:?}",
            heard.elapsed()
        );
    }

    /// An upload still moving keeps the answer from being silent, however long the answer
    /// itself has said nothing; without it the same answer is silent.
    #[tokio::test]
    async fn an_upload_moving_keeps_an_answer_from_being_silent() {
        let idle = Duration::from_millis(300);
        let mut s = Silence::new(idle);
        tokio::time::sleep(idle * 3).await;
        let upload = Progress::new();
        upload.touch();
        let over = std::future::poll_fn(|cx| Poll::Ready(s.poll_over(Some(&upload), cx))).await;
        assert!(over.is_pending(), "silent while the upload moved");
        let mut quiet = Silence::new(idle);
        tokio::time::sleep(idle * 3).await;
        assert!(
            look(&mut quiet).await.is_ready(),
            "not silent for the idle time"
        );
    }
}
