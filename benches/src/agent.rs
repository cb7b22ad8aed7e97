//! `meterstream-bench agent`: what the gateway agent costs, and how fast it catches up.
//!
//! 1. Steady state: meterstream-server on a temporary store, and `meterstream-agent --simulate N`
//!    reading N simulated meters over a pseudo-terminal every second and uploading them. After a
//!    warm-up, the agent's CPU time over a window and its resident memory. The simulated meters
//!    run inside the agent's process in this mode, so the figures are an upper bound of the
//!    agent's own cost.
//! 2. Replay: a spool holding an outage's worth of readings of N meters (one sampling round per
//!    meter and second, written with the agent's own spool code, values from its simulator), then
//!    the agent started on it with a fresh server, its meters read every second meanwhile: the
//!    time until the server has ingested as many points as the spool held, and the points per
//!    second that makes.

use crate::server::{
    authorized, cpu_seconds_of, rss_bytes_of, stop_child, ServerProcess, BENCH_KEY,
};
use anyhow::{ensure, Context, Result};
use meterstream_agent::channel::{Reading, Sample};
use meterstream_agent::profile::Profile;
use meterstream_agent::sim::SimMeter;
use meterstream_agent::spool::Spool;
use meterstream_storage::StreamType;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `meterstream-bench agent`.
#[derive(clap::Parser, Clone)]
pub struct AgentArgs {
    /// The agent binary.
    #[arg(long, default_value = "target/release/meterstream-agent")]
    pub agent_bin: PathBuf,
    /// The server binary.
    #[arg(long, default_value = "target/release/meterstream-server")]
    pub server_bin: PathBuf,
    /// Simulated meters on the gateway (alternately SDM630 and PST04, as `--simulate` makes them).
    #[arg(long, default_value_t = 10)]
    pub meters: usize,
    /// Seconds of warm-up before the steady-state window.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Seconds of the steady-state window.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seconds of outage whose readings the replay starts with.
    #[arg(long, default_value_t = 3600)]
    pub outage: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

const DEVICE: &str = "00000000-00000000-00409DFF-FF418079";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = stop_child(&mut self.0, Duration::from_secs(10));
    }
}

fn start_agent(bin: &Path, args: &[&str]) -> Result<Agent> {
    let child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Agent(child))
}

