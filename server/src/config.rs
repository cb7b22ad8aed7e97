//! Configuration of `meterstream-server`: defaults < TOML file < environment < command line,
//! validated in one place ([`Config::validate`]).

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the server can be configured with. Every field has a default; a TOML file names
/// fields exactly as here (see `server/meterstream-server.example.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory of the store (created if missing). Default `./data`.
    pub data_dir: PathBuf,
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger bodies get 413. Default 16 MiB.
    pub body_limit: usize,
    /// Seconds between retention sweeps, which delete points older than their stream's
    /// `data_ttl`. Default 60.
    pub retention_sweep_interval: u64,
    /// Longest seconds between checkpoints of the store (open chunks saved, log truncated).
    /// Default 30.
    pub checkpoint_interval: u64,
    /// Points per compressed chunk. Default 2048.
    pub chunk_points: usize,
    /// sled page cache in MiB. Default 64.
    pub cache_mb: u64,
    /// HTTP worker threads; 0 means one per core. Default 0.
    pub workers: usize,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax; `RUST_LOG` overrides it.
    /// Default `info`.
    pub log: String,
    /// Seconds without an upload or a poll after which a device counts as disconnected.
    /// Default 120.
    pub device_inactivity_timeout: u64,
    /// An admin API key (`msk_<id>_<secret>`) the server accepts as a bearer token, for
    /// automation; usually from `METERSTREAM_ADMIN_KEY`. Without it, the first start makes an
    /// admin key and prints it once.
    pub admin_key: Option<String>,
    /// Whether monitors may push to loopback, private and link-local addresses (refused by
    /// default, so that a monitor cannot reach into the server's own network). Default false.
    pub allow_private_webhook_targets: bool,
    /// Seconds a monitor keeps retrying a failing receiver before it is disabled (with a
    /// system alarm). Default 86,400 (24 h).
    pub webhook_retry_window: u64,
    /// Longest seconds between two retries (the backoff doubles up to it, with jitter).
    /// Default 900.
    pub webhook_max_backoff: f64,
    /// Seconds a webhook request may take. Default 15.
    pub webhook_timeout: f64,
    /// Where InfluxDB line protocol writes land: `{tags}` (the tag values in the order the line
    /// writes them), `{measurement}`, `{field}` and `{<tag name>}`. Default
    /// `{tags}/{measurement}/{field}`.
    pub line_protocol_template: String,
    /// The tenant named in monitor topics (`<tenant>/DataPoint/<stream>`). Default
    /// `meterstream`.
    pub tenant: String,
    /// Running as one node of a cluster on NATS JetStream (docs/scale-out.md); off unless
    /// `cluster.nats_urls` is set.
    pub cluster: ClusterConfig,
}

