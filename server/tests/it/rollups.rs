use crate::support::{error_message, TestServer};
use serde_json::{json, Value};

fn vals(v: &Value) -> Vec<(String, Value)> {
    v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["timestamp"].as_str().unwrap().to_string(),
                i["value"].clone(),
            )
        })
        .collect()
}

fn load(s: &TestServer) {
    // Minute 0: 10, 20; minute 2: 30, 40 (2026-01-01T00:00Z onwards).
    let base = 1_767_225_600_000i64;
    s.post_json(&json!([
        {"stream_id": "r/v", "value": 10.0, "timestamp": base},
        {"stream_id": "r/v", "value": 20.0, "timestamp": base + 30_000},
        {"stream_id": "r/v", "value": 30.0, "timestamp": base + 120_000},
        {"stream_id": "r/v", "value": 40.0, "timestamp": base + 150_000},
        {"stream_id": "r/s", "value": "on", "timestamp": base}
    ]));
}

#[test]
fn every_method_over_minutes() {
    let s = TestServer::start();
    load(&s);
    let q = |m: &str| {
        s.get_json(&format!(
            "/ws/v1/streams/rollups/r/v?interval=1m&method={m}"
        ))
        .1
    };
    let first = |m: &str| vals(&q(m)).into_iter().map(|(_, v)| v).collect::<Vec<_>>();
    assert_eq!(first("sum"), vec![json!(30.0), json!(70.0)]);
    assert_eq!(first("average"), vec![json!(15.0), json!(35.0)]);
    assert_eq!(first("min"), vec![json!(10.0), json!(30.0)]);
    assert_eq!(first("max"), vec![json!(20.0), json!(40.0)]);
    assert_eq!(first("count"), vec![json!(2.0), json!(2.0)]);
    assert_eq!(first("first"), vec![json!(10.0), json!(30.0)]);
    assert_eq!(first("last"), vec![json!(20.0), json!(40.0)]);
    assert_eq!(first("increase"), vec![json!(10.0), json!(20.0)]);
    let sd = first("standarddev");
    assert!((sd[0].as_f64().unwrap() - 7.0710678118654755).abs() < 1e-12);
    let v = q("sum");
    assert_eq!(
        v["list"][0],
        json!({"stream_id": "r/v", "timestamp": "2026-01-01T00:00:00.000Z", "value": 30.0})
    );
    assert_eq!(
        (v["count"].clone(), v["size"].clone()),
        (json!(2), json!(1000))
    );
}

#[test]
fn fill_order_size_cursor_and_ranges() {
    let s = TestServer::start();
    load(&s);
    let (_, v) = s.get_json("/ws/v1/streams/rollups/r/v?interval=1m&method=count&fill=null&start_time=2026-01-01T00:00:00Z&end_time=2026-01-01T00:04:00Z");
    let got: Vec<Value> = vals(&v).into_iter().map(|x| x.1).collect();
    assert_eq!(got, vec![json!(2.0), Value::Null, json!(2.0), Value::Null]);
    let (_, v) = s.get_json("/ws/v1/streams/rollups/r/v?interval=1m&method=max&fill=previous&start_time=2026-01-01T00:00:00Z&end_time=2026-01-01T00:04:00Z&order=desc&size=3");
    let got: Vec<Value> = vals(&v).into_iter().map(|x| x.1).collect();
    assert_eq!(got, vec![json!(40.0), json!(40.0), json!(20.0)]);
    let c = v["cursor"].as_str().unwrap().to_string();
    let (_, v) = s.get_json(&format!("/ws/v1/streams/rollups/r/v?interval=1m&method=max&fill=previous&start_time=2026-01-01T00:00:00Z&end_time=2026-01-01T00:04:00Z&order=desc&size=3&cursor={c}"));
    assert_eq!(
        vals(&v),
        vec![("2026-01-01T00:00:00.000Z".to_string(), json!(20.0))]
    );
    assert!(v.get("cursor").is_none());
    let (_, v) = s.get_json("/ws/v1/streams/rollups/r/v?interval=1m&method=sum&fill=zero&start_time=2026-01-01T00:01:00Z&end_time=2026-01-01T00:02:00Z");
    assert_eq!(
        vals(&v),
        vec![("2026-01-01T00:01:00.000Z".to_string(), json!(0.0))]
    );
    // Points are clipped to the range; the interval keeps its own start.
    let (_, v) = s.get_json(
        "/ws/v1/streams/rollups/r/v?interval=hour&method=sum&start_time=2026-01-01T00:00:10Z",
    );
    assert_eq!(
        vals(&v),
        vec![("2026-01-01T00:00:00.000Z".to_string(), json!(90.0))]
    );
    // Increase counts from the last value before the range.
    let (_, v) = s.get_json(
        "/ws/v1/streams/rollups/r/v?interval=1m&method=increase&start_time=2026-01-01T00:02:00Z",
    );
    assert_eq!(
        vals(&v),
        vec![("2026-01-01T00:02:00.000Z".to_string(), json!(20.0))]
    );
}

