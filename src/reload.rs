//! What a running server reads again while it serves: on SIGHUP the TLS certificate and the
//! upstream credentials (and what it says of other edits to the config, which a restart
//! applies), and every hour the served chain's dates.
//!
//! Apart from [`crate::server`], which accepts and serves connections: this is the part an
//! operator drives from outside (`kill -HUP`, a renewed certificate) while those go on, and
//! what it changes is only ever swapped in whole — a bad new certificate or secret keeps the
//! old one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, Upstream as UpstreamConfig};
use crate::log_value::LogText;
use crate::metrics::METRICS;
use crate::signals::HangupSignal;
use crate::tls::CertStore;
use crate::upstream::secret::{Reloaded, UpstreamSecret};

/// How often a running server looks at the served chain's expiry: a certificate fine at the
/// start may be near its end, or past it, months later.
const CERTIFICATE_LOOKED_AT_EVERY: Duration = Duration::from_secs(3600);

/// How often, at most, a running server warns that the served chain's expiry is near (once
/// it has passed: every time it looks).
const CERTIFICATE_WARNED_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How long a SIGHUP's reload may take before the log says it has not finished (a file it
/// reads does not answer).
const RELOAD_SAID_LATE_AFTER: Duration = Duration::from_secs(10);

/// The served chain's expiry and problems, at start and on reload: into the metrics, and into
/// the log when its expiry is near or one of its intermediates is out of its dates (a served
/// certificate out of them is refused by [`CertStore`]); unread dates are said too.
pub(crate) fn certificate_dates_said(certs: &CertStore) {
    for warning in certs.warnings() {
        tracing::error!(reason = %LogText(&warning), "the TLS certificate chain has a problem");
    }
    let Some(chain) = certs.validity() else {
        tracing::warn!(
            cert = %certs.cert_path().display(),
            "cannot read the TLS certificate's validity dates; its expiry is not watched"
        );
        METRICS.tls_certificate_expiry_unknown();
        return;
    };
    METRICS.tls_certificate_expires(chain.validity.not_after);
    // One already past is an intermediate's, said above.
    if let Some((false, note)) = chain.expiry_note(crate::clock::now_ms()) {
        tracing::warn!(cert = %certs.cert_path().display(), "{note}");
    }
}

/// While the server runs: the served chain's expiry looked at every hour — warned of once a day
/// within 14 days of it, and said as an error every hour once it has passed (a start and a
/// reload refuse such a certificate, but one served for months can expire while served).
pub(crate) async fn watch_certificate_expiry(certs: Arc<CertStore>) {
    // Said at the start already.
    let mut warned = certs
        .validity()
        .and_then(|chain| chain.expiry_note(crate::clock::now_ms()))
        .map(|_| tokio::time::Instant::now());
    loop {
        tokio::time::sleep(CERTIFICATE_LOOKED_AT_EVERY).await;
        let Some(chain) = certs.validity() else {
            continue;
        };
        match chain.expiry_note(crate::clock::now_ms()) {
            Some((true, note)) => {
                tracing::error!(cert = %certs.cert_path().display(), "{note}");
            }
            Some((false, note))
                if warned.is_none_or(|at| at.elapsed() >= CERTIFICATE_WARNED_EVERY) =>
            {
                warned = Some(tokio::time::Instant::now());
                tracing::warn!(cert = %certs.cert_path().display(), "{note}");
            }
            _ => {}
        }
    }
}

