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
//!   secrets, `GIT_*` overrides an operator exported for something else) never leaks in. Nor
//!   does any open file: gitgate's own are close-on-exec, and what it inherited without the flag
//!   is given it as `serve` starts (`server::keep_inherited_descriptors_from_children`).
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
//! killed. (Not so a push whose body came gzipped, which real git never sends: git
//! http-backend inflates it itself and dies at a cut or corrupt stream while receive-pack is
//! still writing, so its quarantine stays, never applied; `check` and the start name one left
//! for an hour, `repositories::stale_quarantines`.) If the child exits non-zero after its
//! headers went out, the response body ends with an error rather than a clean end of stream; and if it dies before sending headers the
//! caller gets [`CgiError::Exited`] with the exit status and the last line the child wrote to
//! stderr. Every child is waited for by a supervisor task, whichever way the request ends
//! (including the client going away and hyper dropping the body), so there are no zombies;
//! and one that has said all it had to say (its stdout closed, or the length it declared sent)
//! is given `EXIT_GRACE` to exit, then ended, so that none holds its place for good.
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
//!
//! The parts, one file each: `env` builds the child's environment (pure); `process` owns the
//! child from spawn to reaping and ends its group; `stdio` feeds the request body to stdin and
//! logs stderr; `head` finds and parses the CGI header block; `body` streams stdout as the
//! response body and lets a push whose client left finish. This file starts a request and
//! wires them together.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::patience::{Patience, Pause};
use super::progress::{Progress, Silence};
use super::stop::{StopClock, Stopped};
use crate::request_id::RequestId;
use bytes::{Bytes, BytesMut};
use hyper::body::Body;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Response};
use tokio::process::Command;
use tokio::sync::oneshot;

mod body;
mod cap;
mod damage;
mod env;
mod head;
mod process;
mod report;
pub mod repositories;
mod stdio;

pub use body::CgiBody;
pub use cap::{Asking, Busy, Full, ProcessCap};
pub use head::{is_a_final_status, parse_head, Head, MAX_HEADER_BLOCK};
pub use process::may_execute;

use body::Finishing;
use env::{cgi_env, content_length, home_dir, is_push, sanitize_path};
use head::read_head;
use process::{supervise, Counted, KillGuard, KillSwitch, Running, INPUT_CLOSED_GRACE, TERM_GRACE};
use stdio::{feed_stdin, log_stderr, Break, Feeding};

/// After the backend closed stdout (without a header block, or after its answer), or sent the
/// length it declared, how long it may take to exit before we kill it. It has nothing more to
/// say to us either way.
const EXIT_GRACE: Duration = Duration::from_secs(10);

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
    /// `[upstream] max_processes`, shared by every worker's backend; `None`: no cap.
    cap: Option<Arc<ProcessCap>>,
    /// When a stop answers the requests whose backend has not sent its headers.
    stop: Arc<StopClock>,
    /// `GIT_HTTP_MAX_REQUEST_BUFFER` for git http-backend (`[upstream]
    /// max_request_buffer_mib`); `None`: git's own default.
    max_request_buffer_mib: Option<u32>,
    /// The readiness check's look at the program, one at a time (see [`CgiBackend::ready`]).
    readiness: crate::own_thread::OneAtATime,
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
    /// The token the request came with: whose share of `[upstream] max_processes` it uses.
    pub token_id: &'a str,
    pub remote_addr: IpAddr,
    /// The request's id, in the lines the backend's stdio and a finishing push write.
    pub request_id: RequestId,
    /// Asked again once the request has waited for a place under `[upstream] max_processes`
    /// (up to 10 s, a clone's or push's `POST` longer), or for processes or descriptors to come
    /// free on this host (up to 0.5 s, a `POST` 5 s): the gate let it in before the wait, and
    /// a token revoked, an owner disabled or a grant removed meanwhile must stop it before a
    /// backend runs — the revocation's answer promised the next request is refused. `false`
    /// ends the request with [`CgiError::NoLongerAllowed`]. `None`: not asked again.
    pub still_allowed: Option<&'a dyn StillAllowed>,
}

