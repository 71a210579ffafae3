//! The token secret format: generation, recognition and hashing.
//!
//! A secret looks like
//!
//! ```text
//! ggt_abcdefgh2345_<43 chars base64url: 32 random bytes>_<6-char checksum>
//! ```
//!
//! (67 characters, always). Each part has a reason:
//! - the fixed **prefix** `ggt_` lets secret scanners (and people) recognise a gitgate token;
//! - the **id** (12 chars of lowercase base32, 60 random bits) is the store's lookup key, so
//!   authentication is one indexed read plus one hash comparison, never a scan;
//! - the **body** is 256 bits from the operating system's RNG, so the secret cannot be guessed;
//! - the **checksum** is the first 30 bits of SHA-256 over everything before the final `_`,
//!   written as 6 lowercase base32 chars. It lets a scanner tell a real token from a look-alike
//!   offline, and lets [`parse`] drop typos and garbage before they reach the store. It is not a
//!   security feature: anyone can compute it.
//!
//! Parsing goes by fixed positions rather than by splitting on `_`, because the base64url body
//! may itself contain `_` and `-`.
//!
//! Only [`hash`] of a secret is stored. SHA-256 (fast, unsalted) is the right choice here and a
//! password hash like argon2 is not: the secret has 256 bits of entropy, so there is nothing to
//! brute-force and nothing for a salt to protect, and a fast hash keeps authentication in
//! microseconds. (Users' *passwords* are low-entropy and use argon2 elsewhere.)

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::credentials::Secret;

/// Every gitgate secret starts with this.
pub const PREFIX: &str = "ggt_";

/// Length of a token id.
pub const ID_LEN: usize = 12;
/// Bytes of OS randomness in a secret.
const BODY_BYTES: usize = 32;
/// Length of the base64url (no padding) encoding of [`BODY_BYTES`].
const BODY_LEN: usize = 43;
/// Length of the checksum.
const CHECKSUM_LEN: usize = 6;

const ID_START: usize = PREFIX.len();
const ID_END: usize = ID_START + ID_LEN;
const BODY_START: usize = ID_END + 1;
const BODY_END: usize = BODY_START + BODY_LEN;
const CHECKSUM_START: usize = BODY_END + 1;

/// Total length of a secret: 67.
pub const SECRET_LEN: usize = CHECKSUM_START + CHECKSUM_LEN;

/// Lowercase RFC 4648 base32 alphabet: no `0/o` or `1/l` confusion, safe in URLs and file names.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn is_base32(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'2'..=b'7')
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A byte's alphabets, looked up at once: [`IN_BASE32`], [`IN_BASE64URL`], or both. [`parse`]
/// checks the 61 characters of every secret a request presents against them, a table lookup
/// each rather than a few comparisons.
const ALPHABETS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        let base32 = matches!(byte, b'a'..=b'z' | b'2'..=b'7');
        let base64url = byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_';
        table[b] = (base32 as u8 * IN_BASE32) | (base64url as u8 * IN_BASE64URL);
        b += 1;
    }
    table
};
const IN_BASE32: u8 = 1;
const IN_BASE64URL: u8 = 2;

/// Whether every byte of `bytes` is in `alphabet` (one of [`ALPHABETS`]' bits).
fn all_in(bytes: &[u8], alphabet: u8) -> bool {
    bytes
        .iter()
        .fold(alphabet, |all, &b| all & ALPHABETS[usize::from(b)])
        != 0
}

/// A token id: 12 characters of lowercase base32. Public (it appears in lists and audit events);
/// not a secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's text, without a copy (the gate's request log keeps it).
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TokenId {
    type Err = String;

    /// Parse an id typed by an operator. Surrounding whitespace is not accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == ID_LEN && s.bytes().all(is_base32) {
            Ok(TokenId(s.to_string()))
        } else {
            Err(format!(
                "'{s}' is not a token id: expected {ID_LEN} characters of a-z and 2-7 \
                 (see `gitgate token list`)"
            ))
        }
    }
}

