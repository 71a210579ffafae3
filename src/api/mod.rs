//! The management REST API, served by `gitgate serve` under `/rest/` and shaped like Bitbucket
//! Data Center's `rest/access-tokens/1.0` so that scripts written for Bitbucket keep working.
//!
//! Why it looks the way it does:
//! - **Routed before git classification, never forwarded**: the gate hands every `/rest/` path
//!   here first, so no management request can reach the git backend, and no git path can be
//!   mistaken for a management one.
//! - **HTTP Basic with the user's password only**: tokens cannot manage tokens (a stolen token
//!   must not be able to mint a longer-lived one). A token given as the password, or a Bearer
//!   token, is a 401 that says so. Every failure is an audit event.
//! - **No changes from web pages** (`browser`): a body must be JSON by its `Content-Type`,
//!   and a change must not come from a page of another site (`Origin`, `Sec-Fetch-Site`),
//!   since a browser would send a password it was once given for the API with another site's
//!   form; nor a read but a link followed (each would cost the user a password check and a
//!   token of their rate-limit bucket).
//! - **Small JSON, fully read, then synchronous work**: request bodies are capped at
//!   [`MAX_BODY`] and collected with `Limited`; then password verification (argon2, deliberately
//!   slow) runs in `spawn_blocking`, off the async workers that stream git traffic; then the
//!   call takes a token from its user's rate-limit bucket (the one their git requests use, as
//!   in Bitbucket; asked only after the password, so nobody can empty another's bucket); then
//!   the store calls run in `spawn_blocking` too, [`STORE_WORK_AT_ONCE`] calls at a time over
//!   the process (a call waits up to 10 s for its turn, outside the blocking pool, then is a
//!   `503`), so that slow calls never take the blocking threads git's token reads need.
//! - **All rules live in [`crate::lifecycle`]**: this module parses paths and JSON, calls the
//!   lifecycle, and renders its answers and errors. Errors have Bitbucket's shape,
//!   `{"errors":[{"context":null,"message":"...","exceptionName":"..."}]}`, with the status
//!   chosen in one place ([`ApiError::from`]).
//! - **Who asks before what they ask**: each handler asks the lifecycle whether the caller may
//!   act (`may_create`, `may_rotate`, `may_set_policy`, `may_list`, `may_list_all`, or `get` for
//!   one token, whose "not found" hides another's) before it reads the body or the query or
//!   judges the target; the lifecycle asks again as it acts. A caller who may do nothing there
//!   is not told how to put their request right, and a bad body never masks a `403`.
//!
//! Files: `users_tokens` (`users/{user}/...`), `scoped_tokens` (`projects/{key}/...` and
//! `projects/{key}/repos/{slug}/...`), `tokens` (the five operations both share, and the token
//! JSON), `policy` (`admin/policy`, `admin/tokens`).

pub mod body; // public for the fuzz target `api_body`
mod browser;
mod policy;
mod scoped_tokens;
mod tokens;
mod users_tokens;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use crate::clock;
use crate::credentials::{self, CredentialError, Credentials};
use crate::gate::ResponseBody;
use crate::guard::{Guard, Verdict};
use crate::lifecycle::{self, Caller};
use crate::request_id::RequestId;
use crate::store::{Actor, Store, StoreError};

/// Where the token API lives.
const BASE: &str = "/rest/access-tokens/1.0/";

/// Bitbucket serves every REST API under `latest` too, and its published OpenAPI and many
/// scripts use that spelling.
const LATEST: &str = "/rest/access-tokens/latest/";

/// What follows [`BASE`] or [`LATEST`] in `path`.
fn under_base(path: &str) -> Option<&str> {
    path.strip_prefix(BASE)
        .or_else(|| path.strip_prefix(LATEST))
}
/// The largest request body accepted: token requests are a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Whether the gate should hand this path to the API instead of classifying it as git.
pub fn is_api_path(path: &str) -> bool {
    path.strip_prefix('/')
        .is_some_and(|p| is_api_segment(p.split('/').next().unwrap_or(p)))
}

/// Whether a path's first segment, decoded, is the REST API's (`rest`): with `git_prefix =
/// "/"`, [`crate::git::classify`] refuses a repository there, so that `/%72est/app.git` is
/// not the repository `rest/app` that no grant may name.
pub fn is_api_segment(segment: &str) -> bool {
    segment == "rest"
}

/// An error answer: status, message, and Bitbucket's exception name.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub exception: &'static str,
    /// For a 405: the methods the resource takes, sent as `Allow` (RFC 9110, section 15.5.6).
    pub allow: Option<String>,
    /// For a 429: the seconds to send as `Retry-After` (a 503 always says 1).
    pub retry_after_secs: Option<u64>,
    /// A store failure's details, for the operator's log (with the call's request id), not for
    /// the caller.
    pub store_failure: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        // Every name is a class of Bitbucket Data Center's public Java API (its javadoc, 9.x):
        // clients that switch on `exceptionName` see the ones Bitbucket itself sends. A status
        // without a specific class there (405, 429, 5xx) gets their common base class.
        let exception = match status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                "com.atlassian.bitbucket.validation.ArgumentValidationException"
            }
            StatusCode::UNAUTHORIZED => {
                "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"
            }
            StatusCode::FORBIDDEN => "com.atlassian.bitbucket.AuthorisationException",
            StatusCode::NOT_FOUND => "com.atlassian.bitbucket.NoSuchEntityException",
            StatusCode::CONFLICT => "com.atlassian.bitbucket.IllegalEntityStateException",
            _ => "com.atlassian.bitbucket.ServiceException",
        };
        ApiError {
            status,
            message: message.into(),
            exception,
            allow: None,
            retry_after_secs: None,
            store_failure: None,
        }
    }

    /// The caller's bucket is empty (see [`crate::guard::Guard::check_api_call`]).
    fn rate_limited(verdict: &Verdict) -> ApiError {
        ApiError {
            retry_after_secs: Some(verdict.retry_after_secs()),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, verdict.message())
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// The answer's JSON. The message never repeats a token secret, nor its random part alone:
    /// it quotes what the caller sent (a field, a permission, a header, a token id in the path),
    /// where a secret pasted by mistake would otherwise come back into a CI log or a proxy's
    /// capture.
    fn body(&self) -> Value {
        json!({"errors": [{
            "context": null,
            "message": crate::credentials::without_secrets_in_an_answer(&self.message),
            "exceptionName": self.exception,
        }]})
    }
}

