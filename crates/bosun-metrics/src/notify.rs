//! Where alerts go besides the API: Kubernetes Events on the object an alert is about
//! (`EventNotifier`), and an HTTP webhook in Alertmanager's webhook format (`Webhook`:
//! version 4, one message per rule and change, firing and resolved, retried with
//! backoff). Both take changes on a bounded queue and never block the evaluator.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, Change, Notifier, State, rfc3339};
use crate::kube_state::Caches;
use crate::store::label;

const QUEUE: usize = 256;

/// Alertmanager's fingerprint is a hash of the label set; ours is FNV-1a over it.
pub fn fingerprint(a: &Alert) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in a.labels.iter() {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn map(pairs: &[(String, String)]) -> serde_json::Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
}

/// Labels (or annotations) every alert has with the same value.
fn common(sets: &[&[(String, String)]]) -> serde_json::Map<String, Value> {
    let Some(first) = sets.first() else {
        return serde_json::Map::new();
    };
    first
        .iter()
        .filter(|(k, v)| {
            sets.iter()
                .all(|s| s.iter().any(|(k2, v2)| k2 == k && v2 == v))
        })
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect()
}

/// The webhook body Alertmanager sends for one group (here: one alerting rule).
pub fn webhook_body(change: &Change, external_url: &str) -> Value {
    let mut alerts: Vec<&Alert> = change.firing.iter().collect();
    for a in &change.changed {
        if a.state == State::Inactive {
            alerts.push(a);
        }
    }
    let status = if change.firing.is_empty() {
        "resolved"
    } else {
        "firing"
    };
    let labels: Vec<&[(String, String)]> = alerts.iter().map(|a| &a.labels[..]).collect();
    let anns: Vec<&[(String, String)]> = alerts.iter().map(|a| &a.annotations[..]).collect();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", change.rule),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "bosun-webhook",
        "groupLabels": {"alertname": change.rule},
        "commonLabels": common(&labels),
        "commonAnnotations": common(&anns),
        "externalURL": external_url,
        "alerts": alerts.iter().map(|a| {
            let query = a.labels.iter().find(|(k, _)| k == "alertname").map(|(_, v)| v.as_str()).unwrap_or("");
            json!({
                "status": if a.state == State::Inactive { "resolved" } else { "firing" },
                "labels": map(&a.labels),
                "annotations": map(&a.annotations),
                "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_at)),
                "endsAt": rfc3339(a.resolved_at.unwrap_or(0)),
                "generatorURL": format!("{external_url}/api/v1/rules?type=alert&rule_name[]={query}"),
                "fingerprint": fingerprint(a),
            })
        }).collect::<Vec<_>>(),
    })
}

/// POSTs every change to `url`.
pub struct Webhook {
    tx: mpsc::Sender<Value>,
}

impl Webhook {
    /// Starts the sender; it stops at `shutdown`.
    pub fn start(url: String, shutdown: CancellationToken) -> anyhow::Result<Arc<Webhook>> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--alert-webhook {url:?}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            anyhow::bail!("--alert-webhook {url:?}: not an http:// or https:// URL");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            // No system roots: http:// receivers still work.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let https = builder.https_or_http().enable_http1().build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, http_body_util::Full<bytes::Bytes>>(https);
        let (tx, mut rx) = mpsc::channel::<Value>(QUEUE);
        tokio::spawn(async move {
            loop {
                let body = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    b = rx.recv() => match b { Some(b) => b, None => break },
                };
                let bytes = bytes::Bytes::from(body.to_string());
                let mut delay = Duration::from_secs(1);
                for attempt in 1..=6 {
                    let req = http::Request::post(uri.clone())
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .header(
                            http::header::USER_AGENT,
                            concat!("bosun/", env!("CARGO_PKG_VERSION")),
                        )
                        .body(http_body_util::Full::new(bytes.clone()));
                    let Ok(req) = req else { break };
                    let res = tokio::time::timeout(Duration::from_secs(10), async {
                        let resp = client.request(req).await.map_err(|e| e.to_string())?;
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status.is_success() {
                            Ok(())
                        } else {
                            Err(format!("HTTP {status}"))
                        }
                    })
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                    match res {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(url = %uri, attempt, "alert webhook: {e}");
                            if attempt == 6 {
                                break;
                            }
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(delay) => {}
                            }
                            delay = (delay * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
        });
        Ok(Arc::new(Webhook { tx }))
    }

    fn with_external(self: &Arc<Self>, body: Value) {
        if self.tx.try_send(body).is_err() {
            tracing::warn!("alert webhook: queue full, a notification was dropped");
        }
    }
}

/// A webhook notifier bound to the console's external URL.
pub struct WebhookNotifier {
    pub hook: Arc<Webhook>,
    pub external_url: String,
}

impl Notifier for WebhookNotifier {
    fn notify(&self, change: &Change) {
        self.hook
            .with_external(webhook_body(change, &self.external_url));
    }
}

/// Writes a Warning Event when an alert fires and a Normal one when it resolves, on the
/// Pod, Deployment, Node or Service its labels name.
pub struct EventNotifier {
    tx: mpsc::Sender<(ObjectReference, &'static str, String, String)>,
    caches: Option<Caches>,
}

impl EventNotifier {
    pub fn start(
        client: kube::Client,
        caches: Option<Caches>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let rec = bosun_events::Recorder::new(client, "bosun-alerts");
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, &'static str, String, String)>(QUEUE);
        tokio::spawn(async move {
            loop {
                let (obj, type_, reason, msg) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = rx.recv() => match m { Some(m) => m, None => break },
                };
                if let Err(e) = rec.record_ref(obj, type_, &reason, &msg).await {
                    tracing::debug!("alert event: {e}");
                }
            }
        });
        Arc::new(EventNotifier { tx, caches })
    }

