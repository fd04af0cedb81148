//! Watch streams: replay from the log, then follow the live feed.
//!
//! A stream remembers `seen`, the revision up to which it has looked at every change
//! (matching its prefix or not). It is fed from the writer's broadcast of committed
//! batches; whenever that feed cannot continue exactly at `seen + 1` (at the start, or
//! after the stream fell behind and the broadcast dropped batches) it reads the log
//! from `seen + 1` instead. Both sources are in revision order and everything at or
//! below `seen` is skipped, so the stream has no gaps and no duplicates.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::ReadableDatabase;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Inner, LOG, META, META_COMPACTED, META_REVISION, backend, meta_get};
use crate::codec::split_event;
use crate::{Result, Revision, StoreError, WatchEvent, WatchItem, WatchStream};

/// Log records read per catch-up step, bounding the memory of a replay.
const CATCH_UP_CHUNK: usize = 512;

struct State {
    inner: Weak<Inner>,
    live: broadcast::Receiver<Arc<Vec<WatchEvent>>>,
    prefix: String,
    seen: Revision,
    pending: VecDeque<WatchEvent>,
    catch_up: bool,
    progress_every: Duration,
    last_yield: Instant,
    done: bool,
}

pub(super) fn stream(
    inner: Weak<Inner>,
    live: broadcast::Receiver<Arc<Vec<WatchEvent>>>,
    prefix: String,
    after: Revision,
    progress_every: Duration,
) -> WatchStream {
    let state = State {
        inner,
        live,
        prefix,
        seen: after,
        pending: VecDeque::new(),
        catch_up: true,
        progress_every,
        last_yield: Instant::now(),
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    }))
}

impl State {
    async fn next(&mut self) -> Option<Result<WatchItem>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(ev) = self.pending.pop_front() {
                self.last_yield = Instant::now();
                return Some(Ok(WatchItem::Event(ev)));
            }
            if self.catch_up {
                if let Err(e) = self.read_log().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            tokio::select! {
                batch = self.live.recv() => match batch {
                    Ok(batch) => self.take_batch(&batch),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up = true,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.done = true;
                        return Some(Err(StoreError::Backend("store closed".into())));
                    }
                },
                _ = tokio::time::sleep_until(self.last_yield + self.progress_every) => {
                    self.last_yield = Instant::now();
                    return Some(Ok(WatchItem::Progress(self.seen)));
                }
            }
        }
    }

    fn take_batch(&mut self, batch: &[WatchEvent]) {
        for ev in batch {
            let rev = ev.kv.mod_revision;
            if rev <= self.seen {
                continue;
            }
            if rev != self.seen + 1 {
                // Something between was not seen: fetch it from the log first. The
                // rest of this batch is committed, so the log replay covers it too.
                self.catch_up = true;
                return;
            }
            self.seen = rev;
            if ev.kv.key.starts_with(&self.prefix) {
                self.pending.push_back(ev.clone());
            }
        }
    }

    async fn read_log(&mut self) -> Result<()> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| StoreError::Backend("store closed".into()))?;
        let (prefix, seen) = (self.prefix.clone(), self.seen);
        let (events, seen, done) =
            tokio::task::spawn_blocking(move || read_log(&inner, &prefix, seen))
                .await
                .map_err(backend)??;
        self.pending.extend(events);
        self.seen = seen;
        self.catch_up = !done;
        Ok(())
    }
}

/// Reads up to one chunk of the log after `seen`. Returns the matching events, the
/// revision read up to, and whether that is the end of the log.
fn read_log(
    inner: &Inner,
    prefix: &str,
    seen: Revision,
) -> Result<(Vec<WatchEvent>, Revision, bool)> {
    let txn = inner.db.begin_read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let cur = meta_get(&meta, META_REVISION)?;
    let compacted = meta_get(&meta, META_COMPACTED)?;
    if seen < compacted {
        return Err(StoreError::Compacted {
            requested: seen,
            compacted,
        });
    }
    let log = txn.open_table(LOG).map_err(backend)?;
    let mut events = Vec::new();
    let mut last = seen;
    for (n, entry) in log.range((seen + 1) as u64..).map_err(backend)?.enumerate() {
        if n == CATCH_UP_CHUNK {
            return Ok((events, last, false));
        }
        let (rev, v) = entry.map_err(backend)?;
        let rev = rev.value() as Revision;
        let raw = split_event(v.value())?;
        if raw.key.starts_with(prefix) {
            events.push(raw.to_event(rev)?);
        }
        last = rev;
    }
    // Every revision has exactly one log record, so the log ends at `cur`.
    debug_assert_eq!(last, cur);
    Ok((events, cur, true))
}
