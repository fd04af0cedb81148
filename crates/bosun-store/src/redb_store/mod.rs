//! The embedded backend: the [`Store`] trait on one redb file.
//!
//! Layout: `kv` holds the current value of every key, `log` holds one record per
//! revision (the change and the value it replaced), `meta` holds the revision counters,
//! `leases`/`lease_keys` hold leases and which keys hang on them. A read at an old
//! revision starts from `kv` and undoes the log records newer than it; a watch replays
//! the log and then follows live changes.
//!
//! All writes go through one writer thread (see `writer`), which commits every write
//! queued at that moment in one durable transaction: one fsync acknowledges many
//! writes, which is what makes durable writes fast.
//!
//! Leases: expiry deadlines live in memory. After a restart every lease gets a fresh
//! full TTL, so a lease whose owner died while the store was down expires one TTL after
//! the store comes back.

mod watch;
mod writer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::codec::{decode_kv, split_event};
use crate::{
    KeyValue, LeaseId, ListOptions, ListResult, Result, Revision, Store, StoreError, WatchEvent,
    WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u64, i64> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(u64, &str), ()> = TableDefinition::new("lease_keys");

/// Floor for the configurable timer periods, so a zero cannot turn them into busy loops.
const MIN_TICK: Duration = Duration::from_millis(10);

/// The default page cache: 64 MiB, not redb's 1 GiB, so memory stays small with a
/// large store.
pub const DEFAULT_CACHE_SIZE: usize = 64 << 20;

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";

/// Tuning of the embedded backend. The defaults follow Kubernetes' own choices.
#[derive(Clone, Debug)]
pub struct RedbOptions {
    /// How often the history older than `compaction_retention` is dropped.
    /// `Duration::ZERO` turns time-based compaction off.
    pub compaction_interval: Duration,
    /// How much history (by age) a compaction keeps.
    pub compaction_retention: Duration,
    /// The log never keeps more than about this many revisions (0 = no cap); this bounds
    /// the file when writes come faster than the time-based compaction drops them.
    pub max_log_revisions: u64,
    /// A watch with nothing to deliver for this long yields `WatchItem::Progress`.
    pub progress_interval: Duration,
    /// How often lease deadlines are checked.
    pub lease_check_interval: Duration,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Committed batches buffered for watchers; a watcher further behind catches up
    /// from the log instead. Bounds the memory a slow watcher can pin.
    pub watch_buffer: usize,
    /// Page cache size in bytes (`None`: redb's default of 1 GiB). Pages read or
    /// written stay cached up to this bound, so it bounds the store's memory.
    pub cache_size: Option<usize>,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            compaction_interval: Duration::from_secs(300),
            compaction_retention: Duration::from_secs(300),
            max_log_revisions: 100_000,
            progress_interval: Duration::from_secs(5),
            lease_check_interval: Duration::from_millis(500),
            max_batch: 1024,
            watch_buffer: 128,
            cache_size: Some(DEFAULT_CACHE_SIZE),
        }
    }
}

/// State shared by the store handle, the writer thread and watch streams.
struct Inner {
    db: redb::Database,
    /// Last committed revision and compaction point, for cheap checks; reads that
    /// must agree with their snapshot read `meta` in their own transaction instead.
    revision: AtomicI64,
    compacted: AtomicI64,
    /// Every committed batch of changes, in revision order.
    events: broadcast::Sender<Arc<Vec<WatchEvent>>>,
    leases: Mutex<HashMap<LeaseId, LeaseClock>>,
    opts: RedbOptions,
}

#[derive(Clone, Copy, Debug)]
struct LeaseClock {
    ttl: Duration,
    deadline: Instant,
}

impl Inner {
    fn lease_expired(&self, id: LeaseId, now: Instant) -> bool {
        self.leases
            .lock()
            .expect("lease map poisoned")
            .get(&id)
            .is_some_and(|l| l.deadline <= now)
    }
}

