//! The repositories under the CGI runner's project root, as `check` and the start look at them,
//! and what a cut-off push leaves in one.
//!
//! receive-pack keeps a push's objects in a quarantine folder (`objects/tmp_objdir-incoming-*`)
//! until its pack is whole and its hooks agree, and removes the folder either way — unless it is
//! killed first: a SIGKILL of gitgate's whole process group, a crash of the machine, or a push
//! cut off behind a runner that does not close its input (fcgiwrap). Such a folder is never
//! applied, can hold a pack as big as the push, and stays until a `git gc` run two weeks later
//! (`gc.pruneExpire`; `gc --auto` runs only when loose objects or packs call for it). Nobody
//! else would say it is there, so `check` and the start name it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How deep under the project root repositories are looked for: `app.git`, `team/app.git`,
/// `team/sub/app.git`.
const DEPTH: usize = 3;

/// Folders read at most per level, so that a project root with millions of entries (the wrong
/// folder named) cannot hold `check` or the start for long.
const ENTRIES_READ: usize = 100_000;

/// A quarantine untouched for this long belongs to no push in flight: each of git's writes to
/// its pack moves the pack's time.
pub const QUARANTINE_STALE_AFTER: Duration = Duration::from_secs(3600);

/// The prefix git gives a push's quarantine folder inside `objects/`.
const QUARANTINE_PREFIX: &str = "tmp_objdir-incoming-";

/// A repository found under the project root: its folder, and its git folder (the folder
/// itself when bare, its `.git` otherwise).
#[derive(Debug)]
pub struct Repository {
    pub path: PathBuf,
    pub git_dir: PathBuf,
}

/// The repositories three folders deep (`DEPTH`) under `project_root` (folders with a `HEAD` file, or
/// a `.git` folder), not following links, not looking inside one.
pub fn under(project_root: &Path) -> Vec<Repository> {
    let mut found = Vec::new();
    let mut folders = vec![(project_root.to_path_buf(), 1)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten().take(ENTRIES_READ) {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if path.join("HEAD").is_file() {
                found.push(Repository {
                    git_dir: path.clone(),
                    path,
                });
            } else if path.join(".git").is_dir() {
                found.push(Repository {
                    git_dir: path.join(".git"),
                    path,
                });
            } else if depth < DEPTH {
                folders.push((path, depth + 1));
            }
        }
    }
    found
}

/// The quarantine folders in `repositories` that nothing has written to for
/// [`QUARANTINE_STALE_AFTER`] before `now`, with their size in bytes.
pub fn stale_quarantines(repositories: &[Repository], now: SystemTime) -> Vec<(PathBuf, u64)> {
    let mut stale = Vec::new();
    for repository in repositories {
        let Ok(entries) = std::fs::read_dir(repository.git_dir.join("objects")) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry
                .file_name()
                .to_string_lossy()
                .starts_with(QUARANTINE_PREFIX)
                || !entry.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            let path = entry.path();
            let (last_write, bytes) = last_write_and_size(&path);
            if is_stale(last_write, now) {
                stale.push((path, bytes));
            }
        }
    }
    stale.sort();
    stale
}

/// Pure: whether a quarantine last written at `last_write` (unknown: `None`) is stale at `now`.
/// One written "after" `now` (a clock set back) is not.
fn is_stale(last_write: Option<SystemTime>, now: SystemTime) -> bool {
    last_write.is_some_and(|at| {
        now.duration_since(at)
            .is_ok_and(|age| age >= QUARANTINE_STALE_AFTER)
    })
}

