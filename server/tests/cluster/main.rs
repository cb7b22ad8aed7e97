//! The cluster on NATS JetStream (issue 10, docs/scale-out.md): three `nats-server` nodes
//! (installed by `scripts/test`) and three meterstream nodes, real processes on 127.0.0.1,
//! started and `kill -9`ed by the test. Gateways post to different nodes; every acknowledged
//! point must be readable, with its value, from every live node, with rollups and current values
//! that agree with the points; partitions move within a stated bound when a node dies.
//!
//! A test binary of its own, so that it does not share the machine with the other server tests
//! (the timings it states would then measure them too).
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The admin key every node accepts (`METERSTREAM_ADMIN_KEY`).
const ADMIN_KEY: &str = "msk_test_0123456789abcdefghijklmnopqrstuv";

/// Partitions of the test cluster (fewer than the default 256, so moves are quick to watch).
const PARTITIONS: usize = 32;
/// The leases' TTL in the test cluster, seconds.
const LEASE_TTL: f64 = 3.0;
/// The bound stated for a dead node's partitions to be held and applied by the survivors:
/// the TTL, a round (TTL / 5) to notice, and up to 10 s to rebuild from the log.
const MOVE_BOUND: Duration = Duration::from_secs(15);

struct Proc {
    child: Child,
}

