#!/usr/bin/env python3
"""Generates src/protobuf/schema.rs: the protobuf field numbers of the messages reachable
from the kinds bosun serves, with their JSON names.

Field numbers and wire types come from the k8s-pb crate (prost bindings of Kubernetes'
generated.proto), JSON names from k8s-openapi. Run after changing either version:

    python3 tools/gen_protobuf_schema.py ~/.cargo/registry/src/*/k8s-pb-0.9.0 \
        ~/.cargo/registry/src/*/k8s-openapi-0.29.0 > src/protobuf/schema.rs
"""
import os
import re
import sys

PB, OPENAPI = sys.argv[1], sys.argv[2]
ROOTS = [
    "api.core.v1.Namespace", "api.core.v1.Pod", "api.core.v1.ConfigMap", "api.core.v1.Secret",
    "api.core.v1.Service", "api.core.v1.Event", "api.core.v1.Node", "api.core.v1.Endpoints",
    "api.apps.v1.Deployment", "api.apps.v1.ReplicaSet", "api.coordination.v1.Lease",
]
# Messages with their own JSON form, decoded by hand.
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "Time",
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "apimachinery.pkg.runtime.RawExtension": "Raw",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "Raw",
    "apimachinery.pkg.apis.meta.v1.Duration": "Duration",
}

messages = {}  # full name -> list of (rust field, attr, type)
for root, _, files in os.walk(os.path.join(PB, "src")):
    for f in files:
        if f != "mod.rs":
            continue
        path = os.path.join(root, f)
        module = os.path.relpath(root, os.path.join(PB, "src")).split(os.sep)
        src = open(path).read()
        for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", src, re.S):
            body, fields = m.group(2), []
            for fm in re.finditer(r"#\[prost\(([^\]]*)\)\]\s*pub (?:r#)?(\w+):", body):
                # The type runs to the first comma outside angle brackets (it may span lines).
                depth, i = 0, fm.end()
                while depth or body[i] != ",":
                    depth += {"<": 1, ">": -1}.get(body[i], 0)
                    i += 1
                fields.append((fm.group(2), fm.group(1), " ".join(body[fm.end():i].split())))
            messages[".".join(module + [m.group(1)])] = (module, fields)


def resolve(module, ty):
    """The full message name a Rust type path names, seen from `module`."""
    inner = re.sub(r"^(::core::option::Option|::prost::alloc::vec::Vec)<(.*)>$", r"\2", ty.strip())
    inner = re.sub(r"^::(std|prost::alloc)::collections::BTreeMap< ?::prost::alloc::string::String, (.*?),? ?>$", r"\2", inner)
    parts = inner.split("::")
    mod = list(module)
    while parts and parts[0] == "super":
        mod.pop()
        parts.pop(0)
    return ".".join(mod + parts)


json_names = {}  # (module tail, struct snake) -> {rust field: json}
for root, _, files in os.walk(os.path.join(OPENAPI, "src", "v1_37")):
    for f in files:
        src = open(os.path.join(root, f)).read()
        # Keyed by the name without underscores: prost and k8s-openapi split
        # acronyms differently (pod_cid_rs / pod_cidrs).
        keys = dict((r.replace("_", ""), j) for j, r in re.findall(r'"(\w+)" => Field::Key_(\w+),', src))
        if keys:
            json_names[(os.path.basename(root), f[:-3].replace("_", ""), os.path.basename(os.path.dirname(root)))] = keys


def camel(name):
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


inline_parent = {}  # inlined message -> the message whose JSON holds its fields


def names_of(full):
    if full in inline_parent:
        return names_of(inline_parent[full])
    parts = full.split(".")
    return json_names.get((parts[-2], parts[-1].lower(), parts[-3]))


def inlined(parent, target):
    """Whether `target` is embedded inline in `parent` (Go `json:",inline"`): its fields
    are JSON fields of the parent."""
    pnames = names_of(parent) or {}
    fields = messages.get(target, (None, []))[1]
    return bool(fields) and all(f.replace("_", "") in pnames for f, _, _ in fields)


def json_name(full, field):
    """The JSON name, or None for a field Kubernetes inlines into its parent in JSON."""
    return (names_of(full) or {}).get(field.replace("_", ""))


SCALARS = {"string": "Str", "bytes": "Bytes", "bool": "Bool", "int32": "I32", "int64": "I64",
           "double": "F64", "float": "F64", "uint32": "I64", "uint64": "I64"}
out, todo, seen = [], list(ROOTS), set()
while todo:
    name = todo.pop(0)
    if name in seen or name in SPECIAL:
        continue
    seen.add(name)
    module, fields = messages[name]
    rows = []
    for rust, attr, ty in fields:
        tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
        if "message" in attr:
            target = resolve(module, ty)
            if json_name(name, rust) is None and target not in SPECIAL:
                if not inlined(name, target):
                    # A newer (alpha) field than k8s-openapi knows.
                    continue
                inline_parent[target] = name
        repeated = "repeated" in attr
        mm = re.match(r'btree_map = "string, (\w+)"', attr)
        if mm:
            kind = mm.group(1)
            if kind == "message":
                target = resolve(module, ty)
                todo.append(target)
                t = f'Ty::MapMsg("{target}")'
            else:
                t = f"Ty::Map{SCALARS[kind]}"
        else:
            kind = attr.split(",")[0].split("=")[0].strip()
            if kind == "message":
                target = resolve(module, ty)
                todo.append(target)
                t = f"Ty::{SPECIAL[target]}" if target in SPECIAL else f'Ty::Msg("{target}")'
            elif kind == "enumeration":
                t = "Ty::I32"
            else:
                t = f"Ty::{SCALARS[kind]}"
        jn = json_name(name, rust)
        if jn is None:
            if not t.startswith("Ty::Msg("):
                sys.exit(f"no JSON name for {name}.{rust}")
            t = t.replace("Ty::Msg(", "Ty::Inline(")
            jn = ""
        rows.append(f'        F({tag}, "{jn}", {t}, {str(repeated).lower()}),')
    out.append(f'    ("{name}", &[\n' + "\n".join(rows) + "\n    ]),")

print("// @generated by tools/gen_protobuf_schema.py from the k8s-pb and k8s-openapi crates: the")
print("// protobuf field numbers of Kubernetes' built-in types. Do not edit by hand.")
print()
print("use super::{F, Ty};")
print()
print("#[rustfmt::skip]")
print("pub(super) static MESSAGES: &[(&str, &[F])] = &[")
print("\n".join(sorted(out)))
print("];")
