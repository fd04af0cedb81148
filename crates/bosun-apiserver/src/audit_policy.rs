//! The audit policy (`--audit-policy-file`, an `audit.k8s.io/v1` Policy): the first rule
//! that matches a request gives its level, `None`, `Metadata`, `Request` (plus the request
//! body) or `RequestResponse` (plus the response body); a request no rule matches is not
//! recorded, as in Kubernetes. Without a policy every request is recorded at `Metadata`.
//!
//! Whatever the policy says, the bodies of Secrets, TokenRequests, TokenReviews and
//! bootstrap or ServiceAccount credentials never reach the log: those requests are
//! recorded at `Metadata` at most.

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::attrs::Attrs;
use crate::user::User;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupResources {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub level: Level,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    #[serde(default)]
    pub omit_stages: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub omit_stages: Vec<String>,
}

/// Resources whose bodies carry credentials.
fn holds_credentials(a: &Attrs) -> bool {
    (a.api_group.is_empty()
        && (a.resource == "secrets"
            || (a.resource == "serviceaccounts" && a.subresource == "token")))
        || (a.api_group == "authentication.k8s.io" && a.resource == "tokenreviews")
        || (a.api_group == "certificates.k8s.io" && a.subresource == "approval")
}

/// `*` matches everything, `x/*` every subresource of x, `*/y` subresource y of anything.
fn resource_matches(rule: &str, a: &Attrs) -> bool {
    let full = a.combined_resource();
    rule == "*"
        || rule == full
        || rule
            .strip_suffix("/*")
            .is_some_and(|r| r == a.resource && !a.subresource.is_empty())
        || rule.strip_prefix("*/").is_some_and(|s| s == a.subresource)
}

fn url_matches(rule: &str, path: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

impl Rule {
    fn matches(&self, user: Option<&User>, a: &Attrs) -> bool {
        let name = user.map_or("system:anonymous", |u| u.name.as_str());
        if !self.users.is_empty() && !self.users.iter().any(|u| u == name) {
            return false;
        }
        if !self.user_groups.is_empty() {
            let in_group = |g: &String| match user {
                Some(u) => u.groups.contains(g),
                None => g == "system:unauthenticated",
            };
            if !self.user_groups.iter().any(in_group) {
                return false;
            }
        }
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == &a.verb || v == "*") {
            return false;
        }
        if !a.resource_request {
            // A rule naming resources or namespaces is about resource requests only.
            if !self.resources.is_empty() || !self.namespaces.is_empty() {
                return false;
            }
            return self.non_resource_urls.is_empty()
                || self
                    .non_resource_urls
                    .iter()
                    .any(|u| url_matches(u, &a.path));
        }
        if !self.non_resource_urls.is_empty() && self.resources.is_empty() {
            return false;
        }
        // Kubernetes: "" in namespaces matches cluster-scoped objects.
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == &a.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        self.resources.iter().any(|gr| {
            (gr.group == a.api_group || gr.group == "*")
                && (gr.resources.is_empty() || gr.resources.iter().any(|r| resource_matches(r, a)))
                && (gr.resource_names.is_empty() || gr.resource_names.contains(&a.name))
        })
    }
}

impl Policy {
    pub fn parse(text: &str) -> anyhow::Result<Policy> {
        let p: Policy = serde_saphyr::from_str(text).context("parsing the audit Policy")?;
        if !p.kind.is_empty() && p.kind != "Policy" {
            bail!("the audit policy file holds a {}, not a Policy", p.kind);
        }
        if !p.api_version.is_empty()
            && !matches!(
                p.api_version.as_str(),
                "audit.k8s.io/v1" | "audit.k8s.io/v1beta1"
            )
        {
            bail!(
                "audit policy apiVersion {:?}: expected audit.k8s.io/v1",
                p.api_version
            );
        }
        let stages = [
            "RequestReceived",
            "ResponseStarted",
            "ResponseComplete",
            "Panic",
        ];
        for s in p
            .omit_stages
            .iter()
            .chain(p.rules.iter().flat_map(|r| &r.omit_stages))
        {
            if !stages.contains(&s.as_str()) {
                bail!("audit policy: unknown stage {s:?} in omitStages");
            }
        }
        Ok(p)
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Policy> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the audit policy {}", path.display()))?;
        Policy::parse(&text).with_context(|| path.display().to_string())
    }

