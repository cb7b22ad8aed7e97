//! Rollups, the pure core: intervals, methods, the mergeable per-bucket [`Summary`], and bucket
//! boundaries as pure functions of (timestamp, interval, time zone). `docs/rollups.md` has the
//! design; maintenance during ingest builds on these.

use crate::error::{Result, StorageError};
use jiff::civil::{DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A rollup interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interval {
    /// One minute.
    Minute1,
    /// Five minutes.
    Minute5,
    /// Fifteen minutes (a metering settlement period).
    Minute15,
    /// Thirty minutes (Digi's `half`).
    Half,
    /// One hour.
    Hour,
    /// One local day.
    Day,
    /// One ISO week, Monday first.
    Week,
    /// One local month.
    Month,
}

impl Interval {
    /// Every interval.
    pub const ALL: [Interval; 8] = [
        Interval::Minute1,
        Interval::Minute5,
        Interval::Minute15,
        Interval::Half,
        Interval::Hour,
        Interval::Day,
        Interval::Week,
        Interval::Month,
    ];

    /// Parses `1m`, `5m`, `15m`, `half`/`30m`, `hour`, `day`, `week`, `month`.
    pub fn parse(s: &str) -> Result<Interval> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "1m" => Interval::Minute1,
            "5m" => Interval::Minute5,
            "15m" => Interval::Minute15,
            "half" | "30m" => Interval::Half,
            "hour" | "1h" => Interval::Hour,
            "day" => Interval::Day,
            "week" => Interval::Week,
            "month" => Interval::Month,
            _ => {
                return Err(StorageError::invalid(
                    "interval",
                    format!("{s:?} is not one of 1m, 5m, 15m, half (30m), hour, day, week, month"),
                ))
            }
        })
    }

    /// Its name as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            Interval::Minute1 => "1m",
            Interval::Minute5 => "5m",
            Interval::Minute15 => "15m",
            Interval::Half => "half",
            Interval::Hour => "hour",
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
        }
    }

    /// The length of intervals that are UTC-aligned where the zone's offset is a multiple of it.
    fn fixed_ms(self) -> Option<i64> {
        match self {
            Interval::Minute1 => Some(60_000),
            Interval::Minute5 => Some(300_000),
            Interval::Minute15 => Some(900_000),
            Interval::Half => Some(1_800_000),
            Interval::Hour => Some(3_600_000),
            _ => None,
        }
    }
}

/// A rollup method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Sum of the values.
    Sum,
    /// Mean of the values.
    Average,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Number of points.
    Count,
    /// Sample standard deviation (n − 1); 0 for one point.
    StandardDev,
    /// Value of the earliest point.
    First,
    /// Value of the latest point.
    Last,
    /// Growth of a counter, resets counted from zero.
    Increase,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 9] = [
        Method::Sum,
        Method::Average,
        Method::Min,
        Method::Max,
        Method::Count,
        Method::StandardDev,
        Method::First,
        Method::Last,
        Method::Increase,
    ];

    /// Parses a method name (Digi's names, plus `first`, `last`, `increase`).
    pub fn parse(s: &str) -> Result<Method> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "sum" => Method::Sum,
            "average" | "avg" | "mean" => Method::Average,
            "min" => Method::Min,
            "max" => Method::Max,
            "count" => Method::Count,
            "standarddev" | "stddev" => Method::StandardDev,
            "first" => Method::First,
            "last" => Method::Last,
            "increase" => Method::Increase,
            _ => {
                return Err(StorageError::invalid(
                    "method",
                    format!(
                        "{s:?} is not one of sum, average, min, max, count, standarddev, first, last, increase"
                    ),
                ))
            }
        })
    }
}

/// Growth from `prev` to `next` of a counter: a drop is a reset, from which growth counts from 0.
pub fn counter_step(prev: f64, next: f64) -> f64 {
    if next >= prev {
        next - prev
    } else {
        next
    }
}

/// Everything the methods need about the points of one bucket; mergeable in time order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of points.
    pub count: u64,
    /// Sum of values.
    pub sum: f64,
    /// Running mean (Welford).
    pub mean: f64,
    /// Sum of squared deviations from the mean (Welford).
    pub m2: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Timestamp of the earliest point.
    pub first_ts: i64,
    /// Value of the earliest point.
    pub first: f64,
    /// Timestamp of the latest point.
    pub last_ts: i64,
    /// Value of the latest point.
    pub last: f64,
    /// Counter growth between consecutive points of the bucket.
    pub increase: f64,
}

