//! Handlers of `/ws/v1/streams/inventory` (Digi's stream inventory) and
//! `/ws/v1/streams/folders` (folder-style browsing, which Digi lacks).
//!
//! `GET /ws/v1/streams/folders[/{prefix}]?size=&cursor=` answers the direct children of a path
//! prefix, by name: `{"path", "count", "size", "cursor", "list": [...]}` where each item is
//! `{"kind": "folder", "name", "path", "stream_count"}` or `{"kind": "stream", "name", ...the
//! stream object with its current value}`. A name can be both a stream and a folder; the stream
//! comes first. An unknown prefix is a 404.

use crate::error::ApiError;
use crate::params::Params;
use crate::{filter, stream_id, wire, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use meterstream_storage::time::now_ms;
use meterstream_storage::{Child, StreamFilter, StreamType, StreamUpdate};
use serde::Deserialize;
use serde_json::json;

/// `GET /ws/v1/streams/inventory`.
pub async fn list(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Read)?;
    let mut p = Params::parse(req.query_string())?;
    let limit = p.size()?;
    let order = p.order()?;
    let cursor = p.cursor()?;
    let filter = match p.take("query")? {
        Some(q) => filter::parse(&q, now_ms())?,
        None => StreamFilter::default(),
    };
    p.finish(&["size", "cursor", "order", "query"])?;
    let mut filter = filter;
    if let Some(ps) = who.path_prefixes() {
        filter
            .conditions
            .push(meterstream_storage::Condition::Within(ps));
    }
    let st2 = st.clone();
    let local = move || -> Result<Vec<u8>, ApiError> {
        let page = match &st2.cluster {
            None => st2
                .store
                .list_streams(&filter, order, limit, cursor.as_ref())?,
            Some(c) => c.held_streams(&*st2.store, &filter, order, limit, cursor.as_ref())?,
        };
        Ok(wire::streams_page(&page.items, limit, page.next))
    };
    let body = match &st.cluster {
        // A cluster node asked by a client gathers every holder's part (docs/scale-out.md).
        Some(c) if !req.headers().contains_key(crate::cluster::HOP_HEADER) => {
            let own: serde_json::Value = serde_json::from_slice(&web::block(local).await??)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let merged = c
                .gather(&req, own, crate::cluster::stream_key, order, limit)
                .await?;
            serde_json::to_vec(&merged).map_err(|e| ApiError::Internal(e.to_string()))?
        }
        _ => web::block(local).await??,
    };
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// `GET /ws/v1/streams/inventory/{stream_id}`.
pub async fn get(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Read)?;
    let path = stream_id(&req)?;
    who.require_path(&path)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let st2 = st.clone();
    let info = web::block(move || st2.store.stream(&path)).await??;
    Ok(HttpResponse::Ok().json(wire::stream(&info)))
}

/// Body of `PUT /ws/v1/streams/inventory/{stream_id}`; every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    #[serde(default, alias = "stream_type")]
    r#type: Option<String>,
    #[serde(default, alias = "stream_units")]
    units: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    forward_to: Option<Vec<String>>,
    #[serde(default, deserialize_with = "double_option")]
    data_ttl: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    rollup_ttl: Option<Option<u64>>,
    /// Echoed back by clients that PUT what they GOT; must match the path if given.
    #[serde(default)]
    id: Option<String>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// `PUT /ws/v1/streams/inventory/{stream_id}`: creates the stream (201) or updates its metadata
