//! Helpers: a real server in-process (stoppable and restartable on the same port and store),
//! an agent configuration over simulated meters, and collecting what the agent publishes.

use meterstream_agent::agent::Handles;
use meterstream_agent::channel::{Reading, Sample};
use meterstream_agent::config::{Config, MeterConfig, PortConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

pub const DEVICE: &str = "00000000-00000000-00409DFF-FF418079";

/// The admin key of the test servers; the agents use it too.
pub const KEY: &str = "msk_agenttest_0123456789abcdefghijklmnop";

/// A blocking client that sends the test key.
pub fn client() -> reqwest::blocking::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {KEY}").parse().unwrap(),
    );
    reqwest::blocking::Client::builder()
        .default_headers(h)
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

pub struct TestServer {
    pub url: String,
    _server: meterstream_server::Background,
}

impl TestServer {
    /// A server on `data_dir`, listening on `addr` (`127.0.0.1:0` for any port).
    pub fn start(data_dir: &Path, addr: &str) -> TestServer {
        let cfg = meterstream_server::config::Config {
            data_dir: data_dir.to_path_buf(),
            workers: 1,
            admin_key: Some(KEY.into()),
            ..Default::default()
        };
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let server = meterstream_server::Background::start(listener, cfg).unwrap();
        TestServer {
            url: server.url.clone(),
            _server: server,
        }
    }

    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// The inventory entry of stream `id` (`null` if there is none).
    pub async fn stream(&self, id: &str) -> serde_json::Value {
        let url = format!("{}/ws/v1/streams/inventory/{id}", self.url);
        tokio::task::spawn_blocking(move || {
            let r = client().get(url).send().unwrap();
            if r.status() == 404 {
                return serde_json::Value::Null;
            }
            r.json().unwrap()
        })
        .await
        .unwrap()
    }

    /// Every point of `stream` as (timestamp ms, value), oldest first, following cursors.
    pub async fn history(&self, stream: &str) -> Vec<(i64, serde_json::Value)> {
        let (url, stream) = (self.url.clone(), stream.to_string());
        tokio::task::spawn_blocking(move || {
            let c = client();
            let mut out = Vec::new();
            let mut cursor = String::new();
            loop {
                let r = c
                    .get(format!(
                        "{url}/ws/v1/streams/history/{stream}?size=100000&order=asc{cursor}"
                    ))
                    .send()
                    .unwrap();
                if r.status() == 404 {
                    return out;
                }
                let v: serde_json::Value = r.json().unwrap();
                for p in v["list"].as_array().unwrap() {
                    let ts = p["timestamp"].as_str().unwrap();
                    let ms = meterstream_storage::time::parse_absolute(ts).unwrap();
                    out.push((ms, p["value"].clone()));
                }
                match v["cursor"].as_str() {
                    Some(c) => cursor = format!("&cursor={c}"),
                    None => return out,
                }
            }
        })
        .await
        .unwrap()
    }
}

/// A configuration with one bus of `meters` (name, profile, slave), fast sampling and uploads.
pub fn config(url: &str, spool: &Path, meters: &[(&str, &str, u8)]) -> Config {
    let mut c = Config::minimal(DEVICE, url);
    c.server.api_key = Some(KEY.into());
    c.sample_interval = 0.2;
    c.metrics_interval = 3600.0;
    c.upload.flush_interval = 0.2;
    c.upload.min_backoff = 0.1;
    c.upload.max_backoff = 0.5;
    c.spool.dir = spool.to_path_buf();
    c.spool.sync = false;
    let ms = meters
        .iter()
        .map(|(n, p, s)| MeterConfig {
            name: n.to_string(),
            profile: p.to_string(),
            slave: *s,
            latitude: None,
            longitude: None,
        })
        .collect();
    let mut port = PortConfig::new("/dev/null".into(), ms);
    port.response_timeout = 0.2;
    c.ports = vec![port];
    c.validate().unwrap();
    c
}

/// A running agent: its handles and how to stop it.
pub struct Running {
    pub handles: Handles,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(cfg: Config) -> Running {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            meterstream_agent::agent::run(
                cfg,
                async {
                    let _ = stop_rx.await;
                },
                Some(tx),
            )
            .await
            .unwrap();
        });
        Running {
            handles: rx.await.unwrap(),
            stop: Some(stop_tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub fn pending(&self) -> u64 {
        meterstream_agent::upload::lock(&self.handles.spool).pending_points()
    }
}

/// Collects numeric readings by channel from a subscription until `until` says stop or
/// `limit` passes.
pub async fn collect(
    rx: &mut tokio::sync::mpsc::Receiver<meterstream_agent::channel::Round>,
    limit: Duration,
    mut until: impl FnMut(&BTreeMap<String, Vec<Reading>>) -> bool,
) -> BTreeMap<String, Vec<Reading>> {
    let mut out: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
    let end = Instant::now() + limit;
    while Instant::now() < end && !until(&out) {
        if let Ok(Some(round)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            for r in round.iter() {
                out.entry(r.channel.to_string())
                    .or_default()
                    .push(r.clone());
            }
        }
    }
    out
}

pub fn number(r: &Reading) -> f64 {
    match &r.value {
        Sample::Number(v) => *v,
        Sample::Text(t) => panic!("{t} is not a number"),
    }
}

/// Waits until `f` holds, checking every 50 ms, for at most `limit`.
pub async fn eventually_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f().await
}
