//! `GET /metrics` in the Prometheus text format, on a listener of its own (`[metrics] listen`,
//! off when absent) so that it is never reachable through the git port.
//!
//! Why hand-written: everything here is a counter, a gauge or a histogram with fixed buckets, so
//! a handful of atomics does the job; the hot path pays one relaxed `fetch_add` per figure and
//! no lock, no allocation and no label lookup (labels are array indexes). Rendering, which does
//! allocate, happens only when Prometheus scrapes.
//!
//! The figures every request moves (about eight `fetch_add`s for a 401) are kept in
//! [`SHARDS`] copies, each thread writing its own (`Shard`, on cache lines of its own) and a
//! scrape adding them up: with one shared copy, the event loops on different cores took each of
//! those cache lines from each other on every request. Figures that move per connection or on
//! failures stay single.
//!
//! One process has one registry, so it is a `static` ([`METRICS`]) rather than a field threaded
//! through every layer: the gate and the server record into it without knowing who reads it.
//! Figures that live elsewhere are read at scrape time (token cache hits/misses from the store)
//! or refreshed in the background (tokens expiring within 7 days, a store query once a minute).

use std::cell::Cell;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::clock;
use crate::config::Limits;
use crate::idle::{until_idle, Activity, ActivityIo};
use crate::repeats::Repeats;
use crate::store::Store;

/// The process's registry.
pub static METRICS: Metrics = Metrics::new();

/// How far ahead `gitgate_tokens_expiring_soon` looks.
const EXPIRY_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;
/// How often that figure is refreshed.
const EXPIRY_REFRESH: Duration = Duration::from_secs(60);

/// What a request was, for its label: a read, a write, or not a git request at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    None,
}

const OPERATIONS: [&str; 3] = ["read", "write", "none"];

/// How a request ended, for its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Authorised and forwarded; the backend answered (whatever its status).
    Allowed,
    Unauthorized,
    Forbidden,
    TooManyRequests,
    /// 400/404/405 and the like: not a git request, never forwarded.
    Rejected,
    /// gitgate could not serve it: backend unreachable or failed, store down.
    ServerError,
}

const OUTCOMES: [&str; 6] = ["allowed", "401", "403", "429", "rejected", "5xx"];

impl Outcome {
    /// The outcome of a request answered with `status`; `forwarded` when the backend answered.
    pub fn of(forwarded: bool, status: u16) -> Outcome {
        match status {
            _ if forwarded => Outcome::Allowed,
            401 => Outcome::Unauthorized,
            403 => Outcome::Forbidden,
            429 => Outcome::TooManyRequests,
            // A request framed in a way gitgate does not pass on (`Transfer-Encoding: gzip`):
            // the client's doing, whoever sends it — not an alert on gitgate's health.
            501 => Outcome::Rejected,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Rejected,
        }
    }
}

/// The request line's outcomes of a git request whose answer was not sent whole: the client
/// hung up (before its answer, a 499, or during it), idled, was cut off at the end of a stop's
/// grace period, the backend's answer broke off, git could not read the request, or gitgate
/// failed. `complete` is none of them.
pub const UNFINISHED: [&str; 6] = [
    "client-gone",
    "idle-timeout",
    "shutdown",
    "stream-error",
    "malformed-request",
    "internal-error",
];

/// A histogram with fixed upper bounds (seconds); observations in nanoseconds.
pub struct Histogram {
    bounds_ns: &'static [u64],
    /// Non-cumulative counts per bucket, the last one for +Inf.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum_ns: AtomicU64,
}

const MAX_BUCKETS: usize = 16;

/// The auth decision: microseconds when cached, a millisecond or so on a store read.
const AUTH_BOUNDS_NS: [u64; 12] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 50_000_000,
];

/// The whole request, from headers in to the last byte out: milliseconds to minutes.
const REQUEST_BOUNDS_NS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    15_000_000_000,
    60_000_000_000,
    300_000_000_000,
];

