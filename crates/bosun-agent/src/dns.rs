//! What a pod sees of service discovery, built as kubelet builds it: its `/etc/resolv.conf`
//! (from `dnsPolicy` and `dnsConfig`) and the Docker-link style service environment variables.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::env::ConfigError;
use crate::shim_spec::BindMount;

/// The cluster DNS server pods of this node use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDns {
    pub nameserver: IpAddr,
    /// e.g. `cluster.local`.
    pub domain: String,
}

/// Kubernetes' limits (`validation.MaxDNSNameservers`, `MaxDNSSearchPaths`).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH_PATHS: usize = 32;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> Self {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => out.nameservers.extend(words.next().map(String::from)),
                // The last search/domain line wins, as in the resolver.
                Some("search" | "domain") => {
                    out.searches = words.filter(|w| *w != ".").map(String::from).collect();
                }
                Some("options") => out.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        out
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for n in &self.nameservers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }
}

fn push_unique(list: &mut Vec<String>, v: &str) {
    if !list.iter().any(|x| x == v) {
        list.push(v.to_string());
    }
}

/// Options merge by name, later values replacing earlier ones (`mergeDNSOptions`).
fn merge_option(options: &mut Vec<String>, opt: &str) {
    let name = opt.split(':').next().unwrap_or(opt);
    match options
        .iter_mut()
        .find(|o| o.split(':').next().unwrap_or(o) == name)
    {
        Some(o) => *o = opt.to_string(),
        None => options.push(opt.to_string()),
    }
}

/// The pod's resolv.conf, or `None` when it keeps the host's file unchanged.
/// `cluster_dns` is `None` when the pod cannot reach cluster DNS (no cluster DNS configured,
/// or host networking), which makes `ClusterFirst` fall back to `Default`, as kubelet does.
pub fn pod_resolv_conf(
    pod: &Pod,
    cluster_dns: Option<&ClusterDns>,
    host: &ResolvConf,
) -> Result<Option<ResolvConf>, ConfigError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cluster = match policy {
        "ClusterFirst" if !host_network => cluster_dns,
        "ClusterFirstWithHostNet" => cluster_dns,
        "ClusterFirst" | "Default" | "None" => None,
        other => return Err(ConfigError(format!("unsupported dnsPolicy {other:?}"))),
    };
    let mut conf = match (policy, cluster) {
        ("None", _) => ResolvConf::default(),
        (_, Some(dns)) => {
            let d = dns.domain.trim_end_matches('.');
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
            for s in &host.searches {
                push_unique(&mut searches, s);
            }
            ResolvConf {
                nameservers: vec![dns.nameserver.to_string()],
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        // Default (and ClusterFirst without cluster DNS): the host's file, as it is, unless
        // dnsConfig adds to it.
        _ if spec.dns_config.is_none() => return Ok(None),
        _ => host.clone(),
    };
    if let Some(extra) = &spec.dns_config {
        for n in extra.nameservers.iter().flatten() {
            n.parse::<IpAddr>().map_err(|_| {
                ConfigError(format!("dnsConfig.nameservers: {n:?} is not an IP address"))
            })?;
            push_unique(&mut conf.nameservers, n);
        }
        for s in extra.searches.iter().flatten() {
            push_unique(&mut conf.searches, s.trim_end_matches('.'));
        }
        for o in extra.options.iter().flatten() {
            let opt = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            if !opt.is_empty() {
                merge_option(&mut conf.options, &opt);
            }
        }
    }
    if policy == "None" && conf.nameservers.is_empty() {
        return Err(ConfigError(
            "dnsPolicy None needs at least one dnsConfig.nameservers entry".into(),
        ));
    }
    // kubelet keeps the first ones and reports the rest as omitted.
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCH_PATHS);
    Ok(Some(conf))
}

/// Writes the pod's resolv.conf into `pod_dir` and returns the bind mount that puts it over
/// `/etc/resolv.conf`, or `None` when the pod keeps the host's.
pub fn prepare_resolv_conf(
    pod: &Pod,
    cluster_dns: Option<&ClusterDns>,
    pod_dir: &Path,
) -> Result<Option<BindMount>, ConfigError> {
    let host = ResolvConf::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let Some(conf) = pod_resolv_conf(pod, cluster_dns, &host)? else {
        return Ok(None);
    };
    let path: PathBuf = pod_dir.join("resolv.conf");
    std::fs::create_dir_all(pod_dir)
        .and_then(|_| crate::osutil::write_atomic(&path, conf.render().as_bytes()))
        .map_err(|e| ConfigError(format!("writing {}: {e}", path.display())))?;
    Ok(Some(BindMount {
        source: path,
        target: "/etc/resolv.conf".into(),
        read_only: false,
    }))
}

