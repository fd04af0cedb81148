//! Leader election against the real API server (in-process, on a redb store): one
//! candidate leads at a time, a leader whose lease is taken stops its loops, and a
//! leader that shuts down releases the lease so the next one starts at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bosun_apiserver::{ApiServer, ApiServerConfig};
use bosun_controllers::leader::{ElectionConfig, run_elected};
use bosun_store::{RedbOptions, RedbStore};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

/// A candidate whose "loops" count how many of them run at once.
struct Candidate {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    leading: Arc<AtomicUsize>,
}

fn candidate(client: &Client, id: &str, running: Arc<AtomicUsize>) -> Candidate {
    let shutdown = CancellationToken::new();
    let leading = Arc::new(AtomicUsize::new(0));
    let cfg = ElectionConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..ElectionConfig::new("test-leader", id)
    };
    let (c, sd, l) = (client.clone(), shutdown.clone(), leading.clone());
    let task = tokio::spawn(async move {
        run_elected(c, cfg, sd, move |term| {
            let (running, leading) = (running.clone(), leading.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                assert_eq!(now, 1, "two leaders at once");
                leading.fetch_add(1, Ordering::SeqCst);
                term.cancelled().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
    });
    Candidate {
        shutdown,
        task,
        leading: l,
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..150 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_steps_down_when_its_lease_is_taken_and_releases_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb"), RedbOptions::default()).unwrap();
    let server = ApiServer::new(ApiServerConfig::new(store, "token", ""))
        .await
        .unwrap();
    let client = Client::new(server.router(), "default");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let running = Arc::new(AtomicUsize::new(0));

    let a = candidate(&client, "a", running.clone());
    eventually("a leading", || a.leading.load(Ordering::SeqCst) == 1).await;
    let b = candidate(&client, "b", running.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(b.leading.load(Ordering::SeqCst), 0, "b led while a renewed");
    let spec = leases.get("test-leader").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(2));
    assert_eq!(spec.lease_transitions, Some(0));

    // Someone else writes the lease: a sees it on its next renewal and stops its loops.
    // A renewal by a between the read and the write is a Conflict: read again, as any
    // writer of a Lease does.
    loop {
        let mut taken = leases.get("test-leader").await.unwrap();
        if let Some(s) = taken.spec.as_mut() {
            s.holder_identity = Some("intruder".into());
            s.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                jiff::Timestamp::now(),
            ));
        }
        match leases
            .replace("test-leader", &PostParams::default(), &taken)
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => panic!("taking the lease: {e}"),
        }
    }
    eventually("a stepping down", || running.load(Ordering::SeqCst) == 0).await;
    // The intruder never renews: after the lease duration a or b takes over.
    eventually("a new leader", || running.load(Ordering::SeqCst) == 1).await;
    let spec = leases.get("test-leader").await.unwrap().spec.unwrap();
    let holder = spec.holder_identity.unwrap();
    assert!(holder == "a" || holder == "b", "{holder}");
    // The takeover from the intruder counts (the intruder did not count its own).
    assert_eq!(spec.lease_transitions, Some(1));

    // The leader shuts down: it releases the lease, and the other starts at once
    // (well before the 2 s lease would have run out).
    let (leader, follower) = if holder == "a" { (a, b) } else { (b, a) };
    let before = follower.leading.load(Ordering::SeqCst);
    leader.shutdown.cancel();
    leader.task.await.unwrap().unwrap();
    eventually("the follower taking over", || {
        follower.leading.load(Ordering::SeqCst) == before + 1
    })
    .await;
    follower.shutdown.cancel();
    follower.task.await.unwrap().unwrap();
    assert_eq!(running.load(Ordering::SeqCst), 0);
}
