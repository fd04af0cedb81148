//! The store conformance checks against the in-memory test store, so the API server's
//! tests run on a store that behaves as the real backends do. Leases are outside it
//! (the in-memory store does not expire them) and so is reopening (nothing persists).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bosun_store::conformance;
use common::MemStore;

fn store() -> Arc<MemStore> {
    Arc::new(MemStore::new(Duration::from_millis(200)))
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            conformance::$name(store()).await;
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
    concurrent_writers,
);
