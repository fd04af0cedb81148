//! The conformance suite against the embedded (redb) backend, one test per check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bosun_store::conformance::{self, Harness};
use bosun_store::{RedbOptions, RedbStore, Store};

struct Redb {
    dir: tempfile::TempDir,
}

impl Redb {
    fn new() -> Self {
        Redb {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait]
impl Harness for Redb {
    async fn open(&self, name: &str) -> Arc<dyn Store> {
        let opts = RedbOptions {
            progress_interval: Duration::from_millis(200),
            lease_check_interval: Duration::from_millis(100),
            // Small, so slow watchers really fall off the live feed.
            watch_buffer: 8,
            ..RedbOptions::default()
        };
        RedbStore::open(&self.dir.path().join(format!("{name}.redb")), opts).unwrap()
    }
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let h = Redb::new();
            conformance::$name(h.open(stringify!($name)).await).await;
        }
    )*};
}

checks!(
    crud_and_preconditions,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data() {
    conformance::reopen_keeps_data(&Redb::new()).await;
}

/// The entry point other backends use: every check in one sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_sequence() {
    conformance::run_all(&Redb::new()).await;
}
