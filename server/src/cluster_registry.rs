//! The registry of a cluster node (docs/scale-out.md, "Registries"): credentials, alert rules
//! and monitors are written to the shared registry (`MS_REGISTRY`) and reach this node's own
//! registry through its watch, like every other node's; the rest (devices, commands, alarm
//! statuses, the outbox, deliveries) is this node's, for the partitions it holds.

use meterstream_cluster::node::Node;
use meterstream_cluster::registry::{key, parse_key, Change};
use meterstream_storage::alarm::Alert;
use meterstream_storage::error::{Result, StorageError};
use meterstream_storage::registry::{
    AlarmChange, AlarmStatus, ChangeOutcome, Command, Credential, Delivery, Device, DeviceEvent,
    Monitor, MonitorState, OutboxEvent, Registry,
};
use std::sync::{Arc, OnceLock};
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
        node.watch_registry(Arc::new(move |c: Change| apply(&*target, &hook, c)))?;
        Ok(ClusterRegistry { local, node })
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

/// Applies one change of the shared registry to `local`.
fn apply(local: &dyn Registry, hook: &Hook, c: Change) {
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
        Ok(found)
    }

    fn device(&self, id: &str) -> Result<Option<Device>> {
        self.local.device(id)
    }
    fn put_device(&self, d: &Device) -> Result<()> {
        self.local.put_device(d)
    }
    fn devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<Device>> {
        self.local.devices(after, limit)
    }
    fn add_event(&self, device: &str, event: DeviceEvent) -> Result<DeviceEvent> {
        self.local.add_event(device, event)
    }
    fn events(&self, device: &str, after: u64, limit: usize) -> Result<Vec<DeviceEvent>> {
        self.local.events(device, after, limit)
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
    fn alarm_changes(&self, changes: &[AlarmChange], now: i64) -> Result<Vec<ChangeOutcome>> {
        self.local.alarm_changes(changes, now)
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
    fn prune_outbox(&self, before: i64) -> Result<usize> {
        self.local.prune_outbox(before)
    }
    fn monitor_state(&self, id: &str) -> Result<Option<MonitorState>> {
        self.local.monitor_state(id)
    }
    fn put_monitor_state(&self, id: &str, st: &MonitorState) -> Result<()> {
        self.local.put_monitor_state(id, st)
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
