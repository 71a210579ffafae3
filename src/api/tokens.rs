//! The five operations every token collection has — create (`PUT`), list (`GET`), show (`GET
//! .../{id}`), update (`POST .../{id}`), revoke (`DELETE .../{id}`) — plus rotate, and the JSON
//! a token is shown as. Personal and scoped collections differ only in their [`Subject`], so
//! they share this code and cannot drift apart.
//!
//! Revoked tokens are left out of lists and are "not found" when shown, as in Bitbucket, where
//! revoking deletes; changing one is a conflict (409). Secrets appear only in the answers to
//! create and rotate.

use serde_json::{json, Map, Value};

use super::{method_not_allowed, ApiError, ApiResult, Call, Reply};
use crate::lifecycle::{self, CreateRequest, EditRequest, ExpiryPolicy, Subject};
use crate::policy::Target;
use crate::store::{Store, TokenPage, TokenRecord};

/// Page size when the client gives none, and the most it may ask for.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

/// `PUT` creates, `GET` lists.
pub fn collection(call: &Call, subject: &Subject) -> ApiResult {
    match call.method.as_str() {
        "GET" => {
            let policy = lifecycle::policy(call.store)?;
            lifecycle::may_list(call.store, &call.caller, subject)?;
            let (start, limit) = window(call)?;
            let page = lifecycle::list_page(call.store, &call.caller, subject, start, limit)?;
            Ok(Reply::ok(page_json(call.store, page, limit, &policy)))
        }
        "PUT" => {
            // Who asks before what they ask: one who may not create here is told so, not what
            // is wrong with the target or the body.
            lifecycle::may_create(call.store, &call.caller, subject)?;
            if let Subject::Scoped(target) = subject {
                target
                    .served_under(call.git_prefix)
                    .map_err(ApiError::bad_request)?;
            }
            let body =
                call.json_object(&["name", "permissions", "expiryDays", "allowedNetworks"])?;
            let name = string(&body, "name")?
                .ok_or_else(|| ApiError::bad_request("\"name\" is required"))?;
            let permissions = strings(&body, "permissions")?.ok_or_else(|| {
                ApiError::bad_request("\"permissions\" is required, e.g. [\"REPO_READ\"]")
            })?;
            let req = CreateRequest {
                subject: subject.clone(),
                name,
                permissions,
                expiry_days: days(&body, "expiryDays")?,
                allowed_networks: strings(&body, "allowedNetworks")?.unwrap_or_default(),
            };
            // Read before the write: once the token exists, its answer must not fail on a read.
            let policy = lifecycle::policy(call.store)?;
            let (token, secret) = lifecycle::create(call.store, &call.caller, req, &call.actor)?;
            let mut value = token_json(call.store, &token, &policy);
            value["token"] = json!(secret.expose());
            Ok(Reply::ok(value))
        }
        _ => Err(method_not_allowed(call.method, "GET, HEAD or PUT")),
    }
}

/// What an update may send: the fields it changes, and — so that a script can GET a token,
/// change it and POST it back — the ones a GET shows that never change, which are ignored.
/// (`expiryDate` is both: sent back unchanged it is fine, changed it is refused.)
const EDIT_FIELDS: [&str; 14] = [
    "name",
    "permissions",
    "allowedNetworks",
    "expiryDays",
    "expiryDate",
    "id",
    "createdDate",
    "compliant",
    "lastAuthenticated",
    "lastAuthenticatedFrom",
    "rotatedDate",
    "user",
    "project",
    "repository",
];

/// The fields of an update that say which token it is and whose: sent back as a GET shows
/// them they are ignored like the other fields that never change, but a different value is an
/// attempt to move the token (or a script posting one token's fields to another's address),
/// and answering `200` to it would say it was done.
const IDENTITY_FIELDS: [&str; 4] = ["id", "user", "project", "repository"];

/// Why an update's identity fields (see [`IDENTITY_FIELDS`]) are not the token's as `shown`
/// by a GET, if they are not. A field left out, or `null`, changes nothing; one sent must be
/// what the GET shows, in whole or in part: every key it has, the GET has with the same value
/// (user names in any case, as everywhere). So a key the GET does not show (`user.id` of
/// someone else, `project.name`) is a change too, not something to ignore.
fn identity_changed(sent: &serde_json::Map<String, Value>, shown: &Value) -> Option<String> {
    for field in IDENTITY_FIELDS {
        let Some(sent) = sent.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(shown) = shown.get(field) else {
            return Some(format!(
                "this token has no \"{field}\"; a token's owner and scope never change once it \
                 is created: create a new token instead"
            ));
        };
        if let Some((path, differs)) = first_difference(field, sent, shown) {
            return Some(format!(
                "\"{path}\" {differs}: a token's id, owner and scope never change once it is \
                 created (send them back as a GET shows them or leave them out; create a new \
                 token instead, or check that this update is for the token at this address)"
            ));
        }
    }
    None
}

