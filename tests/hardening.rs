//! Abuse and fault behaviour of the real `gitgate serve`, over raw TCP:
//! failed-authentication throttling, per-principal rate limits and their CLI overrides, a store
//! moved away and back or replaced while serving, a store locked by another process, and a client that
//! disappears in the middle of a push.

mod common;
mod hardening_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::group_alive;
use hardening_support::{basic, gitgate, header, status, Server};

/// A little more than `guard::OVERRIDES_TTL_MS`: a CLI change has reached the server by then.
const OVERRIDES_TTL: Duration =
    Duration::from_millis(gitgate::guard::OVERRIDES_TTL_MS as u64 + 500);

const IR: &str = "/team/app.git/info/refs?service=git-upload-pack";

fn get(server: &Server, target: &str, secret: &str) -> Vec<u8> {
    server.raw(
        format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            basic("alice", secret)
        )
        .as_bytes(),
    )
}

/// Until `n` request lines with `field` (`status=429`) are in the server's log: lines are
/// written in order, so a line a request writes before its request line is there by then too.
fn wait_for_request_lines(server: &Server, field: &str, n: usize) {
    wait_for(&format!("{n} request lines with {field}"), || {
        server
            .log()
            .lines()
            .filter(|l| l.contains("gitgate::request") && l.contains(field))
            .count()
            == n
    });
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// That `retry` (a `Retry-After`) is what a bucket refilling one token every `per_token`
/// seconds says when it was emptied at most `since` ago: `per_token` less the seconds refilled
/// since (rounded up), never less than 1.
#[track_caller]
fn assert_retry_after_within(retry: u64, per_token: u64, since: Duration) {
    let least = (per_token as f64 - since.as_secs_f64()).ceil().max(1.0) as u64;
    assert!(
        (least..=per_token).contains(&retry),
        "Retry-After {retry}, not within {least}..={per_token} ({since:?} after the first request)"
    );
}

/// The `request_id` a log line carries.
fn request_id_in(line: &str) -> &str {
    line.split("request_id=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no request_id: {line}"))
}

#[test]
fn repeated_failures_block_the_address_before_the_store_is_read() {
    let server = Server::start("[auth_failures]\nmax = 3\nwindow_seconds = 60\n");
    // Three different wrong credentials: the same one again would count once.
    for i in 0..3 {
        assert_eq!(status(&get(&server, IR, &format!("ggt_wrong{i}"))), 401);
    }
    // Blocked now: even a valid token gets 429, with the back-off in Retry-After.
    let resp = get(&server, IR, &server.write_token);
    assert_eq!(status(&resp), 429, "{}", String::from_utf8_lossy(&resp));
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "Retry-After {retry}");
    assert!(header(&resp, "content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(String::from_utf8_lossy(&resp).contains("too many failed authentications"));
    assert!(server.backend_hits().is_empty());
    // The decision is a log line and an audit event (written before the store is moved away
    // below, which would make the writer's batch fail).
    wait_for("the throttle log line", || {
        server
            .log()
            .contains("address blocked after repeated authentication failures")
    });
    wait_for("the auth.throttled audit event", || {
        gitgate(&server.config(), &["audit", "--json"], None).contains("auth.throttled")
    });
    // The block's line names the request whose failure made it: the third 401's.
    let log = server.log();
    let blocked = log
        .lines()
        .find(|l| l.contains("address blocked after repeated authentication failures"))
        .unwrap();
    let id = request_id_in(blocked);
    assert!(
        log.lines().any(|l| l.contains(&format!("request_id={id} "))
            && l.contains("status=401")
            && !l.contains("address blocked")),
        "no 401 request line with {id}:\n{log}"
    );
    // So does its audit row: the on-call person joins it to that request's line.
    let rows: serde_json::Value = serde_json::from_str(&gitgate(
        &server.config(),
        &["audit", "--json", "--action", "auth.throttled"],
        None,
    ))
    .unwrap();
    assert_eq!(rows[0]["requestId"], id, "{rows}");
    // ... decided before the store is read: with the store gone, still 429, not 503.
    let db = server.path("gitgate.db");
    let away = server.path("gitgate.db.away");
    std::fs::rename(&db, &away).unwrap();
    let resp = get(&server, IR, &server.write_token);
    std::fs::rename(&away, &db).unwrap();
    assert_eq!(status(&resp), 429, "{}", String::from_utf8_lossy(&resp));
}

/// A block whose `auth.throttled` row the store cannot take (a full disk; here a trigger that
/// refuses audit rows) is logged with what the row would have held — the address, the detail,
/// the blocking request — not with the store's error alone: the log is then the only record.
#[test]
fn a_block_the_store_cannot_audit_is_logged_with_its_row() {
    let server = Server::start("[auth_failures]\nmax = 3\nwindow_seconds = 60\n");
    rusqlite::Connection::open(server.path("gitgate.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_events \
             BEGIN SELECT RAISE(ABORT, 'no space left (test)'); END;",
        )
        .unwrap();
    for i in 0..3 {
        assert_eq!(status(&get(&server, IR, &format!("ggt_wrong{i}"))), 401);
    }
    let lost = |log: &str| {
        log.lines()
            .find(|l| l.contains("it is only logged") && l.contains("auth.throttled"))
            .map(str::to_owned)
    };
    wait_for("the lost auth.throttled row's line", || {
        lost(&server.log()).is_some()
    });
    let log = server.log();
    let lost = lost(&log).unwrap();
    let blocked = log
        .lines()
        .find(|l| l.contains("address blocked after repeated authentication failures"))
        .unwrap();
    let id = request_id_in(blocked);
    for field in [
        "no space left (test)".to_string(),
        "actor=gitgate".to_string(),
        "source=127.0.0.1".to_string(),
        "target=\"127.0.0.1\"".to_string(),
        "3 failed authentications within 60 s: blocked for 60 s".to_string(),
        format!("request_id={id}"),
    ] {
        assert!(lost.contains(&field), "{field} not in: {lost}");
    }
}

/// A CI fleet behind one NAT address, exempt: one job's bad token must not block the others.
/// Its failures are still audited.
#[test]
fn an_exempt_address_is_never_blocked() {
    // Ten different wrong secrets (one tried again counts once): without `exempt` the same
    // failures block the address.
    let failures = |server: &Server| -> Vec<u16> {
        (0..10)
            .map(|i| status(&get(server, IR, &format!("ggt_wrong{i}"))))
            .collect()
    };
    let unexempt = Server::start("[auth_failures]\nmax = 3\nwindow_seconds = 60\n");
    assert!(failures(&unexempt).contains(&429));
    drop(unexempt);
    let server = Server::start(
        "[auth_failures]\nmax = 3\nwindow_seconds = 60\nexempt = [\"127.0.0.0/8\"]\n",
    );
    assert_eq!(failures(&server), vec![401; 10]);
    let resp = get(&server, IR, &server.write_token);
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    wait_for("the auth.failed audit event", || {
        gitgate(&server.config(), &["audit", "--json"], None).contains("auth.failed")
    });
    assert!(
        !server.log().contains("address blocked"),
        "{}",
        server.log()
    );
}

#[test]
fn rate_limit_counts_exchanges_not_round_trips_and_obeys_overrides() {
    // One token every 20 s: the third request is refused however long a loaded machine takes
    // over the first two (each runs `git http-backend`). With one every 2 s, as before, two
    // that took 2 s let the third through.
    let server = Server::start(
        "[rate_limit]\ncapacity = 2\nrefill_per_second = 0.05\n[auth_failures]\nmax = 1000\n",
    );
    let w = server.write_token.clone();
    let started = Instant::now();
    assert_eq!(status(&get(&server, IR, &w)), 200);
    assert_eq!(status(&get(&server, IR, &w)), 200);
    let resp = get(&server, IR, &w);
    assert_eq!(status(&resp), 429, "{}", String::from_utf8_lossy(&resp));
    // Retry-After: the 20 s of a token, less what has refilled since the first request.
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert_retry_after_within(retry, 20, started.elapsed());
    assert!(String::from_utf8_lossy(&resp).contains("rate limit exceeded for user:alice"));
    // Its log line names the request it refused, by the id of its request line (a 429).
    let log = server.log();
    let said = log
        .lines()
        .find(|l| l.contains("rate limit exceeded") && l.contains("principal=user:alice"))
        .unwrap_or_else(|| panic!("{log}"));
    let id = request_id_in(said);
    assert!(
        log.lines().any(|l| l.contains("gitgate::request")
            && l.contains(&format!("request_id={id} "))
            && l.contains("status=429")),
        "{log}"
    );
    // All of alice's personal tokens share her bucket.
    assert_eq!(status(&get(&server, IR, &server.read_token)), 429);
    // That second refusal, within the minute, is in the request log only: a client flooding
    // past its limit does not double the log's lines. (Lines are written in order: once its
    // request line is there, a line of its own would be too.)
    wait_for_request_lines(&server, "status=429", 2);
    let log = server.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("rate limit exceeded"))
            .count(),
        1,
        "{log}"
    );
    assert!(said.contains("unlogged=0"), "{said}");

    // The RPC that follows an advertisement is paid for by it: a clone is one request.
    let resp = upload_pack_post(&server, &w);
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));

    // An exemption from the CLI applies within the override cache's lifetime.
    gitgate(&server.config(), &["ratelimit", "exempt", "alice"], None);
    let listed = gitgate(&server.config(), &["ratelimit", "list", "--json"], None);
    assert!(
        listed.contains("user:alice") && listed.contains("exempt"),
        "{listed}"
    );
    std::thread::sleep(OVERRIDES_TTL);
    for _ in 0..5 {
        assert_eq!(status(&get(&server, IR, &w)), 200);
    }
    // A tighter override: capacity 1 and a slow refill.
    gitgate(
        &server.config(),
        &[
            "ratelimit",
            "set",
            "alice",
            "--capacity",
            "1",
            "--refill",
            "0.1",
        ],
        None,
    );
    std::thread::sleep(OVERRIDES_TTL);
    let started = Instant::now();
    assert_eq!(status(&get(&server, IR, &w)), 200);
    let resp = get(&server, IR, &w);
    assert_eq!(status(&resp), 429);
    // The override's 10 s a token (the default's would say 20), less what refilled between
    // the two: a second of a loaded machine's made it 9, and an exact "10" failed.
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert_retry_after_within(retry, 10, started.elapsed());
    gitgate(&server.config(), &["ratelimit", "clear", "alice"], None);
    assert!(!gitgate(&server.config(), &["ratelimit", "list"], None).contains("user:alice"));
}

