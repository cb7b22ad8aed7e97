//! The change feed: what consumers read, across restarts, and what they are told they lost.

use crate::engine::{group, small_config};
use meterstream_storage::{Engine, Feed, Store, Value};
use std::time::{Duration, Instant};

/// Every (path, ts, value) a consumer reads from `after` to the end, following `next`.
fn drain(s: &dyn Store, mut after: u64, max: usize) -> (Vec<(String, i64, f64)>, u64, Vec<Feed>) {
    let mut out = Vec::new();
    let mut feeds = Vec::new();
    for _ in 0..10_000 {
        let f = s.feed(after, max).unwrap();
        for r in &f.records {
            assert!(r.seq() > after && r.seq() <= f.next.max(r.seq()));
            for (path, pts) in r.groups() {
                for p in pts {
                    let Value::Float(v) = p.value else {
                        panic!("not a float")
                    };
                    out.push((path.to_string(), p.ts, v));
                }
            }
        }
        let done = f.next == after;
        after = f.next;
        feeds.push(f);
        if done || after >= s.applied_seq() {
            break;
        }
    }
    (out, after, feeds)
}

fn expected(range: std::ops::Range<i64>) -> Vec<(String, i64, f64)> {
    range
        .flat_map(|i| {
            [
                ("gw/m/a".to_string(), i * 1000, i as f64),
                ("gw/m/b".to_string(), i * 1000, -(i as f64)),
            ]
        })
        .collect()
}

fn write(s: &dyn Store, range: std::ops::Range<i64>) {
    for i in range {
        s.write(
            vec![
                group("gw/m/a", &[(i * 1000, i as f64)]),
                group("gw/m/b", &[(i * 1000, -(i as f64))]),
            ],
            1,
        )
        .unwrap();
    }
}

#[test]
fn a_consumer_reads_every_point_in_log_order_from_memory_and_in_small_steps() {
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    write(&s, 0..10); // before any consumer: not in the feed's memory
    let start = s.applied_seq();
    s.feed_hold("c", Some(start)).unwrap();
    write(&s, 10..300);
    let (got, end, _) = drain(&s, start, 1_000_000);
    assert_eq!(got, expected(10..300));
    assert_eq!(end, s.applied_seq());
    // Small steps (two points a record: every read returns at least one record) give the same.
    let (got, _, feeds) = drain(&s, start, 1);
    assert_eq!(got, expected(10..300));
    assert!(feeds.len() >= 290);
    // Nothing new: an empty read that stays put.
    let f = s.feed(end, 10).unwrap();
    assert!(f.records.is_empty() && f.next == end && f.lost.is_none());
    // A consumer whose cursor predates the memory reads the log on disk.
    let (got, _, _) = drain(&s, 0, 1_000_000);
    assert_eq!(got, expected(0..300));
}

#[test]
fn the_log_is_kept_for_a_consumer_across_checkpoints_and_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.segment_bytes = 1 << 16;
    let start;
    {
        let s = Engine::open(cfg.clone()).unwrap();
        start = s.applied_seq();
        s.feed_hold("alarms", Some(start)).unwrap();
        write(&s, 0..2000);
        std::thread::sleep(Duration::from_millis(300)); // several checkpoints
        s.close();
    }
    let s = Engine::open(cfg.clone()).unwrap();
    assert_eq!(s.feed_consumer("alarms"), Some(start));
    let (got, end, feeds) = drain(&s, start, 500);
    assert!(feeds.iter().all(|f| f.lost.is_none()));
    assert_eq!(got, expected(0..2000));
    // The consumer moves on; the next checkpoint may delete what it no longer needs.
    s.feed_hold("alarms", Some(end)).unwrap();
    write(&s, 2000..2100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.stats().log_bytes > 4 << 16 && Instant::now() < deadline {
        write(&s, 2100..2101);
        std::thread::sleep(Duration::from_millis(60));
    }
    assert!(s.stats().log_bytes <= 4 << 16, "{}", s.stats().log_bytes);
    // Removing the consumer lets a clean shutdown remove the whole log, as before.
    s.feed_hold("alarms", None).unwrap();
    assert_eq!(s.feed_consumer("alarms"), None);
}

#[test]
fn a_consumer_behind_the_retention_limit_is_told_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.segment_bytes = 1 << 16;
    cfg.feed_retention_bytes = 1 << 16;
    cfg.feed_buffer_bytes = 4096;
    let s = Engine::open(cfg).unwrap();
    s.feed_hold("slow", Some(0)).unwrap();
    write(&s, 0..4000);
    std::thread::sleep(Duration::from_millis(300));
    write(&s, 4000..4001);
    std::thread::sleep(Duration::from_millis(300));
    let f = s.feed(0, 1_000_000_000).unwrap();
    let (from, to) = f.lost.expect("the oldest log was deleted");
    assert_eq!(from, 1);
    assert!(to > 1 && to < s.applied_seq());
    // What is still there follows, without a gap after the loss.
    assert_eq!(f.records.first().map(|r| r.seq()), Some(to + 1));
    let (got, _, _) = drain(&s, to, 1_000_000_000);
    assert_eq!(got.last(), expected(4000..4001).last());
}
