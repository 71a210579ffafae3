//! Timeouts and caps, against a running gitgate over real TCP: the header-read deadline, the idle
//! timeout, the connection cap, the header size cap, and an upstream that accepts but never
//! answers (504). No nginx needed: the silent upstream is a listener in the test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::Server;

/// `gitgate serve` with `config` written to `dir/proxy.toml`, its log in `dir/gitgate.log`.
fn start(dir: &Path, config: &str) -> Server {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = common::gitgate_command(&path);
    cmd.arg("serve");
    Server::start(cmd, dir.join("gitgate.log"), "")
}

fn cgi_config(dir: &Path, extra_server: &str) -> String {
    let repos = dir.join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{extra_server}\n[store]\npath = \"gitgate.db\"\n\
         [upstream]\ncgi = \"/bin/true\"\nproject_root = \"{}\"\n",
        repos.display()
    )
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read until the peer closes; returns what was read and how long it took.
fn read_until_closed(s: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

/// `GET info/refs` through a gitgate in front of the upstream at `upstream_port` (plus
/// `upstream_extra` lines in `[upstream]`), with a project token: the raw answer, read until the
/// connection closes, and how long that took.
fn info_refs_via(dir: &Path, upstream_port: u16, upstream_extra: &str) -> (String, Duration) {
    let (g, auth) = start_in_front_of(dir, upstream_port, upstream_extra);
    info_refs(&g, &auth)
}

/// gitgate in front of `http://127.0.0.1:{upstream_port}`, and the Basic credentials of a
/// project token for `team`.
fn start_in_front_of(dir: &Path, upstream_port: u16, upstream_extra: &str) -> (Server, String) {
    start_in_front_of_url(
        dir,
        &format!("http://127.0.0.1:{upstream_port}"),
        upstream_extra,
    )
}

/// The worker threads of the gitgate in front of a test upstream: fixed, so that bounds that
/// count per worker mean the same on a machine of any size.
const WORKERS: usize = 2;

/// Like [`start_in_front_of`], with the upstream's whole URL (a base path, say).
fn start_in_front_of_url(dir: &Path, url: &str, upstream_extra: &str) -> (Server, String) {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {WORKERS}\n[store]\npath = \"gitgate.db\"\n\
         [upstream]\nurl = \"{url}\"\n{upstream_extra}"
    );
    start_with_token(dir, &config, "PROJECT_READ")
}

/// gitgate with `config`, and the Basic credentials of a project token for `team` with
/// `permission`.
fn start_with_token(dir: &Path, config: &str, permission: &str) -> (Server, String) {
    std::fs::write(dir.join("proxy.toml"), config).unwrap();
    let token = common::scoped_token(
        &dir.join("proxy.toml"),
        "--project",
        "team",
        "ci",
        permission,
    )
    .secret;
    let g = start(dir, config);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{token}"));
    (g, auth)
}

/// One info/refs GET on a new connection; the whole answer and how long it took.
fn info_refs(g: &Server, auth: &str) -> (String, Duration) {
    info_refs_on(&mut connect(g.port), auth)
}

/// [`info_refs`] on a connection already open; timed from before the request is sent, which
/// every clock of gitgate's for it follows.
fn info_refs_on(s: &mut TcpStream, auth: &str) -> (String, Duration) {
    let asking = Instant::now();
    s.write_all(
        format!(
            "GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {auth}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (answer, _) = read_until_closed(s);
    (answer, asking.elapsed())
}

/// A scripted upstream that answers every request on a connection with a 2-byte 200 (keep-alive
/// implied), sending each request head it read, with the number of the connection it came on,
/// to `heads`; after `answers_per_connection`
/// answers it closes the connection without saying so, the way an upstream's keep-alive
/// timeout does.
fn keep_alive_upstream(answers_per_connection: usize) -> (u16, mpsc::Receiver<(usize, String)>) {
    scripted_upstream(answers_per_connection, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    })
}

/// Like [`keep_alive_upstream`], answering with what `answer` makes of the upstream's port.
fn scripted_upstream(
    answers_per_connection: usize,
    answer: impl Fn(u16) -> Vec<u8> + Send + 'static,
) -> (u16, mpsc::Receiver<(usize, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = std::sync::Arc::new(answer(port));
    let (heads, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, s) in listener.incoming().flatten().enumerate() {
            let heads = heads.clone();
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut s = s;
                for _ in 0..answers_per_connection {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let _ = heads.send((n, head));
                    if s.write_all(&answer).is_err() {
                        return;
                    }
                }
                // Dropped: closed after the last answer, with no `Connection: close`.
            });
        }
    });
    (port, rx)
}

/// An upstream that accepts connections and holds them, never answering; its port.
fn silent_upstream() -> u16 {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn slow_headers_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(
        dir.path(),
        &cgi_config(dir.path(), "header_read_timeout_seconds = 1"),
    );
    // Timed from before the connection: the deadline's clock starts at gitgate's accept.
    let connecting = Instant::now();
    let mut s = connect(g.port);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    read_until_closed(&mut s);
    let took = connecting.elapsed();
    // Given the second it is allowed (less the few milliseconds of a coarse clock), then cut
    // off: not left open until the read gives up (10 s).
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(8),
        "closed after {took:?}"
    );
}

#[test]
fn idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(
        dir.path(),
        &cgi_config(dir.path(), "idle_timeout_seconds = 1"),
    );
    // Timed from before the request: the idle clock starts at its answer.
    let mut s = connect(g.port);
    let asking = Instant::now();
    s.write_all(HEALTHZ).unwrap();
    let (out, _) = read_until_closed(&mut s);
    let took = asking.elapsed();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(8),
        "a keep-alive connection doing nothing was closed after {took:?}"
    );
}

/// The port of `g`'s metrics listener, from its log.
fn metrics_port_of(g: &Server) -> u16 {
    const MARK: &str = "metrics on http://127.0.0.1:";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = g.log_text();
        if let Some(at) = log.find(MARK) {
            let digits: String = log[at + MARK.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            return digits.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no metrics line: {log}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `gitgate_connections_cut_total{reason=...}` as `g` reports it now.
fn cuts(g: &Server, reason: &str) -> u64 {
    let text =
        String::from_utf8(common::http_get(metrics_port_of(g), "/metrics", None).body).unwrap();
    let series = format!("gitgate_connections_cut_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .unwrap_or_else(|| panic!("no {series}in {text}"))
        .parse()
        .unwrap()
}

/// Waits until `g` has counted at least `n` cuts for `reason` ([`common::EVENT_DEADLINE`] at most): a cut is counted
/// once its connection's task has closed it, so a client can see the close a moment before the
/// count moves. The callers then check the exact counts.
fn wait_for_cuts(g: &Server, reason: &str, n: u64) {
    let deadline = Instant::now() + common::EVENT_DEADLINE;
    while cuts(g, reason) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connections closed by gitgate's own timeouts are logged at debug level only: /metrics
/// counts them by reason, so that a slow-header flood or a scan shows.
#[test]
fn connections_cut_by_timeouts_are_counted_by_reason() {
    // No request within header_read_timeout: a head that stops half-way, and a kept-alive
    // connection that asks nothing more.
    let dir = tempfile::tempdir().unwrap();
    let mut config = cgi_config(dir.path(), "header_read_timeout_seconds = 1");
    config.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let g = start(dir.path(), &config);
    assert_eq!(cuts(&g, "no-request"), 0);
    let mut slow = connect(g.port);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut kept = connect(g.port);
    kept.write_all(HEALTHZ).unwrap();
    let (out, _) = read_until_closed(&mut kept);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    read_until_closed(&mut slow);
    // One that asked and closed itself is no cut.
    let mut polite = connect(g.port);
    polite
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    read_until_closed(&mut polite);
    wait_for_cuts(&g, "no-request", 2);
    assert_eq!(
        (
            cuts(&g, "no-request"),
            cuts(&g, "idle"),
            cuts(&g, "tls-handshake")
        ),
        (2, 0, 0)
    );

    // Nothing moving for idle_timeout, below header_read_timeout.
    let dir = tempfile::tempdir().unwrap();
    let mut config = cgi_config(dir.path(), "idle_timeout_seconds = 1");
    config.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let i = start(dir.path(), &config);
    let mut idle = connect(i.port);
    idle.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    read_until_closed(&mut idle);
    wait_for_cuts(&i, "idle", 1);
    assert_eq!((cuts(&i, "idle"), cuts(&i, "no-request")), (1, 0));

    // Over TLS: plain HTTP to the TLS port, and a client that never starts its handshake.
    let tls_dir = tempfile::tempdir().unwrap();
    for (from, to) in [("server-a.pem", "cert.pem"), ("server-a.key", "key.pem")] {
        std::fs::copy(
            common::fixture(&format!("tls/{from}")),
            tls_dir.path().join(to),
        )
        .unwrap();
    }
    // Two seconds, so that the handshake's deadline (2 s) and the two a connection was held
    // when the look at its first byte had a deadline of its own (4 s) are far apart.
    let mut config = cgi_config(tls_dir.path(), "header_read_timeout_seconds = 2");
    config.push_str(
        "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let t = start(tls_dir.path(), &config);
    let mut plain = connect(t.port);
    plain.write_all(HEALTHZ).unwrap();
    let (answer, _) = read_until_closed(&mut plain);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n")
            && answer.ends_with("this port speaks HTTPS only: use an https:// URL (the request came in plain HTTP)\n"),
        "{answer}"
    );
    // A connection that never sends a byte is closed by the handshake's deadline, once: not
    // before it (timed from before the connection, which the deadline's clock follows), and
    // well before twice it (timed from gitgate's accept, where that clock starts: a loaded
    // machine can take long to get to the accept).
    let connecting = Instant::now();
    let mut silent = connect(t.port);
    common::wait_until_accepted(t.port, 0);
    let accepted = Instant::now();
    read_until_closed(&mut silent);
    let (since_connecting, since_accepted) = (connecting.elapsed(), accepted.elapsed());
    assert!(
        since_connecting >= Duration::from_millis(1950),
        "{since_connecting:?}"
    );
    assert!(
        since_accepted < Duration::from_millis(3500),
        "{since_accepted:?}"
    );
    wait_for_cuts(&t, "tls-handshake", 2);
    assert_eq!(cuts(&t, "tls-handshake"), 2);
    assert_eq!(cuts(&t, "no-request"), 0);
}

/// A plain HTTP client on the HTTPS port that sends `GET` and no more does not hold a stop
/// until the handshake's deadline (30 s by default).
#[test]
fn a_stalled_plain_http_request_on_the_https_port_does_not_hold_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [("server-a.pem", "cert.pem"), ("server-a.key", "key.pem")] {
        std::fs::copy(common::fixture(&format!("tls/{from}")), dir.path().join(to)).unwrap();
    }
    let mut config = cgi_config(dir.path(), "");
    config.push_str("[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
    let mut g = start(dir.path(), &config);
    let mut stalled = connect(g.port);
    stalled.write_all(b"GET").unwrap();
    // Read by gitgate: taken for plain HTTP, whose head it now waits for.
    common::wait_until_read_by_server(&stalled);
    let stopping = Instant::now();
    assert!(g.stop_within(Duration::from_secs(10)).success());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

/// A TLS ClientHello whose server name (SNI) is `name`, and nothing a server could agree on
/// besides: enough for the server to read, and refuse or answer.
fn client_hello_naming(name: &[u8]) -> Vec<u8> {
    let be16 = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    // server_name: a list of one host_name.
    let mut list = vec![0];
    list.extend(be16(name.len()));
    list.extend(name);
    let mut sni = be16(list.len()).to_vec();
    sni.extend(list);
    let mut extensions = vec![0, 0];
    extensions.extend(be16(sni.len()));
    extensions.extend(sni);
    // TLS 1.2 in the legacy version, no session id, one suite (TLS_AES_128_GCM_SHA256), no
    // compression.
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend(be16(extensions.len()));
    body.extend(extensions);
    let mut handshake = vec![1, 0];
    handshake.extend(be16(body.len()));
    handshake.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend(be16(handshake.len()));
    record.extend(handshake);
    record
}

/// What a client puts in its TLS handshake is not gitgate's operator's to mend, and any client
/// can send it on every connection: rustls's warnings about it (an IP address or a name no host
/// has as the SNI) are off by default, as h2's are, instead of `WARN rustls::...` lines without
/// the client's address. A failed handshake is gitgate's to log, at debug level.
#[test]
fn a_clients_odd_tls_hello_writes_no_warning_of_the_tls_library() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [("server-a.pem", "cert.pem"), ("server-a.key", "key.pem")] {
        std::fs::copy(common::fixture(&format!("tls/{from}")), dir.path().join(to)).unwrap();
    }
    std::fs::set_permissions(
        dir.path().join("key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut config = cgi_config(dir.path(), "");
    config.push_str("[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
    let mut g = start(dir.path(), &config);
    for name in [&b"127.0.0.1"[..], b"bad_name!"] {
        let mut s = connect(g.port);
        s.write_all(&client_hello_naming(name)).unwrap();
        // Refused (no suite in common, or the name): a fatal alert, then the close.
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert_eq!(answer.first(), Some(&21), "no alert: {answer:?}");
    }
    // The server still answers.
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(common::fixture("tls/ca.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(client), "localhost".try_into().unwrap())
            .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, connect(g.port));
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    g.stop();
    let log = g.log_text();
    assert!(
        !log.contains("rustls") && !log.contains("SNI") && !log.contains("bad_name"),
        "{log}"
    );
}

/// An HTTP/2 frame on stream 0 with no flags.
fn h2_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    h2_frame_on(kind, 0, 0, payload)
}

/// `GET /healthz` on `stream` (HPACK: :method GET, :scheme http, :path and :authority as
/// literals), with END_STREAM and END_HEADERS.
fn h2_healthz(stream: u32) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, 1, b'x']);
    h2_frame_on(1, 0x05, stream, &block)
}

/// A gitgate that lets one connection per address (`header_read_timeout_seconds` as given), a
/// connection that holds that place, and one over the cap that has sent the HTTP/2 preface.
fn h2_over_the_cap(dir: &Path, header_read_timeout: u32) -> (Server, TcpStream, TcpStream) {
    let g = start(
        dir,
        &cgi_config(
            dir,
            &format!(
                "max_connections_per_address = 1\nheader_read_timeout_seconds = {header_read_timeout}"
            ),
        ),
    );
    let held = connect(g.port);
    let mut s = connect(g.port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame(4, &[])).unwrap();
    (g, held, s)
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame_on(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends a PING every 200 ms on `s` until the peer closes (or 10 s pass).
fn ping_until_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let closed = std::thread::spawn(move || read_until_closed(&mut reader));
    let start = Instant::now();
    while !closed.is_finished() && start.elapsed() < Duration::from_secs(10) {
        if s.write_all(&h2_frame(6, b"12345678")).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    closed.join().unwrap();
}

/// Asserts that an idle timeout of a second closed a connection opened at `connecting` and
/// busy with PINGs: not before the second (timed from before the connection, which the
/// timeout's clock follows; less the few milliseconds of its coarse clock), and not held open
/// by the PINGs, which go on for 10 s (the upper bound leaves a loaded machine seconds, and is
/// still far below that).
#[track_caller]
fn closed_by_the_idle_timeout(connecting: Instant, what: &str) {
    let took = connecting.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(7),
        "{what} was closed after {took:?}"
    );
}

#[test]
fn pings_without_requests_do_not_keep_an_http2_connection_open() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(
        dir.path(),
        &cgi_config(dir.path(), "idle_timeout_seconds = 1"),
    );
    // HTTP/2 with prior knowledge: the preface and empty SETTINGS, then a PING every 200 ms and
    // never a request. Bytes move both ways all the time (gitgate answers each PING).
    let connecting = Instant::now();
    let mut s = connect(g.port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame(4, &[])).unwrap();
    ping_until_closed(&mut s);
    closed_by_the_idle_timeout(connecting, "an HTTP/2 connection with PINGs and no request");
}

#[test]
fn an_http2_answer_held_back_by_a_zero_window_does_not_keep_the_connection_open() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(
        dir.path(),
        &cgi_config(dir.path(), "idle_timeout_seconds = 1"),
    );
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: gitgate may send the answer's headers, never its body.
    let connecting = Instant::now();
    let mut s = connect(g.port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame(4, &[0, 4, 0, 0, 0, 0])).unwrap();
    s.write_all(&h2_healthz(1)).unwrap();
    ping_until_closed(&mut s);
    closed_by_the_idle_timeout(
        connecting,
        "an HTTP/2 connection whose answer could not move",
    );
}

/// One HTTP/2 stream given no window while the client keeps its connection busy with others:
/// after the idle timeout its backend is let go (the upstream connection closed, the request
/// logged as `idle-timeout`), the connection stays open for the other streams, and the stream
/// is reset once the client opens its window.
#[test]
fn an_http2_answer_whose_stream_gets_no_window_lets_go_of_its_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (let_go_tx, let_go) = mpsc::channel();
    let let_go_tx = std::sync::Mutex::new(let_go_tx);
    let upstream_port = one_request_upstream(move |reader, _| {
        let mut s = reader.into_inner();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n");
        let chunk = vec![b'y'; 64 * 1024];
        let started = Instant::now();
        while s.write_all(&chunk).is_ok() {
            if started.elapsed() > Duration::from_secs(20) {
                return;
            }
        }
        let _ = let_go_tx.lock().unwrap().send(started.elapsed());
    });
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout_seconds = 1\n[store]\n\
         path = \"gitgate.db\"\n[upstream]\nurl = \"http://127.0.0.1:{upstream_port}\"\n"
    );
    let (g, auth) = start_with_token(dir.path(), &config, "PROJECT_READ");
    let mut s = connect(g.port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream's body moves until it is given a window.
    s.write_all(&h2_frame(4, &[0, 4, 0, 0, 0, 0])).unwrap();
    // GET info/refs with the token, END_STREAM | END_HEADERS.
    let path = b"/team/app.git/info/refs?service=git-upload-pack";
    let authorization = format!("Basic {auth}");
    assert!(authorization.len() < 127, "one HPACK length byte");
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 1, b'x', 0x00, 13]);
    block.extend_from_slice(b"authorization");
    block.push(authorization.len() as u8);
    block.extend_from_slice(authorization.as_bytes());
    s.write_all(&h2_frame_on(1, 0x05, 1, &block)).unwrap();

    let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u8, u8, u32)>::new()));
    let mut reader = s.try_clone().unwrap();
    let seen = frames.clone();
    std::thread::spawn(move || {
        let mut head = [0u8; 9];
        while reader.read_exact(&mut head).is_ok() {
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let id = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).is_err() {
                break;
            }
            seen.lock().unwrap().push((head[3], head[4], id));
        }
    });
    let answered = |stream: u32| {
        frames
            .lock()
            .unwrap()
            .iter()
            .any(|&(kind, flags, id)| id == stream && kind <= 1 && flags & 0x1 != 0)
    };
    // Other streams, one every 200 ms, each given a window: the connection is busy throughout.
    let mut stream = 3;
    let busy = |s: &mut TcpStream, stream: &mut u32| {
        s.write_all(&h2_healthz(*stream)).unwrap();
        s.write_all(&h2_frame_on(8, 0, *stream, &65_535u32.to_be_bytes()))
            .unwrap();
        *stream += 2;
        std::thread::sleep(Duration::from_millis(200));
    };
    let started = Instant::now();
    let mut took = None;
    while started.elapsed() < Duration::from_secs(8) {
        busy(&mut s, &mut stream);
        if let Ok(t) = let_go.try_recv() {
            took = Some(t);
            break;
        }
    }
    let took = took.expect("the stalled answer's upstream connection was held for 8 s");
    assert!(
        took >= Duration::from_millis(900),
        "let go after {took:?}, before the idle timeout"
    );
    let log = || std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap_or_default();
    let deadline = Instant::now() + common::EVENT_DEADLINE;
    let line = loop {
        let log = log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("gitgate::request") && l.contains("/team/app.git/info/refs"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no request line: {log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains("outcome=idle-timeout"), "{line}");
    // The connection still serves the other streams.
    let last = stream;
    busy(&mut s, &mut stream);
    busy(&mut s, &mut stream);
    assert!(answered(last), "{:?}", frames.lock().unwrap());
    // Given a window now, the stalled stream is reset, not resumed.
    s.write_all(&h2_frame_on(8, 0, 1, &65_535u32.to_be_bytes()))
        .unwrap();
    let deadline = Instant::now() + common::EVENT_DEADLINE;
    while !frames
        .lock()
        .unwrap()
        .iter()
        .any(|&(kind, _, id)| kind == 3 && id == 1)
    {
        assert!(Instant::now() < deadline, "{:?}", frames.lock().unwrap());
        busy(&mut s, &mut stream);
    }
    let data_on_1 = frames
        .lock()
        .unwrap()
        .iter()
        .filter(|&&(kind, _, id)| kind == 0 && id == 1)
        .count();
    assert_eq!(data_on_1, 0, "{:?}", frames.lock().unwrap());
}

/// The length of [`a_big_answer_behind`]'s answer.
const BIG_ANSWER: usize = 32 * 1024 * 1024;

/// A gitgate with `idle_timeout_seconds = idle` in front of an upstream that answers
/// [`BIG_ANSWER`] bytes, and a connection on which an info/refs GET was sent to it (saying
/// `Connection: close` when `close`).
fn a_big_answer_behind(dir: &Path, idle: u32, close: bool) -> (Server, TcpStream) {
    let (upstream_port, _heads) = scripted_upstream(1, |_| {
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG_ANSWER}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + BIG_ANSWER, b'y');
        answer
    });
    let (g, auth) = start_in_front_of(dir, upstream_port, "");
    drop(g);
    // The same gitgate, with the idle timeout asked for.
    let config = std::fs::read_to_string(dir.join("proxy.toml"))
        .unwrap()
        .replace(
            "[server]\n",
            &format!("[server]\nidle_timeout_seconds = {idle}\n"),
        );
    let g = start(dir, &config);
    let mut s = connect(g.port);
    let close = if close { "Connection: close\r\n" } else { "" };
    s.write_all(
        format!(
            "GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {auth}\r\n{close}\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    (g, s)
}

/// A git request's answer that gitgate gave up on when it closed the connection for idling (a
/// client that stopped reading) is logged as that, `idle-timeout`, not as its client leaving.
#[test]
fn an_answer_cut_off_by_the_idle_timeout_is_logged_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let (_g, s) = a_big_answer_behind(dir.path(), 1, false);
    // Never read: gitgate's writes stop once the socket's buffers are full.
    let log = || std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log().contains("outcome=") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = log();
    let line = log
        .lines()
        .find(|l| l.contains("gitgate::request") && l.contains("/team/app.git/info/refs"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("outcome=idle-timeout"), "{line}");
    drop(s);
}

/// A client that reads slowly but steadily (128 KiB a second: a loaded CI machine, a slow disk)
/// is not idle, though gitgate's writes stay blocked for far longer than the idle timeout (the
/// kernel wakes a blocked writer once a third of its send buffer has drained: over 1 MiB of
/// its 4 MiB here, more than the client reads in the 6 s): its answer is delivered whole. It
/// was cut off after the timeout, as the client's fault.
#[test]
fn a_client_reading_slowly_but_steadily_is_not_cut_off_as_idle() {
    let dir = tempfile::tempdir().unwrap();
    // A 3 s timeout: what is tested is that a blocked write's client is looked at before it is
    // cut, which any timeout shows; 10 s made the test wait 15 s.
    let (_g, mut s) = a_big_answer_behind(dir.path(), 3, true);
    // Slowly for 6 s, past the 3 s timeout (and the second gitgate looks on for), then all.
    // 32 KiB a read, not 8: all gitgate can see of a client's reading is its acknowledgements,
    // and over loopback (a 64 KiB MSS) its window opens again only once about 93 KiB of its
    // buffer is free. At 8 KiB every 250 ms that was every 3 to 4.7 s (measured with a `yes`
    // on one core): as long as the timeout and the second gitgate looks on for, so that such
    // a client acknowledged nothing for that long and was idle by gitgate's rule, and the test
    // failed under load. At 32 KiB it opens every ¾ s or so, well within the timeout. (Over a
    // real link, an MSS of 1448, a client acknowledges as it reads, however slowly.)
    let mut answer = Vec::new();
    let mut buf = [0u8; 32 * 1024];
    let slow_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < slow_until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = s.read_to_end(&mut answer);
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap_or_default();
    assert_eq!(answer.len() - head_end, BIG_ANSWER, "cut off:\n{log}");
    let deadline = Instant::now() + common::EVENT_DEADLINE;
    let line = loop {
        let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains("outcome=")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains("outcome=complete"), "{line}");
}

/// A gitgate with a 30 s grace period and header deadline, and an HTTP/2 connection to it that
/// has had one answer (`/healthz` on stream 1).
fn h2_answered_once(dir: &Path) -> (Server, TcpStream) {
    let g = start(
        dir,
        &cgi_config(
            dir,
            "header_read_timeout_seconds = 30\nshutdown_grace_seconds = 30",
        ),
    );
    let mut s = connect(g.port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame(4, &[])).unwrap();
    s.write_all(&h2_healthz(1)).unwrap();
    let frames = h2_frames_until_stream_ends(&mut s, 1);
    assert!(
        frames.iter().any(|&(kind, _, id)| kind == 1 && id == 1),
        "{frames:?}"
    );
    (g, s)
}

/// An idle HTTP/2 connection whose client does not answer the GOAWAY's PING (hyper waits for
/// it before the last GOAWAY) holds a stop a second at most, not until the wait for its next
/// request runs out (30 s here, as the grace period).
#[test]
fn an_idle_http2_connection_does_not_hold_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, s) = h2_answered_once(dir.path());
    // The client now reads nothing and answers nothing.
    let stopped = Instant::now();
    let status = g.stop_within(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the stop waited {:?} for an idle connection",
        stopped.elapsed()
    );
    drop(s);
}

