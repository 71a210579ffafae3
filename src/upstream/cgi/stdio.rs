//! The backend's stdin and stderr: the request body copied to stdin frame by frame (and what a
//! broken body does to the backend), and stderr logged line by line, bounded.

use std::fmt;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::sync::oneshot;

use super::process::{killed, KillSwitch};
use crate::upstream::progress::Progress;

/// Longest stderr line we log as one event; longer lines are logged in pieces.
pub(super) const MAX_STDERR_LINE: u64 = 4 * 1024;

/// The most stderr lines of one backend we log. A backend (or a hook it runs) that writes
/// without end must not flood gitgate's log or its disk; the rest is read and counted, so the
/// backend never blocks on a full pipe, and the count is logged when stderr closes.
pub(super) const MAX_STDERR_LINES: u32 = 100;

/// What the stdin task does when the client's body breaks off (an error, or a clean end short of
/// its `Content-Length`, which hyper gives when an HTTP/2 client resets the stream with
/// `NO_ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Break {
    /// Close stdin and let the backend fail by itself: a push. receive-pack, given an
    /// incomplete pack, fails its checksum and removes its quarantined objects; killed, it would
    /// leave them on disk (tens of MB per interrupted push).
    CloseStdin,
    /// Kill the backend: anything else, which has nothing to clean up.
    Kill,
}

/// How the feeding of a request body to the backend ended well; `told` is dropped unsent when
/// the body broke off (or ended short of its length), and the response's head, held until
/// one or the other (see `CgiBody::hold_until_fed`), is then not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fed {
    /// All of it, and stdin closed.
    Whole,
    /// The backend stopped reading it (it answered early, exited, or was ended): its answer
    /// is what counts.
    NotRead,
}

/// Copies the request body to the child's stdin frame by frame, then closes stdin; a broken
/// body is handled as `on_break` says. How it ended is `told` (see [`Fed`]), after stdin is
/// closed.
pub(super) async fn feed_stdin<B>(
    mut body: B,
    stdin: ChildStdin,
    promised: Option<u64>,
    on_break: Break,
    kill: KillSwitch,
    moved: Progress,
    told: oneshot::Sender<Fed>,
) where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    // A local, so that it is closed before `told` is dropped on a return (locals go first).
    let mut stdin = stdin;
    let mut stop = kill.subscribe();
    let mut fed = 0u64;
    // Whatever way this ends, nothing more is waited for from the client.
    struct Over(Progress);
    impl Drop for Over {
        fn drop(&mut self) {
            self.0.waiting(false);
        }
    }
    let moved = Over(moved);
    let moved = &moved.0;
    // What came after the small frames gathered into the last write: the body's end, an
    // error, or a frame, to be handled before the body is polled again.
    let mut held = None;
    loop {
        let frame = match held.take() {
            Some(frame) => frame,
            None => {
                moved.waiting(true);
                let frame = tokio::select! {
                    // Once the backend is ended, not a byte more of the body goes to it.
                    biased;
                    _ = killed(&mut stop) => {
                        // The backend exited (or was ended): the body is not at fault, and
                        // whatever it answered is the answer.
                        drop(stdin);
                        let _ = told.send(Fed::NotRead);
                        return;
                    }
                    frame = body.frame() => frame,
                };
                moved.waiting(false);
                frame
            }
        };
        match frame {
            None => break,
            Some(Ok(frame)) => {
                moved.touch();
                // Trailers have no CGI meaning; only data goes to the backend.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let data = if data.len() < SMALL_FRAME {
                    let (data, next) = gathered(data, &mut body).await;
                    held = next;
                    data
                } else {
                    data
                };
                fed += data.len() as u64;
                if let Err(e) = stdin.write_all(&data).await {
                    // The backend stopped reading (it answered early, or died); its exit status
                    // tells the rest of the story.
                    tracing::debug!(target: "gitgate::cgi", error = ?e.to_string(), "CGI backend stopped reading the request body");
                    drop(stdin);
                    let _ = told.send(Fed::NotRead);
                    return;
                }
            }
            Some(Err(e)) => {
                if on_break == Break::CloseStdin {
                    // The client's body broke: its doing, told with the request by the gate.
                    tracing::info!(target: "gitgate::cgi", error = ?e.to_string(), "push body failed; closing the backend's input so that the push fails and cleans up");
                    return; // closes stdin
                }
                tracing::info!(target: "gitgate::cgi", error = ?e.to_string(), "request body failed; killing the CGI backend");
                kill.kill(&format!("request body failed: {e}"));
                return;
            }
        }
    }
    if let Some(promised) = promised.filter(|&promised| fed < promised) {
        if on_break == Break::CloseStdin {
            tracing::info!(target: "gitgate::cgi", fed, promised, "push body ended short of its Content-Length; closing the backend's input so that the push fails and cleans up");
            return;
        }
        // A broken body, like an error: the kill is asked for before stdin closes (on return).
        tracing::info!(target: "gitgate::cgi", fed, promised, "request body ended short of its Content-Length; killing the CGI backend");
        kill.kill(&format!(
            "request body ended after {fed} of its {promised} bytes"
        ));
        return;
    }
    // Dropping stdin closes the pipe: end of body for a backend reading to EOF.
    drop(stdin);
    let _ = told.send(Fed::Whole);
}

