//! Allow-list entries: `scheme://host[:port]`, as in Spin's
//! `allowed_outbound_hosts`. A host is a DNS name, a name under a wildcard
//! (`*.example.com`: any name below `example.com`, not `example.com`
//! itself), an IP literal (`127.0.0.1`, `[::1]`) or a CIDR block
//! (`10.0.0.0/8`, `[fd00::]/8`). The port defaults to the scheme's (80,
//! 443). Paths, queries, user info and a bare `*` are refused: an entry
//! names a destination, nothing less and nothing more.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// Parses `http` / `https`, any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    /// The port a URL without one means.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `http` / `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The host part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// Any name ending in `.` + this suffix.
    Below(String),
    /// Exactly this address.
    Ip(IpAddr),
    /// Any address in this block.
    Cidr(IpAddr, u8),
}

/// A request's destination host: a name (lowercase, no trailing dot) or an
/// IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, still to be resolved.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl Host {
    /// Parses the host of a URL authority (`example.com`, `127.0.0.1`,
    /// `[::1]`).
    pub fn parse(s: &str) -> Self {
        let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        match inner.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip.to_canonical()),
            Err(_) => Host::Name(s.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Where a request goes: scheme, host, port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Scheme.
    pub scheme: Scheme,
    /// Host as the request names it.
    pub host: Host,
    /// Port (the scheme's default when the URL has none).
    pub port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// Scheme.
    pub scheme: Scheme,
    /// Host pattern.
    pub host: HostPattern,
    /// Port.
    pub port: u16,
}

impl AllowEntry {
    /// Whether a request to `dest` matches this entry by name or literal
    /// (before any DNS resolution).
    pub fn matches(&self, dest: &Destination) -> bool {
        if self.scheme != dest.scheme || self.port != dest.port {
            return false;
        }
        match (&self.host, &dest.host) {
            (HostPattern::Name(n), Host::Name(h)) => n == h,
            (HostPattern::Below(suffix), Host::Name(h)) => {
                h.len() > suffix.len() + 1 && h.ends_with(suffix.as_str()) && h[..h.len() - suffix.len()].ends_with('.')
            }
            (HostPattern::Ip(_) | HostPattern::Cidr(..), Host::Ip(ip)) => self.covers(*ip),
            _ => false,
        }
    }

    /// Whether this entry names `ip` as an IP literal or CIDR block: the
    /// only way a loopback, private or link-local address is allowed.
    pub fn covers(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self.host {
            HostPattern::Ip(a) => a == ip,
            HostPattern::Cidr(net, len) => in_block(ip, net, len),
            _ => false,
        }
    }
}

fn in_block(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Below(s) => write!(f, "*.{s}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostPattern::Ip(ip) => write!(f, "{ip}")?,
            HostPattern::Cidr(IpAddr::V6(ip), len) => write!(f, "[{ip}]/{len}")?,
            HostPattern::Cidr(ip, len) => write!(f, "{ip}/{len}")?,
        }
        write!(f, ":{}", self.port)
    }
}

const SYNTAX: &str =
    "write scheme://host[:port], e.g. https://api.github.com, https://*.example.com or http://127.0.0.1:8080";

impl FromStr for AllowEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("{text:?}: {why}; {SYNTAX}"));
        let t = text.trim();
        if t == "*" || t.contains("://*:") || t.ends_with("://*") {
            return bad("a bare `*` would allow every host: name the hosts");
        }
        let Some((scheme, rest)) = t.split_once("://") else {
            return bad("no scheme");
        };
        let Some(scheme) = Scheme::parse(scheme) else {
            return bad("the scheme must be http or https");
        };
        if rest.contains('@') {
            return bad("user info (`user@`) is not allowed: credentials come from bound secrets");
        }
        if rest.contains('?') || rest.contains('#') {
            return bad("a query or fragment is not allowed");
        }
        // One trailing `/` is what a copied URL ends with; a path is refused.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_host_port(rest).map_err(|why| format!("{text:?}: {why}; {SYNTAX}"))?;
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return bad("the port must be a number from 1 to 65535"),
            },
        };
        let host = parse_pattern(host).map_err(|why| format!("{text:?}: {why}; {SYNTAX}"))?;
        Ok(AllowEntry { scheme, host, port })
    }
}

