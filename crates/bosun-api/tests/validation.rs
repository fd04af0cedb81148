//! Validation against real manifests, checking Kubernetes' field paths and messages.

use bosun_api::defaults::apply_defaults;
use bosun_api::validation::{validate_create, validate_update};
use bosun_api::{FieldError, KindInfo, Registry};
use serde_json::{Value, json};

fn kind(k: &str) -> &'static KindInfo {
    Registry::builtin()
        .kinds
        .iter()
        .find(|i| i.kind == k)
        .unwrap()
}

/// Defaults then validates, as the API server does on create.
fn create(k: &str, mut obj: Value) -> Vec<FieldError> {
    apply_defaults(kind(k), &mut obj);
    validate_create(kind(k), &obj)
}

fn fields(errs: &[FieldError]) -> Vec<String> {
    errs.iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
}

fn has(errs: &[FieldError], field: &str, reason: &str, message_part: &str) {
    assert!(
        errs.iter()
            .any(|e| e.field == field && e.reason == reason && e.message.contains(message_part)),
        "no {reason} on {field} containing {message_part:?} in {:#?}",
        fields(errs)
    );
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nginx-deployment", "namespace": "default", "labels": {"app": "nginx"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [{
                    "name": "nginx",
                    "image": "nginx:1.14.2",
                    "ports": [{"containerPort": 80}],
                    "env": [{"name": "MODE", "value": "prod"}],
                    "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 80}},
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}
                }],
                "volumes": [{"name": "cache", "emptyDir": {}}]}
            }
        }
    })
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default"},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}
    })
}

#[test]
fn real_manifests_are_valid() {
    assert_eq!(
        fields(&create("Deployment", deployment())),
        Vec::<String>::new()
    );
    assert!(create("Pod", pod()).is_empty());
    let process = json!({"metadata": {"name": "api", "namespace": "default"},
        "spec": {"runtimeClassName": "process", "containers": [{"name": "api", "command": ["python3", "-m", "http.server"]}]}});
    assert_eq!(fields(&create("Pod", process)), Vec::<String>::new());
    let svc = json!({"metadata": {"name": "my-service", "namespace": "default"},
        "spec": {"selector": {"app.kubernetes.io/name": "MyApp"},
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 9376},
                           {"name": "https", "port": 443, "targetPort": "https"}]}});
    assert_eq!(fields(&create("Service", svc)), Vec::<String>::new());
    let cm = json!({"metadata": {"name": "game-demo", "namespace": "default"},
        "data": {"player_initial_lives": "3", "game.properties": "enemy.types=aliens,monsters\n"}});
    assert!(create("ConfigMap", cm).is_empty());
    let ns = json!({"metadata": {"name": "team-a"}});
    assert!(create("Namespace", ns).is_empty());
    let lease = json!({"metadata": {"name": "bosun-controllers", "namespace": "kube-system"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}});
    assert!(create("Lease", lease).is_empty());
}

