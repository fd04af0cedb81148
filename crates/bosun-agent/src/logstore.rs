//! The node's log store: search over the CRI logs of live and deleted pods, the archive
//! that keeps a deleted pod's logs, and retention by age and size.
//!
//! Layout: a live pod's logs are `PODS/UID/logs/CONTAINER/ATTEMPT.log[.N]` beside its
//! `PODS/UID/pod.json` (namespace, name, uid, labels, retention overrides). When the pod is
//! removed, `archive` moves `logs/` and `pod.json` to `ARCHIVE/UID/` (a rename: a writer
//! that is still draining keeps writing into the moved file), where search still finds them
//! until retention removes them.
//!
//! Retention (`sweep`, run every minute by the agent): files whose last record is older
//! than the pod's maximum age go, then the oldest files go until the pod's logs fit its
//! maximum size; the file a running container writes is never removed (rotation bounds
//! it). Archived pods also share a node-wide cap, oldest pod first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::cri_log::{log_files, parse_record};

/// Annotation giving a pod's own maximum log age (e.g. `24h`, `7d`).
pub const RETENTION_ANNOTATION: &str = "bosun.dev/log-retention";
/// Annotation giving a pod's own maximum log size (e.g. `200Mi`).
pub const MAX_SIZE_ANNOTATION: &str = "bosun.dev/log-max-size";

/// Node-wide retention settings (pods may lower or raise theirs by annotation).
#[derive(Debug, Clone)]
pub struct Retention {
    /// Records older than this are removed (with the file that holds them).
    pub max_age: Duration,
    /// All logs of one pod (every container, attempt and rotated file).
    pub max_pod_bytes: u64,
    /// All archived (deleted) pods of the node together.
    pub max_archive_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_pod_bytes: 100 << 20,
            max_archive_bytes: 1 << 30,
        }
    }
}

/// Parses `90s`, `15m`, `24h`, `7d` (or combinations such as `1h30m`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// What `pod.json` records about a pod.
pub fn pod_meta(pod: &k8s_openapi::api::core::v1::Pod, uid: &str) -> Value {
    let md = &pod.metadata;
    let ann = md.annotations.clone().unwrap_or_default();
    serde_json::json!({
        "namespace": md.namespace.as_deref().unwrap_or("default"),
        "name": md.name,
        "uid": uid,
        "labels": md.labels.clone().unwrap_or_default(),
        "logRetention": ann.get(RETENTION_ANNOTATION),
        "logMaxSize": ann.get(MAX_SIZE_ANNOTATION),
    })
}

/// Moves a pod's logs and metadata from `pod_dir` to `archive/UID` and stamps the time of
/// deletion. Nothing to do when the pod wrote no logs.
pub fn archive(pod_dir: &Path, archive: &Path, uid: &str) -> io::Result<()> {
    let logs = pod_dir.join("logs");
    if !logs.exists() {
        return Ok(());
    }
    let dest = archive.join(uid);
    std::fs::create_dir_all(&dest)?;
    let mut meta: Value = std::fs::read(pod_dir.join("pod.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"uid": uid}));
    meta["deleted"] = Value::String(format!("{:.0}", jiff::Timestamp::now()));
    let target = dest.join("logs");
    if target.exists() {
        // Archived before (a retried removal): keep the first copy.
        return Ok(());
    }
    std::fs::rename(&logs, &target)?;
    crate::osutil::write_atomic(&dest.join("pod.json"), meta.to_string().as_bytes())
}

// ---- label selectors -------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A Kubernetes label selector (`a=b,c!=d,e in (f,g),h,!i`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector(Vec<Req>);

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut cur) = (0, String::new());
        for c in s.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        parts.push(cur);
        let valid = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Option<Vec<String>> {
                let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
                Some(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some((k, v)) = p.split_once("!=") {
                Req::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                Req::NotIn(
                    k.trim().into(),
                    set(rest).ok_or(format!("bad set in {p:?}"))?,
                )
            } else if let Some((k, rest)) = p.split_once(" in ") {
                Req::In(
                    k.trim().into(),
                    set(rest).ok_or(format!("bad set in {p:?}"))?,
                )
            } else if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else {
                Req::Exists(p.into())
            };
            let key = match &req {
                Req::Eq(k, _)
                | Req::NotEq(k, _)
                | Req::In(k, _)
                | Req::NotIn(k, _)
                | Req::Exists(k)
                | Req::NotExists(k) => k,
            };
            if !valid(key) {
                return Err(format!("invalid label key {key:?} in selector {s:?}"));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::NotEq(k, v) => labels.get(k) != Some(v),
            Req::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
        })
    }
}

