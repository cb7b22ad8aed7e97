//! Monitors over HTTP (issue 7; design `docs/alarms.md`): `/ws/v1/monitors/inventory` lists,
//! creates, reads, updates and deletes them; `.../{id}/rotate_secret` makes a new signing
//! secret while the old one keeps signing for an overlap; `.../{id}/reset` re-enables a disabled
//! one. `/ws/v1/monitors/history/{id}` lists its delivery attempts (`failed=true` for the failed
//! ones), and `POST /ws/v1/monitors/history/{id}/{attempt}/replay` sends a recorded batch again.
//! Delivery itself is in [`crate::delivery`].
//!
//! A monitor: `topics` (`DataPoint/<pattern>`, `AlarmStatus`, `devices`), `url`, `method`
//! (`POST` or `PUT`), `headers` (an object), `auth_token` (`user:password` for Basic),
//! `format` (`json`), `batch_size` (1–10,000, default 100), `batch_duration` (seconds, default
//! 10), `compression` (`none` or `gzip`), `persistent`, `description`. The `whsec_` secret is in
//! the answer to the create (and to a rotation), and never again.
//!
//! Targets on loopback, private or link-local addresses (or names resolving to them) are
//! refused unless `allow_private_webhook_targets` is set.

use crate::auth::{principal, Principal, Scope};
use crate::error::ApiError;
use crate::params::Params;
use crate::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use meterstream_storage::registry::{Delivery, Monitor, MonitorState};
use meterstream_storage::time::{format_iso, now_ms};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};

/// The body of a create or an update.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorBody {
    /// Topics.
    pub topics: Vec<String>,
    /// Receiver URL.
    pub url: String,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `user:password` for the receiver.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// `json` (default).
    #[serde(default)]
    pub format: Option<String>,
    /// Events per request (default 100).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Seconds to fill a batch (default 10).
    #[serde(default)]
    pub batch_duration: Option<f64>,
    /// `none` (default) or `gzip`.
    #[serde(default)]
    pub compression: Option<String>,
    /// Keep events while the receiver fails (default false).
    #[serde(default)]
    pub persistent: Option<bool>,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// Whether `ip` is loopback, private, link-local, unspecified or otherwise not public.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64 // 100.64/10, shared
        }
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || (v.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v.to_ipv4_mapped().is_some_and(|m| is_private(IpAddr::V4(m)))
        }
    }
}

/// Checks a receiver URL: http or https, a host, and (unless allowed) no private address.
/// Blocking (it may resolve the name).
pub fn check_target(url: &str, allow_private: bool) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("url: {url:?} must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("url: {url:?} has no host"));
    }
    if allow_private {
        return Ok(());
    }
    let with_port = if authority.starts_with('[') {
        if authority.contains("]:") {
            authority.to_string()
        } else {
            format!("{authority}:80")
        }
    } else if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<IpAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("url: cannot resolve {authority:?}: {e}"))?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        return Err(format!("url: {authority:?} resolves to nothing"));
    }
    if let Some(ip) = addrs.iter().find(|ip| is_private(**ip)) {
        return Err(format!(
            "url: {authority:?} is a loopback, private or link-local address ({ip}); set allow_private_webhook_targets to allow it"
        ));
    }
    Ok(())
}

fn check_topics(who: &Principal, topics: &[String]) -> Result<(), ApiError> {
    if topics.is_empty() {
        return Err(ApiError::BadRequest("topics: at least one".into()));
    }
    for t in topics {
        if let Some(pattern) = t.strip_prefix("DataPoint/") {
            meterstream_storage::path::validate_pattern(pattern)
                .map_err(|e| ApiError::BadRequest(format!("topics: {t:?}: {e}")))?;
            if !who.covers_pattern(pattern) {
                return Err(ApiError::Forbidden(format!(
                    "topics: {t:?} reaches outside this credential's scope"
                )));
            }
        } else if t != "AlarmStatus" && t != "devices" {
            return Err(ApiError::BadRequest(format!(
                "topics: {t:?} is not DataPoint/<pattern>, AlarmStatus or devices"
            )));
        }
    }
    Ok(())
}