/// A freshly created token: its id, and the secret to show once.
#[derive(Debug)]
pub struct NewSecret {
    pub id: TokenId,
    pub secret: Secret,
}

/// Create a new id and a secret for it.
pub fn generate() -> Result<NewSecret, getrandom::Error> {
    let id = new_id()?;
    let secret = generate_with_id(&id)?;
    Ok(NewSecret { id, secret })
}

/// A new secret for an existing id (rotation keeps the id, so lists and audit stay readable).
pub fn generate_with_id(id: &TokenId) -> Result<Secret, getrandom::Error> {
    let mut body = [0u8; BODY_BYTES];
    getrandom::getrandom(&mut body)?;
    let mut s = String::with_capacity(SECRET_LEN);
    s.push_str(PREFIX);
    s.push_str(id.as_str());
    s.push('_');
    s.push_str(&URL_SAFE_NO_PAD.encode(body));
    let sum = checksum(s.as_bytes());
    s.push('_');
    s.extend(sum.iter().copied().map(char::from));
    debug_assert_eq!(s.len(), SECRET_LEN);
    Ok(Secret::new(s))
}

/// A new random id: 12 base32 characters (60 bits), from the OS RNG.
pub fn new_id() -> Result<TokenId, getrandom::Error> {
    let mut bytes = [0u8; ID_LEN];
    getrandom::getrandom(&mut bytes)?;
    // 256 is a multiple of 32, so taking the low 5 bits of a uniform byte is uniform.
    let id = bytes
        .iter()
        .map(|b| char::from(BASE32[usize::from(b & 31)]))
        .collect();
    Ok(TokenId(id))
}

/// The id of a well-formed secret, or `None` unless prefix, length, alphabets, separators and
/// checksum all match, so that garbage never reaches the store.
pub fn parse(secret: &str) -> Option<TokenId> {
    let b = secret.as_bytes();
    if b.len() != SECRET_LEN || !secret.starts_with(PREFIX) {
        return None;
    }
    let id = b.get(ID_START..ID_END)?;
    let body = b.get(BODY_START..BODY_END)?;
    let sum = b.get(CHECKSUM_START..)?;
    let separators_ok = b.get(ID_END) == Some(&b'_') && b.get(BODY_END) == Some(&b'_');
    if !separators_ok
        || !all_in(id, IN_BASE32)
        || !all_in(body, IN_BASE64URL)
        || !all_in(sum, IN_BASE32)
    {
        return None;
    }
    let expected = checksum(b.get(..BODY_END)?);
    if !constant_time_eq(&expected, sum) {
        return None;
    }
    // All bytes checked are ASCII, so this slice is on char boundaries.
    secret
        .get(ID_START..ID_END)
        .map(|id| TokenId(id.to_string()))
}

/// Whether `bytes` hold a whole secret that lost its prefix (`ggt_` cut off in a copy): the id,
/// the body and a checksum that matches them, which nothing but a secret has. Without its
/// prefix the rest is still the whole secret (anyone can put the prefix back), so it is one to
/// keep out of logs as the prefixed form is. Cheap for what is not: only a run of 63 or more
/// token characters is looked into.
pub fn bare_secret_in(bytes: &[u8]) -> bool {
    const BARE_LEN: usize = SECRET_LEN - PREFIX.len();
    let mut run_start = 0;
    for end in 0..=bytes.len() {
        if end < bytes.len() && is_base64url(bytes[end]) {
            continue;
        }
        let run = &bytes[run_start..end];
        run_start = end + 1;
        if run.len() < BARE_LEN {
            continue;
        }
        for at in 0..=run.len() - BARE_LEN {
            let candidate = &run[at..at + BARE_LEN];
            // The second separator is not asked for: the checksum does not cover it, so with it
            // changed the rest is the whole secret still, one character from working.
            let shaped =
                candidate[..ID_LEN].iter().copied().all(is_base32) && candidate[ID_LEN] == b'_';
            if !shaped {
                continue;
            }
            let mut prefixed = Vec::with_capacity(SECRET_LEN);
            prefixed.extend_from_slice(PREFIX.as_bytes());
            prefixed.extend_from_slice(candidate);
            if checksum(&prefixed[..BODY_END]) == prefixed[CHECKSUM_START..] {
                return true;
            }
        }
    }
    false
}

