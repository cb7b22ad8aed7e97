//! Monitors over real HTTP: create (secret shown once), read, list, update, rotate, delete;
//! private targets refused unless allowed; topics kept inside the caller's scope.

use crate::support::*;
use serde_json::{json, Value};

fn hook(topics: Value) -> Value {
    json!({"topics": topics, "url": "http://127.0.0.1:9/hook", "batch_size": 50, "batch_duration": 2, "persistent": true, "headers": {"x-site": "sofia"}})
}

#[test]
fn monitors_are_created_with_a_secret_shown_once_and_managed() {
    let s = TestServer::start_with(|c| c.allow_private_webhook_targets = true);
    let c = &s.client;
    let (st, m) = s.send(
        c,
        "POST",
        "/ws/v1/monitors/inventory",
        Some(&hook(json!(["DataPoint/*/*/voltage_l1", "AlarmStatus"]))),
    );
    assert_eq!(st, 201, "{m}");
    let secret = m["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        (
            m["method"].as_str(),
            m["batch_size"].as_u64(),
            m["status"].as_str()
        ),
        (Some("POST"), Some(50), Some("active"))
    );
    let id = m["id"].as_str().unwrap().to_string();
    let (_, got) = s.send(c, "GET", &format!("/ws/v1/monitors/inventory/{id}"), None);
    assert!(
        got.get("secret").is_none() && !got.to_string().contains(&secret),
        "the secret is shown once"
    );
    assert_eq!(got["headers"]["x-site"], "sofia");
    let mut changed = hook(json!(["devices"]));
    changed["method"] = json!("put");
    let (st, u) = s.send(
        c,
        "PUT",
        &format!("/ws/v1/monitors/inventory/{id}"),
        Some(&changed),
    );
    assert_eq!(st, 200, "{u}");
    assert_eq!(
        (u["method"].as_str(), u["topics"][0].as_str()),
        (Some("PUT"), Some("devices"))
    );
    let (st, r) = s.send(
        c,
        "POST",
        &format!("/ws/v1/monitors/inventory/{id}/rotate_secret"),
        Some(&json!({"overlap": 3600})),
    );
    assert_eq!(st, 200, "{r}");
    assert!(r["secret"].as_str().unwrap().starts_with("whsec_") && r["secret"] != secret.as_str());
    assert!(r["secret_rotation_until"].is_string());
    let (_, list) = s.send(c, "GET", "/ws/v1/monitors/inventory", None);
    assert_eq!(list["count"], 1);
    assert_eq!(
        s.send(
            c,
            "DELETE",
            &format!("/ws/v1/monitors/inventory/{id}"),
            None
        )
        .0,
        204
    );
    assert_eq!(
        s.send(c, "GET", &format!("/ws/v1/monitors/inventory/{id}"), None)
            .0,
        404
    );
}

#[test]
fn private_targets_bad_fields_and_scope_are_refused() {
    let s = TestServer::start();
    let (st, e) = s.send(
        &s.client,
        "POST",
        "/ws/v1/monitors/inventory",
        Some(&hook(json!(["AlarmStatus"]))),
    );
    assert_eq!(st, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_private_webhook_targets"),
        "{e}"
    );
    let s = TestServer::start_with(|c| c.allow_private_webhook_targets = true);
    for (patch, field) in [
        (json!({"topics": []}), "topics"),
        (json!({"topics": ["Weather"]}), "topics"),
        (json!({"method": "GET"}), "method"),
        (json!({"batch_size": 0}), "batch_size"),
        (json!({"compression": "zip"}), "compression"),
        (json!({"headers": {"webhook-signature": "x"}}), "headers"),
        (json!({"url": "ftp://x"}), "url"),
    ] {
        let mut b = hook(json!(["AlarmStatus"]));
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (st, e) = s.send(&s.client, "POST", "/ws/v1/monitors/inventory", Some(&b));
        assert_eq!(st, 400, "{b}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{e} should name {field}"
        );
    }
    let r = s
        .client
        .post(format!("{}/ws/v1/credentials", s.url))
        .json(&json!({"kind": "api_key", "scopes": ["read", "write"], "prefixes": ["gw-17/"]}))
        .send()
        .unwrap();
    let limited = client_with_key(json_of(r)["key"].as_str().unwrap());
    assert_eq!(
        s.send(
            &limited,
            "POST",
            "/ws/v1/monitors/inventory",
            Some(&hook(json!(["DataPoint/*/*/v"])))
        )
        .0,
        403
    );
    let (st, mine) = s.send(
        &limited,
        "POST",
        "/ws/v1/monitors/inventory",
        Some(&hook(json!(["DataPoint/gw-17/*/v"]))),
    );
    assert_eq!(st, 201, "{mine}");
    let (_, admins) = s.send(
        &s.client,
        "POST",
        "/ws/v1/monitors/inventory",
        Some(&hook(json!(["AlarmStatus"]))),
    );
    let (_, list) = s.send(&limited, "GET", "/ws/v1/monitors/inventory", None);
    let ids: Vec<&Value> = list["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(ids, vec![&mine["id"]]);
    let other = admins["id"].as_str().unwrap();
    assert_eq!(
        s.send(
            &limited,
            "GET",
            &format!("/ws/v1/monitors/inventory/{other}"),
            None
        )
        .0,
        404
    );
}
