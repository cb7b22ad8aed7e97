//! The on-disk spool: every reading waits here until the server has acknowledged it.
//! Design, invariants and failure cases: `docs/spool.md`.
//!
//! # Format
//! ```text
//! <dir>/
//!   00000000000000000001.seg    segment: records with seq 1.. (name = first seq, 20 digits)
//!   00000000000000004097.seg    the newest segment is the only one appended to
//!   acked                       which seqs the server has taken, replaced whole
//!
//! record  = u32 LE payload length | u32 LE CRC-32 of (seq, points, payload)
//!         | u64 LE seq | u32 LE points | payload
//! acked   = "MSACK1" | u64 LE floor | u32 LE n | n × (u64 LE from, u64 LE to)
//!         | u32 LE CRC-32 of everything before it
//! ```
//! A seq is acknowledged if it is below `floor` or in one of the `[from, to)` ranges. A record
//! is pending if it is on disk, intact and not acknowledged. Payloads are opaque here.

use crate::error::{AgentError, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 20;
const ACK_MAGIC: &[u8; 6] = b"MSACK1";
/// Largest payload accepted (a sanity bound while reading: a longer length is corruption).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Where a pending record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    /// First seq of its segment (the segment's key).
    segment: u64,
    /// Offset of the record's header in the segment.
    offset: u64,
    /// Payload length.
    len: u32,
    /// Points the record holds.
    points: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    bytes: u64,
    /// Records of this segment still pending.
    pending: usize,
}

/// Acknowledged seqs: all below `floor`, and the disjoint sorted ranges above it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Acked {
    floor: u64,
    ranges: Vec<(u64, u64)>,
}

