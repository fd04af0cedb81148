//! The names a server's certificate carries beyond its own addresses: the in-cluster names
//! of the `kubernetes` Service (its cluster IP, `kubernetes.default.svc...`) and the shared
//! names given with `--tls-san`, so a client verifies whichever server answers it.

use std::net::IpAddr;

/// `--tls-san` values split into DNS names and IP addresses.
pub struct Sans {
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

pub fn split(sans: &[String]) -> Sans {
    let mut out = Sans {
        names: Vec::new(),
        ips: Vec::new(),
    };
    for s in sans.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match s.parse::<IpAddr>() {
            Ok(ip) => out.ips.push(ip),
            Err(_) => out.names.push(s.to_ascii_lowercase()),
        }
    }
    out
}

/// The first address of the Service range: the `kubernetes` Service's cluster IP, as
/// Kubernetes allocates it.
pub fn service_ip(service_cidr: &str) -> Option<IpAddr> {
    let (addr, _) = service_cidr.split_once('/')?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(IpAddr::from(u32::from(v4).checked_add(1)?.to_be_bytes())),
        IpAddr::V6(v6) => Some(IpAddr::from(u128::from(v6).checked_add(1)?.to_be_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names_and_addresses() {
        let s = split(&["API.example.com".into(), "10.0.0.9".into(), " ".into()]);
        assert_eq!(s.names, vec!["api.example.com"]);
        assert_eq!(s.ips, vec![IpAddr::from([10, 0, 0, 9])]);
    }

    #[test]
    fn kubernetes_service_ip_is_the_first_of_the_range() {
        assert_eq!(
            service_ip("10.96.0.0/12"),
            Some(IpAddr::from([10, 96, 0, 1]))
        );
        assert_eq!(service_ip("bad"), None);
    }
}
