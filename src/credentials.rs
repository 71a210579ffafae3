//! `Authorization` header → [`Credentials`].
//!
//! Git sends a token either as HTTP Basic (RFC 7617: `user:token`, which is what credential
//! helpers store) or as `Bearer <token>` (RFC 6750, e.g. `http.extraHeader` in CI). This module
//! only takes the header apart; whether the secret is a valid token, and whether the user name
//! matters, is for the store and the policy.
//!
//! The parser is strict because it sees untrusted bytes before anything else does: one header
//! only (two could be read differently by us and by a backend), a size cap, exact syntax, and
//! errors that say what was wrong without echoing the secret. Secrets are wrapped in [`Secret`],
//! whose `Debug` is redacted and which has no `Display`, so they do not end up in logs by
//! accident.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;

/// The largest `Authorization` value we look at. A gitgate token is under 100 bytes; anything
/// this large is not one of ours.
pub const MAX_HEADER_LEN: usize = 8 * 1024;

/// Standard base64, with or without padding: RFC 7617 says padded, but some clients strip it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A secret (token or password) that must not be logged.
///
/// `Debug` prints `Secret(***)`; there is no `Display` and no `PartialEq` (compare hashes in
/// constant time instead, see `token::constant_time_eq`). Read it with [`Secret::expose`].
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret, e.g. one read from a prompt or just generated.
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }

    /// The secret itself. The name is meant to stand out in review.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What the client presented.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `Basic base64(user:secret)`.
    Basic { user: String, secret: Secret },
    /// `Bearer token`.
    Bearer { secret: Secret },
}

impl Credentials {
    /// The secret, whichever scheme carried it.
    pub fn secret(&self) -> &Secret {
        match self {
            Credentials::Basic { secret, .. } | Credentials::Bearer { secret } => secret,
        }
    }

    /// The Basic user name, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Credentials::Basic { user, .. } => Some(user),
            Credentials::Bearer { .. } => None,
        }
    }
}

/// Why no credentials could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialError {
    /// No `Authorization` header: the client has not tried yet (git will ask its helper).
    Missing,
    /// Basic with a user name and an empty password: what git sends first when the URL names
    /// the user (`https://alice@host/team/app.git`), before it asks its credential helper. No
    /// secret was tried, so like [`CredentialError::Missing`] it is not a failed
    /// authentication.
    NoPassword,
    /// `Bearer` with nothing after it: what CI sends when the variable meant to hold the token
    /// is empty (`http.extraHeader="Authorization: Bearer $TOKEN"`). No secret was tried, so it
    /// is not a failed authentication either: one broken job must not get every job behind the
    /// same address blocked.
    NoBearerToken,
    /// A header was sent but cannot be used; the reason never contains the secret.
    Malformed(&'static str),
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::Missing => {
                f.write_str("no credentials: send a gitgate token as the password (Basic auth)")
            }
            CredentialError::NoPassword => f.write_str(EMPTY_PASSWORD),
            CredentialError::NoBearerToken => f.write_str(
                "unusable Authorization header: Bearer token is missing (is the variable that \
                 should hold it empty?)",
            ),
            CredentialError::Malformed(reason) => {
                write!(f, "unusable Authorization header: {reason}")
            }
        }
    }
}

impl std::error::Error for CredentialError {}

/// The reason for a Basic header without a password, worded for git (the REST API, which takes
/// passwords and not tokens, words it its own way).
pub const EMPTY_PASSWORD: &str = "no password: send a gitgate token as the password (Basic auth)";

/// The reason for a Basic user name that is (or holds) a token secret, worded for git (the
/// REST API, which takes passwords and not tokens, words it its own way).
pub const TOKEN_AS_USER: &str = "the Basic user name is a gitgate token (or holds one): give the \
     token as the password and your user name as the user (any name for a project or repository \
     token)";

/// [`TOKEN_AS_USER`] with no password after it: what git sends for a URL with the token where
/// the user name goes (`https://TOKEN@host/...`, GitHub's style). git asks for a password when
/// such a name is refused, and no password can help, so the gate answers it so that git prints
/// it (see `Gate::refusal`).
pub const TOKEN_AS_USER_WITHOUT_PASSWORD: &str = "the Basic user name is a gitgate token (or \
     holds one), with no password after it, as a URL such as `https://TOKEN@host/...` sends: \
     give the token as the password and your user name as the user (any name for a project or \
     repository token), as in `https://alice:TOKEN@host/...`";

/// Read the credentials from a request's headers. More than one `Authorization` header is
/// malformed rather than "take the first": a backend or another proxy might take the last.
pub fn from_headers(headers: &HeaderMap) -> Result<Credentials, CredentialError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(CredentialError::Missing);
    };
    if values.next().is_some() {
        return Err(CredentialError::Malformed(
            "more than one Authorization header",
        ));
    }
    parse(value.as_bytes())
}

/// Whether the request's one `Authorization` header is one git did not send itself, well-formed
/// or not (it decides how a refusal is answered, see `Gate::unauthenticated`): anything but
/// Basic spelled `Basic`, as libcurl always writes it (and the only scheme gitgate's challenge
/// offers) — Bearer, Basic spelled otherwise (CI checkouts put `AUTHORIZATION: basic ...` in
/// `http.extraHeader`: actions/checkout, Azure Pipelines), a scheme gitgate does not take
/// (`token ...`, which Gitea's and GitHub's CI recipes write) or a token with no scheme. To a
/// 401 for such a header git would ask for a user name instead of printing the reason, and
/// what it then sent would not replace the header anyway.
pub fn not_sent_by_git(headers: &HeaderMap) -> bool {
    not_sent_by_git_of(&headers.get_all(AUTHORIZATION))
}