impl Summary {
    /// The summary of one point.
    pub fn of(ts: i64, v: f64) -> Summary {
        Summary {
            count: 1,
            sum: v,
            mean: v,
            m2: 0.0,
            min: v,
            max: v,
            first_ts: ts,
            first: v,
            last_ts: ts,
            last: v,
            increase: 0.0,
        }
    }

    /// Adds a point newer than every point summarized so far.
    pub fn push(&mut self, ts: i64, v: f64) {
        *self = self.merge(&Summary::of(ts, v));
    }

    /// The summary of the points of `self` followed by those of `later` (all newer).
    pub fn merge(&self, later: &Summary) -> Summary {
        let n = self.count + later.count;
        let (na, nb) = (self.count as f64, later.count as f64);
        let delta = later.mean - self.mean;
        let mean = self.mean + delta * nb / n as f64;
        Summary {
            count: n,
            sum: self.sum + later.sum,
            mean,
            m2: self.m2 + later.m2 + delta * delta * na * nb / n as f64,
            min: self.min.min(later.min),
            max: self.max.max(later.max),
            first_ts: self.first_ts,
            first: self.first,
            last_ts: later.last_ts,
            last: later.last,
            increase: self.increase + later.increase + counter_step(self.last, later.first),
        }
    }

    /// Merges two summaries whichever holds the older points. When their points interleave in
    /// time (which the store avoids), `first`, `last` and `increase` are taken in argument order.
    pub fn combine(&self, other: &Summary) -> Summary {
        if self.first_ts > other.last_ts {
            other.merge(self)
        } else {
            self.merge(other)
        }
    }

    /// The summary of points in time order; `None` for none.
    pub fn of_points(points: impl IntoIterator<Item = (i64, f64)>) -> Option<Summary> {
        let mut it = points.into_iter();
        let (t, v) = it.next()?;
        let mut s = Summary::of(t, v);
        for (t, v) in it {
            s.push(t, v);
        }
        Some(s)
    }

    /// The value of `method`. For `Increase`, `before` is the last value before the interval
    /// (wherever it lies), if there is one.
    pub fn value(&self, method: Method, before: Option<f64>) -> f64 {
        match method {
            Method::Sum => self.sum,
            Method::Average => self.mean,
            Method::Min => self.min,
            Method::Max => self.max,
            Method::Count => self.count as f64,
            Method::StandardDev if self.count < 2 => 0.0,
            Method::StandardDev => (self.m2 / (self.count - 1) as f64).max(0.0).sqrt(),
            Method::First => self.first,
            Method::Last => self.last,
            Method::Increase => self.increase + before.map_or(0.0, |b| counter_step(b, self.first)),
        }
    }
}

/// A time zone by IANA name (`UTC`, `Europe/Sofia`); the error names the zone.
pub fn zone(name: &str) -> Result<TimeZone> {
    TimeZone::get(name.trim()).map_err(|_| {
        StorageError::invalid(
            "timezone",
            format!("{name:?} is not an IANA time zone name (e.g. UTC, Europe/Sofia)"),
        )
    })
}

fn ts_of(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| StorageError::invalid("timestamp", e.to_string()))
}

/// The local civil start of the interval holding civil time `dt`.
fn truncate(dt: DateTime, interval: Interval) -> DateTime {
    let d = dt.date();
    let at = |h: i8, m: i8| d.at(h, m, 0, 0);
    match interval {
        Interval::Minute1 => at(dt.hour(), dt.minute()),
        Interval::Minute5 => at(dt.hour(), dt.minute() - dt.minute() % 5),
        Interval::Minute15 => at(dt.hour(), dt.minute() - dt.minute() % 15),
        Interval::Half => at(dt.hour(), dt.minute() - dt.minute() % 30),
        Interval::Hour => at(dt.hour(), 0),
        Interval::Day => at(0, 0),
        Interval::Week => {
            let back = d.weekday().since(Weekday::Monday) as i64;
            d.checked_sub(back.days()).unwrap_or(d).at(0, 0, 0, 0)
        }
        Interval::Month => d.first_of_month().at(0, 0, 0, 0),
    }
}

