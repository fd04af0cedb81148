//! The behaviour every [`Store`] backend must show, as reusable async tests.
//!
//! A backend's test suite implements [`Harness`] and calls [`run_all`] (or the single
//! checks, to get one test per check). The checks panic on failure. They only assume
//! what the trait documents, use their own key prefix, and measure revisions relative
//! to what they observe, so they also work on a store shared with other data.
//!
//! Timing assumptions: a lease of one second is deleted within ten seconds of its
//! expiry, and a quiet watch yields `Progress` within fifteen seconds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::{
    EventKind, KeyValue, ListOptions, Revision, Store, StoreError, WatchEvent, WatchItem,
    WatchStream,
};

/// How a backend's tests hand stores to the checks.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens the store called `name`: empty the first time, and with the same data when
    /// opened again after every handle from the previous open was dropped.
    async fn open(&self, name: &str) -> Arc<dyn Store>;
}

/// Runs every check, each on its own store.
pub async fn run_all(h: &dyn Harness) {
    crud_and_preconditions(h.open("crud").await).await;
    revisions_increase_by_one(h.open("revisions").await).await;
    list_at_revision(h.open("list-at").await).await;
    paging(h.open("paging").await).await;
    watch_replay_and_live(h.open("watch").await).await;
    watch_prefix_isolation(h.open("watch-prefix").await).await;
    watch_slow_consumer(h.open("watch-slow").await).await;
    watch_progress(h.open("watch-progress").await).await;
    compaction(h.open("compaction").await).await;
    lease_expiry(h.open("lease-expiry").await).await;
    lease_revoke(h.open("lease-revoke").await).await;
    concurrent_writers(h.open("concurrent").await).await;
    reopen_keeps_data(h).await;
}

const WAIT: Duration = Duration::from_secs(10);

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

/// The next item of a watch, failing the check on error, end, or ten quiet seconds.
pub async fn next_item(w: &mut WatchStream) -> WatchItem {
    match tokio::time::timeout(WAIT, w.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch item within {WAIT:?}"),
    }
}

/// The next change of a watch, skipping progress notices.
pub async fn next_event(w: &mut WatchStream) -> WatchEvent {
    loop {
        if let WatchItem::Event(e) = next_item(w).await {
            return e;
        }
    }
}

/// Asserts that no change arrives for `quiet` (progress notices are fine).
async fn assert_no_event(w: &mut WatchStream, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Err(_) => return,
            Ok(Some(Ok(WatchItem::Progress(_)))) => {}
            Ok(other) => panic!("expected no change, got {other:?}"),
        }
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

