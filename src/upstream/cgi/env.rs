//! The environment a CGI backend starts with: the CGI/1.1 variables for one request and the
//! few git ones, each header passed on by name and only when well-formed (module docs of
//! `cgi`: environment hygiene, httpoxy). Pure: values in, values out.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use hyper::header::{self, HeaderMap};
use hyper::Method;

use super::CgiRequest;

/// `PATH` for the backend when gitgate's own has nothing usable in it.
pub(super) const FALLBACK_PATH: &str = "/usr/bin:/bin";

/// The CGI and git variables for one request (all but `PATH` and `HOME`, which come from the
/// host). Only the headers named here reach the backend, each only when it is well-formed.
pub(super) fn cgi_env(req: &CgiRequest<'_>, project_root: &Path) -> Vec<(&'static str, OsString)> {
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
        // gitgate's id for the request, as an HTTP upstream gets it in `X-Request-Id`: a hook
        // that logs it names the line of gitgate's log that goes with its own.
        ("HTTP_X_REQUEST_ID", req.request_id.to_string().into()),
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
    // Named by `Connection`, it is the client's hop's only, as for an HTTP upstream.
    if let Some(v) = header_str(req.headers, "git-protocol").filter(|v| {
        valid_git_protocol(v)
            && !crate::upstream::headers::named_by_connection(req.headers, "git-protocol")
    }) {
        env.push(("GIT_PROTOCOL", v.into()));
    }
    // Read as the gate's check read it (`gzip,` is gzip there): two readings could tell the
    // backend "not compressed" about a body the check let through as gzip.
    if let Some(v) = crate::upstream::headers::content_coding(req.headers) {
        env.push(("HTTP_CONTENT_ENCODING", v.into()));
    }
    env
}

/// A push: the one request whose backend changes the repository (`git-receive-pack`).
pub(super) fn is_push(req: &CgiRequest<'_>) -> bool {
    req.method == Method::POST && req.path_info.ends_with("/git-receive-pack")
}

/// The single value of a header as text, or `None` if it is absent, repeated or not visible
/// ASCII.
pub(super) fn header_str<K: header::AsHeaderName>(headers: &HeaderMap, name: K) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok().map(str::trim)
}

/// The request's length when it has a trustworthy one. A chunked body has none: the backend
/// then reads stdin to EOF, which is where the stdin task's end of body lands.
pub(super) use crate::upstream::headers::content_length;

/// `Git-Protocol` as git itself writes it ([`crate::upstream::headers::is_git_protocol`], the
/// same rule and length as for an HTTP upstream). Anything else is dropped (git then speaks
/// protocol v0), because the value goes into the environment of a process that parses it.
pub(super) fn valid_git_protocol(v: &str) -> bool {
    crate::upstream::headers::is_git_protocol(v.as_bytes())
}

