//! `POST /ws/v1/streams/history`: turning a request body into write groups.
//!
//! # Shapes
//! - JSON (`application/json`, or no content type): one point object or a list of them, with
//!   Digi's v1 fields `stream_id, stream_type, stream_units, value, timestamp, quality, location,
//!   description`. `timestamp` is epoch ms (integer or fraction) or ISO 8601; absent means now.
//! - MessagePack (`application/msgpack`): the same one object or list, with the same field names.
//! - Compact MessagePack, for gateways: a map whose first key is `groups`, sending each stream's
//!   path once for many points:
//!   ```text
//!   {"groups": [{"stream_id": "gw/pst04/voltage_l1",
//!                "stream_type": "DOUBLE",          optional, used when the stream is created
//!                "stream_units": "V",              optional, likewise
//!                "points": [[ts, value], [ts, value, {"quality": 1, "location": "..", "description": ".."}], ...]},
//!               ...]}
//!   ```
//!   `ts` is epoch ms (integer or float), an ISO 8601 string, or nil for now. Item indices in
//!   error answers count points across groups in order, from 0.
//!
//! A body that cannot be parsed at all is a 400 and stores nothing. Items that parse but are bad
//! (unknown type, bad path, bad timestamp, value that does not fit) are reported by index while
//! the good items are stored.

use crate::error::ApiError;
use meterstream_storage::time::{check_range, from_f64_ms, parse_absolute};
use meterstream_storage::{Extras, GroupIn, InValue, PointIn, StreamType};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// The error of one item found while parsing.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemFault {
    /// Index of the item, from 0.
    pub index: usize,
    /// HTTP status for the item.
    pub status: u16,
    /// What is wrong.
    pub message: String,
}

/// A parsed body.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The good items, grouped by stream.
    pub groups: Vec<GroupIn>,
    /// The bad items.
    pub faults: Vec<ItemFault>,
    /// Whether the body was a single object (not a list).
    pub single: bool,
    /// Number of items in the body.
    pub items: usize,
}

/// Body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// MessagePack.
    MsgPack,
}

impl Format {
    /// The format for a `Content-Type` header value (without parameters); `None` if unsupported.
    pub fn from_content_type(ct: Option<&str>) -> Option<Format> {
        let essence = ct
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        match essence.as_str() {
            "" | "application/json" | "text/json" => Some(Format::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Some(Format::MsgPack)
            }
            _ => None,
        }
    }
}

/// One point object as sent; every field is taken as any value and checked afterwards, so that a
/// field of the wrong kind is an error of that item, not of the whole body.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawItem {
    pub(crate) stream_id: Option<InValue>,
    pub(crate) stream_type: Option<InValue>,
    pub(crate) stream_units: Option<InValue>,
    pub(crate) value: Option<InValue>,
    pub(crate) timestamp: Option<InValue>,
    pub(crate) quality: Option<InValue>,
    pub(crate) location: Option<InValue>,
    pub(crate) description: Option<InValue>,
}

#[derive(Debug, Deserialize)]
struct CompactBody {
    groups: Vec<CompactGroup>,
}

#[derive(Debug, Deserialize)]
struct CompactGroup {
    stream_id: String,
    #[serde(default)]
    stream_type: Option<String>,
    #[serde(default)]
    stream_units: Option<String>,
    points: CompactPoints,
}

/// A group's points, checked as they are decoded: the good ones in order, ready for storage
/// (moved whole into a group when none is bad), and the bad ones by position.
#[derive(Debug, Default)]
struct CompactPoints {
    good: Vec<PointIn>,
    bad: Vec<(usize, String)>,
}

impl<'de> Deserialize<'de> for CompactPoints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CompactPoints;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of points")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CompactPoints, A::Error> {
                let mut out = CompactPoints {
                    good: Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16)),
                    bad: Vec::new(),
                };
                let mut k = 0usize;
                while let Some(cp) = seq.next_element::<CompactPoint>()? {
                    match compact_point(cp) {
                        Ok(p) => out.good.push(p),
                        Err(m) => out.bad.push((k, m)),
                    }
                    k += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawExtras {
    quality: Option<InValue>,
    location: Option<InValue>,
    description: Option<InValue>,
}

#[derive(Debug)]
struct CompactPoint {
    ts: InValue,
    value: InValue,
    extras: Option<RawExtras>,
}

impl<'de> Deserialize<'de> for CompactPoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CompactPoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a point [timestamp, value] or [timestamp, value, {extras}]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CompactPoint, A::Error> {
                let ts = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let value = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let extras = seq.next_element()?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(4, &self));
                }
                Ok(CompactPoint { ts, value, extras })
            }
        }
        d.deserialize_seq(V)
    }
}

