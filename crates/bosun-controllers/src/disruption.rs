//! PodDisruptionBudget status (upstream's disruption controller, without scale lookups):
//! expected pods are the matching pods not being deleted, healthy ones are also Ready, and
//! `disruptionsAllowed` is how many healthy pods may go. The eviction subresource makes the
//! same count at each request; this status is what `kubectl get pdb` shows.

use std::sync::Arc;

use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

struct Ctx {
    client: Client,
    pods: Store<Pod>,
}

/// A count or a percentage of `total` (rounded up, as Kubernetes does).
pub fn scaled(v: &IntOrString, total: i32) -> Option<i32> {
    match v {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => {
            let p: i32 = s.strip_suffix('%')?.parse().ok()?;
            Some((p * total + 99) / 100)
        }
    }
}

/// (expected, healthy, desired healthy) for a budget over `pods`.
pub fn counts(pdb: &PodDisruptionBudget, pods: &[Arc<Pod>]) -> (i32, i32, i32) {
    let ns = pdb.namespace();
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .clone()
        .and_then(|s| Selector::try_from(s).ok());
    let matching: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            selector
                .as_ref()
                .is_some_and(|s| !s.selects_all() && s.matches(p.labels()))
        })
        .collect();
    let expected = matching.len() as i32;
    let healthy = matching
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count() as i32;
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => scaled(min, expected).unwrap_or(0),
        (None, Some(max)) => (expected - scaled(max, expected).unwrap_or(0)).max(0),
        (None, None) => 0,
    };
    (expected, healthy, desired)
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let pods = ctx.pods.state();
    let (expected, healthy, desired) = counts(&pdb, &pods);
    let allowed = (healthy - desired).max(0);
    let status = serde_json::json!({"status": {
        "observedGeneration": pdb.metadata.generation,
        "expectedPods": expected,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "disruptionsAllowed": allowed,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": if allowed > 0 { "True" } else { "False" },
            "reason": if allowed > 0 { "SufficientPods" } else { "InsufficientPods" },
            "message": "",
            "observedGeneration": pdb.metadata.generation,
            "lastTransitionTime": crate::util::now().to_string(),
        }],
    }});
    let cur = pdb.status.as_ref();
    let same = cur.is_some_and(|s| {
        s.expected_pods == expected
            && s.current_healthy == healthy
            && s.desired_healthy == desired
            && s.disruptions_allowed == allowed
            && s.observed_generation == pdb.metadata.generation
    });
    if !same {
        let api: Api<PodDisruptionBudget> =
            Api::namespaced(ctx.client.clone(), &pdb.namespace().unwrap_or_default());
        api.patch_status(
            &pdb.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    }
    Ok(Action::await_change())
}

pub(crate) async fn run(
    client: Client,
    pdbs: Informer<PodDisruptionBudget>,
    pods: Informer<Pod>,
    shutdown: CancellationToken,
) {
    let store = pdbs.store();
    let controller = Controller::for_shared_stream(pdbs.subscribe(), pdbs.store())
        .watches_shared_stream(pods.subscribe(), move |p: Arc<Pod>| {
            let ns = p.namespace();
            store
                .state()
                .into_iter()
                .filter(|b| b.namespace() == ns)
                .map(|b| ObjectRef::from_obj(&*b))
                .collect::<Vec<_>>()
        });
    let ctx = Arc::new(Ctx {
        client,
        pods: pods.store(),
    });
    drive(
        "disruption",
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

    #[test]
    fn budget_counts() {
        let pod = |name: &str, ready: bool| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                    "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
                }))
                .unwrap(),
            )
        };
        let pods = vec![pod("a", true), pod("b", true), pod("c", false)];
        let pdb = |spec: serde_json::Value| -> PodDisruptionBudget {
            let mut s = spec;
            s["selector"] = serde_json::json!({"matchLabels": {"app": "web"}});
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "default"}, "spec": s}))
            .unwrap()
        };
        assert_eq!(
            counts(&pdb(serde_json::json!({"minAvailable": 2})), &pods),
            (3, 2, 2)
        );
        assert_eq!(
            counts(&pdb(serde_json::json!({"maxUnavailable": 1})), &pods),
            (3, 2, 2)
        );
        assert_eq!(
            counts(&pdb(serde_json::json!({"minAvailable": "50%"})), &pods),
            (3, 2, 2)
        );
    }
}