/// Splits `host[/len][:port]` (IPv6 in brackets); refuses paths.
fn split_host_port(rest: &str) -> Result<(&str, Option<&str>), &'static str> {
    if rest.is_empty() {
        return Err("no host");
    }
    let (host, after) = if rest.starts_with('[') {
        let end = rest.find(']').ok_or("an IPv6 address needs its closing `]`")?;
        let (h, a) = rest.split_at(end + 1);
        // A CIDR length follows the bracket: `[fd00::]/8`.
        match a.strip_prefix('/') {
            Some(cidr) => {
                let len_end = cidr.find(':').unwrap_or(cidr.len());
                let (len, a) = cidr.split_at(len_end);
                return finish(&rest[..h.len() + 1 + len.len()], a);
            }
            None => (h, a),
        }
    } else {
        let end = rest.find(':').unwrap_or(rest.len());
        rest.split_at(end)
    };
    finish(host, after)
}

fn finish<'a>(host: &'a str, after: &'a str) -> Result<(&'a str, Option<&'a str>), &'static str> {
    let port = match after.strip_prefix(':') {
        Some(p) => Some(p),
        None if after.is_empty() => None,
        None => return Err("paths are not allowed: an entry names scheme://host[:port] only"),
    };
    if let Some(p) = port
        && p.contains('/')
    {
        return Err("paths are not allowed: an entry names scheme://host[:port] only");
    }
    // `host/path` without a port: the `/` is in `host`.
    if host.contains('/') && !is_cidr(host) {
        return Err("paths are not allowed: an entry names scheme://host[:port] only");
    }
    Ok((host, port))
}

fn is_cidr(host: &str) -> bool {
    host.rsplit_once('/').is_some_and(|(ip, len)| {
        let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
        ip.parse::<IpAddr>().is_ok() && !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit())
    })
}

fn parse_pattern(host: &str) -> Result<HostPattern, String> {
    if let Some((ip, len)) = host.rsplit_once('/') {
        let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
        let ip: IpAddr = ip.parse().map_err(|_| format!("{ip:?} is not an IP address (a CIDR block is IP/length)"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = len.parse().ok().filter(|l| *l <= max).ok_or(format!("the prefix length must be 0 to {max}"))?;
        if len == 0 {
            return Err("a /0 block would allow every address: name the addresses".into());
        }
        return Ok(HostPattern::Cidr(ip.to_canonical(), len));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<IpAddr>()
            .map(|ip| HostPattern::Ip(ip.to_canonical()))
            .map_err(|_| format!("{inner:?} is not an IPv6 address"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(HostPattern::Ip(ip.to_canonical()));
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let (below, name) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, name),
    };
    if name.contains('*') {
        return Err("`*` may only be the whole first label (`*.example.com`)".into());
    }
    check_name(&name)?;
    Ok(if below { HostPattern::Below(name) } else { HostPattern::Name(name) })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a host name is 1 to 253 characters".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{name:?} is not a host name (labels of letters, digits and inner `-`)"));
        }
    }
    Ok(())
}

impl<'de> serde::Deserialize<'de> for AllowEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for AllowEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A task's allow-list: empty means no network at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<AllowEntry>);

impl AllowList {
    /// From entries.
    pub fn new(entries: Vec<AllowEntry>) -> Self {
        AllowList(entries)
    }

