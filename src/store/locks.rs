//! Whose SQLite locks are on the store's files, from Linux's `/proc/locks`: how a command tells
//! that the `-wal` and `-shm` beside the store file belong to another file.
//!
//! SQLite finds a database's write-ahead log by its name alone. A backup moved over the store
//! file while gitgate serves (the README asks for a stop first) leaves the running server's
//! `-wal` and `-shm` beside it, holding the *old* file's log; any other process that opens the
//! store then reads that log as the new file's — a command would list users the backup does
//! not have, and its first write (or the checkpoint when it closes) would apply the old file's
//! pages to the new one: a damaged store, which the next start serves. The server sees the
//! change (it holds the old file open) and refuses; a command starting afresh cannot see it in
//! the files. It can in the locks: every connection in WAL mode holds a read lock on the store
//! file for as long as it is open (SQLite takes it before it opens the `-shm`, and lets go of
//! it after), and one on the `-shm`. A process holding the `-shm` but no lock on the file at
//! the store's path has the log of another file open.
//!
//! `/proc/locks` is not a snapshot: each `read` lists the locks from a position on, and a lock
//! released between two reads moves the rest up, so a line can be missed (a command's lock on
//! the store file, its `-shm` line still seen: a false stranger, seen under twenty commands at
//! once). So the file is read in as few reads as the kernel allows, a stranger must also hold
//! SQLite's lock bytes on *another* file (the replaced one), and it must be seen so in three
//! readings 100 ms apart.
//!
//! Without `/proc/locks` (another system, or a hidden `/proc`) nothing is refused here: the
//! README's restore procedure (stop, remove the `-wal` and `-shm`, copy, start) is what keeps a
//! restore safe, and this is a net under it.

use std::collections::BTreeSet;
use std::path::Path;

/// A file as `/proc/locks` names it: the device's major and minor numbers, and the inode.
type FileKey = ((u32, u32), u64);

/// Where SQLite's locks on a database file begin (its `PENDING_BYTE`, 0x40000000): a lock there
/// is a connection's to that file, not someone else's lock on the same file.
const SQLITE_LOCK_BYTES: u64 = 0x4000_0000;

/// One POSIX lock held (not waited for): the process, the file, where the lock begins, and
/// whether it is a write lock.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    pid: u32,
    file: FileKey,
    start: u64,
    write: bool,
}

/// The POSIX locks held in `/proc/locks`'s `text`.
fn held_locks(text: &str) -> Vec<Held> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1); // "12:"
            let kind = fields.next()?;
            // A blocked request is listed as "-> POSIX ...": waiting, not holding.
            if kind != "POSIX" {
                return None;
            }
            let (_mode, access) = (fields.next()?, fields.next()?);
            let pid: u32 = fields.next()?.parse().ok()?;
            let mut file = fields.next()?.split(':');
            let major = u32::from_str_radix(file.next()?, 16).ok()?;
            let minor = u32::from_str_radix(file.next()?, 16).ok()?;
            let inode = file.next()?.parse().ok()?;
            let start = fields.next()?.parse().ok()?;
            Some(Held {
                pid,
                file: ((major, minor), inode),
                start,
                write: access == "WRITE",
            })
        })
        .collect()
}

/// The processes other than this one that hold a lock on `shm` and SQLite's locks on another
/// file than `db`, but none on `db`: the ones that have the log at `shm` open for another file.
fn holders_of_another_files_log(text: &str, db: FileKey, shm: FileKey) -> BTreeSet<u32> {
    let held = held_locks(text);
    let pids = |on: &dyn Fn(&Held) -> bool| -> BTreeSet<u32> {
        held.iter().filter(|h| on(h)).map(|h| h.pid).collect()
    };
    let on_db = pids(&|h| h.file == db);
    let on_another_database =
        pids(&|h| h.file != db && h.file != shm && h.start >= SQLITE_LOCK_BYTES);
    pids(&|h| h.file == shm)
        .into_iter()
        .filter(|pid| {
            on_another_database.contains(pid) && !on_db.contains(pid) && *pid != std::process::id()
        })
        .collect()
}

