//! The v1 JSON shapes of streams and points, as answered.
//!
//! A point: `{"id", "stream_id", "timestamp", "server_timestamp", "value", "quality",
//! "location", "description"}` with ISO 8601 UTC times to the millisecond; unset optional fields
//! are left out, and so are fields a history read did not select (`fields=`). A stream: `{"id", "type", "units", "description", "forward_to", "data_ttl",
//! "rollup_ttl", "created", "history_uri"}` and, when it has points, its current value as
//! `"value", "timestamp", "server_timestamp"` (and `"quality", "location"` when set).

use meterstream_storage::point::{point_id_hashed, stable_hash};
use meterstream_storage::time::{format_iso, IsoFormatter};
use meterstream_storage::{Cursor, DataPoint, StreamInfo, StreamType, Value};
use serde::Serialize;
use serde_json::{Map, Value as J};

/// The fields of a point, in their order of output: `fields=` of a history read selects some.
pub const POINT_FIELDS: [&str; 8] = [
    "id",
    "stream_id",
    "timestamp",
    "server_timestamp",
    "value",
    "quality",
    "location",
    "description",
];

/// Which fields of a point to answer (meterstream's addition to Digi's history read: smaller
/// answers when only some fields are wanted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields(u8);

impl Fields {
    /// Every field.
    pub const ALL: Fields = Fields(0xFF);

    /// Parses a comma-separated list of [`POINT_FIELDS`]; `None` means every field.
    pub fn parse(s: Option<&str>) -> Result<Fields, crate::error::ApiError> {
        let Some(s) = s else {
            return Ok(Fields::ALL);
        };
        let mut mask = 0u8;
        for name in s.split(',').map(str::trim) {
            match POINT_FIELDS.iter().position(|f| *f == name) {
                Some(i) => mask |= 1 << i,
                None => {
                    return Err(crate::error::ApiError::param(
                        "fields",
                        format!("{name:?} is not one of {}", POINT_FIELDS.join(", ")),
                    ))
                }
            }
        }
        Ok(Fields(mask))
    }

    /// Whether field `i` of [`POINT_FIELDS`] is answered.
    pub fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
}

/// A value as JSON for its stream type (see [`Value::to_json`]), without intermediate maps.
pub struct ValueOut<'a> {
    value: &'a Value,
    ty: StreamType,
}

impl Serialize for ValueOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.value, self.ty) {
            (Value::Int(i), _) => s.serialize_i64(*i),
            (Value::Float(f), _) if f.is_finite() => s.serialize_f64(*f),
            (Value::Text(t), StreamType::Json | StreamType::Geojson) => {
                match serde_json::value::RawValue::from_string(t.clone()) {
                    Ok(raw) => raw.serialize(s),
                    Err(_) => s.serialize_str(t),
                }
            }
            (Value::Text(t), _) => s.serialize_str(t),
            (v, ty) => v.to_json(ty).serialize(s),
        }
    }
}

