//! The sled-backed [`Store`]: registry, open heads, sealed chunks, the apply thread and
//! checkpoints. The on-disk layout is drawn in the crate documentation.

use crate::buckets::{self, Bucket, DAY, MINUTE, QUARTER};
use crate::chunk_file::{ChunkFiles, Loc};
use crate::codec;
use crate::error::{Result, StorageError};
use crate::feed::{Feed, FeedRecord, FeedState, RingRecord};
use crate::head::Head;
use crate::metrics::StoreMetrics;
use crate::path::{device_id, validate_path};
use crate::point::{stable_hash, DataPoint, GroupIn};
use crate::query::{Child, Cursor, HistoryQuery, Order, Page, StreamFilter, Timeline};
use crate::rollup::{Interval, Method, Roller, RollupSpec, RollupValue};
use crate::series::Series;
use crate::store::{ItemError, RollupQuery, Store, StoreStats, WriteOutcome};
use crate::stream::{StreamInfo, StreamMeta, StreamUpdate};
use crate::time::check_range;
use crate::value::StreamType;
use crate::wal::{self, Pending, PointRec, Record, StreamRecord, Wal};
use parking_lot::{Mutex, RwLock};
use sled::Transactional;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtOrd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Low bits of a stream id that name its shard (a hash of its device id).
const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// Key prefix of the feed consumers' holds in tree `meta`.
const HOLD_PREFIX: &[u8] = b"hold/";

/// Configuration of an [`Engine`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory; holds `sled/` and `wal/`.
    pub path: PathBuf,
    /// Points per sealed chunk (64..=65536). Larger chunks compress better and keep more points
    /// in open heads (about 2 bytes of memory each).
    pub chunk_points: usize,
    /// Points per compressed block of an open head (8..=4096); the newest points, up to this
    /// many, are kept uncompressed (16 bytes each).
    pub head_block_points: usize,
    /// Size at which a log segment is closed.
    pub segment_bytes: u64,
    /// Longest time between checkpoints while there are changes.
    pub checkpoint_interval: Duration,
    /// Log bytes after which a checkpoint is taken early.
    pub checkpoint_log_bytes: u64,
    /// Open heads not written for this long are sealed at a checkpoint, to free memory.
    pub idle_seal: Duration,
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
    /// Most bytes of applied points the change feed keeps in memory for its consumers (only
    /// while there are consumers).
    pub feed_buffer_bytes: usize,
    /// Most bytes of log kept, beyond what checkpoints need, for feed consumers that are behind.
    pub feed_retention_bytes: u64,
}

impl Config {
    /// Defaults for a data directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Config {
            path: path.into(),
            chunk_points: 2048,
            head_block_points: 128,
            segment_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(30),
            checkpoint_log_bytes: 512 << 20,
            idle_seal: Duration::from_secs(15 * 60),
            cache_bytes: 64 << 20,
            feed_buffer_bytes: 32 << 20,
            feed_retention_bytes: 2 << 30,
        }
    }

    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        if !(64..=65536).contains(&self.chunk_points) {
            return Err(StorageError::invalid(
                "chunk_points",
                format!("{} is outside 64..=65536", self.chunk_points),
            ));
        }
        if !(8..=4096).contains(&self.head_block_points) {
            return Err(StorageError::invalid(
                "head_block_points",
                format!("{} is outside 8..=4096", self.head_block_points),
            ));
        }
        if self.segment_bytes < 1 << 16 {
            return Err(StorageError::invalid(
                "segment_bytes",
                "must be at least 64 KiB",
            ));
        }
        if self.checkpoint_interval.is_zero() {
            return Err(StorageError::invalid(
                "checkpoint_interval",
                "must be positive",
            ));
        }
        if self.cache_bytes < 1 << 20 {
            return Err(StorageError::invalid(
                "cache_bytes",
                "must be at least 1 MiB",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    ty: StreamType,
    /// Whether the stream's `forward_to` lists streams (then each write is copied to them).
    forwards: bool,
}

fn shard_of_id(id: u64) -> usize {
    (id & (SHARDS as u64 - 1)) as usize
}

fn shard_of_path(path: &str) -> u64 {
    stable_hash(device_id(path)) & (SHARDS as u64 - 1)
}

struct StreamState {
    rec: StreamRecord,
    head: Head,
    /// Largest timestamp in sealed chunks; every head point is newer.
    sealed_max: Option<i64>,
    /// The point with the largest timestamp (derived, cached).
    current: Option<DataPoint>,
    /// Server time of the last write, ms.
    last_write: i64,
    /// First UTC day whose sealed quarters are kept here rather than in a day record: every
    /// earlier day with sealed data has its record in tree `rollups`, written once, when sealing
    /// passed its end. `None`: no sealed data yet.
    open_day: Option<i64>,
    /// 15-minute summaries of the sealed points of the days from `open_day` on (`buckets`
    /// format, empty for none). Rebuilt from the chunks' minute summaries at open.
    open_q: Vec<u8>,
}

impl StreamState {
    fn new(rec: StreamRecord, block: usize) -> Self {
        let kind = rec.meta.stream_type.kind();
        StreamState {
            last_write: rec.created,
            rec,
            head: Head::new(kind, block),
            sealed_max: None,
            current: None,
            open_day: None,
            open_q: Vec::new(),
        }
    }

    fn open_quarters(&self) -> Result<Vec<Bucket>> {
        if self.open_q.is_empty() {
            return Ok(Vec::new());
        }
        buckets::decode(&self.open_q, QUARTER)
    }

    fn set_open_quarters(&mut self, q: &[Bucket]) {
        self.open_q = if q.is_empty() {
            Vec::new()
        } else {
            buckets::encode(q, QUARTER)
        };
    }

    fn info(&self) -> StreamInfo {
        StreamInfo {
            path: self.rec.path.clone(),
            meta: self.rec.meta.clone(),
            current: self.current.clone(),
            created: self.rec.created,
        }
    }

    fn has_data(&self) -> bool {
        !self.head.is_empty() || self.sealed_max.is_some()
    }
}

#[derive(Default)]
struct Shard {
    streams: HashMap<u64, StreamState>,
}

struct Registry {
    by_path: BTreeMap<Arc<str>, Entry>,
    next_counter: u64,
}

fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn chunk_key(id: u64, ts: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&(ts.max(0) as u64).to_be_bytes());
    k
}

/// End (exclusive) of a stream's chunk keys (chunk timestamps stay below 2^56).
fn chunks_end(id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8] = 0xFF;
    k
}

/// Key (in tree `rollups`) of a stream's 15-minute rollup record of the UTC day starting at
/// `day`.
fn rollup_key(id: u64, day: i64) -> [u8; 16] {
    chunk_key(id, day)
}

fn rollup_key_day(k: &[u8]) -> i64 {
    chunk_key_ts(k)
}

/// A chunk index value: the location of the chunk's bytes followed by its 1-minute summaries
/// (`buckets` format), and the length of that summary part.
fn index_value(whole: Loc, minutes_len: u32) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[..16].copy_from_slice(&whole.encode());
    v[16..].copy_from_slice(&minutes_len.to_le_bytes());
    v
}

/// Where a chunk index value points: (everything, the chunk, its minute summaries).
fn parse_index(v: &[u8]) -> Result<(Loc, Loc, Option<Loc>)> {
    if v.len() != 20 {
        return Err(StorageError::corrupt(
            "chunk index",
            "value is not 20 bytes",
        ));
    }
    let whole = Loc::decode(&v[..16])?;
    let mut b = [0u8; 4];
    b.copy_from_slice(&v[16..]);
    let ml = u32::from_le_bytes(b);
    if ml >= whole.len {
        return Err(StorageError::corrupt(
            "chunk index",
            "summary part is longer than the chunk",
        ));
    }
    let chunk = Loc {
        len: whole.len - ml,
        ..whole
    };
    let mins = (ml > 0).then_some(Loc {
        file: whole.file,
        offset: whole.offset + (whole.len - ml) as u64,
        len: ml,
    });
    Ok((whole, chunk, mins))
}

fn chunk_key_ts(k: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[8..16]);
    u64::from_be_bytes(b) as i64
}

struct Inner {
    cfg: Config,
    db: sled::Db,
    chunks: sled::Tree,
    /// 15-minute rollups per stream and UTC day (`buckets` format).
    rollups: sled::Tree,
    streams: sled::Tree,
    meta: sled::Tree,
    files: ChunkFiles,
    registry: RwLock<Registry>,
    shards: Box<[Mutex<Shard>]>,
    metrics: StoreMetrics,
    open_points: AtomicU64,
    feed: FeedState,
}

