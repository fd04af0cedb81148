//! Stored objects as JSON values: decoding from the store (with `resourceVersion` from
//! the key's revision), encoding for it, metadata access, timestamps. A leaf every
//! handler and admission module uses.

use bosun_store::KeyValue;
use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

pub(crate) fn now_rfc3339() -> String {
    ts_rfc3339(jiff::Timestamp::now().as_second())
}

pub(crate) fn ts_rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The stored object with `metadata.resourceVersion` filled in from the store.
pub(crate) fn decode_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    set_rv(&mut v, kv.mod_revision);
    Ok(v)
}

pub(crate) fn set_rv(obj: &mut Value, rev: i64) {
    meta_mut(obj).insert("resourceVersion".into(), json!(rev.to_string()));
}

pub(crate) fn encode(obj: &Value) -> Bytes {
    if let Some(meta) = obj.get("metadata").and_then(Value::as_object) {
        // Written without copying the object: the bytes `remove` on a copy would give.
        let top = obj.as_object().expect("has metadata");
        let ser = WithoutRv { top, meta };
        return Bytes::from(serde_json::to_vec(&ser).unwrap_or_default());
    }
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    Bytes::from(serde_json::to_vec(&o).unwrap_or_default())
}

/// An object without `metadata.resourceVersion`, its keys in the order `Map::remove`
/// leaves them (with `preserve_order` that is `swap_remove`: the last key takes the
/// removed one's place).
struct WithoutRv<'a> {
    top: &'a Map<String, Value>,
    meta: &'a Map<String, Value>,
}