/// A timestamp in any accepted form; `Ok(None)` means "now".
pub fn timestamp_of(v: InValue) -> Result<Option<i64>, String> {
    match v {
        InValue::Null => Ok(None),
        InValue::Int(i) => check_range(i).map(Some).map_err(|e| e.to_string()),
        InValue::UInt(u) => Err(format!(
            "invalid timestamp {u}: outside the supported range"
        )),
        InValue::Float(f) => from_f64_ms(f).map(Some).map_err(|e| e.to_string()),
        InValue::Str(s) => parse_absolute(&s).map(Some).map_err(|e| e.to_string()),
        other => Err(format!(
            "timestamp must be epoch milliseconds or an ISO 8601 string, not {other:?}"
        )),
    }
}

fn string_field(name: &str, v: Option<InValue>) -> Result<Option<String>, String> {
    match v {
        None | Some(InValue::Null) => Ok(None),
        Some(InValue::Str(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{name} must be a string, not {other:?}")),
    }
}

fn stream_type_of(v: Option<String>) -> Result<Option<StreamType>, String> {
    match v {
        None => Ok(None),
        Some(s) => StreamType::parse(&s).map(Some).ok_or_else(|| {
            format!(
                "unknown stream_type {s:?}; expected one of {}",
                StreamType::ALL.map(|t| t.as_str()).join(", ")
            )
        }),
    }
}

/// Normalizes a location to `lat,long[,elevation]`: from that string or from a list of numbers.
fn location_of(v: Option<InValue>) -> Result<Option<String>, String> {
    let nums: Vec<f64> = match v {
        None | Some(InValue::Null) => return Ok(None),
        Some(InValue::Str(s)) => s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("location {s:?} is not \"lat,long[,elevation]\""))?,
        Some(InValue::Json(serde_json::Value::Array(a))) => a
            .iter()
            .map(|x| x.as_f64().ok_or(()))
            .collect::<Result<_, _>>()
            .map_err(|_| "location must be [lat, long(, elevation)] numbers".to_string())?,
        Some(other) => {
            return Err(format!(
                "location must be \"lat,long[,elevation]\", not {other:?}"
            ))
        }
    };
    if !(2..=3).contains(&nums.len()) || nums.iter().any(|n| !n.is_finite()) {
        return Err("location needs 2 or 3 finite numbers: lat,long[,elevation]".into());
    }
    if !(-90.0..=90.0).contains(&nums[0]) || !(-180.0..=180.0).contains(&nums[1]) {
        return Err("location latitude must lie in -90..=90 and longitude in -180..=180".into());
    }
    Ok(Some(
        nums.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ))
}

fn extras_of(
    quality: Option<InValue>,
    location: Option<InValue>,
    description: Option<InValue>,
) -> Result<Option<Box<Extras>>, String> {
    let quality = match quality {
        None | Some(InValue::Null) => None,
        Some(InValue::Int(q)) => {
            Some(i32::try_from(q).map_err(|_| format!("quality {q} is outside the 32-bit range"))?)
        }
        Some(other) => return Err(format!("quality must be an integer, not {other:?}")),
    };
    Ok(Extras {
        quality,
        location: location_of(location)?,
        description: string_field("description", description)?,
    }
    .boxed())
}

struct ItemParts {
    stream: String,
    stream_type: Option<StreamType>,
    stream_units: Option<String>,
    point: PointIn,
}

fn item_parts(raw: RawItem) -> Result<ItemParts, String> {
    let stream = match raw.stream_id {
        Some(InValue::Str(s)) => s,
        None | Some(InValue::Null) => return Err("stream_id is missing".into()),
        Some(other) => return Err(format!("stream_id must be a string, not {other:?}")),
    };
    let value = match raw.value {
        None | Some(InValue::Null) => return Err("value is missing".into()),
        Some(v) => v,
    };
    Ok(ItemParts {
        stream,
        stream_type: stream_type_of(string_field("stream_type", raw.stream_type)?)?,
        stream_units: string_field("stream_units", raw.stream_units)?,
        point: PointIn {
            timestamp: match raw.timestamp {
                None => None,
                Some(t) => timestamp_of(t)?,
            },
            value,
            extras: extras_of(raw.quality, raw.location, raw.description)?,
        },
    })
}

/// Groups single items: consecutive items of the same stream (and declared type and units) share
/// a group. An item that could not even be read (`Err`) is a fault with that message.
pub(crate) fn group_items(items: Vec<Result<RawItem, String>>, single: bool) -> Parsed {
    let mut p = Parsed {
        single,
        items: items.len(),
        ..Parsed::default()
    };
    for (index, raw) in items.into_iter().enumerate() {
        match raw.and_then(item_parts) {
            Ok(it) => {
                let same = p.groups.last().is_some_and(|g| {
                    g.stream == it.stream
                        && g.stream_type == it.stream_type
                        && g.stream_units == it.stream_units
                        && g.first_index + g.points.len() == index
                });
                if same {
                    if let Some(g) = p.groups.last_mut() {
                        g.points.push(it.point);
                    }
                } else {
                    p.groups.push(GroupIn {
                        stream: it.stream,
                        stream_type: it.stream_type,
                        stream_units: it.stream_units,
                        points: vec![it.point],
                        first_index: index,
                    });
                }
            }
            Err(message) => p.faults.push(ItemFault {
                index,
                status: 400,
                message,
            }),
        }
    }
    p
}

/// Writes groups durably: into the store on a single node, into the cluster's log on a
/// cluster node. Blocking.
pub fn write_groups(
    st: &crate::AppState,
    groups: Vec<GroupIn>,
    now: i64,
    address: Option<&str>,
    key: Option<&str>,
) -> Result<meterstream_storage::store::WriteOutcome, ApiError> {
    match &st.cluster {
        Some(c) => c.publish(groups, now, key, address),
        None => Ok(st.store.write(groups, now)?),
    }
}

/// The request's `Idempotency-Key`, scoped to its credential: a batch sent again with the same
/// key (a gateway retrying after a lost answer, through any node) is stored once in a
/// cluster's log within its duplicate window. Up to 200 visible ASCII characters; a single
/// node ignores it (writing the same points again changes nothing there).
pub fn idempotency_key(
    req: &actix_web::HttpRequest,
    who: &crate::auth::Principal,
) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let k = v.to_str().unwrap_or_default();
    if k.is_empty() || k.len() > 200 || !k.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key: 1 to 200 visible ASCII characters".into(),
        ));
    }
    Ok(Some(format!("{}/{k}", who.id)))
}

