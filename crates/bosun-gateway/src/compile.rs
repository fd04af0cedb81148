//! Compiles Ingress, HTTPRoute, Gateway and GatewayClass objects (plus the Services and
//! Secrets they reference) into a [`RouteTable`] and a [`CertStore`], and computes the
//! status every object should have. Pure: no I/O, so it is unit-tested directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bosun_api::gateway::{
    self as gw, Gateway, GatewayClass, HTTPRoute, HTTPRouteFilter, HTTPRouteRule, ParentReference,
    RouteParentStatus,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::ratelimit::{RATE_LIMIT_ANNOTATION, Rate, TokenBucket};
use crate::routes::{
    BackendTarget, Entry, HeaderModifier, HostPattern, Mirror, PathMatch, PathModifier, Precedence,
    Redirect, RequestMatch, Rewrite, RouteId, RouteTable, RuleAction, ValueMatch, WeightedBackend,
    full_regex,
};
use crate::tls::{CertStore, certified_key_from_secret};

/// `spec.controllerName` of GatewayClasses bosun implements.
pub const CONTROLLER_NAME: &str = "bosun.dev/gateway-controller";
/// The IngressClass name bosun serves (Ingresses without a class are served too).
pub const INGRESS_CLASS: &str = "bosun";
/// HTTPRoutes without `parentRefs` attach to the node's gateway; their status names
/// this implicit parent.
pub const IMPLICIT_PARENT: &str = "bosun";

/// Everything the compiler reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ingresses: Vec<Arc<Ingress>>,
    pub routes: Vec<Arc<HTTPRoute>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub classes: Vec<Arc<GatewayClass>>,
    pub services: Vec<Arc<Service>>,
    pub secrets: Vec<Arc<Secret>>,
}

/// Identity of an object a report is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

/// A problem worth a Warning Event on the object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

/// The status one object should have after this build.
#[derive(Clone, Debug)]
pub enum DesiredStatus {
    HTTPRoute(gw::HTTPRouteStatus),
    Gateway(gw::GatewayStatus),
    GatewayClass(gw::GatewayClassStatus),
    /// Ingress has no conditions in its schema: only problems (as Events).
    Ingress,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub key: ObjectKey,
    pub uid: Option<String>,
    pub status: DesiredStatus,
    pub problems: Vec<Problem>,
}

pub struct Compiled {
    pub table: RouteTable,
    pub certs: CertStore,
    pub reports: Vec<Report>,
}

/// Keeps token buckets alive across rebuilds so a table swap does not refill them.
#[derive(Default)]
pub struct RateLimiters {
    buckets: HashMap<(RouteId, String), Arc<TokenBucket>>,
}

impl RateLimiters {
    fn get(
        &mut self,
        route: &RouteId,
        spec: &str,
        rate: Rate,
        used: &mut HashSet<(RouteId, String)>,
    ) -> Arc<TokenBucket> {
        let key = (route.clone(), spec.to_string());
        used.insert(key.clone());
        self.buckets
            .entry(key)
            .or_insert_with(|| Arc::new(TokenBucket::new(rate)))
            .clone()
    }
}

pub struct Compiler<'a> {
    snap: &'a Snapshot,
    now: Time,
    services: HashMap<(&'a str, &'a str), &'a Service>,
    secrets: HashMap<(&'a str, &'a str), &'a Secret>,
    limiters: &'a mut RateLimiters,
    used_limiters: HashSet<(RouteId, String)>,
    table: RouteTable,
    certs: CertStore,
    reports: Vec<Report>,
}

fn ns_name(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or(""),
    )
}

fn created(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    m.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0)
}

