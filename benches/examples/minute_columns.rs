//! How many bytes each column of the 1-minute summaries costs on the standard workload (100
//! meters × 2,048 s, one chunk's worth), per channel, by zeroing one field at a time.
//! `cargo run --release -p meterstream-bench --example minute_columns`
#![allow(clippy::unwrap_used)] // a measuring script: any failure should stop it loudly
use meterstream_bench::workload::{Fleet, CHANNELS};
use meterstream_storage::buckets::{self, MINUTE};

fn main() {
    let (meters, secs) = (100usize, 2048usize);
    let start = 1_767_225_600_000i64;
    let series = Fleet::new(meters, 10, 7).series(start, secs);
    type Edit = fn(&mut meterstream_storage::rollup::Summary);
    let edits: [(&str, Edit); 3] = [
        ("all", |_| {}),
        ("increase=0", |s| s.increase = 0.0),
        ("sum=n*first", |s| s.sum = s.count as f64 * s.first),
    ];
    for (name, edit) in edits {
        let mut per_channel = [0usize; 12];
        for (i, s) in series.iter().enumerate() {
            let mut b = buckets::summarize(s.iter().copied(), MINUTE);
            for (_, sm) in &mut b {
                edit(sm);
            }
            per_channel[i % 12] += buckets::encode(&b, MINUTE).len();
        }
        let total: usize = per_channel.iter().sum();
        print!(
            "{name:>14}: {:.3} B/pt |",
            total as f64 / (meters * 12 * secs) as f64
        );
        for (c, n) in per_channel.iter().enumerate() {
            print!(
                " {}={:.2}",
                &CHANNELS[c].0[..6.min(CHANNELS[c].0.len())],
                *n as f64 / (meters * secs) as f64
            );
        }
        println!();
    }
}
