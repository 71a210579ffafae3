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
//!
//! The operator hears of what clients would otherwise find out alone: a chain's dates are all
//! its certificates' (an intermediate expired while the server's own is not fails every client
//! that needs it — see [`ChainValidity`]), a chain out of order or a version 1 certificate is
//! named as such rather than as rustls's `KeyMismatch`, and a client's refusal of the
//! certificate is told from other failed handshakes ([`connection_trouble`]).

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
    /// The current chain's dates; `None` if the served certificate's could not be read (then
    /// not checked).
    validity: RwLock<Option<ChainValidity>>,
    /// What is wrong with the current chain that does not keep it from being served (an
    /// intermediate out of its dates), for the log and `check`.
    warnings: RwLock<Vec<String>>,
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
    /// A certificate that has expired, or is not valid yet, is refused: every client would
    /// refuse it, while gitgate looked ready.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = read_pair(cert, key, &provider)?;
        Ok(Arc::new(CertStore {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(pair.certified)),
            validity: RwLock::new(pair.validity),
            warnings: RwLock::new(pair.warnings),
        }))
    }

    /// Read the files again and, if they make a usable pair, serve them from the next
    /// handshake on. On error (an expired certificate included) the old pair stays.
    pub fn reload(&self) -> Result<(), String> {
        let pair = read_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair.certified);
        *self.validity.write().unwrap_or_else(|p| p.into_inner()) = pair.validity;
        *self.warnings.write().unwrap_or_else(|p| p.into_inner()) = pair.warnings;
        Ok(())
    }

    /// The served chain's dates, when the served certificate's could be read.
    pub fn validity(&self) -> Option<ChainValidity> {
        *self.validity.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cert file holds the server's certificate alone, issued by a CA (not by
    /// itself): clients must then have that CA itself, not only a root above it. For `check`'s
    /// note, since a missing intermediate cannot be told from an internal CA from here.
    pub fn lone_certificate_issued_by_a_ca(&self) -> bool {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.cert.len() == 1 && issued_by_itself(&current.cert[0]) == Some(false)
    }

    /// What is wrong with the served chain without keeping it from being served.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where the key is read from, for messages.
    pub fn key_path(&self) -> &Path {
        &self.key_path
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

/// Why a private key file should be looked at: readable by every user of the machine (a
/// group, such as Debian's `ssl-cert`, is a choice; everyone is a mistake). `None` when it is
/// not, or its mode cannot be read.
pub fn key_readable_by_all(key: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key).ok()?.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then(|| {
        format!(
            "the TLS private key {} is readable by every user of this machine (mode \
             {mode:04o}): whoever reads it can pose as this server; chmod 600 it (or 640 for a \
             group gitgate's user is in)",
            key.display()
        )
    })
}

/// What a failed TLS connection says, in the operator's words: `(true, its alert)` when the
/// client refused the served certificate — its CA not trusted, an intermediate missing from the
/// cert file, a name it does not cover — which the operator must hear of; `(false, ...)` for
/// the rest (a client speaking no TLS this server speaks, one that hung up). `None` when no
/// TLS error is in `e`'s chain. rustls and hyper say these as `connection error` or
/// `peer is incompatible: SignatureAlgorithmsExtensionRequired`.
pub fn connection_trouble(e: &(dyn std::error::Error + 'static)) -> Option<(bool, String)> {
    use rustls::AlertDescription as A;
    let tls = tls_error(e)?;
    Some(match tls {
        rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA),
        ) => (true, format!("its TLS alert: {alert:?}")),
        rustls::Error::AlertReceived(alert) => (
            false,
            format!("the client ended the TLS connection (its alert: {alert:?})"),
        ),
        rustls::Error::PeerIncompatible(why) => (false, format!("{}: {why:?}", incompatible(why))),
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => (
            false,
            "the client does not speak TLS (another protocol on the HTTPS port)".into(),
        ),
        other => (false, format!("TLS: {other}")),
    })
}

/// What a client lacks that this server needs, in words: a TLS version (a TLS 1.0 or 1.1
/// client, which sends no signature algorithms), or — from a client that speaks TLS 1.2, whose
/// operator would otherwise look at its version — a cipher suite or key exchange of rustls's
/// (ring's) defaults.
fn incompatible(why: &rustls::PeerIncompatible) -> &'static str {
    use rustls::PeerIncompatible as P;
    match why {
        P::NoCipherSuitesInCommon => {
            "the client offers no cipher suite this server takes (TLS 1.3's, or TLS 1.2's ECDHE \
             with AES-GCM or ChaCha20-Poly1305, signed as the server's key can sign — ECDSA or \
             RSA; an old client offers only CBC suites or RSA key exchange)"
        }
        P::NoKxGroupsInCommon => {
            "the client offers no key exchange this server takes (ECDHE on X25519, P-256 or P-384)"
        }
        P::NoSignatureSchemesInCommon => {
            "the client accepts no signature scheme this server's key can make"
        }
        _ => "the client speaks no TLS this server does (TLS 1.2 and 1.3 only)",
    }
}

/// The rustls error in `e`'s chain, looking inside I/O errors too (whose `source` skips the
/// error they wrap).
fn tls_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if wrapped.is_some() {
            return wrapped;
        }
        next = e.source();
    }
    None
}

/// A PEM file's problem in words: rustls names the marker it missed as a list of byte values
/// (`[67, 69, 82, ...]` for `CERTIFICATE`).
pub fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section has no end line (\"{}\"): the file is cut short or damaged",
            String::from_utf8_lossy(end_marker).trim()
        ),
        Error::IllegalSectionStart { line } => format!(
            "a PEM section begins with a malformed line (\"{}\")",
            String::from_utf8_lossy(line).trim()
        ),
        Error::Base64Decode(why) => {
            format!("a PEM section's base64 is damaged ({why}): the file is not intact")
        }
        other => other.to_string(),
    }
}

