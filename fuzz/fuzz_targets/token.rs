//! `token::parse` on arbitrary strings: never panics, and an accepted secret yields an id that
//! is a valid token id (so garbage never reaches the store as a lookup key).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(id) = gitgate::token::parse(&text) {
        assert!(id.as_str().parse::<gitgate::token::TokenId>().is_ok());
        assert!(text.contains(id.as_str()));
    }
});