/// An HTTP/2 client that never answers the GOAWAY's PING, and so may still open streams, and
/// opens one every 300 ms: its connection is closed a second or so into the stop, at a moment
/// with nothing in flight, not held open (and the stop with it) for the whole grace period.
#[test]
fn an_http2_client_ignoring_the_goaway_does_not_hold_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, s) = h2_answered_once(dir.path());
    // From now on: a new stream every 300 ms, until the connection is closed; no PING is
    // ever answered, and nothing read is looked at.
    let mut writer = s.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mut stream = 3;
        while writer.write_all(&h2_healthz(stream)).is_ok() && stream < 200 {
            stream += 2;
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let mut reader = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let stopped = Instant::now();
    let status = g.stop_within(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(
        stopped.elapsed() < Duration::from_secs(6),
        "the stop waited {:?} for a client ignoring the GOAWAY",
        stopped.elapsed()
    );
    drop(s);
    let _ = sending.join();
}

/// A connection over its address's cap has nothing to finish: silent (plain TCP, or an HTTP/2
/// preface alone), it does not hold the stop until its first request's deadline either.
#[test]
fn a_connection_over_its_addresss_cap_does_not_hold_the_stop() {
    for preface in [&b""[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = start(
            dir.path(),
            &cgi_config(
                dir.path(),
                "max_connections_per_address = 1\nheader_read_timeout_seconds = 30\n\
                 shutdown_grace_seconds = 30",
            ),
        );
        let held = connect(g.port);
        let mut over = connect(g.port);
        over.write_all(preface).unwrap();
        // Both taken in: the second counted over the cap.
        common::wait_until_accepted(g.port, 0);
        let stopped = Instant::now();
        let status = g.stop_within(Duration::from_secs(20));
        assert!(status.success(), "{status}");
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "the stop waited {:?} for a connection over the cap",
            stopped.elapsed()
        );
        drop((held, over));
    }
}

/// Reads HTTP/2 frames until one on `stream` ends it (END_STREAM or RST_STREAM) or 5 s pass:
/// (type, flags, stream) of each.
fn h2_frames_until_stream_ends(s: &mut TcpStream, stream: u32) -> Vec<(u8, u8, u32)> {
    h2_frames_with_payloads(s, stream)
        .into_iter()
        .map(|(kind, flags, id, _)| (kind, flags, id))
        .collect()
}

/// Like [`h2_frames_until_stream_ends`], with each frame's payload.
fn h2_frames_with_payloads(s: &mut TcpStream, stream: u32) -> Vec<(u8, u8, u32, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut frames = Vec::new();
    let mut head = [0u8; 9];
    while s.read_exact(&mut head).is_ok() {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            break;
        }
        frames.push((kind, flags, id, payload));
        if id == stream && (flags & 0x1 != 0 && kind <= 1 || kind == 3) {
            break;
        }
    }
    frames
}

#[test]
fn a_head_request_over_http2_gets_headers_and_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path(), &cgi_config(dir.path(), ""));
    let mut s = connect(g.port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame(4, &[])).unwrap();
    // HEAD /healthz (HPACK literals for :method and :path), END_STREAM | END_HEADERS.
    let mut block = vec![0x02, 4];
    block.extend_from_slice(b"HEAD");
    block.extend_from_slice(&[0x86, 0x04, 8]);
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, 1, b'x']);
    s.write_all(&h2_frame_on(1, 0x05, 1, &block)).unwrap();
    let on_stream: Vec<(u8, u8)> = h2_frames_until_stream_ends(&mut s, 1)
        .into_iter()
        .filter(|f| f.2 == 1)
        .map(|f| (f.0, f.1))
        .collect();
    // One HEADERS frame that ends the stream: no DATA, no reset.
    assert_eq!(on_stream.len(), 1, "frames on the stream: {on_stream:?}");
    let (kind, flags) = on_stream[0];
    assert_eq!(kind, 1, "{on_stream:?}");
    assert_eq!(
        flags & 0x1,
        0x1,
        "HEADERS without END_STREAM: {on_stream:?}"
    );
}

/// That no request head reached the upstream behind `heads` within 300 ms.
fn assert_not_forwarded(heads: &mpsc::Receiver<(usize, String)>) {
    if let Ok((_, head)) = heads.recv_timeout(Duration::from_millis(300)) {
        panic!("forwarded: {head}");
    }
}

#[test]
fn a_request_body_in_a_transfer_coding_other_than_chunked_is_refused_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, heads) = keep_alive_upstream(10);
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let post = |coding: &str| {
        let mut s = connect(g.port);
        s.write_all(
            format!(
                "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Basic {auth}\r\nContent-Type: application/x-git-upload-pack-request\r\n\
                 Transfer-Encoding: {coding}\r\nConnection: close\r\n\r\n4\r\n0000\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        read_until_closed(&mut s).0
    };
    let out = post("gzip, chunked");
    assert!(out.starts_with("HTTP/1.1 501"), "{out}");
    assert!(
        out.contains("Transfer-Encoding \"gzip, chunked\" is not supported"),
        "{out}"
    );
    assert_not_forwarded(&heads);
    let out = post("chunked, chunked");
    assert!(out.starts_with("HTTP/1.1 501"), "{out}");
    assert_not_forwarded(&heads);
    // Plain chunked bodies are passed on.
    let out = post("chunked");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (_, head) = heads.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        head.starts_with("POST /team/app.git/git-upload-pack"),
        "{head}"
    );
}

/// An HPACK literal header field without indexing, name and value as literals (each under
/// 127 bytes, so its length is one byte).
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut field = vec![0x00, name.len() as u8];
    field.extend_from_slice(name.as_bytes());
    field.push(value.len() as u8);
    field.extend_from_slice(value.as_bytes());
    field
}

/// A new HTTP/2 connection (preface and SETTINGS sent) and the HPACK block of a fetch's
/// `POST` with the Basic credentials `auth` and these `Content-Length` fields.
fn h2_fetch_post(port: u16, auth: &str, lengths: &[&str]) -> (TcpStream, Vec<u8>) {
    let mut s = connect(port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame(4, &[])).unwrap();
    let path = "/team/app.git/git-upload-pack";
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 1, b'x']);
    block.extend(hpack_literal("authorization", &format!("Basic {auth}")));
    block.extend(hpack_literal(
        "content-type",
        "application/x-git-upload-pack-request",
    ));
    for length in lengths {
        block.extend(hpack_literal("content-length", length));
    }
    (s, block)
}

/// Reads HTTP/2 frames until `stream` ends (or 5 s pass): the first HEADERS block on it and
/// all its DATA, as text.
fn h2_answer_on(s: &mut TcpStream, stream: u32) -> (Vec<u8>, String) {
    let (mut headers, mut data) = (None, Vec::new());
    for (kind, _, id, payload) in h2_frames_with_payloads(s, stream) {
        match kind {
            1 if id == stream => {
                headers.get_or_insert(payload);
            }
            0 if id == stream => data.extend_from_slice(&payload),
            _ => {}
        }
    }
    (
        headers.unwrap_or_default(),
        String::from_utf8_lossy(&data).into_owned(),
    )
}

#[test]
fn an_http2_request_whose_content_length_is_no_length_is_refused_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, heads) = keep_alive_upstream(10);
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    // A fetch's POST over HTTP/2 with these Content-Length fields and `body` (none: END_STREAM
    // on the HEADERS); the status (HPACK static index: 0x88 is 200, 0x8c is 400) and the
    // answer's text.
    let post = |lengths: &[&str], body: &[u8]| {
        let (mut s, block) = h2_fetch_post(g.port, &auth, lengths);
        if body.is_empty() {
            s.write_all(&h2_frame_on(1, 0x05, 1, &block)).unwrap();
        } else {
            s.write_all(&h2_frame_on(1, 0x04, 1, &block)).unwrap();
            s.write_all(&h2_frame_on(0, 0x01, 1, body)).unwrap();
        }
        let (headers, text) = h2_answer_on(&mut s, 1);
        (headers.first().copied(), text)
    };
    // An empty one, which the h2 layer reads as 0 (with a body it resets the stream itself):
    // gitgate's own 400, and nothing reaches the upstream (nginx would answer a 400 of its own
    // to the header forwarded, another backend may take it for anything).
    let (status, text) = post(&[""], b"");
    assert_eq!(status, Some(0x8c), "{text}");
    assert!(
        text.contains("Content-Length \"\" is not one length"),
        "{text}"
    );
    assert_not_forwarded(&heads);
    // No length and no body (END_STREAM on the HEADERS): known empty, so gitgate's own 400
    // before anything is forwarded, as for `Content-Length: 0` (it was a 200, then a reset).
    let (status, text) = post(&[], b"");
    assert_eq!(status, Some(0x8c), "{text}");
    assert!(text.contains("the request body was empty"), "{text}");
    assert_not_forwarded(&heads);
    // `Content-Length: 0` on HEADERS that leave the stream open (the h2 layer does not know the
    // body empty yet): said empty, so refused the same, before anything is forwarded.
    let (mut s, block) = h2_fetch_post(g.port, &auth, &["0"]);
    s.write_all(&h2_frame_on(1, 0x04, 1, &block)).unwrap();
    let (headers, text) = h2_answer_on(&mut s, 1);
    assert_eq!(headers.first().copied(), Some(0x8c), "{text}");
    assert!(text.contains("the request body was empty"), "{text}");
    assert_not_forwarded(&heads);
    // One length, repeated or not, is passed on once.
    for lengths in [&["4"][..], &["4", "4"]] {
        let (status, text) = post(lengths, b"0000");
        assert_eq!(status, Some(0x88), "{lengths:?}: {text}");
        let (_, head) = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        let head = head.to_ascii_lowercase();
        assert_eq!(
            head.matches("content-length: 4\r\n").count(),
            1,
            "{lengths:?}: {head}"
        );
    }
}

/// A `GET` or `HEAD` over HTTP/2 whose HEADERS leave the stream open and whose DATA then
/// carry a body without a `Content-Length` (nothing in its headers says it has one, so the
/// gate's `400` for such bodies does not see it) sends none upstream: an upstream that takes
/// these methods for bodiless — as this test's does, reading request heads only — would read
/// the body as the next request on gitgate's pooled connection, made by whoever holds a
/// token for any repository, here one for another project's repository in another user's
/// name. Only the request gitgate authorised reaches the upstream.
#[test]
fn an_http2_get_or_head_with_an_unstated_body_sends_none_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, heads) = keep_alive_upstream(10);
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let hidden = "GET /other/secret.git/info/refs?service=git-upload-pack HTTP/1.1\r\n\
                  Host: x\r\nX-Forwarded-User: root\r\n\r\n";
    // HPACK: :method as a literal with its static name (index 2), :scheme http, :path and
    // :authority as literals.
    for method in ["GET", "HEAD"] {
        let mut s = connect(g.port);
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        s.write_all(&h2_frame(4, &[])).unwrap();
        let path = "/team/app.git/info/refs?service=git-upload-pack";
        let mut block = vec![0x02, method.len() as u8];
        block.extend_from_slice(method.as_bytes());
        block.extend_from_slice(&[0x86, 0x04, path.len() as u8]);
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 1, b'x']);
        block.extend(hpack_literal("authorization", &format!("Basic {auth}")));
        s.write_all(&h2_frame_on(1, 0x04, 1, &block)).unwrap();
        s.write_all(&h2_frame_on(0, 0x01, 1, hidden.as_bytes()))
            .unwrap();
        let (headers, text) = h2_answer_on(&mut s, 1);
        assert_eq!(headers.first().copied(), Some(0x88), "{method}: {text}");
        let (_, head) = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            head.starts_with(&format!("{method} /team/app.git/info/refs?")),
            "{method}: {head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{method}: {head}"
        );
        assert_not_forwarded(&heads);
    }
}

/// A request body that came whole is not blamed when the upstream then fails: a POST whose
/// `Content-Length` bytes all arrived, to an upstream that reads them and closes without an
/// answer, is the upstream's failure (`502`), not a body broken off (`400`).
#[test]
fn a_whole_body_is_not_blamed_for_an_upstream_that_fails_after_reading_it() {
    // An upstream that reads a request's head and its 4-byte body, then closes unanswered.
    // The readiness check's connections bring nothing, and are closed as well.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"0000") {
                    break;
                }
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let mut s = connect(g.port);
    s.write_all(
        format!(
            "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {auth}\r\nContent-Type: application/x-git-upload-pack-request\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\n0000"
        )
        .as_bytes(),
    )
    .unwrap();
    let (answer, _) = read_until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}

/// An upstream's empty `200` advertisement (`Content-Length: 0`: no git server sends one; a
/// broken one might) is not passed on as a whole answer: git's framing says an advertisement
/// ends with a flush-pkt. Nothing has gone to the client, so it gets a 502 with the reason, and
/// the log says `backend failed`.
#[test]
fn an_empty_advertisement_from_the_upstream_is_a_502_with_the_reason() {
    let (upstream_port, _heads) = scripted_upstream(100, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
          Content-Length: 0\r\n\r\n"
            .to_vec()
    });
    let dir = tempfile::tempdir().unwrap();
    let metrics = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, metrics);
    let (answer, _) = info_refs(&g, &auth);
    let reason = "the upstream git server's answer was empty, which git cannot read";
    assert!(
        answer.starts_with("HTTP/1.1 502") && answer.contains(reason),
        "{answer}"
    );
    let log = log_once_it_has(&g, "outcome=");
    assert!(
        log.lines()
            .any(|l| l.contains("backend failed") && l.contains(reason)),
        "{log}"
    );
    let scrape = common::http_get(metrics_port_of(&g), "/metrics", None).text();
    assert!(
        scrape
            .lines()
            .any(|l| l == "gitgate_upstream_errors_total 1"),
        "{scrape}"
    );
}

/// The wait for a push's POST at a stop is HTTP/1's alone: over HTTP/2 the stop's GOAWAY
/// leaves the client free to open a connection for its POST, so a connection whose last answer
/// was a push's advertisement does not hold the stop for the wait for a request
/// (`header_read_timeout_seconds`, 20 s here): it ends within a second or two (10 s allowed,
/// for a loaded machine).
#[test]
fn a_pushs_advertisement_over_http2_does_not_hold_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, _heads) = keep_alive_upstream(10);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {WORKERS}\nheader_read_timeout_seconds = 20\n\
         shutdown_grace_seconds = 60\n[store]\npath = \"gitgate.db\"\n\
         [upstream]\nurl = \"http://127.0.0.1:{upstream_port}\"\n"
    );
    let (mut g, auth) = start_with_token(dir.path(), &config, "PROJECT_WRITE");
    let mut s = connect(g.port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame(4, &[])).unwrap();
    // GET (HPACK static index 2), http, the push's advertisement, an :authority.
    let path = "/team/app.git/info/refs?service=git-receive-pack";
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 1, b'x']);
    block.extend(hpack_literal("authorization", &format!("Basic {auth}")));
    s.write_all(&h2_frame_on(1, 0x05, 1, &block)).unwrap();
    let (headers, text) = h2_answer_on(&mut s, 1);
    assert_eq!(headers.first().copied(), Some(0x88), "{text}");
    let started = Instant::now();
    let status = g.stop_within(Duration::from_secs(40));
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    drop(s);
}

#[test]
fn an_http2_upload_reset_short_of_its_content_length_is_cut_off_upstream_too() {
    // An upstream that reads each connection to its end: says when the body's bytes sent so
    // far have come, and what it got, sent on when the connection closes (or after 15 s). The
    // readiness check's connections bring nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = listener.local_addr().unwrap().port();
    let (got, received) = mpsc::channel();
    let (came, body_came) = mpsc::channel();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            let closed = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break false,
                }
                if all.ends_with(b"\r\n\r\n0032want ") {
                    let _ = came.send(());
                }
            };
            if !all.is_empty() {
                let _ = got.send((closed, String::from_utf8_lossy(&all).into_owned()));
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let (mut s, block) = h2_fetch_post(g.port, &auth, &["100"]);
    s.write_all(&h2_frame_on(1, 0x04, 1, &block)).unwrap();
    s.write_all(&h2_frame_on(0, 0, 1, b"0032want ")).unwrap();
    // Forwarded so far before the reset: what is cut off is the rest.
    body_came
        .recv_timeout(Duration::from_secs(30))
        .expect("the body's first bytes never reached the upstream");
    // RST_STREAM(NO_ERROR), which hyper takes for the body's end.
    s.write_all(&h2_frame_on(3, 0, 1, &[0, 0, 0, 0])).unwrap();
    let (closed, got) = received.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(closed, "the upstream connection was left open: {got}");
    assert!(got.contains("content-length: 100\r\n"), "{got}");
    let body = &got[got.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, "0032want ", "{got}");
    // The client's doing, as a body broken off any other way: not a backend failure.
    let log = log_once_it_has(&g, "gitgate::request");
    assert!(
        log.contains("the request body broke off")
            && log.contains(
                "the request body ended after 9 of the 100 bytes its Content-Length promised"
            ),
        "{log}"
    );
    // (Counted as one in gitgate_upstream_errors_total where it is said.)
    assert!(!log.contains("backend failed"), "{log}");
}

const API_USERS: &str = "/rest/access-tokens/1.0/users/alice";

