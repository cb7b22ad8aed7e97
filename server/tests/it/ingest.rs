use crate::support::{error_message, json_of, ms, TestServer};
use serde_json::{json, Value};

#[test]
fn single_point_and_list_are_stored_with_their_fields() {
    let s = TestServer::start();
    let r = s.post_json(&json!({
        "stream_id": "gw1/pst04/voltage_l1", "value": 231.02, "timestamp": "2026-01-01T00:00:00.123Z",
        "stream_type": "DOUBLE", "stream_units": "V", "quality": 3, "location": "47.37,8.54,408",
        "description": "first"
    }));
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(json_of(r), json!({"count": 1}));
    let (_, v) = s.get_json("/ws/v1/streams/history/gw1/pst04/voltage_l1");
    let p = &v["list"][0];
    assert_eq!(p["value"], json!(231.02));
    assert_eq!(p["timestamp"], "2026-01-01T00:00:00.123Z");
    assert_eq!(p["quality"], 3);
    assert_eq!(p["location"], "47.37,8.54,408");
    assert_eq!(p["description"], "first");
    assert_eq!(p["stream_id"], "gw1/pst04/voltage_l1");
    assert_eq!(p["id"].as_str().unwrap().len(), 36);
    let (_, st) = s.get_json("/ws/v1/streams/inventory/gw1/pst04/voltage_l1");
    assert_eq!(
        (st["type"].as_str(), st["units"].as_str()),
        (Some("DOUBLE"), Some("V"))
    );
}

#[test]
fn missing_timestamp_means_now_and_sub_ms_is_truncated() {
    let s = TestServer::start();
    let before = meterstream_storage::time::now_ms();
    s.post_json(&json!([{"stream_id": "a/now", "value": 1}, {"stream_id": "a/frac", "value": 2, "timestamp": 1000.9},
        {"stream_id": "a/iso", "value": 3, "timestamp": "2026-01-01T00:00:00.123999+00:00"}]));
    let after = meterstream_storage::time::now_ms();
    let t = s.history_all("a/now", "")[0].0;
    assert!(t >= before && t <= after, "{t} not in {before}..{after}");
    assert_eq!(s.history_all("a/frac", "")[0].0, 1000);
    assert_eq!(
        s.history_all("a/iso", "")[0].0,
        ms("2026-01-01T00:00:00.123Z")
    );
}