impl Histogram {
    const fn new(bounds_ns: &'static [u64]) -> Histogram {
        assert!(bounds_ns.len() <= MAX_BUCKETS);
        Histogram {
            bounds_ns,
            counts: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_ns
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(MAX_BUCKETS);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The exposition of `parts` added up: the same histogram's shards.
    fn render_sum(parts: &[&Histogram], out: &mut String, name: &str, help: &str) {
        let count = |i: usize| parts.iter().map(|h| h.counts[i].load(Relaxed)).sum::<u64>();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in parts[0].bounds_ns.iter().enumerate() {
            cumulative += count(i);
            let le = *bound as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += count(MAX_BUCKETS);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum_ns: u64 = parts.iter().map(|h| h.sum_ns.load(Relaxed)).sum();
        let sum = sum_ns as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Copies of the per-request figures (a power of two). Threads take them in turn: the event
/// loops (one per core) first, so that up to this many cores never share one.
pub const SHARDS: usize = 8;

/// The figures every request moves: one copy per shard, aligned so that no two shards share a
/// cache line (or the pair of lines the CPU prefetches together).
#[repr(align(128))]
struct Shard {
    requests: [[AtomicU64; OUTCOMES.len()]; OPERATIONS.len()],
    /// Backend answers by operation and status class 1xx..5xx (index 0..4).
    upstream_status: [[AtomicU64; 5]; OPERATIONS.len()],
    /// 401s to requests without credentials (git's first round trip of each operation).
    challenges: AtomicU64,
    /// Credentials tried and refused on git's path (401, or 403 for a Bearer token).
    auth_failures: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    auth_duration: Histogram,
    request_duration: Histogram,
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            requests: [const { [const { AtomicU64::new(0) }; OUTCOMES.len()] }; OPERATIONS.len()],
            upstream_status: [const { [const { AtomicU64::new(0) }; 5] }; OPERATIONS.len()],
            challenges: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            auth_duration: Histogram::new(&AUTH_BOUNDS_NS),
            request_duration: Histogram::new(&REQUEST_BOUNDS_NS),
        }
    }
}

/// The next shard to hand a thread.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, taken at its first figure.
    static THREAD_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// This thread's shard index.
fn thread_shard() -> usize {
    THREAD_SHARD.with(|s| match s.get() {
        Some(i) => i,
        None => {
            let i = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
            s.set(Some(i));
            i
        }
    })
}

/// Every figure gitgate exports.
pub struct Metrics {
    shards: [Shard; SHARDS],
    /// REST API calls by status class 1xx..5xx (index 0..4): not git requests, so apart from
    /// `requests`; few enough for one copy.
    api_requests: [AtomicU64; 5],
    upstream_errors: AtomicU64,
    /// Git requests whose answer was not sent whole, by [`UNFINISHED`] outcome: few (one copy).
    unfinished: [AtomicU64; UNFINISHED.len()],
    side_effect_failures: AtomicU64,
    audit_events_dropped: AtomicU64,
    /// Connections refused for their address's connection cap.
    address_cap_refusals: AtomicU64,
    /// Requests HTTP/1's parser refused before the gate saw them (400, 414, 431).
    unparsable_requests: AtomicU64,
    /// Connections gitgate closed on its own, by [`Cut`].
    connections_cut: [AtomicU64; 3],
    /// Requests refused because their address was blocked for failed authentications.
    throttled: AtomicU64,
    /// Failed accepts (out of file descriptors, most often): git's listener, this one.
    accept_failures: [AtomicU64; 2],
    active_connections: AtomicI64,
    /// The embedded backend's processes started and not yet reaped.
    backend_processes: AtomicI64,
    /// Requests refused because `[upstream] max_processes` backends ran for their whole wait.
    backend_busy: AtomicU64,
    /// Requests waiting for a place under `[upstream] max_processes` now.
    backend_waiting: AtomicI64,
    tokens_expiring_soon: AtomicU64,
    /// The served TLS certificate's notAfter, epoch seconds; 0 without TLS (or unread dates).
    tls_certificate_expiry: AtomicI64,
    /// SIGHUPs that kept a file in use because its new content was unusable.
    reload_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            shards: [const { Shard::new() }; SHARDS],
            api_requests: [const { AtomicU64::new(0) }; 5],
            upstream_errors: AtomicU64::new(0),
            unfinished: [const { AtomicU64::new(0) }; UNFINISHED.len()],
            side_effect_failures: AtomicU64::new(0),
            audit_events_dropped: AtomicU64::new(0),
            address_cap_refusals: AtomicU64::new(0),
            unparsable_requests: AtomicU64::new(0),
            connections_cut: [const { AtomicU64::new(0) }; 3],
            throttled: AtomicU64::new(0),
            accept_failures: [const { AtomicU64::new(0) }; 2],
            active_connections: AtomicI64::new(0),
            backend_processes: AtomicI64::new(0),
            backend_busy: AtomicU64::new(0),
            backend_waiting: AtomicI64::new(0),
            tokens_expiring_soon: AtomicU64::new(0),
            tls_certificate_expiry: AtomicI64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// The TLS certificate now served expires at `not_after` (epoch ms), at start and after a
    /// reload: what an alert on certificate renewal watches.
    pub fn tls_certificate_expires(&self, not_after: i64) {
        self.tls_certificate_expiry
            .store(not_after.div_euclid(1000), Relaxed);
    }

    /// The TLS certificate now served has dates that cannot be read: the expiry is no longer
    /// shown, rather than the date of a certificate that is no longer served (an alert would
    /// go on trusting it; one on the series' absence sees the change).
    pub fn tls_certificate_expiry_unknown(&self) {
        self.tls_certificate_expiry.store(0, Relaxed);
    }

    /// A SIGHUP kept the TLS certificate or the upstream credentials in use: the new ones were
    /// unusable (said in the log). What an alert on a renewal that did not load watches.
    pub fn reload_failed(&self) {
        self.reload_failures.fetch_add(1, Relaxed);
    }

    /// The calling thread's copy of the per-request figures.
    fn shard(&self) -> &Shard {
        &self.shards[thread_shard()]
    }

    /// A per-request counter, added up over the shards.
    fn total(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| counter(s).load(Relaxed)).sum()
    }

    /// How long the auth decision took (classification, credentials, lookup, policy).
    pub fn auth_decided(&self, took: Duration) {
        self.shard().auth_duration.observe(took);
    }

    /// One finished request (its body fully sent, failed or abandoned). Its bytes are counted
    /// as they move ([`Metrics::request_bytes`], [`Metrics::response_bytes`]).
    pub fn request_done(
        &self,
        op: Operation,
        outcome: Outcome,
        upstream_status: Option<u16>,
        took: Duration,
    ) {
        let shard = self.shard();
        shard.requests[op as usize][outcome as usize].fetch_add(1, Relaxed);
        if let Some(status) = upstream_status {
            let class = usize::from(status / 100).clamp(1, 5) - 1;
            shard.upstream_status[op as usize][class].fetch_add(1, Relaxed);
        }
        shard.request_duration.observe(took);
    }

    /// A git request's line said `outcome`: counted when it is one of [`UNFINISHED`] (an
    /// answer not sent whole), not for `complete`, which most are.
    pub fn request_ended(&self, outcome: &str) {
        if outcome == "complete" {
            return;
        }
        if let Some(i) = UNFINISHED.iter().position(|&o| o == outcome) {
            self.unfinished[i].fetch_add(1, Relaxed);
        }
    }

    /// Bytes of a git request's body, as they arrive: a long push counts while it uploads, and
    /// the rest of a body read after its answer ([`crate::linger`]) counts too.
    pub fn request_bytes(&self, bytes: u64) {
        self.shard().bytes_in.fetch_add(bytes, Relaxed);
    }

    /// Bytes of a git answer's body, as they go out: a long clone counts while it streams.
    pub fn response_bytes(&self, bytes: u64) {
        self.shard().bytes_out.fetch_add(bytes, Relaxed);
    }

    /// A REST API call was answered `status`.
    pub fn api_request(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.api_requests[class].fetch_add(1, Relaxed);
    }

    /// A request without credentials (or with a user name alone) was answered 401 with a
    /// challenge: git does this once per operation before it sends the token, so these are
    /// inside `outcome="401"` and are no failures; the difference is.
    pub fn challenge(&self) {
        self.shard().challenges.fetch_add(1, Relaxed);
    }

    /// Credentials were tried on git's path and refused: a wrong or unknown token, a revoked or
    /// expired one, a disabled owner, a malformed header. Most are 401s; a refused Bearer token
    /// is a 403 (see `Gate::unauthenticated`), so this is counted on its own.
    pub fn auth_failure(&self) {
        self.shard().auth_failures.fetch_add(1, Relaxed);
    }

    /// A connection was over its address's connection cap (`[server]
    /// max_connections_per_address`).
    pub fn address_cap_refusal(&self) {
        self.address_cap_refusals.fetch_add(1, Relaxed);
    }

    /// A request refused because its address is blocked for failed authentications.
    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    /// A connection closed by gitgate's own timeouts (not by a stop, not by the client).
    pub fn connection_cut(&self, why: Cut) {
        self.connections_cut[why as usize].fetch_add(1, Relaxed);
    }

    /// A request refused before the gate saw it for its head: by HTTP/1's parser (see
    /// [`crate::server`]'s unparsable requests), or over the head's size or field count.
    pub fn unparsable_request(&self) {
        self.unparsable_requests.fetch_add(1, Relaxed);
    }

    /// The embedded backend started a process ([`Metrics::backend_process_reaped`] once it
    /// is reaped).
    pub fn backend_process_started(&self) {
        self.backend_processes.fetch_add(1, Relaxed);
    }

    pub fn backend_process_reaped(&self) {
        self.backend_processes.fetch_sub(1, Relaxed);
    }

    /// A request starts waiting for a place under `[upstream] max_processes`
    /// ([`Metrics::backend_wait_ended`] when it has one, gives up or is dropped).
    pub fn backend_wait_started(&self) {
        self.backend_waiting.fetch_add(1, Relaxed);
    }

    pub fn backend_wait_ended(&self) {
        self.backend_waiting.fetch_sub(1, Relaxed);
    }

    /// An accept failed on git's listener (`metrics: false`) or the metrics one: out of file
    /// descriptors, most often, when the log says it once per window.
    pub fn accept_failed(&self, metrics: bool) {
        self.accept_failures[usize::from(metrics)].fetch_add(1, Relaxed);
    }

    /// A request answered 503 because `[upstream] max_processes` backends ran for its wait.
    pub fn backend_busy(&self) {
        self.backend_busy.fetch_add(1, Relaxed);
    }

    /// The backend could not be reached, or failed before or while answering.
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    /// Side effects lost so far (for tests).
    #[cfg(test)]
    pub fn side_effect_failures(&self) -> u64 {
        self.side_effect_failures.load(Relaxed)
    }

    /// An audit event or a last-used time could not be written (the request was served anyway).
    pub fn side_effect_failure(&self) {
        self.side_effect_failures.fetch_add(1, Relaxed);
    }

    /// Audit events not recorded: more different ones waited in a window than are kept.
    pub fn audit_events_dropped(&self, count: u64) {
        self.audit_events_dropped.fetch_add(count, Relaxed);
    }

    /// Audit events not recorded so far (for tests).
    #[cfg(test)]
    pub fn audit_events_dropped_so_far(&self) -> u64 {
        self.audit_events_dropped.load(Relaxed)
    }

    /// Counts a connection as active until the guard is dropped.
    pub fn connection(&'static self) -> ConnectionGuard {
        self.active_connections.fetch_add(1, Relaxed);
        ConnectionGuard(self)
    }

    /// The exposition text; `cache` is the token cache's (hits, misses).
    pub fn render(&self, cache: (u64, u64)) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP gitgate_build_info The running gitgate's version and build ID (the executable's GNU build ID, as `gitgate --version` prints it), as labels; always 1.\n\
             # TYPE gitgate_build_info gauge\n\
             gitgate_build_info{{version=\"{}\",build_id=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::build_id::own().unwrap_or("-")
        );
        out.push_str(
            "# HELP gitgate_requests_total Requests to the git port by operation and outcome (what is not a git request, such as GET /, as operation none, outcome rejected, and so is a probe's path asked with a method other than GET or HEAD, answered 405); not the REST API's or the probes'.\n\
             # TYPE gitgate_requests_total counter\n",
        );
        for (o, op) in OPERATIONS.iter().enumerate() {
            for (k, outcome) in OUTCOMES.iter().enumerate() {
                let n = self.total(|s| &s.requests[o][k]);
                let _ = writeln!(
                    out,
                    "gitgate_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        // With the operation, as the requests are: only a request whose outcome is "allowed"
        // has a backend answer, so these two are requests by operation, outcome and upstream
        // status. Only reads and writes are ever forwarded.
        out.push_str(
            "# HELP gitgate_upstream_responses_total Answers from the backend by operation and \
             status class.\n\
             # TYPE gitgate_upstream_responses_total counter\n",
        );
        for (o, op) in OPERATIONS.iter().enumerate().take(2) {
            for i in 0..5 {
                let _ = writeln!(
                    out,
                    "gitgate_upstream_responses_total{{operation=\"{op}\",status=\"{}xx\"}} {}",
                    i + 1,
                    self.total(|s| &s.upstream_status[o][i])
                );
            }
        }
        out.push_str(
            "# HELP gitgate_api_requests_total REST API calls (under /rest/) by status class.\n\
             # TYPE gitgate_api_requests_total counter\n",
        );
        for (i, n) in self.api_requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "gitgate_api_requests_total{{status=\"{}xx\"}} {}",
                i + 1,
                n.load(Relaxed)
            );
        }
        out.push_str(
            "# HELP gitgate_requests_unfinished_total Git requests (in gitgate_requests_total \
             too) whose answer was not sent whole, by the outcome of their log line: \
             client-gone (the client hung up before its answer, logged 499, or during it), \
             idle-timeout (the client idled, or stopped sending its upload once the answer had \
             begun), shutdown (cut off at the end of a stop's grace period), stream-error (the \
             backend's answer broke off: in gitgate_upstream_errors_total too, unless the \
             request was larger than the embedded backend takes), \
             malformed-request (git could not read the request), internal-error (a bug in \
             gitgate, answered 500).\n\
             # TYPE gitgate_requests_unfinished_total counter\n",
        );
        for (i, outcome) in UNFINISHED.iter().enumerate() {
            let _ = writeln!(
                out,
                "gitgate_requests_unfinished_total{{outcome=\"{outcome}\"}} {}",
                self.unfinished[i].load(Relaxed)
            );
        }
        out.push_str(
            "# HELP gitgate_connections_cut_total Connections gitgate closed by its own timeouts: \
             no request within header_read_timeout (a head that came too slowly, or none), idle \
             past idle_timeout, or a TLS handshake that failed or did not finish in time. Logged \
             at debug level only: a scan or a slow-header flood shows here.\n\
             # TYPE gitgate_connections_cut_total counter\n",
        );
        for why in [Cut::NoRequest, Cut::Idle, Cut::TlsHandshake] {
            let _ = writeln!(
                out,
                "gitgate_connections_cut_total{{reason=\"{}\"}} {}",
                why.label(),
                self.connections_cut[why as usize].load(Relaxed)
            );
        }
        let simple: [(&str, &str, &str, String); 18] = [
            (
                "gitgate_throttled_requests_total",
                "counter",
                "Requests (git's and the REST API's) refused 429 because their client address is blocked for failed authentications; git's are in gitgate_requests_total as outcome 429 too (with rate-limit refusals), the REST API's in gitgate_api_requests_total.",
                self.throttled.load(Relaxed).to_string(),
            ),
            (
                "gitgate_connections_over_address_cap_total",
                "counter",
                "Connections answered 503 and closed because their client address held [server] max_connections_per_address already.",
                self.address_cap_refusals.load(Relaxed).to_string(),
            ),
            (
                "gitgate_unparsable_requests_total",
                "counter",
                "Requests refused before gitgate saw them: by HTTP/1's parser, 400 (a malformed request line or header), 414 (URI too long), 431 (head over max_header_bytes or 100 fields, or a Content-Length past 2^64-3); on HTTP/2, 431 for over 100 header fields. Not in gitgate_requests_total.",
                self.unparsable_requests.load(Relaxed).to_string(),
            ),
            (
                "gitgate_side_effect_write_failures_total",
                "counter",
                "Audit events and last-used times that could not be written; requests were served.",
                self.side_effect_failures.load(Relaxed).to_string(),
            ),
            (
                "gitgate_audit_events_dropped_total",
                "counter",
                "Audit events not recorded because more different ones came in a 100 ms window than are kept (4096 per worker thread): a flood of varied failed authentications; each window's count is an audit.dropped event. Requests were served.",
                self.audit_events_dropped.load(Relaxed).to_string(),
            ),
            (
                "gitgate_upstream_errors_total",
                "counter",
                "Requests the backend failed: unreachable, timed out, or crashed before or while answering, or answered with a gateway's error page (nginx's 502 when fcgiwrap is down); a 5xx a git server answered in text is in gitgate_upstream_responses_total.",
                self.upstream_errors.load(Relaxed).to_string(),
            ),
            (
                "gitgate_auth_challenges_total",
                "counter",
                "401s to requests that sent no credentials (or a user name alone): git's first round trip of each operation, counted in outcome=\"401\" too.",
                self.total(|s| &s.challenges).to_string(),
            ),
            (
                "gitgate_auth_failures_total",
                "counter",
                "Requests whose credentials were tried and refused: git's (wrong, unknown, revoked or expired token, disabled owner, malformed header; answered 401, or 403 for a Bearer token) and the REST API's (a wrong password, 401).",
                self.total(|s| &s.auth_failures).to_string(),
            ),
            (
                "gitgate_request_bytes_total",
                "counter",
                "Request body bytes of git requests received from clients (also the rest of one read after its answer, to close cleanly); not the REST API's.",
                self.total(|s| &s.bytes_in).to_string(),
            ),
            (
                "gitgate_response_bytes_total",
                "counter",
                "Response body bytes of git requests sent to clients; not the REST API's or the probes'.",
                self.total(|s| &s.bytes_out).to_string(),
            ),
            (
                "gitgate_active_connections",
                "gauge",
                "Client connections open now (a socket still sending its last answer after gitgate has ended its connection included).",
                self.active_connections.load(Relaxed).to_string(),
            ),
            (
                "gitgate_backend_processes",
                "gauge",
                "Processes of the embedded CGI backend running now (git http-backend; with a push finishing without its client, or one being ended), counted against [upstream] max_processes.",
                self.backend_processes.load(Relaxed).to_string(),
            ),
            (
                "gitgate_backend_waiting",
                "gauge",
                "Requests waiting now for a place under [upstream] max_processes.",
                self.backend_waiting.load(Relaxed).to_string(),
            ),
            (
                "gitgate_backend_busy_total",
                "counter",
                "Requests answered 503 because [upstream] max_processes backend processes ran (or, while other tokens waited, the request's token held its share of them) for as long as they could wait, or until a stop, or because no backend process could be started for want of processes or file descriptors (counted in outcome=\"5xx\" too).",
                self.backend_busy.load(Relaxed).to_string(),
            ),
            (
                "gitgate_token_cache_hits_total",
                "counter",
                "Token lookups answered from the in-memory cache.",
                cache.0.to_string(),
            ),
            (
                "gitgate_token_cache_misses_total",
                "counter",
                "Token lookups that had to read the store.",
                cache.1.to_string(),
            ),
            (
                "gitgate_tokens_expiring_soon",
                "gauge",
                "Live tokens that expire within 7 days (refreshed every minute).",
                self.tokens_expiring_soon.load(Relaxed).to_string(),
            ),
            (
                "gitgate_reload_failures_total",
                "counter",
                "SIGHUPs that kept the TLS certificate or the upstream credentials in use because the new ones were unusable (the log says why).",
                self.reload_failures.load(Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP gitgate_accept_failures_total Connections the listener could not accept \
             (out of file descriptors, most often: they wait in the listen backlog, and the \
             log says it once per window).\n\
             # TYPE gitgate_accept_failures_total counter\n\
             gitgate_accept_failures_total{{listener=\"git\"}} {}\n\
             gitgate_accept_failures_total{{listener=\"metrics\"}} {}",
            self.accept_failures[0].load(Relaxed),
            self.accept_failures[1].load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP gitgate_log_lines_dropped_total Log lines dropped because the log's reader \
             did not keep up (a full queue of lines waiting to be written to stderr), or because \
             writing them failed (a full disk under the log file); the log says how many when it \
             writes again.\n\
             # TYPE gitgate_log_lines_dropped_total counter\n\
             gitgate_log_lines_dropped_total {}",
            crate::log_queue::DROPPED.load(Relaxed),
        );
        let expiry = self.tls_certificate_expiry.load(Relaxed);
        if expiry != 0 {
            let _ = writeln!(
                out,
                "# HELP gitgate_tls_certificate_expiry_timestamp_seconds When the TLS \
                 certificate chain gitgate serves expires (the earliest notAfter of the server's \
                 certificate and its intermediates), in Unix seconds.\n\
                 # TYPE gitgate_tls_certificate_expiry_timestamp_seconds gauge\n\
                 gitgate_tls_certificate_expiry_timestamp_seconds {expiry}"
            );
        }
        let auth: Vec<&Histogram> = self.shards.iter().map(|s| &s.auth_duration).collect();
        Histogram::render_sum(
            &auth,
            &mut out,
            "gitgate_auth_duration_seconds",
            "Time to decide a request (classify, credentials, token lookup, policy).",
        );
        let whole: Vec<&Histogram> = self.shards.iter().map(|s| &s.request_duration).collect();
        Histogram::render_sum(
            &whole,
            &mut out,
            "gitgate_request_duration_seconds",
            "Whole requests, from the headers to the last byte of the answer.",
        );
        out
    }
}

/// Why gitgate closed a connection on its own ([`Metrics::connection_cut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// No (complete) request head within `header_read_timeout`.
    NoRequest = 0,
    /// Nothing moved for `idle_timeout`.
    Idle = 1,
    /// The TLS handshake failed or did not finish within `header_read_timeout`.
    TlsHandshake = 2,
}

impl Cut {
    fn label(self) -> &'static str {
        match self {
            Cut::NoRequest => "no-request",
            Cut::Idle => "idle",
            Cut::TlsHandshake => "tls-handshake",
        }
    }
}

/// Decrements the active-connection gauge when the connection ends.
pub struct ConnectionGuard(&'static Metrics);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Relaxed);
    }
}

/// Most connections the metrics listener serves at once; more wait in the listen backlog. A
/// scraper or two keep one each.
const MAX_SCRAPERS: usize = 16;

/// Serve `GET /metrics` on `listener` until the stop begins, and keep the
/// expiring-tokens figure fresh. The listener has the main one's header deadline and idle
/// timeout (`limits`), and its own small connection cap, so that whoever can reach it cannot
/// hold connections (and file descriptors) open.
///
/// Returns, closing the listener, when `stopping` turns true: as the git listener does at the
/// stop, so that a new process started meanwhile (a supervisor's restart, a handover) can bind
/// both addresses while this one drains.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    limits: Limits,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(refresh_expiring(store.clone()));
    said_if_it_panics(accept_scrapers(listener, store, limits, stopping)).await;
}

/// `accepting` ([`accept_scrapers`]), with a panic of its own (in the accept loop, outside any
/// scraper's connection) said as the end of /metrics, as a socket that fails for good is: an
/// ERROR line naming the consequence, after the panic's own. The panicked loop is dropped, its
/// listening socket with it, so a scraper is refused at once (its target shows down) rather
/// than left in the backlog. Before, the task just ended: /metrics was gone until a restart,
/// and only the panic's line told of it, with no word of what it ended.
///
/// Neither restarted nor the process stopped. The loop's panic is a bug that would come back
/// with the same input, so a restart would turn it into a loop of panics in the log; and
/// stopping gitgate would make a fault of an optional side listener an outage of every clone
/// and push, and with a supervisor's `Restart=on-failure` possibly a loop of restarts. git is
/// served on, as when the metrics socket fails for good; the scraper's "target down" and this
/// line say what to restart.
async fn said_if_it_panics(accepting: impl std::future::Future<Output = ()>) {
    if crate::unwind::unless_it_panics(accepting).await.is_none() {
        tracing::error!(
            "metrics: the accepting of /metrics connections panicked (its panic is in the log \
             above): /metrics is no longer served until gitgate is started again; git is \
             served as before"
        );
    }
}

/// The accept loop of [`serve`].
async fn accept_scrapers(
    listener: TcpListener,
    store: Store,
    limits: Limits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPERS));
    let mut accept_failures = Repeats::new(crate::server::ACCEPT_FAILURES_WINDOW);
    loop {
        // The stop is watched while every place is taken too: scrapers holding all of them
        // (anyone who can reach the port can) must not keep the address bound.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit,
            _ = stopping.wait_for(|stopping| *stopping) => return,
        };
        let Ok(permit) = permit else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stopping| *stopping) => return,
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(e) if crate::server::accept_failed_for_good(&e) => {
                METRICS.accept_failed(true);
                // Not the server's end: git is served as before, only /metrics no longer.
                tracing::error!(error = %crate::log_value::LogText(&e.to_string()), "metrics: the listening socket cannot accept connections any more (something shut it down or closed it under gitgate): /metrics is no longer served until gitgate is started again");
                return;
            }
            Err(e) => {
                METRICS.accept_failed(true);
                // As the main listener's: once per window, not every 50 ms.
                if let Some(times) = accept_failures.failed(std::time::Instant::now()) {
                    tracing::warn!(error = %crate::log_value::LogText(&e.to_string()), times, "metrics: accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // As the main listener's: once none has failed for a window.
        if let Some(times) = accept_failures.ended_quietly(std::time::Instant::now()) {
            tracing::warn!(times, "metrics: accepting connections again after failures");
        }
        let store = store.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let activity = Activity::new();
            let requests = activity.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let answered = answer(&req, &store);
                // Opened and answered at once: moves the idle timer's answer clock.
                drop(requests.request_opened());
                async move { Ok::<_, Infallible>(answered) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(
                    TokioIo::new(ActivityIo::new(stream, activity.clone())),
                    service,
                );
            let _ = until_idle(
                conn,
                &activity,
                limits.idle_timeout,
                limits.header_read_timeout,
                None,
            )
            .await;
            drop(permit);
        });
    }
}

