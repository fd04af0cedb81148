//! The one reconcile shape every controller uses: a kube-runtime `Controller` fed by shared
//! informers, an idempotent `reconcile(object) -> Action`, and a common error policy.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Resource;
use kube::runtime::controller::{Action, Config, Controller};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Parallel reconciles per controller unless a controller needs them serialised.
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// Wraps `anyhow::Error` for kube-runtime, which wants `std::error::Error`.
#[derive(Debug)]
pub struct ReconcileError(pub anyhow::Error);

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for ReconcileError {}

impl From<anyhow::Error> for ReconcileError {
    fn from(e: anyhow::Error) -> Self {
        ReconcileError(e)
    }
}

impl From<kube::Error> for ReconcileError {
    fn from(e: kube::Error) -> Self {
        ReconcileError(e.into())
    }
}

/// Retry delay after a failed reconcile. Conflicts (someone else wrote first) retry at once
/// because the next pass reads fresh state.
fn retry_after(e: &ReconcileError) -> Duration {
    let conflict =
        e.0.downcast_ref::<kube::Error>()
            .is_some_and(crate::errors::is_conflict);
    if conflict {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(2)
    }
}

/// Runs `controller` until `shutdown`, logging failures. `name` identifies it in logs;
/// `concurrency` bounds parallel reconciles (never two of the same object).
pub async fn drive<K, Ctx, F, Fut>(
    name: &'static str,
    controller: Controller<K>,
    ctx: Arc<Ctx>,
    reconcile: F,
    concurrency: u16,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Unpin + Send + Sync,
    Ctx: Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<Ctx>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    let stop = shutdown.clone();
    let m = &crate::metrics::METRICS;
    let label = crate::metrics::ControllerLabel { controller: name };
    m.max_concurrent
        .get_or_create(&label)
        .set(i64::from(concurrency));
    let mut reconcile = reconcile;
    // Counted and timed as controller-runtime does.
    let measured = move |obj: Arc<K>, ctx: Arc<Ctx>| {
        let fut = reconcile(obj, ctx);
        let label = label.clone();
        async move {
            let active = m.active.get_or_create(&label).clone();
            active.inc();
            let start = std::time::Instant::now();
            let res = fut.await;
            active.dec();
            m.time
                .get_or_create(&label)
                .observe(start.elapsed().as_secs_f64());
            let result = if res.is_ok() { "success" } else { "error" };
            m.reconciles
                .get_or_create(&crate::metrics::ResultLabels {
                    controller: name,
                    result,
                })
                .inc();
            if res.is_err() {
                m.errors.get_or_create(&label).inc();
            }
            res
        }
    };
    controller
        .with_config(Config::default().concurrency(concurrency))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(
            measured,
            move |obj, err, _ctx| {
                let retry = retry_after(err);
                // A conflict is an ordinary race with another writer: retried at once.
                if retry < Duration::from_secs(1) {
                    tracing::debug!(controller = name, object = %obj_name(obj.as_ref()), error = %err, "reconcile conflict; retrying");
                } else {
                    tracing::warn!(controller = name, object = %obj_name(obj.as_ref()), error = %err, "reconcile failed");
                }
                Action::requeue(retry)
            },
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                // Missing objects (deleted between trigger and reconcile) are normal.
                tracing::trace!(controller = name, error = %e, "controller event");
            }
        })
        .await;
}

fn obj_name<K: Resource>(o: &K) -> String {
    let m = o.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.clone().unwrap_or_default()),
        None => m.name.clone().unwrap_or_default(),
    }
}
