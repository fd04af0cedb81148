//! Address-range flags (`--service-cidr`, `--cluster-cidr`, `--pod-cidr`) are parsed once,
//! by clap, into `Ipv4Net`, the typed value the API server, the controllers and the agent take.

use std::net::IpAddr;

use ipnet::Ipv4Net;

/// A clap value parser for an IPv4 CIDR whose prefix length lies in `min..=max`.
pub fn parser(min: u8, max: u8) -> impl Fn(&str) -> Result<Ipv4Net, String> + Clone {
    move |s: &str| {
        let net: Ipv4Net = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR like 10.42.0.0/16"))?;
        if !(min..=max).contains(&net.prefix_len()) {
            return Err(format!(
                "{s:?}: the prefix length must be between /{min} and /{max}"
            ));
        }
        Ok(net.trunc())
    }
}

/// The first host of a range: the `kubernetes` Service's cluster IP in the Service range,
/// as Kubernetes allocates it.
pub fn first_host(net: Ipv4Net) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(
        u32::from(net.network()).saturating_add(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_truncates_and_bounds_the_prefix() {
        let p = parser(8, 24);
        assert_eq!(p("10.42.3.7/16").unwrap().to_string(), "10.42.0.0/16");
        assert!(
            p("10.42.0.0/25")
                .unwrap_err()
                .contains("between /8 and /24")
        );
        assert!(p("10.42.0.0").unwrap_err().contains("not an IPv4 CIDR"));
        assert!(p("fd00::/64").is_err());
    }

    #[test]
    fn kubernetes_service_ip_is_the_first_of_the_range() {
        assert_eq!(
            first_host("10.96.0.0/12".parse().unwrap()),
            IpAddr::from([10, 96, 0, 1])
        );
    }
}
