//! No panic from the network takes gitgate down, and none goes unlogged.
//!
//! Parsers return errors rather than panic, but a bug is still possible. Two nets catch it:
//! - [`CatchPanic`] wraps each request's service future: a panic while deciding or forwarding a
//!   request becomes a `500` for that request alone (the connection and the process live on).
//!   A panic later, while hyper streams a body, is caught by tokio at the task that polls it:
//!   the connection's over HTTP/1.1, which ends without the chunked body's end (git sees a cut
//!   answer, never a whole one), and the stream's own over HTTP/2, which ends that stream alone.
//! - [`install_hook`] routes every panic message, wherever it happens, through `tracing`, so it
//!   lands in the same log as the requests, with its location.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::{Response, StatusCode};

use crate::gate::{text, ResponseBody};

/// What `running` ends with, or `None` if it panicked: polled inside `catch_unwind`, and
/// dropped (with whatever it held: a listening socket) at the panic. For a loop that runs
/// outside any request and whose end must be said and acted on (the git listener's accepting
/// drains and exits, the metrics listener's says /metrics is gone), not left to end its task
/// with nothing but the panic's line. The panic's message is logged by [`install_hook`].
pub async fn unless_it_panics<T>(running: impl Future<Output = T>) -> Option<T> {
    let mut running = std::pin::pin!(running);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| running.as_mut().poll(cx))) {
            Ok(Poll::Ready(ended)) => Poll::Ready(Some(ended)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        },
    )
    .await
}

/// Log panics with `tracing` (in addition to nothing else: the default hook's stderr print is
/// replaced, since stderr is the log).
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        // The message is free text that may repeat what a client sent (a slice's panic quotes
        // the string it cut, an `unwrap` the error's `Debug`): the string a slice quotes is
        // left out, and the rest written as `LogText`, so that a token secret in it is not,
        // and a newline in it cannot start a forged log line.
        let message = without_the_string_cut(&message);
        tracing::error!(target: "gitgate::panic", %location, "panic: {}", crate::log_value::LogText(&message));
    }));
}

/// A panic message without the string a string's slice quotes: `end byte index 9 is not a
/// char boundary; it is inside 'é' (bytes 8..10) of `alice:hunter2é``, `... is out of bounds
/// of `...``, `begin > end (9 > 3) when slicing `...`` (the standard library's words, the
/// string last, up to 256 bytes of it and then `[...]`) say `<14 bytes, not repeated>` in its
/// place. What a request's handling cuts can be a secret that nothing marks as one — the Basic
/// credentials decoded, the `Authorization` header's base64 of them, a password — which the
/// log's search for token secrets cannot find; the location says where the panic was. Any
/// other message is kept as it is.
fn without_the_string_cut(message: &str) -> std::borrow::Cow<'_, str> {
    const SLICES: [&str; 5] = [
        "byte index ",
        "start byte index ",
        "end byte index ",
        "begin > end ",
        "begin <= end ",
    ];
    if !SLICES.iter().any(|words| message.starts_with(words)) {
        return message.into();
    }
    let (quoted, cut) = match message.strip_suffix("[...]") {
        Some(rest) => (rest, true),
        None => (message, false),
    };
    let Some(quoted) = quoted.strip_suffix('`') else {
        return message.into();
    };
    let opening = [" of `", " when slicing `"]
        .iter()
        .filter_map(|lead| quoted.find(lead).map(|at| at + lead.len()))
        .min();
    let Some(start) = opening else {
        return message.into();
    };
    let length = quoted.len() - start;
    let said = if cut {
        format!("<more than {length} bytes, not repeated>")
    } else {
        format!("<{length} bytes, not repeated>")
    };
    format!("{}{said}`", without_the_char_cut(&quoted[..start])).into()
}

/// The words of a slice's panic before the string it quotes, without the character the cut
/// fell inside (`it is inside 'é' (bytes 28..30)`): that character is the string's, a
/// password's letter, and is said as `a character` (its bytes still say where).
fn without_the_char_cut(words: &str) -> std::borrow::Cow<'_, str> {
    const INSIDE: &str = "; it is inside ";
    let Some(at) = words.find(INSIDE).map(|at| at + INSIDE.len()) else {
        return words.into();
    };
    let Some(end) = words[at..].find(" (bytes ").map(|end| at + end) else {
        return words.into();
    };
    format!("{}a character{}", &words[..at], &words[end..]).into()
}

