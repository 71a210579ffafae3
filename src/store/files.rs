//! The store's files as the file system has them, looked at before SQLite is: the `-wal` and
//! `-shm` beside the store, the markers gitgate leaves there (`-damaged`, `-replaced`), free
//! space, modes, and paths through symbolic links.
//!
//! Why apart from SQLite's side: SQLite, opening a file, acts on what it finds beside it — it
//! deletes a `-wal` beside an empty file, starts a new store where a file is missing — so the
//! states in which that would lose changes are refused here first, in plain file operations
//! that change nothing. [`super::Store::open`] and the CLI ask these before any connection is
//! made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{locks, RESTORE};

/// Why the store at `path` (or its `-wal`, which holds its latest changes) is readable by
/// others than its owner, if it is: it holds password hashes, and a backup restored without
/// `umask 077` (`sqlite3 .backup`, `cp`) comes back 0644 where gitgate made it 0600.
pub fn readable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let real = std::fs::canonicalize(path).ok()?;
    [real.clone(), sidecar(&real, "-wal")]
        .into_iter()
        .find_map(|file| {
            let mode = std::fs::metadata(&file).ok()?.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then(|| {
                format!(
                    "{} is readable by others than its owner (mode {mode:04o}): it holds password \
                     hashes; chmod 600 it (SQLite gives its -wal and -shm the file's mode)",
                    file.display()
                )
            })
        })
}

/// What was at a store's path before a command made a new store there, so that a command that
/// then fails (or is stopped) can leave it as it was: "every bad input changes nothing", and a
/// new empty store left by a typo would answer the next `token list` "nothing" where it said
/// "no token store at ... check the path".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeforeANewStore {
    /// No file: the new store's files are removed.
    Nothing,
    /// An empty file (`: > gitgate.db`), with its mode: it is emptied again, its mode put back.
    AnEmptyFile { mode: u32 },
}

impl BeforeANewStore {
    /// What is at `path` when opening it would make a new store there: nothing, or an empty
    /// file (with its mode); `None` when a store (or anything else) is there already.
    pub fn at(path: &Path) -> Option<BeforeANewStore> {
        use std::os::unix::fs::PermissionsExt;
        if is_an_empty_file(path) {
            let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o7777);
            Some(BeforeANewStore::AnEmptyFile { mode })
        } else {
            (!path.exists()).then_some(BeforeANewStore::Nothing)
        }
    }
}

/// Undo the store just made at `path` over what was there `before`, once this process is done
/// with it — unless it holds anything at all (another command's user, written while this one
/// waited for its password; this command's own change, made before a stop signal came), or
/// another process has it open (a server started beside the command): it is then a store in
/// use. Whether it was undone.
pub fn undo_a_new_store(path: &Path, before: BeforeANewStore) -> bool {
    let real = real_path(path);
    if !locks::others_holding(&real).is_empty() || !holds_nothing(&real) {
        return false;
    }
    let file = match before {
        BeforeANewStore::Nothing => std::fs::remove_file(&real),
        BeforeANewStore::AnEmptyFile { mode } => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&real)
                .and_then(|f| f.set_len(0))
                .and_then(|()| {
                    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode))
                })
        }
    };
    let wal = std::fs::remove_file(sidecar(&real, "-wal"));
    let shm = std::fs::remove_file(sidecar(&real, "-shm"));
    let gone = |r: std::io::Result<()>| {
        r.is_ok() || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    };
    gone(file) && gone(wal) && gone(shm)
}

/// Whether the store at `real` has no row in any table (a store just made has none); `false`
/// when that cannot be told.
pub(super) fn holds_nothing(real: &Path) -> bool {
    Connection::open_with_flags(real, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| holds_no_row(&c))
        .unwrap_or(false)
}