/// The local civil start of the interval after the one starting at civil `start`.
fn civil_next(start: DateTime, interval: Interval) -> DateTime {
    let span = match interval {
        Interval::Minute1 => 1.minute(),
        Interval::Minute5 => 5.minutes(),
        Interval::Minute15 => 15.minutes(),
        Interval::Half => 30.minutes(),
        Interval::Hour => 1.hour(),
        Interval::Day => 1.day(),
        Interval::Week => 7.days(),
        Interval::Month => 1.month(),
    };
    start.checked_add(span).unwrap_or(start)
}

/// Resolves a civil time in `tz` to epoch ms: a time in a gap moves to the gap's later side,
/// a time in a fold takes its earlier occurrence. A fold's end is its exception: jiff counts it
/// in the fold (Lord Howe's 02:00, when +11 turns into +10:30), but the earlier instant is the
/// transition itself, which the clock shows as 01:30; the later one is when it shows 02:00.
fn resolve(dt: DateTime, tz: &TimeZone) -> Result<i64> {
    let err = |e: jiff::Error| StorageError::invalid("timestamp", e.to_string());
    let amb = tz.to_ambiguous_zoned(dt);
    let z = if amb.is_ambiguous() {
        let earlier = amb.clone().earlier().map_err(err)?;
        // What the zone's clock shows at that instant (the Zoned itself keeps the offset it
        // was resolved with).
        if earlier.timestamp().to_zoned(tz.clone()).datetime() == dt {
            earlier
        } else {
            amb.later().map_err(err)?
        }
    } else {
        amb.compatible().map_err(err)?
    };
    Ok(z.timestamp().as_millisecond())
}

/// Half a year, for probing a zone's other offset.
const HALF_YEAR_MS: i64 = 183 * 86_400_000;

/// The length of a UTC-aligned interval, if the zone keeps it aligned: every offset the zone uses
/// around `ms` (a year either way, so both sides of its DST) is a whole multiple of it. Decided per zone, not per instant, so that boundaries never mix the two rules across a
/// shift (Lord Howe is +10:30 in winter and +11 in summer: its hours are local all year).
fn utc_aligned(ms: i64, interval: Interval, tz: &TimeZone) -> Result<Option<i64>> {
    let Some(len) = interval.fixed_ms() else {
        return Ok(None);
    };
    if offset_step_ms(ms, tz) % len != 0 {
        return Ok(None);
    }
    Ok(Some(len))
}

/// The greatest common divisor of the offsets (ms) the zone uses within a year either side of
/// `ms`, probed every 15 days: intervals that divide it keep UTC-aligned boundaries. Probing
/// only now and half a year either way missed Lord Howe's +10:30 (both probes from early April
/// land in its October summer time). The last zone and year are remembered, as boundaries are
/// computed for every rolled-up point.
fn offset_step_ms(ms: i64, tz: &TimeZone) -> i64 {
    use std::cell::RefCell;
    thread_local! {
        /// The last zone and year asked for, with the answer (queries ask for one zone).
        static LAST: RefCell<Option<(String, i64, i64)>> = const { RefCell::new(None) };
    }
    const YEAR_MS: i64 = 2 * HALF_YEAR_MS;
    let year = ms.div_euclid(YEAR_MS);
    let named = tz.iana_name();
    let hit = LAST.with(|l| match (&*l.borrow(), named) {
        (Some((n, y, step)), Some(name)) if *y == year && n == name => Some(*step),
        _ => None,
    });
    if let Some(step) = hit {
        return step;
    }
    fn gcd(a: i64, b: i64) -> i64 {
        if b == 0 {
            a.abs()
        } else {
            gcd(b, a % b)
        }
    }
    // A zone at UTC all year has step 0, which every interval divides.
    let base = year * YEAR_MS;
    let mut step = 0i64;
    let mut probe = base - YEAR_MS;
    while probe <= base + 2 * YEAR_MS {
        if let Ok(t) = Timestamp::from_millisecond(probe) {
            step = gcd(step, tz.to_offset(t).seconds() as i64 * 1000);
        }
        probe += 15 * 86_400_000;
    }
    if let Some(name) = named {
        LAST.with(|l| *l.borrow_mut() = Some((name.to_string(), year, step)));
    }
    step
}

