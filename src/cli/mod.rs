//! The operator's commands, acting on the store directly (one file per command group). Each
//! returns `Result<(), String>`; `main` prints the error and exits non-zero.
//!
//! Output contract: human text by default, one JSON value with `--json`; secrets only ever on
//! stdout of `token create`, never in lists.
//!
//! Standard output is written with `outln!`, not `println!` (which panics when stdout fails):
//! `gitgate audit | head` ends quietly when `head` has read enough ([`STDOUT_CLOSED`]), and a
//! stdout that cannot be written (a full disk) is an error like any other. What a command says
//! it did goes to standard error with `note!`, which never fails the command: the change is
//! made by then. A command that prints after its change says, when the printing fails, that the
//! change was made — and `token create` and `token rotate`, whose secret would be lost, undo it.

/// `println!` that returns the write error (see the module docs) from the enclosing function.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*))?
    };
}

/// `eprintln!` for what a command says it did, which never panics: a confirmation that cannot
/// be written (stderr closed or on a full disk) does not undo the change, so it must not turn
/// a command that succeeded into a crash (exit 101) either.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::note(format_args!($($arg)*))
    };
}

pub mod audit;
pub mod backup;
pub mod check;
pub mod grant;
pub mod policy;
pub mod ratelimit;
pub mod token;
pub mod user;

use std::io::{BufRead, IsTerminal, Read};
use std::path::Path;

use crate::config::Config;
use crate::store::{BeforeANewStore, Store};

/// The store a CLI command works on: the store itself, or for a read command run by an account
/// that may not write it, a copy (see [`Store::snapshot`]) kept as long as this is.
pub struct OpenStore {
    store: Store,
    /// The config's `[server] git_prefix`: where a new grant or token would be served.
    pub git_prefix: String,
    /// The embedded backend's `project_root` (`None` for an HTTP upstream, whose repositories
    /// gitgate cannot see): where a new grant's or token's repositories would be.
    pub project_root: Option<std::path::PathBuf>,
    /// The config's `[rate_limit] enabled`: while false the server counts no principal's
    /// requests, so a rate-limit override has no effect (the `ratelimit` commands say so).
    pub rate_limiting: bool,
    /// Dropped after the store (fields drop in order): the copy's folder is removed then.
    _snapshot: Option<crate::store::Snapshot>,
    /// The store's path and what was there, when this command made the store.
    made: Option<(std::path::PathBuf, BeforeANewStore)>,
}

impl OpenStore {
    /// Whether the command reads a private copy of the store ([`crate::store::Snapshot`]),
    /// not the store itself.
    pub fn is_a_private_copy(&self) -> bool {
        self._snapshot.is_some()
    }

    /// After a command that failed: a store it made is undone (see
    /// [`crate::store::undo_a_new_store`]); what to tell the operator, who was warned of its
    /// making, after the failure itself.
    pub fn undo_if_new(self) -> Option<String> {
        let OpenStore { store, made, .. } = self;
        drop(store);
        let (path, before) = made?;
        crate::store::undo_a_new_store(&path, before).then(|| taken_back(&path, before))
    }

    /// After a command that succeeded: a store it made and wrote nothing to (a first `policy
    /// set` of what is so already, which says "nothing changed") is undone as after a failure;
    /// what to tell the operator. A store written to is not looked at again: opening it anew
    /// would leave its `-wal` and `-shm` behind.
    pub fn undo_if_new_and_unwritten(self) -> Option<String> {
        if self.made.is_none() || !self.store.holds_nothing() {
            return None;
        }
        self.undo_if_new()
    }
}

