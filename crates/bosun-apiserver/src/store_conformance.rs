//! The store conformance suite through the API server's own `Store` wrappers, each over
//! the embedded backend: encryption at rest (encrypting the suite's keys, so every value
//! goes through the cipher and back) and the metrics wrapper. Whatever a backend promises
//! must still hold once it is wrapped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bosun_store::conformance::{self, Harness};
use bosun_store::{RedbOptions, RedbStore, Store};
use prometheus_client::registry::Registry;

use crate::encryption::{EncryptedStore, EncryptionConfiguration};
use crate::store_metrics::{MeteredStore, StoreMetrics};

#[derive(Clone, Copy)]
enum Wrap {
    Encrypted,
    Metered,
    /// As the API server stacks them: encryption over metrics over the backend.
    Both,
}

struct Wrapped {
    dir: tempfile::TempDir,
    wrap: Wrap,
    /// One key for every open, as the configuration file keeps it across restarts.
    keys: EncryptionConfiguration,
}

impl Wrapped {
    fn new(wrap: Wrap) -> Self {
        Wrapped {
            dir: tempfile::tempdir().expect("temp dir"),
            wrap,
            keys: EncryptionConfiguration::generate().expect("key"),
        }
    }
}

fn metered(inner: Arc<dyn Store>) -> Arc<dyn Store> {
    let metrics = StoreMetrics::new(&mut Registry::default(), None);
    Arc::new(MeteredStore { inner, metrics })
}

fn encrypted(inner: Arc<dyn Store>, keys: &EncryptionConfiguration) -> Arc<dyn Store> {
    let store = EncryptedStore::encrypting_prefix(inner, keys, "/conformance/");
    Arc::new(store.expect("encrypted store"))
}

#[async_trait]
impl Harness for Wrapped {
    async fn open(&self, name: &str) -> Arc<dyn Store> {
        let opts = RedbOptions {
            progress_interval: Duration::from_millis(200),
            lease_check_interval: Duration::from_millis(100),
            // Small, so slow watchers really fall off the live feed.
            watch_buffer: 8,
            ..RedbOptions::default()
        };
        let path = self.dir.path().join(format!("{name}.redb"));
        let backend: Arc<dyn Store> = RedbStore::open(&path, opts).expect("open redb");
        match self.wrap {
            Wrap::Encrypted => encrypted(backend, &self.keys),
            Wrap::Metered => metered(backend),
            Wrap::Both => encrypted(metered(backend), &self.keys),
        }
    }
}

macro_rules! checks {
    ($wrap:ident: $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let h = Wrapped::new(Wrap::$wrap);
            conformance::$name(h.open(stringify!($name)).await).await;
        }
    )*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn reopen_keeps_data() {
            conformance::reopen_keeps_data(&Wrapped::new(Wrap::$wrap)).await;
        }
    };
}

macro_rules! suite {
    ($($module:ident => $wrap:ident),* $(,)?) => {$(
        mod $module {
            use super::*;
            checks!(
                $wrap: crud_and_preconditions,
                revisions_increase_by_one,
                list_at_revision,
                paging,
                watch_replay_and_live,
                watch_prefix_isolation,
                watch_slow_consumer,
                watch_progress,
                compaction,
                lease_expiry,
                lease_revoke,
                concurrent_writers,
            );
        }
    )*};
}

suite!(
    encrypted => Encrypted,
    metered => Metered,
    encrypted_over_metered => Both,
);

/// The suite's values really are ciphertext in the backend, so the checks above went
/// through the cipher.
#[tokio::test]
async fn suite_values_are_encrypted_below() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw: Arc<dyn Store> =
        RedbStore::open(&dir.path().join("s.redb"), RedbOptions::default()).expect("open redb");
    let enc = encrypted(
        raw.clone(),
        &EncryptionConfiguration::generate().expect("key"),
    );
    enc.create("/conformance/x", bytes::Bytes::from_static(b"plain"), None)
        .await
        .expect("create");
    let stored = raw
        .get("/conformance/x")
        .await
        .expect("get")
        .expect("stored");
    assert!(stored.value.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    let read = enc.get("/conformance/x").await.expect("get").expect("read");
    assert_eq!(read.value, bytes::Bytes::from_static(b"plain"));
}
