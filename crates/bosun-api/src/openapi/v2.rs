//! A minimal OpenAPI v2 document in gnostic's protobuf encoding
//! (`application/com.github.proto-openapi.spec.v2.v1.0+protobuf`), for kubectl 1.27
//! and 1.28: they read only v2 to learn that the server validates fields itself
//! (a PATCH operation with `x-kubernetes-group-version-kind` listing a
//! `fieldValidation` query parameter). The document carries paths and no
//! definitions, so those clients compute strategic merge patches from their built-in
//! types, which agree with [`super::merge_keys`].
//!
//! Field numbers are from gnostic's `openapiv2/OpenAPIv2.proto`.

use crate::{KindInfo, Registry};

/// Protobuf wire encoding of the few message shapes the document needs.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(mut self, field: u32, data: &[u8]) -> Self {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }

    fn string(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }

    fn message(self, field: u32, m: Msg) -> Self {
        self.bytes(field, &m.0)
    }

    fn boolean(mut self, field: u32, b: bool) -> Self {
        self.varint(u64::from(field) << 3);
        self.varint(u64::from(b));
        self
    }
}

fn query_param(name: &str, ty: &str) -> Msg {
    // QueryParameterSubSchema: in = 2, name = 4, type = 6, unique_items = 20.
    let query = Msg::default()
        .string(2, "query")
        .string(4, name)
        .string(6, ty)
        .boolean(20, true);
    // ParametersItem.parameter(1) -> Parameter.non_body_parameter(2)
    //   -> NonBodyParameter.query_parameter_sub_schema(3)
    let non_body = Msg::default().message(3, query);
    let parameter = Msg::default().message(2, non_body);
    Msg::default().message(1, parameter)
}

fn patch_operation(kind: &KindInfo, gvk: (&str, &str, &str), id: &str) -> Msg {
    let (group, version, k) = gvk;
    // YAML, as upstream's extension values are encoded.
    let yaml = format!("group: \"{group}\"\nkind: {k}\nversion: {version}\n");
    let extension = Msg::default()
        .string(1, "x-kubernetes-group-version-kind")
        .message(2, Msg::default().string(2, &yaml));
    let ok = Msg::default().string(1, "OK");
    let response = Msg::default()
        .string(1, "200")
        .message(2, Msg::default().message(1, ok));
    let mut op = Msg::default()
        .string(1, &format!("{}_{}", tag_group(kind.group), kind.version))
        .string(3, &format!("partially update the specified {k}"))
        .string(5, id);
    for consumes in [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ] {
        op = op.string(7, consumes);
    }
    for (name, ty) in [
        ("dryRun", "string"),
        ("fieldManager", "string"),
        ("fieldValidation", "string"),
        ("force", "boolean"),
    ] {
        op = op.message(8, query_param(name, ty));
    }
    op.message(9, Msg::default().message(1, response))
        .message(13, extension)
}

fn tag_group(group: &str) -> &str {
    group
        .split('.')
        .next()
        .filter(|g| !g.is_empty())
        .unwrap_or("core")
}

/// Encodes the document for `registry`.
pub(super) fn document(registry: &Registry) -> Vec<u8> {
    let mut paths = Msg::default();
    for kind in &registry.kinds {
        let gv = super::group_version_path(kind.group, kind.version);
        let base = if kind.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", kind.plural)
        } else {
            format!("/{gv}/{}/{{name}}", kind.plural)
        };
        let scope = if kind.namespaced { "Namespaced" } else { "" };
        let id = format!(
            "patch{}{scope}{}",
            super::op_group(kind.group, kind.version),
            kind.kind
        );
        let gvk = (kind.group, kind.version, kind.kind);
        let mut items = vec![(base.clone(), patch_operation(kind, gvk, &id))];
        if kind.has_subresource("status") {
            items.push((
                format!("{base}/status"),
                patch_operation(kind, gvk, &format!("{id}Status")),
            ));
        }
        if kind.has_subresource("scale") {
            items.push((
                format!("{base}/scale"),
                patch_operation(kind, ("autoscaling", "v1", "Scale"), &format!("{id}Scale")),
            ));
        }
        for (path, op) in items {
            // PathItem.patch = 8; Paths.path = 2 (NamedPathItem: name = 1, value = 2).
            let item = Msg::default().message(8, op);
            let named = Msg::default().string(1, &path).message(2, item);
            paths = paths.message(2, named);
        }
    }
    let info = Msg::default().string(1, "Kubernetes").string(2, "v1.33.0");
    Msg::default()
        .string(1, "2.0")
        .message(2, info)
        .message(8, paths)
        .message(9, Msg::default())
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one protobuf message into (field, wire type, payload) triples.
    fn fields(mut b: &[u8]) -> Vec<(u32, u8, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
            if wire == 2 {
                let len = varint(&mut b) as usize;
                out.push((field, wire, b[..len].to_vec()));
                b = &b[len..];
            } else {
                let v = varint(&mut b);
                out.push((field, wire, vec![v as u8]));
            }
        }
        out
    }

    fn get(b: &[u8], field: u32) -> Vec<Vec<u8>> {
        fields(b)
            .into_iter()
            .filter(|(f, _, _)| *f == field)
            .map(|(_, _, v)| v)
            .collect()
    }

    #[test]
    fn deployment_patch_lists_field_validation() {
        let doc = document(Registry::builtin());
        assert_eq!(get(&doc, 1), [b"2.0".to_vec()]);
        let paths = &get(&doc, 8)[0];
        let named = get(paths, 2);
        let deploy = named
            .iter()
            .find(|n| get(n, 1)[0] == b"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .expect("deployment path");
        let op = &get(&get(deploy, 2)[0], 8)[0];
        assert_eq!(get(op, 5)[0], b"patchAppsV1NamespacedDeployment");
        let ext = &get(op, 13)[0];
        assert_eq!(get(ext, 1)[0], b"x-kubernetes-group-version-kind");
        let yaml = String::from_utf8(get(&get(ext, 2)[0], 2)[0].clone()).unwrap();
        assert_eq!(yaml, "group: \"apps\"\nkind: Deployment\nversion: v1\n");
        let names: Vec<String> = get(op, 8)
            .iter()
            .map(|p| {
                let q = &get(&get(&get(p, 1)[0], 2)[0], 3)[0];
                assert_eq!(get(q, 2)[0], b"query");
                String::from_utf8(get(q, 4)[0].clone()).unwrap()
            })
            .collect();
        assert_eq!(
            names,
            ["dryRun", "fieldManager", "fieldValidation", "force"]
        );
        assert!(
            named
                .iter()
                .any(|n| get(n, 1)[0] == b"/api/v1/nodes/{name}")
        );
    }
}
