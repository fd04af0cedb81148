//! ResourceQuota and LimitRange admission, as Kubernetes' admission plugins of the same
//! names: LimitRange fills in container defaults and enforces min/max/ratio on pods;
//! ResourceQuota refuses a create that would exceed a quota of the namespace (403 with
//! Kubernetes' "exceeded quota" message) and keeps each quota's `status.used` current.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bosun_api::KindInfo;
use bosun_api::validation::parse_quantity;
use bosun_store::ListOptions;
use serde_json::{Map, Value, json};

use crate::Inner;
use crate::error::{ApiError, ApiResult};
use crate::objects::meta::{decode_kv, meta_str};
use crate::objects::update::{Mode, update_loop};

const COMPUTE: [&str; 6] = [
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
    "cpu",
    "memory",
];

async fn list_ns(inner: &Inner, plural: &str, ns: &str) -> ApiResult<Vec<Value>> {
    let prefix = format!("/registry/core/{plural}/{ns}/");
    let page = inner
        .store
        .list(&prefix, ListOptions::default())
        .await
        .map_err(ApiError::store)?;
    page.kvs.iter().map(decode_kv).collect()
}

fn is_pod(kind: &KindInfo) -> bool {
    kind.group.is_empty() && kind.kind == "Pod"
}

/// Usage reserved by creates of this server that passed admission and are not written yet,
/// per namespace and reservation. The status rewrite counts them, so a recount that runs
/// between a reservation and its write does not hand the same room out twice.
#[derive(Default)]
pub(crate) struct Pending {
    /// Serializes this server's quota admissions and status recounts, so a recount never
    /// falls between a reservation's compare-and-swap and its entry here.
    lock: tokio::sync::Mutex<()>,
    next: AtomicU64,
    /// Namespace -> reservation id -> resource -> amount.
    by_ns: Mutex<HashMap<String, HashMap<u64, Usage>>>,
}

/// Amounts by resource name (`pods`, `requests.cpu`, ...).
type Usage = BTreeMap<String, f64>;

impl Pending {
    fn sum(&self, ns: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let by_ns = self.by_ns.lock().unwrap_or_else(|e| e.into_inner());
        for delta in by_ns.get(ns).into_iter().flat_map(HashMap::values) {
            for (r, n) in delta {
                *out.entry(r.clone()).or_insert(0.0) += n;
            }
        }
        out
    }
}

/// What admission reserved in the namespace's quotas. Dropped when the create is over
/// (written or failed): the reservation leaves [`Pending`] and the quotas' `status.used` is
/// recounted from the store, which then holds the object or not.
pub(crate) struct Admitted {
    inner: Arc<Inner>,
    ns: String,
    id: Option<u64>,
    /// Quotas changed (a quota was created): their status must be filled in.
    touch: bool,
}

impl Admitted {
    /// Whether the write should be followed by a recount of the namespace's quotas.
    pub(crate) fn touches(&self) -> bool {
        self.touch || self.id.is_some()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut by_ns = self
                .inner
                .quota_pending
                .by_ns
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(m) = by_ns.get_mut(&self.ns) {
                m.remove(&id);
                if m.is_empty() {
                    by_ns.remove(&self.ns);
                }
            }
            drop(by_ns);
            if tokio::runtime::Handle::try_current().is_ok() {
                touch(&self.inner, &self.ns);
            }
        }
    }
}

