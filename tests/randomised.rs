//! Seeded, reproducible randomised tests of the parsers and the decision, each against a small
//! model written here from the documented rules (or from git itself):
//!
//! - `classify` on request targets full of what backends read differently (dot segments in
//!   every encoding, `//`, `;`, backslashes, long names, escapes of invalid UTF-8, repeated or
//!   odd-case `service=`): never a panic; an accepted request's repository is what a plain
//!   decode-and-resolve backend makes of the path, nothing in it reads otherwise decoded twice,
//!   the service is the one git http-backend would read from the same query; and a path that
//!   cannot be resolved is never accepted (fail closed). Every refusal has a reason.
//! - pkt-lines against a reference reader, however the bytes are cut into reads;
//! - the ref names a push's log line takes for ref names, against `git check-ref-format`;
//! - `Authorization` headers against a model with its own base64 reader;
//! - token secrets, damaged in every way, against the format's definition;
//! - `proxy.toml` mutated at random: a clear one-line error or a config, never a panic;
//! - `policy::authorize` (behind `classify`) against a model of the README's rules.
//!
//! No crates beyond the test's own: a xorshift generator. Every case has its own seed, printed
//! when it fails; `GITGATE_RANDOM_SEED=<seed> GITGATE_RANDOM_CASES=1` replays it, and
//! `GITGATE_RANDOM_CASES=<n>` runs more (the defaults keep each test to a few seconds).

mod plain_backend;
use plain_backend::{decode, plain_resolve};
use std::net::IpAddr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use gitgate::credentials::{self, CredentialError, Credentials};
use gitgate::git::{self, Operation, Rejection, Service};
use gitgate::permission::{Access, Level, TokenKind, TokenPermissions};
use gitgate::pkt_line::{Pkt, PktLines};
use gitgate::policy::{self, Deny, Target};
use gitgate::push_commands::PushCommands;
use gitgate::store::{AuthRecord, Owner, Role, TokenRecord};
use gitgate::token;

// ---- the generator and the runner -------------------------------------------------------------

/// xorshift64*: small, fast and good enough to pick test inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point), and nearby seeds far apart.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True once in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

/// Runs `case` `cases` times (or `GITGATE_RANDOM_CASES`), each with a generator of its own
/// seed: case `i` of seed `s` has seed `s + i`, so the seed printed for a failing case,
/// given as `GITGATE_RANDOM_SEED` with `GITGATE_RANDOM_CASES=1`, runs that case alone.
fn run(name: &str, cases: u64, mut case: impl FnMut(&mut Rng)) {
    // A fixed seed per test by default: the same cases on every run, unless asked otherwise.
    let default_seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let seed = env_number("GITGATE_RANDOM_SEED").unwrap_or(default_seed);
    let cases = env_number("GITGATE_RANDOM_CASES").unwrap_or(cases);
    for i in 0..cases {
        let case_seed = seed.wrapping_add(i);
        let mut rng = Rng::new(case_seed);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(&mut rng))) {
            eprintln!(
                "{name}: case {i} of {cases} failed; run it alone with \
                 GITGATE_RANDOM_SEED={case_seed} GITGATE_RANDOM_CASES=1"
            );
            resume_unwind(panic);
        }
    }
}

// ---- request targets: classify ---------------------------------------------------------------

/// `%XX` for a byte, in either case of hex digit.
fn escape(rng: &mut Rng, b: u8) -> String {
    let s = format!("%{b:02x}");
    if rng.one_in(2) {
        s.to_uppercase()
    } else {
        s
    }
}

/// One path segment, from what backends and file systems read in their own ways.
fn segment(rng: &mut Rng) -> String {
    const TRICKY: &[&str] = &[
        "team",
        "app",
        "app.git",
        "lib",
        "x.git.git",
        ".git",
        "..",
        ".",
        "",
        "%2e%2e",
        "%2E.",
        ".%2e",
        "%2e",
        "%2f",
        "a%2fb",
        "%5c",
        "a\\b",
        "%00",
        "%",
        "%zz",
        "%4",
        "%e9",
        "%c3",
        "%c3%a9",
        "%ff%fe",
        "é",
        "~u",
        "+a",
        "a b",
        "a..b",
        ";",
        "..;",
        "app;x=1",
        "app%3b",
        "a?b",
        "info",
        "refs",
        "lfs",
        "objects",
        "pack",
        "HEAD",
        "git-upload-pack",
        "git-receive-pack",
        "app%2egit",
        "APP.GIT",
        "%252e%252e",
        "%25",
        "a:b",
        "a@b",
        "a*b",
        "ggt_x",
        "rest",
        "%72est",
        "-",
        "_",
        "a.",
        "a.lock",
        "c++",
        "%2B",
        "%7e",
    ];
    match rng.below(10) {
        0..=4 => rng.pick(TRICKY).to_string(),
        5 => {
            // A plain name, sometimes long (a folder's name has at most 255 bytes).
            let len = if rng.one_in(8) {
                200 + rng.below(120)
            } else {
                1 + rng.below(8)
            };
            (0..len)
                .map(|_| char::from(rng.pick(b"abcdefghijklmnopqrstuvwxyz0123456789._-+~")))
                .collect()
        }
        6 => {
            // A plain name with some characters percent-encoded.
            let name = rng.pick(&["team", "app", "app.git", "a.b", "lib"]);
            name.bytes()
                .map(|b| {
                    if rng.one_in(3) {
                        escape(rng, b)
                    } else {
                        char::from(b).to_string()
                    }
                })
                .collect()
        }
        7 => {
            // Printable ASCII, anything.
            let len = rng.below(6);
            (0..len)
                .map(|_| char::from(b' ' + rng.below(95) as u8))
                .collect()
        }
        8 => {
            // Any bytes, escaped (invalid UTF-8 among them).
            let len = 1 + rng.below(4);
            let bytes = rng.bytes(len);
            bytes.into_iter().map(|b| escape(rng, b)).collect()
        }
        _ => {
            // Non-ASCII characters as they are.
            let len = 1 + rng.below(3);
            (0..len)
                .map(|_| {
                    rng.pick(&["é", "ü", "\u{202e}", "\u{200b}", "日"])
                        .to_string()
                })
                .collect()
        }
    }
}

const SHA1: &str = "3b18e512dba79e4c8300dd08aeb37f8e728b8dad";

fn endpoint(rng: &mut Rng) -> String {
    rng.pick(&[
        "/info/refs".to_string(),
        "/git-upload-pack".to_string(),
        "/git-receive-pack".to_string(),
        "/git-upload-archive".to_string(),
        "/HEAD".to_string(),
        "/objects/info/packs".to_string(),
        format!("/objects/{}/{}", &SHA1[..2], &SHA1[2..]),
        format!("/objects/pack/pack-{SHA1}.idx"),
        "/info/lfs/objects/batch".to_string(),
        "/info/refs/".to_string(),
        "/info//refs".to_string(),
        "/info/%72efs".to_string(),
        "".to_string(),
        "/".to_string(),
    ])
}

