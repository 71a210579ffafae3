//! End to end in front of a real third-party git server: the real `git` client → gitgate →
//! nginx → fcgiwrap → `git http-backend`, all on loopback, each test with its own ports and
//! temporary folder (see `fixtures/nginx/` for the nginx config template).
//!
//! Without nginx or fcgiwrap the tests print a notice and pass, except under CI (`CI=true`),
//! where a missing nginx is a failure: `.ci/run` installs both.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{basic, find, fixture, Server};

const PASSWORD: &str = "correct horse";
const UPSTREAM_SECRET: &str = "upstream-s3cret";

// ---------------------------------------------------------------------------------------------
// Tools

struct Tools {
    nginx: PathBuf,
    fcgiwrap: PathBuf,
    backend: PathBuf,
}

/// The tools, or `None` (with a notice) when they are missing outside CI.
fn tools(test: &str) -> Option<Tools> {
    let nginx = find("nginx");
    let fcgiwrap = find("fcgiwrap");
    if nginx.is_none() || fcgiwrap.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but nginx or fcgiwrap is not installed; .ci/run must install them");
        }
        eprintln!(
            "NOTICE: skipping {test}: nginx and fcgiwrap are needed (apt-get install nginx fcgiwrap)"
        );
        return None;
    }
    Some(Tools {
        nginx: nginx.unwrap(),
        fcgiwrap: fcgiwrap.unwrap(),
        backend: common::git_http_backend().to_path_buf(),
    })
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// gitgate's log once it holds `what` (within 10 s): for lines written after "listening", such
/// as the start's readiness report.
fn log_with(g: &Server, what: &str) -> String {
    let mut log = String::new();
    wait_for(what, Duration::from_secs(10), || {
        log = g.log_text();
        log.contains(what)
    });
    log
}

// ---------------------------------------------------------------------------------------------
// nginx + fcgiwrap + git http-backend

struct Nginx {
    dir: PathBuf,
    port: u16,
    tls_port: u16,
    conf: PathBuf,
    child: Option<Child>,
    fcgiwrap: Child,
    nginx_bin: PathBuf,
    /// Its TCP ports while it is down between `stop_nginx_holding_its_ports` and
    /// `start_nginx` (see `common::hold_port`).
    held: Vec<common::ClosedPort>,
}

impl Nginx {
    fn start(tools: &Tools, dir: &Path, repos: &Path) -> Nginx {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let sock = dir.join("fcgi.sock");
        // The backend, behind a wrapper tests switch with flag files: `slow` holds each POST
        // for 2 s; `anonymous` leaves REMOTE_USER out, as a web server does that is not told
        // to make gitgate's identity header that variable; `cut` lets a POST's answer through to its 100,000th byte only, the backend
        // dying there of a broken pipe (as one killed mid-answer) while fcgiwrap and nginx end
        // the answer cleanly; `packdies` has upload-pack's pack-objects fail after 100,000 bytes
        // of its pack (through `uploadpack.packObjectsHook`, which git takes from its command
        // line's config only), upload-pack then saying so on side-band channel 3 and dying.
        let pack_dies = dir.join("pack-dies.sh");
        std::fs::write(&pack_dies, "#!/bin/sh\n\"$@\" | head -c 100000\nexit 1\n").unwrap();
        let wrapper = dir.join("backend.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif [ -f '{d}/anonymous' ]; then unset REMOTE_USER; fi\n\
                 if [ \"$REQUEST_METHOD\" = POST ] && [ -f '{d}/slow' ]; then touch '{d}/started'; sleep 2; fi\n\
                 if [ \"$REQUEST_METHOD\" = POST ] && [ -f '{d}/cut' ]; then '{b}' | head -c 100000; exit 0; fi\n\
                 if [ \"$REQUEST_METHOD\" = POST ] && [ -f '{d}/packdies' ]; then \
                 GIT_CONFIG_PARAMETERS=\"'uploadpack.packobjectshook'='{p}'\" exec '{b}'; fi\n\
                 exec '{b}'\n",
                d = dir.display(),
                b = tools.backend.display(),
                p = pack_dies.display()
            ),
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&wrapper)
            .arg(&pack_dies)
            .status()
            .unwrap();

        // In a process group of its own: `-c 4` forks workers, and all of them must go with it.
        let fcgiwrap = Command::new(&tools.fcgiwrap)
            .process_group(0)
            .args(["-c", "4", "-s"])
            .arg(format!("unix:{}", sock.display()))
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fcgiwrap");
        wait_for("fcgiwrap's socket", Duration::from_secs(10), || {
            sock.exists()
        });

        let user = if common::is_root() {
            "user root root;".to_string()
        } else {
            String::new()
        };
        let template = std::fs::read_to_string(fixture("nginx/nginx.conf.in"))
            .unwrap()
            .replace("@USER@", &user)
            .replace("@DIR@", &dir.display().to_string())
            .replace("@CERT@", &fixture("tls/server-a.pem").display().to_string())
            .replace("@KEY@", &fixture("tls/server-a.key").display().to_string())
            .replace("@SOCKET@", &sock.display().to_string())
            .replace("@BACKEND@", &wrapper.display().to_string())
            .replace("@REPOS@", &repos.display().to_string())
            .replace("@SECRET@", UPSTREAM_SECRET);
        let mut n = Nginx {
            conf: dir.join("nginx.conf"),
            dir,
            port: 0,
            tls_port: 0,
            child: None,
            fcgiwrap,
            nginx_bin: tools.nginx.clone(),
            held: Vec::new(),
        };
        // A port from `free_port` is let go before nginx binds it, and another listener can
        // take it first: another test's gitgate on port 0, or its nginx (a CI run's first
        // request through gitgate met a 502 where nothing else explains one). nginx, failing
        // to bind it, still opens its Unix sockets and retries for a while, so the wait for
        // both to answer passes on the other's port: this asks whose the listening sockets
        // are, and takes new ports if they are not nginx's.
        for attempt in 1.. {
            (n.port, n.tls_port) = (common::free_port(), common::free_port());
            if n.port == n.tls_port {
                continue;
            }
            let conf = template
                .replace("@PORT@", &n.port.to_string())
                .replace("@TLS_PORT@", &n.tls_port.to_string());
            std::fs::write(&n.conf, conf).unwrap();
            if n.launch() {
                break;
            }
            assert!(attempt < 5, "nginx's ports were taken five times over");
        }
        n
    }

    /// nginx again on the ports it had (after `stop_nginx_holding_its_ports`): gitgate's
    /// config names them. The ports are let go of only now, just before nginx binds them.
    fn start_nginx(&mut self) {
        self.held.clear();
        assert!(
            self.launch(),
            "nginx restarted, but another process listens on 127.0.0.1:{} or :{}",
            self.port,
            self.tls_port
        );
    }

    /// Starts nginx and waits until it answers on its TCP port and its Unix socket. false
    /// (with nginx stopped again) when what listens on one of its TCP ports is not nginx.
    fn launch(&mut self) -> bool {
        let mut child = Command::new(&self.nginx_bin)
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let port = self.port;
        let socket = self.dir.join("nginx.sock");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || std::os::unix::net::UnixStream::connect(&socket).is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = child.id();
        self.child = Some(child);
        if common::listens_on(pid, self.port) && common::listens_on(pid, self.tls_port) {
            return true;
        }
        self.stop_nginx();
        false
    }

    /// nginx gone, its TCP ports held until `start_nginx` (`common::hold_port`): a connection
    /// to them is still refused, as to a port nothing has, but no other test's listener can
    /// take one meanwhile, and nginx could then not come back.
    fn stop_nginx_holding_its_ports(&mut self) {
        self.stop_nginx();
        self.held = vec![
            common::hold_port(self.port),
            common::hold_port(self.tls_port),
        ];
    }

    fn stop_nginx(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Killed, nginx leaves its Unix sockets behind, and the next start could not bind them.
        for socket in ["nginx.sock", "nginx-tls.sock"] {
            let _ = std::fs::remove_file(self.dir.join(socket));
        }
    }

    /// fcgiwrap (and the workers it forked) gone: nginx then answers git's requests with its
    /// own `502` page.
    ///
    /// The parent's exit is not the end of its workers: one may still hold the socket and take
    /// nginx's next connection (a CI run saw a 200 after the kill). So this waits until no
    /// process of the group is left, and takes the socket's name away, which nginx's next
    /// connect cannot get past whatever is still running.
    fn stop_fcgiwrap(&mut self) {
        let group = format!("-{}", self.fcgiwrap.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.fcgiwrap.wait();
        let _ = std::fs::remove_file(self.dir.join("fcgi.sock"));
        let group = self.fcgiwrap.id();
        wait_for("fcgiwrap's workers to go", Duration::from_secs(10), || {
            live_processes_of_group(group) == 0
        });
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop_nginx();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.fcgiwrap.id())])
            .status();
        let _ = self.fcgiwrap.wait();
    }
}

/// Processes of a process group that still run: zombies left to a PID 1 that does not reap
/// them (as in some containers) hold no socket and are not counted.
fn live_processes_of_group(group: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // After the command's name in parentheses: state, parent, process group.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            pgrp == Some(group) && state != "Z" && state != "X"
        })
        .count()
}

/// git's processes (`git http-backend` and what it runs) of a process group that still run.
fn git_processes_of_group(group: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map_or("", |(_, n)| n);
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            pgrp == Some(group) && name.starts_with("git") && state != "Z" && state != "X"
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// gitgate

/// `gitgate serve` on `config`, its log in `gitgate.log` beside it.
fn start_gitgate(config: &Path) -> Server {
    let mut cmd = common::gitgate_command(config);
    cmd.env("GITGATE_LOG", "info").arg("serve");
    Server::start(cmd, config.with_file_name("gitgate.log"), "")
}

/// Run the gitgate CLI, feeding `stdin`; it must succeed. Returns its trimmed stdout.
#[track_caller]
fn cli(config: &Path, args: &[&str], stdin: &str) -> String {
    let mut cmd = common::gitgate_command(config);
    cmd.args(args);
    common::run(cmd, Some(stdin)).ok().trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// One world: a bare repository, nginx serving it under /git, gitgate in front under /scm.

struct World {
    dir: tempfile::TempDir,
    nginx: Nginx,
    token: String,
    config: PathBuf,
}

struct Options {
    tls: bool,
    /// `https://localhost:<nginx tls port>/git` with this `ca_file` (None: system roots).
    https_upstream: Option<Option<PathBuf>>,
    grace_seconds: u64,
    /// `[server] trusted_proxies`.
    trusted: &'static str,
    /// Reach nginx on a Unix socket (`[upstream] socket`): plain under `http://git.invalid` (a
    /// name that does not resolve), TLS under `https://localhost` with `https_upstream`.
    unix_socket: bool,
    /// More `[server]` keys, one per line.
    server: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls: false,
            https_upstream: None,
            grace_seconds: 30,
            trusted: "",
            unix_socket: false,
            server: "",
        }
    }
}

