//! Putting the agent together: the spool, the channel layer, one task per serial bus, the spool
//! writer, the uploader and the health metrics. [`run`] takes its I/O from its caller: the
//! configuration (whose port paths may be pseudo-terminals) and a shutdown future.

use crate::channel::{Channels, Reading, Sample};
use crate::config::Config;
use crate::error::Result;
use crate::metrics::{CpuMeter, Snapshot, Stats};
use crate::spool::Spool;
use crate::upload::{lock, write_rounds, SharedSpool, Uploader};
use meterstream_storage::StreamType;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A running agent's handles, for tests and the binary.
#[derive(Clone)]
pub struct Handles {
    /// The channel layer (subscribe for local consumers).
    pub channels: Channels,
    /// The spool.
    pub spool: SharedSpool,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// The readings published once at start: each meter's position.
fn static_readings(cfg: &Config, now: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    for m in cfg.ports.iter().flat_map(|p| &p.meters) {
        for (name, v) in [("latitude", m.latitude), ("longitude", m.longitude)] {
            if let Some(v) = v {
                out.push(Reading {
                    channel: Arc::from(format!("{}/{name}", m.name)),
                    timestamp: now,
                    value: Sample::Number(v),
                    stream_type: StreamType::Double,
                    unit: Arc::from("degrees"),
                });
            }
        }
    }
    out
}

/// Runs the agent until `shutdown` completes; `started` receives its handles once it runs.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    started: Option<tokio::sync::oneshot::Sender<Handles>>,
) -> Result<()> {
    let t0 = Instant::now();
    let (spool, rec) = {
        let dir = cfg.spool.dir.clone();
        let (max, sync) = (cfg.spool.max_bytes, cfg.spool.sync);
        tokio::task::spawn_blocking(move || Spool::open(&dir, max, sync))
            .await
            .map_err(|e| crate::AgentError::spool(&cfg.spool.dir, e))??
    };
    if rec.records > 0 || rec.torn_bytes > 0 {
        tracing::info!(
            records = rec.records,
            points = rec.points,
            torn_bytes = rec.torn_bytes,
            "spool opened with readings to upload"
        );
    }
    let spool: SharedSpool = Arc::new(Mutex::new(spool));
    let stats = Arc::new(Stats::default());
    let channels = Channels::new();
    let appended = Arc::new(Notify::new());
    if lock(&spool).pending_records() > 0 {
        appended.notify_one();
    }
    let upload_sub = channels.subscribe(None, 256, true);
    let (stop_writer, writer_stop) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(write_rounds(
        upload_sub.rx,
        spool.clone(),
        appended.clone(),
        stats.clone(),
        writer_stop,
    ));
    let command_cursor = Arc::new(crate::command::load_cursor(&cfg));
    let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let uploader = tokio::spawn(
        Uploader {
            spool: spool.clone(),
            appended: appended.clone(),
            device_id: cfg.device_id.clone(),
            server: cfg.server.clone(),
            upload: cfg.upload.clone(),
            stats: stats.clone(),
            command_cursor: command_cursor.clone(),
            commands: commands_tx,
        }
        .run(),
    );
    channels
        .publish(static_readings(&cfg, crate::now_ms()))
        .await;
    let (interval_tx, interval_rx) = tokio::sync::watch::channel(cfg.sample_every());
    let status_every = Duration::from_secs_f64(cfg.metrics_interval);
    let mut sampling = Vec::new();
    let mut buses = Vec::new();
    for p in &cfg.ports {
        let control = crate::bus::BusControl {
            interval: interval_rx.clone(),
            sample_now: Arc::new(Notify::new()),
            reconnect: Arc::new(Notify::new()),
            statuses: Default::default(),
        };
        buses.push(control.clone());
        sampling.push(tokio::spawn(crate::bus::run(
            p.clone(),
            channels.clone(),
            control,
            status_every,
        )));
    }
    sampling.push(tokio::spawn(crate::command::register(cfg.clone())));
    sampling.push(tokio::spawn(
        crate::command::Commander {
            cfg: cfg.clone(),
            cursor: command_cursor,
            from_uploads: commands_rx,
            buses,
            interval: interval_tx,
            spool: spool.clone(),
            started: t0,
        }
        .run(),
    ));
    {
        let (channels, spool, stats) = (channels.clone(), spool.clone(), stats.clone());
        let interval = Duration::from_secs_f64(cfg.metrics_interval);
        sampling.push(tokio::spawn(async move {
            let mut cpu = CpuMeter::default();
            cpu.sample();
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                let snap = {
                    let s = lock(&spool);
                    Snapshot {
                        spool_points: s.pending_points(),
                        spool_bytes: s.bytes(),
                        spool_dropped_points: s.dropped_points(),
                        uptime_s: t0.elapsed().as_secs_f64(),
                    }
                };
                channels
                    .publish(crate::metrics::readings(
                        crate::now_ms(),
                        cpu.sample(),
                        snap,
                        &stats,
                    ))
                    .await;
            }
        }));
    }
    if let Some(tx) = started {
        let _ = tx.send(Handles {
            channels: channels.clone(),
            spool: spool.clone(),
            stats: stats.clone(),
        });
    }
    tracing::info!(device_id = %cfg.device_id, ports = cfg.ports.len(), server = %cfg.server.url, "meterstream-agent running");
    shutdown.await;
    tracing::info!("stopping: sampling ends, spooled readings stay for the next start");
    for s in &sampling {
        s.abort();
    }
    for s in sampling {
        let _ = s.await;
    }
    // The writer appends what is queued, then ends.
    let _ = stop_writer.send(());
    let _ = writer.await;
    // Give the uploader a moment to send what is pending; anything left stays spooled.
    let deadline = Instant::now() + Duration::from_secs(3);
    while lock(&spool).pending_records() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    uploader.abort();
    let _ = uploader.await;
    Ok(())
}