/// [`not_sent_by_git`] and [`fingerprint`] of one refused request, its `Authorization` header
/// looked up once for both.
pub fn as_tried(headers: &HeaderMap) -> (bool, u64) {
    let values = headers.get_all(AUTHORIZATION);
    (not_sent_by_git_of(&values), fingerprint_of(&values))
}

fn not_sent_by_git_of(values: &hyper::header::GetAll<'_, hyper::header::HeaderValue>) -> bool {
    let mut values = values.iter();
    match (values.next(), values.next()) {
        (Some(value), None) => {
            let v = value.as_bytes().trim_ascii_start();
            let gits_own = v.starts_with(b"Basic")
                && v.get(b"Basic".len())
                    .is_none_or(|&b| b == b' ' || b == b'\t');
            !gits_own
        }
        _ => false,
    }
}

/// Which credentials a request tried, as a number: a hash of its `Authorization` values under
/// a key drawn at start, so that it tells nothing of the secret and is never logged. The
/// throttle counts the same credentials failing again within its window once: a client that
/// sends them again after every `401` (libgit2 does, up to ten times within milliseconds) tries
/// no new secret.
pub fn fingerprint(headers: &HeaderMap) -> u64 {
    fingerprint_of(&headers.get_all(AUTHORIZATION))
}

fn fingerprint_of(values: &hyper::header::GetAll<'_, hyper::header::HeaderValue>) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEY: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    let mut hasher = KEY.build_hasher();
    for value in values {
        hasher.write(value.as_bytes());
        hasher.write_u8(0xff);
    }
    hasher.finish()
}

/// Whether the request offers a password the REST API will check: Basic credentials whose
/// password is not a gitgate token. Only the refusal of such a call can be a guess, counted for
/// the address throttle; a token (refused by name, never checked: tokens do not manage
/// tokens), no password, or a header that cannot be read tries nothing.
pub fn offers_a_password(headers: &HeaderMap) -> bool {
    matches!(
        from_headers(headers),
        Ok(Credentials::Basic { secret, .. }) if crate::token::parse(secret.expose()).is_none()
    )
}

/// Parse one `Authorization` header value.
///
/// `<scheme> 1*SP <credentials>`, scheme case-insensitive; surrounding spaces and tabs are
/// ignored (HTTP strips them anyway).
pub fn parse(value: &[u8]) -> Result<Credentials, CredentialError> {
    use CredentialError::Malformed;

    if value.len() > MAX_HEADER_LEN {
        return Err(Malformed("header is larger than 8 KiB"));
    }
    let value = value.trim_ascii();
    if value.is_empty() {
        return Err(Malformed("header is empty"));
    }
    let (scheme, rest) = match value.iter().position(|&b| b == b' ' || b == b'\t') {
        // `Basic<TAB>...`: HTTP separates the two with spaces only (RFC 9110, section 11.4);
        // said so, rather than as a scheme nobody knows.
        Some(at) if value[at] == b'\t' => {
            return Err(Malformed(
                "a tab separates the scheme from the credentials; HTTP wants a space",
            ))
        }
        Some(at) => value.split_at(at),
        None => (value, &[][..]),
    };
    let param = rest.trim_ascii_start();
    let spaced = || param.iter().any(|&b| b == b' ' || b == b'\t');
    const SPACED: CredentialError = Malformed("unexpected whitespace in credentials");
    if scheme.eq_ignore_ascii_case(b"basic") {
        // Base64 has no spaces or tabs: Basic credentials that decode have none, and only a
        // refusal needs the search (a pass over a ~100-byte value, on every request with a
        // token). The refusal is the same as before: the whitespace is named.
        return parse_basic(param).map_err(|e| if spaced() { SPACED } else { e });
    }
    if spaced() {
        return Err(SPACED);
    }
    if scheme.eq_ignore_ascii_case(b"bearer") {
        parse_bearer(param)
    } else {
        Err(unknown_scheme(scheme))
    }
}

/// The refusal of a scheme that is neither Basic nor Bearer, never repeating it: what stands
/// there may be the secret itself (`Authorization: ggt_...`, the scheme left out).
fn unknown_scheme(scheme: &[u8]) -> CredentialError {
    let starts_like_a_token = scheme.len() >= crate::token::PREFIX.len()
        && scheme[..crate::token::PREFIX.len()]
            .eq_ignore_ascii_case(crate::token::PREFIX.as_bytes());
    CredentialError::Malformed(if starts_like_a_token {
        TOKEN_WITHOUT_SCHEME
    } else {
        UNKNOWN_SCHEME
    })
}

/// Git's refusal of a header with a token and no scheme (the REST API words its own).
pub const TOKEN_WITHOUT_SCHEME: &str =
    "the header holds a token with no scheme before it: write it as `Authorization: Bearer <token>`";

/// Git's refusal of a scheme other than Basic or Bearer (the REST API words its own).
pub const UNKNOWN_SCHEME: &str = "the scheme is neither Basic nor Bearer: send the token as \
     `Authorization: Bearer <token>`, or as the password of Basic credentials";

