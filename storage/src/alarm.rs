//! Alert rules and their evaluation in data time, as pure state machines (design:
//! `docs/alarms.md`). The engine feeds each (rule, source) its points in time order; this module
//! decides the transitions. Nothing here reads a clock: the clock rules (missing data, device
//! offline) are given "now" by their caller.
//!
//! A DataPoint condition with duration D **fires** at the first point at which the fire
//! condition has held, in data time, over a stretch of points spanning at least D: since the
//! first point of the current unbroken run of matching points. A point that does not match breaks
//! the run. D = 0 fires at the first matching point. The **reset** condition works the same way,
//! with its own duration, on a triggered or acknowledged status; a separate reset rule therefore
//! gives hysteresis (fire below 207 V for 1 min, reset above 210 V for 5 min), and noise between
//! the two thresholds changes nothing.

use serde::{Deserialize, Serialize};

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Lowest.
    Warning,
    /// Minor.
    Minor,
    /// Major.
    Major,
    /// Highest.
    Critical,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `=`
    #[serde(rename = "=")]
    Eq,
    /// `<>`
    #[serde(rename = "<>")]
    Ne,
}

/// What a value is compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    /// A number.
    Number(f64),
    /// A text (only `=` and `<>` make sense; the others compare lexically).
    Text(String),
}

/// A value as the evaluator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Observed {
    /// A number.
    Number(f64),
    /// A text.
    Text(String),
}

impl Op {
    /// Whether `v op t` holds; a number against a text threshold (or the other way) never does.
    pub fn holds(self, v: &Observed, t: &Threshold) -> bool {
        let ord = match (v, t) {
            (Observed::Number(a), Threshold::Number(b)) => a.partial_cmp(b),
            (Observed::Text(a), Threshold::Text(b)) => Some(a.as_str().cmp(b.as_str())),
            _ => None,
        };
        let Some(o) = ord else { return false };
        use std::cmp::Ordering::*;
        match self {
            Op::Lt => o == Less,
            Op::Le => o != Greater,
            Op::Gt => o == Greater,
            Op::Ge => o != Less,
            Op::Eq => o == Equal,
            Op::Ne => o != Equal,
        }
    }
}

/// A condition over a source's points: the value compared with a threshold, held for a
/// duration of data time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The comparison.
    pub op: Op,
    /// Compared with.
    pub threshold: Threshold,
    /// How long (ms of data time) it must hold; 0 = at once.
    #[serde(default)]
    pub duration_ms: i64,
}

/// The status of one (alert, source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not active.
    Reset,
    /// Active, not acknowledged.
    Triggered,
    /// Active and acknowledged (acknowledging does not reset).
    Acknowledged,
}

impl State {
    /// Whether the alarm is active.
    pub fn active(self) -> bool {
        self != State::Reset
    }
}

/// A change of status, announced as an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The new state.
    pub to: State,
    /// Data time of the point that caused it (ms).
    pub at: i64,
    /// That point's value.
    pub value: Observed,
}

/// What the evaluator remembers per (DataPoint condition rule, source).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HeldState {
    /// The status.
    pub state: Option<State>,
    /// Start (data time) of the current run of points matching the condition being watched
    /// (fire while reset, reset while active).
    pub run_since: Option<i64>,
    /// Data time of the last point evaluated.
    pub last_ts: Option<i64>,
}

impl HeldState {
    /// The status (reset before anything happened).
    pub fn state(&self) -> State {
        self.state.unwrap_or(State::Reset)
    }

    /// Evaluates one point (in time order, after every earlier one) against `fire` and `reset`;
    /// returns the transition it causes, if any.
    pub fn step(
        &mut self,
        fire: &Held,
        reset: &Held,
        ts: i64,
        value: &Observed,
    ) -> Option<Transition> {
        self.last_ts = Some(ts);
        let active = self.state().active();
        let watch = if active { reset } else { fire };
        if !watch.op.holds(value, &watch.threshold) {
            self.run_since = None;
            return None;
        }
        let since = *self.run_since.get_or_insert(ts);
        if ts - since < watch.duration_ms {
            return None;
        }
        self.run_since = None;
        let to = if active {
            State::Reset
        } else {
            State::Triggered
        };
        self.state = Some(to);
        Some(Transition {
            to,
            at: ts,
            value: value.clone(),
        })
    }

