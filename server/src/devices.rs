//! Devices and their commands over HTTP (design: `docs/devices.md`):
//!
//! | route | what |
//! |---|---|
//! | `GET /ws/v1/devices/inventory` (`query`, `size`, `cursor`) | devices with connection status and health |
//! | `GET, PUT /ws/v1/devices/inventory/{id}` | one device; PUT is the agent's report (model, version, meters, location) or an update of tags and group |
//! | `GET /ws/v1/devices/history/{id}` (`size`, `cursor`) | connection status changes |
//! | `POST, GET /ws/v1/devices/{id}/commands` | queue a command `{command, parameters, lifetime}`; list them (`size`, `cursor`) |
//! | `GET /ws/v1/devices/{id}/commands/poll` (`after`, `wait` ≤ 60) | the device's long-poll for its commands |
//! | `GET, PUT /ws/v1/devices/{id}/commands/{cid}` (`wait` ≤ 60) | one command, optionally waiting until it is finished; the device's report `{status, result}` |
//! | `POST /ws/v1/devices/{id}/commands/{cid}/cancel` | cancel a queued command |
//!
//! Uploads count as contact: `POST /ws/v1/streams/history` marks the devices of its points seen,
//! and with `commands_after=N` an upload from one device also carries that device's commands.

use crate::auth::{principal, Scope};
use crate::error::ApiError;
use crate::params::{opaque_cursor, Params};
use crate::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use meterstream_storage::registry::{
    Command, CommandStatus, Device, DeviceEvent, MeterInfo, Registry,
};
use meterstream_storage::time::{format_iso, now_ms};
use meterstream_storage::{StorageError, Store};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a poll or a wait may last, seconds.
pub const MAX_WAIT_S: u64 = 60;

#[derive(Debug, Clone)]
struct Live {
    last_seen: i64,
    address: Option<String>,
    connected: bool,
}

/// Device state held by the server: the registry, fresh contact times, and wake-ups for
/// long-polls.
pub struct Devices {
    /// The registry.
    pub registry: Arc<dyn Registry>,
    timeout_ms: i64,
    live: Mutex<HashMap<String, Live>>,
    notify: Mutex<HashMap<String, Arc<Notify>>>,
    /// Set when the server stops: waits end at once.
    closing: std::sync::atomic::AtomicBool,
    closed: Notify,
    /// On a cluster node: whether this node answers for a device now. Only those are marked
    /// disconnected by the sweep (another node's devices are its to sweep).
    holds: std::sync::OnceLock<crate::cluster::Holds>,
}

impl Devices {
    /// Device state over `registry`, with the inactivity timeout in seconds. Devices stored as
    /// connected get a full timeout from `now` to be heard from again. Blocking.
    pub fn new(
        registry: Arc<dyn Registry>,
        timeout_s: u64,
        now: i64,
    ) -> Result<Devices, StorageError> {
        let mut live = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = registry.devices(after.as_deref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for d in page {
                if d.connected {
                    live.insert(
                        d.id.clone(),
                        Live {
                            last_seen: now,
                            address: d.last_address.clone(),
                            connected: true,
                        },
                    );
                }
            }
        }
        Ok(Devices {
            registry,
            timeout_ms: (timeout_s as i64).saturating_mul(1000),
            live: Mutex::new(live),
            notify: Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            closed: Notify::new(),
            holds: std::sync::OnceLock::new(),
        })
    }

    /// On a cluster node: `holds(device)` says whether this node answers for the device now.
    /// Set once, at start.
    pub fn set_cluster(&self, holds: crate::cluster::Holds) {
        let _ = self.holds.set(holds);
    }

    fn answers_for(&self, device: &str) -> bool {
        self.holds.get().is_none_or(|f| f(device))
    }

    fn notifier(&self, id: &str) -> Arc<Notify> {
        self.notify
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Ends every long-poll and wait now (the server is stopping), and any later one at once.
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.closed.notify_waiters();
    }

    /// Wakes everyone waiting on device `id` (new or changed commands).
    pub fn wake(&self, id: &str) {
        self.notifier(id).notify_waiters();
    }

