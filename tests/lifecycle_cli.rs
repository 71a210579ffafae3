//! The token lifecycle through the CLI: the same rules as the REST API (they share
//! `lifecycle.rs`), driven with the real `gitgate` binary on a temporary store.

mod common;
mod lifecycle_support;

use lifecycle_support::{Api, Install, PW};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn setup() -> Install {
    let install = Install::new();
    install.add_user("alice", false);
    install.add_user("root", true);
    install.cli_ok(&["grant", "add", "alice", "team", "write"], "");
    install
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `token create --user alice ... --json`; returns the JSON.
fn create_personal(install: &Install, extra: &[&str]) -> Value {
    let mut args = vec![
        "token",
        "create",
        "--user",
        "alice",
        "--name",
        "laptop",
        "--permission",
        "REPO_WRITE",
        "--password-stdin",
        "--json",
    ];
    args.extend_from_slice(extra);
    json_of(&install.cli_ok(&args, &format!("{PW}\n")))
}

/// A repository token `ci` on team/app reading only, made by the operator: its `--json`.
fn scoped_ci(install: &Install) -> Value {
    json_of(&install.cli_ok(
        &[
            "token",
            "create",
            "--repo",
            "team/app",
            "--name",
            "ci",
            "--permission",
            "REPO_READ",
            "--json",
        ],
        "",
    ))
}

/// `policy set`: every new token expires, within 30 days.
fn require_expiry_within_30_days(install: &Install) {
    install.cli_ok(&common::REQUIRE_EXPIRY_WITHIN_30_DAYS, "");
}

#[test]
fn create_list_revoke_keep_their_contract() {
    let install = setup();
    // The secret alone on stdout.
    let out = install.cli_ok(
        &[
            "token",
            "create",
            "--user",
            "alice",
            "--name",
            "laptop",
            "--permission",
            "REPO_READ",
            "--password-stdin",
        ],
        &format!("{PW}\n"),
    );
    let secret = out.trim();
    assert!(secret.starts_with("ggt_") && !secret.contains(char::is_whitespace));
    let list = json_of(&install.cli_ok(&["token", "list", "--json"], ""));
    let t = &list[0];
    for key in [
        "id",
        "name",
        "permissions",
        "expiresAt",
        "compliant",
        "allowedNetworks",
    ] {
        assert!(t.get(key).is_some(), "{key} missing from {t}");
    }
    assert!(t.get("token").is_none());
    assert!(!list.to_string().contains(secret));
    let id = t["id"].as_str().unwrap();
    install.cli_ok(&["token", "revoke", id], "");
    // Twice is no failure (as `user disable` twice): the token is revoked, and said to be.
    let again = install.cli(&["token", "revoke", id], "");
    assert!(again.success(), "{again}");
    assert!(again.stderr.contains("was revoked already on"), "{again}");
    let events = json_of(&install.cli_ok(&["audit", "--json"], ""));
    let revocations = events.as_array().unwrap().iter();
    assert_eq!(
        revocations
            .filter(|e| e["action"] == "token.revoked")
            .count(),
        1
    );
    let shown = json_of(&install.cli_ok(&["token", "show", id, "--json"], ""));
    assert!(shown["revokedAt"].as_i64().is_some());
}

#[test]
fn personal_tokens_need_the_owners_password() {
    let install = setup();
    let err = install.cli_err(
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
        "wrong\n",
    );
    assert!(err.contains("wrong user name or password"), "{err}");
    assert!(err.contains("can only be created by its owner"), "{err}");
    // A token is not a password.
    let t = create_personal(&install, &[]);
    let err = install.cli_err(
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
        &format!("{}\n", t["token"].as_str().unwrap()),
    );
    assert!(err.contains("access tokens cannot be used"), "{err}");
}

#[test]
fn edit_show_and_the_expiry_that_never_changes() {
    let install = setup();
    let err = install.cli_err(
        &[
            "token",
            "create",
            "--user",
            "alice",
            "--name",
            "typo",
            "--permission",
            "REPO_READ",
            "--allowed-network",
            "10.1.2.3/8",
            "--password-stdin",
        ],
        &format!("{PW}\n"),
    );
    assert!(err.contains("address bits set past its /8"), "{err}");
    let t = create_personal(
        &install,
        &["--expiry-days", "10", "--allowed-network", "10.0.0.0/8"],
    );
    let id = t["id"].as_str().unwrap();
    assert_eq!(t["allowedNetworks"], json!(["10.0.0.0/8"]));

    let edited = json_of(&install.cli_ok(
        &[
            "token",
            "edit",
            id,
            "--name",
            "renamed",
            "--permission",
            "REPO_READ",
            "--json",
        ],
        "",
    ));
    assert_eq!(edited["name"], "renamed");
    assert_eq!(edited["permissions"], json!(["REPO_READ"]));
    assert_eq!(edited["expiresAt"], t["expiresAt"]);
    assert_eq!(edited["allowedNetworks"], json!(["10.0.0.0/8"]));

    let err = install.cli_err(&["token", "edit", id, "--expiry-days", "100"], "");
    assert!(err.contains("never changes"), "{err}");
    let err = install.cli_err(&["token", "edit", id, "--permission", "ADMIN"], "");
    assert!(err.contains("unknown permission 'ADMIN'"), "{err}");
    let err = install.cli_err(&["token", "edit", id], "");
    assert!(err.contains("nothing to change"), "{err}");
    // Asked for what it has already: said so, not "updated".
    let run = install.cli(&["token", "edit", id, "--name", "renamed"], "");
    assert!(
        run.ok().contains("renamed")
            && run
                .stderr
                .contains("already had what was given; nothing changed"),
        "{run}"
    );
    let run = install.cli(&["token", "edit", id, "--name", "again"], "");
    assert!(
        run.ok().contains("again") && run.stderr.contains("updated"),
        "{run}"
    );
    install.cli_ok(&["token", "edit", id, "--name", "renamed"], "");
    let err = install.cli_err(&["token", "edit", id, "--allowed-network", "nope"], "");
    assert!(err.contains("not a network"), "{err}");

    let any = json_of(&install.cli_ok(&["token", "edit", id, "--any-network", "--json"], ""));
    assert_eq!(any["allowedNetworks"], json!([]));
    let text = install.cli_ok(&["token", "show", id], "");
    assert!(
        text.contains("renamed") && text.contains("networks:    anywhere"),
        "{text}"
    );
    let err = install.cli_err(&["token", "show", "abcdefghijkl"], "");
    assert!(err.contains("no token with id"), "{err}");
}

#[test]
fn rotate_prints_a_new_secret_for_the_same_token() {
    let install = setup();
    let t = create_personal(&install, &[]);
    let id = t["id"].as_str().unwrap();
    // Personal: only with the owner's password.
    let err = install.cli_err(&["token", "rotate", id, "--password-stdin"], "wrong\n");
    assert!(err.contains("can only be rotated by its owner"), "{err}");
    let out = install.cli_ok(
        &["token", "rotate", id, "--password-stdin"],
        &format!("{PW}\n"),
    );
    let secret = out.trim();
    assert!(secret.starts_with("ggt_") && secret.contains(id));
    assert_ne!(secret, t["token"].as_str().unwrap());
    let shown = json_of(&install.cli_ok(&["token", "show", id, "--json"], ""));
    assert!(shown["rotatedAt"].as_i64().is_some());
    assert_eq!(shown["name"], "laptop");

    // Scoped: the operator rotates without a password.
    let scoped = scoped_ci(&install);
    let sid = scoped["id"].as_str().unwrap();
    let rotated = json_of(&install.cli_ok(
        &["token", "rotate", sid, "--overlap-seconds", "60", "--json"],
        "",
    ));
    assert_eq!(rotated["id"], sid);
    assert_ne!(rotated["token"], scoped["token"]);
    let err = install.cli_err(
        &["token", "rotate", sid, "--overlap-seconds", "999999999"],
        "",
    );
    assert!(err.contains("at most"), "{err}");
    // A password for a token that takes none is refused, not silently ignored.
    let err = install.cli_err(&["token", "rotate", sid, "--password-stdin"], "pw\n");
    assert!(
        err.contains("--password-stdin is for personal tokens"),
        "{err}"
    );
    let after = json_of(&install.cli_ok(&["token", "show", sid, "--json"], ""));
    assert_eq!(
        after["rotatedAt"], rotated["rotatedAt"],
        "not rotated again"
    );

    let audit = install.cli_ok(&["audit"], "");
    assert!(audit.contains("token.rotated"));
    assert!(!audit.contains(secret));
}

/// Inside a rotation's overlap, `token show` says until when the old secret still works, in
/// its text and as `previousSecretValidUntil` in its JSON (for whoever plans the move of the
/// clients); a rotation without overlap leaves no old secret to name.
#[test]
fn show_names_when_the_old_secret_of_a_rotation_stops_working() {
    let install = setup();
    let scoped = scoped_ci(&install);
    let id = scoped["id"].as_str().unwrap();
    let shown = json_of(&install.cli_ok(&["token", "show", id, "--json"], ""));
    assert!(shown.get("previousSecretValidUntil").is_none(), "{shown}");
    install.cli_ok(&["token", "rotate", id, "--overlap-seconds", "3600"], "");
    let shown = json_of(&install.cli_ok(&["token", "show", id, "--json"], ""));
    let rotated = shown["rotatedAt"].as_i64().unwrap();
    let until = shown["previousSecretValidUntil"]
        .as_i64()
        .unwrap_or_else(|| panic!("no previousSecretValidUntil: {shown}"));
    assert!(
        (rotated + 3_000_000..=rotated + 3_700_000).contains(&until),
        "{shown}"
    );
    let text = install.cli_ok(&["token", "show", id], "");
    assert!(text.contains("old secret:  works until "), "{text}");
    // Rotated again without overlap: the secret replaced stops at once.
    install.cli_ok(&["token", "rotate", id, "--overlap-seconds", "0"], "");
    let shown = json_of(&install.cli_ok(&["token", "show", id, "--json"], ""));
    assert!(shown.get("previousSecretValidUntil").is_none(), "{shown}");
}

/// A token that cannot be created or rotated for its owner says why before the owner is asked
/// for a password (no password is given here: one asked for would be the failure): a disabled
/// owner, a revoked token. Nothing is created, rotated or audited as a failed login.
#[test]
fn why_a_token_cannot_be_had_is_said_before_the_owners_password() {
    let install = setup();
    let t = create_personal(&install, &[]);
    let id = t["id"].as_str().unwrap();
    let before = token_ids(&install);
    install.cli_ok(&["user", "disable", "alice"], "");
    let run = install.cli(&create_args(), "");
    run.fails_with(
        "user 'alice' is disabled: no personal token of theirs can be created, and their tokens \
         are refused, until they are enabled again: gitgate user enable alice",
    );
    let run = install.cli(&["token", "rotate", id, "--password-stdin"], "");
    run.fails_with("user 'alice' is disabled: no personal token of theirs can be rotated");
    install.cli_ok(&["user", "enable", "alice"], "");
    install.cli_ok(&["token", "revoke", id], "");
    let run = install.cli(&["token", "rotate", id, "--password-stdin"], "");
    run.fails_with(&format!(
        "token 'laptop' ({id}) is revoked and cannot be rotated"
    ));
    assert_eq!(token_ids(&install), before);
    let shown = json_of(&install.cli_ok(&["token", "show", id, "--json"], ""));
    assert_eq!(shown["rotatedAt"], Value::Null);
    assert_eq!(audit_events(&install, "auth.failed"), Vec::<Value>::new());
}

#[test]
fn policy_show_and_set() {
    let install = setup();
    let old = create_personal(&install, &[]);
    let shown = json_of(&install.cli_ok(&["policy", "show", "--json"], ""));
    assert_eq!(shown["expiryRequired"], false);
    assert_eq!(shown["nonCompliantTokens"], json!([]));

    require_expiry_within_30_days(&install);
    let shown = json_of(&install.cli_ok(&["policy", "show", "--json"], ""));
    assert_eq!(shown["expiryRequired"], true);
    assert_eq!(shown["maxExpiryDays"], 30);
    assert_eq!(shown["nonCompliantTokens"], json!([old["id"]]));
    let text = install.cli_ok(&["policy", "show"], "");
    assert!(
        text.contains("non-compliant tokens") && text.contains(old["id"].as_str().unwrap()),
        "{text}"
    );

    let create = |days: Option<&str>| {
        let mut args = vec![
            "token",
            "create",
            "--project",
            "team",
            "--name",
            "ci",
            "--permission",
            "REPO_READ",
        ];
        if let Some(d) = days {
            args.extend_from_slice(&["--expiry-days", d]);
        }
        install.cli(&args, "")
    };
    let out = create(None);
    assert!(!out.success());
    assert!(out.stderr.contains("at most 30 days"));
    let out = create(Some("31"));
    assert!(out.stderr.contains("the maximum expiry is 30 days"));
    assert!(create(Some("30")).success());

    let err = install.cli_err(&["policy", "set", "--expiry-required", "maybe"], "");
    assert!(err.contains("[possible values: yes, no]"), "{err}");
    let err = install.cli_err(&["policy", "set", "--expiry-required", "true"], "");
    assert!(err.contains("[possible values: yes, no]"), "{err}");
    // The range said is the one the policy takes (was 1..=4294967295).
    for days in ["0", "36501"] {
        let err = install.cli_err(&["policy", "set", "--max-expiry-days", days], "");
        assert!(err.contains("is not in 1..=36500"), "{err}");
    }
    // Nothing to change is a mistake, not a change: no exit 0, no audit entry.
    let err = install.cli_err(&["policy", "set"], "");
    assert!(err.contains("--expiry-required"), "{err}");
    install.cli_ok(
        &[
            "policy",
            "set",
            "--expiry-required",
            "no",
            "--no-max-expiry-days",
        ],
        "",
    );
    assert!(create(None).status.success());
    let events = json_of(&install.cli_ok(&["audit", "--json"], ""));
    let changes = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "policy.changed")
        .count();
    assert_eq!(changes, 2);
}