/// On SIGHUP, reload the TLS certificate and the upstream credentials (those configured); a bad
/// new one keeps the old.
pub(crate) async fn reload_on_hangup(
    mut hangup: HangupSignal,
    certs: Option<Arc<CertStore>>,
    upstream_secret: Option<Arc<UpstreamSecret>>,
    running: Config,
    stopping: watch::Receiver<bool>,
) {
    while hangup.next().await {
        // New connections are no longer taken: "new connections use it" would be untrue.
        if *stopping.borrow() {
            tracing::info!("SIGHUP ignored: gitgate is stopping");
            continue;
        }
        // On a thread of its own, not this one, which accepts the connections: a file that
        // does not answer (a hung network mount under the certificate, a FIFO in its place)
        // would stop them all; nor tokio's blocking pool, whose end the runtime's end waits
        // for: the stop must not wait for a read that may never end.
        let (certs, upstream_secret, running) =
            (certs.clone(), upstream_secret.clone(), running.clone());
        let started = crate::own_thread::run("gitgate-reload", move || {
            reload(certs.as_deref(), upstream_secret.as_deref(), &running)
        });
        let finished = match started {
            Ok(finished) => finished,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: cannot start a thread to reload on; nothing was read again");
                continue;
            }
        };
        // One reload at a time: a SIGHUP meanwhile is answered once this one ends.
        tokio::pin!(finished);
        if tokio::time::timeout(RELOAD_SAID_LATE_AFTER, &mut finished)
            .await
            .is_err()
        {
            tracing::warn!(
                "SIGHUP: the reload has not finished after {}s: a file it reads (the config \
                 file, the TLS certificate or key, the upstream credentials) does not answer; \
                 connections are still taken with the certificate and credentials in use",
                RELOAD_SAID_LATE_AFTER.as_secs()
            );
            let _ = finished.await;
        }
    }
}

/// What a SIGHUP reads again (see [`reload_on_hangup`]), on a thread that may block. Counted
/// once in `gitgate_reload_failures_total` when it keeps anything in use, the certificate, the
/// credentials or both: the metric counts SIGHUPs.
fn reload(certs: Option<&CertStore>, upstream_secret: Option<&UpstreamSecret>, running: &Config) {
    let mut kept = false;
    // Read once: what it says of the edits, and whether a restart would read the files this
    // reload read (not when the config file now names others).
    let on_disk = Config::load(&running.source);
    config_said_on_hangup(running, &on_disk);
    let on_disk = on_disk.ok();
    // Compared by value, paths by their components: `./cert.pem` is `cert.pem`, and a restart
    // would read the same file.
    let same = |part: &dyn Fn(&Config, &Config) -> bool| {
        on_disk.as_ref().is_none_or(|now| part(now, running))
    };
    let restart = |same: bool, what: &str| {
        if same {
            ", so a restart would fail (`gitgate check` says more)".to_string()
        } else {
            format!("; the config file now names other {what}, which a restart would read")
        }
    };
    if let Some(secret) = &upstream_secret {
        let from = secret.describe();
        match secret.reload() {
            Ok(Reloaded::FromFile) => {
                tracing::info!(
                    from = %from,
                    "SIGHUP: upstream credentials read again; new requests use them"
                );
                if let Some(warning) = secret.file_readable_by_all() {
                    tracing::warn!("{warning}");
                }
            }
            Ok(Reloaded::Unchanged) => tracing::info!(
                from = %from,
                "SIGHUP: upstream credentials come from the environment, which changes only with a restart"
            ),
            Err(e) => {
                kept = true;
                let credentials = |c: &Config| match &c.upstream {
                    crate::config::Upstream::Http(h) => h.credentials.clone(),
                    crate::config::Upstream::Cgi { .. } => None,
                };
                tracing::error!(
                    error = %LogText(&e.to_string()),
                    "SIGHUP: keeping the current upstream credentials, the new ones are \
                     unusable{}",
                    restart(
                        same(&|a, b| credentials(a) == credentials(b)),
                        "credentials"
                    )
                )
            }
        }
    }
    match &certs {
        None if upstream_secret.is_none() => tracing::info!(
            "SIGHUP: no [server.tls] and no [upstream.credentials] configured, nothing to reload"
        ),
        None => {}
        Some(c) => match c.reload() {
            Ok(()) => {
                tracing::info!(
                    cert = %c.cert_path().display(),
                    "SIGHUP: TLS certificate reloaded; new connections use it"
                );
                certificate_dates_said(c);
                // A renewal may write the new key with another mode: said as at a start.
                if let Some(warning) = crate::tls::key_readable_by_all(c.key_path()) {
                    tracing::warn!("{warning}");
                }
            }
            Err(e) => {
                kept = true;
                match c
                    .validity()
                    .and_then(|chain| chain.expiry_note(crate::clock::now_ms()))
                {
                    Some((true, note)) => tracing::error!(
                        error = %LogText(&e.to_string()),
                        "SIGHUP: the new TLS certificate is unusable, and the one served is no \
                         better: {note}"
                    ),
                    // The start loads the same files, and refuses them as this does.
                    _ => tracing::error!(
                        error = %LogText(&e.to_string()),
                        "SIGHUP: keeping the current TLS certificate, the new one is unusable{}",
                        restart(same(&|a, b| a.server.tls == b.server.tls), "TLS files")
                    ),
                }
            }
        },
    }
    if kept {
        METRICS.reload_failed();
    }
}

