//! The alarm evaluator (design: `docs/alarms.md`): a durable consumer of the store's change feed
//! that runs every enabled alert over the points in log order, in the data's own time, and
//! writes each status change, with its history entry and its outbox event, to the registry.
//!
//! - **Rule index.** Each stream path gets, on its first point, the list of rules whose scope
//!   matches it; a point without rules costs one lookup. The index is dropped when rules change
//!   and when device groups change.
//! - **State.** One [`SourceState`] per (alert, source). It is checkpointed into the registry,
//!   with the feed cursor, every [`CHECKPOINT_EVERY`]; the store keeps the log after that cursor
//!   (a feed hold). After a crash the evaluator reads the log again from the checkpoint, derives
//!   the same transitions with the same event ids (`alert/source/time/state`), and the registry
//!   skips those it already has.
//! - **Clock rules** (Missing DataPoint, Device Offline, Excessive Disconnects) are checked every
//!   [`SWEEP_EVERY`] in server time.
//! - **Late points** (older than the last one evaluated for a source) evaluate the source again
//!   from its last transition before them, over the stored points, and correct the transitions
//!   that moved ([`Worker::reevaluate`]).

use meterstream_storage::alarm::{Alert, AlertRule, AlertScope, HeldState, Observed, State};
use meterstream_storage::path::{device_id, matches_pattern};
use meterstream_storage::registry::{AlarmChange, AlarmChangeKind, ChangeOutcome, Registry};
use meterstream_storage::{Store, Value};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The evaluator's name as a feed consumer.
pub const CONSUMER: &str = "alarms";
/// How often the evaluator's state is checkpointed (while it changes).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// How often the clock rules are checked.
pub const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Registry key of the checkpoint.
const CHECKPOINT_KEY: &str = "evaluator";
/// Most points read from the feed at once.
const FEED_POINTS: usize = 50_000;

/// What the evaluator remembers per (alert, source).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// Status as the evaluator sees it (triggered or reset), the current run and the last data
    /// time evaluated.
    pub held: HeldState,
    /// On change: the previous value.
    #[serde(default)]
    pub last_value: Option<Observed>,
    /// Missing DataPoint: server time of the last point.
    #[serde(default)]
    pub last_arrival: Option<i64>,
    /// Excessive Disconnects: the last device event read, and the disconnect times kept.
    #[serde(default)]
    pub events_seen: u64,
    /// Disconnect times (server ms) within the window.
    #[serde(default)]
    pub disconnects: Vec<i64>,
}

#[derive(Serialize, Deserialize, Default)]
struct Checkpoint {
    cursor: u64,
    /// (alert id, its `updated`): states of rules changed since are dropped at load.
    rules: Vec<(String, i64)>,
    states: Vec<(String, String, SourceState)>,
}

/// Figures, for metrics and tests.
#[derive(Default)]
pub struct EvaluatorStats {
    /// The feed cursor evaluated up to.
    pub cursor: AtomicU64,
    /// Status changes written.
    pub transitions: AtomicU64,
    /// Points not evaluated because they were older than the last one of their source.
    pub out_of_order: AtomicU64,
    /// Points evaluated against at least one rule.
    pub evaluated: AtomicU64,
    /// Sources evaluated again because of late points.
    pub reevaluated: AtomicU64,
}

/// The evaluator: a thread over the store's feed.
pub struct Evaluator {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    generation: AtomicU64,
    /// The applied sequence number when rules changed, for a reload that starts reading then.
    rules_from: AtomicU64,
    wake: Mutex<bool>,
    cond: Condvar,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// On a cluster node: whether this node answers for a device (holds its partition and has
    /// applied it). The clock rules are checked only for those.
    holds: std::sync::OnceLock<crate::cluster::Holds>,
    /// Figures.
    pub stats: EvaluatorStats,
}

impl Evaluator {
    /// Starts the evaluator thread.
    pub fn start(store: Arc<dyn Store>, registry: Arc<dyn Registry>) -> Arc<Evaluator> {
        let ev = Arc::new(Evaluator {
            store: store.clone(),
            registry,
            generation: AtomicU64::new(1),
            rules_from: AtomicU64::new(u64::MAX),
            wake: Mutex::new(false),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            holds: std::sync::OnceLock::new(),
            stats: EvaluatorStats::default(),
        });
        let weak: Weak<Evaluator> = Arc::downgrade(&ev);
        store.on_applied(Box::new(move |_| {
            if let Some(e) = weak.upgrade() {
                e.wake();
            }
        }));
        let e2 = ev.clone();
        let t = std::thread::Builder::new()
            .name("meterstream-alarms".into())
            .spawn(move || e2.run())
            .expect("spawning the alarm evaluator thread");
        *ev.thread.lock() = Some(t);
        ev
    }

