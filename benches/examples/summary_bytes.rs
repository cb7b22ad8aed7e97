//! Where the bytes of stored minute summaries go, column by column, on the standard workload:
//! each column's share is the saving of encoding the summaries with that column made constant.
//! `cargo run --release -p meterstream-bench --example summary_bytes`
#![allow(clippy::unwrap_used)] // a measuring script: any failure should stop it loudly
use meterstream_bench::workload::{Fleet, CHANNELS};
use meterstream_storage::buckets::{encode, summarize_series, Bucket, MINUTE};
use meterstream_storage::series::{Series, Values};
use meterstream_storage::value::ValueKind;

fn main() {
    let (meters, secs, chunk) = (100, 3600, 2048);
    let mut fleet = Fleet::new(meters, 10, 7);
    let mut series: Vec<Vec<f64>> = vec![Vec::with_capacity(secs); meters * 12];
    let t0 = 1_700_000_000_000i64;
    for s in 0..secs {
        fleet.second(t0 + s as i64 * 1000, |m, v| {
            for c in 0..12 {
                series[m * 12 + c].push(v[c]);
            }
        });
    }
    type Edit = fn(&mut Bucket);
    let variants: [(&str, Option<Edit>); 7] = [
        ("all columns", None),
        ("without increase", Some(|b| b.1.increase = 0.0)),
        ("without m2", Some(|b| b.1.m2 = 0.0)),
        (
            "without sum (sum = count x first)",
            Some(|b| b.1.sum = b.1.count as f64 * b.1.first),
        ),
        (
            "without min/max (= first)",
            Some(|b| {
                b.1.min = b.1.first;
                b.1.max = b.1.first
            }),
        ),
        ("without last (= first)", Some(|b| b.1.last = b.1.first)),
        ("without first (= previous last)", None),
    ];
    let n = (meters * 12 * secs) as f64;
    let mut per_channel = [0usize; 12];
    for (name, edit) in variants.iter().take(6) {
        let mut bytes = 0usize;
        for (i, s) in series.iter().enumerate() {
            for (j, c) in s.chunks(chunk).enumerate() {
                let mut ser = Series::new(ValueKind::Float);
                for (k, v) in c.iter().enumerate() {
                    ser.ts.push(t0 + ((j * chunk + k) as i64) * 1000);
                    if let Values::Float(f) = &mut ser.values {
                        f.push(*v);
                    }
                }
                let mut mins = summarize_series(&ser, MINUTE);
                if let Some(e) = edit {
                    mins.iter_mut().for_each(e);
                }
                let b = encode(&mins, MINUTE).len();
                bytes += b;
                if edit.is_none() {
                    per_channel[i % 12] += b;
                }
            }
        }
        println!("{name:36} {:.4} B/pt", bytes as f64 / n);
    }
    for (c, b) in per_channel.iter().enumerate() {
        println!("   {:16} {:.4} B/pt", CHANNELS[c].0, *b as f64 / (n / 12.0));
    }
    // What a 1-minute rollup of sealed data costs without stored minute summaries: decoding the
    // chunks and summarizing their points per minute.
    let mut chunks = Vec::new();
    for s in &series {
        for (j, c) in s.chunks(chunk).enumerate() {
            let mut ser = Series::new(ValueKind::Float);
            for (k, v) in c.iter().enumerate() {
                ser.ts.push(t0 + ((j * chunk + k) as i64) * 1000);
                if let Values::Float(f) = &mut ser.values {
                    f.push(*v);
                }
            }
            ser.server.push((0, t0));
            chunks.push(meterstream_storage::codec::encode(&ser).unwrap());
        }
    }
    let t = std::time::Instant::now();
    let decoded: Vec<Series> = chunks
        .iter()
        .map(|b| meterstream_storage::codec::decode(b).unwrap())
        .collect();
    let dec = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let mut buckets = 0usize;
    for s in &decoded {
        buckets += summarize_series(s, MINUTE).len();
    }
    let sum = t.elapsed().as_secs_f64();
    println!(
        "decode {:.1} ns/pt, summarize per minute {:.1} ns/pt ({buckets} minutes)",
        dec * 1e9 / n,
        sum * 1e9 / n
    );
}