#[test]
fn an_api_request_without_credentials_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path(), &cgi_config(dir.path(), ""));
    let mut s = connect(g.port);
    // Announces a body it never sends: the answer must not wait for it.
    s.write_all(
        format!(
            "PUT {API_USERS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    let started = Instant::now();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_api_request_body_that_trickles_is_cut_off_at_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(
        dir.path(),
        &cgi_config(dir.path(), "header_read_timeout_seconds = 1"),
    );
    let mut s = connect(g.port);
    s.write_all(
        format!(
            "PUT {API_USERS} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWxpY2U6cHc=\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\""
        )
        .as_bytes(),
    )
    .unwrap();
    let mut writer = s.try_clone().unwrap();
    let answered = std::thread::spawn(move || read_until_closed(&mut s));
    // One byte every 300 ms for up to 12 s: bytes keep moving, the body never completes.
    let started = Instant::now();
    while !answered.is_finished() && started.elapsed() < Duration::from_secs(12) {
        if writer.write_all(b" ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (out, _) = answered.join().unwrap();
    let took = started.elapsed();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("did not arrive within 1s"), "{out}");
    // About a second, not held while the bytes come; the rest is what a loaded machine adds.
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
}

/// `n` REST API logins with wrong passwords, sent at once from `n` connections, user names
/// `nobody0` to `nobody{n-1}`: each one's whole answer, in that order.
fn wrong_logins_at_once(port: u16, n: usize) -> Vec<String> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(n));
    (0..n)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                let auth = base64::engine::general_purpose::STANDARD
                    .encode(format!("nobody{i}:wrong-password"));
                let mut s = connect(port);
                start.wait();
                s.write_all(
                    format!(
                        "GET {API_USERS} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
                         Connection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .unwrap();
                read_until_closed(&mut s).0
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn password_checks_run_a_few_at_a_time_and_the_rest_are_told_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path(), &cgi_config(dir.path(), ""));
    let port = g.port;
    let answers = wrong_logins_at_once(port, 40);
    let status = |a: &String| a.get(9..12).unwrap_or("").to_string();
    let busy: Vec<&String> = answers.iter().filter(|a| status(a) == "503").collect();
    assert!(
        !busy.is_empty(),
        "40 logins at once, none told to wait: {:?}",
        answers.iter().map(status).collect::<Vec<_>>()
    );
    for a in &busy {
        assert!(a.to_ascii_lowercase().contains("retry-after: 1"), "{a}");
        assert!(a.contains("too many password checks in progress"), "{a}");
    }
    for a in &answers {
        assert!(["401", "429", "503"].contains(&status(a).as_str()), "{a}");
    }
    // ... and a few at a time were checked (a limiter refusing every login would pass the rest).
    assert!(
        answers.iter().any(|a| status(a) == "401"),
        "no password was checked: {:?}",
        answers.iter().map(status).collect::<Vec<_>>()
    );
}

/// SECURITY.md promise 13: a login past the password checks at once is told to retry (`503`)
/// *without hashing*. A login that is checked is audited (`auth.failed`, for an unknown name as
/// for a wrong password, after the same argon2 time), and counted towards its user's lock; one
/// told to retry is neither. A burst of wrong logins, one user name each; after a graceful stop
/// (which writes every pending event), the names audited as failed are exactly those answered
/// `401`, none of those answered `503`. It fails if a login told to retry is checked anyway.
#[test]
fn a_login_told_to_retry_was_not_checked_and_counts_for_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // No address throttle at work: every answer is the login's own.
    let config = format!(
        "{}\n[auth_failures]\nmax = 100000\nwindow_seconds = 600\n",
        cgi_config(dir.path(), "")
    );
    let mut g = start(dir.path(), &config);
    let port = g.port;
    let n = 40;
    let statuses: Vec<String> = wrong_logins_at_once(port, n)
        .iter()
        .map(|answer| answer.get(9..12).unwrap_or("").to_string())
        .collect();
    let answered = |status: &str| -> std::collections::BTreeSet<String> {
        (0..n)
            .filter(|&i| statuses[i] == status)
            .map(|i| format!("nobody{i}"))
            .collect()
    };
    let (checked, told_to_retry) = (answered("401"), answered("503"));
    // The test's premise: some were checked, some told to retry, and nothing else.
    assert!(
        !checked.is_empty() && !told_to_retry.is_empty(),
        "{statuses:?}"
    );
    assert_eq!(checked.len() + told_to_retry.len(), n, "{statuses:?}");

    let status = g.stop_within(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", g.log_text());
    let mut audit = common::gitgate_command(&dir.path().join("proxy.toml"));
    audit.args(["audit", "--json"]);
    let audit = common::run(audit, None);
    let events: serde_json::Value = serde_json::from_str(audit.ok()).unwrap();
    let failed: std::collections::BTreeSet<String> = common::actors_of(&events, "auth.failed")
        .into_iter()
        .collect();
    assert_eq!(
        failed, checked,
        "told to retry: {told_to_retry:?}\n{events}"
    );
}

#[test]
fn connections_beyond_the_cap_wait() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path(), &cgi_config(dir.path(), "max_connections = 1"));
    let first = connect(g.port);
    // gitgate has accepted the first connection before the second arrives: it says it is at
    // its cap as soon as it has (a fixed 300 ms could be too short on a loaded machine, and
    // the second then took the slot).
    let log = log_once_it_has(&g, "max_connections reached");
    assert!(log.contains("max_connections reached"), "{log}");
    let mut second = connect(g.port);
    second.write_all(HEALTHZ).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        second.read(&mut buf).is_err(),
        "the second connection was served while the first held the only slot"
    );
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = second.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

/// A burst of clients past `max_connections` (a CI fleet starting at once) waits in the listen
/// backlog with its handshakes done, not with its SYNs dropped and retried a second, then three,
/// later: the backlog is 1024 (clamped by `net.core.somaxconn`), not the 128 of the standard
/// library and tokio, past which the 130th connect here timed out. The log says the cap is
/// reached, as nginx says its worker_connections are not enough.
#[test]
fn a_burst_of_connections_past_the_cap_waits_in_the_backlog() {
    const BURST: usize = 400;
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path(), &cgi_config(dir.path(), "max_connections = 1"));
    let _first = connect(g.port);
    // Accepted (the log says the cap is reached as soon as it is): the burst all waits. The log
    // was read at once after the burst, and a first connection not accepted by then (a fixed
    // 300 ms on a loaded machine) left it without the line.
    log_once_it_has(&g, "max_connections reached");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], g.port));
    let mut waiting = Vec::new();
    for i in 0..BURST.min(somaxconn) {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => waiting.push(s),
            Err(e) => panic!("connection {i} of the burst: {e}"),
        }
    }
    // And the log says why they wait, once.
    let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap_or_default();
    let said = log.matches("max_connections reached").count();
    assert_eq!(said, 1, "{log}");
}

/// `[server] max_connections_per_address = 2`: a third connection from the same address is
/// answered 503 with the reason and closed, while the first two are served; once one of them
/// ends, the address may connect again. The count is scraped from /metrics.
#[test]
fn connections_beyond_an_addresss_cap_are_answered_503_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cgi_config(dir.path(), "max_connections_per_address = 2");
    config.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let g = start(dir.path(), &config);
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(g.port)).collect();
    let mut over = connect(g.port);
    over.write_all(HEALTHZ).unwrap();
    let (out, _) = read_until_closed(&mut over);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert!(
        out.contains("too many connections from your address (at most 2 at once)"),
        "{out}"
    );
    // The two under the cap are served as usual.
    for s in &mut held {
        s.write_all(HEALTHZ).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // One ends: its place comes back once gitgate has seen it close.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(g.port);
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (out, _) = read_until_closed(&mut s);
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(
            Instant::now() < deadline,
            "the ended connection's place never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = g.log_text();
    // Each refusal has its line in the request log.
    assert!(
        log.lines().any(|l| l.contains("gitgate::request")
            && l.contains("path=/healthz")
            && l.contains("status=503")
            // Its placeholders as on every other request line (`user=-`, not `user="-"`).
            && l.contains(" repo=- access=- user=- token_id=- ")
            && l.contains("outcome=over-address-cap")),
        "{log}"
    );
    let port = metrics_port_of(&g);
    let metrics = String::from_utf8(common::http_get(port, "/metrics", None).body).unwrap();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gitgate_connections_over_address_cap_total "))
        .unwrap_or_else(|| panic!("no counter in {metrics}"));
    assert!(refused.trim().parse::<u64>().unwrap() >= 1, "{metrics}");
}

/// The soft limit on open files, as `/proc/PID/limits` has it (`None`: unlimited), and the hard.
fn open_files_limits(pid: u32) -> (Option<u64>, Option<u64>) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse::<u64>().ok());
    (values.next().unwrap(), values.next().unwrap())
}

/// Started with a soft limit of 256 open files, gitgate raises it to what `max_connections`
/// needs (8 per connection, and 256), within the hard limit.
#[test]
fn the_running_server_raises_its_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("proxy.toml");
    std::fs::write(
        &config_path,
        cgi_config(dir.path(), "max_connections = 1000"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 256 && exec \"$0\" --config \"$1\" serve",
        common::gitgate_bin(),
        config_path.to_str().unwrap(),
    ])
    .env_remove("GITGATE_CONFIG")
    .env_remove("GITGATE_LOG");
    let g = Server::start(cmd, dir.path().join("gitgate.log"), "");
    let (soft, hard) = open_files_limits(g.pid());
    let wanted = 1000 * 8 + 256;
    let expected = hard.map_or(wanted, |h| h.min(wanted));
    assert_eq!(soft, Some(expected), "hard limit {hard:?}");
    assert!(
        expected > 256,
        "the hard limit leaves nothing to raise: {hard:?}"
    );
}

/// `g`'s log once it has `needle`, or as it is after [`common::EVENT_DEADLINE`] (for the
/// caller's assertion to show).
/// A deadline, not a wait: it returns as soon as the line is there. (2 s was what a loaded
/// machine, running more tests at once, could take to get a line written.)
fn log_once_it_has(g: &Server, needle: &str) -> String {
    let deadline = Instant::now() + common::EVENT_DEADLINE;
    loop {
        let log = g.log_text();
        if log.contains(needle) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `gitgate ARGS` under `ulimit -n LIMIT` (soft and hard), run to its end (or stopped after
/// 60 s: a `serve` that should have refused to start).
fn under_open_files_limit(limit: u64, config: &Path, args: &[&str]) -> common::Run {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n {limit} && exec timeout 60 \"$0\" --config \"$1\" {}",
            args.join(" ")
        ))
        .arg(common::gitgate_bin())
        .arg(config)
        .env_remove("GITGATE_CONFIG")
        .env_remove("GITGATE_LOG");
    common::run(cmd, None)
}

/// An open-files limit too low to serve a connection (a hard limit of 40 with 2 workers, which
/// hold 25 at rest) is refused at the start, by `serve` and by `check` alike, with what to do;
/// before, serve listened and then never accepted a connection.
#[test]
fn an_open_files_limit_too_low_to_serve_refuses_the_start_and_check_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, cgi_config(dir.path(), "workers = 2")).unwrap();
    for command in ["serve", "check"] {
        let run = under_open_files_limit(40, &config, &[command]);
        let e = run.fails_with("the open-files limit is 40");
        assert!(e.contains("needs at least 80"), "{run}");
        assert!(e.contains("LimitNOFILE"), "{run}");
    }
    assert!(!dir.path().join("gitgate.db").exists(), "nothing created");
    // At the floor, both go on (with the warning that max_connections wants more).
    let run = under_open_files_limit(80, &config, &["check"]);
    assert!(run.ok().contains("low for max_connections = 1024"), "{run}");
}

/// A command that cannot open the store for want of file descriptors says so, not that its
/// user must be able to write the store's folder (SQLite's "unable to open database file" is
/// the same for both).
#[test]
fn a_store_that_cannot_be_opened_for_want_of_descriptors_is_said_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, cgi_config(dir.path(), "")).unwrap();
    let mut add = common::gitgate_command(&config);
    add.args(["user", "add", "alice", "--password-stdin"]);
    common::run(add, Some("a long enough password\n")).ok();
    let (mut failed, mut worked) = (0, 0);
    for limit in 4..=32 {
        let run = under_open_files_limit(limit, &config, &["user", "list"]);
        if run.success() {
            worked += 1;
            continue;
        }
        // Below a few descriptors the dynamic loader itself fails, before gitgate runs.
        if run.stderr.contains("error while loading shared libraries") {
            continue;
        }
        failed += 1;
        assert!(
            run.stderr.contains("too many open files"),
            "limit {limit}: {run}"
        );
        assert!(
            !run.stderr.contains("must be able to write"),
            "limit {limit}: {run}"
        );
    }
    assert!(failed > 0 && worked > 0, "failed {failed}, worked {worked}");
}

/// `serve` opens the store's 8 pooled connections and its writer's at its start
/// (`Store::fill_pool`): two lookups at once, at the open-files limit, need no new one (the
/// store's unit test `two_lookups_at_once_at_the_descriptor_limit_open_no_connection`), nor
/// does the writer's first commit. Counted by the store file's descriptors before any request:
/// the 8, the writer's, the cache's watcher and its header's.
#[test]
fn the_stores_pooled_connections_are_open_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path(), &cgi_config(dir.path(), "workers = 1"));
    let store = std::fs::canonicalize(dir.path().join("gitgate.db")).unwrap();
    let on_the_store = std::fs::read_dir(format!("/proc/{}/fd", g.pid()))
        .unwrap()
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).ok().as_ref() == Some(&store))
        .count();
    assert!(
        on_the_store >= 11,
        "{on_the_store} descriptors of the store"
    );
}

/// Out of file descriptors, the accept loop backs off and says so once per 10 s with a count —
/// not 20 lines a second for as long as a client holds its connections — and says when it
/// accepts again, once none has failed for those 10 s.
/// How many files `pid` has open.
fn open_files(pid: libc::pid_t) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// Lowers the running `pid`'s open-files limit to `soft` (its hard limit kept); the limit it
/// had, for [`restore_open_files_limit`].
fn lower_open_files_limit(pid: libc::pid_t, soft: u64) -> libc::rlimit {
    let mut before = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on gitgate's pid, reading into a live rlimit value.
    let got = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut before) };
    assert_eq!(got, 0, "prlimit: {}", std::io::Error::last_os_error());
    let lowered = libc::rlimit {
        rlim_cur: soft,
        rlim_max: before.rlim_max,
    };
    // SAFETY: as above, with a live rlimit value to set.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lowered, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    before
}

fn restore_open_files_limit(pid: libc::pid_t, before: &libc::rlimit) {
    // SAFETY: prlimit on gitgate's pid, with a live rlimit value to set.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, before, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn running_out_of_descriptors_is_logged_once_per_window_and_the_recovery_too() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path(), &cgi_config(dir.path(), "workers = 1"));
    let pid = g.pid() as libc::pid_t;
    let before = lower_open_files_limit(pid, open_files(pid) + 2);
    let held: Vec<TcpStream> = (0..20).map(|_| connect(g.port)).collect();
    // The first failure's line, then 1.5 s more of failures (some 30): no second line. (A
    // blind 1.5 s from the connects on, the first line could be late on a loaded machine.)
    log_once_it_has(&g, "accept failed");
    std::thread::sleep(Duration::from_millis(1500));
    let log = g.log_text();
    let said = log.matches("accept failed").count();
    assert_eq!(said, 1, "one line in 1.5 s of failures:\n{log}");
    assert!(log.contains("Too many open files"), "{log}");
    drop(held);
    restore_open_files_limit(pid, &before);
    let mut s = connect(g.port);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Accepts that work right after failures say nothing yet (out of descriptors they
    // alternate with failures); the first a whole window (10 s) after the last failure does.
    assert!(
        !g.log_text().contains("accepting connections again"),
        "{}",
        g.log_text()
    );
    std::thread::sleep(Duration::from_secs(10));
    let mut s = connect(g.port);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let log = log_once_it_has(&g, "accepting connections again after failures");
    let line = log
        .lines()
        .find(|l| l.contains("accepting connections again after failures"))
        .unwrap_or_else(|| panic!("{log}"));
    let times: u64 = line
        .split("times=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(times > 5, "20 a second for 1.5 s: {line}");
}

/// `pid`'s listening socket on `port`, taken into this process with `pidfd_getfd` (the same
/// socket, not a copy: what is done to it here is done to gitgate's). `None` where the kernel
/// or its rules do not allow it (before Linux 5.6, no right to trace `pid`, a seccomp filter).
fn listening_socket_of(pid: libc::pid_t, port: u16) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open of a live child's pid; the descriptor it returns is owned from here.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return None;
    }
    // SAFETY: a descriptor just returned to this process, owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let entry = entry.ok()?;
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|to| to.to_string_lossy().starts_with("socket:"));
        let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: pidfd_getfd with a live pidfd; the descriptor it returns is owned from here.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), number, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: as above.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut listening: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a live c_int of the length given.
        let asked = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut listening as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        let listener = TcpListener::from(fd);
        if asked == 0 && listening == 1 && listener.local_addr().is_ok_and(|a| a.port() == port) {
            return Some(listener.into());
        }
    }
    None
}

/// A listening socket that something shut down under the server (`EINVAL` from every accept,
/// for good) stops it with status 1 and the reason, within moments: it stayed up serving
/// nobody, its clients refused, and said only "accept failed: new connections wait in the
/// listen backlog" every ten seconds, which no backlog did.
#[test]
fn a_listening_socket_shut_down_under_the_server_stops_it_saying_why() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let mut g = start(dir.path(), &cgi_config(dir.path(), "workers = 1"));
    let Some(socket) = listening_socket_of(g.pid() as libc::pid_t, g.port) else {
        common::skipping("pidfd_getfd is not allowed here: the listening socket shut down");
        return;
    };
    // SAFETY: shutdown of a socket descriptor this process owns.
    let shut = unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
    assert_eq!(shut, 0, "shutdown: {}", std::io::Error::last_os_error());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = g.exit_status() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after its listening socket was shut down:\n{}",
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = g.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("cannot accept connections any more") && log.contains("Invalid argument"),
        "{log}"
    );
    assert!(!log.contains("wait in the listen backlog"), "{log}");
}

/// A bare repository `team/app` under `dir/repos`, for the embedded runner of [`cgi_config`].
fn bare_team_app(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("repos/team/app.git");
    let made = std::process::Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(made.success());
    repo
}

/// A gitgate with the embedded runner (`/bin/true`) in `dir`, a project token's Basic
/// credentials read into its cache, the token's last use written, and a connection to it
/// accepted while descriptors are to spare; then its open-files limit lowered to what it has
/// open. The previous limit is returned for [`restore_open_files_limit`].
fn at_its_descriptor_limit(dir: &Path) -> (Server, String, TcpStream, libc::pid_t, libc::rlimit) {
    bare_team_app(dir);
    let config = cgi_config(dir, "workers = 1");
    let (g, auth) = start_with_token(dir, &config, "PROJECT_READ");
    let (out, _) = info_refs(&g, &auth);
    assert!(!out.starts_with("HTTP/1.1 401"), "{out}");
    let pid = g.pid() as libc::pid_t;
    // The store's writer commits that request's last use (0.1 s on, or later on a loaded
    // machine), on a connection of its own that it opens for that first commit: at the limit
    // it could not (logged, and tried again). So the last use is in the store and the writer
    // waits for events again before the limit is lowered: nothing is committed until the next
    // request. (Before the writer had a connection of its own, a lookup between its commit and
    // its check that the commit was its own, src/store/cache.rs, opened one while the writer
    // held the pooled one: at the limit, a 503 for the token store, not for the git process.)
    wait_until_written_and_the_writer_waits(dir, pid);
    let s = connect(g.port);
    // Accepted, its descriptor open, before the limit is lowered to what is open.
    common::wait_until_accepted(g.port, 0);
    let before = lower_open_files_limit(pid, open_files(pid));
    (g, auth, s, pid, before)
}

