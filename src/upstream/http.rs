//! The HTTP backend: forward allowed requests to an existing git server (nginx + fcgiwrap,
//! Apache, Gitea, ...) over HTTP or HTTPS, on a TCP port or, on the same host, a Unix socket
//! (`[upstream] socket`: only processes that may open the socket's file can reach the server
//! around gitgate, where anything on the host can connect to a loopback port).
//!
//! - **Pooled keep-alive connections**, one small pool per worker ([`super::pool`]), never
//!   reused once idle for `pool_idle_timeout` (set below the upstream's own keep-alive, so
//!   gitgate never sends on a connection the upstream is closing). HTTPS is rustls, verified
//!   against a configured CA file and/or the system roots; never unverified.
//! - **Streaming, both ways, with backpressure.** The client's body goes out frame by frame as
//!   hyper asks for it, and the upstream's body comes back the same way; nothing is collected,
//!   so a multi-GB push or clone keeps memory flat.
//! - **Idle, not total, timeouts.** A big push may stream for many minutes before the upstream
//!   answers, so "the upstream timed out" means nothing moved — no request bytes out, no
//!   response — for `idle_timeout` (→ `504`); once the answer streams, a stall of the same
//!   length breaks the stream. Connecting has its own short timeout (→ `504`); a refused
//!   connection is a `502`.
//! - **The canonical request.** The path is `base_path` + the [`GitRequest`]'s canonical
//!   `backend_path`, the query its canonical query: the repository the policy checked is exactly
//!   the one the upstream serves. Headers go through [`super::headers`].

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::cgi::StillAllowed;
use super::framing::{AnswerFraming, WholeAt};
use super::headers::{self, Outbound, Redirect};
use super::patience::{Patience, Pause};
use super::pool::{self, ConnectError, Connection, Driving, Origin, OutBody, Pool};
use super::progress::{Progress, Silence, UploadStalled};
use super::secret::UpstreamSecret;
use super::stop::{StopClock, Stopped};
use super::{Fault, ForwardError};
use crate::body::{Batched, LengthUnsaid, Observed, Seen};
use crate::config::HttpUpstream;
use crate::gate::ResponseBody;
use crate::git::{GitRequest, Operation, Service};
use crate::network::Cidr;
use crate::permission::Access;
use crate::policy::Identity;
use crate::request_id::RequestSource;

/// How long `check` (and the start's log) waits for the upstream's answer to a plain `HEAD` of
/// its base path.
pub const PLAIN_ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The `User-Agent` of that `HEAD`, as the upstream's access log shows it.
pub const PLAIN_REQUEST_AGENT: &str = concat!(
    "gitgate/",
    env!("CARGO_PKG_VERSION"),
    " (checking the upstream)"
);

/// Forwards requests to one upstream git server.
pub struct HttpBackend {
    pool: Arc<Pool>,
    /// The upstream for log lines, readiness and `gitgate check`: `http://git.internal:8080/git`
    /// (its URL), and `via unix:/run/git.sock` after it when a socket is where gitgate connects.
    /// Made once per worker at the start and kept for the process's life, so that each answer's
    /// body can name it in its errors without a copy or a shared count.
    address: &'static str,
    /// The upstream's host and port, for recognising its redirects.
    origin: headers::UpstreamOrigin,
    /// gitgate's git prefix as clients see it: `""` for `/`, else like `/scm`.
    client_prefix: String,
    /// `Host` for every upstream request: the upstream's own authority.
    host: HeaderValue,
    base_path: String,
    identity_header: hyper::header::HeaderName,
    /// gitgate's own credentials for the upstream, shared by the workers (SIGHUP re-reads them).
    upstream_auth: Option<Arc<UpstreamSecret>>,
    trusted_proxies: Vec<Cidr>,
    /// How clients reach gitgate: `http` or `https`.
    proto: &'static str,
    idle_timeout: Duration,
    /// When a stop answers the requests still waiting for the upstream's answer.
    stop: StopClock,
    /// What the operator should hear at a start and from `gitgate check` (see
    /// [`HttpBackend::warnings`]).
    warnings: Vec<String>,
}

impl HttpBackend {
    /// Build the client: TLS roots, and the upstream credentials read at start (so a missing
    /// secret is a start-up error, not a failure on the first push). `git_prefix` is where
    /// clients find the repositories on gitgate (`[server] git_prefix`), for rewriting the
    /// upstream's redirects.
    pub fn new(
        cfg: &HttpUpstream,
        upstream_auth: Option<Arc<UpstreamSecret>>,
        trusted_proxies: Vec<Cidr>,
        tls_in_front: bool,
        git_prefix: &str,
    ) -> Result<HttpBackend, String> {
        let https = cfg.origin.scheme_str() == Some("https");
        let authority = cfg.origin.authority().ok_or("[upstream] url has no host")?;
        let host_name = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut warnings = Vec::new();
        let tls = if https {
            let (mut config, ca_warnings) = client_tls_config(cfg)?;
            warnings = ca_warnings;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host_name.clone())
                .map_err(|e| format!("[upstream] url: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let origin = Origin {
            socket: cfg.socket.clone(),
            host: host_name,
            port: port_of(authority, https),
            tls,
        };
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| "[upstream] url: the host cannot be a Host header".to_string())?;
        Ok(HttpBackend {
            pool: Arc::new(Pool::new(
                origin,
                cfg.connect_timeout,
                cfg.pool_idle_timeout,
            )),
            address: Box::leak(
                {
                    let origin = cfg.origin.to_string();
                    let base = if cfg.base_path == "/" {
                        ""
                    } else {
                        &cfg.base_path
                    };
                    match &cfg.socket {
                        None => format!("{}{base}", origin.trim_end_matches('/')),
                        Some(socket) => format!(
                            "{}{base} via unix:{}",
                            origin.trim_end_matches('/'),
                            socket.display()
                        ),
                    }
                }
                .into_boxed_str(),
            ),
            origin: headers::UpstreamOrigin::new(https, authority),
            client_prefix: git_prefix.trim_end_matches('/').to_string(),
            host,
            base_path: if cfg.base_path == "/" {
                String::new()
            } else {
                cfg.base_path.clone()
            },
            identity_header: cfg.identity_header.clone(),
            upstream_auth,
            trusted_proxies,
            proto: if tls_in_front { "https" } else { "http" },
            idle_timeout: cfg.idle_timeout,
            stop: StopClock::default(),
            warnings,
        })
    }

    /// What the operator should hear of this upstream's set-up that does not stop a start:
    /// CA certificates of `ca_file` left out for their dates.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// At shutdown: the requests still waiting for the upstream's answer are answered before
    /// `grace` ends (see [`StopClock`]); how many wait now.
    pub fn stopping(&self, grace: Duration) -> usize {
        self.stop.stopping(grace)
    }

    /// How many requests waiting for the upstream's answer the stop has answered.
    pub fn answered_at_stop(&self) -> usize {
        self.stop.answered()
    }

    /// Wait at most `deadline` for the upstream (its `idle_timeout`, if shorter, stays): see
    /// `server::answer_deadline`.
    pub fn with_answer_deadline(mut self, deadline: Duration) -> Self {
        self.idle_timeout = self.idle_timeout.min(deadline);
        self
    }

    /// The upstream request target for a classified request (origin form: base path +
    /// canonical path and query).
    fn target(&self, git_req: &GitRequest) -> Result<Uri, ForwardError> {
        let query = git_req.query.as_deref();
        let mut uri = String::with_capacity(
            self.base_path.len() + git_req.backend_path.len() + query.map_or(0, |q| q.len() + 1),
        );
        uri.push_str(&self.base_path);
        uri.push_str(&git_req.backend_path);
        if let Some(q) = query {
            uri.push('?');
            uri.push_str(q);
        }
        Uri::try_from(uri)
            .map_err(|e| ForwardError::bad_gateway(format!("cannot build the upstream URL: {e}")))
    }

