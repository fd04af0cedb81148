//! Latency added by the node proxy and by the gateway at a fixed request rate, and maximum
//! throughput, compared with direct access and with nginx as an equivalent reverse proxy.
//!
//! `traffic-bench [--rate 1000] [--seconds 5] [--concurrency 32]` (`TRAFFIC_BENCH_SPANS=1`:
//! the node proxy and the gateway record request spans)
//!
//! The node proxy and the gateway each run in a child process (this binary with
//! `serve-proxy` / `serve-gateway`) so their RSS can be read from /proc. nginx is used when
//! `nginx` is on PATH.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bosun_gateway::compile::{RateLimiters, Snapshot, compile};
use bosun_gateway::metrics::GatewayMetrics;
use bosun_gateway::proxy::{AccessLog, Handler};
use bosun_proxy::upstream::{Body, Upstreams, full};
use bosun_proxy::{ProxyConfig, serve};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// mimalloc: glibc malloc's arena locks and consolidation showed up at about a tenth of the
/// proxy's samples under load; mimalloc keeps per-thread free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a value")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str);
    if matches!(mode, Some("serve-proxy" | "serve-gateway")) {
        let listen: SocketAddr = arg(&args, "--listen", "127.0.0.1:0".parse()?)?;
        let backend: SocketAddr = arg(&args, "--backend", "127.0.0.1:0".parse()?)?;
        if mode == Some("serve-gateway") {
            return serve_gateway(listen, backend).await;
        }
        return serve_proxy(listen, backend).await;
    }
    let rate: u32 = arg(&args, "--rate", 1000)?;
    let seconds: u64 = arg(&args, "--seconds", 5)?;
    let concurrency: usize = arg(&args, "--concurrency", 32)?;

    let backend = start_backend().await?;
    let (mut proxy, proxy_addr) = start_child("serve-proxy", backend).await?;
    let (mut gateway, gateway_addr) = start_child("serve-gateway", backend).await?;

    let nginx = match start_nginx(backend).await {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("nginx skipped: {e:#}");
            None
        }
    };

    println!("fixed rate {rate} req/s for {seconds}s, GET with a 3-byte answer, keep-alive");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>8}",
        "path", "p50 us", "p99 us", "max us", "errors"
    );
    let mut targets = vec![
        ("direct", backend),
        ("proxy", proxy_addr),
        ("gateway", gateway_addr),
    ];
    if let Some(n) = &nginx {
        targets.push(("nginx", n.addr));
    }
    for (name, addr) in &targets {
        // Warm up connections and EWMA state.
        let _ = closed_loop(*addr, 8, Duration::from_millis(500)).await;
        let r = fixed_rate(*addr, rate, Duration::from_secs(seconds)).await;
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>8}",
            name, r.p50_us, r.p99_us, r.max_us, r.errors
        );
    }
    println!("max throughput, {concurrency} concurrent keep-alive clients, {seconds}s");
    // CPU time of the serving process(es) per request: unlike the rate, it hardly depends
    // on what else the machine is running.
    let pids = |name: &str| -> Vec<u32> {
        match name {
            "proxy" => proxy.id().into_iter().collect(),
            "gateway" => gateway.id().into_iter().collect(),
            "nginx" => nginx.as_ref().map(Nginx::pids).unwrap_or_default(),
            _ => Vec::new(),
        }
    };
    for (name, addr) in &targets {
        let before: u64 = pids(name).into_iter().map(cpu_ticks).sum();
        let (n, errors) = closed_loop(*addr, concurrency, Duration::from_secs(seconds)).await;
        let after: u64 = pids(name).into_iter().map(cpu_ticks).sum();
        let cpu = if pids(name).is_empty() || n == 0 {
            "-".to_string()
        } else {
            let us = (after - before) as f64 * 1e6 / clock_ticks_per_sec() / n as f64;
            format!("{us:.1} us")
        };
        println!(
            "{:<8} {:>10.0} req/s  errors {}  cpu per request {}",
            name,
            n as f64 / seconds as f64,
            errors,
            cpu
        );
    }
    for (name, child) in [("node proxy", &proxy), ("gateway", &gateway)] {
        let pid = child.id().context("child pid")?;
        println!("bosun {name} RSS: {} KiB", rss_kib(pid)?);
    }
    if let Some(n) = &nginx {
        println!("nginx RSS (master + workers): {} KiB", n.rss_kib());
    }
    proxy.kill().await.ok();
    gateway.kill().await.ok();
    drop(nginx);
    Ok(())
}

/// This binary in a serving mode, on a free loopback port, sending to `backend`.
async fn start_child(
    mode: &str,
    backend: SocketAddr,
) -> Result<(tokio::process::Child, SocketAddr)> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), free_port()?);
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            mode,
            "--listen",
            &addr.to_string(),
            "--backend",
            &backend.to_string(),
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {mode} child"))?;
    wait_up(addr).await?;
    Ok((child, addr))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_up(addr: SocketAddr) -> Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{addr} did not come up")
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is field 3, utime 14 and stime 15.
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

/// /proc reports CPU times in USER_HZ, 100 on Linux's common architectures.
fn clock_ticks_per_sec() -> f64 {
    100.0
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

async fn start_backend() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(http::Response::new(full("ok\n")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The benchmark's Service (`default/bench`, port `port` on `cluster_ip`) and its one
/// endpoint, the backend.
fn bench_service(cluster_ip: IpAddr, port: u16, backend: SocketAddr) -> (Service, EndpointSlice) {
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: port.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("bench-1".into()),
            namespace: Some("default".into()),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_string(),
                    "bench".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![backend.ip().to_string()],
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(backend.port().into()),
            ..Default::default()
        }]),
    };
    (svc, slice)
}