/// Why a secret that [`parse`] refused is not a token: an account password (the first thing
/// people try) reads otherwise than a token cut short or pasted with a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAToken {
    /// Not shaped like a token at all: most likely an account password.
    Password,
    /// Begins like a token but is not a whole one.
    Damaged,
    /// A token's length and prefix, but a character is wrong: its check characters do not
    /// match (the usual result of typing a token from another screen).
    Mistyped,
}

impl NotAToken {
    /// What `secret` is, never repeating it.
    pub fn of(secret: &str) -> NotAToken {
        let b = secret.as_bytes();
        // The places a token's shape fixes — its prefix and the two separators after it — and
        // how many of them are not what a token has there: a token with one character typed
        // wrong has the length and at most one of them off (a password of that length would
        // have most of them off). Whitespace around it is a paste, whatever the length.
        let skeleton = PREFIX
            .bytes()
            .enumerate()
            .chain([(ID_END, b'_'), (BODY_END, b'_')]);
        let off = skeleton.filter(|&(at, c)| b.get(at) != Some(&c)).count();
        if b.len() == SECRET_LEN && off <= 1 && secret.trim() == secret {
            return NotAToken::Mistyped;
        }
        // Cut short at either end (the first character lost in a copy, too), or pasted with
        // something around it.
        let pasted = secret.trim_start();
        if pasted.starts_with(PREFIX) || pasted.starts_with(&PREFIX[1..]) {
            NotAToken::Damaged
        } else {
            NotAToken::Password
        }
    }

    /// In words for the client, for a secret given as a `Bearer` token (which has no password)
    /// when `bearer`.
    pub fn message_for(self, bearer: bool) -> &'static str {
        if !bearer {
            return self.message();
        }
        match self {
            NotAToken::Damaged => {
                "invalid token: the Bearer token begins like a gitgate access token but is not a \
                 whole one (cut short, or with extra characters)"
            }
            NotAToken::Mistyped => {
                "invalid token: the Bearer token has the length of a gitgate access token but a \
                 character in it is wrong (its last six, a checksum, do not match the rest); \
                 copy the token again rather than typing it"
            }
            NotAToken::Password => {
                "invalid token: the Bearer token is not a gitgate access token (those begin with \
                 ggt_)"
            }
        }
    }

    /// In words for the client, for a secret given as the Basic password.
    pub fn message(self) -> &'static str {
        match self {
            NotAToken::Damaged => {
                "invalid token: the password begins like a gitgate access token but is not a \
                 whole one (cut short, or with extra characters or spaces)"
            }
            NotAToken::Mistyped => {
                "invalid token: the password has the length of a gitgate access token but a \
                 character in it is wrong (its last six, a checksum, do not match the rest); \
                 copy the token again rather than typing it"
            }
            NotAToken::Password => {
                "invalid token: the password is not a gitgate access token (those begin with \
                 ggt_); git takes an access token as its password, not an account password"
            }
        }
    }

    /// In a few words for the audit event, so that an operator can tell the two apart.
    pub fn audit_reason(self) -> &'static str {
        match self {
            NotAToken::Damaged => {
                "invalid token: not a whole token (cut short or with extra characters)"
            }
            NotAToken::Mistyped => {
                "invalid token: a token's length with a wrong character (checksum mismatch)"
            }
            NotAToken::Password => "invalid token: not an access token (an account password?)",
        }
    }
}

/// First 30 bits of SHA-256 over `data`, as 6 lowercase base32 characters.
/// (On the stack: it is computed for every request that presents a token.)
fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::digest(data);
    let [a, b, c, d, ..] = <[u8; 32]>::from(digest);
    let bits = u32::from_be_bytes([a, b, c, d]) >> 2; // top 30 bits
    std::array::from_fn(|i| BASE32[((bits >> (5 * (CHECKSUM_LEN - 1 - i))) & 31) as usize])
}

