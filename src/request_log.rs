//! The request log: one line per request (`gitgate::request`) with what the gate learnt of it,
//! written when its answer ends — sent in full, cut off, or never sent — and the fields that
//! come from the client (method, path, repository, `User-Agent`) written so that none of them
//! can hold a secret, forge a field or a line, or make a line longer than a few KiB.
//!
//! Apart from [`crate::gate`], which decides: a line is written from the answer's body when it
//! ends (`LoggedBody`), or when its future is dropped unanswered (`Unanswered`), long after
//! the decision; and the server writes lines of its own for answers given before the gate sees
//! a request ([`log_answered_before_the_gate`], [`log_unparsable`]).

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, StatusCode, Uri};

use crate::credentials;
use crate::idle::Activity;
use crate::inflight::Slot;
use crate::log_value::{LogText, LogValue};
use crate::metrics::{Operation, Outcome, METRICS};
use crate::request_id::RequestId;
use crate::upstream::framing::{AnswerFraming, WholeAt};

use crate::gate::{Inbound, RequestLog, ResponseBody};

/// Why a request was refused for its form (`400`, `415`, `501`), or as a web page of another
/// site's (`403`): the request line has only its status, and the reason the client was told
/// (`unknown service: ...`, `invalid percent-encoding ...`) is otherwise nowhere the operator
/// can read it. Written as the answer is, with what looks like a secret left out (the reason
/// may quote the request), and quoted with control characters escaped, and cut at
/// [`MALFORMED_SAID`] bytes: a reason can quote a header value of any length, which any client
/// can send.
///
/// Said at most once a minute for one address and one reason, with `unlogged` the refusals of
/// both since its last such line (see [`FORM_REFUSALS`]): a page of another site that a
/// browser keeps loading, or a client that repeats one malformed request, would otherwise
/// write two lines for each of its requests. Each refusal still has its request line.
pub(crate) fn malformed_said(id: RequestId, remote: SocketAddr, status: u16, reason: &str) {
    let Some(unlogged) = form_refusal_to_say(id, remote.ip(), status, reason) else {
        return;
    };
    let reason = credentials::without_secrets(reason.trim_end());
    let mut end = reason.len().min(MALFORMED_SAID);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if end < reason.len() { "..." } else { "" };
    tracing::info!(
        request_id = %id,
        remote = %remote.ip(),
        status,
        // A `String`'s Debug: quoted, its control characters escaped.
        reason = %LogText(&format!("{}{cut}", &reason[..end])),
        unlogged,
        "refused a request for its form"
    );
}

/// The refusals [`malformed_said`] has said, by client address, status and reason (its hash:
/// a reason can be as long as the header it quotes), for the lines it leaves out, each with
/// the request whose line said it last (which its tail names: that line has the reason). At
/// most [`FORM_REFUSAL_KEYS`] are kept; see [`RefusalsBy`](crate::repeats::RefusalsBy).
/// At most [`FORM_REFUSAL_KEYS_PER_CLIENT`] are one client's (an IPv6 address counts by its
/// /64, as [`crate::network::client_key`] has it): one client that varies its reason would
/// otherwise hold them all, and another address's first refusal would go unsaid.
type FormRefusals =
    crate::repeats::RefusalsBy<(std::net::IpAddr, u16, u64), Option<RequestId>, std::net::IpAddr>;

static FORM_REFUSALS: std::sync::LazyLock<std::sync::Mutex<FormRefusals>> =
    std::sync::LazyLock::new(|| {
        std::sync::Mutex::new(crate::repeats::RefusalsBy::per_client(
            FORM_REFUSAL_KEYS,
            FORM_REFUSAL_KEYS_PER_CLIENT,
            |(from, _, _)| crate::network::client_key(*from),
        ))
    });

/// The tails of bursts of refusals for their form (see
/// [`Refusals::tail`](crate::repeats::Refusals::tail)): for each address and reason whose
/// refusals since its last line went unlogged, a line with how many, once its minute has
/// passed (or at once when `now_or_never`: at the stop), naming in `after_request_id` the
/// request whose line has the reason. Else a burst's last minute is counted by no line.
pub(crate) fn say_form_refusal_tails(now_or_never: bool) {
    let tails = FORM_REFUSALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .tails(crate::clock::monotonic_ms(), now_or_never);
    for (key, unlogged, last) in tails {
        let after = last.map_or_else(|| "-".to_string(), |id| id.to_string());
        match key {
            Some((remote, status, _)) => tracing::info!(
                remote = %remote,
                status,
                unlogged,
                after_request_id = %after,
                "refused a request for its form: the tail of a burst, the refusals of this \
                 address and reason since the line of after_request_id (which has the reason), \
                 not logged till now"
            ),
            None => tracing::info!(
                unlogged,
                "refused a request for its form: the tail of a burst, refusals of addresses and \
                 reasons not counted apart (more than are kept at once), not logged till now"
            ),
        }
    }
}

/// The most addresses and reasons whose form refusals are counted apart (some 200 KiB).
const FORM_REFUSAL_KEYS: usize = 4096;

/// The most reasons of one client (an address, an IPv6 /64) counted apart: a client refused
/// for its form has one reason or a few (a misconfigured tool, a page of another site). Its
/// others share the count of those that find no room. 256 clients fill the map.
const FORM_REFUSAL_KEYS_PER_CLIENT: usize = 16;