/// A data frame smaller than this is written together with the frames ready right after it.
const SMALL_FRAME: usize = 4 * 1024;
/// At most this much is gathered into one write.
const GATHERED: usize = 64 * 1024;

/// `first`, with the data of the frames of `body` that are ready now (none is waited for), up
/// to [`GATHERED`] bytes; and what came instead of a data frame, if anything did (the end, an
/// error, trailers), to be handled next. A body sent in 1-byte chunks was one pipe write per
/// chunk, and the backend one read per chunk: a hundred times the CPU per byte.
async fn gathered<B>(
    first: Bytes,
    body: &mut B,
) -> (Bytes, Option<Option<Result<Frame<Bytes>, B::Error>>>)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut together: Option<BytesMut> = None;
    let mut held = None;
    while together.as_ref().map_or(first.len(), BytesMut::len) < GATHERED {
        let ready = tokio::select! {
            biased;
            frame = body.frame() => Some(frame),
            () = std::future::ready(()) => None,
        };
        match ready {
            // Nothing more now: what there is goes at once.
            None => break,
            Some(Some(Ok(frame))) if frame.is_data() => {
                let Ok(more) = frame.into_data() else {
                    unreachable!("a data frame")
                };
                together
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&more);
            }
            Some(other) => {
                held = Some(other);
                break;
            }
        }
    }
    (together.map_or(first, BytesMut::freeze), held)
}