/// The embedded store. Cheap to share behind an `Arc`; dropping the last handle waits
/// for queued writes, stops the background work and closes the file, so it can be
/// opened again at once (a read still running on the blocking pool at that moment may
/// hold it a little longer). Watch streams of a closed store end with an error.
pub struct RedbStore {
    inner: Arc<Inner>,
    /// `Option` so `Drop` can close the queue before joining the writer.
    tx: Option<mpsc::Sender<writer::Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn meta_get(t: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<i64> {
    Ok(t.get(name)
        .map_err(backend)?
        .map_or(0, |v| v.value() as i64))
}

impl RedbStore {
    /// Opens (or creates) the store in the file at `path`. Must be called inside a
    /// Tokio runtime: the store runs its lease and compaction timers on it.
    pub fn open(path: &Path, opts: RedbOptions) -> Result<Arc<RedbStore>> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Backend("RedbStore::open must run inside a Tokio runtime".into())
        })?;
        let started = Instant::now();
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let db = builder(&opts, &repaired)
            .create(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        if repaired.load(Ordering::Relaxed) {
            tracing::warn!(path = %path.display(), took = ?started.elapsed(), "store repaired after an unclean shutdown");
        }

        // Create the tables and counters of a new file; read them back for an old one.
        let txn = db.begin_write().map_err(backend)?;
        let (revision, compacted, leases) = {
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(LOG).map_err(backend)?;
            txn.open_table(LEASE_KEYS).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            if meta.get(META_REVISION).map_err(backend)?.is_none() {
                // An empty store is at revision 1, as in etcd; writes start at 2.
                meta.insert(META_REVISION, 1).map_err(backend)?;
                meta.insert(META_COMPACTED, 0).map_err(backend)?;
                meta.insert(META_NEXT_LEASE, 1).map_err(backend)?;
            }
            let now = Instant::now();
            let mut leases = HashMap::new();
            for entry in txn
                .open_table(LEASES)
                .map_err(backend)?
                .iter()
                .map_err(backend)?
            {
                let (id, ttl) = entry.map_err(backend)?;
                let ttl = Duration::from_secs(ttl.value() as u64);
                let clock = LeaseClock {
                    ttl,
                    deadline: now + ttl,
                };
                leases.insert(id.value() as LeaseId, clock);
            }
            (
                meta_get(&meta, META_REVISION)?,
                meta_get(&meta, META_COMPACTED)?,
                leases,
            )
        };
        txn.commit().map_err(backend)?;
        tracing::info!(
            path = %path.display(),
            revision,
            compacted,
            cache_bytes = opts.cache_size,
            "store opened"
        );

        let (events, _) = broadcast::channel(opts.watch_buffer.max(1));
        let inner = Arc::new(Inner {
            db,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            events,
            leases: Mutex::new(leases),
            opts: opts.clone(),
        });
        // Bounded: when the disk cannot keep up, writers wait instead of piling up memory.
        let (tx, rx) = mpsc::channel(opts.max_batch.max(1) * 4);
        let writer = writer::spawn(inner.clone(), rx, revision, compacted)?;
        let store = Arc::new(RedbStore {
            inner,
            tx: Some(tx),
            writer: Some(writer),
        });
        rt.spawn(lease_timer(Arc::downgrade(&store)));
        if !opts.compaction_interval.is_zero() {
            rt.spawn(compactor(Arc::downgrade(&store)));
        }
        Ok(store)
    }

    async fn submit(&self, op: writer::Op) -> Result<writer::Reply> {
        let (reply, rx) = oneshot::channel();
        let closed = || StoreError::Backend("store writer has stopped".into());
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        tx.send(writer::Request { op, reply })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn submit_kv(&self, op: writer::Op) -> Result<KeyValue> {
        match self.submit(op).await? {
            writer::Reply::Kv(kv) => Ok(kv),
            other => Err(StoreError::Backend(format!("unexpected reply {other:?}"))),
        }
    }

    /// Runs a read on the blocking pool: redb reads are synchronous and may touch disk.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(backend)?
    }
}

