//! The store behind the API server: a revisioned key-value map with etcd's semantics.
//!
//! Every write bumps one global revision; that revision is what the API calls
//! `resourceVersion`. Reads can be served at a past revision, writes can be made
//! conditional on a key's `mod_revision`, and watches replay every change after a
//! revision (or fail with [`StoreError::Compacted`] when that history is gone).

use std::pin::Pin;

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
    Compacted { requested: Revision, compacted: Revision },
    /// The requested revision is newer than the store's.
    #[error("revision {0} is in the future")]
    FutureRevision(Revision),
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
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

    /// Keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;

    /// Creates `key`; fails with `AlreadyExists` if it is present.
    async fn create(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<KeyValue>;

    /// Replaces `key`'s value. With `expected` set, only if the key's current
    /// `mod_revision` equals it (`Conflict` otherwise). `NotFound` if absent.
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

    /// Changes to keys under `prefix` with revision strictly greater than `after`.
    /// Fails with `Compacted` if `after` is older than the retained history.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Forgets history up to and including `revision`.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The oldest revision a watch or list may still ask for.
    async fn compacted_revision(&self) -> Result<Revision>;

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId>;
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
}
