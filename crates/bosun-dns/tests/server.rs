//! The DNS server against the real API server (in-process), queried over real UDP and TCP
//! sockets on loopback with the hickory client.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_dns::DnsConfig;
use bosun_store::{RedbOptions, RedbStore};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Env {
    client: kube::Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn api() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    Env {
        client: kube::Client::new(server.router(), "default"),
        shutdown: CancellationToken::new(),
        _dir: dir,
    }
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn start(env: &Env, domain: &str, upstreams: Vec<SocketAddr>) -> SocketAddr {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cfg = DnsConfig {
        listen: vec![addr],
        cluster_domain: domain.into(),
        upstreams,
    };
    let (c, sd) = (env.client.clone(), env.shutdown.child_token());
    tokio::spawn(async move { bosun_dns::run(c, cfg, sd).await.unwrap() });
    addr
}

async fn query_udp(server: SocketAddr, name: &str, t: RecordType) -> Option<Message> {
    let conn = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(2)))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    let bg = tokio::spawn(bg);
    let r = client
        .query(Name::from_str(name).unwrap(), DNSClass::IN, t)
        .await;
    bg.abort();
    r.ok().map(|r| r.into_message())
}

async fn query_tcp(server: SocketAddr, name: &str, t: RecordType) -> Option<Message> {
    let (stream, sender) =
        TcpClientStream::new(server, None, None, TokioRuntimeProvider::default());
    let stream = stream.await.ok()?;
    let (mut client, bg) = Client::<TokioRuntimeProvider>::new(stream, sender);
    let bg = tokio::spawn(bg);
    let r = client
        .query(Name::from_str(name).unwrap(), DNSClass::IN, t)
        .await;
    bg.abort();
    r.ok().map(|r| r.into_message())
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Queries until `ok` holds (the watches catch up asynchronously), then returns the answer.
async fn until(
    server: SocketAddr,
    name: &str,
    t: RecordType,
    ok: impl Fn(&Message) -> bool,
) -> Message {
    let mut last = None;
    for _ in 0..100 {
        if let Some(m) = query_udp(server, name, t).await {
            if ok(&m) {
                return m;
            }
            last = Some(m);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no matching answer for {name} {t:?}; last: {last:?}");
}

#[tokio::test]
async fn answers_services_headless_pods_and_srv_over_udp_and_tcp() {
    let env = api().await;
    let server = start(&env, "cluster.local", vec![]);
    let services: Api<Service> = Api::namespaced(env.client.clone(), "default");
    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    let web = services.create(&PostParams::default(), &web).await.unwrap();
    let vip: IpAddr = web
        .spec
        .unwrap()
        .cluster_ip
        .expect("a clusterIP is allocated")
        .parse()
        .unwrap();
    let db: Service = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"name": "pg", "port": 5432}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &db).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.77.0.5"], "conditions": {"ready": true}},
            {"addresses": ["10.77.0.4"], "conditions": {"ready": true}},
            {"addresses": ["10.77.0.6"], "conditions": {"ready": false, "terminating": true}}
        ]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    // ClusterIP service over UDP, then TCP.
    let m = until(
        server,
        "web.default.svc.cluster.local.",
        RecordType::A,
        |m| !m.answers.is_empty(),
    )
    .await;
    assert_eq!(a_records(&m), [vip]);
    assert!(m.metadata.authoritative);
    let m = query_tcp(server, "web.default.svc.cluster.local.", RecordType::A)
        .await
        .expect("TCP answer");
    assert_eq!(a_records(&m), [vip]);

    // Headless: the ready endpoints only.
    let m = until(
        server,
        "db.default.svc.cluster.local.",
        RecordType::A,
        |m| !m.answers.is_empty(),
    )
    .await;
    assert_eq!(
        a_records(&m),
        [
            "10.77.0.4".parse::<IpAddr>().unwrap(),
            "10.77.0.5".parse().unwrap()
        ]
    );

    // SRV for a named port, with the target's address as additional record.
    let m = query_udp(
        server,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await
    .unwrap();
    let srv: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(srv, [(80, "web.default.svc.cluster.local.".to_string())]);
    assert!(m.additionals.iter().any(|r| r.data
        == RData::A(match vip {
            IpAddr::V4(v4) => hickory_proto::rr::rdata::A(v4),
            IpAddr::V6(_) => unreachable!(),
        })));

    // Pod names come from the name itself.
    let m = query_udp(
        server,
        "10-77-0-9.default.pod.cluster.local.",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(a_records(&m), ["10.77.0.9".parse::<IpAddr>().unwrap()]);

    // Unknown names in the cluster domain: NXDOMAIN with the zone's SOA.
    let m = query_udp(server, "nope.default.svc.cluster.local.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // IPv4-only service asked for AAAA: the name exists, no data.
    let m = query_udp(server, "web.default.svc.cluster.local.", RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());

    // Outside the cluster domain with no upstreams: SERVFAIL.
    let m = query_udp(server, "example.com.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    // A deleted service disappears from DNS through the watch.
    services.delete("web", &Default::default()).await.unwrap();
    until(
        server,
        "web.default.svc.cluster.local.",
        RecordType::A,
        |m| m.metadata.response_code == ResponseCode::NXDomain,
    )
    .await;
}

#[tokio::test]
async fn other_names_are_forwarded_upstream() {
    // The upstream is a second server with its own domain, so forwarding is observable
    // without leaving loopback.
    let env = api().await;
    let upstream = start(&env, "upstream.test", vec![]);
    let server = start(&env, "cluster.local", vec![upstream]);
    let m = until(
        server,
        "10-1-2-3.ns.pod.upstream.test.",
        RecordType::A,
        |m| !m.answers.is_empty(),
    )
    .await;
    assert_eq!(a_records(&m), ["10.1.2.3".parse::<IpAddr>().unwrap()]);
    assert!(!m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    // The upstream's negative answers come back as they are.
    let m = query_tcp(server, "x.y.svc.upstream.test.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}
