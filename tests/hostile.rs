//! A table of malformed and hostile requests, sent as exact bytes over raw TCP to the real
//! `gitgate serve`, each with the status it must get (and for some, the reason its answer
//! gives) — and a counter on the backend (a CGI wrapper that appends a line per request before
//! `exec`ing `git http-backend`) proving that none of them reached it, while one valid request
//! afterwards did.
//!
//! Many cases carry a *valid* write token on purpose: then only classification stands between
//! the trick and the backend. Throttling and rate limits are turned off here (they have their own
//! test in `tests/hardening.rs`), so that every case gets the answer its own content earns.

mod common;
mod hardening_support;

use hardening_support::{basic, status, Server};

const IR: &str = "/team/app.git/info/refs?service=git-upload-pack";

/// A request with `Connection: close`, so the server closes after answering.
fn req(method: &str, target: &str, headers: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: gitgate.test\r\n{headers}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

fn auth(user: &str, secret: &str) -> String {
    format!("Authorization: {}\r\n", basic(user, secret))
}

fn auth_bytes(raw: &[u8]) -> String {
    use base64::Engine;
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn cases(w: &str, r: &str) -> Vec<(&'static str, Vec<u8>, u16)> {
    let aw = auth("alice", w);
    let ar = auth("alice", r);
    let mut tampered = w.to_string();
    let last = if tampered.ends_with('a') { "b" } else { "a" };
    tampered.pop();
    tampered.push_str(last);
    let big = "x".repeat(70 * 1024);
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut non_utf8_header = b"GET ".to_vec();
    non_utf8_header.extend_from_slice(IR.as_bytes());
    non_utf8_header.extend_from_slice(
        b" HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xff\xfe\xfd\r\nConnection: close\r\n\r\n",
    );
    let mut non_utf8_path = b"GET /team/app\xff.git/info/refs HTTP/1.1\r\nHost: x\r\n".to_vec();
    non_utf8_path.extend_from_slice(aw.as_bytes());
    non_utf8_path.extend_from_slice(b"Connection: close\r\n\r\n");

    vec![
        // --- credentials: all refused with the Basic challenge
        ("no credentials", req("GET", IR, ""), 401),
        (
            "bad base64",
            req("GET", IR, "Authorization: Basic !!!notbase64\r\n"),
            401,
        ),
        (
            "base64 without colon",
            req("GET", IR, &auth_bytes(b"alicenocolon")),
            401,
        ),
        ("empty user", req("GET", IR, &auth("", w)), 401),
        ("empty secret", req("GET", IR, &auth("alice", "")), 401),
        (
            "empty user and secret",
            req("GET", IR, &auth_bytes(b":")),
            401,
        ),
        (
            "non-UTF-8 inside base64",
            req("GET", IR, &auth_bytes(&[b'a', 0xff, b':', b'x'])),
            401,
        ),
        ("non-UTF-8 header value", non_utf8_header, 401),
        (
            "wrong secret",
            req("GET", IR, &auth("alice", "ggt_wrong")),
            401,
        ),
        (
            "tampered checksum",
            req("GET", IR, &auth("alice", &tampered)),
            401,
        ),
        (
            "token with extra byte",
            req("GET", IR, &auth("alice", &format!("{w}x"))),
            401,
        ),
        (
            "wrong user for personal token",
            req("GET", IR, &auth("bob", w)),
            401,
        ),
        (
            "control character in user",
            req("GET", IR, &auth("al\x01ice", w)),
            401,
        ),
        (
            "Bearer with bad characters",
            req("GET", IR, "Authorization: Bearer a!b\r\n"),
            403,
        ),
        (
            "Bearer empty",
            req("GET", IR, "Authorization: Bearer \r\n"),
            403,
        ),
        (
            "Bearer with two words",
            req("GET", IR, &format!("Authorization: Bearer {w} {w}\r\n")),
            403,
        ),
        (
            "unknown scheme",
            req("GET", IR, "Authorization: Digest username=\"alice\"\r\n"),
            // Not git's own (it sends `Basic` only): a 403 git prints.
            403,
        ),
        (
            "scheme only",
            req("GET", IR, "Authorization: Basic\r\n"),
            401,
        ),
        (
            "empty Authorization",
            req("GET", IR, "Authorization:\r\n"),
            // Not git's own (it sends `Basic` only): a 403 git prints.
            403,
        ),
        (
            "duplicate Authorization, both valid",
            req("GET", IR, &format!("{aw}{aw}")),
            401,
        ),
        (
            "duplicate Authorization, valid then junk",
            req("GET", IR, &format!("{aw}Authorization: Basic junk\r\n")),
            401,
        ),
        (
            "Authorization over 8 KiB",
            req(
                "GET",
                IR,
                &format!("Authorization: Basic {}\r\n", "A".repeat(9000)),
            ),
            401,
        ),
        // --- header injection and broken header syntax: hyper refuses before the gate runs
        (
            "bare CR in a header value",
            req(
                "GET",
                IR,
                &format!("Authorization: {}\rX-Injected: 1\r\n", basic("alice", w)),
            ),
            400,
        ),
        (
            "obs-fold continuation line",
            req("GET", IR, &format!("{aw} X-Folded: yes\r\n")),
            400,
        ),
        (
            "space in a header name",
            req("GET", IR, "Authori zation: Basic eA==\r\n"),
            400,
        ),
        (
            "NUL in a header value",
            req("GET", IR, "X-A: a\0b\r\n"),
            400,
        ),
        (
            "header line without colon",
            req("GET", IR, "NoColonHere\r\n"),
            400,
        ),
        (
            "two Host headers, with a valid token",
            req("GET", IR, &format!("{aw}Host: other.test\r\n")),
            400,
        ),
        (
            "no Host header, with a valid token",
            format!("GET {IR} HTTP/1.1\r\n{aw}Connection: close\r\n\r\n").into_bytes(),
            400,
        ),
        // Hosts a list reader takes for two, or none: refused, not passed on without
        // X-Forwarded-Host.
        (
            "two hosts joined by a comma, with a valid token",
            format!("GET {IR} HTTP/1.1\r\nHost: 127.0.0.1,evil.example\r\n{aw}Connection: close\r\n\r\n")
                .into_bytes(),
            400,
        ),
        (
            "an empty Host, with a valid token",
            format!("GET {IR} HTTP/1.1\r\nHost:\r\n{aw}Connection: close\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "absolute-form target of two hosts, with a valid token",
            req("GET", &format!("http://gitgate.test,evil{IR}"), &aw),
            400,
        ),
        // A body git never sends, holding a whole request for an upstream that reads GETs as
        // bodiless: refused, with a valid token.
        (
            "GET with a body of a stated length",
            [
                req("GET", IR, &format!("{aw}Content-Length: 64\r\n")),
                format!("{:<64}", "GET /team/app.git/info/refs HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            ]
            .concat(),
            400,
        ),
        (
            "HEAD with a chunked body",
            [
                req("HEAD", IR, &format!("{aw}Transfer-Encoding: chunked\r\n")),
                b"5\r\nhello\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            400,
        ),
        (
            "CRLF injected in the request target",
            req("GET", "/team/app.git/info/refs\r\nX-Evil: 1", ""),
            400,
        ),
        // --- size limits
        (
            "70 KiB header",
            req("GET", IR, &format!("X-Big: {big}\r\n")),
            431,
        ),
        ("200 headers", req("GET", IR, &many_headers), 431),
        (
            "70 KiB request target",
            req("GET", &format!("/team/app.git/info/refs?{big}"), ""),
            431,
        ),
        // Over the 8 KiB nginx reads by default, with a token that would be let in: 414.
        (
            "9 KiB repository path",
            req(
                "GET",
                &format!(
                    "/team/{}.git/info/refs?service=git-upload-pack",
                    "a".repeat(9000)
                ),
                &aw,
            ),
            414,
        ),
        // Under it, a repository of 2 KiB that is not there, with a token: its lines (the
        // request line, `request refused` with the backend's reason naming it) are cut.
        (
            "2 KiB repository path",
            req(
                "GET",
                &format!(
                    "/team/{}.git/info/refs?service=git-upload-pack",
                    "b".repeat(2000)
                ),
                &aw,
            ),
            404,
        ),
        (
            "9 KiB query",
            req("GET", &format!("{IR}&x={}", "q".repeat(9000)), &aw),
            414,
        ),
        (
            "9 KiB REST API path",
            req(
                "GET",
                &format!("/rest/access-tokens/1.0/users/{}", "u".repeat(9000)),
                &aw,
            ),
            414,
        ),
        // --- methods
        ("unknown method on info/refs", req("FOO", IR, &aw), 405),
        ("lowercase get", req("get", IR, &aw), 405),
        (
            "PROPFIND on a repository",
            req("PROPFIND", "/team/app.git/", &aw),
            404,
        ),
        (
            "PROPFIND on info/refs",
            req("PROPFIND", "/team/app.git/info/refs", &aw),
            405,
        ),
        (
            "MKCOL a new repository",
            req("MKCOL", "/team/new.git/", &aw),
            404,
        ),
        (
            "PUT over info/refs",
            req("PUT", "/team/app.git/info/refs", &aw),
            405,
        ),
        ("DELETE HEAD", req("DELETE", "/team/app.git/HEAD", &aw), 405),
        ("LOCK HEAD", req("LOCK", "/team/app.git/HEAD", &aw), 405),
        (
            "MOVE a repository",
            req(
                "MOVE",
                "/team/app.git/",
                &format!("{aw}Destination: /team/b.git/\r\n"),
            ),
            404,
        ),
        ("TRACE info/refs", req("TRACE", IR, &aw), 405),
        ("OPTIONS *", req("OPTIONS", "*", &aw), 404),
        ("POST to info/refs", req("POST", IR, &aw), 405),
        (
            "GET git-upload-pack",
            req("GET", "/team/app.git/git-upload-pack", &aw),
            405,
        ),
        (
            "PATCH git-receive-pack",
            req("PATCH", "/team/app.git/git-receive-pack", &aw),
            405,
        ),
        // --- request framing
        // hyper frames such a request by Transfer-Encoding alone and drops Content-Length
        // (RFC 9112 §6.3), so the gate and the backend see one unambiguous body; the read
        // token's push is then refused as usual.
        (
            "Content-Length and Transfer-Encoding",
            req(
                "POST",
                "/team/app.git/git-receive-pack",
                &format!("{ar}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
            ),
            403,
        ),
        (
            "Transfer-Encoding and Content-Length",
            req(
                "POST",
                "/team/app.git/git-receive-pack",
                &format!("{ar}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
            ),
            403,
        ),
        (
            "two different Content-Lengths",
            req(
                "POST",
                "/team/app.git/git-receive-pack",
                &format!("{ar}Content-Length: 5\r\nContent-Length: 6\r\n"),
            ),
            400,
        ),
        (
            "negative Content-Length",
            req(
                "POST",
                "/team/app.git/git-receive-pack",
                &format!("{ar}Content-Length: -1\r\n"),
            ),
            400,
        ),
        (
            "non-numeric Content-Length",
            req(
                "POST",
                "/team/app.git/git-receive-pack",
                &format!("{ar}Content-Length: abc\r\n"),
            ),
            400,
        ),
        // A body in a coding git's backends do not read (valid token, upload-pack: only the
        // coding stops it).
        (
            "Content-Encoding br",
            req(
                "POST",
                "/team/app.git/git-upload-pack",
                &format!("{ar}Content-Encoding: br\r\nContent-Length: 0\r\n"),
            ),
            415,
        ),
        (
            "two Content-Encodings",
            req(
                "POST",
                "/team/app.git/git-upload-pack",
                &format!(
                    "{ar}Content-Encoding: gzip\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n"
                ),
            ),
            415,
        ),
        // The gate looks for each of these fields in one pass over the names
        // (`fields_present`): spelled in capitals or odd case, or on a second line after a
        // harmless first, each is refused as in its usual spelling.
        (
            "Content-Encoding br, in capitals",
            req(
                "POST",
                "/team/app.git/git-upload-pack",
                &format!("{ar}CONTENT-ENCODING: br\r\nContent-Length: 0\r\n"),
            ),
            415,
        ),
        (
            "Content-Encoding br on a second line",
            req(
                "POST",
                "/team/app.git/git-upload-pack",
                &format!(
                    "{ar}Content-Encoding: gzip\r\ncontent-encoding: br\r\nContent-Length: 0\r\n"
                ),
            ),
            415,
        ),
        (
            "Transfer-Encoding gzip, chunked, in capitals",
            req(
                "POST",
                "/team/app.git/git-upload-pack",
                &format!("{ar}TRANSFER-ENCODING: gzip, chunked\r\n"),
            ),
            501,
        ),
        (
            "Transfer-Encoding gzip, then chunked on a second line",
            req(
                "POST",
                "/team/app.git/git-upload-pack",
                &format!("{ar}Transfer-Encoding: gzip\r\ntRANSFER-eNCODING: chunked\r\n"),
            ),
            501,
        ),
        (
            "Content-Length past what git servers read, in capitals",
            req(
                "POST",
                "/team/app.git/git-upload-pack",
                &format!("{ar}CONTENT-LENGTH: 9223372036854775808\r\n"),
            ),
            400,
        ),
        (
            "Origin of another site, in capitals",
            req("GET", IR, &format!("{aw}ORIGIN: https://evil.example\r\n")),
            403,
        ),
        (
            "Sec-Fetch-Site cross-site, in odd case",
            req("GET", IR, &format!("{aw}sEC-fETCH-sITE: cross-site\r\n")),
            403,
        ),
        (
            "Sec-Fetch-Site cross-site on a second line",
            req(
                "GET",
                IR,
                &format!("{aw}Sec-Fetch-Site: same-origin\r\nsec-fetch-site: cross-site\r\n"),
            ),
            403,
        ),
        (
            "Transfer-Encoding not ending in chunked",
            req(
                "POST",
                "/team/app.git/git-receive-pack",
                &format!("{ar}Transfer-Encoding: gzip\r\n"),
            ),
            400,
        ),
        (
            "read token pushing, chunked",
            req(
                "POST",
                "/team/app.git/git-receive-pack",
                &format!("{ar}Transfer-Encoding: chunked\r\n"),
            ),
            403,
        ),
        (
            "unsupported HTTP version",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "request line without version",
            format!("GET {IR}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "TLS ClientHello on the plain port",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            400,
        ),
        (
            "absolute-form target, no credentials",
            req("GET", &format!("http://gitgate.test{IR}"), ""),
            401,
        ),
        (
            "absolute-form target naming another host than Host",
            req("GET", &format!("http://evil.example{IR}"), &aw),
            400,
        ),
        // --- traversal, in every encoding (valid token: classification alone must stop them)
        (
            "dot-dot segment",
            req(
                "GET",
                "/team/../team/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "encoded dot-dot",
            req(
                "GET",
                "/team/%2e%2e/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "encoded dot-dot, upper case",
            req(
                "GET",
                "/team/%2E%2E/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "half-encoded dot-dot",
            req(
                "GET",
                "/team/.%2e/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "double-encoded dot-dot",
            req(
                "GET",
                "/team/%252e%252e/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "overlong UTF-8 dots",
            req(
                "GET",
                "/team/%c0%ae%c0%ae/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "unicode two-dot leader",
            req(
                "GET",
                "/team/%e2%80%a5/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "encoded slash between project and repo",
            req(
                "GET",
                "/team%2fapp.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            404,
        ),
        (
            "encoded slashes hiding the suffix",
            req(
                "GET",
                "/team/app.git%2finfo%2frefs?service=git-upload-pack",
                &aw,
            ),
            404,
        ),
        (
            "backslash",
            req(
                "GET",
                "/team\\app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "encoded backslash",
            req(
                "GET",
                "/team/%5c../app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "leading double slash",
            req(
                "GET",
                "//team/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "double slash inside",
            req(
                "GET",
                "/team//app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "leading dot segment",
            req(
                "GET",
                "/./team/app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "dot segment before suffix",
            req(
                "GET",
                "/team/app.git/./info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "dot-dot inside the suffix",
            req(
                "GET",
                "/team/app.git/info/../info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "encoded NUL",
            req(
                "GET",
                "/team/%00app.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "NUL before .git",
            req(
                "GET",
                "/team/app%00.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "encoded space",
            req(
                "GET",
                "/team/app.git%20/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        ("raw non-UTF-8 in the path", non_utf8_path, 400),
        (
            "encoded NUL after the suffix",
            req(
                "GET",
                "/team/app.git/info/refs%00?service=git-upload-pack",
                &aw,
            ),
            404,
        ),
        (
            "climb to /etc/passwd",
            req("GET", "/../../etc/passwd", &aw),
            404,
        ),
        (
            "climb out of objects",
            req("GET", "/team/app.git/objects/../../../../etc/passwd", &aw),
            404,
        ),
        (
            "repository config",
            req("GET", "/team/app.git/config", &aw),
            404,
        ),
        (
            "repository hooks",
            req("GET", "/team/app.git/hooks/pre-receive", &aw),
            404,
        ),
        (
            "LFS batch (unsupported)",
            req("POST", "/team/app.git/info/lfs/objects/batch", &aw),
            404,
        ),
        // --- `.git` alias tricks
        (
            "double .git",
            req(
                "GET",
                "/team/app.git.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "bare .git as repository",
            req("GET", "/team/.git/info/refs?service=git-upload-pack", &aw),
            400,
        ),
        (
            "work-tree .git folder",
            req(
                "GET",
                "/team/app/.git/info/refs?service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "upper-case project escapes the grant",
            req(
                "GET",
                "/TEAM/APP.GIT/info/refs?service=git-upload-pack",
                &aw,
            ),
            403,
        ),
        (
            "trailing slash, no endpoint",
            req("GET", "/team/app.git/", &aw),
            404,
        ),
        (
            "only a project",
            req("GET", "/team/info/refs?service=git-upload-pack", &aw),
            404,
        ),
        // --- query tricks
        (
            "service given twice",
            req(
                "GET",
                "/team/app.git/info/refs?service=git-upload-pack&service=git-receive-pack",
                &aw,
            ),
            400,
        ),
        (
            "read token asking for receive-pack",
            req(
                "GET",
                "/team/app.git/info/refs?service=git-receive-pack",
                &ar,
            ),
            403,
        ),
        (
            "service with encoded NUL",
            req(
                "GET",
                "/team/app.git/info/refs?service=git-upload-pack%00",
                &aw,
            ),
            400,
        ),
        (
            "unknown service",
            req(
                "GET",
                "/team/app.git/info/refs?service=git-upload-packx",
                &aw,
            ),
            400,
        ),
        (
            "bad escape in service",
            req("GET", "/team/app.git/info/refs?service=%zz", &aw),
            400,
        ),
        (
            "semicolon-separated services",
            req(
                "GET",
                "/team/app.git/info/refs?service=git-receive-pack;service=git-upload-pack",
                &aw,
            ),
            400,
        ),
        (
            "upload-pack query on a receive-pack POST",
            req(
                "POST",
                "/team/app.git/git-receive-pack?service=git-upload-pack",
                &format!("{ar}Content-Length: 0\r\n"),
            ),
            403,
        ),
        (
            "receive-pack advertisement without credentials",
            req(
                "GET",
                "/team/app.git/info/refs?service=git-receive-pack",
                "",
            ),
            401,
        ),
    ]
}

/// What the answer's body must say for some rows of [`cases`], by row name: where another
/// check further on would refuse the same request with the same status, only the reason tells
/// that the check the row is named for did it.
fn reasons() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "bad base64",
            "unusable Authorization header: Basic credentials are not valid base64",
        ),
        (
            "base64 without colon",
            "unusable Authorization header: Basic credentials have no ':' between user and \
             password",
        ),
        // A token that parses would be looked up and refused as "invalid token".
        (
            "tampered checksum",
            "invalid token: the password has the length of a gitgate access token but a \
             character in it is wrong (its last six, a checksum, do not match the rest)",
        ),
        // Passed on, the name would be refused as not the personal token's owner.
        (
            "control character in user",
            "unusable Authorization header: Basic user name contains control characters",
        ),
        // 9000 `A`s decode to NULs without a ':', refused for that if not for their size.
        (
            "Authorization over 8 KiB",
            "unusable Authorization header: header is larger than 8 KiB",
        ),
    ]
}

#[test]
fn hostile_requests_get_their_status_and_never_reach_the_backend() {
    let mut server = Server::start(
        "[auth_failures]\nmax = 100000\nwindow_seconds = 1\n[rate_limit]\nenabled = false\n",
    );
    let table = cases(&server.write_token, &server.read_token);
    assert!(table.len() >= 60, "only {} cases", table.len());
    let reasons = reasons();
    for (name, _) in &reasons {
        assert!(
            table.iter().any(|(row, _, _)| row == name),
            "a reason for {name:?}, which is no row"
        );
    }

    let mut wrong = Vec::new();
    for (name, bytes, expected) in &table {
        let resp = server.raw(bytes);
        let got = status(&resp);
        if got != *expected {
            let head = String::from_utf8_lossy(&resp);
            let head = head.lines().take(1).collect::<Vec<_>>().join(" ");
            wrong.push(format!("{name}: expected {expected}, got {got} ({head})"));
        }
        if let Some((_, reason)) = reasons.iter().find(|(row, _)| row == name) {
            let text = String::from_utf8_lossy(&resp);
            let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            if !body.contains(reason) {
                wrong.push(format!(
                    "{name}: expected {reason:?} in the body, got {body:?}"
                ));
            }
        }
        // RFC 9110 §15.5.6: a 405 names the methods the resource takes.
        if got == 405 {
            let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
            let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let allow = head.lines().find_map(|l| l.strip_prefix("allow: "));
            let request = String::from_utf8_lossy(bytes);
            let target = request.split(' ').nth(1).unwrap_or("");
            let path = target.split('?').next().unwrap_or("");
            let rpc = path.ends_with("/git-upload-pack") || path.ends_with("/git-receive-pack");
            let fits = allow == Some(if rpc { "post" } else { "get, head" });
            if !fits {
                wrong.push(format!("{name}: 405 with Allow {allow:?}"));
            }
        }
    }
    let hits = server.backend_hits();
    assert!(
        wrong.is_empty(),
        "{} of {} cases got the wrong status or reason:\n{}",
        wrong.len(),
        table.len(),
        wrong.join("\n")
    );
    assert!(
        hits.is_empty(),
        "hostile requests reached the backend: {hits:?}"
    );
    assert!(server.alive(), "the server died:\n{}", server.log());
    // A long path anyone may send is logged cut: no line near its length (a path and a
    // repository of 1 KiB at most, a free-text reason of 2 KiB).
    let log = server.log();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4000, "a log line of {longest} bytes:\n{log}");
    assert!(
        log.contains("bytes in all, cut)\""),
        "no path was logged cut:\n{log}"
    );
    // Each 414 says why in a line of its own, the REST API's too.
    let said_414 = log
        .lines()
        .filter(|l| l.contains("refused a request for its form") && l.contains("status=414"))
        .count();
    assert_eq!(said_414, 3, "{log}");

    // The counter counts: one valid request gets through, and only it.
    let ok = server.raw(&req("GET", IR, &auth("alice", &server.write_token)));
    assert_eq!(status(&ok), 200, "{}", String::from_utf8_lossy(&ok));
    assert_eq!(
        server.backend_hits().len(),
        1,
        "{:?}",
        server.backend_hits()
    );
    assert!(!server.log().contains("panic"), "{}", server.log());
}

/// SECURITY.md promise 5: an HTTP/1.1 request without `Host` is refused `400` (RFC 9112 §3.2)
/// — but the probes are answered before that check, as a load balancer's health check may
/// send none, and they hold nothing a host could be confused over. Sent over raw TCP, since a
/// client library would add the header. It fails if the probes come after the `Host` check
/// (they would be `400` too), or if a git request without `Host` gets past it.
#[test]
fn the_probes_are_answered_without_a_host_and_git_requests_are_not() {
    let server = Server::start("");
    let without_host = |method: &str, target: &str, headers: &str| {
        server.raw(
            format!("{method} {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
        )
    };
    let text = |resp: &[u8]| String::from_utf8_lossy(resp).into_owned();
    for (method, probe) in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("HEAD", "/healthz"),
    ] {
        let resp = without_host(method, probe, "");
        assert_eq!(status(&resp), 200, "{method} {probe}: {}", text(&resp));
        // The same with a Host, for comparison: the answer does not depend on it.
        let with_host = server.raw(&req(method, probe, ""));
        assert_eq!(
            status(&with_host),
            200,
            "{method} {probe}: {}",
            text(&with_host)
        );
    }
    let w = auth("alice", &server.write_token);
    for (method, target, headers) in [
        ("GET", IR, w.as_str()),
        ("GET", IR, ""),
        ("GET", "/team/app.git/HEAD", w.as_str()),
        ("GET", "/rest/access-tokens/1.0/users/alice", ""),
    ] {
        let resp = without_host(method, target, headers);
        assert_eq!(status(&resp), 400, "{method} {target}: {}", text(&resp));
        assert!(
            text(&resp).to_ascii_lowercase().contains("host"),
            "{method} {target}: {}",
            text(&resp)
        );
    }
    // Nothing without a Host reached the backend; the same request with one does.
    assert!(
        server.backend_hits().is_empty(),
        "{:?}",
        server.backend_hits()
    );
    let ok = server.raw(&req("GET", IR, &w));
    assert_eq!(status(&ok), 200, "{}", text(&ok));
    assert_eq!(
        server.backend_hits().len(),
        1,
        "{:?}",
        server.backend_hits()
    );
}

/// Send `bytes` on a fresh connection and read until the server closes it (or 10 s pass):
/// every answer it gave, pipelined ones included.
fn all_answers(server: &Server, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The statuses of the answers in `text`, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12))
        .collect()
}

/// SECURITY.md promise 5 (smuggling past the gate): the body of a refused request is body,
/// however much it looks like a request. A read token's push carries, as its body, a whole
/// request for the repository's advertisement with the write token — stated by its length,
/// chunked, or sent after an `Expect: 100-continue` that was refused — and a plain request
/// follows on the same connection. The refusal is answered, then the request that follows
/// (where the connection is kept: not after the `Expect`, which gitgate answers with
/// `Connection: close`), and the one inside the body never reaches the backend. Were the
/// refused body's bytes read as the next request, the backend would see `info/refs` and a
/// third answer would come.
#[test]
fn a_request_inside_a_refused_requests_body_is_never_read_as_one() {
    let server = Server::start("[rate_limit]\nenabled = false\n");
    let hidden = format!(
        "GET {IR} HTTP/1.1\r\nHost: gitgate.test\r\n{}\r\n",
        auth("alice", &server.write_token)
    );
    let read = auth("alice", &server.read_token);
    let push = |framing: &str, body: &str| {
        format!(
            "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: gitgate.test\r\n{read}\
             Content-Type: application/x-git-receive-pack-request\r\n{framing}\r\n{body}"
        )
    };
    let then = format!(
        "GET /team/app.git/HEAD HTTP/1.1\r\nHost: gitgate.test\r\n{read}Connection: close\r\n\r\n"
    );
    let cases = [
        (
            "stated length",
            push(&format!("Content-Length: {}\r\n", hidden.len()), &hidden),
            vec!["403", "200"],
        ),
        (
            "chunked",
            push(
                "Transfer-Encoding: chunked\r\n",
                &format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len()),
            ),
            vec!["403", "200"],
        ),
        (
            "Expect: 100-continue refused, body sent all the same",
            push(
                &format!(
                    "Expect: 100-continue\r\nContent-Length: {}\r\n",
                    hidden.len()
                ),
                &hidden,
            ),
            vec!["403"],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, request, expected) in cases {
        let answers = all_answers(&server, format!("{request}{then}").as_bytes());
        if statuses(&answers) != expected {
            wrong.push(format!("{name}: expected {expected:?}, got:\n{answers}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let hits = server.backend_hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(
        hits.iter()
            .all(|h| h.starts_with("GET /team/app.git/HEAD?")),
        "the request inside a refused body reached the backend: {hits:?}"
    );
}

/// The probes take `GET` and `HEAD` only: another method on their paths is a `405` naming the
/// two in `Allow` (RFC 9110 §15.5.6), as a load balancer or a scanner expects of a resource
/// that is there — not the `404` of a git path that is not. Never forwarded, and each refusal
/// has its request line. It fails if a probe's path with another method falls through to the
/// gate (`404`), or if `GET`/`HEAD` stop being answered `200`.
#[test]
fn a_probe_asked_with_another_method_is_405_allowing_get_and_head() {
    let server = Server::start("");
    let text = |resp: &[u8]| String::from_utf8_lossy(resp).into_owned();
    for probe in ["/healthz", "/readyz"] {
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let body = if method == "OPTIONS" {
                ""
            } else {
                "Content-Length: 2\r\n"
            };
            let mut bytes = req(method, probe, body);
            if !body.is_empty() {
                bytes.extend_from_slice(b"{}");
            }
            let resp = server.raw(&bytes);
            let said = text(&resp);
            assert_eq!(status(&resp), 405, "{method} {probe}: {said}");
            let (head, body) = said.split_once("\r\n\r\n").unwrap_or((&said, ""));
            assert!(
                head.to_ascii_lowercase()
                    .contains("\r\nallow: get, head\r\n"),
                "{method} {probe}: {said}"
            );
            assert_eq!(
                body,
                format!("{probe} accepts GET or HEAD, not {method}\n"),
                "{method} {probe}"
            );
        }
        for method in ["GET", "HEAD"] {
            let resp = server.raw(&req(method, probe, ""));
            assert_eq!(status(&resp), 200, "{method} {probe}: {}", text(&resp));
        }
    }
    assert!(
        server.backend_hits().is_empty(),
        "{:?}",
        server.backend_hits()
    );
    // The log is written by a thread of its own: its lines may come a moment later.
    let refused = |log: &str| {
        log.lines()
            .filter(|l| l.contains("status=405") && l.contains("outcome=method-not-allowed"))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while refused(&server.log()) < 8 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = server.log();
    assert_eq!(refused(&log), 8, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("method=DELETE") && l.contains("path=/readyz")),
        "{log}"
    );
}
