//! Pod volumes for the process runtime: configMap and secret volumes are written as files
//! under the pod directory, emptyDir is a directory there, hostPath is the host path. Each
//! container's volumeMounts become bind mounts in its private mount namespace.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, KeyToPath, Pod, ProjectedVolumeSource, Volume, VolumeProjection,
};

use crate::api::ClusterApi;
use crate::env::ConfigError;
use crate::osutil::write_atomic;
use crate::shim_spec::BindMount;

/// Directory of a volume of a pod.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

fn relative_ok(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn write_files(
    dir: &Path,
    data: &HashMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    what: &str,
) -> Result<(), ConfigError> {
    let io = |e: std::io::Error| ConfigError(format!("write {what} volume: {e}"));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut wanted: Vec<(String, &[u8], i32)> = Vec::new();
    match items {
        Some(items) => {
            for it in items {
                let Some(v) = data.get(&it.key) else {
                    return Err(ConfigError(format!(
                        "couldn't find key {} in {what}",
                        it.key
                    )));
                };
                if !relative_ok(&it.path) {
                    return Err(ConfigError(format!(
                        "{what}: item path {:?} must be relative without '..'",
                        it.path
                    )));
                }
                wanted.push((it.path.clone(), v, it.mode.unwrap_or(default_mode)));
            }
        }
        None => {
            for (k, v) in data {
                if relative_ok(k) {
                    wanted.push((k.clone(), v, default_mode));
                }
            }
        }
    }
    // Files of keys that went away are removed so the volume mirrors the object.
    let keep: std::collections::HashSet<PathBuf> =
        wanted.iter().map(|(p, _, _)| dir.join(p)).collect();
    remove_stale(dir, &keep);
    for (p, v, mode) in wanted {
        let path = dir.join(&p);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if std::fs::read(&path).ok().as_deref() != Some(v) {
            write_atomic(&path, v).map_err(io)?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode as u32 & 0o7777))
            .map_err(io)?;
    }
    Ok(())
}

fn remove_stale(dir: &Path, keep: &std::collections::HashSet<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_stale(&p, keep);
            let _ = std::fs::remove_dir(&p);
        } else if !keep.contains(&p) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// A prepared volume: its host path, and whether Kubernetes mounts it read-only always