#[test]
fn names_follow_kubernetes_syntax() {
    let mut d = deployment();
    d["metadata"]["name"] = json!("Foo_Bar");
    let errs = create("Deployment", d);
    has(
        &errs,
        "metadata.name",
        "FieldValueInvalid",
        "Invalid value: \"Foo_Bar\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
    );
    let mut d = deployment();
    d["metadata"].as_object_mut().unwrap().remove("name");
    has(
        &create("Deployment", d),
        "metadata.name",
        "FieldValueRequired",
        "Required value: name or generateName is required",
    );
    let mut d = deployment();
    d["metadata"].as_object_mut().unwrap().remove("name");
    d["metadata"]["generateName"] = json!("web-");
    assert!(create("Deployment", d).is_empty());

    let errs = create("Namespace", json!({"metadata": {"name": "a.b"}}));
    has(
        &errs,
        "metadata.name",
        "FieldValueInvalid",
        "a lowercase RFC 1123 label must consist",
    );
    let errs = create(
        "Service",
        json!({"metadata": {"name": "1web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}),
    );
    has(
        &errs,
        "metadata.name",
        "FieldValueInvalid",
        "a DNS-1035 label must consist",
    );
    let mut p = pod();
    p["metadata"].as_object_mut().unwrap().remove("namespace");
    has(
        &create("Pod", p),
        "metadata.namespace",
        "FieldValueRequired",
        "Required value",
    );
    let errs = create(
        "Namespace",
        json!({"metadata": {"name": "a", "namespace": "default"}}),
    );
    has(
        &errs,
        "metadata.namespace",
        "FieldValueForbidden",
        "not allowed on this type",
    );
}

#[test]
fn labels_and_annotations() {
    let mut d = deployment();
    d["metadata"]["labels"] = json!({"Foo_": "ok", "app": "bad value", "example.com/tier": "web"});
    d["metadata"]["annotations"] = json!({"a/b/c": "x"});
    let errs = create("Deployment", d);
    has(
        &errs,
        "metadata.labels",
        "FieldValueInvalid",
        "Invalid value: \"Foo_\": name part must consist of alphanumeric characters",
    );
    has(
        &errs,
        "metadata.labels",
        "FieldValueInvalid",
        "Invalid value: \"bad value\": a valid label must be an empty string",
    );
    has(
        &errs,
        "metadata.annotations",
        "FieldValueInvalid",
        "a qualified name must consist",
    );
    assert_eq!(errs.len(), 3, "{:#?}", fields(&errs));
}

#[test]
fn deployment_rules() {
    let mut d = deployment();
    d["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    has(
        &create("Deployment", d),
        "spec.template.metadata.labels",
        "FieldValueInvalid",
        "Invalid value: map[string]string{\"app\":\"nginx\"}: `selector` does not match template `labels`",
    );
    let mut d = deployment();
    d["spec"].as_object_mut().unwrap().remove("selector");
    has(
        &create("Deployment", d),
        "spec.selector",
        "FieldValueRequired",
        "Required value",
    );
    let mut d = deployment();
    d["spec"]["replicas"] = json!(-1);
    has(
        &create("Deployment", d),
        "spec.replicas",
        "FieldValueInvalid",
        "Invalid value: -1: must be greater than or equal to 0",
    );
    let mut d = deployment();
    d["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
    has(
        &create("Deployment", d),
        "spec.strategy.rollingUpdate.maxUnavailable",
        "FieldValueInvalid",
        "may not be 0 when `maxSurge` is 0",
    );
    let mut d = deployment();
    d["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": "110%", "maxUnavailable": "x"}});
    let errs = create("Deployment", d);
    has(
        &errs,
        "spec.strategy.rollingUpdate.maxSurge",
        "FieldValueInvalid",
        "must not be greater than 100%",
    );
    has(
        &errs,
        "spec.strategy.rollingUpdate.maxUnavailable",
        "FieldValueInvalid",
        "a valid percent string",
    );
    let mut d = deployment();
    d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    has(
        &create("Deployment", d),
        "spec.template.spec.restartPolicy",
        "FieldValueNotSupported",
        "Unsupported value: \"Never\": supported values: \"Always\"",
    );
    let mut d = deployment();
    d["spec"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In"}]});
    has(
        &create("Deployment", d),
        "spec.selector.matchExpressions[0].values",
        "FieldValueRequired",
        "must be specified when `operator` is 'In' or 'NotIn'",
    );
}

#[test]
fn pod_spec_rules() {
    let mut d = deployment();
    let c = &mut d["spec"]["template"]["spec"]["containers"];
    c[0]["name"] = json!("Web_1");
    c[0]["ports"] = json!([{"containerPort": 70000}, {"containerPort": 81, "protocol": "HTTP"}]);
    c[0]["env"] = json!([{"name": "1BAD"}]);
    c[0]["volumeMounts"] = json!([{"name": "missing", "mountPath": "/x"}]);
    c[0]["livenessProbe"] = json!({"httpGet": {"port": 80}, "exec": {"command": ["true"]}});
    c[0]["readinessProbe"] = json!({"periodSeconds": 5});
    c[0]["resources"] = json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1", "memory": "lots"}});
    c.as_array_mut()
        .unwrap()
        .push(json!({"name": "Web_1", "image": ""}));
    let errs = create("Deployment", d);
    let p = "spec.template.spec.containers";
    has(
        &errs,
        &format!("{p}[0].name"),
        "FieldValueInvalid",
        "a lowercase RFC 1123 label",
    );
    has(
        &errs,
        &format!("{p}[1].name"),
        "FieldValueDuplicate",
        "Duplicate value: \"Web_1\"",
    );
    has(
        &errs,
        &format!("{p}[1].image"),
        "FieldValueRequired",
        "Required value",
    );
    has(
        &errs,
        &format!("{p}[0].ports[0].containerPort"),
        "FieldValueInvalid",
        "Invalid value: 70000: must be between 1 and 65535, inclusive",
    );
    has(
        &errs,
        &format!("{p}[0].ports[1].protocol"),
        "FieldValueNotSupported",
        "supported values: \"SCTP\", \"TCP\", \"UDP\"",
    );
    has(
        &errs,
        &format!("{p}[0].env[0].name"),
        "FieldValueInvalid",
        "a valid environment variable name",
    );
    has(
        &errs,
        &format!("{p}[0].volumeMounts[0].name"),
        "FieldValueNotFound",
        "Not found: \"missing\"",
    );
    has(
        &errs,
        &format!("{p}[0].livenessProbe.httpGet"),
        "FieldValueForbidden",
        "may not specify more than 1 handler type",
    );
    has(
        &errs,
        &format!("{p}[0].readinessProbe"),
        "FieldValueRequired",
        "must specify a handler type",
    );
    has(
        &errs,
        &format!("{p}[0].resources.requests[cpu]"),
        "FieldValueInvalid",
        "Invalid value: \"2\": must be less than or equal to cpu limit of 1",
    );
    has(
        &errs,
        &format!("{p}[0].resources.limits[memory]"),
        "FieldValueInvalid",
        "quantities must match",
    );

    let mut p = pod();
    p["spec"]["containers"] = json!([]);
    p["spec"]["restartPolicy"] = json!("Sometimes");
    p["spec"]["volumes"] = json!([{"name": "a", "emptyDir": {}}, {"name": "a", "configMap": {}, "secret": {"secretName": "s"}}]);
    let errs = create("Pod", p);
    has(
        &errs,
        "spec.containers",
        "FieldValueRequired",
        "Required value",
    );
    has(
        &errs,
        "spec.restartPolicy",
        "FieldValueNotSupported",
        "\"Always\", \"OnFailure\", \"Never\"",
    );
    has(
        &errs,
        "spec.volumes[1].name",
        "FieldValueDuplicate",
        "Duplicate value: \"a\"",
    );
    has(
        &errs,
        "spec.volumes[1].configMap",
        "FieldValueForbidden",
        "may not specify more than 1 volume type",
    );
    has(
        &errs,
        "spec.volumes[1].configMap.name",
        "FieldValueRequired",
        "Required value",
    );

    let process = json!({"metadata": {"name": "p", "namespace": "default"},
        "spec": {"runtimeClassName": "process", "containers": [{"name": "c"}]}});
    has(
        &create("Pod", process),
        "spec.containers[0].command",
        "FieldValueRequired",
        "process",
    );
}

#[test]
fn service_configmap_secret_rules() {
    let svc = json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "Fancy", "ports": [{"port": 0}, {"port": 80, "targetPort": "Not_A_Name"}]}});
    let errs = create("Service", svc);
    has(
        &errs,
        "spec.type",
        "FieldValueNotSupported",
        "Unsupported value: \"Fancy\"",
    );
    has(
        &errs,
        "spec.ports[0].port",
        "FieldValueInvalid",
        "must be between 1 and 65535, inclusive",
    );
    has(
        &errs,
        "spec.ports[0].name",
        "FieldValueRequired",
        "Required value",
    );
    has(
        &errs,
        "spec.ports[1].targetPort",
        "FieldValueInvalid",
        "must contain only alpha-numeric characters",
    );
    let svc = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"selector": {"app": "x"}}});
    has(
        &create("Service", svc),
        "spec.ports",
        "FieldValueRequired",
        "Required value",
    );
    let headless = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "None", "selector": {"app": "x"}}});
    assert!(create("Service", headless).is_empty());

    let cm = json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"bad key": "x"}});
    has(
        &create("ConfigMap", cm),
        "data[bad key]",
        "FieldValueInvalid",
        "a valid config key must consist",
    );
    let tls = json!({"metadata": {"name": "t", "namespace": "default"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "AA=="}});
    has(
        &create("Secret", tls),
        "data[tls.key]",
        "FieldValueRequired",
        "Required value",
    );
}

