//! TLS termination: the server's certificate, reloadable without a restart.
//!
//! Certificates get renewed (ACME, an internal CA) while clones are running. So the rustls
//! `ServerConfig` does not hold a certificate itself but asks a [`CertStore`] for the current
//! one on every handshake; [`CertStore::reload`] (on SIGHUP) reads the files again and swaps the
//! `Arc` in one step. Connections already open keep the certificate they were set up with; new
//! ones get the new certificate. A reload that fails — unreadable file, no certificate, a key
//! that does not match — keeps the old certificate and says why, so a botched renewal never
//! takes the server down.
//!
//! TLS 1.2 and 1.3 only (rustls supports nothing older), ALPN `h2` then `http/1.1`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The server's current certificate and key, and where they are read from.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish()
    }
}

impl CertStore {
    /// Read the certificate chain and key; an error names the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = read_pair(cert, key, &provider)?;
        Ok(Arc::new(CertStore {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(certified)),
        }))
    }

    /// Read the files again and, if they make a usable pair, serve them from the next
    /// handshake on. On error the old pair stays.
    pub fn reload(&self) -> Result<(), String> {
        let certified = read_pair(&self.cert_path, &self.key_path, &self.provider)?;
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(certified),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(certified),
        }
        Ok(())
    }

    /// The rustls server configuration that asks this store for its certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, String> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Where the certificate is read from, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = match self.current.read() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(current.clone())
    }
}

/// Read and check a certificate chain (PEM) and its private key (PEM: PKCS#8, PKCS#1 or SEC1).
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("[server.tls] cert = \"{}\": {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "[server.tls] cert = \"{}\" holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "[server.tls] key = \"{}\" holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, \
             -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)",
            key.display()
        ),
        e => format!("[server.tls] key = \"{}\": {e}", key.display()),
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "[server.tls] key = \"{}\" does not go with cert = \"{}\": {e}",
            key.display(),
            cert.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/tls")
            .join(name)
    }

    fn serving(store: &CertStore) -> Vec<u8> {
        store.current.read().unwrap().cert[0].to_vec()
    }

    fn der(name: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(fixture(name))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn loads_and_reloads_and_keeps_the_old_pair_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::copy(fixture("server-a.pem"), &cert).unwrap();
        std::fs::copy(fixture("server-a.key"), &key).unwrap();
        let store = CertStore::load(&cert, &key).unwrap();
        assert_eq!(serving(&store), der("server-a.pem"));
        assert!(store.server_config().is_ok());

        // Mismatched pair: refused, old one kept.
        std::fs::copy(fixture("server-b.pem"), &cert).unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.contains("does not go with"), "{e}");
        assert_eq!(serving(&store), der("server-a.pem"));

        std::fs::copy(fixture("server-b.key"), &key).unwrap();
        store.reload().unwrap();
        assert_eq!(serving(&store), der("server-b.pem"));

        std::fs::write(&cert, "not a certificate").unwrap();
        let e = store.reload().unwrap_err();
        assert!(
            e.contains("c.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        assert_eq!(serving(&store), der("server-b.pem"));
    }

    #[test]
    fn bad_files_at_start_are_named() {
        let e = CertStore::load(Path::new("/nonexistent/cert.pem"), &fixture("server-a.key"))
            .unwrap_err();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
        let e = CertStore::load(&fixture("server-a.pem"), &fixture("ca.pem")).unwrap_err();
        assert!(e.contains("ca.pem"), "{e}");
        // A key file with no key in it (here the certificate itself) says what it lacks.
        let e = CertStore::load(&fixture("server-a.pem"), &fixture("server-a.pem")).unwrap_err();
        assert!(
            e.contains(
                "server-a.pem\" holds no PEM private key (expected -----BEGIN PRIVATE KEY-----"
            ),
            "{e}"
        );
    }
}
