//! The embedded backend: `git http-backend` run as a CGI/1.1 program, one process per request.
//!
//! By the time a request gets here the gate has classified it, authenticated the token and
//! authorised the access; this module only moves bytes between hyper and the child process. It
//! is written around three concerns:
//!
//! - **Streaming, both ways.** A push or a clone can be gigabytes. The request body is copied to
//!   the child's stdin frame by frame by a task of its own, and the child's stdout becomes a
//!   [`CgiBody`] that reads one chunk at a time as hyper asks for it. Nothing is collected, so
//!   memory stays flat whatever the size of the pack, and backpressure works end to end (a slow
//!   client stalls the backend's pipe, not our heap). Only the CGI header block is buffered, and
//!   it is capped at [`MAX_HEADER_BLOCK`].
//! - **Environment hygiene.** The child starts from an *empty* environment (`env_clear`) and gets
//!   exactly the CGI and git variables it needs. gitgate's own environment (store paths,
//!   secrets, `GIT_*` overrides an operator exported for something else) never leaks in.
//! - **httpoxy.** CGI's habit of turning every request header `Foo` into `HTTP_FOO` lets a client
//!   send `Proxy: http://evil` and get `HTTP_PROXY` into a process whose libraries read that as
//!   their outbound proxy (CVE-2016-5385 and friends). We map *no* client header to `HTTP_*`
//!   wholesale: `Content-Type`, `Content-Length`, `Git-Protocol` and `Content-Encoding` are
//!   passed on by name, each validated; everything else — `Authorization` in particular, which
//!   carries the client's token — stays in gitgate.
//!
//! A failed request must look like a failure to git, never like a short success. So: if the
//! client's body breaks off, the child is told by the end of its stdin — a push then fails on
//! its own (a pack is applied only whole, checked against its trailing checksum), cleaning up
//! its quarantined objects, which a killed receive-pack leaves on disk — and any other child is
//! killed; if the child exits non-zero after its headers went out, the response body ends
//! with an error rather than a clean end of stream; and if it dies before sending headers the
//! caller gets [`CgiError::Exited`] with the exit status and the last line the child wrote to
//! stderr. Every child is waited for by a supervisor task, whichever way the request ends
//! (including the client going away and hyper dropping the body), so there are no zombies.
//! A push is not killed when its client goes away, either: once receive-pack has the whole pack
//! it updates the refs and runs the `post-receive` hook, and killing it then would skip the hook
//! for a push that did happen (see [`CgiBody`]). Every other request that ends early ends
//! everything its child started: `git http-backend` runs
//! `git upload-pack`, which runs `git pack-objects`, and killing only the first would leave the
//! others packing for a client that is gone — a CPU sink per abandoned clone. So each child leads
//! its own process group, and the group is what gets the signals (see `end_group`). The same
//! goes for a child that dies of a signal on its own (the OOM killer): what it started is
//! killed with it. The supervisor sees a child's end without reaping it (a pidfd, `waitid`
//! with `WNOWAIT`), so that the group's id cannot have been reused when it is signalled.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use super::progress::Progress;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

/// The most bytes of CGI header block we accept before giving up on the backend. git's headers
/// are a few hundred bytes; anything near this is a broken program, not a big response.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// How much of the backend's stdout one response frame carries at most.
const BODY_CHUNK: usize = 64 * 1024;

/// How much stdout we ask for per read while looking for the end of the header block.
const HEAD_READ: usize = 8 * 1024;

/// Longest stderr line we log as one event; longer lines are logged in pieces.
const MAX_STDERR_LINE: u64 = 4 * 1024;

/// The most stderr lines of one backend we log. A backend (or a hook it runs) that writes
/// without end must not flood gitgate's log or its disk; the rest is read and counted, so the
/// backend never blocks on a full pipe, and the count is logged when stderr closes.
const MAX_STDERR_LINES: u32 = 100;

/// After the backend closed stdout without a header block, how long it may take to exit before
/// we kill it. It has nothing more to say to us either way.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// After the backend exited, how long we wait for its stderr to drain (a grandchild that kept
/// the pipe open must not hold the response hostage).
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// The same for a backend that exited successfully, whose last stderr line explains nothing.
const SUCCESS_STDERR_GRACE: Duration = Duration::from_millis(50);

/// How long an ended backend's process group gets after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// `PATH` for the backend when gitgate's own has nothing usable in it.
const FALLBACK_PATH: &str = "/usr/bin:/bin";

/// Response headers that describe gitgate's connection to the client, not the content. hyper
/// owns framing; a backend must not get a say in it.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Runs a CGI program (normally `git http-backend`) for each request it is given.
#[derive(Debug, Clone)]
pub struct CgiBackend {
    program: PathBuf,
    project_root: PathBuf,
    /// The longest a backend may go without sending its headers while nothing of the request
    /// body moves either (see [`CgiBackend::with_head_timeout`]).
    head_timeout: Duration,
    /// This backend's (that is, this worker's) processes not yet reaped.
    running: Arc<Running>,
}

/// What the backend is told about one request. Everything here has already been checked by the
/// gate: `path_info` and `query` are canonical, `remote_user` is the authenticated identity.
#[derive(Debug, Clone, Copy)]
pub struct CgiRequest<'a> {
    pub method: &'a Method,
    /// Canonical repository path plus git suffix, e.g. `/team/app.git/info/refs`.
    pub path_info: &'a str,
    /// Canonical query string without `?`, e.g. `service=git-upload-pack`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub remote_user: &'a str,
    pub remote_addr: IpAddr,
}

/// Why the backend could not produce a response. Once headers have been sent, failures show up
/// as an error at the end of [`CgiBody`] instead.
#[derive(Debug)]
pub enum CgiError {
    /// The program could not be started (missing, not executable, out of processes).
    Spawn(io::Error),
    /// The program's output did not start with a usable CGI header block.
    BadHeaders(String),
    /// The program exited (or closed stdout) before a complete header block; carries the exit
    /// status and the last line it wrote to stderr.
    Exited(String),
    /// The program sent no header block within the head timeout, with the request body still.
    TimedOut(Duration),
}

impl fmt::Display for CgiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgiError::Spawn(e) => write!(f, "could not start the CGI backend: {e}"),
            CgiError::BadHeaders(why) => {
                write!(f, "the CGI backend sent an unusable header block: {why}")
            }
            CgiError::Exited(why) => {
                write!(f, "the CGI backend ended before sending a response: {why}")
            }
            CgiError::TimedOut(after) => write!(
                f,
                "the CGI backend sent no response for {}s; it was ended",
                after.as_secs()
            ),
        }
    }
}

impl CgiError {
    /// What went wrong, without what the backend said (exit status, stderr), which can name
    /// server paths: for the client; [`Display`](fmt::Display) has it all, for the log.
    pub fn summary(&self) -> &'static str {
        match self {
            CgiError::Spawn(_) => "could not start the CGI backend",
            CgiError::BadHeaders(_) => "the CGI backend sent an unusable header block",
            CgiError::Exited(_) => "the CGI backend ended before sending a response",
            CgiError::TimedOut(_) => "the CGI backend sent no response in time",
        }
    }
}

impl CgiError {
    /// The backend could not be started for want of processes or file descriptors: the server
    /// is overloaded for now, not broken.
    pub fn is_overload(&self) -> bool {
        const EAGAIN: i32 = 11;
        const ENFILE: i32 = 23;
        const EMFILE: i32 = 24;
        matches!(self, CgiError::Spawn(e) if matches!(e.raw_os_error(), Some(EAGAIN | ENFILE | EMFILE)))
    }
}

impl std::error::Error for CgiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CgiError::Spawn(e) => Some(e),
            CgiError::BadHeaders(_) | CgiError::Exited(_) | CgiError::TimedOut(_) => None,
        }
    }
}

/// Which directory under the project root answers to a repository `team/app`.
///
/// gitgate treats `team/app` and `team/app.git` as one repository (grants, scopes and tokens
/// name `team/app`), but on disk they can be two directories, and `git http-backend` finds a
/// repository by trying `P/.git`, `P`, `P.git/.git` and `P.git` for the path `P` it is given —
/// so the client's spelling could pick either, or `team/app.git.git`, a name gitgate refuses.
/// The backend is therefore given the one spelling that exists on disk, and none at all when
/// both do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoDir {
    /// `team/app.git` (the usual bare repository).
    WithGit,
    /// `team/app` (a bare repository without the suffix, or a working tree with `.git`).
    Plain,
    /// Neither: the backend is asked for `team/app`, which it can only resolve inside the
    /// two names above, and answers that there is no such repository.
    Missing,
    /// Both: refused, since gitgate cannot tell which one a grant means.
    Both,
}

impl RepoDir {
    /// Pure: from whether `<root>/<repo>.git` and `<root>/<repo>` are directories.
    pub fn of(with_git: bool, plain: bool) -> RepoDir {
        match (with_git, plain) {
            (true, true) => RepoDir::Both,
            (true, false) => RepoDir::WithGit,
            (false, true) => RepoDir::Plain,
            (false, false) => RepoDir::Missing,
        }
    }
}

/// Whether `dir` is a repository as git would take it: a working tree (with `.git`), or a bare
/// repository (`HEAD`, `objects/` and `refs/`, which git's own `is_git_directory` asks for).
fn looks_like_repository(dir: &Path) -> bool {
    dir.join(".git").exists()
        || (dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir())
}

impl CgiBackend {
    /// The request's `PATH_INFO`: its repository spelled as the directory that answers to it
    /// (see [`RepoDir`]); `None` when two do.
    pub fn path_info(&self, git_req: &crate::git::GitRequest) -> Option<String> {
        match self.repo_dir(git_req.repo.as_str()) {
            RepoDir::WithGit => Some(git_req.backend_path_spelled(true)),
            RepoDir::Plain | RepoDir::Missing => Some(git_req.backend_path_spelled(false)),
            RepoDir::Both => None,
        }
    }