/// A page of points of one stream in Digi's list envelope, `{"count", "size", "cursor",
/// "list"}`, written straight into bytes: the same JSON as serializing point structs in Digi's
/// list envelope, without a String per timestamp and id or escaping of the field names (a page
/// holds up to 100,000 points).
pub fn points_page(
    stream: &str,
    ty: StreamType,
    points: &[DataPoint],
    fields: Fields,
    size: usize,
    next: Option<Cursor>,
) -> Vec<u8> {
    use std::io::Write;
    let per_point = if fields == Fields::ALL { 220 } else { 64 };
    let mut out = Vec::with_capacity(64 + points.len() * per_point);
    let h = stable_hash(stream);
    // Writing to a Vec cannot fail; serde_json writes what it is given or a string.
    let stream_json = serde_json::to_string(stream).unwrap_or_default();
    envelope_start(&mut out, points.len(), size, next);
    out.extend_from_slice(b",\"list\":[");
    let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let mut iso = IsoFormatter::default();
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut sep = b'{';
        let mut key = |out: &mut Vec<u8>, name: &str| {
            out.push(sep);
            sep = b',';
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
        };
        let mut time = |out: &mut Vec<u8>, ms: i64| write_time(out, &mut iso, ms);
        let e = p.extras.as_deref();
        if fields.has(0) {
            key(&mut out, "id");
            let id = point_id_hashed(h, p.timestamp);
            out.push(b'"');
            out.extend_from_slice(id.hyphenated().encode_lower(&mut id_buf).as_bytes());
            out.push(b'"');
        }
        if fields.has(1) {
            key(&mut out, "stream_id");
            out.extend_from_slice(stream_json.as_bytes());
        }
        if fields.has(2) {
            key(&mut out, "timestamp");
            time(&mut out, p.timestamp);
        }
        if fields.has(3) {
            key(&mut out, "server_timestamp");
            time(&mut out, p.server_timestamp);
        }
        if fields.has(4) {
            key(&mut out, "value");
            write_json(
                &mut out,
                &ValueOut {
                    value: &p.value,
                    ty,
                },
            );
        }
        if let Some(q) = e.and_then(|e| e.quality).filter(|_| fields.has(5)) {
            key(&mut out, "quality");
            let _ = write!(out, "{q}");
        }
        if let Some(l) = e
            .and_then(|e| e.location.as_deref())
            .filter(|_| fields.has(6))
        {
            key(&mut out, "location");
            write_json(&mut out, &l);
        }
        if let Some(d) = e
            .and_then(|e| e.description.as_deref())
            .filter(|_| fields.has(7))
        {
            key(&mut out, "description");
            write_json(&mut out, &d);
        }
        // A point with no field selected is `{}`.
        out.extend_from_slice(if sep == b'{' { b"{}" } else { b"}" });
    }
    out.extend_from_slice(b"]}");
    out
}

/// How a history page lays out its points: Digi's list of point objects, or one array per
/// field (meterstream's addition, for charts: uPlot and most plotting code take columns, and
/// a client parses a few arrays of numbers far faster than thousands of small objects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `{"list": [{"timestamp": ..., "value": ...}, ...]}` (the default).
    Rows,
    /// `{"columns": {"timestamp": [ms, ...], "value": [...]}}`, times as epoch milliseconds.
    Columns,
}

impl Layout {
    /// Parses `layout=rows|columns` (default rows).
    pub fn parse(s: Option<&str>) -> Result<Layout, crate::error::ApiError> {
        match s {
            None | Some("rows") => Ok(Layout::Rows),
            Some("columns") => Ok(Layout::Columns),
            Some(o) => Err(crate::error::ApiError::param(
                "layout",
                format!("{o:?} is not rows or columns"),
            )),
        }
    }
}

/// A page of points of one stream as columns: `{"count", "size", "cursor", "columns": {field:
/// [...]}}` with one array per selected field, in [`POINT_FIELDS`] order. Times are epoch
/// milliseconds; an optional field a point lacks is `null`.
pub fn points_columns(
    stream: &str,
    ty: StreamType,
    points: &[DataPoint],
    fields: Fields,
    size: usize,
    next: Option<Cursor>,
) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(96 + points.len() * 24);
    envelope_start(&mut out, points.len(), size, next);
    out.extend_from_slice(b",\"columns\":{");
    let h = stable_hash(stream);
    let stream_json = serde_json::to_string(stream).unwrap_or_default();
    let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    // Integers without the formatting machinery (`write!` was 18 % of a columns page).
    let mut int = itoa::Buffer::new();
    let mut first_column = true;
    for (f, name) in POINT_FIELDS
        .iter()
        .enumerate()
        .filter(|(f, _)| fields.has(*f))
    {
        if !first_column {
            out.push(b',');
        }
        first_column = false;
        let _ = write!(out, "\"{name}\":[");
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let e = p.extras.as_deref();
            let _ = match f {
                0 => {
                    let id = point_id_hashed(h, p.timestamp);
                    write!(out, "\"{}\"", id.hyphenated().encode_lower(&mut id_buf))
                }
                1 => out.write_all(stream_json.as_bytes()),
                2 => out.write_all(int.format(p.timestamp).as_bytes()),
                3 => out.write_all(int.format(p.server_timestamp).as_bytes()),
                4 => {
                    write_json(
                        &mut out,
                        &ValueOut {
                            value: &p.value,
                            ty,
                        },
                    );
                    Ok(())
                }
                5 => match e.and_then(|e| e.quality) {
                    Some(q) => write!(out, "{q}"),
                    None => out.write_all(b"null"),
                },
                6 => {
                    write_json(&mut out, &e.and_then(|e| e.location.as_deref()));
                    Ok(())
                }
                _ => {
                    write_json(&mut out, &e.and_then(|e| e.description.as_deref()));
                    Ok(())
                }
            };
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
    out
}

