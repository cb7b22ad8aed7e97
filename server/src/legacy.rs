//! Digi's legacy data-stream web services (issue 9, docs/legacy.md): `/ws/DataStream[/{path}]`
//! and `/ws/DataPoint[/{stream}]`, so that older gateways and clients written for Digi Device
//! Cloud (Digi's own Python library among them) work with a new base URL and credentials.
//!
//! - Answers are XML unless the request's `Accept` names JSON; bodies are XML unless their
//!   `Content-Type` names JSON (a body without a content type is XML, as Digi's client sends
//!   it).
//! - Element and field names are Digi's (`streamId`, `dataType`, `data`, `timestampISO`...),
//!   every value is a string, and lists come in Digi's envelope: `resultSize`, `requestedSize`,
//!   `pageCursor` and the items (`items` in JSON, one element per item in XML).
//! - Every page carries a `pageCursor`; a request with the last page's cursor answers an empty
//!   page (Digi's client pages until a page is short, so it relies on this).
//! - Errors answer as Digi does: `<result><error>...</error></result>` or `{"error": "..."}`,
//!   naming the offending item.

use crate::error::ApiError;
use crate::ingest::{group_items, RawItem};
use crate::params::Params;
use crate::AppState;
use actix_web::http::header::{ACCEPT, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use meterstream_storage::path::validate_path;
use meterstream_storage::point::{point_id, point_id_hashed, stable_hash, timestamp_of_point_id};
use meterstream_storage::time::{format_iso, now_ms, MAX_TIMESTAMP, MIN_TIMESTAMP};
use meterstream_storage::{
    Condition, Cursor, DataPoint, Fill, HistoryQuery, InValue, Interval, Method, Order,
    RollupQuery, StreamFilter, StreamInfo, StreamType, StreamUpdate, Timeline, Value,
};
use std::fmt::Write as _;

/// The two notations of the legacy services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notation {
    /// XML, the default.
    Xml,
    /// JSON, with `Accept: application/json` (answers) or `Content-Type: application/json`
    /// (bodies).
    Json,
}

/// The notation of the answer: JSON when `Accept` names it, else XML.
fn answer_notation(req: &HttpRequest) -> Notation {
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if accept.contains("json") {
        Notation::Json
    } else {
        Notation::Xml
    }
}

/// The notation of a body: from its `Content-Type`; without one (Digi's client sends none),
/// or with a generic one, from its first character, XML when in doubt.
fn body_notation(req: &HttpRequest, body: &[u8]) -> Result<Notation, ApiError> {
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/json" => Ok(Notation::Json),
        "application/xml" | "text/xml" => Ok(Notation::Xml),
        "" | "text/plain" | "application/x-www-form-urlencoded" | "application/octet-stream" => {
            match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') | Some(b'[') => Ok(Notation::Json),
                _ => Ok(Notation::Xml),
            }
        }
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "{ct}; the legacy services take application/xml (the default) or application/json"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading bodies: XML into a small element tree, JSON into serde values, both into fields.

/// An XML element: name, text and children (attributes are not used by Digi's bodies).
#[derive(Debug, Default)]
struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

/// Parses an XML document into its root element. Entities other than XML's five and character
/// references are refused (nothing is fetched or expanded), and so is anything not well formed.
fn parse_xml(body: &[u8]) -> Result<Element, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut buf = Vec::new();
    let name_of = |n: &[u8]| {
        std::str::from_utf8(n)
            .map(str::to_string)
            .map_err(|_| "an element name is not UTF-8".to_string())
    };
    fn attach(stack: &mut [Element], root: &mut Option<Element>, e: Element) -> Result<(), String> {
        match stack.last_mut() {
            Some(parent) => parent.children.push(e),
            None if root.is_none() => *root = Some(e),
            None => return Err(format!("a second root element <{}>", e.name)),
        }
        Ok(())
    }
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            format!(
                "the body is not well-formed XML (at byte {}): {e}",
                reader.error_position()
            )
        })?;
        match event {
            Event::Start(e) => stack.push(Element {
                name: name_of(e.name().as_ref())?,
                ..Element::default()
            }),
            Event::Empty(e) => {
                let el = Element {
                    name: name_of(e.name().as_ref())?,
                    ..Element::default()
                };
                attach(&mut stack, &mut root, el)?;
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("an end tag without a start tag")?;
                attach(&mut stack, &mut root, el)?;
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| format!("the body is not well-formed XML: {e}"))?;
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(&c)
                    .map_err(|_| "a CDATA section is not UTF-8".to_string())?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(text);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
        buf.clear();
    }
    if let Some(open) = stack.last() {
        return Err(format!("the element <{}> is not closed", open.name));
    }
    root.ok_or_else(|| "the body holds no XML element".into())
}

/// A field of a body item, whichever notation it came in.
#[derive(Debug, Clone)]
enum Field {
    /// XML text: always a string.
    Text(String),
    /// A JSON value.
    Json(serde_json::Value),
}

impl Field {
    /// As text (JSON numbers and booleans written out); `None` for JSON null.
    fn text(&self) -> Option<String> {
        match self {
            Field::Text(t) => Some(t.clone()),
            Field::Json(serde_json::Value::Null) => None,
            Field::Json(serde_json::Value::String(s)) => Some(s.clone()),
            Field::Json(v) => Some(v.to_string()),
        }
    }

    /// As a value to store.
    fn value(&self) -> InValue {
        match self {
            Field::Text(t) => InValue::Str(t.clone()),
            Field::Json(j) => match j {
                serde_json::Value::Null => InValue::Null,
                serde_json::Value::Bool(b) => InValue::Bool(*b),
                serde_json::Value::String(s) => InValue::Str(s.clone()),
                serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => InValue::Int(i),
                    (None, Some(f)) => InValue::Float(f),
                    _ => InValue::Json(j.clone()),
                },
                other => InValue::Json(other.clone()),
            },
        }
    }
}

/// One item of a body: its fields by name, in order.
type Item = Vec<(String, Field)>;

fn field<'a>(item: &'a Item, name: &str) -> Option<&'a Field> {
    item.iter().find(|(k, _)| k == name).map(|(_, f)| f)
}