    /// The device was heard from (an upload, a poll, a report). Registers it on first contact
    /// and records a reconnection. Blocking; writes the registry only on a status change.
    pub fn seen(&self, id: &str, address: Option<&str>, now: i64) -> Result<(), StorageError> {
        {
            let mut live = self.live.lock();
            if let Some(l) = live.get_mut(id) {
                l.last_seen = l.last_seen.max(now);
                if let Some(a) = address {
                    if l.address.as_deref() != Some(a) {
                        l.address = Some(a.to_string());
                    }
                }
                if l.connected {
                    return Ok(());
                }
            }
        }
        let mut d = self
            .registry
            .device(id)?
            .unwrap_or_else(|| Device::new(id, now));
        // Connected already when its newest event says so: a cluster node that takes over the
        // device's partition hears from it without a new connection (the events are every
        // node's).
        let last = self.registry.last_event(id)?;
        let reconnect = last.as_ref().is_none_or(|e| e.status != "connected");
        d.connected = true;
        d.last_connect = if reconnect {
            Some(now)
        } else {
            d.last_connect.or(last.map(|e| e.time))
        };
        d.last_seen = Some(now);
        if let Some(a) = address {
            d.last_address = Some(a.to_string());
        }
        self.registry.put_device(&d)?;
        if reconnect {
            self.registry.add_event(
                id,
                DeviceEvent {
                    seq: 0,
                    time: now,
                    status: "connected".into(),
                    address: address.map(str::to_string),
                },
            )?;
        }
        self.live.lock().insert(
            id.to_string(),
            Live {
                last_seen: now,
                address: address.map(str::to_string),
                connected: true,
            },
        );
        if reconnect {
            tracing::info!(device = id, "device connected");
        }
        Ok(())
    }

    /// Marks devices silent for longer than the timeout disconnected and expires commands past
    /// their lifetime. Blocking; the server calls it every second.
    pub fn sweep(&self, now: i64) -> Result<(), StorageError> {
        let stale: Vec<(String, i64)> = {
            let mut live = self.live.lock();
            live.iter_mut()
                .map(|(id, l)| (id.as_str(), l))
                .filter(|(id, l)| {
                    l.connected && now - l.last_seen > self.timeout_ms && self.answers_for(id)
                })
                .map(|(id, l)| {
                    l.connected = false;
                    (id.to_string(), l.last_seen)
                })
                .collect()
        };
        for (id, last_seen) in stale {
            let mut d = self
                .registry
                .device(&id)?
                .unwrap_or_else(|| Device::new(&id, last_seen));
            d.connected = false;
            d.last_disconnect = Some(now);
            d.last_seen = Some(last_seen);
            self.registry.put_device(&d)?;
            self.registry.add_event(
                &id,
                DeviceEvent {
                    seq: 0,
                    time: now,
                    status: "disconnected".into(),
                    address: None,
                },
            )?;
            tracing::info!(device = %id, "device disconnected (inactive)");
        }
        for c in self.registry.expire(now)? {
            self.wake(&c.device_id);
        }
        Ok(())
    }

    /// Whether device `d` is connected and its last known address, with the contact the
    /// server saw since the registry was last written.
    pub fn connection(&self, d: &Device) -> (bool, Option<String>) {
        match self.live(&d.id) {
            Some(l) => (l.connected, l.address.or_else(|| d.last_address.clone())),
            None => (d.connected, d.last_address.clone()),
        }
    }

    /// The freshest last-seen time and address of a device.
    fn live(&self, id: &str) -> Option<Live> {
        self.live.lock().get(id).cloned()
    }

    /// Waits on device `id` until `ready` gives a value or `wait` passes; `ready` runs on the
    /// blocking pool.
    async fn wait_for<T: Send + 'static>(
        self: &Arc<Self>,
        id: &str,
        wait: Duration,
        ready: impl Fn(&Devices) -> Result<Option<T>, ApiError> + Send + Sync + Clone + 'static,
    ) -> Result<Option<T>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.notifier(id);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let (me, r) = (self.clone(), ready.clone());
            if let Some(v) = web::block(move || r(&me)).await?? {
                return Ok(Some(v));
            }
            if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(None);
            }
            tokio::select! {
                () = &mut notified => {}
                () = &mut closed => return Ok(None),
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }
}