// ---------------------------------------------------------------------------------------------
// Passwords: `user passwd`, and the lock after too many wrong ones (`lifecycle::login`)

/// Wrong passwords in a row that lock a user's password logins
/// (`PASSWORD_FAILURES_BEFORE_LOCK` in `src/lifecycle.rs`).
const LOCK_AFTER: usize = 10;
/// How long such a lock lasts unless lifted (`PASSWORD_LOCK_MS`), in seconds.
const LOCK_SECS: i64 = 15 * 60;

/// `token create --user alice ... --password-stdin` with `password`: the CLI's password check.
fn create_with_password(install: &Install, password: &str) -> common::Run {
    install.cli(&create_args(), &format!("{password}\n"))
}

fn create_args() -> Vec<&'static str> {
    vec![
        "token",
        "create",
        "--user",
        "alice",
        "--name",
        "pw-checked",
        "--permission",
        "REPO_READ",
        "--password-stdin",
    ]
}

/// A password login that worked: the new secret alone on stdout.
#[track_caller]
fn assert_login_ok(run: &common::Run) {
    let secret = run.ok().trim();
    assert!(secret.starts_with("ggt_"), "{run}");
}

/// A password login refused with the one answer every failure gets (wrong password, locked,
/// disabled), which names the lock, its length and the way out; nothing on stdout.
#[track_caller]
fn assert_login_refused(run: &common::Run) {
    let err = run.fails_with("authentication failed for user 'alice': wrong user name or password");
    assert!(
        err.contains(&format!(
            "locked after {LOCK_AFTER} wrong passwords in a row (for {} minutes; an \
             administrator can lift it: gitgate user unlock alice, and it leaves the user's \
             tokens working)",
            LOCK_SECS / 60
        )),
        "{run}"
    );
    assert!(run.stdout.is_empty(), "{run}");
}

