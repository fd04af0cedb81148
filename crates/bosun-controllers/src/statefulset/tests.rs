//! Drives StatefulSets through [`logic::plan`] against a simulated cluster in which created
//! pods become Running and Ready when the test says so, checking upstream's ordering rules.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{
    ControllerRevision, RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

use super::logic::{self, Step};

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_700_000_000).unwrap()
}

fn set(replicas: i32, parallel: bool) -> StatefulSet {
    let labels: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
    StatefulSet {
        metadata: ObjectMeta {
            name: Some("db".into()),
            namespace: Some("default".into()),
            uid: Some("uid-1".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            service_name: Some("db".into()),
            pod_management_policy: parallel.then(|| "Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    max_unavailable: None,
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "db".into(),
                        image: Some("redis:7".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    ..Default::default()
                },
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// A simulated namespace: the set, its pods, claims and revisions.
struct Sim {
    s: StatefulSet,
    pods: BTreeMap<String, Pod>,
    claims: HashMap<String, PersistentVolumeClaim>,
    revs: Vec<ControllerRevision>,
    /// Every pod creation and deletion, in order.
    log: Vec<String>,
}

impl Sim {
    fn new(s: StatefulSet) -> Self {
        Sim {
            s,
            pods: BTreeMap::new(),
            claims: HashMap::new(),
            revs: Vec::new(),
            log: Vec::new(),
        }
    }

    /// One reconcile; deleted pods vanish at once (no grace period in the simulation).
    fn step(&mut self) -> Vec<Step> {
        let r = logic::revisions(&self.s, &self.revs);
        if let Some(c) = &r.create {
            self.revs.push(c.clone());
        }
        if let Some(n) = &r.renumber {
            for x in &mut self.revs {
                if x.metadata.name == n.metadata.name {
                    x.revision = n.revision;
                }
            }
        }
        let pods: Vec<Pod> = self.pods.values().cloned().collect();
        let plan = logic::plan(&self.s, &r, &pods, &self.claims, now());
        for st in &plan.steps {
            match st {
                Step::CreateClaim(c) => {
                    self.claims
                        .insert(c.metadata.name.clone().unwrap(), (**c).clone());
                }
                Step::CreatePod { ordinal, update } => {
                    let rev = if *update { &r.update } else { &r.current };
                    let t = logic::revision_template(rev).unwrap();
                    let p = logic::new_pod(
                        &self.s,
                        &t,
                        rev.metadata.name.as_deref().unwrap(),
                        *ordinal,
                    );
                    let n = p.metadata.name.clone().unwrap();
                    self.log.push(format!("+{n}"));
                    self.pods.insert(n, p);
                }
                Step::DeletePod(n) => {
                    self.log.push(format!("-{n}"));
                    self.pods.remove(n);
                }
                Step::DeleteClaim(n) => {
                    self.claims.remove(n);
                }
            }
        }
        self.s.status = Some(plan.status);
        plan.steps
    }

    fn ready_all(&mut self) {
        for p in self.pods.values_mut() {
            p.status = Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(now())),
                    ..Default::default()
                }]),
                ..Default::default()
            });
        }
    }

    /// Reconciles, making pods ready after each pass, until nothing more happens.
    fn converge(&mut self) {
        for _ in 0..50 {
            self.ready_all();
            let steps = self.step();
            if steps.is_empty() {
                return;
            }
        }
        panic!("did not converge: {:?}", self.log);
    }

    fn revision_of(&self, pod: &str) -> String {
        logic::pod_revision(&self.pods[pod]).unwrap().to_string()
    }
}

#[test]
fn ordered_ready_creates_one_pod_at_a_time() {
    let mut sim = Sim::new(set(3, false));
    let steps = sim.step();
    // First pass: the claim of ordinal 0, then pod 0, and nothing else until it is ready.
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        matches!(&steps[0], Step::CreateClaim(c) if c.metadata.name.as_deref() == Some("data-db-0"))
    );
    assert_eq!(sim.step(), Vec::new(), "waits for db-0 to be ready");
    sim.converge();
    assert_eq!(sim.log, ["+db-0", "+db-1", "+db-2"]);
    let p = &sim.pods["db-1"];
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("db-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("db"));
    let labels = p.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[logic::POD_NAME], "db-1");
    assert!(labels[logic::REVISION_HASH].starts_with("db-"));
    let vol = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(
        vol.persistent_volume_claim.as_ref().unwrap().claim_name,
        "data-db-1"
    );
    let st = sim.s.status.clone().unwrap();
    assert_eq!((st.replicas, st.ready_replicas), (3, Some(3)));
    assert_eq!(st.current_revision, st.update_revision);
}

