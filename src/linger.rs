//! What is left of a request's body when gitgate answers without having read it all — a
//! refusal, or a backend that failed or answered early — read and dropped for a little while
//! after the answer (a lingering close, RFC 9112 section 9.6).
//!
//! gitgate refuses a push (`401`, `403`, `429`) without reading its body. Left so, hyper
//! closes the connection with the client's bytes unread, and the kernel answers unread bytes
//! at a close with a reset, which can reach the peer before it has read the answer: nginx in
//! front of gitgate then told git `502 Bad Gateway` instead of why its push was refused. So
//! the rest is read, up to [`LINGER_BYTES`], and then left unread but open until [`LINGER`]
//! has passed since the answer: a peer that sends faster than that (nginx sending a body it
//! has stored, at loopback speed) finds its buffers full, stops, and reads the answer before
//! the close. The reading ends early with the body, or when the peer closes (nginx does once
//! it has the answer, and git). A client cannot keep a refused connection for longer than
//! [`LINGER`], nor make gitgate read more than [`LINGER_BYTES`] of it (and the rest of the read
//! that reaches it). Over HTTP/2 a stream's unread body is ended with a reset of that stream
//! alone, after the answer; nothing is needed there.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::Version;
use tokio::task::JoinHandle;

/// How long after the answer the rest of a request's body may keep its connection open.
pub const LINGER: Duration = Duration::from_secs(2);

/// The most of a request's body read after its answer.
pub const LINGER_BYTES: u64 = 16 << 20;

/// How the lingering over a request's body ended, with the bytes of it read.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// The body ended (or broke off: the client closed).
    Ended(u64),
    /// [`LINGER_BYTES`] (or the limit given) was read, and the rest was left unread, the
    /// connection open, until [`LINGER`] (or the time given) had passed.
    TooLong(u64),
    /// [`LINGER`] (or the time given) passed while reading.
    TimedOut(u64),
}

impl Drained {
    /// The bytes of the body read while lingering.
    pub fn read(&self) -> u64 {
        match *self {
            Drained::Ended(n) | Drained::TooLong(n) | Drained::TimedOut(n) => n,
        }
    }
}

/// Lingers over what is left of an HTTP/1 request's `body` on a task of its own, within
/// [`LINGER`] and [`LINGER_BYTES`]; nothing if the body is over already (the task, if one was
/// started). What it reads is counted in the request bytes of `/metrics` (the request's log
/// line, written with its answer, has only what came before).
pub fn after_answer<B>(version: Version, body: B) -> Option<JoinHandle<Drained>>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    if version >= Version::HTTP_2 || body.is_end_stream() {
        return None;
    }
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    Some(runtime.spawn(async move {
        let drained = drain(body, LINGER, LINGER_BYTES).await;
        crate::metrics::METRICS.request_bytes(drained.read());
        drained
    }))
}

/// Reads and drops `body` until it ends, `at_most` bytes were read, or `within` passed; past
/// `at_most`, holds it unread until `within` has passed.
pub async fn drain<B>(mut body: B, within: Duration, at_most: u64) -> Drained
where
    B: Body + Unpin,
{
    let until = tokio::time::Instant::now() + within;
    let mut read = 0u64;
    // Whether it stopped at `at_most`, with the body still coming.
    let too_long = async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read += hyper::body::Buf::remaining(data) as u64;
                        if read >= at_most {
                            return true;
                        }
                    }
                }
                Some(Err(_)) | None => return false,
            }
        }
    };
    let drained = match tokio::time::timeout_at(until, too_long).await {
        Ok(false) => Drained::Ended(read),
        Ok(true) => {
            // Unread, the body fills the peer's buffers, which stops it sending; it reads the
            // answer meanwhile. Dropped (closed, reset) only then.
            tokio::time::sleep_until(until).await;
            Drained::TooLong(read)
        }
        Err(_) => Drained::TimedOut(read),
    };
    drop(body);
    drained
}

/// A request body that, dropped before its end (the backend failed, or answered without
/// reading it all), lingers over its rest ([`after_answer`]).
pub struct Lingering<B: Body + Send + Unpin + 'static>
where
    B::Data: Send,
{
    body: Option<B>,
    version: Version,
    ended: bool,
}

impl<B: Body + Send + Unpin + 'static> Lingering<B>
where
    B::Data: Send,
{
    /// `body`, of a request made over `version`.
    pub fn new(version: Version, body: B) -> Self {
        Lingering {
            body: Some(body),
            version,
            ended: false,
        }
    }
}

impl<B: Body + Send + Unpin + 'static> Body for Lingering<B>
where
    B::Data: Send,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            self.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B: Body + Send + Unpin + 'static> Drop for Lingering<B>