/// Admission of a new object in `ns`: LimitRange (pods), then ResourceQuota. Unless
/// `dry_run`, the object's usage is added to each quota's `status.used` with a
/// compare-and-swap on the quota before the object is written, as Kubernetes' quota
/// admission does: of two concurrent creates that fit only one at a time, the second sees
/// the first's reservation (or loses the swap and looks again) and is refused.
pub(crate) async fn admit(
    inner: &Arc<Inner>,
    kind: &KindInfo,
    ns: &str,
    obj: &mut Value,
    dry_run: bool,
) -> ApiResult<Admitted> {
    let mut admitted = Admitted {
        inner: inner.clone(),
        ns: ns.to_string(),
        id: None,
        touch: false,
    };
    let name = meta_str(obj, "name")
        .or_else(|| meta_str(obj, "generateName"))
        .unwrap_or_default()
        .to_string();
    if is_pod(kind) {
        let ranges = list_ns(inner, "limitranges", ns).await?;
        let mut errs = Vec::new();
        for lr in &ranges {
            limit_range(lr, obj, &mut errs);
        }
        if !errs.is_empty() {
            let msg = if errs.len() == 1 {
                errs.remove(0)
            } else {
                format!("[{}]", errs.join(", "))
            };
            return Err(ApiError::forbidden(kind, &name, &msg));
        }
    }
    let quotas = list_ns(inner, "resourcequotas", ns).await?;
    admitted.touch = !dry_run && kind.plural == "resourcequotas" && kind.group.is_empty();
    if quotas.is_empty() {
        return Ok(admitted);
    }
    let delta = usage_of(kind, obj);
    let _serial = inner.quota_pending.lock.lock().await;
    let mut reserve = Vec::new();
    for q in &quotas {
        let qname = meta_str(q, "name").unwrap_or_default();
        let hard = hard_of(q);
        if is_pod(kind) {
            let missing = missing_compute(&hard, obj);
            if !missing.is_empty() {
                return Err(ApiError::forbidden(
                    kind,
                    &name,
                    &format!("failed quota: {qname}: must specify {}", missing.join("; ")),
                ));
            }
        }
        let relevant: Vec<&String> = hard.keys().filter(|r| delta.contains_key(*r)).collect();
        if relevant.is_empty() {
            continue;
        }
        let mut used = usage_in(inner, ns, &hard).await?;
        for (r, n) in inner.quota_pending.sum(ns) {
            if let Some(u) = used.get_mut(&r) {
                *u += n;
            }
        }
        exceeds(kind, &name, qname, &hard, &delta, &used)?;
        reserve.push((qname.to_string(), used));
    }
    if dry_run || reserve.is_empty() {
        return Ok(admitted);
    }
    let Some(quota_kind) = inner.registry.by_resource("", "v1", "resourcequotas") else {
        return Ok(admitted);
    };
    let id = inner.quota_pending.next.fetch_add(1, Ordering::Relaxed);
    inner
        .quota_pending
        .by_ns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(ns.to_string())
        .or_default()
        .insert(id, delta.clone());
    admitted.id = Some(id);
    for (qname, counted) in reserve {
        let res = update_loop(
            inner,
            quota_kind,
            Some(ns),
            &qname,
            Mode::Status,
            false,
            |cur| {
                let hard = hard_of(cur);
                // The recorded usage holds reservations of other servers' creates still in
                // flight; the count from the store holds what was written since.
                let mut used = used_of(cur);
                for (r, n) in &counted {
                    let u = used.entry(r.clone()).or_insert(0.0);
                    *u = u.max(*n);
                }
                exceeds(kind, &name, &qname, &hard, &delta, &used)?;
                let mut next = cur.clone();
                let mut used_json = Map::new();
                for r in hard.keys() {
                    let n =
                        used.get(r).copied().unwrap_or(0.0) + delta.get(r).copied().unwrap_or(0.0);
                    used_json.insert(r.clone(), json!(show(r, n)));
                }
                next["status"] = json!({
                    "hard": cur.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({})),
                    "used": used_json,
                });
                Ok(next)
            },
        )
        .await;
        match res {
            Ok(_) => {}
            // A quota deleted meanwhile limits nothing.
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(admitted)
}

/// Kubernetes' 403 when `delta` on top of `used` goes over a `hard` limit it counts toward.
fn exceeds(
    kind: &KindInfo,
    name: &str,
    qname: &str,
    hard: &BTreeMap<String, f64>,
    delta: &BTreeMap<String, f64>,
    used: &BTreeMap<String, f64>,
) -> ApiResult<()> {
    let over: Vec<&String> = hard
        .keys()
        .filter(|r| delta.contains_key(*r))
        .filter(|r| used.get(*r).copied().unwrap_or(0.0) + delta[*r] > hard[*r] + 1e-9)
        .collect();
    if over.is_empty() {
        return Ok(());
    }
    let list = |m: &dyn Fn(&str) -> f64| {
        over.iter()
            .map(|r| format!("{r}={}", show(r, m(r))))
            .collect::<Vec<_>>()
            .join(",")
    };
    let msg = format!(
        "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
        list(&|r| delta[r]),
        list(&|r| used.get(r).copied().unwrap_or(0.0)),
        list(&|r| hard[r]),
    );
    Err(ApiError::forbidden(kind, name, &msg))
}

/// `status.used` as numbers.
fn used_of(q: &Value) -> BTreeMap<String, f64> {
    q.pointer("/status/used")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| qty(v).map(|n| (k.clone(), n)))
        .collect()
}