/// The one place where lifecycle refusals become statuses.
impl From<lifecycle::Error> for ApiError {
    fn from(e: lifecycle::Error) -> Self {
        use lifecycle::Error as E;
        let status = match &e {
            E::Invalid(_) => StatusCode::BAD_REQUEST,
            E::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            E::Forbidden(_) => StatusCode::FORBIDDEN,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Store(StoreError::Busy) | E::Store(StoreError::Open { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // A stored value changed by hand (the expiry policy): the store answers, and the
            // caller is told what to set again.
            E::Store(StoreError::Unreadable(_)) => StatusCode::CONFLICT,
            E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match &e {
            E::Store(StoreError::Busy) | E::Store(StoreError::Unreadable(_)) => {
                ApiError::new(status, e.to_string())
            }
            // The details (the store's path among them) are for the operator, not the caller,
            // who may not even have authenticated yet.
            E::Store(err) => ApiError {
                store_failure: Some(err.to_string()),
                ..ApiError::new(
                    status,
                    "the token store is not available; the reason is in gitgate's log",
                )
            },
            _ => ApiError::new(status, e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        lifecycle::Error::from(e).into()
    }
}

/// A successful answer: a status and an optional JSON body (`204` has none).
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Value>,
}

impl Reply {
    pub fn ok(body: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Some(body),
        }
    }

    pub fn no_content() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
        }
    }
}

pub type ApiResult = Result<Reply, ApiError>;

/// One authenticated call, as the resource handlers see it.
pub struct Call<'a> {
    pub store: &'a Store,
    pub caller: Caller,
    pub actor: Actor,
    pub method: &'a Method,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    /// The server's `[server] git_prefix`: where a new project or repository token is served.
    pub git_prefix: &'a str,
}

impl Call<'_> {
    /// The body as a JSON object with no field but the `known` ones; an empty body is an empty
    /// object. Any other field is a 400 naming it: a misspelt `expiry_days`, ignored, would
    /// make a token that never expires, and a misspelt policy field a `200` that changed nothing.
    pub fn json_object(&self, known: &[&str]) -> Result<Map<String, Value>, ApiError> {
        let map = self.any_json_object()?;
        match map.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(map),
            Some(unknown) if known.is_empty() => Err(ApiError::bad_request(format!(
                "unknown field {}: this call takes no body",
                Value::from(unknown.as_str())
            ))),
            Some(unknown) => Err(ApiError::bad_request(format!(
                "unknown field {}: this call takes {}",
                Value::from(unknown.as_str()),
                known
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn any_json_object(&self) -> Result<Map<String, Value>, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match body::parse(self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(ApiError::bad_request(
                "the request body must be a JSON object",
            )),
            // A repeated field (see `body`).
            Err(e) if e.is_data() => Err(ApiError::bad_request(format!(
                "the request body is refused: {e}"
            ))),
            Err(e) => Err(ApiError::bad_request(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }

    /// A query parameter, its name and value percent-decoded as a URL library writes them
    /// (`comp%6Ciant=false` is `compliant=false`: a filter read as an unknown name would list
    /// everything without a word). Given twice, or not text once decoded, it is a 400: which
    /// of two filters meant is not for gitgate to guess.
    pub fn query_param(&self, name: &str) -> Result<Option<String>, ApiError> {
        query_param(self.query, name)
    }
}

/// [`Call::query_param`], of the query `query`.
fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let decode = |raw: &str| {
        crate::git::percent_decode(raw.as_bytes())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "the query holds a malformed %-escape or one that is not UTF-8: '{raw}'"
                ))
            })
    };
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // A name that does not decode is none of the API's: ignored, as unknown ones are.
        if decode(key).ok().as_deref() != Some(name) {
            continue;
        }
        if found.is_some() {
            return Err(ApiError::bad_request(format!(
                "\"{name}\" is given twice in the query; give it once"
            )));
        }
        found = Some(decode(value)?);
    }
    Ok(found)
}

/// Why a request's body could not be read as it was meant, if it could not: a transfer coding
/// besides `chunked` (`gzip, chunked`: hyper removes the chunking only, `501` as on the git
/// path) or a content coding besides `identity` (a gzipped body would be refused as "not valid
/// JSON", or one that is JSON all the same taken as sent, while it says it is something else).
fn unreadable_body(headers: &hyper::HeaderMap) -> Option<ApiError> {
    use crate::upstream::headers::{codings, unsupported_transfer_coding};
    if let Some(message) = unsupported_transfer_coding(headers) {
        // The git path's advice (compress with Content-Encoding) is refused here too.
        let message = match message.split_once(" (send compressed") {
            Some((said, _)) => format!("{said}; send the JSON plain, uncompressed"),
            None => message,
        };
        return Some(ApiError::new(StatusCode::NOT_IMPLEMENTED, message));
    }
    let coded = codings(headers, hyper::header::CONTENT_ENCODING);
    if coded.iter().all(|c| c.eq_ignore_ascii_case("identity")) {
        return None;
    }
    Some(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "the request body must be plain JSON, without a Content-Encoding (it came as {})",
            coded.join(", ")
        ),
    ))
}

/// The answer for a method a resource does not support.
/// `allowed` in words ("GET or PUT"); the `Allow` header lists the same methods.
pub fn method_not_allowed(method: &Method, allowed: &str) -> ApiError {
    ApiError {
        allow: Some(allowed.replace(" or ", ", ")),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not supported here; use {allowed}"),
        )
    }
}

