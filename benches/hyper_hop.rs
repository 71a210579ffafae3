//! The floor of benchmark 2: a bare reverse proxy on hyper, built as gitgate's connections are
//! (hyper_util's auto builder on the client's side, hyper's `client::conn::http1` to the
//! upstream, one single-threaded tokio runtime per thread, a pool of keep-alive upstream
//! connections per thread) and doing nothing else — no classification, no token, no store, no
//! header allowlist, no `X-Forwarded-*`, no metrics, no log. Each request goes to the upstream
//! with its method, its path under a prefix and its headers as they came, and the answer comes
//! back as the upstream gave it.
//!
//! `benches/run.sh` runs it beside nginx's `proxy_pass` and gitgate on the same origin (row 2i),
//! so that the table can say how much of gitgate's distance from nginx on the hop is hyper's own
//! (two HTTP/1 codecs and a connection's hand-over per request, in a process of its own) and how
//! much is gitgate's work — as `hyper_401` does for benchmark 3.
//!
//! Run by `benches/run.sh` as `hyper_hop --serve PORT THREADS --upstream ADDR --prefix PATH`;
//! under `cargo bench` (which passes `--bench`) it has nothing to measure alone and exits.

#[path = "floor/mod.rs"]
mod floor;

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

thread_local! {
    /// This thread's idle upstream connections: the most recently returned is taken first, as
    /// gitgate's pool does.
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

/// The upstream's answer body, which gives its connection back to this thread's pool once the
/// last frame has been read (the connection takes no new request before that).
struct Returning {
    inner: Incoming,
    sender: Option<SendRequest<Incoming>>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some(sender) = self.sender.take() {
            IDLE.with(|idle| idle.borrow_mut().push(sender));
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
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

type Answer = Response<Either<Returning, Empty<Bytes>>>;

fn bad_gateway() -> Answer {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// The most recently returned idle connection that can take a request now, or a new one. As in
/// gitgate's pool, closed ones are dropped on the way and one not ready yet (its connection's
/// task has not yet seen the end of its last exchange) stays for a later request.
async fn checkout(upstream: SocketAddr) -> Option<SendRequest<Incoming>> {
    let reused = IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].is_closed() {
                idle.remove(i);
            } else if idle[i].is_ready() {
                return Some(idle.remove(i));
            }
        }
        None
    });
    if reused.is_some() {
        return reused;
    }
    let stream = tokio::net::TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::task::spawn_local(conn);
    Some(sender)
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    prefix: &'static str,
) -> Result<Answer, Infallible> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{prefix}{path}").parse::<Uri>() else {
        return Ok(bad_gateway());
    };
    parts.uri = uri;
    let Some(mut sender) = checkout(upstream).await else {
        return Ok(bad_gateway());
    };
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(|inner| {
            let mut body = Returning {
                inner,
                sender: Some(sender),
            };
            if body.inner.is_end_stream() {
                body.give_back();
            }
            Either::Left(body)
        })),
        Err(_) => Ok(bad_gateway()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(port), Some(upstream)) = (
        floor::arg(&args, "--serve", 1).and_then(|p| p.parse::<u16>().ok()),
        floor::arg(&args, "--upstream", 1).and_then(|a| a.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!(
            "hyper_hop: the floor of benchmark 2, run by benches/run.sh \
             (--serve PORT [THREADS] --upstream ADDR [--prefix PATH])"
        );
        return;
    };
    let threads = floor::arg(&args, "--serve", 2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let prefix: &'static str = floor::arg(&args, "--prefix", 1)
        .unwrap_or("")
        .trim_end_matches('/')
        .to_owned()
        .leak();
    floor::serve(port, threads, move |req| forward(req, upstream, prefix));
}
