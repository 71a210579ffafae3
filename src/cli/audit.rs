//! `gitgate audit`: print audit events, oldest first — all of them, or the newest `--limit`,
//! of those in a span of time, of an action, by an actor or about a target.
//!
//! The table grows for good with people's changes (failed authentications are folded into one
//! row per repeat and capped by `[auth_failures] keep_in_audit`, but changes are never
//! deleted), so the listing is read and printed a page at a time: memory stays flat however long it is, and
//! the newest events are never cut off behind a fixed cap.

use super::out_raw;
use crate::clock;
use crate::log_value::LogValue;
use crate::store::{AuditCursor, AuditEvent, AuditFilter, Store, ACTIONS, FAMILIES};

/// Events read from the store at a time.
const PAGE: usize = 1000;

/// What `gitgate audit` was asked for, as typed.
#[derive(Default)]
pub struct Wanted<'a> {
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub action: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub target: Option<&'a str>,
    pub user: Option<&'a str>,
}

/// Why a date (`--since`, `--until`) was not taken. A small number is most often seconds
/// (`date +%s`) or a day written without dashes, not a moment of 1970.
fn date_refused(flag: &str, s: &str) -> String {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => format!(
            "{flag} {s} is too small for epoch milliseconds (it would be {}, before any event): \
             give milliseconds (seconds × 1000) or YYYY-MM-DD; leave {flag} out for every event",
            clock::datetime(n)
        ),
        _ => format!(
            "{flag} '{s}' is not a date: use YYYY-MM-DD (1970 to 9999), a UTC time as gitgate \
             prints them (2026-12-05T11:57:51Z) or epoch milliseconds (seconds × 1000)"
        ),
    }
}

