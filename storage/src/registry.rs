//! Devices, their connection history and their commands: the [`Registry`] trait (the narrow
//! interface the server uses) and its sled implementation. Design: `docs/devices.md`.
//!
//! # Layout (a sled database of its own, `<data_dir>/registry`)
//! ```text
//! devices   device id                          → Device (JSON)
//! events    device id ++ 0x00 ++ u64 BE seq    → DeviceEvent (JSON)
//! commands  device id ++ 0x00 ++ u64 BE id     → Command (JSON)
//! meta      "next_command_id"                  → u64 BE
//! credentials  credential id                   → Credential (JSON; secrets only as hashes)
//! alerts    alert id                           → Alert (JSON)
//! monitors  monitor id                         → Monitor (JSON, with its signing secrets)
//! alarm_status   alert id ++ 0x00 ++ source                       → AlarmStatus (JSON)
//! alarm_history  alert id ++ 0x00 ++ source ++ 0x00 ++ u64 BE n   → AlarmStatus after the nth transition
//! ```
//! Every key starts with the device id, so the registry partitions by device like the points.
//! Every change is flushed before it returns.

use crate::error::{Result, StorageError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use std::path::Path;

/// A meter as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterInfo {
    /// Name (the second path segment of its streams).
    pub name: String,
    /// Model profile.
    pub model: String,
    /// Modbus slave id.
    #[serde(default)]
    pub slave: Option<u8>,
}

/// A gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Device id (the first path segment of its streams).
    pub id: String,
    /// Gateway model, as reported.
    #[serde(default)]
    pub model: Option<String>,
    /// Agent version, as reported.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// Its meters, as reported.
    #[serde(default)]
    pub meters: Vec<MeterInfo>,
    /// Latitude, longitude.
    #[serde(default)]
    pub location: Option<(f64, f64)>,
    /// Free tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Group (access can be limited to groups).
    #[serde(default)]
    pub group: Option<String>,
    /// When it was first seen, Unix ms.
    pub registered: i64,
    /// Whether it is connected.
    #[serde(default)]
    pub connected: bool,
    /// Last connect, Unix ms.
    #[serde(default)]
    pub last_connect: Option<i64>,
    /// Last disconnect, Unix ms.
    #[serde(default)]
    pub last_disconnect: Option<i64>,
    /// Last time seen (as last written; the server keeps fresher times in memory), Unix ms.
    #[serde(default)]
    pub last_seen: Option<i64>,
    /// Last known address.
    #[serde(default)]
    pub last_address: Option<String>,
}

impl Device {
    /// A device first seen at `now`.
    pub fn new(id: &str, now: i64) -> Device {
        Device {
            id: id.into(),
            model: None,
            agent_version: None,
            meters: Vec::new(),
            location: None,
            tags: Vec::new(),
            group: None,
            registered: now,
            connected: false,
            last_connect: None,
            last_disconnect: None,
            last_seen: None,
            last_address: None,
        }
    }
}

/// A change of a device's connection status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Sequence number within the device, from 1.
    pub seq: u64,
    /// When, Unix ms.
    pub time: i64,
    /// `connected` or `disconnected`.
    pub status: String,
    /// Address it was seen from (for `connected`).
    #[serde(default)]
    pub address: Option<String>,
}

/// The life of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    /// Waiting for the device.
    Queued,
    /// Delivered to the device, no result yet.
    Sent,
    /// The device ran it.
    Succeeded,
    /// The device could not run it.
    Failed,
    /// Not delivered within its lifetime.
    Expired,
    /// Cancelled before delivery.
    Cancelled,
}

impl CommandStatus {
    /// Whether the command is finished (no further change).
    pub fn is_final(self) -> bool {
        !matches!(self, CommandStatus::Queued | CommandStatus::Sent)
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<CommandStatus> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase())).ok()
    }
}

/// A command to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Id, unique, increasing in creation order.
    pub id: u64,
    /// The device.
    pub device_id: String,
    /// What to do.
    pub command: String,
    /// Its parameters.
    #[serde(default)]
    pub parameters: serde_json::Value,
    /// Seconds it may wait for delivery.
    pub lifetime: u64,
    /// Status.
    pub status: CommandStatus,
    /// The device's result.
    #[serde(default)]
    pub result: serde_json::Value,
    /// Created, Unix ms.
    pub created: i64,
    /// Last change, Unix ms.
    pub updated: i64,
    /// When a queued command expires, Unix ms.
    pub expires: i64,
}

impl Command {
    /// A command queued at `now` for `device`, expiring `lifetime` seconds later.
    pub fn queued(
        id: u64,
        device: &str,
        command: &str,
        parameters: serde_json::Value,
        lifetime: u64,
        now: i64,
    ) -> Command {
        Command {
            id,
            device_id: device.into(),
            command: command.into(),
            parameters,
            lifetime,
            status: CommandStatus::Queued,
            result: serde_json::Value::Null,
            created: now,
            updated: now,
            expires: now.saturating_add((lifetime as i64).saturating_mul(1000)),
        }
    }
}

/// A credential: a person (user name and password), an integration (API key) or a gateway
/// (device key). Only a hash of its secret is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// Id (part of the key it belongs to; the user name for people).
    pub id: String,
    /// `user`, `api_key` or `device`.
    pub kind: String,
    /// Free label.
    #[serde(default)]
    pub label: String,
    /// PHC string of the secret's argon2id hash.
    pub secret_hash: String,
    /// `admin`, `read`, `write`, `device`.
    pub scopes: Vec<String>,
    /// Path prefixes it is limited to (empty: everything).
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Device groups it is limited to (empty: no group limit).
    #[serde(default)]
    pub groups: Vec<String>,
    /// For a device key: its device.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Created, Unix ms.
    pub created: i64,
    /// Revoked, Unix ms.
    #[serde(default)]
    pub revoked: Option<i64>,
}

/// A monitor: where and how to push events (issue 7). Its secret is kept so that requests can
/// be signed; it is shown once, at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    /// Id.
    pub id: String,
    /// Topics: `DataPoint/<pattern>`, `AlarmStatus`, `devices`.
    pub topics: Vec<String>,
    /// Receiver URL.
    pub url: String,
    /// `POST` or `PUT`.
    pub method: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Basic credentials `user:password` for the receiver.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// `json`.
    pub format: String,
    /// Most events per request.
    pub batch_size: usize,
    /// Longest wait to fill a batch, ms.
    pub batch_duration_ms: u64,
    /// `none` or `gzip`.
    pub compression: String,
    /// Whether events are kept while the receiver fails and replayed on reset.
    pub persistent: bool,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Signing secrets, newest first (two during a rotation).
    pub secrets: Vec<String>,
    /// Until when (Unix ms) the previous secret still signs.
    #[serde(default)]
    pub rotation_until: Option<i64>,
    /// `active`, `suspended` or `disabled`.
    pub status: String,
    /// Created, Unix ms.
    pub created: i64,
    /// The credential that created it; its scope, read when events are delivered, bounds what
    /// the monitor receives.
    pub owner: String,
}

/// The status of one (alert, source): one record per pair, so two active statuses for the same
/// pair cannot exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmStatus {
    /// The alert.
    pub alert_id: String,
    /// The source: a stream path or a device id.
    pub source: String,
    /// Its state.
    pub state: crate::alarm::State,
    /// When it changed (data time for data rules, server time otherwise), Unix ms.
    pub changed: i64,
    /// The value that changed it.
    #[serde(default)]
    pub value: Option<crate::alarm::Observed>,
    /// Who acknowledged it, and the note.
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    /// The acknowledgement's note.
    #[serde(default)]
    pub note: Option<String>,
    /// How many transitions it has had (the next history entry's sequence number).
    pub transitions: u64,
    /// Data time of the point that last fired or reset it (its stream is the source), for
    /// data rules; kept through an acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<i64>,
    /// Whether this change corrects earlier ones: late data, evaluated again, showed that the
    /// status changed at another time than announced before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub correction: bool,
}

