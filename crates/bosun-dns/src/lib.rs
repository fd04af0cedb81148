//! Cluster DNS: answers `SVC.NS.svc.<domain>` (clusterIP, or the ready pod addresses of a
//! headless service), `_port._proto.SVC.NS.svc.<domain>` SRV, `A-B-C-D.NS.pod.<domain>` and
//! headless endpoint names from an in-memory index that watches keep current; names outside
//! the cluster domain go to the host's upstream resolvers.

pub mod index;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use bosun_watch::{Informer, Notice};
use futures::StreamExt;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::{Time, TokioRuntimeProvider};
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Header, HeaderCounts, Message, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client as KubeClient};
use tokio_util::sync::CancellationToken;

use index::{Answer, Index};

/// TTL of cluster answers: short, so endpoint changes show quickly (CoreDNS uses 5s too).
const TTL: u32 = 5;
/// Idle TCP connections are closed after this long.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Addresses to serve on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Where names outside the cluster domain go (usually the host's resolv.conf servers).
    pub upstreams: Vec<SocketAddr>,
}

/// The `nameserver` entries of a resolv.conf, as port-53 socket addresses.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            // Drop an IPv6 zone (`fe80::1%eth0`); a scoped address cannot be used without it,
            // so such entries are skipped.
            if addr.contains('%') {
                return None;
            }
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Upstreams from the host's `/etc/resolv.conf`, without any of `own` (a resolver pointing
/// at this server would loop).
pub fn host_upstreams(own: &[SocketAddr]) -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
        .into_iter()
        .filter(|u| !own.contains(u))
        .collect()
}

/// Serves cluster DNS until `shutdown`.
pub async fn run(
    client: KubeClient,
    cfg: DnsConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if cfg.listen.is_empty() {
        anyhow::bail!("cluster DNS needs at least one listen address");
    }
    let domain = Name::from_ascii(format!("{}.", cfg.cluster_domain.trim_end_matches('.')))
        .with_context(|| format!("invalid cluster domain {:?}", cfg.cluster_domain))?
        .to_lowercase();
    let index = Arc::new(RwLock::new(Index::default()));
    let stop = shutdown.child_token();
    // Counts the kinds listed once; answering starts when both are.
    let (listed, mut listed_rx) = tokio::sync::watch::channel(0u8);
    let watches = [
        tokio::spawn(watch_services(
            Informer::start(Api::all(client.clone()), stop.clone()),
            index.clone(),
            stop.clone(),
            listed.clone(),
        )),
        tokio::spawn(watch_slices(
            Informer::start(Api::all(client), stop.clone()),
            index.clone(),
            stop.clone(),
            listed,
        )),
    ];
    // Queries wait in the socket queues until the index is loaded, rather than getting
    // NXDOMAIN for names that exist.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = listed_rx.wait_for(|n| *n >= 2) => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("cluster DNS: Services not listed after 30s; answering anyway")
        }
    }
    let handler = Handler {
        index,
        domain,
        upstreams: cfg.upstreams.clone(),
    };
    let result = serve(handler, &cfg.listen, &shutdown).await;
    stop.cancel();
    for w in watches {
        let _ = w.await;
    }
    result
}

/// Binds every address (retrying while it does not exist yet: the node agent creates the
/// pod bridge that carries it) and serves until `shutdown`.
async fn serve(
    handler: Handler,
    listen: &[SocketAddr],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut server = Server::new(handler);
    for addr in listen {
        let mut delay = Duration::from_millis(100);
        let (udp, tcp) = loop {
            match bind(*addr).await {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    if delay == Duration::from_secs(2) {
                        tracing::debug!(%addr, "DNS listen address not present yet; retrying");
                    }
                }
                // Without the privilege for port 53 the node runs pods on the host network
                // (no pod bridge either), where cluster DNS has no address to serve on.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    tracing::warn!(%addr, error = %e, "cluster DNS disabled: cannot bind");
                    // Nothing to wait for in an upgrade either.
                    bosun_proxy::listen::serving("cluster DNS");
                    shutdown.cancelled().await;
                    return Ok(());
                }
                Err(e) => return Err(e).with_context(|| format!("binding DNS on {addr}")),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        };
        tracing::info!(%addr, "cluster DNS listening (UDP and TCP)");
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 64);
    }
    bosun_proxy::listen::serving("cluster DNS");
    tokio::select! {
        _ = shutdown.cancelled() => {
            server.shutdown_gracefully().await.context("stopping DNS server")?;
            Ok(())
        }
        r = server.block_until_done() => r.context("DNS server stopped"),
    }
}

/// Through `bosun_proxy::listen`, so an upgrade hands these sockets to the next process.
async fn bind(
    addr: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let udp = tokio::net::UdpSocket::from_std(bosun_proxy::listen::udp(addr)?)?;
    let tcp = bosun_proxy::listen::tcp(addr)?;
    Ok((udp, tcp))
}