/// The health of a device from its metrics streams' current values.
pub fn health(store: &dyn Store, id: &str) -> &'static str {
    // (stream, warning if, error if)
    type Rule = (&'static str, fn(f64) -> bool, fn(f64) -> bool);
    const RULES: [Rule; 4] = [
        ("metrics/sys/cpu/used", |v| v >= 90.0, |v| v >= 98.0),
        ("metrics/sys/mem/free", |v| v < 32e6, |v| v < 8e6),
        (
            "metrics/spool/depth",
            |v| v > 100_000.0,
            |v| v > 1_000_000.0,
        ),
        ("metrics/spool/dropped", |v| v > 0.0, |_| false),
    ];
    let mut known = false;
    let mut worst = 0;
    for (stream, warn, err) in RULES {
        let Ok(info) = store.stream(&format!("{id}/{stream}")) else {
            continue;
        };
        let Some(v) = info.current.as_ref().and_then(|p| p.value.as_f64()) else {
            continue;
        };
        known = true;
        worst = worst.max(if err(v) {
            2
        } else if warn(v) {
            1
        } else {
            0
        });
    }
    match (known, worst) {
        (false, _) => "Unknown",
        (true, 0) => "Normal",
        (true, 1) => "Warning",
        _ => "Error",
    }
}

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(format_iso(m)))
}

fn device_json(d: &Device, live: Option<Live>, health: &str) -> Value {
    let last_seen = live.as_ref().map(|l| l.last_seen).or(d.last_seen);
    let connected = live.as_ref().map_or(d.connected, |l| l.connected);
    json!({
        "id": d.id,
        "connection_status": if connected { "connected" } else { "disconnected" },
        "health": health,
        "model": d.model,
        "agent_version": d.agent_version,
        "meters": d.meters,
        "location": d.location.map(|(la, lo)| json!({"latitude": la, "longitude": lo})),
        "tags": d.tags,
        "group": d.group,
        "registered": format_iso(d.registered),
        "last_connect": time(d.last_connect),
        "last_disconnect": time(d.last_disconnect),
        "last_seen": time(last_seen),
        "last_address": live.and_then(|l| l.address).or_else(|| d.last_address.clone()),
    })
}

/// A command as the API shows it.
pub fn command_json(c: &Command) -> Value {
    json!({
        "id": c.id,
        "device_id": c.device_id,
        "command": c.command,
        "parameters": c.parameters,
        "lifetime": c.lifetime,
        "status": c.status,
        "result": c.result,
        "created": format_iso(c.created),
        "updated": format_iso(c.updated),
        "expires": format_iso(c.expires),
    })
}

/// Checks a short name (a group, a tag, a meter, a user): 1 to 100 characters, none of them a
/// control character; the error names `field`.
pub fn check_name(field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.chars().count() > 100 || v.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "{field}: {v:?} must be 1 to 100 characters without control characters"
        )));
    }
    Ok(())
}

fn device_id(req: &HttpRequest) -> Result<String, ApiError> {
    let id = req.match_info().get("id").unwrap_or_default().to_string();
    if id.is_empty() || id.contains('/') {
        return Err(ApiError::BadRequest(format!("{id:?} is not a device id")));
    }
    meterstream_storage::path::validate_path(&id)?;
    Ok(id)
}

/// The client's address: the peer's, or on a request forwarded by another node of a cluster,
/// the one that node saw.
fn address(req: &HttpRequest) -> Option<String> {
    let h = req.headers();
    if h.contains_key(crate::cluster::HOP_HEADER) {
        if let Some(a) = h
            .get(crate::cluster::CLIENT_ADDRESS_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            return Some(a.to_string());
        }
    }
    req.peer_addr().map(|a| a.ip().to_string())
}