    /// On a cluster node: `holds(device)` says whether this node answers for the device now.
    /// Set once, at start.
    pub fn set_cluster(&self, holds: crate::cluster::Holds) {
        let _ = self.holds.set(holds);
    }

    fn answers_for(&self, device: &str) -> bool {
        self.holds.get().is_none_or(|f| f(device))
    }

    /// Tells the evaluator that alert rules (or device groups) changed. Points applied from now
    /// on are evaluated with them, even if the evaluator takes them up later.
    pub fn rules_changed(&self) {
        self.rules_from
            .fetch_min(self.store.applied_seq(), Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake();
    }

    /// Wakes the evaluator (new points, a change).
    pub fn wake(&self) {
        *self.wake.lock() = true;
        self.cond.notify_one();
    }

    /// The evaluator's figures as Prometheus text.
    pub fn render_metrics(&self) -> String {
        let lag = self
            .store
            .applied_seq()
            .saturating_sub(self.stats.cursor.load(Ordering::Acquire));
        let mut out = String::new();
        for (name, kind, help, v) in [
            (
                "meterstream_alarm_feed_lag_records",
                "gauge",
                "Log records applied by the store and not yet evaluated for alarms.",
                lag,
            ),
            (
                "meterstream_alarm_transitions_total",
                "counter",
                "Alarm status changes written by the evaluator.",
                self.stats.transitions.load(Ordering::Relaxed),
            ),
            (
                "meterstream_alarm_points_evaluated_total",
                "counter",
                "Points evaluated against at least one alert rule.",
                self.stats.evaluated.load(Ordering::Relaxed),
            ),
            (
                "meterstream_alarm_reevaluations_total",
                "counter",
                "Sources evaluated again from their stored points because late points came.",
                self.stats.reevaluated.load(Ordering::Relaxed),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        }
        out
    }

    /// Stops the thread after a last checkpoint.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    fn sleep(&self, d: Duration) {
        let mut w = self.wake.lock();
        if !*w {
            self.cond.wait_for(&mut w, d);
        }
        *w = false;
    }

    fn run(&self) {
        let mut w = match Worker::load(self) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "the alarm evaluator could not start; alarms are not evaluated");
                return;
            }
        };
        let mut last_cp = Instant::now();
        let mut last_sweep = Instant::now() - SWEEP_EVERY;
        let mut seen_generation = 0;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let g = self.generation.load(Ordering::Acquire);
            let result = (|| -> Result<bool, String> {
                if g != seen_generation {
                    w.reload(self)?;
                    seen_generation = g;
                }
                let busy = w.step(self)?;
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = Instant::now();
                    w.sweep(self, meterstream_storage::time::now_ms())?;
                }
                if w.dirty && (last_cp.elapsed() >= CHECKPOINT_EVERY || stopping) {
                    w.checkpoint(self)?;
                    last_cp = Instant::now();
                }
                Ok(busy)
            })();
            match result {
                Ok(true) if !stopping => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "alarm evaluation failed; retrying in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            if stopping {
                break;
            }
            self.sleep(SWEEP_EVERY);
        }
    }
}

/// A rule as the worker holds it.
struct Rule {
    alert: Alert,
    id: Arc<str>,
}

impl Rule {
    /// Whether the rule reads data points.
    fn on_data(&self) -> bool {
        matches!(
            self.alert.rule,
            AlertRule::Condition { .. } | AlertRule::OnChange | AlertRule::Missing { .. }
        )
    }

    /// The source a point of `path` counts for: the device for device-wide Missing rules, the
    /// stream otherwise.
    fn source(&self, path: &Arc<str>) -> Arc<str> {
        match (&self.alert.rule, &self.alert.scope) {
            (AlertRule::Missing { .. }, AlertScope::Device(_) | AlertScope::Group(_)) => {
                Arc::from(device_id(path))
            }
            _ => path.clone(),
        }
    }

    fn covers_device(&self, device: &str, groups: &HashMap<String, String>) -> bool {
        match &self.alert.scope {
            AlertScope::Device(d) => d == device,
            AlertScope::Group(g) => groups.get(device) == Some(g),
            AlertScope::Resource(p) => {
                let first = p.split('/').next().unwrap_or("");
                first == "*" || first == device
            }
        }
    }

