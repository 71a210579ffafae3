//! Harness shared by every end-to-end suite: `tests/lifecycle_support` (the REST and lifecycle
//! suites) and `tests/hardening_support` (the raw-TCP suites) build their fixtures on it.
//!
//! Every test builds its own [`Sandbox`]: a tempdir holding a config file, the SQLite store, the
//! repositories (`repos/`), a home directory for git, and a copy of a backend wrapper from
//! `fixtures/` (the real `git http-backend`, plus a line per forwarded request in
//! `backend-hits.log`). [`Sandbox::serve`] starts `gitgate serve` on port 0 and learns the port
//! from its log; the process is killed when the [`Server`] is dropped. Nothing is shared between
//! tests, so they run in parallel.
//!
//! Every child process runs under a deadline: a hung proxy fails the test instead of the suite.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod git_matrix;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long any single child process (git, gitgate CLI) may run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(90);
/// How long `gitgate serve` may take to log its listening address (a deadline, not a wait: the
/// harness polls the log every 1 to 20 ms; generous because suites start servers in parallel on
/// two cores).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// How long a test waits for an event that comes on its own once its cause is done (a log
/// line, an audit row, a counter that moves, a probe's answer that turns): a deadline, not a
/// wait, so it can be long. Waits of 3 to 5 s failed where CI's loaded two cores stretched the
/// server's second-long windows and the test's own polls (each a CLI process or a request).
pub const EVENT_DEADLINE: Duration = Duration::from_secs(30);

/// A password no other string in the suite contains, so finding it anywhere is a leak.
pub const PASSWORD: &str = "pw-Quokka-7f3a9c-Marzipan";

pub fn gitgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gitgate")
}

/// `gitgate --config CONFIG`, not swayed by the caller's `GITGATE_CONFIG` or `GITGATE_LOG`.
pub fn gitgate_command(config: &Path) -> Command {
    let mut cmd = Command::new(gitgate_bin());
    cmd.env_remove("GITGATE_CONFIG")
        .env_remove("GITGATE_LOG")
        .arg("--config")
        .arg(config);
    cmd
}

/// Whether the tests run as root (web servers are then told which user to run as).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A program on `PATH` or in the system's `sbin` folders (where Debian puts nginx, fcgiwrap,
/// Apache and lighttpd), or `None`.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Copies the program `from` to `to` with mode 755, ready to be run at once, by a child process
/// (`install`): a file this process holds open for writing is inherited by every child that
/// another test's thread forks meanwhile, until that child's `exec`, and running a file that any
/// process holds open for writing fails with `Text file busy` (ETXTBSY). With more test
/// threads, running a copy just written with `fs::write` failed so (tests/cli.rs).
pub fn install_executable(from: &Path, to: &Path) {
    let out = Command::new("install")
        .args(["-m", "755"])
        .arg(from)
        .arg(to)
        .output()
        .expect("install (coreutils)");
    assert!(
        out.status.success(),
        "install {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The real `git http-backend` of the git on PATH.
pub fn git_http_backend() -> &'static Path {
    static BACKEND: OnceLock<PathBuf> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let out = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git must be installed to run the end-to-end tests");
        let dir = String::from_utf8(out.stdout).unwrap();
        let backend = Path::new(dir.trim()).join("git-http-backend");
        assert!(
            backend.exists(),
            "no git-http-backend at {}",
            backend.display()
        );
        backend
    })
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// Running child processes with a deadline

/// The outcome of a child process, with its output decoded for assertions.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "expected success: {self}");
        &self.stdout
    }

    /// Asserts failure and that stderr contains `needle`; returns stderr.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) -> &str {
        assert!(!self.status.success(), "expected failure: {self}");
        assert!(
            self.stderr.contains(needle),
            "expected stderr to contain {needle:?}: {self}"
        );
        &self.stderr
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// libfaketime, which moves the wall clock of the process it is preloaded into (Debian's
/// `faketime` package; `.ci/run` installs it). Missing, the test that needs it fails under CI
/// and is skipped elsewhere, with a line that says so.
pub fn faketime_library() -> Option<&'static str> {
    for lib in [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ] {
        if Path::new(lib).exists() {
            return Some(lib);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "libfaketime is missing: apt-get install faketime"
    );
    eprintln!("skipped: libfaketime is missing (apt-get install faketime)");
    None
}

/// The first pause of a loop that polls a child process or a log: most git and CLI commands
/// end within a few milliseconds, and a suite runs thousands of them, so a fixed 20 ms pause
/// made each one take 20 ms at least.
const FIRST_POLL: Duration = Duration::from_millis(1);
/// The longest pause between two polls: a long command is not polled more than 50 times a
/// second.
const LAST_POLL: Duration = Duration::from_millis(20);

/// The pause after `pause`: twice as long, up to [`LAST_POLL`].
fn next_poll(pause: Duration) -> Duration {
    (pause * 2).min(LAST_POLL)
}

