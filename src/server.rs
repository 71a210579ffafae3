//! Listeners and connections: accept TCP, terminate TLS if configured, speak HTTP/1.1 and
//! HTTP/2 with hyper, hand each request to the [`Gate`], and shut down gracefully.
//!
//! Timeouts suit git: the TLS handshake and the request headers have a deadline (slowloris),
//! and an idle connection ([`crate::idle`]: no byte moving, or no request open) is closed after
//! `idle_timeout`; but nothing limits the total time of a request, because a big clone
//! legitimately streams for minutes.
//! Connections are capped by a semaphore taken *before* `accept`, so past the cap new clients
//! wait in the kernel's backlog instead of costing memory here.
//!
//! Signals: SIGINT/SIGTERM stop accepting and give requests in flight `shutdown_grace` to
//! finish (then `run` returns and the process exits 0); SIGHUP reloads the TLS certificate
//! and the upstream credentials ([`crate::reload`]). A panic while handling a request becomes a 500 for that request
//! ([`crate::unwind`]); one while streaming is caught by tokio and ends that connection only.
//! Either way it is logged and the process lives on. One outside any connection — a worker's
//! loop, or the accept loop itself — stops the accepting: the requests in
//! flight drain, and the process exits with status 1 for its supervisor to start it again.

use crate::log_value::LogText;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::address_cap::{refusal, AddressCap, Admission};
use crate::closing::ClosingStream;
use crate::config::{Config, Limits, Upstream as UpstreamConfig};
use crate::gate::{Gate, ResponseBody};
use crate::guard::Guard;
use crate::health;
use crate::idle::{
    until_idle, until_idle_or_drained, Activity, ActivityIo, Closed, EndableIo, Ending, OpenBody,
};
use crate::metrics::{self, ConnectionGuard, Cut, METRICS};
use crate::reload::{certificate_dates_said, reload_on_hangup, watch_certificate_expiry};
use crate::repeats::Repeats;
use crate::signals::{HangupSignal, StopSignals};
use crate::store::Store;
use crate::tls::CertStore;
use crate::unwind::CatchPanic;
use crate::upstream::cgi::ProcessCap;
use crate::upstream::secret::UpstreamSecret;
use crate::upstream::{CgiBackend, HttpBackend, Upstream};

/// How the server runs: TLS or not, and its limits.
#[derive(Clone)]
pub struct Settings {
    pub tls: Option<TlsAcceptor>,
    pub limits: Limits,
}

/// Build the gate from the config and serve until SIGINT or SIGTERM.
///
/// Threads: `[server] workers` event loops (default one per core), each a single-threaded tokio
/// runtime with its own [`Gate`] — and so its own pool of upstream connections. A connection,
/// once accepted, lives on one worker: its requests, its upstream connection and the bodies
/// streaming between them are polled by the same thread, as in nginx's worker model, instead of
/// being handed between threads on every request (the hand-offs and cross-core wake-ups were
/// most of the hop's cost; see docs/PERFORMANCE.md). One acceptor (on the main thread, which is
/// also worker 0) gives each new connection to the worker with the fewest open connections.
/// What must be process-wide is shared: the store and its token cache, the [`Guard`] (rate
/// limits and failed-auth throttling), the connection cap, metrics.
pub fn run(config: Config) -> Result<(), String> {
    crate::unwind::install_hook();
    crate::request_id::seed();
    keep_inherited_descriptors_from_children();
    crate::open_files::raise_limit(config.server.limits.max_connections, config.server.workers)?;
    // Every thread the server needs after its start is started now (see `own_thread` and
    // `blocking_pool`): one started later under a memory limit could abort the process.
    crate::own_thread::stand_by(own_threads(config.server.workers))
        .map_err(|e| crate::own_thread::cannot_start("wait for work", &e))?;
    let main = crate::blocking_pool::configure(&mut tokio::runtime::Builder::new_current_thread())
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    crate::blocking_pool::start(&main)?;
    let ended = main.block_on(run_workers(config));
    // With BeforeTheStore, the store's open may still wait on a lock held elsewhere, in a
    // blocking thread: a stop is not held up for it (SQLite leaves nothing half-done when a
    // process ends). Once served, the store's work is done and flushed (`run_workers`).
    let_go(main);
    ended.map(|_| ())
}

/// Let a runtime go once its work has ended, without waiting for its blocking threads, as
/// dropping it does. What they may still run is nobody's any more: a lookup of the upstream's
/// name given up by its connect (one `getaddrinfo` against a resolver that does not answer
/// runs 5 s per try and name server, up to 30 s with three), or a store read for a request cut
/// at the stop. A dropped runtime waited for them, so the process's exit after a drain that
/// was over could wait up to that long, its supervisor's stop with it (systemd's
/// `TimeoutStopSec` then kills it). The store's writes are not among them: the REST calls'
/// are waited for ([`crate::api::wait_for_store_work`]) and the store's writer flushed, in
/// [`run_workers`], after every worker has ended; queued blocking work is dropped unrun at a
/// runtime's end, as it was by its drop.
fn let_go(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_background();
}

/// The threads of its own ([`crate::own_thread::run`]) the server may run work on at once: each
/// worker's two readiness checks (the store's ping, the CGI program's look: one at a time each),
/// a SIGHUP's reload, the metrics' count of expiring tokens and the retries of unrecorded
/// logins (the start's look for cut-off pushes' objects ends before any of those but the
/// first checks). Started with the server, so that none starts later.
fn own_threads(workers: usize) -> usize {
    2 * workers + 3
}

/// How [`run_workers`] ended without an error.
enum Ended {
    /// A stop signal came while the store was being opened: nothing was served.
    BeforeTheStore,
    /// After serving, every connection closed.
    Served,
}

/// The longest a backend may keep a waiting client without a word: a little under the client
/// connection's idle timeout. Both clocks start at the request's last move, so with equal limits
/// the connection's would close first, and the client would get an empty reply instead of the
/// backend's `504`, the hang logged as the client's leaving.
fn answer_deadline(idle: Duration) -> Duration {
    idle.saturating_sub(Duration::from_secs(1)).max(idle / 2)
}

/// Mark every descriptor gitgate was started with, but stdin, stdout and stderr, close-on-exec.
///
/// gitgate's own descriptors are all opened close-on-exec, but what its parent left open without
/// the flag (a supervisor's pipe, a shell's `exec 9<file`, a CI runner's job descriptor) would
/// otherwise reach every `git http-backend` the CGI runner starts, and every hook that runs
/// under it: code gitgate does not control, handed files it has no business passing on.
/// Runs before any thread exists, so nothing can be opened (or exec'd) in between.
fn keep_inherited_descriptors_from_children() {
    // close_range(2) with CLOSE_RANGE_CLOEXEC (Linux 5.11) does it in one call; on an older
    // kernel, each descriptor in /proc/self/fd gets the flag.
    // SAFETY: the call only sets a flag on descriptors; it takes no pointers.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    } == 0;
    if !marked {
        mark_listed_descriptors_close_on_exec();
    }
}

/// [`keep_inherited_descriptors_from_children`] without `close_range(2)`: each descriptor above
/// stderr that `/proc/self/fd` lists gets `FD_CLOEXEC`.
fn mark_listed_descriptors_close_on_exec() {
    let listed: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %LogText(&e.to_string()), "cannot list inherited file descriptors: backends may inherit them");
            return;
        }
    };
    for fd in listed {
        // SAFETY: fcntl on a descriptor number, no pointers; one that is gone (read_dir's own,
        // closed by now) just fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// How often a run of failed `accept`s (out of file descriptors) is said in the log, with its
/// count ([`Repeats`]); also the metrics listener's.
pub(crate) const ACCEPT_FAILURES_WINDOW: Duration = Duration::from_secs(10);

/// Whether a failed `accept` means the listening socket can accept nothing any more: it was
/// shut down or closed under gitgate (`EINVAL`: no longer listening; `EBADF`, `ENOTSOCK`: the
/// descriptor is not the socket), which no wait mends. Everything else passes — out of file
/// descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`), a connection reset before it
/// was taken (`ECONNABORTED`), a firewall's `EPERM`, and the network errors Linux hands on from
/// the new connection (`EPROTO`, `ENETDOWN`, `EHOSTUNREACH`, `EOPNOTSUPP`, ...) — and is waited
/// out.
pub(crate) fn accept_failed_for_good(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EBADF | libc::ENOTSOCK | libc::EFAULT)
    )
}

/// What to do about a listen address refused: a port below 1024 for want of privilege (a
/// service user, as the README's systemd unit runs gitgate, on 443), or an address this
/// machine does not have ("Cannot assign requested address" alone does not say which part is
/// wrong: a moved IP, a typo, an interface not up yet at boot); `""` for any other failure.
pub fn listen_hint(addr: std::net::SocketAddr, e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "; ports below 1024 need a privilege: give it to the service \
             (AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit, or setcap \
             cap_net_bind_service=+ep on the binary), or listen on a port of 1024 or more"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "; this machine has no such address (see `ip address`): listen on one it has, or on \
             0.0.0.0 or [::] for all of them (a systemd unit that starts before the network is \
             up wants After=network-online.target)"
        }
        _ => "",
    }
}

/// Who holds the port of `addr` when `e` says it is in use, as `check` names it: the failed
/// start's last line is all the journal keeps, and "Address already in use" alone does not say
/// which program to stop (node_exporter on 9100, a gitgate still draining, a forgotten one).
/// Nothing when the holder cannot be seen (another user's process).
pub fn holder_hint(addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    if e.kind() != std::io::ErrorKind::AddrInUse {
        return String::new();
    }
    match crate::port_holder::holder(addr.port()) {
        Some(h) if h.is_gitgate() => format!(
            ": in use by another gitgate ({}, pid {}{}): stop it first, or choose another port",
            h.name,
            h.pid,
            h.config
                .map(|c| format!(", serving {}", c.display()))
                .unwrap_or_default()
        ),
        Some(h) => format!(
            ": in use by {} (pid {}), not a gitgate: choose another port or stop that program",
            h.name, h.pid
        ),
        None => String::new(),
    }
}