/// What [`store_for`] stored.
#[derive(Debug, Default)]
pub struct Stored {
    /// Points stored.
    pub stored: usize,
    /// Items refused: outside the caller's scope (403) or refused by the store.
    pub faults: Vec<ItemFault>,
    /// The devices (first path segments) that points were stored for, in first-seen order.
    pub devices: Vec<String>,
}

/// Stores parsed groups on behalf of `who`, as every ingest format does: groups outside the
/// caller's scope (a device key writing into another device's subtree) are refused item by item,
/// the others are written; each device whose points were stored is recorded as in contact from
/// `address` (the points are durable already, so a registry failure is logged, not answered);
/// the ingest metrics are counted. Blocking.
pub fn store_for(
    st: &crate::AppState,
    who: &crate::auth::Principal,
    mut groups: Vec<GroupIn>,
    address: Option<&str>,
    now: i64,
    key: Option<&str>,
) -> Result<Stored, ApiError> {
    let mut out = Stored::default();
    groups.retain(|g| {
        if who.covers_path(&g.stream) {
            return true;
        }
        out.faults.extend((0..g.points.len()).map(|i| ItemFault {
            index: g.first_index + i,
            status: 403,
            message: format!("{:?} is outside this credential's scope", g.stream),
        }));
        false
    });
    let mut devices: Vec<String> = Vec::new();
    for g in &groups {
        let d = meterstream_storage::path::device_id(&g.stream);
        if !d.is_empty() && !devices.iter().any(|x| x == d) {
            devices.push(d.to_string());
        }
    }
    let outcome = write_groups(st, groups, now, address, key)?;
    out.faults
        .extend(outcome.errors.into_iter().map(|e| ItemFault {
            index: e.index,
            status: crate::error::storage_status(&e.error).as_u16(),
            message: e.error.to_string(),
        }));
    out.faults.sort_by_key(|f| f.index);
    out.stored = outcome.stored;
    // In a cluster, the partitions' holders record the contact when they apply the points.
    if out.stored > 0 && st.cluster.is_none() {
        for d in &devices {
            if meterstream_storage::path::validate_path(d).is_ok() {
                if let Err(e) = st.devices.seen(d, address, now) {
                    tracing::error!(device = %d, "recording contact: {e}");
                }
            }
        }
        out.devices = devices;
    }
    st.metrics.points_ingested.inc_by(out.stored as u64);
    st.metrics.points_rejected.inc_by(out.faults.len() as u64);
    Ok(out)
}

