//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! which client-go's typed clients send (`kubectl create deployment|configmap|secret ...`).
//!
//! The body is `k8s\0` followed by a `runtime.Unknown` envelope holding the apiVersion,
//! kind and the object's own protobuf bytes. Objects are decoded into their JSON form
//! with the field table in `schema` (generated from the k8s-pb and k8s-openapi crates).
//! Fields the table does not know are refused rather than dropped.

mod schema;

use base64::Engine;
use serde_json::{Map, Value, json};

/// How a field's value is encoded. Not every variant occurs in the served kinds today;
/// the generator emits whichever the schema needs.
#[allow(dead_code)]
pub(crate) enum Ty {
    Str,
    Bytes,
    Bool,
    I32,
    I64,
    F64,
    Msg(&'static str),
    /// A message whose fields are the parent's fields in JSON (Go `json:",inline"`).
    Inline(&'static str),
    MapStr,
    MapBytes,
    MapMsg(&'static str),
    Time,
    Quantity,
    IntOrString,
    Raw,
    Duration,
}

/// One field: number, JSON name, type, repeated.
pub(crate) struct F(pub u32, pub &'static str, pub Ty, pub bool);

const MAGIC: &[u8] = b"k8s\0";

/// The Unix second of Go's zero `time.Time`, which encodes "unset".
const GO_ZERO_TIME: i64 = -62_135_596_800;

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or("truncated field")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "bad field number")?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "bad length")?;
                Wire::Len(self.take(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((tag, wire)))
    }
}

fn fields_of(message: &str) -> Result<&'static [F], String> {
    schema::MESSAGES
        .binary_search_by(|(name, _)| (*name).cmp(message))
        .map(|i| schema::MESSAGES[i].1)
        .map_err(|_| format!("no protobuf schema for {message}"))
}

/// The protobuf message of a kind: `api.apps.v1.Deployment`.
fn message_for(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let group = group.split('.').next().unwrap_or(group);
    format!("api.{group}.{version}.{kind}")
}

/// Decodes a `k8s\0`-prefixed protobuf body into the object's JSON form.
pub(crate) fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the body does not start with the Kubernetes protobuf prefix")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    let mut r = Reader::new(envelope);
    while let Some((tag, wire)) = r.field()? {
        match (tag, wire) {
            (1, Wire::Len(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((tag, wire)) = t.field()? {
                    match (tag, wire) {
                        (1, Wire::Len(s)) => api_version = utf8(s)?,
                        (2, Wire::Len(s)) => kind = utf8(s)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(b)) => raw = Some(b),
            (3, Wire::Len(enc)) if !enc.is_empty() => {
                return Err(format!("unsupported content encoding {:?}", utf8(enc)?));
            }
            _ => {}
        }
    }
    let raw = raw.ok_or("the protobuf envelope holds no object")?;
    let mut obj = message(&message_for(&api_version, &kind), raw)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in a string field".to_string())
}

fn len<'a>(w: Wire<'a>, what: &str) -> Result<&'a [u8], String> {
    match w {
        Wire::Len(b) => Ok(b),
        _ => Err(format!("{what}: expected a length-delimited field")),
    }
}

fn message(name: &str, data: &[u8]) -> Result<Map<String, Value>, String> {
    let fields = fields_of(name)?;
    let mut out = Map::new();
    let mut r = Reader::new(data);
    while let Some((tag, wire)) = r.field()? {
        let f = fields
            .iter()
            .find(|f| f.0 == tag)
            .ok_or_else(|| format!("unknown field number {tag} in {name}"))?;
        let F(_, json_name, ty, repeated) = f;
        let what = format!("{name}.{json_name}");
        match ty {
            Ty::Inline(inner) => {
                out.extend(message(inner, len(wire, &what)?)?);
            }
            Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_) => {
                let (k, v) = map_entry(ty, len(wire, &what)?)?;
                let m = out
                    .entry(json_name.to_string())
                    .or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
            }
            _ if *repeated => {
                let arr = out
                    .entry(json_name.to_string())
                    .or_insert_with(|| json!([]));
                let items = match (ty, wire) {
                    // Packed repeated scalars.
                    (Ty::I32 | Ty::I64 | Ty::Bool, Wire::Len(b)) => {
                        let mut p = Reader::new(b);
                        let mut items = Vec::new();
                        while p.pos < b.len() {
                            items.push(scalar(ty, Wire::Varint(p.varint()?), &what)?);
                        }
                        items
                    }
                    (_, w) => vec![value(ty, w, &what)?.unwrap_or(Value::Null)],
                };
                if let Some(a) = arr.as_array_mut() {
                    a.extend(items);
                }
            }
            _ => {
                if let Some(v) = value(ty, wire, &what)? {
                    out.insert(json_name.to_string(), v);
                }
            }
        }
    }
    Ok(out)
}

