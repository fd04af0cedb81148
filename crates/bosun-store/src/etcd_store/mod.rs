//! The etcd backend: the [`Store`] trait on an etcd v3 cluster, for several bosun
//! servers sharing one control plane.
//!
//! Revisions are etcd's, conditional writes are transactions comparing `mod_revision`,
//! lists read at a revision, watches start from a revision (`Compacted` when etcd has
//! compacted it away), leases are etcd leases, and a background task compacts history
//! older than the retention window, as the Kubernetes API server does. Keys are laid out
//! as Kubernetes lays them out (see `keys`).
//!
//! The client is given every member; a request that fails because a member is gone or
//! the cluster is electing a leader is retried (on another member) for a while, so a
//! member's death costs a pause, not errors. A retried write may have been applied the
//! first time; a create or conditional update that then finds exactly its own value in
//! place reports success, since that value is what it wrote.

mod keys;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    EventKind, KeyValue, LeaseId, ListOptions, ListResult, Result, Revision, Store, StoreError,
    WatchEvent, WatchItem, WatchStream,
};

/// TLS to etcd: the CA that signed the members' certificates and, when the cluster
/// requires client certificates, this client's certificate and key (all PEM).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Every member's client URL (`http://host:2379` or, with TLS, `https://...`;
    /// a bare `host:port` takes the scheme from whether `tls` is set).
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    /// How often history older than `compaction_interval` is compacted (Kubernetes'
    /// default, 5 minutes, keeps that much history). `Duration::ZERO` turns it off.
    pub compaction_interval: Duration,
    /// One attempt of one request gives up after this long.
    pub request_timeout: Duration,
    /// How long a request keeps retrying while members are unreachable or the
    /// cluster has no leader, before it fails.
    pub retry_for: Duration,
    /// How long a read keeps asking for a linearizable answer before it settles for a
    /// serializable one from any member that is up (a cluster without quorum).
    pub read_fallback_after: Duration,
    /// How long `connect` waits for the cluster to answer.
    pub connect_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            tls: None,
            compaction_interval: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(20),
            read_fallback_after: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Bounds the events a watch buffers for a reader that has not caught up; past that
/// the stream stops reading from etcd, which holds (or, if too far behind, compacts
/// and reports) the rest.
const WATCH_BUFFER: usize = 256;
/// Largest TTL etcd accepts.
const MAX_TTL: i64 = 9_000_000_000;

