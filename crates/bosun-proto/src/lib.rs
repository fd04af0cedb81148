//! Decoding of Kubernetes protobuf bodies (`application/vnd.kubernetes.protobuf`) into the JSON
//! form of the same object.
//!
//! kubectl 1.32 and later send the objects of its typed commands (`kubectl create namespace`,
//! `create configmap|secret|deployment|service|job|cronjob|quota|ingress ...`) as protobuf;
//! `run`, `expose`, `apply` and deletes send JSON. The body is the 4-byte magic `k8s\0` followed by a
//! `runtime.Unknown` envelope whose `typeMeta` names the kind and whose `raw` bytes hold the object
//! message. [`decode`] turns such a body into a [`serde_json::Value`] equal to what the JSON
//! encoding of that object would be, so the API server handles both encodings the same way.
//!
//! Decoding walks the wire format with a static schema table (`src/schema.rs`) that
//! `tests/generate.rs` generates from the `k8s-pb` protobuf types (field tags and wire types) and
//! the `k8s-openapi` types (JSON field names, required fields); it covers every message of the
//! Kubernetes API. Regenerate it after bumping either crate:
//!
//! ```sh
//! BOSUN_PROTO_REGENERATE=1 cargo test -p bosun-proto --test generate
//! ```
//!
//! JSON rendering follows the Go types' JSON encoding:
//! - `meta.v1.Time` -> RFC 3339 (`"2026-01-01T00:00:00Z"`), `MicroTime` -> RFC 3339 with
//!   microseconds, `Duration` -> Go duration string; a zero time (empty message) is omitted, as
//!   its JSON is `null`.
//! - `IntOrString` -> number or string, `Quantity` -> string, `RawExtension`/`FieldsV1` -> the
//!   embedded JSON, `bytes` -> base64.
//! - Embedded Go structs (`VolumeSource` in `Volume`, `ProbeHandler` in `Probe`, ...) are inlined.
//! - Go's protobuf encoder writes every non-pointer field, so an empty string on the wire is
//!   indistinguishable from an unset one; JSON omits those (`omitempty`), and keeping them would
//!   defeat server-side defaulting (`imagePullPolicy: ""`). Empty strings are therefore omitted
//!   unless the JSON field is required. Numbers and booleans are kept even when zero, because
//!   optional ones are pointers whose zero is meaningful (`replicas: 0`); non-pointer ones
//!   therefore show up as `0`/`false` where JSON would omit them (`metadata.generation`,
//!   `hostPort`, `stdin`), values Kubernetes treats as unset anyway.
//! - Empty repeated fields and maps are absent on the wire and so absent in JSON.
//! - Fields the table does not know (newer API versions) are skipped, as Go's decoder does.

use base64::Engine as _;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::{Map, Value};

#[rustfmt::skip]
mod schema;
mod table;

use table::{Label, Message, Special, Ty};

/// Prefix of every Kubernetes protobuf body.
pub const MAGIC: [u8; 4] = *b"k8s\0";

/// Media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Nesting limit, so that a hostile body cannot exhaust the stack through recursive messages.
const MAX_DEPTH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("protobuf body does not start with the Kubernetes magic prefix \"k8s\\0\"")]
    MissingMagic,
    #[error("protobuf envelope has no {0}")]
    MissingTypeMeta(&'static str),
    #[error("protobuf envelope content encoding {0:?} is not supported")]
    ContentEncoding(String),
    #[error("protobuf envelope content type {0:?} is not supported")]
    ContentType(String),
    #[error("no protobuf schema for kind {kind} in {api_version}")]
    UnknownKind { api_version: String, kind: String },
    #[error("malformed protobuf at {}: {reason}", if path.is_empty() { "top level" } else { path.as_str() })]
    Malformed { path: String, reason: String },
}

impl ProtoError {
    fn malformed(reason: impl Into<String>) -> Self {
        ProtoError::Malformed {
            path: String::new(),
            reason: reason.into(),
        }
    }