fn answer<B>(req: &Request<B>, store: &Store) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"only /metrics here\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(METRICS.render(store.cache_stats()))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn refresh_expiring(store: Store) {
    loop {
        // A thread of its own, not tokio's blocking pool, whose first thread failing to start
        // (a process limit reached) is a panic: it ended this loop for good, and the gauge
        // was never refreshed again.
        let s = store.clone();
        let started = crate::own_thread::run("gitgate-expiring", move || {
            s.count_expiring(clock::now_ms(), EXPIRY_WINDOW_MS)
        });
        match started {
            Ok(counting) => match counting.await {
                Some(Ok(n)) => METRICS.tokens_expiring_soon.store(n, Relaxed),
                Some(Err(e)) => {
                    tracing::warn!(error = %crate::log_value::LogText(&e.to_string()), "metrics: could not count expiring tokens")
                }
                None => tracing::warn!("metrics: expiry count task failed"),
            },
            Err(e) => {
                tracing::warn!(error = %crate::log_value::LogText(&e.to_string()), "metrics: could not start a thread to count expiring tokens (tried again at the next refresh)")
            }
        }
        tokio::time::sleep(EXPIRY_REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic of the metrics accept loop itself is said as the end of /metrics (ERROR, what
    /// it ends), and its listening socket is closed with it: a scraper is refused. Before, the
    /// task ended with the panic, and nothing said /metrics was no longer served.
    #[test]
    fn a_panic_of_the_metrics_accepting_is_said_and_closes_its_socket() {
        let mut refused = None;
        let log = crate::store::test_support::logged(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let local = listener.local_addr().unwrap();
                said_if_it_panics(async move {
                    let _listening = listener;
                    panic!("on purpose")
                })
                .await;
                refused = Some(tokio::net::TcpStream::connect(local).await);
            });
        });
        assert!(
            log.contains("ERROR")
                && log.contains("the accepting of /metrics connections panicked")
                && log.contains("/metrics is no longer served until gitgate is started again"),
            "{log}"
        );
        let refused = refused.unwrap();
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn outcomes_follow_status_unless_forwarded() {
        assert_eq!(Outcome::of(true, 500), Outcome::Allowed);
        assert_eq!(Outcome::of(false, 401), Outcome::Unauthorized);
        assert_eq!(Outcome::of(false, 403), Outcome::Forbidden);
        assert_eq!(Outcome::of(false, 429), Outcome::TooManyRequests);
        assert_eq!(Outcome::of(false, 502), Outcome::ServerError);
        assert_eq!(Outcome::of(false, 404), Outcome::Rejected);
        // A framing gitgate does not pass on is the client's, not gitgate's failing.
        assert_eq!(Outcome::of(false, 501), Outcome::Rejected);
        assert_eq!(Outcome::of(false, 503), Outcome::ServerError);
    }

    #[test]
    fn answers_not_sent_whole_are_counted_by_their_outcome() {
        let m = Metrics::new();
        for outcome in [
            "complete",
            "client-gone",
            "client-gone",
            "shutdown",
            "unparsable",
        ] {
            m.request_ended(outcome);
        }
        let text = m.render((0, 0));
        let said = |outcome: &str, n: u64| {
            format!("gitgate_requests_unfinished_total{{outcome=\"{outcome}\"}} {n}\n")
        };
        assert!(text.contains(&said("client-gone", 2)), "{text}");
        assert!(text.contains(&said("shutdown", 1)), "{text}");
        assert!(text.contains(&said("idle-timeout", 0)), "{text}");
        assert!(!text.contains("outcome=\"complete\"}"), "{text}");
        assert!(!text.contains("outcome=\"unparsable\""), "{text}");
    }

    #[test]
    fn renders_cumulative_buckets_and_labels() {
        let m = Metrics::new();
        m.auth_decided(Duration::from_micros(3));
        m.auth_decided(Duration::from_millis(2));
        m.auth_decided(Duration::from_secs(9));
        m.request_done(
            Operation::Read,
            Outcome::Allowed,
            Some(200),
            Duration::from_millis(3),
        );
        m.request_bytes(10);
        m.response_bytes(20);
        // Allowed, but its client left before the backend answered: no backend status.
        m.request_done(
            Operation::Read,
            Outcome::Allowed,
            None,
            Duration::from_millis(3),
        );
        let text = m.render((7, 1));
        assert!(text.contains("gitgate_auth_duration_seconds_bucket{le=\"0.000005\"} 1\n"));
        assert!(text.contains("gitgate_auth_duration_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(text.contains("gitgate_auth_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("gitgate_auth_duration_seconds_count 3\n"));
        assert!(text.contains("gitgate_requests_total{operation=\"read\",outcome=\"allowed\"} 2\n"));
        assert!(text
            .contains("gitgate_upstream_responses_total{operation=\"read\",status=\"2xx\"} 1\n"));
        for zero in ["read\",status=\"4xx", "write\",status=\"2xx"] {
            assert!(text.contains(&format!(
                "gitgate_upstream_responses_total{{operation=\"{zero}\"}} 0\n"
            )));
        }
        assert!(!text.contains("operation=\"none\",status="));
        // The certificate's expiry only once there is one.
        assert!(!text.contains("gitgate_tls_certificate_expiry_timestamp_seconds"));
        m.tls_certificate_expires(4_951_613_640_000);
        assert!(m
            .render((0, 0))
            .contains("\ngitgate_tls_certificate_expiry_timestamp_seconds 4951613640\n"));
        // A certificate served since, whose dates cannot be read, takes it away again.
        m.tls_certificate_expiry_unknown();
        assert!(!m
            .render((0, 0))
            .contains("gitgate_tls_certificate_expiry_timestamp_seconds"));
        m.tls_certificate_expires(4_951_613_640_000);
        assert!(text.contains("gitgate_response_bytes_total 20\n"));
        assert!(text.contains("gitgate_token_cache_hits_total 7\n"));
        // Failed accepts, by listener: the metrics one's own are counted too (shown once
        // descriptors are back).
        assert!(text.contains("gitgate_accept_failures_total{listener=\"git\"} 0\n"));
        m.accept_failed(false);
        m.accept_failed(true);
        m.accept_failed(true);
        assert!(text.contains("gitgate_reload_failures_total 0\n"));
        m.reload_failed();
        let text = m.render((0, 0));
        assert!(text.contains("gitgate_reload_failures_total 1\n"));
        assert!(text.contains("gitgate_accept_failures_total{listener=\"git\"} 1\n"));
        assert!(text.contains("gitgate_accept_failures_total{listener=\"metrics\"} 2\n"));
        assert!(text.starts_with(&format!(
            "# HELP gitgate_build_info The running gitgate's version and build ID (the executable's GNU build ID, as `gitgate --version` prints it), as labels; always 1.\n\
             # TYPE gitgate_build_info gauge\n\
             gitgate_build_info{{version=\"{}\",build_id=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            crate::build_id::own().unwrap_or("-")
        )));
    }

    /// The text format wants each family whole: its HELP and TYPE, then all its samples, with
    /// no other family's lines in between (a split family was read by Prometheus's own parser
    /// as a typed family without samples and an untyped one).
    #[test]
    fn every_family_is_one_group_after_its_help_and_type() {
        let m = Metrics::new();
        m.tls_certificate_expires(4_951_613_640_000);
        let text = m.render((1, 2));
        let mut seen = std::collections::HashSet::new();
        let mut family: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} twice:\n{text}");
                family = Some((name, String::new()));
                continue;
            }
            let (name, kind) = family.as_mut().expect("a sample before any HELP");
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split(' ');
                assert_eq!(words.next(), Some(name.as_str()), "{line}");
                *kind = words.next().unwrap().to_string();
                continue;
            }
            assert!(!kind.is_empty(), "a sample before its TYPE: {line}");
            let sample = line.split(['{', ' ']).next().unwrap();
            let own = if kind == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample.strip_suffix(s) == Some(name.as_str()))
            } else {
                sample == name
            };
            assert!(own, "{line} in the family {name}:\n{text}");
        }
        assert!(seen.len() > 20, "{seen:?}");
    }

    /// `le` is "less than or equal": an observation exactly on a bucket's bound is counted in
    /// that bucket, not the next one up.
    #[test]
    fn an_observation_on_a_bucket_bound_is_counted_in_that_bucket() {
        let m = Metrics::new();
        m.auth_decided(Duration::from_micros(5));
        m.auth_decided(Duration::from_micros(10));
        m.request_done(
            Operation::Read,
            Outcome::Allowed,
            Some(200),
            Duration::from_millis(1),
        );
        let text = m.render((0, 0));
        for line in [
            "gitgate_auth_duration_seconds_bucket{le=\"0.000005\"} 1\n",
            "gitgate_auth_duration_seconds_bucket{le=\"0.00001\"} 2\n",
            "gitgate_request_duration_seconds_bucket{le=\"0.001\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }

    /// A backend's answer is counted under its request's operation and its own status class,
    /// 5xx included; a REST API call under its status class, 1xx included.
    #[test]
    fn answers_are_counted_by_operation_and_status_class() {
        let m = Metrics::new();
        let took = Duration::from_millis(3);
        m.request_done(Operation::Write, Outcome::Allowed, Some(502), took);
        m.request_done(Operation::Write, Outcome::Allowed, Some(200), took);
        m.request_done(Operation::Read, Outcome::Allowed, Some(404), took);
        for status in [101, 204, 404, 503, 503] {
            m.api_request(status);
        }
        let text = m.render((0, 0));
        for (series, n) in [
            (
                "upstream_responses_total{operation=\"write\",status=\"5xx\"}",
                1,
            ),
            (
                "upstream_responses_total{operation=\"write\",status=\"2xx\"}",
                1,
            ),
            (
                "upstream_responses_total{operation=\"write\",status=\"4xx\"}",
                0,
            ),
            (
                "upstream_responses_total{operation=\"read\",status=\"4xx\"}",
                1,
            ),
            (
                "upstream_responses_total{operation=\"read\",status=\"2xx\"}",
                0,
            ),
            (
                "upstream_responses_total{operation=\"read\",status=\"5xx\"}",
                0,
            ),
            ("api_requests_total{status=\"1xx\"}", 1),
            ("api_requests_total{status=\"2xx\"}", 1),
            ("api_requests_total{status=\"4xx\"}", 1),
            ("api_requests_total{status=\"5xx\"}", 2),
        ] {
            let line = format!("\ngitgate_{series} {n}\n");
            assert!(text.contains(&line), "{line:?} in:\n{text}");
        }
    }

    /// The gauges go down as well as up: a connection ended, a backend process reaped, a wait
    /// for a place over are no longer counted.
    #[test]
    fn gauges_go_back_down_when_what_they_count_ends() {
        static M: Metrics = Metrics::new();
        let shows = |series: &str, n: i64| {
            let text = M.render((0, 0));
            let line = format!("\n{series} {n}\n");
            assert!(text.contains(&line), "{line:?} in:\n{text}");
        };
        let guard = M.connection();
        M.backend_process_started();
        M.backend_wait_started();
        shows("gitgate_active_connections", 1);
        shows("gitgate_backend_processes", 1);
        shows("gitgate_backend_waiting", 1);
        drop(guard);
        M.backend_process_reaped();
        M.backend_wait_ended();
        shows("gitgate_active_connections", 0);
        shows("gitgate_backend_processes", 0);
        shows("gitgate_backend_waiting", 0);
    }

    /// git's first, credential-less round trip is a challenge, not a failed authentication:
    /// each is counted in its own figure.
    #[test]
    fn a_challenge_is_counted_apart_from_a_failed_authentication() {
        let m = Metrics::new();
        m.challenge();
        m.challenge();
        m.auth_failure();
        let text = m.render((0, 0));
        assert!(
            text.contains("\ngitgate_auth_challenges_total 2\n"),
            "{text}"
        );
        assert!(text.contains("\ngitgate_auth_failures_total 1\n"), "{text}");
    }

    /// The early warning counts the live tokens that expire within 7 days, not those that
    /// expire later, and shows that count as it is.
    #[test]
    fn tokens_expiring_within_seven_days_are_counted() {
        let (dir, store) = crate::store::test_support::temp_store();
        let now = clock::now_ms();
        let day = 86_400_000;
        let mut sql = String::new();
        for (id, expires) in [("soon", now + 6 * day + day / 2), ("later", now + 8 * day)] {
            sql.push_str(&format!(
                "INSERT INTO tokens (id, kind, name, scope, permissions, secret_hash, \
                 created_at, created_by, expires_at) VALUES ('{id}', 'repository', '{id}', \
                 'team/app', 'REPO_READ', x'00', {now}, 'test', {expires});"
            ));
        }
        crate::store::test_support::edit_by_hand(&dir, &sql);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let counted = runtime.block_on(async {
            let refresh = tokio::spawn(refresh_expiring(store));
            // Counted within milliseconds; waited for far longer, for a busy machine.
            for _ in 0..200 {
                let n = METRICS.tokens_expiring_soon.load(Relaxed);
                if n != 0 {
                    refresh.abort();
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            refresh.abort();
            0
        });
        assert_eq!(counted, 1);
        assert!(METRICS
            .render((0, 0))
            .contains("\ngitgate_tokens_expiring_soon 1\n"));
    }

    /// Each counter of one event counts that event alone, by as much as it happened: a
    /// connection cut under its reason, a refusal under its cause.
    #[test]
    fn each_counter_counts_its_own_event() {
        let m = Metrics::new();
        m.connection_cut(Cut::Idle);
        m.connection_cut(Cut::TlsHandshake);
        m.connection_cut(Cut::TlsHandshake);
        m.throttled();
        m.address_cap_refusal();
        m.address_cap_refusal();
        for _ in 0..3 {
            m.unparsable_request();
        }
        m.audit_events_dropped(40);
        m.upstream_error();
        m.backend_busy();
        m.backend_busy();
        m.side_effect_failure();
        let text = m.render((0, 0));
        for (series, n) in [
            ("connections_cut_total{reason=\"no-request\"}", 0),
            ("connections_cut_total{reason=\"idle\"}", 1),
            ("connections_cut_total{reason=\"tls-handshake\"}", 2),
            ("throttled_requests_total", 1),
            ("connections_over_address_cap_total", 2),
            ("unparsable_requests_total", 3),
            ("audit_events_dropped_total", 40),
            ("upstream_errors_total", 1),
            ("backend_busy_total", 2),
            ("side_effect_write_failures_total", 1),
        ] {
            let line = format!("\ngitgate_{series} {n}\n");
            assert!(text.contains(&line), "{line:?} in:\n{text}");
        }
    }

    /// Each thread writes its own shard; a scrape adds them all up, from more threads than
    /// there are shards too.
    #[test]
    fn figures_from_many_threads_add_up() {
        static M: Metrics = Metrics::new();
        let threads: Vec<_> = (0..SHARDS * 2 + 3)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..100 {
                        M.request_done(
                            Operation::Write,
                            Outcome::Unauthorized,
                            None,
                            Duration::from_micros(1500),
                        );
                        M.request_bytes(1);
                        M.response_bytes(2);
                        M.auth_failure();
                        M.auth_decided(Duration::from_micros(7));
                    }
                    thread_shard()
                })
            })
            .collect();
        let mut used: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        used.sort();
        used.dedup();
        // Threads take shards in turn (other tests' threads too): these took several.
        assert!(used.len() >= 2, "shards taken: {used:?}");
        let n = (SHARDS * 2 + 3) * 100;
        let text = M.render((0, 0));
        for line in [
            format!("gitgate_requests_total{{operation=\"write\",outcome=\"401\"}} {n}\n"),
            format!("gitgate_auth_failures_total {n}\n"),
            format!("gitgate_request_bytes_total {n}\n"),
            format!("gitgate_response_bytes_total {}\n", 2 * n),
            format!("gitgate_request_duration_seconds_bucket{{le=\"0.0025\"}} {n}\n"),
            "gitgate_request_duration_seconds_bucket{le=\"0.001\"} 0\n".to_string(),
            format!("gitgate_auth_duration_seconds_count {n}\n"),
        ] {
            assert!(text.contains(&line), "{line:?} in:\n{text}");
        }
        let sum = format!("gitgate_auth_duration_seconds_sum {}\n", n as f64 * 7e-6);
        assert!(text.contains(&sum), "{sum:?} in:\n{text}");
    }
}
