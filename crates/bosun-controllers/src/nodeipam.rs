//! Pod CIDRs for nodes: each Node without `spec.podCIDR` gets the first free /24 of the
//! cluster CIDR, as kube-controller-manager's range allocator does. Level-triggered: every
//! change to the Nodes recomputes what is taken from the Nodes themselves.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio_util::sync::CancellationToken;

/// Default cluster CIDR, as k3s'.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
const NODE_PREFIX: u8 = 24;

/// A parsed IPv4 range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub base: u32,
    pub prefix: u8,
}

impl Range {
    pub fn parse(s: &str) -> Result<Range> {
        let (ip, p) = s
            .split_once('/')
            .with_context(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let ip: Ipv4Addr = ip.parse().with_context(|| format!("{s:?}: bad address"))?;
        let prefix: u8 = p.parse().with_context(|| format!("{s:?}: bad prefix"))?;
        if !(8..=NODE_PREFIX).contains(&prefix) {
            bail!("cluster CIDR {s:?}: the prefix must be between /8 and /{NODE_PREFIX}");
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Range {
            base: u32::from(ip) & mask,
            prefix,
        })
    }
}

/// The first /24 of `cluster` that is not in `taken`.
pub fn next_free(cluster: Range, taken: &BTreeSet<String>) -> Option<String> {
    let count = 1u32 << (NODE_PREFIX - cluster.prefix);
    (0..count)
        .map(|i| format!("{}/{NODE_PREFIX}", Ipv4Addr::from(cluster.base + (i << 8))))
        .find(|c| !taken.contains(c))
}

/// Assigns pod CIDRs until `shutdown`.
pub async fn run(
    client: kube::Client,
    cluster_cidr: &str,
    shutdown: CancellationToken,
) -> Result<()> {
    let cluster = Range::parse(cluster_cidr)?;
    let api: Api<Node> = Api::all(client);
    let (store, writer) = reflector::store();
    let mut stream = Box::pin(
        watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects(),
    );
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = stream.try_next() => ev,
        };
        match ev {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "node watch (pod CIDRs)");
                continue;
            }
        }
        let nodes = store.state();
        let mut taken: BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
            .filter(|c| !c.is_empty())
            .collect();
        for n in nodes.iter() {
            let has = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .is_some_and(|c| !c.is_empty());
            if has {
                continue;
            }
            let name = n.metadata.name.clone().unwrap_or_default();
            let Some(cidr) = next_free(cluster, &taken) else {
                tracing::warn!(node = %name, %cluster_cidr, "no pod CIDR left in the cluster CIDR");
                continue;
            };
            let patch = serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %name, %cidr, "pod CIDR assigned");
                    taken.insert(cidr);
                }
                Err(e) => tracing::warn!(node = %name, error = %e, "assigning a pod CIDR"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_free_slash_24() {
        let r = Range::parse("10.42.0.0/16").unwrap();
        let mut taken = BTreeSet::new();
        assert_eq!(next_free(r, &taken).as_deref(), Some("10.42.0.0/24"));
        taken.insert("10.42.0.0/24".to_string());
        taken.insert("10.42.2.0/24".to_string());
        assert_eq!(next_free(r, &taken).as_deref(), Some("10.42.1.0/24"));
        let tiny = Range::parse("10.9.3.0/24").unwrap();
        taken.insert("10.9.3.0/24".to_string());
        assert_eq!(next_free(tiny, &taken), None);
        assert!(Range::parse("10.0.0.0/25").is_err());
        assert!(Range::parse("nonsense").is_err());
    }
}
