//! Who a client is, by IP, and the per-IP limits.
//!
//! Behind a reverse proxy every connection comes from the proxy's address,
//! so the client's own is taken from `X-Forwarded-For` or `Forwarded`, but
//! only when the connection comes from a `--trusted-proxies` address:
//! anyone else could write any address there. Of a chain of addresses the
//! right-most one not itself a trusted proxy is the client (the left part
//! is whatever the client sent).
//!
//! The limits count across all shards (one mutex, taken once when a
//! connection's first request arrives and once when it ends): the kernel
//! spreads one client's connections over every shard's listener, so
//! per-shard counts would allow shards times the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use ringcast_core::limits::Rate;
use ringcast_proto::http::Request;

/// An address block: `10.0.0.0/8`, `::1`, `192.168.1.7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.addr), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub fn parse_proxies(list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter().map(|s| Cidr::parse(s)).collect()
}

/// The client's IP: the peer's, or (from a trusted proxy) the right-most
/// untrusted address its forwarding headers name.
pub fn client_ip(peer: IpAddr, req: &Request, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return canonical(peer);
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in req.headers_named("forwarded") {
        for element in String::from_utf8_lossy(v).split(',') {
            for pair in element.split(';') {
                let Some((k, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for") {
                    if let Some(ip) = parse_node(v.trim().trim_matches('"')) {
                        chain.push(ip);
                    }
                }
            }
        }
    }
    if chain.is_empty() {
        for v in req.headers_named("x-forwarded-for") {
            chain.extend(
                String::from_utf8_lossy(v)
                    .split(',')
                    .filter_map(|s| parse_node(s.trim())),
            );
        }
    }
    chain
        .into_iter()
        .rev()
        .map(canonical)
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(canonical(peer))
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[::1]`, `[::1]:80`, `::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

/// Why a client was turned away before its request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManyConnections,
    TooManyNewConnections,
}

#[derive(Debug, Default)]
struct PerIp {
    open: usize,
    bucket: ringcast_core::session::Bucket,
}

/// The per-IP table, shared by the shards.
#[derive(Debug)]
pub struct IpLimits {
    max_open: usize,
    rate: Rate,
    table: Mutex<HashMap<IpAddr, PerIp>>,
}

impl IpLimits {
    pub fn new(max_open: usize, per_second: u32) -> IpLimits {
        IpLimits {
            max_open,
            rate: Rate {
                per_second: f64::from(per_second),
                // A page load opens a few connections at once.
                burst: f64::from(per_second.max(1)),
            },
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_active(&self) -> bool {
        self.max_open > 0 || self.rate.is_limited()
    }

    /// A connection from `ip` begins: counted, unless refused. Every
    /// `Ok` must be matched by one [`IpLimits::end`].
    pub fn begin(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if !self.is_active() {
            return Ok(());
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let e = table.entry(ip).or_default();
        if self.max_open > 0 && e.open >= self.max_open {
            return Err(Refused::TooManyConnections);
        }
        if !e.bucket.take(self.rate, now) {
            return Err(Refused::TooManyNewConnections);
        }
        e.open += 1;
        Ok(())
    }

    /// A connection from `ip` that [`IpLimits::begin`] counted ended.
    pub fn end(&self, ip: IpAddr, now: Instant) {
        if !self.is_active() {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = table.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
        }
        // Forget the idle (bounded memory: only IPs with connections, or
        // with new ones in the last second, are kept).
        let rate = self.rate;
        table.retain(|_, e| e.open > 0 || !e.bucket.is_full(rate, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_proto::http::{HeadLimits, HeadParser};

    fn req(headers: &str) -> Request {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        HeadParser::new()
            .parse(raw.as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")), "mapped IPv4");
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("1.2.3.4/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn forwarding_headers_only_from_trusted_proxies() {
        let proxies = parse_proxies(&["10.0.0.0/8".into()]).unwrap();
        let r = req("X-Forwarded-For: 6.6.6.6, 203.0.113.9, 10.0.0.2\r\n");
        // From the proxy: the right-most address that is not a proxy.
        assert_eq!(client_ip(ip("10.0.0.1"), &r, &proxies), ip("203.0.113.9"));
        // From anyone else: the header is the client's own writing.
        assert_eq!(
            client_ip(ip("198.51.100.7"), &r, &proxies),
            ip("198.51.100.7")
        );
        let r = req("Forwarded: for=203.0.113.60;proto=http, for=\"[2001:db8::1]:4711\"\r\n");
        assert_eq!(client_ip(ip("10.9.9.9"), &r, &proxies), ip("2001:db8::1"));
        // Nothing usable: the proxy itself.
        let r = req("X-Forwarded-For: garbage\r\n");
        assert_eq!(client_ip(ip("10.0.0.1"), &r, &proxies), ip("10.0.0.1"));
    }

    #[test]
    fn per_ip_limits_count_and_recover() {
        let t0 = Instant::now();
        let limits = IpLimits::new(2, 100);
        let a = ip("192.0.2.1");
        assert!(limits.begin(a, t0).is_ok());
        assert!(limits.begin(a, t0).is_ok());
        assert_eq!(limits.begin(a, t0), Err(Refused::TooManyConnections));
        assert!(limits.begin(ip("192.0.2.2"), t0).is_ok(), "another IP");
        limits.end(a, t0);
        assert!(limits.begin(a, t0).is_ok(), "room again");
        let rate = IpLimits::new(0, 2);
        assert!(rate.begin(a, t0).is_ok() && rate.begin(a, t0).is_ok());
        assert_eq!(rate.begin(a, t0), Err(Refused::TooManyNewConnections));
        assert!(rate
            .begin(a, t0 + std::time::Duration::from_secs(1))
            .is_ok());
    }
}
