//! Metrics of the store, created unregistered; the server registers them in its registry (so
//! several stores in one test process never collide).

use prometheus::{Histogram, HistogramOpts, IntCounter};

/// Counters and histograms the store updates per batch, never per point.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Points made durable (`meterstream_storage_points_written_total`).
    pub points_written: IntCounter,
    /// Duration of one group commit: write and fdatasync of the log
    /// (`meterstream_storage_flush_duration_seconds`).
    pub flush_seconds: Histogram,
    /// Points written each group commit, a measure of how well batches share flushes
    /// (`meterstream_storage_group_commit_frames`).
    pub group_frames: Histogram,
    /// Duration of a checkpoint (`meterstream_storage_checkpoint_duration_seconds`).
    pub checkpoint_seconds: Histogram,
    /// Chunks written (`meterstream_storage_chunks_written_total`).
    pub chunks_written: IntCounter,
    /// Points that landed in an already sealed chunk (`meterstream_storage_late_points_total`).
    pub late_points: IntCounter,
    /// Rebuilds of 15-minute rollups after late, replaced or deleted sealed points
    /// (`meterstream_storage_rollup_recomputes_total`).
    pub rollup_recomputes: IntCounter,
    /// Rollup queries answered from raw points because an interval boundary was off the stored
    /// 1-minute grid (`meterstream_storage_rollup_raw_fallbacks_total`).
    pub rollup_raw_fallbacks: IntCounter,
    /// Copies a stream's `forward_to` could not make because the target holds another kind of
    /// value (`meterstream_storage_forward_skipped_total`).
    pub forward_skipped: IntCounter,
}

fn hist(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    // Names and buckets are constants and valid, so construction cannot fail.
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| unreachable!("invalid histogram {name}: {e}"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("invalid counter {name}: {e}"))
}

impl StoreMetrics {
    pub(crate) fn new() -> Self {
        StoreMetrics {
            points_written: counter(
                "meterstream_storage_points_written_total",
                "Points made durable in the store.",
            ),
            flush_seconds: hist(
                "meterstream_storage_flush_duration_seconds",
                "Duration of one group commit of the write-ahead log (write and fdatasync).",
                prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default(),
            ),
            group_frames: hist(
                "meterstream_storage_group_commit_frames",
                "Records made durable by one fdatasync.",
                prometheus::exponential_buckets(1.0, 2.0, 12).unwrap_or_default(),
            ),
            checkpoint_seconds: hist(
                "meterstream_storage_checkpoint_duration_seconds",
                "Duration of a checkpoint (open chunks saved, sled flushed, log truncated).",
                prometheus::exponential_buckets(0.001, 2.0, 16).unwrap_or_default(),
            ),
            chunks_written: counter(
                "meterstream_storage_chunks_written_total",
                "Compressed chunks written to sled.",
            ),
            late_points: counter(
                "meterstream_storage_late_points_total",
                "Points merged into chunks that were already sealed.",
            ),
            rollup_recomputes: counter(
                "meterstream_storage_rollup_recomputes_total",
                "Rebuilds of 15-minute rollups after late, replaced or deleted sealed points.",
            ),
            rollup_raw_fallbacks: counter(
                "meterstream_storage_rollup_raw_fallbacks_total",
                "Rollup queries answered from raw points (an interval boundary off the 1-minute grid).",
            ),
            forward_skipped: counter(
                "meterstream_storage_forward_skipped_total",
                "Forwarded copies skipped because the target stream holds another kind of value.",
            ),
        }
    }

    /// Everything, for registration.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.points_written.clone()),
            Box::new(self.flush_seconds.clone()),
            Box::new(self.group_frames.clone()),
            Box::new(self.checkpoint_seconds.clone()),
            Box::new(self.chunks_written.clone()),
            Box::new(self.late_points.clone()),
            Box::new(self.rollup_recomputes.clone()),
            Box::new(self.rollup_raw_fallbacks.clone()),
            Box::new(self.forward_skipped.clone()),
        ]
    }
}