fn query(rng: &mut Rng) -> Option<String> {
    if rng.one_in(4) {
        return None;
    }
    const PAIRS: &[&str] = &[
        "service=git-upload-pack",
        "service=git-receive-pack",
        "service=git-upload-archive",
        "SERVICE=git-receive-pack",
        "Service=git-receive-pack",
        "%73ervice=git-receive-pack",
        "servic%65=git-upload-pack",
        "service=git%2dreceive-pack",
        "service=git+upload-pack",
        "service=git-upload-pack%00",
        "service=git-upload-pack;x",
        "service",
        "service=",
        "service=%zz",
        "service+=git-receive-pack",
        "x=1",
        "",
        "=",
        "a=%",
    ];
    let n = 1 + rng.below(3);
    let pairs: Vec<&str> = (0..n).map(|_| rng.pick(PAIRS)).collect();
    Some(pairs.join("&"))
}

/// git http-backend's reading of the `service` parameter: `&`-separated pairs, `+` a space,
/// an escape it cannot read (or `%00`) kept as it is, the last of several winning
/// (http-backend.c, `get_parameters`).
fn git_reads_service(raw_query: &str) -> Option<Vec<u8>> {
    let git_decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match b[i] {
                b'%' => match (
                    b.get(i + 1).and_then(|&c| hex(c)),
                    b.get(i + 2).and_then(|&c| hex(c)),
                ) {
                    (Some(h), Some(l)) if h * 16 + l > 0 => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                b'+' => out.push(b' '),
                c => out.push(c),
            }
            i += 1;
        }
        out
    };
    let mut service = None;
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if git_decode(name) == b"service" {
            service = Some(git_decode(value));
        }
    }
    service
}

/// `classify` against a plain backend and git's own reading of the query: never a panic; an
/// accepted request resolves to the repository and path a plain backend resolves it to, holds
/// nothing that a second decoding or a path parameter (`;`) would read otherwise, asks for the
/// service git would read, and is refused if the plain backend cannot resolve it (fail closed).
#[test]
fn request_targets_resolve_as_a_plain_backend_and_git_resolve_them() {
    let mut accepted = 0u64;
    run("request_targets", 20_000, |rng| {
        let scm = rng.one_in(3);
        let prefix = if scm { "/scm" } else { "/" };
        let depth = rng.below(5);
        let segments: Vec<String> = (0..depth).map(|_| segment(rng)).collect();
        let path = format!("/{}{}", segments.join("/"), endpoint(rng));
        let full = if scm {
            format!("/scm{path}")
        } else {
            path.clone()
        };
        let method = rng.pick(&["GET", "HEAD", "POST", "PUT", "get", "OPTIONS"]);
        let query = query(rng);
        let got = git::classify(method, &full, query.as_deref(), prefix);
        let req = match got {
            Err(e) => {
                // Every refusal has a reason, on one line.
                let reason = e.to_string();
                assert!(
                    !reason.trim().is_empty(),
                    "{full:?}: a refusal without a reason"
                );
                assert!(!reason.contains('\n'), "{full:?}: {reason:?}");
                if let Rejection::MethodNotAllowed { allow, .. } = &e {
                    assert!(*allow == "GET, HEAD" || *allow == "POST", "{allow}");
                }
                return;
            }
            Ok(req) => req,
        };
        accepted += 1;
        // Fail closed: what a plain backend cannot resolve is never forwarded.
        let resolved = plain_resolve(&path)
            .unwrap_or_else(|| panic!("{full:?} was accepted, but does not decode"));
        assert_eq!(resolved, req.backend_path, "{full:?}");
        // Resolved without resolving anything: the path has no `.`, `..` or empty segment,
        // no `\`, no encoded `/`, and each segment decoded once is what it is decoded twice
        // (a backend that decodes again reads the same repository).
        let raw_segments: Vec<&str> = path[1..].split('/').collect();
        for raw in &raw_segments {
            let once = decode(raw).expect("decodes");
            let once = String::from_utf8(once).expect("UTF-8");
            assert!(
                !once.is_empty() && once != "." && once != ".." && !once.contains(['/', '\\', ';']),
                "{full:?}: segment {raw:?} reads as {once:?}"
            );
            let twice = decode(&once).map(String::from_utf8);
            assert_eq!(
                twice,
                Some(Ok(once.clone())),
                "{full:?}: {raw:?} decodes again"
            );
        }
        // The repository: the path up to the endpoint, without its `.git`.
        let repo = req.repo.as_str();
        for seg in repo.split('/') {
            assert!(git::valid_segment(seg), "{full:?}: {repo:?}");
        }
        assert!(repo.split('/').count() >= 2, "{full:?}: {repo:?}");
        assert!(
            resolved.starts_with(&format!("/{repo}/"))
                || resolved.starts_with(&format!("/{repo}.git/")),
            "{full:?}: {repo:?} is not what {resolved:?} names"
        );
        assert!(!repo.ends_with(".git"), "{full:?}: {repo:?}");
        // The operation, its access and the canonical query: the service git would read.
        let want_method = match req.operation {
            Operation::Rpc(_) => method == "POST",
            Operation::Advertise(_) | Operation::Dumb => method == "GET" || method == "HEAD",
        };
        assert!(want_method, "{method} {full:?}: {:?}", req.operation);
        match req.operation {
            Operation::Advertise(service) => {
                assert!(resolved.ends_with("/info/refs"), "{full:?}");
                let git = git_reads_service(query.as_deref().unwrap_or(""));
                assert_eq!(
                    git.as_deref(),
                    Some(service.as_str().as_bytes()),
                    "{full:?}?{query:?}: git would read another service"
                );
                assert_eq!(req.query.as_deref(), Some(service.advertisement_query()));
                assert_eq!(req.access == Access::Write, service == Service::ReceivePack);
            }
            Operation::Rpc(service) => {
                assert!(resolved.ends_with(service.as_str()), "{full:?}");
                assert_eq!(req.query, None);
                assert_eq!(req.access == Access::Write, service == Service::ReceivePack);
            }
            Operation::Dumb => {
                assert_eq!(req.query, None);
                assert_eq!(req.access, Access::Read);
            }
        }
        // The canonical form classifies to the same request.
        let canonical = if scm {
            format!("/scm{}", req.backend_path)
        } else {
            req.backend_path.clone()
        };
        let again = git::classify(method, &canonical, req.query.as_deref(), prefix)
            .expect("the canonical path classifies");
        assert_eq!(again, req, "{full:?}");
    });
    // Lest the properties hold only because nothing is accepted.
    if env_number("GITGATE_RANDOM_SEED").is_none() {
        assert!(accepted >= 200, "only {accepted} requests were accepted");
    }
}