/// Changes a command to `status` (a device's report: sent, succeeded or failed; or cancelled),
/// with `result` unless it is null, or says why it may not change: a finished command does not
/// change, and only a queued one can be cancelled.
pub fn change_command(c: &mut Command, status: CommandStatus, result: Value) -> Result<(), String> {
    let id = c.id;
    if status == CommandStatus::Cancelled {
        if c.status != CommandStatus::Queued {
            return Err(format!(
                "only a queued command can be cancelled; command {id} is {}",
                serde_json::to_value(c.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ));
        }
    } else if c.status.is_final() {
        return Err(format!("command {id} is already {:?}", c.status).to_lowercase());
    }
    c.status = status;
    if !result.is_null() {
        c.result = result;
    }
    Ok(())
}

/// Changes a command through the cluster's log (its partition's holder, this node, applies
/// it), or in the registry on a single node; `None` when there is no such command. Blocking.
fn update_command(
    st: &AppState,
    device: &str,
    cid: u64,
    status: CommandStatus,
    result: Value,
) -> Result<Option<Result<Command, String>>, ApiError> {
    let registry = &st.devices.registry;
    let Some(c) = &st.cluster else {
        return Ok(registry.update_command(device, cid, now_ms(), &mut |c| {
            change_command(c, status, result.clone())
        })?);
    };
    let Some(mut current) = registry.command(device, cid)? else {
        return Ok(None);
    };
    if let Err(m) = change_command(&mut current, status, result.clone()) {
        return Ok(Some(Err(m)));
    }
    c.record(
        device,
        &crate::cluster::LogRecord::CommandUpdate {
            device: device.to_string(),
            id: cid,
            status,
            result,
            now: now_ms(),
        },
    )?;
    match registry.command(device, cid)? {
        Some(after) if after.status == status => Ok(Some(Ok(after))),
        Some(after) => Ok(Some(Err(format!(
            "command {cid} changed meanwhile; it is {:?}",
            after.status
        )
        .to_lowercase()))),
        None => Ok(None),
    }
}

fn wait_param(p: &mut Params) -> Result<Duration, ApiError> {
    match p.take("wait")? {
        None => Ok(Duration::ZERO),
        Some(s) => match s.trim().parse::<u64>() {
            Ok(n) if n <= MAX_WAIT_S => Ok(Duration::from_secs(n)),
            _ => Err(ApiError::param(
                "wait",
                format!("{s:?} is not a whole number of seconds from 0 to {MAX_WAIT_S}"),
            )),
        },
    }
}

fn u64_param(p: &mut Params, name: &str) -> Result<u64, ApiError> {
    match p.take(name)? {
        None => Ok(0),
        Some(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| ApiError::param(name, format!("{s:?} is not a whole number"))),
    }
}

/// A device query: `field op value` conditions joined by `and` over `id` (startsWith, contains,
/// =, <>), `connection_status`, `health`, `group`, `model` (=, <>) and `tags` (contains).
type DeviceFilter = Vec<(String, String, String)>;

fn parse_device_query(q: &str) -> Result<DeviceFilter, ApiError> {
    let t = crate::filter::triples(q)?;
    for (field, op, _) in &t {
        let ok = match field.as_str() {
            "id" => ["startswith", "contains", "=", "<>"].contains(&op.as_str()),
            "connection_status" | "health" | "group" | "model" => ["=", "<>"].contains(&op.as_str()),
            "tags" => op == "contains",
            _ => {
                return Err(crate::filter::query_error(format!(
                    "unknown field {field:?}; expected id, connection_status, health, group, model or tags"
                )))
            }
        };
        if !ok {
            return Err(crate::filter::query_error(format!(
                "operator {op:?} does not apply to {field}"
            )));
        }
    }
    Ok(t)
}

fn matches(f: &DeviceFilter, v: &Value) -> bool {
    f.iter().all(|(field, op, want)| {
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        match (field.as_str(), op.as_str()) {
            ("id", "startswith") => s("id").starts_with(want.as_str()),
            ("id", "contains") => s("id").contains(want.as_str()),
            ("tags", _) => v["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x.as_str() == Some(want))),
            (k, "=") => s(k).eq_ignore_ascii_case(want),
            (k, _) => !s(k).eq_ignore_ascii_case(want),
        }
    })
}

/// `GET /ws/v1/devices/inventory`.
pub async fn list(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let after = p.text_cursor()?;
    let filter = p
        .take("query")?
        .map(|q| parse_device_query(&q))
        .transpose()?;
    p.finish(&["query", "size", "cursor"])?;
    let st2 = st.clone();
    let (list, next) = web::block(move || -> Result<_, ApiError> {
        let dv = &st2.devices;
        let mut out = Vec::new();
        let mut after = after;
        let mut next = None;
        'pages: loop {
            let page = dv.registry.devices(after.as_deref(), 500)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for d in page {
                if !who.covers_device(&d.id) {
                    continue;
                }
                // A cluster node's registry also keeps devices it held before.
                if st2.cluster.as_ref().is_some_and(|c| !c.holds_device(&d.id)) {
                    continue;
                }
                let v = device_json(&d, dv.live(&d.id), health(&*st2.store, &d.id));
                if filter.as_ref().is_none_or(|f| matches(f, &v)) {
                    if out.len() == size {
                        next = out
                            .last()
                            .and_then(|x: &Value| x["id"].as_str())
                            .map(opaque_cursor);
                        break 'pages;
                    }
                    out.push(v);
                }
            }
        }
        Ok((out, next))
    })
    .await??;
    let mut body = json!({"count": list.len(), "size": size, "list": list});
    if let Some(c) = next {
        body["cursor"] = c.into();
    }
    // A cluster node asked by a client gathers every holder's devices (docs/scale-out.md).
    if let Some(c) = &st.cluster {
        if !req.headers().contains_key(crate::cluster::HOP_HEADER) {
            let id = |v: &Value| v["id"].as_str().unwrap_or_default().to_string();
            body = c
                .gather_with(
                    &req,
                    body,
                    id,
                    meterstream_storage::query::Order::Asc,
                    size,
                    |k| opaque_cursor(&k),
                )
                .await?;
        }
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /ws/v1/devices/inventory/{id}`.
pub async fn get(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    let id = device_id(&req)?;
    who.require_device(&id)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let st2 = st.clone();
    let v = web::block(move || -> Result<_, ApiError> {
        let dv = &st2.devices;
        let d = dv
            .registry
            .device(&id)?
            .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
        Ok(device_json(&d, dv.live(&id), health(&*st2.store, &id)))
    })
    .await??;
    Ok(HttpResponse::Ok().json(v))
}

/// What a device reports, or an operator sets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    /// Gateway model.
    pub model: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Meters.
    pub meters: Option<Vec<MeterInfo>>,
    /// `{latitude, longitude}`.
    pub location: Option<Location>,
    /// Tags (replaced whole).
    pub tags: Option<Vec<String>>,
    /// Group.
    pub group: Option<String>,
}

/// A position.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Degrees.
    pub latitude: f64,
    /// Degrees.
    pub longitude: f64,
}

/// `PUT /ws/v1/devices/inventory/{id}`: registers the device if new, applies the fields given.
pub async fn put(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    if !who.has(Scope::Device) {
        who.require(Scope::Write)?;
    }
    let id = device_id(&req)?;
    who.require_device(&id)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let u: DeviceUpdate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid device body: {e}")))?;
    for t in u.tags.iter().flatten() {
        check_name("tags", t)?;
    }
    if let Some(g) = &u.group {
        check_name("group", g)?;
    }
    for m in u.meters.iter().flatten() {
        check_name("meters.name", &m.name)?;
        check_name("meters.model", &m.model)?;
    }
    if let Some(l) = &u.location {
        if !(-90.0..=90.0).contains(&l.latitude) || !(-180.0..=180.0).contains(&l.longitude) {
            return Err(ApiError::BadRequest(
                "location: latitude must be within -90..=90 and longitude within -180..=180".into(),
            ));
        }
    }
    let addr = address(&req);
    let st2 = st.clone();
    let v = web::block(move || -> Result<_, ApiError> {
        let dv = &st2.devices;
        let now = now_ms();
        dv.seen(&id, addr.as_deref(), now)?;
        let mut d = dv
            .registry
            .device(&id)?
            .unwrap_or_else(|| Device::new(&id, now));
        if let Some(v) = u.model {
            d.model = Some(v);
        }
        if let Some(v) = u.agent_version {
            d.agent_version = Some(v);
        }
        if let Some(v) = u.meters {
            d.meters = v;
        }
        if let Some(l) = u.location {
            d.location = Some((l.latitude, l.longitude));
        }
        if let Some(v) = u.tags {
            d.tags = v;
        }
        if let Some(v) = u.group {
            d.group = Some(v);
        }
        dv.registry.put_device_info(&d)?;
        Ok(device_json(&d, dv.live(&id), health(&*st2.store, &id)))
    })
    .await??;
    Ok(HttpResponse::Ok().json(v))
}

/// `GET /ws/v1/devices/history/{id}`.
pub async fn history(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    let id = device_id(&req)?;
    who.require_device(&id)?;
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let after = p.number_cursor()?;
    p.finish(&["size", "cursor"])?;
    let st2 = st.clone();
    let events = web::block(move || -> Result<_, ApiError> {
        let dv = &st2.devices;
        if dv.registry.device(&id)?.is_none() {
            return Err(ApiError::NotFound(format!("no device {id:?}")));
        }
        Ok(dv.registry.events(&id, after, size + 1)?)
    })
    .await??;
    let more = events.len() > size;
    let list: Vec<Value> = events
        .iter()
        .take(size)
        .map(|e| json!({"seq": e.seq, "time": format_iso(e.time), "status": e.status, "address": e.address}))
        .collect();
    let mut body = json!({"count": list.len(), "size": size, "list": list});
    if more {
        body["cursor"] = opaque_cursor(&events[size - 1].seq.to_string()).into();
    }
    Ok(HttpResponse::Ok().json(body))
}

/// A new command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCommand {
    /// What to do.
    pub command: String,
    /// Its parameters.
    #[serde(default)]
    pub parameters: Value,
    /// Seconds it may wait for delivery; default 3600.
    #[serde(default)]
    pub lifetime: Option<u64>,
}

/// Longest command lifetime, seconds (30 days).
pub const MAX_LIFETIME_S: u64 = 30 * 86_400;

/// `POST /ws/v1/devices/{id}/commands`.
pub async fn create_command(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    let id = device_id(&req)?;
    who.require_device(&id)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let c: NewCommand = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid command body: {e}")))?;
    if c.command.trim().is_empty() || c.command.len() > 128 {
        return Err(ApiError::BadRequest(
            "command: must be a name of 1 to 128 characters".into(),
        ));
    }
    let lifetime = c.lifetime.unwrap_or(3600);
    if lifetime == 0 || lifetime > MAX_LIFETIME_S {
        return Err(ApiError::BadRequest(format!(
            "lifetime: {lifetime} is not a number of seconds from 1 to {MAX_LIFETIME_S}"
        )));
    }
    let st2 = st.clone();
    let id2 = id.clone();
    let cmd = web::block(move || -> Result<_, ApiError> {
        let dv = &st2.devices;
        let Some(cluster) = &st2.cluster else {
            return Ok(dv.registry.create_command(
                &id2,
                &c.command,
                c.parameters,
                lifetime,
                now_ms(),
            )?);
        };
        // In a cluster the command is a record of the device's partition: its holder (this
        // node: the request was routed here) and any later one have it.
        let seq = cluster.record(
            &id2,
            &crate::cluster::LogRecord::CommandCreate {
                device: id2.clone(),
                command: c.command,
                parameters: c.parameters,
                lifetime,
                now: now_ms(),
            },
        )?;
        dv.registry
            .command(&id2, seq)?
            .ok_or_else(|| ApiError::Internal(format!("command {seq} applied but not found")))
    })
    .await??;
    st.devices.wake(&id);
    Ok(HttpResponse::Created().json(command_json(&cmd)))
}

/// `GET /ws/v1/devices/{id}/commands`.
pub async fn list_commands(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    if !who.has(Scope::Device) {
        who.require(Scope::Read)?;
    }
    let id = device_id(&req)?;
    who.require_device(&id)?;
    let mut p = Params::parse(req.query_string())?;
    let size = p.size()?;
    let after = p.number_cursor()?;
    p.finish(&["size", "cursor"])?;
    let st2 = st.clone();
    let cmds = web::block(move || st2.devices.registry.commands(&id, after, size + 1)).await??;
    let more = cmds.len() > size;
    let list: Vec<Value> = cmds.iter().take(size).map(command_json).collect();
    let mut body = json!({"count": list.len(), "size": size, "list": list});
    if more {
        body["cursor"] = opaque_cursor(&cmds[size - 1].id.to_string()).into();
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /ws/v1/devices/{id}/commands/poll`: the device's commands after id `after`, waiting up
/// to `wait` seconds for one.
pub async fn poll(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Device)?;
    let id = device_id(&req)?;
    who.require_device(&id)?;
    let mut p = Params::parse(req.query_string())?;
    let after = u64_param(&mut p, "after")?;
    let wait = wait_param(&mut p)?;
    p.finish(&["after", "wait"])?;
    let addr = address(&req);
    let dv = st.devices.clone();
    {
        let (dv, id) = (dv.clone(), id.clone());
        web::block(move || dv.seen(&id, addr.as_deref(), now_ms())).await??;
    }
    let id2 = id.clone();
    let got = dv
        .wait_for(&id, wait, move |d| {
            let c = d.registry.deliver(&id2, after, now_ms())?;
            Ok((!c.is_empty()).then_some(c))
        })
        .await?
        .unwrap_or_default();
    // A long poll is contact for its whole length.
    {
        let (dv, id) = (dv.clone(), id.clone());
        let _ = web::block(move || dv.seen(&id, None, now_ms())).await;
    }
    let list: Vec<Value> = got.iter().map(command_json).collect();
    Ok(HttpResponse::Ok().json(json!({"count": list.len(), "list": list})))
}

fn command_id(req: &HttpRequest) -> Result<u64, ApiError> {
    let s = req.match_info().get("cid").unwrap_or_default();
    s.parse()
        .map_err(|_| ApiError::NotFound(format!("no command {s:?}")))
}

/// `GET /ws/v1/devices/{id}/commands/{cid}`, with `wait`: until the command is finished.
pub async fn get_command(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    if !who.has(Scope::Device) {
        who.require(Scope::Read)?;
    }
    let id = device_id(&req)?;
    who.require_device(&id)?;
    let cid = command_id(&req)?;
    let mut p = Params::parse(req.query_string())?;
    let wait = wait_param(&mut p)?;
    p.finish(&["wait"])?;
    let dv = st.devices.clone();
    let id2 = id.clone();
    let done = dv
        .wait_for(&id, wait, move |d| match d.registry.command(&id2, cid)? {
            None => Err(ApiError::NotFound(format!(
                "no command {cid} for device {id2:?}"
            ))),
            Some(c) if c.status.is_final() => Ok(Some(c)),
            Some(_) => Ok(None),
        })
        .await?;
    let c = match done {
        Some(c) => c,
        None => {
            let (dv, id) = (dv.clone(), id.clone());
            web::block(move || dv.registry.command(&id, cid))
                .await??
                .ok_or_else(|| ApiError::NotFound(format!("no command {cid}")))?
        }
    };
    Ok(HttpResponse::Ok().json(command_json(&c)))
}

/// The device's report on a command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// `succeeded` or `failed` (or `sent`, to acknowledge receipt).
    pub status: String,
    /// What it came to.
    #[serde(default)]
    pub result: Value,
}

/// `PUT /ws/v1/devices/{id}/commands/{cid}`: the device reports status and result.
pub async fn report(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Device)?;
    let id = device_id(&req)?;
    who.require_device(&id)?;
    let cid = command_id(&req)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let r: Report = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid report body: {e}")))?;
    let status = match CommandStatus::parse(&r.status) {
        Some(s @ (CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::Sent)) => s,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "status: {:?} is not succeeded, failed or sent",
                r.status
            )))
        }
    };
    let st2 = st.clone();
    let id2 = id.clone();
    let addr = address(&req);
    let out = web::block(move || -> Result<_, ApiError> {
        st2.devices.seen(&id2, addr.as_deref(), now_ms())?;
        update_command(&st2, &id2, cid, status, r.result)
    })
    .await??;
    st.devices.wake(&id);
    match out {
        None => Err(ApiError::NotFound(format!(
            "no command {cid} for device {id:?}"
        ))),
        Some(Err(m)) => Err(ApiError::Conflict(m)),
        Some(Ok(c)) => Ok(HttpResponse::Ok().json(command_json(&c))),
    }
}

/// `POST /ws/v1/devices/{id}/commands/{cid}/cancel`: cancels a queued command.
pub async fn cancel(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Write)?;
    let id = device_id(&req)?;
    who.require_device(&id)?;
    let cid = command_id(&req)?;
    Params::parse(req.query_string())?.finish(&[])?;
    let st2 = st.clone();
    let id2 = id.clone();
    let out =
        web::block(move || update_command(&st2, &id2, cid, CommandStatus::Cancelled, Value::Null))
            .await??;
    st.devices.wake(&id);
    match out {
        None => Err(ApiError::NotFound(format!(
            "no command {cid} for device {id:?}"
        ))),
        Some(Err(m)) => Err(ApiError::Conflict(m)),
        Some(Ok(c)) => Ok(HttpResponse::Ok().json(command_json(&c))),
    }
}

/// The sweep: disconnections and expiries, every second, for as long as the task runs.
pub async fn sweep_task(devices: Arc<Devices>) {
    let mut t = tokio::time::interval(Duration::from_secs(1));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        let d = devices.clone();
        match tokio::task::spawn_blocking(move || d.sweep(now_ms())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("device sweep: {e}"),
            Err(e) => tracing::error!("device sweep: {e}"),
        }
    }
}
