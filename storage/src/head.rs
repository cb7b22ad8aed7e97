//! The open head of a stream: its newest points, not yet sealed into a chunk, kept in memory
//! compressed.
//!
//! Points arrive into an uncompressed tail. Every `block` points the tail is frozen into a block
//! encoded with the chunk codec's fast value codec ([`ValueCodec::Delta`], about 10 ns per value
//! and 1 to 2 bytes per value on meter data), so an open point costs about 2 bytes of memory
//! instead of 16. Points newer than every frozen one take the fast path; a write into the
//! frozen part thaws the head once per batch, applies the batch and freezes it again.

use crate::buckets::{self, Bucket, MINUTE};
use crate::codec::{self, ValueCodec};
use crate::error::Result;
use crate::point::DataPoint;
use crate::query::Order;
use crate::rollup::Summary;
use crate::series::Series;
use crate::value::ValueKind;
use crate::wal::PointRec;

struct Frozen {
    first_ts: i64,
    last_ts: i64,
    n: usize,
    bytes: Box<[u8]>,
}

/// `s` encoded as a frozen block (none when it is empty).
fn frozen(s: &Series) -> Result<Option<Frozen>> {
    let (Some(first_ts), Some(last_ts)) = (s.first_ts(), s.last_ts()) else {
        return Ok(None);
    };
    Ok(Some(Frozen {
        first_ts,
        last_ts,
        n: s.len(),
        bytes: codec::encode_with(s, ValueCodec::Delta)?.into_boxed_slice(),
    }))
}

/// The open head of one stream.
pub struct Head {
    frozen: Vec<Frozen>,
    frozen_len: usize,
    tail: Series,
    block: usize,
    /// 1-minute summaries of the points (numeric heads), kept up to date by every change: the
    /// newest in `mins`, older ones encoded in `mins_old` (about 17 bytes a minute instead of
    /// 104; with the precision sealed minutes have: `m2` to 7 digits). At 1 Hz an open head
    /// holds up to 34 minutes, so this is most of a stream's memory otherwise.
    mins: Vec<Bucket>,
    /// Encoded pieces of older minutes, ascending. A head that only grows appends a piece of
    /// [`OPEN_MINUTES`] minutes now and then, and encodes them all again as one only when there
    /// are [`MAX_PIECES`] (re-encoding them all at every settle was 16 % of the apply thread; a
    /// piece per settle, never merged, cost 20 MB more resident memory on the standard
    /// workload). A change to an older minute decodes every piece and encodes them as one.
    mins_old: Vec<Box<[u8]>>,
}

/// Minutes kept decoded; more than twice this many are encoded but this many.
const OPEN_MINUTES: usize = 4;

/// Encoded pieces of older minutes at most; then they are encoded again as one.
const MAX_PIECES: usize = 3;

impl Head {
    /// An empty head freezing every `block` points.
    pub fn new(kind: ValueKind, block: usize) -> Head {
        Head {
            frozen: Vec::new(),
            frozen_len: 0,
            tail: Series::new(kind),
            block: block.max(1),
            mins: Vec::new(),
            mins_old: Vec::new(),
        }
    }

    /// A head holding the points of `s`.
    pub fn from_series(s: Series, block: usize) -> Result<Head> {
        let mut h = Head::new(s.values.kind(), block);
        h.fill(s)?;
        Ok(h)
    }

    /// Replaces the content with `s`, freezing every full block.
    fn fill(&mut self, mut s: Series) -> Result<()> {
        self.frozen.clear();
        self.frozen_len = 0;
        self.mins = buckets::summarize_series(&s, MINUTE);
        self.mins_old = Vec::new();
        self.settle_minutes()?;
        while s.len() >= self.block {
            let rest = s.split_off(self.block);
            self.freeze(&s)?;
            s = rest;
        }
        self.tail = s;
        Ok(())
    }

    fn freeze(&mut self, s: &Series) -> Result<()> {
        let block = frozen(s)?;
        self.push_frozen(block);
        Ok(())
    }