impl std::ops::Deref for OpenStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// The store named by the config file (the backend is not checked: the CLI does not use it).
/// Only a command that can start a new install (`may_create`) creates it: any other on a
/// mistyped `[store] path` must say so, not answer "nothing" (or "no user 'alice'") from a new
/// empty store it leaves behind (as root, owned by root). A command that `writes` checks first
/// that this process can; one that only reads, run by an account that may read the store but
/// not write it (an auditor's), reads a private copy instead: opening the store itself would
/// write to it (its `-wal` and `-shm`), which that account cannot.
pub fn open_store(config_path: &Path, writes: bool, may_create: bool) -> Result<OpenStore, String> {
    let text = crate::small_file::read_to_string(config_path).map_err(|e| {
        format!(
            "{}: cannot read the config file: {e} (choose one with --config or GITGATE_CONFIG; \
             the default is proxy.toml in the current folder)",
            config_path.display()
        )
    })?;
    let config = Config::parse(config_path, &text).map_err(|e| e.to_string())?;
    let path = &config.store.path;
    let empty = crate::store::is_an_empty_file(path);
    if !may_create && (empty || !path.exists()) {
        // A -wal left there: the store was moved away without it; creating one would lose it.
        crate::store::refuse_a_log_without_its_file(path).map_err(|e| config.store_refusal(e))?;
        // Emptied under a server, which marked it damaged: the marker's words and advice.
        crate::store::refuse_a_store_marked_damaged(path).map_err(|e| config.store_refusal(e))?;
        // Those create the file, not the folders above it.
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.exists())
            .map(|p| format!(" in a folder ({}) that must be made first", p.display()))
            .unwrap_or_default();
        return Err(format!(
            "{} {} ([store] path in {}): check the path{}; `gitgate serve`, `gitgate user \
             add`, `token create` or `policy set` creates it{folder}{}",
            if empty {
                "the token store is an empty file (0 bytes) at"
            } else {
                "no token store at"
            },
            path.display(),
            config_path.display(),
            if empty {
                ", or restore the store from a backup (a failed copy or restore leaves an \
                 empty file)"
            } else {
                ""
            },
            config.store_path_hint()
        ));
    }
    let made = (may_create && writes)
        .then(|| BeforeANewStore::at(path))
        .flatten()
        .map(|before| (path.clone(), before));
    if !writes && Store::check_can_write(path).is_err() {
        // Blocked before the folder is made: one that comes in between waits for the thread.
        let signals = block_stop_signals();
        let folder = crate::store::Snapshot::folder()?;
        if let Some(signals) = signals {
            remove_on_a_stop_signal(signals, folder.dir());
        }
        let snapshot = Store::snapshot(path, folder).map_err(|e| config.store_refusal(e))?;
        let store = Store::open(snapshot.path()).map_err(|e| {
            format!(
                "cannot read the copy of the token store made in {} (TMPDIR): {e}",
                snapshot.dir().display()
            )
        })?;
        return Ok(OpenStore {
            store,
            git_prefix: config.server.git_prefix,
            project_root: served_from(&config.upstream),
            rate_limiting: config.rate_limit.enabled,
            _snapshot: Some(snapshot),
            made: None,
        });
    }
    // As `serve` does, before anything is opened: a command refused for want of write access
    // must leave no `-wal`/`-shm` of its user beside the store (a folder others may write,
    // a group's), which the service's account could then not open at its next start.
    if writes {
        Store::check_can_write(path).map_err(|e| config.store_refusal(e))?;
    }
    if let Some((path, before)) = &made {
        // Ctrl-C at a password prompt, or any stop, takes the new store back too.
        if let Some(signals) = block_stop_signals() {
            undo_on_a_stop_signal(signals, path.clone(), *before);
        }
    }
    let store = Store::open(path).map_err(|e| {
        // Failing as it is made (a full disk), it leaves nothing half-made behind.
        if let Some((path, before)) = &made {
            crate::store::undo_a_new_store(path, *before);
        }
        config.store_refusal(e)
    })?;
    // A command that writes says up front, as `serve` does, when this process cannot write the
    // store (a store created by `sudo gitgate ...`, run as another user), instead of SQLite's
    // bare "attempt to write a readonly database" after the work.
    if writes {
        store.check_writable().map_err(|e| {
            naming_the_lock_holder(e.to_string(), || crate::store::write_lock_said(path))
        })?;
    }
    if let Some(from) = store.migrated_from() {
        // `serve` logs it; a command's is otherwise unseen, and takes down an older server.
        note(format_args!(
            "note: migrated the token store {} from schema {from} to {}: a gitgate older than \
             this one that still serves it now refuses every token (503) until it is \
             restarted with this version",
            path.display(),
            Store::schema_version()
        ));
    }
    Ok(OpenStore {
        store,
        project_root: served_from(&config.upstream),
        git_prefix: config.server.git_prefix,
        rate_limiting: config.rate_limit.enabled,
        _snapshot: None,
        made,
    })
}

fn served_from(upstream: &crate::config::Upstream) -> Option<std::path::PathBuf> {
    match upstream {
        crate::config::Upstream::Cgi { project_root, .. } => Some(project_root.clone()),
        crate::config::Upstream::Http(_) => None,
    }
}

