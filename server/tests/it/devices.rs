//! Devices and commands over real HTTP: registration, connection status, health, the command
//! life cycle with long-polls, expiry, cancellation, and commands surviving a restart.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn post_cmd(s: &TestServer, dev: &str, body: &Value) -> (u16, Value) {
    let r = s
        .client
        .post(format!("{}/ws/v1/devices/{dev}/commands", s.url))
        .json(body)
        .send()
        .unwrap();
    let st = r.status().as_u16();
    (st, json_of(r))
}

fn put_report(s: &TestServer, dev: &str, id: u64, body: &Value) -> (u16, Value) {
    let r = s
        .client
        .put(format!("{}/ws/v1/devices/{dev}/commands/{id}", s.url))
        .json(body)
        .send()
        .unwrap();
    let st = r.status().as_u16();
    (st, json_of(r))
}

#[test]
fn a_device_registers_reports_and_is_listed_with_status_and_health() {
    let s = TestServer::start();
    let (st, d) = s.get_json("/ws/v1/devices/inventory/gw-1");
    assert_eq!(st, 404, "{d}");
    let r = s.put_json(
        "/ws/v1/devices/inventory/gw-1",
        &json!({"model": "ConnectPort X4", "agent_version": "0.1.0",
                "meters": [{"name": "main", "model": "SDM630", "slave": 1}],
                "location": {"latitude": 42.6564, "longitude": 23.355},
                "tags": ["sofia"], "group": "north"}),
    );
    assert_eq!(r.status(), 200);
    let (_, d) = s.get_json("/ws/v1/devices/inventory/gw-1");
    assert_eq!(d["connection_status"], "connected");
    assert_eq!(d["model"], "ConnectPort X4");
    assert_eq!(d["meters"][0]["name"], "main");
    assert_eq!(d["location"]["latitude"], 42.6564);
    assert_eq!(d["group"], "north");
    assert_eq!(d["last_address"], "127.0.0.1");
    assert_eq!(d["health"], "Unknown");
    // An upload registers a device on first contact, and its metrics give its health.
    let now = meterstream_storage::time::now_ms();
    let r = s.post_json(&json!([
        {"stream_id": "gw-2/metrics/sys/cpu/used", "value": 95.0, "timestamp": now},
        {"stream_id": "gw-2/metrics/sys/mem/free", "value": 2.0e8, "timestamp": now},
        {"stream_id": "gw-3/metrics/sys/cpu/used", "value": 12.5, "timestamp": now},
    ]));
    assert_eq!(r.status(), 201);
    let (_, d2) = s.get_json("/ws/v1/devices/inventory/gw-2");
    assert_eq!(
        (d2["connection_status"].as_str(), d2["health"].as_str()),
        (Some("connected"), Some("Warning"))
    );
    let (_, d3) = s.get_json("/ws/v1/devices/inventory/gw-3");
    assert_eq!(d3["health"], "Normal");
    // Listing, filtering, paging.
    let (_, all) = s.get_json("/ws/v1/devices/inventory");
    let ids: Vec<&str> = all["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gw-1", "gw-2", "gw-3"]);
    let (_, f) = s.get_json("/ws/v1/devices/inventory?query=health%20%3D%20'Warning'");
    assert_eq!(f["list"].as_array().unwrap().len(), 1);
    assert_eq!(f["list"][0]["id"], "gw-2");
    let (_, f) = s.get_json(
        "/ws/v1/devices/inventory?query=tags%20contains%20'sofia'%20and%20group%20%3D%20north",
    );
    assert_eq!(f["list"][0]["id"], "gw-1");
    let (_, p1) = s.get_json("/ws/v1/devices/inventory?size=2");
    assert_eq!(p1["list"].as_array().unwrap().len(), 2);
    let c = p1["cursor"].as_str().unwrap();
    let (_, p2) = s.get_json(&format!("/ws/v1/devices/inventory?size=2&cursor={c}"));
    assert_eq!(p2["list"][0]["id"], "gw-3");
    assert!(p2.get("cursor").is_none());
    let (st, e) = s.get_json("/ws/v1/devices/inventory?query=colour%20%3D%20red");
    assert_eq!(st, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("colour"),
        "{e}"
    );
    let r = s.put_json(
        "/ws/v1/devices/inventory/gw-1",
        &json!({"location": {"latitude": 120, "longitude": 0}}),
    );
    assert_eq!(r.status(), 400);
    for (body, field) in [
        (json!({"group": ""}), "group"),
        (json!({"tags": ["ok", "bad\u{7}"]}), "tags"),
        (
            json!({"meters": [{"name": "", "model": "SDM630"}]}),
            "meters.name",
        ),
    ] {
        let r = s.put_json("/ws/v1/devices/inventory/gw-1", &body);
        assert_eq!(r.status(), 400, "{body}");
        let e = json_of(r);
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{e} should name {field}"
        );
    }
    // Nothing of the refused bodies was stored.
    let (_, d) = s.get_json("/ws/v1/devices/inventory/gw-1");
    assert_eq!(
        (d["group"].as_str(), d["tags"][0].as_str()),
        (Some("north"), Some("sofia"))
    );
    assert_eq!(d["location"]["latitude"], 42.6564);
}

