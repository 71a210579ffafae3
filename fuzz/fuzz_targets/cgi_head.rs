//! The CGI response-header parser on arbitrary backend output: never panics; an accepted block
//! yields a valid status and no hop-by-hop headers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = gitgate::upstream::cgi::parse_head(data) {
        assert!((100..=999).contains(&head.status.as_u16()));
        assert!(!head.headers.contains_key("connection"));
        assert!(!head.headers.contains_key("transfer-encoding"));
    }
});