/// What to tell the operator of a new grant or scoped token for `target` that the embedded
/// backend does not serve (yet): no folder for it under `project_root`. Most often a project
/// key typed in Bitbucket's upper case (`TEAM`) while the folder is `team` — paths are
/// case-sensitive, and such a grant or token would never match a request — or a typo. It is
/// made all the same (the repository may be created later); the note names a folder whose name
/// differs only in case. A path that is there but that the backend refuses (a symbolic link, a
/// gitfile, a folder inside another repository's) is named with why.
pub fn not_served_yet(target: &crate::policy::Target, project_root: &Path) -> Option<String> {
    use crate::policy::Target;
    let (path, what) = match target {
        Target::Project(p) => (p.as_str(), "project"),
        Target::Repo(r) => (r.as_str(), "repository"),
    };
    let made_anyway = format!("made all the same, it applies once git serves {path}");
    match target {
        // A project: its folder, not following a link (the backend refuses links on the way).
        Target::Project(p) => match std::fs::symlink_metadata(project_root.join(p.as_str())) {
            Ok(meta) if meta.is_dir() => return None,
            Ok(_) => {
                return Some(format!(
                    "note: {path} under {} is a symbolic link or a file, which the embedded \
                     backend refuses on the way to a repository; {made_anyway}",
                    project_root.display()
                ))
            }
            Err(_) => {}
        },
        // A repository: as the backend finds it (`cgi::repo_dir_found`), so that the note says
        // why a path that is there, or would be inside a repository, is not served.
        Target::Repo(r) => {
            use crate::upstream::cgi::{repo_dir_found, NotServed, RepoDir};
            let why = match repo_dir_found(project_root, r.as_str()) {
                RepoDir::WithGit | RepoDir::Plain => return None,
                RepoDir::NotServed(NotServed::Missing | NotServed::RootUnavailable) => None,
                RepoDir::NotServed(NotServed::Both) => Some(format!(
                    "both {path} and {path}.git are repositories, and it cannot tell which one \
                     is meant: rename one"
                )),
                RepoDir::NotServed(NotServed::Doubled) => Some(format!(
                    "{path}.git.git lies beside {path}.git, which git could serve in its place: \
                     remove or rename it"
                )),
                RepoDir::NotServed(NotServed::Indirect) => Some(
                    "it is reached through a symbolic link or a file where a directory should be \
                     (git reads a file there as a gitfile), which could lead git to another \
                     repository: make it a real directory"
                        .to_string(),
                ),
                RepoDir::NotServed(NotServed::Nested) => Some(
                    "it lies inside another repository's folder, and a repository nested in \
                     another is not served"
                        .to_string(),
                ),
                RepoDir::NotServed(NotServed::Unreadable) => Some(
                    "a folder on its way may not be read by this user (check the permissions; \
                     the server needs them too)"
                        .to_string(),
                ),
            };
            if let Some(why) = why {
                return Some(format!(
                    "note: the embedded backend does not serve {path} under {}: {why}; \
                     {made_anyway}",
                    project_root.display()
                ));
            }
        }
    }
    // A folder on the same path whose names differ only in case: walked a segment at a time.
    let mut found = project_root.to_path_buf();
    let segments: Vec<&str> = path.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let matches = |name: &str| {
            name.eq_ignore_ascii_case(segment)
                || (last
                    && matches!(target, Target::Repo(_))
                    && name.len() == segment.len() + 4
                    && name.to_ascii_lowercase().ends_with(".git")
                    && name[..segment.len()].eq_ignore_ascii_case(segment))
        };
        let next = std::fs::read_dir(&found).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|name| matches(name))
        });
        match next {
            Some(name) => found.push(name),
            None => {
                found.clear();
                break;
            }
        }
    }
    let hint = match found.strip_prefix(project_root) {
        // The same name: a folder that is no repository (yet), which no case explains.
        Ok(same) if same == Path::new(path) || same == Path::new(&format!("{path}.git")) => {
            // A folder of repositories (a subgroup) is the likely one: its grant is a
            // repository's, and covers none of those below it.
            let below = match target {
                Target::Repo(_) => {
                    ", and a grant on a repository does not cover the repositories in a folder \
                     below it"
                }
                Target::Project(_) => "",
            };
            format!(
                " (there is {}, but git would find no repository in it{below})",
                same.display()
            )
        }
        Ok(similar) if !found.as_os_str().is_empty() => format!(
            " (there is {}: paths are case-sensitive, and this {what} never matches it)",
            similar.display()
        ),
        _ => String::new(),
    };
    Some(format!(
        "note: no {what} {path} under {} yet{hint}; {made_anyway}",
        project_root.display()
    ))
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT (Ctrl-C, `timeout`, a closed terminal, `Ctrl-\`)
/// blocked in this thread, and so in every thread started after it, for
/// [`remove_on_a_stop_signal`]; `None` if they could not be. Called before the CLI starts any
/// other thread.
fn block_stop_signals() -> Option<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset before use, and
    // pthread_sigmask is given a valid pointer to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, signal);
        }
        (libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0).then_some(set)
    }
}

/// Remove `dir` (a store's copy, see [`Store::snapshot`]) before the process ends on one of
/// the `signals` [`block_stop_signals`] blocked, whose default actions would skip `Drop`: the
/// copy holds every token's and password's hash, and can be as big as the store. A thread of
/// its own takes them with `sigwait`, where removing a folder is safe, unlike in a signal
/// handler; the process then ends with 128 + the signal's number, as the default would.
fn remove_on_a_stop_signal(signals: libc::sigset_t, dir: &Path) {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut signal = 0;
        // SAFETY: `signals` is an initialised sigset_t, blocked in every thread.
        if unsafe { libc::sigwait(&signals, &mut signal) } == 0 {
            let _ = std::fs::remove_dir_all(&dir);
            std::process::exit(128 + signal);
        }
    });
}

/// What the operator is told of a store taken back.
fn taken_back(path: &Path, before: BeforeANewStore) -> String {
    format!(
        "note: the new token store made for this command at {} was taken back{}: nothing was \
         created",
        path.display(),
        match before {
            BeforeANewStore::Nothing => "",
            BeforeANewStore::AnEmptyFile { .. } => " (the file is empty again)",
        }
    )
}

/// Take back the new store at `path` before the process ends on one of the `signals`
/// [`block_stop_signals`] blocked (see [`remove_on_a_stop_signal`]): a command stopped before it
/// is done changes nothing. A terminal a password prompt had set not to echo is set back too.
fn undo_on_a_stop_signal(
    signals: libc::sigset_t,
    path: std::path::PathBuf,
    before: BeforeANewStore,
) {
    let terminal = terminal_settings();
    std::thread::spawn(move || {
        let mut signal = 0;
        // SAFETY: `signals` is an initialised sigset_t, blocked in every thread.
        if unsafe { libc::sigwait(&signals, &mut signal) } == 0 {
            if crate::store::undo_a_new_store(&path, before) {
                note(format_args!("\n{}", taken_back(&path, before)));
            }
            if let Some(settings) = terminal {
                // SAFETY: `settings` came from tcgetattr on the same descriptor.
                unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &settings) };
            }
            std::process::exit(128 + signal);
        }
    });
}

/// The settings of the terminal on stdin, if it is one.
fn terminal_settings() -> Option<libc::termios> {
    // SAFETY: termios is plain data, filled by tcgetattr, which is given a valid pointer.
    unsafe {
        let mut settings: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(libc::STDIN_FILENO, &mut settings) == 0).then_some(settings)
    }
}

/// The terminal's settings from before the first no-echo prompt, for a stop signal to put
/// back (see [`stop_signals_set_the_terminal_back`]).
static TERMINAL_BEFORE_THE_PROMPT: std::sync::OnceLock<libc::termios> = std::sync::OnceLock::new();

/// Puts back the terminal a prompt set not to echo, then ends the process as the signal would
/// have (so with 128 + its number). Only async-signal-safe calls: `tcsetattr`, `signal`,
/// `raise`; the settings were stored before the handler was installed.
extern "C" fn set_the_terminal_back_and_stop(signal: libc::c_int) {
    if let Some(settings) = TERMINAL_BEFORE_THE_PROMPT.get() {
        // SAFETY: `settings` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, settings) };
    }
    // SAFETY: back to the default action, which raising the signal then takes.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Before a no-echo prompt: a Ctrl-C, SIGTERM or SIGHUP while it waits sets the terminal back
/// to echoing (a shell such as dash does not, and the user would type blind after it). A
/// first command's new store blocks these signals and handles them on a thread of its own
/// ([`undo_on_a_stop_signal`]), which sets the terminal back too.
fn stop_signals_set_the_terminal_back() {
    let Some(settings) = terminal_settings() else {
        return;
    };
    if TERMINAL_BEFORE_THE_PROMPT.set(settings).is_err() {
        return; // installed for an earlier prompt, with the settings from before it
    }
    let handler = set_the_terminal_back_and_stop as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: the handler only makes async-signal-safe calls.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

/// A line typed at a no-echo prompt. The prompt reads Ctrl-C as a character and raises SIGINT
/// in this thread alone; where the stop signals are blocked for a first command's new store,
/// that signal stays pending here, and the command would end with its error ("interrupted",
/// exit 1) instead of taking the store back as a stop does and exiting 130. So the interrupt
/// is sent to the process as well, which the thread that waits for stop signals takes
/// ([`undo_on_a_stop_signal`]); this thread waits for it to end the process.
fn prompt_without_echo(prompt: &str) -> Result<String, String> {
    match rpassword::prompt_password(prompt) {
        Ok(line) => Ok(line),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            // SAFETY: kill on this process's own id, with a valid signal number.
            unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
            // Where no thread waits for it, the signal's handler or default ended the process
            // already; this is only the fallback of a signal that could not be sent.
            std::thread::sleep(std::time::Duration::from_secs(5));
            Err(format!("cannot read the password: {e}"))
        }
        Err(e) => Err(format!("cannot read the password: {e}")),
    }
}

/// The longest password `--password-stdin` reads, in bytes: well above any real one, so that
/// a stream with no line end (`< /dev/zero`) is refused instead of read into memory without end.
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// Read a password: the first line of stdin with `--password-stdin` (at most
/// [`MAX_PASSWORD_BYTES`]; a longer one is refused), else a no-echo prompt.
/// `--password-stdin` on a terminal is refused before anything is read: the terminal would
/// show the password as it is typed (and keep it on the screen), where the prompt does not.
pub fn read_password(from_stdin: bool, prompt: &str) -> Result<String, String> {
    let password = if from_stdin {
        if std::io::stdin().is_terminal() {
            return Err(
                "--password-stdin reads the password from a pipe or a file, and standard \
                        input is a terminal, which would show it as it is typed: leave \
                        --password-stdin out to be asked for it without echo (nothing was \
                        changed)"
                    .into(),
            );
        }
        // At most the bound and a line end: `< /dev/zero`, or a file with no line end given
        // by mistake, is not read without end.
        let mut line = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_PASSWORD_BYTES as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        while line.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            line.pop();
        }
        if line.len() > MAX_PASSWORD_BYTES {
            return Err(format!(
                "the password on standard input is longer than {MAX_PASSWORD_BYTES} bytes, \
                 more than any password: give it alone on one line (nothing was changed)"
            ));
        }
        String::from_utf8(line).map_err(|_| {
            "cannot read the password from stdin: it is not UTF-8 (nothing was changed)".to_string()
        })?
    } else {
        if !std::io::stdin().is_terminal() {
            return Err(
                "no terminal to ask for the password: pass it with --password-stdin".into(),
            );
        }
        stop_signals_set_the_terminal_back();
        prompt_without_echo(prompt)?
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

/// Read a password to be set: as [`read_password`], and at a prompt asked twice, so that a
/// typo nobody saw (the prompt does not echo) does not become the password.
pub fn read_new_password(from_stdin: bool, prompt: &str) -> Result<String, String> {
    let password = read_password(from_stdin, prompt)?;
    if !from_stdin {
        let again = prompt_without_echo("Retype it: ")?;
        if again != password {
            return Err("the two passwords typed differ; nothing changed".into());
        }
    }
    Ok(password)
}

/// The error of a command whose standard output was closed by its reader (`| head`): `main`
/// exits without a message, as a command killed by SIGPIPE would.
pub const STDOUT_CLOSED: &str = "standard output was closed";

/// How a command's failure begins when another process held the store's write lock past
/// SQLite's busy timeout ([`StoreError::Busy`](crate::store::StoreError::Busy)).
pub const STORE_LOCKED: &str = "the token store is locked by another process";

/// A command's failure `message`, with the holder of the store's write lock named after
/// [`STORE_LOCKED`] (`held`: [`crate::store::write_lock_said`], read while it still holds it),
/// as `serve` names it: SQLite says only that the store is locked, and the operator who must
/// end that transaction — a `sqlite3` shell left open, a backup — would have to find it alone.
/// Any other message is returned as it is.
pub fn naming_the_lock_holder(message: String, held: impl FnOnce() -> String) -> String {
    match message.split_once(STORE_LOCKED) {
        Some((before, after)) => format!("{before}{STORE_LOCKED} ({}){after}", held()),
        None => message,
    }
}

/// Write one line to standard output (see `outln!`).
pub fn out(line: std::fmt::Arguments<'_>) -> Result<(), String> {
    use std::io::Write;
    write_out(|stdout| {
        stdout.write_fmt(line)?;
        stdout.write_all(b"\n")
    })
}

/// Write `text` to standard output as it is, without a newline (see `outln!`).
pub fn out_raw(text: &str) -> Result<(), String> {
    use std::io::Write;
    write_out(|stdout| stdout.write_all(text.as_bytes()))
}

/// Write one line to standard error; a failure is ignored (see `note!`).
pub fn note(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(line)
        .and_then(|()| stderr.write_all(b"\n"));
}

fn write_out(
    write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> Result<(), String> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    write(&mut stdout)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => STDOUT_CLOSED.to_string(),
            _ => format!("cannot write to standard output: {e}"),
        })
}

/// Print a value as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    outln!("{text}");
    Ok(())
}

/// A date for tables, or "-".
/// The width of a table column: its usual one, or its longest value's, so that a long name
/// does not push the rest of its row out of line.
pub fn width<S: AsRef<str>>(usual: usize, values: impl IntoIterator<Item = S>) -> usize {
    values
        .into_iter()
        .map(|v| v.as_ref().chars().count())
        .fold(usual, usize::max)
}

/// The project and repository tokens not revoked that `which` picks (by name, by who made
/// them): what a command about a user name says of the tokens the name may mean instead. A
/// store that cannot be read gives none (the command's own answer stands alone).
pub fn live_scoped_tokens(
    store: &crate::store::Store,
    which: impl Fn(&crate::store::TokenRecord) -> bool,
) -> Vec<crate::store::TokenRecord> {
    store
        .tokens(None)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| {
            t.revoked_at.is_none() && t.kind != crate::permission::TokenKind::Personal && which(t)
        })
        .collect()
}

pub fn when(ms: Option<i64>) -> String {
    ms.map(crate::clock::datetime).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_store_locked_by_another_process_is_said_with_its_holder() {
        let held = || "held by process 4242 (sqlite3): end its transaction".to_string();
        assert_eq!(
            super::naming_the_lock_holder(
                "the token store is locked by another process; try again in a moment".into(),
                held
            ),
            "the token store is locked by another process (held by process 4242 (sqlite3): \
             end its transaction); try again in a moment"
        );
        // Another failure: as it was, and the locks are not read.
        assert_eq!(
            super::naming_the_lock_holder("no user 'bob'".into(), || unreachable!()),
            "no user 'bob'"
        );
    }

    use super::{live_scoped_tokens, width};
    use crate::lifecycle::{self, Caller, CreateRequest, Subject};

    /// What a command about a user name says of the tokens the name may mean instead names
    /// only project and repository tokens that still work: a revoked one is no answer.
    #[test]
    fn the_scoped_tokens_a_name_may_mean_are_the_unrevoked_ones() {
        let (_dir, store) = crate::store::test_support::temp_store();
        let actor = crate::store::test_support::actor();
        let make = || {
            lifecycle::create(
                &store,
                &Caller::Operator,
                CreateRequest {
                    subject: Subject::Scoped(crate::policy::Target::parse("team").unwrap()),
                    name: "ci".into(),
                    permissions: vec!["REPO_READ".into()],
                    expiry_days: None,
                    allowed_networks: Vec::new(),
                },
                &actor,
            )
            .unwrap()
            .0
        };
        let (revoked, live) = (make(), make());
        lifecycle::revoke(&store, &Caller::Operator, None, &revoked.id, &actor).unwrap();
        let found: Vec<String> = live_scoped_tokens(&store, |t| t.name == "ci")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(found, vec![live.id]);
    }

    /// A column is as wide as its longest value in characters, not bytes: a name of accented
    /// letters does not widen its column (and push the rest of the table right) by its bytes.
    #[test]
    fn a_column_is_as_wide_as_its_longest_value_in_characters() {
        assert_eq!(width(3, ["ab"]), 3);
        assert_eq!(width(3, ["équipe"]), 6);
        assert_eq!(width(3, ["ab", "éééé", "x"]), 4);
    }
}
