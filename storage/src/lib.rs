//! meterstream-storage: the data model of meterstream and its embedded, durable time-series
//! store, built on sled and rmp-serde.
//!
//! The server calls it through the narrow [`Store`] trait; the ingest agent shares its data model
//! ([`StreamType`], [`InValue`], [`GroupIn`], path rules). It calls sled, pco and the file system.
//!
//! # Layout
//! - [`store`]: the [`Store`] trait, the only thing the HTTP layer sees.
//! - [`engine`]: [`Engine`], the sled-backed store: registry, open heads, apply, checkpoints.
//! - [`wal`]: the write-ahead log with group commit; its format is drawn there.
//! - [`feed`]: the change feed of applied points for durable consumers (alarms, monitors).
//! - [`codec`]: the chunk codec; its format is drawn there.
//! - [`series`]: points of one stream in columns (open heads and decoded chunks).
//! - [`head`]: the open head of a stream, compressed in memory; `snapshot` saves them all.
//! - `chunk_file`: the append-only files that hold sealed chunks.
//! - [`query`]: history queries, stream filters, pages and cursors.
//! - [`registry`]: devices, their connection history and their commands (the `Registry` trait
//!   and its sled implementation).
//! - [`rollup`]: intervals, methods, mergeable summaries, time-zone boundaries, rolling up.
//! - [`alarm`]: alert conditions evaluated in data time, as pure state machines (hysteresis,
//!   durations, clock rules); the engine will feed them (docs/alarms.md).
//! - [`buckets`]: summaries on the stored 1- and 15-minute UTC grids and their encoding.
//! - [`stream`], [`point`], [`value`]: the data model.
//! - [`path`]: stream path rules. [`time`]: timestamp range, parsing, formatting.
//! - [`metrics`], [`error`].
//!
//! # On disk
//! ```text
//! <data dir>/
//!   wal/<first seq>.wal          write-ahead log segments (see wal)
//!   heads.snap                   every open head as of the last checkpoint (see snapshot)
//!   chunks/<n>.chunks            sealed chunks (see codec), appended; located through sled
//!   sled/                        one sled database with four trees:
//!     streams  id (u64 BE)              -> StreamRecord (MessagePack: id, path, meta, created)
//!     chunks   id (u64 BE) ++ ts (u64 BE) -> location (file, offset, len) of the chunk of
//!                                          sealed points from ts on, followed by its 1-minute
//!                                          summaries, and their length (u32 LE) (see chunk_file)
//!     rollups  id (u64 BE) ++ day (u64 BE) -> 15-minute summaries of the stream's sealed points
//!                                          in that completed UTC day (see buckets, docs/rollups.md)
//!     meta     "checkpoint_seq"         -> u64 BE: every record up to it is in sled and the snapshot
//!              "next_counter"           -> u64 BE: next stream id counter
//!              "hold/<consumer>"        -> u64 BE: log kept for a feed consumer after this seq
//! ```
//! A stream id is `counter << 6 | hash(device id) % 64`: its low bits name the shard, so all
//! state of one device lives in one shard, the unit a future partitioned backend moves.
//!
//! # Invariants
//! - A point is identified by (stream, timestamp); writing it again replaces it.
//! - The chunks of a stream do not overlap in time; every point in the open head is newer than
//!   every sealed point. A late point is merged into the chunk whose range holds it.
//! - Nothing is acknowledged before its log record is fsynced. Records are applied in log order;
//!   applying any suffix of the log again over the state of a checkpoint gives the same state,
//!   because every record sets state (put, replace, delete) rather than adjusting it.
//! - The current value of a stream is its point with the largest timestamp.
//! - Rollups: a chunk's minute summaries are those of its points; a day record's quarters are
//!   those of the stream's sealed points in that day (plus points expired by retention), and
//!   the open days' quarters (memory) those of the sealed points from the stream's open day on.
//!   A seal writes the day records it completes in the same sled transaction that indexes its
//!   chunks, so a replayed point is either sealed already (and merged as a late point, which
//!   recomputes) or sealed and added once.

pub mod alarm;
pub mod buckets;
mod chunk_file;
pub mod codec;
pub mod engine;
pub mod error;
pub mod feed;
pub mod head;
pub mod metrics;
pub mod path;
pub mod point;
pub mod query;
pub mod registry;
pub mod rollup;
pub mod series;
mod snapshot;
pub mod store;
pub mod stream;
pub mod time;
pub mod value;
pub mod wal;

pub use engine::{Config, Engine};
pub use error::{Result, StorageError};
pub use feed::{Feed, FeedRecord};
pub use metrics::StoreMetrics;
pub use point::{DataPoint, Extras, GroupIn, PointIn};
pub use query::{
    Child, CmpOp, Condition, Cursor, HistoryQuery, Order, Page, StreamFilter, Timeline,
};
pub use rollup::{Fill, Interval, Method, RollupValue};
pub use store::{ItemError, RollupQuery, Store, StoreStats, WriteOutcome};
pub use stream::{StreamInfo, StreamMeta, StreamUpdate};
pub use value::{InValue, StreamType, Value, ValueKind};
