//! A stream's stored state as pieces, for a cluster's partition snapshots (docs/scale-out.md,
//! "Snapshots"): exported from one node's engine and restored into another's.
//!
//! ```text
//! record piece   MessagePack {meta, created}
//! chunk piece    u32 LE length of the minute summaries, then the chunk (see codec) and its
//!                1-minute summaries (see buckets), exactly as the chunk file holds them;
//!                the open head is exported as one more chunk
//! day piece      a completed UTC day's 15-minute summaries (buckets format), as tree
//!                `rollups` holds them
//! ```
//! A sealed chunk's `version` is its index value here (its location in the chunk files, which
//! are append-only): the same version means the same bytes, so an exporter that already has a
//! chunk by that version is not sent its bytes again. A stream's chunk list, day records and
//! head are read under its shard's lock, at one moment: a seal cannot move points between them
//! while they are read.

use super::*;
use serde::{Deserialize, Serialize};

/// A stream's stored state, as pieces.
#[derive(Debug, Clone)]
pub struct StreamPieces {
    /// The stream's record piece: what a restored stream is created with.
    pub record: Vec<u8>,
    /// Its chunks in time order: the sealed ones, then the open head as one more.
    pub chunks: Vec<ChunkPiece>,
    /// Its completed UTC days' 15-minute rollups: (the day's start, its bytes).
    pub days: Vec<(i64, Vec<u8>)>,
}

/// One chunk of a stream, as a piece.
#[derive(Debug, Clone)]
pub struct ChunkPiece {
    /// Its first timestamp.
    pub ts: i64,
    /// Where this engine holds it (empty for the open head): equal versions, equal bytes.
    pub version: Vec<u8>,
    /// The chunk piece (module doc); `None` when the exporter said it has this version.
    pub bytes: Option<Vec<u8>>,
}

/// One stream to restore, as pieces.
#[derive(Debug, Clone)]
pub struct StreamRestore<'a> {
    /// Its path.
    pub path: &'a str,
    /// Its record piece.
    pub record: &'a [u8],
    /// Its chunk pieces, in time order.
    pub chunks: Vec<&'a [u8]>,
    /// Its day pieces: (the day's start, bytes).
    pub days: Vec<(i64, &'a [u8])>,
}

#[derive(Serialize, Deserialize)]
struct RecordPiece {
    meta: StreamMeta,
    created: i64,
}

/// A chunk and its minute summaries as a piece.
fn chunk_piece(minutes_len: u32, whole: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + whole.len());
    out.extend_from_slice(&minutes_len.to_le_bytes());
    out.extend_from_slice(whole);
    out
}

/// Splits a chunk piece into (the length of its summaries, chunk and summaries), checking that
/// both decode; returns the chunk's first timestamp and last timestamp too.
fn check_chunk_piece(piece: &[u8]) -> Result<(u32, &[u8], i64, i64)> {
    let bad = |m: &str| StorageError::corrupt("snapshot chunk", m.to_string());
    if piece.len() < 4 {
        return Err(bad("shorter than its header"));
    }
    let ml = u32::from_le_bytes([piece[0], piece[1], piece[2], piece[3]]);
    let whole = &piece[4..];
    if ml as usize >= whole.len() {
        return Err(bad("its summaries are longer than the piece"));
    }
    let (chunk, mins) = whole.split_at(whole.len() - ml as usize);
    let s = codec::decode(chunk)?;
    if ml > 0 {
        buckets::decode(mins, MINUTE)?;
    }
    match (s.first_ts(), s.last_ts()) {
        (Some(a), Some(b)) => Ok((ml, whole, a, b)),
        _ => Err(bad("no points")),
    }
}

impl Engine {
    /// The type of stream `path`, `None` when it does not exist. A lookup in memory.
    pub fn stream_type(&self, path: &str) -> Option<crate::StreamType> {
        self.inner.lookup(path).map(|e| e.ty)
    }

