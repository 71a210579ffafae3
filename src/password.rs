//! User passwords, which guard only management (token creation and the REST API; git always uses
//! tokens). Stored as argon2id PHC strings — a deliberately slow hash, unlike token secrets, because
//! people choose passwords with little entropy.
//!
//! Each hash and each check works in memory of its own, 19 MiB by argon2's default (the stored
//! hash's `m=` for a check), set aside here with [`Vec::try_reserve_exact`] rather than by the
//! argon2 crate's own `vec!`: under a memory limit (`RLIMIT_AS`: `ulimit -v`, systemd's
//! `LimitAS=`) an allocation the standard library cannot make aborts the whole process, where
//! this one is an error, [`NoMemory`], which the REST API answers with a `503` and the log says.

use std::fmt;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The memory a password's hash or check needs could not be had: the process is at its memory
/// limit (or a stored hash asks for more than there is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoMemory {
    /// How much was asked for.
    pub bytes: usize,
}

impl fmt::Display for NoMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot set aside the {} MiB of memory a password's hash takes (argon2): gitgate is \
             at its memory limit (the address space of LimitAS or ulimit -v, or the machine's \
             memory)",
            self.bytes.div_ceil(1 << 20)
        )
    }
}

impl std::error::Error for NoMemory {}

/// The memory argon2 works in for `params`, zeroed; `Err` rather than an abort when it cannot be
/// had.
fn memory_for(params: &Params) -> Result<Vec<Block>, NoMemory> {
    let count = params.block_count();
    let no_memory = NoMemory {
        bytes: count.saturating_mul(Block::SIZE),
    };
    let mut blocks = Vec::new();
    blocks.try_reserve_exact(count).map_err(|_| no_memory)?;
    blocks.resize(count, Block::default());
    Ok(blocks)
}

/// Why a password could not be hashed.
#[derive(Debug)]
pub enum HashError {
    /// The password itself is refused; the words say why and what to do.
    Refused(String),
    /// Its memory could not be had.
    NoMemory(NoMemory),
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::Refused(why) => f.write_str(why),
            HashError::NoMemory(e) => write!(f, "{e}"),
        }
    }
}

impl From<HashError> for String {
    fn from(e: HashError) -> String {
        e.to_string()
    }
}

/// Hash `password` with argon2id and a fresh 16-byte salt from the OS.
pub fn hash(password: &str) -> Result<String, HashError> {
    if password.is_empty() {
        return Err(HashError::Refused("the password is empty".into()));
    }
    // A login refuses a token in place of the password (tokens cannot manage tokens), so an
    // account with one as its password could never log in.
    if crate::token::parse(password).is_some() {
        return Err(HashError::Refused(
            "that is a gitgate access token, which logins refuse: choose another password".into(),
        ));
    }
    let refused = |e: String| HashError::Refused(format!("cannot hash the password: {e}"));
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt)
        .map_err(|e| HashError::Refused(format!("no randomness from the OS: {e}")))?;
    let params = Params::default();
    let mut memory = memory_for(&params).map_err(HashError::NoMemory)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, &mut memory)
        .map_err(|e| refused(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| refused(e.to_string()))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| refused(e.to_string()))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| refused(e.to_string()))?),
    };
    Ok(phc.to_string())
}

/// The most memory a stored hash may ask a check for: 1 GiB (`m=1048576`), 54 times what
/// gitgate's hashes ask (`m=19456`, argon2's default, the only one gitgate has ever written)
/// and more than any published recommendation for a login (RFC 9106's strongest takes 2 GiB
/// for a disk's key, with one pass).
pub const MAX_MEMORY_KIB: u32 = 1 << 20;

/// The most work a stored hash may ask for, its memory times its passes (KiB): one pass over
/// [`MAX_MEMORY_KIB`], 27 times gitgate's own (`m=19456,t=2`), and as many times its time.
pub const MAX_WORK_KIB: u64 = 1 << 20;

/// The most lanes a stored hash may name (`p=`): gitgate's have 1, RFC 9106 says 4.
pub const MAX_LANES: u32 = 16;

