//! `rest/access-tokens/1.0/admin/policy` (`GET` for everyone, `PUT` for administrators): the
//! global expiry policy, `{"expiryRequired": bool, "maxExpiryDays": n|null}`.
//!
//! `rest/access-tokens/1.0/admin/tokens` (`GET`, administrators): every active token of every
//! kind, paged; `?compliant=false` keeps only those that do not meet the policy, so that an
//! admin can find them and revoke them after tightening it.

use serde_json::{json, Value};

use super::tokens::{page_json, window};
use super::{method_not_allowed, ApiError, ApiResult, Call, Reply};
use crate::lifecycle::{self, ExpiryPolicy, PolicyChange};

/// Route the path segments after `admin/`.
pub fn route(call: &Call, segments: &[&str]) -> ApiResult {
    match segments {
        ["policy"] => policy(call),
        ["tokens"] => all_tokens(call),
        _ => Err(ApiError::not_found(
            "no such resource: use admin/policy or admin/tokens",
        )),
    }
}

fn policy_json(p: &ExpiryPolicy) -> Value {
    json!({ "expiryRequired": p.expiry_required, "maxExpiryDays": p.max_expiry_days })
}

fn policy(call: &Call) -> ApiResult {
    match call.method.as_str() {
        "GET" => Ok(Reply::ok(policy_json(&lifecycle::policy(call.store)?))),
        "PUT" => {
            // Who asks before what they ask, as for admin/tokens: a non-administrator's bad
            // body is still a `403`.
            lifecycle::may_set_policy(&call.caller)?;
            let body = call.json_object(&["expiryRequired", "maxExpiryDays"])?;
            let expiry_required = match body.get("expiryRequired") {
                None => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "\"expiryRequired\" must be true or false",
                    ))
                }
            };
            let max_expiry_days = match body.get("maxExpiryDays") {
                None => None,
                Some(Value::Null) => Some(None),
                Some(v) => Some(Some(
                    super::tokens::whole(v)
                        .map(super::tokens::saturated)
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                "\"maxExpiryDays\" must be a whole number of days or null",
                            )
                        })?,
                )),
            };
            // Parts left out keep their value as it is when the change is written.
            let new = PolicyChange {
                expiry_required,
                max_expiry_days,
            };
            let (set, _) = lifecycle::set_policy(call.store, &call.caller, new, &call.actor)?;
            Ok(Reply::ok(policy_json(&set)))
        }
        _ => Err(method_not_allowed(call.method, "GET, HEAD or PUT")),
    }
}

fn all_tokens(call: &Call) -> ApiResult {
    if call.method.as_str() != "GET" {
        return Err(method_not_allowed(call.method, "GET or HEAD"));
    }
    // Who asks before what they ask: a non-administrator's bad or repeated `compliant` or
    // `limit` is still a `403`.
    lifecycle::may_list_all(&call.caller)?;
    let only = match call.query_param("compliant")?.as_deref() {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "\"compliant\" must be true or false, not '{v}'"
            )))
        }
    };
    let (start, limit) = window(call)?;
    let policy = lifecycle::policy(call.store)?;
    // Unfiltered: every token not revoked. Filtered by compliance: only the active ones, as an
    // expired token breaks no policy (see `ExpiryPolicy::breaches`). One page read, not the
    // tokens before it: with a million, reading them all held a blocking thread for seconds
    // and the whole table in memory.
    let page = lifecycle::all_page(
        call.store,
        &call.caller,
        only.map(|want| (want, &policy)),
        start,
        limit,
    )?;
    Ok(Reply::ok(page_json(call.store, page, limit, &policy)))
}
