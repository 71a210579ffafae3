//! `GET /healthz` and `GET /readyz`, for load balancers and orchestrators (`HEAD` too; any
//! other method is answered `405`).
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
//!
//! An outage is logged as news, not once per check: a failure is warned about with its details
//! when it starts or its cause changes, then a reminder of how long it has lasted once a minute
//! at most, and its end once — a monitor that probes every second during a night-long outage of
//! the backend must not bury the log under identical warnings.

use std::sync::Mutex as SyncMutex;
use std::time::{Duration, Instant};

use hyper::{Method, Response, StatusCode};
use tokio::sync::Mutex;

use crate::gate::{method_not_allowed, text, Gate, ResponseBody};
use crate::git;

/// How long a readiness check answers for the probes that follow it.
const REMEMBER_FOR: Duration = Duration::from_secs(1);

/// What failed, as a probe is told.
type NotReady = &'static str;

/// How often at most a failure that goes on unchanged is said again.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// The outage under way, as the log has told it, shared by the workers (each checks for itself,
/// and the probes may come to any of them). `None` while ready.
static OUTAGE: SyncMutex<Option<Outage>> = SyncMutex::new(None);

/// A failing readiness: since when, why, and what the log has said of it.
#[derive(Debug)]
struct Outage {
    since: Instant,
    /// What failed and the details, as last warned about.
    cause: (NotReady, String),
    said_at: Instant,
    /// Failed checks since it was last said.
    unsaid: u64,
}

/// What a failed check adds to the log.
#[derive(Debug, PartialEq)]
enum News {
    /// A new outage, or a new cause for it: warn with the details.
    Failing,
    /// The same cause for `REMIND_EVERY` or longer: remind, with how long and how many checks.
    Still { lasted: Duration, checks: u64 },
    /// The same cause, said a moment ago.
    Nothing,
}

/// Takes a failed check into `outage` at `now` and says what is news.
fn failed(outage: &mut Option<Outage>, cause: (NotReady, String), now: Instant) -> News {
    match outage {
        Some(o) if o.cause == cause => {
            o.unsaid += 1;
            if now.saturating_duration_since(o.said_at) < REMIND_EVERY {
                return News::Nothing;
            }
            let checks = std::mem::take(&mut o.unsaid);
            o.said_at = now;
            News::Still {
                lasted: now.saturating_duration_since(o.since),
                checks,
            }
        }
        Some(o) => {
            *o = Outage {
                since: o.since,
                cause,
                said_at: now,
                unsaid: 0,
            };
            News::Failing
        }
        None => {
            *outage = Some(Outage {
                since: now,
                cause,
                said_at: now,
                unsaid: 0,
            });
            News::Failing
        }
    }
}

/// The last readiness check and when it ran (one per gate, that is per worker). Its lock is
/// held while a check runs, so that concurrent probes share it; a probe whose client gives up
/// drops it, so the store's ping on its own thread is one at a time by `ping` as well.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), NotReady>)>>,
    ping: crate::own_thread::OneAtATime,
}

