use crate::support::{error_message, json_of, TestServer};
use serde_json::{json, Value};

fn load(s: &TestServer, stream: &str, n: i64) {
    let pts: Vec<Value> = (0..n)
        .map(|i| json!({"stream_id": stream, "value": i as f64, "timestamp": 1_000_000 + i * 1000}))
        .collect();
    assert_eq!(s.post_json(&json!(pts)).status().as_u16(), 201);
}

fn ts_of(v: &Value) -> Vec<i64> {
    v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| crate::support::ms(p["timestamp"].as_str().unwrap()))
        .collect()
}

#[test]
fn range_bounds_in_every_time_form() {
    let s = TestServer::start();
    load(&s, "h/a", 10);
    // start inclusive, end exclusive, epoch ms
    let (_, v) = s.get_json("/ws/v1/streams/history/h/a?start_time=1002000&end_time=1005000");
    assert_eq!(ts_of(&v), vec![1_002_000, 1_003_000, 1_004_000]);
    assert_eq!(v["count"], 3);
    assert_eq!(v["size"], 1000);
    assert!(v.get("cursor").is_none());
    // ISO 8601
    let (_, v) = s.get_json("/ws/v1/streams/history/h/a?start_time=1970-01-01T00:16:48Z&end_time=1970-01-01T00:16:50.000Z");
    assert_eq!(ts_of(&v), vec![1_008_000, 1_009_000]);
    // Relative: recent points only.
    s.post_json(&json!({"stream_id": "h/a", "value": 99.0}));
    let (_, v) = s.get_json("/ws/v1/streams/history/h/a?start_time=-15m");
    assert_eq!(v["count"], 1);
    assert_eq!(v["list"][0]["value"], 99.0);
    let (_, v) = s.get_json("/ws/v1/streams/history/h/a?start_time=-1d&end_time=-1h");
    assert_eq!(v["count"], 0);
}

