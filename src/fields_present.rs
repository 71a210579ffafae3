//! Which of the header fields the gate looks for before it forwards a request are there at all,
//! found in one pass over the request's few fields.
//!
//! The gate asks of every git request whether it carries gitgate's own loop mark, a
//! `Transfer-Encoding`, a `Content-Length`, a `Content-Encoding`, what a browser adds to another
//! site's requests (`Sec-Fetch-Site`, `Origin`), an `Expect` (refusals only) and a
//! `User-Agent` (for its log line). Of these git's GETs carry only the `User-Agent`, and a
//! flood of wrong tokens (benchmark 3's) none; each looked up in the header map on its own
//! costs a hash of the name and a probe, 7 or 8 of them per refusal. A request carries a
//! handful of fields, and comparing each of their names with these few costs less: with the
//! two smaller cuts made beside it, a 401 took 0.95× the CPU in an A/B (`benches/ab.sh`).
//! What the checks make of a field that is there is theirs: a check is left out only when its
//! field is absent, and each finds nothing in a request without its field (the tests below
//! hold both to it).

use hyper::header::{
    HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH, EXPECT, ORIGIN, TRANSFER_ENCODING, USER_AGENT,
};

/// Which of the fields the gate looks for a request carries (at least one line of each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldsPresent {
    /// `X-Gitgate-Hop`, the mark of the gitgates a request passed (`request_id::own_mark`).
    pub hop_mark: bool,
    pub transfer_encoding: bool,
    pub content_length: bool,
    pub content_encoding: bool,
    /// `Sec-Fetch-Site` or `Origin`: what `cross_site` judges a request by.
    pub from_a_page: bool,
    pub expect: bool,
    pub user_agent: bool,
}

impl FieldsPresent {
    /// The fields of `headers` the gate looks for, each name compared once.
    pub fn of(headers: &HeaderMap) -> FieldsPresent {
        let mut present = FieldsPresent::default();
        for name in headers.keys() {
            // The standard names first: each compare is of a one-byte tag.
            if name == TRANSFER_ENCODING {
                present.transfer_encoding = true;
            } else if name == CONTENT_LENGTH {
                present.content_length = true;
            } else if name == CONTENT_ENCODING {
                present.content_encoding = true;
            } else if name == USER_AGENT {
                present.user_agent = true;
            } else if name == ORIGIN || name == crate::cross_site::SEC_FETCH_SITE {
                present.from_a_page = true;
            } else if name == EXPECT {
                present.expect = true;
            } else if name == crate::request_id::MARK_NAME {
                present.hop_mark = true;
            }
        }
        present
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};

    /// Which flag of [`FieldsPresent`] a name sets.
    type Flag = fn(&FieldsPresent) -> bool;

    /// The names [`FieldsPresent`] looks for, each with the flag it sets.
    fn names() -> Vec<(HeaderName, Flag)> {
        vec![
            (crate::request_id::MARK_NAME.clone(), |p| p.hop_mark),
            (TRANSFER_ENCODING, |p| p.transfer_encoding),
            (CONTENT_LENGTH, |p| p.content_length),
            (CONTENT_ENCODING, |p| p.content_encoding),
            (crate::cross_site::SEC_FETCH_SITE.clone(), |p| p.from_a_page),
            (ORIGIN, |p| p.from_a_page),
            (EXPECT, |p| p.expect),
            (USER_AGENT, |p| p.user_agent),
        ]
    }