/// Whether a request let in before it waited may still be served (see
/// [`CgiRequest::still_allowed`]): the gate's question, asked by the runner.
pub trait StillAllowed: Send + Sync {
    /// `true` if the request may still be served now.
    fn ask(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
}

impl fmt::Debug for dyn StillAllowed + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StillAllowed")
    }
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
    /// The request body broke off (or ended short of its length) before the answer went out.
    RequestBroke,
    /// Nothing of the request body came for this long, before the answer went out.
    UploadStalled(Duration),
    /// `[upstream] max_processes` backends ran for as long as the request could wait: the
    /// backend was not started.
    Busy(Busy),
    /// The server stopped before the program sent its header block; it was ended.
    Stopped,
    /// The request waited for a place, and what let it in no longer does
    /// ([`CgiRequest::still_allowed`]): no backend was started.
    NoLongerAllowed,
    /// The program failed after its header block but before any of its answer went out (it
    /// stopped reading its input and exited with an error): the why, as its body says it.
    Failed(String),
    /// As [`CgiError::Failed`], but git died on a request body it could not read (a hand-made
    /// client's garbage): the client's doing, not the backend's.
    Malformed(String),
    /// As [`CgiError::Failed`], but git http-backend refused a chunked request larger than
    /// `[upstream] max_request_buffer_mib`: this server's setting, not a failed backend.
    TooLarge(String),
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
            CgiError::Failed(why) => write!(f, "{why}, before any of its answer went out"),
            CgiError::Malformed(why) | CgiError::TooLarge(why) => write!(f, "{why}"),
            CgiError::TimedOut(after) => write!(
                f,
                "the CGI backend sent no response for {}s; it was ended",
                after.as_secs()
            ),
            CgiError::RequestBroke => f.write_str(super::BODY_BROKE),
            CgiError::UploadStalled(after) => write!(
                f,
                "the request body stopped arriving: nothing came for {}s",
                after.as_secs()
            ),
            CgiError::Busy(busy) => match busy.why {
                Full::AllInUse => write!(
                    f,
                    "all {} backend processes allowed at once (max_processes) were running for \
                     the {}s the request could wait",
                    busy.max,
                    busy.waited.as_secs()
                ),
                Full::Share { held } => write!(
                    f,
                    "its token held {held} of the {} backend processes allowed at once \
                     (max_processes), its share while other tokens waited, for the {}s the \
                     request could wait",
                    busy.max,
                    busy.waited.as_secs()
                ),
                Full::Stopping => write!(
                    f,
                    "the server stopped while the request waited for one of the {} backend \
                     processes allowed at once (max_processes), {}s, before one came free",
                    busy.max,
                    busy.waited.as_secs()
                ),
            },
            CgiError::Stopped => f.write_str(
                "the server stopped before the CGI backend sent its headers; it was ended",
            ),
            CgiError::NoLongerAllowed => f.write_str(
                "the request waited for a backend process, and its credentials or permission no \
                 longer let it in; no backend was started",
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
            CgiError::RequestBroke => "the request body was malformed or ended early",
            CgiError::UploadStalled(_) => "the request body stopped arriving",
            CgiError::Busy(_) => "the server is busy",
            CgiError::Stopped => "the server stopped before the CGI backend answered",
            CgiError::NoLongerAllowed => "the request is no longer allowed",
            CgiError::Failed(_) => "the CGI backend ended with an error before its answer",
            CgiError::Malformed(_) => "git could not read the request",
            CgiError::TooLarge(_) => "the request is larger than git http-backend takes",
        }
    }
}

impl CgiError {
    /// The backend could not be started for want of processes, file descriptors or memory
    /// (`ENOMEM`: gitgate's address-space limit, `LimitAS` or `ulimit -v`, reached by the
    /// clones under way, which git's own `cannot fork()` below counts too): the server is
    /// overloaded for now, not broken. [`CgiError::shortage`] says which.
    pub fn is_overload(&self) -> bool {
        match self {
            CgiError::Spawn(e) => {
                matches!(e.raw_os_error(), Some(EAGAIN | ENOMEM | ENFILE | EMFILE))
            }
            // git http-backend started, but could not start upload-pack or receive-pack: the
            // same shortage, one process further down.
            CgiError::Exited(why) => git_could_not_fork(why),
            _ => false,
        }
    }

    /// For an overload ([`CgiError::is_overload`]): what ran out, and the limit to raise.
    pub fn shortage(&self) -> &'static str {
        match self {
            CgiError::Spawn(e) => shortage(e.raw_os_error()),
            CgiError::Exited(why) => git_fork_shortage(why),
            _ => shortage(None),
        }
    }
}

const EAGAIN: i32 = 11;
const ENOMEM: i32 = 12;
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;

