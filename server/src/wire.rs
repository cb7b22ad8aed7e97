//! The v1 JSON shapes of streams and points, as answered.
//!
//! A point: `{"id", "stream_id", "timestamp", "server_timestamp", "value", "quality",
//! "location", "description"}` with ISO 8601 UTC times to the millisecond; unset optional fields
//! are left out. A stream: `{"id", "type", "units", "description", "forward_to", "data_ttl",
//! "rollup_ttl", "created", "history_uri"}` and, when it has points, its current value as
//! `"value", "timestamp", "server_timestamp"` (and `"quality", "location"` when set).

use meterstream_storage::point::point_id;
use meterstream_storage::time::format_iso;
use meterstream_storage::{Cursor, DataPoint, StreamInfo, StreamType};
use serde_json::{Map, Value as J};

/// A point of `stream` (of type `ty`) as JSON.
pub fn point(stream: &str, ty: StreamType, p: &DataPoint) -> J {
    let mut m = Map::with_capacity(8);
    m.insert(
        "id".into(),
        J::String(point_id(stream, p.timestamp).to_string()),
    );
    m.insert("stream_id".into(), J::String(stream.to_string()));
    m.insert("timestamp".into(), J::String(format_iso(p.timestamp)));
    m.insert(
        "server_timestamp".into(),
        J::String(format_iso(p.server_timestamp)),
    );
    m.insert("value".into(), p.value.to_json(ty));
    if let Some(e) = &p.extras {
        if let Some(q) = e.quality {
            m.insert("quality".into(), J::from(q));
        }
        if let Some(l) = &e.location {
            m.insert("location".into(), J::String(l.clone()));
        }
        if let Some(d) = &e.description {
            m.insert("description".into(), J::String(d.clone()));
        }
    }
    J::Object(m)
}

/// Percent-encodes a stream path for use in a URL path (segments kept apart by `/`).
pub fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@!$&'()+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A stream as JSON.
pub fn stream(s: &StreamInfo) -> J {
    let ty = s.meta.stream_type;
    let mut m = Map::with_capacity(14);
    m.insert("id".into(), J::String(s.path.clone()));
    m.insert("type".into(), J::String(ty.as_str().into()));
    m.insert("units".into(), J::String(s.meta.units.clone()));
    m.insert("description".into(), J::String(s.meta.description.clone()));
    m.insert(
        "forward_to".into(),
        J::Array(s.meta.forward_to.iter().cloned().map(J::String).collect()),
    );
    m.insert("data_ttl".into(), s.meta.data_ttl.map_or(J::Null, J::from));
    m.insert(
        "rollup_ttl".into(),
        s.meta.rollup_ttl.map_or(J::Null, J::from),
    );
    m.insert("created".into(), J::String(format_iso(s.created)));
    m.insert(
        "history_uri".into(),
        J::String(format!("/ws/v1/streams/history/{}", url_path(&s.path))),
    );
    if let Some(c) = &s.current {
        m.insert("value".into(), c.value.to_json(ty));
        m.insert("timestamp".into(), J::String(format_iso(c.timestamp)));
        m.insert(
            "server_timestamp".into(),
            J::String(format_iso(c.server_timestamp)),
        );
        if let Some(e) = &c.extras {
            if let Some(q) = e.quality {
                m.insert("quality".into(), J::from(q));
            }
            if let Some(l) = &e.location {
                m.insert("location".into(), J::String(l.clone()));
            }
        }
    }
    J::Object(m)
}

/// Digi's list envelope: `{"count", "size", "cursor", "list"}`, where `count` is the number of
/// items on this page and `cursor` is absent on the last page.
pub fn list(items: Vec<J>, size: usize, next: Option<Cursor>) -> J {
    let mut m = Map::with_capacity(4);
    m.insert("count".into(), J::from(items.len()));
    m.insert("size".into(), J::from(size));
    if let Some(c) = next {
        m.insert("cursor".into(), J::String(c.encode()));
    }
    m.insert("list".into(), J::Array(items));
    J::Object(m)
}