/// The filter `wanted` asks for, or why it cannot be: a date that is not one, a span that ends
/// before it begins, an action of no family (a typo would otherwise list nothing, silently).
pub fn filter(wanted: &Wanted<'_>) -> Result<AuditFilter, String> {
    let date = |flag: &str, s: Option<&str>| match s {
        Some(s) => clock::parse_date(s)
            .map(Some)
            .ok_or_else(|| date_refused(flag, s)),
        None => Ok(None),
    };
    let since = date("--since", wanted.since)?;
    let until = date("--until", wanted.until)?;
    if let (Some(since), Some(until)) = (since, until) {
        if until <= since {
            return Err(format!(
                "--until {} is not after --since {}: no event could be both at or after the \
                 one and before the other",
                clock::datetime(until),
                clock::datetime(since)
            ));
        }
    }
    if let Some(action) = wanted.action {
        let family = action.split('.').next().unwrap_or_default();
        let named = action.split('.').count() <= 2
            && action.split('.').all(|part| {
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
        if !named || !FAMILIES.contains(&family) {
            return Err(format!(
                "--action '{action}' is not an action: give a family ({}) or one action of it, \
                 e.g. token.revoked",
                FAMILIES.join(", ")
            ));
        }
        if action.contains('.') && !ACTIONS.contains(&action) {
            let of_family: Vec<&str> = ACTIONS
                .iter()
                .copied()
                .filter(|a| a.split('.').next() == Some(family))
                .collect();
            return Err(format!(
                "--action '{action}' is not an action gitgate records: the {family} actions are \
                 {}, or give the family ({family}) for every one",
                of_family.join(", ")
            ));
        }
    }
    // As the listing prints it: bare, or quoted (`"<not a user name>"`, `""` for an empty
    // target), which is read as the JSON string it is.
    let empty = |flag: &str, s: Option<&str>| match s {
        Some(s) if s.trim().is_empty() && flag == "--user" => {
            Err("--user is empty: give a user's name".to_string())
        }
        Some(s) if s.trim().is_empty() => Err(format!(
            "{flag} is empty: give the exact {} as `gitgate audit` prints it (\"\" for an \
             empty one)",
            &flag[2..]
        )),
        Some(s) if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') => {
            serde_json::from_str::<String>(s).map(Some).map_err(|_| {
                format!(
                    "{flag} {s} is quoted but not as `gitgate audit` quotes a value: give it \
                     as printed, or without the quotes"
                )
            })
        }
        s => Ok(s.map(str::to_string)),
    };
    Ok(AuditFilter {
        since,
        until,
        action: wanted.action.map(str::to_string),
        actor: empty("--actor", wanted.actor)?,
        target: empty("--target", wanted.target)?,
        // User names are lower-case: `Alice` is alice.
        user: empty("--user", wanted.user)?.map(|u| u.to_ascii_lowercase()),
    })
}

pub fn show(
    store: &Store,
    wanted: &Wanted<'_>,
    limit: Option<usize>,
    json: bool,
) -> Result<(), String> {
    let filter = filter(wanted)?;
    // Users are never deleted: a name that is none is a typo, not a user without events.
    if let Some(user) = &filter.user {
        if store.user(user).map_err(|e| e.to_string())?.is_none() {
            return Err(format!(
                "{}: --user takes a user's name (--actor and --target match any name as \
                 `gitgate audit` prints it)",
                crate::store::no_such_user(wanted.user.unwrap_or(user))
            ));
        }
    }
    let mut after = match limit {
        Some(0) => {
            return Err("--limit 0 shows nothing: give the number of newest events to show".into())
        }
        Some(n) => store
            .audit_before_newest(&filter, n)
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
            .audit_page(&filter, after, PAGE.min(left))
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
    let unplaceable = store
        .unplaceable_audit_events()
        .map_err(|e| e.to_string())?;
    if unplaceable > 0 {
        super::note(format_args!(
            "note: {unplaceable} audit event(s) have a time gitgate cannot read (not epoch \
             milliseconds: changed by hand?) and are not listed; sqlite3 shows them: SELECT * \
             FROM audit_events WHERE typeof(at) != 'integer' OR at = 9223372036854775807"
        ));
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
    // Each value one logfmt field, as in the server's log: an actor, a target or a detail is
    // partly somebody's words (a token's name, `SUDO_USER`), and written bare it could forge a
    // field of its own (`actor=root`) for a reader of `key=value`.
    outln!(
        "{} {:<22} actor={} source={} target={} detail={}{repeats}",
        clock::datetime(e.at),
        e.action,
        LogValue(&e.actor),
        LogValue(&e.source),
        LogValue(&e.target),
        LogValue(&e.detail)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{filter, Wanted};

    /// `--actor` and `--target` as the listing prints them, quoted or not.
    #[test]
    fn an_actor_or_target_is_taken_as_printed() {
        let taken = |actor: &str, target: &str| {
            let f = filter(&Wanted {
                actor: Some(actor),
                target: Some(target),
                ..Wanted::default()
            })
            .unwrap();
            (f.actor.unwrap(), f.target.unwrap())
        };
        assert_eq!(
            taken("\"<not a user name>\"", "\"\""),
            ("<not a user name>".to_string(), String::new())
        );
        assert_eq!(
            taken("cli:ops", "team/app"),
            ("cli:ops".to_string(), "team/app".to_string())
        );
        assert_eq!(
            taken("\"a\\u2028b\"", "x"),
            ("a\u{2028}b".to_string(), "x".to_string())
        );
        let refused = filter(&Wanted {
            target: Some("\"a\\q\""),
            ..Wanted::default()
        })
        .unwrap_err();
        assert!(
            refused.contains("not as `gitgate audit` quotes"),
            "{refused}"
        );
    }

    #[test]
    fn a_filter_is_refused_with_its_reason_where_it_could_list_nothing() {
        let refused = |w: Wanted<'_>| filter(&w).unwrap_err();
        assert!(refused(Wanted {
            until: Some("1701993600"),
            ..Wanted::default()
        })
        .contains("--until 1701993600 is too small for epoch milliseconds"));
        assert!(refused(Wanted {
            since: Some("2026-12-05"),
            until: Some("2026-12-05"),
            ..Wanted::default()
        })
        .contains("is not after --since"));
        let said = refused(Wanted {
            action: Some("token.revoke"),
            ..Wanted::default()
        });
        assert!(
            said.contains("--action 'token.revoke' is not an action gitgate records")
                && said.contains("token.created, token.edited, token.revoked, token.rotated"),
            "{said}"
        );
        assert!(filter(&Wanted {
            action: Some("token.revoked"),
            ..Wanted::default()
        })
        .is_ok());
        for typo in [
            "tokens",
            "token.",
            ".revoked",
            "token.revoked.x",
            "user.%",
            "Token",
        ] {
            let said = refused(Wanted {
                action: Some(typo),
                ..Wanted::default()
            });
            assert!(said.contains("is not an action"), "{typo}: {said}");
        }
        assert!(refused(Wanted {
            actor: Some(" "),
            ..Wanted::default()
        })
        .contains("--actor is empty"));
        let taken = filter(&Wanted {
            since: Some("2026-12-01"),
            until: Some("2026-12-02"),
            action: Some("user.role_changed"),
            actor: Some("cli:root"),
            target: Some("alice"),
            user: Some("Alice"),
        })
        .unwrap();
        assert_eq!(taken.user.as_deref(), Some("alice"));
        assert_eq!(
            taken.until.unwrap() - taken.since.unwrap(),
            24 * 3600 * 1000
        );
        assert_eq!(taken.action.as_deref(), Some("user.role_changed"));
        assert_eq!(taken.actor.as_deref(), Some("cli:root"));
        assert_eq!(taken.target.as_deref(), Some("alice"));
    }
}
