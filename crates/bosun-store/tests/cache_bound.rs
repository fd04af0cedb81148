//! The store's memory is bounded by its cache size, however large the file, including
//! right after a crash, when redb checks and repairs the whole file on open.
//!
//! A child process (this binary re-run) fills a store and is killed with SIGKILL; the
//! parent opens the store with a small cache (which repairs it) and reads every value
//! back, measuring its own resident memory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bosun_store::{RedbOptions, RedbStore, Store};
use bytes::Bytes;

const CHILD_ENV: &str = "BOSUN_STORE_CACHE_CHILD_DB";
const MIB: usize = 1 << 20;
/// Values written: 1 MiB each, so the file holds about twice this (values and history).
const VALUES: usize = 96;
const CACHE: usize = 16 * MIB;

fn value(i: usize) -> Bytes {
    // Varied bytes, so nothing on the way could shrink them.
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut v = Vec::with_capacity(MIB);
    while v.len() < MIB {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
#[ignore = "child process of memory_stays_within_the_cache_after_crash_recovery"]
fn cache_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(path.as_ref(), RedbOptions::default()).unwrap();
        for i in 0..VALUES {
            store
                .create(&format!("/big/{i}"), value(i), None)
                .await
                .unwrap();
        }
        println!("DONE");
        // Wait to be killed: the store is never closed cleanly.
        std::thread::sleep(std::time::Duration::from_secs(600));
    });
}

#[test]
fn memory_stays_within_the_cache_after_crash_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cache_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let done = out.lines().any(|l| l.is_ok_and(|l| l.trim() == "DONE"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(done, "the child did not fill the store");
    let file = std::fs::metadata(&path).unwrap().len() as usize;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = rss_bytes();
    let (after_open, after_reads) = rt.block_on(async {
        let opts = RedbOptions {
            cache_size: Some(CACHE),
            ..Default::default()
        };
        let store = RedbStore::open(&path, opts).unwrap();
        let after_open = rss_bytes();
        for i in 0..VALUES {
            let kv = store.get(&format!("/big/{i}")).await.unwrap().unwrap();
            assert_eq!(kv.value, value(i), "value {i} after recovery");
        }
        (after_open, rss_bytes())
    });
    let grew = |now: usize| now.saturating_sub(before) / MIB;
    println!(
        "store file {} MiB, cache {} MiB: RSS grew {} MiB by the repairing open, {} MiB after reading all",
        file / MIB,
        CACHE / MIB,
        grew(after_open),
        grew(after_reads)
    );
    // With redb's default cache (1 GiB) the values read stay cached: growth near the
    // data size. Bounded, growth stays near the cache size; the bound is generous.
    let bound = CACHE + 48 * MIB;
    assert!(
        file > 2 * bound,
        "the store must be larger than the bound to show anything"
    );
    assert!(
        after_open - before.min(after_open) < bound,
        "open grew RSS by {} MiB",
        grew(after_open)
    );
    assert!(
        after_reads - before.min(after_reads) < bound,
        "reads grew RSS by {} MiB",
        grew(after_reads)
    );
}
