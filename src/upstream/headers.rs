//! Header hygiene between the client and an HTTP upstream, in both directions.
//!
//! This is where a reverse proxy most easily leaks or lies, so it is one pure function per
//! direction, tested on its own:
//!
//! - **Hop-by-hop headers** (`Connection` and every header it names, `Keep-Alive`,
//!   `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`) describe one connection, not the message; hyper frames each
//!   side itself. `Expect` is gitgate's server's to answer, so it is not passed on either (over
//!   HTTP/1.1 hyper sends the `100 Continue` when the body is first read; its HTTP/2 server
//!   sends none, see the README's TLS section).
//! - **Secrets stay here.** The client's `Authorization` carries its gitgate token: the upstream
//!   never sees it. `Proxy` is dropped (httpoxy). gitgate's own upstream credentials, if any, are
//!   added here and, since responses never echo request headers, never reach the client.
//! - **Who and where** are gitgate's to say. Every `X-Forwarded-*` header (including a
//!   client-sent `X-Forwarded-User`), `Forwarded`, `X-Real-IP` and the configured identity
//!   header are removed, then gitgate sets the identity header to the authenticated user and
//!   `X-Forwarded-For/-Proto/-Host` to what it saw. Only a peer in `trusted_proxies` (a load
//!   balancer in front of gitgate) may extend the `X-Forwarded-For` chain and name the original
//!   scheme and host. Header names with an underscore are dropped too (as nginx does by
//!   default): CGI- and WSGI-style upstreams turn `X_Forwarded_User` and `X-Forwarded-User`
//!   into the same `HTTP_X_FORWARDED_USER`, so a client could otherwise name the user; no
//!   header git sends has one.
//! - **Which request** is gitgate's to say too: a client's `X-Request-Id` is dropped and
//!   gitgate's own id for the request (its log's `request_id`) sent instead, so the git
//!   server's log can name the line of gitgate's that goes with each of its own, and a client
//!   cannot make one request look like another.
//! - **Redirects point at gitgate.** A `Location` naming the upstream's own origin or base path
//!   is rewritten to the same place under gitgate's git prefix ([`location_to_client`]), so a
//!   redirect never sends git around the gate to an internal address.
//! - **Only what git says about the content and itself is passed on** (`PASSED_ON`):
//!   `Content-Type`, `Content-Length` (one value), `Content-Encoding` (git gzips requests),
//!   `Accept*`, `User-Agent`, `Pragma`, `Cache-Control`, `Range` (dumb HTTP resumes a pack
//!   download), and `Git-Protocol` when it looks like what git sends (it becomes
//!   `GIT_PROTOCOL` in the backend's environment, so it is validated). Everything else stays
//!   here: an allowlist, because a denylist cannot know every header some upstream trusts — a
//!   client's `X-WEBAUTH-USER` (Gitea's reverse-proxy login), `Remote-User` or `True-Client-IP`
//!   would otherwise reach a server that believes what comes from gitgate's address.

use std::net::IpAddr;

use hyper::header::{self, GetAll, HeaderMap, HeaderName, HeaderValue};

use crate::network::Cidr;
use crate::request_id::RequestId;

/// Headers that belong to one connection and never cross the proxy.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The codings a header lists, over all its lines (`gzip, chunked`), in order; a value that is
/// not text is one coding, `?`, that nothing accepts.
pub(crate) fn codings(headers: &HeaderMap, name: HeaderName) -> Vec<&str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Whether the last coding of the last `Transfer-Encoding` line, empty items included, is
/// `chunked`: how hyper's client decides that an answer is chunked. `chunked,` (or `chunked`
/// and then an empty line) is one `chunked` to [`codings`], but hyper reads such an answer to
/// the connection's close and hands on its chunk lines as the body.
fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// Whether the request body's framing is one gitgate can pass on: `Transfer-Encoding` may only
/// be `chunked`. hyper removes the chunked framing and gitgate drops the header (hop-by-hop), so
/// any other coding (`gzip, chunked`) would reach the backend as a body it cannot tell is
/// encoded. Such requests get `501 Not Implemented` (RFC 9112, section 6.1), as from nginx;
/// git compresses with `Content-Encoding`, which passes through untouched.
pub fn unsupported_transfer_coding(inbound: &HeaderMap) -> Option<String> {
    let codings = codings(inbound, header::TRANSFER_ENCODING);
    // None, or exactly one `chunked`: hyper removes one layer of chunked framing, so a second
    // (`chunked, chunked`) would reach the backend as part of the body.
    if codings.is_empty() || (codings.len() == 1 && codings[0].eq_ignore_ascii_case("chunked")) {
        return None;
    }
    Some(format!(
        "Transfer-Encoding \"{}\" is not supported: gitgate passes only chunked request bodies \
         on (send compressed bodies with Content-Encoding)",
        codings.join(", ")
    ))
}

/// `coding` as git http-backend spells it, if it is one it reads (codings are case-insensitive
/// in HTTP, not in git).
fn known_content_coding(coding: &str) -> Option<&'static str> {
    ["gzip", "x-gzip", "identity"]
        .into_iter()
        .find(|k| coding.eq_ignore_ascii_case(k))
}

/// The request body's content coding as [`unsupported_content_coding`] read it (over all the
/// header's lines, empty list items skipped), normalised: what a backend must be told, so that
/// the body it decodes is the body gitgate let through. `None` when there is none — or when
/// the header was one that check refuses, which is never forwarded.
pub fn content_coding(inbound: &HeaderMap) -> Option<&'static str> {
    match codings(inbound, header::CONTENT_ENCODING).as_slice() {
        [one] => known_content_coding(one),
        _ => None,
    }
}

/// Whether the request body's `Content-Encoding` is one git's backends read: none, or exactly
/// one of `gzip`, `x-gzip` (what git sends) and `identity`. `git http-backend` reads only those;
/// any other would reach it as bytes it takes for a plain body, fail with "protocol error", and
/// the client would see a 200 with an empty answer. Such requests get `415` (RFC 9110, section
/// 15.5.16) and are never forwarded.
pub fn unsupported_content_coding(inbound: &HeaderMap) -> Option<String> {
    let codings = codings(inbound, header::CONTENT_ENCODING);
    match codings.as_slice() {
        [] => None,
        [one] if known_content_coding(one).is_some() => None,
        _ => Some(format!(
            "Content-Encoding \"{}\" is not supported: send the request body gzip-compressed \
             or uncompressed, as git does",
            codings.join(", ")
        )),
    }
}

/// Request headers passed on as the client sent them (see the module doc); `Content-Length`
/// and `Git-Protocol` are passed on too, checked on their own.
const PASSED_ON: [&str; 10] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-encoding",
    "content-type",
    "pragma",
    "range",
    "user-agent",
    "if-range",
];

/// Request headers gitgate removes and, where needed, sets itself.
const MANAGED: [&str; 8] = [
    "authorization",
    "proxy",
    "forwarded",
    "x-real-ip",
    "host",
    "expect",
    "x-request-id",
    crate::request_id::MARK_HEADER,
];

/// Longest `Git-Protocol` value passed on, to an HTTP upstream and to the CGI runner's
/// backend alike; git sends a few dozen bytes.
pub(crate) const MAX_GIT_PROTOCOL: usize = 256;

/// What gitgate knows about the request beyond its headers.
#[derive(Clone, Copy, Debug)]
pub struct Outbound<'a> {
    /// The address of the peer that connected to gitgate.
    pub peer: IpAddr,
    pub trusted_proxies: &'a [Cidr],
    /// `"http"` or `"https"`: how the client reached gitgate.
    pub proto: &'static str,
    /// The `:authority` of an HTTP/2 request (HTTP/1.1 has `Host` in the headers).
    pub authority: Option<&'a str>,
    pub identity_header: &'a HeaderName,
    /// The authenticated user.
    pub user: &'a str,
    /// gitgate's own `Authorization` for the upstream, if configured.
    pub upstream_auth: Option<&'a HeaderValue>,
    /// The request's id in gitgate's log, sent as `X-Request-Id`.
    pub request_id: RequestId,
}

/// Whether `name` is a header gitgate manages itself, so not usable as the identity header.
pub fn is_reserved(name: &HeaderName) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n)
        || MANAGED.contains(&n)
        || PASSED_ON.contains(&n)
        || n == "content-length"
        || n == "git-protocol"
        || (n.starts_with("x-forwarded-") && n != "x-forwarded-user")
}

/// Names looked up in every forwarded request, made once: a name given as text is checked and
/// matched against the standard ones at each lookup (about 300 instructions for
/// `Git-Protocol`, looked up in every git request).
static GIT_PROTOCOL: HeaderName = HeaderName::from_static("git-protocol");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The headers to send upstream for a request that arrived with `inbound`.
pub fn to_upstream(inbound: &HeaderMap, out: &Outbound<'_>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(inbound.len() + 5);
    let connection = ConnectionNames::of(inbound);
    for (name, value) in inbound {
        let n = name.as_str();
        // The identity header is never on the list (`is_reserved`, checked by the config).
        if !PASSED_ON.contains(&n) || connection.names(n) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    // The body's coding as the backend compares it: `git http-backend` matches `gzip` and
    // `x-gzip` case-sensitively and takes any other spelling (`GZIP`) for a plain body, while
    // the 415 check (`unsupported_content_coding`) lets every case through, as RFC 9110 does.
    if headers.contains_key(header::CONTENT_ENCODING) {
        if let [one] = codings(inbound, header::CONTENT_ENCODING).as_slice() {
            if let Ok(v) = HeaderValue::from_str(&one.to_ascii_lowercase()) {
                headers.insert(header::CONTENT_ENCODING, v);
            }
        }
    }
    // The body's length, once and as the plain number hyper frames the body by: over HTTP/2 a
    // client may repeat it (the h2 layer holds the body to the first value), and over HTTP/1.1
    // hyper takes `5, 5` and `010` — which nginx refuses (a list, with its own `400`) or hands
    // on as it came (`$content_length`), for git http-backend to read `010` in octal, as 8.
    if let Some(n) = stated_length(inbound) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }

    if let Some(v) = single(inbound, &GIT_PROTOCOL)
        .filter(|v| valid_git_protocol(v) && !connection.names("git-protocol"))
    {
        headers.insert(HeaderName::from_static("git-protocol"), v.clone());
    }

    let trusted = out.trusted_proxies.iter().any(|c| c.contains(out.peer));
    let host_field = inbound.get(header::HOST);
    let own_host = host_field
        .and_then(|v| v.to_str().ok())
        .or(out.authority)
        .filter(|h| valid_host(h));

    let chain = if trusted {
        forwarded_chain(inbound, out.trusted_proxies)
    } else {
        Vec::new()
    };
    let forwarded_for = match chain {
        mut chain if !chain.is_empty() => {
            chain.push(out.peer);
            let text: Vec<String> = chain.iter().map(IpAddr::to_string).collect();
            HeaderValue::from_str(&text.join(", ")).ok()
        }
        // The usual case, a client straight from the network: its address alone, spelled
        // on the stack.
        _ => {
            let mut buf = [0u8; 64];
            let len = spell_address(out.peer, &mut buf);
            HeaderValue::from_bytes(&buf[..len]).ok()
        }
    };
    if let Some(v) = forwarded_for {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }

    let proto = trusted
        .then(|| single(inbound, &X_FORWARDED_PROTO).and_then(|v| v.to_str().ok()))
        .flatten()
        .filter(|p| *p == "http" || *p == "https")
        .unwrap_or(out.proto);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
    );

    let forwarded_host = trusted
        .then(|| single(inbound, &X_FORWARDED_HOST).and_then(|v| v.to_str().ok()))
        .flatten()
        .filter(|h| valid_host(h));
    let host = match (forwarded_host, own_host) {
        (Some(h), _) => HeaderValue::from_str(h).ok(),
        // The client's own `Host` (nearly every request): its value shared, not copied.
        (None, Some(h)) if host_field.is_some_and(|v| v.as_bytes() == h.as_bytes()) => {
            host_field.cloned()
        }
        (None, h) => h.and_then(|h| HeaderValue::from_str(h).ok()),
    };
    if let Some(v) = host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), v);
    }

    headers.insert(out.identity_header.clone(), identity_value(out.user));
    headers.insert(
        HeaderName::from_static("x-request-id"),
        out.request_id.header_value(),
    );
    // This process's mark, after those of gitgates in front of it: a request that comes back
    // with it has looped (see `request_id`).
    headers.insert(
        HeaderName::from_static(crate::request_id::MARK_HEADER),
        crate::request_id::marks_to_send(inbound),
    );
    if let Some(auth) = out.upstream_auth {
        let mut auth = auth.clone();
        auth.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, auth);
    }
    headers
}

/// `ip` as its `Display` spells it, written into `buf`; how many bytes. An IPv4 address
/// (every request's `X-Forwarded-For`, nearly always) is spelled by hand: `core::fmt` took
/// about 1,000 instructions for it, a sixtieth of a whole hop. `buf` holds the longest IPv6
/// address (45 bytes).
fn spell_address(ip: IpAddr, buf: &mut [u8; 64]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut w = &mut buf[..];
            // 45 bytes at most: it fits.
            let _ = write!(w, "{ip}");
            64 - w.len()
        }
    }
}

