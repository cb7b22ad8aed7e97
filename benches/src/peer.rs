//! The peers of the benchmark, VictoriaMetrics and InfluxDB 1.x: the same generated values,
//! sent as InfluxDB line protocol (their preferred format, `shared/workload.md`), measured the
//! same way.

use crate::workload::{Fleet, CHANNELS};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Sends SIGTERM, waits up to 30 s, then kills.
fn stop_child(child: &mut Child) -> Result<()> {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// A VictoriaMetrics process on 127.0.0.1 with its data in a given directory.
pub struct Victoria {
    /// The process.
    pub child: Child,
    /// Base URL.
    pub url: String,
}

impl Victoria {
    /// Starts `victoria-metrics` (Debian package `victoria-metrics`) and waits for `/health`.
    pub fn start(data: &Path) -> Result<Victoria> {
        let bin = find_bin(VICTORIA.0).context(install_hint(&[VICTORIA.1]))?;
        let port = crate::server::free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg(format!("-storageDataPath={}", data.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut v = Victoria { child, url };
        let client = reqwest::blocking::Client::new();
        for _ in 0..3000 {
            if client
                .get(format!("{}/health", v.url))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(v);
            }
            if v.child.try_wait()?.is_some() {
                bail!("victoria-metrics exited during start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = v.child.kill();
        bail!("victoria-metrics did not start")
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
        stop_child(&mut self.child)
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An InfluxDB 1.x process (`influxd`) on 127.0.0.1 with its meta, data and WAL directories in a
/// given directory, and a database `bench`.
pub struct Influx {
    /// The process.
    pub child: Child,
    /// Base URL.
    pub url: String,
}

impl Influx {
    /// Starts `influxd` (Debian package `influxdb`), waits for `/ping`, creates database `bench`.
    pub fn start(data: &Path) -> Result<Influx> {
        let bin = find_bin(INFLUXD.0).context(install_hint(&[INFLUXD.1]))?;
        let (port, rpc) = (crate::server::free_port()?, crate::server::free_port()?);
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new(bin)
            .env("INFLUXDB_META_DIR", data.join("meta"))
            .env("INFLUXDB_DATA_DIR", data.join("data"))
            .env("INFLUXDB_DATA_WAL_DIR", data.join("wal"))
            .env("INFLUXDB_HTTP_BIND_ADDRESS", format!("127.0.0.1:{port}"))
            .env("INFLUXDB_BIND_ADDRESS", format!("127.0.0.1:{rpc}"))
            .env("INFLUXDB_REPORTING_DISABLED", "true")
            .env("INFLUXDB_HTTP_LOG_ENABLED", "false")
            .env("INFLUXDB_DATA_QUERY_LOG_ENABLED", "false")
            .env("INFLUXDB_MONITOR_STORE_ENABLED", "false")
            .env("INFLUXDB_HTTP_MAX_BODY_SIZE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut v = Influx { child, url };
        let client = reqwest::blocking::Client::new();
        for _ in 0..3000 {
            if client
                .get(format!("{}/ping", v.url))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                let r = client
                    .post(format!("{}/query", v.url))
                    .form(&[("q", "CREATE DATABASE bench")])
                    .send()?;
                if !r.status().is_success() {
                    bail!("influxd refused CREATE DATABASE: {}", r.status());
                }
                return Ok(v);
            }
            if v.child.try_wait()?.is_some() {
                bail!("influxd exited during start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = v.child.kill();
        bail!("influxd did not start")
    }

    /// Runs an InfluxQL query against database `bench`; the answer as JSON.
    pub fn query(&self, client: &reqwest::blocking::Client, q: &str) -> Result<serde_json::Value> {
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
        stop_child(&mut self.child)
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