/// `spec.hard` as numbers (cpu in cores, memory in bytes, counts as counts).
fn hard_of(q: &Value) -> BTreeMap<String, f64> {
    q.pointer("/spec/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            parse_quantity(&s).map(|n| (k.clone(), n))
        })
        .collect()
}

/// Kubernetes' canonical rendering of an amount of `resource`.
fn show(resource: &str, x: f64) -> String {
    let memory = resource.ends_with("memory") || resource.ends_with("storage");
    if memory {
        let b = x.round() as i64;
        for (unit, f) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if b != 0 && b % f == 0 {
                return format!("{}{unit}", b / f);
            }
        }
        return b.to_string();
    }
    let milli = (x * 1000.0).round() as i64;
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

fn containers(pod: &Value, field: &str) -> Vec<Value> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn amount(c: &Value, section: &str, res: &str) -> Option<f64> {
    c.pointer(&format!("/resources/{section}/{res}"))
        .and_then(|v| match v {
            Value::String(s) => parse_quantity(s),
            other => parse_quantity(&other.to_string()),
        })
}

/// A pod's effective requests or limits of one resource: the larger of the sum over
/// containers and the largest init container, as the scheduler and quota count.
fn pod_amount(pod: &Value, section: &str, res: &str) -> f64 {
    let sum: f64 = containers(pod, "containers")
        .iter()
        .filter_map(|c| amount(c, section, res))
        .sum();
    let init = containers(pod, "initContainers")
        .iter()
        .filter_map(|c| amount(c, section, res))
        .fold(0.0, f64::max);
    sum.max(init)
}

fn terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// What one object adds to each quota resource it counts toward.
fn usage_of(kind: &KindInfo, obj: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let count = if kind.group.is_empty() {
        format!("count/{}", kind.plural)
    } else {
        format!("count/{}.{}", kind.plural, kind.group)
    };
    out.insert(count, 1.0);
    if kind.group.is_empty() {
        match kind.plural {
            "pods"
            | "services"
            | "configmaps"
            | "secrets"
            | "persistentvolumeclaims"
            | "resourcequotas"
            | "replicationcontrollers" => {
                out.insert(kind.plural.to_string(), 1.0);
            }
            _ => {}
        }
    }
    if is_pod(kind) && !terminal(obj) {
        for res in ["cpu", "memory"] {
            let req = pod_amount(obj, "requests", res);
            out.insert(format!("requests.{res}"), req);
            out.insert(res.to_string(), req);
            out.insert(format!("limits.{res}"), pod_amount(obj, "limits", res));
        }
    }
    if kind.group.is_empty() && kind.plural == "services" {
        match obj.pointer("/spec/type").and_then(Value::as_str) {
            Some("LoadBalancer") => {
                out.insert("services.loadbalancers".into(), 1.0);
                out.insert("services.nodeports".into(), 1.0);
            }
            Some("NodePort") => {
                out.insert("services.nodeports".into(), 1.0);
            }
            _ => {}
        }
    }
    if kind.group.is_empty() && kind.plural == "persistentvolumeclaims" {
        let s = obj
            .pointer("/spec/resources/requests/storage")
            .and_then(Value::as_str)
            .and_then(parse_quantity)
            .unwrap_or(0.0);
        out.insert("requests.storage".into(), s);
    }
    out
}

/// "limits.cpu for: app" for each compute resource a quota limits that a
/// container leaves unset.
fn missing_compute(hard: &BTreeMap<String, f64>, pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    // Sorted, as Kubernetes lists them.
    for res in hard.keys().filter(|r| COMPUTE.contains(&r.as_str())) {
        let (section, name) = match res.split_once('.') {
            Some((s, n)) => (s, n),
            None => ("requests", res.as_str()),
        };
        let missing: Vec<String> = containers(pod, "containers")
            .iter()
            .filter(|c| amount(c, section, name).is_none())
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
            .collect();
        if !missing.is_empty() {
            out.push(format!("{res} for: {}", missing.join(",")));
        }
    }
    out
}