/// (configMap and secret volumes).
#[derive(Debug, Clone)]
pub struct PreparedVolume {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Writes or refreshes the pod's volumes.
pub async fn prepare(
    api: &dyn ClusterApi,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<HashMap<String, PreparedVolume>, ConfigError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut out = HashMap::new();
    // Only root and the pod's own mounts reach what is below the pod's directory.
    let private = |e: std::io::Error| ConfigError(format!("pod directory: {e}"));
    std::fs::create_dir_all(pod_dir).map_err(private)?;
    std::fs::set_permissions(pod_dir, std::fs::Permissions::from_mode(0o700)).map_err(private)?;
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let own = |dir: &Path, read_only: bool| -> Result<(), ConfigError> {
        match fs_group {
            Some(g) => crate::isolation::give_to_fs_group(dir, g, read_only)
                .map_err(|e| ConfigError(format!("fsGroup {g} on {}: {e}", dir.display()))),
            None => Ok(()),
        }
    };
    // A volume of files the agent writes (ConfigMap, Secret, downwardAPI, projected):
    // read-only to the pod, given to its fsGroup.
    let file_volume = |dir: PathBuf,
                       data: &HashMap<String, Vec<u8>>,
                       items: Option<&Vec<KeyToPath>>,
                       mode: Option<i32>,
                       what: &str|
     -> Result<PreparedVolume, ConfigError> {
        write_files(&dir, data, items, mode.unwrap_or(0o644), what)?;
        own(&dir, true)?;
        Ok(PreparedVolume {
            path: dir,
            read_only: true,
        })
    };
    let vols: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[]);
    for v in vols {
        let dir = volume_dir(pod_dir, &v.name);
        let keyed = match (&v.config_map, &v.secret) {
            (Some(cm), _) => Some(KeyedSource {
                kind: Keyed::ConfigMap,
                name: cm.name.clone(),
                optional: cm.optional,
                items: cm.items.as_ref(),
                default_mode: cm.default_mode,
            }),
            (None, Some(sec)) => Some(KeyedSource {
                kind: Keyed::Secret,
                name: sec.secret_name.clone().unwrap_or_default(),
                optional: sec.optional,
                items: sec.items.as_ref(),
                default_mode: sec.default_mode,
            }),
            (None, None) => None,
        };
        if let Some(src) = keyed {
            let data = keyed_files(api, &ns, &src, &v.name).await?;
            let what = src.describe(&ns);
            let vol = file_volume(dir, &data, src.items, src.default_mode, &what)?;
            out.insert(v.name.clone(), vol);
        } else if let Some(ed) = &v.empty_dir {
            // World-writable as the kubelet makes it (only the pod reaches it), given to the
            // fsGroup once, when made: later files are the workload's own business.
            if !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .and_then(|()| {
                        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    })
                    .map_err(|e| ConfigError(format!("emptyDir {:?}: {e}", v.name)))?;
                own(&dir, false)?;
            }
            if ed.medium.as_deref() == Some("Memory") {
                let size = memory_volume_size(
                    ed.size_limit
                        .as_ref()
                        .and_then(|q| crate::env::parse_quantity(&q.0))
                        .map(|b| b as u64),
                    pod_memory_limit(pod),
                );
                mount_tmpfs(&dir, size).map_err(|e| {
                    ConfigError(format!("emptyDir {:?} (medium Memory): {e}", v.name))
                })?;
            }
            out.insert(
                v.name.clone(),
                PreparedVolume {
                    path: dir,
                    read_only: false,
                },
            );
        } else if let Some(hp) = &v.host_path {
            let path = PathBuf::from(&hp.path);
            let ty = hp.type_.as_deref().unwrap_or("");
            let err = |m: &str| ConfigError(format!("hostPath {:?} ({}): {m}", v.name, hp.path));
            match ty {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&path).map_err(|e| err(&e.to_string()))?
                }
                "FileOrCreate" => {
                    if !path.exists() {
                        std::fs::File::create(&path).map_err(|e| err(&e.to_string()))?;
                    }
                }
                "Directory" if !path.is_dir() => return Err(err("is not a directory")),
                "File" if !path.is_file() => return Err(err("is not a file")),
                "Socket" | "CharDevice" | "BlockDevice" => {
                    use std::os::unix::fs::FileTypeExt;
                    let ft = std::fs::metadata(&path)
                        .map_err(|e| err(&e.to_string()))?
                        .file_type();
                    let ok = match ty {
                        "Socket" => ft.is_socket(),
                        "CharDevice" => ft.is_char_device(),
                        _ => ft.is_block_device(),
                    };
                    if !ok {
                        return Err(err(&format!("is not a {ty}")));
                    }
                }
                "" | "Directory" | "File" => {}
                other => return Err(err(&format!("unknown type {other:?}"))),
            }
            out.insert(
                v.name.clone(),
                PreparedVolume {
                    path,
                    read_only: false,
                },
            );
        } else if let Some(claim) = &v.persistent_volume_claim {
            let path = claim_path(api, &ns, &claim.claim_name)
                .await
                .map_err(|m| ConfigError(format!("volume {:?}: {m}", v.name)))?;
            out.insert(
                v.name.clone(),
                PreparedVolume {
                    path,
                    read_only: claim.read_only.unwrap_or(false),
                },
            );
        } else if let Some(da) = &v.downward_api {
            let (data, items) = downward_files(pod, da)
                .map_err(|e| ConfigError(format!("downwardAPI volume {:?}: {}", v.name, e.0)))?;
            let vol = file_volume(dir, &data, Some(&items), da.default_mode, "downwardAPI")?;
            out.insert(v.name.clone(), vol);
        } else if let Some(p) = &v.projected {
            let (data, items) = projected_files(api, pod, &ns, p, &dir, &v.name).await?;
            let what = format!("projected volume {:?}", v.name);
            let vol = file_volume(dir, &data, Some(&items), p.default_mode, &what)?;
            out.insert(v.name.clone(), vol);
        } else {
            return Err(ConfigError(format!(
                "volume {:?}: only configMap, secret, emptyDir, hostPath, downwardAPI, projected and persistentVolumeClaim volumes are supported",
                v.name
            )));
        }
    }
    Ok(out)
}

/// The two kinds of object whose keys volumes show as files.
#[derive(Clone, Copy)]
enum Keyed {
    ConfigMap,
    Secret,
}

/// A ConfigMap or Secret a volume (or a projected volume's source) shows.
struct KeyedSource<'a> {
    kind: Keyed,
    name: String,
    optional: Option<bool>,
    items: Option<&'a Vec<KeyToPath>>,
    default_mode: Option<i32>,
}