/// Pure: what ran out when a process could not start with `errno`, and the limit that gave the
/// error, for the operator to raise. Memory is the address space's limit (`RLIMIT_AS`: systemd's
/// `LimitAS=`, `ulimit -v`), which refuses a process's start with `ENOMEM`; a cgroup's
/// `MemoryMax=` refuses none (it reclaims, then its OOM killer ends a process).
pub(crate) fn shortage(errno: Option<i32>) -> &'static str {
    match errno {
        Some(EAGAIN) => {
            "processes (the process limit of gitgate's user: ulimit -u, systemd's TasksMax)"
        }
        Some(ENOMEM) => {
            "memory (gitgate's address-space limit: ulimit -v, systemd's LimitAS; or, with \
             vm.overcommit_memory = 2, the system's commit limit)"
        }
        Some(EMFILE) => {
            "file descriptors (gitgate's open-files limit: ulimit -n, systemd's LimitNOFILE)"
        }
        Some(ENFILE) => "file descriptors (the system's: fs.file-max)",
        _ => {
            "processes, file descriptors or memory (the process limit of gitgate's user, \
             TasksMax; its open-files limit, LimitNOFILE; its address-space limit, LimitAS)"
        }
    }
}

/// Pure: [`shortage`] by git's words of a process it could not start (`error: cannot fork()
/// for upload-pack: Resource temporarily unavailable`, the C library's words for the error).
pub(super) fn git_fork_shortage(said: &str) -> &'static str {
    let errno = [
        ("Resource temporarily unavailable", EAGAIN),
        ("Cannot allocate memory", ENOMEM),
        ("Too many open files in system", ENFILE),
        ("Too many open files", EMFILE),
    ]
    .into_iter()
    .find(|(words, _)| said.contains(words))
    .map(|(_, errno)| errno);
    shortage(errno)
}

/// Whether git's words say it could not start a process of its own (`error: cannot fork() for
/// upload-pack: Resource temporarily unavailable`): the process limit of gitgate's user
/// (`ulimit -u`, systemd's `TasksMax`) or its address-space limit (`Cannot allocate memory`),
/// a capacity problem rather than a broken backend ([`git_fork_shortage`] says which).
pub(super) fn git_could_not_fork(said: &str) -> bool {
    said.contains("cannot fork()")
}

impl std::error::Error for CgiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CgiError::Spawn(e) => Some(e),
            CgiError::BadHeaders(_)
            | CgiError::Exited(_)
            | CgiError::TimedOut(_)
            | CgiError::RequestBroke
            | CgiError::UploadStalled(_)
            | CgiError::Busy(_)
            | CgiError::Stopped
            | CgiError::NoLongerAllowed
            | CgiError::Failed(_)
            | CgiError::Malformed(_)
            | CgiError::TooLarge(_) => None,
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
/// both do, or when git could pass over `team/app.git` to `team/app.git.git` (git's test of a
/// repository reads `HEAD`'s contents too, which gitgate's does not: a `team/app.git` that
/// gitgate takes for a repository and git does not would send it on to the next name).
///
/// The repository gitgate authorised must be the one git serves, so nothing on the way may
/// lead git elsewhere: git follows a symbolic link, and a file in a repository's place (or in
/// place of a working tree's `.git`) that says `gitdir: <path>`. Every folder from the project
/// root down and every name git tries must be a real directory ([`NotServed::Indirect`]
/// otherwise); and a repository inside another's folder is not served ([`NotServed::Nested`]):
/// whoever can push to a working tree can write any file in it, a whole repository with
/// hooks (which git would run) or a gitfile into another project included — git's own
/// `safe.bareRepository` guards against such embedded repositories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoDir {
    /// `team/app.git` (the usual bare repository).
    WithGit,
    /// `team/app` (a bare repository without the suffix, or a working tree with `.git`).
    Plain,
    /// None that may be served: the backend is not started.
    NotServed(NotServed),
}

/// Why no directory of a repository is given to the backend (see [`RepoDir`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotServed {
    /// Neither name is a repository: answered as no such repository.
    Missing,
    /// Both are: refused, since gitgate cannot tell which one a grant means.
    Both,
    /// `team/app.git` and, beside it, something named `team/app.git.git`: refused, since git
    /// tries that name after `team/app.git` when it does not take `team/app.git` for a
    /// repository, and gitgate never grants it.
    Doubled,
    /// A symbolic link on the way, or a symbolic link or a file (a gitfile) at a name git tries:
    /// refused, since git would follow it to a repository gitgate did not authorise.
    Indirect,
    /// Inside the folder of another repository (a working tree, or a repository's own folder):
    /// refused (see [`RepoDir`]).
    Nested,
    /// The project root itself is not there (or not a folder): no repository can be served.
    RootUnavailable,
    /// A folder on the way (the project root, a project's folder, the repository's own) that
    /// gitgate's user may not look into: a permission the server's administrator got wrong,
    /// never "not found" (the repository may well be there).
    Unreadable,
}

