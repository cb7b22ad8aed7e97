//! Digi's legacy web services (`/ws/DataStream`, `/ws/DataPoint`): Digi's own Python client
//! against a real server, XML documents with Digi's exact element names, JSON with values as
//! strings, paging to an empty last page, deletes, and bad input that stores nothing wrong.
//! Everything written is read back through the v1 API too.

use crate::support::*;
use meterstream_storage::point::point_id;
use reqwest::blocking::Response;
use serde_json::{json, Value};
use std::process::Command;

/// The Python that has Digi's `devicecloud` library: `METERSTREAM_DIGI_PYTHON`, or the venv
/// scripts/test makes.
fn digi_python() -> String {
    if let Ok(p) = std::env::var("METERSTREAM_DIGI_PYTHON") {
        return p;
    }
    let venv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/digi-venv/bin/python"
    );
    assert!(
        std::path::Path::new(venv).exists(),
        "{venv} is missing: scripts/test installs Digi's devicecloud library there \
         (or set METERSTREAM_DIGI_PYTHON)"
    );
    venv.to_string()
}

#[test]
fn digis_python_library_works_with_a_new_base_url() {
    let s = TestServer::start();
    let pw = create_credential(
        &s,
        json!({"kind": "user", "name": "integrator", "password": "a long enough password 1",
               "scopes": ["read", "write"]}),
    );
    // A read-only API key, sent the way Digi's client sends API keys: its id and its secret.
    let key = create_credential(&s, json!({"kind": "api_key", "scopes": ["read"]}));
    let (key_id, key_secret) = key
        .strip_prefix("msk_")
        .and_then(|k| k.split_once('_'))
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/digi_client.py");
    let out = Command::new(digi_python())
        .args([script, &s.url, "integrator", &pw, key_id, key_secret])
        .output()
        .expect("the Digi client script runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Digi's client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["voltage_points"], 500);
    // What the client did, seen through the v1 API.
    let pts = s.history_all("dev1/pst04/voltage", "");
    assert_eq!(pts.len(), 500);
    assert_eq!(pts[0], (ms("2026-01-05T00:00:00Z"), json!(230.5)));
    let (st, v) = s.get_json("/ws/v1/streams/inventory/dev1/pst04/voltage");
    assert_eq!(st, 200);
    assert_eq!(
        (
            &v["type"],
            &v["units"],
            &v["description"],
            &v["data_ttl"],
            &v["rollup_ttl"]
        ),
        (
            &json!("DOUBLE"),
            &json!("V"),
            &json!("L1 voltage"),
            &json!(86400),
            &json!(864000)
        ),
        "{v}"
    );
    let (st, _) = s.get_json("/ws/v1/streams/inventory/dev1/pst04/count");
    assert_eq!(st, 404);
}

fn text(r: Response) -> (u16, String, String) {
    let st = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (st, ct, r.text().unwrap())
}

/// A POST with no Content-Type at all, as Digi's client sends its XML.
fn post_bare(s: &TestServer, path: &str, body: &str) -> (u16, String, String) {
    text(
        s.client
            .post(format!("{}{path}", s.url))
            .body(body.to_string())
            .send()
            .unwrap(),
    )
}

fn get_json_accept(s: &TestServer, path: &str) -> (u16, Value) {
    let r = s
        .client
        .get(format!("{}{path}", s.url))
        .header("accept", "application/json")
        .send()
        .unwrap();
    let st = r.status().as_u16();
    (st, json_of(r))
}

fn server_ts(s: &TestServer, stream: &str, ts: &str) -> i64 {
    let (_, v) = s.get_json(&format!(
        "/ws/v1/streams/history/{stream}?start_time={}&size=1",
        ms(ts)
    ));
    ms(v["list"][0]["server_timestamp"].as_str().unwrap())
}

#[test]
fn xml_in_and_out_with_digis_exact_element_names_and_string_values() {
    let s = TestServer::start();
    let body = "<list>\
        <DataPoint><streamId>gw/pst04/voltage_l1</streamId><data>230.25</data>\
          <description>after &amp; before</description><timestamp>2026-11-20T10:00:00Z</timestamp>\
          <quality>7</quality><location>47.3,8.5,400</location><streamType>DOUBLE</streamType>\
          <streamUnits>V</streamUnits></DataPoint>\
        <DataPoint><streamId>gw/pst04/voltage_l1</streamId><data>231</data>\
          <timestamp>1795169101000</timestamp></DataPoint>\
        <DataPoint><streamId>gw/pst04/pulses</streamId><data>5</data>\
          <timestamp>2026-11-20T10:00:00Z</timestamp><streamType>LONG</streamType></DataPoint>\
        </list>";
    let (st, ct, answer) = post_bare(&s, "/ws/DataPoint", body);
    assert_eq!(st, 201, "{answer}");
    assert!(ct.starts_with("application/xml"), "{ct}");
    let t0 = ms("2026-11-20T10:00:00Z");
    let id0 = point_id("gw/pst04/voltage_l1", t0);
    let id1 = point_id("gw/pst04/voltage_l1", 1795169101000);
    let id2 = point_id("gw/pst04/pulses", t0);
    assert_eq!(
        answer,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<result>\n\
             \x20 <location>DataPoint/gw/pst04/voltage_l1/{id0}</location>\n\
             \x20 <location>DataPoint/gw/pst04/voltage_l1/{id1}</location>\n\
             \x20 <location>DataPoint/gw/pst04/pulses/{id2}</location>\n</result>\n"
        )
    );
    // The same points through v1: every field.
    let (_, v) = s.get_json("/ws/v1/streams/history/gw/pst04/voltage_l1");
    assert_eq!(v["list"][0]["value"], 230.25, "{v}");
    assert_eq!(v["list"][0]["quality"], 7);
    assert_eq!(v["list"][0]["location"], "47.3,8.5,400");
    assert_eq!(v["list"][0]["description"], "after & before");
    assert_eq!(v["list"][1]["value"], 231.0);
    let (_, v) = s.get_json("/ws/v1/streams/inventory/gw/pst04/voltage_l1");
    assert_eq!((&v["type"], &v["units"]), (&json!("DOUBLE"), &json!("V")));
    // Read back as XML, the whole document compared.
    let sv0 = server_ts(&s, "gw/pst04/voltage_l1", "2026-11-20T10:00:00Z");
    let r = s
        .client
        .get(format!("{}/ws/DataPoint/gw/pst04/voltage_l1?size=1", s.url))
        .send()
        .unwrap();
    let (st, _, doc) = text(r);
    assert_eq!(st, 200, "{doc}");
    let cursor = doc
        .split("<pageCursor>")
        .nth(1)
        .and_then(|r| r.split("</pageCursor>").next())
        .unwrap()
        .to_string();
    assert_eq!(
        doc,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<result>\n\
             \x20 <resultSize>1</resultSize>\n\
             \x20 <requestedSize>1</requestedSize>\n\
             \x20 <pageCursor>{cursor}</pageCursor>\n\
             \x20 <requestedStartTime>-1</requestedStartTime>\n\
             \x20 <requestedEndTime>-1</requestedEndTime>\n\
             \x20 <DataPoint>\n\
             \x20   <id>{id0}</id>\n\
             \x20   <streamId>gw/pst04/voltage_l1</streamId>\n\
             \x20   <timestamp>{t0}</timestamp>\n\
             \x20   <timestampISO>2026-11-20T10:00:00.000Z</timestampISO>\n\
             \x20   <serverTimestamp>{sv0}</serverTimestamp>\n\
             \x20   <serverTimestampISO>{}</serverTimestampISO>\n\
             \x20   <data>230.25</data>\n\
             \x20   <description>after &amp; before</description>\n\
             \x20   <quality>7</quality>\n\
             \x20   <location>47.3,8.5,400</location>\n\
             \x20 </DataPoint>\n</result>\n",
            meterstream_storage::time::format_iso(sv0)
        )
    );
    // The next page: the second point, without quality or location elements (unset is left
    // out, not sent empty); a whole float keeps its fraction, as Digi writes doubles.
    let (_, _, doc2) = text(
        s.client
            .get(format!(
                "{}/ws/DataPoint/gw/pst04/voltage_l1?size=1&pageCursor={cursor}",
                s.url
            ))
            .send()
            .unwrap(),
    );
    assert!(doc2.contains("<data>231.0</data>"), "{doc2}");
    assert!(doc2.contains("<description></description>"), "{doc2}");
    assert!(
        !doc2.contains("<quality>") && !doc2.contains("<location>"),
        "{doc2}"
    );
    // LONG data read back as 5, not 5.0.
    let (_, _, doc3) = text(
        s.client
            .get(format!("{}/ws/DataPoint/gw/pst04/pulses", s.url))
            .send()
            .unwrap(),
    );
    assert!(doc3.contains("<data>5</data>"), "{doc3}");
    // The stream, in XML.
    let (st, _, sdoc) = text(
        s.client
            .get(format!("{}/ws/DataStream/gw/pst04/pulses", s.url))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{sdoc}");
    for part in [
        "<resultSize>1</resultSize>",
        "<requestedSize>1000</requestedSize>",
        "  <DataStream>\n    <streamId>gw/pst04/pulses</streamId>\n    <dataType>LONG</dataType>\n    <forwardTo></forwardTo>\n    <currentValue>\n",
        "      <data>5</data>\n",
        "    </currentValue>\n    <description></description>\n    <units></units>\n    <dataTtl>-1</dataTtl>\n    <rollupTtl>-1</rollupTtl>\n  </DataStream>\n</result>\n",
    ] {
        assert!(sdoc.contains(part), "{part:?} not in\n{sdoc}");
    }
}