/// Serve one API request; never fails (every error is an answer).
///
/// Before anything is read or hashed, a request must name credentials; its body must then arrive
/// within `body_deadline`; and password checks (argon2: deliberately slow, ~19 MiB each) run at
/// most [`password_checks`] at a time, more get `503` + `Retry-After` at once. Anonymous clients
/// can therefore neither hold a connection open with a trickling body nor pile up hashes. Once
/// the password is checked, the call takes a token from its user's bucket (`429` +
/// `Retry-After` when it is empty), and only then does its work.
pub async fn handle(
    store: Store,
    guard: &Guard,
    realm: &str,
    body_deadline: Duration,
    git_prefix: String,
    req: Request<Incoming>,
    source: crate::request_id::RequestSource,
) -> Response<ResponseBody> {
    let (remote, id) = (source.client, source.id);
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);

    // A request refused for its form (a token secret in its path, an unreadable body) or as a
    // web page's, before any password: its reason is said in the log as the git URLs say
    // theirs (once a minute per address and reason, see `request_log::malformed_said`), else
    // the request line's `status=400` or `403` is all the operator has.
    let for_its_form = |status: StatusCode, message: String| {
        crate::request_log::malformed_said(id, remote, status.as_u16(), &message);
        ApiError::new(status, message)
    };
    let read = async {
        if credentials::holds_a_token(&path) {
            return Err(for_its_form(
                StatusCode::BAD_REQUEST,
                "the path holds what looks like a token secret; a token is named by its id \
                 (the 12 characters after ggt_), and its secret never goes in a URL"
                    .to_string(),
            ));
        }
        if under_base(&path).is_none() {
            return Err(ApiError::not_found(format!(
                "no REST resource at {path}; the token API is under {BASE} (or {LATEST})"
            )));
        }
        if let Some(refusal) = unreadable_body(&parts.headers) {
            return Err(for_its_form(refusal.status, refusal.message));
        }
        // Before the password is checked: a change a web page could have made, or a read by
        // a page of another site (see `browser`).
        // A body known to have bytes is judged now, before it is read; one of unknown length
        // (chunked, or HTTP/2 without a Content-Length) once read, when it may prove empty —
        // an empty body needs no type.
        if let Some((status, message)) = browser::refusal(
            &parts.method,
            &parts.uri,
            &parts.headers,
            hyper::body::Body::size_hint(&body).lower() > 0,
        ) {
            return Err(for_its_form(status, message));
        }
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Err(credentials_required());
        }
        match tokio::time::timeout(body_deadline, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => {
                let bytes = collected.to_bytes();
                if !bytes.is_empty() {
                    if let Some((status, message)) =
                        browser::refusal(&parts.method, &parts.uri, &parts.headers, true)
                    {
                        return Err(for_its_form(status, message));
                    }
                }
                Ok(Ok(bytes))
            }
            Ok(Err(e)) => Ok(Err(e)),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s",
                    body_deadline.as_secs()
                ),
            )),
        }
    };
    // For the log line: who the call was made as (once the password was checked), and the
    // bytes of its body.
    let mut user: Option<String> = None;
    let mut bytes_in = 0;
    let outcome = match read.await {
        Err(e) => Err(e),
        Ok(Err(e)) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            Err(if too_big {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {MAX_BODY} bytes"),
                )
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            })
        }
        Ok(Ok(collected)) => match PASSWORD_CHECKS.clone().try_acquire_owned() {
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many password checks in progress; try again in a second",
            )),
            Ok(permit) => {
                let body = collected;
                bytes_in = body.len();
                let headers = parts.headers;
                let path = path.clone();
                let checking = store.clone();
                // HEAD is GET without the body (hyper sends the head only).
                let routed = if method == Method::HEAD {
                    Method::GET
                } else {
                    method.clone()
                };
                login_then_work(
                    &STORE_WORK,
                    &STORE_TURNS,
                    STORE_WORK_WAIT,
                    // First the password, within the permit...
                    move || {
                        let _permit = permit;
                        login(&checking, &path, &headers, remote, id)
                    },
                    // ...then the caller's bucket...
                    |login: &Login| {
                        user = Some(login.user().to_string());
                        let who = login.user().to_string();
                        async move {
                            guard
                                .check_api_call(&who, clock::monotonic_ms())
                                .await
                                .map_err(|verdict| {
                                    verdict.say(id);
                                    ApiError::rate_limited(&verdict)
                                })
                        }
                    },
                    // ...then the work.
                    move |login| {
                        dispatch(&store, login, &routed, query.as_deref(), &body, &git_prefix)
                    },
                )
                .await
            }
        },
    };

    let (status, body, allow, retry_after_secs) = match outcome {
        Ok(reply) => (reply.status, reply.body, None, None),
        Err(e) => {
            if let Some(failure) = &e.store_failure {
                tracing::error!(
                    request_id = %id,
                    error = %crate::log_value::LogText(failure),
                    "token store failed during a REST call"
                );
            }
            (e.status, Some(e.body()), e.allow, e.retry_after_secs)
        }
    };
    let bytes = match &body {
        Some(v) => Bytes::from(v.to_string()),
        None => Bytes::new(),
    };
    crate::metrics::METRICS.api_request(status.as_u16());
    tracing::info!(
        target: "gitgate::request",
        request_id = %id,
        method = %crate::request_log::LogMethod(&method),
        path = %crate::request_log::loggable_path(&path),
        remote = %remote.ip(),
        api = true,
        // `-` before the password is checked, as a git request line writes it.
        user = %crate::log_value::LogValue(user.as_deref().unwrap_or("-")),
        status = status.as_u16(),
        bytes_in,
        bytes_out = bytes.len(),
        // A number, as a git request line's (see `gate::RequestLog`).
        duration_ms = started.elapsed().as_micros() as f64 / 1000.0,
        "request"
    );
    let mut resp = Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if body.is_some() {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
    }
    // Answers may carry a secret (create, rotate): never cache any of them.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // An answer quotes what callers wrote (a token's name, a path): a browser must take it for
    // the JSON it says it is, never sniff a `<script>` in it into a page of the API's origin.
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if status == StatusCode::UNAUTHORIZED {
        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
            headers.insert(WWW_AUTHENTICATE, v);
        }
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Some(secs) = retry_after_secs {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(v) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.insert(ALLOW, v);
    }
    resp
}

/// How many API requests may check a password at once, over the process
/// ([`password_checks_for`] this machine's cores).
pub fn password_checks() -> usize {
    password_checks_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Two per core, and at most half of a worker's blocking threads
/// ([`crate::blocking_pool::THREADS`]). Each argon2 check takes about 19 MiB and a core for
/// tens of milliseconds; without a cap, a burst of anonymous logins would run one per
/// connection before the address throttle had counted any of them. The checks run on the
/// blocking threads of the worker their connection landed on, and a burst's connections can
/// all land on one worker: past half of its threads they would leave too few for that
/// worker's token reads on a cache miss (with four cores and more, two per core was all 8).
pub fn password_checks_for(cores: usize) -> usize {
    (2 * cores.max(1)).min(crate::blocking_pool::THREADS / 2)
}

static PASSWORD_CHECKS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(password_checks())));

/// The REST calls' store work on a blocking thread (a login, which records a failed password,
/// and the call's own work), counted from the login's spawn, queued or running, to the work's
/// end, the wait for the caller's bucket between them included ([`login_then_work`]): what a
/// call changes is not cut short by the process's end. A call cut at the stop (its connection
/// closed at the grace's end, or by a second signal) leaves its work running on; the stop does
/// not wait for the runtime's blocking threads (they may hold a lookup of the upstream's name
/// that nobody awaits, see `server`), so it waits for these ([`wait_for_store_work`]) before
/// the store's last flush.
static STORE_WORK: StoreWorks = StoreWorks::new();

/// A count of store work in flight, and its end told ([`STORE_WORK`]; a test's own).
struct StoreWorks {
    count: Mutex<usize>,
    ended: Condvar,
}

impl StoreWorks {
    const fn new() -> StoreWorks {
        StoreWorks {
            count: Mutex::new(0),
            ended: Condvar::new(),
        }
    }

    fn begin(&'static self) -> StoreWork {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        StoreWork(self)
    }

