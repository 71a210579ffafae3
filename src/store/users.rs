//! Users: a slug, an argon2id password hash (management only; git uses tokens), a role, and
//! whether the account is active.

use std::fmt;
use std::str::FromStr;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::audit::record;
use super::{Actor, Result, Store, StoreError};
use crate::clock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: tables align it with `{:<6}`.
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role '{s}'")),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(skip)]
    pub id: i64,
    #[serde(rename = "name")]
    pub slug: String,
    pub role: Role,
    pub active: bool,
    pub created_at: i64,
    /// Until when (epoch ms) password logins are refused after too many failures; tokens still work.
    pub locked_until: Option<i64>,
    /// Wrong passwords in a row since the last right one, a change of password or an unlock:
    /// how close the user is to the lock (which sets it back to 0). `None` when the store holds
    /// no count gitgate writes (a negative or other value, changed by hand), which the next
    /// wrong password takes as the lock's count. Wrong passwords a server counted in memory
    /// while its store took no writes are not in it until they are written.
    pub failed_logins: Option<i64>,
}

/// A user slug: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit. Kept strict because it
/// is compared with the username git sends and printed in messages and logs.
pub fn validate_slug(slug: &str) -> Result<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 64
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && slug.as_bytes()[0].is_ascii_alphanumeric();
    if ok && crate::credentials::holds_a_secret(slug) {
        // gitgate refuses such a user name wherever it is sent (it is how a token pasted into
        // the user field looks), so a user by that name could never log in nor use a token.
        Err(StoreError::Invalid(format!(
            "'{slug}' is not a valid user name: it holds 'ggt_' or 'ggt-', how gitgate's token \
             secrets begin, and requests naming it are refused"
        )))
    } else if ok {
        Ok(())
    } else if slug.bytes().any(|b| b.is_ascii_uppercase())
        && validate_slug(&slug.to_ascii_lowercase()).is_ok()
    {
        let lower = slug.to_ascii_lowercase();
        Err(StoreError::Invalid(format!(
            "'{slug}' is not a valid user name: user names are lower case; add '{lower}' \
             (a clone as {slug}@ is {lower}'s all the same)"
        )))
    } else {
        Err(StoreError::Invalid(format!(
            "'{slug}' is not a valid user name: use 1-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

/// The names the audit trail writes as the actor where no user acted: gitgate itself
/// ([`Actor::gitgate`]: an address it blocked, old events it pruned) and a caller who named no
/// user (`anonymous`: a REST call with no user name or a token in its place, a git request with
/// a Bearer token). A user by one of these names would have their changes recorded under the
/// same actor, and `gitgate audit --user NAME` would list those events as theirs, so
/// [`Store::add_user`] refuses them ([`validate_new_slug`]).
pub const ACTOR_NAMES_OF_NO_USER: [&str; 2] = ["gitgate", "anonymous"];

/// [`validate_slug`] for a user to be added: also none of [`ACTOR_NAMES_OF_NO_USER`].
pub fn validate_new_slug(slug: &str) -> Result<()> {
    validate_slug(slug)?;
    if ACTOR_NAMES_OF_NO_USER.contains(&slug) {
        return Err(StoreError::Invalid(format!(
            "'{slug}' cannot be a user name: the audit trail writes it as the actor of what no \
             user did (gitgate's own actions, or a call that named no user), so this user's \
             changes could not be told from those; choose another name"
        )));
    }
    Ok(())
}

/// What a user name sent with a request is written down as (in the log, the audit table and
/// messages) before it is known to be a user's: itself when it is written as user names are
/// (lower-case letters, digits, `._-`), else [`NOT_A_USER_NAME`]. Anything else is most often a
/// password typed into git's Username prompt (`Summer2024`), and must not be kept; `Alice` is
/// alice all the same where names are compared, only not written down. (A password written
/// like a user name, `hunter2`, still would be: telling it apart would take a look at the store
/// on every refusal.)
pub fn as_written_down(name: &str) -> &str {
    // (Names holding a token are refused, and never written down, before this is asked.)
    if written_as_user_names_are(name) && !crate::credentials::holds_a_secret(name) {
        name
    } else {
        NOT_A_USER_NAME
    }
}

/// [`as_written_down`] of a Basic user name that `credentials::from_headers` gave: it refuses
/// every name that holds a secret, so that is not looked for again here (the gate asks this on
/// every request that names a user, and the look cost about 220 instructions).
pub fn as_written_down_unsecret(name: &str) -> &str {
    debug_assert!(!crate::credentials::holds_a_secret(name));
    if written_as_user_names_are(name) {
        name
    } else {
        NOT_A_USER_NAME
    }
}

/// Lower-case letters, digits and `._-`, at most 64, beginning with a letter or digit.
fn written_as_user_names_are(name: &str) -> bool {
    // On every request that names a user: no allocation.
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// "no user 'NAME'", with a hint when `name` has upper-case letters (user names have none).
pub fn no_such_user(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower != name && validate_slug(&lower).is_ok() {
        format!("no user '{name}' (user names are lower-case: '{lower}')")
    } else {
        format!("no user '{name}'")
    }
}

/// How [`as_written_down`] writes a name that cannot be a user's.
pub const NOT_A_USER_NAME: &str = "<not a user name>";

fn user_from_row(r: &rusqlite::Row) -> rusqlite::Result<User> {
    let role: String = r.get(2)?;
    Ok(User {
        id: r.get(0)?,
        slug: r.get(1)?,
        role: role.parse().unwrap_or(Role::User),
        // Only what gitgate writes, 1 or 0: another number (changed by hand) is no user a
        // request may be decided on, not "true" as any non-zero integer would read.
        active: match r.get::<_, i64>(3)? {
            1 => true,
            0 => false,
            other => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    3,
                    rusqlite::types::Type::Integer,
                    format!("users.active is {other}, where gitgate writes 1 or 0").into(),
                ))
            }
        },
        created_at: r.get(4)?,
        locked_until: r.get(5)?,
        failed_logins: match r.get::<_, rusqlite::types::Value>(6)? {
            rusqlite::types::Value::Integer(n) if n >= 0 => Some(n),
            _ => None,
        },
    })
}

/// The stored count of wrong passwords in a row of user `id`, as SQLite holds it: gitgate
/// writes a whole number from 0 up to the lock's, but an operator may have written anything.
fn stored_failures(c: &rusqlite::Connection, id: i64) -> Result<rusqlite::types::Value> {
    Ok(
        c.query_row("SELECT failed_logins FROM users WHERE id = ?1", [id], |r| {
            r.get(0)
        })?,
    )
}

/// The count of wrong passwords in a row after `more`, from the `stored` one, and the stored
/// one as text when it is none gitgate writes (a whole number from 0 to below `max`): such a
/// count, changed by hand, is taken as `max`, so that the next wrong password locks. Fail
/// closed: read as it stands, a negative count let a million guesses through before the lock
/// (-1000000), and one at `i64::MAX` overflowed into a REAL whose read failed the write.
fn failures_after(stored: rusqlite::types::Value, more: u32, max: u32) -> (i64, Option<String>) {
    use rusqlite::types::Value;
    match stored {
        Value::Integer(n) if (0..i64::from(max)).contains(&n) => (n + i64::from(more), None),
        other => {
            let shown = match other {
                Value::Integer(n) => n.to_string(),
                Value::Real(x) => x.to_string(),
                Value::Text(t) => format!("{:?}", crate::log_value::kept(&t, 40).0),
                Value::Null => "NULL".into(),
                Value::Blob(b) => format!("a blob of {} bytes", b.len()),
            };
            (i64::from(max), Some(shown))
        }
    }
}

pub(super) fn find_user(c: &rusqlite::Connection, slug: &str) -> Result<Option<User>> {
    Ok(c.prepare_cached(
        "SELECT id, slug, role, active, created_at, locked_until, failed_logins FROM users \
         WHERE slug = ?1",
    )?
    .query_row([slug], user_from_row)
    .optional()?)
}

pub(super) fn require_user(c: &rusqlite::Connection, slug: &str) -> Result<User> {
    find_user(c, slug)?.ok_or_else(|| StoreError::NotFound(no_such_user(slug)))
}

impl Store {
    pub fn add_user(
        &self,
        slug: &str,
        password_hash: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<User> {
        validate_new_slug(slug)?;
        self.write(|tx| {
            if find_user(tx, slug)?.is_some() {
                return Err(StoreError::Conflict(format!("user '{slug}' already exists")));
            }
            // The other side of tokens::refuse_user_name: a project or repository token is
            // known to the backend by its name, so a new user must not take that name — while
            // the token can still be used: a revoked or expired one never can again (its
            // expiry never changes, and it cannot be rotated).
            // Compared as git writes the token's name into a reflog, too (`bob,` is `bob`).
            let mut live = tx.prepare(
                "SELECT id, name FROM tokens WHERE owner_id IS NULL AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > ?1)",
            )?;
            // Both as git writes them: a user `bob.` is written `bob` as well.
            let slug_in_reflogs = super::tokens::as_git_writes_it(slug);
            let mut taken: Option<String> = None;
            let rows = live.query_map([crate::clock::now_ms()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (id, name) = row?;
                if name.trim().eq_ignore_ascii_case(slug)
                    || super::tokens::as_git_writes_it(&name).eq_ignore_ascii_case(&slug_in_reflogs)
                {
                    taken = Some(id);
                    break;
                }
            }
            drop(live);
            if let Some(id) = taken {
                return Err(StoreError::Conflict(format!(
                    "cannot add user '{slug}': project or repository token {id} has that name, \
                     and the git backend knows it by that name; rename or revoke the token \
                     first (gitgate token edit {id} --name ...)"
                )));
            }
            tx.execute(
                "INSERT INTO users (slug, password_hash, role, active, created_at) VALUES (?1, ?2, ?3, 1, ?4)",
                params![slug, password_hash, role.as_str(), clock::now_ms()],
            )?;
            record(tx, actor, "user.added", slug, &format!("role={role}"))?;
            require_user(tx, slug)
        })
    }

    pub fn user(&self, slug: &str) -> Result<Option<User>> {
        self.with_conn(|c| find_user(c, slug))
    }

    pub fn users(&self) -> Result<Vec<User>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, slug, role, active, created_at, locked_until, failed_logins FROM users \
                 ORDER BY slug",
            )?;
            let rows = stmt.query_map([], user_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// The stored argon2id hash of a user's password, for verification.
    pub fn password_hash(&self, slug: &str) -> Result<Option<String>> {
        self.with_conn(|c| {
            Ok(
                c.prepare_cached("SELECT password_hash FROM users WHERE slug = ?1")?
                    .query_row([slug], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// Enable or disable `slug`; `false` when it already was (nothing changed, nothing audited).
    pub fn set_user_active(&self, slug: &str, active: bool, actor: &Actor) -> Result<bool> {
        self.write(|tx| {
            let user = require_user(tx, slug)?;
            if user.active == active {
                return Ok(false);
            }
            tx.execute(
                "UPDATE users SET active = ?1 WHERE id = ?2",
                params![active, user.id],
            )?;
            let action = if active {
                "user.enabled"
            } else {
                "user.disabled"
            };
            record(tx, actor, action, slug, "")?;
            Ok(true)
        })
    }

    /// Make `slug` an administrator or a plain user; `false` when it was that already (nothing
    /// changed, nothing audited). Their tokens have the new standing at the next request: a
    /// personal token's access is its owner's. Project and repository tokens an administrator
    /// made stay as they are (as when one is disabled): they belong to their project.
    pub fn set_user_role(&self, slug: &str, role: Role, actor: &Actor) -> Result<bool> {
        self.write(|tx| {
            let user = require_user(tx, slug)?;
            if user.role == role {
                return Ok(false);
            }
            tx.execute(
                "UPDATE users SET role = ?1 WHERE id = ?2",
                params![role.as_str(), user.id],
            )?;
            record(
                tx,
                actor,
                "user.role_changed",
                slug,
                &format!("{} -> {role}", user.role),
            )?;
            Ok(true)
        })
    }

    /// Set a new password. It also forgets the wrong passwords counted so far and lifts a lock
    /// they caused: those were tries at the old password, and a reset is what an administrator
    /// does for a user who locked themselves out. Returns whether a lock (ending after `now`)
    /// was lifted; the audit event says so.
    pub fn set_password(
        &self,
        slug: &str,
        password_hash: &str,
        now: i64,
        actor: &Actor,
    ) -> Result<bool> {
        self.write(|tx| {
            let user = require_user(tx, slug)?;
            let was_locked = user.locked_until.is_some_and(|until| until > now);
            tx.execute(
                "UPDATE users SET password_hash = ?1, failed_logins = 0, locked_until = NULL \
                 WHERE id = ?2",
                params![password_hash, user.id],
            )?;
            let detail = if was_locked { "lock lifted" } else { "" };
            record(tx, actor, "user.password_changed", slug, detail)?;
            Ok(was_locked)
        })
    }
}

impl Store {
    /// Count a wrong password for `slug`. After `max` consecutive failures the password is locked
    /// until `now + lock_ms` (an audit event `user.locked`). Returns the lock's end when locked.
    /// Unknown users are not recorded, nor is a failure while a lock is in force: it comes from
    /// a login checked before the lock was made (logins run at once), and counted it would
    /// carry over, so that the next lock came after fewer than `max` wrong passwords (or, with
    /// `max` of them in flight, a second lock pushed the first one's end further out).
    pub fn record_password_failure(
        &self,
        slug: &str,
        now: i64,
        max: u32,
        lock_ms: i64,
        actor: &Actor,
    ) -> Result<Option<i64>> {
        self.write(|tx| {
            let Some(user) = find_user(tx, slug)? else {
                return Ok(None);
            };
            if user.locked_until.is_some_and(|until| now < until) {
                return Ok(None);
            }
            let (failures, edited) = failures_after(stored_failures(tx, user.id)?, 1, max);
            if failures < i64::from(max) {
                tx.execute(
                    "UPDATE users SET failed_logins = ?1 WHERE id = ?2",
                    params![failures, user.id],
                )?;
                return Ok(None);
            }
            let until = now + lock_ms;
            tx.execute(
                "UPDATE users SET locked_until = ?1, failed_logins = 0 WHERE id = ?2",
                params![until, user.id],
            )?;
            let count = match edited {
                Some(stored) => format!("a wrong password, with {stored} stored as the count of wrong ones in a row, which gitgate never writes (edited by hand?)"),
                None => format!("{failures} wrong passwords"),
            };
            record(
                tx,
                actor,
                "user.locked",
                slug,
                &format!("{count}; password logins refused until {}", clock::datetime(until)),
            )?;
            Ok(Some(until))
        })
    }

    /// Wrong passwords for `slug` that were counted in a server's memory while the store took no
    /// writes (see `lifecycle::login`), written now that it does: `failures` more towards the
    /// lock, or the lock they made (until `locked_until`), with its `user.locked` event — so
    /// that `user unlock` and `user passwd` lift it, as they lift any other. Nothing is written
    /// when the user was unlocked, or given a new password, since the first of them (`since`):
    /// an administrator's unlock is not undone by what was counted before it.
    #[allow(clippy::too_many_arguments)]
    pub fn record_password_failures_from_memory(
        &self,
        slug: &str,
        failures: u32,
        locked_until: Option<i64>,
        since: i64,
        now: i64,
        max: u32,
        lock_ms: i64,
        actor: &Actor,
    ) -> Result<()> {
        self.write(|tx| {
            let Some(user) = find_user(tx, slug)? else {
                return Ok(());
            };
            let lifted: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM audit_events WHERE target = ?1 \
                 AND action IN ('user.unlocked', 'user.password_changed') AND at >= ?2)",
                params![slug, since],
                |r| r.get(0),
            )?;
            if lifted {
                return Ok(());
            }
            let (until, said) = match locked_until.filter(|&until| now < until) {
                Some(until) => (
                    Some(until),
                    format!(
                        "wrong passwords counted in memory while the store took no writes; \
                         password logins refused until {}",
                        clock::datetime(until)
                    ),
                ),
                None => {
                    let (total, edited) =
                        failures_after(stored_failures(tx, user.id)?, failures, max);
                    if total < i64::from(max) {
                        tx.execute(
                            "UPDATE users SET failed_logins = ?1 WHERE id = ?2",
                            params![total, user.id],
                        )?;
                        return Ok(());
                    }
                    let until = now + lock_ms;
                    let count = match edited {
                        Some(stored) => format!(
                            "{failures} wrong password(s), with {stored} stored as the count of \
                             wrong ones in a row, which gitgate never writes (edited by hand?)"
                        ),
                        None => format!("{total} wrong passwords"),
                    };
                    (
                        Some(until),
                        format!(
                            "{count} (some counted in memory while the store took no writes); \
                             password logins refused until {}",
                            clock::datetime(until)
                        ),
                    )
                }
            };
            tx.execute(
                "UPDATE users SET locked_until = MAX(COALESCE(locked_until, 0), ?1), \
                 failed_logins = 0 WHERE id = ?2",
                params![until, user.id],
            )?;
            record(tx, actor, "user.locked", slug, &said)?;
            Ok(())
        })
    }

    /// Makes a password lock of `slug` that ends more than `lock_ms` after `now` end `lock_ms`
    /// from now, and returns its end as it is then (`None`: no lock in force). Such a lock was
    /// made on a wall clock ahead of this one — stepped back since (an NTP correction), or
    /// another host's — and no lock is made for longer than `lock_ms`: kept, it would refuse the
    /// user's password for as long again as the clock went back. Not audited: the lock stands,
    /// only its end moves, and the server's log says so.
    pub fn cap_password_lock(&self, slug: &str, now: i64, lock_ms: i64) -> Result<Option<i64>> {
        let capped = now.saturating_add(lock_ms);
        self.write(|tx| {
            tx.execute(
                "UPDATE users SET locked_until = ?1 WHERE slug = ?2 AND locked_until > ?1",
                params![capped, slug],
            )?;
            Ok(find_user(tx, slug)?
                .and_then(|u| u.locked_until)
                .filter(|&until| now < until))
        })
    }

    /// A correct password: forget earlier failures (no audit event; nothing changed for anyone).
    pub fn clear_password_failures(&self, slug: &str) -> Result<()> {
        self.with_conn(|c| {
            c.prepare_cached(
                "UPDATE users SET failed_logins = 0 WHERE slug = ?1 AND failed_logins IS NOT 0",
            )?
            .execute([slug])?;
            Ok(())
        })
    }

    /// Lift a password lock (`gitgate user unlock`), and the count of wrong passwords toward
    /// the next one. `false`: there was neither, so nothing changed and nothing is audited.
    pub fn unlock_user(&self, slug: &str, actor: &Actor) -> Result<bool> {
        self.write(|tx| {
            let user = require_user(tx, slug)?;
            let lifted = tx.execute(
                "UPDATE users SET locked_until = NULL, failed_logins = 0 \
                 WHERE id = ?1 AND (locked_until IS NOT NULL OR failed_logins IS NOT 0)",
                [user.id],
            )?;
            if lifted == 0 {
                // Nothing in the store; a server may still hold a lock it counted in memory
                // while the store took no writes (`lifecycle::login`). This event lifts that
                // one too: a server writing its count finds it and drops the count instead.
                record(
                    tx,
                    actor,
                    "user.unlocked",
                    slug,
                    "nothing was locked in the store; any lock a server counted in memory while \
                     the store took no writes is lifted too",
                )?;
                return Ok(false);
            }
            record(tx, actor, "user.unlocked", slug, "")?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{actor, edit_by_hand, temp_store};
    use super::*;

    #[test]
    fn slugs() {
        assert!(validate_slug("alice").is_ok());
        assert_eq!(
            no_such_user("Alice"),
            "no user 'Alice' (user names are lower-case: 'alice')"
        );
        assert_eq!(no_such_user("ghost"), "no user 'ghost'");
        for shown in ["alice", "ci-bot.2", "a", "7eleven"] {
            assert_eq!(as_written_down(shown), shown);
        }
        for hidden in [
            "Zq9SecretPasswordXy",
            "Summer2024",
            "Alice",
            "ALICE",
            "aLICE",
            "hunter 2",
            "p@ssw0rd",
            "-alice",
            "",
            "ggt_abc",
            &"a".repeat(65),
            "ünïcode",
        ] {
            assert_eq!(as_written_down(hidden), NOT_A_USER_NAME, "{hidden}");
        }
        // The gate's own, for a name that holds no secret (`from_headers` refuses those): the
        // same answer, without the second look.
        for name in [
            "alice",
            "ci-bot.2",
            "a",
            "7eleven",
            "ci",
            "Summer2024",
            "Alice",
            "-alice",
            "",
            "ünïcode",
            "hunter 2",
        ] {
            assert!(!crate::credentials::holds_a_secret(name), "{name}");
            assert_eq!(
                as_written_down_unsecret(name),
                as_written_down(name),
                "{name}"
            );
        }
        let long = "a".repeat(65);
        assert_eq!(as_written_down_unsecret(&long), NOT_A_USER_NAME);
        assert_eq!(as_written_down_unsecret(&"a".repeat(64)), "a".repeat(64));
        assert!(validate_slug("ci-bot.2").is_ok());
        let e = validate_slug("Alice").unwrap_err().to_string();
        assert!(e.contains("user names are lower case; add 'alice'"), "{e}");
        let e = validate_slug("Al ice").unwrap_err().to_string();
        assert!(e.contains("use 1-64 lower-case letters"), "{e}");
        for bad in [
            "",
            "Alice",
            "-x",
            ".x",
            "a b",
            "a/b",
            "a:b",
            &"a".repeat(65),
        ] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
        // Names that requests are refused for, as they look like a token pasted in.
        for secretish in ["ggt_bob", "dev-eggt-1", "ci.ggt_x"] {
            let e = validate_slug(secretish).unwrap_err().to_string();
            assert!(
                e.contains("how gitgate's token secrets begin"),
                "{secretish}: {e}"
            );
        }
    }

    /// A count of wrong passwords changed by hand to what gitgate never writes fails closed:
    /// the next wrong password locks. A negative one had to climb back over zero first (-1e6:
    /// a million guesses without a lock); one at `i64::MAX` overflowed into a REAL, whose read
    /// failed the write, so no wrong password was recorded at all; text was read as 0.
    #[test]
    fn a_count_of_wrong_passwords_gitgate_never_writes_locks_at_the_next_one() {
        let (d, store) = temp_store();
        store
            .add_user("alice", "hash", Role::User, &actor())
            .unwrap();
        for stored in [
            "-1",
            "-1000000",
            "-9223372036854775808",
            "9223372036854775807",
            "9223372036854775806",
            "10",
            "2.5",
            "'many'",
        ] {
            edit_by_hand(
                &d,
                &format!("UPDATE users SET failed_logins = {stored}, locked_until = NULL"),
            );
            assert_eq!(
                store
                    .record_password_failure("alice", 1000, 10, 60_000, &actor())
                    .unwrap(),
                Some(61_000),
                "{stored}"
            );
            let said = store.audit_events(None, 10_000).unwrap().pop().unwrap();
            assert_eq!(said.action, "user.locked");
            assert!(said.detail.contains("edited by hand"), "{}", said.detail);
            // Counted in memory while the store took no writes, then written: the same.
            edit_by_hand(
                &d,
                &format!("UPDATE users SET failed_logins = {stored}, locked_until = NULL"),
            );
            store
                .record_password_failures_from_memory(
                    "alice",
                    1,
                    None,
                    0,
                    1000,
                    10,
                    60_000,
                    &actor(),
                )
                .unwrap();
            assert_eq!(
                store.user("alice").unwrap().unwrap().locked_until,
                Some(61_000),
                "{stored}"
            );
        }
        // A right password, or an unlock, sets such a count back to zero too.
        edit_by_hand(
            &d,
            "UPDATE users SET failed_logins = -5, locked_until = NULL",
        );
        store.clear_password_failures("alice").unwrap();
        assert_eq!(
            store
                .record_password_failure("alice", 1000, 10, 60_000, &actor())
                .unwrap(),
            None
        );
        edit_by_hand(
            &d,
            "UPDATE users SET failed_logins = -5, locked_until = NULL",
        );
        assert!(store.unlock_user("alice", &actor()).unwrap());
        assert_eq!(
            store
                .record_password_failure("alice", 1000, 10, 60_000, &actor())
                .unwrap(),
            None
        );
        // What gitgate writes counts as before: the tenth locks.
        edit_by_hand(
            &d,
            "UPDATE users SET failed_logins = 9, locked_until = NULL",
        );
        assert_eq!(
            store
                .record_password_failure("alice", 1000, 10, 60_000, &actor())
                .unwrap(),
            Some(61_000)
        );
    }

    /// `active` changed by hand to a number gitgate does not write is not read as active (any
    /// non-zero integer was: a user set to 2 or -1 could clone).
    #[test]
    fn an_active_flag_that_is_neither_1_nor_0_is_refused() {
        let (d, store) = temp_store();
        store
            .add_user("alice", "hash", Role::User, &actor())
            .unwrap();
        let db = rusqlite::Connection::open(d.path().join("t.db")).unwrap();
        for value in [2, -1] {
            db.execute("UPDATE users SET active = ?1", [value]).unwrap();
            let e = store.user("alice").unwrap_err().to_string();
            assert!(e.contains(&format!("users.active is {value}")), "{e}");
        }
        db.execute("UPDATE users SET active = 0", []).unwrap();
        assert!(!store.user("alice").unwrap().unwrap().active);
    }

    /// The audit trail writes gitgate's own actions (an address blocked, old events pruned) as
    /// `gitgate`, and a call that named no user as `anonymous`: a user by either name would
    /// have their changes, and `gitgate audit --user NAME`, mixed with those. No such user is
    /// added, and nothing is written.
    #[test]
    fn a_user_cannot_take_a_name_the_audit_trail_writes_for_no_user() {
        let (_d, store) = temp_store();
        assert!(ACTOR_NAMES_OF_NO_USER.contains(&Actor::gitgate("local").name.as_str()));
        for name in ["gitgate", "anonymous"] {
            match store.add_user(name, "hash", Role::Admin, &actor()) {
                Err(StoreError::Invalid(m)) => {
                    assert!(
                        m.contains(&format!("'{name}'")) && m.contains("audit"),
                        "{m}"
                    )
                }
                other => panic!("{name}: {other:?}"),
            }
            assert!(store.user(name).unwrap().is_none(), "{name}");
        }
        assert!(store.audit_events(None, 10).unwrap().is_empty());
        // Names that only begin so are anyone's.
        for name in ["gitgate-bot", "anonymous2"] {
            store.add_user(name, "hash", Role::User, &actor()).unwrap();
        }
    }

    #[test]
    fn add_disable_enable_with_audit() {
        let (_d, store) = temp_store();
        let u = store
            .add_user("alice", "hash", Role::User, &actor())
            .unwrap();
        assert!(u.active);
        assert!(matches!(
            store.add_user("alice", "hash", Role::User, &actor()),
            Err(StoreError::Conflict(_))
        ));
        store.set_user_active("alice", false, &actor()).unwrap();
        assert!(!store.user("alice").unwrap().unwrap().active);
        assert!(store.set_user_active("alice", true, &actor()).unwrap());
        assert!(!store.set_user_active("alice", true, &actor()).unwrap());
        assert!(matches!(
            store.set_user_active("bob", true, &actor()),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store
                .record_password_failure("alice", 1000, 2, 60_000, &actor())
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .record_password_failure("alice", 1000, 2, 60_000, &actor())
                .unwrap(),
            Some(61_000)
        );
        assert_eq!(
            store.user("alice").unwrap().unwrap().locked_until,
            Some(61_000)
        );
        assert_eq!(
            store
                .record_password_failure("nobody", 1000, 1, 60_000, &actor())
                .unwrap(),
            None
        );
        assert!(store.unlock_user("alice", &actor()).unwrap());
        assert_eq!(store.user("alice").unwrap().unwrap().locked_until, None);
        // Nothing left to lift in the store: said, and audited, as it lifts a lock a server
        // may hold in memory (counted while the store took no writes).
        assert!(!store.unlock_user("alice", &actor()).unwrap());
        let actions: Vec<String> = store
            .audit_events(None, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions,
            [
                "user.added",
                "user.disabled",
                "user.enabled",
                "user.locked",
                "user.unlocked",
                "user.unlocked",
            ]
        );
    }

    /// A user name may be 64 characters long, not 65.
    #[test]
    fn a_user_name_may_have_64_characters() {
        assert!(validate_slug(&"a".repeat(64)).is_ok());
        assert!(validate_slug(&"a".repeat(65)).is_err());
        assert_eq!(as_written_down(&"a".repeat(64)), "a".repeat(64));
    }

    /// A role changed by hand into one gitgate does not write is read as a plain user's, never
    /// as an administrator's: it fails closed.
    #[test]
    fn an_unknown_role_is_read_as_a_plain_user() {
        let (d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        edit_by_hand(
            &d,
            "PRAGMA ignore_check_constraints = ON; UPDATE users SET role = 'owner';",
        );
        assert_eq!(store.user("alice").unwrap().unwrap().role, Role::User);
        assert_eq!(store.users().unwrap()[0].role, Role::User);
    }

    /// Wrong passwords of logins checked before a lock was made, and answered after it, are not
    /// counted towards the next one: after the lock ends, the next lock takes `max` wrong
    /// passwords again (16 wrong passwords sent at once left 3 counted, and the next lock came
    /// after 7).
    #[test]
    fn a_wrong_password_in_flight_when_the_lock_is_made_does_not_count_towards_the_next() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let fail = |now| {
            store
                .record_password_failure("alice", now, 3, 60_000, &actor())
                .unwrap()
        };
        assert_eq!((fail(1000), fail(1000)), (None, None));
        assert_eq!(fail(1000), Some(61_000));
        // Checked before the lock, answered after it.
        assert_eq!((fail(1001), fail(1002), fail(1003)), (None, None, None));
        assert_eq!(
            store.user("alice").unwrap().unwrap().locked_until,
            Some(61_000)
        );
        // The lock is over: three wrong passwords again before the next.
        assert_eq!((fail(61_000), fail(61_001)), (None, None));
        assert_eq!(fail(61_002), Some(121_002));
        let locks = store
            .audit_events(None, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "user.locked")
            .count();
        assert_eq!(locks, 2);
    }

    /// A new password says it lifted a lock only when there was one in force: a lock that had
    /// already ended is not reported (nor audited) as lifted.
    #[test]
    fn a_new_password_lifts_only_a_lock_still_in_force() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let lock = |now| {
            store
                .record_password_failure("alice", now, 1, 60_000, &actor())
                .unwrap()
        };
        assert_eq!(lock(1000), Some(61_000));
        assert!(!store.set_password("alice", "h2", 61_000, &actor()).unwrap());
        assert_eq!(lock(1000), Some(61_000));
        assert!(store.set_password("alice", "h3", 60_999, &actor()).unwrap());
        assert_eq!(store.user("alice").unwrap().unwrap().locked_until, None);
        let details: Vec<String> = store
            .audit_events(None, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "user.password_changed")
            .map(|e| e.detail)
            .collect();
        assert_eq!(details, ["", "lock lifted"]);
    }

    /// A lock ending further ahead than a lock lasts is moved to end a lock's length from now;
    /// one within that, or none, is left as it is.
    #[test]
    fn a_lock_ending_further_ahead_than_a_lock_lasts_is_moved_nearer() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        assert_eq!(
            store.cap_password_lock("alice", 1000, 60_000).unwrap(),
            None
        );
        let until = store
            .record_password_failure("alice", 4_000_000, 1, 60_000, &actor())
            .unwrap();
        assert_eq!(until, Some(4_060_000));
        // The clock an hour back: the lock ends a minute from then.
        let back = 4_000_000 - 3_600_000;
        assert_eq!(
            store.cap_password_lock("alice", back, 60_000).unwrap(),
            Some(back + 60_000)
        );
        assert_eq!(
            store.user("alice").unwrap().unwrap().locked_until,
            Some(back + 60_000)
        );
        // Within a lock's length: unchanged.
        assert_eq!(
            store.cap_password_lock("alice", back + 1, 60_000).unwrap(),
            Some(back + 60_000)
        );
    }

    /// Wrong passwords counted in memory while the store took no writes lock the user when,
    /// with those in the store, they reach the limit exactly, as wrong passwords counted in
    /// the store do.
    #[test]
    fn failures_counted_in_memory_lock_at_the_limit_exactly() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        assert_eq!(
            store
                .record_password_failure("alice", 1000, 3, 60_000, &actor())
                .unwrap(),
            None
        );
        store
            .record_password_failures_from_memory("alice", 1, None, 1000, 2000, 3, 60_000, &actor())
            .unwrap();
        assert_eq!(store.user("alice").unwrap().unwrap().locked_until, None);
        store
            .record_password_failures_from_memory("alice", 1, None, 1000, 2000, 3, 60_000, &actor())
            .unwrap();
        assert_eq!(
            store.user("alice").unwrap().unwrap().locked_until,
            Some(62_000)
        );
    }

    /// The lock counts wrong passwords in a row: the right password forgets those before it,
    /// and a lock starts the count again, so that one wrong password after either does not
    /// lock.
    #[test]
    fn wrong_passwords_count_in_a_row() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let fail = |now| {
            store
                .record_password_failure("alice", now, 2, 60_000, &actor())
                .unwrap()
        };
        assert_eq!(fail(1000), None);
        store.clear_password_failures("alice").unwrap();
        assert_eq!(fail(1000), None);
        assert_eq!(fail(1000), Some(61_000));
        // The lock has ended: the count starts again.
        assert_eq!(fail(70_000), None);
        assert_eq!(fail(70_000), Some(130_000));
    }

    /// Giving a user the role they have changes nothing and is not audited.
    #[test]
    fn the_same_role_again_is_no_change() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        assert!(!store.set_user_role("alice", Role::User, &actor()).unwrap());
        assert!(store.set_user_role("alice", Role::Admin, &actor()).unwrap());
        assert!(!store.set_user_role("alice", Role::Admin, &actor()).unwrap());
        let changes: Vec<String> = store
            .audit_events(None, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "user.role_changed")
            .map(|e| e.detail)
            .collect();
        assert_eq!(changes, ["user -> admin"]);
    }
}