fn monitor_json(m: &Monitor) -> Value {
    json!({
        "id": m.id,
        "topics": m.topics,
        "url": m.url,
        "method": m.method,
        "headers": m.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
        "auth_token": m.auth_token.as_ref().map(|_| "********"),
        "format": m.format,
        "batch_size": m.batch_size,
        "batch_duration": m.batch_duration_ms as f64 / 1000.0,
        "compression": m.compression,
        "persistent": m.persistent,
        "description": m.description,
        "status": m.status,
        "created": format_iso(m.created),
        "secret_rotation_until": m.rotation_until.map(format_iso),
    })
}

/// Applies a body to a monitor, checking every field.
fn apply(m: &mut Monitor, b: MonitorBody) -> Result<(), ApiError> {
    let bad = |s: String| Err(ApiError::BadRequest(s));
    let method = b
        .method
        .unwrap_or_else(|| "POST".into())
        .to_ascii_uppercase();
    if method != "POST" && method != "PUT" {
        return bad(format!("method: {method:?} is not POST or PUT"));
    }
    let format = b.format.unwrap_or_else(|| "json".into());
    if format != "json" {
        return bad(format!("format: {format:?} is not json"));
    }
    let batch_size = b.batch_size.unwrap_or(100);
    if !(1..=10_000).contains(&batch_size) {
        return bad(format!("batch_size: {batch_size} is not in 1..=10000"));
    }
    let dur = b.batch_duration.unwrap_or(10.0);
    if !dur.is_finite() || !(0.0..=3600.0).contains(&dur) {
        return bad(format!("batch_duration: {dur} is not 0 to 3600 seconds"));
    }
    let compression = b.compression.unwrap_or_else(|| "none".into());
    if compression != "none" && compression != "gzip" {
        return bad(format!("compression: {compression:?} is not none or gzip"));
    }
    if let Some(t) = &b.auth_token {
        if !t.contains(':') {
            return bad("auth_token: must be user:password".into());
        }
    }
    for k in b.headers.keys() {
        let lower = k.to_ascii_lowercase();
        if lower.starts_with("webhook-") || lower == "content-type" || lower == "content-length" {
            return bad(format!("headers: {k:?} is set by the server"));
        }
    }
    m.topics = b.topics;
    m.url = b.url;
    m.method = method;
    m.headers = b.headers.into_iter().collect();
    m.auth_token = b.auth_token;
    m.format = format;
    m.batch_size = batch_size;
    m.batch_duration_ms = (dur * 1000.0) as u64;
    m.compression = compression;
    m.persistent = b.persistent.unwrap_or(m.persistent);
    m.description = b.description;
    Ok(())
}

fn visible(who: &Principal, m: &Monitor) -> bool {
    who.has(Scope::Admin) || m.owner == who.id
}

fn parse_body(body: &[u8]) -> Result<MonitorBody, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid monitor: {e}")))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no monitor {id:?}"))
}

/// `GET /ws/v1/monitors/inventory`: the caller's monitors (every monitor for an admin).
pub async fn list(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let st2 = st.clone();
    let list = web::block(move || -> Result<Vec<Value>, ApiError> {
        let reg = &st2.devices.registry;
        reg.monitors()?
            .iter()
            .filter(|m| visible(&who, m))
            .map(|m| {
                Ok(with_state(
                    monitor_json(m),
                    reg.monitor_state(&m.id)?.as_ref(),
                ))
            })
            .collect()
    })
    .await??;
    Ok(HttpResponse::Ok().json(json!({"count": list.len(), "list": list})))
}

/// `POST /ws/v1/monitors/inventory`: the answer carries the signing secret, once.
pub async fn create(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let b = parse_body(&body)?;
    check_topics(&who, &b.topics)?;
    let secret = crate::webhook::new_secret();
    let mut m = Monitor {
        id: crate::auth::random_token(9),
        topics: Vec::new(),
        url: String::new(),
        method: String::new(),
        headers: Vec::new(),
        auth_token: None,
        format: String::new(),
        batch_size: 100,
        batch_duration_ms: 10_000,
        compression: String::new(),
        persistent: false,
        description: String::new(),
        secrets: vec![secret.clone()],
        rotation_until: None,
        status: "active".into(),
        created: now_ms(),
        owner: who.id.clone(),
    };
    apply(&mut m, b)?;
    let (url, allow) = (m.url.clone(), st.allow_private_webhook_targets);
    web::block(move || check_target(&url, allow))
        .await?
        .map_err(ApiError::BadRequest)?;
    let st2 = st.clone();
    let m2 = m.clone();
    web::block(move || -> Result<(), ApiError> {
        st2.devices.registry.put_monitor(&m2)?;
        st2.dispatcher.created(&m2).map_err(ApiError::Internal)
    })
    .await??;
    let mut v = monitor_json(&m);
    v["secret"] = secret.into();
    Ok(HttpResponse::Created().json(v))
}

