//! `bosun apply`: server-side apply of every object in the given manifests, then
//! optionally wait (with progress) until what was applied is ready.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, ValidationDirective};
use kube::{Api, Client};
use serde_json::Value;

use crate::{ClientOpts, client, output, rollout};

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

/// One object read from a manifest, with where it came from (a path or `STDIN`).
struct Manifest {
    source: String,
    doc: Value,
}

/// As kubectl: every object that can be read is applied even when others fail; each
/// failure is reported, and any failure makes the exit code 1.
pub async fn run(opts: ApplyOpts) -> Result<ExitCode> {
    let (manifests, read_errors) = read_manifests(&opts.files);
    for e in &read_errors {
        eprintln!("{}", output::error_message(e));
    }
    if manifests.is_empty() {
        if read_errors.is_empty() {
            bail!("no objects passed to apply");
        }
        return Ok(ExitCode::FAILURE);
    }
    let conn = client::connect(&opts.conn).await?;
    let types = client::discover(&conn.client).await?;
    let mut failed = !read_errors.is_empty();
    let mut deployments = Vec::new();
    for m in manifests {
        match apply_one(&conn.client, &types, &conn.namespace, &m).await {
            Ok((label, deployment)) => {
                println!("{label}");
                deployments.extend(deployment);
            }
            Err(e) => {
                eprintln!("{}", output::error_message(&e));
                failed = true;
            }
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
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Applies one object (server-side apply, unknown fields rejected by the server);
/// returns kubectl's one-line summary and, for a Deployment, its namespace and name.
async fn apply_one(
    client: &Client,
    types: &[client::ApiType],
    default_ns: &str,
    m: &Manifest,
) -> Result<(String, Option<(String, String)>)> {
    let doc = &m.doc;
    let source = &m.source;
    let api_version = doc["apiVersion"].as_str().unwrap_or("");
    let kind = doc["kind"].as_str().unwrap_or("");
    let mut missing = Vec::new();
    if api_version.is_empty() {
        missing.push("apiVersion not set");
    }
    if kind.is_empty() {
        missing.push("kind not set");
    }
    if !missing.is_empty() {
        bail!(
            "error validating {source:?}: error validating data: [{}]",
            missing.join(", ")
        );
    }
    let Some(name) = doc["metadata"]["name"].as_str().filter(|n| !n.is_empty()) else {
        bail!(
            "error validating {source:?}: {kind} has no metadata.name: resource name may not be empty"
        );
    };
    let name = name.to_string();
    let ns_field = doc["metadata"]["namespace"].as_str();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let Some(t) = types
        .iter()
        .find(|t| t.group == group && t.version == version && t.kind == kind)
    else {
        bail!(
            "resource mapping not found for name: {name:?} namespace: {:?} from {source:?}: \
             no matches for kind {kind:?} in version {api_version:?}",
            ns_field.unwrap_or("")
        );
    };
    let ar = ApiResource {
        group: t.group.clone(),
        version: t.version.clone(),
        api_version: t.api_version(),
        kind: t.kind.clone(),
        plural: t.plural.clone(),
    };
    let ns = ns_field.unwrap_or(default_ns).to_string();
    let api: Api<DynamicObject> = if t.namespaced {
        Api::namespaced_with(client.clone(), &ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let before = api.get_opt(&name).await.with_context(|| {
        format!("error when retrieving current configuration of {kind} {name:?} from {source:?}")
    })?;
    let params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation(ValidationDirective::Strict);
    let after = api
        .patch(&name, &params, &Patch::Apply(doc))
        .await
        .with_context(|| {
            let verb = if before.is_none() {
                "creating"
            } else {
                "applying"
            };
            format!("error when {verb} {source:?}")
        })?;
    let verb = match before {
        None => "created",
        Some(b) if b.metadata.resource_version == after.metadata.resource_version => "unchanged",
        Some(_) => "configured",
    };
    let prefix = if group.is_empty() {
        t.kind.to_ascii_lowercase()
    } else {
        format!("{}.{group}", t.kind.to_ascii_lowercase())
    };
    let deployment = (kind == "Deployment" && group == "apps").then(|| (ns, name.clone()));
    Ok((format!("{prefix}/{name} {verb}"), deployment))
}

/// Every object in the given files, directories and stdin, in order, and what could
/// not be read. As kubectl, a file is read up to its first bad document.
fn read_manifests(sources: &[String]) -> (Vec<Manifest>, Vec<anyhow::Error>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut take = |source: String, text: Result<String>| {
        let text = match text {
            Ok(text) => text,
            Err(e) => return errors.push(e),
        };
        let (docs, err) = parse_documents(&text);
        out.extend(docs.into_iter().map(|doc| Manifest {
            source: source.clone(),
            doc,
        }));
        if let Some(e) = err {
            errors.push(e.context(format!("error parsing {source}")));
        }
    };
    for src in sources {
        if src == "-" {
            let mut text = String::new();
            let read = std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| text)
                .context("reading stdin");
            take("STDIN".into(), read);
            continue;
        }
        let path = Path::new(src);
        let files: Vec<PathBuf> = if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut v: Vec<PathBuf> = entries
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
                }
                Err(e) => {
                    take(
                        src.clone(),
                        Err(anyhow::Error::new(e).context(format!("reading {src}"))),
                    );
                    continue;
                }
            }
        } else {
            vec![path.to_path_buf()]
        };
        for f in files {
            let read = std::fs::read_to_string(&f).map_err(|e| {
                anyhow::Error::new(e).context(format!("the path {:?} cannot be read", f.display()))
            });
            take(f.display().to_string(), read);
        }
    }
    (out, errors)
}

/// Splits a YAML stream into objects, unpacking `kind: List`. Documents are split at
/// `---` lines first, as kubectl does, so the objects before a malformed document are
/// still returned with the error. Line numbers in errors are those of the whole text.
fn parse_documents(text: &str) -> (Vec<Value>, Option<anyhow::Error>) {
    let mut out = Vec::new();
    for (first_line, chunk) in split_documents(text) {
        // Blank lines in front keep the parser's line numbers those of the file.
        let padded = format!("{}{chunk}", "\n".repeat(first_line));
        let docs: Vec<Value> = match serde_saphyr::from_multiple(&padded) {
            Ok(docs) => docs,
            Err(e) => return (out, Some(anyhow::anyhow!(yaml_error(&e)))),
        };
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
                other => {
                    let line = first_line + 1;
                    let what = match other {
                        Value::Array(_) => "a list".to_string(),
                        v => format!("{v}"),
                    };
                    return (
                        out,
                        Some(anyhow::anyhow!(
                            "the document starting at line {line} is {what}, not an object"
                        )),
                    );
                }
            }
        }
    }
    (out, None)
}

