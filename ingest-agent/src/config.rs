//! Configuration of `meterstream-agent`: defaults < TOML file < environment < command line,
//! validated in one place ([`Config::validate`]). Every field is documented here and in
//! `ingest-agent/meterstream-agent.example.toml`, which a test loads.

use crate::error::{AgentError, Result};
use crate::profile::Profile;
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the agent is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gateway's device id, the first segment of every stream path it writes
    /// (e.g. `00000000-00000000-00409DFF-FF418079`).
    pub device_id: String,
    /// The gateway's model, as reported to the server. Default `meterstream-agent`.
    #[serde(default = "default_model")]
    pub model: String,
    /// The server to upload to.
    pub server: ServerConfig,
    /// Seconds between two readings of every meter. Default 1.
    #[serde(default = "default_sample_interval")]
    pub sample_interval: f64,
    /// Batching of uploads.
    #[serde(default)]
    pub upload: UploadConfig,
    /// The on-disk spool.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Seconds between two publications of the agent's own health metrics
    /// (`<device id>/metrics/...`). Default 60.
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval: f64,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax; `RUST_LOG` overrides it.
    /// Default `info`.
    #[serde(default = "default_log")]
    pub log: String,
    /// The serial ports and the meters on each.
    #[serde(default, rename = "port")]
    pub ports: Vec<PortConfig>,
}

/// Where and how to upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Base URL of the meterstream server, e.g. `https://meters.example.com`.
    pub url: String,
    /// User name for HTTP Basic authentication (with `password`), if the server asks for it.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for HTTP Basic authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// A device key or API key sent as `Authorization: Bearer <key>` (instead of Basic).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Seconds an upload may take before it counts as failed. Default 30.
    #[serde(default = "default_request_timeout")]
    pub timeout: f64,
}

/// Batching of uploads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Most points in one upload. Default 10,000.
    pub batch_points: usize,
    /// Seconds the uploader waits for a batch to fill before sending what it has. Default 1.
    pub flush_interval: f64,
    /// First retry delay in seconds after a failed upload; it doubles (with jitter) up to
    /// `max_backoff`. Default 0.5.
    pub min_backoff: f64,
    /// Longest retry delay in seconds. Default 60.
    pub max_backoff: f64,
    /// While a backlog replays (oldest first, in time order), readings taken since it began
    /// are sent ahead of it once they have waited this many seconds. Default 5. Short outages
    /// replay before that, all in time order; sending live readings early makes the server
    /// take the rest of the backlog as late data, which costs it more.
    pub live_max_delay: f64,
}

/// The on-disk spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool (created if missing). Default `./spool`.
    pub dir: PathBuf,
    /// Most bytes the spool may hold; when full, the oldest readings are dropped (logged at
    /// ERROR and counted). Default 256 MiB.
    pub max_bytes: u64,
    /// Whether each append is `fdatasync`ed, so that readings survive a power cut as well as a
    /// crash. Off saves flash wear; a crash of the agent alone loses nothing either way.
    /// Default true.
    pub sync: bool,
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// One serial port (one RS-485 bus) and the meters on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Device path, e.g. `/dev/ttyUSB0`.
    pub path: PathBuf,
    /// Baud rate. Default 9600.
    #[serde(default = "default_baud")]
    pub baud_rate: u32,
    /// Parity. Default `none`.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// Stop bits, 1 or 2. Default 1.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Data bits, 7 or 8. Default 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Seconds to wait for a meter's answer to one request. Default 0.5.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: f64,
    /// Consecutive failed requests on this port after which it is closed and reopened, with a
    /// backoff of 1 s doubling up to 60 s while reopening fails. Default 3.
    #[serde(default = "default_reconnect_after")]
    pub reconnect_after: u32,
    /// The meters on this bus.
    #[serde(rename = "meter")]
    pub meters: Vec<MeterConfig>,
}