// ---- pkt-lines ---------------------------------------------------------------------------------

/// What a pkt-line reader reads from a whole body: each line, flush and delimiter, then
/// whether the body ended in what is no pkt-line.
fn reference_pkt_lines(body: &[u8]) -> (Vec<String>, bool) {
    let mut seen = Vec::new();
    let mut at = 0;
    while at + 4 <= body.len() {
        let head = &body[at..at + 4];
        if !head.iter().all(u8::is_ascii_hexdigit) {
            return (seen, true);
        }
        let length = head.iter().fold(0usize, |n, &c| {
            n * 16 + (c as char).to_digit(16).unwrap() as usize
        });
        match length {
            0 => {
                seen.push("flush".to_string());
                at += 4;
            }
            1..=3 => {
                seen.push("delim".to_string());
                at += 4;
            }
            _ if at + length <= body.len() => {
                seen.push(format!("line {:?}", &body[at + 4..at + length]));
                at += length;
            }
            _ => break,
        }
    }
    (seen, false)
}

fn pkt_body(rng: &mut Rng) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..rng.below(8) {
        match rng.below(10) {
            0 => body.extend_from_slice(rng.pick(&[b"0000", b"0001", b"0002", b"0003"])),
            1 => {
                // Any length, 0000 to ffff, in either case, and maybe less payload than it says.
                let length = rng.below(0x10000);
                let head = format!("{length:04x}");
                let head = if rng.one_in(2) {
                    head.to_uppercase()
                } else {
                    head
                };
                body.extend_from_slice(head.as_bytes());
                let have = rng.below(length.saturating_sub(4).min(300) + 1);
                body.extend(rng.bytes(have));
            }
            2 => {
                // Not a length.
                body.extend_from_slice(rng.pick(&[
                    &b"zzzz"[..],
                    b"+00a",
                    b" 01a",
                    b"00g0",
                    b"PACK",
                ]));
            }
            3 => {
                let n = rng.below(6);
                body.extend(rng.bytes(n));
            }
            _ => {
                let n = rng.below(60);
                let payload = rng.bytes(n);
                body.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
                body.extend(payload);
            }
        }
    }
    body
}

/// pkt-lines read in any number of reads, cut anywhere (a ref update split over reads), are
/// what a reader of the whole body reads.
#[test]
fn pkt_lines_read_in_pieces_are_what_the_whole_body_holds() {
    run("pkt_lines", 20_000, |rng| {
        let body = pkt_body(rng);
        let (want, want_err) = reference_pkt_lines(&body);
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(body.len() + 1))
            .collect();
        cuts.sort_unstable();
        let mut lines = PktLines::default();
        let mut seen = Vec::new();
        let mut err = false;
        let mut from = 0;
        for to in cuts.into_iter().chain([body.len()]) {
            let read = lines.feed(&body[from..to], |pkt| {
                seen.push(match pkt {
                    Pkt::Line(p) => format!("line {p:?}"),
                    Pkt::Flush => "flush".to_string(),
                    Pkt::Delimiter => "delim".to_string(),
                });
                true
            });
            from = to;
            if read.is_err() {
                err = true;
                break;
            }
        }
        assert_eq!((&seen, err), (&want, want_err), "{body:?}");
        // The commands read from the same body do not depend on the cuts either.
        let mut whole = PushCommands::default();
        whole.feed(&body);
        let mut cut = PushCommands::default();
        for piece in body.chunks(1 + rng.below(9)) {
            cut.feed(piece);
        }
        assert_eq!(whole.to_string(), cut.to_string(), "{body:?}");
        assert!(!whole.to_string().is_empty());
    });
}

// ---- ref names: git check-ref-format ----------------------------------------------------------

/// Whether a push's log line takes `name` for a ref's name (it quotes one it does not).
fn logged_as_a_ref_name(name: &[u8]) -> bool {
    const ZERO: &str = "0000000000000000000000000000000000000000";
    let mut line = format!("{ZERO} {SHA1} ").into_bytes();
    line.extend_from_slice(name);
    line.push(b'\n');
    let mut body = format!("{:04x}", line.len() + 4).into_bytes();
    body.extend(line);
    body.extend_from_slice(b"0000");
    let mut p = PushCommands::default();
    p.feed(&body);
    let said = p.to_string();
    assert!(
        said.ends_with(&format!(" created at {}", &SHA1[..7])),
        "{said}"
    );
    // A name that is no UTF-8 is shown as well as it can be, and still said to be a ref name.
    !said.starts_with("<not a ref name")
}

fn ref_name(rng: &mut Rng) -> Vec<u8> {
    const PARTS: &[&str] = &[
        "main", "v1", "a", "x", ".", "..", "/", "//", ".lock", "lock", "@", "@{", "{", "}", "~",
        "^", ":", "?", "*", "[", "]", "\\", " ", "\t", "\x01", "\x7f", "é", "-", "_", "+", "!",
        "\"", "#", "$", "%", "&", "'", "(", ")", ",", ";", "<", "=", ">", "`", "|",
    ];
    // Under `refs/heads/` or `refs/tags/`: receive-pack checks the rest as check-ref-format
    // checks the whole (one-level names and those outside `refs/` it refuses by other rules).
    let mut name = rng.pick(&[&b"refs/heads/"[..], b"refs/tags/"]).to_vec();
    // Components of a few parts each, between slashes (sometimes two, or one at the end).
    for i in 0..1 + rng.below(3) {
        if i > 0 {
            name.extend_from_slice(rng.pick(&["/", "/", "/", "//"]).as_bytes());
        }
        for _ in 0..1 + rng.below(3) {
            // Git's rules are about these most: picked more often than the rest.
            let part = if rng.one_in(3) {
                rng.pick(&[".lock", ".", "..", "@", "@{", "lock", "main"])
            } else {
                rng.pick(PARTS)
            };
            name.extend_from_slice(part.as_bytes());
        }
    }
    if rng.one_in(10) {
        name.push(b'/');
    }
    if rng.one_in(20) {
        name.extend([0xff, b'x']);
    }
    name
}

/// Whether git takes `name` for a ref's name (`git check-ref-format`, as receive-pack checks
/// the names of a push).
fn git_takes_as_a_ref_name(name: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let status = std::process::Command::new("git")
        .arg("check-ref-format")
        .arg(std::ffi::OsStr::from_bytes(name))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("git runs");
    status.success()
}

