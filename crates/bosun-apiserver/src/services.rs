//! ClusterIP and NodePort allocation for Services, as Kubernetes' service registry does.
//!
//! Each allocated address or port is reserved by creating a key under
//! `/registry/ranges/` (create fails if the key exists), so two concurrent creates can
//! never get the same one; the key is deleted with the Service.

use std::net::Ipv4Addr;
use std::sync::Arc;

use bosun_api::FieldError;
use bosun_store::StoreError;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::Inner;
use crate::error::{ApiError, ApiResult};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// An IPv4 range to allocate ClusterIPs from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpRange {
    base: u32,
    size: u32,
}

impl IpRange {
    pub fn new(cidr: ipnet::Ipv4Net) -> anyhow::Result<IpRange> {
        if !(8..=30).contains(&cidr.prefix_len()) {
            anyhow::bail!("service CIDR {cidr}: prefix length must be between 8 and 30");
        }
        let size = 1u32 << (32 - cidr.prefix_len());
        Ok(IpRange {
            base: u32::from(cidr.network()),
            size,
        })
    }

    /// Usable addresses: not the network or broadcast address, and not the first host,
    /// which Kubernetes keeps for the API server's own Service.
    fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.base + 2 && v < self.base + self.size - 1
    }

    /// The first host address, kept for the `kubernetes` Service in `default`.
    fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 2 + n % (self.size - 3))
    }
}

fn invalid(obj: &Value, field: &str, value: &str, msg: &str) -> ApiError {
    let kind = bosun_api::Registry::builtin()
        .by_resource("", "v1", "services")
        .expect("services kind");
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ApiError::invalid(
        kind,
        name,
        &[FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {msg}"),
        }],
    )
}

fn owner(obj: &Value) -> Bytes {
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Bytes::from(format!("{ns}/{name}"))
}

async fn reserve(inner: &Inner, key: &str, owner: Bytes) -> ApiResult<bool> {
    match inner.store.create(key, owner, None).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(ApiError::store(e)),
    }
}