/// Response headers that describe the upstream's own site, not the repository: its cookies
/// (gitgate never passes the client's `Cookie` on, so they only show the upstream's sessions),
/// its alternative services, a `Content-Location` that names its internal address (and so may
/// `Link` — its pages and resources — and `Refresh`, a redirect after a delay that browsers
/// follow and git never reads: neither is checked as `Location` is), and the name and version
/// of its software (`Server`, `X-Powered-By`: nginx's `proxy_pass` drops `Server` too), which
/// tell a client what to attack behind the gate.
const UPSTREAM_ONLY: [&str; 8] = [
    "set-cookie",
    "alt-svc",
    "content-location",
    "link",
    "refresh",
    "server",
    "x-powered-by",
    // gitgate's own mark, should an upstream echo the request's headers: it stays secret.
    crate::request_id::MARK_HEADER,
];

/// Whether a response header is an instruction to a web server in front of gitgate, not part of
/// the answer: nginx acts on `X-Accel-Redirect` (serve this internal location or file instead),
/// `X-Accel-Buffering`, `-Limit-Rate`, `-Expires` and `-Charset` from whatever it proxies — and
/// gitgate is what it proxies where nginx terminates TLS in front — and Apache and lighttpd on
/// `X-Sendfile` (lighttpd also `X-Sendfile2` and `X-LIGHTTPD-send-file`). Passed on, an upstream (or whatever answers on its behalf) could have the
/// front server send any file it can read.
fn is_for_a_front_server(name: &str) -> bool {
    name.starts_with("x-accel-") || name.starts_with("x-sendfile") || name == "x-lighttpd-send-file"
}

/// Whether an answer's header is for gitgate's side alone and never reaches the client: the
/// upstream's own-site headers ([`UPSTREAM_ONLY`]), an instruction to a front server
/// ([`is_for_a_front_server`]) and any `Authorization`. Asked of an HTTP upstream's answers
/// ([`to_client`]) and of the CGI backend's header block alike (`cgi::head`): git
/// http-backend sends none of them, but the runner may run a wrapper or another CGI program, and
/// its `X-Accel-Redirect` would have an nginx in front of gitgate serve any file it can read.
pub(crate) fn stays_behind_gitgate(name: &str) -> bool {
    UPSTREAM_ONLY.contains(&name) || is_for_a_front_server(name) || name == "authorization"
}

/// Make an upstream response's headers the client's: hop-by-hop headers, whatever
/// `Connection` names, any `Authorization`, the upstream's own-site headers (`Set-Cookie`,
/// `Alt-Svc`, `Content-Location`, `Link`, `Refresh`, `Server`, `X-Powered-By`) and
/// instructions to a front server (`X-Accel-*`, `X-Sendfile`) are removed, in place — a
/// response usually carries few of them, so usually nothing else moves and nothing is
/// allocated.
///
/// The body's framing is hyper's to redo: an answer the upstream sent chunked loses its
/// `Content-Length` too (RFC 9112, section 6.3: with `Transfer-Encoding` present it means
/// nothing, and passed on it would promise bytes that never come). Any other transfer coding
/// (`gzip, chunked`) cannot be passed on — its header goes, the coded bytes would stay — so it
/// is an `Err`.
pub fn to_client(headers: &mut HeaderMap) -> Result<(), String> {
    let codings = codings(headers, header::TRANSFER_ENCODING);
    match codings.as_slice() {
        [] if headers.contains_key(header::TRANSFER_ENCODING) => {
            return Err(
                "the upstream git server sent an empty Transfer-Encoding, which gitgate cannot \
                 pass on"
                    .to_owned(),
            )
        }
        [] => one_content_length(headers)?,
        [one] if one.eq_ignore_ascii_case("chunked") && last_coding_is_chunked(headers) => {
            headers.remove(header::CONTENT_LENGTH);
        }
        _ => {
            return Err(format!(
                "the upstream git server sent Transfer-Encoding \"{}\", which gitgate cannot \
                 pass on",
                codings.join(", ")
            ))
        }
    }
    let connection = ConnectionNames::of(headers);
    let gone: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            HOP_BY_HOP.contains(&n)
                || stays_behind_gitgate(n)
                || is_for_shared_caches(n)
                || connection.names(n)
        })
        .cloned()
        .collect();
    for name in gone {
        headers.remove(name);
    }
    cache_control_private(headers);
    Ok(())
}

/// Drops the `Content-Length` of a `204` answer, which says none (RFC 9110, section 8.6: a
/// server must not send one in it), from an upstream or the CGI program. hyper leaves it out
/// over HTTP/1.1, but passes it on over HTTP/2, where the client (nghttp2: curl, and so git)
/// refuses the whole answer as malformed (`PROTOCOL_ERROR`), while gitgate logged a `204`.
pub fn no_length_in_a_204(status: hyper::StatusCode, headers: &mut HeaderMap) {
    if status == hyper::StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// Keep an answer to an authenticated request out of shared caches. git http-backend marks
/// the files of dumb HTTP — loose objects, packs, their indexes — `Cache-Control: public,
/// max-age=31536000` (they never change), and `public` (like `s-maxage`, `must-revalidate` and
/// `proxy-revalidate`) is what lets a shared cache in front of gitgate answer later requests
/// with it, credentials or none (RFC 9111 §3.5): a repository's objects to anyone. Such an
/// answer becomes `private` (the client's own cache may keep it), the other directives kept,
/// byte for byte, but `public` and `s-maxage`. An answer that is `no-store` or (unqualified)
/// `private` already, or says nothing of shared caches, is left as it is. `CDN-Cache-Control`
/// and `Surrogate-Control`, which speak to shared caches alone (RFC 9213), are dropped.
pub fn private_to_shared_caches(headers: &mut HeaderMap) {
    let for_caches: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_for_shared_caches(n.as_str()))
        .cloned()
        .collect();
    for name in for_caches {
        headers.remove(name);
    }
    cache_control_private(headers);
}

/// The `Cache-Control` part of [`private_to_shared_caches`], for [`to_client`], whose one pass
/// over the answer's headers drops those for shared caches alone with the rest.
fn cache_control_private(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CACHE_CONTROL) {
        return;
    }
    let values: Vec<HeaderValue> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .cloned()
        .collect();
    // A value that does not read as directives (a quote left open, a `;` for a `,`) may still
    // say `public` to a cache that looks for the word: it is made `private`, whole.
    let Some(directives) = values
        .iter()
        .map(|v| cache_directives(v.as_bytes()))
        .collect::<Option<Vec<Vec<&[u8]>>>>()
        .map(|lines| lines.concat())
    else {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        return;
    };
    // A directive's name, lower-cased, and whether it has an argument (`private="set-cookie"`
    // keeps only that field from shared caches: the rest may be stored).
    let name = |d: &[u8]| {
        let end = d.iter().position(|&b| b == b'=').unwrap_or(d.len());
        (d[..end].trim_ascii().to_ascii_lowercase(), end < d.len())
    };
    let is = |d: &[u8], wanted: &[u8]| name(d).0 == wanted;
    if directives
        .iter()
        .any(|d| is(d, b"no-store") || name(d) == (b"private".to_vec(), false))
    {
        return;
    }
    let shared = |d: &&[u8]| {
        let (n, _) = name(d);
        matches!(
            n.as_slice(),
            b"public" | b"s-maxage" | b"must-revalidate" | b"proxy-revalidate"
        )
    };
    if !directives.iter().any(shared) {
        return;
    }
    let mut value = b"private".to_vec();
    for d in directives
        .iter()
        .filter(|d| !is(d, b"public") && !is(d, b"s-maxage"))
    {
        value.extend_from_slice(b", ");
        value.extend_from_slice(d);
    }
    let value =
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| HeaderValue::from_static("private"));
    headers.insert(header::CACHE_CONTROL, value);
}

/// Whether a header speaks to shared caches alone: RFC 9213's `CDN-Cache-Control` and its
/// family of targeted fields (`Cloudflare-CDN-Cache-Control`, ...), `Surrogate-Control`, and
/// Akamai's `Edge-Control` and `Akamai-Cache-Control`.
fn is_for_shared_caches(name: &str) -> bool {
    name.ends_with("cdn-cache-control")
        || matches!(
            name,
            "surrogate-control" | "edge-control" | "akamai-cache-control"
        )
}

/// The directives of one `Cache-Control` line, trimmed, split at the commas that are not inside
/// a quoted string (`no-cache="set-cookie, x"` is one directive); `None` for a line that is not
/// a list of directives: a quote left open, a name or value that is neither a token nor a quoted
/// string (`max-age=600; public`).
fn cache_directives(line: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in line.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    out.push(&line[start..]);
    let directives: Vec<&[u8]> = out
        .into_iter()
        .map(<[u8]>::trim_ascii)
        .filter(|d| !d.is_empty())
        .collect();
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    // `name` or `name=value`, the value a token or a quoted string (RFC 9111 §5.2).
    let directive = |d: &&[u8]| {
        let (name, value) = match d.iter().position(|&b| b == b'=') {
            Some(at) => (d[..at].trim_ascii(), Some(d[at + 1..].trim_ascii())),
            None => (&d[..], None),
        };
        let value_ok = value.is_none_or(|v| {
            (v.len() >= 2 && v.starts_with(b"\"") && v.ends_with(b"\""))
                || (!v.is_empty() && v.iter().all(token))
        });
        !name.is_empty() && name.iter().all(token) && value_ok
    };
    directives.iter().all(directive).then_some(directives)
}

/// The answer's `Content-Length`, as one value. hyper's client takes a repeated one whose
/// values agree (`5` twice, or `5, 5`) and frames the body by it, but leaves the header as it
/// came; passed on, HTTP/2 clients refuse the answer (a `PROTOCOL_ERROR`, while the log says
/// it was complete) and HTTP/1.1 ones may. RFC 9110 §8.6 lets a recipient collapse such a list
/// to its one value; values that disagree, or are no length, are an `Err` (a `502`).
fn one_content_length(headers: &mut HeaderMap) -> Result<(), String> {
    match the_one_length(headers) {
        Ok(Length::Usual | Length::None) => Ok(()),
        Ok(Length::Repeated(n)) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Ok(())
        }
        Err(()) => Err(format!(
            "the upstream git server sent Content-Length {}, which is not one length",
            all_content_lengths(headers)
        )),
    }
}

/// A request body's length when it has a trustworthy one: one `Content-Length` of digits, and
/// no `Transfer-Encoding` (a chunked body has none).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let v = values.next()?.to_str().ok()?.trim();
    if values.next().is_some() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The one length a message's `Content-Length` lines state, as a number (leading zeros and
/// repeats gone); `None` without one, or with lines that state none.
fn stated_length(headers: &HeaderMap) -> Option<u64> {
    match the_one_length(headers) {
        Ok(Length::Usual) => headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.parse().ok()),
        Ok(Length::Repeated(n)) => Some(n),
        Ok(Length::None) | Err(()) => None,
    }
}

/// Why a request's `Content-Length` cannot be passed on, if it cannot: it must be one length
/// (digits only), however often repeated. Over HTTP/1.1 hyper refuses any other itself; over
/// HTTP/2 the h2 layer resets the stream for most, but reads an empty value as `0` and holds
/// only the first of repeated ones — forwarded, the backend would get a header it refuses
/// (nginx answers its own `400`) or a length the body does not have. Such requests get `400`
/// and are never forwarded.
///
/// A length past `i64::MAX` is refused too: hyper reads up to 2^64-3, but git http-backend
/// reads `CONTENT_LENGTH` as a signed number and dies on a larger one (after it started), and
/// web servers hold it in an `off_t` (nginx answers its own `400` page).
pub fn unusable_content_length(inbound: &HeaderMap) -> Option<String> {
    match the_one_length(inbound) {
        Ok(Length::None) => return None,
        Ok(_) => {}
        Err(()) => {
            return Some(format!(
                "Content-Length {} is not one length: send the body's length in bytes once, \
                 or no Content-Length",
                all_content_lengths(inbound)
            ))
        }
    }
    // Digits past `u64::MAX` are no `u64` either: as much too large.
    match stated_length(inbound) {
        Some(n) if i64::try_from(n).is_ok() => None,
        _ => Some(format!(
            "Content-Length {} is more than any git server reads (at most {} bytes): send the \
             body's length in bytes, or no Content-Length",
            all_content_lengths(inbound),
            i64::MAX
        )),
    }
}

/// What the `Content-Length` lines of a message say.
enum Length {
    /// None at all.
    None,
    /// One line, digits only: the usual message, nothing to do.
    Usual,
    /// Repeated (lines, or a list in one), the values agreeing on this one.
    Repeated(u64),
}

