//! The node's half of the built-in local-path provisioner: it tells the cluster where this
//! node keeps provisioned volumes (an annotation on its Node), and removes the directory of
//! a `Delete` volume of this node once the volume object is being deleted, then releases the
//! volume's cleanup finalizer. The directory itself is made when a pod first mounts it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bosun_watch::Informer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;

// The names `bosun-controllers::storage::logic` uses.
const NODE_LOCAL_PATH_DIR: &str = "bosun.dev/local-path-dir";
const LOCAL_PATH_CLEANUP: &str = "bosun.dev/local-path-cleanup";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const PROVISIONER: &str = "bosun.dev/local-path";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Where this node keeps provisioned volumes.
pub fn base_dir(data_dir: &Path) -> PathBuf {
    std::fs::canonicalize(data_dir)
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .join("local-path")
}

/// The node a provisioned volume is pinned to.
fn volume_node(v: &PersistentVolume) -> Option<&str> {
    v.spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == HOSTNAME_LABEL && e.operator == "In")
        .and_then(|e| e.values.as_ref()?.first())
        .map(String::as_str)
}

/// Removes the volume's directory when it is ours to remove; true when the finalizer may go.
fn remove_directory(v: &PersistentVolume, base: &Path) -> bool {
    let Some(path) = v
        .spec
        .as_ref()
        .and_then(|s| s.local.as_ref())
        .map(|l| PathBuf::from(&l.path))
    else {
        return true;
    };
    // Only a directory directly under this node's base directory, never anything else.
    if path.parent() != Some(base) || path.file_name().is_none() {
        tracing::warn!(volume = ?v.metadata.name, path = %path.display(), "volume path is outside the local-path directory; left alone");
        return true;
    }
    match std::fs::remove_dir_all(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove volume directory");
            false
        }
    }
}

async fn publish_dir(client: &kube::Client, node: &str, base: &Path) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"annotations": {
        NODE_LOCAL_PATH_DIR: base.to_string_lossy(),
    }}});
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Runs until `shutdown`.
pub async fn run(
    client: kube::Client,
    node: String,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let base = base_dir(&data_dir);
    if let Err(e) = std::fs::create_dir_all(&base) {
        tracing::warn!(path = %base.display(), error = %e, "cannot create the local-path directory");
    }
    loop {
        match publish_dir(&client, &node, &base).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot publish the local-path directory; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let stop = shutdown.child_token();
    let _stop_watch = stop.clone().drop_guard();
    let volumes = Informer::start(api.clone(), stop);
    // Every volume once listed, then each change; a volume deleted for good needs nothing.
    let mut touched = std::pin::pin!(volumes.subscribe());
    loop {
        let t = tokio::select! {
            _ = shutdown.cancelled() => return,
            t = touched.next() => t,
        };
        let Some(t) = t else { return };
        let Some(v) = volumes.current(&t) else {
            continue;
        };
        let ours = v
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROVISIONED_BY))
            .is_some_and(|p| p == PROVISIONER);
        let held = v
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == LOCAL_PATH_CLEANUP);
        if !ours
            || !held
            || v.metadata.deletion_timestamp.is_none()
            || volume_node(&v) != Some(&node)
        {
            continue;
        }
        let dir = base.clone();
        let v2 = v.clone();
        let removed = tokio::task::spawn_blocking(move || remove_directory(&v2, &dir))
            .await
            .unwrap_or(false);
        if !removed {
            continue;
        }
        let rest: Vec<String> = v
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != LOCAL_PATH_CLEANUP)
            .collect();
        let patch = serde_json::json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": v.metadata.resource_version,
        }});
        let name = v.metadata.name.clone().unwrap_or_default();
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(volume = %name, "local volume removed"),
            // A newer version arrives through the watch and is handled then.
            Err(e) => tracing::debug!(volume = %name, error = %e, "cannot release volume"),
        }
    }
}
