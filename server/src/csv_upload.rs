//! Device CSV uploads in Digi's column order (issue 9): `POST /ws/v1/streams/csv[/{stream}]`
//! with a `text/csv` body of lines
//! `DATA,TIMESTAMP,QUALITY,DESCRIPTION,LOCATION,DATATYPE,UNITS,FORWARDTO[,STREAMID]`.
//!
//! - `STREAMID` names the stream; without it, the stream in the URL does.
//! - `TIMESTAMP` is epoch ms or ISO 8601; empty means now.
//! - `DATATYPE` (INTEGER, LONG, FLOAT, DOUBLE, STRING, JSON, GEOJSON) types a new stream; empty:
//!   a number is DOUBLE, anything else STRING.
//! - `FORWARDTO` lists streams (separated by `,` inside the quoted field) that get a copy of the
//!   point, as Digi forwards.
//! - A first line starting with `DATA,` is a header and is skipped; empty lines are skipped.
//!
//! Good lines are stored even when others are bad. The answer is 201 when every line was
//! stored, else 207 with each bad line named by its number (from 1):
//! `{"stored": n, "errors": [{"line": 3, "status": 400, "message": "..."}]}`.

use crate::error::ApiError;
use crate::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use meterstream_storage::{Extras, GroupIn, InValue, PointIn, StreamType};
use serde_json::json;
use std::collections::BTreeMap;

/// One bad line.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    /// Line number, from 1.
    pub line: usize,
    /// HTTP status for it.
    pub status: u16,
    /// What is wrong.
    pub message: String,
}

/// The parsed body: groups by stream (item indexes count group by group), the line of each
/// item, and the bad lines.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Groups.
    pub groups: Vec<GroupIn>,
    /// Line of each item index.
    pub lines: Vec<usize>,
    /// Bad lines.
    pub errors: Vec<LineError>,
}

