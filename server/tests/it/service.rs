use crate::support::{error_message, TestServer};
use serde_json::json;

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name_and_labels} in metrics"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn metrics_count_what_happened() {
    let s = TestServer::start();
    s.post_json(&json!([{"stream_id": "m/a", "value": 1.0, "timestamp": 1}, {"stream_id": "m/b", "value": 2.0, "timestamp": 1}, {"stream_id": "m/b", "value": "x"}]));
    s.get_json("/ws/v1/streams/history/m/a");
    s.get_json("/ws/v1/streams/history/m/zz");
    let text = s.get("/metrics").send().unwrap().text().unwrap();
    assert_eq!(metric(&text, "meterstream_ingest_points_total"), 2.0);
    assert_eq!(
        metric(&text, "meterstream_ingest_rejected_points_total"),
        1.0
    );
    assert_eq!(metric(&text, "meterstream_streams"), 2.0);
    assert_eq!(
        metric(&text, "meterstream_storage_points_written_total"),
        2.0
    );
    assert_eq!(
        metric(&text, "meterstream_http_requests_total{method=\"GET\",route=\"/ws/v1/streams/history/{stream_id:.*}\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "meterstream_http_requests_total{method=\"POST\",route=\"/ws/v1/streams/history\",status=\"207\"}"),
        1.0
    );
    assert!(metric(&text, "meterstream_storage_flush_duration_seconds_count") >= 1.0);
    assert!(metric(&text, "meterstream_storage_disk_bytes") > 0.0);
    assert!(text.contains("meterstream_http_request_duration_seconds_bucket"));
}