fn env_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// kubelet's `envvars.FromServices` for one service: `{SVC}_SERVICE_HOST`,
/// `{SVC}_SERVICE_PORT[_{NAME}]` and the Docker link variables. Services without a cluster
/// IP (headless, ExternalName) or without ports have none.
pub fn service_env(svc: &Service) -> Vec<(String, String)> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.as_deref().unwrap_or("");
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ip.is_empty() || ip == "None" || ports.is_empty() {
        return Vec::new();
    }
    let prefix = env_name(svc.metadata.name.as_deref().unwrap_or_default());
    let mut out = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.to_string()),
        (format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()),
    ];
    for p in ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                p.port.to_string(),
            ));
        }
    }
    let host_port = |port: i32| match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{ip}]:{port}"),
        _ => format!("{ip}:{port}"),
    };
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let url = format!("{}://{}", proto.to_lowercase(), host_port(p.port));
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((pp.clone(), url));
        out.push((format!("{pp}_PROTO"), proto.to_lowercase()));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.to_string()));
    }
    out
}

/// The service variables of a pod (`getServiceEnvVarMap`): every service of its namespace
/// when `enableServiceLinks` (default true), and always the API server's `kubernetes`
/// service of the default namespace; a same-named service of the pod's namespace wins.
pub fn pod_service_env(
    pod: &Pod,
    ns_services: &[Service],
    default_ns: &[Service],
) -> Vec<(String, String)> {
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut chosen: std::collections::BTreeMap<String, &Service> = Default::default();
    for s in default_ns {
        if s.metadata.name.as_deref() == Some("kubernetes") {
            chosen.insert("kubernetes".into(), s);
        }
    }
    if links {
        for s in ns_services {
            if s.metadata.namespace.as_deref().unwrap_or(ns) == ns
                && let Some(name) = &s.metadata.name
            {
                chosen.insert(name.clone(), s);
            }
        }
    }
    chosen.values().flat_map(|s| service_env(s)).collect()
}

