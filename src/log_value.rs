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

/// The URL as messages show it: whatever is between the scheme and an `@` (user and password),
/// and the query and fragment, replaced by `***`; one that holds what looks like a token secret
/// elsewhere (its path) is not written at all. For URLs that may carry credentials: `[upstream]
/// url` in messages, an upstream's `Location` in the log.
pub fn redacted_url(url: &str) -> String {
    if crate::credentials::holds_a_token(url) {
        return "<a URL holding what looks like a token secret>".into();
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (before_query, query) = match rest.find(['?', '#']) {
        Some(at) => (&rest[..at], Some(&rest[at..at + 1])),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***{}", &authority[at..]),
        None => authority.to_string(),
    };
    let query = query.map(|mark| format!("{mark}***")).unwrap_or_default();
    format!("{scheme}{authority}{path}{query}")
}

#[cfg(test)]
mod tests {
    use super::{LogFile, LogValue};

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
