//! `bosun get`: the server's own Table columns, aligned.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::client::ApiType;
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
    let format = opts.output.as_deref().unwrap_or("");
    if !matches!(format, "" | "wide" | "yaml" | "json") {
        bail!(
            "unable to match a printer suitable for the output format {format:?}, allowed formats are: json,wide,yaml"
        );
    }
    if opts.all_namespaces && opts.name.is_some() {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    let conn = client::connect(&opts.conn).await?;
    let res = client::resolve(&conn.client, &opts.resource).await?;
    // Cluster-scoped types ignore the namespace, as in kubectl.
    let ns = (!opts.all_namespaces && res.namespaced).then_some(conn.namespace.as_str());
    let mut url = res.url(ns);
    if let Some(name) = &opts.name {
        url = format!("{url}/{name}");
    }
    let mut query = Vec::new();
    if let Some(sel) = &opts.selector {
        query.push(format!("labelSelector={}", urlencode(sel)));
    }
    let structured = matches!(format, "yaml" | "json");
    if !structured {
        query.push("includeObject=Metadata".to_string());
    }
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let accept = if structured {
        "application/json"
    } else {
        TABLE_ACCEPT
    };
    let req = http::Request::get(&url)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())?;
    let text = conn.client.request_text(req).await?;
    let body: Value = serde_json::from_str(&text).context("decoding the server's answer")?;
    if structured {
        let doc = if opts.name.is_some() {
            body
        } else {
            as_list(body, &res)
        };
        match format {
            "json" => println!("{}", serde_json::to_string_pretty(&doc)?),
            _ => print!("{}", serde_saphyr::to_string(&doc)?),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let with_namespace = opts.all_namespaces && res.namespaced;
    let (headers, rows) = if body["kind"] == "Table" {
        table_rows(&body, format == "wide", with_namespace)
    } else {
        // A server without Table support: kubectl's fallback of NAME and AGE.
        plain_rows(&body, with_namespace)
    };
    if rows.is_empty() {
        match ns {
            Some(ns) => eprintln!("No resources found in {ns} namespace."),
            None => eprintln!("No resources found"),
        }
    } else {
        output::print_table(&headers, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// A typed list (`PodList`) as kubectl prints it: a `v1` `List` whose items carry
/// their own apiVersion and kind (the server leaves those off list items).
fn as_list(body: Value, res: &ApiType) -> Value {
    let Value::Object(mut list) = body else {
        return body;
    };
    let items: Vec<Value> = match list.remove("items") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|mut item| {
                if let Some(m) = item.as_object_mut() {
                    m.entry("apiVersion")
                        .or_insert_with(|| json!(res.api_version()));
                    m.entry("kind").or_insert_with(|| json!(res.kind));
                }
                item
            })
            .collect(),
        _ => Vec::new(),
    };
    json!({
        "apiVersion": "v1",
        "items": items,
        "kind": "List",
        "metadata": {"resourceVersion": ""},
    })
}

/// NAME (and NAMESPACE) and AGE from a plain object or list.
fn plain_rows(body: &Value, with_namespace: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let items: Vec<&Value> = match body["items"].as_array() {
        Some(items) => items.iter().collect(),
        None if body.is_object() => vec![body],
        None => Vec::new(),
    };
    let mut headers = vec!["NAME".to_string(), "AGE".to_string()];
    if with_namespace {
        headers.insert(0, "NAMESPACE".into());
    }
    let now = jiff::Timestamp::now();
    let rows = items
        .iter()
        .map(|item| {
            let meta = &item["metadata"];
            let age = meta["creationTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| human_age(now.duration_since(t).as_secs()))
                .unwrap_or_else(|| "<unknown>".into());
            let mut row = vec![meta["name"].as_str().unwrap_or("").to_string(), age];
            if with_namespace {
                row.insert(0, meta["namespace"].as_str().unwrap_or("").to_string());
            }
            row
        })
        .collect();
    (headers, rows)
}

/// kubectl's short ages: 45s, 12m, 3h, 9d.
fn human_age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
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
    fn lists_print_as_kubectl_lists() {
        let res = ApiType {
            group: "apps".into(),
            version: "v1".into(),
            plural: "deployments".into(),
            singular: "deployment".into(),
            kind: "Deployment".into(),
            short_names: vec![],
            namespaced: true,
        };
        let body = json!({"kind": "DeploymentList", "apiVersion": "apps/v1",
            "metadata": {"resourceVersion": "7"}, "items": [{"metadata": {"name": "web"}}]});
        assert_eq!(
            as_list(body, &res),
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
                   "items": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}]})
        );
    }

    #[test]
    fn plain_rows_without_a_table() {
        let body = json!({"items": [{"metadata": {"name": "a", "namespace": "dev"}}]});
        let (h, r) = plain_rows(&body, true);
        assert_eq!(h, ["NAMESPACE", "NAME", "AGE"]);
        assert_eq!(r, [["dev", "a", "<unknown>"]]);
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(3 * 86_400), "3d");
    }

    #[test]
    fn selectors_are_escaped() {
        assert_eq!(urlencode("app=web,tier!=db"), "app%3Dweb%2Ctier%21%3Ddb");
    }
}
