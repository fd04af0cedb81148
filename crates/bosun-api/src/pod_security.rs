//! Admission checks of a pod's security settings: the `securityContext` fields (pod and
//! container level) that bosun's runtimes cannot honour are refused with a Status naming
//! the field, never silently ignored; the rest is checked the way Kubernetes checks it.

use serde_json::Value;

use crate::FieldError;

/// Capability names a container may add or drop (without the `CAP_` prefix, as Kubernetes
/// writes them; the prefixed form is accepted too), and `ALL`.
const CAPABILITIES: &[&str] = &[
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Whether `name` is a capability a container may add or drop.
pub fn known_capability(name: &str) -> bool {
    let n = name.strip_prefix("CAP_").unwrap_or(name);
    CAPABILITIES.contains(&n)
}

struct Checks {
    errors: Vec<FieldError>,
}

fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn set(obj: &Value, field: &str) -> Option<Value> {
    obj.get(field).filter(|v| !v.is_null()).cloned()
}

impl Checks {
    fn forbidden(&mut self, field: String, detail: &str) {
        self.errors.push(FieldError {
            field,
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
        });
    }

    fn invalid(&mut self, field: String, value: &Value, detail: &str) {
        self.errors.push(FieldError {
            field,
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {detail}"),
        });
    }

    fn not_supported(&mut self, field: String, value: &Value, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.errors.push(FieldError {
            field,
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        });
    }

    fn id(&mut self, obj: &Value, field: &str, path: &str) {
        if let Some(v) = set(obj, field)
            && !v.as_i64().is_some_and(|n| (0..=2147483647).contains(&n))
        {
            self.invalid(
                child(path, field),
                &v,
                "must be between 0 and 2147483647, inclusive",
            );
        }
    }

    /// A profile (seccomp, AppArmor): only the runtime's default and none at all can be had.
    fn profile(&mut self, obj: &Value, field: &str, path: &str) {
        let Some(p) = set(obj, field) else {
            return;
        };
        let tp = child(&child(path, field), "type");
        match p.get("type").and_then(Value::as_str) {
            Some("RuntimeDefault" | "Unconfined") => {}
            Some(_) | None => self.not_supported(
                tp,
                p.get("type").unwrap_or(&Value::Null),
                &["RuntimeDefault", "Unconfined"],
            ),
        }
    }

    /// Fields common to the pod's and the containers' securityContext.
    fn common(&mut self, sc: &Value, path: &str) {
        for f in ["runAsUser", "runAsGroup"] {
            self.id(sc, f, path);
        }
        for f in ["seLinuxOptions", "windowsOptions"] {
            if set(sc, f).is_some() {
                self.forbidden(
                    child(path, f),
                    "not supported by bosun's runtimes (Linux without SELinux labelling)",
                );
            }
        }
        self.profile(sc, "seccompProfile", path);
        self.profile(sc, "appArmorProfile", path);
    }

    fn pod(&mut self, spec: &Value, path: &str) {
        let sp = child(path, "securityContext");
        if let Some(sc) = set(spec, "securityContext") {
            self.common(&sc, &sp);
            self.id(&sc, "fsGroup", &sp);
            for (i, g) in sc
                .get("supplementalGroups")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if !g.as_i64().is_some_and(|n| (0..=2147483647).contains(&n)) {
                    self.invalid(
                        format!("{}[{i}]", child(&sp, "supplementalGroups")),
                        g,
                        "must be between 0 and 2147483647, inclusive",
                    );
                }
            }
            if let Some(s) = set(&sc, "sysctls")
                && s.as_array().is_some_and(|a| !a.is_empty())
            {
                self.forbidden(
                    child(&sp, "sysctls"),
                    "sysctls are not supported by bosun's runtimes",
                );
            }
            if let Some(p) = set(&sc, "supplementalGroupsPolicy")
                && p.as_str() != Some("Merge")
            {
                self.not_supported(child(&sp, "supplementalGroupsPolicy"), &p, &["Merge"]);
            }
            if let Some(p) = set(&sc, "fsGroupChangePolicy")
                && !matches!(p.as_str(), Some("Always" | "OnRootMismatch"))
            {
                self.not_supported(
                    child(&sp, "fsGroupChangePolicy"),
                    &p,
                    &["Always", "OnRootMismatch"],
                );
            }
        }
        if spec.get("hostUsers").and_then(Value::as_bool) == Some(false) {
            self.forbidden(
                child(path, "hostUsers"),
                "user namespaces are not supported by bosun's runtimes",
            );
        }
        if spec.get("shareProcessNamespace").and_then(Value::as_bool) == Some(true) {
            self.forbidden(
                child(path, "shareProcessNamespace"),
                "each container has a process namespace of its own in bosun",
            );
        }
        for field in ["initContainers", "containers", "ephemeralContainers"] {
            for (i, c) in spec
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(sc) = set(c, "securityContext") {
                    let cp = child(&format!("{}[{i}]", child(path, field)), "securityContext");
                    self.container(&sc, &cp);
                }
            }
        }
    }

    fn container(&mut self, sc: &Value, path: &str) {
        self.common(sc, path);
        if let Some(p) = set(sc, "procMount")
            && p.as_str() != Some("Default")
        {
            self.not_supported(child(path, "procMount"), &p, &["Default"]);
        }
        let mut adds_sys_admin = false;
        for which in ["add", "drop"] {
            let cp = child(&child(path, "capabilities"), which);
            for (i, c) in sc
                .get("capabilities")
                .and_then(|c| c.get(which))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let name = c.as_str().unwrap_or("");
                if !known_capability(name) {
                    self.invalid(format!("{cp}[{i}]"), c, "unknown capability");
                }
                if which == "add" && matches!(name, "SYS_ADMIN" | "CAP_SYS_ADMIN") {
                    adds_sys_admin = true;
                }
            }
        }
        if sc.get("allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false) {
            let ap = child(path, "allowPrivilegeEscalation");
            if sc.get("privileged").and_then(Value::as_bool) == Some(true) {
                self.invalid(
                    ap.clone(),
                    &Value::Bool(false),
                    "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
                );
            }
            if adds_sys_admin {
                self.invalid(
                    ap,
                    &Value::Bool(false),
                    "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
                );
            }
        }
    }
}

