//! Defaulting, as the Kubernetes API server applies it on create and update: the
//! `SetDefaults_*` functions of the served API versions plus the admission and
//! strategy defaults that show up in `kubectl get -o yaml` on a real cluster (pod
//! priority, default tolerations, service IP families, the namespace finalizer).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::KindInfo;

mod autoscaling;
mod batch;
pub use batch::{CONTROLLER_UID, JOB_NAME};

/// Fills in the defaults Kubernetes sets for `kind` (pod templates included).
pub fn apply_defaults(kind: &KindInfo, obj: &mut Value) {
    if let Some(custom) = &kind.custom {
        custom.prune_and_default(obj);
        return;
    }
    let Some(obj) = obj.as_object_mut() else {
        return;
    };
    match (kind.group, kind.kind) {
        ("", "Pod") => pod(obj),
        ("", "Service") => service(obj),
        ("", "Namespace") => namespace(obj),
        ("", "Secret") => secret(obj),
        ("", "Node") => node(obj),
        ("", "Endpoints") => {
            for subset in list_mut(obj, "subsets") {
                for port in list_mut(subset, "ports") {
                    set_str(port, "protocol", "TCP");
                }
            }
        }
        ("apps", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => statefulset(obj),
        ("", "PersistentVolumeClaim") => {
            set_str(object(obj, "spec"), "volumeMode", "Filesystem");
            set_str(object(obj, "status"), "phase", "Pending");
        }
        ("", "PersistentVolume") => {
            let spec = object(obj, "spec");
            set_str(spec, "persistentVolumeReclaimPolicy", "Retain");
            set_str(spec, "volumeMode", "Filesystem");
            set_str(object(obj, "status"), "phase", "Pending");
        }
        ("storage.k8s.io", "StorageClass") => {
            set_str(obj, "reclaimPolicy", "Delete");
            set_str(obj, "volumeBindingMode", "Immediate");
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::crd::default_crd(obj),
        ("apps", "DaemonSet") => batch::daemon_set(obj),
        ("batch", "Job") => batch::job(obj),
        ("batch", "CronJob") => batch::cron_job(obj),
        ("autoscaling", "HorizontalPodAutoscaler") => autoscaling::hpa(obj),
        ("apps", "ReplicaSet") => {
            let spec = object(obj, "spec");
            set(spec, "replicas", json!(1));
            pod_template(spec);
        }
        _ => {}
    }
}

/// `type` defaults to Opaque; `stringData` is write-only, as in Kubernetes: its keys are
/// base64-encoded into `data` (overriding keys already there) and it is never stored.
fn secret(obj: &mut Map<String, Value>) {
    set_str(obj, "type", "Opaque");
    merge_string_data(obj);
}

/// Moves a Secret's `stringData` into `data` (base64-encoded, overriding).
pub fn merge_string_data(obj: &mut Map<String, Value>) {
    let Some(Value::Object(plain)) = obj.remove("stringData") else {
        return;
    };
    if plain.is_empty() {
        return;
    }
    let data = object(obj, "data");
    for (k, v) in plain {
        let text = match v {
            Value::String(s) => s,
            // The typed roundtrip admits only strings; anything else is kept as its JSON.
            other => other.to_string(),
        };
        data.insert(k, Value::String(BASE64.encode(text.as_bytes())));
    }
}

/// True when `key` is missing, null, or (for strings) empty: Go's zero values.
fn unset(obj: &Map<String, Value>, key: &str) -> bool {
    match obj.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

fn set(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if unset(obj, key) {
        obj.insert(key.to_string(), value);
    }
}

fn set_str(obj: &mut Map<String, Value>, key: &str, value: &str) {
    set(obj, key, Value::String(value.to_string()));
}

/// The object under `key`, created empty when missing or not an object.
fn object<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = obj.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("just made an object")
}

/// The objects of the list under `key` (none when absent).
fn list_mut<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn existing<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    obj.get_mut(key).and_then(Value::as_object_mut)
}

/// tolerationSeconds of the default not-ready / unreachable tolerations.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 5;

fn pod(obj: &mut Map<String, Value>) {
    let spec = object(obj, "spec");
    pod_spec(spec);
    set(spec, "enableServiceLinks", json!(true));
    // Priority admission: pods without a priority class get priority 0.
    if unset(spec, "priorityClassName") {
        set(spec, "priority", json!(0));
    }
    set_str(spec, "preemptionPolicy", "PreemptLowerPriority");
    // DefaultTolerationSeconds admission (Kubernetes: 300 s): pods leave a lost node after
    // a few seconds so that their replacements run elsewhere quickly.
    for taint in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        if !tolerations.is_array() {
            *tolerations = json!([]);
        }
        let list = tolerations.as_array_mut().expect("just made a list");
        let covered = list.iter().any(|t| {
            (t["key"] == taint || (t["key"].is_null() && t["operator"] == "Exists"))
                && (t["effect"] == "NoExecute" || t["effect"].is_null() || t["effect"] == "")
        });
        if !covered {
            list.push(json!({"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}));
        }
    }
    // Requests default to limits (SetDefaults_Pod).
    for key in ["containers", "initContainers"] {
        for c in list_mut(spec, key) {
            let Some(limits) = c
                .get("resources")
                .and_then(|r| r.get("limits"))
                .and_then(Value::as_object)
                .cloned()
            else {
                continue;
            };
            let requests = object(object(c, "resources"), "requests");
            for (k, v) in limits {
                requests.entry(k).or_insert(v);
            }
        }
    }
    let qos = qos_class(spec);
    let status = object(obj, "status");
    set_str(status, "phase", "Pending");
    set_str(status, "qosClass", qos);
}

/// Kubernetes' QoS class of a pod spec (after requests were defaulted from limits).
pub fn qos_class(spec: &Map<String, Value>) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for key in ["containers", "initContainers"] {
        for c in spec
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let requests = &c["resources"]["requests"];
            let limits = &c["resources"]["limits"];
            for res in ["cpu", "memory"] {
                let (r, l) = (&requests[res], &limits[res]);
                if !r.is_null() || !l.is_null() {
                    any = true;
                }
                if l.is_null() || r != l {
                    guaranteed = false;
                }
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn pod_template(spec: &mut Map<String, Value>) {
    let template = object(spec, "template");
    pod_spec(object(template, "spec"));
}

/// SetDefaults_PodSpec and everything below it (containers, volumes, probes).
fn pod_spec(spec: &mut Map<String, Value>) {
    set_str(spec, "dnsPolicy", "ClusterFirst");
    set_str(spec, "restartPolicy", "Always");
    set_str(spec, "schedulerName", "default-scheduler");
    set(spec, "securityContext", json!({}));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in list_mut(spec, key) {
            container(c);
        }
    }
    for v in list_mut(spec, "volumes") {
        volume(v);
    }
}

fn container(c: &mut Map<String, Value>) {
    if unset(c, "imagePullPolicy")
        && let Some(image) = c
            .get("image")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty())
    {
        let policy = if image_tag(image) == Some("latest") {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".into(), policy.into());
    }
    set_str(c, "terminationMessagePath", "/dev/termination-log");
    set_str(c, "terminationMessagePolicy", "File");
    set(c, "resources", json!({}));
    for p in list_mut(c, "ports") {
        set_str(p, "protocol", "TCP");
    }
    for e in list_mut(c, "env") {
        if let Some(field_ref) = existing(e, "valueFrom").and_then(|v| existing(v, "fieldRef")) {
            set_str(field_ref, "apiVersion", "v1");
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = existing(c, probe) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            if let Some(h) = existing(p, "httpGet") {
                set_str(h, "path", "/");
                set_str(h, "scheme", "HTTP");
            }
            // SetDefaults_GRPCAction: clients (kubectl describe) dereference it.
            if let Some(g) = existing(p, "grpc") {
                set_str(g, "service", "");
            }
        }
    }
    if let Some(lifecycle) = existing(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = existing(lifecycle, hook).and_then(|h| existing(h, "httpGet")) {
                set_str(h, "path", "/");
                set_str(h, "scheme", "HTTP");
            }
        }
    }
}

/// The tag of an image reference: `latest` when neither tag nor digest is given,
/// `None` for digest references (they never default to pulling always).
fn image_tag(image: &str) -> Option<&str> {
    if image.contains('@') {
        return None;
    }
    // A colon after the last slash separates the tag; one before it is a registry port.
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => Some(tag),
        None => Some("latest"),
    }
}

/// The volume source fields of a pod volume (exactly one is set).
pub(crate) const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

fn volume(v: &mut Map<String, Value>) {
    if !VOLUME_SOURCES.iter().any(|s| v.contains_key(*s)) {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = existing(v, source) {
            set(s, "defaultMode", json!(420));
        }
    }
    if let Some(h) = existing(v, "hostPath") {
        set(h, "type", json!(""));
    }
}

fn deployment(obj: &mut Map<String, Value>) {
    let spec = object(obj, "spec");
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    let strategy = object(spec, "strategy");
    set_str(strategy, "type", "RollingUpdate");
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let rolling = object(strategy, "rollingUpdate");
        set(rolling, "maxUnavailable", json!("25%"));
        set(rolling, "maxSurge", json!("25%"));
    }
    pod_template(spec);
}

/// SetDefaults_StatefulSet (apps/v1), claim templates included.
fn statefulset(obj: &mut Map<String, Value>) {
    let spec = object(obj, "spec");
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    set_str(spec, "podManagementPolicy", "OrderedReady");
    let strategy = object(spec, "updateStrategy");
    set_str(strategy, "type", "RollingUpdate");
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        set(object(strategy, "rollingUpdate"), "partition", json!(0));
    }
    let retention = object(spec, "persistentVolumeClaimRetentionPolicy");
    set_str(retention, "whenDeleted", "Retain");
    set_str(retention, "whenScaled", "Retain");
    for t in list_mut(spec, "volumeClaimTemplates") {
        set_str(object(t, "spec"), "volumeMode", "Filesystem");
        set_str(object(t, "status"), "phase", "Pending");
    }
    pod_template(spec);
}