/// With `TRAFFIC_BENCH_SPANS=1` (inherited by the serving children) every request is
/// recorded as a span, as in `bosun up`.
fn record_spans(ups: &Upstreams, component: &'static str) {
    if std::env::var("TRAFFIC_BENCH_SPANS").is_ok_and(|v| v == "1") {
        let t = bosun_proxy::upstream::trace::Tracer::new(
            "bench",
            bosun_proxy::upstream::trace::DEFAULT_CAPACITY,
        );
        ups.set_tracer(t, component);
    }
}

async fn serve_proxy(listen: SocketAddr, backend: SocketAddr) -> Result<()> {
    let mut registry = Registry::default();
    let ups = Upstreams::detached(registry.sub_registry_with_prefix("bosun_proxy"));
    record_spans(&ups, "proxy");
    let (svc, slice) = bench_service(listen.ip(), listen.port(), backend);
    ups.apply_service(&svc);
    ups.apply_endpoint_slice(&slice);
    let mut cfg = ProxyConfig::new("unused0", listen.ip());
    cfg.manage_vips = false;
    cfg.node_port_addresses = vec![];
    serve(ups, cfg, Arc::new(registry), CancellationToken::new()).await
}

/// The gateway with one Ingress (any host, prefix `/`) to the benchmark's Service.
async fn serve_gateway(listen: SocketAddr, backend: SocketAddr) -> Result<()> {
    let mut registry = Registry::default();
    let metrics = GatewayMetrics::new(&mut registry);
    let ups = Upstreams::detached(registry.sub_registry_with_prefix("bosun_gateway"));
    record_spans(&ups, "gateway");
    let (svc, slice) = bench_service(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 80, backend);
    ups.apply_service(&svc);
    ups.apply_endpoint_slice(&slice);
    let ingress: Ingress = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "bench", "port": {"number": 80}}}}]}}]},
    }))?;
    let snap = Snapshot {
        ingresses: vec![Arc::new(ingress)],
        services: vec![Arc::new(svc)],
        ..Default::default()
    };
    let compiled = compile(&snap, &mut RateLimiters::default());
    let (_table_tx, table) = watch::channel(Arc::new(compiled.table));
    let handler = Arc::new(Handler {
        table,
        backends: Arc::new(ups),
        metrics,
        access_log: AccessLog::Off,
    });
    let listener = TcpListener::bind(listen).await?;
    bosun_gateway::server::serve(
        listener,
        None,
        handler,
        CancellationToken::new(),
        Duration::from_secs(5),
    )
    .await
}

struct Nginx {
    addr: SocketAddr,
    child: tokio::process::Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn rss_kib(&self) -> u64 {
        self.pids()
            .into_iter()
            .map(|p| rss_kib(p).unwrap_or(0))
            .sum()
    }

    /// The master and its worker children.
    fn pids(&self) -> Vec<u32> {
        let Some(master) = self.child.id() else {
            return Vec::new();
        };
        let mut pids = vec![master];
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would leave them behind).
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..50 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx as the same kind of reverse proxy: one upstream, keep-alive on both sides,
/// one worker per core.
async fn start_nginx(backend: SocketAddr) -> Result<Nginx> {
    let bin = which("nginx").context("nginx not found (apt-get install nginx)")?;
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("traffic-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = format!(
        "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream backend {{ server {backend}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://backend;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let child = tokio::process::Command::new(bin)
        .args([
            "-p",
            &dir.to_string_lossy(),
            "-c",
            &dir.join("nginx.conf").to_string_lossy(),
            "-g",
            "daemon off;",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    wait_up(addr).await?;
    Ok(Nginx { addr, child, dir })
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn client() -> Client<HttpConnector, Body> {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(c)
}

struct RateResult {
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    errors: u64,
}

/// Open loop: requests start on schedule whether or not earlier ones finished, so a slow
/// path shows up as latency instead of a lower rate.
async fn fixed_rate(addr: SocketAddr, rate: u32, dur: Duration) -> RateResult {
    let c = client();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (dur.as_secs_f64() * f64::from(rate)) as usize;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = one(&c, addr).await;
            (t.elapsed(), ok)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((d, true)) => lat.push(d.as_micros() as u64),
            _ => errors += 1,
        }
    }
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    RateResult {
        p50_us: q(0.50),
        p99_us: q(0.99),
        max_us: lat.last().copied().unwrap_or(0),
        errors,
    }
}

async fn closed_loop(addr: SocketAddr, concurrency: usize, dur: Duration) -> (u64, u64) {
    let c = client();
    let end = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (mut n, mut e) = (0u64, 0u64);
            while Instant::now() < end {
                if one(&c, addr).await {
                    n += 1;
                } else {
                    e += 1;
                }
            }
            (n, e)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        if let Ok((n, e)) = t.await {
            total.0 += n;
            total.1 += e;
        }
    }
    total
}

async fn one(c: &Client<HttpConnector, Body>, addr: SocketAddr) -> bool {
    let req = match Request::get(format!("http://{addr}/")).body(full("")) {
        Ok(r) => r,
        Err(_) => return false,
    };
    match c.request(req).await {
        Ok(r) if r.status().is_success() => r.into_body().collect().await.is_ok(),
        _ => false,
    }
}
