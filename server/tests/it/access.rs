//! Access control over real HTTP: credential kinds × scopes × endpoints, what each sees,
//! device keys kept to their subtree, scoped paging, revocation, rate limiting.

use crate::support::*;
use base64::Engine as _;
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn basic_client(user: &str, pw: &str) -> Client {
    let mut h = reqwest::header::HeaderMap::new();
    let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Basic {v}").parse().unwrap(),
    );
    Client::builder().default_headers(h).build().unwrap()
}

fn status(c: &Client, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    call(c, method, url, body.as_ref())
}

fn seed(s: &TestServer) {
    let now = meterstream_storage::time::now_ms();
    let mut items = Vec::new();
    for dev in ["gw-1", "gw-17", "gw-170"] {
        for ch in ["v", "i", "p"] {
            items.push(
                json!({"stream_id": format!("{dev}/m/{ch}"), "value": 1.5, "timestamp": now}),
            );
        }
    }
    assert_eq!(s.post_json(&json!(items)).status(), 201);
}

#[test]
fn without_valid_credentials_only_health_answers() {
    let s = TestServer::start();
    let anon = Client::new();
    assert_eq!(
        status(&anon, "GET", format!("{}/health", s.url), None).0,
        200
    );
    for path in [
        "/ws/v1/streams/inventory",
        "/ws/v1/streams/history/a/b",
        "/ws/v1/devices/inventory",
        "/metrics",
        "/ws/v1/credentials",
    ] {
        let (st, v) = status(&anon, "GET", format!("{}{path}", s.url), None);
        assert_eq!(st, 401, "{path}");
        assert_eq!(v["error"]["status"], 401, "{path}: {v}");
    }
    let r = anon
        .get(format!("{}/ws/v1/streams/inventory", s.url))
        .send()
        .unwrap();
    assert!(r.headers().get("www-authenticate").is_some());
    let wrong = client_with_key("msk_test_wrongsecret");
    assert_eq!(
        status(
            &wrong,
            "GET",
            format!("{}/ws/v1/streams/inventory", s.url),
            None
        )
        .0,
        401
    );
    // Ten failures from this address, then even the right key waits.
    for _ in 0..10 {
        status(
            &wrong,
            "GET",
            format!("{}/ws/v1/streams/inventory", s.url),
            None,
        );
    }
    let r = s
        .client
        .get(format!("{}/ws/v1/streams/inventory", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
}

#[test]
fn kinds_scopes_and_endpoints() {
    let s = TestServer::start();
    seed(&s);
    let reader = client_with_key(&create_credential(
        &s,
        json!({"kind": "api_key", "scopes": ["read"]}),
    ));
    let writer = client_with_key(&create_credential(
        &s,
        json!({"kind": "api_key", "scopes": ["write"]}),
    ));
    let limited = client_with_key(&create_credential(
        &s,
        json!({"kind": "api_key", "scopes": ["read", "write"], "prefixes": ["gw-17/"]}),
    ));
    let device = client_with_key(&create_credential(
        &s,
        json!({"kind": "device", "device_id": "gw-17"}),
    ));
    let pw = create_credential(
        &s,
        json!({"kind": "user", "name": "ana", "password": "correct horse battery"}),
    );
    let person = basic_client("ana", &pw);
    let admin = s.client.clone();
    let u = |p: &str| format!("{}{p}", s.url);
    let point = |dev: &str| Some(json!({"stream_id": format!("{dev}/m/v"), "value": 2.0}));
    // (name, client, method, path, body, expected status)
    type Case<'a> = (&'a str, &'a Client, &'a str, String, Option<Value>, u16);
    let cases: Vec<Case> = vec![
        (
            "admin reads",
            &admin,
            "GET",
            u("/ws/v1/streams/history/gw-1/m/v"),
            None,
            200,
        ),
        (
            "reader reads",
            &reader,
            "GET",
            u("/ws/v1/streams/history/gw-1/m/v"),
            None,
            200,
        ),
        (
            "person reads",
            &person,
            "GET",
            u("/ws/v1/streams/history/gw-1/m/v"),
            None,
            200,
        ),
        (
            "reader cannot write",
            &reader,
            "POST",
            u("/ws/v1/streams/history"),
            point("gw-1"),
            403,
        ),
        (
            "person cannot write",
            &person,
            "POST",
            u("/ws/v1/streams/history"),
            point("gw-1"),
            403,
        ),
        (
            "writer writes",
            &writer,
            "POST",
            u("/ws/v1/streams/history"),
            point("gw-1"),
            201,
        ),
        (
            "writer cannot read",
            &writer,
            "GET",
            u("/ws/v1/streams/history/gw-1/m/v"),
            None,
            403,
        ),
        (
            "limited reads inside",
            &limited,
            "GET",
            u("/ws/v1/streams/history/gw-17/m/v"),
            None,
            200,
        ),
        (
            "limited not outside",
            &limited,
            "GET",
            u("/ws/v1/streams/history/gw-1/m/v"),
            None,
            403,
        ),
        (
            "limited not a sibling prefix",
            &limited,
            "GET",
            u("/ws/v1/streams/history/gw-170/m/v"),
            None,
            403,
        ),
        (
            "limited writes inside",
            &limited,
            "POST",
            u("/ws/v1/streams/history"),
            point("gw-17"),
            201,
        ),
        (
            "limited rollups inside",
            &limited,
            "GET",
            u("/ws/v1/streams/rollups/gw-17/*/v?interval=hour"),
            None,
            200,
        ),
        (
            "limited rollups pattern outside",
            &limited,
            "GET",
            u("/ws/v1/streams/rollups/*/m/v?interval=hour"),
            None,
            403,
        ),
        (
            "limited cannot delete outside",
            &limited,
            "DELETE",
            u("/ws/v1/streams/inventory/gw-1/m/v"),
            None,
            403,
        ),
        (
            "device writes its own",
            &device,
            "POST",
            u("/ws/v1/streams/history"),
            point("gw-17"),
            201,
        ),
        (
            "device cannot read",
            &device,
            "GET",
            u("/ws/v1/streams/history/gw-17/m/v"),
            None,
            403,
        ),
        (
            "device polls its own",
            &device,
            "GET",
            u("/ws/v1/devices/gw-17/commands/poll"),
            None,
            200,
        ),
        (
            "device not another's",
            &device,
            "GET",
            u("/ws/v1/devices/gw-1/commands/poll"),
            None,
            403,
        ),
        (
            "device registers itself",
            &device,
            "PUT",
            u("/ws/v1/devices/inventory/gw-17"),
            Some(json!({"model": "X"})),
            200,
        ),
        (
            "device not another",
            &device,
            "PUT",
            u("/ws/v1/devices/inventory/gw-1"),
            Some(json!({"model": "X"})),
            403,
        ),
        (
            "reader cannot poll",
            &reader,
            "GET",
            u("/ws/v1/devices/gw-17/commands/poll"),
            None,
            403,
        ),
        (
            "writer sends a command",
            &writer,
            "POST",
            u("/ws/v1/devices/gw-17/commands"),
            Some(json!({"command": "read_now"})),
            201,
        ),
        (
            "limited commands outside",
            &limited,
            "POST",
            u("/ws/v1/devices/gw-1/commands"),
            Some(json!({"command": "read_now"})),
            403,
        ),
        (
            "reader cannot send commands",
            &reader,
            "POST",
            u("/ws/v1/devices/gw-17/commands"),
            Some(json!({"command": "read_now"})),
            403,
        ),
        (
            "reader reads metrics",
            &reader,
            "GET",
            u("/metrics"),
            None,
            200,
        ),
        (
            "limited cannot read metrics",
            &limited,
            "GET",
            u("/metrics"),
            None,
            403,
        ),
        (
            "only admin manages credentials",
            &writer,
            "GET",
            u("/ws/v1/credentials"),
            None,
            403,
        ),
        (
            "admin lists credentials",
            &admin,
            "GET",
            u("/ws/v1/credentials"),
            None,
            200,
        ),
    ];
    for (name, c, m, url, body, want) in cases {
        let (st, v) = status(c, m, url, body);
        assert_eq!(st, want, "{name}: {v}");
        if st >= 400 {
            assert_eq!(v["error"]["status"], st, "{name}: {v}");
        }
    }
    // The allowed writes were stored and the refused ones were not: gw-1 holds the seed and the
    // writer's point, gw-17 the seed, the limited key's and the device's.
    let values = |stream: &str| -> Vec<f64> {
        s.history_all(stream, "")
            .iter()
            .map(|(_, v)| v.as_f64().unwrap())
            .collect()
    };
    assert_eq!(values("gw-1/m/v"), vec![1.5, 2.0]);
    assert_eq!(values("gw-17/m/v"), vec![1.5, 2.0, 2.0]);
    // What each sees in listings.
    let ids = |c: &Client, path: &str| -> Vec<String> {
        let (st, v) = status(c, "GET", u(path), None);
        assert_eq!(st, 200, "{path}: {v}");
        v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ids(&reader, "/ws/v1/streams/inventory");
    assert_eq!(all.len(), 9);
    let mine = ids(&limited, "/ws/v1/streams/inventory");
    assert_eq!(mine, vec!["gw-17/m/i", "gw-17/m/p", "gw-17/m/v"]);
    assert_eq!(ids(&limited, "/ws/v1/devices/inventory"), vec!["gw-17"]);
    assert_eq!(ids(&reader, "/ws/v1/devices/inventory").len(), 3);
    // Folders: the way down to gw-17 without counts from outside.
    let (_, f) = status(&limited, "GET", u("/ws/v1/streams/folders"), None);
    let names: Vec<&str> = f["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["gw-17"], "{f}");
}

#[test]
fn a_device_key_cannot_write_into_another_devices_subtree() {
    let s = TestServer::start();
    let device = client_with_key(&create_credential(
        &s,
        json!({"kind": "device", "device_id": "gw-17"}),
    ));
    let (st, v) = status(
        &device,
        "POST",
        format!("{}/ws/v1/streams/history", s.url),
        Some(json!([
            {"stream_id": "gw-17/m/v", "value": 1.0},
            {"stream_id": "gw-1/m/v", "value": 666.0},
            {"stream_id": "gw-170/m/v", "value": 666.0},
        ])),
    );
    assert_eq!(st, 207, "{v}");
    assert_eq!(v["count"], 1);
    let bad: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, vec![1, 2]);
    assert_eq!(v["errors"][0]["error_status"], 403);
    assert_eq!(
        s.get_json("/ws/v1/streams/history/gw-1/m/v").0,
        404,
        "nothing was written there"
    );
    // Only its own commands.
    s.client
        .post(format!("{}/ws/v1/devices/gw-1/commands", s.url))
        .json(&json!({"command": "read_now"}))
        .send()
        .unwrap();
    let (st, _) = status(
        &device,
        "GET",
        format!("{}/ws/v1/devices/gw-1/commands", s.url),
        None,
    );
    assert_eq!(st, 403);
}

#[test]
fn a_scoped_key_pages_through_only_its_subtree() {
    let s = TestServer::start();
    let mut items = Vec::new();
    for dev in ["gw-1", "gw-17", "gw-2"] {
        for k in 0..7 {
            items.push(json!({"stream_id": format!("{dev}/m/c{k}"), "value": 1}));
        }
    }
    assert_eq!(s.post_json(&json!(items)).status(), 201);
    let limited = client_with_key(&create_credential(
        &s,
        json!({"kind": "api_key", "prefixes": ["gw-17/"]}),
    ));
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..20 {
        let (st, v) = status(
            &limited,
            "GET",
            format!("{}/ws/v1/streams/inventory?size=2{cursor}", s.url),
            None,
        );
        assert_eq!(st, 200);
        for x in v["list"].as_array().unwrap() {
            seen.push(x["id"].as_str().unwrap().to_string());
        }
        match v["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let want: Vec<String> = (0..7).map(|k| format!("gw-17/m/c{k}")).collect();
    assert_eq!(seen, want);
}

#[test]
fn out_of_scope_answers_do_not_reveal_whether_a_stream_exists() {
    let s = TestServer::start();
    seed(&s);
    let limited = client_with_key(&create_credential(
        &s,
        json!({"kind": "api_key", "prefixes": ["gw-17/"]}),
    ));
    let a = status(
        &limited,
        "GET",
        format!("{}/ws/v1/streams/history/gw-1/m/v", s.url),
        None,
    );
    let b = status(
        &limited,
        "GET",
        format!("{}/ws/v1/streams/history/gw-1/m/nothing", s.url),
        None,
    );
    assert_eq!(a.0, b.0);
    assert_eq!(
        a.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("m/v", "X"),
        b.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("m/nothing", "X")
    );
    let a = status(
        &limited,
        "GET",
        format!("{}/ws/v1/streams/inventory/gw-1/m/v", s.url),
        None,
    );
    let b = status(
        &limited,
        "GET",
        format!("{}/ws/v1/streams/inventory/gw-1/m/nothing", s.url),
        None,
    );
    assert_eq!(a.0, b.0);
}

#[test]
fn revocation_takes_effect_at_once() {
    let s = TestServer::start();
    let r = s
        .client
        .post(format!("{}/ws/v1/credentials", s.url))
        .json(&json!({"kind": "api_key", "scopes": ["read"]}))
        .send()
        .unwrap();
    let v = json_of(r);
    let key = v["key"].as_str().unwrap();
    let c = client_with_key(key);
    assert_eq!(
        status(
            &c,
            "GET",
            format!("{}/ws/v1/streams/inventory", s.url),
            None
        )
        .0,
        200
    );
    let id = v["id"].as_str().unwrap();
    let r = s
        .client
        .delete(format!("{}/ws/v1/credentials/{id}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        status(
            &c,
            "GET",
            format!("{}/ws/v1/streams/inventory", s.url),
            None
        )
        .0,
        401
    );
    let (_, list) = s.get_json("/ws/v1/credentials");
    let listed = list["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .unwrap()
        .clone();
    assert!(listed["revoked"].is_string());
    assert!(
        listed.get("key").is_none() && !list.to_string().contains(key),
        "secrets are never listed"
    );
}

fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_meterstream-server"))
        .arg("--data-dir")
        .arg(dir)
        .arg("credentials")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn credentials_are_managed_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = cli(
        &dir,
        &[
            "create", "--kind", "api_key", "--scopes", "read", "--prefix", "gw-17/", "--label",
            "ops",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = made["key"].as_str().unwrap().to_string();
    assert_eq!(made["prefixes"][0], "gw-17/");
    let id = made["id"].as_str().unwrap().to_string();
    {
        let s = TestServer::start_at(&dir, |_| {});
        let c = client_with_key(&key);
        assert_eq!(
            status(
                &c,
                "GET",
                format!("{}/ws/v1/streams/inventory", s.url),
                None
            )
            .0,
            200
        );
        assert_eq!(
            status(
                &c,
                "POST",
                format!("{}/ws/v1/streams/history", s.url),
                Some(json!({"stream_id": "gw-17/a", "value": 1}))
            )
            .0,
            403
        );
        // While the server runs, the command line points to the API.
        let busy = cli(&dir, &["list"]);
        assert!(!busy.status.success());
        assert!(String::from_utf8_lossy(&busy.stderr).contains("/ws/v1/credentials"));
    }
    let list = cli(&dir, &["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains(&id) && text.contains("ops") && !text.contains(&key),
        "{text}"
    );
    assert!(cli(&dir, &["revoke", &id]).status.success());
    assert!(!cli(&dir, &["revoke", "nope"]).status.success());
    let s = TestServer::start_at(&dir, |_| {});
    assert_eq!(
        status(
            &client_with_key(&key),
            "GET",
            format!("{}/ws/v1/streams/inventory", s.url),
            None
        )
        .0,
        401
    );
}

#[test]
fn a_key_limited_to_a_group_sees_the_devices_in_it_as_they_change() {
    let s = TestServer::start();
    seed(&s);
    let group = |dev: &str, g: &str| {
        let r = s.put_json(
            &format!("/ws/v1/devices/inventory/{dev}"),
            &json!({"group": g}),
        );
        assert_eq!(r.status(), 200);
    };
    group("gw-1", "north");
    group("gw-17", "south");
    let north = client_with_key(&create_credential(
        &s,
        json!({"kind": "api_key", "groups": ["north"]}),
    ));
    let empty = client_with_key(&create_credential(
        &s,
        json!({"kind": "api_key", "groups": ["west"]}),
    ));
    let ids = |c: &Client, path: &str| -> Vec<String> {
        let (st, v) = status(c, "GET", format!("{}{path}", s.url), None);
        assert_eq!(st, 200, "{v}");
        v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&north, "/ws/v1/devices/inventory"), vec!["gw-1"]);
    assert_eq!(
        ids(&north, "/ws/v1/streams/inventory"),
        vec!["gw-1/m/i", "gw-1/m/p", "gw-1/m/v"]
    );
    assert_eq!(
        status(
            &north,
            "GET",
            format!("{}/ws/v1/streams/history/gw-17/m/v", s.url),
            None
        )
        .0,
        403
    );
    assert!(
        ids(&empty, "/ws/v1/streams/inventory").is_empty(),
        "a group without devices shows nothing"
    );
    // Group membership is read per request.
    group("gw-17", "north");
    assert_eq!(
        ids(&north, "/ws/v1/devices/inventory"),
        vec!["gw-1", "gw-17"]
    );
    assert_eq!(
        status(
            &north,
            "GET",
            format!("{}/ws/v1/streams/history/gw-17/m/v", s.url),
            None
        )
        .0,
        200
    );
    group("gw-1", "south");
    assert_eq!(
        status(
            &north,
            "GET",
            format!("{}/ws/v1/streams/history/gw-1/m/v", s.url),
            None
        )
        .0,
        403
    );
}