/// Start (epoch ms) of the interval holding `ms` in zone `tz`.
pub fn bucket_start(ms: i64, interval: Interval, tz: &TimeZone) -> Result<i64> {
    if let Some(len) = utc_aligned(ms, interval, tz)? {
        return Ok(ms.div_euclid(len) * len);
    }
    let local = ts_of(ms)?.to_zoned(tz.clone()).datetime();
    // The truncated local time resolves to at most `ms`: it is not later on the local clock, and
    // a gap resolves to the instant the clock jumps, which `ms` (a real local time) is not before.
    resolve(truncate(local, interval), tz)
}

/// Start of the interval after the one starting at `start` (a value from [`bucket_start`]).
pub fn next_start(start: i64, interval: Interval, tz: &TimeZone) -> Result<i64> {
    if let Some(len) = utc_aligned(start, interval, tz)? {
        return Ok(start + len);
    }
    let local = ts_of(start)?.to_zoned(tz.clone()).datetime();
    let mut civil = civil_next(truncate(local, interval), interval);
    for _ in 0..4 {
        let next = resolve(civil, tz)?;
        if next > start {
            return Ok(next);
        }
        civil = civil_next(civil, interval);
    }
    Err(StorageError::invalid(
        "timezone",
        format!(
            "no {} boundary after {}",
            interval.name(),
            crate::time::format_iso(start)
        ),
    ))
}

/// What an empty interval answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fill {
    /// Left out (the default).
    #[default]
    None,
    /// Answered with a null value.
    Null,
    /// Answered with the value of the last non-empty interval (null before the first).
    Previous,
    /// Answered with 0.
    Zero,
}

impl Fill {
    /// Parses `none`, `null`, `previous`, `zero`.
    pub fn parse(s: &str) -> Result<Fill> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "none" => Fill::None,
            "null" => Fill::Null,
            "previous" => Fill::Previous,
            "zero" => Fill::Zero,
            _ => {
                return Err(StorageError::invalid(
                    "fill",
                    format!("{s:?} is not one of none, null, previous, zero"),
                ))
            }
        })
    }
}

/// One rollup value: the interval's start and its value (`None` for a filled-in null).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupValue {
    /// Start of the interval, epoch ms.
    pub timestamp: i64,
    /// The value.
    pub value: Option<f64>,
}

/// How to roll up: interval, method, zone of the boundaries, and what empty intervals answer.
#[derive(Debug, Clone, Copy)]
pub struct RollupSpec<'a> {
    /// Interval.
    pub interval: Interval,
    /// Method.
    pub method: Method,
    /// Zone of the boundaries.
    pub tz: &'a TimeZone,
    /// What empty intervals answer.
    pub fill: Fill,
}

/// Applies `fill` to rolled-up values (ascending, each at an interval start) over the intervals
/// of `[from, to)`.
pub fn fill_intervals(
    values: &[(i64, f64)],
    interval: Interval,
    tz: &TimeZone,
    fill: Fill,
    from: i64,
    to: i64,
) -> Result<Vec<RollupValue>> {
    if fill == Fill::None || from >= to {
        return Ok(values
            .iter()
            .map(|(t, v)| RollupValue {
                timestamp: *t,
                value: Some(*v),
            })
            .collect());
    }
    let mut out = Vec::new();
    let mut i = 0;
    let mut prev = None;
    let mut start = bucket_start(from, interval, tz)?;
    while start < to {
        if out.len() >= MAX_INTERVALS {
            return Err(StorageError::invalid(
                "end_time",
                format!(
                    "the range holds more than {MAX_INTERVALS} {} intervals to fill; narrow it or use fill=none",
                    interval.name()
                ),
            ));
        }
        let value = match values.get(i) {
            Some((t, v)) if *t == start => {
                i += 1;
                prev = Some(*v);
                Some(*v)
            }
            _ => match fill {
                Fill::Null | Fill::None => None,
                Fill::Previous => prev,
                Fill::Zero => Some(0.0),
            },
        };
        out.push(RollupValue {
            timestamp: start,
            value,
        });
        start = next_start(start, interval, tz)?;
    }
    Ok(out)
}

