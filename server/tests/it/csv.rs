use crate::support::{error_message, TestServer};
use serde_json::{json, Value};

#[test]
fn history_as_csv_streams_every_page() {
    let s = TestServer::start();
    let pts: Vec<Value> = (0..25_000)
        .map(|i| json!({"stream_id": "c/v", "value": i as f64 / 4.0, "timestamp": 1_000 + i}))
        .collect();
    assert_eq!(s.post_json(&json!(pts)).status().as_u16(), 201);
    let r = s
        .get("/ws/v1/streams/history/c/v?format=csv&size=10")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = r.text().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "id,stream_id,timestamp,server_timestamp,value,quality,location,description"
    );
    assert_eq!(lines.len(), 25_001);
    let row: Vec<&str> = lines[3].split(',').collect();
    assert_eq!(
        (row[1], row[2], row[4]),
        ("c/v", "1970-01-01T00:00:01.002Z", "0.5")
    );
    assert_eq!(lines[25_000].split(',').nth(4), Some("6249.75"));
    // Accept: text/csv works too; format=json wins over it.
    let r = s
        .get("/ws/v1/streams/history/c/v?end_time=1002")
        .header("accept", "text/csv")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap().lines().count(), 3);
    let r = s
        .get("/ws/v1/streams/history/c/v?end_time=1002&format=json")
        .header("accept", "text/csv")
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["count"], 2);
}

#[test]
fn csv_quotes_text_and_reports_errors_before_streaming() {
    let s = TestServer::start();
    s.post_json(
        &json!({"stream_id": "c/s", "value": "a, \"quoted\" word", "timestamp": 5, "quality": 2}),
    );
    let text = s
        .get("/ws/v1/streams/history/c/s?format=csv")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let line = text.lines().nth(1).unwrap();
    assert!(line.contains("\"a, \"\"quoted\"\" word\",2,,"), "{line}");
    let (st, v) = s.get_json("/ws/v1/streams/history/c/s?format=xml");
    assert_eq!(st, 400);
    assert!(error_message(&v, 400).contains("format"));
    let (st, v) = s.get_json("/ws/v1/streams/history/c/none?format=csv");
    assert_eq!(st, 404);
    assert!(error_message(&v, 404).contains("c/none"), "{v}");
}

#[test]
fn rollups_as_csv() {
    let s = TestServer::start();
    s.post_json(&json!([
        {"stream_id": "g/m1/p", "value": 1.0, "timestamp": 0},
        {"stream_id": "g/m2/p", "value": 2.0, "timestamp": 60_000}
    ]));
    let text = s
        .get("/ws/v1/streams/rollups/g/*/p?interval=1m&method=sum&format=csv")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(text, "stream_id,timestamp,value\ng/m1/p,1970-01-01T00:00:00.000Z,1\ng/m2/p,1970-01-01T00:01:00.000Z,2\n");
    let text = s.get("/ws/v1/streams/rollups/g/*/p?interval=1m&method=sum&aggregate=sum&fill=null&start_time=0&end_time=180000").header("accept", "text/csv").send().unwrap().text().unwrap();
    assert_eq!(text, "stream_id,timestamp,value\ng/*/p,1970-01-01T00:00:00.000Z,1\ng/*/p,1970-01-01T00:01:00.000Z,2\ng/*/p,1970-01-01T00:02:00.000Z,\n");
}
