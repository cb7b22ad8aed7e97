//! Criterion micro-benchmarks of the hot paths: decoding an ingest batch, the chunk codec,
//! keeping rollups up to date, and reading history pages with cursors.
//! `cargo bench -p meterstream-bench --bench hot_paths`
#![allow(clippy::unwrap_used, missing_docs)] // a benchmark: any failure should stop it loudly

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meterstream_bench::{batch, workload::Fleet};
use meterstream_storage::buckets::{self, MINUTE};
use meterstream_storage::codec;
use meterstream_storage::head::Head;
use meterstream_storage::series::Series;
use meterstream_storage::wal::PointRec;
use meterstream_storage::{
    Config, Engine, GroupIn, HistoryQuery, InValue, Order, PointIn, Store, Timeline, Value,
    ValueKind,
};

const START: i64 = 1_767_225_600_000;

/// One stream of the standard workload: `n` seconds of one meter's voltage.
fn voltage(n: usize) -> Vec<(i64, f64)> {
    let mut fleet = Fleet::new(1, 1, 7);
    let mut out = Vec::with_capacity(n);
    for s in 0..n {
        let t = START + s as i64 * 1000;
        fleet.second(t, |_, v| out.push((t, v[0])));
    }
    out
}

fn series(points: &[(i64, f64)]) -> Series {
    let mut s = Series::new(ValueKind::Float);
    for (t, v) in points {
        s.upsert(*t, Value::Float(*v), 0, None);
    }
    s
}

fn batch_decoding(c: &mut Criterion) {
    // One standard batch: a gateway's 120 streams over 83 s, ~10,000 points, compact MessagePack.
    let mut fleet = Fleet::new(10, 10, 42);
    let body = batch::build(&mut fleet, 10, START, 83, 10_000).remove(0);
    let points: usize = meterstream_server::ingest::parse_msgpack(&body)
        .unwrap()
        .groups
        .iter()
        .map(|g| g.points.len())
        .sum();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(points as u64));
    g.bench_function("parse compact msgpack batch", |b| {
        b.iter(|| meterstream_server::ingest::parse_msgpack(black_box(&body)).unwrap())
    });
    g.finish();
}

fn chunk_codec(c: &mut Criterion) {
    let s = series(&voltage(2048));
    let bytes = codec::encode(&s).unwrap();
    let mut g = c.benchmark_group("chunk codec");
    g.throughput(Throughput::Elements(2048));
    g.bench_function("encode 2048 points (pco)", |b| {
        b.iter(|| codec::encode(black_box(&s)).unwrap())
    });
    g.bench_function("decode 2048 points (pco)", |b| {
        b.iter(|| codec::decode(black_box(&bytes)).unwrap())
    });
    g.finish();
}

fn rollup_updates(c: &mut Criterion) {
    let pts = voltage(2048);
    let recs: Vec<PointRec> = pts
        .iter()
        .map(|(t, v)| PointRec {
            ts: *t,
            value: Value::Float(*v),
            extras: None,
        })
        .collect();
    let mut g = c.benchmark_group("rollups");
    g.throughput(Throughput::Elements(2048));
    g.bench_function("head writes with minute summaries, 83-point batches", |b| {
        b.iter_batched(
            || Head::new(ValueKind::Float, 128),
            |mut h| {
                for chunk in recs.chunks(83) {
                    h.write(chunk, 0).unwrap();
                }
                h
            },
            BatchSize::SmallInput,
        )
    });
    let s = series(&pts);
    g.bench_function("seal: minute summaries of a chunk, encoded", |b| {
        b.iter(|| buckets::encode(&buckets::summarize_series(black_box(&s), MINUTE), MINUTE))
    });
    let mins = buckets::summarize_series(&s, MINUTE);
    let enc = buckets::encode(&mins, MINUTE);
    g.bench_function("query: decode a chunk's minute summaries", |b| {
        b.iter(|| buckets::decode(black_box(&enc), MINUTE).unwrap())
    });
    g.finish();
}

fn cursor_reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(Config::new(dir.path())).unwrap();
    let pts = voltage(20_000);
    for chunk in pts.chunks(1000) {
        store
            .write(
                vec![GroupIn {
                    stream: "gw/m/voltage_l1".into(),
                    stream_type: None,
                    stream_units: None,
                    points: chunk
                        .iter()
                        .map(|(t, v)| PointIn {
                            timestamp: Some(*t),
                            value: InValue::Float(*v),
                            extras: None,
                        })
                        .collect(),
                    first_index: 0,
                }],
                1,
            )
            .unwrap();
    }
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(1000));
    for (name, order) in [("asc", Order::Asc), ("desc", Order::Desc)] {
        // A page in the middle of the sealed chunks, reached by a cursor.
        let first = store
            .history(
                "gw/m/voltage_l1",
                &HistoryQuery {
                    from: 0,
                    to: i64::MAX,
                    order,
                    timeline: Timeline::Client,
                    limit: 5000,
                    cursor: None,
                },
            )
            .unwrap();
        let cursor = first.next.unwrap();
        g.bench_function(format!("page of 1000 after a cursor, {name}"), |b| {
            b.iter(|| {
                store
                    .history(
                        "gw/m/voltage_l1",
                        &HistoryQuery {
                            from: 0,
                            to: i64::MAX,
                            order,
                            timeline: Timeline::Client,
                            limit: 1000,
                            cursor: Some(cursor.clone()),
                        },
                    )
                    .unwrap()
            })
        });
    }
    g.finish();
    store.close();
}

criterion_group!(
    hot_paths,
    batch_decoding,
    chunk_codec,
    rollup_updates,
    cursor_reads
);
criterion_main!(hot_paths);