/// `/proc/locks`, in as few reads as the kernel gives it (a page or so each): every read
/// lists what it holds as one consistent look, and what moves between reads is what can be
/// missed (see the module docs).
#[cfg(target_os = "linux")]
fn read_locks() -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open("/proc/locks").ok()?;
    let mut text = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    String::from_utf8(text).ok()
}

#[cfg(target_os = "linux")]
fn key(path: &Path) -> Option<FileKey> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let dev = m.dev();
    // glibc's `major` and `minor` of a `dev_t`.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    Some(((major as u32, minor as u32), m.ino()))
}

/// Refuses when a process has the `-shm` at `shm` open for another file than the one at `db`,
/// seen so in three readings 100 ms apart (see the module docs).
#[cfg(target_os = "linux")]
pub(super) fn refuse_a_log_of_another_file(
    db: &Path,
    wal: &Path,
    shm: &Path,
) -> Result<(), String> {
    let strangers = || -> BTreeSet<u32> {
        let (Some(db), Some(shm), Some(text)) = (key(db), key(shm), read_locks()) else {
            return BTreeSet::new();
        };
        holders_of_another_files_log(&text, db, shm)
    };
    let mut pids = strangers();
    for _ in 0..2 {
        if pids.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let again = strangers();
        pids.retain(|pid| again.contains(pid));
    }
    if pids.is_empty() {
        return Ok(());
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    Err(format!(
        "{wal} and {shm} belong to another store file than {db}: process {pids} (gitgate \
         serving, or another program with the store open) has them open for the file that was \
         at that path before it was replaced (a backup moved into place while gitgate ran?), \
         and opening the store now would read that file's log as this one's, mixing the two and \
         damaging the store. Stop that process first: a gitgate's last lines say which -wal \
         and -shm to remove before the store is opened again. Nothing was opened or changed",
        wal = wal.display(),
        shm = shm.display(),
        db = db.display(),
        pids = pids.join(", ")
    ))
}

/// The processes other than this one that hold a write lock on SQLite's lock bytes of the
/// file at `db`: in WAL mode, which keeps writers' locks on the `-shm`, a connection in
/// `locking_mode=EXCLUSIVE`, which shuts every other process out, readers too. (A connection
/// merely open holds a read lock there.) Empty if none, or unknown.
#[cfg(target_os = "linux")]
pub fn lockers(db: &Path) -> BTreeSet<u32> {
    let (Some(db), Some(text)) = (key(db), read_locks()) else {
        return BTreeSet::new();
    };
    lockers_in(&text, db)
}

#[cfg(not(target_os = "linux"))]
pub fn lockers(_db: &Path) -> BTreeSet<u32> {
    BTreeSet::new()
}

/// Whether some process holds a lock on the file at `path` (a `-shm`: every connection open
/// on its store holds one); `None` when that cannot be known (no `/proc/locks`, no file).
#[cfg(target_os = "linux")]
pub(super) fn anyone_holds(path: &Path) -> Option<bool> {
    let (file, text) = (key(path)?, read_locks()?);
    Some(held_locks(&text).iter().any(|h| h.file == file))
}

#[cfg(not(target_os = "linux"))]
pub(super) fn anyone_holds(_path: &Path) -> Option<bool> {
    None
}

/// The processes other than this one that hold a lock on the file at `path` (the store file:
/// every connection open on it in WAL mode holds one); empty if none, or unknown.
#[cfg(target_os = "linux")]
pub(super) fn others_holding(path: &Path) -> BTreeSet<u32> {
    let (Some(file), Some(text)) = (key(path), read_locks()) else {
        return BTreeSet::new();
    };
    held_locks(&text)
        .into_iter()
        .filter(|h| h.file == file && h.pid != std::process::id())
        .map(|h| h.pid)
        .collect()
}

#[cfg(not(target_os = "linux"))]
pub(super) fn others_holding(_path: &Path) -> BTreeSet<u32> {
    BTreeSet::new()
}

/// Where SQLite's write lock of a database in WAL mode is (`WAL_WRITE_LOCK`: the first of the
/// lock bytes it keeps in the `-shm`, after the 120 bytes of the index header).
const WAL_WRITE_LOCK_BYTE: u64 = 120;

/// The processes other than this one that hold the write lock of the store at `db`: in WAL
/// mode a write lock on [`WAL_WRITE_LOCK_BYTE`] of its `-shm` (a transaction that writes, or
/// a `BEGIN IMMEDIATE` left open in a `sqlite3` shell), or one that keeps every other process
/// out (see [`lockers`]). Empty if none, or unknown (no `/proc/locks`).
#[cfg(target_os = "linux")]
pub fn write_lock_holders(db: &Path) -> BTreeSet<u32> {
    let shm = shm_of(db);
    let (Some(text), Some(db)) = (read_locks(), key(db)) else {
        return BTreeSet::new();
    };
    write_lock_holders_in(&text, db, key(&shm))
}

#[cfg(not(target_os = "linux"))]
pub fn write_lock_holders(_db: &Path) -> BTreeSet<u32> {
    BTreeSet::new()
}

/// The `-shm` of the store at `db`: beside the real file, where SQLite keeps it — a store
/// configured through a symbolic link has none beside the link (or a stale one).
fn shm_of(db: &Path) -> std::path::PathBuf {
    super::files::sidecar(&super::files::real_path(db), "-shm")
}

/// [`write_lock_holders`] of `db` (and its `-shm`, if there is one) in `/proc/locks`'s `text`.
fn write_lock_holders_in(text: &str, db: FileKey, shm: Option<FileKey>) -> BTreeSet<u32> {
    let mut holders = lockers_in(text, db);
    holders.extend(
        held_locks(text)
            .into_iter()
            .filter(|h| {
                Some(h.file) == shm
                    && h.write
                    && h.start == WAL_WRITE_LOCK_BYTE
                    && h.pid != std::process::id()
            })
            .map(|h| h.pid),
    );
    holders
}

/// Who holds the write lock of the store at `db`, and what the operator can do about it, in
/// words for a warning: SQLite itself only says `database is locked`. The holder is named
/// with its command (`process 4242 (sqlite3)`) when `/proc/locks` shows it; else the files to
/// ask `fuser` about.
pub fn write_lock_said(db: &Path) -> String {
    match write_lock_holders_named(db).as_slice() {
        [] => format!(
            "the process holding it cannot be told from here (it may have let go just now); \
             `fuser -v {db} {shm}` lists the processes that have the store open — an open \
             sqlite3 shell inside a transaction, a backup, a long gitgate command: end its \
             transaction (COMMIT or ROLLBACK) or the process",
            db = db.display(),
            shm = shm_of(db).display()
        ),
        named => format!(
            "held by {}: end its transaction (COMMIT or ROLLBACK in a sqlite3 shell) or the \
             process",
            named.join(", ")
        ),
    }
}

/// The [`write_lock_holders`] of the store at `db`, each with its command if known:
/// `process 4242 (sqlite3)`.
pub(super) fn write_lock_holders_named(db: &Path) -> Vec<String> {
    write_lock_holders(db)
        .into_iter()
        .map(
            |pid| match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                Ok(comm) if !comm.trim().is_empty() => {
                    format!("process {pid} ({})", comm.trim())
                }
                _ => format!("process {pid}"),
            },
        )
        .collect()
}