    /// Which directory answers to `repo` (a few `stat`s; see [`RepoDir`]). Only a directory
    /// that looks like a repository counts: `team/app/` may also be a folder of repositories
    /// (`team/app/lib.git`, subgroups) beside the repository `team/app.git`.
    pub fn repo_dir(&self, repo: &str) -> RepoDir {
        let plain = self.project_root.join(repo);
        let mut with_git = plain.clone().into_os_string();
        with_git.push(".git");
        RepoDir::of(
            looks_like_repository(Path::new(&with_git)),
            looks_like_repository(&plain),
        )
    }

    /// `program` is the CGI executable (e.g. `/usr/lib/git-core/git-http-backend`);
    /// `project_root` the directory the repositories live under (`GIT_PROJECT_ROOT`).
    pub fn new(program: PathBuf, project_root: PathBuf) -> Self {
        CgiBackend {
            program,
            project_root,
            head_timeout: Duration::from_secs(300),
            running: Arc::new(Running::default()),
        }
    }

    /// A backend that sends no headers for `timeout` while the request body does not move
    /// either is stuck: it is ended and the client gets a 504 (default 300 s; the server uses
    /// `[server] idle_timeout`). Without it a request whose backend hangs before answering
    /// would hold its connection, its in-flight place and the process for as long as the
    /// client kept the connection alive — with HTTP/2 PINGs, for good.
    pub fn with_head_timeout(mut self, timeout: Duration) -> Self {
        self.head_timeout = timeout;
        self
    }

    /// Readiness: the program is still there and the project root can be read.
    pub async fn ready(&self) -> Result<(), String> {
        let meta = tokio::fs::metadata(&self.program)
            .await
            .map_err(|e| format!("CGI program {}: {e}", self.program.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "CGI program {} is not a file",
                self.program.display()
            ));
        }
        may_execute(&self.program)
            .map_err(|e| format!("CGI program {}: {e}", self.program.display()))?;
        tokio::fs::read_dir(&self.project_root)
            .await
            .map(drop)
            .map_err(|e| format!("project root {}: {e}", self.project_root.display()))
    }

    /// Runs the backend for one authorised request.
    ///
    /// Returns once the backend has sent its header block; the body then streams from the
    /// running process. The request body is fed to the backend concurrently, so a backend that
    /// answers before reading all of its input (an error, say) is fine.
    pub async fn serve<B>(
        &self,
        req: CgiRequest<'_>,
        body: B,
    ) -> Result<Response<CgiBody>, CgiError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: fmt::Display + Send,
    {
        let push = is_push(&req);
        let mut child = self.command(&req).spawn().map_err(CgiError::Spawn)?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // From here on the supervisor owns the child and reaps it however the request ends; the
        // guard kills it if this future is dropped before the response is handed over.
        let kill = KillSwitch::new();
        let guard = KillGuard::new(kill.clone(), "request abandoned before the response");
        let stderr_task = tokio::spawn(log_stderr(stderr, req.path_info.to_owned()));
        let (exit_tx, mut exit_rx) = oneshot::channel();
        let counted = Counted::new(self.running.clone());
        tokio::spawn(supervise(
            child,
            kill.clone(),
            stderr_task,
            exit_tx,
            counted,
        ));
        let uploading = Progress::new();
        // What the backend is told the body's length is (`CONTENT_LENGTH`): the stdin task holds
        // the body to it.
        let promised = content_length(req.headers);
        tokio::spawn(feed_stdin(
            body,
            stdin,
            promised,
            if push { Break::CloseStdin } else { Break::Kill },
            kill.clone(),
            uploading.clone(),
        ));

        // The headers, within the head timeout counted from the body's last frame.
        let head = {
            let reading = read_head(&mut stdout);
            tokio::pin!(reading);
            loop {
                let wait = self.head_timeout.saturating_sub(uploading.idle());
                tokio::select! {
                    head = &mut reading => break head,
                    _ = tokio::time::sleep(wait) => {
                        if uploading.idle() >= self.head_timeout {
                            kill.kill("sent no header block in time");
                            return Err(CgiError::TimedOut(self.head_timeout));
                        }
                    }
                }
            }
        };
        let (head, rest) = match head {
            Ok(Some(split)) => split,
            Ok(None) => {
                // stdout is closed: the backend is done talking, but may not have exited yet.
                drop(stdout);
                let info = match tokio::time::timeout(EXIT_GRACE, &mut exit_rx).await {
                    Ok(info) => info,
                    Err(_) => {
                        kill.kill("closed stdout without a header block but did not exit");
                        exit_rx.await
                    }
                };
                let why = match info {
                    Ok(info) => info.to_string(),
                    Err(_) => "the process supervisor went away".to_owned(),
                };
                return Err(CgiError::Exited(why));
            }
            Err(e) => return Err(e), // the guard kills the child; the supervisor reaps it
        };

        let head = parse_head(&head)?;
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut body = CgiBody {
            prefix: rest,
            stdout: Some(stdout),
            buf: BytesMut::new(),
            exit: Some(exit_rx),
            guard,
            left: declared,
            finishing: push.then(|| Finishing {
                idle: self.head_timeout,
                running: self.running.clone(),
                label: format!("{} (user {})", req.path_info, req.remote_user),
            }),
        };
        if declared == Some(0) {
            body.declared_length_sent();
        }
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    /// The child's command line and its complete environment.
    fn command(&self, req: &CgiRequest<'_>) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .envs(cgi_env(req, &self.project_root))
            .env("PATH", sanitize_path(std::env::var_os("PATH").as_deref()))
            .env("HOME", home_dir(std::env::var_os("HOME").as_deref()))
            // gitgate's working directory is none of the backend's business.
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that ending it ends what it started (module docs).
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}

/// The CGI and git variables for one request (all but `PATH` and `HOME`, which come from the
/// host). Only the headers named here reach the backend, each only when it is well-formed.
fn cgi_env(req: &CgiRequest<'_>, project_root: &Path) -> Vec<(&'static str, OsString)> {
    let mut env: Vec<(&'static str, OsString)> = vec![
        ("GATEWAY_INTERFACE", "CGI/1.1".into()),
        ("SERVER_PROTOCOL", "HTTP/1.1".into()),
        ("SERVER_SOFTWARE", "gitgate".into()),
        ("REQUEST_METHOD", req.method.as_str().into()),
        ("SCRIPT_NAME", "".into()),
        ("PATH_INFO", req.path_info.into()),
        ("QUERY_STRING", req.query.unwrap_or("").into()),
        ("GIT_PROJECT_ROOT", project_root.as_os_str().to_owned()),
        // gitgate has already decided who may read what; `git-daemon-export-ok` files would
        // only be a second, conflicting opinion.
        ("GIT_HTTP_EXPORT_ALL", "1".into()),
        // Its presence is also what lets git http-backend accept receive-pack.
        ("REMOTE_USER", req.remote_user.into()),
        ("REMOTE_ADDR", req.remote_addr.to_string().into()),
    ];
    if let Some(v) = header_str(req.headers, &header::CONTENT_TYPE) {
        env.push(("CONTENT_TYPE", v.into()));
    }
    // Not for a push: git http-backend then hands stdin to receive-pack as it is, and an early
    // end of it (the client gone) reaches receive-pack, which fails cleanly. Told a length, it
    // copies that many bytes itself and loops for good at full CPU on an early end. The length
    // is still held to by the stdin task.
    if let Some(len) = content_length(req.headers).filter(|_| !is_push(req)) {
        env.push(("CONTENT_LENGTH", len.to_string().into()));
    }
    if let Some(v) = header_str(req.headers, "git-protocol").filter(|v| valid_git_protocol(v)) {
        env.push(("GIT_PROTOCOL", v.into()));
    }
    if let Some(v) = header_str(req.headers, &header::CONTENT_ENCODING).and_then(content_encoding) {
        env.push(("HTTP_CONTENT_ENCODING", v.into()));
    }
    env
}

/// A push: the one request whose backend changes the repository (`git-receive-pack`).
fn is_push(req: &CgiRequest<'_>) -> bool {
    req.method == Method::POST && req.path_info.ends_with("/git-receive-pack")
}

/// The single value of a header as text, or `None` if it is absent, repeated or not visible
/// ASCII.
fn header_str<K: header::AsHeaderName>(headers: &HeaderMap, name: K) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok().map(str::trim)
}

/// The request's length when it has a trustworthy one. A chunked body has none: the backend
/// then reads stdin to EOF, which is where the stdin task's end of body lands.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    let v = header_str(headers, &header::CONTENT_LENGTH)?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// `Git-Protocol` as git itself accepts it: `key[=value]` items joined by `:`, from a small
/// alphabet. Anything else is dropped (git then speaks protocol v0), because the value goes into
/// the environment of a process that parses it.
fn valid_git_protocol(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 1024
        && v.split(':').all(|item| {
            !item.is_empty()
                && item
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'.' | b'_' | b'-'))
        })
}

/// The content codings git http-backend understands, normalised to the spelling it compares
/// against (codings are case-insensitive in HTTP, not in git).
fn content_encoding(v: &str) -> Option<&'static str> {
    ["gzip", "x-gzip", "identity"]
        .into_iter()
        .find(|known| v.eq_ignore_ascii_case(known))
}

/// gitgate's `PATH` with empty and relative entries removed (they would resolve against the
/// backend's working directory), or a minimal default. Hooks run by receive-pack need a `PATH`.
fn sanitize_path(inherited: Option<&OsStr>) -> OsString {
    let Some(inherited) = inherited else {
        return FALLBACK_PATH.into();
    };
    let kept: Vec<&[u8]> = inherited
        .as_bytes()
        .split(|&b| b == b':')
        .filter(|dir| dir.first() == Some(&b'/'))
        .collect();
    if kept.is_empty() {
        FALLBACK_PATH.into()
    } else {
        OsString::from_vec(kept.join(&b':'))
    }
}