/// What is at one of the names git tries for a repository, not following links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// A directory that is a repository as git would take it.
    Repository,
    /// A directory that is no repository (a folder of repositories, say).
    Folder,
    /// A symbolic link, a file (which git reads as a gitfile), or a working tree whose `.git`
    /// is one of those.
    Indirect,
    /// Nothing can be told: looking was refused (`EACCES`, a folder on the way without `x`
    /// for gitgate's user).
    Unreadable,
}

impl RepoDir {
    /// Pure: from what is at `<root>/<repo>.git` and `<root>/<repo>`, and whether anything is
    /// named `<root>/<repo>.git.git` (only `<repo>.git` can lead git there: asked for `<repo>`,
    /// git tries `<repo>/.git`, `<repo>`, `<repo>.git/.git` and `<repo>.git`).
    ///
    /// A link or a file at `<repo>` beside the repository `<repo>.git` matters not: given
    /// `<repo>.git`, git never looks at `<repo>`. The other way round it does: given `<repo>`,
    /// git goes on to `<repo>.git` when it does not take `<repo>` for a repository (its test
    /// reads `HEAD`'s contents, gitgate's does not), as with [`NotServed::Doubled`].
    pub fn of(with_git: Found, plain: Found, doubled: bool) -> RepoDir {
        match (with_git, plain) {
            (Found::Repository, Found::Repository) => RepoDir::NotServed(NotServed::Both),
            (Found::Repository, _) if doubled => RepoDir::NotServed(NotServed::Doubled),
            (Found::Repository, _) => RepoDir::WithGit,
            (Found::Indirect, _) | (_, Found::Indirect) => RepoDir::NotServed(NotServed::Indirect),
            // Past `<repo>`, git would go on only to `<repo>.git`, which it could not read
            // either: served as git serves it.
            (_, Found::Repository) => RepoDir::Plain,
            // No repository seen, and one may be where gitgate may not look: not "not found".
            (Found::Unreadable, _) | (_, Found::Unreadable) => {
                RepoDir::NotServed(NotServed::Unreadable)
            }
            _ => RepoDir::NotServed(NotServed::Missing),
        }
    }
}

/// Which directory under `project_root` answers to `repo` (see [`CgiBackend::repo_dir`]).
fn repo_dir_under(project_root: &Path, repo: &str) -> RepoDir {
    match repo_dir_found(project_root, repo) {
        // Every repository is missing when the project root is (storage not mounted, a
        // folder moved): the server's fault, not a repository the client got wrong.
        RepoDir::NotServed(NotServed::Missing) if !project_root.is_dir() => {
            RepoDir::NotServed(NotServed::RootUnavailable)
        }
        // A path below a repository's folder where git would find no repository — nothing
        // (a typo), or a plain folder such as a bare repository's own `objects`: not
        // there, rather than a nested repository that does not exist.
        RepoDir::NotServed(NotServed::Nested) if !a_repository_could_be_at(project_root, repo) => {
            RepoDir::NotServed(NotServed::Missing)
        }
        found => found,
    }
}

/// Whether git could take what is at either name it tries for `repo` as a repository: one,
/// or a link, a file (a gitfile) or a working tree whose `.git` leads elsewhere (not
/// following links).
fn a_repository_could_be_at(project_root: &Path, repo: &str) -> bool {
    let plain = project_root.join(repo);
    let mut with_git = plain.clone().into_os_string();
    with_git.push(".git");
    let git_could = |at: &Path| matches!(found_at(at), Found::Repository | Found::Indirect);
    git_could(&plain) || git_could(Path::new(&with_git))
}

/// What is on disk for `repo`, before `repo_dir_under` tells a missing repository from a
/// missing root or a plain folder below a repository: for the CLI, which notes a grant or
/// token for a repository the backend would not serve — also one inside another repository's
/// folder that is not there yet, as it never will be served.
pub fn repo_dir_found(project_root: &Path, repo: &str) -> RepoDir {
    let mut plain = project_root.to_path_buf();
    let (name, folders) = match repo.rsplit_once('/') {
        Some((folders, name)) => (name, Some(folders)),
        None => (repo, None),
    };
    for folder in folders.into_iter().flat_map(|f| f.split('/')) {
        plain.push(folder);
        let why = match found_at(&plain) {
            Found::Folder => continue,
            Found::Nothing => NotServed::Missing,
            Found::Unreadable => NotServed::Unreadable,
            Found::Repository => NotServed::Nested,
            // A link, a file (git goes no further), or a working tree whose `.git` leads
            // elsewhere.
            Found::Indirect => match std::fs::symlink_metadata(&plain) {
                Ok(meta) if meta.is_dir() => NotServed::Nested,
                Ok(meta) if meta.file_type().is_symlink() => NotServed::Indirect,
                _ => NotServed::Missing,
            },
        };
        return RepoDir::NotServed(why);
    }
    plain.push(name);
    let mut with_git = plain.clone().into_os_string();
    with_git.push(".git");
    let with_git_found = found_at(Path::new(&with_git));
    // Any kind of file counts: git follows a gitfile or a symlink there as well.
    let doubled = with_git_found == Found::Repository && {
        with_git.push(".git");
        std::fs::symlink_metadata(&with_git).is_ok()
    };
    RepoDir::of(with_git_found, found_at(&plain), doubled)
}