fn parse_basic(param: &[u8]) -> Result<Credentials, CredentialError> {
    use CredentialError::Malformed;

    if param.is_empty() {
        return Err(Malformed("Basic credentials are missing"));
    }
    let decoded = BASE64
        .decode(param)
        .map_err(|_| Malformed("Basic credentials are not valid base64"))?;
    let mut decoded =
        String::from_utf8(decoded).map_err(|_| Malformed("Basic credentials are not UTF-8"))?;
    // By byte: the user name before it is short, and `find`'s search set-up cost more.
    let colon = decoded.bytes().position(|b| b == b':').ok_or(Malformed(
        "Basic credentials have no ':' between user and password",
    ))?;
    let (user, secret) = (&decoded[..colon], &decoded[colon + 1..]);
    // An empty user name (`:TOKEN`, as curl and HTTP libraries send `https://:TOKEN@host/`;
    // RFC 7617 allows it) is a user name like any other: a project or repository token takes
    // any, a personal token only its owner's (see `policy::authorize`).
    // The user name ends up in logs and audit events: keep it on one line, and keep it one
    // field (`user=alice token_id=...` must not be forgeable from a user name with spaces).
    if user.chars().any(char::is_control) {
        return Err(Malformed("Basic user name contains control characters"));
    }
    if user.chars().any(char::is_whitespace) {
        return Err(Malformed("Basic user name contains spaces"));
    }
    // Nor may it turn the rest of an audit line around (U+202E) or hide characters.
    if user.chars().any(is_invisible_format) {
        return Err(Malformed(
            "Basic user name contains invisible or text-direction characters",
        ));
    }
    // `https://TOKEN@host/...` (GitHub's style) puts the secret where user names go — into
    // logs and the audit table. Refuse it by name, without echoing it — also when it is only
    // part of the user name (`"ggt_..."` pasted from JSON, `alice@ggt_...`) or only the secret's
    // random part.
    if holds_a_secret(user) {
        return Err(Malformed(if secret.is_empty() {
            TOKEN_AS_USER_WITHOUT_PASSWORD
        } else {
            TOKEN_AS_USER
        }));
    }
    // Checked after the user name, so that `https://TOKEN@host/...` — which git sends with an
    // empty password first — is told where the token goes.
    if secret.is_empty() {
        return Err(CredentialError::NoPassword);
    }
    // The decoded string becomes the user name: one copy per request, not two.
    let secret = Secret(secret.to_string());
    decoded.truncate(colon);
    Ok(Credentials::Basic {
        user: decoded,
        secret,
    })
}

/// Characters that show as nothing, break the line or reorder the text around them: Unicode
/// format characters (zero-width spaces and joiners, bidirectional marks, overrides and
/// isolates, the soft hyphen, the byte-order mark, the combining grapheme joiner, the Mongolian
/// vowel separator, tags' control characters; tags themselves by [`tags_outside_a_flag`]), the
/// fillers that show as a blank (Hangul's), the line and paragraph separators, and
/// noncharacters. In a name they make `alice\u{200B}` look like `alice` in the backend's
/// `REMOTE_USER`, hooks and reflogs, or garble the `remote:` lines git prints and the CLI's
/// listings.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FDD0}'..='\u{FDEF}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E001F}'
    ) || (c as u32 & 0xFFFE) == 0xFFFE
}

/// Whether `text` has a tag character (U+E0020–E007F, invisible) anywhere but in the flag of
/// a subdivision (Scotland's: the black flag U+1F3F4, then tags): elsewhere tags only hide
/// text.
pub fn tags_outside_a_flag(text: &str) -> bool {
    let tag = |c: char| ('\u{E0020}'..='\u{E007F}').contains(&c);
    let mut previous = None;
    text.chars().any(|c| {
        let stray = tag(c) && !matches!(previous, Some(p) if p == '\u{1F3F4}' || tag(p));
        previous = Some(c);
        stray
    })
}

/// Whether `text` stacks more combining marks on one character than any script writes
/// (Vietnamese uses two, IPA three or four): dozens of them make a name an unreadable smear
/// over the lines above and below it in a terminal.
pub fn stacks_combining_marks(text: &str) -> bool {
    const MOST: usize = 4;
    let combining = |c: char| {
        matches!(
            c,
            '\u{0300}'..='\u{036F}'
                | '\u{1AB0}'..='\u{1AFF}'
                | '\u{1DC0}'..='\u{1DFF}'
                | '\u{20D0}'..='\u{20FF}'
                | '\u{FE20}'..='\u{FE2F}'
        )
    };
    let mut run = 0;
    text.chars().any(|c| {
        run = if combining(c) { run + 1 } else { 0 };
        run > MOST
    })
}

/// Whether `text` (a path, say) holds the token prefix `ggt_`, in any case, also with its
/// characters percent-encoded (`ggt%5F`): whatever follows may be a secret pasted in by mistake;
/// or a whole secret without its prefix ([`crate::token::bare_secret_in`]).
pub fn holds_a_token(text: &str) -> bool {
    let mut bytes = std::borrow::Cow::Borrowed(text.as_bytes());
    let found = |b: &[u8]| prefix_in(b) || crate::token::bare_secret_in(b);
    // Decoded leniently (a stray `%` elsewhere must not hide it), and again for each level of
    // encoding, up to three.
    for _ in 0..3 {
        if found(&bytes) {
            return true;
        }
        if !bytes.contains(&b'%') {
            return false;
        }
        bytes = std::borrow::Cow::Owned(lenient_percent_decode(&bytes));
    }
    found(&bytes)
}

