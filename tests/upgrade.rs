//! End-to-end: a token store written by gitgate's first build (schema version 1, in
//! `fixtures/store-v1`, made as its README says) is opened by this build — every migration
//! since runs on it — and nothing in it is lost or changes meaning: its tokens clone and push
//! with the real git, its revoked, expired and disabled ones stay refused, its passwords still
//! log in, and its audit events are still there.

mod common;

use std::fs;

use common::{fixture, http_get, Sandbox, PASSWORD};

/// The secrets the first build printed for the fixture's tokens (they open nothing elsewhere).
const LAPTOP: &str = "ggt_xmh3qguqzq47_9heshpicvfdcSe1tKKoddKGjtCSK3ziZbUE_7CYGD6U_6imnaq";
const REVOKED: &str = "ggt_yifuus756rwj_LXyXYzqloPkRAdyJ7Hh7dUl0nCvOLUDUPKHaeBwwThU_awfpbn";
const EXPIRED: &str = "ggt_jegb6bvvbbak_df_uLjEL41PKB2jvF-UIVstm5pycEEkJkv_J1lca2Aw_xe5mx6";
const DISABLED_OWNER: &str = "ggt_b2aews3lyqet_Ow3mtA0h2oKxkje5xFBorasgsduhcDA3vxbdfyu14Hs_nxcyed";
const PROJECT: &str = "ggt_kq2sk3u46t7o_I2EozkvI-uPPxBwDnM4O6r4aGbo-sOiwmA0ZEdisZtU_fimle6";
const REPOSITORY: &str = "ggt_fig4shg25ytd_yOPLUJVbyrEYaZEXNg9z3_gVIOY0SwTF1vIsG84IPeE_j7eu3y";

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

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
    // Read and write, personal: clone and push with the real git.
    let work = sb.root().join("work");
    let url = server.url_with("alice", LAPTOP, "team/app");
    sb.git(sb.root(), &["clone", "-q", &url, work.to_str().unwrap()])
        .ok();
    let pushed = sb.commit_file(&work, "upgrade.txt", b"after the upgrade\n", "upgraded");
    sb.git(&work, &["push", "-q", "origin", "HEAD:main"]).ok();
    assert_eq!(sb.rev(&sb.bare("team/app"), "main"), pushed);
    // The scoped tokens, as CI sends them.
    for (secret, args) in [
        (PROJECT, vec!["ls-remote", "-q"]),
        (REPOSITORY, vec!["push", "-q", "--dry-run"]),
    ] {
        let header = format!("http.extraHeader=Authorization: Bearer {secret}");
        let mut argv = vec!["-c", header.as_str()];
        argv.extend(args);
        let plain = server.url("team/app");
        argv.push(&plain);
        if argv.contains(&"push") {
            argv.push("HEAD:main");
        }
        sb.git(&work, &argv).ok();
    }
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
    // The passwords the first build hashed still log in: the admin over the REST API.
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

    // Migrated to this build's version: 5 (a new migration raises it here too, and the
    // fixture then shows it runs on a store of every earlier version's data).
    assert_eq!(version(&sb.db()), 5, "migrated to this build's version");
    // The first build's audit events are all there, beside this run's.
    let audit: serde_json::Value = serde_json::from_str(sb.cli(&["audit", "--json"]).ok())
        .expect("audit --json is a JSON array");
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["at"].as_i64().is_some_and(|at| at < 1_735_776_000_000)) // 2025-01-02
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actions.len(), 13, "{actions:?}");
    for (action, times) in [
        ("user.added", 3),
        ("grant.added", 2),
        ("token.created", 6),
        ("token.revoked", 1),
        ("user.disabled", 1),
    ] {
        assert_eq!(
            actions.iter().filter(|a| **a == action).count(),
            times,
            "{action}: {actions:?}"
        );
    }
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