/// Whether the store open on `c` has no row in any table (see [`holds_nothing`]).
pub(super) fn holds_no_row(c: &Connection) -> rusqlite::Result<bool> {
    let tables: Vec<String> = c
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for table in tables {
        let any: bool = c.query_row(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM \"{}\")",
                table.replace('"', "\"\"")
            ),
            [],
            |r| r.get(0),
        )?;
        if any {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The name SQLite gives a store's write-ahead log (`suffix` `-wal`) or its index (`-shm`): the
/// store's path with the suffix.
pub(crate) fn sidecar(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Refuse a store file emptied (truncated to 0 bytes), or missing, beside a `-wal` that still
/// holds changes: SQLite, opening a file of no pages, deletes the `-wal` it finds beside it —
/// the one copy of what the log held — and goes on with a new, empty store (and creating the
/// missing file does the same). Checked before SQLite sees the file. A store in use is never 0
/// bytes (its first page is written when it is made), and its `-wal` is never left without it,
/// so this is damage, or a mistake (`: > gitgate.db`, a store moved without its `-wal`), not a
/// state gitgate leaves.
pub(crate) fn refuse_a_log_without_its_file(path: &Path) -> std::result::Result<(), String> {
    // Through a symbolic link, the `-wal` is beside the real file (one not there yet included:
    // SQLite creates it where the link leads).
    let real = real_path(path);
    let missing = match std::fs::symlink_metadata(&real) {
        Ok(file) if file.is_file() && file.len() == 0 => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        _ => return Ok(()),
    };
    let wal = sidecar(&real, "-wal");
    match std::fs::metadata(&wal) {
        Ok(log) if log.len() > 0 && missing => Err(format!(
            "the store file is missing, but a -wal beside where it goes ({}, {} bytes) holds \
             changes, which SQLite would delete on creating a new store: nothing was created \
             or changed. Put the store file back beside it (or, to start over with an empty \
             store, move that -wal away first)",
            wal.display(),
            log.len()
        )),
        Ok(log) if log.len() > 0 => Err(format!(
            "the store file is empty (0 bytes), but the -wal beside it ({}, {} bytes) still \
             holds changes, which SQLite would delete on opening the store: nothing was opened \
             or changed. Keep that -wal, and restore the store file from a backup",
            wal.display(),
            log.len()
        )),
        _ => Ok(()),
    }
}

/// A `-shm` without its `-wal`: a process has the store open (gitgate serving), and its `-wal`
/// was deleted under it. SQLite would then fail a command's writes with a bare "disk I/O
/// error", and a check would find pages missing and call the store damaged — when a stop of
/// that process, which writes its log back, is all it takes. (A closing connection deletes the
/// `-wal` a moment before the `-shm`: looked at twice, 100 ms apart.)
pub(super) fn refuse_an_index_without_its_log(path: &Path) -> std::result::Result<(), String> {
    let real = real_path(path);
    let (wal, shm) = (sidecar(&real, "-wal"), sidecar(&real, "-shm"));
    let orphaned = || shm.exists() && !wal.exists();
    if !orphaned() {
        return Ok(());
    }
    let unheld = || locks::anyone_holds(&shm) == Some(false);
    let unheld_before = unheld();
    std::thread::sleep(Duration::from_millis(100));
    if !orphaned() {
        return Ok(());
    }
    if unheld_before && unheld() {
        // No process has it open (each connection holds a lock on it while it is): left over.
        return Err(format!(
            "{} is there without {}, and no process has it open: it is left over (from a crash, \
             or a restore that removed only the -wal). Remove {} and run this again; the store \
             is not damaged. Nothing was opened or changed",
            shm.display(),
            wal.display(),
            shm.display()
        ));
    }
    Err(format!(
        "{} is there without {}: a process has the store open (gitgate serving) and the -wal \
         was deleted under it — gitgate then refuses every token until it is restarted. Stop \
         gitgate (at its stop it writes its own log back into the store) and run this again; \
         the store is not damaged, do not restore a backup for this. Nothing was opened or \
         changed",
        shm.display(),
        wal.display()
    ))
}

/// The store file held open by another process (gitgate serving) with neither its `-wal` nor
/// its `-shm` beside it: both were deleted, or moved away, under it. That process's changes
/// since its log was last written into the store are in that log alone, which no other
/// process can see now: a command would read the store as it was before them (a token revoked
/// since, active again), and its first write would start a new log, so that the holder's
/// could never be written back at its stop — those changes lost for good. Looked at three
/// times, 100 ms apart: a server opening a store not yet in WAL mode holds its lock a moment
/// before it makes its log.
pub(super) fn refuse_a_store_whose_logs_are_gone(path: &Path) -> std::result::Result<(), String> {
    let real = real_path(path);
    let (wal, shm) = (sidecar(&real, "-wal"), sidecar(&real, "-shm"));
    let gone = || real.is_file() && !wal.exists() && !shm.exists();
    if !gone() {
        return Ok(());
    }
    let mut pids = locks::others_holding(&real);
    for _ in 0..2 {
        if pids.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
        if !gone() {
            return Ok(());
        }
        let again = locks::others_holding(&real);
        pids.retain(|pid| again.contains(pid));
    }
    if pids.is_empty() {
        return Ok(());
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    Err(format!(
        "{} and {} are gone, but process {} (gitgate serving, most likely) has the store open: \
         they were deleted or moved away under it, and its changes since its log was last \
         written into the store are in that log alone. Read now, the store would show none of \
         them (a token revoked since, active again); written now, they would be lost for good. \
         Put the -wal and -shm back if they were moved, or stop that process (at its stop it \
         writes its own log back into the store) and run this again. Nothing was opened or \
         changed",
        wal.display(),
        shm.display(),
        pids.join(", ")
    ))
}

/// Whether the store file at `path` is there but empty (0 bytes): a failed copy, a `touch`, a
/// truncated restore. It holds no store, so it is taken as a missing one: a command that
/// only reads refuses it, and `serve` says it makes a new, empty store in it. (A `-wal` with
/// changes beside it is refused by [`refuse_a_log_without_its_file`].)
pub(crate) fn is_an_empty_file(path: &Path) -> bool {
    std::fs::metadata(real_path(path)).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// Where the store at `path` really is, and SQLite keeps its sidecars: symbolic links resolved,
/// through a link whose target is gone too.
pub(super) fn real_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| link_target(path))
}

/// Where `path` leads through symbolic links (at most 16), when what they lead to is not there
/// (so that `canonicalize` fails): the name SQLite would create.
pub(super) fn link_target(path: &Path) -> PathBuf {
    let mut at = path.to_path_buf();
    for _ in 0..16 {
        let Ok(target) = std::fs::read_link(&at) else {
            break;
        };
        at = match at.parent() {
            Some(parent) => parent.join(target),
            None => target,
        };
    }
    at
}

/// The marker a server leaves at its stop beside a store file that was replaced under it while
/// the old file's `-wal` and `-shm` stayed (see `Inner::report`).
pub(super) fn replaced_marker(real: &Path) -> PathBuf {
    sidecar(real, "-replaced")
}

/// The marker a process leaves beside a store file it found damaged (see
/// [`super::Store::found_damaged`]): the other processes on the store — a running server, whose cache
/// would go on admitting tokens no process can revoke any more, and whose stop would apply its
/// log to the ruined file — give up on it as the finder did, and every later open refuses it
/// until the store is restored and the marker removed.
pub(super) fn damaged_marker(real: &Path) -> PathBuf {
    sidecar(real, "-damaged")
}

/// Leaves the damage marker beside the store at `real`, saying what was found, by which process
/// and when; its path.
pub(super) fn leave_damage_marker(real: &Path, what: &str) -> std::io::Result<PathBuf> {
    let marker = damaged_marker(real);
    let said = format!(
        "{what}; found by process {} at {}",
        std::process::id(),
        crate::clock::datetime(crate::clock::now_ms())
    );
    std::fs::write(&marker, format!("{said}\n"))?;
    Ok(marker)
}

/// What the damage marker beside the store at `real` says, when there is one.
pub(super) fn damage_said(real: &Path) -> Option<String> {
    let marker = damaged_marker(real);
    // Looked for by `stat`, which takes no descriptor: a process out of them must not take
    // the store for damaged.
    std::fs::symlink_metadata(&marker).ok()?;
    Some(match std::fs::read_to_string(&marker) {
        Ok(said) => said.trim().to_string(),
        Err(e) => format!("its text unreadable: {e}"),
    })
}

/// Refuses a store that a process found damaged (its marker, [`damaged_marker`], says so).
/// [`refuse_a_store_found_damaged`] for a command that finds no store to open (an empty file):
/// the marker says more than "empty" does, and its advice is the one that works.
pub(crate) fn refuse_a_store_marked_damaged(path: &Path) -> std::result::Result<(), String> {
    refuse_a_store_found_damaged(&real_path(path))
}

pub(super) fn refuse_a_store_found_damaged(real: &Path) -> std::result::Result<(), String> {
    match damage_said(real) {
        None => Ok(()),
        Some(said) => Err(format!(
            "{} says the store was found damaged ({said}); nothing was opened or changed: \
             {RESTORE}, with gitgate stopped: remove {} and {} if they are there (they belong \
             to the damaged file; left beside a restored one they damage it again), copy the \
             backup in, then remove the marker",
            damaged_marker(real).display(),
            sidecar(real, "-wal").display(),
            sidecar(real, "-shm").display()
        )),
    }
}

/// Refuses a store whose `-wal` and `-shm` belong to the file that was replaced under a server
/// (its marker, [`replaced_marker`], says so): SQLite would apply the old file's log to the new
/// one — silently undoing a restored backup's state, or making a `VACUUM INTO` copy look
/// damaged. Which one is meant is the operator's to say. With the logs gone, the marker is
/// stale and removed.
pub(super) fn refuse_the_logs_of_a_replaced_file(
    real: &Path,
    wal: &Path,
    shm: &Path,
) -> std::result::Result<(), String> {
    let marker = replaced_marker(real);
    // Looked for by `stat`, which takes no descriptor, as the damage marker is: a process out
    // of them must not take its failed read for a marker, and be told to remove the logs.
    if let Err(e) = std::fs::symlink_metadata(&marker) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(());
        }
    }
    let said = match std::fs::read_to_string(&marker) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Ok(said) => said.trim().to_string(),
        Err(e) => format!("unreadable: {e}"),
    };
    if std::fs::symlink_metadata(wal).is_err() && std::fs::symlink_metadata(shm).is_err() {
        let _ = std::fs::remove_file(&marker);
        return Ok(());
    }
    Err(format!(
        "{} says the store file was replaced while gitgate was running ({said}), and {} and {} \
         are the replaced file's: opening the store would apply them to this file. Nothing was \
         opened or changed. If this file is the one to keep (a restored backup), remove those \
         two and the marker; if it is the very file, copied or moved to another file system and \
         back, the log is its own: remove only the marker",
        marker.display(),
        wal.display(),
        shm.display()
    ))
}