/// Why a stored hash asks for more than any gitgate ever made or would make
/// ([`MAX_MEMORY_KIB`], [`MAX_WORK_KIB`], [`MAX_LANES`]) — a hash edited by hand (`t=4294967295`
/// would hold a password check and its thread for days, a large `m=` memory the machine may
/// not have) —, if it does.
pub fn beyond_limits(params: &Params) -> Option<String> {
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    let why = if m > MAX_MEMORY_KIB {
        format!("m={m} (KiB of memory) is over the {MAX_MEMORY_KIB} gitgate checks")
    } else if u64::from(m) * u64::from(t) > MAX_WORK_KIB {
        format!(
            "m={m},t={t} (memory times passes) is over the {MAX_WORK_KIB} gitgate checks (t={} at \
             that memory)",
            MAX_WORK_KIB / u64::from(m)
        )
    } else if p > MAX_LANES {
        format!("p={p} (lanes) is over the {MAX_LANES} gitgate checks")
    } else {
        return None;
    };
    Some(format!(
        "{why}; gitgate makes m={},t={},p={}",
        Params::DEFAULT_M_COST,
        Params::DEFAULT_T_COST,
        Params::DEFAULT_P_COST
    ))
}

/// Why gitgate does not check a stored PHC string ([`Unchecked::BeyondLimits`] or
/// [`Unchecked::Unreadable`]), if it does not: read as [`verify`] reads it, without a password
/// or any hashing, for `gitgate check`, which says so before the user's next login is refused
/// for it. A string that names no argon2 at all is not this question's (its logins are refused
/// as wrong).
pub fn stored_unchecked(stored: &str) -> Option<Unchecked> {
    read_stored(stored).err()
}

/// Why a password could not be checked, so that nothing is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchecked {
    /// Its memory could not be had.
    NoMemory(NoMemory),
    /// The stored hash asks for more than gitgate checks (see [`beyond_limits`]).
    BeyondLimits(String),
    /// The stored string names argon2 (argon2id, argon2i or argon2d) but is no hash argon2
    /// can check: a number past 2^32 - 1 or of zero passes, a version argon2 does not have, a
    /// salt or a hash missing or unreadable (edited by hand). Not a wrong password either.
    Unreadable(String),
}

impl fmt::Display for Unchecked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unchecked::NoMemory(e) => write!(f, "{e}"),
            Unchecked::BeyondLimits(why) => write!(
                f,
                "the stored password hash asks for more than gitgate checks: {why} (was it \
                 edited by hand?); set the password again (gitgate user passwd)"
            ),
            Unchecked::Unreadable(why) => write!(
                f,
                "the stored password hash names argon2 but cannot be checked: {why} (was it \
                 edited by hand?); set the password again (gitgate user passwd)"
            ),
        }
    }
}

impl From<NoMemory> for Unchecked {
    fn from(e: NoMemory) -> Self {
        Unchecked::NoMemory(e)
    }
}

/// A stored hash as a check needs it.
struct Stored {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: [u8; 64],
    salt_len: usize,
    expected: Output,
}

/// `stored` read for a check: `None` when it names no argon2 at all (a wrong password, as
/// ever); `Err` when it names argon2 but gitgate does not check it — beyond the limits, or no
/// hash argon2 can check. Before, such a string was taken for a wrong password: counted towards
/// the user's lock and said nowhere, where one a number smaller (`t=4294967295`, beyond the
/// limits) was refused unchecked and said.
fn read_stored(stored: &str) -> Result<Option<Stored>, Unchecked> {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Ok(None);
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return Ok(None);
    };
    let unreadable = |why: String| Unchecked::Unreadable(why);
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(unreadable("it has no salt or no hash".into()));
    };
    let version = match parsed.version {
        None => Version::default(),
        Some(v) => Version::try_from(v)
            .map_err(|_| unreadable(format!("v={v} is no version of argon2's (16 or 19)")))?,
    };
    let params = Params::try_from(&parsed)
        .map_err(|e| unreadable(format!("its parameters {} ({e})", parsed.params)))?;
    if let Some(why) = beyond_limits(&params) {
        return Err(Unchecked::BeyondLimits(why));
    }
    let mut salt_bytes = [0u8; 64];
    let salt_len = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| unreadable(format!("its salt ({e})")))?
        .len();
    if salt_len < argon2::MIN_SALT_LEN {
        return Err(unreadable(format!(
            "its salt of {salt_len} bytes (argon2 takes {} at least)",
            argon2::MIN_SALT_LEN
        )));
    }
    Ok(Some(Stored {
        algorithm,
        version,
        params,
        salt: salt_bytes,
        salt_len,
        expected,
    }))
}