/// `text` with every run that looks like a gitgate token secret (`ggt_` in any case, then a
/// token id's 12 base32 characters, in any case, and whatever token characters follow) written
/// as `<a token secret, not repeated>`: for messages that repeat what an operator typed (an id,
/// a name) where a secret was pasted by mistake, which would then sit in a terminal's
/// scroll-back or a CI log. A branch named `ggt_dashboard-v2` is no secret and is kept.
pub fn without_secrets(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let at_prefix = |i: usize| {
        bytes
            .get(i..i + PREFIX_LEN)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"ggt_"))
    };
    const PREFIX_LEN: usize = 4;
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let mut out = String::new();
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        if at_prefix(i) {
            let end = (i + PREFIX_LEN..bytes.len())
                .find(|&j| !token_char(bytes[j]))
                .unwrap_or(bytes.len());
            let id_shaped = bytes
                .get(i + PREFIX_LEN..i + PREFIX_LEN + crate::token::ID_LEN)
                .is_some_and(|id| {
                    id.iter()
                        .all(|b| matches!(b.to_ascii_lowercase(), b'a'..=b'z' | b'2'..=b'7'))
                });
            if id_shaped {
                out.push_str(&text[copied..i]);
                out.push_str("<a token secret, not repeated>");
                copied = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    if copied == 0 {
        // A whole secret that lost its prefix is one still (see `token::bare_secret_in`).
        if crate::token::bare_secret_in(text.as_bytes()) {
            return std::borrow::Cow::Owned(without_bare_secrets(text));
        }
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    if crate::token::bare_secret_in(out.as_bytes()) {
        out = without_bare_secrets(&out);
    }
    std::borrow::Cow::Owned(out)
}

/// [`without_secrets`], and every run of 40 or more of the secret's characters with both upper-
/// and lower-case letters in it (see [`holds_a_secret`]) written as `<what looks like a token
/// secret, not repeated>`: for the log's free text (git's stderr, a hook's words, a ref name),
/// where the secret's 43 random characters alone — its id is in every request line, and its
/// checksum follows from the two — must not be written either. A commit id (lower-case hex) or
/// a name of words is kept.
pub fn without_secrets_for_the_log(text: &str) -> std::borrow::Cow<'_, str> {
    without_secret_like_runs(text, false)
}

/// [`without_secrets`], and every run with the shape of a secret's random part that
/// [`has_a_secrets_random_part`] finds in a request's path (40 or more of the secret's
/// characters with upper- and lower-case letters and digits) written as `<what looks like a
/// token secret, not repeated>`: for an answer that repeats what its caller typed (a REST
/// path's token id or user name, a command's argument). The random part alone gives the secret
/// back with its id, which is public. A long name of words without digits is kept, as
/// [`names_a_secret`] keeps it.
pub fn without_secrets_in_an_answer(text: &str) -> std::borrow::Cow<'_, str> {
    without_secret_like_runs(text, true)
}

