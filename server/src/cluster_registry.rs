//! The registry of a cluster node (docs/scale-out.md, "Registries" and "Events and
//! webhooks"):
//! - credentials, alert rules and monitors (and the shared part of a monitor's delivery
//!   state) are written to the shared registry (`MS_REGISTRY`) and reach this node's own
//!   registry through its watch, like every other node's;
//! - alarm status changes and device connection events are published to the event stream
//!   (`MS_EVENTS`) under their event ids, and every node applies that stream, in order, into
//!   its own registry: the same statuses, history and outbox everywhere, the outbox numbered
//!   by the stream's sequence;
//! - the rest (devices, commands, deliveries) is this node's, for the partitions it holds.

use crate::cluster::Recent;
use meterstream_cluster::node::Node;
use meterstream_cluster::registry::{key, parse_key, Change};
use meterstream_storage::alarm::Alert;
use meterstream_storage::error::{Result, StorageError};
use meterstream_storage::registry::{
    AlarmChange, AlarmStatus, ChangeOutcome, Command, Credential, Delivery, Device, DeviceEvent,
    Monitor, MonitorState, OutboxEvent, Registry,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long a write waits for this node's watch to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// Called after the watch applied a change: (kind, id). The server sets it once its parts
/// that cache registry objects exist (the evaluator, the dispatcher, authentication).
pub type Hook = Arc<OnceLock<Box<dyn Fn(&str, &str) + Send + Sync>>>;

/// The node's registry: shared kinds through the cluster, the rest local.
pub struct ClusterRegistry {
    local: Arc<dyn Registry>,
    node: Arc<Node>,
    applied: Arc<Recent<EventOutcome>>,
    /// Serializes the read-modify-writes of monitor states (this node's worker, the watch).
    monitor_states: Arc<Mutex<()>>,
    /// Serializes the read-modify-writes of devices (their holder's contact, the watch).
    devices: Arc<Mutex<()>>,
}

/// One event of the shared event stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum EventRecord {
    /// An alarm status change, with the server time of the node that made it.
    Alarm { change: AlarmChange, now: i64 },
    /// A device's connection event, with its deterministic id.
    Device {
        device: String,
        id: String,
        event: DeviceEvent,
    },
}

/// What applying an event came to, for the writer waiting on this node.
#[derive(Debug, Clone)]
enum EventOutcome {
    Alarm(ChangeOutcome),
    Device(Option<DeviceEvent>),
}

/// The part of a monitor's delivery state every node shares: where its alarm and device
/// events stand (the outbox is the same everywhere), and whether it is on. Its data point
/// cursors are each node's own, over the partitions it holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct SharedMonitorState {
    status: String,
    reason: Option<String>,
    outbox_cursor: u64,
}

impl SharedMonitorState {
    fn of(st: &MonitorState) -> SharedMonitorState {
        SharedMonitorState {
            status: st.status.clone(),
            reason: st.reason.clone(),
            outbox_cursor: st.outbox_cursor,
        }
    }

    fn onto(&self, st: &mut MonitorState) {
        st.status = self.status.clone();
        st.reason = self.reason.clone();
        st.outbox_cursor = self.outbox_cursor;
    }
}

/// A device's descriptive fields, which every node shares (its connection state is its
/// holder's).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct DeviceInfo {
    model: Option<String>,
    agent_version: Option<String>,
    meters: Vec<meterstream_storage::registry::MeterInfo>,
    location: Option<(f64, f64)>,
    tags: Vec<String>,
    group: Option<String>,
    registered: i64,
}

impl DeviceInfo {
    fn of(d: &Device) -> DeviceInfo {
        DeviceInfo {
            model: d.model.clone(),
            agent_version: d.agent_version.clone(),
            meters: d.meters.clone(),
            location: d.location,
            tags: d.tags.clone(),
            group: d.group.clone(),
            registered: d.registered,
        }
    }

    fn onto(self, d: &mut Device) {
        d.model = self.model;
        d.agent_version = self.agent_version;
        d.meters = self.meters;
        d.location = self.location;
        d.tags = self.tags;
        d.group = self.group;
        d.registered = self.registered;
    }
}

