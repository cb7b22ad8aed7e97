//! Encoding the workload as the compact MessagePack batches a gateway sends: each batch holds one
//! gateway's streams over a window of seconds, so each stream's path is sent once per batch.

use crate::workload::{Fleet, UNITS};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Serialize)]
struct Group<'a> {
    stream_id: String,
    stream_type: &'a str,
    stream_units: &'a str,
    points: Vec<(i64, f64)>,
}

#[derive(Serialize)]
struct Body<'a> {
    groups: Vec<Group<'a>>,
}

/// Generates the workload for `seconds` seconds from `start_ms` and returns the encoded batches
/// in sending order (window by window, gateway by gateway), each about `batch_points` points.
pub fn build(
    fleet: &mut Fleet,
    meters_per_gateway: usize,
    start_ms: i64,
    seconds: usize,
    batch_points: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    generate(
        fleet,
        meters_per_gateway,
        start_ms,
        seconds,
        batch_points,
        &mut |b| {
            out.push(b);
            Ok(())
        },
    )
    .map(|()| out)
    .unwrap_or_default()
}

/// [`build`], handing each batch to `emit` as soon as it is encoded, so that memory holds one
/// window of the fleet at a time.
pub fn generate(
    fleet: &mut Fleet,
    meters_per_gateway: usize,
    start_ms: i64,
    seconds: usize,
    batch_points: usize,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let meters = fleet.meters();
    let gateways = meters.div_ceil(meters_per_gateway);
    let per_gw_streams = meters_per_gateway * 12;
    let window = (batch_points / per_gw_streams).max(1);
    let paths: Vec<Vec<String>> = (0..meters)
        .map(|m| (0..12).map(|c| fleet.stream_path(m, c)).collect())
        .collect();
    let mut s = 0;
    while s < seconds {
        let w = window.min(seconds - s);
        // values[m][c] over the window
        let mut vals: Vec<Vec<Vec<(i64, f64)>>> = (0..meters)
            .map(|_| (0..12).map(|_| Vec::with_capacity(w)).collect())
            .collect();
        for k in 0..w {
            let t = start_ms + ((s + k) as i64) * 1000;
            fleet.second(t, |m, v| {
                for c in 0..12 {
                    vals[m][c].push((t, v[c]));
                }
            });
        }
        for g in 0..gateways {
            let mut groups = Vec::with_capacity(per_gw_streams);
            for m in g * meters_per_gateway..((g + 1) * meters_per_gateway).min(meters) {
                for c in 0..12 {
                    groups.push(Group {
                        stream_id: paths[m][c].clone(),
                        stream_type: "DOUBLE",
                        stream_units: UNITS[c],
                        points: std::mem::take(&mut vals[m][c]),
                    });
                }
            }
            // Encoding plain structs of strings and numbers cannot fail.
            emit(rmp_serde::to_vec_named(&Body { groups })?)?;
        }
        s += w;
    }
    Ok(())
}

/// Encoded batches kept in a file instead of memory, so that a benchmark can generate a workload
/// larger than memory before it starts measuring, and send it at full speed from the page cache.
#[derive(Debug)]
pub struct BatchFile {
    file: std::fs::File,
    /// (offset, length) of each batch, in sending order.
    index: Vec<(u64, u32)>,
}

/// Appends batches to a new [`BatchFile`].
#[derive(Debug)]
pub struct BatchFileWriter {
    out: BufWriter<std::fs::File>,
    index: Vec<(u64, u32)>,
    at: u64,
}

impl BatchFileWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<BatchFileWriter> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| path.display().to_string())?;
        Ok(BatchFileWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            index: Vec::new(),
            at: 0,
        })
    }

    /// Appends one batch.
    pub fn push(&mut self, batch: &[u8]) -> Result<()> {
        self.out.write_all(batch)?;
        let len = u32::try_from(batch.len()).context("a batch over 4 GB")?;
        self.index.push((self.at, len));
        self.at += u64::from(len);
        Ok(())
    }

    /// Flushes and opens the batches for reading.
    pub fn finish(self) -> Result<BatchFile> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(BatchFile {
            file,
            index: self.index,
        })
    }
}

impl BatchFile {
    /// Number of batches.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are no batches.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of all batches.
    pub fn bytes(&self) -> u64 {
        self.index.last().map_or(0, |(o, l)| o + u64::from(*l))
    }

    /// Batch `i`, or `None` past the last.
    pub fn get(&self, i: usize) -> Result<Option<Vec<u8>>> {
        let Some(&(offset, len)) = self.index.get(i) else {
            return Ok(None);
        };
        let mut buf = vec![0; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_file_gives_back_what_was_generated_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let want = build(&mut Fleet::new(20, 10, 7), 10, 1_000_000, 30, 1_000);
        assert!(want.len() > 4);
        let mut w = BatchFileWriter::create(&dir.path().join("b")).unwrap();
        generate(
            &mut Fleet::new(20, 10, 7),
            10,
            1_000_000,
            30,
            1_000,
            &mut |b| w.push(&b),
        )
        .unwrap();
        let f = w.finish().unwrap();
        assert_eq!(f.len(), want.len());
        assert_eq!(f.bytes(), want.iter().map(|b| b.len() as u64).sum::<u64>());
        for (i, b) in want.iter().enumerate() {
            assert_eq!(f.get(i).unwrap().as_ref(), Some(b));
        }
        assert_eq!(f.get(want.len()).unwrap(), None);
    }
}