/// Logs each stderr line of the child as a warning, up to [`MAX_STDERR_LINES`], then how many
/// more there were; returns the last non-empty one.
pub(super) async fn log_stderr<R: AsyncRead + Unpin>(stderr: R, path: String) -> Option<String> {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut last = None;
    let mut logged = 0u32;
    let mut unlogged = 0u64;
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_STDERR_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if text.is_empty() {
                    continue;
                }
                if logged < MAX_STDERR_LINES {
                    logged += 1;
                    // Quoted, with control characters escaped: the line can hold what a
                    // client sent (receive-pack names a refused ref, hooks echo commits), and
                    // as the message a `\r` or a ` user=...` in it could forge a log line.
                    tracing::warn!(
                        target: "gitgate::cgi",
                        path = %crate::log_value::LogValue(&path),
                        stderr = ?text,
                        "the CGI backend wrote to stderr"
                    );
                } else {
                    unlogged += 1;
                }
                if text.contains("detected dubious ownership") {
                    tracing::error!(
                        target: "gitgate::cgi",
                        path = %crate::log_value::LogValue(&path),
                        "git refuses to serve a repository owned by another user than the one \
                         gitgate runs as: run gitgate as the repositories' owner, or add them to \
                         safe.directory in that user's (or the system's) git config"
                    );
                }
                last = Some(text.to_owned());
            }
        }
    }
    if unlogged > 0 {
        tracing::warn!(
            target: "gitgate::cgi",
            path = %crate::log_value::LogValue(&path),
            logged,
            unlogged,
            "CGI backend wrote more stderr lines than are logged; the rest were read and dropped"
        );
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body whose frames are ready one after another, with a pause (`None`) where given.
    struct Frames(VecDeque<Option<Result<Frame<Bytes>, std::io::Error>>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            match self.0.pop_front() {
                None => Poll::Ready(None),
                Some(Some(frame)) => Poll::Ready(Some(frame)),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        }
    }

    fn byte(b: u8) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        Some(Ok(Frame::data(Bytes::from(vec![b]))))
    }

    #[tokio::test]
    async fn small_frames_ready_together_are_written_together() {
        // 100,000 one-byte chunks: two writes of 64 KiB and the rest, in order.
        let mut body = Frames((0..100_000u32).map(|i| byte(i as u8)).collect());
        let mut written = Vec::new();
        let mut writes = 0;
        while let Some(Ok(frame)) = body.frame().await {
            let (data, held) = gathered(frame.into_data().unwrap(), &mut body).await;
            written.extend_from_slice(&data);
            writes += 1;
            assert!(data.len() <= GATHERED + 1, "{}", data.len());
            if let Some(held) = held {
                assert!(held.is_none(), "only the end can come after");
                break;
            }
        }
        assert_eq!(writes, 2);
        assert!(written.iter().enumerate().all(|(i, &b)| b == i as u8));
        assert_eq!(written.len(), 100_000);
    }

    #[tokio::test]
    async fn nothing_is_waited_for_and_an_error_comes_after_the_data() {
        let mut body = Frames(VecDeque::from([byte(1), None, byte(2)]));
        let (data, held) = gathered(Bytes::from_static(b"0"), &mut body).await;
        assert_eq!(&data[..], b"0\x01");
        assert!(held.is_none(), "the pause ends the gathering");
        let mut body = Frames(VecDeque::from([
            byte(1),
            Some(Err(std::io::Error::other("broke"))),
            byte(2),
        ]));
        let (data, held) = gathered(Bytes::from_static(b"0"), &mut body).await;
        assert_eq!(&data[..], b"0\x01");
        assert!(matches!(held, Some(Some(Err(_)))));
    }

    #[test]
    fn a_backend_flooding_stderr_gets_a_bounded_number_of_log_lines() {
        let flood: String = (1..=5000).map(|n| format!("line {n}\n")).collect();
        let mut last = None;
        let log = crate::store::test_support::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            last = rt.block_on(log_stderr(flood.as_bytes(), "/repo.git/x".into()));
        });
        // Every line is read (the last one is still reported), not every line is logged.
        assert_eq!(last.as_deref(), Some("line 5000"));
        assert_eq!(
            log.matches("line ").count(),
            MAX_STDERR_LINES as usize,
            "{log}"
        );
        assert!(log.contains(&format!("line {MAX_STDERR_LINES}")));
        assert!(!log.contains(&format!("line {}", MAX_STDERR_LINES + 1)));
        assert!(log.contains("logged=100 unlogged=4900"), "{log}");
    }

    #[test]
    fn a_backend_writing_a_few_stderr_lines_has_each_logged() {
        let mut last = None;
        let log = crate::store::test_support::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            last = rt.block_on(log_stderr(&b"fatal: one\n\ntwo"[..], "/r".into()));
        });
        assert_eq!(last.as_deref(), Some("two"));
        assert!(log.contains("fatal: one") && log.contains("two"), "{log}");
        assert!(!log.contains("unlogged"), "{log}");
    }

    #[test]
    fn a_stderr_line_cannot_forge_a_log_line_or_its_fields() {
        // What receive-pack writes for a ref name a client chose, without side-band.
        let forged = b"error: refusing to create funny ref 'refs/heads/x\r2026-12-02T06:00:00Z  \
            INFO gitgate::request: request user=alice\x1b[2K' remotely path=/x user=eve\n";
        let log = crate::store::test_support::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(log_stderr(
                &forged[..],
                "/team/app.git/git-receive-pack".into(),
            ));
        });
        assert!(!log.contains('\r') && !log.contains('\x1b'), "{log:?}");
        assert!(
            log.contains("refs/heads/x\\r2026"),
            "escaped, not dropped: {log}"
        );
        // The line is one quoted field, after the request's own path.
        assert!(
            log.contains(
                "path=/team/app.git/git-receive-pack stderr=\"error: refusing to create funny ref"
            ),
            "{log}"
        );
        assert!(log.contains("remotely path=/x user=eve\""), "{log}");
    }
}
