//! `exec`, `attach` and `portForward` on the agent's port (what the kubelet serves and the API
//! server proxies `pods/NAME/exec|attach|portforward` to).
//!
//! Protocols, chosen by the request's upgrade:
//! - WebSocket with the channel subprotocols (`v5.channel.k8s.io` ... `channel.k8s.io`):
//!   every binary message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 status,
//!   4 terminal size; v5 adds 255, "close channel", so stdin can end).
//! - WebSocket `SPDY/3.1+portforward.k8s.io`: SPDY carried in binary messages (kubectl ≥ 1.30
//!   port-forward).
//! - WebSocket `v4.channel.k8s.io`/`portforward.k8s.io` port-forward (`?ports=`): per port a
//!   data channel 2i and an error channel 2i+1, each opened by the port in two bytes LE.
//! - `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version` (`v4.channel.k8s.io` ... for exec,
//!   `portforward.k8s.io`): one SPDY stream per channel, named by its `streamtype` header.
//!
//! Status: v4 and v5 end with a `metav1.Status` (exit code in `details.causes` with reason
//! `ExitCode`), older versions with the error's text.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::network::PodNetwork;
use crate::runtime::{ContainerKey, Runtime};
use crate::server::ServerState;
use crate::spdy;
use crate::streamio::StreamIo;

/// What streaming needs beyond the log server: the runtimes and the pod networks.
pub struct Streaming {
    pub process: Arc<dyn Runtime>,
    pub image: Option<Arc<dyn Runtime>>,
    pub network: Arc<dyn PodNetwork>,
}

const EXEC_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const SPDY_EXEC_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
const WS_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
const WS_PORTFORWARD: &[&str] = &["v4.channel.k8s.io", "portforward.k8s.io"];
/// How long the client has to open the streams it announced.
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// Query parameters, repeated keys kept (`command=sh&command=-c`).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>) -> Self {
        fn decode(s: &str) -> String {
            let b = s.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'+' => out.push(b' '),
                    b'%' if i + 2 < b.len() => {
                        let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                        match u8::from_str_radix(hex, 16) {
                            Ok(v) => {
                                out.push(v);
                                i += 2;
                            }
                            Err(_) => out.push(b'%'),
                        }
                    }
                    c => out.push(c),
                }
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        Params(
            query
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, key: &str) -> bool {
        self.0
            .iter()
            .any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | "True"))
    }
}

/// The streams a client announced (query `stdin=1&stdout=1&stderr=1&tty=1`).
#[derive(Debug, Clone, Copy)]
struct Opts {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl Opts {
    fn from(p: &Params) -> Self {
        let tty = p.flag("tty");
        Opts {
            stdin: p.flag("stdin"),
            stdout: p.flag("stdout"),
            // A terminal merges stderr into stdout.
            stderr: p.flag("stderr") && !tty,
            tty,
        }
    }
}

enum Action {
    Exec(Vec<String>),
    Attach,
}

/// A running container to stream to.
struct Target {
    key: ContainerKey,
    runtime: Arc<dyn Runtime>,
    docker: bool,
    pods_dir: PathBuf,
    /// An ephemeral container of a process pod (`key` is then its target container's).
    session: Option<Arc<crate::ephemeral::Session>>,
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

fn locate(st: &ServerState, ns: &str, pod: &str, container: &str) -> Result<Target, Box<Response>> {
    let Some(streaming) = &st.streaming else {
        return Err(Box::new(text(
            StatusCode::NOT_IMPLEMENTED,
            "streaming is not enabled on this node",
        )));
    };
    let Some((uid, pod_dir)) = crate::server::find_pod(&st.pods_dir, ns, pod) else {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" is not running on this node"),
        )));
    };
    if let Some(session) = crate::ephemeral::get(&uid, container) {
        if !matches!(
            session.state(),
            crate::ephemeral::SessionState::Running { .. }
        ) {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                format!("container \"{container}\" in pod \"{pod}\" is not running"),
            )));
        }
        return Ok(Target {
            key: session.target.clone(),
            runtime: streaming.process.clone(),
            docker: false,
            pods_dir: st.pods_dir.clone(),
            session: Some(session),
        });
    }
    let Some(&attempt) = crate::server::attempts(&pod_dir, container).last() else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start"),
        )));
    };
    let key = ContainerKey {
        pod_uid: uid,
        container: container.to_string(),
        attempt,
    };
    if crate::server::finished(&st.pods_dir, &key) {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod}\" is not running"),
        )));
    }
    let docker =
        crate::docker::read_record(&crate::docker::record_path(&st.pods_dir, &key)).is_some();
    let runtime = if docker {
        streaming.image.clone().ok_or_else(|| {
            Box::new(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the container runs in Docker, which does not answer",
            ))
        })?
    } else {
        streaming.process.clone()
    };
    Ok(Target {
        key,
        runtime,
        docker,
        pods_dir: st.pods_dir.clone(),
        session: None,
    })
}

