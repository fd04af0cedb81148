//! Watches the routing objects, rebuilds the route table and certificates on every change
//! (swapping them atomically through `watch` channels), and writes status conditions and
//! Warning Events back through the API.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use bosun_api::gateway::{Gateway, GatewayClass, HTTPRoute};
use bosun_watch::Informer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::api::networking::v1::{
    Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::compile::{DesiredStatus, ObjectKey, RateLimiters, Report, Snapshot, compile};
use crate::metrics::GatewayMetrics;
use crate::routes::RouteTable;
use crate::tls::CertStore;

/// Coalesces bursts of watch events into one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// A shared informer of `api` whose every notice wakes the rebuild loop.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: Arc<Notify>,
    stop: &CancellationToken,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + Send + Sync + DeserializeOwned + 'static,
{
    let informer = Informer::start_config(api, config, stop.clone());
    let notices = informer.notices();
    tokio::spawn(async move {
        let mut notices = std::pin::pin!(notices);
        while notices.next().await.is_some() {
            notify.notify_one();
        }
    });
    informer.store()
}

pub struct Outputs {
    pub table: watch::Sender<Arc<RouteTable>>,
    pub certs: watch::Sender<Arc<CertStore>>,
}

/// Runs the watchers and the rebuild loop until `shutdown`.
pub async fn run(
    client: Client,
    outputs: Outputs,
    metrics: GatewayMetrics,
    address: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let notify = Arc::new(Notify::new());
    let stop = shutdown.child_token();
    let _stop_watches = stop.clone().drop_guard();
    let all = watcher::Config::default;
    let ingresses = reflect(
        Api::<Ingress>::all(client.clone()),
        all(),
        notify.clone(),
        &stop,
    );
    let routes = reflect(
        Api::<HTTPRoute>::all(client.clone()),
        all(),
        notify.clone(),
        &stop,
    );
    let gateways = reflect(
        Api::<Gateway>::all(client.clone()),
        all(),
        notify.clone(),
        &stop,
    );
    let classes = reflect(
        Api::<GatewayClass>::all(client.clone()),
        all(),
        notify.clone(),
        &stop,
    );
    let services = reflect(
        Api::<Service>::all(client.clone()),
        all(),
        notify.clone(),
        &stop,
    );
    // Only TLS Secrets: a joined node's gateway may read those and no others (the Node
    // authorizer), and the cache holds no other Secret.
    let secrets = reflect(
        Api::<Secret>::all(client.clone()),
        all().fields("type=kubernetes.io/tls"),
        notify.clone(),
        &stop,
    );
    let mut status = StatusWriter {
        events: bosun_events::Recorder::new(client.clone(), "bosun-gateway"),
        client,
        address,
        emitted: HashSet::new(),
    };
    let mut limiters = RateLimiters::default();
    let rebuild = async {
        let ready = async {
            ingresses.wait_until_ready().await?;
            routes.wait_until_ready().await?;
            gateways.wait_until_ready().await?;
            classes.wait_until_ready().await?;
            services.wait_until_ready().await?;
            secrets.wait_until_ready().await
        };
        if ready.await.is_err() {
            return;
        }
        loop {
            let snap = Snapshot {
                ingresses: ingresses.state(),
                routes: routes.state(),
                gateways: gateways.state(),
                classes: classes.state(),
                services: services.state(),
                secrets: secrets.state(),
            };
            let compiled = compile(&snap, &mut limiters);
            metrics.table_builds.inc();
            metrics.routes.set(compiled.table.len() as i64);
            outputs.table.send_replace(Arc::new(compiled.table));
            outputs.certs.send_replace(Arc::new(compiled.certs));
            status.apply(&snap, &compiled.reports).await;
            notify.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = rebuild => anyhow::bail!("gateway route store closed"),
    }
    Ok(())
}

struct StatusWriter {
    client: Client,
    address: Option<String>,
    /// Problems already reported as Events, so each is reported once while it lasts.
    emitted: HashSet<(ObjectKey, String, String)>,
    events: bosun_events::Recorder,
}

/// Keeps `lastTransitionTime` of conditions whose status did not change, so an unchanged
/// state compares equal and is not written again.
fn carry_times(new: &mut [Condition], old: &[Condition]) {
    for c in new {
        if let Some(o) = old.iter().find(|o| o.type_ == c.type_)
            && o.status == c.status
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

fn find<'a, K: kube::Resource>(list: &'a [Arc<K>], key: &ObjectKey) -> Option<&'a Arc<K>> {
    list.iter().find(|o| {
        o.meta().name.as_deref() == Some(key.name.as_str()) && o.meta().namespace == key.namespace
    })
}

impl StatusWriter {
    async fn apply(&mut self, snap: &Snapshot, reports: &[Report]) {
        let mut live = HashSet::new();
        for r in reports {
            if let Err(e) = self.write_status(snap, r).await {
                tracing::warn!(kind = r.key.kind, name = %r.key.name, "writing status: {e}");
            }
            for p in &r.problems {
                let k = (r.key.clone(), p.reason.clone(), p.message.clone());
                live.insert(k.clone());
                if self.emitted.contains(&k) {
                    continue;
                }
                tracing::warn!(kind = r.key.kind, namespace = ?r.key.namespace, name = %r.key.name, reason = %p.reason, "{}", p.message);
                match self.event(r, &p.reason, &p.message).await {
                    Ok(()) => {
                        self.emitted.insert(k);
                    }
                    Err(e) => tracing::warn!("creating event: {e}"),
                }
            }
        }
        self.emitted.retain(|k| live.contains(k));
    }

    async fn patch<K>(api: Api<K>, name: &str, status: impl Serialize) -> kube::Result<()>
    where
        K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let body = serde_json::json!({ "status": status });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map(|_| ())
    }

    fn ns_api<K>(&self, key: &ObjectKey) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(
            self.client.clone(),
            key.namespace.as_deref().unwrap_or("default"),
        )
    }

    async fn write_status(&self, snap: &Snapshot, r: &Report) -> kube::Result<()> {
        match &r.status {
            DesiredStatus::HTTPRoute(want) => {
                let Some(cur) = find(&snap.routes, &r.key) else {
                    return Ok(());
                };
                let old = cur.status.clone().unwrap_or_default();
                let mut want = want.clone();
                for p in &mut want.parents {
                    if let Some(o) = old.parents.iter().find(|o| {
                        o.parent_ref == p.parent_ref && o.controller_name == p.controller_name
                    }) {
                        carry_times(&mut p.conditions, &o.conditions);
                    }
                }
                if want != old {
                    Self::patch(self.ns_api::<HTTPRoute>(&r.key), &r.key.name, &want).await?;
                }
            }
            DesiredStatus::Gateway(want) => {
                let Some(cur) = find(&snap.gateways, &r.key) else {
                    return Ok(());
                };
                let old = cur.status.clone().unwrap_or_default();
                let mut want = want.clone();
                carry_times(&mut want.conditions, &old.conditions);
                for l in &mut want.listeners {
                    if let Some(o) = old.listeners.iter().find(|o| o.name == l.name) {
                        carry_times(&mut l.conditions, &o.conditions);
                    }
                }
                if let Some(a) = &self.address {
                    want.addresses = vec![bosun_api::gateway::GatewayStatusAddress {
                        type_: Some("IPAddress".into()),
                        value: a.clone(),
                    }];
                }
                if want != old {
                    Self::patch(self.ns_api::<Gateway>(&r.key), &r.key.name, &want).await?;
                }
            }
            DesiredStatus::GatewayClass(want) => {
                let Some(cur) = find(&snap.classes, &r.key) else {
                    return Ok(());
                };
                let old = cur.status.clone().unwrap_or_default();
                let mut want = want.clone();
                carry_times(&mut want.conditions, &old.conditions);
                if want != old {
                    Self::patch(
                        Api::<GatewayClass>::all(self.client.clone()),
                        &r.key.name,
                        &want,
                    )
                    .await?;
                }
            }
            DesiredStatus::Ingress => {
                let Some(addr) = &self.address else {
                    return Ok(());
                };
                let Some(cur) = find(&snap.ingresses, &r.key) else {
                    return Ok(());
                };
                let want = IngressStatus {
                    load_balancer: Some(IngressLoadBalancerStatus {
                        ingress: Some(vec![IngressLoadBalancerIngress {
                            ip: Some(addr.clone()),
                            ..Default::default()
                        }]),
                    }),
                };
                if cur.status.as_ref() != Some(&want) {
                    Self::patch(self.ns_api::<Ingress>(&r.key), &r.key.name, &want).await?;
                }
            }
        }
        Ok(())
    }

    async fn event(&self, r: &Report, reason: &str, message: &str) -> kube::Result<()> {
        let api_version = match r.key.kind {
            "Ingress" => "networking.k8s.io/v1",
            _ => "gateway.networking.k8s.io/v1",
        };
        let involved = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(r.key.kind.into()),
            name: Some(r.key.name.clone()),
            namespace: r.key.namespace.clone(),
            uid: r.uid.clone(),
            ..Default::default()
        };
        self.events
            .record_ref(involved, bosun_events::WARNING, reason, message)
            .await
    }
}
