//! Grants: a user's permission on a project (`team`) or one repository (`team/app`).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::audit::record;
use super::users::require_user;
use super::{Actor, Result, Store};
use crate::clock;
use crate::permission::Level;
use crate::policy::Target;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub user: String,
    pub target: String,
    /// `None` for a row whose level or target gitgate cannot read (edited by hand): it grants
    /// nothing.
    pub level: Option<Level>,
    /// Then the level the row says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_level: Option<String>,
    pub created_at: i64,
}

/// All grants of one user as (target, level), for the policy.
pub(super) fn grants_of(c: &rusqlite::Connection, user_id: i64) -> Result<Vec<(Target, Level)>> {
    let mut stmt = c.prepare_cached("SELECT target, level FROM grants WHERE user_id = ?1")?;
    let rows = stmt.query_map([user_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (target, level) = row?;
        // A row that no longer parses grants nothing: fail closed.
        if let (Some(t), Ok(l)) = (read_target(&target), level.parse::<Level>()) {
            out.push((t, l));
        }
    }
    Ok(out)
}

/// A stored grant's target, if it reads as one and is written as gitgate writes it
/// (`Target`'s text). Another spelling of one (`team/app.git`, edited by hand) grants nothing:
/// [`Store::add_grant`] and [`Store::remove_grant`] find a grant by that text, so such a row
/// could be neither lowered nor removed, and its removal said "no grant" while it went on
/// granting.
fn read_target(stored: &str) -> Option<Target> {
    Target::parse(stored)
        .ok()
        .filter(|target| target.to_string() == stored)
}

/// What [`Store::add_grant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantChange {
    /// A grant on a target the user had none on (audited as `grant.added`).
    Added,
    /// The earlier grant's level (as stored) was replaced (audited as `grant.changed`, with
    /// both levels: a write grant lowered to read is a change someone must be able to find).
    Changed { from: String },
    /// The user had that level there already: nothing written, nothing audited.
    Unchanged,
}

impl Store {
    /// Give `slug` `level` on `target`, replacing any earlier grant on the same target.
    pub fn add_grant(
        &self,
        slug: &str,
        target: &Target,
        level: Level,
        actor: &Actor,
    ) -> Result<GrantChange> {
        self.write(|tx| {
            let user = require_user(tx, slug)?;
            let before: Option<String> = tx
                .query_row(
                    "SELECT level FROM grants WHERE user_id = ?1 AND target = ?2",
                    params![user.id, target.to_string()],
                    |r| r.get(0),
                )
                .optional()?;
            let change = match before {
                None => GrantChange::Added,
                Some(from) if from == level.as_str() => return Ok(GrantChange::Unchanged),
                Some(from) => GrantChange::Changed { from },
            };
            tx.execute(
                "INSERT INTO grants (user_id, target, level, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, target) DO UPDATE SET level = excluded.level",
                params![user.id, target.to_string(), level.as_str(), clock::now_ms()],
            )?;
            match &change {
                GrantChange::Changed { from } => record(
                    tx,
                    actor,
                    "grant.changed",
                    slug,
                    &format!("{target} {from} -> {level}"),
                )?,
                _ => record(tx, actor, "grant.added", slug, &format!("{target} {level}"))?,
            }
            Ok(change)
        })
    }

