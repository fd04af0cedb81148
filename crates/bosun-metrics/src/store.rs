//! The time-series store: a head of compressed chunks in memory, cut into immutable block
//! files on disk, with retention by age and by total size.
//!
//! - Head: one `Series` per label set (labels sorted by name, `__name__` among them), each
//!   a list of `Chunk`s; an inverted index (label name -> value -> series ids) finds
//!   series by their matchers.
//! - Blocks: once the oldest finished chunk in the head is `block_duration` old, every
//!   finished chunk (full ones, and all chunks of series that received nothing for five
//!   minutes) is written to `DIR/<min_t>-<max_t>.block` and leaves memory. A block is
//!   read back whole only by queries whose range it overlaps. On a clean shutdown the
//!   whole head is written as a block, so a restart loses nothing; a crash loses the head
//!   (at most `block_duration` of samples).
//! - Retention: blocks wholly older than the age limit are deleted, then the oldest ones
//!   until the directory is under the size limit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use promql_parser::label::{MatchOp, Matcher};

use crate::chunk::{Chunk, read_varint, write_varint};

/// A label set sorted by name; `__name__` holds the metric name.
pub type Labels = Arc<[(String, String)]>;

/// Prometheus' staleness marker: a NaN with this exact bit pattern ends a series.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

pub fn labels_from(mut pairs: Vec<(String, String)>) -> Labels {
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs.dedup_by(|a, b| a.0 == b.0);
    pairs.retain(|(_, v)| !v.is_empty());
    pairs.into()
}

pub fn label<'a>(labels: &'a [(String, String)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// How long and how much the store keeps.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Samples older than this are deleted.
    pub age: Duration,
    /// Block files are deleted, oldest first, while they take more than this many bytes.
    pub max_bytes: u64,
    /// Span of samples the head collects before they are written as a block.
    pub block_duration: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            age: Duration::from_secs(15 * 24 * 3600),
            max_bytes: 1 << 30,
            block_duration: Duration::from_secs(3600),
        }
    }
}

/// A series idle this long has its chunks written out with the next block.
const IDLE_MS: i64 = 5 * 60 * 1000;

struct Series {
    labels: Labels,
    chunks: Vec<Chunk>,
}

impl Series {
    fn max_t(&self) -> i64 {
        self.chunks.last().map(|c| c.max_t).unwrap_or(i64::MIN)
    }
}

#[derive(Default)]
struct Head {
    series: Vec<Series>,
    by_labels: HashMap<Labels, u32>,
    postings: HashMap<String, HashMap<String, Vec<u32>>>,
}

impl Head {
    fn get_or_create(&mut self, labels: &Labels) -> u32 {
        if let Some(id) = self.by_labels.get(labels) {
            return *id;
        }
        let id = self.series.len() as u32;
        self.series.push(Series {
            labels: labels.clone(),
            chunks: Vec::new(),
        });
        self.by_labels.insert(labels.clone(), id);
        for (n, v) in labels.iter() {
            self.postings
                .entry(n.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .push(id);
        }
        id
    }

    fn rebuild(&mut self) {
        let series = std::mem::take(&mut self.series);
        *self = Head::default();
        for s in series {
            let id = self.get_or_create(&s.labels);
            self.series[id as usize].chunks = s.chunks;
        }
    }

    /// Ids of series that can match: narrowed by an equality matcher when there is one.
    fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        for m in matchers {
            if let MatchOp::Equal = m.op
                && !m.value.is_empty()
            {
                return self
                    .postings
                    .get(&m.name)
                    .and_then(|vals| vals.get(&m.value))
                    .cloned()
                    .unwrap_or_default();
            }
        }
        (0..self.series.len() as u32).collect()
    }
}

pub fn matches(labels: &[(String, String)], matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| m.is_match(label(labels, &m.name)))
}

#[derive(Debug, Clone)]
struct BlockMeta {
    path: PathBuf,
    min_t: i64,
    max_t: i64,
    bytes: u64,
}

/// One series' samples in a time range, oldest first.
#[derive(Debug, Clone)]
pub struct SeriesData {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

pub struct Store {
    head: RwLock<Head>,
    dir: Option<PathBuf>,
    blocks: RwLock<Vec<BlockMeta>>,
    retention: Retention,
}

const MAGIC: &[u8; 8] = b"BOSUNTS1";

impl Store {
    /// A store that keeps everything in memory (tests, benchmarks).
    pub fn in_memory(retention: Retention) -> Store {
        Store {
            head: RwLock::default(),
            dir: None,
            blocks: RwLock::default(),
            retention,
        }
    }

