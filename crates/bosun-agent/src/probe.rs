//! Startup, liveness and readiness probes with Kubernetes semantics, and the HTTP GET and
//! exec actions shared with lifecycle hooks.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::runtime::{ContainerKey, Runtime};

/// What a container's probes report to its pod worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeEvent {
    /// The startup probe succeeded (or there is none).
    Started(ContainerKey),
    Ready(ContainerKey, bool),
    /// Liveness or startup failed `failureThreshold` times: the container must be restarted.
    Failed {
        key: ContainerKey,
        probe: &'static str,
        message: String,
    },
    /// A single failed probe, for an Unhealthy event.
    Unhealthy {
        key: ContainerKey,
        probe: &'static str,
        message: String,
    },
}

/// Where probes go.
#[derive(Clone)]
pub struct Target {
    pub pod_ip: IpAddr,
    pub key: ContainerKey,
    pub runtime: Arc<dyn Runtime>,
}

struct Params {
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

fn params(p: &Probe) -> Params {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Params {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

fn resolve_port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("no container port named {name:?}"))
        }
    }
}

/// Runs an HTTP GET; success is a status in 200..400.
pub async fn http_get(
    c: &Container,
    pod_ip: IpAddr,
    a: &HTTPGetAction,
    timeout: Duration,
) -> Result<String, String> {
    let port = resolve_port(c, &a.port)?;
    let host = a
        .host
        .as_deref()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| pod_ip.to_string());
    let path = a.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
    let https = a.scheme.as_deref().map(|s| s.eq_ignore_ascii_case("HTTPS")) == Some(true);
    let fut = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("dial {host}:{port}: {e}"))?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in a.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        req.push_str("\r\n");
        let head = if https {
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth();
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            exchange(&mut tls, req.as_bytes()).await?
        } else {
            let mut s = stream;
            exchange(&mut s, req.as_bytes()).await?
        };
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad HTTP response {head:?}"))?;
        if (200..400).contains(&status) {
            Ok(format!("HTTP {status}"))
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get \"http://{host}:{port}{path}\": context deadline exceeded"
        )),
    }
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
) -> Result<String, String> {
    s.write_all(req).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Probes do not verify server certificates, as in Kubernetes.
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Runs one probe once.
pub async fn run_once(
    c: &Container,
    p: &Probe,
    t: &Target,
    timeout: Duration,
) -> Result<String, String> {
    if let Some(h) = &p.http_get {
        return http_get(c, t.pod_ip, h, timeout).await;
    }
    if let Some(tcp) = &p.tcp_socket {
        let port = resolve_port(c, &tcp.port)?;
        let host = tcp
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| t.pod_ip.to_string());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok("connected".into()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(ex) = &p.exec {
        let argv = ex.command.clone().unwrap_or_default();
        if argv.is_empty() {
            return Err("exec probe without command".into());
        }
        return match t.runtime.exec(&t.key, &argv, timeout).await {
            Ok(o) if o.exit_code == 0 => Ok(o.output),
            Ok(o) => Err(format!(
                "command {argv:?} exited with {}: {}",
                o.exit_code,
                o.output.trim()
            )),
            Err(e) => Err(format!("command {argv:?}: {e:#}")),
        };
    }
    if p.grpc.is_some() {
        return Err("gRPC probes are not supported by bosun".into());
    }
    Err("probe has no action".into())
}

/// First pause of the quick checks between a fresh container's regular probes, doubled
/// after each up to [`QUICK_MAX`].
const QUICK_FIRST: Duration = Duration::from_millis(5);
const QUICK_MAX: Duration = Duration::from_millis(20);

/// Until a startup or readiness probe of a network kind (tcpSocket, httpGet) first succeeds,
/// it is also tried between its regular runs, every 5 ms growing to 20 ms (a refused connect
/// costs microseconds; a longer gap is what a held request waits past the bind), so a container
/// that binds its port a moment after it starts is Ready then, not a whole period later
/// (what a request held during scale from zero waits for). Only a success counts: failures
/// of these quick checks are not reported and do not count toward `failureThreshold`, so
/// the probe's Kubernetes semantics (events, restarts) are those of its period.
fn quick_until_first_success(p: &Probe, name: &str) -> bool {
    name != "liveness" && (p.tcp_socket.is_some() || p.http_get.is_some())
}

/// Sleeps `period`, trying the probe quickly meanwhile; true when one of those tries
/// succeeded (the sleep then ends early).
async fn quick_checks(c: &Container, p: &Probe, t: &Target, pr: &Params) -> bool {
    let deadline = tokio::time::Instant::now() + pr.period;
    let mut gap = QUICK_FIRST;
    while tokio::time::Instant::now() + gap < deadline {
        tokio::time::sleep(gap).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if run_once(c, p, t, pr.timeout.min(left.max(QUICK_MAX)))
            .await
            .is_ok()
        {
            return true;
        }
        gap = (gap * 2).min(QUICK_MAX);
    }
    tokio::time::sleep_until(deadline).await;
    false
}

/// Runs a probe on its period; `on_change(true/false)` is called when the result flips per
/// the thresholds; returns when `on_change` returns false.
async fn probe_loop(
    c: &Container,
    p: &Probe,
    t: &Target,
    name: &'static str,
    initial: Option<bool>,
    tx: &mpsc::Sender<ProbeEvent>,
    mut on_change: impl FnMut(bool) -> bool,
) {
    let pr = params(p);
    tokio::time::sleep(pr.initial_delay).await;
    let mut state = initial;
    let (mut ok_run, mut bad_run) = (0u32, 0u32);
    let mut quick = quick_until_first_success(p, name) && state != Some(true);
    let mut quick_ok = false;
    loop {
        let res = if std::mem::take(&mut quick_ok) {
            Ok(String::new())
        } else {
            run_once(c, p, t, pr.timeout).await
        };
        if res.is_ok() {
            quick = false;
        }
        match res {
            Ok(_) => {
                ok_run += 1;
                bad_run = 0;
                if ok_run >= pr.success_threshold && state != Some(true) {
                    state = Some(true);
                    if !on_change(true) {
                        return;
                    }
                }
            }
            Err(msg) => {
                ok_run = 0;
                bad_run += 1;
                let _ = tx
                    .send(ProbeEvent::Unhealthy {
                        key: t.key.clone(),
                        probe: name,
                        message: format!("{} probe failed: {msg}", capitalize(name)),
                    })
                    .await;
                if bad_run >= pr.failure_threshold && state != Some(false) {
                    state = Some(false);
                    if !on_change(false) {
                        return;
                    }
                }
            }
        }
        if quick {
            quick_ok = quick_checks(c, p, t, &pr).await;
        } else {
            tokio::time::sleep(pr.period).await;
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Where probing of a container starts: fresh, or resumed (after an agent restart) with the
/// state the pod's status already shows, so a restart does not blip readiness.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resume {
    pub started: bool,
    pub ready: bool,
}

/// All probes of one running container: startup first; once started, liveness and
/// readiness. Ends when liveness/startup fail (the container is then restarted) or when
/// aborted by the pod worker.
pub async fn run_container_probes(
    c: Container,
    t: Target,
    tx: mpsc::Sender<ProbeEvent>,
    resume: Resume,
) {
    if let Some(sp) = c.startup_probe.as_ref().filter(|_| !resume.started) {
        let mut outcome = None;
        probe_loop(&c, sp, &t, "startup", None, &tx, |ok| {
            outcome = Some(ok);
            false
        })
        .await;
        if outcome != Some(true) {
            let _ = tx
                .send(ProbeEvent::Failed {
                    key: t.key.clone(),
                    probe: "startup",
                    message: "Startup probe failed; the container will be restarted".into(),
                })
                .await;
            return;
        }
    }
    let _ = tx.send(ProbeEvent::Started(t.key.clone())).await;
    let readiness = async {
        match &c.readiness_probe {
            Some(rp) => {
                let tx2 = tx.clone();
                probe_loop(&c, rp, &t, "readiness", Some(resume.ready), &tx, |ok| {
                    let _ = tx2.try_send(ProbeEvent::Ready(t.key.clone(), ok));
                    true
                })
                .await
            }
            None => {
                let _ = tx.send(ProbeEvent::Ready(t.key.clone(), true)).await;
                std::future::pending::<()>().await
            }
        }
    };
    let liveness = async {
        match &c.liveness_probe {
            Some(lp) => {
                probe_loop(&c, lp, &t, "liveness", Some(true), &tx, |ok| ok).await;
                let _ = tx
                    .send(ProbeEvent::Failed {
                        key: t.key.clone(),
                        probe: "liveness",
                        message: "Liveness probe failed; the container will be restarted".into(),
                    })
                    .await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    // Liveness failure ends the container's probing; readiness alone never ends.
    tokio::select! {
        _ = readiness => {}
        _ = liveness => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::TCPSocketAction;

    fn target() -> Target {
        Target {
            pod_ip: "127.0.0.1".parse().unwrap(),
            key: ContainerKey {
                pod_uid: "u".into(),
                container: "c".into(),
                attempt: 1,
            },
            runtime: Arc::new(crate::runtime::ProcessRuntime::new(
                std::env::temp_dir(),
                "/nonexistent".into(),
            )),
        }
    }

    fn tcp_probe(port: u16, period: i32) -> Probe {
        Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                host: None,
            }),
            period_seconds: Some(period),
            ..Probe::default()
        }
    }

    /// A container that binds its port a moment after its first (failed) readiness probe,
    /// and listens only briefly, is Ready: it was tried again before its next period.
    /// Those quick tries' failures are not reported.
    #[tokio::test]
    async fn readiness_is_tried_again_quickly_until_it_first_succeeds() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Container {
            name: "c".into(),
            readiness_probe: Some(tcp_probe(port, 10)),
            ..Container::default()
        };
        let (tx, mut rx) = mpsc::channel(64);
        let probes = tokio::spawn(run_container_probes(c, target(), tx, Resume::default()));
        // Listens from 300 ms to 3 s after the start: within the first 10 s period only.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let mut events = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(ev) = rx.recv().await {
                let done = matches!(ev, ProbeEvent::Ready(_, true));
                events.push(ev);
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        drop(listener);
        probes.abort();
        assert_eq!(ready, Ok(true), "{events:?}");
        let unhealthy = events
            .iter()
            .filter(|e| matches!(e, ProbeEvent::Unhealthy { .. }))
            .count();
        // The regular first probe (before the port was bound) failed; the quick ones are silent.
        assert!(unhealthy <= 1, "{events:?}");
    }

    /// Liveness keeps its period: no quick tries.
    #[test]
    fn only_startup_and_readiness_network_probes_are_quick() {
        let p = tcp_probe(1, 1);
        assert!(quick_until_first_success(&p, "readiness"));
        assert!(quick_until_first_success(&p, "startup"));
        assert!(!quick_until_first_success(&p, "liveness"));
        let exec = Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Probe::default()
        };
        assert!(!quick_until_first_success(&exec, "readiness"));
    }
}