/// The etcd store. Cheap to share behind an `Arc`; its compaction task holds only a
/// weak handle and stops after the last handle is dropped.
pub struct EtcdStore {
    client: Client,
    opts: EtcdOptions,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

/// What went wrong, as far as retrying and error mapping care.
enum Failure {
    /// The member or the cluster could not answer now; another try may succeed.
    Unavailable(String),
    Compacted,
    Future,
    LeaseNotFound,
    Other(String),
}

fn classify(e: &etcd_client::Error) -> Failure {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let msg = s.message();
            match s.code() {
                Code::OutOfRange if msg.contains("compacted") => Failure::Compacted,
                Code::OutOfRange if msg.contains("future") => Failure::Future,
                Code::NotFound if msg.contains("lease") => Failure::LeaseNotFound,
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::Unknown => Failure::Unavailable(s.to_string()),
                _ => Failure::Other(s.to_string()),
            }
        }
        // etcd answers a keep-alive for an unknown lease with a TTL of 0, which the
        // client reports this way.
        etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
            Failure::LeaseNotFound
        }
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_)
        | etcd_client::Error::LeaseKeepAliveError(_) => Failure::Unavailable(e.to_string()),
        other => Failure::Other(other.to_string()),
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = std::str::from_utf8(kv.key()).map_err(backend)?;
    Ok(KeyValue {
        key: keys::from_etcd(key),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    h.map(|h| h.revision())
        .ok_or_else(|| backend("response without a header"))
}

/// etcd's `(key, range_end)` for every key under `prefix`.
fn range_of(etcd_prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if etcd_prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (
            etcd_prefix.as_bytes().to_vec(),
            keys::prefix_end(etcd_prefix.as_bytes()),
        )
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers within
    /// `opts.connect_timeout` (so a wrong address fails at start, clearly). Must run
    /// inside a Tokio runtime.
    pub async fn connect(opts: EtcdOptions) -> Result<Arc<EtcdStore>> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::InvalidArgument(
                "no etcd endpoints given".into(),
            ));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.request_timeout)
            .with_timeout(opts.request_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &opts.tls {
            let mut t = TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem))
                // Members are addressed by IP in most setups; tonic checks the name
                // against the certificate's SANs, which carry the IPs.
                .assume_http2(true);
            if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            co = co.with_tls(t);
        }
        let scheme = if opts.tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}{e}")
                }
            })
            .collect();
        let client = Client::connect(&endpoints, Some(co))
            .await
            .map_err(|e| backend(format!("connecting to {}: {e}", endpoints.join(","))))?;
        let mut store = EtcdStore {
            client,
            opts: EtcdOptions {
                retry_for: opts.connect_timeout,
                ..opts.clone()
            },
        };
        store.current_revision().await.map_err(|e| {
            StoreError::Backend(format!(
                "etcd at {} did not answer within {:?}: {e}",
                endpoints.join(","),
                opts.connect_timeout
            ))
        })?;
        store.opts = opts;
        let store = Arc::new(store);
        if !store.opts.compaction_interval.is_zero() {
            tokio::spawn(compactor(
                Arc::downgrade(&store),
                store.opts.compaction_interval,
            ));
        }
        Ok(store)
    }

    /// Runs `op` until it succeeds, fails for good, or `retry_for` has passed while
    /// the cluster was unavailable. `op` gets the attempt number (from 1).
    async fn retry<T, F, Fut>(&self, op: F) -> std::result::Result<T, etcd_client::Error>
    where
        F: FnMut(Client, u32) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.retry_within(self.opts.retry_for, op).await
    }

    /// `retry` with its own budget.
    async fn retry_within<T, F, Fut>(
        &self,
        budget: Duration,
        mut op: F,
    ) -> std::result::Result<T, etcd_client::Error>
    where
        F: FnMut(Client, u32) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + budget;
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = match tokio::time::timeout(
                self.opts.request_timeout,
                op(self.client.clone(), attempt),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(etcd_client::Error::GRpcStatus(
                    tonic::Status::deadline_exceeded("request timed out"),
                )),
            };
            match res {
                Err(e)
                    if matches!(classify(&e), Failure::Unavailable(_))
                        && tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(error = %e, attempt, "etcd request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Maps a client error, looking up the compaction point for `Compacted`.
    async fn map_err(&self, e: etcd_client::Error, requested: Revision) -> StoreError {
        match classify(&e) {
            Failure::Compacted => StoreError::Compacted {
                requested,
                compacted: self.compacted_revision().await.unwrap_or(requested + 1),
            },
            Failure::Future => StoreError::FutureRevision(requested),
            Failure::LeaseNotFound => StoreError::Backend("lease not found".into()),
            Failure::Unavailable(m) => backend(format!("cluster unavailable: {m}")),
            Failure::Other(m) => backend(m),
        }
    }

    /// One conditional write: `then` if `cond` holds, else a read of the key.
    async fn txn(
        &self,
        key: &str,
        cond: Compare,
        then: TxnOp,
        lease: Option<LeaseId>,
    ) -> Result<(bool, Revision, Option<TxnOpResponse>, u32)> {
        let ek = keys::to_etcd(key);
        let mut attempts = 0;
        let res = self
            .retry(|mut c, attempt| {
                attempts = attempt;
                let txn = Txn::new()
                    .when(vec![cond.clone()])
                    .and_then(vec![then.clone()])
                    .or_else(vec![TxnOp::get(ek.clone(), None)]);
                async move { c.txn(txn).await }
            })
            .await;
        match res {
            Ok(r) => Ok((
                r.succeeded(),
                header_rev(r.header())?,
                r.op_responses().into_iter().next(),
                attempts,
            )),
            Err(e) => match (classify(&e), lease) {
                (Failure::LeaseNotFound, Some(l)) => Err(StoreError::LeaseNotFound(l)),
                _ => Err(self.map_err(e, 0).await),
            },
        }
    }

    async fn range(
        &self,
        key: Vec<u8>,
        end: Vec<u8>,
        revision: Option<Revision>,
        limit: i64,
    ) -> Result<etcd_client::GetResponse> {
        let get = |serializable: bool| {
            let (key, end) = (key.clone(), end.clone());
            move |mut c: Client, _| {
                let mut o = GetOptions::new().with_range(end.clone()).with_limit(limit);
                if let Some(r) = revision {
                    o = o.with_revision(r);
                }
                if serializable {
                    o = o.with_serializable();
                }
                let key = key.clone();
                async move { c.get(key, Some(o)).await }
            }
        };
        // A linearizable read first; when the cluster cannot answer one (no leader, lost
        // quorum), a serializable read from whichever member is up: possibly stale, as a
        // Kubernetes read from the watch cache may be, but the cluster stays readable.
        let budget = self.opts.read_fallback_after.min(self.opts.retry_for);
        let res = match self.retry_within(budget, get(false)).await {
            Err(e) if matches!(classify(&e), Failure::Unavailable(_)) => {
                let rest = self.opts.retry_for.saturating_sub(budget);
                let r = self.retry_within(rest, get(true)).await;
                if r.is_ok() {
                    tracing::warn!(
                        error = %e,
                        "etcd cannot serve a linearizable read; served a possibly stale read from one member"
                    );
                }
                r.map_err(|_| e)
            }
            other => other,
        };
        match res {
            Ok(r) => Ok(r),
            Err(e) => Err(self.map_err(e, revision.unwrap_or(0)).await),
        }
    }
}

/// The current value of a key from a failed transaction's read.
fn current_of(resp: Option<TxnOpResponse>) -> Result<Option<KeyValue>> {
    match resp {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().map(to_kv).transpose(),
        _ => Ok(None),
    }
}

/// Compacts, every `every`, the revision that was current one interval earlier, so
/// about `every` of history is kept. Several servers may all do this; compacting an
/// already compacted revision is refused by etcd and ignored here.
async fn compactor(store: std::sync::Weak<EtcdStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut previous: Option<Revision> = None;
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let now = match store.current_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading etcd's revision for compaction failed");
                continue;
            }
        };
        if let Some(target) = previous {
            match store.compact(target).await {
                Ok(()) => tracing::debug!(revision = target, "compacted etcd history"),
                Err(StoreError::Compacted { .. }) => {}
                Err(e) => tracing::warn!(revision = target, error = %e, "etcd compaction failed"),
            }
        }
        previous = Some(now);
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision> {
        // A linearizable read of one key that never exists: only the header matters.
        let r = self.range(b"\0".to_vec(), Vec::new(), None, 1).await?;
        header_rev(r.header())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = self
            .range(keys::to_etcd(key).into_bytes(), Vec::new(), None, 1)
            .await?;
        r.kvs().first().map(to_kv).transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let span = keys::span(prefix);
        let (start, end) = range_of(&span.etcd_prefix);
        let limit = opts.limit.filter(|&l| l > 0);
        let mut from = start.clone();
        if let Some(after) = &opts.start_after {
            let mut k = keys::to_etcd(after).into_bytes();
            k.push(0);
            if k > from {
                from = k;
            }
        }
        let mut revision = opts.revision;
        let mut kvs = Vec::new();
        loop {
            // With a filter, read in pages until enough keys belong.
            let page = match (&span.filter, limit) {
                (None, Some(l)) => l as i64,
                (None, None) => 0,
                (Some(_), _) => 512,
            };
            if from >= end && end != [0] {
                break;
            }
            let r = self
                .range(from.clone(), end.clone(), revision, page)
                .await?;
            if revision.is_none() {
                revision = Some(header_rev(r.header())?);
            }
            for kv in r.kvs() {
                let kv = to_kv(kv)?;
                if span.filter.as_ref().is_none_or(|f| kv.key.starts_with(f)) {
                    kvs.push(kv);
                }
            }
            let more = r.more();
            if span.filter.is_none() {
                return Ok(ListResult {
                    kvs,
                    revision: revision.unwrap_or_default(),
                    more,
                });
            }
            if !more || limit.is_some_and(|l| kvs.len() > l) {
                break;
            }
            match r.kvs().last() {
                Some(last) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                None => break,
            }
        }
        let more = limit.is_some_and(|l| kvs.len() > l);
        if let Some(l) = limit {
            kvs.truncate(l);
        }
        Ok(ListResult {
            kvs,
            revision: revision.unwrap_or_default(),
            more,
        })
    }

    async fn create(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<KeyValue> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("empty key".into()));
        }
        let ek = keys::to_etcd(key);
        let put = TxnOp::put(
            ek.clone(),
            value.to_vec(),
            Some(PutOptions::new().with_lease(lease.unwrap_or(0))),
        );
        let cond = Compare::create_revision(ek, CompareOp::Equal, 0);
        let (ok, rev, resp, attempts) = self.txn(key, cond, put, lease).await?;
        if ok {
            return Ok(KeyValue {
                key: key.to_string(),
                value,
                create_revision: rev,
                mod_revision: rev,
                lease,
            });
        }
        match current_of(resp)? {
            // A retry after the first attempt was applied finds its own write.
            Some(cur) if attempts > 1 && cur.value == value && cur.lease == lease => Ok(cur),
            _ => Err(StoreError::AlreadyExists(key.to_string())),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue> {
        let ek = keys::to_etcd(key);
        let put = TxnOp::put(
            ek.clone(),
            value.to_vec(),
            Some(
                PutOptions::new()
                    .with_lease(lease.unwrap_or(0))
                    .with_prev_key(),
            ),
        );
        let cond = match expected {
            Some(r) => Compare::mod_revision(ek, CompareOp::Equal, r),
            None => Compare::create_revision(ek, CompareOp::Greater, 0),
        };
        let (ok, rev, resp, attempts) = self.txn(key, cond, put, lease).await?;
        if ok {
            let prev = match resp {
                Some(TxnOpResponse::Put(p)) => p.prev_key().map(to_kv).transpose()?,
                _ => None,
            };
            return Ok(KeyValue {
                key: key.to_string(),
                value,
                create_revision: prev.map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                lease,
            });
        }
        match current_of(resp)? {
            None => Err(StoreError::NotFound(key.to_string())),
            Some(cur) if attempts > 1 && cur.value == value && cur.lease == lease => Ok(cur),
            Some(cur) => Err(StoreError::Conflict {
                key: key.to_string(),
                current: cur.mod_revision,
            }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let ek = keys::to_etcd(key);
        let del = TxnOp::delete(ek.clone(), Some(DeleteOptions::new().with_prev_key()));
        let cond = match expected {
            Some(r) => Compare::mod_revision(ek, CompareOp::Equal, r),
            None => Compare::create_revision(ek, CompareOp::Greater, 0),
        };
        let (ok, rev, resp, _) = self.txn(key, cond, del, None).await?;
        if ok {
            let prev = match resp {
                Some(TxnOpResponse::Delete(d)) => d.prev_kvs().first().map(to_kv).transpose()?,
                _ => None,
            };
            // Deleted between the compare and... cannot happen in one transaction; a
            // missing prev only comes from a retried delete that already went through.
            let prev = prev.ok_or_else(|| StoreError::NotFound(key.to_string()))?;
            return Ok(KeyValue {
                mod_revision: rev,
                ..prev
            });
        }
        match current_of(resp)? {
            None => Err(StoreError::NotFound(key.to_string())),
            Some(cur) => Err(StoreError::Conflict {
                key: key.to_string(),
                current: cur.mod_revision,
            }),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let span = keys::span(prefix);
        let (key, end) = range_of(&span.etcd_prefix);
        // Checks the start synchronously: a read at `after` fails with etcd's own
        // compacted / future errors. (etcd starts watches inclusively; starting at
        // `after` and dropping its events makes "older than the compaction point"
        // mean the same as in `list`.)
        let start = after.max(1);
        self.range(key.clone(), end.clone(), Some(start), 1).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let w = Watcher {
            client: self.client.clone(),
            key,
            end,
            filter: span.filter,
            last: after,
            retry_for: self.opts.retry_for,
            tx,
        };
        // Opens the first etcd watch here so a failure shows up as the call's error.
        let stream = w
            .open()
            .await
            .map_err(|e| backend(format!("opening watch: {e}")))?;
        tokio::spawn(w.run(stream));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let compacted = self.compacted_revision().await?;
        if revision <= compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted,
            });
        }
        if revision > self.current_revision().await? {
            return Err(StoreError::FutureRevision(revision));
        }
        let res = self
            .retry(|mut c, _| async move { c.compact(revision, None).await })
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => Err(self.map_err(e, revision).await),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        // etcd does not report its compaction point directly. A read at revision 1
        // succeeds until the first compaction; after it, a watch from revision 1 is
        // refused with the compaction point in the answer.
        let probe = self
            .retry(|mut c, _| async move {
                c.get(
                    b"\0".to_vec(),
                    Some(GetOptions::new().with_revision(1).with_count_only()),
                )
                .await
            })
            .await;
        match probe {
            Ok(_) => return Ok(0),
            Err(e) if matches!(classify(&e), Failure::Compacted) => {}
            Err(e) => return Err(self.map_err(e, 1).await),
        }
        let mut c = self.client.clone();
        let found = async {
            let mut ws = c
                .watch(
                    b"\0".to_vec(),
                    Some(WatchOptions::new().with_start_revision(1)),
                )
                .await?;
            while let Some(resp) = ws.message().await? {
                if resp.compact_revision() != 0 {
                    return Ok(resp.compact_revision());
                }
            }
            Err(etcd_client::Error::WatchError("watch ended".into()))
        };
        match tokio::time::timeout(self.opts.request_timeout, found).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.map_err(e, 1).await),
            Err(_) => Err(backend("no compaction point reported")),
        }
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId> {
        if ttl_seconds > MAX_TTL {
            return Err(StoreError::InvalidArgument(format!(
                "lease TTL {ttl_seconds}s is over the maximum {MAX_TTL}s"
            )));
        }
        let ttl = ttl_seconds.max(1);
        match self
            .retry(|mut c, _| async move { c.lease_grant(ttl, None).await })
            .await
        {
            Ok(r) if r.error().is_empty() => Ok(r.id()),
            Ok(r) => Err(backend(r.error())),
            Err(e) => Err(self.map_err(e, 0).await),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let res = self
            // Opening the keep-alive stream sends one keep-alive and reads its answer.
            .retry(|mut c, _| async move { c.lease_keep_alive(lease).await.map(|_| ()) })
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(e) if matches!(classify(&e), Failure::LeaseNotFound) => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(self.map_err(e, 0).await),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let res = self
            .retry(|mut c, _| async move { c.lease_revoke(lease).await })
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if matches!(classify(&e), Failure::LeaseNotFound) => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(self.map_err(e, 0).await),
        }
    }
}

