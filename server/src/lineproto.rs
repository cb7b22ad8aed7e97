//! InfluxDB line protocol (issue 9): `POST /write` (1.x) and `POST /api/v2/write`, so that
//! Telegraf, Node-RED and the Influx client libraries can write by changing an address.
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, one point a line; `#`
//! starts a comment. Escapes as InfluxDB has them: in measurements `\,` and `\ `; in tag keys,
//! tag values and field keys also `\=`; string fields in double quotes with `\"` and `\\`.
//! Fields: floats (`1.5`, `1e3`), integers (`5i`), unsigned (`5u`), strings (`"on"`), booleans
//! (`t`, `true`, `F`, ...; stored as INTEGER 1 or 0, so they can be charted). A new stream takes
//! its type from its field: DOUBLE, LONG, STRING, INTEGER. `precision` is
//! `ns` (the default), `us`, `ms` or `s`; a line without a timestamp takes the server's time.
//!
//! Each field becomes a stream. Its path comes from the template (`line_protocol_template`):
//! by default the tag values in the order the line writes them, then the measurement, then the
//! field (`meter,gw=G,dev=D voltage_l1=230.1` lands in `G/D/meter/voltage_l1`); a template
//! such as `{gw}/{dev}/{field}` names tags (`{measurement}` and `{field}` are the others).
//! Whitespace and `/` inside a name become `_`, as a path segment cannot hold them.
//!
//! Errors answer as InfluxDB answers them: 400 with `{"error": "..."}` naming the line, 413 for a
//! body over the limit, 204 when everything was written.

use crate::error::ApiError;
use meterstream_storage::{GroupIn, InValue, PointIn, StreamType};
use std::collections::HashMap;

/// The default path template.
pub const DEFAULT_TEMPLATE: &str = "{tags}/{measurement}/{field}";

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Measurement.
    pub measurement: String,
    /// Tags, in the order written.
    pub tags: Vec<(String, String)>,
    /// Fields, in the order written.
    pub fields: Vec<(String, InValue)>,
    /// Timestamp in the request's precision, if given.
    pub timestamp: Option<i64>,
}

/// Splits at the first unescaped byte of `stops` outside double quotes (when `quotes`); returns
/// (head, the stop byte, rest).
fn split_unescaped<'a>(s: &'a str, stops: &[u8], quotes: bool) -> (&'a str, Option<u8>, &'a str) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_quotes = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && i + 1 < b.len() {
            i += 2;
            continue;
        }
        if quotes && c == b'"' {
            in_quotes = !in_quotes;
        } else if !in_quotes && stops.contains(&c) {
            return (&s[..i], Some(c), &s[i + 1..]);
        }
        i += 1;
    }
    (s, None, "")
}

