//! End-to-end: the `gitgate` command line, acting on the store directly, and `serve` refusing
//! bad configuration. Each test has its own sandbox (see `tests/common/mod.rs`).

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{gitgate_bin, http_get, looks_like_secret, now_ms, run, secret_id, Sandbox, PASSWORD};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// JSON helpers: the contract fixes token field names; for users and grants it only fixes that
// the data is there, so those are looked up by value.

fn strings_in(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings_in).collect(),
        Value::Object(o) => o.values().flat_map(strings_in).collect(),
        _ => vec![],
    }
}

fn keys_in(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().flat_map(keys_in).collect(),
        Value::Object(o) => o
            .iter()
            .flat_map(|(k, v)| std::iter::once(k.clone()).chain(keys_in(v)))
            .collect(),
        _ => vec![],
    }
}

/// The elements of the array `list` that have a string value equal to `value`.
fn with_value<'a>(list: &'a Value, value: &str) -> Vec<&'a Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {list}"))
        .iter()
        .filter(|item| {
            strings_in(item)
                .iter()
                .any(|s| s.eq_ignore_ascii_case(value))
        })
        .collect()
}

/// No key names a hash, secret or password, and no value is a secret or a password hash.
#[track_caller]
fn assert_no_secrets(v: &Value) {
    for key in keys_in(v) {
        let k = key.to_ascii_lowercase();
        assert!(
            !(k == "token" || k.contains("hash") || k.contains("secret") || k.contains("password")),
            "key {key:?} should not be in {v}"
        );
    }
    for s in strings_in(v) {
        // A secret alone, or inside a longer value (a detail field, "laptop ggt_..."): no value
        // carries the secrets' prefix at all.
        assert!(
            !looks_like_secret(&s) && !s.contains("ggt_") && !s.contains("$argon2"),
            "value {s:?} leaks a secret: {v}"
        );
        assert!(!s.contains(PASSWORD), "password in {v}");
    }
}

fn user_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.add_user("alice", PASSWORD);
    sb
}

// ---------------------------------------------------------------------------------------------
// users