    fn covers_path(&self, path: &str, groups: &HashMap<String, String>) -> bool {
        match &self.alert.scope {
            AlertScope::Resource(p) => matches_pattern(p, path),
            _ => self.covers_device(device_id(path), groups),
        }
    }
}

type Key = (Arc<str>, Arc<str>);

/// Where to find the data rules of a path without trying every rule: exact stream paths and
/// devices are looked up; only patterns with `*` are tried one by one.
#[derive(Default)]
struct RuleLookup {
    exact: HashMap<String, Vec<u32>>,
    device: HashMap<String, Vec<u32>>,
    group: HashMap<String, Vec<u32>>,
    wildcard: Vec<u32>,
}

impl RuleLookup {
    fn build(rules: &[Rule]) -> RuleLookup {
        let mut l = RuleLookup::default();
        for (i, r) in rules.iter().enumerate() {
            if !r.on_data() {
                continue;
            }
            let i = i as u32;
            match &r.alert.scope {
                AlertScope::Resource(p) if p.split('/').any(|s| s == "*") => l.wildcard.push(i),
                AlertScope::Resource(p) => l.exact.entry(p.clone()).or_default().push(i),
                AlertScope::Device(d) => l.device.entry(d.clone()).or_default().push(i),
                AlertScope::Group(g) => l.group.entry(g.clone()).or_default().push(i),
            }
        }
        l
    }
}

struct Worker {
    rules: Vec<Rule>,
    lookup: RuleLookup,
    by_id: HashMap<Arc<str>, usize>,
    index: HashMap<Arc<str>, Arc<[u32]>>,
    groups: HashMap<String, String>,
    groups_read: Option<Instant>,
    states: HashMap<Key, SourceState>,
    cursor: u64,
    dirty: bool,
    changes: Vec<AlarmChange>,
}

fn observed(v: &Value) -> Option<Observed> {
    match v {
        Value::Int(i) => Some(Observed::Number(*i as f64)),
        Value::Float(f) => Some(Observed::Number(*f)),
        Value::Text(t) => Some(Observed::Text(t.clone())),
        Value::Bytes(_) => None,
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Reset => "reset",
        State::Triggered => "triggered",
        State::Acknowledged => "acknowledged",
    }
}

impl Worker {
    fn load(ev: &Evaluator) -> Result<Worker, String> {
        let cp: Option<Checkpoint> = ev
            .registry
            .get_meta(CHECKPOINT_KEY)
            .map_err(|e| e.to_string())?
            .map(|b| rmp_serde::from_slice(&b))
            .transpose()
            .map_err(|e| format!("the evaluator checkpoint cannot be read: {e}"))?;
        let mut w = Worker {
            rules: Vec::new(),
            lookup: RuleLookup::default(),
            by_id: HashMap::new(),
            index: HashMap::new(),
            groups: HashMap::new(),
            groups_read: None,
            states: HashMap::new(),
            cursor: 0,
            dirty: true,
            changes: Vec::new(),
        };
        match cp {
            Some(cp) => {
                w.cursor = cp.cursor;
                let rules = ev
                    .registry
                    .alerts(None, usize::MAX)
                    .map_err(|e| e.to_string())?;
                let unchanged: HashMap<&str, i64> =
                    cp.rules.iter().map(|(id, u)| (id.as_str(), *u)).collect();
                let keep: std::collections::HashSet<&str> = rules
                    .iter()
                    .filter(|a| unchanged.get(a.id.as_str()) == Some(&a.updated))
                    .map(|a| a.id.as_str())
                    .collect();
                for (a, s, st) in cp.states {
                    if keep.contains(a.as_str()) {
                        w.states.insert((Arc::from(a), Arc::from(s)), st);
                    }
                }
            }
            None => w.cursor = ev.store.applied_seq(),
        }
        ev.store
            .feed_hold(CONSUMER, Some(w.cursor))
            .map_err(|e| e.to_string())?;
        ev.stats.cursor.store(w.cursor, Ordering::Release);
        Ok(w)
    }