impl Proc {
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three clustered JetStream servers.
struct Nats {
    procs: Vec<Proc>,
    urls: Vec<String>,
}

fn nats_cluster(dir: &std::path::Path) -> Nats {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
        .collect();
    let mut procs = Vec::new();
    for (i, (port, cport)) in ports.iter().enumerate() {
        let conf = dir.join(format!("n{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nserver_name: n{i}\nlog_file: \"{}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: ms, listen: 127.0.0.1:{cport}, routes: [{}] }}\n",
                dir.join(format!("n{i}.log")).display(),
                dir.join(format!("js{i}")).display(),
                routes.join(", ")
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server; scripts/test installs it)");
        procs.push(Proc { child });
    }
    for (port, _) in &ports {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Nats {
        procs,
        urls: ports
            .iter()
            .map(|(p, _)| format!("nats://127.0.0.1:{p}"))
            .collect(),
    }
}

/// A meterstream node: the real binary with a `[cluster]` section.
struct Node {
    proc: Proc,
    url: String,
    id: String,
}

/// The cluster tests share the machine's two cores one at a time: each states timings.
static SERIAL: Mutex<()> = Mutex::new(());

/// Starts node `id`; `extra` is added to its `[cluster]` section.
fn start_node(id: &str, dir: &std::path::Path, nats: &[String], extra: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("meterstream.toml");
    let urls: Vec<String> = nats.iter().map(|u| format!("{u:?}")).collect();
    std::fs::write(
        &conf,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\ncheckpoint_interval = 1\n\
             chunk_points = 64\n\
             allow_private_webhook_targets = true\nwebhook_max_backoff = 0.2\n\n\
             [cluster]\nnats_urls = [{}]\nnode_id = {id:?}\n\
             partitions = {PARTITIONS}\nlog_streams = 4\nreplicas = 3\nlease_ttl = {LEASE_TTL}\n{extra}",
            dir.join("data").display().to_string(),
            urls.join(", ")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meterstream-server"))
        .arg("--config")
        .arg(&conf)
        .env("RUST_LOG", "info")
        .env("METERSTREAM_ADMIN_KEY", ADMIN_KEY)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        assert!(Instant::now() < deadline, "node {id} did not start");
        let line = lines.next().expect("the node exited").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            if line.contains("ready") {
                break format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        }
    };
    // Its log goes on into a file beside its data, for a failing run to be read.
    let log = dir.join("server.log");
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(log).unwrap();
        for l in lines.map_while(Result::ok) {
            let _ = writeln!(f, "{l}");
        }
    });
    Node {
        proc: Proc { child },
        url,
        id: id.to_string(),
    }
}

fn client() -> reqwest::blocking::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    reqwest::blocking::Client::builder()
        .default_headers(h)
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

fn status(c: &reqwest::blocking::Client, url: &str) -> Option<Value> {
    let r = c.get(format!("{url}/ws/v1/cluster")).send().ok()?;
    (r.status() == 200).then(|| r.json().ok()).flatten()
}

/// Waits until every partition is held by one of `nodes` and applied by its holder, in the
/// view of each of them, and no node holds more than its share. Returns how long that took.
fn await_balanced(c: &reqwest::blocking::Client, nodes: &[&Node], within: Duration) -> Duration {
    let started = Instant::now();
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    loop {
        let views: Vec<Option<Value>> = nodes.iter().map(|n| status(c, &n.url)).collect();
        let done = views.iter().all(|v| {
            let Some(v) = v else { return false };
            let owners = v["owners"].as_array().unwrap();
            owners.len() == PARTITIONS
                && owners
                    .iter()
                    .all(|o| o.as_str().is_some_and(|o| ids.contains(&o)))
        }) && {
            // Each partition is in the `local` list of exactly one node.
            let mut held = [0; PARTITIONS];
            for v in views.iter().flatten() {
                for p in v["local"].as_array().unwrap() {
                    held[p.as_u64().unwrap() as usize] += 1;
                }
            }
            let share = PARTITIONS.div_ceil(nodes.len());
            held.iter().all(|&h| h == 1)
                && views
                    .iter()
                    .flatten()
                    .all(|v| v["local"].as_array().unwrap().len() <= share)
        };
        if done {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "partitions not settled on {ids:?} within {within:?}: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every (stream, timestamp) acknowledged, with its value.
type Acked = Arc<Mutex<BTreeMap<(String, i64), f64>>>;

/// A gateway: posts batches of its device's streams to `urls`, the first by preference; a
/// batch not acknowledged (connection refused, 503) is posted again to the next node.
/// Timestamps never repeat, so every acknowledged point has one value.
fn gateway(
    device: String,
    urls: Vec<String>,
    batches: (i64, i64),
    acked: Acked,
    stop: Arc<AtomicBool>,
) -> usize {
    let c = client();
    let mut retries = 0;
    for b in batches.0..batches.1 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut items = Vec::new();
        let mut points = Vec::new();
        for k in 0..30i64 {
            let stream = format!("{device}/m/v{}", k % 3);
            let ts = 1_790_000_000_000 + b * 1_000 + k;
            let value = (b * 30 + k) as f64 * 0.25;
            items.push(json!({"stream_id": stream, "timestamp": ts, "value": value}));
            points.push((stream, ts, value));
        }
        let mut attempt = 0;
        loop {
            let url = &urls[attempt % urls.len()];
            let r = c
                .post(format!("{url}/ws/v1/streams/history"))
                .json(&items)
                .send();
            match r {
                Ok(r) if r.status() == 201 => break,
                Ok(r) if r.status() == 503 => {}
                Ok(r) => panic!("{device}: unexpected {} {:?}", r.status(), r.text()),
                Err(_) => {}
            }
            attempt += 1;
            retries += 1;
            assert!(attempt < 200, "{device}: batch {b} never acknowledged");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut a = acked.lock().unwrap();
        for (s, t, v) in points {
            a.insert((s, t), v);
        }
        drop(a);
        std::thread::sleep(Duration::from_millis(10));
    }
    retries
}

/// How long a read may be refused (503) while partitions move after a meterstream node's kill.
static READ_BOUND: Mutex<Duration> = Mutex::new(MOVE_BOUND);

/// GET with retries while the answer is 503 (a partition moving) or the node is unreachable,
/// for at most [`READ_BOUND`].
fn get_json(c: &reqwest::blocking::Client, url: &str) -> Value {
    let bound = *READ_BOUND.lock().unwrap();
    let started = Instant::now();
    loop {
        if let Ok(r) = c.get(url).send() {
            let code = r.status().as_u16();
            if code == 200 {
                return r.json().unwrap();
            }
            assert_eq!(code, 503, "{url}: {code} {:?}", r.text());
        }
        if started.elapsed() > bound {
            // Each node's view, for the failure's message.
            let base = url.split("/ws/").next().unwrap();
            panic!(
                "{url}: no answer within {bound:?}; that node's view: {:?}",
                status(c, base)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every acknowledged point is on every node in `nodes` with its value, nothing else is, and
/// the 1-minute rollups and current values agree with the points.
fn verify(c: &reqwest::blocking::Client, nodes: &[&Node], acked: &BTreeMap<(String, i64), f64>) {
    let started = Instant::now();
    let mut by_stream: BTreeMap<&str, BTreeMap<i64, f64>> = BTreeMap::new();
    for ((s, t), v) in acked {
        by_stream.entry(s).or_default().insert(*t, *v);
    }
    for node in nodes {
        for (stream, want) in &by_stream {
            let mut got: BTreeMap<i64, f64> = BTreeMap::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = format!("{}/ws/v1/streams/history/{stream}?size=1000", node.url);
                if let Some(cur) = &cursor {
                    q.push_str(&format!("&cursor={cur}"));
                }
                let v = get_json(c, &q);
                for p in v["list"].as_array().unwrap() {
                    let t =
                        meterstream_storage::time::parse_absolute(p["timestamp"].as_str().unwrap())
                            .unwrap();
                    got.insert(t, p["value"].as_f64().unwrap());
                }
                match v["cursor"].as_str() {
                    Some(cur) => cursor = Some(cur.to_string()),
                    None => break,
                }
            }
            for (t, v) in want {
                assert_eq!(
                    got.get(t),
                    Some(v),
                    "node {}: {stream} at {t}: acknowledged {v}",
                    node.id
                );
            }
            // A point that was posted but never acknowledged may be there; its value must be
            // the one posted (value = 0.25 × the point's number).
            for (t, v) in &got {
                let n = (t - 1_790_000_000_000) / 1_000 * 30 + (t - 1_790_000_000_000) % 1_000;
                assert_eq!(*v, n as f64 * 0.25, "node {}: {stream} at {t}", node.id);
            }
            let mut counts: BTreeMap<i64, f64> = BTreeMap::new();
            for t in got.keys() {
                *counts.entry(t - t.rem_euclid(60_000)).or_default() += 1.0;
            }
            let v = get_json(
                c,
                &format!(
                    "{}/ws/v1/streams/rollups/{stream}?interval=1m&method=count",
                    node.url
                ),
            );
            let read: BTreeMap<i64, f64> = v["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        meterstream_storage::time::parse_absolute(r["timestamp"].as_str().unwrap())
                            .unwrap(),
                        r["value"].as_f64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(read, counts, "node {}: {stream} 1-minute counts", node.id);
            let inv = get_json(c, &format!("{}/ws/v1/streams/inventory/{stream}", node.url));
            let (last_t, last_v) = got.iter().next_back().unwrap();
            assert_eq!(
                meterstream_storage::time::parse_absolute(inv["timestamp"].as_str().unwrap())
                    .unwrap(),
                *last_t,
                "node {}: {stream} current value's time",
                node.id
            );
            assert_eq!(
                inv["value"].as_f64(),
                Some(*last_v),
                "node {}: {stream}",
                node.id
            );
        }
    }
    eprintln!(
        "verified {} points on {} nodes in {:?}",
        acked.len(),
        nodes.len(),
        started.elapsed()
    );
}

fn run_gateways(
    devices: usize,
    nodes: &[&Node],
    batches: (i64, i64),
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<usize>> {
    (0..devices)
        .map(|d| {
            // Each gateway prefers a different node.
            let mut urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
            urls.rotate_left(d % nodes.len());
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || gateway(format!("gw{d}"), urls, batches, acked, stop))
        })
        .collect()
}

/// A JSON ISO time as Unix ms.
fn ms_of(v: &Value) -> i64 {
    v.as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

/// Every row of a rollup listing through `url` (Digi's rows), following its cursors: (stream,
/// interval start, value).
fn rollup_rows(c: &reqwest::blocking::Client, url: &str) -> Vec<(String, i64, Option<f64>)> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let v = get_json(c, &format!("{url}{cursor}"));
        for r in v["list"].as_array().unwrap() {
            let t = ms_of(&r["timestamp"]);
            out.push((
                r["stream_id"].as_str().unwrap().to_string(),
                t,
                r["value"].as_f64(),
            ));
        }
        match v["cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
    }
    panic!("{url}: more than 1000 pages");
}

/// Rollups of a pattern over every device, gathered from every node: rows per stream (paged),
/// and the streams aggregated per interval, against what was acknowledged.
fn verify_pattern_rollups(
    c: &reqwest::blocking::Client,
    nodes: &[&Node],
    acked: &BTreeMap<(String, i64), f64>,
) {
    let minute = |t: i64| t - t.rem_euclid(60_000);
    // (stream, minute) -> (count, sum, max) of the acknowledged points of */m/v0.
    let mut want: BTreeMap<(String, i64), (f64, f64, f64)> = BTreeMap::new();
    for ((stream, t), v) in acked {
        if stream.ends_with("/m/v0") {
            let e = want
                .entry((stream.clone(), minute(*t)))
                .or_insert((0.0, 0.0, f64::MIN));
            e.0 += 1.0;
            e.1 += v;
            e.2 = e.2.max(*v);
        }
    }
    let counts: Vec<(String, i64, Option<f64>)> = want
        .iter()
        .map(|((s, m), (n, _, _))| (s.clone(), *m, Some(*n)))
        .collect();
    let mut sums: BTreeMap<i64, f64> = BTreeMap::new();
    let mut maxes: BTreeMap<i64, f64> = BTreeMap::new();
    for ((_, m), (_, sum, max)) in &want {
        *sums.entry(*m).or_default() += sum;
        let e = maxes.entry(*m).or_insert(f64::MIN);
        *e = e.max(*max);
    }
    for n in nodes {
        let base = format!("{}/ws/v1/streams/rollups/*/m/v0?interval=1m", n.url);
        let got = rollup_rows(c, &format!("{base}&method=count&size=7"));
        assert_eq!(got, counts, "counts per stream and minute through {}", n.id);
        let desc = rollup_rows(c, &format!("{base}&method=count&size=5&order=desc"));
        let mut back = counts.clone();
        // Streams in path order, each stream's minutes newest first.
        back.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        assert_eq!(desc, back, "descending, through {}", n.id);
        let got = rollup_rows(c, &format!("{base}&method=sum&aggregate=sum&size=4"));
        assert_eq!(got.len(), sums.len(), "{got:?}");
        for ((_, t, v), (m, sum)) in got.iter().zip(&sums) {
            assert_eq!(t, m);
            let v = v.unwrap();
            assert!(
                (v - sum).abs() <= 1e-9 * sum.abs().max(1.0),
                "{v} against {sum} at {m}"
            );
        }
        let got = rollup_rows(c, &format!("{base}&method=max&aggregate=max"));
        let want_max: Vec<(String, i64, Option<f64>)> = maxes
            .iter()
            .map(|(m, x)| ("*/m/v0".to_string(), *m, Some(*x)))
            .collect();
        assert_eq!(got, want_max, "maxima through {}", n.id);
        // CSV, whose pages are gathered as it streams.
        let csv = c
            .get(format!("{base}&method=count&format=csv"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let lines: Vec<(String, i64, Option<f64>)> = csv
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    f[0].to_string(),
                    ms_of(&Value::from(f[1])),
                    f[2].parse::<f64>().ok(),
                )
            })
            .collect();
        assert_eq!(
            (csv.lines().next(), lines),
            (Some("stream_id,timestamp,value"), counts.clone()),
            "CSV through {}",
            n.id
        );
    }
}

/// The node holding `device`'s partition, in `via`'s view.
fn holder_of(c: &reqwest::blocking::Client, via: &Node, device: &str) -> String {
    let p = meterstream_cluster::partition::of_device(device, PARTITIONS as u32);
    status(c, &via.url).unwrap()["owners"][p as usize]
        .as_str()
        .unwrap()
        .to_string()
}

/// Posts (seconds after `t0`, value) points of `stream` through `n`.
fn post_points(c: &reqwest::blocking::Client, n: &Node, stream: &str, t0: i64, pts: &[(i64, f64)]) {
    let body: Vec<Value> = pts
        .iter()
        .map(|(s, v)| json!({"stream_id": stream, "timestamp": t0 + s * 1000, "value": v}))
        .collect();
    let started = Instant::now();
    loop {
        let r = c
            .post(format!("{}/ws/v1/streams/history", n.url))
            .json(&body)
            .send()
            .unwrap();
        if r.status() == 503 && started.elapsed() < MOVE_BOUND {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert!(r.status().is_success(), "{:?}", r.text());
        return;
    }
}

/// An alert's transitions (source, state, seconds after `t0`) in `n`'s history, once it has
/// `want` of them (at most `MOVE_BOUND`).
fn transitions(
    c: &reqwest::blocking::Client,
    n: &Node,
    alert: &str,
    t0: i64,
    want: usize,
) -> Vec<(String, String, i64)> {
    let started = Instant::now();
    loop {
        let v = get_json(
            c,
            &format!("{}/ws/v1/alerts/history/{alert}?size=1000", n.url),
        );
        let mut got: Vec<(String, String, i64)> = v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let changed = ms_of(&t["changed"]);
                (
                    t["source"].as_str().unwrap().to_string(),
                    t["state"].as_str().unwrap().to_string(),
                    (changed - t0) / 1000,
                )
            })
            .collect();
        got.sort();
        if got.len() >= want || started.elapsed() > MOVE_BOUND {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The events of `alert` a receiver took for monitor path `hook`: (event id, source, state,
/// seconds after `t0`), each id once, in the order first delivered. Every delivery of one id
/// carries the same event.
fn alarm_events(
    rx: &meterstream_testkit::Receiver,
    hook: &str,
    alert: &str,
    t0: i64,
) -> Vec<(String, String, String, i64)> {
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut out = Vec::new();
    for r in rx.requests() {
        if r["path"].as_str() != Some(hook)
            || !r["status"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s))
        {
            continue;
        }
        assert_eq!(r["verified"], true, "a signed delivery: {r}");
        for m in r["body"]["Document"]["Msg"].as_array().unwrap() {
            let id = m["event_id"].as_str().unwrap().to_string();
            if !id.starts_with(&format!("{alert}/")) {
                continue;
            }
            let a = &m["AlarmStatus"];
            if let Some(first) = seen.get(&id) {
                assert_eq!(first, a, "event {id} delivered again with other contents");
                continue;
            }
            seen.insert(id.clone(), a.clone());
            let changed = ms_of(&a["changed"]);
            out.push((
                id,
                a["source"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
                (changed - t0) / 1000,
            ));
        }
    }
    out
}

/// Creates an alert over `scope`: over 250 for 10 s fires, under 240 resets. Its id.
fn overvoltage_alert(c: &reqwest::blocking::Client, n: &Node, scope: &str) -> String {
    let r = c
        .post(format!("{}/ws/v1/alerts/inventory", n.url))
        .json(&json!({
            "name": "Overvoltage", "severity": "major",
            "scope": {"type": "Resource", "value": scope},
            "rule": {"type": "DataPoint condition",
                     "fire": {"op": ">", "threshold": 250.0, "duration_ms": 10_000},
                     "reset": {"op": "<", "threshold": 240.0, "duration_ms": 0}}
        }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The test's directory: removed at the end, unless `MS_KEEP_CLUSTER_TEST=1` keeps the nodes'
/// data and logs for reading after a failure.
fn test_dir() -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    if std::env::var_os("MS_KEEP_CLUSTER_TEST").is_some() {
        let kept = tmp.keep();
        eprintln!("keeping {}", kept.display());
        (None, kept)
    } else {
        let path = tmp.path().to_path_buf();
        (Some(tmp), path)
    }
}

#[test]
fn three_nodes_share_partitions_and_survive_kill_9_of_a_node_and_of_a_nats_server() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_guard, root) = test_dir();
    let dir = root.as_path();
    let mut nats = nats_cluster(dir);
    let urls = nats.urls.clone();
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|id| start_node(id, &dir.join(id), &urls, ""))
        .collect();
    let c = client();
    let all: Vec<&Node> = nodes.iter().collect();
    let took = await_balanced(&c, &all, Duration::from_secs(60));
    eprintln!("cluster balanced after {took:?}");
    for n in &all {
        let local = status(&c, &n.url).unwrap()["local"]
            .as_array()
            .unwrap()
            .len();
        assert!(
            (PARTITIONS / 3 - 2..=PARTITIONS / 3 + 2).contains(&local),
            "node {} holds {local} of {PARTITIONS} partitions",
            n.id
        );
    }

    // 1. Gateways post to different nodes; every stream is readable from every node.
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    for g in run_gateways(6, &all, (0, 20), &acked, &stop) {
        assert_eq!(g.join().unwrap(), 0, "no batch needed a retry");
    }
    assert_eq!(acked.lock().unwrap().len(), 6 * 20 * 30);
    verify(&c, &all, &acked.lock().unwrap());

    // A gateway's connection is known on every node (its partition's holder records it when it
    // applies the gateway's points, whichever node took them).
    for n in &all {
        let d = get_json(&c, &format!("{}/ws/v1/devices/inventory/gw4", n.url));
        assert_eq!(
            (d["id"].as_str(), d["connection_status"].as_str()),
            (Some("gw4"), Some("connected")),
            "on {}",
            n.id
        );
    }

    // A device's description, set through any node, is its holder's and every node's, and
    // survives the holder's death (checked after the kill below).
    let described = |d: usize| {
        json!({"model": format!("M{d}"), "tags": [format!("t{d}")],
               "group": if d % 2 == 0 { "north" } else { "south" }})
    };
    for d in 0..6 {
        let r = c
            .put(format!("{}/ws/v1/devices/inventory/gw{d}", all[d % 3].url))
            .json(&described(d))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text());
    }
    let check_described = |nodes: &[&Node]| {
        for n in nodes {
            for d in 0..6 {
                let v = get_json(&c, &format!("{}/ws/v1/devices/inventory/gw{d}", n.url));
                let want = described(d);
                assert_eq!(
                    (&v["model"], &v["tags"], &v["group"]),
                    (&want["model"], &want["tags"], &want["group"]),
                    "gw{d} through {}",
                    n.id
                );
            }
        }
    };
    check_described(&all);

    // The device inventory, paged by 4 from any node: every gateway once, in id order.
    for n in &all {
        let mut ids: Vec<String> = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10 {
            let v = get_json(
                &c,
                &format!("{}/ws/v1/devices/inventory?size=4{cursor}", n.url),
            );
            ids.extend(
                v["list"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["id"].as_str().unwrap().to_string()),
            );
            match v["cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        let want: Vec<String> = (0..6).map(|d| format!("gw{d}")).collect();
        assert_eq!(ids, want, "the device inventory through {}", n.id);
        // Digi's DeviceCore listing, from offset 2, 3 at a time: the same devices, connected,
        // with their descriptions, and the total.
        let r = c
            .get(format!("{}/ws/DeviceCore?start=2&size=3", n.url))
            .header("accept", "application/json")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(
            v["resultTotalRows"], "6",
            "DeviceCore through {}: {v}",
            n.id
        );
        let got: Vec<(&str, &str, &str)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["devConnectwareId"].as_str().unwrap(),
                    d["dpConnectionStatus"].as_str().unwrap(),
                    d["grpPath"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("gw2", "1", "north"),
                ("gw3", "1", "south"),
                ("gw4", "1", "north")
            ],
            "DeviceCore through {}",
            n.id
        );
    }

    // Credentials and alert rules made through one node hold on every node; a revocation
    // through another holds everywhere.
    let r = c
        .post(format!("{}/ws/v1/credentials", nodes[0].url))
        .json(&json!({"kind": "api_key", "scopes": ["read"], "label": "reader"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().unwrap();
    let (key, key_id) = (
        made["key"].as_str().unwrap().to_string(),
        made["id"].as_str().unwrap().to_string(),
    );
    let read_with_key = |n: &Node| -> u16 {
        reqwest::blocking::Client::new()
            .get(format!("{}/ws/v1/streams/history/gw2/m/v1?size=1", n.url))
            .bearer_auth(&key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for n in &all {
        // Another node's watch applies the credential within moments.
        let started = Instant::now();
        while read_with_key(n) != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the key does not work on {}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let r = c
        .delete(format!("{}/ws/v1/credentials/{key_id}", nodes[2].url))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for n in &all {
        let started = Instant::now();
        while read_with_key(n) != 401 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the revoked key still works on {}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let rule = json!({"name": "Undervoltage", "severity": "major",
        "scope": {"type": "Resource", "value": "*/m/v0"},
        "rule": {"type": "DataPoint condition",
                 "fire": {"op": "<", "threshold": 1.0, "duration_ms": 0},
                 "reset": {"op": ">", "threshold": 2.0, "duration_ms": 0}}});
    let r = c
        .post(format!("{}/ws/v1/alerts/inventory", nodes[1].url))
        .json(&rule)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let alert: Value = r.json().unwrap();
    let alert_id = alert["id"].as_str().unwrap();
    for n in &all {
        // Other nodes' watches apply the rule within moments.
        let url = format!("{}/ws/v1/alerts/inventory/{alert_id}", n.url);
        let started = Instant::now();
        let got = loop {
            let r = c.get(&url).send().unwrap();
            if r.status() == 200 {
                break r.json::<Value>().unwrap();
            }
            assert_eq!(r.status(), 404);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the rule is not on {}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            (got["name"].as_str(), &got["rule"]),
            (Some("Undervoltage"), &alert["rule"]),
            "on {}",
            n.id
        );
    }

    // Changes of a stream through any node: its metadata, then a range of its points deleted;
    // every node reads the result (device meta0 is not one of the gateways verified later).
    let items: Vec<Value> = (0..10)
        .map(|k| json!({"stream_id": "meta0/m/v", "timestamp": 1_790_000_000_000i64 + k * 1000, "value": k}))
        .collect();
    let r = c
        .post(format!("{}/ws/v1/streams/history", nodes[0].url))
        .json(&items)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .put(format!(
            "{}/ws/v1/streams/inventory/meta0/m/v",
            nodes[1].url
        ))
        .json(&json!({"units": "V", "description": "phase voltage"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let r = c
        .delete(format!(
            "{}/ws/v1/streams/history/meta0/m/v?start_time=1790000002000&end_time=1790000005000",
            nodes[2].url
        ))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{} {:?}", r.status(), r.text());
    for n in &all {
        let s = get_json(&c, &format!("{}/ws/v1/streams/inventory/meta0/m/v", n.url));
        assert_eq!(
            (s["units"].as_str(), s["description"].as_str()),
            (Some("V"), Some("phase voltage")),
            "on {}",
            n.id
        );
        let h = get_json(
            &c,
            &format!("{}/ws/v1/streams/history/meta0/m/v?size=100", n.url),
        );
        let values: Vec<f64> = h["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_f64().unwrap())
            .collect();
        assert_eq!(
            values,
            vec![0.0, 1.0, 5.0, 6.0, 7.0, 8.0, 9.0],
            "on {}",
            n.id
        );
    }

    // The stream inventory, paged, from any node, is every stream of the cluster once, in path
    // order.
    let mut want: Vec<String> = (0..6)
        .flat_map(|d| (0..3).map(move |k| format!("gw{d}/m/v{k}")))
        .collect();
    want.push("meta0/m/v".into());
    for n in &all {
        let mut got: Vec<String> = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10 {
            let v = get_json(
                &c,
                &format!("{}/ws/v1/streams/inventory?size=5{cursor}", n.url),
            );
            let list = v["list"].as_array().unwrap();
            assert!(list.len() <= 5);
            got.extend(list.iter().map(|s| s["id"].as_str().unwrap().to_string()));
            match v["cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        assert_eq!(got, want, "the inventory through {}", n.id);
        // Digi's DataStream listing (JSON), paged by 4 until an empty page, the same.
        let mut got: Vec<String> = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10 {
            let r = c
                .get(format!("{}/ws/DataStream?size=4{cursor}", n.url))
                .header("accept", "application/json")
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().unwrap();
            let items = v["items"].as_array().unwrap();
            assert_eq!(v["resultSize"], items.len().to_string());
            if items.is_empty() {
                break;
            }
            got.extend(
                items
                    .iter()
                    .map(|s| s["streamId"].as_str().unwrap().to_string()),
            );
            cursor = format!("&pageCursor={}", v["pageCursor"].as_str().unwrap());
        }
        assert_eq!(got, want, "Digi's DataStream listing through {}", n.id);
        // Below a device, from its holder.
        let r = c
            .get(format!("{}/ws/DataStream/gw3", n.url))
            .header("accept", "application/json")
            .send()
            .unwrap();
        let v: Value = r.json().unwrap();
        let ids: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["streamId"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            ["gw3/m/v0", "gw3/m/v1", "gw3/m/v2"],
            "gw3 through {}",
            n.id
        );
        // Folders: the top level gathered from every node (paged by 3), a device's own from
        // its holder.
        let mut top: Vec<(String, i64)> = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10 {
            let v = get_json(
                &c,
                &format!("{}/ws/v1/streams/folders?size=3{cursor}", n.url),
            );
            top.extend(v["list"].as_array().unwrap().iter().map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["stream_count"].as_i64().unwrap(),
                )
            }));
            match v["cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        let mut want_top: Vec<(String, i64)> = (0..6).map(|d| (format!("gw{d}"), 3)).collect();
        want_top.push(("meta0".into(), 1));
        assert_eq!(top, want_top, "the top folders through {}", n.id);
        let inner = get_json(&c, &format!("{}/ws/v1/streams/folders/gw2/m", n.url));
        let names: Vec<&str> = inner["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["v0", "v1", "v2"], "gw2/m through {}", n.id);
    }

    // Digi's client creates a stream with POST /ws/DataStream and the stream in the body: any
    // node takes it, whichever holds the stream's device.
    for k in 0..3 {
        let r = c
            .post(format!("{}/ws/DataStream", nodes[0].url))
            .body(format!(
                "<DataStream><streamId>ds{k}/m/e</streamId><dataType>LONG</dataType>\
                 <units>Wh</units></DataStream>"
            ))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "ds{k}: {:?}", r.text());
    }
    for n in &all {
        for k in 0..3 {
            let v = get_json(&c, &format!("{}/ws/v1/streams/inventory/ds{k}/m/e", n.url));
            assert_eq!(
                (v["type"].as_str(), v["units"].as_str()),
                (Some("LONG"), Some("Wh")),
                "ds{k} through {}: {v}",
                n.id
            );
        }
    }

    // A DataStream body naming several devices' streams, through one node: each stream is made
    // and changed by its own holder (through the log, then a question for the outcome), and
    // each item's answer is its holder's.
    let via = &nodes[0];
    let devices: Vec<String> = (0..6).map(|k| format!("md{k}")).collect();
    let far: Vec<&String> = devices
        .iter()
        .filter(|d| holder_of(&c, via, d) != via.id)
        .collect();
    assert!(
        !far.is_empty(),
        "some of {devices:?} are held by other nodes"
    );
    let body = |units: &str, odd: Option<(&str, &str)>| {
        let items: String = devices
            .iter()
            .map(|d| match odd {
                Some((o, extra)) if o == d => {
                    format!("<DataStream><streamId>{d}/m/e</streamId>{extra}</DataStream>")
                }
                _ => format!(
                    "<DataStream><streamId>{d}/m/e</streamId><dataType>LONG</dataType>\
                     <units>{units}</units></DataStream>"
                ),
            })
            .collect();
        format!("<list>{items}</list>")
    };
    let send = |method: reqwest::Method, body: String| {
        let r = c
            .request(method, format!("{}/ws/DataStream", via.url))
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let units_everywhere = |want: &[(&str, &str)]| {
        for n in &all {
            for (d, units) in want {
                let v = get_json(&c, &format!("{}/ws/v1/streams/inventory/{d}/m/e", n.url));
                assert_eq!(
                    (v["type"].as_str(), v["units"].as_str()),
                    (Some("LONG"), Some(*units)),
                    "{d} through {}: {v}",
                    n.id
                );
            }
        }
    };
    let (st, a) = send(reqwest::Method::POST, body("Wh", None));
    assert_eq!(st, 201, "{a}");
    assert_eq!(a.matches("<location>").count(), 6, "{a}");
    let wh: Vec<(&str, &str)> = devices.iter().map(|d| (d.as_str(), "Wh")).collect();
    units_everywhere(&wh);
    // Made already, wherever they are held: POST refuses each.
    let (st, a) = send(reqwest::Method::POST, body("Wh", None));
    assert_eq!(st, 409, "{a}");
    assert!(a.contains("exists"), "{a}");
    // The far stream gets a point; then a PUT changes every stream's units and tries to make
    // the far one a STRING stream, which its holder refuses (it has data): 207, that item named.
    post_points(
        &c,
        via,
        &format!("{}/m/e", far[0]),
        1_790_000_000_000,
        &[(0, 5.0)],
    );
    let (st, a) = send(
        reqwest::Method::PUT,
        body("kWh", Some((far[0], "<dataType>STRING</dataType>"))),
    );
    assert_eq!(st, 207, "{a}");
    let k = devices.iter().position(|d| d == far[0]).unwrap();
    assert!(
        a.contains(&format!("item {k}:")) && a.contains("conflict"),
        "the holder's refusal, named by item: {a}"
    );
    assert_eq!(a.matches("<location>").count(), 5, "{a}");
    let mut kwh: Vec<(&str, &str)> = devices.iter().map(|d| (d.as_str(), "kWh")).collect();
    kwh[k].1 = "Wh";
    units_everywhere(&kwh);

    // Values that do not fit a stream's type are refused in the answer, item by item, through
    // any node, as on a single node: the holder settles each stream's type before the batch is
    // published. ds{k}/m/e are LONG streams.
    for k in 0..3 {
        let stream = format!("ds{k}/m/e");
        let holder = holder_of(&c, &nodes[0], &format!("ds{k}"));
        let via = all.iter().find(|n| n.id != holder).unwrap();
        let r = c
            .post(format!("{}/ws/v1/streams/history", via.url))
            .json(&json!([
                {"stream_id": stream, "timestamp": 1_790_000_000_000i64, "value": 5},
                {"stream_id": stream, "timestamp": 1_790_000_001_000i64, "value": "five"},
                {"stream_id": stream, "timestamp": 1_790_000_002_000i64, "value": 5.5},
            ]))
            .send()
            .unwrap();
        assert_eq!(r.status(), 207, "{stream} through {}", via.id);
        let v: Value = r.json().unwrap();
        let errors = v["errors"].as_array().unwrap();
        let named: Vec<(i64, &str)> = errors
            .iter()
            .map(|e| {
                (
                    e["index"].as_i64().unwrap(),
                    e["error_message"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(named.len(), 2, "{v}");
        assert_eq!((named[0].0, named[1].0), (1, 2), "{v}");
        assert!(
            named.iter().all(|(_, m)| m.contains("LONG")) && named[0].1.contains("five"),
            "the errors name the value and the stream's type: {v}"
        );
        let r = c
            .post(format!("{}/ws/v1/streams/history", via.url))
            .json(&json!({"stream_id": stream, "value": "x"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "nothing fits: {:?}", r.text());
        for n in &all {
            let h = get_json(&c, &format!("{}/ws/v1/streams/history/{stream}", n.url));
            let got: Vec<i64> = h["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["value"].as_i64().unwrap())
                .collect();
            assert_eq!(got, [5], "{stream} through {}: {h}", n.id);
        }
    }
    // The node that checked ds0/m/e keeps its type: the same batch again asks no holder. Once
    // the stream is deleted (through its holder), every node forgets the type: a word makes it
    // a STRING stream again through that node.
    let holder = holder_of(&c, &nodes[0], "ds0");
    let via = all.iter().find(|n| n.id != holder).unwrap();
    let asked = || {
        status(&c, &via.url).unwrap()["types_asked"]
            .as_u64()
            .unwrap()
    };
    let before = asked();
    let r = c
        .post(format!("{}/ws/v1/streams/history", via.url))
        .json(&json!({"stream_id": "ds0/m/e", "timestamp": 1_790_000_000_000i64, "value": 5}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(asked(), before, "the type came from the cache");
    let holder = all.iter().find(|n| n.id == holder).unwrap();
    let r = c
        .delete(format!("{}/ws/v1/streams/inventory/ds0/m/e", holder.url))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());
    let forgot = Instant::now();
    loop {
        let r = c
            .post(format!("{}/ws/v1/streams/history", via.url))
            .json(
                &json!({"stream_id": "ds0/m/e", "timestamp": 1_790_000_000_000i64,
                          "value": "five"}),
            )
            .send()
            .unwrap();
        if r.status() == 201 {
            break;
        }
        // The broadcast is asynchronous: a moment, not the cache's minute.
        assert!(
            forgot.elapsed() < Duration::from_secs(5),
            "{} still refused the word after 5 s: {:?}",
            via.id,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in &all {
        let v = get_json(&c, &format!("{}/ws/v1/streams/inventory/ds0/m/e", n.url));
        assert_eq!(v["type"], "STRING", "through {}: {v}", n.id);
    }

    // A new stream, created through one node that does not hold it with a DOUBLE, then given a
    // text through the other: the first type holds and the text is refused in the answer,
    // whether or not the holder has applied the first batch yet (until then its type is
    // reserved there; cluster_types' unit tests cover that case alone).
    let holder = holder_of(&c, &nodes[0], "race0");
    let others: Vec<&&Node> = all.iter().filter(|n| n.id != holder).collect();
    let race = |n: &Node, value: Value| {
        c.post(format!("{}/ws/v1/streams/history", n.url))
            .json(
                &json!({"stream_id": "race0/m/s", "timestamp": 1_790_000_000_000i64,
                          "value": value}),
            )
            .send()
            .unwrap()
    };
    assert_eq!(race(others[0], json!(1.5)).status(), 201);
    let r = race(others[1], json!("on"));
    assert_eq!(r.status(), 400);
    let e = r.text().unwrap();
    assert!(e.contains("race0/m/s") && e.contains("DOUBLE"), "{e}");
    for n in &all {
        let v = get_json(&c, &format!("{}/ws/v1/streams/inventory/race0/m/s", n.url));
        assert_eq!(v["type"], "DOUBLE", "through {}: {v}", n.id);
        assert_eq!(v["value"], 1.5, "through {}: {v}", n.id);
    }
    // Every batch so far had its types settled by a holder.
    for n in &all {
        let unchecked = status(&c, &n.url).unwrap()["types_unchecked"].clone();
        assert_eq!(unchecked, 0, "node {}", n.id);
    }

    // A batch sent again with the same Idempotency-Key, through another node, is stored once in
    // its partition's log; with another key it is a new message (harmless: the same points).
    let p = meterstream_cluster::partition::of_device("idem0", PARTITIONS as u32) as usize;
    let holder = holder_of(&c, &nodes[0], "idem0");
    let holder = all.iter().find(|n| n.id == holder).unwrap();
    let batch =
        json!([{"stream_id": "idem0/m/v", "timestamp": 1_790_000_000_000i64, "value": 1.5}]);
    let position = || {
        status(&c, &holder.url).unwrap()["positions"][p]
            .as_u64()
            .unwrap()
    };
    let send = |via: &Node, key: &str| {
        let r = c
            .post(format!("{}/ws/v1/streams/history", via.url))
            .header("idempotency-key", key)
            .json(&batch)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text());
        // Read back through the holder: applied.
        get_json(
            &c,
            &format!("{}/ws/v1/streams/history/idem0/m/v", holder.url),
        );
        position()
    };
    let first = send(&nodes[0], "batch-1");
    assert_eq!(
        send(&nodes[2], "batch-1"),
        first,
        "the same key: stored once"
    );
    assert_eq!(
        send(&nodes[1], "batch-2"),
        first + 1,
        "another key: a new message"
    );
    let r = c
        .post(format!("{}/ws/v1/streams/history", nodes[0].url))
        .header("idempotency-key", "has space")
        .json(&batch)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().unwrap();
    assert!(
        e.to_string().contains("Idempotency-Key"),
        "the error names the header: {e}"
    );
    assert_eq!(position(), first + 1, "a refused batch is not logged");

    // A command queued through one node reaches an agent polling another, and its result comes
    // back to the first. Another is queued for a device of the node about to be killed.
    let (queued_at, polled_at) = (&nodes[0], &nodes[2]);
    let post = |n: &Node, device: &str, body: Value| -> Value {
        let r = c
            .post(format!("{}/ws/v1/devices/{device}/commands", n.url))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().unwrap()
    };
    let cmd = post(
        queued_at,
        "gw0",
        json!({"command": "get_status", "parameters": {"x": 1}}),
    );
    let cid = cmd["id"].as_u64().unwrap();
    let polled = get_json(
        &c,
        &format!(
            "{}/ws/v1/devices/gw0/commands/poll?after=0&wait=10",
            polled_at.url
        ),
    );
    assert_eq!(polled["count"], 1, "{polled}");
    assert_eq!(polled["list"][0]["id"].as_u64(), Some(cid));
    assert_eq!(polled["list"][0]["command"], "get_status");
    assert_eq!(polled["list"][0]["parameters"], json!({"x": 1}));
    let r = c
        .put(format!(
            "{}/ws/v1/devices/gw0/commands/{cid}",
            polled_at.url
        ))
        .json(&json!({"status": "succeeded", "result": {"ok": true}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let done = get_json(
        &c,
        &format!("{}/ws/v1/devices/gw0/commands/{cid}", queued_at.url),
    );
    assert_eq!(
        (done["status"].as_str(), &done["result"]),
        (Some("succeeded"), &json!({"ok": true}))
    );
    // A finished command does not change again, whichever node is asked.
    let r = c
        .post(format!(
            "{}/ws/v1/devices/gw0/commands/{cid}/cancel",
            nodes[1].url
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    // Queued for each device, to be polled after node b's kill.
    let survivors_cmds: Vec<(String, u64)> = (0..6)
        .map(|d| {
            let device = format!("gw{d}");
            let v = post(&nodes[d % 3], &device, json!({"command": "reboot"}));
            (device, v["id"].as_u64().unwrap())
        })
        .collect();

    // Alarms and webhooks. A device whose partition node b holds; an alert over its streams;
    // monitors until one is delivered by b (a monitor's alarm events are delivered by the
    // holder of its id's partition), all to one receiver, each on a path of its own.
    let victim = &nodes[1];
    let device = (0..200)
        .map(|k| format!("al{k}"))
        .find(|d| holder_of(&c, &nodes[0], d) == victim.id)
        .unwrap();
    let alert = overvoltage_alert(&c, &nodes[0], &format!("{device}/m/*"));
    let rx = meterstream_testkit::Receiver::start();
    let mut hooks: Vec<(String, String)> = Vec::new();
    for i in 0..12 {
        let r = c
            .post(format!("{}/ws/v1/monitors/inventory", nodes[2].url))
            .json(
                &json!({"topics": ["AlarmStatus"], "url": format!("{}/m{i}", rx.url),
                          "batch_duration": 0.1}),
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        let m: Value = r.json().unwrap();
        rx.secret(m["secret"].as_str().unwrap());
        let id = m["id"].as_str().unwrap().to_string();
        let deliverer = holder_of(&c, &nodes[0], &id);
        hooks.push((format!("/m{i}"), deliverer.clone()));
        if deliverer == victim.id && hooks.len() >= 3 {
            break;
        }
    }
    assert!(
        hooks.iter().any(|(_, d)| *d == victim.id),
        "no monitor delivered by {}: {hooks:?}",
        victim.id
    );
    // v1 goes over the threshold long enough to fire (at 10 s) before the kill; v2 is over it
    // for only 5 s, mid-condition, when its partition's holder is killed.
    let t0 = (meterstream_storage::time::now_ms() / 1000 - 600) * 1000;
    let (v1, v2) = (format!("{device}/m/v1"), format!("{device}/m/v2"));
    let over: Vec<(i64, f64)> = (0..=12).map(|s| (s, 260.0)).collect();
    post_points(&c, &nodes[0], &v1, t0, &over);
    post_points(&c, &nodes[2], &v2, t0, &over[..6]);
    let fired = vec![(v1.clone(), "triggered".to_string(), 10)];
    for n in &all {
        assert_eq!(transitions(&c, n, &alert, t0, 1), fired, "on {}", n.id);
    }
    // Every monitor has it before the kill.
    let started = Instant::now();
    while hooks
        .iter()
        .any(|(h, _)| alarm_events(&rx, h, &alert, t0).is_empty())
    {
        assert!(
            started.elapsed() < MOVE_BOUND,
            "v1's transition not delivered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 2. kill -9 one meterstream node during ingest.
    let gateways = run_gateways(6, &all, (20, 400), &acked, &stop);
    std::thread::sleep(Duration::from_millis(1_500));
    let mut nodes = nodes;
    let killed = Instant::now();
    nodes[1].proc.kill_9();
    let survivors: Vec<&Node> = vec![&nodes[0], &nodes[2]];
    let moved = await_balanced(&c, &survivors, MOVE_BOUND);
    eprintln!("partitions of the killed node held and applied after {moved:?}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let retries: usize = gateways.into_iter().map(|g| g.join().unwrap()).sum();
    eprintln!(
        "{} points acknowledged, {retries} retried batches; {:?} since the kill",
        acked.lock().unwrap().len(),
        killed.elapsed()
    );
    verify(&c, &survivors, &acked.lock().unwrap());
    verify_pattern_rollups(&c, &survivors, &acked.lock().unwrap());
    check_described(&survivors);
    // The gateways never stopped sending: each has one connection event, however many holders
    // its partition had (a new holder hears from it without a new connection).
    for n in &survivors {
        for d in 0..6 {
            let v = get_json(&c, &format!("{}/ws/v1/devices/history/gw{d}", n.url));
            let statuses: Vec<&str> = v["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["status"].as_str().unwrap())
                .collect();
            assert_eq!(statuses, ["connected"], "gw{d}'s history through {}", n.id);
        }
    }
    // The alarms after the move: v1 stays triggered (its transition is not made again by the
    // new holder, which evaluates the partition's points from the log) and resets at 21 s; v2,
    // mid-condition at the kill, fires once at 10 s and resets at 16 s.
    let more: Vec<(i64, f64)> = (13..=20).map(|s| (s, 260.0)).collect();
    post_points(&c, &nodes[2], &v1, t0, &more);
    post_points(&c, &nodes[0], &v1, t0, &[(21, 230.0)]);
    let more: Vec<(i64, f64)> = (6..=15).map(|s| (s, 260.0)).collect();
    post_points(&c, &nodes[0], &v2, t0, &more);
    post_points(&c, &nodes[2], &v2, t0, &[(16, 230.0)]);
    let mut want = vec![
        (v1.clone(), "reset".to_string(), 21),
        (v1.clone(), "triggered".to_string(), 10),
        (v2.clone(), "reset".to_string(), 16),
        (v2.clone(), "triggered".to_string(), 10),
    ];
    want.sort();
    for n in &survivors {
        assert_eq!(transitions(&c, n, &alert, t0, 4), want, "on {}", n.id);
    }
    // Each monitor, the one that was delivered by the killed node too, got each transition
    // once (by event id), with the same contents whenever it came again.
    for (hook, deliverer) in &hooks {
        let started = Instant::now();
        let got = loop {
            let got = alarm_events(&rx, hook, &alert, t0);
            if got.len() >= 4 || started.elapsed() > MOVE_BOUND {
                break got;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut states: Vec<(String, String, i64)> = got
            .iter()
            .map(|e| (e.1.clone(), e.2.clone(), e.3))
            .collect();
        states.sort();
        assert_eq!(
            states, want,
            "monitor {hook} (delivered by {deliverer} before the kill): {got:?}"
        );
    }
    // Both survivors applied the whole event stream (their statuses and outboxes are the same).
    let started = Instant::now();
    loop {
        let at: Vec<u64> = survivors
            .iter()
            .map(|n| status(&c, &n.url).unwrap()["events"].as_u64().unwrap())
            .collect();
        if at[0] == at[1] && at[0] >= 4 {
            break;
        }
        assert!(
            started.elapsed() < MOVE_BOUND,
            "event stream positions {at:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The commands queued before the kill are there on whichever node holds their devices now.
    for (device, cid) in &survivors_cmds {
        for n in &survivors {
            let v = get_json(
                &c,
                &format!("{}/ws/v1/devices/{device}/commands/{cid}", n.url),
            );
            assert_eq!(
                (v["status"].as_str(), v["command"].as_str()),
                (Some("queued"), Some("reboot")),
                "{device} via {}",
                n.id
            );
        }
    }

    // 3. kill -9 one NATS server during ingest: nothing acknowledged is lost. Reads may be
    // refused for longer: JetStream elects new leaders for the streams and consumers the dead
    // server led (5-30 s seen here, on 2 cores shared by 5 servers), and the leases that could
    // not be renewed meanwhile move.
    *READ_BOUND.lock().unwrap() = Duration::from_secs(60);
    stop.store(false, Ordering::Relaxed);
    let before = acked.lock().unwrap().len();
    let gateways = run_gateways(6, &survivors, (400, 700), &acked, &stop);
    std::thread::sleep(Duration::from_millis(1_500));
    nats.procs[0].kill_9();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    for g in gateways {
        g.join().unwrap();
    }
    let after = acked.lock().unwrap().len();
    assert!(
        after > before,
        "ingest went on after the NATS server's kill"
    );
    verify(&c, &survivors, &acked.lock().unwrap());
}

/// Whether every partition's messages have left the point log (its age limit removed them),
/// read from NATS itself.
fn log_is_empty(nats: &[String]) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(nats[0].as_str()).await.unwrap();
        let log = meterstream_cluster::log::PointLog::open(
            client,
            PARTITIONS as u32,
            4,
            3,
            Duration::from_secs(6),
            Duration::from_secs(6),
        )
        .await
        .unwrap();
        for p in 0..PARTITIONS as u32 {
            if log.last_sequence(p).await.unwrap() != 0 {
                return false;
            }
        }
        true
    })
}

/// Waits until `n` has a snapshot of every partition it holds covering all it has applied.
fn await_snapshots(c: &reqwest::blocking::Client, n: &Node, within: Duration) {
    let started = Instant::now();
    loop {
        let v = status(c, &n.url).unwrap();
        let local: Vec<u64> = v["local"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        let covered = local.iter().all(|p| {
            let pos = v["positions"][*p as usize].as_u64().unwrap();
            v["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["partition"] == *p && s["covers"].as_u64() == Some(pos))
        });
        if !local.is_empty() && covered {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{}: snapshots do not cover its partitions: {v}",
            n.id
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The hourly sums of `stream` through `n`, as (interval start, sum).
fn hourly_sums(c: &reqwest::blocking::Client, n: &Node, stream: &str) -> Vec<(i64, f64)> {
    let v = get_json(
        c,
        &format!(
            "{}/ws/v1/streams/rollups/{stream}?interval=1h&method=sum&size=1000",
            n.url
        ),
    );
    v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (ms_of(&r["timestamp"]), r["value"].as_f64().unwrap()))
        .collect()
}

#[test]
fn partitions_are_rebuilt_from_snapshots_once_the_log_has_dropped_their_points() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_guard, root) = test_dir();
    let dir = root.as_path();
    let nats = nats_cluster(dir);
    // The log keeps messages 6 s; each node snapshots its partitions every 2 s.
    let extra = "log_max_age = 6\nsnapshot_interval = 2.0\n";
    let mut a = start_node("a", &dir.join("a"), &nats.urls, extra);
    let c = client();
    await_balanced(&c, &[&a], Duration::from_secs(60));

    // Node a alone takes: gateways' batches; for each of 4 devices a stream over 3 days (sealed
    // chunks, completed days' rollups, an open head) with units; a command; an alert whose
    // condition (over 250 for 10 s) has held for 5 s of data time.
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    for g in run_gateways(6, &[&a], (0, 10), &acked, &stop) {
        g.join().unwrap();
    }
    let day0 = (1_789_000_000_000i64 / 86_400_000) * 86_400_000;
    let long: Vec<String> = (0..4).map(|d| format!("gw{d}/long/e")).collect();
    for (k, s) in long.iter().enumerate() {
        let pts: Vec<(i64, f64)> = (0..864).map(|i| (i * 300, (i as f64) + k as f64)).collect();
        post_points(&c, &a, s, day0, &pts);
        let r = c
            .put(format!("{}/ws/v1/streams/inventory/{s}", a.url))
            .json(&json!({"units": "kWh", "description": "energy"}))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text());
    }
    let r = c
        .post(format!("{}/ws/v1/devices/gw1/commands", a.url))
        .json(&json!({"command": "reboot", "parameters": {"delay": 5}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let cid = r.json::<Value>().unwrap()["id"].as_u64().unwrap();
    let alert = overvoltage_alert(&c, &a, "al/m/*");
    let t0 = (meterstream_storage::time::now_ms() / 1000 - 600) * 1000;
    let over: Vec<(i64, f64)> = (0..=14).map(|s| (s, 260.0)).collect();
    post_points(&c, &a, "al/m/v", t0, &over[..6]);
    verify(&c, &[&a], &acked.lock().unwrap());
    let sums: Vec<Vec<(i64, f64)>> = long.iter().map(|s| hourly_sums(&c, &a, s)).collect();
    assert_eq!(sums[0].len(), 72, "three days of hours");
    assert_eq!(sums[1][0], (day0, (0..12).map(|i| (i + 1) as f64).sum()));

    // Every partition snapshotted, then every message dropped from the log by its age.
    await_snapshots(&c, &a, Duration::from_secs(30));
    let started = Instant::now();
    while !log_is_empty(&nats.urls) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the log still holds messages"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("log empty {:?} after the snapshots", started.elapsed());

    // A new node takes half the partitions from a live a, by their snapshots (its store is
    // empty and the log has nothing); then a is killed and it takes the rest the same way.
    let b = start_node("b", &dir.join("b"), &nats.urls, extra);
    await_balanced(&c, &[&a, &b], Duration::from_secs(60));
    verify(&c, &[&a, &b], &acked.lock().unwrap());
    a.proc.kill_9();
    let took = await_balanced(&c, &[&b], MOVE_BOUND * 2);
    eprintln!("b holds every partition {took:?} after a's kill");
    verify(&c, &[&b], &acked.lock().unwrap());
    for (s, want) in long.iter().zip(&sums) {
        assert_eq!(&hourly_sums(&c, &b, s), want, "{s}");
        let info = get_json(&c, &format!("{}/ws/v1/streams/inventory/{s}", b.url));
        assert_eq!(
            (info["units"].as_str(), info["description"].as_str()),
            (Some("kWh"), Some("energy")),
            "{info}"
        );
        let k = s[2..3].parse::<f64>().unwrap();
        assert_eq!(info["value"].as_f64(), Some(863.0 + k), "{info}");
    }
    // The command queued through a is delivered by b.
    let polled = get_json(
        &c,
        &format!("{}/ws/v1/devices/gw1/commands/poll?after=0&wait=10", b.url),
    );
    assert_eq!(polled["list"][0]["id"].as_u64(), Some(cid), "{polled}");
    assert_eq!(polled["list"][0]["parameters"], json!({"delay": 5}));
    // The condition goes on through b, which has only the snapshot's points before 6 s: it
    // fires once, at 10 s of data time, as it would have on a.
    post_points(&c, &b, "al/m/v", t0, &over[6..]);
    assert_eq!(
        transitions(&c, &b, &alert, t0, 1),
        vec![("al/m/v".to_string(), "triggered".to_string(), 10)]
    );

    // More batches of every gateway, through b only.
    for g in run_gateways(6, &[&b], (10, 20), &acked, &stop) {
        g.join().unwrap();
    }

    // a comes back with its old store and positions, which the log no longer reaches: the
    // partitions it takes back are restored from b's snapshots, points written since included.
    await_snapshots(&c, &b, Duration::from_secs(30));
    let started = Instant::now();
    while !log_is_empty(&nats.urls) {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(500));
    }
    let a = start_node("a", &dir.join("a"), &nats.urls, extra);
    await_balanced(&c, &[&a, &b], Duration::from_secs(60));
    verify(&c, &[&a, &b], &acked.lock().unwrap());
    for n in [&a, &b] {
        let v = get_json(
            &c,
            &format!("{}/ws/v1/streams/history/al/m/v?size=100", n.url),
        );
        let got: Vec<(i64, f64)> = v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    (ms_of(&p["timestamp"]) - t0) / 1000,
                    p["value"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, over, "al/m/v through {}", n.id);
    }
    assert_eq!(
        transitions(&c, &a, &alert, t0, 1),
        vec![("al/m/v".to_string(), "triggered".to_string(), 10)]
    );
    let restored = std::fs::read_to_string(dir.join("a").join("server.log"))
        .unwrap()
        .matches("partition restored from its snapshot")
        .count();
    // Every partition a took back that had points written while it was away (each gateway's
    // and al's), and only those.
    let a_holds: Vec<u64> = status(&c, &a.url).unwrap()["local"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let written: std::collections::BTreeSet<u64> = (0..6)
        .map(|d| format!("gw{d}"))
        .chain(["al".to_string()])
        .map(|d| meterstream_cluster::partition::of_device(&d, PARTITIONS as u32) as u64)
        .filter(|p| a_holds.contains(p))
        .collect();
    assert!(
        !written.is_empty(),
        "a took back none of the written partitions"
    );
    assert_eq!(
        restored,
        written.len(),
        "a restored {restored}, not {written:?}"
    );

    // More points through a to b's partitions, then a clean stop of b (SIGTERM): b snapshots
    // what it holds before giving its leases up, and a, whose positions in those partitions
    // the log no longer reaches, restores them from that snapshot: every point reads back
    // through a alone.
    for g in run_gateways(6, &[&a], (20, 25), &acked, &stop) {
        g.join().unwrap();
    }
    let b_parts: Vec<u64> = status(&c, &b.url).unwrap()["local"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let b_holds = b_parts.len();
    let mut b = b;
    let term = Command::new("kill")
        .args(["-TERM", &b.proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(b.proc.child.wait().unwrap().success(), "b stopped cleanly");
    let log = std::fs::read_to_string(dir.join("b").join("server.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("snapshotted the partitions before stopping"))
        .expect("b snapshotted at its stop");
    assert!(line.contains(&format!("partitions={b_holds}")), "{line}");
    await_balanced(&c, &[&a], MOVE_BOUND * 2);
    verify(&c, &[&a], &acked.lock().unwrap());
    let restored_now = std::fs::read_to_string(dir.join("a").join("server.log"))
        .unwrap()
        .matches("partition restored from its snapshot")
        .count();
    // Those with points written since a's positions in them (the others are resumed: b's
    // snapshot of them is a's own state).
    let changed: std::collections::BTreeSet<u64> = (0..6)
        .map(|d| format!("gw{d}"))
        .chain(["al".to_string()])
        .map(|d| meterstream_cluster::partition::of_device(&d, PARTITIONS as u32) as u64)
        .filter(|p| b_parts.contains(p))
        .collect();
    assert_eq!(
        restored_now - restored,
        changed.len(),
        "a restored {} of b's partitions, not {changed:?}",
        restored_now - restored
    );
}

/// A data point monitor whose receiver is down holds its partition's snapshot back: the
/// snapshot covers no more than the monitor has taken, so when the holder dies the next one
/// applies the backlog from the log (its feed carries it) and the receiver, once up, gets every
/// point. Without the hold the backlog would be restored where no monitor sees it.
#[test]
fn a_lagging_monitor_holds_the_snapshot_back_and_loses_nothing_across_a_kill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_guard, root) = test_dir();
    let dir = root.as_path();
    let nats = nats_cluster(dir);
    let extra = "log_max_age = 120\nsnapshot_interval = 1.0\n";
    let mut a = start_node("a", &dir.join("a"), &nats.urls, extra);
    let b = start_node("b", &dir.join("b"), &nats.urls, extra);
    let c = client();
    await_balanced(&c, &[&a, &b], Duration::from_secs(60));
    let device = (0..200)
        .map(|k| format!("dp{k}"))
        .find(|d| holder_of(&c, &a, d) == "a")
        .unwrap();
    let p = meterstream_cluster::partition::of_device(&device, PARTITIONS as u32) as usize;
    let stream = format!("{device}/m/v");
    let t0 = (meterstream_storage::time::now_ms() / 1000 - 600) * 1000;
    // Points before the monitor exists: a snapshot covers them.
    post_points(&c, &a, &stream, t0, &[(0, 1.0), (1, 2.0)]);
    await_snapshots(&c, &a, Duration::from_secs(30));

    let rx = meterstream_testkit::Receiver::start();
    rx.mode("503");
    let r = c
        .post(format!("{}/ws/v1/monitors/inventory", a.url))
        .json(
            &json!({"topics": [format!("DataPoint/{stream}")], "url": rx.url,
                      "batch_duration": 0, "persistent": true}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let m: Value = r.json().unwrap();
    rx.secret(m["secret"].as_str().unwrap());
    std::thread::sleep(Duration::from_secs(2)); // every node has the monitor
    let backlog: Vec<(i64, f64)> = (10..30).map(|s| (s, s as f64 * 10.0)).collect();
    post_points(&c, &b, &stream, t0, &backlog);

    // Several snapshot rounds later, a's snapshot of the partition still covers less than a
    // has applied: the monitor has taken none of the backlog.
    std::thread::sleep(Duration::from_secs(4));
    let v = status(&c, &a.url).unwrap();
    let applied = v["positions"][p].as_u64().unwrap();
    let snap = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["partition"] == p as u64)
        .cloned()
        .expect("a snapshot of the partition");
    let covers = snap["covers"].as_u64().unwrap();
    assert!(
        0 < covers && covers < applied,
        "the snapshot held back for the monitor: covers {covers}, applied {applied}"
    );

    // a dies; b restores the partition from that snapshot and applies the backlog from the log.
    a.proc.kill_9();
    await_balanced(&c, &[&b], MOVE_BOUND * 2);
    let log = std::fs::read_to_string(dir.join("b").join("server.log")).unwrap();
    assert!(
        log.contains(&format!(
            "partition restored from its snapshot partition={p} "
        )),
        "b restored partition {p} from its snapshot"
    );
    rx.mode("200");
    let msgs = rx.wait_for(30, |m| {
        let got: std::collections::BTreeSet<i64> = m
            .iter()
            .filter_map(|x| x["DataPoint"]["value"].as_f64())
            .map(|v| v as i64)
            .collect();
        backlog.iter().all(|(_, v)| got.contains(&(*v as i64)))
    });
    let got: std::collections::BTreeSet<i64> = msgs
        .iter()
        .filter_map(|x| x["DataPoint"]["value"].as_f64())
        .map(|v| v as i64)
        .collect();
    for (_, v) in &backlog {
        assert!(
            got.contains(&(*v as i64)),
            "point {v} delivered; got {got:?}"
        );
    }
}

/// A node that joins takes half the partitions from a live node, which snapshots each one as it
/// gives it up: the joining node restores exactly what the other applied, so a data point
/// monitor is not sent again the points the giving node delivered (without the snapshot, the
/// joining node would replay the log from its start and its feed would carry them all again).
#[test]
fn partitions_given_up_to_a_joining_node_are_snapshotted_first_so_a_monitor_gets_each_point_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_guard, root) = test_dir();
    let dir = root.as_path();
    let nats = nats_cluster(dir);
    // No periodic snapshot within the test: only giving a partition up makes one.
    let extra = "snapshot_interval = 600.0\n";
    let a = start_node("a", &dir.join("a"), &nats.urls, extra);
    let c = client();
    await_balanced(&c, &[&a], Duration::from_secs(60));
    let rx = meterstream_testkit::Receiver::start();
    let r = c
        .post(format!("{}/ws/v1/monitors/inventory", a.url))
        .json(&json!({"topics": ["DataPoint/*/m/v"], "url": rx.url, "batch_duration": 0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let m: Value = r.json().unwrap();
    rx.secret(m["secret"].as_str().unwrap());
    std::thread::sleep(Duration::from_secs(1));

    let devices: Vec<String> = (0..24).map(|k| format!("gv{k}")).collect();
    let t0 = (meterstream_storage::time::now_ms() / 1000 - 600) * 1000;
    let post_round = |via: &Node, round: i64| {
        for (k, d) in devices.iter().enumerate() {
            let s = round * 2;
            let v = (k as i64 * 100 + s) as f64;
            post_points(
                &c,
                via,
                &format!("{d}/m/v"),
                t0,
                &[(s, v), (s + 1, v + 1.0)],
            );
        }
    };
    let ids = |msgs: &[Value]| -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for x in msgs {
            if let Some(id) = x["DataPoint"]["id"].as_str() {
                *n.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        n
    };
    post_round(&a, 0);
    let want = devices.len() * 2;
    let got = ids(&rx.wait_for(30, |m| ids(m).len() >= want));
    assert_eq!(got.len(), want, "delivered by a before b joins");

    let b = start_node("b", &dir.join("b"), &nats.urls, extra);
    await_balanced(&c, &[&a, &b], Duration::from_secs(60));
    let held_b = status(&c, &b.url).unwrap()["local"]
        .as_array()
        .unwrap()
        .len();
    assert!(held_b >= PARTITIONS / 2 - 1, "b holds {held_b}");
    let a_log = std::fs::read_to_string(dir.join("a").join("server.log")).unwrap();
    let b_log = std::fs::read_to_string(dir.join("b").join("server.log")).unwrap();
    assert_eq!(
        a_log.matches("gave the partition up").count(),
        held_b,
        "a gave up what b holds"
    );
    assert!(
        !a_log.contains("no time left to snapshot"),
        "a snapshotted every partition it gave up"
    );
    // b took each partition with data from a's snapshot of it (empty ones have no pieces).
    let restored = b_log
        .matches("partition restored from its snapshot")
        .count();
    assert!(restored > 0, "b restored partitions from snapshots");

    post_round(&b, 1);
    post_round(&a, 2);
    let want = devices.len() * 6;
    rx.wait_for(30, |m| ids(m).len() >= want);
    // Late duplicates would come within a few batches.
    std::thread::sleep(Duration::from_secs(3));
    let got = ids(&rx.delivered());
    assert_eq!(got.len(), want, "every point delivered");
    let twice: Vec<&String> = got
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "{} points delivered more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
}