/// The names a push's log line shows as ref names are the names git takes for ref names: one
/// git refuses (a hand-made push's) is quoted and said to be none.
#[test]
fn a_ref_name_is_one_as_git_check_ref_format_says() {
    run("ref_names", 400, |rng| {
        let name = ref_name(rng);
        // The log line's reader stops at a NUL and a line's end, as git's does.
        if name.contains(&0) || name.contains(&b'\n') {
            return;
        }
        // One that is no UTF-8 is quoted whatever git makes of it (`<a ref name that is not
        // UTF-8: "...">`): nothing in it can pass for more of the list.
        if std::str::from_utf8(&name).is_err() {
            return;
        }
        let ours = logged_as_a_ref_name(&name);
        let gits = git_takes_as_a_ref_name(&name);
        assert_eq!(
            ours,
            gits,
            "{:?}: the log line says {}, git check-ref-format says {}",
            String::from_utf8_lossy(&name),
            if ours { "a ref name" } else { "not one" },
            if gits { "one" } else { "not one" },
        );
    });
}

// ---- credentials -----------------------------------------------------------------------------

/// Standard base64 as RFC 4648 writes it, with the padding optional (as some clients strip it)
/// but never more of it than the length needs, and no bits left over: `None` otherwise.
fn base64_model(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let body_len = text.len() - text.iter().rev().take_while(|&&c| c == b'=').count();
    let (body, pad) = text.split_at(body_len);
    let needed = match body.len() % 4 {
        0 => 0,
        2 => 2,
        3 => 1,
        _ => return None,
    };
    if pad.len() > needed {
        return None;
    }
    let mut out = Vec::new();
    let mut bits = 0u32;
    let mut held = 0;
    for &c in body {
        bits = bits << 6 | u32::from(value(c)?);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    (bits == 0).then_some(out)
}

#[derive(Debug, PartialEq)]
enum Read {
    Basic(String, String),
    Bearer(String),
    NoPassword,
    NoBearerToken,
    Malformed,
}

/// The `Authorization` rules, from the README and RFC 7617/6750: one scheme, one space-separated
/// parameter; Basic is base64 of UTF-8 `user:password` split at the first `:`, with a user name
/// that fits on a log line as one field and holds no token, and a password; Bearer is a
/// token68.
fn credentials_model(value: &[u8]) -> Read {
    if value.len() > credentials::MAX_HEADER_LEN {
        return Read::Malformed;
    }
    let value = value.trim_ascii();
    let at = value.iter().position(|&b| b == b' ' || b == b'\t');
    let (scheme, param) = match at {
        None => (value, &b""[..]),
        Some(at) if value[at] == b'\t' => return Read::Malformed,
        Some(at) => (&value[..at], value[at..].trim_ascii_start()),
    };
    if value.is_empty() || param.contains(&b' ') || param.contains(&b'\t') {
        return Read::Malformed;
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let Some(decoded) = base64_model(param).filter(|_| !param.is_empty()) else {
            return Read::Malformed;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return Read::Malformed;
        };
        let Some((user, password)) = text.split_once(':') else {
            return Read::Malformed;
        };
        let unfit = user
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || credentials::is_invisible_format(c))
            || credentials::holds_a_secret(user);
        if unfit {
            return Read::Malformed;
        }
        if password.is_empty() {
            return Read::NoPassword;
        }
        Read::Basic(user.to_string(), password.to_string())
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        let padding = param.iter().rev().take_while(|&&b| b == b'=').count();
        let body = &param[..param.len() - padding];
        if body.is_empty() {
            return Read::NoBearerToken;
        }
        if !body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
        {
            return Read::Malformed;
        }
        Read::Bearer(String::from_utf8(param.to_vec()).unwrap())
    } else {
        Read::Malformed
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn authorization(rng: &mut Rng) -> Vec<u8> {
    const USER_PARTS: &[&str] = &[
        "alice", "Alice", "ci", "", ":", " ", "\t", "\u{1}", "é", "\u{200b}", "\u{202e}", "ggt_",
        "GGT_", "@", "x", "\u{a0}", "\u{2028}", "\u{fffe}",
    ];
    let scheme = rng.pick(&[
        "Basic", "basic", "BASIC", "Bearer", "bearer", "Token", "Basi", "", "ggt_x",
    ]);
    let param: Vec<u8> = if scheme.eq_ignore_ascii_case("bearer") && !rng.one_in(4) {
        let len = rng.below(70);
        let mut t: Vec<u8> = (0..len)
            .map(|_| rng.pick(b"abcXYZ019-._~+/=_ !\xff"))
            .collect();
        t.extend(std::iter::repeat_n(b'=', rng.below(3)));
        t
    } else {
        let mut user = String::new();
        for _ in 0..rng.below(4) {
            user.push_str(rng.pick(USER_PARTS));
        }
        let mut plain = user.into_bytes();
        match rng.below(6) {
            0 => {}
            1 => plain.extend_from_slice(b":"),
            2 => plain.extend_from_slice(b"::"),
            3 => {
                plain.push(b':');
                let n = rng.below(12);
                plain.extend(rng.bytes(n));
            }
            _ => {
                plain.push(b':');
                plain.extend_from_slice(rng.pick(&[
                    &b"pw"[..],
                    b"a:b",
                    b"ggt_x",
                    b" ",
                    b"\xc3\xa9",
                ]));
            }
        }
        let mut text = b64(&plain);
        match rng.below(8) {
            0 => text = text.trim_end_matches('=').to_string(),
            1 => text.push('='),
            2 => text.push_str("=="),
            3 if !text.is_empty() => {
                let at = rng.below(text.len());
                let c = rng.pick(&['=', '-', '_', '.', ' ', '*', 'A']);
                text.insert(at, c);
            }
            4 if !text.is_empty() => {
                // A different last character: its left-over bits may no longer be zero.
                text = text.trim_end_matches('=').to_string();
                text.pop();
                text.push(rng.pick(&['A', 'B', 'Q', 'g', '/', '+']));
            }
            _ => {}
        }
        text.into_bytes()
    };
    let mut value = Vec::new();
    value.extend(std::iter::repeat_n(b' ', rng.below(2)));
    value.extend_from_slice(scheme.as_bytes());
    let sep = rng.pick(&[&b" "[..], b"  ", b"\t", b"", b" \t"]);
    value.extend_from_slice(sep);
    value.extend(param);
    value.extend(std::iter::repeat_n(b' ', rng.below(2)));
    if rng.one_in(200) {
        // A huge one, around the cap.
        let fill = credentials::MAX_HEADER_LEN - 8 + rng.below(16);
        value = format!("Basic {}", "A".repeat(fill)).into_bytes();
    }
    value
}

/// `Authorization` headers read as the model reads them: the same scheme, user name and
/// secret, or the same refusal; a reason for every refusal, never holding the secret.
#[test]
fn authorization_headers_are_read_as_the_model_reads_them() {
    run("credentials", 20_000, |rng| {
        let value = authorization(rng);
        let want = credentials_model(&value);
        let got = match credentials::parse(&value) {
            Ok(Credentials::Basic { user, secret }) => {
                Read::Basic(user, secret.expose().to_string())
            }
            Ok(Credentials::Bearer { secret }) => Read::Bearer(secret.expose().to_string()),
            Err(CredentialError::NoPassword) => Read::NoPassword,
            Err(CredentialError::NoBearerToken) => Read::NoBearerToken,
            Err(e @ CredentialError::Malformed(_)) => {
                let reason = e.to_string();
                assert!(!reason.is_empty() && !reason.contains('\n'));
                Read::Malformed
            }
            Err(CredentialError::Missing) => panic!("a header is there"),
        };
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&value));
    });
}

