//! Monitor delivery (design: `docs/alarms.md`): one task per monitor pushes its events to its
//! receiver, at least once and in order, signed per Standard Webhooks 1.0.
//!
//! - **Sources.** Data point events come from the store's change feed (the log), alarm status
//!   and device events from the registry's outbox. A monitor keeps a cursor into each, durably,
//!   moved only after its receiver acknowledged a batch (2xx). The store keeps the log after a
//!   monitor's cursor (a feed hold), up to `feed_retention_bytes`.
//! - **Batches.** Up to `batch_size` events, or what came within `batch_duration` of the first
//!   one, merged from both sources in server time. The body is
//!   `{"Document":{"Msg":[...]}}`. A batch is retried as it is: same body, same `webhook-id`.
//! - **Failures.** Exponential backoff with jitter up to `webhook_max_backoff`; `Retry-After` on
//!   429 and 503; 410 disables the monitor. While it fails it is `suspended` and its events are
//!   kept. Past `webhook_retry_window` it is `disabled` and a system alarm is raised (status
//!   `system` / `monitors/<id>`). A reset re-enables it; a persistent monitor then sends the
//!   kept events, flagged `replay: true`; another one skips to the present.
//! - **Scope.** A monitor delivers only what its owner's credential may read.
//! - Requests run on a small runtime of their own, so that building and sending batches never
//!   competes with the HTTP workers' event loops.

use crate::auth::{Auth, Principal};
use meterstream_storage::alarm::{Observed, State};
use meterstream_storage::registry::{
    AlarmChange, AlarmChangeKind, Delivery, Monitor, MonitorState, OutboxEvent, Registry,
};
use meterstream_storage::time::{format_iso, now_ms};
use meterstream_storage::{Store, StreamType};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The alert id of system alarms (a monitor disabled).
pub const SYSTEM_ALERT: &str = "system";
/// Delivery attempts kept per monitor.
const KEEP_DELIVERIES: usize = 1000;
/// How often an idle worker looks for new events (besides being woken by new points).
const TICK: Duration = Duration::from_millis(25);

/// Settings of delivery.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Tenant in topics.
    pub tenant: String,
    /// Retry window, ms.
    pub retry_window_ms: i64,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Request timeout.
    pub timeout: Duration,
}

/// The feed consumer name of a monitor.
pub fn consumer(id: &str) -> String {
    format!("monitor/{id}")
}

/// Cursors: (log records done, matching events done of the next record, outbox).
pub type Cursors = (u64, u64, u64);

/// A batch of events.
pub struct Batch {
    /// The messages, each serialized (the body is assembled from them without a tree of
    /// values: building and dropping those showed as most of delivery's time in profiles).
    pub events: Vec<String>,
    /// Cursors before it.
    pub from: Cursors,
    /// Cursors after it.
    pub to: Cursors,
    /// Whether it carries replays.
    pub replay: bool,
    /// Log records lost before it (the log no longer held them).
    pub lost: Option<(u64, u64)>,
}

/// What an attempt came to.
#[derive(Debug)]
pub enum Outcome {
    /// 2xx.
    Ok(u16),
    /// 410: the receiver wants no more.
    Gone,
    /// Anything else; retry after at least this long, if the receiver said.
    Failed {
        /// HTTP status, if an answer came.
        status: Option<u16>,
        /// What happened.
        error: String,
        /// `Retry-After`.
        retry_after: Option<Duration>,
    },
}

struct WorkerHandle {
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the monitors' workers.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    client: reqwest::Client,
    cfg: DeliveryConfig,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    workers: Mutex<HashMap<String, WorkerHandle>>,
    data: Arc<Notify>,
    closing: AtomicBool,
    /// On a cluster node: whether this node delivers a monitor's alarm and device events
    /// (every node delivers the data points of the partitions it holds).
    delivers: std::sync::OnceLock<crate::cluster::Holds>,
}

