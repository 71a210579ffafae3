//! Audit events: who changed what, when, from where. Written in the same transaction as the change
//! they describe; never contain secrets (callers pass names and ids, not tokens or passwords).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Actor, Result, Store, StoreError};
use crate::clock;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub id: i64,
    /// Epoch milliseconds.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub source: String,
    /// How many times this happened: more than 1 when repeats were folded into one row.
    pub count: i64,
    /// Epoch milliseconds of the last repeat (when `count` > 1; `null` in JSON otherwise, so
    /// that every event has the same fields).
    pub last_at: Option<i64>,
    /// The `request_id` of the request it happened in, as its log lines have it (the first
    /// one's, for repeats folded into one row): a failed authentication, a block made by a
    /// request, a change made through the REST API. `null` for an event no request of
    /// gitgate's made (the command line, gitgate's own pruning, a store from before schema
    /// version 6).
    pub request_id: Option<String>,
}

/// Which events a listing shows: all of them by default, or those in a span of time, of an
/// action (or a family of actions), by an actor, about a target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// At or after this moment (epoch ms).
    pub since: Option<i64>,
    /// Before this moment (epoch ms).
    pub until: Option<i64>,
    /// One action (`token.revoked`), or a family of them (`token`: every `token.*`).
    pub action: Option<String>,
    /// Exactly this actor (`cli:root`, `alice`).
    pub actor: Option<String>,
    /// Exactly this target (a user's name, a token's id).
    pub target: Option<String>,
    /// One user's trail: events about the user (their name, `user:NAME` of a rate-limit
    /// change) or one of their tokens (revoked ones too), and events by them.
    pub user: Option<String>,
}

impl AuditFilter {
    /// Events at or after `since` (epoch ms), or all.
    pub fn since(since: Option<i64>) -> AuditFilter {
        AuditFilter {
            since,
            ..AuditFilter::default()
        }
    }
}

/// The conditions of an [`AuditFilter`] on parameters ?1 (since), ?5 (until), ?6 (action),
/// ?7 (actor) and ?8 (target); a parameter left NULL lets every event through. A family is
/// matched by its prefix and a dot, not `LIKE` (whose `_` would match any character in
/// `user.role_changed`). The span is on `at`, the index the listing walks.
const FILTERED: &str = "at >= ?1 AND at < ?5
    AND (?6 IS NULL OR action = ?6 OR substr(action, 1, length(?6) + 1) = ?6 || '.')
    AND (?7 IS NULL OR actor = ?7) AND (?8 IS NULL OR target = ?8)
    AND (?9 IS NULL OR target = ?9 OR target = 'user:' || ?9 OR actor = ?9
         OR target IN (SELECT t.id FROM tokens t JOIN users u ON u.id = t.owner_id
                       WHERE u.slug = ?9))";

/// How far from a token's `revoked_at` its `token.revoked` event is looked for: both are read
/// from the clock in one transaction, a moment apart; a minute leaves room for a slow commit.
const REVOKED_EVENT_SLACK_MS: i64 = 60_000;

/// The newest `token.revoked` event of token ?1 between ?2 and ?3.
const WHO_REVOKED: &str = "SELECT actor, source FROM audit_events \
     WHERE at BETWEEN ?2 AND ?3 AND action = 'token.revoked' AND target = ?1 \
     ORDER BY at DESC, id DESC LIMIT 1";

/// A place in the audit listing, which goes by time (`at`), then by id among events of the
/// same millisecond. Not by id alone: failed authentications reach the table in the writer's
/// batches, up to a second after events recorded in between, with the time they happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditCursor {
    pub at: i64,
    pub id: i64,
}

impl AuditCursor {
    /// Before every event.
    pub const START: AuditCursor = AuditCursor {
        at: i64::MIN,
        id: i64::MIN,
    };

    /// Just after `event`.
    pub fn after(event: &AuditEvent) -> AuditCursor {
        AuditCursor {
            at: event.at,
            id: event.id,
        }
    }
}