fn tokens(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The first of the client's protocols that we speak (the client lists its preference first).
fn pick(offered: &[String], ours: &[&str]) -> Option<String> {
    offered.iter().find(|o| ours.contains(&o.as_str())).cloned()
}

fn upgrade_kind(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
}

pub(crate) async fn exec(
    State(st): State<ServerState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    req: Request,
) -> Response {
    let p = Params::parse(req.uri().query());
    let command = p.all("command");
    if command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command",
        );
    }
    stream(
        st,
        &ns,
        &pod,
        &container,
        Action::Exec(command),
        Opts::from(&p),
        req,
    )
    .await
}

pub(crate) async fn attach(
    State(st): State<ServerState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    req: Request,
) -> Response {
    let p = Params::parse(req.uri().query());
    stream(
        st,
        &ns,
        &pod,
        &container,
        Action::Attach,
        Opts::from(&p),
        req,
    )
    .await
}

async fn stream(
    st: ServerState,
    ns: &str,
    pod: &str,
    container: &str,
    action: Action,
    opts: Opts,
    mut req: Request,
) -> Response {
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one of stdin, stdout, stderr",
        );
    }
    let target = match locate(&st, ns, pod, container) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match upgrade_kind(req.headers()).as_deref() {
        Some("websocket") => {
            let offered = tokens(req.headers(), "sec-websocket-protocol");
            let proto = if offered.is_empty() {
                "channel.k8s.io".to_string()
            } else {
                match pick(&offered, EXEC_PROTOCOLS) {
                    Some(p) => p,
                    None => return no_protocol(&offered),
                }
            };
            let (mut parts, _) = req.into_parts();
            let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &st).await {
                Ok(ws) => ws,
                Err(e) => return e.into_response(),
            };
            let ws = if offered.is_empty() {
                ws
            } else {
                ws.protocols([proto.clone()])
            };
            ws.on_upgrade(move |socket| ws_channels(socket, proto, opts, target, action))
        }
        Some("spdy/3.1") => {
            let offered = tokens(req.headers(), "x-stream-protocol-version");
            let Some(proto) = pick(&offered, SPDY_EXEC_PROTOCOLS) else {
                return no_protocol(&offered);
            };
            let on = hyper::upgrade::on(&mut req);
            let chosen = proto.clone();
            tokio::spawn(async move {
                match on.await {
                    Ok(io) => spdy_channels(TokioIo::new(io), chosen, opts, target, action).await,
                    Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
                }
            });
            switching("SPDY/3.1", &proto)
        }
        _ => text(StatusCode::BAD_REQUEST, "Upgrade request required"),
    }
}

fn no_protocol(offered: &[String]) -> Response {
    text(
        StatusCode::FORBIDDEN,
        format!("none of the requested protocols is supported: {offered:?}"),
    )
}

fn switching(upgrade: &'static str, proto: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
    if let Ok(v) = HeaderValue::from_str(proto) {
        h.insert("X-Stream-Protocol-Version", v);
    }
    r
}

/// Whether the protocol ends with a `metav1.Status` (else with plain text).
fn status_json(proto: &str) -> bool {
    proto.starts_with("v4.") || proto.starts_with("v5.")
}

/// The final message of the error channel; None = nothing to say (v1-v3 success).
fn final_status(
    proto: &str,
    argv: Option<&[String]>,
    res: &anyhow::Result<i32>,
) -> Option<Vec<u8>> {
    let v = match res {
        Ok(0) => {
            if !status_json(proto) {
                return None;
            }
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        }
        Ok(code) => {
            let cmd = argv.map(|a| a.join(" ")).unwrap_or_default();
            let msg = format!(
                "command terminated with non-zero exit code: error executing command [{cmd}], exit code {code}"
            );
            if !status_json(proto) {
                return Some(msg.into_bytes());
            }
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": msg, "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
        }
        Err(e) => {
            let msg = format!("{e:#}");
            if !status_json(proto) {
                return Some(msg.into_bytes());
            }
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": msg, "reason": "InternalError", "code": 500})
        }
    };
    serde_json::to_vec(&v).ok()
}

