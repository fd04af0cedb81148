//! One reconcile pass of a Deployment (`syncDeployment`), written against [`DeploymentOps`] so
//! the whole rollout can be driven in unit tests without an API server.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::logic::*;
use crate::events::{NORMAL, WARNING};
use crate::util::{LabelMatcher, controller_of, controller_ref};

fn is_conflict_err(e: &anyhow::Error) -> bool {
    e.downcast_ref::<kube::Error>()
        .is_some_and(crate::util::is_conflict)
}

/// The side effects a Deployment sync needs.
#[async_trait]
pub trait DeploymentOps: Send + Sync {
    /// ReplicaSets in the namespace, including every write of the controller's own (a
    /// just-created RS is seen).
    async fn list_replica_sets(&self, ns: &str) -> Result<Vec<ReplicaSet>>;
    async fn list_pods(&self, ns: &str, selector: &LabelMatcher) -> Result<Vec<Pod>>;
    /// Fresh read used before adopting, so a deleted-and-recreated deployment adopts nothing.
    async fn get_deployment(&self, ns: &str, name: &str) -> Result<Option<Deployment>>;
    /// `Ok(None)` when an object of that name already exists.
    async fn create_replica_set(&self, rs: &ReplicaSet) -> Result<Option<ReplicaSet>>;
    async fn get_replica_set(&self, ns: &str, name: &str) -> Result<Option<ReplicaSet>>;
    async fn update_replica_set(&self, rs: &ReplicaSet) -> Result<ReplicaSet>;
    async fn delete_replica_set(&self, rs: &ReplicaSet) -> Result<()>;
    async fn update_status(&self, d: &Deployment) -> Result<Deployment>;
    /// Sets the deployment's revision annotation; returns the updated deployment.
    async fn set_revision_annotation(&self, d: &Deployment, revision: &str) -> Result<Deployment>;
    async fn event(&self, d: &Deployment, type_: &str, reason: &str, message: String);
    fn now(&self) -> jiff::Timestamp;
}

fn name(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

fn ns(d: &Deployment) -> String {
    d.metadata.namespace.clone().unwrap_or_default()
}

fn err(e: String) -> anyhow::Error {
    anyhow!(e)
}

pub struct Syncer<'a, O: DeploymentOps> {
    ops: &'a O,
    d: Deployment,
}

/// Runs one sync; returns when to look again (progress deadline), if needed.
pub async fn sync_deployment<O: DeploymentOps>(
    ops: &O,
    d: &Deployment,
) -> Result<Option<Duration>> {
    Box::pin(Syncer { ops, d: d.clone() }.run()).await
}