/// What a GET shows under the identity fields that is the state of their owner, not who it
/// is: a body fetched before the owner was disabled (or enabled) is still this token's.
const STATE_NOT_IDENTITY: [&str; 1] = ["user.active"];

/// The first place (a dotted path below `at`) where `sent` is not a part of `shown`, and how.
fn first_difference(at: &str, sent: &Value, shown: &Value) -> Option<(String, String)> {
    match (sent, shown) {
        (Value::Object(sent), Value::Object(shown)) => sent.iter().find_map(|(key, value)| {
            let path = format!("{at}.{key}");
            if STATE_NOT_IDENTITY.contains(&path.as_str()) {
                return None;
            }
            match shown.get(key) {
                Some(shown) => first_difference(&path, value, shown),
                None => Some((
                    path,
                    format!("is not a field of this token, sent as {value}"),
                )),
            }
        }),
        (Value::String(a), Value::String(b))
            if at.starts_with("user.") && a.eq_ignore_ascii_case(b) =>
        {
            None
        }
        _ if sent == shown => None,
        (_, Value::Object(_)) => Some((
            at.to_string(),
            format!("must be an object as a GET of the token shows it, not {sent}"),
        )),
        _ => Some((at.to_string(), format!("is {shown}, not {sent}"))),
    }
}

/// A revoked token, to the REST API: gone, as Bitbucket deletes it.
fn revoked(token: &TokenRecord) -> ApiError {
    ApiError::not_found(format!(
        "token '{}' ({}) has been revoked",
        token.name, token.id
    ))
}

/// `GET` shows, `POST` updates, `DELETE` revokes.
pub fn item(call: &Call, subject: &Subject, id: &str) -> ApiResult {
    match call.method.as_str() {
        "GET" => {
            let token = lifecycle::get(call.store, &call.caller, Some(subject), id)?;
            if token.revoked_at.is_some() {
                return Err(revoked(&token));
            }
            Ok(Reply::ok(token_json(
                call.store,
                &token,
                &lifecycle::policy(call.store)?,
            )))
        }
        "POST" => {
            // Who asks before what they ask: another's token is a 403 (or, through the caller's
            // own collection, the 404 a GET gives), whatever the body holds.
            let token = lifecycle::get(call.store, &call.caller, Some(subject), id)?;
            let body = call.json_object(&EDIT_FIELDS)?;
            if IDENTITY_FIELDS.iter().any(|f| body.contains_key(*f)) {
                let shown = token_json(call.store, &token, &lifecycle::policy(call.store)?);
                if let Some(why) = identity_changed(&body, &shown) {
                    return Err(ApiError::bad_request(why));
                }
            }
            let expiry_days = match body.get("expiryDays") {
                None | Some(Value::Null) => None,
                // Any value is an attempt to change the expiry; the lifecycle refuses it.
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|d| u32::try_from(d).ok())
                        .unwrap_or(u32::MAX),
                ),
            };
            let expiry_date = match body.get("expiryDate") {
                None => None,
                Some(Value::Null) => Some(None),
                Some(v) => Some(Some(v.as_i64().ok_or_else(|| {
                    ApiError::bad_request("\"expiryDate\" must be epoch milliseconds")
                })?)),
            };
            let req = EditRequest {
                name: string(&body, "name")?,
                permissions: strings(&body, "permissions")?,
                allowed_networks: strings(&body, "allowedNetworks")?,
                expiry_days,
                expiry_date,
            };
            // Read before the write, as for a creation: once the token is changed, its answer
            // must not fail on a read (a 503 for an edit that was saved).
            let policy = lifecycle::policy(call.store)?;
            let token = lifecycle::edit(
                call.store,
                &call.caller,
                Some(subject),
                id,
                req,
                &call.actor,
            )?;
            Ok(Reply::ok(token_json(call.store, &token, &policy)))
        }
        "DELETE" => {
            // Who asks before what they ask, as for an update.
            let token = lifecycle::get(call.store, &call.caller, Some(subject), id)?;
            // No body is taken: a field (`{"dryRun": true}`) is refused, not revoked past.
            call.json_object(&[])?;
            // Revoked already: not found, as a GET says and as Bitbucket, where revoking
            // deletes, answers a repeated DELETE — not a conflict a retrying script fails on.
            if token.revoked_at.is_some() {
                return Err(revoked(&token));
            }
            match lifecycle::revoke(call.store, &call.caller, Some(subject), id, &call.actor) {
                Ok(_) => Ok(Reply::no_content()),
                // Revoked by another caller in between.
                Err(lifecycle::Error::Conflict(_)) => Err(revoked(&token)),
                // The store refused the write (a full disk, a store made read-only): the caller
                // revoking a leaked token must not take the 5xx for "probably done".
                Err(e @ lifecycle::Error::Store(_)) => {
                    let mut e = ApiError::from(e);
                    e.message = format!(
                        "token '{}' ({}) is NOT revoked and still works: {} — revoke it again \
                         once the store takes writes",
                        token.name, token.id, e.message
                    );
                    Err(e)
                }
                Err(e) => Err(e.into()),
            }
        }
        _ => Err(method_not_allowed(call.method, "GET, HEAD, POST or DELETE")),
    }
}

