//! Header hygiene on arbitrary header blocks (`name: value` lines): `to_upstream` and
//! `to_client` never panic, nothing connection-level or secret crosses in either direction, and
//! the identity header is always gitgate's. tests/properties.rs checks the same and more on
//! every build; this searches longer.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use gitgate::upstream::headers::{to_client, to_upstream, Outbound};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NEVER: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy",
    "forwarded",
    "x-real-ip",
    "expect",
];

fuzz_target!(|data: &[u8]| {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            map.append(n, v);
        }
    }
    let identity = HeaderName::from_static("x-forwarded-user");
    let sent = to_upstream(
        &map,
        &Outbound {
            peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            trusted_proxies: &[],
            proto: "https",
            authority: None,
            identity_header: &identity,
            user: "alice",
            upstream_auth: None,
        },
    );
    for n in NEVER.iter().chain(&["authorization", "host"]) {
        assert!(!sent.contains_key(*n), "{n} forwarded");
    }
    let who: Vec<_> = sent.get_all("x-forwarded-user").iter().collect();
    assert_eq!(who, [&HeaderValue::from_static("alice")]);
    assert_eq!(sent.get_all("x-forwarded-for").iter().count(), 1);

    let mut back = map;
    to_client(&mut back);
    for n in NEVER[..9].iter().chain(&["authorization"]) {
        assert!(!back.contains_key(*n), "{n} reached the client");
    }
});
