//! `GET /ws/v1/streams/rollups/{stream or pattern}`: rolled-up values of numeric streams.
//!
//! Parameters: `interval` (`1m 5m 15m half|30m hour day week month`, default `hour`), `method`
//! (`sum average min max count standarddev first last increase`, default `average`),
//! `start_time`/`end_time` (the points rolled up; default: all of them), `timezone` (IANA name,
//! default `UTC`), `fill` (`none null previous zero`, default `none`), `order`, `size`, `cursor`,
//! and for patterns `aggregate` (`sum average min max`).
//!
//! The path is a stream id, or a pattern whose segments may be `*` (one segment each, e.g.
//! `*/*/active_power`). A pattern answers one series per matching numeric stream, ordered by
//! stream and then time; with `aggregate` the streams are combined into one series, interval by
//! interval, leaving out the streams with no point in that interval (`stream_id` is then the
//! pattern). Answers Digi's shape: `{"count", "size", "cursor", "list": [{"stream_id",
//! "timestamp", "value"}]}`, each `timestamp` the start of its interval; `value` is null for a
//! `fill=null` interval (and for `fill=previous` before the first non-empty one).

use crate::error::ApiError;
use crate::params::Params;
use crate::{path_tail, wire, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use meterstream_storage::path::{validate_path, validate_pattern};
use meterstream_storage::rollup::{fill_intervals, zone, MAX_INTERVALS};
use meterstream_storage::time::{format_iso, now_ms, IsoFormatter};
use meterstream_storage::{
    Cursor, Fill, Interval, Method, Order, RollupQuery, RollupValue, StorageError, Store,
};
use std::collections::BTreeMap;
use std::sync::Arc;

const PARAMS: &[&str] = &[
    "interval",
    "method",
    "start_time",
    "end_time",
    "timezone",
    "fill",
    "order",
    "size",
    "cursor",
    "aggregate",
    "format",
    "layout",
];

/// Intervals per page while streaming CSV.
const CSV_PAGE: usize = 10_000;

/// How a pattern's streams are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    fn parse(s: &str) -> Result<Aggregate, ApiError> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "sum" => Aggregate::Sum,
            "average" | "avg" => Aggregate::Average,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            _ => {
                return Err(ApiError::param(
                    "aggregate",
                    format!("{s:?} is not one of sum, average, min, max"),
                ))
            }
        })
    }
}

/// A page of rollup values in Digi's list envelope, `{"count", "size", "cursor", "list":
/// [{"stream_id", "timestamp", "value"}]}`, written straight into bytes (the same JSON as
/// serializing each row with serde, without a String per timestamp).
fn rows_json(rows: &[(String, RollupValue)], size: usize, next: Option<Cursor>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + rows.len() * 96);
    wire::envelope_start(&mut out, rows.len(), size, next);
    out.extend_from_slice(b",\"list\":[");
    let mut iso = IsoFormatter::default();
    let mut last_stream: Option<(&str, String)> = None;
    for (i, (s, v)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Rows come stream by stream: each stream's path is escaped once.
        if last_stream.as_ref().is_none_or(|(p, _)| *p != s.as_str()) {
            last_stream = Some((s.as_str(), serde_json::to_string(s).unwrap_or_default()));
        }
        out.extend_from_slice(b"{\"stream_id\":");
        if let Some((_, json)) = &last_stream {
            out.extend_from_slice(json.as_bytes());
        }
        out.extend_from_slice(b",\"timestamp\":");
        wire::write_time(&mut out, &mut iso, v.timestamp);
        out.extend_from_slice(b",\"value\":");
        wire::write_json(&mut out, &v.value);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A page of rollup values as one object per stream with its values as columns: `{"count",
/// "size", "cursor", "series": [{"stream_id", "timestamp": [ms, ...], "value": [...]}]}`
/// (`layout=columns`). `count` counts values, as with rows; a stream's values may continue on
/// the next page.
fn series_json(rows: &[(String, RollupValue)], size: usize, next: Option<Cursor>) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(64 + rows.len() * 24);
    wire::envelope_start(&mut out, rows.len(), size, next);
    out.extend_from_slice(b",\"series\":[");
    let mut start = 0;
    while start < rows.len() {
        let stream = &rows[start].0;
        let end = start
            + rows[start..]
                .iter()
                .take_while(|(s, _)| s == stream)
                .count();
        if start > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"stream_id\":");
        wire::write_json(&mut out, stream);
        out.extend_from_slice(b",\"timestamp\":[");
        for (i, (_, v)) in rows[start..end].iter().enumerate() {
            let _ = write!(out, "{}{}", if i > 0 { "," } else { "" }, v.timestamp);
        }
        out.extend_from_slice(b"],\"value\":[");
        for (i, (_, v)) in rows[start..end].iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            wire::write_json(&mut out, &v.value);
        }
        out.extend_from_slice(b"]}");
        start = end;
    }
    out.extend_from_slice(b"]}");
    out
}

