//! `bosun logs`: the logs of many pods at once, across nodes, through the API server's log
//! search (`/apis/logs.bosun.dev/v1/.../podlogs`, which also keeps the logs of deleted
//! pods). When several streams may show, each line is prefixed with
//! `namespace/pod/container` (coloured on a terminal). With `-f`, pods that start later are
//! followed too. `-p` reads the previous instance of each container through `pods/log`, as
//! kubectl does.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::{ClientOpts, client, output};

#[derive(Args)]
pub struct LogsOpts {
    /// POD, pod/NAME, deploy/NAME or rs/NAME (or none with -l or -A)
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
    /// Lines of recent log to show per container (-1: all; at most 100000 lines overall)
    #[arg(long, default_value_t = -1)]
    pub tail: i64,
    /// Prefix each line with its timestamp
    #[arg(long)]
    pub timestamps: bool,
    /// The previous (crashed) instance's log
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only lines newer than this, e.g. 30s, 5m, 2h, 1d
    #[arg(long, value_parser = parse_since)]
    pub since: Option<std::time::Duration>,
    /// Only lines matching this regular expression
    #[arg(long)]
    pub grep: Option<String>,
    /// Pods of every namespace
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Leave out the logs of deleted pods (kept for their retention otherwise)
    #[arg(long)]
    pub no_deleted: bool,
    #[command(flatten)]
    pub conn: ClientOpts,
}

fn parse_since(s: &str) -> Result<std::time::Duration, String> {
    bosun_agent::logstore::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 30s, 5m, 2h or 1d"))
}

/// Which pods to read.
enum Source {
    Pod(String),
    Selector(String),
}

pub async fn run(opts: LogsOpts) -> Result<ExitCode> {
    let conn = client::connect(&opts.conn).await?;
    if !opts.previous {
        return search(&conn, &opts).await;
    }
    previous(conn, opts).await
}

/// Reads through the log search API.
async fn search(conn: &client::Conn, opts: &LogsOpts) -> Result<ExitCode> {
    let mut q: Vec<(&str, String)> = Vec::new();
    let mut single = false;
    if opts.all_namespaces && opts.target.is_some() {
        bail!("a pod or deploy/NAME names one namespace: leave it out with -A, or use -l");
    }
    if opts.target.is_some() || opts.selector.is_some() {
        match source(&conn.client, &conn.namespace, opts).await? {
            Source::Pod(name) => {
                // One pod shows one stream when it has one container (or -c picks one).
                single = opts.container.is_some()
                    || Api::<Pod>::namespaced(conn.client.clone(), &conn.namespace)
                        .get(&name)
                        .await
                        .ok()
                        .and_then(|p| p.spec)
                        .is_some_and(|s| s.containers.len() == 1 && s.init_containers.is_none());
                q.push(("pods", name));
            }
            Source::Selector(sel) => q.push(("labelSelector", sel)),
        }
    } else if !opts.all_namespaces {
        bail!("name a pod, deploy/NAME, rs/NAME, or pass -l SELECTOR or -A");
    }
    if let Some(c) = &opts.container {
        q.push(("container", c.clone()));
    }
    if let Some(d) = opts.since {
        q.push(("sinceSeconds", d.as_secs().to_string()));
    }
    if let Some(g) = &opts.grep {
        q.push(("grep", g.clone()));
    }
    if opts.tail >= 0 {
        q.push(("tailLines", opts.tail.to_string()));
    }
    q.push(("limit", "100000".into()));
    if opts.no_deleted {
        q.push(("includeDeleted", "false".into()));
    }
    if opts.follow {
        q.push(("follow", "true".into()));
    }
    let base = if opts.all_namespaces {
        "/apis/logs.bosun.dev/v1/podlogs".to_string()
    } else {
        format!(
            "/apis/logs.bosun.dev/v1/namespaces/{}/podlogs",
            conn.namespace
        )
    };
    let query: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let url = format!("{base}?{}", query.join("&"));
    let mut printer = Printer {
        prefix: !single,
        timestamps: opts.timestamps,
        colours: Default::default(),
    };
    if opts.tail == 0 && !opts.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let req = http::Request::get(&url).body(Vec::new())?;
    if opts.follow {
        let mut lines = conn.client.request_stream(req).await?.lines();
        while let Some(line) = lines.next().await {
            let line = line?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                printer.print(&v);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let body: Value = conn
        .client
        .request(req)
        .await
        .context("searching the logs")?;
    for w in body["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
    for v in body["items"].as_array().into_iter().flatten() {
        printer.print(v);
    }
    Ok(ExitCode::SUCCESS)
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prints entries of the search API, prefixed with their stream when several may show.
struct Printer {
    prefix: bool,
    timestamps: bool,
    colours: std::collections::HashMap<String, usize>,
}

impl Printer {
    fn print(&mut self, v: &Value) {
        let s = |k: &str| v[k].as_str().unwrap_or_default();
        let mut out = String::new();
        if self.prefix {
            let stream = format!("{}/{}/{}", s("namespace"), s("pod"), s("container"));
            let n = self.colours.len();
            let colour = *self.colours.entry(stream.clone()).or_insert(n);
            out.push_str(&output::paint(&stream, colour));
            out.push(' ');
        }
        if self.timestamps {
            out.push_str(s("timestamp"));
            out.push(' ');
        }
        out.push_str(s("line"));
        println!("{out}");
    }
}

/// `-p`: the previous instance of each container, through `pods/NAME/log`.
async fn previous(conn: client::Conn, opts: LogsOpts) -> Result<ExitCode> {
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
                since_seconds: opts.since.map(|d| d.as_secs() as i64),
                ..LogParams::default()
            };
            let prefix = output::paint(&format!("{}/{name}/{c}", conn.namespace), colour);
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
                // Follow new pods as they start (for example during a rollout). A plain
                // watcher, not an informer: nothing is cached or shared, and like kubectl
                // the command ends on a watch error instead of retrying behind the user.
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
