//! Where allowed requests go. The upstream only moves bytes: by the time a request gets here it has
//! been classified, authenticated and authorised, and it carries the canonical path and query that
//! the policy checked — never the client's raw ones.
//!
//! - [`cgi`]: `git http-backend` run by gitgate itself (the embedded default);
//! - [`http`]: an existing git server reached over HTTP(S), with [`headers`] deciding what
//!   crosses in each direction, and `framing` telling from git's own pkt-lines whether its
//!   answer came whole (an HTTP server can end cleanly an answer its git process broke off).

pub mod cgi;
pub(crate) mod framing;
pub mod headers;
pub mod http;
pub mod lookup;
pub mod patience;
pub mod pool;
mod progress;
pub mod rechunk;
pub mod secret;
pub mod stop;

use std::fmt;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use crate::gate::ResponseBody;
use crate::git::{GitRequest, Operation, Service};
use crate::policy::Identity;
use crate::request_id::RequestSource;

pub use cgi::CgiBackend;
pub use http::HttpBackend;
pub use progress::{MalformedRequest, OverRequestBuffer, UploadStalled};

/// The configured backend.
pub enum Upstream {
    /// `git http-backend` (or another CGI program) run by gitgate itself.
    Cgi(CgiBackend),
    /// An existing git server over HTTP(S).
    Http(Box<HttpBackend>),
}

/// Why a request could not be forwarded: the status to answer with (`502` when the backend
/// failed, `504` when it did not answer in time) and a one-line reason for the git user.
#[derive(Debug)]
pub struct ForwardError {
    pub status: StatusCode,
    /// For the client (git shows it as `remote: ...`).
    pub message: String,
    /// For the server's log only: what the backend said can name server paths.
    pub detail: Option<String>,
    /// Whose failure it is: only the backend's count as upstream errors.
    pub fault: Fault,
    /// When to try again, for a `503` that knows (an upstream's own `Retry-After`, or the CGI
    /// runner's count of git processes being full): passed on with the reason.
    pub retry_after: Option<HeaderValue>,
}

/// Who a failed forward is down to, for the log's level and the upstream-error metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Unreachable, timed out, crashed, or an answer gitgate cannot pass on.
    Backend,
    /// The client (its upload stopped arriving).
    Client,
    /// This server's own setup (two directories answer to one repository, or one is reached
    /// through a link, or lies inside another repository: no backend asked; or a request over
    /// `[upstream] max_request_buffer_mib`, which git http-backend refused).
    Server,
    /// This server is at its cap of backend processes (`[upstream] max_processes`): no backend
    /// asked. Said in the log where the cap is reached, once a minute, not per request.
    Busy,
    /// This server is stopping, and the backend's answer had not begun when its grace period
    /// was nearly over.
    Stopping,
    /// Asked again after it waited for a backend process, the gate no longer lets the request
    /// in (a token revoked meanwhile, say): no backend asked. The gate answers it as it answers
    /// any refusal of its credentials or permission.
    Refused,
}

/// Says that a git process could not be started for want of processes, file descriptors or
/// memory (`EAGAIN`, `EMFILE`, `ENFILE`, `ENOMEM`), naming the limit to raise
/// ([`cgi::CgiError::shortage`]): at once, then at most once a minute with how many since — a
/// burst of clones past the limit would otherwise write one error line per request.
fn out_of_processes_or_descriptors(e: &cgi::CgiError) {
    use crate::repeats::{Due, SaidInTime};
    static SAID: std::sync::OnceLock<std::sync::Arc<SaidInTime>> = std::sync::OnceLock::new();
    let said = SAID
        .get_or_init(|| std::sync::Arc::new(SaidInTime::new(std::time::Duration::from_secs(60))));
    let say = |times: u64, error: &str, shortage: &str| {
        tracing::warn!(
            times,
            error = %crate::log_value::LogText(error),
            "cannot start a git process: this process is out of {shortage}; git requests are \
             answered 503 until some come free"
        );
    };
    let (error, shortage) = (e.to_string(), e.shortage());
    if let Some(times) = said.with(|r| r.failed(std::time::Instant::now())) {
        say(times, &error, shortage);
    }
    said.look_again_later(false, move |due| {
        if let Due::Unsaid(times) = due {
            say(times, &error, shortage);
        }
    });
}

