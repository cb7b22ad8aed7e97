//! The write-ahead log: every change is appended here and fsynced before it is acknowledged.
//!
//! # Files
//! `<data dir>/wal/<first seq, 20 digits>.wal`, one segment per file. A segment is closed once it
//! passes the segment size; a new one starts at every open. Segments whose every record is older
//! than the last checkpoint are deleted.
//!
//! # Frame
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32 of (seq bytes ++ payload)
//! u64 LE  seq                      strictly increasing across segments
//! ...     payload                  one record (below)
//! ```
//! A frame that is cut short or fails its CRC marks the end of the log: it can only be the tail of
//! the last segment, written while the process died, and was never acknowledged. Replay truncates
//! the file there. A bad frame anywhere else is corruption and refuses the open.
//!
//! # Records
//! `u8 kind` then:
//! - 1 `PutStream`: MessagePack of ([`StreamRecord`] fields) — creates or updates a stream.
//! - 2 `DeleteStream`: varint id.
//! - 3 `Points`: zvarint server ts, varint groups, per group: varint id, varint n, n × (zvarint
//!   ts delta from the previous point of the group, u8 tag, value, [extras]). The tag is the value
//!   kind (0 Int zvarint, 1 Float 8 bytes LE, 2 Text str, 3 Bytes str) with bit 7 set when
//!   extras follow (see the chunk codec).
//! - 4 `DeleteRange`: varint id, zvarint from, zvarint to (from inclusive, to exclusive).
//! - 5 `Expire`: varint id, zvarint raw_before, zvarint rollups_before.
//!
//! # Group commit
//! Writers encode their record on their own thread, then take a sequence number and hand the frame
//! to the one log thread in the same step, so log order is sequence order. The log thread takes
//! every frame waiting, writes them with one `write`, calls `fdatasync` once, and passes the group
//! on to the apply thread, which applies it in order and answers the writers. Concurrent batches
//! therefore share one flush, and while one group is being applied the next is being synced.

use crate::codec::{decode_extras, encode_extras, put_bytes, put_varint, put_zvarint, Reader};
use crate::error::{Result, StorageError};
use crate::point::Extras;
use crate::stream::StreamMeta;
use crate::value::Value;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Instant;

const FRAME_HEADER: usize = 16;
/// The first payload byte of a `Points` record.
const TAG_POINTS: u8 = 3;
/// Most bytes the log thread takes into one group.
const MAX_GROUP_BYTES: usize = 64 << 20;

/// A stream's durable description, as logged and as kept in the `streams` tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Internal id (chunk keys use it instead of the path).
    pub id: u64,
    /// The stream path.
    pub path: String,
    /// User-set metadata.
    pub meta: StreamMeta,
    /// Creation time, server ms.
    pub created: i64,
}

/// One point of a `Points` record.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRec {
    /// Device timestamp, ms.
    pub ts: i64,
    /// Value, already of the stream's kind.
    pub value: Value,
    /// Optional fields.
    pub extras: Option<Box<Extras>>,
}

/// A logged change.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Create or update a stream.
    PutStream(StreamRecord),
    /// Delete a stream with all its data.
    DeleteStream {
        /// Internal id.
        id: u64,
    },
    /// Write points.
    Points {
        /// When the server received them.
        server_ts: i64,
        /// Points per stream id.
        groups: Vec<(u64, Vec<PointRec>)>,
    },
    /// Delete the points of a stream with `from <= ts < to`.
    DeleteRange {
        /// Internal id.
        id: u64,
        /// First timestamp deleted.
        from: i64,
        /// First timestamp kept after the range.
        to: i64,
    },
    /// Retention: drop raw points older than `raw_before` (their rollups stay) and rollups of
    /// UTC days that end at or before `rollups_before`.
    Expire {
        /// Internal id.
        id: u64,
        /// First raw timestamp kept.
        raw_before: i64,
        /// Rollups of days ending at or before this go.
        rollups_before: i64,
    },
}

