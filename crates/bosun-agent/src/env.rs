//! Container environment as Kubernetes builds it: envFrom, then env (later wins), values from
//! ConfigMaps, Secrets, the downward API (fieldRef, resourceFieldRef), and `$(VAR)` expansion
//! in env values, command and args.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::api::ClusterApi;

/// Pod facts the downward API exposes that are not in the pod object yet.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: &'a str,
    /// Node allocatable cpu (cores) and memory (bytes): the default of limits in
    /// resourceFieldRef.
    pub node_cpu: f64,
    pub node_memory: f64,
}

/// A container whose configuration cannot be built (CreateContainerConfigError).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Ordered environment with override semantics.
#[derive(Debug, Default, Clone)]
pub struct Env {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Env {
    pub fn set(&mut self, k: String, v: String) {
        if let Some(&i) = self.index.get(&k) {
            self.vars[i].1 = v;
        } else {
            self.index.insert(k.clone(), self.vars.len());
            self.vars.push((k, v));
        }
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.index.get(k).map(|&i| self.vars[i].1.as_str())
    }
    pub fn into_vec(self) -> Vec<(String, String)> {
        self.vars
    }
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// Kubernetes `$(VAR)` expansion: defined references are replaced, undefined ones stay as
/// written, `$$` is an escaped `$`.
pub fn expand(s: &str, env: &Env) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut lit = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            match b[i + 1] {
                b'$' => {
                    out.push_str(&s[lit..i]);
                    out.push('$');
                    i += 2;
                    lit = i;
                    continue;
                }
                b'(' => {
                    if let Some(end) = s[i + 2..].find(')') {
                        let name = &s[i + 2..i + 2 + end];
                        out.push_str(&s[lit..i]);
                        match env.get(name) {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&s[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        lit = i;
                        continue;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    out.push_str(&s[lit..]);
    out
}

fn data_of_secret(s: &k8s_openapi::api::core::v1::Secret) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = HashMap::new();
    for (k, v) in s.data.iter().flatten() {
        m.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    for (k, v) in s.string_data.iter().flatten() {
        m.insert(k.clone(), v.clone());
    }
    m
}

fn data_of_cm(c: &k8s_openapi::api::core::v1::ConfigMap) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = c.data.clone().unwrap_or_default().into_iter().collect();
    for (k, v) in c.binary_data.iter().flatten() {
        m.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    m
}

/// Looks up ConfigMaps and Secrets once per container build.
struct Sources<'a> {
    api: &'a dyn ClusterApi,
    ns: String,
    cms: HashMap<String, Option<HashMap<String, String>>>,
    secrets: HashMap<String, Option<HashMap<String, String>>>,
}

impl Sources<'_> {
    async fn cm(&mut self, name: &str) -> Result<Option<&HashMap<String, String>>, ConfigError> {
        if !self.cms.contains_key(name) {
            let v = self
                .api
                .config_map(&self.ns, name)
                .await
                .map_err(|e| ConfigError(format!("cannot get configmap {name:?}: {e:#}")))?;
            self.cms.insert(name.into(), v.as_ref().map(data_of_cm));
        }
        Ok(self.cms[name].as_ref())
    }
    async fn secret(
        &mut self,
        name: &str,
    ) -> Result<Option<&HashMap<String, String>>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let v = self
                .api
                .secret(&self.ns, name)
                .await
                .map_err(|e| ConfigError(format!("cannot get secret {name:?}: {e:#}")))?;
            self.secrets
                .insert(name.into(), v.as_ref().map(data_of_secret));
        }
        Ok(self.secrets[name].as_ref())
    }
}

/// Parses a Kubernetes quantity ("100m", "1.5", "128Mi", "1G", "1e3") to a number.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    for (suf, mul) in suffixes {
        if let Some(n) = q.strip_suffix(suf) {
            return n.parse::<f64>().ok().map(|v| v * mul);
        }
    }
    if let Some(n) = q.strip_suffix('E') {
        return n.parse::<f64>().ok().map(|v| v * 1e18);
    }
    q.parse::<f64>().ok()
}

