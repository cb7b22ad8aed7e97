//! Stored rollup buckets: [`Summary`]s of the points in the cells of a fixed UTC grid
//! (1 minute or 15 minutes), and their compact encoding.
//!
//! A bucket list is a list of `(cell start, summary)` in ascending order, one per non-empty cell.
//! Cells are UTC-aligned: `start % grid == 0`. Every rollup boundary of today's zones lies on the
//! 15-minute grid (`docs/rollups.md`), so an interval is the merge of the cells it covers.
//!
//! Encoding (integers are LEB128 varints, `z` = zigzag first; `ints` is a column of n integers
//! in the smallest of four forms: one value for all, n zvarints, the zigzagged values bit packed
//! at the width of the largest, or their distances from the smallest packed the same way, see
//! `codec::put_ints`):
//!
//! ```text
//! u8      format (4)
//! varint  n (≥ 1)
//! zvarint first start / grid;  ints of n-1 start deltas / grid
//! ints    count
//! ints    (first_ts - start) minus the previous bucket's      -- 0 for regular series
//! ints    (last_ts - first_ts) minus the previous bucket's
//! u8 0, u8 e   values are decimals: integers at 10^e
//!     ints first - previous bucket's last;  ints last - first
//!     ints first - min;  ints max - first
//!     u8 0, ints sum - count × first   (the exact decimal sum)  | u8 1, column
//!     column increase
//! | u8 1  columns sum, min, max, first, last, increase
//! u8 1, ints Σ(x - first)² at 10^2e   (m2 = that - (sum - count × first)² / count, exact;
//!                                       when the sums are exact and this is shorter)
//! | u8 0, n × f32 m2                                                 -- 7 significant digits
//! column: u8 e (0..=9), ints of the deltas of round(x · 10^e)  -- when that gives x back
//!       | u8 255, n × 8-byte LE bits
//! ```
//! Formats 2 and 3 (still read) have no m2 tag (always floats); format 2 has every `ints` as
//! plain varints (zigzag for signed columns). On the standard workload format 3 took 0.263 bytes
//! per summarized point against format 2's 0.317 (the count and offset columns of regular
//! series become one value each); format 4's exact m2 saves about 0.02 more.
//!
//! `mean` is not stored: it is `sum / count` on decoding. On decimal meter data every value is a
//! small difference from a neighbour in time; `sum` and `increase` are snapped to the values'
//! decimal resolution (what exact decimal sums give) when that moves them by less than 1e-9
//! relative. `m2` keeps 7 significant digits: standard deviations to about 1e-7 relative.

use crate::codec::{decimal_exponent, put_ints, put_varint, put_zvarint, Reader};
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

