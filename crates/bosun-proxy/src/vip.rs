//! Service virtual IPs on a dummy interface: an address on any local interface makes the
//! kernel deliver packets for it to local sockets, both from the host and from pods (which
//! route through the bridge to the host). No iptables.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result, bail};

async fn ip(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn validate_interface_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        bail!("service interface name {name:?} must be 1-15 characters of [A-Za-z0-9._-]");
    }
    Ok(())
}

/// Creates the dummy interface (if missing) and brings it up.
pub async fn ensure_interface(name: &str) -> Result<()> {
    validate_interface_name(name)?;
    let exists = ip(&["-o", "link", "show", "dev", name]).await.is_ok();
    if !exists && let Err(e) = ip(&["link", "add", name, "type", "dummy"]).await {
        // Kernels without the dummy module: a bridge without ports delivers its local
        // addresses just the same.
        let fallback = if e.to_string().contains("Unknown device type") {
            tracing::info!(
                "no dummy interfaces on this kernel; Service VIPs go on a port-less bridge {name}"
            );
            ip(&["link", "add", name, "type", "bridge"]).await.err()
        } else {
            Some(e)
        };
        // Lost a race with another creator: fine if it exists now.
        if let Some(e) = fallback
            && ip(&["-o", "link", "show", "dev", name]).await.is_err()
        {
            return Err(e.context(format!("create service interface {name}")));
        }
    }
    ip(&["link", "set", name, "up"]).await?;
    Ok(())
}

/// Addresses currently on the interface.
pub async fn addresses(name: &str) -> Result<BTreeSet<IpAddr>> {
    let out = ip(&["-o", "addr", "show", "dev", name]).await?;
    let mut set = BTreeSet::new();
    for line in out.lines() {
        let mut it = line.split_whitespace();
        while let Some(tok) = it.next() {
            if (tok == "inet" || tok == "inet6")
                && let Some(cidr) = it.next()
                && let Some(addr) = cidr.split('/').next()
                && let Ok(a) = addr.parse::<IpAddr>()
                // Link-local addresses belong to the interface, not to a Service.
                && !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
            {
                set.insert(a);
            }
        }
    }
    Ok(set)
}

/// Makes the interface carry exactly `want` (as /32 or /128 host addresses).
pub async fn reconcile(name: &str, want: &BTreeSet<IpAddr>) -> Result<()> {
    let have = addresses(name).await?;
    for a in want.difference(&have) {
        let cidr = match a {
            IpAddr::V4(_) => format!("{a}/32"),
            IpAddr::V6(_) => format!("{a}/128"),
        };
        // nodad: a VIP must be usable at once, not after IPv6 duplicate detection.
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", name];
        if a.is_ipv6() {
            args.push("nodad");
        }
        if let Err(e) = ip(&args).await
            && !e.to_string().contains("File exists")
        {
            return Err(e);
        }
    }
    for a in have.difference(want) {
        let cidr = match a {
            IpAddr::V4(_) => format!("{a}/32"),
            IpAddr::V6(_) => format!("{a}/128"),
        };
        if let Err(e) = ip(&["addr", "del", cidr.as_str(), "dev", name]).await {
            tracing::warn!("remove VIP {a} from {name}: {e}");
        }
    }
    Ok(())
}

/// Removes the interface (and with it every VIP).
pub async fn remove_interface(name: &str) -> Result<()> {
    validate_interface_name(name)?;
    if ip(&["-o", "link", "show", "dev", name]).await.is_ok() {
        ip(&["link", "del", name]).await?;
    }
    Ok(())
}