// ---- token secrets ---------------------------------------------------------------------------

/// The checksum by the format's definition (first 30 bits of SHA-256 over what comes before
/// it, as 6 lowercase base32 characters), independent of `token`'s own code.
fn checksum_of(data: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data);
    let bits = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> 2;
    (0..6)
        .map(|i| {
            char::from(b"abcdefghijklmnopqrstuvwxyz234567"[((bits >> (5 * (5 - i))) & 31) as usize])
        })
        .collect()
}

/// The format's definition: `ggt_`, 12 of lowercase base32, `_`, 43 of base64url, `_`, and
/// the checksum of all before it. The id if `s` is a token.
fn token_model(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let base32 = |c: &u8| matches!(c, b'a'..=b'z' | b'2'..=b'7');
    let base64url = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_';
    let ok = b.len() == 67
        && b.starts_with(b"ggt_")
        && b[4..16].iter().all(base32)
        && b[16] == b'_'
        && b[17..60].iter().all(base64url)
        && b[60] == b'_'
        && b[61..].iter().all(base32)
        && checksum_of(&b[..60]).as_bytes() == &b[61..];
    ok.then(|| s[4..16].to_string())
}

/// A well-formed secret from the generator, its id and body drawn from `rng`.
fn secret_from(rng: &mut Rng) -> String {
    let id: String = (0..12)
        .map(|_| char::from(rng.pick(b"abcdefghijklmnopqrstuvwxyz234567")))
        .collect();
    let body: String = (0..43)
        .map(|_| {
            char::from(
                rng.pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
            )
        })
        .collect();
    let head = format!("ggt_{id}_{body}");
    let sum = checksum_of(head.as_bytes());
    format!("{head}_{sum}")
}