// ---- search ----------------------------------------------------------------------------

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// None: every namespace.
    pub namespace: Option<String>,
    /// Pod names; empty: any pod.
    pub pods: Vec<String>,
    pub selector: Selector,
    pub container: Option<String>,
    /// Only records at or after this time.
    pub since: Option<jiff::Timestamp>,
    pub grep: Option<regex::Regex>,
    /// At most this many lines: the newest ones, in time order.
    pub limit: usize,
    /// At most this many lines of each container (the newest), as `kubectl logs --tail`.
    pub tail: Option<usize>,
    /// Look in the logs of deleted pods too.
    pub include_deleted: bool,
}

/// One log line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub timestamp: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub node: String,
    pub stream: String,
    pub line: String,
    /// The pod was deleted (its logs are kept for their retention).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// A pod whose logs match the query.
#[derive(Debug, Clone)]
struct Source {
    namespace: String,
    pod: String,
    logs: PathBuf,
    deleted: bool,
}

fn read_meta(dir: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(dir.join("pod.json")).ok()?).ok()
}

fn labels_of(meta: &Value) -> BTreeMap<String, String> {
    meta.get("labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

fn sources(pods_dir: &Path, archive_dir: &Path, q: &Query) -> Vec<Source> {
    let mut out = Vec::new();
    let mut dirs: Vec<(PathBuf, bool)> = Vec::new();
    for (root, deleted) in [(pods_dir, false), (archive_dir, true)] {
        if deleted && !q.include_deleted {
            continue;
        }
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            dirs.push((e.path(), deleted));
        }
    }
    for (dir, deleted) in dirs {
        let Some(meta) = read_meta(&dir) else {
            continue;
        };
        let ns = meta["namespace"].as_str().unwrap_or_default().to_string();
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        if q.namespace.as_ref().is_some_and(|want| *want != ns) {
            continue;
        }
        if !q.pods.is_empty() && !q.pods.contains(&name) {
            continue;
        }
        if !q.selector.matches(&labels_of(&meta)) {
            continue;
        }
        out.push(Source {
            namespace: ns,
            pod: name,
            logs: dir.join("logs"),
            deleted,
        });
    }
    out
}

/// The containers of a pod's log dir (filtered by the query) with their attempts, oldest
/// first: `(container, live log path of each attempt)`.
fn attempts(logs: &Path, q: &Query) -> Vec<(String, Vec<PathBuf>)> {
    let mut out = Vec::new();
    for c in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let name = c.file_name().to_string_lossy().into_owned();
        if q.container.as_ref().is_some_and(|want| *want != name) {
            continue;
        }
        let mut nums: Vec<u32> = std::fs::read_dir(c.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".log")
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        nums.sort_unstable();
        let paths = nums
            .into_iter()
            .map(|n| c.path().join(format!("{n}.log")))
            .collect();
        out.push((name, paths));
    }
    out.sort();
    out
}

/// Turns CRI records into whole lines (joining partial records), filtered by the query.
struct LineBuilder<'q> {
    q: &'q Query,
    pending: Option<(String, String, String)>,
}

impl<'q> LineBuilder<'q> {
    fn new(q: &'q Query) -> Self {
        Self { q, pending: None }
    }

    /// Feeds one record; returns a finished line `(timestamp, stream, text)` that passes
    /// the filters.
    fn push(&mut self, rec_line: &str) -> Option<(String, String, String)> {
        let rec = parse_record(rec_line)?;
        let (ts, stream, mut text) = match self.pending.take() {
            Some((ts, stream, text)) => (ts, stream, text),
            None => (rec.timestamp, rec.stream, String::new()),
        };
        text.push_str(&rec.content);
        if rec.partial {
            self.pending = Some((ts, stream, text));
            return None;
        }
        self.keep(ts, stream, text)
    }

