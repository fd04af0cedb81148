//! Pod CIDRs for nodes: each Node without `spec.podCIDR` gets the first free /24 of the
//! cluster CIDR, as kube-controller-manager's range allocator does. Level-triggered: every
//! change to the Nodes recomputes what is taken from the Nodes themselves.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use bosun_watch::Informer;
use futures::{FutureExt, StreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;

/// Default cluster CIDR, as k3s'.
pub const DEFAULT_CLUSTER_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 42, 0, 0), 16);
const NODE_PREFIX: u8 = 24;

/// Refuses a cluster CIDR that cannot hold a node's /24.
pub fn check_cluster_cidr(cluster: Ipv4Net) -> Result<()> {
    if !(8..=NODE_PREFIX).contains(&cluster.prefix_len()) {
        bail!("cluster CIDR {cluster}: the prefix must be between /8 and /{NODE_PREFIX}");
    }
    Ok(())
}

/// The first /24 of `cluster` that is not in `taken`.
pub fn next_free(cluster: Ipv4Net, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    cluster
        .trunc()
        .subnets(NODE_PREFIX)
        .ok()?
        .find(|c| !taken.contains(c))
}

/// Assigns pod CIDRs until `shutdown`.
pub async fn run(
    client: kube::Client,
    cluster: Ipv4Net,
    shutdown: CancellationToken,
) -> Result<()> {
    check_cluster_cidr(cluster)?;
    let api: Api<Node> = Api::all(client);
    let stop = shutdown.child_token();
    let _stop_watch = stop.clone().drop_guard();
    let informer = Informer::start(api.clone(), stop);
    let store = informer.store();
    // Notices start once the first list is complete, so what is taken is known whole.
    let mut notices = std::pin::pin!(informer.notices());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = notices.next() => if n.is_none() { return Ok(()) },
        }
        // One pass for a burst (a list notifies every Node at once).
        while let Some(Some(_)) = notices.next().now_or_never() {}
        let nodes = store.state();
        let mut taken: BTreeSet<Ipv4Net> = nodes
            .iter()
            .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok())
            .map(|c: Ipv4Net| c.trunc())
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
                tracing::warn!(node = %name, %cluster, "no pod CIDR left in the cluster CIDR");
                continue;
            };
            let text = cidr.to_string();
            // On the version seen: a stale cache gets a conflict, never a second CIDR.
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": n.metadata.resource_version},
                "spec": {"podCIDR": text, "podCIDRs": [text]},
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %name, %cidr, "pod CIDR assigned");
                    taken.insert(cidr);
                }
                Err(e) if crate::util::is_conflict(&e) => {
                    tracing::debug!(node = %name, "node changed; assigning its pod CIDR again")
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
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let r = net("10.42.0.0/16");
        let mut taken = BTreeSet::new();
        assert_eq!(next_free(r, &taken), Some(net("10.42.0.0/24")));
        taken.insert(net("10.42.0.0/24"));
        taken.insert(net("10.42.2.0/24"));
        assert_eq!(next_free(r, &taken), Some(net("10.42.1.0/24")));
        let tiny = net("10.9.3.0/24");
        taken.insert(net("10.9.3.0/24"));
        assert_eq!(next_free(tiny, &taken), None);
        assert!(check_cluster_cidr(net("10.0.0.0/25")).is_err());
        assert!(check_cluster_cidr(net("10.0.0.0/16")).is_ok());
    }
}
