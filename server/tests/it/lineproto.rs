//! InfluxDB line protocol over real HTTP: escapes, every precision, gzip, the v2 endpoint with
//! a `Token`, the path template, errors as InfluxDB gives them; checked through the v1 API.

use crate::support::*;
use serde_json::{json, Value};

fn write(s: &TestServer, path: &str, auth: &str, body: Vec<u8>, gzip: bool) -> (u16, Value) {
    let mut r = reqwest::blocking::Client::new()
        .post(format!("{}{path}", s.url))
        .header("authorization", auth)
        .header("content-type", "text/plain; charset=utf-8");
    if gzip {
        r = r.header("content-encoding", "gzip");
    }
    let r = r.body(body).send().unwrap();
    let st = r.status().as_u16();
    let text = r.text().unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn bearer() -> String {
    format!("Bearer {ADMIN_KEY}")
}

#[test]
fn lines_land_in_streams_with_their_types_at_every_precision() {
    let s = TestServer::start();
    let body = concat!(
        "# a comment, then a blank line\n\n",
        "meter,gw=G1,dev=D1 voltage_l1=230.1,count=5i,on=t,state=\"closed, \\\"ok\\\"\" 1795000000\n",
        "meter,gw=G1,dev=D1 voltage_l1=230.2 1795000001\n",
        "my\\ meter,gw=G\\ 2,dev=D2 v=1.5 1795000000\n",
    );
    let (st, v) = write(&s, "/write?db=x&precision=s", &bearer(), body.into(), false);
    assert_eq!(st, 204, "{v}");
    assert_eq!(
        s.history_all("G1/D1/meter/voltage_l1", ""),
        vec![
            (1_795_000_000_000, json!(230.1)),
            (1_795_000_001_000, json!(230.2))
        ]
    );
    assert_eq!(s.history_all("G1/D1/meter/count", "")[0].1, json!(5));
    assert_eq!(s.history_all("G1/D1/meter/on", "")[0].1, json!(1));
    assert_eq!(
        s.history_all("G1/D1/meter/state", "")[0].1,
        json!("closed, \"ok\"")
    );
    // Escaped spaces are part of the names; a path segment holds them as `_`.
    assert_eq!(s.history_all("G_2/D2/my_meter/v", "")[0].1, json!(1.5));
    let (_, info) = s.get_json("/ws/v1/streams/inventory/G1/D1/meter/count");
    assert_eq!(info["type"], "LONG");
    let (_, info) = s.get_json("/ws/v1/streams/inventory/G1/D1/meter/state");
    assert_eq!(info["type"], "STRING");
    let (_, info) = s.get_json("/ws/v1/streams/inventory/G1/D1/meter/on");
    assert_eq!(info["type"], "INTEGER");
    let (_, info) = s.get_json("/ws/v1/streams/inventory/G1/D1/meter/voltage_l1");
    assert_eq!(info["type"], "DOUBLE");
    // Every precision lands on the same millisecond.
    for (p, ts) in [
        ("ns", "1795000002000000000"),
        ("us", "1795000002000000"),
        ("ms", "1795000002000"),
        ("s", "1795000002"),
    ] {
        let (st, v) = write(
            &s,
            &format!("/write?precision={p}"),
            &bearer(),
            format!("prec,p={p} v=1 {ts}").into(),
            false,
        );
        assert_eq!(st, 204, "{v}");
        assert_eq!(
            s.history_all(&format!("{p}/prec/v"), "")[0].0,
            1_795_000_002_000
        );
    }
    // gzip, on the v2 endpoint, with an InfluxDB 2 `Token`.
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"zipped,site=S v=7i 1795000003000\n").unwrap();
    let (st, v) = write(
        &s,
        "/api/v2/write?org=o&bucket=b&precision=ms",
        &format!("Token {ADMIN_KEY}"),
        gz.finish().unwrap(),
        true,
    );
    assert_eq!(st, 204, "{v}");
    assert_eq!(
        s.history_all("S/zipped/v", ""),
        vec![(1_795_000_003_000, json!(7))]
    );
}

#[test]
fn errors_answer_as_influxdb_does_and_store_nothing_of_a_bad_body() {
    let s = TestServer::start_with(|c| c.body_limit = 4096);
    let (st, v) = write(
        &s,
        "/write?precision=s",
        &bearer(),
        "good,g=a v=1 1795000000\nbad,g=a v=oops 1795000000\n".into(),
        false,
    );
    assert_eq!(st, 400);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("line 2") && msg.contains("oops"), "{msg}");
    let (st, _) = s.get_json("/ws/v1/streams/inventory/a/good/v");
    assert_eq!(st, 404, "nothing of a body with a bad line is stored");
    // A field whose type differs from its stream's: the rest is written, the line is named.
    let (st, _) = write(
        &s,
        "/write?precision=s",
        &bearer(),
        "m,g=b v=1 1795000000\n".into(),
        false,
    );
    assert_eq!(st, 204);
    let (st, v) = write(
        &s,
        "/write?precision=s",
        &bearer(),
        "m,g=b w=2 1795000000\nm,g=b v=\"text\" 1795000001\n".into(),
        false,
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("partial write: line 2"),
        "{v}"
    );
    assert_eq!(s.history_all("b/m/w", "").len(), 1);
    // Too large: 413; a bad precision: 400 naming it; no credentials: 401.
    let (st, v) = write(&s, "/write", &bearer(), vec![b'x'; 5000], false);
    assert_eq!(st, 413, "{v}");
    let (st, v) = write(&s, "/write?precision=h", &bearer(), "m v=1".into(), false);
    assert_eq!(st, 400);
    assert!(v.to_string().contains("precision"), "{v}");
    let (st, _) = write(
        &s,
        "/write",
        "Token msk_nobody_0000000000000000000000000",
        "m v=1".into(),
        false,
    );
    assert_eq!(st, 401);
}

#[test]
fn a_template_names_the_tags() {
    let s = TestServer::start_with(|c| c.line_protocol_template = "{gw}/{dev}/{field}".into());
    let (st, v) = write(
        &s,
        "/write?precision=s",
        &bearer(),
        "meter,dev=D,gw=G voltage_l1=230.1 1795000000\n".into(),
        false,
    );
    assert_eq!(st, 204, "{v}");
    assert_eq!(s.history_all("G/D/voltage_l1", "")[0].1, json!(230.1));
    let (st, v) = write(&s, "/write", &bearer(), "meter,gw=G v=1\n".into(), false);
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("\"dev\""), "{v}");
}
