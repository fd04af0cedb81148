//! The single writer: group commit.
//!
//! Every write is a request on one queue. The writer thread takes everything queued,
//! applies the requests in order inside one redb transaction (each gets its own
//! precondition checks and, if it writes, its own revision), commits once with
//! `Durability::Immediate`, and only then publishes the changes and answers. A request
//! that fails its precondition is answered with its error and leaves no trace; a
//! storage failure aborts the whole transaction and every request in it fails.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::{
    Inner, KV, LEASE_KEYS, LEASES, LOG, LeaseClock, META, META_COMPACTED, META_NEXT_LEASE,
    META_REVISION, backend,
};
use crate::codec::{decode_kv, encode_event, encode_kv};
use crate::{EventKind, KeyValue, LeaseId, Result, Revision, StoreError, WatchEvent};

#[derive(Debug)]
pub(super) enum Op {
    Create {
        key: String,
        value: Bytes,
        lease: Option<LeaseId>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Option<Revision>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact(Revision),
    Grant {
        ttl_seconds: i64,
    },
    Revoke(LeaseId),
    /// Revoke, but only if the lease's deadline has (still) passed.
    ExpireLease(LeaseId),
}

#[derive(Debug)]
pub(super) enum Reply {
    Kv(KeyValue),
    Lease(LeaseId),
    Done,
}

pub(super) struct Request {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Reply>>,
}

/// Why a request failed: its own fault (answered, batch goes on) or the storage's
/// (the batch is aborted).
enum Fail {
    Op(StoreError),
    Storage(String),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Op(e)
    }
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Storage(e.to_string())
            }
        }
    )*};
}
storage_errors!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Smallest lease TTL; shorter requests are raised to it, as etcd does.
const MIN_LEASE_TTL: i64 = 1;
/// Largest lease TTL, etcd's: keeps deadlines far from `Instant` overflow.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

pub(super) fn spawn(
    inner: Arc<Inner>,
    rx: mpsc::Receiver<Request>,
    revision: Revision,
    compacted: Revision,
) -> Result<std::thread::JoinHandle<()>> {
    let mut w = Writer {
        inner,
        rx,
        revision,
        compacted,
    };
    std::thread::Builder::new()
        .name("bosun-store-writer".into())
        .spawn(move || w.run())
        .map_err(backend)
}

struct Writer {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<Request>,
    /// Committed revision and compaction point (the writer is their only author).
    revision: Revision,
    compacted: Revision,
}

impl Writer {
    fn run(&mut self) {
        let max = self.inner.opts.max_batch.max(1);
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < max {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
        let mut results = Vec::with_capacity(ops.len());
        let outcome = (|| -> std::result::Result<Applied, Fail> {
            let mut txn = self.inner.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let mut tx = Txn::open(&txn, self.revision, self.compacted, &self.inner)?;
            for op in ops {
                results.push(match tx.apply(op) {
                    Ok(r) => Ok(r),
                    Err(Fail::Op(e)) => Err(e),
                    Err(f) => return Err(f),
                });
            }
            tx.cap_log()?;
            tx.finish()?;
            // The tables borrow the transaction: close them before committing.
            let applied = tx.close();
            txn.commit()?;
            Ok(applied)
        })();
        match outcome {
            Ok(applied) => {
                self.revision = applied.revision;
                self.compacted = applied.compacted;
                self.inner
                    .revision
                    .store(applied.revision, Ordering::Release);
                self.inner
                    .compacted
                    .store(applied.compacted, Ordering::Release);
                {
                    let mut leases = self.inner.leases.lock().expect("lease map poisoned");
                    let now = Instant::now();
                    for (id, ttl) in applied.granted {
                        leases.insert(
                            id,
                            LeaseClock {
                                ttl,
                                deadline: now + ttl,
                            },
                        );
                    }
                    for id in applied.revoked {
                        leases.remove(&id);
                    }
                }
                if !applied.events.is_empty() {
                    // No receivers is fine: nobody is watching.
                    let _ = self.inner.events.send(Arc::new(applied.events));
                }
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(f) => {
                let msg = match f {
                    Fail::Op(e) => e.to_string(),
                    Fail::Storage(s) => s,
                };
                tracing::error!(error = %msg, "store commit failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(msg.clone())));
                }
            }
        }
    }
}

/// What a committed batch changed, published after the commit.
#[derive(Default)]
struct Applied {
    revision: Revision,
    compacted: Revision,
    events: Vec<WatchEvent>,
    granted: Vec<(LeaseId, Duration)>,
    revoked: Vec<LeaseId>,
}

struct Txn<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    log: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    leases: Table<'t, u64, i64>,
    lease_keys: Table<'t, (u64, &'static str), ()>,
    applied: Applied,
    inner: &'t Inner,
}