/// The ids of all tokens, to see that a refused command created none.
fn token_ids(install: &Install) -> Vec<String> {
    json_of(&install.cli_ok(&["token", "list", "--json"], ""))
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Alice's entry in `user list --json`.
fn alice(install: &Install) -> Value {
    let users = json_of(&install.cli_ok(&["user", "list", "--json"], ""));
    users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .cloned()
        .unwrap_or_else(|| panic!("no alice in {users}"))
}

/// Alice's STATUS column in `user list`.
fn alice_status(install: &Install) -> String {
    let text = install.cli_ok(&["user", "list"], "");
    let line = text
        .lines()
        .find(|l| l.starts_with("alice "))
        .unwrap_or_else(|| panic!("no alice in {text}"));
    line.split_whitespace().nth(2).unwrap().to_owned()
}

/// The audit events with `action`.
fn audit_events(install: &Install, action: &str) -> Vec<Value> {
    json_of(&install.cli_ok(&["audit", "--json"], ""))
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

/// An empty line given as the owner's password is refused as empty before any login is tried:
/// it is no wrong password, so it is neither audited as a failed login nor counted toward
/// the lock.
#[test]
fn an_empty_owners_password_is_refused_without_a_login() {
    let install = setup();
    let create = create_args();
    for stdin in ["\n", "\r\n", ""] {
        let err = install.cli_err(&create, stdin);
        assert!(err.contains("the password is empty"), "{err}");
    }
    assert_eq!(audit_events(&install, "auth.failed"), Vec::<Value>::new());
    assert_eq!(audit_events(&install, "token.created"), Vec::<Value>::new());
}

/// `policy set --no-max-expiry-days` takes the maximum away and keeps the rest: a token may
/// then live any number of days, while an expiry is still required.
#[test]
fn no_max_expiry_days_takes_the_maximum_away() {
    let install = setup();
    require_expiry_within_30_days(&install);
    let shown = json_of(&install.cli_ok(&["policy", "show", "--json"], ""));
    assert_eq!(shown["maxExpiryDays"], 30, "{shown}");
    install.cli_ok(&["policy", "set", "--no-max-expiry-days"], "");
    let shown = json_of(&install.cli_ok(&["policy", "show", "--json"], ""));
    assert_eq!(
        (&shown["expiryRequired"], &shown["maxExpiryDays"]),
        (&json!(true), &Value::Null),
        "{shown}"
    );
    let t = create_personal(&install, &["--expiry-days", "365"]);
    assert!(t["expiresAt"].as_i64().is_some(), "{t}");
}

/// A repository grant at the very level its project's grant gives is not said to be exceeded
/// by it: "still has ... through their grant on team" is said only of a higher level.
#[test]
fn a_repository_grant_equal_to_its_projects_is_not_said_to_be_exceeded() {
    let install = setup();
    let same = install.cli(&["grant", "add", "alice", "team/app", "write"], "");
    assert!(
        same.ok().is_empty()
            && same
                .stderr
                .contains("user 'alice' now has write on team/app")
            && !same.stderr.contains("still has"),
        "{same}"
    );
}

/// `n` wrong passwords for alice, each refused with the same answer.
#[track_caller]
fn wrong_passwords(install: &Install, n: usize) {
    for _ in 0..n {
        assert_login_refused(&create_with_password(install, "not her password"));
    }
}

/// `user passwd alice` from `PW` to a new one: the password check of `token create
/// --password-stdin` then takes only the new one. The old one is refused with the wrong-password
/// answer and creates no token; the change is audited, without either password anywhere in the
/// output or the audit; and another user's password is left alone.
#[test]
fn passwd_replaces_the_password_that_token_create_checks() {
    let install = setup();
    let new_pw = "battery staple 42";
    let run = install.cli(
        &["user", "passwd", "alice", "--password-stdin"],
        &format!("{new_pw}\n"),
    );
    assert!(run.ok().is_empty(), "{run}");
    assert!(run.stderr.contains("password of 'alice' changed"), "{run}");
    assert!(!run.stderr.contains(new_pw), "{run}");

    // The old password: refused, and no token.
    assert_login_refused(&create_with_password(&install, PW));
    assert_eq!(token_ids(&install), Vec::<String>::new());

    // The new one works.
    assert_login_ok(&create_with_password(&install, new_pw));
    assert_eq!(token_ids(&install).len(), 1);

    // Only alice's password changed: root's is still PW.
    let root = install.cli(
        &[
            "token",
            "create",
            "--user",
            "root",
            "--name",
            "x",
            "--permission",
            "REPO_READ",
            "--password-stdin",
        ],
        &format!("{PW}\n"),
    );
    assert!(root.ok().starts_with("ggt_"), "{root}");

    let changed = audit_events(&install, "user.password_changed");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["target"], "alice");
    assert!(changed[0]["actor"].as_str().unwrap().starts_with("cli:"));
    let audit = install.cli_ok(&["audit", "--json"], "");
    assert!(!audit.contains(new_pw) && !audit.contains(PW), "{audit}");
}

/// `user passwd` for a user who does not exist fails, naming the user, before it reads a
/// password; it creates no user, records nothing, and changes no one's password.
#[test]
fn passwd_of_an_unknown_user_fails_naming_them_and_changes_nothing() {
    let install = setup();
    let users = install.cli_ok(&["user", "list", "--json"], "");
    let audit = install.cli_ok(&["audit", "--json"], "");
    let run = install.cli(
        &["user", "passwd", "bob", "--password-stdin"],
        "a new password\n",
    );
    run.fails_with("no user 'bob'");
    assert!(run.stdout.is_empty(), "{run}");
    assert_eq!(install.cli_ok(&["user", "list", "--json"], ""), users);
    assert_eq!(install.cli_ok(&["audit", "--json"], ""), audit);
    assert_login_ok(&create_with_password(&install, PW));
    assert!(!install.cli_ok(&["audit"], "").contains("a new password"));
}

/// A new password that is empty (an empty line, or no input at all), an access token (which
/// logins refuse, so the user could never log in again), or none because there is no terminal to
/// ask on: each is refused with its reason, and the old password keeps working, unaudited as a
/// change.
#[test]
fn passwd_refuses_an_empty_or_unusable_password_and_keeps_the_old_one() {
    let install = setup();
    let token = create_personal(&install, &[]);
    let token = token["token"].as_str().unwrap();
    let passwd = ["user", "passwd", "alice", "--password-stdin"];
    for stdin in ["\n", "\r\n", ""] {
        let run = install.cli(&passwd, stdin);
        run.fails_with("the password is empty");
    }
    let run = install.cli(&passwd, &format!("{token}\n"));
    run.fails_with("that is a gitgate access token, which logins refuse: choose another password");
    assert!(!run.stderr.contains(token), "{run}");
    let run = install.cli(&["user", "passwd", "alice"], "typed\n");
    run.fails_with("no terminal to ask for the password: pass it with --password-stdin");

    assert_eq!(
        audit_events(&install, "user.password_changed"),
        Vec::<Value>::new()
    );
    assert_login_ok(&create_with_password(&install, PW));
}

/// The lock: the first `LOCK_AFTER - 1` wrong passwords in a row leave alice unlocked, the next
/// one locks her password logins for `LOCK_SECS` (audited, shown by `user list`). While locked,
/// her right password is refused with the same answer, over the CLI and the REST API alike, and
/// creates nothing; more wrong passwords do not push the end back; her tokens keep working for
/// git. `user unlock` lifts the lock at once, for the REST API and the CLI (for an unknown user
/// it fails and changes nothing).
#[test]
fn wrong_passwords_in_a_row_lock_password_logins_until_unlocked() {
    let install = setup();
    let token = create_personal(&install, &[]);
    let secret = token["token"].as_str().unwrap().to_owned();
    let tokens = token_ids(&install);

    wrong_passwords(&install, LOCK_AFTER - 1);
    assert_eq!(alice(&install)["lockedUntil"], Value::Null);
    assert_eq!(alice_status(&install), "active");
    assert_eq!(audit_events(&install, "user.locked"), Vec::<Value>::new());

    let before = common::now_ms();
    wrong_passwords(&install, 1);
    let after = common::now_ms();
    let until = alice(&install)["lockedUntil"].as_i64().expect("locked");
    assert!(
        (before + LOCK_SECS * 1000..=after + LOCK_SECS * 1000).contains(&until),
        "locked until {until}, {before}..{after}"
    );
    assert_eq!(alice_status(&install), "locked");
    let locked = audit_events(&install, "user.locked");
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["target"], "alice");
    assert!(
        locked[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{LOCK_AFTER} wrong passwords")),
        "{locked:?}"
    );

    // The right password is refused now, and creates nothing; the operator is told the lock
    // is the cause.
    let run = create_with_password(&install, PW);
    assert_login_refused(&run);
    assert!(
        run.stderr
            .contains("Here it is the lock: password logins of 'alice' are locked until ")
            && run.stderr.contains("Z (gitgate user unlock alice)"),
        "{run}"
    );
    assert_eq!(token_ids(&install), tokens);
    // More wrong passwords neither lengthen the lock nor lock again.
    wrong_passwords(&install, LOCK_AFTER);
    assert_eq!(alice(&install)["lockedUntil"].as_i64(), Some(until));
    assert_eq!(audit_events(&install, "user.locked").len(), 1);

    // The same lock for the REST API; alice's token still works for git.
    let server = install.serve();
    let r = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.error_message().contains("wrong user name or password"),
        "{}",
        r.body
    );
    let git = install.git(
        install.path(),
        &["ls-remote", &server.url_with("alice", &secret, "team/app")],
    );
    assert!(git.ok().contains("refs/heads/main"), "{git}");

    // Unlocking someone unknown changes nothing.
    install
        .cli(&["user", "unlock", "bob"], "")
        .fails_with("no user 'bob'");
    assert_eq!(alice(&install)["lockedUntil"].as_i64(), Some(until));
    assert_eq!(audit_events(&install, "user.unlocked"), Vec::<Value>::new());

    let run = install.cli(&["user", "unlock", "alice"], "");
    assert!(run.ok().is_empty(), "{run}");
    assert!(
        run.stderr
            .contains("password logins of 'alice' are unlocked"),
        "{run}"
    );
    assert_eq!(alice(&install)["lockedUntil"], Value::Null);
    assert_eq!(alice_status(&install), "active");
    assert_eq!(audit_events(&install, "user.unlocked").len(), 1);
    let r = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(r.status, 200, "{}", r.body);

    assert_login_ok(&create_with_password(&install, PW));
    assert_eq!(token_ids(&install).len(), tokens.len() + 1);
}

