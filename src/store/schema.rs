//! The schema and its migrations, numbered by `PRAGMA user_version`.
//!
//! A migration is appended, never edited: a file created by an older gitgate is brought forward
//! step by step, all the steps in one transaction.

use rusqlite::{Connection, TransactionBehavior};

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    slug          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    active        INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL
);
CREATE TABLE grants (
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    target     TEXT NOT NULL,
    level      TEXT NOT NULL CHECK (level IN ('read', 'write', 'admin')),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, target)
);
CREATE TABLE tokens (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('personal', 'project', 'repository')),
    name           TEXT NOT NULL,
    owner_id       INTEGER REFERENCES users(id),
    scope          TEXT,
    permissions    TEXT NOT NULL,
    secret_hash    BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    expires_at     INTEGER,
    last_used_at   INTEGER,
    last_used_addr TEXT,
    revoked_at     INTEGER,
    revoked_by     TEXT,
    CHECK ((kind = 'personal') = (owner_id IS NOT NULL)),
    CHECK ((kind = 'personal') = (scope IS NULL))
);
CREATE INDEX tokens_owner ON tokens(owner_id);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE audit_events (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_at ON audit_events(at);
"#,
    // 2: rotation keeps the previous secret's hash valid until a time (the overlap), and a token
    // may be limited to source networks (comma-separated CIDRs; NULL means anywhere).
    r#"
ALTER TABLE tokens ADD COLUMN previous_hash BLOB;
ALTER TABLE tokens ADD COLUMN previous_valid_until INTEGER;
ALTER TABLE tokens ADD COLUMN rotated_at INTEGER;
ALTER TABLE tokens ADD COLUMN allowed_networks TEXT;
"#,
    // 3: per-principal rate-limit overrides and exemptions (`gitgate ratelimit`).
    r#"
CREATE TABLE rate_limits (
    principal         TEXT PRIMARY KEY,
    capacity          INTEGER,
    refill_per_second REAL,
    exempt            INTEGER NOT NULL DEFAULT 0,
    updated_at        INTEGER NOT NULL,
    updated_by        TEXT NOT NULL,
    CHECK (exempt IN (0, 1)),
    CHECK (exempt = 1 OR (capacity >= 1 AND refill_per_second > 0))
);
"#,
    // 4: password lockout of the management login (REST API): consecutive failures and the
    // time until which the password is refused. Tokens are not affected.
    r#"
ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until INTEGER;
"#,
    // 5: repeated events (the same failed authentication, from the same address, for the same
    // token, within the audit writer's window) are one row with a count and the last time, so
    // a flood of bad tokens costs a few rows a second instead of one each.
    r#"
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_events ADD COLUMN last_at INTEGER;
"#,
    // 6: the request an event happened in (a failed authentication, a block), by the
    // `request_id` of its log lines: what joins an audit row to the request that made it.
    // NULL for the rest, and for the rows of older versions.
    r#"
ALTER TABLE audit_events ADD COLUMN request_id TEXT;
"#,
];

/// The schema version this build writes.
pub const CURRENT: i64 = MIGRATIONS.len() as i64;

/// Bring the schema up to date. A store already at this version is only read, so that opening
/// it (every CLI command does) works while another process holds the write lock.
/// gitgate's tables, each with the schema version that made it and a column only gitgate's
/// table of that name has (to tell it from another program's `users` or `tokens`).
const TABLES: [(&str, i64, &str); 6] = [
    ("users", 1, "password_hash"),
    ("grants", 1, "level"),
    ("tokens", 1, "secret_hash"),
    ("settings", 1, "value"),
    ("audit_events", 1, "action"),
    ("rate_limits", 3, "refill_per_second"),
];

