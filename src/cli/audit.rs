//! `gitgate audit`: print audit events.

use serde_json::json;

use super::print_json;
use crate::clock;
use crate::store::Store;

pub fn show(store: &Store, since: Option<&str>, json: bool) -> Result<(), String> {
    let since = match since {
        Some(s) => Some(clock::parse_date(s).ok_or_else(|| {
            format!("--since '{s}' is not a date: use YYYY-MM-DD or epoch milliseconds")
        })?),
        None => None,
    };
    let events = store
        .audit_events(since, 100_000)
        .map_err(|e| e.to_string())?;
    if json {
        return print_json(&json!(events));
    }
    for e in events {
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
    }
    Ok(())
}
