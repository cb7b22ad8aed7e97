//! `meterstream-bench ingest`: starts meterstream-server on a temporary directory, loads the
//! standard workload as compact MessagePack batches over N connections, and reports ingest
//! rate, server CPU, resident memory, bytes per point on disk, query latency and reopen time.

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand};
use meterstream_bench::batch::{BatchFile, BatchFileWriter};
use meterstream_bench::server::{dir_bytes, ServerProcess};
use meterstream_bench::{batch, workload::Fleet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "meterstream-bench", about = "Benchmarks for meterstream")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ingest the standard workload and measure.
    Ingest(IngestArgs),
    /// The side-by-side comparison with VictoriaMetrics and InfluxDB: the standard workload (or a
    /// scaled one) into all three, the table on stderr, JSON and an SVG chart in `--out`.
    Compare(CompareArgs),
    /// The comparison at several fleet sizes and spans, with JSON and SVG charts of how each
    /// figure changes, in `--out`.
    Scaling(ScalingArgs),
    /// Act as gateways: post live readings of simulated meters every second.
    Simulate(SimulateArgs),
    /// The gateway agent: its CPU and memory reading simulated meters every second, and how
    /// fast it replays a spool after an outage.
    Agent(meterstream_bench::agent::AgentArgs),
    /// Alarms and monitors: ingest with many alert rules against none, how fast an alarm
    /// reaches a webhook receiver, and how many monitors on the whole fleet keep up.
    Alarms(AlarmsArgs),
}

#[derive(Parser)]
struct AlarmsArgs {
    #[command(flatten)]
    run: IngestArgs,
    /// Alert rules in the rules run (one per stream, the first this many streams).
    #[arg(long, default_value_t = 10_000)]
    rules: usize,
    /// Alarms timed from the point's upload to the receiver.
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// Monitors subscribed to the whole fleet.
    #[arg(long, default_value_t = 100)]
    monitors: usize,
    /// Seconds of live fleet traffic (one reading per stream and second) for the monitors.
    #[arg(long, default_value_t = 30)]
    live_seconds: u64,
    /// Which parts to run: ingest, latency, monitors.
    #[arg(long, value_delimiter = ',', default_value = "ingest,latency,monitors")]
    parts: Vec<String>,
}

#[derive(Parser)]
struct CompareArgs {
    #[command(flatten)]
    run: IngestArgs,
    /// Where the JSON and the chart go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
}

#[derive(Parser)]
struct ScalingArgs {
    #[command(flatten)]
    run: IngestArgs,
    /// Fleet sizes (meters), each over `--seconds`.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,3000,10000")]
    fleets: Vec<usize>,
    /// Spans (seconds), each with `--span-meters` meters.
    #[arg(long, value_delimiter = ',', default_value = "3600,86400,604800")]
    spans: Vec<usize>,
    /// Meters for the span runs.
    #[arg(long, default_value_t = 100)]
    span_meters: usize,
    /// Where the JSON and the charts go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Run nothing: redraw the charts and `scaling.json` from the runs' JSON already in `--out`.
    #[arg(long)]
    replot: bool,
}

/// The workload sizes the comparison is made for.
const METERS: std::ops::RangeInclusive<usize> = 100..=10_000;
const SPAN: std::ops::RangeInclusive<usize> = 3_600..=7 * 86_400;

fn check_scale(meters: usize, seconds: usize) -> Result<()> {
    ensure!(
        METERS.contains(&meters),
        "--meters {meters}: the comparison is made for 100 to 10,000 meters"
    );
    ensure!(
        SPAN.contains(&seconds),
        "--seconds {seconds}: the comparison is made for spans of 1 hour (3600) to 7 days (604800)"
    );
    Ok(())
}

/// `compare-<meters>m-<span>`, e.g. `compare-1000m-1h`.
fn run_name(a: &IngestArgs) -> String {
    let span = if a.seconds % 86_400 == 0 {
        format!("{}d", a.seconds / 86_400)
    } else if a.seconds % 3_600 == 0 {
        format!("{}h", a.seconds / 3_600)
    } else {
        format!("{}s", a.seconds)
    };
    format!("compare-{}m-{span}", a.meters)
}

/// Runs one comparison and writes `<name>.json` and `<name>.svg` into `out`.
fn compare_once(a: &IngestArgs, out: &std::path::Path) -> Result<serde_json::Value> {
    use meterstream_bench::chart::{ratio_chart, Ratio};
    check_scale(a.meters, a.seconds)?;
    meterstream_bench::peer::check_installed()?;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let mut figures = measure(a)?;
    let rows = comparison(&figures);
    eprintln!("{}", comparison_table(&rows));
    figures["comparison"] = rows
        .iter()
        .map(|r| {
            let mut o = serde_json::json!({"figure": r.figure, "meterstream": r.ours});
            for (name, them, ratio) in &r.peers {
                o[*name] = serde_json::json!({"value": them, "ratio": ratio});
            }
            o
        })
        .collect();
    let name = run_name(a);
    let json = out.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&figures)?)
        .with_context(|| json.display().to_string())?;
    let title = format!(
        "meterstream vs peers: {} meters, {} s, batches of {} points (2-core run)",
        a.meters, a.seconds, a.batch
    );
    let ratios: Vec<Ratio> = rows
        .iter()
        .map(|r| Ratio {
            figure: r.figure.to_string(),
            ratios: r
                .peers
                .iter()
                .map(|(n, _, q)| (n.to_string(), *q))
                .collect(),
        })
        .collect();
    let svg = out.join(format!("{name}.svg"));
    ratio_chart(&svg, &title, &ratios)?;
    eprintln!("wrote {} and {}", json.display(), svg.display());
    Ok(figures)
}

fn compare(mut c: CompareArgs) -> Result<()> {
    c.run.peer = true;
    let figures = compare_once(&c.run, &c.out)?;
    println!("{}", serde_json::to_string_pretty(&figures)?);
    Ok(())
}

/// The figures a scaling chart shows, by their names in [`comparison`].
const SCALING_FIGURES: [&str; 12] = [
    "ingest, points/s",
    "server CPU-s per M points",
    "resident memory, MB",
    "bytes per point",
    "raw history, whole hour, ms",
    "raw history, whole hour, as columns, ms",
    "hourly rollup, one stream (average), ms",
    "1m averages, one meter's 12 streams, ms",
    "1m averages, 12 streams, as columns, ms",
    "15m averages, fleet, per stream, ms",
    "15m averages, fleet, as columns, ms",
    "latest value, every stream, ms",
];

