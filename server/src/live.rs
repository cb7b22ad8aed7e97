//! Live updates for the dashboards over Server-Sent Events (design `docs/dashboards.md`):
//! `GET /ws/v1/events?streams=<path>,<path>&alarms=true`.
//!
//! - `event: points`, `data: {"stream_id", "points": [[epoch ms, value], ...]}` for each
//!   written group of a listed stream, read from the store's change feed as it is applied;
//! - `event: alarm`, `data: <an alarm status, as /ws/v1/alerts/status shows it>` for each status
//!   change the caller may see, read from the outbox;
//! - with `commands=<device id>`, `event: command`, `data: <the command>` each time one of the
//!   device's commands made after the connection opened changes status;
//! - a comment line every 15 s keeps proxies from closing the connection.
//!
//! While any client is connected the feed keeps its in-memory ring (a hold named `live` at the
//! largest sequence number, which keeps the ring on without keeping any log).

use crate::auth::{principal, Scope};
use crate::error::ApiError;
use crate::params::Params;
use crate::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use meterstream_storage::registry::Registry;
use meterstream_storage::Store;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const CONSUMER: &str = "live";
/// Most streams one connection may follow.
pub const MAX_STREAMS: usize = 500;

/// The connected clients and the signal of new points.
pub struct Live {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    applied: Arc<Notify>,
    clients: Mutex<usize>,
    closing: std::sync::atomic::AtomicBool,
}

/// One connected client; the last one to go turns the ring off.
pub struct Client {
    live: Arc<Live>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut n = self.live.clients.lock();
        *n -= 1;
        if *n == 0 {
            let _ = self.live.store.feed_hold(CONSUMER, None);
        }
    }
}

