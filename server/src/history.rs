//! Handlers of `/ws/v1/streams/history`: ingest (POST), raw history (GET), range delete (DELETE).

use crate::error::ApiError;
use crate::ingest::{parse_json, parse_msgpack, Format};
use crate::params::Params;
use crate::{stream_id, wire, AppState};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use meterstream_storage::time::{now_ms, MAX_TIMESTAMP, MIN_TIMESTAMP};
use meterstream_storage::{HistoryQuery, Timeline};
use serde_json::json;

/// `POST /ws/v1/streams/history`.
pub async fn post(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let format = Format::from_content_type(ct.as_deref())
        .ok_or_else(|| ApiError::UnsupportedMediaType(ct.clone().unwrap_or_default()))?;
    let who = crate::auth::principal(&req)?;
    if !who.has(crate::auth::Scope::Write) && !who.has(crate::auth::Scope::Device) {
        who.require(crate::auth::Scope::Write)?;
    }
    let mut params = Params::parse(req.query_string())?;
    // Our extension for gateways: the commands after this id ride back in the answer.
    let commands_after = match params.take("commands_after")? {
        None => None,
        Some(s) => Some(s.trim().parse::<u64>().map_err(|_| {
            ApiError::param("commands_after", format!("{s:?} is not a whole number"))
        })?),
    };
    params.finish(&["commands_after"])?;
    let key = crate::ingest::idempotency_key(&req, &who)?;
    let body = crate::read_body(&req, payload, st.body_limit).await?;
    let st2 = st.clone();
    let address = req.peer_addr().map(|a| a.ip().to_string());
    let (mut faults, stored, single, commands) = web::block(move || -> Result<_, ApiError> {
        let now = now_ms();
        let parsed = match format {
            Format::Json => parse_json(&body)?,
            Format::MsgPack => parse_msgpack(&body)?,
        };
        drop(body);
        let mut out = crate::ingest::store_for(
            &st2,
            &who,
            parsed.groups,
            address.as_deref(),
            now,
            key.as_deref(),
        )?;
        st2.metrics
            .points_rejected
            .inc_by(parsed.faults.len() as u64);
        out.faults.extend(parsed.faults);
        // Commands ride back only to a gateway that wrote for itself alone.
        let mut commands = None;
        if let (Some(after), [d]) = (commands_after, out.devices.as_slice()) {
            match st2.devices.registry.deliver(d, after, now) {
                Ok(c) => commands = Some(c),
                Err(e) => tracing::error!(device = %d, "delivering commands: {e}"),
            }
        }
        Ok((out.faults, out.stored, parsed.single, commands))
    })
    .await??;
    faults.sort_by_key(|f| f.index);
    let commands = commands.map(|c| {
        c.iter()
            .map(crate::devices::command_json)
            .collect::<Vec<_>>()
    });
    if faults.is_empty() {
        let mut body = json!({ "count": stored });
        if let Some(c) = commands {
            body["commands"] = c.into();
        }
        return Ok(HttpResponse::Created().json(body));
    }
    let errors: Vec<_> = faults
        .iter()
        .map(|f| json!({"index": f.index, "error_status": f.status, "error_message": f.message}))
        .collect();
    if stored > 0 {
        let mut body = json!({ "count": stored, "errors": errors });
        if let Some(c) = commands {
            body["commands"] = c.into();
        }
        return Ok(HttpResponse::build(StatusCode::MULTI_STATUS).json(body));
    }
    let first = &faults[0];
    let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::BAD_REQUEST);
    let message = if single {
        first.message.clone()
    } else {
        format!(
            "no item was stored; item {} (of {} bad): {}",
            first.index,
            faults.len(),
            first.message
        )
    };
    let mut body = crate::error::error_body(status, &message);
    if !single {
        body["count"] = json!(0);
        body["errors"] = json!(errors);
    }
    Ok(HttpResponse::build(status).json(body))
}

const GET_PARAMS: &[&str] = &[
    "start_time",
    "end_time",
    "order",
    "size",
    "cursor",
    "timeline",
    "format",
    "fields",
    "layout",
];

/// Points per page while streaming CSV.
const CSV_PAGE: usize = 10_000;