async fn load(st: &web::Data<AppState>, who: &Principal, id: &str) -> Result<Monitor, ApiError> {
    let st2 = st.clone();
    let id2 = id.to_string();
    web::block(move || st2.devices.registry.monitor(&id2))
        .await??
        .filter(|m| visible(who, m))
        .ok_or_else(|| not_found(id))
}

fn monitor_id(req: &HttpRequest) -> String {
    req.match_info().get("id").unwrap_or_default().to_string()
}

/// `GET /ws/v1/monitors/inventory/{id}`.
pub async fn get(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let m = load(&st, &who, &monitor_id(&req)).await?;
    let (st2, id) = (st.clone(), m.id.clone());
    let state = web::block(move || st2.devices.registry.monitor_state(&id)).await??;
    Ok(HttpResponse::Ok().json(with_state(monitor_json(&m), state.as_ref())))
}

/// A monitor's answer with its delivery state: `status` (`active`, `suspended`, `disabled`),
/// `reason`, `last_sent`, `last_attempt`, `failures`, `failing_since`.
fn with_state(mut v: Value, st: Option<&MonitorState>) -> Value {
    let Some(st) = st else { return v };
    if !st.status.is_empty() {
        v["status"] = st.status.clone().into();
    }
    v["reason"] = st.reason.clone().into();
    v["last_sent"] = st.last_sent.map(format_iso).into();
    v["last_attempt"] = st.last_attempt.map(format_iso).into();
    v["failures"] = st.failures.into();
    v["failing_since"] = st.failing_since.map(format_iso).into();
    v["lost_events"] = st.lost_events.into();
    v
}

/// `POST /ws/v1/monitors/inventory/{id}/reset`: re-enables the monitor; a persistent one first
/// sends the events kept meanwhile, flagged `replay: true`.
pub async fn reset(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let m = load(&st, &who, &monitor_id(&req)).await?;
    let (st2, m2) = (st.clone(), m.clone());
    let state = web::block(move || st2.dispatcher.reset(&m2))
        .await?
        .map_err(ApiError::Internal)?;
    Ok(HttpResponse::Ok().json(with_state(monitor_json(&m), Some(&state))))
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "attempt": d.seq,
        "batch_id": d.batch_id,
        "time": format_iso(d.time),
        "status": d.status,
        "error": d.error,
        "duration_ms": d.duration_ms,
        "events": d.events,
        "ok": d.ok,
        "replay": d.replay,
    })
}