    /// The object an alert is about, from its labels.
    pub fn object(&self, a: &Alert) -> Option<ObjectReference> {
        object_of(&a.labels, self.caches.as_ref())
    }
}

pub fn object_of(labels: &[(String, String)], caches: Option<&Caches>) -> Option<ObjectReference> {
    let get = |k: &str| Some(label(labels, k)).filter(|v| !v.is_empty());
    let ns = get("namespace");
    let r = |api: &str, kind: &str, name: &str, ns: Option<&str>, uid: Option<String>| {
        ObjectReference {
            api_version: Some(api.into()),
            kind: Some(kind.into()),
            name: Some(name.into()),
            namespace: ns.map(str::to_string),
            uid,
            ..Default::default()
        }
    };
    if let (Some(ns), Some(pod)) = (ns, get("pod")) {
        let uid = get("uid").map(str::to_string).or_else(|| {
            caches?
                .pods
                .get(&ObjectRef::new(pod).within(ns))
                .and_then(|p| p.metadata.uid.clone())
        });
        return Some(r("v1", "Pod", pod, Some(ns), uid));
    }
    if let (Some(ns), Some(d)) = (ns, get("deployment")) {
        let uid = caches.and_then(|c| {
            c.deployments
                .get(&ObjectRef::new(d).within(ns))
                .and_then(|d| d.metadata.uid.clone())
        });
        return Some(r("apps/v1", "Deployment", d, Some(ns), uid));
    }
    if let Some(n) = get("node") {
        let uid = caches.and_then(|c| {
            c.nodes
                .get(&ObjectRef::new(n))
                .and_then(|n| n.metadata.uid.clone())
        });
        return Some(r("v1", "Node", n, None, uid));
    }
    if let (Some(ns), Some(s)) = (ns, get("service")) {
        return Some(r("v1", "Service", s, Some(ns), None));
    }
    None
}

impl Notifier for EventNotifier {
    fn notify(&self, change: &Change) {
        for a in &change.changed {
            let Some(obj) = self.object(a) else { continue };
            let ann = |k: &str| {
                a.annotations
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .filter(|v| !v.is_empty())
            };
            let text = ann("description")
                .or_else(|| ann("summary"))
                .unwrap_or_else(|| format!("alert {} (value {})", change.rule, a.value));
            let (type_, msg) = if a.state == State::Inactive {
                ("Normal", format!("Resolved: {text}"))
            } else {
                ("Warning", format!("Firing: {text}"))
            };
            if self
                .tx
                .try_send((obj, type_, change.rule.clone(), msg))
                .is_err()
            {
                tracing::warn!("alert events: queue full, an Event was dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::labels_from;

    fn alert(state: State, pod: &str) -> Alert {
        Alert {
            labels: labels_from(vec![
                ("alertname".into(), "KubePodCrashLooping".into()),
                ("namespace".into(), "shop".into()),
                ("pod".into(), pod.into()),
                ("severity".into(), "warning".into()),
            ]),
            annotations: vec![("summary".into(), "Pod is crash looping.".into())],
            state,
            value: 1.0,
            active_at: 1_700_000_000_000,
            fired_at: Some(1_700_000_060_000),
            resolved_at: (state == State::Inactive).then_some(1_700_000_120_000),
            last_seen: 0,
        }
    }

    #[test]
    fn alertmanager_webhook_format() {
        let c = Change {
            rule: "KubePodCrashLooping".into(),
            changed: vec![alert(State::Inactive, "b")],
            firing: vec![alert(State::Firing, "a")],
        };
        let b = webhook_body(&c, "http://127.0.0.1:9090");
        assert_eq!(b["version"], "4");
        assert_eq!(b["status"], "firing");
        assert_eq!(b["groupLabels"]["alertname"], "KubePodCrashLooping");
        assert_eq!(b["commonLabels"]["namespace"], "shop");
        assert!(b["commonLabels"].get("pod").is_none());
        assert_eq!(b["commonAnnotations"]["summary"], "Pod is crash looping.");
        let alerts = b["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0]["status"], "firing");
        assert_eq!(alerts[0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(alerts[1]["status"], "resolved");
        assert_eq!(alerts[1]["endsAt"], "2023-11-14T22:15:20Z");
        assert_ne!(alerts[0]["fingerprint"], alerts[1]["fingerprint"]);
        let only_resolved = Change {
            rule: "KubePodCrashLooping".into(),
            changed: vec![alert(State::Inactive, "a")],
            firing: vec![],
        };
        assert_eq!(webhook_body(&only_resolved, "")["status"], "resolved");
    }

    #[test]
    fn objects_from_labels() {
        let l = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let o = object_of(&l(&[("namespace", "x"), ("pod", "p"), ("node", "n")]), None).unwrap();
        assert_eq!(
            (o.kind.as_deref(), o.name.as_deref()),
            (Some("Pod"), Some("p"))
        );
        let o = object_of(&l(&[("namespace", "x"), ("deployment", "d")]), None).unwrap();
        assert_eq!(o.kind.as_deref(), Some("Deployment"));
        let o = object_of(&l(&[("node", "n"), ("condition", "Ready")]), None).unwrap();
        assert_eq!((o.kind.as_deref(), o.namespace), (Some("Node"), None));
        let o = object_of(&l(&[("namespace", "x"), ("service", "s")]), None).unwrap();
        assert_eq!(o.kind.as_deref(), Some("Service"));
        assert!(object_of(&l(&[("job", "j")]), None).is_none());
    }
}
