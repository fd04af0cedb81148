//! An in-memory `Store` with etcd semantics, for tests at the trait boundary.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bosun_store::{
    EventKind, KeyValue, LeaseId, ListOptions, ListResult, Result, Revision, Store, StoreError,
    WatchEvent, WatchItem, WatchStream,
};
use bytes::Bytes;
use tokio::sync::broadcast;

struct State {
    rev: Revision,
    compacted: Revision,
    kvs: BTreeMap<String, KeyValue>,
    /// Every change, oldest first; a delete keeps the deleted value in `prev`.
    log: Vec<WatchEvent>,
    next_lease: LeaseId,
}

pub struct MemStore {
    state: Mutex<State>,
    tx: broadcast::Sender<WatchEvent>,
    progress_every: Duration,
}

impl MemStore {
    pub fn new(progress_every: Duration) -> MemStore {
        MemStore {
            state: Mutex::new(State {
                rev: 1,
                compacted: 0,
                kvs: BTreeMap::new(),
                log: Vec::new(),
                next_lease: 1,
            }),
            tx: broadcast::channel(4096).0,
            progress_every,
        }
    }

    fn record(&self, st: &mut State, ev: WatchEvent) {
        st.log.push(ev.clone());
        let _ = self.tx.send(ev);
    }
}

fn event_rev(ev: &WatchEvent) -> Revision {
    ev.kv.mod_revision
}

#[async_trait]
impl Store for MemStore {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.state.lock().unwrap().rev)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.state.lock().unwrap().kvs.get(key).cloned())
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let st = self.state.lock().unwrap();
        let at = opts.revision.unwrap_or(st.rev);
        if at > st.rev {
            return Err(StoreError::FutureRevision(at));
        }
        if at < st.compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: st.compacted,
            });
        }
        let mut view = st.kvs.clone();
        for ev in st.log.iter().rev().take_while(|e| event_rev(e) > at) {
            match ev.kind {
                EventKind::Put => match &ev.prev {
                    Some(p) => {
                        view.insert(ev.kv.key.clone(), p.clone());
                    }
                    None => {
                        view.remove(&ev.kv.key);
                    }
                },
                EventKind::Delete => {
                    if let Some(p) = &ev.prev {
                        view.insert(ev.kv.key.clone(), p.clone());
                    }
                }
            }
        }
        let mut kvs: Vec<KeyValue> = view
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| {
                opts.start_after
                    .as_ref()
                    .is_none_or(|s| k.as_str() > s.as_str())
            })
            .map(|(_, v)| v.clone())
            .collect();
        let mut more = false;
        if let Some(l) = opts.limit
            && kvs.len() > l
        {
            kvs.truncate(l);
            more = true;
        }
        Ok(ListResult {
            kvs,
            revision: at,
            more,
        })
    }

    async fn create(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<KeyValue> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("empty key".into()));
        }
        let mut st = self.state.lock().unwrap();
        if st.kvs.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.into()));
        }
        st.rev += 1;
        let kv = KeyValue {
            key: key.into(),
            value,
            create_revision: st.rev,
            mod_revision: st.rev,
            lease,
        };
        st.kvs.insert(key.into(), kv.clone());
        self.record(
            &mut st,
            WatchEvent {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: None,
            },
        );
        Ok(kv)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue> {
        let mut st = self.state.lock().unwrap();
        let prev = st
            .kvs
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.into()))?;
        if let Some(e) = expected
            && e != prev.mod_revision
        {
            return Err(StoreError::Conflict {
                key: key.into(),
                current: prev.mod_revision,
            });
        }
        st.rev += 1;
        let kv = KeyValue {
            key: key.into(),
            value,
            create_revision: prev.create_revision,
            mod_revision: st.rev,
            lease,
        };
        st.kvs.insert(key.into(), kv.clone());
        self.record(
            &mut st,
            WatchEvent {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: Some(prev),
            },
        );
        Ok(kv)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let mut st = self.state.lock().unwrap();
        let prev = st
            .kvs
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.into()))?;
        if let Some(e) = expected
            && e != prev.mod_revision
        {
            return Err(StoreError::Conflict {
                key: key.into(),
                current: prev.mod_revision,
            });
        }
        st.rev += 1;
        st.kvs.remove(key);
        let mut kv = prev.clone();
        kv.mod_revision = st.rev;
        self.record(
            &mut st,
            WatchEvent {
                kind: EventKind::Delete,
                kv: kv.clone(),
                prev: Some(prev),
            },
        );
        Ok(kv)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let st = self.state.lock().unwrap();
        if after < st.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: st.compacted,
            });
        }
        let backlog: Vec<WatchEvent> = st
            .log
            .iter()
            .filter(|e| event_rev(e) > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let last = backlog.last().map(event_rev).unwrap_or(after);
        let rx = self.tx.subscribe();
        drop(st);
        let prefix = prefix.to_string();
        let every = self.progress_every;
        let seen = last.max(after);
        struct S {
            backlog: std::collections::VecDeque<WatchEvent>,
            rx: broadcast::Receiver<WatchEvent>,
            prefix: String,
            seen: Revision,
            every: Duration,
        }
        let s = S {
            backlog: backlog.into(),
            rx,
            prefix,
            seen,
            every,
        };
        let stream = futures::stream::unfold(s, |mut s| async move {
            if let Some(ev) = s.backlog.pop_front() {
                s.seen = event_rev(&ev);
                return Some((Ok(WatchItem::Event(ev)), s));
            }
            loop {
                match tokio::time::timeout(s.every, s.rx.recv()).await {
                    Ok(Ok(ev)) => {
                        if event_rev(&ev) <= s.seen || !ev.kv.key.starts_with(&s.prefix) {
                            if event_rev(&ev) > s.seen {
                                s.seen = event_rev(&ev);
                            }
                            continue;
                        }
                        s.seen = event_rev(&ev);
                        return Some((Ok(WatchItem::Event(ev)), s));
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                        return Some((Err(StoreError::Backend("watcher lagged".into())), s));
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                    Err(_) => {
                        if s.rx.is_empty() {
                            return Some((Ok(WatchItem::Progress(s.seen)), s));
                        }
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        if revision <= st.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: st.compacted,
            });
        }
        if revision > st.rev {
            return Err(StoreError::FutureRevision(revision));
        }
        st.compacted = revision;
        let c = st.compacted;
        st.log.retain(|e| event_rev(e) > c);
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.state.lock().unwrap().compacted)
    }

    async fn grant_lease(&self, _ttl_seconds: i64) -> Result<LeaseId> {
        let mut st = self.state.lock().unwrap();
        st.next_lease += 1;
        Ok(st.next_lease)
    }

    async fn keep_alive(&self, _lease: LeaseId) -> Result<()> {
        Ok(())
    }

    async fn revoke_lease(&self, _lease: LeaseId) -> Result<()> {
        Ok(())
    }
}
