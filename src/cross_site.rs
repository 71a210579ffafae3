//! Telling a request a web page of another site had a browser send.
//!
//! A browser that was once given a user's credentials for gitgate (its `401`s carry a Basic
//! challenge, so opening a repository's or the API's address in a browser asks for them)
//! sends them with every later request to the site — also with those another site's page has
//! it make: an `<img src>` of `info/refs`, a form's `POST`. Each costs the user a token of their
//! rate-limit bucket once the credentials check out, so a page firing them keeps the user's own
//! clones refused `429` while it is open. Browsers say where a request comes from
//! (`Sec-Fetch-Site`, and `Origin` on a `fetch` or a form); git, scripts and the CLI send
//! neither, and are not affected.
//!
//! Pure: the judgement is made on the request's head alone, before any credentials are
//! looked at. The REST API (`api::browser`) and the git URLs (`gate`) each refuse what this
//! finds, with their own words.

use hyper::header::{HeaderMap, HeaderName, HOST, ORIGIN};
use hyper::{Method, Uri};

/// `Sec-Fetch-Site`, made once: every git request is looked at for it (a name given as text is
/// checked and matched against the standard ones at each lookup).
pub(crate) static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// The line that says the request comes from a page of another site (`Sec-Fetch-Site:
/// cross-site`, `Origin: https://evil.example`), as the request wrote it, if one does.
///
/// Every line of each header counts: a second, cross-site one must not hide behind a first.
/// A read (`GET`, `HEAD`, `OPTIONS`) may come from another site's page when it is a link its
/// user followed (see `is_a_followed_link`), which shows the answer to the user and to no
/// page; a change may not.
pub fn from_another_site(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let change = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    for site in headers.get_all(&SEC_FETCH_SITE) {
        let site = site.to_str().unwrap_or("?");
        if !site.eq_ignore_ascii_case("none")
            && !site.eq_ignore_ascii_case("same-origin")
            && (change || !is_a_followed_link(method, headers))
        {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    for origin in headers.get_all(ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        if !same_origin(origin, uri, headers) {
            return Some(format!("Origin: {origin}"));
        }
    }
    None
}

/// Whether a `GET` is a browser following a link in its window, as its user asked (a
/// top-level navigation by a click or a key: `Sec-Fetch-Mode: navigate`, `Sec-Fetch-Dest:
/// document` and `Sec-Fetch-User: ?1`, each in every line of it), which shows the answer to
/// its user and to no page. An `<iframe>`'s is not (its `Sec-Fetch-Dest` is `iframe`), nor an
/// `<img>`'s or a `fetch`'s, nor a window the page's script sends to one address after another
/// (no `Sec-Fetch-User`): each would cost a credentials check and a rate-limit token.
fn is_a_followed_link(method: &Method, headers: &HeaderMap) -> bool {
    let every_line_is = |name: &str, want: &str| {
        let mut lines = headers.get_all(name).iter().peekable();
        lines.peek().is_some() && lines.all(|v| v.as_bytes().eq_ignore_ascii_case(want.as_bytes()))
    };
    *method == Method::GET
        && every_line_is("sec-fetch-mode", "navigate")
        && every_line_is("sec-fetch-dest", "document")
        && every_line_is("sec-fetch-user", "?1")
}

/// Whether `origin` (`scheme://host[:port]`) names the address the request was sent to.
fn same_origin(origin: &str, uri: &Uri, headers: &HeaderMap) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false; // `null`, or nothing an origin looks like
    };
    let asked = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()));
    asked.is_some_and(|asked| authority.eq_ignore_ascii_case(asked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn said(method: Method, pairs: &[(&'static str, &'static str)]) -> Option<String> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        let uri: Uri = "/team/app.git/info/refs?service=git-upload-pack"
            .parse()
            .unwrap();
        from_another_site(&method, &uri, &h)
    }

    /// What gives the page away is named as the request wrote it, for the refusal's reason.
    #[test]
    fn the_line_that_names_another_site_is_said_as_written() {
        let host = ("host", "git.example.com");
        assert_eq!(
            said(Method::GET, &[host, ("sec-fetch-site", "Cross-Site")]).as_deref(),
            Some("Sec-Fetch-Site: Cross-Site")
        );
        assert_eq!(
            said(Method::POST, &[host, ("origin", "https://evil.example")]).as_deref(),
            Some("Origin: https://evil.example")
        );
        // git, and the same site's own pages, say nothing of the kind.
        for own in [
            &[host][..],
            &[host, ("origin", "https://git.example.com")],
            &[host, ("sec-fetch-site", "same-origin")],
            &[host, ("sec-fetch-site", "none")],
        ] {
            assert_eq!(said(Method::POST, own), None, "{own:?}");
        }
    }
}
