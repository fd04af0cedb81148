//! Connecting client verbs to a cluster, and resolving the resource names users type.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};

use crate::ClientOpts;

/// A client plus the namespace commands default to.
pub struct Conn {
    pub client: Client,
    pub namespace: String,
}

pub async fn connect(opts: &ClientOpts) -> Result<Conn> {
    let path = opts.kubeconfig.clone().or_else(|| {
        let local = PathBuf::from("bosun-data/kubeconfig");
        local.exists().then_some(local)
    });
    let config = match path {
        Some(p) => {
            let kc = Kubeconfig::read_from(&p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig found: start a cluster with `bosun up` or pass --kubeconfig")?,
    };
    let namespace = opts
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok(Conn {
        client: Client::try_from(config)?,
        namespace,
    })
}

/// A resource type resolved from what the user typed (`deploy`, `pods`, `Service` ...).
pub struct Resolved {
    pub ar: ApiResource,
    pub caps: ApiCapabilities,
}

impl Resolved {
    pub fn namespaced(&self) -> bool {
        self.caps.scope == Scope::Namespaced
    }

    /// The collection URL, namespaced when the type is and `ns` is given.
    pub fn url(&self, ns: Option<&str>) -> String {
        let base = if self.ar.group.is_empty() {
            format!("/api/{}", self.ar.version)
        } else {
            format!("/apis/{}/{}", self.ar.group, self.ar.version)
        };
        match ns {
            Some(ns) if self.namespaced() => format!("{base}/namespaces/{ns}/{}", self.ar.plural),
            _ => format!("{base}/{}", self.ar.plural),
        }
    }
}

/// Resolves a resource name by plural, singular, kind or short name.
pub async fn resolve(client: &Client, name: &str) -> Result<Resolved> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let wanted = name.to_ascii_lowercase();
    let (group_hint, base) = match wanted.split_once('.') {
        Some((b, g)) => (Some(g.to_string()), b.to_string()),
        None => (None, wanted.clone()),
    };
    for group in discovery.groups() {
        if let Some(g) = &group_hint
            && group.name() != g
        {
            continue;
        }
        for (ar, caps) in group.recommended_resources() {
            let short = short_names(&ar);
            if ar.plural == base
                || ar.kind.to_ascii_lowercase() == base
                || short.contains(&base.as_str())
            {
                return Ok(Resolved { ar, caps });
            }
        }
    }
    bail!("the server doesn't have a resource type \"{name}\"")
}

/// Short names are not part of kube's ApiResource; take them from bosun's registry.
fn short_names(ar: &ApiResource) -> &'static [&'static str] {
    bosun_api::Registry::builtin()
        .by_resource(&ar.group, &ar.version, &ar.plural)
        .map(|k| k.short_names)
        .unwrap_or(&[])
}