    /// Prefixes the location of a malformed value with the field it was found in.
    fn within(self, field: &str) -> Self {
        match self {
            ProtoError::Malformed { path, reason } => ProtoError::Malformed {
                path: if path.is_empty() {
                    field.to_string()
                } else if path.starts_with('[') {
                    format!("{field}{path}")
                } else {
                    format!("{field}.{path}")
                },
                reason,
            },
            other => other,
        }
    }
}

type Result<T> = std::result::Result<T, ProtoError>;

/// Whether a `Content-Type` header value names the Kubernetes protobuf encoding (parameters ignored).
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|mt| mt.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// Decodes a Kubernetes protobuf body (magic + `runtime.Unknown` envelope) into the object's JSON
/// form, with `apiVersion` and `kind` taken from the envelope.
pub fn decode(body: &[u8]) -> Result<Value> {
    let rest = body.strip_prefix(&MAGIC).ok_or(ProtoError::MissingMagic)?;
    let env = unknown(rest)?;
    if !env.content_encoding.is_empty() {
        return Err(ProtoError::ContentEncoding(env.content_encoding));
    }
    if !env.content_type.is_empty() && !is_protobuf(&env.content_type) {
        return Err(ProtoError::ContentType(env.content_type));
    }
    if env.api_version.is_empty() {
        return Err(ProtoError::MissingTypeMeta("apiVersion"));
    }
    if env.kind.is_empty() {
        return Err(ProtoError::MissingTypeMeta("kind"));
    }
    decode_object(&env.api_version, &env.kind, env.raw)
}

/// Decodes one object message (without magic and envelope) of the given kind into its JSON form,
/// with `apiVersion` and `kind` set.
pub fn decode_object(api_version: &str, kind: &str, raw: &[u8]) -> Result<Value> {
    let msg = message_for(api_version, kind).ok_or_else(|| ProtoError::UnknownKind {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    })?;
    let body = object(raw, msg, 0).map_err(|e| e.within(kind))?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String(kind.into()));
    for (k, v) in body {
        if k != "apiVersion" && k != "kind" {
            out.insert(k, v);
        }
    }
    Ok(Value::Object(out))
}

/// The schema message of a kind: `apps/v1` `Deployment` -> `api.apps.v1.Deployment`.
fn message_for(api_version: &str, kind: &str) -> Option<&'static Message> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let prefix = schema::GROUPS
        .binary_search_by(|(g, _)| (*g).cmp(group))
        .ok()
        .map(|i| schema::GROUPS[i].1)?;
    let name = format!("{prefix}.{version}.{kind}");
    schema::MESSAGES
        .binary_search_by(|m| m.name.cmp(&name))
        .ok()
        .map(|i| &schema::MESSAGES[i])
}

struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

/// `runtime.Unknown`: {1: typeMeta {1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding, 4: contentType}.
fn unknown(mut buf: &[u8]) -> Result<Envelope<'_>> {
    let mut env = Envelope {
        api_version: String::new(),
        kind: String::new(),
        raw: &[],
        content_encoding: String::new(),
        content_type: String::new(),
    };
    while let Some((tag, val)) = next_field(&mut buf)? {
        match tag {
            1 => {
                let mut tm = val.bytes().map_err(|e| e.within("typeMeta"))?;
                while let Some((tag, val)) =
                    next_field(&mut tm).map_err(|e| e.within("typeMeta"))?
                {
                    match tag {
                        1 => {
                            env.api_version =
                                utf8(val).map_err(|e| e.within("typeMeta.apiVersion"))?
                        }
                        2 => env.kind = utf8(val).map_err(|e| e.within("typeMeta.kind"))?,
                        _ => {}
                    }
                }
            }
            2 => env.raw = val.bytes().map_err(|e| e.within("raw"))?,
            3 => env.content_encoding = utf8(val).map_err(|e| e.within("contentEncoding"))?,
            4 => env.content_type = utf8(val).map_err(|e| e.within("contentType"))?,
            _ => {}
        }
    }
    Ok(env)
}