    /// How many are in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        *self.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait (blocking) until none is in flight.
    fn wait(&self) {
        let count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        drop(
            self.ended
                .wait_while(count, |n| *n > 0)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

/// One piece of store work in flight (see [`StoreWorks`]); ends when dropped, with the blocking
/// task's closure or the call's future that holds it (run to its end, or dropped unrun at a
/// runtime's shutdown).
struct StoreWork(&'static StoreWorks);

impl Drop for StoreWork {
    fn drop(&mut self) {
        *self.0.count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.ended.notify_all();
    }
}

/// Wait (blocking) until no REST call's store work is in flight: at the stop, after every
/// worker has ended, before the store's last flush. Each is bounded by its own work (a password
/// check, store writes within the store's busy timeout); a queued one is run by one of the
/// blocking threads lookups cannot take (`upstream::lookup::AT_ONCE`), or dropped unrun.
pub fn wait_for_store_work() {
    STORE_WORK.wait();
}

/// How many calls may do their store work (after the password) at once, over the process: a
/// quarter of a worker's blocking threads ([`crate::blocking_pool::THREADS`]). A call is
/// milliseconds of SQLite, but one can take seconds — a store another process holds locked is
/// waited for up to the busy timeout, a listing sorts every token of a large store — and
/// without a bound a few administrators' scripts took every blocking thread of a worker, so
/// that a git request's token read on a cache miss waited behind them all.
pub const STORE_WORK_AT_ONCE: usize = crate::blocking_pool::THREADS / 4;

/// How long a call waits for its turn at the store (outside the blocking pool) before it is
/// answered `503`: two of the store's busy timeouts.
const STORE_WORK_WAIT: Duration = Duration::from_secs(10);

/// The turns of [`STORE_WORK_AT_ONCE`] calls' store work.
static STORE_TURNS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(STORE_WORK_AT_ONCE)));

/// `work` on the blocking pool once a place among `places` is free, waited for outside the
/// pool for at most `wait` (then a `503`); the place is held until the work ends.
async fn in_turn<T: Send + 'static>(
    places: &Arc<Semaphore>,
    wait: Duration,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let Ok(Ok(turn)) = tokio::time::timeout(wait, places.clone().acquire_owned()).await else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "gitgate is busy with other management calls (it does {} at a time); try \
                 again in a moment",
                STORE_WORK_AT_ONCE
            ),
        ));
    };
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .unwrap_or_else(|e| Err(task_failed(e)))
}

/// A call's store work once its body is read: `login` (its password) on the blocking pool,
/// then `bucket` (its rate limit), then `work` in its turn among `turns` ([`in_turn`]),
/// counted in `works` as one from the login's spawn to the work's end. Never none between the
/// two: a call cut at the stop goes on in a task of its own (the gate spawns it, so that a
/// password check's failure is counted however soon its client hangs up), which on worker 0,
/// the main runtime, outlives its connection, and the stop's wait ([`wait_for_store_work`])
/// would end while it waited for its bucket, its work then run after the store's last flush
/// and cut by the process's end. The login is counted on its own too, for a call dropped
/// while its password is checked (a worker's runtime let go): its failure is still recorded.
async fn login_then_work<L, T, B>(
    works: &'static StoreWorks,
    turns: &Arc<Semaphore>,
    wait: Duration,
    login: impl FnOnce() -> Result<L, ApiError> + Send + 'static,
    bucket: impl FnOnce(&L) -> B,
    work: impl FnOnce(L) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError>
where
    L: Send + 'static,
    T: Send + 'static,
    B: std::future::Future<Output = Result<(), ApiError>>,
{
    let call = works.begin();
    let in_login = works.begin();
    let login = tokio::task::spawn_blocking(move || {
        let _in_login = in_login;
        login()
    })
    .await
    .unwrap_or_else(|e| Err(task_failed(e)))?;
    bucket(&login).await?;
    in_turn(turns, wait, move || {
        let _call = call;
        work(login)
    })
    .await
}

fn credentials_required() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "authentication required: use HTTP Basic with your user name and password",
    )
}

/// A call whose path is under [`BASE`] and whose caller has proved their password.
struct Login {
    path: String,
    segments: Vec<String>,
    caller: Caller,
    actor: Actor,
}

impl Login {
    /// The user whose bucket the call draws from.
    fn user(&self) -> &str {
        match &self.caller {
            Caller::User { slug, .. } => slug,
            // `authenticate` makes only users (the operator is the CLI, which never comes here).
            Caller::Operator => &self.actor.name,
        }
    }
}

/// The path, then the password. Runs on a blocking thread (argon2).
fn login(
    store: &Store,
    path: &str,
    headers: &HeaderMap,
    remote: SocketAddr,
    id: RequestId,
) -> Result<Login, ApiError> {
    let Some(rest) = under_base(path) else {
        return Err(ApiError::not_found(format!("no REST resource at {path}")));
    };
    let segments = path_segments(rest)?;
    let (caller, actor) = authenticate(store, headers, remote, id)?;
    Ok(Login {
        path: path.to_owned(),
        segments,
        caller,
        actor,
    })
}

/// Route an authenticated call by path. Runs on a blocking thread.
fn dispatch(
    store: &Store,
    login: Login,
    method: &Method,
    query: Option<&str>,
    body: &[u8],
    git_prefix: &str,
) -> ApiResult {
    let segments: Vec<&str> = login.segments.iter().map(String::as_str).collect();
    let call = Call {
        store,
        caller: login.caller,
        actor: login.actor,
        method,
        query,
        body,
        git_prefix,
    };
    // A trailing or doubled `/`: one answer for every resource, not a guess at what was meant
    // (`projects/team/` would otherwise be the item with id "").
    if segments.contains(&"") {
        return Err(ApiError::not_found(format!(
            "no REST resource at {}: a segment of the path is empty (a trailing or doubled /)",
            login.path
        )));
    }
    match segments.as_slice() {
        ["users", rest @ ..] => users_tokens::route(&call, rest),
        ["projects", rest @ ..] => scoped_tokens::route(&call, rest),
        ["admin", rest @ ..] => policy::route(&call, rest),
        _ => Err(ApiError::not_found(format!(
            "no REST resource at {}",
            login.path
        ))),
    }
}

/// A blocking task that panicked or was cancelled. Its error is not repeated: a panic's is its
/// message (`task 41 panicked with message "byte index 12 is not a char boundary; it is inside
/// ... of `...`"`), which quotes whatever the code was handling — a row of the store, another
/// user's token name, the call's own headers — and which the panic hook has logged already
/// (`unwind::install_hook`), as the answer to a panic of the git side says nothing of it either.
fn task_failed(e: tokio::task::JoinError) -> ApiError {
    let what = if e.is_panic() {
        "gitgate hit an internal error"
    } else {
        "gitgate is stopping"
    };
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the request failed: {what}; the reason is in gitgate's log"),
    )
}