/// Pure: `pem` without the UTF-8 byte order mark an editor may put before its first line
/// (Windows Notepad's "UTF-8 with BOM"). After it the first `-----BEGIN` line is no section's
/// start to the PEM reader, which skipped the file's first certificate — the server's own, whose
/// key was then said not to go with the chain — or its key, where openssl reads them.
pub fn without_byte_order_mark(pem: &[u8]) -> &[u8] {
    pem.strip_prefix(b"\xef\xbb\xbf").unwrap_or(pem)
}

/// `why` a TLS file could not be read, and, when this user may not read it, what to change. A
/// service run as an unprivileged user (`User=git`) meets keys made for root alone — certbot
/// writes its private keys 0600 root — at its start or at the SIGHUP after a renewal, where a
/// bare "Permission denied" did not say whose permission.
fn with_read_advice(why: String, path: &Path) -> String {
    let denied =
        std::fs::File::open(path).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    if denied {
        format!(
            "{why}: this process (uid {}) may not read it; check its owner and mode, and those \
             of the folders above it (a certificate tool's keys are often root's alone: give \
             gitgate's user a copy, in certbot's --deploy-hook say)",
            rustix::process::geteuid().as_raw()
        )
    } else {
        why
    }
}

/// A certificate chain and key read and checked.
struct Pair {
    certified: CertifiedKey,
    validity: Option<ChainValidity>,
    warnings: Vec<String>,
}

/// Read and check a certificate chain (PEM) and its private key (PEM: PKCS#8, PKCS#1 or SEC1),
/// and the dates of the certificates: refused outside those of the one served (the chain's
/// first); an intermediate outside its own is a warning, since a client that trusts a CA
/// above it (a cross-signed root) never looks at it.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Pair, String> {
    let named = |setting: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("[server.tls] {setting} = \"{}\": {e}", path.display())
    };
    let cert_pem = crate::small_file::read(cert)
        .map_err(|e| named("cert", cert, &with_read_advice(e, cert)))?;
    let key_pem =
        crate::small_file::read(key).map_err(|e| named("key", key, &with_read_advice(e, key)))?;
    let (cert_pem, key_pem) = (
        without_byte_order_mark(&cert_pem),
        without_byte_order_mark(&key_pem),
    );
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named("cert", cert, &pem_problem(&e)))?;
    if chain.is_empty() {
        return Err(format!(
            "[server.tls] cert = \"{}\" holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let encrypted = key_pem
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
        || key_pem
            .windows(b"Proc-Type: 4,ENCRYPTED".len())
            .any(|w| w == b"Proc-Type: 4,ENCRYPTED");
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        // A key under a passphrase: gitgate, started unattended, has none to give.
        _ if encrypted => format!(
            "[server.tls] key = \"{}\" is encrypted with a passphrase, which gitgate cannot \
             give: decrypt it into a file only gitgate's user may read (openssl pkey -in \
             ENCRYPTED.pem -out key.pem) and name that",
            key.display()
        ),
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "[server.tls] key = \"{}\" holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, \
             -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)",
            key.display()
        ),
        e => format!("[server.tls] key = \"{}\": {}", key.display(), pem_problem(&e)),
    })?;
    let now = crate::clock::now_ms();
    let served = validity(&chain[0]);
    if let Some(refused) = served.and_then(|v| v.refusal(now)) {
        // A renewed certificate added after the old one, or an old one left at the file's top:
        // the key goes with a later certificate, valid now, that is not the first's CA. "Renew
        // it" would send the operator to renew again.
        let renewed = chain.iter().enumerate().skip(1).find(|(_, der)| {
            !issued(&chain[0], der)
                && validity(der).is_some_and(|v| v.problem(now).is_none())
                && CertifiedKey::from_der(vec![(*der).clone()], private.clone_key(), provider)
                    .is_ok()
        });
        if let Some((i, _)) = renewed {
            let problem = served
                .and_then(|v| v.problem(now))
                .unwrap_or_default()
                .replacen("the certificate ", "", 1);
            return Err(format!(
                "[server.tls] cert = \"{}\": its first certificate, served as the server's, {problem} \
                 (clients refuse it), and key = \"{}\" goes with its certificate {} of {}, valid \
                 now: put that one first in place of the old (a renewed certificate added after \
                 it?)",
                cert.display(),
                key.display(),
                i + 1,
                chain.len()
            ));
        }
        return Err(format!(
            "[server.tls] cert = \"{}\": {refused}",
            cert.display()
        ));
    }
    let mut chain_validity = served.map(|validity| ChainValidity {
        validity,
        first_to_expire: 0,
        served: validity,
    });
    let mut warnings = Vec::new();
    for (i, der) in chain.iter().enumerate().skip(1) {
        let Some(dates) = validity(der) else { continue };
        if let Some(problem) = dates.problem(now) {
            warnings.push(format!(
                "[server.tls] cert = \"{}\": its certificate {} of {} (an intermediate, after \
                 the server's own): {problem}; a client that needs it to reach a CA it trusts \
                 refuses the server's certificate (put the CA's current intermediate in the \
                 file)",
                cert.display(),
                i + 1,
                chain.len(),
                problem = problem.replacen("the certificate ", "", 1)
            ));
        }
        if let Some(c) = &mut chain_validity {
            c.validity.not_before = c.validity.not_before.max(dates.not_before);
            if dates.not_after < c.validity.not_after {
                c.validity.not_after = dates.not_after;
                c.first_to_expire = i;
            }
        }
    }
    let certified = match CertifiedKey::from_der(chain.clone(), private.clone_key(), provider) {
        Ok(certified) => certified,
        Err(e) => return Err(pair_problem(cert, key, &chain, &private, provider, &e)),
    };
    Ok(Pair {
        certified,
        validity: chain_validity,
        warnings,
    })
}