async fn run_workers(config: Config) -> Result<Ended, String> {
    // Free text in a field of its own (quoted), so that a logfmt reader takes the line whole.
    for warning in config.warnings() {
        tracing::warn!(reason = %LogText(&warning), "a setting that is likely wrong");
    }
    // Everything that can still fail on a bad setting comes before the store is opened (and
    // created, or migrated): a start that fails changes nothing on disk.
    let certs = match &config.server.tls {
        Some(tls) => {
            let certs = CertStore::load(&tls.cert, &tls.key)
                .map_err(|e| format!("{}: {e}", config.source.display()))?;
            certificate_dates_said(&certs);
            if let Some(warning) = crate::tls::key_readable_by_all(certs.key_path()) {
                tracing::warn!("{warning}");
            }
            Some(certs)
        }
        None => None,
    };
    // Read once, shared by the workers' backends, and read again on SIGHUP.
    let upstream_secret = match &config.upstream {
        UpstreamConfig::Http(http) => match &http.credentials {
            Some(c) => Some(Arc::new(
                UpstreamSecret::load(c).map_err(|e| format!("{}: {e}", config.source.display()))?,
            )),
            None => None,
        },
        UpstreamConfig::Cgi { .. } => None,
    };
    if let Some(warning) = upstream_secret
        .as_ref()
        .and_then(|s| s.file_readable_by_all())
    {
        tracing::warn!("{warning}");
    }
    // Every worker's backend is built here, so a bad upstream setting fails the start, not a
    // worker.
    let mut upstreams = Vec::with_capacity(config.server.workers);
    // One cap for the server, not one per worker.
    let process_cap = match &config.upstream {
        UpstreamConfig::Cgi { max_processes, .. } if *max_processes > 0 => {
            Some(Arc::new(ProcessCap::new(
                *max_processes,
                answer_deadline(config.server.limits.idle_timeout),
            )))
        }
        _ => None,
    };
    for _ in 0..config.server.workers {
        upstreams.push(match &config.upstream {
            UpstreamConfig::Cgi {
                program,
                project_root,
                max_request_buffer_mib,
                ..
            } => {
                let backend = CgiBackend::new(program.clone(), project_root.clone())
                    .with_head_timeout(answer_deadline(config.server.limits.idle_timeout))
                    .with_max_request_buffer(*max_request_buffer_mib);
                Upstream::Cgi(match &process_cap {
                    Some(cap) => backend.with_process_cap(cap.clone()),
                    None => backend,
                })
            }
            UpstreamConfig::Http(http) => {
                let backend = HttpBackend::new(
                    http,
                    upstream_secret.clone(),
                    config.server.trusted_proxies.clone(),
                    certs.is_some(),
                    &config.server.git_prefix,
                )
                .map_err(|e| format!("{}: {e}", config.source.display()))?
                .with_answer_deadline(answer_deadline(config.server.limits.idle_timeout));
                // Said once, by the first worker's backend: every worker builds the same one.
                if upstreams.is_empty() {
                    for warning in backend.warnings() {
                        tracing::warn!(reason = %LogText(warning), "a setting that is likely wrong");
                    }
                }
                Upstream::Http(Box::new(backend))
            }
        });
    }
    let tls = match &certs {
        Some(c) => Some(TlsAcceptor::from(Arc::new(c.server_config()?))),
        None => None,
    };
    // Signals are ours from here on: a SIGHUP (a certificate renewal hook) during the start
    // must not end the process, as its default action would.
    let mut stop = StopSignals::listen();
    let hangup = HangupSignal::listen();
    crate::signals::ignore_user_signals();
    let listener = listen(config.server.listen).map_err(|e| {
        format!(
            "cannot listen on {} ([server] listen in {}): {e}{}{}",
            config.server.listen,
            config.source.display(),
            listen_hint(config.server.listen, &e),
            holder_hint(config.server.listen, &e)
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(listen(addr).map_err(|e| {
            format!(
                "cannot listen for metrics on {addr} ([metrics] listen in {}): {e}{}{}",
                config.source.display(),
                listen_hint(addr, &e),
                holder_hint(addr, &e)
            )
        })?),
        None => None,
    };

    // A stop signal in the meantime ends the start, with nothing served.
    let store = match open_store_unless_stopped(&config.store.path, stop.next()).await {
        Ok(Opening::Opened(store)) => store,
        Ok(Opening::Stopped(signal)) => {
            tracing::info!(
                "stopped: {signal} came while the token store was being opened; nothing was \
                 served"
            );
            return Ok(Ended::BeforeTheStore);
        }
        Err(e) => return Err(config.store_refusal(e)),
    };
    store.start_writer()?;
    store.keep_failure_events(config.auth_failures.keep_in_audit);
    let guard = Arc::new(Guard::new(
        store.clone(),
        &config.rate_limit,
        &config.auth_failures,
        crate::clock::monotonic_ms(),
    )?);
    tokio::spawn(sweep_addresses(Arc::downgrade(&guard)));
    tokio::spawn(say_refusal_tails(Arc::downgrade(&guard)));
    follow_command_line_changes(&store);
    let gates: Vec<Arc<Gate>> = upstreams
        .into_iter()
        .map(|upstream| {
            let challenge = crate::gate::basic_challenge(&config.auth.realm);
            Arc::new(Gate {
                git_prefix: config.server.git_prefix.clone(),
                realm: config.auth.realm.clone(),
                wrong_token_fields: crate::gate::wrong_token_fields(challenge.as_ref()),
                challenge,
                guard: guard.clone(),
                trusted_proxies: config.server.trusted_proxies.clone(),
                store: store.clone(),
                upstream,
                readiness: Default::default(),
                api_body_deadline: config.server.limits.header_read_timeout,
            })
        })
        .collect();
    if let Some(certs) = &certs {
        tokio::spawn(watch_certificate_expiry(certs.clone()));
    }
    // Set once the stop begins: the readiness report and SIGHUP's reloads then have nothing
    // left to say or do.
    let (stopping_now, mut stopping) = watch::channel(false);
    tokio::spawn(reload_on_hangup(
        hangup,
        certs,
        upstream_secret,
        config.clone(),
        stopping.clone(),
    ));
    if let Some(metrics) = metrics_listener {
        let local = metrics
            .local_addr()
            .map_err(|e| format!("cannot read the metrics address: {e}"))?;
        tracing::info!("metrics on http://{local}/metrics");
        tokio::spawn(metrics::serve(
            metrics,
            store.clone(),
            config.server.limits.clone(),
            stopping.clone(),
        ));
    }
    let settings = Settings {
        tls,
        limits: config.server.limits.clone(),
    };

    let mut workers = Vec::with_capacity(gates.len());
    let mut threads = Vec::new();
    let mut gates = gates.into_iter();
    let first = gates.next().expect("at least one worker");
    let probe = first.clone();
    let (worker, inbox) = Worker::new();
    let (cut_off_now, cut_off) = watch::channel(false);
    let main_worker = tokio::spawn(work(first, settings.clone(), inbox, cut_off.clone()));
    workers.push(worker);
    for (i, gate) in gates.enumerate() {
        let (worker, inbox) = Worker::new();
        let settings = settings.clone();
        let cut_off = cut_off.clone();
        let runtime = Unstarted(Some(
            crate::blocking_pool::configure(&mut tokio::runtime::Builder::new_current_thread())
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?,
        ));
        if let Some(built) = &runtime.0 {
            crate::blocking_pool::start(built)?;
        }
        let thread = std::thread::Builder::new()
            .name(format!("gitgate-worker-{}", i + 1))
            .spawn(move || {
                let mut runtime = runtime;
                let runtime = runtime
                    .0
                    .take()
                    .expect("a worker's runtime is started once");
                runtime.block_on(work(gate, settings, inbox, cut_off));
                let_go(runtime);
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        workers.push(worker);
        threads.push(thread);
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        build_id = crate::build_id::own().unwrap_or("-"),
        config = %crate::log_value::LogFile(&std::path::absolute(&config.source).unwrap_or_else(|_| config.source.clone())),
        store = %crate::log_value::LogFile(&config.store.path),
        workers = workers.len(),
        "listening on {}://{local}",
        if settings.tls.is_some() { "https" } else { "http" }
    );
    // The start's readiness report, unless a stop comes first: "ready" after "shutting down"
    // would tell a log reader the opposite of what is happening.
    tokio::spawn(async move {
        tokio::select! {
            () = health::check_at_start(&probe) => {}
            _ = stopping.wait_for(|stopping| *stopping) => {}
        }
    });
    // A thread of its own, as for the store's open: tokio's blocking pool panics when its
    // first thread cannot start (a process limit reached), which here, on the main thread,
    // ended the process with a panic right after it said it was listening. One of those
    // started with the server: a thread started now, after the line that tells the server
    // is up, could meet a memory limit set since and abort the process (see `own_thread`).
    if let UpstreamConfig::Cgi { project_root, .. } = &config.upstream {
        let project_root = project_root.clone();
        drop(
            crate::own_thread::run("gitgate-quarantines", move || {
                say_stale_quarantines(&project_root)
            })
            .map_err(|e| {
                crate::own_thread::cannot_start("look for the objects of cut-off pushes", &e)
            })?,
        );
    }
    let address_cap = settings
        .limits
        .max_connections_per_address
        .map(|max| AddressCap::new(max, config.server.trusted_proxies.clone()));
    let accepting = until_its_panic(
        accept(
            listener,
            local,
            &workers,
            &settings.limits,
            address_cap,
            stop.next(),
        ),
        settings.limits.shutdown_grace,
    )
    .await;
    let _ = stopping_now.send(true);
    // A second stop signal ends the drain at once. One within a second of the first is the
    // same stop: Ctrl-C in a terminal sends SIGINT, and a supervisor may pass on a SIGTERM too.
    let stopping = tokio::time::Instant::now();
    tokio::spawn(async move {
        loop {
            stop.next().await;
            if stopping.elapsed() >= SAME_STOP {
                break;
            }
        }
        tracing::warn!("second stop signal: closing the remaining connections now");
        let _ = cut_off_now.send(true);
    });
    // Closing the inboxes tells every worker to drain.
    drop(workers);
    let _ = main_worker.await;
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    // No request is left: the counts of refusals not logged yet, which no next refusal will say.
    guard.say_refusal_tails(crate::clock::monotonic_ms(), true);
    crate::request_log::say_form_refusal_tails(true);
    // No request is left: write what the store's writer still holds (audit events and last
    // uses of the last window), which would otherwise end with the process.
    // And tell now of store files changed under the running server, which the store's last
    // close would otherwise tell after the "stopped" line that ends the log.
    // The workers' runtimes were let go without waiting for their blocking threads
    // ([`let_go`]): first the REST calls' store work that is still running (calls cut at the
    // stop), so that the flush comes after it and the process's end cuts none of it.
    let written = tokio::task::spawn_blocking(move || {
        crate::api::wait_for_store_work();
        let written = store.flush_pending_writes();
        // The command line's last changes, made within the follower's last second.
        log_command_line_changes(&store);
        store.report_changed_files();
        written
    })
    .await
    .unwrap_or(false);
    if written {
        tracing::info!(
            "stopped: every connection closed, the audit events and last uses still pending at \
             the stop written (any lost before it are logged above)"
        );
    } else {
        tracing::warn!(
            "stopped: every connection closed; pending audit events or last uses could not be \
             written (see above)"
        );
    }
    // A listening socket that failed for good, a worker that stopped (a panic outside a
    // connection), or the accepting's own panic, ends the process with its reason (exit 1), so
    // that a supervisor starts it again rather than taking the stop for one it asked for.
    accepting.map(|_| Ended::Served)
}

/// How often the server looks for audit events of command-line changes to log.
const COMMAND_EVENTS_EVERY: Duration = Duration::from_secs(1);

/// The id of the last audit event [`log_command_line_changes`] has looked past; `None` until it
/// began (at the start, from the newest event then: history is not logged again). One lock
/// for the follower and the stop's last look, so that no event is logged twice.
static COMMAND_EVENTS_SEEN: std::sync::Mutex<Option<i64>> = std::sync::Mutex::new(None);

/// Logs the audit events of the changes made with the command line while the server runs
/// (`gitgate token revoke`, `grant add`, ...), within a second and at the stop, as the server
/// logs its own — a log shipped to a SIEM must show a token revoked at the terminal too — with
/// `via=command-line`. The server's own events, and those of other servers on the store, are
/// logged by whoever made them. Begins from the newest event at the start (read before the
/// server listens).
fn follow_command_line_changes(store: &Store) {
    // On a store failing already (its requests say so), the follower's first look begins.
    if let Ok(newest) = store.newest_audit_id() {
        *COMMAND_EVENTS_SEEN
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(newest);
    }
    let store = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(COMMAND_EVENTS_EVERY).await;
            let s = store.clone();
            let _ = tokio::task::spawn_blocking(move || log_command_line_changes(&s)).await;
        }
    });
}

/// Logs the command line's audit events written since the last look (see
/// [`follow_command_line_changes`]); nothing on a store error. A follower that could not
/// begin (the store failing at the start) begins now, from the newest event.
fn log_command_line_changes(store: &Store) {
    const AT_MOST: usize = 1000;
    let mut seen = COMMAND_EVENTS_SEEN
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Ok(newest) = store.newest_audit_id() else {
        return;
    };
    let Some(after) = *seen else {
        *seen = Some(newest);
        return;
    };
    let Ok(events) = store.command_events_after(after, newest, AT_MOST) else {
        return;
    };
    // Past every row read, whoever wrote it (a flood of failed logins is read once); where a
    // full batch stops, the next look goes on from it.
    *seen = Some(match events.last() {
        Some(last) if events.len() == AT_MOST => last.id,
        _ => newest.max(after),
    });
    for e in events {
        tracing::info!(
            target: "gitgate::audit",
            actor = %crate::log_value::LogValue(&e.actor),
            source = %crate::log_value::LogValue(&e.source),
            action = e.action.as_str(),
            target = e.target.as_str(),
            detail = e.detail.as_str(),
            count = e.count,
            at = e.at,
            via = "command-line",
            "audit"
        );
    }
}

/// Sweeps the address throttle every [`crate::guard::SWEEP_EVERY`] until the guard is gone: a
/// flood of failures from many addresses leaves its entries (and the memory of their peak)
/// behind, and once it ends no new failure comes to sweep them.
async fn sweep_addresses(guard: std::sync::Weak<Guard>) {
    let mut every = tokio::time::interval(crate::guard::SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(guard) = guard.upgrade() else { return };
        guard.sweep(crate::clock::monotonic_ms());
    }
}

/// Says the tails of bursts of refusals (see [`crate::repeats::Refusals::tail`]) every
/// [`crate::guard::TAILS_SAID_EVERY`] until the guard is gone: a burst logged once a minute
/// with `unlogged=` would otherwise leave its last minute's count unsaid when it stops.
async fn say_refusal_tails(guard: std::sync::Weak<Guard>) {
    let mut every = tokio::time::interval(crate::guard::TAILS_SAID_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(guard) = guard.upgrade() else { return };
        guard.say_refusal_tails(crate::clock::monotonic_ms(), false);
        crate::request_log::say_form_refusal_tails(false);
    }
}

/// Pushes cut off before being applied whose objects are still on disk (a SIGKILL of the last
/// server, say), said once at the start, off the event loops: the walk reads every
/// repository's `objects/`.
fn say_stale_quarantines(project_root: &std::path::Path) {
    use crate::upstream::cgi::repositories;
    let found = repositories::under(project_root);
    let stale = repositories::stale_quarantines(&found, std::time::SystemTime::now());
    if let Some(warning) = repositories::quarantine_warning(&stale, project_root) {
        tracing::warn!(reason = %LogText(&warning), "objects of cut-off pushes left on disk");
    }
}

/// How [`open_store_unless_stopped`] ended without an error.
enum Opening {
    Opened(Store),
    /// A stop signal came first (named): nothing is left of a store the start was making.
    Stopped(&'static str),
}

/// [`open_store`] on a thread of its own (a thread rather than tokio's blocking pool, whose
/// first thread failing to start — a process limit reached — is a panic, not an error to
/// say), unless `stop` completes first. The open of a store there already may wait up to
/// SQLite's busy timeout on a lock held by another process: the start then ends at once. One
/// that is making a new store is waited for and its store taken back, as a command's is: the
/// process's end in the middle left an empty `gitgate.db` and its `-journal`, which `check`
/// took for a failed restore and every command refused, after a start that said nothing
/// was served.
async fn open_store_unless_stopped(
    path: &std::path::Path,
    stop: impl Future<Output = &'static str>,
) -> Result<Opening, String> {
    let new_store = crate::store::BeforeANewStore::at(path);
    let owned = path.to_path_buf();
    let opening =
        crate::own_thread::run("gitgate-store-open", move || open_store(&owned, new_store))
            .map_err(|e| crate::own_thread::cannot_start("open the token store", &e))?;
    tokio::pin!(opening);
    tokio::select! {
        opened = &mut opening => opened
            .ok_or_else(|| "opening the token store failed: its thread ended".to_string())?
            .map(Opening::Opened),
        signal = stop => {
            if let Some(before) = new_store {
                // Its files closed (dropped) before they are taken back.
                drop(opening.await);
                crate::store::undo_a_new_store(path, before);
            }
            Ok(Opening::Stopped(signal))
        }
    }
}

/// The store as `serve` needs it: writable by this process (asked before the open, which would
/// otherwise leave a `-wal` and `-shm` of this user's beside a store it cannot write), opened,
/// watched, tried with a write, and its pooled connections opened. A new store (made over what
/// was there `new_store`) that then fails — a full disk met half-way through its making — is
/// taken back: a failed start changes nothing on disk, as a failed command does.
fn open_store(
    path: &std::path::Path,
    new_store: Option<crate::store::BeforeANewStore>,
) -> Result<Store, String> {
    Store::check_can_write(path).map_err(|e| e.to_string())?;
    let opened = open_checked_store(path);
    if let (Err(_), Some(before)) = (&opened, new_store) {
        crate::store::undo_a_new_store(path, before);
    }
    opened
}

/// [`open_store`]'s open and checks, once the store's folder is known to be writable.
fn open_checked_store(path: &std::path::Path) -> Result<Store, String> {
    let store = Store::open(path).map_err(|e| e.to_string())?;
    store.watch_folders();
    if let Some(warning) = crate::store::readable_by_others(path) {
        tracing::warn!(reason = %LogText(&warning), "the token store is readable by others");
    }
    if let Some(warning) = crate::store::low_on_space(path) {
        tracing::warn!(reason = %LogText(&warning), "the token store's disk is nearly full");
    }
    match store.check_writable() {
        Ok(()) => {}
        // Another process holding the write lock (a long CLI change) is not a store gitgate
        // cannot write: tokens are read beside it, and the writer's commits wait their turn.
        Err(crate::store::StoreError::Busy) => tracing::warn!(
            store = %crate::log_value::LogFile(path),
            held = %LogText(&crate::store::write_lock_said(path)),
            "the token store is locked by another process: serving; its writes (audit events, \
             last uses) wait until the lock is released"
        ),
        Err(e) => return Err(e.to_string()),
    }
    store.fill_pool().map_err(|e| e.to_string())?;
    Ok(store)
}

/// A connection handed from the acceptor to a worker, with its place under the connection cap
/// and under its address's cap.
struct Accepted {
    stream: std::net::TcpStream,
    remote: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
    address: Admission,
}

/// A connection's places under `max_connections` and under its address's cap, given back when
/// its socket closes: with the connection, or once its lingering close is over
/// ([`ClosingStream`]). Given back at the connection's end, a socket still sending its last
/// answer to a client that reads slowly held none: one address could keep any number of them
/// open, each a descriptor and a send queue, by reading a little every few seconds.
///
/// It also holds the connection's count in `gitgate_active_connections`, so that the gauge
/// shows the sockets that take these places: a lingering one included.
pub struct Places {
    _permit: OwnedSemaphorePermit,
    _address: Admission,
    _active: ConnectionGuard,
}

/// The acceptor's handle on one worker thread.
struct Worker {
    inbox: mpsc::UnboundedSender<Accepted>,
    /// Connections open on this worker.
    open: Arc<AtomicUsize>,
}

/// One of a worker's open connections, for the acceptor's choice of the least busy worker.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's side: new connections, and the count it keeps up to date.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Accepted>,
    open: Arc<AtomicUsize>,
}

impl Worker {
    fn new() -> (Worker, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        (
            Worker {
                inbox: tx,
                open: open.clone(),
            },
            Inbox { rx, open },
        )
    }
}

/// The most header fields a request may have (hyper's HTTP/1.1 limit; see the service in
/// [`Connection::serve_io`] for HTTP/2).
const MAX_HEADER_FIELDS: usize = 100;

/// How many header fields `req` counts for [`MAX_HEADER_FIELDS`]. An HTTP/2 client may send
/// its `Cookie` as one field per cookie (RFC 9113 §8.2.3, for the header compression), which
/// over HTTP/1.1 is one field: counted as one, so that a browser's cookies for the host are not
/// a 431 on HTTP/2 alone. (gitgate passes no `Cookie` on.)
fn header_fields<B>(req: &Request<B>) -> usize {
    let all = req.headers().len();
    if all <= MAX_HEADER_FIELDS || req.version() != hyper::Version::HTTP_2 {
        return all;
    }
    let crumbs = req.headers().get_all(hyper::header::COOKIE).iter().count();
    all - crumbs.saturating_sub(1)
}

/// The fewest bytes an HTTP/1 request's head can have taken on the wire: its request line and
/// each field as `name: value` with its CRLF, and the blank line. hyper's own limit
/// (`max_buf_size`) is checked only while a head is incomplete: one read that brings the rest
/// in — over TLS a read returns all the plaintext at hand, many records' worth — ended heads of
/// up to about twice `[server] max_header_bytes` that were let through. This count holds every
/// head to it; an HTTP/2 one is held by its header list's size, in h2.
fn head_bytes<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    // `GET /path HTTP/1.1\r\n`
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    line + fields + "\r\n".len()
}

