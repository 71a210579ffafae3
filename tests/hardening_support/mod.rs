//! The fixture of `tests/hardening.rs` and `tests/hostile.rs`, built on the shared harness
//! (`tests/common`): a real `gitgate serve` with an empty bare repository `team/app.git`, user
//! `alice` (write grant on `team`) and two of her tokens, behind the harness's counting backend
//! wrapper, so a test can prove which requests reached `git http-backend`. The tests speak raw
//! bytes over TCP; the helpers here send them and read one response back.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::common::{self, Sandbox, Setup};

pub use crate::common::basic;

/// The password of `alice`.
const PW: &str = "pw";

pub struct Server {
    sandbox: Sandbox,
    server: common::Server,
    pub addr: SocketAddr,
    pub write_token: String,
    pub read_token: String,
}

/// `gitgate --config CONFIG ARGS`, which must succeed; returns its trimmed stdout.
#[track_caller]
pub fn gitgate(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = common::gitgate_command(config);
    cmd.args(args);
    common::run(cmd, stdin).ok().trim().to_string()
}

impl Server {
    /// Set up the sandbox and start the server; `extra` is appended to the config.
    pub fn start(extra: &str) -> Server {
        Server::start_with("", extra)
    }

    /// Like [`Server::start`], with more variables in gitgate's environment.
    pub fn start_env(extra: &str, env: &[(&str, &str)]) -> Server {
        Server::start_full("", extra, env)
    }

    /// Like [`Server::start`], with `server_extra` lines inside `[server]`.
    pub fn start_with(server_extra: &str, extra: &str) -> Server {
        Server::start_full(server_extra, extra, &[])
    }

    fn start_full(server_extra: &str, extra: &str, env: &[(&str, &str)]) -> Server {
        let sandbox = Sandbox::with(Setup {
            server_extra: server_extra.to_owned(),
            extra: extra.to_owned(),
            ..Setup::default()
        });
        let bare = sandbox.bare("team/app");
        sandbox
            .git(
                sandbox.root(),
                &["init", "-q", "--bare", bare.to_str().unwrap()],
            )
            .ok();
        sandbox.add_user("alice", PW);
        sandbox.grant("alice", "team", "write");
        let write_token = sandbox
            .personal_token("alice", PW, "w", &["REPO_WRITE"])
            .secret;
        let read_token = sandbox
            .personal_token("alice", PW, "r", &["REPO_READ"])
            .secret;
        let mut env = env.to_vec();
        env.push(("GITGATE_LOG", "info"));
        let server = sandbox.serve_with_env(&env);
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
        Server {
            sandbox,
            server,
            addr,
            write_token,
            read_token,
        }
    }

    /// A file in the sandbox (`gitgate.db`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.sandbox.root().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.sandbox.config()
    }

    /// Requests that reached the backend so far.
    pub fn backend_hits(&self) -> Vec<String> {
        self.sandbox.hits()
    }

    pub fn log(&self) -> String {
        self.server.log_text()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Send `bytes` on a fresh connection and read everything the server sends back.
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        raw_exchange(self.addr, bytes)
    }

    /// Stop the server as an operator does (SIGTERM, and a clean exit) and start it again on
    /// the same sandbox (on a new port).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stop the server as an operator does: SIGTERM, and a clean exit.
    pub fn stop(&mut self) {
        let status = self.server.stop_within(Duration::from_secs(30));
        assert!(status.success(), "gitgate's stop: {status}");
    }

    /// Kill the server (SIGKILL: the OOM killer, a stop that ran out of time): no stop of its
    /// own runs.
    pub fn kill(&mut self) {
        self.server.stop();
    }

    /// Start the server again on the same sandbox (on a new port) after [`Server::stop`].
    pub fn start_again(&mut self) {
        self.server = self.sandbox.serve_with_env(&[("GITGATE_LOG", "info")]);
        self.addr = SocketAddr::from(([127, 0, 0, 1], self.server.port));
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.server.alive()
    }
}

/// Send `bytes` and read until one whole response has arrived (or the server closed). Unlike
/// [`common::raw_http`] this neither needs `Connection: close` nor half-closes: hyper closes a
/// connection whose client half-closed it, and some cases test what happens without.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything (huge headers): a failed
    // write is fine, the answer is what counts.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while !complete(&out) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    out
}

/// Whether `resp` holds a whole response: headers and a `Content-Length` body, or a chunked
/// body's last chunk.
fn complete(resp: &[u8]) -> bool {
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let body = &resp[end + 4..];
    if let Some(len) = header(resp, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= len;
    }
    body.ends_with(b"0\r\n\r\n")
}

/// The status code of the first response in `resp`, or 0 if there is none.
pub fn status(resp: &[u8]) -> u16 {
    common::parse_response(resp).status
}

/// The value of header `name` in the first response, if present.
pub fn header(resp: &[u8], name: &str) -> Option<String> {
    common::parse_response(resp).header(name).map(str::to_owned)
}
