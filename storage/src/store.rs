//! The narrow interface between the HTTP layer and a storage backend.
//!
//! The server only ever holds an `Arc<dyn Store>`; [`crate::Engine`] (sled) is the one backend
//! today, and a partitioned backend can replace it later without touching the HTTP layer. Every
//! method is blocking; async callers run them on a blocking pool. Every successful write returns
//! only once it is durable.

use crate::error::{Result, StorageError};
use crate::feed::Feed;
use crate::metrics::StoreMetrics;
use crate::point::{DataPoint, GroupIn};
use crate::query::{Child, Cursor, HistoryQuery, Order, Page, StreamFilter};
use crate::rollup::{Fill, Interval, Method, RollupValue};
use crate::stream::{StreamInfo, StreamUpdate};
use crate::value::StreamType;

/// The error of one item of a write batch.
#[derive(Debug)]
pub struct ItemError {
    /// Index of the item in the request, from 0.
    pub index: usize,
    /// What was wrong with it.
    pub error: StorageError,
}

/// What a write stored.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Number of points stored (durably).
    pub stored: usize,
    /// Items that were not stored, by index.
    pub errors: Vec<ItemError>,
}

/// Figures about the store, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// Number of streams.
    pub streams: usize,
    /// Bytes of all files of the store on disk (sled and log).
    pub disk_bytes: u64,
    /// Bytes of the write-ahead log on disk.
    pub log_bytes: u64,
    /// Points held in open (not yet sealed) chunks.
    pub open_points: usize,
}

/// A rollup read of one stream.
#[derive(Debug, Clone)]
pub struct RollupQuery {
    /// First timestamp of the points rolled up (inclusive); `None` = from the first point.
    pub from: Option<i64>,
    /// End of the points rolled up (exclusive); `None` = through the last point.
    pub to: Option<i64>,
    /// Interval.
    pub interval: Interval,
    /// Method.
    pub method: Method,
    /// Zone of the interval boundaries.
    pub tz: jiff::tz::TimeZone,
    /// What empty intervals answer.
    pub fill: Fill,
    /// Order of the intervals.
    pub order: Order,
    /// Most intervals returned.
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

/// A durable store of streams and their points.
pub trait Store: Send + Sync + 'static {
    /// Writes points, creating streams on their first point. Good items are stored even when
    /// others are bad; bad items come back in [`WriteOutcome::errors`]. `now` is the server time
    /// (ms) used for the server timestamp and for points without a timestamp.
    fn write(&self, groups: Vec<GroupIn>, now: i64) -> Result<WriteOutcome>;

    /// One stream, with its current value.
    fn stream(&self, path: &str) -> Result<StreamInfo>;

    /// Creates a stream or updates its metadata.
    fn put_stream(&self, path: &str, update: StreamUpdate, now: i64) -> Result<StreamInfo>;

    /// Deletes a stream with all its points.
    fn delete_stream(&self, path: &str) -> Result<()>;

    /// Streams in path order that pass `filter`.
    fn list_streams(
        &self,
        filter: &StreamFilter,
        order: Order,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> Result<Page<StreamInfo>>;

    /// Paths and types of the streams matching `pattern` (a path whose segments may be `*`, one
    /// segment each), in path order, after the path `after` if given, at most `limit`. Cheaper
    /// than listing: no stream state is read.
    fn matching_streams(
        &self,
        pattern: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, StreamType)>>;

    /// The direct children of the folder `prefix` ("" for the root): sub-folders with their stream
    /// counts and streams with their current values, by name.
    fn children(&self, prefix: &str, limit: usize, cursor: Option<&Cursor>) -> Result<Page<Child>>;

    /// Raw points of a stream.
    fn history(&self, path: &str, query: &HistoryQuery) -> Result<Page<DataPoint>>;

    /// Rolled-up values of a numeric stream.
    fn rollups(&self, path: &str, query: &RollupQuery) -> Result<Page<RollupValue>>;

    /// Deletes the points of a stream with `from <= timestamp < to`; returns how many.
    fn delete_history(&self, path: &str, from: i64, to: i64) -> Result<u64>;

    /// Deletes points older than their stream's `data_ttl`; returns how many.
    fn sweep_retention(&self, now: i64) -> Result<u64>;

    /// Figures for metrics.
    fn stats(&self) -> StoreStats;

    /// The store's metrics, to register.
    fn metrics(&self) -> &StoreMetrics;

    /// The change feed (docs/alarms.md): the points applied after log sequence number `after`,
    /// about `max_points` at most. Consumers far behind read the log on disk; what the log no
    /// longer holds is reported in [`Feed::lost`].
    fn feed(&self, after: u64, max_points: usize) -> Result<Feed>;

    /// Sets a feed consumer's hold, the sequence number up to which it has durably consumed
    /// (the log after it is kept for it), or removes the consumer (`None`).
    fn feed_hold(&self, consumer: &str, seq: Option<u64>) -> Result<()>;

    /// A feed consumer's hold, if it is registered.
    fn feed_consumer(&self, consumer: &str) -> Option<u64>;

    /// The highest log sequence number applied.
    fn applied_seq(&self) -> u64;

    /// Calls `f` with the applied sequence number after each applied group of records. `f` runs
    /// on the apply thread and must only signal.
    fn on_applied(&self, f: Box<dyn Fn(u64) + Send + Sync>);

    /// Makes everything durable and stops background work.
    fn close(&self);
}
