//! The gate: one hyper service that walks a request down the path described in the crate docs
//! (classify → credentials → store → policy → upstream) and turns every refusal into an answer
//! in one place, `Gate::refusal`.
//!
//! Order matters for safety: the request is classified before its credentials are looked at
//! (only a request of gitgate's own that came back, and a target too long to log, are refused
//! sooner), so a path that does not name exactly one repository is never forwarded, whatever
//! the credentials; and nothing is forwarded — so no 2xx can be sent — before the token has
//! been verified and authorised (git's credential helper stores whatever got a 2xx).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HOST, RETRY_AFTER,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};

use crate::body::{Observed, Seen};
use crate::clock;
use crate::credentials::{self, CredentialError, Credentials};
use crate::fields_present::FieldsPresent;
use crate::git::{self, GitRequest, Rejection};
use crate::guard::{self, Guard, Verdict};
use crate::idle::Activity;
use crate::inflight::Slot;
use crate::log_value::{LogText, LogValue};
use crate::metrics::METRICS;
use crate::permission::TokenKind;
use crate::policy::{self, AuthFailure, Deny, Identity};
use crate::push_commands::PushCommands;
use crate::request_id::{RequestId, RequestSource};
use crate::request_log::{
    kept_of_path, loggable_path, loggable_repo, malformed_said, AnswerFollowed, LogLine, LogMethod,
    LoggedBody, Unanswered, CLIENT_GONE_BEFORE_ANSWER,
};
use crate::store::{AuthRecord, CacheLookup, CacheVersion, Store, StoreError};
use crate::token;
use crate::upstream::framing::{AnswerFraming, WholeAt};
use crate::upstream::headers::client_address;
use crate::upstream::{Fault, Upstream};

/// The body of every answer: a short text, or a stream from the backend.
pub type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Last-used times are written at most this often per token (milliseconds).
pub const LAST_USE_INTERVAL_MS: i64 = 5_000;

/// What the gate needs, shared by all connections.
pub struct Gate {
    pub git_prefix: String,
    pub realm: String,
    /// The `WWW-Authenticate` value of every 401, made once from the realm
    /// ([`basic_challenge`]).
    pub challenge: Option<HeaderValue>,
    /// The fields of the 401 for a wrong token, the answer to a flood of them, made once with
    /// the challenge ([`wrong_token_fields`]).
    pub wrong_token_fields: HeaderMap,
    pub store: Store,
    pub upstream: Upstream,
    /// Failed-authentication throttling and rate limits (see [`crate::guard`]).
    /// Shared by every worker thread: limits count the whole process.
    pub guard: Arc<Guard>,
    /// Load balancers whose `X-Forwarded-For` names the client (`[server] trusted_proxies`).
    pub trusted_proxies: Vec<crate::network::Cidr>,
    /// The last readiness check's outcome (`/readyz`), reused for a second.
    pub readiness: crate::health::Readiness,
    /// How long a management API request's body may take to arrive (`header_read_timeout`).
    pub api_body_deadline: std::time::Duration,
}

/// The store failing a request's lookup: said once per cause, then once per 10 s.
static STORE_DOWN: std::sync::LazyLock<std::sync::Mutex<crate::repeats::RepeatedCause>> =
    std::sync::LazyLock::new(|| {
        std::sync::Mutex::new(crate::repeats::RepeatedCause::new(
            std::time::Duration::from_secs(10),
        ))
    });

/// Whether a store failure was said and its end not yet: read by every lookup that worked,
/// so that the end is said without a lock on the hot path.
static STORE_FAILING: AtomicBool = AtomicBool::new(false);

/// A lookup worked: if the store had been failing, say that it is over, with how many
/// requests were refused meanwhile — else an operator who saw the error never learns it ended,
/// and the next outage's first count took in this one's unsaid tail.
fn store_answered() {
    if !STORE_FAILING.load(Ordering::Relaxed) {
        return;
    }
    STORE_FAILING.store(false, Ordering::Relaxed);
    let ended = STORE_DOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .ended();
    if let Some(refused) = ended {
        tracing::warn!(
            refused,
            "token store available again: requests are checked again"
        );
    }
}

/// Why a POST with an empty body is the client's fault.
const EMPTY_POST: &str =
    "the request body was empty: git sends at least a flush-pkt (0000) with every POST";

/// The answer to a trusted proxy's `X-Forwarded-For` that names no client address.
const UNREADABLE_FORWARDED_FOR: &str =
    "the X-Forwarded-For header from the load balancer names no client address gitgate can read";

/// Every way a request can end before reaching the backend.
#[derive(Debug)]
enum Refusal {
    NotGit(Rejection),
    NoCredentials(CredentialError),
    /// The secret cannot be a token (an account password, a token cut short): what it is
    /// instead, and whether it came as a Bearer token.
    NotAToken(token::NotAToken, bool),
    /// A token the store does not have, or a secret not its own: which of the two.
    InvalidToken(AuthFailure),
    Denied(Deny),
    /// A request body framed in a way gitgate cannot pass on (501).
    Unframeable(String),
    /// A request body in a content coding git's backends do not read (415).
    UnsupportedCoding(String),
    StoreDown(StoreError),
    /// A path and query longer than [`LONGEST_TARGET`] (414).
    TooLong(String),
    /// Too many failures from the address, or too many requests from the principal (429).
    Guarded(Verdict),
    /// A request this process sent upstream came back (508): see `request_id::own_mark`.
    Loop,
    /// A request a web page of another site had a browser send (403), before its credentials
    /// were looked at: see `cross_site`.
    FromAnotherSite(String),
}

/// Facts about one request for its log line.
#[derive(Default)]
pub(crate) struct RequestLog {
    /// Shared with the request's [`GitRequest`]: not a copy.
    pub(crate) repo: Option<Arc<str>>,
    pub(crate) access: Option<&'static str>,
    pub(crate) user: Option<String>,
    pub(crate) token_id: Option<String>,
    /// Why its credentials were refused, when they were (see [`AuthFailure`]).
    pub(crate) auth: Option<AuthFailure>,
}

impl Refusal {
    /// Why the credentials were refused, when this is their refusal (a `401`, or its `403`
    /// for credentials git did not send itself): the word its request line carries.
    fn auth_failure(&self) -> Option<AuthFailure> {
        Some(match self {
            Refusal::NoCredentials(CredentialError::Missing | CredentialError::NoPassword) => {
                AuthFailure::NoCredentials
            }
            Refusal::NoCredentials(CredentialError::NoBearerToken) => AuthFailure::EmptyBearer,
            // With a password after it or without (`https://TOKEN@host/...`, or GitHub's
            // `TOKEN:x-oauth-basic`): the token is where the user name goes, either way.
            Refusal::NoCredentials(CredentialError::Malformed(
                credentials::TOKEN_AS_USER_WITHOUT_PASSWORD | credentials::TOKEN_AS_USER,
            )) => AuthFailure::TokenAsUser,
            Refusal::NoCredentials(CredentialError::Malformed(_)) => AuthFailure::MalformedHeader,
            Refusal::NotAToken(token::NotAToken::Damaged, _) => AuthFailure::NotAToken,
            Refusal::NotAToken(token::NotAToken::Mistyped, _) => AuthFailure::MistypedToken,
            Refusal::NotAToken(token::NotAToken::Password, _) => AuthFailure::Password,
            Refusal::InvalidToken(why) | Refusal::Denied(Deny::Unauthenticated(why, _)) => *why,
            _ => return None,
        })
    }
}

/// What [`Gate::decide`] found: the token's record, the presented secret's hash, the time the
/// decision was made at, and the policy's decision.
struct Decided {
    record: Arc<AuthRecord>,
    presented_hash: [u8; 32],
    now: i64,
    authorized: Result<Identity, Deny>,
}

/// What [`Gate::refusal`] needs of a refused request besides the refusal: whether git sent its
/// credentials itself (see `Gate::unauthenticated`), which credentials it tried (see
/// [`credentials::fingerprint`]), and when, on [`clock::monotonic_ms`] (the moment it was
/// decided, read once with the decision's time).
struct Attempt {
    by_hand: bool,
    tried: u64,
    at_ms: i64,
}

/// [`Gate::still_admitted`] for one request, as the CGI runner asks it after a wait.
struct AskAgain<'a> {
    gate: &'a Gate,
    headers: &'a HeaderMap,
    git_req: &'a GitRequest,
    remote: SocketAddr,
    /// Why it was refused, for the gate's answer.
    refused: std::sync::Mutex<Option<Refusal>>,
}

impl crate::upstream::cgi::StillAllowed for AskAgain<'_> {
    fn ask(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(
            self.gate
                .still_admitted(self.headers, self.git_req, self.remote, &self.refused),
        )
    }
}