/// A browser that holds alice's token for this site sends it with what another site's page has
/// it fetch (`<img src>` of `info/refs`): such requests are refused before the token is looked
/// at, so they cannot empty her bucket and keep her own clones refused `429`.
#[test]
fn a_web_page_of_another_site_cannot_spend_a_git_users_rate_limit() {
    let server = Server::start(
        "[rate_limit]\ncapacity = 2\nrefill_per_second = 0.01\n[auth_failures]\nmax = 1000\n",
    );
    let page = |extra: &str| {
        server.raw(
            format!(
                "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n{extra}Connection: close\r\n\r\n",
                basic("alice", &server.write_token)
            )
            .as_bytes(),
        )
    };
    for extra in [
        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n",
        "Sec-Fetch-Site: same-site\r\n",
        "Origin: https://evil.example\r\n",
    ]
    .iter()
    .cycle()
    .take(9)
    {
        let resp = page(extra);
        assert_eq!(status(&resp), 403, "{}", String::from_utf8_lossy(&resp));
        assert!(
            String::from_utf8_lossy(&resp).contains("a web page of another site"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    }
    // Her bucket is whole: two exchanges, then the limit.
    assert_eq!(status(&get(&server, IR, &server.write_token)), 200);
    // A link she followed is hers, as one typed in is.
    let followed = page(
        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n\
         Sec-Fetch-User: ?1\r\n",
    );
    assert_eq!(
        status(&followed),
        200,
        "{}",
        String::from_utf8_lossy(&followed)
    );
    assert_eq!(status(&get(&server, IR, &server.write_token)), 429);
    let log = server.log();
    assert!(
        log.contains("refused a request for its form")
            && log.contains("Sec-Fetch-Site: cross-site"),
        "{log}"
    );
    assert!(
        !log.contains(&server.write_token),
        "the token is in the log"
    );
}

/// A page of another site that a browser keeps loading (or a client repeating one malformed
/// request) is refused once per request, in the request log, and its reason is said once a
/// minute per address and reason, with `unlogged=` the refusals since — not a second line per
/// request. Another reason from the same address is news, said at once.
#[test]
fn a_flood_of_refusals_for_their_form_says_its_reason_once_with_a_count() {
    let server = Server::start("[auth_failures]\nmax = 1000\n");
    let send = |extra: &str| {
        server.raw(
            format!(
                "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n{extra}Connection: close\r\n\r\n",
                basic("alice", &server.write_token)
            )
            .as_bytes(),
        )
    };
    let image =
        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n";
    for _ in 0..30 {
        assert_eq!(status(&send(image)), 403);
    }
    assert_eq!(status(&send("Origin: https://evil.example\r\n")), 403);
    for _ in 0..5 {
        assert_eq!(status(&send("Content-Encoding: br\r\n")), 415);
    }
    // Each refusal has its request line (target `gitgate::request`, not `gitgate::request_log`).
    let request_lines = |status: &str| {
        server
            .log()
            .lines()
            .filter(|l| l.contains("gitgate::request: ") && l.contains(status))
            .count()
    };
    wait_for("the request lines", || {
        request_lines("status=403") == 31 && request_lines("status=415") == 5
    });
    let log = server.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a request for its form"))
        .collect();
    assert_eq!(said.len(), 3, "{log}");
    assert!(
        said[0].contains("Sec-Fetch-Site: cross-site")
            && said[0].contains("status=403")
            && said[0].contains("remote=127.0.0.1")
            && said[0].contains(" unlogged=0"),
        "{}",
        said[0]
    );
    assert!(
        said[1].contains("Origin: https://evil.example"),
        "{}",
        said[1]
    );
    assert!(said[2].contains("status=415"), "{}", said[2]);
    // The line names the request it was said for, as every line a request writes does.
    let first = log
        .lines()
        .find(|l| l.contains("gitgate::request: ") && l.contains("status=403"))
        .unwrap();
    assert_eq!(request_id_in(said[0]), request_id_in(first));
}

/// `POST git-upload-pack` as alice with `secret` (an empty request: git answers at once).
fn upload_pack_post(server: &Server, secret: &str) -> Vec<u8> {
    let body = b"0000";
    let post = format!(
        "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        basic("alice", secret),
        body.len()
    );
    let mut bytes = post.into_bytes();
    bytes.extend_from_slice(body);
    server.raw(&bytes)
}

/// POSTs sent without advertisements (each would start a pack) are not free: with no credit
/// from an advertisement, each takes a token.
#[test]
fn posts_without_advertisements_are_rate_limited() {
    let server = Server::start(
        "[rate_limit]\ncapacity = 2\nrefill_per_second = 0.01\n[auth_failures]\nmax = 1000\n",
    );
    assert_eq!(status(&upload_pack_post(&server, &server.read_token)), 200);
    assert_eq!(status(&upload_pack_post(&server, &server.read_token)), 200);
    let resp = upload_pack_post(&server, &server.read_token);
    assert_eq!(status(&resp), 429, "{}", String::from_utf8_lossy(&resp));
    assert!(String::from_utf8_lossy(&resp).contains("rate limit exceeded for user:alice"));
}

#[test]
fn every_worker_thread_counts_against_the_same_limits() {
    // Four event loops; a rate limit of 4 exchanges for alice, barely refilling.
    let server = Server::start_with(
        "workers = 4\n",
        "[rate_limit]\ncapacity = 4\nrefill_per_second = 0.01\n[auth_failures]\nmax = 1000\n",
    );
    assert!(server.log().contains("workers=4"), "{}", server.log());
    // Eight connections open at once: each new one goes to the least busy worker, so every
    // worker holds two of them before any request is sent.
    let conns: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    common::wait_until_accepted(server.addr.port(), 0);
    let request = format!(
        "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("alice", &server.write_token)
    );
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                let request = &request;
                scope.spawn(move || {
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    c.write_all(request.as_bytes()).unwrap();
                    let mut out = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut c, &mut out);
                    status(&out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let allowed = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    // Per-worker buckets would have let all eight through.
    assert_eq!((allowed, limited), (4, 4), "{statuses:?}");
}

#[test]
fn a_store_moved_away_fails_closed_and_serves_again_when_moved_back() {
    let server = Server::start("");
    let w = server.write_token.clone();
    assert_eq!(status(&get(&server, IR, &w)), 200);
    let db = server.path("gitgate.db");
    let away = server.path("away.db");
    std::fs::rename(&db, &away).unwrap();
    for _ in 0..5 {
        let resp = get(&server, IR, &w);
        assert_eq!(status(&resp), 503, "{}", String::from_utf8_lossy(&resp));
        assert!(String::from_utf8_lossy(&resp).contains("cannot check tokens"));
    }
    // Each refusal has its request line; the cause is said once, not with every request (a
    // flood would write thousands a second).
    let log = server.log();
    assert_eq!(
        log.matches("token store unavailable; refusing requests")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("status=503").count(), 5, "{log}");
    // The same file back: served again, and the end of the outage is said, with its count.
    std::fs::rename(&away, &db).unwrap();
    let resp = get(&server, IR, &w);
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let log = server.log();
    let over = log
        .lines()
        .find(|l| l.contains("token store available again"))
        .unwrap_or_else(|| panic!("no end of the outage: {log}"));
    assert!(over.contains("refused=5"), "{over}");
    assert_eq!(status(&get(&server, IR, &w)), 200);
    assert_eq!(server.log().matches("available again").count(), 1);
    // A second outage counts from one.
    std::fs::rename(&db, &away).unwrap();
    assert_eq!(status(&get(&server, IR, &w)), 503);
    let log = server.log();
    let second = log
        .lines()
        .filter(|l| l.contains("token store unavailable; refusing requests"))
        .nth(1)
        .unwrap_or_else(|| panic!("the second outage is not said: {log}"));
    assert!(second.contains("refused=1"), "{second}");
    std::fs::rename(&away, &db).unwrap();
}

/// SECURITY.md promise 8: a store that cannot be read gives `503`, and is served again once it
/// can. Here another process holds, in the store's `-shm`, the locks that every SQLite reader
/// must take one of to begin a read (the read marks of the WAL index), so that neither a pooled
/// connection nor a new one can read the store (it need not be moved or damaged; a process
/// holding them keeps every reader out, where a writer's lock keeps out only other writers). A
/// token not in the cache is then refused once SQLite gives up ("locking protocol", after about
/// 10 s of tries): `503` with the reason, the backend never reached. Let go, the same token is
/// served. It fails if a store that cannot be read is taken for a store without the token, or
/// its error for a pass.
#[test]
fn a_store_that_cannot_be_read_fails_closed_and_serves_again_once_it_can() {
    use std::os::fd::AsRawFd;

    let server = Server::start("");
    // Never used yet: not in the cache, so only the store can tell whether it is valid.
    let token = server.read_token.clone();
    let request = format!(
        "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("alice", &token)
    );
    let shm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(server.path("gitgate.db-shm"))
        .unwrap();
    // SQLite's WAL-index locks are bytes 120 to 127 of the `-shm`: WRITE, CHECKPOINT, RECOVER,
    // then the five read marks, of which a reader takes one shared. Taken here exclusive (once
    // a read the server may have under way has ended: F_SETLKW waits for it).
    // SAFETY: a plain struct of integers, then a system call on a descriptor this test owns.
    let held = unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        lock.l_start = 123;
        lock.l_len = 5;
        libc::fcntl(shm.as_raw_fd(), libc::F_SETLKW, &lock)
    };
    assert_eq!(held, 0, "{}", std::io::Error::last_os_error());

    // (Read with a longer deadline than `get`'s: SQLite tries for about 10 s.)
    let resp = common::raw_http(server.addr.port(), request.as_bytes());
    assert_eq!(resp.status, 503, "{resp:?}\n{}", server.log());
    assert!(
        resp.text().contains("cannot check tokens right now"),
        "{}",
        resp.text()
    );
    assert!(
        server.backend_hits().is_empty(),
        "{:?}",
        server.backend_hits()
    );
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("token store unavailable; refusing requests")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("status=503") && l.contains(&format!("token_id={}", &token[4..16]))),
        "{log}"
    );

    // Closing the file lets go of its locks: the same token is read, and served.
    drop(shm);
    let resp = common::raw_http(server.addr.port(), request.as_bytes());
    assert_eq!(resp.status, 200, "{resp:?}\n{}", server.log());
    assert_eq!(
        server.backend_hits().len(),
        1,
        "{:?}",
        server.backend_hits()
    );
}

#[test]
fn a_store_replaced_while_serving_is_refused_until_a_restart() {
    let mut server = Server::start("");
    let (w, r) = (server.write_token.clone(), server.read_token.clone());
    assert_eq!(status(&get(&server, IR, &w)), 200);

    // A consistent copy (WAL included), then the store disappears under the running server.
    let db = server.path("gitgate.db");
    let backup = server.path("backup.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
            .unwrap();
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let resp = get(&server, IR, &w);
    assert_eq!(status(&resp), 503, "{}", String::from_utf8_lossy(&resp));

    // The copy put in its place is another file: refused, and the log says what to do.
    std::fs::rename(&backup, &db).unwrap();
    for token in [&w, &r] {
        let resp = get(&server, IR, token);
        assert_eq!(status(&resp), 503, "{}", String::from_utf8_lossy(&resp));
    }
    assert!(server
        .log()
        .contains("the store file was replaced while gitgate was running"));
    // A revocation in the restored file, then a restart: the restored file is what counts.
    // Another process keeps the file open meanwhile, so the revocation stays in the `-wal`
    // at the stop, which must tell of it.
    // (`VACUUM INTO` made the copy in rollback mode: WAL first, as gitgate's CLI would.)
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    holder
        .query_row("SELECT count(*) FROM tokens", [], |r| r.get::<_, i64>(0))
        .unwrap();
    gitgate(&server.config(), &["token", "revoke", &w[4..16]], None);
    server.stop();
    drop(holder);
    // The stop tells what to remove before the next start, before its own last line.
    let log = server.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("stopped: every connection closed"), "{log}");
    assert!(
        log.contains("were deleted while gitgate was running, and another process has written"),
        "{log}"
    );
    server.start_again();
    assert_eq!(status(&get(&server, IR, &w)), 401);
    assert_eq!(status(&get(&server, IR, &r)), 200);
}

/// A revocation made before the `-wal` and `-shm` were deleted is only in the log the server
/// still has open (a CLI cannot checkpoint while the server runs): with nobody writing since,
/// the stop's checkpoint is what keeps it.
#[test]
fn a_revocation_made_before_the_index_was_deleted_holds_after_a_restart() {
    let mut server = Server::start("");
    let w = server.write_token.clone();
    assert_eq!(status(&get(&server, IR, &w)), 200);
    gitgate(&server.config(), &["token", "revoke", &w[4..16]], None);
    assert_eq!(status(&get(&server, IR, &w)), 401);
    let db = server.path("gitgate.db");
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).unwrap();
    }
    assert_eq!(status(&get(&server, IR, &w)), 503);
    // Something for the writer to write after the deletion, so that its try fails and it is in
    // its retry pause at the stop: an unreadable `Authorization` is refused before the store is
    // read, and its `auth.failed` row waits for the writer. (A use of another token just before
    // the deletion was not enough: on a loaded machine its last use could be written before
    // the files were gone, and then no try failed.)
    let unreadable = server.raw(
        format!(
            "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: Basic !!!notbase64\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status(&unreadable), 401);
    wait_for("the writer's failed try", || {
        server
            .log()
            .contains("could not write audit events and last uses (try 1 of")
    });
    server.restart();
    let resp = get(&server, IR, &w);
    assert_eq!(status(&resp), 401, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(status(&get(&server, IR, &server.read_token)), 200);
}

/// The same, with the server killed (SIGKILL: the OOM killer, a stop that ran out of time)
/// instead of stopped: no stop of its own writes the deleted log back. It was written into the
/// store file as soon as the deletion was seen, so the revocation holds; before, the revoked
/// token worked again after the restart, and its audit event was gone.
///
/// The kill comes once the log says the write is done, not at the 503: the first thread to
/// see the deletion writes the log, and that may be the store's writer (committing the
/// requests' last use and audit event just then) while the request's own check refuses at once
/// without waiting for it. So the 503 can come first, as it did in a loaded run.
#[test]
fn a_revocation_made_before_the_index_was_deleted_holds_after_a_kill() {
    let mut server = Server::start("");
    let w = server.write_token.clone();
    let id = &w[4..16];
    assert_eq!(status(&get(&server, IR, &w)), 200);
    gitgate(&server.config(), &["token", "revoke", id], None);
    assert_eq!(status(&get(&server, IR, &w)), 401);
    let db = server.path("gitgate.db");
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).unwrap();
    }
    assert_eq!(status(&get(&server, IR, &w)), 503);
    // Every outcome of that write (done, partly done, failed, not tried) says this.
    wait_for("the store's word on its own log", || {
        server
            .log()
            .contains("the store's -wal and -shm were deleted while gitgate was running")
    });
    assert!(
        server
            .log()
            .contains("its own log was written into the store file now"),
        "{}",
        server.log()
    );
    server.kill();
    server.start_again();
    assert_revoked_after_the_restart(&server, &w, id);
    assert!(gitgate(
        &server.config(),
        &["audit", "--action", "token.revoked", "--target", id],
        None
    )
    .contains(id));
}