/// Why this file is not a gitgate store gitgate may open, if it is not: another program's
/// SQLite database — it holds tables, and gitgate's schema version is 0 (none applied), or it
/// has a table gitgate never makes, or most of gitgate's are not there (another program may
/// number its own schema in `user_version` too, and have a `users` table) — or a gitgate store
/// that lost one of the tables its version has (damaged, or changed by hand). Checked before
/// anything is written to it — the switch to WAL included — so that a `[store] path` pointing
/// at the wrong file leaves it as it was instead of adding gitgate's tables to it (and
/// migrating the other program's version number). `None` for a gitgate store or an empty file.
///
/// Its reads are separate statements: another process's migration committed between them
/// (a CLI command and `serve` started together after an upgrade) would show a version older
/// than the tables read after it. A refusal is given only when the version is the same
/// before and after it was made; else the look is taken again.
pub fn why_not_a_gitgate_store(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let version = || conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
    let mut tries = 0;
    loop {
        let before = version()?;
        let why = why_not_a_gitgate_store_at(conn, before)?;
        tries += 1;
        if why.is_none() || version()? == before || tries == 5 {
            return Ok(why);
        }
    }
}

/// [`why_not_a_gitgate_store`] for a store whose `user_version` was read as `version`.
fn why_not_a_gitgate_store_at(conn: &Connection, version: i64) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare(
        "SELECT name, type = 'table' FROM sqlite_master \
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let objects = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if objects.is_empty() {
        // An empty file, or a new store not yet given its tables (version 0); a version with
        // no tables is no gitgate store (every migration makes tables as it numbers them).
        return Ok((version != 0).then(|| {
            format!(
                "this SQLite database says schema version {version} but has no tables: it is \
                 not a gitgate store, or one emptied by hand; it was left as it is: check \
                 [store] path, or restore the store from a backup"
            )
        }));
    }
    let tables: Vec<&str> = objects
        .iter()
        .filter(|(_, table)| *table)
        .map(|(n, _)| n.as_str())
        .collect();
    // The tables a store of this version has (all of them, for one newer than this build).
    let expected: Vec<&str> = TABLES
        .iter()
        .filter(|(_, since, _)| *since <= version.max(1))
        .map(|(name, ..)| *name)
        .collect();
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|t| !tables.contains(t))
        .collect();
    // Every table gitgate expects there: gitgate's (an operator's own extra table — an
    // archive, a replication tool's — is no reason to refuse it).
    if version != 0 && missing.is_empty() {
        // (One below zero is refused by `refuse_newer`, as changed by hand.)
        if version < 0 {
            return Ok(None);
        }
        return Ok(ahead_of_its_version(conn, version)?.map(|made| {
            format!(
                "this gitgate store says schema version {version}, but its tables are those of \
                 version {made} (its user_version was changed by hand, or a backup restored \
                 over part of it): a migration would fail half-way; it was left as it is: \
                 restore it from a backup"
            )
        }));
    }
    // Most of gitgate's tables there, each with gitgate's columns, and nothing else: a gitgate
    // store that lost some. Anything less is not told to restore a backup over it.
    let mut ours = 0;
    let mut all_ours = true;
    for (name, _, column) in TABLES {
        if tables.contains(&name) {
            if has_column(conn, name, column)? {
                ours += 1;
            } else {
                all_ours = false;
            }
        }
    }
    // A newer gitgate's store may have dropped, renamed or added tables: with most of this
    // build's still gitgate's, it is said to be newer (`refuse_newer`), so that a downgrade is
    // told to upgrade again, not to restore a backup over what the newer gitgate wrote.
    if version > CURRENT && all_ours && ours * 2 > TABLES.len() {
        return Ok(None);
    }
    // Every one of gitgate's tables, as gitgate made them, at version 0: a store copied with
    // `sqlite3 .dump` (the usual repair of a damaged file), which does not carry user_version.
    if version == 0 && all_ours && ours == TABLES.len() {
        let made = ahead_of_its_version(conn, 0)?.unwrap_or(1);
        return Ok(Some(format!(
            "this SQLite database has gitgate's tables but no schema version (user_version 0), \
             as a store copied with `sqlite3 .dump` is left (the dump does not carry it); it \
             was left as it is: if it is such a copy, give it its version — its tables are \
             those of version {made}: sqlite3 FILE 'PRAGMA user_version = {made}' — or restore \
             the store from a backup (`VACUUM INTO` and `.backup` copies keep the version)"
        )));
    }
    let ours = if all_ours { ours } else { 0 };
    // Most of gitgate's tables there as gitgate made them: a gitgate store that lost some, or
    // had one renamed (`grants` to `grants_old`: an extra table, not another program's store).
    if version != 0 && ours * 2 > expected.len() && missing.len() * 2 < expected.len() {
        let others: Vec<&str> = tables
            .iter()
            .copied()
            .filter(|t| !TABLES.iter().any(|(name, ..)| name == t))
            .collect();
        let others = match others.as_slice() {
            [] => String::new(),
            others => format!(" (it has table(s) '{}' instead)", others.join("', '")),
        };
        return Ok(Some(format!(
            "this gitgate store (schema version {version}) has lost its table(s) '{}'{others}: \
             it is damaged or was changed by hand; it was left as it is: restore it from a \
             backup",
            missing.join("', '")
        )));
    }
    let shown = if tables.is_empty() {
        "no tables, only views or indexes".to_string()
    } else {
        format!("tables '{}'", tables[..tables.len().min(3)].join("', '"))
    };
    Ok(Some(format!(
        "this is not a gitgate store but another program's SQLite database (it has {shown} and \
         no gitgate schema); it was left as it is: check [store] path"
    )))
}

