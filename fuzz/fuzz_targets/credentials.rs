//! `credentials::parse` on arbitrary `Authorization` header bytes: never panics, and what it
//! accepts satisfies the parser's promises (non-empty user and secret, no control characters in
//! the user name that would end up in logs).
#![no_main]

use gitgate::credentials::{self, Credentials};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match credentials::parse(data) {
        Ok(Credentials::Basic { user, secret }) => {
            assert!(!user.is_empty());
            assert!(!user.chars().any(char::is_control));
            assert!(!secret.expose().is_empty());
        }
        Ok(Credentials::Bearer { secret }) => assert!(!secret.expose().is_empty()),
        Err(_) => {}
    }
});
