//! Source networks a token may be used from: CIDR blocks such as `10.0.0.0/8` or
//! `2001:db8::/32`, checked by the policy on every git request.
//!
//! Why our own small parser instead of a crate: the rules are a dozen lines on top of std's
//! address parsing, and the exact behaviour matters for security, so it is kept here in plain
//! sight with its tests. Decisions:
//! - a bare address means that one host (`/32` or `/128`);
//! - host bits below the prefix are cleared (`10.1.2.3/8` is stored and shown as `10.0.0.0/8`),
//!   so what the operator sees is exactly what is checked;
//! - an IPv4 client seen through an IPv6 socket (`::ffff:10.1.2.3`) is matched as IPv4.
//!
//! Pure: values in, values out.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The address a client counts under for limits kept per address: an IPv4-mapped IPv6 address
/// is its IPv4 one (a proxy may write either form), and an IPv6 address counts by its /64 — one
/// host or site usually has a whole /64, and could otherwise take a fresh address each time.
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One network: an address with the host bits cleared, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `networks` together cover half or more of all IPv4 or of all IPv6 addresses
    /// (`0.0.0.0/0`, or `0.0.0.0/1` and `128.0.0.0/1`): a list meant to name a few clients
    /// that names nearly everyone (overlaps are counted twice, so it may say so early).
    pub fn cover_half_of_a_family(networks: &[Cidr]) -> bool {
        let (mut v4, mut v6) = (0u128, 0u128);
        for n in networks {
            match n.addr {
                IpAddr::V4(_) => v4 = v4.saturating_add(1u128 << (32 - u32::from(n.prefix))),
                // IPv4-mapped (`::ffff:0:0/96` and within): IPv4 addresses.
                IpAddr::V6(a) if n.prefix >= 96 && a.to_ipv4_mapped().is_some() => {
                    v4 = v4.saturating_add(1u128 << (128 - u32::from(n.prefix)));
                }
                IpAddr::V6(_) => {
                    let bits = 128 - u32::from(n.prefix);
                    v6 = v6.saturating_add(1u128.checked_shl(bits).unwrap_or(u128::MAX));
                }
            }
        }
        v4 >= 1 << 31 || v6 >= 1 << 127
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!("'{s}' is not a network: {why} (use CIDR such as 10.0.0.0/8 or 2001:db8::/32)")
        };
        // Several networks in one item (`"10.0.0.0/8, 192.168.0.0/16"`, as an allowlist is
        // often written elsewhere) would otherwise be refused for a prefix that is "not a
        // number", which sends the reader to the wrong place.
        let separator = |c: char| matches!(c, ',' | ';' | ' ' | '\t');
        if let Some(sep) = s.trim().chars().find(|&c| separator(c)) {
            // One network and a stray separator (`"10.0.0.0/8,"`) is not several.
            let parts = s.split(separator).filter(|p| !p.is_empty()).count();
            return Err(bad(&if parts > 1 {
                format!(
                    "it holds several, separated by {sep:?}; give each network on its own (a \
                     list item of its own, or the option once for each)"
                )
            } else {
                format!("it has a stray {sep:?}; write the network alone")
            }));
        }
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = if let Ok(v4) = Ipv4Addr::from_str(addr_text) {
            IpAddr::V4(v4)
        } else if let Ok(v6) = Ipv6Addr::from_str(addr_text) {
            IpAddr::V6(v6)
        } else {
            return Err(bad(&not_an_address(addr_text, prefix_text)));
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                // Digits only: u8::from_str would accept "+8".
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("the prefix length must be a number"));
                }
                let n: u8 = p
                    .parse()
                    .map_err(|_| bad("the prefix length is too large"))?;
                if n > max {
                    return Err(bad(&format!("the prefix length must be at most {max}")));
                }
                n
            }
        };
        // An IPv4 network written in IPv6's mapped form (`::ffff:10.1.2.0/120`, as a dual-stack
        // listener shows its peers) is that IPv4 network: `contains` compares IPv4 addresses.
        let (addr, prefix) = match addr {
            IpAddr::V6(a) if prefix >= 96 => match a.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Ok(Cidr { addr, prefix })
    }
}

