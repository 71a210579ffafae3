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

use hyper::{Method, Response, StatusCode};

use crate::gate::{text, Gate, ResponseBody};

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
    let store = gate.store.clone();
    tokio::task::spawn_blocking(move || store.ping())
        .await
        .map_err(|e| format!("store check failed: {e}"))?
        .map_err(|e| format!("token store unreadable: {e}"))?;
    gate.upstream.ready().await
}