fn unescape(s: &str, escapable: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(&n) = it.peek() {
                if escapable.contains(&n) {
                    out.push(n);
                    it.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

fn field_value(v: &str) -> Result<InValue, String> {
    if let Some(q) = v.strip_prefix('"') {
        let inner = q
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated string field {v:?}"))?;
        return Ok(InValue::Str(unescape(inner, &['"', '\\'])));
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(InValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(InValue::Bool(false)),
        _ => {}
    }
    if let Some(i) = v.strip_suffix('i') {
        return i
            .parse::<i64>()
            .map(InValue::Int)
            .map_err(|_| format!("invalid integer {v:?}"));
    }
    if let Some(u) = v.strip_suffix('u') {
        return u
            .parse::<u64>()
            .map(|u| match i64::try_from(u) {
                Ok(i) => InValue::Int(i),
                Err(_) => InValue::UInt(u),
            })
            .map_err(|_| format!("invalid unsigned integer {v:?}"));
    }
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(InValue::Float(f)),
        _ => Err(format!("invalid field value {v:?}")),
    }
}

/// The measurement and tags of a line's series key (the text before its first unescaped space).
fn parse_series(key: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut parts = Vec::new();
    let mut k = key;
    loop {
        let (head, stop, tail) = split_unescaped(k, b",", false);
        parts.push(head);
        if stop.is_none() {
            break;
        }
        k = tail;
    }
    let measurement = unescape(parts[0], &[',', ' ', '\\']);
    if measurement.is_empty() {
        return Err("missing measurement".into());
    }
    let mut tags = Vec::new();
    for t in &parts[1..] {
        let (tk, eq, tv) = split_unescaped(t, b"=", false);
        if eq.is_none() || tk.is_empty() || tv.is_empty() {
            return Err(format!("invalid tag {t:?}"));
        }
        tags.push((
            unescape(tk, &[',', ' ', '=', '\\']),
            unescape(tv, &[',', ' ', '=', '\\']),
        ));
    }
    Ok((measurement, tags))
}

/// The timestamp after a line's fields, and each field as (its key as written, its value), in
/// order; `rest` is the text after the series key.
fn parse_fields<'a>(
    rest: &'a str,
    mut each: impl FnMut(&'a str, InValue) -> Result<(), String>,
) -> Result<Option<i64>, String> {
    let rest = rest.trim_start_matches(' ');
    let (fields_text, _, ts_text) = split_unescaped(rest, b" ", true);
    let ts_text = ts_text.trim();
    let timestamp = if ts_text.is_empty() {
        None
    } else {
        Some(
            ts_text
                .parse::<i64>()
                .map_err(|_| format!("invalid timestamp {ts_text:?}"))?,
        )
    };
    let mut f = fields_text;
    loop {
        let (head, stop, tail) = split_unescaped(f, b",", true);
        let (fk, eq, fv) = split_unescaped(head, b"=", false);
        if eq.is_none() || fk.is_empty() || fv.is_empty() {
            return Err(format!("invalid field {head:?}"));
        }
        each(fk, field_value(fv)?)?;
        if stop.is_none() {
            break;
        }
        f = tail;
    }
    Ok(timestamp)
}

fn field_key(raw: &str) -> String {
    unescape(raw, &[',', ' ', '=', '\\'])
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Line, String> {
    let (key, stop, rest) = split_unescaped(line, b" ", false);
    if stop.is_none() {
        return Err("missing fields".into());
    }
    let (measurement, tags) = parse_series(key)?;
    let mut fields = Vec::new();
    let timestamp = parse_fields(rest, |k, v| {
        fields.push((field_key(k), v));
        Ok(())
    })?;
    Ok(Line {
        measurement,
        tags,
        fields,
        timestamp,
    })
}

/// Divisor from the request's precision to milliseconds (negative: a multiplier).
pub fn precision_to_ms(p: Option<&str>) -> Result<i64, ApiError> {
    match p.unwrap_or("ns") {
        "ns" | "n" => Ok(1_000_000),
        "us" | "u" => Ok(1_000),
        "ms" => Ok(1),
        "s" => Ok(-1000),
        other => Err(ApiError::param(
            "precision",
            format!("{other:?} is not one of ns, us, ms, s"),
        )),
    }
}

/// A name as one path segment: whitespace and `/`, which a stream path cannot hold inside a
/// segment, become `_` (`my\ meter` lands in `my_meter`).
fn segment(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_whitespace() || c == '/' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The stream path of a field of `line` under `template`.
pub fn path_of(template: &str, line: &Line, field: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| "the template has an unclosed '{'".to_string())?
            + open;
        let name = &rest[open + 1..close];
        match name {
            "measurement" => out.push_str(&segment(&line.measurement)),
            "field" => out.push_str(&segment(field)),
            "tags" => {
                let vals: Vec<String> = line.tags.iter().map(|(_, v)| segment(v)).collect();
                out.push_str(&vals.join("/"));
            }
            tag => match line.tags.iter().find(|(k, _)| k == tag) {
                Some((_, v)) => out.push_str(&segment(v)),
                None => {
                    return Err(format!(
                        "the line has no tag {tag:?} the path template needs"
                    ))
                }
            },
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    // No tags: `{tags}/` leaves an empty first segment.
    let path = out.trim_start_matches('/').to_string();
    meterstream_storage::path::validate_path(&path).map_err(|e| format!("stream {path:?}: {e}"))?;
    Ok(path)
}

/// A parsed body: groups, one per stream in the order first written, and the line (from 1) of
/// each point, by the item index the store reports errors with.
#[derive(Debug)]
pub struct Parsed {
    /// The groups.
    pub groups: Vec<GroupIn>,
    /// Line of each item index.
    pub lines: Vec<usize>,
}

/// Parses a whole body. Errors name the line (from 1).
///
/// A series key (measurement and tags) repeats on many lines of a batch, one line per time: its
/// tags are parsed, and each of its fields' stream path made and checked, once per body (the
/// profile of the peer benchmark's line-protocol run showed the per-line paths and their
/// allocations as the largest cost).
pub fn parse_body(text: &str, template: &str, precision: i64, now: i64) -> Result<Parsed, String> {
    let mut groups: Vec<GroupIn> = Vec::new();
    let mut group_lines: Vec<Vec<usize>> = Vec::new();
    // Group of each stream path (two series keys may map to one path).
    let mut index: HashMap<String, usize> = HashMap::new();
    // Per series key as written: its parsed head, and the group of each field key as written.
    type Series<'a> = (Line, Vec<(&'a str, usize)>);
    let mut series: HashMap<&str, Series> = HashMap::new();
    // One line's (group, value) pairs, kept until its timestamp is known; reused line to line.
    let mut points: Vec<(usize, InValue)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |e: String| format!("unable to parse line {}: {e}: {raw:?}", i + 1);
        let (key, stop, rest) = split_unescaped(line, b" ", false);
        if stop.is_none() {
            return Err(fail("missing fields".into()));
        }
        let entry = match series.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let (measurement, tags) = parse_series(key).map_err(fail)?;
                e.insert((
                    Line {
                        measurement,
                        tags,
                        fields: Vec::new(),
                        timestamp: None,
                    },
                    Vec::new(),
                ))
            }
        };
        let ts = parse_fields(rest, |fk, value| {
            let g = match entry.1.iter().find(|(k, _)| *k == fk) {
                Some(&(_, g)) => g,
                None => {
                    let path = path_of(template, &entry.0, &field_key(fk))?;
                    let g = match index.get(&path) {
                        Some(&g) => g,
                        None => {
                            // The first value's type gives a new stream its type.
                            let ty = match value {
                                InValue::Bool(_) => StreamType::Integer,
                                InValue::Int(_) | InValue::UInt(_) => StreamType::Long,
                                InValue::Str(_) => StreamType::String,
                                _ => StreamType::Double,
                            };
                            index.insert(path.clone(), groups.len());
                            groups.push(GroupIn {
                                stream: path,
                                stream_type: Some(ty),
                                stream_units: None,
                                points: Vec::new(),
                                first_index: 0,
                            });
                            group_lines.push(Vec::new());
                            groups.len() - 1
                        }
                    };
                    entry.1.push((fk, g));
                    g
                }
            };
            let value = match value {
                InValue::Bool(b) => InValue::Int(i64::from(b)),
                v => v,
            };
            points.push((g, value));
            Ok(())
        })
        .map_err(fail)?;
        let ts = match ts {
            None => now,
            Some(t) if precision > 0 => t.div_euclid(precision),
            Some(t) => t
                .checked_mul(-precision)
                .ok_or_else(|| fail("timestamp out of range".into()))?,
        };
        for (g, value) in points.drain(..) {
            groups[g].points.push(PointIn {
                timestamp: Some(ts),
                value,
                extras: None,
            });
            group_lines[g].push(i + 1);
        }
    }
    // Item indexes count group by group, so that an error's index finds its line.
    let mut lines = Vec::new();
    for (g, l) in groups.iter_mut().zip(group_lines) {
        g.first_index = lines.len();
        lines.extend(l);
    }
    Ok(Parsed { groups, lines })
}

