//! A real `gitgate serve` for end-to-end tests that speak raw HTTP over TCP: a temp folder with
//! a bare repository `team/app.git`, a store with user `alice` (write grant on `team`) and her
//! tokens, and a CGI wrapper that appends a line to a counter file before `exec`ing
//! `git http-backend`, so a test can prove which requests reached the backend.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BACKEND: &str = "/usr/lib/git-core/git-http-backend";

pub struct Server {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub addr: SocketAddr,
    pub write_token: String,
    pub read_token: String,
}

pub fn gitgate(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitgate"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gitgate");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gitgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Server {
    /// Set up the folder and start the server; `extra` is appended to proxy.toml.
    pub fn start(extra: &str) -> Server {
        Server::start_with("", extra)
    }

    /// Like [`Server::start`], with `server_extra` lines inside `[server]`.
    pub fn start_with(server_extra: &str, extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("repos/team")).unwrap();
        let git = Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(root.join("repos/team/app.git"))
            .status()
            .unwrap();
        assert!(git.success());
        let wrapper = root.join("backend.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$REQUEST_METHOD $PATH_INFO?$QUERY_STRING\" >> '{}'\nexec {BACKEND}\n",
                root.join("backend.count").display()
            ),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = root.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[store]\npath = \"gitgate.db\"\n\
                 [upstream]\ncgi = \"backend.sh\"\nproject_root = \"repos\"\n{extra}"
            ),
        )
        .unwrap();
        gitgate(
            &config,
            &["user", "add", "alice", "--password-stdin"],
            Some("pw\n"),
        );
        gitgate(&config, &["grant", "add", "alice", "team", "write"], None);
        let write_token = gitgate(
            &config,
            &[
                "token",
                "create",
                "--user",
                "alice",
                "--name",
                "w",
                "--permission",
                "REPO_WRITE",
                "--password-stdin",
            ],
            Some("pw\n"),
        );
        let read_token = gitgate(
            &config,
            &[
                "token",
                "create",
                "--user",
                "alice",
                "--name",
                "r",
                "--permission",
                "REPO_READ",
                "--password-stdin",
            ],
            Some("pw\n"),
        );
        let log = std::fs::File::create(root.join("serve.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gitgate"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("GITGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr = wait_for_listen(&root.join("serve.log"));
        Server {
            dir,
            child,
            addr,
            write_token,
            read_token,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.path("proxy.toml")
    }

    /// Requests that reached the backend so far.
    pub fn backend_hits(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("backend.count"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
    }

    /// Send `bytes` on a fresh connection and read everything the server sends back.
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        raw_exchange(self.addr, bytes)
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_listen(log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("listening on http://") {
            let rest = &text[at + "listening on http://".len()..];
            let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            return addr.parse().expect("listen address");
        }
        assert!(Instant::now() < deadline, "server did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything (huge headers): a failed
    // write is fine, the answer is what counts.
    // The write side stays open: hyper closes a connection whose client half-closed it.
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
    let text = String::from_utf8_lossy(resp);
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The value of header `name` in the first response, if present.
pub fn header(resp: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(resp);
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

pub fn basic(user: &str, secret: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
}
