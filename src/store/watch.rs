//! Seeing the store's files deleted, renamed or replaced with one system call per request
//! instead of three.
//!
//! gitgate fails closed when the store file, its `-wal` or its `-shm` is deleted or replaced
//! under the running server (`Store::check_file`): a `stat` of the store's path and an `fstat`
//! of each open index file (and, since, the store path resolved and a `stat` of the `-wal` and
//! `-shm` beside it). Run on every store operation, the first three system calls alone were
//! about 6 % of gitgate's CPU on a proxied request. Every such change is a change of a folder's names
//! — an unlink, a rename, a link, a create — and the kernel queues an inotify event for it inside
//! the system call that makes it, before that call returns to `rm`, `mv` or the CLI. So a request
//! that comes after the change finds the event queued: one `ioctl(FIONREAD)` per request says
//! whether anything happened in the watched folders, and the full checks run only then.
//!
//! Watched: the folder of the store path as configured, the folder SQLite resolved it to
//! (through symbolic links), and every folder above either — a renamed parent, a symbolic link
//! on the path pointed elsewhere. Not seen by inotify: a file system mounted over one of those
//! folders, a link of a chain of symbolic links that lies outside them, a change made by another
//! machine on a network file system. For those the full checks also run at least every
//! [`FULL_CHECK_EVERY`]: such a change is seen within that time instead of on the next request.
//!
//! Any event runs the full checks: the watch does not try to tell which name changed (a busy
//! folder above the store, such as `/tmp`, costs one check per event, as every request cost
//! before). An event that says a watched folder itself moved or went away, a lost event, a
//! watched path that names another folder now, or a store path that leads to another file now
//! (symbolic links re-pointed) sets the watch up again from scratch. Where that fails (a folder
//! on the path is gone), the watch ends: every operation runs the full checks, as it does where
//! inotify cannot be had (not Linux, or the per-user limit of inotify instances reached) — about
//! ten system calls per operation, the store path resolved included. An ended watch is set up
//! again once a full check passes (the folder is back, with the same store in it); after a try
//! that failed, not again within [`FULL_CHECK_EVERY`]. So a folder moved away and back does not
//! cost every later request those system calls until a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// A folder's device and inode, as for the store file.
use super::FileId as FolderId;

/// The longest the full checks are skipped without an event: the bound for the changes inotify
/// does not report (see the module's documentation).
pub(super) const FULL_CHECK_EVERY: Duration = Duration::from_millis(100);

/// An inotify watch on the folders the store's path goes through.
pub(super) struct FolderWatch {
    /// The store's path as configured, made absolute.
    store_path: PathBuf,
    /// `None` once the watch could not be set up again (see [`FolderWatch::take_events`]).
    inotify: RwLock<Option<Inotify>>,
    /// Held by the full check that takes the queued events off and records its result; others
    /// that come meanwhile run their checks without it.
    recording: Mutex<()>,
    /// A recording full check is under way: its events are off the queue but its result is not
    /// known yet, so nobody may skip.
    checking: AtomicBool,
    /// When the last recording full check passed (coarse clock, milliseconds); 0 when a check
    /// failed since.
    passed_ms: AtomicU64,
    /// The watch is gone: every operation runs the full checks, until one that passes sets it
    /// up again ([`FolderWatch::watch_again`]).
    ended: AtomicBool,
    /// Not before this (coarse clock, milliseconds) does a passing check try to set an ended
    /// watch up again.
    next_try_ms: AtomicU64,
    /// Failed checks that could not record their result (another check was recording): that
    /// one does not record a pass if any failed while it ran.
    unrecorded_failures: AtomicU64,
    /// Full checks run through [`FolderWatch::full_check`], for the tests.
    checks: AtomicU64,
}

/// One inotify instance and the folders it watches.
struct Inotify {
    #[cfg(target_os = "linux")]
    fd: rustix::fd::OwnedFd,
    /// Each watched folder's path with the folder it named when the watch was added: a path
    /// through a symbolic link that now names another folder is no longer watched.
    folders: Vec<(PathBuf, FolderId)>,
    /// The store path with its symbolic links resolved when the watch was set up: where it
    /// leads elsewhere now (a link to the store file re-pointed), the watch starts over.
    resolved: Option<PathBuf>,
}