/// Runs the action with the streams and returns the exit code (attach: 0 when it ends).
async fn run(target: Target, action: &Action, io: StreamIo) -> anyhow::Result<i32> {
    if let (Action::Attach, Some(session)) = (action, target.session.clone()) {
        crate::ephemeral::attach(session, io).await;
        return Ok(0);
    }
    match action {
        Action::Exec(argv) => target.runtime.exec_stream(&target.key, argv, io).await,
        Action::Attach if target.docker => target.runtime.attach(&target.key, io).await.map(|_| 0),
        Action::Attach => {
            follow_output(target.pods_dir, target.key, io.stdout.or(io.stderr)).await;
            Ok(0)
        }
    }
}

/// A process container's output from now on, until it ends (its stdin is not kept open).
async fn follow_output(pods_dir: PathBuf, key: ContainerKey, out: Option<mpsc::Sender<Bytes>>) {
    let Some(out) = out else {
        return;
    };
    let path = crate::runtime::log_path(&pods_dir, &key);
    let opts = crate::cri_log::LogOptions {
        follow: true,
        tail_lines: Some(0),
        ..Default::default()
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let reader = tokio::task::spawn_blocking(move || {
        let done = || {
            crate::server::finished(&pods_dir, &key)
                || crate::server::attempts(&pods_dir.join(&key.pod_uid), &key.container).last()
                    != Some(&key.attempt)
        };
        let _ = crate::cri_log::stream_log(&path, &opts, tx, done);
    });
    while let Some(chunk) = rx.recv().await {
        if out.send(Bytes::from(chunk)).await.is_err() {
            break;
        }
    }
    drop(rx);
    let _ = reader.await;
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Size {
    width: u16,
    height: u16,
}

/// Terminal sizes from a stream of JSON objects (`{"Width":80,"Height":24}`).
fn sizes(mut input: mpsc::Receiver<Bytes>) -> mpsc::Receiver<(u16, u16)> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(b) = input.recv().await {
            buf.extend_from_slice(&b);
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Size>();
            let mut used = 0;
            while let Some(Ok(s)) = it.next() {
                used = it.byte_offset();
                if tx.send((s.width, s.height)).await.is_err() {
                    return;
                }
            }
            buf.drain(..used);
            if buf.len() > 4096 {
                buf.clear();
            }
        }
    });
    rx
}

/// The exec/attach channel protocol over a WebSocket.
async fn ws_channels(socket: WebSocket, proto: String, opts: Opts, target: Target, action: Action) {
    let v5 = proto.starts_with("v5.");
    let (mut sink, mut source) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(32);
    let writer = tokio::spawn(async move {
        while let Some((ch, b)) = out_rx.recv().await {
            let mut m = Vec::with_capacity(b.len() + 1);
            m.push(ch);
            m.extend_from_slice(&b);
            if sink.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    });
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(32);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(msg)) = source.next().await {
            let data: Bytes = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, rest)) = data.split_first() else {
                continue;
            };
            match ch {
                0 => {
                    if let Some(tx) = &stdin_tx
                        && !rest.is_empty()
                        && tx.send(Bytes::copy_from_slice(rest)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                4 => {
                    let _ = resize_tx.send(Bytes::copy_from_slice(rest)).await;
                }
                255 if v5 && rest.first() == Some(&0) => stdin_tx = None,
                _ => {}
            }
        }
    });
    let mut forwarders = Vec::new();
    let mut sender = |on: bool, ch: u8| -> Option<mpsc::Sender<Bytes>> {
        if !on {
            return None;
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(32);
        let out = out_tx.clone();
        forwarders.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if out.send((ch, b)).await.is_err() {
                    return;
                }
            }
        }));
        Some(tx)
    };
    let io = StreamIo {
        stdin: opts.stdin.then_some(stdin_rx),
        stdout: sender(opts.stdout, 1),
        stderr: sender(opts.stderr, 2),
        resize: opts.tty.then(|| sizes(resize_rx)),
        tty: opts.tty,
    };
    let argv = match &action {
        Action::Exec(a) => Some(a.clone()),
        Action::Attach => None,
    };
    let res = run(target, &action, io).await;
    for f in forwarders {
        let _ = f.await;
    }
    if let Some(msg) = final_status(&proto, argv.as_deref(), &res) {
        let _ = out_tx.send((3, Bytes::from(msg))).await;
    }
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
}