pub async fn crud_and_preconditions(s: Arc<dyn Store>) {
    let p = "/conformance/crud/";
    let k = format!("{p}a");
    let start = s.current_revision().await.unwrap();
    assert!(start >= 1, "a store starts at revision 1");
    assert_eq!(s.get(&k).await.unwrap(), None);

    let created = s.create(&k, b("v1"), None).await.unwrap();
    assert!(created.mod_revision > start);
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(created.value, b("v1"));
    assert_eq!(created.lease, None);
    assert_eq!(s.current_revision().await.unwrap(), created.mod_revision);
    assert_eq!(s.get(&k).await.unwrap(), Some(created.clone()));

    // Failed writes change nothing, not even the revision.
    let rev = created.mod_revision;
    assert_eq!(
        s.create(&k, b("again"), None).await,
        Err(StoreError::AlreadyExists(k.clone()))
    );
    assert_eq!(
        s.update(&k, b("x"), Some(rev - 1), None).await,
        Err(StoreError::Conflict {
            key: k.clone(),
            current: rev
        })
    );
    assert_eq!(
        s.delete(&k, Some(rev + 100)).await,
        Err(StoreError::Conflict {
            key: k.clone(),
            current: rev
        })
    );
    let missing = format!("{p}missing");
    assert_eq!(
        s.update(&missing, b("x"), None, None).await,
        Err(StoreError::NotFound(missing.clone()))
    );
    assert_eq!(
        s.delete(&missing, None).await,
        Err(StoreError::NotFound(missing.clone()))
    );
    assert!(matches!(
        s.create("", b("x"), None).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(s.current_revision().await.unwrap(), rev);
    assert_eq!(s.get(&k).await.unwrap(), Some(created.clone()));

    let v2 = s.update(&k, b("v2"), Some(rev), None).await.unwrap();
    assert_eq!(v2.create_revision, created.create_revision);
    assert_eq!(v2.mod_revision, rev + 1);
    assert_eq!(v2.value, b("v2"));
    let v3 = s.update(&k, b("v3"), None, None).await.unwrap();
    assert_eq!(v3.mod_revision, rev + 2);
    assert_eq!(s.get(&k).await.unwrap(), Some(v3.clone()));

    let deleted = s.delete(&k, Some(v3.mod_revision)).await.unwrap();
    assert_eq!(deleted.mod_revision, rev + 3);
    assert_eq!(deleted.value, b("v3"));
    assert_eq!(deleted.create_revision, created.create_revision);
    assert_eq!(s.current_revision().await.unwrap(), rev + 3);
    assert_eq!(s.get(&k).await.unwrap(), None);

    // A new incarnation gets a new create_revision.
    let again = s.create(&k, b("v4"), None).await.unwrap();
    assert_eq!(again.create_revision, rev + 4);
    s.delete(&k, None).await.unwrap();
}

pub async fn revisions_increase_by_one(s: Arc<dyn Store>) {
    let p = "/conformance/revisions/";
    let mut last = s.current_revision().await.unwrap();
    for i in 0..20 {
        let kv = s.create(&format!("{p}{i:02}"), b("x"), None).await.unwrap();
        assert_eq!(
            kv.mod_revision,
            last + 1,
            "each write bumps the revision by one"
        );
        last = kv.mod_revision;
    }
    let kv = s
        .update(&format!("{p}00"), b("y"), None, None)
        .await
        .unwrap();
    assert_eq!(kv.mod_revision, last + 1);
    let kv = s.delete(&format!("{p}01"), None).await.unwrap();
    assert_eq!(kv.mod_revision, last + 2);
    assert_eq!(s.current_revision().await.unwrap(), last + 2);
}

pub async fn list_at_revision(s: Arc<dyn Store>) {
    let p = "/conformance/list/";
    s.create("/conformance/lisu", b("outside"), None)
        .await
        .unwrap();
    let a = s.create(&format!("{p}a"), b("a1"), None).await.unwrap();
    let b1 = s.create(&format!("{p}b"), b("b1"), None).await.unwrap();
    let c = s.create(&format!("{p}c"), b("c1"), None).await.unwrap();
    let r1 = s.current_revision().await.unwrap();

    let b2 = s
        .update(&format!("{p}b"), b("b2"), None, None)
        .await
        .unwrap();
    s.delete(&format!("{p}c"), None).await.unwrap();
    let d = s.create(&format!("{p}d"), b("d1"), None).await.unwrap();
    s.delete(&format!("{p}a"), None).await.unwrap();
    let a2 = s.create(&format!("{p}a"), b("a2"), None).await.unwrap();
    let now = s.current_revision().await.unwrap();

    let latest = s.list(p, ListOptions::default()).await.unwrap();
    assert_eq!(latest.revision, now);
    assert!(!latest.more);
    assert_eq!(latest.kvs, vec![a2, b2.clone(), d.clone()]);

    let old = s
        .list(
            p,
            ListOptions {
                revision: Some(r1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(old.revision, r1);
    assert_eq!(old.kvs, vec![a, b1, c]);

    let between = s
        .list(
            p,
            ListOptions {
                revision: Some(d.mod_revision),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        keys(&between.kvs),
        vec![format!("{p}a"), format!("{p}b"), format!("{p}d")]
    );
    assert_eq!(between.kvs[1], b2);

    assert_eq!(
        s.list(
            p,
            ListOptions {
                revision: Some(now + 1),
                ..Default::default()
            }
        )
        .await
        .unwrap_err(),
        StoreError::FutureRevision(now + 1)
    );
}

pub async fn paging(s: Arc<dyn Store>) {
    let p = "/conformance/paging/";
    s.create("/conformance/pagin", b("before the prefix"), None)
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..25 {
        expected.push(s.create(&format!("{p}{i:02}"), b("v"), None).await.unwrap());
    }
    let at = s.current_revision().await.unwrap();
    let mut got = Vec::new();
    let mut start_after = None;
    let mut pages = 0;
    loop {
        let page = s
            .list(
                p,
                ListOptions {
                    revision: Some(at),
                    limit: Some(10),
                    start_after: start_after.clone(),
                },
            )
            .await
            .unwrap();
        pages += 1;
        assert_eq!(page.revision, at);
        assert!(page.kvs.len() <= 10);
        // Changes between pages must not show: every page is read at `at`.
        s.create(&format!("{p}{pages:02}x"), b("late"), None)
            .await
            .unwrap();
        s.update(&format!("{p}24"), b("changed"), None, None)
            .await
            .unwrap();
        start_after = page.kvs.last().map(|kv| kv.key.clone());
        got.extend(page.kvs);
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(got, expected);

    // A `start_after` before the prefix does not leak keys from outside it.
    let page = s
        .list(
            p,
            ListOptions {
                limit: Some(2),
                start_after: Some("/conformance/".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&page.kvs), vec![format!("{p}00"), format!("{p}01")]);
    assert!(page.more);

    // An exact limit reports no more.
    let all = s.list(p, ListOptions::default()).await.unwrap();
    let exact = s
        .list(
            p,
            ListOptions {
                limit: Some(all.kvs.len()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!exact.more);
    assert_eq!(exact.kvs, all.kvs);
}

pub async fn watch_replay_and_live(s: Arc<dyn Store>) {
    let p = "/conformance/watch/";
    let k = format!("{p}x");
    let r0 = s.current_revision().await.unwrap();
    let c = s.create(&k, b("1"), None).await.unwrap();
    let u = s.update(&k, b("2"), None, None).await.unwrap();
    let d = s.delete(&k, None).await.unwrap();

    let mut w = s.watch(p, r0).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, &e.kv, &e.prev), (EventKind::Put, &c, &None));
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, &e.kv, &e.prev),
        (EventKind::Put, &u, &Some(c.clone()))
    );
    let e = next_event(&mut w).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.kv, d);
    assert_eq!(e.prev, Some(u.clone()));

    // Live changes follow the replay.
    let y = s.create(&format!("{p}y"), b("live"), None).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, &e.kv), (EventKind::Put, &y));

    // Watching from the middle starts strictly after the given revision.
    let mut mid = s.watch(p, c.mod_revision).await.unwrap();
    assert_eq!(next_event(&mut mid).await.kv, u);
    assert_eq!(next_event(&mut mid).await.kv, d);
    assert_eq!(next_event(&mut mid).await.kv, y);

    // From the current revision: only what comes next.
    let mut now = s
        .watch(p, s.current_revision().await.unwrap())
        .await
        .unwrap();
    let z = s.create(&format!("{p}z"), b("z"), None).await.unwrap();
    assert_eq!(next_event(&mut now).await.kv, z);
    assert_eq!(next_event(&mut w).await.kv, z);
    assert_eq!(next_event(&mut mid).await.kv, z);
}

pub async fn watch_prefix_isolation(s: Arc<dyn Store>) {
    let p = "/conformance/iso/";
    let r0 = s.current_revision().await.unwrap();
    let mut w = s.watch(&format!("{p}a/"), r0).await.unwrap();
    s.create(&format!("{p}ab/1"), b("sibling"), None)
        .await
        .unwrap();
    s.create(&format!("{p}b/1"), b("other"), None)
        .await
        .unwrap();
    let mine = s.create(&format!("{p}a/1"), b("mine"), None).await.unwrap();
    s.create(&format!("{p}a"), b("parent"), None).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv, mine);
    assert_no_event(&mut w, Duration::from_millis(300)).await;
    let mine2 = s
        .update(&format!("{p}a/1"), b("again"), None, None)
        .await
        .unwrap();
    assert_eq!(next_event(&mut w).await.kv, mine2);
}

/// A watcher that does not read while many changes happen still gets every one of
/// them, once, in order.
pub async fn watch_slow_consumer(s: Arc<dyn Store>) {
    let p = "/conformance/slow/";
    let r0 = s.current_revision().await.unwrap();
    let mut w = s.watch(p, r0).await.unwrap();
    // One change read first, so the watch is following live changes when the flood starts.
    let first = s.create(&format!("{p}first"), b("v"), None).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv, first);
    let n = 3000;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 4 {
                let key = if i % 3 == 0 {
                    format!("/conformance/slox/{t}-{i}")
                } else {
                    format!("{p}{t}-{i}")
                };
                s.create(&key, b("v"), None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected = s.list(p, ListOptions::default()).await.unwrap().kvs.len();
    let mut last = first.mod_revision;
    let mut seen = BTreeSet::new();
    for _ in 1..expected {
        let e = next_event(&mut w).await;
        assert!(e.kv.mod_revision > last, "events in revision order");
        last = e.kv.mod_revision;
        assert!(e.kv.key.starts_with(p));
        assert!(seen.insert(e.kv.key), "no duplicates");
    }
    assert_no_event(&mut w, Duration::from_millis(200)).await;
}

pub async fn watch_progress(s: Arc<dyn Store>) {
    let p = "/conformance/progress/";
    let k = s.create(&format!("{p}k"), b("v"), None).await.unwrap();
    let mut w = s.watch(p, k.mod_revision - 1).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv, k);
    // Changes elsewhere advance the revision a quiet watch reports.
    let other = s
        .create("/conformance/progrest", b("elsewhere"), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let item = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("no progress notice on a quiet watch")
            .expect("watch ended")
            .expect("watch failed");
        match item {
            WatchItem::Progress(r) if r >= other.mod_revision => {
                assert!(r <= s.current_revision().await.unwrap());
                break;
            }
            WatchItem::Progress(r) => assert!(r >= k.mod_revision),
            WatchItem::Event(e) => panic!("unexpected change {e:?}"),
        }
    }
}

pub async fn compaction(s: Arc<dyn Store>) {
    let p = "/conformance/compaction/";
    let k = format!("{p}k");
    let first = s.create(&k, b("0"), None).await.unwrap();
    let mut revs = vec![first.mod_revision];
    for i in 1..5 {
        revs.push(
            s.update(&k, b(&i.to_string()), None, None)
                .await
                .unwrap()
                .mod_revision,
        );
    }
    let at = revs[2];
    s.compact(at).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), at);

    let list_at = |r: Revision| {
        let s = s.clone();
        async move {
            s.list(
                p,
                ListOptions {
                    revision: Some(r),
                    ..Default::default()
                },
            )
            .await
        }
    };
    // The compacted revision itself is still readable; anything older is gone.
    let kept = list_at(at).await.unwrap();
    assert_eq!(kept.kvs.len(), 1);
    assert_eq!(kept.kvs[0].value, b("2"));
    assert_eq!(
        list_at(at - 1).await.unwrap_err(),
        StoreError::Compacted {
            requested: at - 1,
            compacted: at
        }
    );
    assert!(matches!(
        s.watch(p, at - 1).await.err(),
        Some(StoreError::Compacted { .. })
    ));
    let mut w = s.watch(p, at).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv.mod_revision, revs[3]);
    assert_eq!(next_event(&mut w).await.kv.mod_revision, revs[4]);

    assert!(matches!(
        s.compact(at).await,
        Err(StoreError::Compacted { .. })
    ));
    let now = s.current_revision().await.unwrap();
    assert_eq!(
        s.compact(now + 1).await,
        Err(StoreError::FutureRevision(now + 1))
    );
    // Data survives compaction; only history goes.
    assert_eq!(s.get(&k).await.unwrap().unwrap().value, b("4"));
}