/// The `[cluster]` section. Every node of a cluster must agree on `partitions`,
/// `log_streams` and `replicas`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`); empty (the default) means a single node with no
    /// other component. `METERSTREAM_CLUSTER_NATS_URLS`, comma-separated.
    pub nats_urls: Vec<String>,
    /// This node's id, unique and stable; default the listen address.
    pub node_id: Option<String>,
    /// The base URL other nodes reach this node at; default `http://<listen>`.
    pub advertise_url: Option<String>,
    /// Partitions of the device ids; fixed when the cluster is created. Default 256.
    pub partitions: u32,
    /// JetStream streams the point log is spread over. Default 8.
    pub log_streams: u32,
    /// Replicas of every JetStream stream and bucket. Default 3.
    pub replicas: usize,
    /// Seconds a partition lease lives without renewal: a dead node's partitions move after
    /// it. Default 10.
    pub lease_ttl: f64,
    /// Seconds the point log keeps messages; 0 keeps them for ever. A finite age needs
    /// snapshots, at least three of them within it (`snapshot_interval`), so that a partition
    /// can always be rebuilt from a snapshot plus the log after it. Default 0.
    pub log_max_age: u64,
    /// Seconds between two snapshots of each partition a node holds; 0 turns them off (then
    /// `log_max_age` must be 0). Default 600.
    pub snapshot_interval: f64,
    /// Seconds a repeated batch id is recognized. Default 120.
    pub duplicate_window: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_urls: Vec::new(),
            node_id: None,
            advertise_url: None,
            partitions: 256,
            log_streams: 8,
            replicas: 3,
            lease_ttl: 10.0,
            log_max_age: 0,
            snapshot_interval: 600.0,
            duplicate_window: 120,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: 16 << 20,
            retention_sweep_interval: 60,
            checkpoint_interval: 30,
            chunk_points: 2048,
            cache_mb: 64,
            workers: 0,
            log: "info".into(),
            device_inactivity_timeout: 120,
            admin_key: None,
            allow_private_webhook_targets: false,
            webhook_retry_window: 86_400,
            webhook_max_backoff: 900.0,
            webhook_timeout: 15.0,
            tenant: "meterstream".into(),
            line_protocol_template: crate::lineproto::DEFAULT_TEMPLATE.into(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Command-line flags; each may also come from the environment variable named beside it.
#[derive(Debug, Default, Parser)]
#[command(
    name = "meterstream-server",
    version,
    about = "The meterstream HTTP service"
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "METERSTREAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the store.
    #[arg(long, env = "METERSTREAM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, env = "METERSTREAM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Largest request body in bytes.
    #[arg(long, env = "METERSTREAM_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Seconds between retention sweeps.
    #[arg(long, env = "METERSTREAM_RETENTION_SWEEP_INTERVAL")]
    pub retention_sweep_interval: Option<u64>,
    /// Longest seconds between checkpoints.
    #[arg(long, env = "METERSTREAM_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Option<u64>,
    /// Points per compressed chunk.
    #[arg(long, env = "METERSTREAM_CHUNK_POINTS")]
    pub chunk_points: Option<usize>,
    /// sled page cache in MiB.
    #[arg(long, env = "METERSTREAM_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// HTTP worker threads (0 = one per core).
    #[arg(long, env = "METERSTREAM_WORKERS")]
    pub workers: Option<usize>,
    /// Log filter.
    #[arg(long, env = "METERSTREAM_LOG")]
    pub log: Option<String>,
    /// Seconds without uploads or polls after which a device is disconnected.
    #[arg(long, env = "METERSTREAM_DEVICE_INACTIVITY_TIMEOUT")]
    pub device_inactivity_timeout: Option<u64>,
    /// An admin API key accepted as a bearer token (instead of a generated first one).
    #[arg(long, env = "METERSTREAM_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Allow monitors to push to loopback, private and link-local addresses.
    #[arg(long, env = "METERSTREAM_ALLOW_PRIVATE_WEBHOOK_TARGETS")]
    pub allow_private_webhook_targets: Option<bool>,
    /// Path template of InfluxDB line protocol writes (`{tags}/{measurement}/{field}` by
    /// default; `{<tag key>}` names one tag).
    #[arg(long, env = "METERSTREAM_LINE_PROTOCOL_TEMPLATE")]
    pub line_protocol_template: Option<String>,
    /// NATS servers of a cluster, comma-separated (turns clustering on).
    #[arg(long, env = "METERSTREAM_CLUSTER_NATS_URLS", value_delimiter = ',')]
    pub cluster_nats_urls: Vec<String>,
    /// This node's id in the cluster.
    #[arg(long, env = "METERSTREAM_CLUSTER_NODE_ID")]
    pub cluster_node_id: Option<String>,
    /// The base URL other nodes of the cluster reach this node at.
    #[arg(long, env = "METERSTREAM_CLUSTER_ADVERTISE_URL")]
    pub cluster_advertise_url: Option<String>,
    /// Instead of serving: manage credentials in the data directory.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create, list or revoke credentials in the data directory. The server must be stopped
    /// (its registry is locked while it runs); a running server manages them through
    /// `/ws/v1/credentials`.
    #[command(subcommand)]
    Credentials(CredentialCommand),
}