/// The most of a CGI's error answer read to see whether it says anything, and for how long.
const ERROR_BODY_MAX: usize = 64 * 1024;
const ERROR_BODY_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What git is told of a request body that broke off (bad chunked framing, a client that
/// stopped sending, a length not reached) before its answer: a `400`, the client's doing.
pub const BODY_BROKE: &str = "the request body was malformed or ended early (bad chunked \
                              framing, or the client stopped sending)";

/// A CGI's `4xx` or `5xx` answer, with a reason when it gave none. `git http-backend` answers
/// a repository it will not serve (one owned by another user: "detected dubious ownership")
/// with a bare `500`, and a push to a repository that does not take pushes over HTTP
/// (`http.receivepack` off: "Service not enabled") with a bare `403`, and says why only on
/// stderr, which goes to gitgate's log; git would print nothing but the status, and a user
/// would blame their token. Such an answer is small and whole by now, so it is read first.
async fn with_a_reason(
    resp: Response<cgi::CgiBody>,
    git_req: &GitRequest,
    git_http_backend: bool,
) -> Response<ResponseBody> {
    use http_body_util::{BodyExt, Full, Limited};
    let (mut parts, body) = resp.into_parts();
    let read = tokio::time::timeout(
        ERROR_BODY_WITHIN,
        Limited::new(body, ERROR_BODY_MAX).collect(),
    )
    .await;
    match read.map(|r| r.map(|c| c.to_bytes())) {
        Ok(Ok(said)) if !said.trim_ascii().is_empty() => {
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            let body = Full::new(said)
                .map_err(|never| match never {})
                .boxed_unsync();
            Response::from_parts(parts, body)
        }
        _ => crate::gate::text(
            parts.status,
            &unexplained(parts.status, git_req, git_http_backend),
        ),
    }
}

/// What git is told of a CGI's `4xx`/`5xx` answer that came without a word; what a bare `403`
/// to a push means only when the CGI is `git http-backend` itself (`git_http_backend`).
fn unexplained(status: StatusCode, git_req: &GitRequest, git_http_backend: bool) -> String {
    if status.is_server_error() {
        return format!(
            "the git backend failed ({status}) without saying why to the client; the server's \
             log has its error output"
        );
    }
    // `git archive --remote` over HTTP (protocol v2's POST to `git-upload-archive`): an older
    // git http-backend (2.39 here) does not serve it at all (a bare `404`, "Request not
    // supported", which the `404` below would tell as a repository git cannot open), a newer
    // one (2.47 here) not where `http.uploadarchive` is false (a bare `403`, "Service not
    // enabled").
    let archive = matches!(
        git_req.operation,
        Operation::Advertise(Service::UploadArchive) | Operation::Rpc(Service::UploadArchive)
    );
    if archive && git_http_backend {
        return format!(
            "git http-backend refused git-upload-archive, git archive --remote ({status}): an older \
             git http-backend does not serve it over HTTP, a newer one not with \
             http.uploadarchive false; your token was accepted"
        );
    }
    // A dumb-HTTP file that is not there: git asks for some that may well be missing
    // (`objects/info/alternates`), and goes on without a word.
    if status == StatusCode::NOT_FOUND && git_req.operation == Operation::Dumb {
        return format!(
            "no such file in repository '{}' ({})",
            git_req.repo, git_req.backend_path
        );
    }
    // git http-backend's `404` to a smart request is its `Not a git repository` (on stderr
    // only): gitgate answers for a repository that is not there itself, so this one is, but
    // git cannot open it — a `HEAD` it cannot read, `objects` or `refs` gitgate's user may not
    // enter. Not the client's mistake that git's own "repository not found" would suggest.
    if status == StatusCode::NOT_FOUND && git_http_backend {
        return format!(
            "repository '{}' is on this server, but git cannot open it (damaged, or not readable \
             by the server's user); the server's log has git's error output",
            git_req.repo
        );
    }
    // Only receive-pack writes: its advertisement and its pack.
    let push = git_req.access == crate::permission::Access::Write;
    let hint = if status == StatusCode::FORBIDDEN && push && git_http_backend {
        " (git http-backend refuses pushes so to a repository that does not take them over \
         HTTP, http.receivepack false; your token was accepted)"
    } else {
        ""
    };
    format!(
        "the git backend refused this request ({status}) without saying why to the client{hint}; \
         the server's log has its error output"
    )
}

/// Why the CGI backend is not asked for `repo` (see [`cgi::RepoDir`]), in words for the git
/// user; no path on the server's disk is named.
fn not_served(repo: &crate::git::RepoPath, why: cgi::NotServed) -> ForwardError {
    let server = |status, message: String| ForwardError {
        status,
        message,
        detail: None,
        fault: Fault::Server,
        retry_after: None,
    };
    match why {
        cgi::NotServed::Missing => ForwardError {
            status: StatusCode::NOT_FOUND,
            message: format!("repository '{repo}' not found"),
            detail: None,
            fault: Fault::Client,
            retry_after: None,
        },
        cgi::NotServed::Doubled => server(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{repo}.git has a {repo}.git.git beside it, which git http-backend could serve \
                 in its place; ask this server's administrator to remove or rename it"
            ),
        ),
        cgi::NotServed::Indirect => server(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{repo} is reached on this server through a symbolic link or a file where a \
                 directory should be (git reads a file there as a gitfile), which could lead git \
                 to another repository than the one authorised; ask its administrator to make \
                 it a real directory under the project root"
            ),
        ),
        // A request's path, not the server's state: refused like too little permission.
        cgi::NotServed::Nested => ForwardError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "{repo} lies inside another repository's folder, and gitgate does not serve a \
                 repository nested in another (whoever can push to that one could have written it)"
            ),
            detail: None,
            fault: Fault::Client,
            retry_after: None,
        },
        // Counted and logged as the backend failing: storage gone is an outage, not a
        // repository the client named wrongly (`/readyz` says so too).
        cgi::NotServed::RootUnavailable => ForwardError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "this server's repositories are unavailable right now (its project root \
                      cannot be read); tell its administrator"
                .into(),
            detail: None,
            fault: Fault::Backend,
            retry_after: None,
        },
        cgi::NotServed::Unreadable => server(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "this server may not read the folder of {repo} (a permission on its disk is \
                 wrong: it is not a missing repository); tell its administrator"
            ),
        ),
        cgi::NotServed::Both => server(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "two repositories on this server answer to {repo} ({repo} and {repo}.git); ask \
                 its administrator to rename one"
            ),
        ),
    }
}