impl KeyedSource<'_> {
    /// How errors about its keys name it.
    fn describe(&self, ns: &str) -> String {
        let kind = match self.kind {
            Keyed::ConfigMap => "ConfigMap",
            Keyed::Secret => "Secret",
        };
        format!("{kind} {ns}/{}", self.name)
    }
}

/// The files of a ConfigMap or Secret by key (none when it is missing and `optional`).
/// A key in both of an object's maps gets the value of the second (ConfigMap
/// `binaryData`, Secret `stringData`).
async fn keyed_files(
    api: &dyn ClusterApi,
    ns: &str,
    src: &KeyedSource<'_>,
    volume: &str,
) -> Result<HashMap<String, Vec<u8>>, ConfigError> {
    let name = src.name.as_str();
    let (noun, found) = match src.kind {
        Keyed::ConfigMap => (
            "configmap",
            api.config_map(ns, name).await.map(|o| {
                o.map(|o| {
                    let text = o.data.unwrap_or_default().into_iter();
                    let binary = o.binary_data.unwrap_or_default().into_iter();
                    text.map(|(k, v)| (k, v.into_bytes()))
                        .chain(binary.map(|(k, v)| (k, v.0)))
                        .collect::<HashMap<_, _>>()
                })
            }),
        ),
        Keyed::Secret => (
            "secret",
            api.secret(ns, name).await.map(|o| {
                o.map(|o| {
                    let bytes = o.data.unwrap_or_default().into_iter();
                    let text = o.string_data.unwrap_or_default().into_iter();
                    bytes
                        .map(|(k, v)| (k, v.0))
                        .chain(text.map(|(k, v)| (k, v.into_bytes())))
                        .collect()
                })
            }),
        ),
    };
    match found.map_err(|e| ConfigError(format!("cannot get {noun} {name:?}: {e:#}")))? {
        Some(files) => Ok(files),
        None if src.optional.unwrap_or(false) => Ok(HashMap::new()),
        None => Err(ConfigError(format!(
            "{noun} {name:?} not found (volume {volume:?})"
        ))),
    }
}

/// Places `data` (by key) at the items' paths, or every key at its own name without items.
fn place(
    data: HashMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    what: &str,
    files: &mut HashMap<String, Vec<u8>>,
    placed: &mut Vec<KeyToPath>,
) -> Result<(), ConfigError> {
    match items {
        Some(items) => {
            for it in items {
                let v = data.get(&it.key).ok_or_else(|| {
                    ConfigError(format!("couldn't find key {} in {what}", it.key))
                })?;
                files.insert(it.path.clone(), v.clone());
                placed.push(KeyToPath {
                    key: it.path.clone(),
                    path: it.path.clone(),
                    mode: it.mode,
                });
            }
        }
        None => {
            for (k, v) in data {
                placed.push(KeyToPath {
                    key: k.clone(),
                    path: k.clone(),
                    mode: None,
                });
                files.insert(k, v);
            }
        }
    }
    Ok(())
}

/// Renew a projected token once 80% of its life has passed or it is a day old, as the
/// kubelet does.
pub fn token_needs_renewal(iat: i64, exp: i64, now: i64) -> bool {
    let life = exp - iat;
    life <= 0 || now >= iat + life * 8 / 10 || now - iat >= 24 * 3600
}

/// `iat`, `exp` and the bound pod's UID of a JWT, read without checking its signature
/// (it is our own, read back from the pod's volume).
pub fn token_times(token: &str) -> Option<(i64, i64, String)> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let uid = v
        .pointer("/kubernetes.io/pod/uid")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some((v.get("iat")?.as_i64()?, v.get("exp")?.as_i64()?, uid))
}

/// The files of a projected volume: ServiceAccount tokens (bound to the pod, renewed before
/// they expire), ConfigMaps, Secrets and downward API items. The sources are read from the
/// API at the same time (a pod's default `kube-api-access` volume is a token request and a
/// ConfigMap read, both before its first container starts) and placed in their order, later
/// ones over earlier ones, as in Kubernetes.
async fn projected_files(
    api: &dyn ClusterApi,
    pod: &Pod,
    ns: &str,
    p: &ProjectedVolumeSource,
    dir: &Path,
    volume: &str,
) -> Result<(HashMap<String, Vec<u8>>, Vec<KeyToPath>), ConfigError> {
    let sources = p.sources.iter().flatten();
    let each = futures::future::join_all(
        sources.map(|src| projected_source(api, pod, ns, src, dir, volume)),
    )
    .await;
    let mut files = HashMap::new();
    let mut items = Vec::new();
    for one in each {
        let (f, i) = one?;
        files.extend(f);
        items.extend(i);
    }
    Ok((files, items))
}

