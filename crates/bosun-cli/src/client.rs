//! Connecting client verbs to a cluster, and resolving the resource names users type.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

use crate::ClientOpts;

/// A client plus the namespace commands default to.
pub struct Conn {
    pub client: Client,
    pub namespace: String,
}

pub async fn connect(opts: &ClientOpts) -> Result<Conn> {
    let path = opts.kubeconfig.clone().or_else(|| {
        let local = PathBuf::from("bosun-data/kubeconfig");
        local.exists().then_some(local)
    });
    let config = match path {
        Some(p) => {
            let kc = Kubeconfig::read_from(&p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig found: start a cluster with `bosun up` or pass --kubeconfig")?,
    };
    let namespace = opts
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok(Conn {
        client: Client::try_from(config)?,
        namespace,
    })
}

/// One resource type as discovery lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiType {
    pub group: String,
    pub version: String,
    pub plural: String,
    /// The singular name; discovery may leave it empty, then it is the lowercase kind.
    pub singular: String,
    pub kind: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
}

impl ApiType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The collection URL, namespaced when the type is and `ns` is given.
    pub fn url(&self, ns: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match ns {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }
}

const AGGREGATED_ACCEPT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";

/// Every resource type the server serves, in kubectl's priority order: the core group
/// first, then the groups in the order the server lists them, each group's preferred
/// version before its others. Subresources are left out.
pub async fn discover(client: &Client) -> Result<Vec<ApiType>> {
    let mut out = Vec::new();
    for path in ["/api", "/apis"] {
        let doc = get_json(client, path, AGGREGATED_ACCEPT).await?;
        if doc["kind"] == "APIGroupDiscoveryList" {
            out.extend(from_aggregated(&doc));
            continue;
        }
        // Classic discovery: one more request per group version.
        let gvs: Vec<(String, String)> = if path == "/api" {
            doc["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|v| (String::new(), v.to_string()))
                .collect()
        } else {
            classic_group_versions(&doc)
        };
        for (group, version) in gvs {
            let url = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            let list = get_json(client, &url, "application/json")
                .await
                .with_context(|| format!("reading discovery {url}"))?;
            out.extend(from_resource_list(&group, &version, &list));
        }
    }
    Ok(out)
}

async fn get_json(client: &Client, path: &str, accept: &str) -> Result<Value> {
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())?;
    let text = client.request_text(req).await?;
    serde_json::from_str(&text).with_context(|| format!("decoding discovery {path}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Types from an APIGroupDiscoveryList (`/api` or `/apis` with aggregated discovery).
fn from_aggregated(doc: &Value) -> Vec<ApiType> {
    let mut out = Vec::new();
    for group in doc["items"].as_array().into_iter().flatten() {
        let name = group["metadata"]["name"].as_str().unwrap_or("");
        // Versions are listed preferred first.
        for v in group["versions"].as_array().into_iter().flatten() {
            let version = v["version"].as_str().unwrap_or("");
            for r in v["resources"].as_array().into_iter().flatten() {
                let kind = r["responseKind"]["kind"].as_str().unwrap_or("");
                out.push(ApiType {
                    group: name.to_string(),
                    version: version.to_string(),
                    plural: r["resource"].as_str().unwrap_or("").to_string(),
                    singular: singular(r["singularResource"].as_str(), kind),
                    kind: kind.to_string(),
                    short_names: strings(&r["shortNames"]),
                    namespaced: r["scope"] == "Namespaced",
                });
            }
        }
    }
    out
}

/// (group, version) pairs of a classic APIGroupList, preferred version first.
fn classic_group_versions(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in doc["groups"].as_array().into_iter().flatten() {
        let name = g["name"].as_str().unwrap_or("").to_string();
        let preferred = g["preferredVersion"]["version"].as_str();
        let mut versions: Vec<String> = g["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["version"].as_str())
            .map(str::to_string)
            .collect();
        if let Some(p) = preferred
            && let Some(i) = versions.iter().position(|v| v == p)
        {
            let pv = versions.remove(i);
            versions.insert(0, pv);
        }
        out.extend(versions.into_iter().map(|v| (name.clone(), v)));
    }
    out
}

/// Types from a classic APIResourceList.
fn from_resource_list(group: &str, version: &str, list: &Value) -> Vec<ApiType> {
    list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"].as_str().is_some_and(|n| !n.contains('/')))
        .map(|r| {
            let kind = r["kind"].as_str().unwrap_or("");
            ApiType {
                group: group.to_string(),
                version: version.to_string(),
                plural: r["name"].as_str().unwrap_or("").to_string(),
                singular: singular(r["singularName"].as_str(), kind),
                kind: kind.to_string(),
                short_names: strings(&r["shortNames"]),
                namespaced: r["namespaced"].as_bool().unwrap_or(false),
            }
        })
        .collect()
}

fn singular(listed: Option<&str>, kind: &str) -> String {
    match listed {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => kind.to_ascii_lowercase(),
    }
}

/// Resolves what the user typed (`pods`, `pod`, `po`, `Pod`, `deployments.apps`,
/// `deployments.v1.apps`, `deploy.apps`) to one type, by kubectl's rules.
pub async fn resolve(client: &Client, arg: &str) -> Result<ApiType> {
    let types = discover(client).await?;
    resolve_in(&types, arg)
}

/// The resolution itself, over `types` in priority order (see [`discover`]).
///
/// As kubectl: `a.b.c` is tried first as resource `a` in version `b` of group `c`,
/// then as resource `a` in group `b.c`; `a.b` is resource `a` in group `b`. A short
/// name is expanded unless it is also some type's plural or singular. The first match
/// in priority order wins, so `pods` is the core Pod, never metrics.k8s.io's PodMetrics.
pub fn resolve_in(types: &[ApiType], arg: &str) -> Result<ApiType> {
    let wanted = arg.to_ascii_lowercase();
    let mut candidates: Vec<(&str, Option<&str>, Option<&str>)> = Vec::new();
    match wanted.split_once('.') {
        Some((res, rest)) => {
            if let Some((version, group)) = rest.split_once('.') {
                candidates.push((res, Some(version), Some(group)));
            }
            candidates.push((res, None, Some(rest)));
        }
        None => candidates.push((&wanted, None, None)),
    }
    for (res, version, group) in candidates {
        let (res, group) = expand_short_name(types, res, group);
        let found = types.iter().find(|t| {
            group.is_none_or(|g| t.group == g)
                && version.is_none_or(|v| t.version == v)
                && (t.plural == res || t.singular == res || t.kind.eq_ignore_ascii_case(res))
        });
        if let Some(t) = found {
            return Ok(t.clone());
        }
    }
    let shown = arg.split('.').next().unwrap_or(arg);
    bail!("the server doesn't have a resource type \"{shown}\"")
}

/// kubectl's short-name expansion: `po` becomes `pods` (group ""), `deploy.apps`
/// becomes `deployments` in `apps`; a group may be given by a prefix (`hpa.autoscal`).
fn expand_short_name<'a>(
    types: &'a [ApiType],
    res: &'a str,
    group: Option<&'a str>,
) -> (&'a str, Option<&'a str>) {
    let in_group = |t: &&ApiType| group.is_none_or(|g| t.group == g);
    if types
        .iter()
        .filter(in_group)
        .any(|t| t.plural == res || t.singular == res)
    {
        return (res, group);
    }
    let short = |t: &&ApiType| t.short_names.iter().any(|s| s == res);
    if let Some(t) = types.iter().filter(in_group).find(short) {
        return (&t.plural, Some(&t.group));
    }
    if let Some(g) = group
        && let Some(t) = types.iter().filter(|t| t.group.starts_with(g)).find(short)
    {
        return (&t.plural, Some(&t.group));
    }
    (res, group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What bosun's /api and /apis answer, trimmed: the core group, apps, and
    /// metrics.k8s.io whose `pods` and `nodes` share their plural with core types.
    fn types() -> Vec<ApiType> {
        let core = json!({"kind": "APIGroupDiscoveryList", "items": [{
            "metadata": {"name": ""},
            "versions": [{"version": "v1", "resources": [
                {"resource": "pods", "singularResource": "pod", "scope": "Namespaced",
                 "responseKind": {"kind": "Pod"}, "shortNames": ["po"]},
                {"resource": "nodes", "singularResource": "node", "scope": "Cluster",
                 "responseKind": {"kind": "Node"}, "shortNames": ["no"]},
                {"resource": "services", "singularResource": "service", "scope": "Namespaced",
                 "responseKind": {"kind": "Service"}, "shortNames": ["svc"]},
            ]}]
        }]});
        let groups = json!({"kind": "APIGroupDiscoveryList", "items": [
            {"metadata": {"name": "metrics.k8s.io"},
             "versions": [{"version": "v1beta1", "resources": [
                {"resource": "nodes", "singularResource": "", "scope": "Cluster",
                 "responseKind": {"kind": "NodeMetrics"}},
                {"resource": "pods", "singularResource": "", "scope": "Namespaced",
                 "responseKind": {"kind": "PodMetrics"}},
             ]}]},
            {"metadata": {"name": "apps"},
             "versions": [{"version": "v1", "resources": [
                {"resource": "deployments", "singularResource": "deployment",
                 "scope": "Namespaced", "responseKind": {"kind": "Deployment"},
                 "shortNames": ["deploy"]},
             ]}]},
            {"metadata": {"name": "autoscaling"},
             "versions": [
                {"version": "v2", "resources": [
                    {"resource": "horizontalpodautoscalers",
                     "singularResource": "horizontalpodautoscaler", "scope": "Namespaced",
                     "responseKind": {"kind": "HorizontalPodAutoscaler"}, "shortNames": ["hpa"]}]},
                {"version": "v1", "resources": [
                    {"resource": "horizontalpodautoscalers",
                     "singularResource": "horizontalpodautoscaler", "scope": "Namespaced",
                     "responseKind": {"kind": "HorizontalPodAutoscaler"}, "shortNames": ["hpa"]}]},
             ]},
        ]});
        let mut out = from_aggregated(&core);
        out.extend(from_aggregated(&groups));
        out
    }

    fn resolved(arg: &str) -> (String, String, String) {
        let t = resolve_in(&types(), arg).unwrap();
        (t.group, t.version, t.kind)
    }

    #[test]
    fn core_group_wins_over_metrics() {
        for arg in ["pods", "pod", "po", "Pod", "PODS"] {
            assert_eq!(
                resolved(arg),
                ("".into(), "v1".into(), "Pod".into()),
                "{arg}"
            );
        }
        for arg in ["nodes", "node", "no", "Node"] {
            assert_eq!(
                resolved(arg),
                ("".into(), "v1".into(), "Node".into()),
                "{arg}"
            );
        }
        assert_eq!(resolved("pods.metrics.k8s.io").2, "PodMetrics");
        assert_eq!(resolved("nodes.v1beta1.metrics.k8s.io").2, "NodeMetrics");
        assert_eq!(resolved("podmetrics").2, "PodMetrics");
    }

    #[test]
    fn short_names_groups_and_versions() {
        let apps = (
            "apps".to_string(),
            "v1".to_string(),
            "Deployment".to_string(),
        );
        for arg in [
            "deploy",
            "deployment",
            "deployments",
            "Deployment",
            "deployments.apps",
            "deploy.apps",
            "deployments.v1.apps",
            "Deployment.apps",
        ] {
            assert_eq!(resolved(arg), apps, "{arg}");
        }
        assert_eq!(resolved("svc").2, "Service");
        // The preferred version comes first; another is reachable by name.
        assert_eq!(resolved("hpa").1, "v2");
        assert_eq!(resolved("hpa.v1.autoscaling").1, "v1");
        assert_eq!(resolved("hpa.autoscal").0, "autoscaling");
    }

    #[test]
    fn unknown_types_are_kubectls_error() {
        for (arg, shown) in [
            ("widgets", "widgets"),
            ("deploy.nope", "deploy"),
            ("pods.v9.apps", "pods"),
        ] {
            let e = resolve_in(&types(), arg).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("the server doesn't have a resource type \"{shown}\"")
            );
        }
    }

    #[test]
    fn classic_discovery_puts_the_preferred_version_first() {
        let doc = json!({"groups": [{"name": "autoscaling",
            "versions": [{"version": "v1"}, {"version": "v2"}],
            "preferredVersion": {"version": "v2"}}]});
        assert_eq!(
            classic_group_versions(&doc),
            [
                ("autoscaling".to_string(), "v2".to_string()),
                ("autoscaling".into(), "v1".into())
            ]
        );
        let list = json!({"resources": [
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "Pod", "shortNames": ["po"]},
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod"},
        ]});
        let t = from_resource_list("", "v1", &list);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].singular.as_str(), t[0].namespaced), ("pod", true));
    }
}
