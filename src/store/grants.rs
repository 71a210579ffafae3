//! Grants: a user's permission on a project (`team`) or one repository (`team/app`).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::audit::record;
use super::users::require_user;
use super::{Actor, Result, Store, StoreError};
use crate::clock;
use crate::permission::Level;
use crate::policy::Target;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub user: String,
    pub target: String,
    pub level: Level,
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
        if let (Ok(t), Ok(l)) = (Target::parse(&target), level.parse::<Level>()) {
            out.push((t, l));
        }
    }
    Ok(out)
}

impl Store {
    /// Give `slug` `level` on `target`, replacing any earlier grant on the same target.
    pub fn add_grant(
        &self,
        slug: &str,
        target: &Target,
        level: Level,
        actor: &Actor,
    ) -> Result<()> {
        self.write(|tx| {
            let user = require_user(tx, slug)?;
            tx.execute(
                "INSERT INTO grants (user_id, target, level, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, target) DO UPDATE SET level = excluded.level",
                params![user.id, target.to_string(), level.as_str(), clock::now_ms()],
            )?;
            record(tx, actor, "grant.added", slug, &format!("{target} {level}"))
        })
    }

    pub fn remove_grant(&self, slug: &str, target: &Target, actor: &Actor) -> Result<()> {
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
                return Err(StoreError::NotFound(format!(
                    "user '{slug}' has no grant on {target}"
                )));
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
            )
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
                out.push(Grant {
                    user,
                    target,
                    level: level.parse().unwrap_or(Level::Read),
                    created_at,
                });
            }
            Ok(out)
        })
    }
}
