//! Keeping web pages out of the management API (cross-site request forgery).
//!
//! The API takes HTTP Basic, and a browser that was once given a user's password for it (its
//! 401s carry a challenge, so opening an API address in a browser asks for one) sends that
//! password with every later request to the site — also with a form another site's page
//! submits. A form can `POST` with no header of its own, as `text/plain` whose body can be made
//! into JSON (`{"name":"ci=","permissions":["PROJECT_ADMIN"]}` from a field named `{"name":"ci`),
//! or with an empty body, which is all a rotation needs. gitgate serves no web pages, so a
//! change that comes from one is refused before the password is checked:
//!
//! - a body must be JSON by its `Content-Type` (`application/json`, or a `+json` type), which a
//!   form cannot send and a script must then ask the browser's leave for (CORS; gitgate answers
//!   no preflight);
//! - a change (any method but `GET`, `HEAD` and `OPTIONS`) must not say it comes from a page of
//!   another site: `Sec-Fetch-Site` other than `none` or `same-origin`, or an `Origin` that is
//!   not the address asked (`Host`, or HTTP/2's `:authority`). Browsers send them; scripts and
//!   the CLI send neither, and are not affected.
//! - nor a read, unless it is a link its user followed to the API (`Sec-Fetch-Mode: navigate`,
//!   `Sec-Fetch-Dest: document`, `Sec-Fetch-User: ?1`): a page may not read the API, but its
//!   `<img src>` would still
//!   have the browser send the password, and every such call costs a password check and a token
//!   of the user's rate-limit bucket, the one their git requests draw from. A page firing them
//!   kept a user's clones refused `429` for as long as it was open. A read's `Origin` (sent
//!   only by a cross-origin `fetch`, and by its preflight `OPTIONS`) must be the address asked
//!   too.
//!
//! The judgement of where a request comes from is `cross_site`'s, which the git URLs use too.
//!
//! Bitbucket refuses the same requests ("XSRF check failed") unless told otherwise by a header.

use hyper::header::{HeaderMap, CONTENT_TYPE};
use hyper::{Method, StatusCode, Uri};

/// Why a request is refused as one a web page could have made: its status (`403` for a page of
/// another site, `415` for a body that is not JSON) and the message. `body_follows`: the
/// request has a body (over HTTP/2 it may come without a `Content-Length`).
pub fn refusal(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_follows: bool,
) -> Option<(StatusCode, String)> {
    let change = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let takes = if change {
        "the API takes changes from scripts and the CLI"
    } else {
        "the API answers scripts, the CLI and a link followed to it, not a page that fetches \
         from it"
    };
    if let Some(said) = crate::cross_site::from_another_site(method, uri, headers) {
        return Some((
            StatusCode::FORBIDDEN,
            format!(
                "refused: this request comes from a web page of another site ({said}); {takes}"
            ),
        ));
    }
    if !change {
        return None;
    }
    if body_follows && !is_json(headers) {
        let given: Vec<String> = headers
            .get_all(CONTENT_TYPE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the request body must be JSON, sent with Content-Type: application/json (it \
                 came {})",
                match given.as_slice() {
                    [] => "without a Content-Type".to_string(),
                    [one] => format!("as {one}"),
                    more => format!(
                        "with {} Content-Type lines: {}",
                        more.len(),
                        more.join(", ")
                    ),
                }
            ),
        ));
    }
    None
}