fn service(obj: &mut Map<String, Value>) {
    let spec = object(obj, "spec");
    set_str(spec, "type", "ClusterIP");
    set_str(spec, "sessionAffinity", "None");
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    for p in list_mut(spec, "ports") {
        set_str(p, "protocol", "TCP");
        let zero = matches!(p.get("targetPort"), Some(Value::Number(n)) if n.as_i64() == Some(0));
        if (unset(p, "targetPort") || zero)
            && let Some(port) = p.get("port").cloned()
        {
            p.insert("targetPort".into(), port);
        }
    }
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let cfg = object(object(spec, "sessionAffinityConfig"), "clientIP");
        set(cfg, "timeoutSeconds", json!(10800));
    }
    if ty != "ExternalName" {
        set_str(spec, "internalTrafficPolicy", "Cluster");
        set_str(spec, "ipFamilyPolicy", "SingleStack");
        set(spec, "ipFamilies", json!(["IPv4"]));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    let status = object(obj, "status");
    set(status, "loadBalancer", json!({}));
}

fn namespace(obj: &mut Map<String, Value>) {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(name) = name {
        let labels = object(object(obj, "metadata"), "labels");
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
    }
    let spec = object(obj, "spec");
    set(spec, "finalizers", json!(["kubernetes"]));
    let status = object(obj, "status");
    set_str(status, "phase", "Active");
}