/// Why `text` is not an address, for the IPv6 spellings that are right elsewhere: with a zone
/// (`fe80::1%eth0`, as `ip addr` shows a link-local address) — a network has none, and a peer's
/// address is compared without its zone — or in brackets (`[::1]`, as in a URL).
fn not_an_address(text: &str, prefix: Option<&str>) -> String {
    let prefix = prefix.map(|p| format!("/{p}")).unwrap_or_default();
    if let Some((addr, zone)) = text.split_once('%') {
        if Ipv6Addr::from_str(addr).is_ok() {
            return format!(
                "a zone (%{zone}) names an interface, which a network does not have; write \
                 {addr}{prefix} (link-local clients match on any interface)"
            );
        }
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        if Ipv6Addr::from_str(inner).is_ok() {
            return format!("write the IPv6 address without brackets, {inner}{prefix}");
        }
    }
    "not an IPv4 or IPv6 address".into()
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parse a list of networks, e.g. from repeated `--allowed-network` options or a JSON array.
/// Duplicates are dropped; order is kept.
pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Cidr>, String> {
    let mut out: Vec<Cidr> = Vec::with_capacity(items.len());
    for item in items {
        let cidr: Cidr = item.as_ref().trim().parse()?;
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    Ok(out)
}

/// [`parse_list`] for networks given now (a token's allowed networks): one with address bits
/// past its prefix (`10.1.2.3/8`) is refused, not widened in silence to `10.0.0.0/8` — a typo
/// for `/32` would let a token work from a sixteen-million-address network. Also for the
/// config's `trusted_proxies`. (Lists already stored are read as before.)
pub fn parse_new_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Cidr>, String> {
    let list = parse_list(items)?;
    for item in items {
        let text = item.as_ref().trim();
        let Some((addr_text, _)) = text.split_once('/') else {
            continue; // a bare address is exactly itself
        };
        let cidr: Cidr = text.parse()?;
        let given = match addr_text.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) if cidr.addr.is_ipv4() => a.to_ipv4_mapped().map(IpAddr::V4),
            Ok(a) => Some(a),
            Err(_) => None,
        };
        if given != Some(cidr.addr) {
            let host = if cidr.addr.is_ipv4() { 32 } else { 128 };
            // The one address as the network is written: `::ffff:10.1.2.3/104` is IPv4.
            let one = given.map_or_else(|| addr_text.to_owned(), |a| a.to_string());
            return Err(format!(
                "'{text}' has address bits set past its /{prefix}: write {cidr} for the \
                 network, or {one}/{host} for the one address",
                prefix = cidr.prefix
            ));
        }
    }
    Ok(list)
}