/// Compiles a snapshot.
pub fn compile(snap: &Snapshot, limiters: &mut RateLimiters) -> Compiled {
    let mut c = Compiler {
        snap,
        now: Time(jiff::Timestamp::now()),
        services: snap
            .services
            .iter()
            .map(|s| (ns_name(&s.metadata), s.as_ref()))
            .collect(),
        secrets: snap
            .secrets
            .iter()
            .map(|s| (ns_name(&s.metadata), s.as_ref()))
            .collect(),
        limiters,
        used_limiters: HashSet::new(),
        table: RouteTable::default(),
        certs: CertStore::default(),
        reports: Vec::new(),
    };
    // Older objects first so they win host/certificate conflicts deterministically.
    let mut ingresses: Vec<&Ingress> = snap.ingresses.iter().map(|i| i.as_ref()).collect();
    ingresses.sort_by_key(|i| (created(&i.metadata), ns_name(&i.metadata)));
    for ing in ingresses {
        c.ingress(ing);
    }
    let classes = c.gateway_classes();
    let gateways = c.gateways(&classes);
    let mut routes: Vec<&HTTPRoute> = snap.routes.iter().map(|r| r.as_ref()).collect();
    routes.sort_by_key(|r| (created(&r.metadata), ns_name(&r.metadata)));
    let mut attached: HashMap<(String, String, String), i32> = HashMap::new();
    for r in routes {
        c.http_route(r, &gateways, &mut attached);
    }
    c.finish_gateway_status(&gateways, &attached);
    let Compiler {
        mut table,
        mut certs,
        reports,
        used_limiters,
        limiters,
        ..
    } = c;
    limiters.buckets.retain(|k, _| used_limiters.contains(k));
    table.seal();
    certs.seal();
    Compiled {
        table,
        certs,
        reports,
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// A Gateway bosun programs, with what its listeners allow.
struct OurGateway<'a> {
    gw: &'a Gateway,
    namespace: String,
    name: String,
    listener_problems: HashMap<String, Vec<Problem>>,
}

const VALID_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl<'a> Compiler<'a> {
    fn report(
        &mut self,
        key: ObjectKey,
        uid: Option<String>,
        status: DesiredStatus,
        problems: Vec<Problem>,
    ) {
        self.reports.push(Report {
            key,
            uid,
            status,
            problems,
        });
    }

    fn limiter(
        &mut self,
        route: &RouteId,
        ann: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Arc<TokenBucket>>, String> {
        let Some(spec) = ann.and_then(|a| a.get(RATE_LIMIT_ANNOTATION)) else {
            return Ok(None);
        };
        let rate = Rate::parse(spec)?;
        Ok(Some(self.limiters.get(
            route,
            spec,
            rate,
            &mut self.used_limiters,
        )))
    }

    /// Resolves `name:port` in `namespace` to a Service port.
    fn service_port(
        &self,
        namespace: &str,
        name: &str,
        port: ServicePortRef<'_>,
    ) -> Result<BackendTarget, String> {
        let svc = self
            .services
            .get(&(namespace, name))
            .ok_or_else(|| format!("Service {namespace}/{name} not found"))?;
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .cloned()
            .unwrap_or_default();
        let found = ports.iter().find(|p| match port {
            ServicePortRef::Number(n) => p.port == n,
            ServicePortRef::Name(n) => p.name.as_deref() == Some(n),
        });
        let p = found.ok_or_else(|| match port {
            ServicePortRef::Number(n) => format!("Service {namespace}/{name} has no port {n}"),
            ServicePortRef::Name(n) => {
                format!("Service {namespace}/{name} has no port named {n:?}")
            }
        })?;
        Ok(BackendTarget {
            namespace: namespace.to_string(),
            service: name.to_string(),
            port: u16::try_from(p.port)
                .map_err(|_| format!("Service port {} out of range", p.port))?,
            port_name: p.name.clone().unwrap_or_default(),
        })
    }

    // ----------------------------------------------------------------------------- Ingress

    fn ingress(&mut self, ing: &Ingress) {
        let (ns, name) = ns_name(&ing.metadata);
        let spec = ing.spec.clone().unwrap_or_default();
        let class = spec.ingress_class_name.as_deref().or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/ingress.class"))
                .map(|s| s.as_str())
        });
        if class.is_some_and(|c| c != INGRESS_CLASS) {
            return;
        }
        let id = RouteId {
            kind: "Ingress",
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let key = ObjectKey {
            kind: "Ingress",
            namespace: Some(ns.to_string()),
            name: name.to_string(),
        };
        let mut problems = Vec::new();
        let limiter = match self.limiter(&id, ing.metadata.annotations.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                problems.push(Problem {
                    reason: "InvalidAnnotation".into(),
                    message: format!("{e}; the Ingress is not served"),
                });
                self.report(
                    key,
                    ing.metadata.uid.clone(),
                    DesiredStatus::Ingress,
                    problems,
                );
                return;
            }
        };
        let ctime = created(&ing.metadata);

        // Validate every path first: an Ingress is served whole or not at all.
        let mut entries: Vec<(HostPattern, RequestMatch, &IngressBackend, usize)> = Vec::new();
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = HostPattern::parse(rule.host.as_deref().unwrap_or(""), true);
            for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let path = p.path.as_deref().unwrap_or("/");
                let m = match p.path_type.as_str() {
                    "Exact" if path.starts_with('/') => PathMatch::Exact(path.to_string()),
                    "Prefix" | "ImplementationSpecific" if path.starts_with('/') => {
                        PathMatch::prefix(path)
                    }
                    "Exact" | "Prefix" | "ImplementationSpecific" => {
                        problems.push(Problem {
                            reason: "InvalidPath".into(),
                            message: format!("spec.rules[{ri}].http.paths[{pi}].path {path:?} must start with '/'"),
                        });
                        continue;
                    }
                    other => {
                        problems.push(Problem {
                            reason: "InvalidPath".into(),
                            message: format!(
                                "spec.rules[{ri}].http.paths[{pi}].pathType {other:?} is not Exact, Prefix or ImplementationSpecific"
                            ),
                        });
                        continue;
                    }
                };
                entries.push((
                    host.clone(),
                    RequestMatch::path_only(m),
                    &p.backend,
                    ri * 1000 + pi,
                ));
            }
        }
        if !problems.is_empty() {
            let message = problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            problems = vec![Problem {
                reason: "InvalidIngress".into(),
                message: format!("{message}; the Ingress is not served"),
            }];
            self.report(
                key,
                ing.metadata.uid.clone(),
                DesiredStatus::Ingress,
                problems,
            );
            return;
        }

        let action_for =
            |this: &mut Self, backend: &IngressBackend, problems: &mut Vec<Problem>| {
                let mut action = RuleAction::new(id.clone());
                action.unresolved_status = StatusCode::SERVICE_UNAVAILABLE;
                action.rate_limit = limiter.clone();
                let (target, shown) = match (&backend.service, &backend.resource) {
                    (Some(s), _) => {
                        let port = match s.port.as_ref() {
                            Some(p) => match (&p.number, &p.name) {
                                (Some(n), _) => Ok(ServicePortRef::Number(*n)),
                                (None, Some(n)) => Ok(ServicePortRef::Name(n)),
                                _ => Err(format!("backend Service {} has no port", s.name)),
                            },
                            None => Err(format!("backend Service {} has no port", s.name)),
                        };
                        let t = port.and_then(|p| this.service_port(ns, &s.name, p));
                        match t {
                            Ok(t) => (Some(t), s.name.clone()),
                            Err(e) => {
                                problems.push(Problem {
                                    reason: "BackendNotFound".into(),
                                    message: format!("{e}; requests get 503"),
                                });
                                (None, s.name.clone())
                            }
                        }
                    }
                    (None, Some(r)) => {
                        problems.push(Problem {
                            reason: "UnsupportedBackend".into(),
                            message: format!(
                                "resource backend {}/{} is not supported; requests get 503",
                                r.kind, r.name
                            ),
                        });
                        (None, r.name.clone())
                    }
                    (None, None) => {
                        problems.push(Problem {
                            reason: "BackendNotFound".into(),
                            message: "backend names neither a service nor a resource".into(),
                        });
                        (None, String::new())
                    }
                };
                action.backends.push(WeightedBackend {
                    target,
                    name: shown,
                    weight: 1,
                    request_headers: None,
                    response_headers: None,
                });
                Arc::new(action)
            };

        for (host, m, backend, order) in entries {
            let action = action_for(self, backend, &mut problems);
            let precedence = Precedence::new(&m, ctime, id.clone(), order, 0);
            self.table.add(
                &host,
                Entry {
                    matcher: m,
                    precedence,
                    action,
                },
            );
        }
        if let Some(b) = &spec.default_backend {
            let action = action_for(self, b, &mut problems);
            let m = RequestMatch::path_only(PathMatch::prefix("/"));
            let mut precedence = Precedence::new(&m, ctime, id.clone(), usize::MAX, 0);
            precedence.path_kind = 3;
            self.table.add(
                &HostPattern::Any,
                Entry {
                    matcher: m,
                    precedence,
                    action,
                },
            );
        }
        for (ti, tls) in spec.tls.iter().flatten().enumerate() {
            let Some(secret_name) = tls.secret_name.as_deref() else {
                continue;
            };
            match self.load_secret(ns, secret_name) {
                Ok(k) => {
                    for h in tls.hosts.iter().flatten() {
                        self.certs.add(h, k.clone());
                    }
                }
                Err(e) => problems.push(Problem {
                    reason: "InvalidCertificate".into(),
                    message: format!("spec.tls[{ti}]: {e}; TLS for these hosts is not served"),
                }),
            }
        }
        self.report(
            key,
            ing.metadata.uid.clone(),
            DesiredStatus::Ingress,
            problems,
        );
    }

    fn load_secret(&self, ns: &str, name: &str) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
        let s = self
            .secrets
            .get(&(ns, name))
            .ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
        certified_key_from_secret(s).map_err(|e| format!("Secret {ns}/{name}: {e}"))
    }

    // ------------------------------------------------------------------ GatewayClass, Gateway

    fn gateway_classes(&mut self) -> HashSet<String> {
        let mut ours = HashSet::new();
        for c in &self.snap.classes {
            if c.spec.controller_name != CONTROLLER_NAME {
                continue;
            }
            let name = c.metadata.name.clone().unwrap_or_default();
            ours.insert(name.clone());
            let status = gw::GatewayClassStatus {
                conditions: vec![condition(
                    "Accepted",
                    true,
                    "Accepted",
                    "Handled by the bosun gateway",
                    c.metadata.generation,
                    &self.now,
                )],
                supported_features: Vec::new(),
            };
            self.report(
                ObjectKey {
                    kind: "GatewayClass",
                    namespace: None,
                    name,
                },
                c.metadata.uid.clone(),
                DesiredStatus::GatewayClass(status),
                Vec::new(),
            );
        }
        ours
    }

    fn gateways(&mut self, classes: &HashSet<String>) -> Vec<OurGateway<'a>> {
        let mut out = Vec::new();
        let snap = self.snap;
        for g in &snap.gateways {
            if !classes.contains(&g.spec.gateway_class_name) {
                continue;
            }
            let (ns, name) = ns_name(&g.metadata);
            let mut listener_problems: HashMap<String, Vec<Problem>> = HashMap::new();
            for l in &g.spec.listeners {
                let mut probs = Vec::new();
                match l.protocol.as_str() {
                    "HTTP" => {}
                    "HTTPS" => {
                        let tls = l.tls.clone().unwrap_or_default();
                        if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
                            probs.push(Problem {
                                reason: "UnsupportedValue".into(),
                                message: format!(
                                    "listener {}: TLS mode {:?} is not supported",
                                    l.name, tls.mode
                                ),
                            });
                        }
                        if tls.certificate_refs.is_empty() {
                            probs.push(Problem {
                                reason: "InvalidCertificateRef".into(),
                                message: format!(
                                    "listener {}: HTTPS needs tls.certificateRefs",
                                    l.name
                                ),
                            });
                        }
                        for r in &tls.certificate_refs {
                            let rns = r.namespace.as_deref().unwrap_or(ns);
                            let kind_ok = r.group.as_deref().unwrap_or("").is_empty()
                                && r.kind.as_deref().unwrap_or("Secret") == "Secret";
                            let res = if !kind_ok {
                                Err(format!("certificateRef {} is not a core Secret", r.name))
                            } else if rns != ns {
                                Err(format!(
                                    "certificateRef {rns}/{} is in another namespace (ReferenceGrant is not supported)",
                                    r.name
                                ))
                            } else {
                                self.load_secret(rns, &r.name)
                            };
                            match res {
                                Ok(k) => self.certs.add(l.hostname.as_deref().unwrap_or("*"), k),
                                Err(e) => probs.push(Problem {
                                    reason: "InvalidCertificateRef".into(),
                                    message: format!("listener {}: {e}", l.name),
                                }),
                            }
                        }
                    }
                    other => probs.push(Problem {
                        reason: "UnsupportedProtocol".into(),
                        message: format!(
                            "listener {}: protocol {other:?} is not supported (HTTP, HTTPS)",
                            l.name
                        ),
                    }),
                }
                listener_problems.insert(l.name.clone(), probs);
            }
            out.push(OurGateway {
                gw: g.as_ref(),
                namespace: ns.to_string(),
                name: name.to_string(),
                listener_problems,
            });
        }
        out
    }

    fn finish_gateway_status(
        &mut self,
        gateways: &[OurGateway<'_>],
        attached: &HashMap<(String, String, String), i32>,
    ) {
        for g in gateways {
            let generation = g.gw.metadata.generation;
            let mut listeners = Vec::new();
            let mut all_problems = Vec::new();
            for l in &g.gw.spec.listeners {
                let probs = g
                    .listener_problems
                    .get(&l.name)
                    .cloned()
                    .unwrap_or_default();
                let ok = probs.is_empty();
                let msg = probs
                    .iter()
                    .map(|p| p.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                let reason = probs.first().map(|p| p.reason.clone()).unwrap_or_default();
                let unsupported = reason == "UnsupportedProtocol";
                listeners.push(gw::ListenerStatus {
                    name: l.name.clone(),
                    supported_kinds: vec![gw::RouteGroupKind {
                        group: Some(gw::GROUP.into()),
                        kind: "HTTPRoute".into(),
                    }],
                    attached_routes: attached
                        .get(&(g.namespace.clone(), g.name.clone(), l.name.clone()))
                        .copied()
                        .unwrap_or(0),
                    conditions: vec![
                        condition(
                            "Accepted",
                            !unsupported,
                            if unsupported {
                                "UnsupportedProtocol"
                            } else {
                                "Accepted"
                            },
                            if unsupported {
                                msg.clone()
                            } else {
                                String::new()
                            },
                            generation,
                            &self.now,
                        ),
                        condition(
                            "ResolvedRefs",
                            ok || unsupported,
                            if ok || unsupported {
                                "ResolvedRefs"
                            } else {
                                reason.as_str()
                            },
                            if ok || unsupported {
                                String::new()
                            } else {
                                msg.clone()
                            },
                            generation,
                            &self.now,
                        ),
                        condition(
                            "Programmed",
                            ok,
                            if ok { "Programmed" } else { "Invalid" },
                            msg.clone(),
                            generation,
                            &self.now,
                        ),
                    ],
                });
                all_problems.extend(probs);
            }
            let status = gw::GatewayStatus {
                addresses: Vec::new(),
                conditions: vec![
                    condition("Accepted", true, "Accepted", "", generation, &self.now),
                    condition("Programmed", true, "Programmed", "", generation, &self.now),
                ],
                listeners,
            };
            self.report(
                ObjectKey {
                    kind: "Gateway",
                    namespace: Some(g.namespace.clone()),
                    name: g.name.clone(),
                },
                g.gw.metadata.uid.clone(),
                DesiredStatus::Gateway(status),
                all_problems,
            );
        }
    }

    // --------------------------------------------------------------------------- HTTPRoute

    fn http_route(
        &mut self,
        r: &HTTPRoute,
        gateways: &[OurGateway<'_>],
        attached: &mut HashMap<(String, String, String), i32>,
    ) {
        let (ns, name) = ns_name(&r.metadata);
        let generation = r.metadata.generation;
        let id = RouteId {
            kind: "HTTPRoute",
            namespace: ns.to_string(),
            name: name.to_string(),
        };

        // Which parents accept this route, and with which hostnames.
        struct ParentResult {
            pref: ParentReference,
            accepted: Result<Vec<HostPattern>, (String, String)>,
        }
        let mut parents: Vec<ParentResult> = Vec::new();
        if r.spec.parent_refs.is_empty() {
            parents.push(ParentResult {
                pref: ParentReference {
                    group: Some(gw::GROUP.into()),
                    kind: Some("Gateway".into()),
                    namespace: None,
                    name: IMPLICIT_PARENT.into(),
                    section_name: None,
                    port: None,
                },
                accepted: Ok(route_hosts(&r.spec.hostnames, None)),
            });
        }
        for pref in &r.spec.parent_refs {
            let group = pref.group.as_deref().unwrap_or(gw::GROUP);
            let kind = pref.kind.as_deref().unwrap_or("Gateway");
            if group != gw::GROUP || kind != "Gateway" {
                continue; // Not a parent kind bosun implements; another controller may.
            }
            let pns = pref.namespace.as_deref().unwrap_or(ns);
            let Some(g) = gateways
                .iter()
                .find(|g| g.namespace == pns && g.name == pref.name)
            else {
                if self
                    .snap
                    .gateways
                    .iter()
                    .any(|g| ns_name(&g.metadata) == (pns, pref.name.as_str()))
                {
                    continue; // A Gateway of another class.
                }
                parents.push(ParentResult {
                    pref: pref.clone(),
                    accepted: Err((
                        "NoMatchingParent".into(),
                        format!("Gateway {pns}/{} not found", pref.name),
                    )),
                });
                continue;
            };
            let mut hosts = Vec::new();
            let mut why = None;
            for l in &g.gw.spec.listeners {
                if pref.section_name.as_ref().is_some_and(|s| s != &l.name) {
                    continue;
                }
                if pref.port.is_some_and(|p| p != l.port) {
                    continue;
                }
                if !matches!(l.protocol.as_str(), "HTTP" | "HTTPS") {
                    continue;
                }
                let from = l
                    .allowed_routes
                    .as_ref()
                    .and_then(|a| a.namespaces.as_ref())
                    .and_then(|n| n.from.as_deref())
                    .unwrap_or("Same");
                let allowed = match from {
                    "All" => true,
                    "Same" => ns == g.namespace,
                    _ => false, // Selector needs Namespace labels; not supported.
                };
                if !allowed {
                    why = Some((
                        "NotAllowedByListeners".to_string(),
                        format!(
                            "listener {} does not allow routes from namespace {ns}",
                            l.name
                        ),
                    ));
                    continue;
                }
                let lh = route_hosts(&r.spec.hostnames, l.hostname.as_deref());
                if lh.is_empty() {
                    why = Some((
                        "NoMatchingListenerHostname".to_string(),
                        format!("no hostname of the route matches listener {}", l.name),
                    ));
                    continue;
                }
                *attached
                    .entry((g.namespace.clone(), g.name.clone(), l.name.clone()))
                    .or_default() += 1;
                hosts.extend(lh);
            }
            let accepted = if hosts.is_empty() {
                Err(why.unwrap_or((
                    "NoMatchingParent".into(),
                    "no listener of the Gateway matches the parentRef".into(),
                )))
            } else {
                let mut seen = HashSet::new();
                hosts.retain(|h| seen.insert(h.clone()));
                Ok(hosts)
            };
            parents.push(ParentResult {
                pref: pref.clone(),
                accepted,
            });
        }
        if parents.is_empty() {
            return; // Nothing of ours: no status to write.
        }

        // Compile the rules once; all accepted parents share them.
        let mut invalid: Vec<String> = Vec::new();
        let mut unresolved: Vec<(String, String)> = Vec::new();
        let limiter = match self.limiter(&id, r.metadata.annotations.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                invalid.push(e);
                None
            }
        };
        let mut compiled: Vec<(RequestMatch, Arc<RuleAction>, usize, usize)> = Vec::new();
        let default_rule;
        let rules: &[HTTPRouteRule] = if r.spec.rules.is_empty() {
            default_rule = [HTTPRouteRule::default()];
            &default_rule
        } else {
            &r.spec.rules
        };
        for (ri, rule) in rules.iter().enumerate() {
            match self.rule(ns, &id, ri, rule, limiter.clone(), &mut unresolved) {
                Ok((matches, action)) => {
                    for (mi, m) in matches.into_iter().enumerate() {
                        compiled.push((m, action.clone(), ri, mi));
                    }
                }
                Err(e) => invalid.extend(e),
            }
        }

        let ctime = created(&r.metadata);
        let mut problems = Vec::new();
        let mut statuses = Vec::new();
        for p in parents {
            let (accepted, reason, message) = match (&p.accepted, invalid.is_empty()) {
                (Err((reason, msg)), _) => (false, reason.clone(), msg.clone()),
                (Ok(_), false) => (
                    false,
                    "UnsupportedValue".to_string(),
                    format!("{}; the route is not served", invalid.join("; ")),
                ),
                (Ok(_), true) => (true, "Accepted".to_string(), String::new()),
            };
            if accepted && let Ok(hosts) = &p.accepted {
                for h in hosts {
                    for (m, action, ri, mi) in &compiled {
                        let precedence = Precedence::new(m, ctime, id.clone(), *ri, *mi);
                        self.table.add(
                            h,
                            Entry {
                                matcher: m.clone(),
                                precedence,
                                action: action.clone(),
                            },
                        );
                    }
                }
            }
            if !accepted {
                problems.push(Problem {
                    reason: reason.clone(),
                    message: message.clone(),
                });
            }
            let resolved = if unresolved.is_empty() {
                condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "",
                    generation,
                    &self.now,
                )
            } else {
                let msg = unresolved
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                condition(
                    "ResolvedRefs",
                    false,
                    &unresolved[0].0,
                    msg,
                    generation,
                    &self.now,
                )
            };
            statuses.push(RouteParentStatus {
                parent_ref: p.pref,
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![
                    condition(
                        "Accepted", accepted, &reason, message, generation, &self.now,
                    ),
                    resolved,
                ],
            });
        }
        for (reason, message) in &unresolved {
            problems.push(Problem {
                reason: reason.clone(),
                message: message.clone(),
            });
        }
        // Keep other controllers' entries.
        let mut all = r
            .status
            .as_ref()
            .map(|s| {
                s.parents
                    .iter()
                    .filter(|p| p.controller_name != CONTROLLER_NAME)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        all.extend(statuses);
        self.report(
            ObjectKey {
                kind: "HTTPRoute",
                namespace: Some(ns.to_string()),
                name: name.to_string(),
            },
            r.metadata.uid.clone(),
            DesiredStatus::HTTPRoute(gw::HTTPRouteStatus { parents: all }),
            problems,
        );
    }

    /// Compiles one rule. Err lists why the rule (and so the route) is invalid; backend
    /// references that do not resolve are collected in `unresolved` instead.
    #[allow(clippy::type_complexity)]
    fn rule(
        &mut self,
        ns: &str,
        id: &RouteId,
        ri: usize,
        rule: &HTTPRouteRule,
        limiter: Option<Arc<TokenBucket>>,
        unresolved: &mut Vec<(String, String)>,
    ) -> Result<(Vec<RequestMatch>, Arc<RuleAction>), Vec<String>> {
        let mut errs = Vec::new();
        let at = |s: String| format!("spec.rules[{ri}].{s}");
        let mut matches = Vec::new();
        let default_match = [gw::HTTPRouteMatch::default()];
        let ms: &[gw::HTTPRouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        for (mi, m) in ms.iter().enumerate() {
            match compile_match(m) {
                Ok(c) => matches.push(c),
                Err(e) => errs.push(at(format!("matches[{mi}].{e}"))),
            }
        }
        let mut action = RuleAction::new(id.clone());
        action.rate_limit = limiter;
        for (fi, f) in rule.filters.iter().enumerate() {
            if let Err(e) = self.filter(ns, f, &mut action, &matches, unresolved) {
                errs.push(at(format!("filters[{fi}]: {e}")));
            }
        }
        if action.redirect.is_some() && action.rewrite.is_some() {
            errs.push(at(
                "filters: RequestRedirect and URLRewrite cannot be combined".into(),
            ));
        }
        if action.redirect.is_some() && !rule.backend_refs.is_empty() {
            errs.push(at(
                "filters: RequestRedirect cannot be combined with backendRefs".into(),
            ));
        }
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let weight = b.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                errs.push(at(format!(
                    "backendRefs[{bi}].weight {weight} must be 0..1000000"
                )));
                continue;
            }
            let mut wb = WeightedBackend {
                target: None,
                name: b.name.clone(),
                weight: weight as u32,
                request_headers: None,
                response_headers: None,
            };
            let oref = gw::BackendObjectReference {
                group: b.group.clone(),
                kind: b.kind.clone(),
                name: b.name.clone(),
                namespace: b.namespace.clone(),
                port: b.port,
            };
            match self.backend_ref(ns, &oref) {
                Ok(t) => wb.target = Some(t),
                Err(e) => unresolved.push((e.0, at(format!("backendRefs[{bi}]: {}", e.1)))),
            }
            for (fi, f) in b.filters.iter().enumerate() {
                let mut tmp = RuleAction::new(id.clone());
                match self.filter(ns, f, &mut tmp, &matches, unresolved) {
                    Ok(()) if tmp.redirect.is_none() && tmp.rewrite.is_none() && tmp.mirrors.is_empty() => {
                        wb.request_headers = tmp.request_headers;
                        wb.response_headers = tmp.response_headers;
                    }
                    Ok(()) => errs.push(at(format!(
                        "backendRefs[{bi}].filters[{fi}]: only header modifiers are supported on a backendRef"
                    ))),
                    Err(e) => errs.push(at(format!("backendRefs[{bi}].filters[{fi}]: {e}"))),
                }
            }
            action.backends.push(wb);
        }
        if let Some(t) = &rule.timeouts {
            let parse = |v: &Option<String>,
                         f: &str|
             -> Result<Option<std::time::Duration>, String> {
                v.as_deref()
                    .map(|s| gw::parse_duration(s).map_err(|e| at(format!("timeouts.{f}: {e}"))))
                    .transpose()
            };
            match (
                parse(&t.request, "request"),
                parse(&t.backend_request, "backendRequest"),
            ) {
                (Ok(req), Ok(be)) => {
                    // Zero means "no timeout" in the Gateway API.
                    action.request_timeout = req.filter(|d| !d.is_zero());
                    action.backend_timeout = be.filter(|d| !d.is_zero());
                    if let (Some(r), Some(b)) = (action.request_timeout, action.backend_timeout)
                        && b > r
                    {
                        errs.push(at(
                            "timeouts.backendRequest must not exceed timeouts.request".into(),
                        ));
                    }
                }
                (a, b) => errs.extend(a.err().into_iter().chain(b.err())),
            }
        }
        if errs.is_empty() {
            Ok((matches, Arc::new(action)))
        } else {
            Err(errs)
        }
    }

    fn backend_ref(
        &self,
        ns: &str,
        b: &gw::BackendObjectReference,
    ) -> Result<BackendTarget, (String, String)> {
        let group = b.group.as_deref().unwrap_or("");
        let kind = b.kind.as_deref().unwrap_or("Service");
        if !group.is_empty() || kind != "Service" {
            return Err((
                "InvalidKind".into(),
                format!("{group}/{kind} {} is not a Service", b.name),
            ));
        }
        let bns = b.namespace.as_deref().unwrap_or(ns);
        if bns != ns {
            return Err((
                "RefNotPermitted".into(),
                format!(
                    "Service {bns}/{} is in another namespace (ReferenceGrant is not supported)",
                    b.name
                ),
            ));
        }
        let Some(port) = b.port else {
            return Err((
                "BackendNotFound".into(),
                format!("Service {} needs a port", b.name),
            ));
        };
        self.service_port(ns, &b.name, ServicePortRef::Number(port))
            .map_err(|e| ("BackendNotFound".into(), e))
    }

    fn filter(
        &mut self,
        ns: &str,
        f: &HTTPRouteFilter,
        action: &mut RuleAction,
        matches: &[RequestMatch],
        unresolved: &mut Vec<(String, String)>,
    ) -> Result<(), String> {
        match f.type_.as_str() {
            "RequestHeaderModifier" => {
                let m = f
                    .request_header_modifier
                    .as_ref()
                    .ok_or("requestHeaderModifier is required")?;
                action.request_headers = Some(header_modifier(m)?);
            }
            "ResponseHeaderModifier" => {
                let m = f
                    .response_header_modifier
                    .as_ref()
                    .ok_or("responseHeaderModifier is required")?;
                action.response_headers = Some(header_modifier(m)?);
            }
            "RequestRedirect" => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or("requestRedirect is required")?;
                let status = match r.status_code.unwrap_or(302) {
                    301 => StatusCode::MOVED_PERMANENTLY,
                    302 => StatusCode::FOUND,
                    303 => StatusCode::SEE_OTHER,
                    307 => StatusCode::TEMPORARY_REDIRECT,
                    308 => StatusCode::PERMANENT_REDIRECT,
                    c => {
                        return Err(format!(
                            "requestRedirect.statusCode {c} is not 301, 302, 303, 307 or 308"
                        ));
                    }
                };
                if let Some(s) = &r.scheme
                    && s != "http"
                    && s != "https"
                {
                    return Err(format!("requestRedirect.scheme {s:?} is not http or https"));
                }
                let port = r
                    .port
                    .map(|p| {
                        u16::try_from(p)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or(format!("requestRedirect.port {p} is invalid"))
                    })
                    .transpose()?;
                action.redirect = Some(Redirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(p, matches))
                        .transpose()?,
                    port,
                    status,
                });
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref().ok_or("urlRewrite is required")?;
                if let Some(h) = &r.hostname {
                    HeaderValue::from_str(h)
                        .map_err(|_| format!("urlRewrite.hostname {h:?} is invalid"))?;
                }
                action.rewrite = Some(Rewrite {
                    hostname: r.hostname.clone(),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(p, matches))
                        .transpose()?,
                });
            }
            "RequestMirror" => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or("requestMirror is required")?;
                let fraction = match (&m.percent, &m.fraction) {
                    (Some(_), Some(_)) => {
                        return Err("requestMirror: set percent or fraction, not both".into());
                    }
                    (Some(p), None) if (0..=100).contains(p) => f64::from(*p) / 100.0,
                    (None, Some(fr)) => {
                        let d = fr.denominator.unwrap_or(100);
                        if d <= 0 || fr.numerator < 0 || fr.numerator > d {
                            return Err("requestMirror.fraction must satisfy 0 <= numerator <= denominator, denominator > 0".into());
                        }
                        f64::from(fr.numerator) / f64::from(d)
                    }
                    (None, None) => 1.0,
                    (Some(p), None) => {
                        return Err(format!("requestMirror.percent {p} must be 0..100"));
                    }
                };
                match self.backend_ref(ns, &m.backend_ref) {
                    Ok(target) => action.mirrors.push(Mirror { target, fraction }),
                    Err((reason, msg)) => {
                        unresolved.push((reason, format!("requestMirror: {msg}")))
                    }
                }
            }
            other => return Err(format!("filter type {other:?} is not supported")),
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum ServicePortRef<'a> {
    Number(i32),
    Name(&'a str),
}