/// The one length that `headers`' `Content-Length` lines state, or `Err` if they state none
/// (empty, not digits) or several that disagree.
fn the_one_length(headers: &HeaderMap) -> Result<Length, ()> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(Length::None);
    };
    let digits = |b: &[u8]| !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    if values.next().is_none() && digits(first.as_bytes()) {
        return Ok(Length::Usual);
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|p| digits(p.as_bytes()))
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    length.map(Length::Repeated).ok_or(())
}

/// Every `Content-Length` value of `headers`, quoted, for a message.
fn all_content_lengths(headers: &HeaderMap) -> String {
    let all: Vec<String> = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .map(|v| {
            format!(
                "\"{}\"",
                String::from_utf8_lossy(v.as_bytes()).escape_debug()
            )
        })
        .collect();
    all.join(", ")
}

/// What becomes of an upstream's `Location` on its way to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect {
    /// Passed on as it is: a relative reference, a path that is not the upstream's but is
    /// gitgate's (under its git prefix), a URL of gitgate's own as the client named it.
    Unchanged,
    /// Away from gitgate: another site, or a path of gitgate's host outside its git prefix (a
    /// `..` climbing out of it, say). git would follow it with its token — in the URL or in
    /// `http.extraHeader` — so it is not passed on (a 502).
    Away,
    /// Rewritten to this absolute path under gitgate's git prefix.
    To(String),
    /// A URL on the upstream's own origin outside its base path (a login page, say): passing it
    /// on would send git to an internal address, around the gate, so the answer is a 502.
    OffBase,
    /// A URL whose host gitgate cannot tell from the upstream's own (`%`-encoded, a `\` in
    /// it, a port that is not one): it might be the upstream, so it is not passed on (a 502).
    Unsure,
}

/// The upstream's own address, as a `Location` may name it: compared by value, not by text, so
/// that another spelling of it is still recognised and never sends git around the gate. curl
/// (git's HTTP library) reads more spellings than Rust's parsers: `[0::1]` for `[::1]`,
/// `::ffff:127.0.0.1`, `127.1`, `2130706433` and `0x7f.0.0.1` for `127.0.0.1`, `localhost`
/// (and `*.localhost`, `0.0.0.0`, `[::]`) for this host's loopback, a trailing dot, the default
/// port written out or left out, the other scheme, one or three slashes after `http:`. A host
/// it cannot read is [`Redirect::Unsure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamOrigin {
    host: OriginHost,
    port: u16,
    /// The port its scheme implies (`80` or `443`), for a `Location` that writes none.
    default_port: u16,
    /// Named only as it is: the same scheme, port and host, no other spelling of this host's
    /// loopback (see [`UpstreamOrigin::exactly`]).
    exact: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum OriginHost {
    /// An IP literal, IPv4-mapped IPv6 addresses as IPv4.
    Ip(IpAddr),
    /// A name, in lower case, without a trailing dot.
    Name(String),
}

/// A `Location`'s host, as read for comparing with the upstream's.
enum HostRead {
    Host(OriginHost),
    /// Not a host gitgate can read with confidence.
    Unsure,
}

impl OriginHost {
    /// `host` as a URL writes it (IPv6 in brackets, IPv4 in any form curl takes).
    fn read(host: &str) -> HostRead {
        let unsure = HostRead::Unsure;
        if host.is_empty() || host.contains('%') {
            return unsure;
        }
        if let Some(bare) = host.strip_prefix('[') {
            return match bare.strip_suffix(']').map(str::parse::<std::net::Ipv6Addr>) {
                Some(Ok(ip)) => HostRead::Host(OriginHost::Ip(IpAddr::V6(ip).to_canonical())),
                _ => unsure,
            };
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let label = |b: u8| b.is_ascii_alphanumeric() || b"-_~".contains(&b);
        if name.is_empty()
            || !name
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(label))
        {
            return unsure;
        }
        let last = name.rsplit('.').next().unwrap_or_default();
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        // A host whose last label is a number is an IPv4 address if curl reads one in it (else
        // it looks the name up, as `git.example.123`, or fails on it, as `127.0.0.256`).
        if numeric {
            if let Some(ip) = ipv4_in_any_form(&name) {
                return HostRead::Host(OriginHost::Ip(IpAddr::V4(ip)));
            }
        }
        HostRead::Host(OriginHost::Name(name))
    }

    /// `host` from `[upstream] url`, which names it plainly.
    fn parse(host: &str) -> OriginHost {
        match OriginHost::read(host) {
            HostRead::Host(h) => h,
            HostRead::Unsure => OriginHost::Name(host.to_ascii_lowercase()),
        }
    }

    /// Whether the two name one server; every name for this host (loopback, `localhost`, the
    /// unspecified address, which reaches it on Linux) is one.
    fn same(&self, other: &OriginHost) -> bool {
        let this_host = |h: &OriginHost| match h {
            OriginHost::Ip(ip) => ip.is_loopback() || ip.is_unspecified(),
            OriginHost::Name(name) => name == "localhost" || name.ends_with(".localhost"),
        };
        self == other || (this_host(self) && this_host(other))
    }
}

/// An IPv4 address in any of the forms curl and the URL Standard read: one to four parts,
/// each decimal, octal (a leading `0`) or hexadecimal (`0x`), the last filling the bytes left
/// (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`).
pub(crate) fn ipv4_in_any_form(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let number = |p: &str| -> Option<u64> {
        if let Some(hex) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            return if hex.is_empty() {
                Some(0)
            } else {
                u64::from_str_radix(hex, 16).ok()
            };
        }
        match p.strip_prefix('0') {
            Some(octal) if !octal.is_empty() => u64::from_str_radix(octal, 8).ok(),
            _ => p.parse().ok(),
        }
    };
    let numbers: Vec<u64> = parts.iter().map(|p| number(p)).collect::<Option<_>>()?;
    let (last, first) = numbers.split_last()?;
    if first.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (5 - numbers.len())) {
        return None;
    }
    let mut value = *last;
    for (i, n) in first.iter().enumerate() {
        value += n << (8 * (3 - i));
    }
    u32::try_from(value).ok().map(std::net::Ipv4Addr::from)
}

/// Where a `Location` points, as far as the upstream's origin is concerned.
enum Named<'a> {
    /// The upstream's origin; what follows it.
    Upstream(&'a str),
    /// Another server, or no server (a path or relative reference).
    Other,
    Unsure,
}

impl UpstreamOrigin {
    /// The origin of `[upstream] url`: its host and port (or its scheme's default).
    pub fn new(https: bool, authority: &hyper::http::uri::Authority) -> UpstreamOrigin {
        let default_port = if https { 443 } else { 80 };
        UpstreamOrigin {
            host: OriginHost::parse(authority.host()),
            port: authority.port_u16().unwrap_or(default_port),
            default_port,
            exact: false,
        }
    }

    /// gitgate's own origin as the client named it (its `Host`), matched only as it is: another
    /// loopback address or spelling on the same port may be another process (anyone on the
    /// host can listen on `[::1]:PORT` or `127.0.0.2:PORT`), and `http://` to an https
    /// gitgate's name is port 80, in clear text — not gitgate either.
    pub fn exactly(https: bool, authority: &hyper::http::uri::Authority) -> UpstreamOrigin {
        UpstreamOrigin {
            exact: true,
            ..UpstreamOrigin::new(https, authority)
        }
    }

    /// Whether `location` is an absolute (`http:`, `https:`, with any number of slashes, as
    /// curl reads it) or scheme-relative (`//`) URL naming this origin, user information left
    /// out; and what follows the origin if so.
    fn names<'a>(&self, location: &'a str) -> Named<'a> {
        let slashes = ['/', '\\'];
        let scheme_end = location.find(':').filter(|&c| {
            c > 0
                && location[..c]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        });
        let (scheme_port, after) = match scheme_end {
            Some(colon) => match location[..colon].to_ascii_lowercase().as_str() {
                "http" => (Some(80), &location[colon + 1..]),
                "https" => (Some(443), &location[colon + 1..]),
                // `mailto:`, `ftp://`: no server git would go to for its repository (curl
                // refuses to follow them).
                _ => return Named::Other,
            },
            None if location.starts_with("//") || location.starts_with("\\\\") => (None, location),
            None => return Named::Other,
        };
        let after = after.trim_start_matches(slashes);
        // The authority ends where curl ends it: a `\` inside it is not an end (curl takes
        // `http://x\@127.0.0.1/` for user `x\` at 127.0.0.1), and one left in the host is
        // not read.
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        if host_port.contains('\\') {
            return Named::Unsure;
        }
        // The port is what follows the last ':' outside an IPv6 literal's brackets.
        let (host, port) = match host_port.rfind(':') {
            Some(i) if !host_port[i..].contains(']') => {
                (&host_port[..i], Some(&host_port[i + 1..]))
            }
            _ => (host_port, None),
        };
        let host = match OriginHost::read(host) {
            HostRead::Host(h) => h,
            HostRead::Unsure => return Named::Unsure,
        };
        let port_matches = match port.filter(|p| !p.is_empty()) {
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u16>().ok() == Some(self.port)
            }
            Some(_) => return Named::Unsure,
            // Exactly: the port its scheme (or, scheme-relative, this origin's) implies.
            None if self.exact => scheme_port.unwrap_or(self.default_port) == self.port,
            // No port: the one its scheme implies; the upstream may build its URLs with the
            // other scheme (told `X-Forwarded-Proto: https`), so this origin's own default too.
            None => scheme_port == Some(self.port) || self.port == self.default_port,
        };
        let same = if self.exact {
            scheme_port.is_none_or(|p| p == self.default_port) && host == self.host
        } else {
            host.same(&self.host)
        };
        if port_matches && same {
            Named::Upstream(rest)
        } else {
            Named::Other
        }
    }
}

/// Where an upstream's redirect should send the client.
///
/// An upstream that redirects names its own address and path (`http://127.0.0.1:3000/git/...`,
/// or `/git/...`): passed on, it would send git to an internal address, around the gate, or to a
/// path gitgate does not serve. A URL on the upstream's own origin, or an absolute path, under
/// the upstream's base path becomes the same place under gitgate's git prefix, as an
/// absolute-path reference (no scheme or host: the client resolves it against the URL it used,
/// so nothing here trusts a `Host` header). A URL on the upstream's own origin outside the base
/// path is [`Redirect::OffBase`].
///
/// git follows a redirect with its credentials — a token in the URL, or in `http.extraHeader`
/// as CI sets it — so nothing that leads away from gitgate is passed on ([`Redirect::Away`]):
/// another site, a path with a `.` or `..` segment (plain or `%2e`-encoded) that could climb
/// out of the git prefix, a path outside it, one with an empty segment right after the
/// upstream's base path (rewritten under the root prefix it would begin `//`: another site),
/// any holding a tab, and a URL of the upstream's own holding a `\` (WHATWG parsers drop the
/// one and read the other as `/`, so either can hide a `//` or a `..`), and any beginning or
/// ending with a space (which they strip: ` /a/x` is the path `/a/x`, not a relative reference).
/// What stays on gitgate is passed on as it is: a relative reference without dot segments, an
/// absolute path under the git prefix, and a URL naming gitgate itself as the client did
/// (`gitgate`, from its request's host) under it.
///
/// `upstream_base` and `client_prefix` are `""` for the root or a path like `/git` (no trailing
/// `/`).
pub fn location_to_client(
    location: &str,
    upstream: &UpstreamOrigin,
    upstream_base: &str,
    client_prefix: &str,
    gitgate: Option<&UpstreamOrigin>,
) -> Redirect {
    // WHATWG parsers (browsers, Python's urllib) drop a tab from anywhere in a URL, so no check
    // below would see what it hides: `/\t/evil.example` is `//evil.example` to them, `.\t.` a
    // `..`. A header value may hold one; git sends none. They also strip spaces from either
    // end: `  /a/x` is the path `/a/x` to them, not a relative reference.
    if location.contains('\t') || location.starts_with(' ') || location.ends_with(' ') {
        return Redirect::Away;
    }
    let on_origin = match upstream.names(location) {
        Named::Upstream(rest) => Some(rest),
        Named::Other => None,
        Named::Unsure => return Redirect::Unsure,
    };
    let path = match on_origin {
        Some("") => "/",
        Some(rest) if rest.starts_with(['?', '#']) => return Redirect::OffBase,
        Some(rest) => rest,
        None => {
            if let Some(Named::Upstream(rest)) = gitgate.map(|g| g.names(location)) {
                // Back to gitgate, as the client named it: fine under its git prefix.
                let rest = if rest.is_empty() { "/" } else { rest };
                return if stays_under(rest, client_prefix) {
                    Redirect::Unchanged
                } else {
                    Redirect::Away
                };
            }
            if is_a_url(location) || location.contains('\\') {
                return Redirect::Away;
            }
            if !location.starts_with('/') {
                // Relative to the request's own path, which is under the git prefix.
                return if has_dot_segments(location) {
                    Redirect::Away
                } else {
                    Redirect::Unchanged
                };
            }
            location
        }
    };
    let outside = || {
        if on_origin.is_some() {
            Redirect::OffBase
        } else {
            Redirect::Away
        }
    };
    // A `\` is a `/` in an http(s) URL to WHATWG parsers: `team\..\..\x` climbs out.
    if !path.starts_with('/')
        || path.starts_with("//")
        || has_dot_segments(path)
        || path.contains('\\')
    {
        return outside();
    }
    let Some(tail) = path
        .strip_prefix(upstream_base)
        .filter(|t| t.is_empty() || t.starts_with(['/', '?', '#']))
    else {
        // `/gitx/...` is not under `/git`. A path of gitgate's own (an upstream that knows
        // gitgate's URLs) still leads through the gate.
        return if on_origin.is_none() && stays_under(path, client_prefix) {
            Redirect::Unchanged
        } else {
            outside()
        };
    };
    // An empty segment (or a `\`) right after the base path names no repository, and under the
    // root git prefix the rewrite would begin `//`: a URL of another site (`/git//evil.example/x`
    // would send git to evil.example).
    if tail.starts_with("//") || tail.starts_with("/\\") {
        return outside();
    }
    let mut out = String::with_capacity(client_prefix.len() + tail.len() + 1);
    out.push_str(client_prefix);
    if !tail.starts_with('/') {
        out.push('/');
    }
    out.push_str(tail);
    if out == location {
        Redirect::Unchanged
    } else {
        Redirect::To(out)
    }
}