pub async fn lease_expiry(s: Arc<dyn Store>) {
    let p = "/conformance/lease-expiry/";
    assert!(matches!(
        s.create(&format!("{p}nolease"), b("v"), Some(987_654_321))
            .await,
        Err(StoreError::LeaseNotFound(987_654_321))
    ));
    assert_eq!(
        s.keep_alive(987_654_321).await,
        Err(StoreError::LeaseNotFound(987_654_321))
    );

    let kept = s.grant_lease(3).await.unwrap();
    let short = s.grant_lease(1).await.unwrap();
    assert_ne!(kept, short);
    let r0 = s.current_revision().await.unwrap();
    let held = s
        .create(&format!("{p}held"), b("v"), Some(kept))
        .await
        .unwrap();
    assert_eq!(held.lease, Some(kept));
    let doomed = s
        .create(&format!("{p}doomed"), b("v"), Some(short))
        .await
        .unwrap();
    let mut w = s.watch(p, r0).await.unwrap();
    next_event(&mut w).await;
    next_event(&mut w).await;

    // Keep one lease alive past its TTL while the other expires.
    let keeper = {
        let s = s.clone();
        tokio::spawn(async move {
            for _ in 0..12 {
                s.keep_alive(kept).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let e = next_event(&mut w).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.kv.key, doomed.key);
    assert_eq!(e.prev, Some(doomed.clone()));
    assert_eq!(s.get(&doomed.key).await.unwrap(), None);
    assert_eq!(
        s.keep_alive(short).await,
        Err(StoreError::LeaseNotFound(short))
    );
    keeper.await.unwrap();
    assert_eq!(s.get(&held.key).await.unwrap(), Some(held.clone()));

    // Detaching a key from its lease saves it.
    let detached = s.update(&held.key, b("v2"), None, None).await.unwrap();
    assert_eq!(detached.lease, None);
    let e = next_event(&mut w).await;
    assert_eq!(e.kv, detached);
    s.revoke_lease(kept).await.unwrap();
    assert_no_event(&mut w, Duration::from_millis(300)).await;
    assert_eq!(s.get(&held.key).await.unwrap(), Some(detached));
}

pub async fn lease_revoke(s: Arc<dyn Store>) {
    let p = "/conformance/lease-revoke/";
    let lease = s.grant_lease(600).await.unwrap();
    s.keep_alive(lease).await.unwrap();
    let r0 = s.current_revision().await.unwrap();
    let a = s
        .create(&format!("{p}a"), b("a"), Some(lease))
        .await
        .unwrap();
    let c = s.create(&format!("{p}c"), b("c"), None).await.unwrap();
    // Attaching an existing key to the lease by update.
    let b2 = s
        .update(&format!("{p}b0"), b("x"), None, Some(lease))
        .await
        .unwrap_err();
    assert_eq!(b2, StoreError::NotFound(format!("{p}b0")));
    s.create(&format!("{p}b"), b("b"), None).await.unwrap();
    let bl = s
        .update(&format!("{p}b"), b("b2"), None, Some(lease))
        .await
        .unwrap();
    assert_eq!(bl.lease, Some(lease));

    let mut w = s
        .watch(p, s.current_revision().await.unwrap())
        .await
        .unwrap();
    s.revoke_lease(lease).await.unwrap();
    let mut deleted = BTreeSet::new();
    for _ in 0..2 {
        let e = next_event(&mut w).await;
        assert_eq!(e.kind, EventKind::Delete);
        deleted.insert(e.kv.key);
    }
    assert_eq!(deleted, BTreeSet::from([a.key.clone(), bl.key.clone()]));
    assert_no_event(&mut w, Duration::from_millis(300)).await;
    let left = s.list(p, ListOptions::default()).await.unwrap();
    assert_eq!(left.kvs, vec![c]);
    // Four writes, then the revocation's deletions: in one revision or one each
    // (etcd deletes all of a lease's keys in one revision).
    assert!(s.current_revision().await.unwrap() >= r0 + 5);
    assert_eq!(
        s.revoke_lease(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    assert_eq!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
}

pub async fn concurrent_writers(s: Arc<dyn Store>) {
    let p = "/conformance/concurrent/";
    let (tasks, per_task) = (32, 25);
    let counter = format!("{p}counter");
    s.create(&counter, b("0"), None).await.unwrap();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = s.clone();
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..per_task {
                let kv = s
                    .create(&format!("{p}{t:02}/{i:02}"), b(&format!("{t}-{i}")), None)
                    .await
                    .unwrap();
                revs.push(kv.mod_revision);
            }
            // Optimistic-concurrency increments: read, then write at that revision.
            for _ in 0..3 {
                loop {
                    let cur = s.get(&counter).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    match s
                        .update(
                            &counter,
                            b(&(n + 1).to_string()),
                            Some(cur.mod_revision),
                            None,
                        )
                        .await
                    {
                        Ok(kv) => {
                            revs.push(kv.mod_revision);
                            break;
                        }
                        Err(StoreError::Conflict { current, .. }) => {
                            assert!(current > cur.mod_revision)
                        }
                        Err(e) => panic!("increment failed: {e}"),
                    }
                }
            }
            revs
        }));
    }
    let mut all = BTreeSet::new();
    for h in handles {
        for r in h.await.unwrap() {
            assert!(all.insert(r), "revision {r} handed out twice");
        }
    }
    assert_eq!(all.len(), tasks * (per_task + 3));
    let listed = s.list(p, ListOptions::default()).await.unwrap();
    assert_eq!(listed.kvs.len(), tasks * per_task + 1);
    let count = s.get(&counter).await.unwrap().unwrap();
    assert_eq!(count.value, b(&(tasks * 3).to_string()), "no lost update");
    for kv in &listed.kvs {
        if kv.key != counter {
            let (t, i) = kv.key[p.len()..].split_once('/').unwrap();
            let expected = format!(
                "{}-{}",
                t.parse::<u32>().unwrap(),
                i.parse::<u32>().unwrap()
            );
            assert_eq!(kv.value, b(&expected));
        }
    }
}

pub async fn reopen_keeps_data(h: &dyn Harness) {
    let p = "/conformance/reopen/";
    let s = h.open("reopen").await;
    let r0 = s.current_revision().await.unwrap();
    let a = s.create(&format!("{p}a"), b("a"), None).await.unwrap();
    let bk = s.create(&format!("{p}b"), b("b1"), None).await.unwrap();
    let b2 = s.update(&bk.key, b("b2"), None, None).await.unwrap();
    s.create(&format!("{p}c"), b("c"), None).await.unwrap();
    s.delete(&format!("{p}c"), None).await.unwrap();
    let lease = s.grant_lease(600).await.unwrap();
    let leased = s
        .create(&format!("{p}l"), b("l"), Some(lease))
        .await
        .unwrap();
    let rev = s.current_revision().await.unwrap();
    drop(s);

    let s = h.open("reopen").await;
    assert_eq!(s.current_revision().await.unwrap(), rev);
    let all = s.list(p, ListOptions::default()).await.unwrap();
    assert_eq!(all.kvs, vec![a.clone(), b2.clone(), leased.clone()]);
    // History survives too.
    let old = s
        .list(
            p,
            ListOptions {
                revision: Some(bk.mod_revision),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(old.kvs, vec![a, bk]);
    let mut w = s.watch(p, r0).await.unwrap();
    for _ in 0..6 {
        next_event(&mut w).await;
    }
    // The revision continues, and the lease is still there.
    let next = s.create(&format!("{p}d"), b("d"), None).await.unwrap();
    assert_eq!(next.mod_revision, rev + 1);
    assert_eq!(next_event(&mut w).await.kv, next);
    s.keep_alive(lease).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get(&leased.key).await.unwrap(), None);
}
