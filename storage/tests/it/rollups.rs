//! Rollups maintained during ingest against a plain recomputation from the points: random
//! batches (in and out of order, duplicates, replacements), range deletions, retention expiry
//! and reopenings, then every interval and method in five zones, around their DST changes.

use crate::engine::{group, small_config};
use meterstream_storage::rollup::{roll_up, zone, RollupSpec};
use meterstream_storage::{
    Engine, Fill, Interval, Method, Order, RollupQuery, RollupValue, Store, StreamUpdate,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

const HOUR: i64 = 3_600_000;
const QUARTER: i64 = 900_000;

/// (zone, an instant near one of its offset changes, or any instant for a zone without).
const ZONES: [(&str, &str); 7] = [
    ("UTC", "2026-03-29T01:00:00Z"),
    ("Europe/Sofia", "2026-03-29T01:00:00Z"),
    ("Europe/Sofia", "2026-10-25T01:00:00Z"),
    ("America/New_York", "2026-11-01T06:00:00Z"),
    ("America/New_York", "2026-03-08T07:00:00Z"),
    ("Asia/Kolkata", "2026-06-01T18:30:00Z"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
];

#[derive(Debug, Clone)]
enum Op {
    /// Points at offsets (ms) from the window start; values in tenths.
    Write(Vec<(i64, i32)>),
    /// A run of 1-second points from an offset, in order.
    Run(i64, usize, i32),
    /// Delete `[a, a + len)` through the API.
    Delete(i64, i64),
    /// Expire raw points before an offset (retention).
    Expire(i64),
    Reopen,
}

/// The window: 40 hours around the zone's change.
const SPAN: i64 = 40 * HOUR;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec((0..SPAN, -20_000i32..20_000), 1..80).prop_map(Op::Write),
        3 => (0..SPAN, 1usize..400, -20_000i32..20_000).prop_map(|(a, n, v)| Op::Run(a, n, v)),
        1 => (0..SPAN, 0..6 * HOUR).prop_map(|(a, l)| Op::Delete(a, a + l)),
        1 => (0..SPAN / 2).prop_map(Op::Expire),
        1 => Just(Op::Reopen),
    ]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0) || (a.is_nan() && b.is_nan())
}

/// The reference: the points of `[from, to)` of `model` rolled up directly; `history` holds
/// everything ever kept (for `increase`).
fn reference(
    model: &BTreeMap<i64, f64>,
    history: &BTreeMap<i64, f64>,
    spec: &RollupSpec<'_>,
    from: Option<i64>,
    to: Option<i64>,
) -> Vec<RollupValue> {
    let (Some(from), Some(to)) = (
        from.or(model.keys().next().copied()),
        to.or(model.keys().next_back().map(|t| t + 1)),
    ) else {
        return Vec::new();
    };
    if from >= to {
        return Vec::new();
    }
    let pts: Vec<(i64, f64)> = model.range(from..to).map(|(t, v)| (*t, *v)).collect();
    // The last value before the range, wherever it lies: rolled-up history counts too.
    let before = history.range(..from).next_back().map(|(_, v)| *v);
    roll_up(&pts, before, spec, from, to).unwrap()
}