fn needs_node_ports(obj: &Value) -> bool {
    matches!(
        obj.pointer("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

/// Assigns `spec.clusterIP(s)` and node ports to a new Service. Returns the reserved
/// keys, which the caller releases if the create fails.
pub(crate) async fn allocate(inner: &Arc<Inner>, obj: &mut Value) -> ApiResult<Vec<String>> {
    let mut reserved = Vec::new();
    match allocate_inner(inner, obj, &mut reserved).await {
        Ok(()) => Ok(reserved),
        Err(e) => {
            release_keys(inner, &reserved).await;
            Err(e)
        }
    }
}

async fn allocate_inner(
    inner: &Arc<Inner>,
    obj: &mut Value,
    reserved: &mut Vec<String>,
) -> ApiResult<()> {
    let who = owner(obj);
    let ty = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        let asked = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if asked != "None" {
            let range = inner.service_range;
            let ip = if asked.is_empty() {
                let start = uuid::Uuid::new_v4().as_u128() as u32;
                let mut found = None;
                for i in 0..range.size.saturating_sub(3) {
                    let ip = range.nth(start.wrapping_add(i));
                    let key = format!("{IP_PREFIX}{ip}");
                    if reserve(inner, &key, who.clone()).await? {
                        reserved.push(key);
                        found = Some(ip);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    ApiError::internal("failed to allocate a service IP: the range is full")
                })?
            } else {
                let ip: Ipv4Addr = asked.parse().map_err(|_| {
                    invalid(
                        obj,
                        "spec.clusterIP",
                        &format!("{asked:?}"),
                        "must be a valid IP address",
                    )
                })?;
                let api_service = ip == range.first_host() && who.as_ref() == b"default/kubernetes";
                if !range.contains(ip) && !api_service {
                    return Err(invalid(
                        obj,
                        "spec.clusterIP",
                        &format!("{asked:?}"),
                        "provided IP is not in the valid range",
                    ));
                }
                let key = format!("{IP_PREFIX}{ip}");
                if !reserve(inner, &key, who.clone()).await? {
                    return Err(invalid(
                        obj,
                        "spec.clusterIP",
                        &format!("{asked:?}"),
                        "provided IP is already allocated",
                    ));
                }
                reserved.push(key);
                ip
            };
            obj["spec"]["clusterIP"] = json!(ip.to_string());
            obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
        } else {
            obj["spec"]["clusterIPs"] = json!(["None"]);
        }
    }
    if needs_node_ports(obj) {
        let (lo, hi) = inner.node_port_range;
        let span = u32::from(hi - lo) + 1;
        let n = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(Vec::len)
            .unwrap_or(0);
        for i in 0..n {
            let asked = obj["spec"]["ports"][i]["nodePort"].as_i64().unwrap_or(0);
            let port = if asked == 0 {
                let start = uuid::Uuid::new_v4().as_u128() as u32;
                let mut found = None;
                for j in 0..span {
                    let port = lo as u32 + (start.wrapping_add(j) % span);
                    let key = format!("{PORT_PREFIX}{port}");
                    if reserve(inner, &key, who.clone()).await? {
                        reserved.push(key);
                        found = Some(port);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    ApiError::internal("failed to allocate a node port: the range is full")
                })?
            } else {
                let field = format!("spec.ports[{i}].nodePort");
                if asked < i64::from(lo) || asked > i64::from(hi) {
                    return Err(invalid(
                        obj,
                        &field,
                        &asked.to_string(),
                        &format!(
                            "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                        ),
                    ));
                }
                let key = format!("{PORT_PREFIX}{asked}");
                if !reserve(inner, &key, who.clone()).await? {
                    return Err(invalid(
                        obj,
                        &field,
                        &asked.to_string(),
                        "provided port is already allocated",
                    ));
                }
                reserved.push(key);
                asked as u32
            };
            obj["spec"]["ports"][i]["nodePort"] = json!(port);
        }
    }
    Ok(())
}

async fn release_keys(inner: &Inner, keys: &[String]) {
    for k in keys {
        if let Err(e) = inner.store.delete(k, None).await
            && !matches!(e, StoreError::NotFound(_))
        {
            tracing::warn!(key = %k, error = %e, "releasing a service allocation failed");
        }
    }
}

/// The reservation keys a stored Service holds.
fn keys_of(obj: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str)
        && ip.parse::<Ipv4Addr>().is_ok()
    {
        keys.push(format!("{IP_PREFIX}{ip}"));
    }
    for p in obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && np > 0
        {
            keys.push(format!("{PORT_PREFIX}{np}"));
        }
    }
    keys
}

/// Frees what a deleted Service held (only reservations it still owns).
pub(crate) async fn release(inner: &Inner, obj: &Value) {
    let who = owner(obj);
    let mut mine = Vec::new();
    for k in keys_of(obj) {
        if let Ok(Some(kv)) = inner.store.get(&k).await
            && kv.value == who
        {
            mine.push(k);
        }
    }
    release_keys(inner, &mine).await;
}

/// Frees the reservations an update dropped (ports removed, type changed).
pub(crate) async fn release_dropped(inner: &Inner, old: &Value, new: &Value) {
    let keep = keys_of(new);
    let who = owner(old);
    let mut dropped = Vec::new();
    for k in keys_of(old) {
        if !keep.contains(&k)
            && let Ok(Some(kv)) = inner.store.get(&k).await
            && kv.value == who
        {
            dropped.push(k);
        }
    }
    release_keys(inner, &dropped).await;
}

/// On update, a Service keeps its ClusterIP and the node ports of ports it keeps, as
/// Kubernetes does when the client leaves them out.
pub(crate) fn carry_over(cur: &Value, new: &mut Value) {
    for f in ["clusterIP", "clusterIPs"] {
        let missing = new
            .pointer(&format!("/spec/{f}"))
            .is_none_or(|v| v.is_null() || v == "" || v == &json!([]));
        if missing && let Some(v) = cur.pointer(&format!("/spec/{f}")) {
            new["spec"][f] = v.clone();
        }
    }
    if !needs_node_ports(new) {
        return;
    }
    let old_ports = cur
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports {
            if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                        == p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
            });
            if let Some(np) = same.and_then(|o| o.get("nodePort")) {
                p["nodePort"] = np.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = IpRange::new("10.96.0.0/12".parse().unwrap()).unwrap();
        assert!(!r.contains("10.96.0.1".parse().unwrap()));
        assert!(r.contains("10.96.0.2".parse().unwrap()));
        assert!(r.contains("10.111.255.254".parse().unwrap()));
        assert!(!r.contains("10.111.255.255".parse().unwrap()));
        assert!(!r.contains("10.112.0.2".parse().unwrap()));
        for n in [0, 1, 12345, u32::MAX] {
            assert!(r.contains(r.nth(n)));
        }
        assert!(IpRange::new("10.96.0.0/31".parse().unwrap()).is_err());
    }
}