#[test]
fn health_and_unknown_routes() {
    let s = TestServer::start();
    let (st, v) = s.get_json("/health");
    assert_eq!((st, v), (200, json!({"status": "ok"})));
    // Every answer says how long the server took (W3C Server-Timing), errors included.
    for path in ["/health", "/ws/v1/nothing"] {
        let r = s.get(path).send().unwrap();
        let t = r.headers()["server-timing"].to_str().unwrap().to_string();
        let ms: f64 = t.strip_prefix("app;dur=").unwrap().parse().unwrap();
        assert!((0.0..10_000.0).contains(&ms), "{path}: {t}");
    }
    let (st, v) = s.get_json("/ws/v1/nothing");
    assert_eq!(st, 404);
    assert!(error_message(&v, 404).contains("/ws/v1/nothing"));
    let r = s
        .client
        .patch(format!("{}/ws/v1/streams/inventory/a", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

#[test]
fn retention_deletes_expired_points_in_the_background() {
    let s = TestServer::start_with(|c| c.retention_sweep_interval = 1);
    s.put_json(
        "/ws/v1/streams/inventory/ret/a",
        &json!({"data_ttl": 3600, "rollup_ttl": 86400}),
    );
    let now = meterstream_storage::time::now_ms();
    s.post_json(&json!([
        {"stream_id": "ret/a", "value": 0.5, "timestamp": now - 3 * 86_400_000},
        {"stream_id": "ret/a", "value": 1.0, "timestamp": now - 7_200_000},
        {"stream_id": "ret/a", "value": 2.0, "timestamp": now - 60_000},
        {"stream_id": "keep/a", "value": 3.0, "timestamp": 1000}
    ]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.history_all("ret/a", "").len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(s.history_all("ret/a", "")[0].1, json!(2.0));
    assert_eq!(s.history_all("keep/a", ""), vec![(1000, json!(3.0))]);
    // Rollups outlive raw points (15 minutes and coarser) until rollup_ttl: the point of two
    // hours ago still counts, the one of three days ago is gone with its day's rollups.
    let sums = |interval: &str| -> Vec<f64> {
        let (st, v) = s.get_json(&format!(
            "/ws/v1/streams/rollups/ret/a?interval={interval}&method=sum"
        ));
        assert_eq!(st, 200, "{v}");
        v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(sums("hour"), vec![1.0, 2.0]);
    assert_eq!(sums("15m"), vec![1.0, 2.0]);
    // 1-minute rollups live as long as the raw points.
    assert_eq!(sums("1m"), vec![2.0]);
}

#[test]
fn everything_survives_a_graceful_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let pts: Vec<serde_json::Value> = (0..3000)
        .map(|i| json!({"stream_id": format!("gw{}/m/v", i % 3), "value": i as f64 / 8.0, "timestamp": 1000 + i}))
        .collect();
    {
        let s = TestServer::start_at(&dir, |c| c.chunk_points = 256);
        assert_eq!(s.post_json(&json!(pts)).status().as_u16(), 201);
        s.put_json("/ws/v1/streams/inventory/gw0/m/v", &json!({"units": "V"}));
    }
    let s = TestServer::start_at(&dir, |c| c.chunk_points = 256);
    let (_, v) = s.get_json("/ws/v1/streams/inventory");
    assert_eq!(v["count"], 3);
    assert_eq!(v["list"][0]["units"], "V");
    assert_eq!(v["list"][0]["value"], json!(2997.0 / 8.0));
    let got = s.history_all("gw1/m/v", "");
    assert_eq!(got.len(), 1000);
    assert!(got
        .iter()
        .all(|(t, v)| v.as_f64().unwrap() == (t - 1000) as f64 / 8.0));
    // A clean shutdown leaves no log to replay.
    let wal: Vec<_> = std::fs::read_dir(dir.join("wal")).unwrap().collect();
    assert!(wal.len() <= 1, "{wal:?}");
}

#[test]
fn the_dashboards_are_served_without_credentials_with_etags_and_gzip() {
    let s = TestServer::start();
    let anon = reqwest::blocking::Client::new(); // no gzip feature: bodies come as sent
    let r = anon.get(format!("{}/", s.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(r.text().unwrap().contains("/assets/app.js"));
    let r = anon
        .get(format!("{}/assets/app.js", s.url))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let r = anon
        .get(format!("{}/assets/app.js", s.url))
        .header("if-none-match", &etag)
        .send()
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = anon
        .get(format!("{}/assets/vendor/uPlot.iife.min.js", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("uPlot"));
    let r = anon
        .get(format!("{}/assets/nothing.js", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    // The API still needs credentials.
    let r = anon
        .get(format!("{}/ws/v1/streams/inventory", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn server_sent_events_carry_new_points_and_end_when_the_server_stops() {
    use std::io::Read;
    let s = TestServer::start();
    s.post_json(&json!([{"stream_id": "gw/m/v", "value": 1.0}]));
    let mut r = s
        .get("/ws/v1/events?streams=gw/m/v&alarms=true")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut buf = [0u8; 4096];
    let n = r.read(&mut buf).unwrap();
    assert!(std::str::from_utf8(&buf[..n])
        .unwrap()
        .starts_with(": connected"));
    s.post_json(
        &json!([{"stream_id": "gw/m/v", "timestamp": 1_795_000_000_000i64, "value": 42.5},
                        {"stream_id": "gw/m/other", "value": 7.0}]),
    );
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("42.5") && std::time::Instant::now() < deadline {
        let n = r.read(&mut buf).unwrap();
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert!(
        text.contains(
            "event: points\ndata: {\"points\":[[1795000000000,42.5]],\"stream_id\":\"gw/m/v\"}"
        ),
        "{text}"
    );
    assert!(!text.contains("gw/m/other"));
    // Streams outside the caller's scope or malformed are refused, naming the parameter.
    let (st, v) = s.get_json("/ws/v1/events?streams=gw//v");
    assert_eq!(st, 400);
    assert!(error_message(&v, 400).contains("streams"), "{v}");
    // Stopping the server ends the stream at once instead of waiting out the graceful period.
    let started = std::time::Instant::now();
    drop(s);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