fn query(s: &Engine, q: &RollupQuery) -> Vec<RollupValue> {
    let mut out = Vec::new();
    let mut q = q.clone();
    for _ in 0..10_000 {
        let p = s.rollups("gw/m/p", &q).unwrap();
        out.extend(p.items);
        match p.next {
            Some(c) => q.cursor = Some(c),
            None => return out,
        }
    }
    panic!("paging did not end");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, .. ProptestConfig::default() })]
    #[test]
    fn incremental_rollups_match_a_recomputation(
        zi in 0usize..ZONES.len(),
        ops in proptest::collection::vec(op(), 1..20),
        range in proptest::option::of((0..SPAN, 1..SPAN)),
        fill in 0usize..4,
        page in 1usize..400,
    ) {
        let (zone_name, near) = ZONES[zi];
        let start = near.parse::<jiff::Timestamp>().unwrap().as_millisecond() - SPAN / 2;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Engine::open(small_config(dir.path())).unwrap();
        // All points ever written less those deleted through the API (what rollups hold) ...
        let mut rolled: BTreeMap<i64, f64> = BTreeMap::new();
        // ... and less those expired too (what raw points and minute rollups hold).
        let mut raw: BTreeMap<i64, f64> = BTreeMap::new();
        // Nothing may touch quarters that retention has partly expired (docs/rollups.md).
        let mut floor = 0i64;
        let mut created = false;
        for op in ops {
            match op {
                Op::Write(pts) => {
                    let pts: Vec<(i64, f64)> = pts
                        .into_iter()
                        .map(|(o, v)| (start + o.max(floor), v as f64 / 10.0))
                        .collect();
                    s.write(vec![group("gw/m/p", &pts)], 1).unwrap();
                    for (t, v) in pts {
                        rolled.insert(t, v);
                        raw.insert(t, v);
                    }
                    created = true;
                }
                Op::Run(a, n, v) => {
                    let a = a.max(floor);
                    let pts: Vec<(i64, f64)> = (0..n as i64)
                        .map(|i| (start + a + i * 1000, (v as i64 + (i * 7) % 13 - 3) as f64 / 10.0))
                        .collect();
                    s.write(vec![group("gw/m/p", &pts)], 1).unwrap();
                    for (t, v) in pts {
                        rolled.insert(t, v);
                        raw.insert(t, v);
                    }
                    created = true;
                }
                Op::Delete(a, b) => {
                    if !created {
                        continue;
                    }
                    let (a, b) = (start + a.max(floor), start + b.max(floor));
                    let n = s.delete_history("gw/m/p", a, b).unwrap();
                    let before = raw.len();
                    raw.retain(|t, _| *t < a || *t >= b);
                    rolled.retain(|t, _| *t < a || *t >= b);
                    prop_assert_eq!(n as usize, before - raw.len());
                }
                Op::Expire(c) => {
                    if !created || c <= floor {
                        continue;
                    }
                    let cutoff = start + c;
                    s.put_stream("gw/m/p", StreamUpdate { data_ttl: Some(Some(1)), ..Default::default() }, 1).unwrap();
                    let n = s.sweep_retention(cutoff + 1000).unwrap();
                    let before = raw.len();
                    raw.retain(|t, _| *t >= cutoff);
                    prop_assert_eq!(n as usize, before - raw.len());
                    s.put_stream("gw/m/p", StreamUpdate { data_ttl: Some(None), ..Default::default() }, 1).unwrap();
                    floor = (cutoff + QUARTER - 1).div_euclid(QUARTER) * QUARTER - start;
                }
                Op::Reopen => {
                    s.close();
                    drop(s);
                    s = Engine::open(small_config(dir.path())).unwrap();
                }
            }
        }
        if !created {
            return Ok(());
        }
        let tz = zone(zone_name).unwrap();
        let fill = [Fill::None, Fill::Null, Fill::Previous, Fill::Zero][fill];
        let expired = floor > 0;
        for interval in Interval::ALL {
            let fine = matches!(interval, Interval::Minute1 | Interval::Minute5);
            // Minute rollups live with the raw points; after an expiry, read them where raw
            // points are kept.
            let (from, to) = match range {
                Some((a, l)) => (Some(start + a.max(floor)), Some(start + a.max(floor) + l)),
                None if expired && fine => (Some(start + floor), None),
                None => (None, None),
            };
            let model = if fine { &raw } else { &rolled };
            for method in Method::ALL {
                let spec = RollupSpec { interval, method, tz: &tz, fill };
                let want = reference(model, &rolled, &spec, from, to);
                let q = RollupQuery {
                    from,
                    to,
                    interval,
                    method,
                    tz: tz.clone(),
                    fill,
                    order: Order::Asc,
                    limit: page,
                    cursor: None,
                };
                let got = query(&s, &q);
                let ok = got.len() == want.len()
                    && got.iter().zip(&want).all(|(g, w)| {
                        g.timestamp == w.timestamp
                            && match (g.value, w.value) {
                                (Some(a), Some(b)) => close(a, b),
                                (None, None) => true,
                                _ => false,
                            }
                    });
                prop_assert!(
                    ok,
                    "{} {:?} in {}, range {:?}..{:?}, fill {:?}:\n got  {:?}\n want {:?}",
                    interval.name(), method, zone_name, from, to, fill,
                    &got[..got.len().min(12)], &want[..want.len().min(12)]
                );
                // Descending is the same list reversed.
                let desc = query(&s, &RollupQuery { order: Order::Desc, ..q });
                prop_assert_eq!(desc.len(), got.len());
                prop_assert!(desc.iter().rev().zip(&got).all(|(d, g)| d.timestamp == g.timestamp));
            }
        }
    }
}

#[test]
fn boundaries_off_the_minute_grid_fall_back_to_raw_points() {
    // Liberia kept UTC-0:44:30 until 1972: its days began at 00:44:30 UTC.
    let dir = tempfile::tempdir().unwrap();
    let s = Engine::open(small_config(dir.path())).unwrap();
    let start = "1971-03-01T00:00:00Z"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond();
    let pts: Vec<(i64, f64)> = (0..3000).map(|i| (start + i * 60_000, i as f64)).collect();
    s.write(vec![group("gw/m/p", &pts)], 1).unwrap();
    let tz = zone("Africa/Monrovia").unwrap();
    let q = RollupQuery {
        from: None,
        to: None,
        interval: Interval::Day,
        method: Method::Sum,
        tz: tz.clone(),
        fill: Fill::None,
        order: Order::Asc,
        limit: 100,
        cursor: None,
    };
    let got = query(&s, &q);
    let day = |iso: &str| iso.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    assert_eq!(
        got.iter().map(|v| v.timestamp).collect::<Vec<_>>(),
        vec![
            day("1971-02-28T00:44:30Z"),
            day("1971-03-01T00:44:30Z"),
            day("1971-03-02T00:44:30Z"),
            day("1971-03-03T00:44:30Z"),
        ]
    );
    // The first local day holds the points before 00:44:30 UTC: minutes 0..=44.
    assert_eq!(got[0].value, Some((0..=44).sum::<i64>() as f64));
    let model: BTreeMap<i64, f64> = pts.iter().copied().collect();
    let spec = RollupSpec {
        interval: Interval::Day,
        method: Method::Sum,
        tz: &tz,
        fill: Fill::None,
    };
    assert_eq!(got, reference(&model, &model, &spec, None, None));
    assert_eq!(s.metrics().rollup_raw_fallbacks.get(), 1);
    // Its hours also start at :44:30 UTC; in UTC they are on the grid: no fallback.
    let hours = query(
        &s,
        &RollupQuery {
            interval: Interval::Hour,
            ..q.clone()
        },
    );
    assert_eq!(hours.len(), 51);
    assert_eq!(hours[1].timestamp, day("1971-03-01T00:44:30Z"));
    assert_eq!(s.metrics().rollup_raw_fallbacks.get(), 2);
    let utc = query(
        &s,
        &RollupQuery {
            interval: Interval::Hour,
            tz: zone("UTC").unwrap(),
            ..q
        },
    );
    assert_eq!(utc.len(), 50);
    assert_eq!(utc[0].value, Some((0..60).sum::<i64>() as f64));
    assert_eq!(s.metrics().rollup_raw_fallbacks.get(), 2);
}