/// Whether an absolute path is under `prefix` (`""` or `/scm`) and has no dot segment.
fn stays_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|t| t.starts_with('/') || (t.is_empty() && !prefix.is_empty()))
        && !path.starts_with("//")
        && !has_dot_segments(path)
        && !path.contains('\\')
}

/// Whether `location` is a URL (a scheme, or `//` for the scheme of the page): it leads to a
/// server of its own, not to a path of gitgate's.
pub(crate) fn is_a_url(location: &str) -> bool {
    let scheme = location.find(':').is_some_and(|c| {
        c > 0
            && location.as_bytes()[0].is_ascii_alphabetic()
            && location[..c]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    scheme || location.starts_with("//")
}

/// Whether the path of a reference (what comes before `?` or `#`) may lead out of the path it
/// seems to be under: a `.` or `..` segment, plain or `%2e`-encoded, or an encoded `/` or `\`
/// (`%2F..%2F`: a front proxy that decodes it before routing sends `/scm/a/%2F..%2F..%2Fx` to
/// `/x`).
fn has_dot_segments(reference: &str) -> bool {
    let end = reference.find(['?', '#']).unwrap_or(reference.len());
    let path = reference[..end].to_ascii_lowercase();
    path.contains("%2f")
        || path.contains("%5c")
        || path.split('/').any(|segment| {
            let s = segment.replace("%2e", ".");
            s == "." || s == ".."
        })
}

/// Whether a `Connection` header lists `name` (a lower-case header name), so that the header
/// belongs to the connection, not the message. Allocation-free: it runs for every header of
/// every request and response.
pub(crate) fn named_by_connection(headers: &HeaderMap, name: &str) -> bool {
    named_in(&headers.get_all(header::CONNECTION), name)
}

/// [`named_by_connection`] with the `Connection` values found already.
fn named_in(connection: &GetAll<'_, HeaderValue>, name: &str) -> bool {
    connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name))
}

/// What a request's or an answer's `Connection` header names, read once for a pass over all its
/// fields, each of which is asked about ([`ConnectionNames::names`]): not looked up, checked
/// as text and split again for every field. The first few names are kept; a header naming
/// more (no client or server does) is read again for each field, as [`named_by_connection`]
/// reads it.
struct ConnectionNames<'h> {
    first: [&'h str; 4],
    len: usize,
    more: bool,
    all: GetAll<'h, HeaderValue>,
}

impl<'h> ConnectionNames<'h> {
    fn of(headers: &'h HeaderMap) -> Self {
        let all = headers.get_all(header::CONNECTION);
        let mut first = [""; 4];
        let (mut len, mut more) = (0, false);
        let listed = all
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for t in listed {
            if len == first.len() {
                more = true;
                break;
            }
            first[len] = t.trim();
            len += 1;
        }
        ConnectionNames {
            first,
            len,
            more,
            all,
        }
    }

    /// Whether `name` is one of the names, as [`named_by_connection`] tells.
    fn names(&self, name: &str) -> bool {
        if self.more {
            return named_in(&self.all, name);
        }
        self.first[..self.len]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// The header's value if it is present exactly once.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// A trusted proxy's `X-Forwarded-For` that names no client address gitgate can read: the
/// request is refused, since any address put in its place (the proxy's own) would be shared by
/// every client behind that proxy.
#[derive(Debug, PartialEq, Eq)]
pub struct UnreadableForwardedFor;

/// The address a request really comes from. A peer that is not a trusted proxy is the client.
/// Behind trusted proxies it is the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy: each entry was written by the hop to its right, so the walk from the right
/// reads only what trusted proxies wrote, and stops at the first address they vouch for.
/// Entries further left were written by the client and prove nothing — garbage there changes
/// nothing. A chain of trusted proxies only names its left-most entry; no header, the peer.
///
/// An entry the walk reaches that is not an address (a proxy writing `unknown`, or passing on
/// a client's header unchecked) is an error, never the peer: the peer is the load balancer, and
/// its address would be every client's — for allowed networks, the throttle and the audit.
/// So is a trusted peer's `Forwarded` (RFC 7239: HAProxy's `option forwarded`) without any
/// `X-Forwarded-For`: it names a client gitgate does not read (nor does nginx's realip), and
/// taken for a request of the proxy's own it would make the proxy every client again.
pub fn client_address(
    peer: IpAddr,
    inbound: &HeaderMap,
    trusted: &[Cidr],
) -> Result<IpAddr, UnreadableForwardedFor> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Ok(peer);
    }
    if !inbound.contains_key("x-forwarded-for") && inbound.contains_key("forwarded") {
        return Err(UnreadableForwardedFor);
    }
    let mut client = peer;
    for entry in forwarded_from_the_right(inbound) {
        client = entry.ok_or(UnreadableForwardedFor)?;
        if !is_trusted(client) {
            return Ok(client);
        }
    }
    Ok(client)
}

/// The entries of `X-Forwarded-For`, right to left (the last header line first): `None` for one
/// that is not an address (nor an address with the port some proxies add, `192.0.2.1:4711`,
/// `[2001:db8::1]:4711`), an empty one included — a trusted proxy's empty entry, skipped, would
/// let the walk reach one the client wrote; a header with nothing in it, skipped, would make
/// the proxy's own address every client's — or for a header line that is not text.
fn forwarded_from_the_right(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| {
            let text = value.to_str();
            let not_text = text.is_err().then_some(None);
            text.unwrap_or_default()
                .rsplit(',')
                .map(forwarded_address)
                .chain(not_text)
        })
}

/// One entry as an address, in the form the rest of gitgate names it: an IPv4-mapped IPv6
/// address (`::ffff:10.0.0.5`, as nginx on a dual-stack listener writes `$remote_addr`) as the
/// IPv4 address it is, as for a TCP peer — else one client would be logged, audited and
/// throttled under two spellings.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        // `[2001:db8::1]` without a port, as with one.
        .or_else(|| {
            let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
        })
        .map(|ip| ip.to_canonical())
}

/// The addresses of a trusted proxy's `X-Forwarded-For` to pass on, left to right: those the
/// walk of [`client_address`] reads — the client and the trusted proxies right of it. What is
/// further left the client wrote itself (a proxy such as nginx's `$proxy_add_x_forwarded_for`
/// appends to the client's own header), so it is dropped as a direct client's header is: an
/// upstream that takes the left-most entry for the client (as many do) would be told an address
/// of the client's choosing. Nor is anything left of an entry that is not an address.
fn forwarded_chain(headers: &HeaderMap, trusted: &[Cidr]) -> Vec<IpAddr> {
    let mut chain = Vec::new();
    for entry in forwarded_from_the_right(headers) {
        let Some(ip) = entry else { break };
        chain.push(ip);
        if !trusted.iter().any(|c| c.contains(ip)) {
            break; // the client
        }
    }
    chain.reverse();
    chain
}

/// `version=2`, `version=2:object-format=sha256`: what git sends, nothing that could smuggle
/// something else into the backend's environment.
pub fn valid_git_protocol(v: &HeaderValue) -> bool {
    is_git_protocol(v.as_bytes())
}

/// `Git-Protocol` as git itself writes it: `key[=value]` items joined by `:`, from a small
/// alphabet, at most [`MAX_GIT_PROTOCOL`] bytes. The one rule for both upstreams: what an HTTP
/// upstream is sent, the CGI runner's backend gets as `GIT_PROTOCOL`, and the reverse.
pub(crate) fn is_git_protocol(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_GIT_PROTOCOL
        && b.split(|&c| c == b':').all(|item| {
            !item.is_empty()
                && item
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'=' | b'.' | b'_' | b'-'))
        })
}

/// A host name or address with an optional port, as gitgate takes a `Host` (and passes it on
/// as `X-Forwarded-Host`): of letters, digits and `.-:[]_` only — frameworks read the header as
/// a list (`,`) or with parameters (`;`), and no DNS name or address holds the rest of what
/// RFC 9110 lets a `Host` hold, so a request whose `Host` holds them is refused (the gate's
/// `host_problem`) rather than passed on without one.
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes().all(|c| HOST_BYTES[usize::from(c)])
        && is_host_and_port(h.as_bytes())
}

/// The bytes [`valid_host`] takes: letters, digits and `.-:[]_`. A table, since every git
/// request's `Host` is looked at twice (the gate's `host_problem`, then [`to_upstream`]): a
/// `contains` of a short list per byte cost about 330 instructions more a look (callgrind).
const HOST_BYTES: [bool; 256] = byte_set(b".-:[]_");

/// The bytes a host name or IPv4 address in a `Host` may hold (RFC 3986's unreserved and
/// sub-delimiting characters, and `%`), for [`is_host_and_port`].
const NAME_BYTES: [bool; 256] = byte_set(b"-._~!$&'()*+,;=%");

/// Letters, digits and `extra`, as a table indexed by byte.
const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut b = 0;
    while b < 256 {
        set[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        set[extra[i] as usize] = true;
        i += 1;
    }
    set
}

/// Whether `h` is a `Host` value as RFC 9110 (section 7.2) writes one: a host — a name or an
/// IPv4 address (letters, digits, `-._~`, and the rest of RFC 3986's unreserved and
/// sub-delimiting characters), or an IPv6 address in brackets — and an optional `:port` of
/// digits from 1 to 65535, leading zeros read as `u16` reads them (`:00080` is port 80, as the
/// config's URLs read it). `[::1`, `]]::[[`, `:::`, `[]`, `[::1]:99999` and `host:0` are not:
/// no client reaches a server on port 0, which the config refuses too, and a backend given it
/// as the forwarded host would write it into the links it makes.
pub fn is_host_and_port(h: &[u8]) -> bool {
    let (host, port) = match h.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let v6 = std::str::from_utf8(&rest[..end])
                .ok()
                .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok());
            if v6.is_none() {
                return false;
            }
            match &rest[end + 1..] {
                [] => return true,
                [b':', port @ ..] => (&b""[..], Some(port)),
                _ => return false,
            }
        }
        None => match h.iter().rposition(|&b| b == b':') {
            Some(colon) => (&h[..colon], Some(&h[colon + 1..])),
            None => (h, None),
        },
    };
    // Up to five digits, from 1 to 65535 (empty is the default port).
    let port_ok = port.is_none_or(|p| {
        p.is_empty()
            || (p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && (1..=u32::from(u16::MAX))
                    .contains(&p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))))
    });
    host.iter().all(|&b| NAME_BYTES[usize::from(b)]) && port_ok
}