/// The host patterns a route serves under a listener hostname (None = any).
fn route_hosts(route: &[String], listener: Option<&str>) -> Vec<HostPattern> {
    let pats: Vec<HostPattern> = if route.is_empty() {
        vec![HostPattern::Any]
    } else {
        route.iter().map(|h| HostPattern::parse(h, false)).collect()
    };
    let Some(l) = listener else { return pats };
    let l = HostPattern::parse(l, false);
    pats.into_iter().filter_map(|p| intersect(&p, &l)).collect()
}

/// The more specific of two host patterns when they overlap.
fn intersect(a: &HostPattern, b: &HostPattern) -> Option<HostPattern> {
    use HostPattern::*;
    let covers = |wild: &str, host: &str| host.strip_suffix(wild).is_some_and(|l| !l.is_empty());
    match (a, b) {
        (Any, x) | (x, Any) => Some(x.clone()),
        (Exact(x), Exact(y)) => (x == y).then(|| a.clone()),
        (Exact(h), Wildcard { suffix, .. }) | (Wildcard { suffix, .. }, Exact(h)) => {
            covers(suffix, h).then(|| Exact(h.clone()))
        }
        (Wildcard { suffix: x, .. }, Wildcard { suffix: y, .. }) => {
            if x.ends_with(y.as_str()) {
                Some(a.clone())
            } else if y.ends_with(x.as_str()) {
                Some(b.clone())
            } else {
                None
            }
        }
    }
}