impl Gate {
    /// Handle one request; never fails (every error is an answer).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        exchange: Activity,
    ) -> Result<Response<ResponseBody>, Infallible> {
        // Everything about "who is asking from where" (throttle, allowed networks, audit, logs)
        // uses the client's address; only the upstream hop itself needs the peer.
        // A trusted proxy's X-Forwarded-For that names no client is refused below, with the
        // request logged as from the proxy.
        let id = RequestId::next();
        let client = client_address(peer.ip(), req.headers(), &self.trusted_proxies);
        // Said once a minute per proxy (with `unlogged`): a misconfigured one sends every
        // request so, and each has its request line besides.
        if client.is_err() {
            let forwarded_for = req.headers().contains_key("x-forwarded-for");
            if let Some(unlogged) = crate::request_log::form_refusal_to_say(
                id,
                peer.ip(),
                400,
                if forwarded_for {
                    "x-forwarded-for"
                } else {
                    "forwarded"
                },
            ) {
                if forwarded_for {
                    tracing::warn!(
                        request_id = %id,
                        peer = %peer,
                        unlogged,
                        "refused: the trusted proxy's X-Forwarded-For names no client address"
                    );
                } else {
                    tracing::warn!(
                        request_id = %id,
                        peer = %peer,
                        unlogged,
                        "refused: the trusted proxy names the client in a Forwarded header, which \
                         gitgate does not read; have it send X-Forwarded-For"
                    );
                }
            }
        }
        let remote = SocketAddr::new(*client.as_ref().unwrap_or(&peer.ip()), peer.port());
        // The management API, before git classification: never forwarded upstream.
        if crate::api::is_api_path(req.uri().path()) {
            // Refused before the API sees it: logged here, as the API logs what it answers.
            let refused = |resp: Response<ResponseBody>| {
                METRICS.api_request(resp.status().as_u16());
                tracing::info!(
                    target: "gitgate::request",
                    request_id = %id,
                    method = %LogMethod(req.method()),
                    path = %loggable_path(req.uri().path()),
                    remote = %remote.ip(),
                    api = true,
                    status = resp.status().as_u16(),
                    "request"
                );
                Ok(resp)
            };
            if client.is_err() {
                return refused(text(StatusCode::BAD_REQUEST, UNREADABLE_FORWARDED_FOR));
            }
            if let Some(m) = overlong_target(req.uri()) {
                malformed_said(id, remote, 414, &m);
                return refused(text(StatusCode::URI_TOO_LONG, &m));
            }
            if let Some(m) = host_problem(req.version(), req.uri(), req.headers()) {
                malformed_said(id, remote, 400, m);
                return refused(text(StatusCode::BAD_REQUEST, m));
            }
            // Password guessing on the API counts for the address throttle like bad tokens do
            // (and per user name, in `lifecycle::login`).
            if let Err(verdict) = self.guard.check_address(remote.ip(), clock::monotonic_ms()) {
                return refused(too_many(&verdict));
            }
            let tried = crate::credentials::offers_a_password(req.headers());
            let credentials = crate::credentials::fingerprint(req.headers());
            // A task of its own, which finishes however soon the client hangs up: a password
            // check, once started, runs to its end on the blocking pool anyway, and its failure
            // must count for the throttle, the metric and the log — else a guesser who closes
            // each connection before the answer would never be blocked.
            let gate = self.clone();
            let call = tokio::spawn(async move {
                let resp = crate::api::handle(
                    gate.store.clone(),
                    &gate.guard,
                    &gate.realm,
                    gate.api_body_deadline,
                    gate.git_prefix.clone(),
                    req,
                    RequestSource {
                        peer,
                        client: remote,
                        id,
                    },
                )
                .await;
                if tried && resp.status() == StatusCode::UNAUTHORIZED {
                    // A wrong password is credentials tried and refused, as a bad token is.
                    METRICS.auth_failure();
                    gate.guard
                        .failed_auth(remote.ip(), credentials, clock::monotonic_ms(), id);
                }
                resp
            });
            return Ok(match call.await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::error!(request_id = %id, error = %LogText(&e.to_string()), "a REST API call failed inside gitgate");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error: the call failed inside gitgate (logged)",
                    )
                }
            });
        }
        let started = Instant::now();
        // The fields the checks below look for, found in one pass: a check whose field is
        // absent is not asked (see `fields_present`).
        let fields = FieldsPresent::of(req.headers());
        let method = req.method().clone();
        // A clone of the URI shares its bytes: the log line costs no copy of the path.
        let uri = req.uri().clone();
        // Likewise the client's User-Agent: which git (or library, or CI runner) asked.
        let agent = fields
            .user_agent
            .then(|| req.headers().get(hyper::header::USER_AGENT).cloned())
            .flatten();
        // Logged as 499 if the client goes away before it has an answer (hyper then drops this
        // future), so that no request leaves the log and the metrics unseen.
        let mut pending = Unanswered(Some(LogLine {
            id,
            method,
            uri,
            agent,
            remote,
            who: RequestLog::default(),
            status: CLIENT_GONE_BEFORE_ANSWER,
            forwarded: false,
            // A refused request's body is never read into it: it shares one (see
            // `Inbound::unread`), and a forwarded one is given its own below.
            inbound: Inbound::unread(),
            started,
            connection: exchange.clone(),
        }));
        let log = &mut pending.line().who;

        let admitted = match client {
            Ok(_) => self.admit(&req, fields, id, remote, started, log).await,
            Err(_) => Err(Refusal::NotGit(Rejection::BadRequest(
                UNREADABLE_FORWARDED_FOR.into(),
            ))),
        };
        // Read once: the decision's time, and the moment the throttle counts a refusal at.
        let decided = Instant::now();
        METRICS.auth_decided(decided.saturating_duration_since(started));
        let mut slot = None;
        let mut gone_before_answer = false;
        let response = match admitted {
            Ok((git_req, identity, held)) => {
                slot = Some(held);
                let inbound = Arc::new(Inbound::default());
                pending.line().inbound = inbound.clone();
                // Forwarded (counted as allowed) unless the backend fails, also if the client
                // goes while the backend is still answering.
                pending.line().forwarded = true;
                let (parts, body) = req.into_parts();
                // Dropped unread (the backend failed, or answered early), its rest is lingered
                // over, as a refused request's is.
                let body = crate::linger::Lingering::new(parts.version, body);
                let seen = inbound.clone();
                let a_post = parts.method == Method::POST;
                // A body that ends short of its length is broken off too: an HTTP/2 client that
                // resets its stream with NO_ERROR mid-upload ends it so, without an error.
                let promised = fields
                    .content_length
                    .then(|| crate::upstream::headers::content_length(&parts.headers))
                    .flatten();
                // A push's commands are read as they pass, for its log line.
                let mut reading_push = a_push_with_commands(&git_req, &parts.headers);
                if reading_push {
                    let commands = if a_compressed_body(&parts.headers) {
                        PushCommands::gzipped()
                    } else {
                        PushCommands::default()
                    };
                    let _ = inbound.push.set(Box::new(std::sync::Mutex::new(commands)));
                }
                let body = Observed::new(body, move |s: Seen<'_, hyper::Error>| match s {
                    Seen::Frame(frame) => {
                        if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                            seen.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                            METRICS.request_bytes(data.len() as u64);
                            exchange.request_body_moved();
                            if let Some(push) = seen.push.get().filter(|_| reading_push) {
                                let mut push = push.lock().unwrap_or_else(|p| p.into_inner());
                                push.feed(data);
                                reading_push = !push.is_done();
                            }
                        }
                    }
                    Seen::Error(e) => {
                        let _ = seen.broke_because.set(with_causes(e));
                        let ended = connection_ended(e);
                        seen.closed.store(ended.is_some(), Ordering::Relaxed);
                        seen.reset
                            .store(ended == Some(Ended::Reset), Ordering::Relaxed);
                        seen.broke.store(true, Ordering::Relaxed)
                    }
                    // git sends at least a flush-pkt with every POST: an empty body is the
                    // client's fault (a library retrying with a body it had used up), which
                    // the backend's failure on it must not be blamed for, as a body broken
                    // off is not.
                    Seen::End if a_post && seen.bytes.load(Ordering::Relaxed) == 0 => {
                        let _ = seen.broke_because.set(EMPTY_POST.into());
                        seen.broke.store(true, Ordering::Relaxed)
                    }
                    Seen::End
                        if promised.is_some_and(|p| seen.bytes.load(Ordering::Relaxed) < p) =>
                    {
                        let _ = seen.broke_because.set(format!(
                            "the request body ended after {} of the {} bytes its \
                             Content-Length promised",
                            seen.bytes.load(Ordering::Relaxed),
                            promised.unwrap_or_default()
                        ));
                        seen.broke.store(true, Ordering::Relaxed)
                    }
                    Seen::End | Seen::Waiting => {}
                });
                // Asked again if the request waits for a backend process: what let it in was
                // decided before the wait (see `Gate::still_admitted`).
                let still_allowed = AskAgain {
                    gate: &self,
                    headers: &parts.headers,
                    git_req: &git_req,
                    remote,
                    refused: std::sync::Mutex::new(None),
                };
                match self
                    .upstream
                    .forward(
                        &parts,
                        body,
                        &git_req,
                        &identity,
                        RequestSource {
                            peer,
                            client: remote,
                            id,
                        },
                        Some(&still_allowed),
                    )
                    .await
                {
                    Ok(resp) => {
                        // A push's POST is to come on this HTTP/1 connection, once git has
                        // packed: a stop lets it come (see `Activity::rpc_expected`).
                        if resp.status().is_success()
                            && parts.version < hyper::Version::HTTP_2
                            && a_push_continues(&git_req, &parts.headers)
                        {
                            pending.line().connection.rpc_expected();
                        }
                        resp
                    }
                    // Refused when asked again after its wait: answered (audited, counted) as
                    // the same request arriving now would be.
                    Err(e) if e.fault == Fault::Refused => {
                        pending.line().forwarded = false;
                        let refusal = still_allowed
                            .refused
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take();
                        match refusal {
                            Some(refusal) => {
                                pending.line().who.auth = refusal.auth_failure();
                                let (by_hand, tried) = credentials::as_tried(&parts.headers);
                                let attempt = Attempt {
                                    by_hand,
                                    tried,
                                    at_ms: clock::monotonic_ms(),
                                };
                                self.refusal(refusal, id, remote, &pending.line().who, attempt)
                            }
                            None => text(e.status, &e.message),
                        }
                    }
                    // The client's body broke (bad chunked framing, or the client stopped
                    // sending): the backend failing on it is the client's fault, not an upstream
                    // error to alert on.
                    Err(_) if inbound.broke.load(Ordering::Relaxed) => {
                        let error = inbound.broke_because.get().map_or("", String::as_str);
                        tracing::info!(request_id = %id, repo = %loggable_repo(git_req.repo.as_str()), remote = %remote.ip(), user = %LogValue(&identity.user), token_id = %identity.token_id, error, "the request body broke off");
                        // Its connection was reset: nobody is left to answer (logged below as a
                        // client gone before its answer, as when hyper drops this future). One
                        // closed only for sending may still read the 400, logged as it is.
                        gone_before_answer = inbound.reset.load(Ordering::Relaxed);
                        if !gone_before_answer {
                            pending.line().forwarded = false;
                        }
                        text(StatusCode::BAD_REQUEST, crate::upstream::BODY_BROKE)
                    }
                    Err(e) => {
                        pending.line().forwarded = false;
                        match e.fault {
                            Fault::Backend => {
                                METRICS.upstream_error();
                                tracing::error!(request_id = %id, repo = %loggable_repo(git_req.repo.as_str()), remote = %remote.ip(), user = %LogValue(&identity.user), token_id = %identity.token_id, error = %LogText(&e.to_string()), "backend failed");
                            }
                            // No backend was asked (the repository's folder is not one it may
                            // serve: two answer to it, a link, one nested in another).
                            Fault::Server => {
                                tracing::error!(request_id = %id, repo = %loggable_repo(git_req.repo.as_str()), remote = %remote.ip(), user = %LogValue(&identity.user), token_id = %identity.token_id, error = %LogText(&e.to_string()), "cannot forward")
                            }
                            // Said by the cap, once a minute while it is reached.
                            Fault::Busy => {
                                METRICS.backend_busy();
                                tracing::debug!(request_id = %id, repo = %loggable_repo(git_req.repo.as_str()), remote = %remote.ip(), user = %LogValue(&identity.user), token_id = %identity.token_id, error = %LogText(&e.to_string()), "server busy")
                            }
                            // Answered instead of cut off at the stop's end.
                            Fault::Stopping => {
                                tracing::warn!(request_id = %id, repo = %loggable_repo(git_req.repo.as_str()), remote = %remote.ip(), user = %LogValue(&identity.user), token_id = %identity.token_id, error = %LogText(&e.to_string()), "answered 503 at the stop: the backend had not begun its answer")
                            }
                            // The client's doing (its upload stopped arriving); or, without the
                            // gate's refusal at hand (not seen: answered above), its credentials.
                            Fault::Client | Fault::Refused => {
                                tracing::info!(request_id = %id, repo = %loggable_repo(git_req.repo.as_str()), remote = %remote.ip(), user = %LogValue(&identity.user), token_id = %identity.token_id, error = %LogText(&e.to_string()), "request refused")
                            }
                        }
                        let mut resp = text(e.status, &e.message);
                        if let Some(when) = e.retry_after {
                            resp.headers_mut().insert(RETRY_AFTER, when);
                        }
                        resp
                    }
                }
            }
            Err(refusal) => {
                // Whether git sent the credentials itself decides how a refusal of them is
                // answered (see `Gate::unauthenticated`): read for refusals only.
                let (by_hand, tried) = credentials::as_tried(req.headers());
                let attempt = Attempt {
                    by_hand,
                    tried,
                    at_ms: clock::monotonic_ms_at(decided),
                };
                pending.line().who.auth = refusal.auth_failure();
                let mut resp = self.refusal(refusal, id, remote, &pending.line().who, attempt);
                // A client waiting for `100 Continue` before it sends its body (libgit2, curl)
                // gets none: hyper closes the connection after this answer, since it cannot
                // know whether a body follows. Said in the answer, so that the client sends
                // its next request on a new connection rather than into the closing one.
                if req.version() == Version::HTTP_11
                    && fields.expect
                    && req.headers().contains_key(hyper::header::EXPECT)
                    && !req.body().is_end_stream()
                {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                // Closing on the unread rest of a push would reset the connection under the
                // answer (nginx in front then says 502): read it for a little while instead.
                let _ = crate::linger::after_answer(req.version(), req.into_body());
                resp
            }
        };

        let mut line = pending.answered();
        line.status = response.status().as_u16();
        if gone_before_answer {
            line.status = CLIENT_GONE_BEFORE_ANSWER;
            line.write(0, "client-gone");
            return Ok(response);
        }
        let (mut parts, body) = response.into_parts();
        // Only a forwarded git answer's framing is followed (the backend's `200` of one of
        // git's content types), and once: the HTTP upstream follows its answers itself, and
        // hands on how far one is whole; the embedded runner's are followed here.
        let followed_upstream = parts.extensions.remove::<Arc<WholeAt>>();
        let framing = match followed_upstream {
            _ if !line.forwarded => None,
            Some(whole) => Some(AnswerFollowed::Upstream(whole)),
            None => {
                AnswerFraming::for_answer(parts.status, &parts.headers).map(AnswerFollowed::Here)
            }
        };
        let body = LoggedBody {
            inner: body,
            _slot: slot,
            bytes_out: 0,
            done: Some(line),
            framing,
            handed: Default::default(),
        };
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }

    /// Decide whether the request may go to the backend, and as whom.
    async fn admit(
        &self,
        req: &Request<Incoming>,
        fields: FieldsPresent,
        request_id: RequestId,
        remote: SocketAddr,
        started: Instant,
        log: &mut RequestLog,
    ) -> Result<(GitRequest, Identity, Slot), Refusal> {
        // First: a looped request would otherwise be refused for its credentials (none, or
        // gitgate's own upstream ones), audited and throttled as gitgate's own address's
        // failure, or let in as often as its upstream credentials allow.
        if fields.hop_mark && crate::request_id::came_from_this_process(req.headers()) {
            return Err(Refusal::Loop);
        }
        if let Some(m) = overlong_target(req.uri()) {
            return Err(Refusal::TooLong(m));
        }
        let git_req = git::classify(
            req.method().as_str(),
            req.uri().path(),
            req.uri().query(),
            &self.git_prefix,
        )
        .map_err(Refusal::NotGit)?;
        if let Some(m) = host_problem(req.version(), req.uri(), req.headers()) {
            return Err(Refusal::NotGit(Rejection::BadRequest(m.into())));
        }
        // Before the repository is logged or audited: it may be a secret pasted by mistake.
        if credentials::holds_a_token(git_req.repo.as_str()) {
            return Err(Refusal::NotGit(Rejection::BadRequest(
                "the repository path holds what looks like a gitgate token; a token goes in the \
                 password, never in the URL's path"
                    .into(),
            )));
        }
        // Or a long name that only has the shape of a secret's random part: said so, since
        // such a repository is refused whatever the credentials (and cannot be granted).
        if credentials::has_a_secrets_random_part(git_req.repo.as_str()) {
            return Err(Refusal::NotGit(Rejection::BadRequest(format!(
                "the repository path holds what looks like a gitgate token ({}, as a \
                 token's secret has); a token goes in the password, never in the URL's \
                 path, and gitgate serves no repository named so: rename it",
                credentials::RANDOM_PART_SHAPE
            ))));
        }
        // Each says nothing of a request without its field.
        if fields.transfer_encoding {
            if let Some(m) = crate::upstream::headers::unsupported_transfer_coding(req.headers()) {
                return Err(Refusal::Unframeable(m));
            }
        }
        if fields.content_length {
            if let Some(m) = crate::upstream::headers::unusable_content_length(req.headers()) {
                return Err(Refusal::NotGit(Rejection::BadRequest(m)));
            }
        }
        if fields.content_encoding {
            if let Some(m) = crate::upstream::headers::unsupported_content_coding(req.headers()) {
                return Err(Refusal::UnsupportedCoding(m));
            }
        }
        // A body known empty (nearly every GET: no length, no coding) needs no header looked at.
        if !req.body().is_end_stream() {
            if let Some(m) = body_on_a_get(req.method(), req.headers()) {
                return Err(Refusal::NotGit(Rejection::BadRequest(m.into())));
            }
        }
        log.repo = Some(git_req.repo.shared());
        log.access = Some(git_req.access.as_str());
        // Before the credentials are looked at: a browser that holds them for this site sends
        // them with what another site's page has it fetch, each a token of its user's bucket
        // (see `cross_site`). git never says it comes from a page.
        if let Some(said) = fields
            .from_a_page
            .then(|| crate::cross_site::from_another_site(req.method(), req.uri(), req.headers()))
            .flatten()
        {
            return Err(Refusal::FromAnotherSite(format!(
                "refused: this request comes from a web page of another site ({said}); git \
                 URLs answer git, not a page that fetches from them"
            )));
        }
        // On the request's first clock read: nothing waited since.
        self.guard
            .check_address(remote.ip(), clock::monotonic_ms_at(started))
            .map_err(Refusal::Guarded)?;

        let creds = credentials::from_headers(req.headers()).map_err(Refusal::NoCredentials)?;
        let bearer = matches!(creds, Credentials::Bearer { .. });
        let (user, secret) = match creds {
            Credentials::Basic { user, secret } => (Some(user), secret),
            Credentials::Bearer { secret } => (None, secret),
        };
        // Until the token says whose it is, the name the client sent, if it could be a user's
        // (one that holds a secret `from_headers` refused already): moved into the log, and
        // read back from there, unless the log holds something else.
        let (logged, unlogged) = user_for_the_log(user);
        log.user = logged;
        let basic_user = unlogged.as_deref().or(log.user.as_deref());
        let id = token::parse(secret.expose())
            .ok_or_else(|| Refusal::NotAToken(token::NotAToken::of(secret.expose()), bearer))?;
        // The log keeps the id parsed, not a copy of it.
        let id: &str = log.token_id.insert(id.into_string());

        let Decided {
            record,
            presented_hash,
            now,
            authorized,
        } = self
            .decide(id, &secret, basic_user, &git_req, remote)
            .await?;
        if let Some(until) = record.previous_used(&presented_hash, now) {
            tracing::info!(request_id = %request_id, token_id = %record.token.id, remote = %remote.ip(), until = %clock::datetime(until), "the token's previous secret was used, inside its rotation's overlap: a client still holds it, and is refused once the overlap ends (said at most once a minute per token)");
        }
        // From here on the log names whom the token stands for, not the name the client chose:
        // a refused request must not be logged under somebody else's name. An allowed one is
        // logged as whom the policy let in, copied once.
        log.user = Some(match (&authorized, &record.token.kind, &record.owner) {
            (Ok(identity), _, _) => identity.user.clone(),
            (Err(_), TokenKind::Personal, Some(owner)) => owner.slug.clone(),
            (Err(_), _, _) => record.token.name.clone(),
        });
        // The token authenticated its request, whatever comes of it next (a 403 for its
        // permission or its networks, a 429): that is its last use, as Bitbucket's
        // `lastAuthenticated` counts it — and a secret used from a network it may not be used
        // from shows there.
        if !matches!(authorized, Err(Deny::Unauthenticated(..))) {
            self.note_use(&record, now, remote);
        }
        let identity = authorized.map_err(Refusal::Denied)?;
        // Refused once its credentials are (a 401 or 403 says more), before it takes a place or
        // a token of its principal's.
        // Known empty: a `Content-Length: 0`, or an HTTP/2 HEADERS frame that ended its stream
        // (hyper's body then says it is at its end; a chunked body is not known till read).
        if req.method() == Method::POST
            && (req.body().is_end_stream()
                || crate::upstream::headers::content_length(req.headers()) == Some(0))
        {
            return Err(Refusal::NotGit(Rejection::BadRequest(EMPTY_POST.into())));
        }
        let principal = guard::principal(&record.token);
        // The place among the principal's requests in flight first: a request refused for the
        // cap must not also take a token from its bucket (nor earn POST credits), or a client
        // that honours `Retry-After` would drain its bucket waiting.
        let slot = self
            .guard
            .acquire_slot(&principal, git_req.operation)
            .map_err(Refusal::Guarded)?;
        self.guard
            .check_principal(&principal, git_req.operation, clock::monotonic_ms())
            .await
            .map_err(Refusal::Guarded)?;
        Ok((git_req, identity, slot))
    }

    /// The token's record, read through the cache, with the presented secret checked against
    /// it (a token the store does not have, or a secret not its own, is the `Refusal`), and the
    /// policy's decision for this request now. Asked by [`Gate::admit`], and again by
    /// [`Gate::still_admitted`] for a request that waited before its backend started.
    async fn decide(
        &self,
        id: &str,
        secret: &credentials::Secret,
        basic_user: Option<&str>,
        git_req: &GitRequest,
        remote: SocketAddr,
    ) -> Result<Decided, Refusal> {
        // Hot path: a cache hit costs a hash lookup and a read of the WAL index header (an id
        // the store did not have, as much); a miss reads SQLite, here or on the blocking pool.
        let record = match self.store.cached_auth_record(id) {
            Ok(CacheLookup::Hit(hit)) => hit,
            Ok(CacheLookup::Unknown) => {
                return Err(Refusal::InvalidToken(AuthFailure::UnknownToken))
            }
            Ok(CacheLookup::Miss(at)) => self.load_record(id, at).await?,
            Err(e) => return Err(Refusal::StoreDown(e)),
        };
        store_answered();
        // Hashed only for an id the store holds: ids are not secret (they are logged), so an
        // unknown one refused sooner tells nothing the log does not.
        let presented_hash = token::hash(secret.expose());
        let now = clock::now_ms();
        let authorize = || {
            policy::authorize(
                &record,
                basic_user,
                &git_req.repo,
                git_req.access,
                remote.ip(),
                now,
            )
        };
        if !record.secret_matches(&presented_hash, now) {
            if record.replaced_secret_matches(&presented_hash, now) {
                // A token that would not authenticate anyway (revoked, expired, its owner
                // disabled) says that: a new secret would not help.
                let denied = match authorize() {
                    Err(denied @ Deny::Unauthenticated(..)) => denied,
                    _ => Deny::Unauthenticated(
                        AuthFailure::ReplacedSecret,
                        replaced_secret(&record.token),
                    ),
                };
                return Err(Refusal::Denied(denied));
            }
            return Err(Refusal::InvalidToken(AuthFailure::WrongSecret));
        }
        let authorized = authorize();
        Ok(Decided {
            record,
            presented_hash,
            now,
            authorized,
        })
    }

    /// Whether a request [`Gate::admit`] let in is still let in, asked after it waited for a
    /// backend process (`[upstream] max_processes`: up to 10 s, a clone's or push's `POST`
    /// longer). A revocation, a disabled owner, a removed grant or an expiry that came during
    /// the wait refuses it here, before a backend runs, as it would refuse a request arriving
    /// now: the CLI's and the API's answer to a revocation promise that the next request is
    /// refused, and a queued push must not land after its token was revoked. The refusal is
    /// kept in `refused` for the gate to answer with (audited and counted as any other).
    async fn still_admitted(
        &self,
        headers: &HeaderMap,
        git_req: &GitRequest,
        remote: SocketAddr,
        refused: &std::sync::Mutex<Option<Refusal>>,
    ) -> bool {
        let decided = async {
            let creds = credentials::from_headers(headers).map_err(Refusal::NoCredentials)?;
            let (basic_user, secret) = match &creds {
                Credentials::Basic { user, secret } => (Some(user.as_str()), secret),
                Credentials::Bearer { secret } => (None, secret),
            };
            let id = token::parse(secret.expose())
                .ok_or(Refusal::InvalidToken(AuthFailure::NotAToken))?;
            let decided = self
                .decide(id.as_str(), secret, basic_user, git_req, remote)
                .await?;
            decided.authorized.map(|_| ()).map_err(Refusal::Denied)
        };
        match decided.await {
            Ok(()) => true,
            Err(refusal) => {
                *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(refusal);
                false
            }
        }
    }

    /// A cache miss (seen at `at`): read the token's record here when that cannot wait (see
    /// [`Store::load_auth_record_now`]), else on the blocking pool, a few at a time and within
    /// a deadline (see [`Store::load_auth_record_in_turn`]).
    async fn load_record(&self, id: &str, at: CacheVersion) -> Result<Arc<AuthRecord>, Refusal> {
        if let Some(read) = self.store.load_auth_record_now(id, at) {
            return read
                .map_err(Refusal::StoreDown)?
                .ok_or(Refusal::InvalidToken(AuthFailure::UnknownToken));
        }
        self.store
            .load_auth_record_in_turn(id)
            .await
            .map_err(Refusal::StoreDown)?
            .ok_or(Refusal::InvalidToken(AuthFailure::UnknownToken))
    }

    /// Record the token's last use off the request path, at most every few seconds per token:
    /// the store's writer batches it with other tokens' (one commit a second at most, however
    /// many tokens are in use).
    fn note_use(&self, record: &AuthRecord, now: i64, remote: SocketAddr) {
        if record.claim_use(now, LAST_USE_INTERVAL_MS) {
            self.store.note_last_use(&record.token.id, now, remote.ip());
        }
    }

    /// The one place where refusals become answers.
    fn refusal(
        &self,
        refusal: Refusal,
        id: RequestId,
        remote: SocketAddr,
        log: &RequestLog,
        attempt: Attempt,
    ) -> Response<ResponseBody> {
        let Attempt {
            by_hand,
            tried,
            at_ms,
        } = attempt;
        match refusal {
            Refusal::Loop => {
                tracing::error!(request_id = %id, remote = %remote.ip(), "gitgate's own request came back to it: [upstream] url leads to this gitgate (a loop, by a name, another of its addresses or a proxy between); point it at the git server");
                text(
                    StatusCode::LOOP_DETECTED,
                    "gitgate's upstream leads back to gitgate itself (a loop in its \
                     configuration); the administrator's log says more",
                )
            }
            Refusal::NotGit(Rejection::NotFound(m)) => text(StatusCode::NOT_FOUND, &m),
            Refusal::NotGit(Rejection::LfsUnsupported) => lfs_unsupported(),
            Refusal::NotGit(Rejection::BadRequest(m)) => {
                // That one has its warning already, naming the proxy.
                if m != UNREADABLE_FORWARDED_FOR {
                    malformed_said(id, remote, 400, &m);
                }
                text(StatusCode::BAD_REQUEST, &m)
            }
            Refusal::NotGit(Rejection::MethodNotAllowed { message, allow }) => {
                method_not_allowed(&message, allow)
            }
            // No secret was tried: git's first round trip, without credentials or with the URL's
            // user name alone. A challenge, not a failure (no throttle count, no audit event).
            // CI's own header (`AUTHORIZATION: basic` in http.extraHeader) with an empty
            // password, its variable unset: no secret tried either, but git would answer a
            // challenge by asking for a user name, so it is told why.
            Refusal::NoCredentials(CredentialError::NoPassword) if by_hand => text(
                StatusCode::FORBIDDEN,
                "unusable Authorization header: the Basic credentials have no password (is the \
                 variable that should hold the token empty?)",
            ),
            Refusal::NoCredentials(CredentialError::Missing | CredentialError::NoPassword) => {
                METRICS.challenge();
                self.challenge(
                    "authentication required: use your user name and a gitgate access token as the password",
                )
            }
            // No secret either (an empty CI variable): told why, not counted or audited.
            Refusal::NoCredentials(e @ CredentialError::NoBearerToken) => {
                self.unauthenticated(by_hand, &e.to_string())
            }
            // `https://TOKEN@host/...`: to a 401, git would ask for a password ("could not read
            // Password" in a CI log, the reason never printed), and none can help — the name is
            // refused whatever follows it. To a 403 git prints the reason.
            Refusal::NoCredentials(
                e @ CredentialError::Malformed(credentials::TOKEN_AS_USER_WITHOUT_PASSWORD),
            ) => {
                self.audit_failure(id, remote, log, (tried, at_ms), &e.to_string());
                text(StatusCode::FORBIDDEN, &e.to_string())
            }
            Refusal::NoCredentials(e) => {
                self.audit_failure(id, remote, log, (tried, at_ms), &e.to_string());
                self.unauthenticated(by_hand, &e.to_string())
            }
            // The refusal of a flood of wrong tokens: its words are made once, not per answer.
            Refusal::InvalidToken(_) => {
                self.audit_failure(id, remote, log, (tried, at_ms), INVALID_TOKEN);
                if by_hand {
                    said(StatusCode::FORBIDDEN, INVALID_TOKEN_SAID)
                } else {
                    said_with(
                        StatusCode::UNAUTHORIZED,
                        INVALID_TOKEN_SAID,
                        self.wrong_token_fields.clone(),
                    )
                }
            }
            Refusal::NotAToken(what, bearer) => {
                self.audit_failure(id, remote, log, (tried, at_ms), what.audit_reason());
                self.unauthenticated(by_hand, what.message_for(bearer))
            }
            Refusal::Denied(Deny::Unauthenticated(_, m)) => {
                self.audit_failure(id, remote, log, (tried, at_ms), &m);
                self.unauthenticated(by_hand, &m)
            }
            Refusal::Denied(Deny::Forbidden(m)) => {
                // The client is told why; so is the operator, who has no other trace of it (a
                // 401 is an audit event, a 403 is not: the principal is known and allowed in).
                tracing::info!(
                    request_id = %id,
                    remote = %remote.ip(),
                    user = %LogValue(log.user.as_deref().unwrap_or("-")),
                    token_id = %log.token_id.as_deref().unwrap_or("-"),
                    repo = %loggable_repo(log.repo.as_deref().unwrap_or("-")),
                    reason = %LogText(&m),
                    "access refused"
                );
                text(StatusCode::FORBIDDEN, &m)
            }
            Refusal::FromAnotherSite(m) => {
                malformed_said(id, remote, 403, &m);
                text(StatusCode::FORBIDDEN, &m)
            }
            Refusal::TooLong(m) => {
                malformed_said(id, remote, 414, &m);
                text(StatusCode::URI_TOO_LONG, &m)
            }
            Refusal::Unframeable(m) => {
                malformed_said(id, remote, 501, &m);
                text(StatusCode::NOT_IMPLEMENTED, &m)
            }
            Refusal::UnsupportedCoding(m) => {
                malformed_said(id, remote, 415, &m);
                text(StatusCode::UNSUPPORTED_MEDIA_TYPE, &m)
            }
            Refusal::StoreDown(e) => {
                // Every request refused says so in its own line; this one, which a flood of
                // requests would repeat thousands of times a second, is said once per cause
                // and then once per 10 s while the cause lasts.
                let error = e.to_string();
                let said = STORE_DOWN
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .failed(&error, Instant::now());
                STORE_FAILING.store(true, Ordering::Relaxed);
                if let Some(refused) = said {
                    tracing::error!(
                        error = %LogText(&error),
                        refused,
                        "token store unavailable; refusing requests (said again every 10 s \
                         while it lasts, with how many were refused since)"
                    );
                }
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "gitgate cannot check tokens right now (its token store is unavailable); \
                     if this lasts, tell its administrator",
                )
            }
            Refusal::Guarded(verdict) => {
                verdict.say(id);
                too_many(&verdict)
            }
        }
    }

    /// The answer to credentials that were tried and failed (the failure is counted and audited
    /// by the caller).
    ///
    /// For Basic, a 401 with the challenge: git asks its credential helper (which forgets a
    /// stored token git sent itself) and prints the reason when it gives up. A Bearer header is
    /// one git does not send itself (`http.extraHeader`, the README's way for CI), and so is a
    /// Basic one spelled `basic` (CI checkouts'): to a 401 git would answer by asking for a user
    /// name — "could not read Username: terminal prompts disabled" in a CI log — and never
    /// print why. So such a refusal is a 403 with the same reason, which git prints as
    /// `remote: ...`.
    fn unauthenticated(&self, by_hand: bool, message: &str) -> Response<ResponseBody> {
        if by_hand {
            text(StatusCode::FORBIDDEN, message)
        } else {
            self.challenge(message)
        }
    }

    /// 401 with the Basic challenge, so git asks its credential helper and retries.
    fn challenge(&self, message: &str) -> Response<ResponseBody> {
        self.challenged(text(StatusCode::UNAUTHORIZED, message))
    }

    /// `resp`, a 401, with the Basic challenge.
    fn challenged(&self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        if let Some(v) = &self.challenge {
            // A clone shares the value's bytes.
            resp.headers_mut().insert(WWW_AUTHENTICATE, v.clone());
        }
        resp
    }

    /// A failed authentication is an audit event (never with the secret), written off the path.
    fn audit_failure(
        &self,
        id: RequestId,
        remote: SocketAddr,
        log: &RequestLog,
        (tried, at_ms): (u64, i64),
        reason: &str,
    ) {
        METRICS.auth_failure();
        self.guard.failed_auth(remote.ip(), tried, at_ms, id);
        // A flood of refusals is mostly one event repeated: its address and detail are written
        // into this thread's reused buffers (the address only when it changed), and the store's
        // writer copies them only for an event not already waiting (a repeat is counted,
        // nothing allocated).
        AUDIT_SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            let (source, detail) = scratch.fill(remote.ip(), reason, log.repo.as_deref());
            // Batched by the store's audit writer: one commit per batch, not per refusal.
            self.store.record_request_event_later(
                (log.user.as_deref().unwrap_or("anonymous"), source),
                "auth.failed",
                log.token_id.as_deref().unwrap_or_default(),
                detail,
                Some(id),
            );
        });
    }
}