/// redb's settings for `opts`. Its cache also bounds what a repair after a crash
/// (which reads the whole file) keeps in memory; `repaired` is set when one runs.
fn builder(opts: &RedbOptions, repaired: &Arc<std::sync::atomic::AtomicBool>) -> redb::Builder {
    let mut builder = redb::Database::builder();
    if let Some(bytes) = opts.cache_size {
        builder.set_cache_size(bytes);
    }
    let flag = repaired.clone();
    builder.set_repair_callback(move |session| {
        if !flag.swap(true, Ordering::Relaxed) {
            tracing::warn!("store was not closed cleanly; checking and repairing it");
        }
        tracing::debug!(progress = session.progress(), "store repair");
    });
    builder
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit; joining it
        // means the file is closed (and can be reopened) once the last handle is gone.
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Revokes leases whose deadline passed. The writer re-checks the deadline, so a
/// keep-alive that lands in between wins.
async fn lease_timer(store: Weak<RedbStore>) {
    let every = match store.upgrade() {
        Some(s) => s.inner.opts.lease_check_interval.max(MIN_TICK),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<LeaseId> = {
            let leases = store.inner.leases.lock().expect("lease map poisoned");
            leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in expired {
            match store.submit(writer::Op::ExpireLease(id)).await {
                Ok(_) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "revoking expired lease failed"),
            }
        }
    }
}

/// Time-based compaction: samples the revision every interval and compacts to the
/// newest sample that is older than the retention window.
async fn compactor(store: Weak<RedbStore>) {
    let (every, keep) = match store.upgrade() {
        Some(s) => (
            s.inner.opts.compaction_interval,
            s.inner.opts.compaction_retention,
        ),
        None => return,
    };
    let mut samples: VecDeque<(Instant, Revision)> = VecDeque::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let now = Instant::now();
        samples.push_back((now, store.inner.revision.load(Ordering::Acquire)));
        let mut target = None;
        while let Some(&(at, rev)) = samples.front() {
            if now.duration_since(at) < keep {
                break;
            }
            target = Some(rev);
            samples.pop_front();
        }
        let Some(target) = target else { continue };
        if target <= store.inner.compacted.load(Ordering::Acquire) {
            continue;
        }
        match store.compact(target).await {
            Ok(()) | Err(StoreError::Compacted { .. }) => {
                tracing::info!(revision = target, "compacted store history");
            }
            Err(e) => tracing::warn!(revision = target, error = %e, "compaction failed"),
        }
    }
}

