//! The token lifecycle through the CLI: the same rules as the REST API (they share
//! `lifecycle.rs`), driven with the real `gitgate` binary on a temporary store.

mod common;
mod lifecycle_support;

use lifecycle_support::{Install, PW};
use serde_json::{json, Value};

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
    let again = install.cli_err(&["token", "revoke", id], "");
    assert!(again.contains("already revoked"), "{again}");
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
    let scoped = json_of(&install.cli_ok(
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
    ));
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

#[test]
fn policy_show_and_set() {
    let install = setup();
    let old = create_personal(&install, &[]);
    let shown = json_of(&install.cli_ok(&["policy", "show", "--json"], ""));
    assert_eq!(shown["expiryRequired"], false);
    assert_eq!(shown["nonCompliantTokens"], json!([]));

    install.cli_ok(
        &[
            "policy",
            "set",
            "--expiry-required",
            "yes",
            "--max-expiry-days",
            "30",
        ],
        "",
    );
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
    assert!(err.contains("yes or no"), "{err}");
    install.cli_err(&["policy", "set", "--max-expiry-days", "0"], "");
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