/// A parsed rollup request.
#[derive(Clone)]
struct Request {
    target: String,
    pattern: bool,
    query: RollupQuery,
    aggregate: Option<Aggregate>,
    csv: bool,
    layout: wire::Layout,
}

fn parse(req: &HttpRequest) -> Result<Request, ApiError> {
    let target = path_tail(req)?;
    let pattern = target.contains('*');
    if pattern {
        validate_pattern(&target)?;
    } else {
        validate_path(&target)?;
    }
    let now = now_ms();
    let mut p = Params::parse(req.query_string())?;
    let interval = Interval::parse(p.take("interval")?.as_deref().unwrap_or("hour"))?;
    let method = Method::parse(p.take("method")?.as_deref().unwrap_or("average"))?;
    let from = p.time("start_time", now)?;
    let to = p.time("end_time", now)?;
    let tz = zone(p.take("timezone")?.as_deref().unwrap_or("UTC"))?;
    let fill = Fill::parse(p.take("fill")?.as_deref().unwrap_or("none"))?;
    let order = p.order()?;
    let limit = p.size()?;
    let cursor = p.cursor()?;
    let aggregate = p
        .take("aggregate")?
        .map(|a| Aggregate::parse(&a))
        .transpose()?;
    let csv = crate::csv_export::wanted(req, p.take("format")?.as_deref())?;
    let layout = wire::Layout::parse(p.take("layout")?.as_deref())?;
    p.finish(PARAMS)?;
    if csv && layout == wire::Layout::Columns {
        return Err(ApiError::param(
            "layout",
            "CSV has one layout (a row per value); layout=columns is for JSON",
        ));
    }
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            return Err(ApiError::param("end_time", "it must be after start_time"));
        }
    }
    Ok(Request {
        target,
        pattern,
        query: RollupQuery {
            from,
            to,
            interval,
            method,
            tz,
            fill,
            order,
            limit: if csv { CSV_PAGE } else { limit },
            cursor,
        },
        aggregate,
        csv,
        layout,
    })
}

/// Up to `limit` streams matching a pattern after `after`, in path order, each with whether
/// it is numeric (only those roll up).
fn matching_streams(
    store: &dyn Store,
    pattern: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, bool)>, ApiError> {
    Ok(store
        .matching_streams(pattern, after, limit)?
        .into_iter()
        .map(|(p, ty)| (p, ty.is_numeric()))
        .collect())
}