/// Problems with the security settings of the pod spec at `path` (e.g. `spec` or
/// `spec.template.spec`).
pub fn validate(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut c = Checks { errors: Vec::new() };
    c.pod(spec, path);
    c.errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(spec: Value) -> Vec<String> {
        validate(&spec, "spec")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn honoured_fields_pass() {
        let spec = json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                "supplementalGroups": [3000], "runAsNonRoot": true,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "a", "securityContext": {
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "procMount": "Default", "appArmorProfile": {"type": "Unconfined"}}}]
        });
        assert_eq!(fields(spec), Vec::<String>::new());
    }

    #[test]
    fn unsupported_fields_are_named() {
        let spec = json!({
            "securityContext": {"seLinuxOptions": {"level": "s0"}, "sysctls": [{"name": "a", "value": "1"}]},
            "hostUsers": false,
            "containers": [{"name": "a", "securityContext": {
                "windowsOptions": {"runAsUserName": "x"}, "procMount": "Unmasked",
                "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
                "capabilities": {"add": ["NOT_A_CAP"]}, "runAsUser": -1}}]
        });
        let f = fields(spec);
        for want in [
            "spec.securityContext.seLinuxOptions",
            "spec.securityContext.sysctls",
            "spec.hostUsers",
            "spec.containers[0].securityContext.windowsOptions",
            "spec.containers[0].securityContext.procMount",
            "spec.containers[0].securityContext.seccompProfile.type",
            "spec.containers[0].securityContext.capabilities.add[0]",
            "spec.containers[0].securityContext.runAsUser",
        ] {
            assert!(f.contains(&want.to_string()), "{want} missing in {f:?}");
        }
    }

    #[test]
    fn privileged_without_escalation_is_contradictory() {
        let spec = json!({"containers": [{"name": "a", "securityContext": {
            "privileged": true, "allowPrivilegeEscalation": false}}]});
        assert_eq!(
            fields(spec),
            vec!["spec.containers[0].securityContext.allowPrivilegeEscalation"]
        );
    }
}
