//! An in-memory cache of [`AuthRecord`]s in front of SQLite, so that the auth hot path is a hash
//! lookup instead of a query — without giving up immediate revocation.
//!
//! Invalidation: every lookup first asks whether anything was committed to the store since the
//! cache was filled; if so, the whole cache is dropped. A revocation, a disabled user or a removed
//! grant is therefore seen on the very next request, exactly as without the cache. Time-based
//! rules (expiry) are applied by the policy with the current time, so a cached record never
//! outlives its expiry.
//!
//! The question is answered from the WAL index header, not by a query. In WAL mode (which the
//! store always uses) every commit, from any process, rewrites the header at the start of the
//! `-shm` file (documented in <https://www.sqlite.org/walformat.html>, "The WAL-Index Header"):
//! the frame count and checksums change with every commit, and the salts with every WAL restart,
//! so two equal headers mean no commit in between. A commit is visible to readers exactly when
//! that header is written, so a revocation that has returned to the CLI is seen by the next
//! lookup. Reading it is a read of 96 bytes of memory: the `-shm` file's first page mapped as
//! SQLite maps it (shared, here read-only) — no system call, no lock, no SQLite call. A `pread`
//! of the same bytes cost a system call per request (with the file checks' `FIONREAD` that an
//! unknown id now skips, a tenth of a refused request's CPU under wrk: docs/PERFORMANCE.md), and `PRAGMA data_version` (statement, file locks, mutex) was half of the
//! cached auth path. The writer updates the header's two copies one after the other (the second
//! first), and the read takes them in SQLite's own order (the first, a fence, the second), so a
//! read that finds them different (a commit in progress), or a `-shm` file not there or not
//! mapped, falls back to `PRAGMA data_version` on the watcher connection: slower, never staler.
//! The mapping costs nothing SQLite does not already risk: its connections in this process map
//! the same file, and no process truncates it while one of ours holds it open (SQLite's
//! dead-man-switch lock).
//!
//! One kind of commit does not empty the cache: the store's writer thread's, which holds only
//! audit rows and tokens' last uses — nothing a decision reads. With many tokens in use it
//! commits every second, and each commit used to make every token miss once. The writer reads
//! the header under its write lock before its commit and again after it, and checks with
//! `PRAGMA data_version` on its own connection (which moves only for other connections'
//! commits) that nobody else committed in between; the cache then takes the new header as seen,
//! but only if it had seen the one before. A lookup that finds the header moved while the
//! writer is between its commit and that check cannot tell yet whose commit it was: it reads
//! the store, as a miss, and leaves the cache alone ([`UNSURE`]) — under load, taking the
//! writer's commit for anyone's there emptied the cache about once a second. Any other commit
//! — the CLI's, the REST API's, one that slipped in around the writer's — still empties the
//! cache on the next lookup. The writer commits on a connection of its own
//! (`Store::with_writers_conn`), so such a read finds the readers' pooled connection idle: on
//! the pool's only one, the writer made it open another, which a server at its open-files
//! limit could not — a valid cached token answered `503`.
//!
//! Unknown ids are remembered too, apart and fewer ([`MAX_UNKNOWN`]; the set starts over when
//! full), and dropped with everything else at any commit but the writer's own — creating a
//! token is one. So a
//! well-formed token that no longer exists (deleted with its store, say) and that a CI job keeps
//! sending costs a hash lookup per request, as a wrong secret for a known id does, not a read of
//! SQLite on the blocking pool (about a third of the rate, measured with wrk). Random ids still
//! cost a read each: the failure throttle is what stops a client sending those. The cache is
//! cleared when it reaches [`MAX_ENTRIES`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::Connection;

use super::{sidecar, AuthRecord};

/// Entries kept before the cache starts over.
pub const MAX_ENTRIES: usize = 100_000;

/// Unknown ids remembered before that set starts over: a few hundred kilobytes at most.
pub const MAX_UNKNOWN: usize = 10_000;

/// What the cache knows of an id at a version.
pub(super) enum Cached {
    Record(Arc<AuthRecord>),
    /// The store had no such token.
    Unknown,
    /// Nothing: the store must be read.
    Nothing,
}

pub(super) struct AuthCache {
    /// The last clean WAL index header and the epoch it belongs to. Every lookup takes the read
    /// side (the workers never wait for each other); the write side only when the header moved
    /// or could not be read.
    seen: RwLock<Seen>,
    /// The slow path's connection, for `PRAGMA data_version`.
    fallback: Mutex<Connection>,
    state: RwLock<State>,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
}

struct State {
    version: i64,
    entries: HashMap<String, Arc<AuthRecord>>,
    unknown: HashSet<String>,
}

impl State {
    /// Ready for what was read at `version`: everything from an earlier one is dropped.
    /// `false` for what was read at an earlier version than the cache is at (a slow miss that
    /// a newer one overtook): not kept, and not a reason to drop what is newer.
    fn at(&mut self, version: i64) -> bool {
        if version < self.version || version == UNSURE {
            return false;
        }
        if self.version != version {
            self.entries.clear();
            self.unknown.clear();
            self.version = version;
        }
        true
    }
}

/// The version [`AuthCache::version`] gives while this process's writer is committing and the
/// header has moved: whether only by that commit is not known yet. Nothing is answered from the
/// cache at it, nor kept: the lookup reads the store, as a miss, and the cache stays as it was
/// for the writer to say whether its commit was alone ([`AuthCache::end_own_commit`]). Epochs
/// start at 0.
const UNSURE: i64 = -1;

/// Size of the two copies of the WAL index header at the start of the `-shm` file.
const HEADER_COPIES: usize = 96;

pub(super) type Header = [u8; HEADER_COPIES / 2];

/// What tells whether the store changed: the WAL index header, or `PRAGMA data_version` when
/// the header cannot be read cleanly.
struct Seen {
    shm_path: PathBuf,
    /// Opened on first use (SQLite creates the file when a connection first reads).
    shm: Option<File>,
    /// The header's page of `shm`, mapped once the file holds a header.
    mapped: Option<MappedHeader>,
    wal_path: PathBuf,
    /// The write-ahead log SQLite has open, held only to see it unlinked.
    wal: Option<File>,
    header: Header,
    data_version: i64,
    /// Moves whenever either signal does: the cache's notion of "version".
    epoch: i64,
    /// While the writer commits bookkeeping: the header it began from, if the cache had seen it.
    own_commit_from: Option<Header>,
}