    /// Acknowledges an active status (no change otherwise); returns whether it changed.
    pub fn acknowledge(&mut self) -> bool {
        if self.state() == State::Triggered {
            self.state = Some(State::Acknowledged);
            true
        } else {
            false
        }
    }
}

/// Evaluates a whole series of points, in time order, from a fresh state: the reference the
/// incremental evaluation must agree with, and how late data re-evaluates a source.
pub fn evaluate(
    fire: &Held,
    reset: &Held,
    points: &[(i64, Observed)],
) -> (HeldState, Vec<Transition>) {
    let mut st = HeldState::default();
    let out = points
        .iter()
        .filter_map(|(ts, v)| st.step(fire, reset, *ts, v))
        .collect();
    (st, out)
}

/// "On change": a transition to triggered whenever the value differs from the previous one
/// (the first point only sets the baseline). Returns whether `value` is a change.
pub fn changed(previous: Option<&Observed>, value: &Observed) -> bool {
    previous.is_some_and(|p| p != value)
}

/// Missing DataPoint: whether a source last heard at `last_seen` (server time of its last write)
/// is missing at server time `now` after `duration_ms`.
pub fn missing(last_seen: Option<i64>, now: i64, duration_ms: i64) -> bool {
    last_seen.is_some_and(|t| now - t >= duration_ms)
}

/// Excessive disconnects: whether `disconnects` (times, any order) hold at least `count` within
/// any window of `window_ms` ending at or before `now`.
pub fn excessive(disconnects: &[i64], count: usize, window_ms: i64, now: i64) -> bool {
    if count == 0 {
        return false;
    }
    let mut t: Vec<i64> = disconnects.iter().copied().filter(|&x| x <= now).collect();
    t.sort_unstable();
    t.windows(count).any(|w| w[count - 1] - w[0] <= window_ms)
}

/// What an alert watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum AlertScope {
    /// Streams matching a pattern (`*` = one segment), e.g. `*/pst04/voltage_l1`.
    Resource(String),
    /// One device (its connection, or all its streams for data rules).
    Device(String),
    /// The devices of a group.
    Group(String),
}

/// The kind of rule, with its fire and reset parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AlertRule {
    /// A value condition held for a duration, with its own reset condition (hysteresis).
    #[serde(rename = "DataPoint condition")]
    Condition {
        /// When it fires.
        fire: Held,
        /// When it resets.
        reset: Held,
    },
    /// Fires when a value differs from the previous one; resets at the next unchanged value.
    #[serde(rename = "DataPoint on change")]
    OnChange,
    /// Fires when no point has arrived for a duration; resets when data comes.
    #[serde(rename = "Missing DataPoint")]
    Missing {
        /// ms without a point.
        duration_ms: i64,
    },
    /// Fires when a device has been disconnected for the reconnect window.
    #[serde(rename = "Device Offline")]
    Offline {
        /// ms it may stay disconnected.
        reconnect_window_ms: i64,
    },
    /// Fires at N disconnects within a window.
    #[serde(rename = "Device Excessive Disconnects")]
    ExcessiveDisconnects {
        /// How many.
        count: usize,
        /// Within how many ms.
        window_ms: i64,
    },
}

/// An alert: a rule over a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// Severity.
    pub severity: Severity,
    /// What it watches.
    pub scope: AlertScope,
    /// The rule.
    pub rule: AlertRule,
    /// Created, Unix ms.
    pub created: i64,
    /// Last changed, Unix ms.
    pub updated: i64,
}