/// The files of one source of a projected volume.
async fn projected_source(
    api: &dyn ClusterApi,
    pod: &Pod,
    ns: &str,
    src: &VolumeProjection,
    dir: &Path,
    volume: &str,
) -> Result<(HashMap<String, Vec<u8>>, Vec<KeyToPath>), ConfigError> {
    let mut files = HashMap::new();
    let mut items = Vec::new();
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(t) = &src.service_account_token {
        if !relative_ok(&t.path) {
            return Err(ConfigError(format!(
                "projected volume {volume:?}: token path {:?} must be relative without '..'",
                t.path
            )));
        }
        let now = jiff::Timestamp::now().as_second();
        let current = std::fs::read_to_string(dir.join(&t.path)).ok();
        let fresh = current.as_deref().and_then(|tok| {
            let (iat, exp, uid) = token_times(tok.trim())?;
            (uid == pod_uid && !token_needs_renewal(iat, exp, now)).then(|| tok.to_string())
        });
        let token = match fresh {
            Some(tok) => tok,
            None => {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".into());
                api.service_account_token(
                        pod,
                        &sa,
                        t.audience.as_deref().filter(|a| !a.is_empty()),
                        t.expiration_seconds.unwrap_or(3600),
                    )
                    .await
                    .map_err(|e| {
                        ConfigError(format!(
                            "projected volume {volume:?}: cannot get a token for service account {ns}/{sa}: {e:#}"
                        ))
                    })?
            }
        };
        files.insert(t.path.clone(), token.into_bytes());
        items.push(KeyToPath {
            key: t.path.clone(),
            path: t.path.clone(),
            mode: None,
        });
    } else if let Some(keyed) = src
        .config_map
        .as_ref()
        .map(|cm| KeyedSource {
            kind: Keyed::ConfigMap,
            name: cm.name.clone(),
            optional: cm.optional,
            items: cm.items.as_ref(),
            default_mode: None,
        })
        .or_else(|| {
            src.secret.as_ref().map(|sec| KeyedSource {
                kind: Keyed::Secret,
                name: sec.name.clone(),
                optional: sec.optional,
                items: sec.items.as_ref(),
                default_mode: None,
            })
        })
    {
        let data = keyed_files(api, ns, &keyed, volume).await?;
        place(
            data,
            keyed.items,
            &keyed.describe(ns),
            &mut files,
            &mut items,
        )?;
    } else if let Some(da) = &src.downward_api {
        let source = k8s_openapi::api::core::v1::DownwardAPIVolumeSource {
            items: da.items.clone(),
            default_mode: None,
        };
        let (data, its) = downward_files(pod, &source).map_err(|e| {
            ConfigError(format!("projected volume {volume:?}: downwardAPI: {}", e.0))
        })?;
        files.extend(data);
        items.extend(its);
    } else {
        return Err(ConfigError(format!(
            "projected volume {volume:?}: only serviceAccountToken, configMap, secret and downwardAPI sources are supported"
        )));
    }
    Ok((files, items))
}

/// Annotation of volumes the built-in local-path provisioner made (their directory is
/// created on first use), as `bosun-controllers::storage` sets it.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const LOCAL_PATH_PROVISIONER: &str = "bosun.dev/local-path";

/// The host directory of a bound claim.
async fn claim_path(api: &dyn ClusterApi, ns: &str, claim: &str) -> Result<PathBuf, String> {
    let c = api
        .persistent_volume_claim(ns, claim)
        .await
        .map_err(|e| format!("cannot get persistentvolumeclaim {claim:?}: {e:#}"))?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    if c.metadata.deletion_timestamp.is_some() {
        return Err(format!("persistentvolumeclaim {claim:?} is being deleted"));
    }
    let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let vname = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty() && bound)
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound yet"))?;
    let pv = api
        .persistent_volume(&vname)
        .await
        .map_err(|e| format!("cannot get persistentvolume {vname:?}: {e:#}"))?
        .ok_or_else(|| format!("persistentvolume {vname:?} not found"))?;
    let spec = pv.spec.as_ref();
    let path = spec
        .and_then(|s| s.local.as_ref().map(|l| l.path.clone()))
        .or_else(|| spec.and_then(|s| s.host_path.as_ref().map(|h| h.path.clone())))
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!("persistentvolume {vname:?}: only local and hostPath volumes can be mounted")
        })?;
    let ours = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .is_some_and(|p| p == LOCAL_PATH_PROVISIONER);
    if ours && !path.exists() {
        // Writable by any user of the pod, as the local-path provisioner makes it.
        std::fs::create_dir_all(&path)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)))
            .map_err(|e| format!("create {}: {e}", path.display()))?;
    }
    if !path.exists() {
        return Err(format!(
            "persistentvolume {vname:?}: path {} does not exist on this node",
            path.display()
        ));
    }
    Ok(path)
}