/// The sled-backed store.
pub struct Engine {
    inner: Arc<Inner>,
    wal: Arc<Wal>,
    apply: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Inner {
    fn lookup(&self, path: &str) -> Option<Entry> {
        self.registry.read().by_path.get(path).copied()
    }

    fn entry(&self, path: &str) -> Result<Entry> {
        self.lookup(path)
            .ok_or_else(|| StorageError::StreamNotFound {
                path: path.to_string(),
            })
    }

    /// The chunk index entries of stream `id`, in time order.
    fn chunk_scan(&self, id: u64) -> sled::Iter {
        self.chunks.range(chunk_key(id, 0)..chunks_end(id))
    }

    /// The bytes of the chunk whose index value is `v`.
    fn chunk_bytes(&self, v: &[u8]) -> Result<Vec<u8>> {
        self.files.read(parse_index(v)?.1)
    }

    /// The 1-minute summaries of the chunk whose index value is `v`.
    fn chunk_minutes(&self, v: &[u8]) -> Result<Vec<Bucket>> {
        let (_, chunk, mins) = parse_index(v)?;
        match mins {
            Some(l) => buckets::decode(&self.files.read(l)?, MINUTE),
            None => Ok(buckets::summarize_series(
                &codec::decode(&self.files.read(chunk)?)?,
                MINUTE,
            )),
        }
    }

    /// Appends a non-empty series as a chunk followed by its 1-minute summaries; returns the
    /// index value and the summaries.
    fn append_chunk(&self, s: &Series) -> Result<([u8; 20], Vec<Bucket>)> {
        let mut bytes = codec::encode(s)?;
        let mins = buckets::summarize_series(s, MINUTE);
        let mut ml = 0u32;
        if !mins.is_empty() {
            let m = buckets::encode(&mins, MINUTE);
            ml = m.len() as u32;
            bytes.extend_from_slice(&m);
        }
        let loc = self.files.append(&bytes)?;
        self.metrics.chunks_written.inc();
        Ok((index_value(loc, ml), mins))
    }

    /// Merges 15-minute summaries into the stream's day records, in `batch` (each day record is
    /// read, merged and written whole).
    fn add_quarters(&self, id: u64, quarters: &[Bucket], batch: &mut sled::Batch) -> Result<()> {
        let mut i = 0;
        while i < quarters.len() {
            let day = buckets::floor(quarters[i].0, DAY);
            let j = i + quarters[i..]
                .iter()
                .take_while(|q| buckets::floor(q.0, DAY) == day)
                .count();
            let key = rollup_key(id, day);
            let mut rec = match self.rollups.get(key)? {
                Some(v) => buckets::decode(&v, QUARTER)?,
                None => Vec::new(),
            };
            buckets::combine_into(&mut rec, &quarters[i..j]);
            batch.insert(&key[..], buckets::encode(&rec, QUARTER));
            i = j;
        }
        Ok(())
    }

    /// The index entries of the chunks that may hold points in `[lo, hi)`, in time order: the
    /// chunk starting at or before `lo`, then those starting before `hi`.
    fn chunks_overlapping(&self, id: u64, lo: i64, hi: i64) -> Result<sled::Iter> {
        let start = match self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, lo))
            .next_back()
        {
            Some(kv) => kv?.0.to_vec(),
            None => chunk_key(id, lo).to_vec(),
        };
        let end = chunk_key(id, hi.min(crate::time::MAX_TIMESTAMP + 1));
        Ok(self.chunks.range(start..end.to_vec()))
    }

    /// Calls `f` with the 1-minute summaries of sealed points in minutes starting in `[lo, hi)`,
    /// a chunk at a time in time order (a minute split between two chunks comes in two parts),
    /// until `f` returns `false`.
    fn for_sealed_minutes(
        &self,
        id: u64,
        lo: i64,
        hi: i64,
        mut f: impl FnMut(&[Bucket]) -> Result<bool>,
    ) -> Result<()> {
        if lo >= hi {
            return Ok(());
        }
        for kv in self.chunks_overlapping(id, lo, hi)? {
            let (_, v) = kv?;
            let mins = self.chunk_minutes(&v)?;
            let a = mins.partition_point(|b| b.0 < lo);
            let b = mins.partition_point(|b| b.0 < hi);
            if a < b && !f(&mins[a..b])? {
                break;
            }
        }
        Ok(())
    }

    /// The 1-minute summaries of sealed points in minutes starting in `[lo, hi)` (minute-aligned).
    fn sealed_minutes(&self, id: u64, lo: i64, hi: i64) -> Result<Vec<Bucket>> {
        let mut out = Vec::new();
        self.for_sealed_minutes(id, lo, hi, |list| {
            buckets::merge_later(&mut out, list);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The sealed points in `[lo, hi)`, in time order (numeric values only).
    fn sealed_points(&self, id: u64, lo: i64, hi: i64) -> Result<Vec<(i64, f64)>> {
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        for kv in self.chunks_overlapping(id, lo, hi)? {
            let s = codec::decode(&self.chunk_bytes(&kv?.1)?)?;
            for i in s.index_range(lo, hi) {
                if let Some(v) = s.values.f64_at(i) {
                    out.push((s.ts[i], v));
                }
            }
        }
        Ok(out)
    }

    /// The first and last timestamps of a stream's rolled-up sealed points.
    fn quarter_span(&self, st: &StreamState) -> Result<Option<(i64, i64)>> {
        let id = st.rec.id;
        let records = || {
            self.rollups
                .range(rollup_key(id, 0)..=rollup_key(id, i64::MAX))
        };
        let open = st.open_quarters()?;
        let first = match records().next() {
            Some(kv) => buckets::decode(&kv?.1, QUARTER)?
                .first()
                .map(|b| b.1.first_ts),
            None => open.first().map(|b| b.1.first_ts),
        };
        let last = match open.last() {
            Some(b) => Some(b.1.last_ts),
            None => match records().next_back() {
                Some(kv) => buckets::decode(&kv?.1, QUARTER)?
                    .last()
                    .map(|b| b.1.last_ts),
                None => None,
            },
        };
        Ok(first.zip(last))
    }

    /// The range a rollup query covers (its bounds, or the stream's data, raw or rolled up)
    /// and the last value before it (for `increase`); `None` when there is nothing.
    fn rollup_range(
        &self,
        st: &StreamState,
        q: &RollupQuery,
    ) -> Result<Option<(i64, i64, Option<f64>)>> {
        let id = st.rec.id;
        let raw_first = match (q.from, self.chunk_scan(id).next()) {
            (Some(_), _) => None,
            (None, Some(kv)) => Some(chunk_key_ts(&kv?.0)),
            (None, None) => st.head.first_ts(),
        };
        let raw_last = st.head.last_ts().or(st.sealed_max);
        let qs = if q.from.is_none() || q.to.is_none() {
            self.quarter_span(st)?
        } else {
            None
        };
        let from = match q.from {
            Some(f) => f,
            None => match (raw_first, qs) {
                (Some(a), Some((b, _))) => a.min(b),
                (Some(a), None) => a,
                (None, Some((b, _))) => b,
                (None, None) => return Ok(None),
            },
        };
        let to = match q.to {
            Some(t) => t,
            None => match (raw_last, qs) {
                (Some(a), Some((_, b))) => a.max(b) + 1,
                (Some(a), None) => a + 1,
                (None, Some((_, b))) => b + 1,
                (None, None) => return Ok(None),
            },
        };
        if from >= to {
            return Ok(None);
        }
        // The last value before `from` (only `increase` needs it): a raw point if one is kept,
        // else a rolled-up quarter.
        let mut before = None;
        if q.method != Method::Increase {
            return Ok(Some((from, to, None)));
        }
        if st.head.first_ts().is_some_and(|f| f < from) {
            let mut out = Vec::new();
            st.head.collect(0, from, Order::Desc, 1, &mut out)?;
            before = out.first().and_then(|p| p.value.as_f64());
        }
        if before.is_none() {
            if let Some(kv) = self
                .chunks
                .range(chunk_key(id, 0)..chunk_key(id, from))
                .next_back()
            {
                let s = codec::decode(&self.chunk_bytes(&kv?.1)?)?;
                let r = s.index_range(0, from);
                if r.end > 0 {
                    before = s.values.f64_at(r.end - 1);
                }
            }
        }
        if before.is_none() {
            before = st
                .open_quarters()?
                .iter()
                .rev()
                .find(|b| b.1.last_ts < from)
                .map(|b| b.1.last);
        }
        if before.is_none() {
            for kv in self
                .rollups
                .range(rollup_key(id, 0)..=rollup_key(id, buckets::floor(from, DAY)))
                .rev()
                .take(2)
            {
                let rec = buckets::decode(&kv?.1, QUARTER)?;
                if let Some(b) = rec.iter().rev().find(|b| b.1.last_ts < from) {
                    before = Some(b.1.last);
                    break;
                }
            }
        }
        Ok(Some((from, to, before)))
    }

    /// Feeds the data of `[from, to)` into `roller` as pieces: 15-minute summaries from the day
    /// records (`quarters`), 1-minute summaries from sealed chunks and the open head, and raw
    /// points only at range edges that are not minute-aligned. Returns `false` when an interval
    /// boundary is off the grid used, so that the caller retries with a finer one.
    fn feed(
        &self,
        st: &StreamState,
        roller: &mut Roller<'_>,
        from: i64,
        to: i64,
        quarters: bool,
    ) -> Result<bool> {
        let id = st.rec.id;
        let (a1, b1) = {
            let (a, b) = (buckets::ceil(from, MINUTE), buckets::floor(to, MINUTE));
            if a < b {
                (a, b)
            } else {
                (to, to)
            }
        };
        let (a15, b15) = {
            let (a, b) = (buckets::ceil(from, QUARTER), buckets::floor(to, QUARTER));
            if quarters && a < b && a1 < b1 {
                (a, b)
            } else {
                (b1, b1)
            }
        };
        let pieces = |roller: &mut Roller<'_>, list: &[Bucket], grid: i64| -> Result<bool> {
            for (start, sm) in list {
                let start = *start;
                if !roller.push_piece(start, start + grid, sm)? {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        // Sealed data, oldest first; all of it is older than the open head. Chunks hold nothing
        // after `sealed_max`; day records may also hold rollups of expired points.
        let sealed_end = st.sealed_max.map_or(i64::MIN, |m| m + 1);
        let chunk_end = |hi: i64| hi.min(sealed_end);
        if a1 >= b1 {
            // Less than a whole minute in the middle: raw points only.
            let mut raw = self.sealed_points(id, from, chunk_end(to))?;
            raw.extend(st.head.numeric_points(from, to)?);
            for (t, v) in raw {
                roller.push(t, v)?;
            }
            return Ok(true);
        }
        // The minutes cut by a bound are used whole when none of their points lies outside the
        // range (the usual case: bounds at the data's own ends); otherwise from raw points.
        let (m0, m1) = (buckets::floor(from, MINUTE), buckets::ceil(to, MINUTE));
        // Each returns the list without that minute, and whether it was cut off (its part in
        // range then comes from raw points).
        let trim_left = |list: &[Bucket]| -> (usize, bool) {
            let cut = m0 < from
                && list
                    .first()
                    .is_some_and(|b| b.0 == m0 && b.1.first_ts < from);
            (usize::from(cut), cut)
        };
        let trim_right = |list: &[Bucket]| -> (usize, bool) {
            let cut = b1 < to && list.last().is_some_and(|b| b.0 == b1 && b.1.last_ts >= to);
            (list.len() - usize::from(cut), cut)
        };
        // Quarters cut by a bound are likewise used whole when all their points are in range;
        // otherwise that part comes from minutes. Without quarters, minutes cover the middle.
        let (qs, left_end, right_start) = if a15 < b15 {
            let (q0, q1) = (buckets::floor(from, QUARTER), buckets::ceil(to, QUARTER));
            let mut qs = self.quarters(st, q0, q1)?;
            let mut left_end = a15;
            let mut right_start = b15;
            if q0 < from {
                match qs.first() {
                    Some(b) if b.0 == q0 && b.1.first_ts < from => {
                        qs.remove(0);
                    }
                    // Whole, or no sealed point there at all.
                    _ => left_end = m0,
                }
            }
            if b15 < to {
                match qs.last() {
                    Some(b) if b.0 == b15 && b.1.last_ts >= to => {
                        qs.pop();
                    }
                    _ => right_start = m1,
                }
            }
            (qs, left_end, right_start)
        } else {
            (Vec::new(), b1, b1)
        };
        if left_end > m0 {
            if m0 < from {
                // The minute cut by `from`.
                let edge = self.sealed_minutes(id, m0, chunk_end(a1))?;
                let (skip, cut) = trim_left(&edge);
                if cut {
                    for (t, v) in self.sealed_points(id, from, chunk_end(a1))? {
                        roller.push(t, v)?;
                    }
                }
                if !pieces(roller, &edge[skip..], MINUTE)? {
                    return Ok(false);
                }
            }
            // Whole minutes, a chunk at a time, until the roller has what the page needs.
            let mut aligned = true;
            self.for_sealed_minutes(id, a1, chunk_end(left_end), |list| {
                if roller.is_full() {
                    return Ok(false);
                }
                aligned = pieces(roller, list, MINUTE)?;
                Ok(aligned)
            })?;
            if !aligned {
                return Ok(false);
            }
        }
        if !pieces(roller, &qs, QUARTER)? {
            return Ok(false);
        }
        let right = self.sealed_minutes(id, right_start, chunk_end(m1).max(right_start))?;
        let (keep, right_raw) = trim_right(&right);
        if !pieces(roller, &right[..keep], MINUTE)? {
            return Ok(false);
        }
        if right_raw {
            for (t, v) in self.sealed_points(id, b1, chunk_end(to))? {
                roller.push(t, v)?;
            }
        }
        // The open head.
        let mins = st.head.minutes()?;
        let mut list =
            &mins[mins.partition_point(|b| b.0 < m0)..mins.partition_point(|b| b.0 < m1)];
        let (skip, left_raw) = trim_left(list);
        if left_raw {
            for (t, v) in st.head.numeric_points(from, a1)? {
                roller.push(t, v)?;
            }
        }
        list = &list[skip..];
        let (keep, right_raw) = trim_right(list);
        list = &list[..keep];
        if !pieces(roller, list, MINUTE)? {
            return Ok(false);
        }
        if right_raw {
            for (t, v) in st.head.numeric_points(b1, to)? {
                roller.push(t, v)?;
            }
        }
        Ok(true)
    }

    /// The 15-minute summaries of a stream's sealed points with starts in `[lo, hi)`: from the
    /// day records, then from the open days.
    fn quarters(&self, st: &StreamState, lo: i64, hi: i64) -> Result<Vec<Bucket>> {
        let id = st.rec.id;
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        let hi_rec = st.open_day.map_or(hi, |d| hi.min(d));
        if lo < hi_rec {
            for kv in self
                .rollups
                .range(rollup_key(id, buckets::floor(lo, DAY))..rollup_key(id, hi_rec))
            {
                let (_, v) = kv?;
                out.extend(
                    buckets::decode(&v, QUARTER)?
                        .into_iter()
                        .filter(|b| b.0 >= lo && b.0 < hi),
                );
            }
        }
        if st.open_day.is_some_and(|d| d < hi) {
            let open = st.open_quarters()?;
            let a = open.partition_point(|b| b.0 < lo);
            let b = open.partition_point(|b| b.0 < hi);
            out.extend_from_slice(&open[a..b]);
        }
        Ok(out)
    }

    /// Rebuilds the 15-minute summaries of the quarters that `[from, to)` touches from the sealed
    /// points' minute summaries (after late points, replacements or deletions there).
    fn recompute_quarters(&self, st: &mut StreamState, from: i64, to: i64) -> Result<()> {
        let id = st.rec.id;
        let lo = buckets::floor(from.max(0), QUARTER);
        let hi = buckets::ceil(to.min(crate::time::MAX_TIMESTAMP + 1), QUARTER);
        if lo >= hi {
            return Ok(());
        }
        let mut quarters = buckets::regrid(self.sealed_minutes(id, lo, hi)?, QUARTER);
        // The open days' part is in memory.
        if let Some(d) = st.open_day.filter(|d| *d < hi) {
            let split = quarters.partition_point(|b| b.0 < d);
            let mut open = st.open_quarters()?;
            open.retain(|b| b.0 < lo || b.0 >= hi);
            open.extend_from_slice(&quarters[split..]);
            open.sort_by_key(|b| b.0);
            st.set_open_quarters(&open);
            quarters.truncate(split);
        }
        let hi = st.open_day.map_or(hi, |d| hi.min(d));
        if lo >= hi {
            self.metrics.rollup_recomputes.inc();
            return Ok(());
        }
        let mut days: BTreeMap<i64, Vec<Bucket>> = BTreeMap::new();
        for kv in self
            .rollups
            .range(rollup_key(id, buckets::floor(lo, DAY))..rollup_key(id, hi))
        {
            let (k, v) = kv?;
            let mut rec = buckets::decode(&v, QUARTER)?;
            rec.retain(|b| b.0 < lo || b.0 >= hi);
            days.insert(rollup_key_day(&k), rec);
        }
        for q in quarters {
            days.entry(buckets::floor(q.0, DAY)).or_default().push(q);
        }
        let mut batch = sled::Batch::default();
        for (day, mut rec) in days {
            rec.sort_by_key(|b| b.0);
            let key = rollup_key(id, day);
            if rec.is_empty() {
                batch.remove(&key[..]);
            } else {
                batch.insert(&key[..], buckets::encode(&rec, QUARTER));
            }
        }
        self.rollups.apply_batch(batch)?;
        self.metrics.rollup_recomputes.inc();
        Ok(())
    }

    /// Sets a stream's open days after opening the store: the day of its newest sealed point,
    /// or the day after its last day record if later; their quarters come from the chunks'
    /// minute summaries.
    fn rebuild_open_days(&self, st: &mut StreamState) -> Result<()> {
        let id = st.rec.id;
        let last_rec = match self
            .rollups
            .range(rollup_key(id, 0)..=rollup_key(id, i64::MAX))
            .next_back()
        {
            Some(kv) => Some(rollup_key_day(&kv?.0)),
            None => None,
        };
        let from_chunks = st.sealed_max.map(|m| buckets::floor(m, DAY));
        st.open_day = match (from_chunks, last_rec) {
            (Some(a), Some(r)) => Some(a.max(r + DAY)),
            (Some(a), None) => Some(a),
            (None, Some(r)) => Some(r + DAY),
            (None, None) => None,
        };
        let q = match (st.open_day, st.sealed_max) {
            (Some(d), Some(m)) if d <= m => {
                buckets::regrid(self.sealed_minutes(id, d, m + 1)?, QUARTER)
            }
            _ => Vec::new(),
        };
        st.set_open_quarters(&q);
        Ok(())
    }

    /// Removes the day records of stream `id` that end at or before `before`.
    fn expire_rollups(&self, id: u64, before: i64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for kv in self
            .rollups
            .range(rollup_key(id, 0)..rollup_key(id, buckets::floor(before, DAY) - DAY + 1))
        {
            batch.remove(kv?.0);
        }
        self.rollups.apply_batch(batch)?;
        Ok(())
    }

    /// Replaces the chunk at `old` (if any) with `pieces`: appends them, makes them durable,
    /// then updates the index atomically. Every piece must be non-empty.
    fn store_chunks(&self, id: u64, old: Option<&[u8]>, pieces: &[Series]) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut released = None;
        if let Some(k) = old {
            if let Some(v) = self.chunks.get(k)? {
                released = Some(parse_index(&v)?.0);
            }
            batch.remove(k);
        }
        for p in pieces {
            if let Some(first) = p.first_ts() {
                let (v, _) = self.append_chunk(p)?;
                batch.insert(&chunk_key(id, first), &v);
            }
        }
        self.files.sync()?;
        self.chunks.apply_batch(batch)?;
        if let Some(l) = released {
            self.files.release(l);
        }
        Ok(())
    }

    fn last_chunk(&self, id: u64) -> Result<Option<(i64, Series)>> {
        match self.chunk_scan(id).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some((
                    chunk_key_ts(&k),
                    codec::decode(&self.chunk_bytes(&v)?)?,
                )))
            }
            None => Ok(None),
        }
    }

    /// Recomputes `sealed_max` and `current` of a stream from its head and last chunk.
    fn recompute_tail(&self, st: &mut StreamState) -> Result<()> {
        let last = self.last_chunk(st.rec.id)?;
        st.sealed_max = last.as_ref().and_then(|(_, s)| s.last_ts());
        st.current = match st.head.last_point()? {
            Some(p) => Some(p),
            None => last.map(|(_, s)| s.point(s.len() - 1)),
        };
        Ok(())
    }

    /// Seals the heads of `ids`: full chunks of `chunk_points`, or (`all`) everything. In two
    /// phases, so that one fsync covers them all and readers always see every point: first the
    /// chunks are appended while the heads still hold their points; then, after the sync, each
    /// stream's index entries go in and its head lets go of the sealed points.
    fn seal(&self, ids: &[u64], all: bool) -> Result<()> {
        let cp = self.cfg.chunk_points;
        // Per stream: its chunks' index entries (key, value), their quarters, the last sealed
        // timestamp.
        type Plan = (u64, Vec<([u8; 16], [u8; 20])>, Vec<Bucket>, i64);
        let mut plans: Vec<Plan> = Vec::new();
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            let sh = self.shards[shard_of_id(*id)].lock();
            let Some(st) = sh.streams.get(id) else {
                continue;
            };
            if st.head.is_empty() || (!all && st.head.len() < cp) {
                continue;
            }
            // Only the points that are sealed now: whole chunks, or all of them.
            let want = if all {
                usize::MAX
            } else {
                cp * (st.head.len() / cp)
            };
            let mut s = st.head.series_prefix(want)?;
            drop(sh);
            let mut entries = Vec::new();
            let mut last = None;
            let mut mins = Vec::new();
            loop {
                let rest = if all || s.len() <= cp {
                    None
                } else {
                    Some(s.split_off(cp))
                };
                if let (Some(first), Some(l)) = (s.first_ts(), s.last_ts()) {
                    let (v, m) = self.append_chunk(&s)?;
                    entries.push((chunk_key(*id, first), v));
                    buckets::merge_later(&mut mins, &m);
                    last = Some(l);
                }
                match rest {
                    Some(r) if r.len() >= cp => s = r,
                    _ => break,
                }
            }
            if let Some(m) = last {
                plans.push((*id, entries, buckets::regrid(mins, QUARTER), m));
            }
        }
        if plans.is_empty() {
            return Ok(());
        }
        self.files.sync()?;
        // Every shard involved stays locked, in ascending order, from before the index
        // entries are committed until the heads have dropped the sealed points: a reader sees
        // each point in its head or in a chunk, never both, never neither. One transaction for
        // every stream (one per stream was 8 % of the apply thread).
        let mut shard_ids: Vec<usize> = plans.iter().map(|p| shard_of_id(p.0)).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: Vec<_> = shard_ids.iter().map(|i| self.shards[*i].lock()).collect();
        let mut batch = sled::Batch::default();
        let mut rbatch = sled::Batch::default();
        // Per plan: the open day and the quarters that stay open after sealing.
        let mut after: Vec<Option<(i64, Vec<Bucket>)>> = Vec::with_capacity(plans.len());
        for (id, entries, new_q, m) in &plans {
            let g = shard_ids.binary_search(&shard_of_id(*id)).expect("locked");
            let Some(st) = guards[g].streams.get(id) else {
                after.push(None);
                continue;
            };
            for (k, v) in entries {
                batch.insert(&k[..], &v[..]);
            }
            // The sealed points' quarters join the open days; days that sealing has now passed
            // are written to their day records, once. (Quarters of days already recorded, after
            // deletes or expiry, are merged into those records.)
            let open_day = st
                .open_day
                .map_or(buckets::floor(*m, DAY), |d| d.max(buckets::floor(*m, DAY)));
            let mut open = st.open_quarters()?;
            buckets::combine_into(&mut open, new_q);
            let split = open.partition_point(|b| b.0 < open_day);
            self.add_quarters(*id, &open[..split], &mut rbatch)?;
            after.push(Some((open_day, open.split_off(split))));
        }
        self.commit_index(&batch, &rbatch)?;
        for ((id, _, _, m), after) in plans.iter().zip(after) {
            let Some((open_day, open)) = after else {
                continue;
            };
            let g = shard_ids.binary_search(&shard_of_id(*id)).expect("locked");
            let Some(st) = guards[g].streams.get_mut(id) else {
                continue;
            };
            st.open_day = Some(open_day);
            st.set_open_quarters(&open);
            let n = st.head.delete_range(0, m + 1)?;
            self.open_points.fetch_sub(n as u64, AtOrd::Relaxed);
            st.sealed_max = Some(st.sealed_max.map_or(*m, |old| old.max(*m)));
        }
        Ok(())
    }

    /// Applies chunk index entries and day records atomically across the two trees.
    fn commit_index(&self, chunks: &sled::Batch, rollups: &sled::Batch) -> Result<()> {
        (&self.chunks, &self.rollups)
            .transaction(|(c, r)| {
                c.apply_batch(chunks)?;
                r.apply_batch(rollups)?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StorageError::from(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StorageError::corrupt("chunks", "index transaction aborted")
                }
            })
    }

    /// Key of the chunk a late point at `ts` belongs to: the last chunk starting at or before
    /// `ts`, or else the stream's first chunk.
    fn target_chunk(&self, id: u64, ts: i64) -> Result<Option<sled::IVec>> {
        if let Some(kv) = self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, ts))
            .next_back()
        {
            return Ok(Some(kv?.0));
        }
        Ok(self.chunk_scan(id).next().transpose()?.map(|kv| kv.0))
    }

    /// Writes back a chunk read at `old_key` after changes: re-keyed when its first timestamp
    /// changed, split when it grew past twice the chunk size, removed when empty. Atomic.
    fn rewrite_chunk(&self, id: u64, old_key: &[u8], mut s: Series) -> Result<()> {
        let cp = self.cfg.chunk_points;
        let mut pieces = Vec::new();
        while s.len() > 2 * cp {
            let rest = s.split_off(cp);
            pieces.push(std::mem::replace(&mut s, rest));
        }
        if !s.is_empty() {
            pieces.push(s);
        }
        self.store_chunks(id, Some(old_key), &pieces)
    }

    fn merge_late(
        &self,
        st: &mut StreamState,
        mut late: Vec<PointRec>,
        server_ts: i64,
    ) -> Result<()> {
        self.metrics.late_points.inc_by(late.len() as u64);
        late.sort_by_key(|p| p.ts);
        let id = st.rec.id;
        let span = match (late.first(), late.last()) {
            (Some(a), Some(b)) => (a.ts, b.ts + 1),
            _ => return Ok(()),
        };
        let mut cur: Option<(sled::IVec, Series)> = None;
        for p in late {
            let Some(target) = self.target_chunk(id, p.ts)? else {
                // No chunk at all (they were deleted meanwhile): the point belongs to the head.
                st.head.write(std::slice::from_ref(&p), server_ts)?;
                continue;
            };
            if cur.as_ref().is_none_or(|(k, _)| *k != target) {
                if let Some((k, s)) = cur.take() {
                    self.rewrite_chunk(id, &k, s)?;
                }
                let loc = self
                    .chunks
                    .get(&target)?
                    .ok_or_else(|| StorageError::corrupt("chunks", "chunk vanished"))?;
                cur = Some((target, codec::decode(&self.chunk_bytes(&loc)?)?));
            }
            if let Some((_, s)) = cur.as_mut() {
                s.upsert(p.ts, p.value, server_ts, p.extras);
            }
        }
        if let Some((k, s)) = cur.take() {
            self.rewrite_chunk(id, &k, s)?;
        }
        self.recompute_quarters(st, span.0, span.1)
    }

    /// Deletes sealed points in `[from, to)`. The 15-minute rollups there are recomputed, unless
    /// `keep_rollups` (retention: rollups outlive raw points).
    fn delete_chunks_in(
        &self,
        st: &mut StreamState,
        from: i64,
        to: i64,
        keep_rollups: bool,
    ) -> Result<u64> {
        let id = st.rec.id;
        let mut deleted = 0u64;
        let mut keys: Vec<sled::IVec> = Vec::new();
        if let Some(kv) = self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, from))
            .next_back()
        {
            keys.push(kv?.0);
        }
        let upper = chunk_key(id, to.min(crate::time::MAX_TIMESTAMP + 1));
        for kv in self.chunks.range(chunk_key(id, from)..upper) {
            let k = kv?.0;
            if keys.last() != Some(&k) {
                keys.push(k);
            }
        }
        for k in keys {
            let Some(loc) = self.chunks.get(&k)? else {
                continue;
            };
            let bytes = self.chunk_bytes(&loc)?;
            let h = codec::decode_header(&bytes)?;
            if h.last_ts < from || h.first_ts >= to {
                continue;
            }
            if h.first_ts >= from && h.last_ts < to {
                self.chunks.remove(&k)?;
                self.files.release(parse_index(&loc)?.0);
                deleted += h.n as u64;
                continue;
            }
            let mut s = codec::decode(&bytes)?;
            deleted += s.delete_range(from, to) as u64;
            self.rewrite_chunk(id, &k, s)?;
        }
        if !keep_rollups {
            self.recompute_quarters(st, from, to)?;
        }
        Ok(deleted)
    }

    fn remove_stream_data(&self, id: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut released = Vec::new();
        for kv in self.chunks.scan_prefix(id_key(id)) {
            let (k, v) = kv?;
            if k.len() == 16 {
                released.push(parse_index(&v)?.0);
            }
            batch.remove(k);
        }
        self.chunks.apply_batch(batch)?;
        let mut rbatch = sled::Batch::default();
        for kv in self.rollups.scan_prefix(id_key(id)) {
            rbatch.remove(kv?.0);
        }
        self.rollups.apply_batch(rbatch)?;
        for l in released {
            self.files.release(l);
        }
        self.streams.remove(id_key(id))?;
        Ok(())
    }

    /// Applies one logged record. `replay` is set while the log is replayed at open, when the
    /// registry must be rebuilt from the records too.
    fn apply(&self, rec: &Record, replay: bool) -> Result<u64> {
        match rec {
            Record::PutStream(r) => {
                if replay {
                    let mut reg = self.registry.write();
                    reg.by_path.insert(
                        Arc::from(r.path.as_str()),
                        Entry {
                            id: r.id,
                            ty: r.meta.stream_type,
                            forwards: !r.meta.forward_to.is_empty(),
                        },
                    );
                    reg.next_counter = reg.next_counter.max((r.id >> SHARD_BITS) + 1);
                }
                let bytes = rmp_serde::to_vec_named(r)
                    .map_err(|e| StorageError::corrupt("stream record", e.to_string()))?;
                self.streams.insert(id_key(r.id), bytes)?;
                let mut sh = self.shards[shard_of_id(r.id)].lock();
                match sh.streams.get_mut(&r.id) {
                    Some(st) => {
                        if st.head.kind() != r.meta.stream_type.kind() && st.head.is_empty() {
                            st.head =
                                Head::new(r.meta.stream_type.kind(), self.cfg.head_block_points);
                        }
                        st.rec = r.clone();
                    }
                    None => {
                        sh.streams.insert(
                            r.id,
                            StreamState::new(r.clone(), self.cfg.head_block_points),
                        );
                    }
                }
                Ok(0)
            }
            Record::DeleteStream { id } => {
                let removed = self.shards[shard_of_id(*id)].lock().streams.remove(id);
                if let Some(st) = &removed {
                    self.open_points
                        .fetch_sub(st.head.len() as u64, AtOrd::Relaxed);
                    if replay {
                        let mut reg = self.registry.write();
                        if reg.by_path.get(st.rec.path.as_str()).map(|e| e.id) == Some(*id) {
                            reg.by_path.remove(st.rec.path.as_str());
                        }
                    }
                }
                self.remove_stream_data(*id)?;
                Ok(removed.is_some() as u64)
            }
            Record::Points { server_ts, groups } => {
                let mut n = 0u64;
                let mut to_seal = Vec::new();
                for (id, points) in groups {
                    let mut sh = self.shards[shard_of_id(*id)].lock();
                    let Some(st) = sh.streams.get_mut(id) else {
                        continue; // deleted after the batch was checked
                    };
                    let before = st.head.len();
                    // The newest point of the batch (the last written of equal timestamps).
                    if let Some(p) = points.iter().max_by_key(|p| p.ts) {
                        if st.current.as_ref().is_none_or(|c| p.ts >= c.timestamp) {
                            st.current = Some(DataPoint {
                                timestamp: p.ts,
                                server_timestamp: *server_ts,
                                value: p.value.clone(),
                                extras: p.extras.clone(),
                            });
                        }
                    }
                    match st.sealed_max {
                        Some(m) if points.iter().any(|p| p.ts <= m) => {
                            let (late, fresh): (Vec<PointRec>, Vec<PointRec>) =
                                points.iter().cloned().partition(|p| p.ts <= m);
                            st.head.write(&fresh, *server_ts)?;
                            self.merge_late(st, late, *server_ts)?;
                        }
                        _ => st.head.write(points, *server_ts)?,
                    }
                    if st.head.len() >= self.cfg.chunk_points {
                        to_seal.push(*id);
                    }
                    let after = st.head.len();
                    if after >= before {
                        self.open_points
                            .fetch_add((after - before) as u64, AtOrd::Relaxed);
                    } else {
                        self.open_points
                            .fetch_sub((before - after) as u64, AtOrd::Relaxed);
                    }
                    st.last_write = *server_ts;
                    n += points.len() as u64;
                }
                self.seal(&to_seal, false)?;
                Ok(n)
            }
            Record::DeleteRange { id, from, to } => {
                let mut sh = self.shards[shard_of_id(*id)].lock();
                let Some(st) = sh.streams.get_mut(id) else {
                    return Ok(0);
                };
                let from_head = st.head.delete_range(*from, *to)?;
                self.open_points.fetch_sub(from_head as u64, AtOrd::Relaxed);
                let n = from_head as u64 + self.delete_chunks_in(st, *from, *to, false)?;
                if n > 0 {
                    self.recompute_tail(st)?;
                }
                Ok(n)
            }
            Record::Expire {
                id,
                raw_before,
                rollups_before,
            } => {
                // Expiring points of the open head reach the rollups first: sealing adds them.
                let seal_first = self.shards[shard_of_id(*id)]
                    .lock()
                    .streams
                    .get(id)
                    .is_some_and(|st| st.head.first_ts().is_some_and(|f| f < *raw_before));
                if seal_first {
                    self.seal(&[*id], true)?;
                }
                let mut sh = self.shards[shard_of_id(*id)].lock();
                let Some(st) = sh.streams.get_mut(id) else {
                    return Ok(0);
                };
                // Open days whose raw points expire get their day records now: the records
                // outlive the chunks, from which open days are rebuilt at open.
                if let Some(d) = st.open_day.filter(|d| *raw_before > *d) {
                    let new_open = buckets::floor(*raw_before - 1, DAY) + DAY;
                    let open = st.open_quarters()?;
                    let split = open.partition_point(|b| b.0 < new_open);
                    let mut rbatch = sled::Batch::default();
                    self.add_quarters(*id, &open[..split], &mut rbatch)?;
                    self.rollups.apply_batch(rbatch)?;
                    st.set_open_quarters(&open[split..]);
                    st.open_day = Some(new_open.max(d));
                }
                let from_head = st.head.delete_range(0, *raw_before)?;
                self.open_points.fetch_sub(from_head as u64, AtOrd::Relaxed);
                let n = from_head as u64 + self.delete_chunks_in(st, 0, *raw_before, true)?;
                if n > 0 {
                    self.recompute_tail(st)?;
                }
                self.expire_rollups(*id, *rollups_before)?;
                Ok(n)
            }
        }
    }

    /// Saves open heads, flushes sled, records `seq` as applied, and returns once that is
    /// durable. Afterwards the log up to `seq` is no longer needed. `last`: the clean shutdown's
    /// checkpoint, whose snapshot is encoded compactly (pco) rather than fast.
    fn checkpoint(&self, seq: u64, now: i64, last: bool) -> Result<()> {
        let started = Instant::now();
        let idle_ms = self.cfg.idle_seal.as_millis() as i64;
        let mut saved = 0usize;
        let idle: Vec<u64> = self
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .streams
                    .values()
                    .filter(|st| !st.head.is_empty() && now - st.last_write >= idle_ms)
                    .map(|st| st.rec.id)
                    .collect::<Vec<_>>()
            })
            .collect();
        self.seal(&idle, true)?;
        // Chunks first: the snapshot's heads leave out what is sealed.
        self.db.flush()?;
        // Heads change only on this (the apply) thread, so they are read as they are written.
        crate::snapshot::write(&self.cfg.path, seq, |emit| {
            for shard in self.shards.iter() {
                let sh = shard.lock();
                for st in sh.streams.values() {
                    if st.head.is_empty() {
                        continue;
                    }
                    for part in st.head.snapshot_parts(last)? {
                        emit(st.rec.id, &part)?;
                    }
                    saved += 1;
                }
            }
            Ok(())
        })?;
        let next = self.registry.read().next_counter;
        self.meta.insert("checkpoint_seq", &seq.to_be_bytes())?;
        self.meta.insert("next_counter", &next.to_be_bytes())?;
        self.db.flush()?;
        // No durable index entry points into a file without live bytes any more.
        self.files.delete_dead()?;
        let secs = started.elapsed().as_secs_f64();
        self.metrics.checkpoint_seconds.observe(secs);
        tracing::debug!(seq, heads = saved, secs, "checkpoint");
        Ok(())
    }

    fn load(&self) -> Result<()> {
        for kv in self.chunks.iter() {
            let (k, v) = kv?;
            if k.len() == 16 {
                self.files.count_live(parse_index(&v)?.0);
            }
        }
        let mut reg = self.registry.write();
        for kv in self.streams.iter() {
            let (_, v) = kv?;
            let rec: StreamRecord = rmp_serde::from_slice(&v)
                .map_err(|e| StorageError::corrupt("stream record", e.to_string()))?;
            reg.by_path.insert(
                Arc::from(rec.path.as_str()),
                Entry {
                    id: rec.id,
                    ty: rec.meta.stream_type,
                    forwards: !rec.meta.forward_to.is_empty(),
                },
            );
            reg.next_counter = reg.next_counter.max((rec.id >> SHARD_BITS) + 1);
            self.shards[shard_of_id(rec.id)]
                .lock()
                .streams
                .insert(rec.id, StreamState::new(rec, self.cfg.head_block_points));
        }
        if let Some(v) = self.meta.get("next_counter")? {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v);
            reg.next_counter = reg.next_counter.max(u64::from_be_bytes(b));
        }
        drop(reg);
        if let Some((_, entries)) = crate::snapshot::read(&self.cfg.path)? {
            // A head's parts are consecutive entries of its id, oldest first.
            let mut entries = entries.into_iter().peekable();
            while let Some((id, bytes)) = entries.next() {
                let mut series = codec::decode(&bytes)?;
                while let Some((_, more)) = entries.next_if(|(next, _)| *next == id) {
                    let more = codec::decode(&more)?;
                    if let (Some(a), Some(b)) = (series.last_ts(), more.first_ts()) {
                        if a >= b {
                            return Err(StorageError::corrupt(
                                "heads snapshot",
                                format!("parts of the head of stream {id} overlap"),
                            ));
                        }
                    }
                    series.append_newer(more);
                }
                if let Some(st) = self.shards[shard_of_id(id)].lock().streams.get_mut(&id) {
                    st.head = Head::from_series(series, self.cfg.head_block_points)?;
                }
            }
        }
        let mut open = 0u64;
        for shard in self.shards.iter() {
            let mut sh = shard.lock();
            for st in sh.streams.values_mut() {
                self.recompute_tail(st)?;
                self.rebuild_open_days(st)?;
                // A chunk sealed after the last checkpoint may already hold points of the saved
                // head (sealing moves the whole head): those copies in the head are stale.
                if let Some(m) = st.sealed_max {
                    st.head.delete_range(0, m + 1)?;
                }
                open += st.head.len() as u64;
            }
        }
        self.open_points.store(open, AtOrd::Relaxed);
        Ok(())
    }

    fn stream_info(&self, e: Entry) -> Option<StreamInfo> {
        self.shards[shard_of_id(e.id)]
            .lock()
            .streams
            .get(&e.id)
            .map(StreamState::info)
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn apply_loop(inner: Arc<Inner>, wal: Arc<Wal>, rx: Receiver<Vec<Pending>>, mut applied: u64) {
    let interval = inner.cfg.checkpoint_interval;
    let mut last_cp = Instant::now();
    let mut cp_seq = applied;
    let mut log_bytes_at_cp = wal.stats.bytes.load(AtOrd::Relaxed);
    // Whether the snapshot on disk was encoded compactly (a clean shutdown's); periodic ones are
    // encoded fast, so a shutdown after one takes a last, compact checkpoint even when nothing
    // was applied since.
    let mut snapshot_compact = false;
    let mut failed = false;
    loop {
        let msg = rx.recv_timeout(Duration::from_millis(200).min(interval));
        let disconnected = matches!(msg, Err(RecvTimeoutError::Disconnected));
        if let Ok(group) = msg {
            inner.metrics.group_frames.observe(group.len() as f64);
            let feed_active = inner.feed.active();
            for p in group {
                let r = if failed {
                    Err(StorageError::Closed)
                } else {
                    inner.apply(&p.record, false)
                };
                if let Err(e) = &r {
                    if !failed {
                        tracing::error!(error = %e, seq = p.seq, "applying a logged record failed; the store stops accepting writes (the log keeps the record)");
                    }
                    failed = true;
                } else {
                    applied = p.seq;
                }
                // The feed holds the record before the applied sequence number says so, and
                // both before the writer hears back.
                if r.is_ok() {
                    if feed_active {
                        inner.feed.push(p.seq, p.record);
                    } else {
                        inner.feed.skip(p.seq);
                    }
                    inner.feed.applied.store(p.seq, AtOrd::Release);
                }
                if let Some(d) = p.done {
                    let _ = d.send(r);
                }
            }
            inner.feed.notify(applied);
        }
        let log_grown = wal.stats.bytes.load(AtOrd::Relaxed) - log_bytes_at_cp;
        let due = applied > cp_seq
            && (last_cp.elapsed() >= interval || log_grown >= inner.cfg.checkpoint_log_bytes);
        let last_needed = disconnected && (applied > cp_seq || !snapshot_compact);
        if !failed && (due || last_needed) {
            match inner.checkpoint(applied, crate::time::now_ms(), disconnected) {
                Ok(()) => {
                    cp_seq = applied;
                    snapshot_compact = disconnected;
                    log_bytes_at_cp = wal.stats.bytes.load(AtOrd::Relaxed);
                    let kept = wal.truncate_held(
                        applied,
                        inner.feed.min_hold(),
                        inner.cfg.feed_retention_bytes,
                    );
                    if let Err(e) = kept {
                        tracing::warn!(error = %e, "could not delete old log segments");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint failed; the log is kept"),
            }
            last_cp = Instant::now();
        }
        if disconnected {
            // The log thread has stopped; if the last checkpoint covers everything applied, the
            // log holds nothing that sled does not, and a reopen has nothing to replay.
            let held = inner.feed.min_hold().is_some_and(|h| h < applied);
            if !failed && cp_seq == applied && !held {
                if let Err(e) = wal.remove_all() {
                    tracing::warn!(error = %e, "could not delete log segments at shutdown");
                }
            }
            break;
        }
    }
}

/// A setting sled recorded in `dir/conf` when it created the store there: `Ok(None)` for a new
/// store. sled refuses to open an existing store with other values of some settings
/// (compression, segment size), so new defaults apply to new stores only.
pub(crate) fn sled_setting(dir: &std::path::Path, key: &str) -> std::io::Result<Option<String>> {
    // sled's `conf` is text lines followed by a binary checksum.
    match std::fs::read(dir.join("conf")) {
        Ok(conf) => Ok(String::from_utf8_lossy(&conf)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens a sled database, waiting up to 5 s while its file lock is still held. sled releases
/// the lock from a background thread after the previous handle is dropped, so a reopen right
/// after a close may find it held for a moment. sled reports that as an `Other` I/O error
/// ("could not acquire lock on ...") wrapping the `WouldBlock`, so both are recognized.
pub(crate) fn open_sled(cfg: &sled::Config) -> sled::Result<sled::Db> {
    let mut waited = Duration::ZERO;
    loop {
        match cfg.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock") =>
            {
                if waited >= Duration::from_secs(5) {
                    return Err(sled::Error::Io(e));
                }
                std::thread::sleep(Duration::from_millis(20));
                waited += Duration::from_millis(20);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether sled compresses its pages (zstd level 1): yes for a new store; an existing one keeps
/// what it was created with.
fn sled_compression(sled_dir: &std::path::Path) -> bool {
    match sled_setting(sled_dir, "use_compression") {
        Ok(Some(v)) => v == "true",
        Ok(None) => true,
        Err(_) => false,
    }
}

/// sled's segment size: 128 KiB for a new store; an existing one keeps what it was created with.
/// With compressed pages the index and stream records of the standard workload take 2.65 MB in
/// 128 KiB segments against 4.7 MB in sled's default 512 KiB ones (4 % of the whole store;
/// 64 KiB is no smaller, 256 KiB varied from 2.1 to 3.2 MB between runs, 1 MiB took 6.3 MB).
fn sled_segment_size(sled_dir: &std::path::Path) -> usize {
    match sled_setting(sled_dir, "segment_size") {
        Ok(Some(v)) => v.parse().unwrap_or(512 << 10),
        Ok(None) => 128 << 10,
        Err(_) => 512 << 10,
    }
}

impl Engine {
    /// Opens (or creates) the store in `cfg.path`, recovering everything that was acknowledged.
    pub fn open(cfg: Config) -> Result<Engine> {
        cfg.validate()?;
        let started = Instant::now();
        let wal_dir = cfg.path.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(|e| StorageError::io(&wal_dir, e))?;
        let sled_dir = cfg.path.join("sled");
        let sled_cfg = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(cfg.cache_bytes)
            .mode(sled::Mode::LowSpace)
            .use_compression(sled_compression(&sled_dir))
            .segment_size(sled_segment_size(&sled_dir))
            .compression_factor(1)
            .flush_every_ms(Some(1000));
        let db = open_sled(&sled_cfg)?;
        let inner = Arc::new(Inner {
            chunks: db.open_tree("chunks")?,
            rollups: db.open_tree("rollups")?,
            streams: db.open_tree("streams")?,
            meta: db.open_tree("meta")?,
            files: ChunkFiles::open(&cfg.path.join("chunks"), 256 << 20)?,
            db,
            registry: RwLock::new(Registry {
                by_path: BTreeMap::new(),
                next_counter: 1,
            }),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            metrics: StoreMetrics::new(),
            open_points: AtomicU64::new(0),
            feed: FeedState::new(0, BTreeMap::new(), cfg.feed_buffer_bytes),
            cfg,
        });
        inner.load()?;
        let cp_seq = match inner.meta.get("checkpoint_seq")? {
            Some(v) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            None => 0,
        };
        let mut replayed = 0u64;
        let last = wal::replay(&wal_dir, cp_seq, |_, rec| {
            replayed += 1;
            inner.apply(&rec, true).map(|_| ())
        })?;
        let mut holds = BTreeMap::new();
        for kv in inner.meta.scan_prefix(HOLD_PREFIX) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[HOLD_PREFIX.len()..]).into_owned();
            let mut b = [0u8; 8];
            b.copy_from_slice(&v);
            holds.insert(name, u64::from_be_bytes(b));
        }
        for (name, seq) in holds {
            inner.feed.set_hold(&name, Some(seq));
        }
        inner.feed.skip(last);
        inner.feed.applied.store(last, AtOrd::Release);
        let (apply_tx, apply_rx) = mpsc::channel();
        let m = inner.metrics.clone();
        let wal = Arc::new(Wal::start(
            &wal_dir,
            last + 1,
            inner.cfg.segment_bytes,
            apply_tx,
            move |secs| m.flush_seconds.observe(secs),
        )?);
        let (i2, w2) = (inner.clone(), wal.clone());
        let apply = std::thread::Builder::new()
            .name("meterstream-apply".into())
            .spawn(move || apply_loop(i2, w2, apply_rx, last))
            .map_err(|e| StorageError::io(&inner.cfg.path, e))?;
        tracing::info!(
            path = %inner.cfg.path.display(),
            streams = inner.registry.read().by_path.len(),
            replayed_records = replayed,
            secs = started.elapsed().as_secs_f64(),
            "store opened"
        );
        Ok(Engine {
            inner,
            wal,
            apply: Mutex::new(Some(apply)),
        })
    }

    /// Rolls up the raw points of the range at query time, page by page, so that only the answer
    /// is held in memory: for interval boundaries off the stored grids.
    fn rollups_from_raw(&self, path: &str, q: &RollupQuery) -> Result<Vec<RollupValue>> {
        let edge = |order: Order, from: i64, to: i64| -> Result<Option<(i64, f64)>> {
            let page = self.history(
                path,
                &HistoryQuery {
                    from,
                    to,
                    order,
                    timeline: Timeline::Client,
                    limit: 1,
                    cursor: None,
                },
            )?;
            Ok(page
                .items
                .first()
                .and_then(|p| p.value.as_f64().map(|v| (p.timestamp, v))))
        };
        let (lo, hi) = (crate::time::MIN_TIMESTAMP, crate::time::MAX_TIMESTAMP + 1);
        // Without an explicit bound the range is the data's own.
        let from = match q.from {
            Some(f) => f,
            None => edge(Order::Asc, lo, hi)?.map_or(lo, |p| p.0),
        };
        let to = match q.to {
            Some(t) => t,
            None => edge(Order::Desc, lo, hi)?.map_or(from, |p| p.0 + 1),
        };
        let before = edge(Order::Desc, lo, from)?.map(|p| p.1);
        let spec = RollupSpec {
            interval: q.interval,
            method: q.method,
            tz: &q.tz,
            fill: q.fill,
        };
        if from < to {
            let mut roller = Roller::new(spec, before, from, to)?;
            let mut cursor = None;
            loop {
                let page = self.history(
                    path,
                    &HistoryQuery {
                        from,
                        to,
                        order: Order::Asc,
                        timeline: Timeline::Client,
                        limit: 10_000,
                        cursor,
                    },
                )?;
                for p in &page.items {
                    if let Some(v) = p.value.as_f64() {
                        roller.push(p.timestamp, v)?;
                    }
                }
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            roller.finish()
        } else {
            Ok(Vec::new())
        }
    }

    fn log_and_wait(&self, rec: Record) -> Result<u64> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.wal.append(rec, Some(tx))?;
        rx.recv().map_err(|_| StorageError::Closed)?
    }

    /// Finds the stream or creates it with `ty`; the creation is logged before the stream becomes
    /// visible, so every record that uses it comes after it in the log.
    /// Adds copies of `points`, just accepted for the stream of `e`, for each stream its
    /// `forward_to` lists, creating a missing target with the source's type and units. Copies
    /// are not forwarded again (so two streams forwarding to each other cannot loop), and a
    /// target whose values are of another kind (its type was changed after the forward was
    /// set) is skipped and counted in `meterstream_forward_skipped_total`.
    fn forward(
        &self,
        e: Entry,
        points: &[PointRec],
        now: i64,
        out: &mut Vec<(u64, Vec<PointRec>)>,
    ) -> Result<()> {
        let (targets, units) = {
            let sh = self.inner.shards[shard_of_id(e.id)].lock();
            match sh.streams.get(&e.id) {
                Some(st) => (st.rec.meta.forward_to.clone(), st.rec.meta.units.clone()),
                None => return Ok(()),
            }
        };
        for t in targets {
            let te = self.get_or_create(&t, e.ty, Some(units.clone()), now)?;
            if te.ty.kind() != e.ty.kind() {
                self.inner
                    .metrics
                    .forward_skipped
                    .inc_by(points.len() as u64);
                continue;
            }
            out.push((te.id, points.to_vec()));
        }
        Ok(())
    }

    fn get_or_create(
        &self,
        path: &str,
        ty: StreamType,
        units: Option<String>,
        now: i64,
    ) -> Result<Entry> {
        if let Some(e) = self.inner.lookup(path) {
            return Ok(e);
        }
        let mut reg = self.inner.registry.write();
        if let Some(e) = reg.by_path.get(path) {
            return Ok(*e);
        }
        let id = (reg.next_counter << SHARD_BITS) | shard_of_path(path);
        let mut meta = StreamMeta::new(ty);
        meta.units = units.unwrap_or_default();
        self.wal.append(
            Record::PutStream(StreamRecord {
                id,
                path: path.to_string(),
                meta,
                created: now,
            }),
            None,
        )?;
        reg.next_counter += 1;
        let e = Entry {
            id,
            ty,
            forwards: false,
        };
        reg.by_path.insert(Arc::from(path), e);
        Ok(e)
    }

    fn check_cursor(q: Option<&Cursor>, order: Order) -> Result<()> {
        match q {
            Some(c) if c.order() != order => Err(StorageError::invalid(
                "cursor",
                "it belongs to a listing in the other order",
            )),
            _ => Ok(()),
        }
    }

    fn history_client(&self, st: &StreamState, q: &HistoryQuery) -> Result<Page<DataPoint>> {
        let id = st.rec.id;
        let want = q.limit + 1;
        let mut out: Vec<DataPoint> = Vec::with_capacity(want.min(4096));
        let (mut lo, mut hi) = (q.from, q.to);
        match &q.cursor {
            Some(Cursor::Client { ts, .. }) if q.order == Order::Asc => lo = lo.max(ts + 1),
            Some(Cursor::Client { ts, .. }) => hi = hi.min(*ts),
            Some(_) => {
                return Err(StorageError::invalid(
                    "cursor",
                    "it belongs to another kind of listing",
                ))
            }
            None => {}
        }
        if lo < hi {
            let hi_key = chunk_key(id, hi.min(crate::time::MAX_TIMESTAMP + 1));
            if q.order == Order::Asc {
                for kv in self.inner.chunks_overlapping(id, lo, hi)? {
                    let s = codec::decode(&self.inner.chunk_bytes(&kv?.1)?)?;
                    for i in s.index_range(lo, hi) {
                        out.push(s.point(i));
                        if out.len() == want {
                            break;
                        }
                    }
                    if out.len() == want {
                        break;
                    }
                }
                if out.len() < want {
                    st.head.collect(lo, hi, Order::Asc, want, &mut out)?;
                }
            } else {
                st.head.collect(lo, hi, Order::Desc, want, &mut out)?;
                if out.len() < want {
                    for kv in self.inner.chunks.range(chunk_key(id, 0)..hi_key).rev() {
                        let (k, v) = kv?;
                        let s = codec::decode(&self.inner.chunk_bytes(&v)?)?;
                        for i in s.index_range(lo, hi).rev() {
                            out.push(s.point(i));
                            if out.len() == want {
                                break;
                            }
                        }
                        if out.len() == want || chunk_key_ts(&k) <= lo {
                            break;
                        }
                    }
                }
            }
        }
        let next = if out.len() > q.limit {
            out.truncate(q.limit);
            out.last().map(|p| Cursor::Client {
                order: q.order,
                ts: p.timestamp,
            })
        } else {
            None
        };
        Ok(Page { items: out, next })
    }

    fn history_server(&self, st: &StreamState, q: &HistoryQuery) -> Result<Page<DataPoint>> {
        let after = match &q.cursor {
            Some(Cursor::Server { server_ts, ts, .. }) => Some((*server_ts, *ts)),
            Some(_) => {
                return Err(StorageError::invalid(
                    "cursor",
                    "it belongs to another kind of listing",
                ))
            }
            None => None,
        };
        let keep = |key: (i64, i64)| {
            key.0 >= q.from
                && key.0 < q.to
                && after.is_none_or(|a| {
                    if q.order == Order::Asc {
                        key > a
                    } else {
                        key < a
                    }
                })
        };
        let mut found: Vec<DataPoint> = Vec::new();
        let mut take = |s: &Series| {
            for i in 0..s.len() {
                let srv = s.server_at(i);
                if keep((srv, s.ts[i])) {
                    found.push(s.point(i));
                }
            }
        };
        for kv in self.inner.chunk_scan(st.rec.id) {
            let (_, v) = kv?;
            let bytes = self.inner.chunk_bytes(&v)?;
            let h = codec::decode_header(&bytes)?;
            if h.max_server < q.from || h.min_server >= q.to {
                continue;
            }
            take(&codec::decode(&bytes)?);
        }
        take(&st.head.to_series()?);
        found.sort_by_key(|p| (p.server_timestamp, p.timestamp));
        if q.order == Order::Desc {
            found.reverse();
        }
        let next = if found.len() > q.limit {
            found.truncate(q.limit);
            found.last().map(|p| Cursor::Server {
                order: q.order,
                server_ts: p.server_timestamp,
                ts: p.timestamp,
            })
        } else {
            None
        };
        Ok(Page { items: found, next })
    }
}

impl Store for Engine {
    fn write(&self, groups: Vec<GroupIn>, now: i64) -> Result<WriteOutcome> {
        let mut errors = Vec::new();
        let mut out: Vec<(u64, Vec<PointRec>)> = Vec::with_capacity(groups.len());
        let mut stored = 0usize;
        for g in groups {
            let n = g.points.len();
            if n == 0 {
                continue;
            }
            if let Err(e) = validate_path(&g.stream) {
                let reason = match e {
                    StorageError::InvalidPath { reason, .. } => reason,
                    other => other.to_string(),
                };
                for k in 0..n {
                    errors.push(ItemError {
                        index: g.first_index + k,
                        error: StorageError::InvalidPath {
                            path: g.stream.clone(),
                            reason: reason.clone(),
                        },
                    });
                }
                continue;
            }
            let ts_of = |t: Option<i64>| t.map_or(Ok(now), check_range);
            let entry = match self.inner.lookup(&g.stream) {
                Some(e) => Some(e),
                None => {
                    let ty = g
                        .stream_type
                        .or_else(|| g.points.iter().find_map(|p| StreamType::infer(&p.value)));
                    match ty {
                        Some(ty)
                            if g.points.iter().any(|p| {
                                ts_of(p.timestamp).is_ok() && p.value.clone().into_value(ty).is_ok()
                            }) =>
                        {
                            Some(self.get_or_create(&g.stream, ty, g.stream_units.clone(), now)?)
                        }
                        _ => None,
                    }
                }
            };
            let ty = entry.map(|e| e.ty).or(g.stream_type);
            let mut points = Vec::with_capacity(n);
            for (k, p) in g.points.into_iter().enumerate() {
                let index = g.first_index + k;
                let ts = match ts_of(p.timestamp) {
                    Ok(ts) => ts,
                    Err(error) => {
                        errors.push(ItemError { index, error });
                        continue;
                    }
                };
                let Some(ty) = ty.or_else(|| StreamType::infer(&p.value)) else {
                    errors.push(ItemError {
                        index,
                        error: StorageError::InvalidValue {
                            stream: g.stream.clone(),
                            message: format!(
                                "cannot infer a stream type from {:?}; give stream_type",
                                p.value
                            ),
                        },
                    });
                    continue;
                };
                match p.value.into_value(ty) {
                    Ok(value) => points.push(PointRec {
                        ts,
                        value,
                        extras: p.extras,
                    }),
                    Err(message) => errors.push(ItemError {
                        index,
                        error: StorageError::InvalidValue {
                            stream: g.stream.clone(),
                            message,
                        },
                    }),
                }
            }
            if let (Some(e), false) = (entry, points.is_empty()) {
                stored += points.len();
                if e.forwards {
                    self.forward(e, &points, now, &mut out)?;
                }
                out.push((e.id, points));
            }
        }
        errors.sort_by_key(|e| e.index);
        if out.is_empty() {
            return Ok(WriteOutcome { stored: 0, errors });
        }
        self.log_and_wait(Record::Points {
            server_ts: now,
            groups: out,
        })?;
        self.inner.metrics.points_written.inc_by(stored as u64);
        Ok(WriteOutcome { stored, errors })
    }

    fn stream(&self, path: &str) -> Result<StreamInfo> {
        let e = self.inner.entry(path)?;
        self.inner
            .stream_info(e)
            .ok_or_else(|| StorageError::StreamNotFound { path: path.into() })
    }

    fn put_stream(&self, path: &str, update: StreamUpdate, now: i64) -> Result<StreamInfo> {
        validate_path(path)?;
        for f in update.forward_to.iter().flatten() {
            validate_path(f)?;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut reg = self.inner.registry.write();
            let existing = reg.by_path.get(path).copied();
            let (id, mut meta, created) = match existing {
                Some(e) => {
                    let sh = self.inner.shards[shard_of_id(e.id)].lock();
                    let st = sh
                        .streams
                        .get(&e.id)
                        .ok_or_else(|| StorageError::StreamNotFound { path: path.into() })?;
                    if let Some(t) = update.stream_type {
                        if t.kind() != st.rec.meta.stream_type.kind() && st.has_data() {
                            return Err(StorageError::Conflict {
                                path: path.into(),
                                message: format!(
                                    "it holds {} points and cannot change type from {} to {t}; delete its data first",
                                    st.rec.meta.stream_type, st.rec.meta.stream_type
                                ),
                            });
                        }
                    }
                    (e.id, st.rec.meta.clone(), st.rec.created)
                }
                None => {
                    let id = (reg.next_counter << SHARD_BITS) | shard_of_path(path);
                    reg.next_counter += 1;
                    (
                        id,
                        StreamMeta::new(update.stream_type.unwrap_or(StreamType::Double)),
                        now,
                    )
                }
            };
            if let Some(t) = update.stream_type {
                meta.stream_type = t;
            }
            if let Some(u) = update.units {
                meta.units = u;
            }
            if let Some(d) = update.description {
                meta.description = d;
            }
            if let Some(f) = update.forward_to {
                meta.forward_to = f;
            }
            if let Some(t) = update.data_ttl {
                meta.data_ttl = t;
            }
            if let Some(t) = update.rollup_ttl {
                meta.rollup_ttl = t;
            }
            let ty = meta.stream_type;
            // A copy must fit its target: the target may not be the stream itself, and an
            // existing target must hold the same kind of value.
            for f in &meta.forward_to {
                if f == path {
                    return Err(StorageError::Conflict {
                        path: path.into(),
                        message: "forward_to may not name the stream itself".into(),
                    });
                }
                if let Some(t) = reg.by_path.get(f.as_str()) {
                    if t.ty.kind() != ty.kind() {
                        return Err(StorageError::Conflict {
                            path: path.into(),
                            message: format!(
                                "forward_to {f:?} is a {} stream and cannot take copies of {ty} points",
                                t.ty
                            ),
                        });
                    }
                }
            }
            let forwards = !meta.forward_to.is_empty();
            self.wal.append(
                Record::PutStream(StreamRecord {
                    id,
                    path: path.to_string(),
                    meta,
                    created,
                }),
                Some(tx),
            )?;
            reg.by_path
                .insert(Arc::from(path), Entry { id, ty, forwards });
        }
        rx.recv().map_err(|_| StorageError::Closed)??;
        self.stream(path)
    }

    fn delete_stream(&self, path: &str) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut reg = self.inner.registry.write();
            let e = *reg
                .by_path
                .get(path)
                .ok_or_else(|| StorageError::StreamNotFound { path: path.into() })?;
            self.wal
                .append(Record::DeleteStream { id: e.id }, Some(tx))?;
            reg.by_path.remove(path);
        }
        rx.recv().map_err(|_| StorageError::Closed)??;
        Ok(())
    }

    fn matching_streams(
        &self,
        pattern: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, StreamType)>> {
        let prefix = crate::path::pattern_prefix(pattern);
        // A literal last segment rejects most paths without splitting them.
        let tail = match pattern.rsplit_once('/') {
            Some((_, t)) if t != "*" => Some(format!("/{t}")),
            _ => None,
        };
        let start = match after {
            Some(a) if a >= prefix.as_str() => std::ops::Bound::Excluded(a),
            _ => std::ops::Bound::Included(prefix.as_str()),
        };
        let reg = self.inner.registry.read();
        Ok(reg
            .by_path
            .range::<str, _>((start, std::ops::Bound::Unbounded))
            .take_while(|(p, _)| prefix.is_empty() || p.starts_with(prefix.as_str()))
            .filter(|(p, _)| tail.as_ref().is_none_or(|t| p.ends_with(t.as_str())))
            .filter(|(p, _)| crate::path::matches_pattern(pattern, p))
            .take(limit)
            .map(|(p, e)| (p.to_string(), e.ty))
            .collect())
    }

    fn list_streams(
        &self,
        filter: &StreamFilter,
        order: Order,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> Result<Page<StreamInfo>> {
        Self::check_cursor(cursor, order)?;
        let after = match cursor {
            Some(Cursor::Key { key, .. }) => Some(key.as_str()),
            Some(_) => {
                return Err(StorageError::invalid(
                    "cursor",
                    "it belongs to another kind of listing",
                ))
            }
            None => None,
        };
        let prefix = filter.prefix();
        let reg = self.inner.registry.read();
        let mut out = Vec::new();
        let mut more = false;
        let range: Box<dyn Iterator<Item = (&Arc<str>, &Entry)>> = match order {
            Order::Asc => Box::new(
                reg.by_path
                    .range::<str, _>((
                        std::ops::Bound::Included(prefix),
                        std::ops::Bound::Unbounded,
                    ))
                    .filter(|(p, _)| after.is_none_or(|a| &***p > a)),
            ),
            Order::Desc => Box::new(
                reg.by_path
                    .range::<str, _>((
                        std::ops::Bound::Included(prefix),
                        std::ops::Bound::Unbounded,
                    ))
                    .rev()
                    .filter(|(p, _)| after.is_none_or(|a| &***p < a)),
            ),
        };
        for (p, e) in range {
            if !p.starts_with(prefix) {
                if order == Order::Asc {
                    break;
                }
                continue;
            }
            let Some(info) = self.inner.stream_info(*e) else {
                continue;
            };
            if !filter.matches(&info) {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(info);
        }
        let next = if more {
            out.last().map(|s| Cursor::Key {
                order,
                key: s.path.clone(),
            })
        } else {
            None
        };
        Ok(Page { items: out, next })
    }

    fn children(&self, prefix: &str, limit: usize, cursor: Option<&Cursor>) -> Result<Page<Child>> {
        if !prefix.is_empty() {
            validate_path(prefix)?;
        }
        Self::check_cursor(cursor, Order::Asc)?;
        let after = match cursor {
            Some(Cursor::Key { key, .. }) => Some(key.clone()),
            Some(_) => {
                return Err(StorageError::invalid(
                    "cursor",
                    "it belongs to another kind of listing",
                ))
            }
            None => None,
        };
        let base = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        // Children sort by (name, kind), streams (0) before folders (1) of the same name; the
        // cursor is "name\u{1}kind" (control characters cannot occur in paths).
        let mut kids: BTreeMap<(String, u8), Child> = BTreeMap::new();
        {
            let reg = self.inner.registry.read();
            let range = reg.by_path.range::<str, _>((
                std::ops::Bound::Included(base.as_str()),
                std::ops::Bound::Unbounded,
            ));
            for (p, e) in range {
                let Some(rest) = p.strip_prefix(base.as_str()) else {
                    break;
                };
                match rest.split_once('/') {
                    Some((name, _)) => {
                        let k =
                            kids.entry((name.to_string(), 1))
                                .or_insert_with(|| Child::Folder {
                                    name: name.to_string(),
                                    path: format!("{base}{name}"),
                                    streams: 0,
                                });
                        if let Child::Folder { streams, .. } = k {
                            *streams += 1;
                        }
                    }
                    None => {
                        if let Some(info) = self.inner.stream_info(*e) {
                            kids.insert((rest.to_string(), 0), Child::Stream(Box::new(info)));
                        }
                    }
                }
            }
        }
        if kids.is_empty() && !prefix.is_empty() && self.inner.lookup(prefix).is_none() {
            return Err(StorageError::StreamNotFound {
                path: prefix.to_string(),
            });
        }
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        for ((name, kind), child) in kids {
            let key = format!("{name}\u{1}{kind}");
            if after.as_ref().is_some_and(|a| key.as_str() <= a.as_str()) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(child);
            last_key = Some(key);
        }
        let next = if more {
            last_key.map(|key| Cursor::Key {
                order: Order::Asc,
                key,
            })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    fn history(&self, path: &str, q: &HistoryQuery) -> Result<Page<DataPoint>> {
        Self::check_cursor(q.cursor.as_ref(), q.order)?;
        let e = self.inner.entry(path)?;
        let sh = self.inner.shards[shard_of_id(e.id)].lock();
        let st = sh
            .streams
            .get(&e.id)
            .ok_or_else(|| StorageError::StreamNotFound { path: path.into() })?;
        match q.timeline {
            Timeline::Client => self.history_client(st, q),
            Timeline::Server => self.history_server(st, q),
        }
    }

    fn rollups(&self, path: &str, q: &RollupQuery) -> Result<Page<RollupValue>> {
        Self::check_cursor(q.cursor.as_ref(), q.order)?;
        let e = self.inner.entry(path)?;
        if !e.ty.is_numeric() {
            return Err(StorageError::invalid(
                "stream",
                format!(
                    "{path:?} is a {} stream; only numeric streams roll up",
                    e.ty
                ),
            ));
        }
        if let (Some(f), Some(t)) = (q.from, q.to) {
            if t <= f {
                return Err(StorageError::invalid(
                    "end_time",
                    "it must be after start_time",
                ));
            }
        }
        // A later page needs only the intervals after its cursor: narrow the range to them
        // (except for fill=previous, whose first filled value comes from before the cursor).
        let narrowed;
        let q = match &q.cursor {
            Some(Cursor::Client { ts, .. }) if q.fill != crate::rollup::Fill::Previous => {
                let mut n = q.clone();
                match q.order {
                    Order::Asc => {
                        let next = crate::rollup::next_start(*ts, q.interval, &q.tz)?;
                        n.from = Some(q.from.map_or(next, |f| f.max(next)));
                    }
                    Order::Desc => n.to = Some(q.to.map_or(*ts, |t| t.min(*ts))),
                }
                if n.to.zip(n.from).is_some_and(|(t, f)| t <= f) {
                    return Ok(Page {
                        items: Vec::new(),
                        next: None,
                    });
                }
                narrowed = n;
                &narrowed
            }
            _ => q,
        };
        let spec = RollupSpec {
            interval: q.interval,
            method: q.method,
            tz: &q.tz,
            fill: q.fill,
        };
        let levels: &[bool] = match q.interval {
            Interval::Minute1 | Interval::Minute5 => &[false],
            _ => &[true, false],
        };
        let found = {
            let sh = self.inner.shards[shard_of_id(e.id)].lock();
            let st = sh
                .streams
                .get(&e.id)
                .ok_or_else(|| StorageError::StreamNotFound { path: path.into() })?;
            match self.inner.rollup_range(st, q)? {
                None => Some(Vec::new()),
                Some((from, to, before)) => {
                    // Without a bound the range is the data's own; widened to the grid, so that
                    // rollups whose raw points have expired still answer to the edge.
                    let feed_from = q.from.unwrap_or(buckets::floor(from, QUARTER));
                    let feed_to = q.to.unwrap_or(buckets::ceil(to, QUARTER));
                    let mut found = None;
                    for quarters in levels {
                        let mut roller = Roller::new(spec, before, from, to)?;
                        // A page needs its own intervals and one more, unless they come after a
                        // cursor the range could not be narrowed to.
                        if q.order == Order::Asc
                            && (q.cursor.is_none() || q.fill != crate::rollup::Fill::Previous)
                        {
                            roller = roller.with_cap(q.limit.saturating_add(1));
                        }
                        if self
                            .inner
                            .feed(st, &mut roller, feed_from, feed_to, *quarters)?
                        {
                            found = Some(roller.finish()?);
                            break;
                        }
                    }
                    found
                }
            }
        };
        let mut all = match found {
            Some(v) => v,
            None => {
                // A boundary off the 1-minute grid (a zone's historical offset in seconds).
                self.inner.metrics.rollup_raw_fallbacks.inc();
                self.rollups_from_raw(path, q)?
            }
        };
        if q.order == Order::Desc {
            all.reverse();
        }
        if let Some(Cursor::Client { ts, .. }) = &q.cursor {
            all.retain(|v| {
                if q.order == Order::Asc {
                    v.timestamp > *ts
                } else {
                    v.timestamp < *ts
                }
            });
        } else if q.cursor.is_some() {
            return Err(StorageError::invalid(
                "cursor",
                "it belongs to another kind of listing",
            ));
        }
        let next = (all.len() > q.limit).then(|| Cursor::Client {
            order: q.order,
            ts: all[q.limit - 1].timestamp,
        });
        all.truncate(q.limit);
        Ok(Page { items: all, next })
    }

    fn delete_history(&self, path: &str, from: i64, to: i64) -> Result<u64> {
        let e = self.inner.entry(path)?;
        if from >= to {
            return Ok(0);
        }
        self.log_and_wait(Record::DeleteRange { id: e.id, from, to })
    }

    fn sweep_retention(&self, now: i64) -> Result<u64> {
        let entries: Vec<Entry> = self
            .inner
            .registry
            .read()
            .by_path
            .values()
            .copied()
            .collect();
        let mut expired = Vec::new();
        for e in entries {
            let sh = self.inner.shards[shard_of_id(e.id)].lock();
            let Some(st) = sh.streams.get(&e.id) else {
                continue;
            };
            let Some(ttl) = st.rec.meta.data_ttl else {
                continue;
            };
            let cutoff = now.saturating_sub((ttl as i64).saturating_mul(1000));
            // Rollups live for rollup_ttl, and never less long than the raw points.
            let rollup_cutoff = st.rec.meta.rollup_ttl.map_or(0, |r| {
                now.saturating_sub((r as i64).saturating_mul(1000))
                    .min(cutoff)
            });
            let first = match self.inner.chunk_scan(e.id).next() {
                Some(kv) => Some(chunk_key_ts(&kv?.0)),
                None => st.head.first_ts(),
            };
            let first_day = match self
                .inner
                .rollups
                .range(rollup_key(e.id, 0)..=rollup_key(e.id, i64::MAX))
                .next()
            {
                Some(kv) => Some(rollup_key_day(&kv?.0)),
                None => None,
            };
            if first.is_some_and(|f| f < cutoff)
                || first_day.is_some_and(|d| d + buckets::DAY <= rollup_cutoff)
            {
                expired.push((e.id, cutoff, rollup_cutoff));
            }
        }
        let mut n = 0;
        for (id, raw_before, rollups_before) in expired {
            n += self.log_and_wait(Record::Expire {
                id,
                raw_before,
                rollups_before,
            })?;
        }
        if n > 0 {
            tracing::info!(points = n, "retention sweep deleted expired points");
        }
        Ok(n)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            streams: self.inner.registry.read().by_path.len(),
            disk_bytes: dir_bytes(&self.inner.cfg.path),
            log_bytes: self.wal.disk_bytes(),
            open_points: self.inner.open_points.load(AtOrd::Relaxed) as usize,
        }
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    fn feed(&self, after: u64, max_points: usize) -> Result<Feed> {
        let inner = &self.inner;
        let applied = inner.feed.applied.load(AtOrd::Acquire);
        let mut out = Feed {
            records: Vec::new(),
            next: after.max(applied),
            lost: None,
        };
        if after >= applied {
            out.next = after;
            return Ok(out);
        }
        let raw: Vec<Arc<RingRecord>> = match inner.feed.ring_after(after, max_points) {
            Some(rs) => {
                let rs: Vec<_> = rs.into_iter().filter(|r| r.seq <= applied).collect();
                let taken: usize = rs
                    .iter()
                    .map(|r| r.groups.iter().map(|g| g.1.len()).sum::<usize>())
                    .sum();
                if taken >= max_points {
                    if let Some(r) = rs.last() {
                        out.next = r.seq;
                    }
                }
                rs
            }
            None => {
                let mut rs = Vec::new();
                let read = wal::read_after(
                    &inner.cfg.path.join("wal"),
                    after,
                    applied,
                    max_points,
                    |seq, rec| {
                        if let Record::Points { server_ts, groups } = rec {
                            let bytes = crate::feed::record_bytes(&groups);
                            rs.push(Arc::new(RingRecord {
                                seq,
                                server_ts,
                                groups,
                                bytes,
                            }));
                        }
                    },
                )?;
                match read.first {
                    Some(first) if first <= after + 1 => {}
                    Some(first) => out.lost = Some((after + 1, (first - 1).min(applied))),
                    None => out.lost = Some((after + 1, applied)),
                }
                if read.stopped {
                    out.next = read.last;
                }
                rs
            }
        };
        let mut paths: HashMap<u64, Option<Arc<str>>> = HashMap::new();
        for r in raw {
            let p: Vec<Option<Arc<str>>> = r
                .groups
                .iter()
                .map(|(id, _)| {
                    paths
                        .entry(*id)
                        .or_insert_with(|| {
                            let sh = inner.shards[shard_of_id(*id)].lock();
                            sh.streams.get(id).map(|st| Arc::from(st.rec.path.as_str()))
                        })
                        .clone()
                })
                .collect();
            out.records.push(FeedRecord { data: r, paths: p });
        }
        Ok(out)
    }

    fn feed_hold(&self, consumer: &str, seq: Option<u64>) -> Result<()> {
        let mut key = HOLD_PREFIX.to_vec();
        key.extend_from_slice(consumer.as_bytes());
        match seq {
            Some(s) => self.inner.meta.insert(key, &s.to_be_bytes())?,
            None => self.inner.meta.remove(key)?,
        };
        self.inner.feed.set_hold(consumer, seq);
        Ok(())
    }

    fn feed_consumer(&self, consumer: &str) -> Option<u64> {
        self.inner.feed.hold(consumer)
    }

    fn applied_seq(&self) -> u64 {
        self.inner.feed.applied.load(AtOrd::Acquire)
    }

    fn on_applied(&self, f: Box<dyn Fn(u64) + Send + Sync>) {
        self.inner.feed.listen(f);
    }

    fn close(&self) {
        self.wal.close();
        if let Some(t) = self.apply.lock().take() {
            let _ = t.join();
        }
        if let Err(e) = self.inner.db.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

#[path = "pieces.rs"]
pub mod pieces;
