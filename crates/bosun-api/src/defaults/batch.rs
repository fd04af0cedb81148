//! Defaults of the batch workloads and DaemonSets (`SetDefaults_Job`, `SetDefaults_CronJob`,
//! `SetDefaults_DaemonSet`, and the Job strategy's generated selector).

use serde_json::{Map, Value, json};

use super::{object, pod_template, set, set_str};

/// Labels the Job strategy adds to a Job's pod template (and its generated selector).
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const LEGACY_CONTROLLER_UID: &str = "controller-uid";
const LEGACY_JOB_NAME: &str = "job-name";

pub(super) fn job(obj: &mut Map<String, Value>) {
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    let uid = meta.get("uid").and_then(Value::as_str).map(String::from);
    let name = meta.get("name").and_then(Value::as_str).map(String::from);
    let spec = object(obj, "spec");
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    if spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null())
    {
        set(spec, "backoffLimit", json!(i32::MAX));
    } else {
        set(spec, "backoffLimit", json!(6));
    }
    set_str(spec, "completionMode", "NonIndexed");
    set(spec, "suspend", json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(|v| !v.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    set_str(spec, "podReplacementPolicy", replacement);
    // The strategy's generated selector: the Job's own UID, so a Job never adopts another's
    // pods. Only on create (the UID is fresh then) and unless the user manages the selector.
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if let Some(uid) = uid
        && !manual
        && spec.get("selector").is_none_or(Value::is_null)
    {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {CONTROLLER_UID: uid}}),
        );
        let template = object(spec, "template");
        let labels = object(object(template, "metadata"), "labels");
        labels.insert(CONTROLLER_UID.into(), json!(uid));
        labels.insert(LEGACY_CONTROLLER_UID.into(), json!(uid));
        if let Some(name) = name {
            labels.insert(JOB_NAME.into(), json!(name));
            labels.insert(LEGACY_JOB_NAME.into(), json!(name));
        }
    }
    pod_template(spec);
}

pub(super) fn cron_job(obj: &mut Map<String, Value>) {
    let spec = object(obj, "spec");
    set_str(spec, "concurrencyPolicy", "Allow");
    set(spec, "suspend", json!(false));
    set(spec, "successfulJobsHistoryLimit", json!(3));
    set(spec, "failedJobsHistoryLimit", json!(1));
    let job_spec = object(object(spec, "jobTemplate"), "spec");
    pod_template(job_spec);
}

pub(super) fn daemon_set(obj: &mut Map<String, Value>) {
    let spec = object(obj, "spec");
    set(spec, "revisionHistoryLimit", json!(10));
    let strategy = object(spec, "updateStrategy");
    set_str(strategy, "type", "RollingUpdate");
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let rolling = object(strategy, "rollingUpdate");
        set(rolling, "maxUnavailable", json!(1));
        set(rolling, "maxSurge", json!(0));
    }
    pod_template(spec);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::defaults::apply_defaults;
    use crate::registry::Registry;

    fn defaulted(kind: &str, mut v: serde_json::Value) -> serde_json::Value {
        let k = Registry::builtin()
            .kinds
            .iter()
            .find(|i| i.kind == kind)
            .unwrap();
        apply_defaults(k, &mut v);
        (k.roundtrip)(&v).unwrap_or_else(|e| panic!("{kind} no longer decodes: {e}"));
        v
    }

    #[test]
    fn job_gets_counts_and_a_selector_of_its_uid() {
        let j = defaulted(
            "Job",
            json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}),
        );
        let s = &j["spec"];
        assert_eq!(s["completions"], 1);
        assert_eq!(s["parallelism"], 1);
        assert_eq!(s["backoffLimit"], 6);
        assert_eq!(s["completionMode"], "NonIndexed");
        assert_eq!(s["suspend"], false);
        assert_eq!(s["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(
            s["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        let l = &s["template"]["metadata"]["labels"];
        assert_eq!(l["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(l["job-name"], "pi");
        assert_eq!(l["controller-uid"], "u-1");
        assert_eq!(s["template"]["spec"]["restartPolicy"], "Never");
    }

    #[test]
    fn work_queue_job_keeps_completions_unset() {
        let j = defaulted(
            "Job",
            json!({"metadata": {"name": "q"}, "spec": {"parallelism": 3, "template": {}}}),
        );
        assert!(j["spec"].get("completions").is_none());
        assert_eq!(j["spec"]["parallelism"], 3);
    }

    #[test]
    fn cronjob_and_daemonset_defaults() {
        let c = defaulted("CronJob", json!({"spec": {"schedule": "@hourly"}}));
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
        let d = defaulted("DaemonSet", json!({"spec": {"template": {}}}));
        assert_eq!(d["spec"]["updateStrategy"]["type"], "RollingUpdate");
        assert_eq!(
            d["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            1
        );
        assert_eq!(d["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    }
}
