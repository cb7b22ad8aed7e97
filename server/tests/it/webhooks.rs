//! Monitors delivering to a real receiver (a Python HTTP server with its own Standard Webhooks
//! verifier, `receiver.py`): the Digi envelope, signatures, order, a receiver down then up, 410,
//! the retry window, the system alarm, reset with replay, the delivery history.

use crate::alarms::{create_alert, evaluated, post, undervoltage};
use crate::support::*;
pub use meterstream_testkit::Receiver;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub fn webhook_server() -> TestServer {
    TestServer::start_with(|c| {
        c.allow_private_webhook_targets = true;
        c.webhook_max_backoff = 0.2;
    })
}

pub fn create_monitor(s: &TestServer, body: Value) -> (String, String) {
    let (st, m) = s.send(&s.client, "POST", "/ws/v1/monitors/inventory", Some(&body));
    assert_eq!(st, 201, "{m}");
    (
        m["id"].as_str().unwrap().to_string(),
        m["secret"].as_str().unwrap().to_string(),
    )
}

fn values_of(msgs: &[Value]) -> Vec<f64> {
    msgs.iter()
        .filter(|m| m.get("DataPoint").is_some())
        .map(|m| m["DataPoint"]["value"].as_f64().unwrap())
        .collect()
}

#[test]
fn data_points_and_alarms_arrive_signed_in_digis_envelope() {
    let s = webhook_server();
    let rx = Receiver::start();
    let mut rule = undervoltage("gw1/*/voltage_l1");
    rule["rule"]["fire"]["duration_ms"] = json!(0);
    let alert = create_alert(&s, &rule);
    let (mid, secret) = create_monitor(
        &s,
        json!({"topics": ["DataPoint/gw1/*/voltage_l1", "AlarmStatus"], "url": format!("{}/hook", rx.url),
               "method": "PUT", "batch_duration": 0.2, "headers": {"X-Custom": "yes"},
               "auth_token": "user:pass", "compression": "gzip"}),
    );
    rx.secret(&secret);
    let t0 = meterstream_storage::time::now_ms() / 1000 * 1000 - 60_000;
    post(&s, "gw1/m1/voltage_l1", t0, &[(0, 230.0), (1, 200.0)]);
    post(&s, "gw2/m1/voltage_l1", t0, &[(0, 100.0)]); // another device: not subscribed
    let msgs = rx.wait_for(10, |m| m.len() >= 3);
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    let reqs = rx.requests();
    assert!(reqs.iter().all(|r| r["verified"] == true), "{reqs:#?}");
    assert!(reqs
        .iter()
        .all(|r| r["method"] == "PUT" && r["path"] == "/hook" && r["gzip"] == true));
    assert!(reqs.iter().all(|r| r["custom"] == "yes"));
    assert!(reqs
        .iter()
        .all(|r| r["authorization"] == "Basic dXNlcjpwYXNz"));
    assert_eq!(msgs[0]["topic"], "meterstream/DataPoint/gw1/m1/voltage_l1");
    assert_eq!(msgs[0]["operation"], "INSERTION");
    assert_eq!(msgs[0]["replay"], false);
    assert_eq!(values_of(&msgs), vec![230.0, 200.0]);
    assert_eq!(msgs[1]["DataPoint"]["stream_id"], "gw1/m1/voltage_l1");
    assert_eq!(
        ms(msgs[1]["DataPoint"]["timestamp"].as_str().unwrap()),
        t0 + 1000
    );
    let a = &msgs[2];
    assert_eq!(
        a["topic"],
        format!("meterstream/AlarmStatus/{alert}/gw1/m1/voltage_l1")
    );
    assert_eq!(a["AlarmStatus"]["state"], "triggered");
    assert_eq!(a["AlarmStatus"]["value"], 200.0);
    assert_eq!(ms(a["AlarmStatus"]["changed"].as_str().unwrap()), t0 + 1000);
    // Acknowledging is an event too.
    let (st, _) = s.send(
        &s.client,
        "PUT",
        &format!("/ws/v1/alerts/status/{alert}/gw1/m1/voltage_l1"),
        Some(&json!({"state": "acknowledged", "note": "seen"})),
    );
    assert_eq!(st, 200);
    let msgs = rx.wait_for(10, |m| m.len() >= 4);
    assert_eq!(msgs[3]["AlarmStatus"]["state"], "acknowledged");
    assert_eq!(msgs[3]["AlarmStatus"]["note"], "seen");
    assert_eq!(msgs[3]["operation"], "UPDATE");
    // A rotated secret: both signatures, each verifies on its own.
    let (st, m) = s.send(
        &s.client,
        "POST",
        &format!("/ws/v1/monitors/inventory/{mid}/rotate_secret"),
        None,
    );
    assert_eq!(st, 200, "{m}");
    post(&s, "gw1/m1/voltage_l1", t0, &[(2, 201.0)]);
    rx.wait_for(10, |m| m.len() >= 5);
    let last = rx.requests().pop().unwrap();
    assert_eq!(last["signatures"], 2);
    assert_eq!(last["verified"], true); // with the old secret, the only one the receiver knows
}

