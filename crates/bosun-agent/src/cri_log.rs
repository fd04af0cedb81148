//! Container logs in the Kubernetes CRI format
//! (`2026-11-24T11:00:00.123456789Z stdout F line`), with size-based rotation, and the reader
//! that serves them (tail, since, limit, timestamps, follow across rotation).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest line content written as one record; longer lines are split into `P` records, as
/// the CRI does, so one runaway line cannot grow a record without bound.
pub const MAX_RECORD: usize = 16 * 1024;

/// Appends CRI records to `path`, rotating to `path.1` .. `path.{max_files-1}` when the file
/// would exceed `max_bytes`.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: usize,
    /// Time of the last record: records never go back in time, so sorting by timestamp
    /// keeps the order they were written in.
    last: Option<jiff::Timestamp>,
}

impl LogWriter {
    pub fn open(path: &Path, max_bytes: u64, max_files: usize) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max_bytes: max_bytes.max(1024),
            max_files: max_files.max(1),
            last: None,
        })
    }

    /// Writes one line (without its newline) of `stream` ("stdout"/"stderr"). `partial` marks
    /// a line that was cut before its newline (e.g. the process exited mid-line).
    pub fn write_line(&mut self, stream: &str, line: &[u8], partial: bool) -> io::Result<()> {
        self.write_line_at(jiff::Timestamp::now(), stream, line, partial)
    }

    /// Like `write_line`, with the time the line was produced (copied from another log).
    pub fn write_line_at(
        &mut self,
        ts: jiff::Timestamp,
        stream: &str,
        line: &[u8],
        partial: bool,
    ) -> io::Result<()> {
        let mut chunks = line.chunks(MAX_RECORD).peekable();
        if line.is_empty() {
            return self.write_record(ts, stream, b"", partial);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.write_record(ts, stream, chunk, partial || !last)?;
        }
        Ok(())
    }

    fn write_record(
        &mut self,
        ts: jiff::Timestamp,
        stream: &str,
        content: &[u8],
        partial: bool,
    ) -> io::Result<()> {
        let ts = match self.last {
            Some(last) if ts <= last => last
                .checked_add(jiff::SignedDuration::from_nanos(1))
                .unwrap_or(last),
            _ => ts,
        };
        self.last = Some(ts);
        let tag = if partial { "P" } else { "F" };
        let mut rec = format!("{ts:.9} {stream} {tag} ").into_bytes();
        rec.extend_from_slice(content);
        rec.push(b'\n');
        if self.size > 0 && self.size + rec.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let oldest = rotated_path(&self.path, self.max_files - 1);
        let _ = std::fs::remove_file(&oldest);
        for i in (1..self.max_files - 1).rev() {
            let from = rotated_path(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated_path(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Copies a container's output pipes (`(stream name, read end)`, stdout first) into `log`
/// from one thread, until every pipe reaches end of file.
///
/// The pipes are polled together and each read is logged, stamped with the time of the
/// read, before the next one is made, so a stream's lines cannot overtake lines written
/// earlier on the other one (as with a reader thread per stream racing for the log). What
/// waits on both pipes at once is taken in the order given. A line longer than
/// `MAX_RECORD` without its newline is logged in partial records as it arrives; an
/// unfinished last line is logged as partial at end of file.
pub fn pump(streams: Vec<(&'static str, OwnedFd)>, log: &mut LogWriter) {
    use rustix::event::{PollFd, PollFlags, poll};
    struct Pipe {
        name: &'static str,
        file: File,
        pending: Vec<u8>,
        open: bool,
    }
    let mut pipes: Vec<Pipe> = streams
        .into_iter()
        .map(|(name, fd)| Pipe {
            name,
            file: File::from(fd),
            pending: Vec::new(),
            open: true,
        })
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let open: Vec<usize> = (0..pipes.len()).filter(|&i| pipes[i].open).collect();
        if open.is_empty() {
            return;
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = open
                .iter()
                .map(|&i| PollFd::new(&pipes[i].file, PollFlags::IN))
                .collect();
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            fds.iter().map(|f| !f.revents().is_empty()).collect()
        };
        for (&i, ready) in open.iter().zip(ready) {
            if !ready {
                continue;
            }
            let p = &mut pipes[i];
            let n = match p.file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let ts = jiff::Timestamp::now();
            if n == 0 {
                p.open = false;
                if !p.pending.is_empty() {
                    let _ = log.write_line_at(ts, p.name, &p.pending, true);
                    p.pending.clear();
                }
                continue;
            }
            p.pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(nl) = p.pending[start..].iter().position(|&b| b == b'\n') {
                let _ = log.write_line_at(ts, p.name, &p.pending[start..start + nl], false);
                start += nl + 1;
            }
            // An endless line is written as it comes, in partial records.
            while p.pending.len() - start >= MAX_RECORD {
                let _ = log.write_line_at(ts, p.name, &p.pending[start..start + MAX_RECORD], true);
                start += MAX_RECORD;
            }
            p.pending.drain(..start);
        }
    }
}

pub fn rotated_path(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// All files of one log, oldest first (rotated ones, then the live file).
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(usize, PathBuf)> = Vec::new();
    for i in 1..1000 {
        let p = rotated_path(path, i);
        if !p.exists() {
            break;
        }
        rotated.push((i, p));
    }
    let mut out: Vec<PathBuf> = rotated.into_iter().rev().map(|(_, p)| p).collect();
    if path.exists() {
        out.push(path.to_owned());
    }
    out
}

/// One parsed CRI record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub timestamp: String,
    pub stream: String,
    pub partial: bool,
    pub content: String,
}

pub fn parse_record(line: &str) -> Option<Record> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next()?.to_owned();
    let stream = parts.next()?.to_owned();
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("").to_owned();
    Some(Record {
        timestamp,
        stream,
        partial: tag.starts_with('P'),
        content,
    })
}

/// Options of `GET /containerLogs` (the kubelet's PodLogOptions subset).
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
    /// Records from this time on (`sinceTime`; `since_seconds` wins when both are set).
    pub since_time: Option<jiff::Timestamp>,
    pub limit_bytes: Option<usize>,
}

/// Renders one record for the client: content only, or `<ts> content` with timestamps.
fn render(rec: &Record, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(rec.timestamp.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(rec.content.as_bytes());
    if !rec.partial {
        out.push(b'\n');
    }
}

fn since_cutoff(opts: &LogOptions) -> Option<jiff::Timestamp> {
    opts.since_seconds
        .map(|s| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s.max(0)))
        .or(opts.since_time)
}

fn keep(rec: &Record, cutoff: Option<jiff::Timestamp>) -> bool {
    match cutoff {
        None => true,
        Some(c) => rec
            .timestamp
            .parse::<jiff::Timestamp>()
            .map(|t| t >= c)
            .unwrap_or(true),
    }
}

/// Reads the whole current log (all rotated files) and renders it per `opts`, ignoring
/// `follow`. Returns the bytes and, for following, the open live file positioned at its end.
pub fn read_log(path: &Path, opts: &LogOptions) -> io::Result<(Vec<u8>, Option<File>)> {
    let cutoff = since_cutoff(opts);
    // Logical lines: each a list of records ending with an F record (or a trailing P).
    let mut lines: Vec<Vec<Record>> = Vec::new();
    let mut pending: Vec<Record> = Vec::new();
    let mut live = None;
    let files = log_files(path);
    for (i, p) in files.iter().enumerate() {
        let mut f = match File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut buf = String::new();
        f.read_to_string(&mut buf)?;
        // A record being written may be incomplete at the end; only whole lines count.
        let complete = match buf.rfind('\n') {
            Some(n) => n + 1,
            None => 0,
        };
        for l in buf[..complete].lines() {
            let Some(rec) = parse_record(l) else { continue };
            if !keep(&rec, cutoff) {
                continue;
            }
            let partial = rec.partial;
            pending.push(rec);
            if !partial {
                lines.push(std::mem::take(&mut pending));
            }
        }
        if i == files.len() - 1 && *p == path {
            f.seek(SeekFrom::Start(complete as u64))?;
            live = Some(f);
        }
    }
    if !pending.is_empty() {
        lines.push(pending);
    }
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = Vec::new();
    for recs in &lines {
        for r in recs {
            render(r, opts.timestamps, &mut out);
        }
    }
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    Ok((out, live))
}

/// Streams a log into `tx`: first what `read_log` returns, then (with `follow`) new records as
/// they are written, across rotations, until `done()` says the writer has finished and the
/// file is drained, or the receiver goes away. Blocking; run on a blocking thread.
pub fn stream_log(
    path: &Path,
    opts: &LogOptions,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    done: impl Fn() -> bool,
) -> io::Result<()> {
    let (initial, live) = read_log(path, opts)?;
    let mut sent = initial.len();
    if !initial.is_empty() && tx.blocking_send(initial).is_err() {
        return Ok(());
    }
    if !opts.follow {
        return Ok(());
    }
    let limit = opts.limit_bytes.unwrap_or(usize::MAX);
    let mut reader = live.map(BufReader::new);
    let mut ino = reader
        .as_ref()
        .and_then(|r| r.get_ref().metadata().ok())
        .map(|m| m.ino());
    let mut partial_line = String::new();
    loop {
        if sent >= limit {
            return Ok(());
        }
        let mut progressed = false;
        if let Some(r) = reader.as_mut() {
            loop {
                let mut l = String::new();
                let n = r.read_line(&mut l)?;
                if n == 0 {
                    break;
                }
                if !l.ends_with('\n') {
                    // Half-written record: keep it and finish it on the next read.
                    partial_line.push_str(&l);
                    break;
                }
                progressed = true;
                let full = std::mem::take(&mut partial_line) + &l;
                if let Some(rec) = parse_record(&full) {
                    let mut out = Vec::new();
                    render(&rec, opts.timestamps, &mut out);
                    out.truncate(limit - sent);
                    sent += out.len();
                    if tx.blocking_send(out).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if progressed {
            continue;
        }
        // At the end of the file we hold: has the live file been rotated away or (re)created?
        let current = std::fs::metadata(path).ok().map(|m| m.ino());
        if current.is_some()
            && current != ino
            && let Ok(f) = File::open(path)
        {
            ino = current;
            reader = Some(BufReader::new(f));
            partial_line.clear();
            continue;
        }
        if done() {
            return Ok(());
        }
        if tx.is_closed() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_parses_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 1024, 3).unwrap();
        for i in 0..100 {
            w.write_line("stdout", format!("line {i:03}").as_bytes(), false)
                .unwrap();
        }
        let files = log_files(&path);
        assert_eq!(files.len(), 3, "live file plus two rotated: {files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 1024);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let rec = parse_record(text.lines().last().unwrap()).unwrap();
        assert_eq!(rec.content, "line 099");
        assert_eq!(rec.stream, "stdout");
        assert!(!rec.partial);
        assert!(rec.timestamp.parse::<jiff::Timestamp>().is_ok());
        // The oldest lines were rotated out; what remains is contiguous and ordered.
        let (out, _) = read_log(&path, &LogOptions::default()).unwrap();
        let out = String::from_utf8(out).unwrap();
        let nums: Vec<u32> = out
            .lines()
            .map(|l| l[5..].parse().unwrap())
            .collect::<Vec<_>>();
        assert!(nums[0] > 0);
        assert_eq!(*nums.last().unwrap(), 99);
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn tail_timestamps_limit_and_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 1 << 20, 5).unwrap();
        w.write_line("stdout", b"a", false).unwrap();
        w.write_line("stderr", b"b", false).unwrap();
        let long = vec![b'x'; MAX_RECORD + 10];
        w.write_line("stdout", &long, false).unwrap();
        let all = String::from_utf8(read_log(&path, &LogOptions::default()).unwrap().0).unwrap();
        assert_eq!(all.lines().count(), 3, "split record is rejoined");
        assert_eq!(all.lines().nth(2).unwrap().len(), MAX_RECORD + 10);
        let opts = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        let tail = String::from_utf8(read_log(&path, &opts).unwrap().0).unwrap();
        assert!(tail.starts_with("b\n"));
        let opts = LogOptions {
            tail_lines: Some(3),
            timestamps: true,
            limit_bytes: Some(40),
            ..Default::default()
        };
        let ts = String::from_utf8(read_log(&path, &opts).unwrap().0).unwrap();
        assert_eq!(ts.len(), 40);
        let (stamp, rest) = ts.split_once(' ').unwrap();
        assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
        assert!(rest.starts_with("a\n"));
    }

    #[test]
    fn follow_crosses_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 1024, 5).unwrap();
        w.write_line("stdout", b"first", false).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let p2 = path.clone();
        let h = std::thread::spawn(move || {
            stream_log(
                &p2,
                &LogOptions {
                    follow: true,
                    ..Default::default()
                },
                tx,
                move || stop2.load(std::sync::atomic::Ordering::SeqCst),
            )
        });
        // Enough lines to rotate several times while the follower reads.
        for i in 0..60 {
            w.write_line("stdout", format!("n{i:02}").as_bytes(), false)
                .unwrap();
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(150));
            }
        }
        std::thread::sleep(Duration::from_millis(400));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().unwrap().unwrap();
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            got.extend(c);
        }
        let got = String::from_utf8(got).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines[0], "first");
        assert_eq!(lines.len(), 61, "no line lost or repeated: {lines:?}");
        assert_eq!(lines[60], "n59");
    }
}