/// The exec/attach protocol over SPDY: one stream per channel.
async fn spdy_channels<IO>(io: IO, proto: String, opts: Opts, target: Target, action: Action)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut session = match spdy::Session::serve(io) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "spdy session");
            return;
        }
    };
    let want = |t: &str| match t {
        "error" => true,
        "stdin" => opts.stdin,
        "stdout" => opts.stdout,
        "stderr" => opts.stderr,
        "resize" => opts.tty && !proto.starts_with("v2."),
        _ => false,
    };
    let wanted = ["error", "stdin", "stdout", "stderr", "resize"]
        .iter()
        .filter(|t| want(t))
        .count();
    let mut streams: HashMap<String, spdy::Stream> = HashMap::new();
    let deadline = tokio::time::Instant::now() + STREAM_WAIT;
    while streams.len() < wanted {
        match tokio::time::timeout_at(deadline, session.incoming.recv()).await {
            Ok(Some(s)) => {
                let t = s.header("streamtype").unwrap_or_default().to_string();
                if want(&t) {
                    streams.insert(t, s);
                } else {
                    s.out.reset().await;
                }
            }
            _ => {
                tracing::debug!("client did not open its streams");
                session.close().await;
                return;
            }
        }
    }
    let mut forwarders = Vec::new();
    let mut sender = |name: &str| -> Option<mpsc::Sender<Bytes>> {
        let s = streams.remove(name)?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(32);
        forwarders.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if !s.out.write(b).await {
                    return;
                }
            }
            s.out.close().await;
        }));
        Some(tx)
    };
    let stdout = sender("stdout");
    let stderr = sender("stderr");
    let io = StreamIo {
        stdin: streams.remove("stdin").map(|s| s.rx),
        stdout,
        stderr,
        resize: streams.remove("resize").map(|s| sizes(s.rx)),
        tty: opts.tty,
    };
    let error = streams.remove("error");
    let argv = match &action {
        Action::Exec(a) => Some(a.clone()),
        Action::Attach => None,
    };
    let res = run(target, &action, io).await;
    for f in forwarders {
        let _ = f.await;
    }
    if let Some(err) = error {
        if let Some(msg) = final_status(&proto, argv.as_deref(), &res) {
            err.out.write(Bytes::from(msg)).await;
        }
        err.out.close().await;
    }
    session.close().await;
}

pub(crate) async fn port_forward(
    State(st): State<ServerState>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    mut req: Request,
) -> Response {
    let Some(streaming) = st.streaming.clone() else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "streaming is not enabled on this node",
        );
    };
    let Some((uid, _)) = crate::server::find_pod(&st.pods_dir, &ns, &pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" is not running on this node"),
        );
    };
    let netns = match streaming.network.get(&uid).await {
        Ok(n) => n.and_then(|n| n.netns),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    let target = Forward { netns, pod };
    match upgrade_kind(req.headers()).as_deref() {
        Some("websocket") => {
            let offered = tokens(req.headers(), "sec-websocket-protocol");
            let ports = {
                let p = Params::parse(req.uri().query());
                let mut out = Vec::new();
                for v in p
                    .all("ports")
                    .iter()
                    .flat_map(|v| v.split(',').map(str::to_string))
                {
                    match v.trim().parse::<u16>() {
                        Ok(n) if n > 0 => out.push(n),
                        _ => {
                            return text(StatusCode::BAD_REQUEST, format!("invalid port {v:?}"));
                        }
                    }
                }
                out
            };
            let proto = if offered.iter().any(|o| o == WS_TUNNEL) {
                WS_TUNNEL.to_string()
            } else if let Some(p) = pick(&offered, WS_PORTFORWARD) {
                if ports.is_empty() {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "query parameter \"ports\" is required",
                    );
                }
                p
            } else {
                return no_protocol(&offered);
            };
            let (mut parts, _) = req.into_parts();
            let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &st).await {
                Ok(ws) => ws,
                Err(e) => return e.into_response(),
            };
            ws.protocols([proto.clone()])
                .on_upgrade(move |socket| async move {
                    if proto == WS_TUNNEL {
                        let (a, b) = tokio::io::duplex(256 * 1024);
                        tokio::spawn(spdy_forward(a, target));
                        tunnel(socket, b).await;
                    } else {
                        ws_forward(socket, ports, target).await;
                    }
                })
        }
        Some("spdy/3.1") => {
            let offered = tokens(req.headers(), "x-stream-protocol-version");
            if !offered.is_empty() && !offered.iter().any(|o| o == "portforward.k8s.io") {
                return no_protocol(&offered);
            }
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match on.await {
                    Ok(io) => spdy_forward(TokioIo::new(io), target).await,
                    Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
                }
            });
            switching("SPDY/3.1", "portforward.k8s.io")
        }
        _ => text(StatusCode::BAD_REQUEST, "Upgrade request required"),
    }
}

