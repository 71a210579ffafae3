//! `gitgate ratelimit ...`: per-user (or per scoped token) overrides of the `[rate_limit]`
//! defaults. `USER` is a user slug (covering all of that user's personal tokens) or `token:ID` for
//! a project or repository token. A running server picks a change up within a few seconds.

use serde_json::json;

use super::{print_json, when, OpenStore};
use crate::store::{Actor, RateRule, Store};

/// What `set`, `exempt` and `list` add while `[rate_limit] enabled = false`: the server then
/// counts no principal's requests, so a stored override — a smaller bucket for one abusive
/// user included — has no effect, and saying only that it was set would make it look in force.
const WHILE_OFF: &str = "note: rate limiting is off in this configuration ([rate_limit] \
                         enabled = false): no principal's requests are counted, so overrides \
                         have no effect until it is set to true and gitgate restarted \
                         ([rate_limit] max_concurrent applies all the same)";

/// Says [`WHILE_OFF`] when rate limiting is off.
fn say_if_off(store: &OpenStore) {
    if !store.rate_limiting {
        note!("{WHILE_OFF}");
    }
}

/// `alice` (or `user:alice`, as `ratelimit list` shows it) → `user:alice`; `token:ID` stays as
/// it is.
fn principal(who: &str) -> Result<String, String> {
    if let Some(id) = who.strip_prefix("token:") {
        id.parse::<crate::token::TokenId>()?;
        return Ok(who.to_string());
    }
    let who = who.strip_prefix("user:").unwrap_or(who);
    crate::store::validate_slug(who).map_err(|e| {
        // `Alice`: a user's name in capitals names no user, as every other command that takes
        // one says (user names are lower-case) — not a name to add, which alice may well be.
        let lower = who.to_ascii_lowercase();
        if lower != who && crate::store::validate_slug(&lower).is_ok() {
            crate::store::no_such_user(who)
        } else {
            e.to_string()
        }
    })?;
    Ok(crate::guard::user_principal(who))
}

pub fn set(store: &OpenStore, who: &str, capacity: u32, refill: f64) -> Result<(), String> {
    let p = principal(who)?;
    let rule = RateRule::Limits {
        capacity,
        refill_per_second: refill,
    };
    let changed = store
        .set_rate_limit(&p, rule, &Actor::cli())
        .map_err(|e| not_a_user(store, who, e))?;
    note!(
        "{p}: capacity {capacity}, refill {refill}/s{}",
        unchanged(changed)
    );
    say_if_off(store);
    Ok(())
}

pub fn exempt(store: &OpenStore, who: &str) -> Result<(), String> {
    let p = principal(who)?;
    let changed = store
        .set_rate_limit(&p, RateRule::Exempt, &Actor::cli())
        .map_err(|e| not_a_user(store, who, e))?;
    note!("{p}: exempt from rate limiting{}", unchanged(changed));
    say_if_off(store);
    Ok(())
}

pub fn clear(store: &Store, who: &str) -> Result<(), String> {
    let p = principal(who)?;
    let changed = store
        .clear_rate_limit(&p, &Actor::cli())
        .map_err(|e| not_a_user(store, who, e))?;
    if changed {
        note!("{p}: the [rate_limit] defaults apply again");
    } else {
        note!("{p} had no override, the [rate_limit] defaults apply; nothing changed");
    }
    Ok(())
}

/// A store's refusal, with what to write instead when `who` names no user but project or
/// repository tokens (`ci`): their rule is set by `token:ID`, one token at a time.
fn not_a_user(store: &Store, who: &str, e: crate::store::StoreError) -> String {
    let said = e.to_string();
    if !matches!(e, crate::store::StoreError::NotFound(_)) || who.starts_with("token:") {
        return said;
    }
    let named: Vec<String> = super::live_scoped_tokens(store, |t| t.name == who)
        .into_iter()
        .map(|t| format!("token:{}", t.id))
        .collect();
    if named.is_empty() {
        return said;
    }
    format!(
        "{said}; '{who}' names project or repository tokens, each limited on its own: {}",
        named.join(", ")
    )
}

/// What a command that found its rule in place already adds to its line.
fn unchanged(changed: bool) -> &'static str {
    if changed {
        ""
    } else {
        " already; nothing changed"
    }
}

pub fn list(store: &OpenStore, as_json: bool) -> Result<(), String> {
    let all = store.rate_limits().map_err(|e| e.to_string())?;
    if !all.usable.is_empty() || !all.unreadable.is_empty() {
        // On stderr, so that the listing itself (and its JSON) stays as it is.
        say_if_off(store);
    }
    if as_json {
        let mut rows: Vec<serde_json::Value> = all.usable.iter().map(|o| json!(o)).collect();
        rows.extend(all.unreadable.iter().map(
            |o| json!({"principal": o.principal, "rule": {"kind": "unreadable", "error": o.error}}),
        ));
        return print_json(&json!(rows));
    }
    let principals = all.unreadable.iter().map(|o| &o.principal);
    let w = super::width(
        32,
        principals.chain(all.usable.iter().map(|o| &o.principal)),
    );
    outln!("{:<w$} {:<28} UPDATED", "PRINCIPAL", "RULE");
    for o in &all.unreadable {
        outln!(
            "{:<w$} unreadable (the defaults apply; set it again or clear it): {}",
            o.principal,
            o.error
        );
    }
    for o in all.usable {
        let rule = match o.rule {
            RateRule::Exempt => "exempt".to_string(),
            RateRule::Limits {
                capacity,
                refill_per_second,
            } => format!("capacity {capacity}, {refill_per_second}/s"),
        };
        outln!(
            "{:<w$} {:<28} {} by {}",
            o.principal,
            rule,
            when(Some(o.updated_at)),
            o.updated_by
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::principal;

    #[test]
    fn a_principal_is_taken_as_the_list_shows_it_too() {
        assert_eq!(principal("alice").unwrap(), "user:alice");
        assert_eq!(principal("user:alice").unwrap(), "user:alice");
        assert_eq!(
            principal("token:abcdefghijkl").unwrap(),
            "token:abcdefghijkl"
        );
        assert!(principal("user:Alice").is_err());
        assert!(principal("user:").is_err());
    }

    /// A name in capitals is told as the other commands tell it (user names are lower-case),
    /// not as a name to add: `ratelimit set Alice` is most often for alice, who is there.
    #[test]
    fn a_name_in_capitals_is_no_user_not_one_to_add() {
        for (given, said) in [
            (
                "Alice",
                "no user 'Alice' (user names are lower-case: 'alice')",
            ),
            (
                "user:ALICE",
                "no user 'ALICE' (user names are lower-case: 'alice')",
            ),
        ] {
            assert_eq!(principal(given).unwrap_err(), said);
        }
        let other = principal("a b").unwrap_err();
        assert!(other.contains("is not a valid user name"), "{other}");
    }
}
