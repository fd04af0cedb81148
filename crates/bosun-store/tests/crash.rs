//! Acknowledged writes survive `kill -9`.
//!
//! The test re-runs its own binary as a child process that writes to a store from many
//! tasks and prints every acknowledged write. The parent kills the child with SIGKILL
//! in the middle of the stream, reopens the store, and checks every acknowledged write.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bosun_store::{RedbOptions, RedbStore, Store};
use bytes::Bytes;

const CHILD_ENV: &str = "BOSUN_STORE_CRASH_CHILD_DB";
const WRITERS: usize = 16;

fn value_for(key: &str) -> Bytes {
    Bytes::from(format!("value of {key}"))
}

/// The child: writes until killed (or, if never killed, for a bounded count and time).
#[test]
#[ignore = "child process of acknowledged_writes_survive_kill_9"]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(path.as_ref(), RedbOptions::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for t in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20_000 {
                    if Instant::now() > deadline {
                        return;
                    }
                    let key = format!("/crash/{t}/{i}");
                    let kv = store.create(&key, value_for(&key), None).await.unwrap();
                    // One write per line keeps lines whole on the pipe.
                    let line = format!("ACK {key} {}\n", kv.mod_revision);
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());

    let mut acks = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        // A line cut short by the kill was never fully acknowledged.
        if let Some(ack) = line.strip_prefix("ACK ").and_then(|l| l.strip_suffix('\n')) {
            let (key, rev) = ack.split_once(' ').unwrap();
            acks.push((key.to_string(), rev.parse::<i64>().unwrap()));
        }
        if !killed && (acks.len() >= 3000 || Instant::now() > deadline) {
            // SIGKILL, mid-stream: writes are in flight right now.
            child.kill().unwrap();
            killed = true;
        }
    }
    child.wait().unwrap();
    assert!(killed, "the writer finished before it could be killed");
    // Normally 3000; fewer only on a very slow machine, which still tests the point.
    assert!(acks.len() >= 200, "only {} writes acknowledged", acks.len());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
        let max_rev = acks.iter().map(|(_, r)| *r).max().unwrap();
        assert!(store.current_revision().await.unwrap() >= max_rev);
        for (key, rev) in &acks {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {key} lost"));
            assert_eq!(kv.value, value_for(key));
            assert_eq!(kv.mod_revision, *rev);
        }
    });
}