/// [`lockers`] of `db` in `/proc/locks`'s `text`.
fn lockers_in(text: &str, db: FileKey) -> BTreeSet<u32> {
    held_locks(text)
        .into_iter()
        .filter(|h| {
            h.file == db && h.write && h.start >= SQLITE_LOCK_BYTES && h.pid != std::process::id()
        })
        .map(|h| h.pid)
        .collect()
}

#[cfg(not(target_os = "linux"))]
pub(super) fn refuse_a_log_of_another_file(
    _db: &Path,
    _wal: &Path,
    _shm: &Path,
) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_holds_sqlites_locks_on_a_file() {
        let db = ((0xfe, 0x00), 10036068);
        // 22605 reads the -shm of another file, 31000 holds a read lock at byte 128 of the
        // store (not SQLite's lock bytes), 40 a whole-file flock: none holds the store so.
        assert!(lockers_in(LOCKS, db).is_empty());
        let held = "1: POSIX  ADVISORY  WRITE 4242 fe:00:10036068 1073741824 1073741824\n\
                    2: POSIX  ADVISORY  READ 4242 fe:00:10036068 1073741826 1073742335\n\
                    3: -> POSIX  ADVISORY  WRITE 77 fe:00:10036068 1073741824 1073741824\n\
                    4: POSIX  ADVISORY  READ 5151 fe:00:10036068 1073741826 1073741826\n";
        // The holder, once; a process waiting for the lock holds nothing, and one merely
        // reading (a running gitgate) keeps nobody out.
        assert_eq!(lockers_in(held, db).into_iter().collect::<Vec<_>>(), [4242]);
    }

    /// The holder of a WAL store's write lock is the process with a write lock on byte 120
    /// of its `-shm`; readers' locks there (bytes 123 on) and a lock waited for are no hold.
    #[test]
    fn who_holds_the_write_lock_of_a_store_in_wal_mode() {
        let db = ((0xfe, 0x00), 10036068);
        let shm = ((0xfe, 0x00), 10036070);
        let held = "1: POSIX  ADVISORY  WRITE 4242 fe:00:10036070 120 120\n\
                    2: POSIX  ADVISORY  READ 4242 fe:00:10036070 123 123\n\
                    3: POSIX  ADVISORY  READ 5151 fe:00:10036070 124 124\n\
                    4: -> POSIX  ADVISORY  WRITE 77 fe:00:10036070 120 120\n\
                    5: POSIX  ADVISORY  READ 5151 fe:00:10036070 128 128\n\
                    6: POSIX  ADVISORY  WRITE 6000 fe:00:99 120 120\n";
        let holders = write_lock_holders_in(held, db, Some(shm));
        assert_eq!(holders.into_iter().collect::<Vec<_>>(), [4242]);
        // Without a -shm, only a hold on the store file itself counts.
        assert!(write_lock_holders_in(held, db, None).is_empty());
        // One that keeps every process out is a holder too.
        let exclusive = "1: POSIX  ADVISORY  WRITE 31 fe:00:10036068 1073741824 1073741824\n";
        assert_eq!(
            write_lock_holders_in(exclusive, db, Some(shm))
                .into_iter()
                .collect::<Vec<_>>(),
            [31]
        );
    }

    const LOCKS: &str = "\
1: POSIX  ADVISORY  READ 22605 fe:00:10036068 128 128
2: POSIX  ADVISORY  READ 22605 fe:00:10036254 1073741826 1073742335
3: POSIX  ADVISORY  READ 31000 fe:00:10036068 128 128
4: POSIX  ADVISORY  READ 31000 fe:00:99 1073741826 1073742335
5: OFDLCK ADVISORY  READ -1 fe:00:10036068 128 128
6: FLOCK  ADVISORY  WRITE 40 103:02:10036068 0 EOF
6: -> POSIX  ADVISORY  WRITE 41 fe:00:10036068 128 128
";

    #[test]
    fn locks_held_are_read_and_waiters_and_other_kinds_left_out() {
        let held = held_locks(LOCKS);
        assert_eq!(held.len(), 4, "{held:?}");
        assert_eq!(
            held[0],
            Held {
                pid: 22605,
                file: ((0xfe, 0), 10036068),
                start: 128,
                write: false,
            }
        );
        assert!(held.iter().all(|h| ![40, 41].contains(&h.pid)));
        assert!(held_locks("garbage\n\n1: POSIX ADVISORY READ x fe:00:1 0 0").is_empty());
    }

    #[test]
    fn a_process_with_the_index_open_for_another_file_is_named() {
        let (shm, db) = (((0xfe, 0), 10036068), ((0xfe, 0), 10036254));
        // 22605 holds both; 31000 the index and SQLite's locks on another file (the one
        // replaced).
        assert_eq!(
            holders_of_another_files_log(LOCKS, db, shm),
            BTreeSet::from([31000])
        );
        // Once the other file is the one at the path, it is 22605 that holds another's log.
        assert_eq!(
            holders_of_another_files_log(LOCKS, ((0xfe, 0), 99), shm),
            BTreeSet::from([22605])
        );
        // Nobody on the index: nothing to refuse.
        assert!(holders_of_another_files_log(LOCKS, db, ((0xfe, 0), 1)).is_empty());
    }

    #[test]
    fn a_process_whose_store_lock_was_missed_is_not_taken_for_a_stranger() {
        // A reading that missed 22605's line on the store file (released and taken again
        // between two reads): its index line alone does not make it one, as it holds SQLite's
        // locks on no other file.
        let missed: String = LOCKS
            .lines()
            .filter(|l| !l.starts_with("2:"))
            .collect::<Vec<_>>()
            .join("\n");
        let (shm, db) = (((0xfe, 0), 10036068), ((0xfe, 0), 10036254));
        assert_eq!(
            holders_of_another_files_log(&missed, db, shm),
            BTreeSet::from([31000])
        );
    }

    /// This process's own locks never make it a stranger or a locker of its own store: a
    /// command's connection is not another process.
    #[test]
    fn this_process_is_never_named() {
        let me = std::process::id();
        let (shm, db) = (((0xfe, 0), 10036068), ((0xfe, 0), 10036254));
        // The index, and SQLite's locks on another file (a second store it has open).
        let text = format!(
            "1: POSIX  ADVISORY  READ {me} fe:00:10036068 128 128\n\
             2: POSIX  ADVISORY  READ {me} fe:00:99 1073741826 1073742335\n"
        );
        assert!(holders_of_another_files_log(&text, db, shm).is_empty());
        // A write lock on the store's lock bytes.
        let text = format!("1: POSIX  ADVISORY  WRITE {me} fe:00:10036254 1073741824 1073741824\n");
        assert!(lockers_in(&text, db).is_empty());
    }

    /// SQLite's lock bytes begin at its `PENDING_BYTE` itself: a lock on that very byte of
    /// another file is SQLite's too.
    #[test]
    fn a_lock_on_the_pending_byte_of_another_file_is_sqlites() {
        let (shm, db) = (((0xfe, 0), 10036068), ((0xfe, 0), 10036254));
        let text = "1: POSIX  ADVISORY  READ 31000 fe:00:10036068 128 128\n\
                    2: POSIX  ADVISORY  WRITE 31000 fe:00:99 1073741824 1073741824\n\
                    3: POSIX  ADVISORY  READ 31001 fe:00:10036068 128 128\n\
                    4: POSIX  ADVISORY  WRITE 31001 fe:00:99 1073741823 1073741823\n";
        assert_eq!(
            holders_of_another_files_log(text, db, shm),
            BTreeSet::from([31000])
        );
    }

    /// A store this process has open is held by nobody else: its own connection's locks are
    /// left out (or every command would find its own store in use).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_store_only_this_process_has_open_is_held_by_no_other() {
        // Without /proc/locks (Linux's), the module reads nothing and this test checks nothing.
        assert!(read_locks().is_some(), "/proc/locks cannot be read");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            .unwrap();
        let shm = dir.path().join("s.db-shm");
        assert_eq!(
            anyone_holds(&shm),
            Some(true),
            "its connection holds the -shm"
        );
        assert!(others_holding(&path).is_empty());
        assert!(lockers(&path).is_empty());
    }
}