/// A downwardAPI volume's contents by path, and the items that place them.
type DownwardFiles = (HashMap<String, Vec<u8>>, Vec<KeyToPath>);

/// The files of a downwardAPI volume, by path, with their items.
fn downward_files(
    pod: &Pod,
    da: &k8s_openapi::api::core::v1::DownwardAPIVolumeSource,
) -> Result<DownwardFiles, ConfigError> {
    let facts = crate::env::PodFacts {
        pod,
        pod_ip: String::new(),
        host_ip: String::new(),
        node_name: "",
        node_cpu: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        node_memory: mem_total(),
    };
    let mut data = HashMap::new();
    let mut items = Vec::new();
    for it in da.items.iter().flatten() {
        let value = if let Some(f) = &it.field_ref {
            // Volumes carry only what does not change with the pod's placement.
            let path = f.field_path.as_str();
            let allowed = matches!(
                path,
                "metadata.name"
                    | "metadata.namespace"
                    | "metadata.uid"
                    | "metadata.labels"
                    | "metadata.annotations"
            ) || path.starts_with("metadata.labels['")
                || path.starts_with("metadata.annotations['");
            if !allowed {
                return Err(ConfigError(format!(
                    "fieldRef {path:?} is not supported in volumes"
                )));
            }
            crate::env::field_ref(&facts, path)?
        } else if let Some(r) = &it.resource_field_ref {
            let cname = r.container_name.as_deref().unwrap_or("");
            let c = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == cname))
                .ok_or_else(|| ConfigError(format!("resourceFieldRef: no container {cname:?}")))?;
            crate::env::resource_ref(&facts, c, r)?
        } else {
            return Err(ConfigError(format!(
                "item {:?}: fieldRef or resourceFieldRef is required",
                it.path
            )));
        };
        data.insert(it.path.clone(), value.into_bytes());
        items.push(KeyToPath {
            key: it.path.clone(),
            path: it.path.clone(),
            mode: it.mode,
        });
    }
    Ok((data, items))
}

/// The size of a memory-backed emptyDir, as the kubelet sizes it: its `sizeLimit`, but no
/// more than the pod's memory limit (its pages count toward that limit anyway, since they
/// are charged to the cgroup of the container that writes them).
pub fn memory_volume_size(size_limit: Option<u64>, pod_limit: Option<u64>) -> Option<u64> {
    match (size_limit.filter(|s| *s > 0), pod_limit.filter(|l| *l > 0)) {
        (Some(s), Some(l)) => Some(s.min(l)),
        (s, l) => s.or(l),
    }
}

/// The pod's memory limit when every container declares one (the pod cgroup's limit): the
/// larger of the app containers' sum and the largest init container.
pub fn pod_memory_limit(pod: &Pod) -> Option<u64> {
    let spec = pod.spec.as_ref()?;
    let limit = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()?
            .limits
            .as_ref()?
            .get("memory")
            .and_then(|q| crate::env::parse_quantity(&q.0))
            .map(|b| b as u64)
    };
    let mut sum = 0u64;
    for c in &spec.containers {
        sum += limit(c)?;
    }
    let mut init = 0u64;
    for c in spec.init_containers.iter().flatten() {
        init = init.max(limit(c)?);
    }
    Some(sum.max(init))
}

/// Bytes a directory tree takes on disk (allocated blocks, as `du`), not following links.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The kubelet's emptyDir eviction check: the message of the first disk-backed emptyDir
/// whose usage is over its `sizeLimit` (memory-backed ones are tmpfs of that size and
/// cannot exceed it).
pub async fn empty_dir_over_limit(pod: &Pod, pod_dir: &Path) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let mut checks = Vec::new();
    for v in spec.volumes.iter().flatten() {
        let Some(ed) = &v.empty_dir else { continue };
        if ed.medium.as_deref() == Some("Memory") {
            continue;
        }
        let Some(q) = &ed.size_limit else { continue };
        let Some(limit) = crate::env::parse_quantity(&q.0).filter(|l| *l > 0.0) else {
            continue;
        };
        checks.push((
            v.name.clone(),
            q.0.clone(),
            limit,
            volume_dir(pod_dir, &v.name),
        ));
    }
    if checks.is_empty() {
        return None;
    }
    tokio::task::spawn_blocking(move || {
        checks.into_iter().find_map(|(name, shown, limit, dir)| {
            (disk_usage(&dir) as f64 > limit)
                .then(|| format!("Usage of EmptyDir volume {name:?} exceeds the limit {shown:?}. "))
        })
    })
    .await
    .ok()
    .flatten()
}