/// An event waiting in the outbox for the monitors: alarm status changes and device connection
/// changes, written in the same sled transaction as the change it announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// Outbox sequence number, from 1.
    pub seq: u64,
    /// Event id: deterministic for evaluated alarm transitions, so that a re-derived one is
    /// recognised.
    pub id: String,
    /// Topic without the tenant: `AlarmStatus/<alert>/<source>` or `devices/<device>`.
    pub topic: String,
    /// `INSERTION` or `UPDATE`.
    pub operation: String,
    /// When it was written, Unix ms.
    pub timestamp: i64,
    /// The device it concerns (for scoped monitors), if any.
    #[serde(default)]
    pub device: Option<String>,
    /// The object announced (`AlarmStatus`, `DeviceCore` shape).
    pub object: serde_json::Value,
}

/// What changes an alarm status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmChangeKind {
    /// The evaluator moved it to `to` at data (or server) time `at`, because of `value`.
    Evaluated {
        /// New state (triggered or reset).
        to: crate::alarm::State,
        /// When, Unix ms.
        at: i64,
        /// The value that caused it.
        value: Option<crate::alarm::Observed>,
    },
    /// Late data, evaluated again, moved a transition: the status becomes `to` as of `at`,
    /// whatever it was (unless it is exactly that already).
    Correct {
        /// New state (triggered or reset).
        to: crate::alarm::State,
        /// When, Unix ms.
        at: i64,
        /// The value that caused it.
        value: Option<crate::alarm::Observed>,
    },
    /// A user acknowledged it (only a triggered status can be).
    Acknowledge {
        /// Who.
        by: String,
        /// Optional note.
        note: Option<String>,
        /// When, server ms.
        at: i64,
    },
}

/// One change of an alarm status, with its event id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmChange {
    /// Event id; a change whose id was already recorded is skipped.
    pub event_id: String,
    /// The alert.
    pub alert_id: String,
    /// The source (stream path or device id).
    pub source: String,
    /// The device of the source (first path segment), for scoping.
    pub device: String,
    /// The change.
    pub kind: AlarmChangeKind,
}

/// What became of an [`AlarmChange`].
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOutcome {
    /// Applied; the status after.
    Applied(AlarmStatus),
    /// Its event id was recorded before (a transition re-derived after a crash).
    Duplicate,
    /// Not applicable (acknowledging a status that is not triggered, or no change); why.
    Refused(String),
}

/// The delivery state of one monitor, kept apart from its definition so that editing one does
/// not race with the other.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MonitorState {
    /// `active`, `suspended` (the receiver fails; events are kept) or `disabled` (after the
    /// retry window, or a 410); empty means active.
    #[serde(default)]
    pub status: String,
    /// Why it was disabled.
    #[serde(default)]
    pub reason: Option<String>,
    /// Data point events delivered up to this log sequence number...
    pub log_cursor: u64,
    /// ...and this many of the matching events of the next record.
    #[serde(default)]
    pub log_offset: u64,
    /// Outbox events delivered up to this outbox sequence number.
    pub outbox_cursor: u64,
    /// Since when (Unix ms) deliveries have failed without a success, if they do.
    #[serde(default)]
    pub failing_since: Option<i64>,
    /// Failed attempts in a row.
    #[serde(default)]
    pub failures: u32,
    /// Last successful delivery, Unix ms.
    #[serde(default)]
    pub last_sent: Option<i64>,
    /// Last attempt, Unix ms.
    #[serde(default)]
    pub last_attempt: Option<i64>,
    /// Events up to these cursors (log, outbox) are replays, flagged `replay: true`.
    #[serde(default)]
    pub replay_until: Option<(u64, u64)>,
    /// Data point events lost because the log no longer held them, in total.
    #[serde(default)]
    pub lost_events: u64,
}

/// One delivery attempt of a monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Sequence number within the monitor.
    pub seq: u64,
    /// The batch's `webhook-id`.
    pub batch_id: String,
    /// When it started, Unix ms.
    pub time: i64,
    /// HTTP status, if an answer came.
    #[serde(default)]
    pub status: Option<u16>,
    /// Error, when no answer came or it was not 2xx.
    #[serde(default)]
    pub error: Option<String>,
    /// How long it took, ms.
    pub duration_ms: u64,
    /// Events in the batch.
    pub events: usize,
    /// Whether it succeeded.
    pub ok: bool,
    /// Whether the batch was a replay.
    #[serde(default)]
    pub replay: bool,
    /// The cursors (log record, offset, outbox) before the batch, so a failed batch can be sent
    /// again.
    pub from: (u64, u64, u64),
    /// The cursors after the batch.
    pub to: (u64, u64, u64),
}