/// An answer in InfluxDB's shape: `{"error": "..."}`.
fn influx_error(status: u16, message: String) -> actix_web::HttpResponse {
    actix_web::HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
    )
    .json(serde_json::json!({"error": message}))
}

/// `POST /write` and `POST /api/v2/write`.
pub async fn write(
    req: actix_web::HttpRequest,
    payload: actix_web::web::Payload,
    st: actix_web::web::Data<crate::AppState>,
) -> Result<actix_web::HttpResponse, ApiError> {
    use actix_web::web;
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Write)?;
    let mut p = crate::params::Params::parse(req.query_string())?;
    let precision = precision_to_ms(p.take("precision")?.as_deref())?;
    // Accepted and not needed: one store holds everything.
    for name in [
        "db",
        "rp",
        "bucket",
        "org",
        "orgID",
        "consistency",
        "u",
        "p",
    ] {
        let _ = p.take(name)?;
    }
    p.finish(&[])?;
    let limit = st.body_limit;
    let body = match crate::read_body(&req, payload, limit).await {
        Ok(b) => b,
        Err(ApiError::TooLarge { limit }) => {
            return Ok(influx_error(
                413,
                format!("request body over {limit} bytes"),
            ))
        }
        Err(e) => return Err(e),
    };
    let gzip = req
        .headers()
        .get(actix_web::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let template = st.line_protocol_template.clone();
    let key = crate::ingest::idempotency_key(&req, &who)?;
    let st2 = st.clone();
    let out = web::block(move || -> Result<Result<usize, (u16, String)>, ApiError> {
        // An uncompressed body is parsed where it lies (it may be megabytes).
        let bytes: std::borrow::Cow<[u8]> = if gzip {
            use std::io::Read;
            let mut out = Vec::new();
            let mut d = flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1);
            if let Err(e) = d.read_to_end(&mut out) {
                return Ok(Err((400, format!("the gzip body cannot be read: {e}"))));
            }
            if out.len() > limit {
                return Ok(Err((
                    413,
                    format!("request body over {limit} bytes once unzipped"),
                )));
            }
            out.into()
        } else {
            body[..].into()
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Ok(Err((400, "the body is not UTF-8".into())));
        };
        let now = meterstream_storage::time::now_ms();
        let parsed = match parse_body(text, &template, precision, now) {
            Ok(p) => p,
            Err(e) => return Ok(Err((400, e))),
        };
        for g in &parsed.groups {
            if !who.covers_path(&g.stream) {
                let line = parsed.lines.get(g.first_index).copied().unwrap_or(0);
                return Ok(Err((
                    403,
                    format!(
                        "line {line}: stream {:?} is outside this credential's scope",
                        g.stream
                    ),
                )));
            }
        }
        let lines = parsed.lines;
        let outcome = crate::ingest::write_groups(&st2, parsed.groups, now, None, key.as_deref())?;
        st2.metrics.points_ingested.inc_by(outcome.stored as u64);
        if let Some(e) = outcome.errors.first() {
            st2.metrics
                .points_rejected
                .inc_by(outcome.errors.len() as u64);
            let line = lines.get(e.index).copied().unwrap_or(0);
            return Ok(Err((
                400,
                format!(
                    "partial write: line {line}: {} ({} points not written)",
                    e.error,
                    outcome.errors.len()
                ),
            )));
        }
        Ok(Ok(outcome.stored))
    })
    .await??;
    match out {
        Ok(_) => Ok(actix_web::HttpResponse::NoContent().finish()),
        Err((status, message)) => Ok(influx_error(status, message)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn escapes_types_and_timestamps() {
        let l = parse_line(r#"my\ meter,gw=G\,1,dev=D\=2 volt\ l1=230.1,count=5i,big=18446744073709551615u,on=t,note="say \"hi\", ok" 1795000000000000000"#).unwrap();
        assert_eq!(l.measurement, "my meter");
        assert_eq!(
            l.tags,
            vec![("gw".into(), "G,1".into()), ("dev".into(), "D=2".into())]
        );
        assert_eq!(l.fields[0], ("volt l1".into(), InValue::Float(230.1)));
        assert_eq!(l.fields[1], ("count".into(), InValue::Int(5)));
        assert_eq!(l.fields[2], ("big".into(), InValue::UInt(u64::MAX)));
        assert_eq!(l.fields[3], ("on".into(), InValue::Bool(true)));
        assert_eq!(
            l.fields[4],
            ("note".into(), InValue::Str("say \"hi\", ok".into()))
        );
        assert_eq!(l.timestamp, Some(1_795_000_000_000_000_000));
        for bad in [
            "meter",
            "meter,gw v=1",
            "meter v=",
            "meter v=abc",
            "meter v=\"open",
            "meter v=1 12x",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_from_the_template_and_precisions() {
        let l = parse_line("meter,gw=G,dev=D voltage_l1=230.1").unwrap();
        assert_eq!(
            path_of(DEFAULT_TEMPLATE, &l, "voltage_l1").unwrap(),
            "G/D/meter/voltage_l1"
        );
        assert_eq!(path_of("{dev}/{gw}/{field}", &l, "x").unwrap(), "D/G/x");
        assert!(path_of("{site}/{field}", &l, "x")
            .unwrap_err()
            .contains("site"));
        let bare = parse_line("meter v=1").unwrap();
        assert_eq!(path_of(DEFAULT_TEMPLATE, &bare, "v").unwrap(), "meter/v");
        let body = "m,g=a v=1 1795000000\n\n# note\nm,g=a v=2,w=3 1795000001\n";
        let p = parse_body(
            body,
            DEFAULT_TEMPLATE,
            precision_to_ms(Some("s")).unwrap(),
            0,
        )
        .unwrap();
        let g = &p.groups;
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].stream, "a/m/v");
        assert_eq!(g[0].points.len(), 2);
        assert_eq!(g[0].points[1].timestamp, Some(1_795_000_001_000));
        assert_eq!(g[1].first_index, 2);
        assert_eq!(p.lines, vec![1, 4, 4]);
        let err = parse_body("m v=1\nm v=x\n", DEFAULT_TEMPLATE, 1, 0).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let ns = parse_body(
            "m v=1 1795000000123456789",
            DEFAULT_TEMPLATE,
            precision_to_ms(None).unwrap(),
            0,
        )
        .unwrap();
        assert_eq!(ns.groups[0].points[0].timestamp, Some(1_795_000_000_123));
    }
}