fn map_entry(ty: &Ty, data: &[u8]) -> Result<(String, Value), String> {
    let mut key = String::new();
    let mut val = Value::Null;
    let mut r = Reader::new(data);
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => key = utf8(len(wire, "map key")?)?,
            2 => {
                let b = len(wire, "map value")?;
                val = match ty {
                    Ty::MapStr => json!(utf8(b)?),
                    Ty::MapBytes => json!(base64::engine::general_purpose::STANDARD.encode(b)),
                    Ty::MapMsg(m) => special_or_message(m, b)?,
                    _ => unreachable!("map types only"),
                };
            }
            _ => {}
        }
    }
    if val.is_null() {
        val = match ty {
            Ty::MapStr | Ty::MapBytes => json!(""),
            _ => json!({}),
        };
    }
    Ok((key, val))
}

/// Messages the schema names by full name but whose JSON is not an object.
fn special_or_message(name: &str, b: &[u8]) -> Result<Value, String> {
    if name == "apimachinery.pkg.api.resource.Quantity" {
        return Ok(value(&Ty::Quantity, Wire::Len(b), name)?.unwrap_or(json!("0")));
    }
    Ok(Value::Object(message(name, b)?))
}

fn scalar(ty: &Ty, wire: Wire<'_>, what: &str) -> Result<Value, String> {
    Ok(match (ty, wire) {
        (Ty::Bool, Wire::Varint(v)) => json!(v != 0),
        (Ty::I32, Wire::Varint(v)) => json!(v as i64 as i32),
        (Ty::I64, Wire::Varint(v)) => json!(v as i64),
        (Ty::F64, Wire::Fixed64(v)) => json!(f64::from_bits(v)),
        (Ty::F64, Wire::Fixed32(v)) => json!(f32::from_bits(v)),
        _ => return Err(format!("{what}: unexpected wire type")),
    })
}

