//! End-to-end: a token store written by gitgate's first build (schema version 1, in
//! `fixtures/store-v1`, made as its README says) is opened by this build — every migration
//! since runs on it — and nothing in it is lost or changes meaning: its tokens clone and push
//! with the real git, its revoked, expired and disabled ones stay refused, its passwords still
//! log in, and its audit events are still there.

mod common;

use std::fs;

use common::{basic, fixture, http_get, Sandbox, PASSWORD};

/// The secrets the first build printed for the fixture's tokens (they open nothing elsewhere).
const LAPTOP: &str = "ggt_xmh3qguqzq47_9heshpicvfdcSe1tKKoddKGjtCSK3ziZbUE_7CYGD6U_6imnaq";
const REVOKED: &str = "ggt_yifuus756rwj_LXyXYzqloPkRAdyJ7Hh7dUl0nCvOLUDUPKHaeBwwThU_awfpbn";
const EXPIRED: &str = "ggt_jegb6bvvbbak_df_uLjEL41PKB2jvF-UIVstm5pycEEkJkv_J1lca2Aw_xe5mx6";
const DISABLED_OWNER: &str = "ggt_b2aews3lyqet_Ow3mtA0h2oKxkje5xFBorasgsduhcDA3vxbdfyu14Hs_nxcyed";
const PROJECT: &str = "ggt_kq2sk3u46t7o_I2EozkvI-uPPxBwDnM4O6r4aGbo-sOiwmA0ZEdisZtU_fimle6";
const REPOSITORY: &str = "ggt_fig4shg25ytd_yOPLUJVbyrEYaZEXNg9z3_gVIOY0SwTF1vIsG84IPeE_j7eu3y";

/// The audit events the first build wrote (action|target|detail|actor), in order.
const FIRST_BUILD_AUDIT: [&str; 13] = [
    "user.added|alice|role=user|cli:unknown",
    "user.added|bob|role=user|cli:unknown",
    "user.added|root|role=admin|cli:unknown",
    "grant.added|alice|team write|cli:unknown",
    "grant.added|bob|team read|cli:unknown",
    "token.created|xmh3qguqzq47|personal token 'laptop' for alice with REPO_WRITE, expires never|cli:unknown",
    "token.created|yifuus756rwj|personal token 'old' for alice with REPO_READ, expires never|cli:unknown",
    "token.created|jegb6bvvbbak|personal token 'short' for alice with REPO_READ, expires 2025-01-02|cli:unknown",
    "token.created|b2aews3lyqet|personal token 'bobs' for bob with REPO_READ, expires never|cli:unknown",
    "token.created|kq2sk3u46t7o|project token 'ci' for project:team with PROJECT_READ,REPO_READ, expires never|cli:unknown",
    "token.created|fig4shg25ytd|repository token 'deploy' for repo:team/app with REPO_WRITE, expires never|cli:unknown",
    "token.revoked|yifuus756rwj|token 'old' of alice|cli:unknown",
    "user.disabled|bob||cli:unknown",
];