#[test]
fn doubles_come_back_bit_for_bit() {
    let s = TestServer::start();
    // Seventeen-digit doubles that a parser without float_roundtrip gets wrong by one ulp.
    let vals: [f64; 8] = [
        0.1 + 0.2,
        f64::from_bits(0x000F_FFFF_FFFF_FFFF), // 2.2250738585072011e-308
        1.7976931348623157e308,
        5e-324,
        9007199254740993.0,
        -0.0,
        231.02,
        123456.78901234567,
    ];
    let body: Vec<Value> = vals
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"stream_id": "x/d", "value": v, "timestamp": i as i64 + 1}))
        .collect();
    // Send as raw text so the literal digits are what the server parses.
    let text = format!(
        "[{}]",
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!(
                "{{\"stream_id\":\"x/d\",\"value\":{v:?},\"timestamp\":{}}}",
                i + 1
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(body.len(), vals.len());
    let r = s.post_raw("application/json", text.into_bytes());
    assert_eq!(r.status().as_u16(), 201);
    let got = s.history_all("x/d", "");
    for ((_, g), want) in got.iter().zip(vals) {
        let text = g.to_string();
        let back: f64 = text.parse().unwrap();
        assert_eq!(
            back.to_bits(),
            want.to_bits(),
            "{want:?} came back as {text}"
        );
    }
}

#[test]
fn retried_batches_replace_instead_of_duplicating() {
    let s = TestServer::start();
    let batch = json!([{"stream_id": "r/v", "value": 1.0, "timestamp": 1000}, {"stream_id": "r/v", "value": 2.0, "timestamp": 2000}]);
    for _ in 0..3 {
        assert_eq!(s.post_json(&batch).status().as_u16(), 201);
    }
    s.post_json(&json!({"stream_id": "r/v", "value": 5.0, "timestamp": 1000}));
    assert_eq!(
        s.history_all("r/v", ""),
        vec![(1000, json!(5.0)), (2000, json!(2.0))]
    );
    // The latest value only moves forward: an old point does not replace it.
    s.post_json(&json!({"stream_id": "r/v", "value": 9.0, "timestamp": 500}));
    let (_, st) = s.get_json("/ws/v1/streams/inventory/r/v");
    assert_eq!(
        (st["value"].clone(), st["timestamp"].clone()),
        (json!(2.0), json!("1970-01-01T00:00:02.000Z"))
    );
}

#[test]
fn every_stream_type_round_trips() {
    let s = TestServer::start();
    let cases = [
        ("INTEGER", json!(-2147483648i64), json!(-2147483648i64)),
        (
            "LONG",
            json!(9007199254740993i64),
            json!(9007199254740993i64),
        ),
        ("FLOAT", json!(0.5), json!(0.5)),
        ("DOUBLE", json!(-1e-300), json!(-1e-300)),
        ("STRING", json!(""), json!("")),
        ("BINARY", json!("AAEC/w=="), json!("AAEC/w==")),
        (
            "JSON",
            json!({"a": [1, 2, {"b": null}]}),
            json!({"a": [1, 2, {"b": null}]}),
        ),
        (
            "GEOJSON",
            json!({"type": "Point", "coordinates": [8.5, 47.3]}),
            json!({"type": "Point", "coordinates": [8.5, 47.3]}),
        ),
    ];
    for (ty, v, want) in cases {
        let path = format!("types/{}", ty.to_lowercase());
        let r =
            s.post_json(&json!({"stream_id": path, "stream_type": ty, "value": v, "timestamp": 1}));
        assert_eq!(r.status().as_u16(), 201, "{ty}: {}", json_of(r));
        let got = s.history_all(&path, "");
        assert_eq!(got, vec![(1, want)], "{ty}");
        let (_, st) = s.get_json(&format!("/ws/v1/streams/inventory/{path}"));
        assert_eq!(st["type"], ty);
    }
    // Inference: a number makes a DOUBLE stream, a string a STRING stream.
    s.post_json(
        &json!([{"stream_id": "inf/n", "value": 3}, {"stream_id": "inf/s", "value": "on"}]),
    );
    assert_eq!(
        s.get_json("/ws/v1/streams/inventory/inf/n").1["type"],
        "DOUBLE"
    );
    assert_eq!(
        s.get_json("/ws/v1/streams/inventory/inf/s").1["type"],
        "STRING"
    );
}

#[test]
fn bad_items_get_207_with_their_index_and_good_items_are_stored() {
    let s = TestServer::start();
    s.post_json(
        &json!({"stream_id": "b/int", "stream_type": "INTEGER", "value": 1, "timestamp": 1}),
    );
    let r = s.post_json(&json!([
        {"stream_id": "b/int", "value": 2, "timestamp": 2},
        {"stream_id": "b/int", "value": "two", "timestamp": 3},
        {"stream_id": "b//bad", "value": 1},
        {"stream_id": "b/int", "value": 4, "timestamp": 253402300800000i64},
        {"stream_id": "b/int", "value": 5.5, "timestamp": 5},
        {"stream_id": "b/int", "value": 6, "timestamp": 6},
        {"stream_id": "b/x y", "value": 1},
        {"stream_id": "b/int", "value": 1, "quality": "high"}
    ]));
    assert_eq!(r.status().as_u16(), 207);
    let v = json_of(r);
    assert_eq!(v["count"], 2);
    let errs = v["errors"].as_array().unwrap();
    let idx: Vec<i64> = errs.iter().map(|e| e["index"].as_i64().unwrap()).collect();
    assert_eq!(idx, vec![1, 2, 3, 4, 6, 7]);
    assert!(errs.iter().all(|e| e["error_status"] == 400));
    let msgs: Vec<&str> = errs
        .iter()
        .map(|e| e["error_message"].as_str().unwrap())
        .collect();
    assert!(
        msgs[0].contains("\"two\"") && msgs[0].contains("INTEGER"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].contains("b//bad") && msgs[1].contains("empty segment"),
        "{}",
        msgs[1]
    );
    assert!(msgs[2].contains("supported range"), "{}", msgs[2]);
    assert!(msgs[3].contains("5.5"), "{}", msgs[3]);
    assert!(msgs[4].contains("whitespace"), "{}", msgs[4]);
    assert!(msgs[5].contains("quality"), "{}", msgs[5]);
    let got: Vec<i64> = s.history_all("b/int", "").iter().map(|p| p.0).collect();
    assert_eq!(got, vec![1, 2, 6]);
}

#[test]
fn all_bad_items_are_a_400_that_stores_nothing() {
    let s = TestServer::start();
    let r =
        s.post_json(&json!([{"stream_id": "z/a", "value": true}, {"stream_id": "/z", "value": 1}]));
    assert_eq!(r.status().as_u16(), 400);
    let v = json_of(r);
    assert!(error_message(&v, 400).contains("no item was stored"));
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    let r = s.post_json(&json!({"stream_id": "z/a", "value": "x", "stream_type": "LONG"}));
    assert_eq!(r.status().as_u16(), 400);
    assert!(error_message(&json_of(r), 400).contains("LONG"));
    let (st, v) = s.get_json("/ws/v1/streams/inventory/z/a");
    assert_eq!(st, 404, "{v}");
}

#[test]
fn malformed_bodies_are_rejected_whole() {
    let s = TestServer::start();
    for (ct, body) in [
        (
            "application/json",
            b"{\"stream_id\": \"m/a\", \"value\": 1".to_vec(),
        ),
        (
            "application/json",
            b"[{\"stream_id\": \"m/a\", \"value\": 1}, 7]".to_vec(),
        ),
        ("application/json", b"\"just a string\"".to_vec()),
        ("application/msgpack", vec![0xc1, 0x00]),
        ("application/msgpack", vec![0x92, 0x81, 0xa9]),
        (
            "application/msgpack",
            rmp_serde::to_vec_named(&json!({"groups": [{"stream_id": "m/a", "points": [[1]]}]}))
                .unwrap(),
        ),
        (
            "application/msgpack",
            rmp_serde::to_vec_named(&json!({"groups": "no"})).unwrap(),
        ),
    ] {
        let r = s.post_raw(ct, body.clone());
        assert_eq!(r.status().as_u16(), 400, "{body:?}");
        let m = error_message(&json_of(r), 400);
        assert!(m.contains("JSON") || m.contains("MessagePack"), "{m}");
    }
    let r = s.post_raw("text/csv", b"1,2".to_vec());
    assert_eq!(r.status().as_u16(), 415);
    assert!(error_message(&json_of(r), 415).contains("text/csv"));
    assert_eq!(s.get_json("/ws/v1/streams/inventory/m/a").0, 404);
}

#[test]
fn oversized_bodies_are_413() {
    let s = TestServer::start_with(|c| c.body_limit = 4096);
    let big: Vec<Value> = (0..200)
        .map(|i| json!({"stream_id": "big/a", "value": i, "timestamp": i}))
        .collect();
    let r = s.post_json(&json!(big));
    assert_eq!(r.status().as_u16(), 413);
    assert!(error_message(&json_of(r), 413).contains("4096"));
    assert_eq!(s.get_json("/ws/v1/streams/inventory/big/a").0, 404);
    // Just under the limit is fine.
    let small: Vec<Value> = (0..20)
        .map(|i| json!({"stream_id": "big/a", "value": i, "timestamp": i}))
        .collect();
    assert_eq!(s.post_json(&json!(small)).status().as_u16(), 201);
}

#[test]
fn msgpack_single_list_and_compact_shapes() {
    let s = TestServer::start();
    let one =
        rmp_serde::to_vec_named(&json!({"stream_id": "mp/one", "value": 1.25, "timestamp": 10}))
            .unwrap();
    assert_eq!(
        s.post_raw("application/msgpack", one).status().as_u16(),
        201
    );
    let list = rmp_serde::to_vec_named(&json!([{"stream_id": "mp/list", "value": "a", "timestamp": 1}, {"stream_id": "mp/list", "value": "b", "timestamp": 2}])).unwrap();
    assert_eq!(
        s.post_raw("application/x-msgpack", list).status().as_u16(),
        201
    );
    let compact = rmp_serde::to_vec_named(&json!({"groups": [
        {"stream_id": "mp/c/v", "stream_type": "FLOAT", "stream_units": "V", "points": [[1000, 230.5], [2000, 231.0, {"quality": 7}], [null, 1.0]]},
        {"stream_id": "mp/c/i", "points": [[1000, 5], [-1, 6], ["1970-01-01T00:00:03Z", 7]]}
    ]}))
    .unwrap();
    let r = s.post_raw("application/msgpack", compact);
    assert_eq!(r.status().as_u16(), 207);
    let v = json_of(r);
    assert_eq!(v["count"], 5);
    assert_eq!(v["errors"][0]["index"], 4);
    assert_eq!(s.history_all("mp/one", ""), vec![(10, json!(1.25))]);
    assert_eq!(
        s.history_all("mp/list", ""),
        vec![(1, json!("a")), (2, json!("b"))]
    );
    let c = s.history_all("mp/c/v", "");
    assert_eq!(&c[..2], &[(1000, json!(230.5)), (2000, json!(231.0))]);
    assert_eq!(c.len(), 3);
    let (_, st) = s.get_json("/ws/v1/streams/inventory/mp/c/v");
    assert_eq!(
        (st["type"].as_str(), st["units"].as_str()),
        (Some("FLOAT"), Some("V"))
    );
    assert_eq!(
        s.history_all("mp/c/i", ""),
        vec![(1000, json!(5.0)), (3000, json!(7.0))]
    );
    let (_, h) = s.get_json("/ws/v1/streams/history/mp/c/v?end_time=2001");
    assert_eq!(h["list"][1]["quality"], 7);
}

#[test]
fn unknown_query_parameters_are_named() {
    let s = TestServer::start();
    let r = s
        .client
        .post(format!("{}/ws/v1/streams/history?colour=red", s.url))
        .json(&json!([]))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(error_message(&json_of(r), 400).contains("colour"));
}