    /// Send the authorised request upstream and stream the answer back.
    pub async fn forward<B>(
        &self,
        parts: &Parts,
        body: B,
        git_req: &GitRequest,
        identity: &Identity,
        source: RequestSource,
        still_allowed: Option<&dyn StillAllowed>,
    ) -> Result<Response<ResponseBody>, ForwardError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        // Every failure of the upstream's names it in the log (the client's message leaves it
        // out), whatever part of the exchange it came from.
        self.exchange(parts, body, git_req, identity, source, still_allowed)
            .await
            .map_err(|e| self.naming_upstream(e))
    }

    async fn exchange<B>(
        &self,
        parts: &Parts,
        body: B,
        git_req: &GitRequest,
        identity: &Identity,
        source: RequestSource,
        still_allowed: Option<&dyn StillAllowed>,
    ) -> Result<Response<ResponseBody>, ForwardError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let bodiless = body.is_end_stream();
        // A push goes up chunked, its length unsaid. Told a length (nginx's `fastcgi_param
        // CONTENT_LENGTH $content_length`, as the README's example has it), git http-backend
        // copies that many bytes to receive-pack itself and, when they stop short — a push cut
        // off on its way up, its client gone —, loops on the end of its input at full CPU for
        // good, holding one of fcgiwrap's few workers: a handful of such pushes and the upstream
        // answers nothing more. Without a length it hands its input to receive-pack, which
        // fails cleanly at the early end. (The embedded runner withholds `CONTENT_LENGTH` from
        // a push for the same reason.) Every git server takes chunked pushes: git sends large
        // ones so.
        let push = !bodiless && git_req.operation == Operation::Rpc(Service::ReceivePack);
        let body = LengthUnsaid::hiding(body, push);
        let activity = Progress::new();
        // Each frame of the client's body on its way upstream is activity; its end says the
        // upload is done (see `pool::Connection::detach`).
        let touched = activity.clone();
        // A body of known length is all sent with its last byte: hyper's client stops polling
        // it there, so an end flag that comes in a frame of its own (HTTP/2) is never seen.
        let mut unsent = body.size_hint().exact();
        // A body of unknown length goes up chunked (a push, a large fetch's negotiation), which
        // only an HTTP/1.1 server reads.
        let chunked = !bodiless && unsent.is_none();
        if bodiless || unsent == Some(0) {
            activity.finished();
        }
        let body = Observed::new(body, move |s: Seen<'_, B::Error>| {
            // Whether the upload waits for the client (its body was polled and had nothing)
            // rather than for the upstream (which stopped reading it): a stall is then the
            // client's.
            touched.waiting(matches!(s, Seen::Waiting));
            match s {
                Seen::Frame(frame) => {
                    touched.touch();
                    if let (Some(left), Some(data)) = (&mut unsent, frame.data_ref()) {
                        *left = left.saturating_sub(data.len() as u64);
                        if *left == 0 {
                            touched.finished();
                        }
                    }
                }
                Seen::Error(_) | Seen::Waiting => {}
                Seen::End => touched.finished(),
            }
        })
        .map_err(|e| io::Error::other(e.to_string()))
        .boxed_unsync();
        // Read once per request: a reload in between cannot give its two attempts two secrets.
        let upstream_auth = self.upstream_auth.as_ref().map(|s| s.value());
        let build = |body: OutBody| -> Result<Request<OutBody>, ForwardError> {
            let mut headers = headers::to_upstream(
                &parts.headers,
                &Outbound {
                    peer: source.peer.ip(),
                    trusted_proxies: &self.trusted_proxies,
                    proto: self.proto,
                    authority: parts.uri.authority().map(|a| a.as_str()),
                    identity_header: &self.identity_header,
                    user: &identity.user,
                    upstream_auth: upstream_auth.as_ref(),
                    request_id: source.id,
                },
            );
            headers.insert(HOST, self.host.clone());
            if push {
                headers.remove(hyper::header::CONTENT_LENGTH);
            }
            let mut req = Request::new(body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = self.target(git_req)?;
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = headers;
            Ok(req)
        };
        // A request without a body can be built again for a second attempt.
        let rebuild = bodiless.then_some(&build as &(dyn Fn(OutBody) -> _ + Sync));
        let req = build(body)?;

        // Wait for the answer while anything moves: the request body streaming out counts.
        // Whether a connection has been had, for what a timeout names (see `send`).
        let connected = AtomicBool::new(false);
        let sent = self.send(req, rebuild, still_allowed, &connected);
        tokio::pin!(sent);
        // At a stop, an answer that has not begun before the cut is answered by gitgate.
        let stop = self.stop.due();
        tokio::pin!(stop);
        let (resp, mut connection) = loop {
            let wait = self.idle_timeout.saturating_sub(activity.idle());
            tokio::select! {
                biased;
                r = &mut sent => break r.map_err(|e| {
                    unanswered_push(e, push && activity.is_finished())
                })?,
                Stopped = &mut stop => {
                    return Err(super::stopped_before_the_answer(
                        git_req,
                        activity.is_finished(),
                    ));
                }
                _ = tokio::time::sleep(wait) => {
                    if activity.idle() >= self.idle_timeout {
                        if !activity.is_finished() && activity.waiting_for_client() {
                            return Err(ForwardError {
                                status: StatusCode::REQUEST_TIMEOUT,
                                message: format!(
                                    "the request body stopped arriving: nothing came for {}s",
                                    self.idle_timeout.as_secs()
                                ),
                                detail: None,
                                fault: Fault::Client,
                                retry_after: None,
                            });
                        }
                        return Err(unanswered_push(
                            ForwardError::gateway_timeout(silent_upstream(
                                self.idle_timeout,
                                connected.load(Ordering::Relaxed),
                            )),
                            push && activity.is_finished(),
                        ));
                    }
                }
            }
        };

        if chunked && resp.version() == Version::HTTP_10 {
            // HTTP/1.0 defines no chunked body: most such servers took the request as bodiless
            // (a push read as empty, "Everything up-to-date" with no ref moved), some read it.
            return Err(ForwardError::bad_gateway(
                "the upstream git server speaks HTTP/1.0, and this request's body went to it \
                 chunked (git sends a push, and a large fetch's negotiation, so), which HTTP/1.0 \
                 does not define: whether it read the body is unknown — a push may or may not \
                 have been applied, so look at the repository before pushing again; gitgate \
                 needs an HTTP/1.1 upstream",
            ));
        }
        if push
            && resp.status().is_server_error()
            && !a_gateway_failure_page(resp.status(), resp.headers())
        {
            // git prints no reason for a failed POST ("RPC failed; HTTP 502", then "Everything
            // up-to-date", which it is not), and fcgiwrap, whose writes to a git that stopped
            // reading are refused, answers a bare "An error occurred while reading the request"
            // in place of git's own words (receive.maxInputSize's "pack exceeds maximum allowed
            // size"). The push's pack had gone up (the advertisement and the probe came back
            // whole): its git failed on it. Said where the operator looks. (A gateway's page is
            // said on its own, below.)
            tracing::warn!(
                request_id = %source.id,
                upstream = self.address,
                status = resp.status().as_u16(),
                "the upstream git server failed a push: git there stopped reading it or ended \
                 part-way, most often for a limit behind gitgate (git's receive.maxInputSize, \
                 which fcgiwrap answers with a bare 502 \"An error occurred while reading the \
                 request\"), a full disk or a hook that failed; git shows only \"RPC failed\", \
                 then \"Everything up-to-date\", which it is not; the upstream's error log, or \
                 git's stderr there, says which"
            );
        }
        if resp.status().is_informational() {
            // hyper's client passes 1xx answers on as final only when they are: a `101` it was
            // not asked for (gitgate never asks for an upgrade), which would leave the client's
            // connection switched to nothing.
            return Err(ForwardError::bad_gateway(format!(
                "the upstream git server answered {} as its final answer",
                resp.status()
            )));
        }
        if !crate::upstream::cgi::is_a_final_status(resp.status()) {
            // Three digits past 599, which hyper's client reads and RFC 9110 calls no status.
            return Err(ForwardError::bad_gateway(format!(
                "the upstream git server answered with status {}, which is no HTTP status (a \
                 final one is from 200 to 599)",
                resp.status().as_u16()
            )));
        }
        if let Some(length) = hyper::body::Body::size_hint(resp.body())
            .exact()
            .filter(|&n| i64::try_from(n).is_err())
        {
            // hyper reads lengths up to 2^64-3, but curl, and so git, holds none past i64::MAX
            // ("Overflow Content-Length"): passed on, it was ignored and the answer read to the
            // connection's close, where one cut short read as whole.
            return Err(ForwardError::bad_gateway(format!(
                "the upstream git server's answer says it is {length} bytes long \
                 (Content-Length), more than git can read"
            )));
        }
        if resp.status() == StatusCode::UNAUTHORIZED
            || resp.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED
        {
            // The client has already proven who it is to gitgate; a challenge from behind us is
            // about gitgate's own credentials, and passing it on would only make git prompt.
            return Err(ForwardError::bad_gateway(format!(
                "the upstream git server refused gitgate's request ({}); check [upstream.credentials]",
                resp.status()
            )));
        }
        if a_gateway_failure_page(resp.status(), resp.headers()) {
            // nginx's 502 when fcgiwrap is down, its 504 when the backend is slow: git prints
            // no HTML page, only "returned error: 502", and the operator would hear of it only
            // as a request line. Told and counted as gitgate's own failures to reach a backend
            // are (the upstream's connection, its page unread, is not used again). Its
            // `Retry-After` (a server in maintenance) goes with the words.
            return Err(ForwardError {
                status: resp.status(),
                retry_after: (resp.status() == StatusCode::SERVICE_UNAVAILABLE)
                    .then(|| resp.headers().get(RETRY_AFTER))
                    .flatten()
                    .filter(|v| a_retry_after(v.as_bytes()))
                    .cloned(),
                ..ForwardError::bad_gateway(format!(
                    "the upstream git server answered {} with a page git cannot show: what \
                     serves the repositories behind it may be down or slow; its log says more",
                    resp.status()
                ))
            });
        }
        if resp.status() == StatusCode::BAD_REQUEST && !plain_text(resp.headers()) {
            // A page git would show only as "returned error: 400": the upstream refused the
            // request as malformed (a header too large for it, say) — or it is nginx's answer to
            // plain HTTP on its TLS port ("The plain HTTP request was sent to HTTPS port"), and
            // Go's and Apache's alike, to every request. Its start tells which. (A git server's
            // own 400 is text, passed on.)
            // Read while driving the connection: a POST's is driven by the request alone
            // (see `super::pool`), and its page would otherwise never be read.
            let page = connection.exchange(page_start(resp.into_body())).await;
            let plain_http_on_tls = self.address.starts_with("http://")
                && PLAIN_HTTP_ON_TLS.iter().any(|said| {
                    page.windows(said.len())
                        .any(|w| w.eq_ignore_ascii_case(said))
                });
            let detail = if plain_http_on_tls {
                "the page says plain HTTP came to its https port: write https:// in [upstream] \
                 url (`gitgate check` asks it)"
            } else {
                "its page is not text; the upstream's own log says what it refused (a header too \
                 large for it, say)"
            };
            return Err(ForwardError {
                detail: Some(detail.into()),
                ..ForwardError::bad_gateway(
                    "the upstream git server answered 400 Bad Request with a page git cannot \
                     show; the server's log says more",
                )
            });
        }
        if resp.status() == StatusCode::FORBIDDEN && !plain_text(resp.headers()) {
            // git shows only "returned error: 403" for a refusal without text, and the user,
            // whom gitgate has just allowed, cannot tell whose it is. Most often it is git
            // http-backend refusing a push that came without REMOTE_USER: a web server set up
            // as `man git-http-backend` shows (Apache, lighttpd) does not make gitgate's
            // identity header that variable unless told to.
            // Told as the embedded runner tells git http-backend's bare refusals; not a
            // failure of the upstream's (a repository may be read-only on purpose), but the
            // operator hears what to look at.
            let (told, likely) = unexplained_refusal(git_req.access, &self.identity_header);
            tracing::warn!(request_id = %source.id, upstream = self.address, likely = %crate::log_value::LogText(&likely), "the upstream git server refused a request gitgate allowed, without saying why");
            return Ok(crate::gate::text(StatusCode::FORBIDDEN, told));
        }
        if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // git prints only `RPC failed; HTTP 413` for a push's: the upstream's limit on
            // request bodies (nginx's is 1 MB unless set; Apache's 1 GiB), which only its
            // operator can raise, is said where gitgate sees it. Passed on as it came.
            tracing::warn!(request_id = %source.id, upstream = self.address, "the upstream git server refused a request as too large (413): raise its limit on request bodies (nginx: client_max_body_size 0; Apache: LimitRequestBody 0)");
        }
        let asked = parts.uri.path_and_query();
        let inbound = parts;
        let (mut parts, body) = resp.into_parts();
        headers::to_client(&mut parts.headers).map_err(ForwardError::bad_gateway)?;
        headers::no_length_in_a_204(parts.status, &mut parts.headers);
        // Every Location is checked, as bytes: one that cannot be read as text, or a second
        // one, could name the upstream's internal address past the rewriting below.
        let locations: Vec<&HeaderValue> = parts.headers.get_all(LOCATION).iter().collect();
        let location = match locations.as_slice() {
            [] => None,
            [one] => match one.to_str() {
                Ok(text) => Some(text.to_owned()),
                Err(_) => return Err(unreadable_redirect(&locations)),
            },
            _ => return Err(unreadable_redirect(&locations)),
        };
        if let Some(location) = location.as_deref() {
            // gitgate's own origin as the client named it: a URL back to it stays on gitgate.
            // Not behind a front proxy: the scheme and port the client used are the proxy's
            // (a `Host` without a port reads as port 80, where the client may have used 443),
            // so only paths are taken as gitgate's there.
            let behind_a_proxy = self
                .trusted_proxies
                .iter()
                .any(|c| c.contains(source.peer.ip()));
            let gitgate = client_authority(inbound)
                .filter(|_| !behind_a_proxy)
                .map(|a| headers::UpstreamOrigin::exactly(self.proto == "https", &a));
            match headers::location_to_client(
                location,
                &self.origin,
                &self.base_path,
                &self.client_prefix,
                gitgate.as_ref(),
            ) {
                Redirect::Unchanged => {}
                // Behind a front proxy an absolute URL may be gitgate's own: it cannot tell,
                // and says so, rather than calling it another site.
                Redirect::Away if behind_a_proxy && headers::is_a_url(location) => {
                    return Err(ForwardError {
                        detail: Some(logged_location(location)),
                        ..ForwardError::bad_gateway(
                            "the upstream git server redirected to an absolute URL; behind a \
                             front proxy (trusted_proxies) gitgate cannot tell one of its own \
                             from another site's, so only paths are passed on: have the \
                             upstream redirect with paths",
                        )
                    });
                }
                Redirect::Away => {
                    return Err(ForwardError {
                        detail: Some(logged_location(location)),
                        ..ForwardError::bad_gateway(
                            "the upstream git server redirected away from gitgate (to another \
                             site, or outside its repositories); git would take its token \
                             there, so the redirect is not passed on",
                        )
                    });
                }
                // Back to where git just was (an upstream redirecting http to https, say): git
                // would loop until it gives up, so say what is wrong instead.
                Redirect::To(moved) if asked.is_some_and(|a| a.as_str() == moved) => {
                    return Err(ForwardError {
                        detail: Some(logged_location(location)),
                        ..ForwardError::bad_gateway(
                            "the upstream git server redirects to the address gitgate asked; \
                             check the scheme and port of [upstream] url",
                        )
                    });
                }
                // `moved` is built from ASCII text, so this only fails on a bug: never pass the
                // upstream's own Location on in its place.
                Redirect::To(moved) => {
                    let v = HeaderValue::from_str(&moved).map_err(|_| unreadable_redirect(&[]))?;
                    parts.headers.insert(LOCATION, v);
                }
                Redirect::OffBase => {
                    return Err(ForwardError {
                        detail: Some(logged_location(location)),
                        ..ForwardError::bad_gateway(
                            "the upstream git server redirected outside its repositories",
                        )
                    });
                }
                Redirect::Unsure => {
                    return Err(ForwardError {
                        detail: Some(logged_location(location)),
                        ..ForwardError::bad_gateway(
                            "the upstream git server redirected to an address gitgate cannot \
                             tell from its own",
                        )
                    });
                }
            }
        }
        let upload = if activity.is_finished() {
            None
        } else {
            // The answer started while the client is still sending: the upload must go on even
            // when nobody reads the answer.
            connection.detach();
            Some(Upload { activity })
        };
        // git's framing, followed through the answer: the upstream's HTTP framing can say
        // "whole" for an answer its git process broke off (see `super::framing`).
        let framing = (inbound.method != Method::HEAD)
            .then(|| AnswerFraming::for_answer(parts.status, &parts.headers))
            .flatten();
        let mut body = UpstreamBody::new(self, body, connection, upload, framing, source.id);
        // How far it is whole goes to the request line with the answer: one follower for both.
        if let Some(whole) = &body.whole {
            parts.extensions.insert(whole.clone());
        }
        if body.inner.is_end_stream() {
            // No body at all (204, 304, HEAD): the connection is free now.
            body.release();
            // An empty git answer that git's framing says cannot be whole: an advertisement
            // of `Content-Length: 0`. hyper, told the length is 0, ends the client's answer
            // without polling its body, so the body could not fail; nothing has gone to the
            // client yet, so it gets gitgate's word instead.
            if let Some(why) = body.answer_over() {
                return Err(ForwardError::bad_gateway(format!(
                    "the upstream git server's answer was empty, which git cannot read: {why}; \
                     the git process behind it most likely failed before it wrote anything"
                )));
            }
        }
        // gitgate answers in its own HTTP version: an upstream's `HTTP/1.0` would otherwise go
        // on to the client, costing it keep-alive.
        parts.version = hyper::Version::default();
        // Small chunks from the upstream go out to the client in bursts (see `body::Batched`).
        Ok(Response::from_parts(
            parts,
            Batched::new(body).boxed_unsync(),
        ))
    }

    /// Send `req` on a pooled connection.
    ///
    /// A reused connection can turn out dead only when used (an upstream that restarted, or
    /// closed it without saying so): if it fails before any answer, the request goes once more
    /// on a new connection — when hyper hands it back unsent, or when it has no body and
    /// `rebuild` can make it again. A request whose body has started streaming cannot be
    /// replayed: that failure is the client's 502.
    ///
    /// A connection that cannot be opened for want of this server's own descriptors or ports
    /// is tried again for a moment, as the CGI runner tries to start its backend (see
    /// [`super::patience`]), the gate asked after each pause whether the request may still go.
    ///
    /// `connected` says, while this waits, whether the connection the request goes on has been
    /// opened: the wait's idle timeout may end it first (`connect_timeout_seconds` longer than
    /// `idle_timeout_seconds`, or than the client connection's own idle timeout allows), and a
    /// server that never accepted the connection did not leave a request unanswered.
    async fn send(
        &self,
        mut req: Request<OutBody>,
        rebuild: Option<&(dyn Fn(OutBody) -> Result<Request<OutBody>, ForwardError> + Sync)>,
        still_allowed: Option<&dyn StillAllowed>,
        connected: &AtomicBool,
    ) -> Result<(Response<Incoming>, Connection), ForwardError> {
        // git's answers to a POST are the packs, streamed; to a GET, the ref advertisements.
        let driving = if req.method() == Method::POST {
            Driving::Inline
        } else {
            Driving::OwnTask
        };
        let mut fresh_only = false;
        // Made at the first shortage, which is when its time starts: a request that meets
        // none (nearly all) reads no clock for it.
        let mut patience: Option<Patience> = None;
        let method = req.method().clone();
        loop {
            connected.store(false, Ordering::Relaxed);
            let opened = if fresh_only {
                // Boxed, as `Pool::checkout` boxes its own: the rare second attempt must not
                // make every request's future kilobytes larger.
                Box::pin(self.pool.connect_new(driving)).await
            } else {
                self.pool.checkout(driving).await
            };
            let mut conn = match opened {
                Ok(conn) => conn,
                Err(ConnectError::Io(io)) if is_local_shortage(&io) => {
                    let patience = patience.get_or_insert_with(|| Patience::for_method(&method));
                    match patience.pause(still_allowed).await {
                        Pause::TryAgain => continue,
                        Pause::Spent => return Err(self.connect_error(ConnectError::Io(io))),
                        Pause::NoLongerAllowed => return Err(Self::no_longer_allowed()),
                    }
                }
                Err(e) => return Err(self.connect_error(e)),
            };
            connected.store(true, Ordering::Relaxed);
            if driving == Driving::Inline {
                conn.connection.rechunk_answer();
            }
            let sending = conn.connection.sender.try_send_request(req);
            match conn.connection.exchange(sending).await {
                Ok(resp) => return Ok((resp, conn.connection)),
                Err(mut e) => {
                    let unsent = e.take_message();
                    let error = e.into_error();
                    let again = match (unsent, rebuild) {
                        _ if !conn.reused || error.is_timeout() => None,
                        (Some(unsent), _) => Some(unsent),
                        (None, Some(build)) => Some(build(
                            http_body_util::Empty::new()
                                .map_err(|never| match never {})
                                .boxed_unsync(),
                        )?),
                        (None, None) => None,
                    };
                    match again {
                        Some(r) => {
                            tracing::debug!(error = %crate::log_value::LogText(&error.to_string()), "a reused upstream connection failed; sending again on a new one");
                            req = r;
                            fresh_only = true;
                        }
                        None => return Err(self.request_error(&error)),
                    }
                }
            }
        }
    }

    /// A request the gate refused when asked again after a pause for a connection (see
    /// [`HttpBackend::send`]): answered as the gate's refusal, which it keeps.
    fn no_longer_allowed() -> ForwardError {
        ForwardError {
            status: StatusCode::FORBIDDEN,
            message: "the request is no longer allowed".to_string(),
            detail: Some(
                "refused when asked again after waiting for a connection to the upstream"
                    .to_string(),
            ),
            fault: Fault::Refused,
            retry_after: None,
        }
    }

    /// 504 when connecting timed out, 502 otherwise (503 for this server's own shortage), with
    /// the cause in words. A refused TLS
    /// handshake's cause stays in the log: rustls's words name the certificate's names and the
    /// name gitgate asked for, the upstream's internal ones.
    fn connect_error(&self, e: ConnectError) -> ForwardError {
        let cause = e.to_string();
        if let ConnectError::Io(io) = &e {
            if is_local_shortage(io) {
                out_of_connections(self.address, &cause);
                return ForwardError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "the server cannot open another connection to the git server now; \
                              try again in a moment"
                        .to_string(),
                    detail: Some(format!(
                        "cannot open a connection to upstream {}: {cause}",
                        self.address
                    )),
                    fault: Fault::Busy,
                    retry_after: Some(HeaderValue::from_static("5")),
                };
            }
        }
        match e {
            ConnectError::TimedOut { .. } | ConnectError::LookupTimedOut => {
                self.naming_upstream(ForwardError::gateway_timeout(format!(
                    "the upstream git server did not answer in time ({cause})"
                )))
            }
            ConnectError::Tls(_) => ForwardError {
                detail: Some(format!("upstream {}: {cause}", self.address)),
                ..ForwardError::bad_gateway(
                    "cannot reach the upstream git server (the TLS handshake with it failed; \
                     gitgate's log says why)",
                )
            },
            // A socket's error does not name its path, which is this server's (`the upstream's
            // socket is a regular file, not a Unix socket`): the client hears what is wrong, the
            // log also where, as the upstream's address names the socket.
            _ => self.naming_upstream(ForwardError::bad_gateway(format!(
                "cannot reach the upstream git server ({cause})"
            ))),
        }
    }

    /// The upstream's address goes into the error's detail, for the one line the gate logs per
    /// failed request; the client's message leaves it out.
    fn naming_upstream(&self, error: ForwardError) -> ForwardError {
        if error.fault != Fault::Backend {
            return error;
        }
        let named = format!("upstream {}", self.address);
        let detail = match error.detail {
            Some(d) if d.contains(&named) => d,
            Some(d) => format!("{d}; {named}"),
            None => named,
        };
        ForwardError {
            detail: Some(detail),
            ..error
        }
    }

    /// 504 for timeouts, 502 for everything else, with the cause in words.
    fn request_error(&self, e: &hyper::Error) -> ForwardError {
        // hyper's words, "message head is too large", say neither whose message nor what limit.
        if e.is_parse_too_large() {
            return self.naming_upstream(ForwardError::bad_gateway(head_too_large()));
        }
        let (cause, timed_out) = cause_of(e.to_string(), e.is_timeout(), e.source());
        // The client gets the cause; the upstream's address stays in gitgate's log.
        let error = if timed_out {
            ForwardError::gateway_timeout(format!(
                "the upstream git server did not answer in time ({cause})"
            ))
        } else {
            ForwardError::bad_gateway(format!("the upstream git server failed ({cause})"))
        };
        self.naming_upstream(error)
    }

    /// What a plain `HEAD` of the base path says is wrong with the upstream, if anything: an
    /// `http://` URL for an https port (nginx answers `400`, as it would every git request),
    /// credentials it refuses or wants (`401`/`407`), or no HTTP answer at all. For `check`,
    /// and for the start's log, once the upstream accepts connections.
    pub async fn plain_answer_warning(&self) -> Option<String> {
        let address = self.address();
        match self.answer_to_a_plain_request().await {
            Ok(StatusCode::BAD_REQUEST) => Some(format!(
                "upstream {address} answers 400 Bad Request to a plain HEAD of its base path: \
                 if it speaks https on that port, write https:// in [upstream] url"
            )),
            Ok(status)
                if status == StatusCode::UNAUTHORIZED
                    || status == StatusCode::PROXY_AUTHENTICATION_REQUIRED =>
            {
                let with = if self.upstream_auth.is_some() {
                    "with the secret of [upstream.credentials]: check that secret"
                } else {
                    "and [upstream.credentials] is not set: does it want gitgate's own \
                     credentials?"
                };
                Some(format!(
                    "upstream {address} answers {status} to a HEAD of its base path {with} (if \
                     its git paths answer so too, every git request gets 502)"
                ))
            }
            // A gateway's failure: what serves the repositories behind it is down or cannot be
            // reached (nginx with fcgiwrap stopped, or its socket another user's). The upstream
            // accepts connections, so it is ready, and every git request would get this.
            Ok(status)
                if status == StatusCode::BAD_GATEWAY
                    || status == StatusCode::SERVICE_UNAVAILABLE
                    || status == StatusCode::GATEWAY_TIMEOUT =>
            {
                Some(format!(
                    "upstream {address} answers {status} to a HEAD of its base path: what serves \
                     the repositories behind it (fcgiwrap, git http-backend, the git server) \
                     may be down or out of its reach; if its git paths answer so too, every git \
                     request fails so: its error log says why"
                ))
            }
            Ok(_) => None,
            Err(why) => Some(format!(
                "upstream {address} accepts connections but gave no HTTP answer to a plain HEAD \
                 of its base path: {why}"
            )),
        }
    }

    /// What the upstream answers a plain `HEAD` of its base path with (within
    /// [`PLAIN_ANSWER_WITHIN`]), on a new connection,
    /// with gitgate's own credentials if it has any: for `check`, which can then tell an
    /// upstream that speaks something else on that port (an `http://` URL for an https port:
    /// nginx answers `400`, and every git request would) or refuses those credentials (`401`)
    /// from one that only accepts connections.
    pub async fn answer_to_a_plain_request(&self) -> Result<StatusCode, String> {
        let uri = Uri::try_from(format!("{}/", self.base_path.trim_end_matches('/')))
            .map_err(|e| e.to_string())?;
        let mut req: Request<OutBody> = Request::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *req.method_mut() = Method::HEAD;
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, self.host.clone());
        // So that the upstream's access log says whose request this was.
        req.headers_mut().insert(
            hyper::header::USER_AGENT,
            HeaderValue::from_static(PLAIN_REQUEST_AGENT),
        );
        if let Some(secret) = &self.upstream_auth {
            let mut auth = secret.value();
            auth.set_sensitive(true);
            req.headers_mut().insert(hyper::header::AUTHORIZATION, auth);
        }
        let mut conn = self
            .pool
            .connect_new(Driving::OwnTask)
            .await
            .map_err(|e| e.to_string())?;
        let sending = conn.connection.sender.try_send_request(req);
        // Not the idle timeout (five minutes by default): a deploy's check must not hang that
        // long, silent, on an upstream that accepts and never speaks.
        let within = self.idle_timeout.min(PLAIN_ANSWER_WITHIN);
        let answered = tokio::time::timeout(within, conn.connection.exchange(sending))
            .await
            .map_err(|_| {
                format!(
                    "no answer within {} s (a service that waits for its client to speak \
                     first, or a hung server?)",
                    within.as_secs()
                )
            })?;
        answered.map(|resp| resp.status()).map_err(|e| {
            let e = e.into_error();
            if e.is_parse_too_large() {
                head_too_large()
            } else {
                e.to_string()
            }
        })
    }

    /// The upstream as the log names it (see the field).
    pub fn address(&self) -> &str {
        self.address
    }

    /// Readiness: can a connection to the upstream be opened within the connect timeout — TCP,
    /// and for https the TLS handshake with the configured roots, as a request would? A
    /// certificate the upstream's clients would refuse makes gitgate not ready, rather than
    /// ready to answer every request 502. The connection is closed at once, never pooled.
    pub async fn ready(&self) -> Result<(), String> {
        let upstream = self.address;
        match self.pool.connect_new(Driving::Inline).await {
            Ok(checkout) => {
                drop(checkout);
                Ok(())
            }
            Err(ConnectError::TimedOut {
                in_handshake: false,
            }) => Err(format!(
                "upstream {upstream} did not accept a connection in time"
            )),
            Err(ConnectError::TimedOut { in_handshake: true }) => Err(format!(
                "upstream {upstream} accepted a connection but did not finish the TLS handshake \
                 in time (does it speak https on that port?)"
            )),
            Err(e @ ConnectError::Tls(_)) => Err(format!("upstream {upstream}: {e}")),
            Err(e) => Err(format!("upstream {upstream} unreachable: {e}")),
        }
    }
}

