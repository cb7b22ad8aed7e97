//! Stored rollup buckets: [`Summary`]s of the points in the cells of a fixed UTC grid
//! (1 minute or 15 minutes), and their compact encoding.
//!
//! A bucket list is a list of `(cell start, summary)` in ascending order, one per non-empty cell.
//! Cells are UTC-aligned: `start % grid == 0`. Every rollup boundary of today's zones lies on the
//! 15-minute grid (`docs/rollups.md`), so an interval is the merge of the cells it covers.
//!
//! Encoding (integers are LEB128 varints, `z` = zigzag first):
//!
//! ```text
//! varint  n (≥ 1)
//! zvarint first start / grid
//! n-1 × varint   start delta / grid
//! n × varint     count
//! n × varint     first_ts - start
//! n × varint     last_ts - first_ts
//! 7 × column     sum, min, max, first, last, increase, m2
//! column: u8 e (0..=9), n × zvarint delta of round(x · 10^e)  -- when that gives x back
//!       | u8 255, n × 8-byte LE bits
//! ```
//!
//! `mean` is not stored: it is `sum / count` on decoding. `sum` and `increase` are snapped to the
//! decimal resolution of the values themselves (what an exact decimal sum would give) when that
//! moves them by less than 1e-9 relative, so on decimal meter data every column but `m2` is
//! small integer deltas.

use crate::codec::{decimal_exponent, put_varint, put_zvarint, Reader};
use crate::error::{Result, StorageError};
use crate::rollup::Summary;
use crate::series::{Series, Values};

/// One minute, ms.
pub const MINUTE: i64 = 60_000;
/// Fifteen minutes, ms.
pub const QUARTER: i64 = 900_000;
/// One UTC day, ms.
pub const DAY: i64 = 86_400_000;

/// A grid cell's start and the summary of its points.
pub type Bucket = (i64, Summary);

/// `t` rounded down to the grid.
pub fn floor(t: i64, grid: i64) -> i64 {
    t - t.rem_euclid(grid)
}

/// `t` rounded up to the grid.
pub fn ceil(t: i64, grid: i64) -> i64 {
    let f = floor(t, grid);
    if f == t {
        t
    } else {
        f.saturating_add(grid)
    }
}

/// Summaries per cell of points given in time order.
pub fn summarize(points: impl IntoIterator<Item = (i64, f64)>, grid: i64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    let mut end = i64::MIN;
    for (t, v) in points {
        match out.last_mut() {
            Some((_, s)) if t < end => s.push(t, v),
            _ => {
                let start = floor(t, grid);
                end = start.saturating_add(grid);
                out.push((start, Summary::of(t, v)));
            }
        }
    }
    out
}

/// Summaries per cell of a numeric series (none for text and binary ones).
pub fn summarize_series(s: &Series, grid: i64) -> Vec<Bucket> {
    match &s.values {
        Values::Float(v) => summarize(s.ts.iter().copied().zip(v.iter().copied()), grid),
        Values::Int(v) => summarize(s.ts.iter().copied().zip(v.iter().map(|x| *x as f64)), grid),
        Values::Text(_) | Values::Bytes(_) => Vec::new(),
    }
}

/// Merges buckets (ascending, each within one coarser cell) into cells of the coarser `grid`.
pub fn regrid(buckets: impl IntoIterator<Item = Bucket>, grid: i64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for (start, s) in buckets {
        let cell = floor(start, grid);
        match out.last_mut() {
            Some((c, acc)) if *c == cell => *acc = acc.merge(&s),
            _ => out.push((cell, s)),
        }
    }
    out
}

/// Appends `later` to `into`; every point of `later` is newer than every point of `into`, so a
/// cell in both is merged.
pub fn merge_later(into: &mut Vec<Bucket>, later: &[Bucket]) {
    for (start, s) in later {
        match into.last_mut() {
            Some((c, acc)) if c == start => *acc = acc.merge(s),
            _ => into.push((*start, *s)),
        }
    }
}

fn put_column(out: &mut Vec<u8>, col: &[f64], snap_to: Option<u8>) {
    let snapped: Vec<f64>;
    let col = match snap_to {
        Some(e) => {
            let scale = 10f64.powi(e as i32);
            snapped = col
                .iter()
                .map(|x| {
                    let y = (x * scale).round() / scale;
                    if (y - x).abs() <= 1e-9 * x.abs().max(1.0) {
                        y
                    } else {
                        *x
                    }
                })
                .collect();
            &snapped[..]
        }
        None => col,
    };
    match decimal_exponent(col) {
        Some(e) => {
            out.push(e);
            let scale = 10f64.powi(e as i32);
            let mut prev = 0i64;
            for x in col {
                let i = (x * scale).round() as i64;
                put_zvarint(out, i.wrapping_sub(prev));
                prev = i;
            }
        }
        None => {
            out.push(255);
            for x in col {
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
        }
    }
}

fn read_column(r: &mut Reader<'_>, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    match r.u8()? {
        255 => {
            for _ in 0..n {
                out.push(f64::from_bits(u64::from_le_bytes(r.fixed::<8>()?)));
            }
        }
        e if e <= 9 => {
            let scale = 10f64.powi(e as i32);
            let mut prev = 0i64;
            for _ in 0..n {
                prev = prev.wrapping_add(r.zvarint()?);
                out.push(prev as f64 / scale);
            }
        }
        e => {
            return Err(StorageError::corrupt(
                "rollup buckets",
                format!("unknown column tag {e}"),
            ))
        }
    }
    Ok(out)
}

