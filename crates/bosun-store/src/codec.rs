//! Byte layouts of the records the embedded backend keeps on disk.
//!
//! Hand-rolled rather than serde-based: the layouts are tiny, fixed, and read on every
//! list and watch, and the log's key must be readable without decoding whole events
//! (watch and historical list filter the log by key prefix).
//!
//! Value record (table `kv`, key = the store key):
//!   create_revision i64 LE | mod_revision i64 LE | lease i64 LE (0 = none) | value bytes
//! Log record (table `log`, key = revision):
//!   kind u8 | key_len u32 LE | key | prev_len u32 LE (u32::MAX = none) | prev value record
//!   | new value record (rest; empty for deletions)

use bytes::Bytes;

use crate::{EventKind, KeyValue, Result, Revision, StoreError, WatchEvent};

const HEADER: usize = 24;
const NO_PREV: u32 = u32::MAX;

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt {what} record in the database"))
}

pub(crate) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.value.len());
    put_kv(&mut out, kv);
    out
}

fn put_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&kv.value);
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4-byte slice")))
}

pub(crate) fn decode_kv(key: &str, b: &[u8]) -> Result<KeyValue> {
    if b.len() < HEADER {
        return Err(corrupt("value"));
    }
    let lease = i64_at(b, 16);
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(&b[HEADER..]),
        create_revision: i64_at(b, 0),
        mod_revision: i64_at(b, 8),
        lease: (lease != 0).then_some(lease),
    })
}

/// Encodes one change. `new` is the written value for a put and `None` for a delete.
pub(crate) fn encode_event(key: &str, prev: Option<&KeyValue>, new: Option<&KeyValue>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        9 + key.len()
            + prev.map_or(0, |p| HEADER + p.value.len())
            + new.map_or(0, |n| HEADER + n.value.len()),
    );
    out.push(if new.is_some() { 0 } else { 1 });
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    match prev {
        Some(p) => {
            out.extend_from_slice(&((HEADER + p.value.len()) as u32).to_le_bytes());
            put_kv(&mut out, p);
        }
        None => out.extend_from_slice(&NO_PREV.to_le_bytes()),
    }
    if let Some(n) = new {
        put_kv(&mut out, n);
    }
    out
}

/// The pieces of a log record, borrowed from the stored bytes.
pub(crate) struct RawEvent<'a> {
    pub(crate) kind: EventKind,
    pub(crate) key: &'a str,
    prev: Option<&'a [u8]>,
    new: &'a [u8],
}

pub(crate) fn split_event(b: &[u8]) -> Result<RawEvent<'_>> {
    let kind = match b.first() {
        Some(0) => EventKind::Put,
        Some(1) => EventKind::Delete,
        _ => return Err(corrupt("log")),
    };
    let key_len = u32_at(b, 1).ok_or_else(|| corrupt("log"))? as usize;
    let key_end = 5 + key_len;
    let key = b
        .get(5..key_end)
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or_else(|| corrupt("log"))?;
    let prev_len = u32_at(b, key_end).ok_or_else(|| corrupt("log"))?;
    let mut at = key_end + 4;
    let prev = if prev_len == NO_PREV {
        None
    } else {
        let end = at + prev_len as usize;
        let p = b.get(at..end).ok_or_else(|| corrupt("log"))?;
        at = end;
        Some(p)
    };
    Ok(RawEvent {
        kind,
        key,
        prev,
        new: &b[at..],
    })
}

impl RawEvent<'_> {
    /// The key's value just before this change.
    pub(crate) fn prev(&self) -> Result<Option<KeyValue>> {
        self.prev.map(|p| decode_kv(self.key, p)).transpose()
    }

    pub(crate) fn to_event(&self, revision: Revision) -> Result<WatchEvent> {
        let prev = self.prev()?;
        let kv = match self.kind {
            EventKind::Put => decode_kv(self.key, self.new)?,
            // A deletion reports the last value, stamped with the deletion's revision.
            EventKind::Delete => KeyValue {
                mod_revision: revision,
                ..prev.clone().ok_or_else(|| corrupt("log"))?
            },
        };
        Ok(WatchEvent {
            kind: self.kind,
            kv,
            prev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: Revision, lease: Option<i64>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::from(value.to_string()),
            create_revision: rev - 1,
            mod_revision: rev,
            lease,
        }
    }

    #[test]
    fn value_roundtrip() {
        let a = kv("/a", "hello", 7, Some(3));
        assert_eq!(decode_kv("/a", &encode_kv(&a)).unwrap(), a);
        let b = kv("/b", "", 2, None);
        assert_eq!(decode_kv("/b", &encode_kv(&b)).unwrap(), b);
        assert!(decode_kv("/b", &[1, 2, 3]).is_err());
    }

    #[test]
    fn event_roundtrip() {
        let prev = kv("/k", "old", 4, None);
        let new = kv("/k", "new", 9, Some(2));
        let put = encode_event("/k", Some(&prev), Some(&new));
        let raw = split_event(&put).unwrap();
        assert_eq!(raw.key, "/k");
        let ev = raw.to_event(9).unwrap();
        assert_eq!(ev.kind, EventKind::Put);
        assert_eq!(ev.kv, new);
        assert_eq!(ev.prev, Some(prev.clone()));

        let del = encode_event("/k", Some(&prev), None);
        let ev = split_event(&del).unwrap().to_event(12).unwrap();
        assert_eq!(ev.kind, EventKind::Delete);
        assert_eq!(ev.kv.mod_revision, 12);
        assert_eq!(ev.kv.value, prev.value);
        assert_eq!(ev.prev, Some(prev));

        let created = encode_event("/k", None, Some(&new));
        let raw = split_event(&created).unwrap();
        assert_eq!(raw.prev().unwrap(), None);
        assert!(split_event(&created[..3]).is_err());
    }
}
