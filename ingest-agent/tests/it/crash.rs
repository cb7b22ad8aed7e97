//! `kill -9` of the real agent binary in the middle of its uploads, then a restart on the same
//! spool: every reading it had taken (already on the server, or waiting in the spool) arrives,
//! with its value, once.

use crate::support::*;
use meterstream_agent::channel::Sample;
use meterstream_agent::spool::Spool;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn start_agent(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_meterstream-agent"))
        .arg("--config")
        .arg(config)
        .arg("--simulate")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// (channel, timestamp) → value of the readings pending in the spool.
fn spooled(dir: &std::path::Path) -> BTreeMap<(String, i64), f64> {
    let (sp, _) = Spool::open(dir, 1 << 30, false).unwrap();
    let mut out = BTreeMap::new();
    let seqs: Vec<u64> = sp.pending().map(|p| p.0).collect();
    for s in seqs {
        let (_, payload) = sp.read(s).unwrap();
        for (channel, ts, v) in meterstream_agent::upload::decode_round(&payload).unwrap() {
            if let Sample::Number(x) = v {
                out.insert((channel, ts), x);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_loses_nothing_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"), "127.0.0.1:0");
    let spool = tmp.path().join("spool");
    let conf = tmp.path().join("agent.toml");
    std::fs::write(
        &conf,
        format!(
            r#"device_id = "{DEVICE}"
sample_interval = 0.05
metrics_interval = 3600
[server]
url = "{url}"
api_key = "{key}"
[upload]
flush_interval = 0.05
batch_points = 200
[spool]
dir = "{spool}"
sync = false
[[port]]
path = "/dev/null"
[[port.meter]]
name = "a"
profile = "sdm630"
slave = 1
[[port.meter]]
name = "b"
profile = "pst04"
slave = 2
"#,
            url = server.url,
            key = KEY,
            spool = spool.display()
        ),
    )
    .unwrap();
    let channels = [
        "a/voltage_l1",
        "a/active_energy",
        "b/current_l2",
        "b/frequency",
    ];
    let mut expected: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for round in 0..3 {
        let mut agent = start_agent(&conf);
        tokio::time::sleep(Duration::from_millis(1200 + 300 * round)).await;
        // SIGKILL: no shutdown, no flush.
        agent.kill().unwrap();
        agent.wait().unwrap();
        // What it had taken: on the server already, or in its spool.
        for c in channels {
            for (ts, v) in server.history(&format!("{DEVICE}/{c}")).await {
                expected.insert((c.to_string(), ts), v.as_f64().unwrap());
            }
        }
        for ((c, ts), v) in spooled(&spool) {
            if channels.contains(&c.as_str()) {
                expected.insert((c, ts), v);
            }
        }
    }
    // A last run uploads the backlog; once the server holds every reading taken so far it is
    // stopped politely, and uploads the few it took since within its grace. The wait is on the
    // data, not on a guess of how long the backlog takes on a loaded machine.
    let agent = start_agent(&conf);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut missing = 0;
        for c in channels {
            let have: std::collections::BTreeSet<i64> = server
                .history(&format!("{DEVICE}/{c}"))
                .await
                .into_iter()
                .map(|p| p.0)
                .collect();
            missing += expected
                .keys()
                .filter(|(ch, ts)| ch == c && !have.contains(ts))
                .count();
        }
        if missing == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} readings taken before the kills are still not on the server after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = agent.id() as i32;
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        spooled(&spool).is_empty(),
        "the spool is empty after a polite stop"
    );
    let mut on_server: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for c in channels {
        let h = server.history(&format!("{DEVICE}/{c}")).await;
        let mut ts: Vec<i64> = h.iter().map(|p| p.0).collect();
        ts.dedup();
        assert_eq!(ts.len(), h.len(), "{c}: a timestamp twice");
        for (t, v) in h {
            on_server.insert((c.to_string(), t), v.as_f64().unwrap());
        }
    }
    assert!(expected.len() > 100, "{} readings", expected.len());
    for (k, v) in &expected {
        assert_eq!(
            on_server.get(k),
            Some(v),
            "{k:?} was taken before a kill -9 and is missing or changed"
        );
    }
}