/// One field value as it appears on the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn name(self) -> &'static str {
        match self {
            Wire::Varint(_) => "varint",
            Wire::Fixed64(_) => "64-bit",
            Wire::Fixed32 => "32-bit",
            Wire::Bytes(_) => "length-delimited",
        }
    }

    fn bytes(self) -> Result<&'a [u8]> {
        match self {
            Wire::Bytes(b) => Ok(b),
            other => Err(wrong_wire("length-delimited", other)),
        }
    }

    fn varint(self) -> Result<u64> {
        match self {
            Wire::Varint(v) => Ok(v),
            other => Err(wrong_wire("varint", other)),
        }
    }
}

fn wrong_wire(want: &str, got: Wire<'_>) -> ProtoError {
    ProtoError::malformed(format!("expected {want} wire type, found {}", got.name()))
}

/// Reads the next field of a message; `None` at its end.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Option<(u32, Wire<'a>)>> {
    if buf.is_empty() {
        return Ok(None);
    }
    let (tag, wire_type) = decode_key(buf).map_err(|e| ProtoError::malformed(e.to_string()))?;
    let truncated = || ProtoError::malformed(format!("field {tag} is truncated"));
    let val = match wire_type {
        WireType::Varint => {
            Wire::Varint(decode_varint(buf).map_err(|e| ProtoError::malformed(e.to_string()))?)
        }
        WireType::SixtyFourBit => {
            let (head, rest) = buf.split_first_chunk::<8>().ok_or_else(truncated)?;
            *buf = rest;
            Wire::Fixed64(u64::from_le_bytes(*head))
        }
        WireType::ThirtyTwoBit => {
            // No Kubernetes field is 32-bit fixed; such unknown fields are skipped.
            let (_, rest) = buf.split_first_chunk::<4>().ok_or_else(truncated)?;
            *buf = rest;
            Wire::Fixed32
        }
        WireType::LengthDelimited => {
            let len = decode_varint(buf).map_err(|e| ProtoError::malformed(e.to_string()))?;
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= buf.len())
                .ok_or_else(truncated)?;
            let (head, rest) = buf.split_at(len);
            *buf = rest;
            Wire::Bytes(head)
        }
        WireType::StartGroup | WireType::EndGroup => {
            return Err(ProtoError::malformed(format!(
                "field {tag} uses the unsupported group wire type"
            )));
        }
    };
    Ok(Some((tag, val)))
}

fn utf8(val: Wire<'_>) -> Result<String> {
    let b = val.bytes()?;
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::malformed("string is not valid UTF-8"))
}

fn scalar(ty: Ty, val: Wire<'_>, depth: usize) -> Result<Option<Value>> {
    Ok(Some(match ty {
        Ty::Bool => Value::Bool(val.varint()? != 0),
        // int32 is sign-extended to 64 bits on the wire; truncation recovers it.
        Ty::Int32 => Value::from(val.varint()? as i32),
        Ty::Int64 => Value::from(val.varint()? as i64),
        Ty::Double => {
            let Wire::Fixed64(bits) = val else {
                return Err(wrong_wire("64-bit", val));
            };
            let f = f64::from_bits(bits);
            Value::Number(
                serde_json::Number::from_f64(f)
                    .ok_or_else(|| ProtoError::malformed(format!("{f} is not a JSON number")))?,
            )
        }
        Ty::String => Value::String(utf8(val)?),
        Ty::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(val.bytes()?)),
        Ty::Msg(i) => return message(val.bytes()?, &schema::MESSAGES[usize::from(i)], depth + 1),
    }))
}