#[test]
fn json_values_are_strings_and_every_page_carries_a_cursor_to_an_empty_last_page() {
    let s = TestServer::start();
    let body = json!([
        {"streamId": "gw/m/n", "data": 5, "timestamp": 1000, "streamType": "INTEGER"},
        {"streamId": "gw/m/n", "data": "6", "timestamp": "1970-01-01T00:00:02Z"},
        {"streamId": "gw/m/n", "data": 7, "timestamp": 3000, "quality": 2},
        {"streamId": "gw/m/n", "data": 8, "timestamp": 4000}
    ]);
    let r = s
        .client
        .post(format!("{}/ws/DataPoint", s.url))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let v = json_of(r);
    assert_eq!(v["location"].as_array().unwrap().len(), 4, "{v}");
    // Pages of 2 in descending order: 2 full pages, then an empty one.
    let mut cursor = String::new();
    let mut seen = Vec::new();
    for page in 0..3 {
        let q = if cursor.is_empty() {
            "/ws/DataPoint/gw/m/n?size=2&order=descending".to_string()
        } else {
            format!("/ws/DataPoint/gw/m/n?size=2&order=descending&pageCursor={cursor}")
        };
        let (st, v) = get_json_accept(&s, &q);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["requestedSize"], "2", "{v}");
        assert_eq!(v["requestedStartTime"], "-1");
        let items = v["items"].as_array().unwrap();
        assert_eq!(
            v["resultSize"],
            items.len().to_string(),
            "resultSize is a string"
        );
        assert_eq!(
            items.len(),
            if page < 2 { 2 } else { 0 },
            "page {page}: {v}"
        );
        for it in items {
            assert!(
                it["data"].is_string() && it["timestamp"].is_string(),
                "{it}"
            );
            seen.push(it["data"].as_str().unwrap().to_string());
        }
        cursor = v["pageCursor"]
            .as_str()
            .expect("every page has a cursor")
            .to_string();
    }
    assert_eq!(seen, ["8", "7", "6", "5"]);
    // The point with quality keeps it, as a string; the others have no quality field.
    let (_, v) = get_json_accept(&s, "/ws/DataPoint/gw/m/n?startTime=3000&endTime=4000");
    assert_eq!(v["items"][0]["quality"], "2", "{v}");
    assert_eq!(v["requestedStartTime"], "3000");
    let (_, v) = get_json_accept(&s, "/ws/DataPoint/gw/m/n?startTime=4000");
    assert!(v["items"][0].get("quality").is_none(), "{v}");
    assert!(v["items"][0].get("location").is_none(), "{v}");
    // Rollups in the legacy shape: the interval's start, the value a float string.
    let (_, v) = get_json_accept(
        &s,
        "/ws/DataPoint/gw/m/n?rollupInterval=hour&rollupMethod=sum&order=ascending",
    );
    assert_eq!(v["items"][0]["timestamp"], "0", "{v}");
    assert_eq!(
        v["items"][0]["data"], "26",
        "a whole sum of an INTEGER stream: {v}"
    );
    // The server timeline answers the same points (all were stored in one request).
    let (_, v) = get_json_accept(&s, "/ws/DataPoint/gw/m/n?timeline=server&size=10");
    assert_eq!(v["resultSize"], "4", "{v}");
    // Day rollups follow `timezone`: 23:30 and 00:30 UTC are one day in Berlin, two in UTC.
    let r = s
        .client
        .post(format!("{}/ws/DataPoint/gw/m/d", s.url))
        .body(
            "<list><DataPoint><data>1</data><timestamp>2026-11-20T23:30:00Z</timestamp></DataPoint>\
             <DataPoint><data>2</data><timestamp>2026-11-21T00:30:00Z</timestamp></DataPoint></list>",
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, v) = get_json_accept(
        &s,
        "/ws/DataPoint/gw/m/d?rollupInterval=day&rollupMethod=count&timezone=Europe/Berlin",
    );
    assert_eq!(v["resultSize"], "1", "{v}");
    assert_eq!(
        v["items"][0]["timestamp"],
        ms("2026-11-20T23:00:00Z").to_string(),
        "{v}"
    );
    assert_eq!(
        v["items"][0]["data"], "2.0",
        "a DOUBLE stream's rollup is a float: {v}"
    );
    let (_, v) = get_json_accept(
        &s,
        "/ws/DataPoint/gw/m/d?rollupInterval=day&rollupMethod=count",
    );
    assert_eq!(v["resultSize"], "2", "{v}");
    // Streams in JSON, under a prefix, with paging.
    let r = s
        .client
        .put(format!("{}/ws/DataStream/gw/m/other", s.url))
        .header("content-type", "application/json")
        .json(&json!({"dataType": "DOUBLE", "units": "kWh", "forwardTo": ["gw/m/copy"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let (st, v) = get_json_accept(&s, "/ws/DataStream/gw/m/n?size=1");
    assert_eq!(st, 200);
    assert_eq!(v["items"][0]["streamId"], "gw/m/n", "{v}");
    let (st, v) = get_json_accept(&s, "/ws/DataStream/gw?size=2");
    assert_eq!(st, 200);
    assert_eq!(v["items"][1]["streamId"], "gw/m/n", "{v}");
    assert_eq!(v["items"][1]["currentValue"]["data"], "8", "{v}");
    let c = v["pageCursor"].as_str().unwrap();
    let (_, v) = get_json_accept(&s, &format!("/ws/DataStream/gw?size=1&pageCursor={c}"));
    assert_eq!(v["items"][0]["streamId"], "gw/m/other", "{v}");
    assert_eq!(v["items"][0]["forwardTo"], "gw/m/copy");
    assert_eq!(v["items"][0]["units"], "kWh");
    assert!(v["items"][0].get("currentValue").is_none(), "{v}");
    let c = v["pageCursor"].as_str().unwrap();
    let (_, v) = get_json_accept(&s, &format!("/ws/DataStream/gw?size=1&pageCursor={c}"));
    assert_eq!(v["resultSize"], "0", "{v}");
    // forwardTo copies what is posted to the stream.
    let r = s
        .client
        .post(format!("{}/ws/DataPoint/gw/m/other", s.url))
        .body("<DataPoint><data>1.5</data><timestamp>5000</timestamp></DataPoint>")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(s.history_all("gw/m/copy", ""), vec![(5000, json!(1.5))]);
    // A missing stream is a 404, as Digi's client expects, in either notation.
    let (st, v) = get_json_accept(&s, "/ws/DataStream/gw/nothing");
    assert_eq!(st, 404);
    assert!(v["error"].as_str().unwrap().contains("gw/nothing"), "{v}");
    let (st, _) = get_json_accept(&s, "/ws/DataPoint/gw/nothing");
    assert_eq!(st, 404);
}

#[test]
fn streams_are_created_updated_and_deleted_and_points_deleted_by_id_or_range() {
    let s = TestServer::start();
    let (st, _, a) = post_bare(
        &s,
        "/ws/DataStream",
        "<DataStream><streamId>d1/m/e</streamId><dataType>LONG</dataType>\
         <description>energy</description><dataTtl>3600</dataTtl><units>Wh</units></DataStream>",
    );
    assert_eq!(st, 201, "{a}");
    assert!(a.contains("<location>DataStream/d1/m/e</location>"), "{a}");
    // POST creates only: the same stream again is a conflict naming it.
    let (st, _, a) = post_bare(
        &s,
        "/ws/DataStream",
        "<DataStream><streamId>d1/m/e</streamId></DataStream>",
    );
    assert_eq!(st, 409, "{a}");
    assert!(a.contains("<error>") && a.contains("d1/m/e"), "{a}");
    // PUT updates.
    let r = s
        .client
        .put(format!("{}/ws/DataStream/d1/m/e", s.url))
        .body("<DataStream><description>active energy</description></DataStream>")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = s.get_json("/ws/v1/streams/inventory/d1/m/e");
    assert_eq!(
        (&v["type"], &v["description"], &v["units"], &v["data_ttl"]),
        (
            &json!("LONG"),
            &json!("active energy"),
            &json!("Wh"),
            &json!(3600)
        )
    );
    // Points, then one deleted by id (the last segment is an id although paths hold '/').
    for i in 0..5 {
        let (st, _, a) = post_bare(
            &s,
            "/ws/DataPoint/d1/m/e",
            &format!(
                "<DataPoint><data>{i}</data><timestamp>{}</timestamp></DataPoint>",
                1000 * (i + 1)
            ),
        );
        assert_eq!(st, 201, "{a}");
    }
    let id = point_id("d1/m/e", 2000);
    let r = s
        .client
        .delete(format!("{}/ws/DataPoint/d1/m/e/{id}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .delete(format!("{}/ws/DataPoint/d1/m/e/{id}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "the point is gone");
    // A range: [3000, 5000).
    let r = s
        .client
        .delete(format!(
            "{}/ws/DataPoint/d1/m/e?startTime=1970-01-01T00:00:03Z&endTime=5000",
            s.url
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let left: Vec<i64> = s.history_all("d1/m/e", "").iter().map(|p| p.0).collect();
    assert_eq!(left, vec![1000, 5000]);
    // The stream.
    let r = s
        .client
        .delete(format!("{}/ws/DataStream/d1/m/e", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .delete(format!("{}/ws/DataStream/d1/m/e", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let (st, _) = s.get_json("/ws/v1/streams/inventory/d1/m/e");
    assert_eq!(st, 404);
}

#[test]
fn bad_input_names_the_item_and_stores_nothing_wrong() {
    let s = TestServer::start();
    // Not XML at all, or not closed: 400 in Digi's error shape, nothing stored.
    for body in [
        "<list><DataPoint><streamId>g/m/v</streamId><data>1</data></DataPoint>",
        "<DataPoint><streamId>g/m/v</streamId><data>1</data></Data>",
        "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><DataPoint><streamId>g/m/v</streamId><data>&e;</data></DataPoint>",
        "<Something/>",
    ] {
        let (st, _, a) = post_bare(&s, "/ws/DataPoint", body);
        assert_eq!(st, 400, "{body}: {a}");
        assert!(a.contains("<error>"), "{a}");
    }
    let (st, _) = s.get_json("/ws/v1/streams/inventory/g/m/v");
    assert_eq!(st, 404, "nothing was stored");
    // A list with bad items: the good ones are stored, each bad one named by its index.
    let (st, _, a) = post_bare(
        &s,
        "/ws/DataPoint",
        "<list>\
         <DataPoint><streamId>g/m/v</streamId><data>1.5</data><timestamp>1000</timestamp></DataPoint>\
         <DataPoint><streamId>g/m/v</streamId><data>abc</data><timestamp>2000</timestamp></DataPoint>\
         <DataPoint><streamId>g/m/v</streamId><data>2</data><timestmap>3000</timestmap></DataPoint>\
         <DataPoint><data>2</data></DataPoint>\
         <DataPoint><streamId>g/m/v</streamId><data>3</data><quality>high</quality></DataPoint>\
         <DataPoint><streamId>g/m/v</streamId><data>4</data><timestamp>yesterday</timestamp></DataPoint>\
         <DataPoint><streamId>g/m/v</streamId><data>4.5</data><timestamp>5000</timestamp></DataPoint>\
         </list>",
    );
    assert_eq!(st, 207, "{a}");
    for (i, what) in [
        (1, "abc"),
        (2, "timestmap"),
        (3, "streamId is missing"),
        (4, "quality"),
        (5, "yesterday"),
    ] {
        let line = a
            .lines()
            .find(|l| l.contains(&format!("<error>item {i}:")))
            .unwrap_or_else(|| panic!("no error for item {i} in {a}"));
        assert!(line.contains(what), "item {i}: {line}");
    }
    assert_eq!(a.matches("<location>").count(), 2, "{a}");
    assert_eq!(
        s.history_all("g/m/v", ""),
        vec![(1000, json!(1.5)), (5000, json!(4.5))]
    );
    // A bad data type, a stream id that differs from the URL's, a bad query parameter.
    let r = s
        .client
        .post(format!("{}/ws/DataStream", s.url))
        .header("accept", "application/json")
        .body("<DataStream><streamId>g/m/w</streamId><dataType>foobar</dataType></DataStream>")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = json_of(r);
    assert!(v["error"].as_str().unwrap().contains("foobar"), "{v}");
    let (st, _, a) = post_bare(
        &s,
        "/ws/DataPoint/g/m/v",
        "<DataPoint><streamId>g/m/x</streamId><data>1</data></DataPoint>",
    );
    assert_eq!(st, 400);
    assert!(a.contains("g/m/x"), "{a}");
    let (st, v) = get_json_accept(&s, "/ws/DataPoint/g/m/v?startTime=soon");
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("startTime"), "{v}");
    let (st, v) = get_json_accept(&s, "/ws/DataPoint/g/m/v?start_time=0");
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("start_time"), "{v}");
    // A type the stream cannot take, and a content type the services do not speak.
    let (st, _, a) = post_bare(
        &s,
        "/ws/DataStream",
        "<DataStream><streamId>g/m/t</streamId><dataType>STRING</dataType></DataStream>",
    );
    assert_eq!(st, 201, "{a}");
    let r = s
        .client
        .put(format!("{}/ws/DataStream/g/m/v", s.url))
        .body("<DataStream><forwardTo>g/m/t</forwardTo></DataStream>")
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    let (_, v) = s.get_json("/ws/v1/streams/inventory/g/m/v");
    assert_eq!(
        v["forward_to"],
        json!([]),
        "the refused forward was not set: {v}"
    );
    let r = s
        .client
        .post(format!("{}/ws/DataPoint", s.url))
        .header("content-type", "application/msgpack")
        .body(vec![0x80])
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);
    // After all of it, the stream holds exactly the two good points.
    assert_eq!(s.history_all("g/m/v", "").len(), 2);
}