/// Most intervals one rollup query walks through (empty ones included, when filling).
pub const MAX_INTERVALS: usize = 2_000_000;

/// Rolls up points fed in time order, one at a time, holding only the intervals it answers:
/// a year of raw points never has to be in memory at once.
pub struct Roller<'a> {
    spec: RollupSpec<'a>,
    to: i64,
    /// Last value before the current interval (for `increase`).
    prev_last: Option<f64>,
    /// Value of the last non-empty interval (for `fill=previous`).
    prev_value: Option<f64>,
    /// The open interval: start, next start, summary so far.
    cur: Option<(i64, i64, Summary)>,
    /// Start of the first interval not answered yet.
    next_unanswered: i64,
    out: Vec<RollupValue>,
    /// Stop after this many intervals (a page needs no more).
    cap: usize,
}

impl<'a> Roller<'a> {
    /// A roller for the points of `[from, to)`; `before` is the last value before `from`.
    pub fn new(
        spec: RollupSpec<'a>,
        before: Option<f64>,
        from: i64,
        to: i64,
    ) -> Result<Roller<'a>> {
        Ok(Roller {
            next_unanswered: bucket_start(from, spec.interval, spec.tz)?,
            spec,
            to,
            prev_last: before,
            prev_value: None,
            cur: None,
            out: Vec::new(),
            cap: usize::MAX,
        })
    }

    fn emit(&mut self, timestamp: i64, value: Option<f64>) -> Result<()> {
        if self.out.len() >= MAX_INTERVALS {
            return Err(StorageError::invalid(
                "end_time",
                format!(
                    "the range holds more than {MAX_INTERVALS} {} intervals; narrow it{}",
                    self.spec.interval.name(),
                    if self.spec.fill == Fill::None {
                        ""
                    } else {
                        " or use fill=none"
                    }
                ),
            ));
        }
        self.out.push(RollupValue { timestamp, value });
        Ok(())
    }

    /// Answers the empty intervals before `until` (when filling).
    fn fill_until(&mut self, until: i64) -> Result<()> {
        if self.spec.fill == Fill::None {
            self.next_unanswered = self.next_unanswered.max(until);
            return Ok(());
        }
        while self.next_unanswered < until {
            let v = match self.spec.fill {
                Fill::Previous => self.prev_value,
                Fill::Zero => Some(0.0),
                Fill::Null | Fill::None => None,
            };
            self.emit(self.next_unanswered, v)?;
            self.next_unanswered =
                next_start(self.next_unanswered, self.spec.interval, self.spec.tz)?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((start, next, s)) = self.cur.take() {
            let v = s.value(self.spec.method, self.prev_last);
            self.prev_last = Some(s.last);
            self.prev_value = Some(v);
            self.emit(start, Some(v))?;
            self.next_unanswered = next;
        }
        Ok(())
    }

    /// Stops once `cap` intervals are answered: later input is ignored, and [`Roller::finish`]
    /// returns the first `cap` or more intervals, each complete.
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap.max(1);
        self
    }

    /// Whether `cap` intervals are answered (input is ignored from then on).
    pub fn is_full(&self) -> bool {
        self.out.len() >= self.cap
    }

    /// Feeds the next point (newer than every point fed so far, inside `[from, to)`).
    pub fn push(&mut self, ts: i64, v: f64) -> Result<()> {
        if self.is_full() {
            return Ok(());
        }
        if let Some((_, next, s)) = &mut self.cur {
            if ts < *next {
                s.push(ts, v);
                return Ok(());
            }
        }
        self.push_piece(ts, ts + 1, &Summary::of(ts, v)).map(|_| ())
    }

    /// Feeds the summary of points lying in `[start, end)`, all newer than every point fed so
    /// far. Returns `false`, feeding nothing, when an interval boundary falls strictly inside
    /// `[start, end)`: the piece cannot be split, so the caller must use finer pieces.
    pub fn push_piece(&mut self, start: i64, end: i64, s: &Summary) -> Result<bool> {
        if self.is_full() {
            return Ok(true);
        }
        if let Some((cs, next, acc)) = &mut self.cur {
            if start < *next {
                if end > *next || start < *cs {
                    return Ok(false);
                }
                *acc = acc.merge(s);
                return Ok(true);
            }
        }
        let bs = bucket_start(start, self.spec.interval, self.spec.tz)?;
        let next = next_start(bs, self.spec.interval, self.spec.tz)?;
        if end > next {
            return Ok(false);
        }
        self.close()?;
        self.fill_until(bs)?;
        self.cur = Some((bs, next, *s));
        Ok(true)
    }

    /// The values of every interval, ascending.
    pub fn finish(mut self) -> Result<Vec<RollupValue>> {
        if self.is_full() {
            // The open interval may lack input that was ignored.
            return Ok(self.out);
        }
        self.close()?;
        let to = self.to;
        self.fill_until(to)?;
        Ok(self.out)
    }
}