    /// A line left unfinished at the end of a file.
    fn finish(&mut self) -> Option<(String, String, String)> {
        let (ts, stream, text) = self.pending.take()?;
        self.keep(ts, stream, text)
    }

    fn keep(&self, ts: String, stream: String, text: String) -> Option<(String, String, String)> {
        if let Some(since) = self.q.since
            && ts.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
        {
            return None;
        }
        if let Some(re) = &self.q.grep
            && !re.is_match(&text)
        {
            return None;
        }
        Some((ts, stream, text))
    }
}

/// Reads whole records from `f` (from its position) until its end; returns the records
/// and leaves `f` after the last whole one.
fn read_records(f: &mut BufReader<File>) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    loop {
        let mut l = String::new();
        let n = f.read_line(&mut l)?;
        if n == 0 {
            break;
        }
        if !l.ends_with('\n') {
            // A record being written: read it again next time.
            f.seek_relative(-(n as i64))?;
            break;
        }
        out.push(l);
    }
    Ok(out)
}

/// A live log file being followed: the open file (so rotation loses nothing) and its inode.
struct Followed {
    reader: BufReader<File>,
    ino: u64,
    src: Source,
    container: String,
}

/// The newest `q.limit` lines matching `q` on this node, in time order, plus (for
/// following) the live files positioned after what was read.
fn search_inner(
    pods_dir: &Path,
    archive_dir: &Path,
    node: &str,
    q: &Query,
) -> (Vec<Entry>, HashMap<PathBuf, Followed>) {
    let mut all: Vec<Entry> = Vec::new();
    let mut live = HashMap::new();
    let cap = q.tail.unwrap_or(q.limit).min(q.limit);
    for src in sources(pods_dir, archive_dir, q) {
        for (container, paths) in attempts(&src.logs, q) {
            let mut ring: VecDeque<Entry> = VecDeque::new();
            for (i, path) in paths.iter().enumerate() {
                let files = log_files(path);
                let mut b = LineBuilder::new(q);
                for (j, file) in files.iter().enumerate() {
                    let Ok(f) = File::open(file) else { continue };
                    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    let mut reader = BufReader::new(f);
                    let Ok(recs) = read_records(&mut reader) else {
                        continue;
                    };
                    for r in recs {
                        if let Some((timestamp, stream, line)) = b.push(&r) {
                            ring.push_back(Entry {
                                timestamp,
                                namespace: src.namespace.clone(),
                                pod: src.pod.clone(),
                                container: container.clone(),
                                node: node.to_string(),
                                stream,
                                line,
                                deleted: src.deleted,
                            });
                            if ring.len() > cap {
                                ring.pop_front();
                            }
                        }
                    }
                    let newest = i == paths.len() - 1 && j == files.len() - 1 && file == path;
                    if newest && !src.deleted {
                        live.insert(
                            path.clone(),
                            Followed {
                                reader,
                                ino,
                                src: src.clone(),
                                container: container.clone(),
                            },
                        );
                    }
                }
                if let Some((timestamp, stream, line)) = b.finish() {
                    ring.push_back(Entry {
                        timestamp,
                        namespace: src.namespace.clone(),
                        pod: src.pod.clone(),
                        container: container.clone(),
                        node: node.to_string(),
                        stream,
                        line,
                        deleted: src.deleted,
                    });
                    if ring.len() > cap {
                        ring.pop_front();
                    }
                }
            }
            all.extend(ring);
        }
    }
    // Records of one log never go back in time, so a stable sort by timestamp interleaves
    // the logs without reordering any of them.
    all.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
    let skip = all.len().saturating_sub(q.limit);
    all.drain(..skip);
    (all, live)
}

/// The newest `q.limit` lines matching `q` on this node, in time order.
pub fn search(pods_dir: &Path, archive_dir: &Path, node: &str, q: &Query) -> Vec<Entry> {
    search_inner(pods_dir, archive_dir, node, q).0
}