/// A message's JSON value; `None` when its JSON form is `null` (zero time, empty raw JSON).
fn message(buf: &[u8], msg: &Message, depth: usize) -> Result<Option<Value>> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::malformed(format!(
            "messages nested deeper than {MAX_DEPTH} levels"
        )));
    }
    match msg.special {
        Special::None => Ok(Some(Value::Object(object(buf, msg, depth)?))),
        Special::Time | Special::MicroTime => time(buf, msg.special == Special::MicroTime),
        Special::Duration => {
            let mut nanos = 0i64;
            for_each_field(buf, |tag, val| {
                if tag == 1 {
                    nanos = val.varint()? as i64;
                }
                Ok(())
            })?;
            Ok(Some(Value::String(go_duration(nanos))))
        }
        Special::IntOrString => {
            let (mut ty, mut int, mut s) = (0u64, 0i32, String::new());
            for_each_field(buf, |tag, val| {
                match tag {
                    1 => ty = val.varint()?,
                    2 => int = val.varint()? as i32,
                    3 => s = utf8(val)?,
                    _ => {}
                }
                Ok(())
            })?;
            Ok(Some(match ty {
                0 => Value::from(int),
                1 => Value::String(s),
                other => {
                    return Err(ProtoError::malformed(format!(
                        "IntOrString type {other} is neither 0 (int) nor 1 (string)"
                    )));
                }
            }))
        }
        Special::Quantity => {
            let mut s = String::new();
            for_each_field(buf, |tag, val| {
                if tag == 1 {
                    s = utf8(val)?;
                }
                Ok(())
            })?;
            if s.is_empty() {
                // Go's zero Quantity.
                s.push('0');
            }
            Ok(Some(Value::String(s)))
        }
        Special::RawJson => {
            let mut raw: &[u8] = &[];
            for_each_field(buf, |tag, val| {
                if tag == 1 {
                    raw = val.bytes()?;
                }
                Ok(())
            })?;
            raw_json(raw)
        }
        Special::Items => {
            let field = msg
                .fields
                .iter()
                .find(|f| f.tag == 1)
                .ok_or_else(|| ProtoError::malformed(format!("{} has no field 1", msg.name)))?;
            let mut items = Vec::new();
            for_each_field(buf, |tag, val| {
                if tag == 1 {
                    items.extend(repeated(field.ty, val, depth)?);
                }
                Ok(())
            })?;
            Ok(Some(Value::Array(items)))
        }
        Special::SchemaOrBool | Special::SchemaOrArray | Special::SchemaOrStringArray => {
            schema_or(buf, msg, depth)
        }
    }
}

fn for_each_field<'a>(
    mut buf: &'a [u8],
    mut f: impl FnMut(u32, Wire<'a>) -> Result<()>,
) -> Result<()> {
    while let Some((tag, val)) = next_field(&mut buf)? {
        f(tag, val)?;
    }
    Ok(())
}

fn time(buf: &[u8], micro: bool) -> Result<Option<Value>> {
    if buf.is_empty() {
        // Go encodes the zero time as an empty message; its JSON is null.
        return Ok(None);
    }
    let (mut secs, mut nanos) = (0i64, 0i32);
    for_each_field(buf, |tag, val| {
        match tag {
            1 => secs = val.varint()? as i64,
            2 => nanos = val.varint()? as i32,
            _ => {}
        }
        Ok(())
    })?;
    let ts = jiff::Timestamp::new(secs, nanos).map_err(|e| ProtoError::malformed(e.to_string()))?;
    let s = if micro {
        ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    Ok(Some(Value::String(s)))
}

/// Raw bytes of an embedded object: JSON, or a nested Kubernetes protobuf body.
fn raw_json(raw: &[u8]) -> Result<Option<Value>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.starts_with(&MAGIC) {
        return decode(raw).map(Some);
    }
    serde_json::from_slice(raw)
        .map(Some)
        .map_err(|e| ProtoError::malformed(format!("embedded raw object is not JSON: {e}")))
}

