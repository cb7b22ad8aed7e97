//! The engine against a model: random writes (in and out of order, replacing), range deletes and
//! reopenings, then paging in both directions with random page sizes must give exactly the model.

use crate::engine::{group, small_config};
use meterstream_storage::{Engine, HistoryQuery, Order, Store, Timeline};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<(i64, f64)>),
    Delete(i64, i64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((0i64..2000, -1e6f64..1e6), 1..120).prop_map(Op::Write),
        1 => (0i64..2000, 0i64..400).prop_map(|(a, l)| Op::Delete(a, a + l)),
        1 => Just(Op::Reopen),
    ]
}

fn page_through(s: &dyn Store, order: Order, limit: usize, from: i64, to: i64) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let p = s
            .history(
                "m",
                &HistoryQuery {
                    from,
                    to,
                    order,
                    timeline: Timeline::Client,
                    limit,
                    cursor,
                },
            )
            .unwrap();
        assert!(p.items.len() <= limit);
        out.extend(
            p.items
                .iter()
                .map(|p| (p.timestamp, p.value.as_f64().unwrap())),
        );
        match p.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
    panic!("paging did not end");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..25), limit in 1usize..70, from in 0i64..500, len in 1i64..2500) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Engine::open(small_config(dir.path())).unwrap();
        let mut model: BTreeMap<i64, f64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Write(pts) => {
                    s.write(vec![group("m", &pts)], 1).unwrap();
                    for (t, v) in pts { model.insert(t, v); }
                }
                Op::Delete(a, b) => {
                    if model.is_empty() { continue; }
                    let n = s.delete_history("m", a, b).unwrap();
                    let before = model.len();
                    model.retain(|t, _| *t < a || *t >= b);
                    prop_assert_eq!(n as usize, before - model.len());
                }
                Op::Reopen => {
                    s.close();
                    drop(s);
                    s = Engine::open(small_config(dir.path())).unwrap();
                }
            }
        }
        if model.is_empty() { return Ok(()); }
        let to = from + len;
        let want: Vec<(i64, f64)> = model.range(from..to).map(|(t, v)| (*t, *v)).collect();
        prop_assert_eq!(page_through(&s, Order::Asc, limit, from, to), want.clone());
        let mut rev = want;
        rev.reverse();
        prop_assert_eq!(page_through(&s, Order::Desc, limit, from, to), rev);
        let cur = s.stream("m").unwrap().current.unwrap();
        let (t, v) = model.iter().next_back().unwrap();
        prop_assert_eq!((cur.timestamp, cur.value.as_f64().unwrap()), (*t, *v));
    }
}
