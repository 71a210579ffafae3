//! Listeners and connections: accept TCP, terminate TLS if configured, speak HTTP/1.1 and
//! HTTP/2 with hyper, hand each request to the [`Gate`], and shut down gracefully.
//!
//! Timeouts suit git: the TLS handshake and the request headers have a deadline (slowloris),
//! and a connection on which no byte moves either way for `idle_timeout` is closed; but nothing
//! limits the total time of a request, because a big clone legitimately streams for minutes.
//! Connections are capped by a semaphore taken *before* `accept`, so past the cap new clients
//! wait in the kernel's backlog instead of costing memory here.
//!
//! Signals: SIGINT/SIGTERM stop accepting and give requests in flight `shutdown_grace` to
//! finish (then `run` returns and the process exits 0); SIGHUP reloads the TLS certificate
//! (see [`crate::tls`]). A panic while handling a request becomes a 500 for that request
//! ([`crate::unwind`]); one while streaming is caught by tokio and ends that connection only.
//! Either way it is logged and the process lives on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Limits, Upstream as UpstreamConfig};
use crate::gate::Gate;
use crate::guard::Guard;
use crate::health;
use crate::metrics::{self, METRICS};
use crate::store::Store;
use crate::tls::CertStore;
use crate::unwind::CatchPanic;
use crate::upstream::{CgiBackend, HttpBackend, Upstream};

/// How the server runs: TLS or not, and its limits.
#[derive(Clone)]
pub struct Settings {
    pub tls: Option<TlsAcceptor>,
    pub limits: Limits,
}

/// Build the gate from the config and serve until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), String> {
    crate::unwind::install_hook();
    let certs = match &config.server.tls {
        Some(tls) => Some(
            CertStore::load(&tls.cert, &tls.key)
                .map_err(|e| format!("{}: {e}", config.source.display()))?,
        ),
        None => None,
    };
    let store = Store::open(&config.store.path).map_err(|e| e.to_string())?;
    let upstream = match &config.upstream {
        UpstreamConfig::Cgi {
            program,
            project_root,
        } => Upstream::Cgi(CgiBackend::new(program.clone(), project_root.clone())),
        UpstreamConfig::Http(http) => Upstream::Http(Box::new(
            HttpBackend::new(http, config.server.trusted_proxies.clone(), certs.is_some())
                .map_err(|e| format!("{}: {e}", config.source.display()))?,
        )),
    };
    let gate = Arc::new(Gate {
        git_prefix: config.server.git_prefix.clone(),
        realm: config.auth.realm.clone(),
        guard: Guard::new(store.clone(), &config.rate_limit, &config.auth_failures),
        trusted_proxies: config.server.trusted_proxies.clone(),
        store,
        upstream,
    });
    let tls = match &certs {
        Some(c) => Some(TlsAcceptor::from(Arc::new(c.server_config()?))),
        None => None,
    };
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    tokio::spawn(reload_on_hangup(certs));
    if let Some(addr) = config.metrics_listen {
        let metrics = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        let local = metrics
            .local_addr()
            .map_err(|e| format!("cannot read the metrics address: {e}"))?;
        tracing::info!("metrics on http://{local}/metrics");
        tokio::spawn(metrics::serve(metrics, gate.store.clone()));
    }
    tracing::info!(
        config = %config.source.display(),
        store = %config.store.path.display(),
        "listening on {}://{local}",
        if tls.is_some() { "https" } else { "http" }
    );
    let settings = Settings {
        tls,
        limits: config.server.limits.clone(),
    };
    serve(listener, gate, settings, shutdown_signal()).await;
    Ok(())
}

/// Accept connections until `shutdown` completes, then drain for at most the grace period.
pub async fn serve(
    listener: TcpListener,
    gate: Arc<Gate>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let limits = &settings.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    gate: gate.clone(),
                    builder: builder.clone(),
                    settings: settings.clone(),
                    watcher: graceful.watcher(),
                    remote,
                };
                let active = METRICS.connection();
                tokio::spawn(async move {
                    conn.run(stream).await;
                    drop(active);
                    drop(permit);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let grace = settings.limits.shutdown_grace;
    tracing::info!(
        "shutting down: no new connections; waiting up to {}s for requests in flight",
        grace.as_secs()
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}

/// One accepted connection, before TLS.
struct Connection {
    gate: Arc<Gate>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    settings: Settings,
    watcher: Watcher,
    remote: std::net::SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let remote = self.remote;
        match self.settings.tls.clone() {
            None => self.serve_io(stream).await,
            Some(acceptor) => {
                let deadline = self.settings.limits.header_read_timeout;
                match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => self.serve_io(tls).await,
                    Ok(Err(e)) => {
                        tracing::debug!(remote = %remote, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(remote = %remote, "TLS handshake timed out"),
                }
            }
        }
    }

    /// Serve HTTP on `io` until the client is done, the connection idles out, or shutdown.
    async fn serve_io<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let remote = self.remote;
        let idle = self.settings.limits.idle_timeout;
        let io = ActivityIo::new(io);
        let activity = io.activity.clone();
        let gate = self.gate;
        // Probes are answered here, before the gate: no token, no classification, never forwarded.
        let service = service_fn(move |req: Request<Incoming>| {
            let gate = gate.clone();
            CatchPanic::new(async move {
                match health::probe(&gate, req.method(), req.uri().path()).await {
                    Some(resp) => Ok(resp),
                    None => gate.handle(req, remote).await,
                }
            })
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = self.watcher.watch(conn);
        tokio::pin!(conn);
        loop {
            let wait = idle.saturating_sub(activity.idle());
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(remote = %remote, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep(wait) => {
                    if activity.idle() >= idle {
                        tracing::debug!(remote = %remote, "closing a connection idle for {}s", idle.as_secs());
                        return;
                    }
                }
            }
        }
    }
}

/// When a connection last moved a byte.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A connection's byte stream, noting every successful read or write.
struct ActivityIo<IO> {
    inner: IO,
    activity: Activity,
}

impl<IO> ActivityIo<IO> {
    fn new(inner: IO) -> Self {
        ActivityIo {
            inner,
            activity: Activity {
                start: Instant::now(),
                last_ms: Arc::new(AtomicU64::new(0)),
            },
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ActivityIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ActivityIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// On SIGHUP, reload the TLS certificate (if any); a bad new one keeps the old.
async fn reload_on_hangup(certs: Option<Arc<CertStore>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificate reload disabled");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match &certs {
                None => tracing::info!("SIGHUP: no [server.tls] configured, nothing to reload"),
                Some(c) => match c.reload() {
                    Ok(()) => tracing::info!(
                        cert = %c.cert_path().display(),
                        "SIGHUP: TLS certificate reloaded; new connections use it"
                    ),
                    Err(e) => tracing::error!(
                        "SIGHUP: keeping the current TLS certificate, the new one is unusable: {e}"
                    ),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = certs;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