impl Alert {
    /// Checks the alert; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err("name: 1 to 200 characters".into());
        }
        match &self.scope {
            AlertScope::Resource(p) => {
                crate::path::validate_pattern(p).map_err(|e| format!("scope: {e}"))?
            }
            AlertScope::Device(d) | AlertScope::Group(d) => {
                if d.is_empty() || d.contains('/') {
                    return Err(format!("scope: {d:?} is not a device id or group name"));
                }
            }
        }
        let non_negative = |field: &str, v: i64| {
            if v < 0 {
                Err(format!("{field}: a duration cannot be negative"))
            } else {
                Ok(())
            }
        };
        match &self.rule {
            AlertRule::Condition { fire, reset } => {
                non_negative("fire.duration", fire.duration_ms)?;
                non_negative("reset.duration", reset.duration_ms)?;
                for (f, h) in [("fire", fire), ("reset", reset)] {
                    if let Threshold::Number(v) = h.threshold {
                        if !v.is_finite() {
                            return Err(format!("{f}.threshold: must be a finite number"));
                        }
                    }
                }
            }
            AlertRule::OnChange => {}
            AlertRule::Missing { duration_ms } => {
                if *duration_ms <= 0 {
                    return Err("duration: must be positive".into());
                }
            }
            AlertRule::Offline {
                reconnect_window_ms,
            } => non_negative("reconnect_window", *reconnect_window_ms)?,
            AlertRule::ExcessiveDisconnects { count, window_ms } => {
                if *count == 0 || *window_ms <= 0 {
                    return Err("count and window: must be positive".into());
                }
            }
        }
        if matches!(
            self.rule,
            AlertRule::Offline { .. } | AlertRule::ExcessiveDisconnects { .. }
        ) && matches!(self.scope, AlertScope::Resource(_))
        {
            return Err("scope: device rules apply to a device or a group, not to streams".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn n(v: f64) -> Observed {
        Observed::Number(v)
    }

    fn under(v: f64, d: i64) -> Held {
        Held {
            op: Op::Lt,
            threshold: Threshold::Number(v),
            duration_ms: d,
        }
    }

    fn over(v: f64, d: i64) -> Held {
        Held {
            op: Op::Gt,
            threshold: Threshold::Number(v),
            duration_ms: d,
        }
    }

    #[test]
    fn fires_exactly_when_the_condition_has_held_for_its_duration_in_data_time() {
        // Undervoltage: below 207 V for 1 min; reset above 210 V for 5 min. One point per 10 s.
        let (fire, reset) = (under(207.0, 60_000), over(210.0, 300_000));
        let mut pts = Vec::new();
        for s in 0..30 {
            pts.push((s * 10_000, n(230.0)));
        }
        // Drops at t = 300 s and stays down.
        for s in 30..50 {
            pts.push((s * 10_000, n(205.0)));
        }
        let (_, tr) = evaluate(&fire, &reset, &pts);
        assert_eq!(tr.len(), 1);
        // Held since 300 s; 60 s later is 360 s.
        assert_eq!((tr[0].to, tr[0].at), (State::Triggered, 360_000));
    }

    #[test]
    fn a_break_in_the_run_restarts_the_duration() {
        let (fire, reset) = (under(207.0, 60_000), over(210.0, 0));
        let pts: Vec<(i64, Observed)> = [
            205.0, 205.0, 205.0, 208.0, 205.0, 205.0, 205.0, 205.0, 205.0, 205.0, 205.0,
        ]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as i64 * 10_000, n(*v)))
        .collect();
        let (_, tr) = evaluate(&fire, &reset, &pts);
        // The run restarts at 40 s; fires at 100 s.
        assert_eq!(tr.iter().map(|t| t.at).collect::<Vec<_>>(), vec![100_000]);
    }

    #[test]
    fn noise_between_the_thresholds_does_not_flap() {
        let (fire, reset) = (under(207.0, 0), over(210.0, 30_000));
        let mut pts = vec![(0, n(205.0))];
        // Noise 206..=211: above 210 now and then, but never 30 s in a row.
        let noise = [
            208.0, 211.0, 209.0, 211.0, 206.5, 210.5, 208.0, 211.0, 209.9,
        ];
        for (i, v) in noise.iter().enumerate() {
            pts.push((10_000 * (i as i64 + 1), n(*v)));
        }
        let (st, tr) = evaluate(&fire, &reset, &pts);
        assert_eq!(tr.len(), 1, "{tr:?}");
        assert_eq!(st.state(), State::Triggered);
        // Now really back: above 210 for 30 s.
        let mut more = pts.clone();
        for k in 0..5 {
            more.push((200_000 + k * 10_000, n(215.0)));
        }
        let (st, tr) = evaluate(&fire, &reset, &more);
        assert_eq!(tr.last().unwrap().to, State::Reset);
        assert_eq!(tr.last().unwrap().at, 230_000);
        assert_eq!(st.state(), State::Reset);
    }

    #[test]
    fn acknowledging_keeps_it_active_until_reset() {
        let (fire, reset) = (under(10.0, 0), over(10.0, 0));
        let mut st = HeldState::default();
        assert!(st.step(&fire, &reset, 0, &n(5.0)).is_some());
        assert!(st.acknowledge());
        assert!(!st.acknowledge());
        assert_eq!(st.state(), State::Acknowledged);
        assert!(st.step(&fire, &reset, 1, &n(5.0)).is_none());
        let t = st.step(&fire, &reset, 2, &n(11.0)).unwrap();
        assert_eq!(t.to, State::Reset);
    }

    #[test]
    fn text_thresholds_and_mismatched_kinds() {
        let t = Threshold::Text("error".into());
        assert!(Op::Eq.holds(&Observed::Text("error".into()), &t));
        assert!(Op::Ne.holds(&Observed::Text("active".into()), &t));
        assert!(!Op::Eq.holds(&n(1.0), &t));
        assert!(!Op::Lt.holds(&n(f64::NAN), &Threshold::Number(1.0)));
    }

    #[test]
    fn clock_rules() {
        assert!(missing(Some(1_000), 61_000, 60_000));
        assert!(!missing(Some(1_001), 61_000, 60_000));
        assert!(!missing(None, 61_000, 60_000));
        assert!(excessive(&[10, 500, 900], 3, 1_000, 2_000));
        assert!(!excessive(&[10, 500, 1_900], 3, 1_000, 2_000));
        assert!(!excessive(&[10, 500, 900], 3, 1_000, 800));
        assert!(
            changed(Some(&n(1.0)), &n(2.0))
                && !changed(None, &n(2.0))
                && !changed(Some(&n(2.0)), &n(2.0))
        );
    }

    proptest! {
        /// Feeding points one by one, in pieces, or all at once gives the same transitions: what
        /// the engine relies on when it evaluates batch by batch, and when a late point makes it
        /// re-evaluate a source from its stored points.
        #[test]
        fn incremental_evaluation_equals_evaluating_the_whole_series(
            values in prop::collection::vec(195.0f64..225.0, 1..300),
            gaps in prop::collection::vec(1i64..20_000, 300),
            fire_d in 0i64..120_000,
            reset_d in 0i64..120_000,
            cut in 0usize..300,
        ) {
            let (fire, reset) = (under(207.0, fire_d), over(210.0, reset_d));
            let mut t = 0;
            let pts: Vec<(i64, Observed)> = values.iter().zip(&gaps).map(|(v, g)| { t += g; (t, n(*v)) }).collect();
            let (whole_state, whole) = evaluate(&fire, &reset, &pts);
            let cut = cut.min(pts.len());
            let (mut st, mut first) = evaluate(&fire, &reset, &pts[..cut]);
            for (ts, v) in &pts[cut..] {
                first.extend(st.step(&fire, &reset, *ts, v));
            }
            prop_assert_eq!(&first, &whole);
            prop_assert_eq!(st, whole_state);
            // An independent reading of the rule: at each point, look back over the points since
            // the last transition for the unbroken run of matching ones ending here.
            let mut oracle = Vec::new();
            let mut active = false;
            let mut last_transition = 0usize;
            for i in 0..pts.len() {
                let watch = if active { &reset } else { &fire };
                let mut start = None;
                for j in (last_transition..=i).rev() {
                    if watch.op.holds(&pts[j].1, &watch.threshold) {
                        start = Some(pts[j].0);
                    } else {
                        break;
                    }
                }
                if let Some(s0) = start {
                    if pts[i].0 - s0 >= watch.duration_ms {
                        active = !active;
                        last_transition = i + 1;
                        oracle.push((if active { State::Triggered } else { State::Reset }, pts[i].0));
                    }
                }
            }
            let got: Vec<(State, i64)> = whole.iter().map(|t| (t.to, t.at)).collect();
            prop_assert_eq!(got, oracle);
            // Transitions alternate: never two fires or two resets in a row.
            for w in whole.windows(2) {
                prop_assert_ne!(w[0].to, w[1].to);
            }
        }
    }
}