/// A Basic user name (`None`: Bearer) as the request log holds it until the token says whose it
/// is — itself if it could be a user's (moved, not copied), else `<not a user name>`, and none
/// if empty — and, when that is not the name as sent, the name as sent (for the policy).
fn user_for_the_log(user: Option<String>) -> (Option<String>, Option<String>) {
    let Some(user) = user else {
        return (None, None);
    };
    if user.is_empty() {
        return (None, Some(user));
    }
    let written = crate::store::as_written_down_unsecret(&user);
    // The same place: the name itself, not the placeholder.
    if std::ptr::eq(written, user.as_str()) {
        (Some(user), None)
    } else {
        (Some(written.to_string()), Some(user))
    }
}

/// [`Gate::audit_failure`]'s buffers, reused from one refusal to the next on a thread.
struct AuditScratch {
    /// The address `source` spells.
    ip: Option<std::net::IpAddr>,
    source: String,
    detail: String,
}

impl AuditScratch {
    /// The failure's source (its address) and detail (`<reason> (repo <repo>)`), spelled into
    /// the buffers; the address is spelled again only when it changed.
    fn fill(&mut self, ip: std::net::IpAddr, reason: &str, repo: Option<&str>) -> (&str, &str) {
        if self.ip != Some(ip) {
            self.source.clear();
            // Writing into a String cannot fail.
            let _ = write!(self.source, "{ip}");
            self.ip = Some(ip);
        }
        self.detail.clear();
        self.detail.push_str(reason);
        self.detail.push_str(" (repo ");
        let (kept, cut) = kept_of_path(repo.unwrap_or("-"));
        self.detail.push_str(kept);
        if cut {
            self.detail.push_str("...");
        }
        self.detail.push(')');
        (&self.source, &self.detail)
    }
}