impl Record {
    /// Encodes the record as a frame payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Record::PutStream(s) => {
                out.push(1);
                // Serializing a plain struct of strings, numbers and options cannot fail.
                let b = rmp_serde::to_vec_named(s).unwrap_or_default();
                out.extend_from_slice(&b);
            }
            Record::DeleteStream { id } => {
                out.push(2);
                put_varint(&mut out, *id);
            }
            Record::Points { server_ts, groups } => {
                let n: usize = groups.iter().map(|g| g.1.len()).sum();
                out.reserve(16 + n * 12);
                out.push(3);
                put_zvarint(&mut out, *server_ts);
                put_varint(&mut out, groups.len() as u64);
                for (id, points) in groups {
                    put_varint(&mut out, *id);
                    put_varint(&mut out, points.len() as u64);
                    let mut prev = 0i64;
                    for p in points {
                        put_zvarint(&mut out, p.ts - prev);
                        prev = p.ts;
                        let flag = if p.extras.is_some() { 0x80 } else { 0 };
                        match &p.value {
                            Value::Int(i) => {
                                out.push(flag);
                                put_zvarint(&mut out, *i);
                            }
                            Value::Float(f) => {
                                out.push(1 | flag);
                                out.extend_from_slice(&f.to_bits().to_le_bytes());
                            }
                            Value::Text(s) => {
                                out.push(2 | flag);
                                put_bytes(&mut out, s.as_bytes());
                            }
                            Value::Bytes(b) => {
                                out.push(3 | flag);
                                put_bytes(&mut out, b);
                            }
                        }
                        if let Some(e) = &p.extras {
                            encode_extras(&mut out, e);
                        }
                    }
                }
            }
            Record::DeleteRange { id, from, to } => {
                out.push(4);
                put_varint(&mut out, *id);
                put_zvarint(&mut out, *from);
                put_zvarint(&mut out, *to);
            }
            Record::Expire {
                id,
                raw_before,
                rollups_before,
            } => {
                out.push(5);
                put_varint(&mut out, *id);
                put_zvarint(&mut out, *raw_before);
                put_zvarint(&mut out, *rollups_before);
            }
        }
        out
    }

    /// Decodes a frame payload.
    pub fn decode(buf: &[u8]) -> Result<Record> {
        let mut r = Reader::new(buf, "log record");
        match r.u8()? {
            1 => rmp_serde::from_slice(&buf[1..])
                .map(Record::PutStream)
                .map_err(|e| StorageError::corrupt("log record", e.to_string())),
            2 => Ok(Record::DeleteStream { id: r.varint()? }),
            3 => {
                let server_ts = r.zvarint()?;
                let ng = r.len(buf.len())?;
                let mut groups = Vec::with_capacity(ng);
                for _ in 0..ng {
                    let id = r.varint()?;
                    let n = r.len(buf.len())?;
                    let mut points = Vec::with_capacity(n);
                    let mut prev = 0i64;
                    for _ in 0..n {
                        let ts = prev + r.zvarint()?;
                        prev = ts;
                        let tag = r.u8()?;
                        let value = match tag & 0x7f {
                            0 => Value::Int(r.zvarint()?),
                            1 => Value::Float(f64::from_bits(u64::from_le_bytes(r.fixed()?))),
                            2 => Value::Text(r.string()?),
                            3 => Value::Bytes(r.bytes()?.to_vec()),
                            t => {
                                return Err(StorageError::corrupt(
                                    "log record",
                                    format!("unknown value tag {t}"),
                                ))
                            }
                        };
                        let extras = if tag & 0x80 != 0 {
                            Some(Box::new(decode_extras(&mut r)?))
                        } else {
                            None
                        };
                        points.push(PointRec { ts, value, extras });
                    }
                    groups.push((id, points));
                }
                Ok(Record::Points { server_ts, groups })
            }
            4 => Ok(Record::DeleteRange {
                id: r.varint()?,
                from: r.zvarint()?,
                to: r.zvarint()?,
            }),
            5 => Ok(Record::Expire {
                id: r.varint()?,
                raw_before: r.zvarint()?,
                rollups_before: r.zvarint()?,
            }),
            k => Err(StorageError::corrupt(
                "log record",
                format!("unknown kind {k}"),
            )),
        }
    }
}