pin_project_lite::pin_project! {
    /// A request future whose panic becomes a `500` answer.
    ///
    /// The future is held inline, not boxed: hyper keeps one slot per connection for the request
    /// future, so a request costs no allocation of its (several-KB) state machine.
    pub struct CatchPanic<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchPanic<F> {
    pub fn new(inner: F) -> Self {
        CatchPanic { inner }
    }
}

impl<F, B> Future for CatchPanic<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: From<ResponseBody>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                // The hook has logged the message and location already.
                tracing::error!(target: "gitgate::panic", "request handler panicked; answered 500");
                Poll::Ready(Ok(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "gitgate hit an internal error; the request was not forwarded",
                )
                .map(B::from)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500() {
        let fut = async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok::<_, Infallible>(text(StatusCode::OK, "never"))
        };
        let resp = CatchPanic::new(fut).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// A body that sends one frame and panics when polled for the next: a bug met while an
    /// answer streams, after `CatchPanic` has let its head go.
    struct PanicsAfterOneFrame(bool);

    impl hyper::body::Body for PanicsAfterOneFrame {
        type Data = bytes::Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                panic!("a body panicked while streaming");
            }
            Poll::Ready(Some(Ok(hyper::body::Frame::data(
                bytes::Bytes::from_static(b"first part\n"),
            ))))
        }
    }

    /// Serves on loopback the way `server::work` does — hyper's `auto` builder, each connection
    /// a task of a `JoinSet` — `/panics` with [`PanicsAfterOneFrame`] and anything else with
    /// `fine`. The set's tasks come back on the channel as they end.
    async fn serve_panicking_bodies() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Result<(), tokio::task::JoinError>>,
    ) {
        use http_body_util::BodyExt;
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let (ended, ends) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let builder = std::sync::Arc::new(hyper_util::server::conn::auto::Builder::new(
                TokioExecutor::new(),
            ));
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (stream, _) = accepted.unwrap();
                        let builder = builder.clone();
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(
                                |req: hyper::Request<hyper::body::Incoming>| {
                                    CatchPanic::new(async move {
                                        let body: ResponseBody = if req.uri().path() == "/panics" {
                                            PanicsAfterOneFrame(false).boxed_unsync()
                                        } else {
                                            http_body_util::Full::new(bytes::Bytes::from_static(
                                                b"fine",
                                            ))
                                            .map_err(|never| match never {})
                                            .boxed_unsync()
                                        };
                                        Ok::<_, Infallible>(hyper::Response::new(body))
                                    })
                                },
                            );
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        });
                    }
                    Some(end) = connections.join_next() => {
                        let _ = ended.send(end);
                    }
                }
            }
        });
        (at, ends)
    }

    /// Promise 11 of docs/SECURITY.md: a panic while an answer streams over HTTP/1.1 ends that
    /// connection — closed, not left hanging, and without the end of a chunked body, so that
    /// git cannot take a cut answer for a whole one — while the process serves the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_an_answer_streams_ends_only_its_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (at, mut ends) = serve_panicking_bodies().await;
        let ask = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Until the server closes the connection (or, for a whole answer, its end).
            loop {
                let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
                    .await
                    .expect("the connection was left hanging")
                    .unwrap_or(0);
                got.extend_from_slice(&buf[..n]);
                if n == 0 || got.ends_with(b"\r\n0\r\n\r\n") || got.ends_with(b"fine") {
                    return String::from_utf8_lossy(&got).into_owned();
                }
            }
        };
        let cut = ask("/panics").await;
        // hyper holds the head and the first frame until it has polled for more, so the client
        // may get nothing at all; what it must not get is the end of a whole chunked body.
        assert!(
            !cut.contains("\r\n0\r\n\r\n"),
            "a cut answer looked whole: {cut}"
        );
        let end = ends.recv().await.unwrap();
        assert!(
            end.is_err_and(|e| e.is_panic()),
            "the connection's task did not panic"
        );
        let next = ask("/fine").await;
        assert!(
            next.starts_with("HTTP/1.1 200") && next.ends_with("fine"),
            "{next}"
        );
    }

    /// The same over HTTP/2, whose streams hyper runs as tasks of their own: the panic ends
    /// that stream (the client sees it reset), and the connection goes on serving the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_an_http2_answer_streams_ends_only_its_stream() {
        use http_body_util::BodyExt;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (at, _ends) = serve_panicking_bodies().await;
        let stream = tokio::net::TcpStream::connect(at).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let ask = |path: &str| {
            hyper::Request::get(format!("http://x{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        let cut = sender.send_request(ask("/panics")).await.unwrap();
        assert_eq!(cut.status(), StatusCode::OK);
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), cut.collect())
            .await
            .expect("the stream was left hanging");
        assert!(read.is_err(), "a cut answer looked whole");
        let next = sender.send_request(ask("/fine")).await.unwrap();
        assert_eq!(next.status(), StatusCode::OK);
        let body = next.collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"fine");
    }

    #[tokio::test]
    async fn a_normal_handler_passes_through() {
        let fut = async { Ok::<_, Infallible>(text(StatusCode::OK, "fine")) };
        let resp = CatchPanic::new(fut).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    /// The panic hook is the process's: one test at a time puts gitgate's in place (another
    /// putting the harness's back meanwhile would leave a panic unlogged).
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Promise 11 of docs/SECURITY.md: a panic is logged, with its message — a formatted one
    /// too, whose payload is a `String` — and the place in the source where it happened.
    #[test]
    fn a_panic_is_logged_with_its_message_and_where_it_happened() {
        let _hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        let logged = crate::store::test_support::logged(|| {
            let previous = std::panic::take_hook();
            install_hook();
            let caught = catch_unwind(|| panic!("a formatted {}", std::hint::black_box(42)));
            // The harness's own hook back, for the other tests' failures.
            std::panic::set_hook(previous);
            assert!(caught.is_err());
        });
        assert!(logged.contains("panic: \"a formatted 42\""), "{logged}");
        assert!(logged.contains("location=src/unwind.rs:"), "{logged}");
    }

    /// Promise 12 of docs/SECURITY.md, for panics: a panic's message can repeat what a client
    /// sent (slicing a string panics with the string in its message, an `unwrap` with the
    /// error's `Debug`), and the hook writes it with the token secret in it left out and its
    /// line breaks escaped, as every other free text of the log is.
    #[test]
    fn a_panic_message_holding_a_secret_or_a_line_break_is_logged_without_them() {
        let secret = crate::token::generate().unwrap().secret;
        let header = format!("Basic {}é", secret.expose());
        let _hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        let logged = crate::store::test_support::logged(|| {
            let previous = std::panic::take_hook();
            install_hook();
            // The panic Rust itself raises for a cut inside a character quotes the string.
            let cut = header.len() - 1;
            let caught = catch_unwind(|| std::hint::black_box(&header)[..cut].len());
            let forged = catch_unwind(|| {
                panic!(
                    "bad value\nlevel=INFO outcome=ok user=admin {}",
                    std::hint::black_box(1)
                )
            });
            std::panic::set_hook(previous);
            assert!(caught.is_err() && forged.is_err());
        });
        assert!(logged.contains("is not a char boundary"), "{logged}");
        assert!(!logged.contains(secret.expose()), "{logged}");
        assert!(
            logged.contains(&format!("<{} bytes, not repeated>", header.len())),
            "{logged}"
        );
        assert!(
            logged.lines().all(|line| !line.starts_with("level=INFO")),
            "{logged}"
        );
        assert!(logged.contains("bad value\\nlevel=INFO"), "{logged}");
    }

    /// A string's slice that panics quotes the whole string it cut (up to 256 bytes), and the
    /// strings a request's handling cuts hold secrets nothing marks as such: the Basic
    /// credentials decoded (`alice:correct-horse`), the `Authorization` header itself (base64
    /// of them), a REST login's password. The hook says how long the string was and where the
    /// panic happened, never the string.
    #[test]
    fn a_panic_quoting_the_string_it_cut_is_logged_without_it() {
        use base64::Engine;
        let decoded = String::from("alice:correct-horse-battery-é");
        let encoded = base64::engine::general_purpose::STANDARD.encode("bob:staple-zebra");
        let header = format!("Basic {encoded}");
        let _hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        let logged = crate::store::test_support::logged(|| {
            let previous = std::panic::take_hook();
            install_hook();
            let inside_a_char =
                catch_unwind(|| std::hint::black_box(&decoded)[..decoded.len() - 1].len());
            let past_the_end =
                catch_unwind(|| std::hint::black_box(&header)[..header.len() + 1].len());
            let reversed = catch_unwind(|| {
                let (from, to) = std::hint::black_box((9, 3));
                header[from..to].len()
            });
            let long = "x".repeat(300) + &decoded;
            let cut_short = catch_unwind(|| std::hint::black_box(&long)[..long.len() - 1].len());
            std::panic::set_hook(previous);
            assert!(
                inside_a_char.is_err()
                    && past_the_end.is_err()
                    && reversed.is_err()
                    && cut_short.is_err()
            );
        });
        for secret in ["correct-horse", "staple-zebra", &encoded, "xxxxxxxx", "é"] {
            assert!(!logged.contains(secret), "{secret} in {logged}");
        }
        for said in [
            "is not a char boundary; it is inside a character (bytes",
            "is out of bounds of",
            "when slicing",
            &format!("<{} bytes, not repeated>", decoded.len()),
            &format!("<{} bytes, not repeated>", header.len()),
            "<more than 256 bytes, not repeated>",
            "location=src/unwind.rs:",
        ] {
            assert!(logged.contains(said), "{said} not in {logged}");
        }
    }

    /// Only the quoted string of a slice's panic goes: other messages are kept as they are.
    #[test]
    fn only_the_string_a_slice_quotes_is_left_out() {
        for kept in [
            "boom",
            "called `Option::unwrap()` on a `None` value",
            "a message of `ours`",
            "byte index 3 is out of bounds",
        ] {
            assert_eq!(without_the_string_cut(kept), kept);
        }
        assert_eq!(
            without_the_string_cut("end byte index 9 is out of bounds of `alice:pw`"),
            "end byte index 9 is out of bounds of `<8 bytes, not repeated>`"
        );
        // The character a cut fell inside is the string's too.
        assert_eq!(
            without_the_string_cut(
                "byte index 4 is not a char boundary; it is inside 'ü' (bytes 3..5) of `pwdü!`"
            ),
            "byte index 4 is not a char boundary; it is inside a character (bytes 3..5) of \
             `<6 bytes, not repeated>`"
        );
        assert_eq!(
            without_the_string_cut("begin > end (4 > 2) when slicing `a`b`[...]"),
            "begin > end (4 > 2) when slicing `<more than 3 bytes, not repeated>`"
        );
    }
}