/// Parses a body; `default_stream` is the URL's stream, if any.
pub fn parse(text: &str, default_stream: Option<&str>, now: i64) -> Parsed {
    let mut out = Parsed::default();
    let mut by_stream: BTreeMap<String, usize> = BTreeMap::new();
    let mut group_lines: Vec<Vec<usize>> = Vec::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    for rec in reader.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                out.errors.push(LineError {
                    line,
                    status: 400,
                    message: format!("not CSV: {e}"),
                });
                continue;
            }
        };
        let line = rec.position().map_or(0, |p| p.line() as usize);
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if line == 1
            && rec
                .get(0)
                .is_some_and(|f| f.trim().eq_ignore_ascii_case("DATA"))
        {
            continue;
        }
        let mut fail = |message: String| {
            out.errors.push(LineError {
                line,
                status: 400,
                message,
            })
        };
        if rec.len() < 8 || rec.len() > 9 {
            fail(format!(
                "{} columns; Digi's order has 8 or 9: DATA,TIMESTAMP,QUALITY,DESCRIPTION,LOCATION,DATATYPE,UNITS,FORWARDTO[,STREAMID]",
                rec.len()
            ));
            continue;
        }
        let f = |i: usize| rec.get(i).unwrap_or("").trim();
        let stream = match (f(8), default_stream) {
            ("", Some(d)) => d.to_string(),
            ("", None) => {
                fail("no STREAMID column and no stream in the URL".into());
                continue;
            }
            (s, _) => s.to_string(),
        };
        if let Err(e) = meterstream_storage::path::validate_path(&stream) {
            fail(format!("STREAMID: {e}"));
            continue;
        }
        let ts = if f(1).is_empty() {
            now
        } else {
            match meterstream_storage::time::parse_absolute(f(1)) {
                Ok(t) => t,
                Err(e) => {
                    fail(format!("TIMESTAMP: {e}"));
                    continue;
                }
            }
        };
        let quality = if f(2).is_empty() {
            None
        } else {
            match f(2).parse::<i32>() {
                Ok(q) => Some(q),
                Err(_) => {
                    fail(format!("QUALITY: {:?} is not a whole number", f(2)));
                    continue;
                }
            }
        };
        let ty = if f(5).is_empty() {
            None
        } else {
            match StreamType::parse(f(5)) {
                Some(t) => Some(t),
                None => {
                    fail(format!("DATATYPE: {:?} is not a Digi data type", f(5)));
                    continue;
                }
            }
        };
        let data = rec.get(0).unwrap_or("");
        let value = match ty {
            Some(_) => InValue::Str(data.to_string()),
            None => match data.trim().parse::<f64>() {
                Ok(v) if v.is_finite() => InValue::Float(v),
                _ => InValue::Str(data.to_string()),
            },
        };
        let ty = ty.or(match value {
            InValue::Float(_) => Some(StreamType::Double),
            _ => Some(StreamType::String),
        });
        let extras = Extras {
            quality,
            location: Some(f(4).to_string()).filter(|s| !s.is_empty()),
            description: Some(f(3).to_string()).filter(|s| !s.is_empty()),
        };
        let units = Some(f(6).to_string()).filter(|s| !s.is_empty());
        let mut targets = vec![stream];
        for t in f(7).split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Err(e) = meterstream_storage::path::validate_path(t) {
                fail(format!("FORWARDTO: {e}"));
                targets.clear();
                break;
            }
            targets.push(t.to_string());
        }
        for target in targets {
            let g = *by_stream.entry(target.clone()).or_insert_with(|| {
                out.groups.push(GroupIn {
                    stream: target.clone(),
                    stream_type: ty,
                    stream_units: units.clone(),
                    points: Vec::new(),
                    first_index: 0,
                });
                group_lines.push(Vec::new());
                out.groups.len() - 1
            });
            out.groups[g].points.push(PointIn {
                timestamp: Some(ts),
                value: value.clone(),
                extras: (!extras.is_empty()).then(|| Box::new(extras.clone())),
            });
            group_lines[g].push(line);
        }
    }
    for (g, l) in out.groups.iter_mut().zip(group_lines) {
        g.first_index = out.lines.len();
        out.lines.extend(l);
    }
    out
}

/// `POST /ws/v1/streams/csv[/{stream}]`.
pub async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    if !who.has(crate::auth::Scope::Device) {
        who.require(crate::auth::Scope::Write)?;
    }
    crate::params::Params::parse(req.query_string())?.finish(&[])?;
    let stream = match req.match_info().get("stream_id") {
        Some(_) => Some(crate::stream_id(&req)?),
        None => None,
    };
    let key = crate::ingest::idempotency_key(&req, &who)?;
    let body = crate::read_body(&req, payload, st.body_limit).await?;
    let st2 = st.clone();
    let address = req.peer_addr().map(|a| a.ip().to_string());
    let (stored, mut errors) = web::block(move || -> Result<_, ApiError> {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::BadRequest("the body is not UTF-8 text".into()))?;
        let now = meterstream_storage::time::now_ms();
        let mut p = parse(text, stream.as_deref(), now);
        let out = crate::ingest::store_for(
            &st2,
            &who,
            p.groups,
            address.as_deref(),
            now,
            key.as_deref(),
        )?;
        st2.metrics.points_rejected.inc_by(p.errors.len() as u64);
        for f in out.faults {
            p.errors.push(LineError {
                line: p.lines.get(f.index).copied().unwrap_or(0),
                status: f.status,
                message: f.message,
            });
        }
        Ok((out.stored, p.errors))
    })
    .await??;
    errors.sort_by_key(|e| e.line);
    errors.dedup();
    let list: Vec<_> = errors
        .iter()
        .map(|e| json!({"line": e.line, "status": e.status, "message": e.message}))
        .collect();
    let body = json!({"stored": stored, "errors": list});
    Ok(if errors.is_empty() {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::MultiStatus().json(body)
    })
}
