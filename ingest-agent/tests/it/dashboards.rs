//! The dashboards against the real agent: from a device's page in a headless browser, a user
//! sends `get_status` to the simulated gateway and sees its answer appear.

use crate::support::*;
use meterstream_agent::sim;
use meterstream_testkit::Browser;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_status_sent_from_the_dashboard_comes_back_from_the_simulated_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"), "127.0.0.1:0");
    let mut cfg = config(
        &server.url,
        &tmp.path().join("spool"),
        &[("a", "sdm630", 1)],
    );
    let made: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/ws/v1/credentials", server.url))
        .bearer_auth(KEY)
        .json(&json!({"kind": "device", "device_id": DEVICE}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cfg.server.api_key = Some(made["key"].as_str().unwrap().to_string());
    let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    let agent = Running::start(cfg).await;
    let url = server.url.clone();
    let row = tokio::task::spawn_blocking(move || {
        let b = Browser::start(1280);
        b.goto(&format!("{url}/"));
        b.type_into("input[name=key]", KEY);
        b.click("form.login button[type=submit]");
        b.find("ul.tree");
        // The gateway registers itself with its meters; its page lists them.
        b.goto(&format!("{url}/#/device/{DEVICE}"));
        b.wait_for("return document.querySelector('main h1') && document.querySelector('main ul li a')?.textContent === 'a';");
        b.click("#send button[type=submit]"); // get_status is the first command offered
        b.wait_for(
            "const r = document.querySelector('tr[data-command]'); return r && r.querySelector('.status').textContent === 'succeeded' && r.innerText;",
        )
    })
    .await
    .unwrap();
    let row = row.as_str().unwrap();
    // The agent's own answer: its meters with their status, its version.
    assert!(row.contains("get_status"), "{row}");
    assert!(row.contains("\"status\":\"active\""), "{row}");
    assert!(row.contains(env!("CARGO_PKG_VERSION")), "{row}");
    agent.stop().await;
}