#[test]
fn user_add_list_disable_enable() {
    let sb = user_sandbox();
    sb.add_admin("root", "root-password-123");
    let list = sb.cli_json(&["user", "list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_no_secrets(&list);
    let alice = with_value(&list, "alice");
    let root = with_value(&list, "root");
    assert_eq!((alice.len(), root.len()), (1, 1), "{list}");
    let is_admin = |u: &Value| {
        strings_in(u)
            .iter()
            .any(|s| s.eq_ignore_ascii_case("admin"))
            || ["admin", "isAdmin", "is_admin"]
                .iter()
                .any(|k| u[*k] == Value::Bool(true))
    };
    assert!(is_admin(root[0]), "root should be shown as admin: {list}");
    assert!(!is_admin(alice[0]), "alice is not an admin: {list}");

    let before = alice[0].clone();
    sb.cli(&["user", "disable", "alice"]).ok();
    let list = sb.cli_json(&["user", "list", "--json"]);
    let disabled = with_value(&list, "alice")[0].clone();
    assert_ne!(
        disabled, before,
        "user list should show that alice is disabled"
    );
    assert_eq!(with_value(&list, "root")[0], root[0], "root is unchanged");
    sb.cli(&["user", "enable", "alice"]).ok();
    let list = sb.cli_json(&["user", "list", "--json"]);
    assert_eq!(
        with_value(&list, "alice")[0],
        &before,
        "enabled again: as before"
    );

    // the plain listing names both users
    let plain = sb.cli(&["user", "list"]);
    assert!(
        plain.ok().contains("alice") && plain.stdout.contains("root"),
        "{plain}"
    );
}

#[test]
fn user_errors_are_refused() {
    let sb = user_sandbox();
    let run = sb.cli_stdin(
        &["user", "add", "alice", "--password-stdin"],
        "again-password\n",
    );
    assert!(
        !run.success() && !run.stderr.trim().is_empty(),
        "duplicate user: {run}"
    );
    // Said before a password is asked for (without a terminal: not "no terminal").
    sb.cli(&["user", "add", "alice"])
        .fails_with("user 'alice' already exists");
    for args in [["user", "disable", "nobody"], ["user", "enable", "nobody"]] {
        let run = sb.cli(&args);
        assert!(!run.success(), "{run}");
        assert!(
            run.stderr.contains("nobody"),
            "the message should name the user: {run}"
        );
    }
    for bad in ["", "Alice Smith", "../etc", "a/b"] {
        let run = sb.cli_stdin(&["user", "add", bad, "--password-stdin"], "some-password\n");
        assert!(!run.success(), "user name {bad:?} should be refused: {run}");
    }
    // The names the audit trail writes where no user acted, said before a password is asked.
    for reserved in ["gitgate", "anonymous"] {
        sb.cli(&["user", "add", reserved])
            .fails_with(&format!("'{reserved}' cannot be a user name"));
    }
    let list = sb.cli_json(&["user", "list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

// ---------------------------------------------------------------------------------------------
// grants

#[test]
fn grant_add_list_remove() {
    let sb = user_sandbox();
    sb.add_user("bob", "bob-password-123");
    sb.grant("alice", "team", "write");
    sb.grant("alice", "other/app", "admin");
    sb.grant("bob", "team", "read");

    let all = sb.cli_json(&["grant", "list", "--json"]);
    assert_eq!(all.as_array().map(Vec::len), Some(3), "{all}");
    let alice = sb.cli_json(&["grant", "list", "alice", "--json"]);
    assert_eq!(alice.as_array().map(Vec::len), Some(2), "{alice}");
    let team = with_value(&alice, "team");
    assert_eq!(team.len(), 1, "{alice}");
    assert!(
        strings_in(team[0])
            .iter()
            .any(|s| s.eq_ignore_ascii_case("write")),
        "{alice}"
    );
    let repo = with_value(&alice, "other/app");
    assert_eq!(repo.len(), 1, "{alice}");
    assert!(
        strings_in(repo[0])
            .iter()
            .any(|s| s.eq_ignore_ascii_case("admin")),
        "{alice}"
    );
    assert!(
        with_value(&alice, "bob").is_empty(),
        "filtered by user: {alice}"
    );

    sb.cli(&["grant", "remove", "alice", "team"]).ok();
    let alice = sb.cli_json(&["grant", "list", "alice", "--json"]);
    assert_eq!(alice.as_array().map(Vec::len), Some(1), "{alice}");
    assert!(with_value(&alice, "team").is_empty(), "{alice}");
    let bob = sb.cli_json(&["grant", "list", "bob", "--json"]);
    assert_eq!(
        bob.as_array().map(Vec::len),
        Some(1),
        "bob's grant untouched: {bob}"
    );

    let plain = sb.cli(&["grant", "list"]);
    assert!(plain.ok().contains("other/app"), "{plain}");
}

/// A grant or scoped token for what the embedded backend does not serve — a project key in
/// Bitbucket's upper case while the folder is lower case, a typo — is made (the repository may
/// come later), with a note naming the folder that differs only in case.
#[test]
fn a_grant_or_token_for_a_folder_that_is_not_there_says_so() {
    let sb = user_sandbox();
    sb.create_repo("team/app");
    let run = sb.cli(&["grant", "add", "alice", "TEAM", "read"]);
    let said = run.stderr.clone();
    run.ok();
    assert!(
        said.contains("no project TEAM under") && said.contains("(there is team:"),
        "{said}"
    );
    let run = sb.cli(&[
        "token",
        "create",
        "--repo",
        "team/ap",
        "--name",
        "ci",
        "--permission",
        "REPO_READ",
    ]);
    assert!(
        run.stderr.contains("no repository team/ap under") && !run.stderr.contains("there is"),
        "{run}"
    );
    run.ok();
    let run = sb.cli(&[
        "token",
        "create",
        "--repo",
        "Team/App",
        "--name",
        "ci2",
        "--permission",
        "REPO_READ",
    ]);
    assert!(run.stderr.contains("(there is team/app.git:"), "{run}");
    // What is there is made without a word more.
    for args in [
        &["grant", "add", "alice", "team", "read"][..],
        &["grant", "add", "alice", "team/app.git", "write"],
        &[
            "token",
            "create",
            "--project",
            "team",
            "--name",
            "ci3",
            "--permission",
            "REPO_READ",
        ],
    ] {
        let run = sb.cli(args);
        assert!(!run.stderr.contains("note: "), "{args:?}: {run}");
        run.ok();
    }
    // Something the backend refuses to serve is there: the note says what, not "case".
    let repos = sb.repos();
    std::os::unix::fs::symlink(repos.join("team/app.git"), repos.join("team/link.git")).unwrap();
    std::fs::write(repos.join("team/gf.git"), "gitdir: app.git\n").unwrap();
    std::fs::create_dir(repos.join("team/empty")).unwrap();
    std::fs::write(repos.join("file"), "").unwrap();
    for (target, said) in [
        (
            "team/link",
            "through a symbolic link or a file where a directory should be",
        ),
        (
            "team/gf",
            "through a symbolic link or a file where a directory should be",
        ),
        ("team/app.git/sub", "inside another repository's folder"),
        (
            "team/empty",
            "(there is team/empty, but git would find no repository in it, and a grant on a \
             repository does not cover the repositories in a folder below it)",
        ),
        ("file", "is a symbolic link or a file"),
    ] {
        let run = sb.cli(&["grant", "add", "alice", target, "read"]);
        assert!(run.stderr.contains(said), "{target}: {run}");
        assert!(!run.stderr.contains("case-sensitive"), "{target}: {run}");
        run.ok();
    }
}

#[test]
fn grant_errors_are_refused() {
    let sb = user_sandbox();
    for target in [
        "",
        "/",
        "team/",
        "/team",
        "team//app",
        "../team",
        "team/..",
        "team/./app",
        "team\\app",
        "te am",
    ] {
        let run = sb.cli(&["grant", "add", "alice", target, "read"]);
        assert!(!run.success(), "target {target:?} should be refused: {run}");
        assert!(!run.stderr.trim().is_empty(), "{run}");
    }
    for level in ["owner", "", "READ_WRITE", "REPO_READ"] {
        let run = sb.cli(&["grant", "add", "alice", "team", level]);
        assert!(!run.success(), "level {level:?} should be refused: {run}");
    }
    sb.cli(&["grant", "add", "nobody", "team", "read"])
        .fails_with("nobody");
    // The gate refuses every request for a path holding the token prefix, so neither a grant
    // nor a token for one is made.
    sb.cli(&["grant", "add", "alice", "team/ggt_calc", "read"])
        .fails_with("ggt_");
    sb.cli(&[
        "token",
        "create",
        "--repo",
        "team/ggt_calc",
        "--name",
        "ci",
        "--permission",
        "REPO_READ",
    ])
    .fails_with("could never be served");
    // With git served at the root (the sandbox's git_prefix), /rest/ is the REST API's: a
    // project `rest` could never be cloned, so nothing is made for it.
    sb.cli(&["grant", "add", "alice", "rest", "read"])
        .fails_with("/rest/ is the REST API's");
    sb.cli(&[
        "token",
        "create",
        "--repo",
        "rest/app",
        "--name",
        "ci",
        "--permission",
        "REPO_READ",
    ])
    .fails_with("git_prefix = \"/scm\"");
    // A password for a token that takes none is a mistake to be told, not ignored.
    sb.cli_stdin(
        &[
            "token",
            "create",
            "--project",
            "team",
            "--name",
            "ci",
            "--permission",
            "REPO_READ",
            "--password-stdin",
        ],
        "pw\n",
    )
    .fails_with("--password-stdin is for personal tokens");
    let tokens = sb.cli_json(&["token", "list", "--json"]);
    assert_eq!(tokens, Value::Array(vec![]), "no token was made");
    // No grant to remove: in place already (exit 0, as for a script repeating itself), with
    // the grants there are, for a target mistyped.
    let run = sb.cli(&["grant", "remove", "alice", "team"]);
    assert!(
        run.success()
            && run
                .stderr
                .contains("'alice' has no grant on team (their grants: none); nothing changed"),
        "{run}"
    );
    assert!(
        !sb.cli(&["audit"]).stdout.contains("grant.removed"),
        "a removal of nothing is no event"
    );
    sb.cli(&["grant", "remove", "nobody", "team"])
        .fails_with("no user 'nobody'");
    let list = sb.cli_json(&["grant", "list", "--json"]);
    assert_eq!(list, Value::Array(vec![]), "nothing was granted");
}

// ---------------------------------------------------------------------------------------------
// tokens

#[test]
fn token_create_prints_the_secret_alone_on_stdout() {
    let sb = user_sandbox();
    let run = sb.cli_stdin(
        &[
            "token",
            "create",
            "--user",
            "alice",
            "--name",
            "laptop",
            "--permission",
            "REPO_WRITE",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    );
    let out = run.ok();
    let secret = out.trim_end_matches('\n');
    assert!(
        looks_like_secret(secret),
        "stdout should be the secret alone: {run}"
    );
    assert!(!run.stderr.trim().is_empty(), "details go to stderr: {run}");
    assert!(
        !run.stderr.contains(secret),
        "the secret is printed once, on stdout: {run}"
    );
    let list = sb.cli_json(&["token", "list", "--json"]);
    let ids: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids, [secret_id(secret)], "{list}");

    // a project token the same way
    let run = sb.cli(&[
        "token",
        "create",
        "--project",
        "team",
        "--name",
        "ci",
        "--permission",
        "REPO_READ",
    ]);
    assert!(looks_like_secret(run.ok().trim_end_matches('\n')), "{run}");
}

#[test]
fn token_create_personal_json() {
    let sb = user_sandbox();
    let before = now_ms();
    let t = sb.personal_token("alice", PASSWORD, "laptop", &["PROJECT_READ", "REPO_WRITE"]);
    let after = now_ms();
    let j = &t.json;
    assert!(looks_like_secret(&t.secret), "{j}");
    assert_eq!(secret_id(&t.secret), t.id, "the secret carries the id: {j}");
    assert_eq!(t.id.len(), 12, "{j}");
    assert_eq!(j["name"], "laptop", "{j}");
    assert_eq!(j["kind"], "personal", "{j}");
    assert_eq!(j["user"], "alice", "{j}");
    assert_eq!(j["scope"], Value::Null, "{j}");
    assert_eq!(j["expiresAt"], Value::Null, "{j}");
    let mut perms: Vec<_> = j["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    perms.sort();
    assert_eq!(perms, ["PROJECT_READ", "REPO_WRITE"], "{j}");
    let created = j["createdAt"]
        .as_i64()
        .unwrap_or_else(|| panic!("createdAt in ms: {j}"));
    assert!(
        before - 2000 <= created && created <= after + 2000,
        "createdAt {created} not now: {j}"
    );

    // The shape `token show --json` has, and the secret.
    let mut shown = sb.cli_json(&["token", "show", &t.id, "--json"]);
    shown["token"] = Value::from(t.secret.as_str());
    let mut created = j.clone();
    // (Only the last use may have moved since.)
    created["lastUsedAt"] = shown["lastUsedAt"].clone();
    assert_eq!(created, shown);
    assert_eq!(j["compliant"], true, "{j}");

    // a second token gets another id and secret
    let t2 = sb.personal_token("alice", PASSWORD, "desktop", &["REPO_READ"]);
    assert_ne!(t2.id, t.id);
    assert_ne!(t2.secret[17..], t.secret[17..]);
}

#[test]
fn token_create_with_expiry_days() {
    let sb = user_sandbox();
    let run = sb.cli(&[
        "token",
        "create",
        "--project",
        "team",
        "--name",
        "ci",
        "--permission",
        "REPO_READ",
        "--expiry-days",
        "30",
        "--json",
    ]);
    let j: Value = serde_json::from_str(run.ok()).unwrap();
    let created = j["createdAt"].as_i64().unwrap_or_else(|| panic!("{j}"));
    let expires = j["expiresAt"]
        .as_i64()
        .unwrap_or_else(|| panic!("expiresAt in ms: {j}"));
    assert!(
        (expires - created - 30 * DAY_MS).abs() < 60_000,
        "expiry should be 30 days: {j}"
    );
    for bad in ["-1", "abc"] {
        let run = sb.cli(&[
            "token",
            "create",
            "--project",
            "team",
            "--name",
            "x",
            "--permission",
            "REPO_READ",
            "--expiry-days",
            bad,
        ]);
        assert!(
            !run.success(),
            "--expiry-days {bad} should be refused: {run}"
        );
    }
    // A negative number is read as a number, not as an unknown option.
    let run = sb.cli(&[
        "token",
        "create",
        "--project",
        "team",
        "--name",
        "x",
        "--permission",
        "REPO_READ",
        "--expiry-days",
        "-5",
    ]);
    run.fails_with("invalid value '-5' for '--expiry-days");
    sb.cli(&[
        "ratelimit",
        "set",
        "alice",
        "--capacity",
        "5",
        "--refill",
        "-1",
    ])
    .fails_with("refill must be from 0.0000116 (one request a day) to at most 1000000");
}

/// `--capacity` and `--overlap-seconds` refuse a negative number in words that say what they
/// take, as `--expiry-days` and `--refill` do, not clap's "-1 is not in 0..=4294967295"; and a
/// value past what they take is said in words too (a week for the overlap, not 4294967295).
#[test]
fn a_count_out_of_its_range_is_said_in_words() {
    let sb = user_sandbox();
    let token = sb.scoped_token("--project", "team", "ci", "REPO_READ");
    let capacity = "the capacity must be a whole number of requests from 1 to 4294967295";
    for bad in ["-1", "0"] {
        let run = sb.cli(&[
            "ratelimit",
            "set",
            "alice",
            "--capacity",
            bad,
            "--refill",
            "1",
        ]);
        run.fails_with(capacity);
        assert!(!run.stderr.contains("is not in"), "{run}");
    }
    for (bad, said) in [
        (
            "-1",
            "the overlap must be a whole number of seconds from 0 to 604800 (7 days)",
        ),
        (
            "604801",
            "the overlap may be at most 604800 seconds (7 days)",
        ),
        (
            "4294967296",
            "the overlap may be at most 604800 seconds (7 days)",
        ),
    ] {
        let run = sb.cli(&["token", "rotate", &token.id, "--overlap-seconds", bad]);
        run.fails_with(said);
        assert!(!run.stderr.contains("is not in"), "{run}");
    }
    // Nothing was changed by either: no override, and the token's secret still works.
    assert!(
        !sb.cli(&["ratelimit", "list"]).ok().contains("alice"),
        "an override was set"
    );
    let shown = sb.cli(&["token", "show", &token.id, "--json"]);
    let j: Value = serde_json::from_str(shown.ok()).unwrap();
    assert!(j["rotatedAt"].is_null(), "{j}");
}

#[test]
fn personal_token_with_wrong_password_is_refused_and_nothing_created() {
    let sb = user_sandbox();
    for (user, password) in [
        ("alice", "not-the-password"),
        ("alice", ""),
        ("nobody", PASSWORD),
    ] {
        let run = sb.cli_stdin(
            &[
                "token",
                "create",
                "--user",
                user,
                "--name",
                "laptop",
                "--permission",
                "REPO_READ",
                "--password-stdin",
                "--json",
            ],
            &format!("{password}\n"),
        );
        assert!(!run.success(), "{user}/{password:?}: {run}");
        assert!(run.stdout.trim().is_empty(), "nothing on stdout: {run}");
        let err = run.stderr.to_ascii_lowercase();
        assert!(
            err.contains("password") || err.contains(user),
            "the message should say what was wrong: {run}"
        );
    }
    let list = sb.cli_json(&["token", "list", "--json"]);
    assert_eq!(list, Value::Array(vec![]), "nothing created");
}

#[test]
fn scoped_tokens_json() {
    let sb = Sandbox::new();
    let p = sb.scoped_token("--project", "team", "ci", "REPO_WRITE");
    assert!(looks_like_secret(&p.secret));
    assert_eq!(secret_id(&p.secret), p.id);
    assert_eq!(p.json["kind"], "project", "{}", p.json);
    assert_eq!(p.json["scope"], "team", "{}", p.json);
    assert_eq!(p.json["user"], Value::Null, "{}", p.json);
    assert_eq!(
        p.json["permissions"],
        serde_json::json!(["REPO_WRITE"]),
        "{}",
        p.json
    );

    let r = sb.scoped_token("--repo", "team/app", "deploy", "REPO_READ");
    assert_eq!(r.json["kind"], "repository", "{}", r.json);
    assert_eq!(r.json["scope"], "team/app", "{}", r.json);
    assert_eq!(r.json["user"], Value::Null, "{}", r.json);
    assert_eq!(r.json["name"], "deploy", "{}", r.json);

    for (flag, scope, reason) in [
        ("--project", "team/app", "--project takes a project key"),
        ("--project", "", "is not a project key"),
        ("--repo", "team", "--repo takes PROJECT/REPO"),
        ("--repo", "team/../x", "has an invalid segment '..'"),
    ] {
        let run = sb.cli(&[
            "token",
            "create",
            flag,
            scope,
            "--name",
            "x",
            "--permission",
            "REPO_READ",
        ]);
        assert!(!run.success(), "{flag} {scope:?} should be refused: {run}");
        assert!(
            run.stderr.contains(reason),
            "{flag} {scope:?}: the refusal does not say what is wrong: {run}"
        );
    }
    let tokens = sb.cli_json(&["token", "list", "--json"]);
    assert_eq!(
        tokens.as_array().unwrap().len(),
        2,
        "a refused scope made a token: {tokens}"
    );
}

#[test]
fn bad_permissions_are_refused_and_nothing_created() {
    let sb = user_sandbox();
    for perm in ["REPO_OWNER", "READ", "", "REPO-READ", "PROJECT_REPO"] {
        let run = sb.cli(&[
            "token",
            "create",
            "--project",
            "team",
            "--name",
            "x",
            "--permission",
            perm,
        ]);
        assert!(
            !run.success(),
            "permission {perm:?} should be refused: {run}"
        );
        assert!(!run.stderr.trim().is_empty(), "{run}");
        let run = sb.cli_stdin(
            &[
                "token",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--permission",
                perm,
                "--password-stdin",
            ],
            &format!("{PASSWORD}\n"),
        );
        assert!(
            !run.success(),
            "personal permission {perm:?} should be refused: {run}"
        );
    }
    // Said before the owner's password is asked for: without a terminal (nor
    // --password-stdin), the mistyped permission, expiry or name, not "no terminal".
    for (args, said) in [
        (
            ["--permission", "REPO_OWNER"],
            "unknown permission 'REPO_OWNER'",
        ),
        (["--expiry-days", "0"], "the expiry must be at least 1 day"),
        (["--expiry-days", "-1"], "the expiry must be at least 1 day"),
        (["--expiry-days", "99999999999"], "at most 36500 days"),
    ] {
        let mut all = vec!["token", "create", "--user", "alice", "--name", "x"];
        if args[0] != "--permission" {
            all.extend(["--permission", "REPO_READ"]);
        }
        all.extend(args);
        sb.cli(&all).fails_with(said);
    }
    sb.cli(&[
        "token",
        "create",
        "--user",
        "alice",
        "--name",
        "a\u{200B}b",
        "--permission",
        "REPO_READ",
    ])
    .fails_with("a token name must be");
    let list = sb.cli_json(&["token", "list", "--json"]);
    assert_eq!(list, Value::Array(vec![]), "nothing created");
}

#[test]
fn repository_token_carries_no_project_permission() {
    let sb = Sandbox::new();
    let run = sb.cli(&[
        "token",
        "create",
        "--repo",
        "team/app",
        "--name",
        "x",
        "--permission",
        "PROJECT_READ",
    ]);
    assert!(
        !run.success(),
        "DESIGN.md: repository tokens carry no project permission: {run}"
    );
    // Nothing created: not even the store the refused command made for itself.
    assert!(!sb.db().exists(), "{run}");
    assert!(
        run.stderr
            .contains("the new token store made for this command")
            && run.stderr.contains("was taken back: nothing was created"),
        "{run}"
    );
    sb.add_user("alice", PASSWORD);
    let list = sb.cli_json(&["token", "list", "--json"]);
    assert_eq!(list, Value::Array(vec![]), "nothing created");
}

/// A first `user add` (no store yet) that has made its store and waits for the password on a
/// stdin held open (returned: waiting on a child closes its stdin first, and the end of the
/// password would race a signal).
fn a_first_user_add_waiting_for_its_password(
    sb: &Sandbox,
) -> (std::process::Child, Option<std::process::ChildStdin>) {
    let mut cmd = sb.gitgate_command();
    cmd.args(["user", "add", "alice", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdin = child.stdin.take();
    let made = std::time::Instant::now();
    while !sb.db().exists() && made.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(sb.db().exists(), "the command made no store to take back");
    // Made, and waiting for the password.
    common::wait_until_reading_stdin(child.id());
    (child, stdin)
}

/// SIGTERM to `child`, and what it wrote on stderr once it has ended.
fn stopped(child: std::process::Child) -> (std::process::ExitStatus, String) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A first `user add` stopped while it waits for the password (Ctrl-C at the prompt, a
/// SIGTERM) takes back the store it made for itself: nothing is left that later commands would
/// read as an install with no users.
#[test]
fn a_first_command_stopped_at_its_password_leaves_no_store() {
    use std::os::unix::process::ExitStatusExt;
    let sb = Sandbox::new();
    let (child, stdin) = a_first_user_add_waiting_for_its_password(&sb);
    let (exit, said) = stopped(child);
    drop(stdin);
    assert_eq!(
        exit.code(),
        Some(128 + 15),
        "{exit:?} {:?}: {said}",
        exit.signal()
    );
    assert!(said.contains("was taken back"), "{said}");
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", sb.db().display());
        assert!(!std::path::Path::new(&file).exists(), "{file} is left");
    }
    sb.cli(&["user", "list"]).fails_with("no token store at");
}

/// ... but a store another command wrote to while the first waited for its password is a store
/// in use: kept, with what was written.
#[test]
fn a_new_store_another_command_wrote_to_is_kept_when_the_first_is_stopped() {
    let sb = Sandbox::new();
    let (child, stdin) = a_first_user_add_waiting_for_its_password(&sb);
    sb.add_user("bob", "bob-password-123");
    let (_, said) = stopped(child);
    drop(stdin);
    assert!(!said.contains("taken back"), "{said}");
    let users = sb.cli(&["user", "list"]).ok().to_string();
    assert!(users.contains("bob") && !users.contains("alice"), "{users}");
}

#[test]
fn token_list_json_has_no_secrets_and_filters_by_user() {
    let sb = user_sandbox();
    sb.add_user("bob", "bob-password-123");
    let a = sb.personal_token("alice", PASSWORD, "laptop", &["REPO_WRITE"]);
    let b = sb.personal_token("bob", "bob-password-123", "bobs", &["REPO_READ"]);
    let p = sb.scoped_token("--project", "team", "ci", "REPO_READ");

    let list = sb.cli_json(&["token", "list", "--json"]);
    assert_no_secrets(&list);
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 3, "{list}");
    for t in [&a, &b, &p] {
        let item = items
            .iter()
            .find(|i| i["id"] == t.id.as_str())
            .unwrap_or_else(|| panic!("{} missing: {list}", t.id));
        for key in [
            "id",
            "name",
            "permissions",
            "expiresAt",
            "createdAt",
            "kind",
            "user",
            "scope",
            "lastUsedAt",
            "revokedAt",
        ] {
            assert!(item.get(key).is_some(), "{key} missing from {item}");
        }
        for key in [
            "id",
            "name",
            "permissions",
            "expiresAt",
            "createdAt",
            "kind",
            "user",
            "scope",
        ] {
            assert_eq!(
                item[key], t.json[key],
                "{key}: list says {item}, create said {}",
                t.json
            );
        }
        assert_eq!(item["revokedAt"], Value::Null, "{item}");
        assert_eq!(item["lastUsedAt"], Value::Null, "never used: {item}");
    }

    let alice = sb.cli_json(&["token", "list", "--user", "alice", "--json"]);
    let ids: Vec<_> = alice
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(ids, [Value::from(a.id.as_str())], "{alice}");

    let plain = sb.cli(&["token", "list"]);
    let out = plain.ok();
    for t in [&a, &b, &p] {
        assert!(out.contains(&t.id), "plain list shows ids: {plain}");
        assert!(
            !out.contains(&t.secret) && !out.contains(&t.secret[17..60]),
            "plain list leaks: {plain}"
        );
    }
}

#[test]
fn token_revoke() {
    let sb = user_sandbox();
    let a = sb.personal_token("alice", PASSWORD, "laptop", &["REPO_WRITE"]);
    let keep = sb.personal_token("alice", PASSWORD, "desktop", &["REPO_WRITE"]);
    let before = now_ms();
    sb.cli(&["token", "revoke", &a.id]).ok();
    let list = sb.cli_json(&["token", "list", "--json"]);
    let find = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap()
    };
    let revoked_at = find(&a.id)["revokedAt"]
        .as_i64()
        .unwrap_or_else(|| panic!("revokedAt in ms: {list}"));
    assert!(
        revoked_at >= before - 2000 && revoked_at <= now_ms() + 2000,
        "{list}"
    );
    assert_eq!(find(&keep.id)["revokedAt"], Value::Null, "{list}");

    let run = sb.cli(&["token", "revoke", "AAAAAAAAAAAA"]);
    assert!(!run.success(), "unknown id: {run}");
    assert!(
        run.stderr.contains("AAAAAAAAAAAA"),
        "message names the id: {run}"
    );

    // A store another process keeps locked (past SQLite's 5 s busy timeout) takes nothing: the
    // one revoking a leaked token, or disabling its owner, is told so.
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (revoke, disable) = std::thread::scope(|s| {
        let revoke = s.spawn(|| sb.cli(&["token", "revoke", &keep.id]));
        let disable = s.spawn(|| sb.cli(&["user", "disable", "alice"]));
        (revoke.join().unwrap(), disable.join().unwrap())
    });
    conn.execute_batch("ROLLBACK").unwrap();
    for (run, still_works) in [
        (
            revoke,
            format!("token {} is NOT revoked and still works", keep.id),
        ),
        (
            disable,
            "user 'alice' is NOT disabled, and their tokens still work".to_string(),
        ),
    ] {
        let said = run.fails_with("locked by another process");
        assert!(said.contains("nothing was changed"), "{said}");
        assert!(said.contains(&still_works), "{said}");
        // Who holds it is named, as `serve` names it: this test's connection, in a transaction.
        assert!(
            said.contains(&format!("(held by process {}", std::process::id()))
                && said.contains("end its transaction"),
            "{said}"
        );
    }
    let list = sb.cli_json(&["token", "list", "--json"]);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == keep.id.as_str())
            .unwrap()["revokedAt"],
        Value::Null
    );

    // A store whose tables were changed by hand: said as that, without the statement's SQL,
    // and not with advice about disk space or locks.
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    conn.execute_batch("ALTER TABLE tokens RENAME COLUMN revoked_at TO revoked_at_x")
        .unwrap();
    // Refused at the opening, the column named, before any statement could fail on it.
    let run = sb.cli(&["token", "revoke", &keep.id]);
    let said = run.fails_with("lack column(s) 'tokens'.'revoked_at'");
    assert!(
        said.contains("restore it from a backup")
            && said.contains(&format!("token {} is NOT revoked and still works", keep.id))
            && !said.contains("SELECT")
            && !said.contains("disk space"),
        "{said}"
    );
    let run = sb.cli(&["token", "list"]);
    let said = run.fails_with("'tokens'.'revoked_at'");
    assert!(!said.contains("SELECT"), "{said}");
    let run = sb.cli(&["check"]);
    let said = run.fails_with("'tokens'.'revoked_at'");
    assert!(
        !said.contains("SELECT") && said.contains("restore it from a backup"),
        "{said}"
    );
}

#[test]
fn a_secret_that_cannot_be_shown_does_not_stay_valid() {
    let sb = user_sandbox();
    // stdout on a full disk: the token is created, its secret cannot be written.
    let mut cmd = sb.gitgate_command();
    cmd.args([
        "token",
        "create",
        "--project",
        "team",
        "--name",
        "lost",
        "--permission",
        "REPO_READ",
    ])
    .stdin(Stdio::null())
    .stdout(
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    )
    .stderr(Stdio::piped());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("could not be shown, so it was revoked"),
        "{stderr}"
    );
    let list = sb.cli_json(&["token", "list", "--json"]);
    let lost = with_value(&list, "lost");
    assert_eq!(lost.len(), 1, "{list}");
    assert!(lost[0]["revokedAt"].is_i64(), "{list}");
    // stdout closed, or /dev/null: every write succeeds and nobody reads it. Refused before
    // anything is made — a create, and a rotation that would cut the old secret off.
    let keep = sb.cli(&[
        "token",
        "create",
        "--project",
        "team",
        "--name",
        "kept",
        "--permission",
        "REPO_READ",
    ]);
    let kept_secret = keep.ok().trim().to_string();
    let kept_id = with_value(&sb.cli_json(&["token", "list", "--json"]), "kept")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for args in [
        vec![
            "token",
            "create",
            "--project",
            "team",
            "--name",
            "unseen",
            "--permission",
            "REPO_READ",
        ],
        vec!["token", "rotate", &kept_id],
    ] {
        let out = sb
            .gitgate_command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("standard output is closed or /dev/null")
                && stderr.contains("nothing was changed"),
            "{args:?}: {stderr}"
        );
    }
    let list = sb.cli_json(&["token", "list", "--json"]);
    assert!(with_value(&list, "unseen").is_empty(), "{list}");
    let kept = with_value(&list, "kept");
    assert!(
        kept[0]["rotatedAt"].is_null() && kept[0]["revokedAt"].is_null(),
        "{list}"
    );
    assert!(kept_secret.starts_with("ggt_"), "{kept_secret}");
}

/// Runs `gitgate ARGS` with stdout (or stderr) on a full disk.
fn with_full(sb: &Sandbox, args: &[&str], stderr_full: bool) -> std::process::Output {
    let full = || {
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let mut cmd = sb.gitgate_command();
    cmd.args(args).stdin(Stdio::null());
    if stderr_full {
        cmd.stdout(Stdio::piped()).stderr(full());
    } else {
        cmd.stdout(full()).stderr(Stdio::piped());
    }
    cmd.output().unwrap()
}

#[test]
fn a_rotation_whose_secret_cannot_be_shown_is_undone() {
    let sb = user_sandbox();
    sb.create_repo("team/app");
    let ci = sb.scoped_token("--project", "team", "ci", "REPO_READ");
    // A rotation with an overlap before it: the undo must give that back too.
    let first = sb.cli(&["token", "rotate", &ci.id, "--overlap-seconds", "3600"]);
    let current = first.ok().trim().to_string();
    let before = with_value(&sb.cli_json(&["token", "list", "--json"]), "ci")[0].clone();
    // stdout on a full disk: the new secret is made and cannot be written.
    let out = with_full(&sb, &["token", "rotate", &ci.id], false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("could not be shown, so the rotation was undone")
            && stderr.contains("the old secret works as before"),
        "{stderr}"
    );
    let after = with_value(&sb.cli_json(&["token", "list", "--json"]), "ci")[0].clone();
    assert_eq!(after, before, "the token is as it was before the rotation");
    let audit = sb.cli_json(&["audit", "--json"]);
    let undone: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "token.rotation_undone")
        .collect();
    assert_eq!(undone.len(), 1, "{audit}");
    assert_no_secrets(&audit);
    // Every event has the same fields, `lastAt` (of repeats) null where there were none, and
    // `requestId` where no request made it.
    for e in audit.as_array().unwrap() {
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "action",
                "actor",
                "at",
                "count",
                "detail",
                "id",
                "lastAt",
                "requestId",
                "source",
                "target"
            ],
            "{e}"
        );
    }
    // Both secrets the token had before still work: the current one, and the one the first
    // rotation left valid for an hour.
    let server = sb.serve();
    for secret in [&current, &ci.secret] {
        let git = sb.git(
            sb.root(),
            &["ls-remote", &server.url_with("ci", secret, "team/app")],
        );
        assert!(git.ok().contains("refs/heads/main"), "{git}");
    }
}