/// (200). A new stream without `type` is DOUBLE.
pub async fn put(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Write)?;
    let path = stream_id(&req)?;
    who.require_path(&path)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let body = crate::read_body(&req, payload, st.body_limit).await?;
    let b: PutBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid stream body: {e}")))?;
    if let Some(id) = &b.id {
        if id != &path {
            return Err(ApiError::BadRequest(format!(
                "the body's id {id:?} does not match the path's stream {path:?}"
            )));
        }
    }
    // Copies land in the targets, so the caller must be allowed to write there too.
    for f in b.forward_to.iter().flatten() {
        who.require_path(f)?;
    }
    let stream_type = match &b.r#type {
        None => None,
        Some(t) => Some(StreamType::parse(t).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown type {t:?}; expected one of {}",
                StreamType::ALL.map(|t| t.as_str()).join(", ")
            ))
        })?),
    };
    let update = StreamUpdate {
        stream_type,
        units: b.units,
        description: b.description,
        forward_to: b.forward_to,
        data_ttl: b.data_ttl,
        rollup_ttl: b.rollup_ttl,
    };
    let st2 = st.clone();
    let (created, info) = web::block(move || -> Result<_, ApiError> {
        let existed = st2.store.stream(&path).is_ok();
        let info = st2.store.put_stream(&path, update, now_ms())?;
        Ok((!existed, info))
    })
    .await??;
    let mut resp = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(resp.json(wire::stream(&info)))
}

/// `DELETE /ws/v1/streams/inventory/{stream_id}`: the stream and all its points.
pub async fn delete(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Write)?;
    who.require_path(&stream_id(&req)?)?;
    let path = stream_id(&req)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let st2 = st.clone();
    web::block(move || st2.store.delete_stream(&path)).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /ws/v1/streams/folders[/{prefix}]`.
pub async fn folders(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Read)?;
    let scope = who.path_prefixes();
    let prefix = crate::path_tail(&req)?;
    let mut p = Params::parse(req.query_string())?;
    let limit = p.size()?;
    let cursor = p.cursor()?;
    p.finish(&["size", "cursor"])?;
    let st2 = st.clone();
    // In a cluster, the top level (one folder per device) is gathered from every node, each
    // answering for the devices it holds; a deeper prefix was routed to its device's holder.
    let gather = prefix.is_empty()
        && st.cluster.is_some()
        && !req.headers().contains_key(crate::cluster::HOP_HEADER);
    let top = prefix.is_empty();
    let body = web::block(move || -> Result<serde_json::Value, ApiError> {
        let page = match &st2.cluster {
            Some(c) if top => c.held_children(&*st2.store, limit, cursor.as_ref())?,
            _ => st2.store.children(&prefix, limit, cursor.as_ref())?,
        };
        // A limited credential sees the folders on the way to its prefixes (without their
        // stream counts, which would count streams outside its scope) and what lies inside.
        let visible = |path: &str, folder: bool| match &scope {
            None => (true, true),
            Some(ps) => {
                let p = if folder { format!("{path}/") } else { path.to_string() };
                let inside = ps.iter().any(|x| p.starts_with(x.as_str()));
                let above = folder && ps.iter().any(|x| x.starts_with(p.as_str()));
                (inside || above, inside)
            }
        };
        let list: Vec<_> = page
            .items
            .iter()
            .filter(|c| match c {
                Child::Folder { path, .. } => visible(path, true).0,
                Child::Stream(info) => visible(&info.path, false).0,
            })
            .map(|c| match c {
                Child::Folder {
                    name,
                    path,
                    streams,
                } => json!({"kind": "folder", "name": name, "path": path,
                    "stream_count": if visible(path, true).1 { json!(streams) } else { json!(null) }}),
                Child::Stream(info) => {
                    let mut s = wire::stream(info);
                    s["kind"] = json!("stream");
                    s["name"] = json!(info.path.rsplit('/').next().unwrap_or(&info.path));
                    s
                }
            })
            .collect();
        let mut body = wire::list(list, limit, page.next);
        body["path"] = json!(prefix);
        Ok(body)
    })
    .await??;
    let body = match &st.cluster {
        Some(c) if gather => {
            let mut merged = c
                .gather(
                    &req,
                    body,
                    crate::cluster::folder_key,
                    meterstream_storage::query::Order::Asc,
                    limit,
                )
                .await?;
            merged["path"] = json!("");
            merged
        }
        _ => body,
    };
    Ok(HttpResponse::Ok().json(body))
}