/// The registry of devices and commands. Blocking; every successful change is durable.
pub trait Registry: Send + Sync {
    /// The device `id`.
    fn device(&self, id: &str) -> Result<Option<Device>>;
    /// Creates or replaces a device.
    fn put_device(&self, d: &Device) -> Result<()>;
    /// Creates or replaces a device whose descriptive fields (model, agent version, meters,
    /// location, tags, group) an operator or the device itself set. A cluster node shares
    /// those fields with every node; elsewhere this is [`Registry::put_device`].
    fn put_device_info(&self, d: &Device) -> Result<()> {
        self.put_device(d)
    }
    /// Devices in id order after `after`, at most `limit`.
    fn devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<Device>>;
    /// Every device, in id order.
    fn all_devices(&self) -> Result<Vec<Device>> {
        let mut out: Vec<Device> = Vec::new();
        loop {
            let page = self.devices(out.last().map(|d| d.id.as_str()), 1000)?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }
    /// Appends a connection event to a device's history; returns it with its seq.
    fn add_event(&self, device: &str, event: DeviceEvent) -> Result<DeviceEvent>;
    /// A device's events after seq `after`, oldest first, at most `limit`.
    fn events(&self, device: &str, after: u64, limit: usize) -> Result<Vec<DeviceEvent>>;
    /// A device's newest connection event.
    fn last_event(&self, device: &str) -> Result<Option<DeviceEvent>>;
    /// Queues a command.
    fn create_command(
        &self,
        device: &str,
        command: &str,
        parameters: serde_json::Value,
        lifetime: u64,
        now: i64,
    ) -> Result<Command>;
    /// Stores a command whose id was given elsewhere (a cluster's log: docs/scale-out.md)
    /// unless the device has one with that id already; returns whether it was stored. Applying
    /// the same record again changes nothing.
    fn insert_command(&self, c: &Command) -> Result<bool>;
    /// One command.
    fn command(&self, device: &str, id: u64) -> Result<Option<Command>>;
    /// A device's commands after id `after`, oldest first, at most `limit`.
    fn commands(&self, device: &str, after: u64, limit: usize) -> Result<Vec<Command>>;
    /// Delivery: the device's unfinished (queued or sent) commands after id `after`, oldest
    /// first; queued ones become sent. Queued commands past their expiry become expired and are
    /// not delivered.
    fn deliver(&self, device: &str, after: u64, now: i64) -> Result<Vec<Command>>;
    /// Changes a command with `f` (which may refuse with an error message); returns it after.
    /// `None` if there is no such command.
    fn update_command(
        &self,
        device: &str,
        id: u64,
        now: i64,
        f: &mut dyn FnMut(&mut Command) -> std::result::Result<(), String>,
    ) -> Result<Option<std::result::Result<Command, String>>>;
    /// Turns every queued command past its expiry into expired; returns those.
    fn expire(&self, now: i64) -> Result<Vec<Command>>;
    /// Creates or replaces a credential.
    fn put_credential(&self, c: &Credential) -> Result<()>;
    /// A credential by id.
    fn credential(&self, id: &str) -> Result<Option<Credential>>;
    /// Every credential, by id.
    fn credentials(&self) -> Result<Vec<Credential>>;
    /// Creates or replaces an alert.
    fn put_alert(&self, a: &crate::alarm::Alert) -> Result<()>;
    /// An alert by id.
    fn alert(&self, id: &str) -> Result<Option<crate::alarm::Alert>>;
    /// Alerts in id order after `after`, at most `limit`.
    fn alerts(&self, after: Option<&str>, limit: usize) -> Result<Vec<crate::alarm::Alert>>;
    /// Deletes an alert; whether it existed.
    fn delete_alert(&self, id: &str) -> Result<bool>;
    /// Creates or replaces a monitor.
    fn put_monitor(&self, m: &Monitor) -> Result<()>;
    /// A monitor by id.
    fn monitor(&self, id: &str) -> Result<Option<Monitor>>;
    /// Every monitor, by id.
    fn monitors(&self) -> Result<Vec<Monitor>>;
    /// Deletes a monitor; whether it existed.
    fn delete_monitor(&self, id: &str) -> Result<bool>;
    /// The statuses of every pair, in (alert, source) order.
    fn statuses(&self) -> Result<Vec<AlarmStatus>>;
    /// The transitions of one alert after history key `after` (as returned), oldest first.
    fn alarm_history(
        &self,
        alert_id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, AlarmStatus)>>;
    /// Applies alarm status changes in order, each with its history entry and its outbox event,
    /// all in one durable transaction. Changes whose event id is already recorded are skipped.
    fn alarm_changes(&self, changes: &[AlarmChange], now: i64) -> Result<Vec<ChangeOutcome>>;
    /// One status.
    fn status(&self, alert_id: &str, source: &str) -> Result<Option<AlarmStatus>>;
    /// The newest transitions of one (alert, source), newest first, at most `limit`.
    fn recent_transitions(
        &self,
        alert_id: &str,
        source: &str,
        limit: usize,
    ) -> Result<Vec<AlarmStatus>>;
    /// Removes every status and history entry of an alert (when it is deleted).
    fn forget_alert(&self, alert_id: &str) -> Result<()>;
    /// Whether an event with this id was recorded (an alarm change, or a device event added
    /// with [`Registry::add_event_once`]).
    fn knows_event(&self, id: &str) -> Result<bool>;
    /// The next outbox event gets sequence number `next` at least (a cluster node numbers its
    /// outbox as the shared event stream is, so that every node's outbox is the same).
    fn set_outbox_next(&self, next: u64);
    /// Adds a device event with the event id `id` unless that id was recorded; the stored
    /// event, or `None` when it was.
    fn add_event_once(
        &self,
        device: &str,
        event: DeviceEvent,
        id: &str,
    ) -> Result<Option<DeviceEvent>>;
    /// Outbox events after outbox sequence number `after`, at most `limit`.
    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEvent>>;
    /// The highest outbox sequence number written (0 if none).
    fn outbox_last(&self) -> u64;
    /// Deletes outbox events written before `before` (Unix ms), with their event ids unless
    /// `keep_ids` (a cluster node keeps them for as long as the log can make the events
    /// again); returns how many.
    fn prune_outbox(&self, before: i64, keep_ids: bool) -> Result<usize>;
    /// A monitor's delivery state.
    fn monitor_state(&self, id: &str) -> Result<Option<MonitorState>>;
    /// Stores a monitor's delivery state, durably.
    fn put_monitor_state(&self, id: &str, st: &MonitorState) -> Result<()>;
    /// Records a delivery attempt (the newest `keep` are kept).
    fn add_delivery(&self, monitor: &str, d: Delivery, keep: usize) -> Result<Delivery>;
    /// A monitor's delivery attempts, newest first, before seq `before`, at most `limit`.
    fn deliveries(&self, monitor: &str, before: Option<u64>, limit: usize)
        -> Result<Vec<Delivery>>;
    /// One delivery attempt.
    fn delivery(&self, monitor: &str, seq: u64) -> Result<Option<Delivery>>;
    /// A value of the registry's own key-value space (evaluator checkpoints).
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Sets a value of the registry's key-value space, durably.
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<()>;
}

/// The sled registry.
pub struct SledRegistry {
    db: sled::Db,
    devices: sled::Tree,
    events: sled::Tree,
    commands: sled::Tree,
    meta: sled::Tree,
    creds: sled::Tree,
    alerts: sled::Tree,
    monitors: sled::Tree,
    statuses: sled::Tree,
    alarm_history: sled::Tree,
    outbox: sled::Tree,
    event_ids: sled::Tree,
    monitor_state: sled::Tree,
    deliveries: sled::Tree,
    /// The next outbox sequence number (outbox writes happen under `lock`).
    outbox_next: Mutex<u64>,
    /// Serializes command changes (they are rare) so that read-modify-write needs no CAS loop.
    lock: Mutex<()>,
    /// The queued commands by (expiry, device, id), so that the expiry sweep (every second)
    /// looks only at those due instead of reading every command ever made. Built at open from
    /// the commands tree and kept by `put_command`, through which every command change goes.
    queued: Mutex<std::collections::BTreeSet<(i64, String, u64)>>,
}

fn db_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::corrupt("registry", e.to_string())
}

fn key(device: &str, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 9);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

/// The status of (alert, source) after `kind`, given the current one; `Err` says why nothing
/// changes.
fn next_status(
    current: Option<&AlarmStatus>,
    alert_id: &str,
    source: &str,
    kind: &AlarmChangeKind,
) -> std::result::Result<AlarmStatus, String> {
    use crate::alarm::State;
    let state = current.map_or(State::Reset, |c| c.state);
    let mut next = current.cloned().unwrap_or(AlarmStatus {
        alert_id: alert_id.into(),
        source: source.into(),
        state: State::Reset,
        changed: 0,
        value: None,
        acknowledged_by: None,
        note: None,
        transitions: 0,
        point: None,
        correction: false,
    });
    next.correction = false;
    match kind {
        AlarmChangeKind::Correct { to, at, value } => {
            if state.active() == to.active() && next.changed == *at {
                return Err("no change".into());
            }
            // An acknowledged status moved in time stays acknowledged.
            next.state = if *to == State::Triggered && state == State::Acknowledged {
                State::Acknowledged
            } else {
                *to
            };
            if !next.state.active() {
                next.acknowledged_by = None;
                next.note = None;
            }
            next.changed = *at;
            next.value = value.clone();
            next.point = value.as_ref().map(|_| *at);
            next.correction = true;
        }
        AlarmChangeKind::Evaluated { to, at, value } => {
            if state.active() == to.active() {
                return Err(format!("already {state:?}").to_lowercase());
            }
            next.state = *to;
            next.changed = *at;
            next.value = value.clone();
            next.point = value.as_ref().map(|_| *at);
            next.acknowledged_by = None;
            next.note = None;
        }
        AlarmChangeKind::Acknowledge { by, note, at } => {
            if state != State::Triggered {
                return Err(format!(
                    "only a triggered status can be acknowledged; this one is {}",
                    format!("{state:?}").to_lowercase()
                ));
            }
            next.state = State::Acknowledged;
            next.changed = *at;
            next.acknowledged_by = Some(by.clone());
            next.note = note.clone();
        }
    }
    next.transitions += 1;
    Ok(next)
}

