//! A value of free text in a log line, written so that a logfmt reader takes it as one field.
//!
//! Log lines are `key=value` pairs, and what an operator's tools make of them depends on each
//! value being one word or quoted. Most values are (`status=200`, `user=alice`), and stay bare
//! so that lines read and grep as they always did; but some come from people: a project or
//! repository token's name is the `user` of its requests (`deploy bot`), and a name can hold
//! `"` or ` outcome=` — unquoted, it would split into fields it does not have, or forge one.
//! So a value that is not a plain word is written quoted, with `"` and `\` escaped, and every
//! character that is not printable — control characters, and the invisible ones a reader's
//! screen or a parser could take for a line's end or a space (U+2028, U+2003, U+202E) — as
//! JSON writes them (`\n`, `\u2028`): a logfmt reader (go-logfmt, which Loki's `| logfmt` is)
//! unquotes a value as JSON does, and refuses the whole line at Rust's `\u{2028}`.

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
            quoted(self.0, f)
        }
    }
}

/// `text` in `"`, escaped as JSON escapes a string — `\"`, `\\`, `\n`, `\r`, `\t`, and
/// `\uXXXX` (a pair of them past U+FFFF) for every other character that is not shown as
/// itself: controls, separators but the space, and the marks that change how a line is drawn
/// (U+200B–U+200F, U+202A–U+202E, U+2060–U+2069, U+FEFF, and what Rust's `Debug` escapes).
/// Letters of any script stay as they are.
fn quoted(text: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    use fmt::Write;
    f.write_char('"')?;
    for c in text.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if shown_as_itself(c) => f.write_char(c)?,
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(f, "\\u{unit:04x}")?;
                }
            }
        }
    }
    f.write_char('"')
}

/// Whether `c` may stand in a quoted log value as itself: a printable character that neither
/// ends a line, looks like a space other than the space, nor reorders or hides what follows.
fn shown_as_itself(c: char) -> bool {
    if c.is_ascii() {
        return c == ' ' || c.is_ascii_graphic();
    }
    // Rust's own list of what it would not print as itself (its `Debug` escapes those).
    let printable = c.escape_debug().len() == 1;
    printable && !c.is_whitespace() && !crate::credentials::is_invisible_format(c)
}

/// Free text as one log field, without anything that looks like a token secret, always quoted
/// and escaped as [`LogValue`] quotes: the `reason`,
/// `error`, `stderr` and `outcome` of a line, which are sentences (or a backend's words, ref
/// names and hook output among them), and read the same whether or not one has a space.
/// Cut at [`TEXT_KEPT`] bytes, saying so inside the quotes: a reason can name a repository
/// anyone chose (up to the 8 KiB a request's path may have), a backend's line is up to 4 KiB.
pub struct LogText<'a>(pub &'a str);

/// How much of a free-text field a log line keeps.
pub const TEXT_KEPT: usize = 2048;

impl fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What looks like a token secret is never written: these fields repeat what clients
        // and hooks chose (a ref name a hook declined, a push's report of it, git's stderr).
        let text = crate::credentials::without_secrets_for_the_log(self.0);
        match kept(&text, TEXT_KEPT) {
            (all, false) => quoted(all, f),
            (part, true) => quoted(&format!("{part}... ({} bytes in all, cut)", text.len()), f),
        }
    }
}