/// Credential management from the command line.
#[derive(Debug, clap::Subcommand)]
pub enum CredentialCommand {
    /// Create one and print it with its secret (shown only now).
    Create {
        /// `user`, `api_key` or `device`.
        #[arg(long)]
        kind: String,
        /// A user's name.
        #[arg(long)]
        name: Option<String>,
        /// A user's password (or from METERSTREAM_NEW_PASSWORD, which keeps it out of the
        /// shell history).
        #[arg(long, env = "METERSTREAM_NEW_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Scopes, comma-separated: admin, read, write, device.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// A path prefix it is limited to (repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
        /// A device group it is limited to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A device key's device id.
        #[arg(long)]
        device_id: Option<String>,
        /// A label.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List them (never their secrets).
    List,
    /// Revoke one by id.
    Revoke {
        /// The credential id.
        id: String,
    },
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("invalid configuration: {field} {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Where the device and command registry lives: `<data_dir>/registry`.
    pub fn registry_dir(&self) -> PathBuf {
        self.data_dir.join("registry")
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Builds the configuration from defaults, the file named by `--config`, then flags and
    /// environment, and validates it.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let mut c = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::from_toml(&text, path)?
            }
            None => Config::default(),
        };
        if let Some(v) = &args.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = args.listen {
            c.listen = v;
        }
        if let Some(v) = args.body_limit {
            c.body_limit = v;
        }
        if let Some(v) = args.retention_sweep_interval {
            c.retention_sweep_interval = v;
        }
        if let Some(v) = args.checkpoint_interval {
            c.checkpoint_interval = v;
        }
        if let Some(v) = args.chunk_points {
            c.chunk_points = v;
        }
        if let Some(v) = args.cache_mb {
            c.cache_mb = v;
        }
        if let Some(v) = args.workers {
            c.workers = v;
        }
        if let Some(v) = &args.line_protocol_template {
            c.line_protocol_template = v.clone();
        }
        if let Some(v) = args.allow_private_webhook_targets {
            c.allow_private_webhook_targets = v;
        }
        if let Some(v) = &args.admin_key {
            c.admin_key = Some(v.clone());
        }
        if let Some(v) = args.device_inactivity_timeout {
            c.device_inactivity_timeout = v;
        }
        if let Some(v) = &args.log {
            c.log = v.clone();
        }
        if !args.cluster_nats_urls.is_empty() {
            c.cluster.nats_urls = args.cluster_nats_urls.clone();
        }
        if let Some(v) = &args.cluster_node_id {
            c.cluster.node_id = Some(v.clone());
        }
        if let Some(v) = &args.cluster_advertise_url {
            c.cluster.advertise_url = Some(v.clone());
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.into(),
            })
        };
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty");
        }
        if self.body_limit < 1024 {
            return bad("body_limit", "must be at least 1024 bytes");
        }
        if self.retention_sweep_interval == 0 {
            return bad("retention_sweep_interval", "must be at least 1 second");
        }
        if self.checkpoint_interval == 0 {
            return bad("checkpoint_interval", "must be at least 1 second");
        }
        if self.device_inactivity_timeout == 0 {
            return bad("device_inactivity_timeout", "must be at least 1 second");
        }
        if self.webhook_retry_window == 0 {
            return bad("webhook_retry_window", "must be at least 1 second");
        }
        if !(self.webhook_max_backoff.is_finite() && self.webhook_max_backoff >= 0.01) {
            return bad("webhook_max_backoff", "must be at least 0.01 seconds");
        }
        if !(self.webhook_timeout.is_finite() && self.webhook_timeout >= 0.1) {
            return bad("webhook_timeout", "must be at least 0.1 seconds");
        }
        if !self.line_protocol_template.contains("{field}")
            || self.line_protocol_template.matches('{').count()
                != self.line_protocol_template.matches('}').count()
        {
            return bad(
                "line_protocol_template",
                "must name {field} and close every '{'",
            );
        }
        if self.tenant.is_empty() || self.tenant.contains('/') {
            return bad("tenant", "must be a non-empty name without '/'");
        }
        let c = &self.cluster;
        if !c.nats_urls.is_empty() {
            if !(1..=65_536).contains(&c.partitions) {
                return bad("cluster.partitions", "must be from 1 to 65536");
            }
            if c.log_streams == 0 || c.log_streams > c.partitions {
                return bad(
                    "cluster.log_streams",
                    "must be from 1 to cluster.partitions",
                );
            }
            if !(1..=5).contains(&c.replicas) {
                return bad(
                    "cluster.replicas",
                    "must be from 1 to 5 (JetStream's limit)",
                );
            }
            if !(c.lease_ttl.is_finite() && c.lease_ttl >= 1.0) {
                return bad("cluster.lease_ttl", "must be at least 1 second");
            }
            if !(c.snapshot_interval.is_finite()
                && (c.snapshot_interval == 0.0 || c.snapshot_interval >= 1.0))
            {
                return bad(
                    "cluster.snapshot_interval",
                    "must be 0 (no snapshots) or at least 1 second",
                );
            }
            if c.log_max_age > 0
                && (c.snapshot_interval == 0.0
                    || (c.log_max_age as f64) < 3.0 * c.snapshot_interval)
            {
                return bad(
                    "cluster.log_max_age",
                    "must be 0 (for ever) or at least three snapshot intervals \
                     (cluster.snapshot_interval), so that a partition can always be rebuilt \
                     from a snapshot and the log after it",
                );
            }
            if c.duplicate_window == 0 {
                return bad("cluster.duplicate_window", "must be at least 1 second");
            }
            if c.node_id.as_deref().is_some_and(|n| {
                n.is_empty()
                    || !n
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
            }) {
                return bad(
                    "cluster.node_id",
                    "must be letters, digits, '-' and '_' (it is a NATS key)",
                );
            }
        }
        self.store_config()
            .validate()
            .map_err(|e| ConfigError::Invalid {
                field: "store",
                message: e.to_string(),
            })
    }

    /// The cluster node's configuration, when clustering is on.
    pub fn node_config(&self) -> Option<meterstream_cluster::node::NodeConfig> {
        let c = &self.cluster;
        if c.nats_urls.is_empty() {
            return None;
        }
        let listen = self.listen.to_string();
        Some(meterstream_cluster::node::NodeConfig {
            nats_urls: c.nats_urls.clone(),
            node_id: c
                .node_id
                .clone()
                .unwrap_or_else(|| listen.replace([':', '.', '[', ']'], "-")),
            advertise_url: c
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("http://{listen}")),
            partitions: c.partitions,
            log_streams: c.log_streams,
            replicas: c.replicas,
            lease_ttl: Duration::from_secs_f64(c.lease_ttl),
            log_max_age: Duration::from_secs(c.log_max_age),
            duplicate_window: Duration::from_secs(c.duplicate_window),
            // Events are kept for ever: they are rare, and a node that joins later builds the
            // alarm statuses, their history and the outbox from all of them
            // (docs/scale-out.md, "Events and webhooks").
            events_max_age: Duration::ZERO,
            snapshot_interval: Duration::from_secs_f64(c.snapshot_interval),
            dir: self.data_dir.join("cluster"),
        })
    }

    /// The storage engine's configuration.
    pub fn store_config(&self) -> meterstream_storage::Config {
        let mut s = meterstream_storage::Config::new(&self.data_dir);
        s.chunk_points = self.chunk_points;
        s.checkpoint_interval = Duration::from_secs(self.checkpoint_interval.max(1));
        s.cache_bytes = self.cache_mb << 20;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("meterstream-server.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = Config::from_toml(&text, &path).unwrap();
        c.validate().unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn precedence_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nbody_limit = 2048\n").unwrap();
        let args = Args {
            config: Some(path),
            body_limit: Some(4096),
            ..Args::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.body_limit, 4096);
        assert_eq!(c.chunk_points, 2048);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        let p = std::path::Path::new("x.toml");
        let e = Config::from_toml("colour = 1", p).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let c = Config {
            chunk_points: 3,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("chunk_points"));
        let c = Config {
            body_limit: 5,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("body_limit"));
    }

    #[test]
    fn log_retention_needs_snapshots_within_it() {
        let cluster = |log_max_age, snapshot_interval| Config {
            cluster: ClusterConfig {
                nats_urls: vec!["nats://127.0.0.1:4222".into()],
                log_max_age,
                snapshot_interval,
                ..ClusterConfig::default()
            },
            ..Config::default()
        };
        let err = |c: Config| c.validate().unwrap_err().to_string();
        assert!(err(cluster(1_799, 600.0)).contains("cluster.log_max_age"));
        assert!(err(cluster(3_600, 0.0)).contains("three snapshot intervals"));
        assert!(err(cluster(0, 0.5)).contains("cluster.snapshot_interval"));
        cluster(1_800, 600.0).validate().unwrap();
        cluster(0, 0.0).validate().unwrap();
        assert_eq!(
            cluster(1_800, 600.0)
                .node_config()
                .unwrap()
                .snapshot_interval,
            Duration::from_secs(600)
        );
    }
}