/// The JSON value of one field; `None` for the zero values Go's JSON encoding omits
/// (the protobuf encoding writes them out for every non-pointer field).
fn value(ty: &Ty, wire: Wire<'_>, what: &str) -> Result<Option<Value>, String> {
    let v = match ty {
        Ty::Str => json!(utf8(len(wire, what)?)?),
        Ty::Bytes => json!(base64::engine::general_purpose::STANDARD.encode(len(wire, what)?)),
        Ty::Bool | Ty::I32 | Ty::I64 | Ty::F64 => scalar(ty, wire, what)?,
        Ty::Msg(m) => Value::Object(message(m, len(wire, what)?)?),
        Ty::Time => {
            let (mut secs, mut nanos) = (0i64, 0i64);
            let mut r = Reader::new(len(wire, what)?);
            while let Some((tag, w)) = r.field()? {
                match (tag, w) {
                    (1, Wire::Varint(v)) => secs = v as i64,
                    (2, Wire::Varint(v)) => nanos = v as i64 as i32 as i64,
                    _ => {}
                }
            }
            if secs == GO_ZERO_TIME || (secs == 0 && nanos == 0) {
                return Ok(None);
            }
            let ts = jiff::Timestamp::from_second(secs).map_err(|e| format!("{what}: {e}"))?;
            json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        }
        Ty::Quantity => {
            let mut s = String::new();
            let mut r = Reader::new(len(wire, what)?);
            while let Some((tag, w)) = r.field()? {
                if tag == 1 {
                    s = utf8(len(w, what)?)?;
                }
            }
            json!(s)
        }
        Ty::IntOrString => {
            let (mut is_str, mut int_val, mut str_val) = (false, 0i64, String::new());
            let mut r = Reader::new(len(wire, what)?);
            while let Some((tag, w)) = r.field()? {
                match (tag, w) {
                    (1, Wire::Varint(v)) => is_str = v == 1,
                    (2, Wire::Varint(v)) => int_val = v as i64 as i32 as i64,
                    (3, Wire::Len(b)) => str_val = utf8(b)?,
                    _ => {}
                }
            }
            if is_str {
                json!(str_val)
            } else {
                json!(int_val)
            }
        }
        Ty::Raw => {
            let mut raw: &[u8] = &[];
            let mut r = Reader::new(len(wire, what)?);
            while let Some((tag, w)) = r.field()? {
                if tag == 1 {
                    raw = len(w, what)?;
                }
            }
            if raw.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice(raw).map_err(|e| format!("{what}: {e}"))?
        }
        Ty::Duration => {
            let mut nanos = 0i64;
            let mut r = Reader::new(len(wire, what)?);
            while let Some((tag, w)) = r.field()? {
                if let (1, Wire::Varint(v)) = (tag, w) {
                    nanos = v as i64;
                }
            }
            json!(format!("{}s", nanos as f64 / 1e9))
        }
        Ty::Inline(_) | Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_) => {
            unreachable!("handled by the caller")
        }
    };
    let zero = matches!(&v, Value::String(s) if s.is_empty()) || v == json!(0) || v == json!(false);
    Ok((!zero || matches!(ty, Ty::IntOrString | Ty::Quantity)).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_len(tag: u32, data: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn field_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3, out);
        varint(v, out);
    }

    fn map_entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        field_len(1, k.as_bytes(), &mut e);
        field_len(2, v, &mut e);
        e
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field_len(1, api_version.as_bytes(), &mut tm);
        field_len(2, kind.as_bytes(), &mut tm);
        let mut env = Vec::new();
        field_len(1, &tm, &mut env);
        field_len(2, raw, &mut env);
        let mut body = MAGIC.to_vec();
        body.extend(env);
        body
    }

    #[test]
    fn schema_is_sorted() {
        assert!(schema::MESSAGES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn configmap_as_kubectl_create_sends_it() {
        let mut meta = Vec::new();
        field_len(1, b"cfg", &mut meta);
        field_len(2, b"", &mut meta); // generateName, written although empty
        field_varint(7, 0, &mut meta); // generation 0
        let mut ts = Vec::new();
        field_varint(1, GO_ZERO_TIME as u64, &mut ts);
        field_len(8, &ts, &mut meta); // zero creationTimestamp
        field_len(11, &map_entry("app", b"web"), &mut meta);
        let mut cm = Vec::new();
        field_len(1, &meta, &mut cm);
        field_len(2, &map_entry("a", b"1"), &mut cm);
        field_len(2, &map_entry("b", b"2"), &mut cm);
        field_len(3, &map_entry("bin", &[0, 1]), &mut cm);
        let v = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "labels": {"app": "web"}},
                   "data": {"a": "1", "b": "2"}, "binaryData": {"bin": "AAE="}})
        );
    }

    #[test]
    fn deployment_with_nested_and_special_types() {
        let mut port = Vec::new();
        field_varint(3, 8080, &mut port);
        field_len(4, b"TCP", &mut port);
        let mut qty = Vec::new();
        field_len(1, b"250m", &mut qty);
        let mut res = Vec::new();
        field_len(1, &map_entry("cpu", &qty), &mut res);
        let mut c = Vec::new();
        field_len(1, b"main", &mut c);
        field_len(2, b"nginx", &mut c);
        field_len(3, b"sh", &mut c);
        field_len(3, b"-c", &mut c);
        field_len(6, &port, &mut c);
        field_len(8, &res, &mut c);
        let mut pod_spec = Vec::new();
        field_len(2, &c, &mut pod_spec);
        let mut tmpl = Vec::new();
        field_len(2, &pod_spec, &mut tmpl);
        let mut surge = Vec::new();
        field_varint(1, 1, &mut surge);
        field_len(3, b"25%", &mut surge);
        let mut ru = Vec::new();
        field_len(2, &surge, &mut ru);
        let mut strategy = Vec::new();
        field_len(1, b"RollingUpdate", &mut strategy);
        field_len(2, &ru, &mut strategy);
        let mut spec = Vec::new();
        field_varint(1, 3, &mut spec);
        field_len(3, &tmpl, &mut spec);
        field_len(4, &strategy, &mut spec);
        let mut d = Vec::new();
        let mut meta = Vec::new();
        field_len(1, b"web", &mut meta);
        field_len(1, &meta, &mut d);
        field_len(2, &spec, &mut d);
        let v = decode(&envelope("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(v["spec"]["replicas"], 3);
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"], json!(["sh", "-c"]));
        assert_eq!(
            c["ports"],
            json!([{"containerPort": 8080, "protocol": "TCP"}])
        );
        assert_eq!(c["resources"]["limits"]["cpu"], "250m");
        assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    }

    #[test]
    fn refuses_unknown_fields_and_garbage() {
        let mut cm = Vec::new();
        field_varint(99, 1, &mut cm);
        assert!(
            decode(&envelope("v1", "ConfigMap", &cm))
                .unwrap_err()
                .contains("unknown field number 99")
        );
        assert!(decode(b"{}").is_err());
        assert!(decode(&envelope("v1", "Widget", &[])).is_err());
        let mut truncated = envelope("v1", "ConfigMap", &[0x0a, 0x05, b'a']);
        truncated.truncate(truncated.len() - 1);
        assert!(decode(&truncated).is_err());
    }
}
