//! RBAC (`rbac.authorization.k8s.io/v1`): an in-memory index of Roles, ClusterRoles and their
//! bindings, kept current by a watch on the store, and Kubernetes' rule matching.
//!
//! The index maps each subject (a user or a group; ServiceAccount subjects become their user
//! name) to the roles bound to it, so a decision reads only the bindings of the requester.
//! ClusterRoles with an `aggregationRule` get the union of the rules of the ClusterRoles their
//! selectors pick (Kubernetes' aggregation controller writes them back; `aggregate` does that).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bosun_store::{EventKind, ListOptions, Store, WatchItem};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

use crate::attrs::Attrs;
use crate::user::User;

pub const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// One `PolicyRule`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("verbs".into(), serde_json::json!(self.verbs));
        if !self.api_groups.is_empty() || !self.resources.is_empty() {
            m.insert("apiGroups".into(), serde_json::json!(self.api_groups));
            m.insert("resources".into(), serde_json::json!(self.resources));
        }
        if !self.resource_names.is_empty() {
            m.insert(
                "resourceNames".into(),
                serde_json::json!(self.resource_names),
            );
        }
        if !self.non_resource_urls.is_empty() {
            m.insert(
                "nonResourceURLs".into(),
                serde_json::json!(self.non_resource_urls),
            );
        }
        Value::Object(m)
    }

    /// Kubernetes' `RuleAllows`.
    pub fn allows(&self, a: &Attrs) -> bool {
        let verb_ok = self.verbs.iter().any(|v| v == "*" || *v == a.verb);
        if !verb_ok {
            return false;
        }
        if a.resource_request {
            let group_ok = self
                .api_groups
                .iter()
                .any(|g| g == "*" || *g == a.api_group);
            let combined = a.combined_resource();
            let resource_ok = self.resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    || (!a.subresource.is_empty()
                        && r.strip_prefix("*/") == Some(a.subresource.as_str()))
            });
            let name_ok = self.resource_names.is_empty()
                || (!a.name.is_empty() && self.resource_names.contains(&a.name));
            group_ok && resource_ok && name_ok
        } else {
            self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            })
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    User(String),
    Group(String),
}

/// A binding's target: a ClusterRole by name, or a Role of the binding's namespace.
#[derive(Clone, Debug)]
struct Grant {
    /// Namespace the grant applies in; None for ClusterRoleBindings (everywhere).
    namespace: Option<String>,
    cluster_role: bool,
    role: String,
    binding: String,
}

#[derive(Default)]
struct Index {
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
    grants: HashMap<Subject, Vec<Grant>>,
}

fn name_of(v: &Value) -> String {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn ns_of(v: &Value) -> String {
    v.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn rules_of(v: &Value) -> Vec<Rule> {
    v.get("rules")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Rule::from_json).collect())
        .unwrap_or_default()
}

/// The rules an aggregated ClusterRole should carry: those of every ClusterRole one of its
/// selectors picks, each rule once, in name order (as Kubernetes' controller does).
pub fn aggregated_rules(role: &Value, all: &[&Value]) -> Option<Vec<Rule>> {
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?;
    let me = name_of(role);
    let mut picked: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|c| name_of(c) != me)
        .filter(|c| {
            let labels = c.pointer("/metadata/labels").and_then(Value::as_object);
            selectors
                .iter()
                .any(|s| bosun_api::validation::selector_matches(s, labels))
        })
        .collect();
    picked.sort_by_key(|c| name_of(c));
    let mut out: Vec<Rule> = Vec::new();
    for c in picked {
        for r in rules_of(c) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    Some(out)
}

fn subjects_of(binding: &Value) -> Vec<Subject> {
    let ns = ns_of(binding);
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_string();
            match s.get("kind")?.as_str()? {
                "User" => Some(Subject::User(name)),
                "Group" => Some(Subject::Group(name)),
                "ServiceAccount" => {
                    let sns = s
                        .get("namespace")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .unwrap_or(&ns);
                    Some(Subject::User(format!("system:serviceaccount:{sns}:{name}")))
                }
                _ => None,
            }
        })
        .collect()
}

