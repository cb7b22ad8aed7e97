//! Measures the open decision of docs/rollups.md on the standard workload (100 meters × 1 hour):
//! how many bytes compact 1-minute summaries cost per raw point, and how fast rolling up from
//! raw chunks at query time is.
//! `cargo run --release -p meterstream-bench --example summary_size`
#![allow(clippy::unwrap_used)] // a measuring script: any failure should stop it loudly

use meterstream_bench::workload::Fleet;
use meterstream_storage::codec::{self, ValueCodec};
use meterstream_storage::rollup::Summary;
use meterstream_storage::series::{Series, Values};
use meterstream_storage::value::{Value, ValueKind};
use std::time::Instant;

/// Encoded size of one f64 column with the decimal-delta codec (as the open heads use it).
fn column_bytes(vals: &[f64]) -> usize {
    let mut s = Series::new(ValueKind::Float);
    for (i, v) in vals.iter().enumerate() {
        s.upsert(i as i64 * 60_000, Value::Float(*v), 0, None);
    }
    codec::encode_with(&s, ValueCodec::Delta).unwrap().len()
}

fn main() {
    let (meters, secs) = (100usize, 3600usize);
    let start = 1_767_225_600_000i64;
    let series = Fleet::new(meters, 10, 7).series(start, secs);
    let points = (meters * 12 * secs) as f64;

    // 1-minute summaries, per stream, as columns.
    let (mut with_m2, mut with_sumsq, mut naive) = (0usize, 0usize, 0usize);
    for s in &series {
        let mins: Vec<Summary> = s
            .chunks(60)
            .map(|c| Summary::of_points(c.iter().copied()).unwrap())
            .collect();
        let col = |f: fn(&Summary) -> f64| column_bytes(&mins.iter().map(f).collect::<Vec<_>>());
        // count, first/last offsets: a byte each for regular data.
        let ints = mins.len() * 3;
        let common = col(|m| m.sum)
            + col(|m| m.min)
            + col(|m| m.max)
            + col(|m| m.first)
            + col(|m| m.last)
            + col(|m| m.increase)
            + ints;
        with_m2 += common + col(|m| m.m2);
        with_sumsq += common + col(|m| m.m2 + m.sum * m.sum / m.count as f64);
        naive += mins.len() * (8 * 9 + 8 * 2);
    }
    println!("1-minute summaries per raw point: compact with m2 {:.3} B, compact with sum of squares {:.3} B, naive {:.3} B",
        with_m2 as f64 / points, with_sumsq as f64 / points, naive as f64 / points);

    // Which columns cost what.
    let names = ["sum", "min", "max", "first", "last", "increase", "m2"];
    let getters: [fn(&Summary) -> f64; 7] = [
        |m| m.sum,
        |m| m.min,
        |m| m.max,
        |m| m.first,
        |m| m.last,
        |m| m.increase,
        |m| m.m2,
    ];
    let mut per = [0usize; 7];
    for s in &series {
        let mins: Vec<Summary> = s
            .chunks(60)
            .map(|c| Summary::of_points(c.iter().copied()).unwrap())
            .collect();
        for (k, g) in getters.iter().enumerate() {
            per[k] += column_bytes(&mins.iter().map(g).collect::<Vec<_>>());
        }
    }
    let parts: Vec<String> = names
        .iter()
        .zip(per)
        .map(|(n, b)| format!("{n} {:.3}", b as f64 / points))
        .collect();
    println!("  by column (B per raw point): {}", parts.join(", "));

    // With sums and increases rounded to the values' decimal resolution (what exact integer
    // accumulation gives) and m2 as a 4-byte float.
    let mut exact = 0usize;
    for (i, s) in series.iter().enumerate() {
        let decimals = meterstream_bench::workload::CHANNELS[i % 12].1 as i32;
        let scale = 10f64.powi(decimals);
        let round = |x: f64| (x * scale).round() / scale;
        let mins: Vec<Summary> = s
            .chunks(60)
            .map(|c| Summary::of_points(c.iter().copied()).unwrap())
            .collect();
        let col = |vals: Vec<f64>| column_bytes(&vals);
        exact += col(mins.iter().map(|m| round(m.sum)).collect())
            + col(mins.iter().map(|m| round(m.increase)).collect())
            + col(mins.iter().map(|m| m.min).collect())
            + col(mins.iter().map(|m| m.max).collect())
            + col(mins.iter().map(|m| m.first).collect())
            + col(mins.iter().map(|m| m.last).collect())
            + mins.len() * 4 // m2 as f32
            + mins.len() * 3;
    }
    println!(
        "1-minute summaries with exact decimal sums and f32 m2: {:.3} B per raw point",
        exact as f64 / points
    );

    // 15-minute summaries for comparison.
    let mut q15 = 0usize;
    for s in &series {
        let q: Vec<Summary> = s
            .chunks(900)
            .map(|c| Summary::of_points(c.iter().copied()).unwrap())
            .collect();
        let col = |f: fn(&Summary) -> f64| column_bytes(&q.iter().map(f).collect::<Vec<_>>());
        q15 += col(|m| m.sum)
            + col(|m| m.min)
            + col(|m| m.max)
            + col(|m| m.first)
            + col(|m| m.last)
            + col(|m| m.increase)
            + col(|m| m.m2)
            + q.len() * 3;
    }
    println!(
        "15-minute summaries per raw point: {:.3} B",
        q15 as f64 / points
    );

    // Query-time alternative: decode pco chunks of 2,048 points and summarize per minute.
    let chunks: Vec<Vec<u8>> = series
        .iter()
        .flat_map(|s| {
            s.chunks(2048)
                .map(|c| {
                    let mut ser = Series::new(ValueKind::Float);
                    for (t, v) in c {
                        ser.upsert(*t, Value::Float(*v), 0, None);
                    }
                    codec::encode(&ser).unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let t0 = Instant::now();
    let mut n = 0usize;
    let mut sink = 0.0;
    for b in &chunks {
        let s = codec::decode(b).unwrap();
        let Values::Float(v) = &s.values else {
            unreachable!()
        };
        let mut cur: Option<(i64, Summary)> = None;
        for (t, x) in s.ts.iter().zip(v) {
            let m = t - t.rem_euclid(60_000);
            match &mut cur {
                Some((cm, sum)) if *cm == m => sum.push(*t, *x),
                _ => {
                    if let Some((_, s)) = cur.take() {
                        sink += s.mean;
                    }
                    cur = Some((m, Summary::of(*t, *x)));
                }
            }
            n += 1;
        }
    }
    let el = t0.elapsed().as_secs_f64();
    println!("decode + summarize at query time: {:.1} M points/s on one core ({:.2} ms per stream-day) [{sink:.0}]",
        n as f64 / el / 1e6, 86_400.0 / (n as f64 / el) * 1e3);
}