/// Waits until a token's last use is in the store of `dir` and the store's writer thread of
/// gitgate `pid` (`gitgate-writer`) sleeps, waiting for the next events. Between its commit
/// and that sleep the thread runs or waits for a core; it does not sleep.
fn wait_until_written_and_the_writer_waits(dir: &Path, pid: libc::pid_t) {
    let db = dir.join("gitgate.db");
    let deadline = Instant::now() + common::EVENT_DEADLINE;
    let used = || {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        conn.query_row(
            "SELECT count(*) FROM tokens WHERE last_used_at IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            > 0
    };
    while !used() {
        assert!(Instant::now() < deadline, "the last use was not written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let writer_state = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end() == "gitgate-writer")
            })
            .and_then(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            // `TID (NAME) STATE ...`
            .and_then(|stat| stat.rsplit_once(") ")?.1.chars().next())
    };
    loop {
        let state = writer_state();
        if state == Some('S') {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store's writer did not come to wait (state {state:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A CGI backend that cannot be started for want of file descriptors (or processes) is the
/// server overloaded for now, not broken: a `503` that says to try again, with `Retry-After`.
#[test]
fn a_backend_that_cannot_be_started_for_want_of_descriptors_is_a_503_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (g, auth, mut s, pid, before) = at_its_descriptor_limit(dir.path());
    let (out, _) = info_refs_on(&mut s, &auth);
    restore_open_files_limit(pid, &before);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("retry-after: 5\r\n"), "{out}");
    assert!(
        out.contains("the server cannot start another git process now; try again in a moment"),
        "{out}"
    );
    // Said as this server's limit, not as a backend that failed (which an alert watches).
    let log = log_once_it_has(&g, "cannot start a git process");
    let line = log
        .lines()
        .find(|l| l.contains("cannot start a git process"))
        .unwrap();
    assert!(
        line.contains(" WARN ") && line.contains("Too many open files") && line.contains("times=1"),
        "{line}"
    );
    // The one `backend failed` is the first request's (`/bin/true` answers nothing).
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("backend failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert!(!failed[0].contains("Too many open files"), "{log}");
}

/// A `POST` going on with an exchange (a clone's, a push's) whose backend cannot be started for
/// want of descriptors tries again for a few seconds before its `503`, as it waits at
/// `max_processes`: git shows no reason for a refused `POST`, and descriptors come free within
/// milliseconds as other requests end. Here they come free after a second (past the half
/// second an advertisement waits), and the backend starts.
#[test]
fn a_post_whose_backend_cannot_start_for_want_of_descriptors_tries_again() {
    let dir = tempfile::tempdir().unwrap();
    let (g, auth, mut s, pid, before) = at_its_descriptor_limit(dir.path());
    let restore = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        restore_open_files_limit(pid, &before);
    });
    s.write_all(
        format!(
            "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {auth}\r\n\
             Content-Type: application/x-git-upload-pack-request\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\n0000"
        )
        .as_bytes(),
    )
    .unwrap();
    let (out, _) = read_until_closed(&mut s);
    restore.join().unwrap();
    assert!(!out.starts_with("HTTP/1.1 503"), "{out}");
    // `/bin/true` answers nothing: the backend was started, and failed as the first did.
    let log = log_once_it_has(&g, "git-upload-pack");
    assert!(!log.contains("cannot start a git process"), "{log}");
    assert_eq!(
        log.matches("gitgate::gate: backend failed").count(),
        2,
        "{log}"
    );
}

/// git http-backend that cannot start upload-pack (`cannot fork()`: the process limit of
/// gitgate's user) is the same shortage as a backend that cannot be started: before its head a
/// `503` to retry, counted as busy; after it, a cut answer whose log says it is a capacity
/// problem, not a broken repository.
#[test]
fn git_that_cannot_fork_is_a_shortage_of_processes() {
    for (script, expected) in [
        (
            "echo 'error: cannot fork() for upload-pack: Resource temporarily unavailable' >&2\n\
             exit 1\n",
            "HTTP/1.1 503",
        ),
        (
            "printf 'Content-Type: application/x-git-upload-pack-advertisement\\r\\n\\r\\n'\n\
             printf '001e# service=git-upload-pack\\n0000'\n\
             echo 'error: cannot fork() for upload-pack: Resource temporarily unavailable' >&2\n\
             echo 'fatal: unable to run upload-pack' >&2\n\
             exit 128\n",
            "HTTP/1.1 200",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        bare_team_app(dir.path());
        let cgi = dir.path().join("backend.sh");
        std::fs::write(&cgi, format!("#!/bin/sh\ncat >/dev/null\n{script}")).unwrap();
        std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let config = cgi_config(dir.path(), "").replace("/bin/true", cgi.to_str().unwrap());
        let (mut g, auth) = start_with_token(dir.path(), &config, "PROJECT_READ");
        let (out, _) = info_refs(&g, &auth);
        assert!(out.starts_with(expected), "{out}");
        g.stop();
        let log = g.log_text();
        if expected.ends_with("503") {
            assert!(out.contains("retry-after: 5\r\n"), "{out}");
            assert!(
                out.contains("the server cannot start another git process now"),
                "{out}"
            );
            assert!(log.contains("cannot start a git process"), "{log}");
            assert!(!log.contains("gitgate::gate: backend failed"), "{log}");
        } else {
            assert!(log.contains("outcome=stream-error"), "{log}");
            assert!(
                log.contains("this server is out of processes")
                    && log.contains("not a broken repository"),
                "{log}"
            );
        }
    }
}

/// The open-files limit as gitgate's `/proc/PID/limits` says it (soft, hard), and the lowest
/// soft limit that leaves exactly one descriptor free for it (descriptors are taken lowest
/// first, and a new one must be below the limit).
fn one_descriptor_left(pid: u32) -> u64 {
    let mut open: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    open.sort_unstable();
    (1..)
        .find(|&limit| limit - open.iter().filter(|&&fd| fd < limit).count() as u64 == 1)
        .unwrap()
}

fn set_open_files(pid: u32, soft: u64) {
    let set = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(set.success());
}

/// An HTTP upstream that cannot be connected to because gitgate is out of file descriptors
/// (its open-files limit, lowered with `prlimit` to leave one: the client's connection takes
/// it) is this server's shortage, as for the CGI runner: `503` with `Retry-After` and the
/// reason git prints, said in the log once — not `502` "cannot reach the upstream git server"
/// with an error line per request, which points at a healthy upstream. Served again as soon
/// as descriptors are back.
#[test]
fn an_upstream_not_connected_to_for_want_of_descriptors_is_a_shortage() {
    let dir = tempfile::tempdir().unwrap();
    let (port, _heads) = scripted_upstream(1, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
    });
    let (mut g, auth) = start_in_front_of(dir.path(), port, "");
    // Served once, so that what a request needs (the token in the cache) is in place; its
    // connections (the client's, the upstream's) closed before the descriptors are counted.
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    common::wait_for_no_connections(g.pid());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", g.pid())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap();
    set_open_files(g.pid(), one_descriptor_left(g.pid()));
    for _ in 0..3 {
        let (out, _) = info_refs(&g, &auth);
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(out.contains("retry-after: 5\r\n"), "{out}");
        assert!(
            out.contains("the server cannot open another connection to the git server now"),
            "{out}"
        );
    }
    set_open_files(g.pid(), soft);
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    g.stop();
    let log = g.log_text();
    assert_eq!(
        log.matches("cannot open a connection to the upstream git server")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("backend failed"), "{log}");
}

/// Descriptors come free within milliseconds as other requests end: a request whose HTTP
/// upstream cannot be connected to for want of them tries again for a moment, as the CGI
/// runner does to start git — a `POST` going on with a clone or push (whose refusal git prints
/// no reason for) for up to 5 s — and is served when they come back meanwhile, not answered
/// `503` at the first try.
#[test]
fn a_post_waits_a_moment_for_descriptors_to_reach_its_upstream() {
    // An upstream that answers one request per connection and closes it (so that each
    // request needs a new one): an advertisement to a GET, a whole protocol-v0 negotiation
    // round to a POST once its 4-byte body is in. It tells the test each request it read.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = listener.local_addr().unwrap().port();
    let (heads, got_one) = mpsc::channel();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                let body: &[u8] = if got.starts_with(b"GET ") {
                    b"001e# service=git-upload-pack\n0000"
                } else {
                    b"0008NAK\n"
                };
                if got.windows(4).any(|w| w == b"\r\n\r\n")
                    && (got.starts_with(b"GET ") || got.ends_with(b"0000"))
                {
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let _ = s.write_all(body);
                    let _ = heads.send(String::from_utf8_lossy(&got).into_owned());
                    break;
                }
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (mut g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    // Served once, so that what a request needs (the token in the cache) is in place; its
    // connections (the client's, the upstream's) closed before the descriptors are counted.
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    common::wait_for_no_connections(g.pid());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", g.pid())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap();
    while got_one.try_recv().is_ok() {}
    set_open_files(g.pid(), one_descriptor_left(g.pid()));
    let port = g.port;
    let post = std::thread::spawn(move || {
        let mut s = connect(port);
        s.write_all(
            format!(
                "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Basic {auth}\r\nContent-Type: application/x-git-upload-pack-request\r\n\
                 Content-Length: 4\r\nConnection: close\r\n\r\n0000"
            )
            .as_bytes(),
        )
        .unwrap();
        read_until_closed(&mut s).0
    });
    // Short of descriptors for a second: the POST is not sent upstream meanwhile ...
    assert!(
        got_one.recv_timeout(Duration::from_secs(1)).is_err(),
        "sent upstream with no descriptor to spare"
    );
    set_open_files(g.pid(), soft);
    // ... and is once they are back.
    let answer = post.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("0008NAK\n"), "{answer}");
    let head = got_one.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(head.starts_with("POST "), "{head}");
    g.stop();
    let log = g.log_text();
    assert!(!log.contains("backend failed"), "{log}");
}

/// A memory limit reached (here gitgate's address space held below what it has, with
/// `prlimit --as`, so that no git process can be started: `ENOMEM`) is a shortage, as one of
/// processes or descriptors is: `503` with `Retry-After` and the reason git prints, said in
/// the log once — not a `502` "backend failed" error line per request.
#[test]
fn a_memory_limit_that_stops_a_git_process_starting_is_a_shortage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, auth) = served_once_before_a_memory_limit(dir.path(), 1);
    // Below what it has: not even a page more.
    limit_address_space(g.pid(), address_space(g.pid()) - 1024);
    for _ in 0..3 {
        let (out, _) = info_refs(&g, &auth);
        assert!(out.starts_with("HTTP/1.1 503"), "{out}\n{}", g.log_text());
        assert!(out.contains("retry-after: 5\r\n"), "{out}");
        assert!(
            out.contains("the server cannot start another git process now"),
            "{out}"
        );
    }
    g.stop();
    let log = g.log_text();
    assert_eq!(
        log.matches("cannot start a git process").count(),
        1,
        "{log}"
    );
    // The limit that gave the error is named, for the operator to raise: the address space's
    // (the words named a cgroup's MemoryMax, which refuses no process).
    let said = log
        .lines()
        .find(|l| l.contains("cannot start a git process"))
        .unwrap();
    assert!(
        said.contains("out of memory (gitgate's address-space limit: ulimit -v, systemd's LimitAS"),
        "{said}"
    );
    assert!(!said.contains("MemoryMax"), "{said}");
    assert!(!log.contains("backend failed"), "{log}");
}

/// A gitgate in `dir` with `workers` worker threads, before a test holds its memory: its CGI
/// program (a shell's `printf`) answers every request with a small `200` of its own, and one
/// info/refs has been served with the project token's Basic credentials returned, so that what
/// a request needs is in place before the limit; the readiness check's threads have run and
/// ended by the start's `ready:` line, waited for.
fn served_once_before_a_memory_limit(dir: &Path, workers: usize) -> (Server, String) {
    bare_team_app(dir);
    // Written beside, then installed: a program written here and run at once can be `Text
    // file busy` (see `common::install_executable`).
    let script = dir.join("backend.sh.in");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nserved\\n'\n",
    )
    .unwrap();
    let cgi = dir.join("backend.sh");
    common::install_executable(&script, &cgi);
    let config = cgi_config(dir, &format!("workers = {workers}"))
        .replace("/bin/true", cgi.to_str().unwrap());
    let (g, auth) = start_with_token(dir, &config, "PROJECT_READ");
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    wait_for_lines(&g, "ready:", 1);
    (g, auth)
}