/// Identifies a file across renames: device and inode.
pub(super) type FileId = (u64, u64);

#[cfg(unix)]
pub(super) fn file_id(path: &Path) -> std::io::Result<FileId> {
    file_id_and_len(path).map(|(id, _)| id)
}

/// The file's identity and its length in bytes, from one `stat`.
#[cfg(unix)]
pub(super) fn file_id_and_len(path: &Path) -> std::io::Result<(FileId, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(((m.dev(), m.ino()), m.len()))
}

/// The size of the `-shm` file SQLite makes when it opens a store in WAL mode (its first
/// 32 KiB region of the WAL index), with room for the first pages of a `-wal`.
pub(super) const ROOM_TO_OPEN: u64 = 40 * 1024;

/// Why a store whose `-shm` is not there yet cannot be opened in `folder` with `free` bytes
/// left on its file system; `None` when it can.
pub(super) fn no_room_for_the_index(free: u64, folder: &Path, file: &Path) -> Option<String> {
    (free < ROOM_TO_OPEN).then(|| {
        format!(
            "no space left: the file system holding {folder} has {free} bytes free, and SQLite \
             needs about {kib} KiB there for {file}-shm and {file}-wal; free some space (nothing \
             was created)",
            folder = folder.display(),
            file = file.display(),
            kib = ROOM_TO_OPEN / 1024,
        )
    })
}

