//! Keep-alive connections to the upstream git server: one small pool per worker thread.
//!
//! A pool is a stack of idle HTTP/1.1 connections (hyper's `client::conn` senders, each with its
//! connection task on the worker that opened it). Checkout takes the most recently returned one
//! that is ready, so a busy worker keeps reusing a few warm connections, and never waits for one
//! still finishing its exchange; a connection comes back when the upstream's response body has
//! been read to its end, and is dropped instead when the exchange broke off.
//!
//! Why not hyper-util's pooled client, which gitgate used first: per request it boxes its
//! request future, needs an absolute URI (built and parsed again), hashes a pool key under a
//! lock and spawns a task to wait for the connection to be idle again. On the hop benchmark
//! (docs/PERFORMANCE.md) that bookkeeping was a visible share of gitgate's CPU per request;
//! here checkout is a pop from a `Vec` that only its own worker touches.
//!
//! Idle connections are never used once older than `pool_idle_timeout` (set below the
//! upstream's own keep-alive timeout), so gitgate does not send on a connection the upstream is
//! closing. If a reused connection still turns out dead before any answer, the backend sends
//! the request once more on a new connection (see `HttpBackend::send`).

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The request body type sent upstream.
pub type OutBody = UnsyncBoxBody<Bytes, io::Error>;

/// Most idle connections one worker keeps; more are closed when they come back.
const MAX_IDLE: usize = 256;

/// The most an upstream connection reads ahead of the client (hyper's default lets its read
/// buffer grow to about 400 KiB). A clone moves just as fast through 64 KiB reads, and fifty
/// concurrent clones then hold a few MiB here instead of tens.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Where the pool connects.
pub struct Origin {
    pub host: String,
    pub port: u16,
    /// Present for `https` upstreams.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing answered within the connect timeout.
    TimedOut,
    /// The TCP connection failed (refused, unreachable, name not resolved).
    Io(io::Error),
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol).
    Tls(io::Error),
    /// hyper could not set the connection up.
    Http(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::TimedOut => f.write_str("connect timed out"),
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::Http(e) => write!(f, "{e}"),
        }
    }
}

/// A connection out of the pool, with whether it had served a request before.
pub struct Checkout {
    pub sender: SendRequest<OutBody>,
    pub reused: bool,
}

struct Idle {
    sender: SendRequest<OutBody>,
    since: Instant,
}

/// Idle keep-alive connections to one origin.
pub struct Pool {
    origin: Origin,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    pub fn new(origin: Origin, connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool {
            origin,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection ready for a request, or a new one. Never waits for a pooled
    /// connection: one still busy with its exchange is passed over.
    pub async fn checkout(&self) -> Result<Checkout, ConnectError> {
        match self.pop_ready() {
            Some(sender) => Ok(Checkout {
                sender,
                reused: true,
            }),
            None => self.connect_new().await,
        }
    }

    /// A new connection, never a pooled one (for a second attempt after a reused one failed).
    pub async fn connect_new(&self) -> Result<Checkout, ConnectError> {
        Ok(Checkout {
            sender: self.connect().await?,
            reused: false,
        })
    }

    /// Give a connection back after its exchange ended cleanly.
    pub fn put(&self, sender: SendRequest<OutBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Idle connections now held (for tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// The most recently returned connection that is young, open and ready for a request.
    /// Connections idle too long and closed ones are dropped on the way (dropping the sender
    /// ends its connection task and closes the socket). One not ready yet — its exchange still
    /// finishing, such as a push whose body is still going up after the answer came — stays
    /// where it is: a request never waits on another request's connection.
    fn pop_ready(&self) -> Option<SendRequest<OutBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // The stack is ordered by return time: once one is too old, all below it are too.
        if let Some(first_fresh) = idle
            .iter()
            .position(|i| now.duration_since(i.since) < self.idle_timeout)
        {
            idle.drain(..first_fresh);
        } else {
            idle.clear();
        }
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].sender.is_closed() {
                idle.remove(i);
            } else if idle[i].sender.is_ready() {
                return Some(idle.remove(i).sender);
            }
        }
        None
    }

    /// Open a new connection (TCP, then TLS for https) within the connect timeout and start
    /// its connection task on this worker.
    async fn connect(&self) -> Result<SendRequest<OutBody>, ConnectError> {
        let o = &self.origin;
        let connected = tokio::time::timeout(self.connect_timeout, async {
            let tcp = TcpStream::connect((o.host.as_str(), o.port))
                .await
                .map_err(ConnectError::Io)?;
            // Request heads and small answers are single writes: do not hold them back.
            tcp.set_nodelay(true).map_err(ConnectError::Io)?;
            match &o.tls {
                None => handshake(TokioIo::new(tcp))
                    .await
                    .map(|(sender, conn)| {
                        tokio::spawn(drive(conn));
                        sender
                    })
                    .map_err(ConnectError::Http),
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(ConnectError::Tls)?;
                    handshake(TokioIo::new(tls))
                        .await
                        .map(|(sender, conn)| {
                            tokio::spawn(drive(conn));
                            sender
                        })
                        .map_err(ConnectError::Http)
                }
            }
        })
        .await;
        connected.unwrap_or(Err(ConnectError::TimedOut))
    }
}

