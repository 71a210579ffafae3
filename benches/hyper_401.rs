//! The floor of benchmark 3: a bare hyper server that answers every request with gitgate's
//! 401 (the same status, headers and body), built as gitgate's connections are (hyper_util's
//! auto builder, HTTP/1 and HTTP/2, one single-threaded tokio runtime per thread) and doing
//! nothing else — no classification, no token, no store, no throttle, no audit, no metrics.
//! `benches/run.sh` runs it beside nginx's `return 401` and gitgate, so that the table can say
//! how much of gitgate's distance from nginx is hyper's own and how much is gitgate's work.
//!
//! Run by `benches/run.sh` as `hyper_401 --serve PORT [THREADS]`; under `cargo bench` (which
//! passes `--bench`) it has nothing to measure alone and exits.

#[path = "floor/mod.rs"]
mod floor;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};

async fn refuse(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"invalid token\n")));
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"gitgate\""),
    );
    Ok(resp)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(port) = floor::arg(&args, "--serve", 1).and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!(
            "hyper_401: the floor of benchmark 3, run by benches/run.sh (--serve PORT [THREADS])"
        );
        return;
    };
    let threads = floor::arg(&args, "--serve", 2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    floor::serve(port, threads, refuse);
}
