//! `bosun metrics-only` (hidden): the built-in metrics store alone, scraping static
//! targets and serving the Prometheus API, with no cluster. For measuring the store
//! against Prometheus on the same targets (`scripts/bench_metrics_vs_prometheus.py`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct MetricsOnlyOpts {
    /// Address of the Prometheus API
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: String,
    /// Where blocks are written
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Scrape interval, e.g. 15s
    #[arg(long, default_value = "15s", value_parser = crate::join::parse_ttl)]
    pub scrape_interval: std::time::Duration,
    /// A target, JOB=http://IP:PORT/PATH (or just the URL: job "bench"); repeatable
    #[arg(long = "target")]
    pub targets: Vec<String>,
}

pub async fn run(o: MetricsOnlyOpts) -> Result<ExitCode> {
    let listener =
        std::net::TcpListener::bind(&o.listen).with_context(|| format!("--listen {}", o.listen))?;
    let mut statics = Vec::new();
    for t in &o.targets {
        let (job, url) = match t.split_once('=') {
            Some((j, u)) if u.starts_with("http") => (j, u),
            _ => ("bench", t.as_str()),
        };
        statics.push(bosun_metrics::static_target(job, url)?);
    }
    let cfg = bosun_metrics::MetricsConfig {
        data_dir: Some(o.data_dir),
        retention: bosun_metrics::Retention::default(),
        scrape_interval: o.scrape_interval,
        statics,
        agent: None,
        extra_routes: None,
        alerts: bosun_metrics::AlertsConfig::default(),
    };
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        sd.cancel();
    });
    let term = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            term.cancel();
        }
    });
    bosun_metrics::run(None, cfg, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
