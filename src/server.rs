//! Listeners and connections: accept TCP, speak HTTP/1.1 (and h2c) with hyper, hand each request
//! to the [`Gate`], and shut down gracefully.
//!
//! Timeouts suit git: the header read has a deadline (slowloris), but bodies have none, because a
//! big clone legitimately streams for minutes. A panic while handling a request becomes a 500
//! for that request ([`crate::unwind`]); one while streaming is caught by tokio and ends that
//! connection only. Either way it is logged and the process lives on.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::{Config, Upstream as UpstreamConfig};
use crate::gate::Gate;
use crate::guard::Guard;
use crate::store::Store;
use crate::unwind::CatchPanic;
use crate::upstream::{CgiBackend, Upstream};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Largest request header block accepted (HTTP/1.1).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Build the gate from the config and serve until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), String> {
    crate::unwind::install_hook();
    let store = Store::open(&config.store.path).map_err(|e| e.to_string())?;
    let upstream = match &config.upstream {
        UpstreamConfig::Cgi {
            program,
            project_root,
        } => Upstream::Cgi(CgiBackend::new(program.clone(), project_root.clone())),
    };
    let gate = Arc::new(Gate {
        git_prefix: config.server.git_prefix.clone(),
        realm: config.auth.realm.clone(),
        guard: Guard::new(store.clone(), &config.rate_limit, &config.auth_failures),
        store,
        upstream,
    });
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    tracing::info!(
        config = %config.source.display(),
        store = %config.store.path.display(),
        "listening on http://{local}"
    );
    serve(listener, gate, shutdown_signal()).await;
    Ok(())
}

/// Accept connections until `shutdown` completes, then drain.
pub async fn serve(
    listener: TcpListener,
    gate: Arc<Gate>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
                let gate = gate.clone();
                let service =
                    service_fn(move |req| CatchPanic::new(gate.clone().handle(req, remote)));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(remote = %remote, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        "shutting down: no new connections; waiting up to {}s for requests in flight",
        SHUTDOWN_GRACE.as_secs()
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("grace period over; closing the remaining connections"),
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
