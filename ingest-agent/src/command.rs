//! Commands from the server, and the gateway's registration.
//!
//! Commands arrive two ways: by a long-poll (`GET /ws/v1/devices/{id}/commands/poll`, waiting
//! up to 60 s) and in the answers to uploads (which ask with `commands_after`). Both ask for the
//! commands after the last one this agent has finished; a command received twice (both ways, or
//! again after a lost answer) runs once. They run one at a time in id order, and each is
//! reported with its status and result. The id of the last finished command is kept in
//! `<spool dir>/commands.cursor`, so a restarted agent does not run a finished command again;
//! a command that was running when the agent stopped is delivered again and runs again.
//!
//! | command | parameters | result |
//! |---|---|---|
//! | `read_now` | — | every meter is read at once (uploaded within the flush interval); `{"meters": n}` |
//! | `set_interval` | `{"seconds": s}` (0.1 to 86400) | `{"interval": s}` |
//! | `get_status` | — | meters and their status, spool depth, uptime, versions, interval |
//! | `reconnect_meter` | `{"meter": name}` | its port is closed and reopened; `{"meter", "port"}` |
//!
//! Anything else fails with a result that says the command is unknown.

use crate::bus::{BusControl, Status};
use crate::config::{Config, ServerConfig};
use crate::upload::{lock, SharedSpool};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// A command as the server sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct Incoming {
    /// Its id.
    pub id: u64,
    /// What to do.
    pub command: String,
    /// Its parameters.
    #[serde(default)]
    pub parameters: Value,
}

/// The last command id finished, shared with the uploader (which asks for the commands after it).
#[derive(Debug, Default)]
pub struct Cursor(AtomicU64);

impl Cursor {
    /// The id.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn cursor_path(cfg: &Config) -> PathBuf {
    cfg.spool.dir.join("commands.cursor")
}

/// Reads the cursor kept in the spool directory (0 if there is none).
pub fn load_cursor(cfg: &Config) -> Cursor {
    let v = std::fs::read_to_string(cursor_path(cfg))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Cursor(AtomicU64::new(v))
}

fn store_cursor(path: &std::path::Path, id: u64) {
    let tmp = path.with_extension("tmp");
    let r = std::fs::write(&tmp, id.to_string()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::error!(path = %path.display(), "cannot keep the command cursor (finished commands may run again after a restart): {e}");
    }
}

/// What the commander can act on.
pub struct Commander {
    /// Configuration (server, device id, meters).
    pub cfg: Config,
    /// The last finished command id.
    pub cursor: Arc<Cursor>,
    /// Commands found in upload answers.
    pub from_uploads: mpsc::UnboundedReceiver<Vec<Incoming>>,
    /// The buses, in the order of `cfg.ports`.
    pub buses: Vec<BusControl>,
    /// The sampling interval, for every bus.
    pub interval: watch::Sender<Duration>,
    /// The spool.
    pub spool: SharedSpool,
    /// When the agent started.
    pub started: Instant,
}

fn client(timeout: Duration) -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| tracing::error!("cannot build the HTTP client: {e}"))
        .ok()
}

/// Adds the configured credentials to a request.
pub fn authorize(server: &ServerConfig, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    if let Some(key) = &server.api_key {
        req.bearer_auth(key)
    } else if let Some(user) = &server.username {
        req.basic_auth(user, server.password.as_ref())
    } else {
        req
    }
}

