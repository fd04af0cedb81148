//! Drives whole rollouts through `sync_deployment` against an in-memory fake of the API and a
//! simulated ReplicaSet controller, checking upstream's invariants at every step.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::Result;
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, ReplicaSetStatus,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::logic::*;
use super::sync::{DeploymentOps, sync_deployment};
use crate::util::LabelMatcher;

fn t0() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_700_000_000).unwrap()
}

#[derive(Default)]
struct State {
    d: Deployment,
    rss: BTreeMap<String, ReplicaSet>,
    pods: Vec<Pod>,
    events: Vec<String>,
    seq: i64,
    now_offset: i64,
}

struct Fake(Mutex<State>);

impl Fake {
    fn new(d: Deployment) -> Self {
        Fake(Mutex::new(State {
            d,
            ..Default::default()
        }))
    }
    fn d(&self) -> Deployment {
        self.0.lock().unwrap().d.clone()
    }
    fn set_d(&self, f: impl FnOnce(&mut Deployment)) {
        let mut s = self.0.lock().unwrap();
        f(&mut s.d);
        if let Some(g) = s.d.metadata.generation.as_mut() {
            *g += 1;
        }
    }
    fn rss(&self) -> Vec<ReplicaSet> {
        self.0.lock().unwrap().rss.values().cloned().collect()
    }
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().events.clone()
    }
    fn advance(&self, secs: i64) {
        self.0.lock().unwrap().now_offset += secs;
    }
    /// The ReplicaSet controller and kubelet, idealised: every RS gets exactly its replicas,
    /// the first `available(rs)` of them available.
    fn settle(&self, available: impl Fn(&ReplicaSet) -> i32) {
        let mut s = self.0.lock().unwrap();
        for rs in s.rss.values_mut() {
            let r = rs_replicas(rs);
            let a = available(rs).min(r);
            rs.status = Some(ReplicaSetStatus {
                replicas: r,
                ready_replicas: Some(a),
                available_replicas: Some(a),
                observed_generation: rs.metadata.generation,
                ..Default::default()
            });
        }
    }
    async fn sync(&self) {
        let d = self.d();
        sync_deployment(self, &d).await.unwrap();
    }
    fn by_revision(&self, rev: i64) -> ReplicaSet {
        self.rss()
            .into_iter()
            .find(|r| revision(r) == rev)
            .unwrap_or_else(|| panic!("no RS with revision {rev}"))
    }
}

#[async_trait]
impl DeploymentOps for Fake {
    async fn list_replica_sets(&self, _ns: &str) -> Result<Vec<ReplicaSet>> {
        Ok(self.rss())
    }
    async fn list_pods(&self, _ns: &str, sel: &LabelMatcher) -> Result<Vec<Pod>> {
        let s = self.0.lock().unwrap();
        Ok(s.pods
            .iter()
            .filter(|p| sel.matches(p.metadata.labels.as_ref()))
            .cloned()
            .collect())
    }
    async fn get_deployment(&self, _ns: &str, _name: &str) -> Result<Option<Deployment>> {
        Ok(Some(self.d()))
    }
    async fn create_replica_set(&self, rs: &ReplicaSet) -> Result<Option<ReplicaSet>> {
        let mut s = self.0.lock().unwrap();
        let name = rs.metadata.name.clone().unwrap();
        if s.rss.contains_key(&name) {
            return Ok(None);
        }
        s.seq += 1;
        let mut rs = rs.clone();
        rs.metadata.uid = Some(format!("uid-{}", s.seq));
        rs.metadata.generation = Some(1);
        rs.metadata.creation_timestamp = Some(Time(t0() + jiff::SignedDuration::from_secs(s.seq)));
        s.rss.insert(name, rs.clone());
        Ok(Some(rs))
    }
    async fn get_replica_set(&self, _ns: &str, name: &str) -> Result<Option<ReplicaSet>> {
        Ok(self.0.lock().unwrap().rss.get(name).cloned())
    }
    async fn update_replica_set(&self, rs: &ReplicaSet) -> Result<ReplicaSet> {
        let mut s = self.0.lock().unwrap();
        let name = rs.metadata.name.clone().unwrap();
        let mut rs = rs.clone();
        let old = s.rss.get(&name).cloned().expect("update of missing rs");
        if old.spec != rs.spec {
            rs.metadata.generation = Some(old.metadata.generation.unwrap_or(0) + 1);
        }
        rs.status = old.status;
        s.rss.insert(name, rs.clone());
        Ok(rs)
    }
    async fn delete_replica_set(&self, rs: &ReplicaSet) -> Result<()> {
        let mut s = self.0.lock().unwrap();
        s.rss.remove(rs.metadata.name.as_deref().unwrap());
        s.events
            .push(format!("deleted {}", rs.metadata.name.clone().unwrap()));
        Ok(())
    }
    async fn update_status(&self, d: &Deployment) -> Result<Deployment> {
        let mut s = self.0.lock().unwrap();
        s.d.status = d.status.clone();
        Ok(s.d.clone())
    }
    async fn set_revision_annotation(&self, _d: &Deployment, revision: &str) -> Result<Deployment> {
        let mut s = self.0.lock().unwrap();
        s.d.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION.into(), revision.into());
        Ok(s.d.clone())
    }
    async fn event(&self, _d: &Deployment, type_: &str, reason: &str, message: String) {
        self.0
            .lock()
            .unwrap()
            .events
            .push(format!("{type_} {reason} {message}"));
    }
    fn now(&self) -> jiff::Timestamp {
        t0() + jiff::SignedDuration::from_secs(self.0.lock().unwrap().now_offset)
    }
}