impl Dispatcher {
    /// Starts a worker for every monitor.
    pub fn start(
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        cfg: DeliveryConfig,
    ) -> std::io::Result<Arc<Dispatcher>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("meterstream-webhooks")
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("meterstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        let data = Arc::new(Notify::new());
        let d2 = data.clone();
        store.on_applied(Box::new(move |_| d2.notify_waiters()));
        let d = Arc::new(Dispatcher {
            store,
            registry,
            client,
            cfg,
            handle: rt.handle().clone(),
            rt: Mutex::new(Some(rt)),
            workers: Mutex::new(HashMap::new()),
            data,
            closing: AtomicBool::new(false),
            delivers: std::sync::OnceLock::new(),
        });
        d.reconcile().map_err(std::io::Error::other)?;
        Ok(d)
    }

    /// On a cluster node: `delivers(monitor)` says whether this node delivers the monitor's
    /// alarm and device events (whose cursor the nodes share). Set once, at start.
    pub fn set_cluster(&self, delivers: crate::cluster::Holds) {
        let _ = self.delivers.set(delivers);
    }

    /// Starts workers for new monitors, wakes those of changed ones and stops those of deleted
    /// ones. Blocking.
    pub fn reconcile(self: &Arc<Self>) -> Result<(), String> {
        let monitors = self.registry.monitors().map_err(|e| e.to_string())?;
        let mut w = self.workers.lock();
        let ids: std::collections::HashSet<&str> = monitors.iter().map(|m| m.id.as_str()).collect();
        w.retain(|id, h| {
            let keep = ids.contains(id.as_str());
            if !keep {
                h.task.abort();
                let _ = self.store.feed_hold(&consumer(id), None);
            }
            keep
        });
        for m in &monitors {
            if let Some(h) = w.get(&m.id) {
                h.wake.notify_one();
                continue;
            }
            let wake = Arc::new(Notify::new());
            let task = self
                .handle
                .spawn(worker(self.clone(), m.id.clone(), wake.clone()));
            w.insert(m.id.clone(), WorkerHandle { wake, task });
        }
        Ok(())
    }

    /// Sets up a new monitor's cursors at the present (its events start now) and starts it.
    pub fn created(self: &Arc<Self>, m: &Monitor) -> Result<(), String> {
        let mut st = MonitorState {
            status: "active".into(),
            outbox_cursor: self.registry.outbox_last(),
            ..MonitorState::default()
        };
        if wants_data(m) {
            self.data_from_present(&m.id, &mut st)?;
        } else {
            self.registry
                .put_monitor_state(&m.id, &st)
                .map_err(|e| e.to_string())?;
        }
        self.reconcile()
    }

    /// Data point events start at the present: the log cursor and the hold move there, durably.
    fn data_from_present(&self, id: &str, st: &mut MonitorState) -> Result<(), String> {
        st.log_cursor = self.store.applied_seq();
        st.log_offset = 0;
        self.store
            .feed_hold(&consumer(id), Some(st.log_cursor))
            .map_err(|e| e.to_string())?;
        self.registry
            .put_monitor_state(id, st)
            .map_err(|e| e.to_string())
    }

    /// A monitor's topics or target changed: a monitor that now wants data points starts
    /// reading them at the present.
    pub fn updated(self: &Arc<Self>, m: &Monitor) -> Result<(), String> {
        let mut st = self
            .registry
            .monitor_state(&m.id)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let held = self.store.feed_consumer(&consumer(&m.id)).is_some();
        if wants_data(m) && !held {
            self.data_from_present(&m.id, &mut st)?;
        } else if !wants_data(m) && held {
            self.store
                .feed_hold(&consumer(&m.id), None)
                .map_err(|e| e.to_string())?;
        }
        self.reconcile()
    }

