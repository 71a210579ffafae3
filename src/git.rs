//! Request classification: *what* a Git HTTP request is, never *who* may do it.
//!
//! [`classify`] turns a method, a raw (still percent-encoded) path and a raw query into a
//! [`GitRequest`]: the repository, whether the operation reads or writes, and the canonical path
//! and query to hand the backend. Deciding whether the caller may do that is `policy`'s job.
//!
//! Why this module is strict:
//! - **Default deny.** Only the endpoints of Git's smart and dumb HTTP protocols are recognised;
//!   anything else is [`Rejection::NotFound`] and is never forwarded. An endpoint we do not know
//!   is an endpoint whose access level we cannot know.
//! - **The repo we authorise is the repo the backend serves.** The repository path is decoded
//!   once, every segment is checked against a small allowlist (so there is nothing left that a
//!   backend could decode, normalise or interpret differently: no `..`, `/`, `\`, NUL, `%`), and
//!   the backend path and query are *rebuilt* from the validated parts rather than copied from
//!   the input.
//! - **The suffix is matched before decoding.** `team/app%2Finfo%2Frefs` is one (invalid)
//!   segment, never a repository `team/app` followed by `info/refs`.
//!
//! Rejections carry a one-line reason meant for the person running `git`.

use std::borrow::Cow;
use std::fmt;

use crate::permission::Access;

/// Characters allowed in a repository path segment besides ASCII letters and digits.
///
/// None of them needs percent-encoding in a path, so the decoded segment is also its canonical
/// encoded form.
const SEGMENT_PUNCTUATION: &[u8] = b"._-+~";

/// A normalised repository path such as `team/app`: at least two segments, no leading or
/// trailing slash, no `.git` suffix, every segment passing [`valid_segment`].
///
/// Only [`RepoPath::parse`] and [`classify`] build one, so holding a `RepoPath` means the path
/// is safe to compare against grants and to hand to a backend.
///
/// Shared rather than copied ([`RepoPath::shared`]): every request's log line holds its
/// repository beside the request's own, refused or not.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoPath(std::sync::Arc<str>);

impl RepoPath {
    /// Parse operator input such as `team/app` or `team/app.git` (not percent-decoded).
    ///
    /// The same rules as for request paths apply: at least two segments, each valid, and one
    /// optional `.git` suffix on the last segment, which is dropped.
    pub fn parse(s: &str) -> Result<RepoPath, String> {
        let segments: Vec<&str> = s.split('/').collect();
        if segments.len() < 2 {
            return Err(format!(
                "repository path '{s}' needs a project and a repository name, e.g. 'team/app'"
            ));
        }
        for segment in &segments {
            if !valid_segment(segment) {
                return Err(format!(
                    "repository path '{s}' has an invalid segment '{segment}': segments must be \
                     non-empty, must not start with '.', and may contain only letters, digits \
                     and . _ - + ~ (write 'team/app', without leading or trailing '/')"
                ));
            }
        }
        RepoPath::from_joined(s).map_err(|reason| format!("repository path '{s}': {reason}"))
    }

    /// Build from validated segments joined by `/`; strips one `.git` from the last one.
    fn from_joined(joined: &str) -> Result<RepoPath, String> {
        // By byte, as `pieces` splits (see there).
        let Some(slash) = joined.bytes().rposition(|b| b == b'/') else {
            return Err("a repository path needs a project and a repository name".into());
        };
        let last = &joined[slash + 1..];
        let repo = match last.strip_suffix(".git") {
            Some(stripped) if stripped.is_empty() || stripped.ends_with(".git") => {
                return Err(format!("'{last}' is not a valid repository name"));
            }
            Some(_) => &joined[..joined.len() - ".git".len()],
            None => joined,
        };
        Ok(RepoPath(repo.into()))
    }

    /// The normalised path, e.g. `team/app`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The project: the first segment (`team` in `team/app`).
    pub fn project(&self) -> &str {
        // A RepoPath always has at least two segments, so there is a '/'; fall back to the whole
        // path rather than panic if that invariant were ever broken.
        split_once_at(&self.0, b'/').map_or(&self.0, |(p, _)| p)
    }

    /// The normalised path, shared with this one (no copy).
    pub fn shared(&self) -> std::sync::Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `s` is an acceptable (already decoded) path segment or project key.
///
/// Non-empty, not starting with `.` (which excludes `.` and `..` and hidden files), and only
/// `[A-Za-z0-9._+~-]`. This is an allowlist on purpose: it fails closed on anything a backend
/// or filesystem might treat specially (`/`, `\`, NUL, control characters, `%`, non-ASCII).
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || SEGMENT_PUNCTUATION.contains(&b))
}

/// A Git smart-HTTP service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// Fetch and clone.
    UploadPack,
    /// Push.
    ReceivePack,
    /// `git archive --remote`.
    UploadArchive,
}