#[test]
fn a_receiver_down_then_up_gets_every_event_once_in_order_with_the_kept_ones_flagged() {
    let s = webhook_server();
    let rx = Receiver::start();
    rx.mode("503");
    let (id, secret) = create_monitor(
        &s,
        json!({"topics": ["DataPoint/gw/m/v"], "url": rx.url, "batch_size": 5,
               "batch_duration": 0, "persistent": true}),
    );
    rx.secret(&secret);
    let t0 = meterstream_storage::time::now_ms() - 100_000;
    for i in 0..23 {
        post(&s, "gw/m/v", t0, &[(i, i as f64)]);
    }
    // Failing: suspended, events kept.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = s.get_json(&format!("/ws/v1/monitors/inventory/{id}"));
        if m["status"] == "suspended" && m["failures"].as_u64().unwrap() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rx.delivered().is_empty());
    rx.mode("200");
    let msgs = rx.wait_for(15, |m| m.len() >= 23);
    assert_eq!(
        values_of(&msgs),
        (0..23).map(|i| i as f64).collect::<Vec<_>>()
    );
    // The batch that failed first goes as it was, retried with the same webhook-id and body;
    // what was kept behind it is flagged.
    let reqs = rx.requests();
    assert!(reqs.iter().all(|r| r["verified"] == true));
    let first_id = reqs[0]["webhook_id"].as_str().unwrap();
    let retries: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["webhook_id"] == first_id)
        .collect();
    assert!(retries.len() >= 2);
    assert!(retries.iter().all(|r| r["body"] == retries[0]["body"]));
    let n_first = retries[0]["body"]["Document"]["Msg"]
        .as_array()
        .unwrap()
        .len();
    assert!((1..=5).contains(&n_first));
    let flags: Vec<bool> = msgs
        .iter()
        .map(|m| m["replay"].as_bool().unwrap())
        .collect();
    assert!(flags[..n_first].iter().all(|f| !*f), "{flags:?}");
    assert!(flags[n_first..].iter().all(|f| *f), "{flags:?}");
    let (_, m) = s.get_json(&format!("/ws/v1/monitors/inventory/{id}"));
    assert_eq!(m["status"], "active");
    // New events after the recovery are not replays.
    post(&s, "gw/m/v", t0, &[(50, 50.0)]);
    let msgs = rx.wait_for(10, |m| m.len() >= 24);
    assert_eq!(msgs[23]["replay"], false);
    assert_eq!(msgs.len(), 24);
    // The history shows the failed attempts and the good ones.
    let (_, h) = s.get_json(&format!("/ws/v1/monitors/history/{id}?failed=true"));
    let failed = h["list"].as_array().unwrap();
    assert!(failed.len() >= 2);
    assert!(failed
        .iter()
        .all(|d| d["status"] == 503 && d["ok"] == false));
    let (_, all) = s.get_json(&format!("/ws/v1/monitors/history/{id}?size=1000"));
    assert!(all["list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["ok"] == true && d["events"] == 5));
    // A failed batch sent again: flagged as a replay, the same five events.
    let attempt = failed.last().unwrap()["attempt"].as_u64().unwrap();
    let (st, d) = s.send(
        &s.client,
        "POST",
        &format!("/ws/v1/monitors/history/{id}/{attempt}/replay"),
        None,
    );
    assert_eq!(st, 200, "{d}");
    assert_eq!(
        (
            d["ok"].as_bool(),
            d["events"].as_u64(),
            d["replay"].as_bool()
        ),
        (Some(true), Some(n_first as u64), Some(true))
    );
    let last = rx.requests().pop().unwrap();
    let msgs = last["body"]["Document"]["Msg"].as_array().unwrap().clone();
    assert_eq!(
        values_of(&msgs),
        (0..n_first).map(|i| i as f64).collect::<Vec<_>>()
    );
    assert!(msgs.iter().all(|m| m["replay"] == true));
}

#[test]
fn gone_and_the_retry_window_disable_with_a_system_alarm_and_reset_replays_the_kept_events() {
    let s = TestServer::start_with(|c| {
        c.allow_private_webhook_targets = true;
        c.webhook_max_backoff = 0.1;
        c.webhook_retry_window = 1;
    });
    let rx = Receiver::start();
    rx.mode("500");
    let (id, secret) = create_monitor(
        &s,
        json!({"topics": ["DataPoint/gw/m/v"], "url": rx.url, "batch_duration": 0, "persistent": true}),
    );
    rx.secret(&secret);
    let t0 = meterstream_storage::time::now_ms() - 100_000;
    post(&s, "gw/m/v", t0, &[(0, 1.0)]);
    let system = |s: &TestServer| -> Vec<Value> {
        let (_, v) = s.get_json("/ws/v1/alerts/status?alert_id=system");
        v["list"].as_array().unwrap().clone()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = s.get_json(&format!("/ws/v1/monitors/inventory/{id}"));
        if m["status"] == "disabled" {
            assert!(
                m["reason"].as_str().unwrap().contains("retry window"),
                "{m}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let alarms = system(&s);
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0]["source"], format!("monitors/{id}"));
    assert_eq!(alarms[0]["severity"], "critical");
    // Disabled: nothing is sent, events are kept.
    post(&s, "gw/m/v", t0, &[(1, 2.0)]);
    rx.mode("200");
    std::thread::sleep(Duration::from_millis(500));
    assert!(rx.delivered().is_empty());
    let (st, _) = s.send(
        &s.client,
        "POST",
        &format!("/ws/v1/monitors/inventory/{id}/reset"),
        None,
    );
    assert_eq!(st, 200);
    let msgs = rx.wait_for(10, |m| m.len() >= 2);
    assert_eq!(values_of(&msgs), vec![1.0, 2.0]);
    assert!(msgs.iter().all(|m| m["replay"] == true));
    assert!(
        system(&s).is_empty(),
        "the system alarm resets with the monitor"
    );
    // 410 disables at once.
    rx.mode("410");
    post(&s, "gw/m/v", t0, &[(2, 3.0)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = s.get_json(&format!("/ws/v1/monitors/inventory/{id}"));
        if m["status"] == "disabled" {
            assert!(m["reason"].as_str().unwrap().contains("410"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(
        rx.requests().iter().filter(|r| r["status"] == 410).count(),
        1
    );
    let _ = evaluated;
}

/// Requests to a server started as a child process.
fn call_at(url: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    call(
        &client_with_key(ADMIN_KEY),
        method,
        format!("{url}{path}"),
        body,
    )
}

#[test]
fn events_pending_at_a_kill_9_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        "allow_private_webhook_targets = true\nwebhook_max_backoff = 0.2\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let rx = Receiver::start();
    rx.mode("503");
    let mut server = crate::crash::start_with(&data, &args);
    let url = server.url.clone();
    let mut rule = undervoltage("gw/m/v");
    rule["rule"]["fire"]["duration_ms"] = json!(0);
    rule["rule"]["reset"]["duration_ms"] = json!(0);
    let (st, a) = call_at(&url, "POST", "/ws/v1/alerts/inventory", Some(&rule));
    assert_eq!(st, 201, "{a}");
    let alert = a["id"].as_str().unwrap().to_string();
    let (st, m) = call_at(
        &url,
        "POST",
        "/ws/v1/monitors/inventory",
        Some(
            &json!({"topics": ["DataPoint/gw/m/v", "AlarmStatus"], "url": rx.url,
                     "batch_duration": 0, "persistent": true}),
        ),
    );
    assert_eq!(st, 201, "{m}");
    rx.secret(m["secret"].as_str().unwrap());
    let id = m["id"].as_str().unwrap().to_string();
    // 20 points alternating below and above the thresholds: 20 transitions.
    let t0 = meterstream_storage::time::now_ms() - 100_000;
    let values: Vec<f64> = (0..20)
        .map(|i| if i % 2 == 0 { 200.0 } else { 215.0 })
        .collect();
    for (i, v) in values.iter().enumerate() {
        let (st, _) = call_at(
            &url,
            "POST",
            "/ws/v1/streams/history",
            Some(&json!([{"stream_id": "gw/m/v", "timestamp": t0 + i as i64 * 1000, "value": v}])),
        );
        assert_eq!(st, 201);
    }
    // Evaluated, and the receiver refused at least once.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, h) = call_at(
            &url,
            "GET",
            &format!("/ws/v1/alerts/history/{alert}?size=1000"),
            None,
        );
        let (_, mon) = call_at(
            &url,
            "GET",
            &format!("/ws/v1/monitors/inventory/{id}"),
            None,
        );
        if h["count"] == 20 && mon["status"] == "suspended" {
            break;
        }
        assert!(Instant::now() < deadline, "{h} {mon}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill_9();
    rx.mode("200");
    let server = crate::crash::start_with(&data, &args);
    let msgs = rx.wait_for(20, |m| m.len() >= 40);
    drop(server);
    let data_values = values_of(&msgs);
    assert_eq!(data_values, values);
    let states: Vec<(&str, i64)> = msgs
        .iter()
        .filter_map(|m| m.get("AlarmStatus"))
        .map(|a| {
            (
                a["state"].as_str().unwrap(),
                (ms(a["changed"].as_str().unwrap()) - t0) / 1000,
            )
        })
        .collect();
    let want: Vec<(&str, i64)> = (0..20)
        .map(|i| (if i % 2 == 0 { "triggered" } else { "reset" }, i as i64))
        .collect();
    assert_eq!(states, want);
    assert_eq!(msgs.len(), 40, "nothing twice");
    assert!(rx.requests().iter().all(|r| r["verified"] == true));
}

#[test]
fn a_limited_owners_monitor_gets_only_its_own_and_slow_receivers_time_out() {
    let s = TestServer::start_with(|c| {
        c.allow_private_webhook_targets = true;
        c.webhook_max_backoff = 0.1;
        c.webhook_timeout = 0.5;
    });
    let rx = Receiver::start();
    let r = s
        .client
        .post(format!("{}/ws/v1/credentials", s.url))
        .json(&json!({"kind": "api_key", "scopes": ["read", "write"], "prefixes": ["gwa/"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let limited = client_with_key(json_of(r)["key"].as_str().unwrap());
    // An admin's rule over both devices; the limited owner's monitor takes every topic it may.
    let mut rule = undervoltage("*/m/v");
    rule["rule"]["fire"]["duration_ms"] = json!(0);
    create_alert(&s, &rule);
    let (st, m) = s.send(
        &limited,
        "POST",
        "/ws/v1/monitors/inventory",
        Some(
            &json!({"topics": ["DataPoint/gwa/*/*", "AlarmStatus", "devices"], "url": rx.url,
                     "batch_duration": 0}),
        ),
    );
    assert_eq!(st, 201, "{m}");
    rx.secret(m["secret"].as_str().unwrap());
    // Beyond its prefix it may not subscribe.
    let (st, _) = s.send(
        &limited,
        "POST",
        "/ws/v1/monitors/inventory",
        Some(&json!({"topics": ["DataPoint/gwb/*/*"], "url": rx.url})),
    );
    assert_eq!(st, 403);
    let t0 = meterstream_storage::time::now_ms() - 60_000;
    post(&s, "gwb/m/v", t0, &[(0, 200.0)]);
    post(&s, "gwa/m/v", t0, &[(0, 200.0)]);
    let msgs = rx.wait_for(10, |m| m.len() >= 3);
    std::thread::sleep(Duration::from_millis(300));
    let msgs2 = rx.delivered();
    assert_eq!(msgs.len(), msgs2.len(), "nothing more arrives");
    let topics: Vec<&str> = msgs2.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    assert!(topics.iter().all(|t| !t.contains("gwb")), "{topics:?}");
    assert!(
        topics.contains(&"meterstream/DataPoint/gwa/m/v"),
        "{topics:?}"
    );
    assert!(topics.contains(&"meterstream/devices/gwa"), "{topics:?}");
    assert!(topics
        .iter()
        .any(|t| t.starts_with("meterstream/AlarmStatus/") && t.ends_with("/gwa/m/v")));
    // A receiver that does not answer in time: the attempt fails as a timeout and is retried.
    rx.mode("hang");
    post(&s, "gwa/m/v", t0, &[(1, 230.0)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = m["id"].as_str().unwrap();
    loop {
        let (_, h) = s.get_json(&format!("/ws/v1/monitors/history/{id}?failed=true"));
        if h["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["error"] == "timed out")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{h}");
        std::thread::sleep(Duration::from_millis(50));
    }
    rx.mode("200");
    let msgs = rx.wait_for(15, |m| values_of(m).contains(&230.0));
    assert!(values_of(&msgs).contains(&230.0));
}

#[test]
fn retry_after_is_honoured_on_429_and_503() {
    let s = webhook_server(); // backoff at most 0.2 s
    let rx = Receiver::start();
    rx.mode("429:0.6");
    let (id, secret) = create_monitor(
        &s,
        json!({"topics": ["DataPoint/gw/m/v"], "url": rx.url, "batch_duration": 0}),
    );
    rx.secret(&secret);
    post(
        &s,
        "gw/m/v",
        meterstream_storage::time::now_ms(),
        &[(0, 1.0)],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx.requests().len() < 3 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    rx.mode("200");
    rx.wait_for(10, |m| !m.is_empty());
    let (_, h) = s.get_json(&format!("/ws/v1/monitors/history/{id}?size=100"));
    let mut times: Vec<i64> = h["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| ms(d["time"].as_str().unwrap()))
        .collect();
    times.sort();
    // Without Retry-After the retries would come within 0.2 s of each other.
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= 550, "{times:?}");
    }
    let statuses: Vec<u64> = h["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["status"].as_u64())
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 2,
        "{statuses:?}"
    );
}
