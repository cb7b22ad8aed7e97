//! A stream exported as pieces (a cluster's partition snapshot, docs/scale-out.md) and restored
//! into another engine answers exactly as the original: points, server timestamps, rollups
//! (those of raw points expired by retention too), the current value; and it goes on like any
//! stream, across a reopen.

use crate::engine::{all, group, small_config};
use meterstream_storage::engine::pieces::{StreamPieces, StreamRestore};
use meterstream_storage::{
    Engine, Fill, HistoryQuery, Interval, Method, Order, RollupQuery, StorageError, Store,
    StreamUpdate, Timeline,
};

/// Every point as (timestamp, server timestamp, value).
fn points(s: &Engine, path: &str) -> Vec<(i64, i64, String)> {
    let q = HistoryQuery {
        from: 0,
        to: i64::MAX,
        order: Order::Asc,
        timeline: Timeline::Client,
        limit: 100_000,
        cursor: None,
    };
    s.history(path, &q)
        .unwrap()
        .items
        .into_iter()
        .map(|p| (p.timestamp, p.server_timestamp, format!("{:?}", p.value)))
        .collect()
}

fn rollups(s: &Engine, path: &str, interval: Interval) -> Vec<String> {
    let q = RollupQuery {
        from: None,
        to: None,
        interval,
        method: Method::Sum,
        tz: jiff::tz::TimeZone::UTC,
        fill: Fill::None,
        order: Order::Asc,
        limit: 10_000,
        cursor: None,
    };
    s.rollups(path, &q)
        .unwrap()
        .items
        .iter()
        .map(|r| format!("{r:?}"))
        .collect()
}

fn export(s: &Engine, path: &str) -> StreamPieces {
    s.export_stream(path, &mut |_, _| false).unwrap().unwrap()
}

fn restore(to: &Engine, path: &str, p: &StreamPieces) -> Result<(), StorageError> {
    let chunks: Vec<&[u8]> = p
        .chunks
        .iter()
        .map(|c| c.bytes.as_deref().unwrap())
        .collect();
    let days: Vec<(i64, &[u8])> = p.days.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    to.restore_streams(&[StreamRestore {
        path,
        record: &p.record,
        chunks,
        days,
    }])
}

const MIN: i64 = 60_000;
/// Server time of the writes: recent, so that no head is idle long enough to be sealed by a
/// checkpoint.
fn now() -> i64 {
    meterstream_storage::time::now_ms()
}