fn compile_match(m: &gw::HTTPRouteMatch) -> Result<RequestMatch, String> {
    let p = m.path.clone().unwrap_or_default();
    let value = p.value.clone().unwrap_or_else(|| "/".into());
    let path = match p.type_.as_deref().unwrap_or("PathPrefix") {
        "Exact" | "PathPrefix" if !value.starts_with('/') => {
            return Err(format!("path.value {value:?} must start with '/'"));
        }
        "Exact" => PathMatch::Exact(value),
        "PathPrefix" => PathMatch::prefix(&value),
        "RegularExpression" => {
            PathMatch::Regex(full_regex(&value).map_err(|e| format!("path.value: {e}"))?)
        }
        other => {
            return Err(format!(
                "path.type {other:?} is not Exact, PathPrefix or RegularExpression"
            ));
        }
    };
    let value_match = |t: Option<&str>, v: &str, what: &str| -> Result<ValueMatch, String> {
        match t.unwrap_or("Exact") {
            "Exact" => Ok(ValueMatch::Exact(v.to_string())),
            "RegularExpression" => full_regex(v)
                .map(ValueMatch::Regex)
                .map_err(|e| format!("{what}: {e}")),
            other => Err(format!(
                "{what}.type {other:?} is not Exact or RegularExpression"
            )),
        }
    };
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("headers[{i}].name {:?} is not a valid header name", h.name))?;
        headers.push((
            name,
            value_match(h.type_.as_deref(), &h.value, &format!("headers[{i}]"))?,
        ));
    }
    let mut query = Vec::new();
    for (i, q) in m.query_params.iter().enumerate() {
        query.push((
            q.name.clone(),
            value_match(q.type_.as_deref(), &q.value, &format!("queryParams[{i}]"))?,
        ));
    }
    let method = match &m.method {
        Some(s) if VALID_METHODS.contains(&s.as_str()) => {
            Some(Method::from_bytes(s.as_bytes()).map_err(|e| e.to_string())?)
        }
        Some(s) => return Err(format!("method {s:?} is not a valid HTTP method")),
        None => None,
    };
    Ok(RequestMatch {
        path,
        method,
        headers,
        query,
    })
}