/// The columns the store of `version` lacks that gitgate's migrations make, as
/// `'table'.'column'` (at most a few named): a column dropped by hand or by a tool. SQLite
/// then fails only the statements that name it — `serve` would start and answer every git
/// request 503, and `check` could not foresee it — so the store is refused at its opening,
/// by both. The reference is the migrations themselves, run in memory up to `version`.
pub fn lost_columns(conn: &Connection, version: i64) -> rusqlite::Result<Option<String>> {
    let Ok(upto) = usize::try_from(version) else {
        return Ok(None);
    };
    let reference = Connection::open_in_memory()?;
    for migration in MIGRATIONS.iter().take(upto) {
        reference.execute_batch(migration)?;
    }
    let columns: Vec<(String, String)> = reference
        .prepare(
            "SELECT m.name, c.name FROM sqlite_master m, pragma_table_info(m.name) c \
             WHERE m.type = 'table' ORDER BY m.name, c.cid",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut lost = Vec::new();
    for (table, column) in &columns {
        if !has_column(conn, table, column)? {
            lost.push(format!("'{table}'.'{column}'"));
        }
    }
    Ok(match lost.len() {
        0 => None,
        n if n > 5 => Some(format!("{} and {} more", lost[..5].join(", "), n - 5)),
        _ => Some(lost.join(", ")),
    })
}

/// A column each migration adds, by the version it makes: a store whose `user_version` is
/// below one whose column it has was not made by gitgate's migrations, and the next would fail
/// on it (`duplicate column name`) — a start that `check` could not foresee.
const MADE_BY: [(i64, &str, &str); 5] = [
    (2, "tokens", "previous_hash"),
    (3, "rate_limits", "refill_per_second"),
    (4, "users", "failed_logins"),
    (5, "audit_events", "count"),
    (6, "audit_events", "request_id"),
];

/// Whether the store's `table` has `column` (none when the table is not there).
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )
}

/// The newest schema version whose column the store has, when that is newer than `version`.
fn ahead_of_its_version(conn: &Connection, version: i64) -> rusqlite::Result<Option<i64>> {
    let mut newest = None;
    for (made, table, column) in MADE_BY {
        if made <= version {
            continue;
        }
        if has_column(conn, table, column)? {
            newest = Some(made);
        }
    }
    Ok(newest)
}