/// Whether a refusal of `status` for `reason` to `from` is the one to say now (see
/// [`malformed_said`]): `Some(n)`, `n` those of the same address and reason left unsaid since
/// the last line; `None` to stay quiet. Also for a trusted proxy's unreadable
/// `X-Forwarded-For`, which a misconfigured proxy sends with every request.
pub(crate) fn form_refusal_to_say(
    id: RequestId,
    from: std::net::IpAddr,
    status: u16,
    reason: &str,
) -> Option<u32> {
    FORM_REFUSALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .refused_with(
            (from, status, reason_key(reason)),
            crate::clock::monotonic_ms(),
            Some(id),
        )
}

/// A reason, as a key of [`FORM_REFUSALS`]: its hash (two reasons that share one share a count).
fn reason_key(reason: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    reason.hash(&mut hasher);
    hasher.finish()
}

/// The most of a form refusal's reason the log repeats.
pub(crate) const MALFORMED_SAID: usize = 300;

/// The status logged for a request whose client went away before it had an answer (nginx's
/// "client closed request"; never sent).
pub(crate) const CLIENT_GONE_BEFORE_ANSWER: u16 = 499;

/// Pure: the backend's status a request's line counts, if any. Only a forwarded request has
/// one, and not one whose client left before the backend answered: it was allowed, but its
/// 499 is gitgate's word, not the backend's.
fn backend_status(forwarded: bool, status: u16) -> Option<u16> {
    (forwarded && status != CLIENT_GONE_BEFORE_ANSWER).then_some(status)
}

pub(crate) struct LogLine {
    /// Also in every other line the request writes.
    pub(crate) id: RequestId,
    pub(crate) method: hyper::Method,
    pub(crate) uri: Uri,
    pub(crate) agent: Option<hyper::header::HeaderValue>,
    pub(crate) remote: SocketAddr,
    pub(crate) who: RequestLog,
    pub(crate) status: u16,
    pub(crate) forwarded: bool,
    pub(crate) inbound: Arc<Inbound>,
    pub(crate) started: Instant,
    /// The connection's clocks: whether gitgate closed it for idling.
    pub(crate) connection: Activity,
}

impl LogLine {
    /// The request's metrics and its log line.
    pub(crate) fn write(self, bytes_out: u64, outcome: &str) {
        let operation = match self.who.access {
            Some("read") => Operation::Read,
            Some("write") => Operation::Write,
            _ => Operation::None,
        };
        let bytes_in = self.inbound.bytes.load(Ordering::Relaxed);
        // An answer sent in full to a client that had closed its connection under its upload
        // (the 400 of its body broken off): sent, but maybe to nobody.
        let outcome = match outcome {
            "complete" if self.inbound.closed.load(Ordering::Relaxed) => "client-gone",
            outcome => outcome,
        };
        METRICS.request_done(
            operation,
            Outcome::of(self.forwarded, self.status),
            backend_status(self.forwarded, self.status),
            self.started.elapsed(),
        );
        METRICS.request_ended(outcome);
        // A classified request's repository was checked for a token already (in `admit`, on
        // its decoded form, before `repo` was set); its path holds nothing else but the
        // configured prefix and a fixed git suffix, so it needs no second scan.
        let path = LogPath {
            path: self.uri.path(),
            token_checked: self.who.repo.is_some(),
        };
        // A push's commands, on a line of their own just before the request's: which refs it
        // asked to change is what an investigation asks first. Its own target, so that a log
        // filter dropping the request lines (`gitgate::request=off`) keeps it.
        // Every other request only looks whether the push's place was filled: no lock.
        if let Some(push) = self.inbound.push.get() {
            let push = push.lock().unwrap_or_else(|p| p.into_inner());
            tracing::info!(
                target: "gitgate::push_commands",
                request_id = %self.id,
                repo = %loggable_repo(self.who.repo.as_deref().unwrap_or("-")),
                user = %LogValue(self.who.user.as_deref().unwrap_or("-")),
                token_id = %self.who.token_id.as_deref().unwrap_or("-"),
                refs = %LogText(&push.to_string()),
                "push commands"
            );
        }
        tracing::info!(
            target: "gitgate::request",
            request_id = %self.id,
            method = %LogMethod(&self.method),
            path = %path,
            remote = %self.remote.ip(),
            repo = %loggable_repo(self.who.repo.as_deref().unwrap_or("-")),
            access = %self.who.access.unwrap_or("-"),
            user = %LogValue(self.who.user.as_deref().unwrap_or("-")),
            token_id = %self.who.token_id.as_deref().unwrap_or("-"),
            status = self.status,
            bytes_in,
            bytes_out,
            // A number, to the microsecond: a number in a JSON line too (`5.995`, `6.0`).
            duration_ms = self.started.elapsed().as_micros() as f64 / 1000.0,
            outcome = %outcome,
            agent = %LogAgent(self.agent.as_ref()),
            // Only on a request whose credentials were refused: why, in a word.
            auth = self.who.auth.map(|why| tracing::field::display(why.as_str())),
            "request"
        );
    }
}

/// A request's `User-Agent` in its log line: quoted where it has spaces (`git/2.39.5` plain,
/// `"JGit/6.1 (Linux)"` quoted), `-` without one, and cut to [`AGENT_LOGGED`] characters — a
/// client chooses it, and a 60 KiB one must not make every line of its requests that long. One
/// that holds what looks like a token secret (a script's variable in the wrong header) is not
/// written, as such a path is not: a secret is shorter than the cut.
pub(crate) struct LogAgent<'a>(Option<&'a hyper::header::HeaderValue>);

/// The most of a `User-Agent` a request line holds.
pub(crate) const AGENT_LOGGED: usize = 120;