impl FolderWatch {
    /// A watch on the folders of `store_path` (as given and as it resolves) and every folder
    /// above them, or why there can be none (the store is then checked on every operation).
    pub(super) fn new(store_path: &Path) -> std::io::Result<FolderWatch> {
        let store_path = std::path::absolute(store_path)?;
        let inotify = Inotify::new(&store_path)?;
        Ok(FolderWatch {
            store_path,
            inotify: RwLock::new(Some(inotify)),
            recording: Mutex::new(()),
            checking: AtomicBool::new(false),
            passed_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            next_try_ms: AtomicU64::new(0),
            unrecorded_failures: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        })
    }

    /// Whether this operation may skip the full checks: the last full check passed less than
    /// [`FULL_CHECK_EVERY`] ago, no name changed in the watched folders since it took the
    /// queue's events off, and none is under way. One system call.
    pub(super) fn quiet(&self) -> bool {
        // The order matters: a recording check sets `checking` before it takes the events off
        // and clears it after it recorded its result. So an empty queue read here, after it took
        // them, finds it still under way or its result recorded.
        if !self.queue_empty() || self.checking.load(SeqCst) {
            return false;
        }
        let passed = self.passed_ms.load(SeqCst);
        passed != 0 && crate::idle::coarse_now_ms().saturating_sub(passed) < window_ms()
    }

    /// Run `check` (the full checks). Unless another recording check is under way, the queued
    /// events are taken off first and the result is recorded for [`FolderWatch::quiet`].
    pub(super) fn full_check<T, E>(&self, check: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.checks.fetch_add(1, Relaxed);
        if self.ended.load(SeqCst) {
            let out = check();
            if out.is_ok() {
                self.watch_again();
            }
            return out;
        }
        let Ok(_alone) = self.recording.try_lock() else {
            let out = check();
            if out.is_err() {
                // A failure no event announced (a mount, a folder made unreadable): the next
                // operations check too, and the check recording meanwhile records no pass.
                self.unrecorded_failures.fetch_add(1, SeqCst);
                self.passed_ms.store(0, SeqCst);
            }
            return out;
        };
        self.checking.store(true, SeqCst);
        let failures_before = self.unrecorded_failures.load(SeqCst);
        // A pass counts from when its check began, not from when it ended.
        let started = crate::idle::coarse_now_ms().max(1);
        let covered = self.take_events();
        let out = check();
        let unchallenged = self.unrecorded_failures.load(SeqCst) == failures_before;
        let passed = if out.is_ok() && covered && unchallenged {
            started
        } else {
            0
        };
        self.passed_ms.store(passed, SeqCst);
        self.checking.store(false, SeqCst);
        out
    }

    /// After a passing full check while the watch is ended: set it up again, one try at a time,
    /// and after a try that failed not again within [`FULL_CHECK_EVERY`]. The check that passed
    /// ran without a watch, so it covers nothing: the next check after this one records
    /// (`passed_ms` is 0 while ended).
    fn watch_again(&self) {
        let now = crate::idle::coarse_now_ms();
        if now < self.next_try_ms.load(SeqCst) {
            return;
        }
        let Ok(_alone) = self.recording.try_lock() else {
            return;
        };
        let Ok(inotify) = Inotify::new(&self.store_path) else {
            self.next_try_ms.store(now + window_ms(), SeqCst);
            return;
        };
        *self.inotify.write().unwrap_or_else(|p| p.into_inner()) = Some(inotify);
        self.passed_ms.store(0, SeqCst);
        self.ended.store(false, SeqCst);
        tracing::info!("the store's folders are back and watched again");
    }

    /// How many full checks ran through [`FolderWatch::full_check`].
    #[cfg(test)]
    pub(super) fn full_checks(&self) -> u64 {
        self.checks.load(Relaxed)
    }

    fn queue_empty(&self) -> bool {
        self.inotify
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(Inotify::queue_empty)
    }

