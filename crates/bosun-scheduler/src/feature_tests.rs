//! One test per scheduling feature, on decisions alone (no API server).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};

use crate::plugins::{
    NodeInfo, Nominated, Placement, default_filters, default_scores, place, place_from,
};
use crate::preempt;

fn node(name: &str, zone: &str, cpu: &str, extra: Value) -> Node {
    let mut v = json!({"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}});
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn pod(name: &str, labels: Value, spec: Value) -> Pod {
    let mut v = json!({"metadata": {"name": name, "namespace": "default", "uid": name,
            "labels": labels},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}});
    merge(&mut v, json!({"spec": spec}));
    serde_json::from_value(v).unwrap()
}

fn info(n: Node, pods: Vec<Pod>) -> NodeInfo {
    NodeInfo::new(Arc::new(n), pods.into_iter().map(Arc::new).collect())
}

fn decide(p: &Pod, nodes: &[NodeInfo]) -> Result<String, String> {
    match place(p, nodes, &default_filters(), &default_scores()) {
        Placement::Node(n) => Ok(n),
        Placement::Unschedulable(d) => Err(d.message()),
    }
}

fn three_zones() -> Vec<Node> {
    vec![
        node("a", "z1", "4", json!({})),
        node("b", "z2", "4", json!({})),
        node("c", "z3", "4", json!({})),
    ]
}

#[test]
fn required_and_preferred_node_affinity() {
    let nodes: Vec<NodeInfo> = three_zones().into_iter().map(|n| info(n, vec![])).collect();
    let req = pod(
        "p",
        json!({}),
        json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                "values": ["z2", "z3"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z3"]}]}}]}}}),
    );
    assert_eq!(decide(&req, &nodes), Ok("c".into()));
    // matchFields on the node name.
    let by_name = pod(
        "p",
        json!({}),
        json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
    );
    assert_eq!(decide(&by_name, &nodes), Ok("b".into()));
    let none = pod(
        "p",
        json!({}),
        json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]}}}}),
    );
    assert_eq!(
        decide(&none, &nodes),
        Err("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.".into())
    );
}

#[test]
fn prefer_no_schedule_taints_are_avoided() {
    let taint = json!({"spec": {"taints": [{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]}});
    let nodes = [
        info(node("a", "z1", "4", taint.clone()), vec![]),
        info(node("b", "z1", "4", taint), vec![]),
        info(node("c", "z1", "4", json!({})), vec![]),
    ];
    assert_eq!(
        decide(&pod("p", json!({}), json!({})), &nodes),
        Ok("c".into())
    );
}

#[test]
fn untolerated_taint_message_and_toleration() {
    let taint = json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}});
    let nodes = [
        info(node("a", "z1", "100m", json!({})), vec![]),
        info(node("b", "z1", "100m", json!({})), vec![]),
        info(node("c", "z1", "4", taint), vec![]),
    ];
    let p = pod(
        "p",
        json!({}),
        json!({"containers": [{"name": "c",
        "resources": {"requests": {"cpu": "1"}}}]}),
    );
    assert_eq!(
        decide(&p, &nodes),
        Err(
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
                .into()
        )
    );
    let mut tolerant = p.clone();
    tolerant.spec.as_mut().unwrap().tolerations = Some(vec![
        serde_json::from_value(
            json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}),
        )
        .unwrap(),
    ]);
    assert_eq!(decide(&tolerant, &nodes), Ok("c".into()));
}

fn anti_affinity(key: &str) -> Value {
    json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": key}]}}})
}

#[test]
fn required_pod_anti_affinity_one_per_node() {
    let spec = anti_affinity("kubernetes.io/hostname");
    let web = |n: &str| pod(n, json!({"app": "web"}), spec.clone());
    let mut nodes: Vec<NodeInfo> = three_zones().into_iter().map(|n| info(n, vec![])).collect();
    let mut used = Vec::new();
    for i in 0..3 {
        let chosen = decide(&web(&format!("w{i}")), &nodes).unwrap();
        assert!(!used.contains(&chosen), "{chosen} twice");
        let n = nodes.iter_mut().find(|n| n.name() == chosen).unwrap();
        n.add_pod(Arc::new(web(&format!("w{i}"))));
        used.push(chosen);
    }
    assert_eq!(
        decide(&web("w3"), &nodes),
        Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.".into())
    );
    // Symmetry: a pod without terms, matched by the existing pods' anti-affinity.
    assert_eq!(
        decide(&pod("plain", json!({"app": "web"}), json!({})), &nodes),
        Err(
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
                .into()
        )
    );
}