thread_local! {
    static AUDIT_SCRATCH: std::cell::RefCell<AuditScratch> = const {
        std::cell::RefCell::new(AuditScratch {
            ip: None,
            source: String::new(),
            detail: String::new(),
        })
    };
}

/// The `WWW-Authenticate` value of a 401: Basic, in `realm`; `None` for a realm that cannot be
/// a header value (then 401s carry no challenge, as before this was made once).
pub fn basic_challenge(realm: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")).ok()
}

/// 429 with `Retry-After` for a throttled address or an exhausted rate limit.
fn too_many(verdict: &Verdict) -> Response<ResponseBody> {
    let mut resp = text(StatusCode::TOO_MANY_REQUESTS, &verdict.message());
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(verdict.retry_after_secs()));
    resp
}

/// A `405` saying `message`, with the methods the resource takes in `Allow` (RFC 9110, section
/// 15.5.6): a git path's, or a probe's.
pub fn method_not_allowed(message: &str, allow: &'static str) -> Response<ResponseBody> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, message);
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Why a token the store does not hold (or whose secret is not its own) is refused: the
/// client's answer and the audit event's reason.
const INVALID_TOKEN: &str = "invalid token";

/// [`INVALID_TOKEN`] as its answer's body.
const INVALID_TOKEN_SAID: &str = "invalid token\n";

/// A one-line `text/plain` answer; git shows it as `remote: ...`.
pub fn text(status: StatusCode, message: &str) -> Response<ResponseBody> {
    // A message may quote what the client sent; never a token secret in it.
    let message = crate::credentials::without_secrets(message);
    let mut line = String::with_capacity(message.len() + 1);
    line.push_str(&message);
    line.push('\n');
    answer(status, Bytes::from(line))
}

/// [`text`] of a fixed line (its `\n` included), which quotes nothing the client sent: its
/// bytes are the program's own, not copied, nor looked through for secrets.
fn said(status: StatusCode, line: &'static str) -> Response<ResponseBody> {
    answer(status, Bytes::from_static(line.as_bytes()))
}

/// [`said`] with the fields `fields` (made once, cloned for each answer: inserting four fields
/// one by one cost about 1,000 instructions, cloning them about a quarter of that).
fn said_with(status: StatusCode, line: &'static str, fields: HeaderMap) -> Response<ResponseBody> {
    let mut resp = unfielded(status, Bytes::from_static(line.as_bytes()));
    *resp.headers_mut() = fields;
    resp
}

/// The fields of the `401` for a wrong token: those `said` gives it, and the challenge
/// (`Gate::challenged`), in the same order.
pub fn wrong_token_fields(challenge: Option<&HeaderValue>) -> HeaderMap {
    let mut fields = said(StatusCode::UNAUTHORIZED, INVALID_TOKEN_SAID)
        .into_parts()
        .0
        .headers;
    if let Some(v) = challenge {
        fields.insert(WWW_AUTHENTICATE, v.clone());
    }
    fields
}

/// An answer of `status` and `body`, without fields yet.
fn unfielded(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let body = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

/// A `text/plain` answer of `body`, as [`text`] makes it.
fn answer(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut resp = unfielded(status, body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The message may quote the client's path: opened in a browser, it is text, never a page.
    resp.headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// What an LFS client is told: a `404` in the Git LFS API's error form, a JSON object with a
/// `message`, as `application/vnd.git-lfs+json`. git-lfs prints that message; to any other
/// answer it prints "Repository or object not found", a guess that sends the user after their
/// access, followed by the request's URL with whatever token the remote's URL holds.
fn lfs_unsupported() -> Response<ResponseBody> {
    let body = serde_json::json!({ "message": LFS_UNSUPPORTED_SAID }).to_string();
    let mut resp = text(StatusCode::NOT_FOUND, "");
    *resp.body_mut() = Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.git-lfs+json; charset=utf-8"),
    );
    resp
}

/// The reason an LFS client prints (git-lfs: `batch response: ...`).
const LFS_UNSUPPORTED_SAID: &str = "Git LFS is not supported yet: this server (gitgate) passes on \
     git's own requests only, so LFS objects can be neither uploaded nor downloaded through it";

/// Whether the request is a push's POST, whose commands are read as it passes (see
/// [`PushCommands`]): not the 4-byte probe (`0000`) git sends before a large push, which
/// changes nothing.
fn a_push_with_commands(git_req: &GitRequest, headers: &hyper::HeaderMap) -> bool {
    git_req.operation == git::Operation::Rpc(git::Service::ReceivePack) && !is_a_push_probe(headers)
}

/// Whether the request body is compressed (`Content-Encoding` gzip or x-gzip, as the backend
/// is told it): a push's commands are read from it as it is inflated then. A `Content-Encoding` of
/// `identity`, or one with an empty value, is a plain body that the backend reads as plain
/// (taken for compressed, it would not inflate, and its commands went unlogged).
fn a_compressed_body(headers: &hyper::HeaderMap) -> bool {
    crate::upstream::headers::content_coding(headers).is_some_and(|c| c != "identity")
}

/// Whether a push's POST is the 4-byte probe (`0000`) git sends before a large push's body.
fn is_a_push_probe(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"4")
}

/// Whether a push's POST is to come after `git_req`'s answer: its ref advertisement, or the
/// probe git sends before a pack too large for one buffer (a `0000` of four bytes), after which
/// the pack follows, chunked.
fn a_push_continues(git_req: &GitRequest, headers: &hyper::HeaderMap) -> bool {
    match git_req.operation {
        git::Operation::Advertise(git::Service::ReceivePack) => true,
        git::Operation::Rpc(git::Service::ReceivePack) => is_a_push_probe(headers),
        _ => false,
    }
}

/// What is wrong with a `GET` or `HEAD` that says it has a body (a `Content-Length` above 0,
/// or any `Transfer-Encoding`): git never sends one, and one passed on is bytes an upstream
/// that takes these methods for bodiless reads as the next request on gitgate's connection —
/// an authenticated one (a chunked body on these methods went nowhere; one of a stated length
/// went upstream). Refused, as a form of request git does not make.
fn body_on_a_get(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let has_length = crate::upstream::headers::content_length(headers).is_some_and(|n| n > 0);
    let has_coding = headers.contains_key(hyper::header::TRANSFER_ENCODING);
    (has_length || has_coding).then_some(
        "a GET or HEAD request carries no body (git sends none), and this one says it has one",
    )
}

/// What the holder of a token's replaced secret is told: that it was replaced, and when.
fn replaced_secret(token: &crate::store::TokenRecord) -> String {
    let name = &token.name;
    let when = token
        .rotated_at
        .map(|at| format!(" on {}", clock::datetime(at)))
        .unwrap_or_default();
    format!(
        "token '{name}' was given a new secret{when} (rotated): this is the secret it replaced; \
         use the new one"
    )
}

/// What is wrong with the request's `Host`, if anything: an HTTP/1.1 request must carry exactly
/// one (RFC 9112, section 3.2). Two could make gitgate and a proxy behind it disagree about
/// the host. HTTP/2 names the host in `:authority` (`uri`'s authority here) and may leave `Host`
/// out, but one that names another host makes the request malformed (RFC 9113, section 8.3.1):
/// gitgate passes `Host` on as the forwarded host, and the backend would see another host than
/// the one the client connected to; one with neither names no host at all. HTTP/1.0 may leave
/// it out.
pub fn host_problem(version: Version, uri: &Uri, headers: &HeaderMap) -> Option<&'static str> {
    // An absolute target of another scheme (`GET ftp://host/team/app.git/info/refs`, which
    // hyper takes; HTTP/2's `:scheme` alike) asks for what gitgate does not serve: refused,
    // not answered as the same path over http.
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https"))
    {
        return Some(
            "the request target's scheme is neither http nor https: gitgate answers only http \
             and https requests",
        );
    }
    let mut hosts = headers.get_all(HOST).iter();
    let (first, more) = (hosts.next(), hosts.next().is_some());
    if more {
        return Some(if version == Version::HTTP_11 {
            "an HTTP/1.1 request may carry only one Host header"
        } else {
            "a request may carry only one Host header"
        });
    }
    // Not a host at all (RFC 9112, section 3.2: a 400, as for two): it would be passed on as
    // the forwarded host and written into the log. Empty (a request to an `http` URI always
    // names a host), or holding what RFC 3986 lets a name hold but no DNS name or address
    // does (`127.0.0.1,evil.example`: read as two hosts by what reads it as a list) is refused
    // too: passed on, it would reach the backend without `X-Forwarded-Host`.
    if first.is_some_and(|h| !h.to_str().is_ok_and(crate::upstream::headers::valid_host)) {
        return Some("the Host header is not a host name or address with an optional port");
    }
    // The same of an HTTP/2 `:authority` (or an absolute target's host), which stands for Host
    // when none is sent: `alice@git.example` (RFC 9113, section 8.3.1, forbids the user part),
    // `git.example:99999`.
    if uri
        .authority()
        .is_some_and(|a| !crate::upstream::headers::valid_host(a.as_str()))
    {
        return Some(if version == Version::HTTP_2 {
            "the request's :authority is not a host name or address with an optional port"
        } else {
            "the request target's host is not a host name or address with an optional port"
        });
    }
    // HTTP/2's `:authority`, or an absolute request target (`GET http://host/... HTTP/1.1`),
    // names the host itself, and a server must take it over `Host` (RFC 9112, section 3.2.2);
    // one that names another is refused.
    if let (Some(host), Some(authority)) = (first, uri.authority()) {
        if !same_host(host.as_bytes(), authority, uri.scheme_str()) {
            return Some(if version == Version::HTTP_2 {
                "the Host header names another host than the request's :authority"
            } else {
                "the Host header names another host than the request target"
            });
        }
    }
    match (version, first) {
        (Version::HTTP_11, None) => Some("an HTTP/1.1 request needs a Host header"),
        // For `http` and `https` one of the two is a must (RFC 9113, section 8.3.1), as Host
        // is for HTTP/1.1.
        (Version::HTTP_2, None) if uri.authority().is_none() => {
            Some("an HTTP/2 request needs an :authority or a Host header")
        }
        _ => None,
    }
}

/// Whether a `Host` value names the same host and port as `authority`, a port left out being
/// the scheme's default (`git.example` is `git.example:80` for `http`).
fn same_host(host: &[u8], authority: &hyper::http::uri::Authority, scheme: Option<&str>) -> bool {
    if host.eq_ignore_ascii_case(authority.as_str().as_bytes()) {
        return true;
    }
    let Ok(host) = hyper::http::uri::Authority::try_from(host) else {
        return false;
    };
    let default = match scheme {
        Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
        Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
        _ => None,
    };
    let port = |a: &hyper::http::uri::Authority| a.port_u16().or(default);
    host.host().eq_ignore_ascii_case(authority.host()) && port(&host) == port(authority)
}

/// The longest request target (path and query) gitgate reads: 8 KiB, the request line nginx
/// takes by default (`large_client_header_buffers 4 8k`). No git request comes near it; a
/// longer one is answered `414` before it is classified, authenticated or forwarded.
pub const LONGEST_TARGET: usize = 8192;

/// Why a request target is too long to be read, if it is.
fn overlong_target(uri: &hyper::Uri) -> Option<String> {
    let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    (length > LONGEST_TARGET).then(|| {
        format!(
            "the request's path and query are {length} bytes long; gitgate reads at most \
             {LONGEST_TARGET}"
        )
    })
}

/// `e` and the errors under it, as one line ("error reading a body from connection: invalid
/// chunk size line").
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// What the client's request body has done so far (one allocation per forwarded request,
/// shared by the body on its way to the backend and the log line; a refused request's line
/// shares its thread's [`Inbound::unread`]).
#[derive(Default)]
pub(crate) struct Inbound {
    pub(crate) bytes: AtomicU64,
    /// The body ended with an error: bad chunked framing, or the client stopped sending.
    pub(crate) broke: AtomicBool,
    /// That error, for the log (the backend's failure on it would blame the backend).
    pub(crate) broke_because: std::sync::OnceLock<String>,
    /// The body broke because its connection ended (the client closed it, or it was reset).
    pub(crate) closed: AtomicBool,
    /// The body broke because its connection was reset: the client is gone. A client that
    /// closed it (a FIN) may have closed only its sending side and still read the answer.
    pub(crate) reset: AtomicBool,
    /// A push's commands, read as its body passes (unset for every other request: one word of
    /// this allocation, not the reader's).
    pub(crate) push: std::sync::OnceLock<Box<std::sync::Mutex<PushCommands>>>,
}

impl Inbound {
    /// What a request whose body nobody reads (a refused one) logs: nothing read, nothing
    /// broken — one per thread, shared, so that a refusal allocates none. Nothing writes into
    /// it: only a forwarded request's body is followed, into an `Inbound` of its own.
    pub(crate) fn unread() -> Arc<Inbound> {
        thread_local! {
            static UNREAD: Arc<Inbound> = Arc::default();
        }
        UNREAD.with(Arc::clone)
    }
}

/// How a request body's connection ended under it.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Closed before the body's end: gone, or closed for sending only (a half-close).
    Closed,
    /// Reset, or aborted: gone.
    Reset,
}

