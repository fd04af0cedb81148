//! The endpoints of the `kubernetes` Service: every live API server, as Kubernetes' lease
//! endpoint reconciler keeps them.
//!
//! Each server runs this loop (not only the leader): it renews a Lease of its own,
//! `kube-system/apiserver-IP-PORT` (label `apiserver.kubernetes.io/identity=bosun-apiserver`,
//! holder `IP:PORT`, 15 s), and writes `default/kubernetes` Endpoints and EndpointSlices
//! listing the servers whose Leases are current. A server that dies drops out once its Lease
//! runs out; one that stops cleanly deletes its Lease and drops out at once. The loop also
//! creates the Service itself when it is missing (ClusterIP = the first address of the
//! service range, port 443 named `https`), as Kubernetes' bootstrap controller does: pods
//! reach the API through it (`KUBERNETES_SERVICE_HOST`, `kubernetes.default.svc`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

pub const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
pub const IDENTITY: &str = "bosun-apiserver";
pub const MANAGED_BY: &str = "bosun-apiserver";
const SERVICE: &str = "kubernetes";
/// How long a server's Lease lasts, and how often it is renewed (and endpoints reconciled).
pub const LEASE_SECONDS: i32 = 15;
pub const RENEW: Duration = Duration::from_secs(5);

/// The Lease name of the server at `addr`.
pub fn lease_name(addr: SocketAddr) -> String {
    let ip = addr.ip().to_string().replace(['.', ':'], "-");
    format!("apiserver-{ip}-{}", addr.port())
}

/// Renews this server's Lease and keeps the endpoints until `shutdown`; then deletes the
/// Lease and takes the server out of the endpoints.
/// `service_ip` is the `kubernetes` Service's ClusterIP (the first address of the service
/// range); None leaves the Service alone.
pub async fn run(
    client: Client,
    me: SocketAddr,
    service_ip: Option<IpAddr>,
    shutdown: CancellationToken,
) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    loop {
        if let Some(ip) = service_ip
            && let Err(e) = ensure_service(&client, ip, me.port()).await
        {
            tracing::warn!(error = %e, "creating the kubernetes Service");
        }
        if let Err(e) = renew(&leases, me).await {
            tracing::warn!(error = %e, "renewing the API server's lease");
        }
        if let Err(e) = reconcile(&client, None).await {
            tracing::warn!(error = %e, "updating the kubernetes Service's endpoints");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(RENEW) => {}
        }
    }
    // Leaving: the others need not wait for the Lease to run out.
    let _ = leases
        .delete(&lease_name(me), &DeleteParams::default())
        .await;
    if let Err(e) = reconcile(&client, Some(me)).await {
        tracing::debug!(error = %e, "removing this server from the endpoints");
    }
    Ok(())
}

/// The `kubernetes` Service as Kubernetes' bootstrap controller makes it.
pub fn api_service(ip: IpAddr, target_port: u16) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(SERVICE.into()),
            namespace: Some("default".into()),
            labels: Some(
                [
                    ("component".to_string(), "apiserver".to_string()),
                    ("provider".to_string(), "kubernetes".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.to_string()),
            cluster_ips: Some(vec![ip.to_string()]),
            session_affinity: Some("None".into()),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(target_port.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Creates the `kubernetes` Service when it is missing (an existing one is left as it is).
async fn ensure_service(client: &Client, ip: IpAddr, target_port: u16) -> Result<()> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    if api.get_opt(SERVICE).await?.is_some() {
        return Ok(());
    }
    match api
        .create(&PostParams::default(), &api_service(ip, target_port))
        .await
    {
        Ok(_) => Ok(()),
        // Another server made it first.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

async fn renew(leases: &Api<Lease>, me: SocketAddr) -> Result<()> {
    let name = lease_name(me);
    let spec = |acquire: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: acquire.or_else(|| Some(now())),
        renew_time: Some(now()),
        ..Default::default()
    };
    match leases.get_opt(&name).await? {
        Some(mut l) => {
            let acquired = l.spec.as_ref().and_then(|s| s.acquire_time.clone());
            l.spec = Some(spec(acquired));
            leases.replace(&name, &PostParams::default(), &l).await?;
        }
        None => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some("kube-system".into()),
                    labels: Some([(IDENTITY_LABEL.to_string(), IDENTITY.to_string())].into()),
                    ..Default::default()
                },
                spec: Some(spec(None)),
            };
            leases.create(&PostParams::default(), &l).await?;
        }
    }
    Ok(())
}

/// The address a current Lease names; None for an expired or foreign one.
pub fn live_address(l: &Lease, now: jiff::Timestamp) -> Option<SocketAddr> {
    let spec = l.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0;
    let ttl = jiff::SignedDuration::from_secs(spec.lease_duration_seconds?.into());
    if renewed + ttl < now {
        return None;
    }
    spec.holder_identity.as_deref()?.parse().ok()
}

/// Addresses grouped by port, each group sorted: one subset (and one slice) per port.
pub fn by_port(addrs: &[SocketAddr]) -> BTreeMap<u16, Vec<IpAddr>> {
    let mut out: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
    for a in addrs {
        out.entry(a.port()).or_default().push(a.ip());
    }
    for ips in out.values_mut() {
        ips.sort();
        ips.dedup();
    }
    out
}

