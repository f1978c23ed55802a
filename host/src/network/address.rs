//! Server-side request forgery: which resolved addresses a task may not
//! connect to unless its allow-list names them as an IP literal or block.
//! Checked on the address actually connected to, after DNS, so a name that
//! resolves (or rebinds) to 127.0.0.1, 10.0.0.5 or 169.254.169.254 gains
//! nothing.

use super::allow::{AllowList, Scheme};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not a public destination, or `None` when it is.
/// IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64, 6to4) are
/// judged as the IPv4 address they carry.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified (0.0.0.0/8)",
        (127, ..) => "loopback",
        (10, ..) => "private (RFC 1918)",
        (172, 16..=31, _) => "private (RFC 1918)",
        (192, 168, _) => "private (RFC 1918)",
        (169, 254, _) => "link-local (where cloud metadata services live)",
        (100, 64..=127, _) => "shared address space (carrier-grade NAT)",
        (192, 0, 0) => "IETF protocol assignments",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved or broadcast",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let seg = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    Some(match seg {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
        // IPv4-compatible (deprecated): judged as the IPv4 address.
        [0, 0, 0, 0, 0, 0, hi, lo] => return special_v4(embedded(hi, lo)),
        // NAT64 well-known prefix: the IPv4 address is in the last 32 bits.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return special_v4(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64",
        // 6to4: the IPv4 address follows the prefix.
        [0x2002, hi, lo, ..] => return special_v4(embedded(hi, lo)),
        [0x2001, 0, ..] => "Teredo (an IPv4 address in disguise)",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x100, 0, 0, 0, ..] => "discard-only",
        [s, ..] if s & 0xfe00 == 0xfc00 => "unique-local (private)",
        [s, ..] if s & 0xffc0 == 0xfe80 => "link-local",
        [s, ..] if s & 0xffc0 == 0xfec0 => "site-local (private)",
        [s, ..] if s & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// Whether a task may connect to `ip` for a request to `scheme`, `port`:
/// public addresses always (the name was already allowed), special ones
/// only when the allow-list names them. `Err` says what the address is.
pub fn check(allow: &AllowList, scheme: Scheme, ip: IpAddr, port: u16) -> Result<(), &'static str> {
    match special(ip) {
        Some(why) if !allow.names_address(scheme, ip, port) => Err(why),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_link_local_and_their_disguises_are_special() {
        for (addr, what) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.0.0.5", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.100.100.200", "carrier-grade"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.5", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:a00:5::1", "private"),
            ("fd00::1", "unique-local"),
            ("fc12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:0:4136:e378::1", "Teredo"),
            ("192.0.0.8", "IETF protocol"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.1", "benchmarking"),
            ("64:ff9b:1::a00:5", "local-use NAT64"),
            ("2001:db8::1", "documentation"),
            ("100::1", "discard-only"),
        ] {
            let why = special(ip(addr)).unwrap_or_else(|| panic!("{addr} is special"));
            assert!(why.contains(what), "{addr}: {why}");
        }
        // IPv6's own unspecified address is named as such, not as the IPv4
        // block its bits would also spell.
        assert_eq!(special(ip("::")), Some("unspecified"));
        // Just outside the blocks above: public.
        for addr in ["192.0.3.1", "198.51.101.1", "203.0.114.1", "198.20.0.1", "198.17.255.255", "64:ff9b:2::1"] {
            assert_eq!(special(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn public_addresses_are_not_special() {
        for addr in
            ["1.1.1.1", "8.8.8.8", "140.82.112.3", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
        {
            assert_eq!(special(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn a_special_address_passes_only_when_the_allow_list_names_it() {
        let by_name = AllowList::new(vec!["http://localhost:8080".parse().unwrap()]);
        assert_eq!(check(&by_name, Scheme::Http, ip("127.0.0.1"), 8080), Err("loopback"));
        let literal = AllowList::new(vec!["http://127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(check(&literal, Scheme::Http, ip("127.0.0.1"), 8080), Ok(()));
        assert_eq!(check(&literal, Scheme::Http, ip("::ffff:127.0.0.1"), 8080), Ok(()), "mapped form of the literal");
        assert_eq!(check(&literal, Scheme::Http, ip("127.0.0.1"), 8081), Err("loopback"), "another port");
        assert_eq!(check(&literal, Scheme::Https, ip("127.0.0.1"), 8080), Err("loopback"), "another scheme");
        assert!(check(&literal, Scheme::Http, ip("169.254.169.254"), 8080).is_err());
        let block = AllowList::new(vec!["http://10.0.0.0/8:80".parse().unwrap()]);
        assert_eq!(check(&block, Scheme::Http, ip("10.9.8.7"), 80), Ok(()));
        assert!(check(&block, Scheme::Http, ip("192.168.0.1"), 80).is_err());
        assert_eq!(check(&AllowList::default(), Scheme::Https, ip("140.82.112.3"), 443), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn a_mapped_address_is_judged_as_its_ipv4(a in proptest::prelude::any::<u32>()) {
            let v4 = Ipv4Addr::from(a);
            proptest::prop_assert_eq!(special(IpAddr::V6(v4.to_ipv6_mapped())), special_v4(v4));
        }
    }
}