impl fmt::Display for LogAgent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(agent) = self.0 else {
            return f.write_str("-");
        };
        let text = String::from_utf8_lossy(agent.as_bytes());
        if crate::credentials::names_a_secret(&text) {
            return f.write_str("\"<a User-Agent holding what looks like a token secret>\"");
        }
        match text.char_indices().nth(AGENT_LOGGED) {
            Some((cut, _)) => write!(f, "{}", LogValue(&format!("{}...", &text[..cut]))),
            None => write!(f, "{}", LogValue(&text)),
        }
    }
}

/// The log line of an answer the server gives before the gate sees the request (a connection
/// over its address's cap, too many header fields), in the request log's format with what is
/// known: every answer is in the log. `outcome` says which refusal it was. Not counted in
/// `gitgate_requests_total` (no git request was looked at) but for a probe's path asked with
/// another method (counted by the server as the gate counts a git path asked so); the cap's
/// refusals and the heads refused for their size have counters of their own.
pub fn log_answered_before_the_gate<B>(
    req: &hyper::Request<B>,
    remote: SocketAddr,
    status: StatusCode,
    outcome: &str,
) {
    let path = loggable_path(req.uri().path());
    log_unseen(
        &LogMethod(req.method()),
        &path,
        remote,
        status,
        outcome,
        None,
    );
}

/// The log line of a request hyper's HTTP/1 parser refused (answered `status`, then closed):
/// nothing of it is known but the address and what was wrong (`why`, hyper's words). Counted
/// apart, in `gitgate_unparsable_requests_total`.
pub fn log_unparsable(remote: SocketAddr, status: StatusCode, why: &str) {
    log_unseen(&"-", &"-", remote, status, "unparsable", Some(why));
}

/// A request line for an answer the gate did not decide: no repository, access, user or token.
pub(crate) fn log_unseen(
    method: &dyn fmt::Display,
    path: &dyn fmt::Display,
    remote: SocketAddr,
    status: StatusCode,
    outcome: &str,
    error: Option<&str>,
) {
    tracing::info!(
        target: "gitgate::request",
        request_id = %RequestId::next(),
        method = %method,
        path = %path,
        remote = %remote.ip(),
        // Display, not Debug: `user=-` as on every other request line, not `user="-"`.
        repo = %"-",
        access = %"-",
        user = %"-",
        token_id = %"-",
        status = status.as_u16(),
        outcome = %outcome,
        // Written only when there is one.
        error = error.map(tracing::field::debug),
        "request"
    );
}

/// A request method as written into a log line. A method is any run of token characters, `_`
/// and digits among them, so a whole gitgate token is a valid one — with its `ggt_` prefix or
/// without it (a script that put its secret in the wrong place, or cut the prefix off) — and
/// so is a password. The methods HTTP names are written as they are; another is written only
/// if it looks like one (WebDAV's `PROPFIND`, which an old git's dumb-HTTP push sends: capital
/// letters and `-`, at most [`MAX_LOGGED_METHOD`] of them), else by its length alone — no
/// secret is made of capitals alone, nor fits in so few.
pub struct LogMethod<'a>(pub &'a hyper::Method);

/// The longest unknown method written into a log line (`VERSION-CONTROL`, WebDAV's longest,
/// has 15 characters).
pub const MAX_LOGGED_METHOD: usize = 20;

impl fmt::Display for LogMethod<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use hyper::Method;
        let known = [
            Method::GET,
            Method::POST,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
            Method::CONNECT,
            Method::TRACE,
        ];
        let method = self.0.as_str();
        let looks_like_one = method.len() <= MAX_LOGGED_METHOD
            && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
        if known.contains(self.0) || looks_like_one {
            return f.write_str(method);
        }
        write!(
            f,
            "\"<a method of {} characters, not written>\"",
            method.len()
        )
    }
}

/// The path as logged: one that holds what may be a token secret (pasted into a URL by
/// mistake) is not written out, and anything but printable ASCII is escaped (see [`LogPath`]).
pub fn loggable_path(path: &str) -> LogPath<'_> {
    LogPath {
        path,
        token_checked: false,
    }
}

/// A repository as logged: cut as a path is. It was checked for a token before it was set
/// (in `admit`), and holds no character a path would escape.
pub fn loggable_repo(repo: &str) -> LogPath<'_> {
    LogPath {
        path: repo,
        token_checked: true,
    }
}

/// A request path as written into a log line. hyper passes on a path's raw bytes above ASCII,
/// and a client needs no credentials to have one logged: written as they came, an em space
/// (U+2003) or a line separator (U+2028) would let it add look-alike fields (`user=alice
/// status=200`) or lines to the log for any parser that splits on Unicode white space, and a
/// right-to-left override would reorder the line on screen. So a path that is not a plain word
/// of printable ASCII (without `"`, `\` or `=`) is written as [`LogValue`] writes free text:
/// quoted, with JSON's escapes for every character not shown as itself (`"/x\u2003user=a"`);
/// a letter of any script stays itself (`"/café.git"`). A logfmt reader, and the JSON lines,
/// give back the path as it was sent.
pub struct LogPath<'a> {
    path: &'a str,
    /// Whether the path was already found to hold no token (a classified git path).
    token_checked: bool,
}