impl Serialize for WithoutRv<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.top.len()))?;
        for (k, v) in self.top {
            if k == "metadata" {
                m.serialize_entry(k, &MetaWithoutRv(self.meta))?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

struct MetaWithoutRv<'a>(&'a Map<String, Value>);

impl Serialize for MetaWithoutRv<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let entries: Vec<(&String, &Value)> = self.0.iter().collect();
        let Some(at) = entries.iter().position(|(k, _)| *k == "resourceVersion") else {
            return self.0.serialize(s);
        };
        let last = entries.len() - 1;
        let mut m = s.serialize_map(Some(last))?;
        for i in 0..last {
            let (k, v) = entries[if i == at { last } else { i }];
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The watch line (`{"type":TY,"object":OBJ}` and a newline) for a stored object, as
/// encoding [`decode_kv`]'s value would write it, spliced from the stored bytes instead
/// (see [`splice_object`]); None where that cannot be done, and the caller decodes.
pub(crate) fn splice_watch_line(ty: &str, stored: &[u8], rev: i64) -> Option<Bytes> {
    let mut out = Vec::with_capacity(stored.len() + ty.len() + 64);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    splice_object(&mut out, stored, rev)?;
    out.extend_from_slice(b"}\n");
    Some(Bytes::from(out))
}

/// Appends to `out` the stored object as encoding [`decode_kv`]'s value would write it,
/// spliced from the stored bytes instead: `resourceVersion` goes last into `metadata`.
/// The store holds what [`encode`] wrote (serde_json's compact output, which decoding and
/// encoding again reproduces byte for byte); for anything else (whitespace, no `metadata`
/// object, a stored `resourceVersion`) it returns None and leaves `out` as it was.
pub(crate) fn splice_object(out: &mut Vec<u8>, stored: &[u8], rev: i64) -> Option<()> {
    let end = metadata_end(stored)?;
    let empty = stored[end - 1] == b'{';
    out.extend_from_slice(&stored[..end]);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(rev.to_string().as_bytes());
    out.push(b'"');
    out.extend_from_slice(&stored[end..]);
    Some(())
}

/// Where the top-level `metadata` object closes (the index of its `}`), for compact JSON
/// whose `metadata` is an object without `resourceVersion`; the whole text is checked.
fn metadata_end(b: &[u8]) -> Option<usize> {
    let mut s = Scan { b, i: 0 };
    s.byte(b'{')?;
    let mut found = None;
    if s.peek() == Some(b'}') {
        return None;
    }
    loop {
        let key = s.string()?;
        s.byte(b':')?;
        let start = s.i;
        s.value(0)?;
        if key == b"metadata" {
            let v = &b[start..s.i];
            if found.is_some()
                || v.first() != Some(&b'{')
                || v.windows(17).any(|w| w == b"\"resourceVersion\"")
            {
                return None;
            }
            found = Some(s.i - 1);
        }
        match s.peek()? {
            b',' => s.i += 1,
            b'}' => break,
            _ => return None,
        }
    }
    s.i += 1;
    (s.i == b.len()).then_some(found).flatten()
}

/// A forward scan over compact JSON, checking its structure without building values.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn byte(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string's raw contents (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.byte(b'"')?;
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
        let s = self.b.get(start..self.i)?;
        self.i += 1;
        Some(s)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        // serde_json's own nesting limit: nothing deeper was stored.
        if depth > 128 {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.byte(b':')?;
                    self.value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => {
                // Numbers, true, false, null.
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.'))
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let m = obj
        .as_object_mut()
        .expect("object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("metadata object")
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub(crate) fn rv_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion")
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

pub(crate) fn parse_rv(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `encode` wrote before it stopped copying the object.
    fn encode_by_copy(obj: &Value) -> Bytes {
        let mut o = obj.clone();
        meta_mut(&mut o).remove("resourceVersion");
        Bytes::from(serde_json::to_vec(&o).unwrap())
    }

    fn samples() -> Vec<Value> {
        vec![
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "d",
                "resourceVersion": "7"}, "spec": {"containers": [{"name": "c"}]}}),
            // resourceVersion in the middle: the last key takes its place.
            json!({"metadata": {"name": "p", "resourceVersion": "7", "uid": "u",
                "labels": {"a": "b"}}, "status": {}}),
            json!({"metadata": {"resourceVersion": "7"}}),
            json!({"metadata": {}, "data": {"k": "v {\"x\": [1, 2.5, -3e10]}"}}),
            json!({"metadata": {"name": "x", "annotations": {"q": "\"}\\", "e": "é\u{1}"}},
                "spec": {"n": null, "t": true, "f": false, "l": [[], {}, [{}]], "big": 1.0e300}}),
            json!({"kind": "NoMeta"}),
            json!({"metadata": "not an object"}),
            json!([1, 2]),
        ]
    }

    #[test]
    fn encode_writes_the_same_bytes_as_a_copy_without_resource_version() {
        for obj in samples() {
            assert_eq!(encode(&obj), encode_by_copy(&obj), "{obj}");
        }
    }

    /// The line the watch built from a decoded value.
    fn line_by_value(ty: &str, kv: &KeyValue) -> Bytes {
        let obj = decode_kv(kv).unwrap();
        let mut s = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap();
        s.push(b'\n');
        Bytes::from(s)
    }

    fn kv(value: Bytes) -> KeyValue {
        KeyValue {
            key: "/registry/pods/d/p".into(),
            value,
            create_revision: 3,
            mod_revision: 1234,
            lease: None,
        }
    }

    #[test]
    fn spliced_watch_lines_are_the_lines_of_the_decoded_object() {
        for obj in samples() {
            let kv = kv(encode(&obj));
            for ty in ["ADDED", "MODIFIED", "DELETED"] {
                // `encode` always writes a metadata object.
                let spliced = splice_watch_line(ty, &kv.value, kv.mod_revision);
                assert_eq!(spliced, Some(line_by_value(ty, &kv)), "{obj}");
            }
        }
    }

    #[test]
    fn splicing_leaves_what_it_cannot_reproduce_to_decoding() {
        for stored in [
            // Not as `encode` writes: whitespace, a stored resourceVersion, a second
            // metadata, truncated or trailing text, metadata not an object.
            &br#"{"metadata": {"name":"p"}}"#[..],
            br#"{"metadata":{"name":"p","resourceVersion":"3"}}"#,
            br#"{"metadata":{"name":"p"},"metadata":{"name":"q"}}"#,
            br#"{"metadata":{"name":"p"}"#,
            br#"{"metadata":{"name":"p"}}x"#,
            br#"{"metadata":{"name":"p}}"#,
            br#"{"metadata":[]}"#,
            br#"{}"#,
            br#"[]"#,
            b"",
        ] {
            assert_eq!(splice_watch_line("ADDED", stored, 5), None, "{stored:?}");
        }
        let deep = format!(
            "{{\"metadata\":{{}},\"x\":{}1{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(splice_watch_line("ADDED", deep.as_bytes(), 5), None);
    }
}
