//! The change feed: the applied `Points` records of the log, read by durable consumers (the alarm
//! evaluator, the monitors on `DataPoint` topics) from a cursor, a log sequence number.
//!
//! - While any consumer is registered, the apply thread moves each applied `Points` record into
//!   an in-memory ring (no copy) after applying it, up to `feed_buffer_bytes`. Reads within the
//!   ring cost nothing else. With no consumer, the ring is off and ingest pays nothing.
//! - A consumer further behind than the ring (after a restart, or a slow receiver) reads the log
//!   segments on disk, skipping frames by their headers.
//! - Each consumer has a **hold**, the cursor up to which it has durably consumed. A checkpoint
//!   deletes a log segment only when every hold has passed it, unless the held segments exceed
//!   `feed_retention_bytes`; then the oldest go, and a consumer behind them is told what it lost.
//!   Holds are kept in the store's `meta` tree. A hold written lazily is never ahead of the
//!   consumer's own durable cursor (the consumer writes that first), so it can only keep more.

use crate::wal::{PointRec, Record};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// One applied `Points` record, with stream paths resolved. The points are shared with the
/// ring, not copied.
#[derive(Clone)]
pub struct FeedRecord {
    pub(crate) data: Arc<RingRecord>,
    /// The path of each group's stream; `None` for a stream deleted since.
    pub(crate) paths: Vec<Option<Arc<str>>>,
}

impl FeedRecord {
    /// Its log sequence number.
    pub fn seq(&self) -> u64 {
        self.data.seq
    }

    /// Server time at which it was received, ms.
    pub fn server_ts(&self) -> i64 {
        self.data.server_ts
    }

    /// Points per stream path, in the order written (streams deleted since are left out).
    pub fn groups(&self) -> impl Iterator<Item = (&Arc<str>, &[PointRec])> {
        self.data
            .groups
            .iter()
            .zip(&self.paths)
            .filter_map(|((_, pts), path)| path.as_ref().map(|p| (p, pts.as_slice())))
    }

    /// Number of points.
    pub fn points(&self) -> usize {
        self.data.groups.iter().map(|(_, p)| p.len()).sum()
    }
}

impl std::fmt::Debug for FeedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedRecord")
            .field("seq", &self.data.seq)
            .field("points", &self.points())
            .finish()
    }
}

/// What a feed read returns.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    /// Records after the cursor, in log order.
    pub records: Vec<FeedRecord>,
    /// The cursor after these records (may pass records that hold no points).
    pub next: u64,
    /// Sequence numbers that the log no longer holds (deleted past the retention limit), from
    /// and to inclusive; the read goes on after them.
    pub lost: Option<(u64, u64)>,
}

/// A record as the ring keeps it: stream ids, resolved to paths when read.
pub(crate) struct RingRecord {
    pub seq: u64,
    pub server_ts: i64,
    pub groups: Vec<(u64, Vec<PointRec>)>,
    pub bytes: usize,
}

pub(crate) fn record_bytes(groups: &[(u64, Vec<PointRec>)]) -> usize {
    groups
        .iter()
        .map(|(_, p)| 32 + p.len() * std::mem::size_of::<PointRec>())
        .sum::<usize>()
        + 64
}

#[derive(Default)]
struct Ring {
    records: VecDeque<Arc<RingRecord>>,
    bytes: usize,
    /// Every `Points` record with seq >= `from` is in the ring (while it is active).
    from: u64,
}

type Listener = Box<dyn Fn(u64) + Send + Sync>;

/// The feed's shared state, owned by the engine.
pub(crate) struct FeedState {
    ring: Mutex<Ring>,
    holds: Mutex<BTreeMap<String, u64>>,
    /// Highest sequence number applied.
    pub applied: AtomicU64,
    listeners: Mutex<Vec<Listener>>,
    max_bytes: usize,
}

impl FeedState {
    pub fn new(applied: u64, holds: BTreeMap<String, u64>, max_bytes: usize) -> FeedState {
        FeedState {
            ring: Mutex::new(Ring {
                from: applied + 1,
                ..Ring::default()
            }),
            holds: Mutex::new(holds),
            applied: AtomicU64::new(applied),
            listeners: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// Whether any consumer is registered.
    pub fn active(&self) -> bool {
        !self.holds.lock().is_empty()
    }

    /// Called by the apply thread after it applied record `seq` while no consumer is registered:
    /// empties the ring, which will start after `seq`.
    pub fn skip(&self, seq: u64) {
        let mut ring = self.ring.lock();
        if !ring.records.is_empty() {
            ring.records.clear();
            ring.bytes = 0;
        }
        ring.from = seq + 1;
    }

    /// Called by the apply thread after it applied `rec` (seq) while the feed is active: keeps
    /// it in the ring. Takes the record to avoid a copy.
    pub fn push(&self, seq: u64, rec: Record) {
        let mut ring = self.ring.lock();
        if let Record::Points { server_ts, groups } = rec {
            let bytes = record_bytes(&groups);
            ring.bytes += bytes;
            ring.records.push_back(Arc::new(RingRecord {
                seq,
                server_ts,
                groups,
                bytes,
            }));
            while ring.bytes > self.max_bytes {
                let Some(r) = ring.records.pop_front() else {
                    break;
                };
                ring.bytes -= r.bytes;
                ring.from = r.seq + 1;
            }
        }
    }

    /// Called by the apply thread after a group: tells the listeners.
    pub fn notify(&self, seq: u64) {
        for l in self.listeners.lock().iter() {
            l(seq);
        }
    }

    /// Adds a callback told each applied sequence number (after each group).
    pub fn listen(&self, f: Listener) {
        self.listeners.lock().push(f);
    }

    /// The ring's records after `after`, at most about `max_points` points; `None` when the ring
    /// does not reach back that far.
    pub fn ring_after(&self, after: u64, max_points: usize) -> Option<Vec<Arc<RingRecord>>> {
        let ring = self.ring.lock();
        if after + 1 < ring.from {
            return None;
        }
        let start = ring.records.partition_point(|r| r.seq <= after);
        let mut out = Vec::new();
        let mut points = 0;
        for r in ring.records.range(start..) {
            if points >= max_points && !out.is_empty() {
                break;
            }
            points += r.groups.iter().map(|(_, p)| p.len()).sum::<usize>();
            out.push(r.clone());
        }
        Some(out)
    }

    /// Sets a consumer's hold; `None` removes the consumer. Returns the holds after.
    pub fn set_hold(&self, consumer: &str, seq: Option<u64>) -> BTreeMap<String, u64> {
        let mut h = self.holds.lock();
        match seq {
            Some(s) => {
                h.insert(consumer.to_string(), s);
            }
            None => {
                h.remove(consumer);
            }
        }
        h.clone()
    }

    /// The lowest hold, if any consumer is registered.
    pub fn min_hold(&self) -> Option<u64> {
        self.holds.lock().values().copied().min()
    }

    /// A consumer's hold.
    pub fn hold(&self, consumer: &str) -> Option<u64> {
        self.holds.lock().get(consumer).copied()
    }
}
