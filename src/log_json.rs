//! Log lines as JSON objects, one per line, for `GITGATE_LOG_FORMAT=json`.
//!
//! The text lines start with a head (`2026-12-05T13:40:34.123456Z  INFO gitgate::request:
//! request`) that a logfmt reader takes for empty keys; a log pipeline (Loki's `| json`, jq,
//! Vector, Elasticsearch) wants each line to be one object instead. The layout is
//! tracing-subscriber's own JSON layout, so that it reads as anyone using tracing expects:
//!
//! ```text
//! {"timestamp":"2026-12-05T13:40:34.123456Z","level":"INFO","target":"gitgate::request",
//!  "fields":{"message":"request","request_id":"5f0c…","status":200,"user":"alice",…}}
//! ```
//!
//! The fields are nested rather than beside the head because an audit line has a field of its
//! own named `target` (what the event is about). Numbers and booleans stay numbers and
//! booleans. A text value is a JSON string of the value itself: gitgate's quoted values
//! ([`crate::log_value`]) are already JSON string literals — their escapes are JSON's — and
//! are written as they are, so `reason` reads `"token 'ci' has REPO_READ …"`, not a string
//! holding quotes; anything else is escaped here. What the text lines keep out (secrets, over-
//! long values) is kept out of these too: the values are the same, only their setting differs.
//! This writes its own JSON instead of tracing-subscriber's `json` feature for that reason: the
//! feature would quote the quoted values again.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written: `GITGATE_LOG_FORMAT`, `text` (the default) or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The format `GITGATE_LOG_FORMAT` names; unset or empty is `text`. A value that is not
    /// one of the two is refused rather than taken for text: a pipeline that asked for JSON
    /// and got text would drop every line without a word.
    pub fn from_setting(value: Option<&str>) -> Result<LogFormat, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(LogFormat::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(LogFormat::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
            Some(v) => Err(format!(
                "GITGATE_LOG_FORMAT={v:?} is not a log format: use `text` (the default) or `json`"
            )),
        }
    }
}

/// The event formatter of `GITGATE_LOG_FORMAT=json`: one JSON object per line.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        push_json_string(&mut line, &timestamp);
        line.push_str(",\"level\":");
        push_json_string(&mut line, meta.level().as_str());
        line.push_str(",\"target\":");
        push_json_string(&mut line, meta.target());
        line.push_str(",\"fields\":{");
        let mut fields = JsonFields {
            out: &mut line,
            first: true,
        };
        event.record(&mut fields);
        line.push_str("}}\n");
        writer.write_str(&line)
    }
}