fn scaling(c: ScalingArgs) -> Result<()> {
    use meterstream_bench::chart::{scaling_chart, Panel};
    for m in &c.fleets {
        check_scale(*m, c.run.seconds)?;
    }
    for s in &c.spans {
        check_scale(c.span_meters, *s)?;
    }
    let mut all = serde_json::Map::new();
    let series = [
        ("fleet", "meters", c.fleets.clone(), None),
        ("span", "span, hours", c.spans.clone(), Some(c.span_meters)),
    ];
    for (kind, x_desc, xs, span_meters) in series {
        let mut runs = Vec::new();
        for x in &xs {
            let mut a = c.run.clone();
            a.peer = true;
            match span_meters {
                None => a.meters = *x,
                Some(m) => (a.meters, a.seconds) = (m, *x),
            }
            eprintln!("== {kind}: {} meters, {} s", a.meters, a.seconds);
            // A failed size is reported and left out of the charts; the others still run.
            let run = if c.replot {
                let p = c.out.join(format!("{}.json", run_name(&a)));
                std::fs::read(&p)
                    .with_context(|| p.display().to_string())
                    .and_then(|b| Ok(serde_json::from_slice(&b)?))
            } else {
                compare_once(&a, &c.out)
            };
            match run {
                Ok(f) => runs.push(f),
                Err(e) => {
                    eprintln!("{kind} at {x}: failed: {e:#}");
                    runs.push(serde_json::json!({ "error": format!("{e:#}") }));
                }
            }
        }
        let tables: Vec<Vec<Compared>> = runs.iter().map(comparison).collect();
        let panels: Vec<Panel> = SCALING_FIGURES
            .iter()
            .map(|fig| {
                let pick = |t: &[Compared]| {
                    t.iter()
                        .find(|r| r.figure == *fig)
                        .map(|r| (r.ours, r.peers.clone()))
                };
                let mut lines = vec![("meterstream".to_string(), Vec::new())];
                for (name, _, _) in PEERS {
                    lines.push((name.to_string(), Vec::new()));
                }
                for t in &tables {
                    let Some((ours, peers)) = pick(t) else {
                        continue;
                    };
                    lines[0].1.push(ours);
                    for (i, (_, them, _)) in peers.iter().enumerate() {
                        lines[i + 1].1.push(*them);
                    }
                }
                Panel {
                    figure: fig.to_string(),
                    lines,
                }
            })
            .collect();
        let xs_f: Vec<f64> = xs
            .iter()
            .map(|x| {
                if span_meters.is_some() {
                    *x as f64 / 3600.0
                } else {
                    *x as f64
                }
            })
            .collect();
        let title = match span_meters {
            None => format!(
                "scaling with the fleet ({} s of data; 2-core run)",
                c.run.seconds
            ),
            Some(m) => format!("scaling with the span ({m} meters; 2-core run)"),
        };
        let svg = c.out.join(format!("scaling-{kind}.svg"));
        scaling_chart(&svg, &title, x_desc, &xs_f, &panels, 3)?;
        eprintln!("wrote {}", svg.display());
        all.insert(
            kind.into(),
            serde_json::json!({
                "x": xs,
                "errors": runs.iter().map(|r| r.get("error").cloned().unwrap_or_default()).collect::<Vec<_>>(),
                "figures": panels.iter().map(|p| serde_json::json!({
                    "figure": p.figure,
                    "stores": p.lines.iter().map(|(n, v)| (n.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
            }),
        );
    }
    let json = c.out.join("scaling.json");
    std::fs::write(&json, serde_json::to_string_pretty(&all)?)
        .with_context(|| json.display().to_string())?;
    eprintln!("wrote {}", json.display());
    Ok(())
}

#[derive(Parser)]
struct SimulateArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Meters to simulate (12 streams each).
    #[arg(long, default_value_t = 20)]
    meters: usize,
    /// Meters per gateway.
    #[arg(long, default_value_t = 10)]
    meters_per_gateway: usize,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    seconds: Option<u64>,
    /// API key with the write scope, sent as a bearer token.
    #[arg(long, env = "METERSTREAM_KEY", hide_env_values = true)]
    key: Option<String>,
}

fn simulate(a: SimulateArgs) -> Result<()> {
    let mut fleet = Fleet::new(a.meters, a.meters_per_gateway, 1);
    let mut auth = reqwest::header::HeaderMap::new();
    if let Some(key) = &a.key {
        auth.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse()?,
        );
    }
    let client = reqwest::blocking::Client::builder()
        .default_headers(auth)
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    let mut tick = 0u64;
    eprintln!(
        "simulating {} meters behind {} gateways, posting to {} every second",
        a.meters,
        a.meters.div_ceil(a.meters_per_gateway),
        a.url
    );
    loop {
        if a.seconds.is_some_and(|s| tick >= s) {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64
            / 1000
            * 1000;
        for body in batch::build(&mut fleet, a.meters_per_gateway, now, 1, usize::MAX) {
            match client
                .post(format!("{}/ws/v1/streams/history", a.url))
                .header("content-type", "application/msgpack")
                .body(body)
                .send()
            {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => eprintln!(
                    "server answered {}: {}",
                    r.status(),
                    r.text().unwrap_or_default()
                ),
                Err(e) => eprintln!("server unreachable: {e}"),
            }
        }
        tick += 1;
        let next = started + Duration::from_secs(tick);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

#[derive(Parser, Clone)]
struct IngestArgs {
    /// The server binary.
    #[arg(long, default_value = "target/release/meterstream-server")]
    server_bin: PathBuf,
    /// Meters (12 streams each).
    #[arg(long, default_value_t = 1000)]
    meters: usize,
    /// Meters per gateway.
    #[arg(long, default_value_t = 10)]
    meters_per_gateway: usize,
    /// Seconds of data (3600 = the standard hour, 43.2 M points with 1,000 meters).
    #[arg(long, default_value_t = 3600)]
    seconds: usize,
    /// Points per batch.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Runs of each query.
    #[arg(long, default_value_t = 50)]
    query_runs: usize,
    /// Keep the data directory here instead of a temporary one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also measure VictoriaMetrics on the same data in the same run (needs the Debian package
    /// `victoria-metrics`).
    #[arg(long)]
    peer: bool,
    /// Extra flags for the server, e.g. `--server-arg=--cache-mb=16`.
    #[arg(long = "server-arg")]
    server_args: Vec<String>,
}

/// The page size the benchmark asks for: meterstream's largest, so that a query is one request
/// where it fits, as it is for the peers (Digi's default of 1,000 is measured separately).
const PAGE: usize = 100_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Posts every batch to `url` over `connections` concurrent connections, each taking the next
/// unsent batch; fails on the first answer that is not 2xx.
fn send_all(
    batches: &Arc<BatchFile>,
    connections: usize,
    url: &str,
    content_type: &str,
) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..connections {
        let (batches, next, url, ct) = (
            batches.clone(),
            next.clone(),
            url.to_string(),
            content_type.to_string(),
        );
        handles.push(std::thread::spawn(move || -> Result<()> {
            let client = meterstream_bench::server::authorized()
                .timeout(Duration::from_secs(120))
                .build()?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i)? else {
                    return Ok(());
                };
                let r = client
                    .post(&url)
                    .header("content-type", &ct)
                    .body(b)
                    .send()?;
                // 207 means some points were refused: a failure for a benchmark.
                let ok = r.status().is_success() && r.status().as_u16() != 207;
                ensure!(ok, "batch {i}: {} {}", r.status(), r.text()?);
            }
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    Ok(())
}

/// The newest point of `stream`, as the history API answers it.
fn newest_point(
    client: &reqwest::blocking::Client,
    url: &str,
    stream: &str,
) -> Result<serde_json::Value> {
    Ok(client
        .get(format!(
            "{url}/ws/v1/streams/history/{stream}?order=desc&size=1"
        ))
        .send()?
        .json()?)
}

/// The wire format a workload is generated in.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    /// Compact MessagePack, meterstream's.
    MessagePack,
    /// InfluxDB line protocol, the peers'.
    Lines,
}

/// The workload of `a` over `seconds` up to `now`, generated into a file at `path` before
/// anything is measured. One format is on disk at a time, so that even the largest fleet's
/// batches stay in the page cache while they are sent.
fn generate(
    a: &IngestArgs,
    path: &std::path::Path,
    format: Format,
    now: i64,
) -> Result<Arc<BatchFile>> {
    let start_ms = now - a.seconds as i64 * 1000;
    let points = (a.meters * 12 * a.seconds) as f64;
    let t = Instant::now();
    let mut w = BatchFileWriter::create(path)?;
    let mut fleet = Fleet::new(a.meters, a.meters_per_gateway, 42);
    let mut emit = |b: Vec<u8>| w.push(&b);
    let (mpg, secs, batch) = (a.meters_per_gateway, a.seconds, a.batch);
    match format {
        Format::MessagePack => batch::generate(&mut fleet, mpg, start_ms, secs, batch, &mut emit)?,
        Format::Lines => meterstream_bench::peer::line_batches(
            &mut fleet, mpg, start_ms, secs, batch, &mut emit,
        )?,
    }
    let f = w.finish()?;
    eprintln!(
        "{} x {} s = {:.1} M points: {} batches, {:.1} MB of {} ({:.2} B/pt), generated in {:.1} s",
        a.meters,
        a.seconds,
        points / 1e6,
        f.len(),
        f.bytes() as f64 / 1e6,
        if format == Format::Lines {
            "line protocol"
        } else {
            "MessagePack"
        },
        f.bytes() as f64 / points,
        t.elapsed().as_secs_f64()
    );
    Ok(Arc::new(f))
}

fn ingest(a: IngestArgs) -> Result<()> {
    let figures = measure(&a)?;
    println!("{}", serde_json::to_string_pretty(&figures)?);
    if a.peer {
        eprintln!("{}", comparison_table(&comparison(&figures)));
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&figures)?)
            .with_context(|| p.display().to_string())?;
    }
    Ok(())
}

/// Runs the workload of `a` against meterstream and, with `a.peer`, against both peers, and
/// returns every figure.
fn measure(a: &IngestArgs) -> Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let now = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64)
        / 1000
        * 1000;
    let start_ms = now - a.seconds as i64 * 1000;
    let points = (a.meters * 12 * a.seconds) as f64;
    let batches_path = tmp.path().join("batches");
    let batches = generate(a, &batches_path, Format::MessagePack, now)?;
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("data"));
    let fleet = Fleet::new(a.meters, a.meters_per_gateway, 42);
    let extra: Vec<&str> = a.server_args.iter().map(String::as_str).collect();
    let (srv, _) = ServerProcess::start(&a.server_bin, &dir, &extra)?;
    let (elapsed, cpu) = load_until_queryable(
        a,
        &srv,
        &batches,
        "/ws/v1/streams/history",
        "application/msgpack",
        now,
    )?;
    let client = meterstream_bench::server::authorized().build()?;
    let probe = fleet.stream_path(a.meters - 1, 11);
    let rss = srv.rss_bytes()?;
    if std::env::var_os("BENCH_SMAPS").is_some() {
        eprintln!("{}", srv.smaps_summary()?);
    }

    // Raw history of one stream for the last hour.
    let stream = fleet.stream_path(a.meters / 2, 0);
    let mut lat = Vec::new();
    for _ in 0..a.query_runs {
        let t = Instant::now();
        let r = client
            .get(format!(
                "{}/ws/v1/streams/history/{stream}?start_time={}&end_time={}",
                srv.url,
                now - 3_600_000,
                now
            ))
            .send()?;
        ensure!(r.status().is_success());
        let v: serde_json::Value = r.json()?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            v["count"].as_u64().unwrap_or(0) == (a.seconds.min(3600).min(1000)) as u64,
            "unexpected count {}",
            v["count"]
        );
    }
    let raw_ms = median(lat);
    // The whole hour of one stream (3,600 points), following cursors, to compare with a peer
    // that answers it in one request.
    // The whole hour, following cursors: Digi's full points, then only the fields a chart needs.
    let hour = |extra: &str| -> Result<()> {
        let q = format!("start_time={}&end_time={now}{extra}", now - 3_600_000);
        let n = history_count(&client, &srv.url, &stream, &q)?;
        ensure!(n == a.seconds.min(3600) as u64, "whole hour: {n} points");
        Ok(())
    };
    // Digi's pages of 1,000 (four requests), then one page (meterstream takes `size` up to
    // 100,000), then one page of only the fields a chart needs.
    let raw_digi_pages_ms = timed(a.query_runs, || hour(""))?;
    let raw_all_ms = timed(a.query_runs, || hour(&format!("&size={PAGE}")))?;
    let raw_tv_ms = timed(a.query_runs, || {
        hour(&format!("&size={PAGE}&fields=timestamp,value"))
    })?;
    // As columns, the shape a chart takes (and the peers answer).
    let columns = |q: &str| -> Result<()> {
        let v: serde_json::Value = client
            .get(format!("{}/ws/v1/streams/history/{stream}?{q}", srv.url))
            .send()?
            .json()?;
        let n = v["columns"]["value"].as_array().map_or(0, Vec::len);
        ensure!(
            n == a.seconds.min(3600),
            "whole hour as columns: {n} values"
        );
        Ok(())
    };
    let q = format!(
        "start_time={}&end_time={now}&size={PAGE}&fields=timestamp,value&layout=columns",
        now - 3_600_000
    );
    let raw_columns_ms = timed(a.query_runs, || columns(&q))?;
    let rollups = rollup_queries(&client, &srv.url, &fleet, a, start_ms, now)?;
    let latest = latest_queries(&client, &srv.url, &fleet, a)?;
    let metrics = client.get(format!("{}/metrics", srv.url)).send()?.text()?;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let syncs = metric("meterstream_storage_flush_duration_seconds_count");
    let sync_mean_ms = metric("meterstream_storage_flush_duration_seconds_sum") / syncs * 1000.0;
    let frames_per_sync = metric("meterstream_storage_group_commit_frames_sum")
        / metric("meterstream_storage_group_commit_frames_count");
    let checkpoints = metric("meterstream_storage_checkpoint_duration_seconds_count");
    let checkpoint_seconds = metric("meterstream_storage_checkpoint_duration_seconds_sum");
    let rss_after_queries = srv.rss_bytes()?;
    srv.stop()?;
    let disk = dir_bytes(&dir);
    // Reopen and time it.
    let (srv, reopen) = ServerProcess::start(&a.server_bin, &dir, &extra)?;
    let v = newest_point(&client, &srv.url, &probe)?;
    ensure!(v["count"] == 1, "after reopen: {v}");
    srv.stop()?;
    let disk_settled = dir_bytes(&dir);

    let figures = serde_json::json!({
        "points": points,
        "seconds": elapsed,
        "points_per_second": points / elapsed,
        "server_cpu_seconds_per_million_points": cpu / (points / 1e6),
        "rss_bytes_after_ingest": rss,
        "rss_bytes_after_queries": rss_after_queries,
        "disk_bytes_after_stop": disk,
        "disk_bytes_settled": disk_settled,
        "bytes_per_point": disk_settled as f64 / points,
        "raw_history_last_hour_median_ms": raw_ms,
        "raw_history_whole_hour_digi_pages_median_ms": raw_digi_pages_ms,
        "raw_history_whole_hour_all_pages_median_ms": raw_all_ms,
        "raw_history_whole_hour_timestamp_value_all_pages_median_ms": raw_tv_ms,
        "raw_history_whole_hour_columns_median_ms": raw_columns_ms,
                "rollups": rollups,
        "latest": latest,
        "reopen_seconds": reopen.as_secs_f64(),
        "log_syncs": syncs,
        "log_sync_mean_ms": sync_mean_ms,
        "records_per_sync": frames_per_sync,
        "checkpoints": checkpoints,
        "checkpoint_seconds_total": checkpoint_seconds,
    });
    let mut figures = figures;
    drop(batches);
    if a.peer {
        let lines = generate(a, &batches_path, Format::Lines, now)?;
        figures["meterstream_line_protocol"] = meterstream_lines(a, &lines, now, points)?;
        figures["victoria_metrics"] = victoria(a, &lines, start_ms, now, points)?;
        figures["influxdb"] = influx(a, &lines, start_ms, now, points)?;
    }
    figures["workload"] = serde_json::json!({
        "meters": a.meters,
        "meters_per_gateway": a.meters_per_gateway,
        "streams": a.meters * 12,
        "seconds": a.seconds,
        "batch_points": a.batch,
        "connections": a.connections,
        "query_runs": a.query_runs,
    });
    Ok(figures)
}