#[test]
fn a_command_goes_queued_sent_succeeded_and_a_waiting_client_sees_the_result() {
    let s = TestServer::start();
    let (st, c) = post_cmd(
        &s,
        "gw-1",
        &json!({"command": "set_interval", "parameters": {"seconds": 5}, "lifetime": 60}),
    );
    assert_eq!(st, 201, "{c}");
    assert_eq!(c["status"], "queued");
    let id = c["id"].as_u64().unwrap();
    // A client waits for the result while the device picks the command up and answers.
    let (url, dev) = (s.url.clone(), "gw-1");
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let v: Value = crate::support::client_with_key(crate::support::ADMIN_KEY)
            .get(format!("{url}/ws/v1/devices/{dev}/commands/{id}?wait=20"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        (v, t.elapsed())
    });
    let (_, polled) = s.get_json("/ws/v1/devices/gw-1/commands/poll?after=0&wait=5");
    assert_eq!(polled["list"][0]["id"], id);
    assert_eq!(polled["list"][0]["status"], "sent");
    assert_eq!(polled["list"][0]["parameters"]["seconds"], 5);
    std::thread::sleep(Duration::from_millis(300));
    let (st, done) = put_report(
        &s,
        "gw-1",
        id,
        &json!({"status": "succeeded", "result": {"interval": 5}}),
    );
    assert_eq!(st, 200, "{done}");
    let (v, waited) = waiter.join().unwrap();
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["result"]["interval"], 5);
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // A finished command cannot change again, and is not delivered again.
    let (st, e) = put_report(&s, "gw-1", id, &json!({"status": "failed"}));
    assert_eq!(st, 409, "{e}");
    let (_, again) = s.get_json("/ws/v1/devices/gw-1/commands/poll?after=0");
    assert_eq!(again["count"], 0);
    let (_, list) = s.get_json("/ws/v1/devices/gw-1/commands");
    assert_eq!(list["list"][0]["status"], "succeeded");
}

