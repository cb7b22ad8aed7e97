//! Alert rules over HTTP (issue 7; design `docs/alarms.md`): `/ws/v1/alerts/inventory` lists,
//! creates, reads, updates and deletes them. An alert is
//! `{name, description, enabled, severity, scope: {type, value}, rule: {type, ...}}` with scope
//! types `Resource` (a stream pattern), `Device`, `Group` and rule types `DataPoint condition`
//! (`fire` and `reset`: `{op, threshold, duration_ms}`), `DataPoint on change`,
//! `Missing DataPoint` (`duration_ms`), `Device Offline` (`reconnect_window_ms`),
//! `Device Excessive Disconnects` (`count`, `window_ms`). There is no limit on their number.
//! A credential limited to prefixes or groups sees and changes only alerts whose scope lies inside
//! its limits.

use crate::auth::{principal, Principal, Scope};
use crate::error::ApiError;
use crate::params::Params;
use crate::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use meterstream_storage::alarm::{Alert, AlertRule, AlertScope, Severity};
use meterstream_storage::time::{format_iso, now_ms};
use serde::Deserialize;
use serde_json::{json, Value};

/// The body of a create or an update.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertBody {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Whether it is evaluated (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Severity.
    pub severity: Severity,
    /// What it watches.
    pub scope: AlertScope,
    /// The rule.
    pub rule: AlertRule,
}

/// Whether `who` may see and change an alert over `scope`.
pub fn covers(who: &Principal, scope: &AlertScope) -> bool {
    match scope {
        AlertScope::Resource(pattern) => who.covers_pattern(pattern),
        AlertScope::Device(d) => who.covers_device(d),
        AlertScope::Group(g) => !who.limited() || who.groups.contains(g),
    }
}

fn alert_json(a: &Alert) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    v["created"] = format_iso(a.created).into();
    v["updated"] = format_iso(a.updated).into();
    v
}

fn parse_body(body: &[u8]) -> Result<AlertBody, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid alert: {e}")))
}

fn alert_id(req: &HttpRequest) -> String {
    req.match_info().get("id").unwrap_or_default().to_string()
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no alert {id:?}"))
}

fn new_id() -> String {
    crate::auth::random_token(9)
}

/// `GET /ws/v1/alerts/inventory` (`size`, `cursor`).
pub async fn list(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let after = p.text_cursor()?;
    p.finish(&["size", "cursor"])?;
    let st2 = st.clone();
    let (list, next) = web::block(move || -> Result<_, ApiError> {
        let mut out = Vec::new();
        let mut after = after;
        let mut next = None;
        'pages: loop {
            let page = st2.devices.registry.alerts(after.as_deref(), 500)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for a in page {
                if !covers(&who, &a.scope) {
                    continue;
                }
                if out.len() == size {
                    next = out.last().map(|x: &Alert| x.id.clone());
                    break 'pages;
                }
                out.push(a);
            }
        }
        Ok((out, next))
    })
    .await??;
    let items: Vec<Value> = list.iter().map(alert_json).collect();
    let mut body = json!({"count": items.len(), "size": size, "list": items});
    if let Some(c) = next {
        body["cursor"] = crate::params::opaque_cursor(&c).into();
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /ws/v1/alerts/inventory`.
pub async fn create(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let b = parse_body(&body)?;
    let now = now_ms();
    let a = Alert {
        id: new_id(),
        name: b.name,
        description: b.description,
        enabled: b.enabled.unwrap_or(true),
        severity: b.severity,
        scope: b.scope,
        rule: b.rule,
        created: now,
        updated: now,
    };
    a.validate().map_err(ApiError::BadRequest)?;
    if !covers(&who, &a.scope) {
        return Err(ApiError::Forbidden(
            "the alert's scope reaches outside this credential's scope".into(),
        ));
    }
    let st2 = st.clone();
    let a2 = a.clone();
    web::block(move || st2.devices.registry.put_alert(&a2)).await??;
    Ok(HttpResponse::Created().json(alert_json(&a)))
}

/// `GET /ws/v1/alerts/inventory/{id}`.
pub async fn get(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let id = alert_id(&req);
    let st2 = st.clone();
    let id2 = id.clone();
    let a = web::block(move || st2.devices.registry.alert(&id2)).await??;
    // Outside the caller's scope answers as if it did not exist.
    match a {
        Some(a) if covers(&who, &a.scope) => Ok(HttpResponse::Ok().json(alert_json(&a))),
        _ => Err(not_found(&id)),
    }
}

/// `PUT /ws/v1/alerts/inventory/{id}`: replaces the alert's definition.
pub async fn put(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let id = alert_id(&req);
    let b = parse_body(&body)?;
    let st2 = st.clone();
    let id2 = id.clone();
    let old = web::block(move || st2.devices.registry.alert(&id2))
        .await??
        .filter(|a| covers(&who, &a.scope))
        .ok_or_else(|| not_found(&id))?;
    let a = Alert {
        id: old.id.clone(),
        name: b.name,
        description: b.description,
        enabled: b.enabled.unwrap_or(old.enabled),
        severity: b.severity,
        scope: b.scope,
        rule: b.rule,
        created: old.created,
        updated: now_ms(),
    };
    a.validate().map_err(ApiError::BadRequest)?;
    if !covers(&who, &a.scope) {
        return Err(ApiError::Forbidden(
            "the alert's scope reaches outside this credential's scope".into(),
        ));
    }
    let st2 = st.clone();
    let a2 = a.clone();
    web::block(move || st2.devices.registry.put_alert(&a2)).await??;
    Ok(HttpResponse::Ok().json(alert_json(&a)))
}

/// `DELETE /ws/v1/alerts/inventory/{id}`.
pub async fn delete(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let id = alert_id(&req);
    let st2 = st.clone();
    let id2 = id.clone();
    let found = web::block(move || -> Result<bool, ApiError> {
        match st2.devices.registry.alert(&id2)? {
            Some(a) if covers(&who, &a.scope) => Ok(st2.devices.registry.delete_alert(&id2)?),
            _ => Ok(false),
        }
    })
    .await??;
    if !found {
        return Err(not_found(&id));
    }
    Ok(HttpResponse::NoContent().finish())
}
