//! Shared by `tests/rest.rs` and `tests/lifecycle_cli.rs`: a temporary gitgate installation
//! (config, store, a bare repository), the real `gitgate` binary for the CLI and for `serve`, a
//! tiny HTTP/1.1 client over `std::net::TcpStream`, and the real `git`.
//!
//! The HTTP client is hand-written (a few dozen lines) rather than a new dev-dependency: the API
//! answers small JSON bodies, and the tests want to see exact statuses and headers.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_gitgate");
pub const PW: &str = "correct horse";
pub const API: &str = "/rest/access-tokens/1.0";

/// A temporary installation: `proxy.toml`, `gitgate.db`, `repos/team/app.git` (one commit).
pub struct Install {
    pub dir: tempfile::TempDir,
}

impl Install {
    pub fn new() -> Install {
        Install::new_with("")
    }

    /// An install whose proxy.toml ends with `extra` (more sections).
    pub fn new_with(extra: &str) -> Install {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("repos/team")).unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        std::fs::write(
            root.join("proxy.toml"),
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"gitgate.db\"\n\
             [upstream]\ncgi = \"/usr/lib/git-core/git-http-backend\"\nproject_root = \"repos\"\n\
             [auth]\nrealm = \"gitgate\"\n"
                .to_string()
                + extra,
        )
        .unwrap();
        let install = Install { dir };
        let bare = root.join("repos/team/app.git");
        install.git_ok(&root, &["init", "-q", "--bare", bare.to_str().unwrap()]);
        let work = root.join("seed");
        install.git_ok(&root, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
        std::fs::write(work.join("README"), "hello\n").unwrap();
        install.git_ok(&work, &["add", "README"]);
        install.git_ok(&work, &["commit", "-q", "-m", "first"]);
        install.git_ok(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        install.git_ok(&bare, &["symbolic-ref", "HEAD", "refs/heads/main"]);
        install
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run `gitgate --config proxy.toml ARGS`, with `stdin` fed in.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(self.path().join("proxy.toml"))
            .args(args)
            .env_remove("GITGATE_CONFIG")
            .env_remove("GITGATE_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Like [`Install::cli`], but the command must succeed; returns stdout.
    pub fn cli_ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "gitgate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Like [`Install::cli`], but the command must fail; returns stderr.
    pub fn cli_err(&self, args: &[&str], stdin: &str) -> String {
        let out = self.cli(args, stdin);
        assert!(!out.status.success(), "gitgate {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    /// Add a user with password [`PW`].
    pub fn add_user(&self, name: &str, admin: bool) {
        let mut args = vec!["user", "add", name, "--password-stdin"];
        if admin {
            args.push("--admin");
        }
        self.cli_ok(&args, &format!("{PW}\n"));
    }

    /// `git ARGS` in `cwd`, isolated from the machine's git configuration.
    pub fn git(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new("git")
            .current_dir(cwd)
            .args(args)
            .env("HOME", self.path().join("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .output()
            .unwrap()
    }

    pub fn git_ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self.git(cwd, args);
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Start `gitgate serve` on a free port.
    pub fn serve(&self) -> Server {
        let log = self.path().join("serve.log");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.path().join("proxy.toml"))
            .arg("serve")
            .env_remove("GITGATE_CONFIG")
            .env("GITGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if let Some(i) = text.find("listening on http://") {
                let rest = &text[i + "listening on http://".len()..];
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                server.port = addr.rsplit(':').next().unwrap().parse().unwrap();
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("gitgate serve exited with {status}: {text}");
            }
            assert!(
                Instant::now() < deadline,
                "gitgate serve did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `gitgate serve`; stopped when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The message of a Bitbucket-shaped error, checking the shape exactly.
    pub fn error_message(&self) -> String {
        let v = self.json();
        let errors = v["errors"].as_array().expect("an \"errors\" array");
        assert_eq!(errors.len(), 1, "{v}");
        let e = errors[0].as_object().unwrap();
        let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["context", "exceptionName", "message"], "{v}");
        assert!(e["context"].is_null());
        assert!(e["exceptionName"].as_str().is_some_and(|n| !n.is_empty()));
        e["message"].as_str().unwrap().to_string()
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

impl Server {
    /// One HTTP/1.1 request on a fresh connection.
    pub fn request(&self, method: &str, path: &str, auth: Auth, body: &str) -> Resp {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        match auth {
            Auth::None => {}
            Auth::Basic(user, pw) => {
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
                head.push_str(&format!("Authorization: Basic {b}\r\n"));
            }
            Auth::Bearer(t) => head.push_str(&format!("Authorization: Bearer {t}\r\n")),
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // A server may answer (413) before reading a large body and close: ignore write errors.
        let _ = stream.write_all(body.as_bytes());
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        parse_response(&raw)
    }

    /// A REST call as `user` with [`PW`].
    pub fn api(&self, method: &str, path: &str, user: &str, body: &str) -> Resp {
        self.request(method, &format!("{API}{path}"), Auth::Basic(user, PW), body)
    }

    /// The clone URL of team/app with credentials.
    pub fn url(&self, user: &str, secret: &str) -> String {
        format!(
            "http://{user}:{secret}@127.0.0.1:{}/team/app.git",
            self.port
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..eol])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap();
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}