/// Encodes a non-empty bucket list on `grid`.
pub fn encode(buckets: &[Bucket], grid: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + buckets.len() * 12);
    put_varint(&mut out, buckets.len() as u64);
    let Some(first) = buckets.first() else {
        return out;
    };
    put_zvarint(&mut out, first.0 / grid);
    for w in buckets.windows(2) {
        put_varint(&mut out, ((w[1].0 - w[0].0) / grid) as u64);
    }
    for (_, s) in buckets {
        put_varint(&mut out, s.count);
    }
    for (start, s) in buckets {
        put_varint(&mut out, (s.first_ts - start) as u64);
    }
    for (_, s) in buckets {
        put_varint(&mut out, (s.last_ts - s.first_ts) as u64);
    }
    let col = |f: fn(&Summary) -> f64| buckets.iter().map(|(_, s)| f(s)).collect::<Vec<f64>>();
    let (min, max, first_v, last_v) = (
        col(|s| s.min),
        col(|s| s.max),
        col(|s| s.first),
        col(|s| s.last),
    );
    let all: Vec<f64> = [&min, &max, &first_v, &last_v]
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    let e = decimal_exponent(&all);
    put_column(&mut out, &col(|s| s.sum), e);
    put_column(&mut out, &min, None);
    put_column(&mut out, &max, None);
    put_column(&mut out, &first_v, None);
    put_column(&mut out, &last_v, None);
    put_column(&mut out, &col(|s| s.increase), e);
    put_column(&mut out, &col(|s| s.m2), None);
    out
}

/// Decodes what [`encode`] wrote with the same `grid`.
pub fn decode(buf: &[u8], grid: i64) -> Result<Vec<Bucket>> {
    let mut r = Reader::new(buf, "rollup buckets");
    let n = r.len(1 << 24)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut starts = Vec::with_capacity(n);
    let mut t = r.zvarint()?.wrapping_mul(grid);
    starts.push(t);
    for _ in 1..n {
        t = t.wrapping_add((r.varint()? as i64).wrapping_mul(grid));
        starts.push(t);
    }
    let mut counts = Vec::with_capacity(n);
    for _ in 0..n {
        counts.push(r.varint()?);
    }
    let mut firsts = Vec::with_capacity(n);
    for s in &starts {
        firsts.push(s.wrapping_add(r.varint()? as i64));
    }
    let mut lasts = Vec::with_capacity(n);
    for f in &firsts {
        lasts.push(f.wrapping_add(r.varint()? as i64));
    }
    let sum = read_column(&mut r, n)?;
    let min = read_column(&mut r, n)?;
    let max = read_column(&mut r, n)?;
    let first = read_column(&mut r, n)?;
    let last = read_column(&mut r, n)?;
    let increase = read_column(&mut r, n)?;
    let m2 = read_column(&mut r, n)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if counts[i] == 0 {
            return Err(StorageError::corrupt("rollup buckets", "empty bucket"));
        }
        out.push((
            starts[i],
            Summary {
                count: counts[i],
                sum: sum[i],
                mean: if counts[i] == 1 {
                    sum[i]
                } else {
                    sum[i] / counts[i] as f64
                },
                m2: m2[i],
                min: min[i],
                max: max[i],
                first_ts: firsts[i],
                first: first[i],
                last_ts: lasts[i],
                last: last[i],
                increase: increase[i],
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_regrid() {
        let pts: Vec<(i64, f64)> = (0..3000)
            .map(|i| (1_700_000_000_000 + i * 1000, 230.0 + (i % 17) as f64 / 10.0))
            .collect();
        let mins = summarize(pts.iter().copied(), MINUTE);
        assert_eq!(mins.len(), 51);
        let back = decode(&encode(&mins, MINUTE), MINUTE).unwrap();
        assert_eq!(back.len(), mins.len());
        for ((s0, a), (s1, b)) in mins.iter().zip(&back) {
            assert_eq!(s0, s1);
            assert_eq!(
                (a.count, a.first_ts, a.last_ts),
                (b.count, b.first_ts, b.last_ts)
            );
            assert_eq!(
                (a.min, a.max, a.first, a.last),
                (b.min, b.max, b.first, b.last)
            );
            assert!((a.sum - b.sum).abs() < 1e-9 * a.sum.abs());
            assert_eq!(a.m2, b.m2);
        }
        // Compact: well under 1 byte per point of 1-second data.
        assert!(encode(&mins, MINUTE).len() < 3000 / 2);
        let quarters = regrid(mins.iter().copied(), QUARTER);
        let direct = summarize(pts.iter().copied(), QUARTER);
        assert_eq!(quarters.len(), direct.len());
        for ((s0, a), (s1, b)) in quarters.iter().zip(&direct) {
            assert_eq!(s0, s1);
            assert_eq!(a.count, b.count);
            assert!((a.m2 - b.m2).abs() <= 1e-9 * b.m2.abs().max(1.0));
        }
    }

    #[test]
    fn awkward_values_survive() {
        let pts = [
            (-5, f64::NAN),
            (7, f64::INFINITY),
            (61_000, -0.0),
            (62_000, 1e300),
        ];
        let b = summarize(pts, MINUTE);
        let back = decode(&encode(&b, MINUTE), MINUTE).unwrap();
        assert_eq!(back[0].0, -60_000);
        assert!(back[0].1.first.is_nan());
        assert_eq!(back[2].1.max.to_bits(), 1e300f64.to_bits());
        assert!(decode(&[3, 1], MINUTE).is_err());
    }
}