/// The path's segments, each percent-decoded once (`users/al%69ce` is `users/alice`). An escape
/// that is malformed, decodes to something other than UTF-8, or hides a `/` is refused rather
/// than guessed at.
fn path_segments(rest: &str) -> Result<Vec<String>, ApiError> {
    rest.split('/')
        .map(|raw| {
            let decoded = crate::git::percent_decode(raw.as_bytes())
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("invalid percent-encoding in the path: {raw}"))
                })?;
            if decoded.contains('/') {
                // A nested repository's slug (`tools%2Fapp`): the REST paths take one segment.
                return Err(ApiError::bad_request(format!(
                    "'{raw}' encodes a '/', which no user name, project key or repository slug \
                     in these paths holds (the tokens of a nested repository, such as \
                     team/tools/app, are managed from the command line: gitgate token list, \
                     token revoke ID)"
                )));
            }
            Ok(decoded)
        })
        .collect()
}

/// HTTP Basic with a user's password, and nothing else.
/// The audit rows of the call (its failure, or the changes it makes) name the request `id`.
fn authenticate(
    store: &Store,
    headers: &HeaderMap,
    remote: SocketAddr,
    id: RequestId,
) -> Result<(Caller, Actor), ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let source = remote.ip().to_string();
    // A refusal with no password to check: batched by the store's writer, repeats folded, as
    // git's failures are. Such a call is no guess, so the address throttle never stops it;
    // written on its own, each one was a commit that emptied every worker's token cache (every
    // git request after it read the store), for any client sending `Bearer x` in a loop.
    let audit = |name: &str, reason: &str| {
        store.record_request_event_later(
            (name, &source),
            "auth.failed",
            name,
            &format!("REST API: {reason}"),
            Some(id),
        );
    };
    match credentials::from_headers(headers) {
        Err(CredentialError::Missing) => Err(credentials_required()),
        Err(CredentialError::NoPassword) => {
            audit("anonymous", "empty password");
            Err(unauthorized(
                "the password is empty: the REST API takes your gitgate user name and password \
                 (not a token)",
            ))
        }
        Err(CredentialError::Malformed(
            credentials::TOKEN_AS_USER | credentials::TOKEN_AS_USER_WITHOUT_PASSWORD,
        )) => {
            audit("anonymous", "a token as the user name");
            Err(unauthorized(
                "the user name is a gitgate token: the REST API takes your gitgate user name and \
                 password (not a token)",
            ))
        }
        // Git's words for these would tell the caller to send a token, which the API never
        // takes.
        Err(CredentialError::Malformed(credentials::TOKEN_WITHOUT_SCHEME)) => {
            audit("anonymous", "a token without a scheme");
            Err(unauthorized(
                "unusable Authorization header: it holds a gitgate token, and the REST API takes \
                 your gitgate user name and password with HTTP Basic (not a token)",
            ))
        }
        Err(e @ CredentialError::Malformed(credentials::UNKNOWN_SCHEME)) => {
            audit("anonymous", &e.to_string());
            Err(unauthorized(
                "unusable Authorization header: the scheme is not Basic; the REST API takes your \
                 gitgate user name and password with HTTP Basic",
            ))
        }
        Err(e) => {
            audit("anonymous", &e.to_string());
            Err(unauthorized(&e.to_string()))
        }
        Ok(Credentials::Bearer { .. }) => {
            audit("anonymous", "access token used to manage tokens");
            Err(unauthorized(
                "access tokens cannot be used to manage tokens or users: authenticate with your password",
            ))
        }
        // No user name (`curl -u :PASSWORD`, a script's unset variable): said as such, as an
        // empty password is, rather than as a name with "capitals or characters user names do
        // not have", and no password is hashed for nobody. A token given so is still told that
        // tokens cannot manage tokens (below).
        Ok(Credentials::Basic { user, secret })
            if user.is_empty() && crate::token::parse(secret.expose()).is_none() =>
        {
            audit("anonymous", "empty user name");
            Err(unauthorized(
                "the user name is empty: the REST API takes your gitgate user name and password \
                 (not a token)",
            ))
        }
        // A token as the password: refused by name, never checked (tokens do not manage
        // tokens), so no guess either; `lifecycle::login` says the same to the command line,
        // where its event is written at once.
        Ok(Credentials::Basic { user, secret })
            if crate::token::parse(secret.expose()).is_some() =>
        {
            audit(
                &lifecycle::name_written_down(store, &user),
                "access token used as a management password",
            );
            Err(unauthorized(
                "access tokens cannot be used to manage tokens or users: authenticate with your password",
            ))
        }
        Ok(Credentials::Basic { user, secret }) => {
            // Never a password typed as the user name (see `store::as_written_down`).
            let actor = Actor {
                name: lifecycle::name_written_down(store, &user),
                source: source.clone(),
                logged_in_as_admin: None,
                request: Some(id),
            };
            let caller = lifecycle::login(store, &user, secret.expose(), &actor)?;
            // Logged in, the name is the account's, however it was typed (`ROOT` is root): the
            // changes this call makes are audited under it.
            let actor = match &caller {
                Caller::User { slug, admin } => Actor {
                    name: slug.clone(),
                    source,
                    logged_in_as_admin: Some(*admin),
                    request: Some(id),
                },
                Caller::Operator => actor,
            };
            Ok((caller, actor))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stop's wait for the REST calls' store work ends with the last of it, not before:
    /// the workers' runtimes are let go without waiting for their blocking threads, and this
    /// wait is what keeps a call's writes from being cut by the process's end.
    #[test]
    fn the_stop_waits_for_a_calls_store_work_in_flight() {
        static WORKS: StoreWorks = StoreWorks::new();
        let in_flight = WORKS.begin();
        let (waited, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            WORKS.wait();
            let _ = waited.send(());
        });
        assert!(
            ended.recv_timeout(Duration::from_millis(300)).is_err(),
            "the wait ended with a call's store work still in flight"
        );
        drop(in_flight);
        assert!(ended.recv_timeout(Duration::from_secs(10)).is_ok());
    }

    /// A call's store work is counted from its login's start to its work's end as one, the
    /// wait for its bucket between them included: a call cut at the stop goes on in a task of
    /// its own (on worker 0, the main runtime, past its connection's end), and the stop's wait
    /// must not end there, letting the call's work run after the store's last flush, cut by
    /// the process's end. Before, the login and the work were counted each on its own, and
    /// between them none was. The count ends with the work, and with a call refused by its
    /// bucket.
    #[test]
    fn a_calls_store_work_is_counted_from_its_login_to_its_works_end() {
        static WORKS: StoreWorks = StoreWorks::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let turns = Arc::new(Semaphore::new(STORE_WORK_AT_ONCE));
        runtime.block_on(async {
            for refused in [false, true] {
                let (in_bucket, bucket_reached) = tokio::sync::oneshot::channel::<()>();
                let (let_through, through) = tokio::sync::oneshot::channel::<()>();
                let turns = turns.clone();
                let call = tokio::spawn(async move {
                    login_then_work(
                        &WORKS,
                        &turns,
                        Duration::from_secs(10),
                        || Ok("alice"),
                        move |_: &&str| async move {
                            let _ = in_bucket.send(());
                            let _ = through.await;
                            if refused {
                                Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "no"))
                            } else {
                                Ok(())
                            }
                        },
                        |who| Ok(who.len()),
                    )
                    .await
                });
                bucket_reached.await.unwrap();
                assert_eq!(
                    WORKS.in_flight(),
                    1,
                    "nothing counted between a call's login and its work"
                );
                let_through.send(()).unwrap();
                let answer = call.await.unwrap();
                assert_eq!(
                    answer.is_err(),
                    refused,
                    "{:?}",
                    answer.map_err(|e| e.status)
                );
                assert_eq!(WORKS.in_flight(), 0, "counted past the call's end");
            }
        });
    }

    /// A REST call whose work panicked is a `500` that says so, and no more: the panic's message
    /// (here a slice's, quoting the text it cut, as a real one would a store row or a header)
    /// was answered to the caller in full.
    #[tokio::test]
    async fn a_panic_in_a_call_is_answered_without_its_message() {
        let quoted = "another user's token name, or the call's own Authorization header";
        let panicked = tokio::task::spawn_blocking(move || {
            let cut = std::hint::black_box(1);
            format!("é{quoted}")[..cut].len()
        })
        .await
        .unwrap_err();
        let e = task_failed(panicked);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        let answered = e.body().to_string();
        assert!(!answered.contains(quoted), "{answered}");
        assert!(!answered.contains("char boundary"), "{answered}");
        assert!(answered.contains("internal error"), "{answered}");
        assert!(answered.contains("gitgate's log"), "{answered}");
    }

    #[test]
    fn a_store_failure_tells_the_caller_no_path_and_no_detail() {
        let unavailable = ApiError::from(lifecycle::Error::Store(StoreError::Open {
            path: "/srv/secret-place/gitgate.db".into(),
            message: "the store file is unavailable: No such file or directory".into(),
        }));
        assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
        let broken = ApiError::from(lifecycle::Error::Store(StoreError::Sqlite(
            rusqlite::Error::InvalidQuery,
        )));
        assert_eq!(broken.status, StatusCode::INTERNAL_SERVER_ERROR);
        for e in [&unavailable, &broken] {
            assert!(!e.message.contains("secret-place"), "{}", e.message);
            assert!(!e.message.contains("Query"), "{}", e.message);
            assert!(e.message.contains("gitgate's log"), "{}", e.message);
        }
        // An account disabled during its own call: refused, in words, not a store failure.
        let refused = ApiError::from(StoreError::Refused(
            "the account 'root' was disabled while this call was under way: nothing was changed"
                .into(),
        ));
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(
            refused.message.contains("'root' was disabled"),
            "{}",
            refused.message
        );
        let busy = ApiError::from(lifecycle::Error::Store(StoreError::Busy));
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(busy.message.contains("try again"), "{}", busy.message);
    }

    #[test]
    fn query_parameters_are_decoded_and_given_once() {
        let get = |q: &str, name: &str| query_param(Some(q), name).map_err(|e| e.message);
        assert_eq!(
            get("comp%6Ciant=false", "compliant"),
            Ok(Some("false".into()))
        );
        assert_eq!(get("start=1&limit=%32%35", "limit"), Ok(Some("25".into())));
        assert_eq!(get("start=1&&x", "limit"), Ok(None));
        assert_eq!(get("limit", "limit"), Ok(Some(String::new())));
        assert_eq!(get("%zz=1&limit=5", "limit"), Ok(Some("5".into())));
        assert_eq!(query_param(None, "limit").map_err(|e| e.message), Ok(None));
        for (q, name, said) in [
            ("compliant=false&compliant=true", "compliant", "given twice"),
            ("limit=1&lim%69t=2", "limit", "given twice"),
            ("limit=%2", "limit", "malformed"),
            ("limit=%ff", "limit", "not UTF-8"),
        ] {
            let e = get(q, name).unwrap_err();
            assert!(e.contains(said), "{q}: {e}");
        }
    }

    #[test]
    fn path_segments_are_decoded_once() {
        assert_eq!(
            path_segments("users/al%69ce/123/rotate").unwrap(),
            ["users", "alice", "123", "rotate"]
        );
        assert_eq!(path_segments("users/%2569").unwrap(), ["users", "%69"]);
        assert_eq!(path_segments("users/").unwrap(), ["users", ""]);
        for bad in ["users/al%2fice", "users/%zz", "users/%", "users/%ff"] {
            let e = path_segments(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn api_paths() {
        assert!(is_api_path("/rest/access-tokens/1.0/users/alice"));
        assert!(is_api_path("/rest"));
        assert!(!is_api_path("/restaurant/app.git/info/refs"));
        assert!(!is_api_path("/team/rest/info/refs"));
    }

    #[test]
    fn exception_names_are_bitbucket_classes() {
        // Checked against Bitbucket Data Center's javadoc (com.atlassian.bitbucket, .auth and
        // .validation packages); a new status must name a class that exists there too.
        let cases = [
            (
                400,
                "com.atlassian.bitbucket.validation.ArgumentValidationException",
            ),
            (
                413,
                "com.atlassian.bitbucket.validation.ArgumentValidationException",
            ),
            (
                401,
                "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException",
            ),
            (403, "com.atlassian.bitbucket.AuthorisationException"),
            (404, "com.atlassian.bitbucket.NoSuchEntityException"),
            (405, "com.atlassian.bitbucket.ServiceException"),
            (409, "com.atlassian.bitbucket.IllegalEntityStateException"),
            (429, "com.atlassian.bitbucket.ServiceException"),
            (500, "com.atlassian.bitbucket.ServiceException"),
            (503, "com.atlassian.bitbucket.ServiceException"),
        ];
        for (status, name) in cases {
            let e = ApiError::new(StatusCode::from_u16(status).unwrap(), "m");
            assert_eq!(e.exception, name, "status {status}");
        }
    }

    #[test]
    fn error_shape() {
        let e = ApiError::from(lifecycle::Error::Conflict("already revoked".into()));
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(
            e.body(),
            json!({"errors":[{"context":null,"message":"already revoked",
                "exceptionName":"com.atlassian.bitbucket.IllegalEntityStateException"}]})
        );
        assert_eq!(
            ApiError::from(lifecycle::Error::Invalid("x".into())).status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::from(lifecycle::Error::Unauthenticated("x".into())).status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ApiError::from(lifecycle::Error::Forbidden("x".into())).status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::from(lifecycle::Error::NotFound("x".into())).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(lifecycle::Error::Unavailable("x".into())).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// A call refused before any password is checked (a token offered, no user name) is no
    /// guess, never stopped by the address throttle: its audit event is batched, repeats
    /// folded into one row, as git's are — not a commit of its own per call, which emptied
    /// every worker's token cache.
    #[test]
    fn refusals_that_check_no_password_are_batched_and_folded() {
        use crate::store::test_support::temp_store;
        let (_d, store) = temp_store();
        let secret = crate::token::generate().unwrap().secret;
        let token_as_password = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("alice:{}", secret.expose())
            )
        );
        let remote: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        for value in ["Bearer junk", &token_as_password] {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            for _ in 0..3 {
                assert!(authenticate(&store, &headers, remote, RequestId::next()).is_err());
            }
        }
        let failures = |store: &Store| {
            store
                .audit_events(None, 100)
                .unwrap()
                .into_iter()
                .filter(|e| e.action == "auth.failed")
                .map(|e| e.count)
                .collect::<Vec<_>>()
        };
        assert!(store.flush_pending_writes());
        assert_eq!(failures(&store), vec![3, 3]);
    }

    /// A caller's changes are made as what they logged in as: an administrator demoted while
    /// their call is under way (after the password check) changes nothing, rather than
    /// letting an administrator's change in a moment late.
    #[test]
    fn an_administrator_demoted_during_a_call_changes_nothing() {
        use crate::store::test_support::{actor, temp_store};
        use crate::store::Role;
        let (_d, store) = temp_store();
        let hash = crate::password::hash("pw").unwrap();
        store
            .add_user("root", &hash, Role::Admin, &actor())
            .unwrap();
        let mut headers = HeaderMap::new();
        // root:pw
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic cm9vdDpwdw=="),
        );
        let remote: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let (caller, as_root) = authenticate(&store, &headers, remote, RequestId::next()).unwrap();
        assert_eq!(as_root.logged_in_as_admin, Some(true));
        store.set_user_role("root", Role::User, &actor()).unwrap();
        let strict = lifecycle::ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: Some(30),
        };
        let e = lifecycle::set_policy(&store, &caller, strict.into(), &as_root).unwrap_err();
        assert_eq!(ApiError::from(e).status, StatusCode::FORBIDDEN);
        assert_eq!(
            lifecycle::policy(&store).unwrap(),
            lifecycle::ExpiryPolicy::default()
        );
    }

    /// A GET of `path` (under the API's base) with `query`, as `who` (an administrator when
    /// `admin`), through the routing every call takes; the answer's JSON and the token rows
    /// it read from the store.
    fn listed(store: &Store, who: &str, admin: bool, path: &str, query: &str) -> (Value, u64) {
        let login = Login {
            path: format!("{BASE}{path}"),
            segments: path.split('/').map(str::to_string).collect(),
            caller: Caller::User {
                slug: who.into(),
                admin,
            },
            actor: crate::store::test_support::actor(),
        };
        let before = crate::store::rows_read::count();
        let reply = dispatch(store, login, &Method::GET, Some(query), b"", "/")
            .unwrap_or_else(|e| panic!("{path}?{query}: {}", e.message));
        let read = crate::store::rows_read::count() - before;
        (reply.body.unwrap(), read)
    }

    /// `n` repository tokens of `scope` written straight into the store (one transaction),
    /// each a millisecond older than the one before, every `revoked_every`th revoked.
    fn many_tokens(
        dir: &tempfile::TempDir,
        scope: &str,
        prefix: char,
        n: usize,
        revoked_every: usize,
    ) {
        let mut c = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        let tx = c.transaction().unwrap();
        for i in 0..n {
            let revoked = (revoked_every > 0 && i % revoked_every == 0).then_some(1i64);
            tx.execute(
                "INSERT INTO tokens (id, kind, name, scope, permissions, secret_hash, created_at, \
                 created_by, revoked_at) VALUES (?1, 'repository', ?2, ?3, 'REPO_READ', \
                 zeroblob(32), ?4, 'test', ?5)",
                rusqlite::params![
                    format!("{prefix}{i:011}"),
                    format!("t{i}"),
                    scope,
                    1_700_000_000_000i64 - i as i64,
                    revoked
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn ids(page: &Value) -> Vec<String> {
        page["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The pages of a listing at their edges, for each listing (a repository's, everyone's,
    /// the policy's breaches, a user's): a page ending exactly at the end is the last one; a
    /// start at or past the end is an empty last page starting at the end; a limit over 1000
    /// is 1000; pages of any size together are the whole listing once, newest first, revoked
    /// tokens and another repository's left out.
    #[test]
    fn listings_page_at_their_edges() {
        use crate::store::test_support::{actor, personal_token, temp_store};
        use crate::store::Role;
        let (dir, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        // 50 of team/app that count (60, every sixth revoked), and 7 of team/apple.
        many_tokens(&dir, "team/app", 'a', 60, 6);
        many_tokens(&dir, "team/apple", 'b', 7, 0);
        for i in 0..12 {
            let id = format!("p{i:011}");
            store
                .insert_token(&personal_token(&id, "laptop", "alice"), &actor())
                .unwrap();
            if i % 3 == 0 {
                store.revoke_token(&id, &actor()).unwrap();
            }
        }
        let strict = lifecycle::ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: Some(30),
        };
        lifecycle::set_policy(&store, &Caller::Operator, strict.into(), &actor()).unwrap();
        for (who, admin, path, filter, total) in [
            ("root", true, "projects/team/repos/app", "", 50),
            ("root", true, "admin/tokens", "", 50 + 7 + 8),
            ("root", true, "admin/tokens", "compliant=false&", 50 + 7 + 8),
            ("alice", false, "users/alice", "", 8),
        ] {
            let get = |q: &str| {
                let (page, read) = listed(&store, who, admin, path, &format!("{filter}{q}"));
                let limit = page["limit"].as_u64().unwrap();
                assert!(read <= limit + 1, "{path}?{filter}{q}: {read} rows read");
                page
            };
            let whole = get("limit=5000");
            assert_eq!(whole["limit"], 1000, "{path}");
            assert_eq!(whole["size"], total, "{path}");
            assert_eq!(whole["isLastPage"], true);
            let every = ids(&whole);
            for size in [1, 7, total / 2, total, total + 1] {
                let (mut paged, mut start) = (Vec::new(), 0);
                loop {
                    let p = get(&format!("start={start}&limit={size}"));
                    assert_eq!(p["start"], start, "{path} by {size}");
                    assert_eq!(p["size"].as_u64().unwrap() as usize, ids(&p).len());
                    paged.extend(ids(&p));
                    if p["isLastPage"] == true {
                        assert!(p.get("nextPageStart").is_none());
                        break;
                    }
                    assert_eq!(p["size"], size, "{path}: only the last page is short");
                    start = p["nextPageStart"].as_u64().unwrap();
                }
                assert_eq!(paged, every, "{path} by {size}");
            }
            // Ending exactly at the end: the last page, nothing said to follow.
            let exact = get(&format!("start={}&limit={}", total - 5, 5));
            assert_eq!(
                (exact["size"].clone(), exact["isLastPage"].clone()),
                (json!(5), json!(true))
            );
            assert!(exact.get("nextPageStart").is_none());
            let before = get(&format!("start={}&limit={}", total - 6, 5));
            assert_eq!(before["nextPageStart"], total - 1);
            for past in [
                total.to_string(),
                (total + 1).to_string(),
                "99999999999999999999999".into(),
            ] {
                let p = get(&format!("start={past}"));
                assert_eq!(
                    (
                        p["size"].clone(),
                        p["start"].clone(),
                        p["isLastPage"].clone()
                    ),
                    (json!(0), json!(total), json!(true)),
                    "{path}?start={past}"
                );
            }
        }
        // Newest first, the same instant by id.
        let (page, _) = listed(&store, "root", true, "projects/team/repos/app", "limit=3");
        assert_eq!(ids(&page), ["a00000000001", "a00000000002", "a00000000003"]);
        // None breaks a policy that requires no expiry: an empty page at 0.
        lifecycle::set_policy(
            &store,
            &Caller::Operator,
            lifecycle::ExpiryPolicy::default().into(),
            &actor(),
        )
        .unwrap();
        let (none, _) = listed(
            &store,
            "root",
            true,
            "admin/tokens",
            "compliant=false&start=5",
        );
        assert_eq!(
            (none["size"].clone(), none["start"].clone()),
            (json!(0), json!(0))
        );
    }

    /// A listing reads one page of the store's rows (and one more), however many tokens there
    /// are and wherever the page is: before, each read all of them into memory and took its
    /// page (a repository's 3,000 tokens for a page of 25; every token up to the page's end
    /// for `admin/tokens`), which with the benchmarks' million tokens held a blocking thread
    /// for seconds and the whole table in memory for one administrator's call.
    #[test]
    fn a_listing_reads_one_page_of_rows() {
        use crate::store::test_support::temp_store;
        let (dir, store) = temp_store();
        many_tokens(&dir, "team/app", 'a', 3000, 0);
        for (path, query) in [
            ("projects/team/repos/app", "limit=25"),
            ("projects/team/repos/app", "start=2950&limit=25"),
            ("admin/tokens", "start=2950&limit=25"),
            ("admin/tokens", "compliant=true&start=2950&limit=25"),
        ] {
            let (page, read) = listed(&store, "root", true, path, query);
            assert_eq!(page["size"], 25, "{path}?{query}");
            assert!(
                read <= 26,
                "{path}?{query}: {read} rows read for a page of 25"
            );
        }
    }

    /// Password checks: two per core, but never more than half of one worker's blocking
    /// threads, where a burst's checks can all land (on 4 cores and more, two per core took all
    /// 8 of them).
    #[test]
    fn password_checks_leave_a_worker_half_its_blocking_threads() {
        assert_eq!(password_checks_for(0), 2);
        assert_eq!(password_checks_for(1), 2);
        assert_eq!(password_checks_for(2), 4);
        for cores in [3, 4, 16, 256] {
            assert_eq!(
                password_checks_for(cores),
                crate::blocking_pool::THREADS / 2
            );
        }
    }

    /// REST calls whose store work hangs (a store locked by another process, a listing of a
    /// large store: here work that waits until released) take at most
    /// [`STORE_WORK_AT_ONCE`] of a worker's blocking threads, the rest waiting outside the
    /// pool and answered `503` when their wait ends: a git request's token read on a cache miss
    /// (on the blocking pool) still runs at once. Before, each call took a thread of its own,
    /// and the read waited behind all of them.
    #[test]
    fn slow_rest_calls_leave_blocking_threads_to_token_reads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Condvar, Mutex};
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        static ANSWERED: AtomicUsize = AtomicUsize::new(0);
        static RELEASED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
        struct Release;
        impl Drop for Release {
            fn drop(&mut self) {
                *RELEASED.0.lock().unwrap() = true;
                RELEASED.1.notify_all();
            }
        }
        let runtime = crate::blocking_pool::started_for_a_test();
        let release = Release;
        let places = Arc::new(Semaphore::new(STORE_WORK_AT_ONCE));
        runtime.block_on(async {
            let calls: Vec<_> = (0..3 * crate::blocking_pool::THREADS)
                .map(|_| {
                    let places = places.clone();
                    tokio::spawn(async move {
                        let answer = in_turn(&places, Duration::from_millis(300), || {
                            STARTED.fetch_add(1, Ordering::SeqCst);
                            let (released, wake) = &RELEASED;
                            let mut released = released.lock().unwrap();
                            while !*released {
                                released = wake.wait(released).unwrap();
                            }
                            Ok(())
                        })
                        .await;
                        ANSWERED.fetch_add(1, Ordering::SeqCst);
                        answer
                    })
                })
                .collect();
            // Every call has asked for its turn (those that got one run).
            while STARTED.load(Ordering::SeqCst) < STORE_WORK_AT_ONCE {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The token read of a git request, as the gate makes it on a miss.
            let read = tokio::task::spawn_blocking(|| "the token's record");
            let read = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("a token read waited behind slow REST calls");
            assert_eq!(read.unwrap(), "the token's record");
            // Those that found no place are answered when their wait ends; the others run.
            let calls_made = 3 * crate::blocking_pool::THREADS;
            while ANSWERED.load(Ordering::SeqCst) < calls_made - STORE_WORK_AT_ONCE {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(STARTED.load(Ordering::SeqCst), STORE_WORK_AT_ONCE);
            drop(release);
            let mut busy = 0;
            for call in calls {
                match call.await.unwrap() {
                    Ok(()) => {}
                    Err(e) => {
                        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
                        assert!(
                            e.message.contains("busy with other management calls"),
                            "{}",
                            e.message
                        );
                        busy += 1;
                    }
                }
            }
            assert_eq!(busy, calls_made - STORE_WORK_AT_ONCE);
        });
    }
}
