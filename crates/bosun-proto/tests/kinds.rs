//! Every kind bosun serves decodes, and the ones not covered in `decode.rs` decode to their exact
//! JSON form; extension points (FieldsV1, RawExtension, JSONSchemaProps) render as their JSON.

use bosun_api::Registry;
use k8s_pb::api::apps::v1 as pbapps;
use k8s_pb::api::core::v1 as pbcore;
use k8s_pb::api::discovery::v1 as pbdiscovery;
use k8s_pb::api::networking::v1 as pbnet;
use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as pbext;
use k8s_pb::apimachinery::pkg::api::resource::Quantity as PbQuantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pbmeta;
use k8s_pb::apimachinery::pkg::runtime::{RawExtension, TypeMeta, Unknown};
use prost::Message as _;
use serde_json::{Value, json};

fn body(api_version: &str, kind: &str, obj: &impl prost::Message) -> Vec<u8> {
    let env = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(obj.encode_to_vec()),
        ..Default::default()
    };
    let mut out = bosun_proto::MAGIC.to_vec();
    out.extend(env.encode_to_vec());
    out
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn time(secs: i64) -> Option<pbmeta::Time> {
    Some(pbmeta::Time {
        seconds: Some(secs),
        nanos: Some(0),
    })
}

fn meta(name: &str) -> Option<pbmeta::ObjectMeta> {
    Some(pbmeta::ObjectMeta {
        name: s(name),
        namespace: s("default"),
        ..Default::default()
    })
}

/// Decodes, checks the exact JSON and that bosun's typed round trip for the kind accepts it
/// unchanged.
fn check(api_version: &str, kind: &str, pb: &impl prost::Message, want: Value) {
    let got = bosun_proto::decode(&body(api_version, kind, pb)).unwrap();
    assert_eq!(got, want, "{kind}");
    let info = Registry::builtin()
        .by_kind(api_version, kind)
        .unwrap_or_else(|| panic!("{kind} is not a bosun kind"));
    let typed = (info.roundtrip)(&got).unwrap_or_else(|e| panic!("{kind}: {e}"));
    assert_eq!(typed, want, "{kind} typed round trip");
}

/// API groups bosun serves that have no protobuf encoding: the Gateway API is defined by CRDs
/// upstream, so clients always send it as JSON.
const JSON_ONLY_GROUPS: &[&str] = &["gateway.networking.k8s.io"];

#[test]
fn every_builtin_kind_decodes() {
    let pb = pbcore::Namespace {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("x"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut decoded = 0;
    for k in &Registry::builtin().kinds {
        // Every kind's field 1 is its ObjectMeta, so a Namespace's bytes are a valid minimal object.
        let got = bosun_proto::decode(&body(k.api_version, k.kind, &pb));
        if JSON_ONLY_GROUPS.contains(&k.group) {
            let err = got.unwrap_err();
            assert!(err.to_string().contains("no protobuf schema"), "{err}");
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{}: {e}", k.kind));
        assert_eq!(
            got,
            json!({"apiVersion": k.api_version, "kind": k.kind, "metadata": {"name": "x"}}),
            "{}",
            k.kind
        );
        decoded += 1;
    }
    assert!(decoded >= 14, "only {decoded} kinds decoded");
}

#[test]
fn event() {
    let pb = pbcore::Event {
        metadata: meta("web.1"),
        involved_object: Some(pbcore::ObjectReference {
            kind: s("Pod"),
            namespace: s("default"),
            name: s("web"),
            uid: s("u1"),
            api_version: s("v1"),
            field_path: s("spec.containers{app}"),
            ..Default::default()
        }),
        reason: s("Started"),
        message: s("Started container app"),
        source: Some(pbcore::EventSource {
            component: s("bosun-agent"),
            host: s("node-a"),
        }),
        first_timestamp: time(1_767_225_600),
        last_timestamp: time(1_767_225_660),
        count: Some(2),
        r#type: s("Normal"),
        event_time: Some(pbmeta::MicroTime {
            seconds: Some(1_767_225_600),
            nanos: Some(5_000),
        }),
        series: Some(pbcore::EventSeries {
            count: Some(2),
            last_observed_time: Some(pbmeta::MicroTime {
                seconds: Some(1_767_225_660),
                nanos: Some(0),
            }),
        }),
        reporting_component: s("bosun-agent"),
        reporting_instance: s("node-a"),
        ..Default::default()
    };
    check(
        "v1",
        "Event",
        &pb,
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web", "uid": "u1",
                "apiVersion": "v1", "fieldPath": "spec.containers{app}"},
            "reason": "Started", "message": "Started container app",
            "source": {"component": "bosun-agent", "host": "node-a"},
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:01:00Z",
            "count": 2, "type": "Normal",
            "eventTime": "2026-01-01T00:00:00.000005Z",
            "series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"},
            "reportingComponent": "bosun-agent", "reportingInstance": "node-a",
        }),
    );
}