/// The answer to a request whose backend had not begun to answer when the stop's grace period
/// was nearly over (see [`stop`]): `503`, try again — or, for a push whose pack was all sent,
/// a word that it may still be applied, since the backend may go on with it.
pub fn stopped_before_the_answer(git_req: &GitRequest, all_sent: bool) -> ForwardError {
    let push = git_req.operation == Operation::Rpc(Service::ReceivePack);
    ForwardError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: if push && all_sent {
            "the server is stopping, and the git server had not answered this push before it \
             did; the push may still be applied: fetch to see before pushing again"
        } else {
            "the server is stopping, and the git server had not answered before it did; try \
             again in a moment"
        }
        .to_owned(),
        detail: None,
        fault: Fault::Stopping,
        retry_after: Some(HeaderValue::from_static("5")),
    }
}

impl ForwardError {
    pub fn bad_gateway(message: impl Into<String>) -> ForwardError {
        ForwardError {
            status: StatusCode::BAD_GATEWAY,
            message: message.into(),
            detail: None,
            fault: Fault::Backend,
            retry_after: None,
        }
    }

    pub fn gateway_timeout(message: impl Into<String>) -> ForwardError {
        ForwardError {
            status: StatusCode::GATEWAY_TIMEOUT,
            ..ForwardError::bad_gateway(message)
        }
    }
}

