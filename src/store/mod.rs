//! The token store: one SQLite file holding users, grants, tokens, settings and audit events.
//!
//! Why SQLite: the CLI and the server are separate processes acting on the same state, and a
//! revocation done by the CLI must be seen by the server on its very next request. SQLite in WAL
//! mode gives exactly that (readers never block the writer, a commit is visible to the next read)
//! without a service to run. Every connection gets a busy timeout so a long write elsewhere makes a
//! reader wait briefly instead of failing, and writes start with `BEGIN IMMEDIATE` so two writers
//! queue instead of deadlocking on a lock upgrade.
//!
//! Every change is written together with its audit event in one transaction: there is no change
//! without its record, and no record of a change that did not happen.
//!
//! The schema is versioned with `PRAGMA user_version`; [`Store::open`] applies the migrations that
//! a file has not seen yet.
//!
//! Calls share eight pooled connections, all opened at `serve`'s start ([`Store::fill_pool`]),
//! so that none is opened when the process has the most files open; a call that finds all eight
//! taken opens one more. At the open-files limit that open fails, and the call then waits up to
//! 2 s (`RETURNED_WITHIN`) for a pooled connection to come back, as one does within
//! milliseconds, before it fails as the open did (the store unavailable: a `503`). Only on a
//! thread that may wait — the blocking pool's, or one outside any runtime —, never on an event
//! loop, whose other connections would wait with it; and only for want of descriptors: a file
//! replaced or emptied is refused at once.

mod audit;
mod cache;
mod files;
mod grants;
mod locks;
pub use locks::{lockers, write_lock_said};
mod ratelimits;
mod schema;
mod settings;
mod tokens;
mod users;
mod watch;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

pub use audit::{AuditCursor, AuditEvent, AuditFilter, ACTIONS, FAMILIES};
use files::{
    damage_said, damaged_marker, file_id, file_id_and_len, free_bytes, leave_damage_marker,
    no_room_for_the_index, real_path, refuse_a_store_found_damaged,
    refuse_a_store_whose_logs_are_gone, refuse_an_index_without_its_log,
    refuse_the_logs_of_a_replaced_file, replaced_marker, usable_path, FileId, ROOM_TO_OPEN,
};
pub(crate) use files::{
    is_an_empty_file, refuse_a_log_without_its_file, refuse_a_store_marked_damaged, sidecar,
};
pub use files::{low_on_space, readable_by_others, undo_a_new_store, BeforeANewStore};
pub use grants::{Grant, GrantChange};
pub use ratelimits::{RateOverride, RateOverrides, RateRule, UnreadableOverride};
#[cfg(test)]
pub(crate) use tokens::rows_read;
pub use tokens::{
    too_many_personal_tokens, validate_name, AuthRecord, ExpiryTest, Listing, NewToken, Owner,
    ReplacedSecret, TokenEdit, TokenPage, TokenRecord, MAX_LIVE_PERSONAL_TOKENS,
};
pub use users::{
    as_written_down, as_written_down_unsecret, no_such_user, validate_new_slug, validate_slug,
    Role, User, ACTOR_NAMES_OF_NO_USER, NOT_A_USER_NAME,
};

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept for reuse, all opened at `serve`'s start ([`Store::fill_pool`]).
const POOL_SIZE: usize = 8;
/// How long a call that finds every pooled connection taken and cannot open one for want of
/// file descriptors waits for one to come back ([`Store::wait_for_a_returned`]) before it fails
/// as the open did. A call holds its connection for milliseconds (a token's read, a REST call's
/// statements), so a burst past the eight is served in that time; one that waits seconds waits
/// for calls that are stuck (a store another process keeps locked, up to the busy timeout; a
/// hung file system), and would hold its blocking thread, one of eight, and its client for
/// nothing more. Well within what a cache miss (`MISS_DEADLINE`, 10 s) and a REST call's turn
/// at the store (10 s) allow, so that this answer, naming the open-files limit, comes first.
const RETURNED_WITHIN: Duration = Duration::from_secs(2);
/// Cache misses read at once (see [`Store::miss_slots`]): fewer than the pooled connections, so
/// a burst of misses is read on pooled connections, not new ones.
const MISS_READERS: usize = 4;
/// An inline read of a miss ([`Store::load_auth_record_now`]) that read from the disk (its
/// thread's `ru_inblock` moved: the store's pages are not in the OS page cache), or that took
/// longer than [`INLINE_STALL`] whatever the reason, sends the misses of the next
/// [`INLINE_PAUSE_MS`] to the blocking pool: an event loop stalls on such a read at most once in
/// that time. Time alone is not the test: on a virtual machine reads from the page cache took
/// 1–3 ms now and then (the host's scheduling), and a pause after each of those kept most misses
/// off the inline path.
const INLINE_STALL: Duration = Duration::from_millis(20);
/// How long a request waits for its token's record on a cache miss, its turn among the
/// four places of the misses (`MISS_READERS`) and the read together, before it is refused (`503`): two busy timeouts, so
/// that a read waiting for a store another process holds locked ends with the busy timeout's
/// answer first. A read that never ends (a hung file system) keeps its place and its thread.
pub const MISS_DEADLINE: Duration = Duration::from_secs(10);

/// How a cache miss reads its token's record: [`Store::load_auth_record`] (a test's own that
/// hangs).
type MissRead = fn(&Store, &str, CacheVersion) -> Result<Option<Arc<AuthRecord>>>;
const INLINE_PAUSE_MS: i64 = 1_000;

/// The answer of [`Store::cached_auth_record`].
pub enum CacheLookup {
    Hit(Arc<AuthRecord>),
    /// The store had no such token when last read, and nothing was committed since.
    Unknown,
    Miss(CacheVersion),
}

/// The store's data version a cache miss was observed at.
#[derive(Clone, Copy, Debug)]
pub struct CacheVersion(i64);

/// The most of the login name the environment gives that [`Actor::cli`] keeps (Linux allows 32).
pub const CLI_NAME_KEPT: usize = 64;

/// Who did something, and from where: recorded with every audit event.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    pub source: String,
    /// For a call of a user who logged in (the REST API), `name` is their account, and this
    /// whether it was an administrator then. Each change the call makes checks, in its own
    /// transaction, that the account is still active and (if it was) still an administrator:
    /// an account disabled or demoted while its call was under way changes nothing.
    pub logged_in_as_admin: Option<bool>,
    /// The request this is done in (a REST call, a git request's failure that blocked its
    /// address): its audit rows keep its id, which joins them to the request's log lines.
    /// `None` for the command line and gitgate's own bookkeeping.
    pub request: Option<crate::request_id::RequestId>,
}

impl Actor {
    /// gitgate itself, acting on what came from `source` (an address it blocked; `local` for
    /// its own bookkeeping, such as pruning the audit log).
    pub fn gitgate(source: impl Into<String>) -> Actor {
        Actor {
            name: "gitgate".into(),
            source: source.into(),
            logged_in_as_admin: None,
            request: None,
        }
    }

    /// This actor, acting in `request`: the audit rows it makes name the request.
    pub fn in_request(self, request: crate::request_id::RequestId) -> Actor {
        Actor {
            request: Some(request),
            ..self
        }
    }

    /// The operator at the command line: the login name the environment gives (`SUDO_USER`,
    /// else `USER`) — a claim anyone can set, so the source says who the process really runs
    /// as (`local:uid=1000`), which the environment cannot change. The name is kept to one
    /// field of a log or audit line: anything but visible ASCII becomes `?` (bytes that are not
    /// UTF-8 too, rather than the name being lost), and it is cut at [`CLI_NAME_KEPT`]
    /// characters. One that holds what looks like a token secret (a script that exported its
    /// token as `USER`) is not written down: the audit trail is kept for years.
    pub fn cli() -> Actor {
        // An empty variable (a supervisor's `USER=`) names nobody: the next one is asked.
        let named = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().into_owned())
        };
        let claimed = named("SUDO_USER")
            .or_else(|| named("USER"))
            .unwrap_or_else(|| "unknown".into());
        let mut user: String = if crate::credentials::holds_a_secret(&claimed) {
            "<not-recorded:looks-like-a-token-secret>".into()
        } else {
            claimed
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect()
        };
        if user.len() > CLI_NAME_KEPT {
            // ASCII alone by now: any byte is a character's end.
            user.truncate(CLI_NAME_KEPT);
            user.push_str("...");
        }
        Actor {
            name: format!("cli:{user}"),
            source: format!("local:uid={}", rustix::process::getuid().as_raw()),
            logged_in_as_admin: None,
            request: None,
        }
    }
}

/// What went wrong in the store, in words for the operator or the API caller.
#[derive(Debug)]
pub enum StoreError {
    /// The file could not be opened or migrated.
    Open { path: PathBuf, message: String },
    /// Another process held the write lock past the busy timeout.
    Busy,
    /// A named thing does not exist (user 'bob', token 'abc').
    NotFound(String),
    /// The change conflicts with what is there (user exists already).
    Conflict(String),
    /// The request is not valid (bad slug, bad target).
    Invalid(String),
    /// The one asking may not do this (any more): an account disabled during its call.
    Refused(String),
    /// Any other SQLite failure.
    Sqlite(rusqlite::Error),
    /// A stored value gitgate cannot read (changed by hand): nothing is decided on a guess.
    Unreadable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, message } => {
                write!(
                    f,
                    "cannot open the token store {}: {message}",
                    path.display()
                )
            }
            StoreError::Busy => {
                f.write_str("the token store is locked by another process; try again in a moment")
            }
            StoreError::NotFound(m)
            | StoreError::Conflict(m)
            | StoreError::Invalid(m)
            | StoreError::Refused(m)
            | StoreError::Unreadable(m) => f.write_str(m),
            StoreError::Sqlite(e) => match schema_mismatch(e) {
                // Not the statement itself (lines of SQL), nor advice about locks.
                Some(what) => write!(f, "token store error: {}", said_of_a_schema_mismatch(what)),
                None => write!(f, "token store error: {e}"),
            },
        }
    }
}

/// What is said of a store that lost columns (see [`schema::lost_columns`]).
fn lost_columns_said(lost: &str) -> String {
    format!(
        "the store's tables lack column(s) {lost} that gitgate made (dropped by hand or by a \
         tool, or damaged): every request that reads them would fail; {RESTORE}"
    )
}

/// A statement's failure on tables that are not gitgate's (see [`schema_mismatch`]), in words.
fn said_of_a_schema_mismatch(what: &str) -> String {
    format!(
        "{what}: the store's tables are not as gitgate made them (changed by hand, or damaged); \
         restore it from a backup"
    )
}

/// What SQLite said of a statement that names a table or column the store does not have
/// (`no such column: t.revoked_at`): the tables were changed by hand (a migration the
/// schema version does not say), or damaged. `None` for any other failure.
fn schema_mismatch(e: &rusqlite::Error) -> Option<&str> {
    let said = match e {
        rusqlite::Error::SqlInputError { msg, .. } => msg.as_str(),
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.as_str(),
        _ => return None,
    };
    ["no such column", "no such table", "has no column named"]
        .iter()
        .any(|m| said.contains(m))
        .then_some(said)
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// The store's tables are not as gitgate made them: a statement named a table or column
    /// the store does not have.
    pub fn is_schema_mismatch(&self) -> bool {
        matches!(self, StoreError::Sqlite(e) if schema_mismatch(e).is_some())
    }

    /// SQLite found the file damaged: not a database, or pages that do not read as one.
    fn is_corruption(&self) -> bool {
        matches!(self, StoreError::Sqlite(e) if matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        ))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a call's connection comes from and goes back to (see [`Store::with_conn_held`]).
#[derive(Clone, Copy)]
enum Held {
    /// The pool every other call shares.
    Pooled,
    /// The store's writer thread's own ([`Inner::writer_conn`]).
    Writer,
}

/// A handle on the store; cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Told when a connection goes back into `idle` while a call waits for one
    /// ([`Store::wait_for_a_returned`]), and when the store gives up.
    returned: Condvar,
    /// The calls waiting on `returned`, counted under `idle`'s lock: a connection put back with
    /// none waiting tells nobody, so the usual call costs no system call more.
    waiting: AtomicUsize,
    /// The store's writer thread's own connection (see [`Store::with_writers_conn`]): opened at
    /// `serve`'s start with the pool ([`Store::fill_pool`]), or on its first commit where
    /// there was no start (the CLI), and kept; dropped as the pooled ones are (a replaced
    /// file, a read-only open), and opened again on the next commit. Never one of `idle`.
    writer_conn: Mutex<Option<Connection>>,
    cache: cache::AuthCache,
    /// Which file the pooled connections have open (see [`Store::check_file`]).
    file: RwLock<Option<FileId>>,
    /// The file was replaced under the running server: every operation fails until a restart.
    replaced: AtomicBool,
    /// A change to the files, told of at the stop ([`Store::report_changed_files`]): not told
    /// again by the close.
    changes_reported: AtomicBool,
    /// Why the store gave up (with `replaced`): the file was found damaged, not changed.
    damaged: AtomicBool,
    /// When this process wrote its own log into the store file on seeing its `-wal` and `-shm`
    /// deleted ([`Inner::apply_own_log`]): the store file written up to then was written by this
    /// process, not by another's checkpoint ([`Inner::changed_files`]).
    own_log_applied_at: Mutex<Option<std::time::SystemTime>>,
    /// [`Inner::apply_own_log`] ran (it runs once).
    own_log_tried: AtomicBool,
    /// Says when [`Store::check_file`]'s full checks can be skipped; set by `serve`
    /// ([`Store::watch_folders`]), unset where inotify is not available (they then run on every
    /// operation).
    watch: std::sync::OnceLock<watch::FolderWatch>,
    batch_writer: writer::BatchWriter,
    miss_slots: Arc<tokio::sync::Semaphore>,
    /// Until when (monotonic ms) misses are not read inline: see [`INLINE_STALL`].
    inline_paused_until: AtomicI64,
    /// The store file, open for the header check ([`Store::check_file`]) for as long as the
    /// store is. Never opened and closed again while connections are open: closing any
    /// descriptor of a file drops every POSIX lock this process holds on it — SQLite's
    /// included — and another process's connection, finding no lock, would take itself for
    /// the last one, checkpoint and delete the `-wal` and `-shm` under the server. Declared
    /// after the connections, so that it is closed after them.
    header: Option<std::fs::File>,
    /// The schema this open migrated the store from, if it did (see [`Store::migrated_from`]).
    migrated_from: Option<i64>,
}

/// The blocks this thread has read from storage so far (`getrusage(RUSAGE_THREAD)`'s
/// `ru_inblock`): a read that moves it found pages outside the OS page cache. `None` where it
/// cannot be told.
fn blocks_read() -> Option<i64> {
    #[cfg(target_os = "linux")]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the rusage it is given, and says whether it did.
        let filled = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) } == 0;
        // SAFETY: filled by getrusage (and zeroed before in any case).
        filled.then(|| unsafe { usage.assume_init() }.ru_inblock)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// What `gitgate check` reads of a store without changing it (see [`Store::inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The store's schema version (0: an empty file, set up at the next start).
    pub schema: i64,
    /// This gitgate's: a lower `schema` is migrated at the next start.
    pub current: i64,
    pub users: i64,
    /// Tokens not revoked (expired ones included).
    pub unrevoked_tokens: i64,
    /// Of those, the ones a request could use now: not expired, and not of a disabled user
    /// (`None` if a store of an older schema could not say).
    pub usable_tokens: Option<i64>,
    /// The store's settings (the expiry policy), by key: each value as gitgate writes it, or
    /// why it is not (a value edited by hand into a BLOB: see `setting_text`).
    pub settings: std::collections::HashMap<String, Result<String, String>>,
    /// Users whose stored password hash gitgate does not check (edited by hand: beyond its
    /// limits, or no hash argon2 can check), with why ([`crate::password::stored_unchecked`]):
    /// every login of theirs is refused.
    pub passwords_unchecked: Vec<(String, crate::password::Unchecked)>,
    /// Users named as the audit trail's actors where no user acted
    /// ([`ACTOR_NAMES_OF_NO_USER`]), made before gitgate refused those names: their changes
    /// cannot be told from gitgate's own, or from anonymous callers'.
    pub users_named_as_no_user: Vec<String>,
}

/// A copy of a store and its `-wal` in a folder of its own (mode 0700, in the temporary
/// folder), removed with everything SQLite adds to it when dropped: what [`Store::inspect`]
/// reads of a store whose `-shm` is missing.
struct ScratchCopy {
    dir: PathBuf,
    db: PathBuf,
}

impl ScratchCopy {
    fn of(store: &Path, wal: &Path) -> std::io::Result<ScratchCopy> {
        let copy = ScratchCopy::folder()?;
        std::fs::copy(store, &copy.db)?;
        std::fs::copy(wal, copy.dir.join("store.db-wal"))?;
        Ok(copy)
    }

    /// An empty folder of its own; `db` names a file not yet there.
    fn folder() -> std::io::Result<ScratchCopy> {
        use std::os::unix::fs::DirBuilderExt;
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir = std::env::temp_dir().join(format!(
            "gitgate-read-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(random)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(ScratchCopy {
            db: dir.join("store.db"),
            dir,
        })
    }
}

/// A consistent copy of a store, taken without writing to it (see [`Store::snapshot`]), and
/// removed when dropped.
pub struct Snapshot(ScratchCopy);