/// SHA-256 of a secret: what the store keeps and compares.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compare two byte strings without an early exit on the first difference, so the time taken
/// does not reveal how long a matching prefix was. Lengths are not secret (stored hashes are
/// always 32 bytes), so a length mismatch returns `false` at once.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table [`parse`] looks bytes up in says what the alphabets' own tests say, for every
    /// byte, and a run of bytes is in an alphabet only if each of its bytes is.
    #[test]
    fn the_alphabets_table_agrees_with_the_alphabets() {
        for b in 0..=255u8 {
            assert_eq!(all_in(&[b], IN_BASE32), is_base32(b), "{b}");
            assert_eq!(all_in(&[b], IN_BASE64URL), is_base64url(b), "{b}");
        }
        assert!(all_in(b"abcz27", IN_BASE32) && all_in(b"", IN_BASE32));
        assert!(!all_in(b"abc1", IN_BASE32) && !all_in(b"a-b", IN_BASE32));
        assert!(all_in(b"aZ09-_", IN_BASE64URL) && !all_in(b"aZ09+/", IN_BASE64URL));
        assert!(!all_in(b"ab\xffc", IN_BASE64URL));
    }

    #[test]
    fn generated_secrets_parse_back_to_their_id() {
        for _ in 0..50 {
            let new = generate().unwrap();
            let s = new.secret.expose();
            assert_eq!(s.len(), SECRET_LEN);
            assert!(s.starts_with(PREFIX));
            assert_eq!(parse(s), Some(new.id.clone()), "{s}");
            assert_eq!(new.id.as_str().parse::<TokenId>().unwrap(), new.id);
        }
    }

    #[test]
    fn a_secret_without_its_prefix_is_found_and_look_alikes_are_not() {
        for _ in 0..50 {
            let new = generate().unwrap();
            let bare = &new.secret.expose()[PREFIX.len()..];
            assert!(bare_secret_in(bare.as_bytes()), "{bare}");
            let in_a_path = format!("/team/{bare}.git/info/refs");
            assert!(bare_secret_in(in_a_path.as_bytes()), "{in_a_path}");
            let joined = format!("/x-{bare}-y/");
            assert!(bare_secret_in(joined.as_bytes()), "{joined}");
            // One character changed: the checksum no longer matches.
            let mut typo = bare.as_bytes().to_vec();
            typo[20] = if typo[20] == b'A' { b'B' } else { b'A' };
            assert!(!bare_secret_in(&typo));
            // Cut short.
            assert!(!bare_secret_in(&bare.as_bytes()[..bare.len() - 1]));
        }
        assert!(!bare_secret_in(b"/team/app.git/info/refs"));
        assert!(!bare_secret_in(&[b'a'; 200]));
        let shaped = format!("abcdefgh2345_{}_abcdef", "A".repeat(BODY_LEN));
        assert!(!bare_secret_in(shaped.as_bytes()));
    }

    #[test]
    fn rotation_keeps_the_id() {
        let id: TokenId = "abcdefgh2345".parse().unwrap();
        let a = generate_with_id(&id).unwrap();
        let b = generate_with_id(&id).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(parse(a.expose()), Some(id.clone()));
        assert_eq!(parse(b.expose()), Some(id));
    }

    #[test]
    fn two_generations_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.secret.expose(), b.secret.expose());
    }

    #[test]
    fn any_changed_character_fails() {
        let new = generate().unwrap();
        let s = new.secret.expose().to_string();
        for i in 0..s.len() {
            for replacement in ['a', 'Z', '7', '_', '-'] {
                let mut bytes = s.clone().into_bytes();
                if bytes[i] == replacement as u8 {
                    continue;
                }
                bytes[i] = replacement as u8;
                let changed = String::from_utf8(bytes).unwrap();
                assert_eq!(
                    parse(&changed),
                    None,
                    "position {i} -> {replacement}: {changed}"
                );
            }
        }
    }

    #[test]
    fn wrong_shape_fails() {
        let s = generate().unwrap().secret.expose().to_string();
        assert_eq!(parse(""), None);
        assert_eq!(parse(PREFIX), None);
        assert_eq!(parse(&s[..s.len() - 1]), None);
        assert_eq!(parse(&format!("{s}a")), None);
        assert_eq!(parse(&format!(" {s}")), None);
        assert_eq!(parse(&s.replacen("ggt_", "ggx_", 1)), None);
        assert_eq!(parse(&s.replacen("ggt_", "GGT_", 1)), None);
        assert_eq!(parse(&s.to_uppercase()), None);
        // Non-ASCII of the right byte length must not panic.
        let odd = format!("{PREFIX}{}a", "é".repeat((SECRET_LEN - PREFIX.len()) / 2));
        assert_eq!(odd.len(), SECRET_LEN);
        assert_eq!(parse(&odd), None);
        let odd = "é".repeat(SECRET_LEN);
        assert_eq!(parse(&odd[..SECRET_LEN - 1]), None);
        // What the client is told, without the secret: a password, or a token cut short.
        for password in ["hunter2", ""] {
            let what = NotAToken::of(password);
            assert!(what.message().contains("not a gitgate access token"));
            assert!(what
                .message_for(true)
                .starts_with("invalid token: the Bearer token is not"));
            assert!(what.audit_reason().contains("account password"));
        }
        for cut in [&s[..s.len() - 1], &format!(" {s}"), &format!("{s} ")] {
            let what = NotAToken::of(cut);
            assert_eq!(what, NotAToken::Damaged);
            let why = what.message();
            assert!(why.contains("not a whole one"), "{why}");
            assert!(what.audit_reason().contains("not a whole token"));
            assert!(!why.contains(&s[PREFIX.len()..PREFIX.len() + 8]));
        }
        // One character short with a space or tab after it (a token's length again): a paste,
        // not a typo.
        for pasted in [
            format!("{} ", &s[..s.len() - 1]),
            format!("\t{}", &s[..s.len() - 1]),
        ] {
            assert_eq!(NotAToken::of(&pasted), NotAToken::Damaged, "{pasted:?}");
        }
        // Its first character lost in a copy: cut short too, not a password.
        assert_eq!(NotAToken::of(&s[1..]), NotAToken::Damaged);
        // A whole token with one character changed, anywhere, the prefix and the separators
        // included: mistyped, not cut short, and not a password.
        for at in [
            0,
            2,
            3,
            PREFIX.len(),
            ID_START + 3,
            ID_END,
            BODY_START + 5,
            BODY_END,
            SECRET_LEN - 1,
        ] {
            let mut typo = s.clone().into_bytes();
            typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(typo).unwrap();
            assert_eq!(parse(&typo), None, "{at}");
            let what = NotAToken::of(&typo);
            assert_eq!(what, NotAToken::Mistyped, "{at}");
            assert!(what.message().contains("a character in it is wrong"));
            assert!(what.audit_reason().contains("wrong character"));
        }
    }

    #[test]
    fn a_valid_checksum_on_a_bad_alphabet_still_fails() {
        // Build a look-alike with an uppercase id and a correct checksum over it.
        let mut s = format!("{PREFIX}ABCDEFGH2345_{}", "A".repeat(BODY_LEN));
        let sum = checksum(s.as_bytes());
        s.push('_');
        s.extend(sum.iter().copied().map(char::from));
        assert_eq!(s.len(), SECRET_LEN);
        assert_eq!(parse(&s), None);
        let lower = s.replacen("ABCDEFGH2345", "abcdefgh2345", 1);
        assert_eq!(parse(&lower), None, "checksum was over the uppercase id");
    }

    #[test]
    fn known_checksum_is_stable() {
        // Freeze the format: a hand-built secret with a known body.
        let mut s = format!("{PREFIX}abcdefgh2345_{}", "A".repeat(BODY_LEN));
        let sum = checksum(s.as_bytes());
        // Computed independently (Python: top 30 bits of sha256, base32, most significant first).
        assert_eq!(&sum, b"j7t4lw");
        s.push('_');
        s.extend(sum.iter().copied().map(char::from));
        assert_eq!(parse(&s).unwrap().as_str(), "abcdefgh2345");
    }

    #[test]
    fn token_id_from_str() {
        assert!("abcdefgh2345".parse::<TokenId>().is_ok());
        for bad in [
            "",
            "abcdefgh234",
            "abcdefgh23456",
            "ABCDEFGH2345",
            "abcdefgh2340",
            "abcdefgh234_",
        ] {
            assert!(bad.parse::<TokenId>().is_err(), "{bad:?}");
        }
        let id: TokenId = "zzzzzzzzzzzz".parse().unwrap();
        assert_eq!(id.to_string(), "zzzzzzzzzzzz");
    }

    #[test]
    fn hash_is_stable() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        let expected = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(hash("abc"), expected);
        assert_ne!(hash("x"), hash("y"));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"xbc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let h = hash("secret");
        assert!(constant_time_eq(&h, &hash("secret")));
        assert!(!constant_time_eq(&h, &hash("Secret")));
    }

    #[test]
    fn a_matching_checksum_does_not_excuse_a_wrong_prefix_or_body_alphabet() {
        let signed = |before_sum: String| {
            let sum = checksum(before_sum.as_bytes());
            let mut s = before_sum;
            s.push('_');
            s.extend(sum.iter().copied().map(char::from));
            assert_eq!(s.len(), SECRET_LEN);
            s
        };
        for prefix in ["ggx_", "GGT_", "xxx_"] {
            let s = signed(format!("{prefix}abcdefgh2345_{}", "A".repeat(BODY_LEN)));
            assert_eq!(parse(&s), None, "{s}");
        }
        for odd in ['.', '!', '=', '+', '/'] {
            let s = signed(format!(
                "{PREFIX}abcdefgh2345_{}{odd}",
                "A".repeat(BODY_LEN - 1)
            ));
            assert_eq!(parse(&s), None, "{s}");
        }
    }

    /// A bare secret whose second separator was changed is found all the same: `parse` refuses
    /// it, but the checksum does not cover that separator, so the rest is the whole secret,
    /// one character from working, and kept out of logs as the secret is. The first separator
    /// is covered: changed, the checksum no longer matches.
    #[test]
    fn a_bare_secret_with_its_second_separator_changed_is_found_still() {
        let mut changed = generate().unwrap().secret.expose().as_bytes().to_vec();
        changed[BODY_END] = b'-';
        assert_eq!(parse(std::str::from_utf8(&changed).unwrap()), None);
        assert!(bare_secret_in(&changed[PREFIX.len()..]));
        let mut first = generate().unwrap().secret.expose().as_bytes().to_vec();
        first[PREFIX.len() + ID_LEN] = b'-';
        assert!(!bare_secret_in(&first[PREFIX.len()..]));
    }

    /// A password that happens to have a token's length, with two of the places a token's
    /// shape fixes wrong, reads as a password, not as a token with one character mistyped.
    #[test]
    fn two_wrong_fixed_places_at_a_tokens_length_are_no_typo() {
        let password = format!(
            "ggxx{}_{}_{}",
            "a".repeat(ID_LEN),
            "a".repeat(BODY_LEN),
            "a".repeat(CHECKSUM_LEN)
        );
        assert_eq!(password.len(), SECRET_LEN);
        assert_eq!(NotAToken::of(&password), NotAToken::Password);
    }

    /// A new id draws on the whole base32 alphabet (5 random bits a character), not on a part
    /// of it.
    #[test]
    fn new_ids_use_the_whole_alphabet() {
        let mut seen = std::collections::BTreeSet::new();
        // 1,200 characters: the chance that one of 32 never shows up is below 10^-15.
        for _ in 0..100 {
            seen.extend(new_id().unwrap().as_str().bytes());
        }
        assert_eq!(seen.len(), BASE32.len(), "{seen:?}");
    }
}
