use crate::support::{error_message, json_of, TestServer};
use serde_json::{json, Value};

fn ids(v: &Value) -> Vec<String> {
    v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn fleet(s: &TestServer) {
    let mut pts = Vec::new();
    for gw in ["gw1", "gw2"] {
        for m in ["m1", "m2"] {
            for c in ["voltage", "current"] {
                pts.push(
                    json!({"stream_id": format!("{gw}/{m}/{c}"), "value": 1.5, "timestamp": 1000}),
                );
            }
        }
    }
    pts.push(json!({"stream_id": "gw1/status", "value": "active", "timestamp": 1000}));
    assert_eq!(s.post_json(&json!(pts)).status().as_u16(), 201);
}

#[test]
fn list_with_query_size_cursor_and_order() {
    let s = TestServer::start();
    fleet(&s);
    let (_, v) = s.get_json("/ws/v1/streams/inventory");
    assert_eq!(v["count"], 9);
    let (_, v) = s.get_json("/ws/v1/streams/inventory?query=id%20startsWith%20%27gw2%2F%27");
    assert_eq!(
        ids(&v),
        vec![
            "gw2/m1/current",
            "gw2/m1/voltage",
            "gw2/m2/current",
            "gw2/m2/voltage"
        ]
    );
    let (_, v) = s.get_json("/ws/v1/streams/inventory?query=id%20contains%20%27volt%27%20and%20id%20startsWith%20%27gw1%27&order=desc");
    assert_eq!(ids(&v), vec!["gw1/m2/voltage", "gw1/m1/voltage"]);
    let (_, v) = s.get_json("/ws/v1/streams/inventory?query=type%20%3D%20%27string%27");
    assert_eq!(ids(&v), vec!["gw1/status"]);
    let (_, v) = s.get_json("/ws/v1/streams/inventory?query=last_update%20%3E%20-1h");
    assert_eq!(v["count"], 9);
    let (_, v) = s.get_json("/ws/v1/streams/inventory?query=last_update%20%3C%20-1h");
    assert_eq!(v["count"], 0);
    // Paging.
    let mut all = Vec::new();
    let mut q = "/ws/v1/streams/inventory?size=4".to_string();
    loop {
        let (_, v) = s.get_json(&q);
        assert!(v["count"].as_u64().unwrap() <= 4);
        all.extend(ids(&v));
        match v["cursor"].as_str() {
            Some(c) => q = format!("/ws/v1/streams/inventory?size=4&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(all.len(), 9);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let (st, v) = s.get_json("/ws/v1/streams/inventory?query=colour%20%3D%20%27red%27");
    assert_eq!(st, 400);
    assert!(error_message(&v, 400).contains("colour"));
    let (st, v) = s.get_json("/ws/v1/streams/inventory?size=100001");
    assert_eq!(st, 400);
    assert!(error_message(&v, 400).contains("size"), "{v}");
    // The current value is part of each stream.
    let (_, v) = s.get_json("/ws/v1/streams/inventory/gw1/status");
    assert_eq!(v["value"], "active");
    assert_eq!(v["timestamp"], "1970-01-01T00:00:01.000Z");
    assert_eq!(v["history_uri"], "/ws/v1/streams/history/gw1/status");
}

#[test]
fn put_creates_and_updates_delete_removes_with_data() {
    let s = TestServer::start();
    let r = s.put_json("/ws/v1/streams/inventory/dev/energy", &json!({"type": "LONG", "units": "Wh", "description": "import", "data_ttl": 86400, "forward_to": ["dev/copy"]}));
    assert_eq!(r.status().as_u16(), 201);
    let v = json_of(r);
    assert_eq!(
        (
            v["type"].as_str(),
            v["units"].as_str(),
            v["data_ttl"].as_u64()
        ),
        (Some("LONG"), Some("Wh"), Some(86400))
    );
    assert_eq!(v["forward_to"], json!(["dev/copy"]));
    s.post_json(&json!({"stream_id": "dev/energy", "value": 12, "timestamp": 1}));
    let r = s.put_json(
        "/ws/v1/streams/inventory/dev/energy",
        &json!({"description": "import total", "data_ttl": null}),
    );
    assert_eq!(r.status().as_u16(), 200);
    let v = json_of(r);
    assert_eq!(
        (v["description"].as_str(), v["units"].as_str()),
        (Some("import total"), Some("Wh"))
    );
    assert!(v["data_ttl"].is_null());
    assert_eq!(v["value"], 12);
    let r = s.put_json(
        "/ws/v1/streams/inventory/dev/energy",
        &json!({"type": "STRING"}),
    );
    assert_eq!(r.status().as_u16(), 409);
    for (body, word) in [
        (json!({"type": "DECIMAL"}), "DECIMAL"),
        (json!({"colour": 1}), "colour"),
        (json!({"id": "other"}), "other"),
        (json!({"forward_to": ["a//b"]}), "a//b"),
    ] {
        let r = s.put_json("/ws/v1/streams/inventory/dev/energy", &body);
        assert_eq!(r.status().as_u16(), 400, "{body}");
        assert!(error_message(&json_of(r), 400).contains(word), "{body}");
    }
    let r = s
        .delete("/ws/v1/streams/inventory/dev/energy")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(s.get_json("/ws/v1/streams/inventory/dev/energy").0, 404);
    assert_eq!(s.get_json("/ws/v1/streams/history/dev/energy").0, 404);
    assert_eq!(
        s.delete("/ws/v1/streams/inventory/dev/energy")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    // Recreated by a point, it starts empty.
    s.post_json(&json!({"stream_id": "dev/energy", "value": 1.5, "timestamp": 7}));
    assert_eq!(s.history_all("dev/energy", ""), vec![(7, json!(1.5))]);
}

#[test]
fn folders_list_direct_children() {
    let s = TestServer::start();
    fleet(&s);
    let (_, v) = s.get_json("/ws/v1/streams/folders");
    assert_eq!(
        v["list"],
        json!([
            {"kind": "folder", "name": "gw1", "path": "gw1", "stream_count": 5},
            {"kind": "folder", "name": "gw2", "path": "gw2", "stream_count": 4}
        ])
    );
    let (_, v) = s.get_json("/ws/v1/streams/folders/gw1");
    let kinds: Vec<(String, String)> = v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().into(),
                c["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("folder".into(), "m1".into()),
            ("folder".into(), "m2".into()),
            ("stream".into(), "status".into())
        ]
    );
    assert_eq!(v["list"][2]["value"], "active");
    let (_, v) = s.get_json("/ws/v1/streams/folders/gw1?size=2");
    assert_eq!(v["count"], 2);
    let c = v["cursor"].as_str().unwrap().to_string();
    let (_, v) = s.get_json(&format!("/ws/v1/streams/folders/gw1?size=2&cursor={c}"));
    assert_eq!(v["list"][0]["name"], "status");
    assert!(v.get("cursor").is_none());
    let (_, v) = s.get_json("/ws/v1/streams/folders/gw1/m1");
    assert_eq!(v["list"][0]["id"], "gw1/m1/current");
    assert_eq!(v["list"][0]["value"], 1.5);
    assert_eq!(s.get_json("/ws/v1/streams/folders/nope").0, 404);
    assert_eq!(s.get_json("/ws/v1/streams/folders/a//b").0, 400);
}

#[test]
fn oversized_stream_metadata_is_a_json_413() {
    let s = TestServer::start_with(|c| c.body_limit = 2048);
    let r = s.put_json(
        "/ws/v1/streams/inventory/big/meta",
        &json!({"description": "x".repeat(5000)}),
    );
    assert_eq!(r.status().as_u16(), 413);
    assert!(error_message(&json_of(r), 413).contains("2048"));
    assert_eq!(s.get_json("/ws/v1/streams/inventory/big/meta").0, 404);
}
