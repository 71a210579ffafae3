//! A value of free text in a log line, written so that a logfmt reader takes it as one field.
//!
//! Log lines are `key=value` pairs, and what an operator's tools make of them depends on each
//! value being one word or quoted. Most values are (`status=200`, `user=alice`), and stay bare
//! so that lines read and grep as they always did; but some come from people: a project or
//! repository token's name is the `user` of its requests (`deploy bot`), and a name can hold
//! `"` or ` outcome=` — unquoted, it would split into fields it does not have, or forge one.
//! So a value that is not a plain word is written quoted, with `"`, `\` and control characters
//! escaped (Rust's `Debug`, as the `reason` and `error` fields are).

use std::fmt;

/// `text` as one log field: bare if it is a plain word of printable ASCII without `"`, `\` or
/// `=`, else quoted and escaped. Allocates nothing.
pub struct LogValue<'a>(pub &'a str);

impl fmt::Display for LogValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'=');
        if !self.0.is_empty() && self.0.bytes().all(plain) {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// A file's path as one log field: bare if it is one plain word (`/srv/gitgate/gitgate.db`),
/// else quoted (`"/srv/git gate/gitgate.db"`), so that a space in a folder's name does not
/// split it into two fields.
pub struct LogFile<'a>(pub &'a std::path::Path);

impl fmt::Display for LogFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        LogValue(&self.0.to_string_lossy()).fmt(f)
    }
}

/// The URL as messages show it: whatever comes before an `@` in a part of it (a user and
/// password, wherever they are — after `scheme://`, after `//` or `http:/`, which a server's
/// `Location` may send), and the query and fragment, replaced by `***`; one that holds what
/// looks like a token secret is not written at all. For URLs that may carry credentials:
/// `[upstream] url` in messages, an upstream's `Location` in the log.
pub fn redacted_url(url: &str) -> String {
    if crate::credentials::holds_a_token(url) {
        return "<a URL holding what looks like a token secret>".into();
    }
    let (before_query, query) = match url.find(['?', '#']) {
        Some(at) => (&url[..at], Some(&url[at..at + 1])),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    for part in before_query.split_inclusive(['/', '\\']) {
        match part.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&part[at..]);
            }
            None => out.push_str(part),
        }
    }
    if let Some(mark) = query {
        out.push_str(mark);
        out.push_str("***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{redacted_url, LogFile, LogValue};

    #[test]
    fn a_url_loses_its_credentials_wherever_they_are_and_its_query() {
        for (url, shown) in [
            ("http://a/b/c", "http://a/b/c"),
            (
                "https://u:p@git.internal:8443/git?t=x",
                "https://***@git.internal:8443/git?***",
            ),
            ("//u:p@host:abc/x", "//***@host:abc/x"),
            ("http:/u:p@host/x#f", "http:/***@host/x#***"),
            ("http:\\\\u:p@host/x", "http:\\\\***@host/x"),
            ("u:p@host", "***@host"),
            ("http://u@x:p@host/a@b/c", "http://***@host/***@b/c"),
            (
                "/login?next=ggt_xyz",
                "<a URL holding what looks like a token secret>",
            ),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_path_with_a_space_is_one_quoted_field() {
        use std::path::Path;
        assert_eq!(
            LogFile(Path::new("/srv/gitgate/gitgate.db")).to_string(),
            "/srv/gitgate/gitgate.db"
        );
        assert_eq!(
            LogFile(Path::new("/srv/git gate/gitgate.db")).to_string(),
            "\"/srv/git gate/gitgate.db\""
        );
    }

    #[test]
    fn plain_words_stay_bare_and_the_rest_is_quoted() {
        let said = |s: &str| LogValue(s).to_string();
        assert_eq!(said("alice"), "alice");
        assert_eq!(said("-"), "-");
        assert_eq!(
            said("/team/app.git/git-receive-pack"),
            "/team/app.git/git-receive-pack"
        );
        assert_eq!(said("deploy bot"), "\"deploy bot\"");
        assert_eq!(said("ci x outcome=\""), "\"ci x outcome=\\\"\"");
        assert_eq!(said("a=b"), "\"a=b\"");
        assert_eq!(said("<not a user name>"), "\"<not a user name>\"");
        assert_eq!(said("line\nuser=root"), "\"line\\nuser=root\"");
        assert_eq!(said("caf\u{e9}"), "\"caf\u{e9}\"");
        assert_eq!(said(""), "\"\"");
    }
}