    /// `POST .../reset`: re-enables a monitor. A persistent one first sends the kept events,
    /// flagged as replays; another one starts at the present. Blocking.
    pub fn reset(self: &Arc<Self>, m: &Monitor) -> Result<MonitorState, String> {
        let mut st = self
            .registry
            .monitor_state(&m.id)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let head = (self.store.applied_seq(), self.registry.outbox_last());
        if m.persistent {
            st.replay_until = Some(head);
        } else {
            st.log_cursor = head.0;
            st.log_offset = 0;
            st.outbox_cursor = head.1;
            st.replay_until = None;
        }
        st.status = "active".into();
        st.reason = None;
        st.failures = 0;
        st.failing_since = None;
        self.registry
            .put_monitor_state(&m.id, &st)
            .map_err(|e| e.to_string())?;
        if wants_data(m) {
            self.store
                .feed_hold(&consumer(&m.id), Some(st.log_cursor))
                .map_err(|e| e.to_string())?;
        }
        self.system_alarm(&m.id, State::Reset, "reset")?;
        self.reconcile()?;
        Ok(st)
    }

    /// Sends a recorded batch again, once, flagged as a replay. Blocking for the gathering.
    pub async fn replay(self: &Arc<Self>, m: &Monitor, d: &Delivery) -> Result<Delivery, String> {
        let (this, m2, from, n) = (self.clone(), m.clone(), d.from, d.events);
        let batch = tokio::task::spawn_blocking(move || {
            let owner = this.owner(&m2)?;
            let st = MonitorState {
                log_cursor: from.0,
                log_offset: from.1,
                outbox_cursor: from.2,
                replay_until: Some((u64::MAX, u64::MAX)),
                ..MonitorState::default()
            };
            this.gather(&m2, &st, owner.as_ref(), n.max(1))
        })
        .await
        .map_err(|e| e.to_string())??;
        if batch.lost.is_some_and(|(from, _)| from <= d.to.0) {
            return Err("the log no longer holds this batch's data points".into());
        }
        let id = format!("msg_{}_{}_replay{}", m.id, d.seq, now_ms());
        let started = Instant::now();
        let outcome = self.send(m, &id, &batch.events).await;
        let rec = record(&id, &batch, &outcome, started, true);
        let reg = self.registry.clone();
        let mid = m.id.clone();
        tokio::task::spawn_blocking(move || reg.add_delivery(&mid, rec, KEEP_DELIVERIES))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Stops every worker.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        for (_, h) in self.workers.lock().drain() {
            h.task.abort();
        }
        if let Some(rt) = self.rt.lock().take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// The principal whose scope bounds what the monitor receives; `None` for an unlimited
    /// owner. A revoked or missing owner sees nothing.
    fn owner(&self, m: &Monitor) -> Result<Option<Principal>, String> {
        let c = self
            .registry
            .credential(&m.owner)
            .map_err(|e| e.to_string())?;
        let Some(c) = c.filter(|c| c.revoked.is_none()) else {
            return Ok(Some(Principal {
                id: m.owner.clone(),
                scopes: Vec::new(),
                prefixes: vec!["\u{0}".into()],
                groups: Vec::new(),
                group_prefixes: Vec::new(),
                device_id: None,
            }));
        };
        let mut p = Auth::principal_of(&c);
        if p.has(crate::auth::Scope::Admin) || !p.limited() {
            return Ok(None);
        }
        crate::auth::expand_groups(&mut p, &*self.registry).map_err(|e| e.to_string())?;
        Ok(Some(p))
    }

    /// The next batch after `st`'s cursors, at most `limit` events. Blocking.
    pub fn gather(
        &self,
        m: &Monitor,
        st: &MonitorState,
        owner: Option<&Principal>,
        limit: usize,
    ) -> Result<Batch, String> {
        let tenant = &self.cfg.tenant;
        let patterns: Vec<&str> = m
            .topics
            .iter()
            .filter_map(|t| t.strip_prefix("DataPoint/"))
            .collect();
        // On a cluster node, one node delivers a monitor's alarm and device events.
        let here = self.delivers.get().is_none_or(|f| f(&m.id));
        let alarms = here && m.topics.iter().any(|t| t == "AlarmStatus");
        let devices = here && m.topics.iter().any(|t| t == "devices");
        let replay_until = st.replay_until.unwrap_or((0, 0));
        let from = (st.log_cursor, st.log_offset, st.outbox_cursor);
        // Data point events, each with its time and the cursor after it.
        struct Item {
            time: i64,
            msg: Option<String>,
            replay: bool,
            after: Cursors,
        }
        let mut data: Vec<Item> = Vec::new();
        let mut lost = None;
        let mut data_end = (st.log_cursor, st.log_offset);
        if !patterns.is_empty() {
            let feed = self
                .store
                .feed(st.log_cursor, limit + st.log_offset as usize)
                .map_err(|e| e.to_string())?;
            lost = feed.lost;
            let mut first = true;
            let mut iso = String::new();
            let mut path_json = String::new();
            let mut topic_json = String::new();
            let mut last_path = "";
            'records: for rec in &feed.records {
                let seq = rec.seq();
                let skip = if first { st.log_offset } else { 0 };
                first = false;
                // Matching events of this record, to know which one is its last.
                let mut matching: Vec<(&str, &meterstream_storage::wal::PointRec)> = Vec::new();
                for (path, points) in rec.groups() {
                    if !patterns
                        .iter()
                        .any(|p| meterstream_storage::path::matches_pattern(p, path))
                        || owner.is_some_and(|o| !o.covers_path(path))
                    {
                        continue;
                    }
                    matching.extend(points.iter().map(|p| (&**path, p)));
                }
                let n = matching.len() as u64;
                let replay = seq <= replay_until.0;
                iso.clear();
                iso.push_str(&format_iso(rec.server_ts()));
                for (k, (path, p)) in matching.into_iter().enumerate().skip(skip as usize) {
                    if data.len() >= limit {
                        break 'records;
                    }
                    if path != last_path {
                        last_path = path;
                        path_json = serde_json::to_string(path).unwrap_or_default();
                        topic_json = serde_json::to_string(&format!("{tenant}/DataPoint/{path}"))
                            .unwrap_or_default();
                    }
                    let k = k as u64;
                    let after = if k + 1 == n {
                        (seq, 0, 0)
                    } else {
                        (seq - 1, k + 1, 0)
                    };
                    data.push(Item {
                        time: rec.server_ts(),
                        msg: Some(data_point_msg(
                            &topic_json,
                            path,
                            &path_json,
                            p,
                            &iso,
                            replay,
                        )),
                        replay,
                        after,
                    });
                }
            }
            data_end = if data.len() >= limit {
                data.last()
                    .map_or((st.log_cursor, st.log_offset), |i| (i.after.0, i.after.1))
            } else {
                (feed.next, 0)
            };
        }
        let mut outbox: Vec<Item> = Vec::new();
        let mut outbox_end = st.outbox_cursor;
        // The newest outbox number is in memory: an idle monitor reads nothing.
        if (alarms || devices) && self.registry.outbox_last() > st.outbox_cursor {
            let evs = self
                .registry
                .outbox_after(st.outbox_cursor, limit)
                .map_err(|e| e.to_string())?;
            let full = evs.len() >= limit;
            for ev in &evs {
                let wanted = (alarms && ev.topic.starts_with("AlarmStatus/"))
                    || (devices && ev.topic.starts_with("devices/"));
                let visible = match (owner, ev.device.as_deref()) {
                    (None, _) => true,
                    (Some(o), Some(d)) if !d.is_empty() => o.covers_device(d),
                    (Some(_), _) => false,
                };
                let replay = ev.seq <= replay_until.1;
                outbox.push(Item {
                    time: ev.timestamp,
                    msg: (wanted && visible).then(|| outbox_msg(tenant, ev, replay)),
                    replay,
                    after: (0, 0, ev.seq),
                });
            }
            if !full {
                outbox_end = evs.last().map_or(outbox_end, |e| e.seq.max(outbox_end));
            }
        }
        // Merge in server time, data first on ties; events filtered out only move the cursor.
        let mut events = Vec::new();
        let mut replay = false;
        let (mut i, mut j) = (0, 0);
        let mut log_pos = (st.log_cursor, st.log_offset);
        let mut ob_pos = st.outbox_cursor;
        let mut full = false;
        while i < data.len() || j < outbox.len() {
            let take_data = j >= outbox.len() || (i < data.len() && data[i].time <= outbox[j].time);
            let item = if take_data {
                &mut data[i]
            } else {
                &mut outbox[j]
            };
            if item.msg.is_some() && events.len() >= limit {
                full = true;
                break;
            }
            if let Some(msg) = item.msg.take() {
                replay |= item.replay;
                events.push(msg);
            }
            if take_data {
                log_pos = (item.after.0, item.after.1);
                i += 1;
            } else {
                ob_pos = item.after.2;
                j += 1;
            }
        }
        if !full {
            if i >= data.len() {
                log_pos = data_end;
            }
            if j >= outbox.len() {
                ob_pos = outbox_end;
            }
        }
        let to = (log_pos.0, log_pos.1, ob_pos);
        Ok(Batch {
            events,
            from,
            to,
            replay,
            lost,
        })
    }

