//! `gitgate check`: what `serve` would make of the configuration, without starting it — as
//! `nginx -t` does, for a change about to be deployed, restarted or sent `SIGHUP`. It runs the
//! start's own checks in the start's order (the config, the TLS certificate and key, the
//! upstream's settings and its secret), then asks the backend whether it is ready and reads the
//! store — read-only: no store is created or migrated. The one file it may leave is the marker
//! of a store its quick_check found damaged, which tells a running server to refuse it as the
//! check does (see `Store::inspect`).
//!
//! It fails (exit 1, the start's message) exactly where `serve` would refuse to start; an
//! upstream that does not answer now is a warning, as at a start, where gitgate serves and
//! reports not ready until it does. The listen addresses are bound for a moment and let go, as
//! `serve` binds them: an address this machine does not have, or a port this user may not
//! take, fails as the start would. An address in use is a warning only: for a configuration
//! about to be reloaded or restarted, the running gitgate is what holds it.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, Upstream};
use crate::store::Store;
use crate::tls::CertStore;
use crate::upstream::cgi::repositories::{self, Repository};
use crate::upstream::secret::UpstreamSecret;
use crate::upstream::{CgiBackend, HttpBackend};

use crate::port_holder::Holder;

/// A listen address in use by a program that is not a gitgate: `serve` cannot start, so
/// `check` fails, naming it (node_exporter on port 9100, say). One the running gitgate holds, or
/// whose holder cannot be seen (another user's process), is a warning only.
fn in_use_by_another_program(
    addr: std::net::SocketAddr,
    key: &str,
    source: &str,
) -> Result<(), String> {
    let ours = Some(crate::port_holder::config_identity(Path::new(source)));
    match crate::port_holder::holder(addr.port()) {
        Some(h) if !h.is_gitgate() => Err(format!(
            "cannot listen on {addr} ({key} in {source}): in use by {} (pid {}), not a \
             gitgate: serve cannot start; choose another port or stop that program",
            h.name, h.pid
        )),
        // A gitgate that runs another configuration: not this one's live server.
        Some(Holder {
            pid,
            config: Some(theirs),
            ..
        }) if ours.as_ref().is_some_and(|ours| *ours != theirs) => Err(format!(
            "cannot listen on {addr} ({key} in {source}): in use by another gitgate (pid {pid}, \
             serving {}): serve cannot start with this configuration; choose another port",
            theirs.display()
        )),
        _ => Ok(()),
    }
}

/// ` by gitgate (pid N)` when the holder of `addr`'s port can be seen, with its build when it
/// is not this program's: a server still running the binary an upgrade replaced.
fn holder_named(addr: std::net::SocketAddr) -> String {
    crate::port_holder::holder(addr.port())
        .map(|h| holder_text(&h, crate::build_id::own()))
        .unwrap_or_default()
}

fn holder_text(h: &Holder, own_build: Option<&str>) -> String {
    match (h.build_id.as_deref(), own_build) {
        (Some(theirs), Some(ours)) if theirs != ours => format!(
            " by {} (pid {}, build {theirs}; this program is build {ours}: a restart runs it)",
            h.name, h.pid
        ),
        _ => format!(" by {} (pid {})", h.name, h.pid),
    }
}

