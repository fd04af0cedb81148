//! Log output of the long-running commands: tracing events to stderr, as text or as
//! JSON lines, filtered by RUST_LOG.

use std::io::IsTerminal;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal)
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields
    Json,
}

/// bosun's own crates at info, everything else at warn.
pub const DEFAULT_FILTER: &str = "warn,bosun=info";

/// The filter from RUST_LOG, or [`DEFAULT_FILTER`] when it is unset or empty.
pub fn filter_from(rust_log: Option<&str>) -> Result<EnvFilter> {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(spec) => EnvFilter::builder()
            .parse(spec)
            .with_context(|| format!("invalid RUST_LOG {spec:?}")),
        None => Ok(EnvFilter::new(DEFAULT_FILTER)),
    }
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Reports a failure that stops bosun: a JSON log line when logging as JSON (so log
/// collectors see it), else a plain line on stderr, which RUST_LOG cannot silence.
pub fn fatal(message: &str) {
    if FORMAT.get() == Some(&LogFormat::Json) && tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Installs the global subscriber. Call once, before starting the async runtime.
pub fn init(format: LogFormat) -> Result<()> {
    let _ = FORMAT.set(format);
    let filter = filter_from(std::env::var("RUST_LOG").ok().as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_info_for_bosun_and_warn_for_the_rest() {
        let f = filter_from(None).unwrap().to_string();
        assert!(f.contains("bosun=info") && f.contains("warn"), "{f}");
        assert_eq!(filter_from(Some("  ")).unwrap().to_string(), f);
        let f = filter_from(Some("debug,hyper=off")).unwrap().to_string();
        assert!(f.contains("debug") && f.contains("hyper=off"), "{f}");
        assert!(filter_from(Some("bosun=loud")).is_err());
    }
}