/// Rolls up points (in time order, all in `[from, to)`) into the intervals that hold them,
/// in ascending order. `before` is the last value before `from`, for `increase`. Points are
/// clipped to the range but each interval is stamped with its own start, as InfluxDB does.
pub fn roll_up(
    points: &[(i64, f64)],
    before: Option<f64>,
    spec: &RollupSpec<'_>,
    from: i64,
    to: i64,
) -> Result<Vec<RollupValue>> {
    if from >= to {
        return Ok(Vec::new());
    }
    let mut r = Roller::new(*spec, before, from, to)?;
    for (t, v) in points {
        r.push(*t, *v)?;
    }
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(iso: &str) -> i64 {
        crate::time::parse_absolute(iso).unwrap()
    }

    fn buckets(from: &str, to: &str, interval: Interval, tz: &str) -> Vec<(String, i64)> {
        let tz = zone(tz).unwrap();
        let (mut s, end) = (bucket_start(ms(from), interval, &tz).unwrap(), ms(to));
        let mut out = Vec::new();
        while s < end {
            let n = next_start(s, interval, &tz).unwrap();
            out.push((crate::time::format_iso(s), (n - s) / 60_000));
            s = n;
        }
        out
    }

    #[test]
    fn parses_intervals_and_methods_with_clear_errors() {
        assert_eq!(Interval::parse("half").unwrap(), Interval::Half);
        assert_eq!(Interval::parse("30m").unwrap(), Interval::Half);
        assert!(Interval::parse("2h")
            .unwrap_err()
            .to_string()
            .contains("interval"));
        assert_eq!(Method::parse("standarddev").unwrap(), Method::StandardDev);
        assert!(Method::parse("median")
            .unwrap_err()
            .to_string()
            .contains("method"));
        assert!(zone("Mars/Olympus")
            .unwrap_err()
            .to_string()
            .contains("timezone"));
    }

    #[test]
    fn dst_days_last_23_and_25_hours() {
        // Europe/Sofia: clocks forward on 2026-03-29, back on 2026-10-25.
        let spring = buckets(
            "2026-03-28T12:00:00Z",
            "2026-03-30T00:00:00Z",
            Interval::Day,
            "Europe/Sofia",
        );
        assert_eq!(spring[1], ("2026-03-28T22:00:00.000Z".into(), 23 * 60));
        let autumn = buckets(
            "2026-10-24T12:00:00Z",
            "2026-10-26T00:00:00Z",
            Interval::Day,
            "Europe/Sofia",
        );
        assert_eq!(autumn[1], ("2026-10-24T21:00:00.000Z".into(), 25 * 60));
        // New York days start at local midnight.
        let ny = buckets(
            "2026-03-08T00:00:00Z",
            "2026-03-09T12:00:00Z",
            Interval::Day,
            "America/New_York",
        );
        assert_eq!(ny[1], ("2026-03-08T05:00:00.000Z".into(), 23 * 60));
        // The repeated local hour of a whole-hour zone is two real hours.
        let hours = buckets(
            "2026-10-25T00:00:00Z",
            "2026-10-25T03:00:00Z",
            Interval::Hour,
            "Europe/Sofia",
        );
        assert!(hours.iter().all(|(_, m)| *m == 60), "{hours:?}");
        assert_eq!(hours.len(), 3);
    }

    #[test]
    fn kolkata_hours_start_at_half_past_utc() {
        let h = buckets(
            "2026-01-01T00:00:00Z",
            "2026-01-01T02:00:00Z",
            Interval::Hour,
            "Asia/Kolkata",
        );
        assert_eq!(h[0], ("2025-12-31T23:30:00.000Z".into(), 60));
        assert_eq!(h[1], ("2026-01-01T00:30:00.000Z".into(), 60));
        let d = buckets(
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            Interval::Day,
            "Asia/Kolkata",
        );
        assert_eq!(d[0], ("2025-12-31T18:30:00.000Z".into(), 24 * 60));
    }

    #[test]
    fn lord_howe_hours_last_30_or_90_minutes_across_its_shift() {
        // DST starts 2026-10-04 02:00 LHST (+10:30) -> 02:30 (+11), i.e. 2026-10-03T15:30Z.
        let spring = buckets(
            "2026-10-03T13:30:00Z",
            "2026-10-03T17:00:00Z",
            Interval::Hour,
            "Australia/Lord_Howe",
        );
        let minutes: Vec<i64> = spring.iter().map(|b| b.1).collect();
        assert!(minutes.contains(&30), "{spring:?}");
        assert!(minutes.iter().all(|m| *m == 30 || *m == 60), "{spring:?}");
        // DST ends 2026-04-05 02:00 LHDT (+11) -> 01:30 (+10:30), i.e. 2026-04-04T15:00Z.
        let autumn = buckets(
            "2026-04-04T12:00:00Z",
            "2026-04-04T17:00:00Z",
            Interval::Hour,
            "Australia/Lord_Howe",
        );
        let minutes: Vec<i64> = autumn.iter().map(|b| b.1).collect();
        assert!(minutes.contains(&90), "{autumn:?}");
        assert!(minutes.iter().all(|m| *m == 60 || *m == 90), "{autumn:?}");
        // Half hours stay 30 minutes: both offsets are whole half hours.
        let halves = buckets(
            "2026-10-03T14:00:00Z",
            "2026-10-03T17:00:00Z",
            Interval::Half,
            "Australia/Lord_Howe",
        );
        assert!(halves.iter().all(|b| b.1 == 30), "{halves:?}");
    }

    #[test]
    fn roll_up_fills_and_carries_increase_across_gaps() {
        let utc = zone("UTC").unwrap();
        let pts = [(0, 10.0), (30_000, 11.0), (150_000, 14.0), (160_000, 2.0)];
        let r = |method, fill| {
            let spec = RollupSpec {
                interval: Interval::Minute1,
                method,
                tz: &utc,
                fill,
            };
            roll_up(&pts, Some(9.0), &spec, 0, 240_000).unwrap()
        };
        let vals = |v: Vec<RollupValue>| {
            v.iter()
                .map(|x| (x.timestamp / 60_000, x.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            vals(r(Method::Count, Fill::None)),
            vec![(0, Some(2.0)), (2, Some(2.0))]
        );
        assert_eq!(
            vals(r(Method::Count, Fill::Null)),
            vec![(0, Some(2.0)), (1, None), (2, Some(2.0)), (3, None)]
        );
        assert_eq!(
            vals(r(Method::Max, Fill::Previous)),
            vec![
                (0, Some(11.0)),
                (1, Some(11.0)),
                (2, Some(14.0)),
                (3, Some(14.0))
            ]
        );
        assert_eq!(vals(r(Method::Sum, Fill::Zero))[1], (1, Some(0.0)));
        // 9 -> 10 -> 11: +2; after the gap 11 -> 14 lands in minute 2, then a reset to 2 adds 2.
        assert_eq!(
            vals(r(Method::Increase, Fill::None)),
            vec![(0, Some(2.0)), (2, Some(5.0))]
        );
        assert_eq!(Fill::parse("previous").unwrap(), Fill::Previous);
        assert!(Fill::parse("linear")
            .unwrap_err()
            .to_string()
            .contains("fill"));
    }

    #[test]
    fn weeks_start_monday_and_months_on_the_first() {
        let w = buckets(
            "2026-11-27T12:00:00Z",
            "2026-11-28T00:00:00Z",
            Interval::Week,
            "UTC",
        );
        assert_eq!(w[0], ("2026-11-23T00:00:00.000Z".into(), 7 * 24 * 60));
        let m = buckets(
            "2026-02-10T00:00:00Z",
            "2026-03-02T00:00:00Z",
            Interval::Month,
            "Europe/Sofia",
        );
        assert_eq!(m[0], ("2026-01-31T22:00:00.000Z".into(), 28 * 24 * 60));
        // March in Sofia has a 23-hour day.
        assert_eq!(m[1], ("2026-02-28T22:00:00.000Z".into(), 31 * 24 * 60 - 60));
    }

    #[test]
    fn increase_counts_resets_from_zero_and_joins_buckets() {
        let pts = [(1, 10.0), (2, 12.0), (3, 3.0), (4, 5.0)];
        let s = Summary::of_points(pts).unwrap();
        // 10 -> 12: +2; 12 -> 3: reset, +3; 3 -> 5: +2.
        assert_eq!(s.value(Method::Increase, None), 7.0);
        assert_eq!(s.value(Method::Increase, Some(9.0)), 8.0);
        assert_eq!(s.value(Method::Increase, Some(11.0)), 17.0);
        assert_eq!(Summary::of(1, 4.0).value(Method::StandardDev, None), 0.0);
        let sd = Summary::of_points([
            (1, 2.0),
            (2, 4.0),
            (3, 4.0),
            (4, 4.0),
            (5, 5.0),
            (6, 5.0),
            (7, 7.0),
            (8, 9.0),
        ])
        .unwrap();
        assert!((sd.value(Method::StandardDev, None) - 2.138_089_935_299_395).abs() < 1e-12);
    }

    #[test]
    fn lord_howes_half_hour_fold_tiles_its_hours() {
        // 7 April 2024, 02:00 +11 becomes 01:30 +10:30: local 01:00-02:00 lasts 90 minutes.
        let tz = zone("Australia/Lord_Howe").unwrap();
        let at = |iso: &str| crate::time::parse_absolute(iso).unwrap();
        let one = at("2024-04-06T14:00:00Z");
        let next = next_start(one, Interval::Hour, &tz).unwrap();
        assert_eq!(next, at("2024-04-06T15:30:00Z"));
        for probe in [one, at("2024-04-06T15:00:00Z"), next - 1] {
            assert_eq!(bucket_start(probe, Interval::Hour, &tz).unwrap(), one);
        }
        assert_eq!(bucket_start(next, Interval::Hour, &tz).unwrap(), next);
    }

    proptest! {
        #[test]
        fn merge_of_parts_equals_summary_of_the_whole(
            vals in proptest::collection::vec(-1e6f64..1e6, 1..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let pts: Vec<(i64, f64)> = vals.iter().enumerate().map(|(i, v)| (i as i64, *v)).collect();
            let whole = Summary::of_points(pts.iter().copied()).unwrap();
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % pts.len()).collect();
            bounds.push(0);
            bounds.push(pts.len());
            bounds.sort();
            bounds.dedup();
            let merged = bounds
                .windows(2)
                .filter_map(|w| Summary::of_points(pts[w[0]..w[1]].iter().copied()))
                .reduce(|a, b| a.merge(&b))
                .unwrap();
            for m in Method::ALL {
                let (a, b) = (whole.value(m, Some(0.5)), merged.value(m, Some(0.5)));
                prop_assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{m:?}: {a} vs {b}");
            }
        }

        #[test]
        fn buckets_tile_time_in_every_zone(
            start in 1_700_000_000_000i64..1_900_000_000_000,
            zi in 0usize..5,
            ii in 0usize..8,
        ) {
            let names = ["UTC", "Europe/Sofia", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"];
            let tz = zone(names[zi]).unwrap();
            let interval = Interval::ALL[ii];
            let mut s = bucket_start(start, interval, &tz).unwrap();
            prop_assert!(s <= start);
            for _ in 0..40 {
                let n = next_start(s, interval, &tz).unwrap();
                prop_assert!(n > s);
                // Every instant of [s, n) maps back to s.
                for probe in [s, s + (n - s) / 2, n - 1] {
                    prop_assert_eq!(bucket_start(probe, interval, &tz).unwrap(), s, "{:?} in {}", interval, names[zi]);
                }
                s = n;
            }
        }
    }
}
