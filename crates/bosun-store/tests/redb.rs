//! Behaviour specific to the embedded backend: automatic compaction, leases across a
//! restart, watch streams that fall behind compaction, and closing.

use std::sync::Arc;
use std::time::Duration;

use bosun_store::conformance::next_event;
use bosun_store::{ListOptions, RedbOptions, RedbStore, Store, StoreError, WatchItem};
use bytes::Bytes;
use futures::StreamExt;

fn opts() -> RedbOptions {
    RedbOptions {
        progress_interval: Duration::from_millis(200),
        lease_check_interval: Duration::from_millis(100),
        watch_buffer: 4,
        ..RedbOptions::default()
    }
}

fn v(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_the_future_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(&dir.path().join("db"), opts()).unwrap();
    let now = s.current_revision().await.unwrap();
    assert_eq!(now, 1, "an empty store is at revision 1");
    assert!(matches!(
        s.watch("/", now + 1).await.err(),
        Some(StoreError::FutureRevision(r)) if r == now + 1
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watch_past_compaction_fails_with_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(&dir.path().join("db"), opts()).unwrap();
    let first = s.create("/lag/first", v("x"), None).await.unwrap();
    let mut w = s.watch("/lag/", first.mod_revision - 1).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv, first);
    // Many separate commits overflow the watch's live buffer; then the history it
    // would have to catch up from is compacted away.
    for i in 0..50 {
        s.create(&format!("/lag/{i}"), v("x"), None).await.unwrap();
    }
    s.compact(s.current_revision().await.unwrap())
        .await
        .unwrap();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
        {
            Some(Ok(WatchItem::Progress(_))) => {}
            Some(Ok(WatchItem::Event(e))) => panic!("unexpected event {e:?}"),
            Some(Err(e)) => break e,
            None => panic!("watch ended without an error"),
        }
    };
    assert!(
        matches!(err, StoreError::Compacted { requested, .. } if requested == first.mod_revision)
    );
    assert!(w.next().await.is_none(), "a failed watch ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_capped_and_compaction_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let capped = RedbOptions {
        max_log_revisions: 40,
        ..opts()
    };
    let s = RedbStore::open(&path, capped.clone()).unwrap();
    let mut first = None;
    for i in 0..200 {
        let kv = s.update("/cap/k", v(&i.to_string()), None, None).await;
        let kv = match kv {
            Err(StoreError::NotFound(_)) => s.create("/cap/k", v("0"), None).await.unwrap(),
            other => other.unwrap(),
        };
        first.get_or_insert(kv.mod_revision);
    }
    let now = s.current_revision().await.unwrap();
    let compacted = s.compacted_revision().await.unwrap();
    assert!(
        compacted >= now - 45,
        "log kept {} revisions",
        now - compacted
    );
    assert!(compacted <= now - 40);
    assert!(matches!(
        s.watch("/cap/", first.unwrap()).await.err(),
        Some(StoreError::Compacted { .. })
    ));
    let mut w = s.watch("/cap/", compacted).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv.mod_revision, compacted + 1);
    drop(w);
    drop(s);

    let s = RedbStore::open(&path, capped).unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), compacted);
    assert_eq!(s.current_revision().await.unwrap(), now);
    assert!(matches!(
        s.list(
            "/cap/",
            ListOptions {
                revision: Some(compacted - 1),
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Compacted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_based_compaction_drops_old_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(
        &dir.path().join("db"),
        RedbOptions {
            compaction_interval: Duration::from_millis(100),
            compaction_retention: Duration::from_millis(300),
            ..opts()
        },
    )
    .unwrap();
    let old = s.create("/time/a", v("1"), None).await.unwrap();
    s.update("/time/a", v("2"), None, None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.compacted_revision().await.unwrap() < old.mod_revision {
        assert!(
            tokio::time::Instant::now() < deadline,
            "history was never compacted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Recent history is kept: a write now is still watchable for a while.
    let recent = s.current_revision().await.unwrap();
    let newer = s.create("/time/b", v("1"), None).await.unwrap();
    let mut w = s.watch("/time/", recent).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv, newer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_get_a_fresh_ttl_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = RedbStore::open(&path, opts()).unwrap();
    let lease = s.grant_lease(2).await.unwrap();
    let kv = s.create("/lease/k", v("x"), Some(lease)).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let s = RedbStore::open(&path, opts()).unwrap();
    assert_eq!(s.get("/lease/k").await.unwrap(), Some(kv.clone()));
    s.keep_alive(lease).await.unwrap();
    let mut w = s.watch("/lease/", kv.mod_revision).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(e.kv.key, kv.key);
    assert_eq!(s.get("/lease/k").await.unwrap(), None);
    // Lease ids are never reused.
    assert!(s.grant_lease(5).await.unwrap() > lease);
    assert!(matches!(
        s.grant_lease(i64::MAX).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_is_exclusive_and_close_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = RedbStore::open(&path, opts()).unwrap();
    let err = RedbStore::open(&path, opts())
        .err()
        .expect("second open must fail");
    assert!(
        err.to_string().contains("db"),
        "error names the file: {err}"
    );
    let mut w = s.watch("/", 1).await.unwrap();
    drop(s);
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match w.next().await {
                Some(Ok(WatchItem::Progress(_))) => {}
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(end, Some(Err(StoreError::Backend(_)))),
        "got {end:?}"
    );
    // The file is free again.
    let s = RedbStore::open(&path, opts()).unwrap();
    assert_eq!(s.current_revision().await.unwrap(), 1);
}

#[test]
fn open_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = RedbStore::open(&dir.path().join("db"), RedbOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("Tokio runtime"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_as_dyn_store() {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Store> = RedbStore::open(&dir.path().join("db"), opts()).unwrap();
    s.create("/dyn/a", v("1"), None).await.unwrap();
    assert_eq!(
        s.list("/dyn/", ListOptions::default())
            .await
            .unwrap()
            .kvs
            .len(),
        1
    );
}

/// With history capped, rewriting the same keys over and over must not grow the file
/// without bound: compaction frees log pages and redb reuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_size_stays_bounded_under_churn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = RedbStore::open(
        &path,
        RedbOptions {
            max_log_revisions: 200,
            ..opts()
        },
    )
    .unwrap();
    let value = Bytes::from(vec![b'x'; 2048]);
    let churn = |rounds: usize| {
        let s = s.clone();
        let value = value.clone();
        async move {
            for _ in 0..rounds {
                let mut tasks = Vec::new();
                for k in 0..10 {
                    let s = s.clone();
                    let value = value.clone();
                    tasks.push(tokio::spawn(async move {
                        let key = format!("/churn/{k}");
                        match s.update(&key, value.clone(), None, None).await {
                            Err(StoreError::NotFound(_)) => {
                                s.create(&key, value, None).await.unwrap();
                            }
                            other => {
                                other.unwrap();
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
        }
    };
    churn(200).await;
    let warm = std::fs::metadata(&path).unwrap().len();
    churn(600).await;
    let after = std::fs::metadata(&path).unwrap().len();
    eprintln!("file size after 2000 writes: {warm}, after 8000: {after}");
    assert!(after <= warm * 2, "file grew from {warm} to {after} bytes");
}
