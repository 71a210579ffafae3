//! gitgate's own credentials for an HTTP upstream (`[upstream.credentials]`): read at start, so
//! that a missing or malformed secret stops the start rather than failing the first push, and
//! read again on SIGHUP, so that a rotated secret does not need a restart. A new secret that
//! cannot be used keeps the old one, as a bad new TLS certificate does. The secret itself is
//! never logged; its header value is marked sensitive.

use std::sync::RwLock;

use base64::Engine;
use hyper::header::HeaderValue;

use crate::config::{CredentialScheme, SecretSource, UpstreamCredentials};

/// The `Authorization` value gitgate sends upstream, and where it came from.
pub struct UpstreamSecret {
    credentials: UpstreamCredentials,
    current: RwLock<HeaderValue>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// Read again from its file; new requests use it.
    FromFile,
    /// From an environment variable, which a running process cannot see change.
    Unchanged,
}

impl UpstreamSecret {
    /// Read the secret now.
    pub fn load(credentials: &UpstreamCredentials) -> Result<UpstreamSecret, String> {
        Ok(UpstreamSecret {
            current: RwLock::new(read(credentials)?),
            credentials: credentials.clone(),
        })
    }

    /// The header value for a request.
    pub fn value(&self) -> HeaderValue {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Read the secret's file again; on an error the current secret stays.
    pub fn reload(&self) -> Result<Reloaded, String> {
        if let SecretSource::Env(_) = self.credentials.source {
            return Ok(Reloaded::Unchanged);
        }
        let new = read(&self.credentials)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(Reloaded::FromFile)
    }

    /// Why the secret's file should be looked at: readable by every user of the machine, as
    /// the TLS key is warned of. `None` for a secret from the environment, or a file that is
    /// not (or whose mode cannot be read).
    pub fn file_readable_by_all(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let SecretSource::File(path) = &self.credentials.source else {
            return None;
        };
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o004 != 0).then(|| {
            format!(
                "[upstream.credentials] file {} is readable by every user of this machine (mode \
                 {mode:04o}): whoever reads it can reach the git server as gitgate, past every \
                 token; chmod 600 it (or 640 for a group gitgate's user is in)",
                path.display()
            )
        })
    }

    /// Where the secret is read from, for the log.
    pub fn describe(&self) -> String {
        match &self.credentials.source {
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Env(name) => format!("environment variable {name}"),
        }
    }
}

/// The longest `Authorization` value sent upstream: with its name, within the 8 KiB a
/// header line may take in nginx's default buffers (`large_client_header_buffers`).
const MAX_HEADER_VALUE: usize = 8 * 1024 - 64;

