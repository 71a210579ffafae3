//! End to end in front of the other web servers the README shows running `git http-backend`
//! behind gitgate (its "Other web servers" section): the real `git` client → gitgate → Apache
//! 2.4 (`mod_cgid`) or lighttpd → `git http-backend`, on loopback, each test with its own ports
//! and temporary folder, configured as the README says. What is checked is what those setups
//! need beyond `man git-http-backend`: the user gitgate authenticated reaches git http-backend
//! as `REMOTE_USER` (pushes are allowed, and attributed in the reflog), and pushes, which gitgate
//! sends chunked, arrive whole.
//!
//! Without `apache2` or `lighttpd` (they are not in `.ci/run`'s packages) a test prints a notice
//! and passes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{find, Sandbox, Server};

const PASSWORD: &str = "correct horse";
const UPSTREAM_SECRET: &str = "upstream-s3cret";

/// The program, or `None` with a notice saying what to install (under `CI`, which installs
/// it, a failure: see `common::skipping`).
fn program(test: &str, name: &str, package: &str) -> Option<PathBuf> {
    let found = find(name);
    if found.is_none() {
        common::skipping(&format!(
            "{test}: {name} is not installed (apt-get install {package})"
        ));
    }
    found
}

/// The README's block of `lang` (its "Other web servers" section), its values for a real
/// site (`from`) made this test's (`to`), each of which must be in it: the test runs the
/// set-up as a reader copies it, comments and all.
fn readme_block(lang: &str, values: &[(&str, &str)]) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let fence = format!("```{lang}\n");
    let start = readme
        .find(&fence)
        .unwrap_or_else(|| panic!("no {fence:?} in the README"))
        + fence.len();
    let mut block = readme[start..start + readme[start..].find("```").unwrap()].to_string();
    for (from, to) in values {
        assert!(
            block.contains(from),
            "the README's {lang} block has no {from:?}:\n{block}"
        );
        block = block.replace(from, to);
    }
    block
}

/// A web server in a process group of its own (Apache forks its workers and `mod_cgid`'s
/// daemon): all of it goes with the test.
struct WebServer {
    child: Child,
}