/// `user list` shows how close a user is to the lock: their wrong passwords in a row against
/// the lock's count (`FAILED 3/10`; `failedLogins` and `lockAfterFailedLogins` in `--json`),
/// back to 0 after a right password.
#[test]
fn user_list_shows_how_close_a_user_is_to_the_lock() {
    let install = setup();
    let failed = |install: &Install| -> String {
        let text = install.cli_ok(&["user", "list"], "");
        let header = text.lines().next().unwrap();
        assert!(header.contains(" FAILED "), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("alice "))
            .unwrap_or_else(|| panic!("no alice in {text}"));
        line.split_whitespace().nth(3).unwrap().to_owned()
    };
    assert_eq!(alice(&install)["failedLogins"], 0);
    assert_eq!(failed(&install), format!("0/{LOCK_AFTER}"));
    wrong_passwords(&install, 3);
    let listed = alice(&install);
    assert_eq!(listed["failedLogins"], 3, "{listed}");
    assert_eq!(listed["lockAfterFailedLogins"], LOCK_AFTER, "{listed}");
    assert_eq!(failed(&install), format!("3/{LOCK_AFTER}"));
    assert_eq!(alice_status(&install), "active");
    // The right password sets the count back.
    assert_login_ok(&create_with_password(&install, PW));
    assert_eq!(alice(&install)["failedLogins"], 0);
    assert_eq!(failed(&install), format!("0/{LOCK_AFTER}"));
    // What it cannot show: wrong passwords a server counts in its memory while its store takes
    // no writes, and where they are meanwhile.
    let help = install.cli_ok(&["user", "list", "--help"], "");
    assert!(
        help.contains("counted in its memory only")
            && help.contains("could not record a wrong password"),
        "{help}"
    );
}