#[test]
fn required_pod_affinity_follows_the_peer_by_zone() {
    let nodes = [
        info(node("a", "z1", "4", json!({})), vec![]),
        info(
            node("b", "z2", "4", json!({})),
            vec![pod("db", json!({"app": "db"}), json!({}))],
        ),
        info(
            node("c", "z2", "4", json!({})),
            vec![pod("x", json!({}), json!({}))],
        ),
    ];
    let spec = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
    let p = pod("web", json!({}), spec);
    let chosen = decide(&p, &nodes).unwrap();
    assert!(chosen == "b" || chosen == "c", "{chosen}");
    // Nothing matches and the pod does not match itself: nowhere.
    let lonely = pod(
        "web",
        json!({}),
        json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector":
            {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
    );
    assert_eq!(
        decide(&lonely, &nodes),
        Err("0/3 nodes are available: 3 node(s) didn't match pod affinity rules.".into())
    );
}

#[test]
fn preferred_pod_affinity_and_anti_affinity_score() {
    let nodes = [
        info(node("a", "z1", "4", json!({})), vec![]),
        info(
            node("b", "z2", "4", json!({})),
            vec![pod("db", json!({"app": "db"}), json!({}))],
        ),
        info(node("c", "z3", "4", json!({})), vec![]),
    ];
    let near = pod(
        "p",
        json!({}),
        json!({"affinity": {"podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}}]}}}),
    );
    assert_eq!(decide(&near, &nodes), Ok("b".into()));
    let far = pod(
        "p",
        json!({}),
        json!({"affinity": {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}}]}}}),
    );
    assert_ne!(decide(&far, &nodes), Ok("b".into()));
}

#[test]
fn topology_spread_max_skew_and_min_domains() {
    let spread = |max_skew: i32, min_domains: Option<i32>| {
        let mut c = json!({"maxSkew": max_skew, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}});
        if let Some(m) = min_domains {
            c["minDomains"] = json!(m);
        }
        pod(
            "new",
            json!({"app": "web"}),
            json!({"topologySpreadConstraints": [c]}),
        )
    };
    let web = |n: &str| pod(n, json!({"app": "web"}), json!({}));
    // z1 has 2, z2 has 1, z3 (node c) has 0: with maxSkew 1 only z3 is allowed.
    let nodes = [
        info(node("a", "z1", "4", json!({})), vec![web("w1"), web("w2")]),
        info(node("b", "z2", "4", json!({})), vec![web("w3")]),
        info(node("c", "z3", "4", json!({})), vec![]),
    ];
    assert_eq!(decide(&spread(1, None), &nodes), Ok("c".into()));
    let two = [nodes[0].clone(), nodes[1].clone()];
    assert_eq!(decide(&spread(1, None), &two), Ok("b".into()));
    // Two domains but minDomains 3: the global minimum counts as 0, so z2 (1+1) is too full.
    assert_eq!(
        decide(&spread(1, Some(3)), &two),
        Err(
            "0/2 nodes are available: 2 node(s) didn't match pod topology spread constraints."
                .into()
        )
    );
    // A node without the key cannot take the pod.
    let mut bare = node("d", "z1", "4", json!({}));
    bare.metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("topology.kubernetes.io/zone");
    assert_eq!(
        decide(&spread(1, None), &[info(bare, vec![])]),
        Err("0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label).".into())
    );
    // ScheduleAnyway only scores: the emptiest zone wins, nothing is refused.
    let mut soft = spread(1, None);
    soft.spec
        .as_mut()
        .unwrap()
        .topology_spread_constraints
        .as_mut()
        .unwrap()[0]
        .when_unsatisfiable = "ScheduleAnyway".into();
    assert_eq!(decide(&soft, &nodes), Ok("c".into()));
    assert_eq!(decide(&soft, &[nodes[0].clone()]), Ok("a".into()));
}