/// Where port-forwarded connections go: localhost in the pod's network namespace.
#[derive(Clone)]
struct Forward {
    netns: Option<PathBuf>,
    pod: String,
}

impl Forward {
    /// Connects to `port` on the pod's loopback, from a thread that joins the pod's network
    /// namespace (the socket stays in it; the thread ends right after).
    async fn connect(&self, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let netns = self.netns.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let r = (|| -> std::io::Result<std::net::TcpStream> {
                if let Some(p) = &netns {
                    let f = std::fs::File::open(p)?;
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
                }
                let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                let s = std::net::TcpStream::connect_timeout(&v4, Duration::from_secs(10))
                    .or_else(|e| {
                        std::net::TcpStream::connect_timeout(&v6, Duration::from_secs(10))
                            .map_err(|_| e)
                    })?;
                s.set_nonblocking(true)?;
                Ok(s)
            })();
            let _ = tx.send(r);
        });
        let s = rx
            .await
            .map_err(|_| std::io::Error::other("connect thread ended"))??;
        tokio::net::TcpStream::from_std(s)
    }

    fn failure(&self, port: u16, e: &std::io::Error) -> String {
        format!(
            "error forwarding port {port} to pod {}: failed to connect to localhost:{port} inside the pod's network namespace: {e}",
            self.pod
        )
    }
}

/// Port-forward over SPDY: each connection is an error stream and a data stream with the same
/// `requestid`.
async fn spdy_forward<IO>(io: IO, target: Forward)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut session = match spdy::Session::serve(io) {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut pending: HashMap<String, (Option<spdy::Stream>, Option<spdy::Stream>)> = HashMap::new();
    while let Some(s) = session.incoming.recv().await {
        let rid = s
            .header("requestid")
            .map(str::to_string)
            .unwrap_or_else(|| s.header("port").unwrap_or_default().to_string());
        let slot = pending.entry(rid.clone()).or_default();
        match s.header("streamtype") {
            Some("error") => slot.0 = Some(s),
            Some("data") => slot.1 = Some(s),
            _ => {
                s.out.reset().await;
                continue;
            }
        }
        if slot.0.is_some()
            && slot.1.is_some()
            && let Some((Some(err), Some(data))) = pending.remove(&rid)
        {
            tokio::spawn(forward_one(target.clone(), err, data));
        }
    }
    session.close().await;
}

async fn forward_one(target: Forward, err: spdy::Stream, mut data: spdy::Stream) {
    let port = match data.header("port").and_then(|p| p.parse::<u16>().ok()) {
        Some(p) if p > 0 => p,
        _ => {
            let msg = format!("invalid port {:?}", data.header("port").unwrap_or_default());
            err.out.write(Bytes::from(msg)).await;
            err.out.close().await;
            data.out.close().await;
            return;
        }
    };
    let tcp = match target.connect(port).await {
        Ok(t) => t,
        Err(e) => {
            err.out.write(Bytes::from(target.failure(port, &e))).await;
            err.out.close().await;
            data.out.close().await;
            return;
        }
    };
    let (mut r, mut w) = tcp.into_split();
    let up = async {
        while let Some(b) = data.rx.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let out = data.out.clone();
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !out.write(Bytes::copy_from_slice(&buf[..n])).await {
                        break;
                    }
                }
            }
        }
        out.close().await;
        // kubectl closes its local connection only once the error stream ended too: end it
        // when the pod's side is done, without waiting for the client's half.
        err.out.close().await;
    };
    tokio::join!(up, down);
}

