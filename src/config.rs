//! `proxy.toml` → [`Config`], validated before anything starts.
//!
//! The operator reads these errors at startup, so each one names the file and the key and says
//! what to do. Unknown keys are errors (a typo must not silently fall back to a default), and
//! relative paths are resolved against the config file's folder so that the same file works
//! whatever the current directory.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::header::HeaderName;
use hyper::Uri;
use serde::Deserialize;

use crate::network::Cidr;

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file this came from, for messages.
    pub source: PathBuf,
    pub server: Server,
    pub store: Store,
    pub upstream: Upstream,
    pub auth: Auth,
    pub rate_limit: RateLimit,
    pub auth_failures: AuthFailures,
    /// `[metrics] listen`: where `GET /metrics` is served; `None` (the default) serves nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// A `[metrics]` section without `listen`: no metrics are served, which its writer
    /// likely did not mean (a warning).
    pub metrics_without_listen: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub listen: SocketAddr,
    /// Normalised: starts with '/', no trailing '/' unless it is exactly "/".
    pub git_prefix: String,
    /// TLS termination; `None` serves plain HTTP.
    pub tls: Option<Tls>,
    /// Front proxies (load balancers) whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    pub limits: Limits,
    /// Threads serving connections, each with its own event loop (default: one per core).
    pub workers: usize,
}

/// `[server.tls]`: PEM files, re-read on SIGHUP.
#[derive(Clone, Debug, PartialEq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Timeouts and caps on the client side. None of them is a total request time: a big clone
/// legitimately streams for many minutes.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// A client must send its request headers (and finish the TLS handshake) within this.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving in either direction, or no exchange moving (no request
    /// or answer frame: HTTP/2 PINGs alone do not count), for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request header block accepted.
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold at once; `None`: no cap. Past it a
    /// connection is answered `503` and closed. A trusted proxy's address has no cap.
    pub max_connections_per_address: Option<usize>,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 64 * 1024,
            max_connections: 1024,
            max_connections_per_address: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Store {
    pub path: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Upstream {
    /// Run `git http-backend` (or another CGI program) per request.
    Cgi {
        program: PathBuf,
        project_root: PathBuf,
        /// `max_processes`: backend processes at once over all workers; 0 for no cap.
        max_processes: usize,
        /// `max_request_buffer_mib`: git http-backend's `GIT_HTTP_MAX_REQUEST_BUFFER`, the
        /// most of a chunked request body it takes (in MiB); `None`: git's own (10 MiB).
        max_request_buffer_mib: Option<u32>,
    },
    /// An existing git server reached over HTTP(S).
    Http(Box<HttpUpstream>),
}

/// `[upstream] url = ...`: forward to an existing git server.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpUpstream {
    /// Scheme and authority only (`https://git.internal:8443`); the path is in `base_path`.
    pub origin: Uri,
    /// Normalised like `git_prefix`: `/` or `/git`.
    pub base_path: String,
    /// A Unix socket to connect to instead of the URL's host and port (`[upstream] socket`);
    /// the URL still names the upstream in `Host`, its redirects and TLS.
    pub socket: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for an `https` upstream.
    pub ca_file: Option<PathBuf>,
    /// Whether the system's root certificates are trusted too.
    pub system_roots: bool,
    /// Header that carries the authenticated user (default `X-Forwarded-User`).
    pub identity_header: HeaderName,
    /// gitgate's own credentials for the upstream, if it wants any.
    pub credentials: Option<UpstreamCredentials>,
    pub connect_timeout: Duration,
    /// No byte from the upstream (and none to it) for this long → 504 or a broken stream.
    pub idle_timeout: Duration,
    /// Pooled keep-alive connections are closed after this long unused; keep it below the
    /// upstream's own keep-alive timeout (nginx: 75 s).
    pub pool_idle_timeout: Duration,
}

/// `[upstream.credentials]`: a static secret gitgate sends upstream, never to the client.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamCredentials {
    pub scheme: CredentialScheme,
    pub source: SecretSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialScheme {
    /// The secret is `user:password`.
    Basic,
    /// The secret is the token.
    Bearer,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Auth {
    pub realm: String,
}

/// `[rate_limit]`: token buckets per principal (see `ratelimit`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub enabled: bool,
    pub capacity: u32,
    pub refill_per_second: f64,
    /// Requests one principal may have in flight to the backend at once; 0 = no cap. Applies
    /// even with `enabled = false` (which turns off the token bucket only). A POST of an
    /// exchange may go up to twice it (see `inflight`), so the default is a quarter of
    /// [`DEFAULT_MAX_PROCESSES`]: one principal holds at most half the backend processes.
    pub max_concurrent: u32,
}

impl Default for RateLimit {
    /// Bitbucket Data Center's defaults.
    fn default() -> Self {
        RateLimit {
            enabled: true,
            capacity: 60,
            refill_per_second: 5.0,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
        }
    }
}

/// `[auth_failures]`: failed-authentication throttling per source address (see `throttle`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFailures {
    pub max: u32,
    pub window_seconds: u32,
    /// Most failed-authentication events kept in the audit log, the oldest deleted beyond it
    /// (0: all kept): as many of those naming a token that exists, and as many of the others
    /// (so up to twice this in all). About 150 bytes each.
    pub keep_in_audit: u64,
    /// Networks whose addresses are never blocked (a CI fleet behind one NAT address, where one
    /// job's bad token would block every job): their failures are audited and counted in the
    /// metrics, not in the throttle.
    pub exempt: Vec<crate::network::Cidr>,
}

impl Default for AuthFailures {
    fn default() -> Self {
        AuthFailures {
            max: 10,
            window_seconds: 60,
            keep_in_audit: 1_000_000,
            exempt: Vec::new(),
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
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default, deserialize_with = "one_address")]
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default, deserialize_with = "one_address")]
    listen: Option<String>,
    git_prefix: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    // Whole numbers are read as TOML has them (i64) and checked against their own ranges
    // below, so that `-1` or a value past the Rust type is told the key's real range, not the
    // type's ("0 or more" for a key that refuses 0).
    header_read_timeout_seconds: Option<i64>,
    idle_timeout_seconds: Option<i64>,
    max_header_bytes: Option<i64>,
    max_connections: Option<i64>,
    max_connections_per_address: Option<i64>,
    shutdown_grace_seconds: Option<i64>,
    workers: Option<i64>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
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
    socket: Option<String>,
    project_root: Option<String>,
    max_processes: Option<i64>,
    max_request_buffer_mib: Option<i64>,
    ca_file: Option<String>,
    system_roots: Option<bool>,
    identity_header: Option<String>,
    connect_timeout_seconds: Option<i64>,
    idle_timeout_seconds: Option<i64>,
    pool_idle_timeout_seconds: Option<i64>,
    credentials: Option<RawCredentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    scheme: String,
    file: Option<String>,
    env: Option<String>,
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
    capacity: Option<i64>,
    refill_per_second: Option<f64>,
    max_concurrent: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuthFailures {
    max: Option<i64>,
    window_seconds: Option<i64>,
    keep_in_audit: Option<i64>,
    exempt: Option<Vec<String>>,
}

impl Config {
    /// With the embedded runner, whether one principal's requests in flight — POSTs of an
    /// exchange may take up to twice `max_concurrent` places — can fill every backend process:
    /// a token's slow uploads (a byte every few seconds moves, so the idle timeout never ends
    /// them) would then keep everyone else's clones waiting. Said, not refused: a server with
    /// one CI token may want exactly that.
    fn one_principal_holds_every_process(&self) -> Option<String> {
        let Upstream::Cgi { max_processes, .. } = self.upstream else {
            return None;
        };
        let per_principal = self.rate_limit.max_concurrent as usize;
        if max_processes == 0
            || (per_principal > 0 && per_principal.saturating_mul(2) < max_processes)
        {
            return None;
        }
        let cap = if per_principal == 0 {
            "max_concurrent = 0 (no cap)".to_string()
        } else {
            format!(
                "max_concurrent = {per_principal} (POSTs of an exchange up to {})",
                per_principal.saturating_mul(2)
            )
        };
        // With two processes or one, even a cap of 1 lets a POST take them all (it may take
        // twice its principal's cap): only more processes help.
        let advice = if max_processes <= 2 && per_principal == 1 {
            "raise max_processes to 3 or more".to_string()
        } else if max_processes <= 2 {
            "raise max_processes to 4 or more and set max_concurrent to a quarter of it or less \
             (1 for 4)"
                .to_string()
        } else {
            format!(
                "set max_concurrent to a quarter of max_processes or less (e.g. {})",
                (max_processes / 4).max(1)
            )
        };
        Some(format!(
            "[rate_limit] {cap} lets one token or user hold all {max_processes} backend \
             processes ([upstream] max_processes), and a client uploading a byte now and then \
             keeps them: {advice} unless one principal should have them all"
        ))
    }

