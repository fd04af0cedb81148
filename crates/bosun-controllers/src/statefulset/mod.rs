//! StatefulSet controller: stable pod names and claims, ordered or parallel pod management,
//! ControllerRevisions and partitioned rolling updates, as Kubernetes' statefulset controller.
//! Decisions are in [`logic`]; this module reads fresh state and carries them out.

pub mod logic;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bosun_watch::informer::Informer;
use bosun_watch::reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::events::{NORMAL, Recorder, WARNING};
use crate::util::{LabelMatcher, is_conflict, is_not_found};
use logic::Step;

const RESYNC: Duration = Duration::from_secs(300);

struct Ctx {
    client: Client,
    recorder: Recorder,
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    crate::util::controller_of(meta).is_some_and(|r| r.uid == uid)
}

async fn reconcile(s: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = s.namespace().unwrap_or_default();
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(s) = sets.get_opt(&s.name_any()).await? else {
        return Ok(Action::await_change());
    };
    // Dependents of a deleted set go with the garbage collector.
    if s.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = s.uid().unwrap_or_default();
    let selector = LabelMatcher::new(s.spec.as_ref().map(|s| &s.selector));
    if selector.is_empty() {
        return Ok(Action::await_change());
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut lp = ListParams::default();
    if let Some(q) = selector.query() {
        lp = lp.labels(&q);
    }
    let pods: Vec<Pod> = pods_api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| owned_by(&p.metadata, &uid))
        .collect();
    let revs_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let existing: Vec<ControllerRevision> = revs_api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|r| owned_by(&r.metadata, &uid))
        .collect();
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claims: HashMap<String, PersistentVolumeClaim> = if logic::claim_templates(&s).is_empty() {
        HashMap::new()
    } else {
        claims_api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|c| (c.name_any(), c))
            .collect()
    };

    let revs = logic::revisions(&s, &existing);
    if let Some(r) = &revs.create {
        match revs_api.create(&PostParams::default(), r).await {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {
                // Same name, another template: count the collision and try again.
                write_status(
                    &sets,
                    &s,
                    k8s_openapi::api::apps::v1::StatefulSetStatus {
                        collision_count: Some(revs.collision_count + 1),
                        ..s.status.clone().unwrap_or_default()
                    },
                )
                .await?;
                return Ok(Action::requeue(Duration::from_millis(50)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(r) = &revs.renumber {
        let patch = serde_json::json!({"revision": r.revision});
        revs_api
            .patch(
                &r.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }

    let plan = logic::plan(&s, &revs, &pods, &claims, crate::util::now());
    for step in &plan.steps {
        match step {
            Step::CreateClaim(c) => match claims_api.create(&PostParams::default(), c).await {
                Ok(_) => {
                    ctx.recorder
                        .record(
                            &s,
                            NORMAL,
                            "SuccessfulCreate",
                            &format!(
                                "create Claim {} Pod {} in StatefulSet {} success",
                                c.name_any(),
                                pod_for_claim(&s, c),
                                s.name_any()
                            ),
                        )
                        .await;
                }
                Err(e) if is_conflict(&e) => {}
                Err(e) => {
                    ctx.recorder
                        .record(
                            &s,
                            WARNING,
                            "FailedCreate",
                            &format!(
                                "create Claim {} for StatefulSet {} failed error: {e}",
                                c.name_any(),
                                s.name_any()
                            ),
                        )
                        .await;
                    return Err(e.into());
                }
            },
            Step::CreatePod { ordinal, update } => {
                let rev = if *update { &revs.update } else { &revs.current };
                let template = logic::revision_template(rev)
                    .or_else(|| s.spec.as_ref().map(|sp| sp.template.clone()))
                    .unwrap_or_default();
                let pod = logic::new_pod(&s, &template, &rev.name_any(), *ordinal);
                let pname = pod.name_any();
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        ctx.recorder
                            .record(
                                &s,
                                NORMAL,
                                "SuccessfulCreate",
                                &format!(
                                    "create Pod {pname} in StatefulSet {} successful",
                                    s.name_any()
                                ),
                            )
                            .await;
                    }
                    // The old pod of that name is still going away.
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => {
                        ctx.recorder
                            .record(
                                &s,
                                WARNING,
                                "FailedCreate",
                                &format!(
                                    "create Pod {pname} in StatefulSet {} failed error: {e}",
                                    s.name_any()
                                ),
                            )
                            .await;
                        return Err(e.into());
                    }
                }
            }
            Step::DeletePod(pname) => {
                let dp = DeleteParams {
                    preconditions: pods
                        .iter()
                        .find(|p| p.name_any() == *pname)
                        .and_then(|p| p.uid())
                        .map(|uid| Preconditions {
                            uid: Some(uid),
                            resource_version: None,
                        }),
                    ..Default::default()
                };
                match pods_api.delete(pname, &dp).await {
                    Ok(_) => {
                        ctx.recorder
                            .record(
                                &s,
                                NORMAL,
                                "SuccessfulDelete",
                                &format!(
                                    "delete Pod {pname} in StatefulSet {} successful",
                                    s.name_any()
                                ),
                            )
                            .await;
                    }
                    Err(e) if is_not_found(&e) || is_conflict(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Step::DeleteClaim(cname) => {
                match claims_api.delete(cname, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    let mut status = plan.status.clone();
    status.conditions = s.status.as_ref().and_then(|st| st.conditions.clone());
    if s.status.as_ref() != Some(&status) {
        write_status(&sets, &s, status).await?;
    }
    let mut pods_after = pods.clone();
    pods_after.retain(|p| !plan.steps.contains(&Step::DeletePod(p.name_any())));
    for name in logic::revisions_to_prune(&s, &existing, &pods_after, &revs) {
        match revs_api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let requeue = plan.requeue.map_or(RESYNC, |r| r.min(RESYNC));
    Ok(Action::requeue(requeue))
}

fn pod_for_claim(s: &StatefulSet, c: &PersistentVolumeClaim) -> String {
    let n = c.name_any();
    let set = logic::name(s);
    n.rsplit_once(&format!("-{set}-"))
        .map(|(_, o)| format!("{set}-{o}"))
        .unwrap_or_default()
}

async fn write_status(
    api: &Api<StatefulSet>,
    s: &StatefulSet,
    status: k8s_openapi::api::apps::v1::StatefulSetStatus,
) -> Result<()> {
    let mut s2 = s.clone();
    s2.status = Some(status);
    api.replace_status(&s.name_any(), &PostParams::default(), &s2)
        .await?;
    Ok(())
}

pub(crate) async fn run(
    client: Client,
    sets: Informer<StatefulSet>,
    pods: Informer<Pod>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = sets.ready() => {}
        _ = shutdown.cancelled() => return,
    }
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "statefulset-controller"),
        client,
    });
    let controller = Controller::for_shared_stream(sets.subscribe(), sets.store())
        .owns_shared_stream(pods.subscribe());
    drive(
        "statefulset",
        controller,
        ctx,
        reconcile,
        DEFAULT_CONCURRENCY,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests;