impl Snapshot {
    /// The private folder (mode 0700, under `TMPDIR`) a copy goes into, empty: made before
    /// the copy, so that a caller can see to its removal on a signal as well.
    pub fn folder() -> std::result::Result<Snapshot, String> {
        ScratchCopy::folder().map(Snapshot).map_err(|e| {
            format!(
                "cannot make a private folder in {} (TMPDIR) to copy the store into: {e}",
                std::env::temp_dir().display()
            )
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// The copy's file, for [`Store::open`].
    pub fn path(&self) -> &Path {
        &self.0.db
    }
}

/// How many times [`Store::snapshot`] copies a store that changed under its copy.
const SNAPSHOT_TRIES: u32 = 5;

/// Give the file `from` the name `to` only if nothing has it: `renameat2(RENAME_NOREPLACE)`,
/// or on a file system without it a hard link, which never replaces either (then `from` is
/// still there, for the caller to remove: `Ok(true)`). `AlreadyExists` when something is at
/// `to`, left as it is.
fn put_without_replacing(from: &Path, to: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(false),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            std::fs::hard_link(from, to).map(|()| true)
        }
        Err(e) => Err(e.into()),
    }
}

impl Drop for ScratchCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection that reads a store without writing anything beside it (see
/// [`Store::inspect`]), and the private copy it reads when the store has a `-wal` but no
/// `-shm`. Fields drop in order: the connection before the copy it may have open.
struct ReadOnly {
    conn: Connection,
    /// The private copy read instead of the store, if one was made.
    scratch: Option<ScratchCopy>,
    /// Read as `immutable` (no `-wal`: see [`read_only_connection`]), without SQLite's locks:
    /// a process that opens and writes the store meanwhile is not seen, and its checkpoint
    /// rewrites pages under the read.
    immutable: bool,
}

/// What tells whether a file was written: its identity, size and modification time (`None`
/// when it cannot be looked at).
fn file_state(path: &Path) -> Option<(u64, u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
}

/// The checks before any open of the store at `path`, by a server, a command or a read: a
/// path that cannot be a store, a `-wal` without its file, an index without its log, a log
/// another process has open for another file (see [`locks`]).
fn refuse_what_cannot_be_opened(path: &Path) -> Result<()> {
    let open_err = |message: String| StoreError::Open {
        path: path.to_path_buf(),
        message,
    };
    usable_path(path).map_err(open_err)?;
    refuse_a_log_without_its_file(path).map_err(open_err)?;
    refuse_an_index_without_its_log(path).map_err(open_err)?;
    refuse_a_store_whose_logs_are_gone(path).map_err(open_err)?;
    let real = real_path(path);
    let (wal, shm) = (sidecar(&real, "-wal"), sidecar(&real, "-shm"));
    refuse_the_logs_of_a_replaced_file(&real, &wal, &shm).map_err(open_err)?;
    refuse_a_store_found_damaged(&real).map_err(open_err)?;
    locks::refuse_a_log_of_another_file(&real, &wal, &shm).map_err(open_err)
}

/// A [`ReadOnly`] connection to the store at `path`; `None` when there is no file there.
fn read_only_connection(path: &Path) -> Result<Option<ReadOnly>> {
    let open_err = |message: String| StoreError::Open {
        path: path.to_path_buf(),
        message,
    };
    refuse_what_cannot_be_opened(path)?;
    if !path.exists() {
        return Ok(None);
    }
    let explain = |e: Unopened| open_err(e.explained(path));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // Through a symbolic link, SQLite keeps the `-wal` and `-shm` beside the real file.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let (wal, shm) = (sidecar(&real, "-wal"), sidecar(&real, "-shm"));
    let mut scratch = None;
    let immutable = !wal.exists();
    let conn = if wal.exists() && !shm.exists() {
        // A `-wal` without its `-shm`: left by a process that ended without closing the
        // store (its `-shm` removed since), and no process has it open now. The log may hold
        // commits the file does not, so it must be read, and SQLite would create the `-shm`
        // to read it — owned by whoever runs the check, which could keep `serve`, running
        // as another user, from opening the store. Both files are read from a private copy
        // instead.
        // Where the copy goes is named: a full or missing temporary folder is not the store's.
        let copy = ScratchCopy::of(&real, &wal).map_err(|e| {
            open_err(format!(
                "it has a -wal but no -shm, and reading it would create the -shm; \
                 reading a copy of both in {} (TMPDIR) instead failed: {e}",
                std::env::temp_dir().display()
            ))
        })?;
        let db = if shm.exists() {
            // Opened by a process meanwhile, which made the `-shm`: read the store itself.
            path.to_path_buf()
        } else {
            copy.db.clone()
        };
        scratch = Some(copy);
        open_connection(&db, flags)
    } else if wal.exists() {
        open_connection(path, flags)
    } else {
        // No `-wal`: no connection has the store open (the last one to close removes it), and
        // everything is in the file itself. Read it as it is: a read-only connection would
        // otherwise create the `-wal` and `-shm` beside it, owned by whoever runs the check.
        open_connection(
            Path::new(&format!("file:{}?immutable=1", uri_path(path))),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )
    }
    .map_err(explain)?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|error| explain(Unopened { error, os: None }))?;
    Ok(Some(ReadOnly {
        conn,
        scratch,
        immutable,
    }))
}

impl Store {
    /// Read a store's schema version and size without changing anything: opened read-only, so
    /// no switch to WAL, no migration and nothing created — unlike [`Store::open`], which
    /// `serve` runs. (A store with a `-wal` but no `-shm` is read from a private copy of both:
    /// SQLite cannot read that log without creating the `-shm`.) `None` when there is no file
    /// at `path`. A folder, another program's database or a store from a newer gitgate is an
    /// error, as at a start; so is a damaged one, which a start would only find when a request
    /// reads the damaged page — and which gets its marker (`gitgate.db-damaged`), as when any
    /// process finds the damage, so that a running server gives it up too.
    pub fn inspect(path: &Path) -> Result<Option<Inspection>> {
        let open_err = |message: String| StoreError::Open {
            path: path.to_path_buf(),
            message,
        };
        let before = file_state(path);
        let Some(read_only) = read_only_connection(path)? else {
            return Ok(None);
        };
        let conn = &read_only.conn;
        let explain =
            |e: rusqlite::Error| open_err(explain_open_error(path, &e, system_errno(conn, &e)));
        let real = real_path(path);
        // The running servers are told as by any process that finds the store damaged — when
        // what was read is the store as it is: through its log with a server's `-shm`, or a
        // file that no process opened or changed while it was read (read without locks, a file
        // a server converted meanwhile could look damaged).
        let consistent = || {
            (!read_only.immutable && read_only.scratch.is_none())
                || (file_state(path) == before && !sidecar(&real, "-shm").exists())
        };
        // Damage met where the schema is read (a file cut short) is told as quick_check's is.
        let explain = |e: rusqlite::Error| {
            if is_damage(&e) && consistent() {
                let told = tell_of_damage(&real, &format!("SQLite found it damaged ({e})"));
                return open_err(format!("{e}: the store is damaged{told}; {RESTORE}"));
            }
            explain(e)
        };
        if let Some(why) = schema::why_not_a_gitgate_store(conn).map_err(explain)? {
            return Err(open_err(why));
        }
        let version = schema::refuse_newer(conn).map_err(explain)?;
        if let Some(lost) = schema::lost_columns(conn, version).map_err(explain)? {
            return Err(open_err(lost_columns_said(&lost)));
        }
        // Every page read once (SQLite's quick_check: the b-trees and their records, not the
        // indexes against the tables): a damaged page is otherwise found only when a request
        // happens to read it, and serve then refuses every token until the store is restored.
        let found: rusqlite::Result<Vec<String>> = conn
            .prepare("PRAGMA quick_check(3)")
            .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect());
        // What it found: its lines, or an error as it read (a page it cannot make sense of).
        let found = match found {
            Ok(lines) if lines == ["ok"] => None,
            // SQLite's report breaks its lines within a row too (`*** in database main ***`
            // above what it found): said on one line, as every refusal is.
            Ok(lines) => Some(
                lines
                    .iter()
                    .flat_map(|l| l.lines())
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
                Some(e.to_string())
            }
            Err(e) => return Err(explain(e)),
        };
        if let Some(found) = found {
            let what = format!("SQLite's quick_check found it damaged ({found})");
            let told = if consistent() {
                tell_of_damage(&real, &what)
            } else {
                String::new()
            };
            return Err(open_err(format!("{what}{told}; {RESTORE}")));
        }
        let count = |sql: &str| {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_err(explain)
        };
        let (users, unrevoked_tokens, usable_tokens) = if version == 0 {
            (0, 0, Some(0))
        } else {
            let usable = conn
                .query_row(
                    "SELECT count(*) FROM tokens t LEFT JOIN users u ON u.id = t.owner_id \
                     WHERE t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?1) \
                     AND (t.owner_id IS NULL OR u.active = 1)",
                    [crate::clock::now_ms()],
                    |r| r.get::<_, i64>(0),
                )
                .ok();
            (
                count("SELECT count(*) FROM users")?,
                count("SELECT count(*) FROM tokens WHERE revoked_at IS NULL")?,
                usable,
            )
        };
        let settings = if version == 0 {
            Default::default()
        } else {
            // A value that is not text is told for its key, not made the whole check's
            // failure: the check goes on to everything else serve depends on.
            conn.prepare("SELECT key, value FROM settings")
                .and_then(|mut q| {
                    q.query_map([], |r| {
                        let key: String = r.get(0)?;
                        let value = setting_text(&key, r.get_ref(1)?).map_err(|e| e.to_string());
                        Ok((key, value))
                    })?
                    .collect::<rusqlite::Result<_>>()
                })
                .map_err(explain)?
        };
        let passwords_unchecked = if version == 0 {
            Vec::new()
        } else {
            // Only text is this question's: a value edited in by hand as a BLOB (or text that
            // is not UTF-8) is no hash to read parameters from, and must not fail the whole
            // check, where serve starts and serves every other user.
            let text = |r: &rusqlite::Row, i: usize| -> rusqlite::Result<Option<String>> {
                Ok(r.get_ref(i)?.as_str().ok().map(str::to_owned))
            };
            conn.prepare("SELECT slug, password_hash FROM users ORDER BY slug")
                .and_then(|mut q| {
                    q.query_map([], |r| Ok((text(r, 0)?, text(r, 1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(explain)?
                .into_iter()
                .filter_map(|(user, stored)| {
                    Some((user?, crate::password::stored_unchecked(&stored?)?))
                })
                .collect()
        };
        let users_named_as_no_user = if version == 0 {
            Vec::new()
        } else {
            conn.prepare("SELECT slug FROM users WHERE slug IN (?1, ?2) ORDER BY slug")
                .and_then(|mut q| {
                    q.query_map(ACTOR_NAMES_OF_NO_USER, |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(explain)?
        };
        Ok(Some(Inspection {
            schema: version,
            current: schema::CURRENT,
            users,
            unrevoked_tokens,
            usable_tokens,
            settings,
            passwords_unchecked,
            users_named_as_no_user,
        }))
    }

    /// A consistent copy of the store at `path`, made without writing to it or beside it, in
    /// `into` (from [`Snapshot::folder`]), removed with the [`Snapshot`]: for the CLI's read commands
    /// run by an account that may read the store but not write it (an auditor), which
    /// [`Store::open`] cannot serve — it opens the store to write, as `serve` needs. SQLite's
    /// `VACUUM INTO` copies one read transaction, so a server committing meanwhile is seen
    /// whole or not at all (a store without a `-wal`, read without locks, is copied again if it
    /// changed during the copy). A store from a newer gitgate, another program's database or no
    /// file at all is refused as by [`Store::open`]; an older schema is migrated in the copy.
    pub fn snapshot(path: &Path, into: Snapshot) -> Result<Snapshot> {
        Store::copy_consistently(
            path,
            into.path(),
            into.path(),
            "the temporary folder (TMPDIR)",
        )?;
        Ok(into)
    }

    /// A backup of the store at `path` in the new file `to` (`gitgate backup`): the copy
    /// [`Store::snapshot`] makes, with no sqlite3 program needed — a host with gitgate alone
    /// has no other safe way (a `cp` of a live store misses what is still in its `-wal`). Read
    /// as the store is, without migrating it or writing beside it; made readable by its owner
    /// only (it holds password hashes) and on the disk before this returns. A file already at
    /// `to` is refused, left as it is: it may be the store itself, or an older backup. The copy
    /// is made under a temporary name beside `to` and put at `to` without replacing anything
    /// (`renameat2(RENAME_NOREPLACE)`, or a hard link), so a file someone else made there
    /// meanwhile is refused and left as it is too; a failure removes only the copy this made.
    pub fn back_up(path: &Path, to: &Path) -> Result<u64> {
        if to.symlink_metadata().is_ok() {
            return Err(StoreError::Refused(format!(
                "{} is there already: a backup goes to a new file (nothing was written)",
                to.display()
            )));
        }
        // Nor a name of the store's own files beside it (`gitgate.db-wal`, `-shm`, the
        // `-damaged` and `-replaced` markers): SQLite would read the copy as the store's
        // log, and gitgate a marker as one, refusing the store.
        let real = real_path(path);
        let folder = |p: &Path| {
            let parent = p.parent().filter(|p| !p.as_os_str().is_empty());
            std::fs::canonicalize(parent.unwrap_or(Path::new("."))).ok()
        };
        if let (Some(store), Some(name)) = (real.file_name(), to.file_name()) {
            let ours = format!("{}-", store.to_string_lossy());
            if name.to_string_lossy().starts_with(&ours) && folder(&real) == folder(to) {
                return Err(StoreError::Refused(format!(
                    "{} is a name of the store's own files ({ours}wal, {ours}shm, its \
                     markers): give the backup another name (nothing was written)",
                    to.display()
                )));
            }
        }
        // The copy is made under a name of its own beside `to` and put at `to` only if nothing
        // is there then, never replacing: a file someone made at `to` since the check above is
        // left as it is, and a failure removes only what this made.
        let Some(name) = to.file_name() else {
            return Err(StoreError::Refused(format!(
                "{} names no file: give the backup's file name (nothing was written)",
                to.display()
            )));
        };
        #[cfg(test)]
        test_support::run_after_the_check();
        let temporary = to.with_file_name(format!(
            ".{}.gitgate-backup-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let folder = to
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let synced = || -> std::io::Result<u64> {
            let file = std::fs::File::open(&temporary)?;
            file.sync_all()?;
            std::fs::File::open(folder)?.sync_all()?;
            Ok(file.metadata()?.len())
        };
        // From here on the temporary file is this copy's (copy_consistently removes it itself
        // when it fails), to be removed unless it was renamed to `to`.
        Store::copy_consistently(path, &temporary, to, "the backup's folder")?;
        let put = synced()
            .map_err(|e| {
                StoreError::Refused(format!(
                    "the copy in {} could not be written to the disk ({e}): it was removed",
                    to.display()
                ))
            })
            .and_then(|bytes| {
                let linked = put_without_replacing(&temporary, to).map_err(|e| {
                    StoreError::Refused(if e.kind() == std::io::ErrorKind::AlreadyExists {
                        format!(
                            "{} appeared while the backup was being made: it was left as it \
                             is, and the copy was removed (nothing was written); a backup goes \
                             to a new file",
                            to.display()
                        )
                    } else {
                        format!(
                            "cannot put the copy at {} ({e}): it was removed (nothing was \
                             written)",
                            to.display()
                        )
                    })
                })?;
                Ok((bytes, linked))
            });
        let bytes = match put {
            Ok((bytes, linked)) => {
                if linked {
                    let _ = std::fs::remove_file(&temporary);
                }
                bytes
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(e);
            }
        };
        std::fs::File::open(folder)
            .and_then(|f| f.sync_all())
            .map_err(|e| {
                StoreError::Refused(format!(
                    "the backup is at {}, but its folder could not be written to the disk \
                     ({e}): run `sync` before relying on it",
                    to.display()
                ))
            })?;
        Ok(bytes)
    }

    /// A consistent copy of the store at `path` made in the new file `target` (mode 0600; a
    /// file already there is refused, and only a copy this made is removed; `shown` is the
    /// name a failure gives it), without writing to the store or beside it. SQLite's `VACUUM INTO` copies one read
    /// transaction, so a server committing meanwhile is seen whole or not at all (a store
    /// without a `-wal`, read without locks, is copied again if it changed during the copy).
    /// A store from a newer gitgate, another program's database or no file at all is refused
    /// as by [`Store::open`]. `where_to` names the target's folder in a failure.
    fn copy_consistently(
        path: &Path,
        target_path: &Path,
        shown: &Path,
        where_to: &str,
    ) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let open_err = |message: String| StoreError::Open {
            path: path.to_path_buf(),
            message,
        };
        let target = target_path
            .to_str()
            .ok_or_else(|| open_err(format!("{} ({where_to}) is not UTF-8", shown.display())))?;
        for _ in 0..SNAPSHOT_TRIES {
            // A store without a `-wal` is read `immutable`, without locks (the only way to read
            // it without creating its `-wal` and `-shm`): a writer that opens it meanwhile and
            // checkpoints into the file could tear the copy. The file as it was before the copy
            // and after tells: if it changed, the copy is made again.
            let before = file_state(path);
            let Some(read_only) = read_only_connection(path)? else {
                return Err(open_err("there is no file there".into()));
            };
            let conn = &read_only.conn;
            let explain =
                |e: rusqlite::Error| open_err(explain_open_error(path, &e, system_errno(conn, &e)));
            if let Some(why) = schema::why_not_a_gitgate_store(conn).map_err(explain)? {
                return Err(open_err(why));
            }
            schema::refuse_newer(conn).map_err(explain)?;
            // Made empty first, 0600 whatever the umask: `VACUUM INTO` fills an empty file
            // and keeps its mode.
            let made = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(target_path);
            if let Err(e) = made {
                return Err(StoreError::Refused(format!(
                    "cannot make {} ({where_to}) to copy the token store {} into: {e}",
                    shown.display(),
                    path.display()
                )));
            }
            #[cfg(test)]
            test_support::run_during_the_copy();
            #[cfg(test)]
            test_support::COPIES.with(|c| c.set(c.get() + 1));
            let copied = conn.execute("VACUUM INTO ?1", [target]);
            let unchanged = !read_only.immutable || file_state(path) == before;
            drop(read_only);
            match copied {
                Ok(_) if unchanged => return Ok(()),
                Err(e) if unchanged => {
                    let _ = std::fs::remove_file(target_path);
                    return Err(StoreError::Refused(format!(
                        "cannot copy the token store {} into {} ({where_to}): {e}; the \
                         unfinished copy was removed",
                        path.display(),
                        shown.display()
                    )));
                }
                _ => {
                    // The copy this made, to be made again.
                    let _ = std::fs::remove_file(target_path);
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
            }
        }
        let _ = std::fs::remove_file(target_path);
        Err(open_err(format!(
            "it changed while it was being copied, {SNAPSHOT_TRIES} times (a gitgate command or \
             server writing it): try again"
        )))
    }

    /// Fails unless this process could write the store at `path` as `serve` needs, asking the
    /// kernel (`faccessat` for the effective user: owners, modes, ACLs and read-only mounts
    /// alike) and opening nothing: the store file, its `-wal` and `-shm` where they exist, and
    /// the folder where one of them is still to be created. For `serve` before it opens the
    /// store — so that a start that cannot write leaves no `-wal`/`-shm` behind, owned by its
    /// user — and for `gitgate check`. [`Store::check_writable`] still runs after the open: it
    /// is the real trial, and also finds a store locked by another process.
    pub fn check_can_write(path: &Path) -> Result<()> {
        use rustix::fs::{accessat, Access, AtFlags, CWD};
        usable_path(path).map_err(|message| StoreError::Open {
            path: path.to_path_buf(),
            message,
        })?;
        // Through a symbolic link, SQLite writes beside the file the link points at.
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let folder = match real.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => p.to_path_buf(),
            None => PathBuf::from("."),
        };
        let files = [real.clone(), sidecar(&real, "-wal"), sidecar(&real, "-shm")];
        let mut to_try: Vec<(&Path, Access)> = Vec::new();
        for file in &files {
            if file.exists() {
                to_try.push((file, Access::READ_OK | Access::WRITE_OK));
            }
        }
        if to_try.len() < files.len() {
            to_try.push((&folder, Access::WRITE_OK | Access::EXEC_OK));
        }
        // A full file system: SQLite fails to size a new `-shm` with a bare "disk I/O error",
        // after it has made it and an empty `-wal`, which then fail every later open too.
        if !files[2].exists() {
            if let Some(free) = free_bytes(&folder) {
                if let Some(message) = no_room_for_the_index(free, &folder, &real) {
                    return Err(StoreError::Open {
                        path: path.to_path_buf(),
                        message,
                    });
                }
            }
        }
        for (what, access) in to_try {
            if let Err(e) = accessat(CWD, what, access, AtFlags::EACCESS) {
                return Err(StoreError::Open {
                    path: path.to_path_buf(),
                    message: format!(
                        "{} cannot be written by this process ({}), and SQLite would open the \
                         store read-only: this process (uid {uid}) must be able to write the \
                         file and its folder {}, where SQLite creates {file}-wal and {file}-shm; \
                         check their owner and mode",
                        what.display(),
                        std::io::Error::from(e),
                        folder.display(),
                        file = real.display(),
                        uid = rustix::process::geteuid().as_raw()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Open (creating if needed) the store at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let open_err = |message: String| StoreError::Open {
            path: path.to_path_buf(),
            message,
        };
        refuse_what_cannot_be_opened(path)?;
        // Damage met as the store is opened (its schema read, its migration) is told to the
        // other processes on it as any found later is: a running server may not have met it.
        let explain = |unopened: Unopened| {
            let e = &unopened.error;
            if is_damage(e) {
                let told =
                    tell_of_damage(&real_path(path), &format!("SQLite found it damaged ({e})"));
                return open_err(format!("{e}: the store is damaged{told}; {RESTORE}"));
            }
            open_err(unopened.explained(path))
        };
        // A statement's failure on the connection `c`, with the system's error under it.
        let on = |c: &Connection, error: rusqlite::Error| {
            explain(Unopened {
                os: system_errno(c, &error),
                error,
            })
        };
        // The file the connections open is the one `file` names below, unless it was replaced
        // in between: then it is looked at again before anything is served.
        let file_before = file_id(path).ok();
        if file_before.is_some() && is_an_empty_file(path) {
            tracing::warn!(
                path = %crate::log_value::LogFile(path),
                "creating a new, empty token store in the empty file (0 bytes) there"
            );
            // `: > gitgate.db` makes it 0644 under the usual umask: a new store is its owner's
            // only, as one made from nothing is (below), and its `-wal` and `-shm` take its mode.
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0
                    && std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .is_ok()
                {
                    tracing::warn!(
                        path = %crate::log_value::LogFile(path),
                        "the empty file was readable by others (mode {mode:04o}): made 0600, as \
                         a new store is, since it will hold password hashes"
                    );
                }
            }
        }
        if file_before.is_none() {
            // A mistyped `[store] path` would otherwise answer every token "invalid token",
            // and git's credential helpers erase a token refused so.
            tracing::warn!(path = %crate::log_value::LogFile(path), "creating a new, empty token store");
            // For its owner only: it holds password hashes (argon2id, but a weak password can
            // be found offline), and SQLite gives the `-wal` and `-shm` the file's mode. Made
            // here because SQLite would create it with 0644 under the usual umask — through a
            // symbolic link too, whose target this makes (so not `create_new`, which refuses
            // a link). Any failure is SQLite's to meet and explain.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path);
        }
        let mut conn = connect(path, true).map_err(explain)?;
        if let Some(why) = schema::why_not_a_gitgate_store(&conn).map_err(|e| on(&conn, e))? {
            return Err(open_err(why));
        }
        // Refused before its journal mode is touched.
        schema::refuse_newer(&conn).map_err(|e| on(&conn, e))?;
        // WAL is a property of the file: set once, every later connection sees it.
        let mode = switch_to_wal(&conn).map_err(|e| on(&conn, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(format!(
                "could not switch to WAL mode (got '{mode}')"
            )));
        }
        // A new store (version 0) is made, not migrated; and one another process migrated
        // while this one waited to is not said to be migrated by this one.
        let migrated_from = schema::migrate(&mut conn)
            .map_err(|e| on(&conn, e))?
            .filter(|&from| from != 0);
        if let Some(from) = migrated_from {
            tracing::info!(
                path = %crate::log_value::LogFile(path),
                "migrated the token store from schema {from} to {}",
                schema::CURRENT
            );
        }
        if let Some(lost) =
            schema::lost_columns(&conn, schema::CURRENT).map_err(|e| on(&conn, e))?
        {
            return Err(open_err(lost_columns_said(&lost)));
        }
        let watcher = connect(path, false).map_err(explain)?;
        // The file SQLite opened, symbolic links resolved: its `-wal` and `-shm` are beside it.
        let opened = watcher
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| path.to_path_buf());
        let cache = cache::AuthCache::new(watcher, &opened);
        // The `-shm` and `-wal` exist by now (the WAL switch and the migration read the file).
        cache.open_files();
        let file = file_id(path).ok();
        if file_before.is_some() && file != file_before {
            return Err(open_err(
                "the store file was replaced while it was being opened: try again".into(),
            ));
        }
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                idle: Mutex::new(vec![conn]),
                returned: Condvar::new(),
                waiting: AtomicUsize::new(0),
                writer_conn: Mutex::new(None),
                cache,
                file: RwLock::new(file),
                replaced: AtomicBool::new(false),
                changes_reported: AtomicBool::new(false),
                damaged: AtomicBool::new(false),
                own_log_applied_at: Mutex::new(None),
                own_log_tried: AtomicBool::new(false),
                watch: std::sync::OnceLock::new(),
                batch_writer: writer::BatchWriter::new(),
                miss_slots: Arc::new(tokio::sync::Semaphore::new(MISS_READERS)),
                inline_paused_until: AtomicI64::new(0),
                header: std::fs::File::open(&opened).ok(),
                migrated_from,
            }),
        })
    }

    /// The schema version this open migrated the store from, when it did: a command says so,
    /// as a server still running an older gitgate refuses every token from then on.
    pub fn migrated_from(&self) -> Option<i64> {
        self.inner.migrated_from
    }

    /// The schema version this gitgate writes.
    pub fn schema_version() -> i64 {
        schema::CURRENT
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// At the stop, before its last line: tell of a change to the store's files made under the
    /// running server that the next start must know about (see `Inner::drop`, which then
    /// handles it without telling again).
    pub fn report_changed_files(&self) {
        if self.inner.damaged.load(Ordering::SeqCst) {
            // Its logs are kept at the close (see `Inner::drop`); said now, before the stop's
            // last line, as the other changes are.
            if !self.inner.changes_reported.swap(true, Ordering::Relaxed) {
                self.inner.say_found_damaged();
            }
            return;
        }
        if let Some(change) = self.inner.changed_files() {
            if !self.inner.changes_reported.swap(true, Ordering::Relaxed) {
                self.inner.report(change);
            }
        }
    }

    /// Watch the store's folders, so that the file checks of every operation run only after a
    /// change there (see `watch.rs`): for a server, which runs them on every request. Where no
    /// watch can be had, says so and goes on checking every time.
    pub fn watch_folders(&self) {
        match watch::FolderWatch::new(&self.inner.path) {
            Ok(w) => {
                let _ = self.inner.watch.set(w);
            }
            Err(e) => tracing::info!(
                error = %crate::log_value::LogText(&e.to_string()),
                "no inotify watch on the store's folders: its files are checked on every request"
            ),
        }
    }

    /// Fails unless this process can write the store, as serving needs: audit events, last
    /// uses and password failures are written while requests are answered.
    ///
    /// SQLite opens a file it may not write read-only, without a word, and reads go on working:
    /// without this check `serve` would start and report ready on a store owned by another user
    /// (`sudo gitgate user add ...` creates it as root), then fail every API login and lose every
    /// audit event. `BEGIN IMMEDIATE` also finds a folder where the write-ahead log cannot be
    /// created.
    pub fn check_writable(&self) -> Result<()> {
        let path = self.inner.path.clone();
        self.with_conn(|conn| {
            let trial = if conn.is_readonly(rusqlite::DatabaseName::Main)? {
                Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                    Some("SQLite opened the file read-only".into()),
                ))
            } else {
                conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")
            };
            trial.map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
                    StoreError::Open {
                        message: explain_open_error(&path, &e, system_errno(conn, &e)),
                        path: path.clone(),
                    }
                }
                _ => e.into(),
            })
        })
    }

    /// Fail closed when the store file is gone, and for good when it was replaced.
    ///
    /// An open SQLite connection keeps reading a deleted file's old inode, so without this check
    /// a server whose store was deleted would go on accepting tokens that the CLI (which creates
    /// a fresh file) can no longer revoke.
    ///
    /// A file that comes back as the same file (renamed away and back) is served again. A
    /// different file in its place (a restored backup, a copy moved over it) is not, until a
    /// restart: SQLite finds a database's write-ahead log by the database's name, and the old
    /// file's log, still open here and still on disk, would be read as the new file's — a mix
    /// of both, in which a revocation made in either may not show. gitgate does not guess
    /// which file is meant; the README says how to restore a store.
    ///
    /// The checks are a `stat` of the path, an `fstat` of the open `-shm` and `-wal` and a
    /// `stat` of the names beside the path as it resolves now; where the store's folders are
    /// watched, they run only after a change of names in those folders (and at least every
    /// 0.1 s, and before every new connection: [`Store::new_connection`]), see `watch.rs`.
    fn check_file(&self) -> Result<FileId> {
        let Some(watch) = self.inner.watch.get() else {
            return self.check_file_fully();
        };
        if watch.quiet() && !self.inner.replaced.load(Ordering::SeqCst) {
            if let Some(id) = *self.inner.file.read().unwrap_or_else(|p| p.into_inner()) {
                return Ok(id);
            }
        }
        watch.full_check(|| self.check_file_fully())
    }

    /// Whether the store file still begins as every SQLite database does (read through the
    /// descriptor kept for it: see [`Inner::header`]). One that cannot be read counts as one:
    /// whether it is there at all is for the other checks to say.
    fn header_says_sqlite(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.inner.header else {
            return true;
        };
        let mut header = [0u8; 16];
        match file.read_exact_at(&mut header, 0) {
            Ok(()) => &header == b"SQLite format 3\0",
            Err(_) => true,
        }
    }

    fn check_file_fully(&self) -> Result<FileId> {
        if self.inner.replaced.load(Ordering::SeqCst) {
            return Err(self.replaced());
        }
        let (id, len) = file_id_and_len(&self.inner.path).map_err(|e| StoreError::Open {
            path: self.inner.path.clone(),
            message: format!("the store file is unavailable: {e}"),
        })?;
        if len == 0 {
            // Emptied under the running server (see `refuse_a_log_without_its_file`): what it reads
            // now comes from the `-wal` alone, and a checkpoint would write those pages into a
            // file without the rest. Damage, for what the requests are answered.
            let what =
                "the store file was emptied (truncated to 0 bytes) while gitgate was running";
            self.found_damaged(what);
            let known = self.inner.file.write().unwrap_or_else(|p| p.into_inner());
            return Err(self.give_up(known, what));
        }
        // Overwritten in place (`dd ... conv=notrunc`, a backup copied over it): SQLite serves
        // from its page cache and would not notice until it reads the page again — `readyz`
        // would say ready, cached and uncached tokens alike would pass, and the stop would
        // checkpoint the log into the ruined file. Its first 16 bytes say whether it is still
        // a SQLite database at all (one `pread`, at most every `FULL_CHECK_EVERY`).
        if !self.header_says_sqlite() {
            let what = "the store file's header was overwritten while gitgate was running (it is \
                        no longer a SQLite database)";
            self.found_damaged(what);
            let known = self.inner.file.write().unwrap_or_else(|p| p.into_inner());
            return Err(self.give_up(known, what));
        }
        // Found damaged by another process (a command that read a damaged page this server's
        // requests and cache do not reach): one `stat`, at most every `FULL_CHECK_EVERY`.
        if let Some(said) = damage_said(&real_path(&self.inner.path)) {
            self.inner.damaged.store(true, Ordering::SeqCst);
            let known = self.inner.file.write().unwrap_or_else(|p| p.into_inner());
            return Err(self.give_up(
                known,
                &format!("another process found the store file damaged ({said})"),
            ));
        }
        // Hot path (every lookup, from every worker): the same file as last time. The read side
        // lets the workers in together; a change waits for them and then has the lock alone.
        if *self.inner.file.read().unwrap_or_else(|p| p.into_inner()) != Some(id) {
            let mut known = self.inner.file.write().unwrap_or_else(|p| p.into_inner());
            match *known {
                Some(k) if k == id => {}
                None => *known = Some(id),
                Some(_) => {
                    return Err(self.give_up(
                        known,
                        "the store file was replaced while gitgate was running",
                    ))
                }
            }
        }
        if self.inner.cache.index_unlinked(&self.inner.path) {
            // Before the file's write lock, which `changed_files` reads under.
            self.inner.apply_own_log();
            let known = self.inner.file.write().unwrap_or_else(|p| p.into_inner());
            return Err(self.give_up(
                known,
                "the store's -wal or -shm file was deleted, moved or replaced while gitgate was \
                 running",
            ));
        }
        Ok(id)
    }

    /// This process found the store damaged (`what`): it gives up on it, and leaves the marker
    /// ([`damaged_marker`]) that tells the other processes on the store, once.
    fn found_damaged(&self, what: &str) {
        if self.inner.damaged.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Err(e) = leave_damage_marker(&real_path(&self.inner.path), what) {
            tracing::error!(
                marker = %damaged_marker(&real_path(&self.inner.path)).display(),
                "the store was found damaged, and the marker that tells the other processes on \
                 it could not be written ({e}): stop every gitgate on this store"
            );
        }
    }

    /// Refuse every operation from now on, once logged; `known` (the file's write lock) keeps
    /// [`Store::with_conn`] from pooling a connection meanwhile.
    fn give_up(
        &self,
        known: std::sync::RwLockWriteGuard<'_, Option<FileId>>,
        what: &str,
    ) -> StoreError {
        if !self.inner.replaced.swap(true, Ordering::SeqCst) {
            tracing::error!(
                path = %crate::log_value::LogFile(&self.inner.path),
                "{what}: every token is refused until gitgate is restarted (to restore a store, \
                 stop gitgate first: see the README)"
            );
            self.inner
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            // A call waiting for a pooled connection fails now, not at the end of its wait.
            self.inner.returned.notify_all();
            self.inner
                .writer_conn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            self.inner.cache.clear();
        }
        drop(known);
        self.replaced()
    }

    fn replaced(&self) -> StoreError {
        let message = if self.inner.damaged.load(Ordering::SeqCst) {
            "the file was found damaged while gitgate was running; restore it (see the README) \
             and restart gitgate"
        } else {
            "the file, its -wal or its -shm was deleted, moved or replaced while gitgate was \
             running; restart gitgate"
        };
        StoreError::Open {
            path: self.inner.path.clone(),
            message: message.into(),
        }
    }

    /// Whether the store has no row in any table (a store just made, which no command has
    /// written to yet); `false` when that cannot be told. Asked on the store's own connection,
    /// so that asking leaves nothing beside it.
    pub fn holds_nothing(&self) -> bool {
        self.with_conn(|c| Ok(files::holds_no_row(c)?))
            .unwrap_or(false)
    }

    /// Run `f` on a pooled connection (a new one when none is idle).
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        self.with_conn_then(true, f)
    }

    /// [`Store::with_conn`] for a read that checks the schema version itself, in its own read
    /// transaction (`tokens::auth_record_in`, every token decision's): not twice on that path.
    fn with_conn_checking_itself<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        self.with_conn_then(false, f)
    }

    fn with_conn_then<T>(
        &self,
        check_schema: bool,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        self.with_conn_held(Held::Pooled, check_schema, f)
    }

    /// [`Store::with_conn`] on the writer thread's own connection (opened if it has none yet),
    /// for everything the writer does (its commits, its look at the failure rows). It commits
    /// about once a second: on a pooled connection, a cache miss read meanwhile — one that
    /// falls between the writer's commit and its look at whose commit it was reads the store
    /// (`UNSURE`, see `cache.rs`) — found the only pooled connection taken and opened one,
    /// which at the open-files limit failed: a valid cached token refused with a `503`.
    pub(super) fn with_writers_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        self.with_conn_held(Held::Writer, true, f)
    }

    fn with_conn_held<T>(
        &self,
        held: Held,
        check_schema: bool,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        let mut file = self.check_file()?;
        let kept = match held {
            Held::Pooled => self.inner.idle.lock().ok().and_then(|mut idle| idle.pop()),
            Held::Writer => self
                .inner
                .writer_conn
                .lock()
                .ok()
                .and_then(|mut own| own.take()),
        };
        let conn = match kept {
            Some(c) => c,
            None => match self.open_new() {
                Ok(c) => c,
                // At the open-files limit, with every pooled connection taken: one comes back
                // within milliseconds, unlike a descriptor (see `RETURNED_WITHIN`). Anything
                // else (a replaced or emptied file) fails at once.
                Err(Unavailable {
                    error,
                    out_of_descriptors: true,
                }) if matches!(held, Held::Pooled) => {
                    let returned = self.wait_for_a_returned(returned_within());
                    // Checked again: the file may have been replaced, emptied or deleted
                    // meanwhile (a store that gave up ends the wait, and is said as such).
                    // A connection the wait took goes back: dropped, the pool was one short
                    // for good after a file renamed away and back.
                    match (self.check_file(), returned) {
                        (Ok(now), Some(conn)) => {
                            file = now;
                            conn
                        }
                        (Ok(_), None) => return Err(error),
                        (Err(e), returned) => {
                            if let Some(conn) = returned {
                                self.keep(file, conn, Held::Pooled);
                            }
                            return Err(e);
                        }
                    }
                }
                Err(unavailable) => return Err(unavailable.error),
            },
        };
        // A store migrated by a newer gitgate under this running one: nothing is read or
        // written through tables it may not read rightly — the REST API's logins, lists and
        // changes, the writer's audit rows — as no token is decided from them (one cached
        // statement; not on a cached token's path).
        self.run_on(file, conn, held, |c| {
            if check_schema {
                self.refuse_newer(c)?;
            }
            f(c)
        })
    }

    /// A new connection to the store: for a call that finds none kept, or the pool at the
    /// start ([`Store::fill_pool`]).
    ///
    /// The full file checks run first, whatever the watch says: a file emptied in place
    /// (`: > gitgate.db`) changes no name, so inotify does not tell of it and the checks wait
    /// up to `FULL_CHECK_EVERY` — and SQLite, opening a file of no pages, deletes the `-wal`
    /// beside it, the only copy of its commits (see `refuse_a_log_without_its_file`). The
    /// writer's first connection, then opened about 100 ms after `serve` started, did so when
    /// the file was emptied in that moment. A new connection is rare; the checks cost a few system
    /// calls. (An emptying between them and SQLite's open is not seen, as for the CLI.)
    fn new_connection(&self) -> Result<Connection> {
        self.open_new().map_err(|unavailable| unavailable.error)
    }

    /// [`Store::new_connection`], saying whether a failure was for want of file descriptors.
    fn open_new(&self) -> Result<Connection, Unavailable> {
        self.check_file_fully().map_err(|error| Unavailable {
            error,
            out_of_descriptors: false,
        })?;
        #[cfg(test)]
        test_support::OPENED.with(|n| n.set(n.get() + 1));
        connect(&self.inner.path, false).map_err(|e| Unavailable {
            out_of_descriptors: e.for_want_of_descriptors(),
            error: StoreError::Open {
                path: self.inner.path.clone(),
                message: e.explained(&self.inner.path),
            },
        })
    }

    /// A pooled connection put back within `within` ([`Store::run_on`]), taken; `None` when
    /// none came back in time, when the store gave up meanwhile, or at once on a thread that
    /// must not wait: an event loop's (see [`crate::blocking_pool::may_block`]), whose every
    /// other connection would wait with it. The server's requests meet this only on threads
    /// that may: a cache miss read on an event loop takes an idle connection or none
    /// ([`Store::load_auth_record_now`]), and their other calls (a miss read in its turn, the
    /// REST API's logins and work, the rate-limit overrides read again) run on the blocking
    /// pool; the readiness ping, the expiring-tokens count and the writer on threads of their
    /// own. Two reads of `serve`'s start run on the main event loop (the rate-limit overrides
    /// for the guard, the newest audit id for the command line's follower), before anything is
    /// served and with the eight just opened: were none idle, they would not wait.
    fn wait_for_a_returned(&self, within: Duration) -> Option<Connection> {
        if !crate::blocking_pool::may_block() {
            return None;
        }
        let until = Instant::now() + within;
        let mut idle = self.inner.idle.lock().ok()?;
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        let taken = loop {
            if self.inner.replaced.load(Ordering::SeqCst) {
                break None;
            }
            if let Some(conn) = idle.pop() {
                break Some(conn);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            idle = match self.inner.returned.wait_timeout(idle, left) {
                Ok((idle, _)) => idle,
                Err(poisoned) => poisoned.into_inner().0,
            };
        };
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        taken
    }

    /// Open the pooled connections up to `POOL_SIZE`, 8, and the writer's own (`serve`, at its
    /// start). Opened only as calls first came at once, one was opened exactly when the process
    /// had the most files open: two cache misses, or a miss and a REST call, at the open-files
    /// limit before the pool had grown, and a valid token got a `503`. The writer's, opened on
    /// its first commit, failed that commit at the limit (logged and retried, no client saw
    /// it). A start that cannot open them says so (the open-files limit, as any open at the
    /// limit) before anything is served. Each costs about 0.1 ms, 50 KiB and two descriptors
    /// (the file and its `-wal`, which `open_files::needed` counts).
    pub fn fill_pool(&self) -> Result<()> {
        let file = self.check_file()?;
        let idle = self.inner.idle.lock().map_or(POOL_SIZE, |idle| idle.len());
        for _ in idle..POOL_SIZE {
            let conn = self.new_connection()?;
            self.run_on(file, conn, Held::Pooled, |_| Ok(()))?;
        }
        let writers = self
            .inner
            .writer_conn
            .lock()
            .map_or(true, |own| own.is_some());
        if !writers {
            let conn = self.new_connection()?;
            self.run_on(file, conn, Held::Writer, |_| Ok(()))?;
        }
        Ok(())
    }

    /// [`schema::refuse_newer`], as the store being unavailable (`503` for the REST API, as
    /// for git), not a failure of the call.
    fn refuse_newer(&self, c: &Connection) -> Result<()> {
        schema::refuse_newer(c).map(drop).map_err(|e| {
            // The first read of a connection opens its `-wal` and `-shm`: said as an open.
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) {
                return StoreError::Open {
                    path: self.inner.path.clone(),
                    message: explain_open_error(&self.inner.path, &e, system_errno(c, &e)),
                };
            }
            match e {
                rusqlite::Error::SqliteFailure(_, Some(message)) => StoreError::Open {
                    path: self.inner.path.clone(),
                    message,
                },
                other => other.into(),
            }
        })
    }

    /// Run `f` on an idle pooled connection; `None` when none is idle (opening one reads the
    /// file and its schema: not for a caller that must not wait).
    fn with_idle_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Option<Result<T>> {
        let file = match self.check_file() {
            Ok(file) => file,
            Err(e) => return Some(Err(e)),
        };
        let conn = self
            .inner
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.pop())?;
        Some(self.run_on(file, conn, Held::Pooled, f))
    }