    /// The paths of the streams whose device id `keep` accepts, in path order.
    pub fn paths_where(&self, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
        self.inner
            .registry
            .read()
            .by_path
            .keys()
            .filter(|p| keep(device_id(p)))
            .map(|p| p.to_string())
            .collect()
    }

    /// The stream at `path` as pieces, `None` if there is none. `known(first ts, version)`
    /// says whether the caller already has a sealed chunk by that version; such chunks come
    /// without their bytes.
    pub fn export_stream(
        &self,
        path: &str,
        known: &mut dyn FnMut(i64, &[u8]) -> bool,
    ) -> Result<Option<StreamPieces>> {
        let inner = &self.inner;
        // A chunk replaced (a late point merged) between the listing and the read may have had
        // its file deleted: the stream is listed again.
        for _ in 0..3 {
            let Some(e) = inner.lookup(path) else {
                return Ok(None);
            };
            let (rec, entries, days, head) = {
                let sh = inner.shards[shard_of_id(e.id)].lock();
                let Some(st) = sh.streams.get(&e.id) else {
                    return Ok(None);
                };
                let mut entries = Vec::new();
                for kv in inner.chunk_scan(e.id) {
                    let (k, v) = kv?;
                    entries.push((chunk_key_ts(&k), v));
                }
                let mut days = Vec::new();
                for kv in inner
                    .rollups
                    .range(rollup_key(e.id, 0)..=rollup_key(e.id, i64::MAX))
                {
                    let (k, v) = kv?;
                    days.push((rollup_key_day(&k), v.to_vec()));
                }
                let head = if st.head.is_empty() {
                    None
                } else {
                    Some(st.head.series_prefix(usize::MAX)?)
                };
                (st.rec.clone(), entries, days, head)
            };
            let mut chunks = Vec::with_capacity(entries.len() + 1);
            let mut moved = false;
            for (ts, v) in entries {
                if known(ts, &v) {
                    chunks.push(ChunkPiece {
                        ts,
                        version: v.to_vec(),
                        bytes: None,
                    });
                    continue;
                }
                let (whole, _, mins) = parse_index(&v)?;
                match inner.files.read(whole) {
                    Ok(b) => chunks.push(ChunkPiece {
                        ts,
                        version: v.to_vec(),
                        bytes: Some(chunk_piece(mins.map_or(0, |m| m.len), &b)),
                    }),
                    Err(_) => {
                        moved = true;
                        break;
                    }
                }
            }
            if moved {
                continue;
            }
            if let Some(s) = head.filter(|s| !s.is_empty()) {
                let mut whole = codec::encode(&s)?;
                let mins = buckets::summarize_series(&s, MINUTE);
                let mut ml = 0u32;
                if !mins.is_empty() {
                    let m = buckets::encode(&mins, MINUTE);
                    ml = m.len() as u32;
                    whole.extend_from_slice(&m);
                }
                chunks.push(ChunkPiece {
                    ts: s.first_ts().unwrap_or_default(),
                    version: Vec::new(),
                    bytes: Some(chunk_piece(ml, &whole)),
                });
            }
            let record = rmp_serde::to_vec_named(&RecordPiece {
                meta: rec.meta,
                created: rec.created,
            })
            .map_err(|e| StorageError::corrupt("stream record", e.to_string()))?;
            return Ok(Some(StreamPieces {
                record,
                chunks,
                days,
            }));
        }
        Err(StorageError::corrupt(
            "chunk files",
            format!("the chunks of {path} kept moving while they were exported"),
        ))
    }