/// The newest modification time in a quarantine folder (the folder, its entries, and theirs:
/// `pack/tmp_pack_*` grows as the push arrives), and the bytes its files hold.
fn last_write_and_size(quarantine: &Path) -> (Option<SystemTime>, u64) {
    let mut newest = std::fs::metadata(quarantine)
        .and_then(|m| m.modified())
        .ok();
    let mut bytes = 0;
    let mut folders = vec![(quarantine.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten().take(ENTRIES_READ) {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if let Ok(modified) = meta.modified() {
                newest = newest.max(Some(modified));
            }
            if meta.is_dir() && depth < 1 {
                folders.push((entry.path(), depth + 1));
            } else if meta.is_file() {
                bytes += meta.len();
            }
        }
    }
    (newest, bytes)
}

/// How many quarantine folders the warning's `rm` names; `check` names the rest once those
/// are gone.
const NAMED: usize = 10;

/// Pure: what `check` and the start say of stale quarantines under `project_root`; `None` for
/// none. The command it gives removes exactly the folders found (quoted for a shell), not a
/// pattern that could take a push still writing, or a folder deeper than the scan looks.
pub fn quarantine_warning(stale: &[(PathBuf, u64)], project_root: &Path) -> Option<String> {
    if stale.is_empty() {
        return None;
    }
    let bytes: u64 = stale.iter().map(|(_, b)| b).sum();
    let count = match stale.len() {
        1 => "1 push".to_string(),
        n => format!("{n} pushes"),
    };
    let named: Vec<String> = stale
        .iter()
        .take(NAMED)
        .map(|(path, _)| shell_quoted(&path.display().to_string()))
        .collect();
    let more = match stale.len().saturating_sub(NAMED) {
        0 => String::new(),
        n => format!(" ({n} more: `gitgate check` names them once these are gone)"),
    };
    Some(format!(
        "{count} cut off before being applied left {} of objects in quarantine folders under \
         {} untouched for an hour: git applies none of it, and `git gc` removes them only two \
         weeks on; to free the space now, while no push to those repositories is running: \
         rm -r -- {}{more}",
        size(bytes),
        project_root.display(),
        named.join(" "),
    ))
}

/// Pure: `text` as one word for a POSIX shell, in single quotes.
fn shell_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Pure: bytes as a person reads them.
fn size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match bytes {
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantine_is_stale_an_hour_after_its_last_write_and_not_when_the_clock_went_back() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |ago: u64| Some(now - Duration::from_secs(ago));
        assert!(is_stale(at(3600), now));
        assert!(is_stale(at(86_400), now));
        assert!(!is_stale(at(3599), now));
        assert!(!is_stale(Some(now + Duration::from_secs(60)), now));
        assert!(!is_stale(None, now));
    }

    #[test]
    fn the_warning_names_the_folders_to_remove_quoted_the_count_and_the_size() {
        let root = Path::new("/srv/my git");
        assert_eq!(quarantine_warning(&[], root), None);
        let one = PathBuf::from("/srv/my git/team/app.git/objects/tmp_objdir-incoming-AbC123");
        let said = quarantine_warning(&[(one.clone(), 3 * 1024 * 1024)], root).unwrap();
        assert!(
            said.starts_with("1 push cut off before being applied left 3.0 MiB of objects")
                && said.contains("under /srv/my git untouched for an hour")
                && said.ends_with(
                    "rm -r -- '/srv/my git/team/app.git/objects/tmp_objdir-incoming-AbC123'"
                ),
            "{said}"
        );
        let quote = PathBuf::from("/srv/my git/o'k.git/objects/tmp_objdir-incoming-Zz");
        let said = quarantine_warning(&[(one.clone(), 10), (quote, 20)], root).unwrap();
        assert!(
            said.starts_with("2 pushes cut off before being applied left 30 bytes")
                && said.ends_with(
                    "incoming-AbC123' '/srv/my git/o'\\''k.git/objects/tmp_objdir-incoming-Zz'"
                ),
            "{said}"
        );
        let many: Vec<_> = (0..12)
            .map(|i| {
                (
                    PathBuf::from(format!("/r/{i}.git/objects/tmp_objdir-incoming-x")),
                    1,
                )
            })
            .collect();
        let said = quarantine_warning(&many, Path::new("/r")).unwrap();
        assert!(
            said.contains("'/r/9.git/objects/tmp_objdir-incoming-x' (2 more: `gitgate check`"),
            "{said}"
        );
        assert!(!said.contains("/r/10.git"), "{said}");
    }

    #[test]
    fn repositories_are_found_bare_and_not_three_deep_and_quarantines_by_their_last_write() {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("team/app.git");
        std::fs::create_dir_all(bare.join("objects/pack")).unwrap();
        std::fs::write(bare.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        let work = root.path().join("a/b/work");
        std::fs::create_dir_all(work.join(".git/objects")).unwrap();
        let too_deep = root.path().join("a/b/c/deep.git");
        std::fs::create_dir_all(&too_deep).unwrap();
        std::fs::write(too_deep.join("HEAD"), "x").unwrap();
        let mut found: Vec<_> = under(root.path())
            .into_iter()
            .map(|r| (r.path, r.git_dir))
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                (work.clone(), work.join(".git")),
                (bare.clone(), bare.clone())
            ]
        );

        let quarantine = bare.join("objects/tmp_objdir-incoming-q1");
        std::fs::create_dir_all(quarantine.join("pack")).unwrap();
        std::fs::write(quarantine.join("pack/tmp_pack_x"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir_all(work.join(".git/objects/tmp_objdir-incoming-q2")).unwrap();
        // Not a quarantine: another name, or a file.
        std::fs::create_dir_all(bare.join("objects/pack/tmp_objdir-incoming-no")).unwrap();
        std::fs::write(bare.join("objects/tmp_objdir-incoming-file"), "x").unwrap();
        let repositories = under(root.path());
        // Just written: a push in flight.
        assert!(stale_quarantines(&repositories, SystemTime::now()).is_empty());
        let later = SystemTime::now() + QUARANTINE_STALE_AFTER + Duration::from_secs(5);
        assert_eq!(
            stale_quarantines(&repositories, later),
            vec![
                (work.join(".git/objects/tmp_objdir-incoming-q2"), 0),
                (quarantine, 1000)
            ]
        );
    }

    /// A link under the project root is not followed, though it leads to a repository (or a
    /// folder of them): what lies outside the root is not scanned, nor named in the warning's
    /// `rm`.
    #[test]
    fn a_link_under_the_root_to_repositories_elsewhere_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        for repo in ["app.git", "team/other.git"] {
            let path = outside.path().join(repo);
            std::fs::create_dir_all(path.join("objects")).unwrap();
            std::fs::write(path.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        }
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("app.git"), root.path().join("app.git"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path().join("team"), root.path().join("team")).unwrap();
        let found: Vec<_> = under(root.path()).into_iter().map(|r| r.path).collect();
        assert!(found.is_empty(), "{found:?}");
    }

    /// A quarantine's own folder may be old while its pack is still being written: the newest
    /// write inside it is what counts, so a push in flight is not named for removal.
    #[test]
    fn a_quarantine_whose_pack_is_still_written_is_not_stale_however_old_its_folder() {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("app.git");
        let quarantine = bare.join("objects/tmp_objdir-incoming-q");
        std::fs::create_dir_all(quarantine.join("pack")).unwrap();
        std::fs::write(bare.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        let pack = quarantine.join("pack/tmp_pack_x");
        std::fs::write(&pack, vec![0u8; 10]).unwrap();
        let now = SystemTime::now();
        let long_ago = now - 2 * QUARANTINE_STALE_AFTER;
        let set_back = |path: &Path| {
            std::fs::File::open(path)
                .unwrap()
                .set_modified(long_ago)
                .unwrap()
        };
        set_back(&quarantine);
        let repositories = under(root.path());
        assert!(stale_quarantines(&repositories, now).is_empty());
        // Everything in it untouched as long: stale.
        set_back(&pack);
        set_back(&quarantine.join("pack"));
        set_back(&quarantine);
        assert_eq!(
            stale_quarantines(&repositories, now),
            vec![(quarantine, 10)]
        );
    }
}