/// The service account's home, where an operator keeps the git config for the backend (e.g.
/// `safe.directory`), or a directory that does not exist.
fn home_dir(inherited: Option<&OsStr>) -> OsString {
    match inherited {
        Some(home) if home.as_bytes().first() == Some(&b'/') => home.to_owned(),
        _ => "/nonexistent".into(),
    }
}

/// Tells the supervisor to kill the child, with a reason for the error message. Cheap to clone;
/// the first reason wins.
#[derive(Clone)]
struct KillSwitch(Arc<watch::Sender<Option<String>>>);

impl KillSwitch {
    fn new() -> Self {
        KillSwitch(Arc::new(watch::channel(None).0))
    }

    fn kill(&self, reason: &str) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason.to_owned());
            true
        });
    }

    fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.0.subscribe()
    }
}

/// Resolves once someone pulled the switch; never, if every switch was dropped unpulled.
async fn killed(rx: &mut watch::Receiver<Option<String>>) -> String {
    let reason = rx
        .wait_for(Option::is_some)
        .await
        .map(|reason| reason.clone().unwrap_or_default());
    match reason {
        Ok(reason) => reason,
        Err(_) => std::future::pending().await,
    }
}

/// Pulls the switch when dropped, unless disarmed first.
struct KillGuard {
    switch: Option<KillSwitch>,
    reason: &'static str,
}

impl KillGuard {
    fn new(switch: KillSwitch, reason: &'static str) -> Self {
        KillGuard {
            switch: Some(switch),
            reason,
        }
    }

    fn disarmed() -> Self {
        KillGuard {
            switch: None,
            reason: "",
        }
    }

    fn disarm(&mut self) {
        self.switch = None;
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(switch) = self.switch.take() {
            switch.kill(self.reason);
        }
    }
}

/// How the child ended, for error messages.
#[derive(Debug)]
struct ExitInfo {
    status: io::Result<ExitStatus>,
    last_stderr: Option<String>,
    killed: Option<String>,
}

impl ExitInfo {
    fn success(&self) -> bool {
        matches!(&self.status, Ok(s) if s.success())
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.status {
            Ok(status) => write!(f, "{status}")?,
            Err(e) => write!(f, "could not wait for it: {e}")?,
        }
        if let Some(reason) = &self.killed {
            write!(f, " (killed by gitgate: {reason})")?;
        }
        match &self.last_stderr {
            Some(line) => write!(f, "; last stderr line: {line:?}"),
            None => write!(f, "; nothing on stderr"),
        }
    }
}

/// The processes of one backend (one worker) started and not yet reaped.
#[derive(Debug)]
struct Running {
    count: AtomicUsize,
    /// Woken when `count` drops to zero.
    all_reaped: Notify,
    /// Pushes finishing without their client ([`Finishing`]).
    finishing: AtomicUsize,
    /// Woken when `finishing` drops to zero.
    none_finishing: Notify,
    /// Set when gitgate stops: pushes finishing alone are ended, and no more start.
    stopping: watch::Sender<bool>,
}

impl Default for Running {
    fn default() -> Self {
        Running {
            count: AtomicUsize::new(0),
            all_reaped: Notify::new(),
            finishing: AtomicUsize::new(0),
            none_finishing: Notify::new(),
            stopping: watch::channel(false).0,
        }
    }
}

/// One process counted in its backend's [`Running`] until its supervisor has reaped it (or is
/// dropped).
struct Counted(Arc<Running>);

impl Counted {
    fn new(running: Arc<Running>) -> Counted {
        running.count.fetch_add(1, Ordering::AcqRel);
        Counted(running)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_reaped.notify_waiters();
        }
    }
}

impl CgiBackend {
    /// At shutdown, within the grace period: waits until no push of this worker is finishing
    /// without its client.
    pub async fn pushes_finished(&self) {
        let running = &self.running;
        loop {
            let done = running.none_finishing.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if running.finishing.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }

    /// At shutdown, once the grace period is over: pushes finishing without their client are
    /// ended (SIGTERM, then SIGKILL for their group), and one whose client leaves from now on
    /// is ended at once.
    pub fn stop_finishing(&self) {
        self.running.stopping.send_replace(true);
    }

    /// Waits until every process this backend started has been reaped — those of requests cut
    /// off at shutdown get SIGTERM, then SIGKILL for their whole group after `TERM_GRACE`
    /// (2 s) — or until a little longer than that has passed. A worker calls this before its runtime ends:
    /// the runtime's end would drop the supervisors, and with them the SIGKILL for the group
    /// (tokio would kill only the group's leader). Returns how many are still running.
    pub async fn wait_until_reaped(&self) -> usize {
        let running = &self.running;
        let deadline = tokio::time::Instant::now() + TERM_GRACE + Duration::from_secs(1);
        loop {
            let reaped = running.all_reaped.notified();
            tokio::pin!(reaped);
            reaped.as_mut().enable();
            let count = running.count.load(Ordering::Acquire);
            if count == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, reaped).await.is_err() {
                return running.count.load(Ordering::Acquire);
            }
        }
    }
}

/// Whether this process may run `program`: the kernel's own check for gitgate's effective user
/// (`faccessat` with `AT_EACCESS`), not the mode bits — a program mode 0700 owned by another
/// user has execute bits, and every request would end in a 502 "permission denied".
pub fn may_execute(program: &Path) -> io::Result<()> {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    accessat(CWD, program, Access::EXEC_OK, AtFlags::EACCESS).map_err(io::Error::from)
}

/// Owns the child until it has been reaped: waits for it to exit, or kills it when asked and then
/// waits. Reports how it ended, with the last stderr line, to whoever still wants to know.
async fn supervise(
    mut child: Child,
    switch: KillSwitch,
    mut stderr: JoinHandle<Option<String>>,
    report: oneshot::Sender<ExitInfo>,
    counted: Counted,
) {
    let mut kill = switch.subscribe();
    let mut killed_for = None;
    // The leader's end, seen without reaping it where the kernel allows (see `ExitWatch`).
    let mut watch = group_of(&child).and_then(|g| ExitWatch::new(g).ok().map(|w| (g, w)));
    let status = loop {
        if let Some((group, exits)) = &watch {
            tokio::select! {
                died = exits.died() => match died {
                    Ok(signaled) => {
                        if signaled {
                            // Killed by a signal (the OOM killer, an operator): what it started
                            // is left working for nobody. Ended while the dead leader's id still
                            // holds the group.
                            let _ = kill_process_group(*group, Signal::KILL);
                        }
                        break child.wait().await;
                    }
                    Err(_) => watch = None, // wait as below
                },
                reason = killed(&mut kill) => {
                    tracing::debug!(target: "gitgate::cgi", %reason, "killing CGI backend");
                    killed_for = Some(reason);
                    break end_group(&mut child).await;
                }
            }
            continue;
        }
        tokio::select! {
            status = child.wait() => break status,
            reason = killed(&mut kill) => {
                tracing::debug!(target: "gitgate::cgi", %reason, "killing CGI backend");
                killed_for = Some(reason);
                break end_group(&mut child).await;
            }
        }
    };
    // Reaped. Pulling the switch now only stops the stdin task, which must not hang on to the
    // client's body for a backend that is gone.
    drop(counted);
    switch.kill("the backend exited");
    // The last stderr line explains a failure, worth a second's wait. A success waits only
    // a moment: a hook's background job that keeps the pipe open would otherwise hold every
    // answer back by the full grace. Its lines are still logged as they come.
    let failed = killed_for.is_some() || !matches!(&status, Ok(s) if s.success());
    let grace = if failed {
        STDERR_GRACE
    } else {
        SUCCESS_STDERR_GRACE
    };
    let last_stderr = match tokio::time::timeout(grace, &mut stderr).await {
        Ok(last) => last.ok().flatten(),
        Err(_) if !failed => {
            // Left to log the rest for the full grace, off the answer's path; then ended like a
            // failure's, so that a job holding the pipe for good holds no task and no descriptor
            // of gitgate's.
            tokio::spawn(async move {
                if tokio::time::timeout(STDERR_GRACE, &mut stderr)
                    .await
                    .is_err()
                {
                    stderr.abort();
                }
            });
            None
        }
        Err(_) => {
            stderr.abort();
            None
        }
    };
    let _ = report.send(ExitInfo {
        status,
        last_stderr,
        killed: killed_for,
    });
}

/// The child's process group (its own id: it leads a group of its own), while not reaped.
fn group_of(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw)
}

/// Sees a group leader's end without reaping it: a dead but unreaped leader keeps its id, and
/// so its group's, from being reused, and the rest of the group can still be signalled safely.
struct ExitWatch(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

impl ExitWatch {
    /// `Err` when the kernel has no pidfd (before Linux 5.4): callers then wait as before.
    fn new(leader: Pid) -> io::Result<ExitWatch> {
        use rustix::process::{pidfd_open, PidfdFlags};
        let pidfd = pidfd_open(leader, PidfdFlags::NONBLOCK)?;
        // Deprecated because a type could return another descriptor later; an `OwnedFd` cannot.
        #[allow(deprecated)]
        let pidfd = tokio::io::unix::AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE)?;
        Ok(ExitWatch(pidfd))
    }

    /// Waits until the leader has exited, leaving it unreaped; `true` when it died of a signal.
    async fn died(&self) -> io::Result<bool> {
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        use std::os::fd::AsFd;
        loop {
            let mut ready = self.0.readable().await?;
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
            match waitid(WaitId::PidFd(self.0.get_ref().as_fd()), options)? {
                Some(status) => return Ok(status.terminating_signal().is_some()),
                None => ready.clear_ready(),
            }
        }
    }
}