    /// What is allowed but likely wrong, for `check` and the start to say (each a sentence).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Upstream::Http(http) = &self.upstream {
            let header = http.identity_header.as_str();
            // nginx (`underscores_in_headers off`) and Apache drop such a header without a
            // word, so every request would reach the git server as nobody's (pushes refused
            // with a bare 403); a server reached directly, or one told to, keeps it.
            if header.contains('_') {
                warnings.push(format!(
                    "[upstream] identity_header = \"{header}\" has an underscore: nginx and \
                     Apache drop such headers unless told otherwise (underscores_in_headers on), \
                     and the git server would then never see the user; '-' is safe (\"{}\")",
                    header.replace('_', "-")
                ));
            }
        }
        if let Some(held) = self.one_principal_holds_every_process() {
            warnings.push(held);
        }
        if self.metrics_without_listen {
            warnings.push(
                "[metrics] has no listen: no metrics are served (give listen = \"IP:PORT\", \
                 e.g. \"127.0.0.1:9100\", or remove the section)"
                    .into(),
            );
        }
        // A "proxy" range that takes in the clients themselves lets any of them name its own
        // address: the failed-authentication throttle, tokens' allowed networks and the
        // audit's addresses then believe what a client writes (`0.0.0.0/0` is common where the
        // proxies' addresses are not known; worth a word, not a refusal).
        if crate::network::Cidr::cover_half_of_a_family(&self.server.trusted_proxies) {
            warnings.push(
                "[server] trusted_proxies covers half or more of all IPv4 or IPv6 addresses: \
                 any client inside it can name its own address in X-Forwarded-For, and so \
                 pass the failed-authentication throttle, tokens' allowed networks and the \
                 audit's addresses; list only the addresses of your proxies"
                    .into(),
            );
        }
        warnings.extend(self.files_anyone_may_change());
        if crate::network::Cidr::cover_half_of_a_family(&self.auth_failures.exempt) {
            warnings.push(
                "[auth_failures] exempt covers half or more of all IPv4 or IPv6 addresses: the \
                 failed-authentication throttle blocks almost nobody; list the NAT addresses of \
                 the clients to exempt instead"
                    .into(),
            );
        }
        warnings
    }

    /// The config file, and the token store's folder, when every user of the machine may
    /// change them: whoever can edit `proxy.toml` chooses the program gitgate runs (`cgi`) and
    /// where tokens are checked, and whoever can rename files in the store's folder can put a
    /// store of their own, with their own tokens, in place for the next start. A group is a
    /// choice; everyone is a mistake (a `chmod 777` to get a service going, an unpacked
    /// archive's modes).
    fn files_anyone_may_change(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut said = Vec::new();
        if let Ok(meta) = std::fs::metadata(&self.source) {
            if anyone_may_change(meta.mode(), false) {
                said.push(format!(
                    "{} can be written by every user of this machine (mode {:04o}): anyone \
                     could choose the program gitgate runs and the store it checks tokens in; \
                     chmod o-w it",
                    self.source.display(),
                    meta.mode() & 0o7777
                ));
            }
        }
        let folder = match self.store.path.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => return said,
        };
        if let Ok(meta) = std::fs::metadata(folder) {
            if anyone_may_change(meta.mode(), true) {
                said.push(format!(
                    "the token store's folder {} can be written by every user of this machine \
                     (mode {:04o}): anyone could put a store of their own, with their own \
                     tokens, in place of {} for the next start; chmod o-w it",
                    folder.display(),
                    meta.mode() & 0o7777,
                    self.store.path.display()
                ));
            }
        }
        said
    }

    /// A refusal of the token store, said with where its path comes from (this file's
    /// `[store] path`); a path with a `~` in it is told that nothing expands it.
    pub fn store_refusal(&self, e: impl std::fmt::Display) -> String {
        format!(
            "{}: [store] path: {e}{}",
            self.source.display(),
            self.store_path_hint()
        )
    }

    /// For a `[store] path` with a `~` in it, that nothing expands it (a store not found there
    /// is most often one meant in a home folder); else nothing.
    pub fn store_path_hint(&self) -> &'static str {
        let tilde = self
            .store
            .path
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('~'));
        if tilde {
            " (a ~ in [store] path is taken as it is, not as a home folder: write the full path)"
        } else {
            ""
        }
    }
    /// Read and validate the file at `path`, checking the filesystem (backend program, project
    /// root) as a server start needs.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::small_file::read_to_string(path).map_err(|e| {
            // A file that is there but not this user's to read (made by root for a service run
            // as `git`) wants its owner or mode changed, not another file chosen.
            let denied = std::fs::File::open(path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
            let advice = if denied {
                format!(
                    "this process (uid {}) may not read it: check its owner and mode, and those \
                     of the folders above it, or run gitgate as the user it is for",
                    rustix::process::geteuid().as_raw()
                )
            } else {
                "choose one with --config or GITGATE_CONFIG; the default is proxy.toml in the \
                 current folder"
                    .to_string()
            };
            ConfigError {
                file: path.to_path_buf(),
                message: format!("cannot read the config file: {e} ({advice})"),
            }
        })?;
        let config = Config::parse(path, &text)?;
        config.check_paths()?;
        Ok(config)
    }

    /// Parse and validate `text` as if it came from `path`; pure except for resolving paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.to_path_buf(),
            message: on_one_line(message),
        };
        tables_where_tables_go(text).map_err(err)?;
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(toml_message(&e, text)))?;
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
        let listen = listen_address("[server] listen", listen_text, 8080).map_err(err)?;
        let git_prefix = normalise_prefix(server.git_prefix.as_deref().unwrap_or("/"))
            .map_err(|m| err(format!("[server] git_prefix: {m}")))?;
        if crate::api::is_api_path(&git_prefix) {
            return Err(err(format!(
                "[server] git_prefix = \"{git_prefix}\" is where the REST API is served \
                 (/rest/...): no git request could reach it; choose another, e.g. \"/scm\""
            )));
        }
        let tls = match server.tls {
            Some(t) if t.cert.is_empty() || t.key.is_empty() => {
                return Err(err(format!(
                    "[server.tls] {} is empty: name the PEM file",
                    if t.cert.is_empty() { "cert" } else { "key" }
                )))
            }
            Some(t) => {
                pem_text_refused("[server.tls] cert", &t.cert).map_err(err)?;
                pem_text_refused("[server.tls] key", &t.key).map_err(err)?;
                Some(Tls {
                    cert: resolve(&t.cert),
                    key: resolve(&t.key),
                })
            }
            None => None,
        };
        // Checked as a token's allowed networks are: `127.0.0.2/8` is a typo for one address
        // or for the network, and read as the network it would trust 16 million addresses to
        // name their clients.
        let trusted_proxies =
            crate::network::parse_new_list(&server.trusted_proxies.unwrap_or_default())
                .map_err(|m| err(format!("[server] trusted_proxies: {m}")))?;
        let defaults = Limits::default();
        let limits = Limits {
            header_read_timeout: seconds(
                server.header_read_timeout_seconds,
                defaults.header_read_timeout,
                "[server] header_read_timeout_seconds",
            )
            .map_err(err)?,
            idle_timeout: seconds(
                server.idle_timeout_seconds,
                defaults.idle_timeout,
                "[server] idle_timeout_seconds",
            )
            .map_err(err)?,
            max_header_bytes: match server.max_header_bytes {
                None => defaults.max_header_bytes,
                Some(n) if (8192..=1024 * 1024).contains(&n) => n as usize,
                Some(n) => {
                    return Err(err(format!(
                        "[server] max_header_bytes = {n} is out of range: use 8192 to 1048576"
                    )))
                }
            },
            max_connections: match server.max_connections {
                None => defaults.max_connections,
                Some(n) if n < 1 || n > MAX_CONNECTIONS as i64 => {
                    return Err(err(format!(
                        "[server] max_connections = {n} is out of range: use 1 to {MAX_CONNECTIONS}"
                    )))
                }
                Some(n) => n as usize,
            },
            max_connections_per_address: match server.max_connections_per_address {
                None => None,
                Some(n) if n < 1 || n > MAX_CONNECTIONS as i64 => {
                    return Err(err(format!(
                        "[server] max_connections_per_address = {n} is out of range: use 1 to \
                         {MAX_CONNECTIONS}, or leave it out for no cap"
                    )))
                }
                Some(n) => Some(n as usize),
            },
            shutdown_grace: match server.shutdown_grace_seconds {
                None => defaults.shutdown_grace,
                Some(n) if n < 0 => {
                    return Err(err(format!(
                        "[server] shutdown_grace_seconds = {n}: use 0 to {MAX_SECONDS} seconds \
                         (a year)"
                    )))
                }
                Some(n) if n > MAX_SECONDS as i64 => {
                    return Err(err(format!(
                    "[server] shutdown_grace_seconds = {n}: at most {MAX_SECONDS} seconds (a year)"
                )))
                }
                Some(n) => Duration::from_secs(n as u64),
            },
        };

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
        let upstream = match (upstream.cgi.clone(), upstream.url.clone()) {
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
            (None, Some(url)) => {
                Upstream::Http(Box::new(http_upstream(&url, upstream, &resolve).map_err(err)?))
            }
            (Some(cgi), None) => {
                if let Some(keys) = http_only_keys(&upstream) {
                    let (them, apply) = if keys.contains(',') {
                        ("them", "apply")
                    } else {
                        ("it", "applies")
                    };
                    return Err(err(format!(
                        "[upstream] {keys} {apply} to `url` upstreams only; remove {them} or switch to `url`"
                    )));
                }
                if cgi.is_empty() {
                    return Err(err("[upstream] cgi is empty: name the CGI program".into()));
                }
                let root = upstream.project_root.ok_or_else(|| {
                    err("[upstream] project_root is missing: `cgi` needs the folder that holds the repositories".into())
                })?;
                // Read as the config file's own folder, it would serve that folder (the store's).
                if root.is_empty() {
                    return Err(err(
                        "[upstream] project_root is empty: name the folder that holds the \
                         repositories, e.g. \"repos\""
                            .into(),
                    ));
                }
                let max_processes = match upstream.max_processes {
                    None => DEFAULT_MAX_PROCESSES,
                    Some(n) if (0..=MAX_PROCESSES as i64).contains(&n) => n as usize,
                    Some(n) => {
                        return Err(err(format!(
                            "[upstream] max_processes = {n} is out of range: use 1 to \
                             {MAX_PROCESSES}, or 0 for no cap (default {DEFAULT_MAX_PROCESSES})"
                        )))
                    }
                };
                let max_request_buffer_mib = match upstream.max_request_buffer_mib {
                    Some(n) if !(1..=i64::from(MAX_REQUEST_BUFFER_MIB)).contains(&n) => {
                        return Err(err(format!(
                            "[upstream] max_request_buffer_mib = {n} is out of range: use 1 to \
                             {MAX_REQUEST_BUFFER_MIB} (git's own is 10)"
                        )))
                    }
                    n => n.map(|n| n as u32),
                };
                Upstream::Cgi {
                    program: resolve(&cgi),
                    project_root: resolve(&root),
                    max_processes,
                    max_request_buffer_mib,
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

        let workers = match server.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) if (1..=256).contains(&n) => n as usize,
            Some(n) => {
                return Err(err(format!(
                    "[server] workers = {n} is out of range: use 1 to 256 (default: one per core)"
                )))
            }
        };
        let rate_limit = parse_rate_limit(raw.rate_limit.unwrap_or_default()).map_err(err)?;
        let auth_failures =
            parse_auth_failures(raw.auth_failures.unwrap_or_default()).map_err(err)?;
        let metrics_without_listen = raw.metrics.as_ref().is_some_and(|m| m.listen.is_none());
        let metrics_listen = match raw.metrics.and_then(|m| m.listen) {
            None => None,
            Some(text) => Some(listen_address("[metrics] listen", &text, 9100).map_err(err)?),
        };
        if let Some(metrics) = metrics_listen.filter(|m| listeners_overlap(*m, listen)) {
            return Err(err(format!(
                "[metrics] listen = \"{metrics}\" is the git listener's address ([server] listen \
                 = \"{listen}\"): /metrics needs a port of its own"
            )));
        }

        if let Upstream::Http(http) = &upstream {
            if let Some(own) = http_upstream_addresses(http)
                .into_iter()
                .find(|a| is_own_listener(listen, *a))
            {
                return Err(err(format!(
                    "[upstream] url names gitgate's own listener ({own}, [server] listen = \
                     \"{listen}\"): every request would come back to gitgate; point it at the \
                     git server"
                )));
            }
        }

        Ok(Config {
            source: path.to_path_buf(),
            server: Server {
                listen,
                git_prefix,
                tls,
                trusted_proxies,
                limits,
                workers,
            },
            store: Store {
                path: resolve(store_path),
            },
            upstream,
            auth: Auth { realm },
            rate_limit,
            auth_failures,
            metrics_listen,
            metrics_without_listen,
        })
    }

    /// Check what `serve` needs from the filesystem.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError {
            file: self.source.clone(),
            message: on_one_line(message),
        };
        match &self.upstream {
            Upstream::Cgi {
                program,
                project_root,
                ..
            } => {
                let meta = std::fs::metadata(program).map_err(|e| {
                    err(format!(
                        "[upstream] cgi = \"{}\": {e} (is git installed? `git --exec-path` shows where git-http-backend lives)",
                        program.display()
                    ))
                })?;
                if !meta.is_file() {
                    return Err(err(format!(
                        "[upstream] cgi = \"{}\" is not an executable file",
                        program.display()
                    )));
                }
                crate::upstream::cgi::may_execute(program).map_err(|e| {
                    err(format!(
                        "[upstream] cgi = \"{}\" cannot be run by this user ({e}): it must \
                         be executable for the user gitgate runs as",
                        program.display()
                    ))
                })?;
                std::fs::read_dir(project_root).map_err(|e| {
                    let hint = if e.kind() == std::io::ErrorKind::NotFound {
                        " (create it, with the bare repositories as PROJECT/REPO.git under it, \
                         or point project_root at the folder that has them; a relative path is \
                         taken from the config file's folder)"
                    } else {
                        ""
                    };
                    err(format!(
                        "[upstream] project_root = \"{}\" cannot be read: {e}{hint}",
                        project_root.display()
                    ))
                })?;
            }
            Upstream::Http(http) => {
                if let Some(ca) = &http.ca_file {
                    std::fs::metadata(ca).map_err(|e| {
                        err(format!("[upstream] ca_file = \"{}\": {e}", ca.display()))
                    })?;
                }
            }
        }
        if let Some(tls) = &self.server.tls {
            for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                std::fs::metadata(path).map_err(|e| {
                    err(format!("[server.tls] {key} = \"{}\": {e}", path.display()))
                })?;
            }
        }
        Ok(())
    }
}

fn parse_rate_limit(raw: RawRateLimit) -> Result<RateLimit, String> {
    let d = RateLimit::default();
    let enabled = raw.enabled.unwrap_or(d.enabled);
    // With limiting off already, the way out is another: the values are checked all the same
    // (a SIGHUP that turns limiting on must not meet them first).
    let off = if enabled {
        "to turn limiting off, set enabled = false"
    } else {
        "checked with enabled = false too: give a value in range, or leave the key out"
    };
    let limit = RateLimit {
        enabled,
        capacity: match raw.capacity {
            None => d.capacity,
            Some(n) if n < 1 => {
                return Err(format!("[rate_limit] capacity must be at least 1 ({off})"))
            }
            Some(n) => fitting(
                n,
                "[rate_limit] capacity",
                &format!("use 1 to {} ({off})", u32::MAX),
            )?,
        },
        refill_per_second: raw.refill_per_second.unwrap_or(d.refill_per_second),
        max_concurrent: match raw.max_concurrent {
            None => d.max_concurrent,
            Some(n) => fitting(
                n,
                "[rate_limit] max_concurrent",
                &format!("use 0 (no cap) to {}", u32::MAX),
            )?,
        },
    };
    if !crate::ratelimit::Limits::refill_in_range(limit.refill_per_second) {
        return Err(format!(
            "[rate_limit] refill_per_second must be from 0.0000116 (one request a day) to \
             1000000, e.g. 5 or 0.5 ({off})"
        ));
    }
    Ok(limit)
}

