//! The store behind the API server: a revisioned key-value map with etcd's semantics.
//!
//! Every write bumps one global revision; that revision is what the API calls
//! `resourceVersion`. Reads can be served at a past revision, writes can be made
//! conditional on a key's `mod_revision`, and watches replay every change after a
//! revision (or fail with [`StoreError::Compacted`] when that history is gone).
//!
//! Backends: [`RedbStore`] (embedded, one file) and [`EtcdStore`] (an etcd v3
//! cluster). The `conformance` feature exposes the backend-independent test suite
//! (`conformance::run_all`) that every backend must pass; `etcd-cluster` starts real
//! etcd clusters for tests.

use std::pin::Pin;

mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "etcd-cluster")]
pub mod etcd_cluster;
pub mod etcd_store;
pub mod redb_store;

pub use etcd_store::{EtcdOptions, EtcdStore, EtcdTls};
pub use redb_store::{DEFAULT_CACHE_SIZE, RedbOptions, RedbStore};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// A store revision. Starts at 1 for an empty store; strictly increases with every write.
pub type Revision = i64;
/// A lease handle; keys attached to a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this key (its current incarnation).
    pub create_revision: Revision,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For `Put`, the new value. For `Delete`, the last value the key had, with
    /// `mod_revision` set to the revision of the deletion.
    pub kv: KeyValue,
    /// The value before this change, when there was one.
    pub prev: Option<KeyValue>,
}

/// What a watch stream yields: changes in revision order, and from time to time a
/// progress notice saying every change up to that revision has been delivered
/// (the API server turns these into bookmarks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    Event(WatchEvent),
    Progress(Revision),
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchItem, StoreError>> + Send>>;

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Read as of this revision; `None` reads the latest.
    pub revision: Option<Revision>,
    /// At most this many keys; `None` means all.
    pub limit: Option<usize>,
    /// Start strictly after this key (for paging with `continue` tokens).
    pub start_after: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    /// The revision this list was read at.
    pub revision: Revision,
    /// True when `limit` cut the list short.
    pub more: bool,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// A conditional write found another `mod_revision` than it expected.
    #[error("key {key} was modified (current revision {current})")]
    Conflict { key: String, current: Revision },
    /// The requested revision is older than the oldest one still kept.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The requested revision is newer than the store's.
    #[error("revision {0} is in the future")]
    FutureRevision(Revision),
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// The request itself is malformed (for example an empty key).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("storage error: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The one store interface; the embedded (redb) and etcd backends both implement it
/// and run the same conformance tests.
///
/// Every write is durable once its future resolves: an acknowledged write survives
/// `kill -9` of the process.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's current revision.
    async fn current_revision(&self) -> Result<Revision>;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys starting with `prefix`, in key order. `limit: Some(0)` means no limit.
    /// `Compacted` / `FutureRevision` when `opts.revision` is outside the kept history.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;

    /// Creates `key`; fails with `AlreadyExists` if it is present, `LeaseNotFound` if
    /// `lease` is not a live lease, `InvalidArgument` for an empty key.
    async fn create(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<KeyValue>;

    /// Replaces `key`'s value. With `expected` set, only if the key's current
    /// `mod_revision` equals it (`Conflict` otherwise). `NotFound` if absent. The key
    /// is attached to `lease` afterwards (`None` detaches it from any lease).
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue>;

    /// Deletes `key`, optionally only at `expected` mod_revision; returns the
    /// deleted value with `mod_revision` set to the deletion's revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue>;

    /// Changes to keys under `prefix` with revision strictly greater than `after`, in
    /// revision order, each exactly once. Fails with `Compacted` if `after` is older
    /// than [`Store::compacted_revision`] and `FutureRevision` if it is newer than the
    /// current revision. A stream that falls so far behind that the history it needs is
    /// compacted yields `Err(Compacted)` and ends; so does a closed store (`Backend`).
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Forgets the changes up to and including `revision`: lists at `revision` or
    /// later and watches after it keep working. `Compacted` if `revision` is not newer
    /// than the compacted revision, `FutureRevision` if it is newer than the current one.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The oldest revision a watch or list may still ask for (0 until a compaction).
    async fn compacted_revision(&self) -> Result<Revision>;

    /// A new lease that expires `ttl_seconds` after its last keep-alive. TTLs under
    /// one second are raised to one second (etcd also enforces a minimum); TTLs over
    /// etcd's maximum (9e9 s) are `InvalidArgument`.
    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId>;
    /// Restarts the lease's TTL. `LeaseNotFound` once it has expired or was revoked.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Deletes the lease and every key attached to it (each deletion is a change that
    /// watches see). `LeaseNotFound` if there is no such lease.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
}