/// Starts Digi's list envelope: `{"count":n,"size":s` and `,"cursor":"..."` when there is a
/// next page; the caller adds its items and the closing brace.
pub fn envelope_start(out: &mut Vec<u8>, count: usize, size: usize, next: Option<Cursor>) {
    use std::io::Write;
    let _ = write!(out, "{{\"count\":{count},\"size\":{size}");
    if let Some(c) = next {
        out.extend_from_slice(b",\"cursor\":");
        write_json(out, &c.encode());
    }
}

/// Writes `ms` as a JSON string of ISO 8601 UTC with milliseconds.
pub fn write_time(out: &mut Vec<u8>, iso: &mut IsoFormatter, ms: i64) {
    match iso.format(ms) {
        Some(text) => {
            out.push(b'"');
            out.extend_from_slice(text);
            out.push(b'"');
        }
        None => write_json(out, &format_iso(ms)),
    }
}

/// Writes `v` as JSON (serde_json's rules: non-finite floats and `None` are `null`).
pub fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Serializing plain values into a Vec cannot fail.
    let _ = serde_json::to_writer(out, v);
}

/// Characters escaped in a stream path used as a URL path: all but the unreserved ones, the
/// sub-delimiters, `:`, `@` and the `/` that separates segments.
const PATH_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b':')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=');

/// Percent-encodes a stream path for use in a URL path (segments kept apart by `/`).
pub fn url_path(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, PATH_ESCAPES).to_string()
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

/// A stream as [`stream`] answers it, serialized without building a map (an inventory page
/// holds up to 100,000 streams).
#[derive(Serialize)]
struct StreamOut<'a> {
    id: &'a str,
    r#type: &'a str,
    units: &'a str,
    description: &'a str,
    forward_to: &'a [String],
    data_ttl: Option<u64>,
    rollup_ttl: Option<u64>,
    created: IsoTime,
    history_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<ValueOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<IsoTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_timestamp: Option<IsoTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
}

/// Epoch ms serialized as ISO 8601 UTC, formatted on the stack.
struct IsoTime(i64);

impl Serialize for IsoTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match meterstream_storage::time::Iso::new(self.0) {
            Some(iso) => s.serialize_str(iso.as_str()),
            None => s.serialize_str(&format_iso(self.0)),
        }
    }
}

/// A page of streams in Digi's list envelope, written straight into bytes: the same JSON as
/// [`list`] of [`stream`]s.
pub fn streams_page(streams: &[StreamInfo], size: usize, next: Option<Cursor>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + streams.len() * 400);
    envelope_start(&mut out, streams.len(), size, next);
    out.extend_from_slice(b",\"list\":[");
    for (i, s) in streams.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let c = s.current.as_ref();
        let e = c.and_then(|c| c.extras.as_deref());
        write_json(
            &mut out,
            &StreamOut {
                id: &s.path,
                r#type: s.meta.stream_type.as_str(),
                units: &s.meta.units,
                description: &s.meta.description,
                forward_to: &s.meta.forward_to,
                data_ttl: s.meta.data_ttl,
                rollup_ttl: s.meta.rollup_ttl,
                created: IsoTime(s.created),
                history_uri: format!("/ws/v1/streams/history/{}", url_path(&s.path)),
                value: c.map(|c| ValueOut {
                    value: &c.value,
                    ty: s.meta.stream_type,
                }),
                timestamp: c.map(|c| IsoTime(c.timestamp)),
                server_timestamp: c.map(|c| IsoTime(c.server_timestamp)),
                quality: e.and_then(|e| e.quality),
                location: e.and_then(|e| e.location.as_deref()),
            },
        );
    }
    out.extend_from_slice(b"]}");
    out
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

#[cfg(test)]
mod reference {
    //! The point shape as plain serde, to check [`super::points_page`] against.
    use super::*;