/// `user unlock` also forgets wrong passwords short of the lock: `LOCK_AFTER - 1` wrong, an
/// unlock, `LOCK_AFTER - 1` wrong again leave alice unlocked, and one more locks her.
#[test]
fn unlock_forgets_wrong_passwords_short_of_the_lock() {
    let install = setup();
    wrong_passwords(&install, LOCK_AFTER - 1);
    install.cli_ok(&["user", "unlock", "alice"], "");
    wrong_passwords(&install, LOCK_AFTER - 1);
    assert_eq!(alice(&install)["lockedUntil"], Value::Null);
    assert_eq!(alice_status(&install), "active");
    wrong_passwords(&install, 1);
    assert!(alice(&install)["lockedUntil"].as_i64().is_some());
    assert_eq!(alice_status(&install), "locked");
}

/// Only wrong passwords *in a row* count: the right one before the `LOCK_AFTER`th forgets the
/// earlier ones, so `LOCK_AFTER - 1` wrong, one right and `LOCK_AFTER - 1` wrong again leave
/// alice unlocked; one more wrong one then locks her (the count went on from zero, not stopped).
#[test]
fn a_right_password_before_the_lock_starts_the_count_again() {
    let install = setup();
    wrong_passwords(&install, LOCK_AFTER - 1);
    assert_login_ok(&create_with_password(&install, PW));
    wrong_passwords(&install, LOCK_AFTER - 1);
    assert_eq!(alice(&install)["lockedUntil"], Value::Null);
    assert_eq!(alice_status(&install), "active");
    assert_eq!(audit_events(&install, "user.locked"), Vec::<Value>::new());

    wrong_passwords(&install, 1);
    assert!(alice(&install)["lockedUntil"].as_i64().is_some());
    assert_login_refused(&create_with_password(&install, PW));
    assert_eq!(token_ids(&install).len(), 1);
}

/// `gitgate ARGS` with its wall clock `secs` seconds ahead (the lock is kept in wall-clock epoch
/// milliseconds, `clock::now_ms`, which libfaketime moves).
fn cli_later(install: &Install, lib: &str, secs: i64, args: &[&str], stdin: &str) -> common::Run {
    let config = install.path().join("gitgate.toml");
    assert!(config.exists(), "no config at {}", config.display());
    let mut cmd = common::gitgate_command(&config);
    cmd.current_dir(install.path())
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", format!("{secs:+}"))
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env_remove("FAKETIME_TIMESTAMP_FILE")
        .args(args);
    common::run(cmd, Some(stdin))
}

/// Without an administrator, the lock lifts by itself `LOCK_SECS` after it began: a minute
/// before, the right password is still refused and `user list` says locked; a minute after, it
/// is active and the right password works. The count was reset by the lock: one wrong password
/// after it does not lock again.
#[test]
fn the_lock_lifts_by_itself_after_the_lock_time() {
    let Some(lib) = common::faketime_library() else {
        return;
    };
    let install = setup();
    wrong_passwords(&install, LOCK_AFTER);
    assert!(alice(&install)["lockedUntil"].as_i64().is_some());
    let create = create_args();
    let pw = format!("{PW}\n");

    let soon = LOCK_SECS - 60;
    assert_login_refused(&cli_later(&install, lib, soon, &create, &pw));
    let list = cli_later(&install, lib, soon, &["user", "list"], "");
    assert!(list.ok().contains(" locked "), "{list}");
    assert_eq!(token_ids(&install), Vec::<String>::new());

    let later = LOCK_SECS + 60;
    let list = cli_later(&install, lib, later, &["user", "list"], "");
    assert!(!list.ok().contains(" locked "), "{list}");
    assert!(list.stdout.contains(" active "), "{list}");
    assert_login_refused(&cli_later(&install, lib, later, &create, "wrong\n"));
    assert_login_ok(&cli_later(&install, lib, later, &create, &pw));
    assert_eq!(token_ids(&install).len(), 1);
    // No administrator was involved.
    assert_eq!(audit_events(&install, "user.unlocked"), Vec::<Value>::new());
    // The JSON listing shows no lock that has ended.
    let list = cli_later(&install, lib, later, &["user", "list", "--json"], "");
    let alice_later = json_of(list.ok())
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .cloned()
        .unwrap();
    assert_eq!(alice_later["lockedUntil"], Value::Null, "{alice_later}");
}

/// A lock made before the wall clock went back an hour (an NTP correction) lasts the lock time
/// from the first login tried after the step, not an hour more: its end, an hour and a quarter
/// ahead of the clock by then, is moved to a lock time from then. Still locked at that login
/// (the lock stands), and a minute before the moved end; lifted a minute after it.
#[test]
fn a_lock_made_before_the_clock_went_back_lasts_no_longer_than_a_lock() {
    let Some(lib) = common::faketime_library() else {
        return;
    };
    let install = setup();
    wrong_passwords(&install, LOCK_AFTER);
    let locked = alice(&install)["lockedUntil"].as_i64().unwrap();
    let create = create_args();
    let pw = format!("{PW}\n");

    let back = -3600;
    assert_login_refused(&cli_later(&install, lib, back, &create, &pw));
    // Read at the clock gitgate has then: at the real one, the moved lock has ended.
    let list = cli_later(&install, lib, back, &["user", "list", "--json"], "");
    let moved = json_of(list.ok())
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .and_then(|u| u["lockedUntil"].as_i64())
        .unwrap_or_else(|| panic!("no lock at all: {list}"));
    assert!(
        moved < locked - 3_000_000,
        "the lock's end did not move: {locked} then {moved}"
    );
    assert_login_refused(&cli_later(
        &install,
        lib,
        back + LOCK_SECS - 60,
        &create,
        &pw,
    ));
    assert_login_ok(&cli_later(
        &install,
        lib,
        back + LOCK_SECS + 60,
        &create,
        &pw,
    ));
    assert_eq!(token_ids(&install).len(), 1);
}