/// Adds `more` to the ascending list `into`: a cell in both is combined in the time order of
/// its points ([`Summary::combine`]), a new cell is inserted in place.
pub fn combine_into(into: &mut Vec<Bucket>, more: &[Bucket]) {
    for (start, s) in more {
        match into.binary_search_by_key(start, |b| b.0) {
            Ok(k) => into[k].1 = into[k].1.combine(s),
            Err(k) => into.insert(k, (*start, *s)),
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
            let deltas: Vec<i64> = col
                .iter()
                .map(|x| {
                    let i = (x * scale).round() as i64;
                    let d = i.wrapping_sub(prev);
                    prev = i;
                    d
                })
                .collect();
            put_ints(out, &deltas);
        }
        None => {
            out.push(255);
            for x in col {
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
        }
    }
}

fn read_column(r: &mut Reader<'_>, n: usize, format: u8) -> Result<Vec<f64>> {
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
            for d in read_ints(r, n, format, true)? {
                prev = prev.wrapping_add(d);
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

const FORMAT: u8 = 4;

/// `n` integers of a column: format 3 writes them with `put_ints` (constant, varints or bit
/// packed, whichever is smallest); format 2 wrote plain varints (zigzagged when `signed`).
fn read_ints(r: &mut Reader<'_>, n: usize, format: u8, signed: bool) -> Result<Vec<i64>> {
    if format >= 3 {
        return r.ints(n);
    }
    (0..n)
        .map(|_| {
            if signed {
                r.zvarint()
            } else {
                r.varint().map(|v| v as i64)
            }
        })
        .collect()
}

/// The integer that `x` is at `scale` (a power of ten), when `x` is that integer over `scale`
/// within `tol` relative (0 for exactly, bit for bit).
fn scaled(x: f64, scale: f64, tol: f64) -> Option<i64> {
    let n = (x * scale).round();
    if !n.is_finite() || n.abs() >= 9.007_199_254_740_992e15 {
        return None;
    }
    let back = (n as i64) as f64 / scale;
    if tol == 0.0 {
        (back.to_bits() == x.to_bits()).then_some(n as i64)
    } else {
        ((back - x).abs() <= tol * x.abs().max(1.0)).then_some(n as i64)
    }
}

/// Encodes a non-empty bucket list on `grid`.
pub fn encode(buckets: &[Bucket], grid: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + buckets.len() * 12);
    out.push(FORMAT);
    put_varint(&mut out, buckets.len() as u64);
    let Some(first) = buckets.first() else {
        return out;
    };
    put_zvarint(&mut out, first.0 / grid);
    let ints = |f: &dyn Fn(usize) -> i64| (0..buckets.len()).map(f).collect::<Vec<i64>>();
    put_ints(
        &mut out,
        &ints(&|i| match i {
            0 => 0,
            _ => (buckets[i].0 - buckets[i - 1].0) / grid,
        })[1..],
    );
    put_ints(&mut out, &ints(&|i| buckets[i].1.count as i64));
    // Offsets of the first and last points: deltas from the previous bucket's (0 for regular
    // series).
    let first_off = |i: usize| buckets[i].1.first_ts - buckets[i].0;
    let span = |i: usize| buckets[i].1.last_ts - buckets[i].1.first_ts;
    let prev_or_0 = |f: &dyn Fn(usize) -> i64, i: usize| if i == 0 { 0 } else { f(i - 1) };
    put_ints(
        &mut out,
        &ints(&|i| first_off(i).wrapping_sub(prev_or_0(&first_off, i))),
    );
    put_ints(
        &mut out,
        &ints(&|i| span(i).wrapping_sub(prev_or_0(&span, i))),
    );
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
    // The exact decimal sums' distances from count × first, and the scale, when stored so.
    let mut exact: Option<(Vec<i64>, f64)> = None;
    match e {
        Some(e) => {
            // Decimal values: integers at 10^e, each from its neighbour in time. first from the
            // previous bucket's last, last from first, min and max from first (never negative).
            out.push(0);
            out.push(e);
            let scale = 10f64.powi(e as i32);
            let int = |x: f64| scaled(x, scale, 0.0).unwrap_or(0);
            let v = |i: usize| &buckets[i].1;
            put_ints(
                &mut out,
                &ints(&|i| {
                    let prev_last = if i == 0 { 0 } else { int(v(i - 1).last) };
                    int(v(i).first).wrapping_sub(prev_last)
                }),
            );
            put_ints(
                &mut out,
                &ints(&|i| int(v(i).last).wrapping_sub(int(v(i).first))),
            );
            put_ints(
                &mut out,
                &ints(&|i| int(v(i).first).wrapping_sub(int(v(i).min))),
            );
            put_ints(
                &mut out,
                &ints(&|i| int(v(i).max).wrapping_sub(int(v(i).first))),
            );
            // sum as the exact decimal sum: its distance from count x first.
            let sums: Option<Vec<i64>> = buckets
                .iter()
                .map(|(_, s)| {
                    let v = scaled(s.sum, scale, 1e-9)?;
                    let d = v as i128 - s.count as i128 * int(s.first) as i128;
                    i64::try_from(d).ok()
                })
                .collect();
            match &sums {
                Some(d) => {
                    out.push(0);
                    put_ints(&mut out, d);
                }
                None => {
                    out.push(1);
                    put_column(&mut out, &col(|s| s.sum), Some(e));
                }
            }
            put_column(&mut out, &col(|s| s.increase), Some(e));
            exact = sums.map(|d| (d, scale));
        }
        None => {
            out.push(1);
            put_column(&mut out, &col(|s| s.sum), None);
            put_column(&mut out, &min, None);
            put_column(&mut out, &max, None);
            put_column(&mut out, &first_v, None);
            put_column(&mut out, &last_v, None);
            put_column(&mut out, &col(|s| s.increase), None);
        }
    }
    // m2: as the exact sum of squared distances from first at the values' resolution when that
    // is shorter (it is for most meter channels), else as 4-byte floats (7 digits).
    let squares = exact.and_then(|(d, scale)| exact_squares(buckets, &d, scale));
    match squares {
        Some(s2) => {
            out.push(1);
            put_ints(&mut out, &s2);
        }
        None => {
            out.push(0);
            for (_, s) in buckets {
                out.extend_from_slice(&(s.m2 as f32).to_le_bytes());
            }
        }
    }
    out
}

/// `m2` from the exact sum of squared distances from first (`s2`) and the exact sum of distances
/// (`d`), both integers at `scale`: `m2 = (s2 - d²/n) / scale²`.
fn m2_of(s2: i64, d: i64, n: u64, scale: f64) -> f64 {
    let d2 = (d as i128 * d as i128) as f64 / n as f64;
    (s2 as f64 - d2) / (scale * scale)
}

/// The `s2` column when every bucket's `m2` is such a sum to within 1e-9 (the Welford `m2` is an
/// approximation of it) and the column packs smaller than 4-byte floats.
fn exact_squares(buckets: &[Bucket], d: &[i64], scale: f64) -> Option<Vec<i64>> {
    let s2: Vec<i64> = buckets
        .iter()
        .zip(d)
        .map(|((_, s), d)| {
            let d2 = (*d as i128 * *d as i128) as f64 / s.count as f64;
            let v = (s.m2 * scale * scale + d2).round();
            if !(0.0..9.0e15).contains(&v) {
                return None;
            }
            let back = m2_of(v as i64, *d, s.count, scale);
            ((back - s.m2).abs() <= 1e-9 * s.m2.abs()).then_some(v as i64)
        })
        .collect::<Option<_>>()?;
    let mut packed = Vec::new();
    put_ints(&mut packed, &s2);
    (packed.len() < 4 * buckets.len()).then_some(s2)
}

/// Decodes what [`encode`] wrote with the same `grid`.
pub fn decode(buf: &[u8], grid: i64) -> Result<Vec<Bucket>> {
    let mut r = Reader::new(buf, "rollup buckets");
    let bad = |m: &str| StorageError::corrupt("rollup buckets", m.to_string());
    let format = r.u8()?;
    if !(2..=FORMAT).contains(&format) {
        return Err(bad("unknown format"));
    }
    let n = r.len(1 << 24)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut starts = Vec::with_capacity(n);
    let mut t = r.zvarint()?.wrapping_mul(grid);
    starts.push(t);
    for d in read_ints(&mut r, n - 1, format, false)? {
        t = t.wrapping_add(d.wrapping_mul(grid));
        starts.push(t);
    }
    let counts: Vec<u64> = read_ints(&mut r, n, format, false)?
        .into_iter()
        .map(|c| c as u64)
        .collect();
    let mut firsts = Vec::with_capacity(n);
    let mut prev = 0i64;
    for (s, d) in starts.iter().zip(read_ints(&mut r, n, format, true)?) {
        prev = prev.wrapping_add(d);
        firsts.push(s.wrapping_add(prev));
    }
    let mut lasts = Vec::with_capacity(n);
    prev = 0;
    for (f, d) in firsts.iter().zip(read_ints(&mut r, n, format, true)?) {
        prev = prev.wrapping_add(d);
        lasts.push(f.wrapping_add(prev));
    }
    let mut exact: Option<(Vec<i64>, f64)> = None;
    let (sum, min, max, first, last, increase) = match r.u8()? {
        0 => {
            let e = r.u8()?;
            if e > 9 {
                return Err(bad("decimal exponent out of range"));
            }
            let scale = 10f64.powi(e as i32);
            // first from the previous bucket's last, last from first: rebuilt in order.
            let first_d = read_ints(&mut r, n, format, true)?;
            let last_d = read_ints(&mut r, n, format, true)?;
            let mut fi = Vec::with_capacity(n);
            let mut li = Vec::with_capacity(n);
            let mut prev_last = 0i64;
            for i in 0..n {
                let f = prev_last.wrapping_add(first_d[i]);
                let l = f.wrapping_add(last_d[i]);
                fi.push(f);
                li.push(l);
                prev_last = l;
            }
            let mn: Vec<i64> = fi
                .iter()
                .zip(read_ints(&mut r, n, format, true)?)
                .map(|(f, d)| f.wrapping_sub(d))
                .collect();
            let mx: Vec<i64> = fi
                .iter()
                .zip(read_ints(&mut r, n, format, true)?)
                .map(|(f, d)| f.wrapping_add(d))
                .collect();
            let to_f = |v: &[i64]| v.iter().map(|x| *x as f64 / scale).collect::<Vec<f64>>();
            let sum = match r.u8()? {
                0 => {
                    let d = read_ints(&mut r, n, format, true)?;
                    let sum = d
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            let v = *d as i128 + counts[i] as i128 * fi[i] as i128;
                            v as f64 / scale
                        })
                        .collect();
                    exact = Some((d, scale));
                    sum
                }
                1 => read_column(&mut r, n, format)?,
                _ => return Err(bad("unknown sum coding")),
            };
            let increase = read_column(&mut r, n, format)?;
            (sum, to_f(&mn), to_f(&mx), to_f(&fi), to_f(&li), increase)
        }
        1 => (
            read_column(&mut r, n, format)?,
            read_column(&mut r, n, format)?,
            read_column(&mut r, n, format)?,
            read_column(&mut r, n, format)?,
            read_column(&mut r, n, format)?,
            read_column(&mut r, n, format)?,
        ),
        _ => return Err(bad("unknown value coding")),
    };
    // Format 4 tags the m2 column; earlier formats always wrote 4-byte floats.
    let m2_form = if format >= 4 { r.u8()? } else { 0 };
    let mut m2 = Vec::with_capacity(n);
    match (m2_form, &exact) {
        (0, _) => {
            for _ in 0..n {
                m2.push(f32::from_le_bytes(r.fixed::<4>()?) as f64);
            }
        }
        (1, Some((d, scale))) => {
            for (i, s2) in r.ints(n)?.into_iter().enumerate() {
                m2.push(m2_of(s2, d[i], counts[i].max(1), *scale));
            }
        }
        _ => return Err(bad("unknown m2 coding")),
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if counts[i] == 0 {
            return Err(bad("empty bucket"));
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

/// Asserts that `b` is `a` as stored: counts, times, extremes and first/last exact, `sum` to
/// 1e-9 and `m2` to 1e-6 relative (it is kept as a 4-byte float).
#[cfg(test)]
pub(crate) fn assert_stored_as(a: &Summary, b: &Summary) {
    assert_eq!(
        (a.count, a.first_ts, a.last_ts),
        (b.count, b.first_ts, b.last_ts)
    );
    assert_eq!(
        (a.min, a.max, a.first, a.last),
        (b.min, b.max, b.first, b.last)
    );
    assert!(
        (a.sum - b.sum).abs() <= 1e-9 * a.sum.abs().max(1.0),
        "{a:?} {b:?}"
    );
    assert!(
        (a.m2 - b.m2).abs() <= 1e-6 * a.m2.abs().max(1e-12),
        "{a:?} {b:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minute summaries written by format 2 (before integer columns were packed) still read:
    /// bytes from the format-2 encoder for the points below, with and without a value that
    /// forces the plain-float columns.
    #[test]
    fn format_2_still_decodes() {
        let pts: Vec<(i64, f64)> = (0..200)
            .map(|i| {
                (
                    1_700_000_000_000 + i * 1000 + (i % 7),
                    230.0 + ((i * 13) % 17) as f64 / 100.0,
                )
            })
            .chain([(1_700_000_300_000, 1e300)])
            .collect();
        let v2_all: &[u8] = &[
            2, 5, 170, 212, 130, 27, 1, 1, 1, 2, 40, 60, 60, 40, 1, 192, 184, 2, 181, 184, 2, 5, 8,
            180, 184, 2, 184, 225, 4, 176, 184, 2, 14, 203, 184, 2, 169, 225, 4, 1, 255, 184, 30,
            133, 235, 145, 249, 193, 64, 53, 51, 51, 51, 115, 246, 202, 64, 144, 194, 245, 40, 92,
            246, 202, 64, 175, 71, 225, 122, 148, 249, 193, 64, 156, 117, 0, 136, 60, 228, 55, 126,
            255, 0, 0, 0, 0, 0, 192, 108, 64, 0, 0, 0, 0, 0, 192, 108, 64, 0, 0, 0, 0, 0, 192, 108,
            64, 0, 0, 0, 0, 0, 192, 108, 64, 156, 117, 0, 136, 60, 228, 55, 126, 255, 133, 235, 81,
            184, 30, 197, 108, 64, 133, 235, 81, 184, 30, 197, 108, 64, 133, 235, 81, 184, 30, 197,
            108, 64, 133, 235, 81, 184, 30, 197, 108, 64, 156, 117, 0, 136, 60, 228, 55, 126, 255,
            0, 0, 0, 0, 0, 192, 108, 64, 51, 51, 51, 51, 51, 195, 108, 64, 195, 245, 40, 92, 143,
            194, 108, 64, 82, 184, 30, 133, 235, 193, 108, 64, 156, 117, 0, 136, 60, 228, 55, 126,
            255, 20, 174, 71, 225, 122, 196, 108, 64, 164, 112, 61, 10, 215, 195, 108, 64, 51, 51,
            51, 51, 51, 195, 108, 64, 41, 92, 143, 194, 245, 192, 108, 64, 156, 117, 0, 136, 60,
            228, 55, 126, 255, 246, 40, 92, 143, 2, 17, 186, 64, 93, 143, 194, 245, 72, 57, 196,
            64, 155, 153, 153, 153, 57, 57, 196, 64, 43, 92, 143, 194, 245, 246, 186, 64, 0, 0, 0,
            0, 0, 0, 0, 0, 157, 157, 204, 61, 85, 119, 18, 62, 52, 30, 18, 62, 26, 110, 192, 61, 0,
            0, 0, 0,
        ];
        let v2_decimal: &[u8] = &[
            2, 4, 170, 212, 130, 27, 1, 1, 1, 40, 60, 60, 40, 192, 184, 2, 181, 184, 2, 5, 8, 184,
            225, 4, 176, 184, 2, 14, 203, 184, 2, 0, 2, 176, 231, 2, 7, 7, 7, 28, 4, 4, 5, 0, 20,
            16, 12, 32, 12, 16, 20, 0, 244, 4, 219, 1, 15, 152, 1, 2, 202, 186, 81, 184, 248, 44,
            23, 249, 144, 42, 157, 157, 204, 61, 85, 119, 18, 62, 52, 30, 18, 62, 26, 110, 192, 61,
        ];
        for (bytes, n) in [(v2_all, 201), (v2_decimal, 200)] {
            let want = summarize(pts[..n].iter().copied(), MINUTE);
            let got = decode(bytes, MINUTE).unwrap();
            assert_eq!(got.len(), want.len());
            for ((s0, a), (s1, b)) in want.iter().zip(&got) {
                assert_eq!(s0, s1);
                assert_stored_as(a, b);
            }
            // The current format says the same (in more bytes here: a column tag costs a byte,
            // which a chunk's ~34 minutes repay, but not these four), and on decimal values
            // keeps m2 exact rather than to 7 digits.
            let now = encode(&want, MINUTE);
            assert_eq!(now[0], FORMAT);
            let back = decode(&now, MINUTE).unwrap();
            for ((s0, a), (s1, b)) in want.iter().zip(&back) {
                assert_eq!(s0, s1);
                assert_stored_as(a, b);
                if n == 200 {
                    assert!((a.m2 - b.m2).abs() <= 1e-9 * a.m2, "{a:?} {b:?}");
                }
            }
        }
    }

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
            assert_stored_as(a, b);
        }
        // Compact: well under 1 byte per point of 1-second data; the count and offset columns
        // of a regular series are one value each (2 bytes: tag and value).
        let bytes = encode(&mins, MINUTE);
        assert!(bytes.len() < 3000 / 2);
        assert_eq!(bytes[0], FORMAT);
        // Decimal values: m2 is kept exact (the sum of squares at the values' resolution).
        for ((_, a), (_, b)) in mins.iter().zip(&back) {
            assert!(
                (a.m2 - b.m2).abs() <= 1e-9 * a.m2.max(1e-300),
                "{a:?} {b:?}"
            );
        }
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

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_points_round_trip(
            pts in proptest::collection::btree_map(0i64..10_000_000, proptest::prop_oneof![
                (-1_000_000i64..1_000_000).prop_map(|x| x as f64 / 100.0),
                proptest::num::f64::ANY,
                (-5i64..5).prop_map(|x| x as f64 * 1e300),
            ], 1..400),
            grid in proptest::prop_oneof![proptest::strategy::Just(MINUTE), proptest::strategy::Just(QUARTER)],
        ) {
            let b = summarize(pts.iter().map(|(t, v)| (*t, *v)), grid);
            let back = decode(&encode(&b, grid), grid).unwrap();
            prop_assert_eq!(back.len(), b.len());
            let same = |x: f64, y: f64| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
            let near = |x: f64, y: f64| same(x, y) || (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1e-9);
            for ((s0, a), (s1, c)) in b.iter().zip(&back) {
                prop_assert_eq!(s0, s1);
                prop_assert_eq!((a.count, a.first_ts, a.last_ts), (c.count, c.first_ts, c.last_ts));
                prop_assert!(same(a.min, c.min) && same(a.max, c.max), "{:?} {:?}", a, c);
                prop_assert!(same(a.first, c.first) && same(a.last, c.last), "{:?} {:?}", a, c);
                prop_assert!(near(a.sum, c.sum) && near(a.increase, c.increase), "{:?} {:?}", a, c);
                prop_assert!(near(a.m2, c.m2) || !a.m2.is_finite() || a.m2 > f32::MAX as f64, "{:?} {:?}", a, c);
            }
        }
    }
}