impl Index {
    fn build(objects: &BTreeMap<String, Value>) -> Index {
        let mut ix = Index::default();
        let cluster_roles: Vec<&Value> = objects
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{RBAC_PREFIX}clusterroles/")))
            .map(|(_, v)| v)
            .collect();
        for c in &cluster_roles {
            let rules = aggregated_rules(c, &cluster_roles).unwrap_or_else(|| rules_of(c));
            ix.cluster_roles.insert(name_of(c), Arc::new(rules));
        }
        for (k, v) in objects {
            let Some(rest) = k.strip_prefix(RBAC_PREFIX) else {
                continue;
            };
            let kind = rest.split('/').next().unwrap_or_default();
            match kind {
                "roles" => {
                    ix.roles
                        .insert((ns_of(v), name_of(v)), Arc::new(rules_of(v)));
                }
                "rolebindings" | "clusterrolebindings" => {
                    let role_kind = v.pointer("/roleRef/kind").and_then(Value::as_str);
                    let role = v
                        .pointer("/roleRef/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let cluster_role = role_kind == Some("ClusterRole");
                    if kind == "clusterrolebindings" && !cluster_role {
                        continue;
                    }
                    let grant = Grant {
                        namespace: (kind == "rolebindings").then(|| ns_of(v)),
                        cluster_role,
                        role,
                        binding: name_of(v),
                    };
                    for s in subjects_of(v) {
                        ix.grants.entry(s).or_default().push(grant.clone());
                    }
                }
                _ => {}
            }
        }
        ix
    }

    fn rules(&self, g: &Grant) -> Option<&Arc<Vec<Rule>>> {
        if g.cluster_role {
            self.cluster_roles.get(&g.role)
        } else {
            self.roles
                .get(&(g.namespace.clone().unwrap_or_default(), g.role.clone()))
        }
    }

    fn grants_of<'a>(&'a self, user: &'a User) -> impl Iterator<Item = &'a Grant> + 'a {
        std::iter::once(Subject::User(user.name.clone()))
            .chain(user.groups.iter().cloned().map(Subject::Group))
            .filter_map(|s| self.grants.get(&s))
            .flatten()
    }
}

/// Why RBAC allowed a request (for audit annotations), or None.
pub type Reason = Option<String>;

/// The authorizer: the index, and a flag that turns true once the first list is in.
#[derive(Clone)]
pub struct Rbac {
    index: Arc<RwLock<Arc<Index>>>,
    ready: watch::Receiver<bool>,
    ready_tx: Arc<watch::Sender<bool>>,
}

impl Default for Rbac {
    fn default() -> Self {
        Rbac::new()
    }
}

impl Rbac {
    pub fn new() -> Rbac {
        let (tx, rx) = watch::channel(false);
        Rbac {
            index: Arc::new(RwLock::new(Arc::new(Index::default()))),
            ready: rx,
            ready_tx: Arc::new(tx),
        }
    }

    fn snapshot(&self) -> Arc<Index> {
        match self.index.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, objects: &BTreeMap<String, Value>) {
        let ix = Arc::new(Index::build(objects));
        match self.index.write() {
            Ok(mut g) => *g = ix,
            Err(p) => *p.into_inner() = ix,
        }
        self.ready_tx.send_replace(true);
    }

