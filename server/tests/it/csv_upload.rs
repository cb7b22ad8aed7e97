//! Device CSV uploads in Digi's column order: good lines stored with every field, bad lines
//! named by number, FORWARDTO copies, STREAMID or the URL's stream.

use crate::support::*;
use serde_json::json;

fn upload(s: &TestServer, path: &str, body: &str) -> (u16, serde_json::Value) {
    let r = s
        .client
        .post(format!("{}{path}", s.url))
        .header("content-type", "text/csv")
        .body(body.to_string())
        .send()
        .unwrap();
    let st = r.status().as_u16();
    (st, json_of(r))
}

#[test]
fn lines_in_digis_order_with_empty_fields_bad_lines_by_number_and_forwarding() {
    let s = TestServer::start();
    let body = concat!(
        "DATA,TIMESTAMP,QUALITY,DESCRIPTION,LOCATION,DATATYPE,UNITS,FORWARDTO,STREAMID\n",
        "230.5,1795000000000,3,\"phase 1, after the fix\",\"42.6,23.3,550\",DOUBLE,V,\"fleet/v,backup/v\",gw/m/v\n",
        "231,2026-11-20T10:00:01Z,,,,,,,gw/m/v\n",
        "oops,1795000002000,,,,INTEGER,,,gw/m/count\n",
        "closed,1795000003000,,,,,,,gw/m/state\n",
        "1,not a time,,,,,,,gw/m/v\n",
        "too,few\n",
        "\n",
        "5,1795000004000,,,,,,,\n",
    );
    let (st, v) = upload(&s, "/ws/v1/streams/csv/gw/m/default", body);
    assert_eq!(st, 207, "{v}");
    assert_eq!(v["stored"], 6, "{v}");
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![4, 6, 7], "{v}");
    assert!(
        v["errors"][0]["message"].as_str().unwrap().contains("oops")
            || v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("INTEGER"),
        "{v}"
    );
    assert!(
        v["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("TIMESTAMP"),
        "{v}"
    );
    // Every field of the first line, read back.
    let (_, page) = s.get_json("/ws/v1/streams/history/gw/m/v?start_time=1795000000000&size=1");
    let p = &page["list"][0];
    assert_eq!(p["value"], 230.5);
    assert_eq!(p["quality"], 3);
    assert_eq!(p["description"], "phase 1, after the fix");
    assert_eq!(p["location"], "42.6,23.3,550");
    let (_, info) = s.get_json("/ws/v1/streams/inventory/gw/m/v");
    assert_eq!(
        (info["type"].as_str(), info["units"].as_str()),
        (Some("DOUBLE"), Some("V"))
    );
    assert_eq!(s.history_all("gw/m/v", "").len(), 2);
    // FORWARDTO copied the point; text stays text; no STREAMID: the URL's stream.
    assert_eq!(
        s.history_all("fleet/v", ""),
        vec![(1_795_000_000_000, json!(230.5))]
    );
    assert_eq!(s.history_all("backup/v", "").len(), 1);
    assert_eq!(s.history_all("gw/m/state", "")[0].1, json!("closed"));
    assert_eq!(
        s.history_all("gw/m/default", ""),
        vec![(1_795_000_004_000, json!(5.0))]
    );
    // All good: 201; no stream anywhere: the line says so.
    let (st, v) = upload(&s, "/ws/v1/streams/csv", "7,1795000005000,,,,,,,gw/m/v\n");
    assert_eq!((st, v["stored"].as_u64()), (201, Some(1)), "{v}");
    let (st, v) = upload(&s, "/ws/v1/streams/csv", "7,1795000005000,,,,,,\n");
    assert_eq!(st, 207);
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("STREAMID"),
        "{v}"
    );
}