    fn push_frozen(&mut self, block: Option<Frozen>) {
        if let Some(f) = block {
            self.frozen_len += f.n;
            self.frozen.push(f);
        }
    }

    /// The kind of its values.
    pub fn kind(&self) -> ValueKind {
        self.tail.values.kind()
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.frozen_len + self.tail.len()
    }

    /// Whether it holds no point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Oldest timestamp.
    pub fn first_ts(&self) -> Option<i64> {
        self.frozen
            .first()
            .map(|f| f.first_ts)
            .or(self.tail.first_ts())
    }

    /// Newest timestamp.
    pub fn last_ts(&self) -> Option<i64> {
        self.tail
            .last_ts()
            .or(self.frozen.last().map(|f| f.last_ts))
    }

    /// Writes points received at server time `server` (each replaces a point with its timestamp).
    pub fn write(&mut self, points: &[PointRec], server: i64) -> Result<()> {
        let mut touched: Vec<i64> = Vec::new();
        let frozen_last = self.frozen.last().map(|f| f.last_ts);
        if points.iter().all(|p| frozen_last.is_none_or(|l| p.ts > l)) {
            let last = self.last_ts();
            let in_order = points
                .iter()
                .zip(points.iter().skip(1))
                .all(|(a, b)| a.ts < b.ts)
                && points
                    .first()
                    .is_some_and(|p| last.is_none_or(|l| p.ts > l));
            if matches!(self.kind(), ValueKind::Int | ValueKind::Float) {
                if in_order {
                    // Newer than every point: only the newest minute changes, or one is added.
                    for p in points {
                        if let Some(v) = p.value.as_f64() {
                            let b = (buckets::floor(p.ts, MINUTE), Summary::of(p.ts, v));
                            buckets::merge_later(&mut self.mins, &[b]);
                        }
                    }
                    self.settle_minutes()?;
                } else {
                    touched = points
                        .iter()
                        .map(|p| buckets::floor(p.ts, MINUTE))
                        .collect();
                }
            }
            if in_order {
                // The tail fills up to a block and is frozen whole, keeping its memory, so the
                // fast path neither grows nor splits it.
                if self.tail.ts.capacity() < self.block {
                    self.tail.reserve_exact(self.block - self.tail.len());
                }
                for p in points {
                    self.tail
                        .upsert(p.ts, p.value.clone(), server, p.extras.clone());
                    if self.tail.len() >= self.block {
                        let block = frozen(&self.tail)?;
                        self.push_frozen(block);
                        self.tail.clear_keeping_capacity();
                    }
                }
            } else {
                for p in points {
                    self.tail
                        .upsert(p.ts, p.value.clone(), server, p.extras.clone());
                }
            }
            while self.tail.len() >= self.block {
                let rest = self.tail.split_off(self.block);
                let full = std::mem::replace(&mut self.tail, rest);
                self.freeze(&full)?;
            }
            self.resummarize(touched)?;
            return Ok(());
        }
        let mut s = self.take()?;
        for p in points {
            s.upsert(p.ts, p.value.clone(), server, p.extras.clone());
        }
        self.fill(s)
    }

    /// Recomputes the minute summaries of the minutes starting at `minutes` from the points.
    fn resummarize(&mut self, mut minutes: Vec<i64>) -> Result<()> {
        if minutes.is_empty() {
            return Ok(());
        }
        minutes.sort_unstable();
        minutes.dedup();
        self.thaw_minutes()?;
        for m in minutes {
            let mut pts = Vec::new();
            self.collect(m, m + MINUTE, Order::Asc, usize::MAX, &mut pts)?;
            let s = Summary::of_points(
                pts.iter()
                    .filter_map(|p| p.value.as_f64().map(|v| (p.timestamp, v))),
            );
            match (self.mins.binary_search_by_key(&m, |b| b.0), s) {
                (Ok(i), Some(s)) => self.mins[i].1 = s,
                (Ok(i), None) => {
                    self.mins.remove(i);
                }
                (Err(i), Some(s)) => self.mins.insert(i, (m, s)),
                (Err(_), None) => {}
            }
        }
        self.settle_minutes()
    }