/// The address-space size of process `pid` (`VmSize`), in bytes.
fn address_space(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Holds process `pid`'s address space (`RLIMIT_AS`, as `ulimit -v` or systemd's `LimitAS=`
/// set it) to `bytes`. Only the soft limit, the one the kernel enforces, is set: raising the hard
/// one again takes `CAP_SYS_RESOURCE`, which the tests' containers may not have, and a test
/// raises the limit to show the server recovers.
fn limit_address_space(pid: u32, bytes: u64) {
    let set = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--as={bytes}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(set.success());
}

/// The lines of `g`'s log that hold `needle`, waited for (up to 10 s) until there are `n`.
fn wait_for_lines(g: &Server, needle: &str, n: usize) -> String {
    let by = Instant::now() + Duration::from_secs(10);
    loop {
        let log = g.log_text();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(Instant::now() < by, "no {n} lines with {needle:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A memory limit met after the start (the address space held to what the server has, as
/// `ulimit -v` or `LimitAS=` would, reached) starts no thread, and so ends nothing: the
/// standard library maps a new thread's signal stack inside it, and aborts the process when it
/// cannot (glibc gives the thread the stack of one that ended, so its start needs no memory).
/// A SIGHUP's reload, the readiness check and the management API's password check (on a
/// worker's blocking pool, started on its first call) all started one: the process died with
/// "failed to allocate an alternative stack" at the first. Now they run on threads started
/// with the server, and it answers each: the reload said, `/readyz` and the API answered, and
/// a clone refused with the `503` of a git process that cannot start.
#[test]
fn a_memory_limit_met_after_the_start_starts_no_thread_that_ends_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, auth) = served_once_before_a_memory_limit(dir.path(), 2);
    limit_address_space(g.pid(), address_space(g.pid()));
    g.signal("HUP");
    wait_for_lines(&g, "SIGHUP: no [server.tls]", 1);
    assert!(g.alive(), "{}", g.log_text());
    // Connections open on both workers at once (each goes to the one with fewer), then a call
    // of the API on each, with an empty password: its check runs on the worker's blocking
    // pool (and refuses at once, without hashing).
    let mut open: Vec<TcpStream> = (0..2).map(|_| connect(g.port)).collect();
    for s in &mut open {
        s.write_all(
            b"GET /rest/access-tokens/1.0/users/alice HTTP/1.1\r\nHost: x\r\n\
              Authorization: Basic YWxpY2U6\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    }
    for s in &mut open {
        let (out, _) = read_until_closed(s);
        assert!(
            out.starts_with("HTTP/1.1 401") && out.contains("the password is empty"),
            "{out}\n{}",
            g.log_text()
        );
    }
    let mut s = connect(g.port);
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 "), "{out}\n{}", g.log_text());
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}\n{}", g.log_text());
    assert!(
        out.contains("the server cannot start another git process now"),
        "{out}"
    );
    assert!(g.alive(), "{}", g.log_text());
    g.stop();
    let log = g.log_text();
    assert!(!log.contains("alternative stack"), "{log}");
    assert!(!log.contains("panic"), "{log}");
}

/// A REST call's password check (argon2, in memory of its own) that cannot get its memory at a
/// memory limit (`RLIMIT_AS`: the address space held to what the server has, as `ulimit -v` or
/// `LimitAS=` would, reached) is answered `503` with the reason and `Retry-After`, and said in
/// the log with the limit to raise; the process lives and checks the next password. The argon2
/// crate's own allocation (a `vec!`) that could not be had aborted the process ("memory
/// allocation of 1073741824 bytes failed"), every connection cut.
///
/// The stored hash asks for 1 GiB (as one edited by hand, or made by another tool with stronger
/// settings, could): more than the allocator's reserve holds, so its check needs a new mapping,
/// which the limit refuses whatever the allocator holds at the moment. A hash of gitgate's own
/// (19 MiB) can meet the same while the limit is exactly what the server has (whether it fits
/// depends on what the allocator's arenas hold at that moment: it failed so once in CI), so the
/// next login is checked after the limit is raised by 256 MiB, as the log's advice says.
#[test]
fn a_password_check_at_the_memory_limit_is_a_503_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let config = cgi_config(dir.path(), "workers = 2");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &config).unwrap();
    let set_password = |args: [&str; 3]| {
        let mut cmd = common::gitgate_command(&path);
        cmd.args(args).arg("--password-stdin");
        common::run(cmd, Some("correct horse\n")).ok();
    };
    set_password(["user", "add", "alice"]);
    let changed = rusqlite::Connection::open(dir.path().join("gitgate.db"))
        .unwrap()
        .execute(
            "UPDATE users SET password_hash = '$argon2id$v=19$m=1048576,t=1,p=1$\
             BwcHBwcHBwcHBwcHBwcHBw$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' \
             WHERE slug = 'alice'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let mut g = start(dir.path(), &config);
    // The start's checks have run on their threads, and nothing else is under way.
    wait_for_lines(&g, "ready:", 1);
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:correct horse");
    let call = |port: u16| {
        let mut s = connect(port);
        s.write_all(
            format!(
                "GET /rest/access-tokens/1.0/users/alice HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Basic {auth}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        read_until_closed(&mut s).0
    };
    limit_address_space(g.pid(), address_space(g.pid()));
    let out = call(g.port);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}\n{}", g.log_text());
    assert!(out.contains("retry-after: 1\r\n"), "{out}");
    assert!(
        out.contains("gitgate cannot check a password now: it is short of memory"),
        "{out}"
    );
    assert!(g.alive(), "{}", g.log_text());
    let log = wait_for_lines(&g, "a password could not be checked", 1);
    let said = log
        .lines()
        .find(|l| l.contains("a password could not be checked"))
        .unwrap();
    assert!(said.contains("user=\"alice\""), "{said}");
    assert!(
        said.contains("cannot set aside the 1024 MiB of memory") && said.contains("LimitAS"),
        "{said}"
    );
    // Not a wrong password: nothing counted towards the lock.
    assert!(!log.contains("auth.failed"), "{log}");
    // The limit raised (on the live process, as `prlimit` does), and a password of gitgate's own
    // hash: checked, and right.
    set_password(["user", "passwd", "alice"]);
    limit_address_space(g.pid(), address_space(g.pid()) + (256 << 20));
    let out = call(g.port);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{}", g.log_text());
    g.stop();
    let log = g.log_text();
    assert!(!log.contains("memory allocation"), "{log}");
}

/// A push that receive-pack refused because it could not start a process of its own (`error:
/// cannot fork()`: the process limit of gitgate's user, as with `prlimit --nproc`) — its pack,
/// for want of `unpack-objects`, or its ref, for want of the connectivity check's `rev-list` —
/// is said in the log as the shortage of processes it is: not as a refusal git explained to
/// its user (git printed only `unpacker error` or `missing necessary objects`), a full disk,
/// or the repository's rules.
#[test]
fn a_push_refused_for_want_of_processes_is_logged_as_that_shortage() {
    let pkt = |line: &str| format!("{:04x}{line}", line.len() + 4);
    for (unpack, refused, helper) in [
        (
            "unpack unpack-objects abnormal exit\n",
            "ng refs/heads/main unpacker error\n",
            "unpack-objects",
        ),
        (
            "unpack ok\n",
            "ng refs/heads/main missing necessary objects\n",
            "rev-list",
        ),
    ] {
        let report = format!("{}{}0000", pkt(unpack), pkt(refused));
        let dir = tempfile::tempdir().unwrap();
        bare_team_app(dir.path());
        let cgi = dir.path().join("backend.sh");
        std::fs::write(
            &cgi,
            format!(
                "#!/bin/sh\ncat >/dev/null\n\
                 printf 'Content-Type: application/x-git-receive-pack-result\\r\\n\\r\\n'\n\
                 printf '{report}'\n\
                 echo 'error: cannot fork() for {helper}: Resource temporarily unavailable' >&2\n\
                 exit 0\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let config = cgi_config(dir.path(), "").replace("/bin/true", cgi.to_str().unwrap());
        let (mut g, auth) = start_with_token(dir.path(), &config, "PROJECT_WRITE");
        let zero = "0".repeat(40);
        let new = "1".repeat(40);
        let body = format!(
            "{}0000PACK",
            pkt(&format!("{zero} {new} refs/heads/main\0report-status\n"))
        );
        let mut s = connect(g.port);
        s.write_all(
            format!(
                "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Basic {auth}\r\n\
                 Content-Type: application/x-git-receive-pack-request\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        let (out, _) = read_until_closed(&mut s);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains(refused.trim_end()), "{out}");
        g.stop();
        let log = g.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("gitgate::cgi") && l.contains("refused"))
            .unwrap_or_else(|| panic!("no line for the refused push: {log}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(
            line.contains("this server is out of processes")
                && line.contains("not a broken repository"),
            "{line}"
        );
        assert!(!line.contains("git told its user why"), "{line}");
    }
}

/// A log that cannot be written (its disk full, here `/dev/full`) loses its lines and nothing
/// else: the server goes on answering, where tracing's report of the failed write used to
/// panic inside the panic hook and abort the whole process.
#[test]
fn a_log_that_cannot_be_written_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, cgi_config(dir.path(), "")).unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = common::gitgate_command(&path)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(full)
        .spawn()
        .unwrap();
    // It listens on port 0, and its log, which would say the port, is lost: the port is the
    // one its listening socket has. (One found free and named in the config could be taken
    // by another test's server before it listens.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let [port] = common::listening_ports(child.id())[..] {
            break port;
        }
        assert!(Instant::now() < deadline, "the server never listened");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server ended at its start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let ask = |request: &str| -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).ok()?;
        Some(read_until_closed(&mut s).0)
    };
    let healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask(healthz).is_none_or(|out| !out.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "the server never answered");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server ended at its start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Requests that are logged (refusals, here), each a line that cannot be written.
    for _ in 0..5 {
        let out = ask(
            "GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
             Connection: close\r\n\r\n",
        )
        .expect("the server is gone");
        assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    }
    assert!(ask(healthz).is_some_and(|out| out.starts_with("HTTP/1.1 200")));
    assert!(child.try_wait().unwrap().is_none(), "the server ended");
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// An IPv4 client of a dual-stack listener is named by its IPv4 address (not `::ffff:...`) in
/// the log and the audit, as when a trusted proxy names it.
#[test]
fn an_ipv4_client_of_a_dual_stack_listener_is_named_as_ipv4() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        common::skipping("no IPv6 here ([::]:0 cannot be bound): the dual-stack case");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = cgi_config(dir.path(), "").replace("127.0.0.1:0", "[::]:0");
    let g = start(dir.path(), &config);
    let mut s = connect(g.port);
    s.write_all(
        b"GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
          Authorization: Basic YWxpY2U6bm90LWEtdG9rZW4=\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    let log = log_once_it_has(&g, "status=401");
    assert!(log.contains("remote=127.0.0.1 "), "{log}");
    assert!(!log.contains("::ffff:"), "{log}");
}

/// Connections over one address's cap take no place under `max_connections` while they wait
/// for their 503: one address holding its cap and reconnecting cannot fill the server for others.
#[test]
fn connections_over_an_addresss_cap_leave_the_server_to_other_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(
        dir.path(),
        &cgi_config(
            dir.path(),
            "max_connections = 4\nmax_connections_per_address = 2\nheader_read_timeout_seconds = 30",
        ),
    );
    // 127.0.0.1 holds its two places and opens six more, all silent.
    let silent: Vec<TcpStream> = (0..8).map(|_| connect(g.port)).collect();
    common::wait_until_accepted(g.port, 0);
    // Another address gets its answer now, not when the silent ones time out.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // (Within 10 s, not after the silent connections' 30 s.)
    let answer = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let s = socket
            .connect(([127, 0, 0, 1], g.port).into())
            .await
            .unwrap();
        healthz_on(s).await
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(silent);
}

/// `GET /healthz` with `Connection: close` on `s`: the whole answer, which must come within
/// 10 s.
async fn healthz_on(mut s: tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection gitgate has ended with its last answer still in the socket's send queue (a
/// client that reads slowly) lingers until that answer has gone out (`closing`), and holds its
/// places until then: given back at hyper's end, one address could keep any number of such
/// sockets (descriptors, kernel buffers) past its cap and `max_connections`, by reading a
/// little every few seconds and connecting again.
#[test]
fn a_connection_lingering_over_its_last_answer_keeps_its_addresss_place() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(
        dir.path(),
        &cgi_config(dir.path(), "max_connections_per_address = 1"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let healthz = |port: u16| async move {
        healthz_on(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        )
        .await
    };
    runtime.block_on(async {
        let slow = common::left_lingering(g.port).await;
        let second = healthz(g.port).await;
        assert!(
            second.starts_with("HTTP/1.1 503") && second.contains("too many connections"),
            "a second connection was served while the first lingered: {second}"
        );
        // The client goes: the place is given back.
        drop(slow);
        let start = Instant::now();
        loop {
            let third = healthz(g.port).await;
            if third.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the place was not given back: {third}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Over HTTP/2 there is no `Connection: close`: a connection past its address's cap whose client
/// ignores the GOAWAY (it never answers its PING, and keeps sending requests) is still closed
/// after `header_read_timeout_seconds`, so that it cannot hold a place under `max_connections`.
#[test]
fn an_http2_connection_over_its_addresss_cap_is_closed_however_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (_g, _held, mut s) = h2_over_the_cap(dir.path(), 1);
    let mut reader = s.try_clone().unwrap();
    let closed = std::thread::spawn(move || read_until_closed(&mut reader));
    // GET /healthz on streams 1, 3, 5, ... every 100 ms.
    let start = Instant::now();
    let mut stream = 1;
    while !closed.is_finished() && start.elapsed() < Duration::from_secs(6) {
        if s.write_all(&h2_healthz(stream)).is_err() {
            break;
        }
        stream += 2;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, took) = closed.join().unwrap();
    assert!(stream > 5, "only {} requests were sent", stream / 2);
    assert!(
        took < Duration::from_secs(4),
        "a busy HTTP/2 connection over the cap was open for {took:?}"
    );
}

/// An HTTP/2 client over its address's cap gets the 503 for its first request, then a GOAWAY,
/// and the connection ends at once — not after `header_read_timeout_seconds`, with nothing said.
#[test]
fn an_http2_connection_over_its_addresss_cap_is_sent_goaway_after_its_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (_g, _held, mut s) = h2_over_the_cap(dir.path(), 30);
    s.write_all(&h2_healthz(1)).unwrap();
    let start = Instant::now();
    let mut frames = Vec::new();
    let mut head = [0u8; 9];
    while s.read_exact(&mut head).is_ok() {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            break;
        }
        // A graceful GOAWAY waits for the answer to its PING, as a real client sends.
        if head[3] == 6 && head[4] & 1 == 0 {
            let _ = s.write_all(&h2_frame_on(6, 1, 0, &payload));
        }
        frames.push((head[3], payload));
    }
    let took = start.elapsed();
    let kinds: Vec<u8> = frames.iter().map(|(k, _)| *k).collect();
    let answer = kinds.iter().position(|&k| k == 1);
    let goaway = kinds.iter().rposition(|&k| k == 7);
    assert!(
        matches!((answer, goaway), (Some(a), Some(g)) if a < g),
        "no answer followed by GOAWAY: frame types {kinds:?}"
    );
    // The last GOAWAY names stream 1 as the last one served, with no error.
    let (_, last) = &frames[goaway.unwrap()];
    assert_eq!(&last[..8], &[0, 0, 0, 1, 0, 0, 0, 0], "{last:?}");
    let body: Vec<u8> = frames
        .iter()
        .filter(|(k, _)| *k == 0)
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert!(
        String::from_utf8_lossy(&body).contains("too many connections from your address"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        took < Duration::from_secs(5),
        "the connection stayed open for {took:?} after its answer"
    );
}

#[test]
fn oversized_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(
        dir.path(),
        &cgi_config(dir.path(), "max_header_bytes = 8192"),
    );
    let mut s = connect(g.port);
    let big = "a".repeat(16 * 1024);
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "a 16 KiB header was not refused with 431: {out}"
    );
    // ... and the server goes on serving.
    let mut s = connect(g.port);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn an_upstream_that_never_answers_is_504() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_port = silent_upstream();
    let (out, took) = info_refs_via(dir.path(), upstream_port, "idle_timeout_seconds = 1\n");
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(out.contains("no answer"), "{out}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The backend's deadline sits a little under the client connection's idle timeout: with both
/// at the same length the connection's clock, started a moment earlier, closed first, and git got
/// an empty reply instead of the 504, logged as the client leaving.
#[test]
fn a_backend_that_hangs_is_a_504_before_the_connection_idles_out() {
    // The embedded CGI runner, with a program that never answers.
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("hang.cgi");
    std::fs::write(&program, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A repository to ask for (one that is not there is answered without the backend).
    let repo = dir.path().join("repos/team/app.git");
    for sub in ["objects", "refs"] {
        std::fs::create_dir_all(repo.join(sub)).unwrap();
    }
    std::fs::write(repo.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout_seconds = 2\n[store]\npath = \"gitgate.db\"\n\
         [upstream]\ncgi = \"{}\"\nproject_root = \"repos\"\n",
        program.display()
    );
    let (g, auth) = start_with_token(dir.path(), &config, "PROJECT_READ");
    // A 504 at all says the backend's deadline came first: closed by its idle timeout, the
    // connection would have answered nothing (a bound on the time would only add flakiness).
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(out.contains("sent no response in time"), "{out}");
    let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap();
    assert!(!log.contains("client-gone"), "{log}");

    // An HTTP upstream with its own idle timeout at the default (300 s), longer than the
    // connection's.
    let dir = tempfile::tempdir().unwrap();
    let upstream_port = silent_upstream();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout_seconds = 2\n[store]\npath = \"gitgate.db\"\n\
         [upstream]\nurl = \"http://127.0.0.1:{upstream_port}\"\n"
    );
    let (g, auth) = start_with_token(dir.path(), &config, "PROJECT_READ");
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
}

#[test]
fn a_malformed_request_body_is_the_clients_fault_not_a_backend_failure() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream never answers: the body's error decides.
    let upstream_port = silent_upstream();
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "idle_timeout_seconds = 5\n");
    let mut s = connect(g.port);
    s.write_all(
        format!(
            "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {auth}\r\nContent-Type: application/x-git-upload-pack-request\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n0000\r\nzz\r\n0000\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (out, took) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("the request body was malformed"), "{out}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // The request's line is written as it ends, which can be after its client saw the close.
    let log = log_once_it_has(&g, "gitgate::request");
    assert!(!log.contains("backend failed"), "{log}");
    // The log says what broke, and does not blame the git server for it.
    let line = log
        .lines()
        .find(|l| l.contains("the request body broke off"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(!line.contains("upstream git server"), "{line}");
    assert!(line.contains("chunk"), "{line}");
}

#[test]
fn an_upstream_that_cannot_be_connected_to_in_time_is_504() {
    let dir = tempfile::tempdir().unwrap();
    // A listener that never accepts, with its accept queue filled: further SYNs are dropped,
    // so connecting hangs the way it does to a firewalled host.
    let full = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = full.local_addr().unwrap().port();
    let mut held = Vec::new();
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&full.local_addr().unwrap(), Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let (out, took) = info_refs_via(
        dir.path(),
        upstream_port,
        "connect_timeout_seconds = 1\nidle_timeout_seconds = 2\n",
    );
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(out.contains("did not answer in time"), "{out}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    drop(held);
}

/// An upstream's `204` that says a `Content-Length` (which RFC 9110, section 8.6, forbids in
/// one) reaches the client without it, over HTTP/1.1 and HTTP/2 alike: a client over HTTP/2
/// (curl and git through nghttp2) refuses such an answer, and a stream whose answer cannot be
/// read is no `204`.
#[test]
fn a_204_with_a_content_length_reaches_the_client_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in upstream.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let mut s = connect(g.port);
    s.write_all(
        format!(
            "GET /team/app.git/HEAD HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 204"), "{out}\n{}", g.log_text());
    assert!(
        !out.to_ascii_lowercase().contains("content-length"),
        "{out}"
    );
    let h2 = std::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}", "-H"])
        .arg(format!("Authorization: Basic {auth}"))
        .arg(format!("http://127.0.0.1:{}/team/app.git/HEAD", g.port))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&h2.stderr);
    assert_eq!(h2.status.code(), Some(0), "{said}\n{}", g.log_text());
    assert_eq!(String::from_utf8_lossy(&h2.stdout), "2 204", "{said}");
    // The same of the embedded runner's program.
    let dir = tempfile::tempdir().unwrap();
    bare_team_app(dir.path());
    let cgi = dir.path().join("backend.sh");
    std::fs::write(
        &cgi,
        "#!/bin/sh\nprintf 'Status: 204 No Content\\r\\nContent-Length: 5\\r\\n\\r\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = cgi_config(dir.path(), "").replace("/bin/true", cgi.to_str().unwrap());
    let (g, auth) = start_with_token(dir.path(), &config, "PROJECT_READ");
    let h2 = std::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}", "-H"])
        .arg(format!("Authorization: Basic {auth}"))
        .arg(format!("http://127.0.0.1:{}/team/app.git/HEAD", g.port))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&h2.stderr);
    assert_eq!(h2.status.code(), Some(0), "{said}\n{}", g.log_text());
    assert_eq!(String::from_utf8_lossy(&h2.stdout), "2 204", "{said}");
}

#[test]
fn an_upstream_that_resets_mid_stream_is_never_a_complete_answer() {
    let dir = tempfile::tempdir().unwrap();
    // Starts a chunked 200, sends one chunk, then drops the connection without the last chunk.
    let breaking = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = breaking.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in breaking.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
                  Transfer-Encoding: chunked\r\n\r\n400\r\n",
            );
            let _ = s.write_all(&[b'x'; 1024]);
            let _ = s.write_all(b"\r\n");
            // Dropped here: the upstream died mid-answer.
        }
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let (out, _) = info_refs(&g, &auth);
    // The status went out before the failure, but the body must not look complete: no
    // terminating chunk, so git reports an error instead of using a truncated answer.
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains(&"x".repeat(1024)),
        "the chunk that arrived is passed on"
    );
    assert!(
        !out.ends_with("0\r\n\r\n"),
        "a truncated answer ended cleanly: {out}"
    );
    // Over HTTP/2 (h2c on the plain port): the stream is reset, never ended as if whole — curl
    // says so (exit 92, a stream not closed cleanly), where an END_STREAM would be exit 0.
    let h2 = std::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-H"])
        .arg(format!("Authorization: Basic {auth}"))
        .arg(format!(
            "http://127.0.0.1:{}/team/app.git/info/refs?service=git-upload-pack",
            g.port
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&h2.stderr);
    assert_eq!(h2.status.code(), Some(92), "{said}");
}

/// An upstream that sends a chunk of a chunked 200 every 400 ms for 2.4 s, seven in all, then
/// holds the connection open and says nothing; each chunk's number, and when it was written,
/// is sent to the receiver once written.
fn trickling_upstream() -> (u16, mpsc::Receiver<(u8, Instant)>) {
    let trickling = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = trickling.local_addr().unwrap().port();
    let (sent, chunks) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in trickling.incoming().flatten() {
            let mut buf = [0u8; 4096];
            // A connection closed without a request is gitgate's readiness check at its start.
            if s.read(&mut buf).unwrap_or(0) == 0 {
                continue;
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
            );
            for i in 0..7u8 {
                let _ = s.write_all(format!("11\r\nchunk-{i:02}-of-seven\r\n").as_bytes());
                let _ = sent.send((i, Instant::now()));
                std::thread::sleep(Duration::from_millis(400));
            }
            held.push(s);
        }
    });
    (upstream_port, chunks)
}

/// The answer of [`trickling_upstream`] through gitgate with a 1 s upstream idle timeout: all
/// seven chunks, never ended cleanly, cut about 1 s after the last chunk (sent at about 2.4 s).
fn assert_trickled_then_cut(out: &str, took: Duration) {
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    for i in 0..7 {
        assert!(out.contains(&format!("chunk-{i:02}-of-seven")), "{out}");
    }
    assert!(
        !out.ends_with("0\r\n\r\n"),
        "a stalled answer ended cleanly: {out}"
    );
    assert!(
        took >= Duration::from_millis(3200) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

/// Chunks every 400 ms for 2.4 s (longer than the 1 s idle timeout), then silence: the timer
/// set at the first wait fires while chunks still come, and must wait on from the last chunk
/// instead of cutting the answer.
///
/// The 400 ms are this test's own thread's sleeps, 600 ms short of the timeout: a thread held
/// longer (a loaded machine) leaves the upstream silent for the timeout, and gitgate is right to
/// cut the answer there. Such a try shows nothing, and is made again (three times at most); the
/// chunks' real times are measured, and say so.
#[test]
fn an_upstream_that_trickles_is_not_cut_off_but_is_once_it_stops() {
    let mut late = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (upstream_port, chunks) = trickling_upstream();
        let (out, took) = info_refs_via(dir.path(), upstream_port, "idle_timeout_seconds = 1\n");
        // All seven, however the answer went: the upstream writes on after a cut.
        let written: Vec<Instant> = (0..7)
            .map_while(|_| chunks.recv_timeout(Duration::from_secs(10)).ok())
            .map(|(_, at)| at)
            .collect();
        let widest = written
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        // A gap of 0.9 s or more is taken for the timeout: a write's time is taken after it,
        // a moment off when gitgate hears it.
        if written.len() == 7 && widest < Duration::from_millis(900) {
            assert_trickled_then_cut(&out, took);
            return;
        }
        late.push(format!(
            "{} chunks written, {widest:?} apart at most",
            written.len()
        ));
    }
    panic!("the test's upstream did not keep its pace in any try: {late:?}");
}

/// A gitgate held (stopped here; a loaded machine does it too) for longer than the upstream's
/// idle timeout while the upstream goes on sending finds the upstream's bytes waiting in the
/// socket when it runs again: the upstream was not silent. The answer's timer fired before the
/// connection's own task (an info/refs answer's) saw its socket readable, and the answer was
/// cut as "the upstream response stalled for 1s" with three chunks of seven.
#[test]
fn an_upstream_is_not_judged_silent_for_the_time_gitgate_itself_was_held() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, chunks) = trickling_upstream();
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "idle_timeout_seconds = 1\n");
    let pid = g.pid().to_string();
    let holding = std::thread::spawn(move || {
        // From just after the third chunk (0.8 s) for 1.3 s, past the 1 s timeout: the fourth
        // to sixth come meanwhile.
        while chunks.recv().unwrap().0 < 2 {}
        std::thread::sleep(Duration::from_millis(100));
        let kill = |signal: &str| {
            let sent = std::process::Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap();
            assert!(sent.success(), "kill {signal} {pid}");
        };
        kill("-STOP");
        std::thread::sleep(Duration::from_millis(1300));
        kill("-CONT");
    });
    let (out, took) = info_refs(&g, &auth);
    holding.join().unwrap();
    assert_trickled_then_cut(&out, took);
}

#[test]
fn an_upstream_that_stalls_mid_stream_is_cut_off_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Starts a chunked 200, sends one chunk, then holds the connection open and says nothing.
    let stalling = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = stalling.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in stalling.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
                  Transfer-Encoding: chunked\r\n\r\n400\r\n",
            );
            let _ = s.write_all(&[b'y'; 1024]);
            let _ = s.write_all(b"\r\n");
            held.push(s);
        }
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "idle_timeout_seconds = 1\n");
    let (out, took) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(&"y".repeat(1024)), "{out}");
    // The warning names the request and the upstream, as the request's own line and a
    // failed head's do: on a busy server it is found by these, not by its place.
    let log = log_once_it_has(&g, "outcome=stream-error");
    let warning = log
        .lines()
        .find(|l| l.contains("response stream failed"))
        .unwrap_or_else(|| panic!("{log}"));
    for field in [
        "repo=team/app",
        "remote=127.0.0.1",
        "bytes_out=1024",
        &format!(
            "the upstream response stalled for 1s (upstream http://127.0.0.1:{upstream_port})"
        ),
    ] {
        assert!(warning.contains(field), "{field}: {warning}");
    }
    assert!(
        !out.ends_with("0\r\n\r\n"),
        "a stalled answer ended cleanly: {out}"
    );
    // Cut off by the idle timeout (1 s after the last frame), not by the client's patience.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

#[test]
fn a_flood_of_readiness_probes_is_not_a_flood_of_upstream_connections() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    // Timed from before the start: the start's own check (one worker's) runs once the server
    // listens, maybe before this test has seen it listen. Timed from after, as before, that
    // worker's second check could fall inside what was counted as the first second: three
    // checks in "one second" of two workers (the test 500 ms late, its probes over 0.6 s and
    // on both workers, as late closes on a loaded machine spread them).
    let started = Instant::now();
    let (g, _) = start_in_front_of(dir.path(), upstream_port, "");
    for _ in 0..40 {
        let resp = common::http_get(g.port, "/readyz", None);
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    // A success answers for a second, per worker: at most one check per worker and second.
    let seconds = started.elapsed().as_secs() as usize + 1;
    let checks = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        checks >= 1 && checks <= WORKERS * seconds,
        "{checks} upstream connections for 40 probes"
    );
}

#[test]
fn readiness_failures_are_shared_remembered_and_name_no_address() {
    let dir = tempfile::tempdir().unwrap();
    // An upstream that is down: a port nothing listens on (nor can, while the test runs).
    let closed = common::closed_port();
    let upstream_port = closed.port;
    let (g, _) = start_in_front_of(dir.path(), upstream_port, "");
    let started = Instant::now();
    let port = g.port;
    // Two rounds, more than the second an outcome answers for apart: checks in each.
    let round = || -> Vec<common::Response> {
        (0..40)
            .map(|_| std::thread::spawn(move || common::http_get(port, "/readyz", None)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    };
    let mut answers = round();
    std::thread::sleep(Duration::from_millis(1200));
    answers.extend(round());
    for resp in &answers {
        assert_eq!(resp.status, 503, "{resp:?}");
        assert!(
            resp.text().contains("not ready: git backend unreachable"),
            "{resp:?}"
        );
        assert!(
            !resp.text().contains(&upstream_port.to_string()),
            "{resp:?}"
        );
    }
    // The details are in the log once for the outage, however many checks and probes (the
    // start's check warned; the same cause is said again after a minute at the earliest).
    assert!(started.elapsed() < Duration::from_secs(50));
    let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap();
    let warned = log.matches("not ready: git backend unreachable").count();
    assert_eq!(warned, 1, "{warned} warnings for one outage:\n{log}");
    assert!(log.contains(&format!("127.0.0.1:{upstream_port}")), "{log}");
}

#[test]
fn upstream_connections_are_kept_alive_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, heads) = keep_alive_upstream(usize::MAX);
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    for _ in 0..20 {
        let (out, _) = info_refs(&g, &auth);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("ok"), "{out}");
    }
    let heads: Vec<(usize, String)> = heads.try_iter().collect();
    assert_eq!(heads.len(), 20);
    for (_, head) in &heads {
        // Origin form, the upstream's own authority as Host, never the client's credentials.
        assert!(
            head.starts_with("GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\n"),
            "{head}"
        );
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("host: 127.0.0.1:{upstream_port}\r\n")),
            "{head}"
        );
        assert!(!lower.contains("authorization"), "{head}");
    }
    // 20 sequential requests from new client connections need at most one upstream connection
    // per worker thread: every later request reused a pooled one.
    let mut connections: Vec<usize> = heads.iter().map(|(n, _)| *n).collect();
    connections.dedup();
    connections.sort();
    connections.dedup();
    assert!(
        connections.len() <= WORKERS,
        "{} upstream connections for 20 requests",
        connections.len()
    );
}