fn template(image_arg: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                command: Some(vec!["/bin/server".into(), image_arg.into()]),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("d-uid".into()),
            generation: Some(1),
            annotations: Some(
                [("kubernetes.io/change-cause".to_string(), "v1".to_string())].into(),
            ),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            template: template("v1"),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            progress_deadline_seconds: Some(600),
            revision_history_limit: Some(10),
            ..Default::default()
        }),
        status: None,
    }
}

fn cond<'a>(d: &'a Deployment, t: &str) -> (&'a str, &'a str) {
    let c = get_condition(d.status.as_ref().unwrap(), t).unwrap_or_else(|| panic!("no {t}"));
    (c.status.as_str(), c.reason.as_deref().unwrap())
}

fn set_template(fake: &Fake, arg: &str, cause: &str) {
    fake.set_d(|d| {
        d.spec.as_mut().unwrap().template = template(arg);
        d.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("kubernetes.io/change-cause".into(), cause.into());
    });
}

#[tokio::test]
async fn new_deployment_creates_hashed_rs_and_becomes_available() {
    let fake = Fake::new(deployment(
        3,
        IntOrString::String("25%".into()),
        IntOrString::String("25%".into()),
    ));
    fake.sync().await;
    let rss = fake.rss();
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let hash = rs.metadata.labels.as_ref().unwrap()[POD_TEMPLATE_HASH].clone();
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    let spec = rs.spec.as_ref().unwrap();
    assert_eq!(
        spec.selector.match_labels.as_ref().unwrap()[POD_TEMPLATE_HASH],
        hash
    );
    assert_eq!(
        spec.template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap()[POD_TEMPLATE_HASH],
        hash
    );
    assert_eq!(rs_replicas(rs), 3);
    let ann = rs.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[REVISION], "1");
    assert_eq!(ann[DESIRED_REPLICAS], "3");
    assert_eq!(ann[MAX_REPLICAS], "4");
    assert_eq!(ann["kubernetes.io/change-cause"], "v1");
    let owner = &rs.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("d-uid", Some(true))
    );
    assert_eq!(
        fake.events(),
        [format!(
            "Normal ScalingReplicaSet Scaled up replica set web-{hash} from 0 to 3"
        )]
    );
    let d = fake.d();
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REVISION], "1");
    assert_eq!(cond(&d, PROGRESSING), ("True", NEW_RS_CREATED));
    assert_eq!(cond(&d, AVAILABLE), ("False", MIN_REPLICAS_UNAVAILABLE));

    // Hash is stable: the same template gives the same name.
    assert_eq!(compute_hash(&template("v1"), None), hash);
    assert_ne!(compute_hash(&template("v2"), None), hash);

    fake.settle(rs_replicas);
    fake.sync().await;
    let d = fake.d();
    let s = d.status.as_ref().unwrap();
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas,
            s.unavailable_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3), Some(0))
    );
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(cond(&d, AVAILABLE), ("True", MIN_REPLICAS_AVAILABLE));
    assert_eq!(cond(&d, PROGRESSING), ("True", NEW_RS_AVAILABLE));
    assert_eq!(
        get_condition(s, PROGRESSING).unwrap().message.as_deref(),
        Some(format!("ReplicaSet \"web-{hash}\" has successfully progressed.").as_str())
    );
    // Converged: another pass changes nothing.
    let before = (fake.d(), fake.rss());
    fake.sync().await;
    assert_eq!(before, (fake.d(), fake.rss()));
}