/// Set up HTTP/1.1 on a connected stream.
async fn handshake<T>(io: T) -> hyper::Result<(SendRequest<OutBody>, http1::Connection<T, OutBody>)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    http1::Builder::new()
        .max_buf_size(MAX_READ_BUFFER)
        .handshake(io)
        .await
}

/// Run one upstream connection until it closes.
async fn drive<T>(conn: http1::Connection<T, OutBody>)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "upstream connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper::Request;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny HTTP/1.1 upstream that answers every request on a connection with `200 ok` and
    /// counts the connections it accepted.
    async fn upstream() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn pool(port: u16, idle: Duration) -> Pool {
        Pool::new(
            Origin {
                host: "127.0.0.1".into(),
                port,
                tls: None,
            },
            Duration::from_secs(2),
            idle,
        )
    }

    async fn get(pool: &Pool) -> bool {
        let mut c = pool.checkout().await.unwrap();
        let req = Request::builder()
            .uri("/x")
            .header("host", "up")
            .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync())
            .unwrap();
        let resp = c.sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        pool.put(c.sender);
        c.reused
    }

    #[tokio::test]
    async fn a_returned_connection_is_reused() {
        let (port, accepted) = upstream().await;
        let p = pool(port, Duration::from_secs(30));
        assert!(!get(&p).await, "the first request opens a connection");
        assert!(get(&p).await, "the second reuses it");
        assert!(get(&p).await);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(p.idle_count(), 1);
    }

    /// A request body that never ends: its connection stays busy after the answer.
    struct Endless;

    impl hyper::body::Body for Endless {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_busy_connection_is_passed_over_not_waited_for() {
        let (port, accepted) = upstream().await;
        let p = pool(port, Duration::from_secs(30));
        let mut busy = p.checkout().await.unwrap();
        let req = Request::builder()
            .method("POST")
            .uri("/push")
            .header("host", "up")
            .body(Endless.boxed_unsync())
            .unwrap();
        // The upstream answers after the head; the request body never finishes.
        let resp = busy.sender.send_request(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
        p.put(busy.sender);
        assert_eq!(p.idle_count(), 1);
        let fresh = tokio::time::timeout(Duration::from_secs(2), get(&p))
            .await
            .expect("a checkout waited for a busy connection");
        assert!(!fresh, "the busy connection was handed out");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // The busy one is still pooled (until it finishes or expires); the fresh one came back.
        assert_eq!(p.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_used_again() {
        let (port, accepted) = upstream().await;
        let p = pool(port, Duration::from_millis(50));
        assert!(!get(&p).await);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(!get(&p).await, "an old idle connection is replaced");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = pool(port, Duration::from_secs(30));
        match p.checkout().await {
            Err(ConnectError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("connected to a closed port"),
        }
    }
}