/// The namespace's current usage of the resources in `hard`.
async fn usage_in(
    inner: &Inner,
    ns: &str,
    hard: &BTreeMap<String, f64>,
) -> ApiResult<BTreeMap<String, f64>> {
    let mut used: BTreeMap<String, f64> = hard.keys().map(|k| (k.clone(), 0.0)).collect();
    let mut kinds: Vec<&'static KindInfo> = Vec::new();
    for r in hard.keys() {
        let (plural, group) = match r.strip_prefix("count/") {
            Some(rest) => match rest.split_once('.') {
                Some((p, g)) => (p.to_string(), g.to_string()),
                None => (rest.to_string(), String::new()),
            },
            None if COMPUTE.contains(&r.as_str()) => ("pods".into(), String::new()),
            None if r.starts_with("services") => ("services".into(), String::new()),
            None if r == "requests.storage" => ("persistentvolumeclaims".into(), String::new()),
            None => (r.clone(), String::new()),
        };
        if let Some(k) = inner
            .registry
            .kinds
            .iter()
            .find(|k| k.group == group && k.plural == plural && k.namespaced)
            && !kinds.iter().any(|x| std::ptr::eq(*x, k))
        {
            kinds.push(k);
        }
    }
    for k in kinds {
        let page = inner
            .store
            .list(&format!("{}{ns}/", k.key_prefix()), ListOptions::default())
            .await
            .map_err(ApiError::store)?;
        for kv in &page.kvs {
            let o = decode_kv(kv)?;
            for (r, n) in usage_of(k, &o) {
                if let Some(u) = used.get_mut(&r) {
                    *u += n;
                }
            }
        }
    }
    Ok(used)
}