    /// [`Store::with_conn`]'s common part: run `f`, give up on a damaged store, keep `conn`
    /// where it is `held`. A panic in `f` keeps it too (see [`Unwinding`]).
    fn run_on<T>(
        &self,
        file: FileId,
        conn: Connection,
        held: Held,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        let mut unwinding = Unwinding {
            store: self,
            file,
            held,
            conn: Some(conn),
        };
        let out = match unwinding.conn.as_mut() {
            Some(conn) => f(conn).map_err(|e| self.out_of_descriptors_on(conn, e)),
            None => unreachable!("put in just above"),
        };
        let Some(conn) = unwinding.conn.take() else {
            unreachable!("taken only here or by the drop")
        };
        if let Some(e) = out.as_ref().err().filter(|e| e.is_corruption()) {
            // A damaged store (overwritten or truncated in place: the same file, so no other
            // check sees it) fails closed from now on: the cache would otherwise go on admitting
            // tokens that no process can revoke any more.
            let what = format!("the store file is damaged ({e})");
            drop(conn);
            self.found_damaged(&what);
            let known = self.inner.file.write().unwrap_or_else(|p| p.into_inner());
            self.give_up(known, &what);
            return Err(StoreError::Open {
                path: self.inner.path.clone(),
                message: format!("{what}; restore it (see the README) and restart gitgate"),
            });
        }
        self.keep(file, conn, held);
        out
    }