fn status_key(alert_id: &str, source: &str) -> Vec<u8> {
    let mut k = alert_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(source.as_bytes());
    k
}

fn history_key(alert_id: &str, source: &str, n: u64) -> Vec<u8> {
    let mut h = status_key(alert_id, source);
    h.push(0);
    h.extend_from_slice(&n.to_be_bytes());
    h
}

fn prefix(device: &str) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(0);
    k
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(db_err)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(db_err)
}

/// A value stored as JSON under `key`, flushed (every registry change is durable).
fn put_json<T: Serialize>(db: &sled::Db, tree: &sled::Tree, key: &[u8], v: &T) -> Result<()> {
    tree.insert(key, encode(v)?).map_err(db_err)?;
    db.flush().map_err(db_err)?;
    Ok(())
}

/// The JSON value under `key`.
fn get_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>> {
    tree.get(key)
        .map_err(db_err)?
        .map(|v| decode(&v))
        .transpose()
}

/// Every JSON value of a tree, in key order.
fn all_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>> {
    tree.iter()
        .map(|kv| kv.map_err(db_err).and_then(|(_, v)| decode(&v)))
        .collect()
}

/// Up to `limit` JSON values of a tree keyed by id, after id `after`.
fn page_json<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<T>> {
    let iter = match after {
        Some(a) => {
            let mut k = a.as_bytes().to_vec();
            k.push(0);
            tree.range(k..)
        }
        None => tree.range::<&[u8], _>(..),
    };
    iter.take(limit)
        .map(|kv| kv.map_err(db_err).and_then(|(_, v)| decode(&v)))
        .collect()
}

/// Removes `key`, flushed; whether it was there.
fn remove_key(db: &sled::Db, tree: &sled::Tree, key: &[u8]) -> Result<bool> {
    let had = tree.remove(key).map_err(db_err)?.is_some();
    db.flush().map_err(db_err)?;
    Ok(had)
}

impl SledRegistry {
    /// Opens (or creates) the registry in directory `path`.
    pub fn open(path: &Path) -> Result<SledRegistry> {
        // A new registry takes 64 KiB segments: it holds little (devices, credentials, alarm
        // states), and sled's default 512 KiB segment was 1 % of a standard-workload store.
        let segment = match crate::engine::sled_setting(path, "segment_size") {
            Ok(Some(v)) => v.parse().unwrap_or(512 << 10),
            Ok(None) => 64 << 10,
            Err(e) => return Err(StorageError::io(path, e)),
        };
        let cfg = sled::Config::new()
            .path(path)
            .mode(sled::Mode::LowSpace)
            .segment_size(segment)
            .cache_capacity(1 << 20);
        let db = crate::engine::open_sled(&cfg).map_err(db_err)?;
        let t = |n: &str| db.open_tree(n).map_err(db_err);
        SledRegistry {
            devices: t("devices")?,
            events: t("events")?,
            commands: t("commands")?,
            meta: t("meta")?,
            creds: t("credentials")?,
            alerts: t("alerts")?,
            monitors: t("monitors")?,
            statuses: t("alarm_status")?,
            alarm_history: t("alarm_history")?,
            outbox: t("outbox")?,
            event_ids: t("event_ids")?,
            monitor_state: t("monitor_state")?,
            deliveries: t("deliveries")?,
            outbox_next: Mutex::new(1),
            db,
            lock: Mutex::new(()),
            queued: Mutex::new(std::collections::BTreeSet::new()),
        }
        .index_queued()
    }

    fn index_queued(self) -> Result<SledRegistry> {
        if let Some((k, _)) = self.outbox.last().map_err(db_err)? {
            *self.outbox_next.lock() = be_u64(&k) + 1;
        }
        {
            let mut q = self.queued.lock();
            for c in all_json::<Command>(&self.commands)? {
                if c.status == CommandStatus::Queued {
                    q.insert((c.expires, c.device_id, c.id));
                }
            }
        }
        Ok(self)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(db_err)?;
        Ok(())
    }

    fn put_command(&self, c: &Command) -> Result<()> {
        self.commands
            .insert(key(&c.device_id, c.id), encode(c)?)
            .map_err(db_err)?;
        let k = (c.expires, c.device_id.clone(), c.id);
        let mut q = self.queued.lock();
        if c.status == CommandStatus::Queued {
            q.insert(k);
        } else {
            q.remove(&k);
        }
        Ok(())
    }

    fn scan_commands(&self, device: &str, after: u64) -> impl Iterator<Item = Result<Command>> {
        self.commands
            .range(key(device, after.saturating_add(1))..=key(device, u64::MAX))
            .map(|kv| kv.map_err(db_err).and_then(|(_, v)| decode::<Command>(&v)))
    }
}

impl SledRegistry {
    /// Adds a device event and its outbox announcement in one transaction. With `id`, the
    /// announcement has that event id, recorded, and an id recorded before adds nothing.
    fn add_device_event(
        &self,
        device: &str,
        mut event: DeviceEvent,
        id: Option<&str>,
    ) -> Result<Option<DeviceEvent>> {
        let _g = self.lock.lock();
        if let Some(id) = id {
            if self.event_ids.contains_key(id.as_bytes()).map_err(db_err)? {
                return Ok(None);
            }
        }
        let p = prefix(device);
        let last = self
            .events
            .scan_prefix(&p)
            .next_back()
            .transpose()
            .map_err(db_err)?
            .map(|(_, v)| decode::<DeviceEvent>(&v))
            .transpose()?;
        event.seq = last.map_or(1, |e| e.seq + 1);
        // The event and its announcement to the monitors (topic `devices`), in one transaction.
        let seq = *self.outbox_next.lock();
        let ob = OutboxEvent {
            seq,
            id: id.map_or_else(|| format!("device/{device}/{}", event.seq), str::to_string),
            topic: format!("devices/{device}"),
            operation: "UPDATE".into(),
            timestamp: event.time,
            device: Some(device.to_string()),
            object: serde_json::json!({
                "id": device,
                "connectionStatus": event.status,
                "time": crate::time::format_iso(event.time),
                "address": event.address,
            }),
        };
        let (k, v, obv) = (key(device, event.seq), encode(&event)?, encode(&ob)?);
        (&self.events, &self.outbox, &self.event_ids)
            .transaction(|(ev, o, ids)| {
                ev.insert(k.as_slice(), v.as_slice())?;
                o.insert(&seq.to_be_bytes(), obv.as_slice())?;
                if id.is_some() {
                    ids.insert(ob.id.as_bytes(), &seq.to_be_bytes())?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| db_err(format!("{e:?}")))?;
        self.flush()?;
        *self.outbox_next.lock() = seq + 1;
        Ok(Some(event))
    }
}

impl Registry for SledRegistry {
    fn device(&self, id: &str) -> Result<Option<Device>> {
        get_json(&self.devices, id.as_bytes())
    }

    fn put_device(&self, d: &Device) -> Result<()> {
        put_json(&self.db, &self.devices, d.id.as_bytes(), d)
    }

    fn devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<Device>> {
        page_json(&self.devices, after, limit)
    }

    fn add_event(&self, device: &str, event: DeviceEvent) -> Result<DeviceEvent> {
        self.add_device_event(device, event, None)
            .map(|e| e.expect("an event without an id is always added"))
    }

    fn add_event_once(
        &self,
        device: &str,
        event: DeviceEvent,
        id: &str,
    ) -> Result<Option<DeviceEvent>> {
        self.add_device_event(device, event, Some(id))
    }

    fn last_event(&self, device: &str) -> Result<Option<DeviceEvent>> {
        self.events
            .scan_prefix(prefix(device))
            .next_back()
            .transpose()
            .map_err(db_err)?
            .map(|(_, v)| decode::<DeviceEvent>(&v))
            .transpose()
    }

    fn events(&self, device: &str, after: u64, limit: usize) -> Result<Vec<DeviceEvent>> {
        self.events
            .range(key(device, after.saturating_add(1))..=key(device, u64::MAX))
            .take(limit)
            .map(|kv| kv.map_err(db_err).and_then(|(_, v)| decode(&v)))
            .collect()
    }

    fn create_command(
        &self,
        device: &str,
        command: &str,
        parameters: serde_json::Value,
        lifetime: u64,
        now: i64,
    ) -> Result<Command> {
        let _g = self.lock.lock();
        let id = match self.meta.get(b"next_command_id").map_err(db_err)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(db_err)?),
            None => 1,
        };
        self.meta
            .insert(b"next_command_id", &(id + 1).to_be_bytes())
            .map_err(db_err)?;
        let c = Command::queued(id, device, command, parameters, lifetime, now);
        self.put_command(&c)?;
        self.flush()?;
        Ok(c)
    }

