//! `bosun apply`: server-side apply of every object in the given manifests, then
//! optionally wait (with progress) until what was applied is ready.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Api, Client};
use serde_json::Value;

use crate::{ClientOpts, client, rollout};

#[derive(Args)]
pub struct ApplyOpts {
    /// Manifest file, directory (its .yaml/.yml/.json files) or - for stdin; repeatable
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Wait until applied Deployments have rolled out, showing progress
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait before failing
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    #[command(flatten)]
    pub conn: ClientOpts,
}

const FIELD_MANAGER: &str = "bosun";

pub async fn run(opts: ApplyOpts) -> Result<ExitCode> {
    let docs = read_manifests(&opts.files)?;
    if docs.is_empty() {
        bail!("no objects found in {}", opts.files.join(", "));
    }
    let conn = client::connect(&opts.conn).await?;
    let mut deployments = Vec::new();
    for doc in docs {
        let (label, deployment) = apply_one(&conn.client, &conn.namespace, doc).await?;
        println!("{label}");
        if let Some(d) = deployment {
            deployments.push(d);
        }
    }
    if opts.wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(opts.timeout);
        for (ns, name) in deployments {
            let api: Api<Deployment> = Api::namespaced(conn.client.clone(), &ns);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !rollout::wait_rollout(&api, &name, Some(left), true).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies one object; returns kubectl's one-line summary and, for a Deployment, its
/// namespace and name.
async fn apply_one(
    client: &Client,
    default_ns: &str,
    doc: Value,
) -> Result<(String, Option<(String, String)>)> {
    let api_version = doc["apiVersion"]
        .as_str()
        .context("object without apiVersion")?;
    let kind = doc["kind"].as_str().context("object without kind")?;
    let name = doc["metadata"]["name"]
        .as_str()
        .with_context(|| format!("{kind} without metadata.name"))?
        .to_string();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("resource type {kind} ({api_version}) is not served"))?;
    let ns = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default_ns)
        .to_string();
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        Api::namespaced_with(client.clone(), &ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let before = api.get_opt(&name).await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = api
        .patch(&name, &params, &Patch::Apply(&doc))
        .await
        .with_context(|| format!("applying {kind} {name:?}"))?;
    let verb = match before {
        None => "created",
        Some(b) if b.metadata.resource_version == after.metadata.resource_version => "unchanged",
        Some(_) => "configured",
    };
    let prefix = if group.is_empty() {
        ar.kind.to_ascii_lowercase()
    } else {
        format!("{}.{group}", ar.kind.to_ascii_lowercase())
    };
    let deployment = (kind == "Deployment" && group == "apps").then(|| (ns, name.clone()));
    Ok((format!("{prefix}/{name} {verb}"), deployment))
}

/// Every object in the given files, directories and stdin, in order.
fn read_manifests(sources: &[String]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for src in sources {
        if src == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            out.extend(parse_documents(&text).context("parsing stdin")?);
            continue;
        }
        let path = Path::new(src);
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            out.extend(parse_documents(&text).with_context(|| format!("parsing {}", f.display()))?);
        }
    }
    Ok(out)
}

/// Splits a YAML stream into objects, unpacking `kind: List`.
fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)?;
    let mut out = Vec::new();
    for doc in docs {
        match doc {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(
                    m.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            Value::Object(_) => out.push(doc),
            other => bail!("expected an object, found {other}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: b}\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["metadata"]["name"], "a");
        assert_eq!(docs[1]["kind"], "Secret");
    }

    #[test]
    fn malformed_yaml_is_an_error() {
        assert!(parse_documents("kind: [unclosed").is_err());
        assert!(parse_documents("- just\n- a list\n").is_err());
    }
}