    /// Put `conn`, opened on `file`, back where it is `held` (waking a call that waits for a
    /// pooled one), unless it must not be kept.
    fn keep(&self, file: FileId, conn: Connection, held: Held) {
        // SQLite opens a file this process cannot write read-only, without a word: such a
        // connection serves this call's reads, but pooled it would fail every write for good,
        // long after the file became writable again (a `chmod` during a backup).
        let poolable = !conn
            .is_readonly(rusqlite::DatabaseName::Main)
            .unwrap_or(true);
        // Checked and pooled under the read lock: a replacement (check_file's write lock, which
        // empties the pool) cannot slip in between and leave a connection to the old file in
        // the pool.
        let known = self.inner.file.read().unwrap_or_else(|p| p.into_inner());
        if !poolable || self.inner.replaced.load(Ordering::Relaxed) || *known != Some(file) {
            drop(conn);
        } else {
            match held {
                Held::Pooled => {
                    if let Ok(mut idle) = self.inner.idle.lock() {
                        if idle.len() < POOL_SIZE {
                            idle.push(conn);
                            // Under the lock the waiters count under: none is missed.
                            if self.inner.waiting.load(Ordering::Relaxed) > 0 {
                                self.inner.returned.notify_one();
                            }
                        }
                    }
                }
                // A second one (a stop's flush while the thread pruned) is not kept.
                Held::Writer => {
                    if let Ok(mut own) = self.inner.writer_conn.lock() {
                        own.get_or_insert(conn);
                    }
                }
            }
        }
        drop(known);
    }

    /// A statement's failure on the open connection `conn` for want of file descriptors, said
    /// as an open's is (see [`out_of_descriptors`]): SQLite opens files after the connection's
    /// own — a temporary file for a sort or a temporary table too big for memory, whatever
    /// else a statement needs — and says only "unable to open database file" (or "disk I/O
    /// error"), its words for a file this process may not open too. As the store unavailable (a `503` for
    /// the REST API, as a connection that cannot be opened is), in words the same for every
    /// call: the gate says each cause once. Any other failure is left as it is.
    fn out_of_descriptors_on(&self, conn: &Connection, e: StoreError) -> StoreError {
        let StoreError::Sqlite(error) = &e else {
            return e;
        };
        match out_of_descriptors(&error.to_string(), system_errno(conn, error)) {
            Some(message) => StoreError::Open {
                path: self.inner.path.clone(),
                message,
            },
            None => e,
        }
    }

    /// Run `f` in a write transaction (`BEGIN IMMEDIATE`), committed if `f` succeeds.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> Result<T>) -> Result<T> {
        let out = self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Again under the write lock: a migration may have committed since the check.
            self.refuse_newer(&tx)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        });
        audit::after_transaction(out.is_ok());
        out
    }

    /// Run `f` in a write transaction that changes nothing an auth decision reads — the writer
    /// thread's audit rows and tokens' last uses — and tell the token cache, so that it keeps
    /// its entries across this commit (see `cache.rs`). On the writer's own connection
    /// ([`Store::with_writers_conn`]), whose `PRAGMA data_version` moves only for the other
    /// connections' commits.
    fn write_bookkeeping(
        &self,
        f: impl FnOnce(&rusqlite::Transaction) -> Result<()>,
    ) -> Result<()> {
        self.write_bookkeeping_then(f, || {})
    }

    /// [`Store::write_bookkeeping`], with `after_commit` run between the commit and the checks
    /// that it was the only one (for the tests: another connection's commit there).
    fn write_bookkeeping_then(
        &self,
        f: impl FnOnce(&rusqlite::Transaction) -> Result<()>,
        after_commit: impl FnOnce(),
    ) -> Result<()> {
        let cache = &self.inner.cache;
        let out = self.with_writers_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Under the write lock: no other connection can commit until ours has.
            // Ended however this goes on: an error, or a panic, must not leave lookups unsure
            // (reading the store, never the cache) for good.
            let mut own = cache::OwnCommit::begin(cache);
            let version = data_version(&tx)?;
            f(&tx)?;
            tx.commit()?;
            after_commit();
            let after = cache.header_now();
            // Read after `after`: unchanged only if no other connection has committed since
            // the transaction began, so `after` is our commit's header alone.
            if data_version(conn).is_ok_and(|v| v == version) {
                own.alone(after);
            }
            Ok(())
        });
        audit::after_transaction(out.is_ok());
        out
    }

    /// Read a setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.with_conn(|c| setting_in(c, key))
    }

    /// The auth record for token `id` from the in-memory cache, if it is there and nothing has
    /// been committed to the store since it was read. Cheap: a read of the WAL index header (a
    /// memory read) and the file checks (one system call while the store's folders are
    /// unchanged), no query. A miss carries the version it was checked at, for
    /// [`Store::load_auth_record`].
    ///
    /// An id remembered as unknown is answered before the file checks: that answer can only
    /// refuse, and a store deleted or replaced since is refused on the first lookup of any other
    /// id (the cache is emptied when the store gives up, so nothing is remembered after). A flood
    /// of one unknown token — a deleted token a CI job keeps sending — so costs no system call.
    pub fn cached_auth_record(&self, id: &str) -> Result<CacheLookup> {
        let version = self.inner.cache.version()?;
        let found = self.inner.cache.get(id, version);
        if matches!(found, cache::Cached::Unknown) {
            return Ok(CacheLookup::Unknown);
        }
        // A deleted or replaced file must not be served from memory: fail closed / start over.
        self.check_file()?;
        Ok(match found {
            cache::Cached::Record(hit) => CacheLookup::Hit(hit),
            cache::Cached::Unknown => CacheLookup::Unknown,
            cache::Cached::Nothing => CacheLookup::Miss(CacheVersion(version)),
        })
    }

    /// Read the auth record for token `id` from SQLite and cache it under `at`, the version seen
    /// by the [`Store::cached_auth_record`] that missed (so a commit in between still
    /// invalidates it).
    pub fn load_auth_record(&self, id: &str, at: CacheVersion) -> Result<Option<Arc<AuthRecord>>> {
        self.inner
            .cache
            .misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let found = self.auth_record(id)?;
        Ok(self.cache_loaded(id, at, found))
    }

    /// [`Store::load_auth_record`] on the caller's thread — an event loop's — when it can be
    /// done without waiting: on an idle pooled connection (none is opened), with SQLite's busy
    /// timeout at zero for the read. `None` when it cannot: no idle connection, SQLite busy
    /// (another process's recovery of the index), or inline reads paused for a second because
    /// one read from the disk (the store is not in the page cache yet, and the next reads would
    /// stall the loop too) or took over 20 ms. The caller then reads on the blocking pool.
    ///
    /// A miss read inline costs the read alone (`miss_path` in `benches/auth.rs`, about 20 µs
    /// with a million tokens); through the blocking pool it also costs a thread wake-up each
    /// way, which on a virtual machine with idle cores was 30–80 µs more.
    pub fn load_auth_record_now(
        &self,
        id: &str,
        at: CacheVersion,
    ) -> Option<Result<Option<Arc<AuthRecord>>>> {
        let now = crate::clock::monotonic_ms();
        if now < self.inner.inline_paused_until.load(Ordering::Relaxed) {
            return None;
        }
        let started = std::time::Instant::now();
        let blocks_before = blocks_read();
        let read = self.with_idle_conn(|conn| {
            conn.busy_timeout(Duration::ZERO)?;
            let read = tokens::auth_record_in(conn, id);
            // Back to the pool's wait for every other use of the connection.
            conn.busy_timeout(BUSY_TIMEOUT)?;
            read
        })?;
        let from_disk = blocks_before.is_some() && blocks_read() != blocks_before;
        if from_disk || started.elapsed() > INLINE_STALL {
            self.inner
                .inline_paused_until
                .store(now + INLINE_PAUSE_MS, Ordering::Relaxed);
            tracing::debug!(
                took_us = started.elapsed().as_micros() as u64,
                from_disk,
                "a token read inline waited; misses go to the blocking pool for 1 s"
            );
        }
        match read {
            Err(StoreError::Busy) => None,
            Err(e) => Some(Err(e)),
            Ok(found) => {
                self.inner
                    .cache
                    .misses
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(Ok(self.cache_loaded(id, at, found)))
            }
        }
    }

    /// Cache what a miss read (`found`, or that there is no such token) under `at`.
    fn cache_loaded(
        &self,
        id: &str,
        at: CacheVersion,
        found: Option<AuthRecord>,
    ) -> Option<Arc<AuthRecord>> {
        let Some(record) = found else {
            self.inner.cache.put_unknown(id, at.0);
            return None;
        };
        let record = Arc::new(record);
        self.inner.cache.put(record.clone(), at.0);
        Some(record)
    }

    /// Places for reading cache misses: take one before [`Store::load_auth_record`] on a
    /// blocking thread. Every commit but the writer's own empties the cache, so the requests in
    /// flight at that moment
    /// all miss together; without a bound each took a thread of its own and, past the pooled
    /// connections, opened a connection of its own — with 300 tokens in use, a p99 several
    /// times that of one token (docs/PERFORMANCE.md). With it a burst is read by a few threads
    /// on pooled connections while the rest wait without a thread, and a request that waited
    /// for a place usually finds its token already read by one that went first.
    pub fn miss_slots(&self) -> &tokio::sync::Semaphore {
        &self.inner.miss_slots
    }

    /// [`Store::load_auth_record`] on the blocking pool in its turn among the
    /// [`Store::miss_slots`], within [`MISS_DEADLINE`]: what a cache miss that could not be
    /// read inline waits for. The cache is looked in again when the turn comes — another
    /// request for the same token has usually read it meanwhile. Past the deadline the miss is
    /// an error (the request a `503`), and a read still running keeps its place until it ends:
    /// a read that hangs holds one of the few places, never more threads. Before, a hung file
    /// system held the places and every later miss waited for one with no end (its client
    /// until gitgate's idle timeout, 5 minutes, closed the connection as the client's idling).
    pub async fn load_auth_record_in_turn(&self, id: &str) -> Result<Option<Arc<AuthRecord>>> {
        self.load_in_turn_by(id, MISS_DEADLINE, Store::load_auth_record)
            .await
    }

    /// [`Store::load_auth_record_in_turn`], the record read by `read` within `deadline`.
    async fn load_in_turn_by(
        &self,
        id: &str,
        deadline: Duration,
        read: MissRead,
    ) -> Result<Option<Arc<AuthRecord>>> {
        let late = || {
            StoreError::Invalid(format!(
                "the token store did not answer a read within {} s (its file system hangs, or \
                 the machine is overloaded); tokens not in the cache are refused until it does",
                deadline.as_secs_f64()
            ))
        };
        let until = tokio::time::Instant::now() + deadline;
        let places = self.inner.miss_slots.clone().acquire_owned();
        let turn = match tokio::time::timeout_at(until, places).await {
            Err(_) => return Err(late()),
            Ok(Err(_)) => return Err(StoreError::Invalid("the store is shutting down".into())),
            Ok(Ok(turn)) => turn,
        };
        let at = match self.cached_auth_record(id)? {
            CacheLookup::Hit(hit) => return Ok(Some(hit)),
            CacheLookup::Unknown => return Ok(None),
            CacheLookup::Miss(at) => at,
        };
        let (store, id) = (self.clone(), id.to_string());
        // Given up at the deadline before a thread took it, the read never starts, and its
        // place comes back.
        let reading = crate::blocking_pool::unless_given_up(move || {
            let _turn = turn;
            read(&store, &id, at)
        });
        match tokio::time::timeout_at(until, reading).await {
            Err(_) => Err(late()),
            Ok(Err(e)) => Err(StoreError::Invalid(format!("lookup task failed: {e}"))),
            Ok(Ok(found)) => found,
        }
    }

    /// Both steps at once: from the cache when valid, else read and cached.
    pub fn auth_record_cached(&self, id: &str) -> Result<Option<Arc<AuthRecord>>> {
        match self.cached_auth_record(id)? {
            CacheLookup::Hit(hit) => Ok(Some(hit)),
            CacheLookup::Unknown => Ok(None),
            CacheLookup::Miss(at) => self.load_auth_record(id, at),
        }
    }

    /// Token cache hits and misses since start, for metrics.
    pub fn cache_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.cache.hits.load(Relaxed),
            self.inner.cache.misses.load(Relaxed),
        )
    }

    /// Quick health check: can the store be read right now — the schema, and the first pages
    /// of what every authentication reads (tokens by id, their owners, the owners' grants)?
    /// A damaged root page there fails every git request, so it must fail readiness too; a
    /// full `quick_check` would read the whole file on every probe. (`NOT INDEXED`: a bare
    /// scan would be served from a smaller index and never touch the table.)
    pub fn ping(&self) -> Result<()> {
        self.with_conn(|c| {
            // A store migrated by a newer gitgate: every token is refused (see
            // `schema::refuse_newer`), so not ready either.
            schema::refuse_newer(c)?;
            c.query_row(
                "SELECT (SELECT count(*) FROM sqlite_master), \
                        (SELECT 1 FROM tokens NOT INDEXED LIMIT 1), (SELECT 1 FROM tokens WHERE id = ''), \
                        (SELECT 1 FROM users NOT INDEXED LIMIT 1), (SELECT 1 FROM users WHERE id = 0), \
                        (SELECT 1 FROM grants NOT INDEXED LIMIT 1), (SELECT 1 FROM grants WHERE user_id = 0)",
                [],
                |_| Ok(()),
            )?;
            tokens::lookups_can_run(c)
        })
    }
}

/// `PRAGMA data_version` of `c`: it moves when another connection has committed since `c` last
/// looked, never for `c`'s own commits.
fn data_version(c: &Connection) -> Result<i64> {
    Ok(c.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?)
}

/// A setting as `c` (a connection, or a transaction in progress) sees it.
fn setting_in(c: &Connection, key: &str) -> Result<Option<String>> {
    let mut stmt = c.prepare_cached("SELECT value FROM settings WHERE key = ?1")?;
    let mut rows = stmt.query([key])?;
    Ok(match rows.next()? {
        Some(row) => Some(setting_text(key, row.get_ref(0)?)?),
        None => None,
    })
}

/// A setting's value as the text gitgate writes, or why it is not that: a value edited in by
/// hand as a BLOB (or text that is not UTF-8) is refused with its key and what to do, not
/// with SQLite's "Invalid column type Blob" — the policy it holds is decided on by nothing.
fn setting_text(key: &str, value: rusqlite::types::ValueRef<'_>) -> Result<String> {
    use rusqlite::types::ValueRef;
    let kind = match value {
        ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => return Ok(text.to_owned()),
            Err(_) => format!("text of {} bytes that is not UTF-8", bytes.len()),
        },
        ValueRef::Blob(bytes) => format!("a BLOB of {} bytes", bytes.len()),
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(n) => format!("the number {n}"),
        ValueRef::Real(x) => format!("the number {x}"),
    };
    Err(StoreError::Unreadable(format!(
        "the setting {key} in the store is {kind}, not the text gitgate writes (changed by \
         hand?); nothing is decided on it — set the policy again: gitgate policy set \
         --expiry-required yes|no --max-expiry-days N (or --no-max-expiry-days), or a PUT of \
         admin/policy with both expiryRequired and maxExpiryDays"
    )))
}

/// A condition on the settings checked inside the transaction of a change, so that a setting
/// changed meanwhile (the expiry policy) cannot let through what it now forbids. It is given a
/// reader of the settings as the transaction sees them.
pub type SettingsCheck<'a> = &'a dyn Fn(&dyn Fn(&str) -> Result<Option<String>>) -> Result<()>;

/// What to do about a damaged store.
const RESTORE: &str =
    "restore it from a backup (see \"Backing up and restoring the store\" in the README)";

/// What is said of an open that failed (`said`, SQLite's words) for want of file descriptors,
/// if the system's error `os` says so (`EMFILE`: this process's open-files limit; `ENFILE`:
/// the system's). Said the same however many files are open, so that a server refusing
/// request after request for it says it once per its window (`gate.rs`), not once per request.
fn out_of_descriptors(said: &str, os: Option<i32>) -> Option<String> {
    match os? {
        libc::EMFILE => {
            let limit = match rustix::process::getrlimit(rustix::process::Resource::Nofile).current
            {
                Some(limit) => format!(" of {limit}"),
                None => String::new(),
            };
            Some(format!(
                "{said}: this process has reached its open-files limit{limit} (too many open \
                 files); raise the open-files limit (ulimit -n, systemd LimitNOFILE), or see \
                 what holds its files (ls /proc/{pid}/fd)",
                pid = std::process::id()
            ))
        }
        libc::ENFILE => Some(format!(
            "{said}: the system has as many files open as it allows (too many open files in \
             system); raise its limit (sysctl fs.file-max) or end what holds them"
        )),
        _ => None,
    }
}

/// Whether SQLite found the store's file damaged where it read it ("database disk image is
/// malformed"): a file cut short or overwritten, not one that was never SQLite's.
fn is_damage(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt)
}

/// Leaves the damage marker beside the store file `real`, saying `what` was found, so that the
/// other processes on the store give it up too (a running server, whose cache would go on
/// admitting tokens); what to add to the refusal about it.
fn tell_of_damage(real: &Path, what: &str) -> String {
    match leave_damage_marker(real, what) {
        Ok(marker) => format!(
            "; {} now tells every gitgate on the store to refuse it (a running server answers \
             503 to every git request)",
            marker.display()
        ),
        Err(e) => format!(
            "; the marker that tells a running gitgate so could not be written ({e}): stop \
             every gitgate on this store"
        ),
    }
}

/// Whether the file at `path` begins with SQLite's header (`SQLite format 3\0`). An empty
/// or unreadable file answers yes: the damage, if any, is told as such.
fn begins_as_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) {
        Ok(0) | Err(_) => true,
        Ok(n) => b"SQLite format 3\0".starts_with(&head[..n]) && n == 16,
    }
}

