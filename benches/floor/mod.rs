//! What the two floors of `benches/run.sh` share (`hyper_401.rs` for benchmark 3,
//! `hyper_hop.rs` for benchmark 2): hyper serving on threads built as gitgate's workers are —
//! one single-threaded tokio runtime per thread, each with its own listening socket on the
//! shared port (`SO_REUSEPORT`), hyper_util's auto builder (HTTP/1 and HTTP/2) on every
//! connection — so that the two differ from gitgate only in what they do with a request.

use std::error::Error;
use std::future::Future;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

type BoxError = Box<dyn Error + Send + Sync>;

/// Serve `handle` on `threads` threads sharing `port` on 127.0.0.1, until the process ends.
pub fn serve<H, F, B, E>(port: u16, threads: usize, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let handle = handle.clone();
            std::thread::spawn(move || serve_on_this_thread(port, handle))
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

fn serve_on_this_thread<H, F, B, E>(port: u16, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + 'static,
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket
            .bind(([127, 0, 0, 1], port).into())
            .expect("the port is free");
        let listener = socket.listen(1024).expect("listen");
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let handle = handle.clone();
                    tokio::task::spawn_local(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(
                                TokioIo::new(stream),
                                hyper::service::service_fn(handle),
                            )
                            .await;
                    });
                }
            })
            .await
    });
}

/// The value `nth` places after `flag` on the command line, if any.
pub fn arg<'a>(args: &'a [String], flag: &str, nth: usize) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + nth).map(String::as_str)
}