/// How many connections over their address's cap may wait for their `503` at once, beside
/// `max_connections` (see [`accept`]).
const OVER_CAP_SLOTS: usize = 64;

/// How many connections the kernel may hold ready for `accept` (the listen backlog; it clamps
/// it to `net.core.somaxconn`, 4096 by default): those past `max_connections` wait there, and
/// past the backlog a client's SYN is dropped and retried after a second, then three, then
/// seven. The standard library's and tokio's 128 made a burst of clients (a CI fleet starting at
/// once) wait seconds for handshakes; nginx's default is 511.
const LISTEN_BACKLOG: u32 = 1024;

/// The git and metrics listeners: bound as tokio's `TcpListener::bind` does (`SO_REUSEADDR`),
/// with [`LISTEN_BACKLOG`]. An IPv6 one takes IPv4 clients too (`IPV6_V6ONLY` off), as
/// `[::]:443` does by default on Linux — set here, so that a host with
/// `net.ipv6.bindv6only = 1` does not quietly serve IPv6 only (and the config's check that two
/// listeners do not overlap holds there too).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        let socket = tokio::net::TcpSocket::new_v6()?;
        rustix::net::sockopt::set_ipv6_v6only(&socket, false)?;
        socket
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A worker's runtime on its way to the thread that runs it. If that thread cannot be started
/// (a process limit reached), the runtime is dropped here, in the async context of the start,
/// where tokio's blocking drop would panic ("Cannot drop a runtime in a context where blocking
/// is not allowed") instead of the start saying why it failed: it is let go without waiting.
struct Unstarted(Option<tokio::runtime::Runtime>);

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The running worker with the fewest open connections (the first of equals); `None` when none
/// runs. One that stopped has none open, and was the least busy for every connection after.
fn least_busy(workers: &[Worker]) -> Option<&Worker> {
    workers
        .iter()
        .filter(|w| !w.inbox.is_closed())
        .min_by_key(|w| w.open.load(Ordering::Relaxed))
}