fn damaged(rng: &mut Rng, secret: &str) -> String {
    let mut chars: Vec<char> = secret.chars().collect();
    for _ in 0..rng.below(3) {
        let at = rng.below(chars.len().max(1));
        match rng.below(9) {
            0 if !chars.is_empty() => {
                chars.remove(at);
            }
            1 => chars.insert(at, rng.pick(&['a', '_', '-', 'é', ' ', '=', '7', 'Z'])),
            2 if !chars.is_empty() => {
                chars[at] = rng.pick(&['a', 'b', '2', '8', '_', '-', 'é', 'A', '1'])
            }
            3 if at + 1 < chars.len() => chars.swap(at, at + 1),
            4 => chars = chars.iter().map(char::to_ascii_uppercase).collect(),
            5 => chars.truncate(at),
            6 => chars.push(rng.pick(&[' ', '\n', 'x'])),
            7 => chars.insert(0, rng.pick(&[' ', 'g'])),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// A token damaged in every way (a character changed, lost, added, swapped, case, cut short,
/// pasted with more) is accepted exactly when the format's definition accepts it, and then
/// for its own id; what is refused is told apart without a panic; and a token in free text
/// is never repeated by the functions that keep secrets out of messages and logs.
#[test]
fn token_secrets_are_what_the_format_defines() {
    run("tokens", 8_000, |rng| {
        let secret = secret_from(rng);
        assert_eq!(
            token::parse(&secret).map(|id| id.to_string()),
            token_model(&secret)
        );
        let s = if rng.one_in(5) {
            secret.clone()
        } else {
            damaged(rng, &secret)
        };
        let got = token::parse(&s).map(|id| id.to_string());
        assert_eq!(got, token_model(&s), "{s:?}");
        if got.is_none() {
            let why = token::NotAToken::of(&s);
            assert!(!why.message().is_empty() && !why.message_for(true).is_empty());
        }
        // In free text, with its prefix or without it, the secret is never repeated.
        let bare = &secret[4..];
        let around = |rng: &mut Rng| rng.pick(&["", " ", "é", "x/", "'", "\u{200b}", "\n", "ref "]);
        for held in [secret.as_str(), bare] {
            let text = format!("{}{held}{}", around(rng), around(rng));
            assert!(credentials::holds_a_token(&text), "{text:?}");
            for shown in [
                credentials::without_secrets(&text),
                credentials::without_secrets_for_the_log(&text),
                credentials::without_secrets_in_an_answer(&text),
            ] {
                assert!(!shown.contains(&secret[16..60]), "{text:?} -> {shown:?}");
            }
        }
    });
}

// ---- proxy.toml ------------------------------------------------------------------------------

const RICH_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:21500"
git_prefix = "/scm"
trusted_proxies = ["10.0.0.0/8"]
header_read_timeout_seconds = 30
idle_timeout_seconds = 300
max_header_bytes = 65536
max_connections = 1024
max_connections_per_address = 32
shutdown_grace_seconds = 30
workers = 2

[server.tls]
cert = "tls/fullchain.pem"
key = "tls/privkey.pem"

[store]
path = "gitgate.db"

[upstream]
url = "http://127.0.0.1:21501/git"
identity_header = "X-Forwarded-User"
connect_timeout_seconds = 10
idle_timeout_seconds = 300
pool_idle_timeout_seconds = 50

[upstream.credentials]
scheme = "bearer"
env = "GITGATE_UPSTREAM_SECRET"

[auth]
realm = "gitgate"

[rate_limit]
enabled = true
capacity = 60
refill_per_second = 5.0
max_concurrent = 16

[auth_failures]
max = 10
window_seconds = 300
keep_in_audit = 1000
exempt = ["192.168.0.0/16"]

[metrics]
listen = "127.0.0.1:21502"
"#;

fn mutated_config(rng: &mut Rng, base: &str) -> String {
    const VALUES: &[&str] = &[
        "\"\"",
        "0",
        "-1",
        "1",
        "65535",
        "9223372036854775807",
        "-9223372036854775808",
        "99999999999999999999",
        "1e400",
        "nan",
        "inf",
        "-inf",
        "0.0",
        "1.5",
        "true",
        "[]",
        "[1, 2]",
        "[\"a\", \"b\"]",
        "{}",
        "{ a = 1 }",
        "\"é\"",
        "\"\\u0000\"",
        "\"a\\nb\"",
        "\"127.0.0.1:99999\"",
        "\"[::1]\"",
        "\"[fe80::1]:80\"",
        "\"[fe80::1%eth0]:80\"",
        "\"0.0.0.0:21500\"",
        "\"http://u:p@h/\"",
        "\"http://h:0/\"",
        "\"https://[::1]:443/g?x#y\"",
        "\"unix:/x\"",
        "\"ftp://h/\"",
        "\"/\"",
        "\"//\"",
        "\"/rest\"",
        "\"/../x\"",
        "\"~\"",
        "\"ggt_abcdefghijkl_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_abcdef\"",
        "\"basic\"",
        "\"Bearer x\"",
        "\"A B\"",
        "\"X-Forwarded-User\"",
        "\"Host\"",
        "\"x y\"",
        "\"10.0.0.1/8\"",
        "\"0.0.0.0/0\"",
        "1979-05-27T07:32:00Z",
        "'''\nx'''",
        "\"\"\"x\"\"\"",
        "127.0.0.1:8080",
        "x",
        "",
    ];
    const LINES: &[&str] = &[
        "[server]",
        "[[store]]",
        "[server.tls]",
        "[upstream.credentials]",
        "[metrics]",
        "[x]",
        "[upstream]",
        "[auth_failures]",
        "[rate_limit]",
        "store = \"x\"",
        "server.tls = 1",
        "upstream = [1]",
        "cgi = \"/usr/lib/git-core/git-http-backend\"",
        "project_root = \"repos\"",
        "url = \"http://127.0.0.1:1/\"",
        "socket = \"/run/x.sock\"",
        "ca_file = \"ca.pem\"",
        "system_roots = false",
        "max_processes = 0",
        "max_request_buffer_mib = 5000",
        "file = \"s\"",
        "env = \"1X\"",
        "scheme = \"digest\"",
        "listen = [\"a\", \"b\"]",
        "[server",
        "]]",
        "key = ",
        "= 1",
        "a.b.c = 1",
        "\"quoted key\" = 1",
    ];
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(4) {
        let n = lines.len().max(1);
        let at = rng.below(n);
        match rng.below(10) {
            0 if !lines.is_empty() => {
                lines.remove(at);
            }
            1 if !lines.is_empty() => {
                let line = lines[at].clone();
                lines.insert(rng.below(n), line);
            }
            2 if !lines.is_empty() => {
                let other = rng.below(n);
                lines.swap(at, other);
            }
            3 | 4 if !lines.is_empty() => {
                // A key's value replaced.
                if let Some((key, _)) = lines[at].clone().split_once('=') {
                    lines[at] = format!("{key}= {}", rng.pick(VALUES));
                }
            }
            5 => lines.insert(at, rng.pick(LINES).to_string()),
            6 if !lines.is_empty() => {
                // Uncommented (proxy.toml's commented keys), or commented out.
                let line = &lines[at];
                lines[at] = match line.trim_start().strip_prefix('#') {
                    Some(rest) => rest.trim_start().to_string(),
                    None => format!("# {line}"),
                };
            }
            7 if !lines.is_empty() => {
                // Characters inserted anywhere in a line.
                let line = &mut lines[at];
                let cut = (0..=line.len())
                    .filter(|&i| line.is_char_boundary(i))
                    .collect::<Vec<_>>();
                let i = cut[rng.below(cut.len())];
                line.insert_str(
                    i,
                    rng.pick(&[
                        "\"", "'", "[", "]", "=", "#", "\\", "é", "\u{0}", "\r", "\t", "{", "}",
                        ",", ".", "\u{feff}",
                    ]),
                );
            }
            8 if !lines.is_empty() => {
                // Cut short within a line.
                let line = &mut lines[at];
                let cut = (0..=line.len())
                    .filter(|&i| line.is_char_boundary(i))
                    .collect::<Vec<_>>();
                line.truncate(cut[rng.below(cut.len())]);
            }
            _ => {}
        }
    }
    let mut text = lines.join(if rng.one_in(10) { "\r\n" } else { "\n" });
    if rng.one_in(2) {
        text.push('\n');
    }
    text
}

/// `proxy.toml` (the shipped one, and one with every section) mutated at random: a config, or
/// an error of one line that names the file; never a panic.
#[test]
fn a_mutated_config_is_read_or_refused_in_one_line_never_a_panic() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"))
        .expect("proxy.toml");
    let path = std::path::Path::new("/etc/gitgate/proxy.toml");
    let mut refused = 0u64;
    run("config", 2_000, |rng| {
        let base = if rng.one_in(2) {
            shipped.as_str()
        } else {
            RICH_CONFIG
        };
        let text = mutated_config(rng, base);
        match gitgate::config::Config::parse(path, &text) {
            Ok(_) => {}
            Err(e) => {
                refused += 1;
                let message = e.message.trim();
                assert!(!message.is_empty(), "no reason for {text:?}");
                assert!(!message.contains('\n'), "{message:?} for {text:?}");
                assert_eq!(e.file, path);
            }
        }
    });
    if env_number("GITGATE_RANDOM_SEED").is_none() {
        assert!(
            refused >= 100,
            "only {refused} mutated configs were refused"
        );
    }
}

// ---- the decision: policy::authorize behind classify --------------------------------------------

const NOW: i64 = 1_790_812_800_000;

/// A repository as the model names it: the client's path decoded once, the endpoint taken off
/// its end, and one `.git` off the repository's last segment.
fn model_repo(path: &str) -> Option<String> {
    let decoded = String::from_utf8(decode(path)?).ok()?;
    let rest = decoded.strip_prefix('/')?;
    let repo = [
        "/info/refs",
        "/git-upload-pack",
        "/git-receive-pack",
        "/HEAD",
    ]
    .iter()
    .find_map(|e| rest.strip_suffix(e))?;
    Some(repo.strip_suffix(".git").unwrap_or(repo).to_string())
}

#[derive(Debug, PartialEq)]
enum Decision {
    Allowed(String),
    Unauthenticated,
    Forbidden,
}

/// The README's rules ("Tokens, users and grants"), written again: a dead token (revoked,
/// expired) or owner (disabled), or a Basic user name that is not the personal token's owner's
/// (in any case; the empty one included) → 401. Then, from outside the token's networks, or
/// without enough permission → 403: a personal token has the lower of its `REPO_*` and its
/// owner's highest grant on the repository or its project (admins: ADMIN everywhere); a
/// project or repository token has its `REPO_*` inside its scope (a project covers the
/// repositories whose first segment it is), nothing outside, and must be named for the
/// backend. Fetch needs read, push write.
fn decision_model(
    r: &AuthRecord,
    basic_user: Option<&str>,
    repo: &str,
    access: Access,
    from: IpAddr,
) -> Decision {
    let t = &r.token;
    if t.revoked_at.is_some() || t.expires_at.is_some_and(|e| e <= NOW) {
        return Decision::Unauthenticated;
    }
    let needed = if access == Access::Write {
        Level::Write
    } else {
        Level::Read
    };
    let project = repo.split('/').next().unwrap();
    let covers = |target: &Target| match target {
        Target::Project(p) => p == project,
        Target::Repo(path) => path.as_str() == repo,
    };
    let in_networks =
        t.allowed_networks.is_empty() || t.allowed_networks.iter().any(|n| n.contains(from));
    match t.kind {
        TokenKind::Personal => {
            let Some(owner) = &r.owner else {
                return Decision::Unauthenticated;
            };
            if basic_user.is_some_and(|u| u.to_lowercase() != owner.slug) || !owner.active {
                return Decision::Unauthenticated;
            }
            if !in_networks {
                return Decision::Forbidden;
            }
            let held = if owner.role == Role::Admin {
                Some(Level::Admin)
            } else {
                owner
                    .grants
                    .iter()
                    .filter(|(g, _)| covers(g))
                    .map(|(_, l)| *l)
                    .max()
            };
            match held {
                Some(held) if held.min(t.permissions.repo()) >= needed => {
                    Decision::Allowed(owner.slug.clone())
                }
                _ => Decision::Forbidden,
            }
        }
        TokenKind::Project | TokenKind::Repository => {
            let Some(scope) = &t.scope else {
                return Decision::Unauthenticated;
            };
            let named = !t.name.is_empty() && t.name.trim() == t.name && r.unusable_name.is_none();
            if in_networks && covers(scope) && named && t.permissions.repo() >= needed {
                Decision::Allowed(t.name.clone())
            } else {
                Decision::Forbidden
            }
        }
    }
}

const PROJECTS: &[&str] = &["team", "Team", "ops", "teamx"];
const REPOS: &[&str] = &[
    "team/app",
    "team/App",
    "team/lib",
    "team/tools/app",
    "ops/db",
    "teamx/app",
    "Team/app",
];

fn target(rng: &mut Rng) -> Target {
    let s = if rng.one_in(2) {
        rng.pick(PROJECTS)
    } else {
        rng.pick(REPOS)
    };
    let s = if !s.contains('/') || rng.one_in(2) {
        s.to_string()
    } else {
        format!("{s}.git")
    };
    Target::parse(&s).unwrap()
}

fn level(rng: &mut Rng) -> Level {
    rng.pick(&[Level::Read, Level::Write, Level::Admin])
}

fn auth_record(rng: &mut Rng) -> AuthRecord {
    let kind = rng.pick(&[
        TokenKind::Personal,
        TokenKind::Project,
        TokenKind::Repository,
    ]);
    let scope = match kind {
        TokenKind::Personal => None,
        TokenKind::Project => Some(Target::Project(rng.pick(PROJECTS).to_string())),
        TokenKind::Repository => Some(Target::parse(rng.pick(REPOS)).unwrap()),
    };
    let scope = if rng.one_in(30) { None } else { scope };
    let repo_level = level(rng);
    let names = match (kind, rng.below(3)) {
        (TokenKind::Repository, _) | (_, 0) => {
            vec![format!("REPO_{}", repo_level.as_str().to_uppercase())]
        }
        (_, 1) => vec![format!("PROJECT_{}", repo_level.as_str().to_uppercase())],
        _ => {
            let p = rng.pick(
                &[Level::Read, Level::Write, Level::Admin]
                    .iter()
                    .filter(|l| **l <= repo_level)
                    .copied()
                    .collect::<Vec<_>>(),
            );
            vec![
                format!("PROJECT_{}", p.as_str().to_uppercase()),
                format!("REPO_{}", repo_level.as_str().to_uppercase()),
            ]
        }
    };
    let permissions = TokenPermissions::from_names(kind, &names).unwrap();
    let networks: Vec<gitgate::network::Cidr> = match rng.below(4) {
        0 => vec!["10.0.0.0/8".parse().unwrap()],
        1 => vec![
            "192.168.1.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        _ => vec![],
    };
    let owner = (kind == TokenKind::Personal && !rng.one_in(30)).then(|| Owner {
        slug: rng.pick(&["alice", "bob"]).to_string(),
        role: if rng.one_in(6) {
            Role::Admin
        } else {
            Role::User
        },
        active: !rng.one_in(8),
        grants: (0..rng.below(4))
            .map(|_| (target(rng), level(rng)))
            .collect(),
    });
    AuthRecord {
        token: TokenRecord {
            id: "abcdefghijkl".into(),
            kind,
            name: rng
                .pick(&["laptop", "ci", "ci ", " ci", "", "deploy-bot"])
                .to_string(),
            owner: owner.as_ref().map(|o| o.slug.clone()),
            scope,
            permissions,
            created_at: 0,
            created_by: "admin".into(),
            expires_at: rng.pick(&[None, None, Some(NOW - 1), Some(NOW), Some(NOW + 1)]),
            last_used_at: None,
            last_used_addr: None,
            revoked_at: if rng.one_in(10) { Some(NOW - 5) } else { None },
            rotated_at: None,
            allowed_networks: networks,
        },
        secret_hash: vec![],
        previous: None,
        owner,
        unusable_name: rng.one_in(15).then(|| "that is a user's name".to_string()),
        queued_use: Default::default(),
        previous_said: Default::default(),
    }
}

/// For random users, grants, tokens, addresses and requests (paths spelled every way git and
/// people spell them), gitgate's decision is the model's: the same outcome, as the same
/// identity; every refusal has a one-line reason.
#[test]
fn decisions_are_the_models() {
    let mut allowed = 0u64;
    run("decisions", 20_000, |rng| {
        let record = auth_record(rng);
        let repo = rng.pick(REPOS);
        let spelled: String = match rng.below(4) {
            0 => format!("{repo}.git"),
            1 => repo.replacen('a', "%61", 1),
            2 => repo.replacen('/', "/./", 1),
            _ => repo.to_string(),
        };
        let (method, path, query) = rng.pick(&[
            ("GET", "/info/refs", Some("service=git-upload-pack")),
            ("GET", "/info/refs", Some("service=git-receive-pack")),
            ("GET", "/info/refs", None),
            ("POST", "/git-upload-pack", None),
            ("POST", "/git-receive-pack", None),
            ("HEAD", "/HEAD", None),
        ]);
        let raw = format!("/{spelled}{path}");
        let req = match git::classify(method, &raw, query, "/") {
            Ok(req) => req,
            Err(e) => {
                // Only a path a plain backend resolves otherwise is refused here.
                assert_ne!(plain_resolve(&raw), Some(raw.clone()), "{raw}: {e}");
                return;
            }
        };
        assert_eq!(
            model_repo(&raw).as_deref(),
            Some(req.repo.as_str()),
            "{raw}"
        );
        let from: IpAddr = rng
            .pick(&[
                "10.1.2.3",
                "192.168.1.9",
                "127.0.0.1",
                "2001:db8::1",
                "::ffff:10.0.0.1",
            ])
            .parse()
            .unwrap();
        let user = rng.pick(&[
            None,
            Some(""),
            Some("alice"),
            Some("Alice"),
            Some("bob"),
            Some("ci-runner"),
            Some("ALICE"),
        ]);
        let want = decision_model(&record, user, req.repo.as_str(), req.access, from);
        let got = match policy::authorize(&record, user, &req.repo, req.access, from, NOW) {
            Ok(identity) => {
                allowed += 1;
                assert_eq!(identity.token_id, record.token.id);
                Decision::Allowed(identity.user)
            }
            Err(deny) => {
                let reason = deny.message();
                assert!(
                    !reason.trim().is_empty() && !reason.contains('\n'),
                    "{deny:?}"
                );
                match deny {
                    Deny::Unauthenticated(..) => Decision::Unauthenticated,
                    Deny::Forbidden(_) => Decision::Forbidden,
                }
            }
        };
        assert_eq!(
            got, want,
            "{method} {raw} as {user:?} from {from}: {record:#?}"
        );
    });
    if env_number("GITGATE_RANDOM_SEED").is_none() {
        assert!(allowed >= 500, "only {allowed} requests were allowed");
    }
}

// ---- git http-backend: the repository served is the one authorised -----------------------------

/// Runs `git http-backend` as a CGI server runs it, for a dumb `GET <path>` under `root`:
/// the `HEAD` it serves (each test repository's names a branch of its own), or `None` when it
/// serves none.
fn http_backend_serves(root: &std::path::Path, path_info: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", "GET")
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", "")
        .env("HOME", root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("git http-backend runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head
        .lines()
        .any(|l| l.starts_with("Status:") && !l.contains("200"))
    {
        return None;
    }
    body.strip_prefix("ref: refs/heads/")
        .map(|b| b.trim().to_string())
}

/// git's output, once it has succeeded.
fn run_git(args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A repository at `dir` (bare, or a working tree), whose `HEAD` is the branch `id`, with a
/// commit (git http-backend says nothing of a `HEAD` without one).
fn repository(root: &std::path::Path, dir: &str, bare: bool, id: &str) {
    let at = root.join(dir);
    let at = at.to_str().unwrap();
    let git_dir = if bare {
        at.to_string()
    } else {
        format!("{at}/.git")
    };
    run_git(
        &(if bare {
            vec!["init", "-q", "--bare", at]
        } else {
            vec!["init", "-q", at]
        }),
    );
    let tree = run_git(&[
        "--git-dir",
        &git_dir,
        "hash-object",
        "-t",
        "tree",
        "-w",
        "/dev/null",
    ]);
    let commit = run_git(&["--git-dir", &git_dir, "commit-tree", &tree, "-m", id]);
    let branch = format!("refs/heads/{id}");
    run_git(&["--git-dir", &git_dir, "update-ref", &branch, &commit]);
    run_git(&["--git-dir", &git_dir, "symbolic-ref", "HEAD", &branch]);
}

/// For requests spelled every way, against folders laid out every way (both spellings, a
/// working tree, `*.git.git`, a repository inside a working tree), `git http-backend` itself
/// serves the repository gitgate authorised: with the embedded runner, the directory it
/// chooses; with an HTTP upstream, where the client's spelling goes, whenever the upstream
/// keeps to what the README asks (one directory per name, no `*.git.git`).
#[test]
fn git_http_backend_serves_the_repository_that_was_authorised() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // (folder, bare) — the folder is also the id its HEAD names, `/` written `-`.
    let layout: &[(&str, bool)] = &[
        ("team/app.git", true),
        ("team/lib", true),
        ("team/w", false),
        ("team/tools/app.git", true),
        ("ops/db.git", true),
        ("team/both.git", true),
        ("team/both", true),
        ("team/x.git.git", true),
        ("team/y.git", true),
        ("team/y.git.git", true),
        ("team/w/inner.git", true),
    ];
    for (dir, bare) in layout {
        repository(root, dir, *bare, &dir.replace('/', "-"));
    }
    // The names a repository goes by for the README's upstream: not one of those ambiguous.
    let clean = |repo: &str| !["team/both", "team/x", "team/y", "team/w/inner"].contains(&repo);
    let backend = gitgate::upstream::CgiBackend::new(
        "/usr/lib/git-core/git-http-backend".into(),
        root.to_path_buf(),
    );
    let mut served = 0u64;
    run("http_backend", 300, |rng| {
        let name = rng.pick(&[
            "team/app",
            "team/lib",
            "team/w",
            "team/tools/app",
            "ops/db",
            "team/both",
            "team/x",
            "team/x.git",
            "team/y",
            "team/w/inner",
            "team/nope",
            "team/tools",
            "team",
        ]);
        let spelled = if rng.one_in(2) {
            format!("{name}.git")
        } else {
            name.to_string()
        };
        let spelled: String = spelled
            .bytes()
            .map(|b| {
                if b != b'/' && rng.one_in(6) {
                    escape(rng, b)
                } else {
                    char::from(b).to_string()
                }
            })
            .collect();
        let raw = format!("/{spelled}/HEAD");
        let Ok(req) = git::classify("GET", &raw, None, "/") else {
            return;
        };
        let repo = req.repo.as_str();
        // The embedded runner: the directory it names, and what git serves from it.
        match backend.repo_dir(repo) {
            gitgate::upstream::cgi::RepoDir::NotServed(_) => {}
            dir => {
                let with_git = dir == gitgate::upstream::cgi::RepoDir::WithGit;
                let path = req.backend_path_spelled(with_git);
                let want =
                    format!("{repo}{}", if with_git { ".git" } else { "" }).replace('/', "-");
                served += 1;
                assert_eq!(
                    http_backend_serves(root, &path).as_deref(),
                    Some(want.as_str()),
                    "{raw}: gitgate authorised {repo} and gave git {path}"
                );
            }
        }
        // An HTTP upstream: the client's spelling, decoded once, as a web server passes it.
        if clean(repo) {
            if let Some(got) = http_backend_serves(root, &req.backend_path) {
                let got_repo = got.strip_suffix(".git").unwrap_or(&got);
                assert_eq!(
                    got_repo,
                    repo.replace('/', "-"),
                    "{raw}: gitgate authorised {repo}"
                );
            }
        }
    });
    if env_number("GITGATE_RANDOM_SEED").is_none() {
        assert!(served >= 50, "only {served} requests were served");
    }
}