/// Points of a history read with query `q`, following cursors.
fn history_count(
    client: &reqwest::blocking::Client,
    url: &str,
    stream: &str,
    q: &str,
) -> Result<u64> {
    let mut n = 0;
    let mut cursor = String::new();
    loop {
        let v: serde_json::Value = client
            .get(format!("{url}/ws/v1/streams/history/{stream}?{q}{cursor}"))
            .send()?
            .json()?;
        n += v["count"].as_u64().unwrap_or(0);
        match v["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return Ok(n),
        }
    }
}

/// One line per figure: meterstream, VictoriaMetrics, and their ratio (for throughput, VM over
/// us, so that below 1.0 is always better for meterstream).
/// A line of the comparison: figure, meterstream's JSON path, the peers' JSON path, scale,
/// whether higher is better.
type Row = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    f64,
    bool,
);

/// One figure side by side: meterstream's value, and each peer's (name, value, ratio), where
/// the ratio is meterstream's cost over the peer's (for throughput, the peer's rate over ours),
/// so that below 1.0 is always better for meterstream.
struct Compared {
    figure: &'static str,
    ours: f64,
    peers: Vec<(&'static str, f64, f64)>,
}

/// The peers in the figures' JSON: (name, key, name of their hourly `average` method).
const PEERS: [(&str, &str, &str); 2] = [
    ("VictoriaMetrics", "victoria_metrics", "avg"),
    ("InfluxDB", "influxdb", "mean"),
];

fn comparison(f: &serde_json::Value) -> Vec<Compared> {
    // (figure, meterstream's JSON path, the peers' JSON path, scale, whether higher is better).
    // In the peers' paths "@" stands for the hourly method's name, which differs per peer.
    let rows: [Row; 16] = [
        (
            "ingest, points/s",
            &["points_per_second"],
            &["points_per_second"],
            1.0,
            true,
        ),
        (
            "server CPU-s per M points",
            &["server_cpu_seconds_per_million_points"],
            &["server_cpu_seconds_per_million_points"],
            1.0,
            false,
        ),
        (
            "resident memory, MB",
            &["rss_bytes_after_ingest"],
            &["rss_bytes_after_ingest"],
            1e-6,
            false,
        ),
        (
            "bytes per point",
            &["bytes_per_point"],
            &["bytes_per_point"],
            1.0,
            false,
        ),
        (
            "raw history, whole hour, ms",
            &["raw_history_whole_hour_all_pages_median_ms"],
            &["raw_history_whole_hour_median_ms"],
            1.0,
            false,
        ),
        (
            "raw history, whole hour, 4 pages of 1,000, ms",
            &["raw_history_whole_hour_digi_pages_median_ms"],
            &["raw_history_whole_hour_median_ms"],
            1.0,
            false,
        ),
        (
            "raw history, whole hour, timestamp+value, ms",
            &["raw_history_whole_hour_timestamp_value_all_pages_median_ms"],
            &["raw_history_whole_hour_median_ms"],
            1.0,
            false,
        ),
        (
            "raw history, whole hour, as columns, ms",
            &["raw_history_whole_hour_columns_median_ms"],
            &["raw_history_whole_hour_median_ms"],
            1.0,
            false,
        ),
        (
            "hourly rollup, one stream (average), ms",
            &[
                "rollups",
                "hourly_one_stream_whole_span",
                "average",
                "client_ms",
            ],
            &["rollups", "hourly_one_stream_whole_span_median_ms", "@"],
            1.0,
            false,
        ),
        (
            "1m averages, one meter's 12 streams, ms",
            &[
                "rollups",
                "one_meter_12_streams_1m_average_day",
                "client_ms",
            ],
            &["rollups", "one_meter_12_streams_1m_average_day_median_ms"],
            1.0,
            false,
        ),
        (
            "1m averages, 12 streams, as columns, ms",
            &[
                "rollups",
                "one_meter_12_streams_1m_average_day_columns",
                "client_ms",
            ],
            &["rollups", "one_meter_12_streams_1m_average_day_median_ms"],
            1.0,
            false,
        ),
        (
            "15m averages, fleet, per stream, ms",
            &[
                "rollups",
                "fleet_active_power_15m_average_per_stream_all_pages",
                "client_ms",
            ],
            &[
                "rollups",
                "fleet_active_power_15m_average_per_stream_median_ms",
            ],
            1.0,
            false,
        ),
        (
            "15m averages, fleet, as columns, ms",
            &[
                "rollups",
                "fleet_active_power_15m_average_per_stream_columns",
                "client_ms",
            ],
            &[
                "rollups",
                "fleet_active_power_15m_average_per_stream_median_ms",
            ],
            1.0,
            false,
        ),
        (
            "15m averages, fleet, sum, ms",
            &["rollups", "fleet_active_power_15m_average_sum", "client_ms"],
            &["rollups", "fleet_active_power_15m_average_sum_median_ms"],
            1.0,
            false,
        ),
        (
            "latest value, one gateway, ms",
            &["latest", "latest_value_one_gateway", "client_ms"],
            &["latest", "latest_value_one_gateway_median_ms"],
            1.0,
            false,
        ),
        (
            "latest value, every stream, ms",
            &["latest", "latest_value_every_stream_all_pages", "client_ms"],
            &["latest", "latest_value_every_stream_median_ms"],
            1.0,
            false,
        ),
    ];
    let at = |v: &serde_json::Value, path: &[&str], hourly: &str| -> f64 {
        path.iter()
            .fold(v, |v, k| &v[if *k == "@" { hourly } else { k }])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    rows.iter()
        .map(|(figure, ours, theirs, scale, higher_is_better)| {
            let us = at(f, ours, "") * scale;
            let peers = PEERS
                .iter()
                .map(|(name, key, hourly)| {
                    let them = at(&f[*key], theirs, hourly) * scale;
                    let ratio = if *higher_is_better {
                        them / us
                    } else {
                        us / them
                    };
                    (*name, them, ratio)
                })
                .collect();
            Compared {
                figure,
                ours: us,
                peers,
            }
        })
        .collect()
}

/// The comparison as the table the command prints.
fn comparison_table(rows: &[Compared]) -> String {
    let mut out = format!("{:<46} {:>14}", "figure (client-measured)", "meterstream");
    for (name, _, _) in PEERS {
        out.push_str(&format!(" {name:>16} {:>7}", "ratio"));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{:<46} {:>14.3}", r.figure, r.ours));
        for (_, them, ratio) in &r.peers {
            out.push_str(&format!(" {them:>16.3} {ratio:>7.2}"));
        }
        out.push('\n');
    }
    out.push_str(
        "ratio: meterstream's cost over the peer's (below 1.00 is better for meterstream)\n",
    );
    out
}

/// Median milliseconds of `runs` runs of `run`.
fn timed(runs: usize, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut lat = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        run()?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(lat))
}

/// Milliseconds the server says it took (its `Server-Timing: app;dur=` header).
fn server_ms(r: &reqwest::blocking::Response) -> f64 {
    r.headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("dur=").nth(1))
        .and_then(|d| d.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Median over `runs` of (client milliseconds, server milliseconds) of `run`, which returns the
/// server's own time.
fn timed_both(runs: usize, mut run: impl FnMut() -> Result<f64>) -> Result<serde_json::Value> {
    let (mut client, mut server) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        server.push(run()?);
        client.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(serde_json::json!({"server_ms": median(server), "client_ms": median(client)}))
}

/// GET `url`, asked again while the answer is 503 (a cluster node whose partitions are still
/// settling answers a gathered query so rather than with rows missing), for at most 30 s.
fn get_settled(
    client: &reqwest::blocking::Client,
    url: &str,
) -> Result<reqwest::blocking::Response> {
    let started = std::time::Instant::now();
    loop {
        let r = client.get(url).send()?;
        if r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE
            || started.elapsed() > std::time::Duration::from_secs(30)
        {
            return Ok(r);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Every row of a rollup listing, following cursors, and the server's time summed over pages.
fn rollup_rows(
    client: &reqwest::blocking::Client,
    url: &str,
    path: &str,
    query: &str,
) -> Result<(Vec<serde_json::Value>, f64)> {
    let mut rows = Vec::new();
    let mut cursor = String::new();
    let mut srv = 0.0;
    loop {
        let r = get_settled(
            client,
            &format!("{url}/ws/v1/streams/rollups/{path}?size={PAGE}&{query}{cursor}"),
        )?;
        ensure!(r.status().is_success(), "{path}?{query}: {}", r.status());
        srv += server_ms(&r);
        let mut v: serde_json::Value = r.json()?;
        // Taken, not cloned: the client's work should be parsing, as for the peers.
        if let serde_json::Value::Array(list) = v["list"].take() {
            rows.extend(list);
        }
        match v["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return Ok((rows, srv)),
        }
    }
}

/// The standard workload's rollup queries against meterstream (every page of each).
fn rollup_queries(
    client: &reqwest::blocking::Client,
    url: &str,
    fleet: &Fleet,
    a: &IngestArgs,
    start_ms: i64,
    now: i64,
) -> Result<serde_json::Value> {
    let m = a.meters / 2;
    let stream = fleet.stream_path(m, 0);
    let mut hourly = serde_json::Map::new();
    for method in ["min", "max", "average", "sum", "count", "standarddev"] {
        let q = format!("interval=hour&method={method}");
        let (rows, _) = rollup_rows(client, url, &stream, &q)?;
        if method == "count" {
            let n: f64 = rows.iter().filter_map(|r| r["value"].as_f64()).sum();
            ensure!(n as usize == a.seconds, "hourly counts add up to {n}");
        }
        let ms = timed_both(a.query_runs, || {
            rollup_rows(client, url, &stream, &q).map(|r| r.1)
        })?;
        hourly.insert(method.into(), ms);
        hourly.insert("intervals".into(), rows.len().into());
    }
    let meter = format!("{}/{}/*", fleet.gateway_id(m), fleet.meter_name(m));
    let day = format!(
        "interval=1m&method=average&start_time={}&end_time={now}",
        now - 86_400_000
    );
    let (rows, _) = rollup_rows(client, url, &meter, &day)?;
    let minutes = a.seconds.min(86_400).div_ceil(60);
    ensure!(
        rows.len() >= 12 * minutes && rows.len() <= 12 * (minutes + 1),
        "1-minute rows of one meter: {}",
        rows.len()
    );
    let one_meter_day = timed_both(a.query_runs, || {
        rollup_rows(client, url, &meter, &day).map(|r| r.1)
    })?;
    // The same as one object per stream with columns (`layout=columns`), the shape a chart
    // takes and the peers answer.
    let columns = |path: &str, q: &str, want: usize| -> Result<f64> {
        let mut ms = 0.0;
        let mut n = 0;
        let mut cursor = String::new();
        loop {
            let r = client
                .get(format!(
                    "{url}/ws/v1/streams/rollups/{path}?size={PAGE}&layout=columns&{q}{cursor}"
                ))
                .send()?;
            ms += server_ms(&r);
            let v: serde_json::Value = r.json()?;
            n += v["series"].as_array().map_or(0, |s| {
                s.iter()
                    .map(|s| s["value"].as_array().map_or(0, Vec::len))
                    .sum()
            });
            match v["cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        ensure!(n == want, "{path} as columns: {n} values, {want} rows");
        Ok(ms)
    };
    let one_meter_day_columns = timed_both(a.query_runs, || columns(&meter, &day, rows.len()))?;
    let fleet_q = format!("interval=15m&method=average&start_time={start_ms}&end_time={now}");
    let (rows, _) = rollup_rows(client, url, "*/*/active_power", &fleet_q)?;
    ensure!(
        rows.len() >= a.meters * a.seconds.div_ceil(900),
        "15-minute rows of the fleet: {}",
        rows.len()
    );
    let fleet_ms = timed_both(a.query_runs, || {
        rollup_rows(client, url, "*/*/active_power", &fleet_q).map(|r| r.1)
    })?;
    let fleet_columns_ms = timed_both(a.query_runs, || {
        columns("*/*/active_power", &fleet_q, rows.len())
    })?;
    let agg_q = format!("{fleet_q}&aggregate=sum");
    let (rows, _) = rollup_rows(client, url, "*/*/active_power", &agg_q)?;
    ensure!(
        rows.len() >= a.seconds / 900 && rows.len() <= a.seconds / 900 + 2,
        "aggregated rows: {}",
        rows.len()
    );
    let agg_ms = timed_both(a.query_runs, || {
        rollup_rows(client, url, "*/*/active_power", &agg_q).map(|r| r.1)
    })?;
    // Windows that do not depend on the span: the last day.
    let last_day = format!("start_time={}&end_time={now}", now - 86_400_000);
    let q = format!("interval=hour&method=average&{last_day}");
    let hourly_last_day = timed_both(a.query_runs, || {
        rollup_rows(client, url, &stream, &q).map(|r| r.1)
    })?;
    let q = format!("interval=15m&method=average&aggregate=sum&{last_day}");
    let fleet_sum_last_day = timed_both(a.query_runs, || {
        rollup_rows(client, url, "*/*/active_power", &q).map(|r| r.1)
    })?;
    let q = format!("interval=15m&method=average&{last_day}");
    let fleet_last_day = timed_both(a.query_runs.min(10), || {
        rollup_rows(client, url, "*/*/active_power", &q).map(|r| r.1)
    })?;
    Ok(serde_json::json!({
        "last_day_hourly_average_one_stream": hourly_last_day,
        "last_day_fleet_active_power_15m_average_sum": fleet_sum_last_day,
        "last_day_fleet_active_power_15m_average_per_stream_all_pages": fleet_last_day,
        "hourly_one_stream_whole_span": hourly,
        "one_meter_12_streams_1m_average_day": one_meter_day,
        "one_meter_12_streams_1m_average_day_columns": one_meter_day_columns,
        "fleet_active_power_15m_average_per_stream_all_pages": fleet_ms,
        "fleet_active_power_15m_average_per_stream_columns": fleet_columns_ms,
        "fleet_active_power_15m_average_sum": agg_ms,
        "note": "medians; server_ms from the Server-Timing header summed over pages, client_ms includes HTTP and the client's JSON parsing",
    }))
}

/// Every stream of an inventory listing with its current value, following cursors; the rows
/// and the server's time summed over pages.
fn inventory_rows(
    client: &reqwest::blocking::Client,
    url: &str,
    query: Option<&str>,
) -> Result<(usize, f64)> {
    let mut n = 0;
    let mut srv = 0.0;
    let mut cursor: Option<String> = None;
    loop {
        let mut req = client.get(format!("{url}/ws/v1/streams/inventory?size={PAGE}"));
        if let Some(q) = query {
            req = req.query(&[("query", q)]);
        }
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let r = req.send()?;
        ensure!(r.status().is_success(), "inventory: {}", r.status());
        srv += server_ms(&r);
        let v: serde_json::Value = r.json()?;
        let empty = Vec::new();
        let list = v["list"].as_array().unwrap_or(&empty);
        ensure!(
            list.iter().all(|s| s.get("value").is_some()),
            "a stream without its current value"
        );
        n += list.len();
        match v["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok((n, srv)),
        }
    }
}

/// The standard workload's latest-value queries against meterstream.
fn latest_queries(
    client: &reqwest::blocking::Client,
    url: &str,
    fleet: &Fleet,
    a: &IngestArgs,
) -> Result<serde_json::Value> {
    let gw = format!("id startsWith '{}/'", fleet.gateway_id(a.meters / 2));
    let (n, _) = inventory_rows(client, url, Some(&gw))?;
    ensure!(
        n == a.meters_per_gateway * 12,
        "{n} streams under one gateway"
    );
    let one_gateway = timed_both(a.query_runs, || {
        inventory_rows(client, url, Some(&gw)).map(|r| r.1)
    })?;
    let (n, _) = inventory_rows(client, url, None)?;
    ensure!(n == a.meters * 12, "{n} streams in all");
    let every = timed_both(a.query_runs.min(20), || {
        inventory_rows(client, url, None).map(|r| r.1)
    })?;
    Ok(serde_json::json!({
        "latest_value_one_gateway": one_gateway,
        "latest_value_every_stream_all_pages": every,
    }))
}

/// The latest-value queries against VictoriaMetrics (instant `/api/v1/query`).
fn victoria_latest(
    client: &reqwest::blocking::Client,
    url: &str,
    fleet: &Fleet,
    a: &IngestArgs,
    now: i64,
) -> Result<serde_json::Value> {
    let run = |query: &str, want: usize| -> Result<()> {
        let v: serde_json::Value = client
            .get(format!("{url}/api/v1/query"))
            .query(&[
                ("query", query.to_string()),
                ("time", (now / 1000).to_string()),
            ])
            .send()?
            .json()?;
        let n = v["data"]["result"].as_array().map_or(0, |r| r.len());
        ensure!(n == want, "{query}: {n} series, {want} expected");
        Ok(())
    };
    let gw = format!(
        "{{__name__=~\"meter_.+\",gw=\"{}\"}}",
        fleet.gateway_id(a.meters / 2)
    );
    run(&gw, a.meters_per_gateway * 12)?;
    let one = timed(a.query_runs, || run(&gw, a.meters_per_gateway * 12))?;
    let all = "{__name__=~\"meter_.+\"}";
    run(all, a.meters * 12)?;
    let every = timed(a.query_runs.min(20), || run(all, a.meters * 12))?;
    Ok(serde_json::json!({
        "latest_value_one_gateway_median_ms": one,
        "latest_value_every_stream_median_ms": every,
    }))
}

/// The standard rollup queries against VictoriaMetrics (`/api/v1/query_range`).
fn victoria_rollups(
    client: &reqwest::blocking::Client,
    url: &str,
    fleet: &Fleet,
    a: &IngestArgs,
    start_ms: i64,
    now: i64,
) -> Result<serde_json::Value> {
    let m = a.meters / 2;
    let (gw, dev) = (fleet.gateway_id(m), fleet.meter_name(m));
    let run = |query: &str, step: i64, start_s: i64, want: usize| -> Result<()> {
        let v: serde_json::Value = client
            .get(format!("{url}/api/v1/query_range"))
            .query(&[
                ("query", query.to_string()),
                ("start", start_s.to_string()),
                ("end", (now / 1000).to_string()),
                ("step", step.to_string()),
            ])
            .send()?
            .json()?;
        let n = v["data"]["result"].as_array().map_or(0, |r| r.len());
        ensure!(n == want, "{query}: {n} series, {want} expected: {v}");
        Ok(())
    };
    let mut hourly = serde_json::Map::new();
    for f in ["min", "max", "avg", "sum", "count", "stddev"] {
        let q = format!("{f}_over_time(meter_voltage_l1{{gw=\"{gw}\",dev=\"{dev}\"}}[1h])");
        run(&q, 3600, start_ms / 1000, 1)?;
        hourly.insert(
            f.into(),
            timed(a.query_runs, || run(&q, 3600, start_ms / 1000, 1))?.into(),
        );
    }
    let q = format!("avg_over_time({{__name__=~\"meter_.+\",gw=\"{gw}\",dev=\"{dev}\"}}[1m])");
    let day = timed(a.query_runs, || run(&q, 60, now / 1000 - 86_400, 12))?;
    let q = "avg_over_time(meter_active_power[15m])";
    let fleet_ms = timed(a.query_runs, || run(q, 900, start_ms / 1000, a.meters))?;
    let q = "sum(avg_over_time(meter_active_power[15m]))";
    let agg = timed(a.query_runs, || run(q, 900, start_ms / 1000, 1))?;
    Ok(serde_json::json!({
        "hourly_one_stream_whole_span_median_ms": hourly,
        "one_meter_12_streams_1m_average_day_median_ms": day,
        "fleet_active_power_15m_average_per_stream_median_ms": fleet_ms,
        "fleet_active_power_15m_average_sum_median_ms": agg,
        "note": "VictoriaMetrics caches query results by default; repeated runs may hit its cache",
    }))
}

/// The same workload into InfluxDB 1.x, measured the same way; queries in InfluxQL.
fn influx(
    a: &IngestArgs,
    lines: &Arc<BatchFile>,
    start_ms: i64,
    now: i64,
    points: f64,
) -> Result<serde_json::Value> {
    let fleet = Fleet::new(a.meters, a.meters_per_gateway, 42);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("influx");
    let db = meterstream_bench::peer::start_influx(&dir)?;
    let cpu0 = db.cpu_seconds()?;
    let started = Instant::now();
    send_all(
        lines,
        a.connections,
        &format!("{}/write?db=bench&precision=s", db.url),
        "text/plain",
    )?;
    let client = reqwest::blocking::Client::new();
    let m = a.meters - 1;
    let (gw, dev) = (fleet.gateway_id(m), fleet.meter_name(m));
    let last_ms = (now - 1000) / 1000 * 1000;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = db.influxql(
            &client,
            &format!("SELECT last(reactive_energy) FROM meter WHERE gw='{gw}' AND dev='{dev}'"),
        )?;
        if v["results"][0]["series"][0]["values"][0][0].as_i64() == Some(last_ms) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "InfluxDB never made the last point queryable"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = db.cpu_seconds()? - cpu0;
    let rss = db.rss_bytes()?;
    let m = a.meters / 2;
    let (gw, dev) = (fleet.gateway_id(m), fleet.meter_name(m));
    let meter = format!("gw='{gw}' AND dev='{dev}'");
    let span = format!("time >= {start_ms}ms AND time < {now}ms");
    let series =
        |v: &serde_json::Value| v["results"][0]["series"].as_array().map_or(0, |s| s.len());
    let values = |v: &serde_json::Value| {
        v["results"][0]["series"][0]["values"]
            .as_array()
            .map_or(0, |s| s.len())
    };
    let q = format!(
        "SELECT voltage_l1 FROM meter WHERE {meter} AND time >= {}ms AND time < {now}ms",
        now - 3_600_000
    );
    let raw = timed(a.query_runs, || {
        let v = db.influxql(&client, &q)?;
        ensure!(
            values(&v) == a.seconds.min(3600),
            "raw hour: {} values",
            values(&v)
        );
        Ok(())
    })?;
    let mut hourly = serde_json::Map::new();
    for f in ["min", "max", "mean", "sum", "count", "stddev"] {
        let q =
            format!("SELECT {f}(voltage_l1) FROM meter WHERE {meter} AND {span} GROUP BY time(1h)");
        let ms = timed(a.query_runs, || db.influxql(&client, &q).map(|_| ()))?;
        hourly.insert(f.into(), ms.into());
    }
    let q = format!(
        "SELECT mean(*) FROM meter WHERE {meter} AND time >= {}ms AND time < {now}ms GROUP BY time(1m)",
        now - 86_400_000
    );
    let one_meter_day = timed(a.query_runs, || db.influxql(&client, &q).map(|_| ()))?;
    let q =
        format!("SELECT mean(active_power) FROM meter WHERE {span} GROUP BY time(15m), gw, dev");
    let fleet_ms = timed(a.query_runs, || {
        let v = db.influxql(&client, &q)?;
        ensure!(series(&v) == a.meters, "fleet: {} series", series(&v));
        Ok(())
    })?;
    let q = format!(
        "SELECT sum(ap) FROM (SELECT mean(active_power) AS ap FROM meter WHERE {span} GROUP BY time(15m), gw, dev) WHERE {span} GROUP BY time(15m)"
    );
    let agg = timed(a.query_runs, || db.influxql(&client, &q).map(|_| ()))?;
    let q = format!("SELECT last(*) FROM meter WHERE gw='{gw}' GROUP BY dev");
    let one_gateway = timed(a.query_runs, || {
        let v = db.influxql(&client, &q)?;
        ensure!(
            series(&v) == a.meters_per_gateway,
            "gateway: {} series",
            series(&v)
        );
        Ok(())
    })?;
    let q = "SELECT last(*) FROM meter GROUP BY gw, dev";
    let every = timed(a.query_runs.min(20), || {
        let v = db.influxql(&client, q)?;
        ensure!(series(&v) == a.meters, "every: {} series", series(&v));
        Ok(())
    })?;
    db.stop()?;
    let disk = dir_bytes(&dir);
    Ok(serde_json::json!({
        "points_per_second": points / elapsed,
        "server_cpu_seconds_per_million_points": cpu / (points / 1e6),
        "rss_bytes_after_ingest": rss,
        "bytes_per_point": disk as f64 / points,
        "raw_history_whole_hour_median_ms": raw,
        "rollups": {
            "hourly_one_stream_whole_span_median_ms": hourly,
            "one_meter_12_streams_1m_average_day_median_ms": one_meter_day,
            "fleet_active_power_15m_average_per_stream_median_ms": fleet_ms,
            "fleet_active_power_15m_average_sum_median_ms": agg,
        },
        "latest": {
            "latest_value_one_gateway_median_ms": one_gateway,
            "latest_value_every_stream_median_ms": every,
        },
        "acknowledges": "after its write-ahead log is fsynced (wal-fsync-delay 0s, the default)",
    }))
}

/// Sends every batch to meterstream's `path` and returns (seconds, server CPU-seconds) until the
/// fleet's last point is queryable. Acknowledged means applied: the newest point of the last
/// stream must be there, with the last second's timestamp, as soon as the sends return.
fn load_until_queryable(
    a: &IngestArgs,
    srv: &ServerProcess,
    batches: &Arc<BatchFile>,
    path: &str,
    content_type: &str,
    now: i64,
) -> Result<(f64, f64)> {
    let fleet = Fleet::new(a.meters, a.meters_per_gateway, 42);
    let cpu0 = srv.cpu_seconds()?;
    let started = Instant::now();
    send_all(
        batches,
        a.connections,
        &format!("{}{path}", srv.url),
        content_type,
    )?;
    let client = meterstream_bench::server::authorized().build()?;
    let probe = fleet.stream_path(a.meters - 1, 11);
    let v = newest_point(&client, &srv.url, &probe)?;
    let elapsed = started.elapsed().as_secs_f64();
    let last = meterstream_storage::time::format_iso((now - 1000) / 1000 * 1000);
    ensure!(
        v["count"] == 1 && v["list"][0]["timestamp"] == last.as_str(),
        "{path}: last point not queryable: {v}"
    );
    Ok((elapsed, srv.cpu_seconds()? - cpu0))
}

/// Ingest of the peers' line-protocol bytes into meterstream (`POST /write?precision=s`), with
/// a path template that gives the same stream paths as the MessagePack run.
fn meterstream_lines(
    a: &IngestArgs,
    lines: &Arc<BatchFile>,
    now: i64,
    points: f64,
) -> Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let mut extra: Vec<&str> = vec!["--line-protocol-template", "{gw}/{dev}/{field}"];
    extra.extend(a.server_args.iter().map(String::as_str));
    let (srv, _) = ServerProcess::start(&a.server_bin, &dir, &extra)?;
    let (elapsed, cpu) =
        load_until_queryable(a, &srv, lines, "/write?precision=s", "text/plain", now)?;
    let rss = srv.rss_bytes()?;
    srv.stop()?;
    let disk = dir_bytes(&dir);
    Ok(serde_json::json!({
        "points_per_second": points / elapsed,
        "seconds": elapsed,
        "server_cpu_seconds_per_million_points": cpu / (points / 1e6),
        "rss_bytes_after_ingest": rss,
        "bytes_per_point": disk as f64 / points,
        "wire_bytes_per_point": lines.bytes() as f64 / points,
    }))
}

/// The same workload into VictoriaMetrics, measured the same way.
fn victoria(
    a: &IngestArgs,
    lines: &Arc<BatchFile>,
    start_ms: i64,
    now: i64,
    points: f64,
) -> Result<serde_json::Value> {
    let fleet = Fleet::new(a.meters, a.meters_per_gateway, 42);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vm");
    let vm = meterstream_bench::peer::start_victoria(&dir)?;
    let cpu0 = vm.cpu_seconds()?;
    let started = Instant::now();
    send_all(
        lines,
        a.connections,
        &format!("{}/write", vm.url),
        "text/plain",
    )?;
    let client = reqwest::blocking::Client::new();
    client
        .get(format!("{}/internal/force_flush", vm.url))
        .send()?;
    let (gw, dev) = (
        fleet.gateway_id(a.meters - 1),
        fleet.meter_name(a.meters - 1),
    );
    let last_s = (now - 1000) / 1000;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = client
            .get(format!("{}/api/v1/export", vm.url))
            .query(&[
                (
                    "match[]",
                    format!("meter_reactive_energy{{gw=\"{gw}\",dev=\"{dev}\"}}"),
                ),
                ("start", last_s.to_string()),
            ])
            .send()?
            .text()?;
        if body.contains(&format!("{}", last_s * 1000)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "VictoriaMetrics never made the last point queryable"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = vm.cpu_seconds()? - cpu0;
    let rss = vm.rss_bytes()?;
    let m = a.meters / 2;
    let series = format!(
        "meter_voltage_l1{{gw=\"{}\",dev=\"{}\"}}",
        fleet.gateway_id(m),
        fleet.meter_name(m)
    );
    let mut lat = Vec::new();
    for _ in 0..a.query_runs {
        let t = Instant::now();
        let body = client
            .get(format!("{}/api/v1/export", vm.url))
            .query(&[
                ("match[]", series.clone()),
                ("start", ((now - 3_600_000) / 1000).to_string()),
                ("end", (now / 1000 - 1).to_string()),
            ])
            .send()?
            .text()?;
        let v: serde_json::Value = serde_json::from_str(body.lines().next().unwrap_or("{}"))?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            v["values"].as_array().map_or(0, |a| a.len()) == a.seconds.min(3600),
            "VM export returned {} values",
            v["values"].as_array().map_or(0, |a| a.len())
        );
    }
    let rollups = victoria_rollups(&client, &vm.url, &fleet, a, start_ms, now)?;
    let latest = victoria_latest(&client, &vm.url, &fleet, a, now)?;
    vm.stop()?;
    let disk = dir_bytes(&dir);
    Ok(serde_json::json!({
        "points_per_second": points / elapsed,
        "server_cpu_seconds_per_million_points": cpu / (points / 1e6),
        "rss_bytes_after_ingest": rss,
        "bytes_per_point": disk as f64 / points,
                "raw_history_whole_hour_median_ms": median(lat),
        "rollups": rollups,
        "latest": latest,
        "acknowledges": "before data is durable (in-memory buffers, flushed about every second)",
    }))
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Ingest(a) => ingest(a),
        Cmd::Compare(c) => compare(c),
        Cmd::Scaling(c) => scaling(c),
        Cmd::Simulate(a) => simulate(a),
        Cmd::Alarms(a) => {
            let v = alarms(&a)?;
            let text = serde_json::to_string_pretty(&v)?;
            if let Some(p) = &a.run.json {
                std::fs::write(p, &text)?;
            }
            println!("{text}");
            Ok(())
        }
        Cmd::Agent(a) => {
            let v = meterstream_bench::agent::run(&a)?;
            let text = serde_json::to_string_pretty(&v)?;
            if let Some(p) = &a.json {
                std::fs::write(p, &text)?;
            }
            println!("{text}");
            Ok(())
        }
    }
}

/// The evaluator's lag in log records, from `/metrics`.
fn alarm_lag(client: &reqwest::blocking::Client, url: &str) -> Result<u64> {
    let text = client.get(format!("{url}/metrics")).send()?.text()?;
    text.lines()
        .find_map(|l| l.strip_prefix("meterstream_alarm_feed_lag_records "))
        .and_then(|v| v.trim().parse().ok())
        .context("no meterstream_alarm_feed_lag_records in /metrics")
}

/// One rule for stream `path` of channel `c`: a condition the standard workload rarely meets,
/// so that the run measures evaluation, not alarms.
fn rule_for(path: &str, c: usize) -> serde_json::Value {
    let (op, threshold, reset_op, reset) = match c {
        0..=2 => ("<", 207.0, ">", 210.0), // undervoltage
        3..=5 => (">", 100.0, "<", 90.0),  // overcurrent, A
        8 => ("<", 0.5, ">", 0.6),         // power factor
        9 => ("<", 49.5, ">", 49.8),       // frequency
        _ => (">", 1e12, "<", 1e11),
    };
    serde_json::json!({
        "name": format!("rule {path}"),
        "severity": "major",
        "scope": {"type": "Resource", "value": path},
        "rule": {"type": "DataPoint condition",
                 "fire": {"op": op, "threshold": threshold, "duration_ms": 60000},
                 "reset": {"op": reset_op, "threshold": reset, "duration_ms": 300000}}
    })
}

fn post_json(
    client: &reqwest::blocking::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let r = client.post(url).json(body).send()?;
    let status = r.status();
    let v: serde_json::Value = r.json().unwrap_or(serde_json::Value::Null);
    ensure!(status.is_success(), "{url}: {status} {v}");
    Ok(v)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn alarms(args: &AlarmsArgs) -> Result<serde_json::Value> {
    let a = &args.run;
    let mut out = serde_json::json!({
        "machine": "2 cores",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let tmp = tempfile::tempdir()?;
    let extra: Vec<&str> = a.server_args.iter().map(String::as_str).collect();
    let fleet = Fleet::new(a.meters, a.meters_per_gateway, 42);
    if args.parts.iter().any(|p| p == "ingest") {
        let now = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64)
            / 1000
            * 1000;
        let batches = generate(a, &tmp.path().join("batches"), Format::MessagePack, now)?;
        let points = (a.meters * 12 * a.seconds) as f64;
        let mut runs = Vec::new();
        for rules in [0, args.rules] {
            let dir = tmp.path().join(format!("data-{rules}"));
            let (srv, _) = ServerProcess::start(&a.server_bin, &dir, &extra)?;
            let client = meterstream_bench::server::authorized()
                .timeout(Duration::from_secs(60))
                .build()?;
            let t = Instant::now();
            let mut made = 0;
            'm: for m in 0..a.meters {
                for c in 0..12 {
                    if made == rules {
                        break 'm;
                    }
                    let path = fleet.stream_path(m, c);
                    post_json(
                        &client,
                        &format!("{}/ws/v1/alerts/inventory", srv.url),
                        &rule_for(&path, c),
                    )?;
                    made += 1;
                }
            }
            let create_s = t.elapsed().as_secs_f64();
            // Let the evaluator read the rules before the clock starts.
            std::thread::sleep(Duration::from_millis(500));
            let cpu0 = srv.cpu_seconds()?;
            let started = Instant::now();
            send_all(
                &batches,
                a.connections,
                &format!("{}/ws/v1/streams/history", srv.url),
                "application/msgpack",
            )?;
            let acked = started.elapsed().as_secs_f64();
            let deadline = Instant::now() + Duration::from_secs(600);
            while alarm_lag(&client, &srv.url)? > 0 {
                ensure!(
                    Instant::now() < deadline,
                    "the evaluator did not catch up in 600 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let evaluated = started.elapsed().as_secs_f64();
            let cpu = srv.cpu_seconds()? - cpu0;
            let rss = srv.rss_bytes()?;
            let metrics = client.get(format!("{}/metrics", srv.url)).send()?.text()?;
            let figure = |name: &str| -> f64 {
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let run = serde_json::json!({
                "rules": rules,
                "rules_created_in_s": create_s,
                "points": points,
                "acknowledged_s": acked,
                "evaluated_s": evaluated,
                "points_per_s_acknowledged": points / acked,
                "points_per_s_evaluated": points / evaluated,
                "cpu_s_per_million_points": cpu / points * 1e6,
                "rss_mb": rss as f64 / 1e6,
                "points_evaluated": figure("meterstream_alarm_points_evaluated_total "),
                "transitions": figure("meterstream_alarm_transitions_total "),
            });
            eprintln!("ingest with {rules} rules: {run}");
            runs.push(run);
            srv.stop()?;
        }
        let ratio = runs[1]["points_per_s_evaluated"].as_f64().unwrap_or(0.0)
            / runs[0]["points_per_s_evaluated"].as_f64().unwrap_or(1.0);
        out["ingest"] = serde_json::json!({"runs": runs, "rate_ratio_with_rules": ratio});
    }
    if args.parts.iter().any(|p| p == "latency") {
        let mut by_duration = Vec::new();
        for batch_duration in [0.0, 1.0] {
            let dir = tmp.path().join(format!("data-latency-{batch_duration}"));
            let mut e = extra.clone();
            e.extend(["--allow-private-webhook-targets", "true"]);
            let (srv, _) = ServerProcess::start(&a.server_bin, &dir, &e)?;
            let client = meterstream_bench::server::authorized()
                .timeout(Duration::from_secs(30))
                .build()?;
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, i64)>();
            let tx = std::sync::Mutex::new(tx);
            let receiver = meterstream_bench::receiver::start(move |at, body| {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
                    return;
                };
                for m in v["Document"]["Msg"].as_array().into_iter().flatten() {
                    if let Some(c) = m["AlarmStatus"]["changed"].as_str() {
                        if let Ok(t) = meterstream_storage::time::parse_absolute(c) {
                            let _ = tx.lock().map(|tx| tx.send((at, t)));
                        }
                    }
                }
            })?;
            let mut rule = rule_for("lat/m/v", 0);
            rule["rule"]["fire"]["duration_ms"] = 0.into();
            rule["rule"]["reset"]["duration_ms"] = 0.into();
            post_json(
                &client,
                &format!("{}/ws/v1/alerts/inventory", srv.url),
                &rule,
            )?;
            post_json(
                &client,
                &format!("{}/ws/v1/monitors/inventory", srv.url),
                &serde_json::json!({"topics": ["AlarmStatus"], "url": receiver.url,
                                    "batch_duration": batch_duration}),
            )?;
            std::thread::sleep(Duration::from_millis(500));
            let base = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64)
                / 1000
                * 1000
                - 3_600_000;
            let mut lat = Vec::new();
            for i in 0..args.latency_samples {
                let ts = base + i as i64 * 1000;
                let v = if i % 2 == 0 { 200.0 } else { 215.0 };
                let sent = Instant::now();
                post_json(
                    &client,
                    &format!("{}/ws/v1/streams/history", srv.url),
                    &serde_json::json!([{"stream_id": "lat/m/v", "timestamp": ts, "value": v}]),
                )?;
                loop {
                    let (at, t) = rx
                        .recv_timeout(Duration::from_secs(10))
                        .context("no alarm reached the receiver within 10 s")?;
                    if t == ts {
                        lat.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                        break;
                    }
                }
            }
            let run = serde_json::json!({
                "batch_duration_s": batch_duration,
                "samples": lat.len(),
                "p50_ms": percentile(&mut lat, 0.5),
                "p99_ms": percentile(&mut lat, 0.99),
                "max_ms": percentile(&mut lat, 1.0),
                "target_p99_ms": 100.0 + batch_duration * 1000.0,
            });
            eprintln!("alarm delivery latency: {run}");
            by_duration.push(run);
            srv.stop()?;
        }
        out["latency"] = by_duration.into();
    }
    if args.parts.iter().any(|p| p == "monitors") {
        let dir = tmp.path().join("data-monitors");
        let mut e = extra.clone();
        e.extend(["--allow-private-webhook-targets", "true"]);
        let (srv, _) = ServerProcess::start(&a.server_bin, &dir, &e)?;
        let client = meterstream_bench::server::authorized()
            .timeout(Duration::from_secs(30))
            .build()?;
        let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (d2, b2) = (delivered.clone(), bytes.clone());
        let receiver = meterstream_bench::receiver::start(move |_, body| {
            let n = meterstream_bench::receiver::count(body, b"\"topic\"") as u64;
            d2.fetch_add(n, Ordering::Relaxed);
            b2.fetch_add(body.len() as u64, Ordering::Relaxed);
        })?;
        for _ in 0..args.monitors {
            post_json(
                &client,
                &format!("{}/ws/v1/monitors/inventory", srv.url),
                &serde_json::json!({"topics": ["DataPoint/*/*/*"], "url": receiver.url,
                                    "batch_size": 10000, "batch_duration": 1}),
            )?;
        }
        let cpu0 = srv.cpu_seconds()?;
        let mut live = Fleet::new(a.meters, a.meters_per_gateway, 7);
        let started = Instant::now();
        let mut sent_points = 0u64;
        let mut per_second = Vec::new();
        let mut last = 0u64;
        for tick in 0..args.live_seconds {
            let now = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64)
                / 1000
                * 1000;
            for body in batch::build(&mut live, a.meters_per_gateway, now, 1, a.batch) {
                let r = client
                    .post(format!("{}/ws/v1/streams/history", srv.url))
                    .header("content-type", "application/msgpack")
                    .body(body)
                    .send()?;
                ensure!(r.status().as_u16() == 201, "upload: {}", r.status());
            }
            sent_points += (a.meters * 12) as u64;
            let next = started + Duration::from_secs(tick + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let d = delivered.load(Ordering::Relaxed);
            per_second.push(d - last);
            last = d;
        }
        let traffic_s = started.elapsed().as_secs_f64();
        let want = sent_points * args.monitors as u64;
        let at_end = delivered.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(120);
        while delivered.load(Ordering::Relaxed) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let caught_up_s = started.elapsed().as_secs_f64() - traffic_s;
        let total = delivered.load(Ordering::Relaxed);
        // The steady state: the second half of the traffic.
        let half = &per_second[per_second.len() / 2..];
        let steady = half.iter().sum::<u64>() as f64 / half.len().max(1) as f64;
        let run = serde_json::json!({
            "monitors": args.monitors,
            "live_seconds": args.live_seconds,
            "ingest_points_per_s": (a.meters * 12) as f64,
            "events_wanted_per_s": (a.meters * 12 * args.monitors) as f64,
            "events_delivered_per_s_steady": steady,
            "events_wanted": want,
            "events_delivered_when_traffic_stopped": at_end,
            "events_delivered": total,
            "caught_up_after_s": if total >= want { Some(caught_up_s) } else { None },
            "server_cpu_s_per_s": (srv.cpu_seconds()? - cpu0) / started.elapsed().as_secs_f64(),
            "server_rss_mb": srv.rss_bytes()? as f64 / 1e6,
            "webhook_mb_per_s": bytes.load(Ordering::Relaxed) as f64 / 1e6 / started.elapsed().as_secs_f64(),
        });
        eprintln!("monitors on the whole fleet: {run}");
        out["monitors"] = run;
        srv.stop()?;
    }
    Ok(out)
}
