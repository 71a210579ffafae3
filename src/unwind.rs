//! No panic from the network takes gitgate down, and none goes unlogged.
//!
//! Parsers return errors rather than panic, but a bug is still possible. Two nets catch it:
//! - [`CatchPanic`] wraps each request's service future: a panic while deciding or forwarding a
//!   request becomes a `500` for that request alone (the connection and the process live on).
//!   A panic later, while hyper streams a body, is caught by tokio at the connection task.
//! - [`install_hook`] routes every panic message, wherever it happens, through `tracing`, so it
//!   lands in the same log as the requests, with its location.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::{Response, StatusCode};

use crate::gate::{text, ResponseBody};

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
        tracing::error!(target: "gitgate::panic", %location, "panic: {message}");
    }));
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

    #[tokio::test]
    async fn a_normal_handler_passes_through() {
        let fut = async { Ok::<_, Infallible>(text(StatusCode::OK, "fine")) };
        let resp = CatchPanic::new(fut).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