/// The parser's message without its own `error:` prefix and its hint about parser
/// options, which mean nothing to a user.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    match text.split_once(", set DuplicateKeyPolicy") {
        Some((head, _)) => head.to_string(),
        None => text.to_string(),
    }
}

/// The documents of a YAML stream with the (0-based) line each starts on. A separator
/// line (`---`, maybe followed by content) belongs to the document it opens, with the
/// marker blanked so columns stay right.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker {
            docs.push((start, std::mem::take(&mut current)));
            start = i;
            current.push_str("   ");
            current.push_str(&line[3..]);
        } else {
            current.push_str(line);
        }
    }
    docs.push((start, current));
    docs.retain(|(_, d)| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: b}\n";
        let (docs, err) = parse_documents(text);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["metadata"]["name"], "a");
        assert_eq!(docs[1]["kind"], "Secret");
    }

    #[test]
    fn malformed_yaml_is_an_error_with_its_line() {
        let (docs, err) = parse_documents("kind: [unclosed");
        assert!(docs.is_empty());
        assert!(err.is_some());
        let (_, err) = parse_documents("- just\n- a list\n");
        assert!(err.unwrap().to_string().contains("not an object"));
        // The documents before the bad one are kept; the error names the file's line.
        let text = "kind: A\nmetadata: {name: a}\n---\nkind: B\nmetadata:\n  name: b\n   bad: indent\n---\nkind: C\n";
        let (docs, err) = parse_documents(text);
        assert_eq!(docs.len(), 1);
        let msg = err.unwrap().to_string();
        assert!(msg.contains("line 7"), "{msg}");
        // A key given twice is an error, not silently the last value.
        let (_, err) = parse_documents("kind: A\nmetadata: {name: a}\nkind: B\n");
        assert_eq!(
            err.unwrap().to_string(),
            "line 3 column 1: duplicate mapping key: kind"
        );
    }

    #[test]
    fn documents_split_at_markers_only() {
        let docs = split_documents("a: 1\n--- # c\nb: '---'\n---x: 1\n# only a comment\n---\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0], (0, "a: 1\n".to_string()));
        assert_eq!(docs[1].0, 1);
        assert!(docs[1].1.contains("---x: 1"));
    }
}