#[test]
fn time_zones_set_day_and_hour_boundaries() {
    let s = TestServer::start();
    // One point per hour across Sofia's spring-forward day (2026-03-29).
    let pts: Vec<Value> = (0..48)
        .map(|h| json!({"stream_id": "tz/v", "value": 1.0, "timestamp": 1_774_656_000_000i64 + h * 3_600_000}))
        .collect();
    s.post_json(&json!(pts));
    let (_, v) =
        s.get_json("/ws/v1/streams/rollups/tz/v?interval=day&method=count&timezone=Europe/Sofia");
    let days = vals(&v);
    assert!(
        days.contains(&("2026-03-28T22:00:00.000Z".to_string(), json!(23.0))),
        "{days:?}"
    );
    let (_, v) = s.get_json(
        "/ws/v1/streams/rollups/tz/v?interval=hour&method=count&timezone=Asia/Kolkata&size=1",
    );
    assert_eq!(vals(&v)[0].0, "2026-03-27T23:30:00.000Z");
    let (_, v) = s.get_json("/ws/v1/streams/rollups/tz/v?interval=week&method=count&timezone=UTC");
    assert_eq!(vals(&v)[0].0, "2026-03-23T00:00:00.000Z");
}

#[test]
fn bad_input_is_a_400_naming_it() {
    let s = TestServer::start();
    load(&s);
    for (q, word) in [
        ("interval=2h", "interval"),
        ("method=median", "method"),
        ("timezone=Mars/Olympus", "timezone"),
        ("fill=linear", "fill"),
        (
            "start_time=2026-01-02T00:00:00Z&end_time=2026-01-01T00:00:00Z",
            "end_time",
        ),
        ("size=0", "size"),
        ("cursor=zzz", "cursor"),
        ("aggregate=total", "aggregate"),
        (
            "interval=1m&fill=null&start_time=0&end_time=9999999999999",
            "narrow",
        ),
    ] {
        let (st, v) = s.get_json(&format!("/ws/v1/streams/rollups/r/v?{q}"));
        assert_eq!(st, 400, "{q}: {v}");
        assert!(error_message(&v, 400).contains(word), "{q}: {v}");
    }
    let (st, v) = s.get_json("/ws/v1/streams/rollups/r/s");
    assert_eq!(st, 400);
    assert!(
        error_message(&v, 400).contains("only numeric streams roll up"),
        "{v}"
    );
    let (st, v) = s.get_json("/ws/v1/streams/rollups/r/none");
    assert_eq!(st, 404);
    assert!(error_message(&v, 404).contains("r/none"), "{v}");
    let (st, v) = s.get_json("/ws/v1/streams/rollups/r//v");
    assert_eq!(st, 400);
    assert!(error_message(&v, 400).contains("empty segment"));
}