    /// Waits until the index holds the store's RBAC objects.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.clone();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether RBAC allows `a` for `user`: the allowing binding's description, or None.
    pub fn allows(&self, user: &User, a: &Attrs) -> Reason {
        let ix = self.snapshot();
        for g in ix.grants_of(user) {
            if let Some(ns) = &g.namespace
                && *ns != a.namespace
            {
                continue;
            }
            if ix
                .rules(g)
                .is_some_and(|rules| rules.iter().any(|r| r.allows(a)))
            {
                return Some(match &g.namespace {
                    None => format!(
                        "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{}\"",
                        g.binding, g.role
                    ),
                    Some(ns) => format!(
                        "RBAC: allowed by RoleBinding \"{}/{ns}\" of {} \"{}\"",
                        g.binding,
                        if g.cluster_role {
                            "ClusterRole"
                        } else {
                            "Role"
                        },
                        g.role
                    ),
                });
            }
        }
        None
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones included), for
    /// SelfSubjectRulesReview.
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<Rule> {
        let ix = self.snapshot();
        let mut out: Vec<Rule> = Vec::new();
        for g in ix.grants_of(user) {
            if g.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                continue;
            }
            for r in ix.rules(g).map(|r| r.iter()).into_iter().flatten() {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// Follows the store's RBAC objects until `shutdown`: one list, then a watch; a broken
    /// or compacted watch starts over with a fresh list.
    pub async fn run(self, store: Arc<dyn Store>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let mut objects = BTreeMap::new();
            let mut revs: HashMap<String, i64> = HashMap::new();
            let listed = store.list(RBAC_PREFIX, ListOptions::default()).await;
            let rev = match listed {
                Ok(l) => {
                    for kv in l.kvs {
                        if let Ok(v) = serde_json::from_slice::<Value>(&kv.value) {
                            revs.insert(kv.key.clone(), kv.mod_revision);
                            objects.insert(kv.key, v);
                        }
                    }
                    l.revision
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing RBAC objects");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            self.set(&objects);
            write_aggregated(store.as_ref(), &objects, &revs).await;
            let mut stream = match store.watch(RBAC_PREFIX, rev).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "watching RBAC objects");
                    continue;
                }
            };
            loop {
                let item = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    item = stream.next() => item,
                };
                let mut changed = false;
                match item {
                    Some(Ok(WatchItem::Event(ev))) => {
                        changed = true;
                        match ev.kind {
                            EventKind::Put => {
                                if let Ok(v) = serde_json::from_slice::<Value>(&ev.kv.value) {
                                    revs.insert(ev.kv.key.clone(), ev.kv.mod_revision);
                                    objects.insert(ev.kv.key, v);
                                }
                            }
                            EventKind::Delete => {
                                revs.remove(&ev.kv.key);
                                objects.remove(&ev.kv.key);
                            }
                        }
                    }
                    Some(Ok(WatchItem::Progress(_))) => {}
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "RBAC watch ended; listing again");
                        break;
                    }
                    None => break,
                }
                // Apply a burst of events in one rebuild.
                while let Some(Some(Ok(WatchItem::Event(ev)))) =
                    futures::FutureExt::now_or_never(stream.next())
                {
                    changed = true;
                    match ev.kind {
                        EventKind::Put => {
                            if let Ok(v) = serde_json::from_slice::<Value>(&ev.kv.value) {
                                revs.insert(ev.kv.key.clone(), ev.kv.mod_revision);
                                objects.insert(ev.kv.key, v);
                            }
                        }
                        EventKind::Delete => {
                            revs.remove(&ev.kv.key);
                            objects.remove(&ev.kv.key);
                        }
                    }
                }
                if changed {
                    self.set(&objects);
                    write_aggregated(store.as_ref(), &objects, &revs).await;
                }
            }
        }
    }
}

/// Kubernetes' ClusterRole aggregation controller: writes the aggregated rules into each
/// ClusterRole with an `aggregationRule` whose stored rules differ (so `kubectl get
/// clusterrole view -o yaml` shows them). A conflicting write is left to the next event.
async fn write_aggregated(
    store: &dyn Store,
    objects: &BTreeMap<String, Value>,
    revs: &HashMap<String, i64>,
) {
    let prefix = format!("{RBAC_PREFIX}clusterroles/");
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .collect();
    for (key, role) in objects.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let Some(rules) = aggregated_rules(role, &roles) else {
            continue;
        };
        if rules_of(role) == rules {
            continue;
        }
        let mut updated = role.clone();
        updated["rules"] = Value::Array(rules.iter().map(Rule::to_json).collect());
        let Ok(bytes) = serde_json::to_vec(&updated) else {
            continue;
        };
        if let Err(e) = store
            .update(key, bytes.into(), revs.get(key).copied(), None)
            .await
        {
            tracing::debug!(key, error = %e, "writing aggregated rules");
        }
    }
}