impl<'t> Txn<'t> {
    fn open(
        txn: &'t WriteTransaction,
        revision: Revision,
        compacted: Revision,
        inner: &'t Inner,
    ) -> std::result::Result<Self, Fail> {
        Ok(Txn {
            kv: txn.open_table(KV)?,
            log: txn.open_table(LOG)?,
            meta: txn.open_table(META)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            applied: Applied {
                revision,
                compacted,
                ..Applied::default()
            },
            inner,
        })
    }

    fn apply(&mut self, op: Op) -> std::result::Result<Reply, Fail> {
        match op {
            Op::Create { key, value, lease } => {
                check_key(&key)?;
                if self.kv.get(key.as_str())?.is_some() {
                    return Err(StoreError::AlreadyExists(key).into());
                }
                self.check_lease(lease)?;
                let rev = self.applied.revision + 1;
                let kv = KeyValue {
                    key,
                    value,
                    create_revision: rev,
                    mod_revision: rev,
                    lease,
                };
                self.put(None, kv).map(Reply::Kv)
            }
            Op::Update {
                key,
                value,
                expected,
                lease,
            } => {
                check_key(&key)?;
                let prev = self.current(&key)?.ok_or(StoreError::NotFound(key))?;
                check_expected(&prev, expected)?;
                self.check_lease(lease)?;
                let kv = KeyValue {
                    key: prev.key.clone(),
                    value,
                    create_revision: prev.create_revision,
                    mod_revision: self.applied.revision + 1,
                    lease,
                };
                self.put(Some(prev), kv).map(Reply::Kv)
            }
            Op::Delete { key, expected } => {
                check_key(&key)?;
                let prev = self.current(&key)?.ok_or(StoreError::NotFound(key))?;
                check_expected(&prev, expected)?;
                self.remove(prev).map(Reply::Kv)
            }
            Op::Compact(rev) => {
                if rev > self.applied.revision {
                    return Err(StoreError::FutureRevision(rev).into());
                }
                if rev <= self.applied.compacted {
                    return Err(StoreError::Compacted {
                        requested: rev,
                        compacted: self.applied.compacted,
                    }
                    .into());
                }
                self.compact_to(rev)?;
                Ok(Reply::Done)
            }
            Op::Grant { ttl_seconds } => {
                if ttl_seconds > MAX_LEASE_TTL {
                    return Err(StoreError::InvalidArgument(format!(
                        "lease TTL {ttl_seconds}s is over the maximum of {MAX_LEASE_TTL}s"
                    ))
                    .into());
                }
                let ttl = ttl_seconds.max(MIN_LEASE_TTL);
                let id = self.meta.get(META_NEXT_LEASE)?.map_or(1, |v| v.value());
                self.meta.insert(META_NEXT_LEASE, id + 1)?;
                self.leases.insert(id, ttl)?;
                let id = id as LeaseId;
                self.applied
                    .granted
                    .push((id, Duration::from_secs(ttl as u64)));
                Ok(Reply::Lease(id))
            }
            Op::Revoke(id) => self.revoke(id),
            Op::ExpireLease(id) => {
                if !self.inner.lease_expired(id, Instant::now()) {
                    return Ok(Reply::Done);
                }
                self.revoke(id)
            }
        }
    }

