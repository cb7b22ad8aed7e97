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
//! u8      format (2)
//! varint  n (≥ 1)
//! zvarint first start / grid;  n-1 × varint start delta / grid
//! n × varint   count
//! n × zvarint  (first_ts - start) minus the previous bucket's      -- 0 for regular series
//! n × zvarint  (last_ts - first_ts) minus the previous bucket's
//! u8 0, u8 e   values are decimals: integers at 10^e
//!     n × zvarint first - previous bucket's last;  n × zvarint last - first
//!     n × zvarint first - min;  n × zvarint max - first
//!     u8 0, n × zvarint sum - count × first   (the exact decimal sum)  | u8 1, column
//!     column increase
//! | u8 1  columns sum, min, max, first, last, increase
//! n × f32 m2                                                        -- 7 significant digits
//! column: u8 e (0..=9), n × zvarint delta of round(x · 10^e)  -- when that gives x back
//!       | u8 255, n × 8-byte LE bits
//! ```
//!
//! `mean` is not stored: it is `sum / count` on decoding. On decimal meter data every value is a
//! small difference from a neighbour in time; `sum` and `increase` are snapped to the values'
//! decimal resolution (what exact decimal sums give) when that moves them by less than 1e-9
//! relative. `m2` keeps 7 significant digits: standard deviations to about 1e-7 relative.

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

const FORMAT: u8 = 2;

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
    for w in buckets.windows(2) {
        put_varint(&mut out, ((w[1].0 - w[0].0) / grid) as u64);
    }
    for (_, s) in buckets {
        put_varint(&mut out, s.count);
    }
    // Offsets of the first and last points: deltas from the previous bucket's (0 for regular
    // series).
    let mut prev = 0i64;
    for (start, s) in buckets {
        let o = s.first_ts - start;
        put_zvarint(&mut out, o.wrapping_sub(prev));
        prev = o;
    }
    prev = 0;
    for (_, s) in buckets {
        let o = s.last_ts - s.first_ts;
        put_zvarint(&mut out, o.wrapping_sub(prev));
        prev = o;
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
    match e {
        Some(e) => {
            // Decimal values: integers at 10^e, each from its neighbour in time. first from the
            // previous bucket's last, last from first, min and max from first (never negative).
            out.push(0);
            out.push(e);
            let scale = 10f64.powi(e as i32);
            let int = |x: f64| scaled(x, scale, 0.0).unwrap_or(0);
            let mut prev_last = 0i64;
            for (_, s) in buckets {
                let f = int(s.first);
                put_zvarint(&mut out, f.wrapping_sub(prev_last));
                prev_last = int(s.last);
            }
            for (_, s) in buckets {
                put_zvarint(&mut out, int(s.last).wrapping_sub(int(s.first)));
            }
            for (_, s) in buckets {
                put_zvarint(&mut out, int(s.first).wrapping_sub(int(s.min)));
            }
            for (_, s) in buckets {
                put_zvarint(&mut out, int(s.max).wrapping_sub(int(s.first)));
            }
            // sum as the exact decimal sum: its distance from count x first.
            let sums: Option<Vec<i64>> = buckets
                .iter()
                .map(|(_, s)| {
                    let v = scaled(s.sum, scale, 1e-9)?;
                    let d = v as i128 - s.count as i128 * int(s.first) as i128;
                    i64::try_from(d).ok()
                })
                .collect();
            match sums {
                Some(d) => {
                    out.push(0);
                    for x in d {
                        put_zvarint(&mut out, x);
                    }
                }
                None => {
                    out.push(1);
                    put_column(&mut out, &col(|s| s.sum), Some(e));
                }
            }
            put_column(&mut out, &col(|s| s.increase), Some(e));
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
    // m2 as a 4-byte float: 7 significant digits of the standard deviation.
    for (_, s) in buckets {
        out.extend_from_slice(&(s.m2 as f32).to_le_bytes());
    }
    out
}

/// Decodes what [`encode`] wrote with the same `grid`.
pub fn decode(buf: &[u8], grid: i64) -> Result<Vec<Bucket>> {
    let mut r = Reader::new(buf, "rollup buckets");
    let bad = |m: &str| StorageError::corrupt("rollup buckets", m.to_string());
    if r.u8()? != FORMAT {
        return Err(bad("unknown format"));
    }
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
    let mut prev = 0i64;
    for s in &starts {
        prev = prev.wrapping_add(r.zvarint()?);
        firsts.push(s.wrapping_add(prev));
    }
    let mut lasts = Vec::with_capacity(n);
    prev = 0;
    for f in &firsts {
        prev = prev.wrapping_add(r.zvarint()?);
        lasts.push(f.wrapping_add(prev));
    }
    let (sum, min, max, first, last, increase) = match r.u8()? {
        0 => {
            let e = r.u8()?;
            if e > 9 {
                return Err(bad("decimal exponent out of range"));
            }
            let scale = 10f64.powi(e as i32);
            // first from the previous bucket's last, last from first: rebuilt in order.
            let mut first_d = Vec::with_capacity(n);
            for _ in 0..n {
                first_d.push(r.zvarint()?);
            }
            let mut last_d = Vec::with_capacity(n);
            for _ in 0..n {
                last_d.push(r.zvarint()?);
            }
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
            let mut mn = Vec::with_capacity(n);
            for f in &fi {
                mn.push(f.wrapping_sub(r.zvarint()?));
            }
            let mut mx = Vec::with_capacity(n);
            for f in &fi {
                mx.push(f.wrapping_add(r.zvarint()?));
            }
            let to_f = |v: &[i64]| v.iter().map(|x| *x as f64 / scale).collect::<Vec<f64>>();
            let sum = match r.u8()? {
                0 => {
                    let mut out = Vec::with_capacity(n);
                    for i in 0..n {
                        let d = r.zvarint()? as i128;
                        let v = d + counts[i] as i128 * fi[i] as i128;
                        out.push(v as f64 / scale);
                    }
                    out
                }
                1 => read_column(&mut r, n)?,
                _ => return Err(bad("unknown sum coding")),
            };
            let increase = read_column(&mut r, n)?;
            (sum, to_f(&mn), to_f(&mx), to_f(&fi), to_f(&li), increase)
        }
        1 => (
            read_column(&mut r, n)?,
            read_column(&mut r, n)?,
            read_column(&mut r, n)?,
            read_column(&mut r, n)?,
            read_column(&mut r, n)?,
            read_column(&mut r, n)?,
        ),
        _ => return Err(bad("unknown value coding")),
    };
    let mut m2 = Vec::with_capacity(n);
    for _ in 0..n {
        m2.push(f32::from_le_bytes(r.fixed::<4>()?) as f64);
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
            assert!((a.m2 - b.m2).abs() <= 1e-6 * a.m2.abs().max(1e-12));
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
