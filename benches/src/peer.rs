//! VictoriaMetrics as the peer of the ingest benchmark: the same generated values, sent as
//! InfluxDB line protocol (its preferred format, `shared/workload.md`), measured the same way.
//! The full side-by-side with InfluxDB and every standard query is issue 4's command.

use crate::workload::{Fleet, CHANNELS};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Line-protocol batches of the workload, in the same order and sizes as [`crate::batch::build`]:
/// one line per meter and second, `meter,gw=<gateway>,dev=<meter> voltage_l1=231.02,... <unix s>`.
pub fn line_batches(
    fleet: &mut Fleet,
    meters_per_gateway: usize,
    start_ms: i64,
    seconds: usize,
    batch_points: usize,
) -> Vec<Vec<u8>> {
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
    let mut out = Vec::new();
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
        out.extend(per_gw.into_iter().map(String::into_bytes));
        s += w;
    }
    out
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
        let bin = [
            "/usr/bin/victoria-metrics",
            "/usr/local/bin/victoria-metrics",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("victoria-metrics is not installed: apt-get install victoria-metrics")?;
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
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
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