/// Runs `cmd` to completion (feeding `stdin`), killing it after [`COMMAND_DEADLINE`].
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Run {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let mut pause = FIRST_POLL;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > COMMAND_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("{what} did not finish within {COMMAND_DEADLINE:?}; stderr:\n{stderr}");
        }
        thread::sleep(pause);
        pause = next_poll(pause);
    };
    Run {
        what,
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The sandbox: config, store, repositories and a git home of one test

/// Which CGI program the sandbox's config points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `fixtures/counting-backend.sh`: the real backend, counting requests.
    Counting,
    /// `fixtures/failing-backend.sh`: exits 1 for `*/broken.git/*`, otherwise like `Counting`.
    Failing,
}

#[derive(Clone, Debug)]
pub struct Setup {
    pub git_prefix: String,
    pub backend: Backend,
    /// More lines inside `[server]`.
    pub server_extra: String,
    /// More sections at the end of the config.
    pub extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            git_prefix: "/".into(),
            backend: Backend::Counting,
            server_extra: String::new(),
            extra: String::new(),
        }
    }
}

pub struct Sandbox {
    dir: tempfile::TempDir,
    pub setup: Setup,
}

/// A token as `gitgate token create --json` reported it.
#[derive(Clone, Debug)]
pub struct Token {
    pub id: String,
    pub secret: String,
    pub json: Value,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        Self::with(Setup::default())
    }

    pub fn with(setup: Setup) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gitgate-e2e-")
            .tempdir()
            .unwrap();
        let sandbox = Sandbox { dir, setup };
        fs::create_dir_all(sandbox.repos()).unwrap();
        fs::create_dir_all(sandbox.home()).unwrap();
        fs::write(
            sandbox.home().join(".gitconfig"),
            "[user]\n\tname = Gate Tester\n\temail = tester@example.com\n\
             [init]\n\tdefaultBranch = main\n\
             [credential]\n\thelper =\n\
             [advice]\n\tdetachedHead = false\n",
        )
        .unwrap();
        let template = match sandbox.setup.backend {
            Backend::Counting => "counting-backend.sh",
            Backend::Failing => "failing-backend.sh",
        };
        let script = fs::read_to_string(fixture(template))
            .unwrap()
            .replace("@HITS_LOG@", sandbox.hits_log().to_str().unwrap())
            .replace("@GIT_HTTP_BACKEND@", git_http_backend().to_str().unwrap());
        let script_path = sandbox.cgi_script();
        fs::write(&script_path, script).unwrap();
        fs::set_permissions(&script_path, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(sandbox.config(), sandbox.config_text()).unwrap();
        sandbox
    }

    /// The valid config this sandbox uses. Store and repositories are given relative to the
    /// config file's folder; the CGI program by absolute path.
    pub fn config_text(&self) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ngit_prefix = \"{prefix}\"\n{server_extra}\n\
             [store]\npath = \"gitgate.db\"\n\n\
             [upstream]\ncgi = \"{cgi}\"\nproject_root = \"repos\"\n\n\
             [auth]\nrealm = \"gitgate\"\n{extra}",
            prefix = self.setup.git_prefix,
            server_extra = self.setup.server_extra,
            cgi = self.cgi_script().display(),
            extra = self.setup.extra,
        )
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn config(&self) -> PathBuf {
        self.root().join("gitgate.toml")
    }
    pub fn repos(&self) -> PathBuf {
        self.root().join("repos")
    }
    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }
    pub fn db(&self) -> PathBuf {
        self.root().join("gitgate.db")
    }
    pub fn hits_log(&self) -> PathBuf {
        self.root().join("backend-hits.log")
    }
    pub fn cgi_script(&self) -> PathBuf {
        self.root().join("backend.sh")
    }
    pub fn server_log(&self) -> PathBuf {
        self.root().join("gitgate.log")
    }

    /// Lines the backend wrapper wrote, one per request gitgate forwarded.
    pub fn hits(&self) -> Vec<String> {
        fs::read_to_string(self.hits_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    // --- the gitgate CLI ---------------------------------------------------------------------

    pub fn gitgate_command(&self) -> Command {
        let mut cmd = gitgate_command(&self.config());
        cmd.current_dir(self.root());
        cmd
    }

    /// `gitgate --config <sandbox config> ARGS...`
    pub fn cli(&self, args: &[&str]) -> Run {
        let mut cmd = self.gitgate_command();
        cmd.args(args);
        run(cmd, None)
    }

    /// Like [`Sandbox::cli`], with `stdin` on standard input.
    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut cmd = self.gitgate_command();
        cmd.args(args);
        run(cmd, Some(stdin))
    }

    #[track_caller]
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let run = self.cli(args);
        let out = run.ok();
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"))
    }

    #[track_caller]
    pub fn add_user(&self, name: &str, password: &str) {
        self.cli_stdin(
            &["user", "add", name, "--password-stdin"],
            &format!("{password}\n"),
        )
        .ok();
    }

    #[track_caller]
    pub fn add_admin(&self, name: &str, password: &str) {
        self.cli_stdin(
            &["user", "add", name, "--admin", "--password-stdin"],
            &format!("{password}\n"),
        )
        .ok();
    }

    #[track_caller]
    pub fn grant(&self, user: &str, target: &str, level: &str) {
        self.cli(&["grant", "add", user, target, level]).ok();
    }

    #[track_caller]
    pub fn personal_token(&self, user: &str, password: &str, name: &str, perms: &[&str]) -> Token {
        let mut args = vec!["token", "create", "--user", user, "--name", name];
        for p in perms {
            args.extend(["--permission", p]);
        }
        args.extend(["--password-stdin", "--json"]);
        token_from(self.cli_stdin(&args, &format!("{password}\n")))
    }

    /// A project (`--project KEY`) or repository (`--repo PROJECT/REPO`) token.
    #[track_caller]
    pub fn scoped_token(&self, flag: &str, scope: &str, name: &str, perm: &str) -> Token {
        scoped_token(&self.config(), flag, scope, name, perm)
    }

    // --- repositories ------------------------------------------------------------------------

    /// `git init --bare repos/<repo>.git`, seeded with one commit on `main` pushed directly to
    /// the bare path (not through gitgate). Returns the seed commit id.
    pub fn create_repo(&self, repo: &str) -> String {
        let bare = self.bare(repo);
        self.git(
            self.root(),
            &["init", "--bare", "-q", bare.to_str().unwrap()],
        )
        .ok();
        let seed = self.root().join(format!("seed-{}", repo.replace('/', "-")));
        self.git(self.root(), &["init", "-q", seed.to_str().unwrap()])
            .ok();
        fs::write(seed.join("README"), format!("{repo}\n")).unwrap();
        self.git(&seed, &["add", "README"]).ok();
        self.git(&seed, &["commit", "-q", "-m", &format!("seed {repo}")])
            .ok();
        self.git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"])
            .ok();
        self.rev(&bare, "main")
    }

    pub fn bare(&self, repo: &str) -> PathBuf {
        self.repos().join(format!("{repo}.git"))
    }

    /// The commit id `rev` names in the repository at `dir` (bare or not).
    pub fn rev(&self, dir: &Path, rev: &str) -> String {
        self.git(dir, &["rev-parse", rev]).ok().trim().to_owned()
    }

    /// Commit subjects on `main` of the bare repository `repo`.
    pub fn bare_log(&self, repo: &str) -> String {
        let bare = self.bare(repo);
        self.git(
            self.root(),
            &[
                "--git-dir",
                bare.to_str().unwrap(),
                "log",
                "--format=%s",
                "main",
            ],
        )
        .ok()
        .to_owned()
    }

    // --- git ---------------------------------------------------------------------------------

    /// A git command with a clean, hermetic environment: no system or user config but the
    /// sandbox's, no prompts, no credential helper, no proxy.
    pub fn git_command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .current_dir(cwd)
            .args(["-c", "credential.helper="])
            .args(args);
        cmd
    }

    pub fn git(&self, cwd: &Path, args: &[&str]) -> Run {
        run(self.git_command(cwd, args), None)
    }

    pub fn git_env(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.git_command(cwd, args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, None)
    }

    /// Makes a commit in the work tree `dir` that adds `file` with `content`; returns its id.
    pub fn commit_file(&self, dir: &Path, file: &str, content: &[u8], message: &str) -> String {
        fs::write(dir.join(file), content).unwrap();
        self.git(dir, &["add", file]).ok();
        self.git(dir, &["commit", "-q", "-m", message]).ok();
        self.rev(dir, "HEAD")
    }

    // --- the server --------------------------------------------------------------------------

    pub fn serve(&self) -> Server {
        self.serve_with_env(&[])
    }

    /// Starts `gitgate --config C serve`, stderr to `gitgate.log`, and waits for the
    /// `listening on http://127.0.0.1:PORT` line.
    pub fn serve_with_env(&self, env: &[(&str, &str)]) -> Server {
        let mut cmd = self.gitgate_command();
        cmd.arg("serve");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::start(
            cmd,
            self.server_log(),
            self.setup.git_prefix.trim_end_matches('/'),
        )
    }
}