/// Runs a rolling update to completion, asserting surge and availability bounds each step.
async fn roll(fake: &Fake, max_total: i32, min_available: i32) {
    for _ in 0..50 {
        fake.sync().await;
        let rss = fake.rss();
        assert!(
            sum_replicas(&rss) <= max_total,
            "surge exceeded: {}",
            sum_replicas(&rss)
        );
        // The RS controller catches up (new pods exist, removed ones are gone) before any new
        // pod is available: availability may not drop below the minimum at this point.
        fake.settle(rs_available);
        let avail: i32 = fake.rss().iter().map(rs_available).sum();
        assert!(avail >= min_available, "availability dropped to {avail}");
        fake.settle(rs_replicas);
        let d = fake.d();
        if deployment_complete(&d, d.status.as_ref().unwrap())
            && fake.rss().iter().filter(|r| rs_replicas(r) > 0).count() == 1
        {
            fake.sync().await;
            return;
        }
    }
    panic!("rollout did not converge: {:?}", fake.events());
}

#[tokio::test]
async fn rolling_update_respects_surge_and_unavailability_then_rolls_back() {
    let fake = Fake::new(deployment(4, IntOrString::Int(1), IntOrString::Int(1)));
    fake.sync().await;
    fake.settle(rs_replicas);
    fake.sync().await;
    let first = fake.by_revision(1);

    set_template(&fake, "v2", "v2");
    fake.sync().await;
    let second = fake.by_revision(2);
    // 4 + surge 1 = 5 pods at most: the new RS starts at 1.
    assert_eq!(rs_replicas(&second), 1);
    assert_eq!(cond(&fake.d(), PROGRESSING), ("True", NEW_RS_CREATED));
    assert_eq!(
        second.metadata.annotations.as_ref().unwrap()["kubernetes.io/change-cause"],
        "v2"
    );
    roll(&fake, 5, 3).await;
    assert_eq!(rs_replicas(&fake.by_revision(2)), 4);
    let old = fake
        .rss()
        .into_iter()
        .find(|r| r.metadata.uid == first.metadata.uid)
        .unwrap();
    assert_eq!(rs_replicas(&old), 0);
    let d = fake.d();
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REVISION], "2");
    assert_eq!(cond(&d, PROGRESSING), ("True", NEW_RS_AVAILABLE));
    assert!(
        fake.events()
            .iter()
            .any(|e| e.contains("Scaled down replica set"))
    );

    // Undo: the template goes back to revision 1's; that RS becomes new as revision 3.
    set_template(&fake, "v1", "v1");
    fake.sync().await;
    assert_eq!(fake.rss().len(), 2, "rollback must reuse the old RS");
    let back = fake.by_revision(3);
    assert_eq!(back.metadata.uid, first.metadata.uid);
    assert_eq!(
        back.metadata.annotations.as_ref().unwrap()[REVISION_HISTORY],
        "1"
    );
    roll(&fake, 5, 3).await;
    assert_eq!(rs_replicas(&fake.by_revision(3)), 4);
    assert_eq!(rs_replicas(&fake.by_revision(2)), 0);
    assert_eq!(
        fake.d().metadata.annotations.as_ref().unwrap()[REVISION],
        "3"
    );
}