impl WebServer {
    /// The server `command` gives for a port (its configuration written for it), once it
    /// answers there, and the port. A port from `free_port` is let go before the server binds
    /// it, and another test's server can take it first: the server then fails to start, or
    /// what answers is the other one; either way it is started again on another port.
    fn start(command: impl Fn(u16) -> Command, log: &Path) -> (WebServer, u16) {
        for attempt in 1.. {
            let port = common::free_port();
            if let Some(server) = WebServer::launch(command(port), port, log) {
                return (server, port);
            }
            assert!(
                attempt < 5,
                "the web server could not listen on a free port five times over: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        unreachable!()
    }

    /// `cmd`, once it answers on `port`; `None` (stopped) if it exits first or another process
    /// listens there.
    fn launch(mut cmd: Command, port: u16, log: &Path) -> Option<WebServer> {
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the web server");
        let mut server = WebServer { child };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(_)) = server.child.try_wait() {
                return None;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the web server did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        common::listens_on(server.child.id(), port).then_some(server)
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// A sandbox with `team/app` (one commit), alice with write on `team` and her token, the
/// folders open to the web server's user (`nobody` when the tests run as root: neither server
/// serves as root).
struct World {
    sandbox: Sandbox,
    token: String,
}

impl World {
    fn new() -> World {
        let sandbox = Sandbox::new();
        sandbox.create_repo("team/app");
        sandbox
            .git(
                sandbox.root(),
                &[
                    "--git-dir",
                    sandbox.bare("team/app").to_str().unwrap(),
                    "config",
                    "core.logAllRefUpdates",
                    "true",
                ],
            )
            .ok();
        sandbox.add_user("alice", PASSWORD);
        sandbox.grant("alice", "team", "write");
        let token = sandbox
            .personal_token("alice", PASSWORD, "laptop", &["REPO_WRITE"])
            .secret;
        std::fs::set_permissions(sandbox.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if common::is_root() {
            let given = Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(sandbox.repos())
                .status()
                .unwrap();
            assert!(given.success());
        }
        World { sandbox, token }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.sandbox.root().join(p)
    }

    /// gitgate in front of `url`, sending the upstream secret as a bearer token.
    fn serve(&self, url: &str) -> Server {
        let secret = self.path("upstream.secret");
        std::fs::write(&secret, format!("{UPSTREAM_SECRET}\n")).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            self.sandbox.config(),
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ngit_prefix = \"/\"\n\
                 [store]\npath = \"gitgate.db\"\n\
                 [upstream]\nurl = \"{url}\"\n\
                 [upstream.credentials]\nscheme = \"bearer\"\nfile = \"upstream.secret\"\n\
                 [auth]\nrealm = \"gitgate\"\n"
            ),
        )
        .unwrap();
        self.sandbox.serve()
    }

    /// Clone through gitgate, push a commit with 3 MB of noise (past git's 1 MiB post buffer:
    /// chunked from git too), fetch it back into a second clone; the reflog names alice.
    fn clone_push_fetch(&self, g: &Server) {
        let s = &self.sandbox;
        let url = g.url_with("alice", &self.token, "team/app");
        let a = self.path("a");
        let b = self.path("b");
        s.git(s.root(), &["clone", "-q", &url, a.to_str().unwrap()])
            .ok();
        s.git(s.root(), &["clone", "-q", &url, b.to_str().unwrap()])
            .ok();
        let noise: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let pushed = s.commit_file(&a, "noise.bin", &noise, "noise");
        s.git(&a, &["push", "-q", "origin", "main"]).ok();
        s.git(&b, &["-c", "protocol.version=0", "pull", "-q", "--ff-only"])
            .ok();
        assert_eq!(s.rev(&b, "HEAD"), pushed);
        assert_eq!(std::fs::read(b.join("noise.bin")).unwrap(), noise);
        let reflog =
            std::fs::read_to_string(s.bare("team/app").join("logs/refs/heads/main")).unwrap();
        let last = reflog.lines().last().unwrap_or_default();
        assert!(
            last.contains(&pushed) && last.contains("alice <alice@"),
            "{reflog}"
        );
        let log = g.log_text();
        assert!(!log.contains("backend failed"), "{log}");
    }
}

/// Apache 2.4 with `mod_cgid`, set up as the README's "Other web servers" section has it:
/// `SetEnvIf` makes gitgate's `X-Forwarded-User` the `REMOTE_USER` git http-backend needs for a
/// push, and `Require expr` lets only gitgate's bearer secret in.
#[test]
fn clone_and_push_through_apache_as_the_readme_sets_it_up() {
    let test = "clone_and_push_through_apache_as_the_readme_sets_it_up";
    let Some(apache) = program(test, "apache2", "apache2") else {
        return;
    };
    let modules = Path::new("/usr/lib/apache2/modules");
    if !modules.join("mod_cgid.so").is_file() {
        common::skipping(&format!("{test}: no mod_cgid in {}", modules.display()));
        return;
    }
    let w = World::new();
    let dir = w.path("apache");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let user = if common::is_root() {
        "User #65534\nGroup #65534\n"
    } else {
        ""
    };
    let load = [
        "mpm_event",
        "authz_core",
        "alias",
        "env",
        "setenvif",
        "cgid",
    ]
    .iter()
    .map(|m| format!("LoadModule {m}_module {}/mod_{m}.so\n", modules.display()))
    .collect::<String>();
    let apache_on = |port: u16| {
        let conf = format!(
            "ServerRoot \"{dir}\"\nServerName localhost\nDefaultRuntimeDir \"{dir}\"\n\
             PidFile \"{dir}/httpd.pid\"\nErrorLog \"{dir}/error.log\"\nScriptSock \"{dir}/cgid.sock\"\n\
             {load}{user}\
             <Directory \"{backend_dir}\">\n    Require all granted\n</Directory>\n\
             {readme}",
            dir = dir.display(),
            backend_dir = common::git_http_backend().parent().unwrap().display(),
            readme = readme_block(
                "apache",
                &[
                    ("127.0.0.1:8081", &format!("127.0.0.1:{port}")),
                    ("/srv/git", &w.sandbox.repos().display().to_string()),
                    (
                        "/usr/lib/git-core/git-http-backend/",
                        &format!("{}/", common::git_http_backend().display()),
                    ),
                    ("<the secret>", UPSTREAM_SECRET),
                ],
            ),
        );
        std::fs::write(dir.join("httpd.conf"), conf).unwrap();
        let mut cmd = Command::new(&apache);
        cmd.arg("-f")
            .arg(dir.join("httpd.conf"))
            .arg("-DFOREGROUND");
        cmd
    };
    let (_apache, port) = WebServer::start(apache_on, &dir.join("error.log"));

    // Only gitgate's secret is let in: past gitgate, a client could name any user.
    let past = common::raw_http(
        port,
        b"GET /git/team/app.git/info/refs?service=git-receive-pack HTTP/1.1\r\n\
          Host: localhost\r\nX-Forwarded-User: alice\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(past.status, 403);

    let g = w.serve(&format!("http://127.0.0.1:{port}/git"));
    w.clone_push_fetch(&g);
}

/// lighttpd, set up as the README's section has it: it cannot make a variable of a header, so
/// a wrapper makes `HTTP_X_FORWARDED_USER` the `REMOTE_USER`.
#[test]
fn clone_and_push_through_lighttpd_as_the_readme_sets_it_up() {
    let test = "clone_and_push_through_lighttpd_as_the_readme_sets_it_up";
    let Some(lighttpd) = program(test, "lighttpd", "lighttpd") else {
        return;
    };
    let w = World::new();
    let dir = w.path("lighttpd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let wrapper = dir.join("git-backend");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nREMOTE_USER=\"$HTTP_X_FORWARDED_USER\" exec {}\n",
            common::git_http_backend().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = if common::is_root() {
        "server.username = \"nobody\"\nserver.groupname = \"nogroup\"\n"
    } else {
        ""
    };
    let lighttpd_on = |port: u16| {
        let conf = format!(
            "server.modules = ( \"mod_alias\", \"mod_cgi\", \"mod_setenv\" )\n\
             server.document-root = \"{dir}\"\n\
             server.errorlog = \"{dir}/error.log\"\n\
             {user}\
             {readme}",
            dir = dir.display(),
            readme = readme_block(
                "lighttpd",
                &[
                    ("8081", &port.to_string()),
                    ("/usr/local/lib/git-backend", &wrapper.display().to_string()),
                    ("/srv/git", &w.sandbox.repos().display().to_string()),
                ],
            ),
        );
        std::fs::write(dir.join("lighttpd.conf"), conf).unwrap();
        let mut cmd = Command::new(&lighttpd);
        cmd.arg("-D").arg("-f").arg(dir.join("lighttpd.conf"));
        cmd
    };
    let (_lighttpd, port) = WebServer::start(lighttpd_on, &dir.join("error.log"));

    let g = w.serve(&format!("http://127.0.0.1:{port}/git"));
    w.clone_push_fetch(&g);
}