/// Carries a byte stream in binary WebSocket messages, both ways.
async fn tunnel(socket: WebSocket, io: tokio::io::DuplexStream) {
    let (mut sink, mut source) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) => {
                    let written = wr.write_all(&b).await;
                    if written.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let m = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    tokio::join!(up, down);
}

/// The WebSocket port-forward protocol: one connection per port, data on channel 2i, errors
/// on 2i+1, each channel opened by its port number (two bytes, little-endian); the
/// WebSocket ends when every port's connection did.
async fn ws_forward(socket: WebSocket, ports: Vec<u16>, target: Forward) {
    let (mut sink, mut source) = socket.split();
    for (i, p) in ports.iter().enumerate() {
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            let mut m = vec![ch];
            m.extend_from_slice(&p.to_le_bytes());
            if sink.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
    }
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(64);
    let writer = tokio::spawn(async move {
        while let Some((ch, b)) = out_rx.recv().await {
            let mut m = Vec::with_capacity(b.len() + 1);
            m.push(ch);
            m.extend_from_slice(&b);
            if sink.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    let mut inputs: Vec<mpsc::Sender<Bytes>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(32);
        inputs.push(tx);
        let out = out_tx.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let data_ch = 2 * i as u8;
            let tcp = match target.connect(port).await {
                Ok(t) => t,
                Err(e) => {
                    let _ = out
                        .send((data_ch + 1, Bytes::from(target.failure(port, &e))))
                        .await;
                    return;
                }
            };
            let (mut r, mut w) = tcp.into_split();
            let up = async {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out
                                .send((data_ch, Bytes::copy_from_slice(&buf[..n])))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            };
            // As the kubelet: a port's forward ends when either side ends.
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        }));
    }
    drop(out_tx);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, rest)) = data.split_first() else {
                continue;
            };
            if ch % 2 == 0
                && let Some(tx) = inputs.get((ch / 2) as usize)
                && !rest.is_empty()
            {
                let _ = tx.send(Bytes::copy_from_slice(rest)).await;
            }
        }
    });
    // The WebSocket closes once every port's connection ended (the client sees EOF then).
    for t in tasks {
        let _ = t.await;
    }
    let _ = writer.await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_repeated_commands_and_decodes_them() {
        let p = Params::parse(Some(
            "command=sh&command=-c&command=echo+a%20b%3B&stdin=1&tty=true",
        ));
        assert_eq!(p.all("command"), vec!["sh", "-c", "echo a b;"]);
        assert!(p.flag("stdin"));
        assert!(p.flag("tty"));
        assert!(!p.flag("stderr"));
        let o = Opts::from(&Params::parse(Some("stderr=1&tty=1&stdout=1")));
        assert!(o.tty && o.stdout && !o.stderr, "a terminal has no stderr");
    }

    #[test]
    fn the_clients_preferred_protocol_wins() {
        let offered = vec![
            "v5.channel.k8s.io".to_string(),
            "v4.channel.k8s.io".to_string(),
        ];
        assert_eq!(
            pick(&offered, EXEC_PROTOCOLS).as_deref(),
            Some("v5.channel.k8s.io")
        );
        let old = vec![
            "v4.channel.k8s.io".to_string(),
            "channel.k8s.io".to_string(),
        ];
        assert_eq!(
            pick(&old, SPDY_EXEC_PROTOCOLS).as_deref(),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(
            pick(&["base64.channel.k8s.io".to_string()], EXEC_PROTOCOLS),
            None
        );
    }

    #[test]
    fn exit_codes_become_kubernetes_statuses() {
        let argv = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        let s: serde_json::Value = serde_json::from_slice(
            &final_status("v4.channel.k8s.io", Some(&argv), &Ok(3)).expect("status"),
        )
        .expect("json");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value = serde_json::from_slice(
            &final_status("v5.channel.k8s.io", None, &Ok(0)).expect("status"),
        )
        .expect("json");
        assert_eq!(ok["status"], "Success");
        assert!(final_status("v2.channel.k8s.io", None, &Ok(0)).is_none());
    }
}
