//! One matrix of git's operations, driven through gitgate by the suites of each backend
//! (`tests/gate.rs`: the embedded runner; `tests/upstream_nginx.rs`: nginx + fcgiwrap), under
//! protocol v0, v1 and v2: a shallow clone, a deepen over several negotiation rounds and an
//! unshallow; a partial clone and its lazy fetches; a fetch by commit id, of a tag and of all
//! tags; pushes that delete, are atomic, carry push options, negotiate first
//! (`push.negotiate`), or are refused as no fast-forward by git, by the backend and
//! atomically; ls-remote with a pattern, `--tags` and `--symref`; and (v0 and v2) a clone that
//! asks for the bundle list first (v2's `bundle-uri` command), and one whose request outgrows
//! git's POST buffer, which goes after a probe git answers with nothing.
//! Each must work as it does against git directly: a whole answer gitgate took for a broken one
//! (the CGI runner's exit check, the HTTP upstream's framing follower) breaks it. What each
//! suite's log must then show is its own.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::Run;

/// git in a folder with these arguments and extra environment, as a suite runs it.
pub type Git<'a> = dyn Fn(&Path, &[&str], &[(&str, &str)]) -> Run + 'a;

/// Where the matrix runs.
pub struct Site<'a> {
    /// A folder for the matrix's clones.
    pub top: &'a Path,
    /// The served repository's URL, with a writer's credentials.
    pub url: &'a str,
    /// The served bare repository, whose configuration and hooks the matrix sets.
    pub bare: &'a Path,
    pub git: &'a Git<'a>,
    /// How many upload-pack POSTs the backend has served.
    pub upload_posts: &'a dyn Fn() -> usize,
}

/// `n` empty commits in the work tree `dir`, dated from tomorrow on: newer than any the server
/// has, so that a fetch sends them as haves first (newest first, 16 at a time), over several
/// negotiation rounds.
pub fn commit_newer(git: &Git, dir: &Path, n: u64) {
    let tomorrow = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    for i in 0..n {
        let date = format!("{} +0000", tomorrow + i);
        let message = format!("local {i}");
        git(
            dir,
            &["commit", "-q", "--allow-empty", "-m", &message],
            &[("GIT_COMMITTER_DATE", &date)],
        )
        .ok();
    }
}

