//! Git clients other than the git command line, end to end through `gitgate serve`: libgit2
//! (through pygit2, with a credentials callback), dulwich (with a user name and password), and
//! git-lfs. Each needs a package `.ci/run` installs (python3-pygit2, python3-dulwich, git-lfs);
//! where one is missing the case is skipped, saying so — under CI it fails instead.
//!
//! The Python clients run under Debian's own `/usr/bin/python3`, whose packages those are (a
//! `python3` earlier on `PATH`, pyenv's say, does not see them). Secrets reach the scripts in a
//! file, never on a command line or in the environment (which a failed run's report shows).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{run, skipping, Run, Sandbox, Server, PASSWORD};

/// Debian's Python, whose packages python3-pygit2 and python3-dulwich are.
const PYTHON: &str = "/usr/bin/python3";

/// alice with a write grant on project `team`, the repository team/app, alice's REPO_WRITE token,
/// a PROJECT_WRITE token of `team`, and a running gitgate.
fn team() -> (Sandbox, Server, common::Token, common::Token) {
    let sb = Sandbox::new();
    sb.create_repo("team/app");
    sb.add_user("alice", PASSWORD);
    sb.grant("alice", "team", "write");
    let personal = sb.personal_token("alice", PASSWORD, "laptop", &["REPO_WRITE"]);
    let project = sb.scoped_token("--project", "team", "ci", "PROJECT_WRITE");
    let server = sb.serve();
    (sb, server, personal, project)
}

/// Whether Debian's Python can import `module`; if not, the case is skipped (a failure under CI).
fn python_has(module: &str, package: &str) -> bool {
    let found = Path::new(PYTHON).exists()
        && Command::new(PYTHON)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
    if !found {
        skipping(&format!(
            "{PYTHON} cannot import {module} (apt-get install {package})"
        ));
    }
    found
}

/// Runs `script` under Debian's Python in `cwd`, with the sandbox's git home and `env`, and
/// `secret` in the file `SECRET_FILE` names.
fn python(sb: &Sandbox, cwd: &Path, script: &str, env: &[(&str, &str)], secret: &str) -> Run {
    let secret_file = cwd.join("secret");
    fs::write(&secret_file, secret).unwrap();
    let mut cmd = Command::new(PYTHON);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", sb.home())
        .env("LC_ALL", "C.UTF-8")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("SECRET_FILE", &secret_file)
        .current_dir(cwd)
        .args(["-c", script]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, None)
}

/// Clone, fetch, then commit and push with pygit2: the credentials come from the callback
/// (`USER_NAME`, and the secret in `SECRET_FILE`), as a libgit2 program gives them. Prints `pushed <id>` at the end, or
/// `failed: <libgit2's error>`, and how often the callback was asked.
const PYGIT2_ROUND_TRIP: &str = r#"
import os, pygit2
secret = open(os.environ["SECRET_FILE"]).read()
asked = 0
class Callbacks(pygit2.RemoteCallbacks):
    def credentials(self, url, username_from_url, allowed_types):
        global asked
        asked += 1
        return pygit2.UserPass(os.environ["USER_NAME"], secret)
try:
    repo = pygit2.clone_repository(os.environ["URL"], "work", callbacks=Callbacks())
    repo.remotes["origin"].fetch(callbacks=Callbacks())
    with open(os.path.join("work", "libgit2.txt"), "w") as f:
        f.write("libgit2\n")
    repo.index.add("libgit2.txt")
    repo.index.write()
    who = pygit2.Signature("Lib Git", "libgit2@example.com")
    commit = repo.create_commit("HEAD", who, who, "pushed by libgit2", repo.index.write_tree(),
                                [repo.head.target])
    repo.remotes["origin"].push(["refs/heads/main"], callbacks=Callbacks())
    print("pushed", commit)
except Exception as e:
    print("failed:", e)
print("asked", asked)
"#;