/// `POST .../{id}/rotate` with an optional `{"overlapSeconds": n}`.
pub fn rotate(call: &Call, subject: &Subject, id: &str) -> ApiResult {
    if call.method.as_str() != "POST" {
        return Err(method_not_allowed(call.method, "POST"));
    }
    // Who asks before what they ask: a token the caller may not rotate is refused whatever the
    // overlap asked for.
    lifecycle::may_rotate(call.store, &call.caller, Some(subject), id)?;
    let body = call.json_object(&["overlapSeconds"])?;
    let overlap = match body.get("overlapSeconds") {
        None | Some(Value::Null) => 0,
        // One too large for any rule is refused by the rule itself, with its limit said.
        Some(v) => whole(v).map(saturated).ok_or_else(|| {
            ApiError::bad_request("\"overlapSeconds\" must be a whole number of seconds, 0 or more")
        })?,
    };
    // Read before the write: once the old secret is replaced, the answer must not fail on a read.
    let policy = lifecycle::policy(call.store)?;
    // An answer that never reaches the client cannot be told apart from one that did; the
    // client rotates again (the CLI, which can tell, puts the old secret back).
    let (token, secret, _replaced) = lifecycle::rotate(
        call.store,
        &call.caller,
        Some(subject),
        id,
        overlap,
        &call.actor,
    )?;
    let mut value = token_json(call.store, &token, &policy);
    value["token"] = json!(secret.expose());
    Ok(Reply::ok(value))
}

/// A token as Bitbucket shows it (never the secret or its hash), plus gitgate's extensions:
/// `lastAuthenticatedFrom` (the address of the last use), `allowedNetworks`, `rotatedDate` and
/// `compliant` (whether it meets the expiry policy).
pub fn token_json(store: &Store, t: &TokenRecord, policy: &ExpiryPolicy) -> Value {
    let mut v = json!({
        "id": t.id,
        "name": t.name,
        "createdDate": t.created_at,
        "permissions": t.permissions.names(),
        "allowedNetworks": t.network_names(),
        "compliant": policy.compliant(t),
    });
    if let Some(at) = t.expires_at {
        v["expiryDate"] = json!(at);
    }
    if let Some(at) = t.last_used_at {
        v["lastAuthenticated"] = json!(at);
    }
    if let Some(addr) = &t.last_used_addr {
        v["lastAuthenticatedFrom"] = json!(addr);
    }
    if let Some(at) = t.rotated_at {
        v["rotatedDate"] = json!(at);
    }
    match (&t.owner, &t.scope) {
        (Some(owner), _) => {
            let user = store.user(owner).ok().flatten();
            v["user"] = json!({
                "name": owner,
                "slug": owner,
                "displayName": owner,
                "id": user.as_ref().map(|u| u.id),
                "active": user.as_ref().is_some_and(|u| u.active),
                "type": "NORMAL",
            });
        }
        (None, Some(Target::Project(key))) => v["project"] = json!({ "key": key }),
        (None, Some(Target::Repo(repo))) => {
            // Everything after the project: a nested repository (`team/tools/app`) shows as
            // `tools/app`, never as a `team/app` it is not.
            let slug = repo
                .as_str()
                .split_once('/')
                .map_or(repo.as_str(), |(_, rest)| rest);
            v["repository"] = json!({ "slug": slug, "project": { "key": repo.project() } });
        }
        (None, None) => {}
    }
    v
}

