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
use meterstream_storage::alarm::{Alert, AlertRule, AlertScope, Severity, State};
use meterstream_storage::registry::{AlarmChange, AlarmChangeKind, AlarmStatus, ChangeOutcome};
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
    store(&st, &who, &a).await?;
    Ok(HttpResponse::Created().json(alert_json(&a)))
}

/// Checks an alert (the error names the field; 403 outside the caller's scope), stores it and
/// tells the evaluator: shared by create and update.
async fn store(st: &web::Data<AppState>, who: &Principal, a: &Alert) -> Result<(), ApiError> {
    a.validate().map_err(ApiError::BadRequest)?;
    if !covers(who, &a.scope) {
        return Err(ApiError::Forbidden(
            "the alert's scope reaches outside this credential's scope".into(),
        ));
    }
    let (st2, a2) = (st.clone(), a.clone());
    web::block(move || st2.devices.registry.put_alert(&a2)).await??;
    st.evaluator.rules_changed();
    Ok(())
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
    store(&st, &who, &a).await?;
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
            Some(a) if covers(&who, &a.scope) => {
                let found = st2.devices.registry.delete_alert(&id2)?;
                st2.devices.registry.forget_alert(&id2)?;
                Ok(found)
            }
            _ => Ok(false),
        }
    })
    .await??;
    if !found {
        return Err(not_found(&id));
    }
    st.evaluator.rules_changed();
    Ok(HttpResponse::NoContent().finish())
}

/// Whether `who` may see the status of `source` (a stream path, or a device id for device rules).
pub fn covers_source(who: &Principal, source: &str) -> bool {
    if source.contains('/') {
        who.covers_path(source)
    } else {
        who.covers_device(source)
    }
}

/// A status as the API shows it, with its alert's name and severity.
pub fn status_json(s: &AlarmStatus, alert: Option<&Alert>) -> Value {
    let mut v = json!({
        "id": format!("{}/{}", s.alert_id, s.source),
        "alert_id": s.alert_id,
        "source": s.source,
        "state": s.state,
        "changed": format_iso(s.changed),
        "value": s.value,
        "transitions": s.transitions,
    });
    if let Some(a) = alert {
        v["alert_name"] = a.name.clone().into();
        v["severity"] = serde_json::to_value(a.severity).unwrap_or(Value::Null);
    } else if s.alert_id == crate::delivery::SYSTEM_ALERT {
        v["alert_name"] = "Monitor disabled".into();
        v["severity"] = "critical".into();
    }
    if s.correction {
        v["correction"] = true.into();
    }
    // The point that fired or reset it, for data rules (the source is its stream).
    if let Some(ts) = s.point.filter(|_| s.source.contains('/')) {
        v["point"] = json!({
            "id": meterstream_storage::point::point_id(&s.source, ts).to_string(),
            "stream_id": s.source,
            "timestamp": format_iso(ts),
        });
    }
    if let Some(by) = &s.acknowledged_by {
        v["acknowledged_by"] = by.clone().into();
    }
    if let Some(n) = &s.note {
        v["note"] = n.clone().into();
    }
    v
}

fn parse_list<T: serde::de::DeserializeOwned>(
    p: &mut Params,
    name: &str,
) -> Result<Option<Vec<T>>, ApiError> {
    p.take(name)?
        .map(|v| {
            v.split(',')
                .map(|x| {
                    serde_json::from_value::<T>(Value::String(x.trim().to_string())).map_err(|_| {
                        ApiError::param(name, format!("{x:?} is not one of its values"))
                    })
                })
                .collect()
        })
        .transpose()
}