/// The store's schema version, refused if newer than this gitgate knows, or below zero (no
/// gitgate writes that: the number was changed by hand). Read before anything is changed: a
/// store a newer gitgate made must be left exactly as it is (its journal mode included).
pub fn refuse_newer(conn: &Connection) -> rusqlite::Result<i64> {
    let version: i64 = conn
        .prepare_cached("PRAGMA user_version")?
        .query_row([], |r| r.get(0))?;
    if version > CURRENT {
        return Err(newer(version));
    }
    if version < 0 {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!(
                "the store has schema version {version}, which no gitgate writes (its \
                 user_version was changed by hand); restore it from a backup"
            )),
        ));
    }
    Ok(version)
}

fn newer(version: i64) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some(format!(
            "the store has schema version {version}, newer than this gitgate knows \
             ({CURRENT}); upgrade gitgate"
        )),
    )
}

/// Bring the schema up to date, and say from which version if this call did it: `None` when
/// the store was current already — also when another process (`serve` and a CLI command
/// started together after an upgrade) migrated it while this one waited for the write lock,
/// so that only the process that migrated says so. A store already at this version is only
/// read, so that opening it (every CLI command does) works while another process holds the
/// write lock. All the steps are one transaction: a migration cut off (a kill, a full disk)
/// leaves the store at the version it had, and two processes never share one.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Option<i64>> {
    if refuse_newer(conn)? == CURRENT {
        return Ok(None);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let from = refuse_newer(&tx)?;
    if from == CURRENT {
        return Ok(None);
    }
    for (version, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
    }
    tx.commit()?;
    Ok(Some(from))
}

