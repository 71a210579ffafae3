//! Property tests for the parsers that see untrusted bytes (proptest, in `cargo test`):
//!
//! - repository-path normalisation is idempotent and never yields `..`, `.`, empty segments or
//!   `\`;
//! - `classify` never returns a repository whose backend path differs from what a
//!   straightforward resolver (decode once, resolve `.`/`..` like a filesystem) makes of the
//!   request path: the repo gitgate authorises is the repo the backend serves;
//! - `credentials::parse` and `token::parse` never panic, whatever the bytes;
//! - header hygiene (`upstream::headers`): nothing connection-level, no client credentials and
//!   no spoofable origin header goes upstream, the identity header is always the authenticated
//!   user, and every other header arrives whole; towards the client only connection headers
//!   and credentials are removed.
//!
//! The fuzz targets in `fuzz/` search the same ground for longer; these run on every build.

mod plain_backend;
use plain_backend::plain_resolve as resolve;

use base64::Engine;
use gitgate::credentials::{self, CredentialError, Credentials};
use gitgate::git::{self, RepoPath};
use gitgate::token;
use proptest::prelude::*;

/// A token's checksum by the format's definition: the first 30 bits of SHA-256 over everything
/// before it, as 6 lowercase base32 characters. An oracle independent of `token`'s own code.
fn checksum_of(data: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data.as_bytes());
    let bits = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> 2;
    (0..6)
        .map(|i| {
            b"abcdefghijklmnopqrstuvwxyz234567"[((bits >> (5 * (5 - i))) & 31) as usize] as char
        })
        .collect()
}

/// Segments that exercise every rule: dots, encodings of `.`/`/`/`\`/NUL, `.git` aliases,
/// git's own suffix words, non-ASCII, and arbitrary short printable strings.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9][a-zA-Z0-9._+~-]{0,6}",
        3 => prop::sample::select(vec![
            "team", "app", "app.git", "x.git.git", ".git", "..", ".", "", "%2e%2e", "%2E%2e",
            "%2e", ".%2e", "%2f", "a%2fb", "a%2Fb", "%5c", "a\\b", "%00", "%", "%zz", "%e9",
            "é", "~u", "+a", "a b", "a..b", "info", "refs", "lfs", "objects", "pack", "HEAD",
            "git-upload-pack", "git-receive-pack", "app%2egit", "APP.GIT", "app.git%2f",
            "%252e%252e", "..;", ";", "a?b", "a#b",
        ])
        .prop_map(String::from),
        1 => "[ -~]{0,6}",
        1 => "[a-z.%0-9]{1,5}",
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(segment(), 0..5),
        prop::sample::select(vec![
            "/info/refs",
            "/git-upload-pack",
            "/git-receive-pack",
            "/HEAD",
            "/objects/info/packs",
            "/objects/ab/0123456789abcdef0123456789abcdef01234567",
            "/objects/pack/pack-0123456789abcdef0123456789abcdef01234567.idx",
            "/info/lfs/objects/batch",
            "",
            "/",
        ]),
    )
        .prop_map(|(segs, suffix)| format!("/{}{suffix}", segs.join("/")))
}

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["GET", "POST", "HEAD", "PUT", "get", "PROPFIND"])
}

fn query() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(vec![
            "service=git-upload-pack",
            "service=git-receive-pack",
            "service=git-upload-pack&service=git-receive-pack",
            "service=git%2dupload-pack",
            "x=1&service=git-upload-pack",
            "service",
            "service=",
            "service=%zz",
            "=&&=",
        ])
        .prop_map(|q| Some(q.to_string())),
        "[ -~]{0,12}".prop_map(Some),
    ]
}

fn assert_clean(repo: &str) {
    for seg in repo.split('/') {
        assert!(
            !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'),
            "unclean segment {seg:?} in {repo:?}"
        );
        assert!(
            git::valid_segment(seg),
            "invalid segment {seg:?} in {repo:?}"
        );
    }
}