/// [`without_secrets`], and every run of the secret's characters that [`is_secret_like`] (with
/// digits in it if `needs_digits`) written as `<what looks like a token secret, not repeated>`.
fn without_secret_like_runs(text: &str, needs_digits: bool) -> std::borrow::Cow<'_, str> {
    let text = without_secrets(text);
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let secret_like = |run: &str| is_secret_like(run, needs_digits);
    if !secret_like_run(&text, needs_digits) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut run_start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (token_char(c) && i < text.len(), run_start) {
            (true, None) => run_start = Some(i),
            (true, Some(_)) => {}
            (false, start) => {
                if let Some(start) = start {
                    let run = &text[start..i];
                    out.push_str(if secret_like(run) {
                        "<what looks like a token secret, not repeated>"
                    } else {
                        run
                    });
                    run_start = None;
                }
                if i < text.len() {
                    out.push(c);
                }
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `text` with every run of token characters that holds a whole secret without its prefix
/// written as `<a token secret, not repeated>`.
fn without_bare_secrets(text: &str) -> String {
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if crate::token::bare_secret_in(run.as_bytes()) {
            out.push_str("<a token secret, not repeated>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// `%XX` decoded where it is well-formed, everything else kept as it is.
fn lenient_percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let escaped = (input[i] == b'%')
            .then(|| Some((hex(*input.get(i + 1)?)?, hex(*input.get(i + 2)?)?)))
            .flatten();
        match escaped {
            Some((hi, lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            None => {
                out.push(input[i]);
                i += 1;
            }
        }
    }
    out
}

/// `ggt_` anywhere in `bytes`, in any case. Runs for every request's path: it looks at the
/// few underscores, not at every position.
fn prefix_in(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'_' && i >= 3 && bytes[i - 3..i].eq_ignore_ascii_case(b"ggt"))
}

/// Whether a user name holds a gitgate token secret, or something that may be one: the token
/// prefix anywhere (also mistyped as `ggt-`), or a run of 40 or more characters of the secret's
/// alphabet with both upper- and lower-case letters in it (the secret's random part is 43 such
/// characters). User names never look like that: they are at most 64 lower-case letters,
/// digits and `._-`; the names CI systems send are short words; a GUID is 36.
pub fn holds_a_secret(user: &str) -> bool {
    looks_like_a_secret(user, false)
}

/// Whether a token's name holds what is most likely a pasted secret: as [`holds_a_secret`], but
/// a long run must have digits in it too. A name may well be a long hyphenated mixed-case label
/// (`GitHubActions-deploy-production-cluster`), while the secret's 43 random characters miss a
/// digit only about once in 1,500.
pub fn names_a_secret(name: &str) -> bool {
    looks_like_a_secret(name, true)
}

fn looks_like_a_secret(text: &str, run_needs_digits: bool) -> bool {
    let mistyped = text
        .as_bytes()
        .windows(4)
        .any(|w| w[..3].eq_ignore_ascii_case(b"ggt") && w[3] == b'-');
    holds_a_token(text) || mistyped || secret_like_run(text, run_needs_digits)
}

/// Whether `text` has a run of 40 or more of the secret's characters with upper- and
/// lower-case letters (and, if `needs_digits`, digits) in it: the shape of a secret's 43
/// random characters.
fn secret_like_run(text: &str, needs_digits: bool) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .any(|run| is_secret_like(run, needs_digits))
}

/// Whether one run of the secret's characters has the shape of its random part.
fn is_secret_like(run: &str, needs_digits: bool) -> bool {
    run.len() >= 40
        && run.bytes().any(|b| b.is_ascii_uppercase())
        && run.bytes().any(|b| b.is_ascii_lowercase())
        && (!needs_digits || run.bytes().any(|b| b.is_ascii_digit()))
}

/// The shape [`has_a_secrets_random_part`] finds, in words, for the refusals of a path or a
/// name that has it (the gate's, and a grant's or token's target).
pub const RANDOM_PART_SHAPE: &str = "a run of 40 or more letters, digits, '-' and '_' with \
     upper- and lower-case letters and digits in it";

/// Whether a request's path holds what is most likely a secret's random part alone (see
/// `secret_like_run`, with digits, as [`names_a_secret`] asks of a token's name): with the
/// token id that every request line has, it gives the whole secret back. The check of the
/// whole secret is [`holds_a_token`]'s.
///
/// Looked for in the path as it came and decoded, as [`holds_a_token`] looks (leniently, up to
/// three levels of encoding): the gate refuses a repository holding one once decoded, and the
/// request line, which writes the path as it came, must not write it escaped (`%6D%32...`),
/// which any log reader decodes back.
pub fn has_a_secrets_random_part(path: &str) -> bool {
    let mut text = std::borrow::Cow::Borrowed(path);
    for _ in 0..3 {
        if secret_like_run(&text, true) {
            return true;
        }
        if !text.contains('%') {
            return false;
        }
        let decoded = lenient_percent_decode(text.as_bytes());
        text = std::borrow::Cow::Owned(String::from_utf8_lossy(&decoded).into_owned());
    }
    secret_like_run(&text, true)
}

/// RFC 6750 `b64token` (the same as RFC 7235 `token68`):
/// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn parse_bearer(param: &[u8]) -> Result<Credentials, CredentialError> {
    use CredentialError::Malformed;

    let body_len = param.len() - param.iter().rev().take_while(|&&b| b == b'=').count();
    let body = param.get(..body_len).unwrap_or_default();
    if body.is_empty() {
        return Err(CredentialError::NoBearerToken);
    }
    let token68 = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(b);
    if !body.iter().all(token68) {
        return Err(Malformed("Bearer token contains invalid characters"));
    }
    // Only ASCII was accepted above, so this cannot fail; map rather than unwrap anyway.
    let token = std::str::from_utf8(param).map_err(|_| Malformed("Bearer token is not ASCII"))?;
    Ok(Credentials::Bearer {
        secret: Secret(token.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn basic(value: &str) -> (String, String) {
        match parse(value.as_bytes()) {
            Ok(Credentials::Basic { user, secret }) => (user, secret.expose().to_string()),
            other => panic!("{value:?}: expected Basic, got {other:?}"),
        }
    }

    fn malformed(value: &[u8]) -> &'static str {
        match parse(value) {
            Err(CredentialError::Malformed(r)) => r,
            other => panic!("{value:?}: expected Malformed, got {other:?}"),
        }
    }

    /// One look at the header gives what the two looks gave: for none, one of git's, one git
    /// did not send, and two.
    #[test]
    fn as_tried_is_not_sent_by_git_and_the_fingerprint() {
        let mut sets = vec![HeaderMap::new()];
        for values in [
            &["Basic YTpi"][..],
            &["Bearer x"],
            &["basic YTpi"],
            &["Basic YTpi", "Basic YTpj"],
        ] {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(AUTHORIZATION, HeaderValue::from_static(v));
            }
            sets.push(h);
        }
        for h in &sets {
            assert_eq!(as_tried(h), (not_sent_by_git(h), fingerprint(h)), "{h:?}");
        }
        assert!(as_tried(&sets[2]).0 && !as_tried(&sets[1]).0);
        assert_ne!(as_tried(&sets[1]).1, as_tried(&sets[4]).1);
    }

    #[test]
    fn secrets_in_a_message_are_not_repeated() {
        let new = crate::token::generate().unwrap();
        let secret = new.secret.expose();
        let typed = format!("no token with id '{secret}'; try again");
        let said = without_secrets(&typed);
        assert_eq!(
            said,
            "no token with id '<a token secret, not repeated>'; try again"
        );
        let upper = format!("x {}", secret.to_uppercase());
        assert!(!without_secrets(&upper).contains(&upper[6..]));
        // Without its prefix, lost in a copy: a whole secret all the same.
        let bare = format!("no token with id '{}'", &secret[4..]);
        assert_eq!(
            without_secrets(&bare),
            "no token with id '<a token secret, not repeated>'"
        );
        let both = format!("{secret} and {}.", &secret[4..]);
        assert_eq!(
            without_secrets(&both),
            "<a token secret, not repeated> and <a token secret, not repeated>."
        );
        // The prefix named in words, and ids, stay; and so do names that only begin with it.
        for as_is in [
            "holds 'ggt_', the prefix",
            "token p3jotvgujzs7",
            "ggt_short",
            "refs/heads/ggt_dashboard-v2",
            "refs/heads/feature/GGT_ticket-1234567",
        ] {
            assert_eq!(without_secrets(as_is), as_is);
        }
        // A secret's id with what follows cut off is still its beginning.
        assert_eq!(
            without_secrets(&secret[..20]),
            "<a token secret, not repeated>"
        );
    }

    /// In the log, the secret's random part alone is not written either: with the token id
    /// every request line has, it gives the whole secret back.
    #[test]
    fn the_random_part_of_a_secret_is_not_logged() {
        let new = crate::token::generate().unwrap();
        let secret = new.secret.expose();
        let random = &secret[4 + crate::token::ID_LEN + 1..secret.len() - 7];
        for text in [
            format!("random: {random}"),
            format!("refs/heads/t/{random}"),
            format!("x\u{1b}[0m{}", &secret[8..]),
        ] {
            let said = without_secrets_for_the_log(&text);
            assert!(!said.contains(&random[..20]), "{said}");
            assert!(said.contains("not repeated>"), "{said}");
        }
        for as_is in [
            "fatal: git upload-pack: not our ref 4b825dc642cb6eb9a060e54bf8d69288fbee49044b825dc642cb6eb9",
            "GitHubActions deploy production cluster",
            "error: refusing to update checked out branch: refs/heads/main",
        ] {
            assert_eq!(without_secrets_for_the_log(as_is), as_is);
        }
    }

    /// An answer that repeats what its caller typed (a REST path's token id, a command's
    /// argument) repeats no secret's random part with digits in it either; a long label of
    /// words is kept, as a token's name may be one.
    #[test]
    fn an_answer_repeats_no_random_part_of_a_secret() {
        let random = "acbvhvnX3aUC9GTBH4tjaa2yShiiMbUB0uoYEkYtmJk";
        for text in [
            format!("no token with id '{random}'"),
            format!("you may only manage your own tokens, not those of '{random}'"),
            format!("no token with id 'ggt_abcdefgh2345_{random}_abcdef'"),
        ] {
            let said = without_secrets_in_an_answer(&text);
            assert!(!said.contains(&random[..20]), "{said}");
            assert!(said.contains("not repeated>"), "{said}");
        }
        for as_is in [
            "no token with id 'p3jotvgujzs7'",
            "no token named 'GitHubActions-deploy-production-cluster'",
            "no commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        ] {
            assert_eq!(without_secrets_in_an_answer(as_is), as_is);
        }
    }

    #[test]
    fn a_header_git_does_not_send_itself_is_known_by_its_scheme() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            not_sent_by_git(&h)
        };
        let creds = b64("ci:secret");
        // libcurl's own, always `Basic`.
        assert!(!with(&format!("Basic {creds}")));
        // CI checkouts' http.extraHeader, and any Bearer.
        for by_hand in [
            format!("basic {creds}"),
            format!("BASIC {creds}"),
            "Bearer x".into(),
            "bearer x".into(),
            "Bearer".into(),
        ] {
            assert!(with(&by_hand), "{by_hand}");
        }
        assert!(!with("Basic"));
        assert!(!not_sent_by_git(&HeaderMap::new()));
        // Nor are a scheme gitgate does not take (Gitea's `token`), one that only begins like
        // Basic, and a token with no scheme git's own: their refusal must reach the CI log.
        for by_hand in [
            "token ggt_x".to_string(),
            "Basically x".into(),
            "ggt_x".into(),
            String::new(),
        ] {
            assert!(with(&by_hand), "{by_hand:?}");
        }
    }

    /// The refusal of a scheme gitgate does not take says which it takes, and never repeats
    /// what stood in the scheme's place (a secret written without its scheme, say).
    #[test]
    fn an_unknown_scheme_is_refused_with_the_schemes_taken_and_never_repeated() {
        let secret = "ggt_abcdefgh2345_GI7nQx0b2V9kP3sLmT8wYz1cRf4hJ6dNq5uEa7iOg2B_vf4il2";
        for (value, said) in [
            (
                "token ggt_abcdefgh2345",
                "neither Basic nor Bearer: send the token as",
            ),
            ("Negotiate YII=", "neither Basic nor Bearer"),
            (
                secret,
                "a token with no scheme before it: write it as `Authorization: Bearer",
            ),
            ("GGT_x y", "a token with no scheme before it"),
        ] {
            let err = parse(value.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(said), "{value}: {err}");
            assert!(!err.contains("ggt_abc") && !err.contains("YII"), "{err}");
        }
    }

    #[test]
    fn only_a_password_that_is_no_token_is_offered_to_the_api() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            offers_a_password(&h)
        };
        assert!(with(&format!("Basic {}", b64("alice:hunter2"))));
        let new = crate::token::generate().unwrap();
        let token = new.secret.expose();
        assert!(!with(&format!("Basic {}", b64(&format!("alice:{token}")))));
        assert!(!with(&format!("Bearer {token}")));
        assert!(!with("Bearer"));
        assert!(!with(&format!("Basic {}", b64("alice:"))));
        assert!(!with("Basic !!!"));
        assert!(!offers_a_password(&HeaderMap::new()));
    }

    #[test]
    fn basic_round_trip() {
        let v = format!("Basic {}", b64("alice:ggt_secret"));
        assert_eq!(basic(&v), ("alice".into(), "ggt_secret".into()));
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_allows_several_spaces() {
        let enc = b64("alice:pw");
        for v in [
            format!("basic {enc}"),
            format!("BASIC {enc}"),
            format!("bAsIc    {enc}"),
            format!("  Basic {enc}  "),
        ] {
            assert_eq!(basic(&v), ("alice".into(), "pw".into()), "{v:?}");
        }
    }

    #[test]
    fn basic_padding_is_optional() {
        // "alice:p" encodes with one '=' of padding.
        let padded = b64("alice:p");
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(basic(&format!("Basic {padded}")).1, "p");
        assert_eq!(basic(&format!("Basic {unpadded}")).1, "p");
    }

    #[test]
    fn basic_splits_at_first_colon() {
        let v = format!("Basic {}", b64("bob:pa:ss:word"));
        assert_eq!(basic(&v), ("bob".into(), "pa:ss:word".into()));
    }

    #[test]
    fn basic_unicode_user_is_fine() {
        let v = format!("Basic {}", b64("jürgen:pw"));
        assert_eq!(basic(&v).0, "jürgen");
    }

    #[test]
    fn a_basic_user_name_that_would_garble_a_log_line_is_refused() {
        for user in ["eve\u{202E}live", "al\u{200B}ice", "\u{FEFF}bob"] {
            let value = format!("Basic {}", b64(&format!("{user}:pw")));
            assert!(
                malformed(value.as_bytes()).contains("text-direction"),
                "{user:?}"
            );
        }
    }

    #[test]
    fn basic_malformed() {
        assert!(malformed(b"Basic").contains("missing"));
        assert!(malformed(b"Basic ").contains("missing"));
        assert!(malformed(b"Basic !!!!").contains("base64"));
        // base64url characters are not standard base64.
        assert!(malformed(b"Basic YWxp_2U6cHc-").contains("base64"));
        let no_colon = format!("Basic {}", b64("alice"));
        assert!(malformed(no_colon.as_bytes()).contains("':'"));
        let empty_user = format!("Basic {}", b64(":pw"));
        assert!(matches!(
            parse(empty_user.as_bytes()),
            Ok(Credentials::Basic { user, .. }) if user.is_empty()
        ));
        let empty_pw = format!("Basic {}", b64("alice:"));
        assert_eq!(
            parse(empty_pw.as_bytes()).unwrap_err(),
            CredentialError::NoPassword
        );
        // A user name that cannot be one is refused as such, with or without a password.
        let spaced = format!("Basic {}", b64("al ice:"));
        assert!(malformed(spaced.as_bytes()).contains("spaces"));
        let not_utf8 = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(b"al\xffce:pw")
        );
        assert!(malformed(not_utf8.as_bytes()).contains("UTF-8"));
        let control = format!("Basic {}", b64("al\nice:pw"));
        assert!(malformed(control.as_bytes()).contains("control"));
        let forged = format!("Basic {}", b64("alice token_id=x status=200:pw"));
        assert!(malformed(forged.as_bytes()).contains("spaces"));
        // A token in the user name (even a mistyped one) is refused without being echoed.
        let secret = "ggt_a2lwkrfqzn5a_GI7nQx0b2V9kP3sLmT8wYz1cRf4hJ6dNq5uEa7iOg2B_vf4il2";
        let token_user = format!("Basic {}", b64(&format!("{secret}:x-oauth-basic")));
        let reason = malformed(token_user.as_bytes());
        assert!(reason.contains("is a gitgate token"), "{reason}");
        assert!(!reason.contains(&secret[4..]), "{reason}");
        // ... also without a password, as git first sends `https://TOKEN@host/...`: the user
        // is told where the token goes, not that the password is empty.
        let token_user = format!("Basic {}", b64(&format!("{secret}:")));
        let reason = malformed(token_user.as_bytes());
        assert_eq!(reason, TOKEN_AS_USER_WITHOUT_PASSWORD);
        // ... also when it is only part of the user name, or only the random part.
        for user in [
            format!("\"{secret}\""),
            format!("alice@{secret}"),
            format!("x{secret}"),
            secret.replacen("ggt_", "GGT-", 1),
            secret[21..].to_string(),
        ] {
            let v = format!("Basic {}", b64(&format!("{user}:pw")));
            let reason = malformed(v.as_bytes());
            assert!(reason.contains("is a gitgate token"), "{user}: {reason}");
            assert!(!reason.contains(&secret[21..]), "{reason}");
        }
        // Ordinary user names pass.
        for user in [
            "alice",
            "x-oauth-basic",
            "gitlab-ci-token",
            "eggtimer",
            "john.doe@example.com",
            "a-very-long-user-name-of-sixty-four-characters-in-lower-case-xyz",
            "123E4567-E89B-12D3-A456-426614174000",
        ] {
            assert!(!holds_a_secret(user), "{user}");
        }
        // The random part without a digit is still a secret.
        assert!(holds_a_secret(
            "GIbnQxobqVgkPdsLmTnwYzacRfehJudNqruEaqiOgxB"
        ));
        // Percent-encoded, in a path.
        for path in [
            "/team/ggt%5Fabc/info/refs",
            "/x/%67gt_abc",
            "/x/GG%54_abc",
            "/team/ggt%5Fabc%zz/info/refs",
            "/x/ggt%255Fabc",
            "/x/%zz/ggt%5Fabc%",
        ] {
            assert!(holds_a_token(path), "{path}");
        }
        assert!(!holds_a_token(
            "/team/app.git/info/refs?service=git-upload-pack"
        ));
        let split = format!("Basic {} {}", b64("a:b"), b64("c:d"));
        assert!(malformed(split.as_bytes()).contains("whitespace"));
        assert!(malformed(b"Basic\tYTpi").contains("scheme"));
    }

    #[test]
    fn bearer() {
        for (v, token) in [
            ("Bearer ggt_abc-DEF.~+/", "ggt_abc-DEF.~+/"),
            ("bearer abc==", "abc=="),
            ("BEARER   abc", "abc"),
        ] {
            match parse(v.as_bytes()) {
                Ok(Credentials::Bearer { secret }) => assert_eq!(secret.expose(), token),
                other => panic!("{v:?}: {other:?}"),
            }
        }
        // An empty CI variable: no secret tried (see `CredentialError::NoBearerToken`).
        for empty in [&b"Bearer"[..], b"Bearer ===", b"bearer   "] {
            assert!(
                matches!(parse(empty), Err(CredentialError::NoBearerToken)),
                "{empty:?}"
            );
        }
        assert!(malformed(b"Bearer a=b").contains("invalid"));
        assert!(malformed(b"Bearer a:b").contains("invalid"));
        assert!(malformed(b"Bearer a\x00b").contains("invalid"));
        assert!(malformed("Bearer é".as_bytes()).contains("invalid"));
        assert!(malformed(b"Bearer a b").contains("whitespace"));
    }

    #[test]
    fn a_tab_after_the_scheme_is_named_as_such() {
        for v in [&b"Basic\tYTpi"[..], b"Bearer\tabc"] {
            assert_eq!(
                malformed(v),
                "a tab separates the scheme from the credentials; HTTP wants a space",
                "{v:?}"
            );
        }
    }

    #[test]
    fn other_schemes_are_unsupported() {
        for v in [
            &b"Digest username=\"a\""[..],
            b"Token abc",
            b"Negotiate abc",
            b"Basicx YTpi",
            b"abc",
        ] {
            assert!(
                malformed(v).starts_with("the scheme is neither Basic nor Bearer: "),
                "{}",
                malformed(v)
            );
        }
        assert_eq!(malformed(b""), "header is empty");
        assert_eq!(malformed(b"   "), "header is empty");
    }

    #[test]
    fn size_cap() {
        let big = format!("Bearer {}", "a".repeat(MAX_HEADER_LEN));
        assert!(malformed(big.as_bytes()).contains("8 KiB"));
        let just_fits = format!("Bearer {}", "a".repeat(MAX_HEADER_LEN - 7));
        assert!(parse(just_fits.as_bytes()).is_ok());
    }

    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h).unwrap_err(), CredentialError::Missing);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(from_headers(&h).unwrap().secret().expose(), "abc");
        assert_eq!(from_headers(&h).unwrap().user(), None);
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(
            from_headers(&h).unwrap_err(),
            CredentialError::Malformed("more than one Authorization header")
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let v = format!("Basic {}", b64("alice:hunter2"));
        let c = parse(v.as_bytes()).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("Secret(***)"));
        assert_eq!(c.user(), Some("alice"));
        // The errors name no part of the input today (their texts are fixed); this keeps a
        // future one that quotes what it refused from quoting a secret.
        let err = parse(b"Bearer hunter2 x").unwrap_err().to_string();
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn every_control_character_in_a_basic_user_name_is_refused() {
        for user in ["al\u{1b}[31mice", "al\0ice", "al\u{7f}ice", "al\u{9b}ice"] {
            let v = format!("Basic {}", b64(&format!("{user}:pw")));
            assert!(malformed(v.as_bytes()).contains("control"), "{user:?}");
        }
    }

    /// A tab inside the credentials is named as the whitespace it is, whichever scheme carries
    /// them, rather than as a character Bearer does not take or as bad base64.
    #[test]
    fn a_tab_inside_the_credentials_is_named_as_whitespace() {
        let basic = format!("Basic {}\t{}", b64("a:b"), b64("c:d"));
        // A space too (Basic credentials are looked at for whitespace only once they fail to
        // decode: the refusal names it all the same).
        let spaced = format!("Basic {} {}", b64("a:b"), b64("c:d"));
        for v in [basic.as_bytes(), spaced.as_bytes(), &b"Bearer abc\tdef"[..]] {
            assert_eq!(
                malformed(v),
                "unexpected whitespace in credentials",
                "{v:?}"
            );
        }
    }

    /// A scheme that only begins with `basic` or `bearer` is neither: it is refused as a scheme
    /// gitgate does not take — by hand, as git sends only `Basic`, so that git prints why.
    #[test]
    fn a_scheme_that_only_begins_like_basic_or_bearer_is_not_taken_for_one() {
        for value in [
            "basically x",
            "BASICAUTH x",
            "Bearerx y",
            "bearer_token y",
            "Basically x",
        ] {
            let err = parse(value.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("neither Basic nor Bearer"), "{value}: {err}");
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert!(not_sent_by_git(&h), "{value}");
        }
    }

    /// A run of the secret's characters with both cases in it is a secret from 40 characters
    /// on (the random part is 43), and not below.
    #[test]
    fn a_mixed_case_run_is_taken_for_a_secret_from_forty_characters_on() {
        let forty = "Ab".repeat(20);
        assert!(holds_a_secret(&forty), "{forty}");
        assert!(!holds_a_secret(&forty[..39]), "{}", &forty[..39]);
    }

    /// The token prefix is found where a name or path begins with it, too, not only after
    /// something else.
    #[test]
    fn the_token_prefix_at_the_very_start_is_found() {
        for text in ["ggt_abc", "GGT_x"] {
            assert!(holds_a_token(text), "{text}");
            assert!(holds_a_secret(text), "{text}");
        }
    }

    /// A prefix percent-encoded three times over is still found: up to three levels are
    /// decoded.
    #[test]
    fn a_prefix_encoded_three_times_is_found() {
        assert!(holds_a_token("/x/ggt%25255Fabc"));
    }

    /// Four combining marks on one character are what scripts write; a fifth is a smear.
    #[test]
    fn more_than_four_combining_marks_on_one_character_are_a_stack() {
        assert!(!stacks_combining_marks("a\u{0301}\u{0302}\u{0303}\u{0304}"));
        assert!(stacks_combining_marks(
            "a\u{0301}\u{0302}\u{0303}\u{0304}\u{0305}"
        ));
    }

    /// A subdivision's flag (Scotland's: the black flag, then a run of tags) is not hidden text;
    /// a tag anywhere else is.
    #[test]
    fn tags_in_a_subdivision_flag_are_not_stray_but_elsewhere_they_are() {
        let scotland = "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}";
        assert!(!tags_outside_a_flag(scotland));
        assert!(!tags_outside_a_flag(&format!("team {scotland} ops")));
        assert!(tags_outside_a_flag("ops\u{E0067}"));
        assert!(tags_outside_a_flag(&format!("{scotland}x\u{E0067}")));
    }

    /// Unicode's noncharacters (U+xxFFFE and U+xxFFFF in every plane) count as invisible.
    #[test]
    fn noncharacters_are_invisible() {
        for c in ['\u{FFFE}', '\u{FFFF}', '\u{1FFFE}', '\u{10FFFF}'] {
            assert!(is_invisible_format(c), "{c:?}");
        }
        assert!(!is_invisible_format('\u{FFFD}'));
    }
}