/// A frame on its way through the log and apply threads.
pub(crate) struct Pending {
    pub seq: u64,
    pub frame: Vec<u8>,
    pub record: Record,
    pub done: Option<SyncSender<Result<u64>>>,
}

struct Sequencer {
    next_seq: u64,
    tx: Option<Sender<Pending>>,
}

/// Flush statistics, read by the metrics layer.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Number of fsyncs.
    pub syncs: AtomicU64,
    /// Frames written.
    pub frames: AtomicU64,
    /// Bytes written since open.
    pub bytes: AtomicU64,
}

/// The write-ahead log.
pub(crate) struct Wal {
    dir: PathBuf,
    seq: Mutex<Sequencer>,
    failed: Arc<AtomicBool>,
    pub stats: Arc<WalStats>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let e = e.map_err(|e| StorageError::io(dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal") {
            if let Ok(seq) = stem.parse::<u64>() {
                segs.push((seq, e.path()));
            }
        }
    }
    segs.sort();
    Ok(segs)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Reads every frame of the log in order and calls `apply(seq, record)` for those after
/// `after_seq`. Truncates a torn tail. Returns the last sequence number seen.
pub(crate) fn replay(
    dir: &Path,
    after_seq: u64,
    mut apply: impl FnMut(u64, Record) -> Result<()>,
) -> Result<u64> {
    fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
    let segs = list_segments(dir)?;
    let mut last = after_seq;
    for (k, (_, path)) in segs.iter().enumerate() {
        let buf = fs::read(path).map_err(|e| StorageError::io(path, e))?;
        let mut pos = 0usize;
        let mut torn = None;
        while pos < buf.len() {
            if buf.len() - pos < FRAME_HEADER {
                torn = Some("a cut-short frame header");
                break;
            }
            let h = &buf[pos..pos + FRAME_HEADER];
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let seq_bytes = &h[8..16];
            if buf.len() - pos - FRAME_HEADER < len {
                torn = Some("a cut-short frame");
                break;
            }
            let payload = &buf[pos + FRAME_HEADER..pos + FRAME_HEADER + len];
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(seq_bytes);
            hasher.update(payload);
            if hasher.finalize() != crc {
                torn = Some("a checksum mismatch");
                break;
            }
            let mut sb = [0u8; 8];
            sb.copy_from_slice(seq_bytes);
            let seq = u64::from_le_bytes(sb);
            if seq > after_seq {
                if seq <= last {
                    return Err(StorageError::corrupt(
                        "log",
                        format!("sequence {seq} after {last} in {}", path.display()),
                    ));
                }
                apply(seq, Record::decode(payload)?)?;
            }
            last = last.max(seq);
            pos += FRAME_HEADER + len;
        }
        if let Some(why) = torn {
            if k + 1 != segs.len() {
                return Err(StorageError::corrupt(
                    "log",
                    format!(
                        "{why} at byte {pos} of {}, which is not the last segment",
                        path.display()
                    ),
                ));
            }
            tracing::warn!(
                file = %path.display(),
                offset = pos,
                dropped_bytes = buf.len() - pos,
                "log tail was cut short by a crash ({why}); truncating the unacknowledged tail"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| StorageError::io(path, e))?;
            f.set_len(pos as u64)
                .and_then(|_| f.sync_all())
                .map_err(|e| StorageError::io(path, e))?;
        }
    }
    Ok(last)
}

/// What [`read_after`] found.
pub(crate) struct ReadAfter {
    /// The first sequence number the log still holds, if it holds any.
    pub first: Option<u64>,
    /// The last sequence number read (or skipped because it was not a `Points` record).
    pub last: u64,
    /// Whether the read stopped at `max_points` (more may follow).
    pub stopped: bool,
}

/// Reads the `Points` records with `after < seq <= upto` from the segments on disk, in order,
/// until about `max_points` points were read. Frames before the cursor are skipped by their
/// headers; a torn or unfinished tail ends the read (the log thread may be writing it).
pub(crate) fn read_after(
    dir: &Path,
    after: u64,
    upto: u64,
    max_points: usize,
    mut f: impl FnMut(u64, Record),
) -> Result<ReadAfter> {
    use std::io::{BufReader, Read};
    let segs = list_segments(dir)?;
    let first = segs.first().map(|s| s.0);
    // The segment holding `after + 1`: the last whose first sequence number is not beyond it.
    let start = segs.partition_point(|s| s.0 <= after + 1).saturating_sub(1);
    let mut out = ReadAfter {
        first,
        last: after,
        stopped: false,
    };
    let mut points = 0usize;
    for (_, path) in &segs[start..] {
        let file = match File::open(path) {
            Ok(f) => f,
            // Deleted by a checkpoint since it was listed: its records are gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io(path, e)),
        };
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; FRAME_HEADER];
        loop {
            if r.read_exact(&mut header).is_err() {
                break;
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let mut sb = [0u8; 8];
            sb.copy_from_slice(&header[8..16]);
            let seq = u64::from_le_bytes(sb);
            if seq > upto {
                return Ok(out);
            }
            if seq <= after {
                if r.seek_relative(len as i64).is_err() {
                    break;
                }
                continue;
            }
            let mut payload = vec![0u8; len];
            if r.read_exact(&mut payload).is_err() {
                break;
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header[8..16]);
            hasher.update(&payload);
            if hasher.finalize() != crc {
                break;
            }
            out.last = seq;
            if payload.first() == Some(&TAG_POINTS) {
                let rec = Record::decode(&payload)?;
                if let Record::Points { groups, .. } = &rec {
                    points += groups.iter().map(|(_, p)| p.len()).sum::<usize>();
                }
                f(seq, rec);
                if points >= max_points {
                    out.stopped = true;
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

impl Wal {
    /// Starts the log thread on a new segment whose first frame will have `next_seq`. Groups
    /// that are durable are sent to `apply_tx`.
    pub(crate) fn start(
        dir: &Path,
        next_seq: u64,
        segment_bytes: u64,
        apply_tx: Sender<Vec<Pending>>,
        on_sync: impl Fn(f64) + Send + 'static,
    ) -> Result<Wal> {
        let (tx, rx) = mpsc::channel::<Pending>();
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WalStats::default());
        let file = open_segment(dir, next_seq)?;
        let mut w = LogThread {
            dir: dir.to_path_buf(),
            file,
            file_bytes: 0,
            segment_bytes,
            failed: failed.clone(),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("meterstream-wal".into())
            .spawn(move || w.run(rx, apply_tx, on_sync))
            .map_err(|e| StorageError::io(dir, e))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            seq: Mutex::new(Sequencer {
                next_seq,
                tx: Some(tx),
            }),
            failed,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Appends `record`; `done` is answered once it is durable and applied. The sequence number
    /// is taken and the frame queued under one lock, so queue order is sequence order; a caller
    /// that publishes something after `append` returns (a new stream in the registry) can rely on
    /// every record that sees it coming later in the log.
    pub(crate) fn append(
        &self,
        record: Record,
        done: Option<SyncSender<Result<u64>>>,
    ) -> Result<u64> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let payload = record.encode();
        let mut ph = crc32fast::Hasher::new();
        ph.update(&payload);
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&[0u8; 12]);
        frame.extend_from_slice(&payload);
        drop(payload);
        let mut s = self.seq.lock();
        let seq = s.next_seq;
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.combine(&ph);
        frame[4..8].copy_from_slice(&h.finalize().to_le_bytes());
        frame[8..16].copy_from_slice(&seq.to_le_bytes());
        let tx = s.tx.as_ref().ok_or(StorageError::Closed)?;
        tx.send(Pending {
            seq,
            frame,
            record,
            done,
        })
        .map_err(|_| StorageError::Closed)?;
        s.next_seq += 1;
        Ok(seq)
    }

    /// Deletes the segments whose every record has a sequence number `<= upto`.
    pub(crate) fn truncate(&self, upto: u64) -> Result<usize> {
        let segs = list_segments(&self.dir)?;
        let mut removed = 0;
        for w in segs.windows(2) {
            let (_, path) = &w[0];
            let (next_first, _) = w[1];
            if next_first <= upto + 1 {
                fs::remove_file(path).map_err(|e| StorageError::io(path, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes the segments whose every record is `<= upto`, except those a feed consumer still
    /// needs (records after `hold`), unless those exceed `keep_bytes`: then the oldest go too.
    /// Returns how many segments were removed.
    pub(crate) fn truncate_held(
        &self,
        upto: u64,
        hold: Option<u64>,
        keep_bytes: u64,
    ) -> Result<usize> {
        let Some(hold) = hold.filter(|h| *h < upto) else {
            return self.truncate(upto);
        };
        let segs = list_segments(&self.dir)?;
        // Segments covered by the checkpoint, with whether the hold still needs them.
        let mut held: Vec<(PathBuf, u64)> = Vec::new();
        let mut removed = 0;
        for w in segs.windows(2) {
            let (_, path) = &w[0];
            let (next_first, _) = w[1];
            if next_first > upto + 1 {
                break;
            }
            if next_first <= hold + 1 {
                fs::remove_file(path).map_err(|e| StorageError::io(path, e))?;
                removed += 1;
            } else {
                let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                held.push((path.clone(), len));
            }
        }
        let mut total: u64 = held.iter().map(|h| h.1).sum();
        for (path, len) in held {
            if total <= keep_bytes {
                break;
            }
            tracing::warn!(file = %path.display(), "a feed consumer is behind by more than feed_retention_bytes; deleting log it has not read");
            fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            total -= len;
            removed += 1;
        }
        Ok(removed)
    }

    /// Deletes every segment. Only for after the log thread has stopped and a checkpoint covers
    /// everything it wrote (a clean shutdown), so that a reopen has nothing to replay.
    pub(crate) fn remove_all(&self) -> Result<usize> {
        let segs = list_segments(&self.dir)?;
        for (_, path) in &segs {
            fs::remove_file(path).map_err(|e| StorageError::io(path, e))?;
        }
        sync_dir(&self.dir)?;
        Ok(segs.len())
    }

    /// Total bytes of the log files.
    pub(crate) fn disk_bytes(&self) -> u64 {
        list_segments(&self.dir)
            .map(|s| {
                s.iter()
                    .filter_map(|(_, p)| fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Stops accepting records and waits for the log thread to drain.
    pub(crate) fn close(&self) {
        self.seq.lock().tx = None;
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

fn open_segment(dir: &Path, first_seq: u64) -> Result<File> {
    let path = dir.join(segment_name(first_seq));
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| StorageError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(f)
}

struct LogThread {
    dir: PathBuf,
    file: File,
    file_bytes: u64,
    segment_bytes: u64,
    failed: Arc<AtomicBool>,
    stats: Arc<WalStats>,
}

impl LogThread {
    fn run(
        &mut self,
        rx: Receiver<Pending>,
        apply_tx: Sender<Vec<Pending>>,
        on_sync: impl Fn(f64),
    ) {
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let mut bytes = group[0].frame.len();
            while bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.frame.len();
                        group.push(p);
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let result = self.write_group(&group, &mut buf);
            on_sync(started.elapsed().as_secs_f64());
            if let Err(e) = result {
                tracing::error!(error = %e, frames = group.len(), "write-ahead log failed; the store stops accepting writes");
                self.failed.store(true, Ordering::Release);
                for p in group {
                    if let Some(d) = p.done {
                        let _ = d.send(Err(StorageError::Closed));
                    }
                }
                continue;
            }
            // The bytes are on disk: only the decoded record is needed from here on.
            for p in &mut group {
                p.frame = Vec::new();
            }
            if apply_tx.send(group).is_err() {
                break;
            }
        }
    }

    fn write_group(&mut self, group: &[Pending], buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        for p in group {
            buf.extend_from_slice(&p.frame);
        }
        let path = || self.dir.join("current segment");
        self.file
            .write_all(buf)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| StorageError::io(path(), e))?;
        self.file_bytes += buf.len() as u64;
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .frames
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if self.file_bytes >= self.segment_bytes {
            let next = group.last().map_or(0, |p| p.seq + 1);
            self.file = open_segment(&self.dir, next)?;
            self.file_bytes = 0;
        }
        if buf.capacity() > 4 * MAX_GROUP_BYTES {
            *buf = Vec::new();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::StreamType;

    #[test]
    fn records_round_trip() {
        let recs = vec![
            Record::PutStream(StreamRecord {
                id: 7,
                path: "gw/m/v".into(),
                meta: StreamMeta::new(StreamType::Double),
                created: 5,
            }),
            Record::DeleteStream { id: 9 },
            Record::DeleteRange {
                id: 3,
                from: 0,
                to: 99,
            },
            Record::Expire {
                id: 3,
                raw_before: 99,
                rollups_before: 42,
            },
            Record::Points {
                server_ts: 1_700_000_000_000,
                groups: vec![(
                    1,
                    vec![
                        PointRec {
                            ts: 5,
                            value: Value::Float(-0.0),
                            extras: None,
                        },
                        PointRec {
                            ts: 3,
                            value: Value::Text("é".into()),
                            extras: Some(Box::new(Extras {
                                quality: Some(-3),
                                location: None,
                                description: Some(String::new()),
                            })),
                        },
                        PointRec {
                            ts: 4,
                            value: Value::Int(i64::MIN),
                            extras: None,
                        },
                        PointRec {
                            ts: 6,
                            value: Value::Bytes(vec![0, 255]),
                            extras: None,
                        },
                    ],
                )],
            },
        ];
        for r in recs {
            assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn torn_tail_is_truncated_and_earlier_frames_survive() {
        let dir = tempfile::tempdir().unwrap();
        let (atx, arx) = mpsc::channel();
        let wal = Wal::start(dir.path(), 1, 1 << 20, atx, |_| {}).unwrap();
        for i in 0..3 {
            let (d, w) = mpsc::sync_channel(1);
            wal.append(Record::DeleteStream { id: i }, Some(d)).unwrap();
            let g: Vec<Pending> = arx.recv().unwrap();
            for p in g {
                p.done.unwrap().send(Ok(0)).unwrap();
            }
            w.recv().unwrap().unwrap();
        }
        wal.close();
        let seg = dir.path().join(segment_name(1));
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 2).unwrap();
        let mut seen = vec![];
        let last = replay(dir.path(), 0, |seq, r| {
            seen.push((seq, r));
            Ok(())
        })
        .unwrap();
        assert_eq!(last, 2);
        assert_eq!(
            seen,
            vec![
                (1, Record::DeleteStream { id: 0 }),
                (2, Record::DeleteStream { id: 1 })
            ]
        );
        // Replaying again after the truncation sees the same, and `after_seq` skips.
        let mut n = 0;
        replay(dir.path(), 1, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