/// A project (`--project KEY`) or repository (`--repo PROJECT/REPO`) token, created with the CLI
/// on the store of `config`.
#[track_caller]
pub fn scoped_token(config: &Path, flag: &str, scope: &str, name: &str, perm: &str) -> Token {
    let mut cmd = gitgate_command(config);
    cmd.args([
        "token",
        "create",
        flag,
        scope,
        "--name",
        name,
        "--permission",
        perm,
        "--json",
    ]);
    token_from(run(cmd, None))
}

#[track_caller]
fn token_from(run: Run) -> Token {
    let out = run.ok();
    let json: Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("token create --json: {e}: {run}"));
    Token {
        id: json["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {json}"))
            .to_owned(),
        secret: json["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {json}"))
            .to_owned(),
        json,
    }
}

/// The scheme and port in a `listening on http(s)://127.0.0.1:PORT` log line.
pub fn listening_at(log: &str) -> Option<(&'static str, u16)> {
    const MARK: &str = "listening on http";
    let at = log.find(MARK)? + MARK.len();
    let (scheme, rest) = match log[at..].strip_prefix("s://") {
        Some(rest) => ("https", rest),
        None => ("http", log[at..].strip_prefix("://")?),
    };
    // `127.0.0.1:PORT` or `[::]:PORT`: the port is after the last colon; the message ends
    // at a space in a text line, at its closing quote in a JSON one.
    let authority = rest.split([' ', '"']).next()?;
    let port = authority
        .rsplit(':')
        .next()?
        .parse()
        .ok()
        .filter(|&p| p != 0)?;
    Some((scheme, port))
}