/// Drives the matrix at `site`, asserting what each operation does.
pub fn drive(site: &Site) {
    let (top, url, bare) = (site.top, site.url, site.bare);
    let git = |cwd: &Path, args: &[&str]| (site.git)(cwd, args, &[]);
    let git_ok = |cwd: &Path, args: &[&str]| git(cwd, args).ok().to_owned();
    let commit_file = |dir: &Path, file: &str, content: &[u8]| {
        fs::write(dir.join(file), content).unwrap();
        git_ok(dir, &["add", file]);
        git_ok(dir, &["commit", "-q", "-m", file]);
    };
    let commit_newer = |dir: &Path, n: u64| commit_newer(site.git, dir, n);
    for (key, value) in [
        ("uploadpack.allowFilter", "true"),
        ("uploadpack.allowReachableSHA1InWant", "true"),
        ("receive.advertisePushOptions", "true"),
        // Protocol v2's `bundle-uri` command, which a client asks before its clone.
        ("uploadpack.advertiseBundleURIs", "true"),
        // A forced push that is no fast-forward is refused by the backend, not by the client.
        ("receive.denyNonFastForwards", "true"),
    ] {
        git_ok(bare, &["config", key, value]);
    }
    // Says the push options back on side-band channel 2 (git shows them as `remote: ...`).
    let hook = bare.join("hooks/pre-receive");
    fs::write(
        &hook,
        "#!/bin/sh\ncat >/dev/null\ni=0\nwhile [ \"$i\" -lt \"${GIT_PUSH_OPTION_COUNT:-0}\" ]; do\n\
         \teval \"echo push-option: \\$GIT_PUSH_OPTION_$i\"\n\ti=$((i+1))\ndone\n",
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let at = |p: &Path| p.to_str().unwrap().to_string();
    let rev = |r: &str| git_ok(bare, &["rev-parse", r]).trim().to_string();
    let has_ref = |r: &str| git(bare, &["show-ref", "-q", "--verify", r]).success();

    // A history of five commits (the seed, then four changing notes.txt) and two tags.
    let work = top.join("work");
    git_ok(top, &["clone", "-q", url, &at(&work)]);
    for i in 1..=4 {
        commit_file(&work, "notes.txt", format!("notes {i}\n").as_bytes());
    }
    git_ok(&work, &["tag", "-a", "-m", "release", "v1", "HEAD~2"]);
    git_ok(&work, &["tag", "light", "HEAD~1"]);
    git_ok(&work, &["push", "-q", "origin", "main", "v1", "light"]);

    for v in ["0", "1", "2"] {
        let proto = format!("protocol.version={v}");
        let with = |args: &[&str]| -> Vec<String> {
            ["-c", &proto]
                .iter()
                .chain(args)
                .map(|a| a.to_string())
                .collect()
        };
        let ok = |cwd: &Path, args: &[&str]| -> String {
            let args = with(args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            git_ok(cwd, &args)
        };
        let run = |cwd: &Path, args: &[&str]| -> Run {
            let args = with(args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            git(cwd, &args)
        };
        let count = |repo: &Path| -> usize {
            git_ok(repo, &["rev-list", "--count", "HEAD"])
                .trim()
                .parse()
                .unwrap()
        };
        let total = count(&work);

        // Shallow: clone at depth 1, deepen by 2, unshallow.
        let shallow = top.join(format!("shallow{v}"));
        ok(top, &["clone", "-q", "--depth", "1", url, &at(&shallow)]);
        assert_eq!(count(&shallow), 1, "protocol v{v}");
        // 40 commits of its own, newer than all it shares with the server, on a branch of
        // its own: the deepening fetch negotiates over several rounds, and in protocol v0
        // each round's answer is the shallow list and its flush, then ACKs and NAK, no flush.
        git_ok(&shallow, &["checkout", "-q", "-b", "local"]);
        commit_newer(&shallow, 40);
        git_ok(&shallow, &["checkout", "-q", "main"]);
        let rounds = (site.upload_posts)();
        ok(&shallow, &["fetch", "-q", "--deepen", "2"]);
        let rounds = (site.upload_posts)() - rounds;
        assert!(
            rounds >= 3,
            "protocol v{v}: the deepening fetch took {rounds} rounds"
        );
        assert_eq!(count(&shallow), 3, "protocol v{v}");
        ok(&shallow, &["fetch", "-q", "--unshallow"]);
        assert_eq!(count(&shallow), total, "protocol v{v}");
        assert!(!shallow.join(".git/shallow").exists(), "protocol v{v}");

        // Partial: no blobs at first; a checkout fetches its blobs, a look at an old version
        // of a file fetches that one.
        let partial = top.join(format!("partial{v}"));
        ok(
            top,
            &[
                "clone",
                "-q",
                "--filter=blob:none",
                "--no-checkout",
                url,
                &at(&partial),
            ],
        );
        let missing = |p: &Path| {
            git_ok(p, &["rev-list", "--objects", "--all", "--missing=print"])
                .lines()
                .filter(|l| l.starts_with('?'))
                .count()
        };
        let missing_at_first = missing(&partial);
        assert!(missing_at_first >= 5, "protocol v{v}: {missing_at_first}");
        ok(&partial, &["checkout", "-q", "HEAD", "--", "."]);
        assert_eq!(
            std::fs::read_to_string(partial.join("notes.txt")).unwrap(),
            std::fs::read_to_string(work.join("notes.txt")).unwrap(),
            "protocol v{v}"
        );
        assert!(missing(&partial) < missing_at_first, "protocol v{v}");
        let old = ok(&partial, &["show", "v1:notes.txt"]);
        assert_eq!(old, "notes 2\n", "protocol v{v}");

        // A fetch of a commit by its id (reachable, not a ref's tip), then of a tag, then of
        // all tags.
        let by_id = top.join(format!("by-id{v}"));
        ok(top, &["init", "-q", &at(&by_id)]);
        ok(&by_id, &["remote", "add", "origin", url]);
        let id = rev("main~1");
        ok(&by_id, &["fetch", "-q", "origin", &id]);
        ok(&by_id, &["cat-file", "-e", &format!("{id}^{{commit}}")]);
        ok(&by_id, &["fetch", "-q", "--no-tags", "origin", "tag", "v1"]);
        assert_eq!(
            ok(&by_id, &["rev-parse", "v1"]).trim(),
            rev("v1"),
            "protocol v{v}"
        );
        ok(&by_id, &["fetch", "-q", "--tags", "origin"]);
        assert_eq!(
            ok(&by_id, &["rev-parse", "light"]).trim(),
            rev("light"),
            "protocol v{v}"
        );

        // Pushes: a branch made and deleted, an atomic push of two refs, push options.
        let gone = format!("refs/heads/gone{v}");
        ok(&work, &["push", "-q", "origin", &format!("main:{gone}")]);
        assert!(has_ref(&gone), "protocol v{v}");
        ok(&work, &["push", "-q", "origin", &format!(":{gone}")]);
        assert!(!has_ref(&gone), "protocol v{v}");
        commit_file(&work, "atomic.txt", format!("atomic {v}\n").as_bytes());
        let side = format!("refs/heads/side{v}");
        ok(
            &work,
            &[
                "push",
                "-q",
                "--atomic",
                "origin",
                "main",
                &format!("HEAD~1:{side}"),
            ],
        );
        assert_eq!(
            rev("main"),
            git_ok(&work, &["rev-parse", "HEAD"]).trim(),
            "protocol v{v}"
        );
        assert_eq!(
            rev(&side),
            git_ok(&work, &["rev-parse", "HEAD~1"]).trim(),
            "protocol v{v}"
        );
        commit_file(&work, "options.txt", format!("options {v}\n").as_bytes());
        let out = run(
            &work,
            &[
                "push",
                "-o",
                "ci.skip",
                "-o",
                "reason=matrix",
                "origin",
                "main",
            ],
        );
        let stderr = &out.stderr;
        assert!(out.status.success(), "protocol v{v}: {stderr}");
        assert!(
            stderr.contains("push-option: ci.skip")
                && stderr.contains("push-option: reason=matrix"),
            "protocol v{v}: {stderr}"
        );
        // A push that first asks what the server has (`push.negotiate`: in protocol v2 a
        // fetch that waits for `done`, answered with its acknowledgments and a flush, no pack).
        commit_file(
            &work,
            "negotiated.txt",
            format!("negotiated {v}\n").as_bytes(),
        );
        let posts = (site.upload_posts)();
        let out = run(
            &work,
            &["-c", "push.negotiate=true", "push", "origin", "main"],
        );
        let stderr = &out.stderr;
        assert!(out.status.success(), "protocol v{v}: {stderr}");
        if v == "2" {
            assert!(!stderr.contains("negotiation failed"), "{stderr}");
            assert!((site.upload_posts)() > posts, "no negotiation: {stderr}");
        }

        // Pushes that are no fast-forward: refused by git itself, then (forced) by the backend,
        // then (forced, atomic, with a branch that alone would go) both refs by the backend.
        let tip = rev("main");
        git_ok(&work, &["reset", "-q", "--hard", "HEAD~1"]);
        commit_file(&work, "diverged.txt", format!("diverged {v}\n").as_bytes());
        let refused = |args: &[&str], says: &[&str]| {
            let out = run(&work, args);
            let stderr = &out.stderr;
            assert!(!out.status.success(), "protocol v{v}: {args:?}: {stderr}");
            for s in says {
                assert!(stderr.contains(s), "protocol v{v}: {args:?}: {stderr}");
            }
            assert!(
                !stderr.contains("RPC failed") && !stderr.contains("early EOF"),
                "protocol v{v}: {args:?}: {stderr}"
            );
        };
        refused(
            &["push", "origin", "main"],
            &["! [rejected]", "main -> main (non-fast-forward)"],
        );
        refused(
            &["push", "--force", "origin", "main"],
            &["! [remote rejected]", "main -> main", "non-fast-forward"],
        );
        let other = format!("refs/heads/other{v}");
        refused(
            &[
                "push",
                "--force",
                "--atomic",
                "origin",
                "main",
                &format!("HEAD~1:{other}"),
            ],
            &["! [remote rejected]", "main -> main", "atomic"],
        );
        assert_eq!(rev("main"), tip, "protocol v{v}");
        assert!(!has_ref(&other), "protocol v{v}");
        git_ok(&work, &["reset", "-q", "--hard", "origin/main"]);

        // ls-remote with a pattern, and with --symref.
        let listed = ok(&work, &["ls-remote", url, "refs/heads/side*"]);
        assert!(
            listed.contains(&format!("\trefs/heads/side{v}\n")),
            "{listed}"
        );
        assert!(!listed.contains("refs/heads/main"), "{listed}");
        let tags = ok(&work, &["ls-remote", "--tags", url, "v1"]);
        assert!(
            tags.contains(&format!("{}\trefs/tags/v1\n", rev("v1"))),
            "{tags}"
        );
        assert!(!tags.contains("light"), "{tags}");
        let symref = ok(&work, &["ls-remote", "--symref", url, "HEAD"]);
        assert!(symref.contains("ref: refs/heads/main\tHEAD\n"), "{symref}");
    }

    // A request larger than git's POST buffer (here 66,000 bytes, about git's least: the wants of
    // 1,400 branches on as many commits) goes after a probe: a POST of a bare flush-pkt,
    // `0000`, to which git answers nothing at all — the probe must come back a whole `200`,
    // or git gives up before its request.
    let mut stream = String::new();
    for i in 1..=1400 {
        stream.push_str(&format!(
            "commit refs/heads/many/b{i}\nmark :{i}\ncommitter M <m@example.com> {} +0000\n\
             data 0\n",
            1_700_000_000 + i
        ));
        if i > 1 {
            stream.push_str(&format!("from :{}\n", i - 1));
        }
    }
    let mut import = std::process::Command::new("git");
    import
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", top);
    super::run(import, Some(&stream)).ok();
    for v in ["0", "2"] {
        // With the bundle list asked first (protocol v2's `bundle-uri`: an empty list here).
        let bundles = top.join(format!("bundles{v}"));
        let (proto, asks) = (format!("protocol.version={v}"), "transfer.bundleURI=true");
        let cloned = (site.git)(
            top,
            &["-c", &proto, "-c", asks, "clone", "-q", url, &at(&bundles)],
            &[("GIT_TRACE_PACKET", "1")],
        );
        cloned.ok();
        if v == "2" {
            // The list was asked for (only protocol v2 has the command).
            assert!(
                cloned.stderr.contains("clone> command=bundle-uri"),
                "no bundle-uri command: {}",
                cloned
                    .stderr
                    .lines()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        assert_eq!(git_ok(&bundles, &["rev-parse", "HEAD"]).trim(), rev("main"));
        let many = top.join(format!("many{v}"));
        let proto = format!("protocol.version={v}");
        let posts = (site.upload_posts)();
        git_ok(
            top,
            &[
                "-c",
                &proto,
                "-c",
                "http.postBuffer=66000",
                "clone",
                "-q",
                "--bare",
                url,
                &at(&many),
            ],
        );
        let branches = git_ok(&many, &["for-each-ref", "refs/heads/many/"]);
        assert_eq!(branches.lines().count(), 1400, "protocol v{v}");
        // The request did go after a probe: one POST more than a clone's own (its wants and
        // `done`, after v2's `ls-refs`).
        let posts = (site.upload_posts)() - posts;
        let own = if v == "2" { 2 } else { 1 };
        assert_eq!(posts, own + 1, "protocol v{v}: {posts} upload-pack POSTs");
    }
}
