//! `gitgate audit`: print audit events, oldest first — all of them, or the newest `--limit`.
//!
//! The table only grows (repeated failures are folded into one row, but nothing is deleted), so
//! the listing is read and printed a page at a time: memory stays flat however long it is, and
//! the newest events are never cut off behind a fixed cap.

use super::out_raw;
use crate::clock;
use crate::store::{AuditCursor, AuditEvent, Store};

/// Events read from the store at a time.
const PAGE: usize = 1000;

/// Why `--since` was not taken. A small number is most often seconds (`date +%s`) or a day
/// written without dashes, not a moment of 1970.
fn since_refused(s: &str) -> String {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => format!(
            "--since {s} is too small for epoch milliseconds (it would be {}, before any event): \
             give milliseconds (seconds × 1000) or YYYY-MM-DD; leave --since out for every event",
            clock::datetime(n)
        ),
        _ => format!(
            "--since '{s}' is not a date: use YYYY-MM-DD (1970 to 9999) or epoch milliseconds \
             (seconds × 1000)"
        ),
    }
}

pub fn show(
    store: &Store,
    since: Option<&str>,
    limit: Option<usize>,
    json: bool,
) -> Result<(), String> {
    let since = match since {
        Some(s) => Some(clock::parse_date(s).ok_or_else(|| since_refused(s))?),
        None => None,
    };
    let mut after = match limit {
        Some(0) => {
            return Err("--limit 0 shows nothing: give the number of newest events to show".into())
        }
        Some(n) => store
            .audit_before_newest(since, n)
            .map_err(|e| e.to_string())?,
        None => AuditCursor::START,
    };
    let mut left = limit.unwrap_or(usize::MAX);
    let mut first = true;
    if json {
        // A JSON array, written as it is read; the same text `to_string_pretty` makes of it.
        out_raw("[")?;
    }
    while left > 0 {
        let page = store
            .audit_page(since, after, PAGE.min(left))
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = AuditCursor::after(last);
        left -= page.len();
        for e in &page {
            if json {
                // Through a `Value`, as `print_json` would: the same key order as before.
                let text = serde_json::to_value(e)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .map_err(|e| e.to_string())?;
                let sep = if first { "\n" } else { ",\n" };
                out_raw(&format!("{sep}  {}", text.replace('\n', "\n  ")))?;
            } else {
                line(e)?;
            }
            first = false;
        }
    }
    if json {
        out_raw(if first { "]\n" } else { "\n]\n" })?;
    }
    Ok(())
}

fn line(e: &AuditEvent) -> Result<(), String> {
    let repeats = match e.last_at {
        Some(last) if e.count > 1 => {
            format!(" ({} times, until {})", e.count, clock::datetime(last))
        }
        _ => String::new(),
    };
    outln!(
        "{} {:<22} actor={} source={} target={} {}{repeats}",
        clock::datetime(e.at),
        e.action,
        e.actor,
        e.source,
        e.target,
        e.detail
    );
    Ok(())
}