impl Seen {
    fn new(db_path: &Path, epoch: i64) -> Seen {
        Seen {
            shm_path: sidecar(db_path, "-shm"),
            shm: None,
            mapped: None,
            wal_path: sidecar(db_path, "-wal"),
            wal: None,
            header: [0; HEADER_COPIES / 2],
            data_version: i64::MIN,
            epoch,
            own_commit_from: None,
        }
    }

    /// Opens the `-shm` and `-wal` files if they are not open yet (and exist), and maps the
    /// header once the `-shm` file holds one.
    fn open_files(&mut self) {
        if self.shm.is_none() {
            self.shm = File::open(&self.shm_path).ok();
        }
        if self.mapped.is_none() {
            self.mapped = self.shm.as_ref().and_then(MappedHeader::new);
        }
        if self.wal.is_none() {
            self.wal = File::open(&self.wal_path).ok();
        }
    }

    /// The current header if both copies agree.
    fn read_header(&self) -> Option<Header> {
        let (a, b) = self.mapped.as_ref()?.copies();
        // isInit (byte 12) is 0 until a connection has built the index.
        (a == b && a[12] == 1).then_some(a)
    }
}

/// The first page of a `-shm` file, mapped shared and read-only: the two copies of the WAL
/// index header, which other processes' commits rewrite in place.
struct MappedHeader {
    at: std::ptr::NonNull<std::ffi::c_void>,
}

// The mapping is read-only and only ever read through atomics (see `copies`).
unsafe impl Send for MappedHeader {}
unsafe impl Sync for MappedHeader {}

impl MappedHeader {
    /// `None` for a file too short to hold the header yet (or one that cannot be mapped): the
    /// caller falls back to `PRAGMA data_version`, and maps it on a later look.
    fn new(shm: &File) -> Option<MappedHeader> {
        #[cfg(unix)]
        {
            use rustix::mm::{mmap, MapFlags, ProtFlags};
            if shm.metadata().ok()?.len() < HEADER_COPIES as u64 {
                return None;
            }
            // SAFETY: a fresh mapping (null hint) of a file this process holds open; it is
            // only read, through `AtomicU32`s, within its first page, which the file covers
            // (checked above; nothing truncates it while SQLite here holds it, see the module
            // doc), and unmapped once, in `drop`.
            let at = unsafe {
                mmap(
                    std::ptr::null_mut(),
                    HEADER_COPIES,
                    ProtFlags::READ,
                    MapFlags::SHARED,
                    shm,
                    0,
                )
            }
            .ok()?;
            Some(MappedHeader {
                at: std::ptr::NonNull::new(at)?,
            })
        }
        #[cfg(not(unix))]
        {
            let _ = shm;
            None
        }
    }

    /// Both copies as they are now: the first, then (after a fence) the second — the order of
    /// SQLite's own readers, against its writer's second-then-first.
    fn copies(&self) -> (Header, Header) {
        use std::sync::atomic::{fence, AtomicU32};
        const WORDS: usize = HEADER_COPIES / 2 / 4;
        // SAFETY: the mapping is page-aligned and at least HEADER_COPIES long (see `new`);
        // other processes write it concurrently, hence atomics rather than plain reads.
        let words: &[AtomicU32; 2 * WORDS] = unsafe { self.at.cast().as_ref() };
        let copy = |from: &[AtomicU32]| {
            let mut header = [0u8; HEADER_COPIES / 2];
            for (bytes, word) in header.chunks_exact_mut(4).zip(from) {
                bytes.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            header
        };
        let first = copy(&words[..WORDS]);
        fence(Ordering::SeqCst);
        let second = copy(&words[WORDS..]);
        (first, second)
    }
}

impl Drop for MappedHeader {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: mapped by `new` with this length, and no reference to it outlives `self`.
        unsafe {
            let _ = rustix::mm::munmap(self.at.as_ptr(), HEADER_COPIES);
        }
    }
}

