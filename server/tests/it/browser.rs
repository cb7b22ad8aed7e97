//! The dashboards in a real headless browser (Debian's chromium through chromedriver, driven
//! by `meterstream_testkit::Browser`). The tests log in, browse the tree to a stream, open its chart and check that it drew the values the API
//! answers for that range; acknowledge an alarm; and check that nothing overflows at 375 px.

use crate::support::*;
use meterstream_testkit::Browser;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The numbers of a JSON array (its items' `field`, or the items themselves for ""), as f64:
/// a browser writes 330.0 as 330.
fn numbers(list: &Value, field: &str) -> Vec<f64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| if field.is_empty() { v } else { &v[field] })
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// A server with two hours of a voltage stream (one point a minute) and a status stream.
fn server_with_data() -> (TestServer, i64) {
    let s = TestServer::start();
    let now = meterstream_storage::time::now_ms() / 60_000 * 60_000;
    let pts: Vec<Value> = (0..120)
        .map(|i| {
            json!({"stream_id": "gw-7/pst04/voltage_l1", "timestamp": now - (119 - i) * 60_000,
                   "value": 230.0 + (i % 7) as f64 * 0.5, "stream_units": "V"})
        })
        .chain([json!({"stream_id": "gw-7/pst04/status", "value": "active"})])
        .collect();
    assert_eq!(s.post_json(&json!(pts)).status().as_u16(), 201);
    (s, now)
}

fn log_in(b: &Browser, s: &TestServer) {
    b.goto(&format!("{}/", s.url));
    b.type_into("input[name=key]", ADMIN_KEY);
    b.click("form.login button[type=submit]");
    b.find("ul.tree a.folder");
}