    /// Remove the grant of `slug` on `target`. False when there was none: nothing is written
    /// or audited (a user that is not there is an error).
    pub fn remove_grant(&self, slug: &str, target: &Target, actor: &Actor) -> Result<bool> {
        self.write(|tx| {
            let user = require_user(tx, slug)?;
            let target = target.to_string();
            let level: Option<String> = tx
                .query_row(
                    "SELECT level FROM grants WHERE user_id = ?1 AND target = ?2",
                    params![user.id, target],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(level) = level else {
                return Ok(false);
            };
            tx.execute(
                "DELETE FROM grants WHERE user_id = ?1 AND target = ?2",
                params![user.id, target],
            )?;
            record(
                tx,
                actor,
                "grant.removed",
                slug,
                &format!("{target} {level}"),
            )?;
            Ok(true)
        })
    }

    /// Grants of one user, or of everyone.
    pub fn grants(&self, slug: Option<&str>) -> Result<Vec<Grant>> {
        self.with_conn(|c| {
            if let Some(slug) = slug {
                require_user(c, slug)?;
            }
            let mut stmt = c.prepare_cached(
                "SELECT u.slug, g.target, g.level, g.created_at FROM grants g
                 JOIN users u ON u.id = g.user_id
                 WHERE ?1 IS NULL OR u.slug = ?1 ORDER BY u.slug, g.target",
            )?;
            let rows = stmt.query_map([slug], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (user, target, level, created_at) = row?;
                // Shown as the policy reads it: a row whose level or target does not parse
                // grants nothing (see `grants_of`).
                let known = level
                    .parse::<Level>()
                    .ok()
                    .filter(|_| read_target(&target).is_some());
                out.push(Grant {
                    user,
                    target,
                    level: known,
                    unknown_level: known.is_none().then_some(level),
                    created_at,
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{actor, edit_by_hand, personal_token, temp_store};
    use super::*;
    use crate::store::Role;

    /// A grant given again is no change (not audited); one whose level changes is audited
    /// with the level it had.
    #[test]
    fn a_grant_given_again_or_changed_is_audited_as_what_it_is() {
        let (_d, store) = temp_store();
        store.add_user("carol", "h", Role::User, &actor()).unwrap();
        let team = Target::parse("team").unwrap();
        let add = |level| store.add_grant("carol", &team, level, &actor()).unwrap();
        assert_eq!(add(Level::Write), GrantChange::Added);
        assert_eq!(add(Level::Write), GrantChange::Unchanged);
        assert_eq!(
            add(Level::Read),
            GrantChange::Changed {
                from: "write".into()
            }
        );
        assert_eq!(add(Level::Read), GrantChange::Unchanged);
        let events: Vec<(String, String)> = store
            .audit_events(None, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.action.starts_with("grant."))
            .map(|e| (e.action, e.detail))
            .collect();
        assert_eq!(
            events,
            vec![
                ("grant.added".to_string(), "team write".to_string()),
                (
                    "grant.changed".to_string(),
                    "team write -> read".to_string()
                ),
            ]
        );
        assert_eq!(
            store.grants(Some("carol")).unwrap()[0].level,
            Some(Level::Read)
        );
    }

    /// A level edited by hand into one gitgate does not know is listed as granting nothing,
    /// which is what the policy makes of it; not as `read`.
    #[test]
    fn an_unknown_level_is_listed_as_granting_nothing() {
        let (d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let team = Target::parse("team").unwrap();
        store
            .add_grant("alice", &team, Level::Write, &actor())
            .unwrap();
        assert_eq!(
            store.grants(Some("alice")).unwrap()[0].level,
            Some(Level::Write)
        );
        edit_by_hand(
            &d,
            "PRAGMA ignore_check_constraints = ON; UPDATE grants SET level = 'owner';",
        );
        let listed = &store.grants(Some("alice")).unwrap()[0];
        assert_eq!(listed.level, None);
        assert_eq!(listed.unknown_level.as_deref(), Some("owner"));
        let conn = rusqlite::Connection::open(d.path().join("t.db")).unwrap();
        let id: i64 = conn
            .query_row("SELECT id FROM users WHERE slug = 'alice'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(grants_of(&conn, id).unwrap().is_empty());
        // A target that no longer parses grants nothing either, whatever its level.
        conn.execute_batch("UPDATE grants SET level = 'write', target = 'team/../x'")
            .unwrap();
        let listed = &store.grants(Some("alice")).unwrap()[0];
        assert_eq!(listed.level, None);
        assert!(grants_of(&conn, id).unwrap().is_empty());
    }

    /// A target edited by hand into another spelling of a repository (`team/app.git`, which
    /// reads as `team/app`) grants nothing, and is listed so: `grant remove` and `grant add`
    /// find a grant by its target as gitgate writes it (`team/app`), so this row could be
    /// neither removed nor lowered — the removal found "no grant" (exit 0) and the row went on
    /// granting write.
    #[test]
    fn a_target_not_as_gitgate_writes_it_grants_nothing() {
        let (d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let app = Target::parse("team/app").unwrap();
        store
            .add_grant("alice", &app, Level::Write, &actor())
            .unwrap();
        store
            .insert_token(&personal_token("aaaaaaaaaaaa", "a", "alice"), &actor())
            .unwrap();
        edit_by_hand(&d, "UPDATE grants SET target = 'team/app.git'");
        assert!(!store.remove_grant("alice", &app, &actor()).unwrap());
        let record = store.auth_record("aaaaaaaaaaaa").unwrap().unwrap();
        assert_eq!(
            record.owner.unwrap().grants,
            vec![],
            "a grant that grant remove cannot find still grants"
        );
        let listed = &store.grants(Some("alice")).unwrap()[0];
        assert_eq!(
            (listed.target.as_str(), listed.level),
            ("team/app.git", None)
        );
    }

    /// The grants of a user that is not there are an error, not an empty list that would read
    /// as "this user has no access".
    #[test]
    fn the_grants_of_an_unknown_user_are_not_an_empty_list() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        assert!(store.grants(Some("alice")).unwrap().is_empty());
        assert!(matches!(
            store.grants(Some("ghost")),
            Err(crate::store::StoreError::NotFound(m)) if m == "no user 'ghost'"
        ));
    }

    /// The grants the policy weighs for a personal token are its owner's alone: the
    /// authorization read (`auth_record`) must hand no user another's grants, and a user
    /// without any gets none.
    #[test]
    fn a_tokens_record_carries_its_owners_grants_and_no_one_elses() {
        let (_d, store) = temp_store();
        let team = Target::parse("team").unwrap();
        let other = Target::parse("other/app").unwrap();
        for user in ["alice", "bob", "carol"] {
            store.add_user(user, "h", Role::User, &actor()).unwrap();
        }
        store
            .add_grant("alice", &team, Level::Write, &actor())
            .unwrap();
        store
            .add_grant("bob", &other, Level::Read, &actor())
            .unwrap();
        for (id, name, owner, expected) in [
            (
                "aaaaaaaaaaaa",
                "a",
                "alice",
                vec![(team.clone(), Level::Write)],
            ),
            (
                "bbbbbbbbbbbb",
                "b",
                "bob",
                vec![(other.clone(), Level::Read)],
            ),
            ("cccccccccccc", "c", "carol", vec![]),
        ] {
            store
                .insert_token(&personal_token(id, name, owner), &actor())
                .unwrap();
            let record = store.auth_record(id).unwrap().unwrap();
            assert_eq!(record.owner.unwrap().grants, expected, "{owner}");
        }
    }
}