impl<O: DeploymentOps> Syncer<'_, O> {
    async fn run(mut self) -> Result<Option<Duration>> {
        let spec = self.d.spec.clone().unwrap_or_default();
        let matcher = LabelMatcher::new(Some(&spec.selector));
        if matcher.is_empty() {
            self.ops
                .event(
                    &self.d,
                    WARNING,
                    "SelectingAll",
                    "This deployment is selecting all pods. A non-empty selector is required."
                        .into(),
                )
                .await;
            let gen_ = self.d.metadata.generation;
            if self.d.status.as_ref().and_then(|s| s.observed_generation) < gen_ {
                self.d
                    .status
                    .get_or_insert_with(Default::default)
                    .observed_generation = gen_;
                self.ops.update_status(&self.d).await?;
            }
            return Ok(None);
        }
        let rs_list = Box::pin(self.claim_replica_sets(&matcher)).await?;

        if self.d.metadata.deletion_timestamp.is_some() {
            // Being deleted: report, but do not scale (`syncStatusOnly`).
            let (new_rs, old) = Box::pin(self.new_and_old(&rs_list, false)).await?;
            let mut all = old;
            all.extend(new_rs.iter().cloned());
            let status =
                calculate_status(&all, new_rs.as_ref(), &self.d, self.ops.now()).map_err(err)?;
            Box::pin(self.write_status(status)).await?;
            return Ok(None);
        }
        Box::pin(self.check_paused_conditions()).await?;
        if is_paused(&self.d) {
            Box::pin(self.sync_only(rs_list)).await?;
            return Ok(None);
        }
        let (new_rs, old) = Box::pin(self.new_and_old(&rs_list, false)).await?;
        let mut all = old.clone();
        all.extend(new_rs.iter().cloned());
        if is_scaling_event(&self.d, &all) {
            Box::pin(self.sync_only(rs_list)).await?;
            return Ok(None);
        }
        if is_recreate(&self.d) {
            Box::pin(self.rollout_recreate(rs_list, &matcher)).await
        } else {
            Box::pin(self.rollout_rolling(rs_list)).await
        }
    }

    /// Adopts matching orphans and releases owned RSs that no longer match (`ClaimReplicaSets`).
    async fn claim_replica_sets(&mut self, matcher: &LabelMatcher) -> Result<Vec<ReplicaSet>> {
        let uid = self.d.metadata.uid.clone().unwrap_or_default();
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let mut claimed = Vec::new();
        let mut can_adopt: Option<bool> = None;
        for rs in self.ops.list_replica_sets(&ns(&self.d)).await? {
            let matches = matcher.matches(rs.metadata.labels.as_ref());
            match controller_of(&rs.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        claimed.push(rs);
                    } else if !deleting && rs.metadata.deletion_timestamp.is_none() {
                        let mut released = rs.clone();
                        if let Some(refs) = released.metadata.owner_references.as_mut() {
                            refs.retain(|r| r.uid != uid);
                        }
                        self.ops.update_replica_set(&released).await?;
                    }
                }
                Some(_) => {}
                None => {
                    if deleting || !matches || rs.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    if can_adopt.is_none() {
                        let fresh = self
                            .ops
                            .get_deployment(&ns(&self.d), &name(&self.d.metadata))
                            .await?;
                        can_adopt = Some(fresh.is_some_and(|f| {
                            f.metadata.uid.as_deref() == Some(uid.as_str())
                                && f.metadata.deletion_timestamp.is_none()
                        }));
                    }
                    if can_adopt == Some(true) {
                        let mut adopted = rs.clone();
                        adopted
                            .metadata
                            .owner_references
                            .get_or_insert_with(Vec::new)
                            .push(controller_ref("apps/v1", "Deployment", &self.d.metadata));
                        claimed.push(self.ops.update_replica_set(&adopted).await?);
                    }
                }
            }
        }
        Ok(claimed)
    }

    async fn check_paused_conditions(&mut self) -> Result<()> {
        if progress_deadline(&self.d).is_none() {
            return Ok(());
        }
        let status = self.d.status.clone().unwrap_or_default();
        let cond = get_condition(&status, PROGRESSING);
        if cond.is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT)) {
            return Ok(());
        }
        let paused_cond = cond.is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
        let now = self.ops.now();
        let mut status = status.clone();
        let changed = if is_paused(&self.d) && !paused_cond {
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "Unknown",
                    PAUSED,
                    "Deployment is paused".into(),
                    now,
                ),
            );
            true
        } else if !is_paused(&self.d) && paused_cond {
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "Unknown",
                    RESUMED,
                    "Deployment is resumed".into(),
                    now,
                ),
            );
            true
        } else {
            false
        };
        if changed {
            self.d.status = Some(status);
            self.d = self.ops.update_status(&self.d).await?;
        }
        Ok(())
    }

    /// `getAllReplicaSetsAndSyncRevision`.
    async fn new_and_old(
        &mut self,
        rs_list: &[ReplicaSet],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>)> {
        let existing = find_new_rs(&self.d, rs_list).cloned();
        let old: Vec<ReplicaSet> = rs_list
            .iter()
            .filter(|r| {
                existing
                    .as_ref()
                    .is_none_or(|n| n.metadata.uid != r.metadata.uid)
            })
            .cloned()
            .collect();
        let new_rs = Box::pin(self.new_replica_set(existing, &old, create)).await?;
        Ok((new_rs, old))
    }

    async fn new_replica_set(
        &mut self,
        existing: Option<ReplicaSet>,
        old: &[ReplicaSet],
        create: bool,
    ) -> Result<Option<ReplicaSet>> {
        let new_revision = max_revision(old) + 1;
        let now = self.ops.now();
        let min_ready = min_ready_seconds(&self.d);
        if let Some(existing) = existing {
            let mut rs = existing.clone();
            let ann_changed =
                set_new_rs_annotations(&self.d, &mut rs, new_revision, true).map_err(err)?;
            let mrs_changed = rs
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0)
                != min_ready;
            if ann_changed || mrs_changed {
                rs.spec
                    .get_or_insert_with(Default::default)
                    .min_ready_seconds = Some(min_ready);
                return Ok(Some(self.ops.update_replica_set(&rs).await?));
            }
            let rev = rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                .cloned()
                .unwrap_or_default();
            Box::pin(self.sync_revision(&rev)).await?;
            let status = self.d.status.clone().unwrap_or_default();
            if progress_deadline(&self.d).is_some() && get_condition(&status, PROGRESSING).is_none()
            {
                let mut status = status;
                set_condition(
                    &mut status,
                    new_condition(
                        PROGRESSING,
                        "True",
                        FOUND_NEW_RS,
                        format!("Found new replica set \"{}\"", name(&rs.metadata)),
                        now,
                    ),
                );
                self.d.status = Some(status);
                self.d = self.ops.update_status(&self.d).await?;
            }
            return Ok(Some(rs));
        }
        if !create {
            return Ok(None);
        }
        let spec = self.d.spec.clone().unwrap_or_default();
        let collision = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = compute_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", name(&self.d.metadata))),
                namespace: Some(ns(&self.d)),
                owner_references: Some(vec![controller_ref(
                    "apps/v1",
                    "Deployment",
                    &self.d.metadata,
                )]),
                labels,
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: Some(min_ready),
                selector: selector_with_hash(&spec.selector, &hash),
                template: Some(template),
            }),
            status: None,
        };
        let mut all = old.to_vec();
        all.push(rs.clone());
        let count = new_rs_new_replicas(&self.d, &all, &rs).map_err(err)?;
        set_rs_replicas(&mut rs, count);
        set_new_rs_annotations(&self.d, &mut rs, new_revision, false).map_err(err)?;
        let created = match self.ops.create_replica_set(&rs).await? {
            Some(c) => {
                if count > 0 {
                    self.ops
                        .event(
                            &self.d,
                            NORMAL,
                            "ScalingReplicaSet",
                            format!(
                                "Scaled up replica set {} from 0 to {count}",
                                name(&c.metadata)
                            ),
                        )
                        .await;
                }
                (c, false)
            }
            None => {
                let found = self
                    .ops
                    .get_replica_set(&ns(&self.d), &name(&rs.metadata))
                    .await?
                    .context("replica set vanished after AlreadyExists")?;
                let ours = controller_of(&found.metadata)
                    .is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                let same = found
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if !(ours && same) {
                    // A different object holds the hashed name: bump collisionCount so the next
                    // attempt hashes to another name.
                    let status = self.d.status.get_or_insert_with(Default::default);
                    status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                    self.ops.update_status(&self.d).await?;
                    return Err(anyhow!(
                        "hash collision for replica set {}",
                        name(&rs.metadata)
                    ));
                }
                (found, true)
            }
        };
        let (created, already) = created;
        Box::pin(self.sync_revision(&new_revision.to_string())).await?;
        if !already && progress_deadline(&self.d).is_some() {
            let mut status = self.d.status.clone().unwrap_or_default();
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_CREATED,
                    format!("Created new replica set \"{}\"", name(&created.metadata)),
                    now,
                ),
            );
            self.d.status = Some(status);
            self.d = self.ops.update_status(&self.d).await?;
        }
        Ok(Some(created))
    }

    async fn sync_revision(&mut self, rev: &str) -> Result<()> {
        let cur = self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if cur.map(String::as_str) != Some(rev) && !rev.is_empty() {
            self.d = self.ops.set_revision_annotation(&self.d, rev).await?;
        }
        Ok(())
    }

    /// Scales an RS and keeps its replicas annotations current; records an event on resize.
    async fn scale_rs(&mut self, rs: &ReplicaSet, new_scale: i32) -> Result<(bool, ReplicaSet)> {
        let old_scale = rs_replicas(rs);
        let size_changed = old_scale != new_scale;
        let mut copy = rs.clone();
        let max = replicas(&self.d) + max_surge(&self.d).map_err(err)?;
        let ann_changed = set_replicas_annotations(&mut copy, replicas(&self.d), max);
        if !size_changed && !ann_changed {
            return Ok((false, copy));
        }
        set_rs_replicas(&mut copy, new_scale);
        let updated = match self.ops.update_replica_set(&copy).await {
            // Written since it was read (often by this pass, an annotation first): apply
            // the same scale to the current object now rather than a requeue later, since
            // a wake from zero waits for this write.
            Err(e) if is_conflict_err(&e) => {
                let Some(mut fresh) = self
                    .ops
                    .get_replica_set(&ns(&self.d), &name(&rs.metadata))
                    .await?
                else {
                    return Err(e);
                };
                if fresh.metadata.uid != rs.metadata.uid {
                    return Err(e);
                }
                set_replicas_annotations(&mut fresh, replicas(&self.d), max);
                set_rs_replicas(&mut fresh, new_scale);
                self.ops.update_replica_set(&fresh).await?
            }
            r => r?,
        };
        if size_changed {
            let dir = if new_scale > old_scale { "up" } else { "down" };
            self.ops
                .event(
                    &self.d,
                    NORMAL,
                    "ScalingReplicaSet",
                    format!(
                        "Scaled {dir} replica set {} from {old_scale} to {new_scale}",
                        name(&rs.metadata)
                    ),
                )
                .await;
        }
        Ok((size_changed, updated))
    }

    /// Scaling-only pass (paused, scaling event, deleting).
    async fn sync_only(&mut self, rs_list: Vec<ReplicaSet>) -> Result<()> {
        let (new_rs, old) = Box::pin(self.new_and_old(&rs_list, false)).await?;
        let (new_rs, old) = Box::pin(self.scale(new_rs, old)).await?;
        if is_paused(&self.d) {
            Box::pin(self.cleanup(&old)).await?;
        }
        let mut all = old;
        all.extend(new_rs.iter().cloned());
        let status =
            calculate_status(&all, new_rs.as_ref(), &self.d, self.ops.now()).map_err(err)?;
        Box::pin(self.write_status(status)).await
    }

    async fn write_status(
        &mut self,
        status: k8s_openapi::api::apps::v1::DeploymentStatus,
    ) -> Result<()> {
        if self.d.status.as_ref() != Some(&status) {
            self.d.status = Some(status);
            self.d = self.ops.update_status(&self.d).await?;
        }
        Ok(())
    }

    /// `scale`: resizes RSs for a changed `spec.replicas`, proportionally mid-rollout.
    async fn scale(
        &mut self,
        new_rs: Option<ReplicaSet>,
        mut old: Vec<ReplicaSet>,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>)> {
        let want = replicas(&self.d);
        // One active (or the latest) RS takes the whole size.
        old.sort_by(|a, b| cmp_by_creation(b, a));
        let mut all = old.clone();
        all.extend(new_rs.iter().cloned());
        let active_all = active(&all);
        let target = match active_all.len() {
            0 => new_rs.clone().or_else(|| old.first().cloned()),
            1 => Some(active_all[0].clone()),
            _ => None,
        };
        let replace = |list: &mut Vec<ReplicaSet>,
                       new_rs: &mut Option<ReplicaSet>,
                       rs: ReplicaSet| {
            if new_rs
                .as_ref()
                .is_some_and(|n| n.metadata.uid == rs.metadata.uid)
            {
                *new_rs = Some(rs);
            } else if let Some(slot) = list.iter_mut().find(|o| o.metadata.uid == rs.metadata.uid) {
                *slot = rs;
            }
        };
        let mut new_rs = new_rs;
        if let Some(t) = target {
            if rs_replicas(&t) != want || desired_annotation(&t) != Some(want) {
                let (_, updated) = Box::pin(self.scale_rs(&t, want)).await?;
                replace(&mut old, &mut new_rs, updated);
            }
            return Ok((new_rs, old));
        }
        if is_saturated(&self.d, new_rs.as_ref()) {
            for rs in active(&old) {
                let (_, updated) = Box::pin(self.scale_rs(&rs, 0)).await?;
                replace(&mut old, &mut new_rs, updated);
            }
            return Ok((new_rs, old));
        }
        if is_rolling_update(&self.d) {
            let sizes = proportional_scale(&self.d, &active_all).map_err(err)?;
            for (rs, size) in active_all.iter().zip(sizes) {
                let (_, updated) = Box::pin(self.scale_rs(rs, size)).await?;
                replace(&mut old, &mut new_rs, updated);
            }
        }
        Ok((new_rs, old))
    }

    async fn cleanup(&mut self, old: &[ReplicaSet]) -> Result<()> {
        for rs in cleanup_candidates(&self.d, old) {
            self.ops.delete_replica_set(&rs).await?;
        }
        Ok(())
    }

    async fn sync_rollout_status(
        &mut self,
        all: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> Result<Option<Duration>> {
        let now = self.ops.now();
        let status = rollout_status(all, new_rs, &self.d, now).map_err(err)?;
        let requeue = requeue_stuck(&self.d, &status, now);
        Box::pin(self.write_status(status)).await?;
        Ok(requeue)
    }

    async fn rollout_rolling(mut self, rs_list: Vec<ReplicaSet>) -> Result<Option<Duration>> {
        let (new_rs, old) = Box::pin(self.new_and_old(&rs_list, true)).await?;
        let mut new_rs = new_rs.context("no new replica set after creation")?;
        let mut all = old.clone();
        all.push(new_rs.clone());

        // Scale up the new RS as far as surge allows.
        let want = replicas(&self.d);
        let (scaled_up, updated) = if rs_replicas(&new_rs) == want {
            (false, new_rs.clone())
        } else if rs_replicas(&new_rs) > want {
            Box::pin(self.scale_rs(&new_rs, want)).await?
        } else {
            let n = new_rs_new_replicas(&self.d, &all, &new_rs).map_err(err)?;
            Box::pin(self.scale_rs(&new_rs, n)).await?
        };
        new_rs = updated;
        *all.last_mut().expect("new rs pushed") = new_rs.clone();
        if scaled_up {
            return Box::pin(self.sync_rollout_status(&all, Some(&new_rs))).await;
        }

        // Scale down old RSs as far as availability allows.
        let (scaled_down, old) = Box::pin(self.reconcile_old(&all, active(&old), &new_rs)).await?;
        let old = merge_by_uid(&rs_list, &old, &new_rs);
        let mut all = old.clone();
        all.push(new_rs.clone());
        if scaled_down {
            return Box::pin(self.sync_rollout_status(&all, Some(&new_rs))).await;
        }
        let status = self.d.status.clone().unwrap_or_default();
        if deployment_complete(&self.d, &status) {
            Box::pin(self.cleanup(&old)).await?;
        }
        Box::pin(self.sync_rollout_status(&all, Some(&new_rs))).await
    }

    /// `reconcileOldReplicaSets`: returns whether anything was scaled and the updated old RSs.
    async fn reconcile_old(
        &mut self,
        all: &[ReplicaSet],
        mut old: Vec<ReplicaSet>,
        new_rs: &ReplicaSet,
    ) -> Result<(bool, Vec<ReplicaSet>)> {
        if sum_replicas(&old) == 0 {
            return Ok((false, old));
        }
        let all_pods = sum_replicas(all);
        let max_unavailable = max_unavailable(&self.d).map_err(err)?;
        let min_available = replicas(&self.d) - max_unavailable;
        let new_unavailable = rs_replicas(new_rs) - rs_available(new_rs);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok((false, old));
        }
        // First drop old replicas that are not available anyway.
        old.sort_by(cmp_by_creation);
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let r = rs_replicas(rs);
            if r == 0 || r == rs_available(rs) {
                continue;
            }
            let n = (max_scaled_down - cleaned).min(r - rs_available(rs));
            let (_, updated) = Box::pin(self.scale_rs(rs, r - n)).await?;
            *rs = updated;
            cleaned += n;
        }
        // Then scale down available old replicas while availability stays above the minimum.
        let mut all_now = old.clone();
        all_now.push(new_rs.clone());
        let available = sum_available(&all_now);
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for rs in old.iter_mut() {
                if scaled >= total {
                    break;
                }
                let r = rs_replicas(rs);
                if r == 0 {
                    continue;
                }
                let n = r.min(total - scaled);
                let (_, updated) = Box::pin(self.scale_rs(rs, r - n)).await?;
                *rs = updated;
                scaled += n;
            }
        }
        Ok((cleaned + scaled > 0, old))
    }

    async fn rollout_recreate(
        mut self,
        rs_list: Vec<ReplicaSet>,
        matcher: &LabelMatcher,
    ) -> Result<Option<Duration>> {
        let (new_rs, old) = Box::pin(self.new_and_old(&rs_list, false)).await?;
        let mut scaled_down = false;
        let mut old_now = Vec::new();
        for rs in old.iter() {
            if rs_replicas(rs) > 0 {
                let (changed, updated) = Box::pin(self.scale_rs(rs, 0)).await?;
                scaled_down |= changed;
                old_now.push(updated);
            } else {
                old_now.push(rs.clone());
            }
        }
        let mut all = old_now.clone();
        all.extend(new_rs.iter().cloned());
        if scaled_down {
            return Box::pin(self.sync_rollout_status(&all, new_rs.as_ref())).await;
        }
        if Box::pin(self.old_pods_running(new_rs.as_ref(), &old_now, matcher)).await? {
            return Box::pin(self.sync_rollout_status(&all, new_rs.as_ref())).await;
        }
        let (new_rs, old_now) = match new_rs {
            Some(n) => (n, old_now),
            None => {
                let (n, o) = Box::pin(self.new_and_old(&rs_list, true)).await?;
                (n.context("no new replica set after creation")?, o)
            }
        };
        let want = replicas(&self.d);
        let new_rs = if rs_replicas(&new_rs) != want {
            Box::pin(self.scale_rs(&new_rs, want)).await?.1
        } else {
            new_rs
        };
        let mut all = old_now.clone();
        all.push(new_rs.clone());
        let status = self.d.status.clone().unwrap_or_default();
        if deployment_complete(&self.d, &status) {
            Box::pin(self.cleanup(&old_now)).await?;
        }
        Box::pin(self.sync_rollout_status(&all, Some(&new_rs))).await
    }

    /// Recreate waits until no pod of an old RS is running any more.
    async fn old_pods_running(
        &self,
        new_rs: Option<&ReplicaSet>,
        old: &[ReplicaSet],
        matcher: &LabelMatcher,
    ) -> Result<bool> {
        if sum_actual(old) > 0 {
            return Ok(true);
        }
        let rs_uids: HashMap<String, ()> = old
            .iter()
            .filter_map(|r| r.metadata.uid.clone())
            .map(|u| (u, ()))
            .collect();
        let new_uid = new_rs.and_then(|r| r.metadata.uid.clone());
        let pods = self.ops.list_pods(&ns(&self.d), matcher).await?;
        Ok(pods.iter().any(|p| {
            let Some(owner) = controller_of(&p.metadata) else {
                return false;
            };
            if Some(&owner.uid) == new_uid.as_ref() || !rs_uids.contains_key(&owner.uid) {
                return false;
            }
            !matches!(crate::util::pod_phase(p), "Failed" | "Succeeded")
        }))
    }
}

/// The original RS list with updated copies substituted (by uid), minus the new RS.
fn merge_by_uid(
    orig: &[ReplicaSet],
    updated: &[ReplicaSet],
    new_rs: &ReplicaSet,
) -> Vec<ReplicaSet> {
    orig.iter()
        .filter(|r| r.metadata.uid != new_rs.metadata.uid)
        .map(|r| {
            updated
                .iter()
                .find(|u| u.metadata.uid == r.metadata.uid)
                .cloned()
                .unwrap_or_else(|| r.clone())
        })
        .collect()
}
