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
    // Each stream's points in chunks of `chunk`, as the store seals them.
    let sealed: Vec<Series> = series
        .iter()
        .flat_map(|s| {
            s.chunks(chunk).enumerate().map(|(j, c)| {
                let mut ser = Series::new(ValueKind::Float);
                ser.ts = (0..c.len())
                    .map(|k| t0 + ((j * chunk + k) as i64) * 1000)
                    .collect();
                ser.values = Values::Float(c.to_vec());
                ser.server.push((0, t0));
                ser
            })
        })
        .collect();
    type Edit = fn(&mut Bucket);
    let variants: [(&str, Option<Edit>); 6] = [
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
    ];
    let n = (meters * 12 * secs) as f64;
    let mut per_channel = [0usize; 12];
    let chunks_per_stream = secs.div_ceil(chunk);
    for (name, edit) in &variants {
        let mut bytes = 0usize;
        for (i, ser) in sealed.iter().enumerate() {
            let mut mins = summarize_series(ser, MINUTE);
            if let Some(e) = edit {
                mins.iter_mut().for_each(e);
            }
            let b = encode(&mins, MINUTE).len();
            bytes += b;
            if edit.is_none() {
                per_channel[(i / chunks_per_stream) % 12] += b;
            }
        }
        println!("{name:36} {:.4} B/pt", bytes as f64 / n);
    }
    for (c, b) in per_channel.iter().enumerate() {
        println!("   {:16} {:.4} B/pt", CHANNELS[c].0, *b as f64 / (n / 12.0));
    }
    // What a 1-minute rollup of sealed data costs without stored minute summaries: decoding the
    // chunks and summarizing their points per minute.
    let chunks: Vec<Vec<u8>> = sealed
        .iter()
        .map(|s| meterstream_storage::codec::encode(s).unwrap())
        .collect();
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