/// An administrator's `user passwd` for a user who locked themselves out lifts the lock and
/// forgets the wrong passwords (tries at the old password): the new password works at once, the
/// CLI and the audit event say the lock went with it.
#[test]
fn passwd_lifts_a_lock_and_forgets_the_wrong_passwords() {
    let install = setup();
    wrong_passwords(&install, LOCK_AFTER);
    assert_eq!(alice_status(&install), "locked");
    let new_pw = "battery staple 42";
    let run = install.cli(
        &["user", "passwd", "alice", "--password-stdin"],
        &format!("{new_pw}\n"),
    );
    assert!(run.ok().is_empty(), "{run}");
    assert!(
        run.stderr
            .contains("the lock after wrong passwords is lifted"),
        "{run}"
    );
    assert_eq!(alice_status(&install), "active");
    assert_eq!(alice(&install)["lockedUntil"], Value::Null);
    let changed = audit_events(&install, "user.password_changed");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["detail"], "lock lifted", "{changed:?}");
    assert_login_ok(&create_with_password(&install, new_pw));
    // The count started again: a lock needs all its wrong passwords anew.
    wrong_passwords(&install, LOCK_AFTER - 1);
    assert_eq!(alice_status(&install), "active");
    // Without a lock to lift, the message and the event say nothing of one.
    let run = install.cli(
        &["user", "passwd", "alice", "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert!(!run.stderr.contains("lock"), "{run}");
    let changed = audit_events(&install, "user.password_changed");
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed.iter().any(|e| e["detail"] == ""), "{changed:?}");
}

/// A session on a terminal that `script` (util-linux) makes: what it shows is read as it comes,
/// and lines are typed once a prompt is up — shown, and echo off — not after a time a loaded
/// machine can outlast (typed ahead, a line could be echoed before the prompt turns echo off).
struct Terminal {
    script: std::process::Child,
    typing: Option<std::process::ChildStdin>,
    shown: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How long a terminal session waits for what it expects.
const TERMINAL_DEADLINE: Duration = Duration::from_secs(30);

impl Terminal {
    /// `line` run by `script`'s shell on a terminal of its own.
    fn start(line: &str) -> Terminal {
        let mut script = std::process::Command::new("script")
            .args(["-qec", line, "/dev/null"])
            .env_remove("GITGATE_CONFIG")
            .env_remove("GITGATE_LOG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs");
        let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut out = script.stdout.take().unwrap();
        let reader = std::thread::spawn({
            let shown = shown.clone();
            move || {
                use std::io::Read;
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = out.read(&mut chunk) {
                    shown.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }
        });
        Terminal {
            typing: script.stdin.take(),
            script,
            shown,
            reader: Some(reader),
        }
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).into_owned()
    }

    /// Waits until `done` holds for what the terminal shows (and the terminal itself).
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) {
        let start = std::time::Instant::now();
        while !done(&self.shown()) {
            assert!(
                start.elapsed() < TERMINAL_DEADLINE,
                "{what} never came; the terminal showed:\n{}",
                self.shown()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the terminal shows `text`.
    fn wait_for(&self, text: &str) {
        self.wait_until(text, |shown| shown.contains(text));
    }

    /// Waits until the `n`-th password prompt is up: shown, and the terminal's echo off.
    fn wait_for_prompt(&self, n: usize) {
        self.wait_until(&format!("password prompt {n}"), |shown| {
            let prompts =
                shown.matches("assword for ").count() + shown.matches("Retype it: ").count();
            prompts >= n && self.echo_off()
        });
    }

    /// Whether the terminal's echo is off: read from the terminal (`/dev/pts/N`) that the
    /// process `script` started has as its standard input, output or error (a shell running
    /// a command `</dev/tty` may hold its input as `/dev/tty`, which names no terminal here).
    fn echo_off(&self) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        let script = self.script.id().to_string();
        let Some(terminal) = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: the fields after the last ')'.
            let (_, rest) = stat.rsplit_once(')')?;
            (rest.split_whitespace().nth(1)? == script).then_some(())?;
            ["fd/0", "fd/1", "fd/2"].into_iter().find_map(|fd| {
                let file = std::fs::read_link(e.path().join(fd)).ok()?;
                file.starts_with("/dev/pts").then_some(file)
            })
        }) else {
            return false;
        };
        let Ok(tty) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&terminal)
        else {
            return false;
        };
        // SAFETY: tcgetattr fills the termios it is given, on a descriptor open here.
        let mut settings: libc::termios = unsafe { std::mem::zeroed() };
        let read = unsafe { libc::tcgetattr(std::os::fd::AsRawFd::as_raw_fd(&tty), &mut settings) };
        read == 0 && settings.c_lflag & libc::ECHO == 0
    }

    fn type_in(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.typing.as_mut().unwrap().write_all(bytes).unwrap();
    }

    /// Waits for the session to end, its input held open until then (its end would answer a
    /// prompt): whether it succeeded, and everything the terminal showed.
    fn finish(mut self) -> (bool, String) {
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.script.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < TERMINAL_DEADLINE,
                "the terminal session did not end; it showed:\n{}",
                self.shown()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        self.typing.take();
        self.reader.take().unwrap().join().unwrap();
        let mut err = String::new();
        if let Some(mut stderr) = self.script.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut err);
        }
        (status.success(), self.shown() + &err)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A test that failed half-way: the session goes with it.
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

/// `--password-stdin` at a terminal is refused before anything is read: the terminal would
/// echo the password typed (its prompt without the flag does not), and keep it on the screen.
#[test]
fn password_stdin_at_a_terminal_is_refused_and_nothing_is_echoed() {
    let install = Install::new();
    let line = format!(
        "{} --config {} user add dave --password-stdin",
        common::gitgate_bin(),
        install.path().join("gitgate.toml").display()
    );
    let terminal = Terminal::start(&line);
    terminal.wait_for("leave --password-stdin out");
    let (ok, shown) = terminal.finish();
    assert!(!ok, "{shown}");
    assert!(shown.contains("nothing was changed"), "{shown}");
    let users = install.cli(&["user", "list"], "");
    assert!(!users.stdout.contains("dave"), "{users}");
}

/// `gitgate ARGS` of `install` run on a terminal (`script` gives it one), typing `typed` a line
/// at a time, each once its prompt is up; (success, everything the terminal showed).
fn at_a_terminal(install: &Install, args: &[&str], typed: &str) -> (bool, String) {
    let mut line = format!(
        "{} --config {}",
        common::gitgate_bin(),
        install.path().join("gitgate.toml").display()
    );
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let mut terminal = Terminal::start(&line);
    for (n, l) in typed.split_inclusive('\n').enumerate() {
        terminal.wait_for_prompt(n + 1);
        terminal.type_in(l.as_bytes());
    }
    terminal.finish()
}