#[test]
fn a_change_made_is_not_reported_as_failed_when_its_output_cannot_be_written() {
    let sb = user_sandbox();
    let ci = sb.scoped_token("--project", "team", "ci", "REPO_READ");
    // `token edit` prints the token after changing it: stdout full says the change was made.
    let out = with_full(
        &sb,
        &["token", "edit", &ci.id, "--name", "ci-renamed"],
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "token 'ci-renamed' ({}) was updated, but its details could not be shown",
            ci.id
        )),
        "{stderr}"
    );
    let list = sb.cli_json(&["token", "list", "--json"]);
    assert_eq!(with_value(&list, "ci-renamed").len(), 1, "{list}");
    // A confirmation on a full stderr does not turn a change made into a crash (exit 101).
    for args in [
        vec!["token", "revoke", ci.id.as_str()],
        vec!["user", "disable", "alice"],
        vec!["grant", "add", "alice", "team", "read"],
        vec![
            "policy",
            "set",
            "--expiry-required",
            "yes",
            "--max-expiry-days",
            "90",
        ],
    ] {
        let out = with_full(&sb, &args, true);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
    let list = sb.cli_json(&["token", "list", "--json"]);
    assert!(
        with_value(&list, "ci-renamed")[0]["revokedAt"].is_i64(),
        "{list}"
    );
    let users = sb.cli_json(&["user", "list", "--json"]);
    assert_eq!(
        with_value(&users, "alice")[0]["active"],
        Value::Bool(false),
        "{users}"
    );
    // An error that cannot be written is no crash either.
    let out = with_full(&sb, &["token", "revoke", "nosuchtoken12"], true);
    assert_eq!(out.status.code(), Some(1));
}