fn csv_rows(
    path: &str,
    ty: meterstream_storage::StreamType,
    points: &[meterstream_storage::DataPoint],
    fields: wire::Fields,
) -> Result<bytes::Bytes, ApiError> {
    let h = meterstream_storage::point::stable_hash(path);
    crate::csv_export::rows(points.iter().map(|p| {
        let e = p.extras.as_deref();
        // Only the selected columns are computed (ids and times cost a formatting each).
        (0..wire::POINT_FIELDS.len())
            .filter(|i| fields.has(*i))
            .map(|i| match i {
                0 => meterstream_storage::point::point_id_hashed(h, p.timestamp).to_string(),
                1 => path.to_string(),
                2 => meterstream_storage::time::format_iso(p.timestamp),
                3 => meterstream_storage::time::format_iso(p.server_timestamp),
                4 => match &p.value {
                    meterstream_storage::Value::Text(t) => t.clone(),
                    v => match v.to_json(ty) {
                        serde_json::Value::String(s) => s,
                        j => j.to_string(),
                    },
                },
                5 => e
                    .and_then(|e| e.quality)
                    .map(|q| q.to_string())
                    .unwrap_or_default(),
                6 => e.and_then(|e| e.location.clone()).unwrap_or_default(),
                _ => e.and_then(|e| e.description.clone()).unwrap_or_default(),
            })
            .collect::<Vec<String>>()
    }))
}

/// `GET /ws/v1/streams/history/{stream_id}`.
pub async fn get(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Read)?;
    let path = stream_id(&req)?;
    who.require_path(&path)?;
    let now = now_ms();
    let mut p = Params::parse(req.query_string())?;
    let from = p.time("start_time", now)?.unwrap_or(MIN_TIMESTAMP);
    let to = p.time("end_time", now)?.unwrap_or(MAX_TIMESTAMP + 1);
    let order = p.order()?;
    let limit = p.size()?;
    let cursor = p.cursor()?;
    let timeline = p.timeline()?;
    let csv = crate::csv_export::wanted(&req, p.take("format")?.as_deref())?;
    let fields = wire::Fields::parse(p.take("fields")?.as_deref())?;
    let layout = wire::Layout::parse(p.take("layout")?.as_deref())?;
    p.finish(GET_PARAMS)?;
    if csv && layout == wire::Layout::Columns {
        return Err(ApiError::param(
            "layout",
            "CSV has one layout (a row per point); layout=columns is for JSON",
        ));
    }
    let q = HistoryQuery {
        from,
        to,
        order,
        timeline,
        limit: if csv { CSV_PAGE } else { limit },
        cursor,
    };
    if csv {
        let (st2, path2, q2) = (st.clone(), path.clone(), q.clone());
        let (first, next, ty) = web::block(move || -> Result<_, ApiError> {
            let ty = st2.store.stream(&path2)?.meta.stream_type;
            let page = st2.store.history(&path2, &q2)?;
            let header: Vec<&str> = wire::POINT_FIELDS
                .iter()
                .enumerate()
                .filter(|(i, _)| fields.has(*i))
                .map(|(_, h)| *h)
                .collect();
            let mut b = crate::csv_export::rows([header])?.to_vec();
            b.extend_from_slice(&csv_rows(&path2, ty, &page.items, fields)?);
            Ok((bytes::Bytes::from(b), page.next, ty))
        })
        .await??;
        let store = st.store.clone();
        return Ok(crate::csv_export::stream(first, next, move |c| {
            let page = store.history(
                &path,
                &HistoryQuery {
                    cursor: Some(c),
                    ..q.clone()
                },
            )?;
            Ok((csv_rows(&path, ty, &page.items, fields)?, page.next))
        }));
    }
    let st2 = st.clone();
    let body = web::block(move || -> Result<Vec<u8>, ApiError> {
        let info = st2.store.stream(&path)?;
        let page = st2.store.history(&path, &q)?;
        let ty = info.meta.stream_type;
        let write = match layout {
            wire::Layout::Rows => wire::points_page,
            wire::Layout::Columns => wire::points_columns,
        };
        Ok(write(&path, ty, &page.items, fields, limit, page.next))
    })
    .await??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// `DELETE /ws/v1/streams/history/{stream_id}`: deletes the points in
/// `[start_time, end_time)` (default: all of them).
pub async fn delete(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Write)?;
    let path = stream_id(&req)?;
    who.require_path(&path)?;
    let now = now_ms();
    let mut p = Params::parse(req.query_string())?;
    let from = p.time("start_time", now)?.unwrap_or(MIN_TIMESTAMP);
    let to = p.time("end_time", now)?.unwrap_or(MAX_TIMESTAMP + 1);
    if p.timeline()? == Timeline::Server {
        return Err(ApiError::param(
            "timeline",
            "deleting by server time is not supported; delete by the device's timestamps (timeline=client)",
        ));
    }
    p.finish(&["start_time", "end_time", "timeline"])?;
    let st2 = st.clone();
    let deleted = web::block(move || st2.store.delete_history(&path, from, to)).await??;
    Ok(HttpResponse::Ok().json(json!({ "deleted": deleted })))
}
