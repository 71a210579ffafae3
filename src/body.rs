//! Body wrappers shared by the request path.
//!
//! - [`Observed`] lets a closure see each frame as it streams past, without buffering or changing
//!   it, and the body's end or error. The gate counts request bytes with it, the HTTP upstream notes activity for its idle
//!   timeout: one wrapper instead of a near-copy per concern.
//! - [`Batched`] hands frames on in bursts. hyper's client delivers a response body one frame
//!   at a time through a channel, and hyper's server writes (one `writev`) whenever the body it
//!   sends has nothing ready — so an upstream that answers in 4 KiB chunks (nginx + fcgiwrap
//!   does) cost one system call per 4 KiB: 51,000 `writev`s for a 200 MB clone, measured with
//!   strace. Batched waits a few scheduler rounds ([`WAIT_ROUNDS`]; the task that feeds the
//!   channel needs two, measured — a stream driven inline, `upstream::pool`, needs none, and the
//!   rounds cost it nothing measurable) for the next frame before releasing what it holds; while
//!   frames keep coming it gathers up to [`BATCH_FRAMES`] / [`BATCH_BYTES`] and then releases
//!   them back to back, which hyper queues into one `writev`. Frames are never copied or merged,
//!   and a stream that pauses is flushed within those few rounds (microseconds), so git's
//!   progress messages are not held back.
//! - [`LengthUnsaid`] hides a body's known length, so that hyper's client sends it chunked
//!   rather than with a `Content-Length` (see where the HTTP upstream uses it for pushes).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// What an [`Observed`] body's closure is shown.
pub enum Seen<'a, E> {
    Frame(&'a Frame<Bytes>),
    /// The error that ends the body.
    Error(&'a E),
    /// The body's end, once: when it says so after a frame (hyper polls no further then), after
    /// its trailers, or when it ends without a frame.
    End,
    /// Polled, and nothing there yet: the reader waits for whoever sends the body.
    Waiting,
}

/// `inner`, with `on_seen` called for every frame that arrives and for how the body ends.
pub struct Observed<B, F> {
    inner: B,
    on_seen: F,
    ended: bool,
}

impl<B, F> Observed<B, F> {
    pub fn new(inner: B, on_seen: F) -> Self {
        Observed {
            inner,
            on_seen,
            ended: false,
        }
    }
}

impl<B, F> Body for Observed<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnMut(Seen<'_, B::Error>) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let end = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                (this.on_seen)(Seen::Frame(frame));
                // Trailers are a body's last frame; hyper's `Incoming` still says it has more.
                frame.is_trailers() || this.inner.is_end_stream()
            }
            Poll::Ready(Some(Err(e))) => {
                (this.on_seen)(Seen::Error(e));
                false
            }
            Poll::Ready(None) => true,
            Poll::Pending => {
                (this.on_seen)(Seen::Waiting);
                false
            }
        };
        if end && !this.ended {
            this.ended = true;
            (this.on_seen)(Seen::End);
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

/// `inner` with the same frames and end, but — when `hidden` — its length unknown to whoever
/// sends it: hyper's client then sends it chunked instead of with a `Content-Length` it would
/// take from an exact size hint. (A flag rather than a choice of types keeps one body type for
/// the caller.)
pub struct LengthUnsaid<B> {
    inner: B,
    hidden: bool,
}

impl<B> LengthUnsaid<B> {
    pub fn hiding(inner: B, hidden: bool) -> Self {
        LengthUnsaid { inner, hidden }
    }
}

impl<B> Body for LengthUnsaid<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        if !self.hidden {
            return inner;
        }
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower());
        hint
    }
}

/// Most frames held back at once.
pub const BATCH_FRAMES: usize = 16;
/// Most bytes held back at once.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Scheduler rounds to wait for the next frame before releasing what is held.
pub const WAIT_ROUNDS: u8 = 3;

/// `inner`, with data frames handed on in bursts (see the module docs).
pub struct Batched<B: Body> {
    inner: B,
    held: VecDeque<Frame<Bytes>>,
    held_bytes: usize,
    /// Handing the held frames on.
    releasing: bool,
    /// Scheduler rounds spent waiting for the next frame.
    waited: u8,
    /// The inner body's last word (end, trailers or error), given after the held frames.
    last: Option<Option<Result<Frame<Bytes>, B::Error>>>,
    /// An error is reported only after the frames before it had a chance to be written.
    flushed_before_error: bool,
}

impl<B: Body> Batched<B> {
    pub fn new(inner: B) -> Self {
        Batched {
            inner,
            held: VecDeque::new(),
            held_bytes: 0,
            releasing: false,
            waited: 0,
            last: None,
            flushed_before_error: false,
        }
    }
}