/// `GET /ws/v1/alerts/status`: active statuses (or all with `state=...,reset`), filterable by
/// `severity` (comma-separated), `state` (triggered, acknowledged, reset), `scope` (a source
/// pattern, `*` per segment, or a device id) and `alert_id`; `size` and `cursor` page them.
pub async fn statuses(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let after = p.text_cursor()?;
    let severities: Option<Vec<Severity>> = parse_list(&mut p, "severity")?;
    let states: Vec<State> =
        parse_list(&mut p, "state")?.unwrap_or_else(|| vec![State::Triggered, State::Acknowledged]);
    let scope = p.take("scope")?;
    if let Some(sc) = scope.as_deref().filter(|s| s.contains('/')) {
        meterstream_storage::path::validate_pattern(sc).map_err(|e| ApiError::param("scope", e))?;
    }
    let alert_filter = p.take("alert_id")?;
    p.finish(&["size", "cursor", "severity", "state", "scope", "alert_id"])?;
    let st2 = st.clone();
    let (items, next) = web::block(move || -> Result<_, ApiError> {
        let reg = &st2.devices.registry;
        let mut alerts: std::collections::HashMap<String, Option<Alert>> =
            std::collections::HashMap::new();
        let mut out = Vec::new();
        let mut next = None;
        let mut last_key = String::new();
        for s in reg.statuses()? {
            let key = format!("{}\u{0}{}", s.alert_id, s.source);
            if after.as_deref().is_some_and(|a| key.as_str() <= a)
                || !states.contains(&s.state)
                || alert_filter.as_deref().is_some_and(|a| a != s.alert_id)
                || !covers_source(&who, &s.source)
            {
                continue;
            }
            if let Some(sc) = scope.as_deref() {
                let ok = if sc.contains('/') {
                    meterstream_storage::path::matches_pattern(sc, &s.source)
                } else {
                    meterstream_storage::path::device_id(&s.source) == sc
                };
                if !ok {
                    continue;
                }
            }
            if !alerts.contains_key(&s.alert_id) {
                alerts.insert(s.alert_id.clone(), reg.alert(&s.alert_id)?);
            }
            let alert = alerts.get(&s.alert_id).and_then(|a| a.as_ref());
            if let Some(sev) = &severities {
                let severity = match alert {
                    Some(a) => Some(a.severity),
                    None if s.alert_id == crate::delivery::SYSTEM_ALERT => Some(Severity::Critical),
                    None => None,
                };
                if !severity.is_some_and(|x| sev.contains(&x)) {
                    continue;
                }
            }
            if out.len() == size {
                next = Some(last_key);
                break;
            }
            out.push(status_json(&s, alert));
            last_key = key;
        }
        Ok((out, next))
    })
    .await??;
    let mut body = json!({"count": items.len(), "size": size, "list": items});
    if let Some(c) = next {
        // The cursor names the last item returned; the next page starts after it.
        body["cursor"] = crate::params::opaque_cursor(&c).into();
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /ws/v1/alerts/history/{id}`: every transition of the alert's statuses, oldest first per
/// source (`source` filters one), paged by `size` and `cursor`.
pub async fn history(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    let id = alert_id(&req);
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let after = p
        .text_cursor()?
        .map(|h| {
            unhex(&h)
                .ok_or_else(|| ApiError::param("cursor", "it is not a cursor this server gave"))
        })
        .transpose()?;
    let source = p.take("source")?;
    p.finish(&["size", "cursor", "source"])?;
    let st2 = st.clone();
    let id2 = id.clone();
    let (alert, items, next) = web::block(move || -> Result<_, ApiError> {
        let reg = &st2.devices.registry;
        let alert = reg.alert(&id2)?;
        let mut after: Option<Vec<u8>> = after;
        let mut out = Vec::new();
        let mut next = None;
        'pages: loop {
            let page = reg.alarm_history(&id2, after.as_deref(), 1000)?;
            if page.is_empty() {
                break;
            }
            for (k, s) in page {
                after = Some(k.clone());
                if source.as_deref().is_some_and(|x| x != s.source)
                    || !covers_source(&who, &s.source)
                {
                    continue;
                }
                out.push(status_json(&s, None));
                if out.len() == size {
                    next = Some(k);
                    break 'pages;
                }
            }
        }
        Ok((alert, out, next))
    })
    .await??;
    if alert.is_none() && items.is_empty() {
        return Err(not_found(&id));
    }
    let mut body = json!({"count": items.len(), "size": size, "list": items});
    if let Some(k) = next {
        // History keys are text (alert, source) with a binary sequence number: hex keeps
        // them printable.
        body["cursor"] = crate::params::opaque_cursor(&hex(&k)).into();
    }
    Ok(HttpResponse::Ok().json(body))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The body of `PUT /ws/v1/alerts/status/{id}/{source}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// `acknowledged`.
    pub state: State,
    /// Optional note.
    #[serde(default)]
    pub note: Option<String>,
}

/// `PUT /ws/v1/alerts/status/{id}/{source}` with `{"state": "acknowledged", "note": "..."}`:
/// acknowledges a triggered status. It stays active until its reset rule resets it.
pub async fn acknowledge(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let id = alert_id(&req);
    // The tail after the route's prefix is `{id}/{source}`; the source is a stream path.
    let tail = crate::path_tail(&req)?;
    let source = tail
        .split_once('/')
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    let b: AckBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid acknowledgement: {e}")))?;
    if b.state != State::Acknowledged {
        return Err(ApiError::param(
            "state",
            "only \"acknowledged\" can be set; a status resets by its rule",
        ));
    }
    if b.note.as_ref().is_some_and(|n| n.len() > 2000) {
        return Err(ApiError::param("note", "at most 2000 characters"));
    }
    if !covers_source(&who, &source) {
        return Err(ApiError::NotFound(format!(
            "no status for {id:?} and {source:?}"
        )));
    }
    let st2 = st.clone();
    let (id2, source2) = (id.clone(), source.clone());
    let by = who.id.clone();
    let out = web::block(move || -> Result<_, ApiError> {
        let reg = &st2.devices.registry;
        let alert = reg.alert(&id2)?;
        if reg.status(&id2, &source2)?.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        let change = AlarmChange {
            event_id: format!("ack/{}", crate::auth::random_token(12)),
            alert_id: id2.clone(),
            source: source2.clone(),
            device: meterstream_storage::path::device_id(&source2).to_string(),
            kind: AlarmChangeKind::Acknowledge {
                by,
                note: b.note,
                at: now,
            },
        };
        let out = reg.alarm_changes(&[change], now)?;
        Ok(Some((out.into_iter().next(), alert)))
    })
    .await??;
    match out {
        None => Err(ApiError::NotFound(format!(
            "no status for {id:?} and {source:?}"
        ))),
        Some((Some(ChangeOutcome::Applied(s)), alert)) => {
            Ok(HttpResponse::Ok().json(status_json(&s, alert.as_ref())))
        }
        Some((Some(ChangeOutcome::Refused(why)), _)) => Err(ApiError::Conflict(why)),
        Some(_) => Err(ApiError::Internal(
            "the acknowledgement was not applied".into(),
        )),
    }
}