/// Writes `status.hard` and `status.used` of every quota in `ns` (after creates and
/// deletes there, and when a quota is written).
pub(crate) async fn refresh_status(inner: &Arc<Inner>, ns: &str) -> ApiResult<()> {
    let Some(kind) = inner.registry.by_resource("", "v1", "resourcequotas") else {
        return Ok(());
    };
    let quotas = list_ns(inner, "resourcequotas", ns).await?;
    if quotas.is_empty() {
        return Ok(());
    }
    let _serial = inner.quota_pending.lock.lock().await;
    // Read again under the lock: a reservation may have changed them meanwhile.
    let quotas = list_ns(inner, "resourcequotas", ns).await?;
    for q in quotas {
        let name = meta_str(&q, "name").unwrap_or_default().to_string();
        let hard = hard_of(&q);
        let mut used = usage_in(inner, ns, &hard).await?;
        for (r, n) in inner.quota_pending.sum(ns) {
            if let Some(u) = used.get_mut(&r) {
                *u += n;
            }
        }
        let used_json: Map<String, Value> = used
            .iter()
            .map(|(r, n)| (r.clone(), json!(show(r, *n))))
            .collect();
        let status = json!({
            "hard": q.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({})),
            "used": used_json,
        });
        if q.get("status") == Some(&status) {
            continue;
        }
        let res = update_loop(inner, kind, Some(ns), &name, Mode::Status, false, |cur| {
            let mut next = cur.clone();
            next["status"] = status.clone();
            Ok(next)
        })
        .await;
        match res {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Recomputes quota status in the background after a write in `ns`.
pub(crate) fn touch(inner: &Arc<Inner>, ns: &str) {
    let inner = inner.clone();
    let ns = ns.to_string();
    tokio::spawn(async move {
        if let Err(e) = refresh_status(&inner, &ns).await {
            tracing::debug!(namespace = %ns, error = %e, "resource quota status not updated");
        }
    });
}

// ---------------------------------------------------------------- LimitRange

fn qty(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => parse_quantity(s),
        other => parse_quantity(&other.to_string()),
    }
}

fn qty_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Applies one LimitRange to a pod: container defaults, then the bounds.
fn limit_range(lr: &Value, pod: &mut Value, errs: &mut Vec<String>) {
    let limits = lr
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in &limits {
        let ty = item.get("type").and_then(Value::as_str).unwrap_or_default();
        if ty == "Container" {
            let default = item.get("default").and_then(Value::as_object);
            // SetDefaults_LimitRangeItem: each resource of `default` missing from
            // `defaultRequest` takes its value from `default`.
            let mut merged = default.cloned().unwrap_or_default();
            if let Some(r) = item.get("defaultRequest").and_then(Value::as_object) {
                merged.extend(r.clone());
            }
            let default_request = (!merged.is_empty()).then_some(&merged);
            for field in ["initContainers", "containers"] {
                let Some(cs) = pod
                    .pointer_mut(&format!("/spec/{field}"))
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    let res = c
                        .entry("resources")
                        .or_insert_with(|| json!({}))
                        .as_object_mut();
                    let Some(res) = res else { continue };
                    for (section, defaults) in [("limits", default), ("requests", default_request)]
                    {
                        let Some(defaults) = defaults else { continue };
                        let sec = res.entry(section).or_insert_with(|| json!({}));
                        if let Some(sec) = sec.as_object_mut() {
                            for (k, v) in defaults {
                                sec.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                        }
                    }
                }
            }
            for c in containers(pod, "containers")
                .iter()
                .chain(containers(pod, "initContainers").iter())
            {
                check_bounds(
                    item,
                    "Container",
                    |section, res| amount(c, section, res),
                    errs,
                );
            }
        } else if ty == "Pod" {
            let p = pod.clone();
            check_bounds(
                item,
                "Pod",
                |section, res| {
                    let any = containers(&p, "containers")
                        .iter()
                        .any(|c| amount(c, section, res).is_some());
                    any.then(|| pod_amount(&p, section, res))
                },
                errs,
            );
        }
    }
}

/// min, max and maxLimitRequestRatio of one LimitRange item, with Kubernetes' messages.
fn check_bounds(
    item: &Value,
    scope: &str,
    get: impl Fn(&str, &str) -> Option<f64>,
    errs: &mut Vec<String>,
) {
    let map = |k: &str| item.get(k).and_then(Value::as_object).cloned();
    if let Some(min) = map("min") {
        for (res, v) in &min {
            let Some(bound) = qty(v) else { continue };
            match get("requests", res) {
                None => errs.push(format!(
                    "minimum {res} usage per {scope} is {}.  No request is specified",
                    qty_str(v)
                )),
                Some(r) if r < bound => errs.push(format!(
                    "minimum {res} usage per {scope} is {}, but request is {}",
                    qty_str(v),
                    show(res, r)
                )),
                _ => {}
            }
        }
    }
    if let Some(max) = map("max") {
        for (res, v) in &max {
            let Some(bound) = qty(v) else { continue };
            match get("limits", res) {
                None => errs.push(format!(
                    "maximum {res} usage per {scope} is {}.  No limit is specified",
                    qty_str(v)
                )),
                Some(l) if l > bound => errs.push(format!(
                    "maximum {res} usage per {scope} is {}, but limit is {}",
                    qty_str(v),
                    show(res, l)
                )),
                _ => {}
            }
        }
    }
    if let Some(ratio) = map("maxLimitRequestRatio") {
        for (res, v) in &ratio {
            let Some(bound) = qty(v) else { continue };
            if let (Some(l), Some(r)) = (get("limits", res), get("requests", res))
                && r > 0.0
                && l / r > bound
            {
                errs.push(format!(
                    "{res} max limit to request ratio per {scope} is {}, but provided ratio is {:.6}",
                    qty_str(v),
                    l / r
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_render_as_kubernetes_does() {
        assert_eq!(show("requests.cpu", 0.5), "500m");
        assert_eq!(show("limits.cpu", 2.0), "2");
        assert_eq!(show("requests.memory", 1073741824.0), "1Gi");
        assert_eq!(show("pods", 3.0), "3");
    }

    #[test]
    fn limit_range_defaults_and_bounds() {
        let lr = json!({"spec": {"limits": [{"type": "Container",
            "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"},
            "max": {"memory": "1Gi"}, "min": {"cpu": "50m"}}]}});
        let mut pod = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"memory": "2Gi"}}}]}});
        let mut errs = Vec::new();
        limit_range(&lr, &mut pod, &mut errs);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "500m"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "100m"
        );
        assert_eq!(
            errs,
            vec!["maximum memory usage per Container is 1Gi, but limit is 2Gi"]
        );
    }

    #[test]
    fn pods_without_requests_name_what_is_missing() {
        let hard: BTreeMap<String, f64> = [
            ("requests.cpu".to_string(), 1.0),
            ("limits.memory".to_string(), 1e9),
        ]
        .into();
        let pod = json!({"spec": {"containers": [{"name": "web"}, {"name": "side", "resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(
            missing_compute(&hard, &pod),
            vec!["limits.memory for: web,side", "requests.cpu for: web"]
        );
    }
}
