//! Durable write throughput and latency of the embedded store.
//!
//! Each write is a `create` of a new key, acknowledged only after its transaction is
//! on disk (fsync). Writers run concurrently, so the group commit can batch them.
//!
//! Run: `cargo bench -p bosun-store --bench store -- [--writers N] [--ops N]
//! [--value-bytes N] [--dir PATH]`. Without `--writers` it runs 1, 16, 64 and 256 writers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bosun_store::{RedbOptions, RedbStore, Store};
use bytes::Bytes;

struct Args {
    writers: Vec<usize>,
    ops: usize,
    value_bytes: usize,
    dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        writers: vec![1, 16, 64, 256],
        ops: 20_000,
        value_bytes: 1024,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match a.as_str() {
            "--writers" => {
                args.writers = value("--writers")
                    .split(',')
                    .map(|n| n.parse().expect("--writers takes numbers, e.g. 1,64"))
                    .collect();
            }
            "--ops" => args.ops = value("--ops").parse().expect("--ops takes a number"),
            "--value-bytes" => {
                args.value_bytes = value("--value-bytes")
                    .parse()
                    .expect("--value-bytes takes a number");
            }
            "--dir" => args.dir = Some(value("--dir").into()),
            // `cargo bench` adds `--bench`; libtest-style flags mean nothing here.
            _ => {}
        }
    }
    args
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(store: Arc<RedbStore>, writers: usize, ops: usize, value: Bytes) {
    let per_writer = ops.div_ceil(writers);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                store
                    .create(&format!("/bench/{writers}/{w}/{i}"), value.clone(), None)
                    .await
                    .expect("create failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(per_writer * writers);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    lat.sort();
    println!(
        "writers={writers:<4} ops={:<6} {:>8.0} creates/s  p50={:>7.2}ms  p99={:>7.2}ms  max={:>7.2}ms",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
}

fn main() {
    let args = parse_args();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().expect("temporary directory");
            tmp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "durable creates, {}-byte values, store in {}",
        args.value_bytes,
        dir.display()
    );
    rt.block_on(async {
        let path = dir.join(format!("bench-{}.redb", std::process::id()));
        let store = RedbStore::open(&path, RedbOptions::default()).expect("open store");
        let value = Bytes::from(vec![b'x'; args.value_bytes]);
        for &w in &args.writers {
            run(store.clone(), w.max(1), args.ops, value.clone()).await;
        }
        drop(store);
        let _ = std::fs::remove_file(&path);
    });
}