/// The items of a body of `element`s: one `<element>`, a `<list>` of them (or `<result>`, as
/// Digi answers), a JSON object, a JSON list of objects, or either wrapped as
/// `{"element": ...}` / `{"list": ...}`.
fn items_of(body: &[u8], notation: Notation, element: &str) -> Result<(Vec<Item>, bool), ApiError> {
    match notation {
        Notation::Xml => {
            let root = parse_xml(body).map_err(ApiError::BadRequest)?;
            let item = |e: &Element| -> Item {
                e.children
                    .iter()
                    .map(|c| (c.name.clone(), Field::Text(c.text.clone())))
                    .collect()
            };
            if root.name == element {
                return Ok((vec![item(&root)], true));
            }
            if root.name == "list" || root.name == "result" {
                let mut out = Vec::new();
                for c in &root.children {
                    if c.name != element {
                        return Err(ApiError::BadRequest(format!(
                            "<{}> holds a <{}>; it may only hold <{element}> elements",
                            root.name, c.name
                        )));
                    }
                    out.push(item(c));
                }
                return Ok((out, false));
            }
            Err(ApiError::BadRequest(format!(
                "the body's root element is <{}>; send <{element}> or a <list> of them",
                root.name
            )))
        }
        Notation::Json => {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
            let obj = |v: &serde_json::Value, i: usize| -> Result<Item, ApiError> {
                match v {
                    serde_json::Value::Object(m) => Ok(m
                        .iter()
                        .map(|(k, v)| (k.clone(), Field::Json(v.clone())))
                        .collect()),
                    other => Err(ApiError::BadRequest(format!(
                        "item {i} is {other}, not a {element} object"
                    ))),
                }
            };
            let unwrap = |v: serde_json::Value| match v {
                serde_json::Value::Object(mut m) if m.len() == 1 => {
                    match m.remove(element).or_else(|| m.remove("list")) {
                        Some(inner) => inner,
                        None => serde_json::Value::Object(m),
                    }
                }
                other => other,
            };
            match unwrap(v) {
                serde_json::Value::Array(a) => Ok((
                    a.iter()
                        .enumerate()
                        .map(|(i, v)| obj(v, i))
                        .collect::<Result<_, _>>()?,
                    false,
                )),
                v @ serde_json::Value::Object(_) => Ok((vec![obj(&v, 0)?], true)),
                other => Err(ApiError::BadRequest(format!(
                    "the body is {other}; send a {element} object or a list of them"
                ))),
            }
        }
    }
}

/// Fields Digi answers that a client may send back unchanged; they are ignored.
const READ_ONLY_POINT_FIELDS: &[&str] = &[
    "id",
    "cstId",
    "timestampISO",
    "serverTimestamp",
    "serverTimestampISO",
];
const POINT_FIELDS: &[&str] = &[
    "streamId",
    "data",
    "timestamp",
    "quality",
    "location",
    "description",
    "streamType",
    "streamUnits",
];

/// A `<DataPoint>` as the item the v1 parser takes; `url_stream` is the stream in the URL.
fn raw_point(item: &Item, url_stream: Option<&str>) -> Result<RawItem, String> {
    for (k, _) in item {
        if !POINT_FIELDS.contains(&k.as_str()) && !READ_ONLY_POINT_FIELDS.contains(&k.as_str()) {
            return Err(format!(
                "unknown field {k:?}; a DataPoint has {}",
                POINT_FIELDS.join(", ")
            ));
        }
    }
    let text = |n: &str| field(item, n).and_then(Field::text);
    let stream = match (text("streamId"), url_stream) {
        (Some(s), Some(u)) if s.trim_start_matches('/') != u => {
            return Err(format!(
                "streamId {s:?} is not the stream of the URL, {u:?}"
            ))
        }
        (Some(s), _) => s.trim_start_matches('/').to_string(),
        (None, Some(u)) => u.to_string(),
        (None, None) => return Err("streamId is missing".into()),
    };
    let data = match field(item, "data") {
        None => return Err("data is missing".into()),
        Some(f) => f.value(),
    };
    // A new stream without a declared type: numbers make a DOUBLE stream, anything else a
    // STRING one (an existing stream keeps its type).
    let declared = text("streamType").filter(|t| !t.trim().is_empty());
    let stream_type = declared.or_else(|| match &data {
        InValue::Str(s) if meterstream_storage::value::parse_float_text(s).is_some() => {
            Some("DOUBLE".to_string())
        }
        InValue::Str(_) => Some("STRING".to_string()),
        _ => None,
    });
    let quality = text("quality").filter(|q| !q.trim().is_empty()).map(|q| {
        q.trim()
            .parse::<i64>()
            .map(InValue::Int)
            .unwrap_or(InValue::Str(q))
    });
    let opt = |n: &str| text(n).filter(|t| !t.is_empty()).map(InValue::Str);
    Ok(RawItem {
        stream_id: Some(InValue::Str(stream)),
        stream_type: stream_type.map(InValue::Str),
        stream_units: opt("streamUnits"),
        value: Some(data),
        timestamp: text("timestamp")
            .filter(|t| !t.trim().is_empty())
            .map(InValue::Str),
        quality,
        location: opt("location"),
        description: opt("description"),
    })
}

/// The v1 parser names fields the v1 way; a legacy client is told Digi's legacy names. Only the
/// field name a parse message starts with is renamed: the rest may quote the client's data.
fn legacy_names(message: &str) -> String {
    const NAMES: [(&str, &str); 5] = [
        ("value is missing", "data is missing"),
        ("stream_id ", "streamId "),
        ("stream_type ", "streamType "),
        ("unknown stream_type ", "unknown streamType "),
        ("stream_units ", "streamUnits "),
    ];
    for (v1, legacy) in NAMES {
        if let Some(rest) = message.strip_prefix(v1) {
            return format!("{legacy}{rest}");
        }
    }
    message.to_string()
}

// ---------------------------------------------------------------------------------------------
// Writing answers.

