//! User passwords, which guard only management (token creation and the REST API; git always uses
//! tokens). Stored as argon2id PHC strings — a deliberately slow hash, unlike token secrets, because
//! people choose passwords with little entropy.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hash `password` with argon2id and a fresh 16-byte salt from the OS.
pub fn hash(password: &str) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    // A login refuses a token in place of the password (tokens cannot manage tokens), so an
    // account with one as its password could never log in.
    if crate::token::parse(password).is_some() {
        return Err(
            "that is a gitgate access token, which logins refuse: choose another password".into(),
        );
    }
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the stored PHC string (constant-time inside argon2).
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct horse"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong", &h));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(h, hash("correct horse").unwrap());
        assert!(hash("").is_err());
    }

    #[test]
    fn a_token_is_refused_as_a_password() {
        let token = crate::token::generate().unwrap();
        let e = hash(token.secret.expose()).unwrap_err();
        assert!(e.contains("choose another password"), "{e}");
        assert!(!e.contains(token.secret.expose()));
    }

    /// Every hash gets a salt of 16 random bytes (22 characters of unpadded base64 in the PHC
    /// string), the size the argon2 specification recommends: a shorter one makes precomputed
    /// tables over common passwords cheaper.
    #[test]
    fn a_hash_carries_a_sixteen_byte_salt() {
        let h = hash("correct horse").unwrap();
        let parsed = PasswordHash::new(&h).unwrap();
        let mut buf = [0u8; 64];
        let salt = parsed.salt.expect("a salt").decode_b64(&mut buf).unwrap();
        assert_eq!(salt.len(), 16);
    }
}