/// Why a chain and key that each read well cannot be served, in the operator's terms: rustls
/// says `KeyMismatch` for a chain in the wrong order (the key goes with a certificate further
/// down the file), and names a version 1 certificate only by its error's type name.
fn pair_problem(
    cert: &Path,
    key: &Path,
    chain: &[CertificateDer<'static>],
    private: &PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    e: &rustls::Error,
) -> String {
    let (cert, key) = (cert.display(), key.display());
    // rustls says "unexpected error: failed to parse private key as RSA, ECDSA, or EdDSA" for
    // a key it reads but cannot sign with, as a 1024-bit RSA key or a P-521 one.
    if provider
        .key_provider
        .load_private_key(private.clone_key())
        .is_err()
    {
        let kind = key_kind(private).unwrap_or_else(|| "a key of another kind".to_string());
        return format!(
            "[server.tls] key = \"{key}\" is {kind}, which gitgate cannot sign with (rustls, \
             with ring, signs with keys of RSA of 2048 to 4096 bits, ECDSA on P-256 or P-384, or \
             Ed25519): make a key of one of those (`openssl genpkey -algorithm EC -pkeyopt \
             ec_paramgen_curve:P-256`) and a certificate for it"
        );
    }
    let said = e.to_string();
    if said.contains("UnsupportedCertVersion") {
        return format!(
            "[server.tls] cert = \"{cert}\": an X.509 version 1 certificate (made without \
             extensions, e.g. by `openssl x509 -req` without `-extfile`), which TLS clients and \
             rustls do not take from a server: make it again as version 3, with a \
             subjectAltName naming the server"
        );
    }
    if matches!(e, rustls::Error::InconsistentKeys(_)) {
        let goes_with = chain.iter().enumerate().skip(1).find(|(_, der)| {
            CertifiedKey::from_der(vec![(*der).clone()], private.clone_key(), provider).is_ok()
        });
        // The key of the CA that issued the served certificate (its intermediate's, named in
        // place of the server's own): the file is in the right order, and putting that CA
        // first, as "the wrong order" would have it, serves a CA's certificate.
        if let Some((i, _)) = goes_with.filter(|(_, der)| issued(&chain[0], der)) {
            return format!(
                "[server.tls] key = \"{key}\" is the private key of cert = \"{cert}\"'s \
                 certificate {} of {}, the CA that issued the server's certificate, not of the \
                 server's own (which comes first, as it should): name the server's key, made \
                 with its certificate (certbot's privkey.pem)",
                i + 1,
                chain.len()
            );
        }
        if let Some((i, _)) = goes_with {
            return format!(
                "[server.tls] cert = \"{cert}\": its certificates are in the wrong order: key = \
                 \"{key}\" goes with its certificate {} of {}, and the server's own certificate \
                 must come first, then the intermediates (the order of a fullchain.pem)",
                i + 1,
                chain.len()
            );
        }
        // rustls's own words ("keys may not be consistent: KeyMismatch") say neither which
        // key nor what to do.
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "it is not the private key of the certificate's public key"
            }
            _ => "it cannot be told to be the private key of the certificate's public key",
        };
        return format!(
            "[server.tls] key = \"{key}\" does not go with cert = \"{cert}\": {why}; name the \
             key made with this certificate (after a renewal, the new pair together, as \
             certbot's fullchain.pem and privkey.pem)"
        );
    }
    format!("[server.tls] cert = \"{cert}\" cannot be served with key = \"{key}\": {e}")
}

