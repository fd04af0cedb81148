//! Validation of Job, CronJob and DaemonSet specs (`ValidateJobSpec`, `ValidateCronJobSpec`,
//! `ValidateDaemonSetSpec`), with upstream's field paths and messages.

use serde_json::Value;

use super::Validator;

const JOB_RESTART: &[&str] = &["OnFailure", "Never"];

impl Validator {
    pub(super) fn job(&mut self, spec: &Value, path: &str, with_selector: bool) {
        for f in ["parallelism", "completions", "backoffLimit"] {
            self.non_negative(spec, f, path);
        }
        if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
            && d <= 0
        {
            self.invalid(
                format!("{path}.activeDeadlineSeconds"),
                &d.into(),
                "must be greater than 0",
            );
        }
        if let Some(t) = spec.get("ttlSecondsAfterFinished").and_then(Value::as_i64)
            && t < 0
        {
            self.invalid(
                format!("{path}.ttlSecondsAfterFinished"),
                &t.into(),
                "must be greater than or equal to 0",
            );
        }
        match spec.get("completionMode").and_then(Value::as_str) {
            None | Some("NonIndexed") => {}
            Some("Indexed") => {
                if spec.get("completions").is_none_or(Value::is_null) {
                    self.required(
                        format!("{path}.completions"),
                        "when completion mode is Indexed",
                    );
                }
            }
            Some(other) => self.not_supported(
                format!("{path}.completionMode"),
                &other.into(),
                &["NonIndexed", "Indexed"],
            ),
        }
        if with_selector && spec.get("selector").is_none_or(Value::is_null) {
            self.required(format!("{path}.selector"), "");
        }
        match spec.get("template").filter(|t| !t.is_null()) {
            None => self.required(format!("{path}.template"), ""),
            Some(t) => {
                if let Some(l) = t
                    .get("metadata")
                    .and_then(|m| m.get("labels"))
                    .and_then(Value::as_object)
                {
                    self.labels(l, &format!("{path}.template.metadata.labels"));
                }
                let pod = t.get("spec").unwrap_or(&Value::Null);
                let field = format!("{path}.template.spec");
                // Upstream requires an explicit restart policy for Jobs.
                if pod.get("restartPolicy").and_then(Value::as_str).is_none() {
                    self.not_supported(
                        format!("{field}.restartPolicy"),
                        &Value::String(String::new()),
                        JOB_RESTART,
                    );
                }
                self.pod_spec(pod, &field, JOB_RESTART);
            }
        }
    }

    pub(super) fn cron_job(&mut self, spec: &Value) {
        match spec.get("schedule").and_then(Value::as_str) {
            None | Some("") => self.required("spec.schedule".into(), ""),
            Some(s) => {
                if let Err(e) = parse_schedule(s) {
                    self.invalid("spec.schedule".into(), &s.into(), &e);
                }
            }
        }
        if let Some(tz) = spec.get("timeZone").and_then(Value::as_str)
            && (tz.is_empty() || jiff::tz::TimeZone::get(tz).is_err())
        {
            self.invalid(
                "spec.timeZone".into(),
                &tz.into(),
                &format!("unknown time zone {tz}"),
            );
        }
        match spec.get("concurrencyPolicy").and_then(Value::as_str) {
            None | Some("Allow" | "Forbid" | "Replace") => {}
            Some(other) => self.not_supported(
                "spec.concurrencyPolicy".into(),
                &other.into(),
                &["Allow", "Forbid", "Replace"],
            ),
        }
        for f in [
            "startingDeadlineSeconds",
            "successfulJobsHistoryLimit",
            "failedJobsHistoryLimit",
        ] {
            self.non_negative(spec, f, "spec");
        }
        let job = spec
            .get("jobTemplate")
            .and_then(|t| t.get("spec"))
            .unwrap_or(&Value::Null);
        self.job(job, "spec.jobTemplate.spec", false);
    }

    pub(super) fn daemon_set(&mut self, spec: &Value) {
        self.workload(spec, "DaemonSet", false);
        if let Some(t) = spec
            .get("updateStrategy")
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            && !matches!(t, "RollingUpdate" | "OnDelete")
        {
            self.not_supported(
                "spec.updateStrategy.type".into(),
                &t.into(),
                &["OnDelete", "RollingUpdate"],
            );
        }
    }
}

/// A schedule as Kubernetes accepts it: five fields or a macro, no `TZ=` prefix.
pub fn parse_schedule(s: &str) -> Result<croner::Cron, String> {
    let s = s.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Registry;
    use crate::validation::validate_create;

    fn errors(kind: &str, spec: serde_json::Value) -> Vec<String> {
        let k = Registry::builtin()
            .kinds
            .iter()
            .find(|i| i.kind == kind)
            .unwrap();
        let obj = json!({"metadata": {"name": "x", "namespace": "default"}, "spec": spec});
        validate_create(k, &obj)
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    fn pod(restart: &str) -> serde_json::Value {
        json!({"spec": {"restartPolicy": restart, "containers": [{"name": "c", "image": "busybox"}]}})
    }

    #[test]
    fn job_rules() {
        let ok = errors(
            "Job",
            json!({"selector": {"matchLabels": {"a": "b"}}, "template": pod("Never")}),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let bad = errors(
            "Job",
            json!({"selector": {"matchLabels": {"a": "b"}}, "completionMode": "Indexed",
                   "backoffLimit": -1, "template": pod("Always")}),
        );
        assert!(
            bad.iter()
                .any(|e| e.starts_with("spec.completions: Required value")),
            "{bad:?}"
        );
        assert!(
            bad.iter().any(|e| e.starts_with("spec.backoffLimit")),
            "{bad:?}"
        );
        assert!(
            bad.iter().any(|e| e
                .starts_with("spec.template.spec.restartPolicy: Unsupported value: \"Always\"")),
            "{bad:?}"
        );
    }

    #[test]
    fn cronjob_rules() {
        let t = json!({"spec": {"template": pod("OnFailure")}});
        assert!(
            errors(
                "CronJob",
                json!({"schedule": "@hourly", "timeZone": "Europe/Berlin", "jobTemplate": t})
            )
            .is_empty()
        );
        let bad = errors(
            "CronJob",
            json!({"schedule": "61 * * * *", "timeZone": "Mars/Olympus", "jobTemplate": t}),
        );
        assert!(
            bad.iter()
                .any(|e| e.starts_with("spec.schedule: Invalid value: \"61 * * * *\"")),
            "{bad:?}"
        );
        assert!(bad.iter().any(|e| e == "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"), "{bad:?}");
        let tz = errors(
            "CronJob",
            json!({"schedule": "TZ=UTC 0 * * * *", "jobTemplate": t}),
        );
        assert!(
            tz.iter().any(|e| e.contains("cannot use TZ or CRON_TZ")),
            "{tz:?}"
        );
    }
}
