//! Reading simulated meters over real pseudo-terminal pairs.

use crate::support::*;
use meterstream_agent::channel::Sample;
use meterstream_agent::sim::{self, Fault};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_values_equal_what_the_simulated_meters_hold() {
    let tmp = tempfile::tempdir().unwrap();
    // No server: readings are observed on the channel layer.
    let mut cfg = config(
        "http://127.0.0.1:9",
        tmp.path(),
        &[("main", "sdm630", 1), ("pst", "pst04", 7)],
    );
    let sims = sim::attach(&mut cfg, None).unwrap();
    // Distinct values, pinned: the simulators do not step.
    sims.meter("main").unwrap().set("voltage_l2", 231.37);
    sims.meter("pst").unwrap().set("active_power", -1234.5);
    let agent = Running::start(cfg).await;
    let mut sub = agent.handles.channels.subscribe(Some("*/*"), 64, true);
    let got = collect(&mut sub.rx, Duration::from_secs(10), |m| {
        m.contains_key("main/voltage_l1") && m.contains_key("pst/voltage_l1")
    })
    .await;
    for (meter, n) in [("main", 23), ("pst", 12)] {
        let held = sims.meter(meter).unwrap().held();
        assert_eq!(held.len(), n);
        for (channel, want) in held {
            let r = got
                .get(&format!("{meter}/{channel}"))
                .unwrap_or_else(|| panic!("no reading of {meter}/{channel}"));
            assert_eq!(number(&r[0]), want, "{meter}/{channel}");
        }
    }
    assert_eq!(number(&got["main/voltage_l2"][0]), 231.37);
    assert_eq!(number(&got["pst/active_power"][0]), -1234.5);
    assert_eq!(&*got["main/voltage_l1"][0].unit, "V");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_meters_show_in_status_and_the_others_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(
        "http://127.0.0.1:9",
        tmp.path(),
        &[
            ("ok", "sdm630", 1),
            ("silent", "sdm630", 2),
            ("crc", "pst04", 3),
            ("exc", "sdm630", 4),
        ],
    );
    // Never reopen with a pause here: one bad meter in four must not stall the bus.
    cfg.ports[0].reconnect_after = 100;
    // Status is republished at this interval even when unchanged.
    cfg.metrics_interval = 0.5;
    let sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    sims.meter("silent").unwrap().set_fault(Fault::Silent);
    sims.meter("crc").unwrap().set_fault(Fault::BadCrc);
    sims.meter("exc").unwrap().set_fault(Fault::Exception(4));
    let agent = Running::start(cfg).await;
    let mut sub = agent.handles.channels.subscribe(None, 256, true);
    let status =
        |m: &std::collections::BTreeMap<String, Vec<meterstream_agent::channel::Reading>>,
         meter: &str| {
            m.get(&format!("{meter}/status"))
                .and_then(|v| v.last())
                .map(|r| match &r.value {
                    Sample::Text(t) => t.clone(),
                    Sample::Number(_) => String::new(),
                })
        };
    let got = collect(&mut sub.rx, Duration::from_secs(15), |m| {
        m.get("ok/voltage_l1").is_some_and(|v| v.len() >= 5)
            && status(m, "ok").is_some()
            && status(m, "silent").is_some()
            && status(m, "crc").is_some()
            && status(m, "exc").is_some()
    })
    .await;
    assert_eq!(status(&got, "ok").as_deref(), Some("active"));
    assert_eq!(status(&got, "silent").as_deref(), Some("timeout"));
    assert_eq!(status(&got, "crc").as_deref(), Some("error"));
    assert_eq!(status(&got, "exc").as_deref(), Some("error"));
    assert!(
        got.get("ok/voltage_l1").is_some_and(|v| v.len() >= 5),
        "the healthy meter kept being read"
    );
    assert!(!got.contains_key("silent/voltage_l1") && !got.contains_key("exc/voltage_l1"));
    // Healed, they come back.
    for m in ["silent", "crc", "exc"] {
        sims.meter(m).unwrap().set_fault(Fault::None);
    }
    let got = collect(&mut sub.rx, Duration::from_secs(15), |m| {
        ["silent", "crc", "exc"]
            .iter()
            .all(|n| status(m, n).as_deref() == Some("active"))
    })
    .await;
    for m in ["silent", "crc", "exc"] {
        assert_eq!(status(&got, m).as_deref(), Some("active"), "{m}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_opened_does_not_stop_the_other_bus() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config("http://127.0.0.1:9", tmp.path(), &[("here", "sdm630", 1)]);
    let mut other = cfg.ports[0].clone();
    other.meters[0].name = "gone".into();
    cfg.ports.push(other);
    cfg.metrics_interval = 0.5;
    let _sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    cfg.ports[1].path = "/nonexistent/ttyUSB9".into();
    let agent = Running::start(cfg).await;
    let mut sub = agent.handles.channels.subscribe(None, 256, true);
    let got = collect(&mut sub.rx, Duration::from_secs(10), |m| {
        m.get("here/voltage_l1").is_some_and(|v| v.len() >= 5) && m.contains_key("gone/status")
    })
    .await;
    assert!(got.get("here/voltage_l1").is_some_and(|v| v.len() >= 5));
    let status = &got["gone/status"];
    assert!(
        status
            .iter()
            .all(|r| r.value == Sample::Text("error".into())),
        "{status:?}"
    );
    assert!(!got.contains_key("gone/voltage_l1"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_keeps_failing_is_reopened_with_backoff_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config("http://127.0.0.1:9", tmp.path(), &[("dead", "sdm630", 1)]);
    cfg.ports[0].reconnect_after = 2;
    cfg.metrics_interval = 0.5;
    let sims = sim::attach(&mut cfg, Some(Duration::from_millis(200))).unwrap();
    let dead = sims.meter("dead").unwrap().clone();
    dead.set_fault(Fault::Silent);
    let agent = Running::start(cfg).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Every 0.2 s for 4 s would be 20 requests; two failures then pauses of 1 s and 2 s leave
    // about 5.
    let asked = dead.requests();
    assert!((2..=8).contains(&asked), "{asked} requests in 4 s");
    // Healed, it is read again once the pause is over (at most 4 s more).
    dead.set_fault(Fault::None);
    let mut sub = agent.handles.channels.subscribe(Some("dead/*"), 256, true);
    let got = collect(&mut sub.rx, Duration::from_secs(10), |m| {
        m.contains_key("dead/voltage_l1")
    })
    .await;
    assert!(
        got.contains_key("dead/voltage_l1"),
        "not read again after healing"
    );
    agent.stop().await;
}
