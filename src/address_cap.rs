//! At most `[server] max_connections_per_address` connections from one client address.
//!
//! `max_connections` bounds what gitgate serves at once, but one client could take all of it:
//! a keep-alive connection that sends a cheap request every `header_read_timeout` holds its
//! place for as long as it likes, and a thousand of them shut everyone else out. With this cap
//! one address (an IPv6 /64, as for the failed-authentication throttle) holds at most so many;
//! a connection past it is still served, but every request on it is answered `503` with the
//! reason and the connection closed — so git prints why instead of "connection reset".
//!
//! The cap is counted on the TCP peer, taken in the acceptor before the connection reaches a
//! worker, and given back when the connection's socket closes (after its last answer has gone
//! out: see [`crate::closing`]). A trusted proxy (`[server] trusted_proxies`) has no cap: every
//! client behind it shares its address. Off unless set.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::network::{client_key, Cidr};

/// Open connections per client address.
pub struct AddressCap {
    max: usize,
    trusted: Vec<Cidr>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place under the cap, given back on drop.
pub struct AddressPlace {
    cap: Arc<AddressCap>,
    key: IpAddr,
}

/// What the cap says about a new connection.
pub enum Admission {
    /// Under the cap (or not counted: a trusted proxy); the place goes with the connection.
    Admitted(Option<AddressPlace>),
    /// The address already holds `max` connections.
    OverCap { max: usize },
}

impl AddressCap {
    pub fn new(max: usize, trusted: Vec<Cidr>) -> Arc<AddressCap> {
        Arc::new(AddressCap {
            max,
            trusted,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Count a new connection from `peer`, unless its address is at the cap.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        if self.trusted.iter().any(|net| net.contains(peer)) {
            return Admission::Admitted(None);
        }
        let key = client_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return Admission::OverCap { max: self.max };
        }
        *count += 1;
        Admission::Admitted(Some(AddressPlace {
            cap: self.clone(),
            key,
        }))
    }

    /// Connections counted for `peer`'s address now.
    #[cfg(test)]
    fn open(&self, peer: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&client_key(peer)).copied().unwrap_or(0)
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The answer to every request on a connection past the cap: one line, without its end
/// ([`crate::gate::text`] ends it, as it does every refusal's).
pub fn refusal(max: usize) -> String {
    format!(
        "too many connections from your address (at most {max} at once); close some and try again"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admitted(a: Admission) -> Option<AddressPlace> {
        match a {
            Admission::Admitted(place) => place,
            Admission::OverCap { .. } => panic!("refused under the cap"),
        }
    }

    #[test]
    fn an_address_holds_at_most_max_and_gets_its_places_back() {
        let cap = AddressCap::new(2, vec![]);
        let a = admitted(cap.admit(ip("192.0.2.1")));
        let b = admitted(cap.admit(ip("::ffff:192.0.2.1")));
        assert!(matches!(
            cap.admit(ip("192.0.2.1")),
            Admission::OverCap { max: 2 }
        ));
        // Another address is not affected.
        let _other = admitted(cap.admit(ip("192.0.2.2")));
        drop(a);
        assert_eq!(cap.open(ip("192.0.2.1")), 1);
        let c = admitted(cap.admit(ip("192.0.2.1")));
        drop(b);
        drop(c);
        assert_eq!(cap.open(ip("192.0.2.1")), 0);
        assert!(
            cap.open.lock().unwrap().get(&ip("192.0.2.1")).is_none(),
            "no entry left"
        );
    }

    /// The answer's body is the reason and one line end, as every refusal's: a reason that
    /// brought its own end was sent with a blank line after it.
    #[test]
    fn the_refusal_is_one_line_in_its_answer() {
        let reason = refusal(3);
        assert!(!reason.contains('\n'), "{reason:?}");
        assert!(reason.contains("(at most 3 at once)"), "{reason:?}");
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address_and_trusted_proxies_have_no_cap() {
        let cap = AddressCap::new(1, vec!["10.0.0.0/8".parse().unwrap()]);
        let _a = admitted(cap.admit(ip("2001:db8:1:2::1")));
        assert!(matches!(
            cap.admit(ip("2001:db8:1:2::ffff")),
            Admission::OverCap { .. }
        ));
        let _b = admitted(cap.admit(ip("2001:db8:1:3::1")));
        for _ in 0..5 {
            assert!(admitted(cap.admit(ip("10.1.2.3"))).is_none(), "not counted");
        }
    }
}