#[tokio::test]
async fn percent_fenceposts_roll_ten_replicas() {
    let fake = Fake::new(deployment(
        10,
        IntOrString::String("25%".into()),
        IntOrString::String("25%".into()),
    ));
    fake.sync().await;
    fake.settle(rs_replicas);
    set_template(&fake, "v2", "v2");
    // surge ceil(2.5) = 3, unavailable floor(2.5) = 2.
    roll(&fake, 13, 8).await;
    assert_eq!(rs_replicas(&fake.by_revision(2)), 10);
}

#[test]
fn fenceposts() {
    let p = |s: &str| IntOrString::String(s.into());
    assert_eq!(
        resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 10),
        Ok((3, 2))
    );
    assert_eq!(
        resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 3),
        Ok((0, 1))
    );
    assert_eq!(resolve_fenceposts(None, None, 1), Ok((1, 0)));
    assert!(resolve_fenceposts(Some(&p("abc")), None, 1).is_err());
}

#[test]
fn proportional_scaling_mid_rollout() {
    // Upstream's example: 10 replicas, surge 3, old 8 + new 5 in flight, scaled to 20.
    let mut d = deployment(20, IntOrString::Int(3), IntOrString::Int(2));
    d.status = Some(Default::default());
    let mk = |name: &str, n: i32, created: i64| {
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(t0() + jiff::SignedDuration::from_secs(created))),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: None,
        };
        set_rs_replicas(&mut rs, n);
        set_replicas_annotations(&mut rs, 10, 13);
        rs
    };
    let rss = [mk("old", 8, 0), mk("new", 5, 10)];
    let sizes = proportional_scale(&d, &rss).unwrap();
    // 23 allowed: 8*23/13 = 14.15 -> 14, 5*23/13 = 8.85 -> 9.
    assert_eq!(sizes, [14, 9]);
    // Scaling down to 5 (8 allowed) shrinks both proportionally and hits the total.
    let mut d = d;
    d.spec.as_mut().unwrap().replicas = Some(5);
    let sizes = proportional_scale(&d, &rss).unwrap();
    assert_eq!(sizes.iter().sum::<i32>(), 8);
    assert!(sizes[0] > sizes[1]);
}

#[tokio::test]
async fn scaling_during_rollout_is_proportional() {
    let fake = Fake::new(deployment(10, IntOrString::Int(3), IntOrString::Int(2)));
    fake.sync().await;
    fake.settle(rs_replicas);
    set_template(&fake, "v2", "v2");
    fake.sync().await; // new RS at 3, total 13
    fake.settle(|_| 0);
    fake.sync().await;
    let total = sum_replicas(&fake.rss());
    assert_eq!(total, 13);
    fake.set_d(|d| d.spec.as_mut().unwrap().replicas = Some(20));
    fake.sync().await;
    let rss = fake.rss();
    assert_eq!(sum_replicas(&rss), 23);
    assert!(rss.iter().all(|r| desired_annotation(r) == Some(20)));
    assert!(
        fake.events()
            .iter()
            .any(|e| e.contains("Scaled up replica set web-") && e.contains("to 9"))
    );
}