/// One meter on a bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Name, the second segment of its stream paths (`<device id>/<name>/<channel>`).
    pub name: String,
    /// Model profile: a built-in name (`sdm630`, `pst04`) or the path of a profile file.
    pub profile: String,
    /// Modbus slave id, 1–247, unique on its bus.
    pub slave: u8,
    /// Latitude in degrees, published as `<device id>/<name>/latitude` at start.
    #[serde(default)]
    pub latitude: Option<f64>,
    /// Longitude in degrees, published as `<device id>/<name>/longitude` at start.
    #[serde(default)]
    pub longitude: Option<f64>,
}

fn default_model() -> String {
    "meterstream-agent".into()
}
fn default_sample_interval() -> f64 {
    1.0
}
fn default_metrics_interval() -> f64 {
    60.0
}
fn default_log() -> String {
    "info".into()
}
fn default_request_timeout() -> f64 {
    30.0
}
fn default_baud() -> u32 {
    9600
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}
fn default_data_bits() -> u8 {
    8
}
fn default_response_timeout() -> f64 {
    0.5
}
fn default_reconnect_after() -> u32 {
    3
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            batch_points: 10_000,
            flush_interval: 1.0,
            min_backoff: 0.5,
            max_backoff: 60.0,
            live_max_delay: 5.0,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("spool"),
            max_bytes: 256 << 20,
            sync: true,
        }
    }
}

/// Command-line flags; each may also come from the environment variable named beside it.
#[derive(Debug, Default, Parser)]
#[command(
    name = "meterstream-agent",
    version,
    about = "Reads meters over serial Modbus RTU and uploads their readings to meterstream"
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "METERSTREAM_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The gateway's device id.
    #[arg(long, env = "METERSTREAM_AGENT_DEVICE_ID")]
    pub device_id: Option<String>,
    /// Base URL of the server.
    #[arg(long, env = "METERSTREAM_AGENT_SERVER_URL")]
    pub server_url: Option<String>,
    /// API or device key for the server.
    #[arg(long, env = "METERSTREAM_AGENT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Spool directory.
    #[arg(long, env = "METERSTREAM_AGENT_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Seconds between readings.
    #[arg(long, env = "METERSTREAM_AGENT_SAMPLE_INTERVAL")]
    pub sample_interval: Option<f64>,
    /// Log filter.
    #[arg(long, env = "METERSTREAM_AGENT_LOG")]
    pub log: Option<String>,
    /// Simulate meters: serve every configured meter from a simulator on a pseudo-terminal
    /// and read them through it (the ports' paths are then ignored). Without a configuration
    /// file, simulates this many SDM630 meters on one bus.
    #[arg(long, env = "METERSTREAM_AGENT_SIMULATE", num_args = 0..=1, default_missing_value = "0")]
    pub simulate: Option<usize>,
}

impl PortConfig {
    /// A port at `path` with `meters` and every other setting at its default.
    pub fn new(path: PathBuf, meters: Vec<MeterConfig>) -> PortConfig {
        PortConfig {
            path,
            baud_rate: default_baud(),
            parity: default_parity(),
            stop_bits: default_stop_bits(),
            data_bits: default_data_bits(),
            response_timeout: default_response_timeout(),
            reconnect_after: default_reconnect_after(),
            meters,
        }
    }
}