/// `value` as a `T`, or a refusal saying `range` for `key` when it does not fit (a negative
/// count, or one past what the setting holds).
fn fitting<T: TryFrom<i64>>(value: i64, key: &str, range: &str) -> Result<T, String> {
    T::try_from(value).map_err(|_| format!("{key} = {value} is out of range: {range}"))
}

/// The longest `[auth_failures] window_seconds`: a day.
const MAX_AUTH_FAILURE_WINDOW_SECS: u32 = 86_400;

fn parse_auth_failures(raw: RawAuthFailures) -> Result<AuthFailures, String> {
    let d = AuthFailures::default();
    let from_one = |value: Option<i64>, default: u32, key: &str, most: u32, why: &str| match value {
        None => Ok(default),
        Some(n) if (1..=i64::from(most)).contains(&n) => Ok(n as u32),
        Some(n) => Err(format!("{key} = {n} is out of range: use 1 to {most}{why}")),
    };
    Ok(AuthFailures {
        max: from_one(
            raw.max,
            d.max,
            "[auth_failures] max",
            u32::MAX,
            " (e.g. 10)",
        )?,
        // The window is also the first back-off, and a block doubles from there: a typo of a
        // few digits too many would lock an address out for years after one bad token.
        window_seconds: from_one(
            raw.window_seconds,
            d.window_seconds,
            "[auth_failures] window_seconds",
            MAX_AUTH_FAILURE_WINDOW_SECS,
            " (a day; it is also the first back-off)",
        )?,
        keep_in_audit: match raw.keep_in_audit {
            None => d.keep_in_audit,
            Some(n) => fitting(
                n,
                "[auth_failures] keep_in_audit",
                "use 0 (keep them all) or more",
            )?,
        },
        exempt: crate::network::parse_new_list(&raw.exempt.unwrap_or_default())
            .map_err(|m| format!("[auth_failures] exempt: {m}"))?,
    })
}

/// The keys of `raw` that only an HTTP upstream uses, comma-joined; `None` if there are none.
fn http_only_keys(raw: &RawUpstream) -> Option<String> {
    let keys: Vec<&str> = [
        ("socket", raw.socket.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("system_roots", raw.system_roots.is_some()),
        ("identity_header", raw.identity_header.is_some()),
        (
            "connect_timeout_seconds",
            raw.connect_timeout_seconds.is_some(),
        ),
        ("idle_timeout_seconds", raw.idle_timeout_seconds.is_some()),
        (
            "pool_idle_timeout_seconds",
            raw.pool_idle_timeout_seconds.is_some(),
        ),
        ("credentials", raw.credentials.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| k)
    .collect();
    (!keys.is_empty()).then(|| keys.join(", "))
}

/// Validate `[upstream] url = ...` and the keys that go with it.
fn http_upstream(
    url: &str,
    raw: RawUpstream,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<HttpUpstream, String> {
    // What messages show of the URL: a secret pasted into it (`https://user:token@...`,
    // `?access_token=...`) must not reach the journal with the refusal.
    let shown = crate::log_value::redacted_url(url);
    if raw.project_root.is_some() {
        return Err(
            "[upstream] project_root applies to `cgi` only: the server at `url` knows its own repositories"
                .into(),
        );
    }
    if raw.max_processes.is_some() {
        return Err(
            "[upstream] max_processes applies to `cgi` only: the server at `url` runs its own \
             processes (cap them there, e.g. fcgiwrap's -c)"
                .into(),
        );
    }
    if raw.max_request_buffer_mib.is_some() {
        return Err(
            "[upstream] max_request_buffer_mib applies to `cgi` only: the server at `url` runs \
             git http-backend itself (set GIT_HTTP_MAX_REQUEST_BUFFER in its environment, e.g. \
             nginx's fastcgi_param)"
                .into(),
        );
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("[upstream] url = \"{shown}\" is not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "[upstream] url = \"{shown}\": use http:// or https://, e.g. \"http://127.0.0.1:3000/git\""
        ));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("[upstream] url = \"{shown}\" has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "[upstream] url = \"{shown}\" carries credentials: put them in [upstream.credentials] instead"
        ));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!(
            "[upstream] url = \"{shown}\" must not have a query or fragment"
        ));
    }
    // `http::Uri` keeps a port it cannot read as a number (`:99999`), or an empty one, and the
    // connector then quietly uses the scheme's default port instead.
    let text = authority.as_str();
    let after_host = match text.rfind(']') {
        Some(end) => &text[end..], // [IPv6]:port
        None => text,
    };
    // `[fe80::1%25eth0]`: `http::Uri` takes the zone, and the connector then looks the whole
    // up as a host name, which never resolves.
    // `[fe80::1]` without a zone cannot be connected to either ("Invalid argument").
    let link_local = text
        .strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|ip| ip.parse::<std::net::Ipv6Addr>().ok())
        .is_some_and(|ip| is_link_local(&ip));
    if text.starts_with('[') && (text.contains('%') || link_local) {
        return Err(format!(
            "[upstream] url = \"{shown}\" has a link-local IPv6 address (fe80::/10), which \
             gitgate cannot connect to without its interface, and cannot be given one: give \
             the upstream a global or unique-local address, a host name, or a Unix socket \
             (`socket`)"
        ));
    }
    let port_given = after_host.contains(':');
    if port_given && authority.port_u16().is_none_or(|p| p == 0) {
        return Err(format!(
            "[upstream] url = \"{shown}\" has an invalid port: use 1-65535, or leave the port \
             out for the scheme's default"
        ));
    }
    let base_path =
        normalise_prefix(uri.path()).map_err(|m| format!("[upstream] url path: {m}"))?;
    let origin = Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| format!("[upstream] url = \"{shown}\": {e}"))?;

    let socket = match raw.socket.as_deref() {
        None => None,
        Some("") => {
            return Err(
                "[upstream] socket is empty: name the upstream's Unix socket, e.g. \"/run/gitea/gitea.sock\", or remove the key"
                    .into(),
            )
        }
        Some(path) => {
            let path = resolve(path);
            // The kernel's `sun_path` holds 108 bytes with the closing NUL: a longer path could
            // never be connected to, and every request would get its 502.
            let length = path.as_os_str().len();
            if length >= SOCKET_PATH_BYTES {
                return Err(format!(
                    "[upstream] socket = \"{}\" is {length} bytes long; a Unix socket's path \
                     must be under {SOCKET_PATH_BYTES} bytes: move the socket, or name it by a \
                     shorter path (a relative path is taken from the config's folder)",
                    path.display()
                ));
            }
            Some(path)
        }
    };
    if raw.ca_file.as_deref() == Some("") {
        return Err(
            "[upstream] ca_file is empty: name the PEM file of the CA, or remove the key".into(),
        );
    }
    if let Some(ca) = &raw.ca_file {
        pem_text_refused("[upstream] ca_file", ca)?;
    }
    let ca_file = raw.ca_file.as_deref().map(resolve);
    if scheme == "http" && (ca_file.is_some() || raw.system_roots.is_some()) {
        // Named as set, with both ways out: the key may be a leftover, or the URL mistyped.
        let (keys, them, apply) = match (ca_file.is_some(), raw.system_roots.is_some()) {
            (true, true) => ("ca_file and system_roots", "them", "apply"),
            (true, false) => ("ca_file", "it", "applies"),
            _ => ("system_roots", "it", "applies"),
        };
        return Err(format!(
            "[upstream] {keys} {apply} to https:// upstreams only, and url is http://: remove \
             {them}, or write https:// in url if the git server speaks TLS"
        ));
    }
    // With a private CA named, trust only it unless told otherwise: an internal git server's
    // certificate should not also be accepted from any public CA.
    let system_roots = raw.system_roots.unwrap_or(ca_file.is_none());
    if scheme == "https" && ca_file.is_none() && !system_roots {
        return Err(
            "[upstream] system_roots = false without ca_file leaves nothing to trust: set ca_file"
                .into(),
        );
    }
    let header = raw.identity_header.as_deref().unwrap_or("X-Forwarded-User");
    let identity_header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
        format!(
            "[upstream] identity_header = \"{header}\" is not a header name: use letters, \
                 digits and '-' (no space or ':'), e.g. \"X-Forwarded-User\""
        )
    })?;
    if crate::upstream::headers::is_reserved(&identity_header) {
        return Err(format!(
            "[upstream] identity_header = \"{header}\" is a header gitgate manages itself; choose another, e.g. \"X-Forwarded-User\""
        ));
    }
    let credentials = match raw.credentials {
        None => None,
        Some(c) => {
            let scheme = match c.scheme.to_ascii_lowercase().as_str() {
                "basic" => CredentialScheme::Basic,
                "bearer" => CredentialScheme::Bearer,
                // Not repeated: a whole header value (`Bearer ghp_...`) is a likely mistake.
                _ => {
                    return Err(
                        "[upstream.credentials] scheme must be \"basic\" or \"bearer\" (the \
                         value given is not shown: it may hold the secret)"
                            .into(),
                    )
                }
            };
            let source = match (c.file, c.env) {
                (Some(f), None) if f.is_empty() => {
                    return Err("[upstream.credentials] file is empty: name the file that holds \
                                the secret"
                        .into())
                }
                (Some(f), None) => {
                    pem_text_refused("[upstream.credentials] file", &f)?;
                    SecretSource::File(resolve(&f))
                }
                (None, Some(e)) if !e.is_empty() => {
                    if !is_variable_name(&e) {
                        return Err(
                            "[upstream.credentials] env must name an environment variable \
                             (letters, digits and _, not starting with a digit) that holds the \
                             secret, not hold the secret itself (the value is not shown)"
                                .into(),
                        );
                    }
                    SecretSource::Env(e)
                }
                _ => {
                    return Err(
                        "[upstream.credentials] set exactly one of `file` (a file holding the secret) or `env` (an environment variable holding it)"
                            .into(),
                    )
                }
            };
            Some(UpstreamCredentials { scheme, source })
        }
    };
    let secs = |v, d, k| seconds(v, Duration::from_secs(d), k);
    Ok(HttpUpstream {
        origin,
        base_path,
        socket,
        ca_file,
        system_roots,
        identity_header,
        credentials,
        connect_timeout: secs(
            raw.connect_timeout_seconds,
            10,
            "[upstream] connect_timeout_seconds",
        )?,
        idle_timeout: secs(
            raw.idle_timeout_seconds,
            300,
            "[upstream] idle_timeout_seconds",
        )?,
        // 0: no connection is reused, each request has its own (an upstream not trusted to
        // frame its answers, see docs/SECURITY.md).
        pool_idle_timeout: match raw.pool_idle_timeout_seconds {
            Some(0) => Duration::ZERO,
            Some(n) if n < 0 => {
                return Err(format!(
                    "[upstream] pool_idle_timeout_seconds = {n}: use 0 (no connection kept) to \
                     {MAX_SECONDS} seconds (a year)"
                ))
            }
            other => secs(other, 50, "[upstream] pool_idle_timeout_seconds")?,
        },
    })
}

/// The longest timeout or grace period accepted: a year. Longer ones mean "never" and would
/// overflow the clock arithmetic of every connection.
const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// The most connections `[server] max_connections` may allow: far above what one host's
/// descriptors and memory carry, and low enough for every count derived from it.
const MAX_CONNECTIONS: usize = 1_000_000;

/// `[upstream] max_processes` unset: as many clones and pushes at once as a host of a few cores
/// and gigabytes carries without swapping (each is a few git processes, `pack-objects` with a
/// thread per core); what waits past it is served as places come free.
pub const DEFAULT_MAX_PROCESSES: usize = 64;

/// `[rate_limit] max_concurrent` unset: enough for a CI job's parallel clones with one token,
/// and with the POSTs' twice it (see `inflight`) half of [`DEFAULT_MAX_PROCESSES`], so one
/// principal's slow uploads never hold every backend process.
pub const DEFAULT_MAX_CONCURRENT: u32 = 16;

/// The most `max_request_buffer_mib` may be: git http-backend holds a chunked request body in
/// memory up to it, one per process.
const MAX_REQUEST_BUFFER_MIB: u32 = 4096;

/// The most `max_processes` may be: far above what one host's process table carries.
const MAX_PROCESSES: usize = 100_000;

/// A positive number of seconds, or the default.
fn seconds(value: Option<i64>, default: Duration, key: &str) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(n) if n < 1 => Err(format!(
            "{key} = {n}: use a positive number of seconds, at most {MAX_SECONDS} (a year)"
        )),
        Some(n) if n > MAX_SECONDS as i64 => Err(format!(
            "{key} = {n}: at most {MAX_SECONDS} seconds (a year)"
        )),
        Some(n) => Ok(Duration::from_secs(n as u64)),
    }
}