#[test]
fn default_spreading_over_nodes_and_zones() {
    let owned = |n: &str| {
        let mut p = pod(n, json!({"app": "web"}), json!({}));
        p.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid",
            "controller": true}))
            .unwrap(),
        ]);
        p
    };
    // Zone z1 has two nodes with one replica each; z2's node is empty: z2 wins.
    let nodes = [
        info(node("a", "z1", "4", json!({})), vec![owned("r1")]),
        info(node("b", "z1", "4", json!({})), vec![owned("r2")]),
        info(node("c", "z2", "4", json!({})), vec![]),
        info(node("d", "z1", "4", json!({})), vec![]),
    ];
    assert_eq!(decide(&owned("r3"), &nodes), Ok("c".into()));
}

/// A replica owned by the ReplicaSet `rs`.
fn replica(name: &str, rs: &str) -> Pod {
    let mut p = pod(name, json!({"app": rs}), json!({}));
    p.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": format!("{rs}-uid"),
        "controller": true}))
        .unwrap(),
    ]);
    p
}

/// Places `count` replicas one at a time, each counted on its node before the next
/// decision (as the scheduler's cache does with an assumed pod); returns pods per node.
fn place_replicas(nodes: &mut [NodeInfo], rs: &str, count: usize) -> Vec<(String, usize)> {
    for i in 0..count {
        let p = replica(&format!("{rs}-{i}"), rs);
        let at = decide(&p, nodes).unwrap();
        let n = nodes.iter_mut().find(|n| n.name() == at).unwrap();
        n.add_pod(Arc::new(p));
    }
    nodes
        .iter()
        .map(|n| {
            (
                n.name().to_string(),
                n.owned_by(&format!("{rs}-uid")) as usize,
            )
        })
        .collect()
}