impl World {
    fn new(test: &str) -> Option<World> {
        let tools = tools(test)?;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let repos = dir.path().join("repos");
        let bare = repos.join("team/app.git");
        std::fs::create_dir_all(&bare).unwrap();
        run_git(&bare, &home, &["init", "--bare", "-q", "-b", "main"]);
        run_git(&bare, &home, &["config", "core.logAllRefUpdates", "true"]);
        // Seed it with one commit.
        let seed = dir.path().join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        run_git(&seed, &home, &["init", "-q", "-b", "main"]);
        std::fs::write(seed.join("README"), "hello\n").unwrap();
        run_git(&seed, &home, &["add", "README"]);
        run_git(&seed, &home, &["commit", "-q", "-m", "first"]);
        run_git(
            &seed,
            &home,
            &["push", "-q", bare.to_str().unwrap(), "main"],
        );

        let nginx = Nginx::start(&tools, dir.path(), &repos);
        let config = dir.path().join("proxy.toml");
        std::fs::write(
            dir.path().join("upstream.secret"),
            format!("{UPSTREAM_SECRET}\n"),
        )
        .unwrap();
        // As a secret is kept (else the start warns that every user can read it); rewrites
        // keep the mode.
        std::fs::set_permissions(
            dir.path().join("upstream.secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let mut w = World {
            dir,
            nginx,
            token: String::new(),
            config,
        };
        w.write_config(&Options::default());
        cli(
            &w.config,
            &["user", "add", "alice", "--password-stdin"],
            &format!("{PASSWORD}\n"),
        );
        cli(&w.config, &["grant", "add", "alice", "team", "write"], "");
        w.token = cli(
            &w.config,
            &[
                "token",
                "create",
                "--user",
                "alice",
                "--name",
                "laptop",
                "--permission",
                "REPO_WRITE",
                "--password-stdin",
            ],
            &format!("{PASSWORD}\n"),
        );
        assert!(w.token.starts_with("ggt_"), "{}", w.token);
        Some(w)
    }

    fn write_config(&self, o: &Options) {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ngit_prefix = \"/scm\"\nshutdown_grace_seconds = {}\n",
            o.grace_seconds
        );
        if !o.trusted.is_empty() {
            text.push_str(&format!("trusted_proxies = [\"{}\"]\n", o.trusted));
        }
        text.push_str(o.server);
        if o.tls {
            text.push_str("[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
            if !self.dir.path().join("cert.pem").exists() {
                std::fs::copy(
                    fixture("tls/server-a.pem"),
                    self.dir.path().join("cert.pem"),
                )
                .unwrap();
                std::fs::copy(fixture("tls/server-a.key"), self.dir.path().join("key.pem"))
                    .unwrap();
            }
        }
        text.push_str("[store]\npath = \"gitgate.db\"\n[upstream]\n");
        match &o.https_upstream {
            None if o.unix_socket => {
                text.push_str("url = \"http://git.invalid/git\"\nsocket = \"nginx/nginx.sock\"\n")
            }
            None => text.push_str(&format!(
                "url = \"http://127.0.0.1:{}/git\"\n",
                self.nginx.port
            )),
            Some(ca) => {
                if o.unix_socket {
                    text.push_str(
                        "url = \"https://localhost/git\"\nsocket = \"nginx/nginx-tls.sock\"\n",
                    );
                } else {
                    text.push_str(&format!(
                        "url = \"https://localhost:{}/git\"\n",
                        self.nginx.tls_port
                    ));
                }
                if let Some(ca) = ca {
                    text.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
                }
            }
        }
        text.push_str("connect_timeout_seconds = 2\n");
        text.push_str("[upstream.credentials]\nscheme = \"bearer\"\nfile = \"upstream.secret\"\n");
        text.push_str("[auth]\nrealm = \"gitgate\"\n");
        std::fs::write(&self.config, text).unwrap();
    }

    fn serve(&self, o: &Options) -> Server {
        self.write_config(o);
        start_gitgate(&self.config)
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn bare(&self) -> PathBuf {
        self.dir.path().join("repos/team/app.git")
    }

    fn url(&self, g: &Server) -> String {
        let host = if g.scheme == "https" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!(
            "{}://alice:{}@{host}:{}/scm/team/app.git",
            g.scheme, self.token, g.port
        )
    }

    /// Run git in `cwd` (created if missing); returns the output, success or not.
    /// git with extra environment, as `common::git_matrix` runs it.
    fn git_with(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> common::Run {
        let mut c = git_command(cwd, &self.home());
        c.args(args).envs(env.iter().copied());
        common::run(c, None)
    }

    fn git(&self, cwd: &Path, args: &[&str]) -> Output {
        std::fs::create_dir_all(cwd).unwrap();
        git_command(cwd, &self.home()).args(args).output().unwrap()
    }

    fn git_ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self.git(cwd, args);
        assert!(
            out.status.success(),
            "git {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

fn git_command(cwd: &Path, home: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(cwd)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        // An inherited GIT_SSL_CAINFO would override the tests' http.sslCAInfo.
        .env_remove("GIT_SSL_CAINFO")
        .env_remove("GIT_SSL_CAPATH")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .args(["-c", "credential.helper=", "-c", "init.defaultBranch=main"]);
    c
}

fn run_git(cwd: &Path, home: &Path, args: &[&str]) {
    let out = git_command(cwd, home).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw HTTP/1.1 request; returns (status, head, body), the head as a status line and
/// `name: value` lines.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let resp = common::raw_http(port, req.as_bytes());
    let mut head = format!("HTTP/1.1 {}\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    (resp.status, head, resp.text())
}

/// alice's `GET info/refs` (the ref advertisement) through gitgate: status, head and body.
fn advertise(w: &World, g: &Server) -> (u16, String, String) {
    http(
        g.port,
        "GET",
        "/scm/team/app.git/info/refs?service=git-upload-pack",
        &[("Authorization", &basic("alice", &w.token))],
    )
}

fn commit_file(w: &World, repo: &Path, name: &str, content: &[u8]) {
    std::fs::write(repo.join(name), content).unwrap();
    w.git_ok(repo, &["add", name]);
    w.git_ok(repo, &["commit", "-q", "-m", &format!("add {name}")]);
}

/// The reflog of `main` in the bare repository, as written by `git http-backend`.
fn reflog(w: &World) -> String {
    std::fs::read_to_string(w.bare().join("logs/refs/heads/main")).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn clone_fetch_push_v0_and_v2() {
    let Some(w) = World::new("clone_fetch_push_v0_and_v2") else {
        return;
    };
    let g = w.serve(&Options::default());
    let url = w.url(&g);
    for v in ["0", "2"] {
        let proto = format!("protocol.version={v}");
        let a = w.path(&format!("a{v}"));
        let b = w.path(&format!("b{v}"));
        w.git_ok(
            w.dir.path(),
            &["-c", &proto, "clone", "-q", &url, a.to_str().unwrap()],
        );
        w.git_ok(
            w.dir.path(),
            &["-c", &proto, "clone", "-q", &url, b.to_str().unwrap()],
        );
        commit_file(&w, &a, &format!("v{v}.txt"), b"pushed\n");
        w.git_ok(&a, &["-c", &proto, "push", "-q", "origin", "main"]);
        // b has 40 commits of its own, newer than all it shares with the server, so that its
        // fetch negotiates over several rounds (git sends its haves newest first, 16 at a
        // time), each answered without a pack: in protocol v0 a round's answer ends with its
        // NAK and no flush, and is whole; in protocol v2 its `acknowledgments` section ends
        // with a flush.
        common::git_matrix::commit_newer(&|c, a, e| w.git_with(c, a, e), &b, 40);
        let posts_before = upload_posts(&w);
        w.git_ok(&b, &["-c", &proto, "fetch", "-q", "origin"]);
        let posts = upload_posts(&w) - posts_before;
        // In protocol v2 the refs are listed by a POST too (`ls-refs`), which is no round.
        let rounds = if v == "2" { posts - 1 } else { posts };
        assert!(
            rounds >= 2,
            "protocol v{v}: the fetch took {rounds} rounds ({posts} POSTs)"
        );
        let head_a = w.git_ok(&a, &["rev-parse", "HEAD"]);
        let head_b = w.git_ok(&b, &["rev-parse", "origin/main"]);
        assert_eq!(head_a, head_b, "protocol v{v}: fetch sees the push");
        let remote = w.git_ok(&a, &["-c", &proto, "ls-remote", &url, "refs/heads/main"]);
        assert!(remote.starts_with(head_a.trim()), "{remote}");
    }
    // Every answer was whole to gitgate as to git.
    let gitgate_log = g.log_text();
    assert!(
        !gitgate_log.contains("response stream failed"),
        "{gitgate_log}"
    );
    assert!(
        !gitgate_log.contains("outcome=stream-error"),
        "{gitgate_log}"
    );
    all_complete(&gitgate_log);
    // v2 really was spoken: git's Git-Protocol header made it to the backend.
    let log = w.nginx.access_log();
    assert!(log.contains("proto2=\"version=2\""), "{log}");
    // The git prefix /scm became the upstream base /git, and every request was authenticated
    // with gitgate's own upstream secret.
    for line in log.lines() {
        assert!(
            line.contains("\"GET /git/team/app.git/") || line.contains("\"POST /git/team/app.git/"),
            "{line}"
        );
        assert!(
            line.contains(&format!("auth=\"Bearer {UPSTREAM_SECRET}\"")),
            "{line}"
        );
    }
}

/// How many upload-pack POSTs nginx has served.
fn upload_posts(w: &World) -> usize {
    w.nginx
        .access_log()
        .matches("POST /git/team/app.git/git-upload-pack")
        .count()
}

/// git's other operations through nginx (`common::git_matrix`), under protocol v0, v1 and v2,
/// are whole to gitgate as to git: every answer's framing (shallow-info before a negotiation
/// round, a deepen's rounds answered with the shallow list and ACKs, the lazy fetches of a
/// partial clone, a fetch by object id, pushes that only delete, are atomic, carry push options
/// or are refused) ends as the follower expects, and none is failed as cut short.
#[test]
fn a_matrix_of_git_operations_through_nginx_is_whole_to_gitgate() {
    matrix_through_nginx(
        "a_matrix_of_git_operations_through_nginx_is_whole_to_gitgate",
        false,
    );
}

/// The same matrix over HTTP/2 (TLS, ALPN h2, the test CA): each git request a stream of its
/// own, pushes' packs and the probe's bare flush as h2 request bodies, every answer whole.
#[test]
fn a_matrix_of_git_operations_over_http2_through_nginx_is_whole_to_gitgate() {
    matrix_through_nginx(
        "a_matrix_of_git_operations_over_http2_through_nginx_is_whole_to_gitgate",
        true,
    );
}

/// Drives `common::git_matrix` through gitgate → nginx (over TLS and HTTP/2 when `h2`), then
/// checks that v2 reached nginx and that each POST nginx served has its line in gitgate's log,
/// none failed.
fn matrix_through_nginx(name: &str, h2: bool) {
    let Some(w) = World::new(name) else {
        return;
    };
    let g = w.serve(&Options {
        tls: h2,
        ..Options::default()
    });
    let url = w.url(&g);
    let ca = format!("http.sslCAInfo={}", fixture("tls/ca.pem").display());
    let over_h2 = ["-c", ca.as_str(), "-c", "http.version=HTTP/2"];
    let git = |cwd: &Path, args: &[&str], env: &[(&str, &str)]| {
        let before: &[&str] = if h2 { &over_h2 } else { &[] };
        let args: Vec<&str> = before.iter().chain(args).copied().collect();
        w.git_with(cwd, &args, env)
    };
    common::git_matrix::drive(&common::git_matrix::Site {
        top: w.dir.path(),
        url: &url,
        bare: &w.bare(),
        git: &git,
        upload_posts: &|| upload_posts(&w),
    });
    if h2 {
        assert!(url.starts_with("https://"), "{url}");
        let traced = git(
            w.dir.path(),
            &["ls-remote", &url, "HEAD"],
            &[("GIT_TRACE_CURL", "1"), ("GIT_TRACE_CURL_NO_DATA", "1")],
        );
        assert!(traced.stderr.contains("HTTP/2 200"), "{}", traced.stderr);
    }
    let access = w.nginx.access_log();
    // Each protocol the matrix runs under reached nginx as git asked for it (protocol v0 sends
    // no Git-Protocol): a v1 request passed on as v0 would work just as well, and show nothing.
    for version in ["1", "2"] {
        assert!(
            access.contains(&format!("proto2=\"version={version}\"")),
            "v{version}: {access}"
        );
    }
    let posts = access.matches("\"POST /git/").count();
    let log = log_once_it_has_n(&g, "method=POST", posts);
    assert_eq!(log.matches("method=POST").count(), posts, "{log}");
    assert!(!log.contains("response stream failed"), "{log}");
    assert!(!log.contains("outcome=stream-error"), "{log}");
    // Whole, not only not failed: every request line says its answer went out complete (not a
    // client gone, a body git could not read, an idle or a stop's cut), as the embedded
    // backend's matrix asks.
    all_complete(&log);
}

/// Every request line of `log` says `outcome=complete`; there is at least one.
fn all_complete(log: &str) {
    let lines = lines_with(log, " gitgate::request: ");
    assert!(!lines.is_empty(), "no request line: {log}");
    for line in lines {
        assert!(line.contains(" outcome=complete "), "{line}");
    }
}

/// `[upstream] socket`: the same nginx on a Unix socket, the URL naming a host that does not
/// resolve (`.invalid`), so that only the socket can have carried the requests.
#[test]
fn clone_push_and_v2_over_the_upstreams_unix_socket() {
    let Some(mut w) = World::new("clone_push_and_v2_over_the_upstreams_unix_socket") else {
        return;
    };
    let g = w.serve(&Options {
        unix_socket: true,
        ..Options::default()
    });
    // The start's probe reached nginx over the socket (written by a task of its own, after
    // "listening", so waited for).
    let log = log_with(&g, "ready: the token store and the git backend answer");
    assert!(!log.contains("not ready"), "{log}");
    let url = w.url(&g);
    let a = w.path("a");
    w.git_ok(w.dir.path(), &["clone", "-q", &url, a.to_str().unwrap()]);
    commit_file(&w, &a, "over-the-socket.txt", b"pushed\n");
    w.git_ok(&a, &["push", "-q", "origin", "main"]);
    let head = w.git_ok(&a, &["rev-parse", "HEAD"]);
    let remote = w.git_ok(
        &a,
        &[
            "-c",
            "protocol.version=2",
            "ls-remote",
            &url,
            "refs/heads/main",
        ],
    );
    assert!(remote.starts_with(head.trim()), "{remote}");
    assert_eq!(
        w.git_ok(
            w.dir.path(),
            &["--git-dir", w.bare().to_str().unwrap(), "rev-parse", "main"]
        ),
        head
    );
    // Every request came over the socket (nginx logs its peer as `unix:`), with the URL's host
    // and gitgate's upstream secret.
    let log = w.nginx.access_log();
    assert!(log.contains("proto2=\"version=2\""), "{log}");
    for line in log.lines() {
        assert!(line.starts_with("unix: "), "{line}");
        assert!(
            line.contains(&format!("auth=\"Bearer {UPSTREAM_SECRET}\"")),
            "{line}"
        );
    }
    // Down: a 502 whose log line names the URL and the socket; back: served again.
    w.nginx.stop_nginx_holding_its_ports();
    let (status, _, body) = advertise(&w, &g);
    assert_eq!(status, 502, "{body}");
    let socket = w.path("nginx/nginx.sock");
    assert!(!body.contains("nginx.sock"), "{body}");
    let named = format!(
        "upstream http://git.invalid/git via unix:{}",
        socket.display()
    );
    assert!(g.log_text().contains(&named), "{}", g.log_text());
    w.nginx.start_nginx();
    w.git_ok(w.dir.path(), &["ls-remote", &url]);
}

/// An `https://` upstream over a Unix socket: TLS runs over the socket, and the certificate is
/// checked against the URL's name, as over TCP.
#[test]
fn https_over_the_upstreams_unix_socket_is_checked_against_the_urls_name() {
    let Some(w) =
        World::new("https_over_the_upstreams_unix_socket_is_checked_against_the_urls_name")
    else {
        return;
    };
    let g = w.serve(&Options {
        unix_socket: true,
        https_upstream: Some(Some(fixture("tls/ca.pem"))),
        ..Options::default()
    });
    w.git_ok(w.dir.path(), &["ls-remote", &w.url(&g)]);
    let log = w.nginx.access_log();
    assert!(
        !log.is_empty() && log.lines().all(|l| l.starts_with("unix: ")),
        "{log}"
    );
    drop(g);
    // The same socket under a name the certificate does not carry: refused, not forwarded.
    let config = std::fs::read_to_string(&w.config).unwrap();
    let renamed = config.replace("https://localhost/git", "https://elsewhere.invalid/git");
    assert_ne!(config, renamed);
    std::fs::write(&w.config, renamed).unwrap();
    let g = start_gitgate(&w.config);
    let (status, _, body) = advertise(&w, &g);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("the TLS handshake with it failed"), "{body}");
    // Why (the certificate's name) is in the log, not in the answer.
    assert!(g.log_text().contains("certificate"), "{}", g.log_text());
    assert_eq!(w.nginx.access_log(), log, "nothing more reached nginx");
}

#[test]
fn identity_comes_from_the_token_never_from_the_client() {
    let Some(w) = World::new("identity_comes_from_the_token_never_from_the_client") else {
        return;
    };
    let g = w.serve(&Options::default());
    let url = w.url(&g);
    let a = w.path("a");
    w.git_ok(w.dir.path(), &["clone", "-q", &url, a.to_str().unwrap()]);
    commit_file(&w, &a, "who.txt", b"me\n");
    w.git_ok(
        &a,
        &[
            "-c",
            "http.extraHeader=X-Forwarded-User: mallory",
            "-c",
            "http.extraHeader=X-Forwarded-For: 10.6.6.6",
            "-c",
            "http.extraHeader=X-Forwarded-Host: evil.example",
            // Gitea's reverse-proxy login header: an upstream that trusts gitgate's address
            // would take it as the user.
            "-c",
            "http.extraHeader=X-WEBAUTH-USER: mallory",
            // A request id is gitgate's to give.
            "-c",
            "http.extraHeader=X-Request-Id: 00000000deadbeef",
            "push",
            "-q",
            "origin",
            "main",
        ],
    );
    // The push is attributed to the token's owner in the bare repository's reflog.
    let reflog = reflog(&w);
    let last = reflog.lines().last().unwrap_or_default();
    assert!(last.contains(" alice <alice@http."), "reflog: {reflog}");
    assert!(!reflog.contains("mallory"), "reflog: {reflog}");

    let log = w.nginx.access_log();
    assert!(!log.is_empty());
    for line in log.lines() {
        assert!(line.contains("user=\"alice\""), "{line}");
        assert!(line.contains("xff=\"127.0.0.1\""), "{line}");
        assert!(line.contains("fhost=\"127.0.0.1:"), "{line}");
        assert!(line.contains("fproto=\"http\""), "{line}");
        assert!(line.contains("webauth=\"-\""), "{line}");
        // What git says about itself still arrives.
        assert!(line.contains("ua=\"git/"), "{line}");
        // gitgate's id for the request, the one its own log line has.
        let rid = line
            .split("rid=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        assert!(
            rid.len() == 16 && rid.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
        log_with(&g, &format!("request_id={rid} "));
    }
    assert!(
        !log.contains("deadbeef"),
        "the client's request id reached the upstream"
    );
    // The client's Authorization (its gitgate token) never reached nginx.
    assert!(!log.contains(&w.token), "the token reached the upstream");
    assert!(
        !log.contains("Basic "),
        "the client's Basic credentials reached the upstream"
    );
    assert!(!log.contains("mallory") && !log.contains("10.6.6.6") && !log.contains("evil.example"));
}

/// Peak resident memory of a process so far, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn large_chunked_push_and_clone_stream_with_flat_memory() {
    let Some(w) = World::new("large_chunked_push_and_clone_stream_with_flat_memory") else {
        return;
    };
    let g = w.serve(&Options::default());
    let url = w.url(&g);
    let a = w.path("a");
    w.git_ok(w.dir.path(), &["clone", "-q", &url, a.to_str().unwrap()]);
    let baseline = peak_rss_kib(g.pid());
    // 32 MiB that does not compress: the pack is about as large.
    const SIZE: usize = 32 << 20;
    let data = common::noise(SIZE, 0x9E37_79B9_7F4A_7C15);
    commit_file(&w, &a, "big.bin", &data);
    drop(data);
    let started = Instant::now();
    // A small postBuffer: git sends the pack with chunked transfer encoding.
    w.git_ok(
        &a,
        &[
            "-c",
            "http.postBuffer=65536",
            "push",
            "-q",
            "origin",
            "main",
        ],
    );
    let push_took = started.elapsed();
    let head = w.git_ok(&a, &["rev-parse", "HEAD"]);
    w.git_ok(&w.bare(), &["cat-file", "-e", head.trim()]);

    let started = Instant::now();
    let b = w.path("b");
    w.git_ok(w.dir.path(), &["clone", "-q", &url, b.to_str().unwrap()]);
    let clone_took = started.elapsed();
    assert_eq!(
        std::fs::metadata(b.join("big.bin")).unwrap().len(),
        SIZE as u64
    );

    // gitgate saw the whole pack go through as one request body ...
    let log = g.log_text();
    let bytes = |method: &str, field: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("method={method}")))
            .filter_map(|l| l.split(&format!("{field}=")).nth(1))
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    let pushed = bytes("POST", "bytes_in");
    let cloned = bytes("POST", "bytes_out");
    assert!(
        pushed > SIZE as u64,
        "bytes_in of the push: {pushed}\n{log}"
    );
    assert!(
        cloned > SIZE as u64,
        "bytes_out of the clone: {cloned}\n{log}"
    );
    // ... without holding it: the peak memory barely moved.
    let peak = peak_rss_kib(g.pid());
    eprintln!(
        "push {pushed} B in {push_took:?}, clone {cloned} B in {clone_took:?}; \
         gitgate peak RSS {baseline} KiB before, {peak} KiB after"
    );
    assert!(baseline > 0, "could not read gitgate's peak memory (VmHWM)");
    assert!(
        peak - baseline < 16 * 1024,
        "gitgate's peak memory grew by {} KiB moving 2 × 32 MiB",
        peak - baseline
    );
}

/// Packs of some MiB go both ways through an https upstream, whose answers to a `POST` are
/// handed on one chunk per read under TLS's plaintext (`upstream::rechunk`): a push, a clone
/// and a fetch each arrive whole.
#[test]
fn packs_of_some_mib_are_pushed_cloned_and_fetched_through_an_https_upstream() {
    let Some(w) = World::new("packs_of_some_mib_through_an_https_upstream") else {
        return;
    };
    let g = serve_and_clone_with_ca(&w, fixture("tls/ca.pem"));
    let url = w.url(&g);
    let a = w.path("a");
    // 6 MiB that does not compress: the pack is about as large.
    const SIZE: usize = 6 << 20;
    let data = common::noise(SIZE, 0x2545_F491_4F6C_DD1D);
    commit_file(&w, &a, "big.bin", &data);
    w.git_ok(&a, &["push", "-q", "origin", "main"]);
    let b = w.path("b");
    w.git_ok(w.dir.path(), &["clone", "-q", &url, b.to_str().unwrap()]);
    assert_eq!(std::fs::read(b.join("big.bin")).unwrap(), data);
    let more = common::noise(SIZE / 2, 0x9E37_79B9_7F4A_7C15);
    commit_file(&w, &a, "more.bin", &more);
    w.git_ok(&a, &["push", "-q", "origin", "main"]);
    w.git_ok(&b, &["pull", "-q", "--ff-only", "origin", "main"]);
    assert_eq!(std::fs::read(b.join("more.bin")).unwrap(), more);
    w.git_ok(&b, &["fsck", "--strict"]);
}

/// A fetch of an object the repository does not have is refused by upload-pack with an `ERR`
/// packet, which nginx passes on as a whole answer. gitgate passes it on whole too, so git
/// prints that reason alone, and logs git's reason as the embedded runner does — once per
/// fetch, and not as a failure of the backend's.
#[test]
fn a_fetch_git_refuses_through_nginx_is_logged_with_gits_reason() {
    let Some(w) = World::new("a_fetch_git_refuses_through_nginx_is_logged_with_gits_reason") else {
        return;
    };
    let g = w.serve(&Options::default());
    let here = w.path("here");
    w.git_ok(
        w.dir.path(),
        &["clone", "-q", &w.url(&g), here.to_str().unwrap()],
    );
    let missing = "1111111111111111111111111111111111111111";
    for _ in 0..2 {
        // Over protocol v0 git itself refuses to ask for an object not advertised.
        let out = w.git(
            &here,
            &["-c", "protocol.version=2", "fetch", "origin", missing],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("not our ref") && !stderr.contains("RPC failed"),
            "{stderr}"
        );
    }
    let log = log_once_it_has_n(&g, "git refused the request and told its client why", 2);
    let refusals = lines_with(&log, "git refused the request and told its client why");
    assert_eq!(refusals.len(), 2, "{log}");
    for line in refusals {
        assert!(
            line.contains(&format!("not our ref {missing}"))
                && line.contains("request_id=")
                && line.contains(&format!(
                    "upstream=\"http://127.0.0.1:{}/git\"",
                    w.nginx.port
                )),
            "{line}"
        );
    }
    assert!(!log.contains("response stream failed"), "{log}");
    assert!(!log.contains("outcome=stream-error"), "{log}");
    assert!(!log.contains("backend failed"), "{log}");
}

/// A push over git's `receive.maxInputSize` behind fcgiwrap: receive-pack stops reading it,
/// and fcgiwrap, its writes to git refused, answers a bare `502` ("An error occurred while
/// reading the request"), git's own reason lost; git shows `RPC failed; HTTP 502`, then
/// `Everything up-to-date`. gitgate's log says that git failed the push there, with the limits
/// that do this — it said only `status=502`.
#[test]
fn a_push_git_failed_behind_fcgiwrap_is_logged_with_the_likely_limits() {
    let Some(w) = World::new("a_push_git_failed_behind_fcgiwrap_is_logged_with_the_likely_limits")
    else {
        return;
    };
    run_git(
        &w.dir.path().join("repos/team/app.git"),
        &w.dir.path().join("home"),
        &["config", "receive.maxInputSize", "100k"],
    );
    let g = w.serve(&Options::default());
    let here = w.path("here");
    w.git_ok(
        w.dir.path(),
        &["clone", "-q", &w.url(&g), here.to_str().unwrap()],
    );
    commit_file(
        &w,
        &here,
        "big",
        &common::noise(1 << 20, 0x2545_F491_4F6C_DD1D),
    );
    let out = w.git(&here, &["push", "origin", "HEAD:main"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("HTTP 502"),
        "{stderr}"
    );
    let log = log_with(&g, "the upstream git server failed a push");
    let said = lines_with(&log, "the upstream git server failed a push");
    assert!(
        said.len() == 1
            && said[0].contains("WARN")
            && said[0].contains("status=502")
            && said[0].contains("receive.maxInputSize")
            && said[0].contains("request_id="),
        "{log}"
    );
}

/// The lines of `log` that hold `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// `g`'s log once `needle` is in it `n` times, or as it is after 10 s.
fn log_once_it_has_n(g: &Server, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = g.log_text();
        if log.matches(needle).count() >= n || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx + fcgiwrap end their chunked answer cleanly when the git process behind them dies
/// mid-answer: gitgate tells it from git's own framing (`upstream::framing`), fails the answer
/// instead of ending it (git sees a transfer that broke off), and logs and counts it as the
/// upstream's failure, not as a complete clone.
#[test]
fn an_answer_whose_git_process_died_mid_pack_is_logged_as_broken_off() {
    let Some(w) = World::new("an_answer_whose_git_process_died_mid_pack_is_logged_as_broken_off")
    else {
        return;
    };
    let g = w.serve(&Options::default());
    let url = w.url(&g);
    let a = w.path("a");
    w.git_ok(w.dir.path(), &["clone", "-q", &url, a.to_str().unwrap()]);
    // 1 MiB that does not compress: the pack is well past the cut at 100,000 bytes.
    let data = common::noise(1 << 20, 0x2545_F491_4F6C_DD1D);
    commit_file(&w, &a, "big.bin", &data);
    w.git_ok(&a, &["push", "-q", "origin", "main"]);
    // Uncut, a clone is whole and logged so (what the check must not refuse).
    let whole = w.path("whole");
    w.git_ok(
        w.dir.path(),
        &["clone", "-q", &url, whole.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(whole.join("big.bin")).unwrap(), data);
    assert!(!g.log_text().contains("cut short"), "{}", g.log_text());

    std::fs::write(w.nginx.dir.join("cut"), "").unwrap();
    for version in ["0", "2"] {
        let to = w.path(&format!("cut-v{version}"));
        let protocol = format!("protocol.version={version}");
        let out = w.git(
            w.dir.path(),
            &["-c", &protocol, "clone", "-q", &url, to.to_str().unwrap()],
        );
        assert!(
            !out.status.success(),
            "protocol v{version}: the clone failed"
        );
    }
    let log = g.log_text();
    let failed = lines_with(&log, "response stream failed");
    assert_eq!(failed.len(), 2, "one failure per clone:\n{log}");
    for line in failed {
        assert!(
            line.contains("the upstream's answer was cut short: it ended inside a pkt-line")
                && line.contains("repo=team/app")
                && line.contains("user=alice"),
            "{line}"
        );
    }
    // The POSTs' own lines say it too.
    let broken_posts = log
        .lines()
        .filter(|l| l.contains("method=POST") && l.contains("outcome=stream-error"))
        .count();
    assert_eq!(broken_posts, 2, "{log}");
}

/// When the pack-objects behind upload-pack fails mid-pack (killed by the OOM killer or an
/// operator, or stopped on an object it cannot read), upload-pack tells its client so on
/// side-band channel 3 — "aborting due to possible repository corruption on the remote side"
/// — and dies, and nginx + fcgiwrap end the answer cleanly. The clone fails; gitgate logs and
/// counts it as the upstream's failure, as the embedded runner does (git's exit status 1 there),
/// not as a request git refused and told its client why, `outcome=complete`, which it did.
#[test]
fn a_clone_whose_pack_objects_died_mid_pack_is_the_upstreams_failure() {
    let Some(w) = World::new("a_clone_whose_pack_objects_died_mid_pack_is_the_upstreams_failure")
    else {
        return;
    };
    let g = w.serve(&Options::default());
    let url = w.url(&g);
    let a = w.path("a");
    w.git_ok(w.dir.path(), &["clone", "-q", &url, a.to_str().unwrap()]);
    // 1 MiB that does not compress: the pack is well past the 100,000 bytes pack-objects gives.
    let data = common::noise(1 << 20, 0x5851_F42D_4C95_7F2D);
    commit_file(&w, &a, "big.bin", &data);
    w.git_ok(&a, &["push", "-q", "origin", "main"]);

    std::fs::write(w.nginx.dir.join("packdies"), "").unwrap();
    for version in ["0", "2"] {
        let to = w.path(&format!("died-v{version}"));
        let protocol = format!("protocol.version={version}");
        let out = w.git(
            w.dir.path(),
            &["-c", &protocol, "clone", "-q", &url, to.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "protocol v{version}: {stderr}");
        // git still shows upload-pack's words.
        assert!(
            stderr.contains("aborting due to possible repository corruption"),
            "protocol v{version}: {stderr}"
        );
    }
    let log = log_once_it_has_n(&g, "response stream failed", 2);
    assert!(
        !log.contains("git refused the request and told its client why"),
        "a failed pack is no refusal:\n{log}"
    );
    let failed = lines_with(&log, "response stream failed");
    assert_eq!(failed.len(), 2, "one failure per clone:\n{log}");
    for line in failed {
        assert!(
            line.contains("pack-objects failed") && line.contains("repo=team/app"),
            "{line}"
        );
    }
    let broken_posts = log
        .lines()
        .filter(|l| l.contains("method=POST") && l.contains("outcome=stream-error"))
        .count();
    assert_eq!(broken_posts, 2, "{log}");
}

#[test]
fn upstream_down_is_502_then_recovers() {
    let Some(mut w) = World::new("upstream_down_is_502_then_recovers") else {
        return;
    };
    let g = w.serve(&Options::default());
    let url = w.url(&g);
    w.git_ok(w.dir.path(), &["ls-remote", &url]);

    w.nginx.stop_nginx_holding_its_ports();
    let (status, head, body) = advertise(&w, &g);
    assert_eq!(status, 502, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert!(
        body.contains("cannot reach the upstream git server"),
        "{body}"
    );
    // The client's message leaves out the upstream's address; the log has it, in the one
    // line the failure writes besides the request line.
    let upstream = format!("127.0.0.1:{}", w.nginx.port);
    assert!(!body.contains(&upstream), "{body}");
    let log = g.log_text();
    let failure_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upstream") && !l.contains("gitgate::request"))
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert_eq!(failure_lines.len(), 1, "{log}");
    assert!(
        failure_lines[0].contains("backend failed") && failure_lines[0].contains(&upstream),
        "{log}"
    );
    // It names whose request it was, for a log read at the warning level alone.
    for field in ["remote=127.0.0.1", "user=alice", "token_id="] {
        assert!(failure_lines[0].contains(field), "{field}: {log}");
    }
    let out = w.git(w.dir.path(), &["ls-remote", &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("502"),
        "{out:?}"
    );
    // A check's outcome answers for a second (the start's own check included): the outage
    // shows within one, and so does the recovery.
    let readyz_turns = |want: u16| {
        let deadline = std::time::Instant::now() + common::EVENT_DEADLINE;
        loop {
            let (status, _, body) = http(g.port, "GET", "/readyz", &[]);
            if status == want {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{status} {body}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    readyz_turns(503);

    w.nginx.start_nginx();
    w.git_ok(w.dir.path(), &["ls-remote", &url]);
    readyz_turns(200);
    // The recovery is in the log too, not only in the probe's answer: written by the first
    // check that passes (a probe may be answered by another worker's outcome of the last
    // second, from before the outage, without a check).
    wait_for("the recovery's log line", common::EVENT_DEADLINE, || {
        let _ = http(g.port, "GET", "/readyz", &[]);
        g.log_text()
            .contains("ready again: the token store and the git backend answer")
    });
}

/// The start's log says whether the backend answers: a wrong port shows before anybody clones.
#[test]
fn the_start_reports_whether_the_backend_answers() {
    let Some(mut w) = World::new("the_start_reports_whether_the_backend_answers") else {
        return;
    };
    let g = w.serve(&Options::default());
    let log = log_with(&g, "ready: the token store and the git backend answer");
    assert!(!log.contains("not ready"), "{log}");
    drop(g);

    w.nginx.stop_nginx_holding_its_ports();
    let g = w.serve(&Options::default());
    let log = log_with(&g, "not ready: git backend unreachable");
    let upstream = format!("127.0.0.1:{}", w.nginx.port);
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("not ready: git backend unreachable")
            && l.contains(&upstream)),
        "{log}"
    );
    // Not fatal: it serves, and takes the backend once it is there.
    w.nginx.start_nginx();
    w.git_ok(w.dir.path(), &["ls-remote", &w.url(&g)]);
}

#[test]
fn probes_need_no_token_and_are_not_forwarded() {
    let Some(w) = World::new("probes_need_no_token_and_are_not_forwarded") else {
        return;
    };
    let g = w.serve(&Options::default());
    let (status, _, body) = http(g.port, "GET", "/healthz", &[]);
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, body) = http(g.port, "GET", "/readyz", &[]);
    assert_eq!((status, body.trim()), (200, "ready"));
    assert!(w.nginx.access_log().is_empty(), "{}", w.nginx.access_log());
    // A git request without a token still gets the challenge, not a probe's answer.
    let (status, head, _) = http(
        g.port,
        "GET",
        "/scm/team/app.git/info/refs?service=git-upload-pack",
        &[],
    );
    assert_eq!(status, 401);
    assert!(head.contains("Basic realm=\"gitgate\""), "{head}");
}

#[test]
fn clone_over_tls_with_the_test_ca() {
    let Some(w) = World::new("clone_over_tls_with_the_test_ca") else {
        return;
    };
    let g = w.serve(&Options {
        tls: true,
        ..Options::default()
    });
    assert_eq!(g.scheme, "https");
    let ca = fixture("tls/ca.pem");
    let ca_opt = format!("http.sslCAInfo={}", ca.display());
    let a = w.path("a");
    // Clone over HTTP/2 (ALPN h2) ...
    let out = git_command(w.dir.path(), &w.home())
        .env("GIT_TRACE_CURL", "1")
        .env("GIT_TRACE_CURL_NO_DATA", "1")
        .args(["-c", &ca_opt, "-c", "http.version=HTTP/2", "clone", "-q"])
        .arg(w.url(&g))
        .arg(&a)
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{trace}");
    assert!(trace.contains("HTTP/2 200"), "not HTTP/2: {trace}");
    assert!(a.join("README").exists());
    // ... and push over HTTP/1.1.
    commit_file(&w, &a, "tls.txt", b"over TLS\n");
    w.git_ok(
        &a,
        &[
            "-c",
            &ca_opt,
            "-c",
            "http.version=HTTP/1.1",
            "push",
            "-q",
            "origin",
            "main",
        ],
    );
    assert!(reflog(&w)
        .lines()
        .last()
        .unwrap_or_default()
        .contains(" alice <"));
    // Without the CA git refuses the certificate.
    let out = w.git(w.dir.path(), &["ls-remote", &w.url(&g)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(
        stderr.contains("certificate") || stderr.contains("ssl"),
        "refused for another reason: {stderr}"
    );
    // A client that refuses it with an alert (OpenSSL, Go, rustls do; git on GnuTLS, as
    // Debian's, closes without one): the operator hears of it, with what to look at.
    refuse_the_certificate(g.port);
    let mut log = String::new();
    for _ in 0..100 {
        log = g.log_text();
        if log.contains("a client refused the TLS certificate") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        log.contains("WARN")
            && log.contains("a client refused the TLS certificate (its TLS alert: UnknownCA): clients must trust its CA")
            && log.contains("fullchain.pem"),
        "{log}"
    );
    // An http:// URL for the https port: told what to do, in words git shows.
    let plain = w.url(&g).replacen("https://", "http://", 1);
    let out = w.git(w.dir.path(), &["ls-remote", &plain]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("remote: this port speaks HTTPS only: use an https:// URL"),
        "{stderr}"
    );
    // The upstream was told the client came in over https.
    let log = w.nginx.access_log();
    assert!(log.lines().all(|l| l.contains("fproto=\"https\"")), "{log}");
}

/// Over TLS a connection speaks what its handshake agreed on (ALPN), and only that: HTTP/2 is
/// never assumed over TLS (RFC 9113 §3.2), nor HTTP/1.1 served on a connection agreed as h2.
#[test]
fn a_tls_connection_speaks_only_the_protocol_its_handshake_agreed() {
    let Some(w) = World::new("a_tls_connection_speaks_only_the_protocol_its_handshake_agreed")
    else {
        return;
    };
    let g = w.serve(&Options {
        tls: true,
        ..Options::default()
    });
    // Everything the server sends until it closes, or 3 s of silence.
    let answer = |stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
                  ask: &[u8]| {
        stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        stream.write_all(ask).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    };
    const H1: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    // HTTP/2's connection preface and an empty SETTINGS frame.
    const H2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    // A SETTINGS frame back: the server took the preface as HTTP/2's.
    let h2_settings = |got: &[u8]| got.len() >= 9 && got[3] == 0x04;

    // Agreed on each, each is served.
    let (_, mut s) = tls_connect_offering(g.port, &[b"http/1.1"]);
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let got = answer(&mut s, H1);
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let (_, mut s) = tls_connect_offering(g.port, &[b"h2"]);
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
    assert!(h2_settings(&answer(&mut s, H2)));

    // Agreed on HTTP/1.1 (or on nothing), HTTP/2's preface is not taken as HTTP/2.
    for offered in [&[&b"http/1.1"[..]][..], &[]] {
        let (_, mut s) = tls_connect_offering(g.port, offered);
        let got = answer(&mut s, H2);
        assert!(
            !h2_settings(&got),
            "HTTP/2 spoken after ALPN {offered:?}: {got:?}"
        );
    }
    // Agreed on h2, HTTP/1.1 gets no HTTP/1.1 answer.
    let (_, mut s) = tls_connect_offering(g.port, &[b"h2"]);
    let got = answer(&mut s, H1);
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Without ALPN (as `tls_connect`), HTTP/1.1 as before.
    let (_, mut s) = tls_connect(g.port);
    assert!(answer(&mut s, H1).starts_with(b"HTTP/1.1 200"));
}

/// A TLS connection gitgate closes for idling, or for sending no request in time, ends with
/// TLS's `close_notify` before the FIN: the client reads a clean end, not a truncation.
#[test]
fn a_tls_connection_closed_for_idling_ends_with_close_notify() {
    let Some(w) = World::new("a_tls_connection_closed_for_idling_ends_with_close_notify") else {
        return;
    };
    let g = w.serve(&Options {
        tls: true,
        server: "header_read_timeout_seconds = 1\nidle_timeout_seconds = 2\n",
        ..Options::default()
    });
    // Reads to the end: rustls says `Ok(0)` after a `close_notify`, and an `UnexpectedEof`
    // error for a FIN without one.
    let end = |stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let ended = loop {
            match stream.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        (ended, got, started.elapsed())
    };
    // HTTP/1.1 agreed, no request at all.
    let (_, mut s) = tls_connect_offering(g.port, &[b"http/1.1"]);
    let (ended, _, took) = end(&mut s);
    assert!(ended.is_ok(), "no close_notify: {ended:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // One keep-alive request answered, then nothing: closed after the same wait.
    let (_, mut s) = tls_connect_offering(g.port, &[b"http/1.1"]);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (ended, got, _) = end(&mut s);
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    assert!(ended.is_ok(), "no close_notify: {ended:?}");
    // HTTP/2: the preface and SETTINGS, then nothing.
    let (_, mut s) = tls_connect_offering(g.port, &[b"h2"]);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let (ended, got, _) = end(&mut s);
    assert!(got.len() >= 9 && got[3] == 0x04, "{got:?}");
    assert!(ended.is_ok(), "no close_notify: {ended:?}");
    // Half a request head: cut off, as before; how it ends is the client's fault.
    let (_, mut s) = tls_connect_offering(g.port, &[b"http/1.1"]);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc").unwrap();
    let (_, _, took) = end(&mut s);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// gitgate in front of nginx's https with `ca_file = ca`, and a clone through it that works.
fn serve_and_clone_with_ca(w: &World, ca: PathBuf) -> Server {
    let g = w.serve(&Options {
        https_upstream: Some(Some(ca)),
        ..Options::default()
    });
    let a = w.path("a");
    w.git_ok(
        w.dir.path(),
        &["clone", "-q", &w.url(&g), a.to_str().unwrap()],
    );
    assert!(a.join("README").exists());
    g
}

#[test]
fn https_upstream_is_verified_against_the_configured_ca() {
    let Some(w) = World::new("https_upstream_is_verified_against_the_configured_ca") else {
        return;
    };
    let g = serve_and_clone_with_ca(&w, fixture("tls/ca.pem"));
    drop(g);

    // Trusting only the system roots, the test CA's certificate is refused: 502, not a clone.
    let g = w.serve(&Options {
        https_upstream: Some(None),
        ..Options::default()
    });
    let (status, _, body) = advertise(&w, &g);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("the TLS handshake with it failed; gitgate's log says why"),
        "{body}"
    );
    // rustls's own words name the certificate's names and the one asked for (the upstream's
    // internal ones): the log has them, the client does not.
    assert!(!body.contains("invalid peer certificate"), "{body}");
    let log = g.log_text();
    assert!(
        log.lines().any(|l| l.contains("backend failed")
            && l.contains("invalid peer certificate")
            && l.contains("upstream ")),
        "{log}"
    );
    // And the readiness probe says so, instead of ready for requests that all fail.
    let (status, _, body) = http(g.port, "GET", "/readyz", &[]);
    assert_eq!(status, 503, "{body}");
    let log = g.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("not ready") && l.contains("TLS handshake failed")),
        "{log}"
    );
}

/// A TLS handshake with `port` by a client that trusts no CA: it refuses the certificate
/// with an alert (`unknown_ca`), as clients built on OpenSSL do.
fn refuse_the_certificate(port: u16) {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            assert!(e.to_string().contains("UnknownIssuer"), "{e}");
            return;
        }
    }
    panic!("the client took a certificate of a CA it does not trust");
}

/// The certificate a new TLS connection to `port` is served, and a TLS stream that stays open.
fn tls_connect(
    port: u16,
) -> (
    Vec<u8>,
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
) {
    tls_connect_offering(port, &[])
}

/// [`tls_connect`], offering the protocols `alpn` in the handshake (none: no ALPN at all).
fn tls_connect_offering(
    port: u16,
    alpn: &[&[u8]],
) -> (
    Vec<u8>,
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(fixture("tls/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    let cert = stream.conn.peer_certificates().unwrap()[0].to_vec();
    (cert, stream)
}

/// One keep-alive `GET /healthz` on an open TLS stream; returns the status line.
fn healthz_on(stream: &mut impl ReadWrite) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn pem_der(name: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(fixture(name))
        .unwrap()
        .to_vec()
}

/// A connection that never starts its TLS handshake has no request to finish: a stop does not
/// wait the grace period (30 s here) for it.
#[test]
fn a_silent_tls_connection_does_not_hold_up_a_stop() {
    let Some(w) = World::new("a_silent_tls_connection_does_not_hold_up_a_stop") else {
        return;
    };
    let mut g = w.serve(&Options {
        tls: true,
        ..Options::default()
    });
    let silent = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    // Handed to a worker before the stop: a healthz over another connection is answered after it.
    let (_, mut other) = tls_connect(g.port);
    assert!(healthz_on(&mut other).contains("200"));
    drop(other);
    // Not held up by a connection that never began its handshake.
    let status = g.stop_within(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        !g.log_text().contains("grace period over"),
        "{}",
        g.log_text()
    );
    drop(silent);
}

#[test]
fn certificate_reloads_on_sighup_without_dropping_connections() {
    let Some(w) = World::new("certificate_reloads_on_sighup_without_dropping_connections") else {
        return;
    };
    let g = w.serve(&Options {
        tls: true,
        server: "[metrics]\nlisten = \"127.0.0.1:0\"\n",
        ..Options::default()
    });
    let metrics_port = g.metrics_port();
    // SIGHUPs that kept a file in use, as /metrics counts them.
    let reload_failures = || {
        let scraped = common::http_get(metrics_port, "/metrics", None);
        let text = String::from_utf8_lossy(&scraped.body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("gitgate_reload_failures_total "))
            .unwrap_or_else(|| panic!("no gitgate_reload_failures_total in:\n{text}"))
            .to_string()
    };
    assert_eq!(reload_failures(), "0");
    let (cert, mut old) = tls_connect(g.port);
    assert_eq!(cert, pem_der("tls/server-a.pem"));
    assert!(healthz_on(&mut old).contains("200"));

    // Swap the files to certificate B and signal; the new key readable by every user is
    // warned of, as at a start.
    std::fs::copy(fixture("tls/server-b.pem"), w.path("cert.pem")).unwrap();
    std::fs::copy(fixture("tls/server-b.key"), w.path("key.pem")).unwrap();
    std::fs::set_permissions(
        w.path("key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let key_open = |log: &str| {
        log.matches("is readable by every user of this machine")
            .count()
    };
    let before = key_open(&g.log_text());
    g.signal("HUP");
    wait_for("the reload", Duration::from_secs(10), || {
        g.log_text().contains("TLS certificate reloaded")
    });
    wait_for("the key's mode said", common::EVENT_DEADLINE, || {
        key_open(&g.log_text()) == before + 1
    });
    let (cert, _) = tls_connect(g.port);
    assert_eq!(cert, pem_der("tls/server-b.pem"), "a new connection sees B");
    assert_eq!(reload_failures(), "0", "a reload that loaded");
    assert!(
        healthz_on(&mut old).contains("200"),
        "the connection opened before the reload still works"
    );

    // A broken certificate at reload: the old one stays, and the log says why.
    std::fs::write(w.path("cert.pem"), "garbage").unwrap();
    g.signal("HUP");
    wait_for("the failed reload", Duration::from_secs(10), || {
        g.log_text().contains(
            "keeping the current TLS certificate, the new one is unusable, so a restart would fail",
        )
    });
    let (cert, _) = tls_connect(g.port);
    assert_eq!(cert, pem_der("tls/server-b.pem"));
    assert!(g.log_text().contains("cert.pem"), "{}", g.log_text());
    assert_eq!(
        reload_failures(),
        "1",
        "a reload that kept the certificate in use"
    );

    // An expired certificate (a renewal that failed and left an old one): kept out too.
    std::fs::copy(fixture("tls/expired.pem"), w.path("cert.pem")).unwrap();
    std::fs::copy(fixture("tls/expired.key"), w.path("key.pem")).unwrap();
    g.signal("HUP");
    wait_for("the refused reload", Duration::from_secs(10), || {
        g.log_text().contains("expired on 2020-01-31")
    });
    let (cert, _) = tls_connect(g.port);
    assert_eq!(cert, pem_der("tls/server-b.pem"));

    // The config file itself is not read again: an edit is named as waiting for a restart,
    // and a file that no longer loads as a restart that would fail.
    let config = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(&w.config, format!("{config}[rate_limit]\ncapacity = 7\n")).unwrap();
    g.signal("HUP");
    wait_for("the edit said", Duration::from_secs(10), || {
        g.log_text().contains("changed=[rate_limit]")
    });
    assert!(
        g.log_text()
            .contains("these changes take effect at a restart"),
        "{}",
        g.log_text()
    );
    // Broken by a token pasted by mistake into a value the refusal quotes: the log does not
    // repeat it (nor does the start, nor `check`).
    let pasted = "ggt_sEcReTsEcReTsEcReTsEcReTsEcReTsEcReT42";
    assert!(config.contains("listen = \"127.0.0.1:0\""), "{config}");
    std::fs::write(
        &w.config,
        config.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{pasted}\""),
            1,
        ),
    )
    .unwrap();
    g.signal("HUP");
    wait_for("the broken file said", Duration::from_secs(10), || {
        g.log_text()
            .contains("the config file no longer loads, so a restart would fail")
    });
    assert!(!g.log_text().contains(&pasted[4..]), "{}", g.log_text());
    // Other TLS files named, whose key is not the certificate's: a restart would fail too.
    std::fs::copy(fixture("tls/server-b.pem"), w.path("cert2.pem")).unwrap();
    std::fs::copy(fixture("tls/server-a.key"), w.path("key2.pem")).unwrap();
    assert!(
        config.contains("cert.pem") && config.contains("key.pem"),
        "{config}"
    );
    let other = config
        .replace("cert.pem", "cert2.pem")
        .replace("key.pem", "key2.pem");
    std::fs::write(&w.config, other).unwrap();
    g.signal("HUP");
    wait_for("the mismatched key said", Duration::from_secs(10), || {
        g.log_text()
            .contains("names other TLS files, which do not load, so a restart would fail")
    });
    // Another store, in a folder not made yet: a restart would fail to open it.
    assert!(config.contains("path = \"gitgate.db\""), "{config}");
    let other = config.replace("path = \"gitgate.db\"", "path = \"not-made/gitgate.db\"");
    std::fs::write(&w.config, other).unwrap();
    g.signal("HUP");
    wait_for("the unusable store said", Duration::from_secs(10), || {
        g.log_text().contains(
            "names another store, which this process could not write, so a restart would fail",
        )
    });
    assert!(g.log_text().contains("not-made"), "{}", g.log_text());
}

/// A SIGHUP whose reload cannot read the certificate (a hung network mount under it; here a
/// FIFO with no writer in its place) holds up no connection: the reload waits on a thread of
/// its own, the certificate in use stays, and the log says the reload has not finished. Nor
/// does it hold up the stop.
#[test]
fn a_reload_that_cannot_read_the_certificate_holds_up_no_connection() {
    let Some(w) = World::new("a_reload_that_cannot_read_the_certificate_holds_up_no_connection")
    else {
        return;
    };
    let mut g = w.serve(&Options {
        tls: true,
        ..Options::default()
    });
    std::fs::remove_file(w.path("cert.pem")).unwrap();
    let made = Command::new("mkfifo")
        .arg(w.path("cert.pem"))
        .status()
        .unwrap();
    assert!(made.success());
    g.signal("HUP");
    // The reload says nothing until it has read the file: it is stuck opening it (a thread
    // waits in the kernel for the FIFO's writer).
    common::wait_until_blocked_in(
        g.pid(),
        &["wait_for_partner", "fifo_open"],
        Duration::from_millis(300),
    );
    let (cert, mut conn) = tls_connect(g.port);
    assert_eq!(cert, pem_der("tls/server-a.pem"), "the certificate in use");
    assert!(healthz_on(&mut conn).contains("200"));
    wait_for("the late reload said", Duration::from_secs(20), || {
        g.log_text()
            .contains("SIGHUP: the reload has not finished after 10s")
    });
    let (cert, _) = tls_connect(g.port);
    assert_eq!(cert, pem_der("tls/server-a.pem"));
    // Not held up by the reload.
    let status = g.stop_within(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", g.log_text());
}

#[test]
fn bad_certificate_at_start_is_a_clear_error() {
    let Some(w) = World::new("bad_certificate_at_start_is_a_clear_error") else {
        return;
    };
    w.write_config(&Options {
        tls: true,
        ..Options::default()
    });
    std::fs::write(w.path("cert.pem"), "not a certificate").unwrap();
    // Through the harness's runner: a serve that wrongly started is killed at its deadline and
    // fails the test, instead of hanging it.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_gitgate"));
    serve.arg("--config").arg(&w.config).arg("serve");
    let out = common::run(serve, None);
    assert!(!out.status.success());
    let err = &out.stderr;
    assert!(
        err.contains("cert.pem") && err.contains("[server.tls]"),
        "{err}"
    );
    // An expired one: every client would refuse it while gitgate said it was ready.
    std::fs::copy(fixture("tls/expired.pem"), w.path("cert.pem")).unwrap();
    std::fs::copy(fixture("tls/expired.key"), w.path("key.pem")).unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_gitgate"));
    serve.arg("--config").arg(&w.config).arg("serve");
    let out = common::run(serve, None);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("the certificate expired on 2020-01-31"),
        "{}",
        out.stderr
    );
}

#[test]
fn graceful_shutdown_finishes_a_slow_clone() {
    let Some(w) = World::new("graceful_shutdown_finishes_a_slow_clone") else {
        return;
    };
    let mut g = w.serve(&Options {
        grace_seconds: 20,
        ..Options::default()
    });
    std::fs::write(w.nginx.dir.join("slow"), "").unwrap();
    let a = w.path("a");
    // Protocol v0: one POST after the advertisement, which the backend holds for 2 s.
    let clone = git_command(w.dir.path(), &w.home())
        .args([
            "-c",
            "protocol.version=0",
            "clone",
            "-q",
            &w.url(&g),
            a.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = w.nginx.dir.join("started");
    wait_for("the slow POST to start", Duration::from_secs(20), || {
        started.exists()
    });
    g.signal("TERM");
    let out = clone.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the clone in flight finished: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(a.join("README").exists());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = g.exit_status() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "gitgate did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "gitgate exits 0 after a graceful shutdown: {status}"
    );
    assert!(g.log_text().contains("shutting down"), "{}", g.log_text());
}

#[test]
fn refused_upstream_credentials_are_a_502_not_a_prompt() {
    let Some(w) = World::new("refused_upstream_credentials_are_a_502_not_a_prompt") else {
        return;
    };
    std::fs::write(w.path("upstream.secret"), "wrong-secret\n").unwrap();
    let g = w.serve(&Options::default());
    let (status, head, body) = advertise(&w, &g);
    // nginx's 401 is about gitgate's credentials: passing its challenge on would only make git
    // ask the user for a password that cannot help.
    assert_eq!(status, 502, "{head}\n{body}");
    assert!(
        !head.to_ascii_lowercase().contains("www-authenticate"),
        "{head}"
    );
    assert!(body.contains("[upstream.credentials]"), "{body}");
    assert!(!body.contains("wrong-secret") && !head.contains("wrong-secret"));
    // The log names the upstream that refused, as for every other upstream failure.
    let log = g.log_text();
    assert!(
        log.lines().any(|l| l.contains("backend failed")
            && l.contains("[upstream.credentials]")
            && l.contains("upstream http://127.0.0.1:")),
        "{log}"
    );
}

/// What serves the repositories behind nginx gone: nginx's HTML 502 page is nothing git can
/// show; gitgate says what it means, and logs and counts it as a backend failure.
#[test]
fn a_gateway_failure_page_from_the_upstream_is_told_and_logged_as_a_backend_failure() {
    let Some(mut w) = World::new("a_gateway_failure_page_from_the_upstream_is_told") else {
        return;
    };
    let g = w.serve(&Options::default());
    let (status, head, body) = advertise(&w, &g);
    assert_eq!(status, 200, "{head}\n{body}\n{}", g.log_text());
    w.nginx.stop_fcgiwrap();
    let (status, head, body) = advertise(&w, &g);
    assert_eq!(status, 502, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert!(
        body.contains(
            "the upstream git server answered 502 Bad Gateway with a page git cannot show"
        ),
        "{body}"
    );
    assert!(!body.contains("<html"), "{body}");
    // git prints it.
    let out = w.git(w.dir.path(), &["ls-remote", &w.url(&g)]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("remote: the upstream git server answered 502 Bad Gateway"),
        "{said}"
    );
    // The operator hears of it as of any backend failure, naming the upstream.
    let log = g.log_text();
    assert!(
        log.lines().any(|l| l.contains("backend failed")
            && l.contains("answered 502 Bad Gateway")
            && l.contains("upstream http://127.0.0.1:")),
        "{log}"
    );
}

/// An upstream that does not pass gitgate's identity header on as REMOTE_USER (Apache or
/// lighttpd set up as `man git-http-backend` shows): git http-backend refuses every push with a
/// bodiless `403`, which git shows as "returned error: 403" alone. gitgate tells git whose
/// refusal it is, and its log tells the operator what to set.
#[test]
fn a_push_the_upstream_refuses_without_a_reason_is_told_as_its_refusal() {
    let Some(w) = World::new("a_push_the_upstream_refuses_without_a_reason") else {
        return;
    };
    std::fs::write(w.nginx.dir.join("anonymous"), "").unwrap();
    let g = w.serve(&Options::default());
    let url = w.url(&g);
    let work = w.path("work");
    w.git_ok(w.dir.path(), &["clone", "-q", &url, work.to_str().unwrap()]);
    commit_file(&w, &work, "b.txt", b"b\n");
    let out = w.git(&work, &["push", "-q", "origin", "main"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "remote: the upstream git server refused this request (403 Forbidden) without saying \
             why to the client (your token was accepted)"
        ),
        "{said}"
    );
    assert!(!said.contains(&w.token), "{said}");
    let log = g.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("refused a request gitgate allowed")
                && l.contains("pass gitgate's x-forwarded-user header on as REMOTE_USER")
                && l.contains("upstream=\"http://127.0.0.1:")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("path=/scm/team/app.git/info/refs") && l.contains("status=403")),
        "{log}"
    );
    // Told the user, the same push goes through and is the user's in the reflog.
    std::fs::remove_file(w.nginx.dir.join("anonymous")).unwrap();
    w.git_ok(&work, &["push", "-q", "origin", "main"]);
    assert!(reflog(&w).contains("alice"), "{}", reflog(&w));
}

#[test]
fn sighup_reads_the_upstream_secret_again_and_keeps_it_when_the_new_one_is_unusable() {
    let Some(w) = World::new("sighup_reads_the_upstream_secret_again") else {
        return;
    };
    let secret = w.path("upstream.secret");
    std::fs::write(&secret, "old-secret\n").unwrap();
    let g = w.serve(&Options::default());
    let advertise = || advertise(&w, &g);
    // Read at start: nginx wants another one.
    let (status, _, body) = advertise();
    assert_eq!(status, 502, "{body}");
    // The rotated secret, and a reload: no restart.
    std::fs::write(&secret, format!("{UPSTREAM_SECRET}\n")).unwrap();
    g.signal("HUP");
    wait_for("the reload", Duration::from_secs(10), || {
        g.log_text()
            .contains("SIGHUP: upstream credentials read again")
    });
    let (status, _, body) = advertise();
    assert_eq!(status, 200, "{body}");
    w.git_ok(w.dir.path(), &["ls-remote", &w.url(&g)]);
    assert!(!g.log_text().contains("readable by every user"));
    // A rotation that left the file readable by every user: read, and warned of.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    g.signal("HUP");
    wait_for("the mode said", Duration::from_secs(10), || {
        g.log_text()
            .contains("upstream.secret is readable by every user of this machine (mode 0644)")
    });
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // An unusable new secret keeps the one that works, and the log says why.
    std::fs::write(&secret, "\n").unwrap();
    g.signal("HUP");
    wait_for("the refused reload", Duration::from_secs(10), || {
        g.log_text()
            .contains("SIGHUP: keeping the current upstream credentials, the new ones are unusable, so a restart would fail (`gitgate check` says more)")
    });
    let (status, _, body) = advertise();
    assert_eq!(status, 200, "{body}");
    // The config file now names another secret file, a usable one: a restart would read that,
    // and would not fail; the log does not say it would.
    std::fs::write(w.path("upstream2.secret"), format!("{UPSTREAM_SECRET}\n")).unwrap();
    let text = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(
        &w.config,
        text.replace("\"upstream.secret\"", "\"upstream2.secret\""),
    )
    .unwrap();
    g.signal("HUP");
    wait_for(
        "the reload told of the other file",
        Duration::from_secs(10),
        || {
            g.log_text().contains(
            "the new ones are unusable; the config file now names other credentials, which a restart would read",
        )
        },
    );
    // Neither secret ever reaches the log.
    let log = g.log_text();
    assert!(log.contains("the secret is empty"), "{log}");
    assert!(
        !log.contains("old-secret") && !log.contains(UPSTREAM_SECRET),
        "{log}"
    );
}

#[test]
fn a_trusted_front_proxy_extends_x_forwarded_for_but_not_the_identity() {
    let Some(w) = World::new("a_trusted_front_proxy_extends_x_forwarded_for_but_not_the_identity")
    else {
        return;
    };
    // Here the test itself plays the load balancer on 127.0.0.1, which appended the client's
    // address, 203.0.113.9, to an X-Forwarded-For the client sent itself (6.6.6.6): that part
    // proves nothing and does not reach the upstream.
    let g = w.serve(&Options {
        trusted: "127.0.0.0/8",
        ..Options::default()
    });
    w.git_ok(
        w.dir.path(),
        &[
            "-c",
            "http.extraHeader=X-Forwarded-For: 6.6.6.6, 203.0.113.9",
            "-c",
            "http.extraHeader=X-Forwarded-Proto: https",
            "-c",
            "http.extraHeader=X-Forwarded-Host: git.example.com",
            "-c",
            "http.extraHeader=X-Forwarded-User: mallory",
            "ls-remote",
            &w.url(&g),
        ],
    );
    let log = w.nginx.access_log();
    assert!(!log.is_empty());
    for line in log.lines() {
        assert!(line.contains("xff=\"203.0.113.9, 127.0.0.1\""), "{line}");
        assert!(line.contains("fproto=\"https\""), "{line}");
        assert!(line.contains("fhost=\"git.example.com\""), "{line}");
        assert!(line.contains("user=\"alice\""), "{line}");
    }
}

/// Not a test: `cargo test --release --test upstream_nginx -- --ignored --nocapture bench`
/// prints how long a clone of a 64 MiB repository takes straight from nginx and through
/// gitgate, to see what the hop costs.
#[test]
#[ignore]
fn bench_clone_direct_and_through_gitgate() {
    let Some(w) = World::new("bench_clone_direct_and_through_gitgate") else {
        return;
    };
    let seed = w.path("seed");
    let data = common::noise(64 << 20, 0x2545_F491_4F6C_DD1D);
    commit_file(&w, &seed, "big.bin", &data);
    w.git_ok(&seed, &["push", "-q", w.bare().to_str().unwrap(), "main"]);
    let g = w.serve(&Options::default());
    let direct = format!("http://127.0.0.1:{}/git/team/app.git", w.nginx.port);
    let auth = format!("http.extraHeader=Authorization: Bearer {UPSTREAM_SECRET}");
    let mut best = [Duration::MAX; 2];
    for round in 0..3 {
        for (i, (url, extra)) in [(direct.as_str(), auth.as_str()), (&w.url(&g), "x.y=z")]
            .into_iter()
            .enumerate()
        {
            let dest = w.path(&format!("c{round}-{i}"));
            let start = Instant::now();
            w.git_ok(
                w.dir.path(),
                &["-c", extra, "clone", "-q", url, dest.to_str().unwrap()],
            );
            best[i] = best[i].min(start.elapsed());
            std::fs::remove_dir_all(&dest).unwrap();
        }
    }
    eprintln!(
        "clone of 64 MiB, best of 3: nginx direct {:?}, through gitgate {:?}; gitgate peak RSS {} KiB",
        best[0],
        best[1],
        peak_rss_kib(g.pid())
    );
}

/// A CA of `ca_file` outside its validity dates is not trusted (rustls never looks at a trust
/// anchor's dates; OpenSSL, and so git, curl and nginx, refuse an expired one): left out with
/// a warning at a start and in `check`, the others still used; a file of such CAs alone is
/// refused by both.
#[test]
fn a_ca_of_the_ca_file_out_of_its_dates_is_left_out() {
    let Some(w) = World::new("a_ca_of_the_ca_file_out_of_its_dates_is_left_out") else {
        return;
    };
    let cas = w.path("cas.pem");
    let mut pem = std::fs::read(fixture("tls/ca.pem")).unwrap();
    pem.extend(std::fs::read(fixture("tls/expired.pem")).unwrap());
    std::fs::write(&cas, pem).unwrap();
    let warning = format!(
        "[upstream] ca_file = \"{}\": certificate 2 of the file: the certificate expired on \
         2020-01-31T00:00:00Z; it is not trusted",
        cas.display()
    );
    let g = serve_and_clone_with_ca(&w, cas.clone());
    let log = g.log_text();
    // In the log, a quoted field of its own (its quotes escaped).
    let logged = format!("reason={:?}", warning);
    let logged = logged.trim_end_matches('"');
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(logged)),
        "{log}"
    );
    drop(g);
    let check = |config: &Path| {
        let mut cmd = common::gitgate_command(config);
        cmd.arg("check");
        common::run(cmd, None)
    };
    let out = check(&w.config);
    let text = out.ok();
    assert!(
        text.contains(&format!("warning: {warning}")) && text.contains("(1 warning)"),
        "{text}"
    );

    w.write_config(&Options {
        https_upstream: Some(Some(fixture("tls/expired.pem"))),
        ..Options::default()
    });
    let refusal = "holds no CA certificate that is valid now (certificate 1 of the file: the \
                   certificate expired on 2020-01-31T00:00:00Z)";
    check(&w.config).fails_with(refusal);
    let mut serve = common::gitgate_command(&w.config);
    serve.arg("serve");
    common::run(serve, None).fails_with(refusal);
}

/// `check` tells an upstream that only accepts connections from one that speaks HTTP there:
/// an `http://` URL for nginx's https port connects, and every git request would get a 400; and
/// one that refuses gitgate's own credentials.
#[test]
fn check_warns_of_an_http_url_for_an_https_port() {
    let Some(w) = World::new("check_warns_of_an_http_url_for_an_https_port") else {
        return;
    };
    w.write_config(&Options::default());
    let check = || {
        let out = common::gitgate_command(&w.config)
            .arg("check")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let good = check();
    // The healthy upstream is ready, in its own line (the not-ready warning says "ready" too),
    // and no warning about it follows from its answer.
    let ready = format!("upstream http://127.0.0.1:{}/git: ready", w.nginx.port);
    assert!(
        // (" 401 ": the port nginx was given may hold those digits.)
        !good.contains("400 Bad Request")
            && !good.contains(" 401 ")
            && good.lines().any(|l| l == ready)
            && !good.lines().any(|l| l.starts_with("warning: upstream")),
        "{good}"
    );
    // gitgate's own credentials refused there: every git request would get 502.
    std::fs::write(w.path("upstream.secret"), "wrong-secret\n").unwrap();
    let refused = check();
    assert!(
        refused.contains(
            "answers 401 Unauthorized to a HEAD of its base path with the secret \
                          of [upstream.credentials]: check that secret"
        ) && !refused.contains("wrong-secret"),
        "{refused}"
    );
    std::fs::write(w.path("upstream.secret"), format!("{UPSTREAM_SECRET}\n")).unwrap();
    let text = std::fs::read_to_string(&w.config).unwrap();
    let wrong = text.replace(
        &format!("127.0.0.1:{}/git", w.nginx.port),
        &format!("127.0.0.1:{}/git", w.nginx.tls_port),
    );
    assert_ne!(wrong, text);
    std::fs::write(&w.config, wrong).unwrap();
    let out = check();
    assert!(
        out.contains("answers 400 Bad Request to a plain HEAD of its base path")
            && out.contains("write https://"),
        "{out}"
    );
    // Served so all the same, each git request gets a 502 git shows, and the log says what to
    // change (nginx's own 400 is a page git would show only as "returned error: 400").
    let g = start_gitgate(&w.config);
    let (status, _, body) = advertise(&w, &g);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(
            "the upstream git server answered 400 Bad Request with a page git cannot show"
        ) && !body.contains("[upstream]"),
        "{body}"
    );
    let log = log_with(&g, "backend failed");
    assert!(
        log.contains(
            "the page says plain HTTP came to its https port: write https:// in [upstream] url"
        ),
        "{log}"
    );
}

/// nginx's other 400 pages (here: a header too large for its buffers, which gitgate passes on)
/// are a 502 git shows too, without advice about https that does not apply.
#[test]
fn an_upstream_400_page_is_a_502_without_https_advice() {
    let Some(w) = World::new("an_upstream_400_page_is_a_502_without_https_advice") else {
        return;
    };
    let g = w.serve(&Options::default());
    let agent = format!("git/2.47 {}", "u".repeat(9000));
    let (status, _, body) = http(
        g.port,
        "GET",
        "/scm/team/app.git/info/refs?service=git-upload-pack",
        &[
            ("Authorization", &basic("alice", &w.token)),
            ("User-Agent", &agent),
        ],
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(
            "the upstream git server answered 400 Bad Request with a page git cannot show"
        ),
        "{body}"
    );
    let log = log_with(&g, "backend failed");
    assert!(
        log.contains("its page is not text") && !log.contains("https://"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// nginx in front of gitgate: the usual way to end TLS before it.

/// An nginx that proxies two ports to gitgate: `streaming` with the settings the README gives
/// (HTTP/1.1, no request or answer buffering), `default` with nginx's own (HTTP/1.0, both
/// buffered). Killed on drop.
struct Front {
    child: Child,
    streaming: u16,
    default: u16,
}

impl Front {
    fn start(dir: &Path, nginx: &Path, gitgate: u16) -> Front {
        let dir = dir.join("front");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        // Ports from `free_port` are let go before nginx binds them, and another test's server
        // can take one first: then nginx fails, or answers on one port while the other is
        // another's, and it is started again on new ports.
        for attempt in 1.. {
            let (streaming, default) = (common::free_port(), common::free_port());
            if streaming != default {
                if let Some(front) = Front::launch(&dir, nginx, gitgate, streaming, default) {
                    return front;
                }
            }
            assert!(
                attempt < 5,
                "the front nginx's ports were taken five times over"
            );
        }
        unreachable!()
    }

    /// nginx on `streaming` and `default`, once it answers on both; `None` (nginx stopped) when
    /// it could not bind them, or another process listens on one of them.
    fn launch(
        dir: &Path,
        nginx: &Path,
        gitgate: u16,
        streaming: u16,
        default: u16,
    ) -> Option<Front> {
        let user = if common::is_root() {
            "user root root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
             scgi_temp_path {d}/tmp/scgi;\n  access_log off;\n  client_max_body_size 0;\n\
             # A push that hangs fails within this, not nginx's default minute.\n\
             proxy_read_timeout 15s;\n\
             server {{ listen 127.0.0.1:{streaming};\n    location / {{\n\
               proxy_pass http://127.0.0.1:{gitgate};\n      proxy_http_version 1.1;\n\
               proxy_request_buffering off;\n      proxy_buffering off;\n    }}\n  }}\n\
             server {{ listen 127.0.0.1:{default};\n\
               location / {{ proxy_pass http://127.0.0.1:{gitgate}; }}\n  }}\n}}\n",
            d = dir.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", streaming)).is_err()
            || TcpStream::connect(("127.0.0.1", default)).is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                // Its ports taken: tried again on others.
                assert!(
                    log.contains("Address already in use"),
                    "nginx exited ({status}): {log}"
                );
                return None;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let front = Front {
            child,
            streaming,
            default,
        };
        let pid = front.child.id();
        (common::listens_on(pid, streaming) && common::listens_on(pid, default)).then_some(front)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// git http-backend writes its answer's head before it reads a push, and nginx stops sending a
/// request body once the answer's head has come: gitgate passing the head on at once leaves a
/// push through nginx short of all but its first megabytes, hanging until nginx's read
/// timeout. Pushes of 12 MB through both of nginx's set-ups, chunked and with a length, to
/// the embedded CGI backend, arrive whole: gitgate holds the head until the push is fed.
#[test]
fn a_push_through_nginx_in_front_reaches_the_cgi_backend_whole() {
    let Some(tools) = tools("a_push_through_nginx_in_front_reaches_the_cgi_backend_whole") else {
        return;
    };
    let sb = common::Sandbox::new();
    sb.create_repo("team/app");
    sb.add_user("alice", common::PASSWORD);
    sb.grant("alice", "team", "write");
    let token = sb.personal_token("alice", common::PASSWORD, "laptop", &["REPO_WRITE"]);
    let server = sb.serve();
    let front = Front::start(sb.root(), &tools.nginx, server.port);
    let url = |port: u16| {
        format!(
            "http://alice:{}@127.0.0.1:{port}/team/app.git",
            token.secret
        )
    };
    let work = sb.root().join("work");
    sb.git(
        sb.root(),
        &["clone", "-q", &url(front.streaming), work.to_str().unwrap()],
    )
    .ok();
    for (round, (port, post_buffer)) in [
        (front.streaming, "1m"),  // chunked: over git's buffer
        (front.streaming, "64m"), // one body with a Content-Length
        (front.default, "1m"),
        (front.default, "64m"),
    ]
    .into_iter()
    .enumerate()
    {
        let pushed = sb.commit_file(
            &work,
            &format!("noise-{round}.bin"),
            &common::noise(12 << 20, round as u64 + 1),
            "twelve megabytes of noise",
        );
        let buffer = format!("http.postBuffer={post_buffer}");
        sb.git(
            &work,
            &["-c", &buffer, "push", "-q", &url(port), "HEAD:main"],
        )
        .ok();
        assert_eq!(
            sb.rev(&sb.bare("team/app"), "main"),
            pushed,
            "round {round} through port {port}, postBuffer {post_buffer}"
        );
    }
    drop(front);
}

/// A refusal of a push whose body is still arriving reaches git through nginx as gitgate's own
/// answer, not as nginx's `502`: gitgate reads (and drops) what still comes for a while after
/// it answered, instead of closing on unread bytes, which would make the kernel reset the
/// connection before nginx has passed the answer on; past 16 MiB it stops reading but keeps
/// the connection open a while, so that nginx, sending a body it has stored at full speed, is
/// stopped by full buffers and reads the answer. Bodies of 12 and 40 MB, with a length and
/// chunked, through both of nginx's set-ups, each with a wrong token and with a read-only one;
/// and a push the backend is not asked for (its folder is a link: a 500 after authorization).
#[test]
fn a_refusal_of_a_push_still_uploading_reaches_git_through_nginx() {
    let Some(tools) = tools("a_refusal_of_a_push_still_uploading_reaches_git_through_nginx") else {
        return;
    };
    let sb = common::Sandbox::new();
    sb.create_repo("team/app");
    sb.create_repo("other/linked");
    std::os::unix::fs::symlink(
        sb.bare("other/linked"),
        sb.bare("team/app").with_file_name("linked.git"),
    )
    .unwrap();
    sb.add_user("alice", common::PASSWORD);
    sb.grant("alice", "team", "write");
    let reader = sb.personal_token("alice", common::PASSWORD, "reader", &["REPO_READ"]);
    let writer = sb.personal_token("alice", common::PASSWORD, "writer", &["REPO_WRITE"]);
    let server = sb.serve();
    let front = Front::start(sb.root(), &tools.nginx, server.port);
    for size in [12 << 20, 40 << 20] {
        let body = common::noise(size, 7);
        for port in [front.streaming, front.default] {
            for chunked in [false, true] {
                for (repo, password, status, says) in [
                    ("app", "not-a-token", 401, "invalid token"),
                    ("app", reader.secret.as_str(), 403, "push needs REPO_WRITE"),
                    ("linked", writer.secret.as_str(), 500, "symbolic link"),
                ] {
                    let answer = post_through(port, repo, password, &body, chunked);
                    let round = format!(
                        "{size} bytes to {repo} through port {port}, chunked {chunked}, \
                         expected {status}"
                    );
                    assert!(
                        answer.starts_with(&format!("HTTP/1.1 {status}")),
                        "{round}: {}",
                        answer.lines().next().unwrap_or_default()
                    );
                    assert!(answer.contains(says), "{round}: {answer}");
                }
            }
        }
    }
    drop(front);
}

/// POSTs `body` as a push to `team/{repo}` at `port` as alice with `password`, the body written
/// by a thread of its own (nginx may stop reading it); what came back, as text.
fn post_through(port: u16, repo: &str, password: &str, body: &[u8], chunked: bool) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "POST /team/{repo}.git/git-receive-pack HTTP/1.1\r\nHost: git\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n{framing}\r\n\
         Connection: close\r\n\r\n",
        common::basic("alice", password)
    );
    let mut writer = stream.try_clone().unwrap();
    let body = body.to_vec();
    let sending = std::thread::spawn(move || {
        writer.write_all(head.as_bytes())?;
        for piece in body.chunks(64 << 10) {
            if chunked {
                writer.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                writer.write_all(piece)?;
                writer.write_all(b"\r\n")?;
            } else {
                writer.write_all(piece)?;
            }
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n")?;
        }
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    drop(stream);
    let _ = sending.join();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A small push (git sends one of less than its 1 MiB `http.postBuffer` with a
/// `Content-Length`) whose client goes away half-way: gitgate sends pushes up chunked, so that
/// nginx tells git http-backend no `CONTENT_LENGTH`. Told one, git http-backend copies the body
/// itself and loops at full CPU for good on its early end, holding one of fcgiwrap's workers
/// (four here): a few such pushes and the upstream answers nothing more (seen in a soak run).
#[test]
fn a_push_cut_off_on_its_way_up_leaves_no_git_process_behind_fcgiwrap() {
    let Some(w) = World::new("a_push_cut_off_on_its_way_up_leaves_no_git_process_behind_fcgiwrap")
    else {
        return;
    };
    let g = w.serve(&Options::default());
    // A commit of 256 KiB that does not compress, packed whole.
    let src = w.path("src");
    w.git_ok(&src, &["init", "-q", "-b", "main"]);
    let noise = common::noise(256 * 1024, 0x9E37_79B9_7F4A_7C15);
    commit_file(&w, &src, "noise.bin", &noise);
    let head = w.git_ok(&src, &["rev-parse", "HEAD"]).trim().to_owned();
    let mut packing = git_command(&src, &w.home())
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    packing.stdin.take().unwrap().write_all(b"HEAD\n").unwrap();
    let pack = packing.wait_with_output().unwrap().stdout;
    assert!(pack.len() > 200 * 1024, "pack of {} bytes", pack.len());
    let command = format!("{} {head} refs/heads/cut\0report-status\n", "0".repeat(40));
    let mut body = format!("{:04x}{command}0000", command.len() + 4).into_bytes();
    body.extend_from_slice(&pack);

    let group = w.nginx.fcgiwrap.id();
    assert_eq!(git_processes_of_group(group), 0);
    let mut stream = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    let head = format!(
        "POST /scm/team/app.git/git-receive-pack HTTP/1.1\r\nHost: git\r\nAuthorization: {}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\nContent-Length: {}\r\n\r\n",
        basic("alice", &w.token),
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    wait_for(
        "the push's git http-backend",
        Duration::from_secs(10),
        || git_processes_of_group(group) > 0,
    );
    // The client goes away with half of its pack sent.
    drop(stream);
    wait_for(
        "the cut push's git processes behind fcgiwrap to end",
        Duration::from_secs(10),
        || git_processes_of_group(group) == 0,
    );
    assert!(
        !w.bare().join("refs/heads/cut").exists(),
        "a push cut off half-way made its ref"
    );
    let quarantined: Vec<_> = std::fs::read_dir(w.bare().join("objects"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("tmp_objdir-incoming"))
        .collect();
    assert!(quarantined.is_empty(), "left behind: {quarantined:?}");
    // The upstream still serves.
    assert_eq!(advertise(&w, &g).0, 200);
}