fn fleet(s: &TestServer) {
    // Three meters' active power; m3 has no point in the second minute.
    let base = 1_767_225_600_000i64;
    let mut pts = Vec::new();
    for (m, vals) in [
        ("m1", [1.0, 2.0]),
        ("m2", [10.0, 20.0]),
        ("m3", [100.0, f64::NAN]),
    ] {
        for (k, v) in vals.iter().enumerate() {
            if !v.is_nan() {
                pts.push(json!({"stream_id": format!("gw/{m}/p"), "value": v, "timestamp": base + k as i64 * 60_000}));
            }
        }
        pts.push(json!({"stream_id": format!("gw/{m}/status"), "value": "ok", "timestamp": base}));
    }
    s.post_json(&json!(pts));
}

#[test]
fn patterns_give_one_series_per_stream() {
    let s = TestServer::start();
    fleet(&s);
    let (st, v) = s.get_json("/ws/v1/streams/rollups/*/*/p?interval=1m&method=sum");
    assert_eq!(st, 200, "{v}");
    let rows: Vec<(String, f64)> = v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["stream_id"].as_str().unwrap().to_string(),
                i["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("gw/m1/p".to_string(), 1.0),
            ("gw/m1/p".to_string(), 2.0),
            ("gw/m2/p".to_string(), 10.0),
            ("gw/m2/p".to_string(), 20.0),
            ("gw/m3/p".to_string(), 100.0),
        ]
    );
    // Non-numeric matches are left out.
    let (_, v) = s.get_json("/ws/v1/streams/rollups/gw/*/status?interval=1m&method=count");
    assert_eq!(v["count"], 0);
    // Paging by (stream, time), both orders.
    let mut seen = Vec::new();
    let mut q =
        "/ws/v1/streams/rollups/gw/*/p?interval=1m&method=sum&order=desc&size=2".to_string();
    loop {
        let (_, v) = s.get_json(&q);
        for i in v["list"].as_array().unwrap() {
            seen.push((
                i["stream_id"].as_str().unwrap().to_string(),
                i["value"].as_f64().unwrap(),
            ));
        }
        match v["cursor"].as_str() {
            Some(c) => {
                q = format!(
                "/ws/v1/streams/rollups/gw/*/p?interval=1m&method=sum&order=desc&size=2&cursor={c}"
            )
            }
            None => break,
        }
    }
    let vals: Vec<f64> = seen.iter().map(|x| x.1).collect();
    assert_eq!(vals, vec![2.0, 1.0, 20.0, 10.0, 100.0]);
}

#[test]
fn columns_layout_gives_one_object_per_stream() {
    let s = TestServer::start();
    fleet(&s);
    let base = 1_767_225_600_000i64;
    let (st, v) = s.get_json("/ws/v1/streams/rollups/*/*/p?interval=1m&method=sum&layout=columns");
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"count": 5, "size": 1000, "series": [
            {"stream_id": "gw/m1/p", "timestamp": [base, base + 60_000], "value": [1.0, 2.0]},
            {"stream_id": "gw/m2/p", "timestamp": [base, base + 60_000], "value": [10.0, 20.0]},
            {"stream_id": "gw/m3/p", "timestamp": [base], "value": [100.0]},
        ]})
    );
    // Pages split a stream's values where rows would; the cursor is the same.
    let (_, v) =
        s.get_json("/ws/v1/streams/rollups/*/*/p?interval=1m&method=sum&layout=columns&size=3");
    assert_eq!(
        v["series"][1],
        json!({"stream_id": "gw/m2/p", "timestamp": [base], "value": [10.0]})
    );
    let c = v["cursor"].as_str().unwrap();
    let (_, v) = s.get_json(&format!(
        "/ws/v1/streams/rollups/*/*/p?interval=1m&method=sum&layout=columns&size=3&cursor={c}"
    ));
    assert_eq!(
        v["series"][0],
        json!({"stream_id": "gw/m2/p", "timestamp": [base + 60_000], "value": [20.0]})
    );
    assert_eq!(v["count"], 2);
    for q in ["layout=grid", "layout=columns&format=csv"] {
        let (st, v) = s.get_json(&format!("/ws/v1/streams/rollups/gw/m1/p?{q}"));
        assert_eq!(st, 400, "{q}: {v}");
        assert!(error_message(&v, 400).contains("layout"), "{q}: {v}");
    }
}