    #[test]
    fn a_request_without_them_has_none() {
        let mut headers = HeaderMap::new();
        assert_eq!(FieldsPresent::of(&headers), FieldsPresent::default());
        // What a flood of wrong tokens sends, and git's GET besides its User-Agent.
        headers.insert(HOST, HeaderValue::from_static("git.example"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic eDp5"));
        headers.insert("git-protocol", HeaderValue::from_static("version=2"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("pragma", HeaderValue::from_static("no-cache"));
        headers.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        headers.insert("x-gitgate-hops", HeaderValue::from_static("1"));
        assert_eq!(FieldsPresent::of(&headers), FieldsPresent::default());
    }

    #[test]
    fn each_name_is_found_alone_among_others_and_as_a_second_line() {
        for (name, found) in names() {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static("x"));
            let present = FieldsPresent::of(&headers);
            assert!(found(&present), "{name} alone: {present:?}");
            // Found, and nothing else with it.
            let said = names().iter().filter(|(_, f)| f(&present)).count();
            let same_flag = if name == ORIGIN || name == crate::cross_site::SEC_FETCH_SITE {
                2
            } else {
                1
            };
            assert_eq!(said, same_flag, "{name} alone: {present:?}");
            headers.insert(HOST, HeaderValue::from_static("git.example"));
            headers.append(name.clone(), HeaderValue::from_static("y"));
            headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic eDp5"));
            assert!(found(&FieldsPresent::of(&headers)), "{name} among others");
        }
    }

    /// Spelled as a client may (HTTP names are case-insensitive; hyper reads them with
    /// `HeaderName::from_bytes`, which lowers them), each name is still found.
    #[test]
    fn a_name_in_any_case_is_found() {
        for (name, found) in names() {
            let lower = name.as_str();
            let upper = lower.to_ascii_uppercase();
            let mixed: String = lower
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            for spelled in [upper, mixed] {
                let mut headers = HeaderMap::new();
                headers.append(
                    HeaderName::from_bytes(spelled.as_bytes()).unwrap(),
                    HeaderValue::from_static("x"),
                );
                assert!(found(&FieldsPresent::of(&headers)), "{spelled}");
            }
        }
    }

    /// Among a hundred other fields (past the size at which the map's layout changes), first,
    /// in the middle or last, on one line or three; and all of them at once.
    #[test]
    fn each_is_found_among_many_fields_wherever_it_stands() {
        let others = |headers: &mut HeaderMap, range: std::ops::Range<usize>| {
            for i in range {
                headers.append(
                    HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
        };
        for (name, found) in names() {
            for at in [0, 50, 100] {
                for lines in [1, 3] {
                    let mut headers = HeaderMap::new();
                    others(&mut headers, 0..at);
                    for _ in 0..lines {
                        headers.append(name.clone(), HeaderValue::from_static("x"));
                    }
                    others(&mut headers, at..100);
                    assert!(
                        found(&FieldsPresent::of(&headers)),
                        "{name} after {at} others, {lines} lines"
                    );
                }
            }
        }
        let mut all = HeaderMap::new();
        others(&mut all, 0..100);
        for (name, _) in names() {
            all.append(name, HeaderValue::from_static("x"));
        }
        let present = FieldsPresent::of(&all);
        assert!(names().iter().all(|(_, f)| f(&present)), "{present:?}");
    }

    /// What the gate relies on: a check it leaves out, its field absent, would have found
    /// nothing. Each check is asked of every combination of lines that would make one of them
    /// refuse (or say something), with names in odd case, second lines and look-alike names
    /// among them; whenever `of` says a check's field is absent, the check finds nothing.
    #[test]
    fn no_check_finds_anything_in_a_request_without_its_field() {
        use crate::upstream::headers;
        let mark = crate::request_id::own_mark().to_str().unwrap().to_owned();
        let lines: Vec<(&str, String)> = vec![
            ("X-Gitgate-Hop", mark.clone()),
            ("TRANSFER-ENCODING", "gzip, chunked".into()),
            ("transfer-encoding", "chunked".into()),
            ("Content-Length", "5, 6".into()),
            ("content-length", "99999999999999999999".into()),
            ("Content-ENCODING", "br".into()),
            ("sEC-fETCH-sITE", "cross-site".into()),
            ("ORIGIN", "https://evil.example".into()),
            ("Expect", "100-continue".into()),
            ("User-Agent", "git/2.47.0".into()),
            // Look-alikes, which none of the checks reads.
            ("X-Gitgate-Hops", mark),
            ("TE", "gzip".into()),
            ("Sec-Fetch-Mode", "navigate".into()),
            (
                "Content-Type",
                "application/x-git-upload-pack-request".into(),
            ),
            ("Host", "git.example".into()),
        ];
        let uri: hyper::Uri = "/team/app.git/git-upload-pack".parse().unwrap();
        type Finds = fn(&HeaderMap, &hyper::Uri) -> bool;
        let checks: [(&str, Flag, Finds); 7] = [
            (
                "loop mark",
                |p| p.hop_mark,
                |h, _| crate::request_id::came_from_this_process(h),
            ),
            (
                "transfer coding",
                |p| p.transfer_encoding,
                |h, _| headers::unsupported_transfer_coding(h).is_some(),
            ),
            (
                "content length",
                |p| p.content_length,
                |h, _| {
                    headers::unusable_content_length(h).is_some()
                        || headers::content_length(h).is_some()
                },
            ),
            (
                "content coding",
                |p| p.content_encoding,
                |h, _| headers::unsupported_content_coding(h).is_some(),
            ),
            (
                "another site",
                |p| p.from_a_page,
                |h, uri| {
                    [hyper::Method::GET, hyper::Method::POST]
                        .iter()
                        .any(|m| crate::cross_site::from_another_site(m, uri, h).is_some())
                },
            ),
            ("expect", |p| p.expect, |h, _| h.contains_key(EXPECT)),
            (
                "user agent",
                |p| p.user_agent,
                |h, _| h.get(USER_AGENT).is_some(),
            ),
        ];
        let mut found_by = [0usize; 7];
        for subset in 0u32..(1 << lines.len()) {
            let mut headers = HeaderMap::new();
            for (i, (name, value)) in lines.iter().enumerate() {
                if subset & (1 << i) != 0 {
                    headers.append(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_str(value).unwrap(),
                    );
                }
            }
            let present = FieldsPresent::of(&headers);
            for (n, (check, flag, finds)) in checks.iter().enumerate() {
                if finds(&headers, &uri) {
                    found_by[n] += 1;
                    assert!(
                        flag(&present),
                        "{check} left out of {headers:?}: {present:?}"
                    );
                }
            }
        }
        // Not said of nothing: each check found something in many of the combinations.
        for (n, (check, _, _)) in checks.iter().enumerate() {
            assert!(
                found_by[n] >= 1 << 10,
                "{check} found something {} times",
                found_by[n]
            );
        }
    }
}
