//! Columns of Job, CronJob and DaemonSet, as Kubernetes' printers (`printJob`,
//! `printCronJob`, `printDaemonSet`) show them.

use serde_json::{Value, json};

use super::{
    Column, RowFn, age, arr, containers_images, human_duration, i, name, parse_ts, s,
    selector_string, since,
};

pub(super) fn printer(kind: &str) -> Option<(Vec<Column>, RowFn)> {
    let wide = [
        ("Containers", "string", 1),
        ("Images", "string", 1),
        ("Selector", "string", 1),
    ];
    let (mut cols, row): (Vec<Column>, RowFn) = match kind {
        "Job" => (
            vec![
                ("Name", "name", 0),
                ("Status", "string", 0),
                ("Completions", "string", 0),
                ("Duration", "string", 0),
                ("Age", "string", 0),
            ],
            job_row,
        ),
        "CronJob" => (
            vec![
                ("Name", "name", 0),
                ("Schedule", "string", 0),
                ("Timezone", "string", 0),
                ("Suspend", "boolean", 0),
                ("Active", "integer", 0),
                ("Last Schedule", "string", 0),
                ("Age", "string", 0),
            ],
            cron_job_row,
        ),
        "DaemonSet" => (
            vec![
                ("Name", "name", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Node Selector", "string", 0),
                ("Age", "string", 0),
            ],
            daemon_set_row,
        ),
        _ => return None,
    };
    cols.extend(wide);
    Some((cols, row))
}

fn has_condition(o: &Value, ty: &str) -> bool {
    arr(o, "/status/conditions")
        .iter()
        .any(|c| s(c, "/type") == ty && s(c, "/status") == "True")
}

fn job_status(o: &Value) -> &'static str {
    if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

fn job_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let succeeded = i(o, "/status/succeeded");
    let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match i(o, "/spec/parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match parse_ts(s(o, "/status/startTime")) {
        Some(start) => {
            let end = parse_ts(s(o, "/status/completionTime")).unwrap_or(now);
            human_duration(end.as_second() - start.as_second())
        }
        None => String::new(),
    };
    let (cs, imgs) = containers_images(o, "/spec/template/spec/containers");
    vec![
        name(o),
        json!(job_status(o)),
        json!(completions),
        json!(duration),
        age(o, now),
        json!(cs),
        json!(imgs),
        json!(selector_string(o.pointer("/spec/selector"))),
    ]
}

fn cron_job_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let last = match s(o, "/status/lastScheduleTime") {
        "" => "<none>".to_string(),
        t => since(t, now),
    };
    let tz = match s(o, "/spec/timeZone") {
        "" => "<none>",
        t => t,
    };
    let (cs, imgs) = containers_images(o, "/spec/jobTemplate/spec/template/spec/containers");
    vec![
        name(o),
        json!(s(o, "/spec/schedule")),
        json!(tz),
        json!(
            o.pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        ),
        json!(arr(o, "/status/active").len()),
        json!(last),
        age(o, now),
        json!(cs),
        json!(imgs),
        json!(selector_string(
            o.pointer("/spec/jobTemplate/spec/selector")
        )),
    ]
}

fn daemon_set_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let node_selector = match o
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
    {
        Some(m) if !m.is_empty() => {
            let mut parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            parts.sort();
            parts.join(",")
        }
        _ => "<none>".into(),
    };
    let (cs, imgs) = containers_images(o, "/spec/template/spec/containers");
    vec![
        name(o),
        json!(i(o, "/status/desiredNumberScheduled")),
        json!(i(o, "/status/currentNumberScheduled")),
        json!(i(o, "/status/numberReady")),
        json!(i(o, "/status/updatedNumberScheduled")),
        json!(i(o, "/status/numberAvailable")),
        json!(node_selector),
        age(o, now),
        json!(cs),
        json!(imgs),
        json!(selector_string(o.pointer("/spec/selector"))),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Registry;
    use crate::table::table_at;

    fn cells(kind: &str, o: serde_json::Value, now: &str) -> Vec<serde_json::Value> {
        let k = Registry::builtin()
            .kinds
            .iter()
            .find(|i| i.kind == kind)
            .unwrap();
        let t = table_at(k, &[o], "None", now.parse().unwrap());
        t["rows"][0]["cells"].as_array().unwrap().clone()
    }

    #[test]
    fn job_columns() {
        let c = cells(
            "Job",
            json!({"metadata": {"name": "pi", "creationTimestamp": "2026-01-01T00:00:00Z"},
                   "spec": {"completions": 3, "parallelism": 1, "selector": {"matchLabels": {"a": "b"}},
                            "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}},
                   "status": {"succeeded": 3, "startTime": "2026-01-01T00:00:00Z",
                              "completionTime": "2026-01-01T00:00:42Z",
                              "conditions": [{"type": "Complete", "status": "True"}]}}),
            "2026-01-01T00:05:00Z",
        );
        assert_eq!(c[1], "Complete");
        assert_eq!(c[2], "3/3");
        assert_eq!(c[3], "42s");
        assert_eq!(c[4], "5m");
        assert_eq!(c[7], "a=b");
        let running = cells(
            "Job",
            json!({"metadata": {"name": "q"}, "spec": {"parallelism": 2}, "status": {}}),
            "2026-01-01T00:05:00Z",
        );
        assert_eq!(running[1], "Running");
        assert_eq!(running[2], "0/1 of 2");
    }

    #[test]
    fn cronjob_and_daemonset_columns() {
        let c = cells(
            "CronJob",
            json!({"metadata": {"name": "hello"}, "spec": {"schedule": "*/1 * * * *", "suspend": false},
                   "status": {"active": [{"name": "x"}], "lastScheduleTime": "2026-01-01T00:04:00Z"}}),
            "2026-01-01T00:05:00Z",
        );
        assert_eq!(c[1], "*/1 * * * *");
        assert_eq!(c[2], "<none>");
        assert_eq!(c[3], false);
        assert_eq!(c[4], 1);
        assert_eq!(c[5], "60s");
        let d = cells(
            "DaemonSet",
            json!({"metadata": {"name": "agent"},
                   "spec": {"template": {"spec": {"nodeSelector": {"os": "linux"}}}},
                   "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3,
                              "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}}),
            "2026-01-01T00:05:00Z",
        );
        assert_eq!(d[1..6], [json!(3), json!(3), json!(2), json!(3), json!(2)]);
        assert_eq!(d[6], "os=linux");
    }
}