/// The answer to a probe, or `None` if the request is not one. A probe's path asked with another
/// method than `GET` or `HEAD` is answered `405` with `Allow: GET, HEAD`, as any resource that
/// takes only those would be: it is not a git request (the gate would answer `404`, "not a Git
/// HTTP endpoint", for a path that is there), and is never forwarded.
pub async fn probe(gate: &Gate, method: &Method, path: &str) -> Option<Response<ResponseBody>> {
    if !matches!(path, "/healthz" | "/readyz") {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(method_not_allowed(
            &git::wrong_method(method.as_str(), path, git::READS),
            git::READS,
        ));
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
    let mut last = gate.readiness.last.lock().await;
    if let Some(outcome) = remembered(*last, Instant::now()) {
        return outcome;
    }
    let checked = check(gate).await;
    let now = Instant::now();
    let outcome = checked.as_ref().map_err(|(what, _)| *what).copied();
    say(checked, now);
    *last = Some((now, outcome));
    outcome
}

/// Pure: the last check's outcome if it is recent enough to answer a probe at `now` (a
/// flood of probes costs one check of the store and the backend a second, not one each).
fn remembered(
    last: Option<(Instant, Result<(), NotReady>)>,
    now: Instant,
) -> Option<Result<(), NotReady>> {
    let (at, outcome) = last?;
    (now.saturating_duration_since(at) < REMEMBER_FOR).then_some(outcome)
}

/// Logs what a check's outcome adds to the story of the outage, if anything.
fn say(checked: Result<(), (NotReady, String)>, now: Instant) {
    let mut outage = OUTAGE.lock().unwrap_or_else(|e| e.into_inner());
    match checked {
        // The outage's end is news too: said once, by the first check of any worker that saw it.
        Ok(()) => {
            if let Some(o) = outage.take() {
                tracing::info!(
                    down_for_s = now.saturating_duration_since(o.since).as_secs(),
                    "ready again: the token store and the git backend answer"
                );
            }
        }
        Err(cause) => {
            let (what, why) = cause.clone();
            match failed(&mut outage, cause, now) {
                News::Failing => {
                    tracing::warn!(reason = %crate::log_value::LogText(&why), "not ready: {what}")
                }
                News::Still { lasted, checks } => tracing::warn!(
                    reason = %crate::log_value::LogText(&why),
                    for_s = lasted.as_secs(),
                    checks,
                    "still not ready: {what} (the same cause; said again once a minute \
                     while it lasts)"
                ),
                News::Nothing => {}
            }
        }
    }
}

/// Runs the checks: what failed, with its details for the log.
async fn check(gate: &Gate) -> Result<(), (NotReady, String)> {
    // A thread of its own, not tokio's blocking pool, whose first thread failing to start (a
    // process limit reached) is a panic: the start's check then panicked, and "ready" was
    // never said. One of those started with the server (`own_thread::stand_by`), and a ping
    // stuck on a hung file system is "unreadable" after `CHECK_WITHIN`, with no other run
    // until it returns.
    let store = gate.store.clone();
    let pinged = gate
        .readiness
        .ping
        .check(
            "gitgate-ping",
            "read it",
            crate::own_thread::CHECK_WITHIN,
            move || store.ping().map_err(|e| e.to_string()),
        )
        .await;
    if let Err(why) = pinged {
        return Err(("token store unreadable", why));
    }
    if let Err(why) = gate.upstream.ready().await {
        return Err(("git backend unreachable", why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(what: NotReady, why: &str) -> (NotReady, String) {
        (what, why.to_string())
    }

    #[test]
    fn an_outage_is_said_when_it_starts_then_once_a_minute() {
        let t0 = Instant::now();
        let mut outage = None;
        let refused = || cause("git backend unreachable", "connection refused");
        assert_eq!(failed(&mut outage, refused(), t0), News::Failing);
        for s in 1..60 {
            let at = t0 + Duration::from_secs(s);
            assert_eq!(failed(&mut outage, refused(), at), News::Nothing, "{s}");
        }
        assert_eq!(
            failed(&mut outage, refused(), t0 + Duration::from_secs(60)),
            News::Still {
                lasted: Duration::from_secs(60),
                checks: 60
            }
        );
        let at = t0 + Duration::from_secs(61);
        assert_eq!(failed(&mut outage, refused(), at), News::Nothing);
        assert_eq!(
            failed(&mut outage, refused(), t0 + Duration::from_secs(125)),
            News::Still {
                lasted: Duration::from_secs(125),
                checks: 2
            }
        );
    }

    #[test]
    fn a_new_cause_is_said_at_once_and_the_outage_keeps_its_start() {
        let t0 = Instant::now();
        let mut outage = None;
        let refused = cause("git backend unreachable", "connection refused");
        let timeout = cause("git backend unreachable", "no answer within 5s");
        let store = cause("token store unreadable", "disk I/O error");
        assert_eq!(failed(&mut outage, refused, t0), News::Failing);
        let at = t0 + Duration::from_secs(2);
        assert_eq!(failed(&mut outage, timeout.clone(), at), News::Failing);
        let at = t0 + Duration::from_secs(3);
        assert_eq!(failed(&mut outage, timeout, at), News::Nothing);
        let at = t0 + Duration::from_secs(4);
        assert_eq!(failed(&mut outage, store.clone(), at), News::Failing);
        assert_eq!(
            failed(&mut outage, store, t0 + Duration::from_secs(64)),
            News::Still {
                lasted: Duration::from_secs(64),
                checks: 1
            }
        );
    }

    /// A check's outcome answers the probes that follow it within [`REMEMBER_FOR`], failed
    /// or not; then the next probe checks again.
    #[test]
    fn a_checks_outcome_answers_the_probes_of_the_next_moment() {
        let t0 = Instant::now();
        let failed: Result<(), NotReady> = Err("git backend unreachable");
        assert_eq!(remembered(None, t0), None);
        assert_eq!(remembered(Some((t0, Ok(()))), t0), Some(Ok(())));
        assert_eq!(
            remembered(Some((t0, failed)), t0 + REMEMBER_FOR / 2),
            Some(failed)
        );
        let just_before = t0 + REMEMBER_FOR - Duration::from_millis(1);
        assert_eq!(remembered(Some((t0, Ok(()))), just_before), Some(Ok(())));
        assert_eq!(remembered(Some((t0, Ok(()))), t0 + REMEMBER_FOR), None);
        assert_eq!(remembered(Some((t0, failed)), t0 + 2 * REMEMBER_FOR), None);
    }
}