/// SQLite's words for a failed open, and what to do about it: for a store this process may not
/// write, which user needs to write which file and folder; for a process out of file
/// descriptors, its limit; for a full disk, the space left. `os` is the system's error under
/// SQLite's (see [`system_errno`]): SQLite's own words are the same for a file this process
/// may not open and for a process out of descriptors.
fn explain_open_error(path: &Path, e: &rusqlite::Error, os: Option<i32>) -> String {
    match e.sqlite_error_code() {
        // Past the busy timeout: another process keeps the store locked even for reading
        // (`PRAGMA locking_mode=EXCLUSIVE`), or holds its write lock while this one must write
        // (a migration as the store is opened: a `sqlite3` shell inside `BEGIN IMMEDIATE`, a
        // long change). Said with who, if known: the one holding the write lock in WAL mode
        // holds it on the `-shm`, not on the store file.
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            let who = match locks::write_lock_holders_named(path).as_slice() {
                [] => "another process".to_string(),
                named => named.join(", "),
            };
            format!(
                "{e}: {who} keeps it locked for more than 5 s (a change still under way, a \
                 sqlite3 shell inside a transaction, or a connection in locking_mode=EXCLUSIVE, \
                 which shuts every other process out), so gitgate cannot open it; nothing was \
                 changed. End that process's transaction (COMMIT or ROLLBACK in a sqlite3 \
                 shell) or the process"
            )
        }
        // A file that does not even begin as SQLite's do was most likely never the store (a
        // path that names the config, a key, a log): said before the advice to restore.
        Some(rusqlite::ErrorCode::NotADatabase) if !begins_as_sqlite(path) => format!(
            "{e}: the file does not begin as an SQLite database does, so it is no gitgate \
             store — check that [store] path names the store; if it was the store, {RESTORE}"
        ),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            format!("{e}: the store is damaged; {RESTORE}")
        }
        // "disk I/O error" alone, when it is a full disk (the `-shm` could not be sized).
        Some(rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::DiskFull) => {
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let folder = match real.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(p) => p.to_path_buf(),
                None => PathBuf::from("."),
            };
            match free_bytes(&folder) {
                Some(free) if free < ROOM_TO_OPEN => format!(
                    "{e}: the file system holding {} has {free} bytes free (no space left?)",
                    folder.display()
                ),
                _ => e.to_string(),
            }
        }
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
            // Through a symbolic link, SQLite writes beside the file the link points at.
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let path = real.as_path();
            // SQLite names the URI it was given (`file:...?immutable=1`), not the cause: a file
            // this process cannot even read is said as such.
            let mut said = e.to_string();
            if let Some(uri) = said.find(": file:") {
                said.truncate(uri);
            }
            if let Some(out) = out_of_descriptors(&said, os) {
                return out;
            }
            if let Err(read) = std::fs::File::open(path) {
                if let Some(out) = out_of_descriptors(&said, read.raw_os_error()) {
                    return out;
                }
                if read.kind() == std::io::ErrorKind::PermissionDenied {
                    return format!(
                        "{said}: this process (uid {uid}) cannot read {file} ({read}); check its \
                         owner and mode",
                        uid = rustix::process::geteuid().as_raw(),
                        file = path.display()
                    );
                }
            }
            // A reader (an auditor's account) that may read the file but not the log and its
            // index beside it, which a running server keeps: not a matter of writing anything.
            for sidecar in ["-wal", "-shm"] {
                let beside = crate::store::sidecar(path, sidecar);
                if let Err(read) = std::fs::File::open(&beside) {
                    if read.kind() == std::io::ErrorKind::PermissionDenied {
                        return format!(
                            "{said}: this process (uid {uid}) cannot read {file} ({read}); an \
                             account that only reads the store must be able to read its -wal \
                             and -shm too (see the README on letting a group read the store)",
                            uid = rustix::process::geteuid().as_raw(),
                            file = beside.display()
                        );
                    }
                }
            }
            let e = said;
            let folder = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(p) => p.display().to_string(),
                None => ".".into(),
            };
            let file = path.display();
            format!(
                "{e}: this process (uid {uid}) must be able to write the file and its folder \
                 {folder}, where SQLite creates {file}-wal and {file}-shm; check their owner \
                 and mode",
                uid = rustix::process::geteuid().as_raw()
            )
        }
        // A statement naming what the tables lack: said without its SQL.
        _ if schema_mismatch(e).is_some() => {
            said_of_a_schema_mismatch(schema_mismatch(e).unwrap_or_default())
        }
        _ => e.to_string(),
    }
}

impl Drop for Inner {
    /// At the stop, leave the store's files as the next start should find them when they were
    /// changed under the running server (see [`Store::check_file`]).
    ///
    /// SQLite checkpoints the write-ahead log into the store file and deletes the `-wal` and
    /// `-shm` when a database's last connection closes (the watcher's, dropped after this) —
    /// unless the file has moved, when it leaves both as they are. Two changes need more:
    /// - **The `-wal` and `-shm` were deleted.** The log this process has open is the old one;
    ///   its commits (a revocation made before the deletion, through the REST API or the CLI)
    ///   are nowhere else, and the checkpoint is what keeps them — unless another process has
    ///   committed to a new `-wal` since. Then the checkpoint would write the old log's pages
    ///   over those commits (a CLI revocation made after the deletion: the revoked token valid
    ///   again after the restart gitgate asks for) and delete the new `-wal` by its name. Two
    ///   logs of one store cannot be merged: the newer one, which every other process has seen,
    ///   wins, and the loss of the old one's commits is logged.
    /// - **The store file was replaced** (a backup moved over it) while the `-wal` stayed:
    ///   SQLite keeps that log, and the next start would apply the old file's log to the new
    ///   file — a mix of the two, or a corrupt store. Which file's commits are meant is not
    ///   gitgate's to guess (a CLI may have committed to the new file through the same log), so
    ///   the log is left and the operator is told what to remove.
    fn drop(&mut self) {
        if self.damaged.load(Ordering::SeqCst) {
            // Found damaged (overwritten, truncated or emptied in place): a checkpoint would
            // write the log's pages into the ruined file and delete the log, which may hold the
            // only copy of the latest commits. Left as it is, for whoever restores the store.
            self.keep_logs_on_close();
            if !self.changes_reported.swap(true, Ordering::Relaxed) {
                self.say_found_damaged();
            }
            return;
        }
        let change = self.changed_files();
        if change == Some(FileChange::LogsDeletedAndRewritten) {
            self.keep_logs_on_close();
        }
        if let Some(change) = change {
            if !self.changes_reported.swap(true, Ordering::Relaxed) {
                self.report(change);
            }
        }
    }
}

/// A change to the store's files under the running server that its close must handle (see
/// [`Inner::drop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileChange {
    /// The `-wal` and `-shm` were deleted, and another process has written a new `-wal`.
    LogsDeletedAndRewritten,
    /// The store file was replaced, and the old file's `-wal` is still there.
    Replaced,
}

impl Inner {
    /// Every connection of this store, the watcher's included, closes without checkpointing
    /// its log into the file and deleting it (see [`Inner::drop`]).
    fn keep_logs_on_close(&mut self) {
        for conn in self
            .idle
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            keep_log_on_close(conn);
        }
        if let Some(conn) = self
            .writer_conn
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            keep_log_on_close(conn);
        }
        keep_log_on_close(&self.cache.watcher());
    }

    /// The log other processes write: beside the store path as it resolves now.
    fn resolved(&self) -> PathBuf {
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
    }

    /// The store's `-wal` and `-shm` were just seen deleted (or moved away) under this process:
    /// write its log — still open, and now the only copy of its commits since the last
    /// checkpoint (a token revoked a minute ago) — into the store file at once, rather than
    /// only at the stop ([`Inner::drop`]). A process killed in between (SIGKILL, the OOM
    /// killer, a stop that runs out of time) would otherwise lose them with the deleted log,
    /// and the revoked token would work again after its restart. Done only while no other
    /// process has begun a log of its own or written the file since the deletion (the
    /// conditions the stop's checkpoint keeps to), and said in the log either way.
    fn apply_own_log(&self) {
        if self.damaged.load(Ordering::SeqCst)
            || self.replaced.load(Ordering::SeqCst)
            || self.own_log_tried.swap(true, Ordering::SeqCst)
        {
            return;
        }
        if !self.cache.no_other_logs(&self.path) || self.changed_files().is_some() {
            tracing::error!(
                path = %crate::log_value::LogFile(&self.path),
                "the store's -wal and -shm were deleted while gitgate was running, and another \
                 process has begun new ones or written the store file since: gitgate's own log \
                 is not written into the store now (the stop says what becomes of it)"
            );
            return;
        }
        let conn = self.cache.watcher();
        // PASSIVE: waits for no reader; what a reader still needs is written at the stop, as
        // before.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        *self
            .own_log_applied_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::time::SystemTime::now());
        match done {
            Ok((_, log, written)) if written >= log => tracing::warn!(
                path = %crate::log_value::LogFile(&self.path),
                pages = written,
                "the store's -wal and -shm were deleted while gitgate was running: its own log \
                 was written into the store file now, so the changes made before the deletion \
                 are kept even if gitgate is killed before its stop"
            ),
            Ok((_, log, written)) => tracing::error!(
                path = %crate::log_value::LogFile(&self.path),
                pages = written,
                of = log,
                "the store's -wal and -shm were deleted while gitgate was running: only part \
                 of its own log could be written into the store file now (a read was under \
                 way); the rest is written at the stop, and is lost if gitgate is killed first"
            ),
            Err(e) => tracing::error!(
                path = %crate::log_value::LogFile(&self.path),
                error = %crate::log_value::LogText(&e.to_string()),
                "the store's -wal and -shm were deleted while gitgate was running, and its own \
                 log could not be written into the store file now: it is written at the stop, \
                 and is lost if gitgate is killed first"
            ),
        }
    }

    fn changed_files(&self) -> Option<FileChange> {
        let resolved = self.resolved();
        let wal = format!("{}-wal", resolved.display());
        let wal_written = || std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
        let opened = *self.file.read().unwrap_or_else(|p| p.into_inner());
        if self.cache.index_unlinked(&self.path) {
            // Another process committed since the deletion if its new log holds something — or
            // if a checkpoint wrote the store file since (`wal_checkpoint(TRUNCATE)` leaves that
            // log empty, the commits in the file): only checkpoints write it, and none of this
            // process's after the deletion.
            // This process's own write of its log into the file (`apply_own_log`) is not
            // another's: the file counts as written since only after it.
            let applied = *self
                .own_log_applied_at
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let since = self
                .cache
                .index_changed_at()
                .map(|deleted| applied.map_or(deleted, |applied| applied.max(deleted)));
            let file_written_since = since.is_some_and(|deleted| {
                std::fs::metadata(&resolved)
                    .and_then(|m| m.modified())
                    .is_ok_and(|written| written > deleted)
            });
            (wal_written() || file_written_since).then_some(FileChange::LogsDeletedAndRewritten)
        } else if file_id(&self.path).is_ok_and(|id| opened != Some(id)) && wal_written() {
            Some(FileChange::Replaced)
        } else {
            None
        }
    }

    /// What the next start needs to know of a store found damaged: its logs are not applied.
    fn say_found_damaged(&self) {
        tracing::error!(
            path = %crate::log_value::LogFile(&self.path),
            "the store was found damaged while gitgate was running: its -wal and -shm are \
             left as they are, unapplied (they may hold the latest changes); restore the \
             store before starting gitgate again (see the README)"
        );
    }

    fn report(&self, change: FileChange) {
        let resolved = self.resolved();
        let wal = format!("{}-wal", resolved.display());
        match change {
            FileChange::LogsDeletedAndRewritten
                if self
                    .own_log_applied_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some() =>
            {
                tracing::error!(
                    "the store's -wal and -shm were deleted while gitgate was running, and \
                     another process has written to the store since (to {wal}, or into the file \
                     by a checkpoint): gitgate's own log was written into {path} when the \
                     deletion was seen; what it wrote to that log after (changes made through \
                     the REST API, last uses, audit events) is left unapplied: check recent \
                     token and user changes",
                    path = self.path.display()
                )
            }
            FileChange::LogsDeletedAndRewritten => tracing::error!(
                "the store's -wal and -shm were deleted while gitgate was running, and \
                 another process has written to the store since (to {wal}, or into the file by a \
                 checkpoint): gitgate's own log from before the deletion is left unapplied, and what only it held is lost (changes \
                 made through the REST API or the CLI that were not yet in {path}, last uses, \
                 audit events): check recent token and user changes",
                path = self.path.display()
            ),
            FileChange::Replaced => {
                // Left for the next open, which would otherwise apply the old file's log to the
                // new file without a word (see `refuse_the_logs_of_a_replaced_file`).
                let marker = replaced_marker(&resolved);
                // Through a symbolic link re-pointed at another store, the log beside the new
                // target is that store's own: no marker, whose refusal would be false.
                let through_a_link = std::fs::symlink_metadata(&self.path)
                    .is_ok_and(|m| m.file_type().is_symlink());
                let said = format!(
                    "seen by gitgate (pid {}) at its stop on {}",
                    std::process::id(),
                    crate::clock::datetime(crate::clock::now_ms())
                );
                let left = if through_a_link {
                    "if the link was re-pointed at another store, that store's log is its own"
                        .to_string()
                } else {
                    match std::fs::write(&marker, format!("{said}\n")) {
                        Ok(()) => format!(
                            "gitgate, its check and its CLI refuse the store until {} is removed",
                            marker.display()
                        ),
                        Err(e) => {
                            format!("the marker {} could not be written ({e})", marker.display())
                        }
                    }
                };
                tracing::error!(
                    "the store file was replaced while gitgate was running, and {wal} is the old \
                     file's write-ahead log: the next start would apply it to the new file; \
                     {left}. If the new file is a restored backup, remove {wal}, {path}-shm and \
                     the marker before starting gitgate again (whatever was written to the new \
                     file since it was put in place went to that log too)",
                    path = resolved.display()
                )
            }
        }
    }
}

/// See [`Inner::drop`].
fn keep_log_on_close(conn: &Connection) {
    if let Err(e) = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true) {
        tracing::error!(error = %crate::log_value::LogText(&e.to_string()), "could not keep a store connection from checkpointing on close");
    }
}

/// `path` for a `file:` URI: the characters a URI gives a meaning (`%`, `?`, `#`) escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// `PRAGMA journal_mode = WAL`, tried again while the busy timeout lasts. The switch needs the
/// file alone, and SQLite answers `SQLITE_BUSY` at once — its busy handler is not asked, as it
/// could deadlock — when another connection holds it: two servers started together on a store
/// not yet in WAL mode (a restored backup, or none at all) would otherwise fail one of them.
fn switch_to_wal(conn: &Connection) -> rusqlite::Result<String> {
    let until = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut tries = 0u64;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < until =>
            {
                // Waits of 5 to 35 ms, unlike the other opener's, so that one gets there.
                tries += 1;
                let spread = u64::from(std::process::id()).wrapping_add(tries * 7) % 31;
                std::thread::sleep(Duration::from_millis(5 + spread));
            }
            switched => return switched,
        }
    }
}

/// A store connection that could not be opened: SQLite's error, and the system's error under
/// it (an `errno`, see [`system_errno`]) when SQLite kept one.
#[derive(Debug)]
struct Unopened {
    error: rusqlite::Error,
    os: Option<i32>,
}

impl Unopened {
    /// What [`explain_open_error`] says of it.
    fn explained(&self, path: &Path) -> String {
        explain_open_error(path, &self.error, self.os)
    }

    /// Whether the system's error under SQLite's says this process or the system is out of
    /// file descriptors (what [`out_of_descriptors`] tells).
    fn for_want_of_descriptors(&self) -> bool {
        matches!(self.os, Some(libc::EMFILE | libc::ENFILE))
    }
}

/// A call's connection while its `f` runs ([`Store::run_on`]), kept by its drop when `f`
/// panics: a panic (a bug in a store call, caught by the blocking pool) dropped it, and a call
/// waiting for a pooled one at the open-files limit was not told, and waited out its full
/// bound. The unwinding has rolled back any transaction `f` began (rusqlite's drop of it); a
/// connection still in one is not kept, and the next call opens one. Its busy timeout is set
/// back, as an inline read of a miss lowers it to zero for its read
/// ([`Store::load_auth_record_now`]).
struct Unwinding<'a> {
    store: &'a Store,
    file: FileId,
    held: Held,
    conn: Option<Connection>,
}

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take().filter(Connection::is_autocommit) else {
            return;
        };
        if conn.busy_timeout(BUSY_TIMEOUT).is_ok() {
            self.store.keep(self.file, conn, self.held);
        }
    }
}

/// Why [`Store::open_new`] opened no connection: the error to answer, and whether it was for
/// want of file descriptors (a pooled connection coming back serves the call then).
struct Unavailable {
    error: StoreError,
    out_of_descriptors: bool,
}

/// [`RETURNED_WITHIN`], or a test's shorter bound.
fn returned_within() -> Duration {
    #[cfg(test)]
    if let Some(within) = test_support::returned_within() {
        return within;
    }
    RETURNED_WITHIN
}

/// The system's error under SQLite's `e` on `conn` (`sqlite3_system_errno`), for the failures
/// SQLite keeps one for (`SQLITE_CANTOPEN`, `SQLITE_IOERR`); `None` for any other. SQLite says
/// "unable to open database file" for a process out of file descriptors (`EMFILE`) as for a
/// file it may not open: only this tells them apart.
fn system_errno(conn: &Connection, e: &rusqlite::Error) -> Option<i32> {
    let rusqlite::Error::SqliteFailure(failure, _) = e else {
        return None;
    };
    if !matches!(
        failure.extended_code & 0xff,
        rusqlite::ffi::SQLITE_CANTOPEN | rusqlite::ffi::SQLITE_IOERR
    ) {
        return None;
    }
    // SAFETY: the handle of a live connection, asked for a number SQLite keeps in it.
    let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
    (errno != 0).then_some(errno)
}

/// `Connection::open_with_flags`, keeping the system's error of a failed open: SQLite keeps it
/// in the handle that `rusqlite` closes before it returns (see [`system_errno`]). SQLite's
/// words are not followed by the file's name, as `rusqlite` has them: every error made of
/// this one names the store already.
fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, Unopened> {
    use std::os::unix::ffi::OsStrExt;
    let unopened = |error| Unopened { error, os: None };
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| unopened(rusqlite::Error::NulError(e)))?;
    let flags = flags | OpenFlags::SQLITE_OPEN_EXRESCODE;
    let mut db: *mut rusqlite::ffi::sqlite3 = std::ptr::null_mut();
    // SAFETY: a NUL-terminated name and a handle for SQLite to fill, owned by the connection
    // made of it below, or closed here.
    let r = unsafe {
        rusqlite::ffi::sqlite3_open_v2(name.as_ptr(), &mut db, flags.bits(), std::ptr::null())
    };
    if r == rusqlite::ffi::SQLITE_OK {
        // SAFETY: opened above, and owned by nothing else.
        return unsafe { Connection::from_handle_owned(db) }.map_err(unopened);
    }
    let failure = rusqlite::ffi::Error::new(r);
    let (message, os) = if db.is_null() {
        (None, None)
    } else {
        // SAFETY: the handle sqlite3_open_v2 gave back, read before it is closed.
        unsafe {
            let said = std::ffi::CStr::from_ptr(rusqlite::ffi::sqlite3_errmsg(db));
            let errno = rusqlite::ffi::sqlite3_system_errno(db);
            (
                Some(said.to_string_lossy().into_owned()),
                (errno != 0).then_some(errno),
            )
        }
    };
    // SAFETY: the handle of a failed open, closed once; a null one is harmless.
    unsafe { rusqlite::ffi::sqlite3_close(db) };
    Err(Unopened {
        error: rusqlite::Error::SqliteFailure(failure, message),
        os,
    })
}