/// What is at `path` (see [`Found`]): a working tree (with `.git`, a directory), or a bare
/// repository (`HEAD`, `objects/` and `refs/`, which git's own `is_git_directory` asks for).
fn found_at(path: &Path) -> Found {
    let refused = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
    match std::fs::symlink_metadata(path) {
        Err(e) if refused(&e) => Found::Unreadable,
        Err(_) => Found::Nothing,
        Ok(meta) if !spelled_as_listed(path, &meta) => Found::Nothing,
        Ok(meta) if !meta.is_dir() => Found::Indirect,
        Ok(_) => match std::fs::symlink_metadata(path.join(".git")) {
            Ok(dot_git) if dot_git.is_dir() => Found::Repository,
            Ok(_) => Found::Indirect,
            Err(e) if refused(&e) => Found::Unreadable,
            Err(_)
                if has_a_head(path)
                    && path.join("objects").is_dir()
                    && path.join("refs").is_dir() =>
            {
                Found::Repository
            }
            Err(_) => Found::Folder,
        },
    }
}

/// Whether `path`'s last name is the one its folder lists, not another spelling of it. On a
/// file system that folds case (ext4 or tmpfs folders with `casefold`, CIFS, vfat) `Team`
/// finds the folder `team`; grants and scoped tokens compare names exactly, so a grant on a
/// project `TEAM` would open `team`'s repositories there. The cost on every other file
/// system is one `lstat` of the name with its letters' case swapped, which finds nothing (or
/// another file); only where it finds the same file is the folder read for the exact name.
fn spelled_as_listed(path: &Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let Some(name) = path.file_name() else {
        return true;
    };
    let Some(swapped) = case_swapped(name.as_encoded_bytes()) else {
        return true;
    };
    let swapped = path.with_file_name(std::ffi::OsStr::from_bytes(&swapped));
    let same_file =
        |other: &std::fs::Metadata| other.dev() == meta.dev() && other.ino() == meta.ino();
    match std::fs::symlink_metadata(swapped) {
        Ok(other) if same_file(&other) => path
            .parent()
            .and_then(|folder| std::fs::read_dir(folder).ok())
            .is_some_and(|mut names| names.any(|e| e.is_ok_and(|e| e.file_name() == name))),
        _ => true,
    }
}

/// Pure: `name` with the case of its ASCII letters swapped, or `None` when it has none (no
/// other spelling to try). Names gitgate serves are ASCII (see `git::valid_segment`).
fn case_swapped(name: &[u8]) -> Option<Vec<u8>> {
    name.iter().any(u8::is_ascii_alphabetic).then(|| {
        name.iter()
            .map(|b| match b {
                b'a'..=b'z' => b.to_ascii_uppercase(),
                b'A'..=b'Z' => b.to_ascii_lowercase(),
                _ => *b,
            })
            .collect()
    })
}

/// Whether `repo` has a `HEAD` as git takes one: a file, or (`core.preferSymlinkRefs`) a
/// symbolic link into `refs/`, which need not lead to a file (the ref may be packed).
fn has_a_head(repo: &Path) -> bool {
    let head = repo.join("HEAD");
    match std::fs::symlink_metadata(&head) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::read_link(&head).is_ok_and(|target| target.starts_with("refs/"))
        }
        Ok(_) => head.is_file(),
        Err(_) => false,
    }
}

impl CgiBackend {
    /// Whether the program is `git http-backend` itself (by its file name, or by the name of
    /// what a symbolic link to it leads to), not a wrapper or another CGI: only then does a
    /// bare answer mean what git http-backend means by it. Asked only of answers without a
    /// body, so the path is resolved then rather than kept.
    pub fn is_git_http_backend(&self) -> bool {
        let named = |path: &Path| {
            path.file_name()
                .is_some_and(|name| name == "git-http-backend")
        };
        named(&self.program) || std::fs::canonicalize(&self.program).is_ok_and(|real| named(&real))
    }