/// The page a call asks for: `start` (0) and `limit` (25, at most 1000), or why not.
pub fn window(call: &Call) -> Result<(usize, usize), ApiError> {
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match call.query_param(name)?.as_deref() {
            None | Some("") => Ok(default),
            // All digits but beyond usize: a number too large to page to, capped like any large
            // one (a `start` past the end gives an empty last page).
            Some(v) if v.bytes().all(|b| b.is_ascii_digit()) && v.parse::<usize>().is_err() => {
                Ok(usize::MAX)
            }
            // Digits only: Rust's parser would also take `+5`, which no other value's check
            // here allows.
            Some(v) => v
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| v.parse().ok())
                .flatten()
                .ok_or_else(|| {
                    ApiError::bad_request(format!("\"{name}\" must be a whole number, not '{v}'"))
                }),
        }
    };
    let start = number("start", 0)?;
    // As Bitbucket: a larger page than the server gives is capped, not refused (the answer's
    // `limit` says what was used).
    let limit = number("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT);
    if limit == 0 {
        return Err(ApiError::bad_request("\"limit\" must be at least 1"));
    }
    Ok((start, limit))
}

/// A page of tokens in Bitbucket's shape: `values` from `start` (where the listing ends when
/// asked past it: a number beyond 2^53 is no number to a JSON reader), `limit` as used,
/// `isLastPage`, and `nextPageStart` when more follow.
pub fn page_json(store: &Store, page: TokenPage, limit: usize, policy: &ExpiryPolicy) -> Value {
    let values: Vec<Value> = page
        .tokens
        .iter()
        .map(|t| token_json(store, t, policy))
        .collect();
    let mut out = json!({
        "size": values.len(),
        "limit": limit,
        "start": page.start,
        "isLastPage": page.next.is_none(),
        "values": values,
    });
    if let Some(next) = page.next {
        out["nextPageStart"] = json!(next);
    }
    out
}

/// An optional string field.
pub fn string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("\"{key}\" must be a string"))),
    }
}

/// An optional array of strings.
pub fn strings(body: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || ApiError::bad_request(format!("\"{key}\" must be an array of strings"));
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// An optional whole number of days.
fn days(body: &Map<String, Value>, key: &str) -> Result<Option<u32>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => whole(v).map(saturated).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "\"{key}\" must be a whole number of days, 1 or more"
            ))
        }),
    }
}

/// A whole number, 0 or more, also when a client sends it as `30.0` (Python's `90 / 3`), as
/// Bitbucket's parser takes it.
pub fn whole(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
            .map(|f| f as u64)
    })
}