#[test]
fn parallel_creates_all_at_once_and_scale_down_goes_highest_first() {
    let mut sim = Sim::new(set(3, true));
    let steps = sim.step();
    assert_eq!(
        steps
            .iter()
            .filter(|s| matches!(s, Step::CreatePod { .. }))
            .count(),
        3
    );
    sim.ready_all();

    let mut ordered = Sim::new(set(4, false));
    ordered.converge();
    ordered.log.clear();
    ordered.s.spec.as_mut().unwrap().replicas = Some(1);
    ordered.converge();
    assert_eq!(ordered.log, ["-db-3", "-db-2", "-db-1"]);
    // Claims are kept by default (whenScaled: Retain).
    assert_eq!(ordered.claims.len(), 4);
}

#[test]
fn when_scaled_delete_removes_claims_of_removed_ordinals() {
    let mut s = set(3, false);
    s.spec
        .as_mut()
        .unwrap()
        .persistent_volume_claim_retention_policy = Some(
        k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_deleted: Some("Delete".into()),
            when_scaled: Some("Delete".into()),
        },
    );
    let mut sim = Sim::new(s);
    sim.converge();
    assert!(sim.claims["data-db-0"].metadata.owner_references.is_some());
    sim.s.spec.as_mut().unwrap().replicas = Some(1);
    sim.converge();
    let mut names: Vec<_> = sim.claims.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["data-db-0"]);
}

#[test]
fn rolling_update_goes_from_highest_ordinal_and_respects_partition() {
    let mut sim = Sim::new(set(3, false));
    sim.converge();
    let old = sim.revision_of("db-0");
    sim.log.clear();
    let spec = sim.s.spec.as_mut().unwrap();
    spec.template.spec.as_mut().unwrap().containers[0].image = Some("redis:8".into());
    spec.update_strategy
        .as_mut()
        .unwrap()
        .rolling_update
        .as_mut()
        .unwrap()
        .partition = Some(1);
    sim.converge();
    assert_eq!(sim.log, ["-db-2", "+db-2", "-db-1", "+db-1"]);
    assert_eq!(
        sim.revision_of("db-0"),
        old,
        "below the partition: untouched"
    );
    assert_ne!(sim.revision_of("db-2"), old);
    let st = sim.s.status.clone().unwrap();
    assert_eq!(st.current_revision.as_deref(), Some(old.as_str()));
    assert_eq!(st.updated_replicas, Some(2));
    // Deleting a pod below the partition brings it back at the old revision.
    sim.pods.remove("db-0");
    sim.converge();
    assert_eq!(sim.revision_of("db-0"), old);
    // Partition 0 finishes the roll and makes the update revision current.
    sim.s
        .spec
        .as_mut()
        .unwrap()
        .update_strategy
        .as_mut()
        .unwrap()
        .rolling_update
        .as_mut()
        .unwrap()
        .partition = Some(0);
    sim.converge();
    let st = sim.s.status.clone().unwrap();
    assert_eq!(st.current_revision, st.update_revision);
    assert_eq!(st.current_replicas, Some(3));
    assert_eq!(sim.revs.len(), 2);
}

#[test]
fn undo_renumbers_the_old_revision_instead_of_creating_one() {
    let mut sim = Sim::new(set(1, false));
    sim.converge();
    let first = sim.revision_of("db-0");
    let tmpl = sim.s.spec.as_ref().unwrap().template.clone();
    sim.s
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("redis:8".into());
    sim.converge();
    assert_ne!(sim.revision_of("db-0"), first);
    sim.s.spec.as_mut().unwrap().template = tmpl;
    sim.converge();
    assert_eq!(sim.revision_of("db-0"), first);
    assert_eq!(sim.revs.len(), 2);
    let r = sim
        .revs
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(first.as_str()))
        .unwrap();
    assert_eq!(r.revision, 3);
}

#[test]
fn on_delete_leaves_pods_until_deleted() {
    let mut s = set(2, false);
    s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        rolling_update: None,
    });
    let mut sim = Sim::new(s);
    sim.converge();
    let old = sim.revision_of("db-1");
    sim.s
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("redis:8".into());
    sim.converge();
    assert_eq!(sim.revision_of("db-1"), old);
    sim.pods.remove("db-1");
    sim.converge();
    assert_ne!(sim.revision_of("db-1"), old);
}

#[test]
fn failed_pod_is_replaced_and_ordinal_parsing_is_strict() {
    let mut sim = Sim::new(set(2, false));
    sim.converge();
    sim.log.clear();
    sim.pods
        .get_mut("db-0")
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .phase = Some("Failed".into());
    assert_eq!(sim.step(), vec![Step::DeletePod("db-0".into())]);
    sim.converge();
    assert_eq!(sim.log, ["-db-0", "+db-0"]);
    let named = |n: &str| Pod {
        metadata: ObjectMeta {
            name: Some(n.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(logic::ordinal_of("db", &named("db-12")), Some(12));
    assert_eq!(logic::ordinal_of("db", &named("db-01")), None);
    assert_eq!(logic::ordinal_of("db", &named("dbx-1")), None);
    assert_eq!(logic::ordinal_of("db", &named("db-")), None);
}
