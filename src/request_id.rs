//! A request's id, in each line the request writes to the log.
//!
//! On a busy server many requests share a user, a repository and an address at once, and a
//! request's lines are apart in time: its failure (`backend failed`), what its git program said
//! on stderr, a push that finishes after its client left, and the request line itself, written
//! when the answer's body ends. `request_id=` ties them together, as nginx's `$request_id`
//! does: sixteen hex digits, a half drawn at random when the process starts (two servers on one
//! store, or one restarted, do not hand out the same ids) and a count. One relaxed atomic add
//! per request.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a request came from, and which one it is: what the handlers past the gate (the REST
/// API, the backends) need of it besides the request itself.
#[derive(Clone, Copy, Debug)]
pub struct RequestSource {
    /// The connection's other end (a trusted proxy's, if one is in front).
    pub peer: std::net::SocketAddr,
    /// The client: the peer, or the address a trusted proxy forwarded for.
    pub client: std::net::SocketAddr,
    pub id: RequestId,
}

/// One request's id; `Display` writes its sixteen hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

/// The next id to hand out: the random half in the upper 32 bits once [`seed`] has run.
static NEXT: AtomicU64 = AtomicU64::new(0);

impl RequestId {
    /// A new id, never one this process gave before (in 2^64 requests).
    pub fn next() -> RequestId {
        RequestId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl RequestId {
    /// The id as the upstream gets it, in `X-Request-Id` (an HTTP upstream) or
    /// `HTTP_X_REQUEST_ID` (the CGI backend and the hooks it runs): the same sixteen hex
    /// digits as the log's `request_id`, so one request can be followed from gitgate's log into
    /// the git server's.
    pub fn header_value(self) -> hyper::header::HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 16];
        for (i, d) in digits.iter_mut().enumerate() {
            *d = HEX[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        hyper::header::HeaderValue::from_bytes(&digits).expect("hex digits are a header value")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The header that marks a request this process sent upstream (see [`own_mark`]).
pub const MARK_HEADER: &str = "x-gitgate-hop";

/// [`MARK_HEADER`] as a header name, made once: every request looks for it.
pub(crate) static MARK_NAME: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static(MARK_HEADER);

/// This process's mark on the requests it sends upstream: 128 random bits, drawn once. A
/// request that comes back to gitgate with it has looped — `[upstream] url` leads to gitgate
/// itself, by a name, another of its addresses or a proxy between, which the start-up check
/// cannot see. Secret, unlike the request id (which an upstream may echo back to clients), so
/// that no client can make its request look like one that looped.
pub fn own_mark() -> &'static hyper::header::HeaderValue {
    static MARK: std::sync::OnceLock<hyper::header::HeaderValue> = std::sync::OnceLock::new();
    MARK.get_or_init(|| {
        let mut bytes = [0u8; 16];
        if getrandom::getrandom(&mut bytes).is_err() {
            // No randomness: a mark nobody can match, rather than one anybody could guess.
            return hyper::header::HeaderValue::from_static("-");
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        hyper::header::HeaderValue::from_str(&hex).expect("hex digits are a header value")
    })
}

/// Whether `headers` carry this process's mark (see [`own_mark`]) among the marks of the
/// gitgates a request passed (`X-Gitgate-Hop: <A's>, <B's>`: a loop through two gitgates comes
/// back to the first with both), each compared in constant time.
pub fn came_from_this_process(headers: &hyper::HeaderMap) -> bool {
    let Some(v) = headers.get(&MARK_NAME) else {
        return false;
    };
    let mark = own_mark().as_bytes();
    mark != b"-"
        && v.as_bytes().split(|&b| b == b',').any(|one| {
            let one = one.trim_ascii();
            one.len() == mark.len() && one.iter().zip(mark).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
        })
}

/// The marks to send upstream: those of the gitgates the request passed before this one (a
/// gitgate in front of this one: at most [`MARKS_KEPT`] of them, hex and commas only), then
/// this process's own.
pub fn marks_to_send(inbound: &hyper::HeaderMap) -> hyper::header::HeaderValue {
    let own = own_mark();
    let Some(before) = inbound.get(&MARK_NAME).map(|v| v.as_bytes()) else {
        return own.clone();
    };
    let kept: Vec<&[u8]> = before
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|m| m.len() == 32 && m.iter().all(u8::is_ascii_hexdigit))
        .collect();
    let kept = &kept[kept.len().saturating_sub(MARKS_KEPT - 1)..];
    if kept.is_empty() {
        return own.clone();
    }
    let mut value = kept.join(&b", "[..]);
    value.extend_from_slice(b", ");
    value.extend_from_slice(own.as_bytes());
    hyper::header::HeaderValue::from_bytes(&value).unwrap_or_else(|_| own.clone())
}

/// The most gitgates' marks a request carries upstream (the newest): a chain longer than that
/// is no deployment's, and a client may not grow the header without end.
pub const MARKS_KEPT: usize = 8;

/// Draws this process's random half, once, before the first request. Without it (the unit
/// tests) ids count from zero; with no randomness to be had, from the time.
pub fn seed() {
    let mut bytes = [0u8; 4];
    let drawn = getrandom::getrandom(&mut bytes)
        .map(|()| u32::from_le_bytes(bytes))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
        });
    NEXT.store(u64::from(drawn) << 32, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sixteen_hex_digits_and_each_new() {
        let a = RequestId::next();
        let b = RequestId::next();
        assert_ne!(a, b);
        for id in [a, b] {
            let shown = id.to_string();
            assert_eq!(shown.len(), 16, "{shown}");
            assert_eq!(id.header_value().to_str().unwrap(), shown);
            assert!(shown
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        assert_eq!(RequestId(0xab).to_string(), "00000000000000ab");
    }

    #[test]
    fn a_request_with_this_process_mark_is_told_from_others() {
        let headers = |v: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(MARK_HEADER, v.parse().unwrap());
            h
        };
        let mark = own_mark().to_str().unwrap().to_owned();
        assert_eq!(mark.len(), 32);
        assert!(came_from_this_process(&headers(&mark)));
        let mut other = mark.clone().into_bytes();
        other[31] = if other[31] == b'0' { b'1' } else { b'0' };
        assert!(!came_from_this_process(&headers(
            std::str::from_utf8(&other).unwrap()
        )));
        assert!(!came_from_this_process(&headers(&mark[..31])));
        assert!(!came_from_this_process(&headers("-")));
        // Among the marks of a chain of gitgates, as a loop through two brings it back.
        let other = "0".repeat(32);
        assert!(came_from_this_process(&headers(&format!(
            "{other}, {mark}"
        ))));
        assert!(came_from_this_process(&headers(&format!("{mark},{other}"))));
        assert!(!came_from_this_process(&headers(&format!(
            "{other}, {other}"
        ))));
        // Sent on: the marks before this one (well-formed ones, the newest few), then its own.
        let chain = marks_to_send(&headers(&format!("{other}, junk, {other}")));
        assert_eq!(chain.to_str().unwrap(), format!("{other}, {other}, {mark}"));
        let long = vec![other.as_str(); 20].join(", ");
        let chain = marks_to_send(&headers(&long));
        assert_eq!(chain.to_str().unwrap().split(", ").count(), MARKS_KEPT);
        assert_eq!(marks_to_send(&hyper::HeaderMap::new()), *own_mark());
        // The request id, which an upstream may echo to clients, is no mark.
        let mut by_id = hyper::HeaderMap::new();
        by_id.insert("x-request-id", RequestId::next().header_value());
        assert!(!came_from_this_process(&by_id));
    }

    /// Only what has the form of a mark (32 hex digits) is passed on from a gitgate in front:
    /// shorter or longer runs of hex digits are no marks, and dropped.
    #[test]
    fn only_marks_of_the_right_length_are_sent_on() {
        let mut h = hyper::HeaderMap::new();
        let near = ["abc", &"1".repeat(31), &"2".repeat(33), &"3".repeat(64)].join(", ");
        h.insert(MARK_HEADER, near.parse().unwrap());
        assert_eq!(marks_to_send(&h), *own_mark());
        let one = "4".repeat(32);
        h.insert(MARK_HEADER, format!("{near}, {one}").parse().unwrap());
        let sent = marks_to_send(&h);
        assert_eq!(
            sent.to_str().unwrap(),
            format!("{one}, {}", own_mark().to_str().unwrap())
        );
    }
}