/// A whole number from a body, at most `u32::MAX`: every rule it meets has a limit far below,
/// which then refuses it in its own words ("at most 36500 days") rather than as no number.
pub fn saturated(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_may_send_a_tokens_identity_back_but_not_change_it() {
        let repository = json!({
            "id": "abcdefghijkl",
            "name": "deploy",
            "repository": {"slug": "tools/app", "project": {"key": "team"}},
        });
        let personal = json!({
            "id": "abcdefghijkl",
            "user": {"name": "alice", "slug": "alice", "id": 1, "active": true},
        });
        let check = |sent: Value, shown: &Value| identity_changed(sent.as_object().unwrap(), shown);
        // As shown, in part, or null, user names in any case: nothing changes.
        for (same, shown) in [
            (json!({"name": "x"}), &repository),
            (repository.clone(), &repository),
            (
                json!({"id": "abcdefghijkl", "repository": {"slug": "tools/app"}}),
                &repository,
            ),
            (
                json!({"repository": {"project": {"key": "team"}}, "user": null}),
                &repository,
            ),
            (json!({"project": null, "repository": {}}), &repository),
            (personal.clone(), &personal),
            (json!({"user": {"name": "Alice", "id": 1}}), &personal),
            // Fetched before the owner was disabled.
            (
                json!({"user": {"name": "alice", "active": false}}),
                &personal,
            ),
        ] {
            assert_eq!(check(same.clone(), shown), None, "{same}");
        }
        for (moved, shown, said) in [
            (
                json!({"id": "bbbbbbbbbbbb"}),
                &repository,
                "\"id\" is \"abcdefghijkl\", not \"bbbbbbbbbbbb\"",
            ),
            (
                json!({"repository": {"slug": "other"}}),
                &repository,
                "\"repository.slug\" is \"tools/app\", not \"other\"",
            ),
            (
                json!({"repository": {"project": {"key": "other"}}}),
                &repository,
                "\"repository.project.key\" is \"team\"",
            ),
            (
                json!({"repository": {"slug": "tools/app", "project": "other"}}),
                &repository,
                "\"repository.project\" must be an object",
            ),
            (
                json!({"repository": "team/app"}),
                &repository,
                "must be an object",
            ),
            (
                json!({"project": {"key": "team"}}),
                &repository,
                "this token has no \"project\"",
            ),
            (
                json!({"repository": {"project": {"name": "Other"}}}),
                &repository,
                "\"repository.project.name\" is not a field of this token",
            ),
            (
                json!({"user": {"id": 2}}),
                &personal,
                "\"user.id\" is 1, not 2",
            ),
            (
                json!({"user": {"name": "bob"}}),
                &personal,
                "\"user.name\" is \"alice\"",
            ),
            (
                json!({"user": {"name": "bob"}}),
                &repository,
                "this token has no \"user\"",
            ),
        ] {
            let why = check(moved.clone(), shown).unwrap_or_else(|| panic!("{moved} accepted"));
            assert!(why.contains(said), "{moved}: {why}");
        }
    }

    #[test]
    fn a_nested_repository_token_shows_its_whole_path() {
        use crate::store::test_support::{actor, repository_token, temp_store};
        let (_d, store) = temp_store();
        let scope = Target::parse("team/tools/app").unwrap();
        let t = store
            .insert_token(
                &repository_token("abcdefghijkl", "deploy", &scope),
                &actor(),
            )
            .unwrap();
        let v = token_json(&store, &t, &ExpiryPolicy::default());
        assert_eq!(
            v["repository"],
            json!({"slug": "tools/app", "project": {"key": "team"}})
        );
    }

    #[test]
    fn body_fields() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"name":"x","permissions":["REPO_READ"],"bad":[1],"days":3,"neg":-1}"#,
        )
        .unwrap();
        assert_eq!(string(&body, "name").unwrap().as_deref(), Some("x"));
        assert_eq!(string(&body, "missing").unwrap(), None);
        assert!(string(&body, "permissions").is_err());
        assert_eq!(
            strings(&body, "permissions").unwrap().unwrap(),
            ["REPO_READ"]
        );
        assert!(strings(&body, "bad").is_err());
        assert_eq!(days(&body, "days").unwrap(), Some(3));
        assert!(days(&body, "neg").is_err());
    }

    /// A personal token shows whether its owner is active: once the owner is disabled the
    /// token opens nothing, and `user.active` says so.
    #[test]
    fn a_disabled_owners_token_shows_the_owner_inactive() {
        use crate::store::test_support::{actor, personal_token, temp_store};
        let (_d, store) = temp_store();
        store
            .add_user("alice", "h", crate::store::Role::User, &actor())
            .unwrap();
        let t = store
            .insert_token(&personal_token("abcdefghijkl", "laptop", "alice"), &actor())
            .unwrap();
        let active = |store: &Store| {
            token_json(store, &t, &ExpiryPolicy::default())["user"]["active"].clone()
        };
        assert_eq!(active(&store), json!(true));
        store.set_user_active("alice", false, &actor()).unwrap();
        assert_eq!(active(&store), json!(false));
    }

    /// A whole number sent as a float (`30.0`, as Python's `90 / 3` writes it) is that number,
    /// zero included (`"overlapSeconds": 0.0` is no overlap); a fraction or a negative is none.
    #[test]
    fn whole_numbers_may_come_as_floats_from_zero_up() {
        assert_eq!(whole(&json!(0.0)), Some(0));
        assert_eq!(whole(&json!(30.0)), Some(30));
        assert_eq!(whole(&json!(0)), Some(0));
        assert_eq!(whole(&json!(1.5)), None);
        assert_eq!(whole(&json!(-1.0)), None);
        assert_eq!(whole(&json!("3")), None);
    }

    /// Only user names match in any case: a repository slug or project key sent back in other
    /// capitals names another repository or project, and is refused as a move.
    #[test]
    fn only_user_names_match_in_any_case() {
        let shown = json!({
            "id": "abcdefghijkl",
            "repository": {"slug": "tools/app", "project": {"key": "team"}},
        });
        for moved in [
            json!({"repository": {"slug": "Tools/App"}}),
            json!({"repository": {"project": {"key": "TEAM"}}}),
            json!({"id": "ABCDEFGHIJKL"}),
        ] {
            assert!(
                identity_changed(moved.as_object().unwrap(), &shown).is_some(),
                "{moved} accepted"
            );
        }
    }
}