    /// One signed request with a batch.
    pub async fn send(&self, m: &Monitor, id: &str, events: &[String]) -> Outcome {
        let mut body = Vec::with_capacity(32 + events.iter().map(|e| e.len() + 1).sum::<usize>());
        body.extend_from_slice(b"{\"Document\":{\"Msg\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(e.as_bytes());
        }
        body.extend_from_slice(b"]}}");
        let now = now_ms();
        let secrets: Vec<&str> = m
            .secrets
            .iter()
            .take(if m.rotation_until.is_some_and(|t| t > now) {
                2
            } else {
                1
            })
            .map(String::as_str)
            .collect();
        let method = if m.method == "PUT" {
            reqwest::Method::PUT
        } else {
            reqwest::Method::POST
        };
        let mut req = self
            .client
            .request(method, &m.url)
            .header("content-type", "application/json");
        for (k, v) in crate::webhook::headers(&secrets, id, now / 1000, &body) {
            req = req.header(k, v);
        }
        for (k, v) in &m.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some((user, pass)) = m.auth_token.as_deref().and_then(|t| t.split_once(':')) {
            req = req.basic_auth(user, Some(pass));
        }
        // The signature covers the JSON as the receiver reads it after decoding.
        let req = if m.compression == "gzip" {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = gz.write_all(&body);
            match gz.finish() {
                Ok(z) => req.header("content-encoding", "gzip").body(z),
                Err(e) => {
                    return Outcome::Failed {
                        status: None,
                        error: format!("compressing: {e}"),
                        retry_after: None,
                    }
                }
            }
        } else {
            req.body(body)
        };
        match req.send().await {
            Err(e) => Outcome::Failed {
                status: None,
                error: if e.is_timeout() {
                    "timed out".into()
                } else {
                    format!("{e}")
                },
                retry_after: None,
            },
            Ok(r) => {
                let status = r.status().as_u16();
                if r.status().is_success() {
                    return Outcome::Ok(status);
                }
                if status == 410 {
                    return Outcome::Gone;
                }
                let retry_after = if status == 429 || status == 503 {
                    r.headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after)
                } else {
                    None
                };
                Outcome::Failed {
                    status: Some(status),
                    error: format!("answered {status}"),
                    retry_after,
                }
            }
        }
    }

    /// Raises (or resets) the system alarm of a monitor.
    fn system_alarm(&self, id: &str, to: State, reason: &str) -> Result<(), String> {
        let now = now_ms();
        let source = format!("monitors/{id}");
        let current = self
            .registry
            .status(SYSTEM_ALERT, &source)
            .map_err(|e| e.to_string())?;
        if current.map_or(State::Reset, |s| s.state).active() == to.active() {
            return Ok(());
        }
        self.registry
            .alarm_changes(
                &[AlarmChange {
                    event_id: format!("{SYSTEM_ALERT}/{source}/{now}/{to:?}"),
                    alert_id: SYSTEM_ALERT.into(),
                    source,
                    device: String::new(),
                    kind: AlarmChangeKind::Evaluated {
                        to,
                        at: now,
                        value: Some(Observed::Text(reason.into())),
                    },
                }],
                now,
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn wants_data(m: &Monitor) -> bool {
    m.topics.iter().any(|t| t.starts_with("DataPoint/"))
}

/// A data point message, written as JSON text: `topic_json` and `path_json` are the topic and
/// the path as JSON strings, `server_iso` the server time.
fn data_point_msg(
    topic_json: &str,
    path: &str,
    path_json: &str,
    p: &meterstream_storage::wal::PointRec,
    server_iso: &str,
    replay: bool,
) -> String {
    use std::fmt::Write;
    let ty = match p.value {
        meterstream_storage::Value::Text(_) => StreamType::String,
        _ => StreamType::Double,
    };
    let mut out = String::with_capacity(320);
    let _ = write!(
        out,
        "{{\"topic\":{topic_json},\"operation\":\"INSERTION\",\"timestamp\":\"{server_iso}\",\"replay\":{replay},\"DataPoint\":{{\"id\":\"{}\",\"stream_id\":{path_json},\"timestamp\":\"{}\",\"server_timestamp\":\"{server_iso}\",\"value\":{}",
        meterstream_storage::point::point_id(path, p.ts),
        format_iso(p.ts),
        p.value.to_json(ty),
    );
    if let Some(e) = p.extras.as_deref() {
        if let Some(q) = e.quality {
            let _ = write!(out, ",\"quality\":{q}");
        }
        if let Some(l) = &e.location {
            let _ = write!(out, ",\"location\":{}", Value::from(l.as_str()));
        }
        if let Some(d) = &e.description {
            let _ = write!(out, ",\"description\":{}", Value::from(d.as_str()));
        }
    }
    out.push_str("}}");
    out
}

fn outbox_msg(tenant: &str, ev: &OutboxEvent, replay: bool) -> String {
    let (kind, mut object) = if ev.topic.starts_with("AlarmStatus/") {
        ("AlarmStatus", ev.object.clone())
    } else {
        ("DeviceCore", ev.object.clone())
    };
    if kind == "AlarmStatus" {
        if let Some(ms) = object["changed"].as_i64() {
            object["changed"] = format_iso(ms).into();
        }
    }
    json!({
        "topic": format!("{tenant}/{}", ev.topic),
        "operation": ev.operation,
        "timestamp": format_iso(ev.timestamp),
        "replay": replay,
        "event_id": ev.id,
        kind: object,
    })
    .to_string()
}

/// `Retry-After` as seconds or an HTTP date, at most an hour.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let d = match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
        _ => {
            let t = jiff::fmt::rfc2822::parse(v.trim()).ok()?.timestamp();
            let ms = t.as_millisecond() - now_ms();
            Duration::from_millis(ms.max(0) as u64)
        }
    };
    Some(d.min(Duration::from_secs(3600)))
}

