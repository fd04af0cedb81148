//! The in-memory view of the cluster that DNS answers come from: Services and EndpointSlices,
//! kept current by watches, and the name resolution over them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    /// Lower case, as it appears in SRV names (`tcp`, `udp`, `sctp`).
    pub protocol: String,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    pub headless: bool,
    pub external_name: Option<String>,
    pub ports: Vec<PortInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: IpAddr,
    pub ready: bool,
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: String,
    pub service: String,
    pub ports: Vec<PortInfo>,
    pub endpoints: Vec<EndpointInfo>,
}

/// Services by (namespace, name) and slices by (namespace, slice name).
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub services: HashMap<(String, String), ServiceInfo>,
    pub slices: HashMap<(String, String), SliceInfo>,
}

pub fn service_key(svc: &Service) -> Option<(String, String)> {
    Some((svc.metadata.namespace.clone()?, svc.metadata.name.clone()?))
}

pub fn service_info(svc: &Service) -> ServiceInfo {
    let spec = svc.spec.clone().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut ips: Vec<String> = spec.cluster_ips.unwrap_or_default();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip);
    }
    ServiceInfo {
        cluster_ips: ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        headless,
        external_name: (spec.type_.as_deref() == Some("ExternalName"))
            .then_some(spec.external_name)
            .flatten(),
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| {
                Some(PortInfo {
                    name: p.name.unwrap_or_default(),
                    protocol: p.protocol.unwrap_or_else(|| "TCP".into()).to_lowercase(),
                    port: u16::try_from(p.port).ok()?,
                })
            })
            .collect(),
    }
}

pub fn slice_key(s: &EndpointSlice) -> Option<(String, String)> {
    Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?))
}

pub fn slice_info(s: &EndpointSlice) -> Option<SliceInfo> {
    let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    Some(SliceInfo {
        namespace: s.metadata.namespace.clone()?,
        service,
        ports: s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(PortInfo {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                    port: u16::try_from(p.port?).ok()?,
                })
            })
            .collect(),
        endpoints: s
            .endpoints
            .iter()
            .flat_map(|e| {
                // A missing ready condition means ready (the API's documented default).
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                e.addresses.iter().filter_map(move |a| {
                    Some(EndpointInfo {
                        ip: a.parse().ok()?,
                        ready,
                        hostname: e.hostname.clone(),
                    })
                })
            })
            .collect(),
    })
}

/// What a name in the cluster domain resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Addresses for the queried name (A/AAAA picks the family).
    Addresses(Vec<IpAddr>),
    /// An alias (ExternalName services).
    Cname(String),
    /// SRV targets: (port, target name relative to the cluster domain, target addresses).
    Srv(Vec<SrvTarget>),
    /// The name exists but has no records (e.g. a namespace, or the domain itself).
    Empty,
    /// No such name.
    NxDomain,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    pub port: u16,
    /// Labels of the target below the cluster domain, e.g. `web.default.svc`.
    pub target: String,
    pub addresses: Vec<IpAddr>,
}