/// The first `limit` intervals of one stream in `order`, after the interval starting at `after`
/// if given; none for a stream deleted meanwhile.
fn whole_series(
    store: &dyn Store,
    path: &str,
    q: &RollupQuery,
    fill: Fill,
    order: Order,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<RollupValue>, StorageError> {
    let all = RollupQuery {
        fill,
        order,
        limit,
        cursor: after.map(|ts| Cursor::Client { order, ts }),
        ..q.clone()
    };
    match store.rollups(path, &all) {
        Ok(p) => Ok(p.items),
        Err(StorageError::StreamNotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// [`whole_series`] of each stream (from its start), in the order given, computed on up to as
/// many threads as the machine has cores (each stream's rollup is independent).
fn many_series(
    store: &dyn Store,
    streams: &[String],
    q: &RollupQuery,
    fill: Fill,
    order: Order,
    limit: usize,
) -> Result<Vec<Vec<RollupValue>>, StorageError> {
    // Read once: `available_parallelism` reads the cgroup's CPU quota from /sys on every
    // call, which took 12 % of the server's CPU answering one meter's 1-minute averages
    // (perf, standard workload).
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = if streams.len() < 32 {
        1
    } else {
        *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
    .min(4);
    if threads < 2 {
        return streams
            .iter()
            .map(|s| whole_series(store, s, q, fill, order, None, limit))
            .collect();
    }
    let per = streams.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = streams
            .chunks(per)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|s| whole_series(store, s, q, fill, order, None, limit))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(streams.len());
        for p in parts {
            let part = p
                .join()
                .map_err(|_| StorageError::corrupt("rollups", "a worker thread panicked"))??;
            out.extend(part);
        }
        Ok(out)
    })
}

/// (stream, value) rows of one page, and the cursor of the next.
type Rows = (Vec<(String, RollupValue)>, Option<Cursor>);

/// Where the previous page of a multi-stream listing ended: (stream, interval start).
fn rows_cursor(c: Option<&Cursor>) -> Result<Option<(String, i64)>, ApiError> {
    let Some(c) = c else {
        return Ok(None);
    };
    let Cursor::Key { key, .. } = c else {
        return Err(
            StorageError::invalid("cursor", "it belongs to another kind of listing").into(),
        );
    };
    // The cursor is "stream\u{1}timestamp" (control characters cannot occur in paths).
    let (s, t) = key
        .split_once('\u{1}')
        .and_then(|(s, t)| t.parse::<i64>().ok().map(|t| (s.to_string(), t)))
        .ok_or_else(|| StorageError::invalid("cursor", "it is not a rollup cursor"))?;
    Ok(Some((s, t)))
}

fn page_of(store: &dyn Store, r: &Request) -> Result<Rows, ApiError> {
    page_held(store, r, &|_| true)
}

/// Which streams a node answers for: on a cluster node, those of the partitions it holds (its
/// store may keep partitions it held before).
type Held<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// Per interval, over the streams of an aggregate that have a value there: (sum, count) for
/// `sum` and `average`, (min or max, count) for the others.
type Partials = BTreeMap<i64, (f64, u64)>;

/// Whether (stream, interval start) comes after the page's cursor.
fn after_cursor(after: &Option<(String, i64)>, order: Order, s: &str, t: i64) -> bool {
    match after {
        None => true,
        Some((cs, ct)) => {
            s > cs.as_str()
                || (s == cs.as_str()
                    && if order == Order::Asc {
                        t > *ct
                    } else {
                        t < *ct
                    })
        }
    }
}

/// The first `limit` rows, and a cursor after the last when `more` or there were more.
fn cut(mut rows: Vec<(String, RollupValue)>, limit: usize, order: Order, more: bool) -> Rows {
    let next = (more || rows.len() > limit).then(|| {
        let (s, v) = &rows[rows.len().min(limit) - 1];
        Cursor::Key {
            order,
            key: format!("{s}\u{1}{}", v.timestamp),
        }
    });
    rows.truncate(limit);
    (rows, next)
}

/// The page of `r` over the streams `held` says this node answers for.
fn page_held(store: &dyn Store, r: &Request, held: Held<'_>) -> Result<Rows, ApiError> {
    let q = &r.query;
    if !r.pattern && r.aggregate.is_none() {
        let page = store.rollups(&r.target, q)?;
        let rows = page
            .items
            .into_iter()
            .map(|v| (r.target.clone(), v))
            .collect();
        return Ok((rows, page.next));
    }
    let rows = match r.aggregate {
        Some(agg) => aggregate_rows(r, partials(store, r, agg, held)?, agg)?,
        None => stream_rows(store, r, held)?,
    };
    Ok(cut(rows, q.limit, q.order, false))
}

/// The aggregate's partials over the streams `held` says this node answers for, combined per
/// interval in path order (so that sums do not depend on threads).
fn partials(
    store: &dyn Store,
    r: &Request,
    agg: Aggregate,
    held: Held<'_>,
) -> Result<Partials, ApiError> {
    let streams: Vec<String> = if r.pattern {
        matching_streams(store, &r.target, None, usize::MAX)?
            .into_iter()
            .filter(|(p, numeric)| *numeric && held(p))
            .map(|(p, _)| p)
            .collect()
    } else {
        vec![r.target.clone()]
    };
    let mut acc = Partials::new();
    for series in many_series(
        store,
        &streams,
        &r.query,
        Fill::None,
        Order::Asc,
        MAX_INTERVALS + 1,
    )? {
        for v in series {
            let Some(x) = v.value else { continue };
            merge_partial(&mut acc, agg, v.timestamp, x, 1);
        }
    }
    Ok(acc)
}

/// Adds `x` (over `n` streams) to the partial of interval `t`.
fn merge_partial(acc: &mut Partials, agg: Aggregate, t: i64, x: f64, n: u64) {
    let e = acc.entry(t).or_insert(match agg {
        Aggregate::Min => (f64::INFINITY, 0),
        Aggregate::Max => (f64::NEG_INFINITY, 0),
        _ => (0.0, 0),
    });
    e.0 = match agg {
        Aggregate::Sum | Aggregate::Average => e.0 + x,
        Aggregate::Min => e.0.min(x),
        Aggregate::Max => e.0.max(x),
    };
    e.1 += n;
}

/// The aggregate's rows from its partials: combined, filled, in the query's order, after the
/// cursor.
fn aggregate_rows(
    r: &Request,
    acc: Partials,
    agg: Aggregate,
) -> Result<Vec<(String, RollupValue)>, ApiError> {
    let q = &r.query;
    let after = rows_cursor(q.cursor.as_ref())?;
    let combined: Vec<(i64, f64)> = acc
        .into_iter()
        .map(|(t, (v, n))| {
            (
                t,
                if agg == Aggregate::Average {
                    v / n as f64
                } else {
                    v
                },
            )
        })
        .collect();
    let from = q.from.or(combined.first().map(|c| c.0)).unwrap_or(0);
    let to = q.to.or(combined.last().map(|c| c.0 + 1)).unwrap_or(0);
    let mut filled = fill_intervals(&combined, q.interval, &q.tz, q.fill, from, to)?;
    if q.order == Order::Desc {
        filled.reverse();
    }
    Ok(filled
        .into_iter()
        .filter(|v| after_cursor(&after, q.order, &r.target, v.timestamp))
        .map(|v| (r.target.clone(), v))
        .collect())
}

/// Up to `limit + 1` rows of the streams `held` says this node answers for, after the cursor:
/// streams in path order, time in `order` within each; only the streams this page needs,
/// fetched a batch at a time from where the previous page ended.
fn stream_rows(
    store: &dyn Store,
    r: &Request,
    held: Held<'_>,
) -> Result<Vec<(String, RollupValue)>, ApiError> {
    let q = &r.query;
    let after = rows_cursor(q.cursor.as_ref())?;
    let mut rows: Vec<(String, RollupValue)> = Vec::new();
    let mut from: Option<String> = None;
    if let Some((cs, ct)) = &after {
        // The cursor's stream may have intervals left.
        if held(cs) {
            rows.extend(
                whole_series(store, cs, q, q.fill, q.order, Some(*ct), q.limit + 1)?
                    .into_iter()
                    .filter(|v| after_cursor(&after, q.order, cs, v.timestamp))
                    .map(|v| (cs.clone(), v)),
            );
        }
        from = Some(cs.clone());
    }
    // Small first batches, so that small pages stay cheap.
    let mut batch_size = 1;
    'streams: while rows.len() <= q.limit {
        let batch = if r.pattern {
            matching_streams(store, &r.target, from.as_deref(), batch_size)?
        } else if from.is_none() {
            vec![(r.target.clone(), true)]
        } else {
            Vec::new()
        };
        let Some((last, _)) = batch.last().cloned() else {
            break;
        };
        let numeric: Vec<String> = batch
            .into_iter()
            .filter(|(p, n)| *n && held(p))
            .map(|(p, _)| p)
            .collect();
        for (s, series) in numeric.iter().zip(many_series(
            store,
            &numeric,
            q,
            q.fill,
            q.order,
            q.limit + 1,
        )?) {
            rows.extend(series.into_iter().map(|v| (s.clone(), v)));
            if rows.len() > q.limit {
                break 'streams;
            }
        }
        from = Some(last);
        batch_size = (batch_size * 2).min(256);
    }
    Ok(rows)
}

/// On a cluster node, a pattern over every device (`*/…`) is answered by every node for the
/// partitions it holds, and merged by the node asked (docs/scale-out.md, "Queries").
fn gathered_by(st: &AppState, r: &Request) -> Option<Arc<crate::cluster::Cluster>> {
    st.cluster
        .clone()
        .filter(|_| r.pattern && meterstream_storage::path::device_id(&r.target).contains('*'))
}

/// This node's part of a gathered rollup, for the node gathering it: the aggregate's partials
/// per interval, or up to `size` rows (and whether there were more) of the streams it holds.
fn part_json(
    store: &dyn Store,
    r: &Request,
    held: Held<'_>,
) -> Result<serde_json::Value, ApiError> {
    use serde_json::json;
    Ok(match r.aggregate {
        Some(agg) => {
            let p: Vec<serde_json::Value> = partials(store, r, agg, held)?
                .into_iter()
                .map(|(t, (v, n))| json!([t, v, n]))
                .collect();
            json!({ "partials": p })
        }
        None => {
            let mut rows = stream_rows(store, r, held)?;
            let more = rows.len() > r.query.limit;
            rows.truncate(r.query.limit);
            let rows: Vec<serde_json::Value> = rows
                .iter()
                .map(|(s, v)| json!([s, v.timestamp, v.value.filter(|x| x.is_finite())]))
                .collect();
            json!({ "rows": rows, "more": more })
        }
    })
}

/// The page of `r` gathered from every node of the cluster: this node's part and the others'
/// (asked with the request's credentials, on `path` with this page's cursor and size). Every
/// stream is one node's, so rows merge by stream; partials add up per interval. Blocking.
fn gathered(
    c: &crate::cluster::Cluster,
    store: &dyn Store,
    r: &Request,
    path: &str,
    query: &str,
    headers: &actix_web::http::header::HeaderMap,
) -> Result<Rows, ApiError> {
    let held = |p: &str| c.holds_device(meterstream_storage::path::device_id(p));
    let mut parts = vec![part_json(store, r, &held)?];
    // The peers answer the same page: the same cursor and size, whatever the format.
    let mut peer = format!("{path}?");
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let k = kv.split('=').next().unwrap_or_default();
        if !matches!(k, "cursor" | "size" | "format") {
            peer.push_str(kv);
            peer.push('&');
        }
    }
    peer.push_str(&format!("size={}", r.query.limit));
    if let Some(cur) = &r.query.cursor {
        peer.push_str("&cursor=");
        peer.extend(percent_encoding::utf8_percent_encode(
            &cur.encode(),
            percent_encoding::NON_ALPHANUMERIC,
        ));
    }
    parts.extend(c.ask_others_blocking(&peer, headers)?);
    let bad = || ApiError::Internal("a node's part of a gathered rollup was malformed".into());
    let q = &r.query;
    match r.aggregate {
        Some(agg) => {
            let mut acc = Partials::new();
            for p in &parts {
                for e in p["partials"].as_array().ok_or_else(bad)? {
                    let (Some(t), Some(v), Some(n)) = (e[0].as_i64(), e[1].as_f64(), e[2].as_u64())
                    else {
                        return Err(bad());
                    };
                    merge_partial(&mut acc, agg, t, v, n);
                }
            }
            Ok(cut(aggregate_rows(r, acc, agg)?, q.limit, q.order, false))
        }
        None => {
            let mut more = false;
            let mut rows: Vec<(String, RollupValue)> = Vec::new();
            for p in &parts {
                more |= p["more"].as_bool().unwrap_or(false);
                for e in p["rows"].as_array().ok_or_else(bad)? {
                    let (Some(s), Some(t)) = (e[0].as_str(), e[1].as_i64()) else {
                        return Err(bad());
                    };
                    rows.push((
                        s.to_string(),
                        RollupValue {
                            timestamp: t,
                            value: e[2].as_f64(),
                        },
                    ));
                }
            }
            // Stable: each stream's rows keep their node's time order.
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(cut(rows, q.limit, q.order, more))
        }
    }
}

