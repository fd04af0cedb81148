//! What a request asks to do, in the terms authorization and audit speak: Kubernetes'
//! `RequestInfo` (verb, API group, resource, subresource, namespace, name), or a
//! non-resource path.

use http::Method;

/// A request's attributes, as Kubernetes' `authorizer.Attributes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    pub verb: String,
    /// False for non-resource paths (`/healthz`, `/api`, `/openapi/v3` ...).
    pub resource_request: bool,
    pub path: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attrs {
    /// `pods` or `pods/log`, as RBAC rules name it.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// Attributes of a resource check (SubjectAccessReview's `resourceAttributes`).
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Attrs {
        Attrs {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Attrs::default()
        }
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Kubernetes' `RequestInfoFactory.NewRequestInfo`: `/api/v1/...` and `/apis/G/V/...` are
/// resource requests; everything else (discovery roots included) is a non-resource path.
pub fn from_request(method: &Method, path: &str, query: &str) -> Attrs {
    let mut a = Attrs {
        path: path.to_string(),
        verb: method.as_str().to_ascii_lowercase(),
        ..Attrs::default()
    };
    if a.verb == "head" {
        a.verb = "get".into();
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => {
            a.api_version = (*v).into();
            rest
        }
        ["apis", g, v, rest @ ..] if !rest.is_empty() => {
            a.api_group = (*g).into();
            a.api_version = (*v).into();
            rest
        }
        _ => return a,
    };
    a.resource_request = true;
    // Log search reads pods' logs: authorized as `get pods/log` in its namespace, or
    // everywhere for the all-namespaces path.
    if a.api_group == crate::podlogs::GROUP {
        a.api_group = String::new();
        a.resource = "pods".into();
        a.subresource = "log".into();
        a.verb = "get".into();
        if let ["namespaces", ns, ..] = rest {
            a.namespace = (*ns).into();
        }
        return a;
    }
    let mut rest = rest;
    let mut watch_prefix = false;
    if rest.first() == Some(&"watch") {
        watch_prefix = true;
        rest = &rest[1..];
    }
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        a.namespace = rest[1].into();
        // `namespaces/NS/status` and `/finalize` are the Namespace's own subresources.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if let Some(r) = rest.first() {
        a.resource = (*r).into();
    }
    if let Some(n) = rest.get(1) {
        a.name = (*n).into();
    }
    if let Some(s) = rest.get(2) {
        a.subresource = (*s).into();
    }
    let watch_param = matches!(query_param(query, "watch"), Some("true" | "1"));
    a.verb = match *method {
        Method::GET | Method::HEAD if watch_prefix || watch_param => "watch",
        Method::GET | Method::HEAD if a.name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if a.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => a.verb.as_str(),
    }
    .to_string();
    // A WebSocket upgrade to exec, attach or port-forward is a GET; Kubernetes (1.31+)
    // authorizes it as `create`, the verb the POST form always had.
    if a.verb == "get" && matches!(a.subresource.as_str(), "exec" | "attach" | "portforward") {
        a.verb = "create".into();
    }
    // A list or watch narrowed to one name by field selector is a request for that name.
    if matches!(a.verb.as_str(), "list" | "watch")
        && a.name.is_empty()
        && let Some(sel) = query_param(query, "fieldSelector")
    {
        let sel = sel.replace("%3D", "=").replace("%3d", "=");
        if let Some(n) = sel.strip_prefix("metadata.name=")
            && !n.contains(',')
        {
            a.name = n.to_string();
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(m: Method, p: &str, q: &str) -> Attrs {
        from_request(&m, p, q)
    }

    #[test]
    fn resource_requests() {
        let a = at(Method::GET, "/api/v1/namespaces/dev/pods", "");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
            ("list", "pods", "dev")
        );
        let a = at(Method::GET, "/api/v1/namespaces/dev/pods", "watch=true");
        assert_eq!(a.verb, "watch");
        let a = at(Method::GET, "/api/v1/watch/namespaces/dev/pods/x", "");
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "x"));
        let a = at(Method::GET, "/api/v1/namespaces/dev/pods/x/log", "");
        assert_eq!(a.combined_resource(), "pods/log");
        let a = at(
            Method::GET,
            "/apis/logs.bosun.dev/v1/namespaces/dev/podlogs",
            "grep=x",
        );
        assert_eq!(
            (a.verb.as_str(), a.combined_resource(), a.namespace.as_str()),
            ("get", "pods/log".to_string(), "dev")
        );
        let a = at(Method::GET, "/apis/logs.bosun.dev/v1/podlogs", "");
        assert_eq!(
            (a.combined_resource(), a.namespace.as_str()),
            ("pods/log".to_string(), "")
        );
        let a = at(Method::POST, "/api/v1/namespaces/dev/pods/x/exec", "");
        assert_eq!(
            (a.verb.as_str(), a.subresource.as_str()),
            ("create", "exec")
        );
        let a = at(
            Method::GET,
            "/api/v1/namespaces/dev/pods/x/exec",
            "command=sh",
        );
        assert_eq!(a.verb, "create");
        let a = at(
            Method::DELETE,
            "/apis/apps/v1/namespaces/dev/deployments",
            "",
        );
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str()),
            ("deletecollection", "apps")
        );
        let a = at(Method::PUT, "/api/v1/namespaces/dev/finalize", "");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("namespaces", "dev", "finalize")
        );
        let a = at(Method::GET, "/api/v1/namespaces/dev", "");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.name.as_str()),
            ("get", "namespaces", "dev")
        );
        let a = at(
            Method::GET,
            "/api/v1/nodes",
            "fieldSelector=metadata.name%3Dn1",
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "n1"));
    }

    #[test]
    fn non_resource_requests() {
        for p in [
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/healthz",
            "/openapi/v3",
        ] {
            let a = at(Method::GET, p, "");
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.verb, "get");
        }
    }
}