#[test]
fn a_restored_stream_answers_as_the_exported_one() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ea = Engine::open(small_config(a.path())).unwrap();
    let eb = Engine::open(small_config(b.path())).unwrap();
    let path = "gw1/m/v";
    // Three days of a point a minute, 30 batches with their own server times: sealed chunks,
    // completed days' records, an open head.
    for k in 0..30i64 {
        let pts: Vec<(i64, f64)> = (0..144)
            .map(|i| ((k * 144 + i) * MIN, (k * 144 + i) as f64 * 0.5))
            .collect();
        ea.write(vec![group(path, &pts)], now() + k).unwrap();
    }
    ea.put_stream(
        path,
        StreamUpdate {
            units: Some("V".into()),
            ..Default::default()
        },
        now(),
    )
    .unwrap();
    let p = export(&ea, path);
    assert!(p.chunks.len() > 30, "{} chunks", p.chunks.len());
    assert!(
        p.chunks.last().unwrap().version.is_empty(),
        "the head comes last"
    );
    assert!(p.days.len() >= 2, "{} day records", p.days.len());
    restore(&eb, path, &p).unwrap();
    assert_eq!(points(&eb, path).len(), 4_320);
    assert_eq!(points(&eb, path), points(&ea, path));
    assert_eq!(
        rollups(&eb, path, Interval::Hour),
        rollups(&ea, path, Interval::Hour)
    );
    assert_eq!(
        rollups(&eb, path, Interval::Day),
        rollups(&ea, path, Interval::Day)
    );
    let (ia, ib) = (ea.stream(path).unwrap(), eb.stream(path).unwrap());
    assert_eq!(ib.current, ia.current);
    assert_eq!((ib.meta.units.as_str(), ib.created), ("V", ia.created));

    // It goes on like any stream, also after a reopen.
    eb.write(
        vec![group(path, &[(4_320 * MIN, 1.0), (10, 2.0)])],
        now() + 99,
    )
    .unwrap();
    eb.close();
    drop(eb);
    let eb = Engine::open(small_config(b.path())).unwrap();
    let got = all(&eb, path);
    assert_eq!(got.len(), 4_322);
    assert_eq!(got[0], (0, 0.0));
    assert_eq!(
        got[1],
        (10, 2.0),
        "a late point merged into a restored chunk"
    );
    assert_eq!(
        eb.stream(path).unwrap().current.unwrap().timestamp,
        4_320 * MIN
    );

    // Restoring again replaces what is there.
    restore(&eb, path, &export(&ea, path)).unwrap();
    assert_eq!(points(&eb, path), points(&ea, path));

    // Sealed chunks the caller has by version come without their bytes; the head always with.
    let again = ea.export_stream(path, &mut |_, _| true).unwrap().unwrap();
    let (head, sealed) = again.chunks.split_last().unwrap();
    assert!(sealed.iter().all(|c| c.bytes.is_none()));
    assert!(head.bytes.is_some());
    assert!(ea
        .export_stream("gw1/none", &mut |_, _| false)
        .unwrap()
        .is_none());
    assert_eq!(ea.paths_where(&|d| d == "gw1"), vec![path.to_string()]);
    assert!(ea.paths_where(&|d| d == "gw2").is_empty());
}

#[test]
fn rollups_of_expired_points_are_restored() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ea = Engine::open(small_config(a.path())).unwrap();
    let eb = Engine::open(small_config(b.path())).unwrap();
    let pts: Vec<(i64, f64)> = (0..3 * 1440).map(|i| (i * MIN, 1.0)).collect();
    ea.write(vec![group("gw/r", &pts)], 1).unwrap();
    ea.put_stream(
        "gw/r",
        StreamUpdate {
            data_ttl: Some(Some(86_400)),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    // Raw points of the first two days expire; their daily sums stay.
    assert!(ea.sweep_retention(3 * 1440 * MIN).unwrap() >= 1440);
    let days = rollups(&ea, "gw/r", Interval::Day);
    assert_eq!(days.len(), 3, "{days:?}");
    restore(&eb, "gw/r", &export(&ea, "gw/r")).unwrap();
    assert_eq!(rollups(&eb, "gw/r", Interval::Day), days);
    assert_eq!(points(&eb, "gw/r"), points(&ea, "gw/r"));
    assert!(points(&eb, "gw/r").len() <= 1440);
}

#[test]
fn bad_pieces_change_nothing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ea = Engine::open(small_config(a.path())).unwrap();
    let eb = Engine::open(small_config(b.path())).unwrap();
    let pts: Vec<(i64, f64)> = (0..200).map(|i| (i * 1000, i as f64)).collect();
    ea.write(vec![group("gw1/x", &pts)], 1).unwrap();
    eb.write(vec![group("gw1/x", &pts[..5])], 1).unwrap();
    let p = export(&ea, "gw1/x");
    // A flipped byte in one chunk.
    let mut bad = p.clone();
    let c = bad.chunks[1].bytes.as_mut().unwrap();
    let n = c.len();
    c[n / 2] ^= 0xFF;
    assert!(matches!(
        restore(&eb, "gw1/x", &bad),
        Err(StorageError::Corrupt { .. })
    ));
    // Chunks out of order.
    let mut swapped = p.clone();
    swapped.chunks.swap(0, 1);
    assert!(restore(&eb, "gw1/x", &swapped).is_err());
    // A bad record.
    let mut rec = p.clone();
    rec.record = b"nonsense".to_vec();
    assert!(restore(&eb, "gw1/x", &rec).is_err());
    assert_eq!(all(&eb, "gw1/x"), pts[..5].to_vec());
}
