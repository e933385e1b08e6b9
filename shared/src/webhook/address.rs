//! Which addresses a webhook may reach (server-side request forgery).
//!
//! A tenant chooses its webhook URL, so without a rule it could make the fleet call
//! anything the fleet can reach: a metadata service, a database port, an admin API on
//! loopback. Unless `TENANTRY_WEBHOOK_ALLOW_PRIVATE=true`, only public unicast
//! addresses are allowed. The rule is applied to the addresses the connection will
//! actually use: literal IPs in the URL are checked before sending, and host names
//! go through [`GuardedResolver`], which resolves them and refuses the name if ANY
//! address is not public — at connect time, so a name that resolved to a public
//! address when the URL was saved and to 127.0.0.1 now (DNS rebinding) is refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address may not be called, or None if it is a public unicast address.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified (\"this network\") address",
        (127, _, _) => "a loopback address",
        (10, _, _) | (192, 168, _) => "a private address",
        (172, b, _) if (16..32).contains(&b) => "a private address",
        (169, 254, _) => "a link-local address",
        (100, b, _) if (64..128).contains(&b) => "a shared (CGNAT) address",
        (192, 0, 0) => "an IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18 | 19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.to_ipv4_mapped().is_some() {
        return Some("an IPv4-mapped address");
    }
    // ::a.b.c.d (IPv4-compatible, deprecated) and 64:ff9b::/96 (NAT64) reach IPv4
    // addresses: judge the IPv4 address they carry.
    if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return refusal_v4(Ipv4Addr::new(a, b, c, d));
    }
    Some(match segments[0] {
        s if s & 0xff00 == 0xff00 => "a multicast address",
        s if s & 0xffc0 == 0xfe80 => "a link-local address",
        s if s & 0xffc0 == 0xfec0 => "a site-local address",
        s if s & 0xfe00 == 0xfc00 => "a unique local (private) address",
        0x2001 if segments[1] == 0x0db8 => "a documentation address",
        _ => return None,
    })
}

/// A destination the rule refuses: the error a delivery records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The URL's host: a name, or the address itself.
    pub host: String,
    pub ip: IpAddr,
    pub why: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "destination refused: ")?;
        if self.host != self.ip.to_string() {
            write!(f, "{} resolves to ", self.host)?;
        }
        write!(
            f,
            "{}, {} (set TENANTRY_WEBHOOK_ALLOW_PRIVATE=true to allow)",
            self.ip, self.why
        )
    }
}

impl std::error::Error for Refused {}

/// Checks every address of `host`; the first refused one is the error.
pub fn check_all(host: &str, addrs: &[SocketAddr]) -> Result<(), Refused> {
    for addr in addrs {
        if let Some(why) = refusal(addr.ip()) {
            return Err(Refused {
                host: host.to_owned(),
                ip: addr.ip(),
                why,
            });
        }
    }
    Ok(())
}

/// A DNS resolver that refuses names resolving to any non-public address.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            check_all(&host, &addrs)?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str) -> bool {
        refusal(raw.parse().unwrap()).is_some()
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn one_private_address_refuses_the_name() {
        let addrs: Vec<SocketAddr> = vec![
            "8.8.8.8:443".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        ];
        let err = check_all("evil.example", &addrs).unwrap_err();
        assert_eq!(err.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(err.to_string().contains("TENANTRY_WEBHOOK_ALLOW_PRIVATE"));
        assert!(check_all("ok.example", &addrs[..1]).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost() {
        let name: Name = "localhost".parse().unwrap();
        let result = GuardedResolver.resolve(name).await;
        let err = result.err().expect("localhost is refused");
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