fn first_significant(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Parses a JSON body.
pub fn parse_json(body: &[u8]) -> Result<Parsed, ApiError> {
    let bad = |e: serde_json::Error| {
        ApiError::BadRequest(format!(
            "the body is not a data point or a list of data points in JSON: {e}"
        ))
    };
    match first_significant(body) {
        Some(b'[') => Ok(group_items(
            serde_json::from_slice::<Vec<RawItem>>(body)
                .map_err(bad)?
                .into_iter()
                .map(Ok)
                .collect(),
            false,
        )),
        Some(b'{') => Ok(group_items(
            vec![Ok(serde_json::from_slice::<RawItem>(body).map_err(bad)?)],
            true,
        )),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON data point object or a list of them".into(),
        )),
    }
}

fn compact_point(cp: CompactPoint) -> Result<PointIn, String> {
    let timestamp = timestamp_of(cp.ts)?;
    let extras = match cp.extras {
        Some(e) => extras_of(e.quality, e.location, e.description)?,
        None => None,
    };
    Ok(PointIn {
        timestamp,
        value: cp.value,
        extras,
    })
}

/// Decodes the common shape of a compact batch straight from the bytes: string stream ids,
/// types and units, and points `[integer timestamp, number]`. `None` for anything else (extras,
/// other value kinds, unknown or repeated keys, malformed input): the general serde decoder then
/// decides, so the answer for any body is the same as without this path. On the standard workload
/// this path is what ingest runs.
fn compact_fast(body: &[u8]) -> Option<CompactBody> {
    use rmp::Marker;
    fn str_of<'a>(rd: &mut &'a [u8]) -> Option<&'a str> {
        let n = rmp::decode::read_str_len(rd).ok()? as usize;
        if rd.len() < n {
            return None;
        }
        let (s, rest) = rd.split_at(n);
        *rd = rest;
        std::str::from_utf8(s).ok()
    }
    fn opt_str(rd: &mut &[u8]) -> Option<Option<String>> {
        if rd.first() == Some(&0xc0) {
            *rd = &rd[1..];
            return Some(None);
        }
        str_of(rd).map(|s| Some(s.to_string()))
    }
    fn int(rd: &mut &[u8]) -> Option<InValue> {
        let m = rmp::decode::read_marker(rd).ok()?;
        let mut take = |n: usize| -> Option<[u8; 8]> {
            if rd.len() < n {
                return None;
            }
            let mut b = [0u8; 8];
            b[8 - n..].copy_from_slice(&rd[..n]);
            *rd = &rd[n..];
            Some(b)
        };
        let signed = |b: [u8; 8], n: usize| -> i64 {
            let shift = 64 - 8 * n as u32;
            (i64::from_be_bytes(b) << shift) >> shift
        };
        Some(match m {
            Marker::FixPos(v) => InValue::Int(v as i64),
            Marker::FixNeg(v) => InValue::Int(v as i64),
            Marker::U8 => InValue::Int(u64::from_be_bytes(take(1)?) as i64),
            Marker::U16 => InValue::Int(u64::from_be_bytes(take(2)?) as i64),
            Marker::U32 => InValue::Int(u64::from_be_bytes(take(4)?) as i64),
            Marker::U64 => {
                let v = u64::from_be_bytes(take(8)?);
                match i64::try_from(v) {
                    Ok(i) => InValue::Int(i),
                    Err(_) => InValue::UInt(v),
                }
            }
            Marker::I8 => InValue::Int(signed(take(1)?, 1)),
            Marker::I16 => InValue::Int(signed(take(2)?, 2)),
            Marker::I32 => InValue::Int(signed(take(4)?, 4)),
            Marker::I64 => InValue::Int(signed(take(8)?, 8)),
            Marker::F32 => {
                InValue::Float(f32::from_bits(u64::from_be_bytes(take(4)?) as u32) as f64)
            }
            Marker::F64 => InValue::Float(f64::from_bits(u64::from_be_bytes(take(8)?))),
            _ => return None,
        })
    }
    let mut rd = body;
    if rmp::decode::read_map_len(&mut rd).ok()? != 1 || str_of(&mut rd)? != "groups" {
        return None;
    }
    let ng = rmp::decode::read_array_len(&mut rd).ok()? as usize;
    let mut groups = Vec::with_capacity(ng.min(1 << 16));
    for _ in 0..ng {
        let nk = rmp::decode::read_map_len(&mut rd).ok()?;
        let (mut id, mut ty, mut units, mut points) = (None, None, None, None);
        for _ in 0..nk {
            match str_of(&mut rd)? {
                "stream_id" if id.is_none() => id = Some(str_of(&mut rd)?.to_string()),
                "stream_type" if ty.is_none() => ty = Some(opt_str(&mut rd)?),
                "stream_units" if units.is_none() => units = Some(opt_str(&mut rd)?),
                "points" if points.is_none() => {
                    let np = rmp::decode::read_array_len(&mut rd).ok()? as usize;
                    let mut pts = CompactPoints {
                        good: Vec::with_capacity(np.min(1 << 16)),
                        bad: Vec::new(),
                    };
                    for k in 0..np {
                        if rmp::decode::read_array_len(&mut rd).ok()? != 2 {
                            return None;
                        }
                        let ts = match int(&mut rd)? {
                            v @ (InValue::Int(_) | InValue::UInt(_)) => v,
                            _ => return None,
                        };
                        let value = int(&mut rd)?;
                        match compact_point(CompactPoint {
                            ts,
                            value,
                            extras: None,
                        }) {
                            Ok(p) => pts.good.push(p),
                            Err(m) => pts.bad.push((k, m)),
                        }
                    }
                    points = Some(pts);
                }
                _ => return None,
            }
        }
        groups.push(CompactGroup {
            stream_id: id?,
            stream_type: ty.flatten(),
            stream_units: units.flatten(),
            points: points?,
        });
    }
    rd.is_empty().then_some(CompactBody { groups })
}