#[test]
fn updates_respect_immutable_fields() {
    let mut old = deployment();
    apply_defaults(kind("Deployment"), &mut old);
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(5);
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.16.1");
    assert!(validate_update(kind("Deployment"), &new, &old).is_empty());
    // Empty and absent are the same to Kubernetes' semantic equality.
    new["spec"]["selector"]["matchExpressions"] = json!([]);
    assert!(validate_update(kind("Deployment"), &new, &old).is_empty());
    new["spec"]["selector"] = json!({"matchLabels": {"app": "nginx", "tier": "web"}});
    new["spec"]["template"]["metadata"]["labels"]["tier"] = json!("web");
    let errs = validate_update(kind("Deployment"), &new, &old);
    has(
        &errs,
        "spec.selector",
        "FieldValueInvalid",
        "field is immutable",
    );
    let mut renamed = old.clone();
    renamed["metadata"]["name"] = json!("other");
    has(
        &validate_update(kind("Deployment"), &renamed, &old),
        "metadata.name",
        "FieldValueInvalid",
        "field is immutable",
    );

    let mut old = pod();
    apply_defaults(kind("Pod"), &mut old);
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("nginx:1.26");
    new["metadata"]["labels"] = json!({"x": "y"});
    new["spec"]["activeDeadlineSeconds"] = json!(100);
    new["spec"]["nodeName"] = json!("node-1");
    assert_eq!(
        fields(&validate_update(kind("Pod"), &new, &old)),
        Vec::<String>::new()
    );
    let mut same = new.clone();
    same["spec"]["containers"][0]["env"] = json!([]);
    assert!(validate_update(kind("Pod"), &same, &old).is_empty());
    let mut bad = new.clone();
    bad["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
    has(
        &validate_update(kind("Pod"), &bad, &old),
        "spec",
        "FieldValueForbidden",
        "pod updates may not change fields other than `spec.containers[*].image`",
    );
    // Once bound, the node cannot change.
    let mut moved = new.clone();
    moved["spec"]["nodeName"] = json!("node-2");
    assert!(!validate_update(kind("Pod"), &moved, &new).is_empty());

    let old = json!({"metadata": {"name": "c", "namespace": "default"}, "immutable": true, "data": {"a": "1"}});
    let mut new = old.clone();
    new["data"]["a"] = json!("2");
    has(
        &validate_update(kind("ConfigMap"), &new, &old),
        "data",
        "FieldValueForbidden",
        "field is immutable when `immutable` is set",
    );
}