/// The service variables of `pod`, read from the API at container start as kubelet does.
pub async fn service_env_for(
    api: &dyn crate::api::ClusterApi,
    pod: &Pod,
) -> anyhow::Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let ns_services = if links {
        api.services(ns).await?
    } else {
        Vec::new()
    };
    let default_ns = if ns == "default" && links {
        ns_services.clone()
    } else {
        api.services("default").await?
    };
    Ok(pod_service_env(pod, &ns_services, &default_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    fn dns() -> ClusterDns {
        ClusterDns {
            nameserver: "10.42.0.1".parse().unwrap(),
            domain: "cluster.local".into(),
        }
    }

    fn host() -> ResolvConf {
        ResolvConf::parse("nameserver 127.0.0.53\nsearch corp.example\noptions edns0 trust-ad\n")
    }

    #[test]
    fn cluster_first_points_at_cluster_dns() {
        let c = pod_resolv_conf(&pod(json!({"containers": []})), Some(&dns()), &host())
            .unwrap()
            .unwrap();
        assert_eq!(
            c.render(),
            "nameserver 10.42.0.1\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
        // Host network: ClusterFirst falls back to the host's file, WithHostNet does not.
        let hn = pod(json!({"containers": [], "hostNetwork": true}));
        assert_eq!(pod_resolv_conf(&hn, Some(&dns()), &host()).unwrap(), None);
        let hn2 = pod(json!({"containers": [], "hostNetwork": true,
                             "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert_eq!(
            pod_resolv_conf(&hn2, Some(&dns()), &host())
                .unwrap()
                .unwrap()
                .nameservers,
            ["10.42.0.1"]
        );
        // No cluster DNS on this node: host's file.
        let p = pod(json!({"containers": []}));
        assert_eq!(pod_resolv_conf(&p, None, &host()).unwrap(), None);
    }

    #[test]
    fn default_policy_and_dns_config() {
        let p = pod(json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(pod_resolv_conf(&p, Some(&dns()), &host()).unwrap(), None);
        let p = pod(
            json!({"containers": [], "dnsPolicy": "Default", "dnsConfig": {
            "nameservers": ["1.2.3.4"], "searches": ["x.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
        );
        let c = pod_resolv_conf(&p, Some(&dns()), &host()).unwrap().unwrap();
        assert_eq!(c.nameservers, ["127.0.0.53", "1.2.3.4"]);
        assert_eq!(c.searches, ["corp.example", "x.example"]);
        assert_eq!(c.options, ["edns0", "trust-ad", "ndots:2"]);
        // ClusterFirst with an ndots override replaces ndots:5.
        let p = pod(json!({"containers": [], "dnsConfig": {
            "options": [{"name": "ndots", "value": "1"}]}}));
        let c = pod_resolv_conf(&p, Some(&dns()), &host()).unwrap().unwrap();
        assert_eq!(c.options, ["ndots:1"]);
        // None: only dnsConfig, and it must name a server.
        let p = pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["9.9.9.9"]}}));
        let c = pod_resolv_conf(&p, Some(&dns()), &host()).unwrap().unwrap();
        assert_eq!(c.render(), "nameserver 9.9.9.9\n");
        let p = pod(json!({"containers": [], "dnsPolicy": "None"}));
        assert!(pod_resolv_conf(&p, Some(&dns()), &host()).is_err());
        let p = pod(json!({"containers": [], "dnsPolicy": "Bogus"}));
        assert!(pod_resolv_conf(&p, Some(&dns()), &host()).is_err());
        let p = pod(json!({"containers": [], "dnsConfig": {"nameservers": ["nope"]}}));
        assert!(pod_resolv_conf(&p, Some(&dns()), &host()).is_err());
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn service_variables_match_kubelet() {
        let s = svc(json!({
            "metadata": {"name": "my-web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"}]}
        }));
        let env = service_env(&s);
        let want: Vec<(String, String)> = [
            ("MY_WEB_SERVICE_HOST", "10.96.0.7"),
            ("MY_WEB_SERVICE_PORT", "80"),
            ("MY_WEB_SERVICE_PORT_HTTP", "80"),
            ("MY_WEB_SERVICE_PORT_DNS_UDP", "53"),
            ("MY_WEB_PORT", "tcp://10.96.0.7:80"),
            ("MY_WEB_PORT_80_TCP", "tcp://10.96.0.7:80"),
            ("MY_WEB_PORT_80_TCP_PROTO", "tcp"),
            ("MY_WEB_PORT_80_TCP_PORT", "80"),
            ("MY_WEB_PORT_80_TCP_ADDR", "10.96.0.7"),
            ("MY_WEB_PORT_53_UDP", "udp://10.96.0.7:53"),
            ("MY_WEB_PORT_53_UDP_PROTO", "udp"),
            ("MY_WEB_PORT_53_UDP_PORT", "53"),
            ("MY_WEB_PORT_53_UDP_ADDR", "10.96.0.7"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
        let headless = svc(json!({"metadata": {"name": "db"},
                                  "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}));
        assert!(service_env(&headless).is_empty());
    }

    #[test]
    fn pod_gets_its_namespace_services_unless_links_are_off() {
        let a = svc(json!({"metadata": {"name": "a", "namespace": "shop"},
                           "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 1}]}}));
        let k = svc(
            json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                           "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}}),
        );
        let other = svc(
            json!({"metadata": {"name": "other", "namespace": "default"},
                               "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 1}]}}),
        );
        let p = pod(json!({"containers": []}));
        let names = |v: Vec<(String, String)>| -> Vec<String> {
            v.into_iter()
                .map(|(k, _)| k)
                .filter(|k| k.ends_with("_SERVICE_HOST"))
                .collect()
        };
        assert_eq!(
            names(pod_service_env(
                &p,
                std::slice::from_ref(&a),
                &[k.clone(), other.clone()]
            )),
            ["A_SERVICE_HOST", "KUBERNETES_SERVICE_HOST"]
        );
        let off = pod(json!({"containers": [], "enableServiceLinks": false}));
        assert_eq!(
            names(pod_service_env(&off, &[a], &[k, other])),
            ["KUBERNETES_SERVICE_HOST"]
        );
    }
}
