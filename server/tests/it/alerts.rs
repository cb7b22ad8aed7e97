//! Alert rules over real HTTP: create, read, list, update, delete; validation naming the field;
//! no limit on their number; credentials limited to prefixes see and change only their own.

use crate::alarms::undervoltage;
use crate::support::*;
use serde_json::json;

#[test]
fn alerts_are_created_read_listed_updated_and_deleted() {
    let s = TestServer::start();
    let c = &s.client;
    let (st, a) = s.send(
        c,
        "POST",
        "/ws/v1/alerts/inventory",
        Some(&undervoltage("*/*/voltage_l1")),
    );
    assert_eq!(st, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(a["enabled"], true);
    assert_eq!(a["rule"]["fire"]["threshold"], 207.0);
    let (_, got) = s.send(c, "GET", &format!("/ws/v1/alerts/inventory/{id}"), None);
    assert_eq!(got["scope"]["value"], "*/*/voltage_l1");
    assert_eq!(got["rule"]["type"], "DataPoint condition");
    let mut changed = undervoltage("*/*/voltage_l2");
    changed["enabled"] = json!(false);
    changed["severity"] = json!("critical");
    let (st, u) = s.send(
        c,
        "PUT",
        &format!("/ws/v1/alerts/inventory/{id}"),
        Some(&changed),
    );
    assert_eq!(st, 200, "{u}");
    assert_eq!(
        (u["enabled"].as_bool(), u["severity"].as_str()),
        (Some(false), Some("critical"))
    );
    assert_eq!(u["created"], a["created"]);
    let offline = json!({"name": "Gateway offline", "severity": "warning",
        "scope": {"type": "Group", "value": "north"},
        "rule": {"type": "Device Offline", "reconnect_window_ms": 600000}});
    assert_eq!(
        s.send(c, "POST", "/ws/v1/alerts/inventory", Some(&offline))
            .0,
        201
    );
    // No 16-alarm limit.
    for k in 0..40 {
        let (st, _) = s.send(
            c,
            "POST",
            "/ws/v1/alerts/inventory",
            Some(&undervoltage(&format!("gw-{k}/*/voltage_l1"))),
        );
        assert_eq!(st, 201);
    }
    let mut n = 0;
    let mut cursor = String::new();
    loop {
        let (_, page) = s.send(
            c,
            "GET",
            &format!("/ws/v1/alerts/inventory?size=7{cursor}"),
            None,
        );
        n += page["list"].as_array().unwrap().len();
        match page["cursor"].as_str() {
            Some(x) => cursor = format!("&cursor={x}"),
            None => break,
        }
    }
    assert_eq!(n, 42);
    assert_eq!(
        s.send(c, "DELETE", &format!("/ws/v1/alerts/inventory/{id}"), None)
            .0,
        204
    );
    assert_eq!(
        s.send(c, "GET", &format!("/ws/v1/alerts/inventory/{id}"), None)
            .0,
        404
    );
    assert_eq!(
        s.send(c, "DELETE", &format!("/ws/v1/alerts/inventory/{id}"), None)
            .0,
        404
    );
}

#[test]
fn bad_alerts_are_refused_naming_the_field() {
    let s = TestServer::start();
    let mut no_name = undervoltage("*/x");
    no_name["name"] = json!(" ");
    let mut bad_pattern = undervoltage("a//b");
    bad_pattern["name"] = json!("x");
    let mut negative = undervoltage("*/x");
    negative["rule"]["reset"]["duration_ms"] = json!(-5);
    let device_rule_on_streams = json!({"name": "x", "severity": "minor",
        "scope": {"type": "Resource", "value": "*/x"},
        "rule": {"type": "Device Offline", "reconnect_window_ms": 1}});
    let unknown_type = json!({"name": "x", "severity": "minor", "scope": {"type": "Resource", "value": "*/x"},
        "rule": {"type": "Vibes"}});
    for (body, want) in [
        (no_name, "name"),
        (bad_pattern, "scope"),
        (negative, "reset.duration"),
        (device_rule_on_streams, "scope"),
        (unknown_type, "Vibes"),
    ] {
        let (st, e) = s.send(&s.client, "POST", "/ws/v1/alerts/inventory", Some(&body));
        assert_eq!(st, 400, "{body}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(want),
            "{e} should name {want}"
        );
    }
}

#[test]
fn a_limited_credential_sees_and_changes_only_alerts_inside_its_scope() {
    let s = TestServer::start();
    let r = s
        .client
        .post(format!("{}/ws/v1/credentials", s.url))
        .json(&json!({"kind": "api_key", "scopes": ["read", "write"], "prefixes": ["gw-17/"]}))
        .send()
        .unwrap();
    let limited = client_with_key(json_of(r)["key"].as_str().unwrap());
    let (_, outside) = s.send(
        &s.client,
        "POST",
        "/ws/v1/alerts/inventory",
        Some(&undervoltage("*/*/voltage_l1")),
    );
    let (st, inside) = s.send(
        &limited,
        "POST",
        "/ws/v1/alerts/inventory",
        Some(&undervoltage("gw-17/*/voltage_l1")),
    );
    assert_eq!(st, 201, "{inside}");
    assert_eq!(
        s.send(
            &limited,
            "POST",
            "/ws/v1/alerts/inventory",
            Some(&undervoltage("*/*/voltage_l1"))
        )
        .0,
        403
    );
    let (_, list) = s.send(&limited, "GET", "/ws/v1/alerts/inventory", None);
    let ids: Vec<&str> = list["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![inside["id"].as_str().unwrap()]);
    let other = outside["id"].as_str().unwrap();
    assert_eq!(
        s.send(
            &limited,
            "GET",
            &format!("/ws/v1/alerts/inventory/{other}"),
            None
        )
        .0,
        404
    );
    assert_eq!(
        s.send(
            &limited,
            "DELETE",
            &format!("/ws/v1/alerts/inventory/{other}"),
            None
        )
        .0,
        404
    );
    assert_eq!(
        s.send(
            &s.client,
            "GET",
            &format!("/ws/v1/alerts/inventory/{other}"),
            None
        )
        .0,
        200,
        "still there"
    );
}
