//! Rate-limit overrides: a principal (`user:alice` or `token:<id>`) either gets its own bucket
//! size and refill rate, or is exempt. Everyone else gets the `[rate_limit]` defaults. Each change
//! is audited in the same transaction.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::audit::record;
use super::users::require_user;
use super::{Actor, Result, Store, StoreError};
use crate::clock;

/// What an override says.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum RateRule {
    /// Never limited (e.g. a CI service account).
    Exempt,
    /// Its own bucket.
    #[serde(rename_all = "camelCase")]
    Limits {
        capacity: u32,
        refill_per_second: f64,
    },
}

/// One stored override.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateOverride {
    pub principal: String,
    pub rule: RateRule,
    pub updated_at: i64,
    pub updated_by: String,
}

/// A stored override that cannot be used (edited by hand, or by a newer gitgate): its principal
/// gets the defaults, and the rest are used all the same.
#[derive(Clone, Debug, Serialize)]
pub struct UnreadableOverride {
    pub principal: String,
    pub error: String,
}

/// Every stored override: those that can be used, and those that cannot.
#[derive(Clone, Debug, Default)]
pub struct RateOverrides {
    pub usable: Vec<RateOverride>,
    pub unreadable: Vec<UnreadableOverride>,
}

/// What a row says, or why it cannot be used. A rule the CLI would refuse (a capacity of 0, a
/// refill out of range) is no rule either.
fn override_from_row(r: &rusqlite::Row) -> std::result::Result<RateOverride, String> {
    let exempt: bool = r.get(3).map_err(|e| e.to_string())?;
    let rule = if exempt {
        RateRule::Exempt
    } else {
        let capacity: u32 = r.get(1).map_err(|e| format!("capacity: {e}"))?;
        let refill_per_second: f64 = r.get(2).map_err(|e| format!("refill_per_second: {e}"))?;
        if capacity == 0 || !crate::ratelimit::Limits::refill_in_range(refill_per_second) {
            return Err(format!(
                "capacity {capacity}, refill {refill_per_second}/s is out of range"
            ));
        }
        RateRule::Limits {
            capacity,
            refill_per_second,
        }
    };
    Ok(RateOverride {
        principal: r.get(0).map_err(|e| e.to_string())?,
        rule,
        updated_at: r.get(4).map_err(|e| format!("updated_at: {e}"))?,
        updated_by: r.get(5).map_err(|e| format!("updated_by: {e}"))?,
    })
}

