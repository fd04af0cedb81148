//! A small core/v1 Event recorder. Repeats of the same (object, type, reason, message) are
//! folded into one Event whose `count` and `lastTimestamp` grow, as client-go's recorder does,
//! so a flapping controller cannot flood the store.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Mutex;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// Events kept for aggregation; beyond this the oldest entries are forgotten (a forgotten
/// repeat simply starts a new Event).
const CACHE_LIMIT: usize = 4096;

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    uid: String,
    type_: String,
    reason: String,
    message: String,
}

struct Seen {
    namespace: String,
    name: String,
    count: i32,
    order: u64,
}

/// Writes Events on behalf of one component (`deployment-controller`, `default-scheduler` ...).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    instance: String,
    seen: Arc<Mutex<(HashMap<Key, Seen>, u64)>>,
}

impl Recorder {
    pub fn new(client: Client, component: &str) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "bosun".to_string());
        Recorder {
            client,
            component: component.to_string(),
            instance: format!("{component}-{host}"),
            seen: Arc::new(Mutex::new((HashMap::new(), 0))),
        }
    }

    /// Records an event about `obj`. Failures are logged, never returned: an event is a
    /// courtesy to the user and must not fail a reconcile.
    pub async fn record<K>(&self, obj: &K, type_: &str, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let reference = object_reference(obj);
        if let Err(e) = self.record_ref(reference, type_, reason, message).await {
            tracing::debug!(error = %e, reason, "writing event failed");
        }
    }

    pub async fn record_ref(
        &self,
        involved: ObjectReference,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let key = Key {
            uid: involved.uid.clone().unwrap_or_default(),
            type_: type_.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let now = Time(jiff::Timestamp::now());
        let mut guard = self.seen.lock().await;
        let (seen, counter) = &mut *guard;
        *counter += 1;
        let order = *counter;
        if let Some(prev) = seen.get_mut(&key) {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &prev.namespace);
            let patch = serde_json::json!({"count": prev.count + 1, "lastTimestamp": now});
            match api
                .patch(&prev.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    prev.count += 1;
                    prev.order = order;
                    return Ok(());
                }
                Err(e) if crate::util::is_not_found(&e) => {
                    seen.remove(&key);
                }
                Err(e) => return Err(e),
            }
        }
        let namespace = involved
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let name = format!(
            "{}.{:x}",
            involved.name.clone().unwrap_or_default(),
            now.0.as_nanosecond()
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(type_.to_string()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &ev).await?;
        if seen.len() >= CACHE_LIMIT
            && let Some(oldest) = seen
                .iter()
                .min_by_key(|(_, s)| s.order)
                .map(|(k, _)| k.clone())
        {
            seen.remove(&oldest);
        }
        seen.insert(
            key,
            Seen {
                namespace,
                name,
                count: 1,
                order,
            },
        );
        Ok(())
    }
}

pub fn object_reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(obj.name_any()),
        namespace: obj.namespace(),
        uid: obj.uid(),
        resource_version: obj.resource_version(),
        ..Default::default()
    }
}
