//! One meterstream node of a cluster (docs/scale-out.md): it announces itself, holds a fair
//! share of the partition leases, and applies each partition it holds, in log order, through
//! the [`Apply`] the server gives it (its own sled store). It publishes the batches the server
//! takes, and tells the server where a partition's queries go.
//!
//! All NATS work runs on a runtime of the node's own (two threads), so the server's blocking
//! handlers can wait on it (`Handle::block_on`) and its async handlers can await its tasks.
//!
//! # Positions
//! The node, not JetStream, keeps how far it applied each partition (`applied`), saved to the
//! file `positions` in its directory every round. Applying is idempotent (every record sets
//! state), so a position that lags what the store holds only replays some records. A node that
//! takes a partition back resumes from its own position: its store holds the partition as of
//! that position, and the log after it brings it up to date. A node that never held the
//! partition, or whose position the log no longer reaches, restores the partition's newest
//! snapshot and applies the log after it (`snapshot`); without a snapshot it starts from the
//! log's first message.
//!
//! # Snapshots
//! Every `snapshot_interval` the node writes a snapshot of each partition it holds and has
//! applied ([`Apply::snapshot`], stored by `crate::snapshot`): only the pieces that changed are
//! published, and the messages the new manifest no longer lists are deleted one round later,
//! so that a node still restoring from the previous root can finish.

use crate::ask::{Answer, AskError};
use crate::events::EventLog;
use crate::lease::{Lease, Leases};
use crate::log::PointLog;
use crate::members::{Member, Members};
use crate::registry::{Change, SharedRegistry};
use crate::snapshot::{Entry, Piece, PieceKey, Root, Snapshots};
use crate::{ClusterError, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// What a node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// NATS servers to connect to (any of the cluster's).
    pub nats_urls: Vec<String>,
    /// This node's id, unique in the cluster and stable across restarts.
    pub node_id: String,
    /// The base URL the other nodes reach this node's HTTP API at.
    pub advertise_url: String,
    /// Number of partitions (fixed when the cluster is created).
    pub partitions: u32,
    /// Number of JetStream streams the log is spread over.
    pub log_streams: u32,
    /// Replicas of every stream and bucket.
    pub replicas: usize,
    /// How long a lease and a membership live without renewal.
    pub lease_ttl: Duration,
    /// How long the log keeps messages (zero: for ever).
    pub log_max_age: Duration,
    /// How long a repeated message id is recognized.
    pub duplicate_window: Duration,
    /// How long the event stream keeps events (zero: for ever).
    pub events_max_age: Duration,
    /// How often each held partition is snapshotted (zero: never).
    pub snapshot_interval: Duration,
    /// Where the node keeps its positions.
    pub dir: PathBuf,
}

/// Applies log entries of a partition to the node's store, durably, in the order given.
/// Blocking. An error is retried from the same entry after a pause.
pub trait Apply: Send + Sync + 'static {
    /// Applies consecutive entries of `partition`: (sequence in its stream, body as published).
    fn apply(
        &self,
        partition: u32,
        entries: &[(u64, bytes::Bytes)],
    ) -> std::result::Result<(), String>;

    /// Hands the partition's state, as pieces, to `sink`. Blocking.
    fn snapshot(&self, partition: u32, sink: &mut dyn Sink) -> std::result::Result<(), String> {
        let _ = (partition, sink);
        Err("this store cannot be snapshotted".into())
    }

    /// The partition's log position through which every consumer of what applying produced
    /// (the alarm evaluator and monitors reading the node's store) has taken it, given that the
    /// node applied it through `applied`; `None` when no such consumer waits. A snapshot covers
    /// no more than this, so a consumer's backlog is applied again from the log by the next
    /// holder rather than restored where no consumer sees it.
    fn delivered(&self, partition: u32, applied: u64) -> Option<u64> {
        let _ = (partition, applied);
        None
    }

    /// Restores the partition from its snapshot, step by step. Blocking.
    fn restore(&self, partition: u32, step: Restore<'_>) -> std::result::Result<(), String> {
        let _ = (partition, step);
        Err("this store cannot be restored from a snapshot".into())
    }
}

/// What a snapshot's pieces are handed to.
pub trait Sink {
    /// Whether the node already has the piece `key` by `version` (never for an empty one).
    fn known(&mut self, key: &PieceKey, version: &[u8]) -> bool;
    /// Takes one piece; an error ends the snapshot.
    fn emit(&mut self, piece: Piece) -> std::result::Result<(), String>;
}

/// A step of restoring a partition from its snapshot.
pub enum Restore<'a> {
    /// Before any piece: forget what the store holds of the partition.
    Begin,
    /// Pieces in key order, every piece of each name they hold (a window of the manifest).
    Pieces(&'a [(PieceKey, bytes::Bytes)]),
    /// After the last piece: make it all durable; the snapshot covers the log through
    /// `covers`.
    End {
        /// The log position the snapshot covers.
        covers: u64,
    },
}

/// Applies one event of the shared event stream: (its sequence, its body). Blocking; an
/// error is retried from the same event after a pause.
pub type ApplyEvent = Arc<dyn Fn(u64, &[u8]) -> std::result::Result<(), String> + Send + Sync>;

/// Hears a broadcast's body ([`Node::listen`]).
pub type Hear = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where a partition's queries go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node holds the partition and has applied its log.
    Local,
    /// This node holds it and is still catching up with its log.
    Rebuilding,
    /// Another node holds it, at this base URL.
    Remote(String),
    /// No live node holds it now (it is moving).
    Unavailable,
}

/// A running node; [`Node::close`] gives its leases up.
pub struct Node {
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
    balancer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Shared {
    cfg: NodeConfig,
    client: async_nats::Client,
    /// The answers this node gives to questions about its partitions, by kind.
    answers: Mutex<HashMap<&'static str, Answer>>,
    log: PointLog,
    leases: Leases,
    members: Members,
    registry: SharedRegistry,
    events: EventLog,
    snaps: Snapshots,
    /// What this node knows of each partition's snapshot.
    snap_state: Mutex<HashMap<u32, SnapState>>,
    /// The last event applied here.
    events_applied: AtomicU64,
    /// The last revision of the shared registry applied here.
    registry_rev: AtomicU64,
    apply: std::sync::OnceLock<Arc<dyn Apply>>,
    view: RwLock<View>,
    applied: Vec<AtomicU64>,
    ready: Vec<AtomicBool>,
    /// Until when (ms after `epoch`) each partition's lease is surely still this node's: the
    /// time its last successful renewal was sent plus most of the TTL. Past it, the node does
    /// not answer for the partition, whether or not its round has noticed.
    lease_until: Vec<AtomicU64>,
    epoch: Instant,
    stopping: AtomicBool,
    owned: Mutex<HashMap<u32, Owned>>,
}

#[derive(Default)]
struct View {
    owners: Vec<Option<String>>,
    members: Vec<Member>,
}

/// A partition's snapshot as this node last read or wrote it.
#[derive(Default)]
struct SnapState {
    /// The root's revision (`None`: no root yet).
    revision: Option<u64>,
    root: Option<Root>,
    /// Its pieces by key.
    pieces: HashMap<PieceKey, Known>,
    /// Messages the previous round dropped from the manifest, deleted by the next round.
    garbage: Vec<u64>,
}

/// A piece of a partition's snapshot as this node knows it.
struct Known {
    /// The version this node read it at (empty: unknown).
    version: Vec<u8>,
    /// Its manifest entry.
    entry: Entry,
}

impl Known {
    fn of(entry: Entry) -> (PieceKey, Known) {
        (
            entry.key.clone(),
            Known {
                version: Vec::new(),
                entry,
            },
        )
    }
}

/// A partition's snapshot, as `GET /ws/v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The partition.
    pub partition: u32,
    /// The log position it covers.
    pub covers: u64,
    /// When it was taken, Unix ms.
    pub taken: i64,
    /// Its pieces.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
}