/// The dashed form of an address as used in pod and endpoint names (`10-1-2-3`).
pub fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn parse_dashed_v4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(parts) {
        *o = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

impl Index {
    fn ready_endpoints(&self, ns: &str, svc: &str) -> Vec<(&SliceInfo, &EndpointInfo)> {
        let mut out: Vec<(&SliceInfo, &EndpointInfo)> = self
            .slices
            .values()
            .filter(|s| s.namespace == ns && s.service == svc)
            .flat_map(|s| s.endpoints.iter().filter(|e| e.ready).map(move |e| (s, e)))
            .collect();
        out.sort_by_key(|(_, e)| e.ip);
        out.dedup_by_key(|(_, e)| e.ip);
        out
    }

    /// Resolves `labels`, the query name below the cluster domain split at dots (lower case,
    /// leftmost first). An empty slice is the cluster domain itself.
    pub fn resolve(&self, labels: &[&str]) -> Answer {
        match labels {
            [] | ["svc"] | ["pod"] => Answer::Empty,
            [ns, "svc"] => {
                if self.services.keys().any(|(n, _)| n == ns) {
                    Answer::Empty
                } else {
                    Answer::NxDomain
                }
            }
            [name, ns, "svc"] => {
                let Some(svc) = self.services.get(&(ns.to_string(), name.to_string())) else {
                    return Answer::NxDomain;
                };
                if let Some(ext) = &svc.external_name {
                    return Answer::Cname(ext.clone());
                }
                if svc.headless {
                    Answer::Addresses(
                        self.ready_endpoints(ns, name)
                            .into_iter()
                            .map(|(_, e)| e.ip)
                            .collect(),
                    )
                } else {
                    Answer::Addresses(svc.cluster_ips.clone())
                }
            }
            // A headless service's endpoint by hostname or dashed address.
            [host, name, ns, "svc"] if !host.starts_with('_') => {
                let Some(svc) = self.services.get(&(ns.to_string(), name.to_string())) else {
                    return Answer::NxDomain;
                };
                if !svc.headless {
                    return Answer::NxDomain;
                }
                let ips: Vec<IpAddr> = self
                    .ready_endpoints(ns, name)
                    .into_iter()
                    .filter(|(_, e)| match &e.hostname {
                        Some(h) => h == host,
                        None => dashed(&e.ip) == *host,
                    })
                    .map(|(_, e)| e.ip)
                    .collect();
                if ips.is_empty() {
                    Answer::NxDomain
                } else {
                    Answer::Addresses(ips)
                }
            }
            [port, proto, name, ns, "svc"] => {
                let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_'))
                else {
                    return Answer::NxDomain;
                };
                let Some(svc) = self.services.get(&(ns.to_string(), name.to_string())) else {
                    return Answer::NxDomain;
                };
                let named = |p: &PortInfo| p.name == port && p.protocol == proto;
                if !svc.ports.iter().any(named) {
                    return Answer::NxDomain;
                }
                if !svc.headless {
                    let p = svc.ports.iter().find(|p| named(p)).map_or(0, |p| p.port);
                    return Answer::Srv(vec![SrvTarget {
                        port: p,
                        target: format!("{name}.{ns}.svc"),
                        addresses: svc.cluster_ips.clone(),
                    }]);
                }
                Answer::Srv(
                    self.ready_endpoints(ns, name)
                        .into_iter()
                        .filter_map(|(slice, e)| {
                            let p = slice.ports.iter().find(|p| named(p))?;
                            let host = e.hostname.clone().unwrap_or_else(|| dashed(&e.ip));
                            Some(SrvTarget {
                                port: p.port,
                                target: format!("{host}.{name}.{ns}.svc"),
                                addresses: vec![e.ip],
                            })
                        })
                        .collect(),
                )
            }
            [ns, "pod"] => {
                if self.services.keys().any(|(n, _)| n == ns) {
                    Answer::Empty
                } else {
                    Answer::NxDomain
                }
            }
            // `a-b-c-d.NS.pod`: answered from the name itself, as kube-dns does.
            [ip, _ns, "pod"] => match parse_dashed_v4(ip) {
                Some(v4) => Answer::Addresses(vec![IpAddr::V4(v4)]),
                None => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> Index {
        let mut idx = Index::default();
        let web: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let db: Service = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
        }))
        .unwrap();
        let ext: Service = serde_json::from_value(json!({
            "metadata": {"name": "ext", "namespace": "prod"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-abc", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.0.3"], "conditions": {"ready": true}, "hostname": "db-0"},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.9"], "conditions": {"ready": false, "terminating": true}}
            ]
        }))
        .unwrap();
        for s in [web, db, ext] {
            idx.services
                .insert(service_key(&s).unwrap(), service_info(&s));
        }
        idx.slices
            .insert(slice_key(&slice).unwrap(), slice_info(&slice).unwrap());
        idx
    }

    fn ips(v: &[&str]) -> Answer {
        Answer::Addresses(v.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn services_resolve_to_cluster_ip_or_ready_pods() {
        let idx = index();
        assert_eq!(
            idx.resolve(&["web", "default", "svc"]),
            ips(&["10.96.0.10"])
        );
        // Headless: ready endpoints only, the terminating one is left out.
        assert_eq!(
            idx.resolve(&["db", "prod", "svc"]),
            ips(&["10.1.0.2", "10.1.0.3"])
        );
        assert_eq!(idx.resolve(&["nope", "default", "svc"]), Answer::NxDomain);
        assert_eq!(idx.resolve(&["web", "prod", "svc"]), Answer::NxDomain);
        assert_eq!(
            idx.resolve(&["ext", "prod", "svc"]),
            Answer::Cname("example.org".into())
        );
        assert_eq!(idx.resolve(&["default", "svc"]), Answer::Empty);
        assert_eq!(idx.resolve(&[]), Answer::Empty);
        assert_eq!(idx.resolve(&["nons", "svc"]), Answer::NxDomain);
        // What a search-path expansion of an outside name looks like.
        assert_eq!(
            idx.resolve(&["example", "com", "default", "svc"]),
            Answer::NxDomain
        );
    }

    #[test]
    fn headless_endpoint_names() {
        let idx = index();
        assert_eq!(
            idx.resolve(&["db-0", "db", "prod", "svc"]),
            ips(&["10.1.0.3"])
        );
        assert_eq!(
            idx.resolve(&["10-1-0-2", "db", "prod", "svc"]),
            ips(&["10.1.0.2"])
        );
        assert_eq!(
            idx.resolve(&["10-1-0-9", "db", "prod", "svc"]),
            Answer::NxDomain
        );
    }

    #[test]
    fn srv_records() {
        let idx = index();
        assert_eq!(
            idx.resolve(&["_http", "_tcp", "web", "default", "svc"]),
            Answer::Srv(vec![SrvTarget {
                port: 80,
                target: "web.default.svc".into(),
                addresses: vec!["10.96.0.10".parse().unwrap()],
            }])
        );
        assert_eq!(
            idx.resolve(&["_dns", "_udp", "web", "default", "svc"]),
            Answer::Srv(vec![SrvTarget {
                port: 53,
                target: "web.default.svc".into(),
                addresses: vec!["10.96.0.10".parse().unwrap()],
            }])
        );
        assert_eq!(
            idx.resolve(&["_http", "_udp", "web", "default", "svc"]),
            Answer::NxDomain
        );
        let Answer::Srv(targets) = idx.resolve(&["_pg", "_tcp", "db", "prod", "svc"]) else {
            panic!("expected SRV");
        };
        let t: Vec<_> = targets
            .iter()
            .map(|t| (t.port, t.target.as_str()))
            .collect();
        assert_eq!(
            t,
            [(5433, "10-1-0-2.db.prod.svc"), (5433, "db-0.db.prod.svc")]
        );
    }

    #[test]
    fn pod_names() {
        let idx = index();
        assert_eq!(
            idx.resolve(&["10-2-3-4", "default", "pod"]),
            ips(&["10.2.3.4"])
        );
        assert_eq!(idx.resolve(&["10-2-3", "default", "pod"]), Answer::NxDomain);
        assert_eq!(
            idx.resolve(&["10-2-3-400", "default", "pod"]),
            Answer::NxDomain
        );
        assert_eq!(dashed(&"10.2.3.4".parse().unwrap()), "10-2-3-4");
    }
}