impl Config {
    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| AgentError::Config(format!("{origin}: {e}")))
    }

    /// A configuration with no ports, for `device_id` and `url` (the base of `load` without a
    /// file, and of tests).
    pub fn minimal(device_id: &str, url: &str) -> Config {
        Config {
            device_id: device_id.into(),
            model: default_model(),
            server: ServerConfig {
                url: url.into(),
                username: None,
                password: None,
                api_key: None,
                timeout: default_request_timeout(),
            },
            sample_interval: default_sample_interval(),
            upload: UploadConfig::default(),
            spool: SpoolConfig::default(),
            metrics_interval: default_metrics_interval(),
            log: default_log(),
            ports: Vec::new(),
        }
    }

    /// Builds the configuration from the file named by `--config` (or a minimal one), then
    /// environment and flags, and validates it.
    pub fn load(args: &Args) -> Result<Config> {
        let mut c = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    AgentError::Config(format!("cannot read {}: {e}", path.display()))
                })?;
                Config::from_toml(&text, &path.display().to_string())?
            }
            None => Config::minimal("", "http://127.0.0.1:8080"),
        };
        if let Some(v) = &args.device_id {
            c.device_id = v.clone();
        }
        if let Some(v) = &args.server_url {
            c.server.url = v.clone();
        }
        if let Some(v) = &args.api_key {
            c.server.api_key = Some(v.clone());
        }
        if let Some(v) = &args.spool_dir {
            c.spool.dir = v.clone();
        }
        if let Some(v) = args.sample_interval {
            c.sample_interval = v;
        }
        if let Some(v) = &args.log {
            c.log = v.clone();
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every field; the error names the field and what is wrong with it.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(AgentError::Config(format!("{field}: {m}")));
        if self.device_id.is_empty() || self.device_id.contains('/') {
            return bad(
                "device_id",
                format!("{:?} must be one non-empty path segment", self.device_id),
            );
        }
        meterstream_storage::path::validate_path(&self.device_id)
            .or_else(|e| bad("device_id", e.to_string()))?;
        let url = &self.server.url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return bad(
                "server.url",
                format!("{url:?} must start with http:// or https://"),
            );
        }
        if self.server.username.is_some() != self.server.password.is_some() {
            return bad(
                "server.username",
                "username and password go together".into(),
            );
        }
        if self.server.api_key.is_some() && self.server.username.is_some() {
            return bad(
                "server.api_key",
                "use either api_key or username and password, not both".into(),
            );
        }
        let positive = |field: &str, v: f64| -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(field, format!("{v} must be a positive number of seconds"))
            }
        };
        positive("server.timeout", self.server.timeout)?;
        positive("sample_interval", self.sample_interval)?;
        positive("metrics_interval", self.metrics_interval)?;
        positive("upload.flush_interval", self.upload.flush_interval)?;
        positive("upload.min_backoff", self.upload.min_backoff)?;
        positive("upload.max_backoff", self.upload.max_backoff)?;
        positive("upload.live_max_delay", self.upload.live_max_delay)?;
        if self.upload.min_backoff > self.upload.max_backoff {
            return bad("upload.min_backoff", "is above upload.max_backoff".into());
        }
        if !(1..=1_000_000).contains(&self.upload.batch_points) {
            return bad(
                "upload.batch_points",
                format!("{} is not in 1..=1000000", self.upload.batch_points),
            );
        }
        if self.spool.max_bytes < 1 << 20 {
            return bad(
                "spool.max_bytes",
                format!(
                    "{} is below the smallest spool, 1 MiB",
                    self.spool.max_bytes
                ),
            );
        }
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let field = |f: &str| format!("port[{i}].{f}");
            if !paths.insert(&p.path) {
                return bad(
                    &field("path"),
                    format!("{} is configured twice", p.path.display()),
                );
            }
            if p.baud_rate == 0 {
                return bad(&field("baud_rate"), "must be positive".into());
            }
            if !matches!(p.stop_bits, 1 | 2) {
                return bad(
                    &field("stop_bits"),
                    format!("{} is not 1 or 2", p.stop_bits),
                );
            }
            if !matches!(p.data_bits, 7 | 8) {
                return bad(
                    &field("data_bits"),
                    format!("{} is not 7 or 8", p.data_bits),
                );
            }
            positive(&field("response_timeout"), p.response_timeout)?;
            if p.reconnect_after == 0 {
                return bad(&field("reconnect_after"), "must be at least 1".into());
            }
            if p.meters.is_empty() {
                return bad(&field("meter"), "a port needs at least one meter".into());
            }
            let mut slaves = HashSet::new();
            for (j, m) in p.meters.iter().enumerate() {
                let field = |f: &str| format!("port[{i}].meter[{j}].{f}");
                if m.name.is_empty() || m.name.contains('/') || m.name == "metrics" {
                    return bad(
                        &field("name"),
                        format!(
                            "{:?} must be one path segment other than \"metrics\"",
                            m.name
                        ),
                    );
                }
                meterstream_storage::path::validate_path(&m.name)
                    .or_else(|e| bad(&field("name"), e.to_string()))?;
                if !names.insert(&m.name) {
                    return bad(&field("name"), format!("{:?} is used twice", m.name));
                }
                if !(1..=247).contains(&m.slave) {
                    return bad(&field("slave"), format!("{} is not in 1..=247", m.slave));
                }
                if !slaves.insert(m.slave) {
                    return bad(
                        &field("slave"),
                        format!("{} is used twice on {}", m.slave, p.path.display()),
                    );
                }
                if m.latitude.is_some_and(|v| !(-90.0..=90.0).contains(&v)) {
                    return bad(&field("latitude"), "must be within -90..=90".into());
                }
                if m.longitude.is_some_and(|v| !(-180.0..=180.0).contains(&v)) {
                    return bad(&field("longitude"), "must be within -180..=180".into());
                }
                Profile::load(&m.profile)
                    .map(drop)
                    .or_else(|e| bad(&field("profile"), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// `sample_interval` as a duration.
    pub fn sample_every(&self) -> Duration {
        Duration::from_secs_f64(self.sample_interval)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXAMPLE: &str = include_str!("../meterstream-agent.example.toml");

    #[test]
    fn the_example_file_loads_and_validates() {
        let c = Config::from_toml(EXAMPLE, "example").unwrap();
        c.validate().unwrap();
        assert_eq!(c.device_id, "00000000-00000000-00409DFF-FF418079");
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].meters.len(), 2);
        assert_eq!(c.ports[0].parity, Parity::None);
        assert_eq!(c.ports[1].parity, Parity::Even);
        assert_eq!(c.ports[0].meters[1].slave, 2);
        assert_eq!(c.ports[0].meters[0].latitude, Some(42.6564));
        assert_eq!(c.upload.batch_points, 10_000);
        assert_eq!(c.spool.max_bytes, 256 << 20);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let args = Args {
            config: Some(path),
            server_url: Some("http://127.0.0.1:9".into()),
            sample_interval: Some(5.0),
            ..Args::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.server.url, "http://127.0.0.1:9");
        assert_eq!(c.sample_interval, 5.0);
        assert_eq!(c.device_id, "00000000-00000000-00409DFF-FF418079");
    }

    #[test]
    fn bad_fields_are_named() {
        let base = Config::from_toml(EXAMPLE, "example").unwrap();
        type Change = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.device_id = "a/b".into()), "device_id"),
            (Box::new(|c| c.server.url = "ftp://x".into()), "server.url"),
            (Box::new(|c| c.sample_interval = 0.0), "sample_interval"),
            (
                Box::new(|c| c.ports[0].meters[1].slave = 1),
                "port[0].meter[1].slave",
            ),
            (
                Box::new(|c| c.ports[1].meters[0].name = "main".into()),
                "port[1].meter[0].name",
            ),
            (
                Box::new(|c| c.ports[0].meters[0].profile = "nope".into()),
                "port[0].meter[0].profile",
            ),
            (Box::new(|c| c.ports[0].stop_bits = 3), "port[0].stop_bits"),
            (Box::new(|c| c.spool.max_bytes = 10), "spool.max_bytes"),
            (
                Box::new(|c| c.upload.batch_points = 0),
                "upload.batch_points",
            ),
        ];
        for (change, field) in cases {
            let mut c = base.clone();
            change(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e:?} should name {field}");
        }
        let e = Config::from_toml("device_id = \"x\"\nbogus = 1\n", "f").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