    /// The request's `PATH_INFO`: its repository spelled as the directory that answers to it
    /// (see [`RepoDir`]); what else was found when none can be given.
    pub fn path_info(&self, git_req: &crate::git::GitRequest) -> Result<String, NotServed> {
        match self.repo_dir(git_req.repo.as_str()) {
            RepoDir::WithGit => Ok(git_req.backend_path_spelled(true)),
            RepoDir::Plain => Ok(git_req.backend_path_spelled(false)),
            RepoDir::NotServed(why) => Err(why),
        }
    }

    /// Which directory answers to `repo` (a few `lstat`s per folder; see [`RepoDir`]). Only a
    /// directory that looks like a repository counts: `team/app/` may also be a folder of
    /// repositories (`team/app/lib.git`, subgroups) beside the repository `team/app.git`.
    pub fn repo_dir(&self, repo: &str) -> RepoDir {
        repo_dir_under(&self.project_root, repo)
    }

    /// `program` is the CGI executable (e.g. `/usr/lib/git-core/git-http-backend`);
    /// `project_root` the directory the repositories live under (`GIT_PROJECT_ROOT`).
    pub fn new(program: PathBuf, project_root: PathBuf) -> Self {
        CgiBackend {
            program,
            project_root,
            head_timeout: Duration::from_secs(300),
            running: Arc::new(Running::default()),
            cap: None,
            stop: Arc::default(),
            max_request_buffer_mib: None,
            readiness: Default::default(),
        }
    }

    /// The most of a chunked request body git http-backend takes, in MiB (its
    /// `GIT_HTTP_MAX_REQUEST_BUFFER`, 10 MiB by default): a fetch whose negotiation is larger
    /// (a mirror with hundreds of thousands of refs, whose client chunks its `want`s) fails
    /// with `request was larger than our maximum size` below it.
    pub fn with_max_request_buffer(mut self, mib: Option<u32>) -> Self {
        self.max_request_buffer_mib = mib;
        self
    }

    /// Starts no process while `cap`'s places are all taken: the request waits for one, then
    /// is refused as [`CgiError::Busy`] (see [`ProcessCap`]). One cap is given to every
    /// worker's backend, so that it bounds the server.
    pub fn with_process_cap(mut self, cap: Arc<ProcessCap>) -> Self {
        self.cap = Some(cap);
        self
    }

    /// A backend that sends no headers for `timeout` while the request body does not move
    /// either is stuck: it is ended and the client gets a 504 (default 300 s; the server uses a
    /// little under `[server] idle_timeout`, `server::answer_deadline`). Without it a request whose backend hangs before answering
    /// would hold its connection, its in-flight place and the process for as long as the
    /// client kept the connection alive — with HTTP/2 PINGs, for good.
    pub fn with_head_timeout(mut self, timeout: Duration) -> Self {
        self.head_timeout = timeout;
        self
    }

    /// Readiness: the program is still there and the project root can be read.
    ///
    /// On a thread of its own, not tokio's blocking pool (as `tokio::fs` would), whose first
    /// thread failing to start (a process limit reached) is a panic: the start's readiness
    /// check then ended the process right after it said it was listening (seen with
    /// `RLIMIT_NPROC` at 6, `tests/cli.rs` `no_process_limit_makes_the_start_panic`). One at a
    /// time, waited for `CHECK_WITHIN`: a look stuck on a hung file system (the repositories on
    /// NFS) is "not ready", and no other thread is started for it until it returns.
    pub async fn ready(&self) -> Result<(), String> {
        let program = self.program.clone();
        let project_root = self.project_root.clone();
        self.readiness
            .check(
                "gitgate-ready",
                "look at the CGI program",
                crate::own_thread::CHECK_WITHIN,
                move || ready_now(&program, &project_root),
            )
            .await
    }