/// Kubernetes' 403 message for a denied request.
pub fn forbidden_message(user: &User, a: &Attrs, reason: &str) -> String {
    let who = format!("User \"{}\"", user.name);
    let suffix = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    if !a.resource_request {
        return format!(
            "forbidden: {who} cannot {} path \"{}\"{suffix}",
            a.verb, a.path
        );
    }
    let qualified = if a.api_group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.api_group)
    };
    let subject = if a.name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} \"{}\" is forbidden", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    format!(
        "{subject}: {who} cannot {} resource \"{}\" in API group \"{}\" {scope}{suffix}",
        a.verb,
        a.combined_resource(),
        a.api_group
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn objs(list: Vec<(&str, Value)>) -> BTreeMap<String, Value> {
        list.into_iter()
            .map(|(k, v)| (format!("{RBAC_PREFIX}{k}"), v))
            .collect()
    }

    #[test]
    fn rule_matching() {
        let r = Rule::from_json(&json!({"verbs": ["get", "list"], "apiGroups": [""],
            "resources": ["pods", "pods/log"], "resourceNames": []}));
        assert!(r.allows(&Attrs::resource("get", "", "pods", "", "ns", "x")));
        assert!(r.allows(&Attrs::resource("get", "", "pods", "log", "ns", "x")));
        assert!(!r.allows(&Attrs::resource("create", "", "pods", "exec", "ns", "x")));
        assert!(!r.allows(&Attrs::resource("get", "apps", "pods", "", "ns", "x")));
        let star =
            Rule::from_json(&json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]}));
        assert!(star.allows(&Attrs::resource(
            "update",
            "apps",
            "deployments",
            "scale",
            "",
            "d"
        )));
        assert!(!star.allows(&Attrs::resource(
            "update",
            "apps",
            "deployments",
            "",
            "",
            "d"
        )));
        let named = Rule::from_json(&json!({"verbs": ["get"], "apiGroups": [""],
            "resources": ["secrets"], "resourceNames": ["a"]}));
        assert!(named.allows(&Attrs::resource("get", "", "secrets", "", "n", "a")));
        assert!(!named.allows(&Attrs::resource("get", "", "secrets", "", "n", "b")));
        assert!(!named.allows(&Attrs::resource("list", "", "secrets", "", "n", "")));
        let urls =
            Rule::from_json(&json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
        let mut a = Attrs {
            verb: "get".into(),
            path: "/apis/apps/v1".into(),
            ..Attrs::default()
        };
        assert!(urls.allows(&a));
        a.path = "/metrics".into();
        assert!(!urls.allows(&a));
    }

    #[test]
    fn bindings_and_aggregation() {
        let rbac = Rbac::new();
        rbac.set(&objs(vec![
            ("roles/dev/pod-reader", json!({"metadata": {"name": "pod-reader", "namespace": "dev"},
                "rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]})),
            ("rolebindings/dev/rb", json!({"metadata": {"name": "rb", "namespace": "dev"},
                "roleRef": {"kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "default"}]})),
            ("clusterroles/view", json!({"metadata": {"name": "view"},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]}})),
            ("clusterroles/extra", json!({"metadata": {"name": "extra", "labels": {"agg": "view"}},
                "rules": [{"verbs": ["get"], "apiGroups": ["apps"], "resources": ["deployments"]}]})),
            ("clusterrolebindings/viewers", json!({"metadata": {"name": "viewers"},
                "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "name": "viewers"}]})),
        ]));
        let sa = user("system:serviceaccount:dev:default", &[]);
        assert!(
            rbac.allows(&sa, &Attrs::resource("list", "", "pods", "", "dev", ""))
                .is_some()
        );
        assert!(
            rbac.allows(&sa, &Attrs::resource("list", "", "pods", "", "prod", ""))
                .is_none()
        );
        let v = user("ann", &["viewers"]);
        assert!(
            rbac.allows(
                &v,
                &Attrs::resource("get", "apps", "deployments", "", "x", "d")
            )
            .is_some()
        );
        assert!(
            rbac.allows(
                &v,
                &Attrs::resource("delete", "apps", "deployments", "", "x", "d")
            )
            .is_none()
        );
        assert_eq!(rbac.rules_for(&sa, "dev").len(), 1);
        assert!(rbac.rules_for(&sa, "prod").is_empty());
    }

    #[test]
    fn messages() {
        let u = user("system:serviceaccount:dev:default", &[]);
        assert_eq!(
            forbidden_message(&u, &Attrs::resource("list", "", "pods", "", "dev", ""), ""),
            "pods is forbidden: User \"system:serviceaccount:dev:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"dev\""
        );
        assert_eq!(
            forbidden_message(
                &u,
                &Attrs::resource("get", "apps", "deployments", "scale", "", "d"),
                ""
            ),
            "deployments.apps \"d\" is forbidden: User \"system:serviceaccount:dev:default\" cannot get resource \"deployments/scale\" in API group \"apps\" at the cluster scope"
        );
    }
}
