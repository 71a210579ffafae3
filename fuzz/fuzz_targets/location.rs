//! The rewriting of an upstream's `Location` ([`location_to_client`]) on arbitrary header
//! values: besides never panicking, what it passes on (`Unchanged`) or rewrites to (`To`),
//! resolved against the URL git asked gitgate for by the URL Standard's rules (the ones
//! browsers and Python's urllib follow; written out below, not taken from a crate, so that
//! gitgate's own reading is not what is checked against), stays on gitgate's origin and under
//! its git prefix. Nothing else is passed on: the function's doc sends every other site away.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gitgate::upstream::headers::{location_to_client, Redirect, UpstreamOrigin};
use hyper::header::HeaderValue;
use hyper::http::uri::Authority;
use libfuzzer_sys::fuzz_target;

/// gitgate as the client named it.
struct Gitgate {
    https: bool,
    authority: &'static str,
    host: Host,
    port: u16,
}

#[derive(PartialEq, Debug)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    // What an upstream can send: a header value hyper accepted, read as `to_str` reads it.
    let Ok(value) = HeaderValue::from_bytes(rest) else {
        return;
    };
    let Ok(location) = value.to_str() else {
        return;
    };
    let prefix = if choice & 1 == 0 { "" } else { "/scm" };
    let base = if choice & 2 == 0 { "/git" } else { "" };
    let gitgate = if choice & 4 == 0 {
        Gitgate {
            https: true,
            authority: "git.example.com",
            host: Host::Name("git.example.com".into()),
            port: 443,
        }
    } else {
        Gitgate {
            https: false,
            authority: "127.0.0.1:42200",
            host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: 42200,
        }
    };
    let named = choice & 8 == 0;
    let upstream = UpstreamOrigin::new(false, &Authority::from_static("127.0.0.1:3000"));
    let own = UpstreamOrigin::exactly(gitgate.https, &Authority::from_static(gitgate.authority));
    let out = location_to_client(location, &upstream, base, prefix, named.then_some(&own));
    let sent = match &out {
        Redirect::Unchanged => location,
        Redirect::To(x) => x.as_str(),
        _ => return,
    };
    let request_path = format!("{prefix}/team/app.git/info/refs");
    match resolve(sent, gitgate.https, &request_path) {
        Resolved::Origin {
            https,
            host,
            port,
            path,
        } => {
            assert!(
                https == gitgate.https && host == gitgate.host && port == gitgate.port,
                "{location:?} ({out:?}) leads to another origin: {}://{host:?}:{port}{path}",
                if https { "https" } else { "http" },
            );
            assert!(
                path == prefix || path.starts_with(&format!("{prefix}/")),
                "{location:?} ({out:?}) leads out of the git prefix {prefix:?}: {path}"
            );
        }
        Resolved::Other(why) => panic!("{location:?} ({out:?}) passed on: {why}"),
    }
});

enum Resolved {
    Origin {
        https: bool,
        host: Host,
        port: u16,
        path: String,
    },
    /// Not an http(s) URL of a host this target can read (another scheme, a host it cannot
    /// parse): never gitgate's for sure.
    Other(String),
}

