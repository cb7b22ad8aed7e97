//! Starting and measuring a `meterstream-server` child process: port, readiness, CPU time,
//! resident memory, disk use.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server started by the benchmark, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProcess {
    /// The child process.
    pub child: Child,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
}

/// The admin key the benchmarks start meterstream-server with (`METERSTREAM_ADMIN_KEY`) and
/// send with every request.
pub const BENCH_KEY: &str = "msk_bench_0123456789abcdefghijklmnopqrstuv";

/// A client builder whose requests carry `Authorization: Bearer` [`BENCH_KEY`] (the peers
/// ignore it).
pub fn authorized() -> reqwest::blocking::ClientBuilder {
    let mut h = reqwest::header::HeaderMap::new();
    if let Ok(v) = format!("Bearer {BENCH_KEY}").parse() {
        h.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::blocking::Client::builder().default_headers(h)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl ServerProcess {
    /// Starts `bin` on `data_dir` and waits until `/health` answers; returns with the time that
    /// took.
    pub fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> Result<(ServerProcess, Duration)> {
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("METERSTREAM_ADMIN_KEY", BENCH_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut s = ServerProcess {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        };
        let client = reqwest::blocking::Client::new();
        for _ in 0..6000 {
            if let Ok(r) = client.get(format!("{}/health", s.url)).send() {
                if r.status().is_success() {
                    return Ok((s, started.elapsed()));
                }
            }
            if let Some(st) = s.child.try_wait()? {
                bail!("server exited during start: {st}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = s.child.kill();
        bail!("server did not become healthy within 60 s")
    }

    /// CPU seconds (user + system) the server has used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds_of(self.child.id())
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_bytes_of(self.child.id())
    }

    /// Resident memory by mapping (largest first), from `/proc/PID/smaps`, for diagnosis.
    pub fn smaps_summary(&self) -> Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id()))?;
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        let mut name = String::new();
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first().is_some_and(|a| {
                a.contains('-') && a.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            }) {
                name = f.get(5).map_or("[anon]".to_string(), |s| s.to_string());
            } else if f.first() == Some(&"Rss:") {
                *by.entry(name.clone()).or_default() +=
                    f.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by_key(|(_, kb)| std::cmp::Reverse(*kb));
        Ok(v.iter()
            .take(8)
            .map(|(n, kb)| format!("{:>8} kB {n}", kb))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        stop_child(&mut self.child, Duration::from_secs(30))
    }
}

/// Stops a child process: SIGTERM, up to `grace` for it to exit, then SIGKILL.
pub fn stop_child(child: &mut std::process::Child, grace: Duration) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    if send_signal(child.id() as i32, 15) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// Sends signal `sig` with `kill(1)`, which keeps this crate free of unsafe code.
fn send_signal(pid: i32, sig: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds_of(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11).context("stat")?.parse()?;
    let stime: f64 = f.get(12).context("stat")?.parse()?;
    let hz = 100.0; // sysconf(_SC_CLK_TCK) on Linux
    Ok((utime + stime) / hz)
}

/// Resident memory of process `pid` in bytes.
pub fn rss_bytes_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for l in status.lines() {
        if let Some(v) = l.strip_prefix("VmRSS:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse()?;
            return Ok(kb * 1024);
        }
    }
    bail!("no VmRSS")
}

/// Bytes of all files under `p`.
pub fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