/// Ends the child and every process in its group: SIGTERM first, so that git removes its
/// temporary files (a push's quarantined objects, a half-written pack), then, after
/// [`TERM_GRACE`], SIGKILL for whatever of the group is left — the child itself, or a
/// descendant that ignores SIGTERM after the child is gone. Signals go to the group only while
/// the child is not reaped yet — its id is still taken then, so the group cannot be someone
/// else's. Errors from `kill` mean the group is already gone, which is what we wanted.
async fn end_group(child: &mut Child) -> io::Result<ExitStatus> {
    let Some(group) = group_of(child) else {
        return child.wait().await; // already reaped
    };
    let _ = kill_process_group(group, Signal::TERM);
    let deadline = tokio::time::Instant::now() + TERM_GRACE;
    let died = async {
        match ExitWatch::new(group) {
            Ok(exits) => exits.died().await,
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout_at(deadline, died).await {
        Ok(Ok(_)) => {
            // The leader is gone but unreaped. The rest of the group (git's helpers, cleaning
            // up after SIGTERM) gets what is left of the grace period, then SIGKILL. Whether
            // any is left cannot be told cheaply — the dead leader is still a member — so the
            // grace is waited out.
            tokio::time::sleep_until(deadline).await;
            let _ = kill_process_group(group, Signal::KILL);
            child.wait().await
        }
        // No pidfd: wait for the leader as before.
        Ok(Err(_)) => match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                let _ = kill_process_group(group, Signal::KILL);
                let _ = child.start_kill();
                child.wait().await
            }
        },
        Err(_) => {
            let _ = kill_process_group(group, Signal::KILL);
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

/// What the stdin task does when the client's body breaks off (an error, or a clean end short of
/// its `Content-Length`, which hyper gives when an HTTP/2 client resets the stream with
/// `NO_ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Break {
    /// Close stdin and let the backend fail by itself: a push. receive-pack, given an
    /// incomplete pack, fails its checksum and removes its quarantined objects; killed, it would
    /// leave them on disk (tens of MB per interrupted push).
    CloseStdin,
    /// Kill the backend: anything else, which has nothing to clean up.
    Kill,
}

/// Copies the request body to the child's stdin frame by frame, then closes stdin; a broken
/// body is handled as `on_break` says.
async fn feed_stdin<B>(
    mut body: B,
    mut stdin: ChildStdin,
    promised: Option<u64>,
    on_break: Break,
    kill: KillSwitch,
    moved: Progress,
) where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    let mut stop = kill.subscribe();
    let mut fed = 0u64;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = killed(&mut stop) => return,
        };
        match frame {
            None => break,
            Some(Ok(frame)) => {
                moved.touch();
                // Trailers have no CGI meaning; only data goes to the backend.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                fed += data.len() as u64;
                if let Err(e) = stdin.write_all(&data).await {
                    // The backend stopped reading (it answered early, or died); its exit status
                    // tells the rest of the story.
                    tracing::debug!(target: "gitgate::cgi", error = %e, "CGI backend stopped reading the request body");
                    return;
                }
            }
            Some(Err(e)) => {
                if on_break == Break::CloseStdin {
                    tracing::warn!(target: "gitgate::cgi", error = %e, "push body failed; closing the backend's input so that the push fails and cleans up");
                    return; // closes stdin
                }
                tracing::warn!(target: "gitgate::cgi", error = %e, "request body failed; killing the CGI backend");
                kill.kill(&format!("request body failed: {e}"));
                return;
            }
        }
    }
    if let Some(promised) = promised.filter(|&promised| fed < promised) {
        if on_break == Break::CloseStdin {
            tracing::info!(target: "gitgate::cgi", fed, promised, "push body ended short of its Content-Length; closing the backend's input so that the push fails and cleans up");
            return;
        }
        // A broken body, like an error: the kill is asked for before stdin closes (on return).
        tracing::info!(target: "gitgate::cgi", fed, promised, "request body ended short of its Content-Length; killing the CGI backend");
        kill.kill(&format!(
            "request body ended after {fed} of its {promised} bytes"
        ));
        return;
    }
    // Dropping stdin closes the pipe: end of body for a backend reading to EOF.
    drop(stdin);
}

/// Logs each stderr line of the child as a warning, up to [`MAX_STDERR_LINES`], then how many
/// more there were; returns the last non-empty one.
async fn log_stderr<R: AsyncRead + Unpin>(stderr: R, path: String) -> Option<String> {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut last = None;
    let mut logged = 0u32;
    let mut unlogged = 0u64;
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_STDERR_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if text.is_empty() {
                    continue;
                }
                if logged < MAX_STDERR_LINES {
                    logged += 1;
                    tracing::warn!(target: "gitgate::cgi", path = %path, "{text}");
                } else {
                    unlogged += 1;
                }
                last = Some(text.to_owned());
            }
        }
    }
    if unlogged > 0 {
        tracing::warn!(
            target: "gitgate::cgi",
            path = %path,
            logged,
            unlogged,
            "CGI backend wrote more stderr lines than are logged; the rest were read and dropped"
        );
    }
    last
}

/// Reads stdout until the end of the CGI header block. Returns the block (including its blank
/// line) and any body bytes read along with it, or `None` if stdout closed first.
async fn read_head<R: AsyncRead + Unpin>(
    stdout: &mut R,
) -> Result<Option<(Bytes, Option<Bytes>)>, CgiError> {
    let mut buf = BytesMut::with_capacity(HEAD_READ);
    let mut scan = HeadScan::default();
    loop {
        if let Some(end) = scan.find_end(&buf) {
            let head = buf.split_to(end).freeze();
            let rest = (!buf.is_empty()).then(|| buf.freeze());
            return Ok(Some((head, rest)));
        }
        if buf.len() >= MAX_HEADER_BLOCK {
            return Err(CgiError::BadHeaders(format!(
                "no end of headers within the first {MAX_HEADER_BLOCK} bytes"
            )));
        }
        buf.reserve(HEAD_READ);
        match stdout.read_buf(&mut buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(CgiError::BadHeaders(format!("reading stdout failed: {e}"))),
        }
    }
}

/// Finds the blank line that ends a CGI header block, remembering where it stopped so that each
/// new read is scanned once.
#[derive(Debug, Default)]
struct HeadScan {
    /// Start of the first line not yet known to be complete.
    line_start: usize,
}

impl HeadScan {
    /// The length of the header block including its terminating blank line (`\n` or `\r\n`),
    /// if `buf` already holds all of it. The block may be at most [`MAX_HEADER_BLOCK`] long.
    fn find_end(&mut self, buf: &[u8]) -> Option<usize> {
        let limit = buf.len().min(MAX_HEADER_BLOCK);
        // `get` rather than indexing: the bounds hold only if `buf` never shrinks between calls.
        while let Some(nl) = buf
            .get(self.line_start..limit)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let line = buf
                .get(self.line_start..self.line_start + nl)
                .unwrap_or_default();
            self.line_start += nl + 1;
            if line.is_empty() || line == b"\r" {
                return Some(self.line_start);
            }
        }
        None
    }
}

/// The response line and headers a CGI header block asks for.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Turns a complete CGI header block into a status and response headers (RFC 3875 §6.3).
/// `Status` sets the status (default 200, or 302 with `Location`); other fields become response
/// headers. A field hyper cannot carry is skipped with a warning; a block that is not CGI output
/// at all (a line without a colon, an unreadable `Status`) is an error.
pub fn parse_head(block: &[u8]) -> Result<Head, CgiError> {
    let mut status = None;
    let mut headers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // the blank line: end of the block
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(CgiError::BadHeaders(format!(
                "not a header line: {:?}",
                String::from_utf8_lossy(line)
            )));
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"status") {
            if status.is_some() {
                return Err(CgiError::BadHeaders("more than one Status line".to_owned()));
            }
            status = Some(parse_status(value)?);
            continue;
        }
        let parsed = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value));
        let (Ok(name), Ok(value)) = parsed else {
            tracing::warn!(
                target: "gitgate::cgi",
                header = %String::from_utf8_lossy(line),
                "skipping invalid header from the CGI backend"
            );
            continue;
        };
        if HOP_BY_HOP.contains(&name.as_str()) {
            tracing::debug!(target: "gitgate::cgi", header = %name, "dropping hop-by-hop header from the CGI backend");
            continue;
        }
        headers.append(name, value);
    }
    let status = status.unwrap_or(if headers.contains_key(header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(Head { status, headers })
}

/// `404 Not Found` → 404. Only the code matters; the reason phrase is hyper's to write.
fn parse_status(value: &[u8]) -> Result<StatusCode, CgiError> {
    let code = value.split(|&b| b == b' ').next().unwrap_or_default();
    match StatusCode::from_bytes(code) {
        Ok(status) if code.len() == 3 => Ok(status),
        _ => Err(CgiError::BadHeaders(format!(
            "unusable Status: {:?}",
            String::from_utf8_lossy(value)
        ))),
    }
}

/// The backend's response body: whatever came with the header block, then stdout chunk by chunk
/// as hyper polls. Ends cleanly only if the backend exited successfully; otherwise the last frame
/// is an error, so the client sees a failure rather than a truncated success.
///
/// Dropping it before the backend finished writing (the client went away) kills the backend,
/// except a push's: that one is left to finish, its output read and thrown away, as long as it
/// keeps writing, a few at a time (see the module docs). The supervisor task reaps
/// it either way.
pub struct CgiBody {
    prefix: Option<Bytes>,
    stdout: Option<ChildStdout>,
    buf: BytesMut,
    exit: Option<oneshot::Receiver<ExitInfo>>,
    guard: KillGuard,
    /// What is left of a `Content-Length` the backend declared (git http-backend does for
    /// dumb-HTTP files). hyper stops reading at that length, so the body ends there, not at the
    /// backend's exit: else the finished answer would be logged as cut off, and its backend
    /// killed.
    left: Option<u64>,
    /// For a push: what it needs to finish without its client (see [`Finishing`]).
    finishing: Option<Finishing>,
}

/// How a push whose client left is let finish: for as long as it writes something within
/// `idle` (the head timeout), while fewer than [`MAX_FINISHING`] of this worker's pushes are
/// finishing so, and until gitgate stops.
struct Finishing {
    idle: Duration,
    running: Arc<Running>,
    /// The request, for the log: repository path and user.
    label: String,
}

/// The most pushes of one worker that may finish without their client at once. Past it, a push
/// whose client leaves is ended as any other request is: a writer cannot stack unbounded
/// receive-packs and hooks by connecting and leaving.
const MAX_FINISHING: usize = 8;

impl Drop for CgiBody {
    fn drop(&mut self) {
        let (Some(finishing), Some(stdout)) = (self.finishing.take(), self.stdout.take()) else {
            return; // the guard, if still armed, kills the backend
        };
        let label = &finishing.label;
        if *finishing.running.stopping.borrow() {
            return; // gitgate is stopping: the guard ends it with the rest
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(slot) = FinishingSlot::take(&finishing.running) else {
            tracing::warn!(target: "gitgate::cgi", push = %label, "the client left during a push, and {MAX_FINISHING} pushes are already finishing without theirs: ending this one");
            return;
        };
        let guard = std::mem::replace(&mut self.guard, KillGuard::disarmed());
        tracing::info!(target: "gitgate::cgi", push = %label, "the client left during a push; git receive-pack finishes it (its refs only if the whole pack arrived, and its hooks)");
        runtime.spawn(finish_alone(
            stdout,
            guard,
            self.exit.take(),
            finishing,
            slot,
        ));
    }
}

/// One of a worker's [`MAX_FINISHING`] places, given back when dropped.
struct FinishingSlot(Arc<Running>);

impl FinishingSlot {
    fn take(running: &Arc<Running>) -> Option<FinishingSlot> {
        running
            .finishing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_FINISHING).then_some(n + 1)
            })
            .ok()
            .map(|_| FinishingSlot(running.clone()))
    }
}

