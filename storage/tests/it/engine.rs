use meterstream_storage::{
    Child, Config, Cursor, Engine, GroupIn, HistoryQuery, InValue, Order, PointIn, StorageError,
    Store, StreamFilter, StreamType, StreamUpdate, Timeline, Value,
};
use std::time::Duration;

pub fn small_config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.chunk_points = 64;
    c.head_block_points = 8;
    c.checkpoint_interval = Duration::from_millis(50);
    c.cache_bytes = 4 << 20;
    c
}

pub fn group(stream: &str, points: &[(i64, f64)]) -> GroupIn {
    GroupIn {
        stream: stream.into(),
        stream_type: None,
        stream_units: None,
        points: points
            .iter()
            .map(|(t, v)| PointIn {
                timestamp: Some(*t),
                value: InValue::Float(*v),
                extras: None,
            })
            .collect(),
        first_index: 0,
    }
}

pub fn all(store: &dyn Store, path: &str) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .history(
                path,
                &HistoryQuery {
                    from: 0,
                    to: i64::MAX,
                    order: Order::Asc,
                    timeline: Timeline::Client,
                    limit: 1000,
                    cursor,
                },
            )
            .unwrap();
        out.extend(
            page.items
                .iter()
                .map(|p| (p.timestamp, p.value.as_f64().unwrap())),
        );
        match page.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[test]
fn write_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let pts: Vec<(i64, f64)> = (0..500)
        .map(|i| (1000 + i * 1000, i as f64 * 0.5))
        .collect();
    {
        let s = Engine::open(small_config(dir.path())).unwrap();
        let out = s.write(vec![group("gw/m/v", &pts)], 5).unwrap();
        assert_eq!(out.stored, 500);
        assert!(out.errors.is_empty());
        assert_eq!(all(&s, "gw/m/v"), pts);
        let info = s.stream("gw/m/v").unwrap();
        assert_eq!(info.meta.stream_type, StreamType::Double);
        assert_eq!(info.current.unwrap().timestamp, 1000 + 499 * 1000);
        s.close();
    }
    // Reopen: chunks, heads and the current value are all back.
    let s = Engine::open(small_config(dir.path())).unwrap();
    assert_eq!(all(&s, "gw/m/v"), pts);
    let cur = s.stream("gw/m/v").unwrap().current.unwrap();
    assert_eq!((cur.timestamp, cur.value), (500_000, Value::Float(249.5)));
    assert_eq!(cur.server_timestamp, 5);
}

#[test]
fn late_points_replace_and_current_only_moves_forward() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    let pts: Vec<(i64, f64)> = (0..300).map(|i| (i * 10, i as f64)).collect();
    s.write(vec![group("a", &pts)], 1).unwrap();
    // Late points: into sealed chunks, before the first chunk, between points, replacing.
    s.write(
        vec![group(
            "a",
            &[(5, -1.0), (0, -2.0), (1234, -3.0), (2990, -4.0)],
        )],
        2,
    )
    .unwrap();
    let mut want: std::collections::BTreeMap<i64, f64> = pts.into_iter().collect();
    for (t, v) in [(5, -1.0), (0, -2.0), (1234, -3.0), (2990, -4.0)] {
        want.insert(t, v);
    }
    assert_eq!(all(&s, "a"), want.clone().into_iter().collect::<Vec<_>>());
    let cur = s.stream("a").unwrap().current.unwrap();
    assert_eq!((cur.timestamp, cur.value), (2990, Value::Float(-4.0)));
    // An old point does not move the current value back.
    s.write(vec![group("a", &[(1, 9.0)])], 3).unwrap();
    assert_eq!(s.stream("a").unwrap().current.unwrap().timestamp, 2990);
}

#[test]
fn delete_range_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    let pts: Vec<(i64, f64)> = (0..300).map(|i| (i * 10, i as f64)).collect();
    s.write(vec![group("a", &pts), group("b", &pts)], 1)
        .unwrap();
    assert_eq!(s.delete_history("a", 100, 2500).unwrap(), 240);
    let left = all(&s, "a");
    assert_eq!(left.len(), 60);
    assert!(left.iter().all(|(t, _)| *t < 100 || *t >= 2500));
    // Deleting the newest point moves the current value back to what remains.
    s.delete_history("a", 2900, 3000).unwrap();
    assert_eq!(s.stream("a").unwrap().current.unwrap().timestamp, 2890);
    s.delete_stream("b").unwrap();
    assert!(matches!(
        s.stream("b"),
        Err(StorageError::StreamNotFound { .. })
    ));
    assert!(matches!(
        s.delete_stream("b"),
        Err(StorageError::StreamNotFound { .. })
    ));
    // A recreated stream starts empty.
    s.write(vec![group("b", &[(1, 1.0)])], 2).unwrap();
    assert_eq!(all(&s, "b"), vec![(1, 1.0)]);
    s.close();
    drop(s);
    let s = Engine::open(small_config(dir.path())).unwrap();
    assert_eq!(all(&s, "a").len(), 50);
    assert_eq!(all(&s, "b"), vec![(1, 1.0)]);
}

