//! Alarm evaluation over real HTTP and a real store: durations in data time, hysteresis, noise,
//! a late batch from a spooling gateway, acknowledgement, the status list and the history.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub fn undervoltage(pattern: &str) -> Value {
    json!({
        "name": "Undervoltage",
        "severity": "major",
        "scope": {"type": "Resource", "value": pattern},
        "rule": {"type": "DataPoint condition",
                 "fire": {"op": "<", "threshold": 207.0, "duration_ms": 60000},
                 "reset": {"op": ">", "threshold": 210.0, "duration_ms": 300000}}
    })
}

pub fn create_alert(s: &TestServer, body: &Value) -> String {
    let (st, a) = s.send(&s.client, "POST", "/ws/v1/alerts/inventory", Some(body));
    assert_eq!(st, 201, "{a}");
    a["id"].as_str().unwrap().to_string()
}

/// Posts (seconds after `t0`, value) points to `stream`.
pub fn post(s: &TestServer, stream: &str, t0: i64, points: &[(i64, f64)]) {
    let body: Vec<Value> = points
        .iter()
        .map(|(sec, v)| json!({"stream_id": stream, "timestamp": t0 + sec * 1000, "value": v}))
        .collect();
    let r = s.post_json(&json!(body));
    assert_eq!(r.status().as_u16(), 201);
}

/// The alert's transitions as (source, state, seconds after t0, value), oldest first, once
/// there are `n` of them (waits at most 10 s, then returns what there is).
pub fn transitions(
    s: &TestServer,
    id: &str,
    t0: i64,
    n: usize,
) -> Vec<(String, String, i64, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, v) = s.get_json(&format!("/ws/v1/alerts/history/{id}?size=1000"));
        assert_eq!(st, 200, "{v}");
        let got: Vec<_> = v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["source"].as_str().unwrap().to_string(),
                    t["state"].as_str().unwrap().to_string(),
                    (ms(t["changed"].as_str().unwrap()) - t0) / 1000,
                    t["value"].clone(),
                )
            })
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the evaluator has read everything the store applied (at most 10 s).
pub fn evaluated(s: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = s.get("/metrics").send().unwrap().text().unwrap();
        let lag = text
            .lines()
            .find_map(|l| l.strip_prefix("meterstream_alarm_feed_lag_records "))
            .expect("the lag metric");
        if lag == "0" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the evaluator lags by {lag} records"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tr(source: &str, state: &str, sec: i64, v: f64) -> (String, String, i64, Value) {
    (source.into(), state.into(), sec, json!(v))
}

#[test]
fn fires_when_held_for_its_duration_in_data_time_and_noise_does_not_flap() {
    let s = TestServer::start();
    let id = create_alert(&s, &undervoltage("*/m1/voltage_l1"));
    // Data from two hours ago, arriving now (a gateway catching up): times are the data's own.
    let t0 = meterstream_storage::time::now_ms() / 1000 * 1000 - 7_200_000;
    let v = "gw1/m1/voltage_l1";
    // 205 from 10 s on: held for 60 s at 70 s, not at 69 s. A break (212 at 30 s) would restart
    // it, so first a run that is broken:
    post(
        &s,
        v,
        t0,
        &[
            (0, 230.0),
            (10, 205.0),
            (30, 212.0),
            (40, 204.0),
            (99, 206.0),
        ],
    );
    evaluated(&s);
    assert_eq!(transitions(&s, &id, t0, 0), vec![]);
    post(&s, v, t0, &[(100, 206.0)]);
    // Noise around 207-210 while triggered: no reset (needs > 210 for 300 s).
    post(
        &s,
        v,
        t0,
        &[
            (120, 208.0),
            (130, 211.0),
            (140, 209.0),
            (150, 211.0),
            (200, 207.5),
        ],
    );
    // Above 210 from 300 s: resets at the first point 300 s later (600 s), not before.
    post(
        &s,
        v,
        t0,
        &[(300, 211.0), (450, 212.0), (599, 213.0), (600, 211.5)],
    );
    let got = transitions(&s, &id, t0, 2);
    assert_eq!(
        got,
        vec![tr(v, "triggered", 100, 206.0), tr(v, "reset", 600, 211.5)]
    );
    // Another stream that does not match the pattern is not evaluated.
    post(&s, "gw1/m2/voltage_l1", t0, &[(0, 100.0), (100, 100.0)]);
    // A stream that matches gets its own status.
    post(&s, "gw2/m1/voltage_l1", t0, &[(0, 200.0), (60, 200.0)]);
    let got = transitions(&s, &id, t0, 3);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.contains(&tr("gw2/m1/voltage_l1", "triggered", 60, 200.0)));
    let (_, active) = s.get_json("/ws/v1/alerts/status");
    let sources: Vec<&str> = active["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec!["gw2/m1/voltage_l1"]);
    assert_eq!(active["list"][0]["severity"], "major");
    assert_eq!(active["list"][0]["alert_name"], "Undervoltage");
}