/// Which worker stopped while connections are still handed out: its inbox was dropped, which
/// before the drain begins only a panic outside a connection's task does (in its loop or its
/// runtime), its connections cut with it. Never completes while all run.
async fn a_worker_stopped(workers: &[Worker]) -> usize {
    let mut closed: Vec<_> = workers.iter().map(|w| Box::pin(w.inbox.closed())).collect();
    std::future::poll_fn(|cx| {
        for (i, c) in closed.iter_mut().enumerate() {
            if c.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Why the accepting ended when worker `i` stopped (see [`a_worker_stopped`]).
fn worker_stopped(i: usize) -> String {
    format!(
        "worker {i} stopped (its panic is in the log above): its connections were cut, and a \
         server short of a worker serves at part of its capacity; gitgate stopped, to be \
         started again"
    )
}

/// `accepting` ([`accept`]) with a panic of its own — in the accept loop, outside any
/// connection — ending it as a stopped worker does: with the reason ([`accepting_stopped`];
/// the panic's message is in the log, by [`crate::unwind::install_hook`]), the listening socket
/// closed with the panicked loop, and the drain and exit status 1 to follow. Unwinding through
/// the main thread ended the process at once instead (status 101), cutting every request in
/// flight, with no word of why beyond the panic.
async fn until_its_panic(
    accepting: impl Future<Output = Result<&'static str, String>>,
    grace: Duration,
) -> Result<&'static str, String> {
    // The panicked loop is dropped with its panic, its listening socket with it.
    let ended = crate::unwind::unless_it_panics(accepting).await;
    ended.unwrap_or_else(|| {
        let why = accepting_stopped();
        tracing::error!(
            error = %LogText(&why),
            "shutting down: gitgate cannot go on serving (its accepting of connections \
             panicked); waiting up to {}s for requests in flight, then exiting with status 1",
            grace.as_secs()
        );
        Err(why)
    })
}

/// Why the accepting ended when it panicked (see [`until_its_panic`]).
fn accepting_stopped() -> String {
    "the accepting of connections stopped (its panic is in the log above): no new connection \
     is taken; gitgate stopped, to be started again"
        .to_string()
}

/// Accept connections until `shutdown` completes (`Ok`, naming the signal), handing each to the
/// least busy worker, or until the listening socket fails for good (`Err`, saying why): a
/// process left up with a socket that accepts nothing serves nobody, and only says so in a
/// warning every ten seconds.
async fn accept(
    listener: TcpListener,
    local: std::net::SocketAddr,
    workers: &[Worker],
    limits: &Limits,
    address_cap: Option<Arc<AddressCap>>,
    shutdown: impl Future<Output = &'static str>,
) -> Result<&'static str, String> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let over_cap_slots = Arc::new(Semaphore::new(OVER_CAP_SLOTS));
    let mut accept_failures = Repeats::new(ACCEPT_FAILURES_WINDOW);
    // Said as nginx says "worker_connections are not enough": a cap set too low shows in the
    // log, not only as clients waiting.
    let mut at_the_cap = Repeats::new(ACCEPT_FAILURES_WINDOW);
    tokio::pin!(shutdown);
    let stopped = a_worker_stopped(workers);
    tokio::pin!(stopped);
    let ended: Result<&'static str, String> = 'accepting: loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                // A load that hovers at the cap is one run, said once per window.
                if let Some(times) = at_the_cap.ended_quietly(Instant::now()) {
                    tracing::info!(
                        times,
                        "below max_connections again: no connection has waited for {}s",
                        ACCEPT_FAILURES_WINDOW.as_secs()
                    );
                }
                p
            }
            Err(tokio::sync::TryAcquireError::Closed) => {
                break 'accepting Ok("the connection slots' end")
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                if let Some(times) = at_the_cap.failed(Instant::now()) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        times,
                        "max_connections reached: new connections wait in the listen backlog \
                         until one closes (said again at most every {}s while it goes on)",
                        ACCEPT_FAILURES_WINDOW.as_secs()
                    );
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        // Never closed: the semaphore lives as long as this loop.
                        Err(_) => break 'accepting Ok("the connection slots' end"),
                    },
                    signal = &mut shutdown => break 'accepting Ok(signal),
                    i = &mut stopped => break 'accepting Err(worker_stopped(i)),
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    // An IPv4 client of a dual-stack listener (`[::]`) is `::ffff:a.b.c.d` to
                    // the socket: named as the IPv4 address it is, in logs, audit events and
                    // messages alike, as when a trusted proxy names it.
                    Ok((stream, remote)) => {
                        let ip = remote.ip().to_canonical();
                        (stream, std::net::SocketAddr::new(ip, remote.port()))
                    }
                    Err(e) if accept_failed_for_good(&e) => {
                        crate::metrics::METRICS.accept_failed(false);
                        break 'accepting Err(format!(
                            "the listening socket on {local} cannot accept connections any \
                             more ({e}): something shut it down or closed it under gitgate; \
                             gitgate stopped, to be started again"
                        ));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning,
                        // and say so once per window, not 20 times a second.
                        crate::metrics::METRICS.accept_failed(false);
                        if let Some(times) = accept_failures.failed(Instant::now()) {
                            tracing::warn!(
                                error = %LogText(&e.to_string()),
                                times,
                                "accept failed: new connections wait in the listen backlog \
                                 (said again at most every {}s while it goes on)",
                                ACCEPT_FAILURES_WINDOW.as_secs()
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Said once no accept has failed for a window: out of descriptors, accepts
                // fail and succeed in turn as connections close, and each turn would say a
                // pair of lines (the window of the failure line starting anew each time).
                if let Some(times) = accept_failures.ended_quietly(Instant::now()) {
                    tracing::warn!(
                        times,
                        "accepting connections again after failures (none for {}s)",
                        ACCEPT_FAILURES_WINDOW.as_secs()
                    );
                }
                let _ = stream.set_nodelay(true);
                // Leave this thread's event loop; the worker registers it with its own.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %LogText(&e.to_string()), "cannot hand over a connection");
                        continue;
                    }
                };
                let address = match &address_cap {
                    Some(cap) => cap.admit(remote.ip()),
                    None => Admission::Admitted(None),
                };
                let permit = match address {
                    Admission::OverCap { max } => {
                        METRICS.address_cap_refusal();
                        // Its place under `max_connections` goes back at once: held while it is
                        // answered (up to `header_read_timeout`), the places of one address's
                        // refused connections would fill the server for every other client,
                        // which the cap is there to prevent. They have a small pool of their
                        // own; past it, one is closed without its 503.
                        drop(permit);
                        match over_cap_slots.clone().try_acquire_owned() {
                            Ok(refusing) => {
                                tracing::debug!(
                                    remote = %remote, max,
                                    "over the per-address connection cap: answering 503 and closing"
                                );
                                refusing
                            }
                            Err(_) => {
                                tracing::debug!(
                                    remote = %remote, max,
                                    "over the per-address connection cap, with {OVER_CAP_SLOTS} \
                                     such connections being answered already: closing"
                                );
                                continue;
                            }
                        }
                    }
                    Admission::Admitted(_) => permit,
                };
                let Some(worker) = least_busy(workers) else {
                    tracing::error!("every worker has stopped; refusing the connection");
                    continue;
                };
                worker.open.fetch_add(1, Ordering::Relaxed);
                let accepted = Accepted {
                    stream,
                    remote,
                    permit,
                    address,
                };
                if worker.inbox.send(accepted).is_err() {
                    worker.open.fetch_sub(1, Ordering::Relaxed);
                    tracing::error!("a worker thread has stopped; refusing the connection");
                }
            }
            signal = &mut shutdown => break 'accepting Ok(signal),
            i = &mut stopped => break 'accepting Err(worker_stopped(i)),
        }
    };
    drop(listener);
    match &ended {
        Ok(signal) => tracing::info!(
            "shutting down on {signal}: no new connections; waiting up to {}s for requests in \
             flight",
            limits.shutdown_grace.as_secs()
        ),
        Err(why) => tracing::error!(
            error = %LogText(why),
            "shutting down: gitgate cannot go on serving (the listening socket failed for \
             good, or a worker stopped); waiting up to {}s for requests in flight, then \
             exiting with status 1",
            limits.shutdown_grace.as_secs()
        ),
    }
    ended
}