impl AuthCache {
    /// `opened` is the file SQLite opened, symbolic links resolved: its `-shm` is the live index
    /// (one beside a link to the store may be stale).
    pub(super) fn new(watcher: Connection, opened: &Path) -> AuthCache {
        AuthCache {
            seen: RwLock::new(Seen::new(opened, 0)),
            fallback: Mutex::new(watcher),
            state: RwLock::new(State {
                version: i64::MIN,
                entries: HashMap::new(),
                unknown: HashSet::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Open the `-shm` and `-wal` files SQLite has made for this process's connections, so that
    /// their removal is seen from the first request on ([`AuthCache::index_unlinked`]).
    pub(super) fn open_files(&self) {
        self.seen
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .open_files();
    }

    /// The watcher connection, for the store's last word at the stop (see `Inner::drop` in
    /// the store).
    pub(super) fn watcher(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.fallback.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget every entry (the store file was replaced: the store refuses every operation from
    /// now on, see `Store::check_file`).
    pub(super) fn clear(&self) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.entries.clear();
        state.unknown.clear();
        state.version = i64::MIN;
    }

    /// When this process's `-shm` or `-wal` last changed (the earlier of their inode change
    /// times): once [`AuthCache::index_unlinked`] says they are gone, the time of the unlink or
    /// rename — the store refuses every operation from then on, so nothing here writes them
    /// after. `None` where it cannot be told.
    pub(super) fn index_changed_at(&self) -> Option<std::time::SystemTime> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            [&seen.shm, &seen.wal]
                .into_iter()
                .flatten()
                .filter_map(|f| f.metadata().ok())
                .map(|m| {
                    let nanos = u32::try_from(m.ctime_nsec()).unwrap_or(0);
                    let secs = u64::try_from(m.ctime()).unwrap_or(0);
                    std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
                })
                .min()
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// Whether the `-shm` or `-wal` file this process has open is no longer the one other
    /// processes open: unlinked (deleted, or replaced by a rename), moved away, or no longer
    /// beside the file `store_path` leads to now (a symbolic link on it re-pointed to another
    /// folder holding the same store file by a hard link: other processes then use that
    /// folder's `-wal` and `-shm`). SQLite keeps a connection's `-shm` and `-wal` open, so this
    /// process would go on reading the old index and log while every other process uses others:
    /// commits made there (a revocation) would never be seen here. While any connection is open
    /// SQLite itself never removes either. An `fstat` of each open file, the store path resolved
    /// and a `stat` of each name beside it; `false` for a file not open yet (see
    /// [`AuthCache::open_files`]).
    pub(super) fn index_unlinked(&self, store_path: &Path) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            let beside = sidecars_now(store_path);
            let gone = |f: &Option<File>, path: PathBuf| {
                f.as_ref().is_some_and(|f| match f.metadata() {
                    Ok(open) => {
                        open.nlink() == 0
                            || match std::fs::metadata(path) {
                                Ok(named) => !same_file(&named, &open),
                                // Gone from its place. Another error (a folder made unreadable)
                                // says nothing of the file: the store path's own check, in the
                                // same folder, refuses that operation without giving up for good.
                                Err(e) => matches!(
                                    e.kind(),
                                    std::io::ErrorKind::NotFound
                                        | std::io::ErrorKind::NotADirectory
                                ),
                            }
                    }
                    Err(_) => false,
                })
            };
            gone(&seen.shm, beside(&seen.shm_path, "-shm"))
                || gone(&seen.wal, beside(&seen.wal_path, "-wal"))
        }
        #[cfg(not(unix))]
        {
            let _ = store_path;
            false
        }
    }

    /// Whether no other process can have begun a `-wal` or `-shm` of its own beside the store:
    /// each name is either gone or still this process's open file. Only then may this
    /// process's log be written into the store file at once ([`Store::check_file`]): another
    /// process with new ones open may hold pages of the file in its cache, which that write
    /// would change under it.
    ///
    /// [`Store::check_file`]: super::Store::check_file
    pub(super) fn no_other_logs(&self, store_path: &Path) -> bool {
        #[cfg(unix)]
        {
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            let beside = sidecars_now(store_path);
            let ours_or_gone = |f: &Option<File>, path: PathBuf| match std::fs::metadata(path) {
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                Ok(named) => f
                    .as_ref()
                    .and_then(|f| f.metadata().ok())
                    .is_some_and(|open| same_file(&named, &open)),
            };
            ours_or_gone(&seen.shm, beside(&seen.shm_path, "-shm"))
                && ours_or_gone(&seen.wal, beside(&seen.wal_path, "-wal"))
        }
        #[cfg(not(unix))]
        {
            let _ = store_path;
            false
        }
    }

    /// The WAL index header as it is now, if it can be read cleanly.
    pub(super) fn header_now(&self) -> Option<Header> {
        self.seen
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .read_header()
    }

    /// The writer is about to commit bookkeeping (audit rows, last uses), under the store's
    /// write lock: the header now, which it will compare with the one after. Until
    /// [`AuthCache::end_own_commit`], a lookup that finds the header moved from it neither
    /// answers from the cache nor drops it ([`UNSURE`]): before, lookups in that gap took the
    /// writer's commit for anyone's and emptied the cache about once a second under load (a
    /// review measured 22,000 misses in 10 s with 2,000 tokens in use).
    pub(super) fn begin_own_commit(&self) -> Option<Header> {
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        let now = seen.read_header();
        seen.own_commit_from = now.filter(|h| *h == seen.header);
        now
    }

    /// The writer's commit is over. If it moved the header from `before` to `after` with no
    /// other commit in between (`alone`, see [`Store::write_bookkeeping`]) and the cache had
    /// seen every commit up to `before`, the cache takes `after` as seen too and keeps its
    /// entries; otherwise the next lookup finds the header moved and starts over, as for any
    /// commit. Also called when the transaction failed (`after` then `None`).
    ///
    /// [`Store::write_bookkeeping`]: super::Store::write_bookkeeping
    pub(super) fn end_own_commit(
        &self,
        before: Option<Header>,
        after: Option<Header>,
        alone: bool,
    ) {
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        seen.own_commit_from = None;
        if let (Some(before), Some(after), true) = (before, after, alone) {
            if seen.header == before {
                seen.header = after;
            }
        }
    }

    /// A number that changes whenever anything was committed to the store.
    pub(super) fn version(&self) -> rusqlite::Result<i64> {
        {
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            if seen.read_header().is_some_and(|h| h == seen.header) {
                return Ok(seen.epoch);
            }
        }
        // Moved, unreadable or not open yet: look again, alone.
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        seen.open_files();
        if let Some(header) = seen.read_header() {
            if header != seen.header {
                // Maybe the writer's commit alone, maybe with another's after it: read the
                // store, and leave the cache for the writer to settle.
                if seen.own_commit_from == Some(seen.header) {
                    return Ok(UNSURE);
                }
                seen.header = header;
                seen.epoch += 1;
            }
            return Ok(seen.epoch);
        }
        let data_version: i64 = {
            let conn = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn.prepare_cached("PRAGMA data_version")?;
            stmt.query_row([], |r| r.get(0))?
        };
        // The header is unknown now: whatever it says next time counts as a change.
        seen.header = [0; HEADER_COPIES / 2];
        if data_version != seen.data_version {
            seen.data_version = data_version;
            seen.epoch += 1;
        }
        Ok(seen.epoch)
    }

    /// The cached record for `id`, if the cache is still valid at `version`. A hit is counted
    /// here; a miss where the store is read ([`Store::load_auth_record`]), so that a request
    /// that looks twice — before and after waiting for a place to read — counts once.
    ///
    /// [`Store::load_auth_record`]: super::Store::load_auth_record
    pub(super) fn get(&self, id: &str, version: i64) -> Cached {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let found = if state.version != version {
            Cached::Nothing
        } else if let Some(record) = state.entries.get(id) {
            Cached::Record(record.clone())
        } else if state.unknown.contains(id) {
            Cached::Unknown
        } else {
            Cached::Nothing
        };
        if !matches!(found, Cached::Nothing) {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Remember `record`, read after `version` was observed.
    pub(super) fn put(&self, record: Arc<AuthRecord>, version: i64) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if !state.at(version) {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES {
            state.entries.clear();
        }
        state.entries.insert(record.token.id.clone(), record);
    }

    /// Remember that the store had no token `id` when read after `version` was observed.
    pub(super) fn put_unknown(&self, id: &str, version: i64) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if !state.at(version) {
            return;
        }
        if state.unknown.len() >= MAX_UNKNOWN {
            state.unknown.clear();
        }
        state.unknown.insert(id.to_owned());
    }
}

/// Where a `-wal` or `-shm` (`suffix`) is now, for [`AuthCache::index_unlinked`] and
/// [`AuthCache::no_other_logs`]: SQLite finds them beside the store path with its symbolic
/// links resolved; a path that does not resolve (refused by the store file's own check) leaves
/// the name known at the start (`fixed`).
#[cfg(unix)]
fn sidecars_now(store_path: &Path) -> impl Fn(&Path, &str) -> PathBuf {
    let resolved = std::fs::canonicalize(store_path).ok();
    move |fixed, suffix| match &resolved {
        Some(resolved) => sidecar(resolved, suffix),
        None => fixed.to_path_buf(),
    }
}

/// Whether a name's file (`named`) is the one this process has open (`open`).
#[cfg(unix)]
fn same_file(named: &std::fs::Metadata, open: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (named.dev(), named.ino()) == (open.dev(), open.ino())
}

/// The writer's commit of bookkeeping, from [`AuthCache::begin_own_commit`] to
/// [`AuthCache::end_own_commit`], which its drop calls whatever happened in between.
pub(super) struct OwnCommit<'a> {
    cache: &'a AuthCache,
    before: Option<Header>,
    /// The header after the commit, once it is known to have been the only one.
    after_alone: Option<Header>,
}

impl<'a> OwnCommit<'a> {
    pub(super) fn begin(cache: &'a AuthCache) -> OwnCommit<'a> {
        OwnCommit {
            cache,
            before: cache.begin_own_commit(),
            after_alone: None,
        }
    }

    /// The commit moved the header to `after`, and no other connection committed around it.
    pub(super) fn alone(&mut self, after: Option<Header>) {
        self.after_alone = after;
    }
}

impl Drop for OwnCommit<'_> {
    fn drop(&mut self) {
        let alone = self.after_alone.is_some();
        self.cache
            .end_own_commit(self.before, self.after_alone, alone);
    }
}

#[cfg(test)]
mod tests {
    use crate::store::test_support::{actor, personal_token};
    use crate::store::{CacheLookup, Role, Store};
    use std::collections::{HashMap, HashSet};

    /// A store in a fresh folder opened twice, as gitgate and the CLI open it: the server's
    /// side with a connection pooled and its index mapped.
    fn server_and_cli() -> (tempfile::TempDir, std::path::PathBuf, Store, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (server, cli) = (Store::open(&path).unwrap(), Store::open(&path).unwrap());
        server.ping().unwrap();
        server.inner.cache.version().unwrap(); // maps the -shm file
        (dir, path, server, cli)
    }

    #[test]
    fn the_wal_index_header_is_read_cleanly_and_moves_with_every_commit() {
        let (_dir, path, server, cli) = server_and_cli();
        let header = || {
            let seen = server.inner.cache.seen.read().unwrap();
            seen.read_header()
                .expect("the fast path must read a clean header")
        };
        let before = header();
        assert_eq!(header(), before, "no commit, no change");
        let v1 = server.inner.cache.version().unwrap();
        assert_eq!(server.inner.cache.version().unwrap(), v1);
        cli.add_user("alice", "h", Role::User, &actor()).unwrap();
        assert_ne!(header(), before, "a commit by another connection moves it");
        assert_ne!(server.inner.cache.version().unwrap(), v1);
        // A full checkpoint that restarts the WAL still moves it on the next commit.
        let moved = header();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .unwrap();
        let v2 = server.inner.cache.version().unwrap();
        cli.add_user("bob", "h", Role::User, &actor()).unwrap();
        assert_ne!(header(), moved);
        assert_ne!(server.inner.cache.version().unwrap(), v2);
    }

    #[test]
    fn the_mapped_header_follows_the_file_and_a_torn_one_is_not_trusted() {
        use std::os::unix::fs::FileExt;
        let (dir, _path, server, cli) = server_and_cli();
        let shm_path = dir.path().join("t.db-shm");
        let on_disk = || {
            let mut both = [0u8; super::HEADER_COPIES];
            std::fs::File::open(&shm_path)
                .unwrap()
                .read_exact_at(&mut both, 0)
                .unwrap();
            both
        };
        let mapped = || server.inner.cache.header_now();
        assert_eq!(mapped().unwrap()[..], on_disk()[..48]);
        cli.add_user("alice", "h", Role::User, &actor()).unwrap();
        assert_eq!(
            mapped().unwrap()[..],
            on_disk()[..48],
            "another connection's commit is seen through the mapping"
        );
        // The second copy changed alone, as in a commit under way: not trusted, and the version
        // comes from the fallback instead.
        let v = server.inner.cache.version().unwrap();
        let shm = std::fs::OpenOptions::new()
            .write(true)
            .open(&shm_path)
            .unwrap();
        let change = on_disk()[48 + 8] ^ 0xff;
        shm.write_all_at(&[change], 48 + 8).unwrap();
        assert_eq!(mapped(), None, "copies that differ are a commit under way");
        assert_ne!(
            server.inner.cache.version().unwrap(),
            v,
            "unknown counts as moved"
        );
        // SQLite writes both copies again at its next commit.
        cli.add_user("bob", "h", Role::User, &actor()).unwrap();
        assert_eq!(mapped().unwrap()[..], on_disk()[..48]);
    }

    #[test]
    fn an_index_file_too_short_for_a_header_is_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let shm = dir.path().join("t.db-shm");
        std::fs::write(&shm, [0u8; 10]).unwrap();
        let mut seen = super::Seen::new(&db, 0);
        seen.open_files();
        assert!(seen.shm.is_some());
        assert!(seen.mapped.is_none(), "10 bytes: reading 96 would fault");
        assert_eq!(seen.read_header(), None);
        // Long enough but not built yet (isInit 0): mapped, and still not trusted.
        std::fs::write(&shm, [0u8; 4096]).unwrap();
        seen.open_files();
        assert!(seen.mapped.is_some());
        assert_eq!(seen.read_header(), None);
    }

    fn alice_with_a_token(cli: &Store) {
        cli.add_user("alice", "h", Role::User, &actor()).unwrap();
        cli.insert_token(&personal_token("abcdefghijkl", "laptop", "alice"), &actor())
            .unwrap();
    }

    #[test]
    fn a_commit_from_another_connection_invalidates_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let server = Store::open(&path).unwrap();
        // Stands for the CLI: another process with its own connections to the same file.
        let cli = Store::open(&path).unwrap();
        alice_with_a_token(&cli);

        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Miss(_)
        ));
        let first = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(first.token.revoked_at.is_none());
        let CacheLookup::Hit(hit) = server.cached_auth_record("abcdefghijkl").unwrap() else {
            panic!("expected a cache hit");
        };
        assert!(std::sync::Arc::ptr_eq(&first, &hit));