where
    B::Data: Send,
{
    fn drop(&mut self) {
        if let Some(body) = self.body.take().filter(|_| !self.ended) {
            let _ = after_answer(self.version, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::body::Frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;

    type Sent = Result<Frame<Bytes>, std::io::Error>;

    /// A request body the test sends frame by frame; it ends when the sender is dropped.
    struct Arriving(mpsc::Receiver<Sent>);

    impl Body for Arriving {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sent>> {
            self.0.poll_recv(cx)
        }
    }

    fn channel() -> (mpsc::Sender<Sent>, Arriving) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Arriving(rx))
    }

    #[tokio::test]
    async fn a_body_that_ends_is_read_to_its_end() {
        let (tx, body) = channel();
        let sending = tokio::spawn(async move {
            for _ in 0..3 {
                tx.send(Ok(Frame::data(Bytes::from_static(b"pack"))))
                    .await
                    .unwrap();
            }
        });
        let drained = drain(body, Duration::from_secs(5), 1 << 20).await;
        sending.await.unwrap();
        assert_eq!(drained, Drained::Ended(12));
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_ends_the_reading() {
        let (tx, body) = channel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"pa"))))
            .await
            .unwrap();
        tx.send(Err(std::io::Error::other("connection reset")))
            .await
            .unwrap();
        assert_eq!(
            drain(body, Duration::from_secs(5), 1 << 20).await,
            Drained::Ended(2)
        );
    }

    #[tokio::test]
    async fn a_body_longer_than_the_limit_is_held_unread_until_the_time_is_up() {
        let (tx, body) = channel();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = sent.clone();
        let sending = tokio::spawn(async move {
            while tx
                .send(Ok(Frame::data(Bytes::from(vec![0u8; 1000]))))
                .await
                .is_ok()
            {
                counted.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let started = std::time::Instant::now();
        let within = Duration::from_millis(300);
        let drained = drain(body, within, 10_000).await;
        assert!(
            matches!(drained, Drained::TooLong(n) if n >= 10_000),
            "{drained:?}"
        );
        assert!(started.elapsed() >= within);
        sending.await.unwrap();
        // Read up to the limit, then no more: the sender blocked on the full channel (4 frames).
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!((10_000..=15_000).contains(&sent), "{sent}");
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_left_at_the_time_limit() {
        let (tx, body) = channel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"half"))))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let within = Duration::from_millis(200);
        assert_eq!(
            drain(body, within, LINGER_BYTES).await,
            Drained::TimedOut(4)
        );
        assert!(started.elapsed() >= within);
        drop(tx);
    }

    #[tokio::test]
    async fn only_the_unread_body_of_an_http1_request_is_read_after_its_answer() {
        assert!(after_answer(Version::HTTP_11, Empty::<Bytes>::new()).is_none());
        let (_tx, body) = channel();
        assert!(after_answer(Version::HTTP_2, body).is_none());
        let (tx, body) = channel();
        let lingering = after_answer(Version::HTTP_11, body).expect("a body still coming");
        tx.send(Ok(Frame::data(Bytes::from_static(b"rest"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(lingering.await.unwrap(), Drained::Ended(4));
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_lingered_over_and_one_at_its_end_is_not() {
        let frame = || Ok(Frame::data(Bytes::from_static(b"pack")));
        let (tx, body) = channel();
        let mut body = Lingering::new(Version::HTTP_11, body);
        tx.send(frame()).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        drop(body);
        // The rest is read: more than the channel holds gets through.
        for _ in 0..20 {
            tokio::time::timeout(Duration::from_secs(5), tx.send(frame()))
                .await
                .expect("the rest is read")
                .unwrap();
        }

        let (tx, body) = channel();
        let mut body = Lingering::new(Version::HTTP_11, body);
        tx.send(Err(std::io::Error::other("reset"))).await.unwrap();
        assert!(body.frame().await.unwrap().is_err());
        assert!(body.is_end_stream());
        drop(body);
        assert!(
            tx.send(frame()).await.is_err(),
            "a body at its end was kept"
        );

        let (tx, body) = channel();
        drop(Lingering::new(Version::HTTP_2, body));
        assert!(tx.send(frame()).await.is_err(), "an HTTP/2 body was kept");
    }

    /// A body that reaches the limit exactly has been read as far as it may be: it is held
    /// unread from then on, not read on while a frame more comes.
    #[tokio::test]
    async fn a_body_that_reaches_the_limit_exactly_is_read_no_further() {
        let (tx, body) = channel();
        for _ in 0..2 {
            tx.send(Ok(Frame::data(Bytes::from_static(b"pack"))))
                .await
                .unwrap();
        }
        assert_eq!(
            drain(body, Duration::from_millis(200), 8).await,
            Drained::TooLong(8)
        );
        drop(tx);
    }
}