fn header_modifier(m: &gw::HTTPHeaderFilter) -> Result<HeaderModifier, String> {
    let pair = |h: &gw::HTTPHeader| -> Result<(HeaderName, HeaderValue), String> {
        Ok((
            HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?} is invalid", h.name))?,
            HeaderValue::from_str(&h.value)
                .map_err(|_| format!("header value {:?} is invalid", h.value))?,
        ))
    };
    Ok(HeaderModifier {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("header name {n:?} is invalid"))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(
    p: &gw::HTTPPathModifier,
    matches: &[RequestMatch],
) -> Result<PathModifier, String> {
    match p.type_.as_str() {
        "ReplaceFullPath" => {
            let v = p
                .replace_full_path
                .clone()
                .ok_or("path.replaceFullPath is required")?;
            if !v.starts_with('/') {
                return Err(format!("path.replaceFullPath {v:?} must start with '/'"));
            }
            Ok(PathModifier::ReplaceFullPath(v))
        }
        "ReplacePrefixMatch" => {
            let v = p
                .replace_prefix_match
                .clone()
                .ok_or("path.replacePrefixMatch is required")?;
            if !v.starts_with('/') {
                return Err(format!("path.replacePrefixMatch {v:?} must start with '/'"));
            }
            if matches
                .iter()
                .any(|m| !matches!(m.path, PathMatch::Prefix(_)))
            {
                return Err("ReplacePrefixMatch needs PathPrefix matches only".into());
            }
            Ok(PathModifier::ReplacePrefixMatch(v))
        }
        other => Err(format!(
            "path.type {other:?} is not ReplaceFullPath or ReplacePrefixMatch"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RequestView;
    use serde_json::{Value, json};

    fn svc(name: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}))
            .unwrap(),
        )
    }

    fn lookup(c: &Compiled, host: &str, path: &str) -> Option<String> {
        let h = http::HeaderMap::new();
        let view = RequestView::new(&Method::GET, path, None, &h);
        c.table.lookup(host, &view).map(|e| {
            let b = &e.action.backends[0];
            b.target
                .as_ref()
                .map(|t| t.service.clone())
                .unwrap_or_else(|| format!("unresolved:{}", b.name))
        })
    }

    fn ing(name: &str, spec: Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn path(p: &str, t: &str, svc: &str) -> Value {
        json!({"path": p, "pathType": t, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn route(ns: &str, name: &str, spec: Value) -> Arc<HTTPRoute> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn conds(c: &Compiled, name: &str) -> Vec<(String, String, String)> {
        let r = c.reports.iter().find(|r| r.key.name == name).unwrap();
        let DesiredStatus::HTTPRoute(s) = &r.status else {
            panic!()
        };
        s.parents
            .iter()
            .flat_map(|p| {
                p.conditions
                    .iter()
                    .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            })
            .collect()
    }

    #[test]
    fn ingress_exact_beats_prefix_and_longest_prefix_wins() {
        let snap = Snapshot {
            ingresses: vec![
                ing(
                    "a",
                    json!({"rules": [{"host": "h", "http": {"paths": [
                    path("/", "Prefix", "root"), path("/foo", "Prefix", "foo"),
                    path("/foo/bar", "ImplementationSpecific", "foobar"), path("/foo", "Exact", "exact")]}}],
                    "defaultBackend": {"service": {"name": "dflt", "port": {"number": 80}}}}),
                ),
                ing(
                    "other-class",
                    json!({"ingressClassName": "nginx", "rules": [{"host": "n", "http": {"paths": [path("/", "Prefix", "root")]}}]}),
                ),
            ],
            services: ["root", "foo", "foobar", "exact", "dflt"]
                .into_iter()
                .map(svc)
                .collect(),
            ..Default::default()
        };
        let c = compile(&snap, &mut RateLimiters::default());
        assert_eq!(lookup(&c, "h", "/foo").as_deref(), Some("exact"));
        assert_eq!(lookup(&c, "h", "/foo/").as_deref(), Some("foo"));
        assert_eq!(lookup(&c, "h", "/foo/bar/baz").as_deref(), Some("foobar"));
        assert_eq!(lookup(&c, "h", "/foobar").as_deref(), Some("root"));
        // Other hosts reach the default backend; another class's Ingress is ignored.
        assert_eq!(lookup(&c, "n", "/").as_deref(), Some("dflt"));
        assert!(c.reports.iter().all(|r| r.key.name != "other-class"));
    }

    #[test]
    fn invalid_ingress_path_is_not_served() {
        let snap = Snapshot {
            ingresses: vec![ing(
                "bad",
                json!({"rules": [{"host": "h", "http": {"paths": [
                path("/", "Prefix", "root"), path("nope", "Prefix", "root")]}}]}),
            )],
            services: vec![svc("root")],
            ..Default::default()
        };
        let c = compile(&snap, &mut RateLimiters::default());
        assert_eq!(lookup(&c, "h", "/"), None);
        assert_eq!(c.reports[0].problems[0].reason, "InvalidIngress");
    }

    #[test]
    fn parents_listeners_and_hostnames() {
        let class: Arc<GatewayClass> = Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "bosun"}, "spec": {"controllerName": CONTROLLER_NAME}}),
            )
            .unwrap(),
        );
        let foreign: Arc<GatewayClass> = Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "other"}, "spec": {"controllerName": "example.com/x"}}),
            )
            .unwrap(),
        );
        let gw = |name: &str, class: &str, listeners: Value| -> Arc<Gateway> {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "namespace": "infra"},
                    "spec": {"gatewayClassName": class, "listeners": listeners}}))
                .unwrap(),
            )
        };
        let snap = Snapshot {
            classes: vec![class, foreign],
            gateways: vec![
                gw(
                    "main",
                    "bosun",
                    json!([
                    {"name": "web", "port": 80, "protocol": "HTTP", "hostname": "*.shop.local",
                     "allowedRoutes": {"namespaces": {"from": "All"}}},
                    {"name": "same", "port": 8080, "protocol": "HTTP"},
                    {"name": "udp", "port": 53, "protocol": "UDP"}]),
                ),
                gw(
                    "theirs",
                    "other",
                    json!([{"name": "web", "port": 80, "protocol": "HTTP"}]),
                ),
            ],
            routes: vec![
                route(
                    "default",
                    "r1",
                    json!({"parentRefs": [{"name": "main", "namespace": "infra", "sectionName": "web"}],
                    "hostnames": ["a.shop.local", "other.local"], "rules": [{"backendRefs": [{"name": "s", "port": 80}]}]}),
                ),
                route(
                    "default",
                    "r2",
                    json!({"parentRefs": [{"name": "main", "namespace": "infra", "sectionName": "same"}],
                    "rules": [{"backendRefs": [{"name": "s", "port": 80}]}]}),
                ),
                route(
                    "default",
                    "r3",
                    json!({"parentRefs": [{"name": "ghost"}], "rules": [{"backendRefs": [{"name": "s", "port": 80}]}]}),
                ),
                route(
                    "default",
                    "r4",
                    json!({"parentRefs": [{"name": "theirs", "namespace": "infra"}], "rules": []}),
                ),
                route(
                    "default",
                    "r5",
                    json!({"parentRefs": [{"name": "main", "namespace": "infra", "sectionName": "web"}],
                    "hostnames": ["x.other.local"], "rules": []}),
                ),
            ],
            services: vec![svc("s")],
            ..Default::default()
        };
        let c = compile(&snap, &mut RateLimiters::default());
        // Only the hostname inside the listener's wildcard is served.
        assert_eq!(lookup(&c, "a.shop.local", "/").as_deref(), Some("s"));
        assert_eq!(lookup(&c, "other.local", "/"), None);
        assert!(conds(&c, "r1").contains(&("Accepted".into(), "True".into(), "Accepted".into())));
        assert!(conds(&c, "r2").contains(&(
            "Accepted".into(),
            "False".into(),
            "NotAllowedByListeners".into()
        )));
        assert!(conds(&c, "r3").contains(&(
            "Accepted".into(),
            "False".into(),
            "NoMatchingParent".into()
        )));
        assert!(
            c.reports.iter().all(|r| r.key.name != "r4"),
            "a foreign Gateway's route gets no status from bosun"
        );
        assert!(conds(&c, "r5").contains(&(
            "Accepted".into(),
            "False".into(),
            "NoMatchingListenerHostname".into()
        )));
        let g = c.reports.iter().find(|r| r.key.name == "main").unwrap();
        let DesiredStatus::Gateway(s) = &g.status else {
            panic!()
        };
        let web = s.listeners.iter().find(|l| l.name == "web").unwrap();
        assert_eq!(web.attached_routes, 1);
        let udp = s.listeners.iter().find(|l| l.name == "udp").unwrap();
        assert!(
            udp.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "False")
        );
    }

    #[test]
    fn invalid_rules_reject_the_route() {
        let bad = |name: &str, rule: Value| route("default", name, json!({"rules": [rule]}));
        let snap = Snapshot {
            routes: vec![
                bad(
                    "redirect-and-rewrite",
                    json!({"filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}},
                    {"type": "URLRewrite", "urlRewrite": {"hostname": "x"}}]}),
                ),
                bad(
                    "prefix-on-exact",
                    json!({"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                    "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}],
                    "backendRefs": [{"name": "s", "port": 80}]}),
                ),
                bad(
                    "bad-method",
                    json!({"matches": [{"method": "FETCH"}], "backendRefs": [{"name": "s", "port": 80}]}),
                ),
                bad(
                    "bad-timeout",
                    json!({"timeouts": {"request": "1s", "backendRequest": "2s"}, "backendRefs": [{"name": "s", "port": 80}]}),
                ),
                bad(
                    "bad-header-regex",
                    json!({"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "(("}]}],
                    "backendRefs": [{"name": "s", "port": 80}]}),
                ),
                bad(
                    "cross-ns",
                    json!({"backendRefs": [{"name": "s", "namespace": "other", "port": 80}]}),
                ),
                bad("no-port", json!({"backendRefs": [{"name": "s"}]})),
            ],
            services: vec![svc("s")],
            ..Default::default()
        };
        let c = compile(&snap, &mut RateLimiters::default());
        for n in [
            "redirect-and-rewrite",
            "prefix-on-exact",
            "bad-method",
            "bad-timeout",
            "bad-header-regex",
        ] {
            assert!(
                conds(&c, n).contains(&(
                    "Accepted".into(),
                    "False".into(),
                    "UnsupportedValue".into()
                )),
                "{n}: {:?}",
                conds(&c, n)
            );
        }
        assert!(conds(&c, "cross-ns").contains(&(
            "ResolvedRefs".into(),
            "False".into(),
            "RefNotPermitted".into()
        )));
        assert!(conds(&c, "no-port").contains(&(
            "ResolvedRefs".into(),
            "False".into(),
            "BackendNotFound".into()
        )));
        assert!(
            c.table.is_empty()
                || lookup(&c, "any", "/").is_some_and(|s| s.starts_with("unresolved:"))
        );
    }

    #[test]
    fn rate_limit_buckets_survive_rebuilds() {
        let mut r = serde_json::to_value(
            route(
                "default",
                "rl",
                json!({"rules": [{"backendRefs": [{"name": "s", "port": 80}]}]}),
            )
            .as_ref(),
        )
        .unwrap();
        r["metadata"]["annotations"] = json!({"bosun.dev/rate-limit": "1/m burst=1"});
        let snap = Snapshot {
            routes: vec![Arc::new(serde_json::from_value(r).unwrap())],
            services: vec![svc("s")],
            ..Default::default()
        };
        let mut limiters = RateLimiters::default();
        let first = compile(&snap, &mut limiters);
        let h = http::HeaderMap::new();
        let view = RequestView::new(&Method::GET, "/", None, &h);
        let b1 = first
            .table
            .lookup("x", &view)
            .unwrap()
            .action
            .rate_limit
            .clone()
            .unwrap();
        assert!(b1.try_acquire().is_ok());
        let second = compile(&snap, &mut limiters);
        let b2 = second
            .table
            .lookup("x", &view)
            .unwrap()
            .action
            .rate_limit
            .clone()
            .unwrap();
        assert!(
            b2.try_acquire().is_err(),
            "a rebuild must not refill the bucket"
        );
    }
}