    /// Every older minute decoded, ascending.
    fn old_minutes(&self) -> Result<Vec<Bucket>> {
        let mut all = Vec::with_capacity(self.mins_old.len() * OPEN_MINUTES + self.mins.len());
        for piece in &self.mins_old {
            all.extend(buckets::decode(piece, MINUTE)?);
        }
        Ok(all)
    }

    /// Decodes the older minutes back in front of the newest.
    fn thaw_minutes(&mut self) -> Result<()> {
        if !self.mins_old.is_empty() {
            let mut all = self.old_minutes()?;
            all.append(&mut self.mins);
            self.mins = all;
            self.mins_old = Vec::new();
        }
        Ok(())
    }

    /// Encodes all but the newest [`OPEN_MINUTES`] as a new piece once there are twice as many
    /// decoded.
    fn settle_minutes(&mut self) -> Result<()> {
        if self.mins.len() < 2 * OPEN_MINUTES {
            return Ok(());
        }
        if self.mins_old.len() >= MAX_PIECES {
            // Few, larger pieces: many small ones cost more memory than they save time.
            // The newest minutes move to an allocation of their own *before* the thaw, and the
            // thawed vector is freed whole. Thawing first and shrinking the thawed vector in
            // place (bb1143d) left a hole of about 1 KB beside every head's minutes: resident
            // memory after the standard ingest rose from 150-157 MB to 157-175 MB.
            let keep = self.mins.split_off(self.mins.len() - OPEN_MINUTES);
            self.thaw_minutes()?;
            self.mins_old = vec![buckets::encode(&self.mins, MINUTE).into_boxed_slice()];
            self.mins = keep;
            return Ok(());
        }
        let old = self.mins.len() - OPEN_MINUTES;
        self.mins_old
            .push(buckets::encode(&self.mins[..old], MINUTE).into_boxed_slice());
        if self.mins.capacity() > 2 * OPEN_MINUTES {
            // A thawed head (after a correction or a delete) held them all: the newest minutes
            // get an allocation of their own, with room until the next settle, and the large
            // one is freed whole rather than shrunk in place (see above).
            let mut kept = Vec::with_capacity(2 * OPEN_MINUTES);
            kept.extend_from_slice(&self.mins[old..]);
            self.mins = kept;
        } else {
            self.mins.drain(..old);
        }
        Ok(())
    }

