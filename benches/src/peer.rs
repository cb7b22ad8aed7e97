//! The peers of the benchmark, VictoriaMetrics and InfluxDB 1.x: the same generated values,
//! sent as InfluxDB line protocol (their preferred format, `shared/workload.md`), measured the
//! same way.

use crate::workload::{Fleet, CHANNELS};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Line-protocol batches of the workload, in the same order and sizes as [`crate::batch::build`]:
/// one line per meter and second, `meter,gw=<gateway>,dev=<meter> voltage_l1=231.02,... <unix s>`.
/// Each batch goes to `emit` as soon as it is written.
pub fn line_batches(
    fleet: &mut Fleet,
    meters_per_gateway: usize,
    start_ms: i64,
    seconds: usize,
    batch_points: usize,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let meters = fleet.meters();
    let gateways = meters.div_ceil(meters_per_gateway);
    let window = (batch_points / (meters_per_gateway * 12)).max(1);
    let tags: Vec<String> = (0..meters)
        .map(|m| {
            format!(
                "meter,gw={},dev={}",
                fleet.gateway_id(m),
                fleet.meter_name(m)
            )
        })
        .collect();
    let mut s = 0;
    while s < seconds {
        let w = window.min(seconds - s);
        let mut per_gw: Vec<String> = vec![String::new(); gateways];
        for k in 0..w {
            let t = start_ms + ((s + k) as i64) * 1000;
            fleet.second(t, |m, v| {
                let line = &mut per_gw[m / meters_per_gateway];
                line.push_str(&tags[m]);
                for (c, (name, _)) in CHANNELS.iter().enumerate() {
                    let _ = write!(line, "{}{name}={}", if c == 0 { ' ' } else { ',' }, v[c]);
                }
                let _ = writeln!(line, " {}", t / 1000);
            });
        }
        for b in per_gw {
            emit(b.into_bytes())?;
        }
        s += w;
    }
    Ok(())
}

/// The peers' programs and the Debian packages that install them.
const VICTORIA: (&str, &str) = ("victoria-metrics", "victoria-metrics");
const INFLUXD: (&str, &str) = ("influxd", "influxdb");

/// Where `program` is installed.
fn find_bin(program: &str) -> Option<String> {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| format!("{d}/{program}"))
        .find(|p| Path::new(p).exists())
}

fn install_hint(packages: &[&str]) -> String {
    format!(
        "not installed: {}. Install with: sudo apt-get update && sudo apt-get install -y {}",
        packages.join(", "),
        packages.join(" ")
    )
}

/// Fails, naming every missing package and how to install it, unless both peers are installed.
pub fn check_installed() -> Result<()> {
    let missing: Vec<&str> = [VICTORIA, INFLUXD]
        .iter()
        .filter(|(program, _)| find_bin(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("{}", install_hint(&missing))
    }
}

/// A peer's process on 127.0.0.1 and its base URL; killed when dropped if still running.
pub struct Peer {
    /// The process.
    pub child: Child,
    /// Base URL.
    pub url: String,
}

impl Peer {
    /// Spawns `cmd` (named `name` in errors) and waits until `GET {url}{health}` succeeds.
    fn spawn(name: &str, mut cmd: Command, url: String, health: &str) -> Result<Peer> {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let mut p = Peer { child, url };
        let client = reqwest::blocking::Client::new();
        for _ in 0..3000 {
            if client
                .get(format!("{}{health}", p.url))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(p);
            }
            if p.child.try_wait()?.is_some() {
                bail!("{name} exited during start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("{name} did not start")
    }

    /// CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        crate::server::cpu_seconds_of(self.child.id())
    }

    /// Resident bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        crate::server::rss_bytes_of(self.child.id())
    }

    /// Stops it with SIGTERM and waits.
    pub fn stop(mut self) -> Result<()> {
        crate::server::stop_child(&mut self.child, Duration::from_secs(30))
    }

    /// Runs an InfluxQL query against database `bench` (InfluxDB); the answer as JSON.
    pub fn influxql(
        &self,
        client: &reqwest::blocking::Client,
        q: &str,
    ) -> Result<serde_json::Value> {
        let r = client
            .get(format!("{}/query", self.url))
            .query(&[("db", "bench"), ("q", q), ("epoch", "ms")])
            .send()?;
        if !r.status().is_success() {
            bail!("InfluxDB answered {} to {q}", r.status());
        }
        let v: serde_json::Value = r.json()?;
        if let Some(e) = v["results"][0]["error"].as_str() {
            bail!("InfluxDB: {e} ({q})");
        }
        Ok(v)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `victoria-metrics` (Debian package `victoria-metrics`) with its data in `data` and
/// waits for `/health`.
pub fn start_victoria(data: &Path) -> Result<Peer> {
    let bin = find_bin(VICTORIA.0).context(install_hint(&[VICTORIA.1]))?;
    let port = crate::server::free_port()?;
    let mut cmd = Command::new(bin);
    cmd.arg(format!("-storageDataPath={}", data.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=100y")
        .arg("-loggerLevel=ERROR");
    Peer::spawn(
        "victoria-metrics",
        cmd,
        format!("http://127.0.0.1:{port}"),
        "/health",
    )
}

/// Starts InfluxDB 1.x (`influxd`, Debian package `influxdb`) with its meta, data and WAL
/// directories in `data`, waits for `/ping`, and creates database `bench`.
pub fn start_influx(data: &Path) -> Result<Peer> {
    let bin = find_bin(INFLUXD.0).context(install_hint(&[INFLUXD.1]))?;
    let (port, rpc) = (crate::server::free_port()?, crate::server::free_port()?);
    let mut cmd = Command::new(bin);
    cmd.env("INFLUXDB_META_DIR", data.join("meta"))
        .env("INFLUXDB_DATA_DIR", data.join("data"))
        .env("INFLUXDB_DATA_WAL_DIR", data.join("wal"))
        .env("INFLUXDB_HTTP_BIND_ADDRESS", format!("127.0.0.1:{port}"))
        .env("INFLUXDB_BIND_ADDRESS", format!("127.0.0.1:{rpc}"))
        .env("INFLUXDB_REPORTING_DISABLED", "true")
        .env("INFLUXDB_HTTP_LOG_ENABLED", "false")
        .env("INFLUXDB_DATA_QUERY_LOG_ENABLED", "false")
        .env("INFLUXDB_MONITOR_STORE_ENABLED", "false")
        .env("INFLUXDB_HTTP_MAX_BODY_SIZE", "0");
    let p = Peer::spawn("influxd", cmd, format!("http://127.0.0.1:{port}"), "/ping")?;
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/query", p.url))
        .form(&[("q", "CREATE DATABASE bench")])
        .send()?;
    if !r.status().is_success() {
        bail!("influxd refused CREATE DATABASE: {}", r.status());
    }
    Ok(p)
}
