//! The etcd backend against a real 3-member etcd cluster started by each test: the
//! conformance suite, `kill -9` of the leader under write load, and TLS with client
//! certificates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bosun_store::conformance::{self, Harness};
use bosun_store::etcd_cluster::EtcdCluster;
use bosun_store::{EtcdOptions, EtcdStore, ListOptions, Store, StoreError, WatchItem};
use bytes::Bytes;
use futures::StreamExt;

struct Etcd {
    opts: EtcdOptions,
}

#[async_trait]
impl Harness for Etcd {
    /// Every name shares the one cluster: the checks use their own key prefixes and
    /// run one after the other.
    async fn open(&self, _name: &str) -> Arc<dyn Store> {
        EtcdStore::connect(self.opts.clone()).await.unwrap()
    }
}

async fn cluster(n: usize) -> EtcdCluster {
    EtcdCluster::start(n)
        .await
        .unwrap_or_else(|e| panic!("starting etcd: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_three_members() {
    let c = cluster(3).await;
    conformance::run_all(&Etcd {
        opts: c.store_options(),
    })
    .await;
}

/// Keys are stored in Kubernetes' layout and read back in bosun's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_key_layout() {
    let c = cluster(1).await;
    let s = EtcdStore::connect(c.store_options()).await.unwrap();
    let r0 = s.current_revision().await.unwrap();
    let mut w = s.watch("/registry/core/pods/", r0).await.unwrap();
    s.create("/registry/core/pods/default/web", Bytes::from("{}"), None)
        .await
        .unwrap();
    s.create("/registry/core/nodes/n1", Bytes::from("{}"), None)
        .await
        .unwrap();
    s.create(
        "/registry/gateway.networking.k8s.io/httproutes/default/r",
        Bytes::from("{}"),
        None,
    )
    .await
    .unwrap();
    match w.next().await {
        Some(Ok(WatchItem::Event(e))) => assert_eq!(e.kv.key, "/registry/core/pods/default/web"),
        other => panic!("expected the pod's event, got {other:?}"),
    }

    let mut raw = etcd_client::Client::connect(c.endpoints(), None)
        .await
        .unwrap();
    let all = raw
        .get(
            "/registry/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let stored: Vec<String> = all
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stored,
        vec![
            "/registry/gateway.networking.k8s.io/httproutes/default/r",
            "/registry/minions/n1",
            "/registry/pods/default/web",
        ]
    );

    // A prefix across resources still finds every key under it, in bosun's names.
    let core = s
        .list("/registry/core/", ListOptions::default())
        .await
        .unwrap();
    let keys: Vec<&str> = core.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["/registry/core/nodes/n1", "/registry/core/pods/default/web"]
    );
    let page = s
        .list(
            "/registry/",
            ListOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);
}

