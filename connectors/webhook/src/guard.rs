use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// SSRF guard: which addresses a webhook may connect to. Used as the HTTP
/// client's resolver, so the check applies to the address actually dialled.
#[derive(Debug, Clone, Default)]
pub struct TargetGuard {
    /// (network, prefix length) pairs allowed although not public.
    allow: Vec<(IpAddr, u8)>,
}

impl TargetGuard {
    pub fn new(allow: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in allow {
            let (addr, len) = match entry.split_once('/') {
                Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| format!("allow `{entry}`: bad prefix length"))?)),
                None => (entry.as_str(), None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| format!("allow `{entry}`: not an IP address or network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = len.unwrap_or(max);
            if len > max {
                return Err(format!("allow `{entry}`: prefix longer than {max}"));
            }
            nets.push((ip, len));
        }
        Ok(TargetGuard { allow: nets })
    }

    /// Whether a connection to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|(net, len)| in_network(ip, *net, *len))
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link local
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let (ip, net, bits) = match (ip, net) {
        (IpAddr::V4(i), IpAddr::V4(n)) => (u128::from(u32::from(i)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(i), IpAddr::V6(n)) => (u128::from(i), u128::from(n), 128),
        _ => return false,
    };
    let shift = bits - u32::from(len);
    shift >= bits || (ip >> shift) == (net >> shift)
}

/// The error a refused target gives (found again in the error chain to classify it).
#[derive(Debug, thiserror::Error)]
#[error("target {0} is not a public address (SSRF guard); allow-list it to send there")]
pub struct Blocked(pub String);

impl Resolve for TargetGuard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| guard.permits(a.ip())).collect();
            if allowed.is_empty() {
                let shown = found.first().map(|a| a.ip().to_string()).unwrap_or_default();
                return Err(Box::new(Blocked(format!("{host} ({shown})"))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

impl TargetGuard {
    pub fn resolver(self) -> Arc<Self> {
        Arc::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_special_addresses_are_refused_unless_allowed() {
        let guard = TargetGuard::default();
        for ip in ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1"] {
            assert!(!guard.permits(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(guard.permits(ip.parse().unwrap()), "{ip}");
        }
        let allowed = TargetGuard::new(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        assert!(allowed.permits("127.0.0.1".parse().unwrap()) && allowed.permits("10.9.9.9".parse().unwrap()));
        assert!(!allowed.permits("127.0.0.2".parse().unwrap()) && !allowed.permits("192.168.1.1".parse().unwrap()));
        assert!(TargetGuard::new(&["10.0.0.0/33".into()]).unwrap_err().contains("prefix longer"));
        assert!(TargetGuard::new(&["intranet".into()]).unwrap_err().contains("not an IP"));
    }
}