impl Service {
    /// The service name as it appears on the wire, e.g. `git-upload-pack`.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
            Service::UploadArchive => "git-upload-archive",
        }
    }

    /// The canonical query of its `info/refs` advertisement, e.g. `service=git-upload-pack`.
    pub fn advertisement_query(self) -> &'static str {
        match self {
            Service::UploadPack => "service=git-upload-pack",
            Service::ReceivePack => "service=git-receive-pack",
            Service::UploadArchive => "service=git-upload-archive",
        }
    }

    /// What the service needs: only `receive-pack` writes.
    pub fn access(self) -> Access {
        match self {
            Service::UploadPack | Service::UploadArchive => Access::Read,
            Service::ReceivePack => Access::Write,
        }
    }

    fn from_name(name: &[u8]) -> Option<Service> {
        match name {
            b"git-upload-pack" => Some(Service::UploadPack),
            b"git-receive-pack" => Some(Service::ReceivePack),
            b"git-upload-archive" => Some(Service::UploadArchive),
            _ => None,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of Git HTTP exchange a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET <repo>/info/refs?service=...`: the ref advertisement (and v2 capabilities).
    Advertise(Service),
    /// `POST <repo>/<service>`: the pack exchange itself.
    Rpc(Service),
    /// A dumb-HTTP file read (`GET`/`HEAD`).
    Dumb,
}

/// A classified Git request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRequest {
    /// The repository, normalised (`team/app`).
    pub repo: RepoPath,
    /// Whether the request reads or writes.
    pub access: Access,
    /// What kind of exchange it is.
    pub operation: Operation,
    /// Canonical path for the backend, relative to the git root, e.g. `/team/app.git/info/refs`.
    /// Rebuilt from the validated segments (keeping the client's `.git`), never the raw input.
    pub backend_path: String,
    /// Canonical query for the backend: `Some("service=...")` for advertisements, else `None`.
    pub query: Option<Cow<'static, str>>,
}

impl GitRequest {
    /// [`GitRequest::backend_path`] with the repository spelled `team/app.git` (`with_git`) or
    /// `team/app`, whichever the client wrote: the embedded backend names the one directory
    /// that answers to the repository (see `upstream::cgi::RepoDir`).
    pub fn backend_path_spelled(&self, with_git: bool) -> String {
        let repo = self.repo.as_str();
        // `/<repo>[.git]/<suffix>`: the repository is the decoded path without its `.git`.
        let after = &self.backend_path[1 + repo.len()..];
        let suffix = after.strip_prefix(".git").unwrap_or(after);
        let mut path = String::with_capacity(self.backend_path.len() + 4);
        path.push('/');
        path.push_str(repo);
        if with_git {
            path.push_str(".git");
        }
        path.push_str(suffix);
        path
    }
}

/// Why a request is not a Git request gitgate will forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not a Git endpoint we serve (→ 404).
    NotFound(String),
    /// A Git endpoint, but the path or query cannot be resolved safely (→ 400).
    BadRequest(String),
    /// A known Git endpoint called with the wrong method (→ 405, with the methods it takes
    /// in `Allow`, as RFC 9110 requires).
    MethodNotAllowed {
        message: String,
        allow: &'static str,
    },
    /// A Git LFS API path (`info/lfs/...` after a repository, whatever follows it, a git
    /// endpoint's name too, and its letters percent-encoded or not), which gitgate neither
    /// serves nor passes on (→ 404, in the LFS API's own error form, so that the LFS client
    /// prints the reason).
    LfsUnsupported,
}

/// Why an LFS request is refused.
const LFS_UNSUPPORTED: &str = "Git LFS is not supported yet";

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotFound(r)
            | Rejection::BadRequest(r)
            | Rejection::MethodNotAllowed { message: r, .. } => f.write_str(r),
            Rejection::LfsUnsupported => f.write_str(LFS_UNSUPPORTED),
        }
    }
}

impl std::error::Error for Rejection {}

/// The endpoint named by the tail of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    /// `info/refs`: smart advertisement with `?service=`, dumb ref list without.
    InfoRefs,
    /// `git-upload-pack` etc.: POST only.
    Rpc(Service),
    /// A dumb-HTTP file: GET/HEAD only.
    DumbFile,
    /// `info/lfs/...`.
    Lfs,
}

/// Classify one request.
///
/// `raw_path` and `raw_query` are as received (percent-encoded); `git_prefix` is `/` or a
/// normalised prefix like `/scm` (leading `/`, no trailing `/`). Methods are case-sensitive, as
/// HTTP says: `get` is not `GET`.
pub fn classify(
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    git_prefix: &str,
) -> Result<GitRequest, Rejection> {
    if !raw_path.starts_with('/') {
        // `OPTIONS *` (asterisk form) asks about the server itself.
        return Err(Rejection::NotFound(format!(
            "'{raw_path}' names no repository: gitgate answers only git requests"
        )));
    }
    let rest = strip_prefix(raw_path, git_prefix).ok_or_else(|| {
        Rejection::NotFound(format!(
            "'{raw_path}' is not under the git prefix '{git_prefix}'"
        ))
    })?;
    if has_a_backslash(rest) {
        return Err(Rejection::BadRequest(
            "backslashes are not allowed in repository paths".into(),
        ));
    }

    // A path has a handful of segments: they are split onto the stack (into a Vec only past
    // [`SEGMENTS_ON_STACK`]), as this runs for every request.
    let mut on_stack = [""; SEGMENTS_ON_STACK];
    let on_heap: Vec<&str>;
    let mut parts = pieces(rest, b'/');
    let mut n = 0;
    for (slot, part) in on_stack.iter_mut().zip(parts.by_ref()) {
        *slot = part;
        n += 1;
    }
    let segments: &[&str] = if n == SEGMENTS_ON_STACK && parts.next().is_some() {
        on_heap = pieces(rest, b'/').collect();
        &on_heap
    } else {
        &on_stack[..n]
    };
    if rest.is_empty() {
        return Err(Rejection::NotFound(
            "no repository in the path: expected <project>/<repo>/... under the git prefix".into(),
        ));
    }
    let (endpoint, suffix_len) = match_suffix(segments).ok_or_else(not_a_git_endpoint)?;
    if endpoint == Endpoint::Lfs {
        return Err(Rejection::LfsUnsupported);
    }
    let split = segments
        .len()
        .checked_sub(suffix_len)
        .ok_or_else(not_a_git_endpoint)?;
    let (repo_raw, suffix) = segments.split_at(split);
    if repo_raw.len() < 2 {
        return Err(Rejection::NotFound(
            "no repository in the path: expected <project>/<repo>/... under the git prefix".into(),
        ));
    }

    // The canonical backend path is built in one string: each repository segment decoded and
    // checked, then the suffix, which matched exact, allowlisted ASCII patterns and so is
    // already canonical. The repository is the same segments without the path's `.git`.
    let mut backend_path = String::with_capacity(rest.len() + 1);
    for raw in repo_raw {
        backend_path.push('/');
        push_decoded_segment(raw, &mut backend_path)?;
    }
    let repo = RepoPath::from_joined(&backend_path[1..]).map_err(Rejection::BadRequest)?;
    if under_info_lfs(repo.as_str()) {
        return Err(Rejection::LfsUnsupported);
    }
    if git_prefix == "/" && crate::api::is_api_segment(repo.project()) {
        // Only a path spelled other than `/rest/` comes here (the gate hands that to the API).
        return Err(Rejection::NotFound(
            "/rest/ is gitgate's REST API: with git_prefix = \"/\" no repository is served there"
                .into(),
        ));
    }
    for part in suffix {
        backend_path.push('/');
        backend_path.push_str(part);
    }

    let is_read = method == "GET" || method == "HEAD";
    let (access, operation, query) = match endpoint {
        Endpoint::InfoRefs => {
            if !is_read {
                return Err(method_not_allowed(method, "info/refs", READS));
            }
            match service_param(raw_query)? {
                Some(service) => (
                    service.access(),
                    Operation::Advertise(service),
                    Some(Cow::Borrowed(service.advertisement_query())),
                ),
                None => (Access::Read, Operation::Dumb, None),
            }
        }
        Endpoint::Rpc(service) => {
            if method != "POST" {
                return Err(method_not_allowed(method, service.as_str(), POSTS));
            }
            (service.access(), Operation::Rpc(service), None)
        }
        Endpoint::DumbFile => {
            if !is_read {
                return Err(method_not_allowed(method, "a dumb-HTTP file", READS));
            }
            (Access::Read, Operation::Dumb, None)
        }
        Endpoint::Lfs => return Err(Rejection::LfsUnsupported),
    };

    Ok(GitRequest {
        repo,
        access,
        operation,
        backend_path,
        query,
    })
}

/// Whether a repository path (decoded, without its `.git`: `team/app/info/lfs`) holds `info`
/// then `lfs` after two segments: Git LFS's path, as `lfs_suffix` reads a raw one, also with
/// a git endpoint's name after it. [`classify`] refuses it as LFS, never a repository
/// `<repo>/info/lfs` to authorise and forward, which an upstream serving LFS would take for
/// the repository before it; so no grant or token can name one (`policy::Target::served_under`).
pub fn under_info_lfs(repo: &str) -> bool {
    let mut after_info = false;
    pieces(repo, b'/').enumerate().any(|(at, segment)| {
        let lfs = at >= 3 && after_info && segment == "lfs";
        after_info = segment == "info";
        lfs
    })
}

/// Path segments [`classify`] splits without an allocation.
const SEGMENTS_ON_STACK: usize = 16;

fn not_a_git_endpoint() -> Rejection {
    Rejection::NotFound("not a Git HTTP endpoint".into())
}

/// The methods of the read endpoints (and of the probes) and of the RPCs, as in an `Allow`
/// header.
pub(crate) const READS: &str = "GET, HEAD";
const POSTS: &str = "POST";

fn method_not_allowed(method: &str, what: &str, allow: &'static str) -> Rejection {
    Rejection::MethodNotAllowed {
        message: wrong_method(method, what, allow),
        allow,
    }
}

/// Why `what` refuses `method`, naming the methods of `allow` (an `Allow` header's list):
/// `info/refs accepts GET or HEAD, not PROPFIND`.
pub(crate) fn wrong_method(method: &str, what: &str, allow: &str) -> String {
    // The method is echoed back; keep it printable and short.
    let shown: String = method
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(16)
        .collect();
    let allowed = allow.replace(", ", " or ");
    format!("{what} accepts {allowed}, not {shown}")
}

/// The part of `raw_path` after the prefix and its `/`, or `None` if not under the prefix.
fn strip_prefix<'a>(raw_path: &'a str, prefix: &str) -> Option<&'a str> {
    let after = raw_path.strip_prefix(prefix)?;
    // The prefix itself (`/scm` for `/scm`) is under it, with no repository named.
    if prefix.ends_with('/') || after.is_empty() {
        Some(after)
    } else {
        after.strip_prefix('/')
    }
}

/// Whether `rest` holds a backslash, also percent-encoded (`%5c`, `%5C`): one pass over it.
fn has_a_backslash(rest: &str) -> bool {
    let bytes = rest.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'\\'
            || (b == b'%'
                && bytes
                    .get(i + 1..i + 3)
                    .is_some_and(|hex| hex.eq_ignore_ascii_case(b"5c")))
    })
}

/// `text` split at each `at` (an ASCII byte), as `str::split` splits at a `char`. For the few
/// short pieces of a request's path and query, each `str::split` step's search set-up costs
/// more than looking at the bytes one by one: this runs for every git request, a refused one
/// too.
fn pieces(text: &str, at: u8) -> impl Iterator<Item = &str> {
    debug_assert!(at.is_ascii());
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let now = rest?;
        Some(match now.bytes().position(|b| b == at) {
            Some(i) => {
                // Next to an ASCII byte: both ends are on character boundaries.
                rest = Some(&now[i + 1..]);
                &now[..i]
            }
            None => {
                rest = None;
                now
            }
        })
    })
}

/// `text` split at its first `at` (an ASCII byte), as `str::split_once` does, by [`pieces`]'
/// byte search.
fn split_once_at(text: &str, at: u8) -> Option<(&str, &str)> {
    let i = text.bytes().position(|b| b == at)?;
    Some((&text[..i], &text[i + 1..]))
}

/// Whether `text` holds `byte` (ASCII), looked for byte by byte (see [`pieces`]).
fn holds(text: &str, byte: u8) -> bool {
    text.bytes().any(|b| b == byte)
}

/// Recognise the git suffix on the raw (undecoded) tail segments.
///
/// Returns the endpoint and how many trailing segments it spans. Patterns are exact ASCII, so an
/// encoded `/` can never produce a suffix.
fn match_suffix(segments: &[&str]) -> Option<(Endpoint, usize)> {
    match segments {
        [.., "info", "refs"] => Some((Endpoint::InfoRefs, 2)),
        [.., "git-upload-pack"] => Some((Endpoint::Rpc(Service::UploadPack), 1)),
        [.., "git-receive-pack"] => Some((Endpoint::Rpc(Service::ReceivePack), 1)),
        [.., "git-upload-archive"] => Some((Endpoint::Rpc(Service::UploadArchive), 1)),
        [.., "HEAD"] => Some((Endpoint::DumbFile, 1)),
        [.., "objects", "info", "packs" | "alternates" | "http-alternates"] => {
            Some((Endpoint::DumbFile, 3))
        }
        [.., "objects", dir, file] if is_loose_object(dir, file) => Some((Endpoint::DumbFile, 3)),
        [.., "objects", "pack", file] if is_pack_file(file) => Some((Endpoint::DumbFile, 3)),
        _ => lfs_suffix(segments),
    }
}

/// `info/lfs/...` after at least two repo segments.
fn lfs_suffix(segments: &[&str]) -> Option<(Endpoint, usize)> {
    let at = segments
        .windows(2)
        .enumerate()
        .skip(2)
        .find(|(_, w)| w == &["info", "lfs"])
        .map(|(i, _)| i)?;
    Some((Endpoint::Lfs, segments.len() - at))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `XX/YYYY...`: 2 + 38 hex (SHA-1) or 2 + 62 hex (SHA-256), lowercase as git writes them.
fn is_loose_object(dir: &str, file: &str) -> bool {
    dir.len() == 2
        && (file.len() == 38 || file.len() == 62)
        && is_lower_hex(dir)
        && is_lower_hex(file)
}

/// `pack-<40 or 64 hex>.pack` or `.idx`.
fn is_pack_file(file: &str) -> bool {
    let Some(rest) = file.strip_prefix("pack-") else {
        return false;
    };
    let Some(hex) = rest
        .strip_suffix(".pack")
        .or_else(|| rest.strip_suffix(".idx"))
    else {
        return false;
    };
    (hex.len() == 40 || hex.len() == 64) && is_lower_hex(hex)
}

/// Percent-decode one raw path segment once, validate it and append it to `out`.
fn push_decoded_segment(raw: &str, out: &mut String) -> Result<(), Rejection> {
    if raw.is_empty() {
        return Err(Rejection::BadRequest(
            "empty segment in repository path ('//' or a trailing '/')".into(),
        ));
    }
    // Almost every path has no escapes: then the segment is checked as it stands.
    let decoded;
    let segment = if holds(raw, b'%') {
        let bytes = percent_decode(raw.as_bytes()).ok_or_else(|| {
            Rejection::BadRequest("invalid percent-encoding in repository path".into())
        })?;
        decoded = String::from_utf8(bytes).map_err(|_| {
            Rejection::BadRequest("repository path is not valid UTF-8 after decoding".into())
        })?;
        decoded.as_str()
    } else {
        raw
    };
    if !valid_segment(segment) {
        return Err(Rejection::BadRequest(
            "invalid repository path: segments must not be empty or start with '.', and may \
             contain only letters, digits and . _ - + ~"
                .into(),
        ));
    }
    out.push_str(segment);
    Ok(())
}

/// Decode `%XX` escapes once. `None` on a malformed escape. `+` stays `+`.
pub(crate) fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            let hi = hex_value(*input.get(i + 1)?)?;
            let lo = hex_value(*input.get(i + 2)?)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// [`percent_decode`], without a copy for the usual text that has no escapes.
fn decoded(raw: &str) -> Option<Cow<'_, [u8]>> {
    if holds(raw, b'%') {
        percent_decode(raw.as_bytes()).map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(raw.as_bytes()))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The `service` parameter of an `info/refs` query, if any.
///
/// Pairs are `&`-separated and percent-decoded; empty pairs and other parameters are ignored
/// (and never forwarded: the caller rebuilds the query). A repeated or unknown `service` is a bad
/// request, because a backend might pick a different one than we authorised.
fn service_param(raw_query: Option<&str>) -> Result<Option<Service>, Rejection> {
    let Some(query) = raw_query else {
        return Ok(None);
    };
    let mut found = None;
    for pair in pieces(query, b'&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = split_once_at(pair, b'=').unwrap_or((pair, ""));
        let bad_escape =
            || Rejection::BadRequest("invalid percent-encoding in the query string".into());
        let key = decoded(raw_key).ok_or_else(bad_escape)?;
        if *key != *b"service" {
            continue;
        }
        if found.is_some() {
            return Err(Rejection::BadRequest(
                "the 'service' parameter is given more than once".into(),
            ));
        }
        let value = decoded(raw_value).ok_or_else(bad_escape)?;
        let service = Service::from_name(&value).ok_or_else(|| {
            Rejection::BadRequest(
                "unknown service: expected git-upload-pack, git-receive-pack or \
                 git-upload-archive"
                    .into(),
            )
        })?;
        found = Some(service);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_queries_name_their_service() {
        for service in [
            Service::UploadPack,
            Service::ReceivePack,
            Service::UploadArchive,
        ] {
            let spelled = format!("service={}", service.as_str());
            assert_eq!(service.advertisement_query(), spelled);
        }
    }

    #[test]
    fn the_backend_path_can_be_spelled_with_or_without_git() {
        let spelled = |path: &str, query: Option<&str>, with_git: bool| {
            classify("GET", path, query, "/")
                .unwrap()
                .backend_path_spelled(with_git)
        };
        let q = Some("service=git-upload-pack");
        for path in ["/team/app.git/info/refs", "/team/app/info/refs"] {
            assert_eq!(spelled(path, q, true), "/team/app.git/info/refs");
            assert_eq!(spelled(path, q, false), "/team/app/info/refs");
        }
        // Nested, decoded, and a repository whose name contains `.git` elsewhere.
        assert_eq!(
            spelled("/team/tools/a%70p.git/HEAD", None, false),
            "/team/tools/app/HEAD"
        );
        assert_eq!(
            spelled("/team/my.github/objects/info/packs", None, true),
            "/team/my.github.git/objects/info/packs"
        );
        assert_eq!(
            spelled("/team/x.gitx/info/refs", q, false),
            "/team/x.gitx/info/refs"
        );
    }

    /// Paths of up to [`SEGMENTS_ON_STACK`] segments are split on the stack, longer ones into a
    /// Vec: both classify alike, at the edge and far past it.
    #[test]
    fn deep_paths_classify_on_either_side_of_the_stack_split() {
        for depth in [
            SEGMENTS_ON_STACK - 3,
            SEGMENTS_ON_STACK - 2,
            SEGMENTS_ON_STACK - 1,
            SEGMENTS_ON_STACK,
            40,
        ] {
            // `depth` repository segments, then `info/refs`.
            let repo: Vec<String> = (0..depth).map(|i| format!("p{i}")).collect();
            let repo = repo.join("/");
            let path = format!("/{repo}.git/info/refs");
            let g = classify("GET", &path, Some("service=git-receive-pack"), "/").unwrap();
            assert_eq!(g.repo.as_str(), repo, "depth {depth}");
            assert_eq!(g.backend_path, format!("/{repo}.git/info/refs"));
            assert_eq!(g.access, Access::Write);
            // The same depth with a bad segment is still refused.
            let bad = format!("/{repo}/.hidden.git/info/refs");
            assert!(classify("GET", &bad, None, "/").is_err(), "depth {depth}");
        }
    }

    const SHA1: &str = "3b18e512dba79e4c8300dd08aeb37f8e728b8dad";
    const SHA256: &str = "6a2f2c2a8f44c9c1f1e3d6f0b9a8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6";

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        Ok(Access, Operation),
        NotFound,
        Bad,
        Method,
    }
    use Want::*;

    const UP: Service = Service::UploadPack;
    const RP: Service = Service::ReceivePack;
    const UA: Service = Service::UploadArchive;
    const R: Access = Access::Read;
    const W: Access = Access::Write;

    fn outcome(r: &Result<GitRequest, Rejection>) -> Want {
        match r {
            Result::Ok(g) => Ok(g.access, g.operation),
            Err(Rejection::NotFound(_) | Rejection::LfsUnsupported) => NotFound,
            Err(Rejection::BadRequest(_)) => Bad,
            Err(Rejection::MethodNotAllowed { .. }) => Method,
        }
    }

    /// (method, path, query, prefix, expected)
    #[rustfmt::skip]
    #[allow(clippy::type_complexity)]
    fn table() -> Vec<(&'static str, String, Option<&'static str>, &'static str, Want)> {
        let s = |x: &str| x.to_string();
        vec![
            // Smart discovery, v0/v1 and v2 (v2 differs only in the Git-Protocol header).
            ("GET", s("/team/app.git/info/refs"), Some("service=git-upload-pack"), "/", Ok(R, Operation::Advertise(UP))),
            ("GET", s("/team/app/info/refs"), Some("service=git-upload-pack"), "/", Ok(R, Operation::Advertise(UP))),
            ("GET", s("/team/app.git/info/refs"), Some("service=git-receive-pack"), "/", Ok(W, Operation::Advertise(RP))),
            ("GET", s("/team/app.git/info/refs"), Some("service=git-upload-archive"), "/", Ok(R, Operation::Advertise(UA))),
            ("HEAD", s("/team/app.git/info/refs"), Some("service=git-upload-pack"), "/", Ok(R, Operation::Advertise(UP))),
            ("GET", s("/scm/team/app.git/info/refs"), Some("service=git-receive-pack"), "/scm", Ok(W, Operation::Advertise(RP))),
            ("GET", s("/team/app.git/info/refs"), Some("service=git-upload-pack&x=1"), "/", Ok(R, Operation::Advertise(UP))),
            ("GET", s("/team/app.git/info/refs"), Some("&&service=git-upload-pack&"), "/", Ok(R, Operation::Advertise(UP))),
            ("GET", s("/team/app.git/info/refs"), Some("service=git%2dupload%2Dpack"), "/", Ok(R, Operation::Advertise(UP))),
            ("GET", s("/team/app.git/info/refs"), Some("%73ervice=git-receive-pack"), "/", Ok(W, Operation::Advertise(RP))),
            // Query problems.
            ("GET", s("/team/app.git/info/refs"), Some("service=git-upload-pack&service=git-receive-pack"), "/", Bad),
            ("GET", s("/team/app.git/info/refs"), Some("service=git-upload-pack&service=git-upload-pack"), "/", Bad),
            ("GET", s("/team/app.git/info/refs"), Some("service=git-frobnicate"), "/", Bad),
            ("GET", s("/team/app.git/info/refs"), Some("service="), "/", Bad),
            ("GET", s("/team/app.git/info/refs"), Some("service"), "/", Bad),
            ("GET", s("/team/app.git/info/refs"), Some("service=git-upload-pack%zz"), "/", Bad),
            ("GET", s("/team/app.git/info/refs"), Some("service=git-upload-pack%00"), "/", Bad),
            // RPC.
            ("POST", s("/team/app.git/git-upload-pack"), None, "/", Ok(R, Operation::Rpc(UP))),
            ("POST", s("/team/app.git/git-receive-pack"), None, "/", Ok(W, Operation::Rpc(RP))),
            ("POST", s("/team/app.git/git-upload-archive"), None, "/", Ok(R, Operation::Rpc(UA))),
            ("POST", s("/scm/team/app/git-receive-pack"), Some("service=git-upload-pack"), "/scm", Ok(W, Operation::Rpc(RP))),
            ("POST", s("/group/sub/app.git/git-upload-pack"), None, "/", Ok(R, Operation::Rpc(UP))),
            // Dumb HTTP.
            ("GET", s("/team/app.git/info/refs"), None, "/", Ok(R, Operation::Dumb)),
            ("GET", s("/team/app.git/info/refs"), Some(""), "/", Ok(R, Operation::Dumb)),
            ("GET", s("/team/app.git/info/refs"), Some("foo=bar"), "/", Ok(R, Operation::Dumb)),
            ("GET", s("/team/app.git/HEAD"), None, "/", Ok(R, Operation::Dumb)),
            ("HEAD", s("/team/app.git/HEAD"), None, "/", Ok(R, Operation::Dumb)),
            ("GET", s("/team/app.git/objects/info/packs"), None, "/", Ok(R, Operation::Dumb)),
            ("GET", s("/team/app.git/objects/info/alternates"), None, "/", Ok(R, Operation::Dumb)),
            ("GET", s("/team/app.git/objects/info/http-alternates"), None, "/", Ok(R, Operation::Dumb)),
            ("GET", format!("/team/app.git/objects/{}/{}", &SHA1[..2], &SHA1[2..]), None, "/", Ok(R, Operation::Dumb)),
            ("GET", format!("/team/app.git/objects/{}/{}", &SHA256[..2], &SHA256[2..]), None, "/", Ok(R, Operation::Dumb)),
            ("GET", format!("/team/app.git/objects/pack/pack-{SHA1}.pack"), None, "/", Ok(R, Operation::Dumb)),
            ("GET", format!("/team/app.git/objects/pack/pack-{SHA256}.idx"), None, "/", Ok(R, Operation::Dumb)),
            ("GET", format!("/team/app.git/objects/pack/pack-{SHA1}.keep"), None, "/", NotFound),
            ("GET", format!("/team/app.git/objects/{}/{}", &SHA1[..2], &SHA1[2..39]), None, "/", NotFound),
            ("GET", format!("/team/app.git/objects/{}/{}", &SHA1[..2], SHA1[2..].to_uppercase()), None, "/", NotFound),
            ("GET", s("/team/app.git/objects/info/../../config"), None, "/", NotFound),
            ("GET", s("/team/app.git/config"), None, "/", NotFound),
            ("GET", s("/team/app.git/description"), None, "/", NotFound),
            ("GET", s("/team/app.git/refs/heads/main"), None, "/", NotFound),
            ("GET", s("/team/app.git/"), None, "/", NotFound),
            ("GET", s("/team/app.git"), None, "/", NotFound),
            ("GET", s("/"), None, "/", NotFound),
            ("GET", s(""), None, "/", NotFound),
            // Wrong methods and method case.
            ("POST", s("/team/app.git/info/refs"), Some("service=git-upload-pack"), "/", Method),
            ("PUT", s("/team/app.git/info/refs"), None, "/", Method),
            ("GET", s("/team/app.git/git-upload-pack"), None, "/", Method),
            ("GET", s("/team/app.git/git-receive-pack"), None, "/", Method),
            ("HEAD", s("/team/app.git/git-receive-pack"), None, "/", Method),
            ("post", s("/team/app.git/git-receive-pack"), None, "/", Method),
            ("get", s("/team/app.git/info/refs"), Some("service=git-upload-pack"), "/", Method),
            ("POST", s("/team/app.git/HEAD"), None, "/", Method),
            ("DELETE", format!("/team/app.git/objects/pack/pack-{SHA1}.pack"), None, "/", Method),
            // Prefix.
            ("GET", s("/scmx/team/app.git/info/refs"), Some("service=git-upload-pack"), "/scm", NotFound),
            ("GET", s("/team/app.git/info/refs"), Some("service=git-upload-pack"), "/scm", NotFound),
            ("GET", s("/scm"), None, "/scm", NotFound),
            ("GET", s("/scm/"), None, "/scm", NotFound),
            ("GET", s("/SCM/team/app.git/info/refs"), None, "/scm", NotFound),
            ("GET", s("/%73cm/team/app.git/info/refs"), None, "/scm", NotFound),
            ("GET", s("team/app.git/info/refs"), None, "/", NotFound),
            // Not enough segments.
            ("GET", s("/app.git/info/refs"), Some("service=git-upload-pack"), "/", NotFound),
            ("GET", s("/scm/app.git/info/refs"), Some("service=git-upload-pack"), "/scm", NotFound),
            ("POST", s("/git-upload-pack"), None, "/", NotFound),
            // Traversal in every encoding.
            ("GET", s("/team/../app.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/%2e%2e/app.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/%2E%2E/app.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/.%2e/app.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/%2E./app.git/info/refs"), None, "/", Bad),
            ("GET", s("/../team/app.git/info/refs"), None, "/", Bad),
            ("GET", s("/scm/../team/app.git/info/refs"), None, "/scm", Bad),
            ("GET", s("/team/./app.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/%2e/app.git/info/refs"), None, "/", Bad),
            ("GET", s("/team%2fapp.git/info/refs"), None, "/", NotFound),
            ("GET", s("/x/team%2fapp.git/info/refs"), None, "/", Bad),
            ("GET", s("/x/team%2F..%2Fapp.git/info/refs"), None, "/", Bad),
            ("POST", s("/team/app.git%2Finfo%2Frefs"), None, "/", NotFound),
            ("GET", s("/team/app.git%2Finfo%2Frefs"), None, "/", NotFound),
            ("GET", s("/team/app.git%2finfo/refs"), None, "/", NotFound),
            ("GET", s("/team/a%5c..%5capp.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/a%5C..%5Capp.git/info/refs"), None, "/", Bad),
            ("GET", s("/team\\..\\app.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/app.git\\info\\refs"), None, "/", Bad),
            ("GET", s("/team//app.git/info/refs"), None, "/", Bad),
            ("GET", s("//team/app.git/info/refs"), None, "/", Bad),
            ("GET", s("/scm//team/app.git/info/refs"), None, "/scm", Bad),
            ("GET", s("/team/app%00.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/app%0a.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/app%7f.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/app%ff.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/%C3%A9t%C3%A9/info/refs"), None, "/", Bad),
            ("GET", s("/team/%252e%252e/app/info/refs"), None, "/", Bad),
            ("GET", s("/team/app%zz/info/refs"), None, "/", Bad),
            ("GET", s("/team/app%2/info/refs"), None, "/", Bad),
            ("GET", s("/team/app%/info/refs"), None, "/", Bad),
            ("GET", s("/team/.hidden/info/refs"), None, "/", Bad),
            ("GET", s("/team/app name/info/refs"), None, "/", Bad),
            ("GET", s("/team/app%20name/info/refs"), None, "/", Bad),
            ("GET", s("/team/app:x/info/refs"), None, "/", Bad),
            // .git suffix rules.
            ("GET", s("/team/app.git.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/.git/info/refs"), None, "/", Bad),
            ("GET", s("/team/app%2egit/info/refs"), None, "/", Ok(R, Operation::Dumb)),
            // LFS.
            ("POST", s("/team/app.git/info/lfs/objects/batch"), None, "/", NotFound),
            ("GET", s("/team/app.git/info/lfs/locks"), None, "/", NotFound),
            ("POST", s("/team/app.git/info/lfs/locks/verify"), None, "/", NotFound),
        ]
    }

    /// A second `service`, whatever it says (an empty or unknown one too), is said as a second.
    #[test]
    fn a_second_service_is_said_as_one() {
        for query in [
            "service=git-upload-pack&service",
            "service=git-upload-pack&service=x",
        ] {
            match classify("GET", "/team/app.git/info/refs", Some(query), "/") {
                Err(Rejection::BadRequest(m)) => assert!(m.contains("more than once"), "{m}"),
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    /// The git prefix itself names no repository; it is under the prefix all the same.
    #[test]
    fn the_prefix_alone_is_said_to_name_no_repository() {
        for path in ["/scm", "/scm/"] {
            match classify("GET", path, None, "/scm") {
                Err(Rejection::NotFound(m)) => {
                    assert!(m.contains("no repository in the path"), "{path}: {m}")
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn classification_table() {
        let mut failures = Vec::new();
        let cases = table();
        assert!(cases.len() >= 40);
        for (method, path, query, prefix, want) in cases {
            let got = classify(method, &path, query, prefix);
            if outcome(&got) != want {
                failures.push(format!(
                    "{method} {path:?} ?{query:?} prefix {prefix:?}: want {want:?}, got {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn the_asterisk_form_names_no_repository() {
        for prefix in ["/", "/scm"] {
            match classify("OPTIONS", "*", None, prefix) {
                Err(Rejection::NotFound(m)) => assert!(m.contains("names no repository"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn backend_path_and_query_are_canonical() {
        let g = classify(
            "GET",
            "/scm/te%61m/app.git/info/refs",
            Some("x=1&service=git%2Dupload-pack&y"),
            "/scm",
        )
        .unwrap();
        assert_eq!(g.repo.as_str(), "team/app");
        assert_eq!(g.repo.project(), "team");
        assert_eq!(g.backend_path, "/team/app.git/info/refs");
        assert_eq!(g.query.as_deref(), Some("service=git-upload-pack"));

        let g = classify(
            "POST",
            "/team/app/git-receive-pack",
            Some("service=x&a=b"),
            "/",
        )
        .unwrap();
        assert_eq!(g.backend_path, "/team/app/git-receive-pack");
        assert_eq!(g.query, None);
        assert_eq!(g.access, Access::Write);

        let g = classify("GET", "/team/app.git/info/refs", Some("foo=bar"), "/").unwrap();
        assert_eq!(g.operation, Operation::Dumb);
        assert_eq!(g.query, None);

        let path = format!("/a/b/c.git/objects/pack/pack-{SHA1}.idx");
        let g = classify("HEAD", &path, None, "/").unwrap();
        assert_eq!(g.repo.as_str(), "a/b/c");
        assert_eq!(g.repo.project(), "a");
        assert_eq!(g.backend_path, path);

        // An encoded ".git" is decoded once and kept, as the client sent it.
        let g = classify("GET", "/team/app%2Egit/HEAD", None, "/").unwrap();
        assert_eq!(g.repo.as_str(), "team/app");
        assert_eq!(g.backend_path, "/team/app.git/HEAD");
    }

    /// With git at `/`, `/rest/` is the REST API's: spelled another way (`%72est`), it is no
    /// repository `rest/app` either. Under a prefix, a project `rest` is a project as any.
    #[test]
    fn the_rest_api_path_spelled_otherwise_is_no_repository() {
        for path in ["/%72est/app.git/info/refs", "/r%65st/app/info/refs"] {
            match classify("GET", path, Some("service=git-upload-pack"), "/") {
                Err(Rejection::NotFound(m)) => assert!(m.contains("REST API"), "{m}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        let g = classify("GET", "/scm/%72est/app.git/info/refs", None, "/scm").unwrap();
        assert_eq!(g.repo.as_str(), "rest/app");
        let g = classify("GET", "/REST/app.git/info/refs", None, "/").unwrap();
        assert_eq!(g.repo.as_str(), "REST/app");
        assert!(crate::api::is_api_path("/rest") && crate::api::is_api_path("/rest/x"));
        assert!(!crate::api::is_api_path("/restx/a") && !crate::api::is_api_path("/"));
    }

    #[test]
    fn lfs_has_a_clear_reason() {
        let r = classify("POST", "/team/app.git/info/lfs/objects/batch", None, "/").unwrap_err();
        assert_eq!(r.to_string(), "Git LFS is not supported yet");
    }

    #[test]
    fn repo_path_parse() {
        assert_eq!(RepoPath::parse("team/app").unwrap().as_str(), "team/app");
        assert_eq!(
            RepoPath::parse("team/app.git").unwrap().as_str(),
            "team/app"
        );
        let nested = RepoPath::parse("team/sub/app").unwrap();
        assert_eq!(nested.project(), "team");
        assert_eq!(nested.to_string(), "team/sub/app");
        for bad in [
            "",
            "team",
            "/team/app",
            "team/app/",
            "team//app",
            "team/../app",
            "team/./app",
            "team/.app",
            "team/app.git.git",
            "team/.git",
            "team/a%2fb",
            "team\\app",
            "team/app name",
            "team/é",
        ] {
            assert!(RepoPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn segment_allowlist() {
        for ok in ["team", "my-app", "a_b", "v1.2", "c++", "~user", "A9"] {
            assert!(valid_segment(ok), "{ok:?}");
        }
        for bad in [
            "", ".", "..", ".x", "a/b", "a\\b", "a\0b", "a b", "a%b", "ü", "a\n",
        ] {
            assert!(!valid_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn service_names() {
        assert_eq!(Service::UploadPack.as_str(), "git-upload-pack");
        assert_eq!(Service::ReceivePack.as_str(), "git-receive-pack");
        assert_eq!(Service::UploadArchive.as_str(), "git-upload-archive");
        assert_eq!(Service::ReceivePack.access(), Access::Write);
    }

    #[test]
    fn method_is_echoed_safely() {
        let long = "X".repeat(1000) + "\r\n";
        let r = classify(&long, "/team/app/git-upload-pack", None, "/").unwrap_err();
        assert!(r.to_string().len() < 100);
        assert!(!r.to_string().contains('\n'));
    }

    /// Only the files git names are dumb-HTTP files: a pack's name of 40 or 64 hex digits, a
    /// loose object under a two-digit directory, and the three files of `objects/info`. A near
    /// miss (`..` among them) is no endpoint, so it is never forwarded.
    #[test]
    fn near_misses_of_dumb_http_files_are_no_endpoint() {
        let hex = |n: usize| "a".repeat(n);
        for path in [
            format!("/team/app.git/objects/pack/pack-{}.pack", hex(41)),
            format!("/team/app.git/objects/pack/pack-{}.idx", hex(63)),
            format!("/team/app.git/objects/pack/pack-{}.pack", hex(65)),
            format!("/team/app.git/objects/{}/{}", hex(3), hex(38)),
            format!("/team/app.git/objects/{}/{}", hex(3), hex(62)),
            "/team/app.git/objects/info/..".to_string(),
            "/team/app.git/objects/info/commit-graph".to_string(),
        ] {
            assert_eq!(
                outcome(&classify("GET", &path, None, "/")),
                NotFound,
                "{path}"
            );
        }
    }

    /// The parameter is `service`, as git http-backend reads it: another spelling is another
    /// parameter, ignored (and not forwarded), so the request is the dumb ref list.
    #[test]
    fn the_service_parameter_is_named_exactly() {
        for query in ["SERVICE=git-receive-pack", "Service=git-receive-pack"] {
            let g = classify("GET", "/team/app.git/info/refs", Some(query), "/").unwrap();
            assert_eq!(g.operation, Operation::Dumb, "{query}");
            assert_eq!(g.access, Access::Read, "{query}");
            assert_eq!(g.query, None, "{query}");
        }
    }

    /// A backslash is a bad request however it is written, plain or `%5c`, wherever it is in
    /// the path: before an endpoint gitgate does not serve, or a repository it cannot name.
    #[test]
    fn a_backslash_is_a_bad_request_however_it_is_spelled() {
        for path in [
            "/team/a%5cb/foo",
            "/team/a\\b/foo",
            "/a%5Cb/info/refs",
            "/team/a%5capp/info/lfs/objects/batch",
        ] {
            assert_eq!(outcome(&classify("GET", path, None, "/")), Bad, "{path}");
        }
    }

    /// `info/lfs/` after a repository is Git LFS's, also where a git endpoint follows it
    /// (`.../info/lfs/objects/info/packs`, `.../info/lfs/git-receive-pack`), and with its
    /// letters percent-encoded: never a repository `<repo>/info/lfs` to authorise and forward,
    /// which an upstream serving LFS would read as the repository before it.
    #[test]
    fn a_git_endpoint_under_info_lfs_is_lfs_not_a_repository() {
        let pack = format!("objects/pack/pack-{SHA1}.pack");
        let loose = format!("objects/{}/{}", &SHA1[..2], &SHA1[2..]);
        for (method, path, query) in [
            (
                "GET",
                "/team/app.git/info/lfs/objects/info/packs".to_string(),
                None,
            ),
            ("GET", format!("/team/app.git/info/lfs/{pack}"), None),
            ("GET", format!("/team/app/info/lfs/{loose}"), None),
            ("HEAD", "/team/app.git/info/lfs/HEAD".to_string(), None),
            ("GET", "/team/app.git/info/lfs/info/refs".to_string(), None),
            (
                "GET",
                "/team/app.git/info/lfs/info/refs".to_string(),
                Some("service=git-receive-pack"),
            ),
            (
                "POST",
                "/team/app.git/info/lfs/git-receive-pack".to_string(),
                None,
            ),
            (
                "POST",
                "/team/app.git/info/lfs/git-upload-pack".to_string(),
                None,
            ),
            (
                "POST",
                "/group/sub/app.git/info/lfs/git-upload-pack".to_string(),
                None,
            ),
            (
                "GET",
                "/team/app.git/info/%6cfs/objects/info/packs".to_string(),
                None,
            ),
            ("GET", "/team/app.git/%69nfo/lfs/HEAD".to_string(), None),
            (
                "GET",
                "/team/app.git/info/lfs/objects/batch/info/refs".to_string(),
                None,
            ),
        ] {
            assert_eq!(
                classify(method, &path, query, "/"),
                Err(Rejection::LfsUnsupported),
                "{method} {path} ?{query:?}"
            );
        }
        // Under the git prefix too: the prefix is no repository segment.
        assert_eq!(
            classify("GET", "/scm/team/app.git/info/lfs/HEAD", None, "/scm"),
            Err(Rejection::LfsUnsupported)
        );
        // Spelled with `.git`, the repository `team/app/info/lfs` is no more served.
        assert_eq!(
            classify("GET", "/team/app/info/lfs.git/info/refs", None, "/"),
            Err(Rejection::LfsUnsupported)
        );
        // Not after one segment (as for LFS's own paths), nor `lfs` elsewhere.
        for path in [
            "/team/info/lfs/app.git/info/refs",
            "/team/app/lfs/info/refs",
            "/team/app/info/lfsx/info/refs",
            "/team/app/xinfo/lfs/info/refs",
            "/team/app/lfs/info/HEAD",
        ] {
            let g = classify("GET", path, None, "/").unwrap();
            assert_eq!(g.operation, Operation::Dumb, "{path}");
        }
        assert!(!under_info_lfs("team/app") && !under_info_lfs("team/info/lfs"));
        assert!(under_info_lfs("team/app/info/lfs") && under_info_lfs("a/b/c/info/lfs/d"));
    }

    /// `info/lfs` is Git LFS only after a repository (two segments): after one, the path is
    /// no endpoint at all, and not said to be LFS.
    #[test]
    fn lfs_is_only_lfs_after_a_repository() {
        let r = classify("POST", "/team/info/lfs/objects/batch", None, "/").unwrap_err();
        assert!(matches!(r, Rejection::NotFound(_)), "{r:?}");
        assert_ne!(r.to_string(), "Git LFS is not supported yet");
    }

    /// `pieces` and `split_once_at` split as `str::split` and `split_once` do, and
    /// `has_a_backslash` finds what the search of `\\` and `%5c` it replaced found.
    #[test]
    fn the_byte_searches_agree_with_strs_own() {
        let texts = [
            "",
            "/",
            "//",
            "team/app.git/info/refs",
            "/team/app.git/info/refs/",
            "service=git-upload-pack&&x=%5C&=",
            "a=b=c",
            "é/ü&%5c/ß=",
            "team\\app",
            "team%5capp",
            "%5",
            "%",
            "x%5Cy",
            "x%5",
            "%%5c",
        ];
        for text in texts {
            for at in [b'/', b'&', b'='] {
                let ours: Vec<&str> = pieces(text, at).collect();
                let std: Vec<&str> = text.split(char::from(at)).collect();
                assert_eq!(ours, std, "{text:?} at {}", char::from(at));
                assert_eq!(
                    split_once_at(text, at),
                    text.split_once(char::from(at)),
                    "{text:?}"
                );
                assert_eq!(holds(text, at), text.contains(char::from(at)), "{text:?}");
            }
            let old = text.contains('\\')
                || text
                    .as_bytes()
                    .windows(3)
                    .any(|w| w.eq_ignore_ascii_case(b"%5c"));
            assert_eq!(has_a_backslash(text), old, "{text:?}");
        }
    }
}