/// The length of a Unix socket's path (`sun_path`), its closing NUL included.
const SOCKET_PATH_BYTES: usize = 108;

/// A `listen` key's value: one address, as a string. An array (several listeners) is refused
/// in words that say why, and how to take both address families.
fn one_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::String(text) => Ok(Some(text)),
        toml::Value::Array(_) => Err(D::Error::custom(
            "takes one address, not a list: gitgate listens on one (\"[::]:PORT\" takes IPv4 \
             and IPv6 both)",
        )),
        other => Err(D::Error::custom(format!(
            "invalid type: {}, expected an address as a string, e.g. \"127.0.0.1:8080\"",
            other.type_str()
        ))),
    }
}

/// `text`, the value of `key`, as the address a listener binds, or why it is not one — with
/// what to write instead for the usual slips: two addresses in one string, an interface's
/// name as an IPv6 zone, a link-local address without its zone (bind would say "Invalid
/// argument").
fn listen_address(key: &str, text: &str, port: u16) -> Result<SocketAddr, String> {
    if text.trim() != text {
        return Err(format!(
            "{key} = \"{text}\" has spaces at its ends: write the address alone, e.g. \
             \"127.0.0.1:{port}\""
        ));
    }
    match text.parse::<SocketAddr>() {
        Ok(SocketAddr::V6(a)) if is_link_local(a.ip()) && a.scope_id() == 0 => Err(format!(
            "{key} = \"{text}\" is a link-local address without its interface: add the \
             interface's number as its zone (e.g. \"[{}%2]:{}\"; `ip link` numbers them), or \
             listen on \"[::]:{}\"",
            a.ip(),
            a.port(),
            a.port()
        )),
        Ok(address) => Ok(address),
        Err(_) if text.contains([',', ' ']) => Err(format!(
            "{key} = \"{text}\" names more than one address: gitgate listens on one \
             (\"[::]:{port}\" takes IPv4 and IPv6 both)"
        )),
        // `[...]` without `:PORT` after it.
        Err(_) if text.starts_with('[') && text.ends_with(']') => Err(format!(
            "{key} = \"{text}\" has no port: write it after the brackets, e.g. \
             \"{text}:{port}\""
        )),
        Err(_) if text.starts_with('[') && text.contains('%') => Err(format!(
            "{key} = \"{text}\" has an IPv6 zone that is not a number: write the interface's \
             number, not its name (e.g. \"[fe80::1%2]:{port}\"; `ip link` numbers them)"
        )),
        Err(_) => Err(format!(
            "{key} = \"{text}\" is not an address: use IP:PORT, e.g. \"127.0.0.1:{port}\" or, \
             for IPv6, \"[::1]:{port}\""
        )),
    }
}