#[test]
fn type_checks_and_per_item_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    let g = GroupIn {
        stream: "dev/count".into(),
        stream_type: Some(StreamType::Integer),
        stream_units: Some("pcs".into()),
        points: vec![
            PointIn {
                timestamp: Some(1),
                value: InValue::Int(5),
                extras: None,
            },
            PointIn {
                timestamp: Some(2),
                value: InValue::Float(5.5),
                extras: None,
            },
            PointIn {
                timestamp: Some(-3),
                value: InValue::Int(1),
                extras: None,
            },
            PointIn {
                timestamp: None,
                value: InValue::Str("x".into()),
                extras: None,
            },
        ],
        first_index: 10,
    };
    let out = s
        .write(vec![g, group("bad//path", &[(1, 1.0)])], 77)
        .unwrap();
    assert_eq!(out.stored, 1);
    let idx: Vec<usize> = out.errors.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![0, 11, 12, 13]);
    assert!(out.errors[0].error.to_string().contains("empty segment"));
    assert!(out.errors[1]
        .error
        .to_string()
        .contains("does not fit a INTEGER stream"));
    assert!(out.errors[2]
        .error
        .to_string()
        .contains("outside the supported range"));
    let info = s.stream("dev/count").unwrap();
    assert_eq!(info.meta.units, "pcs");
    assert_eq!(info.current.unwrap().value, Value::Int(5));
    // A batch whose every point is bad creates nothing.
    let out = s
        .write(
            vec![GroupIn {
                stream: "never".into(),
                stream_type: None,
                stream_units: None,
                points: vec![PointIn {
                    timestamp: Some(1),
                    value: InValue::Bool(true),
                    extras: None,
                }],
                first_index: 0,
            }],
            1,
        )
        .unwrap();
    assert_eq!((out.stored, out.errors.len()), (0, 1));
    assert!(s.stream("never").is_err());
}

#[test]
fn put_stream_metadata_and_type_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    let info = s
        .put_stream(
            "x/y",
            StreamUpdate {
                stream_type: Some(StreamType::Long),
                units: Some("Wh".into()),
                data_ttl: Some(Some(3600)),
                ..Default::default()
            },
            9,
        )
        .unwrap();
    assert_eq!(info.meta.stream_type, StreamType::Long);
    assert_eq!(info.meta.data_ttl, Some(3600));
    assert_eq!(info.created, 9);
    s.write(
        vec![GroupIn {
            stream: "x/y".into(),
            stream_type: None,
            stream_units: None,
            points: vec![PointIn {
                timestamp: Some(1),
                value: InValue::Int(1 << 40),
                extras: None,
            }],
            first_index: 0,
        }],
        10,
    )
    .unwrap();
    let e = s
        .put_stream(
            "x/y",
            StreamUpdate {
                stream_type: Some(StreamType::String),
                ..Default::default()
            },
            11,
        )
        .unwrap_err();
    assert!(matches!(e, StorageError::Conflict { .. }), "{e}");
    let info = s
        .put_stream(
            "x/y",
            StreamUpdate {
                description: Some("energy".into()),
                ..Default::default()
            },
            12,
        )
        .unwrap();
    assert_eq!(info.meta.units, "Wh");
    assert_eq!(info.meta.description, "energy");
    assert_eq!(info.current.unwrap().value, Value::Int(1 << 40));
}

#[test]
fn listing_filters_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    for gw in ["gw1", "gw2"] {
        for m in ["m1", "m2"] {
            for c in ["v", "i"] {
                s.write(vec![group(&format!("{gw}/{m}/{c}"), &[(1, 1.0)])], 1)
                    .unwrap();
            }
        }
    }
    s.write(vec![group("gw1/status", &[(1, 1.0)])], 1).unwrap();
    let f = StreamFilter {
        conditions: vec![meterstream_storage::Condition::IdStartsWith("gw1/".into())],
    };
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let p = s.list_streams(&f, Order::Desc, 2, cursor.as_ref()).unwrap();
        seen.extend(p.items.into_iter().map(|i| i.path));
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["gw1/status", "gw1/m2/v", "gw1/m2/i", "gw1/m1/v", "gw1/m1/i"]
    );
    let root = s.children("", 100, None).unwrap();
    let names: Vec<String> = root
        .items
        .iter()
        .map(|c| match c {
            Child::Folder { name, streams, .. } => format!("{name}/({streams})"),
            Child::Stream(i) => i.path.clone(),
        })
        .collect();
    assert_eq!(names, vec!["gw1/(5)", "gw2/(4)"]);
    let p1 = s.children("gw1", 2, None).unwrap();
    assert_eq!(p1.items.len(), 2);
    let p2 = s.children("gw1", 2, p1.next.as_ref()).unwrap();
    assert_eq!(p2.items.len(), 1);
    assert!(p2.next.is_none());
    assert!(matches!(&p2.items[0], Child::Stream(i) if i.path == "gw1/status"));
    assert!(matches!(
        s.children("nope", 10, None),
        Err(StorageError::StreamNotFound { .. })
    ));
}