/// Whether (and how) a request body's error is its connection's end, not a malformed body.
fn connection_ended(e: &hyper::Error) -> Option<Ended> {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let io =
        std::error::Error::source(e).and_then(|source| source.downcast_ref::<std::io::Error>());
    match io.map(std::io::Error::kind) {
        Some(BrokenPipe | ConnectionAborted | ConnectionReset) => Some(Ended::Reset),
        Some(UnexpectedEof) => Some(Ended::Closed),
        _ if e.is_incomplete_message() => Some(Ended::Closed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{
        a_compressed_body, body_on_a_get, host_problem, overlong_target, user_for_the_log,
        AuditScratch, Inbound, LONGEST_TARGET,
    };
    use crate::request_log::PATH_KEPT;
    use hyper::header::HOST;
    use hyper::{HeaderMap, Uri, Version};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    fn hosts(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HOST, v.parse().unwrap());
        }
        h
    }

    /// Only gzip and x-gzip (in any case, as the backend is told them) make a compressed
    /// body: `identity`, or an empty `Content-Encoding`, leaves a push's commands readable.
    #[test]
    fn only_a_gzip_coding_makes_a_body_compressed() {
        use hyper::header::CONTENT_ENCODING;
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(CONTENT_ENCODING, v.parse().unwrap());
            }
            h
        };
        for compressed in [
            &["gzip"][..],
            &["x-gzip"],
            &["GZip"],
            &["gzip,"],
            &["", "gzip"],
        ] {
            assert!(a_compressed_body(&with(compressed)), "{compressed:?}");
        }
        for plain in [&[][..], &["identity"], &["Identity"], &[""], &[" , "]] {
            assert!(!a_compressed_body(&with(plain)), "{plain:?}");
        }
    }

    #[test]
    fn a_get_or_head_that_says_it_has_a_body_is_refused() {
        use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
        use hyper::Method;
        let with = |name, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            h
        };
        for method in [Method::GET, Method::HEAD] {
            assert!(body_on_a_get(&method, &with(CONTENT_LENGTH, "5")).is_some());
            assert!(body_on_a_get(&method, &with(TRANSFER_ENCODING, "chunked")).is_some());
            assert_eq!(body_on_a_get(&method, &with(CONTENT_LENGTH, "0")), None);
            assert_eq!(body_on_a_get(&method, &HeaderMap::new()), None);
        }
        assert_eq!(
            body_on_a_get(&Method::POST, &with(CONTENT_LENGTH, "5")),
            None
        );
    }

    /// The fixed answer to a wrong token is the one [`super::text`] makes of its reason: the
    /// same status, fields and body.
    #[tokio::test]
    async fn the_fixed_refusal_of_a_wrong_token_is_what_text_makes_of_it() {
        use http_body_util::BodyExt;
        use hyper::StatusCode;
        let fixed = super::said(StatusCode::UNAUTHORIZED, super::INVALID_TOKEN_SAID);
        let made = super::text(StatusCode::UNAUTHORIZED, super::INVALID_TOKEN);
        assert_eq!(fixed.status(), made.status());
        assert_eq!(fixed.headers(), made.headers());
        let body = |r: hyper::Response<super::ResponseBody>| async {
            r.into_body().collect().await.unwrap().to_bytes()
        };
        assert_eq!(body(fixed).await, body(made).await);
    }

    /// An absolute target of another scheme than http or https (`GET ftp://git.example.com/
    /// team/app.git/info/refs`, which hyper takes) asks for what gitgate does not serve: it was
    /// answered as the same path over http, a guess at what was meant.
    #[test]
    fn an_absolute_target_of_another_scheme_is_refused() {
        let host = hosts(&["git.example.com"]);
        for target in [
            "ftp://git.example.com/team/app.git/info/refs",
            "FTP://git.example.com/team/app.git/info/refs",
            "ws://git.example.com/team/app.git/info/refs",
            "git://git.example.com/team/app.git/info/refs",
        ] {
            let uri: Uri = target.parse().unwrap();
            let problem = host_problem(Version::HTTP_11, &uri, &host);
            assert!(
                problem.is_some_and(|p| p.contains("neither http nor https")),
                "{target}: {problem:?}"
            );
        }
        for target in [
            "http://git.example.com/team/app.git/info/refs",
            "HTTPS://git.example.com/team/app.git/info/refs",
            "/team/app.git/info/refs",
        ] {
            let uri: Uri = target.parse().unwrap();
            assert_eq!(
                host_problem(Version::HTTP_11, &uri, &host),
                None,
                "{target}"
            );
        }
    }

    /// The 401 for a wrong token, its fields made once, is what `Gate::challenged` makes of
    /// [`super::said`]'s: the same status, body, and fields in the same order (as they go out);
    /// without a challenge (a realm that cannot be a header value), none.
    #[tokio::test]
    async fn the_wrong_token_401_with_fields_made_once_is_the_challenged_one() {
        use http_body_util::BodyExt;
        use hyper::header::WWW_AUTHENTICATE;
        use hyper::StatusCode;
        let challenge = super::basic_challenge("gitgate");
        let fields = |r: &hyper::Response<super::ResponseBody>| {
            r.headers()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        let body = |r: hyper::Response<super::ResponseBody>| async {
            r.into_body().collect().await.unwrap().to_bytes()
        };
        for challenge in [challenge.clone(), None] {
            let made_once = super::said_with(
                StatusCode::UNAUTHORIZED,
                super::INVALID_TOKEN_SAID,
                super::wrong_token_fields(challenge.as_ref()),
            );
            let mut by_hand = super::said(StatusCode::UNAUTHORIZED, super::INVALID_TOKEN_SAID);
            if let Some(v) = &challenge {
                by_hand.headers_mut().insert(WWW_AUTHENTICATE, v.clone());
            }
            assert_eq!(made_once.status(), by_hand.status());
            assert_eq!(fields(&made_once), fields(&by_hand));
            assert_eq!(body(made_once).await, body(by_hand).await);
        }
        assert!(challenge.is_some());
    }

    #[test]
    fn an_http11_request_carries_one_host() {
        let uri: Uri = "/team/app.git/info/refs".parse().unwrap();
        let v11 = Version::HTTP_11;
        assert_eq!(host_problem(v11, &uri, &hosts(&["git.example.com"])), None);
        assert!(host_problem(v11, &uri, &hosts(&[]))
            .unwrap()
            .contains("needs a Host"));
        let two = hosts(&["a.example", "b.example"]);
        assert!(host_problem(v11, &uri, &two).unwrap().contains("only one"));
        assert_eq!(host_problem(Version::HTTP_10, &uri, &hosts(&[])), None);
        // An absolute target names the host: Host must agree with it.
        let absolute: Uri = "http://git.example.com/team/app.git".parse().unwrap();
        let same = hosts(&["Git.Example.com"]);
        assert_eq!(host_problem(v11, &absolute, &same), None);
        let other = hosts(&["evil.example"]);
        assert!(host_problem(v11, &absolute, &other)
            .unwrap()
            .contains("request target"));
        // The default port said or left out is the same host; another port is not.
        let default_port = hosts(&["git.example.com:80"]);
        assert_eq!(host_problem(v11, &absolute, &default_port), None);
        // Its leading zeros are the number's, as the config's URLs read them.
        let padded = hosts(&["git.example.com:00080"]);
        assert_eq!(host_problem(v11, &absolute, &padded), None);
        let other_port = hosts(&["git.example.com:8080"]);
        assert!(host_problem(v11, &absolute, &other_port).is_some());
        // HTTP/1.0 may leave Host out, but one that disagrees is refused as well.
        assert_eq!(host_problem(Version::HTTP_10, &absolute, &hosts(&[])), None);
        assert!(host_problem(Version::HTTP_10, &absolute, &other).is_some());
        // A value that is no host and port is refused, as two are.
        for bad in [
            "]]::[[",
            "[::1",
            "[::1]:99999",
            ":::",
            "[]",
            "a b",
            "host:80:80",
            "h@x",
            "host:65536",
            "host:0",
            "host:00000",
            "[::1]:0",
            "[::1]x",
            "host/x",
            "",
            "127.0.0.1,evil.example",
            "a,,b",
            ",",
            "host;x=1",
            "h%41st",
            "host!",
        ] {
            let problem = host_problem(v11, &uri, &hosts(&[bad]));
            assert!(
                problem.is_some_and(|p| p.contains("not a host name or address")),
                "{bad}: {problem:?}"
            );
        }
        for good in [
            "git.example.com",
            "git.example.com:8443",
            "127.0.0.1",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::1]",
            "git_host.local",
            "xn--bcher-kva.example",
            "host:",
            "[::1]:",
            "host:00080",
        ] {
            assert_eq!(host_problem(v11, &uri, &hosts(&[good])), None, "{good}");
        }
    }

    #[test]
    fn an_http2_host_must_agree_with_its_authority() {
        let v2 = Version::HTTP_2;
        let uri: Uri = "https://git.example.com:8443/team/app.git".parse().unwrap();
        assert_eq!(host_problem(v2, &uri, &hosts(&[])), None);
        let same = hosts(&["GIT.example.com:8443"]);
        assert_eq!(host_problem(v2, &uri, &same), None);
        let other = hosts(&["intranet.example"]);
        assert!(host_problem(v2, &uri, &other)
            .unwrap()
            .contains(":authority"));
        let port = hosts(&["git.example.com"]);
        assert!(host_problem(v2, &uri, &port).is_some());
        let two = hosts(&["git.example.com:8443", "git.example.com:8443"]);
        assert!(host_problem(v2, &uri, &two).unwrap().contains("only one"));
        // No :authority (a client may send Host alone): nothing to disagree with.
        let path_only: Uri = "/team/app.git".parse().unwrap();
        assert_eq!(host_problem(v2, &path_only, &other), None);
        // Neither: no host named at all, as an HTTP/1.1 request without Host.
        assert!(host_problem(v2, &path_only, &hosts(&[]))
            .unwrap()
            .contains("needs an :authority or a Host header"));
        // An :authority that is no host and optional port is refused as such a Host is: with
        // a user part (RFC 9113 forbids it; `curl -H 'Host: alice@...'` sends one), or a port
        // past 65535.
        for bad in [
            "https://alice@git.example.com/team/app.git",
            "https://ggt_x@git.example.com/team/app.git",
            "https://git.example.com:99999/team/app.git",
            "https://git.example.com:0/team/app.git",
        ] {
            let uri: Uri = bad.parse().unwrap();
            assert_eq!(
                host_problem(v2, &uri, &hosts(&[])),
                Some(
                    "the request's :authority is not a host name or address with an optional port"
                ),
                "{bad}"
            );
        }
        // The same of an HTTP/1.1 request's absolute target.
        let absolute: Uri = "http://alice@git.example.com/team/app.git".parse().unwrap();
        assert!(
            host_problem(Version::HTTP_11, &absolute, &hosts(&["git.example.com"]))
                .unwrap()
                .contains("request target's host")
        );
    }

    /// A port left out is the scheme's default, for `https` as for `http`: `git.example.com`
    /// and `git.example.com:443` are one host under `https`, and port 80 is not its default.
    #[test]
    fn an_https_authority_without_a_port_is_port_443() {
        let v2 = Version::HTTP_2;
        let uri: Uri = "https://git.example.com/team/app.git".parse().unwrap();
        assert_eq!(
            host_problem(v2, &uri, &hosts(&["git.example.com:443"])),
            None
        );
        assert!(host_problem(v2, &uri, &hosts(&["git.example.com:80"])).is_some());
        let explicit: Uri = "https://git.example.com:443/team/app.git".parse().unwrap();
        assert_eq!(
            host_problem(v2, &explicit, &hosts(&["git.example.com"])),
            None
        );
        assert!(host_problem(v2, &explicit, &hosts(&["git.example.com:8443"])).is_some());
    }

    /// A refused request's log line shares its thread's `Inbound`, which says nothing was read
    /// (no allocation per refusal); another thread has its own, and a forwarded request gets a
    /// fresh one (`Gate::handle`), never the shared one.
    #[test]
    fn a_refused_requests_inbound_is_its_threads_and_says_nothing_was_read() {
        let one = Inbound::unread();
        assert!(Arc::ptr_eq(&one, &Inbound::unread()), "one per thread");
        assert_eq!(one.bytes.load(Ordering::Relaxed), 0);
        assert!(!one.broke.load(Ordering::Relaxed));
        assert!(!one.closed.load(Ordering::Relaxed));
        assert!(!one.reset.load(Ordering::Relaxed));
        assert!(one.broke_because.get().is_none());
        assert!(one.push.get().is_none());
        let other = std::thread::spawn(|| Arc::as_ptr(&Inbound::unread()) as usize)
            .join()
            .unwrap();
        assert_ne!(other, Arc::as_ptr(&one) as usize, "another thread's own");
    }

    /// The log holds a user name as `admit` always wrote it (the name, `<not a user name>`, or
    /// none for an empty one), and the policy gets the name as sent, whichever holds it.
    #[test]
    fn a_basic_user_name_is_moved_into_the_log_unless_it_logs_otherwise() {
        let sent = String::from("alice");
        let at = sent.as_ptr();
        let (logged, unlogged) = user_for_the_log(Some(sent));
        assert_eq!(logged.as_deref(), Some("alice"));
        assert_eq!(logged.map(|l| l.as_ptr()), Some(at), "moved, not copied");
        assert_eq!(unlogged, None);
        for (sent, logged) in [("Alice", "<not a user name>"), ("", "-")] {
            let (l, u) = user_for_the_log(Some(sent.to_string()));
            assert_eq!(l.as_deref().unwrap_or("-"), logged, "{sent}");
            // As `admit` reads it for the policy.
            assert_eq!(
                u.as_deref().or(l.as_deref()),
                Some(sent),
                "{sent}: the policy sees what was sent"
            );
        }
        assert_eq!(user_for_the_log(None), (None, None), "Bearer");
    }

    #[test]
    fn an_audit_failures_source_and_detail_are_each_refusals_own() {
        let mut scratch = AuditScratch {
            ip: None,
            source: String::new(),
            detail: String::new(),
        };
        let mut fill = |ip: &str, reason, repo| {
            let (source, detail) = scratch.fill(ip.parse().unwrap(), reason, repo);
            (source.to_string(), detail.to_string())
        };
        let spelled = |source: &str, detail: &str| (source.to_string(), detail.to_string());
        assert_eq!(
            fill("192.0.2.10", "invalid token", Some("team/app")),
            spelled("192.0.2.10", "invalid token (repo team/app)")
        );
        // The same address again, a shorter one, then another family.
        assert_eq!(
            fill("192.0.2.10", "expired", None),
            spelled("192.0.2.10", "expired (repo -)")
        );
        assert_eq!(
            fill("192.0.2.1", "invalid token", Some("a/b")),
            spelled("192.0.2.1", "invalid token (repo a/b)")
        );
        assert_eq!(
            fill("2001:db8::1", "invalid token", Some("a/b")),
            spelled("2001:db8::1", "invalid token (repo a/b)")
        );
        // A repository anyone may name without credentials is kept as a log keeps it.
        let long = format!("team/{}", "a".repeat(5000));
        let (_, detail) = fill("2001:db8::1", "invalid token", Some(&long));
        assert_eq!(
            detail,
            format!("invalid token (repo {}...)", &long[..PATH_KEPT])
        );
    }

    #[test]
    fn a_target_over_8_kib_is_too_long() {
        let uri = |target: &str| target.parse::<hyper::Uri>().unwrap();
        let at_most = format!("/team/{}", "a".repeat(LONGEST_TARGET - 6));
        assert_eq!(overlong_target(&uri(&at_most)), None);
        // The query counts: the whole target is what a proxy's request line holds.
        let with_query = format!("{at_most}?x");
        assert_eq!(
            overlong_target(&uri(&with_query)).as_deref(),
            Some("the request's path and query are 8194 bytes long; gitgate reads at most 8192")
        );
    }
}
