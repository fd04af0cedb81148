//! Objects encoded with the k8s-pb prost types (as client-go encodes them) decode to exactly the
//! JSON that the k8s-openapi form of the same object serializes to.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::coordination::v1 as coordination;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_pb::api::apps::v1 as pbapps;
use k8s_pb::api::coordination::v1 as pbcoordination;
use k8s_pb::api::core::v1 as pbcore;
use k8s_pb::apimachinery::pkg::api::resource::Quantity as PbQuantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pbmeta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString as PbIntOrString;
use prost::Message as _;
use serde_json::{Value, json};

/// A Kubernetes protobuf body: magic, then the `runtime.Unknown` envelope around the object.
fn body(api_version: &str, kind: &str, obj: &impl prost::Message) -> Vec<u8> {
    let env = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(obj.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = bosun_proto::MAGIC.to_vec();
    out.extend(env.encode_to_vec());
    out
}

/// Decodes `pb` and checks that the JSON is exactly `expected`'s JSON (apiVersion/kind included)
/// and deserializes back to `expected`.
fn check<T>(pb: &impl prost::Message, expected: &T) -> Value
where
    T: k8s_openapi::Resource
        + serde::Serialize
        + serde::de::DeserializeOwned
        + PartialEq
        + std::fmt::Debug,
{
    let decoded = bosun_proto::decode(&body(T::API_VERSION, T::KIND, pb)).expect("decode");
    let want = serde_json::to_value(expected).unwrap();
    assert_eq!(decoded, want, "decoded JSON differs");
    let typed: T = serde_json::from_value(decoded.clone()).expect("decoded JSON deserializes");
    assert_eq!(&typed, expected);
    decoded
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ts(secs: i64, nanos: i32) -> jiff::Timestamp {
    jiff::Timestamp::new(secs, nanos).unwrap()
}

fn pb_meta(name: &str, ns: &str) -> pbmeta::ObjectMeta {
    pbmeta::ObjectMeta {
        name: s(name),
        namespace: s(ns),
        labels: labels(&[("app", name)]),
        annotations: labels(&[("note", "x=y")]),
        creation_timestamp: Some(pbmeta::Time {
            seconds: Some(1_767_225_600),
            nanos: Some(0),
        }),
        ..Default::default()
    }
}

fn oa_meta(name: &str, ns: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: s(name),
        namespace: s(ns),
        labels: Some(labels(&[("app", name)])),
        annotations: Some(labels(&[("note", "x=y")])),
        creation_timestamp: Some(meta::Time(ts(1_767_225_600, 0))),
        ..Default::default()
    }
}

fn pb_qty(q: &str) -> PbQuantity {
    PbQuantity { string: s(q) }
}

fn pb_int(i: i32) -> PbIntOrString {
    PbIntOrString {
        r#type: Some(0),
        int_val: Some(i),
        str_val: None,
    }
}

fn pb_str(v: &str) -> PbIntOrString {
    PbIntOrString {
        r#type: Some(1),
        int_val: None,
        str_val: s(v),
    }
}

#[test]
fn deployment() {
    let pb_container = pbcore::Container {
        name: s("web"),
        image: s("nginx:1.27"),
        command: vec!["/bin/sh".into(), "-c".into()],
        args: vec!["exec nginx".into()],
        ports: vec![pbcore::ContainerPort {
            name: s("http"),
            container_port: Some(8080),
            protocol: s("TCP"),
            ..Default::default()
        }],
        env: vec![
            pbcore::EnvVar {
                name: s("MODE"),
                value: s("prod"),
                value_from: None,
            },
            pbcore::EnvVar {
                name: s("LEVEL"),
                value: None,
                value_from: Some(pbcore::EnvVarSource {
                    config_map_key_ref: Some(pbcore::ConfigMapKeySelector {
                        local_object_reference: Some(pbcore::LocalObjectReference {
                            name: s("cfg"),
                        }),
                        key: s("level"),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
        ],
        resources: Some(pbcore::ResourceRequirements {
            limits: [
                ("cpu".to_string(), pb_qty("500m")),
                ("memory".to_string(), pb_qty("128Mi")),
            ]
            .into(),
            requests: [("cpu".to_string(), pb_qty("250m"))].into(),
            ..Default::default()
        }),
        liveness_probe: Some(pbcore::Probe {
            handler: Some(pbcore::ProbeHandler {
                http_get: Some(pbcore::HttpGetAction {
                    path: s("/healthz"),
                    port: Some(pb_str("http")),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            initial_delay_seconds: Some(0),
            period_seconds: Some(10),
            ..Default::default()
        }),
        readiness_probe: Some(pbcore::Probe {
            handler: Some(pbcore::ProbeHandler {
                tcp_socket: Some(pbcore::TcpSocketAction {
                    port: Some(pb_int(8080)),
                    host: None,
                }),
                ..Default::default()
            }),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        volume_mounts: vec![pbcore::VolumeMount {
            name: s("conf"),
            mount_path: s("/etc/web"),
            read_only: Some(true),
            ..Default::default()
        }],
        image_pull_policy: s("IfNotPresent"),
        ..Default::default()
    };
    let pb = pbapps::Deployment {
        metadata: Some(pb_meta("web", "prod")),
        spec: Some(pbapps::DeploymentSpec {
            replicas: Some(3),
            revision_history_limit: Some(0),
            selector: Some(pbmeta::LabelSelector {
                match_labels: labels(&[("app", "web")]),
                match_expressions: vec![pbmeta::LabelSelectorRequirement {
                    key: s("tier"),
                    operator: s("In"),
                    values: vec!["a".into(), "b".into()],
                }],
            }),
            strategy: Some(pbapps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(pbapps::RollingUpdateDeployment {
                    max_unavailable: Some(pb_str("25%")),
                    max_surge: Some(pb_int(1)),
                }),
            }),
            template: Some(pbcore::PodTemplateSpec {
                metadata: Some(pbmeta::ObjectMeta {
                    labels: labels(&[("app", "web")]),
                    ..Default::default()
                }),
                spec: Some(pbcore::PodSpec {
                    containers: vec![pb_container],
                    volumes: vec![
                        pbcore::Volume {
                            name: s("conf"),
                            volume_source: Some(pbcore::VolumeSource {
                                config_map: Some(pbcore::ConfigMapVolumeSource {
                                    local_object_reference: Some(pbcore::LocalObjectReference {
                                        name: s("cfg"),
                                    }),
                                    default_mode: Some(0o644),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                        },
                        pbcore::Volume {
                            name: s("scratch"),
                            volume_source: Some(pbcore::VolumeSource {
                                empty_dir: Some(pbcore::EmptyDirVolumeSource {
                                    medium: None,
                                    size_limit: Some(pb_qty("1Gi")),
                                }),
                                ..Default::default()
                            }),
                        },
                    ],
                    termination_grace_period_seconds: Some(0),
                    runtime_class_name: s("process"),
                    ..Default::default()
                }),
            }),
            paused: Some(false),
            ..Default::default()
        }),
        status: None,
    };

    let container = core::Container {
        name: "web".into(),
        image: s("nginx:1.27"),
        command: Some(vec!["/bin/sh".into(), "-c".into()]),
        args: Some(vec!["exec nginx".into()]),
        ports: Some(vec![core::ContainerPort {
            name: s("http"),
            container_port: 8080,
            protocol: s("TCP"),
            ..Default::default()
        }]),
        env: Some(vec![
            core::EnvVar {
                name: "MODE".into(),
                value: s("prod"),
                value_from: None,
            },
            core::EnvVar {
                name: "LEVEL".into(),
                value: None,
                value_from: Some(core::EnvVarSource {
                    config_map_key_ref: Some(core::ConfigMapKeySelector {
                        name: "cfg".into(),
                        key: "level".into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
        ]),
        resources: Some(core::ResourceRequirements {
            limits: Some(
                [
                    ("cpu".to_string(), Quantity("500m".into())),
                    ("memory".to_string(), Quantity("128Mi".into())),
                ]
                .into(),
            ),
            requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
            ..Default::default()
        }),
        liveness_probe: Some(core::Probe {
            http_get: Some(core::HTTPGetAction {
                path: s("/healthz"),
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            initial_delay_seconds: Some(0),
            period_seconds: Some(10),
            ..Default::default()
        }),
        readiness_probe: Some(core::Probe {
            tcp_socket: Some(core::TCPSocketAction {
                port: IntOrString::Int(8080),
                host: None,
            }),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        volume_mounts: Some(vec![core::VolumeMount {
            name: "conf".into(),
            mount_path: "/etc/web".into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        image_pull_policy: s("IfNotPresent"),
        ..Default::default()
    };
    let expected = apps::Deployment {
        metadata: oa_meta("web", "prod"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(3),
            revision_history_limit: Some(0),
            selector: meta::LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                match_expressions: Some(vec![meta::LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                }]),
            },
            strategy: Some(apps::DeploymentStrategy {
                type_: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::String("25%".into())),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![
                        core::Volume {
                            name: "conf".into(),
                            config_map: Some(core::ConfigMapVolumeSource {
                                name: "cfg".into(),
                                default_mode: Some(0o644),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        core::Volume {
                            name: "scratch".into(),
                            empty_dir: Some(core::EmptyDirVolumeSource {
                                medium: None,
                                size_limit: Some(Quantity("1Gi".into())),
                            }),
                            ..Default::default()
                        },
                    ]),
                    termination_grace_period_seconds: Some(0),
                    runtime_class_name: s("process"),
                    ..Default::default()
                }),
            },
            paused: Some(false),
            ..Default::default()
        }),
        status: None,
    };
    let json = check(&pb, &expected);
    // The JSON shapes themselves, independent of k8s-openapi's leniency.
    let ru = &json["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(ru["maxSurge"], json!(1));
    assert_eq!(ru["maxUnavailable"], json!("25%"));
    let c = &json["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], json!("http"));
    assert_eq!(c["resources"]["limits"]["memory"], json!("128Mi"));
    assert_eq!(
        json["metadata"]["creationTimestamp"],
        json!("2026-01-01T00:00:00Z")
    );
    assert_eq!(json["spec"]["revisionHistoryLimit"], json!(0));
}

#[test]
fn namespace() {
    let pb = pbcore::Namespace {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("dev"),
            ..Default::default()
        }),
        spec: Some(pbcore::NamespaceSpec {
            finalizers: vec!["kubernetes".into()],
        }),
        status: Some(pbcore::NamespaceStatus::default()),
    };
    let expected = core::Namespace {
        metadata: meta::ObjectMeta {
            name: s("dev"),
            ..Default::default()
        },
        spec: Some(core::NamespaceSpec {
            finalizers: Some(vec!["kubernetes".into()]),
        }),
        status: Some(core::NamespaceStatus::default()),
    };
    check(&pb, &expected);
}

#[test]
fn configmap_with_binary_data() {
    let binary: Vec<u8> = vec![0, 1, 2, 0xfe, 0xff];
    let pb = pbcore::ConfigMap {
        metadata: Some(pb_meta("cfg", "default")),
        data: labels(&[("a", "b"), ("empty", "")]),
        binary_data: [("blob".to_string(), binary.clone())].into(),
        immutable: Some(false),
    };
    let expected = core::ConfigMap {
        metadata: oa_meta("cfg", "default"),
        data: Some(labels(&[("a", "b"), ("empty", "")])),
        binary_data: Some([("blob".to_string(), k8s_openapi::ByteString(binary))].into()),
        immutable: Some(false),
    };
    let json = check(&pb, &expected);
    assert_eq!(json["binaryData"]["blob"], json!("AAEC/v8="));
}

#[test]
fn secret() {
    let pb = pbcore::Secret {
        metadata: Some(pb_meta("creds", "default")),
        data: [("password".to_string(), b"s3cr3t".to_vec())].into(),
        string_data: labels(&[("user", "admin")]),
        r#type: s("Opaque"),
        immutable: None,
    };
    let expected = core::Secret {
        metadata: oa_meta("creds", "default"),
        data: Some(
            [(
                "password".to_string(),
                k8s_openapi::ByteString(b"s3cr3t".to_vec()),
            )]
            .into(),
        ),
        string_data: Some(labels(&[("user", "admin")])),
        type_: s("Opaque"),
        immutable: None,
    };
    check(&pb, &expected);
}

#[test]
fn service_with_target_port() {
    let pb = pbcore::Service {
        metadata: Some(pb_meta("web", "default")),
        spec: Some(pbcore::ServiceSpec {
            selector: labels(&[("app", "web")]),
            ports: vec![
                pbcore::ServicePort {
                    name: s("http"),
                    protocol: s("TCP"),
                    port: Some(80),
                    target_port: Some(pb_int(8080)),
                    ..Default::default()
                },
                pbcore::ServicePort {
                    name: s("admin"),
                    port: Some(9000),
                    target_port: Some(pb_str("admin")),
                    node_port: Some(30900),
                    ..Default::default()
                },
            ],
            r#type: s("NodePort"),
            cluster_ips: vec!["10.0.0.10".into()],
            ..Default::default()
        }),
        status: None,
    };
    let expected = core::Service {
        metadata: oa_meta("web", "default"),
        spec: Some(core::ServiceSpec {
            selector: Some(labels(&[("app", "web")])),
            ports: Some(vec![
                core::ServicePort {
                    name: s("http"),
                    protocol: s("TCP"),
                    port: 80,
                    target_port: Some(IntOrString::Int(8080)),
                    ..Default::default()
                },
                core::ServicePort {
                    name: s("admin"),
                    port: 9000,
                    target_port: Some(IntOrString::String("admin".into())),
                    node_port: Some(30900),
                    ..Default::default()
                },
            ]),
            type_: s("NodePort"),
            cluster_ips: Some(vec!["10.0.0.10".into()]),
            ..Default::default()
        }),
        status: None,
    };
    check(&pb, &expected);
}

#[test]
fn pod_with_status_and_owner() {
    let pb = pbcore::Pod {
        metadata: Some(pbmeta::ObjectMeta {
            owner_references: vec![pbmeta::OwnerReference {
                api_version: s("apps/v1"),
                kind: s("ReplicaSet"),
                name: s("web-1"),
                uid: s("1234"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            finalizers: vec!["bosun/x".into()],
            deletion_grace_period_seconds: Some(30),
            ..pb_meta("web-1-abc", "default")
        }),
        spec: Some(pbcore::PodSpec {
            containers: vec![pbcore::Container {
                name: s("app"),
                command: vec!["/bin/sleep".into(), "3600".into()],
                security_context: Some(pbcore::SecurityContext {
                    run_as_user: Some(0),
                    privileged: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_name: s("node-a"),
            restart_policy: s("Always"),
            host_network: Some(false),
            ..Default::default()
        }),
        status: Some(pbcore::PodStatus {
            phase: s("Running"),
            pod_ip: s("10.1.0.5"),
            pod_ips: vec![pbcore::PodIp { ip: s("10.1.0.5") }],
            start_time: Some(pbmeta::Time {
                seconds: Some(1_767_225_601),
                nanos: Some(0),
            }),
            conditions: vec![pbcore::PodCondition {
                r#type: s("Ready"),
                status: s("True"),
                last_transition_time: Some(pbmeta::Time {
                    seconds: Some(1_767_225_602),
                    nanos: Some(0),
                }),
                ..Default::default()
            }],
            container_statuses: vec![pbcore::ContainerStatus {
                name: s("app"),
                ready: Some(true),
                restart_count: Some(0),
                image: s(""),
                image_id: s(""),
                state: Some(pbcore::ContainerState {
                    running: Some(pbcore::ContainerStateRunning {
                        started_at: Some(pbmeta::Time {
                            seconds: Some(1_767_225_601),
                            nanos: Some(0),
                        }),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    let expected = core::Pod {
        metadata: meta::ObjectMeta {
            owner_references: Some(vec![meta::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web-1".into(),
                uid: "1234".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            finalizers: Some(vec!["bosun/x".into()]),
            deletion_grace_period_seconds: Some(30),
            ..oa_meta("web-1-abc", "default")
        },
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: "app".into(),
                command: Some(vec!["/bin/sleep".into(), "3600".into()]),
                security_context: Some(core::SecurityContext {
                    run_as_user: Some(0),
                    privileged: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_name: s("node-a"),
            restart_policy: s("Always"),
            host_network: Some(false),
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: s("Running"),
            pod_ip: s("10.1.0.5"),
            pod_ips: Some(vec![core::PodIP {
                ip: "10.1.0.5".into(),
            }]),
            start_time: Some(meta::Time(ts(1_767_225_601, 0))),
            conditions: Some(vec![core::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(meta::Time(ts(1_767_225_602, 0))),
                ..Default::default()
            }]),
            container_statuses: Some(vec![core::ContainerStatus {
                name: "app".into(),
                ready: true,
                restart_count: 0,
                // Required JSON fields keep their empty value.
                image: String::new(),
                image_id: String::new(),
                state: Some(core::ContainerState {
                    running: Some(core::ContainerStateRunning {
                        started_at: Some(meta::Time(ts(1_767_225_601, 0))),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    check(&pb, &expected);
}

#[test]
fn lease_with_micro_time() {
    let pb = pbcoordination::Lease {
        metadata: Some(pb_meta("leader", "kube-system")),
        spec: Some(pbcoordination::LeaseSpec {
            holder_identity: s("node-a"),
            lease_duration_seconds: Some(15),
            acquire_time: Some(pbmeta::MicroTime {
                seconds: Some(1_767_225_600),
                nanos: Some(123_456_000),
            }),
            renew_time: Some(pbmeta::MicroTime {
                seconds: Some(1_767_225_610),
                nanos: Some(0),
            }),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    let expected = coordination::Lease {
        metadata: oa_meta("leader", "kube-system"),
        spec: Some(coordination::LeaseSpec {
            holder_identity: s("node-a"),
            lease_duration_seconds: Some(15),
            acquire_time: Some(meta::MicroTime(ts(1_767_225_600, 123_456_000))),
            renew_time: Some(meta::MicroTime(ts(1_767_225_610, 0))),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    let json = check(&pb, &expected);
    assert_eq!(
        json["spec"]["acquireTime"],
        json!("2026-01-01T00:00:00.123456Z")
    );
    assert_eq!(
        json["spec"]["renewTime"],
        json!("2026-01-01T00:00:10.000000Z")
    );
}

#[test]
fn binding() {
    let pb = pbcore::Binding {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("web-1-abc"),
            namespace: s("default"),
            ..Default::default()
        }),
        target: Some(pbcore::ObjectReference {
            kind: s("Node"),
            name: s("node-a"),
            ..Default::default()
        }),
    };
    let expected = core::Binding {
        metadata: meta::ObjectMeta {
            name: s("web-1-abc"),
            namespace: s("default"),
            ..Default::default()
        },
        target: core::ObjectReference {
            kind: s("Node"),
            name: s("node-a"),
            ..Default::default()
        },
    };
    check(&pb, &expected);
}

/// DeleteOptions and Scale are not k8s-openapi resources: compare JSON directly.
#[test]
fn delete_options_and_scale() {
    let pb = pbmeta::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: s("Foreground"),
        preconditions: Some(pbmeta::Preconditions {
            uid: s("1234"),
            resource_version: None,
        }),
        dry_run: vec!["All".into()],
        ..Default::default()
    };
    let got = bosun_proto::decode(&body("meta.k8s.io/v1", "DeleteOptions", &pb)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "propagationPolicy": "Foreground",
            "preconditions": {"uid": "1234"},
            "dryRun": ["All"],
        })
    );
    let typed: meta::DeleteOptions = serde_json::from_value(got).unwrap();
    assert_eq!(typed.grace_period_seconds, Some(0));

    let pb = k8s_pb::api::autoscaling::v1::Scale {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("web"),
            namespace: s("prod"),
            ..Default::default()
        }),
        spec: Some(k8s_pb::api::autoscaling::v1::ScaleSpec { replicas: Some(0) }),
        status: Some(k8s_pb::api::autoscaling::v1::ScaleStatus {
            replicas: Some(2),
            selector: s("app=web"),
        }),
    };
    let got = bosun_proto::decode(&body("autoscaling/v1", "Scale", &pb)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"replicas": 0},
            "status": {"replicas": 2, "selector": "app=web"},
        })
    );
}

/// Go writes every non-pointer field: empty strings and zero times are on the wire but absent in JSON.
#[test]
fn go_zero_values_are_omitted_like_json_omitempty() {
    let pb = pbcore::ConfigMap {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("x"),
            generate_name: s(""),
            namespace: s(""),
            self_link: s(""),
            uid: s(""),
            resource_version: s(""),
            generation: Some(0),
            creation_timestamp: Some(pbmeta::Time::default()),
            ..Default::default()
        }),
        data: labels(&[("a", "b")]),
        ..Default::default()
    };
    let got = bosun_proto::decode(&body("v1", "ConfigMap", &pb)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "generation": 0},
            "data": {"a": "b"},
        })
    );
}

#[test]
fn bad_bodies_are_rejected_with_a_reason() {
    let err = bosun_proto::decode(b"\x0a\x02{}").unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");

    let ns = pbcore::Namespace::default();
    let err = bosun_proto::decode(&body("example.com/v1", "Widget", &ns)).unwrap_err();
    assert!(err.to_string().contains("Widget"), "{err}");

    let err = bosun_proto::decode(&body("v1", "", &ns)).unwrap_err();
    assert!(err.to_string().contains("kind"), "{err}");

    // Pod whose metadata (field 1) claims 100 bytes but has 2.
    let mut bad = body("v1", "Pod", &pbcore::Pod::default());
    let env = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s("v1"),
            kind: s("Pod"),
        }),
        raw: Some(vec![0x0a, 100, 0x0a, 0x00]),
        ..Default::default()
    };
    bad.truncate(4);
    bad.extend(env.encode_to_vec());
    let err = bosun_proto::decode(&bad).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    // metadata.name with invalid UTF-8, reported with its path.
    let env = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s("v1"),
            kind: s("Pod"),
        }),
        raw: Some(vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe]),
        ..Default::default()
    };
    let mut bad = bosun_proto::MAGIC.to_vec();
    bad.extend(env.encode_to_vec());
    let err = bosun_proto::decode(&bad).unwrap_err();
    assert!(err.to_string().contains("Pod.metadata.name"), "{err}");
    assert!(err.to_string().contains("UTF-8"), "{err}");

    // Compressed envelopes are not produced by kubectl; refuse rather than misread them.
    let env = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s("v1"),
            kind: s("Pod"),
        }),
        raw: Some(Vec::new()),
        content_encoding: s("gzip"),
        ..Default::default()
    };
    let mut bad = bosun_proto::MAGIC.to_vec();
    bad.extend(env.encode_to_vec());
    let err = bosun_proto::decode(&bad).unwrap_err();
    assert!(err.to_string().contains("gzip"), "{err}");
}