/// `reference` resolved against `http(s)://gitgate{base_path}` by the URL Standard's rules.
fn resolve(reference: &str, https: bool, base_path: &str) -> Resolved {
    // Leading and trailing C0 controls and spaces are stripped, tabs and newlines removed.
    let s: String = reference
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|&c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let base_scheme = if https { "https" } else { "http" };
    let is_slash = |c: char| c == '/' || c == '\\';
    let scheme_end = s.find(':').filter(|&c| {
        c > 0
            && s.as_bytes()[0].is_ascii_alphabetic()
            && s[..c]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    let (scheme, after) = match scheme_end {
        Some(c) => (Some(s[..c].to_ascii_lowercase()), &s[c + 1..]),
        None => (None, s.as_str()),
    };
    let relative = match scheme.as_deref() {
        None => after,
        // The base's own scheme without `//` is read as a relative reference.
        Some(sc) if sc == base_scheme && !after.starts_with("//") => after,
        Some("http") | Some("https") => {
            let authority_on = after.trim_start_matches(is_slash);
            return authority(authority_on, scheme.as_deref() == Some("https"));
        }
        Some(sc) => return Resolved::Other(format!("scheme {sc}")),
    };
    let mut chars = relative.chars();
    let (a, b) = (chars.next(), chars.next());
    if a.is_some_and(is_slash) && b.is_some_and(is_slash) {
        return authority(relative.trim_start_matches(is_slash), https);
    }
    let path_end = relative.find(['?', '#']).unwrap_or(relative.len());
    let path = &relative[..path_end];
    let merged = if a.is_some_and(is_slash) {
        path.to_string()
    } else if path.is_empty() {
        base_path.to_string()
    } else {
        let dir = &base_path[..=base_path.rfind('/').unwrap_or(0)];
        format!("{dir}{path}")
    };
    let (host, port) = if https {
        (Host::Name("git.example.com".into()), 443)
    } else {
        (Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), 42200)
    };
    Resolved::Origin {
        https,
        host,
        port,
        path: remove_dot_segments(&merged),
    }
}

/// An authority and what follows it, in an http(s) URL.
fn authority(s: &str, https: bool) -> Resolved {
    let end = s.find(['/', '\\', '?', '#']).unwrap_or(s.len());
    let (auth, rest) = s.split_at(end);
    let host_port = auth.rsplit_once('@').map_or(auth, |(_, hp)| hp);
    let (host, port) = match host_port.rfind(':') {
        Some(i) if !host_port[i..].contains(']') => (&host_port[..i], &host_port[i + 1..]),
        _ => (host_port, ""),
    };
    let default = if https { 443 } else { 80 };
    let port = if port.is_empty() {
        default
    } else {
        match port.parse::<u16>() {
            Ok(p) => p,
            Err(_) => return Resolved::Other(format!("port {port:?}")),
        }
    };
    let Some(host) = read_host(host) else {
        return Resolved::Other(format!("host {host:?}"));
    };
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let path = if rest[..path_end].is_empty() {
        "/"
    } else {
        &rest[..path_end]
    };
    Resolved::Origin {
        https,
        host,
        port,
        path: remove_dot_segments(path),
    }
}

/// A host as the URL Standard reads it: percent-decoded, lower case, an IPv4 address in any of
/// its number forms, an IPv6 literal. Any other byte than a name's is left unread (`None`).
fn read_host(host: &str) -> Option<Host> {
    let mut bytes = Vec::new();
    let raw = host.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(bytes).ok()?.to_ascii_lowercase();
    if let Some(v6) = name.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| Host::Ip(IpAddr::V6(ip).to_canonical()));
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
    {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(&name).to_string();
    if let Some(ip) = ipv4(&name) {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    Some(Host::Name(name))
}

/// The URL Standard's IPv4 parser: one to four parts, decimal, octal or hexadecimal. The
/// oracle's own, not gitgate's `upstream::headers::ipv4_in_any_form` (crate-private, and the
/// code under test): both follow the same steps of the standard, so a mistake in those steps
/// would be shared; a check against the `url` crate would be independent.
fn ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let number = |p: &str| -> Option<u64> {
        if let Some(hex) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            return if hex.is_empty() {
                Some(0)
            } else {
                u64::from_str_radix(hex, 16).ok()
            };
        }
        match p.strip_prefix('0') {
            Some(o) if !o.is_empty() => u64::from_str_radix(o, 8).ok(),
            _ => p.parse().ok(),
        }
    };
    let numbers: Vec<u64> = parts.iter().map(|p| number(p)).collect::<Option<_>>()?;
    let (last, first) = numbers.split_last()?;
    if first.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (5 - numbers.len())) {
        return None;
    }
    let mut value = *last;
    for (i, n) in first.iter().enumerate() {
        value += n << (8 * (3 - i));
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// The path with `\` read as `/` and its `.` and `..` segments (plain or `%2e`) resolved.
fn remove_dot_segments(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let lower = seg.to_ascii_lowercase().replace("%2e", ".");
        match lower.as_str() {
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            "." => {
                if last {
                    out.push("");
                }
            }
            _ => out.push(seg),
        }
    }
    format!("/{}", out.join("/"))
}