/// `sh -c SCRIPT gitgate CONFIG` on a terminal (`script` gives it one): `typed` is typed once
/// the first password prompt is up, and the terminal's input is held open until the session
/// ends (its end would answer a prompt), which it must once it has shown `last`; everything
/// the terminal showed.
fn shell_on_a_terminal(script: &str, config: &Path, typed: &[u8], last: &str) -> String {
    let mut terminal = Terminal::start(&format!(
        "sh -c '{}' {} {}",
        script.replace('\'', "'\\''"),
        common::gitgate_bin(),
        config.display()
    ));
    if !typed.is_empty() {
        terminal.wait_for_prompt(1);
        terminal.type_in(typed);
    }
    terminal.wait_for(last);
    terminal.finish().1
}

/// In a script on a terminal: wait (up to 30 s) until a prompt has turned the terminal's echo
/// off, which the command started in the background does once its prompt is up.
const UNTIL_ECHO_IS_OFF: &str = "i=0; until stty -a </dev/tty | grep -q -- ' -echo ' || \
     [ $i -ge 600 ]; do sleep 0.05; i=$((i+1)); done; ";

/// A stop signal while a prompt waits with echo off (on a store that is there already) sets the
/// terminal back to echoing, and the command ends as the signal ends it (128 + 15): a shell
/// such as dash does not set it back, and its user would type blind.
#[test]
fn a_command_stopped_at_its_password_prompt_sets_the_terminal_back() {
    let install = setup();
    let script = format!(
        "\"$0\" --config \"$1\" user passwd alice </dev/tty & p=$!; {UNTIL_ECHO_IS_OFF}\
         stty -a </dev/tty | grep -o -- ' -\\?echo ' | head -1 | sed 's/^/during:/'; \
         kill -TERM $p; wait $p; echo \"status=$?\"; \
         stty -a </dev/tty | grep -o -- ' -\\?echo ' | head -1 | sed 's/^/after:/'"
    );
    let shown = shell_on_a_terminal(&script, &install.path().join("gitgate.toml"), b"", "after:");
    assert!(
        shown.contains("during: -echo"),
        "the prompt turns echo off: {shown}"
    );
    assert!(shown.contains("status=143"), "{shown}");
    assert!(shown.contains("after: echo"), "echo is back: {shown}");
}

/// Ctrl-C at a password prompt ends the command as SIGINT would (130), with the terminal back to
/// echoing: on a store that is there, and on a first command's new store, which is taken back.
/// The prompt reads Ctrl-C as a character and raises SIGINT in its own thread, where the new
/// store's command blocks it: that command used to end with "interrupted" and exit 1.
#[test]
fn ctrl_c_at_a_password_prompt_exits_130_and_a_new_store_is_taken_back() {
    let install = setup();
    let store = install.path().join("gitgate.db");
    assert!(store.exists());
    let at_ctrl_c = |config: &Path, args: &str| {
        let script = format!(
            "\"$0\" --config \"$1\" {args} </dev/tty; echo \"status=$?\"; \
             stty -a </dev/tty | grep -o -- ' -\\?echo ' | head -1 | sed 's/^/after:/'"
        );
        shell_on_a_terminal(&script, config, b"\x03", "after:")
    };
    let config = install.path().join("gitgate.toml");
    let shown = at_ctrl_c(&config, "user passwd alice");
    assert!(shown.contains("status=130"), "{shown}");
    assert!(shown.contains("after: echo"), "echo is back: {shown}");

    // A config naming a store not made yet: the first command makes it.
    let text = std::fs::read_to_string(&config).unwrap();
    let fresh = install.path().join("fresh.toml");
    assert!(text.contains("gitgate.db"), "{text}");
    std::fs::write(&fresh, text.replace("gitgate.db", "fresh.db")).unwrap();
    let new_store = install.path().join("fresh.db");
    let shown = at_ctrl_c(&fresh, "user add bob --admin");
    assert!(shown.contains("status=130"), "{shown}");
    assert!(shown.contains("was taken back"), "{shown}");
    assert!(!shown.contains("interrupted"), "{shown}");
    assert!(shown.contains("after: echo"), "echo is back: {shown}");
    assert!(!new_store.exists(), "the new store was left: {shown}");

    // SIGQUIT (`kill -QUIT`) at the prompt takes the new store back too, and ends as it would.
    let script = format!(
        "\"$0\" --config \"$1\" user add bob --admin </dev/tty & p=$!; {UNTIL_ECHO_IS_OFF}\
         kill -QUIT $p; wait $p; echo \"status=$?\""
    );
    let shown = shell_on_a_terminal(&script, &fresh, b"", "status=");
    assert!(shown.contains("status=131"), "{shown}");
    assert!(shown.contains("was taken back"), "{shown}");
    for extra in ["", "-wal", "-shm"] {
        let left = format!("{}{extra}", new_store.display());
        assert!(!Path::new(&left).exists(), "{left} left: {shown}");
    }
}

/// At a prompt a new password is asked twice: two that differ change nothing (no user added,
/// the old password kept); two that match are set. (Typed passwords are not echoed: a typo
/// would otherwise become a password nobody knows.)
#[test]
fn a_password_typed_at_a_prompt_is_asked_twice() {
    let install = setup();
    let (ok, shown) = at_a_terminal(&install, &["user", "add", "bob"], "first-pw\nsecond-pw\n");
    assert!(!ok, "{shown}");
    assert!(shown.contains("Retype it:"), "{shown}");
    assert!(
        shown.contains("the two passwords typed differ; nothing changed"),
        "{shown}"
    );
    assert!(
        !shown.contains("first-pw") && !shown.contains("second-pw"),
        "echoed: {shown}"
    );
    let users = install.cli_ok(&["user", "list"], "");
    assert!(!users.contains("bob"), "{users}");

    let (ok, shown) = at_a_terminal(
        &install,
        &["user", "passwd", "alice"],
        "new-pw-1\nnew-pw-2\n",
    );
    assert!(!ok, "{shown}");
    assert!(
        shown.contains("the two passwords typed differ; nothing changed"),
        "{shown}"
    );
    assert_login_ok(&create_with_password(&install, PW));

    let (ok, shown) = at_a_terminal(&install, &["user", "add", "bob"], "bobs-pw\nbobs-pw\n");
    assert!(ok, "{shown}");
    assert!(shown.contains("added user 'bob'"), "{shown}");
}