/// One worker: serve the connections it is given until the acceptor closes its inbox, then
/// drain for at most the grace period.
async fn work(
    gate: Arc<Gate>,
    settings: Settings,
    mut inbox: Inbox,
    mut cut_off: watch::Receiver<bool>,
) {
    let limits = &settings.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header deadline is only a backstop, a little later than gitgate's (the
    // connection's wait for a request, `idle::until_idle`, which a half-sent head counts in):
    // hyper's ends the connection with an error, without closing it (so over TLS with no
    // `close_notify`), and firing first it raced gitgate's close.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(
            limits.header_read_timeout + crate::idle::ENDED_WITHIN + Duration::from_secs(1),
        )
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(Builders {
        http1: builder.clone().http1_only(),
        http2: builder.clone().http2_only(),
        any: builder,
    });
    let graceful = GracefulShutdown::new();
    // Set when the drain begins: a connection still in its TLS handshake has no request to
    // finish, and must not hold the stop for the whole grace period.
    let (draining_now, draining) = watch::channel(false);
    // The worker's connections, so that it can end those still open at the end of the grace
    // period itself, before the store's last writes: worker 0's tasks live on the main runtime,
    // which outlives this function.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = inbox.rx.recv() => accepted,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %LogText(&e.to_string()), "a connection task ended abnormally");
                }
                continue;
            }
        };
        let Some(Accepted {
            stream,
            remote,
            permit,
            address,
        }) = accepted
        else {
            break;
        };
        let open = inbox.open.clone();
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(remote = %remote, error = %LogText(&e.to_string()), "cannot take over a connection");
                continue;
            }
        };
        let conn = Connection {
            gate: gate.clone(),
            builder: builder.clone(),
            settings: settings.clone(),
            // A connection over its address's cap has nothing for the stop to wait for (see
            // `serve_io`): with a watcher it would hold the stop until its own deadline.
            watcher: matches!(address, Admission::Admitted(_)).then(|| graceful.watcher()),
            closing: matches!(address, Admission::Admitted(_)).then(|| graceful.watcher()),
            draining: draining.clone(),
            remote,
            over_address_cap: match &address {
                Admission::OverCap { max } => Some(*max),
                Admission::Admitted(_) => None,
            },
            places: Some(Places {
                _permit: permit,
                _address: address,
                _active: METRICS.connection(),
            }),
        };
        // Counted down however the connection ends: a panic in a body polled by hyper unwinds
        // the task past any statement after `run`, and this worker would look busier for good.
        let counted = OpenConnection(open);
        connections.spawn(async move {
            conn.run(stream).await;
            drop(counted);
        });
    }
    let _ = draining_now.send(true);
    let grace = limits.shutdown_grace;
    let _ = gate.upstream.stopping(grace);
    tokio::select! {
        _ = async {
            graceful.shutdown().await;
            gate.upstream.pushes_finished().await;
        } => tracing::debug!("a worker's connections all closed, its pushes all finished"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(
                connections = connections.len(),
                "grace period over; closing the remaining connections of a worker (each worker \
                 says its own: add them up)"
            );
            CUT_OFF.store(true, Ordering::Relaxed);
        }
        Ok(_) = cut_off.wait_for(|now| *now) => CUT_OFF.store(true, Ordering::Relaxed),
    }
    // Requests still waiting for a backend process are answered now — a second stop signal,
    // or a grace period too short to answer them before its end — and given a moment for
    // their answers to go out: cut off without one, git says `Authentication failed`.
    let waiting = gate.upstream.stopping(Duration::ZERO);
    if waiting > 0 || gate.upstream.answered_at_stop() > 0 {
        tokio::time::sleep(ANSWERS_GO_OUT_WITHIN).await;
    }
    // Ends what is left — pushes finishing without their client, and those whose client is
    // cut off now — and waits until each connection's requests and bodies have been dropped
    // (their log lines written, their backends told to end) ...
    gate.upstream.stop_finishing();
    connections.shutdown().await;
    // ... and until the backends have been reaped, their process groups ended whole; HTTP/2
    // streams, which run as tasks of their own, end once their connection is gone.
    let running = gate.upstream.wait_until_reaped().await;
    if running > 0 {
        tracing::warn!(running, "backend processes still running at exit");
    }
}

/// HTTP/2 connections closed for excessive load: said once a minute while they go on.
static EXCESSIVE_LOAD: std::sync::LazyLock<std::sync::Mutex<crate::repeats::Repeats>> =
    std::sync::LazyLock::new(|| {
        std::sync::Mutex::new(crate::repeats::Repeats::new(Duration::from_secs(60)))
    });

/// h2's words for the HTTP/2 connection it closed with `ENHANCE_YOUR_CALM` (`connection error
/// detected: detected excessive load generating behavior`; h2 0.4.20 does not say which): a
/// client that resets streams before they are answered (the rapid-reset attack), or sends
/// endless header continuations, or a header block that unpacks too large (an HPACK bomb). h2 itself logs each such close at `warn`, without the client's address —
/// lines any client can have written at will, which serve's default filter drops (`h2=error`)
/// for this one: named, with the address, once a minute.
fn excessive_load(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(e) = source {
        let said = e.to_string();
        if said.starts_with("connection error detected: detected excessive load") {
            return Some(said);
        }
        source = e.source();
    }
    None
}

fn excessive_load_said(remote: std::net::SocketAddr, words: &str) {
    let times = EXCESSIVE_LOAD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .failed(std::time::Instant::now());
    match times {
        Some(times) => tracing::warn!(
            remote = %remote,
            times,
            error = %LogText(words),
            "closed an HTTP/2 connection for excessive load: its client reset streams before \
             they were answered (the rapid-reset attack), or sent frames or headers without \
             end, or headers that unpack too large — the HTTP/2 library does not say which \
             (said at most once a minute, naming the first client, with how many connections \
             since; the others at debug level)"
        ),
        None => {
            tracing::debug!(remote = %remote, error = %LogText(words), "closed an HTTP/2 connection for excessive load")
        }
    }
}

/// Clients that refused the served certificate: said once a minute while they go on.
static CERTIFICATE_REFUSED: std::sync::LazyLock<std::sync::Mutex<crate::repeats::Repeats>> =
    std::sync::LazyLock::new(|| {
        std::sync::Mutex::new(crate::repeats::Repeats::new(Duration::from_secs(60)))
    });

/// A connection's error, in the log: a client that refused the served certificate as a warning
/// (once a minute: the operator's to mend, and every such client fails), the rest at debug level
/// (`what` with the error, in TLS's own words where it is a TLS one).
fn tls_trouble_said(
    remote: std::net::SocketAddr,
    e: &(dyn std::error::Error + 'static),
    what: &str,
) {
    match crate::tls::connection_trouble(e) {
        Some((true, words)) => {
            let times = CERTIFICATE_REFUSED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .failed(std::time::Instant::now());
            if let Some(times) = times {
                tracing::warn!(
                    remote = %remote,
                    times,
                    "a client refused the TLS certificate ({words}): clients must trust its CA, \
                     and [server.tls] cert must hold the intermediates after it (a \
                     fullchain.pem) and name the host they ask for (said at most once a minute)"
                );
            }
        }
        Some((false, words)) => {
            tracing::debug!(remote = %remote, error = %LogText(&words), "{what}")
        }
        None => {
            tracing::debug!(remote = %remote, error = %LogText(&e.to_string()), "{what}")
        }
    }
}

/// What a plain HTTP request to the HTTPS port is told (git shows it as `remote: ...`).
const PLAIN_HTTP_ON_THE_HTTPS_PORT: &str = "this port speaks HTTPS only: use an https:// URL \
     (the request came in plain HTTP)\n";

/// Answers a plain HTTP request on the HTTPS port with `400` and the reason, and closes: its
/// head is read first (by `deadline`, at most 64 KiB), so that closing with it unread does not
/// reset the connection under the answer.
async fn answer_plain_http(mut stream: TcpStream, deadline: tokio::time::Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read_head = async {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 4096];
        while head.len() < 64 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(tokio::time::timeout_at(deadline, read_head).await, Ok(true)) {
        return;
    }
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_HTTP_ON_THE_HTTPS_PORT}",
        PLAIN_HTTP_ON_THE_HTTPS_PORT.len()
    );
    let sent = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        // What the client still sends (a body) is read and dropped until it closes, briefly.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// How long a stop lets the answers of the requests it refused (those waiting for a backend
/// process) go out before it cuts their connections.
const ANSWERS_GO_OUT_WITHIN: Duration = Duration::from_millis(200);