/// Pure: what a `504` for an upstream that stayed silent for `idle` says — that no answer
/// came, or, when no connection to it had been opened by then, that connecting took that long:
/// a server that never accepted the connection (a full listen backlog, a firewall dropping
/// packets, a resolver or a TLS handshake that does not finish) is not one that left a request
/// unanswered, and the operator looks elsewhere for each.
fn silent_upstream(idle: Duration, connected: bool) -> String {
    let secs = idle.as_secs();
    if connected {
        format!("the upstream git server sent no answer for {secs}s")
    } else {
        format!(
            "the upstream git server did not answer in time (no connection to it was opened \
             within {secs}s: its name's lookup, the TCP connection or the TLS handshake did not \
             finish)"
        )
    }
}

/// Pure: the upstream's failure to answer a request (`error`), said of a push whose pack had
/// gone up whole (`a_whole_push`) as the stop says it: git there may still apply it — its hook
/// ending after gitgate gave up, receive-pack finishing after the connection closed (seen behind
/// nginx + fcgiwrap: a pre-receive hook silent past the idle timeout, a `504`, and the branch
/// moved all the same) —, while git here prints `RPC failed` and `Everything up-to-date` and
/// the log said only that the upstream failed. Errors not of the upstream's, and pushes not
/// sent whole (which receive-pack refuses), are left as they are.
fn unanswered_push(error: ForwardError, a_whole_push: bool) -> ForwardError {
    if !a_whole_push || error.fault != Fault::Backend {
        return error;
    }
    ForwardError {
        message: format!(
            "{}; the push had gone to it whole, and may still be applied: fetch to see before \
             pushing again",
            error.message
        ),
        ..error
    }
}