/// A store file emptied under a running server (`: > gitgate.db`), its `-wal` still holding
/// commits: SQLite would delete that `-wal` on opening the file, so the CLI and `check` refuse
/// before it does, and the server stops serving from the log alone.
#[test]
fn an_emptied_store_file_is_refused_and_its_log_kept() {
    let sb = user_sandbox();
    let server = sb.serve();
    // Commits made while the server holds the store open stay in its `-wal`.
    sb.add_user("bob", PASSWORD);
    let wal = sb.root().join("gitgate.db-wal");
    let wal_len = fs::metadata(&wal).unwrap().len();
    assert!(wal_len > 0);
    fs::OpenOptions::new()
        .write(true)
        .open(sb.db())
        .unwrap()
        .set_len(0)
        .unwrap();
    for args in [
        &["user", "list"][..],
        &["check"],
        &["token", "revoke", "abcdefghijkl"],
    ] {
        let run = sb.cli(args);
        let err = run.fails_with("the store file is empty (0 bytes)");
        assert!(
            err.contains("nothing was opened or changed"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        fs::metadata(&wal).unwrap().len(),
        wal_len,
        "the -wal is kept"
    );
    // The server: not ready, with the cause in its log. (A readiness check's outcome answers
    // for a second, the last one from before the emptying too: 50 looks 20 ms apart, as
    // before, left a loaded machine a few hundred milliseconds over that second.)
    let asked = std::time::Instant::now();
    let mut ready = http_get(server.port, "/readyz", None).status;
    while ready != 503 && asked.elapsed() < common::EVENT_DEADLINE {
        thread::sleep(Duration::from_millis(20));
        ready = http_get(server.port, "/readyz", None).status;
    }
    assert_eq!(ready, 503);
    let log = server.log_text();
    assert!(log.contains("emptied (truncated to 0 bytes)"), "{log}");

    // Moved away without its -wal: every command says so, a reading one too (it said "no token
    // store ... `user add` creates it", which would then refuse for the same -wal).
    fs::rename(sb.db(), sb.root().join("gitgate.db.away")).unwrap();
    for args in [&["user", "list"][..], &["user", "add", "carol"], &["check"]] {
        let run = sb.cli(args);
        run.fails_with("the store file is missing, but a -wal beside where it goes");
    }
    assert_eq!(
        fs::metadata(&wal).unwrap().len(),
        wal_len,
        "the -wal is kept"
    );
}

/// `audit --user NAME` is one user's whole trail in one command: events about the user (and
/// `user:NAME` rate-limit changes), about any of their tokens (revoked ones too), and the
/// user's own failed logins; nobody else's.
#[test]
fn audit_user_gives_one_users_whole_trail() {
    let sb = user_sandbox();
    sb.add_user("bob", PASSWORD);
    sb.grant("alice", "team", "write");
    sb.grant("bob", "team", "read");
    let laptop = sb.personal_token("alice", PASSWORD, "laptop", &["REPO_WRITE"]);
    let other = sb.personal_token("bob", PASSWORD, "other", &["REPO_READ"]);
    sb.cli(&[
        "ratelimit",
        "set",
        "alice",
        "--capacity",
        "5",
        "--refill",
        "1",
    ])
    .ok();
    sb.cli(&["token", "revoke", &laptop.id]).ok();
    sb.cli(&["user", "disable", "bob"]).ok();
    // A failed login of alice's: a token created with a wrong password.
    sb.cli_stdin(
        &[
            "token",
            "create",
            "--user",
            "alice",
            "--name",
            "x",
            "--permission",
            "REPO_READ",
            "--password-stdin",
        ],
        "wrong-password\n",
    );
    // In any case, as user names are matched.
    let trail = sb.cli_json(&["audit", "--user", "Alice", "--json"]);
    let trail = trail.as_array().unwrap();
    let seen: Vec<(String, String)> = trail
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for wanted in [
        ("user.added", "alice".to_string()),
        ("grant.added", "alice".to_string()),
        ("token.created", laptop.id.clone()),
        ("token.revoked", laptop.id.clone()),
        ("ratelimit.set", "user:alice".to_string()),
        ("auth.failed", "alice".to_string()),
    ] {
        assert!(
            seen.iter().any(|(a, t)| a == wanted.0 && *t == wanted.1),
            "{wanted:?} missing: {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|(_, t)| t == "bob" || *t == other.id),
        "bob's events are not alice's: {seen:?}"
    );
    sb.cli(&["audit", "--user", " "])
        .fails_with("--user is empty: give a user's name");
    // A name that is no user's is a typo, said so, not an empty listing.
    sb.cli(&["audit", "--user", "alcie"])
        .fails_with("no user 'alcie'");
}

/// Events whose time was changed by hand into what no listing can place (text, the largest
/// integer) are not left out without a word.
#[test]
fn audit_says_how_many_events_it_cannot_place() {
    let sb = user_sandbox();
    let clean = sb.cli(&["audit"]);
    assert!(!clean.stderr.contains("cannot read"), "{clean}");
    rusqlite::Connection::open(sb.db())
        .unwrap()
        .execute_batch(
            "INSERT INTO audit_events (at, actor, action, target, detail, source, count) VALUES
               ('yesterday', 'mallory', 'token.revoked', 'x', '', 's', 1),
               (9223372036854775807, 'mallory', 'token.revoked', 'y', '', 's', 1)",
        )
        .unwrap();
    for args in [
        &["audit"][..],
        &["audit", "--action", "token.revoked", "--json"],
    ] {
        let run = sb.cli(args);
        assert!(run.success(), "{run}");
        assert!(
            run.stderr
                .contains("note: 2 audit event(s) have a time gitgate cannot read"),
            "{run}"
        );
    }
    // A time made a real number, and a repeat's time made text, by hand: the event is listed
    // by its value, the listing does not fail.
    rusqlite::Connection::open(sb.db())
        .unwrap()
        .execute_batch(
            "INSERT INTO audit_events (at, actor, action, target, detail, source, count, last_at)
             VALUES (1764900000000.5, 'mallory', 'token.revoked', 'z', '', 's', 2, 'soon')",
        )
        .unwrap();
    let listed = sb.cli_json(&["audit", "--action", "token.revoked", "--json"]);
    let z = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == "z")
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(z["at"], 1764900000001i64, "{z}");
    assert_eq!(z["lastAt"], serde_json::Value::Null, "{z}");
    // The newest N too, whose start may be such an event.
    let newest = sb.cli_json(&[
        "audit",
        "--limit",
        "1",
        "--action",
        "token.revoked",
        "--json",
    ]);
    assert_eq!(newest.as_array().map(Vec::len), Some(1), "{newest}");
}

#[test]
fn audit_lists_every_event_and_limit_keeps_the_newest() {
    let sb = user_sandbox();
    let before = sb.cli_json(&["audit", "--json"]).as_array().unwrap().len();
    assert!(before > 0);
    // More events than a page, and than the 100,000 the listing once stopped at: 100,500 rows
    // written straight into the table, each with its own number.
    {
        let mut db = rusqlite::Connection::open(sb.db()).unwrap();
        let tx = db.transaction().unwrap();
        for i in 0..100_500 {
            tx.execute(
                "INSERT INTO audit_events (at, actor, action, target, detail, source, count) \
                 VALUES (?1, 'tester', 'test.event', ?2, '', 'local', 1)",
                rusqlite::params![1_700_000_000_000i64 + i, format!("n{i}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    sb.cli(&["user", "disable", "alice"]).ok();
    let all = sb.cli_json(&["audit", "--json"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), before + 100_500 + 1);
    // Oldest first — by when each happened, not by when it was stored: the rows written
    // straight in happened in 2023, before the sandbox's own events — and the newest is there
    // at the end.
    assert_eq!(all[0]["target"], "n0");
    assert_eq!(all[100_499]["target"], "n100499");
    assert_eq!(
        all.last().unwrap()["action"],
        "user.disabled",
        "{:?}",
        all.last()
    );
    let times: Vec<i64> = all.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    let text = sb.cli(&["audit"]).ok().to_string();
    assert_eq!(text.lines().count(), all.len());
    assert!(
        text.lines().last().unwrap().contains("user.disabled"),
        "{text}"
    );
    // --limit: the newest N, still oldest first, in both forms.
    let newest = sb.cli_json(&["audit", "--limit", "3", "--json"]);
    let newest = newest.as_array().unwrap();
    assert_eq!(newest.as_slice(), &all[all.len() - 3..]);
    let text3 = sb.cli(&["audit", "--limit", "3"]).ok().to_string();
    assert_eq!(
        text3.lines().collect::<Vec<_>>(),
        text.lines().skip(all.len() - 3).collect::<Vec<_>>()
    );
    // --since with --limit: the newest N of those since then.
    let since = sb.cli_json(&[
        "audit",
        "--since",
        "2026-01-01",
        "--limit",
        "100000",
        "--json",
    ]);
    // Only the sandbox's own events are since 2026 (the 100,500 rows are from 2023): all of
    // them, and none older, which the limit alone (the newest 100,000) would not keep out.
    let since = since.as_array().unwrap();
    assert_eq!(since.as_slice(), &all[100_500..], "{since:?}");
    let cutoff = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    assert!(since.iter().all(|e| e["at"].as_i64().unwrap() >= cutoff));
    assert_eq!(
        sb.cli_json(&["audit", "--limit", "1", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A limit beyond SQLite's integers is all of them.
    let huge = sb.cli_json(&["audit", "--limit", "18446744073709551615", "--json"]);
    assert_eq!(huge.as_array().unwrap().len(), all.len());
    sb.cli(&["audit", "--limit", "0"]).fails_with("--limit 0");
    // Seconds (or 0) are not read as a moment of 1970: the message says what to give.
    sb.cli(&["audit", "--since", "0"])
        .fails_with("too small for epoch milliseconds (it would be 1970-01-01T00:00:00Z");
    sb.cli(&["audit", "--since", "yesterday"])
        .fails_with("is not a date: use YYYY-MM-DD");
    // Nothing at all: still valid JSON.
    assert_eq!(
        sb.cli_json(&["audit", "--since", "2999-01-01", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    let sb = user_sandbox();
    assert!(!sb.cli(&["audit"]).ok().is_empty(), "the audit has lines");
    // `gitgate audit | head`, with the reader gone before the first line: the read end is
    // closed as soon as the process exists, long before it has opened the store.
    let mut cmd = sb.gitgate_command();
    cmd.args(["audit"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

/// `gitgate --version | true`, `--help | head -1` with the reader gone: ended as SIGPIPE would,
/// quietly, as any command's output is; a full disk for the output is said in one line. Before,
/// each was a panic ("failed printing to stdout"), exit 101, with a backtrace under
/// RUST_BACKTRACE.
#[test]
fn help_and_version_to_a_reader_gone_or_a_full_disk_end_without_a_panic() {
    for arg in ["--version", "--help"] {
        // The reader gone before the process starts: one dropped after its start may still be
        // there when the few lines are written.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(gitgate_bin())
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{arg}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{arg}: {stderr}");

        let out = Command::new(gitgate_bin())
            .arg(arg)
            .stdout(fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{arg}: {stderr}");
        assert!(
            stderr.starts_with("gitgate: cannot write to standard output"),
            "{arg}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(1), "{arg}: {stderr}");
    }
}

/// A stop signal that comes while `serve` starts, before its own handlers are in place, stops
/// the start as a later one does: exit 0 and a "stopped" line. Before, it ended the process by
/// the signal (status 143) with nothing logged. The signal is sent once the process has
/// threads (so `main` has begun) and while its 64 workers' threads are being started.
#[test]
fn a_stop_signal_early_in_the_start_is_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos");
    fs::create_dir(&repos).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("proxy.toml");
    fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 64\n\
             [store]\npath = \"gitgate.db\"\n\
             [upstream]\ncgi = \"/usr/lib/git-core/git-http-backend\"\nproject_root = \"repos\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(gitgate_bin())
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env_remove("GITGATE_LOG")
        .env_remove("GITGATE_LOG_FORMAT")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tasks = format!("/proc/{}/task", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_dir(&tasks).map_or(0, |t| t.count()) < 2 {
        assert!(Instant::now() < deadline, "serve never started a thread");
        std::hint::spin_loop();
    }
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{:?}: {log}", out.status);
    assert!(log.contains("stopped: SIGTERM came"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// config selection

#[test]
fn config_flag_after_subcommand_and_env_var() {
    let sb = user_sandbox();
    // `user list --json` as `cmd` runs it must list alice.
    let lists_alice = |mut cmd: Command| {
        cmd.args(["user", "list", "--json"]);
        let out = run(cmd, None);
        assert_eq!(
            with_value(&serde_json::from_str(out.ok()).unwrap(), "alice").len(),
            1,
            "{out}"
        );
    };
    let gitgate = |config_env: Option<&str>, cwd: &std::path::Path| {
        let mut cmd = Command::new(gitgate_bin());
        match config_env {
            Some(v) => cmd.env("GITGATE_CONFIG", v),
            None => cmd.env_remove("GITGATE_CONFIG"),
        };
        cmd.current_dir(cwd);
        cmd
    };
    let config = sb.config().display().to_string();
    let root = std::path::Path::new("/");
    // --config after the subcommand
    let mut cmd = gitgate(None, root);
    cmd.args(["user", "list", "--json", "--config", &config]);
    let out = run(cmd, None);
    assert_eq!(
        with_value(&serde_json::from_str(out.ok()).unwrap(), "alice").len(),
        1,
        "{out}"
    );
    // GITGATE_CONFIG
    lists_alice(gitgate(Some(&config), root));
    // Set but empty, it is unset: --config is taken, and without it ./proxy.toml.
    let mut cmd = gitgate(Some(""), root);
    cmd.args(["--config", &config]);
    lists_alice(cmd);
    std::fs::copy(sb.config(), sb.root().join("proxy.toml")).unwrap();
    lists_alice(gitgate(Some(""), sb.root()));
    // In a folder without proxy.toml, every command says how to choose one.
    let empty = tempfile::tempdir().unwrap();
    for args in [&["serve"][..], &["check"], &["user", "list"]] {
        let mut cmd = gitgate(None, empty.path());
        cmd.args(args);
        let run = run(cmd, None);
        let err = run.fails_with("proxy.toml: cannot read the config file");
        assert!(
            err.contains("choose one with --config or GITGATE_CONFIG"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn relative_store_path_is_relative_to_the_config_folder() {
    let sb = Sandbox::new();
    let mut cmd = Command::new(gitgate_bin());
    cmd.env_remove("GITGATE_CONFIG")
        .current_dir("/")
        .arg("--config")
        .arg(sb.config())
        .args(["user", "add", "alice", "--password-stdin"]);
    run(cmd, Some("some-password\n")).ok();
    assert!(sb.db().exists(), "store should be at {}", sb.db().display());
    assert!(!std::path::Path::new("/gitgate.db").exists());
}

// ---------------------------------------------------------------------------------------------
// serve refuses bad configuration

/// Runs `serve` with `config` written to `bad.toml`; it must exit non-zero within 10 s.
/// Returns its stderr.
fn serve_refuses(sb: &Sandbox, config: &str) -> String {
    let path = sb.root().join("bad.toml");
    fs::write(&path, config).unwrap();
    let log = sb.root().join("bad-serve.log");
    let mut child = Command::new(gitgate_bin())
        .env_remove("GITGATE_CONFIG")
        .current_dir(sb.root())
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve started with a bad config:\n{config}\n--- log ---\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(25));
    };
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "serve should fail: {stderr}");
    assert!(
        stderr.contains("bad.toml"),
        "the message should name the file: {stderr}"
    );
    stderr
}

/// Every file under `dir` with its length and modification time: what `check` must not change.
fn files_in(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.extend(files_in(&entry.path()));
        } else {
            out.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// `check`'s verdict counts every warning it printed, the config's own included, and its
/// store line calls a store of this version's schema current (no migration to announce).
#[test]
fn check_counts_a_config_warning_and_calls_a_current_store_current() {
    let sb = user_sandbox();
    sb.scoped_token("--project", "team", "ci", "REPO_READ");
    let check = |config: &std::path::Path| check_of(&sb, config);
    let out = check(&sb.config());
    let text = out.ok();
    assert!(
        text.contains(" (current); 1 user, 1 token not revoked")
            && !text.contains("migrated")
            && !text.contains("warning"),
        "{text}"
    );
    let warned = sb.root().join("warned.toml");
    fs::write(&warned, format!("{}\n[metrics]\n", sb.config_text())).unwrap();
    let out = check(&warned);
    let text = out.ok();
    assert!(
        text.contains("warning: [metrics] has no listen")
            && text.contains("ok: serve would start with this configuration (1 warning)"),
        "{text}"
    );
}

/// `gitgate --config CONFIG check`, in `sb`'s folder.
fn check_of(sb: &Sandbox, config: &std::path::Path) -> common::Run {
    let mut cmd = Command::new(gitgate_bin());
    cmd.env_remove("GITGATE_CONFIG")
        .current_dir(sb.root())
        .arg("--config")
        .arg(config)
        .arg("check");
    run(cmd, None)
}

/// `gitgate check` (as `nginx -t`): what `serve` would make of the config, changing nothing.
#[test]
fn check_reports_what_serve_would_make_of_the_config_and_changes_nothing() {
    let sb = user_sandbox();
    let check = |config: &std::path::Path| check_of(&sb, config);
    // `config` passes the check with this one warning and no other.
    let warns_once = |config: &std::path::Path, warning: &str| {
        let out = check(config);
        let text = out.ok();
        assert!(
            text.contains(warning) && text.contains("(1 warning)"),
            "{text}"
        );
    };
    // A config beside the sandbox's, with `from` (which must be there) replaced by `to`.
    let variant = |name: &str, from: &str, to: &str| {
        let text = sb.config_text();
        assert!(text.contains(from), "{from:?} in:\n{text}");
        let path = sb.root().join(name);
        fs::write(&path, text.replace(from, to)).unwrap();
        path
    };
    let before = files_in(sb.root());
    let out = check(&sb.config());
    let text = out.ok();
    for line in [
        "config ",
        "listen http://127.0.0.1:0: free",
        "upstream cgi ",
        ": ready",
        // No token yet: every git request would be refused, which is worth a warning.
        "; 1 user, no token that is not revoked: it refuses every git request",
        "ok: serve would start with this configuration",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert_eq!(files_in(sb.root()), before, "check changed files");
    // Beside a running server (its `-wal` open), the same, read through the log.
    let server = sb.serve();
    sb.add_user("bob", PASSWORD);
    sb.scoped_token("--project", "team", "ci", "REPO_READ");
    let text = check(&sb.config()).ok().to_string();
    assert!(
        text.contains("; 2 users, 1 token not revoked") && !text.contains("warning"),
        "{text}"
    );
    // What a process killed while it had the store open leaves, once its `-shm` is removed:
    // the file and a `-wal` holding commits the file lacks (bob). Read without creating the
    // `-shm` (which, made by another user than serve's, could keep serve from the store).
    let crashed = sb.root().join("crashed.db");
    fs::copy(sb.db(), &crashed).unwrap();
    fs::copy(
        format!("{}-wal", sb.db().display()),
        sb.root().join("crashed.db-wal"),
    )
    .unwrap();
    drop(server);
    let crashed_wal = sb.root().join("crashed.db-wal");
    let (file_before, wal_before) = (fs::read(&crashed).unwrap(), fs::read(&crashed_wal).unwrap());
    let in_the_file_alone: i64 = rusqlite::Connection::open_with_flags(
        format!("file:{}?immutable=1", crashed.display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap()
    .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
    .unwrap();
    assert_eq!(in_the_file_alone, 1, "the premise: bob is only in the -wal");
    let out = check(&variant("crashed.toml", "gitgate.db", "crashed.db"));
    assert!(
        out.ok().contains("; 2 users, 1 token not revoked"),
        "the -wal's commits were read: {out}"
    );
    assert!(
        !sb.root().join("crashed.db-shm").exists(),
        "check created the -shm"
    );
    assert_eq!(fs::read(&crashed).unwrap(), file_before);
    assert_eq!(fs::read(&crashed_wal).unwrap(), wal_before);
    // The same through a symbolic link: SQLite's `-wal` is beside the file the link leads to.
    std::os::unix::fs::symlink("crashed.db", sb.root().join("linked.db")).unwrap();
    let out = check(&variant("linked.toml", "gitgate.db", "linked.db"));
    assert!(
        out.ok().contains("; 2 users, 1 token not revoked"),
        "the -wal beside the link's file was read: {out}"
    );
    for shm in ["crashed.db-shm", "linked.db-shm"] {
        assert!(!sb.root().join(shm).exists(), "check created {shm}");
    }
    // That copy is made in TMPDIR: a folder there that cannot be used is named, so that its
    // failure (no such folder, no space left) is not taken for the store's own.
    let mut cmd = Command::new(gitgate_bin());
    cmd.env_remove("GITGATE_CONFIG")
        .env("TMPDIR", sb.root().join("no-such-tmp"))
        .current_dir(sb.root())
        .arg("--config")
        .arg(variant("crashed.toml", "gitgate.db", "crashed.db"))
        .arg("check");
    let out = run(cmd, None);
    let said = out.fails_with("it has a -wal but no -shm");
    assert!(
        said.contains(&format!(
            "in {} (TMPDIR)",
            sb.root().join("no-such-tmp").display()
        )),
        "{said}"
    );
    assert!(!sb.root().join("crashed.db-shm").exists(), "{said}");

    // A damaged store fails the check, with what to do about it: here the audit log's first
    // page overwritten, which nothing else that check or a token lookup reads would notice.
    use std::io::{Seek, Write};
    let damaged = sb.root().join("damaged.db");
    fs::copy(sb.root().join("gitgate.db"), &damaged).unwrap();
    let page: u64 = rusqlite::Connection::open(&damaged)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'audit_events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut file = fs::OpenOptions::new().write(true).open(&damaged).unwrap();
    file.seek(std::io::SeekFrom::Start((page - 1) * 4096))
        .unwrap();
    file.write_all(&[0xa5; 4096]).unwrap();
    drop(file);
    let out = check(&variant("damaged.toml", "gitgate.db", "damaged.db"));
    assert!(
        !out.success()
            && out.stderr.contains("damaged")
            && out.stderr.contains("Backing up and restoring the store"),
        "{out}"
    );
    // It leaves the marker that every gitgate on the store heeds (nothing had it open or
    // changed it meanwhile), and the next check is refused by it.
    assert!(out.stderr.contains("damaged.db-damaged now tells"), "{out}");
    assert!(sb.root().join("damaged.db-damaged").exists());
    let out = check(&variant("damaged.toml", "gitgate.db", "damaged.db"));
    assert!(
        !out.success()
            && out
                .stderr
                .contains("damaged.db-damaged says the store was found damaged"),
        "{out}"
    );

    // No store yet: serve creates it, and check does not.
    let elsewhere = variant("fresh.toml", "gitgate.db", "fresh.db");
    assert!(check(&elsewhere).ok().contains(
        "warning: store {}: not there yet; serve creates it, empty: it refuses every git request"
            .replace("{}", &sb.root().join("fresh.db").display().to_string())
            .as_str()
    ));
    assert!(!sb.root().join("fresh.db").exists());
    // In a folder that is not there, serve could not create it: an error, as at a start.
    let elsewhere = variant("fresh.toml", "gitgate.db", "no-such-folder/fresh.db");
    let out = check(&elsewhere);
    assert!(
        !out.success() && out.stderr.contains("does not exist"),
        "{out}"
    );

    // An upstream that does not answer is a warning, as at a start.
    let closed = common::closed_port();
    let port = closed.port;
    let cgi_line = format!(
        "cgi = \"{}\"\nproject_root = \"repos\"\n",
        sb.cgi_script().display()
    );
    let http = variant(
        "http.toml",
        &cgi_line,
        &format!("url = \"http://127.0.0.1:{port}/git\"\n"),
    );
    warns_once(
        &http,
        &format!("warning: upstream http://127.0.0.1:{port}/git is not ready"),
    );
    // One that accepts and never speaks: said after a bounded wait, not the five minutes of
    // the idle timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let accepted: Vec<_> = silent.incoming().take(3).collect();
        std::thread::sleep(Duration::from_secs(15));
        drop(accepted);
    });
    let mute = variant(
        "mute.toml",
        &cgi_line,
        &format!("url = \"http://127.0.0.1:{silent_port}/git\"\n"),
    );
    let began = Instant::now();
    warns_once(
        &mute,
        "gave no HTTP answer to a plain HEAD of its base path: no answer within 10 s",
    );
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "{:?}",
        began.elapsed()
    );
    drop(held);

    // A listen address in use by another program (here this test) fails as serve's start
    // would, naming it; one a gitgate holds (the running server, usually) is a warning; one
    // this machine does not have fails as serve's start would.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let busy = variant(
        "busy.toml",
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{taken_port}\""),
    );
    let out = check(&busy);
    assert!(
        !out.success()
            && out.stderr.contains(&format!(
                "cannot listen on 127.0.0.1:{taken_port} ([server] listen in"
            ))
            && out
                .stderr
                .contains(&format!("(pid {}), not a gitgate", std::process::id())),
        "{out}"
    );
    // The start itself names the holder too: its last line is all a failed start leaves in
    // the journal, and "Address already in use" alone does not say who.
    let mut cmd = common::gitgate_command(&busy);
    cmd.current_dir(sb.root()).arg("serve");
    let out = run(cmd, None);
    assert!(
        !out.success()
            && out.stderr.contains(&format!(
                "cannot listen on 127.0.0.1:{taken_port} ([server] listen in"
            ))
            && out.stderr.contains(&format!(
                ": in use by {} (pid {}), not a gitgate",
                std::fs::read_to_string("/proc/self/comm").unwrap().trim(),
                std::process::id()
            )),
        "{out}"
    );
    drop(taken);
    // Held by a gitgate serving this very configuration (its live server): a warning naming
    // it; by a gitgate serving another one: serve cannot start, an error naming that one.
    // It listens on a port of its own choosing (0), which its configuration then names: a
    // port found free and named before the start could be taken meanwhile by another test.
    let live = sb.root().join("live.toml");
    fs::write(&live, sb.config_text()).unwrap();
    let mut cmd = common::gitgate_command(&live);
    cmd.current_dir(sb.root()).arg("serve");
    let mut running = common::Server::start(cmd, sb.root().join("live.log"), "/");
    let port = running.port;
    variant(
        "live.toml",
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let checked = check(&live);
    let text = format!("{}{}", checked.stdout, checked.stderr);
    assert!(
        checked.success()
            && text.contains(&format!(
                "warning: listen http://127.0.0.1:{port}: in use now by gitgate (pid {})",
                running.pid()
            )),
        "{checked}"
    );
    let other = variant(
        "other.toml",
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let out = check(&other);
    assert!(
        !out.success()
            && out.stderr.contains(&format!(
                "in use by another gitgate (pid {}, serving {}",
                running.pid(),
                fs::canonicalize(&live).unwrap().display()
            )),
        "{out}"
    );
    running.stop_within(Duration::from_secs(30));
    // 192.0.2.0/24 is reserved for documentation: no machine has it.
    let absent = variant(
        "absent.toml",
        "listen = \"127.0.0.1:0\"",
        "listen = \"192.0.2.1:8080\"",
    );
    let out = check(&absent);
    assert!(
        !out.success()
            && out
                .stderr
                .contains("cannot listen on 192.0.2.1:8080 ([server] listen in"),
        "{out}"
    );

    // Where serve refuses to start, check fails with its message: a certificate that is not
    // there, or a store that is another program's database (left as it was).
    let tls = variant(
        "tls.toml",
        "[store]",
        "[server.tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n\n[store]",
    );
    let out = check(&tls);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("missing.pem"), "{out}");
    // A certificate clients would refuse for its dates, and a good one with its expiry said.
    let tls_with = |name: &str, cert: &str, key: &str| {
        variant(
            name,
            "[store]",
            &format!(
                "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[store]",
                common::fixture(cert).display(),
                common::fixture(key).display()
            ),
        )
    };
    let out = check(&tls_with(
        "expired.toml",
        "tls/expired.pem",
        "tls/expired.key",
    ));
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("the certificate expired on 2020-01-31T00:00:00Z; clients refuse it"),
        "{out}"
    );
    let out = check(&tls_with(
        "valid.toml",
        "tls/server-a.pem",
        "tls/server-a.key",
    ));
    let said = out.ok();
    assert!(
        said.contains(": ok, valid until 2126-11-04T00:14:00Z"),
        "{out}"
    );
    // Issued by a CA, without its intermediates: right for an internal CA, which check cannot
    // tell from a public one, so a note.
    assert!(
        said.contains(
            "server-a.pem holds the server's certificate alone, without the intermediate"
        ),
        "{out}"
    );
    // An intermediate out of its dates: served (a client trusting a CA above it never looks
    // at it), with a warning; the chain's dates are the served certificate's.
    let chain = sb.root().join("chain.pem");
    let write_chain = |files: &[&str]| {
        let pems: Vec<Vec<u8>> = files
            .iter()
            .map(|f| fs::read(common::fixture(f)).unwrap())
            .collect();
        fs::write(&chain, pems.concat()).unwrap();
    };
    write_chain(&["tls/server-a.pem", "tls/expired.pem"]);
    let out = check(&variant(
        "chain.toml",
        "[store]",
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[store]",
            chain.display(),
            common::fixture("tls/server-a.key").display()
        ),
    ));
    let said = out.ok();
    assert!(
        said.contains(": ok, valid until 2126-11-04T00:14:00Z"),
        "{out}"
    );
    assert!(
        said.contains("warning: tls: [server.tls] cert = ")
            && said.contains("its certificate 2 of 2 (an intermediate, after the server's own): expired on 2020-01-31T00:00:00Z"),
        "{out}"
    );
    assert!(
        !said.contains("holds the server's certificate alone"),
        "{out}"
    );
    // An intermediate that is valid but ends before the served certificate: its date is the
    // one a renewal must beat, so the line names it (the test CA ends a second sooner).
    write_chain(&["tls/server-a.pem", "tls/ca.pem"]);
    let out = check(&sb.root().join("chain.toml"));
    let said = out.ok();
    assert!(
        said.contains(
            ": ok, valid until 2126-11-04T00:14:00Z; the TLS certificate file's certificate 2 \
             (an intermediate) only until 2126-11-04T00:13:59Z"
        ),
        "{said}"
    );
    // A device or a FIFO where a file goes: a clear refusal, not a hang that fills memory.
    let zero_key = variant(
        "zero-key.toml",
        "[store]",
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"/dev/zero\"\n\n[store]",
            common::fixture("tls/server-a.pem").display()
        ),
    );
    let started = Instant::now();
    let out = check(&zero_key);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("key = \"/dev/zero\": it is not a regular file but a device"),
        "{out}"
    );
    let out = check(std::path::Path::new("/dev/zero"));
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("not a regular file"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let foreign = sb.root().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE notes (x)")
        .unwrap();
    let foreign_bytes = fs::read(&foreign).unwrap();
    let other = sb.root().join("other.toml");
    fs::write(&other, sb.config_text().replace("gitgate.db", "foreign.db")).unwrap();
    let out = check(&other);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("not a gitgate store"), "{out}");
    assert_eq!(fs::read(&foreign).unwrap(), foreign_bytes);
}

/// Where `serve` could not open the store, `check` must not say ok; both name the config file
/// and `[store] path`.
/// A store whose every token is expired or of a disabled user refuses every git request, as an
/// empty one does: check says so, and no more once one can be used.
/// The build ID `gitgate --version` prints.
fn build_id_of(binary: &std::path::Path) -> String {
    let out = run(
        {
            let mut cmd = Command::new(binary);
            cmd.arg("--version");
            cmd
        },
        None,
    );
    let text = out.ok();
    text.split("(build ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no build in --version: {text}"))
        .to_owned()
}

/// An upgrade as operators make one: the server runs a binary of another name (versioned
/// copies side by side), or a build an upgrade has since replaced. `check` of the same
/// configuration with the new binary takes either for the live gitgate — a warning, not "not a
/// gitgate" — and names the running build when it is not its own, so the operator knows a
/// restart is due. A copy of this or another build under any name is a gitgate too.
#[test]
fn check_knows_a_gitgate_of_another_name_or_build_and_names_its_build() {
    let sb = Sandbox::new();
    let ours = build_id_of(std::path::Path::new(gitgate_bin()));
    assert_eq!(ours.len(), 40, "{ours}");
    let binary = fs::read(gitgate_bin()).unwrap();
    // Another build: the same program with the ID in its note changed, as a rebuild changes it.
    let theirs: String = ours.chars().rev().collect();
    let raw = |hex: &str| -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let (from, to) = (raw(&ours), raw(&theirs));
    let at = binary
        .windows(from.len())
        .position(|w| w == from.as_slice())
        .expect("the build ID is in the binary");
    let mut rebuilt = binary.clone();
    rebuilt[at..at + to.len()].copy_from_slice(&to);
    let copies = [
        ("gitgate-0.9.9", rebuilt.clone(), Some(theirs.as_str())),
        // Another build under another name: known by the code it runs.
        ("gy", rebuilt, Some(theirs.as_str())),
        ("gg", binary, None),
    ];
    for (name, bytes, other_build) in copies {
        let copy = sb.root().join(name);
        let staged = sb.root().join(format!("{name}.bytes"));
        fs::write(&staged, bytes).unwrap();
        common::install_executable(&staged, &copy);
        if let Some(other) = other_build {
            assert_eq!(build_id_of(&copy), other);
        }
        // It listens on a port of its own choosing (0), which its configuration then names: a
        // port found free and named before the start could be taken meanwhile by another test.
        let config = sb.root().join("live.toml");
        fs::write(&config, sb.config_text()).unwrap();
        let mut serve = Command::new(&copy);
        serve
            .env_remove("GITGATE_CONFIG")
            .env_remove("GITGATE_LOG")
            .current_dir(sb.root())
            .args(["--config", "live.toml", "serve"]);
        let mut running = common::Server::start(serve, sb.root().join(format!("{name}.log")), "/");
        let port = running.port;
        fs::write(
            &config,
            sb.config_text().replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(gitgate_bin());
        cmd.env_remove("GITGATE_CONFIG")
            .current_dir(sb.root())
            .args(["--config", "live.toml", "check"]);
        let checked = run(cmd, None);
        let text = format!("{}{}", checked.stdout, checked.stderr);
        let named = match other_build {
            Some(other) => format!(
                "in use now by {name} (pid {}, build {other}; this program is build {ours}: a \
                 restart runs it)",
                running.pid()
            ),
            None => format!(
                "in use now by {name} (pid {}) (by the running",
                running.pid()
            ),
        };
        running.stop_within(Duration::from_secs(30));
        assert!(
            checked.success() && text.contains(&named),
            "{name}: {checked}"
        );
    }
}

#[test]
fn check_warns_of_a_store_none_of_whose_tokens_can_be_used() {
    let sb = user_sandbox();
    sb.personal_token("alice", PASSWORD, "laptop", &["REPO_READ"]);
    sb.cli(&["user", "disable", "alice"]).ok();
    let run = sb.cli(&["check"]);
    let text = run.ok();
    assert!(
        text.contains("1 token not revoked, but every one expired or of a disabled user"),
        "{text}"
    );
    sb.cli(&["user", "enable", "alice"]).ok();
    let run = sb.cli(&["check"]);
    assert!(!run.ok().contains("warning"), "{run}");
}

/// A stored password hash edited beyond what gitgate checks refuses every login of its user,
/// which the server says only at the next one: check says so beforehand, naming the user, why,
/// and the command that mends it.
#[test]
fn check_warns_of_a_stored_password_hash_beyond_what_gitgate_checks() {
    let sb = user_sandbox();
    sb.personal_token("alice", PASSWORD, "laptop", &["REPO_READ"]);
    let run = sb.cli(&["check"]);
    assert!(!run.ok().contains("warning"), "{run}");
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    let changed = conn
        .execute(
            "UPDATE users SET password_hash = replace(password_hash, 't=2,', 't=4294967295,') \
             WHERE slug = 'alice'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let run = sb.cli(&["check"]);
    let text = run.ok();
    assert!(
        text.contains("warning: store")
            && text.contains("user 'alice': the stored password hash asks for more than")
            && text.contains("t=4294967295")
            && text.contains("gitgate user passwd alice"),
        "{text}"
    );
    // One more pass than a u32 holds: no hash argon2 can check, said too.
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    conn.execute(
        "UPDATE users SET password_hash = replace(password_hash, 't=4294967295,', \
         't=4294967296,') WHERE slug = 'alice'",
        [],
    )
    .unwrap();
    drop(conn);
    let run = sb.cli(&["check"]);
    let text = run.ok();
    assert!(
        text.contains("user 'alice': the stored password hash names argon2 but cannot be checked")
            && text.contains("t=4294967296")
            && text.contains("gitgate user passwd alice"),
        "{text}"
    );
}

/// A user named as the audit trail's actor where no user acted (`gitgate`, `anonymous`),
/// made before gitgate refused those names, is still served, but their changes are mixed with
/// gitgate's own in the audit trail: check names them and says what to do; a name that only
/// begins so is anyone's.
#[test]
fn check_warns_of_a_user_named_as_the_audit_trails_actor_of_no_user() {
    let sb = user_sandbox();
    sb.personal_token("alice", PASSWORD, "laptop", &["REPO_READ"]);
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    let changed = conn
        .execute(
            "UPDATE users SET slug = 'gitgate-bot' WHERE slug = 'alice'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let run = sb.cli(&["check"]);
    assert!(!run.ok().contains("warning"), "{run}");
    for name in ["gitgate", "anonymous"] {
        let conn = rusqlite::Connection::open(sb.db()).unwrap();
        conn.execute("UPDATE users SET slug = ?1", [name]).unwrap();
        drop(conn);
        let run = sb.cli(&["check"]);
        let text = run.ok();
        assert!(
            text.contains("warning: store")
                && text.contains(&format!("user '{name}': the audit trail writes this name"))
                && text.contains(&format!("gitgate user disable {name}"))
                && text.contains("(1 warning)"),
            "{text}"
        );
    }
}

/// A stored password hash edited into what is not text (a BLOB) is no question of the
/// hash's limits: check still passes, as serve still starts. Before, check read every hash as
/// text and failed whole ("Invalid column type Blob"), exit 1, where serve would start.
#[test]
fn check_passes_a_stored_password_hash_that_is_not_text() {
    let sb = user_sandbox();
    sb.personal_token("alice", PASSWORD, "laptop", &["REPO_READ"]);
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    let changed = conn
        .execute(
            "UPDATE users SET password_hash = CAST(password_hash AS BLOB) WHERE slug = 'alice'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let run = sb.cli(&["check"]);
    let text = run.ok();
    assert!(
        text.contains("1 user, 1 token not revoked") && !text.contains("user 'alice'"),
        "{text}"
    );
}

/// A repository owned by another user than gitgate's gets a `500` for every request (git's
/// "detected dubious ownership") while `/readyz` says ready: check says so beforehand, and not
/// once git's `safe.directory` names it.
#[test]
fn check_warns_of_repositories_git_would_refuse_for_their_owner() {
    let sb = user_sandbox();
    sb.create_repo("team/app");
    sb.create_repo("team/lib");
    let home = sb.home();
    std::fs::create_dir_all(&home).unwrap();
    let check = || {
        let mut cmd = sb.gitgate_command();
        cmd.arg("check").env("HOME", &home);
        run(cmd, None)
    };
    let before = check();
    assert!(!before.ok().contains("dubious"), "{before}");
    if !common::give_to_nobody(&sb.bare("team/app")) {
        return;
    }
    let refused = check();
    let text = refused.ok();
    assert!(
        text.contains(&format!(
            "warning: {} belongs to uid 65534",
            sb.bare("team/app").display()
        )) && text.contains("detected dubious ownership")
            && text.contains("safe.directory"),
        "{text}"
    );
    assert!(!text.contains("team/lib"), "{text}");
    std::fs::write(
        home.join(".gitconfig"),
        format!("[safe]\n\tdirectory = {}\n", sb.bare("team/app").display()),
    )
    .unwrap();
    let named = check();
    assert!(!named.ok().contains("dubious"), "{named}");
}

/// A service account often has no home folder (`useradd -r`, `adduser --system`:
/// `/nonexistent`), where `git config --global` fails: check's advice for a repository of
/// another owner is then the system's config, which git reads for that user.
#[test]
fn check_advises_the_system_git_config_for_a_user_without_a_home_folder() {
    let sb = user_sandbox();
    sb.create_repo("team/app");
    if !common::give_to_nobody(&sb.bare("team/app")) {
        return;
    }
    let system = sb.root().join("system-gitconfig");
    std::fs::write(&system, "").unwrap();
    let check = || {
        let mut cmd = sb.gitgate_command();
        cmd.arg("check")
            .env("HOME", sb.root().join("nonexistent"))
            .env("GIT_CONFIG_SYSTEM", &system);
        run(cmd, None)
    };
    let refused = check();
    let text = refused.ok();
    assert!(
        text.contains("detected dubious ownership")
            && text.contains("nonexistent does not exist")
            && text.contains("git config --system --add safe.directory PATH")
            && !text.contains("--global --add"),
        "{text}"
    );
    std::fs::write(
        &system,
        format!("[safe]\n\tdirectory = {}\n", sb.bare("team/app").display()),
    )
    .unwrap();
    let named = check();
    assert!(!named.ok().contains("dubious"), "{named}");
}

/// A push cut off before receive-pack could clean up (gitgate SIGKILLed, a crash, fcgiwrap)
/// leaves its quarantined objects on disk for two weeks: check and the start name them once
/// they are an hour old, and not while a push could still be writing them.
#[test]
fn objects_of_cut_off_pushes_left_on_disk_are_warned_of() {
    let sb = user_sandbox();
    sb.personal_token("alice", PASSWORD, "laptop", &["REPO_READ"]);
    sb.create_repo("team/app");
    let quarantine = sb
        .bare("team/app")
        .join("objects/tmp_objdir-incoming-Xy12Ab");
    let pack = quarantine.join("pack/tmp_pack_Qz9");
    // What a cut-off push leaves: a quarantine with a part of a pack.
    let left = || {
        std::fs::create_dir_all(quarantine.join("pack")).unwrap();
        std::fs::write(&pack, vec![7u8; 2 * 1024 * 1024]).unwrap();
    };
    let an_hour_old = || {
        let status = std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .args([&quarantine, &quarantine.join("pack"), &pack])
            .status()
            .unwrap();
        assert!(status.success());
    };
    left();
    let fresh = sb.cli(&["check"]).ok().to_string();
    assert!(!fresh.contains("cut off"), "{fresh}");
    an_hour_old();
    let text = sb.cli(&["check"]).ok().to_string();
    assert!(
        text.contains(
            "warning: 1 push cut off before being applied left 2.0 MiB of objects in quarantine \
             folders under "
        ) && text.contains(&format!("rm -r -- '{}'", quarantine.display())),
        "{text}"
    );
    // The command given removes it, and only it.
    let rm = text
        .lines()
        .find_map(|l| l.split_once("is running: ").map(|(_, c)| c.to_string()))
        .unwrap();
    let removed = std::process::Command::new("sh")
        .args(["-c", &rm])
        .current_dir("/")
        .status()
        .unwrap();
    assert!(removed.success(), "{rm}");
    assert!(!quarantine.exists() && sb.bare("team/app").join("objects").exists());
    let text = sb.cli(&["check"]).ok().to_string();
    assert!(!text.contains("cut off"), "{text}");
    // Made again for the start's warning.
    left();
    an_hour_old();
    let server = sb.serve();
    // Said off the event loops once the server listens.
    let said = std::time::Instant::now();
    while !server.log_text().contains("objects of cut-off pushes")
        && said.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(server);
    let log = std::fs::read_to_string(sb.server_log()).unwrap();
    assert!(
        log.contains("objects of cut-off pushes left on disk")
            && log.contains("tmp_objdir-incoming-Xy12Ab"),
        "{log}"
    );
}

/// A store restored without `umask 077` comes back 0644, its password hashes readable by every
/// user of the machine: check and serve's start say so.
#[test]
fn a_store_readable_by_others_is_warned_of() {
    use std::os::unix::fs::PermissionsExt;
    let sb = user_sandbox();
    sb.personal_token("alice", PASSWORD, "laptop", &["REPO_READ"]);
    assert!(!sb.cli(&["check"]).ok().contains("warning"));
    std::fs::set_permissions(sb.db(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = sb.cli(&["check"]).ok().to_string();
    assert!(
        text.contains("is readable by others than its owner (mode 0644)")
            && text.contains("chmod 600"),
        "{text}"
    );
    let server = sb.serve();
    let log = std::fs::read_to_string(sb.server_log()).unwrap();
    assert!(
        log.contains("the token store is readable by others"),
        "{log}"
    );
    drop(server);
}

#[test]
fn check_and_serve_agree_on_a_store_path_that_cannot_be_opened() {
    let sb = Sandbox::new();
    for (path, said) in [
        ("newdir/", "ends with /"),
        ("~/gg.db", "not as a home folder"),
    ] {
        let text = sb.config_text().replace("gitgate.db", path);
        assert_ne!(text, sb.config_text());
        let err = serve_refuses(&sb, &text);
        assert!(
            err.contains("bad.toml: [store] path:") && err.contains(said),
            "{err}"
        );
        let mut cmd = Command::new(gitgate_bin());
        cmd.env_remove("GITGATE_CONFIG")
            .current_dir(sb.root())
            .arg("--config")
            .arg(sb.root().join("bad.toml"))
            .arg("check");
        let out = run(cmd, None);
        let err = out.fails_with("[store] path:");
        assert!(err.contains(said), "{err}");
    }
    // The commands that find no store there say the same of a `~`, which nothing expands.
    for command in [&["user", "list"][..], &["user", "disable", "alice"]] {
        let mut cmd = Command::new(gitgate_bin());
        cmd.env_remove("GITGATE_CONFIG")
            .current_dir(sb.root())
            .arg("--config")
            .arg(sb.root().join("bad.toml"))
            .args(command);
        let out = run(cmd, None);
        let err = out.fails_with("no token store at");
        assert!(err.contains("not as a home folder"), "{command:?}: {err}");
    }
}

#[test]
fn serve_refuses_unknown_key() {
    let sb = Sandbox::new();
    let bad = sb
        .config_text()
        .replace("[server]\n", "[server]\nlisten_port = 8080\n");
    let err = serve_refuses(&sb, &bad);
    assert!(err.contains("listen_port"), "{err}");
    // Said as a line of the server's log, stamped and levelled, so that a filter on the log's
    // format keeps it: `2026-12-05T07:00:00.000000Z ERROR gitgate::server: ...bad.toml...`.
    let line = err.lines().find(|l| l.contains("listen_port")).unwrap();
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(
        stamp.len() > 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{line}"
    );
    assert!(
        rest.trim_start().starts_with("ERROR gitgate::server: ") && rest.contains("bad.toml"),
        "{line}"
    );
    let bad = format!("{}\n[extras]\ncolour = \"blue\"\n", sb.config_text());
    let err = serve_refuses(&sb, &bad);
    assert!(err.contains("extras"), "{err}");
}

#[test]
fn serve_refuses_both_or_neither_backend() {
    let sb = Sandbox::new();
    let names_backend =
        |e: &str| e.contains("upstream") || (e.contains("cgi") && e.contains("url"));
    let both = sb.config_text().replace(
        "[upstream]\n",
        "[upstream]\nurl = \"http://127.0.0.1:9/\"\n",
    );
    let err = serve_refuses(&sb, &both);
    assert!(names_backend(&err), "{err}");
    let cgi_line = format!("cgi = \"{}\"\n", sb.cgi_script().display());
    let neither = sb.config_text().replace(&cgi_line, "");
    assert_ne!(neither, sb.config_text());
    let err = serve_refuses(&sb, &neither);
    assert!(names_backend(&err), "{err}");
}

#[test]
fn serve_refuses_missing_or_unreadable_project_root() {
    let sb = Sandbox::new();
    let missing = sb.config_text().replace("project_root = \"repos\"\n", "");
    assert_ne!(missing, sb.config_text());
    let err = serve_refuses(&sb, &missing);
    assert!(err.contains("project_root"), "{err}");
    let absent = sb
        .config_text()
        .replace("project_root = \"repos\"", "project_root = \"no-such-dir\"");
    let err = serve_refuses(&sb, &absent);
    assert!(err.contains("project_root"), "{err}");
}

#[test]
fn serve_refuses_missing_or_broken_config_file() {
    let sb = Sandbox::new();
    let err = serve_refuses(&sb, "[server\nlisten = ");
    assert!(!err.trim().is_empty());
    let mut cmd = Command::new(gitgate_bin());
    cmd.env_remove("GITGATE_CONFIG")
        .current_dir(sb.root())
        .args(["--config", "does-not-exist.toml", "serve"]);
    let out = run(cmd, None);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("does-not-exist.toml"), "{out}");
}

/// A start that fails on its settings (here: the port is taken) leaves no store behind: the
/// store is opened, created or migrated only once everything else is in place.
#[test]
fn a_failed_start_creates_no_store() {
    let sb = Sandbox::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = sb
        .config_text()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    fs::write(sb.config(), config).unwrap();
    let mut cmd = sb.gitgate_command();
    cmd.arg("serve");
    let out = run(cmd, None);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} ([server] listen in "
        )),
        "{out}"
    );
    assert!(!sb.db().exists(), "a failed start created the store");
    drop(taken);
}

/// `[store] path` pointing at another program's SQLite database: `serve` and the CLI refuse it
/// and leave it exactly as it was — no gitgate tables, no switch to WAL.
#[test]
fn another_programs_database_is_refused_and_left_as_it_was() {
    let sb = Sandbox::new();
    {
        let other = rusqlite::Connection::open(sb.db()).unwrap();
        other
            .execute_batch("CREATE TABLE metrics(x); INSERT INTO metrics VALUES (1);")
            .unwrap();
    }
    let before = fs::read(sb.db()).unwrap();
    let mut cmd = sb.gitgate_command();
    cmd.arg("serve");
    let out = run(cmd, None);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("not a gitgate store"), "{out}");
    assert!(out.stderr.contains("[store] path"), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out}");
    sb.cli(&["user", "list"]).fails_with("not a gitgate store");
    assert_eq!(fs::read(sb.db()).unwrap(), before, "the file was changed");
    let other = rusqlite::Connection::open(sb.db()).unwrap();
    let mode: String = other
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    // Another program that numbers its schema in user_version too: refused all the same
    // (gitgate used to switch it to WAL, add a table and move its number on), and not told to
    // upgrade gitgate for a number beyond gitgate's.
    for version in [2, 99] {
        other
            .execute_batch(&format!("PRAGMA user_version = {version}"))
            .unwrap();
        let before = fs::read(sb.db()).unwrap();
        sb.cli(&["user", "list"]).fails_with("not a gitgate store");
        sb.cli(&["check"]).fails_with("not a gitgate store");
        let mut cmd = sb.gitgate_command();
        cmd.arg("serve");
        let out = run(cmd, None);
        assert!(out.stderr.contains("not a gitgate store"), "{out}");
        assert_eq!(fs::read(sb.db()).unwrap(), before, "{version}: changed");
    }
}

/// A new store holds password hashes: it is made for its owner only, whatever the umask, and
/// SQLite gives its `-wal` and `-shm` the same mode once a server has it open.
#[test]
fn a_new_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // `user add` under the usual umask, on a plain path and through a symbolic link to a file
    // not there yet.
    let user_add = |sb: &Sandbox| {
        let mut cmd = Command::new("sh");
        cmd.current_dir(sb.root())
            .env_remove("GITGATE_CONFIG")
            .args(["-c", "umask 022; exec \"$@\"", "sh"])
            .arg(gitgate_bin())
            .arg("--config")
            .arg(sb.config())
            .args(["user", "add", "alice", "--password-stdin"]);
        run(cmd, Some("pw-1234567890\n")).ok();
    };
    let sb = Sandbox::new();
    user_add(&sb);
    assert_eq!(mode(&sb.db()), 0o600, "{:o}", mode(&sb.db()));
    let _server = sb.serve();
    for sidecar in ["gitgate.db-wal", "gitgate.db-shm"] {
        let p = sb.root().join(sidecar);
        assert_eq!(mode(&p), 0o600, "{sidecar}: {:o}", mode(&p));
    }
    let linked = Sandbox::new();
    let real = linked.root().join("real");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(real.join("store.db"), linked.db()).unwrap();
    user_add(&linked);
    let target = real.join("store.db");
    assert_eq!(mode(&target), 0o600, "through a link: {:o}", mode(&target));
}

/// A store reached through a symbolic link keeps its `-wal` and `-shm` beside the real file
/// (where SQLite puts them): a start while another process holds its write lock names that
/// process, as it does for a store at its own path — the `-shm` looked at was the one beside
/// the link, which is not there, so the holder was never found.
#[test]
fn a_start_on_a_linked_store_names_the_process_holding_its_write_lock() {
    let sb = Sandbox::new();
    let real = sb.root().join("real");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(real.join("store.db"), sb.db()).unwrap();
    sb.cli_stdin(
        &["user", "add", "alice", "--password-stdin"],
        "pw-1234567890\n",
    )
    .ok();
    // This process holds the write lock, as a sqlite3 shell inside `BEGIN IMMEDIATE` would.
    let conn = rusqlite::Connection::open(real.join("store.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let server = sb.serve();
    let log = server.log_text();
    let warned = log
        .lines()
        .find(|l| l.contains("the token store is locked by another process: serving"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        warned.contains(&format!("held by process {}", std::process::id())),
        "{warned}"
    );
    conn.execute_batch("ROLLBACK").unwrap();
}

/// A gitgate store with a user, in rollback mode, its `user_version` then set to `version` by
/// hand; and the file's bytes.
fn a_store_set_to_version(version: i64) -> (Sandbox, Vec<u8>) {
    let sb = Sandbox::new();
    sb.cli_stdin(
        &["user", "add", "alice", "--password-stdin"],
        "pw-1234567890\n",
    )
    .ok();
    {
        let db = rusqlite::Connection::open(sb.db()).unwrap();
        db.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .unwrap();
        db.execute_batch(&format!("PRAGMA user_version = {version}"))
            .unwrap();
    }
    let before = fs::read(sb.db()).unwrap();
    (sb, before)
}

/// A gitgate store whose version number was set below zero by hand: refused with what happened
/// by `check`, the CLI and `serve` (it used to panic), and left as it was.
#[test]
fn a_store_whose_version_was_set_below_zero_is_refused_and_left_as_it_was() {
    let (sb, before) = a_store_set_to_version(-1);
    sb.cli(&["check"]).fails_with("changed by hand");
    sb.cli(&["user", "list"]).fails_with("changed by hand");
    let mut cmd = sb.gitgate_command();
    cmd.arg("serve");
    let out = run(cmd, None);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("changed by hand"), "{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert_eq!(fs::read(sb.db()).unwrap(), before, "the file was changed");
}

/// A store a newer gitgate made: refused by `serve` and the CLI, and left exactly as it was —
/// its journal mode included, which used to be switched to WAL before the version was read.
#[test]
fn a_store_from_a_newer_gitgate_is_refused_and_left_as_it_was() {
    let (sb, before) = a_store_set_to_version(99);
    let mut cmd = sb.gitgate_command();
    cmd.arg("serve");
    let out = run(cmd, None);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("newer than this gitgate knows"),
        "{out}"
    );
    sb.cli(&["user", "list"]).fails_with("upgrade gitgate");
    assert_eq!(fs::read(sb.db()).unwrap(), before, "the file was changed");
}

/// A column dropped by hand (`ALTER TABLE ... DROP COLUMN`): `check`, the CLI and `serve` each
/// refuse the store at its opening, naming the column. Before, `check` passed a store without
/// `users.locked_until` and `serve` started on it to answer every git request 503, and a store
/// without `tokens.revoked_at` failed `check` but not `serve`.
#[test]
fn a_store_that_lost_a_column_is_refused_by_check_the_cli_and_serve_alike() {
    for (table, column) in [("users", "locked_until"), ("tokens", "revoked_at")] {
        let sb = Sandbox::new();
        sb.add_user("alice", "alice-password-1");
        rusqlite::Connection::open(sb.db())
            .unwrap()
            .execute_batch(&format!("ALTER TABLE {table} DROP COLUMN {column}"))
            .unwrap();
        let named = format!("'{table}'.'{column}'");
        sb.cli(&["check"]).fails_with(&named);
        sb.cli(&["user", "list"]).fails_with(&named);
        let mut cmd = sb.gitgate_command();
        cmd.arg("serve");
        let out = run(cmd, None);
        assert!(!out.success(), "{out}");
        assert!(out.stderr.contains(&named), "{out}");
        assert!(out.stderr.contains("restore"), "{out}");
    }
}

/// A store copied with `sqlite3 .dump` (no user_version): told how to give it its version, and
/// left as it was.
#[test]
fn a_dumped_store_is_told_how_to_get_its_version_back() {
    let (sb, before) = a_store_set_to_version(0);
    let out = sb.cli(&["check"]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stdout.contains("sqlite3 .dump") || out.stderr.contains("sqlite3 .dump"),
        "{out}"
    );
    sb.cli(&["user", "list"])
        .fails_with("PRAGMA user_version = ");
    assert_eq!(fs::read(sb.db()).unwrap(), before, "the file was changed");
}

/// A sandbox with an admin and the whole expiry policy set (30 days), then `edit` run on its
/// store by hand (SQL).
fn sandbox_with_policy_edited(edit: &str) -> Sandbox {
    let sb = Sandbox::new();
    sb.add_admin("root", "root-password-1");
    sb.cli(&common::REQUIRE_EXPIRY_WITHIN_30_DAYS).ok();
    rusqlite::Connection::open(sb.db())
        .unwrap()
        .execute(edit, [])
        .unwrap();
    sb
}

/// A project token `p1` with read permission, created as the admin (the policy is read first).
const CREATE_P1: [&str; 8] = [
    "token",
    "create",
    "--project",
    "team",
    "--name",
    "p1",
    "--permission",
    "PROJECT_READ",
];

/// An expiry policy changed by hand into a BLOB (not text at all): `check` warns of it by its
/// key and goes on with the rest, instead of failing the store's whole inspection with
/// SQLite's "Invalid column type Blob"; every command that reads the policy refuses with the
/// same words, nothing is created on it, and setting the policy again mends it.
#[test]
fn an_expiry_policy_edited_into_a_blob_is_told_by_its_key() {
    let sb = sandbox_with_policy_edited(
        "UPDATE settings SET value = X'3330' WHERE key = 'policy.max_expiry_days'",
    );
    let set_whole = || {
        sb.cli(&common::REQUIRE_EXPIRY_WITHIN_30_DAYS)
            .ok()
            .to_owned()
    };
    let said = "the setting policy.max_expiry_days in the store is a BLOB of 2 bytes";
    let checked = sb.cli(&["check"]);
    assert!(
        checked.stdout.contains("warning: store") && checked.stdout.contains(said),
        "{checked}"
    );
    // The inspection went on past the settings: the store's own lines are there.
    assert!(checked.stdout.contains("store "), "{checked}");
    assert!(
        !format!("{checked}").contains("Invalid column type"),
        "{checked}"
    );
    sb.cli(&["policy", "show"]).fails_with(said);
    sb.cli(&CREATE_P1).fails_with(said);
    let made: i64 = rusqlite::Connection::open(sb.db())
        .unwrap()
        .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(made, 0);
    set_whole();
    assert!(sb.cli(&["policy", "show"]).ok().contains("30"));
    let rechecked = sb.cli(&["check"]);
    assert!(!rechecked.stdout.contains(said), "{rechecked}");
}

/// An expiry policy changed by hand into a value gitgate does not write: `check` warns of it,
/// and no token is created on a guess of it (it was read as no policy at all).
#[test]
fn an_unreadable_expiry_policy_is_warned_of_and_creates_nothing() {
    let sb = sandbox_with_policy_edited(
        "UPDATE settings SET value = 'yes' WHERE key = 'policy.expiry_required'",
    );
    let set_whole = || {
        sb.cli(&common::REQUIRE_EXPIRY_WITHIN_30_DAYS)
            .ok()
            .to_owned()
    };
    let checked = sb.cli(&["check"]);
    assert!(
        checked.stdout.contains("warning: store")
            && checked.stdout.contains("policy.expiry_required is yes"),
        "{checked}"
    );
    sb.cli(&["policy", "show"])
        .fails_with("the token expiry policy in the store cannot be read");
    sb.cli(&CREATE_P1).fails_with("cannot be read");
    // Nothing was made (`token list` itself reads the policy first, so the store is asked).
    let made: i64 = rusqlite::Connection::open(sb.db())
        .unwrap()
        .query_row("SELECT count(*) FROM tokens WHERE name = 'p1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(made, 0);
    // Set again whole, it works, and the listing says no p1 either.
    set_whole();
    assert!(sb.cli(&["policy", "show"]).ok().contains("30"));
    assert!(!sb.cli(&["token", "list"]).ok().contains("p1"));
}

/// `policy set` is one of the commands that can start a new install (the expiry policy set
/// before the first user): on a path with no store yet, it makes one and sets the policy.
#[test]
fn policy_set_can_start_a_new_install() {
    let sb = Sandbox::new();
    assert!(!sb.db().exists());
    sb.cli(&["policy", "set", "--max-expiry-days", "30"]).ok();
    assert!(sb.db().exists());
    let shown = sb.cli(&["policy", "show"]).ok().to_owned();
    assert!(shown.contains("30"), "{shown}");
}

/// A first `policy set` of what is so already ("nothing changed") leaves no store behind: it
/// made one to read the policy from, and wrote nothing to it.
#[test]
fn a_first_policy_set_that_changes_nothing_leaves_no_store() {
    let sb = Sandbox::new();
    assert!(!sb.db().exists());
    for args in [
        &["policy", "set", "--expiry-required", "no"][..],
        &["policy", "set", "--no-max-expiry-days"],
    ] {
        let said = sb.cli(args);
        said.ok();
        assert!(said.stderr.contains("nothing changed"), "{said}");
        assert!(said.stderr.contains("was taken back"), "{said}");
        assert!(!sb.db().exists(), "{args:?} left a store: {said}");
    }
    // One that changes the policy keeps the store it made.
    sb.cli(&["policy", "set", "--expiry-required", "yes"]).ok();
    assert!(sb.db().exists());
    // And once the store is there, one that changes nothing leaves it alone.
    sb.cli(&["policy", "set", "--expiry-required", "yes"]).ok();
    assert!(sb.db().exists());
}

/// Only a command that can start a new install creates the store: any other on a mistyped
/// `[store] path` says so instead of answering "nothing" (or "no user") from a new empty file.
#[test]
fn reading_commands_do_not_create_a_store() {
    let sb = Sandbox::new();
    assert!(!sb.db().exists());
    for args in [
        &["user", "list"][..],
        &["grant", "list"],
        &["token", "list"],
        &["token", "show", "abcdefghijkl"],
        &["policy", "show"],
        &["ratelimit", "list"],
        &["audit"],
        // ... nor one that changes what must be there already.
        &["token", "revoke", "abcdefghijkl"],
        &["user", "disable", "alice"],
        &["user", "unlock", "alice"],
        &["grant", "remove", "alice", "team"],
        &["ratelimit", "clear", "alice"],
    ] {
        sb.cli(args).fails_with("no token store at");
        assert!(!sb.db().exists(), "{args:?} created the store");
    }
    // An empty file (a failed copy, a `touch` by a deploy tool) holds no store either: it is
    // refused as one, and left empty; `check` says what serve would make of it.
    fs::write(sb.db(), b"").unwrap();
    for args in [&["user", "list"][..], &["token", "list"], &["audit"]] {
        sb.cli(args)
            .fails_with("the token store is an empty file (0 bytes) at");
        assert_eq!(fs::metadata(sb.db()).unwrap().len(), 0, "{args:?}");
    }
    // Emptied under a server, which left its marker: the marker is what is said (its advice,
    // to restore, is the one that works; every command that creates a store refuses it).
    let marker = sb.root().join("gitgate.db-damaged");
    fs::write(
        &marker,
        "not a database; found by process 1 at 2026-12-05T00:00:00Z\n",
    )
    .unwrap();
    for args in [&["user", "list"][..], &["token", "list"], &["audit"]] {
        let said = sb.cli(args);
        said.fails_with("gitgate.db-damaged says the store was found damaged");
        assert!(!said.stderr.contains("an empty file"), "{said}");
    }
    fs::remove_file(&marker).unwrap();
    let checked = sb.cli(&["check"]);
    assert!(
        checked.ok().contains("an empty file (0 bytes")
            && checked
                .ok()
                .contains("serve makes a new, empty store in it"),
        "{checked}"
    );
    assert_eq!(fs::metadata(sb.db()).unwrap().len(), 0, "check wrote to it");
    fs::remove_file(sb.db()).unwrap();
    sb.cli_stdin(
        &["user", "add", "alice", "--password-stdin"],
        "pw-1234567890\n",
    )
    .ok();
    assert!(sb.db().exists());
    sb.cli(&["user", "list"]).ok();
}

/// A CGI program gitgate's user may not run is refused at start, naming the key — by the
/// kernel's check, not the mode bits: mode 0700 of another user has execute bits too.
#[test]
fn a_cgi_program_this_user_cannot_run_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let script = sb.cgi_script();
    let set_mode = |path: &std::path::Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap()
    };
    set_mode(&script, 0o644);
    let mut cmd = sb.gitgate_command();
    cmd.arg("serve");
    let out = run(cmd, None);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("[upstream] cgi"), "{out}");
    assert!(out.stderr.contains("cannot be run by this user"), "{out}");
    assert!(!sb.db().exists(), "a failed start created the store");

    // Run as `nobody`, the owner's 0700 is not enough. (Needs root to switch users; CI is.)
    if !rustix::process::geteuid().is_root() {
        common::skipping("not root: the other-user case is left out");
        return;
    }
    set_mode(sb.root(), 0o755);
    set_mode(&sb.config(), 0o644);
    set_mode(&script, 0o700);
    let mut cmd = sb.gitgate_command();
    cmd.arg("serve").uid(65534).gid(65534);
    let out = run(cmd, None);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("cannot be run by this user"), "{out}");
}

/// A TLS key this user may not read — certbot's are root's alone, and the service runs as
/// `git` — is refused by `check` and `serve` with whose permission is missing and what to
/// change, not a bare "Permission denied".
#[test]
fn a_tls_key_this_user_may_not_read_is_named_with_the_user_and_what_to_change() {
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        common::skipping("not root: the other-user case is left out");
        return;
    }
    let set_mode = |path: &std::path::Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    };
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("privkey.pem");
    fs::copy(common::fixture("tls/server-a.key"), &key).unwrap();
    set_mode(&key, 0o600);
    let sb = Sandbox::with(common::Setup {
        server_extra: format!(
            "\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            common::fixture("tls/server-a.pem").display(),
            key.display()
        ),
        ..Default::default()
    });
    set_mode(root.path(), 0o755);
    set_mode(sb.root(), 0o755);
    set_mode(&sb.config(), 0o644);
    for command in ["check", "serve"] {
        let mut cmd = sb.gitgate_command();
        cmd.arg(command).uid(65534).gid(65534);
        let out = run(cmd, None);
        assert!(!out.success(), "{command}: {out}");
        assert!(
            out.stderr
                .contains(&format!("key = \"{}\": ", key.display()))
                && out.stderr.contains("Permission denied")
                && out
                    .stderr
                    .contains("this process (uid 65534) may not read it; check its owner and mode"),
            "{command}: {out}"
        );
    }
}

/// A config file, or a store's folder, that every user of the machine may change (a `chmod 777`
/// to get a service going) lets anyone choose the program gitgate runs or put a store of their
/// own in place: `check` and the start warn of each; a sticky folder (`/tmp`) is not warned of.
#[test]
fn check_and_the_start_warn_of_a_config_or_store_folder_anyone_may_change() {
    use std::os::unix::fs::PermissionsExt;
    let sb = user_sandbox();
    let set_mode = |path: &std::path::Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    };
    let folder = sb.db().parent().unwrap().to_path_buf();
    let before = sb.cli(&["check"]);
    assert!(
        !before.ok().contains("every user of this machine"),
        "{before}"
    );
    set_mode(&sb.config(), 0o666);
    set_mode(&folder, 0o777);
    let out = sb.cli(&["check"]);
    let text = out.ok();
    assert!(
        text.contains(&format!(
            "warning: {} can be written by every user of this machine (mode 0666)",
            sb.config().display()
        )) && text.contains(&format!(
            "warning: the token store's folder {} can be written by every user of this machine \
             (mode 0777)",
            folder.display()
        )),
        "{text}"
    );
    let server = sb.serve();
    let log = server.log_text();
    assert!(
        log.contains("can be written by every user of this machine (mode 0666)")
            && log.contains("the token store's folder"),
        "{log}"
    );
    drop(server);
    set_mode(&sb.config(), 0o644);
    set_mode(&folder, 0o1777);
    let sticky = sb.cli(&["check"]);
    assert!(
        !sticky.ok().contains("every user of this machine"),
        "{sticky}"
    );
    set_mode(&folder, 0o700);
}

/// `serve` on the sandbox's config as a user other than the store's owner: `nobody` when the
/// tests run as root (as in CI), where file modes do not stop root; otherwise this user, with
/// the write bits taken away by the caller. It must refuse to start.
fn serve_without_write_access(sb: &Sandbox) -> String {
    without_write_access(sb, &["serve"])
}

/// `gitgate ARGS` as [`serve_without_write_access`] runs `serve`; it must fail. Its stderr.
fn without_write_access(sb: &Sandbox, args: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = sb.gitgate_command();
    cmd.args(args);
    if rustix::process::geteuid().is_root() {
        cmd.uid(65534).gid(65534);
    }
    let out = run(cmd, None);
    assert!(
        !out.success(),
        "{args:?} ran on a store it cannot write: {out}"
    );
    out.stderr
}

/// Whoever runs this test can still write the store (root can), and `serve` runs as another.
fn as_store_owner_only(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A read command run by an account that may read the store but not write it (an auditor's)
/// reads a private copy: the same answers as the store's owner gets, nothing written to or
/// beside the store, and the copy gone afterwards; with a server running, its latest commits
/// (still in the `-wal`) included. A command that writes is still refused.
#[test]
fn read_commands_work_for_an_account_that_cannot_write_the_store() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    sb.add_user("alice", "alice-password-1");
    sb.personal_token("alice", "alice-password-1", "laptop", &["REPO_READ"]);
    sb.grant("alice", "team", "read");
    let root = rustix::process::geteuid().is_root();
    // Where the reader's copy goes: a folder of the test's, open to the reader.
    let scratch = sb.root().join("scratch");
    fs::create_dir(&scratch).unwrap();
    as_store_owner_only(&scratch, 0o777);
    let as_reader = |args: &[&str]| {
        let mut cmd = sb.gitgate_command();
        cmd.args(args).env("TMPDIR", &scratch);
        if root {
            cmd.uid(65534).gid(65534);
        }
        run(cmd, None)
    };
    let reads: [&[&str]; 6] = [
        &["user", "list", "--json"],
        &["token", "list", "--json"],
        &["grant", "list", "--json"],
        &["policy", "show", "--json"],
        &["ratelimit", "list", "--json"],
        &["audit", "--json"],
    ];
    let owners: Vec<String> = reads.iter().map(|a| sb.cli(a).ok().to_string()).collect();
    // Others may read the store and its folder, not write them.
    as_store_owner_only(sb.root(), 0o755);
    as_store_owner_only(&sb.db(), 0o444);
    let before: Vec<_> = files_in(sb.root())
        .into_iter()
        .filter(|(p, ..)| !p.starts_with(&scratch))
        .collect();
    let db_before = fs::read(sb.db()).unwrap();
    for (args, owner) in reads.iter().zip(&owners) {
        let out = as_reader(args);
        assert_eq!(out.ok(), owner, "{args:?}");
    }
    let after: Vec<_> = files_in(sb.root())
        .into_iter()
        .filter(|(p, ..)| !p.starts_with(&scratch))
        .collect();
    assert_eq!(
        after, before,
        "a read changed or added files beside the store"
    );
    assert_eq!(fs::read(sb.db()).unwrap(), db_before);
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        0,
        "the private copy was left behind"
    );
    // Where the copy cannot be made, the error says where it was to go.
    let mut cmd = sb.gitgate_command();
    cmd.args(["user", "list"])
        .env("TMPDIR", sb.root().join("no-such-folder"));
    if root {
        cmd.uid(65534).gid(65534);
    }
    let err = run(cmd, None);
    err.fails_with(&format!(
        "cannot make a private folder in {} (TMPDIR)",
        sb.root().join("no-such-folder").display()
    ));
    // A command that writes is refused as before.
    let err = without_write_access(&sb, &["user", "disable", "alice"]);
    assert!(err.contains("must be able to write"), "{err}");

    // Beside a running server (root can still write the store): a user added since is only in
    // its `-wal`, and the reader sees it.
    if root {
        let _server = sb.serve();
        sb.add_user("bob", "bob-password-12");
        assert!(std::path::Path::new(&format!("{}-wal", sb.db().display())).exists());
        let out = as_reader(&["user", "list"]);
        let text = out.ok();
        assert!(text.contains("alice") && text.contains("bob"), "{text}");
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
        // A `-wal` and `-shm` the reader may not read (made before the file's mode was
        // opened up): said as such, not as a need to write.
        for sidecar in ["-wal", "-shm"] {
            as_store_owner_only(
                std::path::Path::new(&format!("{}{sidecar}", sb.db().display())),
                0o600,
            );
        }
        let err = as_reader(&["user", "list"]);
        err.fails_with("must be able to read its -wal and -shm too");
    }
}

/// A secret pasted where an id or a name goes is not repeated in the error that names what was
/// typed: it would sit in a terminal's scroll-back or a CI log.
#[test]
fn a_pasted_secret_is_not_repeated_in_an_error() {
    let sb = user_sandbox();
    let token = sb.scoped_token("--project", "team", "ci", "REPO_READ");
    for args in [
        &["token", "show", &token.secret][..],
        &["token", "revoke", &token.secret],
        &["user", "disable", &token.secret],
        &["grant", "add", "alice", &token.secret, "read"],
        &[
            "ratelimit",
            "set",
            &format!("token:{}", token.secret),
            "--capacity",
            "5",
            "--refill",
            "1",
        ],
        // Where the command line's parser refuses it, quoting what it could not place.
        &["user", "add", "bob", &token.secret],
        &["token", "list", "--user=alice", &token.secret],
        &[
            "token",
            "rotate",
            "AAAAAAAAAAAA",
            "--overlap-seconds",
            &token.secret,
        ],
        &["audit", "--limit", &token.secret],
        &[&token.secret],
    ] {
        let run = sb.cli(args);
        assert!(!run.success(), "{args:?}: {run}");
        assert!(
            !run.stderr.contains(&token.secret[17..]) && !run.stdout.contains(&token.secret[17..]),
            "{args:?}: {run}"
        );
    }
    // Nor a secret's random part alone, which gives the secret back with its public id.
    let random = "acbvhvnX3aUC9GTBH4tjaa2yShiiMbUB0uoYEkYtmJk";
    for args in [
        &["token", "show", random][..],
        &["token", "revoke", random],
        &["user", "disable", random],
    ] {
        let run = sb.cli(args);
        assert!(!run.success(), "{args:?}: {run}");
        assert!(
            !run.stderr.contains(&random[..20]) && !run.stdout.contains(&random[..20]),
            "{args:?}: {run}"
        );
    }
}

/// A `GITGATE_LOG` that is no filter refuses `serve` and fails `check` with exit code 1, as
/// every other setting the start refuses does.
#[test]
fn a_log_filter_that_is_none_fails_check_with_1() {
    let sb = Sandbox::new();
    for command in ["check", "serve"] {
        let mut cmd = sb.gitgate_command();
        cmd.env("GITGATE_LOG", "warning").arg(command);
        let out = run(cmd, None);
        assert_eq!(out.status.code(), Some(1), "{command}: {out}");
        assert!(out.stderr.contains("GITGATE_LOG=\"warning\""), "{out}");
    }
}

/// A command that writes, run by an account that may not write the store file but may write
/// its folder (group-writable, say), is refused before SQLite opens anything: it leaves no
/// `-wal`/`-shm` of its own user behind, which the service's account could not open at its
/// next start. (Needs root to run as another user; CI is.)
#[test]
fn a_write_refused_for_want_of_access_leaves_nothing_beside_the_store() {
    if !rustix::process::geteuid().is_root() {
        common::skipping("not root: the other-user case is left out");
        return;
    }
    let sb = Sandbox::new();
    sb.add_user("alice", "alice-password-1");
    as_store_owner_only(sb.root(), 0o777);
    as_store_owner_only(&sb.db(), 0o644);
    let sidecars = || {
        ["-wal", "-shm"]
            .iter()
            .filter(|s| std::path::Path::new(&format!("{}{s}", sb.db().display())).exists())
            .count()
    };
    assert_eq!(sidecars(), 0);
    let err = without_write_access(&sb, &["user", "disable", "alice"]);
    assert!(err.contains("must be able to write"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(sidecars(), 0, "the refused command left a -wal or -shm");
}

/// A read command stopped by a signal (Ctrl-C, `timeout`, a closed terminal) while it works
/// on its copy of the store removes the copy first: it holds every token's and password's
/// hash. Here `audit --json` is held in its write to a pipe nobody reads.
#[test]
fn a_read_commands_copy_is_removed_when_a_signal_stops_it() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    sb.add_user("alice", "alice-password-1");
    // Enough events that their JSON fills a pipe (64 KiB) and the write waits.
    rusqlite::Connection::open(sb.db())
        .unwrap()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO audit_events (at, actor, action, target, detail, source)
             SELECT i, 'test', 'test.filler', 'x', 'an event to fill the pipe', 'local' FROM n;",
        )
        .unwrap();
    let root = rustix::process::geteuid().is_root();
    let scratch = sb.root().join("scratch");
    fs::create_dir(&scratch).unwrap();
    as_store_owner_only(&scratch, 0o777);
    as_store_owner_only(sb.root(), 0o755);
    as_store_owner_only(&sb.db(), 0o444);
    for (signal, code) in [
        (rustix::process::Signal::TERM, 143),
        (rustix::process::Signal::INT, 130),
    ] {
        let mut cmd = sb.gitgate_command();
        cmd.args(["audit", "--json"])
            .env("TMPDIR", &scratch)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if root {
            cmd.uid(65534).gid(65534);
        }
        let mut child = cmd.spawn().unwrap();
        // The copy is there, and the command is held writing its answer.
        let start = Instant::now();
        while fs::read_dir(&scratch).unwrap().count() == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no copy was made"
            );
            thread::sleep(Duration::from_millis(20));
        }
        common::wait_until_blocked_in(child.id(), &["pipe_write"], Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the command did not wait"
        );
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, signal).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{status:?}");
        assert_eq!(
            fs::read_dir(&scratch).unwrap().count(),
            0,
            "the copy was left behind"
        );
    }
}

#[test]
fn serve_refuses_a_store_it_cannot_write() {
    let sb = Sandbox::new();
    sb.add_user("alice", "alice-password-1");
    let root = rustix::process::geteuid().is_root();
    // The sandbox folder must be open to `nobody`, as a service's working folder would be.
    as_store_owner_only(sb.root(), 0o755);
    let uid = if root {
        "uid 65534".to_owned()
    } else {
        format!("uid {}", rustix::process::geteuid().as_raw())
    };
    let before = fs::read(sb.db()).unwrap();

    // The file is the store owner's alone (as after `sudo gitgate user add`) in a folder the
    // service may write: SQLite would open it read-only and `serve` would start.
    if root {
        as_store_owner_only(sb.root(), 0o777);
    }
    as_store_owner_only(&sb.db(), if root { 0o644 } else { 0o444 });
    let err = serve_without_write_access(&sb);
    assert!(err.contains(sb.db().to_str().unwrap()), "{err}");
    assert!(err.contains(&uid), "{err}");
    assert!(
        err.contains("read-only") || err.contains("readonly"),
        "{err}"
    );
    // The failed start left nothing beside the store (no `-wal`/`-shm` of its user's), and
    // `check` says the same as serve, where it used to report that serve would start.
    for extra in ["-wal", "-shm"] {
        let left = format!("{}{extra}", sb.db().display());
        assert!(!std::path::Path::new(&left).exists(), "{left} left: {err}");
    }
    let checked = without_write_access(&sb, &["check"]);
    assert!(
        checked.contains(&uid) && checked.contains("read-only"),
        "{checked}"
    );
    // A CLI command that writes says the same, before it does anything.
    let err = without_write_access(&sb, &["user", "disable", "alice"]);
    assert!(err.contains(sb.db().to_str().unwrap()), "{err}");
    assert!(err.contains(&uid), "{err}");
    assert_eq!(fs::read(sb.db()).unwrap(), before, "the store changed");

    // The file may be written, its folder not: the write-ahead log cannot be created there.
    as_store_owner_only(&sb.db(), 0o666);
    as_store_owner_only(sb.root(), 0o755);
    for extra in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{extra}", sb.db().display()));
    }
    if !root {
        as_store_owner_only(sb.root(), 0o555);
    }
    let err = serve_without_write_access(&sb);
    let checked = without_write_access(&sb, &["check"]);
    as_store_owner_only(sb.root(), 0o755);
    assert!(err.contains(&uid), "{err}");
    assert!(
        err.contains(&format!("folder {}", sb.root().display())),
        "the message should name the folder: {err}"
    );
    assert!(
        checked.contains(&format!("folder {}", sb.root().display())),
        "{checked}"
    );
    assert_eq!(fs::read(sb.db()).unwrap(), before, "the store changed");

    // A file it cannot even read: said as such, without SQLite's internal URI.
    as_store_owner_only(&sb.db(), 0o600);
    let checked = without_write_access(&sb, &["check"]);
    as_store_owner_only(&sb.db(), 0o644);
    assert!(
        checked.contains("cannot read") && checked.contains("Permission denied"),
        "{checked}"
    );
    assert!(!checked.contains("file:/"), "{checked}");
}

#[test]
fn permission_combination_rules() {
    let sb = Sandbox::new();
    let create = |perms: &[&str]| {
        let mut args = vec![
            "token",
            "create",
            "--project",
            "team",
            "--name",
            "x",
            "--json",
        ];
        for p in perms {
            args.extend(["--permission", p]);
        }
        sb.cli(&args)
    };
    // repository permission below the project permission; two of one kind
    for perms in [
        &["PROJECT_WRITE", "REPO_READ"][..],
        &["REPO_READ", "REPO_WRITE"],
        &["PROJECT_READ", "PROJECT_ADMIN"],
    ] {
        let run = create(perms);
        assert!(!run.success(), "{perms:?} should be refused: {run}");
        // Nor the store the refused command made for itself.
        assert!(!sb.db().exists(), "{perms:?}: {run}");
    }

    // a project permission alone implies the same repository permission
    let run = create(&["PROJECT_WRITE"]);
    let j: Value = serde_json::from_str(run.ok()).unwrap();
    let perms: Vec<_> = strings_in(&j["permissions"]);
    assert!(perms.contains(&"PROJECT_WRITE".to_owned()), "{j}");
    assert!(!perms.iter().any(|p| p == "REPO_READ"), "{j}");
}

/// The CLI's audit actor takes the login name from the environment (`SUDO_USER`, else `USER`),
/// which anyone can set; the event's source says which user the process really ran as.
#[test]
fn the_cli_actor_names_the_real_uid_beside_the_claimed_user() {
    let sb = Sandbox::new();
    sb.add_user("alice", PASSWORD);
    // `user <change> alice` with `USER=mallory` and `SUDO_USER` as given (`None`: unset), and
    // the audit event it made.
    let event_as = |change: &str, user: &str, sudo_user: Option<&str>| {
        let mut cmd = sb.gitgate_command();
        cmd.env("USER", user).args(["user", change, "alice"]);
        match sudo_user {
            Some(v) => cmd.env("SUDO_USER", v),
            None => cmd.env_remove("SUDO_USER"),
        };
        run(cmd, None).ok();
        let audit = sb.cli_json(&["audit", "--json"]);
        let action = format!("user.{change}d");
        audit
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["action"] == action.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("no {action} in {audit}"))
    };
    let event_of = |change: &str, sudo_user: Option<&str>| event_as(change, "mallory", sudo_user);
    let event = event_of("disable", None);
    assert_eq!(event["actor"], "cli:mallory", "{event}");
    let uid = rustix::process::getuid().as_raw();
    assert_eq!(event["source"], format!("local:uid={uid}"), "{event}");
    // An empty `SUDO_USER` (a supervisor's) names nobody: `USER` is asked next.
    let event = event_of("enable", Some(""));
    assert_eq!(event["actor"], "cli:mallory", "{event}");
    // A token secret exported as `USER` by a script is not written into the audit trail, which
    // is kept for years, nor the log; a name of 5,000 characters is cut.
    let secret = format!("ggt_abcdefgh2345_{}_abcdef", "Ab1".repeat(14) + "A");
    let event = event_as("disable", &secret, None);
    assert_eq!(
        event["actor"], "cli:<not-recorded:looks-like-a-token-secret>",
        "{event}"
    );
    let event = event_as("enable", &"m".repeat(5000), None);
    assert_eq!(
        event["actor"],
        format!("cli:{}...", "m".repeat(64)).as_str(),
        "{event}"
    );
    // The text listing writes each value as one logfmt field: a detail that holds ` actor=`
    // (a token's name is anyone's words) cannot pass for the event's actor.
    run(
        {
            let mut cmd = sb.gitgate_command();
            cmd.env("USER", "ops").args([
                "token",
                "create",
                "--project",
                "team",
                "--name",
                "x actor=root target=bob",
                "--permission",
                "REPO_READ",
            ]);
            cmd
        },
        None,
    )
    .ok();
    let listing = sb.cli(&["audit", "--action", "token.created"]);
    let text = listing.ok();
    let line = text.lines().last().unwrap_or_default().to_string();
    assert!(
        line.contains(" actor=cli:ops source=\"local:uid=")
            && line.contains(" detail=\"")
            && line.contains("'x actor=root target=bob'"),
        "{line}"
    );
    // The secret as `USER` is nowhere: not in what the command writes (its log lines at the
    // most detailed level included), nor in the whole audit trail in either form.
    let mut cmd = sb.gitgate_command();
    cmd.env("USER", &secret)
        .env("GITGATE_LOG", "trace")
        .env_remove("SUDO_USER")
        .args(["user", "disable", "alice"]);
    let said = run(cmd, None);
    said.ok();
    let everything = format!(
        "{}{}{}{}",
        said.stdout,
        said.stderr,
        sb.cli(&["audit"]).ok(),
        sb.cli(&["audit", "--json"]).ok()
    );
    assert!(everything.contains("user.disabled"), "{everything}");
    assert!(!everything.contains(&secret[17..60]), "{everything}");
}

/// A file system mounted for one test, unmounted however the test ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A store on a full file system: `check` and `serve` both refuse it, naming the full disk
/// (SQLite says only "disk I/O error"), and leave no `-wal` or `-shm` behind (which would fail
/// every later open too). Needs a tmpfs of its own, so root (as `.ci/run` is); elsewhere it
/// says it did not run.
#[test]
fn a_store_on_a_full_disk_is_refused_by_check_and_serve_alike() {
    let sb = Sandbox::new();
    let small = sb.root().join("small");
    fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&small)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        common::skipping("mounting a tmpfs needs root");
        return;
    }
    let _unmount = Mounted(small.clone());
    let config = sb
        .config_text()
        .replace("path = \"gitgate.db\"", "path = \"small/gitgate.db\"");
    fs::write(sb.config(), config).unwrap();
    sb.add_user("alice", PASSWORD);
    // Fill what is left.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1k"])
        .arg(format!("of={}", small.join("filler").display()))
        .stderr(Stdio::null())
        .status();
    let sidecars = || {
        ["gitgate.db-wal", "gitgate.db-shm"]
            .iter()
            .filter(|f| small.join(f).exists())
            .count()
    };
    assert_eq!(sidecars(), 0);
    let check = sb.cli(&["check"]);
    assert!(!check.success(), "{check}");
    let said = format!("{}{}", check.stdout, check.stderr);
    assert!(said.contains("no space left"), "{said}");
    let mut serve = sb.gitgate_command();
    let out = serve.arg("serve").stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no space left"), "{said}");
    assert_eq!(sidecars(), 0, "left behind by a start that failed");
}

/// With `[rate_limit] enabled = false` the server counts no principal's requests, so an
/// override set for one (a smaller bucket for an abusive user) has no effect: `ratelimit set`,
/// `exempt` and `list` say so instead of confirming it as if it were in force. With rate
/// limiting on, they say nothing of the kind.
#[test]
fn rate_limit_overrides_say_they_have_no_effect_while_rate_limiting_is_off() {
    let off = Sandbox::with(common::Setup {
        extra: "\n[rate_limit]\nenabled = false\n".into(),
        ..Default::default()
    });
    off.add_user("alice", PASSWORD);
    let on = user_sandbox();
    let set = [
        "ratelimit",
        "set",
        "alice",
        "--capacity",
        "5",
        "--refill",
        "0.5",
    ];
    for (sb, is_off) in [(&off, true), (&on, false)] {
        for args in [
            &set[..],
            &["ratelimit", "exempt", "alice"][..],
            &["ratelimit", "list"][..],
        ] {
            let run = sb.cli(args);
            run.ok();
            assert_eq!(
                run.stderr
                    .contains("rate limiting is off in this configuration"),
                is_off,
                "{args:?}: {run}"
            );
            if is_off {
                assert!(run.stderr.contains("have no effect"), "{args:?}: {run}");
            }
        }
    }
    // The JSON listing on stdout stays JSON.
    let listed = off.cli_json(&["ratelimit", "list", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // And the server says it at its start, where the overrides are read: before its
    // `listening on` line, which `serve` waits for.
    let server = off.serve();
    let warned = |g: &common::Server| {
        g.log_text()
            .contains("rate limiting is off ([rate_limit] enabled = false)")
    };
    assert!(warned(&server), "{}", server.log_text());
    drop(server);
    let server = on.serve();
    assert!(!warned(&server), "{}", server.log_text());
}

/// A rate-limit command that finds what it asks for in place says so, exits 0 (as `user
/// disable` twice does) and audits nothing; a rule for a revoked token, which never counts
/// again, is refused.
#[test]
fn ratelimit_commands_that_change_nothing_say_so_and_audit_nothing() {
    let sb = user_sandbox();
    sb.cli(&["ratelimit", "exempt", "alice"]).ok();
    let again = sb.cli(&["ratelimit", "exempt", "alice"]);
    again.ok();
    assert!(again.stderr.contains("already; nothing changed"), "{again}");
    let set = [
        "ratelimit",
        "set",
        "alice",
        "--capacity",
        "5",
        "--refill",
        "1",
    ];
    sb.cli(&set).ok();
    let again = sb.cli(&set);
    again.ok();
    assert!(again.stderr.contains("already; nothing changed"), "{again}");
    sb.cli(&["ratelimit", "clear", "alice"]).ok();
    let again = sb.cli(&["ratelimit", "clear", "alice"]);
    again.ok();
    assert!(again.stderr.contains("had no override"), "{again}");
    let audit = sb.cli_json(&["audit", "--json"]);
    let count = |action: &str| {
        let events = audit.as_array().unwrap().iter();
        events.filter(|e| e["action"] == action).count()
    };
    assert_eq!(count("ratelimit.set"), 2, "{audit}");
    assert_eq!(count("ratelimit.cleared"), 1, "{audit}");

    let token = sb.scoped_token("--project", "team", "ci", "REPO_READ");
    sb.cli(&["token", "revoke", &token.id]).ok();
    sb.cli(&["ratelimit", "exempt", &format!("token:{}", token.id)])
        .fails_with("is revoked");
    assert_eq!(
        sb.cli_json(&["ratelimit", "list", "--json"]),
        Value::Array(vec![])
    );
}

/// The tables keep their columns in line when a name is longer than the usual width (user
/// names go to 64 characters; token names and targets further).
#[test]
fn tables_stay_in_line_with_long_names() {
    let sb = user_sandbox();
    let long = "a".repeat(64);
    sb.add_user(&long, PASSWORD);
    let long_project = "p".repeat(50);
    for user in ["alice", long.as_str()] {
        sb.cli(&["grant", "add", user, "team", "read"]).ok();
    }
    sb.cli(&["grant", "add", "alice", &long_project, "read"])
        .ok();
    sb.scoped_token("--project", "team", &"n".repeat(40), "REPO_READ");
    sb.scoped_token("--project", "team", "ci", "REPO_READ");
    for (args, column) in [
        (&["user", "list"][..], "ROLE"),
        (&["grant", "list"], "LEVEL"),
        (&["token", "list"], "KIND"),
    ] {
        let out = sb.cli(args).ok().to_string();
        let header = out.lines().next().unwrap();
        let at = header.find(column).unwrap();
        for line in out.lines().skip(1) {
            // The column starts where its heading does: a value before it ran over otherwise.
            assert_eq!(line.as_bytes()[at - 1], b' ', "{args:?}:\n{out}");
            assert_ne!(line.as_bytes()[at], b' ', "{args:?}:\n{out}");
        }
    }
}

/// `listen = "[::]:PORT"` takes IPv4 clients too, whatever the host's `net.ipv6.bindv6only`
/// says: with it set to 1 (as some hardened hosts have it), a plain IPv6 socket serves IPv6
/// only, and gitgate started quietly unreachable over IPv4. Run in a network namespace of its
/// own (needs root and `unshare`, which CI has), where the setting is this test's alone.
#[test]
fn a_wildcard_ipv6_listener_takes_ipv4_clients_whatever_the_host_says() {
    let unshare = Command::new("unshare").args(["-n", "true"]).status();
    if !rustix::process::geteuid().is_root() || !unshare.is_ok_and(|s| s.success()) {
        common::skipping("no network namespace here (needs root and `unshare -n`)");
        return;
    }
    let sb = Sandbox::new();
    let text = sb
        .config_text()
        .replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:18080\"")
        + "[metrics]\nlisten = \"[::]:19100\"\n";
    fs::write(sb.config(), text).unwrap();
    let script = r#"
ip link set lo up && sysctl -qw net.ipv6.bindv6only=1 || exit 3
"$GITGATE" --config "$CONFIG" serve 2>"$LOG" &
pid=$!
i=0
until grep -q "metrics on" "$LOG" || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
for url in http://127.0.0.1:18080/healthz 'http://[::1]:18080/healthz' \
           http://127.0.0.1:19100/metrics 'http://[::1]:19100/metrics'; do
    printf '%s %s\n' "$url" "$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$url")"
done
kill -INT $pid
wait $pid
"#;
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .env("GITGATE", gitgate_bin())
        .env("CONFIG", sb.config())
        .env("LOG", sb.server_log())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let log = fs::read_to_string(sb.server_log()).unwrap_or_default();
    assert!(out.status.success(), "{said}\n{log}");
    for url in [
        "http://127.0.0.1:18080/healthz",
        "http://[::1]:18080/healthz",
        "http://127.0.0.1:19100/metrics",
        "http://[::1]:19100/metrics",
    ] {
        assert!(said.contains(&format!("{url} 200")), "{said}\n{log}");
    }
}

/// A process limit (`RLIMIT_NPROC`) too tight for gitgate's threads stops the start with the
/// reason: before, the thread that opens the store panicked in tokio ("OS can't spawn worker
/// thread"), and a worker thread that could not start panicked as its runtime was dropped
/// ("Cannot drop a runtime in a context where blocking is not allowed"). Root is not held to
/// the limit, so the server runs as an unused uid (needs root, as CI is).
#[test]
fn a_process_limit_too_tight_for_the_threads_stops_the_start_with_the_reason() {
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        common::skipping("not root: a process limit for another user is left out");
        return;
    }
    let sb = Sandbox::with(common::Setup {
        server_extra: "workers = 2".into(),
        ..Default::default()
    });
    const UID: u32 = 54_321;
    let own =
        |path: &std::path::Path| std::os::unix::fs::chown(path, Some(UID), Some(UID)).unwrap();
    own(sb.root());
    own(&sb.config());
    // One thread, its own: the first the start makes cannot start. Since e879b2d that is one
    // of the threads started up front to wait for work (before, the one that opens the store);
    // with more room, which thread fails first depends on when that one has exited: each start
    // refuses as this one does, with the reason and the limit to look at.
    let mut cmd = sb.gitgate_command();
    cmd.arg("serve").uid(UID).gid(UID);
    // SAFETY: setrlimit is async-signal-safe; the limit is this child's alone.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = run(cmd, None);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("cannot start a thread to wait for work")
            && out.stderr.contains("Resource temporarily unavailable")
            && out.stderr.contains("ulimit -u"),
        "{out}"
    );
    assert!(!out.stderr.contains("panic"), "{out}");
}

/// Whatever process limit (`RLIMIT_NPROC`) the start meets, it serves, or stops with the
/// reason — never with a panic: with room for the store's and the log's threads but not one
/// more, the look for cut-off pushes' objects in tokio's blocking pool (whose first thread
/// failing to start is a panic) ended the process with "OS can't spawn worker thread" right
/// after it said it was listening; a little more room, and the start's readiness check, or
/// the metrics' count of expiring tokens, panicked instead. Root is not held to the limit, so
/// the server runs as an unused uid (needs root, as CI is).
#[test]
fn no_process_limit_makes_the_start_panic() {
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        common::skipping("not root: a process limit for another user is left out");
        return;
    }
    let sb = Sandbox::with(common::Setup {
        server_extra: "workers = 2".into(),
        extra: "[metrics]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    });
    const UID: u32 = 54_322;
    let own =
        |path: &std::path::Path| std::os::unix::fs::chown(path, Some(UID), Some(UID)).unwrap();
    own(sb.root());
    own(&sb.config());
    for limit in 2..=9u64 {
        let log = sb.root().join(format!("serve-{limit}.log"));
        let mut cmd = sb.gitgate_command();
        cmd.arg("serve")
            .uid(UID)
            .gid(UID)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        // SAFETY: setrlimit is async-signal-safe; the limit is this child's alone.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        // Long enough for a start on a busy machine: one that serves says "ready:" within it.
        let by = Instant::now() + Duration::from_secs(30);
        let ended = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            let said = fs::read_to_string(&log).unwrap_or_default();
            // Checked at the start: ready, or not (for want of a thread to read the store).
            if said.contains("ready:") || Instant::now() > by {
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        if ended.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let said = fs::read_to_string(&log).unwrap();
        assert!(!said.contains("panic"), "limit {limit}: {said}");
        match ended {
            Some(status) => {
                assert!(!status.success(), "limit {limit}: {said}");
                assert!(
                    said.contains("cannot start") && said.contains("Resource temporarily"),
                    "limit {limit}: {said}"
                );
            }
            // Serving: the start's check said whether it is ready ("not ready: ..." with the
            // reason, when no thread could read the store).
            None => assert!(said.contains("ready:"), "limit {limit}: {said}"),
        }
    }
}

/// `ratelimit set NAME` for a name that is no user but project or repository tokens' (`ci`)
/// says how to name them: `token:ID`, one each.
#[test]
fn a_rate_limit_for_the_name_of_scoped_tokens_names_their_ids() {
    let sb = Sandbox::new();
    let ci = sb.scoped_token("--project", "team", "ci", "REPO_READ");
    let said = sb
        .cli(&["ratelimit", "set", "ci", "--capacity", "5", "--refill", "1"])
        .fails_with("no user 'ci'")
        .to_owned();
    assert!(
        said.contains("names project or repository tokens")
            && said.contains(&format!("token:{}", ci.id)),
        "{said}"
    );
    sb.cli(&[
        "ratelimit",
        "set",
        "nobody",
        "--capacity",
        "5",
        "--refill",
        "1",
    ])
    .fails_with("no user 'nobody'");
}

/// An HTTP upstream that answers a gateway's failure (`502`, `503`, `504`) — nginx with
/// fcgiwrap down or its socket not reachable — is a warning of `check`: it accepts connections,
/// so it is "ready", and every git request would get that failure.
#[test]
fn check_warns_of_an_upstream_whose_gateway_fails() {
    let sb = user_sandbox();
    sb.scoped_token("--project", "team", "ci", "REPO_READ");
    let gateway = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = gateway.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in gateway.incoming().take(8) {
            let Ok(mut conn) = conn else { continue };
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut head);
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\
                  Connection: close\r\n\r\n",
            );
        }
    });
    let text = sb.config_text();
    let upstream_at = text.find("[upstream]").unwrap();
    let after = text[upstream_at..]
        .find("\n[")
        .map_or(text.len(), |i| upstream_at + i + 1);
    let config = sb.root().join("gateway.toml");
    fs::write(
        &config,
        format!(
            "{}[upstream]\nurl = \"http://127.0.0.1:{port}/git\"\n{}",
            &text[..upstream_at],
            &text[after..]
        ),
    )
    .unwrap();
    let out = check_of(&sb, &config);
    let text = out.ok();
    assert!(
        text.contains(&format!(
            "warning: upstream http://127.0.0.1:{port}/git answers 502 Bad Gateway to a HEAD of \
             its base path"
        )) && text.contains("(1 warning)"),
        "{text}"
    );
}

/// A config file the user running gitgate may not read (a `proxy.toml` made by root, mode
/// 0600, for a service run as `git`) is told so, with whose it must be readable: not to choose
/// another file with --config, which was the only advice.
#[test]
fn a_config_file_this_user_cannot_read_is_told_whose_it_must_be() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let sb = Sandbox::new();
    let root = rustix::process::geteuid().is_root();
    // Root reads any file: it runs the commands as nobody, for whom a 0600 file of root's is
    // unreadable; anyone else makes the file unreadable to itself.
    let mode = if root { 0o600 } else { 0o000 };
    fs::set_permissions(sb.config(), fs::Permissions::from_mode(mode)).unwrap();
    for command in ["check", "serve"] {
        let mut cmd = sb.gitgate_command();
        cmd.arg(command);
        if root {
            cmd.uid(65534).gid(65534);
        }
        let out = run(cmd, None);
        assert!(!out.success(), "{command}: {out}");
        let uid = if root {
            65534
        } else {
            rustix::process::geteuid().as_raw()
        };
        assert!(
            out.stderr
                .contains("cannot read the config file: Permission denied")
                && out.stderr.contains(&format!(
                    "this process (uid {uid}) may not read it: check its owner and mode"
                ))
                && !out.stderr.contains("choose one with --config"),
            "{command}: {out}"
        );
    }
    fs::set_permissions(sb.config(), fs::Permissions::from_mode(0o644)).unwrap();
}

/// `gitgate backup FILE` copies the store beside a running server — what is still in the
/// server's write-ahead log included, which a `cp` of the file would miss — into a new file
/// readable by its owner only, whatever the umask; restored, it is the store, and the token
/// made last still clones. A file already there (the store itself, an older backup) is refused
/// and left as it is. An older store is copied as it is, not migrated.
#[test]
fn backup_copies_a_live_store_into_a_new_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.create_repo("team/app");
    sb.add_user("alice", PASSWORD);
    sb.grant("alice", "team", "read");
    let server = sb.serve();
    // Made while the server has the store open: in its -wal, not yet in the file.
    let token = sb.personal_token("alice", PASSWORD, "laptop", &["REPO_READ"]);
    let wal = sb.root().join("gitgate.db-wal");
    assert!(fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0);
    let backup = sb.root().join("backup.db");
    let said = sb.cli(&["backup", backup.to_str().unwrap()]).stderr.clone();
    assert!(said.contains("backed up the token store"), "{said}");
    let mode = fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Already there: refused, unchanged — the store itself too.
    let before = fs::read(&backup).unwrap();
    sb.cli(&["backup", backup.to_str().unwrap()])
        .fails_with("is there already: a backup goes to a new file (nothing was written)");
    assert_eq!(fs::read(&backup).unwrap(), before);
    sb.cli(&["backup", sb.db().to_str().unwrap()])
        .fails_with("is there already");
    drop(server);
    // Restored as the README says: the store replaced, no -wal or -shm beside it.
    for file in ["gitgate.db-wal", "gitgate.db-shm"] {
        let _ = fs::remove_file(sb.root().join(file));
    }
    fs::copy(&backup, sb.db()).unwrap();
    let server = sb.serve();
    let git = sb.git(
        sb.root(),
        &[
            "ls-remote",
            &server.url_with("alice", &token.secret, "team/app"),
        ],
    );
    assert!(git.ok().contains("refs/heads/main"), "{git}");
    drop(server);

    // A store of the first build: its backup keeps its version, and so does the store.
    let old = Sandbox::new();
    fs::copy(common::fixture("store-v1/gitgate.db"), old.db()).unwrap();
    let version = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    let backup = old.root().join("backup.db");
    // Not under a name of the store's own files, which would be read as its log or a marker.
    for name in ["gitgate.db-wal", "gitgate.db-damaged"] {
        let beside = old.root().join(name);
        old.cli(&["backup", beside.to_str().unwrap()])
            .fails_with("is a name of the store's own files");
        assert!(!beside.exists(), "{name}");
    }
    old.cli(&["backup", backup.to_str().unwrap()]).ok();
    assert_eq!((version(&old.db()), version(&backup)), (1, 1));
}