/// Promise 2 of docs/SECURITY.md, over an HTTP upstream: the upstream is sent the path and
/// query gitgate classified and authorised — rebuilt from the decoded, checked parts under
/// its base path — never the client's spelling of them, so that no upstream decodes or reads
/// them another way (a second decode, a parameter gitgate did not look at).
#[test]
fn the_upstream_is_sent_the_canonical_path_and_query_never_the_clients_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, heads) = keep_alive_upstream(usize::MAX);
    let (g, auth) = start_in_front_of_url(
        dir.path(),
        &format!("http://127.0.0.1:{upstream_port}/base"),
        "",
    );
    for (sent, forwarded) in [
        (
            "/te%61m/app%2Egit/info/refs?x=1&service=git%2Dupload-pack&y",
            "/base/team/app.git/info/refs?service=git-upload-pack",
        ),
        (
            "/team/%61pp/info/refs?service=git-upload-pack",
            "/base/team/app/info/refs?service=git-upload-pack",
        ),
        ("/team/app.git/HEAD?foo=bar", "/base/team/app.git/HEAD"),
    ] {
        let mut s = connect(g.port);
        s.write_all(
            format!(
                "GET {sent} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let (out, _) = read_until_closed(&mut s);
        assert!(out.starts_with("HTTP/1.1 200"), "{sent}: {out}");
        let (_, head) = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            head.starts_with(&format!("GET {forwarded} HTTP/1.1\r\n")),
            "{sent} was forwarded as:\n{head}"
        );
    }
    // A query that names its service twice is no one request: refused, never forwarded.
    let mut s = connect(g.port);
    s.write_all(
        format!(
            "GET /team/app.git/info/refs?service=git-upload-pack&service=git-receive-pack \
             HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_not_forwarded(&heads);
}

#[test]
fn an_upstream_closing_idle_connections_never_costs_a_request() {
    let dir = tempfile::tempdir().unwrap();
    // Every upstream connection carries one answer, then closes without warning: each pooled
    // connection gitgate holds is dead by the time it could be reused.
    let (upstream_port, heads) = keep_alive_upstream(1);
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    for i in 0..30 {
        let (out, _) = info_refs(&g, &auth);
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "request {i}: {out}"
        );
        if i % 3 == 0 {
            // Sometimes give the close time to arrive, sometimes race it.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(heads.try_iter().count(), 30);
}

#[test]
fn an_upstream_redirect_to_its_own_address_outside_its_repositories_is_a_502() {
    // The log names the Location, but not the credentials or the query a login page's may
    // carry, nor anything of one that holds what looks like a token secret.
    let secret = "ggt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (location, logged) in [
        ("/login?next=x", "http://***@127.0.0.1:{port}/login?***"),
        (
            "/login?t={secret}",
            "<a URL holding what looks like a token secret>",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let location = location.replace("{secret}", secret);
        let (upstream_port, _heads) = scripted_upstream(usize::MAX, move |port| {
            format!(
                "HTTP/1.1 302 Found\r\nLocation: http://svc:hunter2@127.0.0.1:{port}{location}\r\n\
                 Content-Length: 0\r\n\r\n"
            )
            .into_bytes()
        });
        let url = format!("http://127.0.0.1:{upstream_port}/git");
        let (g, auth) = start_in_front_of_url(dir.path(), &url, "");
        let (out, _) = info_refs(&g, &auth);
        assert!(out.starts_with("HTTP/1.1 502"), "{out}");
        assert!(out.contains("redirected outside its repositories"), "{out}");
        assert!(!out.contains(&format!(":{upstream_port}")), "{out}");
        let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap();
        let logged = logged.replace("{port}", &upstream_port.to_string());
        assert!(log.contains(&logged), "the log names the Location: {log}");
        for hidden in ["hunter2", "next=x", &secret[4..]] {
            assert!(!log.contains(hidden), "{hidden} in the log: {log}");
        }
    }
}

/// A redirect gitgate cannot check is never passed on: one with bytes that are not ASCII, a
/// second Location, or the upstream's bare address with a fragment could each name the
/// internal address past the rewriting.
#[test]
fn an_upstream_redirect_gitgate_cannot_check_is_a_502() {
    for head in [
        &b"Location: http://127.0.0.1:{port}/git/\xc3\xbc/../team/app.git/info/refs\r\n"[..],
        // The first one alone would be passed on as it is (a path relative to the request's),
        // and with it the second, internal one.
        b"Location: app.git/info/refs\r\nLocation: http://127.0.0.1:{port}/login\r\n",
        b"Location: http://127.0.0.1:{port}#frag\r\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (upstream_port, _heads) = scripted_upstream(usize::MAX, move |port| {
            let head = String::from_utf8_lossy(head).replace("{port}", &port.to_string());
            // (`ü` is valid UTF-8: its two bytes go out as they are.)
            format!("HTTP/1.1 302 Found\r\n{head}Content-Length: 0\r\n\r\n").into_bytes()
        });
        let url = format!("http://127.0.0.1:{upstream_port}/git");
        let (g, auth) = start_in_front_of_url(dir.path(), &url, "");
        let (out, _) = info_refs(&g, &auth);
        let shown = String::from_utf8_lossy(head);
        assert!(out.starts_with("HTTP/1.1 502"), "{shown}: {out}");
        assert!(
            !out.contains(&format!(":{upstream_port}")),
            "{shown}: {out}"
        );
    }
}

/// An upstream's `503` page in maintenance is told to git in words, and its `Retry-After` goes
/// with them, for the retry wrappers that read it; a page without one gets none.
#[test]
fn an_upstream_gateway_page_keeps_its_retry_after() {
    for (status, retry_after, expected) in [
        (
            "503 Service Unavailable",
            "Retry-After: 120\r\n",
            Some("120"),
        ),
        ("503 Service Unavailable", "", None),
        // Only a value that is one, and only on a 503, as RFC 9110 gives it meaning there.
        (
            "503 Service Unavailable",
            "Retry-After: soon; <b>\r\n",
            None,
        ),
        ("502 Bad Gateway", "Retry-After: 120\r\n", None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let page = "<html>down, sorry</html>";
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html\r\n{retry_after}\
             Content-Length: {}\r\n\r\n{page}",
            page.len()
        );
        let (upstream_port, _heads) =
            scripted_upstream(usize::MAX, move |_| answer.clone().into_bytes());
        let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
        let (out, _) = info_refs(&g, &auth);
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
        assert!(out.contains("a page git cannot show"), "{out}");
        let said = out
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .map(str::trim);
        assert_eq!(said, expected, "{out}");
    }
}

/// The upstream's framing is not passed on as it came: a chunked answer's stray
/// Content-Length would promise bytes that never come, and a coding other than chunked would
/// reach git as bytes it cannot tell are coded. Nor are the upstream's cookies.
#[test]
fn an_upstream_answers_framing_and_cookies_stay_behind_gitgate() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, _heads) = scripted_upstream(usize::MAX, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\
          Set-Cookie: sess=upstream-secret\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            .to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("\r\n\r\n2\r\nok\r\n0\r\n"),
        "sent on chunked: {out}"
    );
    assert!(!out.contains("content-length: 100"), "{out}");
    assert!(!out.contains("upstream-secret"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, _heads) = scripted_upstream(usize::MAX, |_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(out.contains("Transfer-Encoding \"gzip, chunked\""), "{out}");

    // `chunked,`: one `chunked` to gitgate's reading, but hyper's client reads such an answer
    // to the close, chunk lines and all, which git would take for the body.
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, _heads) = scripted_upstream(usize::MAX, |_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\nConnection: close\r\n\r\n\
          2\r\nok\r\n0\r\n\r\n"
            .to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(!out.contains("2\r\nok\r\n0\r\n"), "{out}");

    // A Content-Length said twice, or as a list, with one value: hyper's client takes the
    // body by it; passed on as it came, an HTTP/2 client refuses the stream. One value goes on.
    for repeated in [
        "Content-Length: 2\r\nContent-Length: 2",
        "Content-Length: 2, 2",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let answer = format!("HTTP/1.1 200 OK\r\n{repeated}\r\n\r\nok");
        let (upstream_port, _heads) =
            scripted_upstream(usize::MAX, move |_| answer.clone().into_bytes());
        let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
        let target = "/team/app.git/info/refs?service=git-upload-pack";
        let answer = h2_request(g.port, "GET", target, &auth);
        assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));
        let lengths: Vec<_> = answer.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["2"], "{repeated}");
        let (out, _) = info_refs(&g, &auth);
        assert!(
            out.starts_with("HTTP/1.1 200") && out.matches("content-length: 2\r\n").count() == 1,
            "{repeated}: {out}"
        );
    }
}

#[test]
fn an_upstream_redirecting_to_the_address_gitgate_asked_is_a_502_not_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    // http -> https on the same address and path: through gitgate, git would loop.
    let (upstream_port, _heads) = scripted_upstream(usize::MAX, move |port| {
        format!(
            "HTTP/1.1 301 Moved Permanently\r\nLocation: https://127.0.0.1:{port}/team/app.git/\
             info/refs?service=git-upload-pack\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.contains("check the scheme and port of [upstream] url"),
        "{out}"
    );
}

/// A redirect leads through gitgate or not at all: the upstream's own address becomes the same
/// place on gitgate; a URL naming gitgate as the client did (`Host: x`) is passed on; one to
/// another site, or a path that climbs out of the repositories, is a 502 with the `Location`
/// logged — git follows redirects with its token (in the URL, or in `http.extraHeader`).
#[test]
fn upstream_redirects_point_at_gitgate_not_at_the_upstream() {
    for (location, expected) in [
        // The upstream's own address: rewritten to the same place on gitgate.
        (
            "http://127.0.0.1:{port}/team/app.git/info/refs?service=git-upload-pack&x=1",
            Ok("/team/app.git/info/refs?service=git-upload-pack&x=1"),
        ),
        // gitgate itself, as the client named it.
        (
            "http://x/team/app.git/info/refs?service=git-upload-pack",
            Ok("http://x/team/app.git/info/refs?service=git-upload-pack"),
        ),
        // Another site, gitgate's host on another port, a path climbing out.
        (
            "https://git.example.com/team/app.git/",
            Err("git.example.com"),
        ),
        ("http://x:8081/team/app.git/", Err("x:8081")),
        ("/team/%2e%2e/%2e%2e/admin", Err("/admin")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (upstream_port, _heads) = scripted_upstream(usize::MAX, move |port| {
            let location = location.replace("{port}", &port.to_string());
            format!(
                "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        });
        let (mut g, auth) = start_in_front_of(dir.path(), upstream_port, "");
        let (out, _) = info_refs(&g, &auth);
        match expected {
            Ok(expected) => {
                assert!(out.starts_with("HTTP/1.1 301"), "{out}");
                let sent = out
                    .lines()
                    .find_map(|l| l.strip_prefix("location: "))
                    .unwrap_or_else(|| panic!("no Location in {out}"));
                assert_eq!(sent, expected, "{out}");
            }
            Err(logged) => {
                assert!(out.starts_with("HTTP/1.1 502"), "{out}");
                assert!(out.contains("redirected away from gitgate"), "{out}");
                assert!(!out.to_ascii_lowercase().contains("location:"), "{out}");
                g.stop();
                let log = g.log_text();
                assert!(
                    log.lines()
                        .any(|l| l.contains("backend failed") && l.contains(logged)),
                    "{log}"
                );
            }
        }
        assert!(!out.contains(&format!(":{upstream_port}")), "{out}");
    }
}

/// `[upstream] url` that leads back to gitgate (here through a TCP relay, as through a name or
/// another proxy its start-up check cannot see through): the request gitgate sends upstream
/// comes back with gitgate's own secret mark. It is answered `508` and logged as the loop it
/// is — not refused as a failed login of gitgate's own address (no credentials), nor let in
/// hop after hop until a limit (gitgate's upstream credentials a token of its own). A client
/// cannot forge the mark: a request id of gitgate's, which an upstream may echo, is none.
#[test]
fn an_upstream_that_leads_back_to_gitgate_is_told_as_a_loop() {
    use std::sync::atomic::{AtomicU16, Ordering};
    for with_credentials in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let relay = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_port = relay.local_addr().unwrap().port();
        let gitgate_port = std::sync::Arc::new(AtomicU16::new(0));
        let to = gitgate_port.clone();
        std::thread::spawn(move || {
            for inbound in relay.incoming().flatten() {
                let port = to.load(Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        let secret_file = dir.path().join("upstream.secret");
        let credentials = if with_credentials {
            format!(
                "[upstream.credentials]\nscheme = \"bearer\"\nfile = \"{}\"\n",
                secret_file.display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {WORKERS}\n[store]\n\
             path = \"gitgate.db\"\n[upstream]\nurl = \"http://127.0.0.1:{relay_port}\"\n\
             {credentials}"
        );
        std::fs::write(dir.path().join("proxy.toml"), &config).unwrap();
        let token = common::scoped_token(
            &dir.path().join("proxy.toml"),
            "--project",
            "team",
            "ci",
            "PROJECT_READ",
        )
        .secret;
        // gitgate's own credentials upstream: a token it takes itself.
        std::fs::write(&secret_file, &token).unwrap();
        std::fs::set_permissions(
            &secret_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let mut g = start(dir.path(), &config);
        gitgate_port.store(g.port, Ordering::SeqCst);
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{token}"));
        let (out, _) = info_refs(&g, &auth);
        assert!(out.starts_with("HTTP/1.1 508"), "{out}");
        assert!(out.contains("leads back to gitgate itself"), "{out}");
        assert!(!out.contains("upstream.credentials"), "{out}");
        // A forged request id of gitgate's own, with a wrong token: a failed login as any.
        let id = g
            .log_text()
            .lines()
            .find_map(|l| l.split("request_id=").nth(1))
            .map(|rest| rest[..16].to_owned())
            .unwrap();
        let mut s = connect(g.port);
        s.write_all(
            format!(
                "GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
                 X-Request-Id: {id}\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
                base64::engine::general_purpose::STANDARD.encode("ci:ggt_aaaaaaaaaaaa_wrong")
            )
            .as_bytes(),
        )
        .unwrap();
        let (forged, _) = read_until_closed(&mut s);
        assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
        let status = g.stop_within(Duration::from_secs(30));
        assert!(status.success(), "{status}");
        let log = g.log_text();
        let loops = log
            .lines()
            .filter(|l| l.contains("came back to it"))
            .count();
        assert_eq!(loops, 1, "one hop, then the loop is seen: {log}");
        // The forged one is a failed login, audited as any; the loop is none. (Audit events
        // are written in batches: only a stop that lets the writer finish, not a kill, shows
        // them in the log.)
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("gitgate::audit") && l.contains("action=\"auth.failed\""))
            .collect();
        assert_eq!(
            failed.len(),
            1,
            "only the forged one is a failed login, and it is one: {log}"
        );
        assert!(
            failed[0].contains("actor=ci ") && failed[0].contains("not a whole token"),
            "{log}"
        );
        assert!(!log.contains("too many requests in flight"), "{log}");
    }
}

/// Two gitgates that are each other's upstream, each with a token of the other's as its
/// upstream credentials (A → B → A): each forwards the marks of the gitgates before it with its
/// own, so the request that comes back to A carries A's and is answered `508` — not forwarded
/// hop after hop until a limit.
#[test]
fn a_loop_through_two_gitgates_is_told_as_a_loop() {
    // Each names the other's port before either listens: ports found free, and taken again if
    // another test's server took one first (the start that could not listen fails).
    for attempt in 1.. {
        let ports = [common::free_port(), common::free_port()];
        if ports[0] != ports[1] && a_loop_through_two_gitgates_on(ports) {
            return;
        }
        assert!(
            attempt < 5,
            "the two gitgates' ports were taken five times over"
        );
    }
}

/// [`a_loop_through_two_gitgates_is_told_as_a_loop`] on `ports`; `false` when one of them was
/// taken before its gitgate could listen on it.
fn a_loop_through_two_gitgates_on(ports: [u16; 2]) -> bool {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let config = |me: usize| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nworkers = {WORKERS}\n[store]\n\
             path = \"gitgate.db\"\n[upstream]\nurl = \"http://127.0.0.1:{}\"\n\
             [upstream.credentials]\nscheme = \"bearer\"\nfile = \"{}\"\n",
            ports[me],
            ports[1 - me],
            dirs[me].path().join("upstream.secret").display()
        )
    };
    let mut tokens = Vec::new();
    for (me, dir) in dirs.iter().enumerate() {
        std::fs::write(dir.path().join("proxy.toml"), config(me)).unwrap();
        tokens.push(
            common::scoped_token(
                &dir.path().join("proxy.toml"),
                "--project",
                "team",
                "ci",
                "PROJECT_READ",
            )
            .secret,
        );
    }
    // Each one's upstream credentials: a token of the other's.
    for (me, dir) in dirs.iter().enumerate() {
        let secret = dir.path().join("upstream.secret");
        std::fs::write(&secret, &tokens[1 - me]).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let start = |dir: &Path, config: &str| {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = common::gitgate_command(&path);
        cmd.arg("serve");
        Server::try_start(cmd, dir.join("gitgate.log"), "").map_err(|e| {
            assert!(e.contains("Address already in use"), "{e}");
        })
    };
    let (Ok(mut a), Ok(mut b)) = (
        start(dirs[0].path(), &config(0)),
        start(dirs[1].path(), &config(1)),
    ) else {
        return false;
    };
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{}", tokens[0]));
    let (out, _) = info_refs(&a, &auth);
    assert!(out.starts_with("HTTP/1.1 508"), "{out}");
    a.stop();
    b.stop();
    let (a_log, b_log) = (a.log_text(), b.log_text());
    assert_eq!(
        a_log.matches("came back to it").count(),
        1,
        "A sees its own request come back once: {a_log}"
    );
    assert!(!b_log.contains("came back to it"), "{b_log}");
    let requests = |log: &str| {
        log.lines()
            .filter(|l| l.contains("gitgate::request"))
            .count()
    };
    assert_eq!(
        (requests(&a_log), requests(&b_log)),
        (2, 1),
        "{a_log}\n{b_log}"
    );
    true
}

/// An HTTP/1.0 upstream reads no chunked request body: it answers as if the body were empty
/// (a push then reads "Everything up-to-date" and no ref moves). A body of known length reaches
/// it; one of unknown length — git sends a push, and a large fetch's negotiation, chunked — is
/// a 502 saying that gitgate needs an HTTP/1.1 upstream.
#[test]
fn a_chunked_body_to_an_http_1_0_upstream_is_a_502_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, _heads) = scripted_upstream(1, |_| {
        b"HTTP/1.0 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\n\r\n0008NAK\n"
            .to_vec()
    });
    let (mut g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let post = |chunked: bool| {
        let framing = if chunked {
            "Transfer-Encoding: chunked\r\n\r\n4\r\n0000\r\n0\r\n\r\n"
        } else {
            "Content-Length: 4\r\n\r\n0000"
        };
        let mut s = connect(g.port);
        s.write_all(
            format!(
                "POST /team/app.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Basic {auth}\r\n\
                 Content-Type: application/x-git-upload-pack-request\r\n\
                 Connection: close\r\n{framing}"
            )
            .as_bytes(),
        )
        .unwrap();
        read_until_closed(&mut s).0
    };
    let sized = post(false);
    assert!(sized.starts_with("HTTP/1.1 200"), "{sized}");
    assert!(sized.contains("0008NAK"), "{sized}");
    let chunked = post(true);
    assert!(chunked.starts_with("HTTP/1.1 502"), "{chunked}");
    assert!(
        chunked.contains("speaks HTTP/1.0") && chunked.contains("needs an HTTP/1.1 upstream"),
        "{chunked}"
    );
    g.stop();
    assert!(
        g.log_text()
            .lines()
            .any(|l| l.contains("backend failed") && l.contains("speaks HTTP/1.0")),
        "{}",
        g.log_text()
    );
}

/// Behind a front proxy (the client a `trusted_proxies` peer) the scheme and port the client
/// used are the proxy's: a URL naming gitgate as the request's `Host` does is not taken for
/// gitgate's own (a port-less `Host` reads as port 80 where the client may have used 443), and
/// the 502 says why; a path under the git prefix still passes.
#[test]
fn behind_a_front_proxy_only_paths_are_passed_on_as_redirects() {
    for (location, expected) in [
        (
            "http://x/team/app.git/info/refs?service=git-upload-pack",
            None,
        ),
        (
            "/team/app.git/info/refs?service=git-upload-pack",
            Some("/team/app.git/info/refs?service=git-upload-pack"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (upstream_port, _heads) = scripted_upstream(usize::MAX, move |_| {
            format!(
                "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        });
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {WORKERS}\n\
             trusted_proxies = [\"127.0.0.1/32\"]\n[store]\npath = \"gitgate.db\"\n\
             [upstream]\nurl = \"http://127.0.0.1:{upstream_port}\"\n"
        );
        let (g, auth) = start_with_token(dir.path(), &config, "PROJECT_READ");
        let (out, _) = info_refs(&g, &auth);
        match expected {
            Some(path) => {
                assert!(out.starts_with("HTTP/1.1 301"), "{out}");
                assert!(out.contains(&format!("location: {path}\r\n")), "{out}");
            }
            None => {
                assert!(out.starts_with("HTTP/1.1 502"), "{out}");
                assert!(
                    out.contains("behind a front proxy") && out.contains("redirect with paths"),
                    "{out}"
                );
            }
        }
    }
}

#[test]
fn an_upload_goes_on_while_the_client_does_not_read_an_answer_that_started_early() {
    // git http-backend sends its headers before it reads a push; a client still sending does
    // not read. Here the upstream answers at once with 32 MiB (more than the sockets between
    // gitgate and the client hold), then reads the 32 MiB request body, then ends its answer;
    // the client sends its whole body before it reads anything. gitgate must keep taking the
    // body while nobody takes the answer, or both sides wait until the idle timeout.
    const MIB32: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = listener.local_addr().unwrap().port();
    let (received_tx, received) = mpsc::channel();
    std::thread::spawn(move || {
        // The first connection that sends a request (gitgate's readiness check at its start
        // connects and closes without one).
        let mut request = None;
        for s in listener.incoming().flatten() {
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).unwrap_or(0) > 0 {
                request = Some((s, reader));
                break;
            }
        }
        let Some((s, mut reader)) = request else {
            return;
        };
        // A push goes up chunked (see `upstream::http`), any other body with its length.
        let mut length = 0;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().unwrap();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut writer = s;
        let answer = std::thread::spawn(move || {
            // In git's framing, as gitgate follows it: pkt-lines of the largest size, and a flush.
            let mut pkts = Vec::with_capacity(MIB32 + (1 << 16));
            while pkts.len() <= MIB32 {
                pkts.extend_from_slice(b"fff0");
                pkts.resize(pkts.len() + 0xfff0 - 4, b'a');
            }
            pkts.extend_from_slice(b"0000");
            let _ = writer.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-receive-pack-result\r\n\
                     Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                    pkts.len()
                )
                .as_bytes(),
            );
            let _ = writer.write_all(&pkts);
            let _ = writer.write_all(b"\r\n");
            writer
        });
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    break;
                }
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if size == 0 {
                    break;
                }
                let mut chunk = Vec::with_capacity(size);
                let _ = (&mut reader).take(size as u64).read_to_end(&mut chunk);
                let whole = chunk.len() == size;
                body.extend_from_slice(&chunk);
                let mut crlf = String::new();
                if !whole || reader.read_line(&mut crlf).unwrap_or(0) == 0 {
                    break;
                }
            }
        } else {
            let _ = (&mut reader).take(length as u64).read_to_end(&mut body);
        }
        let _ = received_tx.send(body.len());
        if let Ok(mut writer) = answer.join() {
            let _ = writer.write_all(b"0\r\n\r\n");
        }
    });
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout_seconds = 10\n[store]\npath = \"gitgate.db\"\n\
         [upstream]\nurl = \"http://127.0.0.1:{upstream_port}\"\n"
    );
    let (g, auth) = start_with_token(dir.path(), &config, "PROJECT_WRITE");
    let mut s = connect(g.port);
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(
        format!(
            "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {auth}\r\n\
             Content-Type: application/x-git-receive-pack-request\r\n\
             Content-Length: {MIB32}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&vec![b'p'; MIB32])
        .expect("the upload stalled while the answer was not read");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(
        received.recv_timeout(Duration::from_secs(5)),
        Ok(MIB32),
        "the upstream did not get the whole body"
    );
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..64.min(answer.len())]
    );
    assert!(answer.len() > MIB32, "{} bytes of answer", answer.len());
    assert!(
        answer.ends_with(b"0\r\n\r\n"),
        "the answer did not end cleanly"
    );
}

/// A gitgate in front of the upstream on `upstream_port` with `[upstream] idle_timeout_seconds
/// = 1`, and the Basic credentials of a project token that may push to `team`.
fn start_for_pushes(dir: &Path, upstream_port: u16) -> (Server, String) {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout_seconds = 10\n[store]\npath = \"gitgate.db\"\n\
         [upstream]\nurl = \"http://127.0.0.1:{upstream_port}\"\nidle_timeout_seconds = 1\n"
    );
    start_with_token(dir, &config, "PROJECT_WRITE")
}

/// The head of a push of `length` bytes.
fn push_head(auth: &str, length: usize) -> String {
    format!(
        "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n\
         Authorization: Basic {auth}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

/// An upstream that takes one request per connection: after its head, `then` gets the stream
/// and the request's Content-Length.
fn one_request_upstream(then: impl Fn(BufReader<TcpStream>, usize) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let then = std::sync::Arc::new(then);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let then = then.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s);
                if let Some(length) = read_request_head(&mut reader) {
                    then(reader, length);
                }
            });
        }
    });
    port
}