/// apiextensions `JSONSchemaPropsOr{Bool,Array,StringArray}`: field 1 or 2 holds the schema, the
/// other the alternative; JSON is the schema when set, else the alternative.
fn schema_or(buf: &[u8], msg: &Message, depth: usize) -> Result<Option<Value>> {
    let (schema_tag, alt_tag) = match msg.special {
        Special::SchemaOrBool => (2, 1),
        _ => (1, 2),
    };
    let field = |tag| {
        msg.fields
            .iter()
            .find(|f| f.tag == tag)
            .ok_or_else(|| ProtoError::malformed(format!("{} has no field {tag}", msg.name)))
    };
    let (schema_field, alt_field) = (field(schema_tag)?, field(alt_tag)?);
    let mut schema = None;
    let mut alt = Vec::new();
    for_each_field(buf, |tag, val| {
        if tag == schema_tag {
            schema = scalar(schema_field.ty, val, depth)?;
        } else if tag == alt_tag {
            alt.push(scalar(alt_field.ty, val, depth)?.unwrap_or(Value::Null));
        }
        Ok(())
    })?;
    Ok(Some(match (schema, msg.special) {
        (Some(s), _) => s,
        (None, Special::SchemaOrBool) => alt.pop().unwrap_or(Value::Bool(false)),
        (None, _) => Value::Array(alt),
    }))
}

/// The JSON object of a plain message.
fn object(buf: &[u8], msg: &Message, depth: usize) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    fill_object(buf, msg, depth, &mut out)?;
    Ok(out)
}