    /// Take every queued event off. When one says the watch no longer covers the store's path
    /// (a watched folder moved or went away, events were lost), a watched path now names
    /// another folder, or the store path leads to another file (a symbolic link re-pointed),
    /// the folders are watched again from scratch; `false` when that fails (the watch then
    /// ends).
    fn take_events(&self) -> bool {
        let uncovered = match self
            .inotify
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            None => return false,
            Some(inotify) => {
                inotify.take_events()
                    || inotify.folders_moved()
                    || std::fs::canonicalize(&self.store_path).ok() != inotify.resolved
            }
        };
        if !uncovered {
            return true;
        }
        let again = Inotify::new(&self.store_path);
        let covered = again.is_ok();
        if let Err(e) = &again {
            if !self.ended.swap(true, SeqCst) {
                tracing::info!(
                    error = %crate::log_value::LogText(&e.to_string()),
                    "a folder on the store's path was moved or removed and cannot be watched \
                     again: the store's files are checked on every request until it is back"
                );
            }
        }
        *self.inotify.write().unwrap_or_else(|p| p.into_inner()) = again.ok();
        covered
    }
}

impl Inotify {
    /// Watch the folder of `store_path` (absolute), and of where it resolves to, and every
    /// folder above them for changes of names — from the root down, so that a folder re-pointed
    /// while the watches are added is seen by its parent's.
    #[cfg(target_os = "linux")]
    fn new(store_path: &Path) -> std::io::Result<Inotify> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let names = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        let resolved = std::fs::canonicalize(store_path).ok();
        let mut folders = Vec::new();
        for path in std::iter::once(store_path).chain(resolved.as_deref()) {
            let mut above: Vec<&Path> = path.ancestors().skip(1).collect();
            above.reverse();
            for folder in above {
                let id = super::file_id(folder)?;
                inotify::add_watch(&fd, folder, names).map_err(|e| {
                    std::io::Error::other(format!("cannot watch {}: {e}", folder.display()))
                })?;
                // Looked at before the watch was added: a change in between shows as a moved
                // folder at the first check.
                folders.push((folder.to_path_buf(), id));
            }
        }
        Ok(Inotify {
            fd,
            folders,
            resolved,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn new(_: &Path) -> std::io::Result<Inotify> {
        Err(std::io::Error::other("inotify is Linux's"))
    }

    #[cfg(target_os = "linux")]
    fn queue_empty(&self) -> bool {
        rustix::io::ioctl_fionread(&self.fd).is_ok_and(|queued| queued == 0)
    }

    #[cfg(not(target_os = "linux"))]
    fn queue_empty(&self) -> bool {
        false
    }

    /// Take every queued event off; `true` when one says the watch no longer covers the store's
    /// path.
    #[cfg(target_os = "linux")]
    fn take_events(&self) -> bool {
        use rustix::fs::inotify::{ReadFlags, Reader};
        use rustix::io::Errno;
        let uncovering = ReadFlags::DELETE_SELF
            | ReadFlags::MOVE_SELF
            | ReadFlags::IGNORED
            | ReadFlags::UNMOUNT
            | ReadFlags::QUEUE_OVERFLOW;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut events = Reader::new(&self.fd, &mut buf);
        let mut uncovered = false;
        loop {
            match events.next() {
                Ok(event) => uncovered |= event.events().intersects(uncovering),
                Err(Errno::AGAIN) => return uncovered,
                Err(Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::log_value::LogText(&e.to_string()), "could not read the store folders' inotify events");
                    return true;
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn take_events(&self) -> bool {
        true
    }

    /// Whether a watched folder's path now names another folder, or none.
    fn folders_moved(&self) -> bool {
        self.folders
            .iter()
            .any(|(path, id)| super::file_id(path).ok() != Some(*id))
    }
}

fn window_ms() -> u64 {
    FULL_CHECK_EVERY.as_millis() as u64
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn pass() -> Result<(), ()> {
        Ok(())
    }

    /// A watch on `dir/store.db`, with one passing full check recorded.
    fn watching(dir: &Path) -> FolderWatch {
        let watch = FolderWatch::new(&dir.join("store.db")).expect("inotify here");
        assert!(!watch.quiet(), "nothing checked yet");
        assert!(settles(&watch));
        watch
    }

    /// Whether a passing full check lets the next call skip. `/tmp`, above every test's
    /// folder, sees other tests' files come and go: a few tries allow for their events.
    fn settles(watch: &FolderWatch) -> bool {
        (0..50).any(|_| {
            watch.full_check(pass).unwrap();
            watch.quiet()
        })
    }

    #[test]
    fn a_change_of_names_in_the_store_folder_is_seen_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let watch = watching(dir.path());
        type Change<'a> = (&'a str, &'a dyn Fn(&Path));
        let cases: [Change; 4] = [
            ("create", &|d| {
                std::fs::write(d.join("store.db-wal"), b"x").unwrap()
            }),
            ("rename", &|d| {
                std::fs::rename(d.join("store.db-wal"), d.join("old-wal")).unwrap()
            }),
            ("link", &|d| {
                std::fs::hard_link(d.join("old-wal"), d.join("store.db")).unwrap()
            }),
            ("delete", &|d| {
                std::fs::remove_file(d.join("store.db")).unwrap()
            }),
        ];
        for (what, change) in cases {
            change(dir.path());
            assert!(!watch.quiet(), "{what} not seen");
            // A failed full check is not remembered as passed: the next call checks again.
            assert!(watch.full_check(|| Err::<(), _>(())).is_err());
            assert!(
                !watch.quiet(),
                "{what}: a failed check let the next one skip"
            );
            assert!(settles(&watch), "{what}: the events were taken off");
        }
    }

    #[test]
    fn a_folder_gone_from_the_path_ends_the_watch_until_it_is_back() {
        let top = tempfile::tempdir().unwrap();
        let store_dir = top.path().join("a/b");
        std::fs::create_dir_all(&store_dir).unwrap();
        let watch = watching(&store_dir);
        std::fs::write(top.path().join("a/other"), b"x").unwrap();
        assert!(
            !watch.quiet(),
            "a name created above the store's folder not seen"
        );
        assert!(settles(&watch));
        // The store's folder's parent renamed: its path names no folder now.
        std::fs::rename(top.path().join("a"), top.path().join("moved")).unwrap();
        assert!(!watch.quiet());
        watch.full_check(pass).unwrap();
        assert!(
            !watch.quiet(),
            "a folder gone from the path must end the watch"
        );
        // Back in place: the next passing check sets the watch up again ...
        std::fs::rename(top.path().join("moved"), top.path().join("a")).unwrap();
        watch.full_check(pass).unwrap();
        assert!(
            !watch.quiet(),
            "the check that set it up again covers nothing"
        );
        assert!(
            settles(&watch),
            "a folder back in place is not watched again"
        );
        std::fs::write(store_dir.join("store.db-wal"), b"x").unwrap();
        assert!(!watch.quiet(), "the store's folder is watched again");
        assert!(settles(&watch));
        // ... and while the folder is gone, tries are spaced: a try that fails waits a window.
        // Judged only when this thread was not held past the window from the failing try (a
        // try again is then right); such a try is made again, three times at most.
        for held in 1.. {
            std::fs::rename(top.path().join("a"), top.path().join("moved")).unwrap();
            let failing = std::time::Instant::now();
            watch.full_check(pass).unwrap();
            watch.full_check(pass).unwrap();
            std::fs::rename(top.path().join("moved"), top.path().join("a")).unwrap();
            watch.full_check(pass).unwrap();
            let quiet = watch.quiet();
            let settled = settles(&watch);
            if failing.elapsed() < FULL_CHECK_EVERY {
                assert!(!quiet, "tried again within the window");
                assert!(!settled, "tried again within the window");
                break;
            }
            assert!(held < 3, "held past the window in three tries");
            std::thread::sleep(FULL_CHECK_EVERY + Duration::from_millis(20));
            assert!(settles(&watch));
        }
        std::thread::sleep(FULL_CHECK_EVERY + Duration::from_millis(20));
        assert!(settles(&watch), "not tried again after the window");
    }

    /// A deploy's `current` link pointed at the next release: the watch moves with it.
    #[test]
    fn a_symbolic_link_on_the_path_pointed_elsewhere_is_followed() {
        let top = tempfile::tempdir().unwrap();
        for release in ["r1", "r2"] {
            std::fs::create_dir(top.path().join(release)).unwrap();
        }
        std::os::unix::fs::symlink("r1", top.path().join("current")).unwrap();
        let watch = watching(&top.path().join("current"));
        std::fs::write(top.path().join("r1/store.db-wal"), b"x").unwrap();
        assert!(!watch.quiet(), "the first release's folder is watched");
        assert!(settles(&watch));
        repoint_and_check(
            &watch,
            &top.path().join("current"),
            Path::new("r2"),
            &top.path().join("r2/store.db-wal"),
        );
    }

    /// Point `link` at `target` as a deploy does (a new link renamed over the old one), then
    /// check that the watch saw the swap, lives on, and now watches where `written` is.
    fn repoint_and_check(watch: &FolderWatch, link: &Path, target: &Path, written: &Path) {
        let next = link.with_file_name("next");
        std::os::unix::fs::symlink(target, &next).unwrap();
        std::fs::rename(&next, link).unwrap();
        assert!(!watch.quiet(), "the link's swap not seen");
        assert!(settles(watch), "a re-pointed link ended the watch");
        std::fs::write(written, b"x").unwrap();
        assert!(
            !watch.quiet(),
            "the folder the link leads to now is not watched"
        );
    }

    /// A link to the store file re-pointed at a copy in another folder (the same store by hard
    /// links): the watch moves to that folder.
    #[test]
    fn a_link_to_the_store_file_pointed_elsewhere_is_followed() {
        let top = tempfile::tempdir().unwrap();
        for folder in ["etc", "b", "c"] {
            std::fs::create_dir(top.path().join(folder)).unwrap();
        }
        std::fs::write(top.path().join("b/store.db"), b"x").unwrap();
        std::fs::hard_link(top.path().join("b/store.db"), top.path().join("c/store.db")).unwrap();
        std::os::unix::fs::symlink(
            top.path().join("b/store.db"),
            top.path().join("etc/store.db"),
        )
        .unwrap();
        let watch = FolderWatch::new(&top.path().join("etc/store.db")).expect("inotify here");
        assert!(settles(&watch));
        repoint_and_check(
            &watch,
            &top.path().join("etc/store.db"),
            &top.path().join("c/store.db"),
            &top.path().join("c/store.db-wal"),
        );
    }

    #[test]
    fn without_events_the_full_checks_still_run_every_window() {
        let dir = tempfile::tempdir().unwrap();
        let watch = watching(dir.path());
        // The coarse clock moves in steps of a few milliseconds.
        std::thread::sleep(FULL_CHECK_EVERY + Duration::from_millis(20));
        assert!(
            !watch.quiet(),
            "a blind spot of inotify would never be checked"
        );
        assert!(settles(&watch));
    }

    #[test]
    fn a_check_under_way_keeps_everyone_checking_until_its_result_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let watch = watching(dir.path());
        std::fs::write(dir.path().join("store.db"), b"x").unwrap();
        watch
            .full_check(|| {
                // The event is off the queue now, but this check has not passed yet.
                assert!(
                    !watch.quiet(),
                    "skipped while the check of its event was under way"
                );
                // A second check meanwhile runs, without taking events or recording.
                assert_eq!(watch.full_check(|| Ok::<_, ()>(7)), Ok(7));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert!(settles(&watch));
    }

    /// A call made while a recording check runs never skips, however often it is tried: one
    /// try alone can miss a skip, when other tests' files in `/tmp` happen to leave events
    /// queued.
    #[test]
    fn a_call_during_a_recording_check_never_skips() {
        let dir = tempfile::tempdir().unwrap();
        let watch = watching(dir.path());
        for _ in 0..50 {
            assert!(settles(&watch));
            let skipped = watch.full_check(|| Ok::<_, ()>(watch.quiet())).unwrap();
            assert!(!skipped, "skipped while a check was under way");
        }
    }

    /// A check that failed while a recording check ran (a failure no event announced: a mount,
    /// a folder made unreadable) keeps that one from recording a pass: the next call checks
    /// again.
    #[test]
    fn a_failure_during_a_recording_check_keeps_the_next_call_checking() {
        let dir = tempfile::tempdir().unwrap();
        let watch = watching(dir.path());
        for _ in 0..50 {
            assert!(settles(&watch));
            watch
                .full_check(|| {
                    assert!(watch.full_check(|| Err::<(), _>(())).is_err());
                    Ok::<_, ()>(())
                })
                .unwrap();
            assert!(!watch.quiet(), "a pass recorded over a failure");
        }
    }

    #[test]
    fn a_folder_that_cannot_be_watched_gives_no_watch() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FolderWatch::new(&dir.path().join("missing/store.db")).is_err());
    }
}
