//! `proxy.toml` → [`Config`], validated before anything starts.
//!
//! The operator reads these errors at startup, so each one names the file and the key and says
//! what to do. Unknown keys are errors (a typo must not silently fall back to a default), and
//! relative paths are resolved against the config file's folder so that the same file works
//! whatever the current directory.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this came from, for messages.
    pub source: PathBuf,
    pub server: Server,
    pub store: Store,
    pub upstream: Upstream,
    pub auth: Auth,
    pub rate_limit: RateLimit,
    pub auth_failures: AuthFailures,
}

#[derive(Clone, Debug)]
pub struct Server {
    pub listen: SocketAddr,
    /// Normalised: starts with '/', no trailing '/' unless it is exactly "/".
    pub git_prefix: String,
}

#[derive(Clone, Debug)]
pub struct Store {
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub enum Upstream {
    /// Run `git http-backend` (or another CGI program) per request.
    Cgi {
        program: PathBuf,
        project_root: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub struct Auth {
    pub realm: String,
}

/// `[rate_limit]`: token buckets per principal (see `ratelimit`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub enabled: bool,
    pub capacity: u32,
    pub refill_per_second: f64,
}

impl Default for RateLimit {
    /// Bitbucket Data Center's defaults.
    fn default() -> Self {
        RateLimit {
            enabled: true,
            capacity: 60,
            refill_per_second: 5.0,
        }
    }
}

/// `[auth_failures]`: failed-authentication throttling per source address (see `throttle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailures {
    pub max: u32,
    pub window_seconds: u32,
}

impl Default for AuthFailures {
    fn default() -> Self {
        AuthFailures {
            max: 10,
            window_seconds: 60,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    store: Option<RawStore>,
    upstream: Option<RawUpstream>,
    auth: Option<RawAuth>,
    rate_limit: Option<RawRateLimit>,
    auth_failures: Option<RawAuthFailures>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    git_prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    cgi: Option<String>,
    url: Option<String>,
    project_root: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    realm: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    enabled: Option<bool>,
    capacity: Option<u32>,
    refill_per_second: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuthFailures {
    max: Option<u32>,
    window_seconds: Option<u32>,
}

impl Config {
    /// Read and validate the file at `path`, checking the filesystem (backend program, project
    /// root) as a server start needs.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            message: format!("cannot read the config file: {e}"),
        })?;
        let config = Config::parse(path, &text)?;
        config.check_paths()?;
        Ok(config)
    }

    /// Parse and validate `text` as if it came from `path`; pure except for resolving paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.to_path_buf(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(toml_message(&e)))?;
        // Absolute, so that the backend (which runs in another directory) sees the same paths.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let server = raw.server.unwrap_or_default();
        let listen_text = server.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            err(format!(
                "[server] listen = \"{listen_text}\" is not an address: use IP:PORT, e.g. \"127.0.0.1:8080\""
            ))
        })?;
        let git_prefix = normalise_prefix(server.git_prefix.as_deref().unwrap_or("/"))
            .map_err(|m| err(format!("[server] git_prefix: {m}")))?;

        let store = raw.store.unwrap_or_default();
        let store_path = store.path.as_deref().unwrap_or("gitgate.db");
        if store_path.is_empty() {
            return Err(err(
                "[store] path is empty: name the SQLite file, e.g. \"gitgate.db\"".into(),
            ));
        }

        let upstream = raw.upstream.ok_or_else(|| {
            err("[upstream] is missing: set `cgi` (with `project_root`) or `url`".into())
        })?;
        let upstream = match (upstream.cgi, upstream.url) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "[upstream] sets both `cgi` and `url`: choose exactly one backend".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "[upstream] sets no backend: set `cgi` (e.g. \"/usr/lib/git-core/git-http-backend\") or `url`"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "[upstream] url: HTTP upstreams are not supported by this version; use `cgi`"
                        .into(),
                ))
            }
            (Some(cgi), None) => {
                if cgi.is_empty() {
                    return Err(err("[upstream] cgi is empty: name the CGI program".into()));
                }
                let root = upstream.project_root.ok_or_else(|| {
                    err("[upstream] project_root is missing: `cgi` needs the folder that holds the repositories".into())
                })?;
                Upstream::Cgi {
                    program: resolve(&cgi),
                    project_root: resolve(&root),
                }
            }
        };

        let auth = raw.auth.unwrap_or_default();
        let realm = auth.realm.unwrap_or_else(|| "gitgate".to_string());
        if realm.is_empty()
            || realm
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(err(
                "[auth] realm must be non-empty and contain no quotes, backslashes or control characters".into(),
            ));
        }

        let rate_limit = parse_rate_limit(raw.rate_limit.unwrap_or_default()).map_err(err)?;
        let auth_failures =
            parse_auth_failures(raw.auth_failures.unwrap_or_default()).map_err(err)?;

        Ok(Config {
            source: path.to_path_buf(),
            server: Server { listen, git_prefix },
            store: Store {
                path: resolve(store_path),
            },
            upstream,
            auth: Auth { realm },
            rate_limit,
            auth_failures,
        })
    }

    /// Check what `serve` needs from the filesystem.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError {
            file: self.source.clone(),
            message,
        };
        match &self.upstream {
            Upstream::Cgi {
                program,
                project_root,
            } => {
                let meta = std::fs::metadata(program).map_err(|e| {
                    err(format!(
                        "[upstream] cgi = \"{}\": {e} (is git installed? `git --exec-path` shows where git-http-backend lives)",
                        program.display()
                    ))
                })?;
                if !meta.is_file() || !is_executable(&meta) {
                    return Err(err(format!(
                        "[upstream] cgi = \"{}\" is not an executable file",
                        program.display()
                    )));
                }
                std::fs::read_dir(project_root).map_err(|e| {
                    err(format!(
                        "[upstream] project_root = \"{}\" cannot be read: {e}",
                        project_root.display()
                    ))
                })?;
            }
        }
        Ok(())
    }
}