/// A list at `at` (which may be older than the snapshot's revision `cur`).
fn list_blocking(inner: &Inner, prefix: &str, opts: &ListOptions) -> Result<ListResult> {
    let txn = inner.db.begin_read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let cur = meta_get(&meta, META_REVISION)?;
    let compacted = meta_get(&meta, META_COMPACTED)?;
    let at = opts.revision.unwrap_or(cur);
    if at > cur {
        return Err(StoreError::FutureRevision(at));
    }
    if at < compacted {
        return Err(StoreError::Compacted {
            requested: at,
            compacted,
        });
    }
    let after = opts.start_after.as_deref().filter(|s| *s >= prefix);
    let wanted = |k: &str| k.starts_with(prefix) && after.is_none_or(|a| k > a);

    // Keys changed after `at`, mapped to the value they had at `at` (None: absent).
    // The first change after `at` carries that value as its `prev`.
    let mut undo: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
    if at < cur {
        let log = txn.open_table(LOG).map_err(backend)?;
        for entry in log.range((at + 1) as u64..).map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            let raw = split_event(v.value())?;
            if wanted(raw.key) && !undo.contains_key(raw.key) {
                undo.insert(raw.key.to_string(), raw.prev()?);
            }
        }
    }

    let kv = txn.open_table(KV).map_err(backend)?;
    let lower = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Included(prefix),
    };
    let mut current = kv
        .range::<&str>((lower, Bound::Unbounded))
        .map_err(backend)?;
    let mut current_done = false;
    let mut next_current = || -> Result<Option<KeyValue>> {
        if current_done {
            return Ok(None);
        }
        match current.next() {
            Some(entry) => {
                let (k, v) = entry.map_err(backend)?;
                if k.value().starts_with(prefix) {
                    return decode_kv(k.value(), v.value()).map(Some);
                }
                current_done = true;
                Ok(None)
            }
            None => {
                current_done = true;
                Ok(None)
            }
        }
    };

    // Merge the current keys with the undone ones, in key order, the undone winning.
    let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut kvs = Vec::new();
    let mut more = false;
    let mut undo = undo.into_iter().peekable();
    let mut a = next_current()?;
    loop {
        let item = match (&a, undo.peek()) {
            (None, None) => break,
            (Some(c), Some((k, _))) if c.key < *k => a.take().map(Some),
            (Some(c), Some((k, _))) if c.key == *k => {
                a = None;
                undo.next().map(|(_, v)| v)
            }
            (Some(_), None) => a.take().map(Some),
            _ => undo.next().map(|(_, v)| v),
        };
        if a.is_none() {
            a = next_current()?;
        }
        let Some(Some(kv)) = item else { continue };
        if kvs.len() == limit {
            more = true;
            break;
        }
        kvs.push(kv);
    }
    Ok(ListResult {
        kvs,
        revision: at,
        more,
    })
}

#[async_trait]
impl Store for RedbStore {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.revision.load(Ordering::Acquire))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            let v = kv.get(key.as_str()).map_err(backend)?;
            v.map(|v| decode_kv(&key, v.value())).transpose()
        })
        .await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let prefix = prefix.to_string();
        self.read(move |inner| list_blocking(inner, &prefix, &opts))
            .await
    }

    async fn create(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<KeyValue> {
        self.submit_kv(writer::Op::Create {
            key: key.to_string(),
            value,
            lease,
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue> {
        self.submit_kv(writer::Op::Update {
            key: key.to_string(),
            value,
            expected,
            lease,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        self.submit_kv(writer::Op::Delete {
            key: key.to_string(),
            expected,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before checking anything, so no change can fall between the log
        // replay and the live feed.
        let live = self.inner.events.subscribe();
        let compacted = self.inner.compacted.load(Ordering::Acquire);
        if after > self.inner.revision.load(Ordering::Acquire) {
            // The counter is set just after each commit, so a revision a reader has
            // already seen can be a moment ahead of it: ask the file before refusing.
            let cur = self
                .read(|inner| {
                    let txn = inner.db.begin_read().map_err(backend)?;
                    meta_get(&txn.open_table(META).map_err(backend)?, META_REVISION)
                })
                .await?;
            if after > cur {
                return Err(StoreError::FutureRevision(after));
            }
        }
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(watch::stream(
            Arc::downgrade(&self.inner),
            live,
            prefix.to_string(),
            after,
            self.inner.opts.progress_interval.max(MIN_TICK),
        ))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(writer::Op::Compact(revision)).await.map(|_| ())
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.inner.compacted.load(Ordering::Acquire))
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId> {
        match self.submit(writer::Op::Grant { ttl_seconds }).await? {
            writer::Reply::Lease(id) => Ok(id),
            other => Err(StoreError::Backend(format!("unexpected reply {other:?}"))),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut leases = self.inner.leases.lock().expect("lease map poisoned");
        let now = Instant::now();
        match leases.get_mut(&lease) {
            // Past its deadline the lease is as good as revoked (as in etcd), even if
            // the timer has not deleted its keys yet.
            Some(clock) if clock.deadline > now => {
                clock.deadline = now + clock.ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.submit(writer::Op::Revoke(lease)).await.map(|_| ())
    }
}