fn record(id: &str, b: &Batch, o: &Outcome, started: Instant, replay: bool) -> Delivery {
    let (status, error, ok) = match o {
        Outcome::Ok(s) => (Some(*s), None, true),
        Outcome::Gone => (
            Some(410),
            Some("410 Gone: the monitor is disabled".into()),
            false,
        ),
        Outcome::Failed { status, error, .. } => (*status, Some(error.clone()), false),
    };
    Delivery {
        seq: 0,
        batch_id: id.to_string(),
        time: now_ms() - started.elapsed().as_millis() as i64,
        status,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
        events: b.events.len(),
        ok,
        replay: replay || b.replay,
        from: b.from,
        to: b.to,
    }
}

fn backoff(failures: u32, max: Duration) -> Duration {
    use rand::Rng;
    let base = Duration::from_millis(500).saturating_mul(1u32 << failures.min(20));
    let d = base.min(max);
    d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
}

/// The worker of one monitor.
async fn worker(d: Arc<Dispatcher>, id: String, wake: Arc<Notify>) {
    let mut owner_read: Option<(Instant, Option<Principal>)> = None;
    let mut quiet_advance = Instant::now();
    loop {
        if d.closing.load(Ordering::Acquire) {
            return;
        }
        let r = worker_step(&d, &id, &wake, &mut owner_read, &mut quiet_advance).await;
        match r {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(monitor = %id, error = %e, "monitor delivery failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One batch: gathered, waited for, sent until it is taken or the monitor is disabled.
/// `Ok(false)` when the monitor is gone.
async fn worker_step(
    d: &Arc<Dispatcher>,
    id: &str,
    wake: &Arc<Notify>,
    owner_read: &mut Option<(Instant, Option<Principal>)>,
    quiet_advance: &mut Instant,
) -> Result<bool, String> {
    let (reg, mid) = (d.registry.clone(), id.to_string());
    let Some((m, st)) = blocking(move || {
        let m = reg.monitor(&mid).map_err(|e| e.to_string())?;
        let st = reg.monitor_state(&mid).map_err(|e| e.to_string())?;
        Ok(m.map(|m| (m, st)))
    })
    .await?
    else {
        return Ok(false);
    };
    let mut st = match st {
        Some(st) => st,
        // A cluster node learns a new monitor before its shared state: it waits for it,
        // rather than starting from nothing.
        None if d.delivers.get().is_some() => {
            let _ = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
            return Ok(true);
        }
        None => MonitorState::default(),
    };
    if st.status == "disabled" {
        let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
        return Ok(true);
    }
    if owner_read
        .as_ref()
        .is_none_or(|(t, _)| t.elapsed() > Duration::from_secs(10))
    {
        let (d2, m2) = (d.clone(), m.clone());
        let o = blocking(move || d2.owner(&m2)).await?;
        *owner_read = Some((Instant::now(), o));
    }
    let owner = owner_read.as_ref().and_then(|(_, o)| o.clone());
    let gather = |st: MonitorState, limit: usize| {
        let (d2, m2, o2) = (d.clone(), m.clone(), owner.clone());
        blocking(move || d2.gather(&m2, &st, o2.as_ref(), limit))
    };
    let mut batch = gather(st.clone(), m.batch_size).await?;
    if batch.events.is_empty() {
        // Nothing to send; move past filtered-out events (durably at most once a second, so
        // that a quiet monitor does not write for every record), then wait.
        if batch.to != batch.from && quiet_advance.elapsed() >= Duration::from_secs(1) {
            *quiet_advance = Instant::now();
            advance(d, &m, &mut st, &batch).await?;
            return Ok(true);
        }
        tokio::select! {
            _ = d.data.notified() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        return Ok(true);
    }
    // Fill the batch for up to batch_duration after its first event was seen.
    let deadline = Instant::now() + Duration::from_millis(m.batch_duration_ms);
    while batch.events.len() < m.batch_size && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = d.data.notified() => {}
            _ = tokio::time::sleep(left.min(TICK)) => {}
        }
        // Only what came since: the batch grows from where it ends.
        let mut from = st.clone();
        (from.log_cursor, from.log_offset, from.outbox_cursor) = batch.to;
        let more = gather(from, m.batch_size - batch.events.len()).await?;
        batch.events.extend(more.events);
        batch.to = more.to;
        batch.replay |= more.replay;
        batch.lost = batch.lost.or(more.lost);
    }
    if let Some((from, to)) = batch.lost {
        tracing::error!(monitor = %m.id, from, to, "the log no longer held data points this monitor had not received; they are lost to it");
        st.lost_events += to - from + 1;
    }
    // A batch id stable across retries: the monitor and the cursors it starts from.
    let batch_id = format!(
        "msg_{}_{}.{}.{}_{}",
        m.id,
        batch.from.0,
        batch.from.1,
        batch.from.2,
        batch.events.len()
    );
    let mut m = m;
    loop {
        let started = Instant::now();
        let outcome = d.send(&m, &batch_id, &batch.events).await;
        let rec = record(&batch_id, &batch, &outcome, started, false);
        let (reg, mid) = (d.registry.clone(), m.id.clone());
        blocking(move || {
            reg.add_delivery(&mid, rec, KEEP_DELIVERIES)
                .map_err(|e| e.to_string())
        })
        .await?;
        let now = now_ms();
        st.last_attempt = Some(now);
        match outcome {
            Outcome::Ok(_) => {
                let was_failing = st.failing_since.is_some();
                st.failures = 0;
                st.failing_since = None;
                st.status = "active".into();
                st.last_sent = Some(now);
                if was_failing {
                    // What came while the receiver was down is sent next: kept events, flagged
                    // as replays (a monitor that is not persistent skips them).
                    let head = (d.store.applied_seq(), d.registry.outbox_last());
                    if m.persistent {
                        st.replay_until = Some(head);
                    } else {
                        st.log_cursor = head.0;
                        st.log_offset = 0;
                        st.outbox_cursor = head.1;
                        batch.to = (head.0, 0, head.1);
                    }
                }
                advance(d, &m, &mut st, &batch).await?;
                return Ok(true);
            }
            Outcome::Gone => {
                disable(d, &m, &mut st, "the receiver answered 410 Gone").await?;
                return Ok(true);
            }
            Outcome::Failed {
                error, retry_after, ..
            } => {
                st.failures = st.failures.saturating_add(1);
                let since = *st.failing_since.get_or_insert(now);
                if now - since >= d.cfg.retry_window_ms {
                    let why = format!(
                        "the receiver failed for the whole retry window ({} s); last: {error}",
                        d.cfg.retry_window_ms / 1000
                    );
                    disable(d, &m, &mut st, &why).await?;
                    return Ok(true);
                }
                st.status = "suspended".into();
                let (reg, mid, st2) = (d.registry.clone(), m.id.clone(), st.clone());
                blocking(move || reg.put_monitor_state(&mid, &st2).map_err(|e| e.to_string()))
                    .await?;
                let wait = retry_after.unwrap_or_else(|| backoff(st.failures, d.cfg.max_backoff));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake.notified() => {}
                }
                // The monitor may have been changed, reset or deleted meanwhile.
                let (reg, mid) = (d.registry.clone(), m.id.clone());
                let fresh = blocking(move || {
                    Ok((
                        reg.monitor(&mid).map_err(|e| e.to_string())?,
                        reg.monitor_state(&mid).map_err(|e| e.to_string())?,
                    ))
                })
                .await?;
                match fresh {
                    (None, _) => return Ok(false),
                    (Some(fm), Some(fs)) => {
                        if fs.status == "disabled"
                            || (fs.log_cursor, fs.log_offset, fs.outbox_cursor) != batch.from
                        {
                            return Ok(true);
                        }
                        m = fm;
                        st.replay_until = fs.replay_until;
                    }
                    (Some(fm), None) => m = fm,
                }
            }
        }
    }
}

/// Moves the cursors past a delivered batch, durably, then lets the store drop the log before
/// them.
async fn advance(
    d: &Arc<Dispatcher>,
    m: &Monitor,
    st: &mut MonitorState,
    b: &Batch,
) -> Result<(), String> {
    st.log_cursor = b.to.0;
    st.log_offset = b.to.1;
    st.outbox_cursor = b.to.2;
    if st
        .replay_until
        .is_some_and(|(l, o)| st.log_cursor >= l && st.outbox_cursor >= o)
    {
        st.replay_until = None;
    }
    let (reg, store, mid, st2, data) = (
        d.registry.clone(),
        d.store.clone(),
        m.id.clone(),
        st.clone(),
        wants_data(m),
    );
    blocking(move || {
        reg.put_monitor_state(&mid, &st2)
            .map_err(|e| e.to_string())?;
        if data {
            store
                .feed_hold(&consumer(&mid), Some(st2.log_cursor))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
}

async fn disable(
    d: &Arc<Dispatcher>,
    m: &Monitor,
    st: &mut MonitorState,
    why: &str,
) -> Result<(), String> {
    tracing::error!(monitor = %m.id, reason = why, "monitor disabled; a system alarm is raised");
    st.status = "disabled".into();
    st.reason = Some(why.to_string());
    let (d2, mid, st2, why) = (d.clone(), m.id.clone(), st.clone(), why.to_string());
    blocking(move || {
        // The alarm first: whoever sees the monitor disabled finds the alarm raised.
        d2.system_alarm(&mid, State::Triggered, &why)?;
        d2.registry
            .put_monitor_state(&mid, &st2)
            .map_err(|e| e.to_string())
    })
    .await
}