    /// Runs the backend for one authorised request.
    ///
    /// Returns once the backend has sent its header block and the request body has been fed to
    /// it (or the backend says more than its head: see `CgiBody::hold_until_fed`); the body
    /// then streams from the running process. The request body is fed to the backend
    /// concurrently, so a backend that answers before reading all of its input (an error, say)
    /// is fine.
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
        // The head timeout counts from here, a wait for a place included: the client
        // connection's idle clock has run since the request came, and must not close it
        // before the backend's `504`.
        let uploading = Progress::new();
        // Taken before the process starts, given back once it is reaped (`Counted`).
        let place = match &self.cap {
            Some(cap) => {
                let asking = match *req.method {
                    Method::GET if req.path_info.ends_with("/info/refs") => Asking::Advertisement,
                    _ => Asking::Other,
                };
                Some(
                    cap.place(asking, req.token_id)
                        .await
                        .map_err(CgiError::Busy)?,
                )
            }
            None => None,
        };
        if place.as_ref().is_some_and(cap::Place::waited) {
            if let Some(still_allowed) = req.still_allowed {
                if !still_allowed.ask().await {
                    return Err(CgiError::NoLongerAllowed);
                }
            }
        }
        let mut child = self.spawn_with_patience(&req).await?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // From here on the supervisor owns the child and reaps it however the request ends; the
        // guard kills it if this future is dropped before the response is handed over.
        let kill = KillSwitch::new();
        let guard = KillGuard::new(kill.clone(), "request abandoned before the response");
        let stderr_task =
            tokio::spawn(log_stderr(stderr, req.path_info.to_owned(), req.request_id));
        let (exit_tx, mut exit_rx) = oneshot::channel();
        let counted = Counted::new(self.running.clone(), place);
        tokio::spawn(supervise(
            child,
            kill.clone(),
            stderr_task,
            exit_tx,
            counted,
            push,
        ));
        // What the backend is told the body's length is (`CONTENT_LENGTH`): the stdin task holds
        // the body to it.
        let promised = content_length(req.headers);
        let (fed, all_fed) = oneshot::channel();
        tokio::spawn(feed_stdin(
            body,
            stdin,
            Feeding {
                promised,
                on_break: if push { Break::CloseStdin } else { Break::Kill },
                request_id: req.request_id,
            },
            kill.clone(),
            uploading.clone(),
            fed,
        ));