/// A device event's id: the same whichever holder makes it (from the same log record).
fn device_event_id(device: &str, e: &DeviceEvent) -> String {
    format!("device/{device}/{}/{}", e.status, e.time)
}

fn events_unavailable(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        path: "nats:MS_EVENTS".into(),
        source: std::io::Error::other(format!("{what} the cluster's event stream: {e}")),
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        path: "nats:MS_REGISTRY".into(),
        source: std::io::Error::other(format!("{what} the cluster's shared registry: {e}")),
    }
}

impl ClusterRegistry {
    /// Wraps `local`, applying the shared registry into it (every object the cluster has,
    /// before this returns), then calling `hook` after each change. Blocking.
    pub fn start(
        local: Arc<dyn Registry>,
        node: Arc<Node>,
        hook: Hook,
    ) -> std::result::Result<ClusterRegistry, meterstream_cluster::ClusterError> {
        let target = local.clone();
        let monitor_states = Arc::new(Mutex::new(()));
        let locks = Locks {
            monitor_states: monitor_states.clone(),
            devices: Arc::new(Mutex::new(())),
        };
        let l2 = locks.clone();
        node.watch_registry(Arc::new(move |c: Change| apply(&*target, &hook, &l2, c)))?;
        let applied = Arc::new(Recent::new(4096));
        let (target, out) = (local.clone(), applied.clone());
        node.watch_events(Arc::new(move |seq, body| {
            apply_event(&*target, &out, seq, body)
        }))?;
        Ok(ClusterRegistry {
            local,
            node,
            applied,
            monitor_states,
            devices: locks.devices,
        })
    }

    /// Publishes the events `(id, record)` this node does not know, pipelined and in order
    /// (an alarm storm is many at once), and waits until this node has applied them, and those
    /// another node published first (a partition that moved), so that its statuses include
    /// them on return. For each, what applying it here came to; `None` for a duplicate.
    fn publish_events(
        &self,
        events: Vec<(String, EventRecord)>,
    ) -> Result<Vec<Option<EventOutcome>>> {
        let mut out: Vec<Option<EventOutcome>> = Vec::with_capacity(events.len());
        let mut batch: Vec<(String, bytes::Bytes)> = Vec::new();
        let mut at: Vec<usize> = Vec::new();
        for (id, rec) in events {
            out.push(None);
            if self.local.knows_event(&id)? {
                continue;
            }
            let body =
                serde_json::to_vec(&rec).map_err(|e| events_unavailable("encoding for", e))?;
            at.push(out.len() - 1);
            batch.push((id, body.into()));
        }
        if batch.is_empty() {
            return Ok(out);
        }
        let placed = self
            .node
            .publish_events(batch)
            .map_err(|e| events_unavailable("publishing to", e))?;
        if let Some(last) = placed.iter().map(|p| p.0).max() {
            if !self.node.await_events(last, APPLY_WAIT) {
                return Err(events_unavailable(
                    "applying",
                    "published, but not yet applied by this node",
                ));
            }
        }
        for (i, (seq, duplicate)) in at.into_iter().zip(placed) {
            if !duplicate {
                out[i] = self.applied.take(seq);
            }
        }
        Ok(out)
    }

    /// Whether this node delivers monitor `id`'s alarm and device events: it holds the
    /// partition its id falls in.
    pub fn delivers(&self, monitor: &str) -> bool {
        self.node.holds(self.node.partition_of(monitor))
    }

    fn put<T: serde::Serialize>(&self, kind: &str, id: &str, value: Option<&T>) -> Result<()> {
        let body = match value {
            Some(v) => serde_json::to_vec(v).map_err(|e| unavailable("encoding", e))?,
            None => Vec::new(),
        };
        match self
            .node
            .registry_put(&key(kind, id), body.into(), APPLY_WAIT)
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(unavailable(
                "writing",
                "written, but not yet seen by this node's watch",
            )),
            Err(e) => Err(unavailable("writing", e)),
        }
    }
}