/// The answer to every request on a connection over its address's cap: `503` with the reason,
/// and the connection closed after it (on HTTP/1 said with `Connection: close`; on HTTP/2, which
/// has no such header, with the GOAWAY of [`Connection::serve_io`]).
fn over_cap_answer(max: usize, version: Version) -> Response<ResponseBody> {
    let mut resp = crate::gate::text(StatusCode::SERVICE_UNAVAILABLE, &refusal(max));
    if version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// The answer to a HEAD request over HTTP/2: its headers (with the length the body would have
/// had), no body. hyper drops a HEAD answer's body on HTTP/1.1 but sends it as DATA frames on
/// HTTP/2, which clients reject as a protocol error (RFC 9113, section 8.1).
///
/// The length is taken from a body that has one (gitgate's own answers); an empty body says
/// nothing — an HTTP upstream's answer to a HEAD is one, whatever its GET would send — and a
/// `content-length: 0` from it would be false.
fn without_body(resp: Response<ResponseBody>) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    if !parts.headers.contains_key(CONTENT_LENGTH) {
        if let Some(n) = body.size_hint().exact().filter(|&n| n > 0) {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    Response::from_parts(parts, NoBody.boxed_unsync())
}

/// A body that has ended before it began, of no stated length (so that hyper adds no
/// `content-length: 0` to a HEAD answer whose real length is unknown).
struct NoBody;

impl Body for NoBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }
}

/// Set once the grace period is over: a request dropped from then on was cut off by the
/// shutdown, not by its client.
static CUT_OFF: AtomicBool = AtomicBool::new(false);

/// Stop signals this close together are one stop, not a second one.
const SAME_STOP: Duration = Duration::from_secs(1);

/// Why a request on `connection` that never finished ended: `shutdown` once the grace period
/// is over, `idle-timeout` when gitgate closed its connection for idling or let go of an
/// HTTP/2 answer its client took none of ([`crate::stall`]), `client-gone` else.
pub fn unfinished_outcome(connection: &Activity) -> &'static str {
    if CUT_OFF.load(Ordering::Relaxed) {
        "shutdown"
    } else if connection.closed_for_idling() || crate::stall::cutting_off() {
        "idle-timeout"
    } else {
        "client-gone"
    }
}

/// A worker's HTTP settings, one per protocol a connection may be held to ([`Spoken`]).
struct Builders {
    any: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

/// The HTTP a connection is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spoken {
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge, told by the client's first bytes.
    Either,
    Http1,
    Http2,
}

impl Spoken {
    /// What a TLS connection is held to: the protocol its handshake agreed on (ALPN), and only
    /// that one, as RFC 9113 asks (§3.2: HTTP/2 over TLS is negotiated, never assumed). Without
    /// ALPN, HTTP/1.1. Otherwise a client that agreed on `http/1.1` could still speak HTTP/2 (or
    /// the other way round) and be served.
    fn agreed(alpn: Option<&[u8]>) -> Spoken {
        match alpn {
            Some(b"h2") => Spoken::Http2,
            _ => Spoken::Http1,
        }
    }
}

/// One accepted connection, before TLS.
struct Connection {
    gate: Arc<Gate>,
    builder: Arc<Builders>,
    settings: Settings,
    /// What the stop's drain waits for; `None` over the address's cap.
    watcher: Option<Watcher>,
    /// What the stop waits for while the socket's last bytes go out after the connection has
    /// ended (see [`ClosingStream`]); `None` over the address's cap.
    closing: Option<Watcher>,
    /// `true` once the worker drains (see [`work`]).
    draining: watch::Receiver<bool>,
    remote: std::net::SocketAddr,
    /// The client's address holds its cap of connections already (the cap): every request on
    /// this one is refused.
    over_address_cap: Option<usize>,
    /// Handed to the socket ([`ClosingStream`]), which gives them back as it closes; dropped
    /// with the connection if it ends before (a TLS handshake that timed out).
    places: Option<Places>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let remote = self.remote;
        // Started now: the wait for a first request counts the TLS handshake in.
        let activity = Activity::new();
        // The TLS handshake, and the look at its first byte, end by then.
        let handshake_by = tokio::time::Instant::now() + self.settings.limits.header_read_timeout;
        if self.settings.tls.is_some() {
            let mut draining = self.draining.clone();
            let mut first = [0u8; 1];
            let peeked = tokio::select! {
                peeked = tokio::time::timeout_at(handshake_by, stream.peek(&mut first)) => peeked,
                true = async { draining.wait_for(|now| *now).await.is_ok() } => return,
            };
            if peeked.is_err() {
                METRICS.connection_cut(Cut::TlsHandshake);
                tracing::debug!(remote = %remote, "TLS handshake timed out");
                return;
            }
            // A request in plain HTTP (`http://` for an `https://` port): answered in plain
            // HTTP with what to do, as nginx does, instead of a TLS alert the client shows as
            // `Received HTTP/0.9 when not allowed`.
            if matches!(peeked, Ok(Ok(1))) && first[0].is_ascii_uppercase() {
                METRICS.connection_cut(Cut::TlsHandshake);
                tracing::debug!(remote = %remote, "a plain HTTP request on the HTTPS port: answered 400");
                // A stop does not wait for it: a client that sends `GET` and no more would
                // hold the stop until the handshake's deadline.
                tokio::select! {
                    () = answer_plain_http(stream, handshake_by) => {}
                    true = async { draining.wait_for(|now| *now).await.is_ok() } => {}
                }
                return;
            }
        }
        // Bytes are counted on the TCP stream, under TLS: rustls takes an answer's plaintext
        // into its buffer while the socket is full, and counted above it, a client that stopped
        // reading would look active a while longer than the idle timeout.
        activity.watch_socket(std::os::fd::AsRawFd::as_raw_fd(&stream));
        // Closed only once its last bytes have gone out (an answer finished at a stop).
        let stream = ClosingStream::new(stream, self.closing.take(), self.places.take());
        let stream = ActivityIo::new(stream, activity.clone());
        match self.settings.tls.clone() {
            None => self.serve_io(stream, activity, Spoken::Either, None).await,
            Some(acceptor) => {
                let mut draining = self.draining.clone();
                let handshake = tokio::time::timeout_at(handshake_by, acceptor.accept(stream));
                tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(tls)) => {
                            let spoken = Spoken::agreed(tls.get_ref().1.alpn_protocol());
                            // Closed for idling, it says `close_notify` (see `EndableIo`).
                            let ending = Ending::default();
                            let tls = EndableIo::new(tls, ending.clone());
                            self.serve_io(tls, activity, spoken, Some(ending)).await
                        }
                        Ok(Err(e)) => {
                            METRICS.connection_cut(Cut::TlsHandshake);
                            tls_trouble_said(remote, &e, "TLS handshake failed");
                        }
                        Err(_) => {
                            METRICS.connection_cut(Cut::TlsHandshake);
                            tracing::debug!(remote = %remote, "TLS handshake timed out")
                        }
                    },
                    true = async { draining.wait_for(|now| *now).await.is_ok() } => tracing::debug!(
                        remote = %remote,
                        "shutting down: closing a connection still in its TLS handshake"
                    ),
                }
            }
        }
    }

    /// Serve HTTP on `io` until the client is done, the connection idles out, or shutdown.
    async fn serve_io<IO>(self, io: IO, activity: Activity, spoken: Spoken, ending: Option<Ending>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let remote = self.remote;
        let idle = self.settings.limits.idle_timeout;
        let gate = self.gate;
        let requests = activity.clone();
        let over_address_cap = self.over_address_cap;
        let max_head = self.settings.limits.max_header_bytes;
        // Over the cap, the first request's answer is the connection's last: told to close as
        // soon as that request has come (HTTP/2 finishes its streams and sends GOAWAY; HTTP/1
        // also says `Connection: close`), so that an HTTP/2 client learns to go at once instead
        // of holding its place with a request now and then.
        let over_cap_asked = over_address_cap.map(|_| Arc::new(Notify::new()));
        let asked = over_cap_asked.clone();
        // Probes are answered here, before the gate: no token, no classification, never forwarded.
        let service = service_fn(move |req: Request<Incoming>| {
            if let Some(asked) = &asked {
                asked.notify_one();
            }
            let gate = gate.clone();
            let on_h2 = req.version() == Version::HTTP_2;
            if on_h2 {
                requests.speaks_http2();
            }
            let open = requests.request_opened();
            let exchange = requests.clone();
            let connection = on_h2.then(|| requests.clone());
            let head_on_h2 = on_h2 && req.method() == Method::HEAD;
            // One future, held inline by hyper: wrapping it in another would copy its several
            // KB once more per request (measured: +1.5 % of gitgate's CPU in memmove).
            CatchPanic::new(async move {
                if let Some(max) = over_address_cap {
                    let resp = over_cap_answer(max, req.version());
                    crate::request_log::log_answered_before_the_gate(
                        &req,
                        remote,
                        resp.status(),
                        "over-address-cap",
                    );
                    return Ok::<_, Infallible>(resp.map(|body| OpenBody::new(body, open)));
                }
                // HTTP/1.1's parser stops at MAX_HEADER_FIELDS with a 431; HTTP/2's has no
                // such count (only the block's size), so it is made here, the same for both.
                if header_fields(&req) > MAX_HEADER_FIELDS {
                    let resp = crate::gate::text(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        &format!("too many header fields: at most {MAX_HEADER_FIELDS}"),
                    );
                    crate::request_log::log_answered_before_the_gate(
                        &req,
                        remote,
                        resp.status(),
                        "too-many-header-fields",
                    );
                    // Counted with HTTP/1's parser's 431s (which count this for HTTP/1.1).
                    METRICS.unparsable_request();
                    return Ok::<_, Infallible>(resp.map(|body| OpenBody::new(body, open)));
                }
                if req.version() != Version::HTTP_2 && head_bytes(&req) > max_head {
                    let resp = crate::gate::text(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        &format!(
                            "the request's head is over [server] max_header_bytes ({max_head} \
                             bytes)"
                        ),
                    );
                    crate::request_log::log_answered_before_the_gate(
                        &req,
                        remote,
                        resp.status(),
                        "head-too-large",
                    );
                    // Counted with HTTP/1's parser's 431s, which count most of them.
                    METRICS.unparsable_request();
                    return Ok::<_, Infallible>(resp.map(|body| OpenBody::new(body, open)));
                }
                let resp = match health::probe(&gate, req.method(), req.uri().path()).await {
                    // A probe's path with a method it does not take: logged and counted as the
                    // gate logs and counts a git path asked so (operation none, outcome
                    // rejected; answered at once, so in the duration's first bucket) — a
                    // probe's answer itself is in neither, there are so many.
                    Some(resp) if resp.status() == StatusCode::METHOD_NOT_ALLOWED => {
                        crate::request_log::log_answered_before_the_gate(
                            &req,
                            remote,
                            resp.status(),
                            "method-not-allowed",
                        );
                        METRICS.request_done(
                            metrics::Operation::None,
                            metrics::Outcome::Rejected,
                            None,
                            Duration::ZERO,
                        );
                        resp
                    }
                    Some(resp) => resp,
                    None => {
                        let Ok(resp) = gate.handle(req, remote, exchange).await;
                        resp
                    }
                };
                let resp = if head_on_h2 {
                    without_body(resp)
                } else if let Some(connection) = connection {
                    // One stream's window may stay shut while others move (`crate::stall`).
                    resp.map(|body| crate::stall::watched(body, idle, connection))
                } else {
                    resp
                };
                Ok::<_, Infallible>(resp.map(|body| OpenBody::new(body, open)))
            })
        });
        let builder = match spoken {
            Spoken::Either => &self.builder.any,
            Spoken::Http1 => &self.builder.http1,
            Spoken::Http2 => &self.builder.http2,
        };
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let first = self.settings.limits.header_read_timeout;
        let closed = match over_cap_asked {
            // Refused on every request, it gets no longer than a first request may take, however
            // its client answers the GOAWAY. Not watched for the stop's drain (it was given no
            // watcher, which would hold the stop until that deadline): it has nothing to
            // finish, and ends with the worker's connections if still open then.
            Some(asked) => {
                let conn = async move {
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        ended = conn.as_mut() => return ended,
                        _ = asked.notified() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    conn.await
                };
                let closing = until_idle(conn, &activity, idle, first, ending.as_ref());
                match tokio::time::timeout(first, closing).await {
                    Ok(closed) => closed,
                    Err(_) => {
                        tracing::debug!(remote = %remote, "closing a connection over its address's cap");
                        return;
                    }
                }
            }
            None => {
                let draining = Some(self.draining.clone());
                match self.watcher {
                    // Told to finish gracefully once the stop begins (the watcher held until it
                    // ends, so that the stop waits for it) — but not an HTTP/1 connection that
                    // awaits a push's POST (`Activity::expects_rpc`): git packs the push's
                    // objects between its advertisement and its POST, for seconds, and a
                    // connection closed then failed the push with "Couldn't connect" though the
                    // grace period had room for it. The POST is let come (within the wait for a
                    // request from the stop's start, `idle::until_idle_or_drained`), and the
                    // connection is closed once none is awaited and nothing is in flight.
                    Some(watcher) => {
                        let mut stop = self.draining.clone();
                        let rpc = activity.clone();
                        let post_wait = first;
                        let conn = async move {
                            let _watched = watcher;
                            let mut conn = std::pin::pin!(conn);
                            tokio::select! {
                                ended = conn.as_mut() => return ended,
                                // A sender gone is a stop too.
                                _ = stop.wait_for(|now| *now) => {}
                            }
                            // Not told until the wait for a request is over: hyper would
                            // close after the next answer, which may be the probe git sends
                            // before a large pack. The idle timer closes it sooner once no POST
                            // is awaited and nothing is in flight; told at the wait's end, it
                            // closes after the answer then under way (a client pipelining
                            // requests is never seen with nothing in flight).
                            let wait_over = tokio::time::Instant::now() + post_wait;
                            // A request whose answer has not begun may be a push's
                            // advertisement or probe: decided once it has (looked at every
                            // 10 ms, only during a stop).
                            while rpc.http1_answer_pending()
                                && tokio::time::Instant::now() < wait_over
                            {
                                tokio::select! {
                                    ended = conn.as_mut() => return ended,
                                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                                }
                            }
                            if rpc.expects_rpc() {
                                tokio::select! {
                                    ended = conn.as_mut() => return ended,
                                    _ = tokio::time::sleep_until(wait_over) => {}
                                }
                            }
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        };
                        let ending = ending.as_ref();
                        until_idle_or_drained(conn, &activity, idle, first, draining, ending).await
                    }
                    None => {
                        let ending = ending.as_ref();
                        until_idle_or_drained(conn, &activity, idle, first, draining, ending).await
                    }
                }
            }
        };
        match closed {
            Closed::Ended(Ok(())) => {}
            Closed::Ended(Err(e)) => match unparsable(&*e) {
                // hyper answered it and closed: the only trace of a request that never came to
                // the gate (a scan, a client sending garbage, a head too large).
                Some(status) => {
                    METRICS.unparsable_request();
                    let said = e.to_string();
                    // hyper's words are the same for a head over its size, one over its
                    // count of fields (a short head of 101 fields) and one whose
                    // Content-Length is past what it counts (2^64-2, 2^64-1): all causes
                    // named, so that raising max_header_bytes is not taken for the cure of the
                    // others.
                    let said = if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
                        format!(
                            "{said}: the head is over [server] max_header_bytes ({} bytes), \
                             holds over {MAX_HEADER_FIELDS} header fields, or says a \
                             Content-Length over {}, the most hyper reads",
                            self.settings.limits.max_header_bytes,
                            u64::MAX - 2
                        )
                    } else {
                        said
                    };
                    crate::request_log::log_unparsable(remote, status, &said);
                }
                None => match excessive_load(&*e) {
                    Some(words) => excessive_load_said(remote, &words),
                    None => tls_trouble_said(remote, &*e, "connection ended with an error"),
                },
            },
            Closed::Idle => {
                METRICS.connection_cut(Cut::Idle);
                tracing::debug!(
                    remote = %remote,
                    "closing a connection idle for {}s",
                    idle.as_secs()
                )
            }
            // During a stop the wait was shorter (`DRAINED_WITHIN`): say which applied.
            Closed::NoRequest if *self.draining.borrow() => tracing::debug!(
                remote = %remote,
                "shutting down: closing a connection with no request in flight"
            ),
            Closed::NoRequest => {
                METRICS.connection_cut(Cut::NoRequest);
                tracing::debug!(
                    remote = %remote,
                    "closing a connection that sent no request for {}s",
                    first.as_secs()
                )
            }
        }
    }
}