#[test]
fn order_size_and_cursor_page_exactly_once_while_points_arrive() {
    let s = TestServer::start();
    load(&s, "h/p", 2500);
    for order in ["asc", "desc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut q =
                format!("/ws/v1/streams/history/h/p?order={order}&size=300&end_time=3500000");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (st, v) = s.get_json(&q);
            assert_eq!(st, 200, "{v}");
            assert!(v["count"].as_u64().unwrap() <= 300);
            seen.extend(ts_of(&v));
            pages += 1;
            // New points arrive between pages, inside and outside the range.
            let t = 500_000 + pages * 7;
            s.post_json(&json!([{"stream_id": "h/p", "value": 0.0, "timestamp": 3_600_000 + pages}, {"stream_id": "h/p", "value": 0.0, "timestamp": t}]));
            match v["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let mut want: Vec<i64> = (0..2500).map(|i| 1_000_000 + i * 1000).collect();
        if order == "desc" {
            want.reverse();
            // Descending, points that arrive below the cursor are still ahead and are seen.
            seen.retain(|t| *t >= 1_000_000);
        }
        assert_eq!(seen, want, "{order}");
        assert_eq!(pages, 9, "{order}");
    }
    let (_, v) = s.get_json("/ws/v1/streams/history/h/p?order=descending&size=1");
    assert_eq!(ts_of(&v), vec![3_600_009]);
    let (_, v) = s.get_json("/ws/v1/streams/history/h/p?order=ascending&size=2");
    assert_eq!(v["count"], 2);
    assert_eq!(v["size"], 2);
}

#[test]
fn server_timeline() {
    let s = TestServer::start();
    s.post_json(&json!([{"stream_id": "h/s", "value": 1.0, "timestamp": 5000}]));
    std::thread::sleep(std::time::Duration::from_millis(5));
    let mid = meterstream_storage::time::now_ms();
    std::thread::sleep(std::time::Duration::from_millis(5));
    s.post_json(&json!([{"stream_id": "h/s", "value": 2.0, "timestamp": 1000}]));
    let (_, v) = s.get_json(&format!(
        "/ws/v1/streams/history/h/s?timeline=server&start_time={mid}"
    ));
    assert_eq!(ts_of(&v), vec![1000]);
    let (_, v) = s.get_json("/ws/v1/streams/history/h/s?timeline=server");
    assert_eq!(ts_of(&v), vec![5000, 1000]);
    let (_, v) = s.get_json("/ws/v1/streams/history/h/s?timeline=server&order=desc&size=1");
    assert_eq!(ts_of(&v), vec![1000]);
    let c = v["cursor"].as_str().unwrap().to_string();
    let (_, v) = s.get_json(&format!(
        "/ws/v1/streams/history/h/s?timeline=server&order=desc&size=1&cursor={c}"
    ));
    assert_eq!(ts_of(&v), vec![5000]);
    assert!(v.get("cursor").is_none());
}

#[test]
fn bad_parameters_are_400_naming_the_parameter() {
    let s = TestServer::start();
    load(&s, "h/b", 3);
    for (q, name) in [
        ("size=0", "size"),
        ("size=100001", "size"),
        ("size=ten", "size"),
        ("order=up", "order"),
        ("timeline=gps", "timeline"),
        ("start_time=yesterday", "start_time"),
        ("end_time=99999999999999999999", "end_time"),
        ("start_time=-5y", "start_time"),
        ("cursor=garbage", "cursor"),
        ("cursor=AQkAAg", "cursor"),
        ("size=5&size=6", "size"),
        ("sise=5", "sise"),
    ] {
        let (st, v) = s.get_json(&format!("/ws/v1/streams/history/h/b?{q}"));
        assert_eq!(st, 400, "{q}: {v}");
        assert!(error_message(&v, 400).contains(name), "{q}: {v}");
    }
    // A cursor from a descending listing used ascending.
    let (_, v) = s.get_json("/ws/v1/streams/history/h/b?order=desc&size=1");
    let c = v["cursor"].as_str().unwrap().to_string();
    let (st, v) = s.get_json(&format!("/ws/v1/streams/history/h/b?order=asc&cursor={c}"));
    assert_eq!(st, 400);
    assert!(error_message(&v, 400).contains("cursor"));
}

#[test]
fn unknown_streams_and_bad_paths() {
    let s = TestServer::start();
    let (st, v) = s.get_json("/ws/v1/streams/history/no/such/stream");
    assert_eq!(st, 404);
    assert!(error_message(&v, 404).contains("no/such/stream"));
    let (st, v) = s.get_json("/ws/v1/streams/history/a//b");
    assert_eq!(st, 400);
    assert!(error_message(&v, 400).contains("empty segment"));
    let (st, v) = s.get_json("/ws/v1/streams/history/a/%2A");
    assert_eq!(st, 400);
    assert!(
        error_message(&v, 400).contains("reserved for patterns"),
        "{v}"
    );
    let r = s.delete("/ws/v1/streams/history/no/such").send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(error_message(&json_of(r), 404).contains("no/such"));
}

#[test]
fn delete_history_by_range() {
    let s = TestServer::start();
    load(&s, "h/d", 10);
    let r = s
        .delete("/ws/v1/streams/history/h/d?start_time=1002000&end_time=1005000")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(json_of(r), json!({"deleted": 3}));
    let got: Vec<i64> = s.history_all("h/d", "").iter().map(|p| p.0).collect();
    assert_eq!(
        got,
        vec![1_000_000, 1_001_000, 1_005_000, 1_006_000, 1_007_000, 1_008_000, 1_009_000]
    );
    let r = s
        .delete("/ws/v1/streams/history/h/d?timeline=server")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = s.delete("/ws/v1/streams/history/h/d").send().unwrap();
    assert_eq!(json_of(r), json!({"deleted": 7}));
    assert!(s.history_all("h/d", "").is_empty());
    // The stream itself remains.
    assert_eq!(s.get_json("/ws/v1/streams/inventory/h/d").0, 200);
}

#[test]
fn stream_ids_with_percent_and_unicode_in_urls() {
    let s = TestServer::start();
    s.post_json(&json!([
        {"stream_id": "a/100%", "value": 1, "timestamp": 1},
        {"stream_id": "a/ü", "value": 2, "timestamp": 1},
        {"stream_id": "a/x%2Fy", "value": 3, "timestamp": 1}
    ]));
    assert_eq!(s.history_all("a/100%25", ""), vec![(1, json!(1.0))]);
    assert_eq!(s.history_all("a/%C3%BC", ""), vec![(1, json!(2.0))]);
    assert_eq!(s.history_all("a/x%252Fy", ""), vec![(1, json!(3.0))]);
    // history_uri is the URL that reads the stream back.
    let (_, v) = s.get_json("/ws/v1/streams/inventory/a/100%25");
    let uri = v["history_uri"].as_str().unwrap().to_string();
    assert_eq!(uri, "/ws/v1/streams/history/a/100%25");
    let (st, h) = s.get_json(&uri);
    assert_eq!((st, h["count"].clone()), (200, json!(1)));
    // A broken escape is a 400 that names the id.
    let (st, v) = s.get_json("/ws/v1/streams/history/a/%FF");
    assert_eq!(st, 400, "{v}");
}

#[test]
fn fields_select_what_each_point_answers() {
    let s = TestServer::start();
    load(&s, "f/a", 3);
    s.post_json(&json!([{"stream_id": "f/a", "value": 9.5, "timestamp": 1_005_000, "quality": 7}]));
    let (st, v) = s.get_json("/ws/v1/streams/history/f/a?fields=timestamp,value");
    assert_eq!(st, 200, "{v}");
    let list = v["list"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(
        list[0],
        json!({"timestamp": "1970-01-01T00:16:40.000Z", "value": 0.0})
    );
    // Only the selected fields, in the usual order whatever order they were asked in.
    let body = s
        .get("/ws/v1/streams/history/f/a?fields=quality,id,value&start_time=1005000")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let last = &v["list"][0];
    assert_eq!(last.as_object().unwrap().len(), 3, "{body}");
    assert_eq!(
        (last["value"].as_f64(), last["quality"].as_i64()),
        (Some(9.5), Some(7))
    );
    let (i, q) = (
        body.find("\"id\"").unwrap(),
        body.find("\"quality\"").unwrap(),
    );
    assert!(i < body.find("\"value\"").unwrap() && body.find("\"value\"").unwrap() < q);
    // Without the parameter, every field as before.
    let (_, v) = s.get_json("/ws/v1/streams/history/f/a?size=1");
    assert!(v["list"][0]["server_timestamp"].is_string() && v["list"][0]["id"].is_string());
    // CSV follows the selection.
    let csv = s
        .get("/ws/v1/streams/history/f/a?format=csv&fields=value,timestamp")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        csv.lines().take(2).collect::<Vec<_>>(),
        ["timestamp,value", "1970-01-01T00:16:40.000Z,0.0"]
    );
    let (st, v) = s.get_json("/ws/v1/streams/history/f/a?fields=timestamp,colour");
    assert_eq!(st, 400);
    let m = error_message(&v, 400);
    assert!(m.contains("fields") && m.contains("colour"), "{m}");
}

#[test]
fn a_page_may_hold_more_than_digis_thousand_points() {
    let s = TestServer::start();
    load(&s, "h/big", 2500);
    // Without `size` a page holds Digi's 1,000.
    let (_, v) = s.get_json("/ws/v1/streams/history/h/big");
    assert_eq!(v["count"], 1000);
    assert!(v["cursor"].is_string());
    // One page of all 2,500, in order, with no cursor after it.
    let (st, v) = s.get_json("/ws/v1/streams/history/h/big?size=100000&fields=timestamp,value");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["count"], 2500);
    assert_eq!(v["size"], 100000);
    assert!(v.get("cursor").is_none());
    let ts = ts_of(&v);
    assert_eq!(
        ts,
        (0..2500).map(|i| 1_000_000 + i * 1000).collect::<Vec<_>>()
    );
    assert_eq!(v["list"][2499]["value"], 2499.0);
}