/// The user as a header value: visible ASCII and spaces as they are, anything else (and `%`)
/// percent-encoded, so every name can be sent and none can break the header.
fn identity_value(user: &str) -> HeaderValue {
    let plain = |b: u8| (b == b' ' || b.is_ascii_graphic()) && b != b'%';
    if user.bytes().all(plain) {
        // Nothing to encode (almost every user name): no intermediate string.
        return HeaderValue::from_str(user).unwrap_or_else(|_| HeaderValue::from_static("-"));
    }
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    /// The names of a `Connection` header read once are the names it is asked about each time:
    /// trimmed, in any case, over several lines, past the few kept (read again), and none from a
    /// value that is not text.
    #[test]
    fn connection_names_read_once_are_those_read_for_each_field() {
        let cases: [&[&[u8]]; 6] = [
            &[],
            &[b"keep-alive"],
            &[b"close, X-Secret ,git-protocol"],
            &[b"TE", b" upgrade,keep-alive "],
            &[b"a, b, c, d, e, X-Secret, git-protocol"],
            &[b"x-secret, caf\xc3\xa9", b"git-protocol"],
        ];
        let asked = [
            "keep-alive",
            "close",
            "x-secret",
            "git-protocol",
            "te",
            "upgrade",
            "e",
            "user-agent",
        ];
        for lines in cases {
            let mut h = HeaderMap::new();
            for line in lines {
                h.append(header::CONNECTION, HeaderValue::from_bytes(line).unwrap());
            }
            let once = super::ConnectionNames::of(&h);
            for name in asked {
                assert_eq!(
                    once.names(name),
                    named_by_connection(&h, name),
                    "{name} in {h:?}"
                );
            }
        }
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("a, b, c, d, e, X-Secret"),
        );
        assert!(
            super::ConnectionNames::of(&h).names("x-secret"),
            "past the few kept"
        );
    }

    #[test]
    fn only_chunked_request_framing_is_passed_on() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            unsupported_transfer_coding(&h)
        };
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["chunked"]), None);
        assert_eq!(with(&["Chunked "]), None);
        let refused = with(&["gzip, chunked"]).expect("gzip is refused");
        assert!(refused.contains("\"gzip, chunked\""), "{refused}");
        assert!(with(&["gzip", "chunked"]).is_some());
        assert!(with(&["deflate"]).is_some());
        assert!(with(&["chunked, identity"]).is_some());
        assert!(with(&["chunked, chunked"]).is_some());
        assert!(with(&["chunked", "chunked"]).is_some());
    }

    #[test]
    fn only_the_content_codings_git_sends_are_passed_on() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            unsupported_content_coding(&h)
        };
        for fine in [&[][..], &["gzip"], &["GZip"], &["x-gzip"], &["identity"]] {
            assert_eq!(with(fine), None, "{fine:?}");
        }
        let refused = with(&["br"]).expect("br is refused");
        assert!(refused.contains("\"br\""), "{refused}");
        for bad in [
            &["deflate"][..],
            &["gzip, gzip"],
            &["gzip", "br"],
            &["gzip", "gzip"],
        ] {
            assert!(with(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn client_address_trusts_only_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.1.1.1"),
        );
        let lb: IpAddr = "10.0.0.2".parse().unwrap();
        let direct: IpAddr = "198.51.100.7".parse().unwrap();
        // Through the load balancer: the right-most untrusted hop, not what the client wrote.
        assert_eq!(
            client_address(lb, &h, &trusted),
            Ok("203.0.113.9".parse::<IpAddr>().unwrap())
        );
        // A direct client's X-Forwarded-For means nothing.
        assert_eq!(client_address(direct, &h, &trusted), Ok(direct));
        // No header: the peer.
        assert_eq!(client_address(lb, &HeaderMap::new(), &trusted), Ok(lb));
        // A `Forwarded` alone names a client gitgate does not read: not taken for the
        // balancer's own request, which would make the balancer every client.
        let mut fwd = HeaderMap::new();
        fwd.insert("forwarded", HeaderValue::from_static("for=203.0.113.9"));
        assert_eq!(
            client_address(lb, &fwd, &trusted),
            Err(UnreadableForwardedFor)
        );
        // Beside an X-Forwarded-For, that is what counts; from a direct client, nothing does.
        fwd.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.10"));
        assert_eq!(
            client_address(lb, &fwd, &trusted),
            Ok("203.0.113.10".parse::<IpAddr>().unwrap())
        );
        fwd.remove("x-forwarded-for");
        assert_eq!(client_address(direct, &fwd, &trusted), Ok(direct));
    }

    #[test]
    fn garbage_from_the_client_does_not_make_it_the_load_balancer() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: IpAddr = "10.0.0.2".parse().unwrap();
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            client_address(lb, &h, &trusted)
        };
        // The client sent `X-Forwarded-For: x` (or worse); the balancer appended its address.
        assert_eq!(xff(&["x, 198.51.100.7"]), Ok(client));
        assert_eq!(xff(&["<script>, 10.0.0.9, 198.51.100.7"]), Ok(client));
        assert_eq!(xff(&["x", "198.51.100.7"]), Ok(client));
        assert_eq!(xff(&[", 198.51.100.7"]), Ok(client));
        // Proxies that add the port.
        assert_eq!(xff(&["198.51.100.7:4711"]), Ok(client));
        // An IPv4-mapped entry (nginx on a dual-stack listener) is the IPv4 address it is,
        // with or without a port; and a mapped trusted hop is trusted.
        assert_eq!(xff(&["::ffff:198.51.100.7"]), Ok(client));
        assert_eq!(xff(&["[::ffff:198.51.100.7]:4711"]), Ok(client));
        // An IPv6 entry in brackets, with a port or without.
        let v6: IpAddr = "2001:db8::3".parse().unwrap();
        for entry in ["2001:db8::3", "[2001:db8::3]", "[2001:db8::3]:4711"] {
            assert_eq!(xff(&[entry]), Ok(v6), "{entry}");
        }
        for bad in ["[2001:db8::3", "[198.51.100.7]", "[]", "[[2001:db8::3]]"] {
            assert!(xff(&[bad]).is_err(), "{bad}");
        }
        assert_eq!(xff(&["198.51.100.7, ::ffff:10.0.0.9"]), Ok(client));
        assert_eq!(
            xff(&["[2001:db8::7]:4711"]),
            Ok("2001:db8::7".parse().unwrap())
        );
        // What a trusted proxy wrote cannot be read: refused, never the balancer's address.
        assert_eq!(xff(&["198.51.100.7, unknown"]), Err(UnreadableForwardedFor));
        // Nor can a header with nothing in it, nor an empty entry a trusted proxy wrote (the
        // walk would go on to one the client wrote).
        for blank in ["", " ", ",", " , "] {
            assert_eq!(xff(&[blank]), Err(UnreadableForwardedFor), "{blank:?}");
        }
        for trailing in [
            &["198.51.100.7, "][..],
            &["198.51.100.7,,"],
            &["198.51.100.7", ""],
        ] {
            assert_eq!(xff(trailing), Err(UnreadableForwardedFor), "{trailing:?}");
        }
        assert_eq!(xff(&["nonsense, 10.0.0.9"]), Err(UnreadableForwardedFor));
        // A header line that is not text: unreadable when reached, nothing when left of the client.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(
            client_address(lb, &h, &trusted),
            Err(UnreadableForwardedFor)
        );
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        assert_eq!(client_address(lb, &h, &trusted), Ok(client));
        // Only trusted hops: the left-most, the origin of the request.
        assert_eq!(
            xff(&["10.5.5.5, 10.0.0.9"]),
            Ok("10.5.5.5".parse().unwrap())
        );
    }

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    fn out<'a>(ident: &'a HeaderName, trusted: &'a [Cidr]) -> Outbound<'a> {
        Outbound {
            peer: "192.0.2.7".parse().unwrap(),
            trusted_proxies: trusted,
            proto: "https",
            authority: None,
            identity_header: ident,
            user: "alice",
            upstream_auth: None,
            request_id: RequestId::next(),
        }
    }

    fn ident() -> HeaderName {
        HeaderName::from_static("x-forwarded-user")
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let inbound = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("expect", "100-continue"),
            ("user-agent", "git/2.47.3"),
            ("content-type", "application/x-git-receive-pack-request"),
            ("content-encoding", "gzip"),
            ("accept", "application/x-git-receive-pack-result"),
        ]);
        let i = ident();
        let h = to_upstream(&inbound, &out(&i, &[]));
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(all(&h, "user-agent"), ["git/2.47.3"]);
        assert_eq!(all(&h, "content-encoding"), ["gzip"]);
        // In the one spelling `git http-backend` reads (it compares case-sensitively).
        for (sent, forwarded) in [
            ("GZIP", "gzip"),
            (" X-Gzip ", "x-gzip"),
            ("Identity", "identity"),
        ] {
            let inbound = map(&[("content-encoding", sent)]);
            let h = to_upstream(&inbound, &out(&i, &[]));
            assert_eq!(all(&h, "content-encoding"), [forwarded], "{sent}");
        }
        assert_eq!(
            all(&h, "content-type"),
            ["application/x-git-receive-pack-request"]
        );
        assert_eq!(all(&h, "accept"), ["application/x-git-receive-pack-result"]);
    }

    #[test]
    fn client_secrets_never_go_upstream() {
        let inbound = map(&[
            ("authorization", "Basic YWxpY2U6Z2d0X3NlY3JldA=="),
            ("proxy", "http://evil.example:3128"),
        ]);
        let i = ident();
        let h = to_upstream(&inbound, &out(&i, &[]));
        assert!(!h.contains_key("authorization"));
        assert!(!h.contains_key("proxy"));
    }

    #[test]
    fn upstream_credentials_replace_the_clients() {
        let inbound = map(&[("authorization", "Bearer ggt_client")]);
        let mine = HeaderValue::from_static("Bearer upstream-secret");
        let i = ident();
        let mut o = out(&i, &[]);
        o.upstream_auth = Some(&mine);
        let h = to_upstream(&inbound, &o);
        assert_eq!(all(&h, "authorization"), ["Bearer upstream-secret"]);
        assert!(h.get("authorization").unwrap().is_sensitive());
    }

    #[test]
    fn identity_header_is_always_gitgates() {
        let inbound = map(&[
            ("x-forwarded-user", "root"),
            ("x-forwarded-user", "admin"),
            ("x-remote-user", "mallory"),
        ]);
        let i = ident();
        let h = to_upstream(&inbound, &out(&i, &[]));
        assert_eq!(all(&h, "x-forwarded-user"), ["alice"]);

        let custom = HeaderName::from_static("x-remote-user");
        let h = to_upstream(&inbound, &out(&custom, &[]));
        assert_eq!(all(&h, "x-remote-user"), ["alice"]);
        // A client-sent X-Forwarded-User never gets through, whatever the configured name.
        assert!(!h.contains_key("x-forwarded-user"));
    }

    #[test]
    fn underscore_spellings_of_a_header_never_get_through() {
        // CGI/WSGI map these to the same variables as the dashed names.
        let inbound = map(&[
            ("x_forwarded_user", "root"),
            ("remote_user", "root"),
            ("x-remote_user", "root"),
            ("user-agent", "git/2.47"),
        ]);
        let custom = HeaderName::from_static("x-remote-user");
        let h = to_upstream(&inbound, &out(&custom, &[]));
        assert!(h.keys().all(|k| !k.as_str().contains('_')), "{h:?}");
        assert_eq!(all(&h, "x-remote-user"), ["alice"]);
        assert_eq!(all(&h, "user-agent"), ["git/2.47"]);
    }

    #[test]
    fn only_what_git_says_about_the_content_is_passed_on() {
        // What some upstream may believe when it comes from gitgate's address: the login
        // header of Gitea's reverse-proxy authentication, other servers' user and client
        // address headers, and whatever `http.extraHeader` adds.
        let inbound = map(&[
            ("x-webauth-user", "admin"),
            ("remote-user", "root"),
            ("true-client-ip", "10.9.9.9"),
            ("x-client-ip", "10.9.9.9"),
            ("cookie", "session=x"),
            ("x-anything", "1"),
            ("user-agent", "git/2.47.3"),
            ("accept-encoding", "deflate, gzip"),
            ("accept-language", "en"),
            ("pragma", "no-cache"),
            ("cache-control", "no-cache"),
            ("range", "bytes=100-"),
            ("content-length", "4"),
            ("content-length", "4"),
        ]);
        let i = ident();
        let h = to_upstream(&inbound, &out(&i, &[]));
        for gone in [
            "x-webauth-user",
            "remote-user",
            "true-client-ip",
            "x-client-ip",
            "cookie",
            "x-anything",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        for (kept, value) in [
            ("user-agent", "git/2.47.3"),
            ("accept-encoding", "deflate, gzip"),
            ("accept-language", "en"),
            ("pragma", "no-cache"),
            ("cache-control", "no-cache"),
            ("range", "bytes=100-"),
            ("content-length", "4"),
        ] {
            assert_eq!(all(&h, kept), [value], "{kept}");
        }
        assert_eq!(all(&h, "x-forwarded-user"), ["alice"]);
        // A header on the list that the client names in `Connection` is still hop-by-hop.
        let inbound = map(&[("connection", "pragma"), ("pragma", "no-cache")]);
        assert!(!to_upstream(&inbound, &out(&i, &[])).contains_key("pragma"));
    }

    #[test]
    fn identity_values_are_encoded() {
        assert_eq!(identity_value("alice"), "alice");
        assert_eq!(identity_value("ci runner"), "ci runner");
        assert_eq!(identity_value("100%"), "100%25");
        assert_eq!(identity_value("é\r\n"), "%C3%A9%0D%0A");
    }

    /// An address is spelled as `Display` spells it: every value of each IPv4 octet, in each
    /// place, and IPv6 ones long and short.
    #[test]
    fn an_address_is_spelled_as_display_spells_it() {
        let spelled = |ip: IpAddr| {
            let mut buf = [0u8; 64];
            let len = spell_address(ip, &mut buf);
            String::from_utf8(buf[..len].to_vec()).unwrap()
        };
        for octet in 0..=255u8 {
            for place in 0..4 {
                let mut octets = [1, 20, 255, 0];
                octets[place] = octet;
                let ip = IpAddr::from(octets);
                assert_eq!(spelled(ip), ip.to_string());
            }
        }
        for ip in [
            "::1",
            "::",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:192.0.2.1",
            "fe80::1:2:3:4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(spelled(ip), ip.to_string());
        }
    }

    #[test]
    fn an_ipv6_peer_of_any_length_is_written_whole() {
        let i = ident();
        for peer in [
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let mut o = out(&i, &[]);
            o.peer = peer.parse().unwrap();
            let h = to_upstream(&HeaderMap::new(), &o);
            let expected = o.peer.to_string();
            assert_eq!(all(&h, "x-forwarded-for"), [expected.as_str()]);
        }
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
        let inbound = map(&[
            ("host", "git.example.com"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=10.9.9.9"),
            ("x-real-ip", "10.9.9.9"),
        ]);
        let i = ident();
        let h = to_upstream(&inbound, &out(&i, &[]));
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["git.example.com"]);
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-real-ip"));
        assert!(
            !h.contains_key("host"),
            "the client sets Host from the upstream URL"
        );
    }

    #[test]
    fn a_trusted_proxy_extends_the_chain() {
        let trusted: Vec<Cidr> = vec!["192.0.2.0/24".parse().unwrap()];
        let inbound = map(&[
            ("host", "gitgate.internal"),
            ("x-forwarded-for", "203.0.113.5, 198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "git.example.com"),
        ]);
        let i = ident();
        let h = to_upstream(&inbound, &out(&i, &trusted));
        // The client is 198.51.100.2, the right-most entry the trusted peer did not vouch
        // for; what is left of it the client wrote itself, and is not passed on.
        assert_eq!(all(&h, "x-forwarded-for"), ["198.51.100.2, 192.0.2.7"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["git.example.com"]);

        // Behind a chain of trusted proxies: the client and every proxy right of it.
        let trusted: Vec<Cidr> = vec![
            "192.0.2.0/24".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let inbound = map(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.0.0.3"),
            ("x-forwarded-for", "::ffff:10.0.0.4"),
        ]);
        let h = to_upstream(&inbound, &out(&i, &trusted));
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["203.0.113.5, 10.0.0.3, 10.0.0.4, 192.0.2.7"]
        );
        // Trusted proxies only: all of them (the left-most is the client, as gitgate takes it).
        let inbound = map(&[("x-forwarded-for", "10.0.0.2, 10.0.0.3")]);
        let h = to_upstream(&inbound, &out(&i, &trusted));
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["10.0.0.2, 10.0.0.3, 192.0.2.7"]
        );

        // Garbage in the chain: only what is right of it, and the peer.
        let inbound = map(&[("x-forwarded-for", "203.0.113.5, <script>")]);
        let h = to_upstream(&inbound, &out(&i, &trusted));
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
        let inbound = map(&[("x-forwarded-for", "<script>, 203.0.113.5:4711")]);
        let h = to_upstream(&inbound, &out(&i, &trusted));
        assert_eq!(all(&h, "x-forwarded-for"), ["203.0.113.5, 192.0.2.7"]);
    }

    #[test]
    fn http2_authority_becomes_the_forwarded_host() {
        let i = ident();
        let mut o = out(&i, &[]);
        o.authority = Some("git.example.com:8443");
        let h = to_upstream(&HeaderMap::new(), &o);
        assert_eq!(all(&h, "x-forwarded-host"), ["git.example.com:8443"]);
    }

    #[test]
    fn git_protocol_is_validated() {
        let i = ident();
        // Named by Connection, it is this hop's only.
        let hop = map(&[
            ("connection", "Git-Protocol"),
            ("git-protocol", "version=2"),
        ]);
        assert!(all(&to_upstream(&hop, &out(&i, &[])), "git-protocol").is_empty());
        let ok = map(&[("git-protocol", "version=2:object-format=sha256")]);
        assert_eq!(
            all(&to_upstream(&ok, &out(&i, &[])), "git-protocol"),
            ["version=2:object-format=sha256"]
        );
        // An empty item, which git never writes, is refused here as the CGI runner refuses it.
        for bad in [
            "version=2 $(id)",
            "version=2;x",
            "",
            "version=2:",
            "version=2::x",
            ":",
        ] {
            let h = map(&[("git-protocol", bad)]);
            assert!(
                !to_upstream(&h, &out(&i, &[])).contains_key("git-protocol"),
                "{bad}"
            );
        }
        let twice = map(&[("git-protocol", "version=2"), ("git-protocol", "version=1")]);
        assert!(!to_upstream(&twice, &out(&i, &[])).contains_key("git-protocol"));
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_only() {
        let upstream = map(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=75"),
            ("proxy-authenticate", "Basic"),
            ("content-type", "application/x-git-upload-pack-result"),
            ("cache-control", "no-cache"),
            ("content-encoding", "gzip"),
        ]);
        let mut h = upstream;
        to_client(&mut h).unwrap();
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cache-control", "content-encoding", "content-type"]);
    }

    #[test]
    fn a_request_content_length_must_be_one_length() {
        for fine in [
            &[][..],
            &[("content-length", "0")],
            &[("content-length", "4")],
            &[("content-length", "4"), ("content-length", "4")],
        ] {
            assert_eq!(unusable_content_length(&map(fine)), None, "{fine:?}");
        }
        for bad in [
            &[("content-length", "")][..],
            &[("content-length", "4"), ("content-length", "9")],
            &[("content-length", "4"), ("content-length", "")],
            &[("content-length", "+4")],
        ] {
            let m = unusable_content_length(&map(bad)).expect("refused");
            assert!(m.contains("is not one length"), "{bad:?}: {m}");
        }
    }

    /// A length past `i64::MAX` is one hyper reads (up to 2^64-3) and no git server does: git
    /// http-backend reads `CONTENT_LENGTH` as a signed number and dies on it (a `500` after the
    /// process started), nginx answers its own `400` page. Refused here, as a length, before
    /// anything is forwarded; `i64::MAX` itself and leading zeros are lengths.
    #[test]
    fn a_request_content_length_past_i64_max_is_refused() {
        for bad in [
            &[("content-length", "9223372036854775808")][..],
            &[("content-length", "18446744073709551613")],
            &[("content-length", "18446744073709551615")],
            &[("content-length", "99999999999999999999999")],
            &[
                ("content-length", "9223372036854775808"),
                ("content-length", "9223372036854775808"),
            ],
        ] {
            let m = unusable_content_length(&map(bad)).expect("refused");
            assert!(
                m.contains(bad[0].1) && m.contains("at most 9223372036854775807 bytes"),
                "{bad:?}: {m}"
            );
        }
        for fine in ["9223372036854775807", "0009223372036854775807", "005", "0"] {
            assert_eq!(
                unusable_content_length(&map(&[("content-length", fine)])),
                None,
                "{fine}"
            );
        }
    }

    /// The length goes upstream as the number it is: hyper takes `010` and `5, 5`, and what
    /// is behind gitgate may read them otherwise — nginx refuses a list with its own `400`,
    /// and hands `$content_length` on as it came, so git http-backend behind it read `010` as
    /// `CONTENT_LENGTH` in octal, 8.
    #[test]
    fn the_length_goes_upstream_as_a_plain_number() {
        let i = ident();
        for (sent, passed) in [
            (&[("content-length", "010")][..], "10"),
            (&[("content-length", "5, 5")], "5"),
            (&[("content-length", "5"), ("content-length", "005")], "5"),
            (&[("content-length", "0")], "0"),
            (&[("content-length", "12")], "12"),
        ] {
            let h = to_upstream(&map(sent), &out(&i, &[]));
            assert_eq!(all(&h, "content-length"), [passed], "{sent:?}");
        }
    }

    /// An upstream's `Link` and `Refresh` can name its internal address (`Refresh: 0;
    /// url=http://git.internal:3000/login` sends a browser there), past the checks `Location` gets;
    /// git reads neither.
    #[test]
    fn responses_lose_the_links_and_refreshes_that_could_name_the_upstream() {
        let mut h = map(&[
            (
                "link",
                "<http://git.internal:3000/git/team/app.git>; rel=\"canonical\"",
            ),
            ("refresh", "0; url=http://git.internal:3000/user/login"),
            ("content-type", "text/plain"),
        ]);
        to_client(&mut h).unwrap();
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn responses_lose_the_upstreams_own_site_headers_and_stale_framing() {
        let mut h = map(&[
            ("set-cookie", "sess=upstream-secret"),
            ("alt-svc", "h3=\":443\""),
            ("content-location", "http://127.0.0.1:3000/git/internal"),
            ("server", "nginx/1.22.1"),
            ("x-powered-by", "PHP/7.4"),
            // What a front nginx, Apache or lighttpd would act on: never the client's.
            ("x-accel-redirect", "/internal/etc/passwd"),
            ("X-Accel-Buffering", "no"),
            ("x-sendfile", "/etc/shadow"),
            ("x-lighttpd-send-file", "/etc/shadow"),
            ("x-sendfile2", "/etc/shadow 0-"),
            ("content-length", "100"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        to_client(&mut h).unwrap();
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
        // Without Transfer-Encoding, the length stays.
        let mut h = map(&[("content-length", "7")]);
        to_client(&mut h).unwrap();
        assert_eq!(h.get("content-length").unwrap(), "7");
        // Repeated, and agreeing (hyper's client frames the body by it): one value. Disagreeing
        // or no length: refused.
        for repeated in [
            &[("content-length", "5"), ("content-length", "5")][..],
            &[("content-length", "5, 5")],
            &[("content-length", "05"), ("content-length", " 5 ,5")],
        ] {
            let mut h = map(repeated);
            to_client(&mut h).unwrap();
            let all: Vec<_> = h.get_all("content-length").iter().collect();
            assert_eq!(all, ["5"], "{repeated:?}");
        }
        for bad in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "5, 6")],
            &[("content-length", "5,")],
            &[("content-length", "-5")],
            &[("content-length", "")],
        ] {
            let mut h = map(bad);
            let e = to_client(&mut h).unwrap_err();
            assert!(e.contains("is not one length"), "{bad:?}: {e}");
        }
        // A coding other than chunked cannot be passed on.
        for coded in ["gzip, chunked", "chunked, chunked"] {
            let mut h = map(&[("transfer-encoding", coded)]);
            let e = to_client(&mut h).unwrap_err();
            assert!(e.contains(coded), "{e}");
        }
        // Nor one that hyper's client reads as not chunked (its last item empty: the answer
        // read to the close, its chunk lines as the body) while it lists a single `chunked`.
        for read_two_ways in [
            &[("transfer-encoding", "chunked,")][..],
            &[("transfer-encoding", "chunked ,  ")],
            &[("transfer-encoding", "chunked"), ("transfer-encoding", "")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", " , "),
            ],
        ] {
            let mut h = map(read_two_ways);
            let e = to_client(&mut h).unwrap_err();
            assert!(e.contains("cannot pass on"), "{read_two_ways:?}: {e}");
        }
        // Nor an empty one, which is not the absence of one.
        for empty in [
            &[("transfer-encoding", "")][..],
            &[("transfer-encoding", " , ")],
        ] {
            let mut h = map(&[empty, &[("content-length", "7")]].concat());
            let e = to_client(&mut h).unwrap_err();
            assert!(e.contains("empty Transfer-Encoding"), "{empty:?}: {e}");
        }
        // Read the same way by both: one `chunked` last, after an empty item.
        let mut h = map(&[("transfer-encoding", " , chunked")]);
        to_client(&mut h).unwrap();
    }

    #[test]
    fn redirects_to_the_upstream_become_redirects_to_gitgate() {
        let origin = |url: &str| {
            let uri: hyper::Uri = url.parse().unwrap();
            UpstreamOrigin::new(uri.scheme_str() == Some("https"), uri.authority().unwrap())
        };
        let exactly = |url: &str| {
            let uri: hyper::Uri = url.parse().unwrap();
            UpstreamOrigin::exactly(uri.scheme_str() == Some("https"), uri.authority().unwrap())
        };
        let up = origin("http://127.0.0.1:3000");
        let to = |s: &str| Redirect::To(s.into());
        let cases = [
            // (location, upstream base, client prefix, expected)
            (
                "http://127.0.0.1:3000/git/team/app.git/info/refs?service=git-upload-pack",
                "/git",
                "",
                to("/team/app.git/info/refs?service=git-upload-pack"),
            ),
            (
                "/git/team/app.git/",
                "/git",
                "/scm",
                to("/scm/team/app.git/"),
            ),
            ("HTTP://127.0.0.1:3000/git", "/git", "/scm", to("/scm/")),
            ("http://127.0.0.1:3000", "", "", to("/")),
            ("/git?x=1", "/git", "", to("/?x=1")),
            ("/team/app.git", "", "/scm", to("/scm/team/app.git")),
            ("/team/app.git", "", "", Redirect::Unchanged),
            ("/gitx/team/app.git", "/git", "", Redirect::Unchanged),
            ("/other/place", "/git", "", Redirect::Unchanged),
            // Another site: git would take its token there.
            (
                "https://github.com/team/app.git",
                "/git",
                "",
                Redirect::Away,
            ),
            ("http://127.0.0.1:30000/git/x", "/git", "", Redirect::Away),
            ("//evil.example/git/x", "/git", "", Redirect::Away),
            ("app.git/info/refs", "", "/scm", Redirect::Unchanged),
            // The upstream's own origin outside its base path: never passed on.
            (
                "http://127.0.0.1:3000/login?next=/git",
                "/git",
                "",
                Redirect::OffBase,
            ),
            ("http://127.0.0.1:3000", "/git", "", Redirect::OffBase),
            ("http://127.0.0.1:3000#frag", "/git", "", Redirect::OffBase),
            ("http://127.0.0.1:3000?x=1", "/git", "", Redirect::OffBase),
            ("http://127.0.0.1:3000/git#frag", "/git", "", to("/#frag")),
            ("http://127.0.0.1:3000//evil/x", "", "", Redirect::OffBase),
            // User information names no other server.
            ("http://git@127.0.0.1:3000/git/x", "/git", "", to("/x")),
            ("http://a:b@c@127.0.0.1:3000/git/x", "/git", "", to("/x")),
            (
                "http://u@127.0.0.1:3000/login",
                "/git",
                "",
                Redirect::OffBase,
            ),
            (
                "http://127.0.0.1:3000@evil.example/git/x",
                "/git",
                "",
                Redirect::Away,
            ),
            ("/git/a@b", "/git", "", to("/a@b")),
            // An empty segment right after the base path: under the root git prefix its
            // rewrite would begin `//`, a URL of another site (curl follows `//evil.example/x`
            // to evil.example), and `/\` is one to a browser.
            ("/git//evil.example/x", "/git", "", Redirect::Away),
            ("/git///evil.example/x", "/git", "", Redirect::Away),
            ("/git/\\evil.example/x", "/git", "", Redirect::Away),
            (
                "http://127.0.0.1:3000/git//evil.example/x",
                "/git",
                "",
                Redirect::OffBase,
            ),
            (
                "http://127.0.0.1:3000/git/\\\\evil.example/x",
                "/git",
                "",
                Redirect::OffBase,
            ),
            ("/git//x", "/git", "/scm", Redirect::Away),
        ];
        for (location, base, prefix, expected) in cases {
            assert_eq!(
                location_to_client(location, &up, base, prefix, None),
                expected,
                "{location} with base {base:?}, prefix {prefix:?}"
            );
        }
        // The same address with the other scheme, or scheme-relative, is the upstream too.
        assert_eq!(
            location_to_client("https://127.0.0.1:3000/login", &up, "/git", "", None),
            Redirect::OffBase
        );
        assert_eq!(
            location_to_client("//127.0.0.1:3000/git/x", &up, "/git", "", None),
            to("/x")
        );
        // With the default port spelled out, or left out, it is the same origin.
        let named = origin("http://git.internal");
        for location in [
            "http://git.internal:80/git/x",
            "http://GIT.internal/git/x",
            "http://git.internal./git/x",
            "https://git.internal/git/x",
            "//git.internal:/git/x",
        ] {
            assert_eq!(
                location_to_client(location, &named, "/git", "", None),
                to("/x"),
                "{location}"
            );
        }
        assert_eq!(
            location_to_client("http://GIT.internal/login", &named, "/git", "", None),
            Redirect::OffBase
        );
        // Another port of the same host is another server.
        for location in [
            "http://git.internal:8080/git/x",
            "https://git.internal:3000/git/x",
        ] {
            assert_eq!(
                location_to_client(location, &named, "/git", "", None),
                Redirect::Away,
                "{location}"
            );
        }
        assert_eq!(
            location_to_client("http://127.0.0.1/git/x", &up, "/git", "", None),
            Redirect::Away
        );
        // An address is compared by value: every spelling of the upstream's is the upstream.
        for (url, locations) in [
            (
                "http://[::1]:3000",
                &[
                    "http://[0:0:0:0:0:0:0:1]:3000/git/x",
                    "http://[0::1]:3000/git/x",
                    "http://localhost:3000/git/x",
                    "http://[::1]:3000/git/x",
                    "http://127.0.0.1:3000/git/x",
                ][..],
            ),
            (
                "http://[0:0:0:0:0:0:0:1]:3000",
                &["http://[::1]:3000/git/x"][..],
            ),
            (
                "http://127.0.0.1:3000",
                &[
                    "http://[::ffff:127.0.0.1]:3000/git/x",
                    "http://LocalHost.:3000/git/x",
                ][..],
            ),
            (
                "http://10.0.0.5:3000",
                &[
                    "http://[::ffff:10.0.0.5]:3000/git/x",
                    "http://[::ffff:a00:5]:3000/git/x",
                ][..],
            ),
            (
                "http://localhost:3000",
                &["http://[::1]:3000/git/x", "http://127.0.0.2:3000/git/x"][..],
            ),
        ] {
            for location in locations {
                assert_eq!(
                    location_to_client(location, &origin(url), "/git", "", None),
                    to("/x"),
                    "{location} from {url}"
                );
            }
        }
        // curl's other spellings of an address, and of a URL's slashes, are the upstream too.
        for location in [
            "http:/127.0.0.1:3000/git/x",
            "http:///127.0.0.1:3000/git/x",
            "///127.0.0.1:3000/git/x",
            "http:127.0.0.1:3000/git/x",
            "http:\\\\127.0.0.1:3000/git/x",
            "http://2130706433:3000/git/x",
            "http://127.1:3000/git/x",
            "http://0x7f.0.0.1:3000/git/x",
            "http://0177.0.0.1:3000/git/x",
            "http://127.0.0.1.:3000/git/x",
            "http://0.0.0.0:3000/git/x",
            "http://[::]:3000/git/x",
            "http://git.localhost:3000/git/x",
            "http://127.0.0.1:03000/git/x",
            // A `\` ends no authority for curl: user `x\` at the upstream.
            "http://x\\@127.0.0.1:3000/git/x",
        ] {
            assert_eq!(
                location_to_client(location, &up, "/git", "", None),
                to("/x"),
                "{location}"
            );
        }
        let internal = origin("http://10.0.0.5:3000");
        for location in [
            "http://167772165:3000/git/x",
            "http://10.5:3000/git/x",
            "http://012.0.0.5:3000/git/x",
        ] {
            assert_eq!(
                location_to_client(location, &internal, "/git", "", None),
                to("/x"),
                "{location}"
            );
        }
        // A host it cannot read might be the upstream: not passed on.
        for location in [
            "http://%31%32%37.0.0.1:3000/git/x",
            "http://[::1:3000/git/x",
            "http://:3000/git/x",
            "http://host:3000x/git/x",
            "//[fe80::1%25eth0]:3000/git/x",
            "http://127.0.0.1\\x:3000/git/x",
        ] {
            assert_eq!(
                location_to_client(location, &up, "/git", "", None),
                Redirect::Unsure,
                "{location}"
            );
        }
        // Names curl looks up (no IPv4 address in them), and what git never follows, are
        // other servers' or nobody's.
        for location in [
            "http://git.example.123:3000/git/x",
            "http://127.0.0.256:3000/git/x",
            "http://1.2.3.4.5:3000/git/x",
            "http://0x7g.0.0.1:3000/git/x",
            "mailto:postmaster",
            "about:blank",
            "data:text/plain,hi",
            "tel:+1-555",
            "ftp://127.0.0.1:3000/git/x",
            "http://127.0.0.1\\@evil.example:3000/git/x",
        ] {
            assert_eq!(
                location_to_client(location, &up, "/git", "", None),
                Redirect::Away,
                "{location}"
            );
        }
        let numeric = origin("http://git.example.123:3000");
        assert_eq!(
            location_to_client(
                "http://GIT.example.123:3000/git/x",
                &numeric,
                "/git",
                "",
                None
            ),
            to("/x")
        );
        // Other addresses are other servers.
        for location in [
            "http://10.0.0.6:3000/git/x",
            "http://[::2]:3000/git/x",
            "http://[::ffff:10.0.0.6]:3000/git/x",
            "http://localhost.evil:3000/git/x",
        ] {
            assert_eq!(
                location_to_client(location, &origin("http://10.0.0.5:3000"), "/git", "", None),
                Redirect::Away,
                "{location}"
            );
        }
        // gitgate on a loopback address is that address only: another one, or another spelling
        // of this host, on the same port may be another process's.
        let on_loopback = exactly("http://127.0.0.1:42200");
        for (location, expected) in [
            ("http://127.0.0.1:42200/scm/x", Redirect::Unchanged),
            ("http://[::1]:42200/scm/x", Redirect::Away),
            ("http://127.0.0.2:42200/scm/x", Redirect::Away),
            ("http://localhost:42200/scm/x", Redirect::Away),
            ("http://0.0.0.0:42200/scm/x", Redirect::Away),
            ("http://[::ffff:127.0.0.1]:42200/scm/x", Redirect::Unchanged),
            ("https://127.0.0.1:42200/scm/x", Redirect::Away),
        ] {
            assert_eq!(
                location_to_client(location, &up, "/git", "/scm", Some(&on_loopback)),
                expected,
                "{location}"
            );
        }
        // Encoded separators next to `..`, on the upstream's origin or as paths.
        for (location, expected) in [
            ("/scm/team/%2F..%2F..%2Fother/info/refs", Redirect::Away),
            ("/scm/team/..%2F..%2Fx", Redirect::Away),
            ("/scm/%2e%2e%2Fother", Redirect::Away),
            ("/git/team/..%5C..%5Cx", Redirect::Away),
            ("http://127.0.0.1:3000/git/..%2Fother", Redirect::OffBase),
            (
                "/git/team/app.git/info/refs?path=%2F..%2F",
                to("/scm/team/app.git/info/refs?path=%2F..%2F"),
            ),
        ] {
            assert_eq!(
                location_to_client(location, &up, "/git", "/scm", None),
                expected,
                "{location}"
            );
        }
        // A `.` or `..` segment, plain or encoded, could climb out of the git prefix: under
        // the base path or not, on the upstream's origin or as a path, it is not passed on.
        for (location, expected) in [
            ("/git/../../admin/steal", Redirect::Away),
            ("/git/team/%2e%2e/%2E%2E/admin", Redirect::Away),
            ("/git/team/./app.git", Redirect::Away),
            (
                "http://127.0.0.1:3000/git/../../etc/passwd",
                Redirect::OffBase,
            ),
            ("../../admin", Redirect::Away),
            ("./info/refs", Redirect::Away),
            (
                "/git/team/app.git/info/refs?x=/../..",
                to("/scm/team/app.git/info/refs?x=/../.."),
            ),
            ("/\\evil.example/x", Redirect::Away),
            // Paths of gitgate's own: under its prefix they lead through the gate.
            ("/scm/team/app.git", Redirect::Unchanged),
            ("/scmx/team/app.git", Redirect::Away),
            ("/login", Redirect::Away),
        ] {
            assert_eq!(
                location_to_client(location, &up, "/git", "/scm", None),
                expected,
                "{location}"
            );
        }
        // A URL naming gitgate as the client did stays on gitgate, under its git prefix.
        let gitgate = exactly("https://git.example.com");
        for (location, expected) in [
            (
                "https://git.example.com/scm/team/app.git/info/refs",
                Redirect::Unchanged,
            ),
            (
                "https://GIT.example.com:443/scm/team/app.git",
                Redirect::Unchanged,
            ),
            ("https://git.example.com/scm/../admin", Redirect::Away),
            ("https://git.example.com/admin", Redirect::Away),
            ("https://git.example.com.evil.example/scm/x", Redirect::Away),
            ("https://git.example.com:8443/scm/x", Redirect::Away),
            // http:// to an https gitgate's name is port 80, in clear text.
            ("http://git.example.com/scm/x", Redirect::Away),
            ("http://git.example.com:443/scm/x", Redirect::Away),
            ("//git.example.com/scm/x", Redirect::Unchanged),
            // An encoded `/` next to `..`: a front proxy that decodes it routes out of /scm.
            (
                "https://git.example.com/scm/team/%2F..%2F..%2Fother",
                Redirect::Away,
            ),
        ] {
            assert_eq!(
                location_to_client(location, &up, "/git", "/scm", Some(&gitgate)),
                expected,
                "{location}"
            );
        }
    }

    #[test]
    fn reserved_names_cannot_carry_the_identity() {
        assert!(is_reserved(&HeaderName::from_static("authorization")));
        assert!(is_reserved(&HeaderName::from_static("x-forwarded-for")));
        assert!(!is_reserved(&HeaderName::from_static("x-forwarded-user")));
        assert!(!is_reserved(&HeaderName::from_static("remote-user")));
        // Passed on from the client, so it cannot name the user.
        assert!(is_reserved(&HeaderName::from_static("user-agent")));
        assert!(is_reserved(&HeaderName::from_static("range")));
        // gitgate's own request id.
        assert!(is_reserved(&HeaderName::from_static("x-request-id")));
    }

    #[test]
    fn an_answer_shared_caches_could_keep_is_made_private() {
        let cached = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            }
            private_to_shared_caches(&mut h);
            all(&h, "cache-control")
        };
        // What git http-backend says of a pack or a loose object.
        assert_eq!(
            cached(&["public, max-age=31536000"]),
            ["private, max-age=31536000"]
        );
        assert_eq!(
            cached(&["max-age=60", "S-MAXAGE=600, Public"]),
            ["private, max-age=60"]
        );
        assert_eq!(
            cached(&["max-age=60, must-revalidate"]),
            ["private, max-age=60, must-revalidate"]
        );
        // Nothing for shared caches, or already kept from them: as it was.
        for kept in [
            "no-cache, max-age=0, must-revalidate".to_string(),
            "no-cache".to_string(),
            "private, max-age=5".to_string(),
            "no-store, public".to_string(),
        ] {
            let expected = if kept.starts_with("no-cache, max-age=0, must") {
                vec!["private, no-cache, max-age=0, must-revalidate".to_string()]
            } else {
                vec![kept.clone()]
            };
            assert_eq!(cached(&[&kept]), expected, "{kept}");
        }
        assert_eq!(cached(&[]), Vec::<String>::new());
        // A comma or a `private` inside a quoted string is not a directive of its own; a
        // `private` that names fields leaves the rest to shared caches.
        assert_eq!(
            cached(&["no-cache=\"a, private, b\", public, max-age=600"]),
            ["private, no-cache=\"a, private, b\", max-age=600"]
        );
        assert_eq!(
            cached(&["s-maxage=600, private=\"set-cookie\""]),
            ["private, private=\"set-cookie\""]
        );
        // Bytes that are not UTF-8 are kept as they came.
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"public, ext=\"caf\xe9\"").unwrap(),
        );
        private_to_shared_caches(&mut h);
        assert_eq!(
            h[header::CACHE_CONTROL].as_bytes(),
            b"private, ext=\"caf\xe9\""
        );
        // What speaks to shared caches alone is dropped.
        let mut h = HeaderMap::new();
        for name in [
            "cdn-cache-control",
            "cloudflare-cdn-cache-control",
            "surrogate-control",
            "edge-control",
            "akamai-cache-control",
        ] {
            h.insert(name, HeaderValue::from_static("public, max-age=600"));
        }
        private_to_shared_caches(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // And from an HTTP upstream's answer, in the one pass over its headers.
        let mut h = HeaderMap::new();
        h.insert(
            "cloudflare-cdn-cache-control",
            HeaderValue::from_static("max-age=600"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        to_client(&mut h).unwrap();
        assert_eq!(all(&h, "cache-control"), ["private, max-age=60"]);
        assert!(!h.contains_key("cloudflare-cdn-cache-control"), "{h:?}");
        // What does not read as directives is made private, whole: a quote left open, a `;`.
        for odd in [
            &["max-age=600, foo=\"x, public"][..],
            &["foo=a\", public, max-age=600"],
            &["no-cache=\"a, public", "b\", max-age=5"],
            &["max-age=600; public"],
        ] {
            assert_eq!(cached(odd), ["private"], "{odd:?}");
        }
    }

    #[test]
    fn the_request_id_is_gitgates_never_the_clients() {
        let inbound = map(&[("x-request-id", "0000000000000001"), ("x-request-id", "b")]);
        let i = ident();
        let o = out(&i, &[]);
        let h = to_upstream(&inbound, &o);
        assert_eq!(all(&h, "x-request-id"), [o.request_id.to_string()]);
    }

    /// A trusted proxy may name the original host and scheme, but only as a `Host` and a scheme
    /// gitgate would take itself: a list (`,`) is no host, and a scheme that is neither `http`
    /// nor `https` leaves what gitgate saw.
    #[test]
    fn a_trusted_proxys_forwarded_host_and_proto_are_checked_before_they_are_passed_on() {
        let trusted: Vec<Cidr> = vec!["192.0.2.0/24".parse().unwrap()];
        let i = ident();
        let inbound = map(&[
            ("host", "gitgate.internal"),
            ("x-forwarded-host", "evil.example, git.example.com"),
            ("x-forwarded-proto", "gopher"),
        ]);
        let h = to_upstream(&inbound, &out(&i, &trusted));
        assert_eq!(all(&h, "x-forwarded-host"), ["gitgate.internal"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
    }

    /// The limits on what is passed on are limits, not one less: a `Git-Protocol` of 256 bytes,
    /// a `Host` of 255 and a port of five digits up to 65535 are taken; one more is not.
    #[test]
    fn values_at_their_length_limits_are_still_taken() {
        let i = ident();
        let protocol = |len: usize| {
            let v = format!("version=2:{}", "a".repeat(len - "version=2:".len()));
            let h = to_upstream(&map(&[("git-protocol", &v)]), &out(&i, &[]));
            h.contains_key("git-protocol")
        };
        assert!(protocol(MAX_GIT_PROTOCOL));
        assert!(!protocol(MAX_GIT_PROTOCOL + 1));
        assert!(valid_host(&"a".repeat(255)));
        assert!(!valid_host(&"a".repeat(256)));
        assert!(valid_host("git.example.com:65535"));
        assert!(!valid_host("git.example.com:65536"));
        assert!(!valid_host("git.example.com:065535"));
        assert!(is_host_and_port(b"[::1]:65535"));
        // Port 0 is no port a client reached; leading zeros are the number's.
        assert!(!valid_host("git.example.com:0"));
        assert!(!valid_host("git.example.com:00000"));
        assert!(!is_host_and_port(b"[::1]:0"));
        assert!(valid_host("git.example.com:00080"));
        assert!(valid_host("git.example.com:"));
    }

    /// The tables [`valid_host`] and [`is_host_and_port`] read take the bytes the lists they
    /// replaced took, and the port is read as `u16` reads it: every byte alone, as a name and
    /// after a `:`, and every port of up to six digits (leading zeros too), 0 left out.
    #[test]
    fn the_host_tables_take_what_the_lists_took() {
        let listed = |b: u8, extra: &[u8]| b.is_ascii_alphanumeric() || extra.contains(&b);
        for b in 0..=255u8 {
            assert_eq!(HOST_BYTES[usize::from(b)], listed(b, b".-:[]_"), "{b}");
            assert_eq!(
                NAME_BYTES[usize::from(b)],
                listed(b, b"-._~!$&'()*+,;=%"),
                "{b}"
            );
            assert_eq!(
                is_host_and_port(&[b'a', b, b'b']),
                b != b':' && listed(b, b"-._~!$&'()*+,;=%"),
                "{b}"
            );
        }
        let port_as_u16_reads_it = |p: &str| {
            p.is_empty()
                || (p.len() <= 5
                    && p.bytes().all(|d| d.is_ascii_digit())
                    && p.parse::<u16>().is_ok_and(|n| n != 0))
        };
        for width in 0..=6 {
            let top = if width == 0 {
                1
            } else {
                10u32.pow(width.min(6))
            };
            let step = if width == 6 { 7 } else { 1 };
            for n in (0..top).step_by(step) {
                let port = if width == 0 {
                    String::new()
                } else {
                    format!("{n:0width$}", width = width as usize)
                };
                let host = format!("git.example.com:{port}");
                assert_eq!(
                    is_host_and_port(host.as_bytes()),
                    port_as_u16_reads_it(&port),
                    "{host}"
                );
                assert_eq!(valid_host(&host), port_as_u16_reads_it(&port), "{host}");
            }
        }
    }

    /// An upstream's `Authorization` (its credentials echoed, say) never reaches the client.
    #[test]
    fn responses_never_carry_an_authorization() {
        let mut h = map(&[
            ("authorization", "Basic Z2l0Z2F0ZTpzZWNyZXQ="),
            ("content-type", "text/plain"),
        ]);
        to_client(&mut h).unwrap();
        assert!(!h.contains_key("authorization"));
        assert_eq!(all(&h, "content-type"), ["text/plain"]);
    }

    /// A `\` in a redirect may be read as a `/` (`/\evil.example` as `//evil.example`), or
    /// hide a `..` from a check that splits at `/` only: whatever is not the upstream's own URL
    /// and holds one is not passed on, as a path, a relative reference or a URL of gitgate's.
    #[test]
    fn a_backslash_in_a_redirect_that_is_not_the_upstreams_is_never_passed_on() {
        let origin = |url: &str, exact: bool| {
            let uri: hyper::Uri = url.parse().unwrap();
            let https = uri.scheme_str() == Some("https");
            if exact {
                UpstreamOrigin::exactly(https, uri.authority().unwrap())
            } else {
                UpstreamOrigin::new(https, uri.authority().unwrap())
            }
        };
        let up = origin("http://127.0.0.1:3000", false);
        for location in ["/\\evil.example/x", "\\\\evil.example/x", "team\\..\\..\\x"] {
            assert_eq!(
                location_to_client(location, &up, "", "", None),
                Redirect::Away,
                "{location}"
            );
        }
        let gitgate = origin("https://git.example.com", true);
        assert_eq!(
            location_to_client(
                "https://git.example.com/scm/team\\..\\..\\admin",
                &up,
                "/git",
                "/scm",
                Some(&gitgate)
            ),
            Redirect::Away
        );
    }

    /// A part of an IPv4 address past 255 (other than the last, which fills the bytes left) is
    /// no address, as for curl: `127.0.256.1` is not read as `127.1.0.1`, a loopback address
    /// that would be taken for the upstream's.
    #[test]
    fn an_ipv4_part_past_255_makes_no_address() {
        assert_eq!(
            ipv4_in_any_form("127.0.255.1"),
            Some([127, 0, 255, 1].into())
        );
        assert_eq!(ipv4_in_any_form("127.0.256.1"), None);
        assert_eq!(ipv4_in_any_form("256.0.0.1"), None);
        let uri: hyper::Uri = "http://127.0.0.1:3000".parse().unwrap();
        let up = UpstreamOrigin::new(false, uri.authority().unwrap());
        assert_eq!(
            location_to_client("http://127.0.256.1:3000/git/x", &up, "/git", "", None),
            Redirect::Away
        );
    }

    #[test]
    fn a_redirect_with_a_space_at_either_end_is_not_passed_on() {
        // WHATWG parsers strip leading and trailing spaces, so `  /a/x` is the path `/a/x` to
        // them, outside `/scm`, while read as written it is a relative reference under it
        // (found by fuzz/fuzz_targets/location.rs). hyper's HTTP/1 parser trims a header
        // value's ends; this function does not rely on that.
        let uri: hyper::Uri = "http://127.0.0.1:3000".parse().unwrap();
        let up = UpstreamOrigin::new(false, uri.authority().unwrap());
        for location in ["  /a/x", " /login", "/scm/x ", " team/app.git"] {
            for prefix in ["", "/scm"] {
                assert_eq!(
                    location_to_client(location, &up, "/git", prefix, None),
                    Redirect::Away,
                    "{location:?} under {prefix:?}"
                );
            }
        }
    }

    /// A tab anywhere in a URL is dropped by WHATWG parsers (browsers, Python's urllib, and
    /// what follows them), and a `\` is read as a `/` in an http(s) URL: `/\t/evil.example`
    /// is `//evil.example`, and `/git/team\..\..\x` climbs out of the git prefix. Neither is
    /// passed on, nor rewritten into gitgate's own Location, from the upstream's own URL
    /// included.
    #[test]
    fn a_redirect_with_a_tab_or_a_backslash_is_neither_passed_on_nor_rewritten() {
        let uri: hyper::Uri = "http://127.0.0.1:3000".parse().unwrap();
        let up = UpstreamOrigin::new(false, uri.authority().unwrap());
        let uri: hyper::Uri = "https://git.example.com".parse().unwrap();
        let gitgate = UpstreamOrigin::exactly(true, uri.authority().unwrap());
        let mut passed = Vec::new();
        for location in [
            "/\t/evil.example/x",
            "/git/\t/evil.example/x",
            "/git/team/.\t./.\t./.\t./x",
            "team/.\t./.\t./x",
            "http://127.0.0.1:3000/git/\t/evil.example/x",
            "http://127.0.0.1:3000/git/team/.\t./.\t./.\t./x",
            "http://127.0.0.1:3000/git/team\\..\\..\\x",
            "http://127.0.0.1:3000/git/team/..\\..\\x",
            "https://git.example.com/scm/team/.\t./.\t./x",
        ] {
            for prefix in ["", "/scm"] {
                let r = location_to_client(location, &up, "/git", prefix, Some(&gitgate));
                if matches!(r, Redirect::Unchanged | Redirect::To(_)) {
                    passed.push(format!("{location:?} under {prefix:?}: {r:?}"));
                }
            }
        }
        assert!(passed.is_empty(), "{passed:#?}");
    }
}