    /// Digi's list envelope, typed: `{"count", "size", "cursor", "list"}`.
    #[derive(Serialize)]
    pub(super) struct ListOut<T: Serialize> {
        count: usize,
        size: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        list: Vec<T>,
    }

    impl<T: Serialize> ListOut<T> {
        /// A page of `list` for a request of `size`, with the cursor of the next page.
        pub(super) fn new(list: Vec<T>, size: usize, next: Option<Cursor>) -> Self {
            ListOut {
                count: list.len(),
                size,
                cursor: next.map(|c| c.encode()),
                list,
            }
        }
    }

    /// A point of `stream` (of type `ty`), serialized straight to JSON without building a map.
    #[derive(Serialize)]
    pub(super) struct PointOut<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stream_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        server_timestamp: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<ValueOut<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        quality: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        location: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<&'a str>,
    }

    /// Points of one stream, ready to serialize, with the `fields` selected.
    pub(super) fn points<'a>(
        stream: &'a str,
        ty: StreamType,
        points: &'a [DataPoint],
        fields: Fields,
    ) -> Vec<PointOut<'a>> {
        let h = stable_hash(stream);
        points
            .iter()
            .map(|p| point(stream, h, ty, p, fields))
            .collect()
    }

    /// A point of `stream` (whose [`stable_hash`] is `h`, of type `ty`), ready to serialize.
    fn point<'a>(
        stream: &'a str,
        h: u64,
        ty: StreamType,
        p: &'a DataPoint,
        f: Fields,
    ) -> PointOut<'a> {
        let e = p.extras.as_deref();
        PointOut {
            id: f
                .has(0)
                .then(|| point_id_hashed(h, p.timestamp).to_string()),
            stream_id: f.has(1).then_some(stream),
            timestamp: f.has(2).then(|| format_iso(p.timestamp)),
            server_timestamp: f.has(3).then(|| format_iso(p.server_timestamp)),
            value: f.has(4).then_some(ValueOut {
                value: &p.value,
                ty,
            }),
            quality: e.and_then(|e| e.quality).filter(|_| f.has(5)),
            location: e.and_then(|e| e.location.as_deref()).filter(|_| f.has(6)),
            description: e
                .and_then(|e| e.description.as_deref())
                .filter(|_| f.has(7)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterstream_storage::point::Extras;

    #[test]
    fn the_streams_page_is_the_stream_objects_in_a_list() {
        use meterstream_storage::StreamMeta;
        let mut meta = StreamMeta::new(StreamType::Double);
        meta.units = "V".into();
        meta.description = "phase \"1\"".into();
        meta.forward_to = vec!["a/b".into()];
        meta.data_ttl = Some(86_400);
        let streams = vec![
            StreamInfo {
                path: "gw/m 1/voltage_l1".into(),
                meta: meta.clone(),
                current: Some(DataPoint {
                    timestamp: 1_700_000_000_123,
                    server_timestamp: 1_700_000_000_500,
                    value: Value::Float(230.5),
                    extras: Some(Box::new(meterstream_storage::point::Extras {
                        quality: Some(3),
                        location: Some("42.1,23.3,550".into()),
                        description: Some("not in the stream object".into()),
                    })),
                }),
                created: 1_600_000_000_000,
            },
            StreamInfo {
                path: "gw/s".into(),
                meta: StreamMeta::new(StreamType::Json),
                current: Some(DataPoint {
                    timestamp: 5,
                    server_timestamp: 6,
                    value: Value::Text("{\"a\": [1, 2]}".into()),
                    extras: None,
                }),
                created: 0,
            },
            StreamInfo {
                path: "gw/empty".into(),
                meta: StreamMeta::new(StreamType::Long),
                current: None,
                created: 7,
            },
        ];
        let next = Some(Cursor::Key {
            order: meterstream_storage::Order::Asc,
            key: "gw/s".into(),
        });
        for n in [None, next] {
            let got: J = serde_json::from_slice(&streams_page(&streams, 1000, n.clone())).unwrap();
            let want = list(streams.iter().map(stream).collect(), 1000, n);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn the_page_writer_answers_exactly_what_serde_would() {
        let extras = |q: Option<i32>, l: Option<&str>, d: Option<&str>| {
            Some(Box::new(Extras {
                quality: q,
                location: l.map(String::from),
                description: d.map(String::from),
            }))
        };
        let pts = [
            DataPoint {
                timestamp: 1_700_000_000_123,
                server_timestamp: 1_700_000_000_500,
                value: Value::Float(230.25),
                extras: None,
            },
            DataPoint {
                timestamp: 1_700_000_001_000,
                server_timestamp: 1_700_000_001_000,
                value: Value::Float(5.0),
                extras: extras(
                    Some(-3),
                    Some("42.1,23.3,550"),
                    Some("tab\there \"quoted\" \u{e9}\u{1F600}"),
                ),
            },
            DataPoint {
                timestamp: 0,
                server_timestamp: meterstream_storage::time::MAX_TIMESTAMP,
                value: Value::Float(f64::NAN),
                extras: extras(None, None, Some("")),
            },
            DataPoint {
                timestamp: 86_400_000,
                server_timestamp: 86_400_001,
                value: Value::Int(-7),
                extras: extras(Some(0), None, None),
            },
            DataPoint {
                timestamp: 2,
                server_timestamp: 3,
                value: Value::Text("\"x\"\\".into()),
                extras: None,
            },
            DataPoint {
                timestamp: 4,
                server_timestamp: 5,
                value: Value::Float(f64::INFINITY),
                extras: None,
            },
        ];
        let cursor = Some(Cursor::Client {
            order: meterstream_storage::Order::Asc,
            ts: 1_700_000_001_000,
        });
        for ty in [
            StreamType::Double,
            StreamType::Long,
            StreamType::String,
            StreamType::Json,
        ] {
            for mask in [
                0xFFu8, 0, 1, 2, 4, 8, 16, 32, 64, 128, 0b10100, 0b11100000, 0b01011011,
            ] {
                let f = Fields(mask);
                for (n, next) in [(pts.len(), None), (3, cursor.clone())] {
                    let want = serde_json::to_vec(&reference::ListOut::new(
                        reference::points("gw/m\"/v", ty, &pts[..n], f),
                        1000,
                        next.clone(),
                    ))
                    .unwrap();
                    let got = points_page("gw/m\"/v", ty, &pts[..n], f, 1000, next.clone());
                    assert_eq!(
                        String::from_utf8(got).unwrap(),
                        String::from_utf8(want.clone()).unwrap(),
                        "{ty:?} {mask:#b}"
                    );
                    // The columns hold the same values, field by field, times as epoch ms.
                    let cols: J = serde_json::from_slice(&points_columns(
                        "gw/m\"/v",
                        ty,
                        &pts[..n],
                        f,
                        1000,
                        next,
                    ))
                    .unwrap();
                    let rows: J = serde_json::from_slice(&want).unwrap();
                    assert_eq!(cols["count"], rows["count"]);
                    assert_eq!(cols["cursor"], rows["cursor"]);
                    // Columns in the order of POINT_FIELDS (the parsed map sorts its keys).
                    let text =
                        String::from_utf8(points_columns("gw/m\"/v", ty, &pts[..n], f, 1000, None))
                            .unwrap();
                    let wanted: Vec<&str> = (0..8)
                        .filter(|i| f.has(*i))
                        .map(|i| POINT_FIELDS[i])
                        .collect();
                    let at: Vec<usize> = wanted
                        .iter()
                        .map(|w| text.find(&format!("\"{w}\":[")).unwrap())
                        .collect();
                    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
                    assert_eq!(cols["columns"].as_object().unwrap().len(), wanted.len());
                    for name in wanted {
                        let col = cols["columns"][name].as_array().unwrap();
                        assert_eq!(col.len(), n);
                        for (i, row) in rows["list"].as_array().unwrap().iter().enumerate() {
                            let want = match name {
                                "timestamp" => J::from(pts[i].timestamp),
                                "server_timestamp" => J::from(pts[i].server_timestamp),
                                _ => row.get(name).cloned().unwrap_or(J::Null),
                            };
                            assert_eq!(col[i], want, "{name} of point {i}, {ty:?} {mask:#b}");
                        }
                    }
                }
            }
        }
    }
}