/// The status hyper's HTTP/1 parser answered a request it could not read with, before closing
/// the connection (`400`, or `414`/`431` for a URI or head too long); `None` for any other
/// error of a connection.
fn unparsable(e: &(dyn std::error::Error + 'static)) -> Option<StatusCode> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        // hyper tells the two apart only in its text.
        Some(if e.to_string().starts_with("URI too long") {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        })
    } else if e.is_parse() && !e.is_parse_status() && !e.is_parse_version_h2() {
        Some(StatusCode::BAD_REQUEST)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop signal while the start makes a new store takes the store back, whatever point of
    /// its making the signal met: nothing is left (no file, no `-journal`, `-wal` or `-shm`),
    /// and an empty file there before is empty again. Before, the start ended without waiting,
    /// and the making went on, or was cut, leaving a store behind.
    #[tokio::test]
    async fn a_stop_while_a_new_store_is_made_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitgate.db");
        let left = || {
            let mut names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        let stopped = open_store_unless_stopped(&path, std::future::ready("SIGTERM")).await;
        assert!(matches!(stopped, Ok(Opening::Stopped("SIGTERM"))));
        // What a making left running would do, it has had the time to.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(left(), Vec::<String>::new());

        std::fs::write(&path, "").unwrap();
        let stopped = open_store_unless_stopped(&path, std::future::ready("SIGINT")).await;
        assert!(matches!(stopped, Ok(Opening::Stopped("SIGINT"))));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(left(), vec!["gitgate.db".to_string()]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);

        // Not stopped, it is made and kept.
        let never = std::future::pending::<&'static str>();
        let opened = open_store_unless_stopped(&path, never).await;
        assert!(matches!(opened, Ok(Opening::Opened(_))));
        drop(opened);
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
    }

    /// A runtime let go at the stop does not wait for a lookup of the upstream's name that its
    /// connect gave up on and that hangs (a resolver that does not answer). Before, the
    /// runtime's drop waited for the lookup, and the process's exit after the drain with it (up
    /// to 30 s).
    #[test]
    fn a_runtime_let_go_does_not_wait_for_a_hanging_lookup() {
        use crate::upstream::lookup::Lookups;
        use std::sync::{mpsc, Condvar, Mutex};
        static LOOKING: AtomicBool = AtomicBool::new(false);
        static ANSWER: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
        fn hanging(_: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
            LOOKING.store(true, Ordering::SeqCst);
            let answered = ANSWER.0.lock().unwrap();
            drop(ANSWER.1.wait_while(answered, |a| !*a).unwrap());
            Ok(vec![])
        }
        /// The lookup ends when the test does, whatever it found.
        struct Answer;
        impl Drop for Answer {
            fn drop(&mut self) {
                *ANSWER.0.lock().unwrap() = true;
                ANSWER.1.notify_all();
            }
        }
        let _answer = Answer;
        let runtime = crate::blocking_pool::started_for_a_test();
        runtime.block_on(async {
            let lookups = Lookups::by(hanging);
            let connect = async {
                lookups.addresses("git-backend.example", 80).await.unwrap();
            };
            // Given up once it runs on its blocking thread, as a connect's timeout does.
            tokio::select! {
                () = connect => unreachable!("the lookup hangs"),
                () = async {
                    while !LOOKING.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                } => {}
            }
        });
        let (stopped, let_gone) = mpsc::channel();
        std::thread::spawn(move || {
            let_go(runtime);
            let _ = stopped.send(());
        });
        let waited = let_gone.recv_timeout(Duration::from_secs(10));
        assert!(
            waited.is_ok(),
            "the runtime's stop waited for a lookup nobody awaits"
        );
    }

    /// A worker that stops while the server runs (a panic in its loop, outside any connection:
    /// its inbox dropped) stops the accepting, with the reason, so that the process ends with
    /// status 1 for its supervisor to start again; the connections that come meanwhile go to a
    /// worker that runs. Before, the stopped worker, with no connection open, was the least
    /// busy for every connection after: each was refused with an error line, the process up
    /// and serving no one.
    #[tokio::test]
    async fn a_worker_that_stops_stops_the_accepting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let (first, mut running) = Worker::new();
        let (second, stopping) = Worker::new();
        let workers = [first, second];
        let limits = Limits::default();
        let accepting = accept(
            listener,
            local,
            &workers,
            &limits,
            None,
            std::future::pending(),
        );
        tokio::pin!(accepting);
        // A connection first, handed to the first worker: both run.
        let _client = TcpStream::connect(local).await.unwrap();
        tokio::select! {
            handed = running.rx.recv() => assert!(handed.is_some()),
            ended = &mut accepting => panic!("the accepting ended: {ended:?}"),
        }
        // The second worker stops; the next connection goes to the first, and the accepting
        // ends with the reason.
        drop(stopping);
        let _next = TcpStream::connect(local).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), &mut accepting)
            .await
            .expect("the accepting went on with a worker stopped");
        assert_eq!(ended, Err(worker_stopped(1)));
        assert!(
            worker_stopped(1).starts_with("worker 1 stopped")
                && worker_stopped(1).contains("gitgate stopped"),
            "{}",
            worker_stopped(1)
        );
        assert!(least_busy(&workers).is_some_and(|w| !w.inbox.is_closed()));
    }

    /// A panic of the accepting itself (here the stop signal's future it polls, standing for
    /// any bug in the loop) ends it with the reason, as a stopped worker does, so that the
    /// server drains and exits with status 1; the listening socket is closed with it. Before, it
    /// unwound through the main thread: the process ended at once, status 101, its requests
    /// in flight cut.
    #[tokio::test]
    async fn a_panic_of_the_accepting_ends_it_with_the_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let (worker, _inbox) = Worker::new();
        let workers = [worker];
        let limits = Limits::default();
        async fn panics_when_polled() -> &'static str {
            panic!("on purpose")
        }
        let ended = until_its_panic(
            accept(
                listener,
                local,
                &workers,
                &limits,
                None,
                panics_when_polled(),
            ),
            limits.shutdown_grace,
        )
        .await;
        assert_eq!(ended, Err(accepting_stopped()));
        assert!(
            accepting_stopped().contains("its panic is in the log above")
                && accepting_stopped().contains("gitgate stopped"),
            "{}",
            accepting_stopped()
        );
        // Nothing listens there any more.
        let refused = TcpStream::connect(local).await;
        assert!(refused.is_err(), "{refused:?}");
    }

    /// Only a socket that accepts nothing any more ends the accepting: what runs out (files,
    /// memory) comes back, and a connection's own error is that connection's.
    #[test]
    fn only_a_socket_that_no_longer_listens_ends_the_accepting() {
        use std::io::Error;
        for lasting in [libc::EINVAL, libc::EBADF, libc::ENOTSOCK, libc::EFAULT] {
            assert!(
                accept_failed_for_good(&Error::from_raw_os_error(lasting)),
                "{lasting}"
            );
        }
        for passing in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::ECONNABORTED,
            libc::EPERM,
            libc::EPROTO,
            libc::EOPNOTSUPP,
            libc::ENETDOWN,
            libc::EHOSTUNREACH,
            libc::EINTR,
            libc::EAGAIN,
        ] {
            assert!(
                !accept_failed_for_good(&Error::from_raw_os_error(passing)),
                "{passing}"
            );
        }
        assert!(!accept_failed_for_good(&Error::other("not the OS's")));
    }

    /// A head is counted as the bytes it took at least: as written plainly, whatever spaces
    /// the client put around its values, every line of a repeated field.
    #[test]
    fn a_heads_bytes_are_its_line_and_fields_as_written_plainly() {
        let req = Request::builder()
            .method("POST")
            .uri("/team/app.git/git-upload-pack?x=1")
            .header("host", "git.example.com")
            .header("x-a", "1")
            .header("x-a", "22")
            .body(())
            .unwrap();
        let written = "POST /team/app.git/git-upload-pack?x=1 HTTP/1.1\r\n\
                       host: git.example.com\r\nx-a: 1\r\nx-a: 22\r\n\r\n";
        assert_eq!(head_bytes(&req), written.len());
        // An absolute target counts whole.
        let req = Request::builder()
            .uri("http://git.example.com:8080/")
            .body(())
            .unwrap();
        assert_eq!(
            head_bytes(&req),
            "GET http://git.example.com:8080/ HTTP/1.1\r\n\r\n".len()
        );
    }

    #[test]
    fn a_tls_connection_speaks_only_what_its_handshake_agreed() {
        assert_eq!(Spoken::agreed(Some(b"h2")), Spoken::Http2);
        assert_eq!(Spoken::agreed(Some(b"http/1.1")), Spoken::Http1);
        assert_eq!(Spoken::agreed(None), Spoken::Http1);
    }

    /// The fallback for kernels without `close_range(2)`: a descriptor opened without
    /// close-on-exec has it afterwards. (The `close_range` path is covered end to end, in
    /// `tests/gate.rs`.)
    #[test]
    fn listed_descriptors_are_marked_close_on_exec() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: fcntl on a descriptor this test owns, no pointers.
        let flags = || unsafe { libc::fcntl(fd, libc::F_GETFD) };
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags() & !libc::FD_CLOEXEC) };
        assert_eq!(flags() & libc::FD_CLOEXEC, 0);
        mark_listed_descriptors_close_on_exec();
        assert_ne!(flags() & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn new_connections_go_to_the_least_busy_worker_first_of_equals() {
        let (a, _ia) = Worker::new();
        let (b, _ib) = Worker::new();
        let (c, _ic) = Worker::new();
        let workers = [a, b, c];
        let least = |workers: &[Worker]| least_busy(workers).unwrap() as *const Worker;
        assert!(std::ptr::eq(least(&workers), &workers[0]));
        workers[0].open.store(2, Ordering::Relaxed);
        workers[1].open.store(1, Ordering::Relaxed);
        workers[2].open.store(1, Ordering::Relaxed);
        assert!(std::ptr::eq(least(&workers), &workers[1]));
        workers[1].open.store(5, Ordering::Relaxed);
        assert!(std::ptr::eq(least(&workers), &workers[2]));
    }

    #[test]
    fn a_privileged_port_refused_says_what_to_give() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let at = |port: u16| std::net::SocketAddr::from(([0, 0, 0, 0], port));
        assert!(listen_hint(at(443), &denied).contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(listen_hint(at(8443), &denied), "");
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(listen_hint(at(443), &in_use), "");
    }

    /// An address the machine does not have is said to be one, whatever its port.
    #[test]
    fn an_address_the_machine_lacks_is_said_to_be_one() {
        let lacking = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        let at = |port: u16| std::net::SocketAddr::from(([192, 0, 2, 1], port));
        for port in [443, 8080] {
            assert!(listen_hint(at(port), &lacking).contains("this machine has no such address"));
        }
    }

    #[test]
    fn a_connection_is_counted_down_however_its_task_ends() {
        let open = Arc::new(AtomicUsize::new(1));
        let counted = OpenConnection(open.clone());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _counted = counted;
            panic!("a body panicked");
        }));
        assert!(unwound.is_err());
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }

    /// A backend is given up on a second before the connection would idle out, so that the
    /// client gets its `504` rather than an empty reply; an idle timeout of a second still
    /// leaves the backend half of it, not nothing.
    #[test]
    fn a_backend_is_given_up_on_a_second_before_its_connection_idles_out() {
        assert_eq!(
            answer_deadline(Duration::from_secs(30)),
            Duration::from_secs(29)
        );
        assert_eq!(
            answer_deadline(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
    }

    /// Port 1024 is the first one binds without a privilege: the hint stops at 1023.
    #[test]
    fn the_privileged_port_hint_stops_below_port_1024() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let at = |port: u16| std::net::SocketAddr::from(([0, 0, 0, 0], port));
        assert!(listen_hint(at(1023), &denied).contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(listen_hint(at(1024), &denied), "");
    }

    /// The `503` over an address's cap tells the client when to come back, over either HTTP,
    /// and over HTTP/1 that the connection closes (HTTP/2 has no such header: its close is the
    /// GOAWAY).
    #[test]
    fn the_answer_over_an_addresss_cap_says_when_to_retry_and_that_it_closes() {
        for version in [Version::HTTP_10, Version::HTTP_11] {
            let resp = over_cap_answer(2, version);
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()[hyper::header::RETRY_AFTER], "5");
            assert_eq!(resp.headers()[hyper::header::CONNECTION], "close");
        }
        let resp = over_cap_answer(2, Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[hyper::header::RETRY_AFTER], "5");
        assert!(!resp.headers().contains_key(hyper::header::CONNECTION));
    }

    /// A HEAD answer over HTTP/2 loses its body but keeps the length it would have had (taken
    /// from the body when no header says it); an empty body, which is what an HTTP upstream
    /// answers a HEAD with, is given no `content-length: 0`, which would be false.
    #[tokio::test]
    async fn a_head_answer_over_http2_keeps_its_length_but_not_its_body() {
        let sized = |text: &'static str| {
            Response::new(
                http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
        };
        let resp = without_body(sized("three"));
        assert_eq!(resp.headers()[CONTENT_LENGTH], "5");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "{body:?}");
        let resp = without_body(sized(""));
        assert!(!resp.headers().contains_key(CONTENT_LENGTH), "{resp:?}");
        // A length the answer states is kept as it is.
        let mut stated = sized("");
        stated
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("1234"));
        assert_eq!(without_body(stated).headers()[CONTENT_LENGTH], "1234");
    }

    /// A head hyper's HTTP/1 parser refused is logged with the status hyper answered it with:
    /// `414` for a URI over hyper's length (told from a head over the buffer, `431`, only by
    /// hyper's words; reached once `max_header_bytes` is raised past 64 KiB), `400` for one
    /// that is not HTTP.
    #[tokio::test]
    async fn a_refused_head_is_logged_with_the_status_hyper_answered() {
        async fn refused(head: Vec<u8>, max_buf_size: usize) -> Option<StatusCode> {
            use tokio::io::AsyncWriteExt;
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .max_buf_size(max_buf_size)
                .serve_connection(
                    TokioIo::new(server),
                    service_fn(|_| async {
                        Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
                    }),
                );
            client.write_all(&head).await.unwrap();
            let e = conn.await.expect_err("the head was read");
            unparsable(&e)
        }
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
        assert_eq!(
            refused(long_uri.into_bytes(), 400_000).await,
            Some(StatusCode::URI_TOO_LONG)
        );
        assert_eq!(
            refused(b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 65_536).await,
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