fn counts(v: &[(&str, usize)]) -> Vec<(String, usize)> {
    v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
fn replicas_spread_evenly_over_equal_nodes() {
    let mut nodes: Vec<NodeInfo> = three_zones().into_iter().map(|n| info(n, vec![])).collect();
    assert_eq!(
        place_replicas(&mut nodes, "rs", 6),
        counts(&[("a", 2), ("b", 2), ("c", 2)])
    );
    // Nodes without a zone label at all.
    let mut bare: Vec<NodeInfo> = three_zones()
        .into_iter()
        .map(|mut n| {
            n.metadata
                .labels
                .as_mut()
                .unwrap()
                .remove("topology.kubernetes.io/zone");
            info(n, vec![])
        })
        .collect();
    assert_eq!(
        place_replicas(&mut bare, "rs", 6),
        counts(&[("a", 2), ("b", 2), ("c", 2)])
    );
}

#[test]
fn a_node_without_a_zone_is_not_favoured_by_default_spreading() {
    // As a multi-host cluster looks: the server's node has no zone label and no reserve,
    // the joined nodes have a zone each and 250m reserved.
    let mut server = node("server", "", "4", json!({}));
    server
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("topology.kubernetes.io/zone");
    let mut nodes = vec![
        info(server, vec![]),
        info(node("node-1", "zone-1", "3750m", json!({})), vec![]),
        info(node("node-2", "zone-2", "3750m", json!({})), vec![]),
    ];
    assert_eq!(
        place_replicas(&mut nodes, "web", 6),
        counts(&[("server", 2), ("node-1", 2), ("node-2", 2)])
    );
    // Four replicas of another ReplicaSet: every node gets at least one.
    let four = place_replicas(&mut nodes, "api", 4);
    assert!(four.iter().all(|(_, c)| *c >= 1), "{four:?}");
}

#[test]
fn host_port_conflict_message() {
    let hp =
        json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
    let nodes = [info(
        node("a", "z1", "4", json!({})),
        vec![pod("x", json!({}), hp.clone())],
    )];
    assert_eq!(
        decide(&pod("p", json!({}), hp), &nodes),
        Err("0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports.".into())
    );
}

fn with_priority(mut p: Pod, prio: i32) -> Pod {
    p.spec.as_mut().unwrap().priority = Some(prio);
    p
}

fn cpu_pod(name: &str, cpu: &str, prio: i32, labels: Value) -> Pod {
    with_priority(
        pod(
            name,
            labels,
            json!({"containers": [{"name": "c",
            "resources": {"requests": {"cpu": cpu}}}]}),
        ),
        prio,
    )
}

#[test]
fn preemption_picks_fewest_least_important_victims() {
    let nodes = [
        info(
            node("a", "z1", "2", json!({})),
            vec![
                cpu_pod("a-low", "1", 10, json!({})),
                cpu_pod("a-mid", "1", 500, json!({})),
            ],
        ),
        info(
            node("b", "z1", "2", json!({})),
            vec![
                cpu_pod("b-low1", "1", 10, json!({})),
                cpu_pod("b-low2", "1", 20, json!({})),
            ],
        ),
        info(
            node(
                "c",
                "z1",
                "2",
                json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}),
            ),
            vec![],
        ),
    ];
    let high = cpu_pod("high", "1", 1000, json!({}));
    let diag = match place(&high, &nodes, &default_filters(), &default_scores()) {
        Placement::Unschedulable(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(diag.resolvable.len(), 2);
    let c = preempt::select(
        &high,
        &nodes,
        &diag,
        &default_filters(),
        &[],
        &Nominated::new(),
    )
    .unwrap();
    // a-mid is given back on a, b-low2 on b: one victim of priority 10 either way; the first
    // node in order wins the tie.
    assert_eq!(c.victims.len(), 1);
    assert_eq!(c.victims[0].metadata.name.as_deref(), Some("a-low"));
    // A PDB protecting a-low moves the choice to b.
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "guarded"}}},
        "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}))
    .unwrap();
    let guarded = [
        info(
            node("a", "z1", "2", json!({})),
            vec![
                cpu_pod("a-low", "1", 10, json!({"app": "guarded"})),
                cpu_pod("a-mid", "1", 500, json!({})),
            ],
        ),
        nodes[1].clone(),
    ];
    let c = preempt::select(
        &high,
        &guarded,
        &diag,
        &default_filters(),
        &[Arc::new(pdb)],
        &Nominated::new(),
    )
    .unwrap();
    assert_eq!(c.node, "b");
    assert_eq!(c.victims[0].metadata.name.as_deref(), Some("b-low1"));
    // Nobody of lower priority anywhere.
    let low = cpu_pod("low", "1", 0, json!({}));
    assert_eq!(
        preempt::select(
            &low,
            &nodes,
            &diag,
            &default_filters(),
            &[],
            &Nominated::new()
        )
        .unwrap_err(),
        "preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    );
}

