//! `bosun logs`: the logs of many pods at once, each line prefixed with its pod and
//! container (coloured on a terminal). With `-f`, pods that appear later are followed too.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::task::JoinSet;

use crate::{ClientOpts, client, output};

#[derive(Args)]
pub struct LogsOpts {
    /// POD, pod/NAME, deploy/NAME or rs/NAME (or none with -l)
    pub target: Option<String>,
    /// Label selector choosing the pods, e.g. app=web
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Only this container (default: all containers of each pod)
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming, and pick up pods that start later
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Lines of recent log to show per container (-1: all)
    #[arg(long, default_value_t = -1)]
    pub tail: i64,
    /// Prefix each line with its timestamp
    #[arg(long)]
    pub timestamps: bool,
    /// The previous (crashed) instance's log
    #[arg(short = 'p', long)]
    pub previous: bool,
    #[command(flatten)]
    pub conn: ClientOpts,
}

/// Which pods to read.
enum Source {
    Pod(String),
    Selector(String),
}

pub async fn run(opts: LogsOpts) -> Result<ExitCode> {
    let conn = client::connect(&opts.conn).await?;
    let pods: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let source = source(&conn.client, &conn.namespace, &opts).await?;
    let mut tasks = JoinSet::new();
    let mut seen = HashSet::new();
    let mut colour = 0usize;
    let mut start = |pod: &Pod, tasks: &mut JoinSet<()>| {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let containers: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
            .filter(|c| opts.container.as_ref().is_none_or(|want| want == c))
            .collect();
        for c in containers {
            if !seen.insert((name.clone(), c.clone())) {
                continue;
            }
            let params = LogParams {
                container: Some(c.clone()),
                follow: opts.follow,
                tail_lines: (opts.tail >= 0).then_some(opts.tail),
                timestamps: opts.timestamps,
                previous: opts.previous,
                ..LogParams::default()
            };
            let prefix = output::paint(&format!("[{name}/{c}]"), colour);
            colour += 1;
            let api = pods.clone();
            let pod_name = name.clone();
            tasks.spawn(async move {
                if let Err(e) = stream_log(&api, &pod_name, &params, &prefix).await {
                    eprintln!("{prefix} {} {e}", output::error_label());
                }
            });
        }
    };
    match &source {
        Source::Pod(name) => {
            let pod = pods.get(name).await?;
            start(&pod, &mut tasks);
        }
        Source::Selector(sel) => {
            let list = pods.list(&ListParams::default().labels(sel)).await?;
            if list.items.is_empty() && !opts.follow {
                bail!("no pods match {sel}");
            }
            for pod in list.items.iter().filter(|p| has_started(p)) {
                start(pod, &mut tasks);
            }
            if opts.follow {
                // Follow new pods as they start (for example during a rollout).
                let cfg = watcher::Config::default().labels(sel);
                let mut events = watcher::watcher(pods.clone(), cfg).boxed();
                loop {
                    tokio::select! {
                        ev = events.try_next() => match ev? {
                            Some(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) if has_started(&p) => {
                                start(&p, &mut tasks)
                            }
                            Some(_) => {}
                            None => break,
                        },
                        Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    }
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(ExitCode::SUCCESS)
}

fn has_started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
            })
        })
}

async fn stream_log(api: &Api<Pod>, pod: &str, params: &LogParams, prefix: &str) -> Result<()> {
    let mut lines = api.log_stream(pod, params).await?.lines();
    while let Some(line) = lines.next().await {
        println!("{prefix} {}", line?);
    }
    Ok(())
}

async fn source(client: &Client, ns: &str, opts: &LogsOpts) -> Result<Source> {
    if let Some(sel) = &opts.selector {
        return Ok(Source::Selector(sel.clone()));
    }
    let Some(target) = &opts.target else {
        bail!("name a pod, deploy/NAME, rs/NAME, or pass -l SELECTOR");
    };
    let selector_of = |labels: Option<std::collections::BTreeMap<String, String>>| {
        labels
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok(match target.split_once('/') {
        None => Source::Pod(target.clone()),
        Some(("pod" | "pods" | "po", n)) => Source::Pod(n.to_string()),
        Some(("deploy" | "deployment" | "deployments", n)) => {
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get(n)
                .await?;
            Source::Selector(selector_of(d.spec.and_then(|s| s.selector.match_labels)))
        }
        Some(("rs" | "replicaset" | "replicasets", n)) => {
            let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                .get(n)
                .await?;
            Source::Selector(selector_of(rs.spec.and_then(|s| s.selector.match_labels)))
        }
        Some((kind, _)) => bail!("cannot read logs of {kind}: use a pod, deploy/NAME or rs/NAME"),
    })
}
