//! End to end: simulated meters → agent → real server, with the server going away and back.

use crate::support::*;
use meterstream_agent::channel::Reading;
use meterstream_agent::sim;
use std::collections::BTreeMap;
use std::time::Duration;

/// Asserts that over the span of the readings seen, the server holds exactly those of
/// `channel`: same timestamps, same values, once each, in order. (Rounds published before the
/// test subscribed are on the server too, before that span.)
async fn assert_arrived(server: &TestServer, channel: &str, readings: &[Reading]) {
    let got = server.history(&format!("{DEVICE}/{channel}")).await;
    let want: Vec<(i64, f64)> = readings.iter().map(|r| (r.timestamp, number(r))).collect();
    let (first, last) = (want[0].0, want[want.len() - 1].0);
    let got: Vec<(i64, f64)> = got
        .iter()
        .map(|(t, v)| (*t, v.as_f64().unwrap()))
        .filter(|(t, _)| (first..=last).contains(t))
        .collect();
    assert_eq!(got, want, "{channel}");
}

fn sampled(all: &BTreeMap<String, Vec<Reading>>) -> usize {
    all.values().map(Vec::len).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sampled_reading_arrives_with_its_value() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"), "127.0.0.1:0");
    let mut cfg = config(
        &server.url,
        &tmp.path().join("spool"),
        &[("a", "sdm630", 1), ("b", "pst04", 2)],
    );
    cfg.ports[0].meters[0].latitude = Some(42.6564);
    cfg.ports[0].meters[0].longitude = Some(23.355);
    cfg.metrics_interval = 1.0;
    let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    let agent = Running::start(cfg).await;
    let mut sub = agent.handles.channels.subscribe(Some("*/*"), 1024, true);
    let mut got = collect(&mut sub.rx, Duration::from_secs(3), |_| false).await;
    agent.stop().await;
    // Rounds published before sampling stopped.
    for (k, v) in collect(&mut sub.rx, Duration::from_millis(300), |_| false).await {
        got.entry(k).or_default().extend(v);
    }
    assert!(
        got["a/voltage_l1"].len() >= 8,
        "{}",
        got["a/voltage_l1"].len()
    );
    for (channel, readings) in &got {
        if channel.ends_with("/status") {
            continue;
        }
        assert_arrived(&server, channel, readings).await;
    }
    let status = server.history(&format!("{DEVICE}/a/status")).await;
    assert_eq!(status[0].1, "active");
    // Types and units come from the profiles.
    for (id, ty, units) in [
        ("a/voltage_l1", "DOUBLE", "V"),
        ("a/active_energy", "DOUBLE", "kWh"),
        ("b/current_l3", "DOUBLE", "A"),
        ("b/reactive_power", "DOUBLE", "var"),
        ("a/status", "STRING", ""),
    ] {
        let s = server.stream(&format!("{DEVICE}/{id}")).await;
        assert_eq!(
            (s["type"].as_str(), s["units"].as_str()),
            (Some(ty), Some(units)),
            "{id}: {s}"
        );
    }
    // Static streams at start, and the agent's health metrics.
    assert_eq!(
        server.history(&format!("{DEVICE}/a/latitude")).await[0].1,
        42.6564
    );
    assert_eq!(
        server.history(&format!("{DEVICE}/a/longitude")).await[0].1,
        23.355
    );
    for m in [
        "sys/cpu/used",
        "sys/mem/free",
        "sys/uptime",
        "spool/depth",
        "upload/failures",
    ] {
        let h = server.history(&format!("{DEVICE}/metrics/{m}")).await;
        assert!(!h.is_empty(), "metrics/{m} was not published");
        assert!(
            h.iter().all(|p| p.1.as_f64().is_some_and(|v| v >= 0.0)),
            "metrics/{m}: {h:?}"
        );
    }
    let free = server
        .history(&format!("{DEVICE}/metrics/sys/mem/free"))
        .await;
    assert!(
        free[0].1.as_f64().unwrap() > 1e6,
        "memory free in bytes: {free:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_taken_while_the_server_is_down_arrive_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = TestServer::start(&data, "127.0.0.1:0");
    let addr = server.addr().to_string();
    let mut cfg = config(
        &server.url,
        &tmp.path().join("spool"),
        &[("a", "sdm630", 1)],
    );
    let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    let agent = Running::start(cfg).await;
    let mut sub = agent.handles.channels.subscribe(Some("a/*"), 4096, true);
    let mut all = collect(&mut sub.rx, Duration::from_secs(1), |_| false).await;
    drop(server);
    // Down for a while: the agent keeps sampling into the spool.
    let down = collect(&mut sub.rx, Duration::from_secs(3), |_| false).await;
    assert!(down["a/voltage_l1"].len() >= 10);
    assert!(agent.pending() > 0, "readings wait in the spool");
    assert!(
        agent
            .handles
            .stats
            .upload_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let server = TestServer::start(&data, &addr);
    let up = collect(&mut sub.rx, Duration::from_secs(1), |_| false).await;
    agent.stop().await;
    let rest = collect(&mut sub.rx, Duration::from_millis(300), |_| false).await;
    for part in [down, up, rest] {
        for (k, v) in part {
            all.entry(k).or_default().extend(v);
        }
    }
    assert!(sampled(&all) > 0);
    for (channel, readings) in &all {
        if channel.ends_with("/status") {
            continue;
        }
        assert_arrived(&server, channel, readings).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_readings_do_not_wait_for_a_long_backlog() {
    use meterstream_agent::channel::Sample;
    use meterstream_storage::StreamType;
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    // A backlog from an earlier outage: 2,000 rounds of 100 readings, two days ago.
    let start = meterstream_agent::now_ms() - 2 * 86_400_000;
    {
        let (mut sp, _) =
            meterstream_agent::spool::Spool::open(&spool_dir, 1 << 30, false).unwrap();
        for s in 0..2_000i64 {
            let round: Vec<Reading> = (0..100)
                .map(|c| Reading {
                    channel: format!("old/c{c}").into(),
                    timestamp: start + s * 1000,
                    value: Sample::Number(s as f64),
                    stream_type: StreamType::Double,
                    unit: "".into(),
                })
                .collect();
            sp.append(100, &meterstream_agent::upload::encode_round(&round))
                .unwrap();
        }
    }
    let server = TestServer::start(&tmp.path().join("data"), "127.0.0.1:0");
    let mut cfg = config(&server.url, &spool_dir, &[("a", "sdm630", 1)]);
    // Small batches: the backlog takes a thousand uploads.
    cfg.upload.batch_points = 200;
    cfg.upload.live_max_delay = 0.5;
    let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    let agent = Running::start(cfg).await;
    let started = meterstream_agent::now_ms();
    // The first live reading on the server, and how much backlog was still pending then.
    let mut backlog_left = None;
    for _ in 0..100 {
        if !server
            .history(&format!("{DEVICE}/a/voltage_l1"))
            .await
            .is_empty()
        {
            backlog_left = Some(agent.pending());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = meterstream_agent::now_ms() - started;
    let left = backlog_left.expect("no live reading reached the server within 5 s");
    assert!(
        left > 10_000,
        "live readings went only after the backlog ({left} points left)"
    );
    assert!(waited < 4_000, "live readings waited {waited} ms");
    // The backlog still arrives whole, in time order per stream.
    assert!(
        crate::support::eventually_async(Duration::from_secs(60), || async {
            agent.pending() < 1_000
        })
        .await,
        "the backlog did not drain"
    );
    agent.stop().await;
    let old = server.history(&format!("{DEVICE}/old/c7")).await;
    assert_eq!(old.len(), 2_000);
    assert!(old
        .iter()
        .enumerate()
        .all(|(i, (t, v))| *t == start + i as i64 * 1000 && v.as_f64() == Some(i as f64)));
}

/// A real HTTP receiver on 127.0.0.1 that answers every request `201 {"count":1}` and keeps the
/// `authorization` header of each.
fn recording_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let (mut len, mut auth) = (0usize, String::new());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        let (k, v) = l.split_once(':').unwrap_or((l, ""));
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.trim().parse().unwrap(),
                            "authorization" => auth = v.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).unwrap();
                    seen.lock().unwrap().push(auth);
                    let answer = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"count\":1}";
                    conn.write_all(answer.as_bytes()).unwrap();
                }
            });
        }
    });
    (url, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_carry_the_configured_credentials() {
    for (key, user, want) in [
        (Some("dk_8079_secret"), None, "Bearer dk_8079_secret"),
        // base64("gateway-8079:pw") = Z2F0ZXdheS04MDc5OnB3
        (
            None,
            Some(("gateway-8079", "pw")),
            "Basic Z2F0ZXdheS04MDc5OnB3",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (url, seen) = recording_receiver();
        let mut cfg = config(&url, &tmp.path().join("spool"), &[("a", "sdm630", 1)]);
        cfg.server.api_key = key.map(str::to_string);
        if let Some((u, p)) = user {
            cfg.server.username = Some(u.into());
            cfg.server.password = Some(p.into());
        }
        cfg.validate().unwrap();
        let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
        let agent = Running::start(cfg).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        agent.stop().await;
        let seen = seen.lock().unwrap().clone();
        assert!(!seen.is_empty(), "nothing was uploaded");
        assert!(seen.iter().all(|a| a == want), "{seen:?}");
    }
}
