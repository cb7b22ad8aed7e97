//! Commands end to end: a real server, the real agent, simulated meters on a pseudo-terminal.

use crate::support::*;
use meterstream_agent::sim;
use serde_json::{json, Value};
use std::time::Duration;

async fn call(method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let method = method.to_string();
    tokio::task::spawn_blocking(move || {
        let c = crate::support::client();
        let req = match method.as_str() {
            "POST" => c.post(url),
            _ => c.get(url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let r = req.send().unwrap();
        let st = r.status().as_u16();
        (st, r.json().unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

async fn command(server: &TestServer, body: Value) -> u64 {
    let (st, c) = call(
        "POST",
        format!("{}/ws/v1/devices/{DEVICE}/commands", server.url),
        Some(body),
    )
    .await;
    assert_eq!(st, 201, "{c}");
    c["id"].as_u64().unwrap()
}

/// Waits (server-side long-poll) until the command is finished.
async fn result(server: &TestServer, id: u64) -> Value {
    call(
        "GET",
        format!(
            "{}/ws/v1/devices/{DEVICE}/commands/{id}?wait=30",
            server.url
        ),
        None,
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_on_the_agent_and_their_results_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"), "127.0.0.1:0");
    let mut cfg = config(
        &server.url,
        &tmp.path().join("spool"),
        &[("a", "sdm630", 1), ("b", "pst04", 2)],
    );
    cfg.ports[0].meters[0].latitude = Some(42.6564);
    cfg.ports[0].meters[0].longitude = Some(23.355);
    // The gateway uses a device key of its own, not the admin key.
    let (st, made) = call(
        "POST",
        format!("{}/ws/v1/credentials", server.url),
        Some(json!({"kind": "device", "device_id": DEVICE})),
    )
    .await;
    assert_eq!(st, 201, "{made}");
    cfg.server.api_key = Some(made["key"].as_str().unwrap().to_string());
    let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    let agent = Running::start(cfg).await;
    // The gateway registered itself.
    let mut registered = Value::Null;
    for _ in 0..50 {
        let (st, d) = call(
            "GET",
            format!("{}/ws/v1/devices/inventory/{DEVICE}", server.url),
            None,
        )
        .await;
        if st == 200 && d["agent_version"].is_string() {
            registered = d;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(registered["model"], "meterstream-agent", "{registered}");
    assert_eq!(registered["meters"][0]["name"], "a");
    assert_eq!(registered["meters"][0]["model"], "SDM630");
    assert_eq!(registered["meters"][1]["model"], "PST04");
    assert_eq!(registered["location"]["latitude"], 42.6564);
    assert_eq!(registered["connection_status"], "connected");

    let id = command(&server, json!({"command": "get_status"})).await;
    let r = result(&server, id).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let meters = r["result"]["meters"].as_array().unwrap();
    assert_eq!(meters.len(), 2);
    assert_eq!(meters[0]["status"], "active", "{r}");
    assert_eq!(r["result"]["versions"]["agent"], env!("CARGO_PKG_VERSION"));
    assert!(r["result"]["spool"]["points"].is_u64());

    let id = command(
        &server,
        json!({"command": "set_interval", "parameters": {"seconds": 2}}),
    )
    .await;
    assert_eq!(result(&server, id).await["result"]["interval"], 2.0);
    let id = command(&server, json!({"command": "get_status"})).await;
    assert_eq!(result(&server, id).await["result"]["interval_s"], 2.0);

    let id = command(
        &server,
        json!({"command": "reconnect_meter", "parameters": {"meter": "b"}}),
    )
    .await;
    let r = result(&server, id).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let id = command(
        &server,
        json!({"command": "reconnect_meter", "parameters": {"meter": "zz"}}),
    )
    .await;
    assert_eq!(result(&server, id).await["status"], "failed");

    let id = command(&server, json!({"command": "read_now"})).await;
    assert_eq!(result(&server, id).await["result"]["meters"], 2);

    let id = command(&server, json!({"command": "self_destruct"})).await;
    let r = result(&server, id).await;
    assert_eq!(r["status"], "failed");
    assert!(
        r["result"]["error"]
            .as_str()
            .unwrap()
            .contains("unknown command"),
        "{r}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_command_expires_while_the_agent_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"), "127.0.0.1:0");
    let mut cfg = config(
        &server.url,
        &tmp.path().join("spool"),
        &[("a", "sdm630", 1)],
    );
    let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    let short = command(
        &server,
        json!({"command": "set_interval", "parameters": {"seconds": 5}, "lifetime": 1}),
    )
    .await;
    let long = command(&server, json!({"command": "get_status", "lifetime": 600})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let agent = Running::start(cfg).await;
    let r = result(&server, long).await;
    assert_eq!(r["status"], "succeeded");
    // The expired one never ran: the interval is still the configured one.
    assert_eq!(r["result"]["interval_s"], 0.2);
    let (_, s) = call(
        "GET",
        format!("{}/ws/v1/devices/{DEVICE}/commands/{short}", server.url),
        None,
    )
    .await;
    assert_eq!(s["status"], "expired");
    assert!(s["result"].is_null());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_command_survives_a_server_restart_and_is_then_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = TestServer::start(&data, "127.0.0.1:0");
    let addr = server.addr().to_string();
    let id = command(&server, json!({"command": "get_status", "lifetime": 600})).await;
    drop(server);
    let server = TestServer::start(&data, &addr);
    let mut cfg = config(
        &server.url,
        &tmp.path().join("spool"),
        &[("a", "sdm630", 1)],
    );
    let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    let agent = Running::start(cfg).await;
    let r = result(&server, id).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    agent.stop().await;
    // A restarted agent does not run it again: its cursor is kept in the spool directory.
    let cursor = std::fs::read_to_string(tmp.path().join("spool").join("commands.cursor")).unwrap();
    assert_eq!(cursor.trim(), id.to_string());
}
