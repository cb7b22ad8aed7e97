//! meterstream-server: the HTTP service. It takes data points over Digi's v1 data-streams web
//! services, stores them durably through the storage crate's [`Store`] trait, and serves stream
//! browsing, raw history, metrics and health. `main.rs` parses configuration and calls [`run`],
//! which takes its listener, its store and its shutdown signal as arguments, so tests bind
//! 127.0.0.1:0 and stop it at will.
//!
//! # Layout
//! - [`alerts`]: alert rules (`/ws/v1/alerts/inventory`), alarm statuses and their history.
//! - [`evaluator`]: evaluates the rules over the store's change feed, in data time.
//! - [`auth`]: credentials, scopes, authentication (every route but `/health` needs it).
//! - [`cluster`]: one node of a cluster on NATS JetStream (on when `cluster.nats_urls` is set):
//!   ingest through the replicated log, partitions applied here, queries routed to owners.
//!   [`cluster_registry`]: credentials, alert rules and monitors shared by every node.
//!   [`cluster_types`]: stream types settled by their holders before an ingest is answered.
//!   [`cluster_holder`]: a stream's record, and what a change came to, asked of its holder.
//! - [`config`]: configuration (defaults < TOML < environment < flags).
//! - [`history`]: `POST/GET/DELETE /ws/v1/streams/history`; [`ingest`] parses bodies.
//! - [`rollups`]: `GET /ws/v1/streams/rollups/{stream}`.
//! - [`inventory`]: `/ws/v1/streams/inventory` and `/ws/v1/streams/folders`; [`filter`] parses
//!   the inventory `query` language.
//! - [`wire`]: the JSON shapes of streams and points; [`csv_export`]: streamed CSV answers.
//!   [`params`]: query parameters.
//! - [`error`]: the one mapping of errors to HTTP answers. [`metrics`]: Prometheus metrics.
//! - [`retention`]: the background retention sweep.
//! - [`webhook`]: Standard Webhooks signatures for monitors.
//! - [`csv_upload`]: device CSV uploads in Digi's column order (`/ws/v1/streams/csv`).
//! - [`lineproto`]: InfluxDB line protocol writes (`/write`, `/api/v2/write`).
//! - [`live`]: Server-Sent Events of new points and alarm changes, for the dashboards.
//! - [`monitors`]: monitors (`/ws/v1/monitors/inventory`): where events are pushed.
//! - [`delivery`]: the monitors' workers: batches, signatures, retries, statuses.
//! - [`dashboards`]: the web interface, embedded at build time, served at `/`.
//! - [`devices`]: devices, connection status, health and commands (`/ws/v1/devices/...`).
//! - [`Background`]: the server on a thread of its own, for tests (this crate's and the agent's)
//!   and for embedding.

pub mod alerts;
pub mod auth;
pub mod cluster;
pub mod cluster_holder;
pub mod cluster_registry;
pub mod cluster_types;
pub mod config;
pub mod csv_export;
pub mod csv_upload;
pub mod dashboards;
pub mod delivery;
pub mod devices;
pub mod error;
pub mod evaluator;
pub mod filter;
pub mod history;
pub mod ingest;
pub mod inventory;
pub mod legacy;
pub mod lineproto;
pub mod live;
pub mod metrics;
pub mod monitors;
pub mod params;
pub mod retention;
pub mod rollups;
pub mod webhook;
pub mod wire;

