//! End to end: simulated meters → agent → real server, with the server going away and back.

use crate::support::*;
use meterstream_agent::channel::Reading;
use meterstream_agent::sim;
use std::collections::BTreeMap;
use std::time::Duration;

/// Asserts that the server holds exactly the readings of `channel`: same timestamps, same
/// values, once each, in order.
async fn assert_arrived(server: &TestServer, channel: &str, readings: &[Reading]) {
    let got = server.history(&format!("{DEVICE}/{channel}")).await;
    let want: Vec<(i64, f64)> = readings.iter().map(|r| (r.timestamp, number(r))).collect();
    let got: Vec<(i64, f64)> = got.iter().map(|(t, v)| (*t, v.as_f64().unwrap())).collect();
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