/// One store watch: follows an etcd watch and, when its member goes away, opens a
/// new one from the last revision delivered.
struct Watcher {
    client: Client,
    key: Vec<u8>,
    end: Vec<u8>,
    filter: Option<String>,
    /// Every change up to here has been delivered.
    last: Revision,
    retry_for: Duration,
    tx: mpsc::Sender<Result<WatchItem>>,
}

impl Watcher {
    async fn open(&self) -> std::result::Result<etcd_client::WatchStream, etcd_client::Error> {
        let opts = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(self.last.max(1))
            .with_prev_key()
            .with_progress_notify();
        self.client
            .clone()
            .watch(self.key.clone(), Some(opts))
            .await
    }

    async fn run(mut self, mut stream: etcd_client::WatchStream) {
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                () = self.tx.closed() => return,
            };
            match msg {
                Ok(Some(resp)) => {
                    if resp.compact_revision() != 0 {
                        let _ = self
                            .tx
                            .send(Err(StoreError::Compacted {
                                requested: self.last,
                                compacted: resp.compact_revision(),
                            }))
                            .await;
                        return;
                    }
                    if resp.canceled() {
                        let reason = resp.cancel_reason().to_string();
                        if !self.reopen(&mut stream, &reason).await {
                            return;
                        }
                        continue;
                    }
                    if !self.deliver(&resp).await {
                        return;
                    }
                }
                Ok(None) => {
                    if !self.reopen(&mut stream, "stream ended").await {
                        return;
                    }
                }
                Err(e) => {
                    if !self.reopen(&mut stream, &e.to_string()).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends a response's changes (or its progress); false once the reader is gone.
    async fn deliver(&mut self, resp: &etcd_client::WatchResponse) -> bool {
        if resp.created() {
            return true;
        }
        if resp.events().is_empty() {
            // A progress notice: every change up to the header's revision was sent.
            let rev = resp.header().map_or(0, |h| h.revision());
            if rev > self.last {
                self.last = rev;
                return self.tx.send(Ok(WatchItem::Progress(rev))).await.is_ok();
            }
            return true;
        }
        // One revision can hold several changes (a lease revocation, a transaction),
        // and etcd never splits a revision across responses: `last` is complete.
        let done = self.last;
        for ev in resp.events() {
            let item = match convert(ev) {
                Ok(e) => e,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return false;
                }
            };
            // etcd starts at `after` inclusive; and a reopened watch repeats `last`.
            if item.kv.mod_revision <= done {
                continue;
            }
            self.last = self.last.max(item.kv.mod_revision);
            if self
                .filter
                .as_ref()
                .is_some_and(|f| !item.kv.key.starts_with(f))
            {
                continue;
            }
            if self.tx.send(Ok(WatchItem::Event(item))).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Opens a new etcd watch after the old one broke; false (after telling the
    /// reader) when that does not work within `retry_for`.
    async fn reopen(&mut self, stream: &mut etcd_client::WatchStream, why: &str) -> bool {
        tracing::debug!(
            reason = why,
            revision = self.last,
            "etcd watch broke; reopening"
        );
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.tx.is_closed() {
                return false;
            }
            // A new etcd watch starts at `last` inclusive; `deliver` drops repeats.
            match self.open().await {
                Ok(s) => {
                    *stream = s;
                    return true;
                }
                Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %e, "reopening etcd watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    let _ = self
                        .tx
                        .send(Err(backend(format!(
                            "watch lost ({why}), reopening failed: {e}"
                        ))))
                        .await;
                    return false;
                }
            }
        }
    }
}

fn convert(ev: &etcd_client::Event) -> Result<WatchEvent> {
    let kv = ev
        .kv()
        .ok_or_else(|| backend("watch event without a key"))?;
    let kv = to_kv(kv)?;
    let prev = ev.prev_kv().map(to_kv).transpose()?;
    Ok(match ev.event_type() {
        EventType::Put => WatchEvent {
            kind: EventKind::Put,
            kv,
            prev,
        },
        EventType::Delete => WatchEvent {
            kind: EventKind::Delete,
            // A deletion reports the last value, stamped with the deletion's revision.
            kv: match &prev {
                Some(p) => KeyValue {
                    mod_revision: kv.mod_revision,
                    ..p.clone()
                },
                None => kv,
            },
            prev,
        },
    })
}