    /// Reads the rules again; states of rules that changed or went are dropped (a changed rule
    /// starts again from its stored statuses).
    fn reload(&mut self, ev: &Evaluator) -> Result<(), String> {
        let changed_at = ev.rules_from.swap(u64::MAX, Ordering::AcqRel);
        let alerts = ev
            .registry
            .alerts(None, usize::MAX)
            .map_err(|e| e.to_string())?;
        let before: HashMap<Arc<str>, i64> = self
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.alert.updated))
            .collect();
        self.rules = alerts
            .into_iter()
            .filter(|a| a.enabled)
            .map(|a| Rule {
                id: Arc::from(a.id.as_str()),
                alert: a,
            })
            .collect();
        self.by_id = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let current: HashMap<&str, i64> = self
            .rules
            .iter()
            .map(|r| (&*r.id, r.alert.updated))
            .collect();
        let first = before.is_empty();
        self.states.retain(|(a, _), _| {
            current
                .get(&**a)
                .is_some_and(|u| first || before.get(a) == Some(u))
        });
        self.index.clear();
        self.lookup = RuleLookup::build(&self.rules);
        // Without rules the evaluator needs no log: the store keeps none for it, and its feed
        // costs ingest nothing. Rules start from the present.
        if self.rules.is_empty() {
            ev.store
                .feed_hold(CONSUMER, None)
                .map_err(|e| e.to_string())?;
        } else if ev.store.feed_consumer(CONSUMER).is_none() {
            self.cursor = changed_at.min(ev.store.applied_seq());
            ev.store
                .feed_hold(CONSUMER, Some(self.cursor))
                .map_err(|e| e.to_string())?;
        }
        self.read_groups(ev)?;
        self.seed_clock_rules(ev)?;
        self.dirty = true;
        Ok(())
    }

    fn read_groups(&mut self, ev: &Evaluator) -> Result<(), String> {
        if !self
            .rules
            .iter()
            .any(|r| matches!(r.alert.scope, AlertScope::Group(_)))
            && !self.rules.iter().any(|r| !r.on_data())
        {
            self.groups.clear();
            return Ok(());
        }
        let groups: HashMap<String, String> = ev
            .registry
            .all_devices()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|d| (d.id, d.group.unwrap_or_default()))
            .collect();
        if groups != self.groups {
            self.index.clear();
            self.groups = groups;
        }
        self.groups_read = Some(Instant::now());
        Ok(())
    }

    /// The state of (rule, source), made from the stored status the first time. Called per
    /// group of points and rule: the key is two reference-counted names, no copy.
    fn state<'a>(
        states: &'a mut HashMap<Key, SourceState>,
        registry: &dyn Registry,
        rule: &Rule,
        source: Arc<str>,
    ) -> Result<&'a mut SourceState, String> {
        use std::collections::hash_map::Entry;
        Ok(match states.entry((rule.id.clone(), source)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let stored = registry
                    .status(&rule.id, &v.key().1)
                    .map_err(|e| e.to_string())?;
                v.insert(SourceState {
                    held: HeldState {
                        state: stored
                            .filter(|s| s.state.active())
                            .map(|_| State::Triggered),
                        run_since: None,
                        last_ts: None,
                    },
                    ..SourceState::default()
                })
            }
        })
    }

    /// Missing DataPoint sources that have not sent anything yet start their wait when the
    /// rule was last changed, or at their stream's last point if later.
    fn seed_clock_rules(&mut self, ev: &Evaluator) -> Result<(), String> {
        for rule in &self.rules {
            let AlertRule::Missing { .. } = rule.alert.rule else {
                continue;
            };
            let from = rule.alert.updated;
            let mut sources: Vec<(String, i64)> = Vec::new();
            match &rule.alert.scope {
                AlertScope::Resource(p) => {
                    let mut after: Option<String> = None;
                    loop {
                        let page = ev
                            .store
                            .matching_streams(p, after.as_deref(), 1000)
                            .map_err(|e| e.to_string())?;
                        let Some(last) = page.last() else { break };
                        after = Some(last.0.clone());
                        for (path, _) in page {
                            let last = ev
                                .store
                                .stream(&path)
                                .ok()
                                .and_then(|s| s.current)
                                .map_or(from, |c| c.server_timestamp.max(from));
                            sources.push((path, last));
                        }
                    }
                }
                _ => {
                    for d in self.groups.keys() {
                        if rule.covers_device(d, &self.groups) {
                            sources.push((d.clone(), from));
                        }
                    }
                }
            }
            for (source, last) in sources {
                let st = Self::state(
                    &mut self.states,
                    &*ev.registry,
                    rule,
                    Arc::from(source.as_str()),
                )?;
                if st.last_arrival.is_none() {
                    st.last_arrival = Some(last);
                }
            }
        }
        Ok(())
    }

    fn rules_for(&mut self, path: &Arc<str>) -> Arc<[u32]> {
        if let Some(r) = self.index.get(path) {
            return r.clone();
        }
        let l = &self.lookup;
        let device = device_id(path);
        let mut list: Vec<u32> = Vec::new();
        list.extend(l.exact.get(&**path).into_iter().flatten());
        list.extend(l.device.get(device).into_iter().flatten());
        if let Some(g) = self.groups.get(device) {
            list.extend(l.group.get(g).into_iter().flatten());
        }
        list.extend(
            l.wildcard
                .iter()
                .filter(|&&i| self.rules[i as usize].covers_path(path, &self.groups)),
        );
        list.sort_unstable();
        let list: Arc<[u32]> = list.into();
        self.index.insert(path.clone(), list.clone());
        list
    }

    fn change(&mut self, rule: usize, source: &str, to: State, at: i64, value: Option<Observed>) {
        let id = &self.rules[rule].id;
        self.changes.push(AlarmChange {
            event_id: format!("{id}/{source}/{at}/{}", state_name(to)),
            alert_id: id.to_string(),
            source: source.to_string(),
            device: device_id(source).to_string(),
            kind: AlarmChangeKind::Evaluated { to, at, value },
        });
    }

    /// Evaluates the next feed read; whether there may be more to read.
    fn step(&mut self, ev: &Evaluator) -> Result<bool, String> {
        if self
            .groups_read
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.read_groups(ev)?;
        }
        if self.rules.is_empty() {
            let applied = ev.store.applied_seq();
            self.dirty |= applied != self.cursor;
            self.cursor = applied;
            ev.stats.cursor.store(self.cursor, Ordering::Release);
            return Ok(false);
        }
        let feed = ev
            .store
            .feed(self.cursor, FEED_POINTS)
            .map_err(|e| e.to_string())?;
        if let Some((from, to)) = feed.lost {
            tracing::error!(
                from,
                to,
                "the alarm evaluator was behind the log's retention; points of those log records were not evaluated"
            );
        }
        let busy = feed.next != self.cursor;
        let registry = ev.registry.clone();
        for rec in &feed.records {
            let server_ts = rec.server_ts();
            for (path, points) in rec.groups() {
                let rules = self.rules_for(path);
                if rules.is_empty() {
                    continue;
                }
                let mut late: Vec<(usize, Arc<str>, i64, i64)> = Vec::new();
                ev.stats
                    .evaluated
                    .fetch_add(points.len() as u64, Ordering::Relaxed);
                for &ri in rules.iter() {
                    let ri = ri as usize;
                    let source = self.rules[ri].source(path);
                    let rule = &self.rules[ri];
                    // Only a cluster node seeds a new source's run (a restored partition).
                    let fresh = ev.holds.get().is_some()
                        && !self.states.contains_key(&(rule.id.clone(), source.clone()));
                    let st = Self::state(&mut self.states, &*registry, rule, source.clone())?;
                    if fresh {
                        if let (AlertRule::Condition { fire, reset }, Some(first)) =
                            (&rule.alert.rule, points.iter().map(|p| p.ts).min())
                        {
                            let watch = if st.held.state().active() {
                                reset
                            } else {
                                fire
                            };
                            seed_run(
                                &*ev.store,
                                &*registry,
                                &rule.id,
                                &source,
                                path,
                                watch,
                                &mut st.held,
                                first,
                            )?;
                        }
                    }
                    let mut out: Vec<(State, i64, Option<Observed>)> = Vec::new();
                    let value_rule = matches!(
                        rule.alert.rule,
                        AlertRule::Condition { .. } | AlertRule::OnChange
                    );
                    if let Some(last) = st.held.last_ts.filter(|_| value_rule) {
                        let earliest = points.iter().map(|p| p.ts).min().unwrap_or(i64::MAX);
                        if earliest <= last {
                            // Late points: evaluate the source again from the earliest one.
                            let latest = points.iter().map(|p| p.ts).max().unwrap_or(last);
                            late.push((ri, source, earliest, latest.max(last)));
                            continue;
                        }
                    }
                    match &rule.alert.rule {
                        AlertRule::Condition { fire, reset } => {
                            for p in points {
                                let Some(v) = observed(&p.value) else {
                                    continue;
                                };
                                if let Some(t) = st.held.step(fire, reset, p.ts, &v) {
                                    out.push((t.to, t.at, Some(t.value)));
                                }
                            }
                        }
                        AlertRule::OnChange => {
                            for p in points {
                                let Some(v) = observed(&p.value) else {
                                    continue;
                                };
                                let active = st.held.state().active();
                                let changed =
                                    meterstream_storage::alarm::changed(st.last_value.as_ref(), &v);
                                if changed && !active {
                                    st.held.state = Some(State::Triggered);
                                    out.push((State::Triggered, p.ts, Some(v.clone())));
                                } else if !changed && active && st.last_value.is_some() {
                                    st.held.state = Some(State::Reset);
                                    out.push((State::Reset, p.ts, Some(v.clone())));
                                }
                                st.last_value = Some(v);
                                st.held.last_ts = Some(p.ts);
                            }
                        }
                        AlertRule::Missing { .. } => {
                            st.last_arrival = Some(server_ts);
                            if st.held.state().active() {
                                st.held.state = Some(State::Reset);
                                let v = points.last().and_then(|p| observed(&p.value));
                                out.push((State::Reset, server_ts, v));
                            }
                        }
                        _ => {}
                    }
                    for (to, at, v) in out {
                        self.change(ri, &source, to, at, v);
                    }
                }
                for (ri, source, from, to) in late {
                    // Earlier changes first: the re-evaluation reads the stored statuses.
                    self.flush(ev)?;
                    self.reevaluate(ev, ri, path, &source, from, to)?;
                }
            }
        }
        self.cursor = feed.next;
        self.dirty |= busy;
        self.flush(ev)?;
        ev.stats.cursor.store(self.cursor, Ordering::Release);
        Ok(busy && feed.next < ev.store.applied_seq())
    }

    /// Late points for (rule, source) from data time `from`: evaluates the source again from
    /// the last transition before `from` (its state is known exactly: a transition ends every
    /// run), over the stored points up to `to`, and corrects the stored transitions that
    /// differ. The corrections carry deterministic ids, so evaluating again after a crash
    /// repeats none.
    fn reevaluate(
        &mut self,
        ev: &Evaluator,
        ri: usize,
        path: &str,
        source: &str,
        from: i64,
        to: i64,
    ) -> Result<(), String> {
        ev.stats.reevaluated.fetch_add(1, Ordering::Relaxed);
        let rule = &self.rules[ri];
        let id = rule.id.clone();
        let recent = ev
            .registry
            .recent_transitions(&id, source, 100_000)
            .map_err(|e| e.to_string())?;
        // Entries that changed activeness (acknowledgements did not), newest first.
        let evaluated: Vec<_> = recent
            .iter()
            .filter(|s| s.state != State::Acknowledged || s.correction)
            .collect();
        let anchor = evaluated.iter().find(|s| s.changed < from);
        let anchor_active = anchor.is_some_and(|a| a.state.active());
        let anchor_ts = anchor.map_or(meterstream_storage::time::MIN_TIMESTAMP - 1, |a| a.changed);
        let old: Vec<(bool, i64)> = evaluated
            .iter()
            .rev()
            .filter(|s| s.changed >= from)
            .map(|s| (s.state.active(), s.changed))
            .collect();
        let store = &*ev.store;
        let mut held = HeldState {
            state: Some(if anchor_active {
                State::Triggered
            } else {
                State::Reset
            }),
            run_since: None,
            last_ts: None,
        };
        let mut last_value: Option<Observed> = None;
        let mut new: Vec<(State, i64, Option<Observed>)> = Vec::new();
        match &rule.alert.rule {
            AlertRule::Condition { fire, reset } => {
                // The run of points matching the watched condition that reaches up to `from`.
                let watch = if anchor_active { reset } else { fire };
                held.run_since = run_back(store, path, watch, anchor_ts, from)?;
                read_points(store, path, from, to + 1, false, |ts, v| {
                    if let Some(t) = held.step(fire, reset, ts, &v) {
                        new.push((t.to, t.at, Some(t.value)));
                    }
                    true
                })?;
            }
            AlertRule::OnChange => {
                read_points(store, path, anchor_ts + 1, from, true, |_, v| {
                    last_value = Some(v);
                    false
                })?;
                read_points(store, path, from, to + 1, false, |ts, v| {
                    let active = held.state().active();
                    let changed = meterstream_storage::alarm::changed(last_value.as_ref(), &v);
                    if changed && !active {
                        held.state = Some(State::Triggered);
                        new.push((State::Triggered, ts, Some(v.clone())));
                    } else if !changed && active && last_value.is_some() {
                        held.state = Some(State::Reset);
                        new.push((State::Reset, ts, Some(v.clone())));
                    }
                    last_value = Some(v);
                    held.last_ts = Some(ts);
                    true
                })?;
            }
            _ => return Ok(()),
        }
        held.last_ts = Some(to);
        let st = Self::state(
            &mut self.states,
            &*ev.registry,
            &self.rules[ri],
            Arc::from(source),
        )?;
        st.held = held.clone();
        if last_value.is_some() {
            st.last_value = last_value;
        }
        let new_keys: Vec<(bool, i64)> = new.iter().map(|t| (t.0.active(), t.1)).collect();
        if new_keys == old {
            return Ok(());
        }
        let device = device_id(source).to_string();
        let correct = |to: State, at: i64, value: Option<Observed>, tag: &str| AlarmChange {
            event_id: format!("{id}/{source}/{at}/{}/{tag}", state_name(to)),
            alert_id: id.to_string(),
            source: source.to_string(),
            device: device.clone(),
            kind: AlarmChangeKind::Correct { to, at, value },
        };
        for (to, at, value) in &new {
            if !old.contains(&(to.active(), *at)) {
                self.changes.push(correct(*to, *at, value.clone(), "c"));
            }
        }
        // Whatever the old transitions after `from` did, the status ends as evaluated now.
        let (to, at, value) = new.last().cloned().unwrap_or((held.state(), from, None));
        self.changes.push(correct(to, at, value, "final"));
        self.flush(ev)
    }

    /// Writes the pending changes.
    fn flush(&mut self, ev: &Evaluator) -> Result<(), String> {
        if self.changes.is_empty() {
            return Ok(());
        }
        // Kept until written: a failed write (a cluster's event stream failing over) is tried
        // again with the next flush, and changes written before are recognized by their ids.
        let out = ev
            .registry
            .alarm_changes(&self.changes, meterstream_storage::time::now_ms())
            .map_err(|e| e.to_string())?;
        self.changes.clear();
        let applied = out
            .iter()
            .filter(|o| matches!(o, ChangeOutcome::Applied(_)))
            .count();
        ev.stats
            .transitions
            .fetch_add(applied as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The clock rules, at server time `now`.
    fn sweep(&mut self, ev: &Evaluator, now: i64) -> Result<(), String> {
        let mut fired: Vec<(usize, String, State)> = Vec::new();
        let clock_rules: Vec<usize> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                !matches!(
                    r.alert.rule,
                    AlertRule::Condition { .. } | AlertRule::OnChange
                )
            })
            .map(|(i, _)| i)
            .collect();
        if clock_rules.is_empty() {
            return Ok(());
        }
        // Missing DataPoint: every known source of each rule.
        for (key, st) in self.states.iter_mut() {
            let Some(&ri) = self.by_id.get(&key.0) else {
                continue;
            };
            if let AlertRule::Missing { duration_ms } = self.rules[ri].alert.rule {
                if !ev.answers_for(meterstream_storage::path::device_id(&key.1)) {
                    continue;
                }
                if !st.held.state().active()
                    && meterstream_storage::alarm::missing(st.last_arrival, now, duration_ms)
                {
                    st.held.state = Some(State::Triggered);
                    fired.push((ri, key.1.to_string(), State::Triggered));
                }
            }
        }
        // Device rules: every device in scope.
        let device_rules: Vec<usize> = clock_rules
            .into_iter()
            .filter(|&i| {
                matches!(
                    self.rules[i].alert.rule,
                    AlertRule::Offline { .. } | AlertRule::ExcessiveDisconnects { .. }
                )
            })
            .collect();
        if !device_rules.is_empty() {
            for d in ev.registry.all_devices().map_err(|e| e.to_string())? {
                if !ev.answers_for(&d.id) {
                    continue;
                }
                for &ri in &device_rules {
                    let rule = &self.rules[ri];
                    if !rule.covers_device(&d.id, &self.groups) {
                        continue;
                    }
                    let st = Self::state(
                        &mut self.states,
                        &*ev.registry,
                        rule,
                        Arc::from(d.id.as_str()),
                    )?;
                    let active = st.held.state().active();
                    let should = match rule.alert.rule {
                        AlertRule::Offline {
                            reconnect_window_ms,
                        } => {
                            !d.connected
                                && d.last_disconnect
                                    .is_some_and(|t| now - t >= reconnect_window_ms)
                        }
                        AlertRule::ExcessiveDisconnects { count, window_ms } => {
                            let events = ev
                                .registry
                                .events(&d.id, st.events_seen, 10_000)
                                .map_err(|e| e.to_string())?;
                            for e in events {
                                st.events_seen = e.seq;
                                if e.status == "disconnected" {
                                    st.disconnects.push(e.time);
                                }
                            }
                            // Only those within the window are kept: they are what counts.
                            st.disconnects.retain(|t| now - *t < window_ms);
                            meterstream_storage::alarm::excessive(
                                &st.disconnects,
                                count,
                                window_ms,
                                now,
                            )
                        }
                        _ => active,
                    };
                    if should != active {
                        let to = if should {
                            State::Triggered
                        } else {
                            State::Reset
                        };
                        st.held.state = Some(to);
                        fired.push((ri, d.id.clone(), to));
                    }
                }
            }
        }
        if fired.is_empty() {
            return Ok(());
        }
        for (ri, source, to) in fired {
            self.change(ri, &source, to, now, None);
        }
        self.dirty = true;
        self.flush(ev)
    }

    fn checkpoint(&mut self, ev: &Evaluator) -> Result<(), String> {
        let cp = Checkpoint {
            cursor: self.cursor,
            rules: self
                .rules
                .iter()
                .map(|r| (r.id.to_string(), r.alert.updated))
                .collect(),
            states: self
                .states
                .iter()
                .map(|((a, s), st)| (a.to_string(), s.to_string(), st.clone()))
                .collect(),
        };
        let bytes = rmp_serde::to_vec_named(&cp).map_err(|e| e.to_string())?;
        ev.registry
            .put_meta(CHECKPOINT_KEY, &bytes)
            .map_err(|e| e.to_string())?;
        // Only after the checkpoint is durable may the store drop the log before it.
        if !self.rules.is_empty() {
            ev.store
                .feed_hold(CONSUMER, Some(self.cursor))
                .map_err(|e| e.to_string())?;
        }
        self.dirty = false;
        Ok(())
    }
}