/// Free space below which a store's writes are about to fail: a revocation or a new token
/// needs a few pages of `-wal`, and the writer's window of audit events and last uses more.
pub(super) const ROOM_TO_WRITE: u64 = 1024 * 1024;

/// A warning for a store whose file system is (nearly) full, for `check` and the start: a
/// store whose `-shm` is already there (a server running on it) opens on a full disk, and
/// reads work, so nothing else would say so before the first revocation fails.
pub fn low_on_space(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let folder = match real.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    little_room_to_write(free_bytes(&folder)?, &folder)
}

/// Why writes to a store in `folder` with `free` bytes left on its file system are about to
/// fail; `None` when there is room.
pub(super) fn little_room_to_write(free: u64, folder: &Path) -> Option<String> {
    (free < ROOM_TO_WRITE).then(|| {
        format!(
            "the file system holding {} has {free} bytes free: revocations, new tokens and \
             grants may fail (\"database or disk is full\"), and audit events and last uses \
             be lost; free some space",
            folder.display()
        )
    })
}

/// Bytes this process may still write on the file system holding `folder` (root may use the
/// blocks kept for it); `None` when that cannot be told.
pub(super) fn free_bytes(folder: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(folder).ok()?;
    let blocks = if rustix::process::geteuid().is_root() {
        s.f_bfree
    } else {
        s.f_bavail
    };
    Some(blocks.saturating_mul(s.f_frsize))
}