/// What kind of key a private key is, in words (`an RSA key of 1024 bits`, `an ECDSA key on
/// the curve P-521`), read from its DER: PKCS#8's algorithm, PKCS#1's modulus, SEC1's curve.
/// `None` when it cannot be told.
fn key_kind(private: &PrivateKeyDer<'_>) -> Option<String> {
    // Object identifiers' contents (RFC 8017, RFC 5480, RFC 8410, RFC 3279).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
    const X25519: &[u8] = &[0x2b, 0x65, 0x6e];
    const X448: &[u8] = &[0x2b, 0x65, 0x6f];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    const ED448: &[u8] = &[0x2b, 0x65, 0x71];
    match private {
        PrivateKeyDer::Pkcs1(k) => rsa_kind(k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => {
            let (key, _) = der_take(k.secret_sec1_der(), 0x30)?;
            let rest = der_take(key, 0x02)?.1; // version
            let rest = der_take(rest, 0x04)?.1; // privateKey
            let (parameters, _) = der_take(rest, 0xa0)?;
            Some(ec_kind(der_take(parameters, 0x06)?.0))
        }
        PrivateKeyDer::Pkcs8(k) => {
            let (info, _) = der_take(k.secret_pkcs8_der(), 0x30)?;
            let rest = der_take(info, 0x02)?.1; // version
            let (algorithm, rest) = der_take(rest, 0x30)?;
            let (oid, parameters) = der_take(algorithm, 0x06)?;
            let named = |words: &str| Some(words.to_string());
            match oid {
                RSA => rsa_kind(der_take(rest, 0x04)?.0),
                RSA_PSS => named("an RSA-PSS key (one bound to RSA-PSS signatures)"),
                EC => Some(ec_kind(der_take(parameters, 0x06)?.0)),
                DSA => named("a DSA key"),
                X25519 | X448 => named("a key for key agreement (X25519 or X448), not signatures"),
                ED25519 => named("an Ed25519 key"),
                ED448 => named("an Ed448 key"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `an RSA key of N bits`, N read from a PKCS#1 `RSAPrivateKey`'s modulus.
fn rsa_kind(pkcs1: &[u8]) -> Option<String> {
    let (key, _) = der_take(pkcs1, 0x30)?;
    let rest = der_take(key, 0x02)?.1; // version
    let (modulus, _) = der_take(rest, 0x02)?;
    let first = modulus.iter().position(|&b| b != 0)?;
    let bits = (modulus.len() - first) * 8 - modulus[first].leading_zeros() as usize;
    Some(format!("an RSA key of {bits} bits"))
}

/// An ECDSA key on the named curve whose object identifier is `curve` (RFC 5480, SEC 2).
fn ec_kind(curve: &[u8]) -> String {
    let name = match curve {
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07] => "P-256",
        [0x2b, 0x81, 0x04, 0x00, 0x22] => "P-384",
        [0x2b, 0x81, 0x04, 0x00, 0x23] => "P-521",
        [0x2b, 0x81, 0x04, 0x00, 0x0a] => "secp256k1",
        _ => return "an ECDSA key on a curve other than P-256 and P-384".to_string(),
    };
    format!("an ECDSA key on the curve {name}")
}

/// When a certificate may be used (RFC 5280 §4.1.2.5), in epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Why a served certificate is refused at `now`, with what to do: renew one that expired;
    /// one not valid yet is most often this machine's clock (a VM resumed from a snapshot, a
    /// dead RTC), not the certificate.
    pub fn refusal(&self, now: i64) -> Option<String> {
        let problem = self.problem(now)?;
        let advice = if now < self.not_before {
            "is this machine's clock wrong, or the certificate issued for later?"
        } else {
            "renew it"
        };
        Some(format!("{problem}; clients refuse it ({advice})"))
    }

    /// Why a certificate cannot be served at `now`: clients refuse one that has expired or is
    /// not valid yet, whatever else is right with it.
    pub fn problem(&self, now: i64) -> Option<String> {
        if now >= self.not_after {
            Some(format!(
                "the certificate expired on {}",
                crate::clock::datetime(self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "the certificate is not valid before {}",
                crate::clock::datetime(self.not_before)
            ))
        } else {
            None
        }
    }
}

/// The dates of a certificate chain: when all of its certificates are valid (those whose dates
/// could be read, an intermediate out of them included: the chain's expiry is then past, for
/// an alert on the metric), which expires first (0: the server's own), and the served
/// certificate's own dates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainValidity {
    pub validity: Validity,
    pub first_to_expire: usize,
    pub served: Validity,
}

/// Pure: `left` milliseconds (more than 0) as the warning says it: hours rounded up, so that
/// "in 0 hours" is never said of a certificate still valid; minutes in the last hour, "1 hour"
/// when exactly one is left.
fn time_left(left: i64) -> String {
    const HOUR: i64 = 3_600_000;
    const MINUTE: i64 = 60_000;
    if left < HOUR {
        let minutes = (left + MINUTE - 1) / MINUTE;
        return format!("in {minutes} minute{}", if minutes == 1 { "" } else { "s" });
    }
    let hours = (left + HOUR - 1) / HOUR;
    format!("in {hours} hour{}", if hours == 1 { "" } else { "s" })
}

/// How long before its expiry the served chain is warned about.
const RENEWAL_WARNING_MS: i64 = 14 * 24 * 3600 * 1000;

impl ChainValidity {
    /// What the log (and `check`) says of the chain's expiry at `now` (epoch milliseconds):
    /// that it has passed (`true`: an error), that it is near (a warning), or nothing.
    pub fn expiry_note(&self, now: i64) -> Option<(bool, String)> {
        let (which, at) = (
            self.first_to_expire(),
            crate::clock::datetime(self.validity.not_after),
        );
        let left = self.validity.not_after - now;
        if left <= 0 {
            let refused_by = if self.first_to_expire == 0 {
                "every client refuses it"
            } else {
                "a client that needs it refuses the server's certificate"
            };
            Some((
                true,
                format!("{which} expired on {at}: {refused_by}; renew it, then send SIGHUP"),
            ))
        } else if left < RENEWAL_WARNING_MS {
            Some((
                false,
                format!(
                    "{which} expires on {at} ({}): renew it, then send SIGHUP",
                    time_left(left)
                ),
            ))
        } else {
            None
        }
    }

    /// The certificate that expires first, in words.
    pub fn first_to_expire(&self) -> String {
        match self.first_to_expire {
            0 => "the TLS certificate".into(),
            i => format!(
                "the TLS certificate file's certificate {} (an intermediate)",
                i + 1
            ),
        }
    }
}

/// The validity of a DER certificate, read from its `tbsCertificate`: rustls checks the dates
/// of the certificates a peer sends, not of the one gitgate serves. `None` for anything that
/// is not a certificate as RFC 5280 lays it out.
pub fn validity(der: &[u8]) -> Option<Validity> {
    let (_, dates, _) = issuer_dates_subject(der)?;
    let (not_before, rest) = der_time(dates)?;
    let (not_after, rest) = der_time(rest)?;
    rest.is_empty().then_some(Validity {
        not_before,
        not_after,
    })
}

/// Whether a DER certificate names itself as its issuer (a CA's root, or a self-signed
/// certificate): its issuer and subject `Name`s are the same bytes. `None` for anything that is
/// not a certificate as RFC 5280 lays it out.
pub fn issued_by_itself(der: &[u8]) -> Option<bool> {
    let (issuer, _, subject) = issuer_dates_subject(der)?;
    Some(issuer == subject)
}

/// Pure: whether DER certificate `issuer` is the one that issued DER certificate `cert` as
/// their names say (`cert`'s issuer `Name` is `issuer`'s subject, byte for byte), `cert` not
/// being issued by itself. Names only, no signature checked: enough to tell a CA's key named
/// in place of the server's from a chain in the wrong order.
fn issued(cert: &[u8], issuer: &[u8]) -> bool {
    match (issuer_dates_subject(cert), issuer_dates_subject(issuer)) {
        (Some((named_issuer, _, subject)), Some((_, _, issuers_subject))) => {
            named_issuer != subject && named_issuer == issuers_subject
        }
        _ => false,
    }
}

/// A DER certificate's issuer `Name`, validity and subject `Name` (each element's contents).
/// Only the few fields before them are walked (version, serial number, signature algorithm).
fn issuer_dates_subject(der: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (cert, _) = der_take(der, 0x30)?;
    let (tbs, _) = der_take(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_take(rest, 0xa0)?.1; // [0] version
    }
    rest = der_take(rest, 0x02)?.1; // serialNumber
    rest = der_take(rest, 0x30)?.1; // signature AlgorithmIdentifier
    let (issuer, rest) = der_take(rest, 0x30)?;
    let (dates, rest) = der_take(rest, 0x30)?;
    let (subject, _) = der_take(rest, 0x30)?;
    Some((issuer, dates, subject))
}

/// One DER element with tag `tag` at the start of `input`: (its contents, what follows).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let n = usize::from(len & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes.iter().fold(0usize, |l, &b| (l << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`),
/// the two forms RFC 5280 allows, as epoch milliseconds; and what follows.
fn der_time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (text, rest) = match input.first()? {
        0x17 => der_take(input, 0x17)?,
        0x18 => der_take(input, 0x18)?,
        _ => return None,
    };
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest_digits) = match digits.len() {
        12 => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest_digits.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let midnight = crate::clock::date_ms(year, month, day)?;
    Some((midnight + ((hour * 60 + minute) * 60 + second) * 1000, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM file cut short is said in words, its marker named as text (rustls gives the
    /// marker's bytes as numbers).
    #[test]
    fn a_pem_file_cut_short_is_said_in_words() {
        let whole = std::fs::read(fixture("ca.pem")).unwrap();
        let cut = &whole[..300];
        let e = CertificateDer::pem_slice_iter(cut)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        let said = pem_problem(&e);
        assert!(
            said.contains("CERTIFICATE") && said.contains("cut short") && !said.contains("67, 69"),
            "{said}"
        );
    }

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
        assert!(
            e.contains("does not go with")
                && e.contains("it is not the private key of the certificate's public key")
                && !e.contains("KeyMismatch"),
            "{e}"
        );
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
    fn a_certificates_dates_are_read_in_both_forms() {
        let at = |s: &str| {
            let (date, time) = s.split_once('T').unwrap();
            let secs: Vec<i64> = time.split(':').map(|p| p.parse().unwrap()).collect();
            crate::clock::parse_date(date).unwrap()
                + ((secs[0] * 60 + secs[1]) * 60 + secs[2]) * 1000
        };
        // UTCTime before 2050, GeneralizedTime from then on (`openssl x509 -dates`).
        assert_eq!(
            validity(&der("server-a.pem")),
            Some(Validity {
                not_before: at("2026-11-28T00:14:00"),
                not_after: at("2126-11-04T00:14:00"),
            })
        );
        let expired = validity(&der("expired.pem")).unwrap();
        assert_eq!(
            (expired.not_before, expired.not_after),
            (at("2020-01-01T00:00:00"), at("2020-01-31T00:00:00"))
        );
        assert_eq!(
            expired.problem(at("2026-12-02T00:00:00")).unwrap(),
            "the certificate expired on 2020-01-31T00:00:00Z"
        );
        assert_eq!(
            expired.problem(at("2019-12-31T23:59:59")).unwrap(),
            "the certificate is not valid before 2020-01-01T00:00:00Z"
        );
        assert_eq!(expired.problem(at("2020-01-15T12:00:00")), None);
        // Not a certificate, or one cut short: no dates, never a panic.
        let whole = der("server-a.pem");
        for cut in [0, 1, 2, 10, 100, whole.len() / 2] {
            assert_eq!(validity(&whole[..cut]), None, "{cut}");
        }
        assert_eq!(validity(b"\x30\x84\xff\xff\xff\xff"), None);
        for bad in [
            &b"\x17\x0d2001010000Z"[..],
            b"\x17\x0d201301000000Z",
            b"\x18\x0f20200101000060Z",
        ] {
            assert_eq!(der_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_expired_certificate_is_refused_at_start_and_on_reload() {
        let e = CertStore::load(&fixture("expired.pem"), &fixture("expired.key")).unwrap_err();
        assert!(
            e.contains("expired.pem") && e.contains("expired on 2020-01-31"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::copy(fixture("server-a.pem"), &cert).unwrap();
        std::fs::copy(fixture("server-a.key"), &key).unwrap();
        let store = CertStore::load(&cert, &key).unwrap();
        std::fs::copy(fixture("expired.pem"), &cert).unwrap();
        std::fs::copy(fixture("expired.key"), &key).unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.contains("expired on 2020-01-31"), "{e}");
        assert_eq!(serving(&store), der("server-a.pem"));
        assert_eq!(
            store.validity().map(|c| c.validity),
            validity(&der("server-a.pem"))
        );
    }

    /// A chain file put together from the fixtures, in `dir`.
    fn chain_of(dir: &Path, parts: &[&str]) -> PathBuf {
        let path = dir.join("chain.pem");
        let pem: Vec<u8> = parts
            .iter()
            .flat_map(|name| std::fs::read(fixture(name)).unwrap())
            .collect();
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// The chain's dates are all its certificates': one that expires before the server's own
    /// is the one the metric and the warnings name, and an intermediate out of its dates is
    /// served with a warning (a client trusting a CA above it never looks at it).
    #[test]
    fn an_intermediate_counts_for_the_chains_dates() {
        let dir = tempfile::tempdir().unwrap();
        let key = fixture("server-a.key");
        let store =
            CertStore::load(&chain_of(dir.path(), &["server-a.pem", "ca.pem"]), &key).unwrap();
        let chain = store.validity().unwrap();
        // The test CA was made a second before the server's certificate.
        assert_eq!(chain.first_to_expire, 1);
        // Valid from the later start to the earlier end.
        assert_eq!(
            (chain.validity.not_before, chain.validity.not_after),
            (
                validity(&der("server-a.pem")).unwrap().not_before,
                validity(&der("ca.pem")).unwrap().not_after
            )
        );
        assert_eq!(
            chain.first_to_expire(),
            "the TLS certificate file's certificate 2 (an intermediate)"
        );
        assert!(store.warnings().is_empty());

        let cert = chain_of(dir.path(), &["server-a.pem", "expired.pem"]);
        let store = CertStore::load(&cert, &key).unwrap();
        let warnings = store.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("its certificate 2 of 2 (an intermediate")
                && warnings[0].contains("expired on 2020-01-31T00:00:00Z"),
            "{warnings:?}"
        );
        // Counted in the chain's dates, which an alert on the metric then sees as past.
        let chain = store.validity().unwrap();
        assert_eq!(chain.first_to_expire, 1);
        assert_eq!(
            chain.validity.not_after,
            validity(&der("expired.pem")).unwrap().not_after
        );
        assert_eq!(chain.served, validity(&der("server-a.pem")).unwrap());
    }

    /// A chain in the wrong order, the server's certificate after its CA's, is said to be
    /// that, not a key that does not go with it; and a version 1 certificate is named so.
    #[test]
    fn a_chain_out_of_order_and_a_version_1_certificate_are_named_for_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let cert = chain_of(dir.path(), &["ca.pem", "server-a.pem"]);
        let e = CertStore::load(&cert, &fixture("server-a.key")).unwrap_err();
        assert!(
            e.contains("in the wrong order")
                && e.contains("goes with its certificate 2 of 2")
                && !e.contains("KeyMismatch"),
            "{e}"
        );
        // A key that goes with none of them is still that.
        let e = CertStore::load(&cert, &fixture("server-b.key")).unwrap_err();
        assert!(e.contains("does not go with"), "{e}");
        let e = CertStore::load(&fixture("version1.pem"), &fixture("version1.key")).unwrap_err();
        assert!(
            e.contains("an X.509 version 1 certificate") && !e.contains("UnsupportedCertVersion"),
            "{e}"
        );
    }

    /// The key of the CA that issued the server's certificate, named with a chain in the right
    /// order, is said to be that CA's: not "the wrong order", whose way out (the CA's
    /// certificate first) would serve a CA's certificate.
    #[test]
    fn the_issuing_cas_key_named_for_the_servers_is_not_said_to_be_the_wrong_order() {
        let dir = tempfile::tempdir().unwrap();
        let cert = chain_of(dir.path(), &["own-ca-leaf.pem", "own-ca.pem"]);
        let e = CertStore::load(&cert, &fixture("own-ca.key")).unwrap_err();
        assert!(
            e.contains("is the private key of")
                && e.contains("certificate 2 of 2, the CA that issued the server's certificate")
                && !e.contains("wrong order"),
            "{e}"
        );
    }

    /// A renewed certificate added after the expired one it replaces, the key being the new
    /// one's: said so, not "renew it" of a certificate already renewed.
    #[test]
    fn an_expired_certificate_before_the_renewed_one_is_said_to_be_out_of_place() {
        let dir = tempfile::tempdir().unwrap();
        let cert = chain_of(dir.path(), &["expired.pem", "server-a.pem", "ca.pem"]);
        let e = CertStore::load(&cert, &fixture("server-a.key")).unwrap_err();
        assert!(
            e.contains("its first certificate, served as the server's, expired on 2020-01-31")
                && e.contains("goes with its certificate 2 of 3")
                && !e.contains("renew it"),
            "{e}"
        );
        // Expired with no renewed one in the file: renew it.
        let cert = chain_of(dir.path(), &["expired.pem", "server-a.pem"]);
        let e = CertStore::load(&cert, &fixture("expired.key")).unwrap_err();
        assert!(e.contains("(renew it)"), "{e}");
    }

    /// A chain and key saved with a UTF-8 byte order mark (an editor's "UTF-8 with BOM") are
    /// read as openssl reads them: the first certificate is the server's, not skipped.
    #[test]
    fn files_saved_with_a_byte_order_mark_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let with_bom = |name: &str| {
            let path = dir.path().join(name);
            let mut bytes = b"\xef\xbb\xbf".to_vec();
            bytes.extend(std::fs::read(fixture(name)).unwrap());
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let chain = chain_of(dir.path(), &["server-a.pem", "ca.pem"]);
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend(std::fs::read(&chain).unwrap());
        std::fs::write(&chain, bytes).unwrap();
        let store = CertStore::load(&chain, &with_bom("server-a.key")).unwrap();
        assert_eq!(serving(&store), der("server-a.pem"));
        assert_eq!(store.current.read().unwrap().cert.len(), 2);
    }

    #[test]
    fn a_refused_certificate_is_told_from_other_tls_trouble() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let said = |e: &(dyn std::error::Error + 'static)| connection_trouble(e);
        let refused = io(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        assert_eq!(
            said(&refused),
            Some((true, "its TLS alert: UnknownCA".into()))
        );
        // Under another error, as hyper's `connection error` holds it.
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connection error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(said(&Outer(refused)).map(|t| t.0), Some(true));
        let gone = io(rustls::Error::AlertReceived(
            rustls::AlertDescription::CloseNotify,
        ));
        assert_eq!(said(&gone).map(|t| t.0), Some(false));
        let old = io(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::SignatureAlgorithmsExtensionRequired,
        ));
        let (refused, words) = said(&old).unwrap();
        assert!(
            !refused && words.contains("TLS 1.2 and 1.3 only"),
            "{words}"
        );
        // A TLS 1.2 client with only old cipher suites, or key exchanges, speaks TLS 1.2: what
        // it lacks is said instead.
        for (why, lacks) in [
            (
                rustls::PeerIncompatible::NoCipherSuitesInCommon,
                "the client offers no cipher suite this server takes",
            ),
            (
                rustls::PeerIncompatible::NoKxGroupsInCommon,
                "the client offers no key exchange this server takes (ECDHE on X25519, P-256 or P-384)",
            ),
        ] {
            let (refused, words) = said(&io(rustls::Error::PeerIncompatible(why))).unwrap();
            assert!(
                !refused && words.contains(lacks) && !words.contains("speaks no TLS"),
                "{words}"
            );
        }
        assert_eq!(said(&std::io::Error::other("plain")), None);
    }

    #[test]
    fn a_lone_certificate_issued_by_a_ca_is_told_from_a_chain_and_a_self_signed_one() {
        assert_eq!(issued_by_itself(&der("server-a.pem")), Some(false));
        assert_eq!(issued_by_itself(&der("ca.pem")), Some(true));
        assert_eq!(issued_by_itself(&der("expired.pem")), Some(true));
        assert_eq!(issued_by_itself(&der("version1.pem")), Some(true));
        assert_eq!(issued_by_itself(b"\x30\x03\x30\x01\x00"), None);
        let lone = CertStore::load(&fixture("server-a.pem"), &fixture("server-a.key")).unwrap();
        assert!(lone.lone_certificate_issued_by_a_ca());
        let dir = tempfile::tempdir().unwrap();
        let chain = chain_of(dir.path(), &["server-a.pem", "ca.pem"]);
        let whole = CertStore::load(&chain, &fixture("server-a.key")).unwrap();
        assert!(!whole.lone_certificate_issued_by_a_ca());
        let own = CertStore::load(&fixture("expired.pem"), &fixture("expired.key"));
        assert!(own.is_err(), "expired: refused before anything else");
    }

    /// The log says nothing of a chain far from its expiry, warns within 14 days of it naming
    /// the certificate that expires first, and says it is an error once it has passed (a
    /// certificate served for months can expire while served).
    #[test]
    fn a_served_chains_expiry_is_said_as_it_nears_and_passes() {
        let day = 24 * 3600 * 1000;
        let validity = Validity {
            not_before: 0,
            not_after: 100 * day,
        };
        let chain = |first_to_expire| ChainValidity {
            validity,
            first_to_expire,
            served: validity,
        };
        assert_eq!(chain(0).expiry_note(80 * day), None);
        let (passed, note) = chain(0).expiry_note(90 * day).unwrap();
        assert!(!passed);
        assert_eq!(
            note,
            "the TLS certificate expires on 1970-04-11T00:00:00Z (in 240 hours): renew it, then \
             send SIGHUP"
        );
        // Its last hour in minutes, never "in 0 hours"; an hour and a bit is 2 hours.
        let hour = 3_600_000;
        let (_, note) = chain(0).expiry_note(100 * day - hour / 2).unwrap();
        assert!(note.contains("(in 30 minutes)"), "{note}");
        let (_, note) = chain(0).expiry_note(100 * day - 1).unwrap();
        assert!(note.contains("(in 1 minute)"), "{note}");
        let (_, note) = chain(0).expiry_note(100 * day - hour - 1).unwrap();
        assert!(note.contains("(in 2 hours)"), "{note}");
        // An hour exactly is one hour, not "1 hours".
        let (_, note) = chain(0).expiry_note(100 * day - hour).unwrap();
        assert!(note.contains("(in 1 hour)"), "{note}");
        let (passed, note) = chain(1).expiry_note(100 * day).unwrap();
        assert!(passed);
        assert!(
            note.starts_with(
                "the TLS certificate file's certificate 2 (an intermediate) expired on \
                 1970-04-11T00:00:00Z: a client that needs it refuses the server's certificate"
            ),
            "{note}"
        );
    }

    #[test]
    fn a_certificate_not_valid_yet_asks_about_the_clock_and_an_expired_one_to_renew() {
        let v = Validity {
            not_before: 1_000,
            not_after: 2_000,
        };
        assert_eq!(v.refusal(1_500), None);
        let early = v.refusal(999).unwrap();
        assert!(
            early.contains("not valid before") && early.contains("is this machine's clock wrong"),
            "{early}"
        );
        assert!(!early.contains("renew"), "{early}");
        let late = v.refusal(2_000).unwrap();
        assert!(
            late.contains("expired on") && late.ends_with("(renew it)"),
            "{late}"
        );
    }

    #[test]
    fn a_key_readable_by_every_user_is_said() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::copy(fixture("server-a.key"), &key).unwrap();
        for (mode, said) in [(0o644, true), (0o604, true), (0o640, false), (0o600, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let warning = key_readable_by_all(&key);
            assert_eq!(warning.is_some(), said, "{mode:o}: {warning:?}");
            if let Some(w) = warning {
                assert!(
                    w.contains(&format!("mode {mode:04o}")) && w.contains("chmod 600"),
                    "{w}"
                );
            }
        }
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
        // A key under a passphrase is said to be one, with how to take it off.
        let e = CertStore::load(&fixture("server-a.pem"), &fixture("server-a-encrypted.key"))
            .unwrap_err();
        assert!(
            e.contains("is encrypted with a passphrase") && e.contains("openssl pkey"),
            "{e}"
        );
    }

    /// A key of a kind rustls (with ring) cannot sign with is named for what it is, with the
    /// kinds it can, rather than as rustls's "unexpected error: failed to parse private key as
    /// RSA, ECDSA, or EdDSA", which a 1024-bit RSA key or a P-521 one is.
    #[test]
    fn a_key_of_a_kind_rustls_cannot_sign_with_is_named() {
        for (cert, key, kind) in [
            ("rsa-1024.pem", "rsa-1024.key", "an RSA key of 1024 bits"),
            (
                "rsa-1024.pem",
                "rsa-1024-pkcs1.key",
                "an RSA key of 1024 bits",
            ),
            ("p521.pem", "p521.key", "an ECDSA key on the curve P-521"),
            (
                "p521.pem",
                "p521-sec1.key",
                "an ECDSA key on the curve P-521",
            ),
            ("server-a.pem", "ed448.key", "an Ed448 key"),
        ] {
            let e = CertStore::load(&fixture(cert), &fixture(key)).unwrap_err();
            assert!(
                e.contains(&format!(
                    "{key}\" is {kind}, which gitgate cannot sign with"
                )) && e.contains("RSA of 2048 to 4096 bits, ECDSA on P-256 or P-384, or Ed25519")
                    && !e.contains("unexpected error"),
                "{e}"
            );
        }
    }

    /// Clients that speak HTTP/2 are offered it first, and HTTP/1.1 is there for the rest:
    /// the server picks the first protocol of its own list that the client offers.
    #[test]
    fn alpn_offers_h2_before_http_1_1() {
        let store = CertStore::load(&fixture("server-a.pem"), &fixture("server-a.key")).unwrap();
        let config = store.server_config().unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    /// A reload that takes the new files takes their dates and warnings too: the metric and
    /// `check` speak of the chain served now, not of the one before.
    #[test]
    fn a_reload_replaces_the_chains_dates_and_warnings_with_the_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::copy(fixture("server-a.key"), &key).unwrap();
        let cert = chain_of(dir.path(), &["server-a.pem"]);
        let store = CertStore::load(&cert, &key).unwrap();
        assert!(store.warnings().is_empty());
        assert_eq!(store.validity().unwrap().first_to_expire, 0);

        // Now with an intermediate out of its dates: served, with a warning, and the
        // chain's end is the intermediate's.
        chain_of(dir.path(), &["server-a.pem", "expired.pem"]);
        store.reload().unwrap();
        assert_eq!(store.warnings().len(), 1, "{:?}", store.warnings());
        let chain = store.validity().unwrap();
        assert_eq!(chain.first_to_expire, 1);
        assert_eq!(
            chain.validity.not_after,
            validity(&der("expired.pem")).unwrap().not_after
        );

        // And back: the warning goes, and the dates are the server's own again.
        chain_of(dir.path(), &["server-a.pem"]);
        store.reload().unwrap();
        assert!(store.warnings().is_empty(), "{:?}", store.warnings());
        assert_eq!(
            store.validity().map(|c| c.validity),
            validity(&der("server-a.pem"))
        );
    }

    /// An intermediate that expires at the same moment as the server's own certificate does
    /// not take its place in what is said: the server's own is the one every client refuses.
    #[test]
    fn an_intermediate_expiring_with_the_servers_own_certificate_is_not_named_first() {
        let dir = tempfile::tempdir().unwrap();
        let cert = chain_of(dir.path(), &["server-a.pem", "server-a.pem"]);
        let store = CertStore::load(&cert, &fixture("server-a.key")).unwrap();
        let chain = store.validity().unwrap();
        assert_eq!(chain.first_to_expire, 0);
        assert_eq!(chain.first_to_expire(), "the TLS certificate");
    }

    /// The renewal warning begins exactly 14 days before the chain's end: not a millisecond
    /// sooner.
    #[test]
    fn the_renewal_warning_begins_fourteen_days_before_the_end() {
        let day = 24 * 3600 * 1000;
        let validity = Validity {
            not_before: 0,
            not_after: 100 * day,
        };
        let chain = ChainValidity {
            validity,
            first_to_expire: 0,
            served: validity,
        };
        assert_eq!(chain.expiry_note(86 * day), None);
        let (passed, note) = chain.expiry_note(86 * day + 1).unwrap();
        assert!(!passed);
        assert!(note.contains("expires on 1970-04-11T00:00:00Z"), "{note}");
    }

    /// A time of day past 23:59:59 is no time RFC 5280 allows: such dates are not read.
    #[test]
    fn an_hour_of_24_is_not_read_as_the_next_day() {
        assert_eq!(der_time(b"\x17\x0d200101240000Z"), None);
        assert_eq!(der_time(b"\x18\x0f20200101240000Z"), None);
        assert!(der_time(b"\x17\x0d200101235959Z").is_some());
    }

    /// A key in the older OpenSSL form under a passphrase (`Proc-Type: 4,ENCRYPTED` in its
    /// PEM head) is said to be encrypted too, not damaged.
    #[test]
    fn a_key_encrypted_in_the_traditional_form_is_said_to_be_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(
            &key,
            "-----BEGIN RSA PRIVATE KEY-----\n\
             Proc-Type: 4,ENCRYPTED\n\
             DEK-Info: AES-128-CBC,0123456789ABCDEF0123456789ABCDEF\n\
             \n\
             MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n\
             -----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = CertStore::load(&fixture("server-a.pem"), &key).unwrap_err();
        assert!(
            e.contains("is encrypted with a passphrase") && e.contains("openssl pkey"),
            "{e}"
        );
    }
}
