//! `GET /healthz` and `GET /readyz`, for load balancers and orchestrators.
//!
//! The server answers them before the gate sees the request: they need no token and are never
//! forwarded, because a probe must not depend on (or leak anything about) repositories. Neither
//! path can be a git request anyway — a repository needs `<project>/<repo>` and a git suffix.
//!
//! - liveness (`/healthz`): the process answers HTTP; nothing else is checked, so an outage of
//!   the store or the upstream does not get gitgate restarted for nothing;
//! - readiness (`/readyz`): the token store can be read and the upstream can be reached, i.e.
//!   a git request now would not fail for a reason of gitgate's own. `503` with what failed if
//!   not — "token store unreadable" or "git backend unreachable"; the details (addresses,
//!   paths, errors) go to the log only, since anyone may probe.
//!
//! The check opens a connection to the upstream, and a flood of unauthenticated probes must not
//! become a flood of connections there: each worker runs one check at a time, the probes that
//! arrive meanwhile wait for its outcome, and an outcome, success or failure, answers for
//! `REMEMBER_FOR` (so recovery shows within a second).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::{Method, Response, StatusCode};
use tokio::sync::Mutex;

use crate::gate::{text, Gate, ResponseBody};

/// How long a readiness check answers for the probes that follow it.
const REMEMBER_FOR: Duration = Duration::from_secs(1);

/// What failed, as a probe is told.
type NotReady = &'static str;

/// Whether the last readiness check, of whichever worker, failed.
static NOT_READY: AtomicBool = AtomicBool::new(false);

/// The last readiness check and when it ran (one per gate, that is per worker). Its lock is
/// held while a check runs, so that concurrent probes share it.
#[derive(Default)]
pub struct Readiness(Mutex<Option<(Instant, Result<(), NotReady>)>>);

/// The answer to a probe, or `None` if the request is not one.
pub async fn probe(gate: &Gate, method: &Method, path: &str) -> Option<Response<ResponseBody>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path {
        "/healthz" => Some(text(StatusCode::OK, "ok")),
        "/readyz" => Some(match ready(gate).await {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(what) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {what} (the reason is in gitgate's log)"),
            ),
        }),
        _ => None,
    }
}

/// The readiness check once, as gitgate starts: a backend that does not answer (a wrong port, a
/// missing CGI program) shows in the start's log — the check's own warning, with the details —
/// rather than first as a user's 502. Not fatal: the backend may start after gitgate. Its
/// outcome answers the first second's probes like any check's.
pub async fn check_at_start(gate: &Gate) {
    if ready(gate).await.is_ok() {
        tracing::info!("ready: the token store and the git backend answer");
    }
}

async fn ready(gate: &Gate) -> Result<(), NotReady> {
    let mut last = gate.readiness.0.lock().await;
    if let Some((at, outcome)) = *last {
        if at.elapsed() < REMEMBER_FOR {
            return outcome;
        }
    }
    let outcome = check(gate).await;
    // The outage's end is news too: said once, by the first check of any worker that saw it
    // end (each worker checks for itself, and the probes may come to any of them).
    if NOT_READY.swap(outcome.is_err(), Ordering::Relaxed) && outcome.is_ok() {
        tracing::info!("ready again: the token store and the git backend answer");
    }
    *last = Some((Instant::now(), outcome));
    outcome
}

/// Runs the checks; a failure is logged with its details and answered with what failed.
async fn check(gate: &Gate) -> Result<(), NotReady> {
    let store = gate.store.clone();
    let pinged = match tokio::task::spawn_blocking(move || store.ping()).await {
        Ok(pinged) => pinged.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the check failed: {e}")),
    };
    if let Err(why) = pinged {
        tracing::warn!(reason = ?why, "not ready: token store unreadable");
        return Err("token store unreadable");
    }
    if let Err(why) = gate.upstream.ready().await {
        tracing::warn!(reason = ?why, "not ready: git backend unreachable");
        return Err("git backend unreachable");
    }
    Ok(())
}