fn parse_rate_limit(raw: RawRateLimit) -> Result<RateLimit, String> {
    let d = RateLimit::default();
    let limit = RateLimit {
        enabled: raw.enabled.unwrap_or(d.enabled),
        capacity: raw.capacity.unwrap_or(d.capacity),
        refill_per_second: raw.refill_per_second.unwrap_or(d.refill_per_second),
    };
    if limit.capacity == 0 {
        return Err(
            "[rate_limit] capacity must be at least 1 (to turn limiting off, set enabled = false)"
                .into(),
        );
    }
    if !(limit.refill_per_second.is_finite() && limit.refill_per_second > 0.0) {
        return Err(
            "[rate_limit] refill_per_second must be a positive number, e.g. 5 or 0.5".into(),
        );
    }
    Ok(limit)
}

fn parse_auth_failures(raw: RawAuthFailures) -> Result<AuthFailures, String> {
    let d = AuthFailures::default();
    let f = AuthFailures {
        max: raw.max.unwrap_or(d.max),
        window_seconds: raw.window_seconds.unwrap_or(d.window_seconds),
    };
    if f.max == 0 || f.window_seconds == 0 {
        return Err(
            "[auth_failures] max and window_seconds must be at least 1, e.g. max = 10, window_seconds = 60"
                .into(),
        );
    }
    Ok(f)
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    true
}

/// Turn toml's multi-line error into one line that keeps the key and position.
fn toml_message(e: &toml::de::Error) -> String {
    let msg = e.message();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg.to_string(),
    }
}

/// `"/scm/"` → `"/scm"`, `""` → `"/"`. Refuses characters that could make prefix matching
/// ambiguous.
pub fn normalise_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_string());
    }
    for seg in trimmed.split('/') {
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || !seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
        {
            return Err(format!(
                "\"{prefix}\" is not a plain path: use segments of letters, digits, '-', '_', '.', '~', e.g. \"/scm\""
            ));
        }
    }
    Ok(format!("/{trimmed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
git_prefix = "/scm/"
[store]
path = "gitgate.db"
[upstream]
cgi = "/usr/lib/git-core/git-http-backend"
project_root = "repos"
[auth]
realm = "gitgate"
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/gitgate/proxy.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_and_resolves_relative_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.git_prefix, "/scm");
        assert_eq!(c.store.path, Path::new("/etc/gitgate/gitgate.db"));
        let Upstream::Cgi { project_root, .. } = &c.upstream;
        assert_eq!(project_root, Path::new("/etc/gitgate/repos"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(&GOOD.replace("realm", "relm")).unwrap_err();
        assert!(e.contains("proxy.toml") && e.contains("relm"), "{e}");
    }

    #[test]
    fn backend_choice_is_exclusive() {
        let both = GOOD.replace(
            "project_root",
            "url = \"http://127.0.0.1:3000\"\nproject_root",
        );
        assert!(parse(&both).unwrap_err().contains("both"));
        let neither = GOOD.replace("cgi = \"/usr/lib/git-core/git-http-backend\"\n", "");
        assert!(parse(&neither).unwrap_err().contains("no backend"));
        let no_root = GOOD.replace("project_root = \"repos\"\n", "");
        assert!(parse(&no_root).unwrap_err().contains("project_root"));
    }

    #[test]
    fn bad_listen_and_prefix() {
        assert!(parse(&GOOD.replace("127.0.0.1:8080", "localhost"))
            .unwrap_err()
            .contains("listen"));
        assert!(parse(&GOOD.replace("/scm/", "/a/../b"))
            .unwrap_err()
            .contains("git_prefix"));
    }

    #[test]
    fn hardening_sections_default_and_validate() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.rate_limit, RateLimit::default());
        assert_eq!(c.rate_limit.capacity, 60);
        assert_eq!(c.auth_failures.max, 10);
        let custom = format!(
            "{GOOD}[rate_limit]\nenabled = false\ncapacity = 5\nrefill_per_second = 0.5\n\
             [auth_failures]\nmax = 3\nwindow_seconds = 10\n"
        );
        let c = parse(&custom).unwrap();
        assert!(!c.rate_limit.enabled);
        assert_eq!(c.rate_limit.capacity, 5);
        assert_eq!(c.rate_limit.refill_per_second, 0.5);
        assert_eq!(c.auth_failures.window_seconds, 10);
        let bad = format!("{GOOD}[rate_limit]\ncapacity = 0\n");
        assert!(parse(&bad).unwrap_err().contains("capacity"));
        let bad = format!("{GOOD}[rate_limit]\nrefill_per_second = -1\n");
        assert!(parse(&bad).unwrap_err().contains("refill_per_second"));
        let bad = format!("{GOOD}[auth_failures]\nmax = 0\n");
        assert!(parse(&bad).unwrap_err().contains("auth_failures"));
        let bad = format!("{GOOD}[rate_limit]\nburst = 3\n");
        assert!(parse(&bad).unwrap_err().contains("burst"));
    }

    #[test]
    fn prefixes_normalise() {
        assert_eq!(normalise_prefix("").unwrap(), "/");
        assert_eq!(normalise_prefix("/").unwrap(), "/");
        assert_eq!(normalise_prefix("scm").unwrap(), "/scm");
        assert_eq!(normalise_prefix("/a/b/").unwrap(), "/a/b");
        assert!(normalise_prefix("/a//b").is_err());
        assert!(normalise_prefix("/a%2fb").is_err());
    }
}