/// libgit2 clones, fetches and pushes with a personal token under its owner's name and with a
/// project token under an empty user name. A revoked token fails (libgit2 says only "too many
/// redirects or authentication replays": it asks its callback again after every `401`, and
/// prints no reason), and its replays count once for the address throttle, so the next client
/// from that address is not blocked.
#[test]
fn libgit2_clones_fetches_and_pushes_with_a_token() {
    if !python_has("pygit2", "python3-pygit2") {
        return;
    }
    let (sb, server, personal, project) = team();
    let url = server.url("team/app");
    for (n, (user, token)) in [("alice", &personal), ("", &project)]
        .into_iter()
        .enumerate()
    {
        let dir = sb.root().join(format!("libgit2-{n}"));
        fs::create_dir(&dir).unwrap();
        let run = python(
            &sb,
            &dir,
            PYGIT2_ROUND_TRIP,
            &[("URL", &url), ("USER_NAME", user)],
            &token.secret,
        );
        let pushed = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("pushed "))
            .unwrap_or_else(|| panic!("user {user:?}: {run}"))
            .to_owned();
        assert_eq!(sb.rev(&sb.bare("team/app"), "main"), pushed, "{run}");
    }
    sb.cli(&["token", "revoke", &personal.id]).ok();
    let dir = sb.root().join("libgit2-revoked");
    fs::create_dir(&dir).unwrap();
    let run = python(
        &sb,
        &dir,
        PYGIT2_ROUND_TRIP,
        &[("URL", &url), ("USER_NAME", "alice")],
        &personal.secret,
    );
    assert!(run.stdout.contains("failed:"), "{run}");
    assert!(!run.stdout.contains(&personal.secret), "{run}");
    // Not blocked: the default throttle blocks after 10 failures, and libgit2 sent the same
    // credentials more often than that.
    let asked: usize = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("asked "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{run}"));
    assert!(asked > 10, "{run}");
    let dir = sb.root().join("libgit2-after");
    fs::create_dir(&dir).unwrap();
    let run = python(
        &sb,
        &dir,
        PYGIT2_ROUND_TRIP,
        &[("URL", &url), ("USER_NAME", "")],
        &project.secret,
    );
    assert!(run.stdout.contains("pushed "), "{run}");
    assert!(!server.log_text().contains("status=429"));
}

/// Clone, fetch, then commit and push with dulwich's porcelain, user name and password given as
/// its arguments (`USER_NAME`, and the secret in `SECRET_FILE`). Prints `pushed <id>`, or `failed: <error>`.
const DULWICH_ROUND_TRIP: &str = r#"
import os, sys
from dulwich import porcelain
url, user = os.environ["URL"], os.environ["USER_NAME"]
secret = open(os.environ["SECRET_FILE"]).read()
quiet = open(os.devnull, "wb")
try:
    repo = porcelain.clone(url, "work", username=user, password=secret, errstream=quiet)
    porcelain.fetch(repo, url, username=user, password=secret, errstream=quiet)
    path = os.path.join("work", "dulwich.txt")
    with open(path, "w") as f:
        f.write("dulwich\n")
    porcelain.add(repo, [path])
    commit = porcelain.commit(repo, message=b"pushed by dulwich",
                              author=b"Dul Wich <dulwich@example.com>",
                              committer=b"Dul Wich <dulwich@example.com>")
    porcelain.push(repo, url, "refs/heads/main", username=user, password=secret,
                   errstream=quiet)
    print("pushed", commit.decode())
except Exception as e:
    print("failed:", type(e).__name__, e)
"#;

/// dulwich (which sends its credentials with the first request) clones, fetches and pushes with
/// a personal token; a revoked one is refused (dulwich prints no reason: "No valid credentials
/// provided").
#[test]
fn dulwich_clones_fetches_and_pushes_with_a_token() {
    if !python_has("dulwich", "python3-dulwich") {
        return;
    }
    let (sb, server, personal, _) = team();
    let url = server.url("team/app");
    let dir = sb.root().join("dulwich");
    fs::create_dir(&dir).unwrap();
    let env = [("URL", url.as_str()), ("USER_NAME", "alice")];
    let run = python(&sb, &dir, DULWICH_ROUND_TRIP, &env, &personal.secret);
    let pushed = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("pushed "))
        .unwrap_or_else(|| panic!("{run}"))
        .to_owned();
    assert_eq!(sb.rev(&sb.bare("team/app"), "main"), pushed, "{run}");
    sb.cli(&["token", "revoke", &personal.id]).ok();
    let dir = sb.root().join("dulwich-revoked");
    fs::create_dir(&dir).unwrap();
    let run = python(&sb, &dir, DULWICH_ROUND_TRIP, &env, &personal.secret);
    assert!(run.stdout.contains("failed: HTTPUnauthorized"), "{run}");
    assert!(server.log_text().contains("status=401"));
}