/// A backup moved over the store file without stopping gitgate first (which the README asks
/// for), its `-wal` and `-shm` left in place: they hold the old file's log, which the next start
/// would apply to the restored file. The stop says so and what to remove, and leaves a marker
/// that keeps the next start (and `check`, and the CLI) from applying that log — a plain restart
/// undid the restore without a word, or made the copy look damaged; removed, the restored file
/// is what counts (here: from before a revocation).
#[test]
fn a_store_restored_over_the_running_server_says_what_to_remove_at_the_stop() {
    let mut server = Server::start("");
    let r = server.read_token.clone();
    assert_eq!(status(&get(&server, IR, &r)), 200);
    let db = server.path("gitgate.db");
    let backup = server.path("backup.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
            .unwrap();
    }
    gitgate(&server.config(), &["token", "revoke", &r[4..16]], None);
    assert_eq!(status(&get(&server, IR, &r)), 401);
    std::fs::rename(&backup, &db).unwrap();
    assert_eq!(status(&get(&server, IR, &r)), 503);
    // Until then, a command or a check would read the old file's log as the restored file's
    // (users it does not have) and write it into it: each is refused, and changes nothing.
    let wal = format!("{}-wal", db.display());
    let shm = format!("{}-shm", db.display());
    let files = || [&db.display().to_string(), &wal, &shm].map(|f| std::fs::read(f).unwrap());
    // The server's own writer may still hold the requests' audit events and last uses (written
    // within about a second, into the old file's log): compared once it has written them.
    let mut before = files();
    let settled_by = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = files();
        if now == before || std::time::Instant::now() > settled_by {
            break;
        }
        before = now;
    }
    for command in [
        &["user", "list"][..],
        &["token", "list"],
        &["check"],
        &["token", "revoke", &r[4..16]],
    ] {
        let mut cmd = common::gitgate_command(&server.config());
        cmd.args(command);
        let run = common::run(cmd, None);
        let said = run.fails_with("belong to another store file than");
        assert!(
            said.contains(&format!("process {} ", server.pid())),
            "{command:?}: {said}"
        );
    }
    assert!(
        files() == before,
        "a refused command changed the store's files"
    );
    server.stop();
    let marker = format!("{}-replaced", db.display());
    let advice = format!(
        "refuse the store until {marker} is removed. If the new file is a restored backup, \
         remove {wal}, {shm} and the marker before starting gitgate again"
    );
    assert!(server.log().contains(&advice), "{}", server.log());
    // The next start, as a check tells, refuses until they are.
    let before = files();
    let mut check = common::gitgate_command(&server.config());
    check.arg("check");
    common::run(check, None).fails_with(&format!(
        "{marker} says the store file was replaced while gitgate was running"
    ));
    assert!(files() == before, "the check changed the store's files");
    for file in [&wal, &shm, &marker] {
        std::fs::remove_file(file).unwrap();
    }
    server.start_again();
    let resp = get(&server, IR, &r);
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
}

/// A revocation written by another process with its own new `-wal` (the CLI refuses the store
/// in this state — see `a_command_refuses_a_store_whose_logs_were_deleted_under_a_server` —
/// but any SQLite client can): the token's row, revoked now.
fn revoke_behind_the_servers_back(db: &std::path::Path, id: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let changed = conn
        .execute(
            "UPDATE tokens SET revoked_at = 1700000000000 WHERE id = ?1",
            [id],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

/// The store's `-wal` and `-shm` deleted under the running server: another process makes new
/// ones, and its revocation must not go unseen by a server still reading the old, deleted index.
#[test]
fn a_store_index_deleted_while_serving_fails_closed() {
    let mut server = Server::start("");
    let w = server.write_token.clone();
    assert_eq!(status(&get(&server, IR, &w)), 200);
    let db = server.path("gitgate.db");
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).unwrap();
    }
    revoke_behind_the_servers_back(&db, &w[4..16]);
    let resp = get(&server, IR, &w);
    assert_eq!(status(&resp), 503, "{}", String::from_utf8_lossy(&resp));
    assert!(server.log().contains(
        "the store's -wal or -shm file was deleted, moved or replaced while gitgate was running"
    ));
    // After a restart the revocation is what counts.
    server.restart();
    assert_eq!(status(&get(&server, IR, &w)), 401);
}

/// That the token `w` (id `id`) is refused and listed as revoked.
fn assert_revoked_after_the_restart(server: &Server, w: &str, id: &str) {
    let resp = get(server, IR, w);
    assert_eq!(status(&resp), 401, "{}", String::from_utf8_lossy(&resp));
    assert!(
        !gitgate(&server.config(), &["token", "show", id, "--json"], None)
            .contains("\"revokedAt\": null")
    );
}

/// A revocation made before the `-wal` and `-shm` were deleted under the server is in its log
/// alone: a command that read the store now would show the token active, and one that wrote
/// would start a new log, so that the server's could never be written back — the revocation
/// lost at the restart. Every command, and `check`, refuses the store instead, naming the
/// process; the stop writes the log back, and the revocation holds.
#[test]
fn a_command_refuses_a_store_whose_logs_were_deleted_under_a_server() {
    let mut server = Server::start("");
    let w = server.write_token.clone();
    let id = &w[4..16];
    gitgate(&server.config(), &["token", "revoke", id], None);
    assert_eq!(status(&get(&server, IR, &w)), 401);
    let db = server.path("gitgate.db");
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).unwrap();
    }
    let refused = |args: &[&str]| {
        let mut cmd = common::gitgate_command(&server.config());
        cmd.args(args);
        let run = common::run(cmd, Some("pw\n"));
        let said = run.fails_with("are gone, but process").to_string();
        assert!(
            said.contains(&server.pid().to_string())
                && said.contains("stop that process")
                && said.contains("Nothing was opened or changed"),
            "{said}"
        );
    };
    refused(&["user", "add", "bob", "--password-stdin"]);
    refused(&["token", "list"]);
    refused(&["check"]);
    // Nothing was made beside the store.
    for suffix in ["-wal", "-shm"] {
        assert!(!std::path::Path::new(&format!("{}{suffix}", db.display())).exists());
    }
    server.restart();
    assert_revoked_after_the_restart(&server, &w, id);
}