/// A SIGHUP re-reads the files `[server.tls]` and `[upstream.credentials]` name, not the
/// config file: its other settings are built into the running server. An operator who edited
/// it and sent SIGHUP (as for nginx) is told so, and told when it no longer loads, since the
/// next restart would then fail.
fn config_said_on_hangup(running: &Config, on_disk: &Result<Config, crate::config::ConfigError>) {
    match on_disk {
        // The refusal quotes the file's line, which may hold a secret pasted by mistake: not
        // repeated, as the start and `check` do not repeat it either.
        Err(e) => tracing::warn!(
            "SIGHUP: the config file no longer loads, so a restart would fail (the running \
             settings are kept; `gitgate check` says more): {}",
            crate::credentials::without_secrets_in_an_answer(&e.to_string())
        ),
        Ok(now) => {
            // New certificate or key files: a restart loads them as the start does, and
            // refuses to start if they do not (a key that is not the certificate's).
            if let Some(tls) = now
                .server
                .tls
                .as_ref()
                .filter(|_| now.server.tls != running.server.tls)
            {
                if let Err(e) = CertStore::load(&tls.cert, &tls.key) {
                    tracing::warn!(
                        "SIGHUP: the config file names other TLS files, which do not load, so a \
                         restart would fail (the running settings are kept; `gitgate check` \
                         says more): {e}"
                    );
                    return;
                }
            }
            // A new store path: a restart opens it, and refuses to start if it cannot be
            // written (a folder not made yet, or another user's).
            if now.store.path != running.store.path {
                if let Err(e) = crate::store::Store::check_can_write(&now.store.path) {
                    tracing::warn!(
                        "SIGHUP: the config file names another store, which this process could \
                         not write, so a restart would fail (the running settings are kept; \
                         `gitgate check` says more): {e}"
                    );
                    return;
                }
            }
            let changed = changed_sections(running, now);
            if !changed.is_empty() {
                tracing::warn!(
                    config = %crate::log_value::LogFile(&running.source),
                    changed = %crate::log_value::LogValue(&changed.join(",")),
                    "SIGHUP: the config file changed since the start; a SIGHUP reads again only \
                     the files that [server.tls] and [upstream.credentials] name, so these \
                     changes take effect at a restart"
                );
            }
        }
    }
}

