//! The agent's counters and the health metrics it publishes as streams under
//! `<device id>/metrics/...`, named as Digi gateways name theirs where Digi has a name.

use crate::channel::{Reading, Sample};
use meterstream_storage::StreamType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters, updated per batch or round.
#[derive(Debug, Default)]
pub struct Stats {
    /// Points the server has acknowledged.
    pub uploaded_points: AtomicU64,
    /// Uploads that failed and will be retried.
    pub upload_failures: AtomicU64,
    /// Points the server refused for good (bad items).
    pub rejected_points: AtomicU64,
    /// Points that could not be written to the spool (disk full or failing).
    pub spool_write_failures: AtomicU64,
}

/// What the metrics round is made from (gathered by the caller, which holds the spool).
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Points waiting in the spool.
    pub spool_points: u64,
    /// Bytes the spool takes.
    pub spool_bytes: u64,
    /// Points dropped because the spool was full.
    pub spool_dropped_points: u64,
    /// Seconds since the agent started.
    pub uptime_s: f64,
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// Available memory in bytes, from `/proc/meminfo`.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// System CPU use in percent between calls.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    /// Percent of all CPUs busy since the previous call (`None` the first time).
    pub fn sample(&mut self) -> Option<f64> {
        let now = cpu_jiffies()?;
        let prev = self.last.replace(now)?;
        let (busy, total) = (now.0.saturating_sub(prev.0), now.1.saturating_sub(prev.1));
        (total > 0).then(|| (busy as f64 * 100.0 / total as f64 * 10.0).round() / 10.0)
    }
}

/// The health readings at `now_ms`.
pub fn readings(now_ms: i64, cpu: Option<f64>, s: Snapshot, stats: &Stats) -> Vec<Reading> {
    let mut out = Vec::new();
    let mut push = |channel: &str, v: f64, unit: &str| {
        out.push(Reading {
            channel: Arc::from(channel),
            timestamp: now_ms,
            value: Sample::Number(v),
            stream_type: StreamType::Double,
            unit: Arc::from(unit),
        });
    };
    if let Some(c) = cpu {
        push("metrics/sys/cpu/used", c, "%");
    }
    if let Some(m) = mem_available() {
        push("metrics/sys/mem/free", m as f64, "bytes");
    }
    push("metrics/sys/uptime", s.uptime_s.round(), "s");
    push("metrics/spool/depth", s.spool_points as f64, "points");
    push("metrics/spool/bytes", s.spool_bytes as f64, "bytes");
    push(
        "metrics/spool/dropped",
        s.spool_dropped_points as f64,
        "points",
    );
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    push(
        "metrics/upload/failures",
        c(&stats.upload_failures),
        "count",
    );
    push(
        "metrics/upload/rejected",
        c(&stats.rejected_points),
        "points",
    );
    push("metrics/upload/points", c(&stats.uploaded_points), "points");
    out
}