fn connect(path: &Path, create: bool) -> Result<Connection, Unopened> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = open_connection(path, flags)?;
    // The first read (`synchronous` reads the schema) opens the `-wal` and `-shm`: a failure
    // there keeps its system error too.
    let set_up = || -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // FULL: each commit is on the disk before it is acknowledged. With WAL, NORMAL would
        // sync only at checkpoints, and a power loss or OS crash could undo a revocation
        // already answered "revoked" (or lose a token already printed). Commits are few —
        // changes made by people, and the request path's audit events and last-used times in
        // batches (`writer`) — so one sync each costs nothing a request waits for.
        conn.pragma_update(None, "synchronous", "FULL")
    };
    match set_up() {
        Ok(()) => Ok(conn),
        Err(error) => Err(Unopened {
            os: system_errno(&conn, &error),
            error,
        }),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Every insert into the audit table of the store at `db` fails from now on, as on a full
    /// disk, until `DROP TRIGGER refuse`.
    pub fn refuse_audit_inserts(db: &Path) {
        Connection::open(db)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_events \
                 BEGIN SELECT RAISE(ABORT, 'no space left (test)'); END;",
            )
            .unwrap();
    }

    /// What `f` logs (all levels gitgate's default shows), as text.
    pub fn logged(f: impl FnOnce()) -> String {
        captured(false, f)
    }

    /// What `f` logs, as `GITGATE_LOG_FORMAT=json` writes it (see `crate::log_json`).
    pub fn logged_as_json(f: impl FnOnce()) -> String {
        captured(true, f)
    }

    fn captured(json: bool, f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        // With one subscriber registered, tracing works out a callsite's interest from the
        // default of whichever thread hits it first, and keeps it for every thread: a test on
        // another thread, without a subscriber, that hits a log line first (two tests of the
        // same code) leaves it "never" for this one — an empty capture, 3 runs in 5. A second
        // one, kept for good and interested in nothing, makes tracing ask every registered
        // subscriber ("sometimes"), and each event its own thread's.
        static ANOTHER: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        ANOTHER.get_or_init(|| {
            let another = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
            drop(tracing::dispatcher::set_default(&another));
            another
        });
        let captured = Captured::default();
        let sink = captured.clone();
        let lines = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone());
        let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if json {
            Box::new(lines.event_format(crate::log_json::JsonLines).finish())
        } else {
            Box::new(lines.finish())
        };
        tracing::subscriber::with_default(subscriber, || {
            // Tests run in parallel, each with its own subscriber: a callsite first hit while
            // another thread's subscriber came or went can keep an interest worked out without
            // this one's (an event missing from the capture: seen once in six runs of the store tests).
            tracing::callsite::rebuild_interest_cache();
            f()
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    thread_local! {
        /// Run by [`Store::snapshot`] on this thread while its next copy is under way.
        static DURING_THE_COPY: std::cell::RefCell<Option<Box<dyn FnOnce() + Send>>> =
            const { std::cell::RefCell::new(None) };
    }

    thread_local! {
        /// How many copies [`Store::snapshot`] made on this thread.
        pub static COPIES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        /// How many connections [`Store::with_conn`] and its kin opened on this thread (none
        /// kept for them).
        pub static OPENED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// The bound of a wait for a pooled connection ([`Store::wait_for_a_returned`]) in this
    /// process, in ms; 0 for [`RETURNED_WITHIN`]. Set only in a child process of the
    /// descriptor-limit tests, which runs that test alone.
    static RETURNED_WITHIN_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// Waits for a pooled connection in this process are bounded by `within`.
    pub fn bound_waits_for_a_connection(within: Duration) {
        RETURNED_WITHIN_MS.store(within.as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn returned_within() -> Option<Duration> {
        let ms = RETURNED_WITHIN_MS.load(Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    thread_local! {
        /// Run by [`Store::back_up`] on this thread once `to` was found free.
        static AFTER_THE_CHECK: std::cell::RefCell<Option<Box<dyn FnOnce() + Send>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Have `f` run in this thread's next [`Store::back_up`] after it found `to` free, before
    /// the copy: as another process making a file there at that moment.
    pub fn after_the_next_backup_check(f: impl FnOnce() + Send + 'static) {
        AFTER_THE_CHECK.with(|d| *d.borrow_mut() = Some(Box::new(f)));
    }

    pub(super) fn run_after_the_check() {
        if let Some(f) = AFTER_THE_CHECK.with(|d| d.borrow_mut().take()) {
            f();
        }
    }

    /// Have `f` run in the middle of this thread's next [`Store::snapshot`] copy.
    pub fn during_the_next_copy(f: impl FnOnce() + Send + 'static) {
        DURING_THE_COPY.with(|d| *d.borrow_mut() = Some(Box::new(f)));
    }

    /// For [`Store::snapshot`]: the hook [`during_the_next_copy`] set, run once the store is
    /// open for the copy and read (its schema), before the pages are copied.
    pub(super) fn run_during_the_copy() {
        if let Some(f) = DURING_THE_COPY.with(|d| d.borrow_mut().take()) {
            f();
        }
    }

    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        (dir, store)
    }

    /// Runs `sql` on [`temp_store`]'s file through a connection of its own, as an operator
    /// editing the store by hand would (a row gitgate would never write, a newer schema).
    pub fn edit_by_hand(dir: &tempfile::TempDir, sql: &str) {
        rusqlite::Connection::open(dir.path().join("t.db"))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }

    pub fn actor() -> Actor {
        Actor {
            name: "test".into(),
            source: "local".into(),
            logged_in_as_admin: None,
            request: None,
        }
    }

    /// A REPO_READ personal token of `owner`, without expiry, for tests that only need one.
    pub fn personal_token<'a>(id: &'a str, name: &'a str, owner: &'a str) -> NewToken<'a> {
        let kind = crate::permission::TokenKind::Personal;
        NewToken {
            id,
            kind,
            name,
            owner: Some(owner),
            scope: None,
            permissions: crate::permission::TokenPermissions::from_names(kind, &["REPO_READ"])
                .unwrap(),
            secret_hash: [7; 32],
            expires_at: None,
            allowed_networks: &[],
            created_at: 1,
        }
    }

    /// A REPO_READ repository token for `scope`, without expiry.
    pub fn repository_token<'a>(
        id: &'a str,
        name: &'a str,
        scope: &'a crate::policy::Target,
    ) -> NewToken<'a> {
        let kind = crate::permission::TokenKind::Repository;
        NewToken {
            owner: None,
            scope: Some(scope),
            kind,
            permissions: crate::permission::TokenPermissions::from_names(kind, &["REPO_READ"])
                .unwrap(),
            ..personal_token(id, name, "")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::temp_store;
    use super::*;
    use rusqlite::OptionalExtension;

    /// A store whose tables were changed by hand under a running server fails every token
    /// lookup: it is not ready (its `SELECT 1`s alone passed), and says why without its SQL; a
    /// table renamed is a gitgate store that lost one, not another program's.
    #[test]
    fn a_store_changed_by_hand_is_not_ready_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path).unwrap();
        store.ping().unwrap();
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("ALTER TABLE tokens RENAME COLUMN revoked_at TO revoked_at_x")
            .unwrap();
        let e = store.ping().unwrap_err();
        assert!(e.is_schema_mismatch(), "{e}");
        let said = e.to_string();
        assert!(
            said.contains("no such column") && said.contains("restore it from a backup"),
            "{said}"
        );
        assert!(!said.contains("SELECT"), "{said}");
        c.execute_batch("ALTER TABLE tokens RENAME COLUMN revoked_at_x TO revoked_at")
            .unwrap();
        store.ping().unwrap();
        drop(store);
        c.execute_batch("ALTER TABLE grants RENAME TO grants_old")
            .unwrap();
        drop(c);
        let said = Store::open(&path).map(drop).unwrap_err().to_string();
        assert!(
            said.contains("has lost its table(s) 'grants' (it has table(s) 'grants_old' instead)"),
            "{said}"
        );
    }

    /// Two servers started together on a store not yet in WAL mode (a backup restored, made by
    /// `VACUUM INTO`; or no store at all) both open it: the switch to WAL, which SQLite
    /// refuses at once rather than wait for when another connection holds the file, is tried
    /// again while the busy timeout lasts. It used to fail one of them in about a third of
    /// the starts, saying the other "keeps it locked for more than 5 s" after 0.1 s.
    #[test]
    fn stores_opened_at_once_on_a_file_not_in_wal_mode_all_open() {
        for round in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("restored.db");
            if round % 3 != 2 {
                drop(Store::open(&path).unwrap());
                let c = rusqlite::Connection::open(&path).unwrap();
                let mode: String = c
                    .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(mode, "delete");
            }
            let at_once = std::sync::Arc::new(std::sync::Barrier::new(4));
            let opening: Vec<_> = (0..4)
                .map(|_| {
                    let (path, at_once) = (path.clone(), at_once.clone());
                    std::thread::spawn(move || {
                        at_once.wait();
                        Store::open(&path).map(drop).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for opened in opening {
                opened.join().unwrap().unwrap();
            }
        }
    }

    /// A store without a `-wal` is copied without locks: one written while it is being copied
    /// (a CLI command that opens it, commits and checkpoints into the file, which tore copies of
    /// a 580 MB store) is copied again, so the copy is whole and has the change. Here the write
    /// comes between the copy's read of the schema and of the pages: the file changed, so the
    /// copy is made a second time; unchanged, once.
    /// `gitgate backup TO`: a file someone makes at `to` after the check that nothing is there
    /// (or during the copy) is neither removed nor overwritten: the backup fails saying so, and
    /// only the copy it made is removed. With `to` free, the copy is put there, mode 0600.
    #[test]
    fn a_file_made_at_a_backups_name_meanwhile_is_left_as_it_is() {
        use super::test_support::{actor, after_the_next_backup_check, during_the_next_copy};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path).unwrap();
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        drop(store);
        let to = dir.path().join("backup.db");
        let files = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        for during in [false, true] {
            let theirs = to.clone();
            let make_theirs = move || std::fs::write(&theirs, b"someone else's").unwrap();
            if during {
                during_the_next_copy(make_theirs);
            } else {
                after_the_next_backup_check(make_theirs);
            }
            let err = Store::back_up(&path, &to).unwrap_err().to_string();
            assert!(
                err.contains("appeared while the backup was being made: it was left as it is"),
                "{err}"
            );
            assert_eq!(
                std::fs::read(&to).unwrap(),
                b"someone else's",
                "during {during}"
            );
            assert_eq!(files(), ["backup.db", "t.db"], "during {during}");
            std::fs::remove_file(&to).unwrap();
        }
        let bytes = Store::back_up(&path, &to).unwrap();
        assert_eq!(std::fs::metadata(&to).unwrap().len(), bytes);
        let mode = std::fs::metadata(&to).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(files(), ["backup.db", "t.db"]);
        let users = Store::open(&to).unwrap().users().unwrap();
        assert_eq!(users.len(), 1);
    }

    #[test]
    fn a_store_written_during_its_copy_is_copied_again() {
        use super::test_support::{actor, during_the_next_copy, COPIES};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path).unwrap();
        for i in 0..50 {
            store
                .add_user(&format!("user{i}"), "x", Role::User, &actor())
                .unwrap();
        }
        drop(store);
        assert!(!sidecar(&path, "-wal").exists(), "the premise: no -wal");
        let writer = path.clone();
        during_the_next_copy(move || {
            let store = Store::open(&writer).unwrap();
            store.add_user("late", "x", Role::User, &actor()).unwrap();
            drop(store);
        });
        COPIES.with(|c| c.set(0));
        let copy = Store::snapshot(&path, Snapshot::folder().unwrap()).unwrap();
        assert_eq!(COPIES.with(|c| c.get()), 2);
        let read = Store::open(copy.path()).unwrap();
        let users = read.users().unwrap();
        assert_eq!(users.len(), 51);
        assert!(users.iter().any(|u| u.slug == "late"));
        drop(read);
        let dir_of_copy = copy.dir().to_path_buf();
        drop(copy);
        assert!(!dir_of_copy.exists());
        COPIES.with(|c| c.set(0));
        drop(Store::snapshot(&path, Snapshot::folder().unwrap()).unwrap());
        assert_eq!(COPIES.with(|c| c.get()), 1);
    }

    #[test]
    fn a_folder_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("that is a folder"), "{e}");
        // Nor a device: SQLite would take /dev/null for an empty store, its -wal beside it.
        for device in ["/dev/null", "/dev/zero"] {
            for e in [
                Store::open(Path::new(device)).err().map(|e| e.to_string()),
                Store::inspect(Path::new(device))
                    .err()
                    .map(|e| e.to_string()),
            ] {
                let e = e.expect("refused");
                assert!(e.contains("that is not a regular file"), "{e}");
            }
        }
        assert!(!Path::new("/dev/null-wal").exists());
    }

    #[test]
    fn a_damaged_tokens_table_fails_the_health_check() {
        let (dir, store) = temp_store();
        let path = dir.path().join("t.db");
        store
            .add_user("alice", "h", Role::User, &test_support::actor())
            .unwrap();
        store
            .insert_token(
                &test_support::personal_token("abcdefghijkl", "t", "alice"),
                &test_support::actor(),
            )
            .unwrap();
        store.ping().unwrap();
        drop(store);
        // Every connection closed: the log is checkpointed into the file. Overwrite the
        // tokens table's root page, as a disk error would.
        let (root, page_size): (i64, i64) = {
            let c = Connection::open(&path).unwrap();
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            let root = c
                .query_row(
                    "SELECT rootpage FROM sqlite_master WHERE name = 'tokens'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            (
                root,
                c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap(),
            )
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let at = ((root - 1) * page_size) as usize;
        bytes[at..at + page_size as usize].fill(0xA5);
        std::fs::write(&path, bytes).unwrap();

        let store = Store::open(&path).unwrap();
        let err = store.ping().unwrap_err().to_string();
        assert!(err.contains("malformed"), "{err}");
    }

    /// What says "out of file descriptors" is the system's error under SQLite's "unable to
    /// open database file", not how many files this process has open (it was a count against
    /// the limit: a guess either way).
    #[test]
    fn out_of_descriptors_is_told_by_the_system_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, "").unwrap();
        let cannot_open = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some("unable to open database file".into()),
        );
        let said = |os| explain_open_error(&path, &cannot_open, os);
        let emfile = said(Some(libc::EMFILE));
        let limit = "unable to open database file: this process has reached its open-files limit";
        assert!(
            emfile.starts_with(limit) && emfile.contains("(too many open files)"),
            "{emfile}"
        );
        let enfile = said(Some(libc::ENFILE));
        assert!(enfile.contains("too many open files in system"), "{enfile}");
        for os in [
            None,
            Some(libc::EACCES),
            Some(libc::ENOENT),
            Some(libc::EIO),
        ] {
            let said = said(os);
            assert!(!said.contains("open files"), "{os:?}: {said}");
            assert!(said.contains("must be able to write"), "{os:?}: {said}");
        }
    }

    /// Set for the child process of
    /// [`a_connection_that_cannot_be_opened_for_want_of_descriptors_says_so`].
    const DESCRIPTOR_CHILD: &str = "GITGATE_TEST_DESCRIPTOR_LIMIT_CHILD";

    /// An open of a store connection that fails for want of file descriptors (`EMFILE`) says
    /// so, with what to do — SQLite's "unable to open database file" is also its word for a
    /// file this process may not open — when a server's call opens one (the main file, or the
    /// `-wal` at the first read), as at the start and in a check. Run in a child process
    /// (this test binary again), whose open-files limit alone is lowered.
    #[test]
    fn a_connection_that_cannot_be_opened_for_want_of_descriptors_says_so() {
        if std::env::var_os(DESCRIPTOR_CHILD).is_some() {
            return at_the_descriptor_limit();
        }
        in_a_child(
            "store::tests::a_connection_that_cannot_be_opened_for_want_of_descriptors_says_so",
        );
    }

    /// Runs the test `name` of this binary again in a child process, with [`DESCRIPTOR_CHILD`]
    /// set: its open-files limit can be lowered without this process's other tests meeting it.
    /// The child's part says "checked at the limit" once it has.
    fn in_a_child(name: &str) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(DESCRIPTOR_CHILD, "1")
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}");
        assert!(
            said.contains("checked at the limit"),
            "the child ran:\n{said}"
        );
    }

    /// The open-files limit at which this process can open `free` more files: the limit bounds
    /// the numbers of its descriptors, not how many are open, and a new one takes the lowest
    /// number free.
    fn limit_leaving(free: usize) -> u64 {
        let listing = format!("/proc/{}/fd", std::process::id());
        let open: std::collections::HashSet<u64> = std::fs::read_dir(&listing)
            .unwrap()
            .flatten()
            // Not the listing's own, closed once it is read.
            .filter(|e| std::fs::read_link(e.path()).ok() != Some(PathBuf::from(&listing)))
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        (0..).filter(|n| !open.contains(n)).nth(free).unwrap()
    }

    /// The child's part: opens at the limit, none or one descriptor left.
    fn at_the_descriptor_limit() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let (dir, store) = temp_store();
        let path = dir.path().join("t.db");
        store.setting("x").unwrap();
        let before = getrlimit(Resource::Nofile);
        let mut said = Vec::new();
        // None left: the store file cannot be opened; one: the file can, its `-wal` cannot.
        // The next call opens a connection: the pooled one is held (as the store's writer held
        // it, committing). Not closed: SQLite keeps a closed connection's descriptor of the
        // file for the next open of it, which would then need one less.
        let held = store.inner.idle.lock().unwrap().pop();
        assert!(held.is_some());
        for (free, call) in [(0, "a call, none left"), (1, "a call, one left")] {
            let lowered = Rlimit {
                current: Some(limit_leaving(free)),
                maximum: before.maximum,
            };
            setrlimit(Resource::Nofile, lowered).unwrap();
            let at_run_time = store.setting("x").map(drop).map_err(|e| e.to_string());
            setrlimit(Resource::Nofile, before).unwrap();
            said.push((call, at_run_time));
        }
        drop(held);
        // At a start (`Store::open`) and in a check (`Store::inspect`), none left.
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(limit_leaving(0)),
                maximum: before.maximum,
            },
        )
        .unwrap();
        let started = Store::open(&path).map(drop).map_err(|e| e.to_string());
        let checked = Store::inspect(&path).map(drop).map_err(|e| e.to_string());
        setrlimit(Resource::Nofile, before).unwrap();
        said.push(("a start", started));
        said.push(("a check", checked));
        for (what, said) in said {
            let said = said.expect_err("an open at the limit failed");
            assert!(
                said.contains("open-files limit") && said.contains("(too many open files)"),
                "{what}: {said}"
            );
            assert!(!said.contains("must be able to write"), "{what}: {said}");
            println!("{what}: {said}");
        }
        // With descriptors again, the store is served.
        store.inner.idle.lock().unwrap().clear();
        assert_eq!(store.setting("x").unwrap(), None);
        println!("checked at the limit");
    }

    /// Orders 20,000 rows by 200 random bytes each: more than SQLite sorts in memory, so it
    /// opens a temporary file to sort them (the connection's `temp_store`, a file by default).
    const A_SORT_ON_DISK: &str = "WITH RECURSIVE n(i) AS \
        (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
        SELECT i FROM n ORDER BY randomblob(200)";

    /// A statement on a connection already open that opens a file of its own — here a sort's
    /// temporary file; any file SQLite opens for a statement is met the same way — and fails
    /// for want of file descriptors says so as an open does, not in SQLite's words alone
    /// ("unable to open database file"), and in the same words each time (the gate says each
    /// cause once). Run in a child process, whose open-files limit alone is lowered.
    #[test]
    fn a_statement_that_cannot_open_a_file_for_want_of_descriptors_says_so() {
        if std::env::var_os(DESCRIPTOR_CHILD).is_some() {
            return a_statement_at_the_descriptor_limit();
        }
        in_a_child(
            "store::tests::a_statement_that_cannot_open_a_file_for_want_of_descriptors_says_so",
        );
    }

    /// The child's part: the pooled connection open, a sort on it with no descriptor left.
    fn a_statement_at_the_descriptor_limit() {
        let (_dir, store) = temp_store();
        let sort = |c: &mut Connection| -> Result<i64> {
            Ok(c.query_row(A_SORT_ON_DISK, [], |r| r.get(0))?)
        };
        store.with_conn(sort).unwrap();
        let limit = AtTheLimit::now();
        let failed: Vec<_> = (0..2).map(|_| store.with_conn(sort)).collect();
        // What needs no file is still served on that connection.
        let read = store.setting("x");
        drop(limit);
        assert_eq!(read.unwrap(), None);
        // The store unavailable, as when a connection cannot be opened: `503` for the REST API.
        assert!(
            matches!(failed[0], Err(StoreError::Open { .. })),
            "{:?}",
            failed[0]
        );
        let said: Vec<_> = failed
            .into_iter()
            .map(|f| f.map(drop).map_err(|e| e.to_string()))
            .collect();
        let first = said[0].clone().expect_err("a sort at the limit failed");
        assert!(
            first.contains("open-files limit") && first.contains("(too many open files)"),
            "{first}"
        );
        assert!(!first.contains("must be able to write"), "{first}");
        assert_eq!(said[1], Err(first.clone()), "the same words each time");
        println!("a sort: {first}");
        // With descriptors again, on the same connection.
        assert_eq!(store.inner.idle.lock().unwrap().len(), 1);
        store.with_conn(sort).unwrap();
        println!("checked at the limit");
    }

    /// Two lookups at once at the open-files limit, before any two had come at once — one
    /// reading its token on a pooled connection, a cache miss read meanwhile — both read on
    /// connections opened at the start ([`Store::fill_pool`]). Before, the pool had the one
    /// connection its open left until calls came at once, and the second lookup's new one
    /// failed: a valid token refused with a `503`. Run in a child process, whose open-files
    /// limit alone is lowered.
    #[test]
    fn two_lookups_at_once_at_the_descriptor_limit_open_no_connection() {
        if std::env::var_os(DESCRIPTOR_CHILD).is_some() {
            return two_lookups_at_the_descriptor_limit();
        }
        in_a_child("store::tests::two_lookups_at_once_at_the_descriptor_limit_open_no_connection");
    }

    /// The child's part: a store as `serve` opens it, no descriptor left, two lookups at once.
    fn two_lookups_at_the_descriptor_limit() {
        use std::sync::Barrier;
        let (_dir, store) = temp_store();
        store
            .add_user("alice", "h", Role::User, &test_support::actor())
            .unwrap();
        let token = test_support::personal_token("abcdefghijkl", "laptop", "alice");
        store.insert_token(&token, &test_support::actor()).unwrap();
        store.fill_pool().unwrap();
        let limit = AtTheLimit::now();
        let (reading, read) = (Barrier::new(2), Barrier::new(2));
        let (first, second) = std::thread::scope(|s| {
            let first = s.spawn(|| {
                store.with_conn_checking_itself(|c| {
                    reading.wait();
                    let found = tokens::auth_record_in(c, "abcdefghijkl");
                    read.wait();
                    found
                })
            });
            reading.wait();
            let second = store.auth_record_cached("abcdefghijkl");
            read.wait();
            (first.join().unwrap(), second)
        });
        drop(limit);
        assert!(first.unwrap().is_some(), "the first lookup found its token");
        let second = second.map_err(|e| e.to_string());
        assert!(
            second.unwrap().is_some(),
            "the second lookup found its token"
        );
        println!("checked at the limit");
    }

    /// `call` on a thread of `s`, once the store counts it as waiting for a pooled connection
    /// (it must come to wait: one that ends first fails the test with what it returned).
    fn waiting_in<'s, T: Send + std::fmt::Debug + 's>(
        s: &'s std::thread::Scope<'s, '_>,
        store: &Store,
        call: impl FnOnce() -> T + Send + 's,
    ) -> std::thread::ScopedJoinHandle<'s, T> {
        let call = s.spawn(call);
        while store.inner.waiting.load(Ordering::Relaxed) == 0 {
            assert!(!call.is_finished(), "{:?}", call.join());
            std::thread::sleep(Duration::from_millis(5));
        }
        call
    }

    /// Runs `during` with every pooled connection of `store` held by a thread of its own, as
    /// calls under way hold them; `let_go(n)` has the first `n` holders put theirs back. All
    /// are let go at the end, `during`'s panic included.
    fn with_the_pool_held<T>(store: &Store, during: impl FnOnce(&dyn Fn(usize)) -> T) -> T {
        use std::sync::{Barrier, Condvar};
        struct LetGo<'a>(&'a (Mutex<usize>, Condvar));
        impl LetGo<'_> {
            fn first(&self, n: usize) {
                let mut released = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
                *released = n.max(*released);
                self.0 .1.notify_all();
            }
        }
        impl Drop for LetGo<'_> {
            fn drop(&mut self) {
                self.first(POOL_SIZE);
            }
        }
        let released = (Mutex::new(0usize), Condvar::new());
        let holding = Barrier::new(POOL_SIZE + 1);
        std::thread::scope(|s| {
            let let_go = LetGo(&released);
            for i in 0..POOL_SIZE {
                let (released, holding) = (&released, &holding);
                s.spawn(move || {
                    store.with_conn(|_| {
                        holding.wait();
                        let mut n = released.0.lock().unwrap_or_else(|p| p.into_inner());
                        while *n <= i {
                            n = released.1.wait(n).unwrap_or_else(|p| p.into_inner());
                        }
                        Ok(())
                    })
                });
            }
            holding.wait();
            assert!(
                store.inner.idle.lock().unwrap().is_empty(),
                "every pooled connection is held"
            );
            during(&|n| let_go.first(n))
        })
    }

    /// The open-files limit lowered to leave no descriptor, for as long as the value lives.
    struct AtTheLimit(rustix::process::Rlimit);

    impl AtTheLimit {
        fn now() -> AtTheLimit {
            use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
            let before = getrlimit(Resource::Nofile);
            let lowered = Rlimit {
                current: Some(limit_leaving(0)),
                maximum: before.maximum,
            };
            setrlimit(Resource::Nofile, lowered).unwrap();
            AtTheLimit(before)
        }
    }

    impl Drop for AtTheLimit {
        fn drop(&mut self) {
            use rustix::process::{setrlimit, Resource};
            setrlimit(Resource::Nofile, self.0).unwrap();
        }
    }

    /// A call that finds every pooled connection taken at the open-files limit waits for one
    /// to come back (about 100 ms here) and is served on it. Before, the open it tried failed
    /// and so did the call: a burst of more than eight store calls at the limit was answered
    /// `503`s, though a connection came back within milliseconds. Run in a child process, whose
    /// open-files limit alone is lowered.
    #[test]
    fn a_call_past_the_pooled_connections_at_the_descriptor_limit_waits_for_one() {
        if std::env::var_os(DESCRIPTOR_CHILD).is_some() {
            return a_ninth_call_at_the_descriptor_limit();
        }
        in_a_child(
            "store::tests::a_call_past_the_pooled_connections_at_the_descriptor_limit_waits_for_one",
        );
    }

    /// The child's part: the eight held, no descriptor left, a ninth call, one let go after
    /// 100 ms.
    fn a_ninth_call_at_the_descriptor_limit() {
        let (_dir, store) = temp_store();
        store.fill_pool().unwrap();
        let (read, took, opened) = with_the_pool_held(&store, |let_go| {
            let _limit = AtTheLimit::now();
            std::thread::scope(|s| {
                // Waiting (before, its open failed and so did it), then 100 ms more.
                let ninth = waiting_in(s, &store, || {
                    let started = Instant::now();
                    let read = store.setting("x").map_err(|e| e.to_string());
                    let opened = test_support::OPENED.with(|n| n.get());
                    (read, started.elapsed(), opened)
                });
                std::thread::sleep(Duration::from_millis(100));
                let_go(1);
                ninth.join().unwrap()
            })
        });
        assert_eq!(read, Ok(None), "the ninth call was served");
        assert_eq!(opened, 1, "it tried to open a connection first");
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < RETURNED_WITHIN, "{took:?}");
        assert_eq!(store.inner.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(store.inner.idle.lock().unwrap().len(), POOL_SIZE);
        println!("waited {took:?}; checked at the limit");
    }

    /// The wait for a pooled connection at the open-files limit is bounded: with the eight held
    /// for longer, a call on a blocking thread fails after the bound (300 ms here, 2 s when
    /// serving), with the open's words; on an event loop it does not wait at all. Run in a child
    /// process, whose open-files limit alone is lowered.
    #[test]
    fn a_wait_for_a_pooled_connection_at_the_descriptor_limit_is_bounded() {
        if std::env::var_os(DESCRIPTOR_CHILD).is_some() {
            return a_bounded_wait_at_the_descriptor_limit();
        }
        in_a_child(
            "store::tests::a_wait_for_a_pooled_connection_at_the_descriptor_limit_is_bounded",
        );
    }

    /// The child's part: the eight held throughout, no descriptor left, a call on the event
    /// loop and one on a blocking thread.
    fn a_bounded_wait_at_the_descriptor_limit() {
        let bound = Duration::from_millis(300);
        test_support::bound_waits_for_a_connection(bound);
        let (_dir, store) = temp_store();
        store.fill_pool().unwrap();
        // Built with its descriptors before the limit is lowered.
        let runtime =
            crate::blocking_pool::configure(&mut tokio::runtime::Builder::new_current_thread())
                .enable_all()
                .build()
                .unwrap();
        let timed = |call: &dyn Fn() -> Result<Option<String>>| {
            let started = Instant::now();
            let read = call().map_err(|e| e.to_string());
            (read, started.elapsed())
        };
        let (on_the_loop, on_a_blocking_thread) = with_the_pool_held(&store, |_| {
            let _limit = AtTheLimit::now();
            runtime.block_on(async {
                let on_the_loop = timed(&|| store.setting("x"));
                let s = store.clone();
                let blocking = tokio::task::spawn_blocking(move || timed(&|| s.setting("x")));
                (on_the_loop, blocking.await.unwrap())
            })
        });
        for (what, (read, took)) in [
            ("on the event loop", &on_the_loop),
            ("on a blocking thread", &on_a_blocking_thread),
        ] {
            let said = read.clone().expect_err(what);
            assert!(
                said.contains("open-files limit") && said.contains("(too many open files)"),
                "{what}: {said}"
            );
            println!("{what}, after {took:?}: {said}");
        }
        assert!(on_the_loop.1 < bound / 2, "{:?}", on_the_loop.1);
        let waited = on_a_blocking_thread.1;
        assert!(waited >= bound, "{waited:?}");
        assert!(waited < bound + Duration::from_secs(1), "{waited:?}");
        assert_eq!(store.inner.waiting.load(Ordering::Relaxed), 0);
        // The eight back, calls are served at once.
        assert_eq!(store.setting("x").unwrap(), None);
        println!("checked at the limit");
    }

    /// A call waiting for a pooled connection at the open-files limit fails as soon as the
    /// store gives up (here its file emptied, found by another call), with the store's reason,
    /// not at the end of its wait with the open's. Run in a child process.
    #[test]
    fn a_wait_for_a_pooled_connection_ends_when_the_store_gives_up() {
        if std::env::var_os(DESCRIPTOR_CHILD).is_some() {
            return a_wait_as_the_store_gives_up();
        }
        in_a_child("store::tests::a_wait_for_a_pooled_connection_ends_when_the_store_gives_up");
    }

    /// The child's part: the eight held, a ninth call waiting, the file emptied.
    fn a_wait_as_the_store_gives_up() {
        let (dir, store) = temp_store();
        store.fill_pool().unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("t.db"))
            .unwrap();
        let (read, took) = with_the_pool_held(&store, |_| {
            std::thread::scope(|s| {
                let limit = AtTheLimit::now();
                let ninth = waiting_in(s, &store, || {
                    let started = Instant::now();
                    let read = store.setting("x").map_err(|e| e.to_string());
                    (read, started.elapsed())
                });
                drop(limit);
                file.set_len(0).unwrap();
                let found = store.setting("x").map(drop).map_err(|e| e.to_string());
                assert!(
                    found.as_ref().unwrap_err().contains("found damaged"),
                    "{found:?}"
                );
                ninth.join().unwrap()
            })
        });
        let said = read.expect_err("the store gave up");
        assert!(said.contains("found damaged"), "{said}");
        assert!(!said.contains("open-files limit"), "{said}");
        assert!(took < RETURNED_WITHIN / 2, "{took:?}");
        println!("ended after {took:?}: {said}; checked at the limit");
    }

    /// A call that waited for a pooled connection at the open-files limit and took one, but
    /// whose file check then failed (the store file renamed away meanwhile), gives the
    /// connection back: the file renamed back, the pool has its eight again. Before, the call
    /// dropped it, and the pool was one short until a restart (at the limit, one call more
    /// failed). Run in a child process.
    #[test]
    fn a_wait_whose_file_check_fails_gives_its_connection_back() {
        if std::env::var_os(DESCRIPTOR_CHILD).is_some() {
            return a_wait_whose_check_fails();
        }
        in_a_child("store::tests::a_wait_whose_file_check_fails_gives_its_connection_back");
    }

    /// The child's part: the eight held, a ninth call waiting, the file renamed away, one let
    /// go, the file renamed back.
    fn a_wait_whose_check_fails() {
        let (dir, store) = temp_store();
        store.fill_pool().unwrap();
        let (path, away) = (dir.path().join("t.db"), dir.path().join("t.db.away"));
        let read = with_the_pool_held(&store, |let_go| {
            std::thread::scope(|s| {
                let limit = AtTheLimit::now();
                let ninth = waiting_in(s, &store, || store.setting("x").map_err(|e| e.to_string()));
                std::fs::rename(&path, &away).unwrap();
                let_go(1);
                let read = ninth.join().unwrap();
                drop(limit);
                std::fs::rename(&away, &path).unwrap();
                read
            })
        });
        let said = read.expect_err("the file was away");
        assert!(said.contains("unavailable"), "{said}");
        assert_eq!(
            store.inner.idle.lock().unwrap().len(),
            POOL_SIZE,
            "the connection the wait took is back in the pool"
        );
        assert_eq!(store.setting("x").unwrap(), None);
        println!("{said}; checked at the limit");
    }

    /// A call that panics gives its connection back, and a call waiting for one at the
    /// open-files limit is served on it at once. Before, the panic dropped the connection
    /// without a word to the waiter, which waited out its full bound and then failed with the
    /// open's words. Run in a child process.
    #[test]
    fn a_call_that_panics_gives_its_connection_to_a_waiting_call() {
        if std::env::var_os(DESCRIPTOR_CHILD).is_some() {
            return a_panic_while_a_call_waits();
        }
        in_a_child("store::tests::a_call_that_panics_gives_its_connection_to_a_waiting_call");
    }

    /// The child's part: seven pooled connections taken away, the eighth held by a call that
    /// panics once a ninth waits.
    fn a_panic_while_a_call_waits() {
        use std::sync::Barrier;
        let (_dir, store) = temp_store();
        store.fill_pool().unwrap();
        let others: Vec<Connection> = store
            .inner
            .idle
            .lock()
            .unwrap()
            .drain(..POOL_SIZE - 1)
            .collect();
        let (holding, panic_now) = (Barrier::new(2), Barrier::new(2));
        let (panicked, read, took) = std::thread::scope(|s| {
            let panicking = s.spawn(|| {
                store.with_conn(|c| {
                    // In a transaction, as a write's call is.
                    let tx = c.transaction()?;
                    setting_in(&tx, "x")?;
                    holding.wait();
                    panic_now.wait();
                    panic!("a bug in a store call");
                    #[allow(unreachable_code)]
                    Ok(())
                })
            });
            holding.wait();
            assert!(store.inner.idle.lock().unwrap().is_empty());
            let limit = AtTheLimit::now();
            let ninth = waiting_in(s, &store, || {
                let started = Instant::now();
                let read = store.setting("x").map_err(|e| e.to_string());
                (read, started.elapsed())
            });
            panic_now.wait();
            let panicked = panicking.join().is_err();
            let (read, took) = ninth.join().unwrap();
            drop(limit);
            (panicked, read, took)
        });
        assert!(panicked);
        assert_eq!(read, Ok(None), "the waiting call was served");
        assert!(took < RETURNED_WITHIN / 2, "{took:?}");
        drop(others);
        assert_eq!(store.inner.idle.lock().unwrap().len(), 1);
        println!("served after {took:?}; checked at the limit");
    }

    /// `serve`'s start opens the writer's connection with the pool: its first commit opens
    /// none (at the open-files limit, that commit failed).
    #[test]
    fn the_writers_connection_is_open_from_the_start() {
        let (_dir, store) = temp_store();
        store.fill_pool().unwrap();
        assert!(store.inner.writer_conn.lock().unwrap().is_some());
        let opened = test_support::OPENED.with(|n| n.get());
        store.write_bookkeeping(|_| Ok(())).unwrap();
        assert_eq!(test_support::OPENED.with(|n| n.get()), opened);
        // Filled again (no second start does; a call twice is harmless), nothing more opens.
        store.fill_pool().unwrap();
        assert_eq!(test_support::OPENED.with(|n| n.get()), opened);
    }

    #[test]
    fn a_read_only_connection_is_used_once_and_never_pooled() {
        let (dir, store) = temp_store();
        store.setting("x").unwrap();
        store.inner.idle.lock().unwrap().clear();
        // What SQLite opens for a file this process may not write at that moment.
        let read_only = Connection::open_with_flags(
            dir.path().join("t.db"),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap();
        store.inner.idle.lock().unwrap().push(read_only);
        assert_eq!(store.setting("x").unwrap(), None, "its reads are served");
        assert!(
            store.inner.idle.lock().unwrap().is_empty(),
            "but it is not kept"
        );
        // The next call opens a writable one, which is kept.
        store
            .set_settings(&[("x", "1".into())], "test", "x=1", &test_support::actor())
            .unwrap();
        assert_eq!(store.setting("x").unwrap().as_deref(), Some("1"));
        assert_eq!(store.inner.idle.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_replaced_file_is_refused_until_a_restart_and_left_unharmed() {
        let (dir, store) = temp_store();
        let path = dir.path().join("t.db");
        store.setting("x").unwrap();
        // The writer's own connection, open.
        store.write_bookkeeping(|_| Ok(())).unwrap();
        assert!(store.inner.writer_conn.lock().unwrap().is_some());
        // A copy moved over the live file (a restored backup), then a commit to it that stays
        // in its write-ahead log while its writer is open.
        let copy = dir.path().join("copy.db");
        Connection::open(&path)
            .unwrap()
            .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        std::fs::rename(&copy, &path).unwrap();
        let writer = commit_kept_in_the_log(&path, "restored", "yes");

        let err = store.setting("x").unwrap_err().to_string();
        assert!(err.contains("restart gitgate"), "{err}");
        // For good, even for what was cached or pooled before; the writer's connection goes
        // with the pooled ones.
        assert!(store.setting("x").is_err());
        assert!(store.inner.writer_conn.lock().unwrap().is_none());
        assert!(store.write_bookkeeping(|_| Ok(())).is_err());
        // The server's connections to the old file go away (a server stopping): SQLite sees
        // that their file has moved and leaves the new file's log alone ...
        drop(store);
        // ... so its commit is still there for whoever opens it next.
        let reader = connect(&path, false).unwrap();
        let restored: Option<String> = reader
            .query_row(
                "SELECT value FROM settings WHERE key = 'restored'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(restored.as_deref(), Some("yes"));
        drop(writer);
    }

    /// A setting committed on a connection of its own that never checkpoints: the commit
    /// stays in the store's `-wal` while the returned connection is open.
    fn commit_kept_in_the_log(path: &Path, key: &str, value: &str) -> Connection {
        let writer = connect(path, false).unwrap();
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0")
            .unwrap();
        writer
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                [key, value],
            )
            .unwrap();
        writer
    }

    #[test]
    fn a_path_the_start_could_not_open_is_refused_by_the_check_too() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let with_slash = |name: &str| PathBuf::from(format!("{}/", at(name).display()));
        std::fs::write(at("file.db"), "").unwrap();
        std::os::unix::fs::symlink(at("nowhere/target.db"), at("dangling.db")).unwrap();
        std::os::unix::fs::symlink(at("new.db"), at("ahead.db")).unwrap();
        std::os::unix::fs::symlink(at("loop-b"), at("loop-a")).unwrap();
        std::os::unix::fs::symlink(at("loop-a"), at("loop-b")).unwrap();
        for (path, said) in [
            (with_slash("newdir"), "ends with /"),
            (with_slash("file.db"), "ends with /"),
            (at("dangling.db"), "nowhere does not exist"),
            (at("loop-a"), "too many levels of symbolic links"),
            (
                at("file.db").join("x.db"),
                "file.db is a file, not a folder: [store] path names a file in a folder",
            ),
        ] {
            let e = usable_path(&path).unwrap_err();
            assert!(e.contains(said), "{}: {e}", path.display());
            // What `check` reads, and what the start opens: both refuse.
            assert!(Store::inspect(&path).is_err(), "{}", path.display());
            assert!(Store::open(&path).is_err(), "{}", path.display());
        }
        // A file that is no SQLite database at all (the config, named by mistake) is told as
        // probably not the store, and left as it was.
        let config = "[server]\nlisten = \"127.0.0.1:8080\"\n".repeat(20);
        std::fs::write(at("proxy.toml"), &config).unwrap();
        let e = Store::open(&at("proxy.toml")).err().unwrap().to_string();
        assert!(
            e.contains("the file does not begin as an SQLite database does, so it is no gitgate store — check that [store] path names the store"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(at("proxy.toml")).unwrap(), config);
        // A link to a store not made yet, in a folder that is there: made through the link.
        usable_path(&at("ahead.db")).unwrap();
        Store::open(&at("ahead.db")).unwrap();
        assert!(at("new.db").is_file());
    }

    #[test]
    fn an_emptied_file_beside_a_log_is_never_opened_and_stops_the_server() {
        let (dir, store) = temp_store();
        let path = dir.path().join("t.db");
        // A commit that stays in the write-ahead log while the server's connections are open.
        let writer = commit_kept_in_the_log(&path, "only", "in the log");
        let wal = sidecar(&path, "-wal");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let wal_len = std::fs::metadata(&wal).unwrap().len();
        assert!(wal_len > 0);
        // The CLI and `check` refuse it before SQLite sees it (which would delete the `-wal`).
        for err in [
            Store::open(&path).err().map(|e| e.to_string()),
            Store::inspect(&path).err().map(|e| e.to_string()),
        ] {
            let err = err.expect("refused");
            assert!(
                err.contains("the store file is empty (0 bytes)")
                    && err.contains("nothing was opened"),
                "{err}"
            );
        }
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), wal_len);
        // The running server stops serving from it (at the latest at the next full check).
        std::thread::sleep(watch::FULL_CHECK_EVERY + Duration::from_millis(20));
        let log = test_support::logged(|| {
            let err = store.setting("only").unwrap_err().to_string();
            assert!(err.contains("found damaged"), "{err}");
        });
        assert!(log.contains("emptied (truncated to 0 bytes)"), "{log}");
        assert!(store.setting("x").is_err(), "for good");
        drop(writer);
    }

    /// The same emptying in the moment the watch lets the full checks wait (an emptying
    /// changes no name, so inotify says nothing): a call that opens a connection then — the
    /// writer's first, about 100 ms after `serve` starts, or one past the pool's eight — is
    /// refused and the `-wal` kept. SQLite, opening the file of no pages, deleted that `-wal`
    /// (tests/cli.rs an_emptied_store_file_is_refused_and_its_log_kept failed in CI so).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_connection_opened_on_a_file_emptied_within_the_watchs_wait_is_refused_and_the_log_kept() {
        let mut skipped = false;
        // Tried until the call skipped the full checks: other tests' files in /tmp, above this
        // folder, make some calls run them.
        for _ in 0..20 {
            let (dir, store) = temp_store();
            let path = dir.path().join("t.db");
            store.watch_folders();
            let watch = store.inner.watch.get().expect("inotify here");
            let writer = commit_kept_in_the_log(&path, "only", "in the log");
            let wal = sidecar(&path, "-wal");
            let wal_len = std::fs::metadata(&wal).unwrap().len();
            assert!(wal_len > 0);
            // A name changed: the next call runs the full checks, and they pass.
            std::fs::write(dir.path().join("event"), "").unwrap();
            store.setting("x").unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
            let before = watch.full_checks();
            let written = store.write_bookkeeping(|_| Ok(()));
            skipped = watch.full_checks() == before;
            assert_eq!(
                std::fs::metadata(&wal).map(|m| m.len()).ok(),
                Some(wal_len),
                "the -wal is kept"
            );
            let err = written.unwrap_err().to_string();
            assert!(err.contains("found damaged"), "{err}");
            drop(writer);
            if skipped {
                break;
            }
        }
        assert!(skipped, "no call skipped the full checks");
    }

    /// A store with one setting (`x` = `1`) committed, still in its `-wal`; and its path.
    fn store_with_a_commit() -> (tempfile::TempDir, Store, PathBuf) {
        let (dir, store) = temp_store();
        let path = dir.path().join("t.db");
        store
            .set_settings(
                &[("x", "1".into())],
                "test.set",
                "x",
                &test_support::actor(),
            )
            .unwrap();
        (dir, store, path)
    }

    /// A `-wal` deleted under a running server: a command or a check is told so, and to stop
    /// the server — not a bare "disk I/O error", nor "damaged, restore a backup".
    #[test]
    fn an_index_without_its_log_names_the_deletion_not_damage() {
        let (_dir, store, path) = store_with_a_commit();
        let wal = sidecar(&path, "-wal");
        assert!(wal.exists() && sidecar(&path, "-shm").exists());
        std::fs::remove_file(&wal).unwrap();
        for err in [
            Store::open(&path).err().map(|e| e.to_string()),
            Store::inspect(&path).err().map(|e| e.to_string()),
        ] {
            let err = err.expect("refused");
            assert!(
                err.contains("without") && err.contains("do not restore a backup"),
                "{err}"
            );
        }
        assert!(!wal.exists(), "a -wal was made");
        let shm = sidecar(&path, "-shm");
        let kept = std::fs::read(&shm).unwrap();
        drop(store);
        // No process has it open: a leftover (a crash, a restore that removed only the -wal),
        // said so, with what to remove; not "stop gitgate".
        std::fs::write(&shm, kept).unwrap();
        for err in [
            Store::open(&path).err().map(|e| e.to_string()),
            Store::inspect(&path).err().map(|e| e.to_string()),
        ] {
            let err = err.expect("refused");
            assert!(
                err.contains("no process has it open")
                    && err.contains(&format!("Remove {}", shm.display()))
                    && !err.contains("Stop gitgate"),
                "{err}"
            );
        }
        std::fs::remove_file(&shm).unwrap();
        assert!(Store::open(&path).is_ok());
    }

    /// A store whose header is overwritten in place under the running server is damage, seen
    /// at the next full check: before, SQLite went on answering from its page cache, and the
    /// stop would have checkpointed its log into the ruined file.
    #[test]
    fn a_header_overwritten_in_place_stops_the_server() {
        let (_dir, store, path) = store_with_a_commit();
        assert_eq!(store.setting("x").unwrap().as_deref(), Some("1"));
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all(b"XXXXXXXXXXXXXXXX").unwrap();
        }
        std::thread::sleep(watch::FULL_CHECK_EVERY + Duration::from_millis(20));
        let log = test_support::logged(|| {
            let err = store.setting("x").unwrap_err().to_string();
            assert!(err.contains("found damaged"), "{err}");
        });
        assert!(log.contains("header was overwritten"), "{log}");
        assert!(store.ping().is_err(), "still ready");
        // The stop leaves the log as it is: not checkpointed into the ruined file, not deleted.
        let wal = sidecar(&path, "-wal");
        let wal_len = std::fs::metadata(&wal).unwrap().len();
        assert!(wal_len > 0);
        // A server says so before its last line, "stopped" (`report_changed_files`), and the
        // close does not say it again.
        let log = test_support::logged(|| store.report_changed_files());
        assert!(log.contains("left as they are, unapplied"), "{log}");
        let log = test_support::logged(|| drop(store));
        assert!(!log.contains("left as they are"), "said twice: {log}");
        assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).ok(), Some(wal_len));
    }

    /// A store moved away without its `-wal` (or deleted): creating a new one there would have
    /// SQLite delete the `-wal`, the one copy of what it held.
    #[test]
    fn every_commit_is_synced_before_it_is_acknowledged() {
        // Every connection of the store, the CLI's and the server's, is opened by `connect`.
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("s.db"), true).unwrap();
        let level: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(level, 2, "FULL");
    }

    #[test]
    fn a_missing_file_beside_a_log_is_not_created_anew() {
        let (dir, store) = temp_store();
        let path = dir.path().join("t.db");
        let writer = commit_kept_in_the_log(&path, "only", "in the log");
        drop(store);
        let wal = sidecar(&path, "-wal");
        let wal_len = std::fs::metadata(&wal).unwrap().len();
        assert!(wal_len > 0);
        std::fs::rename(&path, dir.path().join("aside.db")).unwrap();
        for err in [
            Store::open(&path).err().map(|e| e.to_string()),
            Store::inspect(&path).err().map(|e| e.to_string()),
        ] {
            let err = err.expect("refused");
            assert!(
                err.contains("the store file is missing") && err.contains("nothing was created"),
                "{err}"
            );
        }
        assert!(!path.exists());
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), wal_len);
        // Also through a symbolic link to where the store was (SQLite would create it there).
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = Store::open(&link).err().expect("refused").to_string();
        assert!(err.contains("the store file is missing"), "{err}");
        assert!(!path.exists());
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), wal_len);
        drop(writer);
        // Without a log beside it, a missing store is created (and said).
        let fresh = dir.path().join("fresh.db");
        let log = test_support::logged(|| {
            Store::open(&fresh).unwrap();
        });
        assert!(log.contains("creating a new, empty token store"), "{log}");
        assert!(Store::inspect(&dir.path().join("none.db"))
            .unwrap()
            .is_none());
        // An empty file (a failed copy, a `touch`) is said too: it held no store either.
        let touched = dir.path().join("touched.db");
        std::fs::write(&touched, b"").unwrap();
        assert!(is_an_empty_file(&touched));
        let log = test_support::logged(|| {
            Store::open(&touched).unwrap();
        });
        assert!(
            log.contains("creating a new, empty token store in the empty file (0 bytes)"),
            "{log}"
        );
        assert!(!is_an_empty_file(&touched) && !is_an_empty_file(&dir.path().join("none.db")));
    }

    /// What a miss read is cached under the version seen before the read, not the one at the
    /// moment it is kept: a commit between the two (a revocation from the CLI) must leave the
    /// record read before it uncached, or it would be served stale until the next commit.
    #[test]
    fn a_record_read_before_a_commit_is_not_cached_past_it() {
        use super::test_support::{actor, personal_token};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let server = Store::open(&path).unwrap();
        let cli = Store::open(&path).unwrap();
        cli.add_user("alice", "h", Role::User, &actor()).unwrap();
        cli.insert_token(&personal_token("abcdefghijkl", "laptop", "alice"), &actor())
            .unwrap();
        let CacheLookup::Miss(at) = server.cached_auth_record("abcdefghijkl").unwrap() else {
            panic!("a token not read yet is a miss");
        };
        let read = server.auth_record("abcdefghijkl").unwrap();
        cli.revoke_token("abcdefghijkl", &actor()).unwrap();
        let kept = server.cache_loaded("abcdefghijkl", at, read).unwrap();
        assert!(
            kept.token.revoked_at.is_none(),
            "read before the revocation"
        );
        assert!(
            matches!(
                server.cached_auth_record("abcdefghijkl").unwrap(),
                CacheLookup::Miss(_)
            ),
            "the record read before the revocation is served from the cache"
        );
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(fresh.token.revoked_at.is_some());
    }

    /// A miss read inline, on the event loop, counts as a miss as one read on the blocking pool
    /// does: the metrics' hit ratio is of every lookup.
    #[test]
    fn a_miss_read_inline_is_counted() {
        let (_dir, store) = temp_store();
        let CacheLookup::Miss(at) = store.cached_auth_record("abcdefghijkl").unwrap() else {
            panic!("nothing read yet: a miss");
        };
        let misses = store.cache_stats().1;
        let read = store
            .load_auth_record_now("abcdefghijkl", at)
            .expect("read inline, on the idle pooled connection");
        assert!(read.unwrap().is_none());
        assert_eq!(store.cache_stats().1, misses + 1);
    }

    /// A write naming a column the table lacks (`table t has no column named b`) is a schema
    /// mismatch, as a read naming a column or table it lacks is; a mistake in SQL is not.
    #[test]
    fn a_write_to_a_column_the_table_lacks_is_a_schema_mismatch() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (a)").unwrap();
        for sql in [
            "INSERT INTO t (b) VALUES (1)",
            "SELECT b FROM t",
            "SELECT a FROM u",
        ] {
            let e = StoreError::from(c.execute_batch(sql).unwrap_err());
            assert!(e.is_schema_mismatch(), "{sql}: {e}");
        }
        let e = StoreError::from(c.execute_batch("SELECT a FROM t WHERE").unwrap_err());
        assert!(!e.is_schema_mismatch(), "{e}");
    }

    /// The copy a read command reads refuses a store from a newer gitgate, as an open does:
    /// its tables may not mean what this gitgate would read them as.
    #[test]
    fn a_store_from_a_newer_gitgate_is_not_copied_to_be_read() {
        let (dir, store) = temp_store();
        let path = store.path().to_path_buf();
        drop(store);
        super::test_support::edit_by_hand(
            &dir,
            &format!("PRAGMA user_version = {}", schema::CURRENT + 1),
        );
        let e = Store::snapshot(&path, Snapshot::folder().unwrap())
            .err()
            .expect("refused");
        assert!(e.to_string().contains("newer than this gitgate"), "{e}");
    }

    /// Only a store brought up from an older schema is said to be migrated: not a new one, nor
    /// one already at this gitgate's schema (every command would say so at every run).
    #[test]
    fn only_an_older_store_is_said_to_be_migrated() {
        let (dir, store) = temp_store();
        assert_eq!(store.migrated_from(), None, "a new store");
        drop(store);
        let again = Store::open(&dir.path().join("t.db")).unwrap();
        assert_eq!(again.migrated_from(), None, "a store at this schema");
    }

    /// A store migrated by another process while this one waited for the write lock to do it
    /// (`serve` and a CLI command started together after an upgrade) is not said to be migrated
    /// by this one: both said `migrated the token store from schema 1 to 5`, and a step done by
    /// each was said whole by both.
    #[test]
    fn a_migration_another_process_made_first_is_not_said_to_be_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v1/gitgate.db");
        std::fs::copy(fixture, &path).unwrap();
        // The other process: it holds the write lock, and migrates once this one has looked.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let opening = std::thread::spawn({
            let path = path.clone();
            move || Store::open(&path).map(|s| s.migrated_from())
        });
        // The opening reads the version (1), then waits for the lock (up to BUSY_TIMEOUT).
        std::thread::sleep(Duration::from_millis(500));
        other.execute_batch(&schema::migrations_after(1)).unwrap();
        other
            .pragma_update(None, "user_version", schema::CURRENT)
            .unwrap();
        other.execute_batch("COMMIT").unwrap();
        let migrated_from = opening.join().unwrap().unwrap();
        assert_eq!(migrated_from, None, "the other process migrated it");
    }

    /// Cache misses whose reads hang (a hung file system: here a read that waits until
    /// released) are refused at their deadline, those that waited for a place too, and take
    /// no more blocking threads than there are places: another blocking read still runs at
    /// once. Before, a miss waited for its place without end once the places were held.
    #[test]
    fn misses_whose_reads_hang_are_refused_at_their_deadline() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Condvar, Mutex};
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        static RELEASED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
        struct Release;
        impl Drop for Release {
            fn drop(&mut self) {
                *RELEASED.0.lock().unwrap() = true;
                RELEASED.1.notify_all();
            }
        }
        fn hanging(_: &Store, _: &str, _: CacheVersion) -> Result<Option<Arc<AuthRecord>>> {
            STARTED.fetch_add(1, Ordering::SeqCst);
            let (released, wake) = &RELEASED;
            let mut released = released.lock().unwrap();
            while !*released {
                released = wake.wait(released).unwrap();
            }
            Ok(None)
        }
        let (_d, store) = temp_store();
        use test_support::{actor, personal_token};
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        store
            .insert_token(&personal_token("abcdefghijkl", "laptop", "alice"), &actor())
            .unwrap();
        let ids = ["abcdefghijkl".to_string()];
        let runtime = crate::blocking_pool::started_for_a_test();
        let release = Release;
        runtime.block_on(async {
            let misses: Vec<_> = (0..3 * MISS_READERS)
                .map(|_| {
                    let (store, id) = (store.clone(), ids[0].clone());
                    tokio::spawn(async move {
                        store
                            .load_in_turn_by(&id, Duration::from_millis(300), hanging)
                            .await
                    })
                })
                .collect();
            for miss in misses {
                let refused = tokio::time::timeout(Duration::from_secs(10), miss)
                    .await
                    .expect("a miss waited past its deadline")
                    .unwrap()
                    .unwrap_err()
                    .to_string();
                assert!(
                    refused.contains("did not answer a read within 0.3 s"),
                    "{refused}"
                );
            }
            assert_eq!(STARTED.load(Ordering::SeqCst), MISS_READERS);
            let read = tokio::task::spawn_blocking(|| "another read");
            let read = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("a blocking read waited behind the hanging misses");
            assert_eq!(read.unwrap(), "another read");
            // The file system answers again: the places come back, and the next miss is read.
            drop(release);
            while store.miss_slots().available_permits() < MISS_READERS {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let found = store.load_auth_record_in_turn(&ids[0]).await.unwrap();
            assert!(found.is_some());
        });
    }

    /// Fewer misses are read at once than connections are pooled, so that a burst of them is
    /// read on pooled connections and never opens connections of its own.
    #[test]
    fn fewer_misses_are_read_at_once_than_connections_are_pooled() {
        let (_dir, store) = temp_store();
        let places = store.miss_slots().available_permits();
        assert!((1..POOL_SIZE).contains(&places), "{places}");
    }

    /// A store with a user, closed, its log checkpointed into the file: damage done to the
    /// file is then all there is to read.
    fn a_closed_store_all_in_its_file() -> (tempfile::TempDir, PathBuf) {
        let (dir, store) = temp_store();
        let path = dir.path().join("t.db");
        store
            .add_user("alice", "h", Role::User, &test_support::actor())
            .unwrap();
        drop(store);
        Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        (dir, path)
    }

    /// `inspect` (`gitgate check`) reads every page and heeds what SQLite's quick_check says
    /// of it: a store whose freelist is not what its header says (every table still reads)
    /// is refused, and the marker that tells the running servers left.
    #[test]
    fn damage_no_read_meets_is_found_by_the_inspection() {
        let (_dir, path) = a_closed_store_all_in_its_file();
        // The header's count of free pages (bytes 36 to 39), made wrong.
        let mut bytes = std::fs::read(&path).unwrap();
        let free = u32::from_be_bytes(bytes[36..40].try_into().unwrap());
        assert_eq!(free, 0, "a new store has no free pages");
        bytes[36..40].copy_from_slice(&7u32.to_be_bytes());
        std::fs::write(&path, bytes).unwrap();

        let err = Store::inspect(&path).expect_err("refused").to_string();
        assert!(err.contains("quick_check found it damaged"), "{err}");
        assert!(err.contains("Freelist: size is 0 but should be 7"), "{err}");
        assert!(damaged_marker(&real_path(&path)).exists(), "{err}");
        // One line, as every refusal is: SQLite's report has line breaks of its own.
        assert!(!err.contains('\n'), "{err}");
    }

    /// A store damaged where its schema is read — cut short, as by a failed copy or a full disk
    /// at a restore — is refused by `inspect` (`gitgate check`) and by an open (a command, a
    /// start) with the marker left, as one whose damage quick_check finds is: a running
    /// server, which found nothing yet and admits the tokens in its cache, gives it up too.
    #[test]
    fn a_store_damaged_where_its_schema_is_read_gets_the_marker() {
        type Open = fn(&Path) -> Result<()>;
        let opens: [(&str, Open); 2] = [
            ("inspect", |p| Store::inspect(p).map(|_| ())),
            ("open", |p| Store::open(p).map(|_| ())),
        ];
        for (how, open) in opens {
            let (_dir, path) = a_closed_store_all_in_its_file();
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len > 8192, "{len}");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(8192)
                .unwrap();

            let err = open(&path).expect_err("refused").to_string();
            assert!(err.contains("the store is damaged"), "{how}: {err}");
            assert!(
                damaged_marker(&real_path(&path)).exists(),
                "{how} left no marker: {err}"
            );
            assert!(err.contains("now tells every gitgate"), "{how}: {err}");
        }
    }

    /// An empty file readable by its group or by others (`: > gitgate.db` under the usual
    /// umask) is made its owner's only when a store is made in it, as a new store is: it will
    /// hold password hashes.
    #[test]
    fn an_empty_file_a_store_is_made_in_becomes_its_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o640, 0o604] {
            let path = dir.path().join(format!("{mode:o}.db"));
            std::fs::write(&path, "").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            drop(Store::open(&path).unwrap());
            let now = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(now, 0o600, "made from {mode:o}: {now:o}");
        }
    }

    /// The write check refuses a store path that names a folder (`newdir/`), as the open does,
    /// before it asks whether the folder can be written.
    #[test]
    fn a_path_ending_with_a_slash_cannot_be_written_as_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let e = Store::check_can_write(&dir.path().join("newdir/"))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("ends with /"), "{e}");
    }

    /// A setting edited by hand into a BLOB: a read of it says which setting and what to do,
    /// not SQLite's "Invalid column type"; a check reads the rest and holds the same words for
    /// that key; a setting written as text reads as before.
    #[test]
    fn a_setting_that_is_not_text_is_refused_by_its_key() {
        let (dir, store) = test_support::temp_store();
        store
            .set_settings(
                &[("policy.expiry_required", "true".into())],
                "policy.changed",
                "test",
                &test_support::actor(),
            )
            .unwrap();
        Connection::open(dir.path().join("t.db"))
            .unwrap()
            .execute(
                "INSERT INTO settings (key, value) VALUES ('policy.max_expiry_days', X'3330')",
                [],
            )
            .unwrap();
        let said = "the setting policy.max_expiry_days in the store is a BLOB of 2 bytes";
        let e = store
            .setting("policy.max_expiry_days")
            .expect_err("a BLOB is no setting")
            .to_string();
        assert!(e.contains(said) && e.contains("gitgate policy set"), "{e}");
        assert!(!e.contains("Invalid column type"), "{e}");
        assert_eq!(
            store.setting("policy.expiry_required").unwrap().as_deref(),
            Some("true")
        );
        let inspection = Store::inspect(&dir.path().join("t.db"))
            .expect("the check reads the store")
            .expect("there is a store");
        assert_eq!(
            inspection.settings.get("policy.expiry_required"),
            Some(&Ok("true".to_owned()))
        );
        let held = inspection.settings.get("policy.max_expiry_days");
        assert!(
            matches!(held, Some(Err(why)) if why.contains(said)),
            "{held:?}"
        );
    }
}