use actix_web::dev::Service as _;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use error::ApiError;
use futures_util::StreamExt;
use meterstream_storage::registry::{Registry, SledRegistry};
use meterstream_storage::Store;
use metrics::Metrics;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server running on a thread of its own, with its own actix runtime, on a store it opens
/// itself; stopped gracefully and joined when dropped.
pub struct Background {
    /// `http://<address>` of the listener.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Opens the store and the registry `cfg` describes and serves them on `listener` until
    /// dropped.
    pub fn start(
        listener: std::net::TcpListener,
        cfg: config::Config,
    ) -> Result<Background, Box<dyn std::error::Error + Send + Sync>> {
        cfg.validate()?;
        let url = format!("http://{}", listener.local_addr()?);
        let store = Arc::new(meterstream_storage::Engine::open(cfg.store_config())?);
        let registry: Arc<dyn Registry> = Arc::new(SledRegistry::open(&cfg.registry_dir())?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("meterstream-server".into())
            .spawn(move || {
                let served = actix_web::rt::System::new().block_on(run(
                    listener,
                    store,
                    registry,
                    cfg,
                    async {
                        let _ = rx.await;
                    },
                ));
                if let Err(e) = served {
                    tracing::error!("the background server failed: {e}");
                }
            })?;
        Ok(Background {
            url,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// State shared by every handler.
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Metrics,
    /// Largest body accepted, bytes.
    pub body_limit: usize,
    /// Devices and commands.
    pub devices: Arc<devices::Devices>,
    /// Credentials.
    pub auth: Arc<auth::Auth>,
    /// Whether monitors may target private addresses.
    pub allow_private_webhook_targets: bool,
    /// The alarm evaluator.
    pub evaluator: Arc<evaluator::Evaluator>,
    /// The monitors' delivery.
    pub dispatcher: Arc<delivery::Dispatcher>,
    /// Live updates for the dashboards.
    pub live: Arc<live::Live>,
    /// Path template of InfluxDB line protocol writes.
    pub line_protocol_template: String,
    /// The cluster node, when clustering is on.
    pub cluster: Option<Arc<cluster::Cluster>>,
}

/// The rest of the raw request path after the route's prefix (`{stream_id}`, `{prefix}`),
/// decoded strictly once (actix's own decoding of match info is lossy for invalid UTF-8).
pub fn path_tail(req: &HttpRequest) -> Result<String, ApiError> {
    let pattern = req.match_pattern().unwrap_or_default();
    let prefix = pattern.split('{').next().unwrap_or("");
    let raw = req.path().strip_prefix(prefix).unwrap_or("");
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "the stream id {raw:?} is not valid percent-encoded UTF-8"
            ))
        })
}

/// The stream id of a request, checked against the path rules.
pub fn stream_id(req: &HttpRequest) -> Result<String, ApiError> {
    let id = path_tail(req)?;
    meterstream_storage::path::validate_path(&id)?;
    Ok(id)
}