/// The sections of the config file whose settings differ between `a` and `b`, compared by
/// value: paths by their components, so `repos`, `./repos` and `repos/` are one folder.
fn changed_sections(a: &Config, b: &Config) -> Vec<&'static str> {
    // Its credentials are a section of their own, said apart: a new file is read at a SIGHUP,
    // a new scheme or source only at a restart.
    let credentials = |c: &Config| match &c.upstream {
        UpstreamConfig::Http(http) => http.credentials.clone(),
        UpstreamConfig::Cgi { .. } => None,
    };
    let upstream = |c: &Config| {
        let mut upstream = c.upstream.clone();
        if let UpstreamConfig::Http(http) = &mut upstream {
            http.credentials = None;
        }
        upstream
    };
    let server = |c: &Config| {
        let s = &c.server;
        (
            s.listen,
            s.git_prefix.clone(),
            s.trusted_proxies.clone(),
            s.limits.clone(),
            s.workers,
        )
    };
    [
        ("[server]", server(a) != server(b)),
        ("[server.tls]", a.server.tls != b.server.tls),
        ("[store]", a.store != b.store),
        ("[upstream]", upstream(a) != upstream(b)),
        ("[upstream.credentials]", credentials(a) != credentials(b)),
        ("[auth]", a.auth != b.auth),
        ("[rate_limit]", a.rate_limit != b.rate_limit),
        ("[auth_failures]", a.auth_failures != b.auth_failures),
        ("[metrics]", a.metrics_listen != b.metrics_listen),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sections_a_config_edit_changed_are_named() {
        let path = std::path::Path::new("/etc/gitgate/proxy.toml");
        let base = "[server]\nlisten = \"127.0.0.1:8080\"\n[store]\npath = \"g.db\"\n\
                    [upstream]\nurl = \"http://127.0.0.1:9000\"\n";
        let a = Config::parse(path, base).unwrap();
        assert!(changed_sections(&a, &a.clone()).is_empty());
        // A comment or a reordering changes nothing.
        let b = Config::parse(path, &format!("# renewed\n{base}")).unwrap();
        assert!(changed_sections(&a, &b).is_empty());
        let b = Config::parse(
            path,
            &format!("{base}[rate_limit]\ncapacity = 7\n[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"),
        )
        .unwrap();
        assert_eq!(changed_sections(&a, &b), ["[server.tls]", "[rate_limit]"]);
        let b = Config::parse(path, &base.replace("8080", "8081")).unwrap();
        assert_eq!(changed_sections(&a, &b), ["[server]"]);
        // The upstream's credentials are named apart from the rest of [upstream].
        let with = |scheme: &str| {
            let text =
                format!("{base}[upstream.credentials]\nscheme = \"{scheme}\"\nfile = \"/etc/s\"\n");
            Config::parse(path, &text).unwrap()
        };
        assert_eq!(
            changed_sections(&with("bearer"), &with("basic")),
            ["[upstream.credentials]"]
        );
        assert_eq!(
            changed_sections(&a, &with("basic")),
            ["[upstream.credentials]"]
        );
        // One folder written two ways is no change.
        let b = Config::parse(path, &base.replace("\"g.db\"", "\"./g.db\"")).unwrap();
        assert!(changed_sections(&a, &b).is_empty());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("repos")).unwrap();
        let cgi = |root: &str| {
            let text = format!(
                "[store]\npath = \"g.db\"\n[upstream]\n\
                 cgi = \"/usr/lib/git-core/git-http-backend\"\nproject_root = \"{root}\"\n"
            );
            Config::parse(&dir.path().join("proxy.toml"), &text).unwrap()
        };
        let a = cgi("repos");
        for b in [cgi("./repos"), cgi("repos/")] {
            assert!(changed_sections(&a, &b).is_empty());
        }
        assert_eq!(changed_sections(&a, &cgi(".")), ["[upstream]"]);
    }

    /// Each section's edits are named: the store's path, the failed-authentication throttle,
    /// the server's limits — a SIGHUP applies none of them, and the operator is told.
    #[test]
    fn an_edit_of_the_store_the_throttle_or_the_limits_is_named() {
        let path = std::path::Path::new("/etc/gitgate/proxy.toml");
        let base = "[server]\nlisten = \"127.0.0.1:8080\"\n[store]\npath = \"g.db\"\n\
                    [upstream]\nurl = \"http://127.0.0.1:9000\"\n";
        let a = Config::parse(path, base).unwrap();
        let b = Config::parse(path, &base.replace("\"g.db\"", "\"other.db\"")).unwrap();
        assert_eq!(changed_sections(&a, &b), ["[store]"]);
        let b = Config::parse(path, &format!("{base}[auth_failures]\nmax = 3\n")).unwrap();
        assert_eq!(changed_sections(&a, &b), ["[auth_failures]"]);
        let b = Config::parse(
            path,
            &base.replace("8080\"\n", "8080\"\nidle_timeout_seconds = 77\n"),
        )
        .unwrap();
        assert_eq!(changed_sections(&a, &b), ["[server]"]);
    }

    /// Held by the tests that call [`reload`], which counts into the process's metrics.
    static RELOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The SIGHUPs that kept something in use, as `gitgate_reload_failures_total` says them.
    fn reload_failures() -> u64 {
        let text = METRICS.render((0, 0));
        let line = text
            .lines()
            .find(|l| l.starts_with("gitgate_reload_failures_total "))
            .unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// A file of `fixtures/tls`.
    fn tls_fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/tls")
            .join(name)
    }

    /// The fixture `server-a`'s certificate and key copied into `dir` as `c.pem` and `k.pem`,
    /// as a config there names them.
    fn server_a_in(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::copy(tls_fixture("server-a.pem"), &cert).unwrap();
        std::fs::copy(tls_fixture("server-a.key"), &key).unwrap();
        (cert, key)
    }

    /// A SIGHUP that keeps both the certificate and the upstream credentials is one failed
    /// reload in the metric, which counts SIGHUPs.
    #[test]
    fn a_sighup_that_keeps_both_counts_once() {
        let _one = RELOADING.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server_a_in(dir.path());
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "tok3n\n").unwrap();
        let text = "[server]\nlisten = \"127.0.0.1:8080\"\n[server.tls]\ncert = \"c.pem\"\n\
                    key = \"k.pem\"\n[store]\npath = \"g.db\"\n\
                    [upstream]\nurl = \"http://127.0.0.1:9000\"\n\
                    [upstream.credentials]\nscheme = \"bearer\"\nfile = \"secret\"\n";
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        let running = Config::parse(&path, text).unwrap();
        let certs = CertStore::load(&cert, &key).unwrap();
        let credentials = match &running.upstream {
            UpstreamConfig::Http(http) => http.credentials.clone().unwrap(),
            UpstreamConfig::Cgi { .. } => unreachable!(),
        };
        let upstream_secret = UpstreamSecret::load(&credentials).unwrap();
        std::fs::copy(tls_fixture("server-b.pem"), &cert).unwrap();
        std::fs::write(&secret, "").unwrap();
        let before = reload_failures();
        let log = crate::store::test_support::logged(|| {
            reload(Some(&certs), Some(&upstream_secret), &running)
        });
        assert!(
            log.contains("keeping the current TLS certificate")
                && log.contains("keeping the current upstream credentials"),
            "{log}"
        );
        assert_eq!(reload_failures() - before, 1);
    }

    /// TLS files that no longer load, named by the config file as the same files written
    /// another way (`./c.pem` for `c.pem`), are said to fail a restart too: the restart reads
    /// them.
    #[test]
    fn the_same_tls_files_written_another_way_are_said_to_fail_a_restart() {
        let _one = RELOADING.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server_a_in(dir.path());
        let config = |cert: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\n[server.tls]\ncert = \"{cert}\"\n\
                 key = \"k.pem\"\n[store]\npath = \"g.db\"\n\
                 [upstream]\nurl = \"http://127.0.0.1:9000\"\n"
            )
        };
        let path = dir.path().join("proxy.toml");
        let running = Config::parse(&path, &config("c.pem")).unwrap();
        let certs = CertStore::load(&cert, &key).unwrap();
        // A renewal gone wrong: a certificate the key does not go with.
        std::fs::copy(tls_fixture("server-b.pem"), &cert).unwrap();
        std::fs::write(&path, config("./c.pem")).unwrap();
        let log = crate::store::test_support::logged(|| reload(Some(&certs), None, &running));
        assert!(
            log.contains("keeping the current TLS certificate")
                && log.contains("so a restart would fail")
                && !log.contains("names other TLS files"),
            "{log}"
        );
    }

    /// A config file that now names a store this process cannot write is said to make a
    /// restart fail, not merely to have changed.
    #[test]
    fn a_new_store_that_cannot_be_written_is_said_to_fail_a_restart() {
        let path = std::path::Path::new("/etc/gitgate/proxy.toml");
        let base = "[server]\nlisten = \"127.0.0.1:8080\"\n[store]\npath = \"g.db\"\n\
                    [upstream]\nurl = \"http://127.0.0.1:9000\"\n";
        let running = Config::parse(path, base).unwrap();
        let on_disk = Config::parse(
            path,
            &base.replace("\"g.db\"", "\"/nonexistent-gitgate-folder/g.db\""),
        );
        let log = crate::store::test_support::logged(|| {
            config_said_on_hangup(&running, &on_disk);
        });
        assert!(log.contains("names another store"), "{log}");
    }
}