#[test]
fn acknowledging_keeps_it_active_until_the_reset_rule_and_the_status_list_filters() {
    let s = TestServer::start();
    let id = create_alert(&s, &undervoltage("*/*/voltage_l1"));
    let mut crit = undervoltage("*/*/voltage_l2");
    crit["severity"] = json!("critical");
    crit["rule"]["fire"]["duration_ms"] = json!(0);
    let id2 = create_alert(&s, &crit);
    let t0 = meterstream_storage::time::now_ms() / 1000 * 1000 - 3_600_000;
    post(&s, "gwa/m/voltage_l1", t0, &[(0, 200.0), (60, 200.0)]);
    post(&s, "gwa/m/voltage_l2", t0, &[(5, 190.0)]);
    post(&s, "gwb/m/voltage_l2", t0, &[(5, 190.0)]);
    assert_eq!(transitions(&s, &id, t0, 1).len(), 1);
    assert_eq!(transitions(&s, &id2, t0, 2).len(), 2);
    let path = format!("/ws/v1/alerts/status/{id}/gwa/m/voltage_l1");
    let (st, v) = s.send(
        &s.client,
        "PUT",
        &path,
        Some(&json!({"state": "acknowledged", "note": "crew sent"})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "acknowledged");
    assert_eq!(v["note"], "crew sent");
    // The point that fired it stays named through the acknowledgement.
    assert_eq!(v["point"]["stream_id"], "gwa/m/voltage_l1");
    assert_eq!(ms(v["point"]["timestamp"].as_str().unwrap()), t0 + 60_000);
    let (_, hist) = s.get_json(&format!(
        "/ws/v1/streams/history/gwa/m/voltage_l1?start_time={}&size=1",
        t0 + 60_000
    ));
    assert_eq!(hist["list"][0]["id"], v["point"]["id"]);
    assert!(v["acknowledged_by"].as_str().is_some_and(|b| !b.is_empty()));
    // Twice: refused, it is not triggered any more.
    let (st, v) = s.send(
        &s.client,
        "PUT",
        &path,
        Some(&json!({"state": "acknowledged"})),
    );
    assert_eq!(st, 409, "{v}");
    // Resetting by hand is not how a status resets.
    let (st, v) = s.send(&s.client, "PUT", &path, Some(&json!({"state": "reset"})));
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("state"), "{v}");
    // An unknown pair.
    let (st, _) = s.send(
        &s.client,
        "PUT",
        &format!("/ws/v1/alerts/status/{id}/gwz/m/voltage_l1"),
        Some(&json!({"state": "acknowledged"})),
    );
    assert_eq!(st, 404);
    // Filters.
    let list = |q: &str| -> Vec<String> {
        let (st, v) = s.get_json(&format!("/ws/v1/alerts/status{q}"));
        assert_eq!(st, 200, "{v}");
        v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                format!(
                    "{}:{}",
                    x["source"].as_str().unwrap(),
                    x["state"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(list("").len(), 3);
    assert_eq!(list("?severity=critical").len(), 2);
    assert_eq!(
        list("?state=acknowledged"),
        vec!["gwa/m/voltage_l1:acknowledged"]
    );
    assert_eq!(list("?scope=gwb").len(), 1);
    assert_eq!(list("?scope=*/m/voltage_l2&severity=critical").len(), 2);
    assert_eq!(list("?severity=major,critical&size=1").len(), 1);
    let (st, v) = s.get_json("/ws/v1/alerts/status?severity=urgent");
    assert_eq!(st, 400);
    assert!(v.to_string().contains("severity"), "{v}");
    // Paging walks every status once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let (_, v) = s.get_json(&format!("/ws/v1/alerts/status?size=1{cursor}"));
        for x in v["list"].as_array().unwrap() {
            seen.push(x["id"].as_str().unwrap().to_string());
        }
        match v["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
    // The reset rule resets an acknowledged status.
    post(&s, "gwa/m/voltage_l1", t0, &[(100, 215.0), (400, 215.0)]);
    let got = transitions(&s, &id, t0, 3);
    let states: Vec<&str> = got.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(states, vec!["triggered", "acknowledged", "reset"]);
    assert_eq!(got[2].2, 400);
    assert_eq!(list("?state=reset"), vec!["gwa/m/voltage_l1:reset"]);
    // The history pages with cursors.
    let (_, p1) = s.get_json(&format!("/ws/v1/alerts/history/{id}?size=2"));
    assert_eq!(p1["list"].as_array().unwrap().len(), 2);
    let c = p1["cursor"].as_str().unwrap();
    let (_, p2) = s.get_json(&format!("/ws/v1/alerts/history/{id}?size=2&cursor={c}"));
    assert_eq!(p2["list"][0]["state"], "reset");
    assert!(p2["cursor"].is_null());
    // Deleting the alert removes its statuses.
    assert_eq!(
        s.delete(&format!("/ws/v1/alerts/inventory/{id}"))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert!(list("?state=reset").is_empty());
}

#[test]
fn a_late_backlog_behind_live_points_fires_and_resets_at_the_right_data_times() {
    let s = TestServer::start();
    let id = create_alert(&s, &undervoltage("*/m/voltage_l1"));
    let t0 = meterstream_storage::time::now_ms() / 1000 * 1000 - 7_200_000;
    let v = "gw/m/voltage_l1";
    // The gateway was cut off; its live readings overtake its spooled backlog (the agent's
    // live_max_delay policy), so the server sees the present first...
    post(
        &s,
        v,
        t0,
        &(100..=110).map(|i| (i * 10, 230.0)).collect::<Vec<_>>(),
    );
    evaluated(&s);
    assert!(transitions(&s, &id, t0, 0).is_empty());
    // ...then the backlog, oldest first, in three uploads: undervoltage from 100 s to 400 s,
    // then above 210 V. Fires at 160 s (held 60 s), resets at 710 s (held 300 s).
    let backlog: Vec<(i64, f64)> = (0..=95)
        .map(|i| {
            let t = i * 10;
            (
                t,
                if (100..=400).contains(&t) {
                    200.0
                } else if t > 400 {
                    215.0
                } else {
                    230.0
                },
            )
        })
        .collect();
    for chunk in backlog.chunks(35) {
        post(&s, v, t0, chunk);
        // Each upload evaluated before the next arrives, as a gateway's replay usually is (if
        // several arrive first, the evaluation sees them together and skips the intermediate
        // reset below, which is right too).
        evaluated(&s);
    }
    evaluated(&s);
    // After the second upload the data known then (above 210 V from 410 s, then nothing until
    // the live 1000 s) reset it at 1000 s; the third upload corrects that to 710 s.
    let got = transitions(&s, &id, t0, 3);
    assert_eq!(
        got,
        vec![
            tr(v, "triggered", 160, 200.0),
            tr(v, "reset", 1000, 230.0),
            tr(v, "reset", 710, 215.0)
        ]
    );
    let (_, h) = s.get_json(&format!("/ws/v1/alerts/history/{id}"));
    assert!(
        h["list"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["correction"] == true),
        "{h}"
    );
    let (_, st) = s.get_json("/ws/v1/alerts/status?state=reset&scope=gw");
    assert_eq!(ms(st["list"][0]["changed"].as_str().unwrap()) - t0, 710_000);
    // A transition the live data put too late moves earlier: live undervoltage from 2000 s
    // fires at 2060 s; the backlog shows it began at 1950 s, so it fired at 2010 s.
    let w = "gw2/m/voltage_l1";
    post(
        &s,
        w,
        t0,
        &(200..=210).map(|i| (i * 10, 200.0)).collect::<Vec<_>>(),
    );
    evaluated(&s);
    let got = transitions(&s, &id, t0, 4);
    assert!(got.contains(&tr(w, "triggered", 2060, 200.0)), "{got:?}");
    post(
        &s,
        w,
        t0,
        &(195..=199).map(|i| (i * 10, 200.0)).collect::<Vec<_>>(),
    );
    evaluated(&s);
    let got: Vec<_> = transitions(&s, &id, t0, 5)
        .into_iter()
        .filter(|t| t.0 == w)
        .collect();
    assert_eq!(
        got,
        vec![
            tr(w, "triggered", 2060, 200.0),
            tr(w, "triggered", 2010, 200.0)
        ]
    );
    let (_, st) = s.get_json("/ws/v1/alerts/status?scope=gw2");
    assert_eq!(
        ms(st["list"][0]["changed"].as_str().unwrap()) - t0,
        2_010_000
    );
    // The late points arriving again (a retried upload) change nothing.
    post(
        &s,
        w,
        t0,
        &(195..=199).map(|i| (i * 10, 200.0)).collect::<Vec<_>>(),
    );
    evaluated(&s);
    assert_eq!(transitions(&s, &id, t0, 0).len(), 5);
}

/// Waits (at most `secs`) until the status of (alert, source) is `state`; returns how long it
/// took.
fn wait_state(s: &TestServer, id: &str, source: &str, state: &str, secs: u64) -> Duration {
    let started = Instant::now();
    loop {
        let (_, v) = s.get_json(&format!(
            "/ws/v1/alerts/status?alert_id={id}&state=triggered,acknowledged,reset"
        ));
        let now = v["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["source"] == source)
            .map(|x| x["state"].as_str().unwrap().to_string());
        if now.as_deref() == Some(state) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{source} is {now:?}, not {state}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn clock_rules_missing_data_offline_and_excessive_disconnects() {
    let s = TestServer::start_with(|c| c.device_inactivity_timeout = 1);
    let missing = create_alert(
        &s,
        &json!({"name": "No data", "severity": "minor",
                "scope": {"type": "Resource", "value": "gwc/*/v"},
                "rule": {"type": "Missing DataPoint", "duration_ms": 1500}}),
    );
    let offline = create_alert(
        &s,
        &json!({"name": "Offline", "severity": "major",
                "scope": {"type": "Device", "value": "gwc"},
                "rule": {"type": "Device Offline", "reconnect_window_ms": 500}}),
    );
    let flapping = create_alert(
        &s,
        &json!({"name": "Flapping", "severity": "warning",
                "scope": {"type": "Device", "value": "gwc"},
                "rule": {"type": "Device Excessive Disconnects", "count": 2, "window_ms": 60000}}),
    );
    let now = meterstream_storage::time::now_ms();
    post(&s, "gwc/m/v", now, &[(0, 1.0)]);
    let sent = Instant::now();
    // Missing: 1.5 s after the last point, within the sweep's half second (and the test's
    // polling).
    wait_state(&s, &missing, "gwc/m/v", "triggered", 10);
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000),
        "{waited:?}"
    );
    // Offline: the device is disconnected after 1 s without contact, the alarm 0.5 s later.
    wait_state(&s, &offline, "gwc", "triggered", 10);
    // Data again: both reset; the device reconnected.
    post(&s, "gwc/m/v", now, &[(5, 2.0)]);
    wait_state(&s, &missing, "gwc/m/v", "reset", 10);
    wait_state(&s, &offline, "gwc", "reset", 10);
    // A second disconnect within the window: excessive.
    wait_state(&s, &flapping, "gwc", "triggered", 10);
    let (_, h) = s.get_json(&format!("/ws/v1/alerts/history/{missing}"));
    let states: Vec<&str> = h["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states[..2], ["triggered", "reset"]);
}

#[test]
fn on_change_fires_at_a_changed_value_and_resets_at_the_next_unchanged_one() {
    let s = TestServer::start();
    let id = create_alert(
        &s,
        &json!({"name": "Breaker", "severity": "critical",
                "scope": {"type": "Resource", "value": "*/relay/state"},
                "rule": {"type": "DataPoint on change"}}),
    );
    let t0 = meterstream_storage::time::now_ms() / 1000 * 1000 - 600_000;
    let st = "gw/relay/state";
    let body: Vec<Value> = [
        (0, "closed"),
        (10, "closed"),
        (20, "open"),
        (30, "open"),
        (40, "closed"),
    ]
    .iter()
    .map(|(sec, v)| json!({"stream_id": st, "timestamp": t0 + sec * 1000, "value": v}))
    .collect();
    assert_eq!(s.post_json(&json!(body)).status().as_u16(), 201);
    let got = transitions(&s, &id, t0, 3);
    assert_eq!(
        got,
        vec![
            (st.to_string(), "triggered".to_string(), 20, json!("open")),
            (st.to_string(), "reset".to_string(), 30, json!("open")),
            (st.to_string(), "triggered".to_string(), 40, json!("closed")),
        ]
    );
}