/// The first `most` bytes of `text`, cut at a character's end, and whether that is less than
/// all of it.
pub fn kept(text: &str, most: usize) -> (&str, bool) {
    if text.len() <= most {
        return (text, false);
    }
    let mut end = most;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
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
    use super::{redacted_url, LogFile, LogText, LogValue, TEXT_KEPT};

    /// A push's report of a ref a hook declined, named after a real secret: not repeated.
    #[test]
    fn free_text_never_holds_a_token_secret() {
        let secret = "ggt_q5h3yfrelr6e_pJRtL61n3hZlr1gdDDl05CDUE8_hG-YdpnGexr-zQr4_iueida";
        let outcome =
            format!("unpack ok, 1 refused: refs/heads/deny/{secret} pre-receive hook declined");
        let shown = LogText(&outcome).to_string();
        assert!(!shown.contains("q5h3yfrelr6e_pJRt"), "{shown}");
        assert!(
            shown.contains("refs/heads/deny/<a token secret, not repeated> pre-receive"),
            "{shown}"
        );
    }

    #[test]
    fn free_text_is_cut_at_2_kib_saying_so_inside_its_quotes() {
        assert_eq!(LogText("short").to_string(), "\"short\"");
        let reason = format!("user 'bob' has read access to team/{}", "c".repeat(5000));
        let shown = LogText(&reason).to_string();
        assert_eq!(
            shown,
            format!(
                "\"{}... ({} bytes in all, cut)\"",
                &reason[..TEXT_KEPT],
                reason.len()
            )
        );
        // At a character's end.
        let wide = "é".repeat(TEXT_KEPT);
        let shown = LogText(&wide).to_string();
        assert!(
            shown.starts_with(&format!("\"{}...", "é".repeat(TEXT_KEPT / 2))),
            "{shown}"
        );
    }

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

    /// What a logfmt reader that unquotes as JSON does (go-logfmt, Loki's `| logfmt`) reads
    /// back the very text: every escape is one JSON knows.
    #[test]
    fn a_quoted_value_reads_back_as_json_reads_a_string() {
        let said = |s: &str| LogValue(s).to_string();
        for text in [
            "line\nuser=root",
            "a\u{2028}user=admin\u{2029}b\u{85}c",
            "\u{202e}evil\u{202c} \u{2003}x",
            "nul\0 bell\u{7} esc\u{1b}[31m del\u{7f}",
            "tab\there \"quoted\" back\\slash",
            "emoji \u{1f600} and \u{e0001}tag",
            "zero\u{200b}width\u{feff}",
        ] {
            let written = said(text);
            assert!(
                written.starts_with('"') && written.ends_with('"'),
                "{written}"
            );
            assert!(!written.contains("\\u{"), "{written}");
            assert!(
                written
                    .chars()
                    .all(|c| c == ' ' || !c.is_whitespace() && !c.is_control()),
                "{written:?}"
            );
            let read: String = serde_json::from_str(&written).unwrap();
            assert_eq!(read, text, "{written}");
        }
        assert_eq!(said("a\u{2028}b"), "\"a\\u2028b\"");
        // Fillers that show as a blank (a hand-made ref name's "main\u{3164}created\u{3164}at"
        // read as more entries of a push's list).
        for filler in ['\u{3164}', '\u{2800}', '\u{ffa0}', '\u{115f}', '\u{1160}'] {
            let shown = said(&format!("a{filler}b"));
            assert_eq!(
                shown,
                format!("\"a\\u{:04x}b\"", filler as u32),
                "{filler:?}"
            );
        }
        assert_eq!(said("\u{1f600}\u{e0001}"), "\"\u{1f600}\\udb40\\udc01\"");
    }

    /// Text that fits is kept whole; a cut falls at the end of the last character that fits,
    /// never inside one, nor past the limit.
    #[test]
    fn a_cut_falls_before_the_character_it_would_split() {
        assert_eq!(super::kept("ab", 2), ("ab", false));
        assert_eq!(super::kept("abc", 2), ("ab", true));
        assert_eq!(super::kept("a\u{e9}", 2), ("a", true));
        assert_eq!(super::kept("a\u{20ac}", 3), ("a", true));
        // Odd: the limit falls inside the last `é`.
        let text = format!("a{}", "\u{e9}".repeat(TEXT_KEPT));
        let shown = LogText(&text).to_string();
        let part = format!("a{}", "\u{e9}".repeat((TEXT_KEPT - 1) / 2));
        assert_eq!(
            shown,
            format!("\"{part}... ({} bytes in all, cut)\"", text.len())
        );
    }
}