/// Where the tests leave their screenshots: `METERSTREAM_SCREENSHOTS` if set (the README's come
/// from `METERSTREAM_SCREENSHOTS=$PWD/docs/screenshots cargo test -p meterstream-server browser`),
/// else a directory under the build's temporary folder.
fn shots() -> std::path::PathBuf {
    let d = std::env::var_os("METERSTREAM_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn log_in_browse_to_a_stream_and_its_chart_draws_what_the_api_answers() {
    let (s, _now) = server_with_data();
    let b = Browser::start(1280);
    // Without credentials the app asks for them; wrong ones are refused with a message.
    b.goto(&format!("{}/", s.url));
    b.type_into(
        "input[name=key]",
        "msk_nobody_000000000000000000000000000000",
    );
    b.click("form.login button[type=submit]");
    let msg = b.wait_for("return document.getElementById('login-error')?.textContent");
    assert!(msg.as_str().unwrap().contains("not accepted"), "{msg}");
    b.eval("document.querySelector('input[name=key]').value = ''; return 1;");
    b.type_into("input[name=key]", ADMIN_KEY);
    b.click("form.login button[type=submit]");
    // The tree: gw-7 / pst04 / voltage_l1.
    b.click("ul.tree a.folder[href='#/streams/gw-7']");
    b.click("ul.tree a.folder[href='#/streams/gw-7/pst04']");
    let row = b.wait_for(
        "const r = document.querySelector('tr[data-stream=\"gw-7/pst04/voltage_l1\"]'); return r && r.innerText;",
    );
    let row = row.as_str().unwrap();
    assert!(
        row.contains("voltage_l1") && row.contains("V") && row.contains("DOUBLE"),
        "{row}"
    );
    b.screenshot(&shots().join("streams.png"));
    // The first view's weight, without the API's answers: under 200 KB.
    let bytes = b.eval(
        "return performance.getEntriesByType('navigation')[0].transferSize + performance.getEntriesByType('resource').filter(r => !r.name.includes('/ws/')).reduce((a, r) => a + r.transferSize, 0);",
    );
    let bytes = bytes.as_f64().unwrap();
    assert!(bytes > 1000.0 && bytes < 200_000.0, "{bytes} bytes");
    b.click("a.stream[href='#/stream/gw-7/pst04/voltage_l1']");
    b.click("button[data-period=day]");
    let drawn = b.wait_for(
        "const c = window.meterstream.charts['gw-7/pst04/voltage_l1']; return c && c.plot && {url: c.url, interval: c.interval, ts: c.data[0], avg: c.data[1]};",
    );
    // The chart drew exactly what the API answers for the same query.
    let url = drawn["url"].as_str().unwrap();
    let (st, api) = s.get_json(url);
    assert_eq!(st, 200, "{api}");
    let api_ts: Vec<i64> = api["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ms(p["timestamp"].as_str().unwrap()) / 1000)
        .collect();
    let api_avg = numbers(&api["list"], "value");
    let ts: Vec<i64> = numbers(&drawn["ts"], "")
        .iter()
        .map(|t| *t as i64)
        .collect();
    let avg = numbers(&drawn["avg"], "");
    assert!(!api_ts.is_empty());
    assert_eq!(ts, api_ts);
    assert_eq!(avg, api_avg);
    // A day over a 1280 px chart: 5-minute intervals (288 of them fit, 1-minute ones do not).
    assert_eq!(drawn["interval"], "5m");
    // uPlot drew it: a canvas of the chart's size.
    let canvas =
        b.wait_for("const c = document.querySelector('#chart canvas'); return c && c.width;");
    assert!(canvas.as_u64().unwrap() > 600);
    b.screenshot(&shots().join("stream.png"));
    // Panning: the keyboard's buttons move the range by half; dragging with Shift moves it
    // with the mouse; plain dragging zooms into the dragged range.
    let range = |b: &Browser| -> (i64, i64) {
        let v = b.eval("const p = new URLSearchParams(location.hash.split('?')[1]); return [Number(p.get('start')), Number(p.get('end'))];");
        (v[0].as_i64().unwrap(), v[1].as_i64().unwrap())
    };
    b.click("#earlier");
    b.wait_for("return location.hash.includes('start=');");
    let (s1, e1) = range(&b);
    assert!((e1 - s1 - 86_400_000).abs() < 1000, "{s1} {e1}");
    b.wait_for(&format!(
        "const c = window.meterstream.charts['gw-7/pst04/voltage_l1']; return c && c.plot && c.url.includes('start_time={s1}');"
    ));
    b.click("#later");
    b.wait_for(&format!("return !location.hash.includes('start={s1}');"));
    let (s2, e2) = range(&b);
    assert_eq!((s2 - s1, e2 - e1), (43_200_000, 43_200_000));
    b.wait_for("return document.querySelector('#chart .u-over');");
    std::thread::sleep(Duration::from_millis(300));
    b.drag("#chart .u-over", 200, true);
    b.wait_for(&format!("return !location.hash.includes('start={s2}');"));
    let (s3, e3) = range(&b);
    assert!(
        s3 < s2 && (e3 - s3 - (e2 - s2)).abs() < 60_000,
        "a pan keeps the span: {s3} {e3}"
    );
    b.wait_for("return document.querySelector('#chart .u-over');");
    std::thread::sleep(Duration::from_millis(300));
    b.drag("#chart .u-over", 150, false);
    b.wait_for(&format!("return !location.hash.includes('start={s3}');"));
    let (s4, e4) = range(&b);
    assert!(
        e4 - s4 < (e3 - s3) / 2,
        "a zoom narrows the span: {s4} {e4}"
    );
}

#[test]
fn at_phone_width_nothing_overflows() {
    let (s, _) = server_with_data();
    let b = Browser::start(375);
    log_in(&b, &s);
    assert_eq!(b.eval("return window.innerWidth;"), json!(375));
    for hash in [
        "#/streams/gw-7/pst04",
        "#/stream/gw-7/pst04/voltage_l1",
        "#/alarms",
        "#/devices",
    ] {
        b.goto(&format!("{}/{hash}", s.url));
        b.wait_for("return document.querySelector('main h1') && !document.querySelector('main').innerText.includes('Loading');");
        let over = b.eval(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
        );
        assert!(over.as_i64().unwrap() <= 0, "{hash} overflows by {over} px");
    }
    b.goto(&format!("{}/#/stream/gw-7/pst04/voltage_l1", s.url));
    b.wait_for("return document.querySelector('#chart canvas');");
    b.screenshot(&shots().join("phone.png"));
}

#[test]
fn an_alarm_acknowledged_in_the_browser_is_acknowledged_in_the_api() {
    let (s, now) = server_with_data();
    let mut rule = crate::alarms::undervoltage("*/pst04/voltage_l2");
    rule["rule"]["fire"]["duration_ms"] = json!(0);
    let id = crate::alarms::create_alert(&s, &rule);
    crate::alarms::post(&s, "gw-7/pst04/voltage_l2", now, &[(0, 190.0)]);
    crate::alarms::evaluated(&s);
    let b = Browser::start(1280);
    log_in(&b, &s);
    b.goto(&format!("{}/#/alarms", s.url));
    b.type_into("form.ack input[name=note]", "crew on site");
    b.click("form.ack button[type=submit]");
    b.wait_for("return !document.querySelector('form.ack') && document.querySelector('#statuses table').innerText.includes('acknowledged');");
    let (_, v) = s.get_json(&format!("/ws/v1/alerts/status?alert_id={id}"));
    assert_eq!(v["list"][0]["state"], "acknowledged");
    assert_eq!(v["list"][0]["note"], "crew on site");
    b.screenshot(&shots().join("alarms.png"));
}

#[test]
fn new_points_and_alarms_appear_live_without_polling() {
    let (s, now) = server_with_data();
    let mut rule = crate::alarms::undervoltage("*/pst04/voltage_l3");
    rule["rule"]["fire"]["duration_ms"] = json!(0);
    crate::alarms::create_alert(&s, &rule);
    let b = Browser::start(1280);
    log_in(&b, &s);
    b.goto(&format!("{}/#/streams/gw-7/pst04", s.url));
    b.find("tr[data-stream='gw-7/pst04/voltage_l1'] .value");
    std::thread::sleep(Duration::from_millis(500)); // the subscription is open
    let fetches = "return performance.getEntriesByType('resource').filter(r => r.name.includes('/ws/v1/streams/folders')).length;";
    let before = b.eval(fetches);
    crate::alarms::post(&s, "gw-7/pst04/voltage_l1", now, &[(60, 999.5)]);
    let shown = b.wait_for(
        "const c = document.querySelector(\"tr[data-stream='gw-7/pst04/voltage_l1'] .value\"); return c.textContent === '999.5' && c.textContent;",
    );
    assert_eq!(shown, "999.5");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(b.eval(fetches), before, "the page fetched the folder again");
    // The alarms page shows a new alarm as it happens.
    b.goto(&format!("{}/#/alarms", s.url));
    b.wait_for("return document.querySelector('main h1')?.textContent === 'Alarms' && document.querySelector('#statuses table');");
    std::thread::sleep(Duration::from_millis(500));
    crate::alarms::post(&s, "gw-7/pst04/voltage_l3", now, &[(0, 180.0)]);
    b.wait_for(
        "return document.querySelector('#statuses table').innerText.includes('gw-7/pst04/voltage_l3');",
    );
}

#[test]
fn search_overlay_fleet_monitors_and_a_command_answered_by_the_gateway() {
    let (s, now) = server_with_data();
    // A second phase, for the overlay and the fleet sum.
    let pts: Vec<Value> = (0..120)
        .map(|i| json!({"stream_id": "gw-7/pst04/voltage_l2", "timestamp": now - (119 - i) * 60_000, "value": 100.0}))
        .collect();
    assert_eq!(s.post_json(&json!(pts)).status().as_u16(), 201);
    let b = Browser::start(1280);
    log_in(&b, &s);
    // Search by pattern.
    b.type_into("#search input[name=q]", "*/pst04/voltage_l2");
    b.click("#search button[type=submit]");
    let ids = b.wait_for("const r = [...document.querySelectorAll('tr[data-stream]')].map(r => r.dataset.stream); return document.querySelector('main h1').textContent.startsWith('Streams matching') && r.length > 0 && r;");
    assert_eq!(ids, json!(["gw-7/pst04/voltage_l2"]));
    // Overlay: the second stream's averages drawn beside the first's.
    b.goto(&format!(
        "{}/#/stream/gw-7/pst04/voltage_l1?period=day&overlay=gw-7/pst04/voltage_l2",
        s.url
    ));
    let series = b.wait_for("const c = window.meterstream.charts['gw-7/pst04/voltage_l1']; return c && c.plot && c.data.length;");
    assert_eq!(series, 5);
    let overlaid = b.eval("return window.meterstream.charts['gw-7/pst04/voltage_l1'].data[4].filter(v => v !== null);");
    assert!(
        !overlaid.as_array().unwrap().is_empty()
            && overlaid
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v.as_f64() == Some(100.0)),
        "{overlaid}"
    );
    // Fleet: the sum of the pattern, as the API answers it.
    b.goto(&format!(
        "{}/#/fleet?pattern=gw-7/pst04/*&interval=15m&mode=sum&period=day",
        s.url
    ));
    let drawn = b.wait_for(
        "const c = window.meterstream.charts.fleet; return c && {url: c.url, v: c.data[1]};",
    );
    let (_, api) = s.get_json(drawn["url"].as_str().unwrap());
    let want = numbers(&api["list"], "value");
    assert_eq!(numbers(&drawn["v"], ""), want);
    assert!(!want.is_empty());
    // Monitors: one made through the API is listed with its status.
    // (A public address given as a literal: nothing to resolve.)
    let (st, m) = s.send(
        &s.client,
        "POST",
        "/ws/v1/monitors/inventory",
        Some(&json!({"topics": ["AlarmStatus"], "url": "https://93.184.216.34/hook"})),
    );
    assert_eq!(st, 201, "{m}");
    let mid = m["id"].as_str().unwrap();
    b.goto(&format!("{}/#/monitors", s.url));
    let row = b.wait_for(&format!(
        "const r = document.querySelector('tr[data-monitor=\"{mid}\"]'); return r && r.innerText;"
    ));
    let row = row.as_str().unwrap();
    assert!(
        row.contains("AlarmStatus") && row.contains("93.184.216.34") && row.contains("active"),
        "{row}"
    );
    // A command: the page sends it, the gateway (played here through the device API) answers,
    // and the page shows the result without a reload.
    b.goto(&format!("{}/#/device/gw-7", s.url));
    b.click("#send button[type=submit]");
    let (_, polled) = s.get_json("/ws/v1/devices/gw-7/commands/poll?after=0&wait=10");
    let cid = polled["list"][0]["id"].as_u64().unwrap();
    assert_eq!(polled["list"][0]["command"], "get_status");
    let r = s.put_json(
        &format!("/ws/v1/devices/gw-7/commands/{cid}"),
        &json!({"status": "succeeded", "result": {"meters": 1, "uptime_s": 42}}),
    );
    assert_eq!(r.status().as_u16(), 200);
    let row = b.wait_for(&format!(
        "const r = document.querySelector('tr[data-command=\"{cid}\"]'); return r && r.querySelector('.status').textContent === 'succeeded' && r.innerText;"
    ));
    assert!(row.as_str().unwrap().contains("uptime_s"), "{row}");
    b.screenshot(&shots().join("device.png"));
}

#[test]
fn rules_are_made_disabled_and_edited_and_a_limited_user_sees_only_their_streams() {
    let (s, now) = server_with_data();
    crate::alarms::post(&s, "gw-8/pst04/voltage_l1", now, &[(0, 231.0)]);
    let b = Browser::start(1280);
    log_in(&b, &s);
    b.goto(&format!("{}/#/alarms", s.url));
    b.type_into("#rule input[name=name]", "Overvoltage");
    b.type_into("#rule input[name=pattern]", "*/pst04/voltage_l1");
    b.eval("const f = document.getElementById('rule'); f.elements.fire_op.value = '>'; f.elements.fire_threshold.value = '253'; f.elements.reset_op.value = '<'; f.elements.reset_threshold.value = '250'; return 1;");
    b.click("#rule button[type=submit]");
    b.wait_for("return document.querySelector('#rules tr[data-alert]');");
    let (_, list) = s.get_json("/ws/v1/alerts/inventory");
    let a = &list["list"][0];
    assert_eq!(a["name"], "Overvoltage");
    assert_eq!(a["rule"]["fire"]["op"], ">");
    assert_eq!(a["rule"]["fire"]["threshold"], 253.0);
    assert_eq!(a["rule"]["fire"]["duration_ms"], 60000);
    assert_eq!(a["rule"]["reset"]["threshold"], 250.0);
    assert_eq!(a["enabled"], true);
    // Disable, then edit the threshold.
    b.click("#rules button.toggle");
    b.wait_for(
        "return document.querySelector('#rules tr[data-alert]')?.innerText.includes('disabled');",
    );
    let id = a["id"].as_str().unwrap();
    let (_, got) = s.get_json(&format!("/ws/v1/alerts/inventory/{id}"));
    assert_eq!(got["enabled"], false);
    b.click("#rules button.edit");
    b.eval("document.getElementById('rule').elements.fire_threshold.value = '255'; return 1;");
    b.click("#rule button[type=submit]");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, got) = s.get_json(&format!("/ws/v1/alerts/inventory/{id}"));
        if got["rule"]["fire"]["threshold"] == 255.0 {
            assert_eq!(got["enabled"], false, "editing keeps it disabled");
            break;
        }
        assert!(Instant::now() < deadline, "{got}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(b);
    // A user limited to gw-8 logs in with a password and sees only gw-8.
    let r = s
        .client
        .post(format!("{}/ws/v1/credentials", s.url))
        .json(&json!({"kind": "user", "name": "ines", "password": "correct horse battery", "scopes": ["read"], "prefixes": ["gw-8/"]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let b = Browser::start(1280);
    b.goto(&format!("{}/", s.url));
    b.type_into("input[name=user]", "ines");
    b.type_into("input[name=password]", "correct horse battery");
    b.click("form.login button[type=submit]");
    b.find("ul.tree a.folder");
    let folders = b
        .eval("return [...document.querySelectorAll('ul.tree a.folder')].map(a => a.textContent);");
    assert_eq!(folders, json!(["gw-8/"]));
}