impl Acked {
    fn contains(&self, seq: u64) -> bool {
        seq < self.floor
            || self
                .ranges
                .binary_search_by(|&(a, b)| {
                    if seq < a {
                        std::cmp::Ordering::Greater
                    } else if seq >= b {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok()
    }

    fn insert(&mut self, seq: u64) {
        if self.contains(seq) {
            return;
        }
        self.ranges.push((seq, seq + 1));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(a, b) in &self.ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.ranges = merged;
        self.absorb();
    }

    /// Raises `floor` to `to` (everything below is acknowledged or gone).
    fn raise_floor(&mut self, to: u64) {
        self.floor = self.floor.max(to);
        self.absorb();
    }

    fn absorb(&mut self) {
        while let Some(&(a, b)) = self.ranges.first() {
            if a <= self.floor {
                self.floor = self.floor.max(b);
                self.ranges.remove(0);
            } else {
                break;
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(22 + self.ranges.len() * 16);
        out.extend_from_slice(ACK_MAGIC);
        out.extend_from_slice(&self.floor.to_le_bytes());
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for (a, b) in &self.ranges {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Acked> {
        if b.len() < 22 || &b[..6] != ACK_MAGIC {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let u64_at = |i: usize| {
            body.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let floor = u64_at(6)?;
        let n = u32::from_le_bytes(body.get(14..18)?.try_into().ok()?) as usize;
        if body.len() != 18 + n * 16 {
            return None;
        }
        let ranges = (0..n)
            .map(|k| Some((u64_at(18 + k * 16)?, u64_at(26 + k * 16)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Acked { floor, ranges })
    }
}

/// What opening a spool found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Pending records found.
    pub records: usize,
    /// Pending points found.
    pub points: u64,
    /// Bytes cut from the end of the newest segment (a torn last append).
    pub torn_bytes: u64,
    /// Bytes lost to corruption inside older segments (their records cannot be framed, so
    /// their points cannot be counted).
    pub corrupt_bytes: u64,
}

/// The spool. Not internally synchronized: the agent keeps it behind one mutex.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    sync: bool,
    segments: BTreeMap<u64, Segment>,
    index: BTreeMap<u64, Loc>,
    acked: Acked,
    next_seq: u64,
    bytes: u64,
    pending_points: u64,
    dropped_points: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::spool(path, e)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, holding at most `max_bytes`; with `sync`, every
    /// append and acknowledgement is synced to the device before it returns.
    pub fn open(dir: &Path, max_bytes: u64, sync: bool) -> Result<(Spool, Recovery)> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ack_path = dir.join("acked");
        let acked = match std::fs::read(&ack_path) {
            Ok(b) => Acked::decode(&b).unwrap_or_else(|| {
                tracing::error!(path = %ack_path.display(), "the acknowledgement file is unreadable; everything spooled will be sent again (the server stores nothing twice)");
                Acked::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Acked::default(),
            Err(e) => return Err(AgentError::spool(&ack_path, e)),
        };
        let mut firsts: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".seg") {
                if let Ok(first) = stem.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort_unstable();
        let mut sp = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(64 << 10, 8 << 20),
            sync,
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            acked,
            next_seq: 1,
            bytes: 0,
            pending_points: 0,
            dropped_points: 0,
        };
        sp.next_seq = sp.next_seq.max(sp.acked.floor);
        if let Some(&(_, b)) = sp.acked.ranges.last() {
            sp.next_seq = sp.next_seq.max(b);
        }
        let mut rec = Recovery::default();
        let newest = firsts.last().copied();
        for first in firsts {
            sp.load_segment(first, Some(first) == newest, &mut rec)?;
        }
        // Segments with nothing pending (acknowledged before a crash deleted them).
        let done: Vec<u64> = sp
            .segments
            .iter()
            .filter(|(k, s)| s.pending == 0 && Some(**k) != newest)
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            sp.remove_segment(k)?;
        }
        rec.records = sp.index.len();
        rec.points = sp.pending_points;
        Ok((sp, rec))
    }

    fn load_segment(&mut self, first: u64, newest: bool, rec: &mut Recovery) -> Result<()> {
        let path = self.dir.join(format!("{first:020}.seg"));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let data = std::fs::read(&path).map_err(io(&path))?;
        let mut off = 0usize;
        let mut pending = 0;
        while off < data.len() {
            let parsed = parse_record(&data[off..]);
            let Some((seq, points, len)) = parsed else {
                let cut = (data.len() - off) as u64;
                if newest {
                    file.set_len(off as u64).map_err(io(&path))?;
                    rec.torn_bytes += cut;
                    tracing::warn!(path = %path.display(), bytes = cut, "cut a torn record from the end of the spool (an append that never returned)");
                } else {
                    rec.corrupt_bytes += cut;
                    tracing::error!(path = %path.display(), offset = off, bytes = cut, "corrupt record in the spool; the rest of this segment is lost");
                }
                break;
            };
            self.next_seq = self.next_seq.max(seq + 1);
            if !self.acked.contains(seq) {
                self.index.insert(
                    seq,
                    Loc {
                        segment: first,
                        offset: off as u64,
                        len: len as u32,
                        points,
                    },
                );
                self.pending_points += u64::from(points);
                pending += 1;
            }
            off += HEADER + len;
        }
        let bytes = file.metadata().map_err(io(&path))?.len();
        self.bytes += bytes;
        self.segments.insert(
            first,
            Segment {
                path,
                file,
                bytes,
                pending,
            },
        );
        Ok(())
    }

    /// Appends a record of `points` points; returns its seq. Makes room first by dropping the
    /// oldest segments if the spool would exceed its limit (logged at ERROR, counted).
    pub fn append(&mut self, points: u32, payload: &[u8]) -> Result<u64> {
        if payload.len() > MAX_PAYLOAD {
            return Err(AgentError::spool(
                &self.dir,
                format!(
                    "a record of {} bytes is over the limit of {MAX_PAYLOAD}",
                    payload.len()
                ),
            ));
        }
        let size = (HEADER + payload.len()) as u64;
        let rotate = match self.segments.last_key_value() {
            None => true,
            Some((_, s)) => s.bytes > 0 && s.bytes + size > self.segment_bytes,
        };
        if rotate {
            self.new_segment()?;
        }
        self.make_room(size)?;
        let seq = self.next_seq;
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(&points.to_le_bytes());
        h.update(payload);
        rec.extend_from_slice(&h.finalize().to_le_bytes());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(&points.to_le_bytes());
        rec.extend_from_slice(payload);
        let sync = self.sync;
        let first = *self
            .segments
            .keys()
            .next_back()
            .ok_or_else(|| AgentError::spool(&self.dir, "no segment to append to"))?;
        let seg = self
            .segments
            .get_mut(&first)
            .ok_or_else(|| AgentError::spool(&self.dir, "no segment to append to"))?;
        let offset = seg.bytes;
        if let Err(e) =
            seg.file
                .write_all(&rec)
                .and_then(|()| if sync { seg.file.sync_data() } else { Ok(()) })
        {
            // Leave no partial record behind for the next append to follow.
            let _ = seg.file.set_len(offset);
            return Err(AgentError::spool(&seg.path, e));
        }
        seg.bytes += size;
        seg.pending += 1;
        self.bytes += size;
        self.next_seq += 1;
        self.pending_points += u64::from(points);
        self.index.insert(
            seq,
            Loc {
                segment: first,
                offset,
                len: payload.len() as u32,
                points,
            },
        );
        Ok(seq)
    }

    fn new_segment(&mut self) -> Result<()> {
        let first = self.next_seq;
        let path = self.dir.join(format!("{first:020}.seg"));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        if self.sync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        self.segments.insert(
            first,
            Segment {
                path,
                file,
                bytes: 0,
                pending: 0,
            },
        );
        // A segment that was the newest and is now empty of pending records can go.
        let old: Vec<u64> = self
            .segments
            .iter()
            .filter(|(k, s)| **k != first && s.pending == 0)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.remove_segment(k)?;
        }
        Ok(())
    }

    fn make_room(&mut self, size: u64) -> Result<()> {
        while self.bytes + size > self.max_bytes && self.segments.len() > 1 {
            let Some((&oldest, _)) = self.segments.first_key_value() else {
                break;
            };
            let end = self
                .segments
                .range(oldest + 1..)
                .next()
                .map_or(self.next_seq, |(k, _)| *k);
            let lost: Vec<u64> = self.index.range(oldest..end).map(|(k, _)| *k).collect();
            let mut points = 0u64;
            for seq in &lost {
                if let Some(l) = self.index.remove(seq) {
                    points += u64::from(l.points);
                }
            }
            self.pending_points -= points;
            self.dropped_points += points;
            tracing::error!(
                records = lost.len(),
                points,
                max_bytes = self.max_bytes,
                "the spool is full: dropped its oldest readings, which were never uploaded"
            );
            self.acked.raise_floor(end);
            self.write_acked()?;
            self.remove_segment(oldest)?;
        }
        Ok(())
    }

    fn remove_segment(&mut self, first: u64) -> Result<()> {
        if let Some(s) = self.segments.remove(&first) {
            self.bytes -= s.bytes;
            match std::fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::spool(&s.path, e)),
            }
        }
        Ok(())
    }

    fn write_acked(&self) -> Result<()> {
        let tmp = self.dir.join("acked.tmp");
        let path = self.dir.join("acked");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&self.acked.encode()).map_err(io(&tmp))?;
        if self.sync {
            f.sync_data().map_err(io(&tmp))?;
        }
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        if self.sync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// Records the server's acknowledgement of `seqs` (unknown or already acknowledged seqs are
    /// ignored) and deletes segments that hold nothing pending any more.
    pub fn ack(&mut self, seqs: &[u64]) -> Result<()> {
        let mut emptied = Vec::new();
        for &seq in seqs {
            if let Some(l) = self.index.remove(&seq) {
                self.acked.insert(seq);
                self.pending_points -= u64::from(l.points);
                if let Some(s) = self.segments.get_mut(&l.segment) {
                    s.pending -= 1;
                    if s.pending == 0 {
                        emptied.push(l.segment);
                    }
                }
            }
        }
        // Everything before the oldest pending record is acknowledged or gone.
        let low = self
            .index
            .first_key_value()
            .map_or(self.next_seq, |(k, _)| *k);
        self.acked.raise_floor(low);
        self.write_acked()?;
        let newest = self.segments.last_key_value().map(|(k, _)| *k);
        for k in emptied {
            if Some(k) != newest {
                self.remove_segment(k)?;
            }
        }
        Ok(())
    }

    /// Reads a pending record: (points, payload).
    pub fn read(&self, seq: u64) -> Result<(u32, Vec<u8>)> {
        let l = self
            .index
            .get(&seq)
            .ok_or_else(|| AgentError::spool(&self.dir, format!("record {seq} is not pending")))?;
        let seg = self.segments.get(&l.segment).ok_or_else(|| {
            AgentError::spool(&self.dir, format!("segment of record {seq} is gone"))
        })?;
        let mut buf = vec![0u8; l.len as usize];
        seg.file
            .read_exact_at(&mut buf, l.offset + HEADER as u64)
            .map_err(io(&seg.path))?;
        Ok((l.points, buf))
    }

    /// Pending seqs, oldest first, with their points.
    pub fn pending(&self) -> impl DoubleEndedIterator<Item = (u64, u32)> + Clone + '_ {
        self.index.iter().map(|(k, l)| (*k, l.points))
    }

    /// Records pending.
    pub fn pending_records(&self) -> usize {
        self.index.len()
    }

    /// Points pending.
    pub fn pending_points(&self) -> u64 {
        self.pending_points
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Points dropped because the spool was full, since it was opened.
    pub fn dropped_points(&self) -> u64 {
        self.dropped_points
    }

    /// The seq the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// (seq, points, payload length) of the record at the start of `b`, if it is whole and intact.
fn parse_record(b: &[u8]) -> Option<(u64, u32, usize)> {
    if b.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(b[0..4].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD || b.len() < HEADER + len {
        return None;
    }
    let crc = u32::from_le_bytes(b[4..8].try_into().ok()?);
    if crc32fast::hash(&b[8..HEADER + len]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let points = u32::from_le_bytes(b[16..20].try_into().ok()?);
    Some((seq, points, len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn payload(seq_hint: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seq_hint as usize * 31 + i) as u8)
            .collect()
    }

    #[test]
    fn appends_survive_reopen_and_acks_remove_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(rec, Recovery::default());
        let a = s.append(3, b"abc").unwrap();
        let b = s.append(2, b"de").unwrap();
        let c = s.append(1, b"f").unwrap();
        assert_eq!((a, b, c), (1, 2, 3));
        s.ack(&[b]).unwrap();
        drop(s);
        let (s, rec) = Spool::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!((rec.records, rec.points), (2, 4));
        assert_eq!(s.pending().collect::<Vec<_>>(), vec![(1, 3), (3, 1)]);
        assert_eq!(s.read(3).unwrap(), (1, b"f".to_vec()));
        assert!(s.read(2).is_err());
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 1 << 20, false).unwrap();
        s.append(1, b"one").unwrap();
        s.append(1, b"two").unwrap();
        let seg = s.segments.values().next().unwrap().path.clone();
        drop(s);
        // Half a record, as a crash in the middle of a write leaves it.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, false).unwrap();
        assert_eq!(rec.torn_bytes, 7);
        assert_eq!(rec.records, 2);
        assert_eq!(s.append(1, b"three").unwrap(), 3);
        drop(s);
        let (s, _) = Spool::open(dir.path(), 1 << 20, false).unwrap();
        assert_eq!(s.read(3).unwrap().1, b"three");
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 1 << 20, false).unwrap();
        // 64 KiB segments (the smallest); 1 MiB total: about 16 segments of records.
        let rec = vec![7u8; 4000];
        let mut seqs = Vec::new();
        for _ in 0..600 {
            seqs.push(s.append(10, &rec).unwrap());
            assert!(s.bytes() <= 1 << 20, "{}", s.bytes());
        }
        let pending: Vec<u64> = s.pending().map(|p| p.0).collect();
        assert!(s.dropped_points() > 0);
        assert_eq!(s.dropped_points() + s.pending_points(), 6000);
        // What is left is the newest, contiguous, up to the last append.
        assert_eq!(*pending.last().unwrap(), *seqs.last().unwrap());
        assert!(pending.windows(2).all(|w| w[1] == w[0] + 1));
        drop(s);
        let (s, rec) = Spool::open(dir.path(), 1 << 20, false).unwrap();
        assert_eq!(s.pending().map(|p| p.0).collect::<Vec<_>>(), pending);
        assert_eq!(rec.points, pending.len() as u64 * 10);
    }

    #[test]
    fn seqs_are_not_reused_after_everything_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 1 << 20, false).unwrap();
        let a = s.append(1, b"x").unwrap();
        s.ack(&[a]).unwrap();
        drop(s);
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, false).unwrap();
        assert_eq!(rec.records, 0);
        assert_eq!(s.append(1, b"y").unwrap(), a + 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u32, usize),
        /// Acknowledge the pending record at this position (modulo their count).
        Ack(usize),
        /// Acknowledge the oldest n.
        AckOldest(usize),
        Reopen,
        /// A crash in the middle of an append: some bytes of a record reach the file.
        TornAppend(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u32..500, 0usize..3000).prop_map(|(p, l)| Op::Append(p, l)),
            2 => any::<usize>().prop_map(Op::Ack),
            1 => (1usize..20).prop_map(Op::AckOldest),
            1 => Just(Op::Reopen),
            1 => (1usize..40).prop_map(Op::TornAppend),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn behaves_like_a_map_of_pending_records(ops in prop::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().unwrap();
            // Large enough never to drop (segments still rotate at 64 KiB).
            let (mut s, _) = Spool::open(dir.path(), 64 << 20, false).unwrap();
            let mut model: BTreeMap<u64, (u32, Vec<u8>)> = BTreeMap::new();
            let mut last_seq = 0u64;
            for op in ops {
                match op {
                    Op::Append(points, len) => {
                        let p = payload(last_seq + 1, len);
                        let seq = s.append(points, &p).unwrap();
                        prop_assert!(seq > last_seq);
                        last_seq = seq;
                        model.insert(seq, (points, p));
                    }
                    Op::Ack(i) => {
                        if !model.is_empty() {
                            let seq = *model.keys().nth(i % model.len()).unwrap();
                            s.ack(&[seq]).unwrap();
                            model.remove(&seq);
                        }
                    }
                    Op::AckOldest(n) => {
                        let seqs: Vec<u64> = model.keys().take(n).copied().collect();
                        s.ack(&seqs).unwrap();
                        for q in seqs { model.remove(&q); }
                    }
                    Op::Reopen => {
                        drop(s);
                        s = Spool::open(dir.path(), 64 << 20, false).unwrap().0;
                    }
                    Op::TornAppend(n) => {
                        let Some(seg) = s.segments.values().next_back().map(|g| g.path.clone()) else {
                            continue;
                        };
                        drop(s);
                        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
                        let mut junk = ((n + 100) as u32).to_le_bytes().to_vec();
                        junk.extend(std::iter::repeat_n(0xAB, n));
                        f.write_all(&junk).unwrap();
                        drop(f);
                        s = Spool::open(dir.path(), 64 << 20, false).unwrap().0;
                    }
                }
                let got: Vec<(u64, u32)> = s.pending().collect();
                let want: Vec<(u64, u32)> = model.iter().map(|(k, v)| (*k, v.0)).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(s.pending_points(), model.values().map(|v| u64::from(v.0)).sum::<u64>());
            }
            for (seq, (points, p)) in &model {
                prop_assert_eq!(&s.read(*seq).unwrap(), &(*points, p.clone()));
            }
            // Segments on disk: only those holding pending records, plus the newest.
            let on_disk = std::fs::read_dir(dir.path()).unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"))
                .count();
            prop_assert!(on_disk <= s.segments.len());
        }
    }
}