impl Live {
    /// Live updates over `store` and `registry`. Blocking (it may drop a stale hold).
    pub fn new(store: Arc<dyn Store>, registry: Arc<dyn Registry>) -> Arc<Live> {
        // A hold left by a process that died with clients connected.
        let _ = store.feed_hold(CONSUMER, None);
        let applied = Arc::new(Notify::new());
        let a2 = applied.clone();
        store.on_applied(Box::new(move |_| a2.notify_waiters()));
        Arc::new(Live {
            store,
            registry,
            applied,
            clients: Mutex::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Ends every stream (the server is stopping: its graceful shutdown would otherwise wait
    /// for them).
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
        self.applied.notify_waiters();
    }

    fn connect(self: &Arc<Self>) -> Result<Client, ApiError> {
        let mut n = self.clients.lock();
        if *n == 0 {
            self.store.feed_hold(CONSUMER, Some(u64::MAX))?;
        }
        *n += 1;
        Ok(Client { live: self.clone() })
    }
}

struct Conn {
    _client: Client,
    live: Arc<Live>,
    who: crate::auth::Principal,
    streams: Arc<HashSet<String>>,
    alarms: bool,
    /// The device whose commands are followed, with each command's last status sent.
    commands: Option<(String, u64, std::collections::HashMap<u64, String>)>,
    cursor: u64,
    outbox: u64,
    last_sent: Instant,
}

fn sse(event: &str, data: &serde_json::Value, out: &mut String) {
    out.push_str("event: ");
    out.push_str(event);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

/// What happened since the connection's cursors (blocking).
fn read(c: &mut Conn) -> Result<String, ApiError> {
    let mut out = String::new();
    if !c.streams.is_empty() {
        let feed = c.live.store.feed(c.cursor, 50_000)?;
        for rec in &feed.records {
            for (path, points) in rec.groups() {
                if !c.streams.contains(&**path) {
                    continue;
                }
                let pts: Vec<serde_json::Value> = points
                    .iter()
                    .map(|p| {
                        let ty = match p.value {
                            meterstream_storage::Value::Text(_) => {
                                meterstream_storage::StreamType::String
                            }
                            _ => meterstream_storage::StreamType::Double,
                        };
                        serde_json::json!([p.ts, p.value.to_json(ty)])
                    })
                    .collect();
                sse(
                    "points",
                    &serde_json::json!({"stream_id": &**path, "points": pts}),
                    &mut out,
                );
            }
        }
        c.cursor = feed.next;
    } else {
        c.cursor = c.live.store.applied_seq();
    }
    if let Some((device, after, seen)) = &mut c.commands {
        for cmd in c.live.registry.commands(device, *after, 1000)? {
            let v = crate::devices::command_json(&cmd);
            let status = v["status"].as_str().unwrap_or_default().to_string();
            if seen.get(&cmd.id) != Some(&status) {
                seen.insert(cmd.id, status);
                sse("command", &v, &mut out);
            }
        }
        // Finished commands are not read again.
        let finished: Vec<u64> = seen
            .iter()
            .filter(|(_, s)| !matches!(s.as_str(), "queued" | "sent"))
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            if seen.keys().all(|k| *k >= id) {
                *after = id;
                seen.remove(&id);
            }
        }
    }
    if c.alarms && c.live.registry.outbox_last() > c.outbox {
        for ev in c.live.registry.outbox_after(c.outbox, 1000)? {
            c.outbox = ev.seq;
            if !ev.topic.starts_with("AlarmStatus/") {
                continue;
            }
            let Ok(s) = serde_json::from_value::<meterstream_storage::registry::AlarmStatus>(
                ev.object.clone(),
            ) else {
                continue;
            };
            if !crate::alerts::covers_source(&c.who, &s.source) {
                continue;
            }
            let alert = c.live.registry.alert(&s.alert_id)?;
            sse(
                "alarm",
                &crate::alerts::status_json(&s, alert.as_ref()),
                &mut out,
            );
        }
    }
    Ok(out)
}

/// `GET /ws/v1/events`: a Server-Sent Events stream of new points of `streams` (comma-separated
/// paths the caller may read, at most 500) and, with `alarms=true`, alarm status changes.
pub async fn events(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let who = principal(&req)?;
    who.require(Scope::Read)?;
    let mut p = Params::parse(req.query_string())?;
    let streams: HashSet<String> = p
        .take("streams")?
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let alarms = p.flag("alarms")?;
    let commands = p.take("commands")?;
    p.finish(&["streams", "alarms", "commands"])?;
    if let Some(d) = &commands {
        who.require_device(d)?;
    }
    if streams.len() > MAX_STREAMS {
        return Err(ApiError::param(
            "streams",
            format!("at most {MAX_STREAMS} streams per connection"),
        ));
    }
    for s in &streams {
        meterstream_storage::path::validate_path(s)
            .map_err(|e| ApiError::param("streams", format!("{s:?}: {e}")))?;
        who.require_path(s)?;
    }
    let live = st.live.clone();
    let commands = match commands {
        Some(d) => {
            // Commands made from now on: start after the newest one.
            let (reg, d2) = (live.registry.clone(), d.clone());
            let newest = web::block(move || -> Result<u64, ApiError> {
                let mut after = 0;
                loop {
                    let page = reg.commands(&d2, after, 1000)?;
                    match page.last() {
                        Some(c) => after = c.id,
                        None => return Ok(after),
                    }
                }
            })
            .await??;
            Some((d, newest, std::collections::HashMap::new()))
        }
        None => None,
    };
    let conn = Conn {
        commands,
        _client: live.connect()?,
        cursor: live.store.applied_seq(),
        outbox: live.registry.outbox_last(),
        live,
        who,
        streams: Arc::new(streams),
        alarms,
        last_sent: Instant::now(),
    };
    let first = futures_util::stream::once(async {
        Ok::<Bytes, ApiError>(Bytes::from_static(b": connected\n\n"))
    });
    let body = futures_util::stream::unfold(Some(conn), |c| async move {
        let mut c = c?;
        loop {
            let applied = c.live.applied.clone();
            let wait = applied.notified();
            // New points wake the connection; alarm changes are looked for twice a second (an
            // in-memory counter), and a comment goes out after 15 s of quiet.
            let _ = tokio::time::timeout(Duration::from_millis(500), wait).await;
            if c.live.closing.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            let (conn, text) = match web::block(move || {
                let r = read(&mut c);
                (c, r)
            })
            .await
            {
                Ok((conn, Ok(text))) => (conn, text),
                Ok((_, Err(e))) => {
                    tracing::warn!(error = %e, "live updates stopped");
                    return None;
                }
                Err(_) => return None,
            };
            c = conn;
            if !text.is_empty() {
                c.last_sent = Instant::now();
                return Some((Ok::<Bytes, ApiError>(Bytes::from(text)), Some(c)));
            }
            if c.last_sent.elapsed() >= Duration::from_secs(15) {
                c.last_sent = Instant::now();
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(c)));
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(futures_util::StreamExt::chain(first, body)))
}
