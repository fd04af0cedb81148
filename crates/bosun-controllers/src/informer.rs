//! Shared informers: one watch per kind feeds a reflector cache and fans every touched object
//! (including deletions, which kube's shared reflector streams leave out) to all controllers
//! that subscribe. Controllers read the cache only to route events; each reconcile decides
//! from fresh reads where a stale cache could make it act twice.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Room for bursts; a subscriber that still falls behind gets every cached object replayed.
const FANOUT_CAPACITY: usize = 8192;

pub struct Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    tx: broadcast::Sender<Arc<K>>,
}

impl<K> Clone for Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Informer {
            store: self.store.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    /// Starts watching `api`; the watch runs until `shutdown`.
    pub fn start(api: Api<K>, shutdown: CancellationToken) -> Self {
        Self::start_with(api, Default::default(), shutdown)
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    pub fn start_with(api: Api<K>, dyntype: K::DynamicType, shutdown: CancellationToken) -> Self {
        let mut writer: reflector::store::Writer<K> =
            reflector::store::Writer::new(dyntype.clone());
        let store = writer.as_reader();
        let (tx, _) = broadcast::channel(FANOUT_CAPACITY);
        let fan = tx.clone();
        let kind = K::kind(&dyntype).into_owned();
        tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            // Objects present before a re-list, to notice deletions missed while disconnected.
            let mut before_relist: Option<HashMap<ObjectRef<K>, Arc<K>>> = None;
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = stream.next() => ev,
                };
                let ev = match ev {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!(kind, error = %e, "watch failed; retrying");
                        continue;
                    }
                    Some(Ok(ev)) => ev,
                };
                if matches!(ev, Event::Init) {
                    before_relist = Some(
                        writer
                            .as_reader()
                            .state()
                            .into_iter()
                            .map(|o| (ObjectRef::from_obj_with(o.as_ref(), dyntype.clone()), o))
                            .collect(),
                    );
                }
                writer.apply_watcher_event(&ev);
                match ev {
                    Event::Apply(o) | Event::Delete(o) => {
                        let _ = fan.send(Arc::new(o));
                    }
                    Event::InitDone => {
                        let reader = writer.as_reader();
                        for o in reader.state() {
                            let _ = fan.send(o);
                        }
                        for (r, o) in before_relist.take().unwrap_or_default() {
                            if reader.get(&r).is_none() {
                                let _ = fan.send(o);
                            }
                        }
                    }
                    Event::Init | Event::InitApply(_) => {}
                }
            }
        });
        Informer { store, tx }
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every cached object, then every object touched from now on (created, changed or
    /// deleted), so a late subscriber still sees what already exists. Falling behind replays
    /// the whole cache rather than silently losing events.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        // Subscribe before reading the cache: an event in between arrives twice, never zero
        // times, and reconciling twice is harmless.
        let rx = self.tx.subscribe();
        let store = self.store.clone();
        let current = futures::stream::iter(store.state());
        let live = futures::stream::unfold((rx, store), |(mut rx, store)| async move {
            match rx.recv().await {
                Ok(o) => Some((vec![o], (rx, store))),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let all = store.state();
                    Some((all, (rx, store)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .flat_map(futures::stream::iter);
        current.chain(live)
    }

    /// Waits for the first complete list.
    pub async fn ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}