/// Reads a request's head from `reader`: its Content-Length (0 without one), or `None` if the
/// connection ended first.
fn read_request_head(reader: &mut BufReader<TcpStream>) -> Option<usize> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().unwrap();
        }
        if line == "\r\n" {
            return Some(length);
        }
    }
}

#[test]
fn a_push_that_uploads_for_longer_than_the_upstream_idle_timeout_is_not_cut_off() {
    // git http-backend (behind nginx, say) sends its headers as soon as a push arrives, then
    // reads the whole pack before it answers a byte more. An upload that takes longer than
    // `[upstream] idle_timeout` is not an upstream that stalled: the clock must count it.
    let dir = tempfile::tempdir().unwrap();
    let upstream_port = one_request_upstream(|mut reader, length| {
        let mut s = reader.get_ref().try_clone().unwrap();
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-receive-pack-result\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        );
        let mut body = Vec::new();
        let _ = (&mut reader).take(length as u64).read_to_end(&mut body);
        if body.len() == length {
            let _ = s.write_all(b"8\r\nunpacked\r\n0\r\n\r\n");
        }
    });
    let (g, auth) = start_for_pushes(dir.path(), upstream_port);
    let mut s = connect(g.port);
    // 30 pieces, one every 100 ms: three times the upstream's idle timeout.
    s.write_all(push_head(&auth, 30 * 100).as_bytes()).unwrap();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(&[b'p'; 100]).is_err() {
            break;
        }
    }
    let (answer, _) = read_until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("unpacked") && answer.ends_with("0\r\n\r\n"),
        "the answer was cut off while the upload was still moving: {answer:?}"
    );
}

/// A client that stops sending its body while the upstream waits for it is the client's
/// doing: a 408 naming the body, logged as a refusal, not a 504 "upstream sent no answer"
/// counted as a backend failure.
#[test]
fn a_client_whose_upload_stops_gets_a_408_not_a_gateway_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_port = one_request_upstream(|mut reader, _| {
        // Reads whatever comes, answers nothing.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let (g, auth) = start_for_pushes(dir.path(), upstream_port);
    let mut s = connect(g.port);
    s.write_all(push_head(&auth, 10).as_bytes()).unwrap();
    s.write_all(b"00000").unwrap();
    let (answer, _) = read_until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("the request body stopped arriving"),
        "{answer}"
    );
    let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap();
    assert!(!log.contains("backend failed"), "{log}");
}

/// The same after the answer has started (git http-backend sends its headers before it reads
/// a push): the answer is cut off after the upstream's idle timeout, and that is the client
/// idling (`outcome=idle-timeout`), not the backend's body breaking off (`stream-error`,
/// counted as an upstream error).
#[test]
fn a_client_whose_upload_stops_after_the_answer_started_is_the_one_idling() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_port = one_request_upstream(|mut reader, _| {
        let mut s = reader.get_ref().try_clone().unwrap();
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-receive-pack-result\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        );
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let (g, auth) = start_for_pushes(dir.path(), upstream_port);
    let mut s = connect(g.port);
    s.write_all(push_head(&auth, 1000).as_bytes()).unwrap();
    s.write_all(&[b'p'; 100]).unwrap();
    let (answer, _) = read_until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "ended as if complete: {answer:?}"
    );
    // The request's line is written as it ends, which can be after its client saw the close.
    let log = log_once_it_has(&g, "gitgate::request");
    let line = log
        .lines()
        .find(|l| l.contains("gitgate::request") && l.contains("git-receive-pack"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("outcome=idle-timeout"), "{line}");
    assert!(
        log.contains("the client stopped sending its request body"),
        "{log}"
    );
    assert!(!log.contains("response stream failed"), "{log}");
    drop(g);
}

#[test]
fn an_answer_that_ends_before_its_upload_stops_the_upload() {
    // An upstream that refuses a push at once, with a complete answer, and never reads the
    // pack. The rest of the upload is for nobody: gitgate must not go on reading it from the
    // client and sending it upstream (outside the request's log line and in-flight slot).
    let dir = tempfile::tempdir().unwrap();
    let (closed_tx, closed) = mpsc::channel();
    let upstream_port = one_request_upstream(move |mut reader, _| {
        let mut s = reader.get_ref().try_clone().unwrap();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nrefused");
        // Whatever else comes, until gitgate closes the connection.
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        let _ = closed_tx.send(Instant::now());
    });
    let (g, auth) = start_for_pushes(dir.path(), upstream_port);
    let mut s = connect(g.port);
    // Announces 1 MiB; sends a piece every 50 ms for up to 20 s, until gitgate stops taking it.
    s.write_all(push_head(&auth, 1 << 20).as_bytes()).unwrap();
    let mut sender = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..400 {
            if sender.write_all(&[b'p'; 1024]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).ends_with("refused") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let answered = Instant::now();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("refused"),
        "{answer}"
    );
    // The upload may go on for 5 s after the answer (so that a client still sending gets to
    // read it), not for as long as the client keeps sending.
    let at = closed
        .recv_timeout(Duration::from_secs(10))
        .expect("gitgate went on sending the upload long after its answer had ended");
    assert!(at.duration_since(answered) < Duration::from_secs(8));
}

#[test]
fn a_small_push_refused_before_its_body_is_sent_gets_the_refusal_cleanly() {
    // The upstream answers in full as soon as it has the head; the client sends its body only
    // after that answer has ended, and reads late. It must still read the whole refusal and
    // the end of the connection, without an error.
    let dir = tempfile::tempdir().unwrap();
    // After its answer the upstream reads the body by its length and then takes the next
    // request on the same connection, as an HTTP/1.1 server keeping its connections does:
    // gitgate reuses the connection when the whole body had gone up before the answer ended,
    // which a loaded machine makes of the client's pause (its body then comes with its head).
    // Read to its end instead, the body left the connection taken, and the next push on it
    // got gitgate's 504 after the upstream's second of silence.
    let upstream_port = one_request_upstream(move |mut reader, mut length| {
        let mut s = reader.get_ref().try_clone().unwrap();
        loop {
            let answered = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nrefused");
            let mut body = (&mut reader).take(length as u64);
            let read = std::io::copy(&mut body, &mut std::io::sink());
            if answered.is_err() || read.ok() != Some(length as u64) {
                return;
            }
            match read_request_head(&mut reader) {
                Some(next) => length = next,
                None => return,
            }
        }
    });
    let (g, auth) = start_for_pushes(dir.path(), upstream_port);
    for _ in 0..3 {
        let mut s = connect(g.port);
        s.write_all(push_head(&auth, 64 << 10).as_bytes()).unwrap();
        // The answer has come whole (and is left unread) before the body is sent ...
        let start = Instant::now();
        let mut peeked = [0u8; 4096];
        while !s
            .peek(&mut peeked)
            .is_ok_and(|n| peeked[..n].ends_with(b"refused"))
        {
            assert!(start.elapsed() < Duration::from_secs(10), "no answer");
            std::thread::sleep(Duration::from_millis(10));
        }
        s.write_all(&[b'p'; 64 << 10]).unwrap();
        // ... and read late. (No event says that a reset gitgate might send for the body has
        // come: the time is the wait.)
        std::thread::sleep(Duration::from_millis(300));
        let mut answer = Vec::new();
        let read = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "{read:?} after {answer:?}");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("refused"),
            "{answer}"
        );
    }
}

/// What an HTTP/2 client (hyper's, prior knowledge) gets for one request to gitgate.
struct H2Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
    trailers: Option<hyper::HeaderMap>,
}

/// `method target` over HTTP/2 with Basic `auth` and `TE: trailers`.
fn h2_request(port: u16, method: &str, target: &str, auth: &str) -> H2Answer {
    h2_request_with(port, method, target, auth, 0)
}

/// [`h2_request`] with `extra` more header fields (`x-extra-N: v`).
fn h2_request_with(port: u16, method: &str, target: &str, auth: &str, extra: usize) -> H2Answer {
    let extra: Vec<(String, String)> = (0..extra)
        .map(|i| (format!("x-extra-{i}"), "v".to_string()))
        .collect();
    h2_request_headers(port, method, target, auth, &extra)
}

/// [`h2_request`] with the header fields `extra` as well.
fn h2_request_headers(
    port: u16,
    method: &str,
    target: &str,
    auth: &str,
    extra: &[(String, String)],
) -> H2Answer {
    let uri = format!("http://127.0.0.1:{port}{target}");
    h2_request_to(port, method, &uri, auth, extra)
}

/// [`h2_request_headers`] for a request URI as given: one without scheme and host is sent
/// without `:authority`.
fn h2_request_to(
    port: u16,
    method: &str,
    uri: &str,
    auth: &str,
    extra: &[(String, String)],
) -> H2Answer {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut sender = h2_connection(port).await;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Basic {auth}"))
            .header("te", "trailers");
        for (name, value) in extra {
            request = request.header(name, value);
        }
        let request = request
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
        let mut body = answer.into_body();
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the HTTP/2 stream ends cleanly");
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        H2Answer {
            status,
            headers,
            body: data,
            trailers,
        }
    })
}

/// An HTTP/2 connection (prior knowledge, hyper's client) to gitgate on `port`, for requests
/// without a body; driven by a task of its own on the caller's runtime.
async fn h2_connection(
    port: u16,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// A stream read at about `per_second` bytes a second: 16 KiB at a time, then a pause; and not
/// at all once `stalled` is set (a client that stopped reading).
struct SlowReads<IO> {
    inner: IO,
    per_second: u64,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<IO> SlowReads<IO> {
    fn new(inner: IO, per_second: u64) -> Self {
        SlowReads {
            inner,
            per_second,
            pause: None,
            stalled: Default::default(),
        }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SlowReads<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stalled.load(std::sync::atomic::Ordering::Relaxed) {
            // Never read again, never woken: the socket's buffers fill, as a stopped client's.
            return std::task::Poll::Pending;
        }
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(std::future::Future::poll(pause.as_mut(), cx));
            self.pause = None;
        }
        let mut limited = buf.take(16 << 10);
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        // SAFETY: `limited` filled (and so initialised) these `n` bytes of `buf`'s unfilled part.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        if n > 0 {
            let pause = Duration::from_micros(n as u64 * 1_000_000 / self.per_second);
            self.pause = Some(Box::pin(tokio::time::sleep(pause)));
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SlowReads<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// gitgate over TLS in front of an upstream whose every answer is `size` bytes of a pattern
/// (`i % 251`), and the Basic credentials of a project token for `team`.
fn a_big_answer_over_tls(dir: &Path, size: usize) -> (Server, String) {
    a_big_answer_over_tls_with(dir, size, "")
}

/// [`a_big_answer_over_tls`], with `server` (lines) added to its `[server]` table.
fn a_big_answer_over_tls_with(dir: &Path, size: usize, server: &str) -> (Server, String) {
    let (upstream_port, _heads) = scripted_upstream(1, move |_| {
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        answer.extend((0..size).map(|i| (i % 251) as u8));
        answer
    });
    for (from, to) in [("server-a.pem", "cert.pem"), ("server-a.key", "key.pem")] {
        std::fs::copy(common::fixture(&format!("tls/{from}")), dir.join(to)).unwrap();
    }
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {WORKERS}\n{server}[server.tls]\ncert = \"cert.pem\"\n\
         key = \"key.pem\"\n[store]\npath = \"gitgate.db\"\n[upstream]\n\
         url = \"http://127.0.0.1:{upstream_port}\"\n"
    );
    start_with_token(dir, &config, "PROJECT_READ")
}

/// An info/refs GET over HTTP/2 and TLS to `port`, its answer read from the socket at about
/// 2 MB/s, and not at all once `stalled` is set: what came, and how the stream broke if it did.
fn a_slow_http2_get(
    port: u16,
    auth: String,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<u8>, Option<String>)> {
    an_http2_get_read_at(port, auth, stalled, 2 << 20)
}

/// [`a_slow_http2_get`], read at `per_second` bytes a second.
fn an_http2_get_read_at(
    port: u16,
    auth: String,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    per_second: u64,
) -> std::thread::JoinHandle<(Vec<u8>, Option<String>)> {
    use http_body_util::BodyExt;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut roots = rustls::RootCertStore::empty();
            let ca = std::fs::read(common::fixture("tls/ca.pem")).unwrap();
            use rustls::pki_types::pem::PemObject;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
                roots.add(cert.unwrap()).unwrap();
            }
            let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            tls.alpn_protocols = vec![b"h2".to_vec()];
            // Read slowly from the socket itself, as curl --limit-rate does (and a client on a
            // slow network): the answer waits in gitgate's socket and h2's buffers.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(64 << 10).unwrap();
            let tcp = socket
                .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .unwrap();
            let mut tcp = SlowReads::new(tcp, per_second);
            tcp.stalled = stalled;
            let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            // A window as wide as curl's (git's HTTP/2): the server may send it all ahead.
            let (mut sender, connection) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .initial_stream_window_size(32 << 20)
                    .initial_connection_window_size(64 << 20)
                    .handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = hyper::Request::builder()
                .uri(format!(
                    "https://localhost:{port}/team/app.git/info/refs?service=git-upload-pack"
                ))
                .header("authorization", format!("Basic {auth}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let answer = sender.send_request(request).await.unwrap();
            assert_eq!(answer.status(), 200);
            let mut body = answer.into_body();
            let mut received = Vec::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            received.extend_from_slice(&data);
                        }
                    }
                    Err(e) => return (received, Some(e.to_string())),
                }
            }
            (received, None)
        })
    })
}

/// An HTTP/2 answer still on its way to a client that reads slowly when a stop begins reaches
/// it whole. gitgate had taken the whole body from the upstream (the request logged
/// `complete`) while megabytes waited in h2's buffers and the socket for the client's window:
/// the stop closed the connection a second later — with the client's window updates unread,
/// a reset that threw away what the socket still held — and the client lost the end of it.
#[test]
fn an_http2_answer_under_way_at_a_stop_reaches_a_slow_client_whole() {
    const SIZE: usize = 12 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (mut g, auth) = a_big_answer_over_tls(dir.path(), SIZE);
    let reader = a_slow_http2_get(g.port, auth, Default::default());
    // The stop comes once gitgate has taken the whole answer from the upstream (its request
    // logged `complete`), megabytes of it still to reach the client.
    let log = log_once_it_has(&g, "outcome=complete");
    assert!(log.contains("outcome=complete"), "{log}");
    g.signal("TERM");
    let (received, broke) = reader.join().unwrap();
    assert_eq!(broke, None, "after {} of {SIZE} bytes", received.len());
    assert_eq!(received.len(), SIZE);
    assert!(received
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
    let status = g.stop_within(Duration::from_secs(20));
    assert!(status.success(), "{status}");
}

/// An HTTP/2 answer over TLS to a client that reads slowly but steadily (512 KiB a second,
/// from a 64 KiB receive buffer) is not cut off by the stalled-stream watch
/// (`crate::stall`), though hyper asks its body for a frame only as often as the socket,
/// blocked, takes more (the kernel wakes a blocked writer once a third of its send buffer has
/// drained; h2 and rustls hold hundreds of KiB more): seconds apart, past a 1 s idle timeout.
#[test]
fn an_http2_answer_to_a_client_reading_slowly_but_steadily_is_not_cut_off() {
    const SIZE: usize = 8 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (_g, auth) = a_big_answer_over_tls_with(dir.path(), SIZE, "idle_timeout_seconds = 1\n");
    let reader = an_http2_get_read_at(_g.port, auth, Default::default(), 512 << 10);
    let (received, broke) = reader.join().unwrap();
    let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap_or_default();
    assert_eq!(
        broke,
        None,
        "after {} of {SIZE} bytes:\n{log}",
        received.len()
    );
    assert_eq!(received.len(), SIZE);
}

/// ... while one that stops reading mid-answer, its socket full, is still closed for idling
/// within a few seconds of a 1 s idle timeout, and its backend let go.
#[test]
fn an_http2_answer_to_a_client_that_stops_reading_is_still_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (g, auth) = a_big_answer_over_tls_with(dir.path(), 8 << 20, "idle_timeout_seconds = 1\n");
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _reader = an_http2_get_read_at(g.port, auth, stalled.clone(), 512 << 10);
    std::thread::sleep(Duration::from_secs(2));
    stalled.store(true, std::sync::atomic::Ordering::Relaxed);
    let stopped = Instant::now();
    let log = log_once_it_has(&g, "outcome=");
    let line = log
        .lines()
        .find(|l| l.contains("gitgate::request") && l.contains("outcome="))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("outcome=idle-timeout"), "{line}");
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );
}

/// ... but one whose client stopped reading once gitgate had sent its answer whole does not
/// hold the stop for the grace period: it is given up once nothing has moved for a few seconds
/// (`closing::NO_PROGRESS`). (One stopped mid-answer is an answer in flight, which the stop
/// waits for.)
#[test]
fn an_http2_client_that_stopped_reading_does_not_hold_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    // Small enough for gitgate to send it whole at once, into h2's and the socket's buffers.
    let (mut g, auth) = a_big_answer_over_tls(dir.path(), 2 << 20);
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _reader = a_slow_http2_get(g.port, auth, stalled.clone());
    let log = log_once_it_has(&g, "outcome=complete");
    assert!(log.contains("outcome=complete"), "{log}");
    stalled.store(true, std::sync::atomic::Ordering::Relaxed);
    let stopping = Instant::now();
    // The default grace period is 30 s: this gives up 5 s after nothing moved, and the socket
    // 5 s after that.
    let status = g.stop_within(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(16),
        "{:?}",
        stopping.elapsed()
    );
}