    /// The level of a request and whether its `stage` is left out.
    pub fn decide(&self, user: Option<&User>, a: &Attrs, stage: &str) -> Level {
        let Some(rule) = self.rules.iter().find(|r| r.matches(user, a)) else {
            return Level::None;
        };
        if self
            .omit_stages
            .iter()
            .chain(&rule.omit_stages)
            .any(|s| s == stage)
        {
            return Level::None;
        }
        cap(rule.level, a)
    }
}

/// The level actually used: credentials never above Metadata.
pub fn cap(level: Level, a: &Attrs) -> Level {
    if holds_credentials(a) {
        level.min(Level::Metadata)
    } else {
        level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    users: ["system:kube-proxy"]
  - level: None
    nonResourceURLs: ["/healthz*", "/version"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["configmaps", "secrets"]
  - level: Request
    verbs: ["create", "update", "patch"]
    resources:
      - group: "apps"
        resources: ["deployments", "deployments/*"]
    namespaces: ["prod"]
  - level: Metadata
"#;

    fn attrs(method: &str, path: &str) -> Attrs {
        crate::attrs::from_request(&method.parse().unwrap(), path, "")
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            groups: vec!["system:authenticated".into()],
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = Policy::parse(POLICY).unwrap();
        let ann = user("ann");
        let at = |m: &str, path: &str| p.decide(Some(&ann), &attrs(m, path), "ResponseComplete");
        assert_eq!(at("GET", "/healthz"), Level::None);
        assert_eq!(at("GET", "/healthz/ready"), Level::None);
        assert_eq!(at("GET", "/api"), Level::Metadata);
        assert_eq!(
            at("POST", "/api/v1/namespaces/d/configmaps"),
            Level::RequestResponse
        );
        // Secrets: never above Metadata, whatever the rule says.
        assert_eq!(at("POST", "/api/v1/namespaces/d/secrets"), Level::Metadata);
        assert_eq!(
            at("POST", "/api/v1/namespaces/d/serviceaccounts/x/token"),
            Level::Metadata
        );
        assert_eq!(
            at("PATCH", "/apis/apps/v1/namespaces/prod/deployments/web"),
            Level::Request
        );
        assert_eq!(
            at("PUT", "/apis/apps/v1/namespaces/prod/deployments/web/scale"),
            Level::Request
        );
        assert_eq!(
            at("PATCH", "/apis/apps/v1/namespaces/dev/deployments/web"),
            Level::Metadata
        );
        assert_eq!(
            at("GET", "/apis/apps/v1/namespaces/prod/deployments/web"),
            Level::Metadata
        );
        let proxy = user("system:kube-proxy");
        assert_eq!(
            p.decide(
                Some(&proxy),
                &attrs("GET", "/api/v1/pods"),
                "ResponseComplete"
            ),
            Level::None
        );
        // An omitted stage is not recorded.
        assert_eq!(
            p.decide(Some(&ann), &attrs("GET", "/api"), "RequestReceived"),
            Level::None
        );
    }

    #[test]
    fn no_matching_rule_records_nothing() {
        let p = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  verbs: [delete]\n",
        )
        .unwrap();
        let a = attrs("GET", "/api/v1/namespaces/d/pods");
        assert_eq!(p.decide(None, &a, "ResponseComplete"), Level::None);
        let d = attrs("DELETE", "/api/v1/namespaces/d/pods/x");
        assert_eq!(p.decide(None, &d, "ResponseComplete"), Level::Metadata);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy::parse("kind: EncryptionConfiguration\n").is_err());
        assert!(Policy::parse("apiVersion: v1\nkind: Policy\n").is_err());
        assert!(Policy::parse("kind: Policy\nrules:\n- level: Everything\n").is_err());
        assert!(Policy::parse("kind: Policy\nomitStages: [Sometimes]\n").is_err());
        // A misspelt field is an error, not a rule that matches everything.
        assert!(
            Policy::parse("kind: Policy\nrules:\n- level: None\n  nonResourceUrls: [/x]\n")
                .is_err()
        );
    }
}