impl Commander {
    /// Runs for as long as the task runs: long-polls, takes commands from uploads, runs them.
    pub async fn run(mut self) {
        let Some(http) = client(Duration::from_secs(75)) else {
            return;
        };
        let base = self.cfg.server.url.trim_end_matches('/').to_string();
        let dev = self.cfg.device_id.clone();
        let poll_url = format!("{base}/ws/v1/devices/{dev}/commands/poll");
        let path = cursor_path(&self.cfg);
        let mut backoff = Duration::from_millis(500);
        loop {
            let after = self.cursor.get();
            let asked = Instant::now();
            let req = authorize(
                &self.cfg.server,
                http.get(&poll_url).query(&[("after", after), ("wait", 60)]),
            );
            let batch: Vec<Incoming> = tokio::select! {
                r = req.send() => match r {
                    Ok(r) if r.status().is_success() => {
                        backoff = Duration::from_millis(500);
                        match r.json::<Value>().await {
                            Ok(v) => serde_json::from_value(v["list"].clone()).unwrap_or_default(),
                            Err(_) => Vec::new(),
                        }
                    }
                    Ok(r) => {
                        tracing::debug!(status = %r.status(), "command poll refused");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!("command poll failed: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        continue;
                    }
                },
                Some(b) = self.from_uploads.recv() => b,
            };
            // A server that answers at once with nothing (not a long-poll) is asked again only
            // after a pause.
            if batch.is_empty() && asked.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut batch = batch;
            batch.sort_by_key(|c| c.id);
            for c in batch {
                // Already finished (it came both ways, or again after a lost answer).
                if c.id <= self.cursor.get() {
                    continue;
                }
                let (ok, result) = self.execute(&c).await;
                tracing::info!(id = c.id, command = %c.command, ok, "command run");
                self.report(&http, &base, c.id, ok, result).await;
                // They run in id order, so everything up to this one is finished.
                self.cursor.0.store(c.id, Ordering::Relaxed);
                store_cursor(&path, c.id);
            }
        }
    }

    async fn report(&self, http: &reqwest::Client, base: &str, id: u64, ok: bool, result: Value) {
        let url = format!("{base}/ws/v1/devices/{}/commands/{id}", self.cfg.device_id);
        let body = json!({"status": if ok { "succeeded" } else { "failed" }, "result": result});
        let mut backoff = Duration::from_millis(200);
        for _ in 0..8 {
            match authorize(&self.cfg.server, http.put(&url).json(&body))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => return,
                Ok(r) => tracing::warn!(id, status = %r.status(), "reporting a command failed"),
                Err(e) => tracing::warn!(id, "reporting a command failed: {e}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        tracing::error!(id, "gave up reporting a command's result");
    }

    /// Runs one command: (succeeded, result).
    pub async fn execute(&self, c: &Incoming) -> (bool, Value) {
        match c.command.as_str() {
            "read_now" => {
                for b in &self.buses {
                    b.sample_now.notify_one();
                }
                // The round is spooled and goes with the next upload (within the flush interval).
                let meters: usize = self.cfg.ports.iter().map(|p| p.meters.len()).sum();
                (true, json!({"meters": meters}))
            }
            "set_interval" => match c.parameters["seconds"].as_f64() {
                Some(s) if (0.1..=86_400.0).contains(&s) => {
                    let _ = self.interval.send(Duration::from_secs_f64(s));
                    (true, json!({"interval": s}))
                }
                _ => (
                    false,
                    json!({"error": "set_interval needs {\"seconds\": s} with s from 0.1 to 86400"}),
                ),
            },
            "get_status" => (true, self.status()),
            "reconnect_meter" => {
                let name = c.parameters["meter"].as_str().unwrap_or("");
                match self
                    .cfg
                    .ports
                    .iter()
                    .position(|p| p.meters.iter().any(|m| m.name == name))
                {
                    Some(i) => {
                        if let Some(b) = self.buses.get(i) {
                            b.reconnect.notify_one();
                        }
                        (
                            true,
                            json!({"meter": name, "port": self.cfg.ports[i].path.display().to_string()}),
                        )
                    }
                    None => (false, json!({"error": format!("no meter named {name:?}")})),
                }
            }
            other => (
                false,
                json!({"error": format!(
                    "unknown command {other:?}; this agent knows read_now, set_interval, get_status, reconnect_meter"
                )}),
            ),
        }
    }

    fn status(&self) -> Value {
        let mut meters = Vec::new();
        for (p, b) in self.cfg.ports.iter().zip(&self.buses) {
            let st = b.statuses.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for m in &p.meters {
                meters.push(json!({
                    "name": m.name,
                    "profile": m.profile,
                    "slave": m.slave,
                    "port": p.path.display().to_string(),
                    "status": st.get(&m.name).map_or("unknown", |s: &Status| s.as_str()),
                }));
            }
        }
        let sp = lock(&self.spool);
        json!({
            "meters": meters,
            "spool": {"points": sp.pending_points(), "bytes": sp.bytes(), "dropped_points": sp.dropped_points()},
            "uptime_s": self.started.elapsed().as_secs(),
            "interval_s": self.interval.borrow().as_secs_f64(),
            "versions": {"agent": env!("CARGO_PKG_VERSION")},
        })
    }
}

/// Reports the gateway to the server (`PUT /ws/v1/devices/inventory/{id}`): model, agent
/// version, meters, location. Retries with backoff until the server takes it.
pub async fn register(cfg: Config) {
    let Some(http) = client(Duration::from_secs(30)) else {
        return;
    };
    let url = format!(
        "{}/ws/v1/devices/inventory/{}",
        cfg.server.url.trim_end_matches('/'),
        cfg.device_id
    );
    let meters: Vec<Value> = cfg
        .ports
        .iter()
        .flat_map(|p| &p.meters)
        .map(|m| {
            let model = crate::profile::Profile::load(&m.profile)
                .map_or_else(|_| m.profile.clone(), |p| p.model);
            json!({"name": m.name, "model": model, "slave": m.slave})
        })
        .collect();
    let mut body = json!({
        "model": cfg.model,
        "agent_version": env!("CARGO_PKG_VERSION"),
        "meters": meters,
    });
    if let Some(m) = cfg
        .ports
        .iter()
        .flat_map(|p| &p.meters)
        .find(|m| m.latitude.is_some() && m.longitude.is_some())
    {
        body["location"] = json!({"latitude": m.latitude, "longitude": m.longitude});
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        match authorize(&cfg.server, http.put(&url).json(&body))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                tracing::info!("registered with the server");
                return;
            }
            Ok(r) => tracing::warn!(status = %r.status(), "registration refused; retrying"),
            Err(e) => tracing::debug!("registration failed: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}