    /// Opens (creating) the block directory `dir` and finds the blocks in it.
    pub fn open(dir: &Path, retention: Retention) -> Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut blocks = Vec::new();
        for e in std::fs::read_dir(dir)?.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".block") else {
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            };
            let Some((a, b)) = stem.split_once('-') else {
                continue;
            };
            let (Ok(min_t), Ok(max_t)) = (a.parse(), b.parse()) else {
                continue;
            };
            let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
            blocks.push(BlockMeta {
                path,
                min_t,
                max_t,
                bytes,
            });
        }
        blocks.sort_by_key(|b| b.min_t);
        Ok(Store {
            head: RwLock::default(),
            dir: Some(dir.to_path_buf()),
            blocks: RwLock::new(blocks),
            retention,
        })
    }

    fn head_read(&self) -> std::sync::RwLockReadGuard<'_, Head> {
        self.head.read().unwrap_or_else(|e| e.into_inner())
    }

    fn head_write(&self) -> std::sync::RwLockWriteGuard<'_, Head> {
        self.head.write().unwrap_or_else(|e| e.into_inner())
    }

    fn block_list(&self) -> Vec<BlockMeta> {
        self.blocks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Appends samples taken at `t` (ms). Samples not newer than a series' last are dropped.
    pub fn append(&self, t: i64, samples: impl IntoIterator<Item = (Labels, f64)>) -> usize {
        let mut head = self.head_write();
        let mut n = 0;
        for (labels, v) in samples {
            let id = head.get_or_create(&labels) as usize;
            let s = &mut head.series[id];
            match s.chunks.last_mut() {
                Some(c) if t <= c.max_t => continue,
                Some(c) if !c.is_full() => c.push(t, v),
                last => {
                    if let Some(c) = last {
                        c.seal();
                    }
                    s.chunks.push(Chunk::new(t, v))
                }
            }
            n += 1;
        }
        n
    }

    /// Number of series in memory.
    pub fn head_series(&self) -> usize {
        self.head_read().series.len()
    }

    /// Bytes held by the head's chunks and labels (an estimate of the store's own memory).
    pub fn head_bytes(&self) -> usize {
        let head = self.head_read();
        head.series
            .iter()
            .map(|s| {
                std::mem::size_of::<Series>()
                    + s.chunks.iter().map(Chunk::bytes).sum::<usize>()
                    + s.labels
                        .iter()
                        .map(|(a, b)| 48 + a.len() + b.len())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Samples of every series matching `matchers` with min_t <= t <= max_t.
    pub fn select(&self, matchers: &[Matcher], min_t: i64, max_t: i64) -> Vec<SeriesData> {
        let mut out: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
        for b in self.block_list() {
            if b.max_t < min_t || b.min_t > max_t {
                continue;
            }
            match read_block_where(&b.path, |l| matches(l, matchers)) {
                Ok(series) => {
                    for (labels, chunks) in series {
                        let v = out.entry(labels).or_default();
                        collect(&chunks, min_t, max_t, v);
                    }
                }
                Err(e) => tracing::warn!(block = %b.path.display(), "unreadable block: {e:#}"),
            }
        }
        {
            let head = self.head_read();
            for id in head.candidates(matchers) {
                let s = &head.series[id as usize];
                if !matches(&s.labels, matchers) {
                    continue;
                }
                if s.chunks.last().is_none_or(|c| c.max_t < min_t) && !out.contains_key(&s.labels) {
                    continue;
                }
                let v = out.entry(s.labels.clone()).or_default();
                collect(&s.chunks, min_t, max_t, v);
            }
        }
        let mut res: Vec<SeriesData> = out
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|s| s.0);
                samples.dedup_by_key(|s| s.0);
                SeriesData { labels, samples }
            })
            .collect();
        res.sort_by(|a, b| a.labels.cmp(&b.labels));
        res
    }

    /// Label sets of the series matching any of `sets` (all series when empty) with samples
    /// in the range.
    pub fn series(&self, sets: &[Vec<Matcher>], min_t: i64, max_t: i64) -> Vec<Labels> {
        let mut seen: HashSet<Labels> = HashSet::new();
        let keep = |l: &[(String, String)]| sets.is_empty() || sets.iter().any(|m| matches(l, m));
        for b in self.block_list() {
            if b.max_t < min_t || b.min_t > max_t {
                continue;
            }
            if let Ok(series) = read_block_where(&b.path, keep) {
                for (labels, chunks) in series {
                    if chunks.iter().any(|c| c.max_t >= min_t && c.min_t <= max_t) {
                        seen.insert(labels);
                    }
                }
            }
        }
        let head = self.head_read();
        for s in &head.series {
            if keep(&s.labels)
                && s.chunks
                    .iter()
                    .any(|c| c.max_t >= min_t && c.min_t <= max_t)
            {
                seen.insert(s.labels.clone());
            }
        }
        let mut v: Vec<Labels> = seen.into_iter().collect();
        v.sort();
        v
    }

    /// Writes finished chunks out as a block when the oldest is `block_duration` old (all
    /// chunks when `force`), then applies retention. `now` in ms.
    pub fn maintain(&self, now: i64, force: bool) -> Result<()> {
        let block_ms = self.retention.block_duration.as_millis() as i64;
        let age_ms = self.retention.age.as_millis() as i64;
        let mut cut: Vec<(Labels, Vec<Chunk>)> = Vec::new();
        {
            let mut head = self.head_write();
            let oldest = head
                .series
                .iter()
                .filter_map(|s| {
                    let idle = s.max_t() < now - IDLE_MS;
                    s.chunks
                        .iter()
                        .filter(|c| c.is_full() || idle)
                        .map(|c| c.min_t)
                        .min()
                })
                .min();
            let due = force || oldest.is_some_and(|t| t <= now - block_ms);
            if self.dir.is_some() && due {
                for s in head.series.iter_mut() {
                    let idle = s.max_t() < now - IDLE_MS;
                    let keep_last =
                        !force && !idle && s.chunks.last().is_some_and(|c| !c.is_full());
                    let take = s.chunks.len() - usize::from(keep_last);
                    if take > 0 {
                        let chunks: Vec<Chunk> = s.chunks.drain(..take).collect();
                        cut.push((s.labels.clone(), chunks));
                    }
                }
            }
            // Retention in memory (a store without a directory keeps only the head).
            for s in head.series.iter_mut() {
                s.chunks.retain(|c| c.max_t >= now - age_ms);
            }
            let before = head.series.len();
            head.series.retain(|s| !s.chunks.is_empty());
            if head.series.len() != before {
                head.rebuild();
            }
        }
        if let Some(dir) = &self.dir {
            if !cut.is_empty() {
                let meta = write_block(dir, &cut)?;
                self.blocks
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(meta);
            }
            self.apply_retention(now - age_ms);
        }
        Ok(())
    }

    fn apply_retention(&self, oldest_kept: i64) {
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        blocks.sort_by_key(|b| b.min_t);
        let mut total: u64 = blocks.iter().map(|b| b.bytes).sum();
        blocks.retain(|b| {
            let drop = b.max_t < oldest_kept || total > self.retention.max_bytes;
            if drop {
                total -= b.bytes;
                if let Err(e) = std::fs::remove_file(&b.path) {
                    tracing::warn!(block = %b.path.display(), "removing block: {e}");
                }
            }
            !drop
        });
    }

    /// Bytes of block files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.block_list().iter().map(|b| b.bytes).sum()
    }

    pub fn block_count(&self) -> usize {
        self.block_list().len()
    }
}