/// Whether `ip` is in `fe80::/10`, where an address means something only on one interface.
fn is_link_local(ip: &std::net::Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The addresses an HTTP upstream's URL may connect to, when its host is an IP address or
/// `localhost` (both loopbacks; a name is not looked up here) and no socket replaces it.
fn http_upstream_addresses(http: &HttpUpstream) -> Vec<SocketAddr> {
    let Some(host) = http.origin.host().filter(|_| http.socket.is_none()) else {
        return Vec::new();
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ips = if host.eq_ignore_ascii_case("localhost") {
        vec![
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]
    } else {
        // The resolver reads the short IPv4 forms too (`127.1`, `2130706433`, `0`), as
        // `inet_aton` does: the same address as far as a loop goes.
        host.parse()
            .ok()
            .or_else(|| crate::upstream::headers::ipv4_in_any_form(host).map(Into::into))
            .into_iter()
            .collect()
    };
    let port = http
        .origin
        .port_u16()
        .unwrap_or(if http.origin.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Whether connecting to `upstream` reaches gitgate's own listener at `listen`: the same port,
/// and the listen address itself, or — for a listener on every address (`0.0.0.0`, `::`) — a
/// loopback or unspecified one. Any other address may be another host (a wildcard listener on
/// 443 in front of a git server on another machine's 443 is the usual deployment); this
/// machine's own other addresses are not looked up.
fn is_own_listener(listen: SocketAddr, upstream: SocketAddr) -> bool {
    let (own, to) = (listen.ip().to_canonical(), upstream.ip().to_canonical());
    let local = to.is_loopback() || to.is_unspecified();
    let wildcard_takes = own.is_unspecified() && (own.is_ipv6() || to.is_ipv4());
    listen.port() != 0
        && listen.port() == upstream.port()
        && (own == to || (local && (wildcard_takes || to.is_unspecified())))
}

/// Whether two listening addresses would take the same port: the same port, and the same
/// address or a wildcard (`0.0.0.0`, `::`) on either side. Port 0 (any free port) never does.
fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    // `::` also takes IPv4 (Linux's default, dual-stack sockets); `0.0.0.0` only IPv4. An
    // IPv4-mapped address (`[::ffff:127.0.0.1]`) is the IPv4 one for the socket it binds.
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wild: std::net::IpAddr, other: std::net::IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    a.port() != 0 && a.port() == b.port() && (ia == ib || covers(ia, ib) || covers(ib, ia))
}

/// Refuses a section written as anything but a table. serde fills a struct from an array by
/// position, so `store = ["other.db"]` would be read as `[store] path = "other.db"` — no key
/// named, none checked against the known ones — and `[[auth_failures]]` (a list of tables) was
/// told as "invalid type: map, expected u32". Text that is no TOML at all is left to the typed
/// parse, which says where.
fn tables_where_tables_go(text: &str) -> Result<(), String> {
    // Every top-level key as whatever TOML value it is, with where it begins; a file with dotted
    // keys (`store.path = ...`) is read without the places, which are then looked for in its
    // text.
    let spanned =
        toml::from_str::<std::collections::HashMap<String, toml::Spanned<toml::Value>>>(text);
    let sections: Vec<(String, toml::Value, Option<usize>)> = match spanned {
        Ok(map) => map
            .into_iter()
            .map(|(k, v)| {
                let at = v.span().start;
                (k, v.into_inner(), Some(at))
            })
            .collect(),
        Err(_) => match toml::from_str::<toml::Table>(text) {
            Ok(table) => table.into_iter().map(|(k, v)| (k, v, None)).collect(),
            Err(_) => return Ok(()),
        },
    };
    let line_of = |at: usize| {
        text.as_bytes()[..at.min(text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    };
    // The first line from `from` (1-based) that begins with `key` and then `=`, `.` or `]`.
    let line_of_key = |key: &str, from: usize| {
        text.lines()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| {
                let l = l.trim_start().trim_start_matches('[');
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(['=', '.', ']']))
            })
            .map(|(i, _)| i + 1)
    };
    let at_line = |line: Option<usize>| line.map_or(String::new(), |n| format!("line {n}, "));
    let what = |v: &toml::Value| match v {
        toml::Value::Array(items)
            if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
        {
            "a list of tables (a [[...]] header makes one: write the header with single brackets)"
                .to_string()
        }
        other => format!("{} {}", article(other.type_str()), other.type_str()),
    };
    let nested: [(&str, &[&str]); 7] = [
        ("server", &["tls"]),
        ("store", &[]),
        ("upstream", &["credentials"]),
        ("auth", &[]),
        ("rate_limit", &[]),
        ("auth_failures", &[]),
        ("metrics", &[]),
    ];
    for (name, inner) in nested {
        let Some((_, section, at)) = sections.iter().find(|(k, _, _)| k == name) else {
            continue;
        };
        let line = at.map(line_of).or_else(|| line_of_key(name, 1));
        let Some(table) = section.as_table() else {
            return Err(format!(
                "{}{name}: [{name}] must be a table (a [{name}] header followed by key = value \
                 lines), not {}",
                at_line(line),
                what(section)
            ));
        };
        for key in inner {
            if let Some(v) = table.get(*key).filter(|v| !v.is_table()) {
                let dotted = format!("{name}.{key}");
                // Else written inline (`server = { tls = [..] }`): on the section's own line.
                let line = line
                    .and_then(|from| line_of_key(key, from))
                    .or_else(|| line_of_key(&dotted, 1))
                    .or(line);
                return Err(format!(
                    "{}{name}: [{name}] {key} must be a table (a [{dotted}] header followed by \
                     key = value lines), not {}",
                    at_line(line),
                    what(v)
                ));
            }
        }
    }
    Ok(())
}

/// "a" or "an", for a TOML type's name.
fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// serde's names for what it expected, which are Rust's (`struct RawServer`, `u64`), in the
/// words of the config file.
fn in_the_configs_words(msg: &str) -> String {
    let mut out = msg.to_string();
    // `expected struct RawTls` and the like: the raw structs are the config's tables.
    while let Some(at) = out.find("struct Raw") {
        let end = out[at + "struct Raw".len()..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |i| at + "struct Raw".len() + i);
        out.replace_range(at..end, "a table");
    }
    for (rust, said) in [
        // Every whole-number key is read as an i64 and its own range checked after: the
        // type's range would not be the key's.
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        (
            "number too large to fit in target type",
            "number too large for this key",
        ),
        // serde's word for a list (`trusted_proxies = "10.0.0.0/8"`), which TOML calls an array.
        (
            "expected a sequence",
            "expected a list in brackets, e.g. [\"...\"]",
        ),
    ] {
        out = out.replace(rust, said);
    }
    out
}

/// Turn toml's multi-line error into one line that names the place: the line number and its
/// key (`line 3, workers: invalid type: ...`).
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    // One line, as every other refusal: the parser's messages can span several.
    let msg = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // serde repeats a string of the wrong type (`invalid type: string "bearer ...", expected
    // struct ...`): a secret where a table goes would reach the journal.
    let msg = in_the_configs_words(&without_quoted_strings(&msg));
    // A file the TOML parser cannot read at all (YAML, JSON, a value without its quotes) is
    // told so: the parser's own words (`expected newline, `#``) do not say what is wrong.
    let syntax = text.parse::<toml::Table>().is_err();
    let msg = if syntax {
        format!("not valid TOML: {msg}")
    } else {
        msg
    };
    let Some(span) = e.span() else {
        return msg;
    };
    let start = span.start.min(text.len());
    if !text.is_char_boundary(start) {
        return msg;
    }
    let line_no = text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    // The key only, never the value: a misplaced secret (`password = "..."` where only `file`
    // or `env` may go) must not end up in the journal.
    // A line without `=` is shown only as a table header, and the text before a `=` only when
    // it is shaped like a key: anything else may be a secret pasted on a line of its own, and
    // base64 ends in `=` (`dXNlcjpwYXNz==`, a Basic secret).
    let key = match line.split_once('=') {
        Some((key, _)) if shaped_like_a_key(key.trim()) => key.trim(),
        Some(_) => "",
        None if line.starts_with('[') => line,
        None => "",
    };
    if key.is_empty() {
        return format!("line {line_no}: {msg}");
    }
    // `listen = 127.0.0.1:8080`: the most common slip, said without repeating the value. Not
    // for a value TOML reads as one (`max_processes = 8` written twice: a duplicate key), which
    // quotes would not mend.
    let unquoted = line
        .split_once('=')
        .map(|(_, value)| value.trim_start())
        .is_some_and(|v| !v.starts_with(['"', '\'', '[', '{']) && !is_a_toml_value(v));
    let hint = if syntax && unquoted && !line.starts_with('[') {
        " (a text value, such as an address, a path or a name, goes in quotes: key = \"...\")"
    } else {
        ""
    };
    let shown: String = key.chars().take(80).collect();
    let more = if shown.len() < key.len() { "..." } else { "" };
    format!("line {line_no}, {shown}{more}: {msg}{hint}")
}

/// Pure: whether `key`, the text before a line's first `=`, has the shape of this file's keys
/// — words of lower-case letters, digits, `_` and `-`, dotted (`server.tls`) — and so may be
/// repeated in a refusal. A secret's text before its base64 padding (`Z2l0Z2F0ZTpz...==`) has
/// capitals, and an `Authorization: Basic ...` line spaces and a `:`.
fn shaped_like_a_key(key: &str) -> bool {
    key.split('.').all(|word| {
        let word = word.trim();
        !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    })
}

/// Pure: whether `value`, the text after a key's `=`, is a TOML value on its own (a number, a
/// boolean, a date; a comment after it allowed).
fn is_a_toml_value(value: &str) -> bool {
    format!("value = {value}").parse::<toml::Table>().is_ok()
}

/// `msg` with the text of every `string "..."` serde quotes left out.
fn without_quoted_strings(msg: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        out.push_str("a string (not shown)");
        let after = &rest[at + MARK.len()..];
        // The closing quote: the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        match end {
            Some(i) => rest = &after[i + 1..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// `message` on one line, as every refusal is: a control character in it — from a value the
/// refusal repeats, written with TOML's escapes (`listen = "a\nb"`) — is written as its escape,
/// as the file has it. A line break let the rest read as a line of its own in the journal.
/// (Also the start's own last line, in `main`.)
pub fn on_one_line(message: String) -> String {
    if !message.chars().any(char::is_control) {
        return message;
    }
    message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Refuses the value of `key`, a setting that takes a file's path, when it is the text of a
/// PEM file (or any text of several lines) pasted where the path goes: taken for a path, it was
/// repeated — a private key's lines and all — in the refusal of a file not found. Not shown.
fn pem_text_refused(key: &str, value: &str) -> Result<(), String> {
    if value.contains("-----BEGIN") || value.contains(['\n', '\r']) {
        return Err(format!(
            "{key} holds the text of a PEM file, or several lines, not the path of a file (the \
             value is not shown): put that text in a file (a private key or a secret in one only \
             gitgate's user may read) and name the file"
        ));
    }
    Ok(())
}

/// Whether `name` can be an environment variable's name (as shells take them).
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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

/// Pure: whether a file or folder of `mode` may be changed by every user: written to by
/// others, for a folder without the sticky bit (`/tmp`'s `1777` lets nobody rename another's
/// files).
fn anyone_may_change(mode: u32, folder: bool) -> bool {
    mode & 0o002 != 0 && !(folder && mode & 0o1000 != 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_what_every_user_may_change_is_said() {
        assert!(anyone_may_change(0o100666, false));
        assert!(anyone_may_change(0o40777, true));
        assert!(!anyone_may_change(0o41777, true), "sticky: /tmp");
        assert!(!anyone_may_change(0o100664, false), "a group is a choice");
        assert!(!anyone_may_change(0o40775, true));
        assert!(!anyone_may_change(0o100644, false));
    }

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

    /// A value written with TOML's escapes (`"a\nb"`) and repeated in a refusal is repeated as
    /// written, on the refusal's one line: a line break in it made the refusal two lines in
    /// the journal, the second looking like one of its own (found by `tests/randomised.rs`).
    #[test]
    fn a_value_repeated_in_a_refusal_keeps_it_on_one_line() {
        for (key, value) in [
            ("listen", r#""a\nb""#),
            ("git_prefix", r#""/scm\r\nx""#),
            ("listen", r#""127.0.0.1:80\u0000""#),
        ] {
            let text = GOOD.replacen(&format!("{key} = "), &format!("{key} = {value} #"), 1);
            let e = parse(&text).unwrap_err();
            assert!(!e.chars().any(char::is_control), "{e:?}");
            assert!(e.contains(&format!("[server] {key}")), "{e}");
        }
        let e = parse(&GOOD.replacen("listen = ", r#"listen = "a\tb\nc" #"#, 1)).unwrap_err();
        assert!(e.contains(r#""a\tb\nc""#), "{e}");
    }

    #[test]
    fn a_listen_slip_is_told_what_to_write() {
        let server = |value: &str| {
            parse(&GOOD.replace("listen = \"127.0.0.1:8080\"", &format!("listen = {value}")))
        };
        let e = server(r#"["127.0.0.1:8080", "[::1]:8080"]"#).unwrap_err();
        assert!(
            e.contains("line 3")
                && e.contains("takes one address, not a list")
                && e.contains("[::]:PORT"),
            "{e}"
        );
        let e = server("8080").unwrap_err();
        assert!(
            e.contains("invalid type: integer, expected an address as a string"),
            "{e}"
        );
        let e = server(r#""127.0.0.1:8080,[::1]:8080""#).unwrap_err();
        assert!(
            e.contains("names more than one address") && e.contains("\"[::]:8080\""),
            "{e}"
        );
        let e = server(r#""[fe80::1%eth0]:8080""#).unwrap_err();
        assert!(
            e.contains("IPv6 zone that is not a number") && e.contains("[fe80::1%2]:8080"),
            "{e}"
        );
        let e = server(r#""[fe80::1]:8080""#).unwrap_err();
        assert!(
            e.contains("link-local address without its interface")
                && e.contains("\"[fe80::1%2]:8080\""),
            "{e}"
        );
        assert_eq!(
            server(r#""[fe80::1%2]:8080""#)
                .unwrap()
                .server
                .listen
                .to_string(),
            "[fe80::1%2]:8080"
        );
        let e = server(r#""::1:8080""#).unwrap_err();
        assert!(e.contains("is not an address: use IP:PORT"), "{e}");
        for spaced in [r#"" 127.0.0.1:8080""#, r#""127.0.0.1:8080 ""#] {
            let e = server(spaced).unwrap_err();
            assert!(e.contains("has spaces at its ends"), "{e}");
        }
        let e = server(r#""[fe80::fc:ff:fe00:1%4]""#).unwrap_err();
        assert!(
            e.contains("has no port") && e.contains("\"[fe80::fc:ff:fe00:1%4]:8080\""),
            "{e}"
        );
        // [metrics] listen is read the same way.
        let e = parse(&format!("{GOOD}[metrics]\nlisten = [\"127.0.0.1:9100\"]\n")).unwrap_err();
        assert!(e.contains("takes one address, not a list"), "{e}");
        let e = parse(&format!("{GOOD}[metrics]\nlisten = \"[fe80::9]:9100\"\n")).unwrap_err();
        assert!(
            e.contains("[metrics] listen") && e.contains("[fe80::9%2]:9100"),
            "{e}"
        );
    }

    #[test]
    fn an_upstream_no_connection_could_reach_is_refused_at_load() {
        let http = |upstream: &str| {
            parse(&GOOD.replace(
                "cgi = \"/usr/lib/git-core/git-http-backend\"\nproject_root = \"repos\"",
                upstream,
            ))
        };
        for url in [
            "http://[fe80::1%25lo]:3000/git",
            "http://[fe80::1]:3000/git",
        ] {
            let e = http(&format!("url = \"{url}\"")).unwrap_err();
            assert!(e.contains("has a link-local IPv6 address"), "{e}");
        }
        let long = format!(
            "socket = \"/run/{}.sock\"\nurl = \"http://git.internal/\"",
            "s".repeat(98)
        );
        let e = http(&long).unwrap_err();
        assert!(
            e.contains("is 108 bytes long") && e.contains("under 108 bytes"),
            "{e}"
        );
        let fits = format!(
            "socket = \"/run/{}.sock\"\nurl = \"http://git.internal/\"",
            "s".repeat(97)
        );
        assert!(http(&fits).is_ok());
        // A relative path counts as the absolute one it is taken for.
        let relative = format!(
            "socket = \"{}.sock\"\nurl = \"http://git.internal/\"",
            "s".repeat(90)
        );
        let e = http(&relative).unwrap_err();
        assert!(
            e.contains("/etc/gitgate/sss") && e.contains("is 108 bytes long"),
            "{e}"
        );
    }

    #[test]
    fn parses_and_resolves_relative_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.git_prefix, "/scm");
        assert_eq!(c.store.path, Path::new("/etc/gitgate/gitgate.db"));
        let Upstream::Cgi { project_root, .. } = &c.upstream else {
            panic!("cgi expected")
        };
        assert_eq!(project_root, Path::new("/etc/gitgate/repos"));
        assert!(c.server.tls.is_none());
        assert_eq!(c.server.limits.max_connections, 1024);
        assert!(c.server.workers >= 1, "one worker per core by default");
    }

    #[test]
    fn an_upstream_url_that_is_gitgates_own_listener_is_refused() {
        let with = |listen: &str, url: &str, extra: &str| {
            parse(
                &HTTP
                    .replace("[server]\n", &format!("[server]\nlisten = \"{listen}\"\n"))
                    .replace(
                        "url = \"https://git.internal:8443/git/\"",
                        &format!("url = \"{url}\"\n{extra}"),
                    )
                    .replace("ca_file = \"ca.pem\"\n", ""),
            )
        };
        for (listen, url) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8080/git"),
            ("0.0.0.0:8080", "http://localhost:8080/"),
            ("[::]:8080", "http://127.0.0.1:8080/"),
            ("[::1]:443", "https://[::1]/git"),
            ("[::1]:8080", "http://localhost:8080/"),
            ("10.0.0.5:8080", "http://10.0.0.5:8080/"),
            ("0.0.0.0:8080", "http://0.0.0.0:8080/"),
            // The short forms the resolver reads as the same addresses.
            ("127.0.0.1:8080", "http://127.1:8080/git"),
            ("127.0.0.1:8080", "http://2130706433:8080/git"),
            ("127.0.0.1:8080", "http://0x7f.0.0.1:8080/git"),
            ("127.0.0.1:8080", "http://0X7f.1:8080/git"),
            ("0.0.0.0:8080", "http://0:8080/git"),
        ] {
            let e = with(listen, url, "").unwrap_err();
            assert!(
                e.contains("[upstream] url names gitgate's own listener")
                    && e.contains("every request would come back to gitgate"),
                "{listen} {url}: {e}"
            );
        }
        for (listen, url, extra) in [
            // A listener on every address, in front of a git server on another host's same
            // port: the README's deployment.
            ("0.0.0.0:443", "https://10.0.0.5/git", ""),
            ("[::]:8080", "http://10.0.0.5:8080/git", ""),
            ("[::]:8080", "http://[fd00::5]:8080/git", ""),
            // Another loopback address than the one listened on: another listener.
            ("127.0.0.1:8080", "http://127.0.0.2:8080/git", ""),
            ("127.0.0.1:8080", "http://127.0.0.1:8081/git", ""),
            ("127.0.0.1:8080", "http://10.0.0.5:8080/git", ""),
            ("127.0.0.1:8080", "http://git.internal:8080/git", ""),
            // The socket is where it connects: the URL only names host and path.
            (
                "127.0.0.1:8080",
                "http://127.0.0.1:8080/git",
                "socket = \"/run/git.sock\"",
            ),
        ] {
            assert!(with(listen, url, extra).is_ok(), "{listen} {url} {extra}");
        }
    }

    #[test]
    fn the_request_buffer_is_the_cgi_backends_within_its_range() {
        let buffer = |text: &str| match parse(text).map(|c| c.upstream) {
            Ok(Upstream::Cgi {
                max_request_buffer_mib,
                ..
            }) => Ok(max_request_buffer_mib),
            Ok(Upstream::Http(_)) => panic!("cgi expected"),
            Err(e) => Err(e),
        };
        assert_eq!(buffer(GOOD), Ok(None), "unset: git's own");
        let with = |line: &str| {
            GOOD.replace(
                "project_root = \"repos\"",
                &format!("project_root = \"repos\"\n{line}"),
            )
        };
        assert_eq!(buffer(&with("max_request_buffer_mib = 64")), Ok(Some(64)));
        for bad in ["0", "4097"] {
            let e = buffer(&with(&format!("max_request_buffer_mib = {bad}"))).unwrap_err();
            assert!(
                e.contains(&format!(
                    "[upstream] max_request_buffer_mib = {bad} is out of range: use 1 to 4096"
                )),
                "{e}"
            );
        }
        assert!(buffer(&with("max_request_buffer_mib = -1")).is_err());
        let http = HTTP.replace("[upstream]\n", "[upstream]\nmax_request_buffer_mib = 64\n");
        let e = parse(&http).unwrap_err();
        assert!(
            e.contains("[upstream] max_request_buffer_mib applies to `cgi` only"),
            "{e}"
        );
    }

    #[test]
    fn max_processes_caps_the_cgi_backend_only() {
        let cap = |text: &str| match parse(text).map(|c| c.upstream) {
            Ok(Upstream::Cgi { max_processes, .. }) => Ok(max_processes),
            Ok(Upstream::Http(_)) => panic!("cgi expected"),
            Err(e) => Err(e),
        };
        assert_eq!(cap(GOOD), Ok(DEFAULT_MAX_PROCESSES));
        let with = |line: &str| {
            GOOD.replace(
                "project_root = \"repos\"",
                &format!("project_root = \"repos\"\n{line}"),
            )
        };
        assert_eq!(cap(&with("max_processes = 8")), Ok(8));
        assert_eq!(cap(&with("max_processes = 0")), Ok(0), "0: no cap");
        let e = cap(&with("max_processes = 100001")).unwrap_err();
        assert!(e.contains("[upstream] max_processes = 100001 is out of range: use 1 to 100000, or 0 for no cap"), "{e}");
        let e = cap(&with("max_processes = -1")).unwrap_err();
        assert!(e.contains("max_processes"), "{e}");
        let http = HTTP.replace("[upstream]\n", "[upstream]\nmax_processes = 8\n");
        let e = parse(&http).unwrap_err();
        assert!(
            e.contains("[upstream] max_processes applies to `cgi` only"),
            "{e}"
        );
    }

    /// A missing project root (a `proxy.toml` copied to a new folder without its `repos/`)
    /// is named at start with what to do; one that exists passes.
    #[test]
    fn a_missing_project_root_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proxy.toml");
        let text = "[upstream]\ncgi = \"/bin/sh\"\nproject_root = \"repos\"\n";
        let err = Config::parse(&config, text)
            .unwrap()
            .check_paths()
            .unwrap_err()
            .to_string();
        assert!(err.contains("project_root"), "{err}");
        assert!(
            err.contains(&dir.path().join("repos").display().to_string()),
            "{err}"
        );
        assert!(err.contains("create it"), "{err}");
        std::fs::create_dir(dir.path().join("repos")).unwrap();
        Config::parse(&config, text).unwrap().check_paths().unwrap();
    }

    #[test]
    fn a_principal_that_could_hold_every_backend_process_is_warned_of() {
        let held = |c: &Config| c.warnings().into_iter().find(|w| w.contains("hold all"));
        // The defaults: a POST of an exchange may take twice max_concurrent, half the processes.
        let defaults = parse(GOOD).unwrap();
        assert_eq!(defaults.rate_limit.max_concurrent, DEFAULT_MAX_CONCURRENT);
        assert!(DEFAULT_MAX_CONCURRENT as usize * 2 < DEFAULT_MAX_PROCESSES);
        assert_eq!(held(&defaults), None);
        let with = |rate: &str, upstream: &str| {
            let root = "project_root = \"repos\"\n";
            let good = GOOD.replace(root, &format!("{root}{upstream}\n"));
            parse(&format!("{good}[rate_limit]\n{rate}\n")).unwrap()
        };
        let said = held(&with("max_concurrent = 32", "")).unwrap();
        assert!(
            said.contains("max_concurrent = 32 (POSTs of an exchange up to 64)")
                && said.contains("all 64 backend processes")
                && said.contains("(e.g. 16)"),
            "{said}"
        );
        let uncapped = held(&with("max_concurrent = 0", "")).unwrap();
        assert!(
            uncapped.contains("max_concurrent = 0 (no cap)"),
            "{uncapped}"
        );
        assert!(held(&with("max_concurrent = 5", "max_processes = 10")).is_some());
        // Where no cap would do, the advice is more processes, not the cap it has already.
        let few = held(&with("max_concurrent = 1", "max_processes = 2")).unwrap();
        assert!(
            few.contains("raise max_processes to 3 or more") && !few.contains("e.g. 1"),
            "{few}"
        );
        assert_eq!(held(&with("max_concurrent = 1", "max_processes = 3")), None);
        // The default cap with two processes: both keys, so that following the advice ends
        // the warning.
        let both = held(&with("", "max_processes = 2")).unwrap();
        assert!(
            both.contains("raise max_processes to 4 or more and set max_concurrent"),
            "{both}"
        );
        assert_eq!(held(&with("max_concurrent = 1", "max_processes = 4")), None);
        assert_eq!(
            held(&with("max_concurrent = 4", "max_processes = 10")),
            None
        );
        // No cap on processes, or a server of its own behind `url`: nothing to fill.
        assert_eq!(held(&with("max_concurrent = 0", "max_processes = 0")), None);
        assert_eq!(
            held(&parse(&format!("{HTTP}[rate_limit]\nmax_concurrent = 0\n")).unwrap()),
            None
        );
    }

    const HTTP: &str = r#"
[server]
trusted_proxies = ["10.0.0.0/8", "::1"]
shutdown_grace_seconds = 5
[server.tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
[upstream]
url = "https://git.internal:8443/git/"
ca_file = "ca.pem"
[upstream.credentials]
scheme = "bearer"
env = "UPSTREAM_TOKEN"
"#;

    /// `pool_idle_timeout_seconds = 0` keeps no connection for reuse (an upstream not trusted
    /// to frame its answers); the other timeouts still take only positive numbers.
    #[test]
    fn a_pool_idle_timeout_of_zero_is_no_reuse() {
        let pool = |v: &str| {
            let c = parse(&HTTP.replace(
                "ca_file = \"ca.pem\"",
                &format!("ca_file = \"ca.pem\"\npool_idle_timeout_seconds = {v}"),
            ))?;
            let Upstream::Http(h) = &c.upstream else {
                panic!("http expected")
            };
            Ok::<_, String>(h.pool_idle_timeout)
        };
        assert_eq!(pool("0").unwrap(), Duration::ZERO);
        assert_eq!(pool("7").unwrap(), Duration::from_secs(7));
        let e = parse(&HTTP.replace(
            "ca_file = \"ca.pem\"",
            "ca_file = \"ca.pem\"\nidle_timeout_seconds = 0",
        ))
        .unwrap_err();
        assert!(e.contains("use a positive number of seconds"), "{e}");
    }

    #[test]
    fn http_upstream_parses() {
        let c = parse(HTTP).unwrap();
        let Upstream::Http(h) = &c.upstream else {
            panic!("http expected")
        };
        assert_eq!(h.origin.to_string(), "https://git.internal:8443/");
        assert_eq!(h.base_path, "/git");
        assert_eq!(h.socket, None);
        assert_eq!(h.ca_file.as_deref(), Some(Path::new("/etc/gitgate/ca.pem")));
        assert!(
            !h.system_roots,
            "a named CA replaces the system roots by default"
        );
        assert_eq!(h.identity_header.as_str(), "x-forwarded-user");
        let creds = h.credentials.as_ref().unwrap();
        assert_eq!(creds.scheme, CredentialScheme::Bearer);
        assert!(matches!(&creds.source, SecretSource::Env(e) if e == "UPSTREAM_TOKEN"));
        let tls = c.server.tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/gitgate/tls/cert.pem"));
        assert_eq!(c.server.trusted_proxies.len(), 2);
        assert_eq!(c.server.limits.shutdown_grace, Duration::from_secs(5));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_shown_with_its_line_and_key() {
        let e = parse(&GOOD.replace("git_prefix = \"/scm/\"", "workers = \"2\"")).unwrap_err();
        assert!(e.contains("line 4, workers: invalid type"), "{e}");
        let e = parse(&GOOD.replace("git_prefix = \"/scm/\"", "max_connections = -1")).unwrap_err();
        // Out of range rather than of the wrong type: named by its table and key, with the range.
        assert!(
            e.contains("[server] max_connections = -1 is out of range: use 1 to"),
            "{e}"
        );
        assert!(!e.contains("byte"), "{e}");
        // A secret put where it does not belong is named by its key, never shown.
        let e = parse(&GOOD.replace("realm = \"gitgate\"", "password = \"hunter2-secret\""))
            .unwrap_err();
        assert!(e.contains("password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // ... nor one pasted on a line of its own, nor a bare value after its key.
        // A Basic secret's base64 (`gitgate:Hunter2Secret`) ends in `=`, which made the text
        // before it read as a key; so does an `Authorization` line with such a secret.
        for pasted in [
            "Z2l0Z2F0ZTpIdW50ZXIyU2VjcmV0",
            "Authorization: Basic Z2l0Z2F0ZTpIdW50ZXIyU2VjcmV0",
        ] {
            let e =
                parse(&GOOD.replace("realm = \"gitgate\"", &format!("{pasted}=="))).unwrap_err();
            assert!(!e.contains("Z2l0"), "{e}");
            assert!(e.contains("line 11: "), "{e}");
        }
        for pasted in ["ggt_hunter2-secret", "file = hunter2-secret"] {
            let e = parse(&GOOD.replace("realm = \"gitgate\"", pasted)).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("line "), "{e}");
        }
        // Every refusal is one line, a duplicate table's included, and names the table.
        let e = parse(&format!("{GOOD}\n[server]\nworkers = 1\n")).unwrap_err();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains("[server]"), "{e}");
    }

    /// A PEM file's text pasted where its path goes — a private key's most of all — is refused
    /// as that, and not repeated: taken for a path, it was shown whole in the refusal of a file
    /// not found.
    #[test]
    fn pem_text_where_a_path_goes_is_refused_unrepeated() {
        let key =
            "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG/Hunter2+k\n-----END PRIVATE KEY-----\n";
        let tls = |cert: &str, key: &str| {
            format!("{GOOD}[server.tls]\ncert = \"\"\"{cert}\"\"\"\nkey = \"\"\"{key}\"\"\"\n")
        };
        let http = |more: &str| {
            GOOD.replace(
                "cgi = \"/usr/lib/git-core/git-http-backend\"\nproject_root = \"repos\"",
                &format!("url = \"https://git.internal/git\"\n{more}"),
            )
        };
        for (text, named) in [
            (
                tls("c.pem", key),
                "[server.tls] key holds the text of a PEM file",
            ),
            (
                tls(key, "k.pem"),
                "[server.tls] cert holds the text of a PEM file",
            ),
            (
                http(&format!("ca_file = \"\"\"{key}\"\"\"")),
                "[upstream] ca_file holds the text of a PEM file",
            ),
            (
                http(&format!(
                    "[upstream.credentials]\nscheme = \"bearer\"\nfile = \"\"\"{key}\"\"\""
                )),
                "[upstream.credentials] file holds the text of a PEM file",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(named) && !e.contains("Hunter2"), "{e}");
        }
    }

    #[test]
    fn a_secret_pasted_into_the_upstream_settings_is_never_repeated() {
        let http = |upstream: &str| {
            GOOD.replace(
                "cgi = \"/usr/lib/git-core/git-http-backend\"\nproject_root = \"repos\"",
                upstream,
            )
        };
        for (upstream, key) in [
            ("url = \"https://deploy:hunter2@git.internal/git\"", "carries credentials"),
            ("url = \"https://hunter2@git.internal/git\"", "carries credentials"),
            ("url = \"https://git.internal/git?access_token=hunter2\"", "query"),
            ("url = \"https://git.internal/git#hunter2\"", "fragment"),
            ("url = \"ftp://hunter2@git.internal/git\"", "use http:// or https://"),
            (
                "url = \"https://git.internal/git\"\n[upstream.credentials]\nscheme = \"Bearer hunter2\"\nenv = \"T\"",
                "scheme must be",
            ),
            (
                "url = \"https://git.internal/git\"\n[upstream.credentials]\nscheme = \"bearer\"\nenv = \"hunter2 secret\"",
                "env must name an environment variable",
            ),
            (
                "url = \"https://git.internal/git\"\ncredentials = \"bearer hunter2\"",
                "credentials",
            ),
        ] {
            let e = parse(&http(upstream)).unwrap_err();
            assert!(e.contains(key), "{upstream}: {e}");
            assert!(!e.contains("hunter2"), "{upstream}: {e}");
        }
        // What is shown of a URL: where it goes, not who it says it is.
        assert_eq!(
            crate::log_value::redacted_url("https://u:p@git.internal:8443/git?t=x"),
            "https://***@git.internal:8443/git?***"
        );
        assert_eq!(
            crate::log_value::redacted_url("http://a/b/c"),
            "http://a/b/c"
        );
    }

    #[test]
    fn an_empty_path_is_refused_by_its_key() {
        for (from, to, key) in [
            (
                "project_root = \"repos\"",
                "project_root = \"\"",
                "project_root is empty",
            ),
            (
                "[auth]",
                "[server.tls]\ncert = \"\"\nkey = \"k.pem\"\n[auth]",
                "[server.tls] cert is empty",
            ),
            (
                "[auth]",
                "[server.tls]\ncert = \"c.pem\"\nkey = \"\"\n[auth]",
                "[server.tls] key is empty",
            ),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.contains(key), "{to}: {e}");
        }
        let http = GOOD.replace(
            "cgi = \"/usr/lib/git-core/git-http-backend\"\nproject_root = \"repos\"",
            "url = \"https://git.internal/git\"\nca_file = \"\"",
        );
        assert!(parse(&http).unwrap_err().contains("ca_file is empty"));
        let http = GOOD.replace(
            "cgi = \"/usr/lib/git-core/git-http-backend\"\nproject_root = \"repos\"",
            "url = \"https://git.internal/git\"\n[upstream.credentials]\nscheme = \"bearer\"\nfile = \"\"",
        );
        assert!(parse(&http).unwrap_err().contains("file is empty"));
    }

    #[test]
    fn out_of_range_connections_and_a_shared_metrics_port_are_refused() {
        let with =
            |extra: &str| parse(&GOOD.replace("git_prefix", &format!("{extra}\ngit_prefix")));
        let e = with("max_connections = 4000000000000000000").unwrap_err();
        assert!(
            e.contains("max_connections") && e.contains("1 to 1000000"),
            "{e}"
        );
        for n in ["0", "1000001"] {
            let e = with(&format!("max_connections_per_address = {n}")).unwrap_err();
            assert!(
                e.contains("max_connections_per_address") && e.contains("leave it out"),
                "{e}"
            );
        }
        let limits = |extra: &str| with(extra).unwrap().server.limits;
        assert_eq!(
            limits("").max_connections_per_address,
            None,
            "off unless set"
        );
        assert_eq!(
            limits("max_connections_per_address = 16").max_connections_per_address,
            Some(16)
        );
        assert_eq!(
            with("max_connections = 1000000")
                .unwrap()
                .server
                .limits
                .max_connections,
            1_000_000
        );
        let metrics = |addr: &str| {
            parse(&format!("{GOOD}[metrics]\nlisten = \"{addr}\"\n")).map(|c| c.metrics_listen)
        };
        for clash in [
            "127.0.0.1:8080",
            "0.0.0.0:8080",
            "[::]:8080",
            "[::ffff:127.0.0.1]:8080",
            "[::ffff:0.0.0.0]:8080",
        ] {
            let e = metrics(clash).unwrap_err();
            assert!(
                e.contains("[metrics] listen") && e.contains("port of its own"),
                "{e}"
            );
        }
        // An IPv4 wildcard does not take an IPv6 address's port.
        assert!(listeners_overlap(
            "[::]:8080".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        ));
        assert!(!listeners_overlap(
            "0.0.0.0:8080".parse().unwrap(),
            "[::1]:8080".parse().unwrap()
        ));
        for fine in ["127.0.0.1:9100", "127.0.0.2:8080"] {
            assert!(metrics(fine).unwrap().is_some(), "{fine}");
        }
        // A section without its address serves nothing: allowed, with a warning.
        let bare = parse(&format!("{GOOD}[metrics]\n")).unwrap();
        assert!(bare.metrics_listen.is_none());
        assert!(
            bare.warnings()
                .iter()
                .any(|w| w.contains("[metrics] has no listen")),
            "{:?}",
            bare.warnings()
        );
        for (text, warned) in [
            (GOOD.to_string(), false),
            (
                format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9100\"\n"),
                false,
            ),
        ] {
            let c = parse(&text).unwrap();
            assert_eq!(c.warnings().iter().any(|w| w.contains("[metrics]")), warned);
        }
    }

    #[test]
    fn an_http_upstream_may_be_reached_over_a_unix_socket() {
        let with = |line: &str| {
            parse(&HTTP.replace(
                "ca_file = \"ca.pem\"",
                &format!("ca_file = \"ca.pem\"\n{line}"),
            ))
        };
        let c = with("socket = \"run/git.sock\"").unwrap();
        let Upstream::Http(h) = &c.upstream else {
            panic!("http expected")
        };
        // Relative to the config's folder, like every path; the URL still names the upstream.
        assert_eq!(
            h.socket.as_deref(),
            Some(Path::new("/etc/gitgate/run/git.sock"))
        );
        assert_eq!(h.origin.to_string(), "https://git.internal:8443/");
        assert!(with("socket = \"\"")
            .unwrap_err()
            .contains("socket is empty"));
        let e = parse(&GOOD.replace(
            "project_root = \"repos\"",
            "project_root = \"repos\"\nsocket = \"/run/git.sock\"",
        ))
        .unwrap_err();
        assert!(
            e.contains("[upstream] socket applies to `url` upstreams only; remove it"),
            "{e}"
        );
        // Every such key is named at once, not one per run of the check.
        let e = parse(&GOOD.replace(
            "project_root = \"repos\"",
            "project_root = \"repos\"\nconnect_timeout_seconds = 3\npool_idle_timeout_seconds = 9",
        ))
        .unwrap_err();
        assert!(
            e.contains(
                "[upstream] connect_timeout_seconds, pool_idle_timeout_seconds apply to `url` \
                 upstreams only; remove them"
            ),
            "{e}"
        );
    }

    #[test]
    fn http_upstream_mistakes_are_named() {
        let bad = |from: &str, to: &str| parse(&HTTP.replace(from, to)).unwrap_err();
        assert!(bad("https://git.internal:8443/git/", "ftp://x/").contains("http://"));
        assert!(
            bad("https://git.internal:8443", "https://u:p@git.internal:8443")
                .contains("credentials")
        );
        assert!(bad("bearer", "digest").contains("scheme"));
        // A port the URI type keeps but cannot read would become the default port, unsaid.
        for port in ["99999", "0", ""] {
            let e = bad("git.internal:8443", &format!("git.internal:{port}"));
            assert!(e.contains("invalid port"), "{port:?}: {e}");
        }
        assert!(parse(&HTTP.replace("git.internal:8443", "git.internal")).is_ok());
        assert!(parse(&HTTP.replace("git.internal:8443", "[::1]:65535")).is_ok());
        assert!(bad("env = \"UPSTREAM_TOKEN\"", "").contains("exactly one"));
        assert!(bad("\"::1\"", "\"not-an-ip\"").contains("trusted_proxies"));
        let widened = bad("\"10.0.0.0/8\"", "\"10.0.0.2/8\"");
        assert!(
            widened.contains("trusted_proxies")
                && widened.contains("write 10.0.0.0/8 for the network, or 10.0.0.2/32"),
            "{widened}"
        );
        assert!(bad(
            "ca_file = \"ca.pem\"",
            "identity_header = \"Authorization\""
        )
        .contains("identity_header"));
        // Not a header name (a space, a colon): said with what one is made of.
        let e = bad("ca_file = \"ca.pem\"", "identity_header = \"X User\"");
        assert!(
            e.contains("identity_header = \"X User\" is not a header name: use letters, digits")
                && e.contains("\"X-Forwarded-User\""),
            "{e}"
        );
        let underscore = parse(&HTTP.replace(
            "ca_file = \"ca.pem\"",
            "identity_header = \"X_Forwarded_User\"",
        ))
        .unwrap()
        .warnings();
        assert!(
            underscore.len() == 1
                && underscore[0].contains("has an underscore")
                && underscore[0].contains("\"x-forwarded-user\""),
            "{underscore:?}"
        );
        assert!(parse(HTTP).unwrap().warnings().is_empty());
        assert!(bad("ca_file = \"ca.pem\"", "project_root = \"r\"").contains("project_root"));
        assert!(
            bad("shutdown_grace_seconds = 5", "max_connections = 0").contains("max_connections")
        );
        assert!(bad("shutdown_grace_seconds = 5", "workers = 0").contains("[server] workers = 0"));
        // Timeouts beyond a year would overflow the clock arithmetic of every connection.
        let huge = "9223372036854775807";
        for (from, to) in [
            (
                "shutdown_grace_seconds = 5",
                format!("shutdown_grace_seconds = {huge}"),
            ),
            (
                "shutdown_grace_seconds = 5",
                format!("header_read_timeout_seconds = {huge}"),
            ),
            (
                "shutdown_grace_seconds = 5",
                format!("idle_timeout_seconds = {huge}"),
            ),
        ] {
            assert!(bad(from, &to).contains("at most 31536000 seconds"), "{to}");
        }
        assert!(bad(
            "ca_file = \"ca.pem\"",
            &format!("ca_file = \"ca.pem\"\nidle_timeout_seconds = {huge}")
        )
        .contains("[upstream] idle_timeout_seconds"));
        let cgi_with_http_key = GOOD.replace("[auth]", "ca_file = \"x\"\n[auth]");
        assert!(parse(&cgi_with_http_key).unwrap_err().contains("ca_file"));
    }

    #[test]
    fn a_section_is_a_table_never_a_list_read_by_position() {
        // Each of these was read field by field in order (`store = ["elsewhere.db"]` as its
        // path), with no key named or checked.
        // Only [server] and [upstream]: each case adds one section.
        let base = GOOD
            .replace("[store]\npath = \"gitgate.db\"\n", "")
            .replace("[auth]\nrealm = \"gitgate\"\n", "");
        let cases = [
            (
                "store = [\"elsewhere.db\"]\n",
                "line 1, store: [store] must be a table (a [store] header followed by key = \
                 value lines), not an array",
            ),
            ("auth = [\"Realm\"]\n", "line 1, auth: [auth] must be a table"),
            (
                "rate_limit = [false, 1, 1.0, 0]\n",
                "line 1, rate_limit: [rate_limit] must be a table",
            ),
            ("metrics = 9100\n", "[metrics] must be a table (a [metrics] header followed by key = value lines), not an integer"),
        ];
        for (text, said) in cases {
            let e = parse(&format!("{text}{base}")).unwrap_err();
            assert!(e.contains(said), "{text}: {e}");
            assert!(!e.contains("Realm") && !e.contains("elsewhere"), "{e}");
        }
        let e = parse(&format!("{base}[[auth_failures]]\nmax = 3\n")).unwrap_err();
        assert!(
            e.contains(
                "auth_failures: [auth_failures] must be a table (a [auth_failures] header \
                 followed by key = value lines), not a list of tables"
            ),
            "{e}"
        );
        // Inside a section too.
        let e = parse(&GOOD.replace(
            "git_prefix = \"/scm/\"",
            "git_prefix = \"/scm/\"\ntls = [\"cert.pem\", \"key.pem\"]",
        ))
        .unwrap_err();
        assert!(
            e.contains("line 5, server: [server] tls must be a table (a [server.tls] header followed by key = value lines), not an array"),
            "{e}"
        );
        // Dotted keys elsewhere in the file do not let a section through either.
        let e = parse(&format!(
            "store = [\"elsewhere.db\"]\nauth.realm = \"x\"\n{}",
            base.replace("[server]\n", "")
                .replace("listen = \"127.0.0.1:8080\"\ngit_prefix = \"/scm/\"\n", "")
        ))
        .unwrap_err();
        assert!(e.contains("line 1, store: [store] must be a table"), "{e}");
        let e = parse(
            &format!("server.tls = [\"a.pem\", \"b.pem\"]\n{base}")
                .replace("[server]\n", "[server.x]\n"),
        )
        .unwrap_err();
        assert!(
            e.contains("line 1, server: [server] tls must be a table"),
            "{e}"
        );
        let e = parse(
            &format!("{GOOD}[upstream.credentials]\n")
                .replace("[upstream.credentials]\n", "")
                .replace(
                    "project_root = \"repos\"",
                    "project_root = \"repos\"\ncredentials = \"Bearer s3cret\"",
                ),
        )
        .unwrap_err();
        assert!(e.contains("[upstream] credentials must be a table"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        // An inline table's key is on the section's line.
        let e = parse(&base.replace(
            "[server]\nlisten = \"127.0.0.1:8080\"\ngit_prefix = \"/scm/\"\n",
            "server = { listen = \"127.0.0.1:8080\", tls = [\"a.pem\", \"b.pem\"] }\n",
        ))
        .unwrap_err();
        assert!(
            e.contains("line 2, server: [server] tls must be a table"),
            "{e}"
        );
    }

    #[test]
    fn a_rate_limit_out_of_range_is_told_the_way_out_that_applies() {
        let on = parse(&format!("{GOOD}[rate_limit]\ncapacity = 0\n")).unwrap_err();
        assert!(
            on.contains("capacity must be at least 1 (to turn limiting off, set enabled = false)"),
            "{on}"
        );
        let off = parse(&format!(
            "{GOOD}[rate_limit]\nenabled = false\nrefill_per_second = 0\n"
        ))
        .unwrap_err();
        assert!(
            off.contains(
                "(checked with enabled = false too: give a value in range, or leave the key out)"
            ),
            "{off}"
        );
    }

    #[test]
    fn type_errors_are_told_in_the_configs_words() {
        for (from, to, said) in [
            (
                "workers",
                "workers = \"two\"",
                "line 4, workers: invalid type: a string (not shown), expected a whole number",
            ),
            (
                "workers",
                "workers = 18446744073709551615",
                "number too large for this key",
            ),
            (
                "trusted_proxies",
                "trusted_proxies = \"10.0.0.0/8\"",
                "line 4, trusted_proxies: invalid type: a string (not shown), expected a list in \
                 brackets, e.g. [\"...\"]",
            ),
        ] {
            let text = GOOD.replace("git_prefix = \"/scm/\"", to);
            let e = parse(&text).unwrap_err();
            assert!(e.contains(said), "{from}: {e}");
            assert!(!e.contains("i64") && !e.contains("target type"), "{e}");
        }
        let e = in_the_configs_words("invalid type: string, expected struct RawServer");
        assert_eq!(e, "invalid type: string, expected a table");
    }

    /// A whole number outside what its key takes is told the key's own range, whatever the
    /// number: `workers = -1` was told "0 or more", and then `workers = 0` "1 to 256";
    /// `max_request_buffer_mib = 5000000000` was told "0 to 4294967295", a range of which
    /// almost nothing is taken.
    #[test]
    fn a_whole_number_out_of_range_is_told_the_keys_own_range() {
        let cgi = "project_root = \"repos\"";
        for (section, key, value, said) in [
            (
                "[server]",
                "workers",
                "-1",
                "[server] workers = -1 is out of range: use 1 to 256",
            ),
            (
                "[server]",
                "max_connections",
                "-5",
                "max_connections = -5 is out of range: use 1 to",
            ),
            (
                "[server]",
                "max_connections_per_address",
                "-1",
                "max_connections_per_address = -1 is out of range: use 1 to",
            ),
            (
                "[server]",
                "max_header_bytes",
                "-1",
                "max_header_bytes = -1 is out of range: use 8192",
            ),
            (
                "[server]",
                "header_read_timeout_seconds",
                "-1",
                "header_read_timeout_seconds = -1: use a positive number of seconds",
            ),
            (
                "[server]",
                "shutdown_grace_seconds",
                "-1",
                "shutdown_grace_seconds = -1: use 0 to",
            ),
            (
                cgi,
                "max_processes",
                "-1",
                "max_processes = -1 is out of range: use 1 to 100000, or 0",
            ),
            (
                cgi,
                "max_request_buffer_mib",
                "5000000000",
                "max_request_buffer_mib = 5000000000 is out of range: use 1 to 4096",
            ),
            (
                "[rate_limit]",
                "capacity",
                "-1",
                "[rate_limit] capacity must be at least 1",
            ),
            (
                "[rate_limit]",
                "max_concurrent",
                "-1",
                "max_concurrent = -1 is out of range: use 0 (no cap) to",
            ),
            (
                "[auth_failures]",
                "max",
                "-1",
                "[auth_failures] max = -1 is out of range: use 1 to",
            ),
            (
                "[auth_failures]",
                "window_seconds",
                "99999999999",
                "window_seconds = 99999999999 is out of range: use 1 to 86400",
            ),
            (
                "[auth_failures]",
                "keep_in_audit",
                "-1",
                "keep_in_audit = -1 is out of range: use 0 (keep them all) or more",
            ),
        ] {
            let text = if section == cgi {
                GOOD.replace(cgi, &format!("{cgi}\n{key} = {value}"))
            } else if GOOD.contains(section) {
                GOOD.replace(section, &format!("{section}\n{key} = {value}"))
            } else {
                format!("{GOOD}{section}\n{key} = {value}\n")
            };
            let e = parse(&text).unwrap_err();
            assert!(e.contains(said), "{key} = {value}: {e}");
            assert!(
                !e.contains("0 or more") && !e.contains("4294967295, e"),
                "{e}"
            );
        }
        let e = parse(&GOOD.replace("[server]", "[server]\nworkers = \"two\"")).unwrap_err();
        assert!(
            e.contains("workers: invalid type: a string (not shown), expected a whole number"),
            "{e}"
        );
        assert!(!e.contains("i64") && !e.contains("0 or more"), "{e}");
    }

    /// A file that is not TOML (YAML, JSON) or a value without its quotes is told so: the
    /// parser's own words alone (`line 2, listen: expected newline, `#``) did not say what was
    /// wrong, nor what to write.
    #[test]
    fn a_file_that_is_not_toml_is_told_so() {
        let e = parse(&GOOD.replace("\"127.0.0.1:8080\"", "127.0.0.1:8080")).unwrap_err();
        assert!(
            e.contains("line 3, listen: not valid TOML: ") && e.contains("goes in quotes"),
            "{e}"
        );
        assert!(!e.contains("127.0.0.1:8080"), "{e}");
        for other in [
            "server:\n  listen: \"x\"\n",
            "{\"server\": {\"listen\": \"x\"}}\n",
        ] {
            let e = parse(other).unwrap_err();
            assert!(e.contains("line 1: not valid TOML: "), "{e}");
        }
        // A key written twice is no value to put in quotes, whatever its value.
        for value in ["8", "true", "5.5 # per second"] {
            let e = parse(&GOOD.replace(
                "\"127.0.0.1:8080\"",
                &format!("\"127.0.0.1:8080\"\nworkers = {value}\nworkers = {value}"),
            ))
            .unwrap_err();
            assert!(
                e.contains("duplicate key `workers`") && !e.contains("quotes"),
                "{e}"
            );
        }
        // A file that is TOML, with a value of the wrong type, is not said to be other than TOML.
        let e = parse(&GOOD.replace("\"127.0.0.1:8080\"", "8080")).unwrap_err();
        assert!(
            !e.contains("not valid TOML") && !e.contains("quotes"),
            "{e}"
        );
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
        for api in ["/rest", "/rest/git"] {
            assert!(parse(&GOOD.replace("/scm/", api))
                .unwrap_err()
                .contains("REST API"));
        }
        assert!(parse(&GOOD.replace("/scm/", "/restful")).is_ok());
    }

    #[test]
    fn hardening_sections_default_and_validate() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.rate_limit, RateLimit::default());
        assert_eq!(c.rate_limit.capacity, 60);
        assert_eq!(c.auth_failures.max, 10);
        assert_eq!(c.auth_failures.keep_in_audit, 1_000_000);
        let custom = format!(
            "{GOOD}[rate_limit]\nenabled = false\ncapacity = 5\nrefill_per_second = 0.5\n\
             [auth_failures]\nmax = 3\nwindow_seconds = 10\nkeep_in_audit = 0\n"
        );
        let c = parse(&custom).unwrap();
        assert!(!c.rate_limit.enabled);
        assert_eq!(c.rate_limit.capacity, 5);
        assert_eq!(c.rate_limit.refill_per_second, 0.5);
        assert_eq!(c.auth_failures.window_seconds, 10);
        assert_eq!(c.auth_failures.keep_in_audit, 0);
        assert!(c.auth_failures.exempt.is_empty());
        let nat = format!("{GOOD}[auth_failures]\nexempt = [\"192.0.2.10/32\", \"10.0.0.0/8\"]\n");
        let c = parse(&nat).unwrap();
        assert_eq!(c.auth_failures.exempt.len(), 2);
        assert!(c.auth_failures.exempt[0].contains("192.0.2.10".parse().unwrap()));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        for all in [
            "\"0.0.0.0/0\"",
            "\"0.0.0.0/1\", \"128.0.0.0/1\"",
            "\"::/0\"",
            "\"::/1\", \"10.0.0.0/8\"",
        ] {
            let all = format!("{GOOD}[auth_failures]\nexempt = [{all}]\n");
            let warned = parse(&all).unwrap().warnings();
            assert!(
                warned.iter().any(|w| w.contains("blocks almost nobody")),
                "{all}"
            );
        }
        let nat = format!("{GOOD}[auth_failures]\nexempt = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n");
        assert!(parse(&nat).unwrap().warnings().is_empty());
        // Trusted "proxies" that take in everyone: any client names its own address.
        for (all, warned) in [
            ("\"0.0.0.0/0\"", true),
            ("\"::/0\"", true),
            ("\"::/1\", \"8000::/1\"", true),
            ("\"::ffff:0:0/96\"", true),
            ("\"::ffff:0:0/97\", \"128.0.0.0/1\"", true),
            (
                "\"10.0.0.0/8\", \"::ffff:10.0.0.0/104\", \"fd00::/8\"",
                false,
            ),
        ] {
            let text = GOOD.replace(
                "[server]\n",
                &format!("[server]\ntrusted_proxies = [{all}]\n"),
            );
            let said = parse(&text).unwrap().warnings();
            assert_eq!(
                said.iter()
                    .any(|w| w.contains("[server] trusted_proxies covers half")),
                warned,
                "{all}: {said:?}"
            );
        }
        for wrong in ["\"10.1.2.3/8\"", "\"nat\""] {
            let bad = format!("{GOOD}[auth_failures]\nexempt = [{wrong}]\n");
            assert!(
                parse(&bad).unwrap_err().contains("[auth_failures] exempt"),
                "{wrong}"
            );
        }
        let bad = format!("{GOOD}[auth_failures]\nkeep_in_audit = -1\n");
        assert!(parse(&bad).unwrap_err().contains("keep_in_audit"));
        let bad = format!("{GOOD}[rate_limit]\ncapacity = 0\n");
        assert!(parse(&bad).unwrap_err().contains("capacity"));
        for refill in ["-1", "0", "1e300", "inf", "nan"] {
            let bad = format!("{GOOD}[rate_limit]\nrefill_per_second = {refill}\n");
            let e = parse(&bad).unwrap_err();
            assert!(
                e.contains("refill_per_second") && e.contains("1000000"),
                "{refill}: {e}"
            );
        }
        let bad = format!("{GOOD}[auth_failures]\nmax = 0\n");
        assert!(parse(&bad).unwrap_err().contains("auth_failures"));
        let long = |secs: u32| parse(&format!("{GOOD}[auth_failures]\nwindow_seconds = {secs}\n"));
        assert_eq!(long(86_400).unwrap().auth_failures.window_seconds, 86_400);
        let e = long(86_401).unwrap_err();
        assert!(
            e.contains("window_seconds = 86401 is out of range: use 1 to 86400"),
            "{e}"
        );
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

    /// Each range's ends are in it and one past them is not: a bound off by one would refuse
    /// the value its own message offers, or take the one it says is out of range.
    #[test]
    fn the_ends_of_each_range_are_in_it_and_one_past_them_is_not() {
        let server =
            |line: &str| parse(&GOOD.replace("git_prefix", &format!("{line}\ngit_prefix")));
        for (key, fits, past) in [
            ("max_header_bytes", "8192", "8191"),
            ("max_header_bytes", "1048576", "1048577"),
            ("max_connections_per_address", "1000000", "1000001"),
            ("shutdown_grace_seconds", "31536000", "31536001"),
            ("header_read_timeout_seconds", "31536000", "31536001"),
            ("workers", "256", "257"),
        ] {
            assert!(server(&format!("{key} = {fits}")).is_ok(), "{key} = {fits}");
            let e = server(&format!("{key} = {past}")).unwrap_err();
            assert!(e.contains(&format!("[server] {key} = {past}")), "{e}");
        }
        let upstream =
            |line: &str| parse(&GOOD.replace("project_root", &format!("{line}\nproject_root")));
        assert!(upstream("max_processes = 100000").is_ok());
        assert!(upstream("max_processes = 100001").is_err());
        assert!(upstream("max_request_buffer_mib = 4096").is_ok());
        assert!(upstream("max_request_buffer_mib = 4097").is_err());
    }

    /// The realm is written into every `WWW-Authenticate` challenge: a control character in it
    /// (a tab, an escape, DEL) is refused at load, as a quote or a backslash is.
    #[test]
    fn a_realm_with_a_control_character_is_refused() {
        for realm in ["a\\tb", "a\\u001bb", "a\\u007fb", "a\\u0085b"] {
            let e = parse(&GOOD.replace("realm = \"gitgate\"", &format!("realm = \"{realm}\"")))
                .unwrap_err();
            assert!(e.contains("[auth] realm must be"), "{realm}: {e}");
        }
        assert!(parse(&GOOD.replace("realm = \"gitgate\"", "realm = \"Git at Example\"")).is_ok());
    }

    /// An `https://` upstream's certificate must be checked against something: with
    /// `system_roots = false` and no `ca_file` nothing would be trusted, which is refused at
    /// load. Neither key means anything to an `http://` upstream, so either there is refused.
    #[test]
    fn an_upstream_trust_setting_that_cannot_apply_is_refused() {
        let e = parse(&HTTP.replace("ca_file = \"ca.pem\"", "system_roots = false")).unwrap_err();
        assert!(
            e.contains("system_roots = false without ca_file leaves nothing to trust"),
            "{e}"
        );
        assert!(parse(&HTTP.replace("ca_file = \"ca.pem\"", "system_roots = true")).is_ok());
        let plain = HTTP.replace("https://", "http://");
        for key in [
            "system_roots = true",
            "system_roots = false",
            "ca_file = \"ca.pem\"",
        ] {
            let e = parse(&plain.replace("ca_file = \"ca.pem\"", key)).unwrap_err();
            let named = key.split(' ').next().unwrap();
            assert!(
                e.contains(&format!(
                    "[upstream] {named} applies to https:// upstreams only"
                )) && e.contains("remove it, or write https:// in url"),
                "{key}: {e}"
            );
        }
        assert!(parse(&plain.replace("ca_file = \"ca.pem\"\n", "")).is_ok());
    }
}