/// The same, once the server has written to its log file (the token's last use): the server's
/// connections to the old, deleted `-wal` must not be checkpointed into the store when they are
/// closed at the stop. That checkpoint would write the token's row as the old log has it (not
/// revoked) over the CLI's revocation, and then delete the CLI's new `-wal` by its name.
///
/// Both when a request saw the change before the stop, and when none did (the stop is then the
/// first to look).
#[test]
fn a_restart_after_the_index_was_deleted_keeps_what_the_cli_wrote_meanwhile() {
    for asked_before_the_stop in [true, false] {
        restart_after_the_index_was_deleted(asked_before_the_stop, false);
    }
    // The CLI's new log emptied into the file by a third process's checkpoint (a backup tool's
    // `wal_checkpoint(TRUNCATE)`): the revocation is in the file now, not in any log.
    restart_after_the_index_was_deleted(true, true);
}

fn restart_after_the_index_was_deleted(asked_before_the_stop: bool, checkpointed: bool) {
    let mut server = Server::start("");
    let w = server.write_token.clone();
    let id = &w[4..16];
    assert_eq!(status(&get(&server, IR, &w)), 200);
    // The last use is committed to the server's log (a batch, within a few seconds).
    wait_for("the token's last use", || {
        gitgate(&server.config(), &["token", "show", id, "--json"], None)
            .contains("\"lastUsedAt\": 1")
    });
    let db = server.path("gitgate.db");
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).unwrap();
    }
    revoke_behind_the_servers_back(&db, id);
    if checkpointed {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(conn);
        let wal = std::fs::metadata(format!("{}-wal", db.display()));
        assert!(
            wal.map_or(true, |m| m.len() == 0),
            "the log was not emptied"
        );
    }
    if asked_before_the_stop {
        assert_eq!(status(&get(&server, IR, &w)), 503);
    }
    server.restart();
    assert_revoked_after_the_restart(&server, &w, id);
    assert!(
        server
            .log()
            .contains("gitgate's own log from before the deletion is left unapplied"),
        "{}",
        server.log()
    );
}