#[test]
fn columns_layout_answers_one_array_per_field() {
    let s = TestServer::start();
    load(&s, "h/col", 1500);
    let (st, v) = s.get_json(
        "/ws/v1/streams/history/h/col?layout=columns&fields=timestamp,value&size=1000&start_time=1000500",
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["count"], 1000);
    assert!(v.get("list").is_none());
    let ts = v["columns"]["timestamp"].as_array().unwrap();
    let vals = v["columns"]["value"].as_array().unwrap();
    assert_eq!(ts.len(), 1000);
    assert_eq!(ts[0], 1_001_000);
    assert_eq!(vals[0], 1.0);
    assert_eq!(ts[999], 2_000_000);
    assert_eq!(vals[999], 1000.0);
    assert_eq!(v["columns"].as_object().unwrap().len(), 2);
    // The cursor pages on exactly as with rows.
    let c = v["cursor"].as_str().unwrap();
    let (_, v) = s.get_json(&format!(
        "/ws/v1/streams/history/h/col?layout=columns&fields=value&cursor={c}&start_time=1000500"
    ));
    assert_eq!(v["count"], 499);
    assert_eq!(v["columns"]["value"][0], 1001.0);
    assert!(v.get("cursor").is_none());
    for (q, name) in [
        ("layout=wide", "layout"),
        ("layout=columns&format=csv", "layout"),
    ] {
        let (st, v) = s.get_json(&format!("/ws/v1/streams/history/h/col?{q}"));
        assert_eq!(st, 400, "{q}: {v}");
        assert!(error_message(&v, 400).contains(name), "{q}: {v}");
    }
}