fn diagnose(p: &Pod, nodes: &[NodeInfo]) -> crate::plugins::Diagnosis {
    match place(p, nodes, &default_filters(), &default_scores()) {
        Placement::Unschedulable(d) => d,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_nominated_pods_room_is_kept_from_pods_of_lower_or_equal_priority() {
    // Node a has 1 CPU free, promised to "vip" (priority 1000); b is full.
    let nodes = [
        info(
            node("a", "z1", "2", json!({})),
            vec![
                cpu_pod("keep", "500m", 2000, json!({})),
                cpu_pod("x", "500m", 0, json!({})),
            ],
        ),
        info(
            node("b", "z1", "1", json!({})),
            vec![cpu_pod("y", "1", 0, json!({}))],
        ),
    ];
    let vip = Arc::new(cpu_pod("vip", "1", 1000, json!({})));
    let nominated: Nominated = [("a".to_string(), vec![vip.clone()])].into();
    let place_with = |p: &Pod| {
        place_from(
            p,
            &nodes,
            &default_filters(),
            &default_scores(),
            0,
            &nominated,
        )
        .0
    };
    let decide_with = |p: &Pod| match place_with(p) {
        Placement::Node(n) => Ok(n),
        Placement::Unschedulable(d) => Err(d.message()),
    };
    let insufficient = Err("0/2 nodes are available: 2 Insufficient cpu.".to_string());
    assert_eq!(
        decide_with(&cpu_pod("equal", "1", 1000, json!({}))),
        insufficient
    );
    assert_eq!(
        decide_with(&cpu_pod("lower", "1", 0, json!({}))),
        insufficient
    );
    // The nominated pod itself, and a more important one, may take the room.
    assert_eq!(decide_with(&vip), Ok("a".into()));
    assert_eq!(
        decide_with(&cpu_pod("higher", "1", 2000, json!({}))),
        Ok("a".into())
    );
    // Without the nomination the room is free for anyone.
    assert_eq!(
        decide(&cpu_pod("lower", "1", 0, json!({})), &nodes),
        Ok("a".into())
    );
    // A pod preempting must leave the nominated pod its room too: on a, evicting x frees
    // 500m, not enough beside vip's CPU, so the victim is taken on b.
    let mid = cpu_pod("mid", "1", 500, json!({}));
    let Placement::Unschedulable(diag) = place_with(&mid) else {
        panic!("mid scheduled");
    };
    let c = preempt::select(&mid, &nodes, &diag, &default_filters(), &[], &nominated).unwrap();
    assert_eq!(c.node, "b");
    let c = preempt::select(
        &mid,
        &nodes,
        &diag,
        &default_filters(),
        &[],
        &Nominated::new(),
    )
    .unwrap();
    assert_eq!(c.node, "a", "without the nomination a is as good and first");
}

#[test]
fn preemption_clears_pod_anti_affinity_conflicts() {
    // "db" refuses to share a node with app=batch pods; both nodes run one, b's at a lower
    // priority than a's. Resources are plentiful: only anti-affinity stands in the way.
    let batch = |n: &str, prio: i32| cpu_pod(n, "100m", prio, json!({"app": "batch"}));
    let nodes = [
        info(node("a", "z1", "4", json!({})), vec![batch("a-batch", 50)]),
        info(
            node("b", "z2", "4", json!({})),
            vec![
                batch("b-batch", 10),
                cpu_pod("b-other", "100m", 10, json!({})),
            ],
        ),
    ];
    let db = with_priority(
        pod(
            "db",
            json!({"app": "db"}),
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "batch"}},
                 "topologyKey": "kubernetes.io/hostname"}]}}}),
        ),
        1000,
    );
    let diag = diagnose(&db, &nodes);
    assert_eq!(
        diag.message(),
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    );
    let c = preempt::select(
        &db,
        &nodes,
        &diag,
        &default_filters(),
        &[],
        &Nominated::new(),
    )
    .unwrap();
    // b's batch pod is the cheaper victim; the unrelated pod beside it is given back.
    assert_eq!(c.node, "b");
    let names: Vec<_> = c
        .victims
        .iter()
        .map(|v| v.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["b-batch"]);

    // Symmetric: an existing pod's anti-affinity keeps the incoming pod out; preempting
    // that pod clears it.
    let guard = with_priority(
        pod(
            "guard",
            json!({"app": "guard"}),
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}},
                 "topologyKey": "kubernetes.io/hostname"}]}}}),
        ),
        10,
    );
    let nodes = [info(node("a", "z1", "4", json!({})), vec![guard])];
    let web = with_priority(pod("web", json!({"app": "web"}), json!({})), 1000);
    let diag = diagnose(&web, &nodes);
    assert_eq!(
        diag.message(),
        "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
    );
    let c = preempt::select(
        &web,
        &nodes,
        &diag,
        &default_filters(),
        &[],
        &Nominated::new(),
    )
    .unwrap();
    assert_eq!(c.victims[0].metadata.name.as_deref(), Some("guard"));
}