/// gitgate's `PATH` with empty and relative entries removed (they would resolve against the
/// backend's working directory), or a minimal default. Hooks run by receive-pack need a `PATH`.
pub(super) fn sanitize_path(inherited: Option<&OsStr>) -> OsString {
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
pub(super) fn home_dir(inherited: Option<&OsStr>) -> OsString {
    match inherited {
        Some(home) if home.as_bytes().first() == Some(&b'/') => home.to_owned(),
        _ => "/nonexistent".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use std::net::{IpAddr, Ipv4Addr};

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

    /// The backend is told the coding the gate's check let through, read the same way: every
    /// spelling the check passes as gzip (a trailing comma, an empty line beside it) is gzip
    /// here too, never "not compressed".
    #[test]
    fn content_encoding_is_read_as_the_check_reads_it() {
        use crate::upstream::headers::{content_coding, unsupported_content_coding};
        let headers = |lines: &[&'static str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(header::CONTENT_ENCODING, HeaderValue::from_static(l));
            }
            h
        };
        for (lines, told) in [
            (&["gzip"][..], Some("gzip")),
            (&["GZip"], Some("gzip")),
            (&["x-gzip"], Some("x-gzip")),
            (&["identity"], Some("identity")),
            (&["gzip,"], Some("gzip")),
            (&[", gzip"], Some("gzip")),
            (&["gzip", ""], Some("gzip")),
            (&[" gzip "], Some("gzip")),
            (&[], None),
        ] {
            let h = headers(lines);
            assert_eq!(unsupported_content_coding(&h), None, "{lines:?}");
            assert_eq!(content_coding(&h), told, "{lines:?}");
        }
        for lines in [
            &["br"][..],
            &["gzip, br"],
            &["gzip", "gzip"],
            &["gzip, gzip"],
        ] {
            let h = headers(lines);
            assert!(unsupported_content_coding(&h).is_some(), "{lines:?}");
            assert_eq!(content_coding(&h), None, "{lines:?}");
        }
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
            token_id: "abcdefghijkl",
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            request_id: crate::request_id::RequestId::next(),
            still_allowed: None,
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
        // No client header becomes an `HTTP_` variable; the one there is gitgate's request id.
        let http: Vec<_> = env.iter().filter(|(k, _)| k.starts_with("HTTP_")).collect();
        assert_eq!(
            http,
            [&("HTTP_X_REQUEST_ID", req.request_id.to_string().into())]
        );
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
            token_id: "abcdefghijkl",
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            request_id: crate::request_id::RequestId::next(),
            still_allowed: None,
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

    /// The environment of a fetch with `headers`, by name.
    fn env_with(headers: &HeaderMap) -> Vec<(&'static str, OsString)> {
        let req = CgiRequest {
            method: &Method::POST,
            path_info: "/team/app.git/git-upload-pack",
            query: None,
            headers,
            remote_user: "alice",
            token_id: "abcdefghijkl",
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            request_id: crate::request_id::RequestId::next(),
            still_allowed: None,
        };
        cgi_env(&req, Path::new("/srv/git"))
    }

    fn var(env: &[(&'static str, OsString)], name: &str) -> Option<OsString> {
        env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    }

    /// A header sent twice is no one value: neither copy reaches the backend, which would
    /// otherwise be told whichever came first. Nor does one that is not visible ASCII.
    #[test]
    fn a_repeated_or_non_ascii_header_is_not_passed_on() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-git-upload-pack-request"),
        );
        headers.append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.append("git-protocol", HeaderValue::from_static("version=2"));
        headers.append("git-protocol", HeaderValue::from_static("version=1"));
        let env = env_with(&headers);
        assert_eq!(var(&env, "CONTENT_TYPE"), None);
        assert_eq!(var(&env, "GIT_PROTOCOL"), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_bytes(b"application/x-git-\xe9").unwrap(),
        );
        assert_eq!(var(&env_with(&headers), "CONTENT_TYPE"), None);
    }

    /// Values are passed on without the blanks around them: git http-backend compares the
    /// content type exactly, and a `Git-Protocol` with a blank would be dropped as malformed.
    #[test]
    fn header_values_are_passed_on_trimmed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(" application/x-git-upload-pack-request "),
        );
        headers.insert("git-protocol", HeaderValue::from_static(" version=2 "));
        let env = env_with(&headers);
        assert_eq!(
            var(&env, "CONTENT_TYPE").unwrap(),
            "application/x-git-upload-pack-request"
        );
        assert_eq!(var(&env, "GIT_PROTOCOL").unwrap(), "version=2");
    }

    /// A `Git-Protocol` that `Connection` names is for the hop it came on: the backend is not
    /// told it, as an HTTP upstream is not sent it (`headers::to_upstream`).
    #[test]
    fn git_protocol_named_by_connection_is_not_passed_on() {
        for connection in ["Git-Protocol", "keep-alive, git-protocol"] {
            let mut headers = HeaderMap::new();
            headers.insert("git-protocol", HeaderValue::from_static("version=2"));
            headers.insert(header::CONNECTION, HeaderValue::from_static(connection));
            assert_eq!(
                var(&env_with(&headers), "GIT_PROTOCOL"),
                None,
                "{connection}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert("git-protocol", HeaderValue::from_static("version=2"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(
            var(&env_with(&headers), "GIT_PROTOCOL").unwrap(),
            "version=2"
        );
    }

    /// `Git-Protocol` is passed on up to 256 bytes, as to an HTTP upstream, and dropped beyond.
    #[test]
    fn git_protocol_is_passed_on_up_to_its_length_limit() {
        let max = crate::upstream::headers::MAX_GIT_PROTOCOL;
        assert_eq!(max, 256);
        let at_limit = format!("version=2:{}", "a".repeat(max - 10));
        assert_eq!(at_limit.len(), max);
        assert!(valid_git_protocol(&at_limit));
        assert!(!valid_git_protocol(&format!("{at_limit}a")));
    }

    /// Only a POST to `git-receive-pack` is a push: a GET of that path is not.
    #[test]
    fn only_a_post_is_a_push() {
        let headers = HeaderMap::new();
        let req = |method| CgiRequest {
            method,
            path_info: "/team/app.git/git-receive-pack",
            query: None,
            headers: &headers,
            remote_user: "alice",
            token_id: "abcdefghijkl",
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            request_id: crate::request_id::RequestId::next(),
            still_allowed: None,
        };
        assert!(is_push(&req(&Method::POST)));
        assert!(!is_push(&req(&Method::GET)));
    }
}