        cli.revoke_token("abcdefghijkl", &actor()).unwrap();
        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Miss(_)
        ));
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(fresh.token.revoked_at.is_some());

        cli.set_user_active("alice", false, &actor()).unwrap();
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(!fresh.owner.as_ref().unwrap().active);
        let (hits, misses) = server.cache_stats();
        assert!(hits >= 1 && misses >= 3, "{hits} {misses}");
    }

    /// An id the store does not have is remembered as unknown (no second read), until a commit
    /// — such as the one creating a token of that id — drops what the cache knew.
    #[test]
    fn an_unknown_id_is_remembered_until_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let server = Store::open(&path).unwrap();
        let cli = Store::open(&path).unwrap();
        cli.add_user("alice", "h", Role::User, &actor()).unwrap();
        assert!(server.auth_record_cached("abcdefghijkl").unwrap().is_none());
        let (_, misses) = server.cache_stats();
        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Unknown
        ));
        assert!(server.auth_record_cached("abcdefghijkl").unwrap().is_none());
        assert_eq!(server.cache_stats().1, misses, "read again");
        // The token comes into being: seen at once.
        cli.insert_token(&personal_token("abcdefghijkl", "laptop", "alice"), &actor())
            .unwrap();
        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Miss(_)
        ));
        assert!(server.auth_record_cached("abcdefghijkl").unwrap().is_some());
    }

    /// A store damaged in place (truncated: the same file, so the file checks see nothing):
    /// the first operation that reads what is gone fails, and from then on every lookup fails
    /// too, cached tokens included — none of them could be revoked any more.
    #[test]
    fn a_store_found_damaged_fails_closed_cache_and_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let cli = Store::open(&path).unwrap();
        alice_with_a_token(&cli);
        for i in 0..200 {
            cli.add_user(&format!("u{i}"), &"h".repeat(200), Role::User, &actor())
                .unwrap();
        }
        let server = Store::open(&path).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(conn);
        cached_and_hit(&server);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(4096).unwrap();
        drop(file);
        assert!(is_hit(&server), "nothing looked at the file yet");
        // The users' pages: never read by this connection, gone from the file.
        let e = server.users().unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
        let Err(e) = server.cached_auth_record("abcdefghijkl") else {
            panic!("a cached token was still served from a damaged store");
        };
        assert!(e.to_string().contains("found damaged"), "{e}");
    }

    fn is_hit(store: &Store) -> bool {
        matches!(
            store.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Hit(_)
        )
    }

    fn cached_and_hit(server: &Store) {
        server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(is_hit(server));
    }

    /// A server store with alice's token cached, and another connection to the same file.
    fn cached_in_a_fresh_store() -> (tempfile::TempDir, Store, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (server, cli) = (Store::open(&path).unwrap(), Store::open(&path).unwrap());
        alice_with_a_token(&cli);
        cached_and_hit(&server);
        (dir, server, cli)
    }

    /// `-wal` and `-shm` deleted under the running server (another process would make new ones
    /// and commit a revocation there, unseen by this one's open index): refused, not served
    /// from the cache or the old files.
    #[test]
    fn a_deleted_index_is_refused_until_a_restart() {
        let (dir, server, _cli) = cached_in_a_fresh_store();
        for file in ["t.db-wal", "t.db-shm"] {
            std::fs::remove_file(dir.path().join(file)).unwrap();
        }
        let err = server.auth_record_cached("abcdefghijkl").unwrap_err();
        assert!(err.to_string().contains("restart gitgate"), "{err}");
        assert!(server.setting("x").is_err(), "every operation is refused");
    }

    /// A miss read inline: on an idle pooled connection, cached as the blocking pool's read
    /// is; not at all (the caller goes to the pool) when inline reads are paused — and the
    /// connection keeps its busy timeout for every other use.
    #[test]
    fn a_miss_is_read_inline_unless_that_would_wait() {
        let (_dir, _path, server, cli) = server_and_cli();
        alice_with_a_token(&cli);
        let miss = |id: &str| match server.cached_auth_record(id).unwrap() {
            CacheLookup::Miss(at) => at,
            _ => panic!("{id} should miss"),
        };
        let at = miss("abcdefghijkl");
        let read = server
            .load_auth_record_now("abcdefghijkl", at)
            .expect("read inline");
        assert_eq!(read.unwrap().unwrap().token.name, "laptop");
        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Hit(_)
        ));
        let at = miss("zzzzzzzzzzzz");
        assert!(server
            .load_auth_record_now("zzzzzzzzzzzz", at)
            .expect("read inline")
            .unwrap()
            .is_none());
        assert!(matches!(
            server.cached_auth_record("zzzzzzzzzzzz").unwrap(),
            CacheLookup::Unknown
        ));

        // The read set SQLite's busy timeout to zero for itself only. (What makes a WAL reader
        // busy — another process rebuilding the index, or holding the file in exclusive
        // locking mode — cannot be set up beside this process's own connections.)
        let timeout: i64 = server
            .with_conn(|c| Ok(c.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(
            timeout, 5000,
            "the pooled connection waits again as it should"
        );

        // Paused after a slow read: left to the pool.
        let at = miss("xxxxxxxxxxxx");
        server.inner.inline_paused_until.store(
            crate::clock::monotonic_ms() + 60_000,
            std::sync::atomic::Ordering::Relaxed,
        );
        assert!(server.load_auth_record_now("xxxxxxxxxxxx", at).is_none());
    }

    /// An id remembered as unknown is refused before the file checks (no system call for a flood
    /// of one deleted token); the first lookup of any other id still finds the store gone, and
    /// from then on nothing is answered from memory, the unknown ids included.
    #[test]
    fn an_unknown_id_is_refused_before_the_file_checks_and_the_store_still_fails_closed() {
        let (dir, server, _cli) = cached_in_a_fresh_store();
        assert!(server.auth_record_cached("zzzzzzzzzzzz").unwrap().is_none());
        for file in ["t.db-wal", "t.db-shm"] {
            std::fs::remove_file(dir.path().join(file)).unwrap();
        }
        assert!(matches!(
            server.cached_auth_record("zzzzzzzzzzzz").unwrap(),
            CacheLookup::Unknown
        ));
        let err = server.auth_record_cached("abcdefghijkl").unwrap_err();
        assert!(err.to_string().contains("restart gitgate"), "{err}");
        let Err(err) = server.cached_auth_record("zzzzzzzzzzzz") else {
            panic!("answered from memory after the store gave up");
        };
        assert!(err.to_string().contains("restart gitgate"), "{err}");
    }

    /// With the store's folders watched (inotify), lookups skip the `stat` and `fstat`s of the
    /// store's files until a name changes in those folders — and a deleted `-wal` is still
    /// refused on the very next lookup, not at the next periodic check.
    #[cfg(target_os = "linux")]
    #[test]
    fn watched_folders_let_lookups_skip_the_file_checks_and_still_see_a_deletion_at_once() {
        let (dir, server, _cli) = cached_in_a_fresh_store();
        server.watch_folders();
        let watch = server.inner.watch.get().expect("inotify here");
        let before = watch.full_checks();
        for _ in 0..200 {
            server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        }
        // A few for the periodic check and for other tests' files in /tmp above this folder.
        let checks = watch.full_checks() - before;
        assert!(checks < 50, "{checks} full checks for 200 lookups");
        // Right after a lookup that skipped them, the `-wal` goes.
        assert!(
            (0..50).any(|_| {
                server.auth_record_cached("abcdefghijkl").unwrap();
                watch.quiet()
            }),
            "lookups never skip the full checks"
        );
        std::fs::remove_file(dir.path().join("t.db-wal")).unwrap();
        let err = server.auth_record_cached("abcdefghijkl").unwrap_err();
        assert!(err.to_string().contains("restart gitgate"), "{err}");
    }

    /// The store's folder moved away and back (the same files): refused while it is away, served
    /// again once it is back — and watched again, so that lookups skip the file checks as before
    /// instead of running them every time until a restart.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_store_folder_moved_away_and_back_is_watched_again() {
        let top = tempfile::tempdir().unwrap();
        let (folder, away) = (top.path().join("store"), top.path().join("away"));
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("t.db");
        let (server, cli) = (Store::open(&path).unwrap(), Store::open(&path).unwrap());
        alice_with_a_token(&cli);
        cached_and_hit(&server);
        server.watch_folders();
        let watch = server.inner.watch.get().expect("inotify here");
        std::fs::rename(&folder, &away).unwrap();
        assert!(server.auth_record_cached("abcdefghijkl").is_err());
        assert!(server.auth_record_cached("abcdefghijkl").is_err());
        std::fs::rename(&away, &folder).unwrap();
        let before = watch.full_checks();
        for _ in 0..200 {
            server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        }
        let checks = watch.full_checks() - before;
        assert!(checks < 50, "{checks} full checks for 200 lookups");
    }

    /// The `-shm` or the `-wal` moved away within its file system (its link count stays 1):
    /// another process would make new ones, unseen here, so refused the same way.
    #[test]
    fn a_moved_index_or_log_is_refused_until_a_restart() {
        for file in ["t.db-shm", "t.db-wal"] {
            let (dir, server, _cli) = cached_in_a_fresh_store();
            std::fs::rename(dir.path().join(file), dir.path().join("elsewhere")).unwrap();
            let err = server.auth_record_cached("abcdefghijkl").unwrap_err();
            assert!(err.to_string().contains("restart gitgate"), "{file}: {err}");
        }
    }

    /// A deploy's `current` link re-pointed to a folder that holds the same store by hard
    /// links (`-wal` and `-shm` too): served on, the files are the same. Then that folder's
    /// `-wal` deleted: other processes, which follow the link, make a new one there — refused,
    /// with the folders watched as `serve` does and without.
    #[test]
    fn a_log_deleted_beside_where_a_re_pointed_link_now_leads_is_refused() {
        for watched in [true, false] {
            let top = tempfile::tempdir().unwrap();
            for release in ["r1", "r2"] {
                std::fs::create_dir(top.path().join(release)).unwrap();
            }
            std::os::unix::fs::symlink("r1", top.path().join("current")).unwrap();
            let path = top.path().join("current/t.db");
            let (server, cli) = (Store::open(&path).unwrap(), Store::open(&path).unwrap());
            if watched {
                server.watch_folders();
            }
            alice_with_a_token(&cli);
            cached_and_hit(&server);
            for file in ["t.db", "t.db-wal", "t.db-shm"] {
                std::fs::hard_link(
                    top.path().join("r1").join(file),
                    top.path().join("r2").join(file),
                )
                .unwrap();
            }
            std::os::unix::fs::symlink("r2", top.path().join("next")).unwrap();
            std::fs::rename(top.path().join("next"), top.path().join("current")).unwrap();
            assert!(
                server.auth_record_cached("abcdefghijkl").unwrap().is_some(),
                "same files"
            );
            std::fs::remove_file(top.path().join("r2/t.db-wal")).unwrap();
            let err = server.auth_record_cached("abcdefghijkl").unwrap_err();
            assert!(
                err.to_string().contains("restart gitgate"),
                "watched {watched}: {err}"
            );
        }
    }

    /// Only the `-wal` deleted (another process then makes a new one and commits there), or
    /// both deleted before this process's first lookup: refused the same way.
    #[test]
    fn a_deleted_log_or_an_index_deleted_before_the_first_lookup_is_refused() {
        let (dir, server, _cli) = cached_in_a_fresh_store();
        std::fs::remove_file(dir.path().join("t.db-wal")).unwrap();
        let err = server.auth_record_cached("abcdefghijkl").unwrap_err();
        assert!(err.to_string().contains("restart gitgate"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let server = Store::open(&path).unwrap();
        for file in ["t.db-wal", "t.db-shm"] {
            std::fs::remove_file(dir.path().join(file)).unwrap();
        }
        // (Another process would make new ones and commit there; in this one SQLite shares
        // the old ones between connections.)
        let err = server.auth_record_cached("abcdefghijkl").unwrap_err();
        assert!(err.to_string().contains("restart gitgate"), "{err}");
    }

    /// The writer's commits (last uses, audit rows) change nothing a decision reads: with many
    /// tokens in use they came every second and each made every token miss once.
    #[test]
    fn the_writers_own_commits_keep_the_cache() {
        let (_dir, server, cli) = cached_in_a_fresh_store();
        for at in [1_000, 2_000] {
            server.note_last_use("abcdefghijkl", at, "127.0.0.1".parse().unwrap());
            server.flush_pending_writes();
            let stored = cli.token("abcdefghijkl").unwrap().unwrap();
            assert_eq!(stored.last_used_at, Some(at), "the use is committed");
            assert!(is_hit(&server), "kept across the writer's commit at {at}");
        }
        // And a revocation after them is still seen at once.
        cli.revoke_token("abcdefghijkl", &actor()).unwrap();
        assert!(!is_hit(&server));
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(fresh.token.revoked_at.is_some());
    }

    /// A commit of the writer's (a last use), with `between` run after it and before the writer
    /// looks whether it was alone.
    fn bookkeeping(server: &Store, between: &dyn Fn()) {
        server
            .write_bookkeeping_then(
                |tx| {
                    tx.execute("UPDATE tokens SET last_used_at = 1", [])?;
                    Ok(())
                },
                between,
            )
            .unwrap();
    }

    /// Another connection's commit just before, or just after, the writer's is never taken for
    /// the writer's own.
    #[test]
    fn a_commit_by_another_connection_around_the_writers_is_still_seen() {
        let revoked = |server: &Store| {
            assert!(!is_hit(server), "the revocation must be seen");
            let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
            assert!(fresh.token.revoked_at.is_some());
        };
        // Before the writer's, with no lookup in between.
        {
            let (_dir, server, cli) = cached_in_a_fresh_store();
            cli.revoke_token("abcdefghijkl", &actor()).unwrap();
            bookkeeping(&server, &|| {});
            revoked(&server);
        }
        // Between the writer's commit and its look at the header.
        {
            let (_dir, server, cli) = cached_in_a_fresh_store();
            bookkeeping(&server, &|| {
                cli.revoke_token("abcdefghijkl", &actor()).unwrap();
            });
            revoked(&server);
        }
        // After the writer's, with no lookup in between.
        {
            let (_dir, server, cli) = cached_in_a_fresh_store();
            bookkeeping(&server, &|| {});
            cli.revoke_token("abcdefghijkl", &actor()).unwrap();
            revoked(&server);
        }
    }

    /// A lookup between the writer's commit and its look at the header: before, it took the
    /// writer's commit for anyone's and emptied the cache (under load, about once a second).
    /// Now it reads the store without keeping what it read, and the cache is kept — unless
    /// another connection committed there too, which is then seen.
    #[test]
    fn a_lookup_during_the_writers_commit_neither_empties_the_cache_nor_misses_a_revocation() {
        let looked = std::cell::Cell::new(false);
        let (_dir, server, cli) = cached_in_a_fresh_store();
        let epoch = server.inner.cache.version().unwrap();
        bookkeeping(&server, &|| {
            assert!(!is_hit(&server), "unsure: the store is read");
            let read = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
            assert!(read.token.revoked_at.is_none());
            looked.set(true);
        });
        assert!(looked.get());
        // Kept whole: every other token's entry too, not just the one read again.
        assert_eq!(server.inner.cache.version().unwrap(), epoch);
        assert!(
            is_hit(&server),
            "the writer's commit alone: the cache is kept"
        );
        // Another connection's revocation in the gap, and a lookup after it there.
        bookkeeping(&server, &|| {
            cli.revoke_token("abcdefghijkl", &actor()).unwrap();
            let read = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
            assert!(read.token.revoked_at.is_some(), "seen in the gap");
        });
        assert!(!is_hit(&server), "not alone: the cache starts over");
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(fresh.token.revoked_at.is_some());
    }

    /// The writer commits on a connection of its own, opened once: a lookup in its gap, which
    /// reads the store, finds the readers' pooled connection idle and opens none. On the pool's
    /// only connection, the writer had that lookup open one — which at the open-files limit
    /// failed, and a valid cached token got a `503`.
    #[test]
    fn a_lookup_during_the_writers_commit_opens_no_connection() {
        use crate::store::test_support::OPENED;
        let (_dir, server, _cli) = cached_in_a_fresh_store();
        let opened = || OPENED.with(|n| n.get());
        // A last use of its own each time: one the store has already is no commit at all.
        let commit = |at: i64, between: &dyn Fn()| {
            server
                .write_bookkeeping_then(
                    |tx| {
                        tx.execute("UPDATE tokens SET last_used_at = ?1", [at])?;
                        Ok(())
                    },
                    between,
                )
                .unwrap();
        };
        let before = opened();
        commit(1, &|| {});
        let writers = opened() - before;
        assert!(writers <= 1, "{writers} connections for one commit");
        for at in 2..5 {
            let before = opened();
            commit(at, &|| {
                assert!(!is_hit(&server), "unsure: the store is read");
                server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
            });
            assert_eq!(
                opened(),
                before,
                "the writer's commit or the lookup in its gap opened a connection"
            );
        }
        assert!(
            is_hit(&server),
            "the writer's commits alone: the cache is kept"
        );
    }

    /// After a writer's commit that another connection's commit came with, the cache starts
    /// over and then fills again: lookups are not left unsure (reading the store every time)
    /// until the writer's next commit.
    #[test]
    fn after_a_writers_commit_that_was_not_alone_the_cache_fills_again() {
        let (_dir, server, cli) = cached_in_a_fresh_store();
        bookkeeping(&server, &|| {
            cli.revoke_token("abcdefghijkl", &actor()).unwrap();
        });
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(fresh.token.revoked_at.is_some());
        assert!(is_hit(&server), "the cache never filled again");
    }

    /// A miss read before a commit and put after a newer one was kept: dropped, and what is
    /// newer stays.
    #[test]
    fn a_slow_miss_from_before_a_commit_does_not_drop_what_is_newer() {
        let mut state = super::State {
            version: 3,
            entries: HashMap::new(),
            unknown: HashSet::from(["x".to_string()]),
        };
        assert!(!state.at(2));
        assert!(!state.at(super::UNSURE));
        assert!(state.at(3));
        assert_eq!(state.unknown.len(), 1);
        assert!(state.at(4));
        assert!(state.unknown.is_empty());
    }

    /// A lookup during the writer's commit, in a cache that has kept nothing yet: what it read
    /// is not kept at the unsure version, so a revocation committed by another connection in
    /// the same gap is seen by the next lookup there, not answered from the first one's read.
    #[test]
    fn a_read_during_the_writers_commit_is_not_kept_even_by_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (server, cli) = (Store::open(&path).unwrap(), Store::open(&path).unwrap());
        alice_with_a_token(&cli);
        // The header is seen, and nothing is kept.
        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Miss(_)
        ));
        bookkeeping(&server, &|| {
            let read = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
            assert!(read.token.revoked_at.is_none());
            cli.revoke_token("abcdefghijkl", &actor()).unwrap();
            let read = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
            assert!(
                read.token.revoked_at.is_some(),
                "a revocation in the gap was answered from the read before it"
            );
        });
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(fresh.token.revoked_at.is_some());
    }

    /// A commit drops every entry, not only those read again: a revoked token is seen as
    /// revoked even when another token's lookup refilled the cache first.
    #[test]
    fn a_revocation_is_seen_after_another_tokens_lookup_refilled_the_cache() {
        let (_dir, server, cli) = cached_in_a_fresh_store();
        cli.insert_token(&personal_token("mnopqrstuvwx", "ci", "alice"), &actor())
            .unwrap();
        server.auth_record_cached("mnopqrstuvwx").unwrap().unwrap();
        cached_and_hit(&server);
        cli.revoke_token("abcdefghijkl", &actor()).unwrap();
        // The other token first: read at the new version.
        server.auth_record_cached("mnopqrstuvwx").unwrap().unwrap();
        let after = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(
            after.token.revoked_at.is_some(),
            "the revoked token was answered from before its revocation"
        );
    }

    /// At most [`super::MAX_UNKNOWN`] unknown ids are remembered: the set starts over once it
    /// holds that many, so a flood of made-up ids cannot grow memory past the cap.
    #[test]
    fn the_unknown_ids_start_over_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cache = super::AuthCache::new(
            rusqlite::Connection::open_in_memory().unwrap(),
            &dir.path().join("t.db"),
        );
        for i in 0..super::MAX_UNKNOWN {
            cache.put_unknown(&format!("id{i}"), 0);
        }
        assert_eq!(
            cache.state.read().unwrap().unknown.len(),
            super::MAX_UNKNOWN
        );
        cache.put_unknown("one-more", 0);
        let state = cache.state.read().unwrap();
        assert_eq!(state.unknown.len(), 1, "the set did not start over");
        assert!(state.unknown.contains("one-more"));
    }

    /// At most [`super::MAX_ENTRIES`] records are kept: the cache starts over once it holds
    /// that many.
    #[test]
    fn the_entries_start_over_at_the_cap() {
        let (dir, server, _cli) = cached_in_a_fresh_store();
        let record = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        let cache = super::AuthCache::new(
            rusqlite::Connection::open_in_memory().unwrap(),
            &dir.path().join("other.db"),
        );
        let with_id = |id: String| {
            let mut r = (*record).clone();
            r.token.id = id;
            std::sync::Arc::new(r)
        };
        for i in 0..super::MAX_ENTRIES {
            cache.put(with_id(format!("id{i}")), 0);
        }
        assert_eq!(
            cache.state.read().unwrap().entries.len(),
            super::MAX_ENTRIES
        );
        cache.put(with_id("one-more".into()), 0);
        let state = cache.state.read().unwrap();
        assert_eq!(state.entries.len(), 1, "the cache did not start over");
        assert!(state.entries.contains_key("one-more"));
    }

    /// A store configured through a symbolic link: SQLite keeps its write-ahead log and index
    /// beside the real file, and a stale `-shm` beside the link (left from before the store was
    /// moved) must not be taken for the live one, whose header would then never move.
    #[test]
    fn a_store_reached_through_a_symlink_watches_the_real_index() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let server = Store::open(&link).unwrap();
        let cli = Store::open(&link).unwrap();
        alice_with_a_token(&cli);
        assert!(dir.path().join("real.db-shm").exists());
        std::fs::copy(
            dir.path().join("real.db-shm"),
            dir.path().join("link.db-shm"),
        )
        .unwrap();

        let first = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(first.token.revoked_at.is_none());
        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Hit(_)
        ));
        cli.revoke_token("abcdefghijkl", &actor()).unwrap();
        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Miss(_)
        ));
    }
}
