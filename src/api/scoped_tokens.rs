//! `rest/access-tokens/1.0/projects/{key}[/{id}[/rotate]]` and
//! `rest/access-tokens/1.0/projects/{key}/repos/{slug}[/{id}[/rotate]]`: project and repository
//! tokens, for administrators only (see [`crate::lifecycle`]).
//!
//! `repos` cannot be mistaken for a token id: ids are exactly 12 characters; so
//! `projects/{key}/repos` alone is a path without its repository, and said to be one.

use super::{tokens, ApiError, ApiResult, Call};
use crate::lifecycle::{self, Subject};
use crate::policy::Target;

/// Route the path segments after `projects/`. Who asks comes first: every path here is an
/// administrator's, so a non-administrator's `403` is not preceded by a `400` about the key
/// or a `404` about the path's shape, telling them how to ask for what they may not have.
pub fn route(call: &Call, segments: &[&str]) -> ApiResult {
    if call.method == hyper::Method::PUT {
        lifecycle::may_create_scoped(&call.caller)?;
    } else {
        lifecycle::may_manage_scoped(&call.caller)?;
    }
    match segments {
        [key] => tokens::collection(call, &project(key)?),
        [key, "repos", slug] => tokens::collection(call, &repo(key, slug)?),
        [key, "repos", slug, id] => tokens::item(call, &repo(key, slug)?, id),
        [key, "repos", slug, id, "rotate"] => tokens::rotate(call, &repo(key, slug)?, id),
        // The repository left out: not a token whose id is `repos` (a `PUT` would otherwise
        // be told to use the methods of a token, and a `GET` that no such token exists).
        [_, "repos"] => Err(ApiError::not_found(
            "no such resource: a repository's tokens are under projects/{key}/repos/{slug}, \
             which names the repository",
        )),
        [key, id] => tokens::item(call, &project(key)?, id),
        [key, id, "rotate"] => tokens::rotate(call, &project(key)?, id),
        _ => Err(ApiError::not_found(
            "no such resource: use projects/{key}[/{id}] or projects/{key}/repos/{slug}[/{id}]",
        )),
    }
}

fn project(key: &str) -> Result<Subject, ApiError> {
    match Target::parse(key) {
        Ok(t @ Target::Project(_)) => Ok(Subject::Scoped(t)),
        _ => Err(ApiError::bad_request(format!(
            "'{key}' is not a project key"
        ))),
    }
}

fn repo(key: &str, slug: &str) -> Result<Subject, ApiError> {
    match Target::parse(&format!("{key}/{slug}")) {
        Ok(t @ Target::Repo(_)) if !slug.is_empty() => Ok(Subject::Scoped(t)),
        _ => Err(ApiError::bad_request(format!(
            "'{key}/{slug}' is not a repository"
        ))),
    }
}