/// Whether an upstream's answer is a gateway's failure page: a `502`, `503` or `504` whose body
/// is not plain text (git shows a `text/plain` body as `remote: ...`, and nothing else).
fn a_gateway_failure_page(status: StatusCode, headers: &hyper::HeaderMap) -> bool {
    // Every forwarded answer passes here: the status first, the header only for those three.
    let gateway = matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    );
    gateway && !plain_text(headers)
}

/// Pure: what git is told of an upstream's `403` that does not say why (no body, or a page
/// rather than text), and, for the operator's log, what most likely causes it — for a push,
/// git http-backend behind a web server that does not make gitgate's identity header its
/// REMOTE_USER.
fn unexplained_refusal(
    access: Access,
    identity_header: &hyper::header::HeaderName,
) -> (&'static str, String) {
    let likely = if access == Access::Write {
        format!(
            "git http-backend refuses every push that comes without REMOTE_USER: have the \
             upstream pass gitgate's {identity_header} header on as REMOTE_USER (the README \
             shows it for nginx, Apache and lighttpd), or the repository does not take pushes \
             (http.receivepack false)"
        )
    } else {
        "git http-backend refuses so a repository whose http.uploadpack is false; a web \
         server's own access rule may too"
            .to_string()
    };
    (
        "the upstream git server refused this request (403 Forbidden) without saying why to \
         the client (your token was accepted); the server's log has its reason",
        likely,
    )
}

/// What servers answer plain HTTP on their TLS port with, in their `400` page: nginx, Go's
/// `net/http`, Apache.
const PLAIN_HTTP_ON_TLS: [&[u8]; 3] = [
    b"plain HTTP request was sent to HTTPS port",
    b"HTTP request to an HTTPS server",
    b"plain HTTP to an SSL-enabled server port",
];

/// The first 8 KiB (at most) of an error page, read for at most 2 s: enough to tell what it
/// says, and no wait on an upstream that sends no more.
async fn page_start(mut body: Incoming) -> Vec<u8> {
    const MOST: usize = 8 * 1024;
    let mut page = Vec::new();
    let read = async {
        while page.len() < MOST {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        page.extend_from_slice(&data[..data.len().min(MOST - page.len())]);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    page
}

/// Whether an answer is `text/plain`, which git shows as `remote: ...`.
fn plain_text(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .get(..10)
                .is_some_and(|m| m.eq_ignore_ascii_case("text/plain"))
        })
}

/// Why an answer whose head hyper would not read failed (see [`pool::ANSWER_HEADER_LINES`]):
/// git servers send a dozen header lines, so it is the upstream's doing (a proxy or a module
/// there that adds headers), and the operator must know which limit it passed.
fn head_too_large() -> String {
    format!(
        "the upstream git server's answer has too many header lines (more than {}), too \
         large a head (over {} KiB), or a Content-Length over {}, for gitgate to read",
        pool::ANSWER_HEADER_LINES,
        pool::ANSWER_HEAD_MAX / 1024,
        u64::MAX - 2
    )
}

/// Pure: the words of an error and of its chain of sources, each said once, after `top`; and
/// whether it timed out: `timed_out` already, or an I/O error in the chain of kind `TimedOut`
/// (the system's `ETIMEDOUT`: a connection whose peer stopped acknowledging).
fn cause_of(
    top: String,
    timed_out: bool,
    mut source: Option<&(dyn StdError + 'static)>,
) -> (String, bool) {
    let (mut cause, mut timed_out) = (top, timed_out);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            timed_out |= io.kind() == io::ErrorKind::TimedOut;
        }
        let text = s.to_string();
        if !cause.contains(&text) {
            if !cause.is_empty() {
                cause.push_str(": ");
            }
            cause.push_str(&text);
        }
        source = s.source();
    }
    (cause, timed_out)
}

/// Whether a `Retry-After` value is one (RFC 9110, section 10.2.3): seconds, or an HTTP date
/// (`Wed, 21 Oct 2026 07:28:00 GMT`), told apart from anything else an upstream may send.
fn a_retry_after(value: &[u8]) -> bool {
    let seconds = !value.is_empty() && value.len() <= 10 && value.iter().all(u8::is_ascii_digit);
    let date = value.len() <= 40
        && value.ends_with(b" GMT")
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b" ,:".contains(b));
    seconds || date
}

/// rustls client config: the configured CA file and/or the system roots, TLS 1.2+; and what
/// the operator should hear about the CA file (certificates left out).
///
/// A CA certificate outside its validity dates is left out, with a warning: rustls (webpki)
/// never looks at a trust anchor's dates, so an expired CA would go on vouching for the
/// upstream, where OpenSSL (curl, git, nginx's `proxy_ssl_verify`) refuses it. A file with no
/// CA left is refused, as an empty one is.
fn client_tls_config(cfg: &HttpUpstream) -> Result<(rustls::ClientConfig, Vec<String>), String> {
    let mut roots = rustls::RootCertStore::empty();
    let warnings = match &cfg.ca_file {
        Some(ca) => ca_file_roots(ca, crate::clock::now_ms(), &mut roots)?,
        None => Vec::new(),
    };
    if cfg.system_roots && cfg.origin.scheme_str() == Some("https") {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %crate::log_value::LogText(&e.to_string()), "could not read some system root certificates");
        }
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 && cfg.ca_file.is_none() {
            return Err(
                "[upstream] no system root certificates found (is ca-certificates installed?); set ca_file"
                    .into(),
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, warnings))
}

/// The CA certificates of `ca_file` that are valid at `now`, added to `roots`; a warning for
/// each one left out for its dates (see [`client_tls_config`]).
fn ca_file_roots(
    ca: &std::path::Path,
    now: i64,
    roots: &mut rustls::RootCertStore,
) -> Result<Vec<String>, String> {
    let pem = crate::small_file::read(ca)
        .map_err(|e| format!("[upstream] ca_file = \"{}\": {e}", ca.display()))?;
    let certs = CertificateDer::pem_slice_iter(crate::tls::without_byte_order_mark(&pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "[upstream] ca_file = \"{}\": {}",
                ca.display(),
                crate::tls::pem_problem(&e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "[upstream] ca_file = \"{}\" holds no PEM certificate",
            ca.display()
        ));
    }
    let mut left_out = Vec::new();
    for (n, c) in certs.into_iter().enumerate() {
        // rustls says "invalid peer certificate" of any certificate it cannot read: here it
        // is the CA file's, not a peer's.
        let unreadable = |e: rustls::Error| {
            format!(
                "[upstream] ca_file = \"{}\": certificate {} of the file is not a readable \
                 X.509 certificate ({e:?})",
                ca.display(),
                n + 1
            )
        };
        let why = match crate::tls::validity(&c) {
            Some(validity) => validity.problem(now),
            // Dates gitgate cannot read (fractional seconds, a time zone: RFC 5280 allows
            // neither) could be any: such a CA is left out too, never trusted unchecked.
            None => {
                rustls::RootCertStore::empty()
                    .add(c.clone())
                    .map_err(unreadable)?;
                Some(
                    "its validity dates cannot be read (RFC 5280's forms: UTCTime or \
                     GeneralizedTime, to the second, in UTC)"
                        .to_string(),
                )
            }
        };
        if let Some(why) = why {
            left_out.push(format!("certificate {} of the file: {why}", n + 1));
            continue;
        }
        roots.add(c).map_err(unreadable)?;
    }
    if roots.is_empty() {
        return Err(format!(
            "[upstream] ca_file = \"{}\" holds no CA certificate that is valid now ({}): \
             put the CA that signs the upstream's certificate now in it",
            ca.display(),
            left_out.join("; ")
        ));
    }
    Ok(left_out
        .into_iter()
        .map(|why| {
            format!(
                "[upstream] ca_file = \"{}\": {why}; it is not trusted, and an upstream \
             certificate only it signed is refused",
                ca.display()
            )
        })
        .collect())
}

/// The upstream's response body: fails if nothing moves for the upstream's idle timeout (no
/// frame of it, and no frame of a request body still going up; see [`Silence`]), and gives its
/// connection back to the pool once read to the end (dropped early, the connection is closed
/// with it).
struct UpstreamBody {
    inner: Incoming,
    silence: Silence,
    /// The connection the answer comes on, driven from `poll_frame` (see `super::pool`).
    connection: Option<(Arc<Pool>, Connection)>,
    /// The client's request body, when it was still going up as the answer started.
    upload: Option<Upload>,
    /// The answer ended with trailers (hyper's `Incoming` does not count them as the end).
    trailers_seen: bool,
    /// git's framing of the answer, followed to tell an answer cut short from a whole one.
    framing: Option<AnswerFraming>,
    /// Where the request line learns how far the answer is whole (see [`WholeAt`]).
    whole: Option<Arc<WholeAt>>,
    /// The answer's last frame has gone out and git's framing says it was cut short: the next
    /// poll fails with this reason instead of ending the body.
    cut: Option<&'static str>,
    /// The idle timeout ran out since the last frame with the upstream's bytes waiting unread
    /// in the socket, and was given once more (see `poll_frame`).
    unread_once: bool,
    /// The upstream, named in the body's errors as in the head's.
    address: &'static str,
    /// The request's id, for the log line of an answer git ended with its refusal.
    request_id: crate::request_id::RequestId,
}

/// How long an upload may go on after its answer has ended (see [`UpstreamBody::release`]).
const UPLOAD_AFTER_ANSWER: Duration = Duration::from_secs(5);

/// A request body still being sent upstream while the answer comes.
struct Upload {
    /// Moves with each of its frames: a push's pack may take longer to go up than the
    /// upstream's idle timeout, with nothing coming back meanwhile. Says too whether it is
    /// over, and whether it waits for the client's next frame (not for the upstream to read
    /// on).
    activity: Progress,
}

impl UpstreamBody {
    /// The body of an answer of `backend`'s, come on `connection`.
    fn new(
        backend: &HttpBackend,
        inner: Incoming,
        connection: Connection,
        upload: Option<Upload>,
        framing: Option<AnswerFraming>,
        request_id: crate::request_id::RequestId,
    ) -> UpstreamBody {
        UpstreamBody {
            inner,
            silence: Silence::new(backend.idle_timeout),
            connection: Some((backend.pool.clone(), connection)),
            upload,
            trailers_seen: false,
            whole: framing.as_ref().map(|_| Arc::new(WholeAt::new())),
            framing,
            cut: None,
            unread_once: false,
            address: backend.address,
            request_id,
        }
    }