        // The headers, within the head timeout counted from the body's last frame.
        let head = {
            let reading = read_head(&mut stdout);
            tokio::pin!(reading);
            // At a stop, headers that have not come before the cut are answered for by gitgate.
            let stop = self.stop.due();
            tokio::pin!(stop);
            loop {
                let wait = self.head_timeout.saturating_sub(uploading.idle());
                tokio::select! {
                    biased;
                    head = &mut reading => break head,
                    Stopped = &mut stop => {
                        kill.kill("the server stopped before its headers came");
                        return Err(CgiError::Stopped);
                    }
                    _ = tokio::time::sleep(wait) => {
                        if uploading.idle() >= self.head_timeout {
                            // A backend that reads the whole body before its head (not git
                            // http-backend) waits for a client that stopped sending: the
                            // client's `408`, not the backend's failure.
                            if uploading.waiting_for_client() {
                                kill.kill("the request body stopped arriving");
                                return Err(CgiError::UploadStalled(self.head_timeout));
                            }
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
                    // git's first `error:` (`cannot fork() ...`) is the cause, whatever came last.
                    Ok(info) => match &info.first_error {
                        Some(first) if git_could_not_fork(first) => format!("{info}; {first:?}"),
                        _ => info.to_string(),
                    },
                    Err(_) => "the process supervisor went away".to_owned(),
                };
                return Err(CgiError::Exited(why));
            }
            Err(e) => return Err(e), // the guard kills the child; the supervisor reaps it
        };

        let mut head = parse_head(&head)?;
        crate::upstream::headers::private_to_shared_caches(&mut head.headers);
        // A `204` has no body, whatever length it says (which is not passed on).
        let declared = if head.status == hyper::StatusCode::NO_CONTENT {
            crate::upstream::headers::no_length_in_a_204(head.status, &mut head.headers);
            Some(0)
        } else {
            head.headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        };
        let label = format!("{} (user {})", req.path_info, req.remote_user);
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
                label: label.clone(),
                request_id: req.request_id,
                said: Default::default(),
                body_broke: false,
            }),
            silence: Silence::new(self.head_timeout),
            uploading,
            early: None,
            answered: false,
            tail: Vec::new(),
            label,
            request_id: req.request_id,
            repository: (*req.method == Method::POST)
                .then(|| damage::upload_pack_repository(&self.project_root, req.path_info))
                .flatten(),
            checking: None,
            fed_whole: false,
        };
        if declared == Some(0) {
            body.declared_length_sent();
        }
        // At a stop, a body still being fed (a push's pack going up) when answers are due: its
        // answer has not gone out (its head is held until then), so it is answered for, as a
        // head that had not come is, rather than cut off — git would advise a bigger
        // `http.postBuffer`. Its input is closed: receive-pack fails and removes its quarantine.
        let held = {
            let stop = self.stop.due();
            tokio::pin!(stop);
            tokio::select! {
                biased;
                held = body.hold_until_fed(all_fed) => Some(held),
                Stopped = &mut stop => None,
            }
        };
        let Some(held) = held else {
            kill.kill("the server stopped before the request body was fed to it");
            body.ended_by_gitgate();
            return Err(CgiError::Stopped);
        };
        if let Err(e) = held {
            if matches!(e, CgiError::UploadStalled(_)) {
                // Answered `408`: what the client may still send must not reach the backend (a
                // push would be applied after all). Its input is closed, and a push fails and
                // cleans up; not let finish as one whose client left.
                kill.kill("the request body stopped arriving");
                body.ended_by_gitgate();
            }
            return Err(e);
        }
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    /// The backend started, tried again for a little while when this process is out of
    /// processes, file descriptors or memory (see [`CgiError::is_overload`] and
    /// [`super::patience`]).
    async fn spawn_with_patience(
        &self,
        req: &CgiRequest<'_>,
    ) -> Result<tokio::process::Child, CgiError> {
        with_patience(Patience::for_method(req.method), req.still_allowed, || {
            self.command(req).spawn().map_err(CgiError::Spawn)
        })
        .await
    }

    /// The child's command line and its complete environment.
    fn command(&self, req: &CgiRequest<'_>) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .envs(cgi_env(req, &self.project_root))
            .envs(
                self.max_request_buffer_mib
                    .map(|mib| ("GIT_HTTP_MAX_REQUEST_BUFFER", format!("{mib}m"))),
            )
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

/// `start` tried until it gives something other than an overload (see
/// [`CgiError::is_overload`]), with `patience`'s pauses; the gate is asked after each whether
/// the request may still be served ([`CgiError::NoLongerAllowed`] when it says no), as after a
/// wait for a place under `[upstream] max_processes`.
async fn with_patience<T>(
    mut patience: Patience,
    still_allowed: Option<&dyn StillAllowed>,
    mut start: impl FnMut() -> Result<T, CgiError>,
) -> Result<T, CgiError> {
    loop {
        match start() {
            Err(e) if e.is_overload() => match patience.pause(still_allowed).await {
                Pause::TryAgain => {}
                Pause::Spent => return Err(e),
                Pause::NoLongerAllowed => return Err(CgiError::NoLongerAllowed),
            },
            started_or_failed => return started_or_failed,
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

    /// At shutdown, as the drain begins: requests waiting for a place under the process cap,
    /// or for their backend's headers, are answered before `grace` ends (see
    /// [`ProcessCap::stopping`] and [`StopClock`]); how many wait now.
    pub fn stopping(&self, grace: Duration) -> usize {
        self.cap.as_ref().map_or(0, |cap| cap.stopping(grace)) + self.stop.stopping(grace)
    }

    /// How many requests the stop answered so (see [`ProcessCap::answered_at_stop`]), and
    /// of those whose backend had not sent its headers (see [`StopClock`]).
    pub fn answered_at_stop(&self) -> usize {
        self.cap.as_ref().map_or(0, |cap| cap.answered_at_stop()) + self.stop.answered()
    }

    /// At shutdown, once the grace period is over: pushes finishing without their client are
    /// ended (SIGTERM, then SIGKILL for their group), and one whose client leaves from now on
    /// is ended at once.
    pub fn stop_finishing(&self) {
        self.running.stopping.send_replace(true);
    }

    /// Waits until every process this backend started has been reaped — those of requests cut
    /// off at shutdown get SIGTERM, then SIGKILL for their whole group after `TERM_GRACE`
    /// (2 s), a push a second with its input closed before that (`INPUT_CLOSED_GRACE`) — or
    /// until a little longer than that has passed. A worker calls this before its runtime ends:
    /// the runtime's end would drop the supervisors, and with them the SIGKILL for the group
    /// (tokio would kill only the group's leader). A push's outcome to be told is waited for
    /// too (see `body::drain`). Returns how many are still running.
    pub async fn wait_until_reaped(&self) -> usize {
        let running = &self.running;
        let deadline =
            tokio::time::Instant::now() + INPUT_CLOSED_GRACE + TERM_GRACE + Duration::from_secs(1);
        loop {
            let reaped = running.all_reaped.notified();
            tokio::pin!(reaped);
            reaped.as_mut().enable();
            let count = running.count.load(Ordering::Acquire);
            // A push ended at the stop may have been applied as it ended: said before the exit.
            if count == 0 && running.telling.load(Ordering::Acquire) == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, reaped).await.is_err() {
                return running.count.load(Ordering::Acquire);
            }
        }
    }
}

/// [`CgiBackend::ready`]'s checks, on the thread that runs them.
fn ready_now(program: &Path, project_root: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(program)
        .map_err(|e| format!("CGI program {}: {e}", program.display()))?;
    if !meta.is_file() {
        return Err(format!("CGI program {} is not a file", program.display()));
    }
    may_execute(program).map_err(|e| format!("CGI program {}: {e}", program.display()))?;
    std::fs::read_dir(project_root)
        .map(drop)
        .map_err(|e| format!("project root {}: {e}", project_root.display()))
}

#[cfg(test)]
mod tests;
