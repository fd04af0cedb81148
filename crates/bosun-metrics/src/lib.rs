//! bosun's built-in metrics: a scrape loop (`scrape`) feeding a compact time-series store
//! (`chunk`, `store`), PromQL evaluation on the `promql-parser` AST (`eval`), and the
//! Prometheus HTTP API (`api`) on the console listener; object-state series under
//! kube-state-metrics' names (`kube_state`), alerting and recording rules (`rules`,
//! `alerts`) and where firing alerts go (`notify`).

#[cfg(feature = "server")]
pub mod alerts;
#[cfg(feature = "server")]
pub mod api;
pub mod chunk;
pub mod eval;
#[cfg(feature = "server")]
pub mod kube_state;
#[cfg(feature = "server")]
pub mod notify;
#[cfg(feature = "server")]
pub mod rules;
#[cfg(feature = "server")]
pub mod scrape;
pub mod store;
pub mod textparse;

use promql_parser::label::Matcher;
use promql_parser::parser::Expr;

#[cfg(feature = "server")]
pub use scrape::{AgentAccess, Scraper, Target, apiserver_target, client_tls, static_target};
pub use store::{Retention, Store};

/// Parses a series selector (`match[]`): one matcher set per `or` alternative.
pub fn parse_selector(s: &str) -> Result<Vec<Vec<Matcher>>, String> {
    match promql_parser::parser::parse(s)? {
        Expr::VectorSelector(vs) => Ok(eval::selector_sets(&vs)),
        _ => Err(format!("{s:?} is not a series selector")),
    }
}

#[cfg(feature = "server")]
use {
    anyhow::{Context, Result},
    std::{path::PathBuf, sync::Arc, time::Duration},
};

#[cfg(feature = "server")]
pub struct MetricsConfig {
    /// Block files go here (None: memory only).
    pub data_dir: Option<PathBuf>,
    pub retention: Retention,
    pub scrape_interval: Duration,
    /// bosun's own endpoints (job, target).
    pub statics: Vec<Target>,
    /// Credentials for the node agents' `/metrics/cadvisor` and `/metrics/node`.
    pub agent: Option<AgentAccess>,
    /// More routes served on the same listener (the web console).
    pub extra_routes: Option<axum::Router>,
    pub alerts: AlertsConfig,
}

#[cfg(feature = "server")]
#[derive(Default)]
pub struct AlertsConfig {
    /// Rule groups (built-in and from `--alert-rules` files), checked already.
    pub groups: Vec<rules::Group>,
    /// Alertmanager-format webhooks that get firing and resolved alerts.
    pub webhooks: Vec<String>,
    /// Write Events on the objects alerts are about.
    pub events: bool,
}

#[cfg(feature = "server")]
/// The built-in rules (unless `builtin` is false; `params` override their thresholds)
/// followed by the rules of `files`. A file's alerting rule named like a built-in one
/// replaces it. Errors name the file, group and rule.
pub fn load_rules(
    builtin: bool,
    params: &[(String, String)],
    files: &[PathBuf],
) -> Result<Vec<rules::Group>> {
    let mut custom = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {name}"))?;
        custom.extend(rules::parse_file(&name, &text).map_err(anyhow::Error::msg)?);
    }
    let mut groups = Vec::new();
    if builtin {
        let taken: std::collections::HashSet<String> = custom
            .iter()
            .flat_map(|g| g.rules.iter())
            .filter(|r| matches!(r.kind, rules::Kind::Alert { .. }))
            .map(|r| r.name.clone())
            .collect();
        for mut g in rules::builtin(params).map_err(anyhow::Error::msg)? {
            g.rules.retain(|r| !taken.contains(&r.name));
            if !g.rules.is_empty() {
                groups.push(g);
            }
        }
    } else if !params.is_empty() {
        anyhow::bail!("--alert-param: the built-in rules are off");
    }
    groups.extend(custom);
    Ok(groups)
}

#[cfg(feature = "server")]
/// Scrapes into the store and serves the Prometheus API on `listener` until `shutdown`;
/// the head is written to disk before returning.
pub async fn run(
    client: Option<kube::Client>,
    cfg: MetricsConfig,
    listener: std::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let store = Arc::new(match &cfg.data_dir {
        Some(dir) => Store::open(dir, cfg.retention.clone())?,
        None => Store::in_memory(cfg.retention.clone()),
    });
    let addr = listener.local_addr()?;
    let external_url = format!("http://{addr}");
    // Watch caches shared by the scraper (targets), kube-state series and alert Events.
    let watch_stop = shutdown.child_token();
    let _stop_watches = watch_stop.clone().drop_guard();
    let caches = client.clone().map(|c| {
        let nodes = scrape::cache(kube::Api::all(c.clone()), watch_stop.clone());
        let pods = scrape::cache(kube::Api::all(c.clone()), watch_stop.clone());
        let deployments = scrape::cache(kube::Api::all(c), watch_stop.clone());
        kube_state::Caches {
            pods,
            nodes,
            deployments,
        }
    });
    let mut statics = cfg.statics;
    if caches.is_some() {
        let mut a = addr;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
        }
        statics.push(static_target(
            "kube-state-metrics",
            &format!("http://{a}{}", api::KUBE_STATE_PATH),
        )?);
    }
    let scraper = Arc::new(Scraper::new(
        store.clone(),
        cfg.scrape_interval,
        statics,
        cfg.agent,
    ));
    let mut notifiers: Vec<Arc<dyn alerts::Notifier>> = Vec::new();
    if cfg.alerts.events
        && let Some(c) = &client
    {
        notifiers.push(notify::EventNotifier::start(
            c.clone(),
            caches.clone(),
            shutdown.clone(),
        ));
    }
    for url in &cfg.alerts.webhooks {
        notifiers.push(Arc::new(notify::WebhookNotifier {
            hook: notify::Webhook::start(url.clone(), shutdown.clone())?,
            external_url: external_url.clone(),
        }));
    }
    let rules = Arc::new(alerts::Manager::new(
        store.clone(),
        cfg.alerts.groups,
        cfg.scrape_interval,
        notifiers,
    ));
    let mut app = api::router(api::ApiState {
        store,
        scraper: Some(scraper.clone()),
        rules: Some(rules.clone()),
        kube_state: caches.clone(),
    });
    if let Some(extra) = cfg.extra_routes {
        app = app.merge(extra);
    }
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let sd = shutdown.clone();
    let serve =
        axum::serve(listener, app).with_graceful_shutdown(async move { sd.cancelled().await });
    let scrape = scraper.run_with(caches.map(|c| (c.nodes, c.pods)), shutdown.clone());
    let evaluate = rules.run(shutdown);
    let (served, (), ()) = tokio::join!(serve, scrape, evaluate);
    served.context("serving the Prometheus API")
}