/// A push of a commit with an LFS file: git-lfs's pre-push hook asks gitgate's LFS API, is
/// refused, prints gitgate's reason (not "Repository or object not found", nor the remote's
/// URL with the token in it) and stops the push before its pack is sent; no LFS request is
/// forwarded.
#[test]
fn git_lfs_prints_why_gitgate_refuses_it_and_the_push_stops() {
    if common::find("git-lfs").is_none() {
        skipping("git-lfs is missing (apt-get install git-lfs)");
        return;
    }
    let (sb, server, personal, _) = team();
    let before = sb.rev(&sb.bare("team/app"), "main");
    sb.git(sb.root(), &["lfs", "install"]).ok();
    let url = server.url_with("alice", &personal.secret, "team/app");
    sb.git(sb.root(), &["clone", "-q", &url, "work"]).ok();
    let work = sb.root().join("work");
    sb.git(&work, &["lfs", "track", "*.bin"]).ok();
    fs::write(work.join("big.bin"), common::noise(4096, 7)).unwrap();
    sb.git(&work, &["add", ".gitattributes", "big.bin"]).ok();
    sb.git(&work, &["commit", "-q", "-m", "an LFS file"]).ok();
    let hits = sb.hits().len();
    let push = sb.git(&work, &["push", "origin", "main"]);
    push.fails_with("batch response: Git LFS is not supported yet: this server (gitgate)");
    assert!(!push.stderr.contains(&personal.secret), "{push}");
    assert!(
        !push.stderr.contains("Repository or object not found"),
        "{push}"
    );
    assert_eq!(sb.rev(&sb.bare("team/app"), "main"), before);
    // git asked for the refs before its hook ran, and git-lfs fetched; neither the pack nor any
    // LFS request went on.
    let after = &sb.hits()[hits..];
    assert!(
        after
            .iter()
            .all(|h| !h.contains("lfs") && !h.starts_with("POST /team/app.git/git-receive-pack")),
        "{after:#?}"
    );
    assert!(server
        .log_text()
        .contains("path=/team/app.git/info/lfs/objects/batch"));
}

/// Clones with dulwich's porcelain into `DEST` (user name and password as its arguments).
const DULWICH_CLONE: &str = r#"
import os
from dulwich import porcelain
secret = open(os.environ["SECRET_FILE"]).read()
porcelain.clone(os.environ["URL"], os.environ["DEST"], username=os.environ["USER_NAME"],
                password=secret, errstream=open(os.devnull, "wb"))
print("cloned")
"#;

/// dulwich closes its connection right after the last flush-pkt of an answer, before the
/// chunked answer's own end (which gitgate writes once the backend has ended it): such an
/// answer, which the client had whole, is logged `outcome=complete`, not `client-gone` (as it
/// was in about half of dulwich's requests).
#[test]
fn a_client_that_hangs_up_after_the_last_flush_of_a_whole_answer_had_it_all() {
    if !python_has("dulwich", "python3-dulwich") {
        return;
    }
    let (sb, server, personal, _) = team();
    let url = server.url("team/app");
    for i in 0..6 {
        let dest = format!("clone-{i}");
        let env = [
            ("URL", url.as_str()),
            ("USER_NAME", "alice"),
            ("DEST", dest.as_str()),
        ];
        let run = python(&sb, sb.root(), DULWICH_CLONE, &env, &personal.secret);
        assert!(run.stdout.contains("cloned"), "{run}");
    }
    // A request's line is written when gitgate sees its connection close, which may come
    // after the python process that closed it has exited: waited for, not read at once.
    let answered_in = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("gitgate::request: ") && l.contains("status=200"))
            .map(str::to_string)
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (log, answered) = loop {
        let log = server.log_text();
        let answered = answered_in(&log);
        if answered.len() >= 12 || std::time::Instant::now() > deadline {
            break (log, answered);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(answered.len(), 12, "{log}");
    for line in answered {
        assert!(line.contains("outcome=complete"), "{line}");
    }
}