    fn current(&self, key: &str) -> std::result::Result<Option<KeyValue>, Fail> {
        match self.kv.get(key)? {
            Some(v) => Ok(Some(decode_kv(key, v.value()).map_err(|e| {
                // Unreadable data is a storage problem, not the request's.
                Fail::Storage(e.to_string())
            })?)),
            None => Ok(None),
        }
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> std::result::Result<(), Fail> {
        match lease {
            Some(id) if id <= 0 || self.leases.get(id as u64)?.is_none() => {
                Err(StoreError::LeaseNotFound(id).into())
            }
            _ => Ok(()),
        }
    }

    fn next_revision(&mut self) -> Revision {
        self.applied.revision += 1;
        self.applied.revision
    }

    fn put(&mut self, prev: Option<KeyValue>, kv: KeyValue) -> std::result::Result<KeyValue, Fail> {
        let rev = self.next_revision();
        debug_assert_eq!(rev, kv.mod_revision);
        self.kv.insert(kv.key.as_str(), encode_kv(&kv).as_slice())?;
        let old_lease = prev.as_ref().and_then(|p| p.lease);
        if old_lease != kv.lease {
            if let Some(l) = old_lease {
                self.lease_keys.remove((l as u64, kv.key.as_str()))?;
            }
            if let Some(l) = kv.lease {
                self.lease_keys.insert((l as u64, kv.key.as_str()), ())?;
            }
        }
        self.log.insert(
            rev as u64,
            encode_event(&kv.key, prev.as_ref(), Some(&kv)).as_slice(),
        )?;
        self.applied.events.push(WatchEvent {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev,
        });
        Ok(kv)
    }

    fn remove(&mut self, prev: KeyValue) -> std::result::Result<KeyValue, Fail> {
        let rev = self.next_revision();
        self.kv.remove(prev.key.as_str())?;
        if let Some(l) = prev.lease {
            self.lease_keys.remove((l as u64, prev.key.as_str()))?;
        }
        self.log.insert(
            rev as u64,
            encode_event(&prev.key, Some(&prev), None).as_slice(),
        )?;
        let deleted = KeyValue {
            mod_revision: rev,
            ..prev.clone()
        };
        self.applied.events.push(WatchEvent {
            kind: EventKind::Delete,
            kv: deleted.clone(),
            prev: Some(prev),
        });
        Ok(deleted)
    }

    /// Deletes the lease's keys (each deletion its own revision) and then the lease.
    fn revoke(&mut self, id: LeaseId) -> std::result::Result<Reply, Fail> {
        if id <= 0 || self.leases.get(id as u64)?.is_none() {
            return Err(StoreError::LeaseNotFound(id).into());
        }
        let lid = id as u64;
        let mut keys = Vec::new();
        for entry in self.lease_keys.range((lid, "")..(lid + 1, ""))? {
            let (k, _) = entry?;
            keys.push(k.value().1.to_string());
        }
        for key in keys {
            if let Some(prev) = self.current(&key)? {
                self.remove(prev)?;
            }
        }
        self.leases.remove(lid)?;
        self.applied.revoked.push(id);
        Ok(Reply::Done)
    }

    fn compact_to(&mut self, rev: Revision) -> std::result::Result<(), Fail> {
        self.log.retain_in(..=rev as u64, |_, _| false)?;
        self.applied.compacted = rev;
        Ok(())
    }

    /// Keeps the log within `max_log_revisions`. It is trimmed only once it is an
    /// eighth over the cap, so the trimming happens in chunks rather than on every write.
    fn cap_log(&mut self) -> std::result::Result<(), Fail> {
        let cap = self.inner.opts.max_log_revisions as i64;
        if cap == 0 {
            return Ok(());
        }
        let kept = self.applied.revision - self.applied.compacted;
        if kept > cap + (cap / 8).max(1) {
            self.compact_to(self.applied.revision - cap)?;
        }
        Ok(())
    }

    fn close(self) -> Applied {
        self.applied
    }

    fn finish(&mut self) -> std::result::Result<(), Fail> {
        self.meta
            .insert(META_REVISION, self.applied.revision as u64)?;
        self.meta
            .insert(META_COMPACTED, self.applied.compacted as u64)?;
        Ok(())
    }
}

fn check_key(key: &str) -> std::result::Result<(), Fail> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("key must not be empty".into()).into());
    }
    Ok(())
}

fn check_expected(kv: &KeyValue, expected: Option<Revision>) -> std::result::Result<(), Fail> {
    match expected {
        Some(e) if e != kv.mod_revision => Err(StoreError::Conflict {
            key: kv.key.clone(),
            current: kv.mod_revision,
        }
        .into()),
        _ => Ok(()),
    }
}