#[test]
fn preemption_clears_topology_spread_conflicts() {
    // maxSkew 1 over nodes; resources are plentiful, only the skew stands in the way.
    let web = |n: &str, prio: i32| cpu_pod(n, "100m", prio, json!({"app": "web"}));
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let nodes = [
        info(node("a", "z1", "4", json!({})), vec![web("a-web", 500)]),
        info(
            node("b", "z2", "4", json!({})),
            vec![web("b-web1", 10), web("b-web2", 10)],
        ),
        info(
            node(
                "c",
                "z3",
                "4",
                json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}),
            ),
            vec![],
        ),
    ];
    // Counts per node: a 1, b 2, c 0 (c counts: taints are ignored by default) ->
    // a: 1+1-0 = 2 > 1, b: 2+1-0 = 3 > 1, c: tainted.
    let new = with_priority(pod("new", json!({"app": "web"}), spread), 1000);
    let diag = diagnose(&new, &nodes);
    assert_eq!(
        diag.message(),
        "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 node(s) didn't match pod topology spread constraints."
    );
    // Removing a-web makes a's count 0 and the minimum 0: 0+1-0 = 1 fits. On b both web pods
    // would have to go (2 victims); a needs one, but of priority 500 against b's 10s:
    // upstream's order picks the lowest highest-victim priority first, so b with 2 victims.
    let c = preempt::select(
        &new,
        &nodes,
        &diag,
        &default_filters(),
        &[],
        &Nominated::new(),
    )
    .unwrap();
    assert_eq!(c.node, "b");
    let mut names: Vec<_> = c
        .victims
        .iter()
        .map(|v| v.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b-web1", "b-web2"]);
    // With only a and c, a's single web pod is the victim.
    let two = [nodes[0].clone(), nodes[2].clone()];
    let diag = diagnose(&new, &two);
    let c = preempt::select(
        &new,
        &two,
        &diag,
        &default_filters(),
        &[],
        &Nominated::new(),
    )
    .unwrap();
    assert_eq!((c.node.as_str(), c.victims.len()), ("a", 1));
}

#[test]
fn nominated_pods_count_in_pod_affinity_and_topology_spread() {
    // Node a is promised to a pod waiting for its victims to leave; b is free.
    let nodes = [
        info(node("a", "z1", "4", json!({})), vec![]),
        info(node("b", "z2", "4", json!({})), vec![]),
    ];
    let decide_with = |p: &Pod, waiting: Pod| {
        let nominated: Nominated = [("a".to_string(), vec![Arc::new(waiting)])].into();
        match place_from(
            p,
            &nodes,
            &default_filters(),
            &default_scores(),
            0,
            &nominated,
        )
        .0
        {
            Placement::Node(n) => Ok(n),
            Placement::Unschedulable(d) => Err(d.message()),
        }
    };
    let anti = |app: &str| {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}},
             "topologyKey": "kubernetes.io/hostname"}]}}})
    };
    // Without nominations both nodes are equal and a sorts first.
    assert_eq!(
        decide(&pod("web", json!({"app": "web"}), json!({})), &nodes),
        Ok("a".into())
    );

    // The waiting pod's anti-affinity keeps web pods off a.
    let guard = with_priority(pod("guard", json!({"app": "guard"}), anti("web")), 1000);
    let web = pod("web", json!({"app": "web"}), json!({}));
    assert_eq!(decide_with(&web, guard.clone()), Ok("b".into()));
    // ... as the only node it is refused for that reason.
    let only_a = [nodes[0].clone()];
    let nominated: Nominated = [("a".to_string(), vec![Arc::new(guard)])].into();
    let Placement::Unschedulable(d) = place_from(
        &web,
        &only_a,
        &default_filters(),
        &default_scores(),
        0,
        &nominated,
    )
    .0
    else {
        panic!("web placed beside a nominated pod that refuses it");
    };
    assert_eq!(
        d.message(),
        "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
    );

    // The incoming pod's own anti-affinity sees the waiting pod.
    let batch = with_priority(pod("batch", json!({"app": "batch"}), json!({})), 1000);
    let db = pod("db", json!({"app": "db"}), anti("batch"));
    assert_eq!(decide_with(&db, batch), Ok("b".into()));

    // Topology spread (maxSkew 1 over nodes): the waiting web pod makes a's count 1, so a
    // second one on a would skew 2.
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let waiting_web = with_priority(pod("web-0", json!({"app": "web"}), json!({})), 1000);
    let web1 = pod("web-1", json!({"app": "web"}), spread);
    assert_eq!(decide_with(&web1, waiting_web), Ok("b".into()));
}
