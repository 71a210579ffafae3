//! Whether git's `not our ref` is the repository's damage rather than its client's mistake.
//!
//! upload-pack refuses a `want` it cannot find with `ERR upload-pack: not our ref <oid>`: the
//! words of a client asking for what it was not offered (a ref that moved since the
//! advertisement, a hand-made request), answered whole and not counted as a backend failure.
//! A repository that lost objects — a pack whose index was removed, loose objects deleted —
//! gets the same words for the very object its own ref names, often with no `error:` line
//! before them (those that have one are told by `StderrWords::first_error`). So when git
//! refuses so, the runner asks the repository itself, after the answer: a ref that points at
//! the object while the object cannot be read is damage, logged and counted as the backend's
//! failure (`git fsck` named), and an operator is told before users report failed clones.
//!
//! Nothing a client sends can make that so: the object must be one a ref names and the
//! repository must fail to read it (a hidden ref's object, asked for by its id, exists).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::env::{home_dir, sanitize_path};

/// How long the two git commands of a check may take together; past it the refusal stays the
/// client's, as before a check.
const CHECK_TIME: Duration = Duration::from_secs(5);

/// The object id of an upload-pack `not our ref` refusal (an `ERR` packet's message).
pub(super) fn refused_object(error: &str) -> Option<&str> {
    let oid = error.strip_prefix("upload-pack: not our ref ")?.trim_end();
    (matches!(oid.len(), 40 | 64) && oid.bytes().all(|b| b.is_ascii_hexdigit())).then_some(oid)
}

/// The repository directory of an upload-pack POST's `PATH_INFO` under `project_root`, the
/// one git http-backend served (`/team/app.git/git-upload-pack` → `ROOT/team/app.git`).
pub(super) fn upload_pack_repository(project_root: &Path, path_info: &str) -> Option<PathBuf> {
    let repo = path_info
        .strip_suffix("/git-upload-pack")?
        .trim_start_matches('/');
    (!repo.is_empty()).then(|| project_root.join(repo))
}

/// The ref of `repository` that points at `oid` while `oid` cannot be read there, if one does:
/// the repository is damaged. `None` also when git could not say in time (or at all): the
/// refusal is then left as the client's.
pub(super) async fn ref_without_its_object(repository: PathBuf, oid: String) -> Option<String> {
    tokio::time::timeout(CHECK_TIME, async {
        // `--points-at` is no use here: it reads the objects of the refs it passes over, and
        // dies at the first it cannot read.
        let refs = git(
            &repository,
            &["for-each-ref", "--format=%(objectname) %(refname)"],
        )
        .output()
        .await
        .ok()
        .filter(|out| out.status.success())?;
        let named = ref_naming(&refs.stdout, &oid)?;
        let exists = git(&repository, &["cat-file", "-e", &oid])
            .status()
            .await
            .ok()?;
        (!exists.success() && exists.code().is_some()).then_some(named)
    })
    .await
    .ok()
    .flatten()
}

/// The first ref of `for-each-ref`'s `<objectname> <refname>` lines that names `oid`.
fn ref_naming(lines: &[u8], oid: &str) -> Option<String> {
    lines.split(|&b| b == b'\n').find_map(|line| {
        let (object, name) = line.split_at_checked(oid.len())?;
        let name = name.strip_prefix(b" ")?;
        (object.eq_ignore_ascii_case(oid.as_bytes()) && !name.is_empty())
            .then(|| String::from_utf8_lossy(name).into_owned())
    })
}