#[test]
fn aggregate_combines_streams_per_interval() {
    let s = TestServer::start();
    fleet(&s);
    let get = |agg: &str, extra: &str| {
        let (st, v) = s.get_json(&format!(
            "/ws/v1/streams/rollups/*/*/p?interval=1m&method=sum&aggregate={agg}{extra}"
        ));
        assert_eq!(st, 200, "{v}");
        v
    };
    let v = get("sum", "");
    assert_eq!(
        vals(&v),
        vec![
            ("2026-01-01T00:00:00.000Z".to_string(), json!(111.0)),
            ("2026-01-01T00:01:00.000Z".to_string(), json!(22.0))
        ]
    );
    assert_eq!(v["list"][0]["stream_id"], "*/*/p");
    // m3 has no point in the second minute: left out of that interval's average.
    let v = get("average", "");
    assert_eq!(vals(&v)[1].1, json!(11.0));
    assert_eq!(vals(&get("min", ""))[0].1, json!(1.0));
    assert_eq!(vals(&get("max", ""))[1].1, json!(20.0));
    let v = get(
        "sum",
        "&fill=zero&start_time=2026-01-01T00:00:00Z&end_time=2026-01-01T00:03:00Z",
    );
    assert_eq!(
        vals(&v).into_iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![json!(111.0), json!(22.0), json!(0.0)]
    );
    let v = get("sum", "&order=desc&size=1");
    assert_eq!(vals(&v)[0].1, json!(22.0));
    assert!(v["cursor"].is_string());
}

#[test]
fn bad_patterns_and_aggregates_are_400() {
    let s = TestServer::start();
    fleet(&s);
    for (q, word) in [
        ("*//p", "empty segment"),
        ("gw*/m1/p", "whole segment"),
        ("*/*/p?aggregate=median", "aggregate"),
    ] {
        let (st, v) = s.get_json(&format!("/ws/v1/streams/rollups/{q}"));
        assert_eq!(st, 400, "{q}: {v}");
        assert!(error_message(&v, 400).contains(word), "{q}: {v}");
    }
}

#[test]
fn pattern_pages_cross_many_streams_in_order() {
    // More streams than one batch of the pattern listing (256), with text streams among them.
    let s = TestServer::start();
    let mut pts = Vec::new();
    for i in 0..300 {
        pts.push(json!({"stream_id": format!("b/{i:03}/p"), "timestamp": "2026-01-01T00:00:00Z", "value": i}));
        pts.push(json!({"stream_id": format!("b/{i:03}/p"), "timestamp": "2026-01-01T00:01:00Z", "value": i + 1000}));
        if i % 50 == 0 {
            pts.push(json!({"stream_id": format!("b/{i:03}t/p"), "timestamp": "2026-01-01T00:00:00Z", "value": "on"}));
        }
    }
    assert!(s.post_json(&json!(pts)).status().is_success());
    let mut seen: Vec<(String, f64)> = Vec::new();
    let base = "/ws/v1/streams/rollups/b/*/p?interval=1m&method=sum&size=7";
    let mut q = base.to_string();
    for _ in 0..1000 {
        let (st, v) = s.get_json(&q);
        assert_eq!(st, 200, "{v}");
        assert!(v["count"].as_u64().unwrap() <= 7);
        for i in v["list"].as_array().unwrap() {
            seen.push((
                i["stream_id"].as_str().unwrap().to_string(),
                i["value"].as_f64().unwrap(),
            ));
        }
        match v["cursor"].as_str() {
            Some(c) => q = format!("{base}&cursor={c}"),
            None => break,
        }
    }
    let want: Vec<(String, f64)> = (0..300)
        .flat_map(|i| {
            [
                (format!("b/{i:03}/p"), i as f64),
                (format!("b/{i:03}/p"), (i + 1000) as f64),
            ]
        })
        .collect();
    assert_eq!(seen, want);
}