#[cfg(not(unix))]
pub(super) fn file_id_and_len(path: &Path) -> std::io::Result<(FileId, u64)> {
    std::fs::metadata(path).map(|m| ((0, 0), m.len()))
}

#[cfg(not(unix))]
pub(super) fn file_id(path: &Path) -> std::io::Result<FileId> {
    std::fs::metadata(path).map(|_| (0, 0))
}

/// Why `path` cannot be a store, before SQLite is asked: its folder is not there (no store
/// could be created in it), or it is a folder itself.
pub(super) fn usable_path(path: &Path) -> std::result::Result<(), String> {
    usable_path_through(path, 0)
}

/// [`usable_path`], `links` symbolic links in.
pub(super) fn usable_path_through(path: &Path, links: u32) -> std::result::Result<(), String> {
    if links > 16 {
        return Err("too many levels of symbolic links".into());
    }
    // `Path` drops a trailing `/` (`newdir/` has the parent `.`), the system does not: the
    // check and the start must both refuse it.
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(
            "the path ends with /: name a file (e.g. gitgate.db) as [store] path, not a folder"
                .into(),
        );
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            if std::fs::metadata(parent).is_ok() {
                return Err(format!(
                    "{} is a file, not a folder: [store] path names a file in a folder",
                    parent.display()
                ));
            }
            return Err(format!(
                "the folder {} does not exist: make it first, owned by the user that runs \
                 gitgate (install -d -o git -g git -m 700 {}; a systemd StateDirectory= is made \
                 only when the service starts)",
                parent.display(),
                parent.display()
            ));
        }
    }
    if path.is_dir() {
        return Err("that is a folder: name a file in it (e.g. gitgate.db) as [store] path".into());
    }
    // `/dev/null` and the like: SQLite would "open" it and make its `-wal` beside it.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(
            "that is not a regular file (a device, a FIFO or a socket): name a file as [store] path"
                .into(),
        );
    }
    // A symbolic link to a file not there yet is followed when the store is made: the folder
    // it points into must be there.
    if let Ok(target) = std::fs::read_link(path) {
        if !path.exists() {
            let target = path.parent().unwrap_or(Path::new("")).join(target);
            return usable_path_through(&target, links + 1).map_err(|e| {
                format!(
                    "a symbolic link to {}, which cannot be made: {e}",
                    target.display()
                )
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{
        free_bytes, little_room_to_write, no_room_for_the_index, readable_by_others,
        refuse_a_log_without_its_file, undo_a_new_store, usable_path, BeforeANewStore,
        ROOM_TO_OPEN, ROOM_TO_WRITE,
    };

    #[test]
    fn a_store_without_room_for_its_index_is_refused_before_anything_is_made() {
        let folder = Path::new("/srv/git");
        let file = Path::new("/srv/git/gitgate.db");
        let said = no_room_for_the_index(0, folder, file).expect("refused");
        assert!(
            said.contains("no space left: the file system holding /srv/git has 0 bytes free")
                && said.contains("/srv/git/gitgate.db-shm")
                && said.contains("nothing was created"),
            "{said}"
        );
        assert!(no_room_for_the_index(ROOM_TO_OPEN - 1, folder, file).is_some());
        assert!(no_room_for_the_index(ROOM_TO_OPEN, folder, file).is_none());
        let said = little_room_to_write(4096, folder).expect("warned");
        assert!(
            said.contains("/srv/git has 4096 bytes free: revocations")
                && said.contains("database or disk is full"),
            "{said}"
        );
        assert!(little_room_to_write(ROOM_TO_WRITE - 1, folder).is_some());
        assert!(little_room_to_write(ROOM_TO_WRITE, folder).is_none());
        // This machine's own temporary folder has room.
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|free| free >= ROOM_TO_OPEN));
        crate::store::Store::check_can_write(&dir.path().join("t.db")).unwrap();
    }

    /// A store or its `-wal` that its group or others may read is said so, the file named;
    /// one only its owner may read is not.
    #[test]
    fn a_store_readable_by_its_group_is_said_so() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let wal = super::sidecar(&db, "-wal");
        let mode = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        std::fs::write(&db, b"x").unwrap();
        std::fs::write(&wal, b"x").unwrap();
        mode(&db, 0o600);
        mode(&wal, 0o600);
        assert_eq!(readable_by_others(&db), None);
        mode(&db, 0o640);
        let said = readable_by_others(&db).expect("said");
        assert!(
            said.contains("t.db is readable") && said.contains("0640"),
            "{said}"
        );
        mode(&db, 0o600);
        mode(&wal, 0o660);
        let said = readable_by_others(&db).expect("said");
        assert!(said.contains("t.db-wal is readable"), "{said}");
    }

    /// Only a `-wal` that holds changes keeps an empty or missing store file from being
    /// opened; an empty one beside a missing file, or any beside a store with pages, does not.
    #[test]
    fn only_a_log_with_changes_beside_an_empty_or_missing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let wal = super::sidecar(&db, "-wal");
        std::fs::write(&wal, b"").unwrap();
        assert_eq!(refuse_a_log_without_its_file(&db), Ok(()), "an empty -wal");
        std::fs::write(&wal, b"changes").unwrap();
        let e = refuse_a_log_without_its_file(&db).unwrap_err();
        assert!(e.contains("the store file is missing"), "{e}");
        std::fs::write(&db, b"").unwrap();
        let e = refuse_a_log_without_its_file(&db).unwrap_err();
        assert!(e.contains("the store file is empty (0 bytes)"), "{e}");
        std::fs::write(&db, b"pages").unwrap();
        assert_eq!(refuse_a_log_without_its_file(&db), Ok(()), "a store in use");
    }

    /// A store a command made is undone only while it holds nothing: one holding a row
    /// (another command's user, written while this one waited) is kept.
    #[test]
    fn a_new_store_is_undone_only_while_it_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let make = |rows: &str| {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch(&format!("CREATE TABLE users(x); {rows}"))
                .unwrap();
        };
        make("INSERT INTO users VALUES (1);");
        assert!(!undo_a_new_store(&db, BeforeANewStore::Nothing));
        assert!(db.exists(), "a store holding a row is kept");
        std::fs::remove_file(&db).unwrap();
        make("");
        assert!(undo_a_new_store(&db, BeforeANewStore::Nothing));
        assert!(!db.exists(), "an empty new store is removed");
    }

    /// Symbolic links to a store not made yet are followed sixteen deep, no further.
    #[test]
    fn a_path_through_more_than_sixteen_links_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let chain = |n: usize| {
            let name = |i: usize| dir.path().join(format!("c{n}-{i}"));
            for i in 0..n {
                let to = if i + 1 == n {
                    dir.path().join(format!("store{n}.db"))
                } else {
                    name(i + 1)
                };
                std::os::unix::fs::symlink(to, name(i)).unwrap();
            }
            usable_path(&name(0))
        };
        assert_eq!(chain(16), Ok(()));
        let e = chain(17).unwrap_err();
        assert!(e.contains("too many levels of symbolic links"), "{e}");
    }
}