/// Reads the body, refusing it as soon as it passes `limit` bytes.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    // Sized once from Content-Length: growing chunk by chunk showed up as copying in profiles.
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("the body could not be read: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Who is calling: every route but `/health` needs valid credentials (401 with a JSON body
/// otherwise, 429 after too many failures from one address). The caller is put in the request's
/// extensions for the handlers' scope checks.
async fn authenticate(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    let path = req.path();
    if path == "/health" || path == "/" || path.starts_with("/assets/") {
        return next.call(req).await.map(|r| r.map_into_left_body());
    }
    let Some(st) = req.app_data::<web::Data<AppState>>().cloned() else {
        let e = ApiError::Internal("no application state".into());
        return Ok(req.error_response(e).map_into_right_body());
    };
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| auth::api_key_headers(req.headers()));
    // A secret verified before: no blocking work at all (unless it is limited to groups, whose
    // devices are looked up per request).
    if let Some(p) = st.auth.remembered(header.as_deref()) {
        if p.groups.is_empty() {
            req.extensions_mut().insert(p);
            return next.call(req).await.map(|r| r.map_into_left_body());
        }
    }
    let ip = req.peer_addr().map(|a| a.ip());
    let auth = st.auth.clone();
    let registry = st.devices.registry.clone();
    let who = web::block(move || {
        let mut p =
            auth.authenticate(header.as_deref(), ip, meterstream_storage::time::now_ms())?;
        auth::expand_groups(&mut p, &*registry)?;
        Ok::<_, ApiError>(p)
    })
    .await;
    match who {
        Ok(Ok(p)) => {
            req.extensions_mut().insert(p);
            next.call(req).await.map(|r| r.map_into_left_body())
        }
        Ok(Err(e)) => Ok(req.error_response(e).map_into_right_body()),
        Err(e) => Ok(req
            .error_response(ApiError::Internal(e.to_string()))
            .map_into_right_body()),
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn metrics_text(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let p = auth::principal(&req)?;
    p.require(auth::Scope::Read)?;
    if p.path_prefixes().is_some() {
        return Err(ApiError::Forbidden(
            "the metrics cover every stream; a credential limited to prefixes cannot read them"
                .into(),
        ));
    }
    let st2 = st.clone();
    let text =
        web::block(move || st2.metrics.render(&*st2.store) + &st2.evaluator.render_metrics())
            .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(req.method().to_string()))
}

/// Deletes outbox events older than the retry window (plus an hour), every minute.
async fn prune_outbox(registry: Arc<dyn Registry>, window_s: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let r = registry.clone();
        let before = meterstream_storage::time::now_ms() - (window_s as i64 + 3600) * 1000;
        match tokio::task::spawn_blocking(move || r.prune_outbox(before, false)).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the outbox failed"),
            Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
            Ok(Ok(_)) => {}
        }
    }
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let resource = |path: &str| web::resource(path).default_service(web::to(method_not_allowed));
    cfg.service(resource("/ws/v1/streams/history").route(web::post().to(history::post)))
        .service(
            resource("/ws/v1/streams/history/{stream_id:.*}")
                .route(web::get().to(history::get))
                .route(web::delete().to(history::delete)),
        )
        .service(
            resource("/ws/v1/streams/rollups/{stream_id:.*}").route(web::get().to(rollups::get)),
        )
        .service(resource("/ws/v1/streams/inventory").route(web::get().to(inventory::list)))
        .service(
            resource("/ws/v1/streams/inventory/{stream_id:.*}")
                .route(web::get().to(inventory::get))
                .route(web::put().to(inventory::put))
                .route(web::delete().to(inventory::delete)),
        )
        .service(resource("/ws/v1/streams/folders").route(web::get().to(inventory::folders)))
        .service(
            resource("/ws/v1/streams/folders/{prefix:.*}").route(web::get().to(inventory::folders)),
        )
        .service(resource("/ws/v1/devices/inventory").route(web::get().to(devices::list)))
        .service(
            resource("/ws/v1/devices/inventory/{id}")
                .route(web::get().to(devices::get))
                .route(web::put().to(devices::put)),
        )
        .service(resource("/ws/v1/devices/history/{id}").route(web::get().to(devices::history)))
        .service(
            resource("/ws/v1/devices/{id}/commands")
                .route(web::post().to(devices::create_command))
                .route(web::get().to(devices::list_commands)),
        )
        .service(resource("/ws/v1/devices/{id}/commands/poll").route(web::get().to(devices::poll)))
        .service(
            resource("/ws/v1/devices/{id}/commands/{cid}")
                .route(web::get().to(devices::get_command))
                .route(web::put().to(devices::report)),
        )
        .service(
            resource("/ws/v1/devices/{id}/commands/{cid}/cancel")
                .route(web::post().to(devices::cancel)),
        )
        .service(
            resource("/ws/v1/alerts/inventory")
                .route(web::get().to(alerts::list))
                .route(web::post().to(alerts::create)),
        )
        .service(
            resource("/ws/v1/alerts/inventory/{id}")
                .route(web::get().to(alerts::get))
                .route(web::put().to(alerts::put))
                .route(web::delete().to(alerts::delete)),
        )
        .service(resource("/ws/v1/alerts/status").route(web::get().to(alerts::statuses)))
        .service(
            resource("/ws/v1/alerts/status/{id}/{source:.*}")
                .route(web::put().to(alerts::acknowledge)),
        )
        .service(resource("/ws/v1/alerts/history/{id}").route(web::get().to(alerts::history)))
        .service(
            resource("/ws/v1/monitors/inventory")
                .route(web::get().to(monitors::list))
                .route(web::post().to(monitors::create)),
        )
        .service(
            resource("/ws/v1/monitors/inventory/{id}")
                .route(web::get().to(monitors::get))
                .route(web::put().to(monitors::put))
                .route(web::delete().to(monitors::delete)),
        )
        .service(
            resource("/ws/v1/monitors/inventory/{id}/rotate_secret")
                .route(web::post().to(monitors::rotate)),
        )
        .service(
            resource("/ws/v1/monitors/inventory/{id}/reset").route(web::post().to(monitors::reset)),
        )
        .service(resource("/ws/v1/monitors/history/{id}").route(web::get().to(monitors::history)))
        .service(
            resource("/ws/v1/monitors/history/{id}/{attempt}/replay")
                .route(web::post().to(monitors::replay)),
        )
        .service(
            resource("/ws/v1/credentials")
                .route(web::get().to(auth::list_credentials))
                .route(web::post().to(auth::create_credential)),
        )
        .service(
            resource("/ws/v1/credentials/{id}").route(web::delete().to(auth::revoke_credential)),
        )
        .service(
            resource("/ws/DataStream")
                .route(web::get().to(legacy::get_streams))
                .route(web::post().to(legacy::post_streams))
                .route(web::put().to(legacy::put_streams)),
        )
        .service(
            resource("/ws/DataStream/{path:.*}")
                .route(web::get().to(legacy::get_streams))
                .route(web::post().to(legacy::post_streams))
                .route(web::put().to(legacy::put_streams))
                .route(web::delete().to(legacy::delete_stream)),
        )
        .service(resource("/ws/DataPoint").route(web::post().to(legacy::post_points)))
        .service(resource("/ws/DeviceCore").route(web::get().to(legacy::device_core)))
        .service(
            resource("/ws/DataPoint/{stream_id:.*}")
                .route(web::get().to(legacy::get_points))
                .route(web::post().to(legacy::post_points))
                .route(web::delete().to(legacy::delete_points)),
        )
        .service(resource("/metrics").route(web::get().to(metrics_text)))
        .service(resource("/ws/v1/cluster").route(web::get().to(cluster::status)))
        .service(resource("/ws/v1/events").route(web::get().to(live::events)))
        .service(resource("/write").route(web::post().to(lineproto::write)))
        .service(resource("/ws/v1/streams/csv").route(web::post().to(csv_upload::upload)))
        .service(
            resource("/ws/v1/streams/csv/{stream_id:.*}").route(web::post().to(csv_upload::upload)),
        )
        .service(resource("/api/v2/write").route(web::post().to(lineproto::write)))
        .service(resource("/health").route(web::get().to(health)))
        .service(resource("/").route(web::get().to(dashboards::index)))
        .service(resource("/assets/{name:.*}").route(web::get().to(dashboards::file)));
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, finishes the
/// requests in flight, and closes the store (a final checkpoint).
pub async fn run(
    listener: std::net::TcpListener,
    engine: Arc<meterstream_storage::Engine>,
    registry: Arc<dyn Registry>,
    cfg: config::Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let store: Arc<dyn Store> = engine.clone();
    // A cluster node: connected first, and its registry is the cluster's (every credential,
    // rule and monitor the cluster has is read before anything else starts).
    let cluster = match cfg.node_config() {
        None => None,
        Some(mut nc) => {
            if cfg.cluster.advertise_url.is_none() {
                nc.advertise_url = format!("http://{}", listener.local_addr()?);
            }
            // Forwarded long polls wait up to their own limit.
            let timeout = Duration::from_secs(devices::MAX_WAIT_S + 30);
            let c = tokio::task::spawn_blocking(move || cluster::Cluster::connect(nc, timeout))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            tracing::info!(node = c.node.id(), "running as a cluster node");
            Some(Arc::new(c))
        }
    };
    // On a cluster node, changes to streams go through the partitions' logs; the engine itself
    // is what applying writes to.
    let outcomes: Arc<cluster::Outcomes> = Arc::new(cluster::Recent::new(1024));
    let store: Arc<dyn Store> = match &cluster {
        None => store,
        Some(c) => Arc::new(cluster::ClusterStore {
            inner: engine.clone(),
            cluster: c.clone(),
            outcomes: outcomes.clone(),
        }),
    };
    let hook: cluster_registry::Hook = Arc::new(std::sync::OnceLock::new());
    let registry: Arc<dyn Registry> = match &cluster {
        None => registry,
        Some(c) => {
            let (node, hook) = (c.node.clone(), hook.clone());
            Arc::new(
                tokio::task::spawn_blocking(move || {
                    cluster_registry::ClusterRegistry::start(registry, node, hook)
                })
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?,
            )
        }
    };
    let devices = {
        let timeout = cfg.device_inactivity_timeout;
        tokio::task::spawn_blocking(move || {
            devices::Devices::new(registry, timeout, meterstream_storage::time::now_ms())
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?
    };
    let devices = Arc::new(devices);
    let (auth, first_key) = {
        let (registry, key) = (devices.registry.clone(), cfg.admin_key.clone());
        tokio::task::spawn_blocking(move || {
            auth::Auth::new(
                registry,
                key.as_deref(),
                meterstream_storage::time::now_ms(),
            )
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(|e| std::io::Error::other(e.to_string()))?
    };
    if let Some(key) = first_key {
        // Shown once, on the first start of a store; only its hash is kept.
        println!("meterstream: first admin key (shown only now; keep it): {key}");
        tracing::warn!(
            "a first admin key was made and printed on standard output; only its hash is kept"
        );
    }
    let sweep = tokio::spawn(devices::sweep_task(devices.clone()));
    let evaluator = {
        let (s, r) = (store.clone(), devices.registry.clone());
        tokio::task::spawn_blocking(move || evaluator::Evaluator::start(s, r))
            .await
            .map_err(std::io::Error::other)?
    };
    let dispatcher = {
        let (s, r) = (store.clone(), devices.registry.clone());
        let dc = delivery::DeliveryConfig {
            tenant: cfg.tenant.clone(),
            retry_window_ms: cfg.webhook_retry_window as i64 * 1000,
            max_backoff: Duration::from_secs_f64(cfg.webhook_max_backoff),
            timeout: Duration::from_secs_f64(cfg.webhook_timeout),
        };
        tokio::task::spawn_blocking(move || delivery::Dispatcher::start(s, r, dc))
            .await
            .map_err(std::io::Error::other)??
    };
    let outbox_prune = tokio::spawn(prune_outbox(
        devices.registry.clone(),
        cfg.webhook_retry_window,
    ));
    let live = {
        let (s, r) = (store.clone(), devices.registry.clone());
        tokio::task::spawn_blocking(move || live::Live::new(s, r))
            .await
            .map_err(std::io::Error::other)?
    };
    let auth = Arc::new(auth);
    if let Some(c) = &cluster {
        let (ev, disp, au) = (evaluator.clone(), dispatcher.clone(), auth.clone());
        let _ = hook.set(Box::new(move |kind: &str, id: &str| match kind {
            "alert" => ev.rules_changed(),
            "monitor" => {
                if let Err(e) = disp.reconcile() {
                    tracing::error!(error = %e, "starting a monitor's worker failed");
                }
            }
            "cred" => au.forget(id),
            _ => {}
        }));
        let holds = |c: &Arc<cluster::Cluster>| {
            let c = c.clone();
            Box::new(move |device: &str| c.holds_device(device))
        };
        evaluator.set_cluster(holds(c));
        devices.set_cluster(holds(c));
        let node = c.node.clone();
        dispatcher.set_cluster(Box::new(move |monitor: &str| {
            node.holds(node.partition_of(monitor))
        }));
        let gate = Arc::new(cluster_types::TypeGate::new(
            engine.clone(),
            c.node.partitions(),
        ));
        let answers = Arc::new(cluster_holder::Answers {
            engine: engine.clone(),
            outcomes: outcomes.clone(),
            node: Arc::downgrade(&c.node),
            partitions: c.node.partitions(),
        });
        {
            let node = c.node.clone();
            let forget = Arc::downgrade(c);
            tokio::task::spawn_blocking(move || {
                node.listen(
                    cluster_types::FORGET,
                    Arc::new(move |path: &[u8]| {
                        if let (Some(c), Ok(path)) = (forget.upgrade(), std::str::from_utf8(path)) {
                            c.types.forget(path);
                        }
                    }),
                )?;
                let a = answers.clone();
                node.serve(
                    cluster_holder::STREAM,
                    Arc::new(move |p, body: &[u8]| a.stream(p, body)),
                )?;
                node.serve(
                    cluster_holder::CHANGE,
                    Arc::new(move |p, body: &[u8]| answers.change(p, body)),
                )?;
                node.serve(
                    cluster_types::KIND,
                    Arc::new(move |p: u32, body: &[u8]| gate.answer(p, body)),
                )
            })
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?;
        }
        c.node.run(Arc::new(cluster::StoreApply::new(
            engine.clone(),
            c.node.partitions(),
            outcomes.clone(),
            devices.clone(),
            cfg.device_inactivity_timeout as i64 * 1000,
        )));
    }
    let state = web::Data::new(AppState {
        cluster: cluster.clone(),
        line_protocol_template: cfg.line_protocol_template.clone(),
        live,
        dispatcher: dispatcher.clone(),
        evaluator: evaluator.clone(),
        metrics: Metrics::new(&*store),
        store: store.clone(),
        body_limit: cfg.body_limit,
        allow_private_webhook_targets: cfg.allow_private_webhook_targets,
        devices,
        auth,
    });
    let retention = tokio::spawn(retention::run(
        store.clone(),
        Duration::from_secs(cfg.retention_sweep_interval),
    ));
    let devices = state.devices.clone();
    let live = state.live.clone();
    let mut server = HttpServer::new(move || {
        let m = state.metrics.clone();
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(cluster::route))
            .wrap(actix_web::middleware::from_fn(authenticate))
            .wrap_fn(move |req, srv| {
                let started = Instant::now();
                let method = req.method().to_string();
                let m = m.clone();
                let fut = srv.call(req);
                async move {
                    let mut res = fut.await?;
                    // How long the server took, for clients and benchmarks (W3C Server-Timing;
                    // for streamed bodies, until the first bytes are ready).
                    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&format!(
                        "app;dur={:.3}",
                        started.elapsed().as_secs_f64() * 1000.0
                    )) {
                        res.headers_mut().insert(
                            actix_web::http::header::HeaderName::from_static("server-timing"),
                            v,
                        );
                    }
                    let route = res
                        .request()
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".into());
                    m.requests
                        .with_label_values(&[&route, &method, res.status().as_str()])
                        .inc();
                    m.durations
                        .with_label_values(&[&route, &method])
                        .observe(started.elapsed().as_secs_f64());
                    Ok(res)
                }
            })
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(10);
    if cfg.workers > 0 {
        server = server.workers(cfg.workers);
    }
    let server = server.run();
    let handle = server.handle();
    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down");
        // Long-polls answer now instead of holding the shutdown for their whole wait.
        devices.close();
        live.close();
        handle.stop(true).await;
    };
    let (r, ()) = tokio::join!(server, stop);
    retention.abort();
    sweep.abort();
    outbox_prune.abort();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(c) = cluster {
            c.node.close();
        }
        evaluator.close();
        dispatcher.close();
    })
    .await;
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.close()).await;
    r
}
