//! A node's place in the cluster before its agent starts: the Node object with its labels
//! (hostname, os, zone) and taints, and its pod CIDR (given with --pod-cidr, or assigned by
//! the server's allocator out of the cluster CIDR).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::up::NodeOpts;

/// `KEY[=VALUE]:EFFECT`, as kubelet's --register-with-taints.
pub fn parse_taint(s: &str) -> Result<Taint> {
    let (kv, effect) = s
        .rsplit_once(':')
        .with_context(|| format!("taint {s:?} is not KEY[=VALUE]:EFFECT"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        bail!("taint {s:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        bail!("taint {s:?} has no key");
    }
    Ok(Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

/// The labels a node registers with.
pub fn labels(name: &str, opts: &NodeOpts) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("kubernetes.io/hostname".to_string(), name.to_string());
    l.insert("kubernetes.io/os".to_string(), "linux".to_string());
    if let Some(z) = &opts.zone {
        l.insert("topology.kubernetes.io/zone".to_string(), z.clone());
    }
    l
}

/// Creates or updates the Node with its labels and taints; returns its pod CIDR, waiting for
/// the server to assign one when --pod-cidr is not given.
pub async fn register_node(
    client: &kube::Client,
    name: &str,
    opts: &NodeOpts,
) -> Result<ipnet::Ipv4Net> {
    let taints = opts
        .register_with_taints
        .iter()
        .map(|t| parse_taint(t))
        .collect::<Result<Vec<_>>>()?;
    let api: Api<Node> = Api::all(client.clone());
    let cidr_spec = opts.pod_cidr.map(|c| (c.to_string(), vec![c.to_string()]));
    let mut tries = 0;
    // The API server may still be starting (in `up` it is the same process).
    let existing = loop {
        match api.get_opt(name).await {
            Ok(n) => break n,
            Err(e) if tries < 30 => {
                tries += 1;
                tracing::debug!(error = %e, "reading the node; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("reading the node"),
        }
    };
    match existing {
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels(name, opts)),
                    ..Default::default()
                },
                spec: Some(NodeSpec {
                    pod_cidr: cidr_spec.as_ref().map(|c| c.0.clone()),
                    pod_cidrs: cidr_spec.as_ref().map(|c| c.1.clone()),
                    taints: (!taints.is_empty()).then_some(taints),
                    ..Default::default()
                }),
                status: None,
            };
            match api.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).context("registering the node"),
            }
        }
        Some(n) => {
            let mut patch = serde_json::json!({"metadata": {"labels": labels(name, opts)}});
            if !taints.is_empty() {
                let mut all = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default();
                for t in taints {
                    if !all.iter().any(|x| x.key == t.key && x.effect == t.effect) {
                        all.push(t);
                    }
                }
                patch["spec"] = serde_json::json!({"taints": all});
            }
            let has_cidr = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .is_some_and(|c| !c.is_empty());
            if let (false, Some((c, cs))) = (has_cidr, &cidr_spec) {
                patch["spec"]["podCIDR"] = serde_json::json!(c);
                patch["spec"]["podCIDRs"] = serde_json::json!(cs);
            }
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .context("updating the node")?;
        }
    }
    let wait = async {
        let cond = |n: Option<&Node>| {
            n.and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
                .is_some_and(|c| !c.is_empty())
        };
        kube::runtime::wait::await_condition(api.clone(), name, cond).await
    };
    let node = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .context("the server assigned no pod CIDR within 60 s (is its cluster CIDR full?)")??;
    let text = node
        .and_then(|n| n.spec?.pod_cidr)
        .context("the node has no pod CIDR")?;
    let cidr: ipnet::Ipv4Net = text
        .parse()
        .with_context(|| format!("the node's pod CIDR {text:?} is not an IPv4 CIDR"))?;
    if let Some(want) = opts.pod_cidr
        && want != cidr
    {
        tracing::warn!(node = name, assigned = %cidr, flag = %want, "the node already has a pod CIDR; keeping it");
    }
    Ok(cidr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse() {
        let t = parse_taint("dedicated=db:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("dedicated", Some("db"), "NoSchedule")
        );
        let t = parse_taint("gpu:NoExecute").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value, t.effect.as_str()),
            ("gpu", None, "NoExecute")
        );
        assert!(parse_taint("gpu").is_err());
        assert!(parse_taint("gpu:Sometimes").is_err());
        assert!(parse_taint(":NoSchedule").is_err());
    }
}