struct Owned {
    lease: Lease,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long a stopping node spends snapshotting its partitions, at most.
const CLOSE_SNAPSHOTS: Duration = Duration::from_secs(60);

/// How long a starting node waits for JetStream to accept its streams and buckets.
const OPEN_PATIENCE: Duration = Duration::from_secs(60);

async fn open_all(
    client: &async_nats::Client,
    cfg: &NodeConfig,
) -> Result<(
    Leases,
    Members,
    PointLog,
    SharedRegistry,
    EventLog,
    Snapshots,
)> {
    let leases = Leases::open(
        client.clone(),
        "MS_LEASES",
        cfg.replicas,
        cfg.lease_ttl,
        &cfg.node_id,
    )
    .await?;
    let members = Members::open(client.clone(), "MS_NODES", cfg.replicas, cfg.lease_ttl).await?;
    let log = PointLog::open(
        client.clone(),
        cfg.partitions,
        cfg.log_streams,
        cfg.replicas,
        cfg.log_max_age,
        cfg.duplicate_window,
    )
    .await?;
    let registry = SharedRegistry::open(client.clone(), "MS_REGISTRY", cfg.replicas).await?;
    let events = EventLog::open(
        client.clone(),
        cfg.replicas,
        cfg.events_max_age,
        cfg.duplicate_window,
    )
    .await?;
    let snaps = Snapshots::open(client.clone(), cfg.replicas).await?;
    Ok((leases, members, log, registry, events, snaps))
}

/// Most log entries applied in one call.
const APPLY_BATCH: usize = 256;

impl Node {
    /// Connects and opens (creating when missing) the log and the lease, membership and
    /// registry buckets; takes no partition before [`Node::run`]. Blocking; call it outside
    /// any async runtime.
    pub fn connect(cfg: NodeConfig) -> Result<Node> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("meterstream-cluster")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::nats("starting the cluster runtime", e))?;
        let shared = rt.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .name(format!("meterstream {}", cfg.node_id))
                .retry_on_initial_connect()
                .connect(cfg.nats_urls.clone())
                .await
                .map_err(|e| ClusterError::nats("connecting to NATS", e))?;
            // The first connection may still be in progress.
            let started = Instant::now();
            while client.connection_state() != async_nats::connection::State::Connected {
                if started.elapsed() > OPEN_PATIENCE {
                    return Err(ClusterError::nats(
                        "connecting to NATS",
                        format!("no server of {:?} answered", cfg.nats_urls),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A JetStream cluster that is still electing its leaders refuses to create streams
            // for a while; keep trying for the connection's patience.
            let (leases, members, log, registry, events, snaps) = loop {
                match open_all(&client, &cfg).await {
                    Ok(all) => break all,
                    Err(e) if started.elapsed() < OPEN_PATIENCE => {
                        tracing::info!(error = %e, "JetStream not ready yet; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            let positions = load_positions(&cfg.dir.join("positions"));
            let events_applied = AtomicU64::new(load_events_position(&cfg.dir.join("positions")));
            let applied = (0..cfg.partitions)
                .map(|p| AtomicU64::new(positions.get(&p).copied().unwrap_or(0)))
                .collect();
            let ready = (0..cfg.partitions)
                .map(|_| AtomicBool::new(false))
                .collect();
            let lease_until = (0..cfg.partitions).map(|_| AtomicU64::new(0)).collect();
            Ok::<_, ClusterError>(Arc::new(Shared {
                view: RwLock::new(View {
                    owners: vec![None; cfg.partitions as usize],
                    members: Vec::new(),
                }),
                cfg,
                client,
                answers: Mutex::new(HashMap::new()),
                log,
                leases,
                members,
                registry,
                events,
                snaps,
                snap_state: Mutex::new(HashMap::new()),
                events_applied,
                registry_rev: AtomicU64::new(0),
                apply: std::sync::OnceLock::new(),
                applied,
                ready,
                lease_until,
                epoch: Instant::now(),
                stopping: AtomicBool::new(false),
                owned: Mutex::new(HashMap::new()),
            }))
        })?;
        Ok(Node {
            handle: rt.handle().clone(),
            rt: Mutex::new(Some(rt)),
            shared,
            balancer: Mutex::new(None),
        })
    }

    /// Starts the node's rounds: from now on it takes partitions and applies them with
    /// `apply`. Later calls do nothing.
    pub fn run(&self, apply: Arc<dyn Apply>) {
        if self.shared.apply.set(apply).is_err() {
            return;
        }
        let b = self.handle().spawn(balance(self.shared.clone()));
        *lock(&self.balancer) = Some(b);
        if !self.shared.cfg.snapshot_interval.is_zero() {
            self.handle().spawn(snapshotter(self.shared.clone()));
        }
    }

    /// Applies the shared registry with `apply`: every key's latest value before this returns
    /// (so a node serves with the credentials and rules the cluster has), then every change as
    /// it comes, for as long as the node runs. Blocking.
    pub fn watch_registry(&self, apply: Arc<dyn Fn(Change) + Send + Sync>) -> Result<()> {
        let shared = self.shared.clone();
        let target = self
            .handle()
            .block_on(patiently("the shared registry", || {
                shared.registry.last_revision()
            }))?;
        tracing::info!(revision = target, "reading the shared registry");
        let shared = self.shared.clone();
        self.handle().spawn(async move {
            loop {
                if shared.stopping.load(Ordering::Acquire) {
                    return;
                }
                let after = shared.registry_rev.load(Ordering::Acquire);
                let apply_and_count = |c: Change| {
                    let rev = c.revision;
                    apply(c);
                    shared.registry_rev.store(rev, Ordering::Release);
                };
                if let Err(e) = shared.registry.watch(after, &apply_and_count).await {
                    tracing::warn!(error = %e, "watching the shared registry failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        if self.registry_await(target, OPEN_PATIENCE) {
            tracing::info!(revision = target, "read the shared registry");
            Ok(())
        } else {
            Err(ClusterError::nats(
                "reading the shared registry",
                "it was not read within the patience allowed",
            ))
        }
    }

    /// Writes `value` (empty: deletes) under `key` of the shared registry and waits until this
    /// node has applied it (at most `timeout`); returns whether it has. Blocking.
    pub fn registry_put(&self, key: &str, value: bytes::Bytes, timeout: Duration) -> Result<bool> {
        let shared = self.shared.clone();
        let key = key.to_string();
        // A server that has not yet learnt of the bucket's stream (a cluster just formed, or
        // electing leaders) refuses for a moment: retried within `timeout`.
        let deadline = Instant::now() + timeout;
        let rev = self.handle().block_on(async move {
            loop {
                match shared.registry.put(&key, value.clone()).await {
                    Ok(rev) => return Ok(rev),
                    Err(e) if Instant::now() < deadline => {
                        tracing::info!(error = %e, "writing the shared registry failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })?;
        Ok(self.registry_await(rev, timeout))
    }

    fn registry_await(&self, rev: u64, timeout: Duration) -> bool {
        reaches(&self.shared.registry_rev, rev, timeout)
    }

    /// Applies the event stream with `apply` (sequence, body), from where this node left it:
    /// every event the stream held before this returns (so the node serves with the statuses
    /// the cluster has), then each as it comes, for as long as the node runs. An event whose
    /// apply fails is tried again after a pause. Blocking.
    pub fn watch_events(&self, apply: ApplyEvent) -> Result<()> {
        let shared = self.shared.clone();
        let target = self.handle().block_on(patiently("the event stream", || {
            shared.events.last_sequence()
        }))?;
        let shared = self.shared.clone();
        self.handle().spawn(async move {
            loop {
                if shared.stopping.load(Ordering::Acquire) {
                    return;
                }
                let from = shared.events_applied.load(Ordering::Acquire) + 1;
                let r: Result<()> = async {
                    let mut reader = shared.events.read_from(from).await?;
                    while !shared.stopping.load(Ordering::Acquire) {
                        let Some((seq, body)) = reader.next(Duration::from_millis(100)).await?
                        else {
                            continue;
                        };
                        if let Err(e) = apply(seq, &body) {
                            return Err(ClusterError::nats("applying an event", e));
                        }
                        shared.events_applied.store(seq, Ordering::Release);
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "reading the event stream failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        if self.await_events(target, OPEN_PATIENCE) {
            tracing::info!(sequence = target, "read the event stream");
            Ok(())
        } else {
            Err(ClusterError::nats(
                "reading the event stream",
                "it was not read within the patience allowed",
            ))
        }
    }

    /// Publishes events `(id, body)` in order, pipelined; for each, (its sequence, whether the
    /// stream had that id already). Blocking.
    pub fn publish_events(&self, events: Vec<(String, bytes::Bytes)>) -> Result<Vec<(u64, bool)>> {
        let shared = self.shared.clone();
        self.handle()
            .block_on(async move { shared.events.publish_all(events).await })
    }

    /// Waits (at most `timeout`) until this node has applied the event stream up to
    /// `sequence`; whether it has. Blocking.
    pub fn await_events(&self, sequence: u64, timeout: Duration) -> bool {
        reaches(&self.shared.events_applied, sequence, timeout)
    }

    /// How far this node applied the event stream.
    pub fn events_position(&self) -> u64 {
        self.shared.events_applied.load(Ordering::Acquire)
    }

    /// Whether this node holds `partition`'s lease now (applied or still catching up).
    pub fn holds(&self, partition: u32) -> bool {
        matches!(
            route(&self.shared, partition),
            Route::Local | Route::Rebuilding
        )
    }

    /// The partition of a device.
    pub fn partition_of(&self, device: &str) -> u32 {
        crate::partition::of_device(device, self.shared.cfg.partitions)
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.shared.cfg.partitions
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.shared.cfg.node_id
    }

    /// Publishes batch parts `(partition, message id, body)` and waits until JetStream has
    /// acknowledged every one. Blocking (call it from a blocking thread, not an async task).
    pub fn publish(&self, parts: Vec<(u32, Option<String>, bytes::Bytes)>) -> Result<()> {
        let shared = self.shared.clone();
        self.handle().block_on(async move {
            let sends = parts.into_iter().map(|(p, id, body)| {
                let shared = shared.clone();
                async move { shared.log.publish_part(p, id.as_deref(), body).await }
            });
            for r in futures_util::future::join_all(sends).await {
                r?;
            }
            Ok(())
        })
    }

    /// Publishes one record to `partition` and returns its sequence once JetStream has
    /// acknowledged it. Blocking.
    pub fn publish_one(&self, partition: u32, body: bytes::Bytes) -> Result<u64> {
        let shared = self.shared.clone();
        self.handle().block_on(async move {
            Ok(shared
                .log
                .publish_part(partition, None, body)
                .await?
                .sequence)
        })
    }

    /// Waits (at most `timeout`) until this node has applied `partition` up to `sequence`;
    /// `false` when it did not (it does not hold the partition, or the time ran out). Blocking.
    pub fn await_applied(&self, partition: u32, sequence: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let p = partition as usize;
        while self.shared.applied[p].load(Ordering::Acquire) < sequence {
            if Instant::now() >= deadline || !self.shared.ready[p].load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Answers questions of `kind` about the partitions this node holds and has applied, with
    /// `answer` ([`crate::ask`]); the node also answers its own questions with it. Later calls
    /// for the same kind do nothing. Blocking.
    pub fn serve(&self, kind: &'static str, answer: Answer) -> Result<()> {
        {
            let mut a = lock(&self.shared.answers);
            if a.contains_key(kind) {
                return Ok(());
            }
            a.insert(kind, answer.clone());
        }
        let shared = self.shared.clone();
        let subject = crate::ask::subject(kind, &shared.cfg.node_id);
        let mut sub = self
            .handle()
            .block_on(shared.client.subscribe(subject))
            .map_err(|e| ClusterError::nats("subscribing to questions", e))?;
        self.handle().spawn(async move {
            use futures_util::StreamExt;
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let (shared, answer) = (shared.clone(), answer.clone());
                tokio::spawn(async move {
                    let out = match crate::ask::parse_question(&msg.payload) {
                        None => crate::ask::answer(crate::ask::FAILED, b"a question too short"),
                        Some((p, _)) if route(&shared, p) != Route::Local => {
                            crate::ask::answer(crate::ask::NOT_HELD, b"")
                        }
                        Some(_) => {
                            let q = msg.payload.clone();
                            let r = tokio::task::spawn_blocking(move || {
                                let (p, body) = crate::ask::parse_question(&q).unwrap_or((0, &[]));
                                answer(p, body)
                            })
                            .await;
                            match r {
                                Ok(Ok(body)) => crate::ask::answer(crate::ask::OK, &body),
                                Ok(Err(m)) => crate::ask::answer(crate::ask::FAILED, m.as_bytes()),
                                Err(e) => {
                                    crate::ask::answer(crate::ask::FAILED, e.to_string().as_bytes())
                                }
                            }
                        }
                    };
                    if let Err(e) = shared.client.publish(reply, out.into()).await {
                        tracing::debug!(error = %e, "answering a question");
                    }
                });
            }
        });
        Ok(())
    }

    /// Sends `body` to every node listening to `topic` ([`Node::listen`]), this one included:
    /// core NATS, at most once, nothing kept. For hints whose loss costs only time (a cache
    /// entry to forget). Blocking.
    pub fn broadcast(&self, topic: &str, body: Vec<u8>) -> Result<()> {
        let client = self.shared.client.clone();
        let subject = format!("ms.bcast.{topic}");
        self.handle().block_on(async move {
            client
                .publish(subject, body.into())
                .await
                .map_err(|e| ClusterError::nats("broadcasting", e))
        })
    }

    /// Calls `hear` with the body of every [`Node::broadcast`] on `topic`, for as long as the
    /// node runs. Blocking.
    pub fn listen(&self, topic: &str, hear: Hear) -> Result<()> {
        let subject = format!("ms.bcast.{topic}");
        let mut sub = self
            .handle()
            .block_on(self.shared.client.subscribe(subject))
            .map_err(|e| ClusterError::nats("subscribing to broadcasts", e))?;
        self.handle().spawn(async move {
            use futures_util::StreamExt;
            while let Some(msg) = sub.next().await {
                hear(&msg.payload);
            }
        });
        Ok(())
    }

    /// Puts questions of `kind` (`(partition, body)`) to the partitions' holders, all at once,
    /// and gives the answers in the same order; each waits at most `timeout`. This node answers
    /// the questions about partitions it holds and has applied itself, on the calling thread.
    /// Blocking.
    pub fn ask(
        &self,
        kind: &str,
        questions: Vec<(u32, Vec<u8>)>,
        timeout: Duration,
    ) -> Vec<std::result::Result<Vec<u8>, AskError>> {
        let own = lock(&self.shared.answers).get(kind).cloned();
        let owners = self.owners();
        let mut out: Vec<Option<std::result::Result<Vec<u8>, AskError>>> =
            Vec::with_capacity(questions.len());
        let mut remote = Vec::new();
        for (k, (p, body)) in questions.into_iter().enumerate() {
            let unavailable = |why: &str| {
                Some(Err(AskError::Unavailable {
                    partition: p,
                    why: why.to_string(),
                }))
            };
            if route(&self.shared, p) == Route::Local {
                out.push(Some(match &own {
                    Some(a) => a(p, &body).map_err(|message| AskError::Failed {
                        partition: p,
                        message,
                    }),
                    None => Err(AskError::Failed {
                        partition: p,
                        message: format!("this node does not answer questions of {kind:?}"),
                    }),
                }));
                continue;
            }
            match owners.get(p as usize).cloned().flatten() {
                Some(id) if id != self.shared.cfg.node_id => {
                    out.push(None);
                    remote.push((k, p, crate::ask::subject(kind, &id), body));
                }
                Some(_) => out.push(unavailable("this node is still catching up with its log")),
                None => out.push(unavailable("it is moving between nodes")),
            }
        }
        if !remote.is_empty() {
            let client = self.shared.client.clone();
            let answers = self.handle().block_on(async move {
                let asks = remote.into_iter().map(|(k, p, subject, body)| {
                    let client = client.clone();
                    async move {
                        let q = crate::ask::question(p, &body);
                        let r =
                            tokio::time::timeout(timeout, client.request(subject, q.into())).await;
                        let a = match r {
                            Ok(Ok(msg)) => crate::ask::parse_answer(p, &msg.payload),
                            Ok(Err(e)) => Err(AskError::Unavailable {
                                partition: p,
                                why: e.to_string(),
                            }),
                            Err(_) => Err(AskError::Unavailable {
                                partition: p,
                                why: format!("no answer within {timeout:?}"),
                            }),
                        };
                        (k, a)
                    }
                });
                futures_util::future::join_all(asks).await
            });
            for (k, a) in answers {
                out[k] = Some(a);
            }
        }
        out.into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(AskError::Failed {
                        partition: 0,
                        message: "a question was not asked".into(),
                    })
                })
            })
            .collect()
    }

    /// Where queries of `partition` go now.
    pub fn route(&self, partition: u32) -> Route {
        route(&self.shared, partition)
    }

    /// Waits (at most `timeout`) until this node holds `partition` and has applied every
    /// message the log held for it when called, so a query sees every acknowledged write.
    /// `Ok(false)` when the node does not hold it (any more) or the time ran out.
    pub async fn await_local(&self, partition: u32, timeout: Duration) -> Result<bool> {
        let shared = self.shared.clone();
        let task = self.handle().spawn(async move {
            let deadline = Instant::now() + timeout;
            let p = partition as usize;
            loop {
                match route(&shared, partition) {
                    Route::Local => break,
                    Route::Rebuilding if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    _ => return Ok(false),
                }
            }
            let last = shared.log.last_sequence(partition).await?;
            while shared.applied[p].load(Ordering::Acquire) < last {
                if Instant::now() >= deadline || !shared.ready[p].load(Ordering::Acquire) {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(true)
        });
        task.await
            .map_err(|e| ClusterError::nats("waiting for a partition", e))?
    }

    /// Who holds each partition, as last read (index = partition).
    pub fn owners(&self) -> Vec<Option<String>> {
        read(&self.shared.view).owners.clone()
    }

    /// How far this node applied each partition (index = partition).
    pub fn positions(&self) -> Vec<u64> {
        self.shared
            .applied
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    }

    /// The snapshots of the partitions this node holds, as it last wrote or read them.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        let held: Vec<u32> = lock(&self.shared.owned).keys().copied().collect();
        let st = lock(&self.shared.snap_state);
        let mut out: Vec<SnapshotInfo> = st
            .iter()
            .filter(|(p, _)| held.contains(p))
            .filter_map(|(p, s)| {
                let r = s.root.as_ref()?;
                Some(SnapshotInfo {
                    partition: *p,
                    covers: r.covers,
                    taken: r.taken,
                    pieces: r.pieces,
                    bytes: r.bytes,
                })
            })
            .collect();
        out.sort_by_key(|i| i.partition);
        out
    }

    /// The live nodes, as last read.
    pub fn members(&self) -> Vec<Member> {
        read(&self.shared.view).members.clone()
    }

    /// The partitions this node holds (with a lease renewed in time) and has applied.
    pub fn local_partitions(&self) -> Vec<u32> {
        (0..self.shared.cfg.partitions)
            .filter(|&p| route(&self.shared, p) == Route::Local)
            .collect()
    }

    /// The node's own runtime (two threads, driving its own IO): work that must not depend on
    /// the caller's runtime, such as asking the other nodes from a blocking thread.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Stops applying, gives every lease up and saves the positions. Blocking; later calls do
    /// nothing.
    pub fn close(&self) {
        let Some(rt) = lock(&self.rt).take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        let shared = self.shared.clone();
        let balancer = lock(&self.balancer).take();
        rt.block_on(async move {
            if let Some(b) = balancer {
                let _ = b.await;
            }
            // A clean stop snapshots what it holds first, so that the next holders restore
            // rather than replay the log (bounded: the leases lapse anyway).
            if !shared.cfg.snapshot_interval.is_zero() {
                let held: Vec<u32> = (0..shared.cfg.partitions)
                    .filter(|p| route(&shared, *p) == Route::Local)
                    .collect();
                let started = Instant::now();
                let all = async {
                    for p in &held {
                        if let Err(e) = snapshot_partition(&shared, *p).await {
                            tracing::warn!(partition = p, error = %e, "snapshotting at stop failed");
                        }
                    }
                };
                if tokio::time::timeout(CLOSE_SNAPSHOTS, all).await.is_err() {
                    tracing::warn!("snapshots at stop did not finish in time");
                }
                tracing::info!(
                    partitions = held.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "snapshotted the partitions before stopping"
                );
            }
            let owned: Vec<(u32, Owned)> = lock(&shared.owned).drain().collect();
            for (p, o) in owned {
                drop_partition(&shared, p, o).await;
            }
            save_positions(&shared);
        });
        rt.shutdown_timeout(Duration::from_secs(2));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Closing blocks on the node's runtime, which a thread driving another runtime may not
        // do (a server that fails to start drops its node on its async runtime).
        if tokio::runtime::Handle::try_current().is_ok() {
            let node = &*self;
            std::thread::scope(|s| {
                s.spawn(|| node.close());
            });
        } else {
            self.close();
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether this node's lease of `p` is surely still valid.
    fn lease_valid(&self, p: usize) -> bool {
        self.lease_until
            .get(p)
            .is_some_and(|u| self.now_ms() < u.load(Ordering::Acquire))
    }

    /// Records a renewal (or a claim) sent at `sent_ms`.
    fn leased(&self, p: u32, sent_ms: u64) {
        let margin = (self.cfg.lease_ttl * 4 / 5).as_millis() as u64;
        self.lease_until[p as usize].store(sent_ms + margin, Ordering::Release);
    }
}

fn route(shared: &Shared, partition: u32) -> Route {
    let p = partition as usize;
    if shared
        .ready
        .get(p)
        .is_some_and(|r| r.load(Ordering::Acquire))
    {
        if shared.lease_valid(p) {
            return Route::Local;
        }
        // Held, but not renewed in time: maybe taken by another node already.
        return Route::Unavailable;
    }
    let view = read(&shared.view);
    match view.owners.get(p).cloned().flatten() {
        Some(o) if o == shared.cfg.node_id => Route::Rebuilding,
        Some(o) => match view.members.iter().find(|m| m.id == o) {
            Some(m) => Route::Remote(m.url.clone()),
            None => Route::Unavailable,
        },
        None => Route::Unavailable,
    }
}

/// The node's rounds, every fifth of the lease TTL: announce itself, renew its leases, read
/// who holds what, then take or give partitions until it holds its fair share.
async fn balance(shared: Arc<Shared>) {
    let round = shared.cfg.lease_ttl / 5;
    let mut first = true;
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        // A round that hangs (NATS failing over) must not outlive the leases it renews.
        match tokio::time::timeout(shared.cfg.lease_ttl / 2, one_round(&shared, first)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cluster round failed; retrying"),
            Err(_) => tracing::warn!("cluster round timed out; retrying"),
        }
        drop_lapsed(&shared);
        first = false;
        save_positions(&shared);
        tokio::time::sleep(round).await;
    }
}

async fn one_round(shared: &Arc<Shared>, first: bool) -> Result<()> {
    let cfg = &shared.cfg;
    // Renewals first: they are what keeps the partitions here.
    renew_all(shared).await;
    shared
        .members
        .announce(&cfg.node_id, &cfg.advertise_url)
        .await?;
    let members = shared.members.list().await?;
    let owners = shared.leases.owners(cfg.partitions).await?;
    let live = members.len().max(1) as u32;
    {
        let mut v = shared.view.write().unwrap_or_else(|e| e.into_inner());
        if v.members != members {
            let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
            tracing::info!(members = ?ids, "cluster members changed");
        }
        v.owners = owners.clone();
        v.members = members;
    }
    // On the first round, only look: nodes starting together then see each other before
    // anyone takes partitions.
    if first {
        return Ok(());
    }
    let target = cfg.partitions.div_ceil(live) as usize;
    let held = lock(&shared.owned).len();
    if held < target {
        // Free partitions, starting at a place of this node's own so that nodes claiming at
        // once mostly try different ones.
        // A lease naming this node that it does not hold (its previous run's, or a claim
        // whose answer was lost) counts as free: `claim` takes it over.
        let start = crate::partition::of_device(&cfg.node_id, cfg.partitions);
        let held_now: Vec<u32> = lock(&shared.owned).keys().copied().collect();
        let free: Vec<u32> = (0..cfg.partitions)
            .map(|k| (start + k) % cfg.partitions)
            .filter(|&p| match &owners[p as usize] {
                None => true,
                Some(o) => *o == cfg.node_id && !held_now.contains(&p),
            })
            .take(target - held)
            .collect();
        for p in free {
            let sent = shared.now_ms();
            if let Some(lease) = shared.leases.claim(p).await? {
                tracing::info!(partition = p, "took the partition");
                take_partition(shared, p, lease, sent);
            }
        }
    } else if held > target {
        // Give the surplus up, so that nodes that joined later get their share; only while
        // another live node, as this node sees it, is short of its share (a node that has
        // died but is still listed would never take them).
        let fair = (cfg.partitions / live) as usize;
        let short = read(&shared.view).members.iter().any(|m| {
            m.id != cfg.node_id
                && owners
                    .iter()
                    .filter(|o| o.as_deref() == Some(m.id.as_str()))
                    .count()
                    < fair
        });
        if short {
            let mut mine: Vec<u32> = lock(&shared.owned).keys().copied().collect();
            mine.sort_unstable();
            let leaving: Vec<(u32, Owned)> = mine
                .into_iter()
                .skip(target)
                .filter_map(|p| lock(&shared.owned).remove(&p).map(|o| (p, o)))
                .collect();
            give_up(shared, leaving).await;
        }
    }
    Ok(())
}

/// Renews every held lease; a lease lost, or not renewed for most of its TTL (NATS
/// unreachable), stops its partition here.
async fn renew_all(shared: &Arc<Shared>) {
    let held: Vec<(u32, Lease)> = lock(&shared.owned)
        .iter()
        .map(|(p, o)| (*p, o.lease))
        .collect();
    let sent = shared.now_ms();
    let renewals = held.into_iter().map(|(p, lease)| {
        let shared = shared.clone();
        async move { (p, shared.leases.renew(lease).await) }
    });
    for (p, r) in futures_util::future::join_all(renewals).await {
        let mut owned = lock(&shared.owned);
        match r {
            Ok(Some(lease)) => {
                if let Some(o) = owned.get_mut(&p) {
                    o.lease = lease;
                    shared.leased(p, sent);
                }
            }
            Ok(None) => {
                tracing::warn!(partition = p, "lost the partition's lease");
                if let Some(o) = owned.remove(&p) {
                    stop_applying(shared, p, &o);
                }
            }
            Err(e) => tracing::warn!(partition = p, error = %e, "renewing a lease failed"),
        }
    }
}

/// Stops the partitions whose leases were not renewed in time: another node may hold them
/// now. A lease that still names this node is taken back by a later claim.
fn drop_lapsed(shared: &Arc<Shared>) {
    let mut owned = lock(&shared.owned);
    let lapsed: Vec<u32> = owned
        .keys()
        .copied()
        .filter(|&p| !shared.lease_valid(p as usize))
        .collect();
    for p in lapsed {
        tracing::warn!(
            partition = p,
            "the partition's lease was not renewed in time"
        );
        if let Some(o) = owned.remove(&p) {
            stop_applying(shared, p, &o);
        }
    }
}

fn take_partition(shared: &Arc<Shared>, p: u32, lease: Lease, sent_ms: u64) {
    shared.leased(p, sent_ms);
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(apply_partition(shared.clone(), p, stop.clone()));
    lock(&shared.owned).insert(p, Owned { lease, stop, task });
}

fn stop_applying(shared: &Shared, p: u32, o: &Owned) {
    shared.ready[p as usize].store(false, Ordering::Release);
    o.stop.store(true, Ordering::Release);
}

/// Gives partitions up to a node that is short of its share: stops applying them, lets this
/// node's feed consumers (the alarm evaluator, data point monitors) take what was applied, and
/// snapshots them before releasing their leases. The next holder then restores what this
/// node applied instead of replaying the log after an older snapshot, so its feed does not
/// carry points this node's monitors delivered already. Bounded by a quarter of the lease TTL
/// (the round that calls it renews the other leases); past that, the rest are released
/// without a new snapshot, and their next holders replay the log after the last one.
async fn give_up(shared: &Arc<Shared>, mut leaving: Vec<(u32, Owned)>) {
    if leaving.is_empty() {
        return;
    }
    let budget = shared.cfg.lease_ttl / 4;
    let started = Instant::now();
    for (p, o) in &leaving {
        stop_applying(shared, *p, o);
    }
    for (_, o) in &mut leaving {
        let _ = (&mut o.task).await;
    }
    let apply = shared.apply.get().cloned();
    if let (Some(apply), false) = (apply, shared.cfg.snapshot_interval.is_zero()) {
        let behind = |p: u32| {
            let applied = shared.applied[p as usize].load(Ordering::Acquire);
            apply.delivered(p, applied).is_some_and(|d| d < applied)
        };
        while started.elapsed() < budget && leaving.iter().any(|(p, _)| behind(*p)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (p, _) in &leaving {
            if started.elapsed() >= budget {
                tracing::warn!(
                    partition = p,
                    "no time left to snapshot a partition given up"
                );
                continue;
            }
            if let Err(e) = snapshot_partition(shared, *p).await {
                tracing::warn!(partition = p, error = %e, "snapshotting a partition given up failed");
            }
        }
    }
    for (p, o) in leaving {
        tracing::info!(partition = p, "gave the partition up");
        if let Err(e) = shared.leases.release(o.lease).await {
            tracing::warn!(partition = p, error = %e, "releasing a lease failed; it will lapse");
        }
    }
}

async fn drop_partition(shared: &Shared, p: u32, o: Owned) {
    stop_applying(shared, p, &o);
    let _ = o.task.await;
    if let Err(e) = shared.leases.release(o.lease).await {
        tracing::warn!(partition = p, error = %e, "releasing a lease failed; it will lapse");
    }
}

/// Applies partition `p` from this node's position on, until told to stop; ready once it has
/// applied what the log held when it started.
async fn apply_partition(shared: Arc<Shared>, p: u32, stop: Arc<AtomicBool>) {
    let i = p as usize;
    let pause = Duration::from_millis(500);
    lock(&shared.snap_state).remove(&p);
    // From where: this node's position, or the partition's snapshot when the log no longer
    // reaches back to it.
    while !stop.load(Ordering::Acquire) {
        match prepare(&shared, p).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "restoring the partition failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
    while !stop.load(Ordering::Acquire) {
        let target = match shared.log.last_sequence(p).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "reading the log's end failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let from = shared.applied[i].load(Ordering::Acquire) + 1;
        let mut reader = match shared.log.read_from(p, from).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "opening the partition's log failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let started = Instant::now();
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let applied = shared.applied[i].load(Ordering::Acquire);
            if applied >= target && !shared.ready[i].load(Ordering::Acquire) {
                tracing::info!(
                    partition = p,
                    position = applied,
                    took_ms = started.elapsed().as_millis() as u64,
                    "partition ready"
                );
                shared.ready[i].store(true, Ordering::Release);
            }
            let mut batch = Vec::new();
            let mut last = applied;
            let mut wait = Duration::from_millis(200);
            let failed = loop {
                match reader.next(wait).await {
                    Ok(Some((seq, body))) => {
                        if seq > last {
                            last = seq;
                            batch.push((seq, body));
                        }
                        if batch.len() >= APPLY_BATCH {
                            break false;
                        }
                        wait = Duration::ZERO;
                    }
                    Ok(None) => break false,
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "reading the partition failed");
                        break true;
                    }
                }
            };
            if !batch.is_empty() {
                let Some(apply) = shared.apply.get().cloned() else {
                    return;
                };
                let done = tokio::task::spawn_blocking(move || apply.apply(p, &batch)).await;
                match done {
                    Ok(Ok(())) => shared.applied[i].store(last, Ordering::Release),
                    Ok(Err(e)) => {
                        tracing::error!(partition = p, error = %e, "applying failed; retrying");
                        tokio::time::sleep(pause).await;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "applying panicked; retrying");
                        tokio::time::sleep(pause).await;
                        break;
                    }
                }
            }
            if failed {
                tokio::time::sleep(pause).await;
                break;
            }
        }
    }
}

/// Before applying partition `p` from this node's position: restores its snapshot if the log
/// no longer holds what follows the position, or if the node has none and a snapshot exists.
async fn prepare(shared: &Arc<Shared>, p: u32) -> Result<()> {
    let i = p as usize;
    let pos = shared.applied[i].load(Ordering::Acquire);
    let first = shared.log.first_sequence(p).await?;
    // Messages after `pos` may have been removed by the log's age limit.
    let gap = pos + 1 < first;
    if pos > 0 && !gap {
        return Ok(());
    }
    match shared.snaps.root(p).await? {
        Some((root, revision)) if root.covers > pos => restore(shared, p, root, revision).await,
        // The snapshot is this node's state: nothing of the partition came after it. (The
        // stream's first sequence moved on with the other partitions it holds.)
        Some((root, _)) if root.covers == pos => Ok(()),
        _ if gap && pos > 0 => {
            tracing::error!(
                partition = p,
                position = pos,
                log_first = first,
                "the log no longer holds what follows this node's position and the partition's snapshot is older; points written between them may be missing here"
            );
            Ok(())
        }
        None if gap => {
            tracing::error!(
                partition = p,
                log_first = first,
                "the partition has no snapshot and its log was trimmed; applying what the log still holds"
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Restores partition `p` from the snapshot `root` (at `revision`), then sets the position to
/// what it covers. The position is saved as 0 first, so a crash half-way restores again.
async fn restore(shared: &Arc<Shared>, p: u32, root: Root, revision: u64) -> Result<()> {
    let i = p as usize;
    let started = Instant::now();
    let Some(apply) = shared.apply.get().cloned() else {
        return Ok(());
    };
    shared.applied[i].store(0, Ordering::Release);
    save_positions(shared);
    let manifest = shared.snaps.manifest(&root).await?;
    restoring(apply.clone(), move |a| a.restore(p, Restore::Begin)).await?;
    // Windows of about 512 pieces, cut between names, fetched together.
    let mut start = 0;
    while start < manifest.len() {
        let mut end = (start + 512).min(manifest.len());
        while end < manifest.len() && manifest[end].key.name == manifest[end - 1].key.name {
            end += 1;
        }
        let window = &manifest[start..end];
        let bytes = shared.snaps.fetch(window).await?;
        let pieces: Vec<(PieceKey, bytes::Bytes)> =
            window.iter().map(|e| e.key.clone()).zip(bytes).collect();
        restoring(apply.clone(), move |a| {
            a.restore(p, Restore::Pieces(&pieces))
        })
        .await?;
        start = end;
    }
    let covers = root.covers;
    restoring(apply, move |a| a.restore(p, Restore::End { covers })).await?;
    shared.applied[i].store(root.covers, Ordering::Release);
    save_positions(shared);
    tracing::info!(
        partition = p,
        covers = root.covers,
        pieces = manifest.len(),
        bytes = root.bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "partition restored from its snapshot"
    );
    let pieces = manifest.into_iter().map(Known::of).collect();
    lock(&shared.snap_state).insert(
        p,
        SnapState {
            revision: Some(revision),
            root: Some(root),
            pieces,
            garbage: Vec::new(),
        },
    );
    Ok(())
}

/// Runs one restoring step on a blocking thread.
async fn restoring<F>(apply: Arc<dyn Apply>, f: F) -> Result<()>
where
    F: FnOnce(&dyn Apply) -> std::result::Result<(), String> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&*apply))
        .await
        .map_err(|e| ClusterError::nats("restoring a partition", e))?
        .map_err(|e| ClusterError::nats("restoring a partition", e))
}

/// Snapshots every partition this node holds and has applied, every `snapshot_interval`.
async fn snapshotter(shared: Arc<Shared>) {
    let every = shared.cfg.snapshot_interval;
    loop {
        tokio::time::sleep(every).await;
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        for p in 0..shared.cfg.partitions {
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            if route(&shared, p) != Route::Local {
                continue;
            }
            if let Err(e) = snapshot_partition(&shared, p).await {
                tracing::warn!(partition = p, error = %e, "snapshotting the partition failed");
            }
        }
    }
}

/// Bytes of changed pieces gathered before they are published.
const PUBLISH_BYTES: usize = 4 << 20;

/// The pieces of one round, as the server hands them over.
struct RoundSink<'a> {
    handle: tokio::runtime::Handle,
    shared: &'a Shared,
    partition: u32,
    known: &'a HashMap<PieceKey, Known>,
    /// The new manifest, with each piece's version.
    manifest: Vec<(Entry, Vec<u8>)>,
    /// Changed pieces not yet published (packed when published).
    pending: Vec<(PieceKey, bytes::Bytes, [u8; 16], Vec<u8>)>,
    pending_bytes: usize,
    /// Messages published by this round.
    published: Vec<u64>,
}

impl RoundSink<'_> {
    fn flush(&mut self) -> std::result::Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let (pieces, versions): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .map(|(key, b, hash, version)| ((key, b, hash), version))
            .unzip();
        let entries = self
            .handle
            .block_on(self.shared.snaps.publish_packed(self.partition, pieces))
            .map_err(|e| e.to_string())?;
        self.published.extend(entries.iter().map(|e| e.seq));
        self.manifest.extend(entries.into_iter().zip(versions));
        Ok(())
    }
}

impl Sink for RoundSink<'_> {
    fn known(&mut self, key: &PieceKey, version: &[u8]) -> bool {
        !version.is_empty() && self.known.get(key).is_some_and(|k| k.version == version)
    }

    fn emit(&mut self, piece: Piece) -> std::result::Result<(), String> {
        let had = self.known.get(&piece.key).map(|k| &k.entry);
        match piece.bytes {
            None => {
                let e = had.ok_or("a piece came without bytes that was not known")?;
                self.manifest.push((e.clone(), piece.version));
            }
            Some(b) => match (had, crate::snapshot::hash(&b)) {
                (Some(e), hash) if e.hash == hash => {
                    self.manifest.push((e.clone(), piece.version));
                }
                (_, hash) => {
                    self.pending_bytes += b.len();
                    self.pending.push((piece.key, b, hash, piece.version));
                    if self.pending_bytes >= PUBLISH_BYTES {
                        self.flush()?;
                    }
                }
            },
        }
        Ok(())
    }
}

/// One snapshot of partition `p`: lists its pieces, publishes those that changed and a new
/// manifest, then writes the root by compare-and-set. Whether a root was written.
async fn snapshot_partition(shared: &Arc<Shared>, p: u32) -> Result<bool> {
    let i = p as usize;
    let Some(apply) = shared.apply.get().cloned() else {
        return Ok(false);
    };
    let started = Instant::now();
    // What the pieces will at least hold: read before they are listed.
    let applied = shared.applied[i].load(Ordering::Acquire);
    let covers = match apply.delivered(p, applied) {
        Some(d) if d < applied => {
            // A consumer here has not taken everything yet: the next holder applies the log
            // from what it took, unless the log no longer reaches back that far (that backlog
            // could not be replayed anyway).
            let first = shared.log.first_sequence(p).await?;
            if d + 1 < first {
                tracing::error!(
                    partition = p,
                    delivered = d,
                    log_first = first,
                    "a consumer of this node's store (the alarm evaluator or a monitor) lags behind the log's retention"
                );
            }
            d.max(first.saturating_sub(1)).min(applied)
        }
        _ => applied,
    };
    let state = lock(&shared.snap_state).remove(&p);
    let mut state = match state {
        Some(s) => s,
        None => match shared.snaps.root(p).await? {
            Some((root, revision)) => {
                let manifest = shared.snaps.manifest(&root).await?;
                SnapState {
                    revision: Some(revision),
                    root: Some(root),
                    pieces: manifest.into_iter().map(Known::of).collect(),
                    garbage: Vec::new(),
                }
            }
            None => SnapState::default(),
        },
    };
    if let Some(r) = &state.root {
        if r.covers == covers && r.node == shared.cfg.node_id {
            // Nothing applied since this node's last snapshot.
            lock(&shared.snap_state).insert(p, state);
            return Ok(false);
        }
    }
    shared.snaps.delete(&state.garbage).await?;
    state.garbage.clear();
    let handle = tokio::runtime::Handle::current();
    let shared2 = shared.clone();
    let (state, sink) = tokio::task::spawn_blocking(move || {
        let mut sink = RoundSink {
            handle,
            shared: &shared2,
            partition: p,
            known: &state.pieces,
            manifest: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            published: Vec::new(),
        };
        let r = apply.snapshot(p, &mut sink).and_then(|()| sink.flush());
        let out = (sink.manifest, sink.published);
        (state, r.map(|()| out))
    })
    .await
    .map_err(|e| ClusterError::nats("snapshotting a partition", e))?;
    // On an error, pieces this round published are listed by no root; they stay as garbage
    // (docs/scale-out.md, "Snapshots": not built).
    let (mut manifest, published) = match sink {
        Ok(m) => m,
        Err(e) => {
            lock(&shared.snap_state).insert(p, state);
            return Err(ClusterError::nats("snapshotting a partition", e));
        }
    };
    // Messages most of whose pieces are gone are repacked: their live pieces are published
    // again, packed with each other, so that dead bytes stay under half of what is kept.
    let mut live: HashMap<u64, u32> = HashMap::new();
    for (e, _) in &manifest {
        *live.entry(e.seq).or_default() += 1;
    }
    let fresh: std::collections::HashSet<u64> = published.iter().copied().collect();
    let stale: Vec<usize> = (0..manifest.len())
        .filter(|&k| {
            let e = &manifest[k].0;
            !fresh.contains(&e.seq) && live[&e.seq] * 2 < e.packed
        })
        .collect();
    let mut published = published;
    if !stale.is_empty() {
        let old: Vec<Entry> = stale.iter().map(|&k| manifest[k].0.clone()).collect();
        let bytes = shared.snaps.fetch(&old).await?;
        let again = old
            .into_iter()
            .zip(bytes)
            .map(|(e, b)| (e.key, b, e.hash))
            .collect();
        let entries = shared.snaps.publish_packed(p, again).await?;
        published.extend(entries.iter().map(|e| e.seq));
        for (k, e) in stale.iter().zip(entries) {
            manifest[*k].0 = e;
        }
    }
    published.sort_unstable();
    published.dedup();
    manifest.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    let entries: Vec<Entry> = manifest.iter().map(|(e, _)| e.clone()).collect();
    let bytes = entries.iter().map(|e| u64::from(e.len)).sum();
    let pages = shared.snaps.publish_manifest(p, &entries).await?;
    let root = Root {
        covers,
        taken: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        node: shared.cfg.node_id.clone(),
        pages: pages.clone(),
        pieces: entries.len() as u64,
        bytes,
    };
    let Some(revision) = shared.snaps.write_root(p, &root, state.revision).await? else {
        // Another node wrote a root meanwhile: it holds the partition now, or did. What this
        // round published is nobody's.
        let mut mine = published;
        mine.extend(&pages);
        shared.snaps.delete(&mine).await?;
        tracing::info!(
            partition = p,
            "another node wrote the partition's snapshot; this one was dropped"
        );
        return Ok(false);
    };
    // What the old root listed and the new one does not is deleted next round.
    let live: std::collections::HashSet<u64> = entries
        .iter()
        .map(|e| e.seq)
        .chain(pages.iter().copied())
        .collect();
    let mut garbage: Vec<u64> = state
        .pieces
        .values()
        .map(|k| k.entry.seq)
        .chain(state.root.iter().flat_map(|r| r.pages.iter().copied()))
        .filter(|s| !live.contains(s))
        .collect();
    garbage.sort_unstable();
    garbage.dedup();
    tracing::info!(
        partition = p,
        covers,
        pieces = entries.len(),
        published = published.len(),
        bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "partition snapshotted"
    );
    let pieces = manifest
        .into_iter()
        .map(|(entry, version)| (entry.key.clone(), Known { version, entry }))
        .collect();
    lock(&shared.snap_state).insert(
        p,
        SnapState {
            revision: Some(revision),
            root: Some(root),
            pieces,
            garbage,
        },
    );
    Ok(true)
}

fn load_positions(path: &std::path::Path) -> HashMap<u32, u64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let (p, s) = l.split_once(' ')?;
            Some((p.parse().ok()?, s.parse().ok()?))
        })
        .collect()
}

/// Waits (at most `timeout`, sleeping) until `counter` is at least `target`; whether it is.
fn reaches(counter: &AtomicU64, target: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::Acquire) < target {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// The first answer of `read` (each try bounded by 5 s), retried every 200 ms for
/// [`OPEN_PATIENCE`]: a JetStream cluster that is still electing leaders does not answer at
/// once. `what` names it in logs and the error.
async fn patiently<T, F, Fut>(what: &'static str, read: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), read()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if started.elapsed() >= OPEN_PATIENCE => return Err(e),
            Err(_) if started.elapsed() >= OPEN_PATIENCE => {
                return Err(ClusterError::nats(
                    what,
                    "no answer within the patience allowed",
                ))
            }
            Ok(Err(e)) => tracing::info!(error = %e, "{what} is not ready yet; retrying"),
            Err(_) => tracing::info!("{what} did not answer yet; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How far the node applied the event stream (the `events <sequence>` line), 0 if never.
fn load_events_position(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("events ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Writes the positions (`events <sequence>`, then `<partition> <sequence>` lines) to a new file renamed over the old.
fn save_positions(shared: &Shared) {
    let mut text = format!("events {}\n", shared.events_applied.load(Ordering::Acquire));
    for (p, a) in shared.applied.iter().enumerate() {
        let a = a.load(Ordering::Acquire);
        if a > 0 {
            text.push_str(&format!("{p} {a}\n"));
        }
    }
    let dir = &shared.cfg.dir;
    let tmp = dir.join("positions.tmp");
    let write = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, dir.join("positions")));
    if let Err(e) = write {
        tracing::warn!(error = %e, "saving the cluster positions failed");
    }
}