fn node(obj: &mut Map<String, Value>) {
    let Some(status) = existing(obj, "status") else {
        return;
    };
    if let Some(capacity) = status.get("capacity").cloned() {
        set(status, "allocatable", capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    fn kind(k: &str) -> &'static KindInfo {
        Registry::builtin()
            .kinds
            .iter()
            .find(|i| i.kind == k)
            .unwrap()
    }

    fn defaulted(k: &str, mut v: Value) -> Value {
        apply_defaults(kind(k), &mut v);
        // Defaults must still decode as the typed object.
        (kind(k).roundtrip)(&v).unwrap_or_else(|e| panic!("{k} no longer decodes: {e}"));
        v
    }

    #[test]
    fn deployment_gets_what_a_real_cluster_shows() {
        let d = defaulted(
            "Deployment",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
                "spec": {"selector": {"matchLabels": {"app": "nginx"}},
                  "template": {"metadata": {"labels": {"app": "nginx"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25",
                      "ports": [{"containerPort": 80}],
                      "readinessProbe": {"httpGet": {"port": 80}}}]}}}}),
        );
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["schedulerName"], "default-scheduler");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["securityContext"], json!({}));
        // Pod-only defaults stay off templates.
        assert!(pod.get("enableServiceLinks").is_none());
        assert!(pod.get("tolerations").is_none());
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
    }

    #[test]
    fn explicit_values_are_kept() {
        let d = defaulted(
            "Deployment",
            json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"a": "b"}},
                "template": {"spec": {"restartPolicy": "Always", "terminationGracePeriodSeconds": 0,
                  "containers": [{"name": "c", "image": "x", "imagePullPolicy": "Never"}]}}}}),
        );
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            0
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Never"
        );
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        for (image, want) in [
            ("nginx", Some("Always")),
            ("nginx:latest", Some("Always")),
            ("nginx:1.25", Some("IfNotPresent")),
            ("registry.local:5000/team/app", Some("Always")),
            ("registry.local:5000/team/app:v2", Some("IfNotPresent")),
            ("nginx@sha256:0123456789abcdef", Some("IfNotPresent")),
            ("", None),
        ] {
            let p = defaulted(
                "Pod",
                json!({"spec": {"containers": [{"name": "c", "image": image}]}}),
            );
            assert_eq!(
                p["spec"]["containers"][0]
                    .get("imagePullPolicy")
                    .and_then(Value::as_str),
                want,
                "{image}"
            );
        }
        // Process containers have no image and get no pull policy.
        let p = defaulted(
            "Pod",
            json!({"spec": {"runtimeClassName": "process", "containers": [{"name": "c", "command": ["sleep", "9"]}]}}),
        );
        assert!(p["spec"]["containers"][0].get("imagePullPolicy").is_none());
    }

    #[test]
    fn pod_gets_admission_defaults_and_qos() {
        let p = defaulted(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                  "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}],
                  "volumes": [{"name": "v"}, {"name": "cfg", "configMap": {"name": "c"}}]}}),
        );
        let spec = &p["spec"];
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["priority"], 0);
        assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(
            spec["tolerations"][0]["tolerationSeconds"],
            DEFAULT_TOLERATION_SECONDS
        );
        assert_eq!(
            spec["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "64Mi"})
        );
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["configMap"]["defaultMode"], 420);
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
        let p = defaulted(
            "Pod",
            json!({"spec": {"containers": [{"name": "c", "image": "x"}]}}),
        );
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        let p = defaulted(
            "Pod",
            json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}}),
        );
        assert_eq!(p["status"]["qosClass"], "Burstable");
        // Defaulting twice changes nothing more.
        let mut again = p.clone();
        apply_defaults(kind("Pod"), &mut again);
        assert_eq!(again, p);
    }

    #[test]
    fn service_namespace_secret_defaults() {
        let s = defaulted(
            "Service",
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                "ports": [{"port": 80}, {"port": 443, "targetPort": "https", "protocol": "TCP"}]}}),
        );
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(s["spec"]["ports"][1]["targetPort"], "https");
        assert!(s["spec"].get("externalTrafficPolicy").is_none());
        assert_eq!(s["status"], json!({"loadBalancer": {}}));
        let s = defaulted(
            "Service",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 1}]}}),
        );
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");

        let n = defaulted("Namespace", json!({"metadata": {"name": "team-a"}}));
        assert_eq!(n["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(n["status"]["phase"], "Active");
        assert_eq!(
            n["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team-a"
        );

        assert_eq!(defaulted("Secret", json!({"data": {}}))["type"], "Opaque");
        // stringData lands base64-encoded in data, wins over data, and is not kept.
        let s = defaulted(
            "Secret",
            json!({"data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "b": "x y"}}),
        );
        assert_eq!(s["data"], json!({"a": "bmV3", "keep": "eA==", "b": "eCB5"}));
        assert!(s.get("stringData").is_none());
        let s = defaulted("Secret", json!({"stringData": {}}));
        assert!(s.get("stringData").is_none());
        assert_eq!(
            defaulted("Secret", json!({"type": "kubernetes.io/tls"}))["type"],
            "kubernetes.io/tls"
        );
        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "b"}});
        assert_eq!(defaulted("ConfigMap", cm.clone()), cm);
        let rs = defaulted(
            "ReplicaSet",
            json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"name": "c", "image": "x:1"}]}}}}),
        );
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(rs["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }
}