/// Whether `ip` may use a token limited to `allowed` (an empty list means anywhere).
pub fn allowed(allowed: &[Cidr], ip: IpAddr) -> bool {
    allowed.is_empty() || allowed.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_given_now_may_not_have_bits_past_their_prefix() {
        let e = parse_new_list(&["10.1.2.3/8"]).unwrap_err();
        assert!(e.contains("10.0.0.0/8") && e.contains("10.1.2.3/32"), "{e}");
        assert!(parse_new_list(&["2001:db8::1/32"]).is_err());
        // An IPv4-mapped network is IPv4: the one address is suggested as such, and that
        // suggestion is taken.
        let e = parse_new_list(&["::ffff:10.1.2.3/104"]).unwrap_err();
        assert!(e.contains("or 10.1.2.3/32 for the one address"), "{e}");
        assert!(parse_new_list(&["10.1.2.3/32"]).is_ok());
        for fine in [
            "10.0.0.0/8",
            "10.1.2.3",
            "10.1.2.3/32",
            "::ffff:10.1.2.0/120",
            "2001:db8::/32",
        ] {
            assert!(parse_new_list(&[fine]).is_ok(), "{fine}");
        }
        // What is stored already still reads.
        assert!(parse_list(&["10.1.2.3/8"]).is_ok());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("2001:db8:1::5/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("::/0").to_string(), "::/0");
    }

    #[test]
    fn an_ipv4_network_in_mapped_form_is_that_ipv4_network() {
        let net = cidr("::ffff:10.1.2.0/120");
        assert_eq!(net.to_string(), "10.1.2.0/24");
        // As a dual-stack listener sees an IPv4 client, and as an IPv4 listener does.
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("10.1.3.3")));
        assert_eq!(cidr("::ffff:192.0.2.7").to_string(), "192.0.2.7/32");
        // Not in the mapped range: an IPv6 network as written.
        assert_eq!(cidr("::ffff:0:0/80").to_string(), "::/80");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "::/129",
            "example.com",
            "10.0.0.0/8/8",
            " 10.0.0.0/8",
            "10.0.0.0/0008",
            "1.2.3.4/ 8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} should be refused");
        }
        let msg = "10.0.0.0/40".parse::<Cidr>().unwrap_err();
        assert!(msg.contains("at most 32"), "{msg}");
    }

    /// Several networks in one item are refused as such, not for a prefix that is "not a
    /// number".
    #[test]
    fn several_networks_in_one_item_are_refused_as_several() {
        for (text, sep) in [
            ("10.0.0.0/8, 192.168.0.0/16", "','"),
            ("10.0.0.0/8,192.168.0.0/16", "','"),
            ("10.0.0.1 10.0.0.2", "' '"),
            ("::1;127.0.0.1", "';'"),
        ] {
            let msg = text.parse::<Cidr>().unwrap_err();
            assert!(
                msg.contains(&format!("it holds several, separated by {sep}"))
                    && msg.contains("each network on its own"),
                "{text}: {msg}"
            );
            let msg = parse_new_list(&[text]).unwrap_err();
            assert!(msg.contains("it holds several"), "{text}: {msg}");
        }
        // Spaces around one network are not several (a list's items are trimmed).
        assert!(parse_list(&[" 10.0.0.0/8 "]).is_ok());
        // One network and a stray separator is not several either: the stray one is named.
        for (text, sep) in [
            ("10.0.0.0/8,", "','"),
            (";::1", "';'"),
            ("10.0.0.1,,", "','"),
        ] {
            let msg = text.parse::<Cidr>().unwrap_err();
            assert!(
                msg.contains(&format!("it has a stray {sep}; write the network alone"))
                    && !msg.contains("several"),
                "{text}: {msg}"
            );
        }
    }

    /// IPv6 as `ip addr` (with a zone) and URLs (in brackets) write it is refused, saying what
    /// to write instead rather than "not an IPv6 address".
    #[test]
    fn a_zone_or_brackets_are_refused_with_what_to_write() {
        let msg = "fe80::1%lo".parse::<Cidr>().unwrap_err();
        assert!(
            msg.contains("a zone (%lo)") && msg.contains("write fe80::1 "),
            "{msg}"
        );
        let msg = "fe80::%eth0/10".parse::<Cidr>().unwrap_err();
        assert!(
            msg.contains("a zone (%eth0)") && msg.contains("write fe80::/10 "),
            "{msg}"
        );
        let msg = "[::1]".parse::<Cidr>().unwrap_err();
        assert!(msg.contains("without brackets, ::1"), "{msg}");
        let msg = "[2001:db8::]/32".parse::<Cidr>().unwrap_err();
        assert!(msg.contains("without brackets, 2001:db8::/32 "), "{msg}");
        for other in ["example.com", "10.0.0.1%lo", "[10.0.0.1]"] {
            let msg = other.parse::<Cidr>().unwrap_err();
            assert!(
                msg.contains("not an IPv4 or IPv6 address"),
                "{other}: {msg}"
            );
        }
    }

    #[test]
    fn contains_v4() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1").contains(ip("127.0.0.2")));
        // An IPv4 client seen on an IPv6 socket.
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("::1")));
    }

    #[test]
    fn contains_v6() {
        let net = cidr("2001:db8::/32");
        assert!(net.contains(ip("2001:db8:ffff::1")));
        assert!(!net.contains(ip("2001:db9::1")));
        assert!(!net.contains(ip("10.0.0.1")));
        assert!(cidr("::/0").contains(ip("fe80::1")));
        assert!(cidr("::1/128").contains(ip("::1")));
    }

    #[test]
    fn lists() {
        let l = parse_list(&["10.0.0.0/8", "10.1.0.0/8", "::1"]).unwrap();
        assert_eq!(l.len(), 2);
        assert!(allowed(&l, ip("10.2.3.4")));
        assert!(allowed(&l, ip("::1")));
        assert!(!allowed(&l, ip("192.168.0.1")));
        assert!(allowed(&[], ip("192.168.0.1")));
        assert!(parse_list(&["10.0.0.0/8", "nope"]).is_err());
    }

    /// Half of all IPv4 addresses is half: `0.0.0.0/1` alone is reported, a quarter is not.
    #[test]
    fn exactly_half_of_a_family_is_half() {
        assert!(Cidr::cover_half_of_a_family(&[cidr("0.0.0.0/1")]));
        assert!(Cidr::cover_half_of_a_family(&[cidr("::/1")]));
        assert!(!Cidr::cover_half_of_a_family(&[cidr("0.0.0.0/2")]));
        assert!(!Cidr::cover_half_of_a_family(&[cidr("::/2")]));
        assert!(Cidr::cover_half_of_a_family(&[
            cidr("0.0.0.0/2"),
            cidr("64.0.0.0/2")
        ]));
    }

    /// The whole IPv4-mapped range, `::ffff:0:0/96`, is every IPv4 address, as an IPv4
    /// network: matched against IPv4 clients, not an IPv6 network no client is in.
    #[test]
    fn the_whole_mapped_range_is_the_ipv4_space() {
        let net = cidr("::ffff:0:0/96");
        assert_eq!(net.to_string(), "0.0.0.0/0");
        assert!(net.contains(ip("203.0.113.9")));
        assert!(net.contains(ip("::ffff:203.0.113.9")));
        assert!(Cidr::cover_half_of_a_family(&[net]));
    }
}