/// Whether a MessagePack map starts with the key `groups`.
fn is_compact(body: &[u8]) -> bool {
    let mut rd = body;
    if rmp::decode::read_map_len(&mut rd).is_err() {
        return false;
    }
    let mut buf = [0u8; 8];
    matches!(rmp::decode::read_str(&mut rd, &mut buf), Ok("groups"))
}

/// Parses a MessagePack body.
pub fn parse_msgpack(body: &[u8]) -> Result<Parsed, ApiError> {
    let bad = |e: rmp_serde::decode::Error| {
        ApiError::BadRequest(format!(
            "the body is not a data point, a list of data points or a compact batch in MessagePack: {e}"
        ))
    };
    let Some(&first) = body.first() else {
        return Err(ApiError::BadRequest("the body is empty".into()));
    };
    let is_array = matches!(first, 0x90..=0x9f | 0xdc | 0xdd);
    let is_map = matches!(first, 0x80..=0x8f | 0xde | 0xdf);
    if is_array {
        return Ok(group_items(
            rmp_serde::from_slice::<Vec<RawItem>>(body)
                .map_err(bad)?
                .into_iter()
                .map(Ok)
                .collect(),
            false,
        ));
    }
    if !is_map {
        return Err(ApiError::BadRequest(
            "the body must be a MessagePack map or array".into(),
        ));
    }
    if !is_compact(body) {
        return Ok(group_items(
            vec![Ok(rmp_serde::from_slice::<RawItem>(body).map_err(bad)?)],
            true,
        ));
    }
    let compact = match compact_fast(body) {
        Some(c) => c,
        None => rmp_serde::from_slice::<CompactBody>(body).map_err(bad)?,
    };
    let mut p = Parsed::default();
    let mut index = 0usize;
    for g in compact.groups {
        let n = g.points.good.len() + g.points.bad.len();
        let first_index = index;
        index += n;
        p.items += n;
        let st = match stream_type_of(g.stream_type) {
            Ok(st) => st,
            Err(message) => {
                p.faults
                    .extend((first_index..first_index + n).map(|index| ItemFault {
                        index,
                        status: 400,
                        message: message.clone(),
                    }));
                continue;
            }
        };
        let CompactPoints { good, bad } = g.points;
        if bad.is_empty() {
            // The usual case: the decoded points become the group as they are.
            if !good.is_empty() {
                p.groups.push(GroupIn {
                    stream: g.stream_id,
                    stream_type: st,
                    stream_units: g.stream_units,
                    points: good,
                    first_index,
                });
            }
            continue;
        }
        // A bad point ends a run of good ones: storage names items by `first_index + position`,
        // so every group must hold consecutive items.
        let mut good = good.into_iter();
        let mut bad = bad.into_iter().peekable();
        let mut run: Option<GroupIn> = None;
        for k in 0..n {
            let index = first_index + k;
            match bad.next_if(|(b, _)| *b == k) {
                Some((_, message)) => {
                    p.faults.push(ItemFault {
                        index,
                        status: 400,
                        message,
                    });
                    p.groups.extend(run.take());
                }
                None => {
                    let Some(pt) = good.next() else { break };
                    run.get_or_insert_with(|| GroupIn {
                        stream: g.stream_id.clone(),
                        stream_type: st,
                        stream_units: g.stream_units.clone(),
                        points: Vec::with_capacity(n - k),
                        first_index: index,
                    })
                    .points
                    .push(pt);
                }
            }
        }
        p.groups.extend(run.take());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_list_groups_consecutive_items_and_reports_bad_ones() {
        let body = br#"[
            {"stream_id": "a/b", "value": 1.5, "timestamp": 1000},
            {"stream_id": "a/b", "value": 2.5, "timestamp": "1970-01-01T00:00:02Z"},
            {"stream_id": 7, "value": 1},
            {"stream_id": "a/c", "value": 3, "quality": 2, "location": [47.3, 8.5]},
            {"stream_id": "a/c"},
            {"stream_id": "a/c", "value": 3, "stream_type": "bogus"},
            {"stream_id": "a/c", "value": 3, "timestamp": -1}
        ]"#;
        let p = parse_json(body).unwrap();
        assert_eq!(p.items, 7);
        assert_eq!(p.groups.len(), 2);
        assert_eq!(p.groups[0].points.len(), 2);
        assert_eq!(p.groups[0].points[1].timestamp, Some(2000));
        assert_eq!(p.groups[1].first_index, 3);
        let e = p.groups[1].points[0].extras.as_ref().unwrap();
        assert_eq!(
            (e.quality, e.location.as_deref()),
            (Some(2), Some("47.3,8.5"))
        );
        let idx: Vec<usize> = p.faults.iter().map(|f| f.index).collect();
        assert_eq!(idx, vec![2, 4, 5, 6]);
        assert!(p.faults[0].message.contains("stream_id must be a string"));
        assert!(p.faults[1].message.contains("value is missing"));
        assert!(p.faults[2].message.contains("unknown stream_type"));
        assert!(p.faults[3].message.contains("supported range"));
    }

    #[test]
    fn json_keeps_17_digit_doubles_exact() {
        let p = parse_json(br#"{"stream_id":"x","value":0.30000000000000004}"#).unwrap();
        assert_eq!(p.groups[0].points[0].value, InValue::Float(0.1 + 0.2));
        let p = parse_json(br#"{"stream_id":"x","value":2.2250738585072011e-308}"#).unwrap();
        assert_eq!(
            p.groups[0].points[0].value,
            InValue::Float(f64::from_bits(0x000F_FFFF_FFFF_FFFF))
        );
    }

    #[test]
    fn malformed_bodies_are_400() {
        for b in [&b"{"[..], b"42", b"", b"[1,2]", b"{\"stream_id\": }"] {
            assert!(parse_json(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        for b in [&[0xc1u8][..], &[0x92, 0x01], &[], &[0x81, 0xa6]] {
            assert!(parse_msgpack(b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn compact_msgpack_numbers_items_across_groups() {
        #[derive(serde::Serialize)]
        struct G<'a> {
            stream_id: &'a str,
            stream_units: &'a str,
            points: Vec<(rmpv_like::Ts, f64)>,
        }
        mod rmpv_like {
            #[derive(serde::Serialize)]
            #[serde(untagged)]
            pub enum Ts {
                Ms(i64),
                Iso(&'static str),
            }
        }
        #[derive(serde::Serialize)]
        struct B<'a> {
            groups: Vec<G<'a>>,
        }
        use rmpv_like::Ts;
        let body = rmp_serde::to_vec_named(&B {
            groups: vec![
                G {
                    stream_id: "g/a",
                    stream_units: "V",
                    points: vec![(Ts::Ms(1), 1.0), (Ts::Ms(-5), 2.0), (Ts::Ms(3), 3.0)],
                },
                G {
                    stream_id: "g/b",
                    stream_units: "A",
                    points: vec![(Ts::Iso("1970-01-01T00:00:01Z"), 4.0)],
                },
            ],
        })
        .unwrap();
        let p = parse_msgpack(&body).unwrap();
        assert_eq!(p.items, 4);
        assert_eq!(p.faults.len(), 1);
        assert_eq!(p.faults[0].index, 1);
        let firsts: Vec<(usize, usize)> = p
            .groups
            .iter()
            .map(|g| (g.first_index, g.points.len()))
            .collect();
        assert_eq!(firsts, vec![(0, 1), (2, 1), (3, 1)]);
        assert_eq!(p.groups[2].points[0].timestamp, Some(1000));
        assert_eq!(p.groups[2].stream_units.as_deref(), Some("A"));
    }

    #[test]
    fn fast_compact_path_decodes_exactly_as_serde_does() {
        use serde_json::json;
        let bodies = [
            json!({"groups": [{"stream_id": "g/m/v", "stream_type": "DOUBLE", "stream_units": "V",
                "points": [[1000, 230.5], [2000, -1.25], [3000, 7], [4000, 18446744073709551615u64],
                           [-5, 1.0], [253402300800000i64, 2.0], [9223372036854775807i64, 3.0]]}]}),
            json!({"groups": [{"stream_id": "a", "stream_type": null, "points": []},
                              {"points": [[1, 2.0]], "stream_id": "b", "stream_units": null}]}),
            // Shapes the fast path leaves to serde: they must come out the same either way.
            json!({"groups": [{"stream_id": "a", "points": [[1, 2.0, {"quality": 3}]]}]}),
            json!({"groups": [{"stream_id": "a", "points": [[1.5, 2.0], ["1970-01-01T00:00:01Z", "x"]]}]}),
            json!({"groups": [{"stream_id": "a", "points": [[1, 2.0]], "extra": 1}]}),
            json!({"groups": [{"stream_id": 5, "points": [[1, 2.0]]}]}),
            json!({"groups": [{"points": [[1, 2.0]]}]}),
        ];
        for b in bodies {
            let body = rmp_serde::to_vec_named(&b).unwrap();
            let slow = rmp_serde::from_slice::<CompactBody>(&body);
            if let Some(fast) = compact_fast(&body) {
                let slow = slow.as_ref().unwrap();
                assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{b}");
            }
            // Whatever path is taken, parsing succeeds or fails alike.
            let parsed = parse_msgpack(&body);
            assert_eq!(parsed.is_ok(), slow.is_ok(), "{b}");
        }
        // The first body takes the fast path.
        let body =
            rmp_serde::to_vec_named(&json!({"groups": [{"stream_id": "a", "points": [[1, 2.0]]}]}))
                .unwrap();
        assert!(compact_fast(&body).is_some());
        // f32 values decode as serde does.
        let mut body = Vec::new();
        rmp::encode::write_map_len(&mut body, 1).unwrap();
        rmp::encode::write_str(&mut body, "groups").unwrap();
        rmp::encode::write_array_len(&mut body, 1).unwrap();
        rmp::encode::write_map_len(&mut body, 2).unwrap();
        rmp::encode::write_str(&mut body, "stream_id").unwrap();
        rmp::encode::write_str(&mut body, "f").unwrap();
        rmp::encode::write_str(&mut body, "points").unwrap();
        rmp::encode::write_array_len(&mut body, 2).unwrap();
        for (t, v) in [(-3i64, 0.1f32), (70000, -2.5)] {
            rmp::encode::write_array_len(&mut body, 2).unwrap();
            rmp::encode::write_sint(&mut body, t).unwrap();
            rmp::encode::write_f32(&mut body, v).unwrap();
        }
        let fast = compact_fast(&body).unwrap();
        let slow = rmp_serde::from_slice::<CompactBody>(&body).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
    }
}
