//! `GET /ws/v1/streams/rollups/{stream_id}`: rolled-up values of one numeric stream.
//!
//! Parameters: `interval` (`1m 5m 15m half|30m hour day week month`, default `hour`), `method`
//! (`sum average min max count standarddev first last increase`, default `average`),
//! `start_time`/`end_time` (the points rolled up; default: all of them), `timezone` (IANA name,
//! default `UTC`), `fill` (`none null previous zero`, default `none`), `order`, `size`, `cursor`.
//! Answers Digi's shape: `{"count", "size", "cursor", "list": [{"stream_id", "timestamp",
//! "value"}]}`, each `timestamp` the start of its interval; `value` is null for a `fill=null`
//! interval (and for `fill=previous` before the first non-empty one).

use crate::error::ApiError;
use crate::params::Params;
use crate::{stream_id, wire, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use meterstream_storage::rollup::zone;
use meterstream_storage::time::{format_iso, now_ms};
use meterstream_storage::{Fill, Interval, Method, RollupQuery};
use serde::Serialize;

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
];

#[derive(Serialize)]
struct RollupOut<'a> {
    stream_id: &'a str,
    timestamp: String,
    value: Option<f64>,
}

/// `GET /ws/v1/streams/rollups/{stream_id}`.
pub async fn get(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let path = stream_id(&req)?;
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
    p.finish(PARAMS)?;
    let q = RollupQuery {
        from,
        to,
        interval,
        method,
        tz,
        fill,
        order,
        limit,
        cursor,
    };
    let st2 = st.clone();
    let body = web::block(move || -> Result<Vec<u8>, ApiError> {
        let page = st2.store.rollups(&path, &q)?;
        let items: Vec<RollupOut> = page
            .items
            .iter()
            .map(|v| RollupOut {
                stream_id: &path,
                timestamp: format_iso(v.timestamp),
                value: v.value,
            })
            .collect();
        serde_json::to_vec(&wire::ListOut::new(items, limit, page.next))
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}
