//! The server as one node of a cluster on NATS JetStream (docs/scale-out.md), on when
//! `cluster.nats_urls` is set.
//!
//! - **Ingest**: a batch is checked here (paths, timestamps, values against the type it gives or
//!   implies), split by the partition of each stream's device, and each part is published to the
//!   log; the client is answered once JetStream has acknowledged every part.
//! - **Applying**: the partitions this node holds are applied from the log into its own store,
//!   exactly as a single node's writes are ([`StoreApply`]).
//! - **Queries** of one stream go to the node holding its partition ([`route`]): answered here
//!   when this node holds it (after applying what the log held), forwarded otherwise.

use crate::error::ApiError;
use crate::AppState;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, HttpResponse};
use meterstream_cluster::node::{Apply, Node, Route};
use meterstream_storage::point::GroupIn;
use meterstream_storage::registry::{Command, CommandStatus};
use meterstream_storage::store::{ItemError, WriteOutcome};
use meterstream_storage::{StorageError, Store, StreamType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The header a forwarded request carries (the forwarding node's id): a node that does not hold
/// the partition either answers 503 instead of forwarding again.
pub const HOP_HEADER: &str = "x-meterstream-forwarded-by";

/// The client's address, on a forwarded request (recorded as a device's contact address).
pub const CLIENT_ADDRESS_HEADER: &str = "x-meterstream-client-address";

/// How long a query waits for its partition (moving, or catching up with the log).
const ROUTE_WAIT: Duration = Duration::from_secs(10);

/// One message of a partition's log. MessagePack, externally tagged, so that new kinds of
/// records can be added. Every record sets state, so applying one again changes nothing.
#[derive(Debug, Serialize, Deserialize)]
pub enum LogRecord {
    /// Points of one partition, written at server time `now` (ms): the server timestamp of
    /// every point and the timestamp of points that came without one.
    Points {
        /// Server time of the write.
        now: i64,
        /// The groups, as parsed.
        groups: Vec<GroupIn>,
        /// The address the batch came from (the devices' contact).
        #[serde(default)]
        address: Option<String>,
    },
    /// A command queued for a device; its id is the record's sequence in its stream (unique and
    /// increasing for a device, whose partition is always in the same stream).
    CommandCreate {
        /// The device.
        device: String,
        /// What to do.
        command: String,
        /// Its parameters.
        parameters: serde_json::Value,
        /// Seconds it may wait for delivery.
        lifetime: u64,
        /// Server time of the request.
        now: i64,
    },
    /// A change of a stream's metadata (creating it when missing).
    PutStream {
        /// The stream.
        path: String,
        /// The change.
        update: meterstream_storage::stream::StreamUpdate,
        /// Server time of the request.
        now: i64,
    },
    /// A stream deleted with all its points.
    DeleteStream {
        /// The stream.
        path: String,
    },
    /// A stream's points in [from, to) deleted.
    DeleteHistory {
        /// The stream.
        path: String,
        /// From (ms, inclusive).
        from: i64,
        /// To (ms, exclusive).
        to: i64,
    },
    /// A device's report on a command, or a cancellation (`status` cancelled).
    CommandUpdate {
        /// The device.
        device: String,
        /// The command's id.
        id: u64,
        /// The new status.
        status: CommandStatus,
        /// The result reported (null: unchanged).
        result: serde_json::Value,
        /// Server time of the request.
        now: i64,
    },
}

/// The cluster side of a server.
pub struct Cluster {
    /// The node.
    pub node: Arc<Node>,
    http: reqwest::Client,
    /// For asking every other node ([`Cluster::ask_others`]), used on the node's runtime only.
    fan_http: reqwest::Client,
    /// Batches published with types checked only against what their values imply, because a
    /// partition's holder did not answer in time (it was moving).
    types_unchecked: std::sync::atomic::AtomicU64,
    /// Stored types the holders told this node.
    pub types: crate::cluster_types::TypeCache,
    /// Questions about types put to holders (for `GET /ws/v1/cluster`).
    types_asked: std::sync::atomic::AtomicU64,
}

/// How long an ingest waits for the holders to settle its streams' types.
const TYPES_WAIT: Duration = Duration::from_secs(2);

/// Whether this node answers for a key (a device id, a monitor id) now.
pub type Holds = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Applies log records to the node's store and registry.
pub struct StoreApply {
    /// The node's own engine.
    engine: Arc<meterstream_storage::Engine>,
    /// The cluster's partitions.
    partitions: u32,
    /// What applying the last stream changes came to, by sequence, for the request that
    /// published them (this node: the holder).
    outcomes: Arc<Outcomes>,
    /// Devices and their commands.
    devices: Arc<crate::devices::Devices>,
    /// A device's contact is recorded from records no older than this (ms): a partition
    /// rebuilt from an old log does not reconnect its devices in the past.
    contact_window_ms: i64,
    /// The registry's device ids by partition, as last listed, and when: a snapshot round of
    /// every partition lists the devices once, not once per partition.
    device_ids: parking_lot::Mutex<Option<DevicesListed>>,
    /// Per partition, recent (the store's applied sequence after a batch, the batch's last log
    /// position), oldest first: maps the feed consumers' holds to log positions.
    marks: parking_lot::Mutex<HashMap<u32, std::collections::VecDeque<(u64, u64)>>>,
}

impl StoreApply {
    /// Applies into `engine`, for a cluster of `partitions` partitions.
    pub fn new(
        engine: Arc<meterstream_storage::Engine>,
        partitions: u32,
        outcomes: Arc<Outcomes>,
        devices: Arc<crate::devices::Devices>,
        contact_window_ms: i64,
    ) -> StoreApply {
        StoreApply {
            engine,
            partitions,
            outcomes,
            devices,
            contact_window_ms,
            device_ids: parking_lot::Mutex::new(None),
            marks: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    fn apply_one(&self, partition: u32, sequence: u64, record: LogRecord) -> Result<(), String> {
        let registry = &self.devices.registry;
        match record {
            LogRecord::Points {
                now,
                groups,
                address,
            } => {
                let mut devices: Vec<String> = Vec::new();
                for g in &groups {
                    let d = meterstream_storage::path::device_id(&g.stream);
                    if !devices.iter().any(|x| x == d) {
                        devices.push(d.to_string());
                    }
                }
                let out = self.engine.write(groups, now).map_err(|e| e.to_string())?;
                if !out.errors.is_empty() {
                    // Only what depends on the stream's stored type gets here (the rest was
                    // refused before publishing); the log keeps the batch either way.
                    tracing::warn!(
                        partition,
                        refused = out.errors.len(),
                        first = %out.errors[0].error,
                        "points refused when applied"
                    );
                }
                if out.stored > 0
                    && meterstream_storage::time::now_ms() - now < self.contact_window_ms
                {
                    for d in devices {
                        if let Err(e) = self.devices.seen(&d, address.as_deref(), now) {
                            tracing::error!(device = %d, "recording contact: {e}");
                        }
                    }
                }
            }
            LogRecord::PutStream { path, update, now } => {
                let r = self.engine.put_stream(&path, update, now).map(|_| 0);
                self.outcomes.put(sequence, r);
            }
            LogRecord::DeleteStream { path } => {
                let r = self.engine.delete_stream(&path).map(|()| 0);
                self.outcomes.put(sequence, r);
            }
            LogRecord::DeleteHistory { path, from, to } => {
                let r = self.engine.delete_history(&path, from, to);
                self.outcomes.put(sequence, r);
            }
            LogRecord::CommandCreate {
                device,
                command,
                parameters,
                lifetime,
                now,
            } => {
                let c = Command::queued(sequence, &device, &command, parameters, lifetime, now);
                registry.insert_command(&c).map_err(|e| e.to_string())?;
                self.devices.wake(&device);
            }
            LogRecord::CommandUpdate {
                device,
                id,
                status,
                result,
                now,
            } => {
                registry
                    .update_command(&device, id, now, &mut |c| {
                        crate::devices::change_command(c, status, result.clone())
                    })
                    .map_err(|e| e.to_string())?;
                self.devices.wake(&device);
            }
        }
        Ok(())
    }
}

/// What applying the last records came to, by sequence, for the requests that published them
/// and wait on this node; the oldest are dropped past a bound.
pub struct Recent<T> {
    keep: usize,
    map: parking_lot::Mutex<BTreeMap<u64, T>>,
}

impl<T> Recent<T> {
    /// Keeping at most `keep`.
    pub fn new(keep: usize) -> Recent<T> {
        Recent {
            keep,
            map: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    /// Records what `sequence` came to.
    pub fn put(&self, sequence: u64, outcome: T) {
        let mut m = self.map.lock();
        m.insert(sequence, outcome);
        while m.len() > self.keep {
            m.pop_first();
        }
    }

    /// What `sequence` came to, once.
    pub fn take(&self, sequence: u64) -> Option<T> {
        self.map.lock().remove(&sequence)
    }
}

/// What applying stream changes came to: a count of points deleted, or the store's refusal.
pub type Outcomes = Recent<meterstream_storage::Result<u64>>;

/// The store of a cluster node: reads from the node's own engine (requests for one stream are
/// routed to the partition's holder first); changes to streams go through the partition's log,
/// and answer with what applying them came to here, at the holder.
pub struct ClusterStore {
    /// The node's engine.
    pub inner: Arc<dyn Store>,
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Outcomes of applied changes, shared with [`StoreApply`].
    pub outcomes: Arc<Outcomes>,
}

impl ClusterStore {
    /// Whether this node holds `path`'s partition (applied, or catching up with its log).
    fn holds(&self, path: &str) -> bool {
        let p = self
            .cluster
            .node
            .partition_of(meterstream_storage::path::device_id(path));
        matches!(self.cluster.node.route(p), Route::Local | Route::Rebuilding)
    }

    /// Logs `record`, a change of stream `path`, and gives what applying it came to and the
    /// stream's record after it. Requests naming the stream in their path are routed to its
    /// holder, so this runs there; a body naming streams of several devices (Digi's
    /// `POST/PUT /ws/DataStream`) reaches the others' holders through the log and a question
    /// ([`crate::cluster_holder`]).
    fn change(
        &self,
        path: &str,
        record: LogRecord,
    ) -> meterstream_storage::Result<(u64, Option<meterstream_storage::StreamInfo>)> {
        meterstream_storage::path::validate_path(path)?;
        let device = meterstream_storage::path::device_id(path);
        let retypes = matches!(
            record,
            LogRecord::PutStream { .. } | LogRecord::DeleteStream { .. }
        );
        let r = self.change_logged(path, device, record);
        if retypes {
            // Every node forgets the stream's type; the next batch asks its holder again. (Also
            // after a failure: the change may have been logged, and be applied later.)
            self.cluster.types.forget(path);
            let topic = crate::cluster_types::FORGET;
            if let Err(e) = self.cluster.node.broadcast(topic, path.as_bytes().to_vec()) {
                tracing::warn!(error = %e, stream = path, "broadcasting a changed type");
            }
        }
        r
    }

    fn change_logged(
        &self,
        path: &str,
        device: &str,
        record: LogRecord,
    ) -> meterstream_storage::Result<(u64, Option<meterstream_storage::StreamInfo>)> {
        let unavailable = |e: ApiError| StorageError::Io {
            path: format!("nats:{path}").into(),
            source: std::io::Error::other(e.to_string()),
        };
        if self.holds(path) {
            let seq = self.cluster.record(device, &record).map_err(unavailable)?;
            let n = self.outcomes.take(seq).unwrap_or(Ok(0))?;
            return Ok((n, self.inner.stream(path).ok()));
        }
        let p = self.cluster.node.partition_of(device);
        let body = rmp_serde::to_vec(&record).map_err(|e| StorageError::Corrupt {
            what: "a log record",
            message: e.to_string(),
        })?;
        let seq = self.cluster.node.publish_one(p, body.into()).map_err(|e| {
            unavailable(ApiError::Unavailable {
                message: format!("the cluster's log did not acknowledge the change: {e}"),
                retry_after: 1,
            })
        })?;
        let q = crate::cluster_holder::ChangeQuestion {
            sequence: seq,
            path: path.to_string(),
        };
        let q = rmp_serde::to_vec(&q).map_err(|e| StorageError::Corrupt {
            what: "a question",
            message: e.to_string(),
        })?;
        self.ask_holder(crate::cluster_holder::CHANGE, p, q, path)
    }

    /// Asks the holder of partition `p` a question about stream `path`.
    fn ask_holder(
        &self,
        kind: &str,
        p: u32,
        body: Vec<u8>,
        path: &str,
    ) -> meterstream_storage::Result<(u64, Option<meterstream_storage::StreamInfo>)> {
        let wait = crate::cluster_holder::APPLY_WAIT + Duration::from_secs(2);
        let answer = self
            .cluster
            .node
            .ask(kind, vec![(p, body)], wait)
            .pop()
            .unwrap_or_else(|| {
                Err(meterstream_cluster::ask::AskError::Failed {
                    partition: p,
                    message: "no answer".into(),
                })
            })
            .map_err(|e| StorageError::Io {
                path: format!("nats:{path}").into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        crate::cluster_holder::decode(&answer)
    }
}

impl Store for ClusterStore {
    /// Through the partitions' logs, as every write of a cluster node (`ingest::write_groups`
    /// adds the client's idempotency key and address).
    fn write(&self, groups: Vec<GroupIn>, now: i64) -> meterstream_storage::Result<WriteOutcome> {
        self.cluster
            .publish(groups, now, None, None)
            .map_err(|e| StorageError::Io {
                path: "nats:points".into(),
                source: std::io::Error::other(e.to_string()),
            })
    }
    /// From this node's store when it holds the stream's partition, else from its holder.
    fn stream(&self, path: &str) -> meterstream_storage::Result<meterstream_storage::StreamInfo> {
        if self.holds(path) {
            return self.inner.stream(path);
        }
        meterstream_storage::path::validate_path(path)?;
        let p = self
            .cluster
            .node
            .partition_of(meterstream_storage::path::device_id(path));
        let (_, info) = self.ask_holder(
            crate::cluster_holder::STREAM,
            p,
            path.as_bytes().to_vec(),
            path,
        )?;
        info.ok_or_else(|| StorageError::StreamNotFound {
            path: path.to_string(),
        })
    }
    fn put_stream(
        &self,
        path: &str,
        update: meterstream_storage::stream::StreamUpdate,
        now: i64,
    ) -> meterstream_storage::Result<meterstream_storage::StreamInfo> {
        let record = LogRecord::PutStream {
            path: path.to_string(),
            update,
            now,
        };
        let (_, info) = self.change(path, record)?;
        info.ok_or_else(|| StorageError::StreamNotFound {
            path: path.to_string(),
        })
    }
    fn delete_stream(&self, path: &str) -> meterstream_storage::Result<()> {
        let record = LogRecord::DeleteStream {
            path: path.to_string(),
        };
        self.change(path, record).map(|_| ())
    }
    fn list_streams(
        &self,
        filter: &meterstream_storage::StreamFilter,
        order: meterstream_storage::query::Order,
        limit: usize,
        cursor: Option<&meterstream_storage::query::Cursor>,
    ) -> meterstream_storage::Result<
        meterstream_storage::query::Page<meterstream_storage::StreamInfo>,
    > {
        self.inner.list_streams(filter, order, limit, cursor)
    }
    fn matching_streams(
        &self,
        pattern: &str,
        after: Option<&str>,
        limit: usize,
    ) -> meterstream_storage::Result<Vec<(String, StreamType)>> {
        self.inner.matching_streams(pattern, after, limit)
    }
    fn children(
        &self,
        prefix: &str,
        limit: usize,
        cursor: Option<&meterstream_storage::query::Cursor>,
    ) -> meterstream_storage::Result<
        meterstream_storage::query::Page<meterstream_storage::query::Child>,
    > {
        self.inner.children(prefix, limit, cursor)
    }
    fn history(
        &self,
        path: &str,
        query: &meterstream_storage::query::HistoryQuery,
    ) -> meterstream_storage::Result<meterstream_storage::query::Page<meterstream_storage::DataPoint>>
    {
        self.inner.history(path, query)
    }
    fn rollups(
        &self,
        path: &str,
        query: &meterstream_storage::store::RollupQuery,
    ) -> meterstream_storage::Result<
        meterstream_storage::query::Page<meterstream_storage::rollup::RollupValue>,
    > {
        self.inner.rollups(path, query)
    }
    fn delete_history(&self, path: &str, from: i64, to: i64) -> meterstream_storage::Result<u64> {
        let record = LogRecord::DeleteHistory {
            path: path.to_string(),
            from,
            to,
        };
        self.change(path, record).map(|(n, _)| n)
    }
    fn sweep_retention(&self, now: i64) -> meterstream_storage::Result<u64> {
        self.inner.sweep_retention(now)
    }
    fn stats(&self) -> meterstream_storage::store::StoreStats {
        self.inner.stats()
    }
    fn metrics(&self) -> &meterstream_storage::metrics::StoreMetrics {
        self.inner.metrics()
    }
    fn feed(
        &self,
        after: u64,
        max_points: usize,
    ) -> meterstream_storage::Result<meterstream_storage::feed::Feed> {
        self.inner.feed(after, max_points)
    }
    fn feed_hold(&self, consumer: &str, seq: Option<u64>) -> meterstream_storage::Result<()> {
        self.inner.feed_hold(consumer, seq)
    }
    fn feed_consumer(&self, consumer: &str) -> Option<u64> {
        self.inner.feed_consumer(consumer)
    }
    fn applied_seq(&self) -> u64 {
        self.inner.applied_seq()
    }
    fn on_applied(&self, f: Box<dyn Fn(u64) + Send + Sync>) {
        self.inner.on_applied(f)
    }
    fn close(&self) {
        self.inner.close()
    }
}

/// Device ids by partition, and when they were listed.
pub type DevicesListed = (std::time::Instant, HashMap<u32, Vec<String>>);

/// Kinds of a partition snapshot's pieces (docs/scale-out.md, "Snapshots"); a stream's are
/// named by its path, a device's by its id.
mod piece {
    /// A stream's record.
    pub const RECORD: u8 = 0;
    /// One of a stream's chunks (the open head among them).
    pub const CHUNK: u8 = 1;
    /// A completed UTC day's 15-minute rollups of a stream.
    pub const DAY: u8 = 2;
    /// A device's record and its commands.
    pub const DEVICE: u8 = 3;
}

impl StoreApply {
    fn in_partition(&self, partition: u32) -> impl Fn(&str) -> bool + '_ {
        move |device: &str| {
            meterstream_cluster::partition::of_device(device, self.partitions) == partition
        }
    }

    /// The ids of the registry's devices in `partition`, from a listing at most 30 s old.
    fn devices_in(&self, partition: u32) -> Result<Vec<String>, String> {
        let mut cache = self.device_ids.lock();
        if cache
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > std::time::Duration::from_secs(30))
        {
            let mut by: HashMap<u32, Vec<String>> = HashMap::new();
            for d in self
                .devices
                .registry
                .all_devices()
                .map_err(|e| e.to_string())?
            {
                let p = meterstream_cluster::partition::of_device(&d.id, self.partitions);
                by.entry(p).or_default().push(d.id);
            }
            *cache = Some((std::time::Instant::now(), by));
        }
        Ok(cache
            .as_ref()
            .and_then(|(_, by)| by.get(&partition).cloned())
            .unwrap_or_default())
    }

    /// Records that the store holds the partition through log position `log` as of its
    /// applied sequence now.
    fn mark(&self, partition: u32, log: u64) {
        let local = self.engine.applied_seq();
        let mut marks = self.marks.lock();
        let m = marks.entry(partition).or_default();
        m.push_back((local, log));
        while m.len() > 4_096 {
            m.pop_front();
        }
    }

    /// Merges a device piece into the registry: the record if it is new here or was seen
    /// later, each command unless this node's copy of it is already final.
    fn restore_device(&self, bytes: &[u8]) -> Result<(), String> {
        let (d, commands): (meterstream_storage::registry::Device, Vec<Command>) =
            rmp_serde::from_slice(bytes).map_err(|e| format!("a device piece: {e}"))?;
        let registry = &self.devices.registry;
        let err = |e: meterstream_storage::StorageError| e.to_string();
        match registry.device(&d.id).map_err(err)? {
            None => registry.put_device(&d).map_err(err)?,
            Some(mut local) if d.last_seen > local.last_seen => {
                local.last_seen = d.last_seen;
                local.last_address = d.last_address.clone();
                registry.put_device(&local).map_err(err)?;
            }
            Some(_) => {}
        }
        for c in &commands {
            if !registry.insert_command(c).map_err(err)? {
                registry
                    .update_command(&c.device_id, c.id, c.updated, &mut |local| {
                        if !local.status.is_final() {
                            *local = c.clone();
                        }
                        Ok(())
                    })
                    .map_err(err)?;
            }
        }
        if !commands.is_empty() {
            self.devices.wake(&d.id);
        }
        Ok(())
    }
}

impl Apply for StoreApply {
    fn snapshot(
        &self,
        partition: u32,
        sink: &mut dyn meterstream_cluster::node::Sink,
    ) -> Result<(), String> {
        use meterstream_cluster::snapshot::{Piece, PieceKey};
        let keep = self.in_partition(partition);
        let key = |name: &str, kind: u8, ts: i64| PieceKey {
            name: name.to_string(),
            kind,
            ts,
        };
        let paths = self.engine.paths_where(&keep);
        for path in &paths {
            let path = path.as_str();
            let pieces = {
                let mut known = |ts: i64, v: &[u8]| sink.known(&key(path, piece::CHUNK, ts), v);
                self.engine
                    .export_stream(path, &mut known)
                    .map_err(|e| e.to_string())?
            };
            let Some(pieces) = pieces else {
                continue; // deleted meanwhile
            };
            sink.emit(Piece {
                key: key(path, piece::RECORD, 0),
                version: Vec::new(),
                bytes: Some(pieces.record.into()),
            })?;
            for c in pieces.chunks {
                sink.emit(Piece {
                    key: key(path, piece::CHUNK, c.ts),
                    version: c.version,
                    bytes: c.bytes.map(Into::into),
                })?;
            }
            for (day, b) in pieces.days {
                sink.emit(Piece {
                    key: key(path, piece::DAY, day),
                    version: Vec::new(),
                    bytes: Some(b.into()),
                })?;
            }
        }
        let registry = &self.devices.registry;
        // Streams' devices, and devices listed (a device with commands and no stream yet).
        let mut ids: Vec<String> = self.devices_in(partition)?;
        for path in &paths {
            ids.push(meterstream_storage::path::device_id(path).to_string());
        }
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let Some(d) = registry.device(&id).map_err(|e| e.to_string())? else {
                continue;
            };
            let mut commands = Vec::new();
            loop {
                let after = commands.last().map_or(0, |c: &Command| c.id);
                let page = registry
                    .commands(&d.id, after, 1_000)
                    .map_err(|e| e.to_string())?;
                let more = page.len() == 1_000;
                commands.extend(page);
                if !more {
                    break;
                }
            }
            let bytes = rmp_serde::to_vec_named(&(&d, &commands)).map_err(|e| e.to_string())?;
            sink.emit(Piece {
                key: key(&d.id, piece::DEVICE, 0),
                version: Vec::new(),
                bytes: Some(bytes.into()),
            })?;
        }
        Ok(())
    }

    fn restore(
        &self,
        partition: u32,
        step: meterstream_cluster::node::Restore<'_>,
    ) -> Result<(), String> {
        use meterstream_cluster::node::Restore;
        match step {
            Restore::Begin => {
                // What this node still holds of the partition, from an earlier hold, goes.
                for path in self.engine.paths_where(&self.in_partition(partition)) {
                    match self.engine.delete_stream(&path) {
                        Ok(()) | Err(meterstream_storage::StorageError::StreamNotFound { .. }) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            }
            Restore::Pieces(pieces) => {
                // Each name's pieces are consecutive: a stream's record, chunks and days (its
                // path), or a device's record (its id).
                let mut streams = Vec::new();
                let mut devices = Vec::new();
                let mut k = 0;
                while k < pieces.len() {
                    let name = pieces[k].0.name.as_str();
                    let n = pieces[k..]
                        .iter()
                        .take_while(|(key, _)| key.name == name)
                        .count();
                    let group = &pieces[k..k + n];
                    let of = |kind: u8| group.iter().filter(move |(key, _)| key.kind == kind);
                    if let Some((_, record)) = of(piece::RECORD).next() {
                        streams.push(meterstream_storage::engine::pieces::StreamRestore {
                            path: name,
                            record,
                            chunks: of(piece::CHUNK).map(|(_, b)| &b[..]).collect(),
                            days: of(piece::DAY).map(|(key, b)| (key.ts, &b[..])).collect(),
                        });
                    }
                    devices.extend(of(piece::DEVICE).map(|(_, b)| b));
                    k += n;
                }
                self.engine
                    .restore_streams(&streams)
                    .map_err(|e| format!("restoring streams: {e}"))?;
                for b in devices {
                    self.restore_device(b)?;
                }
                Ok(())
            }
            Restore::End { covers } => {
                self.engine.flush().map_err(|e| e.to_string())?;
                // What was restored is not in the feed: no consumer waits for it.
                self.marks.lock().remove(&partition);
                self.mark(partition, covers);
                Ok(())
            }
        }
    }

    fn delivered(&self, partition: u32, applied: u64) -> Option<u64> {
        let hold = self.engine.feed_min_hold()?;
        let mut marks = self.marks.lock();
        let m = marks.entry(partition).or_default();
        if m.is_empty() {
            // Nothing applied since this process started: all the partition holds is in the
            // store up to its applied sequence now.
            m.push_back((self.engine.applied_seq(), applied));
        }
        // The newest batch every consumer has taken; before the oldest mark, nothing known.
        Some(
            m.iter()
                .rev()
                .find(|(local, _)| *local <= hold)
                .map_or(0, |(_, log)| *log),
        )
    }

    fn apply(&self, partition: u32, entries: &[(u64, bytes::Bytes)]) -> Result<(), String> {
        for (sequence, body) in entries {
            match rmp_serde::from_slice::<LogRecord>(body) {
                Ok(r) => self.apply_one(partition, *sequence, r)?,
                Err(e) => {
                    // Not retried: the same bytes would fail again and stop the partition.
                    tracing::error!(partition, sequence, error = %e, "a log record could not be read; skipped");
                }
            }
        }
        if let Some((last, _)) = entries.last() {
            self.mark(partition, *last);
        }
        Ok(())
    }
}

impl Cluster {
    /// Connects the node (it takes partitions once [`Node::run`] is called); `timeout` bounds
    /// forwarded requests. Blocking.
    pub fn connect(
        cfg: meterstream_cluster::node::NodeConfig,
        timeout: Duration,
    ) -> Result<Cluster, meterstream_cluster::ClusterError> {
        let node = Arc::new(Node::connect(cfg)?);
        let client = || {
            reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| meterstream_cluster::ClusterError::Nats {
                    what: "building the HTTP client",
                    message: e.to_string(),
                })
        };
        Ok(Cluster {
            node,
            http: client()?,
            fan_http: client()?,
            types_unchecked: std::sync::atomic::AtomicU64::new(0),
            types: crate::cluster_types::TypeCache::default(),
            types_asked: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Checks `groups` as far as no stored state is needed, publishes the good points by
    /// partition, and returns once JetStream acknowledged them all. `key` (a client's
    /// `Idempotency-Key`) names the parts, so a retried batch is stored once. Blocking.
    pub fn publish(
        &self,
        groups: Vec<GroupIn>,
        now: i64,
        key: Option<&str>,
        address: Option<&str>,
    ) -> Result<WriteOutcome, ApiError> {
        let (types, fresh) = self.settle_types(&groups, now);
        let (parts, errors, stored) = precheck(groups, now, |d| self.node.partition_of(d), &types);
        // A type a holder settled for a stream it does not store yet (reserved there) is the
        // stream's once this batch, which creates it, is in the log: then it is cached too.
        let created: Vec<(String, StreamType)> = if fresh.is_empty() {
            Vec::new()
        } else {
            parts
                .values()
                .flatten()
                .filter_map(|g| fresh.get(&g.stream).map(|t| (g.stream.clone(), *t)))
                .collect()
        };
        let mut out = Vec::with_capacity(parts.len());
        for (p, groups) in parts {
            let address = address.map(str::to_string);
            let body = rmp_serde::to_vec(&LogRecord::Points {
                now,
                groups,
                address,
            })
            .map_err(|e| ApiError::Internal(format!("encoding a log record: {e}")))?;
            out.push((p, key.map(|k| format!("{k}:{p}")), bytes::Bytes::from(body)));
        }
        self.node.publish(out).map_err(|e| ApiError::Unavailable {
            message: format!("the cluster's log did not acknowledge the batch: {e}"),
            retry_after: 1,
        })?;
        let at = std::time::Instant::now();
        for (path, t) in created {
            self.types.put(path, t, at);
        }
        Ok(WriteOutcome { stored, errors })
    }

    /// The type of each group's stream (by index), as its partition's holder settles it
    /// ([`crate::cluster_types`]), from this node's cache when it has it. A partition whose
    /// holder does not answer within [`TYPES_WAIT`] (it is moving) is left out (`None`): its
    /// points are checked against the types their values imply, and the holder refuses at
    /// apply what does not fit. Also gives the types settled for streams not stored yet (by
    /// path), which [`Cluster::publish`] caches once the batch that creates them is logged.
    /// Blocking.
    fn settle_types(
        &self,
        groups: &[GroupIn],
        now: i64,
    ) -> (Vec<Option<StreamType>>, HashMap<String, StreamType>) {
        use crate::cluster_types::{Answer, Question};
        let mut fresh = HashMap::new();
        let at = std::time::Instant::now();
        let mut out = self
            .types
            .get_all(groups.iter().map(|g| g.stream.as_str()), at);
        // The others, once each, by partition: (question, the groups each stream is in).
        let mut asked: BTreeMap<u32, (Question, Vec<Vec<usize>>)> = BTreeMap::new();
        let mut seen: HashMap<&str, (u32, usize)> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if let Some((p, k)) = seen.get(g.stream.as_str()) {
                if let Some((_, at)) = asked.get_mut(p) {
                    at[*k].push(i);
                }
                continue;
            }
            if meterstream_storage::path::validate_path(&g.stream).is_err() {
                continue;
            }
            // What the group would create the stream with, as the engine decides it: its
            // type, given or implied, if some point fits it.
            let proposed = g
                .stream_type
                .or_else(|| g.points.iter().find_map(|p| StreamType::infer(&p.value)))
                .filter(|&ty| {
                    g.points.iter().any(|p| {
                        meterstream_storage::time::check_range(p.timestamp.unwrap_or(now)).is_ok()
                            && p.value.clone().into_value(ty).is_ok()
                    })
                });
            let p = self
                .node
                .partition_of(meterstream_storage::path::device_id(&g.stream));
            let (q, at) = asked.entry(p).or_default();
            seen.insert(&g.stream, (p, q.len()));
            q.push((g.stream.clone(), proposed));
            at.push(vec![i]);
        }
        if asked.is_empty() {
            return (out, fresh);
        }
        let mut questions = Vec::with_capacity(asked.len());
        for (p, (q, _)) in &asked {
            match rmp_serde::to_vec(q) {
                Ok(body) => questions.push((*p, body)),
                Err(e) => tracing::error!(error = %e, "encoding a question about types"),
            }
        }
        self.types_asked
            .fetch_add(questions.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let answers = self
            .node
            .ask(crate::cluster_types::KIND, questions, TYPES_WAIT);
        for ((_, (q, where_)), a) in asked.into_iter().zip(answers) {
            let settled = a
                .map_err(|e| e.to_string())
                .and_then(|body| rmp_serde::from_slice::<Answer>(&body).map_err(|e| e.to_string()));
            match settled {
                Ok(types) if types.len() == q.len() => {
                    for (((path, _), t), groups) in q.into_iter().zip(types).zip(where_) {
                        let Some((t, stored)) = t else { continue };
                        if stored {
                            self.types.put(path, t, at);
                        } else {
                            fresh.insert(path, t);
                        }
                        for i in groups {
                            out[i] = Some(t);
                        }
                    }
                }
                Ok(_) => tracing::error!("an answer about types of another length"),
                Err(e) => {
                    self.types_unchecked
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(error = %e, "types not settled by the holder");
                }
            }
        }
        (out, fresh)
    }

    /// Questions about types this node put to holders (its own included), since it started.
    pub fn types_asked(&self) -> u64 {
        self.types_asked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Batches published with types checked only against what their values imply, since
    /// the node started.
    pub fn types_unchecked(&self) -> u64 {
        self.types_unchecked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Publishes a record of `device`'s partition and waits until this node (its holder) has
    /// applied it; returns its sequence. Blocking.
    pub fn record(&self, device: &str, record: &LogRecord) -> Result<u64, ApiError> {
        let p = self.node.partition_of(device);
        let body = rmp_serde::to_vec(record)
            .map_err(|e| ApiError::Internal(format!("encoding a log record: {e}")))?;
        let seq = self
            .node
            .publish_one(p, body.into())
            .map_err(|e| ApiError::Unavailable {
                message: format!("the cluster's log did not acknowledge the change: {e}"),
                retry_after: 1,
            })?;
        if !self.node.await_applied(p, seq, ROUTE_WAIT) {
            return Err(ApiError::Unavailable {
                message: format!(
                    "the change was logged but device {device:?}'s partition moved before it was \
                     applied here; it will be applied by the new holder"
                ),
                retry_after: 1,
            });
        }
        Ok(seq)
    }

    /// The streams passing `filter` whose partitions this node holds, a page at a time as
    /// [`Store::list_streams`] gives them (the store also keeps partitions it held before).
    /// Blocking.
    pub fn held_streams(
        &self,
        store: &dyn Store,
        filter: &meterstream_storage::StreamFilter,
        order: meterstream_storage::query::Order,
        limit: usize,
        cursor: Option<&meterstream_storage::query::Cursor>,
    ) -> meterstream_storage::Result<
        meterstream_storage::query::Page<meterstream_storage::StreamInfo>,
    > {
        let held = |path: &str| self.holds_device(meterstream_storage::path::device_id(path));
        let mut items = Vec::new();
        let mut cursor = cursor.cloned();
        loop {
            let page = store.list_streams(filter, order, limit.max(100), cursor.as_ref())?;
            let last = page.items.last().map(|s| s.path.clone());
            for s in page.items {
                if !held(&s.path) {
                    continue;
                }
                if items.len() == limit {
                    let key = items
                        .last()
                        .map(|s: &meterstream_storage::StreamInfo| s.path.clone())
                        .unwrap_or_default();
                    return Ok(meterstream_storage::query::Page {
                        items,
                        next: Some(meterstream_storage::query::Cursor::Key { order, key }),
                    });
                }
                items.push(s);
            }
            match (page.next, last) {
                (Some(_), Some(key)) => {
                    cursor = Some(meterstream_storage::query::Cursor::Key { order, key })
                }
                _ => return Ok(meterstream_storage::query::Page { items, next: None }),
            }
        }
    }

    /// The top-level children (one folder per device, and single-segment streams) of the
    /// devices this node holds, a page at a time as [`Store::children`] gives them. Blocking.
    pub fn held_children(
        &self,
        store: &dyn Store,
        limit: usize,
        cursor: Option<&meterstream_storage::query::Cursor>,
    ) -> meterstream_storage::Result<meterstream_storage::query::Page<meterstream_storage::Child>>
    {
        use meterstream_storage::Child;
        let name = |c: &Child| match c {
            Child::Folder { name, .. } => (name.clone(), 1),
            Child::Stream(info) => (info.path.clone(), 0),
        };
        let held = |device: &str| self.holds_device(device);
        let key = |(n, k): (String, u8)| meterstream_storage::query::Cursor::Key {
            order: meterstream_storage::query::Order::Asc,
            key: format!("{n}\u{1}{k}"),
        };
        let mut items: Vec<Child> = Vec::new();
        let mut cursor = cursor.cloned();
        loop {
            let page = store.children("", limit.max(100), cursor.as_ref())?;
            let last = page.items.last().map(name);
            for c in page.items {
                if !held(&name(&c).0) {
                    continue;
                }
                if items.len() == limit {
                    let next = items.last().map(|c| key(name(c)));
                    return Ok(meterstream_storage::query::Page { items, next });
                }
                items.push(c);
            }
            match (page.next, last) {
                (Some(_), Some(l)) => cursor = Some(key(l)),
                _ => return Ok(meterstream_storage::query::Page { items, next: None }),
            }
        }
    }

    /// A page of the whole cluster: this node's part (`own`, a page as `wire::list` makes it)
    /// and every other live node's, asked with the same query, merged in the order of `key`
    /// (which also gives the cursor after the last item) and cut at `limit`. 503 while a
    /// partition has no holder (its items would be missing) or a node does not answer.
    pub async fn gather(
        &self,
        req: &actix_web::HttpRequest,
        own: serde_json::Value,
        key: fn(&serde_json::Value) -> String,
        order: meterstream_storage::query::Order,
        limit: usize,
    ) -> Result<serde_json::Value, ApiError> {
        let cursor = |key: String| meterstream_storage::query::Cursor::Key { order, key }.encode();
        self.gather_with(req, own, key, order, limit, cursor).await
    }

    /// [`Cluster::gather`] for a listing whose cursor is `cursor(key of the last item)`.
    pub async fn gather_with(
        &self,
        req: &actix_web::HttpRequest,
        own: serde_json::Value,
        key: fn(&serde_json::Value) -> String,
        order: meterstream_storage::query::Order,
        limit: usize,
        cursor: impl Fn(String) -> String,
    ) -> Result<serde_json::Value, ApiError> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut pages = vec![own];
        pages.extend(self.ask_others(path, req.headers()).await?);
        let more = pages.iter().any(|p| p.get("cursor").is_some());
        let mut items: Vec<serde_json::Value> = pages
            .into_iter()
            .filter_map(
                |mut p| match p.get_mut("list").map(serde_json::Value::take) {
                    Some(serde_json::Value::Array(a)) => Some(a),
                    _ => None,
                },
            )
            .flatten()
            .collect();
        items.sort_by_key(key);
        if order == meterstream_storage::query::Order::Desc {
            items.reverse();
        }
        let more = more || items.len() > limit;
        items.truncate(limit);
        let next = match items.last() {
            Some(last) if more => Some(cursor(key(last))),
            _ => None,
        };
        let mut out = serde_json::json!({"count": items.len(), "size": limit});
        if let Some(c) = next {
            out["cursor"] = c.into();
        }
        out["list"] = items.into();
        Ok(out)
    }

    /// Asks every other live node for `path` (with the query), as a request forwarded from
    /// this one with the caller's credentials, and gives their JSON answers. 503 while a
    /// partition has no holder, or when a node does not answer: an answer missing some
    /// partitions' items would look complete. Runs on the node's runtime.
    pub async fn ask_others(
        &self,
        path: &str,
        headers: &actix_web::http::header::HeaderMap,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let task = self.asking(path, headers);
        self.node
            .handle()
            .spawn(task)
            .await
            .map_err(|e| ApiError::Internal(format!("asking the other nodes: {e}")))?
    }

    /// [`Cluster::ask_others`] from a blocking thread.
    pub fn ask_others_blocking(
        &self,
        path: &str,
        headers: &actix_web::http::header::HeaderMap,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        self.node.handle().block_on(self.asking(path, headers))
    }

    fn asking(
        &self,
        path: &str,
        headers: &actix_web::http::header::HeaderMap,
    ) -> impl std::future::Future<Output = Result<Vec<serde_json::Value>, ApiError>> + Send + 'static
    {
        let owners = self.node.owners();
        let others: Vec<_> = self
            .node
            .members()
            .into_iter()
            .filter(|m| m.id != self.node.id())
            .collect();
        let creds: Vec<(String, Vec<u8>)> = headers
            .iter()
            .filter(|(name, _)| {
                matches!(
                    name.as_str(),
                    "authorization" | "x-api-key-id" | "x-api-key-secret"
                )
            })
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let (http, me, path) = (
            self.fan_http.clone(),
            self.node.id().to_string(),
            path.to_string(),
        );
        async move { ask(http, me, owners, others, path, creds).await }
    }

    /// Whether this node holds `device`'s partition (and has applied it).
    pub fn holds_device(&self, device: &str) -> bool {
        self.node.route(self.node.partition_of(device)) == Route::Local
    }

    /// Forwards `req` (with `body`) to the node at `base` and gives its answer back.
    async fn forward(
        &self,
        req: &ServiceRequest,
        body: bytes::Bytes,
        base: &str,
    ) -> Result<HttpResponse, ApiError> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut r = self
            .http
            .request(method, format!("{}{path}", base.trim_end_matches('/')))
            .header(HOP_HEADER, self.node.id());
        for (name, value) in req.headers() {
            let n = name.as_str();
            if matches!(
                n,
                "authorization" | "accept" | "content-type" | "x-api-key-id" | "x-api-key-secret"
            ) {
                r = r.header(n, value.as_bytes());
            }
        }
        if let Some(ip) = req.peer_addr().map(|a| a.ip()) {
            r = r.header(CLIENT_ADDRESS_HEADER, ip.to_string());
        }
        if !body.is_empty() {
            r = r.body(body);
        }
        let unreachable = |e: reqwest::Error| ApiError::Unavailable {
            message: format!("the node holding this stream did not answer: {e}"),
            retry_after: 1,
        };
        let res = r.send().await.map_err(unreachable)?;
        let status = actix_web::http::StatusCode::from_u16(res.status().as_u16())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut answer = HttpResponse::build(status);
        for (name, value) in res.headers() {
            if matches!(name.as_str(), "content-type" | "retry-after" | "link") {
                answer.insert_header((name.as_str(), value.as_bytes()));
            }
        }
        let body = res.bytes().await.map_err(unreachable)?;
        Ok(answer.body(body))
    }
}

/// `GET /ws/v1/cluster`: this node's view of the cluster (for operators and tests): the live
/// nodes, who holds each partition, what this node has applied. On a single node,
/// `{"mode": "single"}`.
pub async fn status(
    req: actix_web::HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = crate::auth::principal(&req)?;
    who.require(crate::auth::Scope::Read)?;
    let Some(c) = &st.cluster else {
        return Ok(HttpResponse::Ok().json(serde_json::json!({"mode": "single"})));
    };
    let n = &c.node;
    let positions = n.positions();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "mode": "cluster",
        "node": n.id(),
        "partitions": n.partitions(),
        "members": n.members().iter().map(|m| serde_json::json!({"id": m.id, "url": m.url}))
            .collect::<Vec<_>>(),
        "owners": n.owners(),
        "local": n.local_partitions(),
        "positions": positions,
        "events": n.events_position(),
        "types_unchecked": c.types_unchecked(),
        "types_asked": c.types_asked(),
        "snapshots": n.snapshots().iter().map(|i| serde_json::json!({
            "partition": i.partition,
            "covers": i.covers,
            "taken": i.taken,
            "pieces": i.pieces,
            "bytes": i.bytes,
        })).collect::<Vec<_>>(),
    })))
}

/// Asks each of `others` for `path` with the caller's credentials `creds` (see
/// [`Cluster::ask_others`]).
async fn ask(
    http: reqwest::Client,
    me: String,
    owners: Vec<Option<String>>,
    others: Vec<meterstream_cluster::members::Member>,
    path: String,
    creds: Vec<(String, Vec<u8>)>,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let unavailable = |message: String| ApiError::Unavailable {
        message,
        retry_after: 1,
    };
    if let Some(p) = owners.iter().position(Option::is_none) {
        return Err(unavailable(format!(
            "partition {p} is moving between nodes; the answer would miss its items"
        )));
    }
    let asks = others.iter().map(|m| {
        let mut r = http
            .get(format!("{}{path}", m.url.trim_end_matches('/')))
            .header(HOP_HEADER, me.as_str());
        for (name, value) in &creds {
            r = r.header(name.as_str(), value.as_slice());
        }
        async move {
            let res = r.send().await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("answered {}", res.status()));
            }
            res.json::<serde_json::Value>()
                .await
                .map_err(|e| e.to_string())
        }
    });
    let mut out = Vec::with_capacity(others.len());
    for (m, r) in others
        .iter()
        .zip(futures_util::future::join_all(asks).await)
    {
        out.push(r.map_err(|e| unavailable(format!("node {} did not answer: {e}", m.id)))?);
    }
    Ok(out)
}

/// The order and cursor key of a stream inventory item: its path.
pub fn stream_key(v: &serde_json::Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// The order and cursor key of a folder listing item: its name, a stream before a folder of
/// the same name (the store's own `name\u{1}kind`).
pub fn folder_key(v: &serde_json::Value) -> String {
    let kind = if v["kind"] == "stream" { 0 } else { 1 };
    format!("{}\u{1}{kind}", v["name"].as_str().unwrap_or_default())
}

/// Refuses, item by item, what does not fit a stream's settled type (`types`, by group: from
/// its holder; a group without one is checked against the type it gives or implies), and
/// splits the rest by partition, each group carrying the type it was checked against. Returns
/// the parts, the errors and the number of points kept.
fn precheck(
    groups: Vec<GroupIn>,
    now: i64,
    partition_of: impl Fn(&str) -> u32,
    types: &[Option<StreamType>],
) -> (BTreeMap<u32, Vec<GroupIn>>, Vec<ItemError>, usize) {
    let mut parts: BTreeMap<u32, Vec<GroupIn>> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut kept = 0;
    for (i, mut g) in groups.into_iter().enumerate() {
        if g.points.is_empty() {
            continue;
        }
        if let Err(error) = meterstream_storage::path::validate_path(&g.stream) {
            let reason = match &error {
                StorageError::InvalidPath { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            errors.extend((0..g.points.len()).map(|k| ItemError {
                index: g.first_index + k,
                error: StorageError::InvalidPath {
                    path: g.stream.clone(),
                    reason: reason.clone(),
                },
            }));
            continue;
        }
        let ty = types.get(i).copied().flatten().or_else(|| {
            g.stream_type
                .or_else(|| g.points.iter().find_map(|p| StreamType::infer(&p.value)))
        });
        g.stream_type = ty;
        let first = g.first_index;
        let stream = g.stream.clone();
        let mut k = 0;
        g.points.retain(|p| {
            let index = first + k;
            k += 1;
            if let Err(error) = meterstream_storage::time::check_range(p.timestamp.unwrap_or(now)) {
                errors.push(ItemError { index, error });
                return false;
            }
            let fits = match ty {
                Some(ty) => p.value.clone().into_value(ty).map(|_| ()),
                None => Err(format!(
                    "cannot infer a stream type from {:?}; give stream_type",
                    p.value
                )),
            };
            if let Err(message) = fits {
                errors.push(ItemError {
                    index,
                    error: StorageError::InvalidValue {
                        stream: stream.clone(),
                        message,
                    },
                });
                return false;
            }
            true
        });
        if g.points.is_empty() {
            continue;
        }
        kept += g.points.len();
        let p = partition_of(meterstream_storage::path::device_id(&g.stream));
        parts.entry(p).or_default().push(g);
    }
    (parts, errors, kept)
}

/// The device whose partition answers this request: reads and changes of one stream, and
/// everything about a device's commands (which the partition's log holds).
fn routed_device(method: &actix_web::http::Method, path: &str) -> Option<String> {
    const ONE_STREAM: [&str; 6] = [
        "/ws/v1/streams/history/",
        "/ws/v1/streams/rollups/",
        "/ws/v1/streams/inventory/",
        "/ws/DataPoint/",
        // A stream and the streams under it: all below one device.
        "/ws/DataStream/",
        // Everything below a device's folder is its holder's.
        "/ws/v1/streams/folders/",
    ];
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    if let Some(rest) = path.strip_prefix("/ws/v1/devices/") {
        // A device's state (connection, history, commands) is kept by its partition's holder.
        let id = match rest.split_once('/') {
            Some((id, tail)) if tail == "commands" || tail.starts_with("commands/") => id,
            Some(("inventory" | "history", id))
                if *method == actix_web::http::Method::GET && !id.contains('/') =>
            {
                id
            }
            // A device's registration and description: recorded by its holder, which also
            // records the contact.
            Some(("inventory", id))
                if *method == actix_web::http::Method::PUT && !id.contains('/') =>
            {
                id
            }
            _ => return None,
        };
        let id = decode(id)?;
        return (!id.is_empty()).then_some(id);
    }
    use actix_web::http::Method;
    // Changes of one stream go to its holder too, which logs them (see `ClusterStore`).
    let write = match *method {
        Method::GET => false,
        Method::PUT | Method::DELETE
            if path.starts_with("/ws/v1/streams/inventory/")
                || path.starts_with("/ws/DataStream/") =>
        {
            true
        }
        Method::POST if path.starts_with("/ws/DataStream/") => true,
        Method::DELETE
            if path.starts_with("/ws/v1/streams/history/")
                || path.starts_with("/ws/DataPoint/") =>
        {
            true
        }
        _ => return None,
    };
    let prefixes: &[&str] = if write {
        &[
            "/ws/v1/streams/inventory/",
            "/ws/DataStream/",
            "/ws/v1/streams/history/",
            "/ws/DataPoint/",
        ]
    } else {
        &ONE_STREAM
    };
    let tail = decode(prefixes.iter().find_map(|p| path.strip_prefix(p))?)?;
    let device = meterstream_storage::path::device_id(&tail);
    // A pattern over every device (`*/*/active_power`) is gathered from every node by its
    // handler; one with a device id is that device's holder's, like a stream.
    (!device.is_empty() && !device.contains('*')).then(|| device.to_string())
}

/// Middleware: sends a query of one stream to the node holding its partition (see the module
/// doc). Everything else, and everything on a single node, passes through.
pub async fn route(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let st = req.app_data::<web::Data<AppState>>().cloned();
    let Some(cluster) = st.as_ref().and_then(|s| s.cluster.clone()) else {
        return next.call(req).await.map(|r| r.map_into_left_body());
    };
    let quick = routed_device(req.method(), req.path());
    // Digi's DataStream writes name their streams in the body: routed when they are one
    // device's.
    let by_body = quick.is_none()
        && matches!(
            *req.method(),
            actix_web::http::Method::POST | actix_web::http::Method::PUT
        )
        && matches!(req.path(), "/ws/DataStream" | "/ws/DataStream/");
    if quick.is_none() && !by_body {
        return next.call(req).await.map(|r| r.map_into_left_body());
    }
    let forwarded = req.headers().contains_key(HOP_HEADER);
    // The body is read here, to be forwarded or handed on.
    let limit = st.as_ref().map_or(16 << 20, |s| s.body_limit);
    let (http, mut payload) = req.into_parts();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut payload).await {
        match chunk {
            Ok(c) if body.len() + c.len() <= limit => body.extend_from_slice(&c),
            Ok(_) => {
                let e = ApiError::TooLarge { limit };
                let res = actix_web::ResponseError::error_response(&e);
                return Ok(ServiceResponse::new(http, res).map_into_right_body());
            }
            Err(e) => {
                let e = ApiError::BadRequest(format!("the body could not be read: {e}"));
                let res = actix_web::ResponseError::error_response(&e);
                return Ok(ServiceResponse::new(http, res).map_into_right_body());
            }
        }
    }
    let body = body.freeze();
    let device = match quick {
        Some(d) => d,
        None => match crate::legacy::one_device_of_streams(&http, &body) {
            Some(d) => d,
            None => {
                let req =
                    ServiceRequest::from_parts(http, actix_web::dev::Payload::from(body.clone()));
                return next.call(req).await.map(|r| r.map_into_left_body());
            }
        },
    };
    let p = cluster.node.partition_of(&device);
    let req = ServiceRequest::from_parts(http, actix_web::dev::Payload::from(body.clone()));
    let deadline = std::time::Instant::now() + ROUTE_WAIT;
    let answer = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match cluster.node.route(p) {
            Route::Local | Route::Rebuilding => match cluster.node.await_local(p, left).await {
                Ok(true) => return next.call(req).await.map(|r| r.map_into_left_body()),
                Ok(false) => {}
                Err(e) => {
                    break Err(ApiError::Unavailable {
                        message: format!("the cluster's log did not answer: {e}"),
                        retry_after: 1,
                    })
                }
            },
            Route::Remote(url) if !forwarded => break cluster.forward(&req, body, &url).await,
            Route::Remote(_) | Route::Unavailable => {}
        }
        if left.is_zero() || forwarded {
            break Err(ApiError::Unavailable {
                message: format!(
                    "partition {p} (device {device:?}) is moving between nodes; retry shortly"
                ),
                retry_after: 1,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let res = match answer {
        Ok(r) => r,
        Err(e) => actix_web::ResponseError::error_response(&e),
    };
    Ok(req.into_response(res).map_into_right_body())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meterstream_storage::point::PointIn;
    use meterstream_storage::value::InValue;

    fn group(stream: &str, first: usize, values: Vec<(Option<i64>, InValue)>) -> GroupIn {
        GroupIn {
            stream: stream.into(),
            stream_type: None,
            stream_units: None,
            first_index: first,
            points: values
                .into_iter()
                .map(|(timestamp, value)| PointIn {
                    timestamp,
                    value,
                    extras: None,
                })
                .collect(),
        }
    }

    #[test]
    fn precheck_names_bad_items_and_splits_by_device_partition() {
        let groups = vec![
            group(
                "gw1/m/v",
                0,
                vec![
                    (Some(1_000), InValue::Float(230.0)),
                    (Some(-5), InValue::Float(1.0)),
                    (None, InValue::Str("x".into())),
                ],
            ),
            group("bad//path", 3, vec![(Some(1), InValue::Float(1.0))]),
            group("gw2/m/v", 4, vec![(Some(2_000), InValue::Int(7))]),
        ];
        let split = |d: &str| if d == "gw1" { 3 } else { 8 };
        let (parts, errors, kept) = precheck(groups.clone(), 9_000, split, &[]);
        assert_eq!(kept, 2);
        let mut bad: Vec<usize> = errors.iter().map(|e| e.index).collect();
        bad.sort_unstable();
        assert_eq!(bad, vec![1, 2, 3]);
        assert_eq!(parts.keys().copied().collect::<Vec<_>>(), vec![3, 8]);
        assert_eq!(parts[&3][0].points.len(), 1);
        assert_eq!(parts[&8][0].stream, "gw2/m/v");
        // Each group goes out with the type it was checked against.
        assert_eq!(parts[&3][0].stream_type, Some(StreamType::Double));
        assert_eq!(
            parts[&8][0].stream_type,
            StreamType::infer(&InValue::Int(7))
        );

        // A holder's settled type wins over what the values imply: gw2/m/v is a BINARY stream
        // there, so its integer is refused and named; gw1/m/v is a LONG stream, so 230.0 fits.
        let settled = [Some(StreamType::Long), None, Some(StreamType::Binary)];
        let (parts, errors, kept) = precheck(groups, 9_000, split, &settled);
        assert_eq!(kept, 1);
        let mut bad: Vec<(usize, String)> = errors
            .iter()
            .map(|e| (e.index, e.error.to_string()))
            .collect();
        bad.sort();
        assert_eq!(
            bad.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(
            bad[3].1.contains("gw2/m/v") && bad[3].1.contains("BINARY"),
            "{}",
            bad[3].1
        );
        assert_eq!(parts.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(parts[&3][0].stream_type, Some(StreamType::Long));
    }

    #[test]
    fn records_round_trip() {
        let r = LogRecord::Points {
            now: 5,
            groups: vec![group("gw1/m/v", 0, vec![(None, InValue::Float(1.5))])],
            address: Some("10.0.0.7".into()),
        };
        let back: LogRecord = rmp_serde::from_slice(&rmp_serde::to_vec(&r).unwrap()).unwrap();
        let LogRecord::Points {
            now,
            groups,
            address,
        } = back
        else {
            panic!("{back:?}")
        };
        assert_eq!((now, address.as_deref()), (5, Some("10.0.0.7")));
        assert_eq!(
            groups,
            vec![group("gw1/m/v", 0, vec![(None, InValue::Float(1.5))])]
        );
    }

    #[test]
    fn requests_are_routed_by_the_device_they_name() {
        use actix_web::http::Method;
        let cases: [(Method, &str, Option<&str>); 15] = [
            (
                Method::GET,
                "/ws/v1/streams/history/gw%201/m/v",
                Some("gw 1"),
            ),
            (Method::GET, "/ws/DataPoint/gw2/x", Some("gw2")),
            (Method::GET, "/ws/v1/streams/inventory", None),
            (Method::GET, "/ws/v1/streams/folders/gw2/m", Some("gw2")),
            (Method::GET, "/ws/v1/streams/folders", None),
            (Method::POST, "/ws/v1/devices/gw%2F9/commands", Some("gw/9")),
            (Method::GET, "/ws/v1/devices/gw9/commands/poll", Some("gw9")),
            (Method::GET, "/ws/v1/devices/gw9/history", None),
            (Method::GET, "/ws/v1/devices/inventory/gw9", Some("gw9")),
            (Method::GET, "/ws/v1/devices/history/gw%209", Some("gw 9")),
            (Method::GET, "/ws/v1/devices/inventory", None),
            (Method::PUT, "/ws/v1/streams/inventory/gw3/m/v", Some("gw3")),
            (
                Method::DELETE,
                "/ws/v1/streams/history/gw4/m/v",
                Some("gw4"),
            ),
            (Method::PUT, "/ws/v1/streams/history/gw4/m/v", None),
            (Method::DELETE, "/ws/v1/alerts/inventory/x", None),
        ];
        for (method, path, want) in cases {
            assert_eq!(
                routed_device(&method, path).as_deref(),
                want,
                "{method} {path}"
            );
        }
    }
}
