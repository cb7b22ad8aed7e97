//! Crash test: the real server binary, several concurrent writers, `kill -9` at a random moment,
//! restart on the same directory; every point of every acknowledged batch must be there with
//! exactly its value. Repeated several times in one run.

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    /// SIGKILL, as `kill -9` does.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failing assertion must not leave the server running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(dir: &std::path::Path) -> Server {
    start_with(dir, &[])
}

/// The real server binary on `dir`, with extra arguments.
pub fn start_with(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meterstream-server"))
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--checkpoint-interval")
        .arg("1")
        .arg("--chunk-points")
        .arg("64")
        .env("RUST_LOG", "info")
        .env("METERSTREAM_ADMIN_KEY", crate::support::ADMIN_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        assert!(Instant::now() < deadline, "server did not start");
        let line = lines.next().expect("server exited").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            if line.contains("ready") {
                break format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

/// For each (stream, timestamp): the values it may hold. One value once a batch that wrote it
/// was acknowledged; a batch that got no answer may or may not have been stored, so its values
/// are added as possibilities (a later acknowledged write narrows it to one again).
type Acked = Arc<Mutex<BTreeMap<(String, i64), Vec<u64>>>>;

fn writer(
    url: String,
    id: usize,
    round: usize,
    acked: Acked,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", crate::support::ADMIN_KEY)
            .parse()
            .unwrap(),
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(auth)
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64((id * 1000 + round) as u64);
    let mut batch_no = 0i64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && batch_no < 10_000 {
        batch_no += 1;
        let mut points = Vec::new();
        let mut items = Vec::new();
        for k in 0..50 {
            let stream = format!("crash/w{id}/s{}", rng.gen_range(0..5));
            // Timestamps overlap across rounds and batches, so replacements happen too.
            let ts = 1_000_000 + rng.gen_range(0..20_000i64) * 10 + k;
            let v: f64 =
                f64::from_bits(rng.gen::<u64>() >> 2) * if rng.gen_bool(0.5) { -1.0 } else { 1.0 };
            let v = if v.is_finite() { v } else { 0.5 };
            points.push((stream.clone(), ts, v.to_bits()));
            items.push(json!({"stream_id": stream, "value": v, "timestamp": ts}));
        }
        let sent = client
            .post(format!("{url}/ws/v1/streams/history"))
            .json(&json!(items))
            .send();
        match sent {
            Ok(r) if r.status().as_u16() == 201 => {
                let mut a = acked.lock().unwrap();
                for (s, t, v) in points {
                    a.insert((s, t), vec![v]);
                }
            }
            Ok(r) => panic!("unexpected answer {}", r.status()),
            Err(_) => {
                // The server died: this batch was never acknowledged, but it may be durable.
                let mut a = acked.lock().unwrap();
                for (s, t, v) in points {
                    if let Some(vs) = a.get_mut(&(s, t)) {
                        vs.push(v);
                    }
                }
                return;
            }
        }
    }
}

fn verify(url: &str, acked: &BTreeMap<(String, i64), Vec<u64>>) {
    let client = crate::support::client_with_key(crate::support::ADMIN_KEY);
    let mut by_stream: BTreeMap<&str, BTreeMap<i64, &Vec<u64>>> = BTreeMap::new();
    for ((s, t), v) in acked {
        by_stream.entry(s).or_default().insert(*t, v);
    }
    for (stream, want) in by_stream {
        let mut got: BTreeMap<i64, u64> = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("{url}/ws/v1/streams/history/{stream}?size=1000");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let v: Value = client.get(&q).send().unwrap().json().unwrap();
            for p in v["list"].as_array().unwrap() {
                let t = meterstream_storage::time::parse_absolute(p["timestamp"].as_str().unwrap())
                    .unwrap();
                got.insert(t, p["value"].as_f64().unwrap().to_bits());
            }
            match v["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        for (t, v) in &want {
            match got.get(t) {
                Some(g) => assert!(
                    v.contains(g),
                    "{stream} at {t}: acknowledged {:?} but read {}",
                    v.iter().map(|b| f64::from_bits(*b)).collect::<Vec<_>>(),
                    f64::from_bits(*g)
                ),
                None => panic!("{stream}: acknowledged point at {t} is missing after the crash"),
            }
        }
        // Rollups maintained at ingest agree with the points that survived, after every crash.
        for (interval, width) in [("1m", 60_000i64), ("15m", 900_000)] {
            let mut want: BTreeMap<i64, (u64, f64)> = BTreeMap::new();
            for (t, bits) in &got {
                let e = want
                    .entry(t - t.rem_euclid(width))
                    .or_insert((0, f64::NEG_INFINITY));
                e.0 += 1;
                e.1 = e.1.max(f64::from_bits(*bits));
            }
            let read = |method: &str| -> BTreeMap<i64, f64> {
                let v: Value = client
                    .get(format!(
                        "{url}/ws/v1/streams/rollups/{stream}?interval={interval}&method={method}"
                    ))
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                v["list"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            meterstream_storage::time::parse_absolute(
                                r["timestamp"].as_str().unwrap(),
                            )
                            .unwrap(),
                            r["value"].as_f64().unwrap(),
                        )
                    })
                    .collect()
            };
            let counts = read("count");
            let maxes = read("max");
            let want_counts: BTreeMap<i64, f64> =
                want.iter().map(|(k, v)| (*k, v.0 as f64)).collect();
            let want_maxes: BTreeMap<i64, f64> = want.iter().map(|(k, v)| (*k, v.1)).collect();
            assert_eq!(
                counts, want_counts,
                "{stream}: {interval} counts after the crash"
            );
            assert_eq!(
                maxes, want_maxes,
                "{stream}: {interval} maxima after the crash"
            );
        }
    }
}

#[test]
fn kill_9_loses_no_acknowledged_point() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let rounds = 4;
    for round in 0..rounds {
        let mut server = start(dir.path());
        if round > 0 {
            verify(&server.url, &acked.lock().unwrap());
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|id| {
                let (url, acked, stop) = (server.url.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || writer(url, id, round, acked, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        server.kill_9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
    let n = acked.lock().unwrap().len();
    assert!(
        n > 1000,
        "only {n} points were acknowledged; the test did not load the server"
    );
    let server = start(dir.path());
    verify(&server.url, &acked.lock().unwrap());
}