/// On a cluster node, a source the evaluator has no state for may be half-way through a run
/// that another node evaluated: its partition was restored from a snapshot, whose points are
/// not in this node's feed (docs/scale-out.md, "Snapshots"). The run is read back from the
/// stored points before `before` (the first new point), down to the source's last transition,
/// as [`Worker::reevaluate`] does, so that the condition fires at the same data time.
#[allow(clippy::too_many_arguments)]
fn seed_run(
    store: &dyn Store,
    registry: &dyn Registry,
    rule_id: &str,
    source: &str,
    path: &str,
    watch: &meterstream_storage::alarm::Held,
    held: &mut HeldState,
    before: i64,
) -> Result<(), String> {
    let recent = registry
        .recent_transitions(rule_id, source, 16)
        .map_err(|e| e.to_string())?;
    let anchor = recent
        .iter()
        .filter(|s| s.state != State::Acknowledged || s.correction)
        .find(|s| s.changed < before)
        .map_or(meterstream_storage::time::MIN_TIMESTAMP - 1, |a| a.changed);
    held.run_since = run_back(store, path, watch, anchor, before)?;
    Ok(())
}

/// The start of the run of stored points of `path` matching `watch` that reaches up to
/// `before` (exclusive), looking no further back than `after` (exclusive).
fn run_back(
    store: &dyn Store,
    path: &str,
    watch: &meterstream_storage::alarm::Held,
    after: i64,
    before: i64,
) -> Result<Option<i64>, String> {
    let mut since = None;
    read_points(store, path, after + 1, before, true, |ts, v| {
        if watch.op.holds(&v, &watch.threshold) {
            since = Some(ts);
            true
        } else {
            false
        }
    })?;
    Ok(since)
}

/// Reads the stored points of `path` with `from <= ts < to`, newest first if `desc`, calling
/// `f` with each numeric or text value until it returns false.
fn read_points(
    store: &dyn Store,
    path: &str,
    from: i64,
    to: i64,
    desc: bool,
    mut f: impl FnMut(i64, Observed) -> bool,
) -> Result<(), String> {
    use meterstream_storage::{HistoryQuery, Order, Timeline};
    if from >= to {
        return Ok(());
    }
    let mut cursor = None;
    loop {
        let page = store
            .history(
                path,
                &HistoryQuery {
                    from,
                    to,
                    order: if desc { Order::Desc } else { Order::Asc },
                    timeline: Timeline::Client,
                    limit: 5000,
                    cursor,
                },
            )
            .map_err(|e| e.to_string())?;
        for p in &page.items {
            if let Some(v) = observed(&p.value) {
                if !f(p.timestamp, v) {
                    return Ok(());
                }
            }
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}
