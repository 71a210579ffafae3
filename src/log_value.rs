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

#[cfg(test)]
mod tests {
    use super::LogValue;

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