    /// Replaces each stream (if any) with the one its pieces describe: its record, its chunks
    /// (in time order) and its day records. Every piece is checked first, so bad pieces change
    /// nothing. The streams' creations are logged, with one wait for all of them; their chunks
    /// and day records are written as a seal writes them (appended, synced once, then indexed
    /// in one transaction), so they are durable once [`Engine::flush`] returns.
    pub fn restore_streams(&self, streams: &[StreamRestore<'_>]) -> Result<()> {
        type Plan<'a> = (RecordPiece, Vec<(i64, u32, &'a [u8])>);
        let mut plans: Vec<Plan<'_>> = Vec::with_capacity(streams.len());
        for st in streams {
            let path = st.path;
            validate_path(path)?;
            let rp: RecordPiece = rmp_serde::from_slice(st.record)
                .map_err(|e| StorageError::corrupt("snapshot stream record", e.to_string()))?;
            let mut plan = Vec::with_capacity(st.chunks.len());
            let mut last: Option<i64> = None;
            for c in &st.chunks {
                let (ml, whole, first, end) = check_chunk_piece(c)?;
                if last.is_some_and(|l| first <= l) {
                    return Err(StorageError::corrupt(
                        "snapshot chunk",
                        format!("the chunks of {path} overlap or are out of order"),
                    ));
                }
                last = Some(end);
                plan.push((first, ml, whole));
            }
            for (_, d) in &st.days {
                buckets::decode(d, QUARTER)?;
            }
            plans.push((rp, plan));
        }
        let inner = &self.inner;
        for st in streams {
            if inner.lookup(st.path).is_some() {
                self.delete_stream(st.path)?;
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let mut ids = Vec::with_capacity(streams.len());
        {
            let mut reg = inner.registry.write();
            if let Some(st) = streams.iter().find(|s| reg.by_path.contains_key(s.path)) {
                return Err(StorageError::Conflict {
                    path: st.path.to_string(),
                    message: "created while it was being restored".into(),
                });
            }
            let mut tx = Some(tx);
            for (k, (st, (rp, _))) in streams.iter().zip(&plans).enumerate() {
                let id = (reg.next_counter << SHARD_BITS) | shard_of_path(st.path);
                let ty = rp.meta.stream_type;
                let forwards = !rp.meta.forward_to.is_empty();
                // Records are applied in order: waiting for the last waits for them all.
                let done = if k + 1 == streams.len() {
                    tx.take()
                } else {
                    None
                };
                self.wal.append(
                    Record::PutStream(StreamRecord {
                        id,
                        path: st.path.to_string(),
                        meta: rp.meta.clone(),
                        created: rp.created,
                    }),
                    done,
                )?;
                reg.next_counter += 1;
                reg.by_path
                    .insert(Arc::from(st.path), Entry { id, ty, forwards });
                ids.push(id);
            }
        }
        if !streams.is_empty() {
            rx.recv().map_err(|_| StorageError::Closed)??;
        }
        let mut batch = sled::Batch::default();
        let mut rbatch = sled::Batch::default();
        for ((st, (_, plan)), id) in streams.iter().zip(&plans).zip(&ids) {
            for (first, ml, whole) in plan {
                let loc = inner.files.append(whole)?;
                batch.insert(&chunk_key(*id, *first)[..], &index_value(loc, *ml)[..]);
            }
            for (day, d) in &st.days {
                rbatch.insert(&rollup_key(*id, *day)[..], *d);
            }
        }
        inner.files.sync()?;
        inner.commit_index(&batch, &rbatch)?;
        for id in ids {
            let mut sh = inner.shards[shard_of_id(id)].lock();
            if let Some(st) = sh.streams.get_mut(&id) {
                inner.recompute_tail(st)?;
                inner.rebuild_open_days(st)?;
            }
        }
        Ok(())
    }

    /// The lowest position a feed consumer (the alarm evaluator, a monitor) has checkpointed,
    /// `None` when no consumer holds the log: everything up to it was taken by all of them.
    pub fn feed_min_hold(&self) -> Option<u64> {
        self.inner.feed.min_hold()
    }

    /// Makes everything written so far durable (the restored chunks' index among it).
    pub fn flush(&self) -> Result<()> {
        self.inner.db.flush()?;
        Ok(())
    }
}