/// Read gitgate's upstream secret and make the `Authorization` value of it.
fn read(c: &UpstreamCredentials) -> Result<HeaderValue, String> {
    let secret = match &c.source {
        SecretSource::File(path) => crate::small_file::read_to_string(path).map_err(|e| {
            // A path that leads to nothing may be the secret itself, written where the path of
            // the file that holds it goes (`file = "glpat-..."`): not repeated, as a secret
            // pasted in place of `env`'s name is not. One that is there is a file's name.
            if std::fs::symlink_metadata(path).is_err() {
                format!(
                    "[upstream.credentials] file cannot be read: {e} (the path is not shown: \
                     it may be the secret itself; `file` takes the path of a file that holds \
                     the secret, and a relative path is taken from the config file's folder)"
                )
            } else {
                format!(
                    "[upstream.credentials] file = \"{}\" cannot be read: {e}",
                    path.display()
                )
            }
        })?,
        SecretSource::Env(name) => std::env::var(name).map_err(|_| {
            // A secret pasted in place of the name would be shown here: a name is shown only
            // when it looks like one (upper case, digits and _, as variables are named).
            if name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                format!("[upstream.credentials] env = \"{name}\": the variable is not set")
            } else {
                "[upstream.credentials] env: the variable it names is not set (the name is not \
                 shown: it does not look like a variable's name — is it the secret itself?)"
                    .into()
            }
        })?,
    };
    // An editor's "UTF-8 with BOM" puts U+FEFF before the first line: sent, it made another
    // token than the file shows, refused by the upstream (every git request a 502).
    let secret = secret.strip_prefix('\u{feff}').unwrap_or(&secret);
    let secret = secret.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err("[upstream.credentials] the secret is empty".into());
    }
    if secret.trim().is_empty() {
        return Err("[upstream.credentials] the secret is blank (spaces only)".into());
    }
    // One line (the README's word): a second would be encoded into a Basic secret as part of
    // the password, and is no header value for a Bearer one.
    if secret.contains(['\n', '\r']) {
        return Err(format!(
            "[upstream.credentials] the secret is {} lines: it must be one line (the \
             secret alone, \"user:password\" for basic)",
            secret.lines().count().max(2)
        ));
    }
    // A header value's spaces at either end are not part of it (RFC 9110 §5.5): the server
    // would read another token than the file holds. (A Basic secret is encoded, spaces and
    // all.)
    if matches!(c.scheme, CredentialScheme::Bearer) && secret.trim() != secret {
        return Err(
            "[upstream.credentials] the secret begins or ends with a space or tab, which a \
             header value cannot carry: the server would read another token (remove them)"
                .into(),
        );
    }
    let value = match c.scheme {
        CredentialScheme::Basic => {
            if !secret.contains(':') {
                return Err(
                    "[upstream.credentials] a basic secret is \"user:password\" (no ':' found)"
                        .into(),
                );
            }
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(secret)
            )
        }
        CredentialScheme::Bearer => format!("Bearer {secret}"),
    };
    if value.len() > MAX_HEADER_VALUE {
        return Err(format!(
            "[upstream.credentials] the secret makes an Authorization header of {} bytes: git \
             servers refuse a header line that long (nginx's limit is 8 KiB), so every request \
             would fail; is the file the secret?",
            value.len()
        ));
    }
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        "[upstream.credentials] the secret contains characters a header cannot carry".to_string()
    })?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials of `scheme` read from the file at `path`.
    fn from_file(scheme: CredentialScheme, path: &std::path::Path) -> UpstreamCredentials {
        UpstreamCredentials {
            scheme,
            source: SecretSource::File(path.to_path_buf()),
        }
    }

    #[test]
    fn credentials_are_built_and_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "gitgate:pw\n").unwrap();
        let v = read(&from_file(CredentialScheme::Basic, &f)).unwrap();
        assert_eq!(v, "Basic Z2l0Z2F0ZTpwdw==");
        assert!(v.is_sensitive());
        std::env::set_var("GITGATE_TEST_UPSTREAM_BEARER", "tok3n\n");
        let v = read(&UpstreamCredentials {
            scheme: CredentialScheme::Bearer,
            source: SecretSource::Env("GITGATE_TEST_UPSTREAM_BEARER".into()),
        })
        .unwrap();
        assert_eq!(v, "Bearer tok3n");
        assert!(read(&UpstreamCredentials {
            scheme: CredentialScheme::Bearer,
            source: SecretSource::Env("GITGATE_TEST_UNSET_VARIABLE".into()),
        })
        .unwrap_err()
        .contains("GITGATE_TEST_UNSET_VARIABLE\": the variable is not set"));
        // A secret pasted where the name goes is not repeated.
        let e = read(&UpstreamCredentials {
            scheme: CredentialScheme::Bearer,
            source: SecretSource::Env("ghp_hunter2Secret".into()),
        })
        .unwrap_err();
        assert!(e.contains("not set") && !e.contains("hunter2"), "{e}");
        // Blank, spaces at the ends of a bearer token, or too long for a header line: refused,
        // naming why (not the secret).
        for (scheme, text, why) in [
            (CredentialScheme::Bearer, " \t \n".to_string(), "blank"),
            (CredentialScheme::Basic, "   ".to_string(), "blank"),
            (
                CredentialScheme::Bearer,
                "tok3n \n".to_string(),
                "a space or tab",
            ),
            (
                CredentialScheme::Bearer,
                " tok3n".to_string(),
                "a space or tab",
            ),
            (CredentialScheme::Bearer, "a".repeat(8 * 1024), "8199 bytes"),
            (
                CredentialScheme::Basic,
                "bob:pw\nsecond line\n".to_string(),
                "is 2 lines: it must be one line",
            ),
            (
                CredentialScheme::Bearer,
                "tok3n\r\nmore\r\n".to_string(),
                "is 2 lines: it must be one line",
            ),
            (
                CredentialScheme::Basic,
                format!("u:{}", "a".repeat(6 * 1024)),
                "bytes",
            ),
        ] {
            std::fs::write(&f, &text).unwrap();
            let e = read(&UpstreamCredentials {
                scheme,
                source: SecretSource::File(f.clone()),
            })
            .unwrap_err();
            assert!(
                e.contains(why) && !e.contains("tok3n"),
                "{} bytes: {e}",
                text.len()
            );
        }
        // A Basic password ending in a space is encoded with it.
        std::fs::write(&f, "u:pw \n").unwrap();
        let v = read(&from_file(CredentialScheme::Basic, &f)).unwrap();
        assert_eq!(
            v,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("u:pw ")
            )
        );
        std::fs::write(&f, "nocolon").unwrap();
        assert!(read(&from_file(CredentialScheme::Basic, &f)).is_err());
    }

    #[test]
    fn a_secret_file_readable_by_every_user_is_said() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "s3cr3tvalue\n").unwrap();
        let s = UpstreamSecret::load(&from_file(CredentialScheme::Bearer, &f)).unwrap();
        for (mode, said) in [(0o600, false), (0o640, false), (0o644, true), (0o604, true)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let warning = s.file_readable_by_all();
            assert_eq!(warning.is_some(), said, "{mode:o}: {warning:?}");
            if let Some(w) = warning {
                assert!(w.contains("chmod 600") && !w.contains("s3cr3tvalue"), "{w}");
            }
        }
        std::env::set_var("GITGATE_TEST_UPSTREAM_MODE", "x");
        let from_env = UpstreamSecret::load(&UpstreamCredentials {
            scheme: CredentialScheme::Bearer,
            source: SecretSource::Env("GITGATE_TEST_UPSTREAM_MODE".into()),
        })
        .unwrap();
        assert_eq!(from_env.file_readable_by_all(), None);
    }

    #[test]
    fn a_reload_takes_a_new_file_and_keeps_the_old_secret_when_the_new_one_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "one\n").unwrap();
        let s = UpstreamSecret::load(&from_file(CredentialScheme::Bearer, &f)).unwrap();
        assert_eq!(s.value(), "Bearer one");
        std::fs::write(&f, "two\n").unwrap();
        assert_eq!(s.reload(), Ok(Reloaded::FromFile));
        assert_eq!(s.value(), "Bearer two");
        assert!(s.value().is_sensitive());
        for bad in ["", "\n", "bad\u{7f}secret"] {
            std::fs::write(&f, bad).unwrap();
            assert!(s.reload().is_err(), "{bad:?}");
            assert_eq!(s.value(), "Bearer two", "{bad:?}");
        }
        std::fs::remove_file(&f).unwrap();
        assert!(s.reload().unwrap_err().contains("cannot be read"));
        assert_eq!(s.value(), "Bearer two");
    }

    /// A secret written where the path of its file goes names no file: it is not repeated in
    /// the refusal (the start's, `check`'s, a SIGHUP's), while a file that is there but cannot
    /// be read is named.
    #[test]
    fn a_secret_given_as_the_files_path_is_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        for pasted in [
            "glpat-Hunter2SecretXyZ",
            "deploy:Hunter2Secret",
            "a/Hunter2+b/c==",
        ] {
            let e = read(&from_file(
                CredentialScheme::Bearer,
                &dir.path().join(pasted),
            ))
            .unwrap_err();
            assert!(
                !e.contains("Hunter2") && e.contains("cannot be read") && e.contains("not shown"),
                "{e}"
            );
        }
        let e = read(&from_file(CredentialScheme::Bearer, dir.path())).unwrap_err();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("a folder"),
            "{e}"
        );
    }

    /// A secret file saved with a UTF-8 byte order mark (Notepad's "UTF-8 with BOM") gives
    /// the secret the file shows, not one beginning with U+FEFF.
    #[test]
    fn a_secret_file_saved_with_a_byte_order_mark_is_read_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "\u{feff}tok3n\r\n").unwrap();
        let v = read(&from_file(CredentialScheme::Bearer, &f)).unwrap();
        assert_eq!(v, "Bearer tok3n");
        std::fs::write(&f, "\u{feff}gitgate:pw\n").unwrap();
        let v = read(&from_file(CredentialScheme::Basic, &f)).unwrap();
        assert_eq!(v, "Basic Z2l0Z2F0ZTpwdw==");
    }

    #[test]
    fn a_secret_from_the_environment_is_not_re_read() {
        std::env::set_var("GITGATE_TEST_UPSTREAM_RELOAD", "env1");
        let s = UpstreamSecret::load(&UpstreamCredentials {
            scheme: CredentialScheme::Bearer,
            source: SecretSource::Env("GITGATE_TEST_UPSTREAM_RELOAD".into()),
        })
        .unwrap();
        std::env::set_var("GITGATE_TEST_UPSTREAM_RELOAD", "env2");
        assert_eq!(s.reload(), Ok(Reloaded::Unchanged));
        assert_eq!(s.value(), "Bearer env1");
    }

    /// A secret file saved with Windows line ends is the secret without them, not a two-line
    /// secret.
    #[test]
    fn a_secret_file_ending_in_crlf_is_read_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "tok3n\r\n").unwrap();
        let v = read(&from_file(CredentialScheme::Bearer, &f)).unwrap();
        assert_eq!(v, "Bearer tok3n");
        std::fs::write(&f, "gitgate:pw\r\n").unwrap();
        let v = read(&from_file(CredentialScheme::Basic, &f)).unwrap();
        assert_eq!(v, "Basic Z2l0Z2F0ZTpwdw==");
    }

    /// The longest `Authorization` value taken is 8 KiB less 64 bytes, to the byte: one
    /// byte more is refused.
    #[test]
    fn an_authorization_value_of_the_limit_is_taken_and_one_byte_more_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        let most = MAX_HEADER_VALUE - "Bearer ".len();
        assert_eq!(MAX_HEADER_VALUE, 8128);
        std::fs::write(&f, "a".repeat(most)).unwrap();
        let v = read(&from_file(CredentialScheme::Bearer, &f)).unwrap();
        assert_eq!(v.len(), 8128);
        std::fs::write(&f, "a".repeat(most + 1)).unwrap();
        let e = read(&from_file(CredentialScheme::Bearer, &f)).unwrap_err();
        assert!(e.contains("of 8129 bytes"), "{e}");
    }
}