/// `kill -9` of the etcd leader while writers keep writing: every acknowledged write
/// is there afterwards, and writes go on (through the other members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_write_load() {
    let mut c = cluster(3).await;
    let store = EtcdStore::connect(c.store_options()).await.unwrap();
    // A watch started before the load must deliver every change once, in order,
    // across the kill (it reopens on another member from where it was).
    let mut watch = store
        .watch("/load/", store.current_revision().await.unwrap())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut failed = 0;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                let key = format!("/load/{t}/{i:06}");
                let value = Bytes::from(format!("value {t} {i}"));
                match store.create(&key, value.clone(), None).await {
                    Ok(kv) => {
                        acked.insert(key, (value, kv.mod_revision));
                    }
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (acked, failed)
        }));
    }
    let count = |store: Arc<EtcdStore>| async move {
        store
            .list("/load/", ListOptions::default())
            .await
            .map(|l| l.kvs.len())
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = count(store.clone()).await;
    assert!(before > 0, "no writes went through before the kill");
    let leader = c.leader().await.expect("a leader");
    c.kill(leader);
    // Writes resume: the count grows again within the retry window.
    let killed_at = count(store.clone()).await;
    let mut resumed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if count(store.clone()).await > killed_at + 50 {
            resumed = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    assert!(resumed, "writes did not resume after the leader was killed");
    assert!(
        c.leader().await.is_some(),
        "the other members elected a leader"
    );

    // A fresh client (only the survivors answer) sees every acknowledged write.
    let fresh = EtcdStore::connect(c.store_options()).await.unwrap();
    let stored: BTreeMap<String, (Bytes, i64)> = fresh
        .list("/load/", ListOptions::default())
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
        .collect();
    let mut lost = Vec::new();
    for (key, (value, rev)) in &acked {
        match stored.get(key) {
            Some((v, r)) if v == value && r == rev => {}
            other => lost.push(format!("{key}: acked rev {rev}, stored {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let mut seen = BTreeMap::new();
    let mut last = 0;
    while seen.len() < stored.len() {
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
            Ok(Some(Ok(WatchItem::Event(e)))) => {
                assert!(e.kv.mod_revision > last, "watch events out of order");
                last = e.kv.mod_revision;
                assert!(
                    seen.insert(e.kv.key.clone(), e.kv.mod_revision).is_none(),
                    "{} delivered twice",
                    e.kv.key
                );
            }
            Ok(Some(Ok(WatchItem::Progress(_)))) => {}
            other => panic!(
                "watch stopped after {} of {} changes: {other:?}",
                seen.len(),
                stored.len()
            ),
        }
    }
    for (key, (_, rev)) in &stored {
        assert_eq!(seen.get(key), Some(rev), "watch missed {key}");
    }
    eprintln!(
        "{} writes acknowledged ({} before the kill), {failed} failed",
        acked.len(),
        before
    );
}

/// TLS with client certificates: the store works over it, and a client without a
/// certificate is refused with an error that says etcd did not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let c = EtcdCluster::start_tls(3)
        .await
        .unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let opts = c.store_options();
    let s = EtcdStore::connect(opts.clone()).await.unwrap();
    conformance::crud_and_preconditions(s.clone()).await;
    conformance::watch_replay_and_live(s.clone()).await;

    let mut no_cert = opts.clone();
    if let Some(t) = no_cert.tls.as_mut() {
        t.client_cert_pem = None;
        t.client_key_pem = None;
    }
    no_cert.connect_timeout = Duration::from_secs(3);
    match EtcdStore::connect(no_cert).await {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("did not answer"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a client without a certificate was let in"),
    }
}

/// Nothing listens: `connect` fails within its timeout, naming the endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = EtcdOptions {
        endpoints: vec![format!("127.0.0.1:{port}")],
        connect_timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    };
    match EtcdStore::connect(opts).await {
        Err(StoreError::Backend(msg)) => {
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
            assert!(msg.contains("did not answer"), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// The background compaction keeps one interval of history and drops the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compaction() {
    let c = cluster(1).await;
    let s = EtcdStore::connect(EtcdOptions {
        compaction_interval: Duration::from_secs(1),
        ..c.store_options()
    })
    .await
    .unwrap();
    let first = s
        .create("/compact/k", Bytes::from("0"), None)
        .await
        .unwrap();
    let mut compacted = 0;
    for i in 1..40 {
        s.update("/compact/k", Bytes::from(i.to_string()), None, None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        compacted = s.compacted_revision().await.unwrap();
        if compacted > first.mod_revision {
            break;
        }
    }
    assert!(
        compacted > first.mod_revision,
        "no compaction past {}",
        first.mod_revision
    );
    // History before the compaction point is gone; the data is not.
    assert!(matches!(
        s.watch("/compact/", first.mod_revision).await.err(),
        Some(StoreError::Compacted { .. })
    ));
    assert!(s.get("/compact/k").await.unwrap().is_some());
}

/// Each member in turn is killed and restarted while a watch runs: whichever member
/// served the watch died at some point, and the watch still delivers every change
/// once, in order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_the_death_of_its_member() {
    let mut c = cluster(3).await;
    let s = EtcdStore::connect(c.store_options()).await.unwrap();
    let r0 = s.current_revision().await.unwrap();
    let mut w = s.watch("/survive/", r0).await.unwrap();
    let mut written = Vec::new();
    for i in 0..3 {
        c.kill(i);
        for j in 0..10 {
            let kv = s
                .create(&format!("/survive/{i}-{j}"), Bytes::from("v"), None)
                .await
                .unwrap();
            written.push((kv.key, kv.mod_revision));
        }
        c.restart(i).unwrap();
        c.wait_ready(Duration::from_secs(60)).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        match tokio::time::timeout(Duration::from_secs(30), w.next()).await {
            Ok(Some(Ok(WatchItem::Event(e)))) => seen.push((e.kv.key, e.kv.mod_revision)),
            Ok(Some(Ok(WatchItem::Progress(_)))) => {}
            other => panic!("watch stopped after {} changes: {other:?}", seen.len()),
        }
    }
    assert_eq!(seen, written);
}

/// With two of three members dead the cluster has no quorum: writes fail, but reads are
/// still answered (serializably, by the member that is up), and writes work again once
/// quorum is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_served_without_quorum() {
    let mut c = cluster(3).await;
    let s = EtcdStore::connect(EtcdOptions {
        retry_for: Duration::from_secs(6),
        read_fallback_after: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..c.store_options()
    })
    .await
    .unwrap();
    s.create("/quorum/a", Bytes::from("kept"), None)
        .await
        .unwrap();
    // Every member has applied the write before two of them go.
    for i in 0..3 {
        let one = EtcdStore::connect(EtcdOptions {
            endpoints: vec![c.endpoint(i)],
            ..c.store_options()
        })
        .await
        .unwrap();
        assert_eq!(
            one.get("/quorum/a").await.unwrap().map(|kv| kv.value),
            Some(Bytes::from("kept"))
        );
    }
    c.kill(0);
    c.kill(1);
    let write = s.create("/quorum/b", Bytes::from("lost"), None).await;
    assert!(
        matches!(&write, Err(StoreError::Backend(m)) if m.contains("unavailable")),
        "{write:?}"
    );
    let got = s.get("/quorum/a").await.expect("a read without quorum");
    assert_eq!(got.map(|kv| kv.value), Some(Bytes::from("kept")));
    let listed = s.list("/quorum/", Default::default()).await.unwrap();
    assert_eq!(listed.kvs.len(), 1);
    c.restart(0).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    s.create("/quorum/c", Bytes::from("after"), None)
        .await
        .unwrap();
}