/// The migrations after `version`, as one batch: what a migration from it runs (for a test
/// that brings a store forward on a connection of its own, inside a transaction it holds).
#[cfg(test)]
pub(crate) fn migrations_after(version: i64) -> String {
    MIGRATIONS[version as usize..].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_programs_database_is_told_apart_from_an_empty_or_gitgate_file() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(why_not_a_gitgate_store(&conn).unwrap(), None, "empty");
        migrate(&mut conn).unwrap();
        assert_eq!(
            why_not_a_gitgate_store(&conn).unwrap(),
            None,
            "gitgate's own"
        );
        let other = Connection::open_in_memory().unwrap();
        other
            .execute_batch("CREATE TABLE metrics(x); CREATE TABLE users(y)")
            .unwrap();
        let refused = |c: &Connection| why_not_a_gitgate_store(c).unwrap().unwrap_or_default();
        let m = refused(&other);
        assert!(
            m.contains("another program's") && m.contains("tables 'metrics', 'users'"),
            "{m}"
        );
        // Another program that numbers its schema in user_version too (any number, negative
        // or beyond gitgate's): still not a gitgate store.
        for version in [2, CURRENT, 99, -1] {
            other.pragma_update(None, "user_version", version).unwrap();
            let m = refused(&other);
            assert!(m.contains("tables 'metrics', 'users'"), "{version}: {m}");
        }
        // Only a view: nothing of gitgate's, and said so.
        let view = Connection::open_in_memory().unwrap();
        view.execute_batch("CREATE VIEW v AS SELECT 1").unwrap();
        let m = refused(&view);
        assert!(m.contains("only views or indexes"), "{m}");
        // gitgate's own, a table lost: damaged, not another program's (and no index named as
        // a table).
        let mut damaged = Connection::open_in_memory().unwrap();
        migrate(&mut damaged).unwrap();
        damaged.execute_batch("DROP TABLE settings").unwrap();
        let m = refused(&damaged);
        assert!(
            m.contains("has lost its table(s) 'settings'") && m.contains("backup"),
            "{m}"
        );
        // A table a later migration made is checked too.
        let mut no_limits = Connection::open_in_memory().unwrap();
        migrate(&mut no_limits).unwrap();
        no_limits.execute_batch("DROP TABLE rate_limits").unwrap();
        assert!(
            refused(&no_limits).contains("lost its table(s) 'rate_limits'"),
            "{}",
            refused(&no_limits)
        );
        // Another program's with a few names like gitgate's, and one gitgate never makes:
        // not called a damaged gitgate store (restoring a backup over it would be wrong).
        let lookalike = Connection::open_in_memory().unwrap();
        lookalike
            .execute_batch(
                "CREATE TABLE users(id); CREATE TABLE tokens(id); CREATE TABLE settings(k);
                 CREATE TABLE grants(x); CREATE TABLE orders(id); PRAGMA user_version = 3;",
            )
            .unwrap();
        let m = refused(&lookalike);
        assert!(m.contains("another program's"), "{m}");
        // ... nor one with only tables of gitgate's names, at an early version: their columns
        // are not gitgate's.
        let early = Connection::open_in_memory().unwrap();
        early
            .execute_batch(
                "CREATE TABLE users(id, email); CREATE TABLE tokens(id, value);
                 CREATE TABLE settings(k, v); PRAGMA user_version = 1;",
            )
            .unwrap();
        let m = refused(&early);
        assert!(m.contains("another program's"), "{m}");
        // gitgate's own with a table of the operator's (an archive, a replication tool's), and
        // a newer gitgate's with a table this build does not know (refused as newer by
        // `refuse_newer`): gitgate's.
        for more in [
            "CREATE TABLE _litestream_seq(id); CREATE TABLE audit_archive(x)",
            "CREATE TABLE sessions(id); PRAGMA user_version = 99;",
        ] {
            let mut store = Connection::open_in_memory().unwrap();
            migrate(&mut store).unwrap();
            store.execute_batch(more).unwrap();
            assert_eq!(why_not_a_gitgate_store(&store).unwrap(), None, "{more}");
        }
        // A newer gitgate's store that dropped or renamed one of this build's tables is
        // still a newer store, not a damaged one: a downgrade is told to upgrade again.
        for change in [
            "DROP TABLE rate_limits",
            "ALTER TABLE settings RENAME TO options",
            "ALTER TABLE grants RENAME TO grants_v2; CREATE TABLE sessions(id)",
        ] {
            let mut store = Connection::open_in_memory().unwrap();
            migrate(&mut store).unwrap();
            store.execute_batch(change).unwrap();
            // At this build's version the same change is refused.
            assert!(!refused(&store).is_empty(), "{change}");
            store
                .pragma_update(None, "user_version", CURRENT + 1)
                .unwrap();
            assert_eq!(why_not_a_gitgate_store(&store).unwrap(), None, "{change}");
            let e = refuse_newer(&store).unwrap_err().to_string();
            assert!(e.contains("newer than this gitgate knows"), "{e}");
        }
        // ... but one that lost most of them is not told so.
        let mut most_gone = Connection::open_in_memory().unwrap();
        migrate(&mut most_gone).unwrap();
        most_gone
            .execute_batch(
                "DROP TABLE rate_limits; DROP TABLE settings; DROP TABLE grants;
                 PRAGMA user_version = 99;",
            )
            .unwrap();
        assert!(refused(&most_gone).contains("another program's"));
        // A schema version without a single table: nobody's store (the version set by hand,
        // or every table dropped); it is not taken as new and given tables.
        let bare = Connection::open_in_memory().unwrap();
        for version in [1, CURRENT, 99, -1] {
            bare.pragma_update(None, "user_version", version).unwrap();
            let m = refused(&bare);
            assert!(
                m.contains(&format!("schema version {version} but has no tables")),
                "{m}"
            );
        }
        // gitgate's own store at a version this build does not know is gitgate's, refused by
        // `refuse_newer` as newer or as changed by hand.
        for version in [99, -1] {
            conn.pragma_update(None, "user_version", version).unwrap();
            assert_eq!(why_not_a_gitgate_store(&conn).unwrap(), None, "{version}");
            let e = refuse_newer(&conn).unwrap_err().to_string();
            let why = if version > 0 {
                "newer than"
            } else {
                "changed by hand"
            };
            assert!(e.contains(why), "{version}: {e}");
        }
    }

    /// A store of schema 5, whose audit rows named no request, is brought to 6 with its rows
    /// as they were: their `request_id` is NULL, and a new row can name one.
    #[test]
    fn audit_rows_of_a_store_before_version_6_are_kept_without_a_request() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&MIGRATIONS[..5].concat()).unwrap();
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute(
            "INSERT INTO audit_events (at, actor, action, target) VALUES (1, 'a', 'auth.failed', 't')",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), Some(5));
        assert_eq!(lost_columns(&conn, CURRENT).unwrap(), None);
        let row: (i64, Option<String>) = conn
            .query_row("SELECT count, request_id FROM audit_events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(row, (1, None));
        conn.execute(
            "INSERT INTO audit_events (at, actor, action, target, request_id) \
             VALUES (2, 'a', 'auth.failed', 't', '0123456789abcdef')",
            [],
        )
        .unwrap();
    }

    #[test]
    fn migrates_once_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, CURRENT);
    }

    #[test]
    fn an_up_to_date_store_opens_while_another_connection_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut first = Connection::open(&path).unwrap();
        first
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
        migrate(&mut first).unwrap();
        let writer = Connection::open(&path).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        // A write lock attempt would wait out rusqlite's 5 s busy timeout, then fail with
        // SQLITE_BUSY: reading the version needs no lock.
        let mut reader = Connection::open(&path).unwrap();
        migrate(&mut reader).unwrap();
        writer.execute_batch("COMMIT").unwrap();
    }

    /// A migration that fails part-way (here its third step, on a table in its way; a kill or
    /// a full disk alike) leaves the store at the version it had, with none of the steps
    /// before made: an older gitgate still serving it goes on, and the next start does it all.
    #[test]
    fn a_migration_cut_off_leaves_the_store_as_it_was() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch("CREATE TABLE rate_limits (x)").unwrap();
        assert!(migrate(&mut conn).is_err());
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
        assert!(!has_column(&conn, "tokens", "previous_hash").unwrap());
        conn.execute_batch("DROP TABLE rate_limits").unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), Some(1));
        assert_eq!(migrate(&mut conn).unwrap(), None);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", CURRENT + 1)
            .unwrap();
        assert!(migrate(&mut conn).is_err());
    }

    /// A current store whose `user_version` was set back by hand: its next migration would
    /// fail half-way (`duplicate column name`), so it is refused as it is, by `check` as by
    /// `serve`; one at its own version is a store.
    #[test]
    fn a_store_whose_tables_are_ahead_of_its_version_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(why_not_a_gitgate_store(&conn).unwrap(), None);
        for version in 1..CURRENT {
            conn.pragma_update(None, "user_version", version).unwrap();
            let why = why_not_a_gitgate_store(&conn).unwrap().unwrap();
            assert!(
                why.contains(&format!(
                    "says schema version {version}, but its tables are those of version {CURRENT}"
                )),
                "{why}"
            );
        }
        // Each migration's own store, at its version: fine.
        let conn = Connection::open_in_memory().unwrap();
        for version in 0..CURRENT {
            conn.execute_batch(MIGRATIONS[version as usize]).unwrap();
            conn.pragma_update(None, "user_version", version + 1)
                .unwrap();
            assert_eq!(why_not_a_gitgate_store(&conn).unwrap(), None, "{version}");
        }
    }

    #[test]
    fn a_version_1_store_keeps_its_tokens_through_migration_2() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO tokens (id, kind, name, scope, permissions, secret_hash, created_at, created_by)
             VALUES ('abcdefghijkl', 'project', 'ci', 'team', 'REPO_READ', x'00', 1, 'test')",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let (name, networks, previous): (String, Option<String>, Option<Vec<u8>>) = conn
            .query_row(
                "SELECT name, allowed_networks, previous_hash FROM tokens",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((name.as_str(), networks, previous), ("ci", None, None));
    }

    /// A column dropped by hand is named at the opening, at every version; a whole store has
    /// none lost, at every version, migrated step by step.
    #[test]
    fn a_column_dropped_by_hand_is_named() {
        let conn = Connection::open_in_memory().unwrap();
        for version in 0..CURRENT {
            assert_eq!(lost_columns(&conn, version).unwrap(), None, "{version}");
            conn.execute_batch(MIGRATIONS[version as usize]).unwrap();
        }
        assert_eq!(lost_columns(&conn, CURRENT).unwrap(), None);
        conn.execute_batch("ALTER TABLE users DROP COLUMN locked_until")
            .unwrap();
        assert_eq!(
            lost_columns(&conn, CURRENT).unwrap().as_deref(),
            Some("'users'.'locked_until'")
        );
        conn.execute_batch("ALTER TABLE tokens DROP COLUMN allowed_networks")
            .unwrap();
        let lost = lost_columns(&conn, CURRENT).unwrap().unwrap();
        assert!(
            lost.contains("'tokens'.'allowed_networks'") && lost.contains("'users'.'locked_until'"),
            "{lost}"
        );
    }

    /// A store copied with `sqlite3 .dump` has gitgate's tables at version 0: told how to give
    /// it its version back, not called another program's database.
    #[test]
    fn a_dumped_store_is_told_its_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", 0).unwrap();
        let said = why_not_a_gitgate_store(&conn).unwrap().unwrap();
        assert!(
            said.contains("sqlite3 .dump")
                && said.contains(&format!("PRAGMA user_version = {CURRENT}")),
            "{said}"
        );
        assert!(!said.contains("another program"), "{said}");
    }

    /// A store that a newer gitgate migrated while this one waited for the write lock to
    /// migrate it is refused as newer, read again under the lock — not given a migration of
    /// this build's over the newer one's.
    #[test]
    fn a_store_made_newer_while_waiting_to_migrate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let old = Connection::open(&path).unwrap();
        old.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
        for migration in &MIGRATIONS[..MIGRATIONS.len() - 1] {
            old.execute_batch(migration).unwrap();
        }
        old.pragma_update(None, "user_version", CURRENT - 1)
            .unwrap();
        // The newer gitgate holds the write lock as this one starts.
        let newer = Connection::open(&path).unwrap();
        newer.execute_batch("BEGIN IMMEDIATE").unwrap();
        let migrating = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut conn = Connection::open(&path).unwrap();
                migrate(&mut conn).map_err(|e| e.to_string())
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        newer
            .execute_batch(&format!("PRAGMA user_version = {}; COMMIT", CURRENT + 1))
            .unwrap();
        let e = migrating
            .join()
            .expect("no panic")
            .expect_err("refused as newer");
        assert!(e.contains("newer than this gitgate knows"), "{e}");
        let version: i64 = old
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, CURRENT + 1);
    }

    /// Up to five lost columns are all named; past five, the first five and how many more.
    #[test]
    fn lost_columns_are_named_up_to_five() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch(
            "ALTER TABLE users DROP COLUMN locked_until;
             ALTER TABLE users DROP COLUMN failed_logins;
             ALTER TABLE tokens DROP COLUMN allowed_networks;
             ALTER TABLE tokens DROP COLUMN rotated_at;
             ALTER TABLE tokens DROP COLUMN previous_valid_until;",
        )
        .unwrap();
        let lost = lost_columns(&conn, CURRENT).unwrap().unwrap();
        assert_eq!(lost.matches("'.'").count(), 5, "{lost}");
        assert!(!lost.contains("more"), "{lost}");
        conn.execute_batch("ALTER TABLE tokens DROP COLUMN previous_hash")
            .unwrap();
        let lost = lost_columns(&conn, CURRENT).unwrap().unwrap();
        assert!(
            lost.matches("'.'").count() == 5 && lost.ends_with(" and 1 more"),
            "{lost}"
        );
    }
}