/// A server whose wall clock a test steps: libfaketime reads the offset from a file at every
/// call, the monotonic clock left alone (an NTP step moves only the wall clock). `None` where
/// libfaketime is missing (see `common::faketime_library`).
fn server_with_a_steppable_clock(config: &str) -> Option<(Server, SteppedClock)> {
    let lib = common::faketime_library()?;
    let dir = tempfile::tempdir().unwrap();
    let clock = SteppedClock {
        offset: dir.path().join("offset"),
        _dir: dir,
    };
    clock.set("+0");
    let server = Server::start_env(
        config,
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", clock.offset.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    Some((server, clock))
}

/// The wall clock of a [`server_with_a_steppable_clock`].
struct SteppedClock {
    offset: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SteppedClock {
    /// Sets the server's wall clock `offset` (libfaketime's form: `+86400`, `-3600`) from the
    /// real one, from its next reading on.
    fn set(&self, offset: &str) {
        std::fs::write(&self.offset, format!("{offset}\n")).unwrap();
    }
}

/// Rate limits and the failed-authentication throttle measure intervals, on a monotonic clock:
/// the wall clock stepped back an hour (an NTP correction, a VM resumed from a snapshot) must
/// neither stop a bucket's refill nor keep an address blocked for that hour.
#[test]
fn a_wall_clock_stepped_back_neither_stops_the_refill_nor_lengthens_a_block() {
    // A token every 2 s: 1.3 of them in the 2.6 s below.
    let Some((server, clock)) = server_with_a_steppable_clock(
        "[rate_limit]\ncapacity = 2\nrefill_per_second = 0.5\n\
         [auth_failures]\nmax = 2\nwindow_seconds = 2\n",
    ) else {
        return;
    };
    let w = server.write_token.clone();
    // The bucket emptied: requests until one is refused for it. (Two, and a third refused, as
    // before, held only while the two took less than a token's time, which was half a second
    // then: on a loaded machine two runs of `git http-backend` took longer.)
    let mut allowed = 0;
    loop {
        let resp = get(&server, IR, &w);
        if status(&resp) == 429 {
            assert!(
                String::from_utf8_lossy(&resp).contains("rate limit exceeded"),
                "{}",
                String::from_utf8_lossy(&resp)
            );
            break;
        }
        assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
        allowed += 1;
        assert!(allowed < 10, "the bucket never emptied");
    }
    assert!(allowed >= 2, "a full bucket holds two");
    // And the address blocked by two bad tokens.
    // Two different secrets: one tried again would count once.
    for bad in [
        "ggt_aaaaaaaaaaaa_not-a-real-secret",
        "ggt_bbbbbbbbbbbb_not-a-real-secret",
    ] {
        assert_eq!(status(&get(&server, IR, bad)), 401);
    }
    let blocked = get(&server, IR, &w);
    assert_eq!(status(&blocked), 429);
    // The block's own answer, not the emptied bucket's.
    assert!(
        String::from_utf8_lossy(&blocked).contains("too many failed authentications"),
        "{}",
        String::from_utf8_lossy(&blocked)
    );
    let retry: u64 = header(&blocked, "retry-after").unwrap().parse().unwrap();
    assert!(retry <= 2, "Retry-After {retry}");

    // The wall clock goes back an hour; the block (2 s) and the refill (one every 2 s) do not.
    clock.set("-3600");
    std::thread::sleep(Duration::from_millis(2600));
    let resp = get(&server, IR, &server.read_token);
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));

    // The step really reached gitgate: the last use it wrote for that token is an hour old.
    let conn = rusqlite::Connection::open(server.path("gitgate.db")).unwrap();
    let id = &server.read_token[4..16];
    let mut used = None;
    wait_for("the last use to be written", || {
        used = conn
            .query_row("SELECT last_used_at FROM tokens WHERE id = ?1", [id], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .unwrap();
        used.is_some()
    });
    let age = common::now_ms() - used.unwrap();
    assert!(
        age > 50 * 60 * 1000,
        "last use only {age} ms ago: the clock did not move"
    );
}

/// A (re)start while another process holds the store's write lock for longer than the busy
/// timeout (a long CLI change, say) serves anyway: only a store gitgate cannot write at all
/// keeps it from starting.
#[test]
fn a_start_while_another_process_holds_the_write_lock_serves() {
    let mut server = Server::start("");
    let w = server.write_token.clone();
    let conn = rusqlite::Connection::open(server.path("gitgate.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    server.restart();
    let log = server.log();
    let warned = log
        .lines()
        .find(|l| l.contains("the token store is locked by another process: serving"))
        .unwrap_or_else(|| panic!("{log}"));
    // Named, with what to do: SQLite says only "database is locked".
    assert!(
        warned.contains(&format!("held by process {}", std::process::id()))
            && warned.contains("COMMIT or ROLLBACK"),
        "{warned}"
    );
    assert_eq!(status(&get(&server, IR, &w)), 200);
    conn.execute_batch("ROLLBACK").unwrap();
}

/// A store another process keeps locked even for readers (`locking_mode=EXCLUSIVE`) cannot be
/// served: the start stops after the busy timeout, naming the process, and changes nothing.
#[test]
fn a_start_on_a_store_another_process_holds_exclusively_names_that_process() {
    let mut server = Server::start("");
    server.stop();
    let conn = rusqlite::Connection::open(server.path("gitgate.db")).unwrap();
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;")
        .unwrap();
    let mut serve = common::gitgate_command(&server.config());
    serve.arg("serve");
    let out = common::run(serve, None);
    let said = out.fails_with("keeps it locked for more than 5 s");
    assert!(
        said.contains(&format!("process {}", std::process::id()))
            && said.contains("nothing was changed"),
        "{said}"
    );
    // check, which reads the store without taking locks, says so too.
    let mut check = common::gitgate_command(&server.config());
    check.arg("check");
    let checked = common::run(check, None);
    let said = checked.fails_with("keeps it locked from every other process");
    assert!(
        said.contains(&format!("process {}", std::process::id())),
        "{said}"
    );
    drop(conn);
    // Let go, the store is fine for both; a running gitgate's own read locks are no hold.
    server.start_again();
    let mut check = common::gitgate_command(&server.config());
    check.arg("check");
    common::run(check, None).ok();
}

/// A stop signal while the start waits on that lock ends the start there: nothing is served,
/// and the log does not go on to say "listening" and "ready".
#[test]
fn a_stop_while_the_start_waits_on_a_locked_store_ends_it_there() {
    let mut server = Server::start("");
    server.stop();
    let conn = rusqlite::Connection::open(server.path("gitgate.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let log = server.path("locked-start.log");
    let mut child = common::gitgate_command(&server.config())
        .arg("serve")
        .env("GITGATE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The start has the store open, and waits for the lock (SQLite's busy timeout, 5 s).
    let db = std::fs::canonicalize(server.path("gitgate.db")).unwrap();
    wait_for("the start to open the store", || {
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == db))
            })
            .unwrap_or(false)
    });
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    conn.execute_batch("ROLLBACK").unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {text}");
    assert!(
        text.contains("stopped: SIGTERM came while the token store was being opened"),
        "{text}"
    );
    assert!(
        !text.contains("listening on") && !text.contains("ready"),
        "{text}"
    );
}

#[test]
fn a_store_locked_by_another_writer_still_serves_and_the_write_is_tried_again() {
    let server = Server::start("");
    let w = server.write_token.clone();
    let conn = rusqlite::Connection::open(server.path("gitgate.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Reads go on in WAL mode while another process holds the write lock, without waiting
    // for it: a request that waited would take SQLite's busy timeout (5 s) at least; below
    // that, a loaded machine's seconds are allowed.
    let started = Instant::now();
    assert_eq!(status(&get(&server, IR, &w)), 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(4500),
        "answered after {took:?}"
    );
    // ...and the last-used write, which waits out the busy timeout off the request path,
    // fails with a log line and is kept for another try, for as long as the lock is held.
    wait_for("the failed last-use write to be logged", || {
        server.log().contains("wait for the lock")
    });
    let log = server.log();
    let waiting = log
        .lines()
        .find(|l| l.contains("wait for the lock"))
        .unwrap();
    assert!(
        waiting.contains(&format!("held by process {}", std::process::id())),
        "{waiting}"
    );
    assert_eq!(status(&get(&server, IR, &w)), 200);
    let id = &w[4..16];
    let last_used = |conn: &rusqlite::Connection| -> Option<i64> {
        conn.query_row("SELECT last_used_at FROM tokens WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(
        last_used(&conn),
        None,
        "written through another writer's lock"
    );
    // Once the lock is gone, a later try writes it: nothing was lost.
    conn.execute_batch("ROLLBACK").unwrap();
    wait_for("the last use to be written", || last_used(&conn).is_some());
    assert!(!server.log().contains("they are lost"));
    // And the log, which said the writes wait, says that the wait is over.
    wait_for("the end of the wait to be said", || {
        server
            .log()
            .lines()
            .any(|l| l.contains("the token store takes audit events and last uses again"))
    });
}

/// Child processes of `pid` (Linux).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// An `Authorization` header that cannot be read (not base64, no colon in it) is a failed
/// authentication like a wrong token: counted by the address throttle and audited. Else a
/// guesser could send unreadable headers without limit, and the operator would see no trace
/// of them. Three different ones block the address (`429`), a valid token included.
#[test]
fn unreadable_authorization_headers_count_as_failed_authentications() {
    let server = Server::start("[auth_failures]\nmax = 3\nwindow_seconds = 60\n");
    let with = |authorization: &str| {
        server.raw(
            format!(
                "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: {authorization}\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let text = |resp: &[u8]| String::from_utf8_lossy(resp).into_owned();
    for unreadable in [
        "Basic !!!notbase64".to_owned(),
        format!("Basic {}", common::base64(b"alicenocolon")),
        "Basic %%%".to_owned(),
    ] {
        let resp = with(&unreadable);
        assert_eq!(status(&resp), 401, "{unreadable}: {}", text(&resp));
        assert!(
            text(&resp).contains("unusable Authorization header"),
            "{unreadable}: {}",
            text(&resp)
        );
    }
    let resp = get(&server, IR, &server.write_token);
    assert_eq!(status(&resp), 429, "{}", text(&resp));
    wait_for("the auth.failed audit event", || {
        gitgate(&server.config(), &["audit", "--json"], None).contains("auth.failed")
    });
    assert!(
        server.backend_hits().is_empty(),
        "{:?}",
        server.backend_hits()
    );
}

#[test]
fn a_client_gone_mid_push_ends_the_backend() {
    let mut server = Server::start("");
    let mut s = TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\nTransfer-Encoding: chunked\r\n\r\n\
         2\r\n00\r\n",
        basic("alice", &server.write_token)
    );
    s.write_all(head.as_bytes()).unwrap();
    // The push has reached the backend, which now waits for the rest of the body.
    wait_for("the backend to start", || !server.backend_hits().is_empty());
    let pid = server.pid();
    wait_for("a backend process", || !children(pid).is_empty());
    // Each backend leads a process group of its own: the group covers what it started
    // (git-receive-pack), which would no longer be gitgate's child if it outlived its parent.
    let groups = children(pid);
    assert!(groups.iter().all(|&g| group_alive(g)));
    // git http-backend writes its headers before it reads the pack, but gitgate holds them
    // until the push is fed (a proxy in front stops sending once it has an answer): nothing
    // comes while the pack is still coming.
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        s.read(&mut byte).is_err(),
        "an answer came before the push's end"
    );
    // The client breaks off mid-upload.
    drop(s);
    wait_for("the backend's whole group to be ended", || {
        !groups.iter().any(|&g| group_alive(g))
    });
    assert!(server.alive(), "gitgate itself must keep running");
    // The client's doing, logged as such: not a failed response stream to alert on.
    wait_for("the push's log line", || {
        server
            .log()
            .lines()
            .any(|l| l.contains("git-receive-pack") && l.contains("outcome="))
    });
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("git-receive-pack") && l.contains("outcome="))
        .unwrap();
    assert!(line.contains("outcome=client-gone"), "{line}");
    assert!(!log.contains("response stream failed"), "{log}");
}

/// An upload-pack POST of alice's whose chunked body stops short: a chunk of 0x40 bytes of
/// which 20 come, the backend started on it.
fn half_a_chunked_body(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-upload-pack-request\r\nTransfer-Encoding: chunked\r\n\r\n\
         40\r\n0014command=ls-refs\n",
        basic("alice", &server.read_token)
    );
    s.write_all(head.as_bytes()).unwrap();
    wait_for("the backend to start", || !server.backend_hits().is_empty());
    s
}

/// The log line of the upload-pack request, once it is written.
fn the_upload_pack_log_line(server: &Server) -> String {
    let of_the_request = |l: &str| l.contains("git-upload-pack") && l.contains("outcome=");
    wait_for("the request's log line", || {
        server.log().lines().any(of_the_request)
    });
    server
        .log()
        .lines()
        .find(|l| of_the_request(l))
        .unwrap()
        .to_owned()
}

/// A client that resets its connection mid-upload is gone: nobody is left to read the `400` of
/// its body broken off, so its request is logged as a client gone before its answer (`499`),
/// not as a `400` sent (as one that only closed its sending side is, below).
#[test]
fn a_client_that_resets_mid_body_is_logged_as_gone_before_its_answer() {
    let server = Server::start("");
    let s = half_a_chunked_body(&server);
    // Closed with a reset, not a FIN.
    common::close_with_a_reset(s);
    let line = the_upload_pack_log_line(&server);
    assert!(line.contains("status=499"), "{line}");
    assert!(line.contains("outcome=client-gone"), "{line}");
}

#[test]
fn a_client_that_half_closes_mid_body_reads_its_400_and_the_log_says_so() {
    let server = Server::start("");
    let mut s = half_a_chunked_body(&server);
    // Then the client closes its sending side only.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let line = the_upload_pack_log_line(&server);
    // The status it was sent, not a 499 "never sent"; the outcome says the client closed.
    assert!(line.contains("status=400"), "{line}");
    assert!(line.contains("outcome=client-gone"), "{line}");
}

/// Sends the command and half the pack of a 4 MB push to `server` (made in a scratch
/// repository: one commit of noise that does not compress), and waits until receive-pack is
/// taking it into its quarantine; the connection, still open.
fn half_a_push(server: &Server) -> TcpStream {
    let (commit, pack) = a_push_pack(server);
    let s = send_half(server, &commit, &pack, "refs/heads/main");
    // receive-pack is taking the pack into its quarantine.
    wait_for("the quarantine to be made", || {
        !quarantines(server).is_empty()
    });
    s
}

/// A pack of one commit holding 4 MB that does not compress, made in a scratch repository; the
/// commit's id and the pack.
fn a_push_pack(server: &Server) -> (String, Vec<u8>) {
    let work = server.path("scratch");
    let git = |args: &[&str], stdin: Option<&[u8]>| -> Vec<u8> {
        let mut child = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(&work)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or_default()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        out.stdout
    };
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "-b", "main"], None);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(work.join("noise.bin"), noise).unwrap();
    git(&["add", "noise.bin"], None);
    git(&["commit", "-q", "-m", "noise"], None);
    let commit = String::from_utf8(git(&["rev-parse", "HEAD"], None)).unwrap();
    let pack = git(
        &["pack-objects", "--stdout", "--revs", "-q"],
        Some(b"HEAD\n"),
    );
    assert!(pack.len() > 4 << 20);
    (commit.trim().to_owned(), pack)
}

/// Sends the command creating `branch` and half of `pack` to `server` as a push; the
/// connection, still open.
fn send_half(server: &Server, commit: &str, pack: &[u8], branch: &str) -> TcpStream {
    // The command, a flush, and the first half of the pack.
    let command = format!("{} {commit} {branch}\0report-status\n", "0".repeat(40));
    let mut body = format!("{:04x}{command}0000", command.len() + 4).into_bytes();
    body.extend_from_slice(&pack[..pack.len() / 2]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n",
        basic("alice", &server.write_token),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    s
}

/// Sends the command creating `branch` and all of `pack` to `server` as a push; the
/// connection, still open.
fn send_whole(server: &Server, commit: &str, pack: &[u8], branch: &str) -> TcpStream {
    let mut s = send_half(server, commit, pack, branch);
    let rest = &pack[pack.len() / 2..];
    s.write_all(format!("\r\n{:x}\r\n", rest.len()).as_bytes())
        .unwrap();
    s.write_all(rest).unwrap();
    s.write_all(b"\r\n0\r\n\r\n").unwrap();
    s
}

/// The quarantine folders in the objects of `team/app.git`.
fn quarantines(server: &Server) -> Vec<String> {
    std::fs::read_dir(server.path("repos/team/app.git/objects"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp_objdir-incoming"))
        .collect()
}

/// A push cut off while one worker already lets as many pushes finish alone as it may (8,
/// each in a pre-receive hook that waits for the test's word here) is ended, but as at a stop —
/// input closed first, output still read — so that receive-pack removes its quarantine too (its
/// output unread, it died of SIGPIPE and left it).
#[test]
fn a_push_cut_off_past_the_finishing_cap_leaves_no_quarantined_objects() {
    let server = Server::start_with("workers = 1", "");
    let hook = server.path("repos/team/app.git/hooks/pre-receive");
    // The eight stay in their hooks until `go` is there (30 s at most, should the test fail
    // first): as long as the test needs them there, and not a fixed 8 s more.
    let go = server.path("hook-go");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ni=0\nwhile [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); \
             done\n",
            go.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (commit, pack) = a_push_pack(&server);
    let whole: Vec<TcpStream> = (0..8)
        .map(|i| send_whole(&server, &commit, &pack, &format!("refs/heads/whole{i}")))
        .collect();
    wait_for("eight pushes in their hook", || {
        quarantines(&server).len() == 8
    });
    drop(whole);
    wait_for("eight pushes finishing without their clients", || {
        server
            .log()
            .matches("the client left during a push; git receive-pack finishes it")
            .count()
            == 8
    });
    let cut = send_half(&server, &commit, &pack, "refs/heads/cut");
    wait_for("a ninth quarantine", || quarantines(&server).len() == 9);
    drop(cut);
    // Its quarantine goes while the eight are still in their hooks.
    wait_for("the cut push's quarantine to go", || {
        quarantines(&server).len() == 8
    });
    let log = server.log();
    assert!(
        log.contains("pushes are already finishing without theirs: ending this one"),
        "{log}"
    );
    std::fs::write(&go, "").unwrap();
    wait_for("the eight to finish", || quarantines(&server).is_empty());
}

/// The same push cut off by a stop instead (its grace period over): gitgate ends it by closing
/// its input first, as for a client that left, not with a SIGTERM, which receive-pack does not
/// catch while it takes a pack: its quarantine would stay on disk.
#[test]
fn a_push_cut_off_by_a_stop_leaves_no_quarantined_objects() {
    let mut server = Server::start_with("shutdown_grace_seconds = 1", "");
    let s = half_a_push(&server);
    server.stop();
    assert_eq!(
        quarantines(&server),
        Vec::<String>::new(),
        "{}",
        server.log()
    );
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("git-receive-pack") && l.contains("outcome="))
        .unwrap_or_else(|| panic!("{log}"));
    // Its answer was held while its pack was going up: a second before the cut it is answered
    // `503` (the server is stopping) rather than cut off, its input closed all the same.
    assert!(
        line.contains("status=503") && line.contains("outcome=complete"),
        "{line}"
    );
    drop(s);
}

/// A push whose pack had arrived whole, cut off by a stop while its pre-receive hook ran: in
/// the second receive-pack is given to end, its hook ends and its ref is updated. Its client
/// was told it failed and its request is logged `shutdown`, so the log says it was applied.
#[test]
fn a_push_applied_as_a_stop_ended_it_is_said_to_be_applied() {
    let mut server = Server::start_with("shutdown_grace_seconds = 1", "");
    let (running, go) = (server.path("hook-running"), server.path("hook-go"));
    let hook = server.path("repos/team/app.git/hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >/dev/null\ntouch '{}'\ni=0\nwhile [ ! -e '{}' ] && [ $i -lt 400 ]; do \
             sleep 0.05; i=$((i+1)); done\n",
            running.display(),
            go.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (commit, pack) = a_push_pack(&server);
    let client = send_whole(&server, &commit, &pack, "refs/heads/applied");
    wait_for("the push in its hook", || running.exists());
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap()
        .success());
    // The grace period over, the request is cut off ...
    wait_for("the push to be cut off", || {
        server
            .log()
            .lines()
            .any(|l| l.contains("git-receive-pack") && l.contains("outcome=shutdown"))
    });
    // ... and its hook lets it go on within the second it has.
    std::fs::write(&go, b"").unwrap();
    wait_for("the server to exit", || !server.alive());
    let log = server.log();
    let said = log
        .lines()
        .find(|l| l.contains("a push gitgate ended had its refs updated all the same"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        said.contains("unpack ok, 1 ref(s) updated")
            && said.contains("/team/app.git/git-receive-pack (user alice)"),
        "{said}"
    );
    // Said before the last line.
    assert!(log.find(said) < log.find("stopped:"), "{log}");
    let refs = std::process::Command::new("git")
        .args(["for-each-ref", "--format=%(refname)"])
        .current_dir(server.path("repos/team/app.git"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&refs.stdout),
        "refs/heads/applied\n"
    );
    drop(client);
}

/// A push whose chunked body is malformed, from a client that stays for its answer: a `400`,
/// and receive-pack's failure (its input ended early) is logged as what it is — not as a
/// client that left, nor as a warning. So is the same body to upload-pack.
#[test]
fn a_malformed_push_body_is_a_400_and_no_warning_of_a_client_that_left() {
    let server = Server::start("");
    for rpc in ["git-receive-pack", "git-upload-pack"] {
        let request = format!(
            "POST /team/app.git/{rpc} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
             Content-Type: application/x-{rpc}-request\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n0x4\r\n0000\r\n0\r\n\r\n",
            basic("alice", &server.write_token)
        );
        let resp = server.raw(request.as_bytes());
        assert_eq!(
            status(&resp),
            400,
            "{rpc}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert!(
            String::from_utf8_lossy(&resp).contains("the request body was malformed"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    }
    wait_for("the push's end in the log", || {
        server.log().contains("a push whose upload broke off")
    });
    let log = server.log();
    assert!(!log.contains("the client left during a push"), "{log}");
    assert!(!log.contains("whose client left"), "{log}");
    assert!(!log.lines().any(|l| l.contains(" WARN ")), "{log}");
}

/// A push cut off in the middle of its pack: receive-pack is told by the end of its input, fails
/// the pack (a pack is applied only whole) and removes its quarantined objects. Killed, as any
/// other backend is, it would leave them on disk — tens of MB for each interrupted push.
#[test]
fn a_push_cut_off_mid_pack_leaves_no_quarantined_objects() {
    let server = Server::start("");
    let s = half_a_push(&server);
    let quarantines = || quarantines(&server);
    // receive-pack is taking the pack into its quarantine.
    wait_for("the quarantine to be made", || !quarantines().is_empty());
    let pid = server.pid();
    let groups = children(pid);
    drop(s);
    wait_for("the backend to end", || {
        !groups.iter().any(|&g| group_alive(g))
    });
    assert_eq!(quarantines(), Vec::<String>::new(), "{}", server.log());
    // Nothing of the push was applied.
    let refs = std::process::Command::new("git")
        .args(["for-each-ref"])
        .current_dir(server.path("repos/team/app.git"))
        .output()
        .unwrap();
    assert!(refs.stdout.is_empty(), "{refs:?}");
    assert!(
        server.log().contains("closing the backend's input"),
        "{}",
        server.log()
    );
    // How the push ended is logged, with what it was: a failure it should have, its upload
    // having broken off, so no warning.
    let said = "a push whose upload broke off (its client left, or sent a malformed body) has";
    wait_for("the push's end in the log", || {
        server
            .log()
            .lines()
            .any(|l| l.contains(said) && l.contains("/team/app.git/git-receive-pack (user alice)"))
    });
    // ... and what it did, which its exit status does not say (receive-pack exits 0 when it
    // refuses a pack): not an update.
    let log = server.log();
    let line = log.lines().find(|l| l.contains(said)).unwrap();
    assert!(
        line.contains("outcome=") && !line.contains("ref(s) updated"),
        "{line}"
    );
    assert!(!line.contains(" WARN "), "{line}");
}

/// A connection that sends no request — nothing at all, an HTTP/2 preface and half a header
/// block, or one cheap HTTP/2 request and then nothing — is closed after the header deadline, not
/// the (much longer) idle timeout: else a client could hold every place under `max_connections`
/// for minutes at a time.
#[test]
fn a_connection_without_a_request_is_closed_after_the_header_deadline() {
    let server = Server::start_with(
        "header_read_timeout_seconds = 1\nidle_timeout_seconds = 60",
        "",
    );
    let closed_within = |s: &mut TcpStream| -> Duration {
        let start = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {} // an HTTP/2 server's SETTINGS, GOAWAY
            }
        }
    };
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut h2 = TcpStream::connect(server.addr).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    h2.write_all(&h2_frame_on(4, 0, 0, &[])).unwrap(); // SETTINGS
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    literal(&mut block, ":path", "/team/app.git/info/refs");
    // HEADERS without END_HEADERS: a header block that never ends.
    h2.write_all(&h2_frame_on(1, 0x01, 1, &block)).unwrap();
    // One cheap request on HTTP/2 (which has no header deadline between requests), then quiet.
    let mut h2_once = TcpStream::connect(server.addr).unwrap();
    h2_once
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    h2_once.write_all(&h2_frame_on(4, 0, 0, &[])).unwrap();
    let mut probe = vec![0x82, 0x86]; // :method GET, :scheme http
    literal(&mut probe, ":path", "/healthz");
    literal(&mut probe, ":authority", "t");
    h2_once
        .write_all(&h2_frame_on(1, 0x05, 1, &probe)) // END_STREAM | END_HEADERS
        .unwrap();
    for s in [&mut silent, &mut h2, &mut h2_once] {
        let took = closed_within(s);
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
    }
    // A client that asks in time is served as before, and keeps its connection.
    let mut s = TcpStream::connect(server.addr).unwrap();
    let ask = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    for _ in 0..2 {
        s.write_all(ask.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1);
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        let chunked = header(&head, "transfer-encoding").is_some();
        assert!(!chunked, "{}", String::from_utf8_lossy(&head));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
    }
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame_on(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name" (lengths below 127).
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    for s in [name, value] {
        assert!(s.len() < 127);
        block.push(s.len() as u8);
        block.extend_from_slice(s.as_bytes());
    }
}

/// An HTTP/2 client that resets its stream with NO_ERROR ends the request body cleanly (no
/// error) short of its Content-Length — the one break hyper does not report as an error. git
/// http-backend, told a push's length and copying it to receive-pack, loops on that early end at
/// full CPU for good, and once receive-pack has exited nothing else would end it; so it is not
/// told the length of a push, and hands receive-pack its input as it comes.
#[test]
fn an_http2_push_reset_short_of_its_length_leaves_no_backend_behind() {
    let mut server = Server::start("");
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame_on(4, 0, 0, &[])).unwrap(); // SETTINGS
                                                      // :method POST and :scheme http from the static table, then the rest as literals.
    let mut block = vec![0x83, 0x86];
    literal(&mut block, ":path", "/team/app.git/git-receive-pack");
    literal(&mut block, ":authority", "t");
    let authorization = basic("alice", &server.write_token);
    literal(&mut block, "authorization", &authorization);
    literal(
        &mut block,
        "content-type",
        "application/x-git-receive-pack-request",
    );
    literal(&mut block, "content-length", "100000");
    s.write_all(&h2_frame_on(1, 0x04, 1, &block)).unwrap(); // HEADERS, END_HEADERS
                                                            // A flush packet: receive-pack has no commands and exits, closing the answer.
    s.write_all(&h2_frame_on(0, 0, 1, b"0000")).unwrap();
    let pid = server.pid();
    wait_for("the push to reach the backend", || {
        !server.backend_hits().is_empty()
    });
    // Every backend group seen in the next half second (receive-pack done, its answer ended).
    let mut groups = Vec::new();
    let seen = Instant::now();
    while seen.elapsed() < Duration::from_millis(500) {
        groups.extend(children(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    s.write_all(&h2_frame_on(3, 0, 1, &[0, 0, 0, 0])).unwrap(); // RST_STREAM(NO_ERROR)
    wait_for("every backend to be ended", || {
        children(pid).is_empty() && !groups.iter().any(|&g| group_alive(g))
    });
    assert!(server.alive(), "gitgate itself must keep running");
    drop(s);
}

#[test]
fn requests_in_flight_are_capped_per_principal_and_freed_when_done() {
    // A bucket of 3 that hardly refills: the held push takes one; requests refused for the
    // cap must not take the rest.
    let server = Server::start(
        "[rate_limit]\nmax_concurrent = 1\ncapacity = 3\nrefill_per_second = 0.001\n",
    );
    // One push held open: its body never ends, so the request stays in flight.
    let mut held = TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\nTransfer-Encoding: chunked\r\n\r\n\
         2\r\n00\r\n",
        basic("alice", &server.write_token)
    );
    held.write_all(head.as_bytes()).unwrap();
    wait_for("the held push to reach the backend", || {
        !server.backend_hits().is_empty()
    });

    // alice's other token shares her principal: refused while the push is in flight.
    let resp = get(&server, IR, &server.read_token);
    assert_eq!(status(&resp), 429, "{}", String::from_utf8_lossy(&resp));
    assert!(header(&resp, "retry-after").is_some());
    assert!(
        String::from_utf8_lossy(&resp).contains("in flight for user:alice"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    for _ in 0..4 {
        assert_eq!(status(&get(&server, IR, &server.read_token)), 429);
    }

    // When the held request ends, its place is free again, and the bucket still holds what
    // the refused requests did not take.
    drop(held);
    wait_for("the place to be freed", || {
        status(&get(&server, IR, &server.read_token)) == 200
    });
}

/// The cap is checked where an exchange starts, whose refusal git prints; a POST carrying on an
/// exchange already admitted gets through up to twice the cap — refused, git would print no
/// reason, only "RPC failed; HTTP 429" half-way through a clone.
#[test]
fn a_post_carrying_on_an_exchange_is_not_refused_at_the_cap() {
    let server = Server::start("[rate_limit]\nmax_concurrent = 1\n");
    let hold_a_push = || {
        let mut held = TcpStream::connect(server.addr).unwrap();
        let head = format!(
            "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
             Content-Type: application/x-git-receive-pack-request\r\n\
             Transfer-Encoding: chunked\r\n\r\n2\r\n00\r\n",
            basic("alice", &server.write_token)
        );
        held.write_all(head.as_bytes()).unwrap();
        held
    };
    let upload_pack = || {
        server.raw(
            format!(
                "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
                 Content-Type: application/x-git-upload-pack-request\r\nContent-Length: 4\r\n\
                 Connection: close\r\n\r\n0000",
                basic("alice", &server.read_token)
            )
            .as_bytes(),
        )
    };
    let first = hold_a_push();
    wait_for("the held push to reach the backend", || {
        server.backend_hits().len() == 1
    });
    // A new exchange is refused where it starts: git shows this.
    let resp = get(&server, IR, &server.read_token);
    assert_eq!(status(&resp), 429, "{}", String::from_utf8_lossy(&resp));
    // The POST of one already admitted is not.
    let resp = upload_pack();
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    // Up to twice the cap: with two held, a third request of any kind is refused.
    let second = hold_a_push();
    wait_for("the second held push to reach the backend", || {
        server.backend_hits().len() == 3
    });
    let resp = upload_pack();
    assert_eq!(status(&resp), 429, "{}", String::from_utf8_lossy(&resp));
    // Two refusals within the minute: one line about the cap, the second only in the request
    // log (lines are written in order: once its request line is there, a line of its own
    // would be too).
    wait_for_request_lines(&server, "status=429", 2);
    let log = server.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("too many requests in flight"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("unlogged=0"), "{log}");
    drop((first, second));
}

/// GET `target` as alice with `secret`, as if relayed by a load balancer for `client`.
fn get_via_proxy(server: &Server, target: &str, secret: &str, client: &str) -> Vec<u8> {
    server.raw(
        format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
             X-Forwarded-For: {client}\r\nConnection: close\r\n\r\n",
            basic("alice", secret)
        )
        .as_bytes(),
    )
}

#[test]
fn behind_a_trusted_proxy_the_client_address_is_what_counts() {
    // The tests connect from 127.0.0.1, which plays the load balancer here.
    let server = Server::start_with(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "[auth_failures]\nmax = 2\nwindow_seconds = 60\n",
    );
    let read_id = &server.read_token[4..16];
    gitgate(
        &server.config(),
        &[
            "token",
            "edit",
            read_id,
            "--allowed-network",
            "203.0.113.0/24",
        ],
        None,
    );
    // Allowed networks see the client behind the proxy, not the proxy.
    let inside = get_via_proxy(&server, IR, &server.read_token, "203.0.113.5");
    assert_eq!(status(&inside), 200, "{}", String::from_utf8_lossy(&inside));
    let outside = get_via_proxy(&server, IR, &server.read_token, "198.51.100.1");
    assert_eq!(
        status(&outside),
        403,
        "{}",
        String::from_utf8_lossy(&outside)
    );
    assert_eq!(status(&get(&server, IR, &server.read_token)), 403);

    // The throttle blocks the guessing client, not everyone behind the same proxy.
    for i in 0..2 {
        let r = get_via_proxy(&server, IR, &format!("wrong{i}"), "192.0.2.1");
        assert_eq!(status(&r), 401);
    }
    assert_eq!(
        status(&get_via_proxy(
            &server,
            IR,
            &server.write_token,
            "192.0.2.1"
        )),
        429
    );
    assert_eq!(
        status(&get_via_proxy(
            &server,
            IR,
            &server.write_token,
            "192.0.2.2"
        )),
        200
    );

    // A client that sends `X-Forwarded-For: x` (the balancer appends its address) is still
    // itself: its guesses block it, not the balancer and everyone behind it.
    for i in 0..2 {
        let r = get_via_proxy(&server, IR, &format!("wrong{i}"), "x, 192.0.2.3");
        assert_eq!(status(&r), 401);
    }
    let guesser = get_via_proxy(&server, IR, &server.write_token, "192.0.2.3");
    assert_eq!(status(&guesser), 429);
    let balancer = get(&server, IR, &server.write_token);
    assert_eq!(
        status(&balancer),
        200,
        "{}",
        String::from_utf8_lossy(&balancer)
    );
    // ... and its allowed networks are checked against its own address.
    let outside = get_via_proxy(&server, IR, &server.read_token, "x, 198.51.100.1");
    assert_eq!(status(&outside), 403);
    // What the balancer itself wrote cannot be read: refused, not taken for the balancer.
    let unreadable = get_via_proxy(&server, IR, &server.read_token, "203.0.113.5, unknown");
    assert_eq!(status(&unreadable), 400);
    assert!(
        String::from_utf8_lossy(&unreadable).contains("X-Forwarded-For"),
        "{}",
        String::from_utf8_lossy(&unreadable)
    );
    // The same of a management API request, refused before the API sees it.
    let api = get_via_proxy(
        &server,
        "/rest/access-tokens/1.0/users/alice",
        &server.read_token,
        "203.0.113.5, unknown",
    );
    assert_eq!(status(&api), 400, "{}", String::from_utf8_lossy(&api));
    assert!(
        String::from_utf8_lossy(&api).contains("X-Forwarded-For"),
        "{}",
        String::from_utf8_lossy(&api)
    );
    // A balancer that names the client in `Forwarded` (RFC 7239) alone: gitgate reads only
    // X-Forwarded-For, and the balancer's own address would be every client's.
    let forwarded_only = server.raw(
        format!(
            "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
             Forwarded: for=203.0.113.5\r\nConnection: close\r\n\r\n",
            basic("alice", &server.read_token)
        )
        .as_bytes(),
    );
    assert_eq!(
        status(&forwarded_only),
        400,
        "{}",
        String::from_utf8_lossy(&forwarded_only)
    );
    // Logged like every request: one line with its status, from the proxy's address.
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("status=400") && l.contains("remote=127.0.0.1")),
        "{log}"
    );
    assert!(
        log.contains("names the client in a Forwarded header, which gitgate does not read"),
        "{log}"
    );
    // A proxy that sends every request so is warned of once a minute, not once a request:
    // the git request's and the API's (and three more) under one warning, each with its
    // request line.
    for _ in 0..3 {
        let r = get_via_proxy(&server, IR, &server.read_token, "unknown");
        assert_eq!(status(&r), 400);
    }
    let log = server.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("X-Forwarded-For names no client address"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains(" unlogged=0"), "{}", warned[0]);
}

/// SECURITY.md promise 6: Basic spelled `basic` (as CI checkouts write it into
/// `http.extraHeader`) is answered `403` when its token is refused, so that git prints the
/// reason, but its failures count for the address throttle like those under `Basic`: else a
/// guesser would only have to write the scheme in lower case to guess without limit. The
/// wrong tokens are of each kind a refusal comes from (a mistyped token, one the store has
/// revoked, a password); after three of them the address is blocked (`429`), a valid token
/// under either spelling included. An empty password (an unset CI variable) tries nothing and
/// does not count. It fails if the failures under `basic` are not counted, or are answered
/// otherwise.
#[test]
fn wrong_tokens_under_lower_case_basic_are_throttled_too() {
    let server = Server::start("[auth_failures]\nmax = 3\nwindow_seconds = 60\n");
    let lower = |scheme: &str, secret: &str| {
        let auth = format!(
            "{scheme} {}",
            common::base64(format!("alice:{secret}").as_bytes())
        );
        server.raw(
            format!(
                "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let text = |resp: &[u8]| String::from_utf8_lossy(resp).into_owned();
    for _ in 0..5 {
        let resp = lower("basic", "");
        assert_eq!(status(&resp), 403, "{}", text(&resp));
        assert!(text(&resp).contains("have no password"), "{}", text(&resp));
    }
    let resp = lower("basic", &server.write_token);
    assert_eq!(status(&resp), 200, "{}", text(&resp));
    let read_id = &server.read_token[4..16];
    gitgate(&server.config(), &["token", "revoke", read_id], None);
    for (scheme, wrong, reason) in [
        (
            "basic",
            common::flip_secret(&server.write_token),
            "a character in it is wrong",
        ),
        ("basic", server.read_token.clone(), "revoked"),
        (
            "BASIC",
            "Summer2024".to_owned(),
            "not a gitgate access token",
        ),
    ] {
        let resp = lower(scheme, &wrong);
        assert_eq!(status(&resp), 403, "{}", text(&resp));
        assert!(text(&resp).contains(reason), "{reason}: {}", text(&resp));
    }
    for scheme in ["basic", "Basic"] {
        let resp = lower(scheme, &server.write_token);
        assert_eq!(status(&resp), 429, "{scheme}: {}", text(&resp));
        assert!(header(&resp, "retry-after").is_some(), "{}", text(&resp));
    }
    wait_for("the auth.throttled audit event", || {
        gitgate(&server.config(), &["audit", "--json"], None).contains("auth.throttled")
    });
    assert_eq!(
        server.backend_hits().len(),
        1,
        "{:?}",
        server.backend_hits()
    );
}

/// A rotation's old secret still in use is said in the log once a minute per token; the wall
/// clock stepped back an hour (an NTP correction) after a saying must not keep the next use
/// unsaid for that hour — the record, cached across the writer's commits, kept the time of the
/// saying, an hour "ahead" of the clock.
#[test]
fn a_wall_clock_stepped_back_does_not_silence_the_old_secrets_use() {
    let Some((server, clock)) = server_with_a_steppable_clock("") else {
        return;
    };
    let old = server.read_token.clone();
    let id = &old[4..16];
    // Two hours of overlap: an hour back stays inside it.
    let new = gitgate(
        &server.config(),
        &[
            "token",
            "rotate",
            id,
            "--overlap-seconds",
            "7200",
            "--password-stdin",
        ],
        Some("pw\n"),
    );
    assert!(new.starts_with("ggt_") && new != old);
    let said = || {
        server
            .log()
            .lines()
            .filter(|l| l.contains("previous secret was used") && l.contains(id))
            .count()
    };
    assert_eq!(status(&get(&server, IR, &old)), 200);
    wait_for("the old secret's use to be said", || said() == 1);
    // Within the minute: not said again.
    assert_eq!(status(&get(&server, IR, &old)), 200);

    clock.set("-3600");
    let resp = get(&server, IR, &old);
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    wait_for("the old secret's use after the step to be said", || {
        said() == 2
    });
    // The step reached gitgate: what it said last names the overlap's end (unchanged) from a
    // clock an hour back — seen in the line's own time.
    let log = server.log();
    let last = log
        .lines()
        .rfind(|l| l.contains("previous secret was used"))
        .unwrap()
        .to_string();
    let first = log
        .lines()
        .find(|l| l.contains("previous secret was used"))
        .unwrap()
        .to_string();
    assert!(last[..19] < first[..19], "{first}\n{last}");
}

/// A token's expiry is judged at each request on the wall clock, whatever the token cache
/// holds: with nothing committed to the store since the token was last let in (its record
/// cached as valid), the clock moving past its expiry (time passing, or an NTP step forward)
/// refuses the next request — ten seconds before it, the same secret is still let in.
#[test]
fn a_token_cached_as_valid_is_refused_once_the_clock_passes_its_expiry() {
    let Some((server, clock)) = server_with_a_steppable_clock("") else {
        return;
    };
    let secret = gitgate(
        &server.config(),
        &[
            "token",
            "create",
            "--project",
            "team",
            "--name",
            "ci",
            "--permission",
            "PROJECT_READ",
            "--expiry-days",
            "1",
        ],
        None,
    );
    assert!(secret.starts_with("ggt_"), "{secret}");
    // Let in, and so cached; nothing is committed from here on but the writer's last uses,
    // which leave the cache as it is.
    assert_eq!(status(&get(&server, IR, &secret)), 200);
    clock.set("+86390");
    assert_eq!(status(&get(&server, IR, &secret)), 200);
    clock.set("+86401");
    let refused = get(&server, IR, &secret);
    assert_eq!(
        status(&refused),
        401,
        "{}",
        String::from_utf8_lossy(&refused)
    );
    assert!(
        String::from_utf8_lossy(&refused).contains("token 'ci' expired on"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    // The other tokens, which do not expire, are let in at that clock.
    assert_eq!(status(&get(&server, IR, &server.read_token)), 200);
}

/// A refused request's own line says why its credentials were refused, in a word (`auth=`):
/// whoever holds one 401's line (or the 403 of a Bearer token) can tell an unknown token from
/// a revoked or expired one, a wrong secret, a wrong user or an unreadable header, without
/// finding its `auth.failed` event (folded with its repeats, and stored up to a second later).
/// The word is from a fixed list: never what the client sent. A request let in has none.
#[test]
fn a_refused_requests_line_says_why_its_credentials_were_refused() {
    let server = Server::start("[auth_failures]\nexempt = [\"127.0.0.0/8\"]\n");
    let (w, r) = (server.write_token.clone(), server.read_token.clone());
    gitgate(&server.config(), &["token", "revoke", &r[4..16]], None);
    let unknown = gitgate::token::generate()
        .unwrap()
        .secret
        .expose()
        .to_owned();
    let id = gitgate::token::parse(&w).unwrap();
    let wrong = gitgate::token::generate_with_id(&id)
        .unwrap()
        .expose()
        .to_owned();
    // Each case under a User-Agent of its own, by which its line is found.
    let with = |case: usize, authorization: &str| {
        server.raw(
            format!(
                "GET {IR} HTTP/1.1\r\nHost: t\r\nUser-Agent: case-{case}\r\n{authorization}\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let cases: Vec<(String, u16, &str)> = vec![
        (String::new(), 401, "no-credentials"),
        (
            format!("Authorization: {}\r\n", basic("alice", &r)),
            401,
            "revoked",
        ),
        (
            format!("Authorization: {}\r\n", basic("alice", &unknown)),
            401,
            "unknown-token",
        ),
        (
            format!("Authorization: {}\r\n", basic("alice", &wrong)),
            401,
            "wrong-secret",
        ),
        (
            format!("Authorization: {}\r\n", basic("bob", &w)),
            401,
            "wrong-user",
        ),
        (
            format!(
                "Authorization: {}\r\n",
                basic("alice", &common::flip_secret(&w))
            ),
            401,
            "mistyped-token",
        ),
        (
            format!("Authorization: {}\r\n", basic("alice", "hunter2")),
            401,
            "password-not-token",
        ),
        (
            "Authorization: Basic !!!notbase64\r\n".into(),
            401,
            "malformed-header",
        ),
        // The token where the user name goes: as `https://TOKEN@host/...` sends it, and with
        // a password after it (GitHub's `TOKEN:x-oauth-basic`), which was `malformed-header`.
        (
            format!("Authorization: {}\r\n", basic(&w, "")),
            403,
            "token-as-user-name",
        ),
        (
            format!("Authorization: {}\r\n", basic(&w, "x-oauth-basic")),
            401,
            "token-as-user-name",
        ),
        (
            format!("Authorization: Bearer {unknown}\r\n"),
            403,
            "unknown-token",
        ),
        (
            format!("Authorization: {}\r\n", basic("alice", &w)),
            200,
            "-",
        ),
    ];
    for (case, (authorization, want, _)) in cases.iter().enumerate() {
        let resp = with(case, authorization);
        assert_eq!(
            status(&resp),
            *want,
            "{authorization}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    wait_for_request_lines(&server, "agent=case-", cases.len());
    let log = server.log();
    for (case, (authorization, want, why)) in cases.iter().enumerate() {
        let agent = format!("agent=case-{case} ");
        let line = log
            .lines()
            .find(|l| {
                l.contains("gitgate::request")
                    && (l.contains(&agent) || l.ends_with(agent.trim_end()))
            })
            .unwrap_or_else(|| panic!("no request line with {agent}:\n{log}"));
        assert!(line.contains(&format!("status={want} ")), "{line}");
        if *why == "-" {
            assert!(!line.contains("auth="), "{line}");
        } else {
            assert!(
                line.contains(&format!(" auth={why}")),
                "{authorization}: {line}"
            );
        }
    }
    for secret in [&w, &r, &unknown, &wrong] {
        assert!(
            !log.contains(&secret[17..60]),
            "a secret in the log:\n{log}"
        );
    }
}

/// A burst of refusals logged once a minute (`unlogged=`) does not lose its tail: the refusals
/// after its last line, which no next refusal will say, are said once its minute has passed or,
/// as here, at the stop — per address and reason for refusals of their form (naming the request
/// whose line has the reason), per principal for the rate limit.
#[test]
fn the_tail_of_a_burst_of_refusals_is_said_at_the_stop() {
    let mut server = Server::start(
        "[rate_limit]\ncapacity = 1\nrefill_per_second = 0.01\n[auth_failures]\nmax = 1000\n",
    );
    let w = server.write_token.clone();
    let image =
        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n";
    let from_a_page = format!(
        "GET {IR} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n{image}Connection: close\r\n\r\n",
        basic("alice", &w)
    );
    for _ in 0..6 {
        assert_eq!(status(&server.raw(from_a_page.as_bytes())), 403);
    }
    assert_eq!(status(&get(&server, IR, &w)), 200);
    for _ in 0..4 {
        assert_eq!(status(&get(&server, IR, &w)), 429);
    }
    wait_for_request_lines(&server, "status=429", 4);
    server.stop();
    let log = server.log();
    let first = log
        .lines()
        .find(|l| l.contains("refused a request for its form") && l.contains(" unlogged=0"))
        .unwrap_or_else(|| panic!("{log}"));
    let tail = log
        .lines()
        .find(|l| l.contains("refused a request for its form: the tail of a burst"))
        .unwrap_or_else(|| panic!("no tail of the form refusals:\n{log}"));
    assert!(
        tail.contains(" unlogged=5")
            && tail.contains("status=403")
            && tail.contains(&format!("after_request_id={}", request_id_in(first))),
        "{tail}"
    );
    let rate_tail = log
        .lines()
        .find(|l| l.contains("rate limit exceeded: the tail of a burst"))
        .unwrap_or_else(|| panic!("no tail of the rate limit's refusals:\n{log}"));
    assert!(
        rate_tail.contains("principal=user:alice") && rate_tail.contains(" unlogged=3"),
        "{rate_tail}"
    );
    // Said before the stop's last line.
    let stopped = log.find("stopped: every connection closed").unwrap();
    assert!(log.find(rate_tail).unwrap() < stopped, "{log}");
}

/// A failed authentication's audit row keeps the `request_id` of the request that made it,
/// so that the row and the request's log line can be joined; repeats folded into one row keep
/// the first one's.
#[test]
fn a_failed_authentications_audit_row_names_its_request() {
    let server = Server::start("[auth_failures]\nmax = 1000\n");
    let wrong = common::flip_secret(&server.write_token);
    for _ in 0..3 {
        assert_eq!(status(&get(&server, IR, &wrong)), 401);
    }
    wait_for_request_lines(&server, "status=401", 3);
    let log = server.log();
    let first = log
        .lines()
        .find(|l| l.contains("gitgate::request: ") && l.contains("status=401"))
        .unwrap();
    let id = request_id_in(first);
    // All three counted: in one row, or in two when the three refusals spanned two of the
    // writer's 100 ms windows (a loaded machine's). Waiting for a first row alone, and then
    // asking for a count of 3, failed when the second window's row was not written yet.
    let mut events = serde_json::Value::Null;
    let counted = |events: &serde_json::Value| -> i64 {
        events.as_array().map_or(0, |rows| {
            rows.iter().map(|e| e["count"].as_i64().unwrap()).sum()
        })
    };
    wait_for("the auth.failed audit rows of all three", || {
        events = serde_json::from_str(&gitgate(
            &server.config(),
            &["audit", "--json", "--action", "auth.failed"],
            None,
        ))
        .unwrap();
        counted(&events) >= 3
    });
    assert_eq!(counted(&events), 3, "{events}");
    // The oldest row is the first refusal's.
    let rows = events.as_array().unwrap();
    assert_eq!(rows[0]["requestId"], id, "{events}");
    // And its audit log line says it too.
    let is_audit = |l: &&str| l.contains("gitgate::audit") && l.contains("action=\"auth.failed\"");
    wait_for("the audit line", || {
        server.log().lines().any(|l| is_audit(&l))
    });
    let log = server.log();
    let audit = log.lines().find(is_audit).unwrap();
    assert!(audit.contains(&format!("request_id={id}")), "{audit}");
}