/// The principal must name something that exists: `user:<slug>` or `token:<id>`.
fn require_principal(c: &rusqlite::Connection, principal: &str) -> Result<()> {
    if let Some(slug) = principal.strip_prefix("user:") {
        require_user(c, slug)?;
        return Ok(());
    }
    if let Some(id) = principal.strip_prefix("token:") {
        let found: Option<(Option<String>, bool)> = c
            .query_row(
                "SELECT u.slug, t.revoked_at IS NOT NULL
                 FROM tokens t LEFT JOIN users u ON u.id = t.owner_id WHERE t.id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        return match found {
            None => Err(StoreError::NotFound(format!("no token '{id}'"))),
            // It never authenticates again: a rule for it would be accepted and never apply.
            Some((_, true)) => Err(StoreError::Invalid(format!(
                "token '{id}' is revoked: no request counts against it any more"
            ))),
            // A personal token is counted in its owner's bucket, never in one of its own: a
            // rule for it would be accepted and never apply.
            Some((Some(owner), false)) => Err(StoreError::Invalid(format!(
                "token '{id}' is a personal token of '{owner}', and all of a user's personal \
                 tokens share the user's limit: set it for the user ({owner})"
            ))),
            Some((None, false)) => Ok(()),
        };
    }
    Err(StoreError::Invalid(format!(
        "'{principal}' is not a rate-limit principal: use user:NAME or token:ID"
    )))
}

/// The principal names a user or a token there is, revoked or not (see [`require_principal`]
/// for one a rule may be set for).
fn require_known(c: &rusqlite::Connection, principal: &str) -> Result<()> {
    if let Some(slug) = principal.strip_prefix("user:") {
        require_user(c, slug)?;
        return Ok(());
    }
    if let Some(id) = principal.strip_prefix("token:") {
        let there: bool = c.query_row(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        return match there {
            true => Ok(()),
            false => Err(StoreError::NotFound(format!("no token '{id}'"))),
        };
    }
    Err(StoreError::Invalid(format!(
        "'{principal}' is not a rate-limit principal: use user:NAME or token:ID"
    )))
}

impl Store {
    /// Set (or replace) the override of `principal`. False when that very rule was set
    /// already: nothing is written or audited.
    pub fn set_rate_limit(&self, principal: &str, rule: RateRule, actor: &Actor) -> Result<bool> {
        if let RateRule::Limits {
            capacity,
            refill_per_second,
        } = rule
        {
            if capacity == 0 {
                return Err(StoreError::Invalid("capacity must be at least 1".into()));
            }
            if !crate::ratelimit::Limits::refill_in_range(refill_per_second) {
                return Err(StoreError::Invalid(
                    "refill must be from 0.0000116 (one request a day) to at most 1000000 requests per second \
                     (for no limit at all, exempt the principal)"
                        .into(),
                ));
            }
        }
        self.write(|tx| {
            require_principal(tx, principal)?;
            let before: Option<(Option<u32>, Option<f64>, bool)> = tx
                .query_row(
                    "SELECT capacity, refill_per_second, exempt FROM rate_limits WHERE principal = ?1",
                    [principal],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                // None too for a row that cannot be read: it is replaced, not compared.
                .ok();
            let (capacity, refill, exempt, detail) = match rule {
                RateRule::Exempt => (None, None, true, "exempt".to_string()),
                RateRule::Limits {
                    capacity,
                    refill_per_second,
                } => (
                    Some(capacity),
                    Some(refill_per_second),
                    false,
                    format!("capacity {capacity}, refill {refill_per_second}/s"),
                ),
            };
            if before == Some((capacity, refill, exempt)) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO rate_limits (principal, capacity, refill_per_second, exempt, updated_at, updated_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (principal) DO UPDATE SET capacity = ?2, refill_per_second = ?3,
                     exempt = ?4, updated_at = ?5, updated_by = ?6",
                params![principal, capacity, refill, exempt, clock::now_ms(), actor.name],
            )?;
            record(tx, actor, "ratelimit.set", principal, &detail)?;
            Ok(true)
        })
    }

    /// Remove the override of `principal`: the defaults apply again. False when it had none:
    /// nothing is written or audited.
    pub fn clear_rate_limit(&self, principal: &str, actor: &Actor) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM rate_limits WHERE principal = ?1", [principal])?;
            if n == 0 {
                // No rule: in place already — unless nothing has that name (a typo, which
                // must not pass for a rule cleared).
                require_known(tx, principal)?;
                return Ok(false);
            }
            record(tx, actor, "ratelimit.cleared", principal, "")?;
            Ok(true)
        })
    }

    /// Every override, by principal. One row that cannot be used does not keep the others
    /// from being used: it is returned apart, with why.
    pub fn rate_limits(&self) -> Result<RateOverrides> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT principal, capacity, refill_per_second, exempt, updated_at, updated_by
                 FROM rate_limits ORDER BY principal",
            )?;
            let mut rows = stmt.query([])?;
            let mut all = RateOverrides::default();
            while let Some(row) = rows.next()? {
                match override_from_row(row) {
                    Ok(o) => all.usable.push(o),
                    Err(error) => all.unreadable.push(UnreadableOverride {
                        principal: row
                            .get::<_, String>(0)
                            .unwrap_or_else(|_| "(unreadable principal)".into()),
                        error,
                    }),
                }
            }
            Ok(all)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{actor, personal_token, temp_store};
    use crate::store::Role;

    #[test]
    fn set_list_replace_clear() {
        let (_d, store) = temp_store();
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        let limits = RateRule::Limits {
            capacity: 10,
            refill_per_second: 0.5,
        };
        store
            .set_rate_limit("user:alice", limits, &actor())
            .unwrap();
        let all = store.rate_limits().unwrap().usable;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].rule, limits);
        store
            .set_rate_limit("user:alice", RateRule::Exempt, &actor())
            .unwrap();
        assert_eq!(
            store.rate_limits().unwrap().usable[0].rule,
            RateRule::Exempt
        );
        // The same rule again, or a clear of nothing: no change, no audit entry.
        assert!(!store
            .set_rate_limit("user:alice", RateRule::Exempt, &actor())
            .unwrap());
        assert!(store.clear_rate_limit("user:alice", &actor()).unwrap());
        assert!(store.rate_limits().unwrap().usable.is_empty());
        assert!(!store.clear_rate_limit("user:alice", &actor()).unwrap());
        // A name nothing has is a typo, not a rule cleared already.
        for typo in ["user:alcie", "token:zzzzzzzzzzzz"] {
            match store.clear_rate_limit(typo, &actor()) {
                Err(StoreError::NotFound(_)) => {}
                other => panic!("{typo}: {other:?}"),
            }
        }
        let events = store.audit_events(None, 100).unwrap();
        let count = |action: &str| events.iter().filter(|e| e.action == action).count();
        assert_eq!(count("ratelimit.set"), 2);
        assert_eq!(count("ratelimit.cleared"), 1);
    }

    /// A revoked token never authenticates again: a rule for it would never apply.
    #[test]
    fn a_revoked_token_gets_no_rule() {
        let (_d, store) = temp_store();
        let target = crate::policy::Target::parse("team/app").unwrap();
        store
            .insert_token(
                &crate::store::test_support::repository_token("abcdefghijkl", "ci", &target),
                &actor(),
            )
            .unwrap();
        // Its rule, set while it was live, goes with the revocation (audited).
        store
            .set_rate_limit("token:abcdefghijkl", RateRule::Exempt, &actor())
            .unwrap();
        store.revoke_token("abcdefghijkl", &actor()).unwrap();
        assert!(store.rate_limits().unwrap().usable.is_empty());
        let events = store.audit_events(None, 100).unwrap();
        assert!(
            events.iter().any(|e| e.action == "ratelimit.cleared"
                && e.target == "token:abcdefghijkl"
                && e.detail == "the token was revoked"),
            "{events:?}"
        );
        match store.set_rate_limit("token:abcdefghijkl", RateRule::Exempt, &actor()) {
            Err(StoreError::Invalid(m)) => assert!(m.contains("is revoked"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(store.rate_limits().unwrap().usable.is_empty());
        // Clearing it again: nothing to clear, and the token is there: no error.
        assert!(!store
            .clear_rate_limit("token:abcdefghijkl", &actor())
            .unwrap());
    }

    /// A row edited by hand into something unusable costs its own principal its override, not
    /// every principal theirs (one bad row used to fail the whole read, and a running server
    /// kept the overrides of its last good read, a removed exemption included).
    #[test]
    fn an_unusable_row_is_set_apart_and_the_others_are_used() {
        let (d, store) = temp_store();
        let limits = RateRule::Limits {
            capacity: 5,
            refill_per_second: 1.0,
        };
        for user in ["alice", "bob", "carol"] {
            store.add_user(user, "x", Role::User, &actor()).unwrap();
            store
                .set_rate_limit(&format!("user:{user}"), limits, &actor())
                .unwrap();
        }
        let raw = rusqlite::Connection::open(d.path().join("t.db")).unwrap();
        raw.execute_batch(
            "UPDATE rate_limits SET capacity = '5x' WHERE principal = 'user:alice';
             PRAGMA ignore_check_constraints = ON;
             UPDATE rate_limits SET capacity = 0 WHERE principal = 'user:carol';",
        )
        .unwrap();
        let all = store.rate_limits().unwrap();
        let usable: Vec<_> = all.usable.iter().map(|o| o.principal.as_str()).collect();
        assert_eq!(usable, ["user:bob"]);
        let unreadable: Vec<_> = all
            .unreadable
            .iter()
            .map(|o| o.principal.as_str())
            .collect();
        assert_eq!(unreadable, ["user:alice", "user:carol"]);
        assert!(
            all.unreadable[0].error.contains("capacity"),
            "{:?}",
            all.unreadable
        );
        assert!(
            all.unreadable[1].error.contains("out of range"),
            "{:?}",
            all.unreadable
        );
        // Cleared, or set again, it is usable.
        store.clear_rate_limit("user:alice", &actor()).unwrap();
        store
            .set_rate_limit("user:carol", limits, &actor())
            .unwrap();
        let all = store.rate_limits().unwrap();
        assert!(all.unreadable.is_empty());
        assert_eq!(all.usable.len(), 2);
    }

    #[test]
    fn unknown_principals_and_bad_limits_are_refused() {
        let (_d, store) = temp_store();
        assert!(matches!(
            store.set_rate_limit("user:nobody", RateRule::Exempt, &actor()),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.set_rate_limit("token:abcdefghijkl", RateRule::Exempt, &actor()),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.set_rate_limit("alice", RateRule::Exempt, &actor()),
            Err(StoreError::Invalid(_))
        ));
        // A personal token is counted in its owner's bucket: a rule of its own would never
        // apply, so it is refused with a pointer to the user.
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        store
            .insert_token(&personal_token("mnopqrstuvwx", "laptop", "alice"), &actor())
            .unwrap();
        match store.set_rate_limit("token:mnopqrstuvwx", RateRule::Exempt, &actor()) {
            Err(StoreError::Invalid(m)) => {
                assert!(m.contains("set it for the user (alice)"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(store.rate_limits().unwrap().usable.is_empty());
        let zero = RateRule::Limits {
            capacity: 0,
            refill_per_second: 1.0,
        };
        assert!(matches!(
            store.set_rate_limit("user:x", zero, &actor()),
            Err(StoreError::Invalid(_))
        ));
        // A refill beyond a million a second limits nothing (and `ratelimit list` printed 1e300
        // as 301 digits): refused with a pointer to `exempt`, as are NaN, infinity and zero.
        for refill in [
            1e300,
            1_000_000.5,
            f64::INFINITY,
            f64::NAN,
            0.0,
            -1.0,
            1e-300,
            1e-5,
        ] {
            let rule = RateRule::Limits {
                capacity: 5,
                refill_per_second: refill,
            };
            match store.set_rate_limit("user:alice", rule, &actor()) {
                Err(StoreError::Invalid(m)) => assert!(m.contains("at most 1000000"), "{m}"),
                other => panic!("{refill}: {other:?}"),
            }
        }
        assert!(store.rate_limits().unwrap().usable.is_empty());
        let fastest = RateRule::Limits {
            capacity: 5,
            refill_per_second: 1_000_000.0,
        };
        store
            .set_rate_limit("user:alice", fastest, &actor())
            .unwrap();
        assert_eq!(store.rate_limits().unwrap().usable[0].rule, fastest);
    }

    /// The overrides are listed by principal, whatever order they were set in.
    #[test]
    fn overrides_are_listed_by_principal() {
        let (_d, store) = temp_store();
        for user in ["carol", "alice", "bob"] {
            store.add_user(user, "x", Role::User, &actor()).unwrap();
            store
                .set_rate_limit(&format!("user:{user}"), RateRule::Exempt, &actor())
                .unwrap();
        }
        let listed: Vec<String> = store
            .rate_limits()
            .unwrap()
            .usable
            .into_iter()
            .map(|o| o.principal)
            .collect();
        assert_eq!(listed, ["user:alice", "user:bob", "user:carol"]);
    }
}