    /// The answer is over (said once; later calls say nothing): why it was cut short, if git's
    /// framing says it was. An answer that ended with git's own error is whole, and its reason
    /// is logged here, as the embedded CGI runner logs it: the request's line says only that it
    /// was complete, and a refusal (a fetch of an object the repository does not have) is the
    /// client's affair, not the backend's failure.
    fn answer_over(&mut self) -> Option<&'static str> {
        let framing = self.framing.take()?;
        if let Some(refusal) = framing.refusal() {
            let refusal = crate::credentials::without_secrets(&refusal);
            tracing::info!(request_id = %self.request_id, upstream = self.address, error = %crate::log_value::LogText(&refusal), "git refused the request and told its client why");
        }
        framing.cut_short()
    }

    /// What follows the answer's last frame: nothing, or the error of an answer git's framing
    /// says was cut short.
    fn ended(&mut self) -> Option<Result<Frame<Bytes>, io::Error>> {
        let why = self.answer_over()?;
        Some(Err(self.cut_short_error(why)))
    }

    /// The error of an answer the upstream ended although git's framing says it is cut short.
    fn cut_short_error(&self, why: &str) -> io::Error {
        io::Error::other(format!(
            "the upstream's answer was cut short: {why} (upstream {}); the git process behind \
             it most likely stopped mid-answer",
            self.address
        ))
    }

    /// The answer has been read to its end: the connection goes back to the pool, unless the
    /// client's upload is unfinished. An answer that ends before its request (an upstream
    /// refusing a push early) is final; the rest of the upload goes on for at most
    /// [`UPLOAD_AFTER_ANSWER`], then the connection is closed: the upload is for nobody, and
    /// past the request's log line and in-flight slot. Not at once, as nginx's lingering close
    /// does not: a client that has not finished sending may not have read the answer yet, and
    /// a socket closed on bytes it has not read sends a reset, which some TCP stacks (Windows)
    /// let destroy an answer received but not yet read.
    fn release(&mut self) {
        if let Some((pool, connection)) = self.connection.take() {
            match &self.upload {
                Some(u) if !u.activity.is_finished() => {
                    connection.close_within(UPLOAD_AFTER_ANSWER)
                }
                _ => pool.put(connection),
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(why) = self.cut.take() {
            return Poll::Ready(Some(Err(self.cut_short_error(why))));
        }
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending() {
            if let Some((_, connection)) = &mut self.connection {
                // The body has just said it wants more: now the connection reads it.
                connection.drive(cx);
                polled = Pin::new(&mut self.inner).poll_frame(cx);
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.silence.heard();
                self.unread_once = false;
                if frame.is_trailers() {
                    // The upstream's trailers end the body here, unsent: git sends none, and
                    // they are header fields the head's filter never saw (`Set-Cookie`, the
                    // upstream's own addresses), as `Trailer` in the head is dropped too.
                    self.trailers_seen = true;
                    self.release();
                    return Poll::Ready(self.ended());
                }
                let this = &mut *self;
                if let (Some(framing), Some(data)) = (&mut this.framing, frame.data_ref()) {
                    framing.feed(data);
                    if let Some(whole) = &this.whole {
                        whole.note(framing);
                    }
                }
                if self.inner.is_end_stream() {
                    self.release();
                    // This frame goes out, and the body fails after it (see `is_end_stream`).
                    self.cut = self.answer_over();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.connection = None;
                Poll::Ready(Some(Err(io::Error::other(format!(
                    "the upstream response broke off: {e} (upstream {})",
                    self.address
                )))))
            }
            Poll::Ready(None) => {
                self.release();
                Poll::Ready(self.ended())
            }
            Poll::Pending => {
                let this = &mut *self;
                let upload = this.upload.as_ref().map(|u| &u.activity);
                ready!(this.silence.poll_over(upload, cx));
                // The upstream's bytes wait unread in the socket: it was not silent, gitgate did
                // not read (its worker held, and the connection's own task not run yet since
                // they came). It is heard now, once: bytes still unread a timeout later are
                // ones the connection does not read, and the answer fails as stalled.
                let unread = this
                    .connection
                    .as_ref()
                    .is_some_and(|(_, c)| c.has_unread_bytes());
                if unread && !this.unread_once {
                    this.unread_once = true;
                    this.silence.heard();
                    ready!(this.silence.poll_over(upload, cx));
                }
                let client_stalled = this
                    .upload
                    .as_ref()
                    .is_some_and(|u| !u.activity.is_finished() && u.activity.waiting_for_client());
                // The exchange is over: its connection is closed now, its task with it. Dropped
                // with the body instead, a connection on a task of its own went on trying to
                // send the rest of an upload to an upstream that no longer read it (a push
                // whose answer had begun), holding its socket and the bytes queued there for as
                // long as the upstream kept the connection open, after the request had ended.
                if let Some((_, connection)) = this.connection.take() {
                    connection.close();
                }
                if client_stalled {
                    return Poll::Ready(Some(Err(UploadStalled(this.silence.idle()).into_io())));
                }
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the upstream response stalled for {}s (upstream {})",
                        this.silence.idle().as_secs(),
                        this.address
                    ),
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // An answer git's framing says was cut short is not over until it has failed.
        self.cut.is_none() && (self.trailers_seen || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Pure: the port the upstream's URL names, or its scheme's own (443 for `https`, 80 for
/// `http`).
fn port_of(authority: &hyper::http::uri::Authority, https: bool) -> u16 {
    authority.port_u16().unwrap_or(if https { 443 } else { 80 })
}

/// The host and port the client asked for (`:authority` over HTTP/2, `Host` over HTTP/1.1),
/// as an authority.
fn client_authority(inbound: &Parts) -> Option<hyper::http::uri::Authority> {
    if let Some(a) = inbound.uri.authority() {
        return Some(a.clone());
    }
    let host = inbound.headers.get(HOST)?.to_str().ok()?;
    host.parse().ok()
}

/// An upstream's `Location` as the log shows it: a user and password, a query (a login page's
/// `?token=`) or what looks like a token secret are not written (see
/// [`crate::log_value::redacted_url`]), and the rest is one quoted field.
fn logged_location(location: &str) -> String {
    format!("Location: {:?}", crate::log_value::redacted_url(location))
}

/// A 502 for an upstream redirect gitgate cannot check: never passed on, since it might name the
/// upstream's internal address. The values go to the log only.
fn unreadable_redirect(locations: &[&HeaderValue]) -> ForwardError {
    ForwardError {
        detail: Some(
            locations
                .iter()
                .map(|v| logged_location(&String::from_utf8_lossy(v.as_bytes())))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ..ForwardError::bad_gateway(
            "the upstream git server sent a redirect gitgate cannot check (more than one \
             Location, or one that is not plain ASCII), so it is not passed on",
        )
    }
}

/// Whether a connection to the upstream failed for want of something of this server's own —
/// file descriptors (`EMFILE`, `ENFILE`), local ports (`EADDRNOTAVAIL`: every ephemeral port in
/// use or waiting out its `TIME_WAIT`), kernel memory (`ENOBUFS`, `ENOMEM`) — rather than
/// the upstream's: the server is overloaded for now, as when the CGI runner cannot start a
/// git process, not cut off from its upstream.
fn is_local_shortage(e: &io::Error) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const EADDRNOTAVAIL: i32 = 99;
    const ENOBUFS: i32 = 105;
    matches!(
        e.raw_os_error(),
        Some(ENOMEM | ENFILE | EMFILE | EADDRNOTAVAIL | ENOBUFS)
    )
}

/// Says that no connection to the upstream could be opened for want of this server's own
/// descriptors or ports: at once, then at most once a minute with how many since — a burst of
/// clones past the limit would otherwise write one error line per request.
fn out_of_connections(upstream: &str, error: &str) {
    use crate::repeats::{Due, SaidInTime};
    static SAID: std::sync::OnceLock<Arc<SaidInTime>> = std::sync::OnceLock::new();
    let said = SAID.get_or_init(|| Arc::new(SaidInTime::new(Duration::from_secs(60))));
    let say = |times: u64, upstream: &str, error: &str| {
        tracing::warn!(
            times,
            upstream = %crate::log_value::LogText(upstream),
            error = %crate::log_value::LogText(error),
            "cannot open a connection to the upstream git server: this process is out of file \
             descriptors (its open-files limit, LimitNOFILE under systemd, or the system's) or \
             of local ports (net.ipv4.ip_local_port_range); git requests are answered 503 until \
             some come free"
        );
    };
    if let Some(times) = said.with(|r| r.failed(std::time::Instant::now())) {
        say(times, upstream, error);
    }
    let (upstream, error) = (upstream.to_owned(), error.to_owned());
    said.look_again_later(false, move |due| {
        if let Due::Unsaid(times) = due {
            say(times, &upstream, &error);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This server's own shortages are told from an upstream that cannot be reached.
    #[test]
    fn out_of_descriptors_or_ports_is_a_local_shortage_not_an_unreachable_upstream() {
        // ENOMEM, ENFILE, EMFILE, EADDRNOTAVAIL, ENOBUFS.
        for errno in [12, 23, 24, 99, 105] {
            assert!(
                is_local_shortage(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        // ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT: the upstream's, or the way's.
        for errno in [111, 113, 101, 110] {
            assert!(
                !is_local_shortage(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        assert!(!is_local_shortage(&io::Error::other("no such host")));
    }
    use crate::config::Config;
    use std::path::Path;

    /// A request body with always more to send, at once (an upload the upstream stops reading).
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS)))))
        }
    }

    fn backend(url: &str) -> HttpBackend {
        backend_of(&format!("[upstream]\nurl = \"{url}\"\n"))
    }

    /// The backend of a configuration's `[upstream]` section, given as its text.
    fn backend_of(text: &str) -> HttpBackend {
        let c = Config::parse(Path::new("/etc/gitgate/proxy.toml"), text).unwrap();
        let crate::config::Upstream::Http(h) = &c.upstream else {
            panic!()
        };
        HttpBackend::new(h, None, vec![], false, "/").unwrap()
    }

    fn git_req(path: &str, query: Option<&str>) -> GitRequest {
        let mut r = crate::git::classify("GET", path, query, "/").unwrap();
        r.query = query.map(|q| q.to_string().into());
        r
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/tls")
            .join(name)
    }

    /// Midnight UTC of `date` (YYYY-MM-DD), in epoch milliseconds.
    fn at_date(date: &str) -> i64 {
        crate::clock::parse_date(date).unwrap()
    }

    #[test]
    fn a_gateway_failure_page_is_a_5xx_git_cannot_show() {
        let with = |status: u16, content_type: Option<&str>| {
            let mut headers = hyper::HeaderMap::new();
            if let Some(t) = content_type {
                headers.insert(CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
            }
            a_gateway_failure_page(StatusCode::from_u16(status).unwrap(), &headers)
        };
        for status in [502, 503, 504] {
            assert!(with(status, Some("text/html")), "{status}");
            assert!(with(status, None), "{status}");
            assert!(!with(status, Some("text/plain; charset=utf-8")), "{status}");
            assert!(!with(status, Some("Text/Plain")), "{status}");
        }
        // A backend's own failure, and everything else, goes to git as it came.
        assert!(!with(500, Some("text/html")));
        assert!(!with(404, Some("text/html")));
        assert!(!with(200, Some("application/x-git-upload-pack-result")));
    }

    /// git is told that the socket gitgate connects to is no socket, not where it lies on the
    /// server: the log has that, with the upstream's address.
    #[tokio::test]
    async fn a_socket_that_is_no_socket_is_told_to_git_without_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nginx.sock");
        std::fs::write(&file, "").unwrap();
        let b = backend_of(&format!(
            "[upstream]\nurl = \"http://git.internal/git\"\nsocket = \"{}\"\n",
            file.display()
        ));
        let Err(e) = b.pool.connect_new(Driving::Inline).await else {
            panic!("connected to a regular file");
        };
        let error = b.connect_error(e);
        assert_eq!(error.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            error.message,
            "cannot reach the upstream git server (the upstream's socket is a regular file, not \
             a Unix socket)"
        );
        let logged = error.to_string();
        assert!(
            logged.contains(&format!("via unix:{}", file.display())),
            "{logged}"
        );
        // The readiness check's warning (and `gitgate check`'s) names it too.
        let why = b.ready().await.unwrap_err();
        assert_eq!(
            why,
            format!(
                "upstream http://git.internal/git via unix:{} unreachable: the upstream's \
                 socket is a regular file, not a Unix socket",
                file.display()
            )
        );
    }

    #[test]
    fn only_a_retry_after_that_is_one_is_passed_on() {
        for fine in ["120", "0", "Wed, 21 Oct 2026 07:28:00 GMT"] {
            assert!(a_retry_after(fine.as_bytes()), "{fine}");
        }
        for not in ["", "soon; <script>", "-1", "1.5", "12345678901", "tomorrow"] {
            assert!(!a_retry_after(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn a_ca_outside_its_dates_is_left_out_of_the_roots() {
        // The test CA (valid until 2126), then a certificate valid in January 2020 only.
        let dir = tempfile::tempdir().unwrap();
        let both = dir.path().join("cas.pem");
        let mut pem = std::fs::read(fixture("ca.pem")).unwrap();
        pem.extend(std::fs::read(fixture("expired.pem")).unwrap());
        std::fs::write(&both, pem).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        let warnings = ca_file_roots(&both, at_date("2026-12-02"), &mut roots).unwrap();
        assert_eq!(roots.len(), 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("cas.pem")
                && warnings[0].contains(
                    "certificate 2 of the file: the certificate expired on 2020-01-31T00:00:00Z; \
                     it is not trusted"
                ),
            "{warnings:?}"
        );

        // In January 2020 the second is in its dates and the first (made in 2026) not yet;
        // before it, neither is.
        let mut roots = rustls::RootCertStore::empty();
        let warnings = ca_file_roots(&both, at_date("2020-01-15"), &mut roots).unwrap();
        assert_eq!((roots.len(), warnings.len()), (1, 1), "{warnings:?}");
        assert!(
            warnings[0].contains("certificate 1 of the file: the certificate is not valid before"),
            "{warnings:?}"
        );
        let mut roots = rustls::RootCertStore::empty();
        let e = ca_file_roots(&both, at_date("2019-06-01"), &mut roots).unwrap_err();
        assert!(
            e.contains("holds no CA certificate that is valid now")
                && e.contains("certificate 1 of the file: the certificate is not valid before")
                && e.contains("certificate 2 of the file"),
            "{e}"
        );

        // A file of expired CAs alone is refused, not read as trusting nothing.
        let mut roots = rustls::RootCertStore::empty();
        let e =
            ca_file_roots(&fixture("expired.pem"), at_date("2026-12-02"), &mut roots).unwrap_err();
        assert!(
            e.contains("expired.pem\" holds no CA certificate that is valid now")
                && e.contains("expired on 2020-01-31"),
            "{e}"
        );
    }

    /// A CA whose dates gitgate cannot read is left out as well: never trusted unchecked.
    #[test]
    fn a_ca_with_dates_that_cannot_be_read_is_left_out() {
        use base64::Engine;
        let der = CertificateDer::from_pem_file(fixture("expired.pem")).unwrap();
        let mut der = der.as_ref().to_vec();
        // notAfter, UTCTime 2020-01-31 00:00:00: its last digit made a letter (same length).
        let at = der.windows(13).position(|w| w == b"200131000000Z").unwrap();
        der[at + 11] = b'x';
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cas.pem");
        let mut both = std::fs::read_to_string(fixture("ca.pem")).unwrap();
        both.push_str(&pem);
        std::fs::write(&file, both).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let warnings = ca_file_roots(&file, at_date("2020-01-15"), &mut roots);
        // The test CA is not valid yet then, and the other cannot be read: nothing is left.
        let e = warnings.unwrap_err();
        assert!(
            e.contains("certificate 2 of the file: its validity dates cannot be read"),
            "{e}"
        );
        let mut roots = rustls::RootCertStore::empty();
        let warnings = ca_file_roots(&file, at_date("2026-12-02"), &mut roots).unwrap();
        assert_eq!(roots.len(), 1);
        assert!(
            warnings[0].contains("certificate 2 of the file: its validity dates cannot be read"),
            "{warnings:?}"
        );
    }

    #[tokio::test]
    async fn paths_map_onto_the_base() {
        let b = backend("http://127.0.0.1:3000/git/");
        let r = git_req("/team/app.git/info/refs", Some("service=git-upload-pack"));
        assert_eq!(
            b.target(&r).unwrap().to_string(),
            "/git/team/app.git/info/refs?service=git-upload-pack"
        );
        assert_eq!(b.host, "127.0.0.1:3000");
        let b = backend("http://127.0.0.1:3000");
        assert_eq!(
            b.target(&r).unwrap().to_string(),
            "/team/app.git/info/refs?service=git-upload-pack"
        );
    }

    /// An upstream on a loopback port that answers one request with `answer`; the task gives
    /// the head of the request it read.
    async fn answering(
        answer: impl AsRef<[u8]> + Send + 'static,
    ) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            s.write_all(answer.as_ref()).await.unwrap();
            s.flush().await.unwrap();
            String::from_utf8_lossy(&head).into_owned()
        });
        (port, task)
    }

    /// A clone's advertisement forwarded by `b`, as a client named `gitgate.example` asks it.
    async fn advertisement(b: &HttpBackend) -> Result<Response<ResponseBody>, ForwardError> {
        let (parts, ()) = Request::builder()
            .uri("/team/app.git/info/refs?service=git-upload-pack")
            .header(HOST, "gitgate.example")
            .body(())
            .unwrap()
            .into_parts();
        let peer: std::net::SocketAddr = "127.0.0.1:50000".parse().unwrap();
        b.forward(
            &parts,
            http_body_util::Empty::<Bytes>::new(),
            &git_req("/team/app.git/info/refs", Some("service=git-upload-pack")),
            &alice(),
            from(peer),
            None,
        )
        .await
    }

    /// The one who asks in these tests.
    fn alice() -> Identity {
        Identity {
            user: "alice".into(),
            token_id: "t1".into(),
        }
    }

    /// A request from `peer`, seen directly (no proxy in front).
    fn from(peer: std::net::SocketAddr) -> RequestSource {
        RequestSource {
            peer,
            client: peer,
            id: crate::request_id::RequestId::next(),
        }
    }

    /// A challenge from the upstream, `401` or `407`, is about gitgate's own credentials:
    /// a 502 that says so (and names the upstream in the log), never passed on to make git
    /// prompt for a password.
    #[tokio::test]
    async fn an_upstreams_challenge_is_a_502_naming_the_credentials_never_a_prompt() {
        for answer in [
            &b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
               Content-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
              Proxy-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\n\r\n",
        ] {
            let (port, upstream) = answering(answer).await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let e = advertisement(&b).await.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_GATEWAY, "{e}");
            assert!(e.message.contains("check [upstream.credentials]"), "{e}");
            assert_eq!(
                e.detail.as_deref(),
                Some(format!("upstream http://127.0.0.1:{port}/git").as_str())
            );
            upstream.await.unwrap();
        }
    }

    /// An answer whose head hyper will not read — more header lines than
    /// [`pool::ANSWER_HEADER_LINES`], or a head well over [`pool::ANSWER_HEAD_MAX`] — is a 502 that
    /// says so, with the limits, to git and in the log's line (which names the upstream), not
    /// hyper's "message head is too large"; one with exactly that many lines is passed on, so
    /// the limit said is the one hyper applies.
    #[tokio::test]
    async fn an_answer_with_too_many_header_lines_is_a_502_that_says_so() {
        let with_lines = |lines: usize| {
            let mut answer = b"HTTP/1.1 200 OK\r\n\
                Content-Type: application/x-git-upload-pack-advertisement\r\n\
                Content-Length: 4\r\n"
                .to_vec();
            for i in 2..lines {
                answer.extend(format!("X-Added-{i}: by a proxy\r\n").as_bytes());
            }
            answer.extend(b"\r\n0000");
            answer
        };
        let (port, upstream) = answering(with_lines(pool::ANSWER_HEADER_LINES)).await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        let resp = advertisement(&b).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        upstream.await.unwrap();

        let mut one_line_too_long = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        // Past what hyper's reads can take in one go once the bound is reached.
        one_line_too_long.extend(vec![b'x'; 3 * pool::ANSWER_HEAD_MAX]);
        one_line_too_long.extend(b"\r\nContent-Length: 0\r\n\r\n");
        for answer in [with_lines(pool::ANSWER_HEADER_LINES + 1), one_line_too_long] {
            // Its write may fail: gitgate closes once the head is too large for it.
            let (port, _upstream) = answering(answer).await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let e = advertisement(&b).await.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_GATEWAY, "{e}");
            assert_eq!(
                e.message,
                "the upstream git server's answer has too many header lines (more than 100), \
                 too large a head (over 64 KiB), or a Content-Length over \
                 18446744073709551613, for gitgate to read"
            );
            let logged = e.to_string();
            assert!(
                logged.contains(&format!("upstream http://127.0.0.1:{port}/git")),
                "{logged}"
            );
            assert!(!logged.contains("message head"), "{logged}");
        }
        // `gitgate check`'s plain HEAD of the base path says the same.
        let (port, _upstream) = answering(with_lines(pool::ANSWER_HEADER_LINES + 1)).await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        assert_eq!(b.answer_to_a_plain_request().await, Err(head_too_large()));
    }

    /// The upstream is asked for its own authority and the canonical path under its base:
    /// the `Host` the client named (gitgate's) goes on only as `X-Forwarded-Host`.
    #[tokio::test]
    async fn the_upstream_is_asked_with_its_own_host_and_base_path() {
        let (port, upstream) = answering(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
              Content-Length: 4\r\n\r\n0000",
        )
        .await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        let resp = advertisement(&b).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"0000");
        let head = upstream.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with(
                "get /git/team/app.git/info/refs?service=git-upload-pack http/1.1\r\n"
            ),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(!head.contains("\r\nhost: gitgate.example"), "{head}");
    }

    /// An upstream for one connection: after the request's head it writes `parts`, each
    /// flushed and 100 ms after the one before, then reads the request on to its end, so
    /// that the socket is not closed on bytes unread (a reset, which can cut the answer
    /// short).
    async fn answering_after_the_head(parts: Vec<Vec<u8>>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(s.read_u8().await.unwrap());
            }
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                s.write_all(part).await.unwrap();
                s.flush().await.unwrap();
            }
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        port
    }

    /// An upload-pack `POST` (its body a flush-pkt) forwarded by a backend for
    /// `http://127.0.0.1:{port}/git`, as from alice.
    async fn post_upload_pack(port: u16) -> Result<Response<ResponseBody>, ForwardError> {
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        let (parts, ()) = Request::post("/team/app.git/git-upload-pack")
            .header(HOST, "gitgate.example")
            .header(CONTENT_TYPE, "application/x-git-upload-pack-request")
            .body(())
            .unwrap()
            .into_parts();
        let mut git_req =
            crate::git::classify("POST", "/team/app.git/git-upload-pack", None, "/").unwrap();
        git_req.query = None;
        let peer: std::net::SocketAddr = "127.0.0.1:50000".parse().unwrap();
        b.forward(
            &parts,
            http_body_util::Full::new(Bytes::from_static(b"0000")),
            &git_req,
            &alice(),
            from(peer),
            None,
        )
        .await
    }

    /// An advertisement the upstream ends cleanly without git's closing flush-pkt (its git
    /// process died) passes on what came and then fails, whichever HTTP framing ended it; a
    /// whole one, or an answer that is not git's, ends cleanly.
    /// A `POST`'s answer — git's pack, which nginx + fcgiwrap send in chunks of 4 KiB — comes
    /// to the client one frame per read of hyper's, not one per chunk (see
    /// `super::rechunk`), with every byte.
    #[tokio::test]
    async fn a_packs_chunks_reach_the_client_one_frame_per_read_not_one_per_chunk() {
        // NAK, then 300 lines of side band 1 of 1000 bytes each, then the flush.
        let mut pack = b"0008NAK\n".to_vec();
        for k in 0..300u32 {
            pack.extend_from_slice(b"03e8\x01");
            pack.extend((0..995u32).map(|i| (i.wrapping_mul(31) ^ k) as u8));
        }
        pack.extend_from_slice(b"0000");
        let mut answer =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\n\
                           Transfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        let chunks = pack.chunks(4096).count();
        for chunk in pack.chunks(4096) {
            answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            answer.extend_from_slice(chunk);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        let port = answering_after_the_head(vec![answer]).await;
        let mut body = post_upload_pack(port).await.unwrap().into_body();
        let (mut got, mut frames) = (Vec::new(), 0);
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(frame.unwrap().data_ref().unwrap());
            frames += 1;
        }
        assert_eq!(got, pack);
        // About 300 KB in hyper's reads, which grow from 8 KiB to 64 KiB: under ten, where
        // each of the 74 chunks was a frame.
        assert!(frames < 10, "{frames} frames for {chunks} chunks");
    }

    #[tokio::test]
    async fn an_answer_gits_framing_says_was_cut_short_fails_after_what_came() {
        const ADVERTISEMENT: &str = "application/x-git-upload-pack-advertisement";
        let cut: &[u8] = b"001e# service=git-upload-pack\n0000\
                           003c1111111111111111111111111111111111111111 HEAD\0side-band\n";
        let whole = [cut, b"0000"].concat();
        let length = |body: &[u8], content_type: &str| {
            let mut a = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            a.extend_from_slice(body);
            a
        };
        let chunked = |body: &[u8], trailers: &str| {
            let mut a = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {ADVERTISEMENT}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                body.len()
            )
            .into_bytes();
            a.extend_from_slice(body);
            a.extend_from_slice(format!("\r\n0\r\n{trailers}\r\n").as_bytes());
            a
        };
        let cases: [(&str, Vec<u8>, &[u8], bool); 7] = [
            ("Content-Length", length(cut, ADVERTISEMENT), cut, true),
            // Nothing at all: no advertisement is empty.
            ("empty, chunked", chunked(b"", ""), b"", true),
            ("chunked", chunked(cut, ""), cut, true),
            (
                "chunked with trailers",
                chunked(cut, "X-Checked: 1\r\n"),
                cut,
                true,
            ),
            (
                "whole, Content-Length",
                length(&whole, ADVERTISEMENT),
                &whole,
                false,
            ),
            ("whole, chunked", chunked(&whole, ""), &whole, false),
            ("not git's", length(cut, "text/plain"), cut, false),
        ];
        for (case, answer, body, fails) in cases {
            let (port, _upstream) = answering(answer.leak()).await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let mut got = Vec::new();
            let mut failed = None;
            let mut resp = advertisement(&b).await.unwrap().into_body();
            while let Some(frame) = resp.frame().await {
                match frame {
                    Ok(f) => {
                        got.extend_from_slice(f.data_ref().unwrap());
                        // Not over (the server would end the answer cleanly) until it failed.
                        assert!(!fails || !resp.is_end_stream(), "{case}: ended");
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            assert_eq!(got, body, "{case}: what came is passed on");
            match failed {
                Some(e) if fails => assert!(
                    e.contains("cut short: it ended without git's closing flush-pkt")
                        && e.contains(&format!("(upstream http://127.0.0.1:{port}/git)")),
                    "{case}: {e}"
                ),
                None if !fails => {}
                other => panic!("{case}: {other:?}"),
            }
        }
    }

    /// An answer longer than `i64::MAX` bytes by its `Content-Length` is a 502 that says so:
    /// curl, and so git, cannot hold such a length, ignores it and reads to the close, so an
    /// answer cut short there (here: 4 bytes) read as a whole one. `i64::MAX` is passed on.
    #[tokio::test]
    async fn an_answer_longer_than_git_can_count_is_a_502() {
        let of_length = |length: &str| -> &'static [u8] {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
                 Content-Length: {length}\r\n\r\n0000"
            )
            .into_bytes()
            .leak()
        };
        for length in ["9223372036854775808", "18446744073709551613"] {
            let (port, _upstream) = answering(of_length(length)).await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let e = advertisement(&b).await.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_GATEWAY, "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("says it is {length} bytes long")),
                "{e}"
            );
        }
        // Past 2^64-3 hyper refuses the head itself, in the words of one too large: those
        // say the length too, not the head's size alone.
        for length in ["18446744073709551614", "18446744073709551615"] {
            let (port, _upstream) = answering(of_length(length)).await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let e = advertisement(&b).await.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_GATEWAY, "{e}");
            assert!(
                e.message
                    .contains("or a Content-Length over 18446744073709551613, for gitgate"),
                "{length}: {e}"
            );
        }
        let (port, _upstream) = answering(of_length("9223372036854775807")).await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        assert_eq!(advertisement(&b).await.unwrap().status(), StatusCode::OK);
    }

    /// An empty advertisement of `Content-Length: 0` is a 502 with the reason: the client's
    /// answer, of length 0 too, would end without its body being polled, so it could not fail
    /// as a cut one does. An empty answer to a POST (git's answer to a probe), or one not git's,
    /// is passed on.
    #[tokio::test]
    async fn an_empty_advertisement_is_a_502_with_the_reason() {
        let empty = |content_type: &str| -> &'static [u8] {
            format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: 0\r\n\r\n")
                .into_bytes()
                .leak()
        };
        let (port, _upstream) =
            answering(empty("application/x-git-upload-pack-advertisement")).await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        let e = advertisement(&b).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert!(
            e.to_string().starts_with(
                "the upstream git server's answer was empty, which git cannot read: it ended \
                 without git's closing flush-pkt"
            ),
            "{e}"
        );
        // git's answer to the probe (`0000`) its client sends before a request larger than its
        // POST buffer is empty, from upload-pack as from receive-pack.
        for content_type in [
            "application/x-git-upload-pack-result",
            "application/x-git-receive-pack-result",
            "text/plain",
        ] {
            let (port, _upstream) = answering(empty(content_type)).await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let resp = advertisement(&b).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{content_type}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(body.is_empty(), "{content_type}");
        }
    }

    /// hyper's server stops polling a body that says it is at its end, and ends the client's
    /// answer there, cleanly. So the body of an answer git's framing says was cut short does not
    /// say so after its last frame (the one that ends a `Content-Length` answer): it fails
    /// first. A whole answer's body is at its end after its last frame.
    #[tokio::test]
    async fn a_cut_answers_body_is_not_at_its_end_until_it_has_failed() {
        let cut: &[u8] = b"001e# service=git-upload-pack\n0000\
                           003c1111111111111111111111111111111111111111 HEAD\0side-band\n";
        let whole = [cut, b"0000"].concat();
        for (body, fails) in [(cut.to_vec(), true), (whole, false)] {
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(&body);
            let (port, _upstream) = answering(answer.leak()).await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let r = git_req("/team/app.git/info/refs", Some("service=git-upload-pack"));
            let req = Request::builder()
                .uri(b.target(&r).unwrap())
                .header(HOST, b.host.clone())
                .body(
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap();
            let (resp, connection) = b
                .send(req, None, None, &AtomicBool::new(false))
                .await
                .unwrap();
            let (parts, inner) = resp.into_parts();
            // The body as `forward` makes it, without the batching around it.
            let mut upstream_body = Box::pin(UpstreamBody::new(
                &b,
                inner,
                connection,
                None,
                AnswerFraming::for_answer(parts.status, &parts.headers),
                crate::request_id::RequestId::next(),
            ));
            // Read as hyper's server reads it: until the body says it is at its end.
            let (mut got, mut failed) = (Vec::new(), None);
            while !upstream_body.is_end_stream() {
                match upstream_body.frame().await {
                    Some(Ok(f)) => got.extend_from_slice(f.data_ref().unwrap()),
                    Some(Err(e)) => {
                        failed = Some(e.to_string());
                        break;
                    }
                    None => panic!("fails {fails}: the body ended without saying so first"),
                }
            }
            assert_eq!(got, body, "fails {fails}");
            match failed {
                Some(e) if fails => assert!(
                    e.contains("cut short: it ended without git's closing flush-pkt"),
                    "{e}"
                ),
                None if !fails => {}
                other => panic!("fails {fails}: {other:?}"),
            }
        }
    }

    /// An answer git ended with its own error (`ERR`) is whole, and git's reason is logged
    /// once, as the embedded runner logs it: with the request's id and the upstream, and
    /// without what looks like a token secret. The body's end is looked at more than once
    /// (its last frame, then its end): the reason is said at the first.
    #[test]
    fn gits_refusal_ending_an_answer_is_logged_once_without_secrets() {
        let secret = format!("ggt_abcdefgh2345_{}_abcdef", "A".repeat(43));
        let err = format!("ERR access denied: {secret} is not allowed here\n");
        let body = format!("{:04x}{err}", err.len() + 4);
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        answer.push_str(&body);
        let answer: &'static [u8] = answer.into_bytes().leak();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut port = 0;
        let log = crate::store::test_support::logged(|| {
            runtime.block_on(async {
                let (p, _upstream) = answering(answer).await;
                port = p;
                let b = backend(&format!("http://127.0.0.1:{port}/git"));
                let resp = advertisement(&b).await.unwrap();
                let got = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&got[..], body.as_bytes(), "passed on whole");
            })
        });
        let said = "git refused the request and told its client why";
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(said)).collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(
            lines[0].contains("error=\"access denied: <a token secret, not repeated> is not")
                && lines[0].contains(&format!("upstream=\"http://127.0.0.1:{port}/git\""))
                && lines[0].contains("request_id="),
            "{log}"
        );
        assert!(!log.contains(&secret[16..]), "{log}");
    }

    /// A `HEAD` of an advertisement has no body to follow: the upstream's `200` (with the
    /// `Content-Length` a `GET` would have) goes to the client, not a 502 for an empty answer.
    #[tokio::test]
    async fn a_head_of_an_advertisement_is_passed_on_without_its_body() {
        let (port, _upstream) = answering(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
              Content-Length: 300\r\n\r\n",
        )
        .await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        let (parts, ()) = Request::builder()
            .method(Method::HEAD)
            .uri("/team/app.git/info/refs?service=git-upload-pack")
            .header(HOST, "gitgate.example")
            .body(())
            .unwrap()
            .into_parts();
        let query = Some("service=git-upload-pack");
        let mut head = crate::git::classify("HEAD", "/team/app.git/info/refs", query, "/").unwrap();
        head.query = query.map(|q| q.to_string().into());
        let peer: std::net::SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let resp = b
            .forward(
                &parts,
                http_body_util::Empty::<Bytes>::new(),
                &head,
                &alice(),
                from(peer),
                None,
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }

    /// An upstream connection the system gave up on (`ETIMEDOUT`: the peer stopped
    /// acknowledging) is a timeout, a 504, wherever it sits in the error's chain; a reset is
    /// not. Each cause is said once.
    #[test]
    fn an_etimedout_in_the_chain_is_a_timeout_and_each_cause_is_said_once() {
        #[derive(Debug)]
        struct Wrapped(io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error reading a body from connection")
            }
        }
        impl StdError for Wrapped {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let timed_out = Wrapped(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        let (cause, t) = cause_of("hyper".into(), false, Some(&timed_out));
        assert!(t, "{cause}");
        assert!(
            cause.starts_with("hyper: error reading a body from connection: ")
                && cause.contains("timed out"),
            "{cause}"
        );
        let reset = Wrapped(io::Error::from_raw_os_error(libc::ECONNRESET));
        let (cause, t) = cause_of("hyper".into(), false, Some(&reset));
        assert!(!t, "{cause}");
        // Already a timeout by hyper's word stays one; a cause the top already says is not
        // said again.
        assert!(cause_of("x".into(), true, None).1);
        let io = io::Error::other("hyper");
        assert_eq!(cause_of("hyper".into(), false, Some(&io)).0, "hyper");
        // A timeout stays one whatever else the chain holds (a reset further down).
        let (cause, t) = cause_of("hyper".into(), true, Some(&reset));
        assert!(t, "{cause}");
        // Nothing said before the first cause: no separator before it either.
        assert_eq!(cause_of(String::new(), false, Some(&io)).0, "hyper");
    }

    /// A `Retry-After` of seconds is one up to ten digits, which no server's wait exceeds.
    #[test]
    fn a_retry_after_of_ten_digits_is_one_and_of_eleven_is_not() {
        assert!(a_retry_after(b"1234567890"));
        assert!(!a_retry_after(b"12345678901"));
    }

    /// A pooled connection that the upstream closes as the next request arrives (it went
    /// away between the two) costs that request nothing: a bodiless request goes once more,
    /// on a new connection.
    #[tokio::test]
    async fn a_bodiless_request_on_a_pooled_connection_the_upstream_dropped_goes_again() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n0000";
        async fn head(r: &mut BufReader<tokio::net::TcpStream>) -> bool {
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return false;
                }
                if line == "\r\n" {
                    return true;
                }
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = tokio::spawn(async move {
            // The first connection answers once, then closes on the second request unanswered.
            let (s, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(s);
            assert!(head(&mut r).await);
            r.get_mut().write_all(OK).await.unwrap();
            assert!(head(&mut r).await);
            drop(r);
            // The second answers.
            let (s, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(s);
            assert!(head(&mut r).await);
            r.get_mut().write_all(OK).await.unwrap();
            r.get_mut().flush().await.unwrap();
        });
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        for n in 1..=2 {
            let resp = advertisement(&b)
                .await
                .unwrap_or_else(|e| panic!("request {n}: {e}"));
            assert_eq!(resp.status(), StatusCode::OK, "request {n}");
            // Read to the end: the connection goes back to the pool.
            resp.into_body().collect().await.unwrap();
        }
        upstream.await.unwrap();
    }

    /// An upstream's `400` page that says plain HTTP came to its TLS port is a 502 that says
    /// to write `https://`; a git server's own `400`, in text, goes to git as it came.
    #[tokio::test]
    async fn a_400_page_about_plain_http_on_a_tls_port_says_to_write_https() {
        let (port, upstream) = answering(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 73\r\n\r\n\
              <html><body>The plain HTTP request was sent to HTTPS port</body></html>\r\n",
        )
        .await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        let e = advertisement(&b).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY, "{e}");
        assert!(
            e.detail
                .as_deref()
                .is_some_and(|d| d.contains("write https:// in [upstream] url")),
            "{e}"
        );
        upstream.await.unwrap();

        let (port, upstream) = answering(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n\
              no such x",
        )
        .await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        let resp = advertisement(&b).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        upstream.await.unwrap();
    }

    /// A `POST`'s `400` page is read as a `GET`'s is, although its connection is driven by the
    /// request (see `super::pool`): the page's bytes that come after the head are read too, at
    /// once, not after `page_start`'s two seconds with nothing.
    #[tokio::test]
    async fn a_posts_400_page_is_read_while_its_connection_is_driven_by_the_request() {
        let page = b"<html><body>The plain HTTP request was sent to HTTPS port</body></html>";
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
            page.len()
        );
        // The page in a read of its own, after the head was handed on.
        let port = answering_after_the_head(vec![head.into_bytes(), page.to_vec()]).await;
        let began = std::time::Instant::now();
        let e = post_upload_pack(port).await.unwrap_err();
        let took = began.elapsed();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY, "{e}");
        assert!(
            e.detail
                .as_deref()
                .is_some_and(|d| d.contains("write https:// in [upstream] url")),
            "the page was not read: {e:?}"
        );
        // page_start gives up after 2 s; the page came 100 ms after the head.
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }

    /// An upstream's `403` without text (git http-backend's to a push without REMOTE_USER is
    /// bodiless; Apache's own is a page) stays a `403`, but git is told in text that it is the
    /// upstream's refusal and that its token was accepted; one in text, a git server's own
    /// reason, goes to git as it came.
    #[tokio::test]
    async fn an_upstreams_403_without_a_reason_says_whose_refusal_it_is() {
        for answer in [
            &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n\
              <p>denied</p>",
        ] {
            let (port, upstream) = answering(answer).await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let resp = advertisement(&b).await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
            let said = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                String::from_utf8_lossy(&said),
                "the upstream git server refused this request (403 Forbidden) without saying \
                 why to the client (your token was accepted); the server's log has its reason\n"
            );
            upstream.await.unwrap();
        }

        let header = hyper::header::HeaderName::from_static("x-forwarded-user");
        let (_, likely) = unexplained_refusal(Access::Write, &header);
        assert!(
            likely.contains("pass gitgate's x-forwarded-user header on as REMOTE_USER"),
            "{likely}"
        );
        let (_, likely) = unexplained_refusal(Access::Read, &header);
        assert!(likely.contains("http.uploadpack"), "{likely}");

        let (port, upstream) = answering(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n\
              not for you",
        )
        .await;
        let b = backend(&format!("http://127.0.0.1:{port}/git"));
        let resp = advertisement(&b).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let said = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&said[..], b"not for you");
        upstream.await.unwrap();
    }

    /// An upstream's `413` (a push over nginx's `client_max_body_size`, 1 MB unless set) goes
    /// to git as it came, which prints only `RPC failed; HTTP 413`; the log says which limit
    /// to raise.
    #[test]
    fn an_upstreams_413_is_logged_with_the_limit_to_raise() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let log = crate::store::test_support::logged(|| {
            runtime.block_on(async {
                let (port, upstream) =
                    answering(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n").await;
                let b = backend(&format!("http://127.0.0.1:{port}/git"));
                let resp = advertisement(&b).await.unwrap();
                assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
                upstream.await.unwrap();
            })
        });
        assert!(
            log.contains("refused a request as too large (413)")
                && log.contains("client_max_body_size 0")
                && log.contains("LimitRequestBody 0"),
            "{log}"
        );
    }

    /// An upstream's status of three digits past 599 (hyper's client reads 100-999) is no HTTP
    /// status (RFC 9110 §15): a `502` that names it, not passed on for git to guess at.
    #[tokio::test]
    async fn an_upstreams_status_past_599_is_a_502_naming_it() {
        for status in ["600 Odd", "999 Custom"] {
            let (port, upstream) = answering(format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
            ))
            .await;
            let b = backend(&format!("http://127.0.0.1:{port}/git"));
            let Err(e) = advertisement(&b).await else {
                panic!("{status}: passed on");
            };
            assert_eq!(e.status, StatusCode::BAD_GATEWAY, "{status}");
            let code = &status[..3];
            assert!(
                e.message.contains(&format!("status {code}")),
                "{status}: {}",
                e.message
            );
            upstream.await.unwrap();
        }
    }

    /// `check`'s plain `HEAD` waits no longer than the upstream's idle timeout when that is
    /// shorter than its own ten seconds.
    #[tokio::test]
    async fn the_plain_heads_wait_is_the_idle_timeout_when_that_is_shorter() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:{port}/git\"\nidle_timeout_seconds = 1\n"
        );
        let b = backend_of(&text);
        let e = b.answer_to_a_plain_request().await.unwrap_err();
        assert!(e.starts_with("no answer within 1 s"), "{e}");
        drop(silent);
    }

    /// An upstream that does not let itself be connected to within the idle timeout (here an
    /// https one that accepts and never finishes the handshake, with `connect_timeout_seconds`
    /// longer than the idle timeout) is a 504 that says connecting took that long, not that it
    /// "sent no answer", which has the operator look for a hung git server that never saw the
    /// request.
    #[tokio::test]
    async fn a_connection_not_opened_within_the_idle_timeout_is_said_so_not_an_unanswered_request()
    {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let b = backend_of(&format!(
            "[upstream]\nurl = \"https://127.0.0.1:{port}/git\"\nca_file = \"{}\"\n\
             connect_timeout_seconds = 10\nidle_timeout_seconds = 1\n",
            fixture("ca.pem").display()
        ));
        let started = std::time::Instant::now();
        let Err(e) = advertisement(&b).await else {
            panic!("answered without a handshake");
        };
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(!e.message.contains("sent no answer"), "{}", e.message);
        assert!(
            e.message
                .contains("no connection to it was opened within 1s"),
            "{}",
            e.message
        );
        // Once connected, the words stay those of an upstream that does not answer.
        assert_eq!(
            silent_upstream(Duration::from_secs(300), true),
            "the upstream git server sent no answer for 300s"
        );
        drop(silent);
    }

    /// An https upstream is offered HTTP/1.1 alone in the handshake: gitgate speaks nothing
    /// else to it, so an upstream that prefers h2 must not be let choose it.
    #[tokio::test]
    async fn an_https_upstream_is_offered_http_1_1_alone() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let store = crate::tls::CertStore::load(&fixture("server-a.pem"), &fixture("server-a.key"))
            .unwrap();
        // This server prefers h2, as gitgate's own listener does.
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(store.server_config().unwrap()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = acceptor.accept(s).await.unwrap();
            let agreed = s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n0000")
                .await;
            let _ = s.flush().await;
            agreed
        });
        let text = format!(
            "[upstream]\nurl = \"https://127.0.0.1:{port}/git\"\nca_file = \"{}\"\n",
            fixture("ca.pem").display()
        );
        let b = backend_of(&text);
        let answer = advertisement(&b).await;
        assert_eq!(upstream.await.unwrap(), Some(b"http/1.1".to_vec()));
        assert_eq!(answer.unwrap().status(), StatusCode::OK);
    }

    /// A push whose upstream stopped reading it (the client still had more to send) has timed
    /// out on the upstream's side: a 504 counted against the upstream, not the client's 408.
    #[tokio::test]
    async fn an_upload_the_upstream_stopped_reading_is_its_timeout_not_the_clients() {
        // Takes the connection, never reads from it, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _upstream = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:{port}/git\"\nidle_timeout_seconds = 1\n"
        );
        let b = backend_of(&text);
        let (parts, ()) = Request::builder()
            .method(Method::POST)
            .uri("/team/app.git/git-receive-pack")
            .header(HOST, "gitgate.example")
            .body(())
            .unwrap()
            .into_parts();
        let peer: std::net::SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let push =
            crate::git::classify("POST", "/team/app.git/git-receive-pack", None, "/").unwrap();
        let e = b
            .forward(&parts, Endless, &push, &alice(), from(peer), None)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT, "{e}");
        assert_eq!(e.fault, Fault::Backend, "{e}");
    }

    /// A push whose pack has gone up whole and gets no answer within the idle timeout (a
    /// pre-receive hook silent that long) may still be applied upstream: the 504 says so, as
    /// the stop's 503 does, not only that the upstream failed. A fetch's does not.
    #[tokio::test]
    async fn a_whole_push_left_unanswered_may_still_be_applied_and_its_504_says_so() {
        // Reads every request to its end, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                });
            }
        });
        let b = backend_of(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:{port}/git\"\nidle_timeout_seconds = 1\n"
        ));
        let peer: std::net::SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let post = |path: &str| {
            Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(HOST, "gitgate.example")
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        for (path, pushing) in [
            ("/team/app.git/git-receive-pack", true),
            ("/team/app.git/git-upload-pack", false),
        ] {
            let git_req = crate::git::classify("POST", path, None, "/").unwrap();
            let e = b
                .forward(
                    &post(path),
                    http_body_util::Full::new(Bytes::from_static(b"0000")),
                    &git_req,
                    &alice(),
                    from(peer),
                    None,
                )
                .await
                .unwrap_err();
            assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT, "{e}");
            if pushing {
                assert!(e.message.contains("may still be applied"), "{}", e.message);
            } else {
                assert!(!e.message.contains("push"), "{}", e.message);
            }
        }
        upstream.abort();
    }

    /// An answer that stalls while the push it answers is still going up, unread by the
    /// upstream, ends its exchange: the connection is closed with the answer's failure, not left
    /// on its own task sending the rest of the upload to an upstream that no longer reads it,
    /// for as long as that upstream keeps the connection open (each such push held a socket and
    /// megabytes queued in it after its request had ended and been logged).
    #[tokio::test]
    async fn a_stalled_answer_closes_its_connection_not_leaves_its_upload_sending() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (failed, told) = tokio::sync::oneshot::channel::<()>();
        // Answers the push's head at once (as git http-backend does), then reads nothing more
        // until the answer has failed; then whether the connection ends within 5 s.
        let upstream = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-receive-pack-result\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
            told.await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            tokio::time::timeout(Duration::from_secs(5), async {
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            })
            .await
            .is_ok()
        });
        let b = backend_of(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:{port}/git\"\nidle_timeout_seconds = 1\n"
        ));
        let (parts, ()) = Request::builder()
            .method(Method::POST)
            .uri("/team/app.git/git-receive-pack")
            .header(HOST, "gitgate.example")
            .body(())
            .unwrap()
            .into_parts();
        let peer: std::net::SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let push =
            crate::git::classify("POST", "/team/app.git/git-receive-pack", None, "/").unwrap();
        let answer = b
            .forward(&parts, Endless, &push, &alice(), from(peer), None)
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let mut body = answer.into_body();
        let e = loop {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the stalled answer ended cleanly"),
            }
        };
        assert!(e.to_string().contains("stalled"), "{e}");
        drop(body);
        failed.send(()).unwrap();
        assert!(
            upstream.await.unwrap(),
            "the connection went on sending the upload after its answer failed"
        );
    }

    /// An upstream URL without a port is reached on its scheme's: 443 for `https`, 80 for
    /// `http`; one with a port, on that.
    #[test]
    fn an_upstream_url_without_a_port_is_reached_on_its_schemes() {
        let a = |s: &str| s.parse::<hyper::http::uri::Authority>().unwrap();
        assert_eq!(port_of(&a("git.example.com"), true), 443);
        assert_eq!(port_of(&a("git.example.com"), false), 80);
        assert_eq!(port_of(&a("git.example.com:8443"), true), 8443);
        assert_eq!(port_of(&a("[::1]:3000"), false), 3000);
    }

    /// Every request's future holds `send`'s: one that held a new connection's opening inline
    /// (kilobytes: a name resolved, TCP, TLS, hyper's handshake) made each request's future
    /// that much larger, copied whole into hyper's dispatcher per request — a refused one's
    /// too. The opening is boxed, so `send` is smaller than it.
    #[test]
    fn sending_holds_no_connection_opening_inline() {
        let http = backend("http://127.0.0.1:9/x");
        let req = Request::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        let send = std::mem::size_of_val(&http.send(req, None, None, &AtomicBool::new(false)));
        let opening = std::mem::size_of_val(&http.pool.connect_new(Driving::Inline));
        assert!(
            send < opening,
            "send's future is {send} bytes, a connection's opening {opening}"
        );
    }
}
