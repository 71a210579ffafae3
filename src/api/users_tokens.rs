//! `rest/access-tokens/1.0/users/{user}[/{id}[/rotate]]`: personal tokens.
//!
//! A user manages their own tokens here; an administrator may list, show, update and revoke
//! anyone's, but creating and rotating stay with the owner (see [`crate::lifecycle`]).

use super::{tokens, ApiError, ApiResult, Call};
use crate::lifecycle::Subject;

/// Route the path segments after `users/`.
pub fn route(call: &Call, segments: &[&str]) -> ApiResult {
    // User names are lower-case: `users/Alice` is alice's, as a login as `Alice` is alice.
    let lower = segments.first().map(|user| user.to_ascii_lowercase());
    let user = lower.as_deref().unwrap_or_default();
    match segments {
        [_] if !user.is_empty() => tokens::collection(call, &Subject::Personal(user.to_string())),
        [_, id] if !id.is_empty() => tokens::item(call, &Subject::Personal(user.to_string()), id),
        [_, id, "rotate"] => tokens::rotate(call, &Subject::Personal(user.to_string()), id),
        _ => Err(ApiError::not_found(
            "no such resource: use users/{user}, users/{user}/{id} or users/{user}/{id}/rotate",
        )),
    }
}