    /// The entries.
    pub fn entries(&self) -> &[AllowEntry] {
        &self.0
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some entry allows `dest` by its name or literal.
    pub fn permits(&self, dest: &Destination) -> bool {
        self.0.iter().any(|e| e.matches(dest))
    }

    /// Whether some entry for `scheme` and `port` names `ip` as a literal
    /// or block.
    pub fn names_address(&self, scheme: Scheme, ip: IpAddr, port: u16) -> bool {
        self.0.iter().any(|e| e.scheme == scheme && e.port == port && e.covers(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str) -> AllowEntry {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn dest(scheme: Scheme, host: &str, port: u16) -> Destination {
        Destination { scheme, host: Host::parse(host), port }
    }

    #[test]
    fn entries_parse_with_default_ports_and_print_canonically() {
        assert_eq!(entry("https://api.github.com").to_string(), "https://api.github.com:443");
        assert_eq!(entry("HTTP://Example.COM./").to_string(), "http://example.com:80");
        assert_eq!(entry("https://*.example.com:8443").to_string(), "https://*.example.com:8443");
        assert_eq!(entry("http://127.0.0.1:8080").to_string(), "http://127.0.0.1:8080");
        assert_eq!(entry("http://[::1]:8080").to_string(), "http://[::1]:8080");
        assert_eq!(entry("http://10.0.0.0/8:80").to_string(), "http://10.0.0.0/8:80");
        assert_eq!(entry("http://[fd00::]/8").to_string(), "http://[fd00::]/8:80");
        assert_eq!(entry("http://[::ffff:127.0.0.1]:1").host, HostPattern::Ip("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn paths_userinfo_wildcards_and_bad_ports_are_refused_with_the_reason() {
        for (text, why) in [
            ("*", "bare `*`"),
            ("https://*", "bare `*`"),
            ("https://*:443", "bare `*`"),
            ("api.github.com", "no scheme"),
            ("ftp://example.com", "http or https"),
            ("https://user:pw@example.com", "user info"),
            ("https://example.com/repos", "paths are not allowed"),
            ("https://example.com:443/repos", "paths are not allowed"),
            ("https://example.com?x=1", "query"),
            ("https://example.com:0", "port"),
            ("https://example.com:99999", "port"),
            ("https://ex*ample.com", "first label"),
            ("https://a.*.example.com", "first label"),
            ("https://exa mple.com", "not a host name"),
            ("http://10.0.0.0/33", "prefix length"),
            ("http://0.0.0.0/0", "every address"),
            ("http://[::1", "closing"),
            ("https://", "no host"),
            ("http://[::1]x", "paths are not allowed"),
            ("https://example.com/16", "paths are not allowed"),
            ("http://10.0.0.0/abc", "paths are not allowed"),
            ("http://10.0.0.0//", "paths are not allowed"),
        ] {
            let e = text.parse::<AllowEntry>().unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains("scheme://host[:port]"), "{e}");
        }
        // A name is at most 253 characters (labels of at most 63).
        let name = |n: usize| {
            let mut labels = vec!["a".repeat(63); n / 64];
            labels.push("b".repeat(n - labels.len() * 64));
            labels.join(".")
        };
        assert_eq!(name(253).len(), 253);
        assert!(format!("https://{}", name(253)).parse::<AllowEntry>().is_ok());
        for n in [254, 255, 300] {
            let e = format!("https://{}", name(n)).parse::<AllowEntry>().unwrap_err();
            assert!(e.contains("1 to 253"), "{n}: {e}");
        }
    }

    #[test]
    fn matching_is_by_scheme_host_and_port() {
        let list = AllowList::new(vec![
            entry("https://api.github.com"),
            entry("https://*.example.com"),
            entry("http://127.0.0.1:8080"),
            entry("http://10.1.0.0/16:80"),
        ]);
        assert!(list.permits(&dest(Scheme::Https, "api.github.com", 443)));
        assert!(list.permits(&dest(Scheme::Https, "API.GitHub.com.", 443)));
        assert!(!list.permits(&dest(Scheme::Http, "api.github.com", 80)), "scheme");
        assert!(!list.permits(&dest(Scheme::Https, "api.github.com", 8443)), "port");
        assert!(!list.permits(&dest(Scheme::Https, "github.com", 443)));
        assert!(list.permits(&dest(Scheme::Https, "a.example.com", 443)));
        assert!(list.permits(&dest(Scheme::Https, "a.b.example.com", 443)));
        assert!(!list.permits(&dest(Scheme::Https, "example.com", 443)), "the wildcard is below the name");
        assert!(!list.permits(&dest(Scheme::Https, ".example.com", 443)), "an empty label is not a name below");
        assert!(!list.permits(&dest(Scheme::Https, "badexample.com", 443)));
        assert!(!list.permits(&dest(Scheme::Https, "example.com.evil.net", 443)));
        assert!(list.permits(&dest(Scheme::Http, "127.0.0.1", 8080)));
        assert!(list.permits(&dest(Scheme::Http, "[::ffff:127.0.0.1]", 8080)), "mapped form");
        assert!(!list.permits(&dest(Scheme::Http, "localhost", 8080)), "a name is not its address");
        assert!(list.permits(&dest(Scheme::Http, "10.1.200.3", 80)));
        assert!(!list.permits(&dest(Scheme::Http, "10.2.0.1", 80)));
        assert!(list.names_address(Scheme::Http, "127.0.0.1".parse().unwrap(), 8080));
        assert!(!list.names_address(Scheme::Http, "127.0.0.1".parse().unwrap(), 8081));
        assert!(AllowList::default().is_empty() && !AllowList::default().permits(&dest(Scheme::Https, "a.b", 443)));
    }

    #[test]
    fn an_ipv6_block_covers_exactly_its_prefix() {
        let block = entry("http://[fd00:ab::]/32:80");
        assert!(block.covers("fd00:ab::1".parse().unwrap()));
        assert!(block.covers("fd00:ab:ffff:1::5".parse().unwrap()));
        assert!(!block.covers("fd00:ac::1".parse().unwrap()));
        assert!(!block.covers("fd01:ab::1".parse().unwrap()));
        assert!(!block.covers("10.0.0.1".parse().unwrap()), "another family");
        let half = entry("http://[8000::]/1:80");
        assert!(half.covers("ffff::1".parse().unwrap()) && !half.covers("7fff::1".parse().unwrap()));
        let one = entry("http://[fd00::7]/128:80");
        assert!(one.covers("fd00::7".parse().unwrap()) && !one.covers("fd00::6".parse().unwrap()));
    }

    /// The first `len` bits, one by one: what a block means, written slowly.
    fn same_prefix(a: &[u8], b: &[u8], len: usize) -> bool {
        (0..len).all(|i| (a[i / 8] >> (7 - i % 8)) & 1 == (b[i / 8] >> (7 - i % 8)) & 1)
    }

    proptest::proptest! {
        #[test]
        fn a_block_covers_the_addresses_that_share_its_prefix(
            ip in proptest::prelude::any::<[u8; 16]>(),
            net in proptest::prelude::any::<[u8; 16]>(),
            common in 0usize..=128,
            len in 0u8..=128,
            v4 in proptest::prelude::any::<bool>(),
        ) {
            // Most random pairs differ in the first bit: copy a prefix so
            // that long shared prefixes are common too.
            let mut ip = ip;
            ip[..common / 8].copy_from_slice(&net[..common / 8]);
            let (ip, net, len) = if v4 {
                let a = IpAddr::from([ip[0], ip[1], ip[2], ip[3]]);
                let n = IpAddr::from([net[0], net[1], net[2], net[3]]);
                (a, n, len % 33)
            } else {
                (IpAddr::from(ip), IpAddr::from(net), len)
            };
            let bytes = |a: IpAddr| match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            proptest::prop_assert_eq!(in_block(ip, net, len), same_prefix(&bytes(ip), &bytes(net), usize::from(len)));
        }

        #[test]
        fn parsing_never_panics_and_what_parses_reparses_to_itself(text in "\\PC{0,40}") {
            if let Ok(e) = text.parse::<AllowEntry>() {
                let again: AllowEntry = e.to_string().parse().unwrap();
                proptest::prop_assert_eq!(again, e);
            }
        }

        #[test]
        fn generated_entries_round_trip(
            https in proptest::prelude::any::<bool>(),
            labels in proptest::collection::vec("[a-z0-9]{1,8}", 1..4),
            wildcard in proptest::prelude::any::<bool>(),
            port in proptest::option::of(1u16..),
        ) {
            let scheme = if https { "https" } else { "http" };
            let host = format!("{}{}", if wildcard { "*." } else { "" }, labels.join("."));
            let text = match port { Some(p) => format!("{scheme}://{host}:{p}"), None => format!("{scheme}://{host}") };
            let e: AllowEntry = text.parse().unwrap();
            proptest::prop_assert_eq!(e.to_string().parse::<AllowEntry>().unwrap(), e);
        }
    }
}