#[test]
fn retention_deletes_expired_points() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    let pts: Vec<(i64, f64)> = (0..200).map(|i| (i * 1000, i as f64)).collect();
    s.write(vec![group("r", &pts), group("keep", &pts)], 1)
        .unwrap();
    s.put_stream(
        "r",
        StreamUpdate {
            data_ttl: Some(Some(100)),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    // now = 250 s: everything before 150 s is expired.
    assert_eq!(s.sweep_retention(250_000).unwrap(), 150);
    assert_eq!(all(&s, "r").first().unwrap().0, 150_000);
    assert_eq!(all(&s, "keep").len(), 200);
    assert_eq!(s.sweep_retention(250_000).unwrap(), 0);
}

#[test]
fn server_timeline_orders_by_arrival() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    s.write(vec![group("t", &[(300, 3.0), (100, 1.0)])], 1000)
        .unwrap();
    s.write(vec![group("t", &[(200, 2.0)])], 2000).unwrap();
    let q = |order, cursor| HistoryQuery {
        from: 0,
        to: 10_000,
        order,
        timeline: Timeline::Server,
        limit: 2,
        cursor,
    };
    let p = s.history("t", &q(Order::Asc, None)).unwrap();
    let ts: Vec<i64> = p.items.iter().map(|p| p.timestamp).collect();
    assert_eq!(ts, vec![100, 300]);
    let asc_cursor = p.next.clone();
    let p2 = s.history("t", &q(Order::Asc, p.next.clone())).unwrap();
    assert_eq!(p2.items[0].timestamp, 200);
    assert!(p2.next.is_none());
    let p = s.history("t", &q(Order::Desc, None)).unwrap();
    assert_eq!(p.items[0].timestamp, 200);
    // A cursor from an ascending listing is refused for a descending one.
    assert_eq!(p.items.len(), 2);
    let e = s.history("t", &q(Order::Desc, asc_cursor)).unwrap_err();
    assert!(e.to_string().contains("cursor"));
    // Extras and values of every type survive.
    let v = s
        .history(
            "t",
            &HistoryQuery {
                from: 0,
                to: 150,
                order: Order::Asc,
                timeline: Timeline::Client,
                limit: 10,
                cursor: None,
            },
        )
        .unwrap();
    assert_eq!(v.items.len(), 1);
    assert_eq!(v.items[0].server_timestamp, 1000);
}

/// Periodic checkpoints encode heads fast; a clean shutdown leaves them compact, also when
/// nothing was written after the last periodic checkpoint.
#[test]
fn shutdown_leaves_a_compact_heads_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.chunk_points = 4096;
    cfg.head_block_points = 128;
    // Noisy decimal values: pco packs them tighter than the fast delta codec.
    let pts: Vec<(i64, f64)> = (0..3000)
        .map(|i: i64| (1000 + i * 1000, 230.0 + ((i * 7919) % 61) as f64 / 100.0))
        .collect();
    let snap = dir.path().join("heads.snap");
    {
        let s = Engine::open(cfg.clone()).unwrap();
        // Written now, so that checkpoints do not seal the heads as idle.
        let now = meterstream_storage::time::now_ms();
        for k in 0..10 {
            s.write(vec![group(&format!("gw/m/v{k}"), &pts)], now)
                .unwrap();
        }
        // Wait for a periodic checkpoint to cover the writes.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut periodic = 0;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            periodic = std::fs::metadata(&snap).map_or(0, |m| m.len());
            if periodic > 10 * 3000 {
                break;
            }
        }
        assert!(
            periodic > 10 * 3000,
            "no periodic snapshot of the heads: {periodic}"
        );
        std::thread::sleep(Duration::from_millis(200));
        periodic = std::fs::metadata(&snap).unwrap().len();
        s.close();
        let last = std::fs::metadata(&snap).unwrap().len();
        assert!(
            (last as f64) < periodic as f64 * 0.9,
            "shutdown snapshot {last} bytes, periodic {periodic}"
        );
    }
    let s = Engine::open(cfg).unwrap();
    for k in 0..10 {
        assert_eq!(all(&s, &format!("gw/m/v{k}")), pts);
    }
}

