//! The node proxy with real loopback servers behind it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bosun_proxy::upstream::full;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn served_by(body: &str) -> String {
    body.split_whitespace().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_round_robin_and_p2c_spread() {
    let bs = [
        Backend::start("a", Behaviour::Ok).await,
        Backend::start("b", Behaviour::Ok).await,
        Backend::start("c", Behaviour::Ok).await,
    ];
    let p = Proxy::start().await;
    p.add_service(
        "rr",
        &[("bosun.dev/load-balancer", "round-robin")],
        &bs.iter().collect::<Vec<_>>(),
    )
    .await;
    let c = h1_client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..90 {
        let (s, body) = get(&c, p.addr(), "/", &[]).await;
        assert_eq!(s, 200, "{body}");
        *counts.entry(served_by(&body)).or_default() += 1;
    }
    // Per request, even over one keep-alive connection.
    assert_eq!(counts.len(), 3, "{counts:?}");
    for n in counts.values() {
        assert_eq!(*n, 30, "{counts:?}");
    }

    // Default policy (P2C + EWMA) with concurrent clients reaches every endpoint: the
    // in-flight count is part of the cost.
    p.ups.apply_service(&service("rr", p.vip, p.port, &[]));
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..10 {
        let batch: Vec<_> = (0..20)
            .map(|_| {
                let (c, addr) = (c.clone(), p.addr());
                tokio::spawn(async move { get(&c, addr, "/", &[]).await })
            })
            .collect();
        for t in batch {
            let (s, body) = t.await.unwrap();
            assert_eq!(s, 200);
            *seen.entry(served_by(&body)).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_and_outliers_ejected() {
    let good = Backend::start("good", Behaviour::Ok).await;
    let reset = Backend::start("reset", Behaviour::Reset).await;
    let unavailable = Backend::start("unavailable", Behaviour::Status(503)).await;
    let p = Proxy::start().await;
    p.add_service(
        "flaky",
        &[
            ("bosun.dev/load-balancer", "round-robin"),
            ("bosun.dev/retries", "2"),
            ("bosun.dev/outlier-consecutive-errors", "3"),
            ("bosun.dev/outlier-max-ejection-percent", "100"),
        ],
        &[&good, &reset, &unavailable],
    )
    .await;
    let c = h1_client();
    for i in 0..60 {
        let (s, body) = get(&c, p.addr(), "/", &[]).await;
        assert_eq!(s, 200, "request {i}: {body}");
        assert_eq!(served_by(&body), "good");
    }
    let m = p.metrics().await;
    assert!(
        metric_sum(&m, "bosun_proxy_upstream_retries_total") >= 2.0,
        "{m}"
    );
    // Both bad endpoints were ejected (max percent 100 still keeps the good one in).
    assert!(
        metric_sum(&m, "bosun_proxy_upstream_ejections_total") >= 2.0,
        "{m}"
    );
    // Once ejected they stop receiving traffic.
    let (r, u) = (
        reset.hits.load(std::sync::atomic::Ordering::SeqCst),
        unavailable.hits.load(std::sync::atomic::Ordering::SeqCst),
    );
    for _ in 0..30 {
        assert_eq!(get(&c, p.addr(), "/", &[]).await.0, 200);
    }
    assert_eq!(reset.hits.load(std::sync::atomic::Ordering::SeqCst), r);
    assert_eq!(
        unavailable.hits.load(std::sync::atomic::Ordering::SeqCst),
        u
    );
}

/// An endpoint that dies after sending a response's headers (a pod stopped while a request
/// raced its removal from the endpoints): a GET is retried on another endpoint instead of
/// reaching the client with its body cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_short_is_retried() {
    let good = Backend::start("good", Behaviour::Ok).await;
    let cut = Backend::start("cut", Behaviour::CutShort).await;
    let p = Proxy::start().await;
    p.add_service(
        "dying",
        &[
            ("bosun.dev/load-balancer", "round-robin"),
            ("bosun.dev/outlier-consecutive-errors", "0"),
        ],
        &[&good, &cut],
    )
    .await;
    let c = h1_client();
    for i in 0..20 {
        let resp = c
            .request(
                Request::get(format!("http://{}/", p.addr()))
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        let body = resp.into_body().collect().await;
        let body = body.unwrap_or_else(|e| panic!("request {i}: body cut short: {e}"));
        assert_eq!(
            served_by(&String::from_utf8_lossy(&body.to_bytes())),
            "good"
        );
    }
    assert!(cut.hits.load(std::sync::atomic::Ordering::SeqCst) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_limits_retry_storms() {
    let bad = Backend::start("bad", Behaviour::Status(503)).await;
    let p = Proxy::start().await;
    p.add_service(
        "down",
        &[
            ("bosun.dev/retries", "3"),
            ("bosun.dev/outlier-consecutive-errors", "0"),
        ],
        &[&bad],
    )
    .await;
    let c = h1_client();
    let n = 300;
    for _ in 0..n {
        assert_eq!(get(&c, p.addr(), "/", &[]).await.0, 503);
    }
    let retries = metric_sum(&p.metrics().await, "bosun_proxy_upstream_retries_total");
    // Without a budget: 900 retries. With 20% + a 10/s floor over a 10 s window:
    // about 0.2 * 300 + 100.
    assert!(retries > 0.0, "budget must allow some retries");
    assert!(
        retries <= 0.2 * n as f64 + 110.0,
        "retries {retries} exceed the budget"
    );
    assert!(bad.hits.load(std::sync::atomic::Ordering::SeqCst) < 2 * n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_prefers_fast_endpoint_and_timeouts_give_504() {
    let fast = Backend::start("fast", Behaviour::Ok).await;
    let slow = Backend::start("slow", Behaviour::Slow(Duration::from_millis(60))).await;
    let p = Proxy::start().await;
    p.add_service("mixed", &[], &[&fast, &slow]).await;
    let c = h1_client();
    let mut counts = HashMap::<String, usize>::new();
    for _ in 0..150 {
        let (s, body) = get(&c, p.addr(), "/", &[]).await;
        assert_eq!(s, 200);
        *counts.entry(served_by(&body)).or_default() += 1;
    }
    let (f, s) = (
        counts.get("fast").copied().unwrap_or(0),
        counts.get("slow").copied().unwrap_or(0),
    );
    assert!(
        f > 3 * s,
        "fast endpoint should take most requests: {counts:?}"
    );

    let very_slow = Backend::start("very-slow", Behaviour::Slow(Duration::from_secs(5))).await;
    let p2 = Proxy::start().await;
    p2.add_service(
        "stuck",
        &[("bosun.dev/timeout", "200ms"), ("bosun.dev/retries", "0")],
        &[&very_slow],
    )
    .await;
    let (status, _) = get(&c, p2.addr(), "/", &[]).await;
    assert_eq!(status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses() {
    let p = Proxy::start().await;
    // Service without endpoints: 503.
    p.add_service("empty", &[], &[]).await;
    let c = h1_client();
    assert_eq!(get(&c, p.addr(), "/", &[]).await.0, 503);

    // Endpoint that refuses connections: 502.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    p.ups
        .apply_endpoint_slice(&slice("empty", "dead", dead, true, false));
    let (s, body) = get(&c, p.addr(), "/", &[]).await;
    assert_eq!(s, 502, "{body}");
    let m = p.metrics().await;
    assert!(metric_sum(&m, "bosun_proxy_upstream_connect_errors_total") >= 1.0);

    // Malformed HTTP/1.1: 400.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_grpc_are_balanced_per_request() {
    let bs = [
        Backend::start("h2-a", Behaviour::Ok).await,
        Backend::start("h2-b", Behaviour::Ok).await,
        Backend::start("h2-c", Behaviour::Ok).await,
    ];
    let p = Proxy::start().await;
    p.add_service(
        "grpc",
        &[("bosun.dev/load-balancer", "round-robin")],
        &bs.iter().collect::<Vec<_>>(),
    )
    .await;
    // One HTTP/2 connection (prior knowledge); requests still spread.
    let c = h2_client();
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..30 {
        let (s, body) = get(&c, p.addr(), "/", &[]).await;
        assert_eq!(s, 200);
        assert!(
            body.contains("version=HTTP/2.0"),
            "upstream must see HTTP/2: {body}"
        );
        *seen.entry(served_by(&body)).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "{seen:?}");

    // gRPC-style unary call: message echoed, grpc-status in trailers.
    let mut served = std::collections::HashSet::new();
    for _ in 0..6 {
        let req = Request::post(format!("http://{}/echo.Echo/Say", p.addr()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(Bytes::from_static(b"\x00\x00\x00\x00\x05hello")))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        served.insert(
            trailers
                .get("x-served-by")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string(),
        );
        assert_eq!(&collected.to_bytes()[..], b"\x00\x00\x00\x00\x05hello");
    }
    assert_eq!(served.len(), 3, "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_propagated_with_new_span() {
    let b = Backend::start("t", Behaviour::Ok).await;
    let p = Proxy::start().await;
    p.add_service("traced", &[], &[&b]).await;
    let c = h1_client();
    let (_, body) = get(&c, p.addr(), "/", &[]).await;
    let tp = body
        .split("traceparent=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(tp.len(), 55, "generated: {tp}");
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, body) = get(&c, p.addr(), "/", &[("traceparent", incoming)]).await;
    let tp = body
        .split("traceparent=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "span id must change per hop: {tp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_header() {
    let bs = [
        Backend::start("h-a", Behaviour::Ok).await,
        Backend::start("h-b", Behaviour::Ok).await,
        Backend::start("h-c", Behaviour::Ok).await,
    ];
    let p = Proxy::start().await;
    p.add_service(
        "sticky",
        &[
            ("bosun.dev/load-balancer", "consistent-hash"),
            ("bosun.dev/hash-key", "header:x-user"),
        ],
        &bs.iter().collect::<Vec<_>>(),
    )
    .await;
    let c = h1_client();
    let mut owners = HashMap::new();
    for u in 0..30 {
        let user = format!("user-{u}");
        let first = served_by(&get(&c, p.addr(), "/", &[("x-user", &user)]).await.1);
        for _ in 0..3 {
            assert_eq!(
                served_by(&get(&c, p.addr(), "/", &[("x-user", &user)]).await.1),
                first
            );
        }
        owners.insert(user, first);
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert!(
        distinct.len() >= 2,
        "30 users all on one endpoint: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_finishes_in_flight_requests() {
    let slow = Backend::start("leaving", Behaviour::Slow(Duration::from_millis(500))).await;
    let stay = Backend::start("staying", Behaviour::Ok).await;
    let p = Proxy::start().await;
    p.add_service("drain", &[], &[&slow]).await;
    let c = h1_client();
    let addr = p.addr();
    let c2 = c.clone();
    let inflight = tokio::spawn(async move { get(&c2, addr, "/", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The endpoint starts terminating while the request is in flight.
    p.ups
        .apply_endpoint_slice(&slice("drain", "staying", stay.addr, true, false));
    p.ups
        .apply_endpoint_slice(&slice("drain", "leaving", slow.addr, false, true));
    let (s, body) = inflight.await.unwrap();
    assert_eq!((s, served_by(&body).as_str()), (200, "leaving"));
    for _ in 0..10 {
        let (s, body) = get(&c, addr, "/", &[]).await;
        assert_eq!((s, served_by(&body).as_str()), (200, "staying"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_relayed_per_connection() {
    let (e1, s1) = echo_server(None).await;
    let (e2, s2) = echo_server(None).await;
    let p = Proxy::start().await;
    p.ups.apply_service(&service("echo", p.vip, p.port, &[]));
    p.ups
        .apply_endpoint_slice(&slice("echo", "e1", e1, true, false));
    p.ups
        .apply_endpoint_slice(&slice("echo", "e2", e2, true, false));
    wait_listening(p.addr()).await;
    for i in 0..10 {
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let msg = format!("hello {i}\n");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    s1.cancel();
    s2.cancel();

    // Server-first protocol: the client says nothing until the banner arrives.
    let (banner, s3) = echo_server(Some(b"220 ready\r\n")).await;
    let p2 = Proxy::start().await;
    p2.ups.apply_service(&service("smtp", p2.vip, p2.port, &[]));
    p2.ups
        .apply_endpoint_slice(&slice("smtp", "mail", banner, true, false));
    wait_listening(p2.addr()).await;
    let mut s = TcpStream::connect(p2.addr()).await.unwrap();
    let mut buf = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"220 ready\r\n");
    s3.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upgrade_is_spliced() {
    let b = Backend::start("ws", Behaviour::Ok).await;
    let p = Proxy::start().await;
    p.add_service("ws", &[], &[&b]).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    // Response head, then the backend's greeting.
    while !String::from_utf8_lossy(&got).contains("ws:") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_service_at_zero_wait_for_its_first_endpoint() {
    let p = Proxy::start().await;
    let target = [("bosun.dev/scale-to-zero-target", "web")];
    p.add_service("web", &target, &[]).await;
    let c = h1_client();
    let held: Vec<_> = (0..10)
        .map(|_| {
            let (c, addr) = (c.clone(), p.addr());
            tokio::spawn(async move { get(&c, addr, "/", &[]).await })
        })
        .collect();
    // They wait (and the activity report says so) instead of failing.
    let key = "default/web".to_string();
    for _ in 0..200 {
        if p.ups.activity().get(&key).is_some_and(|r| r.waiting == 10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = p.ups.activity()[&key];
    assert_eq!(r.waiting, 10);
    assert!(r.last_ms > 0);
    assert!(held.iter().all(|t| !t.is_finished()));
    // The first endpoint arrives: every held request is forwarded to it.
    let b = Backend::start("a", Behaviour::Ok).await;
    let ready_at = std::time::Instant::now();
    p.ups
        .apply_endpoint_slice(&slice("web", "a", b.addr, true, false));
    for t in held {
        let (s, body) = t.await.unwrap();
        assert_eq!(s, 200, "{body}");
        assert_eq!(served_by(&body), "a");
    }
    assert!(ready_at.elapsed() < Duration::from_secs(2));
    assert_eq!(p.ups.activity()[&key].waiting, 0);

    // Past the activation timeout: a 503 that names the Service (called through the
    // library: these Services have no listener of their own here).
    let call = |svc: &'static str| {
        let (ups, port) = (p.ups.clone(), p.port);
        async move {
            let req = Request::get("/").body(full("")).unwrap();
            let resp = ups
                .http_call(
                    &bosun_proxy::upstream::Target::new("default", svc, port),
                    req,
                    None,
                )
                .await;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    p.ups.apply_service(&service(
        "stuck",
        p.vip,
        p.port,
        &[
            ("bosun.dev/scale-to-zero-target", "stuck"),
            ("bosun.dev/activation-timeout", "300ms"),
        ],
    ));
    let started = std::time::Instant::now();
    let (s, body) = call("stuck").await;
    assert_eq!(s, 503, "{body}");
    assert!(
        body.contains("default/stuck") && body.contains("scaled to zero"),
        "{body}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A full queue answers at once.
    p.ups.apply_service(&service(
        "tiny",
        p.vip,
        p.port,
        &[
            ("bosun.dev/scale-to-zero-target", "tiny"),
            ("bosun.dev/activation-queue", "1"),
            ("bosun.dev/activation-timeout", "5s"),
        ],
    ));
    let first = tokio::spawn(call("tiny"));
    for _ in 0..200 {
        if p.ups.activity()["default/tiny"].waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let (s, body) = call("tiny").await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("already wait"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    first.abort();
}
