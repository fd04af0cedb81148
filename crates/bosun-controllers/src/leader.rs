//! Leader election on a `coordination.k8s.io/v1` Lease, with Kubernetes' semantics
//! (client-go's `leaderelection`): the leader writes its identity to
//! `spec.holderIdentity` and renews `spec.renewTime` every `retry_period`; the others
//! take over once the record has not changed for `lease_duration` as measured by
//! their own clocks (so clocks need not agree), and count `spec.leaseTransitions`.
//!
//! A leader that cannot renew for `renew_deadline` (shorter than `lease_duration`)
//! stops its loops before anyone else may start them, so two leaders never act at
//! once as long as the clocks run at the same rate. Every write is a conditional
//! update on the Lease's resourceVersion.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    /// Who this candidate is (unique per process: host name and a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// Fast defaults: a new leader acts about five seconds after the old one died.
    pub fn new(name: &str, identity: &str) -> Self {
        ElectionConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_secs(1),
        }
    }
}

/// The record as last seen, and when it was seen to change (by our clock).
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

struct Elector {
    api: Api<Lease>,
    cfg: ElectionConfig,
    observed: Option<Observed>,
}

impl Elector {
    fn lease_secs(&self) -> i32 {
        self.cfg.lease_duration.as_secs().max(1) as i32
    }

    /// One try to take or keep the lease; true when we hold it afterwards.
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let now = MicroTime(jiff::Timestamp::now());
        let me = self.cfg.identity.clone();
        let current = match self.api.get_opt(&self.cfg.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me),
                        lease_duration_seconds: Some(self.lease_secs()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew != spec.renew_time);
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
        let held_by_other = holder.as_ref().is_some_and(|h| *h != me);
        if held_by_other {
            let duration = spec
                .lease_duration_seconds
                .map_or(self.cfg.lease_duration, |s| {
                    Duration::from_secs(s.max(0) as u64)
                });
            let seen = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
            if seen.elapsed() < duration {
                return Ok(false);
            }
        }
        let mut next = current.clone();
        let mut s = spec.clone();
        if holder.as_deref() != Some(me.as_str()) {
            s.acquire_time = Some(now.clone());
            s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        s.holder_identity = Some(me);
        s.renew_time = Some(now);
        s.lease_duration_seconds = Some(self.lease_secs());
        next.spec = Some(s);
        // `replace` carries metadata.resourceVersion: a conditional update.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up at shutdown so the next leader need not wait it out.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "releasing the leader lease failed");
        }
    }
}

/// Campaigns for the lease and runs `lead` while holding it. `lead` gets a token that
/// is cancelled when leadership is lost (it must then stop its loops and return);
/// afterwards this campaigns again. Returns when `shutdown` is cancelled, or with
/// `lead`'s error if it fails on its own.
pub async fn run_elected<F, Fut>(
    client: Client,
    cfg: ElectionConfig,
    shutdown: CancellationToken,
    lead: F,
) -> anyhow::Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut e = Elector {
        api,
        cfg,
        observed: None,
    };
    let retry = e.cfg.retry_period;
    loop {
        // Campaign.
        loop {
            match e.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "leader election: reading the lease failed")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(retry) => {}
            }
        }
        tracing::info!(
            lease = %format!("{}/{}", e.cfg.namespace, e.cfg.name),
            identity = %e.cfg.identity,
            "became leader; starting the controllers and the scheduler"
        );
        eprintln!(
            "bosun: {} is now the leader ({}/{})",
            e.cfg.identity, e.cfg.namespace, e.cfg.name
        );
        let term = shutdown.child_token();
        let mut task = tokio::spawn(lead(term.clone()));
        let mut last_renew = Instant::now();
        let outcome = loop {
            tokio::select! {
                done = &mut task => break Some(done),
                () = tokio::time::sleep(retry) => {}
            }
            if shutdown.is_cancelled() {
                break None;
            }
            // A renewal must not outlast the deadline: the store may retry a request
            // for longer than a lease lasts, and others take over after it.
            let left = e.cfg.renew_deadline.saturating_sub(last_renew.elapsed());
            match tokio::time::timeout(left, e.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renew = Instant::now(),
                Ok(Ok(false)) => {
                    eprintln!(
                        "bosun: {} lost the leader lease to another server",
                        e.cfg.identity
                    );
                    break None;
                }
                Ok(Err(err)) => tracing::warn!(error = %err, "leader election: renewing failed"),
                Err(_) => tracing::warn!("leader election: renewing timed out"),
            }
            if last_renew.elapsed() >= e.cfg.renew_deadline {
                eprintln!(
                    "bosun: {} could not renew the leader lease for {:?}; stepping down",
                    e.cfg.identity, e.cfg.renew_deadline
                );
                break None;
            }
        };
        let ended_on_its_own = outcome.is_some();
        term.cancel();
        let result = match outcome {
            Some(done) => done,
            None => task.await,
        }
        .map_err(|j| anyhow::anyhow!("leader loops panicked: {j}"))?;
        if shutdown.is_cancelled() {
            e.release().await;
            return result;
        }
        if ended_on_its_own {
            return Err(result
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the leader's loops stopped unexpectedly")));
        }
        if let Err(err) = result {
            tracing::warn!(error = %err, "leader loops stopped with an error after stepping down");
        }
    }
}