impl fmt::Display for LogPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.token_checked
            && (crate::credentials::holds_a_token(self.path)
                || crate::credentials::has_a_secrets_random_part(self.path))
        {
            return f.write_str("\"<a path holding what looks like a token secret>\"");
        }
        let (kept, cut) = kept_of_path(self.path);
        if cut {
            // Quoted, to say so in words, and escaped as every quoted value is (JSON's
            // escapes, which a logfmt reader undoes).
            let said = format!("{kept}... ({} bytes in all, cut)", self.path.len());
            return LogText(&said).fmt(f);
        }
        // Bare when it is a plain word, else quoted with JSON's escapes, as every value that
        // is not: a logfmt reader and `GITGATE_LOG_FORMAT=json` both give back the path sent.
        LogValue(kept).fmt(f)
    }
}

/// How much of a path (or repository) a client sent goes into a log line or an audit event:
/// the first [`PATH_KEPT`] bytes, cut at a character's end. A git path is far shorter; a
/// longer one, anyone's to send without credentials, would otherwise make each of its log
/// lines up to [`LONGEST_TARGET`](crate::gate::LONGEST_TARGET) bytes long, and more once escaped.
pub const PATH_KEPT: usize = 1024;

/// The part of `path` that is logged, and whether that is less than all of it.
pub fn kept_of_path(path: &str) -> (&str, bool) {
    crate::log_value::kept(path, PATH_KEPT)
}

/// A request's log line until it has an answer; written (as 499, `client-gone`, or `shutdown`
/// past the grace period) if dropped before then.
pub(crate) struct Unanswered(pub(crate) Option<LogLine>);

impl Unanswered {
    pub(crate) fn line(&mut self) -> &mut LogLine {
        self.0
            .as_mut()
            .expect("taken only by answered(), which consumes self")
    }

    /// The line, now for the answer's body to write.
    pub(crate) fn answered(mut self) -> LogLine {
        self.0.take().expect("taken only here")
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(mut line) = self.0.take() {
            if std::thread::panicking() {
                // A panic while deciding or forwarding unwinds through here (the request's
                // locals are dropped as it does), and `unwind::CatchPanic` answers 500: logged
                // and counted as that, a 5xx an alert sees, not as a client that left.
                line.status = StatusCode::INTERNAL_SERVER_ERROR.as_u16();
                line.forwarded = false;
                line.write(0, INTERNAL_ERROR);
                return;
            }
            let outcome = crate::server::unfinished_outcome(&line.connection);
            line.write(0, outcome);
        }
    }
}

/// The outcome of a request whose handling panicked (its answer, if any was still to come,
/// is `unwind::CatchPanic`'s 500).
pub(crate) const INTERNAL_ERROR: &str = "internal-error";

/// Wraps the response body and writes the request's log line when the body ends or is dropped,
/// so that bytes and duration cover the whole transfer, not just the headers.
pub(crate) struct LoggedBody {
    pub(crate) inner: ResponseBody,
    /// The principal's place among its requests in flight, freed when the body is done.
    pub(crate) _slot: Option<Slot>,
    pub(crate) bytes_out: u64,
    pub(crate) done: Option<LogLine>,
    /// The answer's git framing, for a git answer: whether a client that left had all of it.
    pub(crate) framing: Option<AnswerFollowed>,
    /// For a git answer, where its last data stands with h2: the connection's write count
    /// when it was handed over, and whether hyper has asked for more since — which over HTTP/2
    /// it does only once the stream has the window for all it holds (see [`Handed`]).
    pub(crate) handed: Handed,
}

/// Where the last data of a git answer stands: not yet handed over, handed over when the
/// connection had made `writes` writes, or that and asked for more since (hyper's HTTP/2
/// side asks only once h2 has the stream's window for everything it holds: queued to go out
/// at the connection's next write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Handed {
    #[default]
    Nothing,
    At {
        writes: u64,
    },
    AskedAgain {
        writes: u64,
    },
}

/// A git answer's framing as the request line learns it: once per answer, by whoever follows
/// it already.
pub(crate) enum AnswerFollowed {
    /// Followed here, as its bytes are handed to the connection (the embedded CGI runner's
    /// answers; see [`AnswerFraming`]).
    Here(AnswerFraming),
    /// Followed by the HTTP upstream as they came, which says how far it is whole (see
    /// [`WholeAt`]).
    Upstream(Arc<WholeAt>),
}

impl AnswerFollowed {
    /// The answer's next bytes are handed to the connection.
    fn handed(&mut self, data: &[u8]) {
        if let AnswerFollowed::Here(framing) = self {
            framing.feed(data);
        }
    }

    /// Whether the answer's first `handed` bytes, all handed to the connection, are for
    /// certain all of it (see [`AnswerFraming::ends_whole`]).
    fn whole_at(&self, handed: u64) -> bool {
        match self {
            AnswerFollowed::Here(framing) => framing.ends_whole(),
            AnswerFollowed::Upstream(whole) => whole.is_at(handed),
        }
    }
}

impl LoggedBody {
    /// Whether the request's own body ended with an error (see [`Inbound::broke`]).
    pub(crate) fn request_broke(&self) -> bool {
        self.done
            .as_ref()
            .is_some_and(|l| l.inbound.broke.load(Ordering::Relaxed))
    }

    /// The request's id, for the lines written before its own (`-` once that is written).
    pub(crate) fn id(&self) -> &dyn fmt::Display {
        match &self.done {
            Some(line) => &line.id,
            None => &"-",
        }
    }