fn ingested(client: &reqwest::blocking::Client, url: &str) -> Result<f64> {
    let text = client.get(format!("{url}/metrics")).send()?.text()?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("meterstream_ingest_points_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

fn profile_of(i: usize) -> &'static str {
    if i % 2 == 1 {
        "sdm630"
    } else {
        "pst04"
    }
}

/// Fills `dir` with `seconds` of readings of `meters` simulated meters ending now; returns the
/// points written.
fn fill_spool(dir: &Path, meters: usize, seconds: u64) -> Result<u64> {
    let (mut spool, _) = Spool::open(dir, 4 << 30, false)?;
    let now = meterstream_agent::now_ms() / 1000 * 1000;
    let start = now - seconds as i64 * 1000;
    type Names = std::collections::HashMap<String, (Arc<str>, Arc<str>)>;
    let sims: Vec<(String, SimMeter, Names)> = (1..=meters)
        .map(|i| -> Result<_> {
            let p = Profile::load(profile_of(i))?;
            let names = p
                .registers
                .iter()
                .map(|r| {
                    (
                        r.channel.clone(),
                        (
                            Arc::from(format!("meter{i:02}/{}", r.channel)),
                            Arc::from(r.unit.as_str()),
                        ),
                    )
                })
                .collect();
            Ok((
                format!("meter{i:02}"),
                SimMeter::new(p, i as u8, i as u64, start),
                names,
            ))
        })
        .collect::<Result<_>>()?;
    let mut points = 0u64;
    for s in 0..seconds as i64 {
        let t = start + s * 1000;
        for (name, sim, names) in &sims {
            sim.step(t);
            let mut round: Vec<Reading> = sim
                .held()
                .into_iter()
                .filter_map(|(c, v)| {
                    let (channel, unit) = names.get(&c)?;
                    Some(Reading {
                        channel: channel.clone(),
                        timestamp: t,
                        value: Sample::Number(v),
                        stream_type: StreamType::Double,
                        unit: unit.clone(),
                    })
                })
                .collect();
            if s == 0 {
                round.push(Reading {
                    channel: Arc::from(format!("{name}/status")),
                    timestamp: t,
                    value: Sample::Text("active".into()),
                    stream_type: StreamType::String,
                    unit: Arc::from(""),
                });
            }
            points += round.len() as u64;
            spool.append(
                round.len() as u32,
                &meterstream_agent::upload::encode_round(&round),
            )?;
        }
    }
    Ok(points)
}

/// Runs both parts and returns the figures.
pub fn run(a: &AgentArgs) -> Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let client = authorized().build()?;

    // 1. Steady state.
    let (srv, _) = ServerProcess::start(&a.server_bin, &tmp.path().join("data1"), &[])?;
    let spool1 = tmp.path().join("spool1");
    let meters = a.meters.to_string();
    let agent = start_agent(
        &a.agent_bin,
        &[
            "--simulate",
            &meters,
            "--device-id",
            DEVICE,
            "--server-url",
            &srv.url,
            "--spool-dir",
            &spool1.to_string_lossy(),
            "--api-key",
            BENCH_KEY,
        ],
    )?;
    let pid = agent.0.id();
    std::thread::sleep(Duration::from_secs(a.warmup));
    let (cpu0, n0, t0) = (
        cpu_seconds_of(pid)?,
        ingested(&client, &srv.url)?,
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(a.seconds));
    let (cpu1, n1, wall) = (
        cpu_seconds_of(pid)?,
        ingested(&client, &srv.url)?,
        t0.elapsed().as_secs_f64(),
    );
    let rss = rss_bytes_of(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    drop(agent);
    srv.stop()?;
    let steady_points_per_s = (n1 - n0) / wall;
    ensure!(
        steady_points_per_s > 0.0,
        "the agent uploaded nothing during the window"
    );

    // 2. Replay after an outage.
    let spool2 = tmp.path().join("spool2");
    let t = Instant::now();
    let points = fill_spool(&spool2, a.meters, a.outage)?;
    let fill_s = t.elapsed().as_secs_f64();
    let (srv, _) = ServerProcess::start(&a.server_bin, &tmp.path().join("data2"), &[])?;
    // The same gateway, its meters still read every second while it catches up.
    let conf = tmp.path().join("replay.toml");
    let mut text = format!(
        "device_id = \"{DEVICE}\"\nmetrics_interval = 3600\n[server]\nurl = \"{}\"\napi_key = \"{BENCH_KEY}\"\n[spool]\ndir = \"{}\"\nmax_bytes = {}\n[[port]]\npath = \"/dev/null\"\n",
        srv.url,
        spool2.display(),
        4u64 << 30
    );
    for i in 1..=a.meters {
        text.push_str(&format!(
            "[[port.meter]]\nname = \"meter{i:02}\"\nprofile = \"{}\"\nslave = {i}\n",
            profile_of(i)
        ));
    }
    std::fs::write(&conf, text)?;
    let scpu0 = srv.cpu_seconds()?;
    let t = Instant::now();
    let agent = start_agent(
        &a.agent_bin,
        &["--config", &conf.to_string_lossy(), "--simulate"],
    )?;
    let pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut done = 0.0;
    while Instant::now() < deadline {
        done = ingested(&client, &srv.url)?;
        if done >= points as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let replay_s = t.elapsed().as_secs_f64();
    let agent_cpu = cpu_seconds_of(pid)?;
    let server_cpu = srv.cpu_seconds()? - scpu0;
    drop(agent);
    srv.stop()?;
    ensure!(
        done >= points as f64,
        "replay incomplete: {done} of {points} points"
    );
    Ok(serde_json::json!({
        "meters": a.meters,
        "steady": {
            "window_seconds": wall,
            "agent_cpu_percent_of_one_core": (cpu1 - cpu0) / wall * 100.0,
            "agent_rss_bytes": rss,
            "agent_peak_rss_bytes": hwm_kb * 1024.0,
            "points_per_second_uploaded": steady_points_per_s,
            "note": "the simulated meters run inside the agent's process (--simulate): an upper bound",
        },
        "replay": {
            "outage_seconds": a.outage,
            "points": points,
            "spool_fill_seconds": fill_s,
            "seconds_until_all_ingested": replay_s,
            "points_per_second": points as f64 / replay_s,
            "agent_cpu_seconds": agent_cpu,
            "server_cpu_seconds": server_cpu,
        },
    }))
}
