//! `GET /healthz` and `GET /readyz`, for load balancers and orchestrators.
//!
//! The server answers them before the gate sees the request: they need no token and are never
//! forwarded, because a probe must not depend on (or leak anything about) repositories. Neither
//! path can be a git request anyway — a repository needs `<project>/<repo>` and a git suffix.
//!
//! - liveness (`/healthz`): the process answers HTTP; nothing else is checked, so an outage of
//!   the store or the upstream does not get gitgate restarted for nothing;
//! - readiness (`/readyz`): the token store can be read and the upstream can be reached, i.e.
//!   a git request now would not fail for a reason of gitgate's own. `503` with the reason if not.
//!   A success is remembered for `READY_FOR`: the check opens a connection to the upstream,
//!   and a flood of unauthenticated probes must not become a flood of connections there. A
//!   failure is not remembered, so recovery shows on the next probe.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::{Method, Response, StatusCode};

use crate::gate::{text, Gate, ResponseBody};

/// How long a successful readiness check answers for the probes that follow it.
const READY_FOR: Duration = Duration::from_secs(1);

/// When readiness was last checked successfully (one per gate, that is per worker).
#[derive(Default)]
pub struct Readiness(Mutex<Option<Instant>>);

impl Readiness {
    fn fresh(&self) -> bool {
        let last = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        last.is_some_and(|at| at.elapsed() < READY_FOR)
    }

    fn confirmed(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// The answer to a probe, or `None` if the request is not one.
pub async fn probe(gate: &Gate, method: &Method, path: &str) -> Option<Response<ResponseBody>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path {
        "/healthz" => Some(text(StatusCode::OK, "ok")),
        "/readyz" => Some(match ready(gate).await {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(why) => {
                tracing::warn!(reason = %why, "not ready");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}"),
                )
            }
        }),
        _ => None,
    }
}

async fn ready(gate: &Gate) -> Result<(), String> {
    if gate.readiness.fresh() {
        return Ok(());
    }
    check(gate).await?;
    gate.readiness.confirmed();
    Ok(())
}

async fn check(gate: &Gate) -> Result<(), String> {
    let store = gate.store.clone();
    tokio::task::spawn_blocking(move || store.ping())
        .await
        .map_err(|e| format!("store check failed: {e}"))?
        .map_err(|e| format!("token store unreadable: {e}"))?;
    gate.upstream.ready().await
}