    fn insert_command(&self, c: &Command) -> Result<bool> {
        let _g = self.lock.lock();
        if self.command(&c.device_id, c.id)?.is_some() {
            return Ok(false);
        }
        self.put_command(c)?;
        self.flush()?;
        Ok(true)
    }

    fn command(&self, device: &str, id: u64) -> Result<Option<Command>> {
        self.commands
            .get(key(device, id))
            .map_err(db_err)?
            .map(|v| decode(&v))
            .transpose()
    }

    fn commands(&self, device: &str, after: u64, limit: usize) -> Result<Vec<Command>> {
        self.scan_commands(device, after).take(limit).collect()
    }

    fn deliver(&self, device: &str, after: u64, now: i64) -> Result<Vec<Command>> {
        let _g = self.lock.lock();
        let mut out = Vec::new();
        let mut changed = false;
        let all: Vec<Command> = self.scan_commands(device, after).collect::<Result<_>>()?;
        for mut c in all {
            match c.status {
                CommandStatus::Queued if now >= c.expires => {
                    c.status = CommandStatus::Expired;
                    c.updated = now;
                    self.put_command(&c)?;
                    changed = true;
                }
                CommandStatus::Queued => {
                    c.status = CommandStatus::Sent;
                    c.updated = now;
                    self.put_command(&c)?;
                    changed = true;
                    out.push(c);
                }
                CommandStatus::Sent => out.push(c),
                _ => {}
            }
        }
        if changed {
            self.flush()?;
        }
        Ok(out)
    }

    fn update_command(
        &self,
        device: &str,
        id: u64,
        now: i64,
        f: &mut dyn FnMut(&mut Command) -> std::result::Result<(), String>,
    ) -> Result<Option<std::result::Result<Command, String>>> {
        let _g = self.lock.lock();
        let Some(mut c) = self.command(device, id)? else {
            return Ok(None);
        };
        if let Err(e) = f(&mut c) {
            return Ok(Some(Err(e)));
        }
        c.updated = now;
        self.put_command(&c)?;
        self.flush()?;
        Ok(Some(Ok(c)))
    }

    fn put_credential(&self, c: &Credential) -> Result<()> {
        put_json(&self.db, &self.creds, c.id.as_bytes(), c)
    }

    fn credential(&self, id: &str) -> Result<Option<Credential>> {
        get_json(&self.creds, id.as_bytes())
    }

    fn credentials(&self) -> Result<Vec<Credential>> {
        all_json(&self.creds)
    }

    fn put_alert(&self, a: &crate::alarm::Alert) -> Result<()> {
        put_json(&self.db, &self.alerts, a.id.as_bytes(), a)
    }

    fn alert(&self, id: &str) -> Result<Option<crate::alarm::Alert>> {
        get_json(&self.alerts, id.as_bytes())
    }

    fn alerts(&self, after: Option<&str>, limit: usize) -> Result<Vec<crate::alarm::Alert>> {
        page_json(&self.alerts, after, limit)
    }

    fn delete_alert(&self, id: &str) -> Result<bool> {
        remove_key(&self.db, &self.alerts, id.as_bytes())
    }

    fn put_monitor(&self, m: &Monitor) -> Result<()> {
        put_json(&self.db, &self.monitors, m.id.as_bytes(), m)
    }

    fn monitor(&self, id: &str) -> Result<Option<Monitor>> {
        get_json(&self.monitors, id.as_bytes())
    }

    fn monitors(&self) -> Result<Vec<Monitor>> {
        all_json(&self.monitors)
    }

    fn delete_monitor(&self, id: &str) -> Result<bool> {
        remove_key(&self.db, &self.monitors, id.as_bytes())
    }

    fn statuses(&self) -> Result<Vec<AlarmStatus>> {
        all_json(&self.statuses)
    }

