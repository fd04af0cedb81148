//! Ephemeral containers of process pods (`kubectl debug`): a process pod has no image to
//! start a debug container from, so its ephemeral container is the command run in the
//! namespaces of its target container (the one named by `targetContainerName`, else the
//! pod's first container), as `kubectl exec` runs one, but detached: it starts when the
//! container appears in the pod's spec, its output goes to the container's log, and
//! `kubectl attach` (any number of times) joins its streams, stdin and terminal included.
//! Docker pods run a real container instead (see `pod.rs`).
//!
//! Sessions live in the agent: an agent restart ends them (the container then shows as
//! terminated, as after a node restart).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{broadcast, mpsc, watch};

use crate::runtime::{ContainerKey, Runtime};
use crate::streamio::StreamIo;

/// Where an ephemeral session is.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionState {
    Running {
        started_at: Time,
    },
    Exited {
        exit_code: i32,
        started_at: Time,
        finished_at: Time,
        message: Option<String>,
    },
}

/// One ephemeral container of a process pod.
pub struct Session {
    /// The namespaces it runs in: `kubectl exec -c` into it execs there.
    pub target: ContainerKey,
    stdin: Option<mpsc::Sender<Bytes>>,
    resize: mpsc::Sender<(u16, u16)>,
    output: broadcast::Sender<Bytes>,
    state: watch::Receiver<SessionState>,
    pub tty: bool,
    task: tokio::task::AbortHandle,
}

impl Session {
    pub fn state(&self) -> SessionState {
        self.state.borrow().clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The command is a child with kill_on_drop: aborting the task ends it.
        self.task.abort();
    }
}

/// The sessions of this process, by pod UID and container name (UIDs are unique, so the
/// agents of several nodes in one process share it safely).
static SESSIONS: LazyLock<Mutex<Sessions>> = LazyLock::new(Default::default);

/// Sessions by (pod UID, container name).
type Sessions = HashMap<(String, String), Arc<Session>>;

fn sessions() -> std::sync::MutexGuard<'static, HashMap<(String, String), Arc<Session>>> {
    SESSIONS.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn get(pod_uid: &str, container: &str) -> Option<Arc<Session>> {
    sessions()
        .get(&(pod_uid.to_string(), container.to_string()))
        .cloned()
}

/// Ends every session of a pod (it is stopping or gone).
pub fn remove_pod(pod_uid: &str) {
    let gone: Vec<Arc<Session>> = {
        let mut map = sessions();
        let keys: Vec<_> = map.keys().filter(|k| k.0 == pod_uid).cloned().collect();
        keys.into_iter().filter_map(|k| map.remove(&k)).collect()
    };
    drop(gone);
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Starts the session of ephemeral container `name` of pod `pod_uid`: `argv` in the
/// namespaces of `target`, its output written to `log` (CRI format).
#[allow(clippy::too_many_arguments)]
pub fn start(
    pod_uid: &str,
    name: &str,
    rt: Arc<dyn Runtime>,
    target: ContainerKey,
    argv: Vec<String>,
    stdin: bool,
    tty: bool,
    log: PathBuf,
) -> Arc<Session> {
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(64);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let (out_tx, _) = broadcast::channel::<Bytes>(1024);
    let started_at = now();
    let (state_tx, state_rx) = watch::channel(SessionState::Running {
        started_at: started_at.clone(),
    });
    let (o_tx, mut o_rx) = mpsc::channel::<(&'static str, Bytes)>(64);
    let (so_tx, mut so_rx) = mpsc::channel::<Bytes>(64);
    let (se_tx, mut se_rx) = mpsc::channel::<Bytes>(64);
    let io = StreamIo {
        stdin: stdin.then_some(in_rx),
        stdout: Some(so_tx),
        stderr: (!tty).then_some(se_tx),
        resize: Some(resize_rx),
        tty,
    };
    let out = out_tx.clone();
    let key = target.clone();
    let task = tokio::spawn(async move {
        // Both streams into one, tagged, for the log and the attached clients.
        let tag_out = o_tx.clone();
        let fwd_out = tokio::spawn(async move {
            while let Some(b) = so_rx.recv().await {
                if tag_out.send(("stdout", b)).await.is_err() {
                    return;
                }
            }
        });
        let fwd_err = tokio::spawn(async move {
            while let Some(b) = se_rx.recv().await {
                if o_tx.send(("stderr", b)).await.is_err() {
                    return;
                }
            }
        });
        let writer = tokio::spawn(async move {
            let mut w = crate::cri_log::LogWriter::open(&log, 10 << 20, 2).ok();
            let mut partial: HashMap<&'static str, Vec<u8>> = HashMap::new();
            while let Some((stream, b)) = o_rx.recv().await {
                let _ = out.send(b.clone());
                let buf = partial.entry(stream).or_default();
                buf.extend_from_slice(&b);
                while let Some(i) = buf.iter().position(|&c| c == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let line = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n"));
                    if let (Some(w), Some(l)) = (w.as_mut(), line) {
                        let _ = w.write_line(stream, l, false);
                    }
                }
            }
            for (stream, rest) in partial {
                if let (Some(w), false) = (w.as_mut(), rest.is_empty()) {
                    let _ = w.write_line(stream, &rest, true);
                }
            }
        });
        let res = rt.exec_stream(&key, &argv, io).await;
        let _ = fwd_out.await;
        let _ = fwd_err.await;
        let _ = writer.await;
        let (exit_code, message) = match res {
            Ok(c) => (c, None),
            Err(e) => (128, Some(format!("{e:#}"))),
        };
        let _ = state_tx.send(SessionState::Exited {
            exit_code,
            started_at,
            finished_at: now(),
            message,
        });
    });
    let session = Arc::new(Session {
        target,
        stdin: stdin.then_some(in_tx),
        resize: resize_tx,
        output: out_tx,
        state: state_rx,
        tty,
        task: task.abort_handle(),
    });
    sessions().insert((pod_uid.to_string(), name.to_string()), session.clone());
    session
}

/// `kubectl attach` to a session: the client's stdin and terminal sizes go in, the output
/// from now on comes out, until the command ends or the client leaves.
pub async fn attach(session: Arc<Session>, io: StreamIo) {
    let mut output = session.output.subscribe();
    let mut state = session.state.clone();
    let mut helpers = Vec::new();
    if let (Some(mut rx), Some(tx)) = (io.stdin, session.stdin.clone()) {
        helpers.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }));
    }
    if let Some(mut rx) = io.resize {
        let tx = session.resize.clone();
        helpers.push(tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                if tx.send(s).await.is_err() {
                    return;
                }
            }
        }));
    }
    let sink = io.stdout.or(io.stderr);
    let running = |s: &SessionState| matches!(s, SessionState::Running { .. });
    if running(&state.borrow()) {
        loop {
            tokio::select! {
                m = output.recv() => match m {
                    Ok(b) => {
                        if let Some(s) = &sink && s.send(b).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                changed = state.changed() => {
                    if changed.is_err() || !running(&state.borrow()) {
                        // What was written before the end.
                        while let Ok(b) = output.try_recv() {
                            if let Some(s) = &sink {
                                let _ = s.send(b).await;
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
    for h in helpers {
        h.abort();
    }
}
