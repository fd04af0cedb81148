//! Shared informers: one watch per kind feeds a reflector cache and fans every touched object
//! (including deletions, which kube's shared reflector streams leave out) to every subscriber.
//!
//! The watch restarts with kube-runtime's default backoff after an error and re-lists when the
//! API answers 410 Gone; the cache keeps serving the last known state meanwhile. After each
//! complete list, objects deleted while disconnected are notified too, then
//! [`Notice::Synced`].
//!
//! Controllers read the cache only to route events; each reconcile decides from fresh reads
//! where a stale cache could make it act twice. Consumers that keep state derived from the
//! objects (DNS records, pod workers, balancer tables) look each touched object up with
//! [`Informer::current`] and compare everything against the cache at `Synced`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Room for bursts; a subscriber that still falls behind gets every cached object replayed.
/// tokio's broadcast channel allocates every slot up front (40 bytes or more each) and
/// `bosun up` runs about 90 informers: 8192 slots held 28 MB, most of the idle heap.
const FANOUT_CAPACITY: usize = 1024;

/// What a subscriber hears.
#[derive(Debug, Clone)]
pub enum Notice<K> {
    /// This object was created, changed or deleted; [`Informer::current`] says which state it
    /// is in now.
    Touched(Arc<K>),
    /// The cache holds a complete list: after the first list, after every re-list, and after
    /// this subscriber fell behind and got the cache replayed. State derived from the objects
    /// is compared against the whole cache now, since deletions may have gone unnotified.
    Synced,
}

pub struct Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    tx: broadcast::Sender<Notice<K>>,
    listed: Arc<AtomicBool>,
    dyntype: K::DynamicType,
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
            listed: self.listed.clone(),
            dyntype: self.dyntype.clone(),
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
        Self::start_with_config(
            api,
            Default::default(),
            watcher::Config::default(),
            shutdown,
        )
    }

    /// Starts watching the objects of `api` that `config`'s label and field selectors pick.
    pub fn start_config(api: Api<K>, config: watcher::Config, shutdown: CancellationToken) -> Self {
        Self::start_with_config(api, Default::default(), config, shutdown)
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    /// For kinds known only at run time (`DynamicObject`).
    pub fn start_with(api: Api<K>, dyntype: K::DynamicType, shutdown: CancellationToken) -> Self {
        Self::start_with_config(api, dyntype, watcher::Config::default(), shutdown)
    }

    pub fn start_with_config(
        api: Api<K>,
        dyntype: K::DynamicType,
        config: watcher::Config,
        shutdown: CancellationToken,
    ) -> Self {
        let mut writer: reflector::store::Writer<K> =
            reflector::store::Writer::new(dyntype.clone());
        let store = writer.as_reader();
        let (tx, _) = broadcast::channel(FANOUT_CAPACITY);
        let listed = Arc::new(AtomicBool::new(false));
        let fan = tx.clone();
        let done = listed.clone();
        let kind = K::kind(&dyntype).into_owned();
        let dt = dyntype.clone();
        tokio::spawn(async move {
            let stream = watcher::watcher(api, config).default_backoff();
            futures::pin_mut!(stream);
            // Objects present before a re-list, to notice deletions missed while disconnected.
            let mut before_relist: Option<HashMap<ObjectRef<K>, Arc<K>>> = None;
            let cache = writer.as_reader();
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
                            .map(|o| (ObjectRef::from_obj_with(o.as_ref(), dt.clone()), o))
                            .collect(),
                    );
                }
                writer.apply_watcher_event(&ev);
                match ev {
                    Event::Apply(o) => {
                        // The store's copy, shared: one deep copy of each object, not two.
                        let stored = cache.get(&ObjectRef::from_obj_with(&o, dt.clone()));
                        let o = stored.unwrap_or_else(|| Arc::new(o));
                        let _ = fan.send(Notice::Touched(o));
                    }
                    Event::Delete(o) => {
                        let _ = fan.send(Notice::Touched(Arc::new(o)));
                    }
                    Event::InitDone => {
                        // Set before the notices go out: a subscriber that reads it unset
                        // subscribed before them and hears `Synced` below.
                        done.store(true, Ordering::Release);
                        let reader = writer.as_reader();
                        for o in reader.state() {
                            let _ = fan.send(Notice::Touched(o));
                        }
                        for (r, o) in before_relist.take().unwrap_or_default() {
                            if reader.get(&r).is_none() {
                                let _ = fan.send(Notice::Touched(o));
                            }
                        }
                        let _ = fan.send(Notice::Synced);
                    }
                    Event::Init | Event::InitApply(_) => {}
                }
            }
        });
        Informer {
            store,
            tx,
            listed,
            dyntype,
        }
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The cached version of `obj` while it exists: same name and uid. None once it is
    /// deleted, or replaced by a new object of the same name (which is notified on its own).
    pub fn current(&self, obj: &K) -> Option<Arc<K>> {
        let r = ObjectRef::from_obj_with(obj, self.dyntype.clone());
        self.store
            .get(&r)
            .filter(|c| c.meta().uid.is_none() || c.meta().uid == obj.meta().uid)
    }

    /// Every cached object, then every object touched from now on (created, changed or
    /// deleted), so a late subscriber still sees what already exists. Falling behind replays
    /// the whole cache rather than silently losing events.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.notices().filter_map(|n| {
            futures::future::ready(match n {
                Notice::Touched(o) => Some(o),
                Notice::Synced => None,
            })
        })
    }

    /// Like [`Informer::subscribe`], with a [`Notice::Synced`] after each complete list (and
    /// after the replay, when the first list is already done).
    pub fn notices(&self) -> impl Stream<Item = Notice<K>> + Send + 'static {
        // Subscribe before reading the cache: an event in between arrives twice, never zero
        // times, and handling an object twice is harmless.
        let rx = self.tx.subscribe();
        let store = self.store.clone();
        let mut current: Vec<Notice<K>> = store.state().into_iter().map(Notice::Touched).collect();
        if self.listed.load(Ordering::Acquire) {
            current.push(Notice::Synced);
        }
        let live = futures::stream::unfold((rx, store), |(mut rx, store)| async move {
            match rx.recv().await {
                Ok(n) => Some((vec![n], (rx, store))),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let mut all: Vec<Notice<K>> =
                        store.state().into_iter().map(Notice::Touched).collect();
                    all.push(Notice::Synced);
                    Some((all, (rx, store)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .flat_map(futures::stream::iter);
        futures::stream::iter(current).chain(live)
    }

    /// Waits for the first complete list.
    pub async fn ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}
