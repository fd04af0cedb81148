//! LoadBalancer Services as k3s's ServiceLB serves them: every node's proxy answers on the
//! Service's port, so `status.loadBalancer.ingress` lists the addresses of the Ready nodes.
//! A Service with a `loadBalancerClass` belongs to another implementation and is left alone.

use std::sync::Arc;
use std::time::Duration;

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The addresses to publish: each Ready node's ExternalIP, else its InternalIP, sorted.
pub fn ingress_ips(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True")
        })
        .filter_map(|n| {
            let addrs = n.status.as_ref()?.addresses.as_ref()?;
            addrs
                .iter()
                .find(|a| a.type_ == "ExternalIP")
                .or_else(|| addrs.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone())
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn is_ours(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

struct Ctx {
    client: Client,
    nodes: Store<Node>,
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let Some(svc) = api.get_opt(&svc.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let ours = is_ours(&svc);
    let has = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .is_some_and(|i| !i.is_empty());
    let want = if ours {
        let ingress: Vec<LoadBalancerIngress> = ingress_ips(&ctx.nodes.state())
            .into_iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            })
            .collect();
        LoadBalancerStatus {
            ingress: (!ingress.is_empty()).then_some(ingress),
        }
    } else if has
        && svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_ref())
            .is_none()
    {
        // No longer a LoadBalancer: the addresses we published go.
        LoadBalancerStatus::default()
    } else {
        return Ok(Action::await_change());
    };
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.clone())
        .unwrap_or_default();
    if current != want {
        let patch = json!({"status": {"loadBalancer": want}});
        api.patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub(crate) async fn run(
    client: Client,
    services: Informer<Service>,
    nodes: Informer<Node>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        client,
        nodes: nodes.store(),
    });
    let all = services.store();
    let controller = Controller::for_shared_stream(services.subscribe(), services.store())
        // A node joining, leaving or changing readiness changes every LoadBalancer's addresses.
        .watches_shared_stream(nodes.subscribe(), move |_n: Arc<Node>| {
            all.state()
                .into_iter()
                .filter(|s| is_ours(s))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        });
    drive(
        "servicelb",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, ready: bool, addrs: &[(&str, &str)]) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn ready_nodes_publish_their_best_address() {
        let nodes = vec![
            node("b", true, &[("InternalIP", "10.0.0.2")]),
            node(
                "a",
                true,
                &[("InternalIP", "10.0.0.1"), ("ExternalIP", "203.0.113.1")],
            ),
            node("c", false, &[("InternalIP", "10.0.0.3")]),
        ];
        assert_eq!(ingress_ips(&nodes), ["10.0.0.2", "203.0.113.1"]);
    }
}