/// A head over `[server] max_header_bytes` gets `431` over HTTPS as over plain HTTP. hyper
/// checks its limit only while a head is incomplete, and over TLS one read brings in all the
/// plaintext at hand: heads of 66,000 to about 110,000 bytes (default limit 65,536) were
/// answered over HTTPS, while plain HTTP refused them. A head within the limit is answered.
#[test]
fn a_head_over_max_header_bytes_gets_431_over_https_too() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [("server-a.pem", "cert.pem"), ("server-a.key", "key.pem")] {
        std::fs::copy(common::fixture(&format!("tls/{from}")), dir.path().join(to)).unwrap();
    }
    let mut config = cgi_config(dir.path(), "");
    config.push_str("[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
    let g = start(dir.path(), &config);
    let status = |field_bytes: usize| {
        // From a file: a header this long is past what a command line takes.
        let header = dir.path().join("header");
        std::fs::write(&header, format!("X-Big: {}\n", "a".repeat(field_bytes))).unwrap();
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--cacert")
            .arg(common::fixture("tls/ca.pem"))
            .arg("-H")
            .arg(format!("@{}", header.display()))
            .arg(format!("https://localhost:{}/healthz", g.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for over in [66_000, 80_000, 100_000, 120_000] {
        assert_eq!(status(over), "431", "{over}");
    }
    assert_eq!(status(60_000), "200");
    let log = g.log_text();
    assert!(
        log.lines().any(|l| l.contains("gitgate::request")
            && l.contains("status=431")
            && l.contains("outcome=head-too-large")),
        "{log}"
    );
}

/// Over 100 header fields get 431 over HTTP/2 as over HTTP/1.1 (whose parser counts them);
/// 100 are fine, and HTTP/2's cookie crumbs are one field.
#[test]
fn too_many_header_fields_get_431_over_http2_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cgi_config(dir.path(), "");
    config.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let g = start(dir.path(), &config);
    let unparsable = || {
        let text = String::from_utf8(common::http_get(metrics_port_of(&g), "/metrics", None).body)
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("gitgate_unparsable_requests_total "))
            .unwrap_or_else(|| panic!("{text}"))
            .parse::<u64>()
            .unwrap()
    };
    // authorization and te, and the rest.
    let answer = h2_request_with(g.port, "GET", "/healthz", "eDp5", 98);
    assert_eq!(answer.status, 200);
    let answer = h2_request_with(g.port, "GET", "/healthz", "eDp5", 99);
    assert_eq!(answer.status, 431);
    assert!(String::from_utf8_lossy(&answer.body).contains("too many header fields: at most 100"));
    let log = g.log_text();
    assert!(
        log.lines().any(|l| l.contains("gitgate::request")
            && l.contains("status=431")
            && l.contains("outcome=too-many-header-fields")),
        "{log}"
    );
    // Counted as HTTP/1's parser's 431s are.
    assert_eq!(unparsable(), 1);
    let mut s = connect(g.port);
    let mut req = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..100 {
        req.push_str(&format!("x-extra-{i}: v\r\n"));
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let (out, _) = read_until_closed(&mut s);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // An HTTP/2 client may send its cookie one field per cookie (RFC 9113 §8.2.3): as over
    // HTTP/1.1, where it is one field, they count as one.
    let mut crumbs: Vec<(String, String)> = (0..120)
        .map(|i| ("cookie".to_string(), format!("c{i}=v")))
        .collect();
    let answer = h2_request_headers(g.port, "GET", "/healthz", "eDp5", &crumbs);
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    crumbs.extend((0..98).map(|i| (format!("x-extra-{i}"), "v".to_string())));
    let answer = h2_request_headers(g.port, "GET", "/healthz", "eDp5", &crumbs);
    assert_eq!(answer.status, 431);
}

/// Over HTTP/2 the host is the request's `:authority`: a `Host` header naming another one is
/// refused, never forwarded (gitgate would pass it on as the forwarded host), and one that
/// agrees is fine; so is `Host` alone, but not neither.
#[test]
fn an_http2_host_header_that_disagrees_with_the_authority_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, heads) = scripted_upstream(usize::MAX, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let target = "/team/app.git/info/refs?service=git-upload-pack";
    let host = |h: &str| vec![("host".to_string(), h.to_string())];
    let answer = h2_request_headers(g.port, "GET", target, &auth, &host("intranet.example"));
    assert_eq!(answer.status, 400);
    let body = String::from_utf8_lossy(&answer.body);
    assert!(
        body.contains("another host than the request's :authority"),
        "{body}"
    );
    assert!(
        heads.try_recv().is_err(),
        "the refused request was forwarded"
    );
    let same = format!("127.0.0.1:{}", g.port);
    let answer = h2_request_headers(g.port, "GET", target, &auth, &host(&same));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"ok");
    assert!(heads.recv().unwrap().1.starts_with("GET "));
    // Neither `:authority` nor `Host`: no host named at all (RFC 9113 §8.3.1), as an HTTP/1.1
    // request without `Host`; with `Host` alone, the host is that.
    let answer = h2_request_to(g.port, "GET", target, &auth, &[]);
    assert_eq!(answer.status, 400);
    let body = String::from_utf8_lossy(&answer.body);
    assert!(
        body.contains("needs an :authority or a Host header"),
        "{body}"
    );
    assert!(
        heads.try_recv().is_err(),
        "the refused request was forwarded"
    );
    let answer = h2_request_to(g.port, "GET", target, &auth, &host(&same));
    assert_eq!(answer.status, 200);
    assert!(heads.recv().unwrap().1.starts_with("GET "));
}

#[test]
fn an_upstreams_trailers_are_not_passed_on() {
    // Trailers are header fields the head's filter never sees: a `Set-Cookie`, an internal
    // address. git sends none; over HTTP/2 (where a client may take them) they are dropped and
    // the body ends cleanly.
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, _heads) = scripted_upstream(usize::MAX, |_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Secret, Set-Cookie\r\n\r\n\
          2\r\nok\r\n0\r\nX-Secret: internal\r\nSet-Cookie: a=b\r\n\r\n"
            .to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let answer = h2_request(
        g.port,
        "GET",
        "/team/app.git/info/refs?service=git-upload-pack",
        &auth,
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"ok");
    assert!(answer.trailers.is_none(), "{:?}", answer.trailers);
    assert!(
        !answer.headers.contains_key("trailer"),
        "{:?}",
        answer.headers
    );
}

#[test]
fn a_head_over_http2_through_an_http_upstream_states_no_false_length() {
    // The upstream's answer to HEAD has no body, whatever its GET would send: gitgate must not
    // turn that into `content-length: 0`, but pass on the length the upstream gives, if any.
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, heads) = scripted_upstream(1, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
          Transfer-Encoding: chunked\r\n\r\n"
            .to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let target = "/team/app.git/info/refs?service=git-upload-pack";
    let answer = h2_request(g.port, "HEAD", target, &auth);
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_empty());
    assert_eq!(
        answer.headers.get("content-length"),
        None,
        "{:?}",
        answer.headers
    );
    assert!(heads.recv().unwrap().1.starts_with("HEAD "));
    // gitgate's own answers keep their length: a HEAD without credentials.
    let answer = h2_request(g.port, "HEAD", target, "bm9ib2R5Ong=");
    assert_eq!(answer.status, 401);
    let length: usize = answer.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 0, "{:?}", answer.headers);
}

#[test]
fn an_upstreams_101_is_a_bad_gateway_not_a_switch() {
    // gitgate never asks for an upgrade: a `101` from the upstream would leave the client's
    // connection switched to nothing (HTTP/1.1) or break its stream (HTTP/2).
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, _heads) = scripted_upstream(1, |_| {
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n".to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.contains("answered 101 Switching Protocols as its final answer"),
        "{out}"
    );
}

#[test]
fn an_upstream_answer_with_trailers_leaves_its_connection_reusable() {
    // Trailers end a chunked answer; hyper's body does not count them as its end, so gitgate
    // must, or the connection is closed instead of pooled (and the answer logged as cut off).
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, heads) = scripted_upstream(usize::MAX, |_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n"
            .to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    for _ in 0..10 {
        let (out, _) = info_refs(&g, &auth);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("\r\n\r\n2\r\nok\r\n"), "{out:?}");
    }
    let mut connections: Vec<usize> = heads.try_iter().map(|(n, _)| n).collect();
    assert_eq!(connections.len(), 10);
    connections.sort();
    connections.dedup();
    assert!(
        connections.len() <= WORKERS,
        "{} upstream connections for 10 requests",
        connections.len()
    );
    let log = std::fs::read_to_string(dir.path().join("gitgate.log")).unwrap();
    assert!(!log.contains("client-gone"), "{log}");
}

/// gitgate answers in its own HTTP version: an upstream's `HTTP/1.0` answer goes on to an
/// HTTP/1.1 client as HTTP/1.1, with its length, and the client's connection stays open.
#[test]
fn an_http_1_0_upstream_answer_goes_on_as_http_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_port, _heads) = scripted_upstream(1, |_| {
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let mut s = connect(g.port);
    let ask = format!(
        "GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
         Authorization: Basic {auth}\r\n\r\n"
    );
    // Two rounds on one connection: the first answer left it open.
    for round in 0..2 {
        s.write_all(ask.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("round {round}: {e}: {}", String::from_utf8_lossy(&got)),
            }
        }
        let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(got.starts_with("http/1.1 200"), "round {round}: {got}");
        assert!(
            got.contains("content-length: 2\r\n"),
            "round {round}: {got}"
        );
        assert!(got.ends_with("\r\n\r\nok"), "round {round}: {got}");
    }
}

/// An https upstream that accepts the connection and never finishes the TLS handshake (a
/// plain-HTTP port, a stuck TLS terminator) is a 504 that says so, not "connect timed out".
#[test]
fn an_https_upstream_that_never_finishes_its_handshake_is_said_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_port = silent_upstream();
    let (g, auth) = start_in_front_of_url(
        dir.path(),
        &format!("https://127.0.0.1:{upstream_port}"),
        "connect_timeout_seconds = 1\n",
    );
    let (out, _) = info_refs(&g, &auth);
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(
        out.contains("the connection was accepted, but the TLS handshake timed out"),
        "{out}"
    );
    let ready = common::http_get(g.port, "/readyz", None);
    assert_eq!(ready.status, 503, "{}", ready.text());
    let log = g.log_text();
    assert!(
        log.contains("did not finish the TLS handshake in time"),
        "{log}"
    );
}

/// An upstream that reads each request's head, sends it to the receiver, and never answers.
fn holding_upstream() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (heads, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let heads = heads.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s);
                let mut head = String::new();
                while !head.ends_with("\r\n\r\n") {
                    match reader.read_line(&mut head) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                let _ = heads.send(head);
                // Held open, unanswered, until gitgate lets go.
                let _ = reader.read_to_end(&mut Vec::new());
            });
        }
    });
    (port, rx)
}

/// A stop while the upstream has not begun to answer: a little before the grace period ends,
/// git is told why in words, instead of the connection being cut under it (which git reports
/// as `fatal: Authentication failed`).
#[test]
fn a_stop_answers_a_request_whose_upstream_has_not_answered_before_the_cut() {
    let sb = common::Sandbox::new();
    let (upstream_port, heads) = holding_upstream();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {WORKERS}\nshutdown_grace_seconds = 3\n\
         [store]\npath = \"gitgate.db\"\n\
         [upstream]\nurl = \"http://127.0.0.1:{upstream_port}\"\n"
    );
    std::fs::write(sb.root().join("proxy.toml"), &config).unwrap();
    let secret = common::scoped_token(
        &sb.root().join("proxy.toml"),
        "--project",
        "team",
        "ci",
        "PROJECT_READ",
    )
    .secret;
    let mut g = start(sb.root(), &config);
    let url = g.url_with("ci", &secret, "team/app");
    let ls_remote = sb.git_command(sb.root(), &["ls-remote", &url]);
    let ls_remote = std::thread::spawn(move || common::run(ls_remote, None));
    // The advertisement has reached the upstream, which holds it.
    loop {
        let Ok(head) = heads.recv_timeout(Duration::from_secs(10)) else {
            panic!(
                "nothing reached the upstream: {}",
                ls_remote.join().unwrap()
            );
        };
        if head.contains("/info/refs") {
            break;
        }
    }
    g.signal("TERM");
    let run = ls_remote.join().unwrap();
    run.fails_with(
        "remote: the server is stopping, and the git server had not answered before it did; \
         try again in a moment",
    );
    g.stop_within(Duration::from_secs(10));
    let log = g.log_text();
    assert!(
        log.contains("answered 503 at the stop: the backend had not begun its answer"),
        "{log}"
    );
    assert!(log.contains("status=503"), "{log}");
    assert!(!log.contains(&secret), "{log}");
}

/// A push whose pack is still going up to the embedded CGI runner when a stop's answers are
/// due: its answer, held until the body is fed, has not gone out, so it is answered `503` with
/// the reason — not cut off, which git reports with advice to raise `http.postBuffer` — and
/// nothing of it is applied (the program's input is closed).
#[test]
fn a_stop_answers_a_push_still_uploading_to_the_cgi_runner() {
    let dir = tempfile::tempdir().unwrap();
    let repo = bare_team_app(dir.path());
    let config = cgi_config(dir.path(), "shutdown_grace_seconds = 2").replace(
        "\"/bin/true\"",
        &format!("\"{}\"", common::git_http_backend().display()),
    );
    let (mut g, auth) = start_with_token(dir.path(), &config, "PROJECT_WRITE");
    let mut s = connect(g.port);
    // A push's POST of a megabyte, of which only the start of its first line has come.
    write!(
        s,
        "POST /team/app.git/git-receive-pack HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\nContent-Length: 1000000\r\n\r\n\
         0094"
    )
    .unwrap();
    // git http-backend has started, sent its headers (held by gitgate) and waits for the rest
    // (it, or the receive-pack it runs, reads its input).
    common::wait_until_a_descendant_reads_stdin(g.pid());
    let stopped = Instant::now();
    g.signal("TERM");
    let (answer, _) = read_until_closed(&mut s);
    let answered = stopped.elapsed();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 5\r\n"), "{answer}");
    assert!(
        answer.contains(
            "the server is stopping, and the git server had not answered before it did; try \
             again in a moment"
        ),
        "{answer}"
    );
    g.stop_within(Duration::from_secs(10));
    let log = g.log_text();
    assert!(log.contains("answered 503 at the stop"), "{log}");
    // A second before the cut, not at it: a second after the stop began, by gitgate's own
    // clock (its log's times: from the test's side the start of `kill` and this thread's
    // wake-ups would count too, and a loaded machine stretches those past the second between
    // the answer and the cut), and not before it (the upload had the grace period's first
    // second to finish), which the test's clock, started before the signal, can tell.
    let by_gitgate = common::time_of(&log, "answered 503 at the stop")
        .duration_since(common::time_of(&log, "shutting down on SIGTERM"))
        .unwrap();
    assert!(
        by_gitgate < Duration::from_millis(1900) && answered >= Duration::from_millis(950),
        "answered {by_gitgate:?} into the stop by gitgate's clock, {answered:?} by the test's"
    );
    assert!(log.contains("status=503"), "{log}");
    let left: Vec<_> = std::fs::read_dir(repo.join("objects"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("incoming") || name.starts_with("tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The same behind the embedded CGI runner, whose program has not sent its headers, at a
/// second stop signal: answered at once (the grace period is 30 s), the program ended.
#[test]
fn a_second_stop_signal_answers_a_request_whose_cgi_program_has_sent_nothing() {
    let sb = common::Sandbox::with(common::Setup {
        server_extra: "shutdown_grace_seconds = 30".into(),
        ..common::Setup::default()
    });
    sb.create_repo("team/app");
    let began = sb.root().join("began");
    std::fs::write(
        sb.cgi_script(),
        format!("#!/bin/sh\necho $$ > {}\nexec sleep 60\n", began.display()),
    )
    .unwrap();
    let secret = sb
        .scoped_token("--project", "team", "ci", "PROJECT_READ")
        .secret;
    let mut g = sb.serve();
    let url = g.url_with("ci", &secret, "team/app");
    let ls_remote = sb.git_command(sb.root(), &["ls-remote", &url]);
    let ls_remote = std::thread::spawn(move || common::run(ls_remote, None));
    let asked = Instant::now();
    let pid = loop {
        if let Ok(pid) = std::fs::read_to_string(&began) {
            if let Ok(pid) = pid.trim().parse::<u32>() {
                break pid;
            }
        }
        if asked.elapsed() > Duration::from_secs(10) {
            panic!("no backend began: {}", ls_remote.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped = Instant::now();
    g.signal("TERM");
    g.second_stop_signal();
    let run = ls_remote.join().unwrap();
    run.fails_with(
        "remote: the server is stopping, and the git server had not answered before it did; \
         try again in a moment",
    );
    // Not held until the 30 s grace period's end.
    assert!(stopped.elapsed() < Duration::from_secs(20), "{run}");
    g.stop_within(Duration::from_secs(10));
    assert!(!common::group_alive(pid), "the backend was left running");
    let log = g.log_text();
    assert!(log.contains("status=503"), "{log}");
    assert!(!log.contains(&secret), "{log}");
}

/// The rapid-reset attack (CVE-2023-44487): streams opened and reset at once, without
/// credentials, faster than they are answered. h2 closes such a connection with a GOAWAY
/// `ENHANCE_YOUR_CALM` and logs a warning without the client's address for each — lines any
/// client can have written many times a second. gitgate says it instead, with the address,
/// once a minute with a count; h2's own line is off.
#[test]
fn a_rapid_reset_is_logged_once_a_minute_with_its_address_not_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = start(dir.path(), &cgi_config(dir.path(), ""));
    for _ in 0..3 {
        let mut s = connect(g.port);
        let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        sent.extend(h2_frame(4, &[]));
        for i in 0..40u32 {
            let stream = 2 * i + 1;
            sent.extend(h2_healthz(stream));
            // RST_STREAM, CANCEL.
            sent.extend(h2_frame_on(3, 0, stream, &8u32.to_be_bytes()));
        }
        // The server may close before it has read it all.
        let _ = s.write_all(&sent);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        // A GOAWAY (type 7) whose error code is ENHANCE_YOUR_CALM (11).
        let mut at = 0;
        let mut calm = false;
        while at + 9 <= got.len() {
            let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
            if got[at + 3] == 7 && at + 9 + 8 <= got.len() {
                let code = &got[at + 9 + 4..at + 9 + 8];
                calm |= code == 11u32.to_be_bytes();
            }
            at += 9 + len;
        }
        assert!(calm, "no GOAWAY ENHANCE_YOUR_CALM in {got:?}");
    }
    // The server still answers.
    let answer = common::raw_http(
        g.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, 200);
    g.stop();
    let log = g.log_text();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("closed an HTTP/2 connection for excessive load"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(
        said[0].contains("WARN") && said[0].contains("remote=127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains("recv_reset"), "{log}");
}

/// A file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) that the log reaches costs the log
/// its lines, not the server its life: without SIGXFSZ ignored, the kernel killed gitgate at
/// the limit, mid-line.
#[test]
fn a_log_past_the_file_size_limit_loses_lines_but_the_server_goes_on() {
    use std::os::unix::process::CommandExt;
    let sb = common::Sandbox::new();
    // The store made first, as its schema and its shared-memory index (32 KiB) take more.
    sb.add_user("alice", "pw");
    let mut cmd = sb.gitgate_command();
    cmd.arg("serve");
    const LIMIT: u64 = 64 * 1024;
    // SAFETY: setrlimit is async-signal-safe, and nothing else runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Server::start(cmd, sb.server_log(), "");
    let port = server.port;
    let ask = || {
        common::try_raw_http(
            port,
            b"GET /team/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
              Connection: close\r\n\r\n",
        )
    };
    // Each answer is a request line of some 250 bytes: past the limit well before the end.
    for i in 0..400 {
        let resp = ask().unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, 401, "request {i}");
    }
    let logged = std::fs::metadata(sb.server_log()).unwrap().len();
    assert!(logged <= LIMIT, "{logged}");
    assert!(
        logged > LIMIT - 512,
        "the log never reached the limit: {logged}"
    );
    assert!(server.alive(), "gitgate died at the file-size limit");
    assert_eq!(ask().unwrap().status, 401);
    server.stop();
}

/// An HTTP/2 client that resets its stream right after the last flush-pkt of a whole git
/// answer — before the answer's own end, which comes only once the backend has ended its body
/// (Go's net/http does so when a client closes a body it has read through, as go-git does) —
/// had it all: its request line says `outcome=complete`, as an HTTP/1 client's that hangs up so
/// does. One that resets before the answer is whole is still `client-gone`. The upstream sends
/// the answer (of team/app whole, of team/early its service line alone) and holds its last
/// chunk until the test is done.
#[test]
fn an_http2_client_that_resets_after_the_last_flush_of_a_whole_answer_had_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let holding = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = holding.local_addr().unwrap().port();
    let (released_tx, released) = mpsc::channel::<()>();
    let released = std::sync::Arc::new(std::sync::Mutex::new(released));
    std::thread::spawn(move || {
        for mut s in holding.incoming().flatten() {
            let released = released.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // A connection closed without a request is gitgate's readiness check.
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    return;
                }
                let early = String::from_utf8_lossy(&buf[..n]).contains("/team/early.git/");
                let mut answer = String::from("001e# service=git-upload-pack\n0000");
                if !early {
                    answer.push_str(
                        "003de69de29bb2d1d6434b8b29ae775ad8c2e48c5391 refs/heads/main\n0000",
                    );
                }
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\n\
                         Content-Type: application/x-git-upload-pack-advertisement\r\n\
                         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{answer}\r\n",
                        answer.len()
                    )
                    .as_bytes(),
                );
                // The answer's end waits for the test (the client gone by then).
                let _ = released
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
                let _ = s.write_all(b"0\r\n\r\n");
            });
        }
    });
    let (g, auth) = start_in_front_of(dir.path(), upstream_port, "");
    let outcome_of = |repo: &str, through: &[u8]| -> String {
        let _open = reset_after(g.port, &auth, repo, through);
        let log = log_once_it_has(&g, &format!("repo={repo} "));
        let line = log
            .lines()
            .find(|l| l.contains("gitgate::request") && l.contains(&format!("repo={repo} ")))
            .unwrap_or_else(|| panic!("{log}"))
            .to_string();
        assert!(line.contains("status=200"), "{line}");
        line
    };
    let whole = outcome_of("team/app", b"refs/heads/main\n0000");
    let early = outcome_of("team/early", b"git-upload-pack\n0000");
    drop(released_tx);
    assert!(whole.contains("outcome=complete"), "{whole}");
    assert!(early.contains("outcome=client-gone"), "{early}");
}

/// An info/refs GET of `repo` over HTTP/2 (h2c) to `port`, its answer read until it ends with
/// `through`, then its stream let go of (hyper sends RST_STREAM). Returns once it has; the
/// connection stays open until the sender returned is dropped, so that the stream ends by its
/// reset, not by the connection's close.
fn reset_after(
    port: u16,
    auth: &str,
    repo: &str,
    through: &[u8],
) -> tokio::sync::oneshot::Sender<()> {
    use http_body_util::BodyExt;
    let (keep_tx, keep) = tokio::sync::oneshot::channel::<()>();
    let (reset_tx, reset) = mpsc::channel::<()>();
    let (auth, repo, through) = (auth.to_string(), repo.to_string(), through.to_vec());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut sender = h2_connection(port).await;
            let request = hyper::Request::builder()
                .uri(format!(
                    "http://127.0.0.1:{port}/{repo}.git/info/refs?service=git-upload-pack"
                ))
                .header("authorization", format!("Basic {auth}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let answer = sender.send_request(request).await.unwrap();
            assert_eq!(answer.status(), 200);
            let mut body = answer.into_body();
            let mut received = Vec::new();
            while !received.ends_with(&through) {
                let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                    .await
                    .expect("the answer's bytes within 10 s")
                    .expect("more of the answer")
                    .unwrap();
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
            drop(body);
            reset_tx.send(()).unwrap();
            // The connection (and its task, which sends the reset) lives on until told.
            let _ = keep.await;
            drop(sender);
        });
    });
    reset
        .recv_timeout(Duration::from_secs(20))
        .expect("the answer read and let go of");
    keep_tx
}