#[test]
fn a_store_of_the_first_build_keeps_its_tokens_users_and_audit() {
    let sb = Sandbox::new();
    sb.create_repo("team/app");
    fs::copy(fixture("store-v1/gitgate.db"), sb.db()).unwrap();
    let version = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&sb.db()), 1, "the fixture is a version 1 store");

    let server = sb.serve();
    // The start says what it did to the file.
    assert!(
        server
            .log_text()
            .contains("migrated the token store from schema 1 to 6"),
        "{}",
        server.log_text()
    );
    // Read and write, personal: clone and push with the real git.
    let work = sb.root().join("work");
    let url = server.url_with("alice", LAPTOP, "team/app");
    sb.git(sb.root(), &["clone", "-q", &url, work.to_str().unwrap()])
        .ok();
    let pushed = sb.commit_file(&work, "upgrade.txt", b"after the upgrade\n", "upgraded");
    sb.git(&work, &["push", "-q", "origin", "HEAD:main"]).ok();
    assert_eq!(sb.rev(&sb.bare("team/app"), "main"), pushed);
    // The scoped tokens, as CI sends them.
    let bearer = |secret: &str, args: &[&str]| {
        let header = format!("http.extraHeader=Authorization: Bearer {secret}");
        let plain = server.url("team/app");
        let mut argv = vec!["-c", header.as_str()];
        argv.extend(args);
        argv.push(&plain);
        if args.contains(&"push") {
            argv.push("HEAD:main");
        }
        sb.git(&work, &argv)
    };
    bearer(PROJECT, &["ls-remote", "-q"]).ok();
    bearer(REPOSITORY, &["push", "-q", "--dry-run"]).ok();
    // Each kept its permissions: the project token reads and no more.
    bearer(PROJECT, &["push", "-q", "--dry-run"])
        .fails_with("token 'ci' has REPO_READ on team/app; push needs REPO_WRITE");
    // What was refused stays refused, for the same reason.
    for (user, secret, said) in [
        ("alice", REVOKED, "token 'old' has been revoked"),
        ("alice", EXPIRED, "token 'short' expired on 2025-01-02"),
        ("bob", DISABLED_OWNER, "user 'bob' is disabled"),
    ] {
        let url = server.url_with(user, secret, "team/app");
        sb.git(sb.root(), &["ls-remote", &url])
            .fails_with(&format!("remote: {said}"));
    }
    // bob's read grant is still a read grant: enabled again, his token reads but cannot push.
    sb.cli(&["user", "enable", "bob"]).ok();
    let url = server.url_with("bob", DISABLED_OWNER, "team/app");
    sb.git(sb.root(), &["ls-remote", &url]).ok();
    sb.git(&work, &["push", "--dry-run", &url, "HEAD:main"])
        .fails_with("user 'bob' has read access to team/app; push needs write");
    // The passwords the first build hashed still log in, and only with themselves; the roles
    // are what they were (root an admin, alice not).
    let rest = |user: &str, password: &str, of: &str| {
        http_get(
            server.port,
            &format!("/rest/access-tokens/1.0/users/{of}"),
            Some(&basic(user, password)),
        )
        .status
    };
    for user in ["alice", "bob", "root"] {
        assert_eq!(rest(user, PASSWORD, user), 200, "{user} logs in");
        assert_eq!(rest(user, "not-the-password", user), 401, "{user}");
    }
    assert_eq!(rest("alice", PASSWORD, "bob"), 403, "alice is no admin");
    assert_eq!(rest("bob", PASSWORD, "alice"), 403, "bob is no admin");
    assert_eq!(rest("root", PASSWORD, "bob"), 200, "root is");
    let resp = http_get(
        server.port,
        "/rest/access-tokens/1.0/users/alice",
        Some(&basic("root", PASSWORD)),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let tokens: serde_json::Value = serde_json::from_str(&resp.text()).unwrap();
    let names: Vec<&str> = tokens["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"laptop") && names.contains(&"short") && !names.contains(&"old"),
        "{names:?}"
    );
    drop(server);

    // Migrated to this build's version: 6 (a new migration raises it here too, and the
    // fixture then shows it runs on a store of every earlier version's data).
    assert_eq!(version(&sb.db()), 6, "migrated to this build's version");
    // The grants as they were, no more.
    let grants = sb.cli_json(&["grant", "list", "--json"]);
    let grants: Vec<(&str, &str, &str)> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let field = |k: &str| g[k].as_str().unwrap_or_default();
            (field("user"), field("target"), field("level"))
        })
        .collect();
    assert_eq!(
        grants,
        [("alice", "team", "write"), ("bob", "team", "read")],
        "{grants:?}"
    );
    // The first build's audit events, each as it was written, beside this run's.
    let audit: serde_json::Value = serde_json::from_str(sb.cli(&["audit", "--json"]).ok())
        .expect("audit --json is a JSON array");
    let mut first: Vec<(i64, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["at"].as_i64().is_some_and(|at| at < 1_735_776_000_000)) // 2025-01-02
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (
                e["id"].as_i64().unwrap(),
                [
                    field("action"),
                    field("target"),
                    field("detail"),
                    field("actor"),
                ]
                .join("|"),
            )
        })
        .collect();
    first.sort();
    let first: Vec<&str> = first.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(first, FIRST_BUILD_AUDIT, "{first:#?}");
    // They name no request (the column migration 6 added): `null`, not a guess.
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["at"].as_i64().is_some_and(|at| at < 1_735_776_000_000))
            .all(|e| e.get("requestId") == Some(&serde_json::Value::Null)),
        "{audit}"
    );
    // And the token's record as the first build wrote it, now used by this one.
    let show = sb.cli_json(&["token", "show", "xmh3qguqzq47", "--json"]);
    assert_eq!(show["name"], "laptop", "{show}");
    assert_eq!(show["user"], "alice", "{show}");
    assert_eq!(
        show["permissions"],
        serde_json::json!(["REPO_WRITE"]),
        "{show}"
    );
    assert_eq!(
        show["createdAt"].as_i64().map(|at| at / 86_400_000),
        Some(20_089),
        "{show}"
    );
    assert!(show["lastUsedAt"].as_i64().is_some(), "{show}");
}

/// A command of a newer gitgate migrates the store as `serve` does, a reading one such as
/// `token list` too, and says so on stderr — a server still running the older build refuses
/// every token from then on — once: the next command finds nothing to migrate.
#[test]
fn a_command_that_migrates_the_store_says_so_once() {
    let sb = Sandbox::new();
    fs::copy(fixture("store-v1/gitgate.db"), sb.db()).unwrap();
    let first = sb.cli(&["token", "list"]);
    let listed = first.ok().to_owned();
    assert!(listed.contains("laptop"), "{first}");
    assert!(
        first.stderr.contains(&format!(
            "note: migrated the token store {} from schema 1 to 6: a gitgate older than this \
             one that still serves it now refuses every token (503)",
            sb.db().display()
        )),
        "{first}"
    );
    let again = sb.cli(&["token", "list"]);
    assert_eq!(again.ok(), listed);
    assert!(!again.stderr.contains("migrated"), "{again}");
}

/// A store that must be migrated as it is opened, while another process holds its write lock
/// (a `sqlite3` shell inside `BEGIN IMMEDIATE`; in WAL mode that lock is on the `-shm`): the
/// command stops after the busy timeout naming that process and what to do, as a lock met
/// after the open is named, and nothing is migrated. Only a holder in `locking_mode=EXCLUSIVE`
/// (a lock on the store file itself) used to be named; this one was "another process".
#[test]
fn a_migration_waiting_on_another_processs_write_lock_names_that_process() {
    let sb = Sandbox::new();
    fs::copy(fixture("store-v1/gitgate.db"), sb.db()).unwrap();
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // This process holds the write lock, as a sqlite3 shell inside `BEGIN IMMEDIATE` would.
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let listed = sb.cli(&["token", "list"]);
    let said = listed.fails_with("keeps it locked for more than 5 s");
    assert!(
        said.contains(&format!("process {} (", std::process::id()))
            && said.contains("COMMIT or ROLLBACK")
            && said.contains("nothing was changed"),
        "{said}"
    );
    conn.execute_batch("ROLLBACK").unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1, "migrated all the same");
}