#[test]
fn node() {
    let q = |v: &str| PbQuantity { string: s(v) };
    let pb = pbcore::Node {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("node-a"),
            ..Default::default()
        }),
        spec: Some(pbcore::NodeSpec {
            pod_cidr: s("10.1.0.0/24"),
            pod_cid_rs: vec!["10.1.0.0/24".into()],
            unschedulable: Some(true),
            taints: vec![pbcore::Taint {
                key: s("node.kubernetes.io/unschedulable"),
                effect: s("NoSchedule"),
                time_added: time(1_767_225_600),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(pbcore::NodeStatus {
            capacity: [
                ("cpu".to_string(), q("2")),
                ("memory".to_string(), q("4Gi")),
            ]
            .into(),
            allocatable: [("pods".to_string(), q("110"))].into(),
            conditions: vec![pbcore::NodeCondition {
                r#type: s("Ready"),
                status: s("True"),
                last_heartbeat_time: time(1_767_225_600),
                reason: s("AgentReady"),
                ..Default::default()
            }],
            addresses: vec![pbcore::NodeAddress {
                r#type: s("InternalIP"),
                address: s("192.168.1.10"),
            }],
            daemon_endpoints: Some(pbcore::NodeDaemonEndpoints {
                kubelet_endpoint: Some(pbcore::DaemonEndpoint { port: Some(10250) }),
            }),
            node_info: Some(pbcore::NodeSystemInfo {
                machine_id: s("m"),
                kernel_version: s("6.1"),
                os_image: s("Linux"),
                container_runtime_version: s("process://1"),
                kubelet_version: s("v1.33.0"),
                operating_system: s("linux"),
                architecture: s("amd64"),
                system_uuid: s("s"),
                boot_id: s("b"),
                kube_proxy_version: s(""),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    check(
        "v1",
        "Node",
        &pb,
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a"},
            "spec": {"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24"], "unschedulable": true,
                "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule",
                    "timeAdded": "2026-01-01T00:00:00Z"}]},
            "status": {
                "capacity": {"cpu": "2", "memory": "4Gi"},
                "allocatable": {"pods": "110"},
                "conditions": [{"type": "Ready", "status": "True",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z", "reason": "AgentReady"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                // NodeSystemInfo's strings are required in JSON: empty ones stay.
                "nodeInfo": {"machineID": "m", "kernelVersion": "6.1", "osImage": "Linux",
                    "containerRuntimeVersion": "process://1", "kubeletVersion": "v1.33.0",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
                    "systemUUID": "s", "bootID": "b"},
            },
        }),
    );
}

#[test]
fn endpoints_and_endpoint_slice() {
    let target = || pbcore::ObjectReference {
        kind: s("Pod"),
        name: s("web-1"),
        namespace: s("default"),
        ..Default::default()
    };
    let pb = pbcore::Endpoints {
        metadata: meta("web"),
        subsets: vec![pbcore::EndpointSubset {
            addresses: vec![pbcore::EndpointAddress {
                ip: s("10.1.0.5"),
                node_name: s("node-a"),
                target_ref: Some(target()),
                ..Default::default()
            }],
            not_ready_addresses: vec![pbcore::EndpointAddress {
                ip: s("10.1.0.6"),
                ..Default::default()
            }],
            ports: vec![pbcore::EndpointPort {
                name: s("http"),
                port: Some(8080),
                protocol: s("TCP"),
                ..Default::default()
            }],
        }],
    };
    check(
        "v1",
        "Endpoints",
        &pb,
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.1.0.5", "nodeName": "node-a",
                    "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}}],
                "notReadyAddresses": [{"ip": "10.1.0.6"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }],
        }),
    );

    let pb = pbdiscovery::EndpointSlice {
        metadata: meta("web-abc"),
        address_type: s("IPv4"),
        endpoints: vec![pbdiscovery::Endpoint {
            addresses: vec!["10.1.0.5".into()],
            conditions: Some(pbdiscovery::EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: s("node-a"),
            target_ref: Some(target()),
            ..Default::default()
        }],
        ports: vec![pbdiscovery::EndpointPort {
            name: s("http"),
            protocol: s("TCP"),
            port: Some(8080),
            app_protocol: None,
        }],
    };
    check(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        &pb,
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.5"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-a",
                "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}}],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        }),
    );
}

#[test]
fn replica_set() {
    let pb = pbapps::ReplicaSet {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("web-5d4"),
            namespace: s("default"),
            owner_references: vec![pbmeta::OwnerReference {
                api_version: s("apps/v1"),
                kind: s("Deployment"),
                name: s("web"),
                uid: s("u"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            annotations: [(
                "deployment.kubernetes.io/revision".to_string(),
                "1".to_string(),
            )]
            .into(),
            ..Default::default()
        }),
        spec: Some(pbapps::ReplicaSetSpec {
            replicas: Some(2),
            min_ready_seconds: Some(0),
            selector: Some(pbmeta::LabelSelector {
                match_labels: [("pod-template-hash".to_string(), "5d4".to_string())].into(),
                ..Default::default()
            }),
            template: Some(pbcore::PodTemplateSpec {
                metadata: None,
                spec: Some(pbcore::PodSpec {
                    containers: vec![pbcore::Container {
                        name: s("app"),
                        command: vec!["/bin/sleep".into(), "infinity".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
        }),
        status: Some(pbapps::ReplicaSetStatus {
            replicas: Some(2),
            ready_replicas: Some(1),
            observed_generation: Some(3),
            ..Default::default()
        }),
    };
    check(
        "apps/v1",
        "ReplicaSet",
        &pb,
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d4", "namespace": "default",
                "annotations": {"deployment.kubernetes.io/revision": "1"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                    "uid": "u", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"replicas": 2, "minReadySeconds": 0,
                "selector": {"matchLabels": {"pod-template-hash": "5d4"}},
                "template": {"spec": {"containers": [{"name": "app",
                    "command": ["/bin/sleep", "infinity"]}]}}},
            "status": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 3},
        }),
    );
}

#[test]
fn ingress_and_class() {
    let backend = |name: &str, port: pbnet::ServiceBackendPort| pbnet::IngressBackend {
        service: Some(pbnet::IngressServiceBackend {
            name: s(name),
            port: Some(port),
        }),
        resource: None,
    };
    let pb = pbnet::Ingress {
        metadata: meta("ing"),
        spec: Some(pbnet::IngressSpec {
            ingress_class_name: s("bosun"),
            default_backend: Some(backend(
                "fallback",
                pbnet::ServiceBackendPort {
                    name: s("http"),
                    number: None,
                },
            )),
            tls: vec![pbnet::IngressTls {
                hosts: vec!["example.com".into()],
                secret_name: s("tls"),
            }],
            rules: vec![pbnet::IngressRule {
                host: s("example.com"),
                ingress_rule_value: Some(pbnet::IngressRuleValue {
                    http: Some(pbnet::HttpIngressRuleValue {
                        paths: vec![pbnet::HttpIngressPath {
                            path: s("/api"),
                            path_type: s("Prefix"),
                            backend: Some(backend(
                                "api",
                                pbnet::ServiceBackendPort {
                                    name: None,
                                    number: Some(8080),
                                },
                            )),
                        }],
                    }),
                }),
            }],
        }),
        status: None,
    };
    check(
        "networking.k8s.io/v1",
        "Ingress",
        &pb,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "ing", "namespace": "default"},
            "spec": {
                "ingressClassName": "bosun",
                "defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
                "tls": [{"hosts": ["example.com"], "secretName": "tls"}],
                "rules": [{"host": "example.com", "http": {"paths": [{"path": "/api",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": "api", "port": {"number": 8080}}}}]}}],
            },
        }),
    );

    let pb = pbnet::IngressClass {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("bosun"),
            ..Default::default()
        }),
        spec: Some(pbnet::IngressClassSpec {
            controller: s("bosun.dev/ingress"),
            parameters: None,
        }),
    };
    check(
        "networking.k8s.io/v1",
        "IngressClass",
        &pb,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "bosun"},
            "spec": {"controller": "bosun.dev/ingress"},
        }),
    );
}

#[test]
fn managed_fields_and_raw_extension_are_embedded_json() {
    let pb = pbapps::ControllerRevision {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("rev"),
            managed_fields: vec![pbmeta::ManagedFieldsEntry {
                manager: s("kubectl"),
                operation: s("Update"),
                api_version: s("apps/v1"),
                time: time(1_767_225_600),
                fields_type: s("FieldsV1"),
                fields_v1: Some(pbmeta::FieldsV1 {
                    raw: Some(br#"{"f:data":{".":{}}}"#.to_vec()),
                }),
                subresource: None,
            }],
            ..Default::default()
        }),
        data: Some(RawExtension {
            raw: Some(br#"{"spec":{"replicas":1}}"#.to_vec()),
        }),
        revision: Some(1),
    };
    let got = bosun_proto::decode(&body("apps/v1", "ControllerRevision", &pb)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": "rev", "managedFields": [{"manager": "kubectl",
                "operation": "Update", "apiVersion": "apps/v1", "time": "2026-01-01T00:00:00Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {".": {}}}}]},
            "data": {"spec": {"replicas": 1}},
            "revision": 1,
        })
    );

    let mut bad = pb.clone();
    bad.data = Some(RawExtension {
        raw: Some(b"\xff not json".to_vec()),
    });
    let err = bosun_proto::decode(&body("apps/v1", "ControllerRevision", &bad)).unwrap_err();
    assert!(err.to_string().contains("data"), "{err}");
}

#[test]
fn crd_schema_unions() {
    let props = |ty: &str| pbext::JsonSchemaProps {
        r#type: s(ty),
        ..Default::default()
    };
    let mut root = props("object");
    root.properties = [
        (
            "spec".to_string(),
            pbext::JsonSchemaProps {
                x_kubernetes_preserve_unknown_fields: Some(true),
                additional_properties: Some(Box::new(pbext::JsonSchemaPropsOrBool {
                    allows: Some(true),
                    schema: None,
                })),
                ..props("object")
            },
        ),
        (
            "tags".to_string(),
            pbext::JsonSchemaProps {
                items: Some(Box::new(pbext::JsonSchemaPropsOrArray {
                    schema: Some(Box::new(props("string"))),
                    j_son_schemas: Vec::new(),
                })),
                max_items: Some(3),
                ..props("array")
            },
        ),
        (
            "size".to_string(),
            pbext::JsonSchemaProps {
                default: Some(pbext::Json {
                    raw: Some(b"\"small\"".to_vec()),
                }),
                r#enum: vec![
                    pbext::Json {
                        raw: Some(b"\"small\"".to_vec()),
                    },
                    pbext::Json {
                        raw: Some(b"\"large\"".to_vec()),
                    },
                ],
                ..props("string")
            },
        ),
        (
            "labels".to_string(),
            pbext::JsonSchemaProps {
                additional_properties: Some(Box::new(pbext::JsonSchemaPropsOrBool {
                    allows: Some(true),
                    schema: Some(Box::new(props("string"))),
                })),
                ..props("object")
            },
        ),
    ]
    .into();
    root.required = vec!["spec".into()];
    root.dependencies = [(
        "tags".to_string(),
        pbext::JsonSchemaPropsOrStringArray {
            schema: None,
            property: vec!["size".into()],
        },
    )]
    .into();
    let pb = pbext::CustomResourceDefinition {
        metadata: Some(pbmeta::ObjectMeta {
            name: s("widgets.example.com"),
            ..Default::default()
        }),
        spec: Some(pbext::CustomResourceDefinitionSpec {
            group: s("example.com"),
            names: Some(pbext::CustomResourceDefinitionNames {
                plural: s("widgets"),
                kind: s("Widget"),
                ..Default::default()
            }),
            scope: s("Namespaced"),
            versions: vec![pbext::CustomResourceDefinitionVersion {
                name: s("v1"),
                served: Some(true),
                storage: Some(true),
                schema: Some(pbext::CustomResourceValidation {
                    open_apiv3_schema: Some(root),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let got = bosun_proto::decode(&body(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        &pb,
    ))
    .unwrap();
    let want = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "names": {"plural": "widgets", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "required": ["spec"],
                "dependencies": {"tags": ["size"]},
                "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                        "additionalProperties": true},
                    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                    "size": {"type": "string", "default": "small", "enum": ["small", "large"]},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            }}}],
        },
    });
    assert_eq!(got, want);
    let typed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(got).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), want);
}

/// Corrupted bodies are rejected or decoded, never a panic.
#[test]
fn corrupted_bodies_never_panic() {
    let pb = pbcore::Service {
        metadata: meta("web"),
        spec: Some(pbcore::ServiceSpec {
            ports: vec![pbcore::ServicePort {
                port: Some(80),
                target_port: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                    r#type: Some(1),
                    int_val: None,
                    str_val: s("http"),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let good = body("v1", "Service", &pb);
    assert!(bosun_proto::decode(&good).is_ok());
    let mut errors = 0;
    for cut in 0..good.len() {
        errors += usize::from(bosun_proto::decode(&good[..cut]).is_err());
    }
    assert!(errors > 0);
    for i in 4..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = good.clone();
            b[i] ^= flip;
            let _ = bosun_proto::decode(&b);
        }
    }
}

/// Recursive messages (JSONSchemaProps) nest as deep as legitimate schemas do, but a hostile
/// body cannot recurse without bound.
#[test]
fn nesting_is_bounded() {
    let nested = |levels: usize| {
        let mut p = pbext::JsonSchemaProps {
            r#type: s("string"),
            ..Default::default()
        };
        for _ in 0..levels {
            p = pbext::JsonSchemaProps {
                r#type: s("object"),
                properties: [("a".to_string(), p)].into(),
                ..Default::default()
            };
        }
        pbext::CustomResourceDefinition {
            spec: Some(pbext::CustomResourceDefinitionSpec {
                versions: vec![pbext::CustomResourceDefinitionVersion {
                    schema: Some(pbext::CustomResourceValidation {
                        open_apiv3_schema: Some(p),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let av = "apiextensions.k8s.io/v1";
    let ok = bosun_proto::decode(&body(av, "CustomResourceDefinition", &nested(40))).unwrap();
    let mut schema = &ok["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for _ in 0..40 {
        schema = &schema["properties"]["a"];
    }
    assert_eq!(schema, &json!({"type": "string"}));
    let err = bosun_proto::decode(&body(av, "CustomResourceDefinition", &nested(500))).unwrap_err();
    assert!(err.to_string().contains("nested deeper"), "{err}");
}
