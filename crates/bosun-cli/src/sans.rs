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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names_and_addresses() {
        let s = split(&["API.example.com".into(), "10.0.0.9".into(), " ".into()]);
        assert_eq!(s.names, vec!["api.example.com"]);
        assert_eq!(s.ips, vec![IpAddr::from([10, 0, 0, 9])]);
    }
}
