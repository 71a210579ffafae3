//! What a plain backend (a web server serving files, git http-backend) makes of a request
//! path: the model the property and randomised tests compare gitgate's classification with.
//! Shared by `tests/properties.rs` and `tests/randomised.rs`, which wrote it each.

#![allow(dead_code)] // each test file uses its part

/// Percent-decode once, strictly: `None` for a malformed escape.
pub fn decode(raw: &str) -> Option<Vec<u8>> {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// What a plain backend makes of a path: decoded once, then resolved as a file system
/// resolves it (`.` and empty segments dropped, `..` pops; `\` a separator, as on Windows).
/// `None` if it does not decode to UTF-8.
pub fn plain_resolve(raw: &str) -> Option<String> {
    let decoded = String::from_utf8(decode(raw)?).ok()?;
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    Some(format!("/{}", out.join("/")))
}