pub fn run(config_path: &Path) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let source = config.source.display().to_string();
    outln!("config {source}: ok");
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut warnings = 0;
    for warning in config.warnings() {
        warnings += 1;
        outln!("warning: {warning}");
    }
    // serve's own verdict on the open-files limit it would raise itself to.
    let max_connections = config.server.limits.max_connections;
    let open_files = crate::open_files::at_start(max_connections, config.server.workers);
    let verdict = crate::open_files::verdict(
        open_files.limit,
        open_files.wanted,
        config.server.workers,
        max_connections,
    )?;
    if let Some(warning) = verdict {
        warnings += 1;
        outln!("warning: {warning}");
    }
    let listen = config.server.listen;
    match try_listen(listen) {
        Ok(()) => outln!("listen {scheme}://{listen}: free"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            in_use_by_another_program(listen, "[server] listen", &source)?;
            warnings += 1;
            outln!(
                "warning: listen {scheme}://{listen}: in use now{} (by the running gitgate, if \
                 this configuration is live; serve cannot start while it is)",
                holder_named(listen)
            );
        }
        // serve's own message for the same failure.
        Err(e) => {
            return Err(format!(
                "cannot listen on {listen} ([server] listen in {source}): {e}{}",
                crate::server::listen_hint(listen, &e)
            ))
        }
    }
    if let Some(metrics) = config.metrics_listen {
        match try_listen(metrics) {
            Ok(()) => outln!("metrics on http://{metrics}: free"),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                in_use_by_another_program(metrics, "[metrics] listen", &source)?;
                warnings += 1;
                outln!(
                    "warning: metrics on http://{metrics}: in use now{} (by the running \
                     gitgate, if this configuration is live; serve cannot start while it is)",
                    holder_named(metrics)
                );
            }
            Err(e) => {
                return Err(format!(
                    "cannot listen for metrics on {metrics} ([metrics] listen in {source}): {e}{}",
                    crate::server::listen_hint(metrics, &e)
                ))
            }
        }
    }
    if let Some(tls) = &config.server.tls {
        let certs = CertStore::load(&tls.cert, &tls.key).map_err(|e| format!("{source}: {e}"))?;
        certs.server_config()?;
        let until = match certs.validity() {
            Some(v) => chain_dates(&v, crate::clock::now_ms()),
            None => ", its validity dates unreadable".into(),
        };
        outln!(
            "tls: certificate {} and key {}: ok{until}",
            tls.cert.display(),
            tls.key.display()
        );
        let near = certs
            .validity()
            .and_then(|v| v.expiry_note(crate::clock::now_ms()))
            // One out of its dates is among the warnings already.
            .filter(|(passed, _)| !passed);
        let key_open = crate::tls::key_readable_by_all(&tls.key);
        for warning in certs
            .warnings()
            .into_iter()
            .chain(near.map(|(_, n)| n))
            .chain(key_open)
        {
            warnings += 1;
            outln!("warning: tls: {warning}");
        }
        if certs.lone_certificate_issued_by_a_ca() {
            outln!(
                "note: tls: {} holds the server's certificate alone, without the intermediate \
                 certificates of its CA: right for an internal CA the clients trust \
                 themselves; from a public CA, name the full chain (fullchain.pem), or clients \
                 refuse it (git: `server certificate verification failed`)",
                tls.cert.display()
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (what, ready) = match &config.upstream {
        Upstream::Cgi {
            program,
            project_root,
            max_processes,
            ..
        } => {
            let backend = CgiBackend::new(program.clone(), project_root.clone());
            let found = repositories::under(project_root);
            if let Some(warning) = owned_by_another_user(&found) {
                warnings += 1;
                outln!("warning: {warning}");
            }
            let stale = repositories::stale_quarantines(&found, std::time::SystemTime::now());
            if let Some(warning) = repositories::quarantine_warning(&stale, project_root) {
                warnings += 1;
                outln!("warning: {warning}");
            }
            let at_once = match max_processes {
                0 => "no cap on processes at once".to_owned(),
                1 => "at most 1 process at once".to_owned(),
                n => format!("at most {n} processes at once"),
            };
            (
                format!(
                    "cgi {} for {} ({at_once})",
                    program.display(),
                    project_root.display()
                ),
                runtime.block_on(backend.ready()),
            )
        }
        Upstream::Http(http) => {
            let secret = match &http.credentials {
                Some(c) => Some(Arc::new(
                    UpstreamSecret::load(c).map_err(|e| format!("{source}: {e}"))?,
                )),
                None => None,
            };
            if let Some(warning) = secret.as_ref().and_then(|s| s.file_readable_by_all()) {
                warnings += 1;
                outln!("warning: {warning}");
            }
            let backend = HttpBackend::new(
                http,
                secret,
                config.server.trusted_proxies.clone(),
                config.server.tls.is_some(),
                &config.server.git_prefix,
            )
            .map_err(|e| format!("{source}: {e}"))?;
            for warning in backend.warnings() {
                warnings += 1;
                outln!("warning: {warning}");
            }
            let ready = runtime.block_on(backend.ready());
            // Connecting is not speaking HTTP there: an `http://` URL for an https port
            // connects, and every request then gets the upstream's `400`.
            if ready.is_ok() {
                if let Some(warning) = runtime.block_on(backend.plain_answer_warning()) {
                    warnings += 1;
                    outln!("warning: {warning}");
                }
            }
            (backend.address().to_owned(), ready)
        }
    };
    match ready {
        Ok(()) => outln!("upstream {what}: ready"),
        Err(why) => {
            warnings += 1;
            outln!(
                "warning: upstream {what} is not ready: {why} (serve starts anyway, and \
                 /readyz answers 503 until it is)"
            );
        }
    }
    let store = config.store.path.display();
    // Read as check reads it (without locks, when no -wal says anyone has it open), a store
    // another process holds in locking_mode=EXCLUSIVE looks fine; serve could not open it.
    let holders: Vec<String> = crate::store::lockers(&config.store.path)
        .iter()
        .map(u32::to_string)
        .collect();
    if !holders.is_empty() {
        return Err(config.store_refusal(format!(
            "process {} keeps it locked from every other process (a connection in \
             locking_mode=EXCLUSIVE), so serve would stop after 5 s, unable to read it; end \
             that process's hold on it",
            holders.join(", ")
        )));
    }
    let inspection = Store::inspect(&config.store.path).map_err(|e| config.store_refusal(e))?;
    // serve's own check before it opens the store: this process's access, nothing opened.
    Store::check_can_write(&config.store.path).map_err(|e| config.store_refusal(e))?;
    // A store with no token to accept refuses every git request, each a 401 that makes git's
    // credential helpers forget the token they hold: worth a word before a restart, as a
    // `[store] path` mistyped in a live config makes one so.
    if let Some(warning) = crate::store::readable_by_others(&config.store.path) {
        warnings += 1;
        outln!("warning: store {store}: {warning}");
    }
    if let Some(warning) = crate::store::low_on_space(&config.store.path) {
        warnings += 1;
        outln!("warning: store {store}: {warning}");
    }
    // serve needs no policy, but every token created would be refused for it.
    if let Some(Err(e)) = inspection
        .as_ref()
        .map(|i| crate::lifecycle::policy_of_settings(&i.settings))
    {
        warnings += 1;
        outln!("warning: store {store}: {e}");
    }
    // A hash edited beyond what gitgate checks, or into one argon2 cannot check, refuses every
    // login of its user, said otherwise only by the ERROR at the next one.
    for (user, unchecked) in inspection.iter().flat_map(|i| i.passwords_unchecked.iter()) {
        let what = match unchecked {
            crate::password::Unchecked::BeyondLimits(why) => {
                format!("asks for more than gitgate checks ({why})")
            }
            crate::password::Unchecked::Unreadable(why) => {
                format!("names argon2 but cannot be checked ({why})")
            }
            crate::password::Unchecked::NoMemory(_) => continue,
        };
        warnings += 1;
        outln!(
            "warning: store {store}: user '{user}': the stored password hash {what}, so every \
             password login of the user is refused; set it again with `gitgate user passwd \
             {user}`"
        );
    }
    // Made before such names were refused: each is still served, but its audit trail is mixed.
    for user in inspection
        .iter()
        .flat_map(|i| i.users_named_as_no_user.iter())
    {
        warnings += 1;
        outln!(
            "warning: store {store}: user '{user}': the audit trail writes this name as the \
             actor of what no user did (gitgate's own actions, or a call that named no user), \
             so this user's changes cannot be told from those, and `gitgate audit --user \
             {user}` lists both; add the person under another name and disable this one \
             (`gitgate user disable {user}`)"
        );
    }
    let empty = "it refuses every git request until a token is made (if the store is \
                 elsewhere, fix [store] path)";
    match inspection {
        None => {
            warnings += 1;
            outln!("warning: store {store}: not there yet; serve creates it, empty: {empty}");
        }
        Some(_) if crate::store::is_an_empty_file(&config.store.path) => {
            warnings += 1;
            outln!(
                "warning: store {store}: an empty file (0 bytes: a failed copy or restore?); \
                 serve makes a new, empty store in it: {empty}"
            );
        }
        Some(i) if i.unrevoked_tokens == 0 => {
            warnings += 1;
            outln!(
                "warning: store {store}: schema {}; {}, no token that is not revoked: {empty}",
                i.schema,
                counted(i.users, "user")
            );
        }
        Some(i) if i.usable_tokens == Some(0) => {
            warnings += 1;
            outln!(
                "warning: store {store}: schema {}; {}, {} not revoked, but every one expired \
                 or of a disabled user: {empty}",
                i.schema,
                counted(i.users, "user"),
                counted(i.unrevoked_tokens, "token")
            );
        }
        Some(i) if i.schema < i.current => outln!(
            "store {store}: schema {}, migrated to {} at the next start or by any command of this \
             gitgate (a reading one too; a server of the old version then refuses it); {}, {} \
             not revoked",
            i.schema,
            i.current,
            counted(i.users, "user"),
            counted(i.unrevoked_tokens, "token")
        ),
        Some(i) => outln!(
            "store {store}: schema {} (current); {}, {} not revoked",
            i.schema,
            counted(i.users, "user"),
            counted(i.unrevoked_tokens, "token")
        ),
    }
    match warnings {
        0 => outln!("ok: serve would start with this configuration"),
        n => outln!(
            "ok: serve would start with this configuration ({})",
            counted(n, "warning")
        ),
    }
    Ok(())
}

/// Bind `addr` as `serve` would (`SO_REUSEADDR`, as tokio's listener sets it) and let it go.
/// Repositories under `project_root` that git http-backend would refuse to serve as this user:
/// git serves a repository only to its owner ("detected dubious ownership"), unless its
/// `safe.directory` (asked of git here, in the environment the backend inherits: the same
/// `HOME`) names it, so every request for one gets a `500` — while `/readyz` says ready, as
/// the root itself can be read. Looks three folders deep (`team/app.git`,
/// `team/sub/app.git`), at folders with a `HEAD` or a `.git`, not following links.
fn owned_by_another_user(repositories: &[Repository]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let mut refused = Vec::new();
    for repository in repositories {
        match std::fs::symlink_metadata(&repository.path) {
            Ok(meta) if meta.uid() != me => refused.push((repository.path.clone(), meta.uid())),
            _ => {}
        }
    }
    if refused.is_empty() {
        return None;
    }
    let safe = std::process::Command::new("git")
        .args(["config", "--get-all", "safe.directory"])
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    refused.retain(|(path, _)| !safe_directory_names(&safe, path));
    let (first, owner) = refused.first()?;
    let more = match refused.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    let home = std::env::var_os("HOME");
    let home_is_folder = home.as_deref().is_some_and(|home| Path::new(home).is_dir());
    Some(format!(
        "{}{more} belongs to uid {owner}, not to uid {me} that this runs as: git http-backend \
         serves a repository only to its owner (\"detected dubious ownership\"), so every \
         request for it gets a 500; run gitgate as the repositories' owner, or name them in \
         git's safe.directory for gitgate's user ({})",
        first.display(),
        safe_directory_advice(home.as_deref(), home_is_folder)
    ))
}

/// Pure: how to name a repository in `safe.directory` for this user. Its own (`--global`) git
/// config lives in its home folder, which a service account often lacks (`useradd -r`,
/// Debian's `adduser --system`: `/nonexistent`): there `git config --global` fails (`could not
/// lock config file /nonexistent/.gitconfig`), and only the system's config, written by root,
/// is read by the backend.
fn safe_directory_advice(home: Option<&std::ffi::OsStr>, home_is_folder: bool) -> String {
    match home {
        Some(_) if home_is_folder => {
            "git config --global --add safe.directory PATH as that user, or '*' for every \
             repository"
                .to_owned()
        }
        Some(home) => format!(
            "its home folder {} does not exist, so git reads no --global config for it: as \
             root, git config --system --add safe.directory PATH, or '*' for every repository",
            Path::new(home).display()
        ),
        None => "HOME is not set, so git reads no --global config for it: as root, git config \
                 --system --add safe.directory PATH, or '*' for every repository"
            .to_owned(),
    }
}

/// Pure: whether git's `safe.directory` values (one a line) name `repo`: `*`, its path, or
/// a leading path ending in `/*` (git 2.46 and later).
fn safe_directory_names(values: &str, repo: &Path) -> bool {
    let repo = repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf());
    values.lines().map(str::trim).any(|value| {
        value == "*"
            || Path::new(value) == repo
            || value
                .strip_suffix("/*")
                .is_some_and(|lead| repo.starts_with(lead))
    })
}

fn try_listen(addr: std::net::SocketAddr) -> std::io::Result<()> {
    std::net::TcpListener::bind(addr).map(drop)
}

/// `1 user`, `2 users`.
fn counted(n: i64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The `, valid until ...` of the certificate line: the served certificate's end, and an
/// intermediate's when it ends sooner (still valid at `now`: one already out of its dates is a
/// warning of its own) — the day clients that need the intermediate start refusing, which is
/// what a renewal reminder must be set for.
fn chain_dates(chain: &crate::tls::ChainValidity, now: i64) -> String {
    let mut said = format!(
        ", valid until {}",
        crate::clock::datetime(chain.served.not_after)
    );
    if chain.first_to_expire != 0 && chain.validity.not_after > now {
        said.push_str(&format!(
            "; {} only until {}",
            chain.first_to_expire(),
            crate::clock::datetime(chain.validity.not_after)
        ));
    }
    said
}

#[cfg(test)]
mod tests {
    use super::{
        chain_dates, counted, holder_text, safe_directory_advice, safe_directory_names, Holder,
    };

    #[test]
    fn a_holder_of_another_build_is_named_with_both_builds() {
        let h = Holder {
            pid: 7,
            name: "gitgate".into(),
            config: None,
            build_id: Some("aaaa".into()),
            runs_gitgate: false,
        };
        assert_eq!(holder_text(&h, Some("aaaa")), " by gitgate (pid 7)");
        assert_eq!(holder_text(&h, None), " by gitgate (pid 7)");
        assert_eq!(
            holder_text(&h, Some("bbbb")),
            " by gitgate (pid 7, build aaaa; this program is build bbbb: a restart runs it)"
        );
    }

    #[test]
    fn safe_directory_advice_names_the_config_git_will_read_for_this_user() {
        use std::ffi::OsStr;
        let home = safe_directory_advice(Some(OsStr::new("/home/git")), true);
        assert!(home.contains("git config --global --add"), "{home}");
        let none = safe_directory_advice(Some(OsStr::new("/nonexistent")), false);
        assert!(
            none.contains("/nonexistent does not exist")
                && none.contains("git config --system --add")
                && !none.contains("--global --add"),
            "{none}"
        );
        let unset = safe_directory_advice(None, false);
        assert!(
            unset.contains("HOME is not set") && unset.contains("--system --add"),
            "{unset}"
        );
    }

    #[test]
    fn safe_directory_names_a_repository_as_git_does() {
        let repo = std::path::Path::new("/nonexistent/repos/team/app.git");
        for named in [
            "*",
            "/nonexistent/repos/team/app.git",
            "/nonexistent/repos/*",
            "/other\n  *  ",
        ] {
            assert!(safe_directory_names(named, repo), "{named:?}");
        }
        for not in [
            "",
            "/nonexistent/repos",
            "/nonexistent/rep*",
            "/nonexistent/repos/team/lib.git",
        ] {
            assert!(!safe_directory_names(not, repo), "{not:?}");
        }
    }
    use crate::tls::{ChainValidity, Validity};

    const DAY: i64 = 24 * 3600 * 1000;

    fn chain(served_end: i64, chain_end: i64, first_to_expire: usize) -> ChainValidity {
        ChainValidity {
            validity: Validity {
                not_before: 0,
                not_after: chain_end,
            },
            first_to_expire,
            served: Validity {
                not_before: 0,
                not_after: served_end,
            },
        }
    }

    #[test]
    fn an_intermediate_ending_before_the_served_certificate_is_named_with_its_date() {
        assert_eq!(
            chain_dates(&chain(100 * DAY, 100 * DAY, 0), 0),
            ", valid until 1970-04-11T00:00:00Z"
        );
        assert_eq!(
            chain_dates(&chain(100 * DAY, 40 * DAY, 1), 0),
            ", valid until 1970-04-11T00:00:00Z; the TLS certificate file's certificate 2 (an \
             intermediate) only until 1970-02-10T00:00:00Z"
        );
        // Already past: the warning about that intermediate says so, not this line.
        assert_eq!(
            chain_dates(&chain(100 * DAY, 40 * DAY, 1), 41 * DAY),
            ", valid until 1970-04-11T00:00:00Z"
        );
    }

    /// At the very millisecond an intermediate's `not_after` is reached it counts as expired,
    /// as the expiry warning (`ChainValidity::expiry_note`) counts it: said there, not here too.
    #[test]
    fn an_intermediate_at_its_last_moment_is_left_to_the_expiry_warning() {
        assert_eq!(
            chain_dates(&chain(100 * DAY, 40 * DAY, 1), 40 * DAY),
            ", valid until 1970-04-11T00:00:00Z"
        );
        assert!(chain_dates(&chain(100 * DAY, 40 * DAY, 1), 40 * DAY - 1).contains("only until"));
    }

    /// The counts of the store line and the verdict: "1 user", and a plural for every other
    /// number, none included ("0 users", "0 tokens").
    #[test]
    fn counts_are_singular_for_one_only() {
        assert_eq!(counted(1, "user"), "1 user");
        assert_eq!(counted(0, "user"), "0 users");
        assert_eq!(counted(2, "warning"), "2 warnings");
    }
}
