//! `GET /metrics` end to end: the real binary with `[metrics] listen` on port 0, real git traffic
//! (a clone, a push, a wrong token, a push without write permission), then a scrape.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use std::io::{Read, Write};
use std::net::TcpStream;

use base64::Engine;
use common::{http_get, Sandbox, Setup, PASSWORD};

/// The port in the `metrics on http://127.0.0.1:PORT/metrics` log line.
fn metrics_port(log: &str) -> Option<u16> {
    const MARK: &str = "metrics on http://127.0.0.1:";
    let at = log.find(MARK)? + MARK.len();
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&p| p != 0)
}

/// Adds `[metrics] listen` on port 0 to the sandbox's config.
fn with_metrics_listener(sb: &Sandbox) {
    std::fs::write(
        sb.config(),
        format!(
            "{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            sb.config_text()
        ),
    )
    .unwrap();
}

/// The metrics port, once the server has logged it (at most 10 s).
fn wait_for_metrics_port(server: &common::Server) -> u16 {
    let start = Instant::now();
    loop {
        if let Some(p) = metrics_port(&server.log_text()) {
            return p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no `metrics on` line:\n{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// A server with `[metrics] listen`, the repository team/app and the user alice: its sandbox,
/// the server, and the metrics port.
fn serving_team_app_to_alice() -> (Sandbox, common::Server, u16) {
    let sb = Sandbox::new();
    with_metrics_listener(&sb);
    sb.create_repo("team/app");
    sb.add_user("alice", PASSWORD);
    let server = sb.serve();
    let port = wait_for_metrics_port(&server);
    (sb, server, port)
}

/// The value of the sample line that starts with `series ` (labels included).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample `{series}` in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_count_real_git_traffic() {
    let sb = Sandbox::new();
    with_metrics_listener(&sb);
    sb.create_repo("team/app");
    sb.add_user("alice", PASSWORD);
    sb.grant("alice", "team", "write");
    let writer = sb.personal_token("alice", PASSWORD, "laptop", &["REPO_WRITE"]);
    let reader = sb.personal_token("alice", PASSWORD, "reader", &["REPO_READ"]);
    sb.cli(&[
        "token",
        "create",
        "--repo",
        "team/app",
        "--name",
        "ci-soon",
        "--permission",
        "REPO_READ",
        "--expiry-days",
        "3",
    ])
    .ok();
    let server = sb.serve();
    let port = wait_for_metrics_port(&server);

    // Allowed: a clone and a push.
    let url = server.url_with("alice", &writer.secret, "team/app");
    sb.git(sb.root(), &["clone", "-q", &url, "work"]).ok();
    let work = sb.root().join("work");
    sb.commit_file(&work, "f.txt", &[7u8; 100_000], "a file");
    sb.git(&work, &["push", "-q", "origin", "main"]).ok();
    // 401: a wrong token.
    let bad = server.url_with("alice", "ggt_nottoken", "team/app");
    assert!(!sb.git(sb.root(), &["ls-remote", &bad]).success());
    // 403: a read-only token pushing.
    let ro = server.url_with("alice", &reader.secret, "team/app");
    sb.git(&work, &["remote", "set-url", "origin", &ro]).ok();
    sb.commit_file(&work, "g.txt", b"more", "another");
    assert!(!sb.git(&work, &["push", "-q", "origin", "main"]).success());
    // 401 on the REST API: a wrong password (not a git request, but a failed authentication).
    let wrong = base64::engine::general_purpose::STANDARD.encode("alice:not-her-password");
    let api = http_get(
        server.port,
        "/rest/access-tokens/1.0/users/alice",
        Some(&format!("Basic {wrong}")),
    );
    assert_eq!(api.status, 401);
    // And one that works: counted with the API's calls, logged with its user and bytes.
    let right = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    let api = http_get(
        server.port,
        "/rest/access-tokens/1.0/users/alice",
        Some(&format!("Basic {right}")),
    );
    assert_eq!(api.status, 200);

    // The log line (and the counters) are written when a response body ends; give the last
    // one a moment (two seconds, as before, were too few on a loaded machine for the git
    // clients' connections to be seen gone).
    let mut text = String::new();
    let asked = Instant::now();
    while asked.elapsed() < common::EVENT_DEADLINE {
        let resp = http_get(port, "/metrics", None);
        assert_eq!(resp.status, 200);
        assert!(resp
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"));
        text = String::from_utf8(resp.body).unwrap();
        // The git clients' connections are closed once gitgate has seen them go.
        if sample(
            &text,
            "gitgate_requests_total{operation=\"write\",outcome=\"403\"}",
        ) >= 1.0
            && sample(&text, "gitgate_active_connections") == 0.0
        {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }

    let read_ok = sample(
        &text,
        "gitgate_requests_total{operation=\"read\",outcome=\"allowed\"}",
    );
    let write_ok = sample(
        &text,
        "gitgate_requests_total{operation=\"write\",outcome=\"allowed\"}",
    );
    // clone: info/refs + upload-pack; push: info/refs + receive-pack.
    assert!(read_ok >= 2.0, "{text}");
    assert!(write_ok >= 2.0, "{text}");
    assert!(
        sample(
            &text,
            "gitgate_requests_total{operation=\"read\",outcome=\"401\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "gitgate_requests_total{operation=\"write\",outcome=\"403\"}"
        ) >= 1.0,
        "{text}"
    );
    // git's credential-less first requests are challenges, counted apart; the wrong token's
    // 401 is not one of them.
    let challenges = sample(&text, "gitgate_auth_challenges_total");
    assert!(challenges >= 1.0, "{text}");
    let all_401: f64 = ["read", "write", "none"]
        .iter()
        .map(|op| {
            sample(
                &text,
                &format!("gitgate_requests_total{{operation=\"{op}\",outcome=\"401\"}}"),
            )
        })
        .sum();
    assert!(all_401 >= challenges + 1.0, "{text}");
    // ... and counted as what it is: a failed authentication, as is the REST API's wrong
    // password (which is no git request).
    let failures = sample(&text, "gitgate_auth_failures_total");
    assert!(
        failures >= 2.0 && failures <= all_401 - challenges + 1.0,
        "{text}"
    );
    // The backend's answers by operation: every allowed request here was answered 2xx.
    for (op, allowed) in [("read", read_ok), ("write", write_ok)] {
        let answered = sample(
            &text,
            &format!("gitgate_upstream_responses_total{{operation=\"{op}\",status=\"2xx\"}}"),
        );
        assert_eq!(answered, allowed, "{op}: {text}");
    }
    assert_eq!(sample(&text, "gitgate_upstream_errors_total"), 0.0);
    // The bytes are those of the requests' log lines, each way: the push sent a 100 kB file
    // (incompressible enough: the same byte compresses, but not below 100 bytes), the clone
    // got it and more.
    let log = server.log_text();
    // The REST API's calls are not git requests: counted apart, by status class.
    assert_eq!(
        sample(&text, "gitgate_api_requests_total{status=\"4xx\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "gitgate_api_requests_total{status=\"2xx\"}"),
        1.0,
        "{text}"
    );
    let api_line = log
        .lines()
        .find(|l| l.contains("api=true") && l.contains("status=200"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        api_line.contains("user=alice") && api_line.contains("bytes_out="),
        "{api_line}"
    );
    let logged = |field: &str| -> f64 {
        log.lines()
            .filter(|l| l.contains("gitgate::request") && !l.contains("api=true"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(field)))
            .map(|v| v.parse::<f64>().unwrap())
            .sum()
    };
    let (sent, received) = (logged("bytes_in="), logged("bytes_out="));
    assert_eq!(
        sample(&text, "gitgate_request_bytes_total"),
        sent,
        "{text}\n{log}"
    );
    assert_eq!(
        sample(&text, "gitgate_response_bytes_total"),
        received,
        "{text}\n{log}"
    );
    assert!(sent >= 100.0 && received >= 100.0, "{log}");
    // The scrape itself is not a gate connection; the git clients have gone.
    assert_eq!(sample(&text, "gitgate_active_connections"), 0.0, "{text}");
    let hits = sample(&text, "gitgate_token_cache_hits_total");
    let misses = sample(&text, "gitgate_token_cache_misses_total");
    assert!(hits + misses >= 4.0, "{text}");
    assert_eq!(sample(&text, "gitgate_tokens_expiring_soon"), 1.0, "{text}");
    let auth_count = sample(&text, "gitgate_auth_duration_seconds_count");
    assert!(auth_count >= read_ok + write_ok, "{text}");
    assert_eq!(
        sample(&text, "gitgate_auth_duration_seconds_bucket{le=\"+Inf\"}"),
        auth_count
    );
    assert!(sample(&text, "gitgate_request_duration_seconds_count") >= read_ok + write_ok);

    // Nothing else is served there, and the git port does not serve metrics.
    assert_eq!(http_get(port, "/", None).status, 404);
    let post = common::raw_http(
        port,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let on_git_port = http_get(server.port, "/metrics", None);
    assert_eq!(on_git_port.status, 404);
    assert!(!String::from_utf8_lossy(&on_git_port.body).contains("gitgate_"));
}

/// Whoever can reach the metrics listener cannot hold connections there: it has the main
/// listener's header deadline and idle timeout.
#[test]
fn the_metrics_listener_closes_slow_and_idle_connections() {
    let sb = Sandbox::with(Setup {
        server_extra: "header_read_timeout_seconds = 1\nidle_timeout_seconds = 1".into(),
        ..Setup::default()
    });
    with_metrics_listener(&sb);
    let server = sb.serve();
    let port = wait_for_metrics_port(&server);
    // What came on a connection that sent `first`, and how long after its connect and after
    // `first` gitgate closed it. Not closed, the read gives up after 20 s: the upper bounds
    // below leave a loaded machine seconds and are still far below that.
    let closed_after = |first: &[u8]| {
        let connecting = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(first).unwrap();
        let sent = Instant::now();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (
            String::from_utf8_lossy(&out).into_owned(),
            connecting.elapsed(),
            sent.elapsed(),
        )
    };
    // Half a request: cut off at the header deadline, whose clock starts at the accept (after
    // the connect; less the few milliseconds of its coarse clock).
    let (_, took, _) = closed_after(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    // A scrape on a kept-alive connection, then nothing: closed once idle, a second after the
    // answer (which came after the request was sent).
    let (out, _, took) = closed_after(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("gitgate_requests_total"), "{out}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
}

#[test]
fn the_rest_of_a_refused_push_read_after_its_answer_is_counted_in_the_request_bytes() {
    let (_sb, server, port) = serving_team_app_to_alice();
    // A push with a wrong token: refused at its head, its body then read (and dropped) so
    // that the connection closes cleanly.
    const BODY: usize = 300_000;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:ggt_nottoken");
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Authorization: Basic {auth}\r\nContent-Length: {BODY}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![b'P'; BODY]).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // The log line, written with the answer, has none of it; the counter has all of it, once
    // the reading after the answer is over.
    let log = server.log_text();
    assert!(log.contains("status=401 bytes_in=0"), "{log}");
    let started = Instant::now();
    loop {
        let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
        let read = sample(&text, "gitgate_request_bytes_total");
        if read == BODY as f64 {
            break;
        }
        assert!(read < BODY as f64, "more than was sent: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lingered bytes were not counted: {text}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bytes_are_counted_while_a_clone_streams_not_only_at_its_end() {
    let (sb, server, port) = serving_team_app_to_alice();
    sb.grant("alice", "team", "write");
    let writer = sb.personal_token("alice", PASSWORD, "laptop", &["REPO_WRITE"]);
    // 24 MB that do not compress: more than the socket buffers between gitgate and a client
    // that stops reading hold, so the answer cannot end while it does.
    let url = server.url_with("alice", &writer.secret, "team/app");
    sb.git(sb.root(), &["clone", "-q", &url, "work"]).ok();
    let work = sb.root().join("work");
    let head = sb.commit_file(&work, "big.bin", &common::noise(24 << 20, 7), "big");
    sb.git(&work, &["push", "-q", "origin", "main"]).ok();
    let scraped = |series: &str| {
        sample(
            &String::from_utf8(http_get(port, "/metrics", None).body).unwrap(),
            series,
        )
    };
    let before = scraped("gitgate_response_bytes_total");
    let clones_logged = || {
        server
            .log_text()
            .lines()
            .filter(|l| l.contains("gitgate::request") && l.contains("git-upload-pack"))
            .count()
    };
    let logged_before = clones_logged();

    // The pack of the clone, asked for by hand; only its first bytes are read.
    let want = format!("0032want {head}\n00000009done\n");
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
         Authorization: {}\r\nContent-Type: application/x-git-upload-pack-request\r\n\
         Content-Length: {}\r\n\r\n{want}",
        common::basic("alice", &writer.secret),
        want.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut first = [0u8; 16 << 10];
    s.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));

    // The clone is under way (its request line is not written yet), and its bytes show.
    let started = Instant::now();
    loop {
        let sent = scraped("gitgate_response_bytes_total") - before;
        if sent >= 1_000_000.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{sent} bytes of a clone under way counted"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(clones_logged(), logged_before, "the clone had ended");
    assert!(scraped("gitgate_active_connections") >= 1.0);
    drop(s);
}

/// What gitgate on `port` answers to `request`, sent as given, until it closes: as text.
fn raw_answer(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn requests_the_parser_refuses_are_logged_and_counted() {
    let sb = Sandbox::new();
    with_metrics_listener(&sb);
    let server = sb.serve();
    let port = wait_for_metrics_port(&server);
    let answer = |request: &[u8]| raw_answer(server.port, request);
    let garbage = answer(b"\x16\x03\x01 hello there\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let big = format!(
        "GET /team/app.git/info/refs HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let too_large = answer(big.as_bytes());
    assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large}");
    // A length hyper cannot count (past 2^64-3) is a 431 from hyper too, in the same words.
    let too_long = answer(
        b"POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
          Content-Length: 18446744073709551614\r\n\r\n",
    );
    assert!(too_long.starts_with("HTTP/1.1 431"), "{too_long}");

    let started = Instant::now();
    let lines = loop {
        let log = server.log_text();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("outcome=unparsable"))
            .map(str::to_string)
            .collect();
        if lines.len() == 3 {
            break lines;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{log}");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        lines[0].contains("status=400") && lines[0].contains("remote=127.0.0.1"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("status=431") && lines[1].contains("error=\"message head is too large"),
        "{lines:?}"
    );
    // Which of hyper's limits it may have been is said: a short head of too many fields, or
    // one whose Content-Length is past what hyper counts, gets the same words from hyper.
    let causes = ": the head is over [server] max_header_bytes (65536 bytes), holds over 100 \
                  header fields, or says a Content-Length over 18446744073709551613, the most \
                  hyper reads\"";
    assert!(lines[1].contains(causes), "{lines:?}");
    assert!(
        lines[2].contains("status=431") && lines[2].contains(causes),
        "{lines:?}"
    );
    let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
    assert_eq!(
        sample(&text, "gitgate_unparsable_requests_total"),
        3.0,
        "{text}"
    );
    // No git request was looked at.
    assert_eq!(
        sample(
            &text,
            "gitgate_requests_total{operation=\"none\",outcome=\"rejected\"}"
        ),
        0.0,
        "{text}"
    );
}

/// A probe's path asked with a method it does not take (a `405`, logged
/// `outcome=method-not-allowed`) is counted as the gate counts a git path asked so: operation
/// none, outcome rejected. The probes' own answers are in no counter.
#[test]
fn a_probe_path_asked_with_another_method_is_counted_as_rejected() {
    let (_sb, server, port) = serving_team_app_to_alice();
    let answer = |request: &[u8]| raw_answer(server.port, request);
    for request in [
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "DELETE /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        // The gate's own 405, for comparison.
        "DELETE /team/app.git/info/refs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let got = answer(request.as_bytes());
        assert!(got.starts_with("HTTP/1.1 405"), "{request}: {got}");
    }
    assert_eq!(http_get(server.port, "/healthz", None).status, 200);
    assert_eq!(http_get(server.port, "/readyz", None).status, 200);
    let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
    let rejected = "gitgate_requests_total{operation=\"none\",outcome=\"rejected\"}";
    assert_eq!(sample(&text, rejected), 3.0, "{text}");
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("gitgate_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(counted, 3.0, "{text}");
    assert!(server
        .log_text()
        .lines()
        .any(|l| l.contains("path=/readyz") && l.contains("outcome=method-not-allowed")));
}

#[test]
fn requests_from_an_address_blocked_for_failed_authentications_are_counted_apart() {
    let (_sb, server, port) = serving_team_app_to_alice();
    let mut blocked = 0;
    for i in 0..15 {
        // Each a different wrong one: the same one again would count once.
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("alice:ggt_nottoken{i}"))
        );
        let status = http_get(
            server.port,
            "/team/app.git/info/refs?service=git-upload-pack",
            Some(&wrong),
        )
        .status;
        assert!(status == 401 || status == 429, "{status}");
        blocked += usize::from(status == 429);
    }
    assert!(blocked >= 1, "the address was never blocked");
    let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
    assert_eq!(
        sample(&text, "gitgate_throttled_requests_total"),
        blocked as f64,
        "{text}"
    );
    assert_eq!(
        sample(&text, "gitgate_auth_failures_total"),
        (15 - blocked) as f64,
        "{text}"
    );
}

/// The sandbox's config with `[upstream] max_processes = 1` and `extra` after it; alice may
/// `level` team/app with a personal token; the server, alice's URL of team/app, and the token's
/// secret.
fn one_process_at_a_time(
    sb: &Sandbox,
    extra: &str,
    level: &str,
) -> (common::Server, String, String) {
    let config = sb.config_text().replace(
        "project_root = \"repos\"\n",
        "project_root = \"repos\"\nmax_processes = 1\n",
    ) + extra;
    std::fs::write(sb.config(), config).unwrap();
    sb.create_repo("team/app");
    sb.add_user("alice", PASSWORD);
    sb.grant("alice", "team", level);
    let permission = if level == "write" {
        "REPO_WRITE"
    } else {
        "REPO_READ"
    };
    let token = sb.personal_token("alice", PASSWORD, "laptop", &[permission]);
    let server = sb.serve();
    let url = server.url_with("alice", &token.secret, "team/app");
    (server, url, token.secret)
}

/// A push of alice's whose client sends its headers and none of its pack: its backend holds a
/// place until the connection is dropped. With the `Basic` credentials it sent.
fn push_holding_a_place(server: &common::Server, secret: &str) -> (TcpStream, String) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}"));
    let mut held = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        held,
        "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Basic {basic}\r\nContent-Type: application/x-git-receive-pack-request\r\n\
         Content-Length: 100000\r\n\r\n"
    )
    .unwrap();
    (held, basic)
}

/// `n` clones of `url` at once with the real git client, each to a folder of its own.
fn clones_at_once(sb: &Sandbox, url: &str, n: usize) -> Vec<common::Run> {
    let clones: Vec<_> = (0..n)
        .map(|i| {
            let cmd = sb.git_command(sb.root(), &["clone", "-q", url, &format!("c{i}")]);
            thread::spawn(move || common::run(cmd, None))
        })
        .collect();
    clones.into_iter().map(|c| c.join().unwrap()).collect()
}

/// `[upstream] max_processes`, with the real git client: past the cap requests wait for a place
/// (four clones at once through a cap of one all succeed); one that waits it out is told the
/// server is busy (503, Retry-After), which git shows; the gauge and the counter say so, and
/// the log says the cap was reached and left, once each.
#[test]
fn past_max_processes_git_requests_wait_then_are_told_the_server_is_busy() {
    let sb = Sandbox::new();
    let (server, url, secret) =
        one_process_at_a_time(&sb, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n", "write");
    let port = wait_for_metrics_port(&server);

    // A burst: each clone's two requests take the one place in turn.
    for clone in clones_at_once(&sb, &url, 4) {
        clone.ok();
    }

    // A push whose client sends its headers and none of its pack holds the place.
    let (held, basic) = push_holding_a_place(&server, &secret);
    let started = Instant::now();
    let running = loop {
        let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
        if sample(&text, "gitgate_backend_processes") == 1.0 {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        thread::sleep(Duration::from_millis(25));
    };
    assert_eq!(sample(&running, "gitgate_backend_busy_total"), 0.0);

    // Two wait at once: git, and a request that shows the answer's headers.
    let waited = Instant::now();
    let raw = {
        let request = format!(
            "GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {basic}\r\nConnection: close\r\n\r\n"
        );
        let port = server.port;
        thread::spawn(move || common::raw_http(port, request.as_bytes()))
    };
    let asked = Instant::now();
    loop {
        let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
        if sample(&text, "gitgate_backend_waiting") == 1.0 {
            break;
        }
        assert!(asked.elapsed() < common::EVENT_DEADLINE, "{text}");
        thread::sleep(Duration::from_millis(25));
    }
    let busy = sb.git(sb.root(), &["ls-remote", &url]);
    let stderr = busy.fails_with(
        "remote: the server is busy: all 1 of its git processes were in use for 10s; try again in a moment",
    );
    assert!(waited.elapsed() >= Duration::from_secs(9), "{stderr}");
    let answer = raw.join().unwrap();
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.header("retry-after"), Some("5"));
    let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
    assert_eq!(sample(&text, "gitgate_backend_busy_total"), 2.0);
    assert_eq!(sample(&text, "gitgate_backend_processes"), 1.0);
    assert_eq!(sample(&text, "gitgate_backend_waiting"), 0.0);

    // The held push's client goes away: its process ends and the place comes back.
    drop(held);
    sb.git(sb.root(), &["ls-remote", &url]).ok();
    let log = server.log_text();
    // Said once while it goes on: its end only after a minute without a wait.
    assert_eq!(log.matches("max_processes reached").count(), 1, "{log}");
    assert!(log.contains("max_processes=1"), "{log}");
    assert!(!log.contains("below max_processes again"), "{log}");
    assert!(!log.contains(&secret), "{log}");
}

/// A request let in, then kept waiting for a place under `[upstream] max_processes`, is asked
/// again before its backend starts: its token revoked during the wait, it is refused as a request
/// arriving then would be (401, the reason git shows, audited), not served after the
/// revocation's answer said the next request is refused (before 2026-12-06 it got the ref
/// advertisement, a push its pack applied). One still allowed after its wait is served.
#[test]
fn a_token_revoked_while_its_request_waits_for_a_backend_is_refused_when_it_gets_one() {
    let sb = Sandbox::new();
    let (server, url, secret) =
        one_process_at_a_time(&sb, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n", "write");
    let port = wait_for_metrics_port(&server);
    let ci = sb.personal_token("alice", PASSWORD, "ci", &["REPO_READ"]);
    let laptop_url = url.clone();
    let ci_url = server.url_with("alice", &ci.secret, "team/app");
    let metric_is = |series: &str, value: f64| {
        let asked = Instant::now();
        loop {
            let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
            if sample(&text, series) == value {
                return;
            }
            assert!(asked.elapsed() < common::EVENT_DEADLINE, "{series}: {text}");
            thread::sleep(Duration::from_millis(25));
        }
    };

    // A push whose client sends its headers and none of its pack holds the one place.
    let (held, _) = push_holding_a_place(&server, &secret);
    metric_is("gitgate_backend_processes", 1.0);
    // Both tokens' requests are let in, and wait.
    let waiting = [ci_url, laptop_url].map(|url| {
        let cmd = sb.git_command(sb.root(), &["ls-remote", &url]);
        thread::spawn(move || common::run(cmd, None))
    });
    metric_is("gitgate_backend_waiting", 2.0);
    sb.cli(&["token", "revoke", &ci.id]).ok();
    drop(held);

    let [revoked, still_allowed] = waiting.map(|w| w.join().unwrap());
    revoked.fails_with("remote: token 'ci' has been revoked");
    assert!(still_allowed.ok().contains("refs/heads/main"));
    // Failed authentications are written in batches, a moment later.
    let asked = Instant::now();
    loop {
        let failed = sb.cli_json(&["audit", "--action", "auth.failed", "--json"]);
        if failed.to_string().contains("token 'ci' has been revoked") {
            break;
        }
        assert!(asked.elapsed() < common::EVENT_DEADLINE, "{failed}");
        thread::sleep(Duration::from_millis(100));
    }
    let log = server.log_text();
    assert!(!log.contains(&secret) && !log.contains(&ci.secret), "{log}");
}

/// A stop while requests wait for a place under `[upstream] max_processes`: they are answered
/// before the grace period ends — git prints why — not cut off with their connections at its
/// end (git then says `Authentication failed`, which the reason checked rules out).
#[test]
fn a_stop_answers_the_requests_waiting_for_a_backend_process() {
    // Answered a second before the 3 s grace period ends, so not at once. Measured from the
    // signal to git's exit, on a machine as loaded as it may be: no upper bound but a loose one
    // (the reason git printed says the answer came before the cut).
    let answered = stop_with_a_request_waiting(3, Stop::Once);
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(15)).contains(&answered),
        "{answered:?}"
    );
}

/// The same when the stop cuts connections at once: a second stop signal, a grace period of 0.
/// The cut gives back the place of the request that held it: the request waiting for it must
/// still be answered as the stop's (before 2026-12-07 it could take that place first, on a
/// worker whose drain had not begun, and have its advertisement answered; git's next request
/// then found the listener closed: `Failed to connect`, in CI at four test threads).
#[test]
fn a_stop_that_cuts_at_once_still_answers_the_requests_waiting_for_a_backend_process() {
    // Well before the 30 s grace period, or the 10 s a request waits for a place, would end.
    let answered = stop_with_a_request_waiting(30, Stop::Twice);
    assert!(answered < Duration::from_secs(9), "{answered:?}");
    let answered = stop_with_a_request_waiting(0, Stop::Once);
    assert!(answered < Duration::from_secs(9), "{answered:?}");
}

/// How [`stop_with_a_request_waiting`] stops gitgate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// One SIGTERM.
    Once,
    /// A SIGTERM, then another that gitgate takes as a second stop signal (one within a second
    /// of the first is the same stop).
    Twice,
}

/// gitgate with one backend process held by a push and `git ls-remote` waiting for it, stopped
/// as `stop` says: how long after the signal that ends the wait git had its answer, which must
/// be the stop's reason.
fn stop_with_a_request_waiting(grace: u64, stop: Stop) -> Duration {
    let sb = Sandbox::with(Setup {
        server_extra: format!("shutdown_grace_seconds = {grace}"),
        ..Setup::default()
    });
    let (mut server, url, secret) =
        one_process_at_a_time(&sb, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n", "write");
    let port = wait_for_metrics_port(&server);

    // A push whose client sends its headers and none of its pack holds the one place.
    let (held, _) = push_holding_a_place(&server, &secret);
    let waiting = |n: f64| {
        let asked = Instant::now();
        loop {
            let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
            if sample(&text, "gitgate_backend_processes") == 1.0
                && sample(&text, "gitgate_backend_waiting") == n
            {
                break;
            }
            assert!(asked.elapsed() < Duration::from_secs(10), "{text}");
            thread::sleep(Duration::from_millis(25));
        }
    };
    waiting(0.0);
    // git's advertisement waits for the place (up to 10 s) ...
    let cmd = sb.git_command(sb.root(), &["ls-remote", &url]);
    let ls_remote = thread::spawn(move || common::run(cmd, None));
    waiting(1.0);
    // ... and the stop comes first: it is answered, with the reason.
    let mut stopped = Instant::now();
    server.signal("TERM");
    if stop == Stop::Twice {
        stopped = server.second_stop_signal();
    }
    let run = ls_remote.join().unwrap();
    let answered = stopped.elapsed();
    // A stop that cuts at once cuts the held push off, which frees its place: the waiting
    // request is answered all the same, as one that waited for a place.
    run.fails_with(
        "remote: the server is stopping, and no git process came free before it does; try \
         again in a moment",
    );
    server.stop_within(Duration::from_secs(10));
    drop(held);
    let log = server.log_text();
    assert!(log.contains("status=503"), "{log}");
    assert!(!log.contains(&secret), "{log}");
    answered
}

/// At the stop both listeners close while the requests under way drain, so that a new process
/// (a supervisor's restart, a handover) can bind both addresses: the metrics one used to stay
/// bound until the process exited, and the new start failed on it.
#[test]
fn a_stop_lets_go_of_the_metrics_address_with_the_git_one() {
    let sb = Sandbox::with(Setup {
        server_extra: "shutdown_grace_seconds = 10".into(),
        ..Setup::default()
    });
    let (mut server, _url, secret) =
        one_process_at_a_time(&sb, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n", "write");
    let port = wait_for_metrics_port(&server);
    // A push that never sends its pack keeps the stop draining for its grace.
    let (held, _) = push_holding_a_place(&server, &secret);
    // Scrapers that send nothing hold every place the metrics listener has (16), and one more
    // waits to be accepted: the stop must not wait for a place to come free.
    let scrapers: Vec<TcpStream> = (0..17)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    common::wait_until_accepted(port, 1);
    // The two listening sockets, by inode. That they are gone is what is checked, not that
    // their ports can be bound: another test's listener (on port 0) can take a port the moment
    // it is let go, and a bind would then fail with gitgate's part done. A socket gitgate
    // still held, itself or in a child that inherited it, would still be listed as listening.
    let listening = common::listening_sockets(server.pid());
    let mut ports: Vec<u16> = listening.iter().map(|&(p, _)| p).collect();
    ports.dedup();
    assert_eq!(ports, sorted([server.port, port]), "{listening:?}");
    server.signal("TERM");
    let asked = Instant::now();
    while let Some(&(held_port, _)) = listening
        .iter()
        .find(|&&(_, inode)| common::still_listening(inode))
    {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the listener on port {held_port} was not let go of:\n{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Still draining: the addresses came free before the process ended.
    assert!(server.alive(), "{}", server.log_text());
    drop((held, scrapers));
    server.stop_within(Duration::from_secs(15));
}

/// `ports` in order.
fn sorted<const N: usize>(mut ports: [u16; N]) -> [u16; N] {
    ports.sort_unstable();
    ports
}

/// A burst of clones past `[upstream] max_processes`: the POST of a clone already let in goes
/// before the advertisements of new ones and waits as long as it must, since git shows no
/// reason for a refused POST (`RPC failed; HTTP 503`, the clone half done); what is refused is
/// the start of a clone, with the reason git prints.
#[test]
fn past_max_processes_a_clone_under_way_is_never_refused_half_way() {
    let sb = Sandbox::new();
    // A backend whose POSTs take 0.7 s: twenty clones through one place take longer than the
    // 10 s a request waits to start.
    std::fs::write(
        sb.cgi_script(),
        format!(
            "#!/bin/sh\n[ \"$REQUEST_METHOD\" = POST ] && sleep 0.7\nexec {}\n",
            common::git_http_backend().display()
        ),
    )
    .unwrap();
    // One user's twenty clones: past the per-principal cap (16 by default), which is not what
    // is tested here.
    let (server, url, _) =
        one_process_at_a_time(&sb, "\n[rate_limit]\nmax_concurrent = 32\n", "read");
    let runs = clones_at_once(&sb, &url, 20);
    let log = server.log_text();
    let refused_posts = log
        .lines()
        .filter(|l| l.contains("method=POST") && l.contains("status=503"))
        .count();
    assert_eq!(refused_posts, 0, "{log}");
    for run in runs.iter().filter(|r| !r.success()) {
        run.fails_with(
            "remote: the server is busy: all 1 of its git processes were in use for 10s",
        );
    }
    let cloned = runs.iter().filter(|r| r.success()).count();
    assert!(cloned >= 5, "{cloned} of 20 cloned:\n{log}");
}

/// A client that goes away before it has its answer is counted by how its request ended, as
/// its log line says it (`outcome=client-gone`, `status=499`): an on-call person sees clients
/// giving up (a slow backend, a network cutting connections) without reading the log.
#[test]
fn requests_whose_client_went_away_are_counted_by_their_outcome() {
    let (sb, server, port) = serving_team_app_to_alice();
    sb.grant("alice", "team", "read");
    let reader = sb.personal_token("alice", PASSWORD, "reader", &["REPO_READ"]);
    let scrape = || String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
    let gone = "gitgate_requests_unfinished_total{outcome=\"client-gone\"}";
    assert_eq!(sample(&scrape(), gone), 0.0);
    // An upload-pack POST whose chunked body stops short (a chunk of 0x40 bytes, 20 of which
    // come): the backend starts on it and waits for the rest, no answer begun.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let head = format!(
        "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-upload-pack-request\r\nTransfer-Encoding: chunked\r\n\r\n\
         40\r\n0014command=ls-refs\n",
        common::basic("alice", &reader.secret)
    );
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    while sample(&scrape(), "gitgate_backend_processes") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", scrape());
        thread::sleep(Duration::from_millis(20));
    }
    // The client resets its connection: gone before its answer.
    common::close_with_a_reset(s);
    let logged = || {
        server
            .log_text()
            .lines()
            .any(|l| l.contains("git-upload-pack") && l.contains("outcome=client-gone"))
    };
    while !logged() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Counted with the line (written and counted together).
    let text = scrape();
    assert_eq!(sample(&text, gone), 1.0, "{text}");
    for other in ["idle-timeout", "shutdown", "stream-error"] {
        let series = format!("gitgate_requests_unfinished_total{{outcome=\"{other}\"}}");
        assert_eq!(sample(&text, &series), 0.0, "{text}");
    }
}

/// A whole request body whose pkt-lines promise more than it holds (a hand-made client's) makes
/// git say its input ended early, as a body that broke off does: the client's malformed request,
/// counted as `malformed-request`, not as a failure of the backend's in
/// `gitgate_upstream_errors_total`, which an alert on the backend's health watches.
#[test]
fn a_whole_body_whose_pkt_lines_promise_more_is_no_upstream_error() {
    let (sb, server, port) = serving_team_app_to_alice();
    sb.grant("alice", "team", "read");
    let reader = sb.personal_token("alice", PASSWORD, "reader", &["REPO_READ"]);
    // `aaaa` is a pkt-line of 0xaaaa bytes; the body holds 5000, sent whole.
    let body = "a".repeat(5000);
    let request = format!(
        "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        common::basic("alice", &reader.secret),
        body.len()
    );
    // Its answer (a 200 whose body breaks off) is not what is asked here.
    let _ = common::try_raw_http(server.port, request.as_bytes());
    let started = Instant::now();
    let line = loop {
        let log = server.log_text();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("gitgate::request") && l.contains("git-upload-pack"))
        {
            break line.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{log}");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(line.contains("bytes_in=5000"), "{line}");
    let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
    assert_eq!(
        sample(&text, "gitgate_upstream_errors_total"),
        0.0,
        "{line}\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gitgate_requests_unfinished_total{outcome=\"malformed-request\"}"
        ),
        1.0,
        "{line}\n{text}"
    );
    assert!(line.contains("outcome=malformed-request"), "{line}");
}

/// A connection gitgate has ended while its last answer is still in the socket's send queue
/// lingers until that answer has gone out (`closing`), holding its places under the caps; the
/// gauge of open connections counts it as long, and no longer.
#[test]
fn a_connection_lingering_over_its_last_answer_is_counted_open() {
    let (_sb, server, port) = serving_team_app_to_alice();
    let open = || {
        let text = String::from_utf8(http_get(port, "/metrics", None).body).unwrap();
        sample(&text, "gitgate_active_connections")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Its answers wait in gitgate's send queue, the socket lingering.
    let slow = runtime.block_on(common::left_lingering(server.port));
    assert_eq!(open(), 1.0, "the lingering connection is not counted open");
    // The client goes: the socket closes, and is no longer counted.
    drop(slow);
    let start = Instant::now();
    while open() != 0.0 {
        assert!(
            start.elapsed() < common::EVENT_DEADLINE,
            "the closed connection is still counted open"
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(runtime);
}