/// Append one event inside the caller's transaction; its log line is written once the
/// transaction has committed ([`after_transaction`]), so that the log never tells of a change
/// that was rolled back.
pub(super) fn record(
    conn: &rusqlite::Connection,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<()> {
    if let Some(was_admin) = actor.logged_in_as_admin {
        caller_still_stands(conn, &actor.name, was_admin)?;
    }
    let at = clock::now_ms();
    insert_repeated_in(conn, actor, action, target, detail, at, None, actor.request)?;
    UNCOMMITTED.with(|u| {
        u.borrow_mut().push(Uncommitted {
            at,
            actor: actor.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_owned(),
        })
    });
    Ok(())
}

/// Whether the account `slug`, logged in for the call that makes this change, may still make
/// it: active, and an administrator if it was one at login. Read in the change's own
/// transaction, so a disable or demotion committed while the call was under way (after its
/// password check) refuses the change rather than letting it in a few milliseconds late.
fn caller_still_stands(conn: &rusqlite::Connection, slug: &str, was_admin: bool) -> Result<()> {
    let account: Option<(String, bool)> = conn
        .query_row(
            "SELECT role, active FROM users WHERE slug = ?1",
            [slug],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
        )
        .optional()?;
    let why = match account {
        Some((role, true)) if !was_admin || role == "admin" => return Ok(()),
        Some((_, true)) => "stopped being an administrator",
        Some((_, false)) => "was disabled",
        None => "was deleted",
    };
    Err(StoreError::Refused(format!(
        "the account '{slug}' {why} while this call was under way: nothing was changed"
    )))
}

/// An event recorded in a transaction still open on this thread.
struct Uncommitted {
    /// When it was recorded: the store's `at`, before the commit that logs it.
    at: i64,
    actor: Actor,
    action: String,
    target: String,
    detail: String,
}

thread_local! {
    /// `Store::write` runs its transaction on the calling thread, start to end.
    static UNCOMMITTED: std::cell::RefCell<Vec<Uncommitted>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The transaction of this thread has ended: log its events if it committed, forget them if
/// not.
pub(super) fn after_transaction(committed: bool) {
    let events = UNCOMMITTED.with(|u| std::mem::take(&mut *u.borrow_mut()));
    if committed {
        for e in events {
            let request = e.actor.request;
            log_event_in(
                e.at, &e.actor, &e.action, &e.target, &e.detail, None, request,
            );
        }
    }
}

/// Repeats of one event seen `count` times, first at `at` and last at `last`.
pub(super) struct Repeats {
    pub count: u64,
    pub last: i64,
}

/// The log line of an audit event the store could not take: the event in full, so that the
/// log keeps what the audit table lost — the time it happened (`at`, its first's for
/// repeats, as its row and its `audit` line have it: the line's own time is the give-up's,
/// up to seconds later), and the request it happened in (`request_id`, as its row would have
/// had it), else the line of a lost `auth.failed` could not be joined to its request's.
#[allow(clippy::too_many_arguments)]
pub(super) fn log_lost_event(
    error: &super::StoreError,
    at: i64,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    count: u64,
    request: Option<crate::request_id::RequestId>,
) {
    tracing::warn!(
        error = %crate::log_value::LogText(&error.to_string()),
        actor = %crate::log_value::LogValue(&actor.name),
        source = %crate::log_value::LogValue(&actor.source),
        action,
        target = target,
        detail,
        count,
        at,
        request_id = request.map(tracing::field::display),
        "could not write an audit event to the store; it is only logged"
    );
}

/// An event of a row selected as `id, at, actor, action, target, detail, source, count,
/// last_at, request_id`.
/// Column `i` of an audit row as a whole number: a time edited by hand into a real number
/// (`julianday('now')`) is placed by its value, as the listing's filters place it, rather than
/// failing the whole listing. Rounded up: the next page starts after the last event's time, and
/// a time rounded down would find the same event after it again, without end. `None` for text,
/// a blob or NULL.
fn number_in(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<i64>> {
    use rusqlite::types::Value;
    Ok(match r.get::<_, Value>(i)? {
        Value::Integer(n) => Some(n),
        Value::Real(x) => Some(x.ceil() as i64),
        _ => None,
    })
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEvent> {
    // A repeat's time or count that cannot be read is left out of that one event.
    let number = |i: usize| number_in(r, i);
    Ok(AuditEvent {
        id: r.get(0)?,
        at: match number(1)? {
            Some(at) => at,
            None => r.get(1)?,
        },
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        detail: r.get(5)?,
        source: r.get(6)?,
        count: number(7)?.unwrap_or(1),
        last_at: number(8)?,
        // Text as gitgate writes it; anything else (edited by hand) is left out.
        request_id: r.get::<_, Option<String>>(9).ok().flatten(),
    })
}

/// The log line of an audit event. Its `at` is the event's own time, as the store and `gitgate
/// audit --json` have it (epoch milliseconds): the line itself is written later — after the
/// commit, or with the batch of failures — so a timeline built from the log alone would put a
/// revocation after the refusal of the token it revoked.
pub(super) fn log_event(
    at: i64,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    repeats: Option<&Repeats>,
) {
    log_event_in(at, actor, action, target, detail, repeats, None);
}

/// [`log_event`] of an event a request made: with its `request_id`, as the request's own
/// lines have it (the first's, for repeats).
pub(super) fn log_event_in(
    at: i64,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    repeats: Option<&Repeats>,
    request: Option<crate::request_id::RequestId>,
) {
    let count = repeats.map_or(1, |r| r.count.max(1));
    tracing::info!(
        target: "gitgate::audit",
        actor = %crate::log_value::LogValue(&actor.name),
        source = %crate::log_value::LogValue(&actor.source),
        action,
        target = target,
        detail,
        count,
        at,
        request_id = request.map(tracing::field::display),
        "audit"
    );
}

/// The families of audit actions: `gitgate audit --action` names one of them, or one action
/// of one.
pub const FAMILIES: [&str; 7] = [
    "audit",
    "auth",
    "grant",
    "policy",
    "ratelimit",
    "token",
    "user",
];

/// Every action gitgate records, by family: what `gitgate audit --action` may name (a typo
/// would otherwise list nothing, silently). A new action is added here, or
/// `every_action_written_is_one_audit_can_ask_for` fails.
pub const ACTIONS: &[&str] = &[
    "audit.dropped",
    "audit.pruned",
    "auth.failed",
    "auth.throttled",
    "grant.added",
    "grant.changed",
    "grant.removed",
    "policy.changed",
    "ratelimit.cleared",
    "ratelimit.set",
    "token.created",
    "token.edited",
    "token.revoked",
    "token.rotated",
    "token.rotation_undone",
    "user.added",
    "user.disabled",
    "user.enabled",
    "user.locked",
    "user.password_changed",
    "user.role_changed",
    "user.unlocked",
];

/// Append one event that happened at `at` (and, with `repeats`, again until `repeats.last`),
/// without logging it: callers log once the event is written (the batch writer after its
/// commit).
pub(super) fn insert_repeated(
    conn: &rusqlite::Connection,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    at: i64,
    repeats: Option<&Repeats>,
) -> Result<()> {
    insert_repeated_in(conn, actor, action, target, detail, at, repeats, None)
}

/// [`insert_repeated`] of an event a request made (`request`: its id, which joins the row to
/// the request's log lines).
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_repeated_in(
    conn: &rusqlite::Connection,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    at: i64,
    repeats: Option<&Repeats>,
    request: Option<crate::request_id::RequestId>,
) -> Result<()> {
    let (count, last_at) = match repeats {
        Some(r) if r.count > 1 => (r.count as i64, Some(r.last)),
        _ => (1, None),
    };
    conn.prepare_cached(
        "INSERT INTO audit_events
           (at, actor, action, target, detail, source, count, last_at, request_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        at,
        actor.name,
        action,
        target,
        detail,
        actor.source,
        count,
        last_at,
        request.map(|id| id.to_string())
    ])?;
    Ok(())
}

/// One page of the listing (see [`Store::audit_page`]).
fn page_sql() -> String {
    format!(
        "SELECT * FROM (
           SELECT * FROM (
             SELECT id, at, actor, action, target, detail, source, count, last_at, request_id
             FROM audit_events WHERE at = ?2 AND id > ?3 AND {FILTERED}
             ORDER BY id LIMIT ?4)
           UNION ALL
           SELECT * FROM (
             SELECT id, at, actor, action, target, detail, source, count, last_at, request_id
             FROM audit_events WHERE at > ?2 AND {FILTERED}
             ORDER BY at, id LIMIT ?4))
         ORDER BY at, id LIMIT ?4"
    )
}

impl Store {
    /// Record an event that is not part of a change (e.g. a failed authentication).
    pub fn record_event(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<()> {
        self.write(|tx| record(tx, actor, action, target, detail))?;
        if super::writer::FAILURE_ACTIONS.contains(&action) {
            self.inner.batch_writer.failure_written(&self.inner);
        }
        Ok(())
    }

    /// [`Store::record_event`] for a caller that cannot fail on it (a refusal being answered):
    /// an event the store cannot take is still logged, with why it is not in the store.
    pub fn record_event_or_log(&self, actor: &Actor, action: &str, target: &str, detail: &str) {
        let at = clock::now_ms();
        if let Err(e) = self.record_event(actor, action, target, detail) {
            log_lost_event(&e, at, actor, action, target, detail, 1, actor.request);
            crate::metrics::METRICS.side_effect_failure();
        }
    }

    /// Record an event soon, batched with others by a background writer (see `writer.rs`):
    /// for events on the request path, such as failed authentications, which must not cost a
    /// commit each. Never blocks; a full queue is summarised in the log instead.
    ///
    /// Borrowed, because most such events repeat one already waiting (one bad token tried over
    /// and over): a repeat is counted without a copy of anything.
    pub fn record_event_later(
        &self,
        actor: (&str, &str),
        action: &'static str,
        target: &str,
        detail: &str,
    ) {
        self.record_request_event_later(actor, action, target, detail, None);
    }

    /// [`Store::record_event_later`] for an event `request` made: the row keeps its id (the
    /// first's, for repeats folded into it).
    pub fn record_request_event_later(
        &self,
        actor: (&str, &str),
        action: &'static str,
        target: &str,
        detail: &str,
        request: Option<crate::request_id::RequestId>,
    ) {
        let (name, source) = actor;
        self.inner.batch_writer.send(
            &self.inner,
            super::writer::EventRef {
                at: clock::now_ms(),
                name,
                source,
                action,
                target,
                detail,
                request,
            },
        );
    }

    /// Keep at most `cap` rows of failed authentications naming a token that exists, and `cap`
    /// of the others, in the audit log, deleting the oldest beyond it as more come (0: keep
    /// them all); see `writer`. Set by `serve` from
    /// `[auth_failures] keep_in_audit`.
    pub fn keep_failure_events(&self, cap: u64) {
        self.inner
            .batch_writer
            .keep_failure_events(&self.inner, cap);
    }

    /// Start the thread that writes audit events and last uses now, rather than at the first
    /// one: `serve` refuses to start without it.
    pub fn start_writer(&self) -> std::result::Result<(), String> {
        self.inner.batch_writer.start(&self.inner)
    }

    /// Write the audit events and last uses still waiting for the writer now (at shutdown).
    pub fn flush_pending_writes(&self) -> bool {
        self.inner.batch_writer.flush(self)
    }

    /// How many audit events have a time no listing can place: not an integer (text, NULL,
    /// changed by hand), or the largest one, which no `--until` is before. `gitgate audit`
    /// says so rather than leave them out without a word.
    pub fn unplaceable_audit_events(&self) -> Result<i64> {
        self.with_conn(|c| {
            Ok(c.query_row(
                // Both ends of the `at` index: NULLs sort first, and text and blobs after
                // every number, so no row is read in between.
                "SELECT (SELECT count(*) FROM audit_events WHERE at IS NULL) \
                 + (SELECT count(*) FROM audit_events WHERE at >= 9223372036854775807)",
                [],
                |r| r.get(0),
            )?)
        })
    }

    /// Who revoked token `id` at `revoked_at` (its row's time), and from where: the actor and
    /// source of its newest `token.revoked` event of that moment, if the audit still has it.
    /// Looked for within `REVOKED_EVENT_SLACK_MS` of `revoked_at` — the event is written in
    /// the revocation's own transaction, with the same clock — on the `at` index: the table
    /// has no index on its target, and a token revoked a year ago was otherwise found by
    /// reading every event since (`token show` took 20 s on a store of ten million events).
    pub fn who_revoked(&self, id: &str, revoked_at: i64) -> Result<Option<(String, String)>> {
        use rusqlite::OptionalExtension;
        self.with_conn(|c| {
            Ok(c.prepare_cached(WHO_REVOKED)?
                .query_row(
                    params![
                        id,
                        revoked_at.saturating_sub(REVOKED_EVENT_SLACK_MS),
                        revoked_at.saturating_add(REVOKED_EVENT_SLACK_MS)
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
        })
    }

    /// The newest audit event's id (0 when there is none): where [`Store::command_events_after`]
    /// starts, so that a server logs only what the command line does while it runs.
    pub fn newest_audit_id(&self) -> Result<i64> {
        self.with_conn(|c| {
            Ok(
                c.query_row("SELECT coalesce(max(id), 0) FROM audit_events", [], |r| {
                    r.get(0)
                })?,
            )
        })
    }

    /// The events of command-line changes (actor `cli:...`) written after the event `after`
    /// and up to `upto` (from [`Store::newest_audit_id`], read first: the next look starts
    /// there, so that the rows between, a flood of failed logins, are read once), by id, at
    /// most `limit`. Ids grow with each commit (SQLite gives a new row the largest id plus one,
    /// and writers commit one at a time; the clean-up removes the oldest rows only).
    pub fn command_events_after(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at, actor, action, target, detail, source, count, last_at, request_id
                 FROM audit_events WHERE id > ?1 AND id <= ?2 AND actor LIKE 'cli:%'
                 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![after, upto, limit as i64], event_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Events at or after `since` (epoch ms), oldest first, at most `limit`.
    pub fn audit_events(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditEvent>> {
        self.audit_page(&AuditFilter::since(since), AuditCursor::START, limit)
    }

    /// The place just before the newest `n` events that `filter` lets through, for
    /// [`Store::audit_page`] to start from; [`AuditCursor::START`] when there are no more than
    /// `n`.
    pub fn audit_before_newest(&self, filter: &AuditFilter, n: usize) -> Result<AuditCursor> {
        self.with_conn(|c| {
            let place = c
                .query_row(
                    &format!(
                        "SELECT at, id FROM audit_events WHERE {FILTERED}
                         ORDER BY at DESC, id DESC LIMIT 1 OFFSET ?2"
                    ),
                    params![
                        filter.since.unwrap_or(i64::MIN),
                        i64::try_from(n).unwrap_or(i64::MAX),
                        None::<i64>,
                        None::<i64>,
                        filter.until.unwrap_or(i64::MAX),
                        filter.action,
                        filter.actor,
                        filter.target,
                        filter.user,
                    ],
                    |r| {
                        Ok(AuditCursor {
                            at: match number_in(r, 0)? {
                                Some(at) => at,
                                None => r.get(0)?,
                            },
                            id: r.get(1)?,
                        })
                    },
                )
                .optional()?;
            Ok(place.unwrap_or(AuditCursor::START))
        })
    }

    /// Events that `filter` lets through past `after`, oldest first (by time, then id),
    /// at most `limit`: one page of a listing that may be far longer than memory should hold.
    /// Each page is its own read, so a listing piped into a slow reader holds no snapshot of
    /// the store. The index on `at` (which holds the id too) gives the order, and each page
    /// starts where the cursor is, also inside a run of events of one millisecond (with
    /// `(at, id) > cursor` as a row value SQLite started every page at `since`: a listing of a
    /// million events took 50 s instead of 2.8; and with `at >= cursor` alone, 200,000 events
    /// of one millisecond took 2.9 s, 600,000 took 21 s).
    pub fn audit_page(
        &self,
        filter: &AuditFilter,
        after: AuditCursor,
        limit: usize,
    ) -> Result<Vec<AuditEvent>> {
        // A listing `--since` a moment starts there, and the span's start is the cursor's time:
        // with two lower bounds on `at` SQLite walks the index from only one of them, and
        // from the cursor's `START` it read every older event first (`--since` today took 4.7 s
        // for three events on a store of ten million).
        let after = match filter.since {
            Some(since) if after.at < since => AuditCursor {
                at: since,
                id: i64::MIN,
            },
            _ => after,
        };
        self.with_conn(|c| {
            // The rest of the cursor's millisecond, then what comes after it: each part one
            // index range that starts where the page does.
            let mut stmt = c.prepare_cached(&page_sql())?;
            let rows = stmt.query_map(
                params![
                    after.at,
                    after.at,
                    after.id,
                    limit as i64,
                    filter.until.unwrap_or(i64::MAX),
                    filter.action,
                    filter.actor,
                    filter.target,
                    filter.user,
                ],
                event_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{actor, logged, temp_store};

    /// A REST call's event the store cannot take (a wrong password, its store refusing
    /// inserts) is logged with the call's request id, as its row would have had it.
    #[test]
    fn a_lost_event_of_a_rest_call_is_logged_with_its_request_id() {
        let (_dir, store) = temp_store();
        super::super::test_support::refuse_audit_inserts(store.path());
        let id = crate::request_id::RequestId::next();
        let caller = actor().in_request(id);
        let log = logged(|| store.record_event_or_log(&caller, "auth.failed", "bob", "REST API"));
        let lost = log
            .lines()
            .find(|l| l.contains("it is only logged"))
            .unwrap_or_else(|| panic!("the lost event is not in the log: {log}"));
        assert!(lost.contains(&format!("request_id={id}")), "{lost}");
    }
    use super::*;
    use crate::store::StoreError;

    /// The command line's events are found past a place and up to another, the others' rows
    /// between them skipped.
    #[test]
    fn command_events_are_read_between_two_places() {
        let (_d, store) = temp_store();
        let start = store.newest_audit_id().unwrap();
        store
            .add_user("alice", "x", crate::store::Role::User, &Actor::cli())
            .unwrap();
        store
            .add_user("bob", "x", crate::store::Role::User, &actor())
            .unwrap();
        store
            .add_user("carol", "x", crate::store::Role::User, &Actor::cli())
            .unwrap();
        let newest = store.newest_audit_id().unwrap();
        assert_eq!(newest, start + 3);
        let targets = |after, upto| -> Vec<String> {
            store
                .command_events_after(after, upto, 10)
                .unwrap()
                .into_iter()
                .map(|e| e.target)
                .collect()
        };
        assert_eq!(targets(start, newest), ["alice", "carol"]);
        assert_eq!(targets(start, newest - 1), ["alice"]);
        assert_eq!(targets(start + 1, newest), ["carol"]);
        assert!(targets(newest, newest).is_empty());
        assert_eq!(
            store.command_events_after(start, newest, 1).unwrap().len(),
            1
        );
    }

    #[test]
    fn the_event_of_a_change_rolled_back_is_not_logged() {
        let (_dir, store) = temp_store();
        let log = logged(|| {
            let rolled_back: Result<()> = store.write(|tx| {
                record(tx, &actor(), "test.rolled_back", "t", "")?;
                Err(StoreError::Invalid("no".into()))
            });
            assert!(rolled_back.is_err());
            store
                .record_event(&actor(), "test.committed", "t", "")
                .unwrap();
        });
        assert!(log.contains("test.committed"), "{log}");
        assert!(!log.contains("test.rolled_back"), "{log}");
    }

    /// A REST call's change checks its caller in its own transaction: an account disabled,
    /// demoted or deleted after the call's password check changes nothing.
    #[test]
    fn a_change_by_an_account_that_lost_its_standing_during_the_call_is_refused() {
        use super::super::test_support::personal_token;
        use crate::store::Role;
        let (_dir, store) = temp_store();
        store.add_user("root", "x", Role::Admin, &actor()).unwrap();
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        let by = |slug: &str, admin: bool| Actor {
            name: slug.into(),
            source: "127.0.0.1".into(),
            logged_in_as_admin: Some(admin),
            request: None,
        };
        let tokens = |store: &Store| store.tokens(None).unwrap().len();
        store
            .insert_token(&personal_token("t1", "one", "alice"), &by("alice", false))
            .unwrap();
        store
            .insert_token(&personal_token("t2", "two", "alice"), &by("root", true))
            .unwrap();
        let events = store.audit_events(None, 100).unwrap().len();

        store
            .write(|tx| {
                tx.execute("UPDATE users SET role = 'user' WHERE slug = 'root'", [])?;
                Ok(())
            })
            .unwrap();
        let e = store
            .insert_token(&personal_token("t3", "three", "alice"), &by("root", true))
            .unwrap_err();
        assert!(matches!(e, StoreError::Refused(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the account 'root' stopped being an administrator while this call was under way: \
             nothing was changed"
        );
        // Nor any other change it would have made as an administrator: a revocation, an edit,
        // a rotation of alice's token, a policy change.
        let refused = |e: StoreError| {
            assert!(matches!(e, StoreError::Refused(_)), "{e:?}");
            assert!(
                e.to_string().contains("stopped being an administrator"),
                "{e}"
            );
        };
        refused(store.revoke_token("t1", &by("root", true)).unwrap_err());
        let rename = crate::store::TokenEdit {
            name: Some("renamed".into()),
            permissions: None,
            allowed_networks: None,
        };
        refused(
            store
                .edit_token("t1", &rename, &by("root", true))
                .unwrap_err(),
        );
        refused(
            store
                .rotate_token("t1", [7; 32], None, &|_| Ok(()), &by("root", true))
                .unwrap_err(),
        );
        refused(
            store
                .set_settings(
                    &[("policy.expiry_required", "yes".into())],
                    "policy.changed",
                    "expiry required",
                    &by("root", true),
                )
                .unwrap_err(),
        );
        let t1 = store.token("t1").unwrap().unwrap();
        assert!(t1.revoked_at.is_none() && t1.name == "one");
        assert_eq!(store.setting("policy.expiry_required").unwrap(), None);
        // Logged in as what it is now, it still may.
        store
            .insert_token(&personal_token("t3", "three", "root"), &by("root", false))
            .unwrap();

        store.set_user_active("alice", false, &actor()).unwrap();
        let e = store
            .insert_token(&personal_token("t4", "four", "root"), &by("alice", false))
            .unwrap_err();
        assert!(e.to_string().contains("'alice' was disabled"), "{e}");
        let e = store
            .insert_token(&personal_token("t4", "four", "root"), &by("nobody", false))
            .unwrap_err();
        assert!(e.to_string().contains("'nobody' was deleted"), "{e}");

        // Nothing of the refused changes is there: not the token, not its event.
        assert_eq!(tokens(&store), 3);
        assert!(store.token("t4").unwrap().is_none());
        // t3, and alice's disabling.
        assert_eq!(store.audit_events(None, 100).unwrap().len(), events + 2);
    }

    /// Pages through runs of events of one millisecond (and ids out of time order), with and
    /// without `since`: each event once, in order.
    #[test]
    fn pages_list_each_event_once_in_order_through_runs_of_one_millisecond() {
        let (_dir, store) = temp_store();
        store
            .with_conn(|c| {
                // 700 at 5 ms, then 10 at 3 ms stored later, then 400 at 9 ms.
                c.execute_batch(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1110)
                     INSERT INTO audit_events (at, actor, action, target, detail, source)
                     SELECT CASE WHEN i <= 700 THEN 5 WHEN i <= 710 THEN 3 ELSE 9 END,
                            'x', 'auth.failed', i, '', '' FROM n",
                )?;
                Ok(())
            })
            .unwrap();
        for (since, expected) in [(None, 1110), (Some(4), 1100), (Some(9), 400)] {
            let mut seen: Vec<(i64, i64)> = Vec::new();
            let mut cursor = AuditCursor::START;
            loop {
                let page = store
                    .audit_page(&AuditFilter::since(since), cursor, 64)
                    .unwrap();
                let Some(last) = page.last() else { break };
                cursor = AuditCursor::after(last);
                seen.extend(page.iter().map(|e| (e.at, e.id)));
            }
            assert_eq!(seen.len(), expected, "{since:?}");
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "{since:?}: out of order"
            );
        }
    }

    /// A failed authentication reaches the table after events recorded later; the listing,
    /// its pages and its newest-N start all go by when each happened.
    #[test]
    fn a_filter_lists_the_events_of_a_span_an_action_an_actor_and_a_target() {
        let (_dir, store) = temp_store();
        let other = Actor {
            name: "bob".into(),
            ..actor()
        };
        for (who, action, target) in [
            (&actor(), "user.added", "alice"),
            (&actor(), "user.role_changed", "alice"),
            (&other, "token.created", "abc"),
            (&actor(), "token.revoked", "abc"),
            (&other, "user.disabled", "alice"),
            // `_` and `%` are not wildcards: `user_x` is no family of `user.*` events.
            (&actor(), "user_x.added", "alice"),
        ] {
            store.record_event(who, action, target, "").unwrap();
        }
        let listed = |filter: AuditFilter| {
            let start = store.audit_before_newest(&filter, 100).unwrap();
            let all = store.audit_page(&filter, start, 100).unwrap();
            // The newest one alone, through the other query.
            let start = store.audit_before_newest(&filter, 1).unwrap();
            let newest = store.audit_page(&filter, start, 100).unwrap();
            assert_eq!(
                newest.iter().map(|e| e.id).collect::<Vec<_>>(),
                all.last().map(|e| e.id).into_iter().collect::<Vec<_>>()
            );
            all.into_iter()
                .map(|e| format!("{} {} {}", e.actor, e.action, e.target))
                .collect::<Vec<_>>()
        };
        let family = |a: &str| AuditFilter {
            action: Some(a.into()),
            ..AuditFilter::default()
        };
        assert_eq!(
            listed(family("user")),
            [
                "test user.added alice",
                "test user.role_changed alice",
                "bob user.disabled alice"
            ]
        );
        assert_eq!(
            listed(family("user.role_changed")),
            ["test user.role_changed alice"]
        );
        assert_eq!(listed(family("user.role")), Vec::<String>::new());
        assert_eq!(listed(family("token.")), Vec::<String>::new());
        assert_eq!(
            listed(AuditFilter {
                actor: Some("bob".into()),
                ..AuditFilter::default()
            }),
            ["bob token.created abc", "bob user.disabled alice"]
        );
        assert_eq!(
            listed(AuditFilter {
                action: Some("token".into()),
                actor: Some("test".into()),
                target: Some("abc".into()),
                ..AuditFilter::default()
            }),
            ["test token.revoked abc"]
        );
        // A span: at or after its start, before its end.
        let all = store.audit_events(None, 100).unwrap();
        let third = all[2].at;
        let span = |since, until| {
            listed(AuditFilter {
                since,
                until,
                ..AuditFilter::default()
            })
            .len()
        };
        let at_or_after = all.iter().filter(|e| e.at >= third).count();
        assert_eq!(span(Some(third), None), at_or_after);
        assert_eq!(span(None, Some(third)), all.len() - at_or_after);
        assert_eq!(span(Some(third), Some(third)), 0);
        assert_eq!(span(None, None), all.len());
    }

    #[test]
    fn events_are_listed_by_when_they_happened_not_when_they_were_stored() {
        let (_dir, store) = temp_store();
        store.record_event_later(("mallory", "10.0.0.1"), "auth.failed", "t", "");
        std::thread::sleep(std::time::Duration::from_millis(5));
        store
            .record_event(&actor(), "user.disabled", "t", "")
            .unwrap();
        assert!(store.flush_pending_writes());
        let all = store.audit_events(None, 10).unwrap();
        let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["auth.failed", "user.disabled"]);
        assert!(
            all[0].id > all[1].id,
            "stored after, listed before: {all:?}"
        );
        // One page at a time, from the start.
        let first = store
            .audit_page(&AuditFilter::default(), AuditCursor::START, 1)
            .unwrap();
        assert_eq!(first[0].action, "auth.failed");
        let second = store
            .audit_page(&AuditFilter::default(), AuditCursor::after(&first[0]), 1)
            .unwrap();
        assert_eq!(second[0].action, "user.disabled");
        assert!(store
            .audit_page(&AuditFilter::default(), AuditCursor::after(&second[0]), 1)
            .unwrap()
            .is_empty());
        // The newest one is the one that happened last.
        let start = store
            .audit_before_newest(&AuditFilter::default(), 1)
            .unwrap();
        let newest = store
            .audit_page(&AuditFilter::default(), start, 10)
            .unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].action, "user.disabled");
        assert_eq!(
            store
                .audit_before_newest(&AuditFilter::default(), 2)
                .unwrap(),
            AuditCursor::START
        );
    }

    /// Every action the source writes (a `"family.action"` literal outside the tests, settings
    /// keys and JSON paths set aside) is one of [`ACTIONS`], so `audit --action` takes it.
    #[test]
    fn every_action_written_is_one_audit_can_ask_for() {
        const NOT_ACTIONS: [&str; 3] = [
            "policy.expiry_required",
            "policy.max_expiry_days",
            "user.active",
        ];
        fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, files);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut written = std::collections::BTreeSet::new();
        for file in files {
            if file.ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for quoted in code.split('"').skip(1).step_by(2) {
                let Some((family, rest)) = quoted.split_once('.') else {
                    continue;
                };
                if FAMILIES.contains(&family)
                    && !rest.is_empty()
                    && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    && !NOT_ACTIONS.contains(&quoted)
                {
                    written.insert(quoted.to_string());
                }
            }
        }
        assert!(written.contains("token.revoked"), "{written:?}");
        for action in &written {
            assert!(
                ACTIONS.contains(&action.as_str()),
                "{action} is written but not in ACTIONS"
            );
        }
    }

    /// One user's trail (`audit --user`): the events about the user by name and as `user:NAME`
    /// (a rate-limit change), about any of their tokens, and the ones they made; nobody
    /// else's.
    #[test]
    fn a_users_trail_holds_the_events_about_them_their_tokens_and_by_them() {
        use super::super::test_support::personal_token;
        use crate::store::Role;
        let (_dir, store) = temp_store();
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        store.add_user("bob", "x", Role::User, &actor()).unwrap();
        store
            .insert_token(&personal_token("t1", "laptop", "alice"), &actor())
            .unwrap();
        store
            .insert_token(&personal_token("t2", "other", "bob"), &actor())
            .unwrap();
        let alice = Actor {
            name: "alice".into(),
            ..actor()
        };
        store
            .record_event(&actor(), "ratelimit.set", "user:alice", "")
            .unwrap();
        store
            .record_event(&alice, "policy.changed", "expiry", "")
            .unwrap();
        store
            .record_event(&actor(), "ratelimit.set", "user:bob", "")
            .unwrap();
        let trail: Vec<String> = store
            .audit_page(
                &AuditFilter {
                    user: Some("alice".into()),
                    ..AuditFilter::default()
                },
                AuditCursor::START,
                100,
            )
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {} {}", e.actor, e.action, e.target))
            .collect();
        assert_eq!(
            trail,
            [
                "test user.added alice",
                "test token.created t1",
                "test ratelimit.set user:alice",
                "alice policy.changed expiry"
            ]
        );
    }

    /// Every field of an event is read back as written: its source and detail, and for
    /// repeats folded into one row their count and last time; an event seen once has a count
    /// of 1 and no last time, whether or not it came as a repeat of one.
    #[test]
    fn an_events_fields_are_read_back_as_written() {
        let (_dir, store) = temp_store();
        let from = Actor {
            name: "mallory".into(),
            source: "10.0.0.1".into(),
            logged_in_as_admin: None,
            request: None,
        };
        store
            .write(|tx| {
                let seven = Repeats {
                    count: 7,
                    last: 2500,
                };
                let once = Repeats {
                    count: 1,
                    last: 3000,
                };
                insert_repeated(tx, &from, "auth.failed", "t", "bad", 1000, Some(&seven))?;
                insert_repeated(tx, &from, "auth.failed", "u", "", 3000, Some(&once))?;
                insert_repeated(tx, &from, "auth.failed", "v", "", 4000, None)
            })
            .unwrap();
        let all = store
            .audit_page(
                &AuditFilter {
                    action: Some("auth".into()),
                    ..AuditFilter::default()
                },
                AuditCursor::START,
                10,
            )
            .unwrap();
        let seen: Vec<_> = all
            .iter()
            .map(|e| {
                (
                    e.at,
                    e.actor.as_str(),
                    e.source.as_str(),
                    e.target.as_str(),
                    e.detail.as_str(),
                    e.count,
                    e.last_at,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1000, "mallory", "10.0.0.1", "t", "bad", 7, Some(2500)),
                (3000, "mallory", "10.0.0.1", "u", "", 1, None),
                (4000, "mallory", "10.0.0.1", "v", "", 1, None),
            ]
        );
    }

    /// Who revoked a token is the actor of its newest revocation event (one revoked, its
    /// revocation undone by a restore, revoked again, names the last).
    #[test]
    fn who_revoked_a_token_is_the_actor_of_its_newest_revocation() {
        let (_dir, store) = temp_store();
        let now = clock::now_ms();
        assert_eq!(store.who_revoked("t1", now).unwrap(), None);
        for (name, source) in [("bob", "10.0.0.2"), ("carol", "10.0.0.3")] {
            let by = Actor {
                name: name.into(),
                source: source.into(),
                logged_in_as_admin: None,
                request: None,
            };
            store.record_event(&by, "token.revoked", "t1", "").unwrap();
        }
        assert_eq!(
            store.who_revoked("t1", now).unwrap(),
            Some(("carol".to_string(), "10.0.0.3".to_string()))
        );
    }

    /// Fills the audit table with `n` events a second apart from `from` (epoch ms), ids
    /// below those of any event recorded after.
    fn fill_events(store: &Store, from: i64, n: i64) {
        store
            .with_conn(|c| {
                c.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
                     INSERT INTO audit_events (at, actor, action, target, detail, source)
                     SELECT ?1 + i * 1000, 'x', 'auth.failed', 'junk' || i, '', '10.0.0.1'
                     FROM n",
                    [from, n],
                )?;
                Ok(())
            })
            .unwrap();
    }

    /// The SQLite virtual-machine steps, in thousands, that the store's cached statement
    /// `sql` takes while `f` runs: what a read costs, without timing it. (The pool gives back
    /// the connection last used, and nothing else uses it meanwhile in a test.)
    fn thousand_steps_of<T>(store: &Store, sql: &str, f: impl FnOnce() -> T) -> (T, u64) {
        use rusqlite::StatementStatus::VmStep;
        let status = |reset: bool| {
            store
                .with_conn(|c| {
                    let stmt = c.prepare_cached(sql)?;
                    Ok(if reset {
                        stmt.reset_status(VmStep)
                    } else {
                        stmt.get_status(VmStep)
                    })
                })
                .unwrap()
        };
        status(true);
        let out = f();
        let steps = status(false);
        assert!(
            steps > 0,
            "the statement was not run on the connection looked at"
        );
        (out, steps as u64 / 1000)
    }

    /// Who revoked a token long ago is read from the events of its revocation's moment, not
    /// by reading every event since: on a store of a year's events `token show` took 20 s.
    #[test]
    fn who_revoked_a_token_long_ago_reads_only_the_events_of_that_moment() {
        let (_dir, store) = temp_store();
        let by = Actor {
            name: "bob".into(),
            source: "10.0.0.2".into(),
            logged_in_as_admin: None,
            request: None,
        };
        store.record_event(&by, "token.revoked", "t1", "").unwrap();
        let revoked_at = store.audit_events(None, 10).unwrap()[0].at;
        // A year's failed authentications since (a day's 86,400 rows: enough to tell).
        fill_events(&store, revoked_at + 1000, 86_400);
        let (who, thousands) =
            thousand_steps_of(&store, WHO_REVOKED, || store.who_revoked("t1", revoked_at));
        assert_eq!(
            who.unwrap(),
            Some(("bob".to_string(), "10.0.0.2".to_string()))
        );
        assert!(thousands < 20, "{thousands} thousand steps");
        // An event far from the token's time is not its revocation (a restore's older one).
        assert_eq!(
            store.who_revoked("t1", revoked_at + 3_600_000).unwrap(),
            None
        );
    }

    /// A listing `--since` a moment reads from that moment on: a day of older events is not
    /// read to find the three after it (4.7 s on a store of ten million events), and each
    /// page of a long listing starts where the last ended.
    #[test]
    fn a_listing_since_a_moment_does_not_read_the_events_before_it() {
        let (_dir, store) = temp_store();
        fill_events(&store, 0, 86_400);
        let since = 86_400 * 1000 - 2500;
        let filter = AuditFilter::since(Some(since));
        let (page, thousands) = thousand_steps_of(&store, &page_sql(), || {
            store.audit_page(&filter, AuditCursor::START, 10)
        });
        let targets: Vec<String> = page.unwrap().into_iter().map(|e| e.target).collect();
        assert_eq!(targets, ["junk86398", "junk86399", "junk86400"]);
        assert!(thousands < 20, "{thousands} thousand steps");
        // Page by page from a moment: the same events as in one page, each page cheap.
        let since = 86_400 * 1000 - 50_500;
        let filter = AuditFilter::since(Some(since));
        let whole = store.audit_page(&filter, AuditCursor::START, 100).unwrap();
        assert_eq!(whole.len(), 51);
        let mut paged = Vec::new();
        let mut cursor = AuditCursor::START;
        loop {
            let (page, thousands) =
                thousand_steps_of(&store, &page_sql(), || store.audit_page(&filter, cursor, 7));
            assert!(thousands < 20, "{thousands} thousand steps");
            let page = page.unwrap();
            let Some(last) = page.last() else { break };
            cursor = AuditCursor::after(last);
            paged.extend(page.into_iter().map(|e| e.id));
        }
        assert_eq!(paged, whole.iter().map(|e| e.id).collect::<Vec<_>>());
    }

    /// An event whose time was edited by hand into a real number is placed by its value
    /// rounded up, and a listing by pages goes past it once (rounded down, each next page found
    /// it again, without end).
    #[test]
    fn an_event_whose_time_is_a_real_number_is_listed_once() {
        let (_dir, store) = temp_store();
        store
            .with_conn(|c| {
                c.execute_batch(
                    "INSERT INTO audit_events (at, actor, action, target)
                     VALUES (1500.5, 'x', 'user.added', 'a'), (2000, 'x', 'user.added', 'b')",
                )?;
                Ok(())
            })
            .unwrap();
        let mut seen = Vec::new();
        let mut cursor = AuditCursor::START;
        for _ in 0..5 {
            let page = store
                .audit_page(&AuditFilter::default(), cursor, 1)
                .unwrap();
            let Some(last) = page.last() else { break };
            cursor = AuditCursor::after(last);
            seen.push((last.at, last.target.clone()));
        }
        assert_eq!(seen, [(1501, "a".to_string()), (2000, "b".to_string())]);
    }
}
