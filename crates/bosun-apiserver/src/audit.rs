//! The audit log: one `audit.k8s.io/v1` Event per request, as JSON lines, at the level the
//! audit policy gives (`audit_policy.rs`; Metadata without one: who, what, when, the
//! answer's code). Request and response bodies are recorded only at the Request and
//! RequestResponse levels, and never those of Secrets or tokens. A thread of its own writes
//! the file and rotates it by size, keeping a few old files (`audit.log.1` ... ), so
//! requests never wait on the disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::attrs::Attrs;
use crate::audit_policy::{Level, Policy};
use crate::user::User;

/// Where and how large.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate when the file passes this size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_backups: usize,
    /// Which requests are recorded and how much of them; None records every request at
    /// the Metadata level.
    pub policy: Option<Policy>,
}

impl AuditConfig {
    pub fn new(path: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            path: path.into(),
            max_bytes: 100 << 20,
            max_backups: 5,
            policy: None,
        }
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Value>,
    policy: Option<std::sync::Arc<Policy>>,
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn rotate(cfg: &AuditConfig) -> std::io::Result<()> {
    let name = |i: usize| PathBuf::from(format!("{}.{i}", cfg.path.display()));
    if cfg.max_backups == 0 {
        return std::fs::remove_file(&cfg.path);
    }
    let _ = std::fs::remove_file(name(cfg.max_backups));
    for i in (1..cfg.max_backups).rev() {
        let _ = std::fs::rename(name(i), name(i + 1));
    }
    std::fs::rename(&cfg.path, name(1))
}

fn writer(cfg: AuditConfig, mut rx: mpsc::Receiver<Value>) {
    let mut file = match open(&cfg.path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %cfg.path.display(), error = %e, "opening the audit log");
            return;
        }
    };
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    while let Some(ev) = rx.blocking_recv() {
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        if size > 0 && size + line.len() as u64 > cfg.max_bytes {
            let _ = file.flush();
            match rotate(&cfg).and_then(|_| open(&cfg.path)) {
                Ok(f) => {
                    file = f;
                    size = 0;
                }
                Err(e) => tracing::warn!(error = %e, "rotating the audit log"),
            }
        }
        if let Err(e) = file.write_all(&line) {
            tracing::warn!(error = %e, "writing the audit log");
        }
        size += line.len() as u64;
    }
}

impl AuditLog {
    /// Starts the writer thread.
    pub fn start(cfg: AuditConfig) -> anyhow::Result<AuditLog> {
        if let Some(dir) = cfg.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        // Fail at start, not at the first request, when the file cannot be written.
        drop(open(&cfg.path)?);
        let (tx, rx) = mpsc::channel(8192);
        let policy = cfg.policy.clone().map(std::sync::Arc::new);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer(cfg, rx))?;
        Ok(AuditLog { tx, policy })
    }

    /// The level a request is recorded at (None: not at all).
    pub fn level(&self, user: Option<&User>, a: &Attrs, streaming: bool) -> Level {
        let stage = if streaming {
            "ResponseStarted"
        } else {
            "ResponseComplete"
        };
        match &self.policy {
            Some(p) => p.decide(user, a, stage),
            None => crate::audit_policy::cap(Level::Metadata, a),
        }
    }

    /// Queues one event; waits only when the writer is 8192 events behind.
    pub async fn record(&self, ev: Value) {
        let _ = self.tx.send(ev).await;
    }
}

/// What the middleware knows about one request.
pub struct Entry<'a> {
    pub audit_id: &'a str,
    pub attrs: &'a Attrs,
    pub uri: &'a str,
    pub user: Option<&'a User>,
    pub impersonated: Option<&'a User>,
    pub source_ip: Option<String>,
    pub user_agent: Option<&'a str>,
    pub code: u16,
    pub received: jiff::Timestamp,
    pub decision: Option<(&'a str, &'a str)>,
    /// Streaming answers (watch, follow) are recorded when their headers go out.
    pub streaming: bool,
    pub level: Level,
    /// The request body (Request and RequestResponse levels).
    pub request_object: Option<Value>,
    /// The response body (RequestResponse level).
    pub response_object: Option<Value>,
}

fn user_json(u: &User) -> Value {
    json!({"username": u.name, "groups": u.groups})
}

fn micro(ts: jiff::Timestamp) -> String {
    format!("{}", ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

/// The audit.k8s.io/v1 Event of a request.
pub fn event(e: &Entry) -> Value {
    let a = e.attrs;
    let mut ev = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": e.level.as_str(),
        "auditID": e.audit_id,
        "stage": if e.streaming { "ResponseStarted" } else { "ResponseComplete" },
        "requestURI": e.uri,
        "verb": a.verb,
        "user": e.user.map(user_json).unwrap_or_else(|| json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]})),
        "sourceIPs": e.source_ip.iter().collect::<Vec<_>>(),
        "responseStatus": {"metadata": {}, "code": e.code},
        "requestReceivedTimestamp": micro(e.received),
        "stageTimestamp": micro(jiff::Timestamp::now()),
    });
    if let Some(u) = e.impersonated {
        ev["impersonatedUser"] = user_json(u);
    }
    if let Some(ua) = e.user_agent {
        ev["userAgent"] = json!(ua);
    }
    if a.resource_request {
        let mut r = json!({"resource": a.resource, "apiVersion": a.api_version});
        if !a.api_group.is_empty() {
            r["apiGroup"] = json!(a.api_group);
        }
        for (k, v) in [
            ("namespace", &a.namespace),
            ("name", &a.name),
            ("subresource", &a.subresource),
        ] {
            if !v.is_empty() {
                r[k] = json!(v);
            }
        }
        ev["objectRef"] = r;
    }
    if e.level >= Level::Request
        && let Some(body) = &e.request_object
    {
        ev["requestObject"] = body.clone();
    }
    if e.level >= Level::RequestResponse
        && let Some(body) = &e.response_object
    {
        ev["responseObject"] = body.clone();
    }
    if let Some((decision, reason)) = e.decision {
        ev["annotations"] = json!({"authorization.k8s.io/decision": decision,
            "authorization.k8s.io/reason": reason});
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut cfg = AuditConfig::new(&path);
        cfg.max_bytes = 2000;
        cfg.max_backups = 2;
        let log = AuditLog::start(cfg).unwrap();
        let a =
            crate::attrs::from_request(&http::Method::GET, "/api/v1/namespaces/d/secrets/s", "");
        let u = User {
            name: "ann".into(),
            groups: vec![],
        };
        for _ in 0..20 {
            let ev = event(&Entry {
                audit_id: "id",
                attrs: &a,
                uri: "/api/v1/namespaces/d/secrets/s",
                user: Some(&u),
                impersonated: None,
                source_ip: Some("127.0.0.1".into()),
                user_agent: None,
                code: 200,
                received: jiff::Timestamp::now(),
                decision: Some(("allow", "")),
                streaming: false,
                level: Level::Metadata,
                request_object: None,
                response_object: None,
            });
            log.record(ev).await;
        }
        drop(log);
        // The writer drains its queue and ends when the sender is gone.
        for _ in 0..100 {
            if dir.path().join("audit.log.2").exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let text = std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["objectRef"]["resource"], "secrets");
        assert_eq!(first["verb"], "get");
        assert!(std::fs::metadata(&path).unwrap().len() <= 2000);
        assert!(!dir.path().join("audit.log.3").exists());
    }
}
