//! `bosun get`: the server's own Table columns, aligned.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::{ClientOpts, client, output};

#[derive(Args)]
pub struct GetOpts {
    /// Resource type: pods, deploy, rs, svc, cm, ns, nodes, events ...
    pub resource: String,
    /// Only this object
    pub name: Option<String>,
    /// Label selector, e.g. app=web,tier!=cache
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// List across all namespaces
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format: wide, yaml or json
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    #[command(flatten)]
    pub conn: ClientOpts,
}

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

pub async fn run(opts: GetOpts) -> Result<ExitCode> {
    let conn = client::connect(&opts.conn).await?;
    let res = client::resolve(&conn.client, &opts.resource).await?;
    let ns = (!opts.all_namespaces).then_some(conn.namespace.as_str());
    let mut url = res.url(ns);
    if let Some(name) = &opts.name {
        url = format!("{url}/{name}");
    }
    let mut query = Vec::new();
    if let Some(sel) = &opts.selector {
        query.push(format!("labelSelector={}", urlencode(sel)));
    }
    let format = opts.output.as_deref().unwrap_or("");
    if format != "yaml" && format != "json" {
        query.push("includeObject=Metadata".to_string());
    }
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let accept = match format {
        "yaml" | "json" => "application/json",
        "" | "wide" => TABLE_ACCEPT,
        other => bail!("unknown output format {other:?}: use wide, yaml or json"),
    };
    let req = http::Request::get(&url)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())?;
    let text = conn.client.request_text(req).await?;
    let body: Value = serde_json::from_str(&text).context("decoding the server's answer")?;
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&body)?),
        "yaml" => print!("{}", serde_saphyr::to_string(&body)?),
        _ => {
            let (headers, rows) = table_rows(
                &body,
                format == "wide",
                opts.all_namespaces && res.namespaced(),
            );
            if rows.is_empty() {
                match ns {
                    Some(ns) if res.namespaced() => {
                        eprintln!("No resources found in {ns} namespace.")
                    }
                    _ => eprintln!("No resources found"),
                }
            } else {
                output::print_table(&headers, &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Headers and cells from a meta.k8s.io Table; priority>0 columns only when wide.
fn table_rows(table: &Value, wide: bool, with_namespace: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let cols = table["columnDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let keep: Vec<usize> = cols
        .iter()
        .enumerate()
        .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut headers: Vec<String> = keep
        .iter()
        .map(|&i| cols[i]["name"].as_str().unwrap_or("").to_ascii_uppercase())
        .collect();
    if with_namespace {
        headers.insert(0, "NAMESPACE".into());
    }
    let rows = table["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    let cells = row["cells"].as_array().cloned().unwrap_or_default();
                    let mut out: Vec<String> = keep
                        .iter()
                        .map(|&i| cells.get(i).map(cell_text).unwrap_or_default())
                        .collect();
                    if with_namespace {
                        let ns = row["object"]["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("");
                        out.insert(0, ns.to_string());
                    }
                    out
                })
                .collect()
        })
        .unwrap_or_default();
    (headers, rows)
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wide_columns_only_when_asked() {
        let t = json!({
            "columnDefinitions": [{"name": "Name", "priority": 0}, {"name": "IP", "priority": 1}],
            "rows": [{"cells": ["web", "10.0.0.2"], "object": {"metadata": {"namespace": "prod"}}}]
        });
        assert_eq!(
            table_rows(&t, false, false),
            (vec!["NAME".to_string()], vec![vec!["web".to_string()]])
        );
        let (h, r) = table_rows(&t, true, true);
        assert_eq!(h, ["NAMESPACE", "NAME", "IP"]);
        assert_eq!(r, [["prod", "web", "10.0.0.2"]]);
    }

    #[test]
    fn selectors_are_escaped() {
        assert_eq!(urlencode("app=web,tier!=db"), "app%3Dweb%2Ctier%21%3Ddb");
    }
}
