//! A small client of the Prometheus HTTP API that the console is served beside.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::chart::Series;

#[derive(Clone)]
pub struct Prom {
    base: String,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl Prom {
    pub fn new(base: &str) -> Prom {
        Prom {
            base: base.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// GET of a path below the base URL, parsed as JSON (any status; Prometheus puts its
    /// errors in the body). None when the path is not served at all (404).
    pub async fn get_json(&self, path_and_query: &str) -> Result<Option<Value>> {
        let uri: http::Uri = format!("{}{path_and_query}", self.base).parse()?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), self.http.get(uri))
            .await
            .context("the metrics API did not answer within 10s")??;
        if resp.status() == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Some(serde_json::from_slice(&body).with_context(|| {
            format!(
                "the metrics API answered {path_and_query} with no JSON: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })?))
    }

    /// `query_range` of `expr` over [start, end] (Unix seconds), one series per result,
    /// named by `legend` applied to the series' labels.
    pub async fn range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
        legend: &(dyn Fn(&Value) -> String + Sync),
    ) -> Result<Vec<Series>> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("start", &format!("{start:.3}"))
            .append_pair("end", &format!("{end:.3}"))
            .append_pair("step", &format!("{step}"))
            .finish();
        let v = self
            .get_json(&format!("/api/v1/query_range?{q}"))
            .await?
            .context("the metrics API is not served here")?;
        parse_matrix(&v)
            .map(|m| {
                m.into_iter()
                    .map(|(labels, points)| Series {
                        name: legend(&labels),
                        points,
                    })
                    .collect()
            })
            .with_context(|| format!("query {expr}"))
    }
}

/// The series of a `query_range` answer: labels and (time, value) pairs, NaN and
/// infinities left out.
pub fn parse_matrix(v: &Value) -> Result<Vec<(Value, Vec<(f64, f64)>)>> {
    if v["status"] != "success" {
        bail!(
            "{}: {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("unknown")
        );
    }
    let mut out = Vec::new();
    for r in v["data"]["result"].as_array().into_iter().flatten() {
        let points = r["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let t = p[0].as_f64()?;
                let v: f64 = p[1].as_str()?.parse().ok()?;
                v.is_finite().then_some((t, v))
            })
            .collect();
        out.push((r["metric"].clone(), points));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_skips_nan() {
        let v = serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"node": "a"}, "values": [[1.0, "1"], [2.0, "NaN"], [3.0, "2.5"]]}
        ]}});
        let m = parse_matrix(&v).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].1, vec![(1.0, 1.0), (3.0, 2.5)]);
        let e = parse_matrix(&serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error"}))
            .unwrap_err();
        assert_eq!(e.to_string(), "bad_data: parse error");
    }
}