/// Writes each field of an event as `"name":value`, comma-separated.
struct JsonFields<'a> {
    out: &'a mut String,
    first: bool,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_json_string(self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_string(self.out, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            // `{:?}` keeps a whole number a float ("36.0", where `{}` writes "36"), so that a
            // field typed as a float in one line is not an integer in the next for a reader
            // that maps a field's type from its first value; it writes an exponent only where
            // JSON takes one ("1e21").
            let _ = write!(self.out, "{value:?}");
        } else {
            // JSON has no NaN or infinity.
            push_json_string(self.out, &value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        push_json_string(self.out, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        let text = format!("{value:?}");
        // The message is prose, never a value gitgate quoted.
        if field.name() != "message" && is_json_string(&text) {
            self.out.push_str(&text);
        } else {
            push_json_string(self.out, &text);
        }
    }
}

/// `text` as a JSON string literal, escaped as [`crate::log_value`] escapes a quoted value:
/// `\"`, `\\`, `\n`, `\r`, `\t`, and `\uXXXX` for every other control character and for the
/// characters that would end a line or hide what follows in a reader's view (U+2028, U+2029).
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Whether `text` is one whole JSON string literal with nothing raw a JSON reader refuses
/// (control characters) or a line reader splits at (U+2028, U+2029): a value gitgate quoted
/// ([`crate::log_value::LogValue`], [`crate::log_value::LogText`]), which is written as it is.
fn is_json_string(text: &str) -> bool {
    let Some(inner) = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return false,
            '\\' => match chars.next() {
                Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => {}
                Some('u') => {
                    for _ in 0..4 {
                        if !chars.next().is_some_and(|h| h.is_ascii_hexdigit()) {
                            return false;
                        }
                    }
                }
                _ => return false,
            },
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => return false,
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_value::{LogText, LogValue};

    #[test]
    fn the_setting_is_text_json_or_refused() {
        assert_eq!(LogFormat::from_setting(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_setting(Some(" ")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_setting(Some("text")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_setting(Some("JSON")), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_setting(Some("json ")), Ok(LogFormat::Json));
        let refused = LogFormat::from_setting(Some("logfmt")).unwrap_err();
        assert!(
            refused.contains("\"logfmt\" is not a log format"),
            "{refused}"
        );
        assert!(refused.contains("`json`"), "{refused}");
    }

    #[test]
    fn a_json_string_is_told_from_text_that_only_looks_quoted() {
        assert!(is_json_string(r#""plain""#));
        assert!(is_json_string(r#""""#));
        assert!(is_json_string(r#""a \"b\" \\ \n \u2028 \ud83d\ude00""#));
        assert!(!is_json_string(r#"""#));
        assert!(!is_json_string(r#"plain"#));
        assert!(!is_json_string(r#""a" and "b""#));
        assert!(!is_json_string(r#""ends in \""#));
        // Rust's Debug escapes are not JSON's.
        assert!(!is_json_string(r#""\u{2028}""#));
        assert!(!is_json_string(r#""\x""#));
        assert!(!is_json_string("\"raw\nline\""));
        assert!(!is_json_string("\"raw\u{2028}separator\""));
    }

    #[test]
    fn text_is_escaped_as_json_escapes_it() {
        let mut out = String::new();
        push_json_string(&mut out, "a \"q\" \\ \n\t\u{1}\u{2028}é");
        assert_eq!(out, r#""a \"q\" \\ \n\t\u0001\u2028é""#);
    }

    /// What a subscriber with [`JsonLines`] writes for the events `emit` logs.
    fn lines_of(emit: impl FnOnce()) -> String {
        crate::store::test_support::logged_as_json(emit)
    }

    #[test]
    fn an_event_is_one_object_with_its_fields_typed() {
        let out = lines_of(|| {
            tracing::info!(
                target: "gitgate::request",
                request_id = "00ff",
                status = 200u16,
                duration_ms = 1.5f64,
                offset = -3i64,
                complete = true,
                user = %LogValue("deploy bot"),
                reason = %LogText("token 'ci' has REPO_READ; push needs \"REPO_WRITE\""),
                path = %LogValue("/team/app.git"),
                target = "token:abc",
                "request"
            );
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        let line = out.trim_end();
        assert!(line.starts_with("{\"timestamp\":\""), "{line}");
        let rest = line.split_once("\",\"level\"").unwrap().1;
        assert_eq!(
            rest,
            ":\"INFO\",\"target\":\"gitgate::request\",\"fields\":{\"message\":\"request\",\
             \"request_id\":\"00ff\",\"status\":200,\"duration_ms\":1.5,\"offset\":-3,\
             \"complete\":true,\"user\":\"deploy bot\",\
             \"reason\":\"token 'ci' has REPO_READ; push needs \\\"REPO_WRITE\\\"\",\
             \"path\":\"/team/app.git\",\"target\":\"token:abc\"}}"
        );
    }

    #[test]
    fn a_message_or_debug_value_that_is_not_a_json_string_is_escaped_whole() {
        let out = lines_of(|| {
            tracing::warn!(
                odd = ?"line\u{2028}break",
                quoted_message = "x",
                "\"a message in quotes\""
            );
        });
        assert!(
            out.contains(r#""message":"\"a message in quotes\"""#),
            "{out}"
        );
        // Rust's Debug of a string is not taken for JSON: its `\u{2028}` is text here.
        assert!(out.contains(r#""odd":"\"line\\u{2028}break\"""#), "{out}");
        assert!(out.contains(r#""level":"WARN""#), "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
    }

    /// U+2029, a paragraph separator, ends a line for some readers as U+2028 does: escaped
    /// when written, and a value holding it raw is not taken for a JSON string as it is.
    #[test]
    fn a_paragraph_separator_is_escaped_as_a_line_separator_is() {
        let mut out = String::new();
        push_json_string(&mut out, "a\u{2029}b");
        assert_eq!(out, r#""a\u2029b""#);
        assert!(!is_json_string("\"raw\u{2029}separator\""));
        assert!(is_json_string(r#""escaped\u2029separator""#));
    }

    /// A `\u` escape has four hex digits: three is not JSON.
    #[test]
    fn a_short_unicode_escape_is_not_a_json_string() {
        assert!(!is_json_string(r#""\u123""#));
        assert!(!is_json_string(r#""\u123x""#));
        assert!(is_json_string(r#""\u1234""#));
    }

    /// A float field is written as a float whatever its value, a whole one too (a request's
    /// `duration_ms` of exactly 36 ms): its type does not change from one line to the next.
    #[test]
    fn a_whole_float_is_still_a_float() {
        let out = lines_of(|| {
            tracing::info!(whole = 36.0f64, tiny = 1e-7f64, huge = 1e21f64, "x");
        });
        let line: serde_json::Value = serde_json::from_str(out.trim_end()).expect(&out);
        assert!(line["fields"]["whole"].is_f64(), "{out}");
        assert!(out.contains("\"whole\":36.0"), "{out}");
        assert_eq!(line["fields"]["tiny"].as_f64(), Some(1e-7), "{out}");
        assert_eq!(line["fields"]["huge"].as_f64(), Some(1e21), "{out}");
    }

    /// Every line is JSON a reader takes: a number JSON has no word for (NaN, infinity) is
    /// written as a string, and an error's text and a target are escaped.
    #[test]
    fn what_json_cannot_hold_as_it_is_is_written_as_a_string() {
        let error = std::io::Error::other("bad \"quote\"\nand a line");
        let out = lines_of(|| {
            tracing::info!(
                target: "odd\"target",
                not_a_number = f64::NAN,
                too_big = f64::INFINITY,
                error = &error as &(dyn std::error::Error + 'static),
                "x"
            );
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        let line: serde_json::Value = serde_json::from_str(out.trim_end()).expect(&out);
        assert_eq!(line["target"], "odd\"target", "{out}");
        assert_eq!(line["fields"]["not_a_number"], "NaN", "{out}");
        assert_eq!(line["fields"]["too_big"], "inf", "{out}");
        assert_eq!(
            line["fields"]["error"], "bad \"quote\"\nand a line",
            "{out}"
        );
    }
}