/// The machine's memory in bytes (the default of a memory limit in resourceFieldRef).
fn mem_total() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0)
}

fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Some(Ok(p))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else {
        return false;
    };
    d.dev() != p.dev()
}

/// A tmpfs on `dir` (once), `size` bytes at most when given.
fn mount_tmpfs(dir: &Path, size: Option<u64>) -> Result<(), String> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut opts = "mode=1777".to_string();
    if let Some(s) = size {
        opts.push_str(&format!(",size={s}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))
}

/// Unmounts the pod's memory-backed volumes before its directory is removed.
pub fn unmount_volumes(pod_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(pod_dir.join("volumes")) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if is_mount_point(&p)
            && let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(path = %p.display(), error = %err, "cannot unmount pod volume");
        }
    }
}

/// The bind mounts of one container.
pub fn mounts_for(
    c: &Container,
    volumes: &HashMap<String, PreparedVolume>,
) -> Result<Vec<BindMount>, ConfigError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(src) = volumes.get(&m.name) else {
            return Err(ConfigError(format!(
                "volumeMount {:?}: no volume with that name",
                m.name
            )));
        };
        let mut source = src.path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if !relative_ok(sub) {
                return Err(ConfigError(format!(
                    "volumeMount {:?}: subPath {sub:?} must be relative without '..'",
                    m.name
                )));
            }
            source = source.join(sub);
            if !source.exists() {
                std::fs::create_dir_all(&source)
                    .map_err(|e| ConfigError(format!("subPath {sub:?}: {e}")))?;
            }
        }
        if !m.mount_path.starts_with('/') {
            return Err(ConfigError(format!(
                "volumeMount {:?}: mountPath {:?} must be absolute",
                m.name, m.mount_path
            )));
        }
        out.push(BindMount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: src.read_only || m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_volumes_are_sized_by_limit_and_pod_memory() {
        assert_eq!(
            memory_volume_size(Some(16 << 20), Some(64 << 20)),
            Some(16 << 20)
        );
        assert_eq!(
            memory_volume_size(Some(128 << 20), Some(64 << 20)),
            Some(64 << 20)
        );
        assert_eq!(memory_volume_size(None, Some(64 << 20)), Some(64 << 20));
        assert_eq!(memory_volume_size(None, None), None);
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"limits": {"memory": "32Mi"}}},
                {"name": "b", "resources": {"limits": {"memory": "16Mi"}}}],
            "initContainers": [{"name": "i", "resources": {"limits": {"memory": "64Mi"}}}]}}))
        .unwrap();
        assert_eq!(pod_memory_limit(&pod), Some(64 << 20));
        let partial: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "containers": [{"name": "a", "resources": {"limits": {"memory": "32Mi"}}},
                           {"name": "b"}]}}))
        .unwrap();
        assert_eq!(pod_memory_limit(&partial), None);
    }

    #[test]
    fn tokens_are_renewed_at_four_fifths_of_their_life() {
        let iat = 1_000_000;
        let exp = iat + 3607;
        assert!(!token_needs_renewal(iat, exp, iat));
        assert!(!token_needs_renewal(iat, exp, iat + 2884));
        assert!(token_needs_renewal(iat, exp, iat + 2886));
        assert!(token_needs_renewal(iat, exp, exp + 1));
        // A long-lived token is still renewed daily.
        assert!(token_needs_renewal(iat, iat + 7 * 86_400, iat + 86_400));
        assert!(token_needs_renewal(iat, iat, iat));
    }

    #[test]
    fn token_claims_are_read_back() {
        use base64::Engine;
        let enc = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let t = format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg": "ES256"})),
            enc(serde_json::json!({"iat": 10, "exp": 20,
                "kubernetes.io": {"pod": {"name": "p", "uid": "u-1"}}}))
        );
        assert_eq!(token_times(&t), Some((10, 20, "u-1".to_string())));
        assert_eq!(token_times("not-a-jwt"), None);
    }
}