fn desired_endpoints(groups: &BTreeMap<u16, Vec<IpAddr>>) -> Option<Vec<EndpointSubset>> {
    let subsets: Vec<EndpointSubset> = groups
        .iter()
        .map(|(port, ips)| EndpointSubset {
            addresses: Some(
                ips.iter()
                    .map(|ip| EndpointAddress {
                        ip: ip.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: (*port).into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        })
        .collect();
    (!subsets.is_empty()).then_some(subsets)
}

fn slice_name(i: usize, port: u16) -> String {
    if i == 0 {
        SERVICE.to_string()
    } else {
        format!("{SERVICE}-{port}")
    }
}

fn desired_slices(groups: &BTreeMap<u16, Vec<IpAddr>>) -> Vec<EndpointSlice> {
    let mut out = Vec::new();
    for (i, (port, ips)) in groups.iter().enumerate() {
        // A slice holds one address family.
        for (family, v6) in [("IPv4", false), ("IPv6", true)] {
            let eps: Vec<Endpoint> = ips
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect();
            if eps.is_empty() {
                continue;
            }
            let name = if v6 {
                format!("{}-ipv6", slice_name(i, *port))
            } else {
                slice_name(i, *port)
            };
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some("default".into()),
                    labels: Some(
                        [
                            (
                                crate::endpoints::SERVICE_NAME_LABEL.to_string(),
                                SERVICE.to_string(),
                            ),
                            (
                                crate::endpoints::MANAGED_BY_LABEL.to_string(),
                                MANAGED_BY.to_string(),
                            ),
                            (
                                "endpointslice.kubernetes.io/skip-mirror".to_string(),
                                "true".to_string(),
                            ),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                },
                address_type: family.into(),
                endpoints: eps,
                ports: Some(vec![SlicePort {
                    name: Some("https".into()),
                    port: Some((*port).into()),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                }]),
            });
        }
    }
    out
}

/// Writes the endpoints of the live servers (`leaving` excluded) where they differ.
async fn reconcile(client: &Client, leaving: Option<SocketAddr>) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let now = jiff::Timestamp::now();
    let mut live = Vec::new();
    let listed = leases
        .list(&ListParams::default().labels(&format!("{IDENTITY_LABEL}={IDENTITY}")))
        .await?;
    for l in &listed.items {
        match live_address(l, now) {
            Some(a) if Some(a) != leaving => live.push(a),
            Some(_) => {}
            None => {
                // Long dead: nobody renews it any more.
                let _ = leases.delete(&l.name_any(), &DeleteParams::default()).await;
            }
        }
    }
    let groups = by_port(&live);

    let eps_api: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let subsets = desired_endpoints(&groups);
    match eps_api.get_opt(SERVICE).await? {
        Some(mut cur) if cur.subsets != subsets => {
            cur.subsets = subsets;
            eps_api
                .replace(SERVICE, &PostParams::default(), &cur)
                .await?;
        }
        Some(_) => {}
        None => {
            let e = Endpoints {
                metadata: ObjectMeta {
                    name: Some(SERVICE.into()),
                    namespace: Some("default".into()),
                    labels: Some(
                        [(
                            "endpointslice.kubernetes.io/skip-mirror".to_string(),
                            "true".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                subsets,
            };
            eps_api.create(&PostParams::default(), &e).await?;
        }
    }

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let want = desired_slices(&groups);
    for s in &want {
        let name = s.name_any();
        match slices.get_opt(&name).await? {
            Some(mut cur) => {
                if cur.endpoints != s.endpoints || cur.ports != s.ports {
                    cur.endpoints = s.endpoints.clone();
                    cur.ports = s.ports.clone();
                    slices.replace(&name, &PostParams::default(), &cur).await?;
                }
            }
            None => {
                slices.create(&PostParams::default(), s).await?;
            }
        }
    }
    let ours = ListParams::default().labels(&format!(
        "{}={SERVICE},{}={MANAGED_BY}",
        crate::endpoints::SERVICE_NAME_LABEL,
        crate::endpoints::MANAGED_BY_LABEL
    ));
    for s in slices.list(&ours).await?.items {
        if !want.iter().any(|w| w.name_any() == s.name_any()) {
            let _ = slices.delete(&s.name_any(), &DeleteParams::default()).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(MicroTime(
                    jiff::Timestamp::now() - jiff::SignedDuration::from_secs(renewed_secs_ago),
                )),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_current_leases_are_endpoints() {
        let now = jiff::Timestamp::now();
        assert_eq!(
            live_address(&lease("10.0.0.1:6443", 3), now),
            Some("10.0.0.1:6443".parse().unwrap())
        );
        assert_eq!(live_address(&lease("10.0.0.1:6443", 20), now), None);
        assert_eq!(live_address(&lease("not an address", 1), now), None);
    }

    #[test]
    fn one_subset_and_slice_per_port() {
        let addrs: Vec<SocketAddr> = ["10.0.0.2:6443", "10.0.0.1:6443", "127.0.0.1:7443"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let g = by_port(&addrs);
        let subsets = desired_endpoints(&g).unwrap();
        assert_eq!(subsets.len(), 2);
        let first: Vec<_> = subsets[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(first, ["10.0.0.1", "10.0.0.2"]);
        let slices = desired_slices(&g);
        let names: Vec<_> = slices.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["kubernetes", "kubernetes-7443"]);
        assert!(desired_endpoints(&BTreeMap::new()).is_none());
    }

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(
            lease_name("10.0.0.1:6443".parse().unwrap()),
            "apiserver-10-0-0-1-6443"
        );
        assert_eq!(
            lease_name("[::1]:6443".parse().unwrap()),
            "apiserver---1-6443"
        );
    }
}