/// `application/json`, or a `+json` type, with any parameters (`; charset=utf-8`), said once.
fn is_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (types.next(), types.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json") && !media.contains(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// As the API calls it: a body follows when the request announces one.
    fn refused(method: Method, pairs: &[(&'static str, &'static str)]) -> Option<StatusCode> {
        let uri: Uri = "/rest/access-tokens/1.0/users/alice".parse().unwrap();
        let body_follows = pairs
            .iter()
            .any(|(k, v)| *k == "transfer-encoding" || (*k == "content-length" && *v != "0"));
        refusal(&method, &uri, &headers(pairs), body_follows).map(|(status, _)| status)
    }

    #[test]
    fn a_page_of_another_site_cannot_change_anything() {
        let host = ("host", "git.example.com:8080");
        for cross in [
            &[host, ("origin", "https://evil.example")][..],
            &[host, ("origin", "null")],
            &[host, ("origin", "http://git.example.com")], // another port: another origin
            &[host, ("sec-fetch-site", "cross-site")],
            &[host, ("sec-fetch-site", "same-site")],
            // A second line behind a first that would pass, and before it: every line counts.
            &[
                host,
                ("origin", "http://git.example.com:8080"),
                ("origin", "https://evil.example"),
            ],
            &[
                host,
                ("origin", "https://evil.example"),
                ("origin", "http://git.example.com:8080"),
            ],
            &[
                host,
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-site", "cross-site"),
            ],
            &[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-site", "same-origin"),
            ],
        ] {
            for method in [Method::POST, Method::PUT, Method::DELETE] {
                assert_eq!(
                    refused(method.clone(), cross),
                    Some(StatusCode::FORBIDDEN),
                    "{method} {cross:?}"
                );
            }
            // Nor read it: a page's `<img>` would have the browser send the password.
            for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
                assert_eq!(
                    refused(method.clone(), cross),
                    Some(StatusCode::FORBIDDEN),
                    "{method} {cross:?}"
                );
            }
        }
        // The same site, and scripts (no such header): let through.
        for own in [
            &[host, ("origin", "http://GIT.example.com:8080")][..],
            &[host, ("sec-fetch-site", "same-origin")],
            &[host, ("sec-fetch-site", "none")],
            &[host],
            &[],
        ] {
            assert_eq!(refused(Method::POST, own), None, "{own:?}");
        }
    }

    /// A link of another site's page followed to the API is answered, as a URL typed in is:
    /// the answer is for the user, in their window. Anything else such a page has the browser
    /// send is not, whatever it claims beside.
    #[test]
    fn a_page_of_another_site_may_link_to_the_api_but_not_fetch_from_it() {
        let host = ("host", "git.example.com:8080");
        let link = [
            host,
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
            ("sec-fetch-user", "?1"),
        ];
        assert_eq!(refused(Method::GET, &link), None);
        let same_site_link = [
            host,
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "Navigate"),
            ("sec-fetch-dest", "DOCUMENT"),
            ("sec-fetch-user", "?1"),
        ];
        assert_eq!(refused(Method::GET, &same_site_link), None);
        // The same headers on a change (a form's POST is a navigation too), or a HEAD, which no
        // link sends.
        for method in [Method::POST, Method::HEAD] {
            assert_eq!(
                refused(method.clone(), &link),
                Some(StatusCode::FORBIDDEN),
                "{method}"
            );
        }
        for fetched in [
            // `<img src>`, `<script src>`, `fetch(url, {mode: "no-cors"})`.
            &[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "no-cors"),
                ("sec-fetch-dest", "image"),
            ][..],
            // An `<iframe>`: a navigation, but inside the page.
            &[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "iframe"),
            ],
            // Not all said: not a link followed.
            &[host, ("sec-fetch-site", "cross-site")],
            &[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-user", "?1"),
            ],
            // A window the page's script navigates, without its user's click.
            &[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document"),
            ],
            // A second line of either must not make a fetch pass for a link.
            &[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-mode", "no-cors"),
                ("sec-fetch-dest", "document"),
                ("sec-fetch-user", "?1"),
            ],
            &[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "image"),
                ("sec-fetch-dest", "document"),
                ("sec-fetch-user", "?1"),
            ],
            // A cross-origin `fetch` in CORS mode says its page's origin.
            &[host, ("origin", "https://evil.example")],
            &[
                host,
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document"),
                ("sec-fetch-user", "?1"),
            ],
        ] {
            assert_eq!(
                refused(Method::GET, fetched),
                Some(StatusCode::FORBIDDEN),
                "{fetched:?}"
            );
        }
        // Reads of the site itself, and of scripts.
        for own in [
            &[
                host,
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "cors"),
            ][..],
            &[
                host,
                ("sec-fetch-site", "none"),
                ("sec-fetch-mode", "navigate"),
            ],
            &[host, ("origin", "http://git.example.com:8080")],
            &[host],
        ] {
            for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
                assert_eq!(refused(method.clone(), own), None, "{method} {own:?}");
            }
        }
    }

    #[test]
    fn a_body_must_say_it_is_json() {
        for form in [
            &[("content-length", "12"), ("content-type", "text/plain")][..],
            &[
                ("content-length", "12"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &[
                ("content-length", "12"),
                ("content-type", "multipart/form-data; boundary=x"),
            ],
            &[("content-length", "12")],
            &[
                ("transfer-encoding", "chunked"),
                ("content-type", "text/json"),
            ],
            &[
                ("content-length", "12"),
                ("content-type", "application/jsonx"),
            ],
            // Two types, in either order: which one is meant is not for gitgate to guess.
            &[
                ("content-length", "12"),
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ],
            &[
                ("content-length", "12"),
                ("content-type", "text/plain"),
                ("content-type", "application/json"),
            ],
        ] {
            assert_eq!(
                refused(Method::PUT, form),
                Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{form:?}"
            );
        }
        for json in [
            &[
                ("content-length", "12"),
                ("content-type", "application/json"),
            ][..],
            &[
                ("content-length", "12"),
                ("content-type", "Application/JSON; charset=utf-8"),
            ],
            &[
                ("content-length", "12"),
                ("content-type", "application/vnd.api+json"),
            ],
            // No body (a rotation, a revocation): nothing to say.
            &[("content-length", "0")],
            &[],
        ] {
            assert_eq!(refused(Method::POST, json), None, "{json:?}");
        }
        // A GET's body is never read as a change.
        assert_eq!(
            refused(
                Method::GET,
                &[("content-length", "3"), ("content-type", "text/plain")]
            ),
            None
        );
    }

    /// A `Sec-Fetch-Site` that cannot be read as text (bytes past ASCII) says no known site,
    /// so it is no `none` or `same-origin` either: refused, not let through as a script's.
    #[test]
    fn an_unreadable_sec_fetch_site_is_another_sites() {
        let uri: Uri = "/rest/access-tokens/1.0/users/alice".parse().unwrap();
        for value in [&b"none\xff"[..], b"\xe9", b"same-origin\x80"] {
            let mut h = headers(&[("host", "git.example.com:8080")]);
            h.append("sec-fetch-site", HeaderValue::from_bytes(value).unwrap());
            let said = refusal(&Method::POST, &uri, &h, false);
            assert_eq!(
                said.as_ref().map(|(status, _)| *status),
                Some(StatusCode::FORBIDDEN),
                "{value:?}"
            );
            assert!(said.unwrap().1.contains("(Sec-Fetch-Site: ?)"));
        }
    }

    /// The address an `Origin` is held to is the one the request was sent to: the target's
    /// authority (HTTP/2's `:authority`, an absolute target) before a `Host` line.
    #[test]
    fn an_origin_is_held_to_the_targets_authority_before_the_host_line() {
        let uri: Uri = "http://git.example.com:8080/rest/access-tokens/1.0/users/alice"
            .parse()
            .unwrap();
        let h = headers(&[
            ("host", "other.example"),
            ("origin", "http://git.example.com:8080"),
        ]);
        assert_eq!(refusal(&Method::POST, &uri, &h, false), None);
        let h = headers(&[
            ("host", "git.example.com:8080"),
            ("origin", "http://other.example"),
        ]);
        assert_eq!(
            refusal(&Method::POST, &uri, &h, false).map(|(status, _)| status),
            Some(StatusCode::FORBIDDEN)
        );
    }

    /// A `+json` type counts as JSON only as an `application/` type written as one word: a
    /// `text/` one, or one with a space inside, is not what a script sending JSON says.
    #[test]
    fn a_json_suffix_counts_only_on_an_application_type_of_one_word() {
        for not in [
            "text/vnd.api+json",
            "text/x+json",
            "application/vnd api+json",
        ] {
            let mut h = headers(&[("content-length", "12")]);
            h.append(CONTENT_TYPE, HeaderValue::from_str(not).unwrap());
            assert_eq!(
                refusal(&Method::POST, &"/rest".parse().unwrap(), &h, true)
                    .map(|(status, _)| status),
                Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{not}"
            );
        }
    }
}