/// The locks the watch shares with the registry.
#[derive(Clone)]
struct Locks {
    monitor_states: Arc<Mutex<()>>,
    devices: Arc<Mutex<()>>,
}

/// Applies one change of the shared registry to `local`.
fn apply(local: &dyn Registry, hook: &Hook, locks: &Locks, c: Change) {
    let Some((kind, id)) = parse_key(&c.key) else {
        tracing::warn!(key = %c.key, "a shared registry key that is not ours; skipped");
        return;
    };
    let deleted = c.value.is_empty();
    let r: std::result::Result<(), String> = match (kind, deleted) {
        ("cred", false) => serde_json::from_slice::<Credential>(&c.value)
            .map_err(|e| e.to_string())
            .and_then(|v| local.put_credential(&v).map_err(|e| e.to_string())),
        ("alert", false) => serde_json::from_slice::<Alert>(&c.value)
            .map_err(|e| e.to_string())
            .and_then(|v| local.put_alert(&v).map_err(|e| e.to_string())),
        ("alert", true) => local
            .delete_alert(&id)
            .and_then(|_| local.forget_alert(&id))
            .map_err(|e| e.to_string()),
        ("monitor", false) => serde_json::from_slice::<Monitor>(&c.value)
            .map_err(|e| e.to_string())
            .and_then(|v| local.put_monitor(&v).map_err(|e| e.to_string())),
        ("monitor", true) => local
            .delete_monitor(&id)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        ("monstate", false) => serde_json::from_slice::<SharedMonitorState>(&c.value)
            .map_err(|e| e.to_string())
            .and_then(|shared| {
                let _g = locks
                    .monitor_states
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut st = local
                    .monitor_state(&id)
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                shared.onto(&mut st);
                local.put_monitor_state(&id, &st).map_err(|e| e.to_string())
            }),
        ("monstate", true) => Ok(()),
        ("device", false) => serde_json::from_slice::<DeviceInfo>(&c.value)
            .map_err(|e| e.to_string())
            .and_then(|info| {
                let _g = locks.devices.lock().unwrap_or_else(|e| e.into_inner());
                let mut d = local
                    .device(&id)
                    .map_err(|e| e.to_string())?
                    .unwrap_or_else(|| Device::new(&id, info.registered));
                info.onto(&mut d);
                local.put_device(&d).map_err(|e| e.to_string())
            }),
        _ => Err(format!("unknown kind {kind:?}")),
    };
    if let Err(e) = r {
        tracing::error!(kind, id = %id, error = %e, "applying a shared registry change failed");
        return;
    }
    if let Some(h) = hook.get() {
        h(kind, &id);
    }
}

/// Applies one event of the shared stream to `local`, its outbox entry numbered `seq`.
/// Idempotent: an event whose id `local` recorded adds nothing.
fn apply_event(
    local: &dyn Registry,
    applied: &Recent<EventOutcome>,
    seq: u64,
    body: &[u8],
) -> std::result::Result<(), String> {
    let rec: EventRecord = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            // Not ours (or from a newer version): skipped rather than blocking every event
            // after it.
            tracing::error!(seq, error = %e, "an event that cannot be read; skipped");
            return Ok(());
        }
    };
    local.set_outbox_next(seq);
    let out = match rec {
        EventRecord::Alarm { change, now } => EventOutcome::Alarm(
            local
                .alarm_changes(std::slice::from_ref(&change), now)
                .map_err(|e| e.to_string())?
                .pop()
                .unwrap_or(ChangeOutcome::Duplicate),
        ),
        EventRecord::Device { device, id, event } => EventOutcome::Device(
            local
                .add_event_once(&device, event, &id)
                .map_err(|e| e.to_string())?,
        ),
    };
    applied.put(seq, out);
    Ok(())
}