impl Drop for FinishingSlot {
    fn drop(&mut self) {
        if self.0.finishing.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_finishing.notify_waiters();
        }
    }
}

/// Reads a push's output to its end for a client that has left, so that receive-pack can
/// finish, then logs how it ended; `guard` kills it if it writes nothing for the idle time, or
/// when gitgate stops.
async fn finish_alone(
    mut stdout: ChildStdout,
    mut guard: KillGuard,
    exit: Option<oneshot::Receiver<ExitInfo>>,
    finishing: Finishing,
    _slot: FinishingSlot,
) {
    let mut stopping = finishing.running.stopping.subscribe();
    let mut scratch = vec![0u8; HEAD_READ];
    // `None` once it has said all it had to say; else why it is ended.
    let ended = loop {
        let read = tokio::select! {
            read = tokio::time::timeout(finishing.idle, stdout.read(&mut scratch)) => read,
            _ = stopping.wait_for(|s| *s) => break Some("gitgate is stopping"),
        };
        match read {
            Ok(Ok(0)) => break None,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break Some("reading the output of a push whose client left failed"),
            Err(_) => break Some("a push whose client left sent nothing for the idle timeout"),
        }
    };
    match ended {
        // Left to exit by itself, as a body read to its end is.
        None => guard.disarm(),
        Some(reason) => guard.reason = reason,
    }
    drop(guard);
    let Some(exit) = exit else { return };
    match exit.await {
        Ok(info) if info.success() => {
            tracing::info!(target: "gitgate::cgi", push = %finishing.label, "a push whose client left has finished: {info}")
        }
        Ok(info) => {
            tracing::warn!(target: "gitgate::cgi", push = %finishing.label, "a push whose client left has failed: {info}")
        }
        Err(_) => {}
    }
}

impl CgiBody {
    /// `data` as far as the declared length goes; at its end the body is complete, and the
    /// backend is left to exit by itself.
    fn within_declared(&mut self, mut data: Bytes) -> Bytes {
        if let Some(left) = self.left {
            data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
            let left = left - data.len() as u64;
            self.left = Some(left);
            if left == 0 {
                self.declared_length_sent();
            }
        }
        data
    }

    fn declared_length_sent(&mut self) {
        self.prefix = None;
        self.stdout = None;
        self.buf = BytesMut::new();
        self.exit = None;
        self.guard.disarm();
    }
}

impl fmt::Debug for CgiBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CgiBody")
            .field("reading_stdout", &self.stdout.is_some())
            .field("done", &self.is_end_stream())
            .finish()
    }
}

