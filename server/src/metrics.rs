//! The server's metrics, declared once: HTTP requests and durations by route, points ingested,
//! and gauges read from the store at scrape time. Served as Prometheus text at `GET /metrics`.

use meterstream_storage::Store;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The server's metrics and the registry they are in.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `meterstream_http_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `meterstream_http_request_duration_seconds{route,method}`.
    pub durations: HistogramVec,
    /// `meterstream_ingest_points_total`: points stored through the HTTP API.
    pub points_ingested: IntCounter,
    /// `meterstream_ingest_rejected_points_total`: points refused as bad items.
    pub points_rejected: IntCounter,
    store_bytes: IntGauge,
    log_bytes: IntGauge,
    streams: IntGauge,
    open_points: IntGauge,
}

/// Building metrics with constant, valid names cannot fail; this documents that invariant.
fn valid<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| unreachable!("invalid metric definition: {e}"))
}

impl Metrics {
    /// Creates the metrics and registers them with the store's own.
    pub fn new(store: &dyn Store) -> Metrics {
        let registry = Registry::new();
        let requests = valid(IntCounterVec::new(
            Opts::new(
                "meterstream_http_requests_total",
                "HTTP requests by route, method and status.",
            ),
            &["route", "method", "status"],
        ));
        let durations = valid(HistogramVec::new(
            HistogramOpts::new(
                "meterstream_http_request_duration_seconds",
                "HTTP request durations by route and method.",
            )
            .buckets(valid(prometheus::exponential_buckets(0.0001, 2.0, 18))),
            &["route", "method"],
        ));
        let points_ingested = valid(IntCounter::new(
            "meterstream_ingest_points_total",
            "Points stored through the HTTP API.",
        ));
        let points_rejected = valid(IntCounter::new(
            "meterstream_ingest_rejected_points_total",
            "Points refused as bad items (207 and 400 answers).",
        ));
        let store_bytes = valid(IntGauge::new(
            "meterstream_storage_disk_bytes",
            "Bytes of the store's files on disk (sled and write-ahead log).",
        ));
        let log_bytes = valid(IntGauge::new(
            "meterstream_storage_log_bytes",
            "Bytes of the write-ahead log on disk.",
        ));
        let streams = valid(IntGauge::new("meterstream_streams", "Number of streams."));
        let open_points = valid(IntGauge::new(
            "meterstream_storage_open_points",
            "Points held in memory in open chunks (also in the write-ahead log).",
        ));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
            Box::new(points_ingested.clone()),
            Box::new(points_rejected.clone()),
            Box::new(store_bytes.clone()),
            Box::new(log_bytes.clone()),
            Box::new(streams.clone()),
            Box::new(open_points.clone()),
        ]
        .into_iter()
        .chain(store.metrics().collectors())
        {
            valid(registry.register(c));
        }
        #[cfg(target_os = "linux")]
        valid(registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        Metrics {
            registry,
            requests,
            durations,
            points_ingested,
            points_rejected,
            store_bytes,
            log_bytes,
            streams,
            open_points,
        }
    }

    /// Reads the store's gauges and renders everything as Prometheus text.
    pub fn render(&self, store: &dyn Store) -> String {
        let s = store.stats();
        self.store_bytes.set(s.disk_bytes as i64);
        self.log_bytes.set(s.log_bytes as i64);
        self.streams.set(s.streams as i64);
        self.open_points.set(s.open_points as i64);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