/// Normalisation is idempotent and clean — and, lest that hold only because nothing is
/// accepted, the generator reaches accepted paths often enough (run by hand, not by `proptest!`,
/// to count them).
#[test]
fn repo_path_normalisation_is_idempotent_and_clean() {
    use proptest::test_runner::{Config, TestRunner};
    let accepted = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        source_file: Some(file!()),
        ..Config::with_cases(2000)
    });
    runner
        .run(&prop::collection::vec(segment(), 0..5), |segs| {
            let input = segs.join("/");
            if let Ok(repo) = RepoPath::parse(&input) {
                accepted.set(accepted.get() + 1);
                assert_clean(repo.as_str());
                let again = RepoPath::parse(repo.as_str()).expect("a normalised path parses again");
                prop_assert_eq!(again, repo);
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.get();
    assert!(
        accepted >= 100,
        "only {accepted} of 2000 generated paths were accepted"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn classify_resolves_like_a_plain_backend(
        method in method(),
        path in raw_path(),
        query in query(),
        scm in any::<bool>(),
    ) {
        let (prefix, full) = if scm { ("/scm", format!("/scm{path}")) } else { ("/", path.clone()) };
        if let Ok(req) = git::classify(method, &full, query.as_deref(), prefix) {
            assert_clean(req.repo.as_str());
            // The backend serves `backend_path`; a plain resolver of the client's path must land
            // on exactly the same file.
            let resolved = resolve(&path).expect("an accepted path decodes");
            prop_assert_eq!(&resolved, &req.backend_path);
            // ...and re-resolving the canonical path changes nothing.
            let re_resolved = resolve(&req.backend_path);
            prop_assert_eq!(re_resolved.as_deref(), Some(req.backend_path.as_str()));
            // The repository is a prefix of the backend path (with or without `.git`).
            let plain = format!("/{}/", req.repo);
            let dotgit = format!("/{}.git/", req.repo);
            prop_assert!(req.backend_path.starts_with(&plain) || req.backend_path.starts_with(&dotgit));
            // Classifying the canonical form again gives the same answer (idempotent).
            let again = git::classify(method, &req.backend_path, req.query.as_deref(), "/")
                .expect("the canonical path classifies");
            prop_assert_eq!(again, req);
        }
    }

    #[test]
    fn credentials_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = credentials::parse(&bytes);
    }

    #[test]
    fn basic_credentials_round_trip_or_refuse(user in "[ -~]{0,10}", secret in "[ -~]{0,10}", raw in prop::collection::vec(any::<u8>(), 0..40)) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        // The first ':' splits, as RFC 7617 says.
        let (eu, es) = format!("{user}:{secret}").split_once(':').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
        // A user name that cannot be one: a space, or the token prefix.
        let bad_user = eu.contains(' ') || eu.to_ascii_lowercase().contains("ggt_");
        match credentials::parse(format!("Basic {encoded}").as_bytes()) {
            Ok(Credentials::Basic { user: u, secret: s }) => {
                // Accepted only what the parser may accept: a user name that can be one, and a
                // password (an empty one is no secret to try).
                prop_assert!(!bad_user, "{:?}:{:?} accepted", eu, es);
                prop_assert!(!es.is_empty(), "{:?} accepted without a password", eu);
                prop_assert_eq!(u, eu);
                prop_assert_eq!(s.expose(), es.as_str());
            }
            Ok(other) => prop_assert!(false, "not Basic: {:?}", other),
            Err(e) => {
                // Refused only for what the parser refuses by rule. A user name that cannot be
                // one is malformed, password or not; an acceptable one without a password is
                // `NoPassword` — no secret tried, not a failure.
                if bad_user {
                    prop_assert!(matches!(e, CredentialError::Malformed(_)), "{:?}:{:?} -> {:?}", eu, es, e);
                } else {
                    prop_assert!(es.is_empty(), "{:?}:{:?} refused: {:?}", eu, es, e);
                    prop_assert_eq!(e, CredentialError::NoPassword);
                }
            }
        }
        // Arbitrary bytes behind the scheme, base64'd or not, never panic.
        let junk = base64::engine::general_purpose::STANDARD.encode(&raw);
        let _ = credentials::parse(format!("Basic {junk}").as_bytes());
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend_from_slice(&raw);
        let _ = credentials::parse(&bearer);
    }

    /// A push's commands are read from a body any client sends, in whatever pieces the network
    /// cuts it into: never a panic, and what is read does not depend on where the cuts fall.
    #[test]
    fn push_commands_are_read_alike_however_the_body_is_cut(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..600),
            // Mostly pkt-lines: commands, a flush, then anything.
            (prop::collection::vec("[0-9a-f]{40} [0-9a-f]{40} refs/heads/[a-z/]{1,20}", 0..6),
             prop::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(lines, tail)| {
                    let mut b = Vec::new();
                    for l in lines {
                        b.extend_from_slice(format!("{:04x}{l}\n", l.len() + 5).as_bytes());
                    }
                    b.extend_from_slice(b"0000");
                    b.extend_from_slice(&tail);
                    b
                }),
        ],
        cuts in prop::collection::vec(0usize..700, 0..8),
    ) {
        let mut whole = gitgate::push_commands::PushCommands::default();
        whole.feed(&body);
        let mut cut = gitgate::push_commands::PushCommands::default();
        let mut at: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
        at.sort_unstable();
        let mut from = 0;
        for to in at.into_iter().chain([body.len()]) {
            cut.feed(&body[from..to]);
            from = to;
        }
        prop_assert_eq!(whole.to_string(), cut.to_string());
        prop_assert_eq!(whole.is_done(), cut.is_done());
    }

    #[test]
    fn token_parse_never_panics(s in "\\PC{0,80}", id in "[a-z2-7]{12}", body in "[A-Za-z0-9_-]{43}", sum in "[a-z2-7]{6}") {
        let _ = token::parse(&s);
        // Well-shaped: accepted exactly when the checksum is right (computed here on its own,
        // from the format's definition), and then it yields exactly the id it carries.
        let right = format!("ggt_{id}_{body}_{}", checksum_of(&format!("ggt_{id}_{body}")));
        let parsed = token::parse(&right);
        prop_assert_eq!(parsed.as_ref().map(|p| p.as_str()), Some(id.as_str()));
        let shaped = format!("ggt_{id}_{body}_{sum}");
        prop_assert_eq!(token::parse(&shaped).is_some(), shaped == right);
    }

    #[test]
    fn generated_tokens_always_parse(_n in 0..50u8) {
        let new = token::generate().unwrap();
        prop_assert_eq!(token::parse(new.secret.expose()), Some(new.id));
    }
}