/// Sends what `search` finds, then every new matching line of live pods (including pods and
/// attempts that start later) until the receiver goes away. Blocking: run it on a
/// blocking thread.
pub fn follow(
    pods_dir: &Path,
    archive_dir: &Path,
    node: &str,
    q: &Query,
    tx: tokio::sync::mpsc::Sender<Entry>,
) {
    let (initial, mut live) = search_inner(pods_dir, archive_dir, node, q);
    for e in initial {
        if tx.blocking_send(e).is_err() {
            return;
        }
    }
    // Lines are counted by `limit` only in the first part; following is unbounded.
    let mut last_scan = std::time::Instant::now();
    loop {
        let mut progressed = false;
        let mut rotated = Vec::new();
        for (path, f) in live.iter_mut() {
            let Ok(recs) = read_records(&mut f.reader) else {
                continue;
            };
            let mut b = LineBuilder::new(q);
            for r in recs {
                if let Some((timestamp, stream, line)) = b.push(&r) {
                    progressed = true;
                    let e = Entry {
                        timestamp,
                        namespace: f.src.namespace.clone(),
                        pod: f.src.pod.clone(),
                        container: f.container.clone(),
                        node: node.to_string(),
                        stream,
                        line,
                        deleted: false,
                    };
                    if tx.blocking_send(e).is_err() {
                        return;
                    }
                }
            }
            let cur = std::fs::metadata(path).ok().map(|m| m.ino());
            if cur.is_some_and(|i| i != f.ino) {
                rotated.push(path.clone());
            }
        }
        for path in rotated {
            // Drained above; continue with the new live file from its start.
            if let (Some(f), Ok(file)) = (live.get_mut(&path), File::open(&path)) {
                f.ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
                f.reader = BufReader::new(file);
            }
        }
        if tx.is_closed() {
            return;
        }
        if last_scan.elapsed() >= Duration::from_millis(500) {
            last_scan = std::time::Instant::now();
            // New pods and new attempts: read from their first line (the newest attempt of
            // every pod that existed at the search is followed already).
            for src in sources(pods_dir, archive_dir, q)
                .into_iter()
                .filter(|s| !s.deleted)
            {
                for (container, paths) in attempts(&src.logs, q) {
                    let Some(path) = paths.last() else { continue };
                    if live.contains_key(path) {
                        continue;
                    }
                    let Ok(file) = File::open(path) else { continue };
                    let meta = file.metadata().ok();
                    let reader = BufReader::new(file);
                    live.insert(
                        path.clone(),
                        Followed {
                            reader,
                            ino: meta.map(|m| m.ino()).unwrap_or(0),
                            src: src.clone(),
                            container,
                        },
                    );
                }
            }
            // Files of pods that were removed (their logs now archived) are dropped once
            // drained; the rename keeps their inode, so nothing written before is lost.
            live.retain(|p, _| p.exists());
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

// ---- retention -------------------------------------------------------------------------

/// One log file and what retention needs to know about it.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    size: u64,
    modified: SystemTime,
    /// Written by a running container (the newest attempt's live file of a live pod).
    active: bool,
}

fn pod_files(pod_dir: &Path, live: bool) -> Vec<LogFile> {
    let mut out = Vec::new();
    for c in std::fs::read_dir(pod_dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let mut newest_attempt: Option<u32> = None;
        let mut files = Vec::new();
        for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(num) = name.split('.').next().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(meta) = f.metadata() else { continue };
            if name.ends_with(".log") {
                newest_attempt = Some(newest_attempt.map_or(num, |n| n.max(num)));
            }
            files.push((num, name, meta, f.path()));
        }
        for (num, name, meta, path) in files {
            out.push(LogFile {
                active: live && name.ends_with(".log") && Some(num) == newest_attempt,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path,
            });
        }
    }
    out
}

fn limits_of(meta: Option<&Value>, r: &Retention) -> (Duration, u64) {
    let age = meta
        .and_then(|m| m["logRetention"].as_str())
        .and_then(parse_duration)
        .unwrap_or(r.max_age);
    let size = meta
        .and_then(|m| m["logMaxSize"].as_str())
        .and_then(crate::env::parse_quantity)
        .map(|b| b as u64)
        .unwrap_or(r.max_pod_bytes);
    (age, size)
}

/// Applies one pod's limits; returns the bytes its logs keep.
fn sweep_pod(dir: &Path, live: bool, r: &Retention, now: SystemTime) -> u64 {
    let meta = read_meta(dir);
    let (max_age, max_bytes) = limits_of(meta.as_ref(), r);
    let mut files = pod_files(dir, live);
    files.sort_by_key(|f| f.modified);
    let mut total: u64 = files.iter().map(|f| f.size).sum();
    for f in &files {
        if f.active {
            continue;
        }
        let too_old = now
            .duration_since(f.modified)
            .is_ok_and(|age| age > max_age);
        if (too_old || total > max_bytes) && std::fs::remove_file(&f.path).is_ok() {
            total -= f.size;
        }
    }
    total
}

/// Applies retention to every live pod's logs and the archive.
pub fn sweep(pods_dir: &Path, archive_dir: &Path, r: &Retention, now: SystemTime) {
    for e in std::fs::read_dir(pods_dir).into_iter().flatten().flatten() {
        sweep_pod(&e.path(), true, r, now);
    }
    let mut archived: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(archive_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        let left = sweep_pod(&dir, false, r, now);
        if left == 0 {
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        let newest = pod_files(&dir, false)
            .iter()
            .map(|f| f.modified)
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        archived.push((newest, left, dir));
    }
    // Over the node-wide cap: whole pods go, the one whose last line is oldest first.
    archived.sort();
    let mut total: u64 = archived.iter().map(|a| a.1).sum();
    for (_, size, dir) in archived {
        if total <= r.max_archive_bytes {
            break;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            total -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri_log::LogWriter;

    fn pod(root: &Path, uid: &str, ns: &str, name: &str, labels: Value) -> PathBuf {
        let dir = root.join(uid);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = serde_json::json!({"namespace": ns, "name": name, "uid": uid, "labels": labels});
        std::fs::write(dir.join("pod.json"), meta.to_string()).unwrap();
        dir
    }

    fn write(dir: &Path, container: &str, attempt: u32, lines: &[&str]) {
        let path = dir
            .join("logs")
            .join(container)
            .join(format!("{attempt}.log"));
        let mut w = LogWriter::open(&path, 1 << 20, 3).unwrap();
        for l in lines {
            w.write_line("stdout", l.as_bytes(), false).unwrap();
        }
    }

    fn q() -> Query {
        Query {
            limit: 100,
            include_deleted: true,
            ..Query::default()
        }
    }

    #[test]
    fn selectors() {
        let l: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (s, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (api, web)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!other", true),
            ("", true),
        ] {
            assert_eq!(Selector::parse(s).unwrap().matches(&l), want, "{s}");
        }
        assert!(Selector::parse("a b=c").is_err());
        assert!(Selector::parse("app in web").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("7"), None);
        assert_eq!(parse_duration("5x"), None);
    }

    #[test]
    fn search_filters_and_orders() {
        let root = tempfile::tempdir().unwrap();
        let (pods, arch) = (root.path().join("pods"), root.path().join("archive"));
        let a = pod(&pods, "u1", "dev", "a", serde_json::json!({"app": "a"}));
        let b = pod(&pods, "u2", "dev", "b", serde_json::json!({"app": "b"}));
        let c = pod(&pods, "u3", "prod", "c", serde_json::json!({"app": "a"}));
        write(&a, "main", 0, &["a one", "a two ERROR"]);
        write(&b, "main", 0, &["b one ERROR"]);
        write(&a, "main", 1, &["a three"]);
        write(&c, "main", 0, &["c one ERROR"]);
        let all = search(&pods, &arch, "n1", &q());
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        let mut only = q();
        only.namespace = Some("dev".into());
        only.grep = Some(regex::Regex::new("ERROR").unwrap());
        let got: Vec<String> = search(&pods, &arch, "n1", &only)
            .into_iter()
            .map(|e| format!("{}/{}", e.pod, e.line))
            .collect();
        assert_eq!(got, ["a/a two ERROR", "b/b one ERROR"]);
        let mut sel = q();
        sel.selector = Selector::parse("app=a").unwrap();
        sel.limit = 2;
        let got: Vec<String> = search(&pods, &arch, "n1", &sel)
            .into_iter()
            .map(|e| e.line)
            .collect();
        assert_eq!(
            got,
            ["a three", "c one ERROR"],
            "the newest two of the selected"
        );
        let mut tail = q();
        tail.tail = Some(1);
        let got: Vec<String> = search(&pods, &arch, "n1", &tail)
            .into_iter()
            .map(|e| e.line)
            .collect();
        assert_eq!(
            got,
            ["b one ERROR", "a three", "c one ERROR"],
            "one per container"
        );
        // Deleted: archived logs are still found, and marked.
        archive(&b, &arch, "u2").unwrap();
        std::fs::remove_dir_all(&b).unwrap();
        let mut pb = q();
        pb.pods = vec!["b".into()];
        let got = search(&pods, &arch, "n1", &pb);
        assert_eq!(got.len(), 1);
        assert!(got[0].deleted);
        pb.include_deleted = false;
        assert!(search(&pods, &arch, "n1", &pb).is_empty());
        // Since: nothing is newer than now.
        let mut s = q();
        s.since = Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1));
        assert!(search(&pods, &arch, "n1", &s).is_empty());
    }

    #[test]
    fn follow_sees_new_lines_and_new_pods() {
        let root = tempfile::tempdir().unwrap();
        let (pods, arch) = (root.path().join("pods"), root.path().join("archive"));
        let a = pod(&pods, "u1", "dev", "a", serde_json::json!({}));
        write(&a, "main", 0, &["old"]);
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        let (p2, a2) = (pods.clone(), arch.clone());
        let h = std::thread::spawn(move || follow(&p2, &a2, "n1", &q(), tx));
        assert_eq!(rx.blocking_recv().unwrap().line, "old");
        write(&a, "main", 0, &["new"]);
        assert_eq!(rx.blocking_recv().unwrap().line, "new");
        let b = pod(&pods, "u2", "dev", "b", serde_json::json!({}));
        write(&b, "side", 0, &["from b"]);
        let e = rx.blocking_recv().unwrap();
        assert_eq!((e.pod.as_str(), e.line.as_str()), ("b", "from b"));
        drop(rx);
        h.join().unwrap();
    }

    #[test]
    fn retention_by_age_and_size() {
        let root = tempfile::tempdir().unwrap();
        let (pods, arch) = (root.path().join("pods"), root.path().join("archive"));
        let a = pod(&pods, "u1", "dev", "a", serde_json::json!({}));
        let line = "x".repeat(100);
        write(&a, "main", 0, &[line.as_str(); 10]);
        write(&a, "main", 1, &[line.as_str(); 10]);
        let old = a.join("logs/main/0.log");
        let live = a.join("logs/main/1.log");
        let week_ago = SystemTime::now() - Duration::from_secs(8 * 86400);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(week_ago)
            .unwrap();
        File::options()
            .write(true)
            .open(&live)
            .unwrap()
            .set_modified(week_ago)
            .unwrap();
        let r = Retention::default();
        sweep(&pods, &arch, &r, SystemTime::now());
        assert!(!old.exists(), "an old finished attempt goes");
        assert!(live.exists(), "the running container's file stays");
        // Size: a deleted pod over its cap loses its oldest files; an archive whose files
        // are all too old goes entirely.
        let b = pod(&pods, "u2", "dev", "b", serde_json::json!({}));
        write(&b, "main", 0, &[line.as_str(); 10]);
        write(&b, "main", 1, &[line.as_str(); 10]);
        File::options()
            .write(true)
            .open(b.join("logs/main/0.log"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        archive(&b, &arch, "u2").unwrap();
        std::fs::remove_dir_all(&b).unwrap();
        let small = Retention {
            max_pod_bytes: 1500,
            ..Retention::default()
        };
        sweep(&pods, &arch, &small, SystemTime::now());
        assert!(!arch.join("u2/logs/main/0.log").exists());
        assert!(arch.join("u2/logs/main/1.log").exists());
        let later = SystemTime::now() + Duration::from_secs(8 * 86400);
        sweep(&pods, &arch, &r, later);
        assert!(!arch.join("u2").exists(), "expired archive removed");
    }
}
