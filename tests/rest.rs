//! The management REST API end to end: the real `gitgate serve` binary, a real HTTP client over
//! TCP, the real `git`, and the CLI to set users and grants up. Each test has its own server and
//! store, so they run in parallel.

mod common;
mod lifecycle_support;

use std::time::{Duration, Instant};

use lifecycle_support::{Api, Auth, Install, Server, API, PW};
use serde_json::{json, Value};

/// alice (user, write on team), bob (user, write on team), root (admin); a server running.
fn setup() -> (Install, Server) {
    let install = Install::new();
    install.add_user("alice", false);
    install.add_user("bob", false);
    install.add_user("root", true);
    install.cli_ok(&["grant", "add", "alice", "team", "write"], "");
    install.cli_ok(&["grant", "add", "bob", "team", "write"], "");
    let server = install.serve();
    (install, server)
}

/// Create a token over REST and return (id, secret).
fn create(server: &Server, who: &str, path: &str, body: Value) -> (String, String) {
    let r = server.api("PUT", path, who, &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

fn personal(server: &Server, user: &str, perms: &[&str]) -> (String, String) {
    create(
        server,
        user,
        &format!("/users/{user}"),
        json!({"name": "laptop", "permissions": perms}),
    )
}

/// An API call as alice (her password), written by hand: `extra` header lines (each ending in
/// CRLF) and the body as given.
fn as_alice(
    server: &Server,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> common::Response {
    let head = format!(
        "{method} {API}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Authorization: {auth}\r\nContent-Length: {len}\r\n{extra}\r\n{body}",
        port = server.port,
        auth = common::basic("alice", PW),
        len = body.len(),
    );
    common::try_raw_http(server.port, head.as_bytes()).unwrap()
}

/// `git ls-remote` with a secret as the Basic password; returns (success, stderr).
fn ls_remote(install: &Install, server: &Server, user: &str, secret: &str) -> (bool, String) {
    let out = install.git(
        install.path(),
        &["ls-remote", &server.url_with(user, secret, "team/app")],
    );
    (out.success(), out.stderr)
}

/// Wait for the server's off-path last-used write to show up in the API.
fn last_authenticated(server: &Server, user: &str, id: &str, newer_than: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = server
            .api("GET", &format!("/users/{user}/{id}"), "root", "")
            .json();
        if let Some(at) = v["lastAuthenticated"]
            .as_i64()
            .filter(|at| *at > newer_than)
        {
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "lastAuthenticated never moved past {newer_than}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn token_created_over_rest_clones_with_git_and_revocation_is_immediate() {
    let (install, server) = setup();
    let r = server.api(
        "PUT",
        "/users/alice",
        "alice",
        &json!({"name": "laptop", "permissions": ["REPO_WRITE"], "expiryDays": 30}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_string();
    let secret = v["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("ggt_") && secret.contains(&id));
    assert_eq!(v["name"], "laptop");
    assert_eq!(v["permissions"], json!(["REPO_WRITE"]));
    assert_eq!(v["user"]["name"], "alice");
    assert_eq!(v["user"]["slug"], "alice");
    assert_eq!(v["user"]["active"], true);
    let created = v["createdDate"].as_i64().unwrap();
    let expiry = v["expiryDate"].as_i64().unwrap();
    assert_eq!(expiry - created, 30 * 86_400_000);
    assert!(v.get("lastAuthenticated").is_none());

    // The list and the single view never carry the secret.
    let list = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(list.status, 200);
    assert!(!list.body.contains(&secret));
    assert_eq!(list.json()["values"][0]["id"], id.as_str());
    let one = server.api("GET", &format!("/users/alice/{id}"), "alice", "");
    assert_eq!(one.status, 200);
    assert!(one.json().get("token").is_none());
    assert_eq!(one.json()["expiryDate"], expiry);

    // Clone with the real git, then the last-used time appears in the API.
    let clone_dir = install.path().join("clone");
    install.git_ok(
        install.path(),
        &[
            "clone",
            "-q",
            &server.url_with("alice", &secret, "team/app"),
            clone_dir.to_str().unwrap(),
        ],
    );
    assert!(clone_dir.join("README").exists());
    let first = last_authenticated(&server, "alice", &id, 0);
    assert!(first >= created);
    // Uses are written at most every 5 s per token: a fetch after that moves it on.
    std::thread::sleep(Duration::from_millis(
        gitgate::gate::LAST_USE_INTERVAL_MS as u64 + 500,
    ));
    install.git_ok(&clone_dir, &["fetch", "-q", "origin"]);
    let second = last_authenticated(&server, "alice", &id, first);
    assert!(second > first);
    let listed = server.api("GET", "/users/alice", "alice", "").json();
    assert_eq!(listed["values"][0]["lastAuthenticated"], second);
    assert_eq!(listed["values"][0]["lastAuthenticatedFrom"], "127.0.0.1");

    // A DELETE takes no body: a field is refused, and revokes nothing.
    let dry = server.api(
        "DELETE",
        &format!("/users/alice/{id}"),
        "alice",
        r#"{"dryRun":true}"#,
    );
    assert_eq!(dry.status, 400, "{}", dry.body);
    assert!(dry
        .error_message()
        .contains("\"dryRun\": this call takes no body"));
    assert_eq!(
        server.api("GET", "/users/alice", "alice", "").json()["size"],
        1
    );
    // Revoke over REST: 204, and the very next git request is refused.
    let del = server.api("DELETE", &format!("/users/alice/{id}"), "alice", "");
    assert_eq!(del.status, 204, "{}", del.body);
    assert!(del.body.is_empty());
    let (ok, stderr) = ls_remote(&install, &server, "alice", &secret);
    assert!(!ok);
    assert!(stderr.contains("revoked"), "{stderr}");
    assert_eq!(
        server
            .api("GET", &format!("/users/alice/{id}"), "alice", "")
            .status,
        404
    );
    assert_eq!(
        server.api("GET", "/users/alice", "alice", "").json()["size"],
        0
    );
    // Again: gone, as the GET says (and as Bitbucket, where revoking deletes, answers).
    let again = server.api("DELETE", &format!("/users/alice/{id}"), "alice", "");
    assert_eq!(again.status, 404);
    assert!(again.error_message().contains("has been revoked"));
}

#[test]
fn who_may_do_what() {
    let (install, server) = setup();
    let (id, _) = personal(&server, "alice", &["REPO_READ"]);
    let item = format!("/users/alice/{id}");
    let body = json!({"name": "x", "permissions": ["REPO_READ"]}).to_string();

    // Another user: nothing of alice's.
    for (method, path, b) in [
        ("GET", "/users/alice", ""),
        ("PUT", "/users/alice", body.as_str()),
        ("GET", item.as_str(), ""),
        ("POST", item.as_str(), body.as_str()),
        ("DELETE", item.as_str(), ""),
    ] {
        let r = server.api(method, path, "bob", b);
        assert_eq!(r.status, 403, "bob {method} {path}: {}", r.body);
        r.error_message();
    }
    // Nor can bob reach it through his own collection.
    assert_eq!(
        server
            .api("GET", &format!("/users/bob/{id}"), "bob", "")
            .status,
        404
    );
    // Who asks before what they ask: one who may not act on alice's tokens is told so (each
    // was a 400 about the body), and nothing changes. Through bob's own collection, her token
    // is the 404 a GET of it is.
    let (rotate, own) = (format!("{item}/rotate"), format!("/users/bob/{id}"));
    let own_rotate = format!("{own}/rotate");
    let (overlap, unknown) = (r#"{"overlapSeconds":-1}"#, r#"{"bogus":1}"#);
    let (not_his, hidden) = ("only manage your own tokens", "no token with id");
    let only_admins = "only administrators (the admin role) can manage project";
    for (who, method, path, b, status, said) in [
        (
            "bob",
            "PUT",
            "/users/alice",
            "{}",
            403,
            "only create personal tokens for",
        ),
        (
            "bob",
            "PUT",
            "/users/alice",
            "[",
            403,
            "only create personal tokens for",
        ),
        (
            "root",
            "PUT",
            "/users/alice",
            "{}",
            403,
            "administrators cannot create",
        ),
        ("bob", "POST", &rotate, overlap, 403, not_his),
        (
            "root",
            "POST",
            &rotate,
            overlap,
            403,
            "only 'alice' can rotate",
        ),
        ("bob", "POST", &item, unknown, 403, not_his),
        ("bob", "DELETE", &item, unknown, 403, not_his),
        ("bob", "POST", &own_rotate, overlap, 404, hidden),
        ("bob", "POST", &own, unknown, 404, hidden),
        ("bob", "DELETE", &own, unknown, 404, hidden),
        // Project and repository tokens are administrators' alone: a key or a path shape they
        // could put right is not told to anyone else (each was a 400 or a 404).
        ("bob", "GET", "/projects/te!am", "", 403, only_admins),
        (
            "bob",
            "PUT",
            "/projects/team/repos/a!pp",
            "{}",
            403,
            "only administrators (the admin role) can create",
        ),
        ("bob", "GET", "/projects/team/repos", "", 403, only_admins),
        (
            "root",
            "GET",
            "/projects/te!am",
            "",
            400,
            "is not a project key",
        ),
        (
            "root",
            "GET",
            "/projects/team/repos/a!pp",
            "",
            400,
            "is not a repository",
        ),
        (
            "root",
            "GET",
            "/projects/team/repos",
            "",
            404,
            "names the repository",
        ),
    ] {
        let r = server.api(method, path, who, b);
        assert_eq!(r.status, status, "{who} {method} {path} {b}: {}", r.body);
        assert!(r.error_message().contains(said), "{who} {path}: {}", r.body);
    }
    let v = server.api("GET", &item, "alice", "").json();
    assert_eq!((&v["name"], v.get("rotatedDate")), (&json!("laptop"), None));
    let listed = server.api("GET", "/users/alice", "alice", "").json();
    assert_eq!(listed["size"], 1);
    // Her own bad bodies are still told to her, as they were.
    for (method, path, b, said) in [
        ("PUT", "/users/alice", "{}", "\"name\" is required"),
        (
            "POST",
            &rotate,
            overlap,
            "\"overlapSeconds\" must be a whole number",
        ),
        (
            "POST",
            &item,
            unknown,
            "unknown field \"bogus\": this call takes \"name\"",
        ),
        (
            "DELETE",
            &item,
            unknown,
            "unknown field \"bogus\": this call takes no body",
        ),
    ] {
        let r = server.api(method, path, "alice", b);
        assert_eq!(r.status, 400, "alice {method} {path} {b}: {}", r.body);
        assert!(r.error_message().contains(said), "{path}: {}", r.body);
    }

    // An admin cannot create a personal token for someone else...
    let r = server.api("PUT", "/users/alice", "root", &body);
    assert_eq!(r.status, 403);
    assert!(r
        .error_message()
        .contains("administrators cannot create personal tokens"));
    // ...nor rotate one (that would hand the admin a working secret)...
    let r = server.api("POST", &format!("{item}/rotate"), "root", "");
    assert_eq!(r.status, 403);
    assert!(r.error_message().contains("only 'alice' can rotate"));
    // ...but lists, shows, edits and revokes anyone's.
    assert_eq!(
        server.api("GET", "/users/alice", "root", "").json()["size"],
        1
    );
    assert_eq!(server.api("GET", &item, "root", "").status, 200);
    let r = server.api(
        "POST",
        &item,
        "root",
        &json!({"name": "renamed"}).to_string(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "renamed");
    assert_eq!(server.api("DELETE", &item, "root", "").status, 204);
    // Users list, and create, their own.
    assert_eq!(server.api("GET", "/users/bob", "bob", "").status, 200);
    personal(&server, "bob", &["REPO_READ"]);
    // An admin asking for a user that does not exist.
    assert_eq!(server.api("GET", "/users/nobody", "root", "").status, 404);

    // Project and repository tokens are for admins only: an admin grant there is not enough
    // (a documented difference from Bitbucket's HTTP access tokens).
    install.cli_ok(&["grant", "add", "alice", "team", "admin"], "");
    install.cli_ok(&["grant", "add", "alice", "team/app", "admin"], "");
    for path in ["/projects/team", "/projects/team/repos/app"] {
        let r = server.api("PUT", path, "alice", &body);
        assert_eq!(r.status, 403, "{path}");
        assert!(r.error_message().contains(
            "only administrators (the admin role) can create project and repository tokens: a \
             grant of admin on a project or repository is not enough"
        ));
        let r = server.api("GET", path, "alice", "");
        assert_eq!(r.status, 403, "{path}");
        assert!(r.error_message().contains(
            "only administrators (the admin role) can manage project and repository tokens"
        ));
    }
    // Only admins set the policy; anyone may read it.
    let r = server.api(
        "PUT",
        "/admin/policy",
        "alice",
        &json!({"expiryRequired": true}).to_string(),
    );
    assert_eq!(r.status, 403);
    assert_eq!(server.api("GET", "/admin/policy", "alice", "").status, 200);
    // Nor is she told what is wrong with a policy she may not set, or with a target or body
    // for a token she may not create (each was a 400 about them), and nothing changes.
    let policy_only = "only administrators can change the token policy";
    let admins_only = "only administrators (the admin role) can create";
    for (path, b, said) in [
        ("/admin/policy", r#"{"expiryRequired":"yes"}"#, policy_only),
        ("/admin/policy", unknown, policy_only),
        ("/projects/team", "{}", admins_only),
        ("/projects/team/repos/app", "{}", admins_only),
        ("/projects/rest", &body, admins_only),
        ("/projects/rest", "{}", admins_only),
        ("/projects/rest/repos/app", "{}", admins_only),
    ] {
        let r = server.api("PUT", path, "alice", b);
        assert_eq!(r.status, 403, "alice PUT {path} {b}: {}", r.body);
        assert!(r.error_message().contains(said), "{path}: {}", r.body);
    }
    let policy = server.api("GET", "/admin/policy", "alice", "").json();
    assert_eq!(
        policy,
        json!({"expiryRequired": false, "maxExpiryDays": null})
    );
    let every = server.api("GET", "/admin/tokens", "root", "").json();
    assert_eq!(every["size"], 1, "bob's token alone: {every}");
    // An administrator's bad bodies and targets are still told, as they were.
    for (path, b, said) in [
        (
            "/admin/policy",
            r#"{"expiryRequired":"yes"}"#,
            "must be true or false",
        ),
        ("/projects/team", "{}", "\"name\" is required"),
        ("/projects/rest", "{}", "/rest/ is the REST API's"),
    ] {
        let r = server.api("PUT", path, "root", b);
        assert_eq!(r.status, 400, "root PUT {path} {b}: {}", r.body);
        assert!(r.error_message().contains(said), "{path}: {}", r.body);
    }
    assert_eq!(server.api("GET", "/admin/tokens", "alice", "").status, 403);
    // Nor is a bad or repeated filter told to her before that she may not list at all.
    for query in [
        "limit=abc",
        "compliant=maybe",
        "compliant=true&compliant=false",
    ] {
        let r = server.api("GET", &format!("/admin/tokens?{query}"), "alice", "");
        assert_eq!(r.status, 403, "{query}: {}", r.body);
        assert!(r
            .error_message()
            .contains("only administrators can list every token"));
    }
}

/// A header with a scheme gitgate does not take, or a token with none, is refused over the API
/// in the API's terms (a user name and password), never with git's advice to send a token.
#[test]
fn an_unknown_scheme_or_a_bare_token_is_told_the_api_takes_a_password() {
    let (_install, server) = setup();
    let (_, secret) = personal(&server, "alice", &["REPO_WRITE"]);
    for (header, said) in [
        (
            format!("token {secret}"),
            "unusable Authorization header: the scheme is not Basic; the REST API takes your \
             gitgate user name and password with HTTP Basic",
        ),
        (
            secret.clone(),
            "unusable Authorization header: it holds a gitgate token, and the REST API takes \
             your gitgate user name and password with HTTP Basic (not a token)",
        ),
    ] {
        let request = format!(
            "GET {API}/users/alice HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {header}\r\n\
             Connection: close\r\n\r\n"
        );
        let resp = common::raw_http(server.port, request.as_bytes());
        assert_eq!(resp.status, 401, "{}", resp.text());
        assert!(resp.text().contains(said), "{}", resp.text());
        assert!(!resp.text().contains("Bearer"), "{}", resp.text());
        assert!(!resp.text().contains(&secret), "{}", resp.text());
    }
}

#[test]
fn tokens_and_bad_passwords_cannot_manage_tokens() {
    let (install, server) = setup();
    let (_, secret) = personal(&server, "alice", &["REPO_WRITE"]);
    let path = format!("{API}/users/alice");

    let r = server.request("GET", &path, Auth::Basic("alice", &secret), "");
    assert_eq!(r.status, 401);
    assert!(r
        .error_message()
        .contains("access tokens cannot be used to manage tokens"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"gitgate\"")
    );

    let r = server.request("GET", &path, Auth::Bearer(&secret), "");
    assert_eq!(r.status, 401);
    assert!(r.error_message().contains("access tokens cannot be used"));

    let r = server.request(
        "PUT",
        &path,
        Auth::Basic("alice", "wrong"),
        r#"{"name":"x","permissions":["REPO_READ"]}"#,
    );
    assert_eq!(r.status, 401);
    assert!(r.error_message().contains("wrong user name or password"));
    assert_eq!(
        r.json()["errors"][0]["exceptionName"],
        "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"
    );

    // An empty password is answered for the API, which wants a password, not a token.
    let r = server.request("GET", &path, Auth::Basic("alice", ""), "");
    assert_eq!(r.status, 401);
    assert!(
        r.error_message()
            .contains("the REST API takes your gitgate user name and password"),
        "{}",
        r.body
    );
    assert!(
        !r.error_message()
            .contains("gitgate access token as the password"),
        "{}",
        r.body
    );

    // So is an empty user name (`curl -u :PASSWORD`, a script's unset variable): said as such,
    // not as a name with "capitals or characters user names do not have".
    let r = server.request("GET", &path, Auth::Basic("", "some password"), "");
    assert_eq!(r.status, 401);
    assert!(
        r.error_message().contains("the user name is empty")
            && !r.error_message().contains("capitals"),
        "{}",
        r.body
    );
    // A token given so is still refused as a token.
    let r = server.request("GET", &path, Auth::Basic("", &secret), "");
    assert_eq!(r.status, 401);
    assert!(
        r.error_message().contains("access tokens cannot be used"),
        "{}",
        r.body
    );

    let r = server.request("GET", &path, Auth::None, "");
    assert_eq!(r.status, 401);
    assert!(r.error_message().contains("authentication required"));
    assert!(r.header("www-authenticate").is_some());

    // A disabled user cannot manage tokens either.
    install.cli_ok(&["user", "disable", "bob"], "");
    let r = server.api("GET", "/users/bob", "bob", "");
    assert_eq!(r.status, 401);
    assert!(r.error_message().contains("disabled"));

    // Each failure is audited, without the secret or the password.
    let audit = install.cli_ok(&["audit", "--json"], "");
    let failures: Vec<Value> = serde_json::from_str::<Vec<Value>>(&audit)
        .unwrap()
        .into_iter()
        .filter(|e| e["action"] == "auth.failed")
        .collect();
    assert!(failures.len() >= 4, "{failures:?}");
    assert!(failures
        .iter()
        .any(|e| e["detail"].as_str().unwrap().contains("access token used")));
    assert!(failures.iter().all(|e| e["source"] == "127.0.0.1"));
    assert!(!audit.contains(&secret));
    // Only one token exists: the 401s created nothing.
    assert_eq!(
        server.api("GET", "/users/alice", "alice", "").json()["size"],
        1
    );
}

/// User names are lower-case, and are compared in any case here as on git's side: `Alice` is
/// alice, and no wrong-case name counts as a failed login. A password typed as the user name
/// is never written down.
#[test]
fn user_names_in_any_case_are_the_user_and_a_password_typed_as_one_is_not_kept() {
    let (install, server) = setup();
    for (who, path) in [
        ("Alice", "/users/alice"),
        ("alice", "/users/Alice"),
        ("ALICE", "/users/ALICE"),
    ] {
        let r = server.api("GET", path, who, "");
        assert_eq!(r.status, 200, "{who} {path}: {}", r.body);
    }
    // Changes made by a user who typed their name in capitals are audited under that user.
    let (id, _) = create(
        &server,
        "Alice",
        "/users/alice",
        json!({"name": "typed-in-capitals", "permissions": ["REPO_READ"]}),
    );
    let r = server.api("DELETE", &format!("/users/alice/{id}"), "ROOT", "");
    assert_eq!(r.status, 204, "{}", r.body);
    let events: Vec<Value> =
        serde_json::from_str(&install.cli_ok(&["audit", "--json"], "")).unwrap();
    for (action, actor) in [("token.created", "alice"), ("token.revoked", "root")] {
        let e = events
            .iter()
            .find(|e| e["action"] == action && e["target"] == id.as_str())
            .unwrap_or_else(|| panic!("no {action} of {id}: {events:?}"));
        assert_eq!(e["actor"], actor, "{e}");
    }
    let shown = install.cli_ok(&["token", "show", &id], "");
    assert!(shown.contains("by alice"), "{shown}");

    let r = server.api("GET", "/users/Bob", "alice", "");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.error_message().contains("not those of 'bob'"),
        "{}",
        r.body
    );

    const TYPED_AS_USER: &str = "Zq9SecretPasswordXy";
    let r = server.request(
        "GET",
        &format!("{API}/users/alice"),
        Auth::Basic(TYPED_AS_USER, "x"),
        "",
    );
    assert_eq!(r.status, 401);
    assert!(
        r.error_message()
            .contains("authentication failed for the user name given (not repeated")
            && !r.error_message().contains("unlock"),
        "{}",
        r.body
    );
    let audit = install.cli_ok(&["audit", "--json"], "");
    assert!(audit.contains("<not a user name>"), "{audit}");
    assert!(
        !audit
            .to_ascii_lowercase()
            .contains(&TYPED_AS_USER.to_ascii_lowercase()),
        "{audit}"
    );
    assert!(!server.log_text().contains(TYPED_AS_USER));
    // A name typed with capitals that names a user is that user's: a failed login of `Alice`
    // is alice's, in the audit as in her lock.
    let r = server.request(
        "GET",
        &format!("{API}/users/alice"),
        Auth::Basic("Alice", "wrong password"),
        "",
    );
    assert_eq!(r.status, 401);
    let trail = install.cli_ok(
        &["audit", "--user", "alice", "--action", "auth", "--json"],
        "",
    );
    let trail: Vec<Value> = serde_json::from_str(&trail).unwrap();
    assert!(
        trail.iter().any(|e| e["actor"] == "alice"
            && e["target"] == "alice"
            && e["detail"] == "wrong password"),
        "{trail:?}"
    );
}

#[test]
fn paging_and_error_shapes() {
    let (_install, server) = setup();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (id, _) = create(
            &server,
            "alice",
            "/users/alice",
            json!({"name": format!("t{i}"), "permissions": ["REPO_READ"]}),
        );
        ids.push(id);
    }
    let page = |q: &str| server.api("GET", &format!("/users/alice{q}"), "alice", "");
    let p1 = page("?limit=2").json();
    assert_eq!(
        (
            p1["size"].as_u64(),
            p1["limit"].as_u64(),
            p1["start"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    assert_eq!(p1["isLastPage"], false);
    assert_eq!(p1["nextPageStart"], 2);
    let p2 = page("?start=2&limit=2").json();
    assert_eq!(p2["nextPageStart"], 4);
    let p3 = page("?start=4&limit=2").json();
    assert_eq!(p3["size"], 1);
    assert_eq!(p3["isLastPage"], true);
    assert!(p3.get("nextPageStart").is_none());
    let mut seen: Vec<String> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| {
            p["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_string())
        })
        .collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "pages cover every token once");
    let all = page("").json();
    assert_eq!(
        (all["size"].as_u64(), all["limit"].as_u64()),
        (Some(5), Some(25))
    );
    assert_eq!(page("?start=10").json()["size"], 0);
    for q in [
        "?limit=0",
        "?limit=abc",
        "?start=-1",
        "?limit=+5",
        "?start=%2B1",
    ] {
        let r = page(q);
        assert_eq!(r.status, 400, "{q}");
        r.error_message();
    }
    // A page larger than the server gives is capped, as Bitbucket does, not refused.
    let big = page("?limit=5000").json();
    assert_eq!(
        (big["size"].as_u64(), big["limit"].as_u64()),
        (Some(5), Some(1000))
    );
    // However large, digits and all.
    let huge = page("?limit=99999999999999999999999").json();
    assert_eq!(
        (huge["size"].as_u64(), huge["limit"].as_u64()),
        (Some(5), Some(1000))
    );
    // A start past the end is the end: not echoed as a number no JSON reader keeps.
    let past = page("?start=99999999999999999999999").json();
    assert_eq!(
        (past["size"].as_u64(), past["start"].as_u64()),
        (Some(0), Some(5))
    );
    assert_eq!(past["isLastPage"], true);

    // An administrator's list of every token pages the same way (read to the page's end, not
    // whole): the pages together are the whole list, in its order, the revoked one left out.
    let revoked = ids[0].clone();
    let r = server.api("DELETE", &format!("/users/alice/{revoked}"), "alice", "");
    assert_eq!(r.status, 204, "{}", r.body);
    let every = |q: &str| {
        let r = server.api("GET", &format!("/admin/tokens{q}"), "root", "");
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json()
    };
    let ids_of = |p: &Value| -> Vec<String> {
        p["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    let whole = ids_of(&every("?limit=1000"));
    assert!(!whole.contains(&revoked), "{whole:?}");
    assert_eq!(whole.len(), 4, "{whole:?}");
    let (mut paged, mut start) = (Vec::new(), 0);
    loop {
        let p = every(&format!("?start={start}&limit=3"));
        assert_eq!(p["start"], start);
        paged.extend(ids_of(&p));
        if p["isLastPage"] == true {
            assert!(p.get("nextPageStart").is_none());
            break;
        }
        start = p["nextPageStart"].as_u64().unwrap();
    }
    assert_eq!(paged, whole);
    let past = every("?start=50");
    assert_eq!(
        (past["size"].as_u64(), past["start"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(past["isLastPage"], true);
    assert_eq!(every("?start=4&limit=1")["isLastPage"], true);
    assert_eq!(every("?start=3&limit=1")["isLastPage"], true);
    assert_eq!(every("?start=2&limit=1")["nextPageStart"], 3);

    let bad = |body: &str, needle: &str| {
        let r = server.api("PUT", "/users/alice", "alice", body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let m = r.error_message();
        assert!(m.contains(needle), "{body}: {m}");
        assert_eq!(
            r.json()["errors"][0]["exceptionName"],
            "com.atlassian.bitbucket.validation.ArgumentValidationException"
        );
    };
    bad("{not json", "not valid JSON");
    bad("[1]", "JSON object");
    bad(r#"{"permissions":["REPO_READ"]}"#, "\"name\" is required");
    bad(r#"{"name":"x"}"#, "\"permissions\" is required");
    bad(
        r#"{"name":"x","permissions":["ADMIN"]}"#,
        "unknown permission 'ADMIN'",
    );
    bad(
        r#"{"name":"x","permissions":["PROJECT_WRITE","REPO_READ"]}"#,
        "REPO_READ is below PROJECT_WRITE",
    );
    bad(
        r#"{"name":"x","permissions":["REPO_READ"],"expiryDays":0}"#,
        "at least 1 day",
    );
    bad(
        r#"{"name":"x","permissions":["REPO_READ"],"expiryDays":"soon"}"#,
        "whole number of days",
    );
    bad(
        r#"{"name":"","permissions":["REPO_READ"]}"#,
        "1-100 characters",
    );
    bad(
        r#"{"name":"x","permissions":["REPO_READ"],"allowedNetworks":["10.0.0.0/33"]}"#,
        "at most 32",
    );

    let r = server.api("GET", "/nothing/here", "alice", "");
    assert_eq!(r.status, 404);
    r.error_message();
    let r = server.api("GET", "/users/alice/abcdefghijkl", "alice", "");
    assert_eq!(r.status, 404);
    assert!(r.error_message().contains("no token with id"));
    let r = server.api("PATCH", "/users/alice", "alice", "");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
    r.error_message();
    // `projects/{key}/repos` with the repository left out is no token called `repos` (a PUT
    // was told to use a token's methods, a GET that no token 'repos' exists).
    for method in ["PUT", "GET", "POST", "DELETE"] {
        let body = if method == "PUT" {
            r#"{"name":"ci","permissions":["REPO_READ"]}"#
        } else {
            ""
        };
        let r = server.api(method, "/projects/team/repos", "root", body);
        assert_eq!(r.status, 404, "{method}: {}", r.body);
        assert!(
            r.error_message().contains("projects/{key}/repos/{slug}")
                && !r.error_message().contains("token with id"),
            "{method}: {}",
            r.body
        );
    }
    // A trailing or doubled slash is one 404 everywhere, never an item with an empty id (which
    // answered a collection's PUT with 405 and the methods of an item).
    for (method, path) in [
        ("PUT", "/users/alice/"),
        ("PUT", "/projects/team/"),
        ("PUT", "/projects/team/repos/app/"),
        ("GET", "/projects/team/"),
        ("POST", "/users//rotate"),
    ] {
        let r = server.api(method, path, "root", "");
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert!(r.error_message().contains("a segment of the path is empty"));
    }
    // A path segment is percent-decoded once, as in any URL; a bad escape is refused.
    let r = server.api("GET", "/users/al%69ce", "alice", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["size"],
        server.api("GET", "/users/alice", "alice", "").json()["size"]
    );
    let r = server.api("GET", "/users/al%zzce", "alice", "");
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("invalid percent-encoding"));
    let big = format!(
        r#"{{"name":"{}","permissions":["REPO_READ"]}}"#,
        "x".repeat(70 * 1024)
    );
    let r = server.api("PUT", "/users/alice", "alice", &big);
    assert_eq!(r.status, 413);
    r.error_message();
    // Nothing under /rest/ reaches the git backend, even a path that looks like git.
    let r = server.request(
        "GET",
        "/rest/team/app.git/info/refs?service=git-upload-pack",
        Auth::None,
        "",
    );
    assert_eq!(r.status, 404);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
}

#[test]
fn edit_changes_name_and_permissions_but_never_the_expiry() {
    let (install, server) = setup();
    let (id, secret) = create(
        &server,
        "alice",
        "/users/alice",
        json!({"name": "ci", "permissions": ["REPO_WRITE"], "expiryDays": 10}),
    );
    let item = format!("/users/alice/{id}");
    let before = server.api("GET", &item, "alice", "").json();

    let r = server.api(
        "POST",
        &item,
        "alice",
        &json!({"name": "ci-readonly", "permissions": ["REPO_READ"]}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["name"], "ci-readonly");
    assert_eq!(v["permissions"], json!(["REPO_READ"]));
    assert_eq!(v["expiryDate"], before["expiryDate"]);
    assert!(v.get("token").is_none());
    // The new permissions apply to git at once: push needs REPO_WRITE.
    let clone_dir = install.path().join("c");
    install.git_ok(
        install.path(),
        &[
            "clone",
            "-q",
            &server.url_with("alice", &secret, "team/app"),
            clone_dir.to_str().unwrap(),
        ],
    );
    install.git_ok(&clone_dir, &["commit", "-q", "--allow-empty", "-m", "x"]);
    let push = install.git(&clone_dir, &["push", "-q", "origin", "main"]);
    assert!(!push.success());
    assert!(push.stderr.contains("push needs REPO_WRITE"));

    for body in [
        json!({"expiryDays": 365}),
        json!({"name": "x", "expiryDate": 4_102_444_800_000_i64}),
        json!({"expiryDate": null}),
    ] {
        let r = server.api("POST", &item, "root", &body.to_string());
        assert_eq!(r.status, 400, "{body}");
        assert!(r.error_message().contains("never changes"), "{body}");
    }
    // A field the API does not know is refused by name, and changes nothing: ignored, a
    // misspelt expiry would pass for a token that never expires.
    for body in [
        json!({"name": "x", "expiresAt": 5}),
        json!({"name": "x", "expiry_days": 1}),
    ] {
        let r = server.api("POST", &item, "alice", &body.to_string());
        assert_eq!(r.status, 400, "{body}");
        assert!(r.error_message().contains("unknown field"), "{}", r.body);
    }
    assert_eq!(
        server.api("GET", &item, "alice", "").json()["name"],
        "ci-readonly"
    );
    let r = server.api(
        "PUT",
        "/users/alice",
        "alice",
        &json!({"name": "n", "permissions": ["REPO_READ"], "expiry_days": 1}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error_message().contains("unknown field \"expiry_days\""),
        "{}",
        r.body
    );
    // A field named twice: parsers disagree about which one counts (serde_json takes the
    // last, a proxy in front may read the first), so neither is taken.
    let r = server.api(
        "PUT",
        "/users/alice",
        "alice",
        r#"{"name": "dup", "permissions": ["REPO_READ"], "expiryDays": 5, "expiryDays": null}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error_message()
            .contains("field \"expiryDays\" appears twice"),
        "{}",
        r.body
    );
    let r = server.api("POST", &item, "alice", r#"{"name": "a", "name": "b"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    // HEAD answers where GET does, with GET's head and no body.
    let get = server.api("GET", "/users/alice", "alice", "");
    let head = server.api("HEAD", "/users/alice", "alice", "");
    assert_eq!(head.status, 200, "{}", head.body);
    assert!(head.body.is_empty(), "{}", head.body);
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert_eq!(head.header("content-type"), get.header("content-type"));
    assert_eq!(server.api("HEAD", &item, "alice", "").status, 200);
    assert_eq!(
        server.api("GET", "/users/alice", "alice", "").json()["size"],
        1
    );

    // Sending back what a GET showed, changed (as a GET-modify-POST script does), is fine: the
    // fields that never change are ignored, the expiry it already has included.
    let mut whole = server.api("GET", &item, "alice", "").json();
    whole["name"] = json!("ci2");
    let r = server.api("POST", &item, "alice", &whole.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let after = server.api("GET", &item, "alice", "").json();
    assert_eq!(after["expiryDate"], before["expiryDate"]);
    assert_eq!(after["name"], "ci2");
    // But what says which token it is and whose, changed, is an attempt to move it (or one
    // token's fields posted to another's address): refused, and nothing changes.
    for (field, value, said) in [
        (
            "user",
            json!({"name": "bob"}),
            "\"user.name\" is \"alice\", not \"bob\"",
        ),
        ("user", json!("bob"), "\"user\" must be an object"),
        ("id", json!("aaaaaaaaaaaa"), "\"id\" is"),
        (
            "project",
            json!({"key": "team"}),
            "this token has no \"project\"",
        ),
    ] {
        let mut moved = after.clone();
        moved["name"] = json!("moved");
        moved[field] = value;
        let r = server.api("POST", &item, "alice", &moved.to_string());
        assert_eq!(r.status, 400, "{field}: {}", r.body);
        assert!(r.error_message().contains(said), "{field}: {}", r.body);
    }
    assert_eq!(server.api("GET", &item, "alice", "").json()["name"], "ci2");
    // The owner's name in capitals is still the owner.
    let r = server.api(
        "POST",
        &item,
        "alice",
        &json!({"name": "ci3", "user": {"name": "ALICE"}}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["name"], "ci3");

    for perms in [
        json!(["ADMIN"]),
        json!(["PROJECT_ADMIN", "REPO_READ"]),
        json!([]),
    ] {
        let r = server.api(
            "POST",
            &item,
            "alice",
            &json!({"permissions": perms}).to_string(),
        );
        assert_eq!(r.status, 400, "{perms}");
        r.error_message();
    }

    assert_eq!(server.api("DELETE", &item, "alice", "").status, 204);
    let r = server.api(
        "POST",
        &item,
        "alice",
        &json!({"name": "zombie"}).to_string(),
    );
    assert_eq!(r.status, 409);
    assert!(r.error_message().contains("revoked"));
}

/// A policy changed by hand into what gitgate does not write: a `409` that says what was
/// found and how to set it again — not a `500` "store not available" — and a `PUT` of the
/// whole policy sets it again.
#[test]
fn an_unreadable_policy_is_a_409_that_says_how_to_set_it_again() {
    let (install, server) = setup();
    rusqlite::Connection::open(install.path().join("gitgate.db"))
        .unwrap()
        .execute(
            "INSERT INTO settings (key, value) VALUES ('policy.expiry_required', 'yes') \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [],
        )
        .unwrap();
    let r = server.api("GET", "/admin/policy", "alice", "");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.error_message().contains("policy.expiry_required is yes")
            && r.error_message().contains("PUT of admin/policy"),
        "{}",
        r.body
    );
    let half = json!({"maxExpiryDays": 10}).to_string();
    assert_eq!(
        server.api("PUT", "/admin/policy", "root", &half).status,
        409
    );
    let whole = json!({"expiryRequired": true, "maxExpiryDays": 30}).to_string();
    let r = server.api("PUT", "/admin/policy", "root", &whole);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        server.api("GET", "/admin/policy", "alice", "").json(),
        json!({"expiryRequired": true, "maxExpiryDays": 30})
    );
}

#[test]
fn policy_applies_to_the_next_creation_and_reports_non_compliant_tokens() {
    let (install, server) = setup();
    let (old_id, _) = personal(&server, "alice", &["REPO_READ"]);
    let p = server.api("GET", "/admin/policy", "alice", "").json();
    assert_eq!(p, json!({"expiryRequired": false, "maxExpiryDays": null}));
    assert_eq!(
        server
            .api("GET", &format!("/users/alice/{old_id}"), "alice", "")
            .json()["compliant"],
        true
    );

    // A misspelt field is refused by name, not ignored as a 200 that changed nothing.
    let r = server.api(
        "PUT",
        "/admin/policy",
        "root",
        &json!({"expiry_required": true, "maxExpiryDays": 30}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error_message()
            .contains("unknown field \"expiry_required\""),
        "{}",
        r.body
    );
    assert_eq!(
        server.api("GET", "/admin/policy", "alice", "").json(),
        json!({"expiryRequired": false, "maxExpiryDays": null})
    );

    let r = server.api(
        "PUT",
        "/admin/policy",
        "root",
        &json!({"expiryRequired": true, "maxExpiryDays": 30}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"expiryRequired": true, "maxExpiryDays": 30})
    );
    assert_eq!(
        server.api("GET", "/admin/policy", "bob", "").json()["maxExpiryDays"],
        30
    );

    let try_create = |days: Option<u32>| {
        let mut body = json!({"name": "n", "permissions": ["REPO_READ"]});
        if let Some(d) = days {
            body["expiryDays"] = json!(d);
        }
        server.api("PUT", "/users/alice", "alice", &body.to_string())
    };
    let r = try_create(None);
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("at most 30 days"), "{}", r.body);
    let r = try_create(Some(31));
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("the maximum expiry is 30 days"));
    let r = try_create(Some(30));
    assert_eq!(r.status, 200);
    let new_id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["compliant"], true);

    // The old token is reported, in the user's list and in the admin's search.
    let list = server.api("GET", "/users/alice", "alice", "").json();
    let compliant = |id: &str| {
        list["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id)
            .unwrap()["compliant"]
            .clone()
    };
    assert_eq!(compliant(&old_id), false);
    assert_eq!(compliant(&new_id), true);
    let found = server
        .api("GET", "/admin/tokens?compliant=false", "root", "")
        .json();
    let ids: Vec<&str> = found["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [old_id.as_str()]);
    // The CLI reports it too.
    let cli_list: Vec<Value> =
        serde_json::from_str(&install.cli_ok(&["token", "list", "--json"], "")).unwrap();
    let old = cli_list
        .iter()
        .find(|t| t["id"] == old_id.as_str())
        .unwrap();
    assert_eq!(old["compliant"], false);
    let shown: Value =
        serde_json::from_str(&install.cli_ok(&["policy", "show", "--json"], "")).unwrap();
    assert_eq!(shown["nonCompliantTokens"], json!([old_id]));
    assert!(install
        .cli_ok(&["token", "list"], "")
        .contains("non-compliant"));

    // Bad policy bodies.
    for body in [
        json!({"expiryRequired": "yes"}),
        json!({"maxExpiryDays": 0}),
        json!({"maxExpiryDays": -3}),
    ] {
        let r = server.api("PUT", "/admin/policy", "root", &body.to_string());
        assert_eq!(r.status, 400, "{body}");
        r.error_message();
    }
    // Relaxing it applies to the next creation as well.
    let r = server.api(
        "PUT",
        "/admin/policy",
        "root",
        &json!({"expiryRequired": false}).to_string(),
    );
    assert_eq!(
        r.json(),
        json!({"expiryRequired": false, "maxExpiryDays": 30})
    );
    assert_eq!(try_create(None).status, 200);
}

#[test]
fn project_and_repository_tokens_for_admins() {
    let (install, server) = setup();
    // Not for a path the gate would refuse (it holds the token prefix): the API refuses such
    // paths as a whole, as the CLI refuses the target.
    let r = server.api(
        "PUT",
        "/projects/team/repos/ggt_calc",
        "root",
        &json!({"name": "ci", "permissions": ["REPO_READ"]}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error_message().contains("ggt_"), "{}", r.body);
    // A nested repository's slug, its '/' encoded: refused, saying where such tokens are managed.
    let r = server.api("GET", "/projects/team/repos/tools%2Fapp", "root", "");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error_message()
            .contains("encodes a '/', which no user name, project key")
            && r.error_message().contains("managed from the command line"),
        "{}",
        r.body
    );
    // Nor for a project under /rest/ while git is served at the root: the REST API's.
    for path in ["/projects/rest", "/projects/rest/repos/app"] {
        let r = server.api(
            "PUT",
            path,
            "root",
            &json!({"name": "ci", "permissions": ["REPO_READ"]}).to_string(),
        );
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.error_message().contains("REST API"), "{}", r.body);
    }
    let r = server.api(
        "PUT",
        "/projects/team",
        "root",
        &json!({"name": "ci", "permissions": ["PROJECT_READ", "REPO_WRITE"], "expiryDays": 7})
            .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["project"], json!({"key": "team"}));
    assert!(v.get("user").is_none());
    assert_eq!(v["permissions"], json!(["PROJECT_READ", "REPO_WRITE"]));
    let (pid, psecret) = (
        v["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    );

    let r = server.api(
        "PUT",
        "/projects/team/repos/app",
        "root",
        &json!({"name": "deploy", "permissions": ["PROJECT_READ"]}).to_string(),
    );
    assert_eq!(r.status, 400);
    assert!(r
        .error_message()
        .contains("repository tokens carry no PROJECT_ permission"));
    let (rid, rsecret) = create(
        &server,
        "root",
        "/projects/team/repos/app",
        json!({"name": "deploy", "permissions": ["REPO_READ"]}),
    );
    let one = server
        .api(
            "GET",
            &format!("/projects/team/repos/app/{rid}"),
            "root",
            "",
        )
        .json();
    assert_eq!(
        one["repository"],
        json!({"slug": "app", "project": {"key": "team"}})
    );

    // Each collection lists its own tokens; the wrong collection does not find the other's.
    let ids = |path: &str| -> Vec<String> {
        server.api("GET", path, "root", "").json()["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("/projects/team"), [pid.as_str()]);
    assert_eq!(ids("/projects/team/repos/app"), [rid.as_str()]);
    assert!(ids("/projects/other").is_empty());
    assert_eq!(
        server
            .api("GET", &format!("/projects/team/{rid}"), "root", "")
            .status,
        404
    );
    assert_eq!(
        server
            .api("GET", &format!("/projects/other/{pid}"), "root", "")
            .status,
        404
    );
    assert_eq!(
        server
            .api("GET", &format!("/users/alice/{pid}"), "root", "")
            .status,
        404
    );
    assert_eq!(
        server.api("GET", "/projects/bad%20key", "root", "").status,
        400
    );

    // Scoped tokens work with git under any Basic user name.
    assert!(ls_remote(&install, &server, "ci-runner", &psecret).0);
    assert!(ls_remote(&install, &server, "anything", &rsecret).0);

    // Edit, rotate and revoke, all by the admin.
    let r = server.api(
        "POST",
        &format!("/projects/team/{pid}"),
        "root",
        &json!({"permissions": ["REPO_READ"]}).to_string(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["permissions"], json!(["REPO_READ"]));
    let r = server.api(
        "POST",
        &format!("/projects/team/repos/app/{rid}/rotate"),
        "root",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rotated = r.json()["token"].as_str().unwrap().to_string();
    assert!(!ls_remote(&install, &server, "x", &rsecret).0);
    assert!(ls_remote(&install, &server, "x", &rotated).0);
    assert_eq!(
        server
            .api("DELETE", &format!("/projects/team/{pid}"), "root", "")
            .status,
        204
    );
    assert_eq!(
        server
            .api(
                "DELETE",
                &format!("/projects/team/repos/app/{rid}"),
                "root",
                ""
            )
            .status,
        204
    );
    let (ok, stderr) = ls_remote(&install, &server, "ci-runner", &psecret);
    assert!(!ok && stderr.contains("revoked"), "{stderr}");
}

#[test]
fn rotation_replaces_the_secret_with_an_optional_overlap() {
    let (install, server) = setup();
    let (id, old) = personal(&server, "alice", &["REPO_READ"]);
    let rotate =
        |body: &str| server.api("POST", &format!("/users/alice/{id}/rotate"), "alice", body);

    let r = rotate("");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["name"], "laptop");
    assert_eq!(v["permissions"], json!(["REPO_READ"]));
    assert!(v["rotatedDate"].as_i64().is_some());
    let new = v["token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    // Overlap 0 (the default): the old secret is refused at once, saying it was replaced; the
    // new one works.
    let (ok, stderr) = ls_remote(&install, &server, "alice", &old);
    assert!(
        !ok && stderr.contains("token 'laptop' was given a new secret on"),
        "{stderr}"
    );
    assert!(ls_remote(&install, &server, "alice", &new).0);

    // With an overlap both work for a while.
    let r = rotate(&json!({"overlapSeconds": 120}).to_string());
    assert_eq!(r.status, 200);
    let newer = r.json()["token"].as_str().unwrap().to_string();
    assert!(ls_remote(&install, &server, "alice", &new).0);
    assert!(ls_remote(&install, &server, "alice", &newer).0);
    // ...and whoever moves the clients sees until when, and that one still uses the old one
    // (said once a minute per token, not per request).
    assert!(ls_remote(&install, &server, "alice", &new).0);
    let shown = install.cli_ok(&["token", "show", &id], "");
    assert!(shown.contains("old secret:  works until "), "{shown}");
    let shown: Value =
        serde_json::from_str(&install.cli_ok(&["token", "show", &id, "--json"], "")).unwrap();
    assert!(
        shown["previousSecretValidUntil"].as_i64().is_some(),
        "{shown}"
    );
    let log = server.log_text();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("previous secret was used"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(
        said[0].contains(&id) && said[0].contains("until="),
        "{}",
        said[0]
    );

    let r = rotate(&json!({"overlapSeconds": 9_999_999}).to_string());
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("at most"));
    let r = server.api("GET", &format!("/users/alice/{id}/rotate"), "alice", "");
    assert_eq!(r.status, 405);
    assert_eq!(
        server
            .api("POST", &format!("/users/bob/{id}/rotate"), "bob", "")
            .status,
        404
    );
    assert_eq!(
        server
            .api("POST", &format!("/users/alice/{id}/rotate"), "bob", "")
            .status,
        403
    );
}

/// A browser sends a password it was once given for the API with any form another site's page
/// submits: a change must come with a JSON body by its type, and not from another site.
#[test]
fn a_web_page_of_another_site_cannot_change_tokens() {
    let (install, server) = setup();
    let (id, secret) = personal(&server, "alice", &["REPO_READ"]);
    let send = |method: &str, path: &str, extra: &str, body: &str| {
        let resp = as_alice(&server, method, path, extra, body);
        (
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        )
    };
    let rotate = format!("/users/alice/{id}/rotate");
    let edit = format!("/users/alice/{id}");
    // What a form can send: a text/plain body made into JSON by a field's name, or nothing.
    let forged = r#"{"name":"ci=","permissions":["REPO_WRITE"]}"#;
    for (method, path, extra, body, status) in [
        ("POST", &edit, "Content-Type: text/plain\r\n", forged, 415),
        (
            "POST",
            &edit,
            "Content-Type: application/x-www-form-urlencoded\r\n",
            forged,
            415,
        ),
        ("POST", &edit, "", forged, 415),
        ("POST", &rotate, "Origin: https://evil.example\r\n", "", 403),
        ("POST", &rotate, "Origin: null\r\n", "", 403),
        ("POST", &rotate, "Sec-Fetch-Site: cross-site\r\n", "", 403),
        ("DELETE", &edit, "Sec-Fetch-Site: same-site\r\n", "", 403),
    ] {
        let (got, text) = send(method, path, extra, body);
        assert_eq!(got, status, "{method} {path} {extra:?}: {text}");
        let message = serde_json::from_str::<Value>(&text).unwrap()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains("must be JSON") || message.contains("web page of another site"),
            "{message}"
        );
    }
    // Nothing changed: the token as it was, its secret still good, nothing audited.
    let v = server
        .api("GET", &format!("/users/alice/{id}"), "alice", "")
        .json();
    assert_eq!(
        (v["name"].as_str(), &v["permissions"], &v["rotatedDate"]),
        (Some("laptop"), &json!(["REPO_READ"]), &Value::Null),
        "{v}"
    );
    assert!(ls_remote(&install, &server, "alice", &secret).0);
    let audit = install.cli_ok(&["audit", "--json"], "");
    assert!(
        !audit.contains("token.edited")
            && !audit.contains("token.rotated")
            && !audit.contains("token.revoked"),
        "{audit}"
    );
    // Scripts: JSON with a charset, the page's own origin, a change without a body.
    let (got, text) = send(
        "POST",
        &edit,
        &format!(
            "Content-Type: application/json; charset=utf-8\r\nOrigin: http://127.0.0.1:{}\r\n",
            server.port
        ),
        r#"{"name":"renamed"}"#,
    );
    assert_eq!(got, 200, "{text}");
    let (got, text) = send("POST", &rotate, "", "");
    assert_eq!(got, 200, "{text}");
    // A body of unknown length (chunked; HTTP/2 without a Content-Length) is judged once read:
    // a form's text still is not JSON, and an empty one needs no type.
    let chunked = |method: &str, path: &str, extra: &str, body: &str| {
        let chunks = if body.is_empty() {
            "0\r\n\r\n".to_string()
        } else {
            format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
        };
        let head = format!(
            "{method} {API}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n{extra}\r\n{chunks}",
            port = server.port,
            auth = common::basic("alice", PW),
        );
        let resp = common::try_raw_http(server.port, head.as_bytes()).unwrap();
        (
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        )
    };
    let (got, text) = chunked("POST", &edit, "Content-Type: text/plain\r\n", forged);
    assert_eq!(got, 415, "{text}");
    let (got, text) = chunked("POST", &rotate, "", "");
    assert_eq!(got, 200, "{text}");
    let (got, text) = chunked("DELETE", &edit, "", "");
    assert_eq!(got, 204, "{text}");
}

/// SECURITY.md promise 17: a change from a web page of another site (its `Origin`, or
/// `Sec-Fetch-Site: cross-site`/`same-site`) is refused `403` *before* the password is
/// checked. So a wrong password on it is still a `403`, not a `401` that tells a page (or
/// whoever made the browser send it) that the password was wrong, and it counts neither for
/// the user's password lock (ten) nor for the address throttle (three here): more of them
/// than both leave the right password working from a script. It fails if the password is
/// checked first, whether or not the answer stays `403`.
#[test]
fn a_web_page_of_another_site_is_refused_before_its_password_counts() {
    let install = Install::new_with("[auth_failures]\nmax = 3\nwindow_seconds = 60\n");
    install.add_user("alice", false);
    install.add_user("root", true);
    install.cli_ok(&["grant", "add", "alice", "team", "write"], "");
    let server = install.serve();
    let (id, secret) = personal(&server, "alice", &["REPO_READ"]);
    let send = |method: &str, path: &str, password: &str, extra: &str, body: &str| {
        let head = format!(
            "{method} {API}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Authorization: {auth}\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\n{extra}\r\n{body}",
            port = server.port,
            auth = common::basic("alice", password),
            len = body.len(),
        );
        let resp = common::try_raw_http(server.port, head.as_bytes()).unwrap();
        (
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        )
    };
    let rotate = format!("/users/alice/{id}/rotate");
    let edit = format!("/users/alice/{id}");
    let create = r#"{"name":"forged","permissions":["REPO_WRITE"]}"#;
    let rename = r#"{"name":"forged"}"#;
    let pages = [
        "Origin: https://evil.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-site\r\n",
    ];
    // Twelve different wrong passwords (the same one again would count once for the
    // throttle), more than the lock's ten and the throttle's three.
    for i in 0..12 {
        let (method, path, body) = match i % 3 {
            0 => ("POST", rotate.as_str(), ""),
            1 => ("PUT", "/users/alice", create),
            _ => ("DELETE", edit.as_str(), ""),
        };
        let extra = pages[i % pages.len()];
        let (got, text) = send(method, path, &format!("wrong{i}"), extra, body);
        assert_eq!(got, 403, "{method} {path} {extra:?}: {text}");
        assert!(
            text.contains("web page of another site"),
            "{method} {path} {extra:?}: {text}"
        );
    }
    // The right password from another site's page is refused the same way.
    let (got, text) = send("POST", &edit, PW, pages[0], rename);
    assert_eq!(got, 403, "{text}");
    // The operator reads why, as for the git URLs: once per address and reason (four pages,
    // thirteen refusals), not only `status=403` in the request lines.
    let log = server.log_text();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a request for its form") && l.contains("status=403"))
        .collect();
    assert_eq!(said.len(), pages.len(), "{log}");
    for page in pages {
        let page = page.trim_end();
        assert!(
            said.iter().any(|l| l.contains(page)),
            "{page} not said: {said:?}"
        );
    }
    assert!(!log.contains(PW), "the password is in the log");
    // Neither the lock nor the throttle counted any of it: the right password works from a
    // script and from the API's own origin, and alice is not locked.
    let (got, text) = send("POST", &edit, PW, "", r#"{"name":"renamed"}"#);
    assert_eq!(got, 200, "{text}");
    let own = format!("Origin: http://127.0.0.1:{}\r\n", server.port);
    let (got, text) = send("POST", &edit, PW, &own, r#"{"name":"renamed again"}"#);
    assert_eq!(got, 200, "{text}");
    let users: Value =
        serde_json::from_str(&install.cli_ok(&["user", "list", "--json"], "")).unwrap();
    let alice = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap();
    assert!(alice["lockedUntil"].is_null(), "{alice}");
    // Nothing the pages asked for was done: no token made, the token neither rotated nor
    // revoked.
    let tokens = server.api("GET", "/users/alice", "alice", "").json();
    assert_eq!(tokens["size"], 1, "{tokens}");
    assert_eq!(tokens["values"][0]["name"], "renamed again", "{tokens}");
    let (ok, err) = ls_remote(&install, &server, "alice", &secret);
    assert!(ok, "{err}");
}

/// SECURITY.md promise 17: another site's page may not read the API either. It never sees the
/// answer, but its `<img src>` has the browser send the password it was once given for the
/// API, and each such call was a password check and a token of the user's rate-limit bucket,
/// the one their git requests draw from: before these were refused (before the password), a
/// page's images emptied alice's bucket and her clone was refused `429`. A link of another
/// site that she follows to the API (her click: `Sec-Fetch-User: ?1`) is still answered.
#[test]
fn a_web_page_of_another_site_cannot_spend_its_users_rate_limit() {
    let install = Install::new_with("[rate_limit]\ncapacity = 3\nrefill_per_second = 0.01\n");
    install.add_user("alice", false);
    install.cli_ok(&["grant", "add", "alice", "team", "write"], "");
    let server = install.serve();
    // The first token of alice's three.
    let (_id, secret) = personal(&server, "alice", &["REPO_READ"]);
    let fetches = [
        // `<img src>`, `<script src>`.
        (
            "GET",
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n",
        ),
        // An `<iframe>`: a navigation, inside the page.
        (
            "GET",
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: iframe\r\n",
        ),
        // A window the page opened, sent to the API by its script (no click: no
        // Sec-Fetch-User), as often as it likes.
        (
            "GET",
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n",
        ),
        // `fetch(url, {credentials: "include"})`, over plain HTTP (no Sec-Fetch-*), and its
        // preflight.
        ("GET", "Origin: https://evil.example\r\n"),
        (
            "OPTIONS",
            "Origin: https://evil.example\r\nAccess-Control-Request-Method: DELETE\r\n\
             Sec-Fetch-Site: same-site\r\nSec-Fetch-Mode: cors\r\n",
        ),
    ];
    for round in 0..2 {
        for (method, extra) in fetches {
            let resp = as_alice(&server, method, "/users/alice", extra, "");
            let text = String::from_utf8_lossy(&resp.body);
            assert_eq!(resp.status, 403, "{round}: {method} {extra:?}: {text}");
            assert!(
                text.contains("web page of another site")
                    && text.contains("not a page that fetches from it"),
                "{text}"
            );
            assert!(resp.header("access-control-allow-origin").is_none());
        }
    }
    // A link alice followed from another site's page (the second token), then her clone (the
    // third): none of the ten fetches above took one.
    let link = "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\n\
                Sec-Fetch-Dest: document\r\nSec-Fetch-User: ?1\r\n";
    let resp = as_alice(&server, "GET", "/users/alice", link, "");
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let (ok, err) = ls_remote(&install, &server, "alice", &secret);
    assert!(ok, "{err}");
}

/// An answer that quotes what someone wrote (a token named `<script>...`, a path) is, opened in
/// a browser, the JSON or text it says it is: `X-Content-Type-Options: nosniff` on every
/// answer of the API, its refusals included, and on git's plain-text refusals. A page sniffed
/// out of one would run on the API's origin, where the browser sends the password it was given
/// and another site's refusal does not apply. It fails if any of them lacks the header.
#[test]
fn an_answer_quoting_a_script_is_never_sniffed_into_a_page() {
    let (_install, server) = setup();
    let script = "<script>alert(document.domain)</script>";
    let body = json!({"name": script, "permissions": ["REPO_READ"]}).to_string();
    let answers = [
        ("create", server.api("PUT", "/users/alice", "alice", &body)),
        ("list", server.api("GET", "/users/alice", "alice", "")),
        (
            "not found",
            server.api(
                "GET",
                "/users/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                "alice",
                "",
            ),
        ),
        (
            "no password",
            server.request("GET", &format!("{API}/users/alice"), Auth::None, ""),
        ),
        (
            "git's refusal",
            server.request("GET", "/%3Cscript%3Ealert(1)%3C/script%3E", Auth::None, ""),
        ),
    ];
    for (what, resp) in &answers {
        assert_eq!(
            resp.header("x-content-type-options"),
            Some("nosniff"),
            "{what}: {resp:?}"
        );
        let content_type = resp.header("content-type").unwrap_or("");
        assert!(
            content_type.starts_with("application/json") || content_type.starts_with("text/plain"),
            "{what}: {resp:?}"
        );
    }
    // The create and the list do quote the name as given.
    assert_eq!(answers[0].1.status, 200, "{:?}", answers[0].1);
    assert!(answers[1].1.body.contains(script), "{:?}", answers[1].1);
}

/// A secret pasted where a field, a value or a header goes is not repeated in the error that
/// quotes it: the answer goes back into a CI log or a proxy's capture.
#[test]
fn a_secret_pasted_into_a_call_is_not_repeated_in_its_error() {
    let (_install, server) = setup();
    let (id, secret) = personal(&server, "alice", &["REPO_READ"]);
    let send = |method: &str, path: &str, extra: &str, body: &str| {
        as_alice(&server, method, path, extra, body)
    };
    let json = "Content-Type: application/json\r\n";
    let mine = format!("/users/alice/{id}");
    for (method, path, extra, body) in [
        (
            "PUT",
            "/users/alice".to_string(),
            json.to_string(),
            json!({secret.as_str(): 1, "name": "n", "permissions": ["REPO_READ"]}).to_string(),
        ),
        (
            "PUT",
            "/users/alice".to_string(),
            json.to_string(),
            json!({"name": "n", "permissions": [secret]}).to_string(),
        ),
        (
            "POST",
            mine.clone(),
            json.to_string(),
            json!({"id": secret}).to_string(),
        ),
        (
            "GET",
            format!("/users/alice?limit={secret}"),
            String::new(),
            String::new(),
        ),
        (
            "POST",
            mine.clone(),
            format!("Content-Type: {secret}\r\n"),
            "{}".to_string(),
        ),
        (
            "DELETE",
            mine.clone(),
            format!("Origin: http://{secret}.evil.example\r\n"),
            String::new(),
        ),
    ] {
        let resp = send(method, &path, &extra, &body);
        let text = String::from_utf8_lossy(&resp.body);
        assert!(
            (400..500).contains(&resp.status),
            "{method} {extra}: {text}"
        );
        assert!(
            text.contains("<a token secret, not repeated>") && !text.contains(&secret[8..]),
            "{method} {path} {extra:?}: {text}"
        );
    }
    // A secret's random part alone where a token id goes is not repeated either: with the
    // token's id, which is public, it gives the secret back. (Where a user name goes, the
    // answer names the user in lower case, as names are compared: not the secret's letters.)
    let random = "acbvhvnX3aUC9GTBH4tjaa2yShiiMbUB0uoYEkYtmJk";
    let resp = send("GET", &format!("/users/alice/{random}"), "", "");
    let text = String::from_utf8_lossy(&resp.body);
    assert_eq!(resp.status, 404, "{text}");
    assert!(
        text.contains("not repeated>") && !text.contains(&random[..20]),
        "{text}"
    );
    let resp = send("GET", &format!("/users/{random}"), "", "");
    let text = String::from_utf8_lossy(&resp.body);
    assert_eq!(resp.status, 403, "{text}");
    assert!(!text.contains(&random[..20]), "{text}");
    assert!(!server.log_text().contains(&secret[8..]));
    assert!(!server.log_text().contains(&random[..20]));
}

/// A call refused for its form before its password is read — two `Host` headers, a token
/// secret in its path — has its reason said in the log, as the git URLs' refusals and the
/// API's others (another site's page, an encoded body) have: the request line's `status=400`
/// alone told the operator nothing. The secret is not in the log.
#[test]
fn a_call_refused_for_its_form_has_its_reason_logged() {
    let (_install, server) = setup();
    let (_, secret) = personal(&server, "alice", &["REPO_READ"]);
    let get = |path: &str, extra: &str| {
        common::try_raw_http(
            server.port,
            format!(
                "GET {API}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap()
    };
    let r = get("/users/alice", "Host: evil.example\r\n");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = get(&format!("/users/alice/{secret}"), "");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let said = |what: &str| {
        server
            .log_text()
            .lines()
            .any(|l| l.contains("refused a request for its form") && l.contains(what))
    };
    let deadline = Instant::now() + common::EVENT_DEADLINE;
    while !(said("only one Host header") && said("looks like a token secret")) {
        assert!(
            Instant::now() < deadline,
            "a reason not said:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!server.log_text().contains(&secret[8..]));
}

/// A body or a query that cannot be read as it was meant is refused, and changes nothing: a
/// coded body (JSON all the same, or gzip), a filter given twice. An escaped query name is
/// read as its name, not ignored as an unknown one.
#[test]
fn a_body_or_query_that_cannot_be_read_as_meant_is_refused() {
    let (_install, server) = setup();
    let (id, _) = personal(&server, "alice", &["REPO_READ"]);
    let send = |head: &str, body: &str| {
        let head = format!(
            "{head}\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\n",
            port = server.port,
            auth = common::basic("alice", PW),
        );
        let resp = common::try_raw_http(server.port, format!("{head}{body}").as_bytes()).unwrap();
        (
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        )
    };
    let create = json!({"name": "coded", "permissions": ["REPO_READ"]}).to_string();
    let put = format!("PUT {API}/users/alice HTTP/1.1");
    let (status, text) = send(
        &put,
        &format!(
            "Content-Encoding: br\r\nContent-Length: {}\r\n\r\n{create}",
            create.len()
        ),
    );
    assert_eq!(status, 415, "{text}");
    assert!(
        text.contains("without a Content-Encoding (it came as br)"),
        "{text}"
    );
    let (status, text) = send(
        &put,
        &format!(
            "Transfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{create}\r\n0\r\n\r\n",
            create.len()
        ),
    );
    assert_eq!(status, 501, "{text}");
    // Not the git path's advice to compress with Content-Encoding: the API refuses that too.
    assert!(
        text.contains("send the JSON plain, uncompressed") && !text.contains("Content-Encoding"),
        "{text}"
    );
    let listed = server.api("GET", "/users/alice", "alice", "").json();
    assert_eq!(listed["size"], 1, "{listed}");

    let names = |query: &str| -> Vec<String> {
        let r = server.api("GET", &format!("/admin/tokens?{query}"), "root", "");
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        r.json()["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("compliant=true"), [id]);
    assert!(names("comp%6Ciant=false").is_empty());
    let r = server.api(
        "GET",
        "/admin/tokens?compliant=true&compliant=false",
        "root",
        "",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error_message().contains("given twice"), "{}", r.body);
}

#[test]
fn allowed_networks_refuse_other_sources() {
    let (install, server) = setup();
    let (id, secret) = create(
        &server,
        "alice",
        "/users/alice",
        json!({"name": "ci", "permissions": ["REPO_READ"], "allowedNetworks": ["10.0.0.0/8", "2001:db8::/32"]}),
    );
    let v = server
        .api("GET", &format!("/users/alice/{id}"), "alice", "")
        .json();
    assert_eq!(v["allowedNetworks"], json!(["10.0.0.0/8", "2001:db8::/32"]));
    // The audit says from where the token was made to work, not only what it was widened from.
    let events: Value = serde_json::from_str(&install.cli_ok(&["audit", "--json"], "")).unwrap();
    let created = events.as_array().unwrap().iter();
    let created = created.filter(|e| e["action"] == "token.created" && e["target"] == id.as_str());
    let detail = created
        .map(|e| e["detail"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(detail.len(), 1, "{events}");
    assert!(
        detail[0].ends_with(", networks 10.0.0.0/8,2001:db8::/32"),
        "{detail:?}"
    );
    let (ok, stderr) = ls_remote(&install, &server, "alice", &secret);
    assert!(!ok);
    assert!(
        stderr.contains(
            "may only be used from 10.0.0.0/8, 2001:db8::/32; this request came from 127.0.0.1"
        ),
        "{stderr}"
    );
    let r = server.api(
        "POST",
        &format!("/users/alice/{id}"),
        "alice",
        &json!({"allowedNetworks": ["127.0.0.1/8"]}).to_string(),
    );
    // Address bits past the prefix are a typo to be told, not a network to widen to.
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error_message().contains("127.0.0.0/8"), "{}", r.body);
    let r = server.api(
        "POST",
        &format!("/users/alice/{id}"),
        "alice",
        &json!({"allowedNetworks": ["127.0.0.0/8"]}).to_string(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["allowedNetworks"], json!(["127.0.0.0/8"]));
    assert!(ls_remote(&install, &server, "alice", &secret).0);
    let r = server.api(
        "POST",
        &format!("/users/alice/{id}"),
        "alice",
        &json!({"allowedNetworks": ["localhost"]}).to_string(),
    );
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("not a network"));
    // `null` is a field left out: the limit stays (never widened by a client's empty field).
    let r = server.api(
        "POST",
        &format!("/users/alice/{id}"),
        "alice",
        &json!({"allowedNetworks": null, "name": "ci"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["allowedNetworks"], json!(["127.0.0.0/8"]));
    // An empty list means anywhere again.
    let r = server.api(
        "POST",
        &format!("/users/alice/{id}"),
        "alice",
        &json!({"allowedNetworks": []}).to_string(),
    );
    assert_eq!(r.json()["allowedNetworks"], json!([]));
}

#[test]
fn every_action_is_audited_and_no_secret_is_written_anywhere() {
    let (install, mut server) = setup();
    // User and grant changes through the CLI.
    install.cli_ok(&["user", "disable", "bob"], "");
    install.cli_ok(&["user", "enable", "bob"], "");
    install.cli_ok(
        &["user", "passwd", "bob", "--password-stdin"],
        &format!("{PW}\n"),
    );
    install.cli_ok(&["grant", "remove", "bob", "team"], "");
    // Token and policy changes through the API.
    let (id, first) = personal(&server, "alice", &["REPO_READ"]);
    let r = server.api(
        "POST",
        &format!("/users/alice/{id}"),
        "alice",
        &json!({"name": "renamed"}).to_string(),
    );
    assert_eq!(r.status, 200);
    let r = server.api("POST", &format!("/users/alice/{id}/rotate"), "alice", "");
    let second = r.json()["token"].as_str().unwrap().to_string();
    let r = server.api(
        "PUT",
        "/admin/policy",
        "root",
        &json!({"expiryRequired": true}).to_string(),
    );
    assert_eq!(r.status, 200);
    assert!(ls_remote(&install, &server, "alice", &second).0);
    assert!(!ls_remote(&install, &server, "alice", &first).0);
    assert_eq!(
        server
            .api("DELETE", &format!("/users/alice/{id}"), "root", "")
            .status,
        204
    );
    assert_eq!(
        server
            .request(
                "GET",
                &format!("{API}/users/alice"),
                Auth::Basic("alice", WRONG_PW),
                ""
            )
            .status,
        401
    );

    // A token where the user name goes (`https://TOKEN@host`) is refused by name, unechoed.
    let r = server.request(
        "GET",
        &format!("{API}/users/alice"),
        Auth::Basic(&second, "x-oauth-basic"),
        "",
    );
    assert_eq!(r.status, 401);
    assert!(r.body.contains("is a gitgate token"), "{}", r.body);
    // ... with the API's own advice (it takes passwords), with or without a password.
    for password in ["x-oauth-basic", ""] {
        let r = server.request(
            "GET",
            &format!("{API}/users/alice"),
            Auth::Basic(&second, password),
            "",
        );
        assert_eq!(r.status, 401);
        assert!(
            r.body
                .contains("the REST API takes your gitgate user name and password"),
            "{}",
            r.body
        );
    }
    // A secret where the token's id goes is refused without being echoed (or logged: below).
    let r = server.api("GET", &format!("/users/alice/{second}"), "alice", "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("looks like a token secret"), "{}", r.body);
    assert!(!r.body.contains(&second[17..60]), "{}", r.body);

    let audit_json = install.cli_ok(&["audit", "--json"], "");
    let events: Vec<Value> = serde_json::from_str(&audit_json).unwrap();
    let has = |action: &str, actor: &str| {
        events
            .iter()
            .any(|e| e["action"] == action && e["actor"].as_str().unwrap().starts_with(actor))
    };
    for (action, actor) in [
        ("user.added", "cli:"),
        ("user.disabled", "cli:"),
        ("user.enabled", "cli:"),
        ("user.password_changed", "cli:"),
        ("grant.added", "cli:"),
        ("grant.removed", "cli:"),
        ("token.created", "alice"),
        ("token.edited", "alice"),
        ("token.rotated", "alice"),
        ("policy.changed", "root"),
        ("token.revoked", "root"),
        ("auth.failed", "alice"),
    ] {
        assert!(has(action, actor), "no {action} by {actor} in {audit_json}");
    }
    let revoked = events
        .iter()
        .find(|e| e["action"] == "token.revoked")
        .unwrap();
    assert_eq!(revoked["target"], id.as_str());
    assert_eq!(revoked["source"], "127.0.0.1");
    let edited = events
        .iter()
        .find(|e| e["action"] == "token.edited")
        .unwrap();
    assert!(edited["detail"]
        .as_str()
        .unwrap()
        .contains("name 'laptop' -> 'renamed'"));

    let rest_list = server.api("GET", "/users/alice", "root", "").body;
    // A graceful stop: every log line and pending audit event is written. Then look everywhere.
    let status = server.stop_within(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    let human_audit = install.cli_ok(&["audit"], "");
    let list = install.cli_ok(&["token", "list", "--json"], "");
    let log = server.log_text();
    assert!(log.contains("listening on"));
    assert!(log.contains("stopped: every connection closed"), "{log}");
    // The request that put a secret in its path was logged, without it.
    assert!(log.contains("status=400"), "{log}");
    let mut db = Vec::new();
    for name in ["gitgate.db", "gitgate.db-wal"] {
        if let Ok(bytes) = std::fs::read(install.path().join(name)) {
            db.extend(bytes);
        }
    }
    let db = String::from_utf8_lossy(&db).to_string();
    for (what, text) in [
        ("audit --json", &audit_json),
        ("audit", &human_audit),
        ("token list", &list),
        ("REST list", &rest_list),
        ("server log", &log),
        ("database", &db),
    ] {
        for secret in [&first, &second] {
            assert!(!text.contains(secret.as_str()), "a secret is in the {what}");
            // Nor a piece of one (a random part cut short, or shown in a detail field).
            for piece in secret.as_bytes()[17..60].windows(12) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(
                    !text.contains(piece),
                    "a piece of a secret is in the {what}"
                );
            }
        }
        // The wrong password is the likeliest to be logged with a failed login.
        for password in [PW, WRONG_PW] {
            assert!(!text.contains(password), "a password is in the {what}");
        }
        // Nor the `Authorization` values these requests sent, which hold them in base64.
        for pair in [
            format!("alice:{PW}"),
            format!("root:{PW}"),
            format!("alice:{WRONG_PW}"),
            format!("{second}:x-oauth-basic"),
        ] {
            let sent = common::base64(pair.as_bytes());
            assert!(
                !text.contains(sent.trim_end_matches('=')),
                "an Authorization value is in the {what}"
            );
        }
    }
}

/// A wrong password no other text could contain by chance.
const WRONG_PW: &str = "wrong-pw-Zq8Rv2Lk";

/// SECURITY.md promise 13: ten wrong passwords in a row lock the user's password logins for 15
/// minutes, with a `user.locked` audit event and a warning in the log that names the user and
/// never the password; the user's tokens keep working, and `gitgate user unlock` lifts it.
#[test]
fn repeated_wrong_passwords_lock_the_password_but_never_the_tokens() {
    // A high per-address limit, so that only the per-user lock is at work here.
    let install = Install::new_with("[auth_failures]\nmax = 1000\nwindow_seconds = 60\n");
    install.add_user("alice", false);
    install.add_user("root", true);
    install.cli_ok(&["grant", "add", "alice", "team", "write"], "");
    let server = install.serve();
    let (_id, secret) = personal(&server, "alice", &["REPO_READ"]);

    let wrong_password = |user: &str| {
        let r = server.request(
            "GET",
            &format!("{API}/users/{user}"),
            Auth::Basic(user, WRONG_PW),
            "",
        );
        assert_eq!(r.status, 401, "{}", r.body);
        r.error_message()
    };
    for _ in 0..10 {
        wrong_password("alice");
    }
    // The lock is a warning in the log, naming the user and never a password tried (nor the
    // right one, which is never sent here until the lock; below, after it).
    let log = server.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("password logins locked after repeated failures"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains(" WARN ") && warned[0].contains("user=\"alice\""),
        "{}",
        warned[0]
    );
    assert!(!log.contains(WRONG_PW), "{log}");
    // The right password is refused now, with a message that says what to do...
    let r = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(r.status, 401, "{}", r.body);
    let message = r.error_message();
    assert!(
        message.contains("locked") && message.contains("gitgate user unlock alice"),
        "{message}"
    );
    // ...but the same one as for a wrong password (which would otherwise tell a guesser that
    // the password it just tried is right) and, but for the name, as for a user who does not
    // exist after as many tries (which would tell which names exist).
    assert_eq!(wrong_password("alice"), message);
    for _ in 0..11 {
        assert_eq!(wrong_password("ghost"), message.replace("alice", "ghost"));
    }
    // ...other users are not affected...
    assert_eq!(server.api("GET", "/users/root", "root", "").status, 200);
    // ...and alice's token still works for git: an attacker cannot lock anyone out of git.
    let (ok, err) = ls_remote(&install, &server, "alice", &secret);
    assert!(ok, "{err}");

    let listed = install.cli_ok(&["user", "list", "--json"], "");
    let users: Value = serde_json::from_str(&listed).unwrap();
    let alice = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap();
    // For a quarter of an hour from the lock (README, SECURITY.md): no shorter, no longer.
    let until = alice["lockedUntil"].as_i64().unwrap();
    let left = until - common::now_ms();
    assert!(
        (14 * 60_000..=15 * 60_000).contains(&left),
        "locked for {left} ms more"
    );

    install.cli_ok(&["user", "unlock", "alice"], "");
    assert_eq!(server.api("GET", "/users/alice", "alice", "").status, 200);
    let audit = install.cli_ok(&["audit", "--json"], "");
    assert!(audit.contains("\"user.locked\""), "{audit}");
    assert!(audit.contains("\"user.unlocked\""), "{audit}");
    // Only alice's lock was warned of (ghost has nothing to lock), and no password, wrong or
    // right, reached the log.
    let log = server.log_text();
    assert_eq!(
        log.matches("password logins locked after repeated failures")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains(WRONG_PW) && !log.contains(PW), "{log}");
}

/// A store that takes no writes (a full disk; here triggers that refuse them): a wrong password
/// gets the answer of any wrong password, counted towards the lock in memory (before, it was a
/// 500 while the right password got a 200: which guess was right, with nothing counted), and a
/// revocation that cannot be written says the token still works.
#[test]
fn a_store_that_takes_no_writes_fails_closed() {
    let install = Install::new_with("[auth_failures]\nmax = 1000\nwindow_seconds = 60\n");
    install.add_user("alice", false);
    install.add_user("bob", false);
    install.cli_ok(&["grant", "add", "alice", "team", "write"], "");
    let server = install.serve();
    let (id, secret) = personal(&server, "alice", &["REPO_READ"]);
    let normal = server
        .request(
            "GET",
            &format!("{API}/users/bob"),
            Auth::Basic("bob", "wrong"),
            "",
        )
        .error_message();
    rusqlite::Connection::open(install.path().join("gitgate.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER full_users BEFORE UPDATE ON users \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END; \
             CREATE TRIGGER full_tokens BEFORE UPDATE ON tokens \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        )
        .unwrap();
    let del = server.api("DELETE", &format!("/users/alice/{id}"), "alice", "");
    assert_eq!(del.status, 500, "{}", del.body);
    assert!(
        del.error_message()
            .contains("is NOT revoked and still works"),
        "{}",
        del.body
    );
    let (ok, err) = ls_remote(&install, &server, "alice", &secret);
    assert!(ok, "the token still works, as said: {err}");
    for _ in 0..9 {
        let r = server.request(
            "GET",
            &format!("{API}/users/alice"),
            Auth::Basic("alice", "wrong"),
            "",
        );
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.error_message(), normal.replace("bob", "alice"));
    }
    // The tenth wrong password locks, counted in memory: the right one is refused now too.
    let r = server.request(
        "GET",
        &format!("{API}/users/alice"),
        Auth::Basic("alice", "wrong"),
        "",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_message(), normal.replace("bob", "alice"));
    assert_eq!(server.api("GET", "/users/bob", "bob", "").status, 200);
}

#[test]
fn password_guessing_on_the_api_counts_for_the_address_throttle() {
    let install = Install::new_with("[auth_failures]\nmax = 3\nwindow_seconds = 60\n");
    install.add_user("alice", false);
    let server = install.serve();
    // A token offered to the API (a Bitbucket script's way) is refused by name and never
    // checked: no guess, so not counted; nor is an empty Bearer (an unset CI variable).
    let (_, secret) = personal(&server, "alice", &["REPO_READ"]);
    let path = format!("{API}/users/alice");
    for _ in 0..3 {
        for auth in [
            Auth::Bearer(&secret),
            Auth::Basic("alice", &secret),
            Auth::Bearer(""),
        ] {
            let r = server.request("GET", &path, auth, "");
            assert_eq!(r.status, 401, "{}", r.body);
        }
    }
    assert_eq!(server.api("GET", "/users/alice", "alice", "").status, 200);
    // Three different wrong passwords: the same one again would count once.
    for i in 0..3 {
        let r = server.request("GET", &path, Auth::Basic("alice", &format!("wrong{i}")), "");
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    // The refusal is a request line like any answer.
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("api=true") && l.contains("status=429")),
        "{log}"
    );
}

/// A store a newer gitgate migrated under this running one: the REST API neither reads nor
/// writes it (503, as git gets), so no token is made or revoked in tables this gitgate may not
/// read rightly.
#[test]
fn a_store_migrated_by_a_newer_gitgate_is_not_changed_over_rest() {
    let (install, server) = setup();
    let (id, _) = personal(&server, "alice", &["REPO_READ"]);
    let db = rusqlite::Connection::open(install.path().join("gitgate.db")).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    db.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
        .unwrap();
    let tokens = || -> i64 {
        db.query_row(
            "SELECT count(*) FROM tokens WHERE revoked_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let before = tokens();
    let create = server.api(
        "PUT",
        "/users/alice",
        "alice",
        &json!({"name": "during", "permissions": ["REPO_READ"]}).to_string(),
    );
    assert_eq!(create.status, 503, "{}", create.body);
    let revoke = server.api("DELETE", &format!("/users/alice/{id}"), "alice", "");
    assert_eq!(revoke.status, 503, "{}", revoke.body);
    let list = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(list.status, 503, "{}", list.body);
    assert_eq!(tokens(), before);
}

/// A guesser who hangs up before each answer is counted all the same: its password checks
/// ran, so they count for the address throttle, the failure metric and the log.
#[test]
fn password_guesses_whose_client_hangs_up_still_count_for_the_throttle() {
    use std::io::Write;
    let install = Install::new_with("[auth_failures]\nmax = 3\nwindow_seconds = 60\n");
    install.add_user("alice", false);
    let server = install.serve();
    let logged = || {
        server
            .log_text()
            .lines()
            .filter(|l| l.contains("api=true") && l.contains("status=401"))
            .count()
    };
    // As many as the throttle allows (a fourth could be refused 429 before its check, by the
    // third's failure), each a different password (the same one again would count once).
    for i in 0..3 {
        let guess = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("alice:wrong{i}"),
        );
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.write_all(
            format!(
                "GET {API}/users/alice HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {guess}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        // Hung up once the server has read the request, which it then begins on at once (a
        // request whose connection is already closed when it is first read is dropped unread,
        // and checks nothing: see the README), before the password check ends (≈ 100 ms).
        common::wait_until_read_by_server(&s);
        drop(s);
        // Each check ends on its own (argon2 on the blocking pool), answered to nobody; one
        // at a time, so that none is refused for the checks in progress.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while logged() < i + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                server.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let r = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(r.status, 429, "{}", r.body);
}

#[test]
fn api_calls_count_against_the_callers_rate_limit_like_their_git_requests() {
    let install = Install::new_with("[rate_limit]\ncapacity = 3\nrefill_per_second = 0.01\n");
    install.add_user("alice", false);
    install.add_user("bob", false);
    install.cli_ok(&["grant", "add", "alice", "team", "write"], "");
    let server = install.serve();
    // The token creation is alice's first call; two more fill her bucket of three.
    let (_id, secret) = personal(&server, "alice", &["REPO_READ"]);
    for _ in 0..2 {
        let r = server.api("GET", "/users/alice", "alice", "");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(r.status, 429, "{}", r.body);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=100).contains(&retry), "Retry-After {retry}");
    let message = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        message,
        format!("rate limit exceeded for user:alice; try again in {retry} s")
    );
    // Her git requests share the bucket, as in Bitbucket: the clone is refused too.
    let (ok, stderr) = ls_remote(&install, &server, "alice", &secret);
    assert!(
        !ok && stderr.contains("rate limit exceeded for user:alice"),
        "{stderr}"
    );
    // bob's bucket is his own, and wrong passwords in his name cost him nothing (they are the
    // address throttle's business, not his bucket's): after two, his two calls left still go.
    assert_eq!(server.api("GET", "/users/bob", "bob", "").status, 200);
    for wrong in ["wrong1", "wrong2"] {
        let r = server.request(
            "GET",
            &format!("{API}/users/bob"),
            Auth::Basic("bob", wrong),
            "",
        );
        assert_eq!(r.status, 401, "{}", r.body);
    }
    for _ in 0..2 {
        let r = server.api("GET", "/users/bob", "bob", "");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // A wrong password in alice's name, her bucket empty, is told as wrong, not as her 429.
    let r = server.request(
        "GET",
        &format!("{API}/users/alice"),
        Auth::Basic("alice", "wrong"),
        "",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    // An exemption from the CLI covers her API calls within the overrides' lifetime.
    install.cli_ok(&["ratelimit", "exempt", "alice"], "");
    std::thread::sleep(Duration::from_millis(
        gitgate::guard::OVERRIDES_TTL_MS as u64 + 500,
    ));
    for _ in 0..5 {
        let r = server.api("GET", "/users/alice", "alice", "");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("api=true") && l.contains("status=429")),
        "{log}"
    );
}

/// A whole number too large for any rule is refused by the rule, with its limit said, not as
/// "not a whole number".
#[test]
fn numbers_too_large_are_refused_with_the_limit() {
    let (_install, server) = setup();
    let r = server.api(
        "PUT",
        "/users/alice",
        "alice",
        r#"{"name":"big","permissions":["REPO_READ"],"expiryDays":5000000000}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error_message().contains("at most"), "{}", r.body);
    let (id, _) = personal(&server, "alice", &["REPO_READ"]);
    let r = server.api(
        "POST",
        &format!("/users/alice/{id}/rotate"),
        "alice",
        r#"{"overlapSeconds":5000000000}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error_message().contains("at most"), "{}", r.body);
    let r = server.api(
        "PUT",
        "/admin/policy",
        "root",
        r#"{"maxExpiryDays":5000000000}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error_message().contains("at most"), "{}", r.body);
    let r = server.api(
        "PUT",
        "/users/alice",
        "alice",
        r#"{"name":"neg","permissions":["REPO_READ"],"expiryDays":-1}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error_message().contains("1 or more"), "{}", r.body);
    // A whole number sent as a float (Python's 90 / 3) is that number.
    let r = server.api(
        "PUT",
        "/users/alice",
        "alice",
        r#"{"name":"float","permissions":["REPO_READ"],"expiryDays":30.0}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.api(
        "PUT",
        "/users/alice",
        "alice",
        r#"{"name":"half","permissions":["REPO_READ"],"expiryDays":30.5}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Bitbucket's `latest` spelling of the API's version, a UTF-8 byte-order mark before the
    // JSON (PowerShell, .NET), and HEAD in an Allow header.
    let r = server.request(
        "GET",
        "/rest/access-tokens/latest/users/alice",
        Auth::Basic("alice", PW),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.api(
        "PUT",
        "/users/alice",
        "alice",
        "\u{feff}{\"name\":\"bom\",\"permissions\":[\"REPO_READ\"]}",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.api("PATCH", "/users/alice", "alice", "");
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
}

/// Offboarding an administrator: `user disable` says which project and repository tokens they
/// made still work (they belong to their scope), and `policy set` says how many tokens made
/// before do not meet a tightened policy (they cannot be rotated).
#[test]
fn disabling_an_admin_and_tightening_the_policy_say_what_stays() {
    let (install, server) = setup();
    let (id, _) = create(
        &server,
        "root",
        "/projects/team",
        json!({"name": "deploy", "permissions": ["REPO_READ"]}),
    );
    let run = install.cli(&["user", "disable", "root"], "");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(run.success(), "{run}");
    assert!(
        said.contains("their personal tokens stop working")
            && said.contains(&id)
            && said.contains("still work"),
        "{said}"
    );
    let run = install.cli(&common::REQUIRE_EXPIRY_WITHIN_30_DAYS, "");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(run.success(), "{run}");
    assert!(
        said.contains("1 token(s) made before do not meet it")
            && said.contains("cannot be rotated"),
        "{said}"
    );
    // The token has no expiry: it works until it is revoked, and is not said to expire.
    assert!(
        said.contains("until they are revoked") && !said.contains("until they expire"),
        "{said}"
    );
}

/// The audit rows a REST call makes name its request, as a failed git authentication's do:
/// a token created, a wrong password, and the lock it makes join the request's log line by
/// `requestId`. A row the command line made names none.
#[test]
fn the_audit_rows_of_a_rest_call_name_its_request() {
    let (install, server) = setup();
    let (token, _) = personal(&server, "alice", &["REPO_READ"]);
    let wrong = server.request(
        "GET",
        &format!("{API}/users/bob"),
        Auth::Basic("bob", "not-his-password"),
        "",
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    // The request lines are written as the answers end; the rows of failures by the writer.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line_of = |status: &str, method: &str| -> Option<String> {
        server
            .log_text()
            .lines()
            .find(|l| {
                l.contains("api=true")
                    && l.contains(&format!("status={status}"))
                    && l.contains(&format!("method={method}"))
            })
            .map(str::to_string)
    };
    let id_in = |line: &str| -> String {
        line.split("request_id=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no request_id: {line}"))
            .to_string()
    };
    let rows = |action: &str| -> Vec<Value> {
        let listed = install.cli_ok(&["audit", "--json", "--action", action], "");
        serde_json::from_str::<Value>(&listed)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    while line_of("200", "PUT").is_none()
        || line_of("401", "GET").is_none()
        || rows("auth.failed").is_empty()
    {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let created = id_in(&line_of("200", "PUT").unwrap());
    let refused = id_in(&line_of("401", "GET").unwrap());
    assert_ne!(created, refused);
    let row = rows("token.created")
        .into_iter()
        .find(|r| r["target"] == token.as_str())
        .unwrap();
    assert_eq!(row["requestId"], created.as_str(), "{row}");
    let row = rows("auth.failed").remove(0);
    assert_eq!(row["requestId"], refused.as_str(), "{row}");
    // Its audit line says it too.
    let audit = server
        .log_text()
        .lines()
        .find(|l| l.contains("gitgate::audit") && l.contains("action=\"token.created\""))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(audit.contains(&format!("request_id={created}")), "{audit}");
    // The command line's rows (setup's users) name no request.
    for row in rows("user.added") {
        assert_eq!(row["requestId"], Value::Null, "{row}");
    }
}

/// A user's stored password hash edited by hand (with SQLite) to ask for passes by the
/// billion is refused at once, answered as any failed login, and said in the log as an ERROR
/// naming the user: before, its check ran on a blocking thread for days, holding one of the
/// few password checks, and the call got no answer (here the client's 30 s read timeout).
/// Other users log in as ever.
#[test]
fn a_password_hash_edited_beyond_what_gitgate_checks_is_refused_at_once() {
    let (install, server) = setup();
    let changed = rusqlite::Connection::open(install.path().join("gitgate.db"))
        .unwrap()
        .execute(
            "UPDATE users SET password_hash = replace(password_hash, ',t=2,', ',t=4294967295,') \
             WHERE slug = 'alice'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let r = server.api("GET", "/users/alice", "alice", "");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.error_message().contains("wrong user name or password"),
        "{}",
        r.body
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let log = server.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("refused unchecked")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        said.contains("ERROR") && said.contains("alice") && said.contains("t=4294967295"),
        "{said}"
    );
    let r = server.api("GET", "/users/bob", "bob", "");
    assert_eq!(r.status, 200, "{}", r.body);
}