impl<B> Body for Batched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.releasing {
                if let Some(frame) = this.held.pop_front() {
                    this.held_bytes -= frame.data_ref().map_or(0, |d| d.len());
                    return Poll::Ready(Some(Ok(frame)));
                }
                this.releasing = false;
            }
            if let Some(last) = this.last.take() {
                if matches!(last, Some(Err(_))) && !this.flushed_before_error {
                    // hyper drops what it has queued but not written when the body fails: give
                    // it one round to write the frames just released, then report the error.
                    this.flushed_before_error = true;
                    this.last = Some(last);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                return Poll::Ready(last);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                // The body's last frame, with nothing held: nothing to wait for, nor to hold it
                // in (a small answer's only frame, nearly all of the refusals' and the hop's).
                Poll::Ready(Some(Ok(frame)))
                    if this.held.is_empty() && this.inner.is_end_stream() =>
                {
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                    this.held_bytes += frame.data_ref().map_or(0, |d| d.len());
                    this.held.push_back(frame);
                    this.waited = 0;
                    if this.held.len() >= BATCH_FRAMES || this.held_bytes >= BATCH_BYTES {
                        this.releasing = true;
                    }
                }
                Poll::Ready(other) => {
                    if this.held.is_empty() {
                        return Poll::Ready(other);
                    }
                    this.last = Some(other);
                    this.releasing = true;
                }
                Poll::Pending => {
                    if this.held.is_empty() {
                        return Poll::Pending;
                    }
                    if this.waited < WAIT_ROUNDS {
                        // Let the task that feeds `inner` run; come straight back.
                        this.waited += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.waited = 0;
                    this.releasing = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty()
            && match &self.last {
                None => self.inner.is_end_stream(),
                Some(None) => true,
                Some(Some(_)) => false,
            }
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let held = self.held_bytes as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// A body that answers each poll from a script: `Some(n)` is a data frame of n bytes,
    /// `None` is Pending; after the script, the end.
    struct Scripted(VecDeque<Option<usize>>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            match self.0.pop_front() {
                Some(Some(n)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n]))))),
                Some(None) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Poll `body` to its end: each poll's outcome as Some(frame length) or None (Pending),
    /// and how often it woke itself.
    fn drive(body: Scripted) -> (Vec<Option<usize>>, usize) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut body = Batched::new(body);
        let mut seen = Vec::new();
        for _ in 0..1000 {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => seen.push(Some(f.into_data().unwrap().len())),
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Ready(None) => {
                    assert!(body.is_end_stream());
                    return (seen, count.0.load(Ordering::Relaxed));
                }
                Poll::Pending => seen.push(None),
            }
        }
        panic!("never ended: {seen:?}")
    }

    #[test]
    fn frames_that_keep_coming_are_released_back_to_back() {
        // Four frames, each arriving one scheduler round after the last; then a pause.
        let mut script: VecDeque<_> = [Some(10), None, Some(20), None, Some(30), None, Some(40)]
            .into_iter()
            .collect();
        script.extend(std::iter::repeat_n(None, usize::from(WAIT_ROUNDS) + 1));
        let (seen, woke) = drive(Scripted(script));
        // Held while they kept coming; released together once WAIT_ROUNDS rounds brought nothing.
        let waits = 3 + usize::from(WAIT_ROUNDS);
        let mut expected = vec![None; waits];
        expected.extend([Some(10), Some(20), Some(30), Some(40)]);
        assert_eq!(seen, expected);
        assert_eq!(
            woke, waits,
            "each wait was one self-wake, never a busy loop"
        );
    }

    #[test]
    fn a_full_batch_goes_out_at_once_and_the_end_after_the_held_frames() {
        let mut script: VecDeque<_> = (0..BATCH_FRAMES + 2).map(|_| Some(1)).collect();
        script.push_back(Some(BATCH_BYTES));
        let (seen, _) = drive(Scripted(script));
        assert_eq!(seen.len(), BATCH_FRAMES + 3);
        assert!(
            seen.iter().all(|s| s.is_some()),
            "no waiting when frames are ready: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&Some(BATCH_BYTES)));
    }

    #[test]
    fn nothing_is_held_when_the_body_waits_with_nothing_new() {
        let (seen, woke) = drive(Scripted([None, None, Some(5)].into_iter().collect()));
        assert_eq!(seen, [None, None, Some(5)]);
        assert_eq!(woke, 0);
    }

    /// A body's last frame, with nothing held before it, goes on as it comes: nothing is
    /// waited for after it, and no queue is made to hold it (a small answer's only frame).
    #[test]
    fn a_last_frame_with_nothing_held_is_not_held() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut body = Batched::new(Scripted([Some(7)].into_iter().collect()));
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => assert_eq!(f.into_data().unwrap().len(), 7),
            _ => panic!("the frame did not come at the first poll"),
        }
        assert!(body.is_end_stream());
        assert_eq!(body.held.capacity(), 0, "a queue was made for it");
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn passes_every_byte_through() {
        let body = Batched::new(Full::new(Bytes::from_static(b"hello")));
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello");
    }

    #[tokio::test]
    async fn a_length_unsaid_body_has_no_exact_size_and_the_same_bytes() {
        let full = Full::new(Bytes::from_static(b"hello"));
        assert_eq!(full.size_hint().exact(), Some(5));
        assert_eq!(
            LengthUnsaid::hiding(full.clone(), false)
                .size_hint()
                .exact(),
            Some(5)
        );
        let body = LengthUnsaid::hiding(full, true);
        assert_eq!(body.size_hint().exact(), None);
        assert!(!body.is_end_stream());
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello");
    }

    #[tokio::test]
    async fn sees_every_frame_and_passes_it_on() {
        let (mut bytes, mut ends) = (0, 0);
        let body = Observed::new(
            Full::new(Bytes::from_static(b"hello")),
            |s: Seen<'_, std::convert::Infallible>| match s {
                Seen::Frame(f) => bytes += f.data_ref().map_or(0, |d| d.len()),
                Seen::Error(_) => unreachable!(),
                Seen::End => ends += 1,
                Seen::Waiting => unreachable!("a full body never waits"),
            },
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello");
        assert_eq!((bytes, ends), (5, 1));
    }

    /// A body of `frames` that says it is at its end once they are taken (as hyper's `Incoming`
    /// with a `Content-Length` does) or never (as a chunked one).
    struct Frames {
        frames: VecDeque<Frame<Bytes>>,
        says_end: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.says_end && self.frames.is_empty()
        }
    }

    /// An `Observed` over `body` that counts the ends it reports.
    fn counting_ends(
        body: Frames,
        ends: &std::cell::Cell<usize>,
    ) -> Observed<Frames, impl FnMut(Seen<'_, std::io::Error>) + '_> {
        Observed::new(body, move |s: Seen<'_, std::io::Error>| {
            if let Seen::End = s {
                ends.set(ends.get() + 1)
            }
        })
    }

    #[tokio::test]
    async fn sees_the_end_either_way_and_once() {
        for says_end in [true, false] {
            let ends = std::cell::Cell::new(0);
            let body = Frames {
                frames: VecDeque::from([Frame::data(Bytes::from_static(b"0000"))]),
                says_end,
            };
            let mut body = counting_ends(body, &ends);
            assert!(body.frame().await.unwrap().is_ok());
            // hyper polls no more once a body says it is at its end.
            assert_eq!(ends.get(), usize::from(says_end));
            assert!(body.frame().await.is_none());
            assert_eq!(ends.get(), 1);
        }
    }

    #[tokio::test]
    async fn trailers_are_the_end() {
        let ends = std::cell::Cell::new(0);
        let body = Frames {
            frames: VecDeque::from([
                Frame::data(Bytes::from_static(b"0000")),
                Frame::trailers(hyper::HeaderMap::new()),
            ]),
            says_end: false,
        };
        let mut body = counting_ends(body, &ends);
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert_eq!(ends.get(), 0);
        // hyper's client writes the trailers and polls the body no more.
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        assert_eq!(ends.get(), 1);
    }

    /// A full batch goes out as soon as it is full: `BATCH_FRAMES` frames ready are released
    /// at once, without waiting for a frame more.
    #[test]
    fn exactly_a_full_batch_is_released_without_waiting() {
        let mut script: VecDeque<_> = (0..BATCH_FRAMES).map(|_| Some(1)).collect();
        script.push_back(None);
        let (seen, woke) = drive(Scripted(script));
        let mut expected = vec![Some(1); BATCH_FRAMES];
        expected.push(None);
        assert_eq!(seen, expected);
        assert_eq!(woke, 0, "a full batch waited");
    }

    /// A body that yields its frames and errors in turn, then the end.
    struct Failing(VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl Body for Failing {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    /// A body that fails after frames hands the frames on, then gives hyper one round to
    /// write them, then the error; and it never says it is at its end before the error (hyper
    /// would end the answer cleanly, as if complete, and never see the failure).
    #[test]
    fn an_error_comes_after_the_frames_before_it_had_a_round_and_is_never_an_end() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut body = Batched::new(Failing(VecDeque::from([
            Ok(Frame::data(Bytes::from_static(b"pack"))),
            Err(std::io::Error::other("upstream reset")),
        ])));
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => assert_eq!(f.into_data().unwrap(), "pack"),
            other => panic!("{other:?}"),
        }
        assert!(!body.is_end_stream(), "at its end with an error to come");
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "the round is a self-wake"
        );
        assert!(!body.is_end_stream(), "at its end with an error to come");
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Err(_)))
        ));
    }

    /// A poll that finds nothing is shown as a wait (the upload then waits for its client),
    /// and the frame that comes after as a frame.
    #[test]
    fn a_poll_that_finds_nothing_is_seen_as_waiting() {
        let mut seen = Vec::new();
        let mut body = Observed::new(
            Scripted([None, Some(3)].into_iter().collect()),
            |s: Seen<'_, std::io::Error>| {
                seen.push(match s {
                    Seen::Frame(_) => "frame",
                    Seen::Error(_) => "error",
                    Seen::End => "end",
                    Seen::Waiting => "waiting",
                })
            },
        );
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        drop(body);
        assert_eq!(seen, ["waiting", "frame", "end"]);
    }
}