fn csv_rows(rows: &[(String, RollupValue)]) -> Result<bytes::Bytes, ApiError> {
    crate::csv_export::rows(rows.iter().map(|(s, v)| {
        [
            s.clone(),
            format_iso(v.timestamp),
            v.value.map(|x| x.to_string()).unwrap_or_default(),
        ]
    }))
}

/// `GET /ws/v1/streams/rollups/{stream or pattern}`.
pub async fn get(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Read)?;
    let r = parse(&req)?;
    if r.pattern {
        // A limited credential's patterns must stay inside its prefixes.
        if !who.covers_pattern(&r.target) {
            return Err(ApiError::Forbidden(format!(
                "the pattern {:?} reaches outside this credential's scope",
                r.target
            )));
        }
    } else {
        who.require_path(&r.target)?;
    }
    let cluster = gathered_by(&st, &r);
    if let Some(c) = cluster.clone() {
        if req.headers().contains_key(crate::cluster::HOP_HEADER) {
            // Another node gathers this pattern: this node's part.
            let st2 = st.clone();
            let part = web::block(move || {
                let held = |p: &str| c.holds_device(meterstream_storage::path::device_id(p));
                part_json(&*st2.store, &r, &held)
            })
            .await??;
            return Ok(HttpResponse::Ok().json(part));
        }
    }
    // This node's page, or the cluster's.
    let (path, query, headers) = (
        req.path().to_string(),
        req.query_string().to_string(),
        req.headers().clone(),
    );
    let page = move |store: &dyn Store, r: &Request| match &cluster {
        None => page_of(store, r),
        Some(c) => gathered(c, store, r, &path, &query, &headers),
    };
    if r.csv {
        let (st2, r2, page2) = (st.clone(), r.clone(), page.clone());
        let (first, next) = web::block(move || -> Result<_, ApiError> {
            let (rows, next) = page2(&*st2.store, &r2)?;
            let mut b = crate::csv_export::rows([["stream_id", "timestamp", "value"]])?.to_vec();
            b.extend_from_slice(&csv_rows(&rows)?);
            Ok((bytes::Bytes::from(b), next))
        })
        .await??;
        let store = st.store.clone();
        return Ok(crate::csv_export::stream(first, next, move |c| {
            let mut r = r.clone();
            r.query.cursor = Some(c);
            let (rows, next) = page(&*store, &r)?;
            Ok((csv_rows(&rows)?, next))
        }));
    }
    let limit = r.query.limit;
    let st2 = st.clone();
    let body = web::block(move || -> Result<Vec<u8>, ApiError> {
        let (rows, next) = page(&*st2.store, &r)?;
        Ok(match r.layout {
            wire::Layout::Rows => rows_json(&rows, limit, next),
            wire::Layout::Columns => series_json(&rows, limit, next),
        })
    })
    .await??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as J};

    fn rows() -> Vec<(String, RollupValue)> {
        let v = |t: i64, x: Option<f64>| RollupValue {
            timestamp: t,
            value: x,
        };
        vec![
            ("gw/a\"/v".to_string(), v(0, Some(230.5))),
            ("gw/a\"/v".to_string(), v(60_000, None)),
            ("gw/a\"/v".to_string(), v(120_000, Some(f64::NAN))),
            ("gw/b/v".to_string(), v(1_700_000_000_000, Some(-1.0))),
            ("gw/c/v".to_string(), v(253_402_300_799_999, Some(5.0))),
        ]
    }

    #[test]
    fn rows_are_the_digi_list_shape() {
        let cursor = Some(Cursor::Key {
            order: Order::Asc,
            key: "k".into(),
        });
        for next in [None, cursor] {
            let got: J = serde_json::from_slice(&rows_json(&rows(), 7, next.clone())).unwrap();
            let list: Vec<J> = rows()
                .iter()
                .map(|(s, v)| {
                    json!({"stream_id": s, "timestamp": format_iso(v.timestamp),
                           "value": v.value.filter(|x| x.is_finite())})
                })
                .collect();
            let mut want = json!({"count": 5, "size": 7, "list": list});
            if let Some(c) = next {
                want["cursor"] = json!(c.encode());
            }
            assert_eq!(got, want);
        }
        let empty: J = serde_json::from_slice(&rows_json(&[], 3, None)).unwrap();
        assert_eq!(empty, json!({"count": 0, "size": 3, "list": []}));
    }

    #[test]
    fn columns_group_consecutive_rows_by_stream() {
        let got: J = serde_json::from_slice(&series_json(&rows(), 7, None)).unwrap();
        assert_eq!(
            got,
            json!({"count": 5, "size": 7, "series": [
                {"stream_id": "gw/a\"/v", "timestamp": [0, 60_000, 120_000], "value": [230.5, null, null]},
                {"stream_id": "gw/b/v", "timestamp": [1_700_000_000_000i64], "value": [-1.0]},
                {"stream_id": "gw/c/v", "timestamp": [253_402_300_799_999i64], "value": [5.0]},
            ]})
        );
        let empty: J = serde_json::from_slice(&series_json(&[], 3, None)).unwrap();
        assert_eq!(empty, json!({"count": 0, "size": 3, "series": []}));
    }
}
