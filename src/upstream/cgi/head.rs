//! The CGI header block at the start of the backend's stdout: finding its end across reads
//! (capped at [`MAX_HEADER_BLOCK`]) and turning it into a status and response headers.

use bytes::{Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::CgiError;

/// The most bytes of CGI header block we accept before giving up on the backend. git's headers
/// are a few hundred bytes; anything near this is a broken program, not a big response.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// How much stdout we ask for per read while looking for the end of the header block.
pub(super) const HEAD_READ: usize = 8 * 1024;

/// Response headers that describe gitgate's connection to the client, not the content. hyper
/// owns framing; a backend must not get a say in it.
pub(super) const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Reads stdout until the end of the CGI header block. Returns the block (including its blank
/// line) and any body bytes read along with it, or `None` if stdout closed first.
pub(super) async fn read_head<R: AsyncRead + Unpin>(
    stdout: &mut R,
) -> Result<Option<(Bytes, Option<Bytes>)>, CgiError> {
    let mut buf = BytesMut::with_capacity(HEAD_READ);
    let mut scan = HeadScan::default();
    loop {
        if let Some(end) = scan.find_end(&buf) {
            let head = buf.split_to(end).freeze();
            let rest = (!buf.is_empty()).then(|| buf.freeze());
            return Ok(Some((head, rest)));
        }
        if buf.len() >= MAX_HEADER_BLOCK {
            return Err(CgiError::BadHeaders(format!(
                "no end of headers within the first {MAX_HEADER_BLOCK} bytes"
            )));
        }
        buf.reserve(HEAD_READ);
        match stdout.read_buf(&mut buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(CgiError::BadHeaders(format!("reading stdout failed: {e}"))),
        }
    }
}

/// Finds the blank line that ends a CGI header block, remembering where it stopped so that each
/// new read is scanned once.
#[derive(Debug, Default)]
pub(super) struct HeadScan {
    /// Start of the first line not yet known to be complete.
    pub(super) line_start: usize,
}

impl HeadScan {
    /// The length of the header block including its terminating blank line (`\n` or `\r\n`),
    /// if `buf` already holds all of it. The block may be at most [`MAX_HEADER_BLOCK`] long.
    fn find_end(&mut self, buf: &[u8]) -> Option<usize> {
        let limit = buf.len().min(MAX_HEADER_BLOCK);
        // `get` rather than indexing: the bounds hold only if `buf` never shrinks between calls.
        while let Some(nl) = buf
            .get(self.line_start..limit)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let line = buf
                .get(self.line_start..self.line_start + nl)
                .unwrap_or_default();
            self.line_start += nl + 1;
            if line.is_empty() || line == b"\r" {
                return Some(self.line_start);
            }
        }
        None
    }
}

/// The response line and headers a CGI header block asks for.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Turns a complete CGI header block into a status and response headers (RFC 3875 §6.3).
/// `Status` sets the status (default 200, or 302 with `Location`); other fields become response
/// headers. A field hyper cannot carry is skipped with a warning; a block that is not CGI output
/// at all (a line without a colon, an unreadable `Status`) is an error.
pub fn parse_head(block: &[u8]) -> Result<Head, CgiError> {
    let mut status = None;
    let mut headers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // the blank line: end of the block
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(CgiError::BadHeaders(format!(
                "not a header line: {:?}",
                String::from_utf8_lossy(line)
            )));
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"status") {
            if status.is_some() {
                return Err(CgiError::BadHeaders("more than one Status line".to_owned()));
            }
            status = Some(parse_status(value)?);
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if headers.contains_key(header::CONTENT_LENGTH) {
                return Err(CgiError::BadHeaders(
                    "more than one Content-Length line".to_owned(),
                ));
            }
            if !is_a_length(value) {
                return Err(CgiError::BadHeaders(format!(
                    "unusable Content-Length: {:?}",
                    String::from_utf8_lossy(value)
                )));
            }
        }
        let parsed = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value));
        let (Ok(name), Ok(value)) = parsed else {
            tracing::warn!(
                target: "gitgate::cgi",
                header = %crate::log_value::LogText(&String::from_utf8_lossy(line)),
                "skipping invalid header from the CGI backend"
            );
            continue;
        };
        if HOP_BY_HOP.contains(&name.as_str()) {
            tracing::debug!(target: "gitgate::cgi", header = %name, "dropping hop-by-hop header from the CGI backend");
            continue;
        }
        // As from an HTTP upstream: a wrapper's cookies, server name or front-server
        // instruction (`X-Accel-Redirect`) stay behind gitgate.
        if crate::upstream::headers::stays_behind_gitgate(name.as_str()) {
            tracing::debug!(target: "gitgate::cgi", header = %name, "dropping a header for gitgate's side alone from the CGI backend");
            continue;
        }
        headers.append(name, value);
    }
    let status = status.unwrap_or(if headers.contains_key(header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(Head { status, headers })
}

/// Whether a `Content-Length` value is one length a client can read: digits only, at most
/// `i64::MAX`. Passed on, anything else (`-5`, `4, 5`, twenty digits) is a head hyper refuses
/// to write: the client got no answer at all (an empty reply over HTTP/1.1, a reset stream over
/// HTTP/2), and the log said `200` and blamed the client for leaving. One past `i64::MAX` hyper
/// writes, but curl (and so git) cannot hold it ("Overflow Content-Length"), ignores it and
/// reads to the connection's close: an answer cut short there read as a whole one.
fn is_a_length(value: &[u8]) -> bool {
    !value.is_empty()
        && value.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(value).is_ok_and(|v| v.parse::<i64>().is_ok())
}

/// `404 Not Found` → 404. Only the code matters; the reason phrase is hyper's to write. A 1xx
/// is no final answer (a `101` would switch the client's connection to nothing, a `100` ends
/// it in hyper's 500), and three digits past 599 are no status at all (RFC 9110 §15: hyper
/// writes `HTTP/1.1 999`, and a client may take it for anything): refused like any unusable
/// status, a 502 that names it.
pub(super) fn parse_status(value: &[u8]) -> Result<StatusCode, CgiError> {
    let code = value.split(|&b| b == b' ').next().unwrap_or_default();
    match StatusCode::from_bytes(code) {
        Ok(status) if code.len() == 3 && is_a_final_status(status) => Ok(status),
        _ => Err(CgiError::BadHeaders(format!(
            "unusable Status: {:?} (a final HTTP status is three digits from 200 to 599)",
            String::from_utf8_lossy(value)
        ))),
    }
}

/// Whether `status` is one a client reads as the final answer: 200-599. hyper takes any three
/// digits from 100 (RFC 9110 §15 calls what is past 599 invalid, and a client "SHOULD" read it
/// as a 5xx, which git only guesses at), and a 1xx is an interim answer.
pub fn is_a_final_status(status: StatusCode) -> bool {
    (200..600).contains(&status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_accepts_lf_and_crlf() {
        assert_eq!(HeadScan::default().find_end(b"A: b\r\n\r\nbody"), Some(8));
        assert_eq!(HeadScan::default().find_end(b"A: b\n\nbody"), Some(6));
        assert_eq!(
            HeadScan::default().find_end(b"A: b\r\nC: d\n\r\n"),
            Some(13)
        );
        assert_eq!(HeadScan::default().find_end(b"\r\nbody"), Some(2));
        assert_eq!(HeadScan::default().find_end(b"A: b\r\nC: d"), None);
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let mut scan = HeadScan::default();
        let full = b"Content-Type: x\r\nStatus: 200 OK\r\n\r\nrest";
        for len in 0..full.len() {
            if let Some(end) = scan.find_end(&full[..len]) {
                assert_eq!(end, full.len() - "rest".len());
                return;
            }
        }
        panic!("end of headers not found");
    }

    #[test]
    fn head_end_ignores_blank_line_beyond_the_cap() {
        let mut block = vec![b'X'; MAX_HEADER_BLOCK];
        block.extend_from_slice(b"\n\n");
        assert_eq!(HeadScan::default().find_end(&block), None);
    }

    #[test]
    fn parse_head_reads_status_and_headers() {
        let head = parse_head(
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Many: 1\r\nX-Many: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(head.headers["content-type"], "text/plain");
        assert_eq!(head.headers.get_all("x-many").iter().count(), 2);
        assert!(head.headers.get("status").is_none());
    }

    #[test]
    fn parse_head_defaults() {
        assert_eq!(
            parse_head(b"Content-Type: a/b\n\n").unwrap().status,
            StatusCode::OK
        );
        assert_eq!(
            parse_head(b"Location: /x\n\n").unwrap().status,
            StatusCode::FOUND
        );
        assert_eq!(
            parse_head(b"status:304\n\n").unwrap().status,
            StatusCode::NOT_MODIFIED
        );
    }

    #[test]
    fn an_informational_status_is_no_final_answer() {
        for status in ["100 Continue", "101 Switching Protocols", "103", "199"] {
            let head = format!("Status: {status}\r\n\r\n");
            assert!(
                matches!(parse_head(head.as_bytes()), Err(CgiError::BadHeaders(_))),
                "{status}"
            );
        }
        assert!(parse_head(b"Status: 200\r\n\r\n").is_ok());
    }

    #[test]
    fn parse_head_skips_invalid_and_hop_by_hop_headers() {
        let head = parse_head(
            b"Bad Name: x\r\nX-Ctl: a\x01b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nX-Ok: yes\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.headers.len(), 1);
        assert_eq!(head.headers["x-ok"], "yes");
    }

    /// A wrapper CGI program's cookies, server name, links and front-server instructions stay
    /// behind gitgate, as an HTTP upstream's do (`headers::to_client`): an nginx in front of
    /// gitgate would serve the file an `X-Accel-Redirect` names.
    #[test]
    fn parse_head_keeps_what_is_for_gitgates_side_alone() {
        let head = parse_head(
            b"Content-Type: text/plain\r\nX-Accel-Redirect: /internal/etc-shadow\r\n\
              X-Sendfile: /etc/shadow\r\nX-LIGHTTPD-send-file: /etc/shadow\r\n\
              Set-Cookie: s=1\r\nServer: wrapper/1.0\r\nX-Powered-By: php\r\n\
              Link: </x>; rel=preload\r\nAuthorization: Basic eDp5\r\nX-Ok: yes\r\n\r\n",
        )
        .unwrap();
        let mut names: Vec<&str> = head.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-ok"]);
    }

    #[test]
    fn parse_head_rejects_non_cgi_output() {
        assert!(matches!(
            parse_head(b"hello world\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"Status: abc\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"Status: 99\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"Status: 2000\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"Status: 200\nStatus: 500\n\n"),
            Err(CgiError::BadHeaders(_))
        ));
    }

    /// A status of three digits outside 100-599 is none (RFC 9110 §15: "invalid"): hyper writes
    /// `HTTP/1.1 999`, and what a client makes of it is anyone's guess. A 502 that names it,
    /// as for every other unusable head; the whole of 200-599 is passed on.
    #[test]
    fn a_status_outside_100_to_599_is_refused_naming_it() {
        for status in [
            "600",
            "999 Custom",
            "099",
            "000",
            "1000",
            "200abc",
            "20",
            "2OO",
        ] {
            let head = format!("Status: {status}\r\n\r\n");
            match parse_head(head.as_bytes()) {
                Err(CgiError::BadHeaders(why)) => assert!(why.contains(status), "{why}"),
                other => panic!("{status:?}: {other:?}"),
            }
        }
        for (status, code) in [("200 OK", 200), ("599", 599), ("451 Gone", 451)] {
            let head = format!("Status: {status}\r\n\r\n");
            assert_eq!(parse_head(head.as_bytes()).unwrap().status.as_u16(), code);
        }
    }

    /// A `Content-Length` that is not one length is refused here, as a `Status` that is not one
    /// status is: passed on, hyper would refuse to write the head, and the client got nothing.
    #[test]
    fn a_content_length_that_is_no_length_is_refused() {
        for value in [
            "-5",
            "+5",
            "",
            "4, 4",
            "0x10",
            "99999999999999999999999",
            "18446744073709551616",
            "18446744073709551615",
            "9223372036854775808",
            "\u{ff}",
        ] {
            let head = format!("Content-Type: text/plain\r\nContent-Length: {value}\r\n\r\n");
            assert!(
                matches!(parse_head(head.as_bytes()), Err(CgiError::BadHeaders(_))),
                "{value:?}"
            );
        }
        assert!(matches!(
            parse_head(b"Content-Length: 4\r\ncontent-length: 4\r\n\r\n"),
            Err(CgiError::BadHeaders(_))
        ));
        for value in ["0", "4", "9223372036854775807"] {
            let head = format!("Content-Length: {value}\r\n\r\n");
            assert_eq!(
                parse_head(head.as_bytes()).unwrap().headers["content-length"],
                value
            );
        }
        // Blanks around it are not part of it.
        let head = parse_head(b"Content-Length:  12\t\r\n\r\n").unwrap();
        assert_eq!(head.headers["content-length"], "12");
    }

    /// Output that reaches the cap with no end of headers in it is a broken backend, even if
    /// it stops right there: not taken for one that closed before it answered.
    #[tokio::test]
    async fn a_head_as_long_as_the_cap_without_its_end_is_refused() {
        let out = vec![b'X'; MAX_HEADER_BLOCK];
        let mut at_cap: &[u8] = &out;
        assert!(matches!(
            read_head(&mut at_cap).await,
            Err(CgiError::BadHeaders(_))
        ));
        let mut under_cap: &[u8] = &out[..MAX_HEADER_BLOCK - 1];
        assert!(matches!(read_head(&mut under_cap).await, Ok(None)));
    }

    /// Blanks around a value are not part of it (RFC 3875 §6.3): a `Status` followed by a tab
    /// is still read, and a header's value keeps none at either end.
    #[test]
    fn blanks_around_a_value_are_not_part_of_it() {
        let head = parse_head(b"Status: 404\t\r\nContent-Type:  text/plain \t\r\n\r\n").unwrap();
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(head.headers["content-type"], "text/plain");
    }
}
