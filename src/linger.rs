//! What is left of a refused request's body, read and dropped for a little while after the
//! answer (a lingering close, RFC 9112 section 9.6).
//!
//! gitgate refuses a push (`401`, `403`, `429`) without reading its body. Left so, hyper
//! closes the connection with the client's bytes unread, and the kernel answers unread bytes
//! at a close with a reset, which can reach the peer before it has read the answer: nginx in
//! front of gitgate then told git `502 Bad Gateway` instead of why its push was refused. Read
//! for a while, the body lets the answer arrive first; a peer that has it stops sending (nginx
//! does, and git), and the reading ends with the body, or at [`LINGER`] or [`LINGER_BYTES`],
//! whichever comes first, so that a client cannot keep a refused connection busy for long.
//! Over HTTP/2 a stream's unread body is ended with a reset of that stream alone, after the
//! answer; nothing is needed there.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::Version;
use tokio::task::JoinHandle;

/// The longest a refused request's body is read after its answer.
pub const LINGER: Duration = Duration::from_secs(2);

/// The most of a refused request's body read after its answer.
pub const LINGER_BYTES: u64 = 16 << 20;

/// Why the reading of a refused request's body stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// The body ended (or broke off: the client closed), having had this many bytes.
    Ended(u64),
    /// [`LINGER_BYTES`] (or the limit given) was read, and the body went on.
    TooLong,
    /// [`LINGER`] (or the time given) passed.
    TimedOut,
}

/// Reads and drops what is left of a refused HTTP/1 request's `body` on a task of its own,
/// within [`LINGER`] and [`LINGER_BYTES`]; nothing if the body is over already (the task, if
/// one was started).
pub fn after_refusal<B>(version: Version, body: B) -> Option<JoinHandle<Drained>>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    if version >= Version::HTTP_2 || body.is_end_stream() {
        return None;
    }
    Some(tokio::spawn(drain(body, LINGER, LINGER_BYTES)))
}

/// Reads and drops `body` until it ends, `at_most` bytes were read, or `within` passed.
pub async fn drain<B>(mut body: B, within: Duration, at_most: u64) -> Drained
where
    B: Body + Unpin,
{
    let reading = async {
        let mut read = 0u64;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read += hyper::body::Buf::remaining(data) as u64;
                        if read >= at_most {
                            return Drained::TooLong;
                        }
                    }
                }
                Some(Err(_)) | None => return Drained::Ended(read),
            }
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .unwrap_or(Drained::TimedOut)
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
    async fn a_body_longer_than_the_limit_is_left() {
        let (tx, body) = channel();
        let sending = tokio::spawn(async move {
            while tx
                .send(Ok(Frame::data(Bytes::from(vec![0u8; 1000]))))
                .await
                .is_ok()
            {}
        });
        assert_eq!(
            drain(body, Duration::from_secs(5), 10_000).await,
            Drained::TooLong
        );
        sending.await.unwrap();
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_left_at_the_time_limit() {
        let (tx, body) = channel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"half"))))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let within = Duration::from_millis(200);
        assert_eq!(drain(body, within, LINGER_BYTES).await, Drained::TimedOut);
        assert!(started.elapsed() >= within);
        drop(tx);
    }

    #[tokio::test]
    async fn only_the_unread_body_of_an_http1_request_is_read_after_its_answer() {
        assert!(after_refusal(Version::HTTP_11, Empty::<Bytes>::new()).is_none());
        let (_tx, body) = channel();
        assert!(after_refusal(Version::HTTP_2, body).is_none());
        let (tx, body) = channel();
        let lingering = after_refusal(Version::HTTP_11, body).expect("a body still coming");
        tx.send(Ok(Frame::data(Bytes::from_static(b"rest"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(lingering.await.unwrap(), Drained::Ended(4));
    }
}