    fn alarm_history(
        &self,
        alert_id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, AlarmStatus)>> {
        let p = prefix(alert_id);
        let start = match after {
            Some(a) => {
                let mut k = a.to_vec();
                k.push(0);
                k
            }
            None => p.clone(),
        };
        self.alarm_history
            .range(start..)
            .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&p)))
            .take(limit)
            .map(|kv| {
                kv.map_err(db_err)
                    .and_then(|(k, v)| Ok((k.to_vec(), decode::<AlarmStatus>(&v)?)))
            })
            .collect()
    }

    fn alarm_changes(&self, changes: &[AlarmChange], now: i64) -> Result<Vec<ChangeOutcome>> {
        let _g = self.lock.lock();
        let mut next_seq = *self.outbox_next.lock();
        // Worked out first (reads), then written in one transaction.
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut current: std::collections::HashMap<Vec<u8>, Option<AlarmStatus>> =
            std::collections::HashMap::new();
        struct Write {
            status_key: Vec<u8>,
            history_key: Vec<u8>,
            status: Vec<u8>,
            seq: u64,
            id: String,
            event: Vec<u8>,
        }
        let mut writes: Vec<Write> = Vec::new();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for c in changes {
            if !seen.insert(c.event_id.as_str())
                || self
                    .event_ids
                    .contains_key(c.event_id.as_bytes())
                    .map_err(db_err)?
            {
                outcomes.push(ChangeOutcome::Duplicate);
                continue;
            }
            let k = status_key(&c.alert_id, &c.source);
            if !current.contains_key(&k) {
                let v = get_json::<AlarmStatus>(&self.statuses, &k)?;
                current.insert(k.clone(), v);
            }
            let cur = current.get(&k).and_then(|v| v.as_ref());
            match next_status(cur, &c.alert_id, &c.source, &c.kind) {
                Err(why) => outcomes.push(ChangeOutcome::Refused(why)),
                Ok(next) => {
                    let operation = if cur.is_none() { "INSERTION" } else { "UPDATE" };
                    let ev = OutboxEvent {
                        seq: next_seq,
                        id: c.event_id.clone(),
                        topic: format!("AlarmStatus/{}/{}", c.alert_id, c.source),
                        operation: operation.into(),
                        timestamp: now,
                        device: Some(c.device.clone()),
                        object: serde_json::to_value(&next).map_err(db_err)?,
                    };
                    next_seq += 1;
                    writes.push(Write {
                        status_key: k.clone(),
                        history_key: history_key(&c.alert_id, &c.source, next.transitions),
                        status: encode(&next)?,
                        seq: ev.seq,
                        id: ev.id.clone(),
                        event: encode(&ev)?,
                    });
                    current.insert(k, Some(next.clone()));
                    outcomes.push(ChangeOutcome::Applied(next));
                }
            }
        }
        if writes.is_empty() {
            return Ok(outcomes);
        }
        (
            &self.statuses,
            &self.alarm_history,
            &self.outbox,
            &self.event_ids,
        )
            .transaction(|(st, hi, ob, ids)| {
                for w in &writes {
                    st.insert(w.status_key.as_slice(), w.status.as_slice())?;
                    hi.insert(w.history_key.as_slice(), w.status.as_slice())?;
                    ob.insert(&w.seq.to_be_bytes(), w.event.as_slice())?;
                    ids.insert(w.id.as_bytes(), &w.seq.to_be_bytes())?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| db_err(format!("{e:?}")))?;
        self.flush()?;
        *self.outbox_next.lock() = next_seq;
        Ok(outcomes)
    }

    fn status(&self, alert_id: &str, source: &str) -> Result<Option<AlarmStatus>> {
        get_json(&self.statuses, &status_key(alert_id, source))
    }

    fn recent_transitions(
        &self,
        alert_id: &str,
        source: &str,
        limit: usize,
    ) -> Result<Vec<AlarmStatus>> {
        let mut p = status_key(alert_id, source);
        p.push(0);
        self.alarm_history
            .scan_prefix(&p)
            .rev()
            .take(limit)
            .map(|kv| kv.map_err(db_err).and_then(|(_, v)| decode(&v)))
            .collect()
    }

    fn forget_alert(&self, alert_id: &str) -> Result<()> {
        let _g = self.lock.lock();
        let p = prefix(alert_id);
        for tree in [&self.statuses, &self.alarm_history] {
            let keys: Vec<_> = tree
                .scan_prefix(&p)
                .keys()
                .collect::<std::result::Result<_, _>>()
                .map_err(db_err)?;
            for k in keys {
                tree.remove(k).map_err(db_err)?;
            }
        }
        self.flush()
    }

    fn knows_event(&self, id: &str) -> Result<bool> {
        self.event_ids.contains_key(id.as_bytes()).map_err(db_err)
    }

    fn set_outbox_next(&self, next: u64) {
        let _g = self.lock.lock();
        let mut n = self.outbox_next.lock();
        *n = (*n).max(next);
    }

    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEvent>> {
        self.outbox
            .range(after.saturating_add(1).to_be_bytes()..)
            .take(limit)
            .map(|kv| kv.map_err(db_err).and_then(|(_, v)| decode(&v)))
            .collect()
    }

    fn outbox_last(&self) -> u64 {
        *self.outbox_next.lock() - 1
    }

    fn prune_outbox(&self, before: i64, keep_ids: bool) -> Result<usize> {
        let mut n = 0;
        for kv in self.outbox.iter() {
            let (k, v) = kv.map_err(db_err)?;
            let ev: OutboxEvent = decode(&v)?;
            if ev.timestamp >= before {
                break;
            }
            if !keep_ids {
                self.event_ids.remove(ev.id.as_bytes()).map_err(db_err)?;
            }
            self.outbox.remove(k).map_err(db_err)?;
            n += 1;
        }
        if n > 0 {
            self.flush()?;
        }
        Ok(n)
    }

    fn monitor_state(&self, id: &str) -> Result<Option<MonitorState>> {
        get_json(&self.monitor_state, id.as_bytes())
    }

    fn put_monitor_state(&self, id: &str, st: &MonitorState) -> Result<()> {
        put_json(&self.db, &self.monitor_state, id.as_bytes(), st)
    }

    fn add_delivery(&self, monitor: &str, mut d: Delivery, keep: usize) -> Result<Delivery> {
        let p = prefix(monitor);
        let last = self
            .deliveries
            .scan_prefix(&p)
            .next_back()
            .transpose()
            .map_err(db_err)?
            .map(|(k, _)| be_u64(&k));
        d.seq = last.map_or(1, |s| s + 1);
        self.deliveries
            .insert(key(monitor, d.seq), encode(&d)?)
            .map_err(db_err)?;
        if d.seq > keep as u64 {
            let end = key(monitor, d.seq - keep as u64);
            let old: Vec<_> = self
                .deliveries
                .range(p.clone()..end)
                .keys()
                .collect::<std::result::Result<_, _>>()
                .map_err(db_err)?;
            for k in old {
                self.deliveries.remove(k).map_err(db_err)?;
            }
        }
        Ok(d)
    }

    fn deliveries(
        &self,
        monitor: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let end = key(monitor, before.unwrap_or(u64::MAX));
        self.deliveries
            .range(prefix(monitor)..end)
            .rev()
            .take(limit)
            .map(|kv| kv.map_err(db_err).and_then(|(_, v)| decode(&v)))
            .collect()
    }

    fn delivery(&self, monitor: &str, seq: u64) -> Result<Option<Delivery>> {
        get_json(&self.deliveries, &key(monitor, seq))
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .meta
            .get(key.as_bytes())
            .map_err(db_err)?
            .map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(key.as_bytes(), value).map_err(db_err)?;
        self.flush()
    }

    fn expire(&self, now: i64) -> Result<Vec<Command>> {
        let _g = self.lock.lock();
        let due: Vec<(String, u64)> = self
            .queued
            .lock()
            .iter()
            .take_while(|(expires, _, _)| *expires <= now)
            .map(|(_, d, id)| (d.clone(), *id))
            .collect();
        let mut out = Vec::new();
        for (device, id) in due {
            let Some(mut c) = self.command(&device, id)? else {
                continue;
            };
            if c.status == CommandStatus::Queued && now >= c.expires {
                c.status = CommandStatus::Expired;
                c.updated = now;
                self.put_command(&c)?;
                out.push(c);
            }
        }
        if !out.is_empty() {
            self.flush()?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn new_registries_take_small_segments_and_older_ones_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let (new, old) = (dir.path().join("new"), dir.path().join("old"));
        let conf = |p: &Path| crate::engine::sled_setting(p, "segment_size").unwrap();
        {
            let r = SledRegistry::open(&new).unwrap();
            r.put_meta("k", b"v").unwrap();
        }
        assert_eq!(conf(&new).as_deref(), Some("65536"));
        let db_len = std::fs::metadata(new.join("db")).unwrap().len();
        assert!(
            db_len <= 128 << 10,
            "a nearly empty registry file is {db_len} bytes"
        );
        // A registry made before (sled's default segment) still opens, with its data.
        {
            let db = sled::Config::new().path(&old).open().unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("k", &b"v"[..])
                .unwrap();
            db.flush().unwrap();
        }
        assert_eq!(conf(&old).as_deref(), Some("524288"));
        let r = SledRegistry::open(&old).unwrap();
        assert_eq!(r.get_meta("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    fn evaluated(id: &str, source: &str, to: crate::alarm::State, at: i64) -> AlarmChange {
        AlarmChange {
            event_id: format!("{id}/{source}/{at}"),
            alert_id: id.into(),
            source: source.into(),
            device: "gw".into(),
            kind: AlarmChangeKind::Evaluated {
                to,
                at,
                value: Some(crate::alarm::Observed::Number(at as f64)),
            },
        }
    }

    /// A reopen while the previous handle still holds sled's file lock waits for it (sled
    /// reports the held lock as an `Other` error, which the wait once missed: a flaky test).
    #[test]
    fn reopening_waits_for_the_previous_handle() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledRegistry::open(dir.path()).unwrap();
        first.put_meta("k", b"v").unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let again = SledRegistry::open(dir.path()).unwrap();
        closer.join().unwrap();
        assert_eq!(again.get_meta("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn alarm_changes_go_to_status_history_and_outbox_once() {
        use crate::alarm::State::*;
        let dir = tempfile::tempdir().unwrap();
        {
            let r = SledRegistry::open(dir.path()).unwrap();
            let out = r
                .alarm_changes(
                    &[
                        evaluated("a", "gw/m/v", Triggered, 10),
                        evaluated("a", "gw/m/v", Reset, 20),
                        evaluated("a", "gw/m/v", Reset, 30),
                    ],
                    1_000,
                )
                .unwrap();
            assert!(
                matches!(&out[0], ChangeOutcome::Applied(s) if s.state == Triggered && s.changed == 10)
            );
            assert!(
                matches!(&out[1], ChangeOutcome::Applied(s) if s.state == Reset && s.transitions == 2)
            );
            assert!(matches!(&out[2], ChangeOutcome::Refused(_)));
            // A device event lands in the outbox between them.
            r.add_event(
                "gw",
                DeviceEvent {
                    seq: 0,
                    time: 1_500,
                    status: "disconnected".into(),
                    address: None,
                },
            )
            .unwrap();
        }
        // Reopened: the same transition again (re-derived after a crash) is a duplicate.
        let r = SledRegistry::open(dir.path()).unwrap();
        let out = r
            .alarm_changes(
                &[
                    evaluated("a", "gw/m/v", Triggered, 10),
                    evaluated("a", "gw/m/v", Triggered, 40),
                ],
                2_000,
            )
            .unwrap();
        assert_eq!(out[0], ChangeOutcome::Duplicate);
        assert!(matches!(&out[1], ChangeOutcome::Applied(s) if s.changed == 40));
        // Acknowledging: only a triggered status, and it stays active.
        let ack = |at| AlarmChange {
            event_id: format!("ack/{at}"),
            alert_id: "a".into(),
            source: "gw/m/v".into(),
            device: "gw".into(),
            kind: AlarmChangeKind::Acknowledge {
                by: "ops".into(),
                note: Some("on it".into()),
                at,
            },
        };
        let out = r.alarm_changes(&[ack(50), ack(60)], 3_000).unwrap();
        assert!(
            matches!(&out[0], ChangeOutcome::Applied(s) if s.state == Acknowledged && s.acknowledged_by.as_deref() == Some("ops"))
        );
        assert!(matches!(&out[1], ChangeOutcome::Refused(_)));
        let ev = r.outbox_after(0, 100).unwrap();
        let topics: Vec<_> = ev.iter().map(|e| (e.seq, e.topic.as_str())).collect();
        assert_eq!(
            topics,
            vec![
                (1, "AlarmStatus/a/gw/m/v"),
                (2, "AlarmStatus/a/gw/m/v"),
                (3, "devices/gw"),
                (4, "AlarmStatus/a/gw/m/v"),
                (5, "AlarmStatus/a/gw/m/v"),
            ]
        );
        assert_eq!(ev[4].object["state"], "acknowledged");
        assert_eq!(r.outbox_last(), 5);
        let hist = r.alarm_history("a", None, 100).unwrap();
        assert_eq!(hist.len(), 4);
        // Pruning drops the old events and their ids.
        assert_eq!(r.prune_outbox(1_600, false).unwrap(), 3);
        assert_eq!(r.outbox_after(0, 100).unwrap()[0].seq, 4);
    }

    #[test]
    fn commands_are_delivered_by_id_once_queued_and_again_while_sent() {
        let dir = tempfile::tempdir().unwrap();
        let r = SledRegistry::open(dir.path()).unwrap();
        let a = r
            .create_command("gw1", "read_now", json!({}), 60, 1_000)
            .unwrap();
        let b = r
            .create_command("gw1", "set_interval", json!({"seconds": 5}), 60, 1_000)
            .unwrap();
        let other = r
            .create_command("gw2", "read_now", json!({}), 60, 1_000)
            .unwrap();
        assert!(a.id < b.id && b.id < other.id);
        let got = r.deliver("gw1", 0, 2_000).unwrap();
        assert_eq!(
            got.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![a.id, b.id]
        );
        assert!(got.iter().all(|c| c.status == CommandStatus::Sent));
        // The answer was lost: asking again with the same cursor gives them again.
        assert_eq!(r.deliver("gw1", 0, 2_100).unwrap().len(), 2);
        // After the first, only the second.
        assert_eq!(r.deliver("gw1", a.id, 2_100).unwrap()[0].id, b.id);
        // Finished commands are not delivered.
        r.update_command("gw1", a.id, 2_200, &mut |c| {
            c.status = CommandStatus::Succeeded;
            Ok(())
        })
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(r.deliver("gw1", 0, 2_300).unwrap().len(), 1);
        assert_eq!(r.deliver("gw2", 0, 2_300).unwrap()[0].id, other.id);
    }

    #[test]
    fn events_with_given_ids_are_recorded_once_and_numbered_from_a_given_outbox_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let r = SledRegistry::open(dir.path()).unwrap();
        let ev = |status: &str, time: i64| DeviceEvent {
            seq: 0,
            time,
            status: status.into(),
            address: None,
        };
        // A cluster node numbers its outbox as the shared event stream is.
        r.set_outbox_next(41);
        let first = r
            .add_event_once("gw1", ev("connected", 1_000), "device/gw1/connected/1000")
            .unwrap()
            .unwrap();
        assert_eq!(first.seq, 1);
        assert!(r.knows_event("device/gw1/connected/1000").unwrap());
        // Made again (a partition's new holder replaying its log): nothing is added.
        assert_eq!(
            r.add_event_once("gw1", ev("connected", 1_000), "device/gw1/connected/1000")
                .unwrap(),
            None
        );
        // The next number never goes back.
        r.set_outbox_next(10);
        r.add_event_once(
            "gw1",
            ev("disconnected", 9_000),
            "device/gw1/disconnected/9000",
        )
        .unwrap()
        .unwrap();
        let out = r.outbox_after(0, 10).unwrap();
        let got: Vec<(u64, &str)> = out.iter().map(|e| (e.seq, e.id.as_str())).collect();
        assert_eq!(
            got,
            [
                (41, "device/gw1/connected/1000"),
                (42, "device/gw1/disconnected/9000")
            ]
        );
        assert_eq!(r.events("gw1", 0, 10).unwrap().len(), 2);
        // Pruned keeping the ids, an event is still known.
        assert_eq!(r.prune_outbox(2_000, true).unwrap(), 1);
        assert!(r.knows_event("device/gw1/connected/1000").unwrap());
        assert_eq!(r.prune_outbox(10_000, false).unwrap(), 1);
        assert!(!r.knows_event("device/gw1/disconnected/9000").unwrap());
    }

    #[test]
    fn queued_commands_expire_and_everything_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let r = SledRegistry::open(dir.path()).unwrap();
            r.create_command("gw1", "x", json!(null), 5, 10_000)
                .unwrap();
            let keep = r
                .create_command("gw1", "y", json!(null), 100, 10_000)
                .unwrap();
            let expired = r.expire(15_000).unwrap();
            assert_eq!(expired.len(), 1);
            assert_eq!(expired[0].status, CommandStatus::Expired);
            r.put_device(&Device::new("gw1", 1)).unwrap();
            r.add_event(
                "gw1",
                DeviceEvent {
                    seq: 0,
                    time: 5,
                    status: "connected".into(),
                    address: None,
                },
            )
            .unwrap();
            keep.id
        };
        let r = SledRegistry::open(dir.path()).unwrap();
        let all = r.commands("gw1", 0, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].status, CommandStatus::Expired);
        assert_eq!(
            r.command("gw1", id).unwrap().unwrap().status,
            CommandStatus::Queued
        );
        // Ids keep growing after a reopen.
        assert!(
            r.create_command("gw1", "z", json!(null), 5, 20_000)
                .unwrap()
                .id
                > id
        );
        // A poll never delivers an expired command, even before the sweep.
        let late = r
            .create_command("gw1", "late", json!(null), 1, 20_000)
            .unwrap();
        assert!(r
            .deliver("gw1", id, 21_500)
            .unwrap()
            .iter()
            .all(|c| c.id != late.id));
        assert_eq!(
            r.command("gw1", late.id).unwrap().unwrap().status,
            CommandStatus::Expired
        );
        assert_eq!(r.device("gw1").unwrap().unwrap().registered, 1);
        let ev = r
            .add_event(
                "gw1",
                DeviceEvent {
                    seq: 0,
                    time: 9,
                    status: "disconnected".into(),
                    address: None,
                },
            )
            .unwrap();
        assert_eq!(ev.seq, 2);
        assert_eq!(r.events("gw1", 0, 10).unwrap().len(), 2);
        assert_eq!(r.events("gw1", 1, 10).unwrap()[0].status, "disconnected");
        // The sweep's index of queued commands is rebuilt at open: one queued before the reopen
        // expires after it, and finished ones are not touched again.
        let swept = r.expire(200_000).unwrap();
        let swept: Vec<u64> = swept.iter().map(|c| c.id).collect();
        assert!(swept.contains(&id), "{swept:?}");
        assert_eq!(
            r.command("gw1", id).unwrap().unwrap().status,
            CommandStatus::Expired
        );
        assert!(r.expire(300_000).unwrap().is_empty());
    }

    #[test]
    fn devices_page_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let r = SledRegistry::open(dir.path()).unwrap();
        for id in ["gw-3", "gw-1", "gw-2", "gw-10"] {
            r.put_device(&Device::new(id, 0)).unwrap();
        }
        let ids = |v: Vec<Device>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(r.devices(None, 2).unwrap()), vec!["gw-1", "gw-10"]);
        assert_eq!(
            ids(r.devices(Some("gw-10"), 10).unwrap()),
            vec!["gw-2", "gw-3"]
        );
    }

    fn status(state: crate::alarm::State, at: i64) -> AlarmStatus {
        AlarmStatus {
            alert_id: String::new(),
            source: String::new(),
            state,
            changed: at,
            value: Some(crate::alarm::Observed::Number(205.0)),
            acknowledged_by: None,
            note: None,
            transitions: 0,
            point: None,
            correction: false,
        }
    }

    /// One evaluated change with event id `id`.
    fn change(
        alert: &str,
        source: &str,
        to: crate::alarm::State,
        at: i64,
        id: String,
    ) -> AlarmChange {
        AlarmChange {
            event_id: id,
            alert_id: alert.into(),
            source: source.into(),
            device: "gw-1".into(),
            kind: AlarmChangeKind::Evaluated {
                to,
                at,
                value: status(to, at).value,
            },
        }
    }

    #[test]
    fn concurrent_triggers_of_one_pair_make_one_active_status() {
        use crate::alarm::State;
        let dir = tempfile::tempdir().unwrap();
        let r = std::sync::Arc::new(SledRegistry::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    r.alarm_changes(
                        &[change(
                            "a1",
                            "gw-1/m/v",
                            State::Triggered,
                            i,
                            format!("t{i}"),
                        )],
                        i,
                    )
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = r.statuses().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].state, all[0].transitions), (State::Triggered, 1));
        assert_eq!(r.alarm_history("a1", None, 10).unwrap().len(), 1);
    }

    #[test]
    fn concurrent_changes_of_one_pair_are_serialized() {
        use crate::alarm::State;
        let dir = tempfile::tempdir().unwrap();
        let r = std::sync::Arc::new(SledRegistry::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    // Each call fires and resets: both apply only if no other call interleaves.
                    for n in 0..25 {
                        let out = r
                            .alarm_changes(
                                &[
                                    change("a1", "s", State::Triggered, 0, format!("{t}/{n}/t")),
                                    change("a1", "s", State::Reset, 0, format!("{t}/{n}/r")),
                                ],
                                0,
                            )
                            .unwrap();
                        assert!(out.iter().all(|o| matches!(o, ChangeOutcome::Applied(_))));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Every change saw the one before it: 200 transitions, strictly alternating.
        let h = r.alarm_history("a1", None, 1000).unwrap();
        assert_eq!(h.len(), 200);
        assert!(h.windows(2).all(|w| w[0].1.state != w[1].1.state));
        assert_eq!(r.statuses().unwrap()[0].transitions, 200);
    }

    #[test]
    fn transitions_are_kept_in_order_per_alert_and_survive_reopen() {
        use crate::alarm::State;
        let dir = tempfile::tempdir().unwrap();
        {
            let r = SledRegistry::open(dir.path()).unwrap();
            for (i, st) in [
                State::Triggered,
                State::Acknowledged,
                State::Reset,
                State::Triggered,
            ]
            .into_iter()
            .enumerate()
            {
                let mut c = change("a1", "gw-1/m/v", st, i as i64, format!("e{i}"));
                if st == State::Acknowledged {
                    c.kind = AlarmChangeKind::Acknowledge {
                        by: "ops".into(),
                        note: None,
                        at: i as i64,
                    };
                }
                let got = match r.alarm_changes(&[c], 0).unwrap().remove(0) {
                    ChangeOutcome::Applied(s) => s,
                    other => panic!("{other:?}"),
                };
                assert_eq!(got.transitions, i as u64 + 1);
            }
            let two = |to, id: &str| change("a1", "gw-2/m/v", to, 9, id.into());
            r.alarm_changes(&[two(State::Triggered, "g2")], 0).unwrap();
            r.alarm_changes(
                &[change("a10", "gw-1/m/v", State::Triggered, 9, "a10".into())],
                0,
            )
            .unwrap();
            // No change: nothing written.
            let out = r
                .alarm_changes(&[two(State::Triggered, "g2-again")], 0)
                .unwrap();
            assert!(matches!(out[0], ChangeOutcome::Refused(_)));
            let same = r.status("a1", "gw-2/m/v").unwrap().unwrap();
            assert_eq!(same.transitions, 1);
        }
        let r = SledRegistry::open(dir.path()).unwrap();
        let h = r.alarm_history("a1", None, 100).unwrap();
        let states: Vec<(&str, State)> = h
            .iter()
            .map(|(_, s)| (s.source.as_str(), s.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("gw-1/m/v", State::Triggered),
                ("gw-1/m/v", State::Acknowledged),
                ("gw-1/m/v", State::Reset),
                ("gw-1/m/v", State::Triggered),
                ("gw-2/m/v", State::Triggered),
            ]
        );
        // Paging with the returned key; another alert's history (a10) is not mixed in.
        let page = r.alarm_history("a1", Some(&h[1].0), 2).unwrap();
        assert_eq!(
            page.iter().map(|(_, s)| s.state).collect::<Vec<_>>(),
            vec![State::Reset, State::Triggered]
        );
        assert_eq!(r.statuses().unwrap().len(), 3);
    }
}