/// Guard against a vacuous property: the generator must reach accepted requests often enough.
#[test]
fn the_path_generator_reaches_accepted_requests() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (method(), raw_path(), query());
    let accepted = (0..3000)
        .filter(|_| {
            let (m, p, q) = strategy.new_tree(&mut runner).unwrap().current();
            git::classify(m, &p, q.as_deref(), "/").is_ok()
        })
        .count();
    assert!(
        accepted >= 30,
        "only {accepted} of 3000 generated requests were accepted"
    );
    assert_eq!(resolve("/a/%2e%2e/b/./c//d").as_deref(), Some("/b/c/d"));
}

// ---- header hygiene between client and upstream (src/upstream/headers.rs) ----------------------

mod header_hygiene {
    use std::net::{IpAddr, Ipv4Addr};

    use gitgate::network::Cidr;
    use gitgate::request_id::RequestId;
    use gitgate::upstream::headers::{
        client_address, to_client, to_upstream, valid_git_protocol, Outbound,
    };
    use hyper::header::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;

    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];

    /// Names a proxy must handle with care, and some it must simply pass on.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "authorization", "proxy-authorization", "host", "connection", "keep-alive", "te",
                "trailer", "transfer-encoding", "upgrade", "proxy-connection", "proxy",
                "forwarded", "x-real-ip", "x-forwarded-for", "x-forwarded-proto",
                "x-forwarded-host", "x-forwarded-user", "x-remote-user", "expect", "git-protocol",
                "content-type", "content-length", "content-encoding", "user-agent", "accept",
                "x-custom", "x-secret-hop", "proxy-authenticate", "x_forwarded_user",
                "remote_user", "x-webauth-user", "remote-user", "pragma", "range", "cookie",
            ])
            .prop_map(String::from),
            1 => "[a-z][a-z0-9-]{0,10}",
        ]
    }

    /// Values, including `Connection` lists naming other headers in any case and spacing.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => prop::sample::select(vec![
                "close, X-Secret-Hop", "keep-alive", " x-custom , UPGRADE", "X-Forwarded-User",
                "version=2", "version=2:object-format=sha256", "version=2\r\nx: y", "git/2.47.3",
                "10.0.0.1, 203.0.113.9", "garbage, 1.2.3.4", "example.com:8443", "evil host",
                "Basic Y2k6c2VjcmV0", "", "x-remote-user, authorization",
                // The one transfer coding passed on towards the client.
                "chunked",
            ])
            .prop_map(String::from),
            1 => "[ -~]{0,20}",
        ]
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec((name(), value()), 0..12).prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (n, v) in pairs {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    map.append(n, v);
                }
            }
            map
        })
    }

    /// The lower-cased tokens of every `Connection` header.
    fn connection_named(map: &HeaderMap) -> Vec<String> {
        map.get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    }

    fn values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a HeaderValue> {
        map.get_all(name).iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn what_goes_upstream_is_clean_and_complete(
            inbound in header_map(),
            peer in any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
            trusted_peer in any::<bool>(),
            https in any::<bool>(),
            remote_user in any::<bool>(),
            user in "[a-zA-Z0-9._-]{1,12}",
            with_auth in any::<bool>(),
        ) {
            let trusted: Vec<Cidr> = if trusted_peer {
                vec![format!("{peer}/32").parse().unwrap()]
            } else {
                vec![]
            };
            let identity = HeaderName::from_static(if remote_user { "x-remote-user" } else { "x-forwarded-user" });
            let own_auth = HeaderValue::from_static("Basic Z2l0Z2F0ZTpwdw==");
            let out = Outbound {
                peer,
                trusted_proxies: &trusted,
                proto: if https { "https" } else { "http" },
                authority: None,
                identity_header: &identity,
                user: &user,
                upstream_auth: with_auth.then_some(&own_auth),
                request_id: RequestId::next(),
            };
            let sent = to_upstream(&inbound, &out);
            let named = connection_named(&inbound);
            let set_by_gitgate = |n: &str| {
                n.starts_with("x-forwarded-") || n == identity.as_str() || n == "authorization"
                    || n == "git-protocol" || n == "x-request-id" || n == "x-gitgate-hop"
            };

            // Never: connection-level headers, the client's credentials, spoofable origin headers.
            for n in HOP_BY_HOP.iter().chain(&["proxy", "forwarded", "x-real-ip", "expect", "host"]) {
                prop_assert!(!sent.contains_key(*n), "{} was forwarded", n);
            }
            // Nor a name with an underscore (CGI/WSGI read `x_forwarded_user` as the dashed one).
            for n in sent.keys() {
                prop_assert!(!n.as_str().contains('_'), "{} was forwarded", n);
            }
            for n in &named {
                if !set_by_gitgate(n) {
                    prop_assert!(!sent.contains_key(n.as_str()), "{} (named by Connection) was forwarded", n);
                }
            }
            // Authorization is gitgate's own or nothing.
            if with_auth {
                prop_assert_eq!(values(&sent, "authorization"), vec![&own_auth]);
            } else {
                prop_assert!(!sent.contains_key("authorization"));
            }
            // The request id is gitgate's, once.
            let id = out.request_id.header_value();
            prop_assert_eq!(values(&sent, "x-request-id"), vec![&id]);
            // So is the mark of a request sent upstream: one header, ending with this
            // process's own, whatever the client sent before it.
            let mark = gitgate::request_id::own_mark().to_str().unwrap();
            let marks = values(&sent, "x-gitgate-hop");
            prop_assert_eq!(marks.len(), 1);
            prop_assert!(marks[0].to_str().unwrap().ends_with(mark));
            // The identity is the authenticated user, once.
            let expected = HeaderValue::from_str(&user).unwrap();
            prop_assert_eq!(values(&sent, identity.as_str()), vec![&expected]);
            // Where the request came from is what gitgate saw, unless the peer is trusted.
            let xff = values(&sent, "x-forwarded-for");
            prop_assert_eq!(xff.len(), 1);
            let xff = xff[0].to_str().unwrap();
            prop_assert!(xff.ends_with(&peer.to_string()), "{}", xff);
            // It starts with the client gitgate took (a request whose client it cannot read is
            // never forwarded): what a client wrote left of that is not passed on.
            if let Ok(client) = client_address(peer, &inbound, &trusted) {
                let first = xff.split(", ").next().unwrap_or_default();
                prop_assert_eq!(first, client.to_string(), "{}", xff);
            }
            if !trusted_peer {
                prop_assert_eq!(xff, peer.to_string());
                prop_assert_eq!(values(&sent, "x-forwarded-proto"), vec![out.proto]);
                // The host the client asked for, if it gave one; and when it gave exactly one
                // that is plainly a host (a name, an optional port), gitgate must say it: the
                // upstream builds its links from it.
                let hosts = values(&inbound, "host");
                let plain_host = |h: &HeaderValue| {
                    let h = h.to_str().unwrap_or("");
                    let (name, port) = h.rsplit_once(':').unwrap_or((h, "0"));
                    !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                        && port.len() <= 5
                        && port.bytes().all(|b| b.is_ascii_digit())
                        && port.parse::<u16>().is_ok()
                };
                match sent.get("x-forwarded-host") {
                    Some(host) => prop_assert_eq!(Some(host), hosts.first().copied()),
                    None => prop_assert!(
                        !(hosts.len() == 1 && plain_host(hosts[0])),
                        "no X-Forwarded-Host for Host {:?}",
                        hosts
                    ),
                }
            }
            // Git-Protocol: only a single, plausible value.
            let gp = values(&inbound, "git-protocol");
            if gp.len() == 1 && valid_git_protocol(gp[0]) {
                prop_assert_eq!(values(&sent, "git-protocol"), gp);
            } else {
                prop_assert!(!sent.contains_key("git-protocol"));
            }
            // What git says about the content and itself arrives whole (every value, in order)
            // unless `Connection` names it; the length once; nothing else at all.
            const PASSED_ON: [&str; 10] = [
                "accept", "accept-encoding", "accept-language", "cache-control",
                "content-encoding", "content-type", "pragma", "range", "user-agent", "if-range",
            ];
            // A single content coding goes in the one spelling git http-backend reads (it
            // compares case-sensitively): lower case.
            let codings: Vec<String> = inbound
                .get_all("content-encoding")
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("?").split(',').map(|c| c.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                .filter(|c| !c.is_empty())
                .collect();
            for n in inbound.keys() {
                let s = n.as_str();
                if PASSED_ON.contains(&s) && !named.iter().any(|t| t == s) {
                    if s == "content-encoding" && codings.len() == 1 {
                        let canonical = HeaderValue::from_str(&codings[0]).unwrap();
                        prop_assert_eq!(values(&sent, s), vec![&canonical]);
                    } else {
                        prop_assert_eq!(values(&sent, s), values(&inbound, s), "{}", s);
                    }
                }
            }
            // The length once, as the plain number its lines state (leading zeros and agreeing
            // repeats gone); none when they state no one length (hyper refuses such a request
            // before the gate, and the gate refuses one past i64::MAX).
            let parts: Vec<String> = inbound
                .get_all("content-length")
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("?").split(',').map(|p| p.trim().to_string()).collect::<Vec<_>>())
                .collect();
            let lengths: Option<Vec<u64>> = parts
                .iter()
                .map(|p| (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse::<u64>().ok()).flatten())
                .collect();
            let stated: Vec<HeaderValue> = match lengths {
                Some(ls) if !ls.is_empty() && ls.iter().all(|&l| l == ls[0]) => vec![HeaderValue::from(ls[0])],
                _ => vec![],
            };
            prop_assert_eq!(values(&sent, "content-length"), stated.iter().collect::<Vec<_>>());
            for n in sent.keys() {
                let s = n.as_str();
                prop_assert!(
                    PASSED_ON.contains(&s) || s == "content-length" || set_by_gitgate(s),
                    "{} was forwarded", s
                );
            }
        }

        #[test]
        fn what_goes_to_the_client_loses_only_connection_headers_and_credentials(upstream in header_map()) {
            // The upstream's own site (cookies, alternative services, its internal location,
            // links and refreshes that may name it, its software).
            const UPSTREAM_ONLY: [&str; 7] = [
                "set-cookie",
                "alt-svc",
                "content-location",
                "link",
                "refresh",
                "server",
                "x-powered-by",
            ];
            let named = connection_named(&upstream);
            let codings: Vec<String> = upstream
                .get_all("transfer-encoding")
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("?").split(',').map(|c| c.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                .filter(|c| !c.is_empty())
                .collect();
            // Without a transfer coding, the length: every value of every line, one number.
            let lengths: Vec<Option<u64>> = upstream
                .get_all("content-length")
                .iter()
                .flat_map(|v| {
                    v.as_bytes()
                        .split(|&b| b == b',')
                        .map(|p| {
                            let p = std::str::from_utf8(p.trim_ascii()).ok()?;
                            p.bytes().all(|b| b.is_ascii_digit()).then(|| p.parse().ok())?
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let one_length = lengths.first().copied().flatten().filter(|&n| lengths.iter().all(|l| *l == Some(n)));
            // How hyper's client frames the answer: chunked only if the last item of the last
            // Transfer-Encoding line, empty ones counted, is `chunked`.
            let te_said = upstream.contains_key("transfer-encoding");
            let hyper_chunked = upstream
                .get_all("transfer-encoding")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            let mut sent = upstream.clone();
            let chunked = match to_client(&mut sent) {
                // Let through: one `chunked` that hyper reads as chunked too (it redoes that
                // framing) or no Transfer-Encoding at all, and then no length or one length.
                // Any other coding's header would go and its coded bytes stay, an answer read
                // two ways would hand on its chunk lines as the body, and lengths that
                // disagree leave the body's end unknown.
                Ok(()) if te_said => {
                    prop_assert_eq!(&codings, &["chunked"]);
                    prop_assert!(hyper_chunked);
                    true
                }
                Ok(()) => {
                    prop_assert!(lengths.is_empty() || one_length.is_some(), "{:?}", lengths);
                    false
                }
                Err(e) => {
                    // Refused: a transfer coding other than one `chunked`, one `chunked` that
                    // hyper does not read as chunked, an empty Transfer-Encoding, or without
                    // one, a Content-Length that is not one length.
                    prop_assert!(
                        (codings != ["chunked"] && !codings.is_empty())
                            || (codings == ["chunked"] && !hyper_chunked)
                            || (codings.is_empty() && te_said)
                            || (!te_said && !lengths.is_empty() && one_length.is_none()),
                        "{}",
                        e
                    );
                    return Ok(());
                }
            };
            for n in upstream.keys() {
                let s = n.as_str();
                if HOP_BY_HOP.contains(&s)
                    || UPSTREAM_ONLY.contains(&s)
                    || s == "authorization"
                    || (chunked && s == "content-length")
                    || named.iter().any(|t| t == s)
                {
                    prop_assert!(!sent.contains_key(s), "{} reached the client", s);
                } else if s == "content-length" {
                    // Said once, as the one length: a single value of digits as it came
                    // (`00` stays: every client reads it as 0), a repeated one as its number.
                    let got: Vec<String> = values(&sent, s)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    let came = values(&upstream, s);
                    let as_it_came = came.len() == 1
                        && !came[0].is_empty()
                        && came[0].as_bytes().iter().all(u8::is_ascii_digit);
                    let expected = if as_it_came {
                        one_length.map(|_| vec![String::from_utf8_lossy(came[0].as_bytes()).into_owned()])
                    } else {
                        one_length.map(|n| vec![n.to_string()])
                    };
                    prop_assert_eq!(Some(got), expected, "{}", s);
                } else {
                    prop_assert_eq!(values(&sent, s), values(&upstream, s), "{}", s);
                }
            }
            prop_assert!(sent.keys().all(|n| upstream.contains_key(n)));
        }
    }
}