pub(crate) fn field_ref(facts: &PodFacts<'_>, path: &str) -> Result<String, ConfigError> {
    let pod = facts.pod;
    let md = &pod.metadata;
    let bracket = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.to_string(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "metadata.labels" | "metadata.annotations" => {
            let m = if path == "metadata.labels" {
                &md.labels
            } else {
                &md.annotations
            };
            let mut lines: Vec<String> = m
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            lines.sort();
            lines.join("\n")
        }
        _ => {
            if let Some(k) = bracket("metadata.labels['") {
                md.labels
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = bracket("metadata.annotations['") {
                md.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else {
                return Err(ConfigError(format!(
                    "unsupported fieldRef fieldPath {path:?}"
                )));
            }
        }
    })
}

pub(crate) fn resource_ref(
    facts: &PodFacts<'_>,
    pod_container: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, ConfigError> {
    let c = match &r.container_name {
        Some(n) if !n.is_empty() => facts
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| &c.name == n))
            .ok_or_else(|| ConfigError(format!("resourceFieldRef: no container {n:?}")))?,
        _ => pod_container,
    };
    let (kind, res) = r
        .resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resource {:?}", r.resource)))?;
    let res_map = c.resources.as_ref().and_then(|rr| match kind {
        "limits" => rr.limits.as_ref(),
        "requests" => rr.requests.as_ref(),
        _ => None,
    });
    let value = res_map
        .and_then(|m| m.get(res))
        .and_then(|q| parse_quantity(&q.0));
    let value = match (value, res) {
        (Some(v), _) => v,
        (None, "cpu") if kind == "limits" => facts.node_cpu,
        (None, "memory") if kind == "limits" => facts.node_memory,
        (None, "cpu" | "memory" | "ephemeral-storage") => 0.0,
        _ => {
            return Err(ConfigError(format!(
                "unsupported resource {:?}",
                r.resource
            )));
        }
    };
    let divisor = r
        .divisor
        .as_ref()
        .and_then(|d| parse_quantity(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

/// Builds the environment of `c`.
pub async fn container_env(
    api: &dyn ClusterApi,
    facts: &PodFacts<'_>,
    c: &Container,
) -> Result<Env, ConfigError> {
    container_env_with(api, facts, c, Vec::new()).await
}

/// Builds the environment of `c` over `base` (the service variables): the container's own
/// variables replace base ones of the same name, and `$(VAR)` may refer to either.
pub async fn container_env_with(
    api: &dyn ClusterApi,
    facts: &PodFacts<'_>,
    c: &Container,
    base: Vec<(String, String)>,
) -> Result<Env, ConfigError> {
    let mut src = Sources {
        api,
        ns: facts
            .pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        cms: HashMap::new(),
        secrets: HashMap::new(),
    };
    let mut env = Env::default();
    for (k, v) in base {
        env.set(k, v);
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            match src.cm(&r.name).await? {
                Some(data) => {
                    let mut keys: Vec<_> = data.iter().collect();
                    keys.sort();
                    for (k, v) in keys {
                        env.set(format!("{prefix}{k}"), v.clone());
                    }
                }
                None if optional => {}
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match src.secret(&r.name).await? {
                Some(data) => {
                    let mut keys: Vec<_> = data.iter().collect();
                    keys.sort();
                    for (k, v) in keys {
                        env.set(format!("{prefix}{k}"), v.clone());
                    }
                }
                None if optional => {}
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                match src.cm(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if optional => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key, src.ns, r.name
                            )));
                        }
                    },
                    None if optional => None,
                    None => {
                        return Err(ConfigError(format!("configmap {:?} not found", r.name)));
                    }
                }
            } else if let Some(r) = &vf.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                match src.secret(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if optional => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key, src.ns, r.name
                            )));
                        }
                    },
                    None if optional => None,
                    None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
                }
            } else if let Some(f) = &vf.field_ref {
                Some(field_ref(facts, &f.field_path)?)
            } else if let Some(r) = &vf.resource_field_ref {
                Some(resource_ref(facts, c, r)?)
            } else {
                return Err(ConfigError(format!("env {:?}: empty valueFrom", e.name)));
            }
        } else {
            Some(expand(e.value.as_deref().unwrap_or(""), &env))
        };
        // An optional reference that is missing leaves the variable unset, as in Kubernetes.
        if let Some(v) = value {
            env.set(e.name.clone(), v);
        }
    }
    Ok(env)
}

/// The argv of a container without an image: `command` + `args`, expanded.
pub fn process_argv(c: &Container, env: &Env) -> Result<Vec<String>, ConfigError> {
    let command = c.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err(ConfigError(format!(
            "container {:?} has no image and no command: the process runtime needs `command`",
            c.name
        )));
    }
    Ok(command
        .iter()
        .chain(c.args.iter().flatten())
        .map(|s| expand(s, env))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let mut env = Env::default();
        env.set("A".into(), "x".into());
        env.set("B".into(), "y".into());
        assert_eq!(expand("$(A)-$(B)", &env), "x-y");
        assert_eq!(expand("$(MISSING)", &env), "$(MISSING)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("a$$b", &env), "a$b");
        assert_eq!(expand("$(A", &env), "$(A");
        assert_eq!(expand("$A $", &env), "$A $");
        assert_eq!(expand("héllo $(A)é", &env), "héllo xé");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("128Mi"), Some(134217728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("bad"), None);
    }
}