fn fill_object(
    mut buf: &[u8],
    msg: &Message,
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<()> {
    while let Some((tag, val)) = next_field(&mut buf)? {
        // Unknown fields (newer API versions) are skipped, as Go's decoder does.
        let Ok(at) = msg.fields.binary_search_by_key(&tag, |f| f.tag) else {
            continue;
        };
        let field = &msg.fields[at];
        let at = |e: ProtoError| e.within(field.json);
        match field.label {
            Label::Map => {
                let (k, v) = map_entry(val.bytes().map_err(at)?, field.ty, depth).map_err(at)?;
                let entry = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(k, v);
                }
            }
            Label::Rep => {
                let items = repeated(field.ty, val, depth).map_err(at)?;
                let entry = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(a) = entry {
                    a.extend(items);
                }
            }
            Label::Inline => {
                let Ty::Msg(i) = field.ty else {
                    return Err(at(ProtoError::malformed("inlined field is not a message")));
                };
                let inner = &schema::MESSAGES[usize::from(i)];
                fill_object(val.bytes().map_err(at)?, inner, depth + 1, out).map_err(at)?;
            }
            Label::Opt | Label::Req => {
                let v = scalar(field.ty, val, depth).map_err(at)?;
                match v {
                    Some(Value::String(s)) if s.is_empty() && field.label == Label::Opt => {
                        out.remove(field.json);
                    }
                    Some(Value::Object(new)) => {
                        // A message repeated on the wire merges into the earlier one.
                        match out.get_mut(field.json) {
                            Some(Value::Object(old)) => old.extend(new),
                            _ => {
                                out.insert(field.json.into(), Value::Object(new));
                            }
                        }
                    }
                    Some(v) => {
                        out.insert(field.json.into(), v);
                    }
                    None => {
                        out.remove(field.json);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Elements of a repeated field occurrence: one element, or a packed run of numbers.
fn repeated(ty: Ty, val: Wire<'_>, depth: usize) -> Result<Vec<Value>> {
    match (ty, val) {
        (Ty::Bool | Ty::Int32 | Ty::Int64, Wire::Bytes(mut packed)) => {
            let mut out = Vec::new();
            while !packed.is_empty() {
                let v =
                    decode_varint(&mut packed).map_err(|e| ProtoError::malformed(e.to_string()))?;
                out.push(scalar(ty, Wire::Varint(v), depth)?.unwrap_or(Value::Null));
            }
            Ok(out)
        }
        (Ty::Double, Wire::Bytes(packed)) => {
            if packed.len() % 8 != 0 {
                return Err(ProtoError::malformed("packed doubles are truncated"));
            }
            packed
                .chunks_exact(8)
                .map(|c| {
                    let bits = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
                    Ok(scalar(ty, Wire::Fixed64(bits), depth)?.unwrap_or(Value::Null))
                })
                .collect()
        }
        _ => Ok(vec![scalar(ty, val, depth)?.unwrap_or(Value::Null)]),
    }
}

/// A map entry message {1: key, 2: value}; absent parts are Go's zero values.
fn map_entry(buf: &[u8], ty: Ty, depth: usize) -> Result<(String, Value)> {
    let mut key = String::new();
    let mut value = None;
    for_each_field(buf, |tag, val| {
        match tag {
            1 => key = utf8(val).map_err(|e| e.within("key"))?,
            2 => {
                value = Some(
                    scalar(ty, val, depth)
                        .map_err(|e| e.within("value"))?
                        .unwrap_or(Value::Null),
                )
            }
            _ => {}
        }
        Ok(())
    })?;
    let value = match value {
        Some(v) => v,
        None => scalar(ty, zero_wire(ty), depth)?.unwrap_or(Value::Null),
    };
    Ok((key, value))
}

fn zero_wire(ty: Ty) -> Wire<'static> {
    match ty {
        Ty::Bool | Ty::Int32 | Ty::Int64 => Wire::Varint(0),
        Ty::Double => Wire::Fixed64(0),
        Ty::String | Ty::Bytes | Ty::Msg(_) => Wire::Bytes(&[]),
    }
}

/// Go's `time.Duration.String()`: "1h2m3.5s", "1.5ms", "0s".
fn go_duration(d: i64) -> String {
    if d == 0 {
        return "0s".into();
    }
    let sign = if d < 0 { "-" } else { "" };
    let u = d.unsigned_abs();
    let frac = |int: u64, rem: u64, digits: usize| {
        let mut s = int.to_string();
        if rem > 0 {
            let f = format!("{rem:0digits$}");
            s.push('.');
            s.push_str(f.trim_end_matches('0'));
        }
        s
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u / 1_000, u % 1_000, 3));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u / 1_000_000, u % 1_000_000, 6));
    }
    let secs = u / 1_000_000_000;
    let s = frac(secs % 60, u % 1_000_000_000, 9);
    let (h, m) = (secs / 3600, (secs / 60) % 60);
    if h > 0 {
        format!("{sign}{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{sign}{m}m{s}s")
    } else {
        format!("{sign}{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_matches_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1), "1ns");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(60_000_000_000), "1m0s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(-(3_723_000_000_000 + 500_000_000)), "-1h2m3.5s");
    }

    #[test]
    fn content_type_detection() {
        assert!(is_protobuf("application/vnd.kubernetes.protobuf"));
        assert!(is_protobuf(
            "application/vnd.kubernetes.protobuf; charset=utf-8"
        ));
        assert!(!is_protobuf("application/json"));
    }

    #[test]
    fn table_is_sorted_and_consistent() {
        assert!(schema::MESSAGES.windows(2).all(|w| w[0].name < w[1].name));
        assert!(schema::GROUPS.windows(2).all(|w| w[0].0 < w[1].0));
        for m in schema::MESSAGES {
            // Field lookup binary-searches by tag.
            assert!(
                m.fields.windows(2).all(|w| w[0].tag < w[1].tag),
                "{}",
                m.name
            );
            for f in m.fields {
                if let Ty::Msg(i) = f.ty {
                    assert!(
                        usize::from(i) < schema::MESSAGES.len(),
                        "{}.{}",
                        m.name,
                        f.json
                    );
                }
            }
        }
        for (api_version, kind) in [
            ("v1", "Namespace"),
            ("v1", "Pod"),
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "Service"),
            ("v1", "Event"),
            ("v1", "Node"),
            ("v1", "Endpoints"),
            ("v1", "Binding"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "ReplicaSet"),
            ("coordination.k8s.io/v1", "Lease"),
            ("meta.k8s.io/v1", "DeleteOptions"),
            ("autoscaling/v1", "Scale"),
        ] {
            assert!(
                message_for(api_version, kind).is_some(),
                "{api_version} {kind}"
            );
        }
        assert!(message_for("apps/v1", "Nope").is_none());
        assert!(message_for("nope.example.com/v1", "Pod").is_none());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(decode(b"{}"), Err(ProtoError::MissingMagic)));
        // Unknown envelope with a length prefix running past the end.
        let err = decode(b"k8s\0\x0a\x10\x0a").unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