impl Registry for ClusterRegistry {
    fn put_credential(&self, c: &Credential) -> Result<()> {
        self.put("cred", &c.id, Some(c))
    }
    fn put_alert(&self, a: &Alert) -> Result<()> {
        self.put("alert", &a.id, Some(a))
    }
    fn delete_alert(&self, id: &str) -> Result<bool> {
        let found = self.local.alert(id)?.is_some();
        self.put::<Alert>("alert", id, None)?;
        Ok(found)
    }
    fn put_monitor(&self, m: &Monitor) -> Result<()> {
        self.put("monitor", &m.id, Some(m))
    }
    fn delete_monitor(&self, id: &str) -> Result<bool> {
        let found = self.local.monitor(id)?.is_some();
        self.put::<Monitor>("monitor", id, None)?;
        self.put::<SharedMonitorState>("monstate", id, None)?;
        Ok(found)
    }

    fn device(&self, id: &str) -> Result<Option<Device>> {
        self.local.device(id)
    }
    /// The holder's record of a device: its connection state as given, its descriptive
    /// fields as the cluster has them (a contact never overwrites what an operator set).
    fn put_device(&self, d: &Device) -> Result<()> {
        let _g = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut d = d.clone();
        if let Some(cur) = self.local.device(&d.id)? {
            DeviceInfo::of(&cur).onto(&mut d);
        }
        self.local.put_device(&d)
    }
    /// Descriptive fields go to every node through the shared registry, then the record here.
    fn put_device_info(&self, d: &Device) -> Result<()> {
        let info = DeviceInfo::of(d);
        let current = self.local.device(&d.id)?;
        if current.as_ref().map(DeviceInfo::of) != Some(info.clone()) {
            self.put("device", &d.id, Some(&info))?;
        }
        // The watch applied the description; the rest of the record as given.
        self.put_device(d)
    }
    fn devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<Device>> {
        self.local.devices(after, limit)
    }
    fn add_event(&self, device: &str, event: DeviceEvent) -> Result<DeviceEvent> {
        let id = device_event_id(device, &event);
        let rec = EventRecord::Device {
            device: device.to_string(),
            id: id.clone(),
            event: event.clone(),
        };
        Ok(
            match self.publish_events(vec![(id, rec)])?.pop().flatten() {
                Some(EventOutcome::Device(Some(e))) => e,
                _ => event,
            },
        )
    }
    fn add_event_once(
        &self,
        device: &str,
        event: DeviceEvent,
        id: &str,
    ) -> Result<Option<DeviceEvent>> {
        self.local.add_event_once(device, event, id)
    }
    fn knows_event(&self, id: &str) -> Result<bool> {
        self.local.knows_event(id)
    }
    fn set_outbox_next(&self, next: u64) {
        self.local.set_outbox_next(next)
    }
    fn events(&self, device: &str, after: u64, limit: usize) -> Result<Vec<DeviceEvent>> {
        self.local.events(device, after, limit)
    }
    fn last_event(&self, device: &str) -> Result<Option<DeviceEvent>> {
        self.local.last_event(device)
    }
    fn create_command(
        &self,
        device: &str,
        command: &str,
        parameters: serde_json::Value,
        lifetime: u64,
        now: i64,
    ) -> Result<Command> {
        self.local
            .create_command(device, command, parameters, lifetime, now)
    }
    fn insert_command(&self, c: &Command) -> Result<bool> {
        self.local.insert_command(c)
    }
    fn command(&self, device: &str, id: u64) -> Result<Option<Command>> {
        self.local.command(device, id)
    }
    fn commands(&self, device: &str, after: u64, limit: usize) -> Result<Vec<Command>> {
        self.local.commands(device, after, limit)
    }
    fn deliver(&self, device: &str, after: u64, now: i64) -> Result<Vec<Command>> {
        self.local.deliver(device, after, now)
    }
    fn update_command(
        &self,
        device: &str,
        id: u64,
        now: i64,
        f: &mut dyn FnMut(&mut Command) -> std::result::Result<(), String>,
    ) -> Result<Option<std::result::Result<Command, String>>> {
        self.local.update_command(device, id, now, f)
    }
    fn expire(&self, now: i64) -> Result<Vec<Command>> {
        self.local.expire(now)
    }
    fn credential(&self, id: &str) -> Result<Option<Credential>> {
        self.local.credential(id)
    }
    fn credentials(&self) -> Result<Vec<Credential>> {
        self.local.credentials()
    }
    fn alert(&self, id: &str) -> Result<Option<Alert>> {
        self.local.alert(id)
    }
    fn alerts(&self, after: Option<&str>, limit: usize) -> Result<Vec<Alert>> {
        self.local.alerts(after, limit)
    }
    fn monitor(&self, id: &str) -> Result<Option<Monitor>> {
        self.local.monitor(id)
    }
    fn monitors(&self) -> Result<Vec<Monitor>> {
        self.local.monitors()
    }
    fn statuses(&self) -> Result<Vec<AlarmStatus>> {
        self.local.statuses()
    }
    fn alarm_history(
        &self,
        alert_id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, AlarmStatus)>> {
        self.local.alarm_history(alert_id, after, limit)
    }
    /// Each change is published to the event stream under its event id, in order, and the
    /// outcomes are what applying them here came to. A change this node knows, or that the
    /// stream had (another holder made it first), is a duplicate.
    fn alarm_changes(&self, changes: &[AlarmChange], now: i64) -> Result<Vec<ChangeOutcome>> {
        let events = changes
            .iter()
            .map(|c| {
                let rec = EventRecord::Alarm {
                    change: c.clone(),
                    now,
                };
                (c.event_id.clone(), rec)
            })
            .collect();
        Ok(self
            .publish_events(events)?
            .into_iter()
            .map(|o| match o {
                Some(EventOutcome::Alarm(o)) => o,
                _ => ChangeOutcome::Duplicate,
            })
            .collect())
    }
    fn status(&self, alert_id: &str, source: &str) -> Result<Option<AlarmStatus>> {
        self.local.status(alert_id, source)
    }
    fn recent_transitions(
        &self,
        alert_id: &str,
        source: &str,
        limit: usize,
    ) -> Result<Vec<AlarmStatus>> {
        self.local.recent_transitions(alert_id, source, limit)
    }
    fn forget_alert(&self, alert_id: &str) -> Result<()> {
        self.local.forget_alert(alert_id)
    }
    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEvent>> {
        self.local.outbox_after(after, limit)
    }
    fn outbox_last(&self) -> u64 {
        self.local.outbox_last()
    }
    fn prune_outbox(&self, before: i64, _keep_ids: bool) -> Result<usize> {
        // The ids stay: a partition rebuilt from the log makes its events again, and they
        // must be recognized for as long as the log can do that.
        self.local.prune_outbox(before, true)
    }
    fn monitor_state(&self, id: &str) -> Result<Option<MonitorState>> {
        self.local.monitor_state(id)
    }
    /// The shared part (status, alarm and device events' cursor) goes through the shared
    /// registry, written by the node that delivers the monitor's events (or when the monitor
    /// has none yet, or is disabled); the data point cursors stay here.
    fn put_monitor_state(&self, id: &str, st: &MonitorState) -> Result<()> {
        let current = self.local.monitor_state(id)?;
        let shared = SharedMonitorState::of(st);
        let publish = match &current {
            None => true,
            Some(cur) => {
                SharedMonitorState::of(cur) != shared
                    && (self.delivers(id) || st.status == "disabled" || cur.status == "disabled")
            }
        };
        if publish {
            self.put("monstate", id, Some(&shared))?;
        }
        let _g = self
            .monitor_states
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut st = st.clone();
        if !publish {
            // What the cluster says stands; this node changes only its own cursors.
            if let Some(cur) = self.local.monitor_state(id)? {
                SharedMonitorState::of(&cur).onto(&mut st);
            }
        }
        self.local.put_monitor_state(id, &st)
    }
    fn add_delivery(&self, monitor: &str, d: Delivery, keep: usize) -> Result<Delivery> {
        self.local.add_delivery(monitor, d, keep)
    }
    fn deliveries(
        &self,
        monitor: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        self.local.deliveries(monitor, before, limit)
    }
    fn delivery(&self, monitor: &str, seq: u64) -> Result<Option<Delivery>> {
        self.local.delivery(monitor, seq)
    }
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.local.get_meta(key)
    }
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.local.put_meta(key, value)
    }
}