/// Whether `password` matches the stored PHC string (compared in constant time); `Err` when
/// it could not be checked — the memory its check needs could not be had, or the hash is one
/// gitgate does not check (see [`Unchecked`]) —, so that nothing is known.
pub fn verify(password: &str, stored: &str) -> Result<bool, Unchecked> {
    let Some(Stored {
        algorithm,
        version,
        params,
        salt,
        salt_len,
        expected,
    }) = read_stored(stored)?
    else {
        return Ok(false);
    };
    let mut memory = memory_for(&params)?;
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), &salt[..salt_len], out, &mut memory)
        .map_err(|e| Unchecked::Unreadable(e.to_string()))?;
    // `Output`'s comparison takes the same time wherever the two differ.
    Ok(Output::new(out).is_ok_and(|computed| computed == expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert_eq!(verify("correct horse", &h), Ok(true));
        assert_eq!(verify("wrong", &h), Ok(false));
        assert_eq!(verify("correct horse", "not a hash"), Ok(false));
        assert_ne!(h, hash("correct horse").unwrap());
        assert!(hash("").is_err());
    }

    /// Hashes made here and by the argon2 crate's own `PasswordHasher` (what stored every
    /// password before) are checked alike, both ways, whatever their parameters within the
    /// limits.
    #[test]
    fn hashes_are_the_argon2_crates_own() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let salt = SaltString::encode_b64(&[7; 16]).unwrap();
        let theirs = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert_eq!(verify("correct horse", &theirs), Ok(true));
        assert_eq!(verify("correct hors", &theirs), Ok(false));
        let ours = hash("correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        // Other parameters, algorithm and output length, as a hash stored by another tool.
        let params = Params::new(64, 1, 2, Some(48)).unwrap();
        let other = Argon2::new(Algorithm::Argon2i, Version::V0x10, params)
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert_eq!(verify("pw", &other), Ok(true));
        assert_eq!(verify("pq", &other), Ok(false));
    }

    /// A check whose memory cannot be had is an error, not an abort of the process: here the
    /// memory of a hash asking for 4 TiB (`m=4294967295`), which the argon2 crate's own `vec!`
    /// could not get either — and aborted the test process with "memory allocation of
    /// 4398046510080 bytes failed". (A stored hash asking for it is refused before: see
    /// `a_stored_hash_beyond_what_gitgate_makes_is_not_checked`.)
    #[test]
    fn memory_that_cannot_be_had_is_an_error_not_an_abort() {
        let e = memory_for(&Params::new(u32::MAX, 1, 1, None).unwrap()).unwrap_err();
        assert_eq!(e.bytes, (u32::MAX as usize / 4 * 4) * 1024);
        let said = e.to_string();
        assert!(
            said.starts_with("cannot set aside the 4194304 MiB of memory")
                && said.contains("LimitAS"),
            "{said}"
        );
    }

    /// A stored hash asking for more than any gitgate made or would make is refused, not
    /// checked: passes by the billion (before, the check ran for days on its thread, holding a
    /// password check's place), memory by the terabyte (before, tried: refused only where the
    /// machine could not map it), lanes by the million. What gitgate makes, and hashes up to
    /// the limits (the argon2 crate's own, other variants and versions, a gigabyte of memory),
    /// are checked as ever.
    /// `gitgate check`'s question: a stored hash over the limits is named with why, gitgate's
    /// own and a string that is no hash are not.
    #[test]
    fn a_stored_hash_beyond_the_limits_is_told_without_a_password() {
        let own = hash("pw").unwrap();
        assert_eq!(stored_unchecked(&own), None);
        assert_eq!(stored_unchecked("not a hash"), None);
        let edited = own.replace("t=2", "t=4294967295");
        match stored_unchecked(&edited) {
            Some(Unchecked::BeyondLimits(why)) => assert!(why.contains("t=4294967295"), "{why}"),
            other => panic!("{edited}: {other:?}"),
        }
    }

    /// A stored string that names argon2 but that argon2 cannot check — a number past 2^32 - 1
    /// (one more than the passes `a_stored_hash_beyond_the_limits_is_told_without_a_password`
    /// edits in), none or a leading zero, too little memory for its lanes, a version argon2
    /// does not have, no salt or a salt too short — is refused unchecked and said, as one
    /// beyond the limits is, by `verify` and by `stored_unchecked` (gitgate check) alike. Before,
    /// `verify` took each for a wrong password: counted towards the user's lock, said nowhere,
    /// and `gitgate check` was silent. A string that names no argon2 (another scheme, whatever
    /// its parameters) is still a wrong password, for both.
    #[test]
    fn a_stored_argon2_string_argon2_cannot_check_is_told_not_taken_for_a_wrong_password() {
        let salt = "BwcHBwcHBwcHBwcHBwcHBw";
        let hash = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for (stored, said) in [
            (
                format!("$argon2id$v=19$m=19456,t=4294967296,p=1${salt}${hash}"),
                "t=4294967296",
            ),
            (
                format!("$argon2id$v=19$m=19456,t=0,p=1${salt}${hash}"),
                "t=0",
            ),
            (
                format!("$argon2id$v=19$m=19456,t=02,p=1${salt}${hash}"),
                "t=02",
            ),
            (format!("$argon2i$v=19$m=7,t=1,p=1${salt}${hash}"), "m=7"),
            (
                format!("$argon2d$v=20$m=19456,t=2,p=1${salt}${hash}"),
                "v=20",
            ),
            (
                format!("$argon2id$v=19$m=19456,t=2,p=1${salt}"),
                "no salt or no hash",
            ),
            (
                format!("$argon2id$v=19$m=19456,t=2,p=1$BwcHBwc${hash}"),
                "salt of 5 bytes",
            ),
        ] {
            assert!(PasswordHash::new(&stored).is_ok(), "{stored}");
            let told = match verify("pw", &stored) {
                Err(e @ Unchecked::Unreadable(_)) => e,
                other => panic!("{stored}: {other:?}"),
            };
            assert!(told.to_string().contains(said), "{stored}: {told}");
            assert!(told.to_string().contains("gitgate user passwd"), "{told}");
            assert_eq!(stored_unchecked(&stored), Some(told), "{stored}");
        }
        let other = format!("$pbkdf2$m=19456,t=4294967296,p=1${salt}${hash}");
        assert_eq!(verify("pw", &other), Ok(false));
        assert_eq!(stored_unchecked(&other), None);
    }

    #[test]
    fn a_stored_hash_beyond_what_gitgate_makes_is_not_checked() {
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::encode_b64(&[7; 16]).unwrap();
        let stored = |params: &str| {
            format!(
                "$argon2id$v=19${params}${}$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                salt.as_str()
            )
        };
        for (params, said) in [
            (
                "m=19456,t=4294967295,p=1",
                "m=19456,t=4294967295 (memory times passes)",
            ),
            ("m=19456,t=54,p=1", "t=53 at that memory"),
            (
                "m=4294967295,t=1,p=1",
                "m=4294967295 (KiB of memory) is over the 1048576",
            ),
            ("m=1048577,t=1,p=1", "m=1048577"),
            ("m=134217728,t=1,p=16777215", "m=134217728"),
            ("m=8192,t=1,p=1024", "p=1024 (lanes) is over the 16"),
        ] {
            let hash = stored(params);
            assert!(PasswordHash::new(&hash).is_ok(), "{hash}");
            let started = std::time::Instant::now();
            match verify("pw", &hash) {
                Err(e @ Unchecked::BeyondLimits(_)) => {
                    let e = e.to_string();
                    assert!(e.contains(said), "{params}: {e}");
                    assert!(e.contains("gitgate makes m=19456,t=2,p=1"), "{e}");
                    assert!(e.contains("gitgate user passwd"), "{e}");
                }
                other => panic!("{params}: {other:?}"),
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{params}"
            );
        }
        // At the limits: checked.
        let at_limits = Params::new(19456, 53, 16, None).unwrap();
        assert_eq!(beyond_limits(&at_limits), None);
        assert_eq!(
            beyond_limits(&Params::new(MAX_MEMORY_KIB, 1, 1, None).unwrap()),
            None
        );
        assert_eq!(beyond_limits(&Params::default()), None);
        let made = Argon2::new(
            Algorithm::Argon2d,
            Version::V0x10,
            Params::new(4096, 3, 4, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert_eq!(verify("pw", &made), Ok(true));
    }

    #[test]
    fn a_token_is_refused_as_a_password() {
        let token = crate::token::generate().unwrap();
        let e = hash(token.secret.expose()).unwrap_err().to_string();
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