/// A value in an answer: text, or a nested object.
enum Out {
    Text(String),
    Object(Vec<(&'static str, Out)>),
}

type Fields = Vec<(&'static str, Out)>;

fn t(s: impl Into<String>) -> Out {
    Out::Text(s.into())
}

fn xml_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

fn write_xml(out: &mut String, fields: &Fields, depth: usize) {
    for (k, v) in fields {
        let pad = "  ".repeat(depth);
        match v {
            Out::Text(s) => {
                let _ = write!(out, "{pad}<{k}>");
                xml_escape(out, s);
                let _ = writeln!(out, "</{k}>");
            }
            Out::Object(inner) => {
                let _ = writeln!(out, "{pad}<{k}>");
                write_xml(out, inner, depth + 1);
                let _ = writeln!(out, "{pad}</{k}>");
            }
        }
    }
}

/// `fields` as the members of a JSON object, in their order (without the braces).
fn write_json_members(out: &mut String, fields: &Fields) {
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "\"{k}\": ");
        match v {
            Out::Text(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
            Out::Object(inner) => write_json(out, inner),
        }
    }
}

fn write_json(out: &mut String, fields: &Fields) {
    out.push('{');
    write_json_members(out, fields);
    out.push('}');
}

const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// An answer in Digi's envelope: `head` fields, then the items, each an `element` in XML and
/// an object of `items` in JSON.
fn envelope(
    n: Notation,
    status: StatusCode,
    head: Fields,
    element: &str,
    items: &[Fields],
) -> HttpResponse {
    let mut out = String::with_capacity(256 + items.len() * 400);
    match n {
        Notation::Xml => {
            out.push_str(XML_DECL);
            out.push_str("<result>\n");
            write_xml(&mut out, &head, 1);
            for it in items {
                let _ = writeln!(out, "  <{element}>");
                write_xml(&mut out, it, 2);
                let _ = writeln!(out, "  </{element}>");
            }
            out.push_str("</result>\n");
        }
        Notation::Json => {
            // Written by hand to keep Digi's field order.
            out.push('{');
            write_json_members(&mut out, &head);
            out.push_str(", \"items\": [");
            for (j, it) in items.iter().enumerate() {
                if j > 0 {
                    out.push_str(", ");
                }
                write_json(&mut out, it);
            }
            out.push_str("]}");
        }
    }
    respond(n, status, out)
}

/// A plain answer `<result>fields</result>` / `{fields}`, where a field may repeat in XML
/// (`location` of each item written); in JSON a repeated field becomes a list.
fn plain(n: Notation, status: StatusCode, fields: Vec<(&'static str, String)>) -> HttpResponse {
    let mut out = String::new();
    match n {
        Notation::Xml => {
            out.push_str(XML_DECL);
            if fields.is_empty() {
                out.push_str("<result/>\n");
            } else {
                out.push_str("<result>\n");
                for (k, v) in &fields {
                    let _ = write!(out, "  <{k}>");
                    xml_escape(&mut out, v);
                    let _ = writeln!(out, "</{k}>");
                }
                out.push_str("</result>\n");
            }
        }
        Notation::Json => {
            let mut map = serde_json::Map::new();
            for (k, v) in fields {
                match map.get_mut(k) {
                    None => {
                        map.insert(k.to_string(), serde_json::Value::String(v));
                    }
                    Some(serde_json::Value::Array(a)) => a.push(v.into()),
                    Some(prev) => {
                        let first = prev.take();
                        *prev = serde_json::Value::Array(vec![first, v.into()]);
                    }
                }
            }
            out = serde_json::Value::Object(map).to_string();
        }
    }
    respond(n, status, out)
}

fn respond(n: Notation, status: StatusCode, body: String) -> HttpResponse {
    let ct = match n {
        Notation::Xml => "application/xml; charset=utf-8",
        Notation::Json => "application/json",
    };
    HttpResponse::build(status).content_type(ct).body(body)
}

/// An error as Digi answers it, in the answer's notation.
fn failure(n: Notation, e: ApiError) -> HttpResponse {
    let status = e.status_code();
    let message = e.public_message();
    let mut r = plain(n, status, vec![("error", message)]);
    if matches!(e, ApiError::Unauthorized(_)) {
        if let Ok(v) = "Basic realm=\"meterstream\", Bearer".parse() {
            r.headers_mut()
                .insert(actix_web::http::header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

/// A stored value as Digi writes it: integers without a fraction (`5`), floats always with
/// one (`5.0`, as Java prints them; FLOAT streams at their 32-bit precision), text as it is,
/// bytes in base64.
fn data_text(v: &Value, ty: StreamType) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) if ty == StreamType::Float => format!("{:?}", *f as f32),
        Value::Float(f) => format!("{f:?}"),
        Value::Text(s) => s.clone(),
        Value::Bytes(b) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        }
    }
}

/// A rolled-up value: a float (`2.5`, `200.0`), except that a whole value of an INTEGER or
/// LONG stream is written as an integer (`200`): Digi's client reads rollups through the
/// stream's type, and `int("200.0")` fails in Python.
fn rollup_text(v: Option<f64>, ty: StreamType) -> String {
    match v {
        None => "NaN".into(),
        Some(f)
            if ty.kind() == meterstream_storage::value::ValueKind::Int
                && f.fract() == 0.0
                && f.abs() < 9.007_199_254_740_992e15 =>
        {
            (f as i64).to_string()
        }
        Some(f) => format!("{f:?}"),
    }
}

/// A point in Digi's legacy fields; unset `quality` and `location` are left out.
fn point_fields(path: &str, hash: u64, ty: StreamType, p: &DataPoint) -> Fields {
    let e = p.extras.as_deref();
    let mut f: Fields = vec![
        ("id", t(point_id_hashed(hash, p.timestamp).to_string())),
        ("streamId", t(path)),
        ("timestamp", t(p.timestamp.to_string())),
        ("timestampISO", t(format_iso(p.timestamp))),
        ("serverTimestamp", t(p.server_timestamp.to_string())),
        ("serverTimestampISO", t(format_iso(p.server_timestamp))),
        ("data", t(data_text(&p.value, ty))),
        (
            "description",
            t(e.and_then(|e| e.description.clone()).unwrap_or_default()),
        ),
    ];
    if let Some(q) = e.and_then(|e| e.quality) {
        f.push(("quality", t(q.to_string())));
    }
    if let Some(l) = e.and_then(|e| e.location.clone()) {
        f.push(("location", t(l)));
    }
    f
}

/// A stream in Digi's legacy fields. A TTL that is not set (points are kept until deleted) is
/// `-1`: Digi always has one, and its clients read the field as a number.
fn stream_fields(s: &StreamInfo) -> Fields {
    let ttl = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    let mut f: Fields = vec![
        ("streamId", t(&s.path)),
        ("dataType", t(s.meta.stream_type.as_str())),
        ("forwardTo", t(s.meta.forward_to.join(","))),
    ];
    if let Some(c) = &s.current {
        f.push((
            "currentValue",
            Out::Object(point_fields(
                &s.path,
                stable_hash(&s.path),
                s.meta.stream_type,
                c,
            )),
        ));
    }
    f.extend([
        ("description", t(&s.meta.description)),
        ("units", t(&s.meta.units)),
        ("dataTtl", t(ttl(s.meta.data_ttl))),
        ("rollupTtl", t(ttl(s.meta.rollup_ttl))),
    ]);
    f
}

// ---------------------------------------------------------------------------------------------
// Handlers.

/// Runs a handler, answering its error in Digi's shape and the request's notation.
async fn legacy<F>(req: &HttpRequest, f: F) -> HttpResponse
where
    F: std::future::Future<Output = Result<HttpResponse, ApiError>>,
{
    let n = answer_notation(req);
    match f.await {
        Ok(r) => r,
        Err(e) => failure(n, e),
    }
}

/// The path after `/ws/DataStream/` or `/ws/DataPoint/`, without a leading or trailing `/`;
/// empty for the bare resource.
fn tail(req: &HttpRequest) -> Result<String, ApiError> {
    Ok(crate::path_tail(req)?.trim_matches('/').to_string())
}

/// The caller, checked for `scope`, and the path after the resource in the URL; without one,
/// a 400 that shows `usage`.
fn caller_and_tail(
    req: &HttpRequest,
    scope: crate::auth::Scope,
    usage: &str,
) -> Result<(crate::auth::Principal, String), ApiError> {
    let who = crate::auth::principal(req)?;
    who.require(scope)?;
    let t = tail(req)?;
    if t.is_empty() {
        return Err(ApiError::BadRequest(format!("name the stream: {usage}")));
    }
    Ok((who, t))
}

/// The `pageCursor` of a page: the store's cursor to the next page; on the last page, one just
/// past its last item, so that asking with it answers an empty page (Digi's client asks again
/// after every full page); on an empty page, the cursor it was asked with, else `end`.
fn page_cursor(
    next: Option<Cursor>,
    after_last: Option<Cursor>,
    asked: Option<Cursor>,
    end: Cursor,
) -> String {
    next.or(after_last).or(asked).unwrap_or(end).encode()
}

/// `GET /ws/DataStream[/{path}]`: every stream, or the stream `path` and the streams under it
/// (404 when there are none), in path order, paged with `size` and `pageCursor`.
pub async fn get_streams(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    legacy(&req, get_streams_inner(&req, st)).await
}

async fn get_streams_inner(
    req: &HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = answer_notation(req);
    let who = crate::auth::principal(req)?;
    who.require(crate::auth::Scope::Read)?;
    let prefix = tail(req)?;
    if !prefix.is_empty() {
        validate_path(&prefix)?;
    }
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let cursor = p
        .take("pageCursor")?
        .map(|c| Cursor::decode(&c))
        .transpose()?;
    p.finish(&["size", "pageCursor"])?;
    let mut filter = StreamFilter::default();
    if !prefix.is_empty() {
        filter.conditions.push(Condition::Subtree(prefix.clone()));
    }
    if let Some(ps) = who.path_prefixes() {
        filter.conditions.push(Condition::Within(ps));
    }
    let (st2, asked) = (st.clone(), cursor.clone());
    let forwarded = req.headers().contains_key(crate::cluster::HOP_HEADER);
    let page = web::block(move || match &st2.cluster {
        None => st2
            .store
            .list_streams(&filter, Order::Asc, size, cursor.as_ref()),
        // A cluster node answers for the partitions it holds (below a device, the request was
        // routed to its holder).
        Some(c) => c.held_streams(&*st2.store, &filter, Order::Asc, size, cursor.as_ref()),
    })
    .await??;
    let page = match &st.cluster {
        Some(_) if forwarded && prefix.is_empty() => {
            // Another node gathers the listing: this node's part, in MessagePack (which keeps
            // every value as stored) inside JSON.
            use base64::Engine;
            let bytes = rmp_serde::to_vec_named(&page.items)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok(HttpResponse::Ok().json(serde_json::json!({
                "streams": base64::engine::general_purpose::STANDARD.encode(bytes),
                "more": page.next.is_some(),
            })));
        }
        Some(c) if prefix.is_empty() => gather_streams(c, req, page, size, asked.as_ref()).await?,
        _ => page,
    };
    if page.items.is_empty() && asked.is_none() && !prefix.is_empty() {
        return Err(ApiError::Storage(
            meterstream_storage::StorageError::StreamNotFound { path: prefix },
        ));
    }
    let key = |k: &str| Cursor::Key {
        order: Order::Asc,
        key: k.to_string(),
    };
    let next = page_cursor(
        page.next,
        page.items.last().map(|s| key(&s.path)),
        asked,
        key("\u{10FFFF}"),
    );
    let items: Vec<Fields> = page.items.iter().map(stream_fields).collect();
    Ok(envelope(
        n,
        StatusCode::OK,
        vec![
            ("resultSize", t(items.len().to_string())),
            ("requestedSize", t(size.to_string())),
            ("pageCursor", t(next)),
        ],
        "DataStream",
        &items,
    ))
}

/// The cluster's page of streams: this node's and every other node's parts (each the streams of
/// the partitions it holds after the same cursor), merged in path order and cut at `size`.
async fn gather_streams(
    c: &crate::cluster::Cluster,
    req: &HttpRequest,
    own: meterstream_storage::query::Page<StreamInfo>,
    size: usize,
    asked: Option<&Cursor>,
) -> Result<meterstream_storage::query::Page<StreamInfo>, ApiError> {
    use base64::Engine;
    let mut path = format!("{}?size={size}", req.path());
    if let Some(a) = asked {
        path.push_str("&pageCursor=");
        path.extend(percent_encoding::utf8_percent_encode(
            &a.encode(),
            percent_encoding::NON_ALPHANUMERIC,
        ));
    }
    let mut more = own.next.is_some();
    let mut items = own.items;
    for part in c.ask_others(&path, req.headers()).await? {
        let bad = || ApiError::Internal("a node's part of the stream listing was malformed".into());
        more |= part["more"].as_bool().ok_or_else(bad)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(part["streams"].as_str().ok_or_else(bad)?)
            .map_err(|_| bad())?;
        let streams: Vec<StreamInfo> = rmp_serde::from_slice(&bytes).map_err(|_| bad())?;
        items.extend(streams);
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    let more = more || items.len() > size;
    items.truncate(size);
    let next = match items.last() {
        Some(last) if more => Some(Cursor::Key {
            order: Order::Asc,
            key: last.path.clone(),
        }),
        _ => None,
    };
    Ok(meterstream_storage::query::Page { items, next })
}

const STREAM_FIELDS: &[&str] = &[
    "streamId",
    "dataType",
    "units",
    "description",
    "forwardTo",
    "dataTtl",
    "rollupTtl",
];
const READ_ONLY_STREAM_FIELDS: &[&str] = &["cstId", "currentValue"];

/// A `<DataStream>` as a path and an update.
fn stream_update(item: &Item, url: &str) -> Result<(String, StreamUpdate), String> {
    for (k, _) in item {
        if !STREAM_FIELDS.contains(&k.as_str()) && !READ_ONLY_STREAM_FIELDS.contains(&k.as_str()) {
            return Err(format!(
                "unknown field {k:?}; a DataStream has {}",
                STREAM_FIELDS.join(", ")
            ));
        }
    }
    let text = |n: &str| field(item, n).and_then(Field::text);
    let path = match (text("streamId"), url) {
        (Some(s), u) if !u.is_empty() && s.trim_start_matches('/') != u => {
            return Err(format!(
                "streamId {s:?} is not the stream of the URL, {u:?}"
            ))
        }
        (Some(s), _) => s.trim_start_matches('/').to_string(),
        (None, u) if !u.is_empty() => u.to_string(),
        (None, _) => return Err("streamId is missing".into()),
    };
    validate_path(&path).map_err(|e| e.to_string())?;
    let stream_type = match text("dataType").filter(|t| !t.trim().is_empty()) {
        None => None,
        Some(ty) => Some(StreamType::parse(&ty).ok_or_else(|| {
            format!(
                "invalid dataType {ty:?}; expected one of {}",
                StreamType::ALL.map(|t| t.as_str()).join(", ")
            )
        })?),
    };
    let ttl = |n: &str| -> Result<Option<Option<u64>>, String> {
        match text(n).map(|v| v.trim().to_string()) {
            None => Ok(None),
            Some(v) if v.is_empty() || v == "-1" => Ok(Some(None)),
            Some(v) => v
                .parse::<u64>()
                .map(|s| Some(Some(s)))
                .map_err(|_| format!("{n} {v:?} is not a number of seconds")),
        }
    };
    let forward_to = match field(item, "forwardTo") {
        None => None,
        Some(Field::Json(serde_json::Value::Array(a))) => Some(
            a.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("forwardTo holds {v}, not a stream id"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(f) => Some(
            f.text()
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().trim_start_matches('/').to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
    };
    Ok((
        path,
        StreamUpdate {
            stream_type,
            units: text("units"),
            description: text("description"),
            forward_to,
            data_ttl: ttl("dataTtl")?,
            rollup_ttl: ttl("rollupTtl")?,
        },
    ))
}

/// `POST /ws/DataStream` (creates; an existing stream is a 409) and `PUT
/// /ws/DataStream[/{path}]` (creates or updates): one `<DataStream>` or a `<list>` of them.
/// Answers `<result><location>DataStream/{path}</location>...</result>`, 201 when something
/// was created; a list with bad items answers 207 naming each.
pub async fn post_streams(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> HttpResponse {
    legacy(&req, put_streams_inner(&req, payload, st, true)).await
}

/// `PUT /ws/DataStream[/{path}]`.
pub async fn put_streams(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> HttpResponse {
    legacy(&req, put_streams_inner(&req, payload, st, false)).await
}

/// The one device whose streams a body of DataStream items names, when it names one (a cluster
/// node routes such a `POST`/`PUT /ws/DataStream` to that device's holder, as Digi's clients
/// create a stream); `None` when it names several devices or cannot be read (then the handler
/// answers).
pub fn one_device_of_streams(req: &HttpRequest, body: &[u8]) -> Option<String> {
    let (items, _) = items_of(body, body_notation(req, body).ok()?, "DataStream").ok()?;
    let mut device: Option<String> = None;
    for it in &items {
        let (path, _) = stream_update(it, "").ok()?;
        let d = meterstream_storage::path::device_id(&path).to_string();
        match &device {
            None => device = Some(d),
            Some(x) if *x == d => {}
            Some(_) => return None,
        }
    }
    device.filter(|d| !d.is_empty())
}

async fn put_streams_inner(
    req: &HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
    create_only: bool,
) -> Result<HttpResponse, ApiError> {
    let n = answer_notation(req);
    let who = crate::auth::principal(req)?;
    who.require(crate::auth::Scope::Write)?;
    let url = tail(req)?;
    if create_only && !url.is_empty() {
        return Err(ApiError::MethodNotAllowed(
            "POST on a stream path; POST /ws/DataStream creates, PUT /ws/DataStream/{path} updates"
                .into(),
        ));
    }
    Params::parse(req.query_string())?.finish(&[])?;
    let body = crate::read_body(req, payload, st.body_limit).await?;
    let (items, single) = items_of(&body, body_notation(req, &body)?, "DataStream")?;
    let mut updates = Vec::with_capacity(items.len());
    let mut errors: Vec<(usize, ApiError)> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match stream_update(it, &url) {
            Ok((path, u)) => {
                let scope = std::iter::once(&path)
                    .chain(u.forward_to.iter().flatten())
                    .try_for_each(|p| who.require_path(p));
                match scope {
                    Ok(()) => updates.push((i, path, u)),
                    Err(e) => errors.push((i, e)),
                }
            }
            Err(m) => errors.push((i, ApiError::BadRequest(m))),
        }
    }
    let st2 = st.clone();
    let (locations, mut store_errors, created) = web::block(move || {
        let mut locations = Vec::new();
        let mut errors = Vec::new();
        let mut created = false;
        let now = now_ms();
        for (i, path, u) in updates {
            let existed = st2.store.stream(&path).is_ok();
            if existed && create_only {
                errors.push((
                    i,
                    ApiError::Conflict(format!(
                        "POST DataStream error: the stream {path:?} exists; PUT updates it"
                    )),
                ));
                continue;
            }
            match st2.store.put_stream(&path, u, now) {
                Ok(_) => {
                    created |= !existed;
                    locations.push(format!("DataStream/{path}"));
                }
                Err(e) => errors.push((i, ApiError::Storage(e))),
            }
        }
        (locations, errors, created)
    })
    .await?;
    errors.append(&mut store_errors);
    errors.sort_by_key(|(i, _)| *i);
    items_answer(n, single, created, locations, errors)
}

/// The answer to a write of items: 201 (or 200 when nothing new was made) with a `location` per
/// item stored; 207 adding an `error` per bad item when some were stored; the first error's
/// status when none was.
fn items_answer(
    n: Notation,
    single: bool,
    created: bool,
    locations: Vec<String>,
    mut errors: Vec<(usize, ApiError)>,
) -> Result<HttpResponse, ApiError> {
    if locations.is_empty() && !errors.is_empty() {
        let (i, e) = errors.swap_remove(0);
        return Err(if single {
            e
        } else {
            relabel(e, |m| format!("item {i}: {m}"))
        });
    }
    let status = if !errors.is_empty() {
        StatusCode::MULTI_STATUS
    } else if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut fields: Vec<(&'static str, String)> =
        locations.into_iter().map(|l| ("location", l)).collect();
    for (i, e) in errors {
        fields.push(("error", format!("item {i}: {}", e.public_message())));
    }
    Ok(plain(n, status, fields))
}

/// The same error with its message rewritten (client errors only; others pass unchanged).
fn relabel(e: ApiError, f: impl Fn(&str) -> String) -> ApiError {
    if e.status_code().is_server_error() {
        return e;
    }
    ApiError::with_status(e.status_code().as_u16(), f(&e.public_message()))
}

/// `DELETE /ws/DataStream/{path}`: the stream and its points; 404 if there is no such stream.
pub async fn delete_stream(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    legacy(&req, delete_stream_inner(&req, st)).await
}

async fn delete_stream_inner(
    req: &HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = answer_notation(req);
    let (who, path) = caller_and_tail(
        req,
        crate::auth::Scope::Write,
        "DELETE /ws/DataStream/{streamId}",
    )?;
    validate_path(&path)?;
    who.require_path(&path)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let st2 = st.clone();
    web::block(move || st2.store.delete_stream(&path)).await??;
    Ok(plain(n, StatusCode::OK, Vec::new()))
}

/// `POST /ws/DataPoint[/{stream}]`: one `<DataPoint>` or a `<list>` of them. Items without a
/// `streamId` go to the URL's stream; an item naming another stream than the URL's is refused.
/// Answers `<result><location>DataPoint/{stream}/{point id}</location>...</result>` (201); with
/// bad items 207, each named by its index from 0 (all bad: the first item's status).
pub async fn post_points(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> HttpResponse {
    legacy(&req, post_points_inner(&req, payload, st)).await
}

async fn post_points_inner(
    req: &HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = answer_notation(req);
    let who = crate::auth::principal(req)?;
    if !who.has(crate::auth::Scope::Write) && !who.has(crate::auth::Scope::Device) {
        who.require(crate::auth::Scope::Write)?;
    }
    let url = tail(req)?;
    if !url.is_empty() {
        validate_path(&url)?;
    }
    Params::parse(req.query_string())?.finish(&[])?;
    let key = crate::ingest::idempotency_key(req, &who)?;
    let body = crate::read_body(req, payload, st.body_limit).await?;
    let notation = body_notation(req, &body)?;
    let address = req.peer_addr().map(|a| a.ip().to_string());
    let st2 = st.clone();
    let (locations, errors, single) = web::block(move || -> Result<_, ApiError> {
        let (items, single) = items_of(&body, notation, "DataPoint")?;
        drop(body);
        let url = (!url.is_empty()).then_some(url.as_str());
        let raw: Vec<Result<RawItem, String>> = items.iter().map(|it| raw_point(it, url)).collect();
        let parsed = group_items(raw, single);
        let now = now_ms();
        // The id of each item, known before the write (a point without a timestamp takes now).
        let mut ids: Vec<Option<String>> = vec![None; parsed.items];
        for g in &parsed.groups {
            let h = stable_hash(&g.stream);
            for (k, p) in g.points.iter().enumerate() {
                if let Some(slot) = ids.get_mut(g.first_index + k) {
                    let id = point_id_hashed(h, p.timestamp.unwrap_or(now));
                    *slot = Some(format!("DataPoint/{}/{id}", g.stream));
                }
            }
        }
        st2.metrics
            .points_rejected
            .inc_by(parsed.faults.len() as u64);
        let out = crate::ingest::store_for(
            &st2,
            &who,
            parsed.groups,
            address.as_deref(),
            now,
            key.as_deref(),
        )?;
        // Parse messages name fields (renamed to Digi's names); the store's name the stream.
        let mut faults: Vec<crate::ingest::ItemFault> = parsed
            .faults
            .into_iter()
            .map(|f| crate::ingest::ItemFault {
                message: legacy_names(&f.message),
                ..f
            })
            .collect();
        faults.extend(out.faults);
        faults.sort_by_key(|f| f.index);
        for f in &faults {
            if let Some(slot) = ids.get_mut(f.index) {
                *slot = None;
            }
        }
        let errors: Vec<(usize, ApiError)> = faults
            .into_iter()
            .map(|f| (f.index, ApiError::with_status(f.status, f.message)))
            .collect();
        Ok((ids.into_iter().flatten().collect(), errors, single))
    })
    .await??;
    items_answer(n, single, true, locations, errors)
}

/// A point id at the end of a `/ws/DataPoint/{stream}/{id}` path, if the last segment is the
/// id of a point of the stream before it.
fn split_point_id(path: &str) -> Option<(&str, i64)> {
    let (stream, last) = path.rsplit_once('/')?;
    let id = uuid::Uuid::parse_str(last).ok()?;
    timestamp_of_point_id(stream, &id).map(|ts| (stream, ts))
}

/// `GET /ws/DataPoint/{stream}`: raw points, or rollups with `rollupInterval`/`rollupMethod`.
pub async fn get_points(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    legacy(&req, get_points_inner(&req, st)).await
}

const GET_POINT_PARAMS: &[&str] = &[
    "startTime",
    "endTime",
    "size",
    "pageCursor",
    "order",
    "timeline",
    "rollupInterval",
    "rollupMethod",
    "timezone",
];

async fn get_points_inner(
    req: &HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = answer_notation(req);
    let (who, path) = caller_and_tail(
        req,
        crate::auth::Scope::Read,
        "GET /ws/DataPoint/{streamId}",
    )?;
    validate_path(&path)?;
    who.require_path(&path)?;
    let now = now_ms();
    let mut p = Params::parse(req.query_string())?;
    let start = p.time("startTime", now)?;
    let end = p.time("endTime", now)?;
    let size = p.size()?;
    let cursor = p
        .take("pageCursor")?
        .filter(|c| !c.is_empty())
        .map(|c| Cursor::decode(&c))
        .transpose()?;
    let order = p.order()?;
    let timeline = p.timeline()?;
    let interval = p.take("rollupInterval")?;
    let method = p.take("rollupMethod")?;
    let tz = p.take("timezone")?;
    p.finish(GET_POINT_PARAMS)?;
    let rollup = if interval.is_some() || method.is_some() {
        Some((
            Interval::parse(interval.as_deref().unwrap_or("hour"))?,
            Method::parse(method.as_deref().unwrap_or("average"))?,
            meterstream_storage::rollup::zone(tz.as_deref().unwrap_or("UTC"))?,
        ))
    } else {
        if tz.is_some() {
            return Err(ApiError::param(
                "timezone",
                "it sets rollup boundaries; give rollupInterval or rollupMethod",
            ));
        }
        None
    };
    let st2 = st.clone();
    let path2 = path.clone();
    let given = cursor.clone();
    type Answer = (Vec<Fields>, Option<Cursor>, Option<Cursor>);
    let (items, next, after_last): Answer = web::block(move || -> Result<_, ApiError> {
        let info = st2.store.stream(&path2)?;
        let ty = info.meta.stream_type;
        match rollup {
            None => {
                let page = st2.store.history(
                    &path2,
                    &HistoryQuery {
                        from: start.unwrap_or(MIN_TIMESTAMP),
                        to: end.unwrap_or(MAX_TIMESTAMP + 1),
                        order,
                        timeline,
                        limit: size,
                        cursor,
                    },
                )?;
                let after_last = page.items.last().map(|p| match timeline {
                    Timeline::Client => Cursor::Client {
                        order,
                        ts: p.timestamp,
                    },
                    Timeline::Server => Cursor::Server {
                        order,
                        server_ts: p.server_timestamp,
                        ts: p.timestamp,
                    },
                });
                let h = stable_hash(&path2);
                Ok((
                    page.items
                        .iter()
                        .map(|p| point_fields(&path2, h, ty, p))
                        .collect(),
                    page.next,
                    after_last,
                ))
            }
            Some((interval, method, tz)) => {
                if !ty.is_numeric() {
                    return Err(ApiError::BadRequest(format!(
                        "the stream {path2:?} holds {ty} values; only numeric streams roll up"
                    )));
                }
                let page = st2.store.rollups(
                    &path2,
                    &RollupQuery {
                        from: start,
                        to: end,
                        interval,
                        method,
                        tz,
                        fill: Fill::None,
                        order,
                        limit: size,
                        cursor,
                    },
                )?;
                let after_last = page.items.last().map(|v| Cursor::Client {
                    order,
                    ts: v.timestamp,
                });
                Ok((
                    page.items
                        .iter()
                        .map(|v| {
                            vec![
                                ("streamId", t(&path2)),
                                ("timestamp", t(v.timestamp.to_string())),
                                ("timestampISO", t(format_iso(v.timestamp))),
                                ("data", t(rollup_text(v.value, ty))),
                                ("description", t("")),
                            ]
                        })
                        .collect(),
                    page.next,
                    after_last,
                ))
            }
        }
    })
    .await??;
    let past_everything = Cursor::Client {
        order,
        ts: match order {
            Order::Asc => MAX_TIMESTAMP,
            Order::Desc => MIN_TIMESTAMP,
        },
    };
    let next = page_cursor(next, after_last, given, past_everything);
    let requested = |v: Option<i64>| v.map_or("-1".to_string(), |v| v.to_string());
    Ok(envelope(
        n,
        StatusCode::OK,
        vec![
            ("resultSize", t(items.len().to_string())),
            ("requestedSize", t(size.to_string())),
            ("pageCursor", t(next)),
            ("requestedStartTime", t(requested(start))),
            ("requestedEndTime", t(requested(end))),
        ],
        "DataPoint",
        &items,
    ))
}

/// `DELETE /ws/DataPoint/{stream}/{point id}` (one point: the last segment is a point id even
/// though stream ids contain `/`) or `DELETE /ws/DataPoint/{stream}?startTime=&endTime=` (the
/// points in the range; all of them without one). 404 for a missing stream or point.
pub async fn delete_points(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    legacy(&req, delete_points_inner(&req, st)).await
}

async fn delete_points_inner(
    req: &HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = answer_notation(req);
    let (who, full) = caller_and_tail(
        req,
        crate::auth::Scope::Write,
        "DELETE /ws/DataPoint/{streamId}[/{pointId}]",
    )?;
    let now = now_ms();
    let mut p = Params::parse(req.query_string())?;
    let start = p.time("startTime", now)?;
    let end = p.time("endTime", now)?;
    p.finish(&["startTime", "endTime"])?;
    let st2 = st.clone();
    let one = split_point_id(&full).map(|(s, ts)| (s.to_string(), ts));
    let (path, from, to, single) = match one {
        Some((stream, ts)) => {
            if start.is_some() || end.is_some() {
                return Err(ApiError::BadRequest(
                    "a point id names one point; startTime and endTime are for ranges".into(),
                ));
            }
            (stream, ts, ts + 1, true)
        }
        None => (
            full.clone(),
            start.unwrap_or(MIN_TIMESTAMP),
            end.unwrap_or(MAX_TIMESTAMP + 1),
            false,
        ),
    };
    validate_path(&path)?;
    who.require_path(&path)?;
    let path2 = path.clone();
    let deleted = web::block(move || -> Result<u64, ApiError> {
        st2.store.stream(&path2)?;
        Ok(st2.store.delete_history(&path2, from, to)?)
    })
    .await??;
    if single && deleted == 0 {
        return Err(ApiError::NotFound(format!(
            "DELETE DataPoint error: the stream {path:?} has no point {}",
            point_id(&path, from)
        )));
    }
    Ok(plain(
        n,
        StatusCode::OK,
        vec![("deleted", deleted.to_string())],
    ))
}

/// `GET /ws/DeviceCore`: the devices in Digi's legacy fields and offset paging (`start`,
/// `size`; `remainingSize` tells a client whether to ask again). Digi's Python client calls
/// it to check credentials (`has_valid_credentials`) and to list devices. Digi's `condition`
/// query language is not supported and is refused by name.
pub async fn device_core(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    legacy(&req, device_core_inner(&req, st)).await
}

/// A device with its connection, as one node knows it (a cluster node sends these to the node
/// gathering Digi's device listing).
#[derive(serde::Serialize, serde::Deserialize)]
struct DeviceRow {
    device: meterstream_storage::registry::Device,
    connected: bool,
    address: Option<String>,
}

async fn device_core_inner(
    req: &HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = answer_notation(req);
    let who = crate::auth::principal(req)?;
    who.require(crate::auth::Scope::Read)?;
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let start = match p.take("start")? {
        None => 0,
        Some(s) => s
            .trim()
            .parse::<usize>()
            .map_err(|_| ApiError::param("start", format!("{s:?} is not a whole number")))?,
    };
    // Digi's `embed=true` inlines related records; these records have none.
    let _ = p.take("embed")?;
    if p.take("condition")?.is_some() {
        return Err(ApiError::param(
            "condition",
            "Digi's condition language is not supported here; /ws/v1/devices/inventory takes query=",
        ));
    }
    p.finish(&["start", "size", "embed"])?;
    // Every device the caller may see, with its connection (on a cluster node: those whose
    // partition it holds, whose connection it knows).
    let st2 = st.clone();
    let who2 = who.clone();
    let mut devices = web::block(move || -> Result<Vec<DeviceRow>, ApiError> {
        let dv = &st2.devices;
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = dv.registry.devices(after.as_deref(), 500)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for d in page {
                if !who2.covers_device(&d.id)
                    || st2.cluster.as_ref().is_some_and(|c| !c.holds_device(&d.id))
                {
                    continue;
                }
                let (connected, address) = dv.connection(&d);
                out.push(DeviceRow {
                    device: d,
                    connected,
                    address,
                });
            }
        }
        Ok(out)
    })
    .await??;
    if let Some(c) = &st.cluster {
        if req.headers().contains_key(crate::cluster::HOP_HEADER) {
            // Another node gathers the listing: this node's devices.
            return Ok(HttpResponse::Ok().json(serde_json::json!({ "devices": devices })));
        }
        for part in c.ask_others(req.path(), req.headers()).await? {
            let rows: Vec<DeviceRow> = serde_json::from_value(part["devices"].clone())
                .map_err(|e| ApiError::Internal(format!("a node's devices were malformed: {e}")))?;
            devices.extend(rows);
        }
        devices.sort_by(|a, b| a.device.id.cmp(&b.device.id));
    }
    let total = devices.len();
    let items: Vec<Fields> = devices
        .iter()
        .skip(start)
        .take(size)
        .map(|r| {
            let d = &r.device;
            let time = |t: Option<i64>| t.map(format_iso).unwrap_or_default();
            let mut f: Fields = vec![
                ("id", Out::Object(vec![("devId", t(&d.id))])),
                ("devConnectwareId", t(&d.id)),
                ("dpConnectionStatus", t(if r.connected { "1" } else { "0" })),
                ("dpLastConnectTime", t(time(d.last_connect))),
                ("dpLastDisconnectTime", t(time(d.last_disconnect))),
                ("dpLastKnownIp", t(r.address.clone().unwrap_or_default())),
                ("dpDeviceType", t(d.model.clone().unwrap_or_default())),
                (
                    "dpFirmwareLevelDesc",
                    t(d.agent_version.clone().unwrap_or_default()),
                ),
                ("devRecordStartDate", t(format_iso(d.registered))),
                ("grpPath", t(d.group.clone().unwrap_or_default())),
                ("dpTags", t(d.tags.join(","))),
            ];
            if let Some((lat, lon)) = d.location {
                f.push(("dpMapLat", t(lat.to_string())));
                f.push(("dpMapLong", t(lon.to_string())));
            }
            f
        })
        .collect();
    let remaining = total.saturating_sub(start + items.len());
    Ok(envelope(
        n,
        StatusCode::OK,
        vec![
            ("resultTotalRows", t(total.to_string())),
            ("requestedStartRow", t(start.to_string())),
            ("resultSize", t(items.len().to_string())),
            ("requestedSize", t(size.to_string())),
            ("remainingSize", t(remaining.to_string())),
        ],
        "DeviceCore",
        &items,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leading_field_name_of_a_parse_message_is_renamed() {
        assert_eq!(legacy_names("stream_id is missing"), "streamId is missing");
        assert_eq!(legacy_names("value is missing"), "data is missing");
        assert_eq!(
            legacy_names("unknown stream_type \"stream_type\"; expected one of DOUBLE"),
            "unknown streamType \"stream_type\"; expected one of DOUBLE"
        );
        // A message about the client's own data keeps it as written.
        let m = "invalid stream path \"gw/stream_id/x\": value is missing";
        assert_eq!(legacy_names(m), m);
    }
}