#[tokio::test]
async fn recreate_waits_for_old_pods() {
    let mut d = deployment(2, IntOrString::Int(1), IntOrString::Int(1));
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    let fake = Fake::new(d);
    fake.sync().await;
    fake.settle(rs_replicas);
    let first = fake.by_revision(1);
    assert_eq!(rs_replicas(&first), 2);
    // One old pod still running.
    {
        let mut s = fake.0.lock().unwrap();
        s.pods.push(Pod {
            metadata: ObjectMeta {
                name: Some("old-pod".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                owner_references: Some(vec![crate::util::controller_ref(
                    "apps/v1",
                    "ReplicaSet",
                    &first.metadata,
                )]),
                ..Default::default()
            },
            ..Default::default()
        });
    }
    set_template(&fake, "v2", "v2");
    fake.sync().await;
    assert_eq!(rs_replicas(&fake.by_revision(1)), 0);
    assert_eq!(fake.rss().len(), 1, "no new RS while old pods exist");
    fake.settle(rs_replicas);
    fake.sync().await;
    assert_eq!(fake.rss().len(), 1, "old pod still running");
    fake.0.lock().unwrap().pods.clear();
    fake.sync().await;
    assert_eq!(rs_replicas(&fake.by_revision(2)), 2);
}

#[tokio::test]
async fn progress_deadline_exceeded_when_stuck() {
    let mut d = deployment(2, IntOrString::Int(1), IntOrString::Int(0));
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(30);
    let fake = Fake::new(d);
    fake.sync().await;
    fake.settle(|_| 0); // pods never become available
    fake.sync().await;
    assert_eq!(cond(&fake.d(), PROGRESSING).0, "True");
    fake.advance(31);
    fake.sync().await;
    let d = fake.d();
    assert_eq!(cond(&d, PROGRESSING), ("False", TIMED_OUT));
    let rs = &fake.rss()[0];
    assert_eq!(
        get_condition(d.status.as_ref().unwrap(), PROGRESSING)
            .unwrap()
            .message
            .as_deref(),
        Some(
            format!(
                "ReplicaSet \"{}\" has timed out progressing.",
                rs.metadata.name.clone().unwrap()
            )
            .as_str()
        )
    );
    // Recovery flips it back.
    fake.settle(rs_replicas);
    fake.sync().await;
    assert_eq!(cond(&fake.d(), PROGRESSING), ("True", NEW_RS_AVAILABLE));
}

#[tokio::test]
async fn paused_deployment_does_not_roll() {
    let fake = Fake::new(deployment(2, IntOrString::Int(1), IntOrString::Int(0)));
    fake.sync().await;
    fake.settle(rs_replicas);
    fake.set_d(|d| d.spec.as_mut().unwrap().paused = Some(true));
    set_template(&fake, "v2", "v2");
    fake.sync().await;
    assert_eq!(fake.rss().len(), 1);
    assert_eq!(cond(&fake.d(), PROGRESSING), ("Unknown", PAUSED));
    fake.set_d(|d| d.spec.as_mut().unwrap().paused = Some(false));
    fake.sync().await;
    assert_eq!(fake.rss().len(), 2);
}

#[tokio::test]
async fn history_limit_deletes_oldest_empty_replica_sets() {
    let mut d = deployment(1, IntOrString::Int(1), IntOrString::Int(0));
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let fake = Fake::new(d);
    fake.sync().await;
    fake.settle(rs_replicas);
    for v in ["v2", "v3", "v4"] {
        set_template(&fake, v, v);
        roll(&fake, 2, 1).await;
    }
    let revs: Vec<i64> = {
        let mut r: Vec<i64> = fake.rss().iter().map(revision).collect();
        r.sort();
        r
    };
    assert_eq!(revs, [3, 4]);
}

#[tokio::test]
async fn adopts_matching_orphan_and_releases_non_matching() {
    let fake = Fake::new(deployment(1, IntOrString::Int(1), IntOrString::Int(0)));
    let hash = compute_hash(&template("v1"), None);
    let mut tmpl = template("v1");
    tmpl.metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let orphan = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("web-{hash}")),
            namespace: Some("default".into()),
            labels: tmpl.metadata.as_ref().unwrap().labels.clone(),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            replicas: Some(1),
            selector: selector_with_hash(&fake.d().spec.unwrap().selector, &hash),
            template: Some(tmpl),
            min_ready_seconds: Some(0),
        }),
        status: None,
    };
    fake.create_replica_set(&orphan).await.unwrap();
    fake.sync().await;
    let rss = fake.rss();
    assert_eq!(
        rss.len(),
        1,
        "orphan with the same template is adopted, not duplicated"
    );
    let owner = &rss[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, "d-uid");

    // Change the deployment selector: the RS no longer matches and is released.
    fake.set_d(|d| {
        let spec = d.spec.as_mut().unwrap();
        spec.selector.match_labels = Some([("app".to_string(), "other".to_string())].into());
        spec.template.metadata.as_mut().unwrap().labels = spec.selector.match_labels.clone();
    });
    fake.sync().await;
    let released = fake
        .rss()
        .into_iter()
        .find(|r| r.metadata.name == orphan.metadata.name)
        .unwrap();
    assert!(
        released
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
}