/// Stores created before sled compressed its pages (and with sled's default segment size) open
/// as they are (sled refuses a changed setting); new stores compress and take 128 KiB segments.
#[test]
fn stores_keep_their_sled_settings() {
    let old = tempfile::tempdir().unwrap();
    drop(
        sled::Config::new()
            .path(old.path().join("sled"))
            .use_compression(false)
            .open()
            .unwrap(),
    );
    let new = tempfile::tempdir().unwrap();
    for (dir, compressed, segment) in [(&old, false, 524288), (&new, true, 131072)] {
        for round in 0..2 {
            let s = Engine::open(small_config(dir.path())).unwrap();
            if round == 0 {
                s.write(vec![group("gw/m/v", &[(1000, 1.5), (2000, 2.5)])], 5)
                    .unwrap();
            }
            assert_eq!(all(&s, "gw/m/v"), vec![(1000, 1.5), (2000, 2.5)]);
            s.close();
        }
        let conf = std::fs::read(dir.path().join("sled/conf")).unwrap();
        let conf = String::from_utf8_lossy(&conf);
        assert!(
            conf.contains(&format!("use_compression: {compressed}"))
                && conf.contains(&format!("segment_size: {segment}")),
            "{conf}"
        );
    }
}

#[test]
fn forward_to_copies_writes_once_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let upd = |f: &[&str]| StreamUpdate {
        forward_to: Some(f.iter().map(|s| s.to_string()).collect()),
        ..StreamUpdate::default()
    };
    {
        let s = Engine::open(small_config(dir.path())).unwrap();
        s.write(vec![group("gw/m/v", &[(1000, 1.0)])], 5).unwrap();
        // Two streams forwarding to each other must not loop: copies are not forwarded again.
        s.put_stream("gw/m/v", upd(&["site/v", "gw/m/v_copy"]), 5)
            .unwrap();
        s.put_stream("site/v", upd(&["gw/m/v"]), 5).unwrap();
        let out = s
            .write(vec![group("gw/m/v", &[(2000, 2.0), (3000, 3.0)])], 6)
            .unwrap();
        assert_eq!(
            out.stored, 2,
            "the answer counts the points sent, not copies"
        );
        assert_eq!(all(&s, "site/v"), vec![(2000, 2.0), (3000, 3.0)]);
        assert_eq!(all(&s, "gw/m/v_copy"), vec![(2000, 2.0), (3000, 3.0)]);
        assert_eq!(
            s.stream("gw/m/v_copy").unwrap().meta.stream_type,
            StreamType::Double
        );
        // A write to site/v goes back to gw/m/v only.
        s.write(vec![group("site/v", &[(4000, 4.0)])], 7).unwrap();
        assert_eq!(
            all(&s, "gw/m/v"),
            vec![(1000, 1.0), (2000, 2.0), (3000, 3.0), (4000, 4.0)]
        );
        assert_eq!(all(&s, "gw/m/v_copy").len(), 2);
        // Forwarding to itself, or to a stream of another kind, is refused.
        assert!(matches!(
            s.put_stream("gw/m/v", upd(&["gw/m/v"]), 8),
            Err(StorageError::Conflict { .. })
        ));
        s.write(
            vec![GroupIn {
                stream_type: Some(StreamType::String),
                points: vec![PointIn {
                    timestamp: Some(1),
                    value: InValue::Str("x".into()),
                    extras: None,
                }],
                ..group("gw/m/text", &[])
            }],
            8,
        )
        .unwrap();
        assert!(matches!(
            s.put_stream("gw/m/v", upd(&["gw/m/text"]), 8),
            Err(StorageError::Conflict { .. })
        ));
        s.close();
    }
    // After a reopen the forward still applies (the flag is rebuilt from the stream records).
    let s = Engine::open(small_config(dir.path())).unwrap();
    s.write(vec![group("gw/m/v", &[(5000, 5.0)])], 9).unwrap();
    assert_eq!(all(&s, "site/v").last(), Some(&(5000, 5.0)));
    // Clearing the list stops the copies.
    s.put_stream("gw/m/v", upd(&[]), 10).unwrap();
    s.write(vec![group("gw/m/v", &[(6000, 6.0)])], 11).unwrap();
    assert_eq!(all(&s, "site/v").last(), Some(&(5000, 5.0)));
}