/// A token whose owner is disabled is shown as git finds it, refused, not "active"; enabled
/// again, it is active again.
#[test]
fn a_token_of_a_disabled_owner_is_shown_as_refused() {
    let install = setup();
    let token = create_personal(&install, &[]);
    let id = token["id"].as_str().unwrap();
    install.cli_ok(&["user", "disable", "alice"], "");
    let shown = install.cli_ok(&["token", "show", id], "");
    assert!(
        shown.contains("status:      refused: its owner is disabled"),
        "{shown}"
    );
    let listed = install.cli_ok(&["token", "list", "--user", "alice"], "");
    assert!(
        listed.contains("refused: its owner is disabled"),
        "{listed}"
    );
    // A script is told the same, in one word: the dates alone say the token works.
    let status_of = |args: &[&str]| {
        let v = json_of(&install.cli_ok(args, ""));
        let t = if v.is_array() { v[0].clone() } else { v };
        t["status"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(
        status_of(&["token", "show", id, "--json"]),
        "owner-disabled"
    );
    assert_eq!(
        status_of(&["token", "list", "--user", "alice", "--json"]),
        "owner-disabled"
    );
    install.cli_ok(&["user", "enable", "alice"], "");
    let shown = install.cli_ok(&["token", "show", id], "");
    assert!(shown.contains("status:      active"), "{shown}");
    assert_eq!(status_of(&["token", "show", id, "--json"]), "active");
    install.cli_ok(&["token", "revoke", id], "");
    assert_eq!(status_of(&["token", "show", id, "--json"]), "revoked");
    // Who revoked it, from where, read from the audit.
    let shown = install.cli_ok(&["token", "show", id], "");
    let revoked = shown
        .lines()
        .find(|l| l.starts_with("revoked:"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        revoked.contains(" by cli:") && revoked.contains(" from \"local:uid="),
        "{shown}"
    );
}

/// `grant add` says what it did: a new grant, a level replaced (named), or nothing at all.
#[test]
fn grant_add_says_whether_it_added_replaced_or_changed_nothing() {
    let install = setup();
    // setup() gave alice write on team.
    let again = install.cli(&["grant", "add", "alice", "team", "write"], "");
    assert!(
        again.ok().is_empty()
            && again
                .stderr
                .contains("already has write on team; nothing changed"),
        "{again}"
    );
    let run = install.cli(&["grant", "add", "alice", "team", "read"], "");
    assert!(
        run.ok().is_empty() && run.stderr.contains("now has read on team, replacing write"),
        "{run}"
    );
    let audit = install.cli_ok(&["audit"], "");
    assert!(audit.contains("grant.changed"), "{audit}");
    assert!(audit.contains("team write -> read"), "{audit}");
}

/// Narrowing or removing a project's grant does not close a repository of it to a user who has
/// a grant of their own on that repository: the CLI says what they still hold there, rather than
/// that their tokens lose access.
#[test]
fn removing_a_project_grant_says_what_the_repository_grants_still_give() {
    let install = setup();
    install.cli_ok(&["grant", "add", "alice", "team/app", "admin"], "");
    let narrowed = install.cli(&["grant", "add", "alice", "team", "read"], "");
    assert!(
        narrowed.ok().is_empty()
            && narrowed.stderr.contains(
                "note: 'alice' still has admin on team/app (a grant on the repository itself"
            ),
        "{narrowed}"
    );
    let removed = install.cli(&["grant", "remove", "alice", "team"], "");
    assert!(
        removed.ok().is_empty()
            && removed.stderr.contains(
                "removed the grant of 'alice' on team; but 'alice' still has admin on team/app \
                 (a grant on the repository itself; the highest grant covering a repository \
                 counts)"
            )
            && !removed.stderr.contains("lose it at once"),
        "{removed}"
    );
    // A repository grant at or below the project's new level leaves nothing to say.
    install.cli_ok(&["grant", "add", "alice", "team", "admin"], "");
    let wider = install.cli(&["grant", "add", "alice", "team", "write"], "");
    assert!(
        wider.stderr.contains("still has admin on team/app"),
        "{wider}"
    );
    install.cli_ok(&["grant", "add", "alice", "team/app", "read"], "");
    let same = install.cli(&["grant", "add", "alice", "team", "admin"], "");
    assert!(!same.stderr.contains("still has"), "{same}");
}

/// Narrowing or removing a repository's grant does not close the repository to a user whose
/// project grant (or administrator role) covers it: the CLI says what they still hold there,
/// rather than that the change took effect.
#[test]
fn narrowing_a_repository_grant_says_what_the_project_grant_still_gives() {
    let install = setup();
    install.cli_ok(&["grant", "add", "alice", "team/app", "write"], "");
    let narrowed = install.cli(&["grant", "add", "alice", "team/app", "read"], "");
    assert!(
        narrowed.ok().is_empty()
            && narrowed.stderr.contains(
                "'alice' still has write on team/app through their grant on team (the highest \
                 grant covering a repository counts)"
            ),
        "{narrowed}"
    );
    let removed = install.cli(&["grant", "remove", "alice", "team/app"], "");
    assert!(
        removed.ok().is_empty()
            && removed.stderr.contains(
                "removed the grant of 'alice' on team/app; but 'alice' still has write on \
                 team/app through their grant on team"
            ),
        "{removed}"
    );
    // Where nothing else covers it, the change is what it says.
    let elsewhere = install.cli(&["grant", "add", "alice", "other/app", "read"], "");
    assert!(
        elsewhere.ok().is_empty() && !elsewhere.stderr.contains("still has"),
        "{elsewhere}"
    );
    let gone = install.cli(&["grant", "remove", "alice", "other/app"], "");
    assert!(
        gone.stderr.contains("their tokens lose it at once"),
        "{gone}"
    );
    // An administrator holds ADMIN everywhere, whatever is granted.
    let admin = install.cli(&["grant", "add", "root", "team/app", "read"], "");
    assert!(
        admin.ok().is_empty()
            && admin
                .stderr
                .contains("'root' is an administrator, and holds admin on every repository"),
        "{admin}"
    );
}

/// `--password-stdin` reads at most `MAX_PASSWORD_BYTES` (4096) and a line end: a longer
/// first line, or a stream with no line end (`< /dev/zero`), is refused, and no user is added.
#[test]
fn password_stdin_longer_than_the_bound_is_refused_and_nothing_is_added() {
    let install = Install::new();
    for (name, input) in [
        ("dave", format!("{}\n", "a".repeat(4097))),
        ("erin", "a".repeat(1 << 20)),
    ] {
        let err = install.cli_err(&["user", "add", name, "--password-stdin"], &input);
        assert!(err.contains("longer than 4096 bytes"), "{err}");
        assert!(err.contains("nothing was changed"), "{err}");
    }
    // The bound itself is taken.
    install.cli_ok(
        &["user", "add", "frank", "--password-stdin"],
        &format!("{}\r\n", "a".repeat(4096)),
    );
    let users = install.cli(&["user", "list"], "");
    assert!(users.stdout.contains("frank"), "{users}");
    assert!(!users.stdout.contains("dave"), "{users}");
    assert!(!users.stdout.contains("erin"), "{users}");
}