fn collect(chunks: &[Chunk], min_t: i64, max_t: i64, out: &mut Vec<(i64, f64)>) {
    for c in chunks {
        if c.max_t < min_t || c.min_t > max_t {
            continue;
        }
        out.extend(c.iter().filter(|(t, _)| *t >= min_t && *t <= max_t));
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    write_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn get_str(data: &[u8], pos: &mut usize) -> Option<String> {
    let n = usize::try_from(read_varint(data, pos)?).ok()?;
    let s = std::str::from_utf8(data.get(*pos..*pos + n)?)
        .ok()?
        .to_string();
    *pos += n;
    Some(s)
}

fn write_block(dir: &Path, series: &[(Labels, Vec<Chunk>)]) -> Result<BlockMeta> {
    let min_t = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|c| c.min_t))
        .min()
        .unwrap_or(0);
    let max_t = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|c| c.max_t))
        .max()
        .unwrap_or(0);
    let mut buf = Vec::with_capacity(64 * 1024);
    buf.extend_from_slice(MAGIC);
    write_varint(&mut buf, series.len() as u64);
    for (labels, chunks) in series {
        write_varint(&mut buf, labels.len() as u64);
        for (n, v) in labels.iter() {
            put_str(&mut buf, n);
            put_str(&mut buf, v);
        }
        write_varint(&mut buf, chunks.len() as u64);
        for c in chunks {
            c.encode(&mut buf);
        }
    }
    // Two blocks cut in one millisecond get distinct names.
    let mut path = dir.join(format!("{min_t}-{max_t}.block"));
    let mut k = max_t;
    while path.exists() {
        k += 1;
        path = dir.join(format!("{min_t}-{k}.block"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &buf).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(BlockMeta {
        path,
        min_t,
        max_t: k,
        bytes: buf.len() as u64,
    })
}

/// Reads the series of a block whose labels pass `keep`; the others' chunks are skipped
/// without being copied.
fn read_block_where(
    path: &Path,
    keep: impl Fn(&[(String, String)]) -> bool,
) -> Result<BTreeMap<Labels, Vec<Chunk>>> {
    let data = std::fs::read(path)?;
    let bad = || anyhow::anyhow!("corrupt block {}", path.display());
    if data.get(..8) != Some(MAGIC.as_slice()) {
        return Err(bad());
    }
    let mut pos = 8;
    let n = read_varint(&data, &mut pos).ok_or_else(bad)?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let nl = read_varint(&data, &mut pos).ok_or_else(bad)?;
        let mut labels = Vec::with_capacity(nl as usize);
        for _ in 0..nl {
            let k = get_str(&data, &mut pos).ok_or_else(bad)?;
            let v = get_str(&data, &mut pos).ok_or_else(bad)?;
            labels.push((k, v));
        }
        let nc = read_varint(&data, &mut pos).ok_or_else(bad)?;
        if !keep(&labels) {
            for _ in 0..nc {
                Chunk::skip(&data, &mut pos).ok_or_else(bad)?;
            }
            continue;
        }
        let mut chunks = Vec::with_capacity(nc as usize);
        for _ in 0..nc {
            chunks.push(Chunk::decode(&data, &mut pos).ok_or_else(bad)?);
        }
        out.insert(Labels::from(labels), chunks);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, pod: &str) -> Labels {
        labels_from(vec![
            ("__name__".into(), name.into()),
            ("pod".into(), pod.into()),
        ])
    }

    fn eq(name: &str, v: &str) -> Matcher {
        Matcher::new(MatchOp::Equal, name, v)
    }

    #[test]
    fn select_by_matchers_and_range() {
        let s = Store::in_memory(Retention::default());
        for i in 0..10 {
            s.append(i * 1000, [(l("a", "x"), i as f64), (l("a", "y"), 1.0)]);
            s.append(i * 1000, [(l("b", "x"), 2.0)]);
        }
        // Out of order: dropped.
        assert_eq!(s.append(5000, [(l("a", "x"), 99.0)]), 0);
        let r = s.select(&[eq("__name__", "a"), eq("pod", "x")], 2000, 4000);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].samples, vec![(2000, 2.0), (3000, 3.0), (4000, 4.0)]);
        let re = crate::parse_selector(r#"a{pod!~"x"}"#).unwrap().remove(0);
        let r = s.select(&re, 0, 100_000);
        assert_eq!(r.len(), 1);
        assert_eq!(label(&r[0].labels, "pod"), "y");
        assert_eq!(s.series(&[], 0, 100_000).len(), 3);
        assert_eq!(s.series(&[vec![eq("pod", "x")]], 0, 100_000).len(), 2);
    }

    #[test]
    fn blocks_on_disk_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention {
            age: Duration::from_secs(6 * 3600),
            max_bytes: 1 << 30,
            block_duration: Duration::from_secs(3600),
        };
        let s = Store::open(dir.path(), ret.clone()).unwrap();
        let step = 15_000;
        let mut t = 0;
        while t < 3 * 3600 * 1000 {
            s.append(t, [(l("a", "x"), t as f64)]);
            s.maintain(t, false).unwrap();
            t += step;
        }
        assert!(s.block_count() >= 1, "a block was cut");
        let all = s.select(&[eq("__name__", "a")], 0, t);
        assert_eq!(all[0].samples.len(), (3 * 3600 * 1000 / step) as usize);
        // Clean shutdown writes the head; a reopened store sees every sample.
        s.maintain(t, true).unwrap();
        assert_eq!(s.head_series(), 0);
        let s2 = Store::open(dir.path(), ret).unwrap();
        let all = s2.select(&[eq("__name__", "a")], 0, t);
        assert_eq!(all[0].samples.len(), (3 * 3600 * 1000 / step) as usize);
        // Age: 10 h later everything is past the 6 h retention.
        s2.maintain(t + 10 * 3600 * 1000, false).unwrap();
        assert_eq!(s2.block_count(), 0);
        assert!(s2.select(&[eq("__name__", "a")], 0, t).is_empty());
    }

    #[test]
    fn size_retention_drops_oldest_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention {
            age: Duration::from_secs(100 * 3600),
            max_bytes: 20_000,
            block_duration: Duration::from_secs(3600),
        };
        let s = Store::open(dir.path(), ret).unwrap();
        let mut t = 0;
        while t < 10 * 3600 * 1000 {
            let samples: Vec<(Labels, f64)> = (0..10)
                .map(|p| (l("a", &p.to_string()), t as f64))
                .collect();
            s.append(t, samples);
            s.maintain(t, false).unwrap();
            t += 15_000;
        }
        assert!(s.disk_bytes() <= 20_000, "{}", s.disk_bytes());
        assert!(s.block_count() >= 1);
        let kept = s.select(&[eq("__name__", "a")], 0, t);
        let first = kept[0].samples[0].0;
        assert!(
            first > 3600 * 1000,
            "oldest blocks were deleted (first {first})"
        );
    }
}