#[test]
fn a_long_poll_wakes_when_a_command_arrives_and_delivery_is_by_id() {
    let s = TestServer::start();
    let url = s.url.clone();
    let poller = std::thread::spawn(move || {
        let t = Instant::now();
        let v: Value = crate::support::client_with_key(crate::support::ADMIN_KEY)
            .get(format!(
                "{url}/ws/v1/devices/gw-9/commands/poll?after=0&wait=30"
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        (v, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, a) = post_cmd(&s, "gw-9", &json!({"command": "read_now"}));
    let (v, waited) = poller.join().unwrap();
    assert_eq!(v["list"][0]["id"], a["id"]);
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // The answer was lost: the same cursor gives the command again (sent, not skipped).
    let (_, again) = s.get_json("/ws/v1/devices/gw-9/commands/poll?after=0");
    assert_eq!(again["list"][0]["id"], a["id"]);
    let (_, b) = post_cmd(&s, "gw-9", &json!({"command": "get_status"}));
    let after = a["id"].as_u64().unwrap();
    let (_, next) = s.get_json(&format!("/ws/v1/devices/gw-9/commands/poll?after={after}"));
    assert_eq!(next["count"], 1);
    assert_eq!(next["list"][0]["id"], b["id"]);
    let (st, e) = s.get_json("/ws/v1/devices/gw-9/commands/poll?wait=61");
    assert_eq!(st, 400, "{e}");
}

#[test]
fn lifetimes_expire_queued_commands_and_only_queued_ones_can_be_cancelled() {
    let s = TestServer::start();
    let (_, short) = post_cmd(&s, "gw-1", &json!({"command": "read_now", "lifetime": 1}));
    let (_, keep) = post_cmd(&s, "gw-1", &json!({"command": "read_now", "lifetime": 600}));
    let (_, gone) = post_cmd(
        &s,
        "gw-1",
        &json!({"command": "reconnect_meter", "lifetime": 600}),
    );
    let cancel = |id: &Value| {
        let r = s
            .client
            .post(format!("{}/ws/v1/devices/gw-1/commands/{id}/cancel", s.url))
            .send()
            .unwrap();
        let st = r.status().as_u16();
        (st, json_of(r))
    };
    let (st, c) = cancel(&gone["id"]);
    assert_eq!((st, c["status"].as_str()), (200, Some("cancelled")));
    std::thread::sleep(Duration::from_millis(2500));
    let (_, e) = s.get_json(&format!("/ws/v1/devices/gw-1/commands/{}", short["id"]));
    assert_eq!(e["status"], "expired");
    let (_, polled) = s.get_json("/ws/v1/devices/gw-1/commands/poll?after=0");
    let ids: Vec<&Value> = polled["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, vec![&keep["id"]]);
    let (st, e) = cancel(&keep["id"]);
    assert_eq!(st, 409, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("sent"),
        "{e}"
    );
    for bad in [
        json!({"command": ""}),
        json!({"command": "x", "lifetime": 0}),
        json!({"cmd": "x"}),
    ] {
        assert_eq!(post_cmd(&s, "gw-1", &bad).0, 400, "{bad}");
    }
    let (st, _) = s.get_json("/ws/v1/devices/gw-1/commands/999");
    assert_eq!(st, 404);
}

#[test]
fn queued_commands_survive_a_restart_and_are_then_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let s = TestServer::start_at(dir.path(), |_| {});
        let (_, c) = post_cmd(
            &s,
            "gw-5",
            &json!({"command": "get_status", "lifetime": 600}),
        );
        c["id"].as_u64().unwrap()
    };
    let s = TestServer::start_at(dir.path(), |_| {});
    let (_, polled) = s.get_json("/ws/v1/devices/gw-5/commands/poll?after=0");
    assert_eq!(polled["list"][0]["id"], id);
    assert_eq!(polled["list"][0]["command"], "get_status");
    // Ids keep growing across the restart.
    let (_, c) = post_cmd(&s, "gw-5", &json!({"command": "read_now"}));
    assert!(c["id"].as_u64().unwrap() > id);
}

#[test]
fn connection_status_flips_after_the_timeout_and_back_when_data_arrives() {
    let s = TestServer::start_with(|c| c.device_inactivity_timeout = 1);
    let write = || {
        let r = s.post_json(&json!({"stream_id": "gw-7/m/v", "value": 1.0}));
        assert_eq!(r.status(), 201);
    };
    write();
    let status = || s.get_json("/ws/v1/devices/inventory/gw-7").1["connection_status"].clone();
    assert_eq!(status(), "connected");
    let t = Instant::now();
    while status() != "disconnected" && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(), "disconnected");
    write();
    assert_eq!(status(), "connected");
    let (_, h) = s.get_json("/ws/v1/devices/history/gw-7");
    let seq: Vec<&str> = h["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(seq, vec!["connected", "disconnected", "connected"]);
    let (_, d) = s.get_json("/ws/v1/devices/inventory/gw-7");
    assert!(d["last_disconnect"].is_string(), "{d}");
}

#[test]
fn an_upload_with_commands_after_carries_the_devices_commands() {
    let s = TestServer::start();
    let (_, c) = post_cmd(&s, "gw-4", &json!({"command": "read_now"}));
    let body = json!([{"stream_id": "gw-4/m/v", "value": 2.0}]);
    // Without the parameter (a plain Digi client) nothing is delivered.
    let v = json_of(s.post_json(&body));
    assert!(v.get("commands").is_none(), "{v}");
    let r = s
        .client
        .post(format!("{}/ws/v1/streams/history?commands_after=0", s.url))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let v = json_of(r);
    assert_eq!(v["count"], 1);
    assert_eq!(v["commands"][0]["id"], c["id"]);
    assert_eq!(v["commands"][0]["status"], "sent");
}

#[test]
fn stopping_the_server_ends_long_polls_at_once() {
    let s = TestServer::start();
    // The key is verified once (argon2), then remembered: the poll below starts at once.
    assert_eq!(s.get_json("/ws/v1/devices/inventory").0, 200);
    let url = s.url.clone();
    let poller = std::thread::spawn(move || {
        crate::support::client_with_key(crate::support::ADMIN_KEY)
            .get(format!("{url}/ws/v1/devices/gw-1/commands/poll?wait=60"))
            .send()
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    drop(s);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert_eq!(poller.join().unwrap().unwrap(), 200);
}