/// The message and, for the log, the detail.
impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.detail {
            Some(detail) => write!(f, " ({detail})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ForwardError {}

impl Upstream {
    /// Send the authorised request on and stream the answer back. The source's `peer` is the
    /// connection's address (the HTTP upstream builds `X-Forwarded-For` from it), its `client`
    /// the address the request comes from once trusted proxies are seen through (the CGI's
    /// `REMOTE_ADDR`), its `id` the one the CGI backend's log lines carry.
    ///
    /// `still_allowed` is asked again before a backend starts if the request had to wait for
    /// one (see [`cgi::CgiRequest::still_allowed`]); `false` is a [`Fault::Refused`].
    pub async fn forward<B>(
        &self,
        parts: &Parts,
        body: B,
        git_req: &GitRequest,
        identity: &Identity,
        source: RequestSource,
        still_allowed: Option<&dyn cgi::StillAllowed>,
    ) -> Result<Response<ResponseBody>, ForwardError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let RequestSource {
            client,
            id: request_id,
            ..
        } = source;
        match self {
            Upstream::Cgi(backend) => {
                let path_info = match backend.path_info(git_req) {
                    Ok(path_info) => path_info,
                    Err(why) => return Err(not_served(&git_req.repo, why)),
                };
                let req = cgi::CgiRequest {
                    method: &parts.method,
                    path_info: &path_info,
                    query: git_req.query.as_deref(),
                    headers: &parts.headers,
                    remote_user: &identity.user,
                    token_id: &identity.token_id,
                    remote_addr: client.ip(),
                    request_id,
                    still_allowed,
                };
                let resp = backend.serve(req, body).await.map_err(|e| {
                    // The client's doing, said in full (it names no server path).
                    let client = |status| ForwardError {
                        status,
                        message: e.to_string(),
                        detail: None,
                        fault: Fault::Client,
                        retry_after: None,
                    };
                    match e {
                        cgi::CgiError::RequestBroke | cgi::CgiError::Malformed(_) => {
                            return client(StatusCode::BAD_REQUEST)
                        }
                        cgi::CgiError::Busy(busy) => {
                            return ForwardError {
                                status: StatusCode::SERVICE_UNAVAILABLE,
                                message: match busy.why {
                                    cgi::Full::AllInUse => format!(
                                        "the server is busy: all {} of its git processes were in \
                                         use for {}s; try again in a moment",
                                        busy.max,
                                        busy.waited.as_secs()
                                    ),
                                    cgi::Full::Share { held } => format!(
                                        "the server is busy: this token has {held} of its {} git \
                                         processes, its share while others wait for theirs; try \
                                         again in a moment",
                                        busy.max
                                    ),
                                    cgi::Full::Stopping => "the server is stopping, and no git \
                                         process came free before it does; try again in a moment"
                                        .to_string(),
                                },
                                detail: Some(e.to_string()),
                                fault: Fault::Busy,
                                retry_after: Some(HeaderValue::from_static("5")),
                            }
                        }
                        cgi::CgiError::UploadStalled(_) => {
                            return client(StatusCode::REQUEST_TIMEOUT)
                        }
                        // A limit of this server's setup that a fetch met (git shows no reason
                        // for a refused POST; the log names the setting): not a backend that
                        // failed, to be counted and alerted on as one.
                        cgi::CgiError::TooLarge(_) => {
                            return ForwardError {
                                status: StatusCode::PAYLOAD_TOO_LARGE,
                                message: "this request is larger than the server's git takes \
                                          (a fetch naming very many refs); its administrator \
                                          can raise [upstream] max_request_buffer_mib"
                                    .to_string(),
                                detail: Some(e.to_string()),
                                fault: Fault::Server,
                                retry_after: None,
                            }
                        }
                        // Ended before its headers: git http-backend writes them before it
                        // starts the service, so nothing of a push was applied through it (a
                        // CGI program that answers only once done could have begun). Or ended
                        // while its body was still being fed: its input closed, a push fails.
                        cgi::CgiError::NoLongerAllowed => {
                            return ForwardError {
                                status: StatusCode::FORBIDDEN,
                                message: e.summary().to_string(),
                                detail: Some(e.to_string()),
                                fault: Fault::Refused,
                                retry_after: None,
                            }
                        }
                        cgi::CgiError::Stopped => {
                            return ForwardError {
                                detail: Some(e.to_string()),
                                ..stopped_before_the_answer(git_req, false)
                            }
                        }
                        _ => {}
                    }
                    let message = format!(
                        "the git backend failed: {}; the server's log has the details",
                        e.summary()
                    );
                    let base = match e {
                        cgi::CgiError::TimedOut(_) => ForwardError::gateway_timeout(message),
                        // This server's limits, not a backend that failed: counted and logged
                        // as the cap of processes is (busy; the log once a minute), so that
                        // an alert on backend failures does not fire for it.
                        _ if e.is_overload() => {
                            out_of_processes_or_descriptors(&e);
                            ForwardError {
                                status: StatusCode::SERVICE_UNAVAILABLE,
                                retry_after: Some(HeaderValue::from_static("5")),
                                fault: Fault::Busy,
                                ..ForwardError::bad_gateway(
                                    "the server cannot start another git process now; try again in a moment",
                                )
                            }
                        }
                        _ => ForwardError::bad_gateway(message),
                    };
                    ForwardError {
                        detail: Some(e.to_string()),
                        ..base
                    }
                })?;
                if resp.status().is_client_error() || resp.status().is_server_error() {
                    return Ok(with_a_reason(resp, git_req, backend.is_git_http_backend()).await);
                }
                Ok(resp.map(|b| b.boxed_unsync()))
            }
            Upstream::Http(backend) => {
                backend
                    .forward(parts, body, git_req, identity, source, still_allowed)
                    .await
            }
        }
    }

    /// Readiness: can the backend take requests now? `Err` says why not.
    pub async fn ready(&self) -> Result<(), String> {
        match self {
            Upstream::Cgi(backend) => backend.ready().await,
            Upstream::Http(backend) => backend.ready().await,
        }
    }

    /// At shutdown, within the grace period: wait until no push is finishing without its
    /// client (see [`CgiBackend::pushes_finished`]).
    pub async fn pushes_finished(&self) {
        if let Upstream::Cgi(backend) = self {
            backend.pushes_finished().await;
        }
    }

    /// At shutdown, as the drain begins: requests waiting for a backend process, or for their
    /// backend's answer to begin, are answered before `grace` ends; how many wait now.
    pub fn stopping(&self, grace: std::time::Duration) -> usize {
        match self {
            Upstream::Cgi(backend) => backend.stopping(grace),
            Upstream::Http(backend) => backend.stopping(grace),
        }
    }

    /// How many requests waiting for a backend process or its answer the stop has answered.
    pub fn answered_at_stop(&self) -> usize {
        match self {
            Upstream::Cgi(backend) => backend.answered_at_stop(),
            Upstream::Http(backend) => backend.answered_at_stop(),
        }
    }

    /// At shutdown, after the grace period: end pushes finishing without their client.
    pub fn stop_finishing(&self) {
        if let Upstream::Cgi(backend) = self {
            backend.stop_finishing();
        }
    }

    /// At shutdown: wait (briefly) until the backend processes this worker started have been
    /// reaped; how many are still running. Nothing to wait for over HTTP.
    pub async fn wait_until_reaped(&self) -> usize {
        match self {
            Upstream::Cgi(backend) => backend.wait_until_reaped().await,
            Upstream::Http(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::classify;

    #[test]
    fn a_wordless_refusal_is_told_for_what_it_is() {
        let alternates = classify("GET", "/team/app.git/objects/info/alternates", None, "/");
        let said = unexplained(StatusCode::NOT_FOUND, &alternates.unwrap(), true);
        assert_eq!(
            said,
            "no such file in repository 'team/app' (/team/app.git/objects/info/alternates)"
        );
        let push = classify("POST", "/team/app.git/git-receive-pack", None, "/").unwrap();
        let said = unexplained(StatusCode::FORBIDDEN, &push, true);
        assert!(said.contains("http.receivepack false"), "{said}");
        let said = unexplained(StatusCode::NOT_FOUND, &push, true);
        assert_eq!(
            said,
            "repository 'team/app' is on this server, but git cannot open it (damaged, or not \
             readable by the server's user); the server's log has git's error output"
        );
        let said = unexplained(StatusCode::NOT_FOUND, &push, false);
        assert!(
            said.starts_with("the git backend refused this request (404"),
            "{said}"
        );
        let said = unexplained(StatusCode::BAD_GATEWAY, &push, true);
        assert!(said.starts_with("the git backend failed (502"), "{said}");
        // An older git http-backend answers every `git archive --remote` with a bare `404`:
        // not a repository git cannot open.
        let archive = classify("POST", "/team/app.git/git-upload-archive", None, "/").unwrap();
        let said = unexplained(StatusCode::NOT_FOUND, &archive, true);
        assert!(
            said.starts_with(
                "git http-backend refused git-upload-archive, git archive --remote (404"
            ),
            "{said}"
        );
        let said = unexplained(StatusCode::NOT_FOUND, &archive, false);
        assert!(
            said.starts_with("the git backend refused this request (404"),
            "{said}"
        );
    }

    #[test]
    fn a_stop_tells_a_push_whose_pack_was_all_sent_that_it_may_still_be_applied() {
        let push = classify("POST", "/team/app.git/git-receive-pack", None, "/").unwrap();
        let fetch = classify("POST", "/team/app.git/git-upload-pack", None, "/").unwrap();
        let advert = classify(
            "GET",
            "/team/app.git/info/refs",
            Some("service=git-receive-pack"),
            "/",
        )
        .unwrap();
        let sent = stopped_before_the_answer(&push, true);
        assert_eq!(sent.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            sent.message.contains("the push may still be applied"),
            "{sent}"
        );
        assert_eq!(sent.retry_after, Some(HeaderValue::from_static("5")));
        for (req, all_sent) in [(&push, false), (&fetch, true), (&advert, true)] {
            let answer = stopped_before_the_answer(req, all_sent);
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                answer.message.ends_with("try again in a moment"),
                "{answer}"
            );
            assert!(matches!(answer.fault, Fault::Stopping));
        }
    }

    /// The word that `http.receivepack` refuses a push is said only of git http-backend:
    /// another CGI program's bare `403` may mean anything.
    #[test]
    fn a_bare_403_to_a_push_from_another_cgi_program_is_not_blamed_on_http_receivepack() {
        let push = classify("POST", "/team/app.git/git-receive-pack", None, "/").unwrap();
        let said = unexplained(StatusCode::FORBIDDEN, &push, false);
        assert!(!said.contains("http.receivepack"), "{said}");
        assert!(
            said.starts_with("the git backend refused this request (403"),
            "{said}"
        );
    }
}