/// git run in `repository` with the backend's sanitised `PATH` and `HOME` and nothing else of
/// gitgate's environment, its output captured, killed if the check is given up.
fn git(repository: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env("PATH", sanitize_path(std::env::var_os("PATH").as_deref()))
        .env("HOME", home_dir(std::env::var_os("HOME").as_deref()))
        .arg("-C")
        .arg(repository)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_object_is_read_from_gits_words_only() {
        let sha1 = "bdc6c7fcfdaeec308ff55a0378ad961a27165ef3";
        assert_eq!(
            refused_object(&format!("upload-pack: not our ref {sha1}")),
            Some(sha1)
        );
        let sha256 = "a".repeat(64);
        assert_eq!(
            refused_object(&format!("upload-pack: not our ref {sha256}\n")),
            Some(sha256.as_str())
        );
        for other in [
            "upload-pack: not our ref 1111",
            "upload-pack: not our ref ../../etc/passwd",
            &format!("upload-pack: not our ref {sha1} and more"),
            &format!("upload-pack: not our ref -{}", &sha1[1..]),
            &format!("access denied: not our ref {sha1}"),
            "",
        ] {
            assert_eq!(refused_object(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_repository_is_the_one_the_post_was_for() {
        let root = Path::new("/srv/git");
        assert_eq!(
            upload_pack_repository(root, "/team/app.git/git-upload-pack"),
            Some(PathBuf::from("/srv/git/team/app.git"))
        );
        assert_eq!(
            upload_pack_repository(root, "/team/app/git-upload-pack"),
            Some(PathBuf::from("/srv/git/team/app"))
        );
        for other in [
            "/team/app.git/git-receive-pack",
            "/team/app.git/info/refs",
            "/git-upload-pack",
        ] {
            assert_eq!(upload_pack_repository(root, other), None, "{other}");
        }
    }

    #[test]
    fn the_ref_is_found_by_its_whole_object_id() {
        let a = "bdc6c7fcfdaeec308ff55a0378ad961a27165ef3";
        let b = "0000000000000000000000000000000000000001";
        let lines = format!("{b} refs/heads/other\n{a} refs/heads/main\n{a} refs/tags/v1\n");
        assert_eq!(
            ref_naming(lines.as_bytes(), a).as_deref(),
            Some("refs/heads/main")
        );
        assert_eq!(
            ref_naming(lines.as_bytes(), &a.to_uppercase()).as_deref(),
            Some("refs/heads/main")
        );
        assert_eq!(ref_naming(lines.as_bytes(), &a[..39]), None);
        assert_eq!(
            ref_naming(lines.as_bytes(), "1111111111111111111111111111111111111111"),
            None
        );
        assert_eq!(ref_naming(b"", a), None);
    }

    /// Against a real repository: a sound one is not damaged, for an object a ref names or
    /// not; once its pack's index is removed, the ref that names the object is.
    #[tokio::test]
    async fn a_repository_that_lost_its_index_is_told_from_a_sound_one() {
        let dir = std::env::temp_dir().join(format!("gitgate-damage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(&dir)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        run(&["init", "-q", "--bare", "r.git"]);
        run(&["-C", "r.git", "config", "core.logAllRefUpdates", "false"]);
        let blob_tree = run(&["-C", "r.git", "mktree"]);
        let commit = run(&["-C", "r.git", "commit-tree", "-m", "one", &blob_tree]);
        run(&["-C", "r.git", "update-ref", "refs/heads/main", &commit]);
        run(&["-C", "r.git", "repack", "-adq"]);
        let repo = dir.join("r.git");

        assert_eq!(
            ref_without_its_object(repo.clone(), commit.clone()).await,
            None
        );
        let unknown = "1111111111111111111111111111111111111111".to_owned();
        assert_eq!(
            ref_without_its_object(repo.clone(), unknown.clone()).await,
            None
        );

        for entry in std::fs::read_dir(repo.join("objects/pack")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "idx") {
                std::fs::remove_file(path).unwrap();
            }
        }
        assert_eq!(
            ref_without_its_object(repo.clone(), commit.clone())
                .await
                .as_deref(),
            Some("refs/heads/main")
        );
        // An object no ref names stays the client's mistake, damaged repository or not.
        assert_eq!(ref_without_its_object(repo.clone(), unknown).await, None);
        // No repository at all: git fails, and nothing is concluded.
        assert_eq!(
            ref_without_its_object(dir.join("none.git"), commit).await,
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A line with an object id and no ref name names no ref.
    #[test]
    fn a_line_without_a_ref_name_names_none() {
        let a = "bdc6c7fcfdaeec308ff55a0378ad961a27165ef3";
        assert_eq!(ref_naming(format!("{a} \n").as_bytes(), a), None);
        assert_eq!(ref_naming(a.as_bytes(), a), None);
    }
}