/// Keeps one kind's map in the index current from its informer: a touched object's entry
/// follows the cache (gone from it: removed); at each complete list the map is rebuilt from
/// the cache, so objects deleted while disconnected disappear.
async fn watch_into<K, V>(
    informer: Informer<K>,
    index: Arc<RwLock<Index>>,
    shutdown: CancellationToken,
    key: fn(&K) -> Option<(String, String)>,
    value: fn(&K) -> Option<V>,
    map: fn(&mut Index) -> &mut std::collections::HashMap<(String, String), V>,
    listed: tokio::sync::watch::Sender<u8>,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
    V: Send,
{
    let store = informer.store();
    let mut notices = std::pin::pin!(informer.notices());
    let mut first_list = true;
    loop {
        let notice = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = notices.next() => n,
        };
        match notice {
            None => return,
            Some(Notice::Touched(o)) => {
                let Some(k) = key(&o) else { continue };
                // By name: a Service deleted and created again keeps its entry.
                let now = store.get(&ObjectRef::from_obj(o.as_ref()));
                let mut idx = index.write().unwrap_or_else(|e| e.into_inner());
                match now.and_then(|o| value(&o)) {
                    Some(v) => map(&mut idx).insert(k, v),
                    None => map(&mut idx).remove(&k),
                };
            }
            Some(Notice::Synced) => {
                let all = store
                    .state()
                    .iter()
                    .filter_map(|o| Some((key(o)?, value(o)?)))
                    .collect();
                *map(&mut index.write().unwrap_or_else(|e| e.into_inner())) = all;
                if first_list {
                    first_list = false;
                    listed.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

async fn watch_services(
    api: Informer<Service>,
    index: Arc<RwLock<Index>>,
    stop: CancellationToken,
    listed: tokio::sync::watch::Sender<u8>,
) {
    watch_into(
        api,
        index,
        stop,
        index::service_key,
        |s| Some(index::service_info(s)),
        |i| &mut i.services,
        listed,
    )
    .await
}

async fn watch_slices(
    api: Informer<EndpointSlice>,
    index: Arc<RwLock<Index>>,
    stop: CancellationToken,
    listed: tokio::sync::watch::Sender<u8>,
) {
    watch_into(
        api,
        index,
        stop,
        index::slice_key,
        index::slice_info,
        |i| &mut i.slices,
        listed,
    )
    .await
}

pub struct Handler {
    index: Arc<RwLock<Index>>,
    /// Fully qualified, lower case.
    domain: Name,
    upstreams: Vec<SocketAddr>,
}

/// The answer to one question, before it is encoded.
#[derive(Debug, Default)]
pub struct Reply {
    pub code: ResponseCode,
    pub authoritative: bool,
    pub recursion_available: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Handler {
    /// Labels of `name` below the cluster domain, or `None` when it is outside.
    fn cluster_labels(&self, name: &Name) -> Option<Vec<String>> {
        let name = name.to_lowercase();
        if !self.domain.zone_of(&name) {
            return None;
        }
        let below = usize::from(name.num_labels() - self.domain.num_labels());
        Some(
            name.iter()
                .take(below)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect(),
        )
    }

    fn soa(&self) -> Record {
        let mname = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        Record::from_rdata(
            self.domain.clone(),
            TTL,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, TTL)),
        )
    }

    fn relative(&self, labels: &str) -> Option<Name> {
        Name::from_ascii(labels)
            .ok()?
            .append_domain(&self.domain)
            .ok()
    }

    /// Builds the reply for a name inside the cluster domain.
    pub fn cluster_reply(&self, name: &Name, qtype: RecordType, labels: &[&str]) -> Reply {
        let answer = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .resolve(labels);
        let mut reply = Reply {
            authoritative: true,
            recursion_available: true,
            ..Default::default()
        };
        let addr_records = |owner: &Name, ips: &[IpAddr], qtype: RecordType| -> Vec<Record> {
            ips.iter()
                .filter_map(|ip| match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                        Some(Record::from_rdata(owner.clone(), TTL, RData::A(A(*v4))))
                    }
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(
                        Record::from_rdata(owner.clone(), TTL, RData::AAAA(AAAA(*v6))),
                    ),
                    _ => None,
                })
                .collect()
        };
        match answer {
            Answer::NxDomain => reply.code = ResponseCode::NXDomain,
            Answer::Empty => {}
            Answer::Addresses(ips) => reply.answers = addr_records(name, &ips, qtype),
            Answer::Cname(target) => {
                if let Ok(t) = Name::from_ascii(format!("{}.", target.trim_end_matches('.'))) {
                    reply.answers = vec![Record::from_rdata(
                        name.clone(),
                        TTL,
                        RData::CNAME(CNAME(t)),
                    )];
                }
            }
            Answer::Srv(targets) => {
                if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    for t in targets {
                        let Some(target) = self.relative(&t.target) else {
                            continue;
                        };
                        reply.answers.push(Record::from_rdata(
                            name.clone(),
                            TTL,
                            RData::SRV(SRV::new(0, 100, t.port, target.clone())),
                        ));
                        reply.additionals.extend(addr_records(
                            &target,
                            &t.addresses,
                            RecordType::A,
                        ));
                    }
                }
            }
        }
        if reply.answers.is_empty() {
            // Negative answers carry the SOA so resolvers cache them for its minimum TTL.
            reply.authorities.push(self.soa());
        }
        reply
    }

    async fn forward(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Reply {
        for upstream in &self.upstreams {
            match query_upstream(*upstream, name, qtype, qclass).await {
                Ok(msg) => {
                    return Reply {
                        code: msg.metadata.response_code,
                        authoritative: false,
                        recursion_available: true,
                        answers: msg.answers,
                        authorities: msg.authorities,
                        additionals: msg.additionals,
                    };
                }
                Err(e) => tracing::debug!(%upstream, %name, error = %e, "upstream DNS failed"),
            }
        }
        Reply {
            code: ResponseCode::ServFail,
            recursion_available: true,
            ..Default::default()
        }
    }
}

/// One query to an upstream over UDP, repeated over TCP when the answer was truncated.
async fn query_upstream(
    upstream: SocketAddr,
    name: &Name,
    qtype: RecordType,
    qclass: DNSClass,
) -> anyhow::Result<Message> {
    let provider = TokioRuntimeProvider::default();
    let conn = UdpClientStream::builder(upstream, provider.clone())
        .with_timeout(Some(UPSTREAM_TIMEOUT))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    let bg = tokio::spawn(bg);
    let resp = client.query(name.clone(), qclass, qtype).await;
    bg.abort();
    let msg = resp?.into_message();
    if !msg.metadata.truncation {
        return Ok(msg);
    }
    let (stream, sender) = TcpClientStream::new(upstream, None, Some(UPSTREAM_TIMEOUT), provider);
    let stream = tokio::time::timeout(UPSTREAM_TIMEOUT, stream)
        .await
        .context("TCP connect timed out")??;
    let (mut client, bg) =
        Client::<TokioRuntimeProvider>::with_timeout(stream, sender, UPSTREAM_TIMEOUT);
    let bg = tokio::spawn(bg);
    let resp = client.query(name.clone(), qclass, qtype).await;
    bg.abort();
    Ok(resp?.into_message())
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let info = match request.queries.queries() {
            [q] if request.metadata.op_code == hickory_proto::op::OpCode::Query => {
                let name: Name = q.name().clone().into();
                let (qtype, qclass) = (q.query_type(), q.query_class());
                let labels = self.cluster_labels(&name);
                let reply = match &labels {
                    Some(l) => {
                        let l: Vec<&str> = l.iter().map(String::as_str).collect();
                        self.cluster_reply(&name, qtype, &l)
                    }
                    None if self.upstreams.is_empty() => Reply {
                        code: ResponseCode::ServFail,
                        ..Default::default()
                    },
                    None => self.forward(&name, qtype, qclass).await,
                };
                metadata.response_code = reply.code;
                metadata.authoritative = reply.authoritative;
                metadata.recursion_available = reply.recursion_available;
                let mut builder = builder;
                if let Some(edns) = &request.edns {
                    builder.edns(edns);
                }
                let response = builder.build(
                    metadata,
                    reply.answers.iter(),
                    reply.authorities.iter(),
                    std::iter::empty(),
                    reply.additionals.iter(),
                );
                response_handle.send_response(response).await
            }
            _ => {
                let code = if request.metadata.op_code == hickory_proto::op::OpCode::Query {
                    ResponseCode::FormErr
                } else {
                    ResponseCode::NotImp
                };
                response_handle
                    .send_response(builder.error_msg(&request.metadata, code))
                    .await
            }
        };
        info.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "sending DNS response failed");
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver  ::1\n\
                    nameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    fn handler() -> Handler {
        Handler {
            index: Arc::new(RwLock::new(Index::default())),
            domain: Name::from_ascii("cluster.local.").unwrap(),
            upstreams: vec![],
        }
    }

    #[test]
    fn cluster_labels_split_below_the_domain() {
        let h = handler();
        let n = |s: &str| Name::from_ascii(s).unwrap();
        assert_eq!(
            h.cluster_labels(&n("Web.Default.svc.Cluster.Local.")),
            Some(vec!["web".into(), "default".into(), "svc".into()])
        );
        assert_eq!(h.cluster_labels(&n("cluster.local.")), Some(vec![]));
        assert_eq!(h.cluster_labels(&n("example.com.")), None);
        assert_eq!(h.cluster_labels(&n("notcluster.local.")), None);
    }

    #[test]
    fn replies_carry_records_and_soa_on_negative_answers() {
        let h = handler();
        let name = Name::from_ascii("10-1-2-3.default.pod.cluster.local.").unwrap();
        let r = h.cluster_reply(&name, RecordType::A, &["10-1-2-3", "default", "pod"]);
        assert_eq!(r.code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A("10.1.2.3".parse().unwrap())));
        // AAAA for an IPv4-only name: no data, but the name exists.
        let r = h.cluster_reply(&name, RecordType::AAAA, &["10-1-2-3", "default", "pod"]);
        assert_eq!(r.code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        let r = h.cluster_reply(&name, RecordType::A, &["x", "default", "svc"]);
        assert_eq!(r.code, ResponseCode::NXDomain);
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    }
}
