//! `bosun rollout status|history|undo`, with the same rules kubectl uses, and
//! `bosun rollout promote|abort|retry` for Rollouts (argoproj.io), with the status patches
//! Argo's kubectl plugin sends.

use bosun_api::rollback;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::{ClientOpts, client, output};

#[derive(Args)]
pub struct RolloutOpts {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub conn: ClientOpts,
}

#[derive(Subcommand)]
pub enum Action {
    /// Follow a rollout until it completes (exit 1 if it fails or times out)
    Status {
        /// deploy/NAME (or just NAME)
        target: String,
        /// Give up after this many seconds (0: wait forever)
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// List a deployment's revisions and their change causes
    History { target: String },
    /// Roll back to the previous revision, or to --to-revision
    Undo {
        target: String,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Promote a Rollout past its current pause (or with --full, to the end of its steps)
    Promote {
        /// The Rollout's name
        name: String,
        /// Skip the remaining steps and analysis
        #[arg(long)]
        full: bool,
    },
    /// Abort a Rollout's update: all traffic back to the stable version, canary scaled down
    Abort { name: String },
    /// Start an aborted Rollout's steps again
    Retry { name: String },
}

/// The status (and spec) patches of `kubectl argo rollouts promote|abort|retry`.
async fn argo_verb(
    client: Client,
    ns: &str,
    verb: &str,
    name: &str,
    full: bool,
) -> Result<ExitCode> {
    use kube::api::DynamicObject;
    let ar = bosun_controllers::rollout::rollout_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
    let ro = api
        .get(name)
        .await
        .with_context(|| format!("rollout {name:?} in namespace {ns:?}"))?;
    let pp = PatchParams::default();
    let status = match (verb, full) {
        ("promote", true) => serde_json::json!({"status": {"promoteFull": true}}),
        ("promote", false) => serde_json::json!({"status": {"pauseConditions": null}}),
        ("abort", _) => serde_json::json!({"status": {"abort": true}}),
        _ => serde_json::json!({"status": {"abort": false}}),
    };
    if verb == "promote" && ro.data.pointer("/spec/paused") == Some(&serde_json::json!(true)) {
        api.patch(
            name,
            &pp,
            &Patch::Merge(serde_json::json!({"spec": {"paused": false}})),
        )
        .await?;
    }
    api.patch_status(name, &pp, &Patch::Merge(status)).await?;
    let past = match verb {
        "promote" => "promoted",
        "abort" => "aborted",
        _ => "retried",
    };
    println!("rollout '{name}' {past}");
    Ok(ExitCode::SUCCESS)
}

pub async fn run(opts: RolloutOpts) -> Result<ExitCode> {
    let conn = client::connect(&opts.conn).await?;
    let api: Api<Deployment> = Api::namespaced(conn.client.clone(), &conn.namespace);
    match opts.action {
        Action::Promote { name, full } => {
            argo_verb(conn.client.clone(), &conn.namespace, "promote", &name, full).await
        }
        Action::Abort { name } => {
            argo_verb(conn.client.clone(), &conn.namespace, "abort", &name, false).await
        }
        Action::Retry { name } => {
            argo_verb(conn.client.clone(), &conn.namespace, "retry", &name, false).await
        }
        Action::Status { target, timeout } => {
            let name = deployment_name(&target)?;
            let timeout = (timeout > 0).then(|| Duration::from_secs(timeout));
            Ok(if wait_rollout(&api, &name, timeout, true).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Action::History { target } => {
            let name = deployment_name(&target)?;
            let rss = owned_replicasets(&conn.client, &api, &name).await?;
            println!("deployment.apps/{name}");
            let rows: Vec<Vec<String>> = rss
                .iter()
                .map(|(rev, rs)| {
                    let cause = rs
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("kubernetes.io/change-cause"))
                        .cloned()
                        .unwrap_or_else(|| "<none>".into());
                    vec![rev.to_string(), cause]
                })
                .collect();
            output::print_table(&["REVISION".into(), "CHANGE-CAUSE".into()], &rows);
            Ok(ExitCode::SUCCESS)
        }
        Action::Undo {
            target,
            to_revision,
        } => {
            let name = deployment_name(&target)?;
            println!("{}", undo(&conn.client, &api, &name, to_revision).await?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn deployment_name(target: &str) -> Result<String> {
    match target.split_once('/') {
        None => Ok(target.to_string()),
        Some((
            "deploy" | "deployment" | "deployments" | "deployment.apps" | "deployments.apps",
            n,
        )) => Ok(n.to_string()),
        Some((kind, _)) => bail!("rollout works on deployments, not {kind}"),
    }
}

/// What `kubectl rollout status` decides from one look at a deployment:
/// `Ok(Some(msg))` while waiting, `Ok(None)` when done, `Err` when it failed.
pub fn rollout_progress(d: &Deployment) -> Result<Option<String>> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    if generation > status.observed_generation.unwrap_or(0) {
        return Ok(Some(
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    let failed = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if failed {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    Ok(if updated < want {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."
        ))
    } else if replicas > updated {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ))
    } else if available < updated {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
        ))
    } else {
        None
    })
}

/// Watches `name` until its rollout completes; prints each new progress line when
/// `verbose`. Returns false on failure or timeout.
pub async fn wait_rollout(
    api: &Api<Deployment>,
    name: &str,
    timeout: Option<Duration>,
    verbose: bool,
) -> Result<bool> {
    // One object followed for the length of one command: a plain watch, no cache.
    let mut stream = watcher::watch_object(api.clone(), name).boxed();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last = String::new();
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.try_next()).await {
                Ok(n) => n,
                Err(_) => {
                    eprintln!("error: timed out waiting for the rollout of {name:?}");
                    return Ok(false);
                }
            },
            None => stream.try_next().await,
        };
        let Some(obj) = next.context("watching the deployment")? else {
            bail!("watch ended unexpectedly");
        };
        let Some(d) = obj else {
            bail!("deployment {name:?} not found");
        };
        match rollout_progress(&d) {
            Ok(Some(msg)) => {
                if verbose && msg != last {
                    println!("{msg}");
                    let _ = std::io::stdout().flush();
                    last = msg;
                }
            }
            Ok(None) => {
                if verbose {
                    println!("deployment {name:?} successfully rolled out");
                }
                return Ok(true);
            }
            Err(e) => {
                eprintln!("{} {e}", output::error_label());
                return Ok(false);
            }
        }
    }
}

/// The deployment's ReplicaSets (controller-owned) keyed by revision.
async fn owned_replicasets(
    client: &Client,
    api: &Api<Deployment>,
    name: &str,
) -> Result<BTreeMap<i64, ReplicaSet>> {
    let d = api.get(name).await?;
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let list = rs_api
        .list(&ListParams::default().labels(&rollback::selector(&d)))
        .await?;
    Ok(rollback::owned_by_revision(&d, list.items))
}

async fn undo(
    client: &Client,
    api: &Api<Deployment>,
    name: &str,
    to_revision: i64,
) -> Result<String> {
    let d = api.get(name).await?;
    let rss = owned_replicasets(client, api, name).await?;
    match rollback::plan(&d, &rss, to_revision)? {
        rollback::Rollback::Skip { revision } => Ok(format!(
            "deployment.apps/{name} skipped rollback (current template already matches revision {revision})"
        )),
        rollback::Rollback::Patch { patch, .. } => {
            let patch: json_patch::Patch = serde_json::from_value(patch)?;
            api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await?;
            Ok(format!("deployment.apps/{name} rolled back"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dep(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn progress_follows_kubectl_rules() {
        let base = json!({"metadata": {"name": "web", "generation": 2}, "spec": {"replicas": 3, "selector": {}, "template": {}}});
        let mut d = base.clone();
        d["status"] = json!({"observedGeneration": 1});
        assert!(
            rollout_progress(&dep(d))
                .unwrap()
                .unwrap()
                .contains("spec update")
        );
        let mut d = base.clone();
        d["status"] = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 2, "availableReplicas": 2});
        assert!(
            rollout_progress(&dep(d))
                .unwrap()
                .unwrap()
                .contains("2 out of 3 new")
        );
        let mut d = base.clone();
        d["status"] = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3});
        assert!(
            rollout_progress(&dep(d))
                .unwrap()
                .unwrap()
                .contains("1 old replicas")
        );
        let mut d = base.clone();
        d["status"] = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2});
        assert!(
            rollout_progress(&dep(d))
                .unwrap()
                .unwrap()
                .contains("2 of 3 updated")
        );
        let mut d = base.clone();
        d["status"] = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3});
        assert_eq!(rollout_progress(&dep(d)).unwrap(), None);
        let mut d = base;
        d["status"] = json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]});
        assert!(rollout_progress(&dep(d)).is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(deployment_name("deploy/web").unwrap(), "web");
        assert_eq!(deployment_name("web").unwrap(), "web");
        assert!(deployment_name("svc/web").is_err());
    }
}
