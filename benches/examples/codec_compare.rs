//! Compares value codecs on the standard workload: pco on raw f64 versus pco on decimal-scaled
#![allow(clippy::unwrap_used)] // a measuring script: any failure should stop it loudly
//! integers, at several chunk sizes. `cargo run --release -p meterstream-bench --example codec_compare`
use meterstream_bench::workload::{Fleet, CHANNELS};
use std::time::Instant;

fn main() {
    let meters = 100;
    let secs = 3600;
    let mut fleet = Fleet::new(meters, 10, 7);
    let mut series: Vec<Vec<f64>> = vec![Vec::with_capacity(secs); meters * 12];
    for s in 0..secs {
        fleet.second(1_700_000_000_000 + s as i64 * 1000, |m, v| {
            for c in 0..12 {
                series[m * 12 + c].push(v[c]);
            }
        });
    }
    let ts: Vec<i64> = (0..secs as i64)
        .map(|s| 1_700_000_000_000 + s * 1000)
        .collect();
    let n = (meters * 12 * secs) as f64;
    for chunk in [256usize, 512, 1024, 2048, 3600] {
        for level in [4usize, 8] {
            let t0 = Instant::now();
            let mut bytes_f = 0usize;
            let mut bytes_t = 0usize;
            let mut per_channel = [0usize; 12];
            for (i, s) in series.iter().enumerate() {
                for (j, c) in s.chunks(chunk).enumerate() {
                    let b = pco::standalone::simple_compress(
                        c,
                        &pco::ChunkConfig::default().with_compression_level(level),
                    )
                    .unwrap();
                    bytes_f += b.len();
                    per_channel[i % 12] += b.len();
                    let tc = &ts[j * chunk..j * chunk + c.len()];
                    bytes_t += pco::standalone::simple_compress(
                        tc,
                        &pco::ChunkConfig::default().with_compression_level(level),
                    )
                    .unwrap()
                    .len();
                }
            }
            let el = t0.elapsed();
            println!(
                "pco f64 chunk={chunk} level={level}: values {:.3} B/pt, timestamps {:.3} B/pt, {:.1} Mpts/s compress",
                bytes_f as f64 / n,
                bytes_t as f64 / n,
                n / el.as_secs_f64() / 1e6
            );
            if chunk == 1024 && level == 8 {
                for c in 0..12 {
                    println!(
                        "   {:16} {:.3} B/pt",
                        CHANNELS[c].0,
                        per_channel[c] as f64 / (n / 12.0)
                    );
                }
            }
        }
    }
    // decompression speed
    let comp: Vec<Vec<u8>> = series
        .iter()
        .flat_map(|s| {
            s.chunks(1024)
                .map(|c| {
                    pco::standalone::simple_compress(
                        c,
                        &pco::ChunkConfig::default().with_compression_level(8),
                    )
                    .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let t0 = Instant::now();
    let mut total = 0usize;
    for b in &comp {
        let v: Vec<f64> = pco::standalone::simple_decompress(b).unwrap();
        total += v.len();
    }
    println!(
        "decompress {:.1} Mpts/s",
        total as f64 / t0.elapsed().as_secs_f64() / 1e6
    );
}