/// `GET /ws/v1/monitors/history/{id}`: recent delivery attempts, newest first (`size`,
/// `cursor`; `failed=true` for the failed ones only).
pub async fn history(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let before = match p.number_cursor()? {
        0 => None,
        n => Some(n),
    };
    let failed = p.flag("failed")?;
    p.finish(&["size", "cursor", "failed"])?;
    let m = load(&st, &who, &monitor_id(&req)).await?;
    let st2 = st.clone();
    let (list, next) = web::block(move || -> Result<_, ApiError> {
        let mut out = Vec::new();
        let mut before = before;
        let mut next = None;
        'pages: loop {
            let page = st2.devices.registry.deliveries(&m.id, before, 500)?;
            let Some(last) = page.last() else { break };
            before = Some(last.seq);
            for d in page {
                if failed && d.ok {
                    continue;
                }
                if out.len() == size {
                    next = out.last().map(|x: &Delivery| x.seq);
                    break 'pages;
                }
                out.push(d);
            }
        }
        Ok((out, next))
    })
    .await??;
    let items: Vec<Value> = list.iter().map(delivery_json).collect();
    let mut body = json!({"count": items.len(), "size": size, "list": items});
    if let Some(n) = next {
        body["cursor"] = crate::params::opaque_cursor(&n.to_string()).into();
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /ws/v1/monitors/history/{id}/{attempt}/replay`: sends the batch of a recorded attempt
/// again, once, flagged as a replay; answers with the new attempt.
pub async fn replay(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let m = load(&st, &who, &monitor_id(&req)).await?;
    let attempt: u64 = req
        .match_info()
        .get("attempt")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| ApiError::param("attempt", "not a number"))?;
    let (st2, mid) = (st.clone(), m.id.clone());
    let d = web::block(move || st2.devices.registry.delivery(&mid, attempt))
        .await??
        .ok_or_else(|| ApiError::NotFound(format!("no attempt {attempt} of monitor {:?}", m.id)))?;
    let dispatcher = st.dispatcher.clone();
    let out = dispatcher
        .replay(&m, &d)
        .await
        .map_err(|e| ApiError::Conflict(format!("the batch cannot be replayed: {e}")))?;
    Ok(HttpResponse::Ok().json(delivery_json(&out)))
}

/// `PUT /ws/v1/monitors/inventory/{id}`: replaces its settings (the secret stays).
pub async fn put(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let mut m = load(&st, &who, &monitor_id(&req)).await?;
    let b = parse_body(&body)?;
    check_topics(&who, &b.topics)?;
    apply(&mut m, b)?;
    let (url, allow) = (m.url.clone(), st.allow_private_webhook_targets);
    web::block(move || check_target(&url, allow))
        .await?
        .map_err(ApiError::BadRequest)?;
    let st2 = st.clone();
    let m2 = m.clone();
    let state = web::block(move || -> Result<_, ApiError> {
        st2.devices.registry.put_monitor(&m2)?;
        st2.dispatcher.updated(&m2).map_err(ApiError::Internal)?;
        Ok(st2.devices.registry.monitor_state(&m2.id)?)
    })
    .await??;
    Ok(HttpResponse::Ok().json(with_state(monitor_json(&m), state.as_ref())))
}

/// `DELETE /ws/v1/monitors/inventory/{id}`.
pub async fn delete(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let m = load(&st, &who, &monitor_id(&req)).await?;
    let st2 = st.clone();
    web::block(move || -> Result<(), ApiError> {
        st2.devices.registry.delete_monitor(&m.id)?;
        st2.dispatcher.reconcile().map_err(ApiError::Internal)
    })
    .await??;
    Ok(HttpResponse::NoContent().finish())
}

/// The body of a rotation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Seconds the previous secret keeps signing (default 86,400).
    #[serde(default)]
    pub overlap: Option<u64>,
}

/// `POST /ws/v1/monitors/inventory/{id}/rotate_secret`: a new secret (in the answer, once); the
/// previous one keeps signing, beside it, for `overlap` seconds.
pub async fn rotate(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let r: Rotation = if body.is_empty() {
        Rotation::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid rotation: {e}")))?
    };
    let overlap = r.overlap.unwrap_or(86_400);
    if overlap > 30 * 86_400 {
        return Err(ApiError::BadRequest("overlap: at most 30 days".into()));
    }
    let mut m = load(&st, &who, &monitor_id(&req)).await?;
    let secret = crate::webhook::new_secret();
    let previous = m.secrets.first().cloned();
    m.secrets = std::iter::once(secret.clone()).chain(previous).collect();
    m.rotation_until = Some(now_ms() + overlap as i64 * 1000);
    let st2 = st.clone();
    let m2 = m.clone();
    web::block(move || st2.devices.registry.put_monitor(&m2)).await??;
    let mut v = monitor_json(&m);
    v["secret"] = secret.into();
    Ok(HttpResponse::Ok().json(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_targets_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "https://10.1.2.3/x",
            "http://192.168.0.5",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/",
            "http://user@172.16.0.1/",
        ] {
            let e = check_target(url, false).unwrap_err();
            assert!(e.contains("private") || e.contains("resolve"), "{url}: {e}");
            assert!(check_target(url, true).is_ok(), "{url}");
        }
        assert!(check_target("ftp://example.com", true).is_err());
        assert!(check_target("http:///x", true).is_err());
        assert!(is_private("100.64.1.1".parse().unwrap()));
        assert!(!is_private("93.184.216.34".parse().unwrap()));
        assert!(!is_private("2606:4700::1111".parse().unwrap()));
        assert!(
            is_private("fd00::1".parse().unwrap())
                && is_private("::ffff:10.0.0.1".parse().unwrap())
        );
    }
}
