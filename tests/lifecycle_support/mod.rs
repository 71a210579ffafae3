//! The fixture of `tests/rest.rs` and `tests/lifecycle_cli.rs`, built on the shared harness
//! (`tests/common`): an installation with one seeded repository `team/app`, users whose password
//! is [`PW`], and a small client for the management API over the harness's raw HTTP/1.1.
//!
//! The HTTP client is hand-written rather than a new dev-dependency: the API answers small JSON
//! bodies, and the tests want to see exact statuses and headers.

#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

pub use crate::common::Server;
use crate::common::{self, Run, Sandbox, Setup};

pub const PW: &str = "correct horse";
pub const API: &str = "/rest/access-tokens/1.0";

/// A temporary installation: config, store, `repos/team/app.git` (one commit on `main`).
pub struct Install {
    sandbox: Sandbox,
}

impl Install {
    pub fn new() -> Install {
        Install::new_with("")
    }

    /// An install whose config ends with `extra` (more sections).
    pub fn new_with(extra: &str) -> Install {
        let sandbox = Sandbox::with(Setup {
            extra: extra.to_owned(),
            ..Setup::default()
        });
        sandbox.create_repo("team/app");
        Install { sandbox }
    }

    pub fn path(&self) -> &Path {
        self.sandbox.root()
    }

    /// Run `gitgate --config <install> ARGS`, with `stdin` fed in.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Run {
        self.sandbox.cli_stdin(args, stdin)
    }

    /// Like [`Install::cli`], but the command must succeed; returns stdout.
    #[track_caller]
    pub fn cli_ok(&self, args: &[&str], stdin: &str) -> String {
        self.cli(args, stdin).ok().to_owned()
    }

    /// Like [`Install::cli`], but the command must fail; returns stderr.
    #[track_caller]
    pub fn cli_err(&self, args: &[&str], stdin: &str) -> String {
        let run = self.cli(args, stdin);
        assert!(!run.success(), "expected failure: {run}");
        run.stderr
    }

    /// Add a user with password [`PW`].
    #[track_caller]
    pub fn add_user(&self, name: &str, admin: bool) {
        if admin {
            self.sandbox.add_admin(name, PW);
        } else {
            self.sandbox.add_user(name, PW);
        }
    }

    /// `git ARGS` in `cwd`, isolated from the machine's git configuration.
    pub fn git(&self, cwd: &Path, args: &[&str]) -> Run {
        self.sandbox.git(cwd, args)
    }

    #[track_caller]
    pub fn git_ok(&self, cwd: &Path, args: &[&str]) -> String {
        self.git(cwd, args).ok().to_owned()
    }

    /// Start `gitgate serve` on a free port.
    pub fn serve(&self) -> Server {
        self.sandbox.serve_with_env(&[("GITGATE_LOG", "info")])
    }
}

/// An HTTP answer with a text body.
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

/// Calls to the management API of a running server.
pub trait Api {
    /// One HTTP/1.1 request on a fresh connection.
    fn request(&self, method: &str, path: &str, auth: Auth, body: &str) -> Resp;

    /// A REST call as `user` with [`PW`].
    fn api(&self, method: &str, path: &str, user: &str, body: &str) -> Resp {
        self.request(method, &format!("{API}{path}"), Auth::Basic(user, PW), body)
    }
}

impl Api for Server {
    fn request(&self, method: &str, path: &str, auth: Auth, body: &str) -> Resp {
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
                head.push_str(&format!("Authorization: {}\r\n", common::basic(user, pw)))
            }
            Auth::Bearer(t) => head.push_str(&format!("Authorization: Bearer {t}\r\n")),
        }
        head.push_str("\r\n");
        head.push_str(body);
        let resp = common::try_raw_http(self.port, head.as_bytes())
            .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", self.log_text()));
        assert_ne!(
            resp.status,
            0,
            "no HTTP answer: {}\n--- server log ---\n{}",
            resp.text(),
            self.log_text()
        );
        Resp {
            status: resp.status,
            body: String::from_utf8(resp.body).expect("a UTF-8 body"),
            headers: resp.headers,
        }
    }
}