    /// 1-minute summaries of the points, ascending (empty for text and binary heads).
    pub fn minutes(&self) -> Result<std::borrow::Cow<'_, [Bucket]>> {
        if self.mins_old.is_empty() {
            return Ok(std::borrow::Cow::Borrowed(&self.mins));
        }
        let mut all = self.old_minutes()?;
        all.extend_from_slice(&self.mins);
        Ok(std::borrow::Cow::Owned(all))
    }

    /// The head as snapshot entries, in time order, each a chunk encoding that
    /// `codec::decode` reads: with `compact`, one pco-encoded chunk of every point; otherwise
    /// the frozen blocks as they are held (no work) and the newest points delta-encoded.
    pub fn snapshot_parts(&self, compact: bool) -> Result<Vec<std::borrow::Cow<'_, [u8]>>> {
        use std::borrow::Cow;
        if compact {
            return Ok(vec![Cow::Owned(codec::encode(&self.to_series()?)?)]);
        }
        let mut parts: Vec<Cow<'_, [u8]>> = self
            .frozen
            .iter()
            .map(|f| Cow::Borrowed(&*f.bytes))
            .collect();
        if !self.tail.is_empty() {
            parts.push(Cow::Owned(codec::encode_with(
                &self.tail,
                ValueCodec::Delta,
            )?));
        }
        Ok(parts)
    }

    /// Every point, as one series.
    pub fn to_series(&self) -> Result<Series> {
        self.series_prefix(usize::MAX)
    }

    /// At least the oldest `n` points (or all), as one series: whole frozen blocks are decoded
    /// until there are `n`, so it may hold more.
    pub fn series_prefix(&self, n: usize) -> Result<Series> {
        let mut s = Series::new(self.kind());
        s.reserve_exact(n.min(self.len()));
        for f in &self.frozen {
            if s.len() >= n {
                return Ok(s);
            }
            s.append_newer(codec::decode(&f.bytes)?);
        }
        if s.len() < n {
            s.append_newer(self.tail.clone());
        }
        Ok(s)
    }

    /// Takes every point out, leaving the head empty.
    pub fn take(&mut self) -> Result<Series> {
        let s = self.to_series()?;
        self.frozen = Vec::new();
        self.frozen_len = 0;
        self.tail = Series::new(self.kind());
        self.mins = Vec::new();
        self.mins_old = Vec::new();
        Ok(s)
    }

    /// Replaces the content with `s`.
    pub fn replace(&mut self, s: Series) -> Result<()> {
        self.fill(s)
    }

    /// Removes the points with `from <= ts < to`; returns how many.
    ///
    /// When the range cuts no frozen block (as when a seal removes the blocks it sealed),
    /// whole blocks are dropped as they are and only the minutes at the range's ends are
    /// summarized again; otherwise the head is decoded, cut and frozen again.
    pub fn delete_range(&mut self, from: i64, to: i64) -> Result<usize> {
        let (first, last) = match (self.first_ts(), self.last_ts()) {
            (Some(f), Some(l)) if f < to && l >= from => (f, l),
            _ => return Ok(0),
        };
        let inside = |f: &Frozen| f.first_ts >= from && f.last_ts < to;
        let cut = |f: &Frozen| f.first_ts < to && f.last_ts >= from && !inside(f);
        if self.frozen.iter().any(cut) {
            let mut s = self.take()?;
            let n = s.delete_range(from, to);
            self.fill(s)?;
            return Ok(n);
        }
        let mut n = 0;
        self.frozen.retain(|f| {
            if inside(f) {
                n += f.n;
            }
            !inside(f)
        });
        self.frozen_len -= n;
        n += self.tail.delete_range(from, to);
        if matches!(self.kind(), ValueKind::Int | ValueKind::Float) {
            self.thaw_minutes()?;
            self.mins
                .retain(|(m, _)| !(*m >= from && m.saturating_add(MINUTE) <= to));
            let ends = vec![
                buckets::floor(from.max(first), MINUTE),
                buckets::floor((to - 1).min(last), MINUTE),
            ];
            self.resummarize(ends)?;
        }
        Ok(n)
    }

    /// The newest point.
    pub fn last_point(&self) -> Result<Option<DataPoint>> {
        if !self.tail.is_empty() {
            return Ok(Some(self.tail.point(self.tail.len() - 1)));
        }
        match self.frozen.last() {
            Some(f) => {
                let s = codec::decode(&f.bytes)?;
                Ok(Some(s.point(s.len() - 1)))
            }
            None => Ok(None),
        }
    }

    /// Appends to `out` the points with `from <= ts < to` in `order`, until `out` holds `want`.
    pub fn collect(
        &self,
        from: i64,
        to: i64,
        order: Order,
        want: usize,
        out: &mut Vec<DataPoint>,
    ) -> Result<()> {
        let overlaps = |f: &&Frozen| f.last_ts >= from && f.first_ts < to;
        let take = |s: &Series, out: &mut Vec<DataPoint>| {
            let r = s.index_range(from, to);
            if order == Order::Asc {
                for i in r {
                    if out.len() >= want {
                        break;
                    }
                    out.push(s.point(i));
                }
            } else {
                for i in r.rev() {
                    if out.len() >= want {
                        break;
                    }
                    out.push(s.point(i));
                }
            }
        };
        if order == Order::Asc {
            for f in self.frozen.iter().filter(overlaps) {
                if out.len() >= want {
                    return Ok(());
                }
                take(&codec::decode(&f.bytes)?, out);
            }
            take(&self.tail, out);
        } else {
            take(&self.tail, out);
            for f in self.frozen.iter().rev().filter(overlaps) {
                if out.len() >= want {
                    return Ok(());
                }
                take(&codec::decode(&f.bytes)?, out);
            }
        }
        Ok(())
    }

    /// The numeric points with `from <= ts < to`, ascending (none for text and binary heads).
    pub fn numeric_points(&self, from: i64, to: i64) -> Result<Vec<(i64, f64)>> {
        let mut out = Vec::new();
        if !matches!(self.kind(), ValueKind::Int | ValueKind::Float) || from >= to {
            return Ok(out);
        }
        let mut take = |s: &Series| {
            for i in s.index_range(from, to) {
                if let Some(v) = s.values.f64_at(i) {
                    out.push((s.ts[i], v));
                }
            }
        };
        for f in self
            .frozen
            .iter()
            .filter(|f| f.last_ts >= from && f.first_ts < to)
        {
            take(&codec::decode(&f.bytes)?);
        }
        take(&self.tail);
        Ok(out)
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.frozen
            .iter()
            .map(|f| f.bytes.len() + 40)
            .sum::<usize>()
            + self.tail.heap_bytes()
            + self.mins.capacity() * std::mem::size_of::<Bucket>()
            + self.mins_old.iter().map(|p| p.len() + 16).sum::<usize>()
    }

    /// Number of points in frozen blocks (for tests and metrics).
    pub fn frozen_points(&self) -> usize {
        self.frozen.iter().map(|f| f.n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn pts(ts: &[i64]) -> Vec<PointRec> {
        ts.iter()
            .map(|t| PointRec {
                ts: *t,
                value: Value::Float(*t as f64 / 100.0),
                extras: None,
            })
            .collect()
    }

    #[test]
    fn freezes_blocks_and_reads_back_in_both_orders() {
        let mut h = Head::new(ValueKind::Float, 8);
        h.write(&pts(&(0..30).collect::<Vec<_>>()), 1).unwrap();
        assert_eq!((h.len(), h.frozen_points()), (30, 24));
        // Out of order into the frozen part, and a replacement.
        h.write(&pts(&[3, 100]), 2).unwrap();
        h.write(
            &[PointRec {
                ts: 5,
                value: Value::Float(-1.0),
                extras: None,
            }],
            3,
        )
        .unwrap();
        assert_eq!(h.len(), 31);
        let s = h.to_series().unwrap();
        assert_eq!(s.ts.len(), 31);
        assert_eq!(s.point(5).value, Value::Float(-1.0));
        assert_eq!(s.point(5).server_timestamp, 3);
        assert_eq!(s.point(3).server_timestamp, 2);
        let mut out = Vec::new();
        h.collect(4, 12, Order::Desc, 5, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|p| p.timestamp).collect::<Vec<_>>(),
            vec![11, 10, 9, 8, 7]
        );
        out.clear();
        h.collect(28, 1000, Order::Asc, 100, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|p| p.timestamp).collect::<Vec<_>>(),
            vec![28, 29, 100]
        );
        assert_eq!(h.delete_range(0, 10).unwrap(), 10);
        assert_eq!(h.first_ts(), Some(10));
        assert_eq!(h.last_point().unwrap().unwrap().timestamp, 100);
        assert!(h.heap_bytes() < 31 * 16 + 8 * std::mem::size_of::<Bucket>());
        assert_eq!(h.minutes().unwrap().len(), 1);
        assert_eq!(h.minutes().unwrap()[0].1.count, 21);
    }

    /// Long heads keep older minutes encoded; every kind of change still gives the summaries
    /// of the points (to the precision of sealed minutes).
    #[test]
    fn minutes_stay_those_of_the_points_when_encoded() {
        let check = |h: &Head| {
            let want = buckets::summarize_series(&h.to_series().unwrap(), MINUTE);
            let got = h.minutes().unwrap();
            assert_eq!(got.len(), want.len());
            for ((t0, a), (t1, b)) in want.iter().zip(got.iter()) {
                assert_eq!(t0, t1);
                buckets::assert_stored_as(a, b);
            }
        };
        let mut h = Head::new(ValueKind::Float, 128);
        // 40 minutes at 1 Hz, in batches as a gateway sends them.
        let ts: Vec<i64> = (0..2400).map(|i| 1_700_000_000_000 + i * 1000).collect();
        for chunk in ts.chunks(83) {
            h.write(&pts(chunk), 1).unwrap();
        }
        assert!(!h.mins_old.is_empty() && h.mins.len() < 2 * OPEN_MINUTES);
        check(&h);
        // Late points into old minutes, a replacement, a delete across minutes, then more
        // in order.
        h.write(&pts(&[1_700_000_000_500, 1_700_000_600_250]), 2)
            .unwrap();
        check(&h);
        h.write(
            &[PointRec {
                ts: 1_700_000_030_000,
                value: Value::Float(-7.5),
                extras: None,
            }],
            3,
        )
        .unwrap();
        check(&h);
        h.delete_range(1_700_000_100_000, 1_700_000_700_000)
            .unwrap();
        check(&h);
        h.write(&pts(&[1_700_002_400_000, 1_700_002_401_000]), 4)
            .unwrap();
        check(&h);
        assert!(h.heap_bytes() < 2400 * 3);
        let s = h.take().unwrap();
        assert!(h.minutes().unwrap().is_empty());
        h.replace(s).unwrap();
        check(&h);
    }

    /// A seal's delete (the oldest whole blocks) drops blocks without decoding them, and the
    /// points and minutes left are those of the same delete done the slow way.
    #[test]
    fn deleting_whole_blocks_keeps_the_rest_as_it_was() {
        let ts: Vec<i64> = (0..2400).map(|i| 1_700_000_000_000 + i * 1000).collect();
        let mut h = Head::new(ValueKind::Float, 128);
        for chunk in ts.chunks(83) {
            h.write(&pts(chunk), 1).unwrap();
        }
        let mut want = h.to_series().unwrap();
        let block_bytes: Vec<*const u8> = h.frozen.iter().map(|f| f.bytes.as_ptr()).collect();
        // The first 16 blocks end mid-minute.
        assert_eq!(h.delete_range(0, ts[2047] + 1).unwrap(), 2048);
        assert_eq!(want.delete_range(0, ts[2047] + 1), 2048);
        assert_eq!(h.to_series().unwrap(), want);
        // The blocks after them were kept as they were, not encoded again.
        assert_eq!(
            h.frozen
                .iter()
                .map(|f| f.bytes.as_ptr())
                .collect::<Vec<_>>(),
            block_bytes[16..]
        );
        assert_eq!(
            (h.len(), h.frozen_points(), h.first_ts()),
            (352, 256, Some(ts[2048]))
        );
        let got = h.minutes().unwrap();
        let expect = buckets::summarize_series(&want, MINUTE);
        assert_eq!(got.len(), expect.len());
        assert_eq!(
            got[0].1.count, 32,
            "the cut minute keeps only its later points"
        );
        for ((t0, a), (t1, b)) in expect.iter().zip(got.iter()) {
            assert_eq!(t0, t1);
            buckets::assert_stored_as(a, b);
        }
        // More points in order still take the fast path, and a range cutting a block still
        // works.
        h.write(&pts(&[ts[2399] + 1000]), 2).unwrap();
        assert_eq!(h.delete_range(ts[2100], ts[2110]).unwrap(), 10);
        assert_eq!(h.len(), 343);
    }

    #[test]
    fn snapshot_parts_decode_to_the_head() {
        let mut h = Head::new(ValueKind::Float, 8);
        h.write(&pts(&(0..30).collect::<Vec<_>>()), 1).unwrap();
        h.write(&pts(&[3, 100]), 2).unwrap();
        let want = h.to_series().unwrap();
        for compact in [false, true] {
            let parts = h.snapshot_parts(compact).unwrap();
            assert_eq!(parts.len(), if compact { 1 } else { 4 }, "{compact}");
            let mut s = Series::new(ValueKind::Float);
            for p in parts {
                s.append_newer(codec::decode(&p).unwrap());
            }
            assert_eq!(s, want);
        }
        assert!(Head::new(ValueKind::Float, 8)
            .snapshot_parts(false)
            .unwrap()
            .is_empty());
    }
}