impl Body for CgiBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(this.within_declared(prefix)))));
        }

        if let Some(stdout) = &mut this.stdout {
            // Read into the buffer's spare room as it is: zeroing 64 KiB before each read (what
            // a safe `ReadBuf` over initialised bytes needs) cost a tenth of gitgate's CPU in a
            // clone through the CGI runner (`memset`, perf), as much as the copy it prepares.
            this.buf.reserve(BODY_CHUNK);
            let mut room = (&mut this.buf).limit(BODY_CHUNK);
            let result = ready!(tokio_util::io::poll_read_buf(
                Pin::new(stdout),
                cx,
                &mut room
            ));
            match result {
                Ok(n) if n > 0 => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(this.within_declared(data)))));
                }
                Ok(_) => {
                    // The backend said all it had to say; from now on it is left to exit by
                    // itself, even if the body is dropped before we hear how.
                    this.buf = BytesMut::new();
                    this.stdout = None;
                    this.guard.disarm();
                }
                Err(e) => {
                    this.stdout = None;
                    this.exit = None;
                    if let Some(switch) = this.guard.switch.take() {
                        switch.kill("reading stdout failed");
                    }
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }

        let Some(exit) = &mut this.exit else {
            return Poll::Ready(None);
        };
        let info = ready!(Pin::new(exit).poll(cx));
        this.exit = None;
        match info {
            Ok(info) if info.success() => Poll::Ready(None),
            Ok(info) => Poll::Ready(Some(Err(io::Error::other(format!(
                "the CGI backend failed after sending its response headers: {info}"
            ))))),
            Err(_) => Poll::Ready(Some(Err(io::Error::other(
                "the CGI backend's supervisor went away",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.stdout.is_none() && self.exit.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_answers_to_a_repository() {
        assert_eq!(RepoDir::of(true, false), RepoDir::WithGit);
        assert_eq!(RepoDir::of(false, true), RepoDir::Plain);
        assert_eq!(RepoDir::of(false, false), RepoDir::Missing);
        assert_eq!(RepoDir::of(true, true), RepoDir::Both);
        let root = tempfile::tempdir().unwrap();
        let backend = CgiBackend::new("/bin/false".into(), root.path().to_owned());
        let bare = |name: &str| {
            let dir = root.path().join(name);
            std::fs::create_dir_all(dir.join("objects")).unwrap();
            std::fs::create_dir_all(dir.join("refs")).unwrap();
            std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        };
        bare("team/app.git");
        bare("team/plain");
        bare("team/both");
        bare("team/both.git");
        bare("team/odd.git.git");
        // A working tree.
        std::fs::create_dir_all(root.path().join("team/tree/.git")).unwrap();
        // A folder of repositories beside the repository of the same name, and an empty one.
        bare("team/nested.git");
        bare("team/nested/lib.git");
        std::fs::create_dir_all(root.path().join("team/stray.git")).unwrap();
        bare("team/stray");
        // A file is no repository.
        std::fs::write(root.path().join("team/file"), "").unwrap();
        assert_eq!(backend.repo_dir("team/app"), RepoDir::WithGit);
        assert_eq!(backend.repo_dir("team/plain"), RepoDir::Plain);
        assert_eq!(backend.repo_dir("team/tree"), RepoDir::Plain);
        assert_eq!(backend.repo_dir("team/both"), RepoDir::Both);
        assert_eq!(backend.repo_dir("team/odd"), RepoDir::Missing);
        assert_eq!(backend.repo_dir("team/file"), RepoDir::Missing);
        assert_eq!(backend.repo_dir("team/nested"), RepoDir::WithGit);
        assert_eq!(backend.repo_dir("team/nested/lib"), RepoDir::WithGit);
        assert_eq!(backend.repo_dir("team/stray"), RepoDir::Plain);
    }
    use std::net::Ipv4Addr;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command as StdCommand;

    use http_body_util::{Empty, Full};

    // ---- pure parts ----------------------------------------------------------------------

    #[test]
    fn head_end_accepts_lf_and_crlf() {
        assert_eq!(HeadScan::default().find_end(b"A: b\r\n\r\nbody"), Some(8));
        assert_eq!(HeadScan::default().find_end(b"A: b\n\nbody"), Some(6));
        assert_eq!(
            HeadScan::default().find_end(b"A: b\r\nC: d\n\r\n"),
            Some(13)
        );
        assert_eq!(HeadScan::default().find_end(b"\r\nbody"), Some(2));
        assert_eq!(HeadScan::default().find_end(b"A: b\r\nC: d"), None);
    }

    #[test]
    fn a_backend_flooding_stderr_gets_a_bounded_number_of_log_lines() {
        let flood: String = (1..=5000).map(|n| format!("line {n}\n")).collect();
        let mut last = None;
        let log = crate::store::test_support::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            last = rt.block_on(log_stderr(flood.as_bytes(), "/repo.git/x".into()));
        });
        // Every line is read (the last one is still reported), not every line is logged.
        assert_eq!(last.as_deref(), Some("line 5000"));
        assert_eq!(
            log.matches("line ").count(),
            MAX_STDERR_LINES as usize,
            "{log}"
        );
        assert!(log.contains(&format!("line {MAX_STDERR_LINES}")));
        assert!(!log.contains(&format!("line {}", MAX_STDERR_LINES + 1)));
        assert!(log.contains("logged=100 unlogged=4900"), "{log}");
    }

    #[test]
    fn a_backend_writing_a_few_stderr_lines_has_each_logged() {
        let mut last = None;
        let log = crate::store::test_support::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            last = rt.block_on(log_stderr(&b"fatal: one\n\ntwo"[..], "/r".into()));
        });
        assert_eq!(last.as_deref(), Some("two"));
        assert!(log.contains("fatal: one") && log.contains("two"), "{log}");
        assert!(!log.contains("unlogged"), "{log}");
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let mut scan = HeadScan::default();
        let full = b"Content-Type: x\r\nStatus: 200 OK\r\n\r\nrest";
        for len in 0..full.len() {
            if let Some(end) = scan.find_end(&full[..len]) {
                assert_eq!(end, full.len() - "rest".len());
                return;
            }
        }
        panic!("end of headers not found");
    }

    #[test]
    fn head_end_ignores_blank_line_beyond_the_cap() {
        let mut block = vec![b'X'; MAX_HEADER_BLOCK];
        block.extend_from_slice(b"\n\n");
        assert_eq!(HeadScan::default().find_end(&block), None);
    }

    #[test]
    fn parse_head_reads_status_and_headers() {
        let head = parse_head(
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Many: 1\r\nX-Many: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(head.headers["content-type"], "text/plain");
        assert_eq!(head.headers.get_all("x-many").iter().count(), 2);
        assert!(head.headers.get("status").is_none());
    }

    #[test]
    fn parse_head_defaults() {
        assert_eq!(
            parse_head(b"Content-Type: a/b\n\n").unwrap().status,
            StatusCode::OK
        );
        assert_eq!(
            parse_head(b"Location: /x\n\n").unwrap().status,
            StatusCode::FOUND
        );
        assert_eq!(
            parse_head(b"status:304\n\n").unwrap().status,
            StatusCode::NOT_MODIFIED
        );
    }

    #[test]
    fn parse_head_skips_invalid_and_hop_by_hop_headers() {
        let head = parse_head(
            b"Bad Name: x\r\nX-Ctl: a\x01b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nX-Ok: yes\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.headers.len(), 1);
        assert_eq!(head.headers["x-ok"], "yes");
    }

    #[test]
    fn parse_head_rejects_non_cgi_output() {
        assert!(matches!(
            parse_head(b"hello world\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"Status: abc\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"Status: 99\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"Status: 2000\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"Status: 200\nStatus: 500\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
    }

    #[test]
    fn git_protocol_validation() {
        assert!(valid_git_protocol("version=2"));
        assert!(valid_git_protocol("version=2:object-format=sha256:x.y_z-1"));
        assert!(!valid_git_protocol(""));
        assert!(!valid_git_protocol("version=2:"));
        assert!(!valid_git_protocol("version=2::x"));
        assert!(!valid_git_protocol("version=2 x"));
        assert!(!valid_git_protocol("version=2;rm -rf"));
        assert!(!valid_git_protocol("v=\u{e9}"));
        assert!(!valid_git_protocol(&"a".repeat(2000)));
    }

    #[test]
    fn content_encoding_is_normalised_or_dropped() {
        assert_eq!(content_encoding("gzip"), Some("gzip"));
        assert_eq!(content_encoding("GZip"), Some("gzip"));
        assert_eq!(content_encoding("x-gzip"), Some("x-gzip"));
        assert_eq!(content_encoding("identity"), Some("identity"));
        assert_eq!(content_encoding("br"), None);
        assert_eq!(content_encoding("gzip, br"), None);
    }

    #[test]
    fn content_length_only_when_trustworthy() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        assert_eq!(content_length(&h), Some(42));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(content_length(&h), None);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("+4"));
        assert_eq!(content_length(&h), None);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(content_length(&h), None);
    }

    #[test]
    fn path_is_sanitized() {
        assert_eq!(sanitize_path(None), FALLBACK_PATH);
        assert_eq!(sanitize_path(Some(OsStr::new(""))), FALLBACK_PATH);
        assert_eq!(sanitize_path(Some(OsStr::new(".:bin::"))), FALLBACK_PATH);
        assert_eq!(
            sanitize_path(Some(OsStr::new("/usr/local/bin:.::/usr/bin:relative"))),
            "/usr/local/bin:/usr/bin"
        );
        assert_eq!(home_dir(Some(OsStr::new("/home/git"))), "/home/git");
        assert_eq!(home_dir(Some(OsStr::new("~"))), "/nonexistent");
        assert_eq!(home_dir(None), "/nonexistent");
    }

    #[test]
    fn env_maps_only_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("proxy", HeaderValue::from_static("http://evil"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        headers.insert("git-protocol", HeaderValue::from_static("version=2"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-git-upload-pack-request"),
        );
        let req = CgiRequest {
            method: &Method::POST,
            path_info: "/team/app.git/git-upload-pack",
            query: None,
            headers: &headers,
            remote_user: "alice",
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let env = cgi_env(&req, Path::new("/srv/git"));
        let get = |k: &str| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("GIT_PROTOCOL").unwrap(), "version=2");
        assert_eq!(get("QUERY_STRING").unwrap(), "");
        assert_eq!(get("REMOTE_ADDR").unwrap(), "127.0.0.1");
        assert_eq!(get("GIT_PROJECT_ROOT").unwrap(), "/srv/git");
        assert!(get("CONTENT_LENGTH").is_none());
        assert!(env.iter().all(|(k, _)| !k.starts_with("HTTP_")));
        let secret = env
            .iter()
            .any(|(_, v)| v.as_bytes().windows(6).any(|w| w == b"secret"));
        assert!(!secret, "the token must not reach the backend");
    }

    #[test]
    fn a_push_is_not_told_its_length_a_fetch_is() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        let req = |path_info| CgiRequest {
            method: &Method::POST,
            path_info,
            query: None,
            headers: &headers,
            remote_user: "alice",
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let length = |path_info| {
            cgi_env(&req(path_info), Path::new("/srv/git"))
                .into_iter()
                .find(|(k, _)| *k == "CONTENT_LENGTH")
                .map(|(_, v)| v)
        };
        assert_eq!(length("/team/app.git/git-upload-pack").unwrap(), "42");
        assert_eq!(length("/team/app.git/git-receive-pack"), None);
        assert!(is_push(&req("/team/app.git/git-receive-pack")));
        assert!(!is_push(&req("/team/app.git/git-upload-pack")));
    }

    // ---- real processes --------------------------------------------------------------------

    fn http_backend() -> PathBuf {
        let exec_path = StdCommand::new("git").arg("--exec-path").output().ok();
        let from_git = exec_path.filter(|o| o.status.success()).map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("git-http-backend")
        });
        match from_git {
            Some(p) if p.exists() => p,
            _ => PathBuf::from("/usr/lib/git-core/git-http-backend"),
        }
    }

    fn git(dir: &Path, args: &[&str]) {
        let out = StdCommand::new("git")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(["-c", "init.defaultBranch=main"])
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `<tmp>/root/team/app.git`, a bare repository with one commit on `main`.
    fn repo() -> (tempfile::TempDir, CgiBackend) {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q"]);
        std::fs::write(work.join("README"), "hello\n").unwrap();
        git(&work, &["add", "README"]);
        git(&work, &["commit", "-q", "-m", "first"]);
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("team")).unwrap();
        git(
            tmp.path(),
            &["clone", "-q", "--bare", "work", "root/team/app.git"],
        );
        let backend = CgiBackend::new(http_backend(), root);
        (tmp, backend)
    }

    /// A CGI program written as a shell script.
    fn script(dir: &Path, name: &str, body: &str) -> CgiBackend {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        CgiBackend::new(path, dir.to_owned())
    }

    fn request<'a>(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> CgiRequest<'a> {
        CgiRequest {
            method,
            path_info: path,
            query,
            headers,
            remote_user: "alice",
            remote_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        }
    }

    /// `serve`, retrying while the kernel still sees the freshly written script as open for
    /// writing (ETXTBSY: another test thread forked while we held it open).
    async fn serve<B, F>(
        backend: &CgiBackend,
        req: CgiRequest<'_>,
        mut body: F,
    ) -> Result<Response<CgiBody>, CgiError>
    where
        F: FnMut() -> B,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: fmt::Display + Send,
    {
        for _ in 0..50 {
            match backend.serve(req, body()).await {
                Err(CgiError::Spawn(e)) if e.raw_os_error() == Some(26) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => return other,
            }
        }
        panic!("script stayed busy");
    }

    async fn body_bytes(body: CgiBody) -> Bytes {
        body.collect().await.expect("clean body").to_bytes()
    }

    fn empty() -> Empty<Bytes> {
        Empty::new()
    }

    /// A request body whose frames come from a channel, as they arrive.
    struct Trickle(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn a_body_of_declared_length_ends_with_its_last_byte() {
        // The backend keeps stdout open after its declared five bytes (and would send more).
        let dir = tempfile::tempdir().unwrap();
        let backend = script(
            dir.path(),
            "sized",
            "printf 'Content-Type: text/plain\\r\\nContent-Length: 5\\r\\n\\r\\nhello, and more'; exec sleep 5",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/team/app.git/HEAD", None, &headers);
        let resp = serve(&backend, req, empty).await.unwrap();
        let started = std::time::Instant::now();
        let body = resp.into_body();
        let bytes = tokio::time::timeout(Duration::from_secs(3), body_bytes(body))
            .await
            .expect("the body waited for the backend's exit, past its declared length");
        assert_eq!(&bytes[..], b"hello");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn running_out_of_processes_or_files_is_an_overload_not_a_failure() {
        for errno in [11, 23, 24] {
            assert!(CgiError::Spawn(io::Error::from_raw_os_error(errno)).is_overload());
        }
        assert!(!CgiError::Spawn(io::Error::from_raw_os_error(2)).is_overload());
        assert!(!CgiError::TimedOut(Duration::from_secs(1)).is_overload());
    }

    #[tokio::test]
    async fn a_backend_that_sends_no_headers_in_time_is_ended_with_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let backend = script(dir.path(), "hang", "exec sleep 60")
            .with_head_timeout(Duration::from_millis(500));
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/team/app.git/info/refs", None, &headers);
        let started = std::time::Instant::now();
        let e = serve(&backend, req, empty).await.unwrap_err();
        assert!(matches!(e, CgiError::TimedOut(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            backend.wait_until_reaped().await,
            0,
            "the backend was not ended"
        );
    }

    #[tokio::test]
    async fn a_backend_reading_an_upload_that_moves_is_not_timed_out() {
        // Reads the whole body before its headers (as a CGI program may), while the body
        // trickles in for three times the head timeout.
        let dir = tempfile::tempdir().unwrap();
        let backend = script(
            dir.path(),
            "reader",
            "cat >/dev/null; printf 'Content-Type: text/plain\\r\\n\\r\\nread'",
        )
        .with_head_timeout(Duration::from_millis(500));
        let headers = HeaderMap::new();
        let req = request(
            &Method::POST,
            "/team/app.git/git-receive-pack",
            None,
            &headers,
        );
        let trickle = || {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                for _ in 0..15 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tx.send(Bytes::from_static(b"p")).await.is_err() {
                        return;
                    }
                }
            });
            Trickle(rx)
        };
        let resp = serve(&backend, req, trickle).await.unwrap();
        assert_eq!(&body_bytes(resp.into_body()).await[..], b"read");
    }

    #[tokio::test]
    async fn info_refs_v0() {
        let (_tmp, backend) = repo();
        let headers = HeaderMap::new();
        let req = request(
            &Method::GET,
            "/team/app.git/info/refs",
            Some("service=git-upload-pack"),
            &headers,
        );
        let resp = serve(&backend, req, empty).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"],
            "application/x-git-upload-pack-advertisement"
        );
        let body = body_bytes(resp.into_body()).await;
        assert!(
            body.starts_with(b"001e# service=git-upload-pack\n"),
            "{body:?}"
        );
        assert!(body.windows(15).any(|w| w == b"refs/heads/main"));
    }

    #[tokio::test]
    async fn info_refs_v2() {
        let (_tmp, backend) = repo();
        let mut headers = HeaderMap::new();
        headers.insert("git-protocol", HeaderValue::from_static("version=2"));
        let req = request(
            &Method::GET,
            "/team/app.git/info/refs",
            Some("service=git-upload-pack"),
            &headers,
        );
        let resp = serve(&backend, req, empty).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = body_bytes(resp.into_body()).await;
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("version 2\n"), "{text}");
        assert!(text.contains("ls-refs"), "{text}");
        assert!(text.contains("fetch"), "{text}");
    }

    #[tokio::test]
    async fn missing_repo_is_404() {
        let (_tmp, backend) = repo();
        let headers = HeaderMap::new();
        let req = request(
            &Method::GET,
            "/team/nope.git/info/refs",
            Some("service=git-upload-pack"),
            &headers,
        );
        let resp = serve(&backend, req, empty).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        body_bytes(resp.into_body()).await;
    }

    #[tokio::test]
    async fn upload_pack_v2_ls_refs() {
        let (_tmp, backend) = repo();
        let pkt = b"0014command=ls-refs\n0001000bsymrefs0000".as_slice();
        let mut headers = HeaderMap::new();
        headers.insert("git-protocol", HeaderValue::from_static("version=2"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-git-upload-pack-request"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(pkt.len()));
        let req = request(
            &Method::POST,
            "/team/app.git/git-upload-pack",
            None,
            &headers,
        );
        let resp = serve(&backend, req, || Full::new(Bytes::from_static(pkt)))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"],
            "application/x-git-upload-pack-result"
        );
        let body = body_bytes(resp.into_body()).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(" HEAD symref-target:refs/heads/main\n"),
            "{text}"
        );
        assert!(text.contains(" refs/heads/main\n"), "{text}");
        assert!(text.ends_with("0000"), "{text}");
    }

    #[tokio::test]
    async fn client_headers_do_not_reach_the_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = script(
            tmp.path(),
            "env.cgi",
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; env",
        );
        let mut headers = HeaderMap::new();
        headers.insert("proxy", HeaderValue::from_static("http://evil"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic c2VjcmV0"),
        );
        headers.insert("git-protocol", HeaderValue::from_static("version=2;evil"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let req = request(
            &Method::POST,
            "/team/app.git/git-receive-pack",
            None,
            &headers,
        );
        let resp = serve(&backend, req, empty).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let env = String::from_utf8(body_bytes(resp.into_body()).await.to_vec()).unwrap();
        let vars: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        assert!(!vars.contains(&"HTTP_PROXY"), "{env}");
        assert!(!vars.contains(&"HTTP_AUTHORIZATION"), "{env}");
        assert!(!vars.contains(&"GIT_PROTOCOL"), "{env}");
        assert!(!vars.iter().any(|v| v.starts_with("HTTP_")), "{env}");
        assert!(!env.contains("c2VjcmV0"), "{env}");
        assert!(env.lines().any(|l| l == "REMOTE_USER=alice"), "{env}");
        assert!(env.lines().any(|l| l == "REMOTE_ADDR=192.0.2.7"), "{env}");
        // A push is not told its length (see `cgi_env`).
        assert!(!vars.contains(&"CONTENT_LENGTH"), "{env}");
        assert!(env.lines().any(|l| l == "REQUEST_METHOD=POST"), "{env}");
        assert!(env.lines().any(|l| l == "GIT_HTTP_EXPORT_ALL=1"), "{env}");
        // cargo sets this for the test process; env_clear keeps it from the child.
        if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
            assert!(!vars.contains(&"CARGO_MANIFEST_DIR"), "{env}");
        }
    }

    #[tokio::test]
    async fn exit_before_headers_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = script(
            tmp.path(),
            "fail.cgi",
            "echo 'first' >&2; echo 'fatal: it broke' >&2; exit 1",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        match serve(&backend, req, empty).await {
            Err(CgiError::Exited(why)) => {
                assert!(why.contains("exit status: 1"), "{why}");
                assert!(why.contains("fatal: it broke"), "{why}");
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_output_is_bad_headers() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = script(
            tmp.path(),
            "garbage.cgi",
            "echo 'not a header'; echo; echo body",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        let err = serve(&backend, req, empty).await.unwrap_err();
        assert!(matches!(err, CgiError::BadHeaders(_)), "{err}");

        let backend = script(tmp.path(), "endless.cgi", "exec yes X-Header: y");
        let err = serve(&backend, req, empty).await.unwrap_err();
        assert!(matches!(err, CgiError::BadHeaders(_)), "{err}");
    }

    #[tokio::test]
    async fn failure_after_headers_ends_body_with_error() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = script(
            tmp.path(),
            "partial.cgi",
            "printf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\npartial'; echo 'died' >&2; exit 3",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        let mut body = serve(&backend, req, empty).await.unwrap().into_body();
        let mut got = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("body ended cleanly after exit 3"),
            }
        };
        assert_eq!(got, b"partial");
        let msg = err.to_string();
        assert!(
            msg.contains("exit status: 3") && msg.contains("died"),
            "{msg}"
        );
    }

    /// A request body of `remaining` bytes in 1 MiB frames, produced on the fly, optionally
    /// failing instead of ending.
    struct Generated {
        remaining: usize,
        fail_at_end: bool,
    }

    impl Body for Generated {
        type Data = Bytes;
        type Error = String;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
            if self.remaining == 0 {
                return Poll::Ready(self.fail_at_end.then(|| Err("client went away".to_owned())));
            }
            let n = self.remaining.min(1 << 20);
            self.remaining -= n;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
        }
    }

    #[tokio::test]
    async fn large_body_streams_through() {
        const SIZE: usize = 50 * 1000 * 1000 + 7;
        let tmp = tempfile::tempdir().unwrap();
        let backend = script(
            tmp.path(),
            "echo.cgi",
            "printf 'Content-Type: application/octet-stream\\r\\n\\r\\n'; exec cat",
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let req = request(&Method::POST, "/x", None, &headers);
        let make = || Generated {
            remaining: SIZE,
            fail_at_end: false,
        };
        let mut body = serve(&backend, req, make).await.unwrap().into_body();
        let (mut total, mut biggest) = (0, 0);
        while let Some(frame) = body.frame().await {
            let data = frame.expect("clean body").into_data().unwrap();
            assert!(data.iter().all(|&b| b == b'x'));
            total += data.len();
            biggest = biggest.max(data.len());
        }
        assert_eq!(total, SIZE);
        assert!(biggest <= BODY_CHUNK);
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn broken_request_body_kills_backend() {
        let tmp = tempfile::tempdir().unwrap();
        // Would succeed (exit 0) once stdin ends cleanly; must not get the chance.
        let backend = script(
            tmp.path(),
            "push.cgi",
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; sleep 1; echo applied",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::POST, "/x", None, &headers);
        let make = || Generated {
            remaining: 3 << 20,
            fail_at_end: true,
        };
        let body = serve(&backend, req, make).await.unwrap().into_body();
        let err = body.collect().await.unwrap_err().to_string();
        assert!(
            err.contains("request body failed: client went away"),
            "{err}"
        );
        assert!(err.contains("signal"), "{err}");
    }

    #[tokio::test]
    async fn pushes_finishing_alone_are_capped_and_ended_when_gitgate_stops() {
        let tmp = tempfile::tempdir().unwrap();
        // A push that reads its pack, then reports progress for a long time (a slow hook).
        let backend = script(
            tmp.path(),
            "slow-push.cgi",
            &format!(
                "echo $$ > '{0}/started.'$$; printf 'Content-Type: text/plain\\r\\n\\r\\n'; \
                 cat >/dev/null; echo $$ > '{0}/pid.'$$; \
                 i=0; while [ $i -lt 300 ]; do echo progress; sleep 0.1; i=$((i+1)); done",
                tmp.path().display()
            ),
        );
        let headers = HeaderMap::new();
        let make = || Generated {
            remaining: 10,
            fail_at_end: false,
        };
        // The backends that have their pack (`pid.*`), or have started at all (`started.*`,
        // written before the response's head, so there once `serve` has returned).
        let noted = |dir: &Path, prefix: &str| -> Vec<u32> {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                .collect()
        };
        let pids = |dir: &Path| noted(dir, "pid.");
        let alive_started = |dir: &Path| {
            noted(dir, "started.")
                .into_iter()
                .filter(|&p| running(p))
                .count()
        };
        // As many as may finish alone, each left by its client once it has its pack ...
        for n in 1..=MAX_FINISHING {
            let push = request(
                &Method::POST,
                "/team/app.git/git-receive-pack",
                None,
                &headers,
            );
            let response = serve(&backend, push, make).await.unwrap();
            eventually(|| pids(tmp.path()).len() == n).await;
            assert_eq!(pids(tmp.path()).len(), n);
            drop(response);
        }
        // ... and one more, which is ended; the others go on.
        let push = request(
            &Method::POST,
            "/team/app.git/git-receive-pack",
            None,
            &headers,
        );
        drop(serve(&backend, push, make).await.unwrap());
        assert_eq!(noted(tmp.path(), "started.").len(), MAX_FINISHING + 1);
        eventually(|| alive_started(tmp.path()) == MAX_FINISHING).await;
        assert_eq!(alive_started(tmp.path()), MAX_FINISHING);
        assert_eq!(
            backend.running.finishing.load(Ordering::Acquire),
            MAX_FINISHING
        );
        // gitgate stops: they are ended, reaped, and their places given back.
        backend.stop_finishing();
        assert_eq!(backend.wait_until_reaped().await, 0);
        assert!(pids(tmp.path()).into_iter().all(|p| !running(p)));
        tokio::time::timeout(Duration::from_secs(5), backend.pushes_finished())
            .await
            .expect("no push left finishing");
        // And from now on a push whose client leaves is ended at once.
        let push = request(
            &Method::POST,
            "/team/app.git/git-receive-pack",
            None,
            &headers,
        );
        drop(serve(&backend, push, make).await.unwrap());
        assert_eq!(backend.wait_until_reaped().await, 0);
    }

    #[tokio::test]
    async fn a_background_job_holding_stderr_does_not_hold_back_a_finished_answer() {
        let tmp = tempfile::tempdir().unwrap();
        // A hook's background job, started without redirecting stderr.
        let backend = script(
            tmp.path(),
            "hook.cgi",
            "printf 'Content-Type: text/plain\\r\\n\\r\\nok'; sleep 3 >/dev/null </dev/null & exit 0",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        let body = serve(&backend, req, Empty::<Bytes>::new)
            .await
            .unwrap()
            .into_body();
        // From the headers to the body's end: the backend has exited by then, and the answer
        // waited a second more for the job's stderr to close.
        let started = std::time::Instant::now();
        assert_eq!(body_bytes(body).await, "ok");
        let took = started.elapsed();
        assert!(took < Duration::from_millis(800), "{took:?}");
    }

    #[tokio::test]
    async fn a_push_whose_client_left_is_let_finish_and_a_silent_one_is_ended() {
        let tmp = tempfile::tempdir().unwrap();
        let done = tmp.path().join("post-receive-ran");
        // receive-pack's shape: headers at once, the pack read to its end, then the refs and
        // the post-receive hook, writing progress as it goes.
        let backend = script(
            tmp.path(),
            "push.cgi",
            &format!(
                "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; echo unpacked; \
                 sleep 1; echo hook; touch '{}'",
                done.display()
            ),
        );
        let headers = HeaderMap::new();
        let push = request(
            &Method::POST,
            "/team/app.git/git-receive-pack",
            None,
            &headers,
        );
        let make = || Generated {
            remaining: 1000,
            fail_at_end: false,
        };
        let response = serve(&backend, push, make).await.unwrap();
        drop(response); // the client left
        assert!(
            eventually(|| done.exists()).await,
            "the push was killed before its hook ran"
        );

        // Not for a fetch: its backend goes with its client.
        let fetched = tmp.path().join("fetch-finished");
        let fetch_pid = tmp.path().join("fetch-pid");
        let backend = script(
            tmp.path(),
            "fetch.cgi",
            &format!(
                "echo $$ > '{}'; printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; \
                 sleep 1; touch '{}'",
                fetch_pid.display(),
                fetched.display()
            ),
        );
        let fetch = request(
            &Method::POST,
            "/team/app.git/git-upload-pack",
            None,
            &headers,
        );
        drop(serve(&backend, fetch, make).await.unwrap());
        // Ended, or (were it left alone) finished: either way it stops running; then its
        // last step tells which.
        let pid = pid_in(&fetch_pid).await;
        eventually(|| !running(pid)).await;
        assert!(!running(pid));
        assert!(!fetched.exists(), "the fetch's backend was left to finish");

        // A push left alone that writes nothing for the idle timeout is ended.
        let pid_file = tmp.path().join("pid");
        let backend = script(
            tmp.path(),
            "stuck.cgi",
            &format!(
                "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; echo $$ > '{}'; exec sleep 60",
                pid_file.display()
            ),
        )
        .with_head_timeout(Duration::from_millis(500));
        let push = request(
            &Method::POST,
            "/team/app.git/git-receive-pack",
            None,
            &headers,
        );
        drop(serve(&backend, push, make).await.unwrap());
        let pid = pid_in(&pid_file).await;
        assert!(
            eventually(|| !running(pid)).await,
            "a silent push whose client left must be ended"
        );
    }

    /// Whether process `pid` still runs (a zombie has stopped running).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    }

    /// Whether `done` holds within 5 s (polled every 20 ms).
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..250 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done()
    }

    /// The pid a script wrote to `file`, once it is there.
    async fn pid_in(file: &Path) -> u32 {
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(file) {
                if let Ok(pid) = text.trim().parse() {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no pid in {}", file.display());
    }

    #[tokio::test]
    async fn a_backend_killed_by_a_signal_leaves_nothing_it_started_running() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("helper.pid");
        // Starts a helper (as http-backend starts upload-pack), then dies of SIGKILL (as under
        // the OOM killer).
        let backend = script(
            tmp.path(),
            "dies.cgi",
            &format!(
                "sleep 30 & echo $! >'{}'; printf 'Content-Type: text/plain\\r\\n\\r\\n'; kill -9 $$",
                pidfile.display()
            ),
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        // The helper holds the backend's stdout: the answer ends only when it is gone.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            if let Ok(resp) = serve(&backend, req, empty).await {
                assert!(resp.into_body().collect().await.is_err());
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the answer waited for the dead backend's helper"
        );
        let helper = pid_in(&pidfile).await;
        // It closed its stdout as it died; its end may take a moment more to show.
        for _ in 0..50 {
            if !running(helper) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the dead backend's helper {helper} is still running");
    }

    #[tokio::test]
    async fn a_helper_that_ignores_sigterm_is_killed_when_the_backend_is_ended() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("helper.pid");
        // The backend exits at SIGTERM at once; its helper ignores SIGTERM.
        let backend = script(
            tmp.path(),
            "stubborn.cgi",
            &format!(
                "sh -c 'trap \"\" TERM; echo $$ >{}; exec sleep 30' & printf 'Content-Type: text/plain\\r\\n\\r\\n'; exec sleep 30",
                pidfile.display()
            ),
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        let resp = serve(&backend, req, empty).await.unwrap();
        let helper = pid_in(&pidfile).await;
        // The client goes away: gitgate ends the backend.
        drop(resp);
        tokio::time::sleep(TERM_GRACE + Duration::from_millis(500)).await;
        for _ in 0..50 {
            if !running(helper) {
                assert_eq!(backend.wait_until_reaped().await, 0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the helper {helper} that ignores SIGTERM outlived its backend");
    }

    /// A request body whose client never sends anything more.
    struct Stalled(#[allow(dead_code)] Arc<()>);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = String;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn stdin_task_lets_go_of_the_body_when_backend_exits() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = script(
            tmp.path(),
            "early.cgi",
            "printf 'Status: 403 Forbidden\\r\\n\\r\\nno'",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::POST, "/x", None, &headers);
        let alive = Arc::new(());
        let body = serve(&backend, req, || Stalled(alive.clone()))
            .await
            .unwrap();
        assert_eq!(body.status(), StatusCode::FORBIDDEN);
        assert_eq!(body_bytes(body.into_body()).await, "no");
        for _ in 0..250 {
            if Arc::strong_count(&alive) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the stdin task still holds the request body");
    }

    #[tokio::test]
    async fn dropped_body_kills_and_reaps_backend() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = script(
            tmp.path(),
            "yes.cgi",
            "printf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' $$; exec yes",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        let mut body = serve(&backend, req, empty).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let pid: u32 = String::from_utf8_lossy(&first)
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        assert!(proc_dir.exists());
        drop(body);
        // Gone from the process table altogether: killed *and* reaped, not a zombie.
        for _ in 0..250 {
            if !proc_dir.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("backend {pid} still in the process table");
    }

    /// Whether `pid` has ended: gone from the process table, or a zombie waiting for whoever
    /// inherited it (in a container that may be a PID 1 that never reaps).
    fn ended(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn an_ended_backend_takes_what_it_started_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        // Like http-backend running upload-pack running pack-objects: a grandchild that would
        // go on working for minutes.
        let backend = script(
            tmp.path(),
            "spawns.cgi",
            "sleep 300 & printf 'Content-Type: text/plain\\r\\n\\r\\n%s %s\\n' $$ $!; exec yes",
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        let mut body = serve(&backend, req, empty).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8_lossy(&first);
        let pids: Vec<u32> = text
            .lines()
            .next()
            .unwrap()
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{text}");
        assert!(pids.iter().all(|&p| !ended(p)));
        drop(body);
        for _ in 0..250 {
            if pids.iter().all(|&p| ended(p)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<_> = pids.iter().filter(|&&p| !ended(p)).collect();
        panic!("still running after the request ended: {left:?}");
    }

    #[tokio::test]
    async fn missing_program_is_spawn_error() {
        let backend = CgiBackend::new("/nonexistent/git-http-backend".into(), "/tmp".into());
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        let err = backend.serve(req, Empty::<Bytes>::new()).await.unwrap_err();
        assert!(matches!(err, CgiError::Spawn(_)), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn body_is_send_and_static() {
        fn check<T: Body<Data = Bytes, Error = io::Error> + Send + 'static>() {}
        check::<CgiBody>();
    }
}
