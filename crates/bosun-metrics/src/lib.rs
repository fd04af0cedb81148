//! bosun's built-in metrics: a scrape loop (`scrape`) feeding a compact time-series store
//! (`chunk`, `store`), PromQL evaluation on the `promql-parser` AST (`eval`), and the
//! Prometheus HTTP API (`api`) on the console listener.

#[cfg(feature = "server")]
pub mod api;
pub mod chunk;
pub mod eval;
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
    let scraper = Arc::new(Scraper::new(
        store.clone(),
        cfg.scrape_interval,
        cfg.statics,
        cfg.agent,
    ));
    let mut app = api::router(api::ApiState {
        store,
        scraper: Some(scraper.clone()),
    });
    if let Some(extra) = cfg.extra_routes {
        app = app.merge(extra);
    }
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let sd = shutdown.clone();
    let serve =
        axum::serve(listener, app).with_graceful_shutdown(async move { sd.cancelled().await });
    let scrape = scraper.run(client, shutdown);
    let (served, ()) = tokio::join!(serve, scrape);
    served.context("serving the Prometheus API")
}