/// A running `gitgate serve`; killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    /// `http`, or `https` when the server listens with TLS.
    pub scheme: &'static str,
    pub log: PathBuf,
    prefix: String,
    /// Where its own lines begin in `log` (a restarted server appends to the same log).
    own_lines_from: usize,
    /// When the test first saw the log say the stop began (see
    /// [`Server::past_the_stops_first_second`]).
    stop_seen: std::cell::Cell<Option<Instant>>,
}

impl Server {
    /// Runs `cmd` (a `gitgate ... serve` command) with stderr appended to `log`, and waits for
    /// its `listening on http(s)://127.0.0.1:PORT` line; fails the test if the process exits first
    /// or stays silent past [`STARTUP_DEADLINE`].
    pub fn start(cmd: Command, log: PathBuf, prefix: &str) -> Server {
        Server::try_start(cmd, log, prefix).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Server::start`], with a process that exits before it listens as an error: its
    /// exit status and log.
    pub fn try_start(mut cmd: Command, log: PathBuf, prefix: &str) -> Result<Server, String> {
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // A restarted server appends to the same log: only its own lines count.
        let earlier = log_file.metadata().unwrap().len() as usize;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().expect("spawn gitgate serve");
        let mut server = Server {
            child,
            port: 0,
            scheme: "http",
            log,
            prefix: prefix.to_owned(),
            own_lines_from: earlier,
            stop_seen: std::cell::Cell::new(None),
        };
        let start = Instant::now();
        let mut pause = FIRST_POLL;
        loop {
            let text = server.log_text();
            let text = text.get(earlier..).unwrap_or_default();
            if let Some((scheme, port)) = listening_at(text) {
                server.scheme = scheme;
                server.port = port;
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                return Err(format!(
                    "gitgate serve exited with {status} before listening; log:\n{text}"
                ));
            }
            if start.elapsed() > STARTUP_DEADLINE {
                panic!("gitgate serve did not log `listening on http://127.0.0.1:PORT` within {STARTUP_DEADLINE:?}; log:\n{text}");
            }
            thread::sleep(pause);
            pause = next_poll(pause);
        }
    }

    /// The port of its `[metrics] listen` (`127.0.0.1:0` in the config), once its log says it
    /// (at most [`STARTUP_DEADLINE`]).
    pub fn metrics_port(&self) -> u16 {
        const MARK: &str = "metrics on http://127.0.0.1:";
        let start = Instant::now();
        loop {
            let log = self.log_text();
            if let Some(at) = log.find(MARK) {
                let digits: String = log[at + MARK.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Some(port) = digits.parse().ok().filter(|&p| p != 0) {
                    return port;
                }
            }
            assert!(
                start.elapsed() < STARTUP_DEADLINE,
                "no `metrics on` line:\n{log}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) to the server with `kill`.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {} failed", self.pid());
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// `http://127.0.0.1:PORT<prefix>/<repo>.git`
    pub fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}{}/{repo}.git", self.port, self.prefix)
    }

    /// `http://USER@127.0.0.1:PORT<prefix>/<repo>.git`: the user alone, as the README's clone URL.
    pub fn url_with_user(&self, user: &str, repo: &str) -> String {
        format!(
            "http://{user}@127.0.0.1:{}{}/{repo}.git",
            self.port, self.prefix
        )
    }

    /// `http://USER:SECRET@127.0.0.1:PORT<prefix>/<repo>.git`
    pub fn url_with(&self, user: &str, secret: &str, repo: &str) -> String {
        format!(
            "http://{user}:{secret}@127.0.0.1:{}{}/{repo}.git",
            self.port, self.prefix
        )
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// How the process ended, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most `limit`) for gitgate to exit, as an operator's stop or
    /// restart does; its exit status.
    pub fn stop_within(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        self.exit_within(limit, "SIGTERM")
    }

    /// Waits (at most `limit`) for gitgate to exit, after `what` (said if it does not); its exit
    /// status.
    pub fn exit_within(&mut self, limit: Duration, what: &str) -> ExitStatus {
        let asked = Instant::now();
        loop {
            if let Some(s) = self.exit_status() {
                return s;
            }
            assert!(
                asked.elapsed() < limit,
                "gitgate did not exit within {limit:?} of {what}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Returns once the log has said the stop began (`shutting down on SIG...`, 10 s at most)
    /// and a second more has passed: a stop signal before then is the same stop, passed over
    /// (gitgate logs nothing for it).
    pub fn past_the_stops_first_second(&self) {
        let seen = self.stop_began();
        // A little more than the second: gitgate times it from a moment after its log line.
        thread::sleep(Duration::from_millis(1100).saturating_sub(seen.elapsed()));
    }

    /// Once the log says the stop began (`shutting down on SIG...`; 10 s at most): when this
    /// test first saw it say so.
    pub fn stop_began(&self) -> Instant {
        if let Some(seen) = self.stop_seen.get() {
            return seen;
        }
        let asked = Instant::now();
        while !self.own_log().contains("shutting down on SIG") {
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "the stop never began:\n{}",
                self.own_log()
            );
            thread::sleep(Duration::from_millis(5));
        }
        let seen = Instant::now();
        self.stop_seen.set(Some(seen));
        seen
    }

    /// After the first stop signal, one that gitgate takes as a second (its log says so):
    /// SIGTERM once [`Server::past_the_stops_first_second`], and again each second until the log
    /// says it was taken, however late a loaded machine lets gitgate begin its stop. When the
    /// one taken was sent.
    pub fn second_stop_signal(&self) -> Instant {
        self.past_the_stops_first_second();
        let asked = Instant::now();
        loop {
            let sent = Instant::now();
            self.signal("TERM");
            while sent.elapsed() < Duration::from_secs(1) {
                if self.own_log().contains("second stop signal") {
                    return sent;
                }
                thread::sleep(Duration::from_millis(10));
            }
            assert!(
                asked.elapsed() < Duration::from_secs(20),
                "no second stop signal taken:\n{}",
                self.own_log()
            );
        }
    }

    /// Its own lines of `log`.
    pub fn own_log(&self) -> String {
        let log = self.log_text();
        log.get(self.own_lines_from..)
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1

#[derive(Debug)]
pub struct Response {
    /// 0 when the server closed the connection without a status line.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` exactly as given and reads the whole response (the request should carry
/// `Connection: close`). A failed write is not an error: a server may answer (413, 431) and
/// close before it has read everything, and the answer is what counts.
pub fn raw_http(port: u16, request: &[u8]) -> Response {
    try_raw_http(port, request).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`raw_http`], with a failed read as an error that names the request, the error kind and
/// how much had arrived, for the caller to add what it knows (the server's log).
pub fn try_raw_http(port: u16, request: &[u8]) -> Result<Response, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A reset after a complete answer (server closed while we had unread bytes) is fine.
            Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                return Err(format!(
                    "reading the response to {:?} on port {port}: {e} ({:?}; got {} bytes: {:?})",
                    String::from_utf8_lossy(&request[..request.len().min(120)]),
                    e.kind(),
                    buf.len(),
                    String::from_utf8_lossy(&buf[..buf.len().min(200)]),
                ))
            }
        }
    }
    Ok(parse_response(&buf))
}

/// The actors of the events of `action` in `audit --json`'s output, oldest first.
pub fn actors_of(audit: &Value, action: &str) -> Vec<String> {
    audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .map(|e| e["actor"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The first response in `buf`: status 0 and the bytes as body when there is no whole head.
pub fn parse_response(buf: &[u8]) -> Response {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Response {
            status: 0,
            headers: vec![],
            body: buf.to_vec(),
        };
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            break;
        };
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// A port on 127.0.0.1 that nothing listens on (bound, then let go), for a program that cannot
/// be told to listen on port 0 and say which port it took (nginx, Apache, lighttpd). Another
/// listener — another test's server on port 0 — can take it before the program binds it, and
/// the program's start must then be tried again on another ([`listens_on`] tells): where the
/// program is gitgate, it listens on port 0 and its log says the port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port on 127.0.0.1 that refuses connections for as long as this lives: bound, never
/// listening, so that no other listener can take it meanwhile (as one can a [`free_port`]): a
/// bind to port 0 — every other test's gitgate, and [`free_port`] — is not given a bound port
/// (seen in a network namespace whose ephemeral range was two ports).
pub struct ClosedPort {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

/// See [`ClosedPort`].
pub fn closed_port() -> ClosedPort {
    let socket = socket_bound_to(0, false).unwrap();
    let bound = std::net::SocketAddrV4::try_from(rustix::net::getsockname(&socket).unwrap())
        .expect("an IPv4 address");
    ClosedPort {
        _socket: socket,
        port: bound.port(),
    }
}

/// `port`, which a server of the test's (nginx, a web server) has just let go of, held as a
/// [`ClosedPort`] while the server is down, to be dropped just before the server is started
/// again on it: its clients' configuration (gitgate's upstream URL) names that port. Let go of
/// meanwhile, another test's listener on port 0 could take it, and the server could not come
/// back (a whole-suite run met that with nginx). `SO_REUSEADDR`, as a web server's own sockets
/// have, so that the connections' `TIME_WAIT` does not stop the bind; the server's listening
/// socket may take a moment to go, which this waits for (10 s at most).
pub fn hold_port(port: u16) -> ClosedPort {
    let start = Instant::now();
    loop {
        match socket_bound_to(port, true) {
            Ok(socket) => {
                return ClosedPort {
                    _socket: socket,
                    port,
                }
            }
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(10),
                "port {port} was not free to hold within 10 s: {e}"
            ),
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP socket bound to `port` on 127.0.0.1 (0: one the kernel picks), not listening.
fn socket_bound_to(port: u16, reuse_address: bool) -> rustix::io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SocketType};
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
    if reuse_address {
        rustix::net::sockopt::set_socket_reuseaddr(&socket, true)?;
    }
    let at = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    rustix::net::bind(&socket, &at)?;
    Ok(socket)
}

/// The listening sockets on 127.0.0.1 in `/proc/net/tcp`: for each, its port, its socket's
/// inode and how many connections wait in its accept queue (the kernel prints that as the
/// receive queue of a socket in LISTEN).
fn listeners() -> Vec<Listener> {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return Vec::new();
    };
    // The address as the kernel prints it (127.0.0.1 in the byte order of this machine, the
    // port in hex); `0A` is LISTEN; the fifth field the queues (tx:rx), the tenth the inode.
    let local = format!("{:08X}:", u32::from_ne_bytes([127, 0, 0, 1]));
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1)?.strip_prefix(&local)?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let (_, waiting) = f.get(4)?.split_once(':')?;
            if f.len() <= 9 || f[3] != "0A" {
                return None;
            }
            Some(Listener {
                port,
                inode: f[9].parse().ok()?,
                waiting: usize::from_str_radix(waiting, 16).ok()?,
            })
        })
        .collect()
}

/// One of [`listeners`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listener {
    port: u16,
    inode: u64,
    waiting: usize,
}

/// The inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let target = fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Waits (10 s at most) until a thread of process `pid` sleeps in one of the kernel's functions
/// `places`, as `/proc/PID/task/TID/wchan` names them (a name in it will do: kernels differ,
/// `pipe_write` or `anon_pipe_write`): the process has come to the point that blocks. Where the
/// kernel names no function there (every thread's `wchan` reads `0`, this process's sleeping
/// ones too), `instead` is slept.
pub fn wait_until_blocked_in(pid: u32, places: &[&str], instead: Duration) {
    let wchans = |pid: &str| -> Vec<String> {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|t| fs::read_to_string(t.path().join("wchan")).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // This test binary's own threads wait too (the harness's, the other tests'): named?
    if !wchans("self").iter().any(|w| !w.is_empty() && w != "0") {
        thread::sleep(instead);
        return;
    }
    let start = Instant::now();
    loop {
        let now = wchans(&pid.to_string());
        if now.iter().any(|w| places.iter().any(|p| w.contains(p))) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no thread of process {pid} came to sleep in {places:?}: {now:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (10 s at most) until process `pid` holds no TCP connection, only listening sockets:
/// the connections of the requests it served are closed (their descriptors free again).
pub fn wait_for_no_connections(pid: u32) {
    let start = Instant::now();
    loop {
        let held = socket_inodes(pid);
        let connected: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| fs::read_to_string(table).ok())
            .flat_map(|table| {
                // The fourth field the state (`0A` LISTEN), the tenth the socket's inode.
                table
                    .lines()
                    .skip(1)
                    .filter(|line| {
                        let f: Vec<&str> = line.split_whitespace().collect();
                        f.len() > 9
                            && f[3] != "0A"
                            && f[9].parse().is_ok_and(|inode| held.contains(&inode))
                    })
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if connected.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "process {pid} still holds connections: {connected:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The listening sockets on 127.0.0.1 that process `pid` holds: (port, the socket's inode).
/// A test that checks a stop let go of them looks for these sockets, which nothing else can
/// be, and not at whether their ports are free: another listener of the test run can take a
/// port the moment it is let go.
pub fn listening_sockets(pid: u32) -> Vec<(u16, u64)> {
    let held = socket_inodes(pid);
    let mut sockets: Vec<(u16, u64)> = listeners()
        .into_iter()
        .filter(|l| held.contains(&l.inode))
        .map(|l| (l.port, l.inode))
        .collect();
    sockets.sort_unstable();
    sockets
}

/// Whether the listening socket with `inode` still listens, in whatever process holds it (a
/// child that inherited it too).
pub fn still_listening(inode: u64) -> bool {
    listeners().iter().any(|l| l.inode == inode)
}

/// The ports on 127.0.0.1 that process `pid` listens on (read from `/proc`: the listening
/// sockets in `/proc/net/tcp`, and the process's descriptors that are those sockets).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mut ports: Vec<u16> = listening_sockets(pid).iter().map(|&(p, _)| p).collect();
    ports.dedup();
    ports
}

/// Waits (30 s at most) until no more than `left` connections wait to be accepted on
/// 127.0.0.1:`port`: the server has taken in the ones this test opened, and not after a time
/// a loaded machine can outlast. `connect` returns once the kernel has the connection, before
/// the server's `accept`, and the server's clocks (a header deadline, an idle timeout) start
/// at the accept.
pub fn wait_until_accepted(port: u16, left: usize) {
    let start = Instant::now();
    loop {
        let waiting: usize = listeners()
            .iter()
            .filter(|l| l.port == port)
            .map(|l| l.waiting)
            .sum();
        if waiting <= left {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{waiting} connections still wait to be accepted on port {port}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// When the server's log line `line` was written, from the time it starts with (the text
/// format's RFC 3339 UTC time, `2026-12-07T05:06:16.123456Z`). A test that pins how long the
/// server took from an event of its own (a signal taken) to another measures between two such
/// times: from the test's side it would count the start of `kill` and its own wake-ups, which a
/// loaded machine stretches by seconds.
pub fn logged_at(line: &str) -> Option<SystemTime> {
    let stamp = line.get(..line.find('Z')?)?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let mut hms = time.splitn(3, ':');
    let (h, min) = (
        hms.next()?.parse::<u64>().ok()?,
        hms.next()?.parse::<u64>().ok()?,
    );
    let seconds: f64 = hms.next()?.parse().ok()?;
    // Days since 1970-01-01 of a date in the proleptic Gregorian calendar (Howard Hinnant's
    // days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(
        UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + h * 3_600 + min * 60)
            + Duration::from_secs_f64(seconds),
    )
}

/// The time of the first line of `log` that holds `needle` (see [`logged_at`]).
#[track_caller]
pub fn time_of(log: &str, needle: &str) -> SystemTime {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"));
    logged_at(line).unwrap_or_else(|| panic!("no time at the start of {line:?}"))
}

/// Whether process `pid` listens on 127.0.0.1:`port` — and not another process that took the
/// port first (see [`free_port`]).
pub fn listens_on(pid: u32, port: u16) -> bool {
    listening_ports(pid).contains(&port)
}

/// Waits until the server at the other end of `stream` (on this machine) has read every byte
/// sent on it: its TCP took them (nothing is left unacknowledged in `stream`'s send queue),
/// and its socket's receive queue is empty (`/proc/net/tcp`). A test that hangs up once the
/// server has begun on a request waits for this, not for a time a loaded machine can outlast.
pub fn wait_until_read_by_server(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let local = stream.local_addr().unwrap();
    let peer = stream.peer_addr().unwrap();
    let hex = |a: std::net::SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => {
            format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), a.port())
        }
        std::net::IpAddr::V6(_) => panic!("an IPv4 connection is looked up"),
    };
    // The server's socket: its local address is this one's peer.
    let (server_side, client_side) = (hex(peer), hex(local));
    let start = Instant::now();
    loop {
        let mut unsent: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int: the bytes not yet acknowledged.
        let asked = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) };
        assert_eq!(asked, 0, "{}", std::io::Error::last_os_error());
        let unread = fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .lines()
            .skip(1)
            .find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() > 4 && f[1] == server_side && f[2] == client_side).then(|| {
                    let (_, rx) = f[4].split_once(':').unwrap();
                    u64::from_str_radix(rx, 16).unwrap()
                })
            });
        if unsent == 0 && unread == Some(0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not read what was sent ({unsent} bytes unacknowledged, \
             {unread:?} unread)"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until a thread of process `pid` is blocked reading its standard input (its
/// `/proc/PID/task/*/syscall` says `read` on descriptor 0): a command waiting for a password
/// piped to it, which a test then signals or feeds, and not after a time a loaded machine can
/// outlast.
pub fn wait_until_reading_stdin(pid: u32) {
    let start = Instant::now();
    while !reading_stdin(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "process {pid} never waited for its standard input"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until a process that `pid` started (or one they started) is blocked reading its
/// standard input, as [`wait_until_reading_stdin`]: a server's CGI program that has begun on a
/// request and waits for the rest of its body.
pub fn wait_until_a_descendant_reads_stdin(pid: u32) {
    let start = Instant::now();
    while !descendants(pid).into_iter().any(reading_stdin) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no process under {pid} waited for its standard input"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a thread of process `pid` is blocked reading its standard input.
fn reading_stdin(pid: u32) -> bool {
    // `read`'s number, as the first field of `/proc/PID/syscall` gives it.
    #[cfg(target_arch = "x86_64")]
    const READ: &str = "0";
    #[cfg(target_arch = "aarch64")]
    const READ: &str = "63";
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|task| {
            fs::read_to_string(task.path().join("syscall")).is_ok_and(|call| {
                let mut fields = call.split_whitespace();
                fields.next() == Some(READ) && fields.next() == Some("0x0")
            })
        })
}

/// The processes `pid` started, and those they started, and so on (from each thread's
/// `/proc/PID/task/TID/children`).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let list = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in list.split_whitespace().filter_map(|p| p.parse().ok()) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// A `GET` of `target` (path and query, sent verbatim) with optional `Authorization` value.
pub fn http_get(port: u16, target: &str, authorization: Option<&str>) -> Response {
    let mut req =
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: git/2.47.0\r\n");
    if let Some(auth) = authorization {
        req.push_str(&format!("Authorization: {auth}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    raw_http(port, req.as_bytes())
}

/// `Basic base64(user:password)`
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Token secrets

/// `ggt_` + 12-char id + `_` + 43 chars + `_` + 6 chars.
pub fn looks_like_secret(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 67
        && s.starts_with("ggt_")
        && b[16] == b'_'
        && b[60] == b'_'
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// The id a secret carries.
pub fn secret_id(s: &str) -> &str {
    &s[4..16]
}

/// `secret` with one character of its random part changed: same format, wrong secret.
pub fn flip_secret(secret: &str) -> String {
    flip_secret_at(secret, 0)
}

/// [`flip_secret`] at the `n`-th character from the one it changes: another wrong secret for
/// each `n` (the throttle counts the same wrong one, sent again, once).
pub fn flip_secret_at(secret: &str, n: usize) -> String {
    let mut bytes = secret.as_bytes().to_vec();
    let i = 30 + n;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// Gives `path` (and all below it) to uid and gid 65534, as git would find a repository of
/// another user than gitgate's; `false` (with a notice: the caller skips) where that needs a
/// root this run does not have — never under CI, which runs as root.
pub fn give_to_nobody(path: &Path) -> bool {
    let owned = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !owned {
        skipping(&format!(
            "giving {} to another user needs root",
            path.display()
        ));
    }
    owned
}

/// Leave out a case this host cannot run (not root, no IPv6, no tmpfs), saying so on stderr —
/// by hand only: under CI (`CI` set, as `.ci/run` sets it; it runs as root) it fails instead,
/// so that a case left out is never a pass there.
#[track_caller]
pub fn skipping(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "this host cannot run a case CI must run: {what}"
    );
    eprintln!("NOTICE: skipped: {what}");
}

/// The CLI's arguments for the expiry policy the tests set most: every new token expires, within
/// 30 days.
pub const REQUIRE_EXPIRY_WITHIN_30_DAYS: [&str; 6] = [
    "policy",
    "set",
    "--expiry-required",
    "yes",
    "--max-expiry-days",
    "30",
];

/// `count` bytes that do not compress (xorshift64*).
pub fn noise(count: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(count + 8);
    while out.len() < count {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(count);
    out
}

/// Whether any live process (not a zombie waiting to be reaped) is in process group `group`.
pub fn group_alive(group: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
            // pid (comm) state ppid pgrp ...: the fields after the last ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2].parse::<u32>() == Ok(group)
        })
    })
}

/// Closes `s` with a reset (`SO_LINGER` of 0), not a FIN: a client gone at once, its unread
/// data and the server's unsent answer thrown away.
pub fn close_with_a_reset(s: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size given.
    let set = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    drop(s);
}

/// A client connection gitgate has ended while most of its last answers wait in gitgate's
/// send queue, so that the socket lingers (`closing`): 1001 pipelined `GET /healthz`, the last
/// with `Connection: close`, from a client with a 4 KiB receive buffer that reads nothing.
/// Returned a second later, once gitgate has written every answer and ended the connection;
/// what has not reached the client (the answers are over 100 KB) is checked to be on
/// gitgate's side.
pub async fn left_lingering(port: u16) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
    requests.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    slow.write_all(&requests).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut queued: libc::c_int = 0;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&slow);
    // SAFETY: FIONREAD on an open socket into an int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) }, 0);
    assert!(queued < 50_000, "{queued} bytes reached the client");
    slow
}