    pub(crate) fn finish(&mut self, outcome: &str) {
        if let Some(line) = self.done.take() {
            line.write(self.bytes_out, outcome);
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let this = &mut *self;
                    this.bytes_out += data.len() as u64;
                    METRICS.response_bytes(data.len() as u64);
                    if let Some(framing) = &mut this.framing {
                        framing.handed(data);
                        if let Some(line) = &this.done {
                            this.handed = Handed::At {
                                writes: line.connection.writes(),
                            };
                        }
                    }
                }
            }
            // A backend that answered before reading the whole request (git http-backend does,
            // for a push) fails when the request's body breaks off: the client's doing.
            Poll::Ready(Some(Err(e))) if self.request_broke() => {
                let because = self
                    .done
                    .as_ref()
                    .and_then(|l| l.inbound.broke_because.get().cloned())
                    .unwrap_or_default();
                tracing::info!(request_id = %self.id(), error = %LogText(&e.to_string()), request = ?because, "the request body broke off during the answer");
                self.finish("client-gone");
            }
            // git died on a request it could not read (a hand-made one): the client's doing.
            Poll::Ready(Some(Err(e))) if crate::upstream::MalformedRequest::is(e) => {
                tracing::info!(request_id = %self.id(), error = %LogText(&e.to_string()), "git could not read the request");
                self.finish("malformed-request");
            }
            // The backend waited for an upload the client stopped sending: the client idled.
            Poll::Ready(Some(Err(e))) if crate::upstream::UploadStalled::is(e) => {
                tracing::info!(request_id = %self.id(), error = %LogText(&e.to_string()), "the client stopped sending its request body");
                self.finish("idle-timeout");
            }
            // A request over the backend's buffer whose answer had begun (its rest fitted the
            // pipe, so the `413` before the answer could not be told): cut, as any failed
            // stream, but this server's setting met, not a backend failure to count.
            Poll::Ready(Some(Err(e))) if crate::upstream::OverRequestBuffer::is(e) => {
                tracing::warn!(request_id = %self.id(), error = %LogText(&e.to_string()), "response stream cut: the request was larger than the git backend takes");
                self.finish("stream-error");
            }
            Poll::Ready(Some(Err(e))) => {
                // Named as the request's own line names it, which follows: on a busy server the
                // two are told apart by these fields, not by their order.
                let line = self.done.as_ref();
                tracing::warn!(
                    request_id = %self.id(),
                    repo = %loggable_repo(line.and_then(|l| l.who.repo.as_deref()).unwrap_or("-")),
                    remote = %line.map_or("-".to_string(), |l| l.remote.ip().to_string()),
                    user = %LogValue(line.and_then(|l| l.who.user.as_deref()).unwrap_or("-")),
                    token_id = %line.and_then(|l| l.who.token_id.as_deref()).unwrap_or("-"),
                    bytes_out = self.bytes_out,
                    error = %LogText(&e.to_string()),
                    "response stream failed"
                );
                METRICS.upstream_error();
                self.finish("stream-error");
            }
            Poll::Ready(None) => self.finish("complete"),
            Poll::Pending => {
                if let Handed::At { writes } = self.handed {
                    self.handed = Handed::AskedAgain { writes };
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A body that was fully sent may be dropped without being polled to its end; a HEAD
        // answer's body is never sent at all.
        let head = self.done.as_ref().is_some_and(|l| l.method == Method::HEAD);
        let Some(connection) = self.done.as_ref().map(|l| &l.connection) else {
            return;
        };
        // A client that hung up right after the last flush-pkt of a whole git answer, before
        // the HTTP answer's own end came from the backend (dulwich does), with every byte
        // handed to it delivered: it had the whole answer. Over HTTP/1 it closed the
        // connection with everything written acknowledged; over HTTP/2 it reset the stream
        // (Go's net/http does, closing a body read through) once h2 had the window for all of
        // it, and the connection has written since with everything acknowledged.
        let delivered = || match self.handed {
            Handed::AskedAgain { writes } => connection.all_out_since(writes),
            Handed::Nothing | Handed::At { .. } => false,
        };
        let had_it_all = || {
            self.framing
                .as_ref()
                .is_some_and(|f| f.whole_at(self.bytes_out))
                && (connection.left_with_everything() || delivered())
        };
        let outcome = match crate::server::unfinished_outcome(connection) {
            _ if self.inner.is_end_stream() => "complete",
            "client-gone" if head || had_it_all() => "complete",
            unfinished => unfinished,
        };
        self.finish(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::{
        backend_status, loggable_path, loggable_repo, LogAgent, LogLine, LogMethod, Unanswered,
        AGENT_LOGGED, CLIENT_GONE_BEFORE_ANSWER, MALFORMED_SAID, MAX_LOGGED_METHOD, PATH_KEPT,
    };
    use crate::gate::RequestLog;
    use crate::idle::Activity;
    use hyper::Uri;
    use std::sync::Arc;

    #[test]
    fn a_logged_user_agent_is_one_field_of_a_bounded_length() {
        let said = |a: &[u8]| {
            let value = hyper::header::HeaderValue::from_bytes(a).unwrap();
            LogAgent(Some(&value)).to_string()
        };
        assert_eq!(LogAgent(None).to_string(), "-");
        assert_eq!(said(b"git/2.39.5"), "git/2.39.5");
        // Spaces, quotes and `=` would start fields of their own: quoted and escaped.
        assert_eq!(said(b"JGit/6.1 (Linux)"), "\"JGit/6.1 (Linux)\"");
        assert_eq!(
            said(b"x\" status=200 user=root"),
            "\"x\\\" status=200 user=root\""
        );
        // Bytes past ASCII (allowed in a header value) neither break the line nor panic.
        assert_eq!(said(b"git/\xff"), "\"git/\u{fffd}\"");
        let long = said(&[b'a'; 60_000]);
        assert_eq!(long.len(), AGENT_LOGGED + 3, "{long}");
        assert!(long.ends_with("..."));
        // A token secret sent as (or in) the User-Agent is not written, whole or cut.
        let secret = format!("ggt_abcdefgh2345_{}_abcdef", "A".repeat(43));
        for agent in [
            secret.clone(),
            format!("xx{secret}yy"),
            format!("ci {secret}"),
        ] {
            let written = said(agent.as_bytes());
            assert_eq!(
                written, "\"<a User-Agent holding what looks like a token secret>\"",
                "{agent}"
            );
        }
    }

    #[test]
    fn a_logged_path_cannot_add_fields_or_lines() {
        let said = |p: &str| loggable_path(p).to_string();
        assert_eq!(said("/team/app.git/info/refs"), "/team/app.git/info/refs");
        // Unicode white space, a line separator and a text-direction override: quoted, and
        // escaped as JSON escapes them, which a logfmt reader undoes.
        assert_eq!(
            said("/x\u{2003}user=alice\u{2003}status=200\u{2028}INFO"),
            r#""/x\u2003user=alice\u2003status=200\u2028INFO""#
        );
        // `=`, which a logfmt reader refuses in a bare value or splits at: quoted.
        assert_eq!(
            said("/team/app.git/a%0auser=admin/info/refs"),
            r#""/team/app.git/a%0auser=admin/info/refs""#
        );
        assert_eq!(said("/x\u{202e}nimda"), r#""/x\u202enimda""#);
        // A letter stays itself; a tab is escaped.
        assert_eq!(said("/caf\u{e9}\tx"), "\"/caf\u{e9}\\tx\"");
        // The backslash that starts an escape is itself escaped: no path logs as another.
        assert_eq!(said("/a\\u2003"), r#""/a\\u2003""#);
        // A quote would end a reader's field early: escaped too.
        assert_eq!(said("/team/a\"b.git"), r#""/team/a\"b.git""#);
        // What a logfmt reader, or JSON, makes of a quoted path is the path as it was sent.
        for path in [
            "/x\u{2003}y\u{2028}z\u{202e}",
            "/caf\u{e9}\t\"=\\",
            "/\u{1F600}",
        ] {
            let back: String = serde_json::from_str(&said(path)).unwrap();
            assert_eq!(back, path);
        }
        // Percent-escapes are ASCII and stay as sent.
        assert_eq!(said("/a%E2%80%83b"), "/a%E2%80%83b");
        let token = "ggt_abcdefgh2345_".to_string() + &"A".repeat(43) + "_abcdef";
        let hidden = said(&format!("/x/{token}"));
        assert!(!hidden.contains("ggt_"), "{hidden}");
    }

    /// In `GITGATE_LOG_FORMAT=json` a path and a repository are the strings sent, not a text
    /// line's escapes of them.
    #[test]
    fn a_json_line_holds_the_path_and_repository_as_sent() {
        let path = "/caf\u{e9}/x\u{2003}y=\"z\"\\.git/info/refs";
        let out = crate::store::test_support::logged_as_json(|| {
            tracing::info!(
                target: "gitgate::request",
                path = %loggable_path(path),
                repo = %loggable_repo("caf\u{e9}/x\u{2003}y"),
                plain = %loggable_path("/team/app.git/info/refs"),
                "request"
            );
        });
        let line: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(line["fields"]["path"], path, "{out}");
        assert_eq!(line["fields"]["repo"], "caf\u{e9}/x\u{2003}y", "{out}");
        assert_eq!(line["fields"]["plain"], "/team/app.git/info/refs", "{out}");
    }

    #[test]
    fn a_logged_method_is_never_a_token() {
        let said =
            |m: &str| LogMethod(&hyper::Method::from_bytes(m.as_bytes()).unwrap()).to_string();
        assert_eq!(said("GET"), "GET");
        assert_eq!(said("PROPFIND"), "PROPFIND");
        assert_eq!(said("VERSION-CONTROL"), "VERSION-CONTROL");
        let token = "ggt_abcdefgh2345_".to_string() + &"A".repeat(43) + "_abcdef";
        let hidden = said(&token);
        assert_eq!(hidden, "\"<a method of 67 characters, not written>\"");
        assert!(!said(&format!("X{}", token.to_uppercase())).contains("GGT_"));
        // Without its prefix, or a password: not written either.
        for secret in [
            &token[4..],
            "hunter2",
            "Sommer2026",
            "ABCDEFGHIJKLMNOPQRSTU",
        ] {
            let hidden = said(secret);
            assert!(!hidden.contains(secret), "{hidden}");
            assert!(hidden.contains("not written"), "{hidden}");
        }
    }

    #[test]
    fn a_request_whose_handling_panics_is_logged_as_an_internal_error() {
        let line = || LogLine {
            id: crate::request_id::RequestId::next(),
            method: hyper::Method::GET,
            uri: Uri::from_static("/team/app.git/info/refs"),
            agent: None,
            remote: "192.0.2.7:4000".parse().unwrap(),
            who: RequestLog::default(),
            status: CLIENT_GONE_BEFORE_ANSWER,
            forwarded: true,
            inbound: Arc::default(),
            started: std::time::Instant::now(),
            connection: Activity::new(),
        };
        let log = crate::store::test_support::logged(|| {
            let panicked = std::panic::catch_unwind(|| {
                let _pending = Unanswered(Some(line()));
                if std::hint::black_box(true) {
                    panic!("a bug while deciding");
                }
            });
            assert!(panicked.is_err());
        });
        assert!(log.contains("status=500"), "{log}");
        assert!(log.contains("outcome=internal-error"), "{log}");
        // Without a panic, a request dropped unanswered is still a client that left.
        let log = crate::store::test_support::logged(|| drop(Unanswered(Some(line()))));
        assert!(
            log.contains("status=499") && log.contains("outcome=client-gone"),
            "{log}"
        );
    }

    #[test]
    fn a_long_path_is_logged_cut_and_says_so() {
        let said = |p: &str| loggable_path(p).to_string();
        let kept = format!("/team/{}", "a".repeat(PATH_KEPT - 6));
        assert_eq!(said(&kept), kept);
        let long = format!("{kept}b.git/info/refs");
        assert_eq!(
            said(&long),
            format!("\"{kept}... ({} bytes in all, cut)\"", long.len())
        );
        // Cut at a character's end, and escaped as every quoted value is: as JSON escapes a
        // string, which a logfmt reader undoes (a Rust `\u{2003}` inside quotes it refuses).
        let wide = format!("/{}", "\u{2003}".repeat(700));
        let shown = said(&wide);
        assert!(shown.starts_with("\"/\\u2003"), "{shown}");
        assert_eq!(shown.matches("\\u2003").count(), (PATH_KEPT - 1) / 3);
        assert!(shown.ends_with(&format!("... ({} bytes in all, cut)\"", wide.len())));
        let odd = format!("/team/a=b\"c\\d{}", "z".repeat(1100));
        assert!(
            said(&odd).starts_with("\"/team/a=b\\\"c\\\\dzzz"),
            "{}",
            said(&odd)
        );
        // The repository field is cut the same way.
        let repo = format!("team/{}", "r".repeat(3000));
        assert_eq!(
            loggable_repo(&repo).to_string(),
            format!("\"{}... (3005 bytes in all, cut)\"", &repo[..PATH_KEPT])
        );
        // A token anywhere in a long path, past the part kept too, is still not written.
        let token = "ggt_abcdefgh2345_".to_string() + &"A".repeat(43) + "_abcdef";
        let hidden = said(&format!("{long}/{token}"));
        assert!(!hidden.contains("ggt_"), "{hidden}");
    }

    /// A method of capitals and `-` is written as it is up to [`MAX_LOGGED_METHOD`]
    /// characters, its longest: one of that length still is.
    #[test]
    fn a_method_of_capitals_is_written_up_to_its_longest() {
        let said =
            |m: &str| LogMethod(&hyper::Method::from_bytes(m.as_bytes()).unwrap()).to_string();
        let longest = "ABCDEFGHIJ-LMNOPQRST";
        assert_eq!(longest.len(), MAX_LOGGED_METHOD);
        assert_eq!(said(longest), longest);
        assert!(said(&format!("{longest}U")).contains("not written"));
    }

    /// A `User-Agent` cut to its longest is still one quoted, escaped field: its spaces and
    /// quotes cannot start fields of their own.
    #[test]
    fn a_cut_user_agent_is_still_quoted_and_escaped() {
        let agent = format!("JGit/6.1 \"x\" user=root {}", "a".repeat(200));
        let value = hyper::header::HeaderValue::from_str(&agent).unwrap();
        let said = LogAgent(Some(&value)).to_string();
        assert!(
            said.starts_with("\"JGit/6.1 \\\"x\\\" user=root aaa"),
            "{said}"
        );
        assert!(said.ends_with("...\""), "{said}");
        let back: String = serde_json::from_str(&said).unwrap();
        assert_eq!(back.chars().count(), AGENT_LOGGED + 3, "{back}");
    }

    /// A path that holds what looks like the random part of a secret alone (its `ggt_`
    /// prefix and id cut off) is not written either: with the token id, it is the secret.
    #[test]
    fn a_path_holding_a_secrets_random_part_is_not_logged() {
        let random = "Q7wErTy9UiOp2AsDfGh4JkLzXc8VbNm1QwErTy6UiOp";
        let said = loggable_path(&format!("/team/{random}/info/refs")).to_string();
        assert!(!said.contains(random), "{said}");
        assert!(said.contains("looks like a token secret"), "{said}");
    }

    /// A secret's random part percent-encoded in a path (`%6D%32...`, which the gate decodes
    /// and refuses `400`) is not written either: the request line has the path as it came, and
    /// a log reader decodes it back to the random part.
    #[test]
    fn a_path_holding_a_percent_encoded_random_part_is_not_logged() {
        let random = "Q7wErTy9UiOp2AsDfGh4JkLzXc8VbNm1QwErTy6UiOp";
        let encoded: String = random.bytes().map(|b| format!("%{b:02X}")).collect();
        // Every character escaped, one of them alone, and the escapes escaped once more.
        let once = format!(
            "{}%{:02X}{}",
            &random[..20],
            random.as_bytes()[20],
            &random[21..]
        );
        let twice = encoded.replace('%', "%25");
        for path in [
            format!("/team/x{encoded}.git/info/refs"),
            format!("/team/{once}.git/info/refs"),
            format!("/team/{twice}.git/info/refs"),
        ] {
            let said = loggable_path(&path).to_string();
            assert!(
                said.contains("looks like a token secret"),
                "{path} was written as {said}"
            );
        }
    }

    /// A request line written for a request the gate did not classify (no repository)
    /// checks its path for a secret: one pasted into a URL is not written.
    #[test]
    fn an_unclassified_requests_line_does_not_write_a_token_in_its_path() {
        let token = "ggt_abcdefgh2345_".to_string() + &"A".repeat(43) + "_abcdef";
        let line = LogLine {
            id: crate::request_id::RequestId::next(),
            method: hyper::Method::GET,
            uri: format!("/x/{token}/info/refs").parse::<Uri>().unwrap(),
            agent: None,
            remote: "192.0.2.7:4000".parse().unwrap(),
            who: RequestLog::default(),
            status: 404,
            forwarded: false,
            inbound: Arc::default(),
            started: std::time::Instant::now(),
            connection: Activity::new(),
        };
        let log = crate::store::test_support::logged(|| line.write(0, "complete"));
        assert!(log.contains("status=404"), "{log}");
        assert!(!log.contains("ggt_"), "{log}");
        assert!(!log.contains(&"A".repeat(43)), "{log}");
    }

    /// An answer sent in full to a client that had closed its connection under its upload is
    /// logged as a client that left, not as complete.
    #[test]
    fn an_answer_to_a_client_that_closed_under_its_upload_is_logged_as_client_gone() {
        let inbound: Arc<crate::gate::Inbound> = Arc::default();
        inbound
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let line = LogLine {
            id: crate::request_id::RequestId::next(),
            method: hyper::Method::POST,
            uri: Uri::from_static("/team/app.git/git-receive-pack"),
            agent: None,
            remote: "192.0.2.7:4000".parse().unwrap(),
            who: RequestLog::default(),
            status: 400,
            forwarded: false,
            inbound,
            started: std::time::Instant::now(),
            connection: Activity::new(),
        };
        let log = crate::store::test_support::logged(|| line.write(0, "complete"));
        assert!(log.contains("outcome=client-gone"), "{log}");
    }

    /// The reason of a refusal for its form is written without what looks like a secret, and
    /// said to be cut only when it is.
    #[test]
    fn a_refusals_reason_is_logged_without_secrets_and_cut_only_when_long() {
        let id = crate::request_id::RequestId::next();
        let remote = "192.0.2.7:4000".parse().unwrap();
        let token = "ggt_abcdefgh2345_".to_string() + &"A".repeat(43) + "_abcdef";
        let log = crate::store::test_support::logged(|| {
            super::malformed_said(id, remote, 400, &format!("unknown service: {token}"));
        });
        assert!(log.contains("unknown service"), "{log}");
        assert!(!log.contains(&"A".repeat(43)), "{log}");
        let log = crate::store::test_support::logged(|| {
            super::malformed_said(id, remote, 501, "unsupported transfer-encoding: gzip");
        });
        assert!(
            log.contains("reason=\"unsupported transfer-encoding: gzip\""),
            "{log}"
        );
        let whole = "x".repeat(MALFORMED_SAID);
        let log = crate::store::test_support::logged(|| {
            super::malformed_said(id, remote, 400, &whole);
        });
        assert!(log.contains(&format!("reason=\"{whole}\"")), "{log}");
        let log = crate::store::test_support::logged(|| {
            super::malformed_said(id, remote, 400, &format!("{whole}y"));
        });
        assert!(log.contains(&format!("reason=\"{whole}...\"")), "{log}");
    }

    /// A reason is cut after what looks like a secret is left out of it: the secret's place
    /// does not cost the words that follow it.
    #[test]
    fn a_refusals_reason_is_cut_after_its_secrets_are_left_out() {
        let token = "ggt_abcdefgh2345_".to_string() + &"A".repeat(43) + "_abcdef";
        let reason = format!("{} {token} the end", "x".repeat(MALFORMED_SAID - 60));
        let log = crate::store::test_support::logged(|| {
            super::malformed_said(
                crate::request_id::RequestId::next(),
                "192.0.2.7:4000".parse().unwrap(),
                400,
                &reason,
            );
        });
        assert!(log.contains(" the end\""), "{log}");
        assert!(!log.contains(&"A".repeat(43)), "{log}");
    }

    /// A request whose handling panicked is counted as a 5xx, the backend's answer or not: not
    /// as allowed.
    #[test]
    fn a_request_whose_handling_panics_is_counted_as_a_server_error() {
        let errors = || {
            let text = crate::metrics::METRICS.render((0, 0));
            let series = "gitgate_requests_total{operation=\"none\",outcome=\"5xx\"} ";
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.parse::<u64>().ok())
                .unwrap()
        };
        let before = errors();
        let panicked = std::panic::catch_unwind(|| {
            let _pending = Unanswered(Some(LogLine {
                id: crate::request_id::RequestId::next(),
                method: hyper::Method::GET,
                uri: Uri::from_static("/"),
                agent: None,
                remote: "192.0.2.7:4000".parse().unwrap(),
                who: RequestLog::default(),
                status: 200,
                forwarded: true,
                inbound: Arc::default(),
                started: std::time::Instant::now(),
                connection: Activity::new(),
            }));
            if std::hint::black_box(true) {
                panic!("a bug while forwarding");
            }
        });
        assert!(panicked.is_err());
        assert!(errors() > before);
    }

    /// Only a forwarded request counts a backend status, and a 499 (its client left before
    /// the backend answered) is none: it is not counted as the backend's 4xx.
    #[test]
    fn a_forwarded_request_whose_client_left_first_has_no_backend_status() {
        assert_eq!(backend_status(true, 200), Some(200));
        assert_eq!(backend_status(true, 502), Some(502));
        assert_eq!(backend_status(true, 404), Some(404));
        assert_eq!(backend_status(true, CLIENT_GONE_BEFORE_ANSWER), None);
        assert_eq!(backend_status(false, 401), None);
        assert_eq!(backend_status(false, 200), None);
    }
}
