//! A run of points of one stream held in columns, sorted by timestamp with no duplicate
//! timestamps. It is both the open head of a stream (in memory, appended to) and the decoded form
//! of a chunk.
//!
//! Memory per point is 16 bytes (timestamp and value) for numeric streams. Server timestamps are
//! kept as runs (all points of a batch share one), and the rare optional fields sparsely, keyed by
//! timestamp.

use crate::point::{DataPoint, Extras};
use crate::value::{Value, ValueKind};

/// A column of values of one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// INTEGER and LONG streams.
    Int(Vec<i64>),
    /// FLOAT and DOUBLE streams.
    Float(Vec<f64>),
    /// STRING, JSON and GEOJSON streams.
    Text(Vec<String>),
    /// BINARY streams.
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    /// An empty column of `kind`.
    pub fn new(kind: ValueKind) -> Self {
        match kind {
            ValueKind::Int => Values::Int(Vec::new()),
            ValueKind::Float => Values::Float(Vec::new()),
            ValueKind::Text => Values::Text(Vec::new()),
            ValueKind::Bytes => Values::Bytes(Vec::new()),
        }
    }

    /// The kind of the column.
    pub fn kind(&self) -> ValueKind {
        match self {
            Values::Int(_) => ValueKind::Int,
            Values::Float(_) => ValueKind::Float,
            Values::Text(_) => ValueKind::Text,
            Values::Bytes(_) => ValueKind::Bytes,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Text(v) => v.len(),
            Values::Bytes(v) => v.len(),
        }
    }

    /// Whether the column is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `i`.
    /// The value at `i` as a number (`None` for text and bytes).
    pub fn f64_at(&self, i: usize) -> Option<f64> {
        match self {
            Values::Int(v) => Some(v[i] as f64),
            Values::Float(v) => Some(v[i]),
            Values::Text(_) | Values::Bytes(_) => None,
        }
    }

    /// The value at `i`.
    pub fn get(&self, i: usize) -> Value {
        match self {
            Values::Int(v) => Value::Int(v[i]),
            Values::Float(v) => Value::Float(v[i]),
            Values::Text(v) => Value::Text(v[i].clone()),
            Values::Bytes(v) => Value::Bytes(v[i].clone()),
        }
    }

    /// Inserts `value` at `i`, coercing it to the column's kind. Values are checked against the
    /// stream type before they are logged, so coercion only happens when a type change races a
    /// write.
    pub fn insert(&mut self, i: usize, value: Value) {
        match self {
            Values::Int(v) => v.insert(i, coerce_int(value)),
            Values::Float(v) => v.insert(i, coerce_float(value)),
            Values::Text(v) => v.insert(i, coerce_text(value)),
            Values::Bytes(v) => v.insert(i, coerce_bytes(value)),
        }
    }

    /// Appends `value`, coercing it like [`Values::insert`].
    pub fn push(&mut self, value: Value) {
        match self {
            Values::Int(v) => v.push(coerce_int(value)),
            Values::Float(v) => v.push(coerce_float(value)),
            Values::Text(v) => v.push(coerce_text(value)),
            Values::Bytes(v) => v.push(coerce_bytes(value)),
        }
    }

    /// Replaces the value at `i`.
    pub fn set(&mut self, i: usize, value: Value) {
        match self {
            Values::Int(v) => v[i] = coerce_int(value),
            Values::Float(v) => v[i] = coerce_float(value),
            Values::Text(v) => v[i] = coerce_text(value),
            Values::Bytes(v) => v[i] = coerce_bytes(value),
        }
    }

    /// Reserves room for exactly `extra` more values.
    pub fn reserve_exact(&mut self, extra: usize) {
        match self {
            Values::Int(v) => v.reserve_exact(extra),
            Values::Float(v) => v.reserve_exact(extra),
            Values::Text(v) => v.reserve_exact(extra),
            Values::Bytes(v) => v.reserve_exact(extra),
        }
    }

    /// Appends every value of `other` (of the same kind; others are coerced one by one).
    pub fn append(&mut self, other: Values) {
        match (self, other) {
            (Values::Int(a), Values::Int(b)) => a.extend(b),
            (Values::Float(a), Values::Float(b)) => a.extend(b),
            (Values::Text(a), Values::Text(b)) => a.extend(b),
            (Values::Bytes(a), Values::Bytes(b)) => a.extend(b),
            (a, b) => {
                for i in 0..b.len() {
                    a.push(b.get(i));
                }
            }
        }
    }

    /// Keeps the values whose index passes `keep`.
    fn retain_indices(&mut self, keep: &[bool]) {
        fn r<T>(v: &mut Vec<T>, keep: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        match self {
            Values::Int(v) => r(v, keep),
            Values::Float(v) => r(v, keep),
            Values::Text(v) => r(v, keep),
            Values::Bytes(v) => r(v, keep),
        }
    }

    /// Splits off the values from `at` on.
    fn split_off(&mut self, at: usize) -> Values {
        match self {
            Values::Int(v) => Values::Int(v.split_off(at)),
            Values::Float(v) => Values::Float(v.split_off(at)),
            Values::Text(v) => Values::Text(v.split_off(at)),
            Values::Bytes(v) => Values::Bytes(v.split_off(at)),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Values::Int(v) => v.truncate(len),
            Values::Float(v) => v.truncate(len),
            Values::Text(v) => v.truncate(len),
            Values::Bytes(v) => v.truncate(len),
        }
    }

    fn clear_and_shrink(&mut self) {
        match self {
            Values::Int(v) => *v = Vec::new(),
            Values::Float(v) => *v = Vec::new(),
            Values::Text(v) => *v = Vec::new(),
            Values::Bytes(v) => *v = Vec::new(),
        }
    }
}

fn coerce_int(v: Value) -> i64 {
    match v {
        Value::Int(i) => i,
        Value::Float(f) => f as i64,
        Value::Text(s) => s.parse().unwrap_or(0),
        Value::Bytes(_) => 0,
    }
}

fn coerce_float(v: Value) -> f64 {
    match v {
        Value::Int(i) => i as f64,
        Value::Float(f) => f,
        Value::Text(s) => s.parse().unwrap_or(f64::NAN),
        Value::Bytes(_) => f64::NAN,
    }
}

fn coerce_text(v: Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(s) => s,
        Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
    }
}

fn coerce_bytes(v: Value) -> Vec<u8> {
    match v {
        Value::Bytes(b) => b,
        Value::Text(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Float(f) => f.to_string().into_bytes(),
    }
}

/// Points of one stream in columns, sorted by timestamp, timestamps unique.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Device timestamps, strictly increasing.
    pub ts: Vec<i64>,
    /// Values, one per timestamp.
    pub values: Values,
    /// Server timestamps as runs `(first index, server timestamp)`, first index strictly
    /// increasing and the first run starting at 0 when the series is not empty.
    pub server: Vec<(u32, i64)>,
    /// Optional fields, sorted by timestamp.
    pub extras: Vec<(i64, Box<Extras>)>,
}

impl Series {
    /// An empty series of `kind`.
    pub fn new(kind: ValueKind) -> Self {
        Series {
            ts: Vec::new(),
            values: Values::new(kind),
            server: Vec::new(),
            extras: Vec::new(),
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// First timestamp.
    pub fn first_ts(&self) -> Option<i64> {
        self.ts.first().copied()
    }

    /// Last timestamp.
    pub fn last_ts(&self) -> Option<i64> {
        self.ts.last().copied()
    }

    /// Server timestamp of the point at `i`.
    pub fn server_at(&self, i: usize) -> i64 {
        let i = i as u32;
        let r = self.server.partition_point(|(start, _)| *start <= i);
        self.server[r.saturating_sub(1)].1
    }

    /// All server timestamps, expanded.
    pub fn server_expanded(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.len());
        for (k, (start, s)) in self.server.iter().enumerate() {
            let end = self
                .server
                .get(k + 1)
                .map_or(self.len(), |(next, _)| *next as usize);
            out.extend(std::iter::repeat_n(*s, end - *start as usize));
        }
        out
    }

    /// Sets the server timestamps from an expanded column.
    pub fn set_server_expanded(&mut self, server: &[i64]) {
        self.server.clear();
        for (i, s) in server.iter().enumerate() {
            if self.server.last().map(|(_, last)| last) != Some(s) {
                self.server.push((i as u32, *s));
            }
        }
    }

    /// Optional fields of the point at timestamp `ts`.
    pub fn extras_at(&self, ts: i64) -> Option<&Extras> {
        self.extras
            .binary_search_by_key(&ts, |(t, _)| *t)
            .ok()
            .map(|k| &*self.extras[k].1)
    }

    /// The point at index `i`.
    pub fn point(&self, i: usize) -> DataPoint {
        let ts = self.ts[i];
        DataPoint {
            timestamp: ts,
            server_timestamp: self.server_at(i),
            value: self.values.get(i),
            extras: self.extras_at(ts).map(|e| Box::new(e.clone())),
        }
    }

    fn set_extras(&mut self, ts: i64, extras: Option<Box<Extras>>) {
        match (self.extras.binary_search_by_key(&ts, |(t, _)| *t), extras) {
            (Ok(k), Some(e)) => self.extras[k].1 = e,
            (Ok(k), None) => {
                self.extras.remove(k);
            }
            (Err(k), Some(e)) => self.extras.insert(k, (ts, e)),
            (Err(_), None) => {}
        }
    }

    /// Writes a point: appended when it is the newest, replacing the point with the same
    /// timestamp, or inserted in order.
    pub fn upsert(&mut self, ts: i64, value: Value, server: i64, extras: Option<Box<Extras>>) {
        if self.ts.last().is_none_or(|last| *last < ts) {
            let i = self.ts.len() as u32;
            if self.ts.len() == self.ts.capacity() {
                // Grow by a quarter rather than doubling: heads are long-lived, and doubling
                // leaves up to half of every head's memory unused.
                self.reserve_exact((self.ts.len() / 4).max(16));
            }
            self.ts.push(ts);
            self.values.push(value);
            if self.server.last().map(|(_, s)| *s) != Some(server) {
                self.server.push((i, server));
            }
            if let Some(e) = extras {
                self.extras.push((ts, e));
            }
            return;
        }
        let mut expanded = self.server_expanded();
        match self.ts.binary_search(&ts) {
            Ok(k) => {
                self.values.set(k, value);
                expanded[k] = server;
            }
            Err(k) => {
                self.ts.insert(k, ts);
                self.values.insert(k, value);
                expanded.insert(k, server);
            }
        }
        self.set_server_expanded(&expanded);
        self.set_extras(ts, extras);
    }

    /// Appends `other`, whose points are all newer than those of `self`.
    pub fn append_newer(&mut self, other: Series) {
        debug_assert!(match (self.last_ts(), other.first_ts()) {
            (Some(a), Some(b)) => a < b,
            _ => true,
        });
        let offset = self.len() as u32;
        for (i, s) in other.server {
            if self.server.last().map(|(_, last)| *last) != Some(s) {
                self.server.push((i + offset, s));
            }
        }
        self.ts.extend(other.ts);
        self.values.append(other.values);
        self.extras.extend(other.extras);
    }

    /// Merges every point of `other` into `self` (points of `other` win on equal timestamps).
    pub fn merge(&mut self, other: &Series) {
        for i in 0..other.len() {
            let p = other.point(i);
            self.upsert(p.timestamp, p.value, p.server_timestamp, p.extras);
        }
    }

    /// Removes the points with `from <= ts < to`; returns how many were removed.
    pub fn delete_range(&mut self, from: i64, to: i64) -> usize {
        let lo = self.ts.partition_point(|t| *t < from);
        let hi = self.ts.partition_point(|t| *t < to);
        if lo >= hi {
            return 0;
        }
        let keep: Vec<bool> = (0..self.len()).map(|i| i < lo || i >= hi).collect();
        let mut server = self.server_expanded();
        server.drain(lo..hi);
        self.ts.drain(lo..hi);
        self.values.retain_indices(&keep);
        self.set_server_expanded(&server);
        self.extras.retain(|(t, _)| *t < from || *t >= to);
        hi - lo
    }

    /// Splits off the points from index `at` on into a new series.
    pub fn split_off(&mut self, at: usize) -> Series {
        let mut server = self.server_expanded();
        let tail_server = server.split_off(at);
        let tail_ts = self.ts.split_off(at);
        let split_ts = tail_ts.first().copied().unwrap_or(i64::MAX);
        let k = self.extras.partition_point(|(t, _)| *t < split_ts);
        let mut tail = Series {
            ts: tail_ts,
            values: self.values.split_off(at),
            server: Vec::new(),
            extras: self.extras.split_off(k),
        };
        tail.set_server_expanded(&tail_server);
        self.set_server_expanded(&server);
        tail
    }

    /// Reserves room for exactly `extra` more points.
    pub fn reserve_exact(&mut self, extra: usize) {
        self.ts.reserve_exact(extra);
        self.values.reserve_exact(extra);
    }

    /// Empties the series, keeping its memory for the next points.
    pub fn clear_keeping_capacity(&mut self) {
        self.ts.clear();
        self.values.truncate(0);
        self.server.clear();
        self.extras.clear();
    }

    /// Empties the series and gives its memory back.
    pub fn clear(&mut self) {
        self.ts = Vec::new();
        self.values.clear_and_shrink();
        self.server = Vec::new();
        self.extras = Vec::new();
    }

    /// Index range of the points with `from <= ts < to`.
    pub fn index_range(&self, from: i64, to: i64) -> std::ops::Range<usize> {
        let lo = self.ts.partition_point(|t| *t < from);
        let hi = self.ts.partition_point(|t| *t < to).max(lo);
        lo..hi
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        let v = match &self.values {
            Values::Int(v) => v.capacity() * 8,
            Values::Float(v) => v.capacity() * 8,
            Values::Text(v) => v.iter().map(|s| s.capacity() + 24).sum(),
            Values::Bytes(v) => v.iter().map(|s| s.capacity() + 24).sum(),
        };
        self.ts.capacity() * 8 + v + self.server.capacity() * 16 + self.extras.len() * 80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &Series) -> Vec<(i64, f64, i64)> {
        (0..s.len())
            .map(|i| {
                let p = s.point(i);
                (
                    p.timestamp,
                    p.value.as_f64().unwrap_or(f64::NAN),
                    p.server_timestamp,
                )
            })
            .collect()
    }

    #[test]
    fn upsert_appends_replaces_and_inserts() {
        let mut s = Series::new(ValueKind::Float);
        s.upsert(10, Value::Float(1.0), 100, None);
        s.upsert(20, Value::Float(2.0), 100, None);
        s.upsert(30, Value::Float(3.0), 200, None);
        s.upsert(15, Value::Float(1.5), 300, None);
        s.upsert(20, Value::Float(2.5), 300, None);
        assert_eq!(
            f(&s),
            vec![
                (10, 1.0, 100),
                (15, 1.5, 300),
                (20, 2.5, 300),
                (30, 3.0, 200)
            ]
        );
        assert_eq!(s.server, vec![(0, 100), (1, 300), (3, 200)]);
    }

    #[test]
    fn delete_and_split_keep_columns_aligned() {
        let mut s = Series::new(ValueKind::Float);
        for i in 0..10 {
            let e = (i % 3 == 0).then(|| {
                Box::new(Extras {
                    quality: Some(i as i32),
                    ..Extras::default()
                })
            });
            s.upsert(i * 10, Value::Float(i as f64), 1000 + i / 4, e);
        }
        assert_eq!(s.delete_range(20, 50), 3);
        assert_eq!(s.ts, vec![0, 10, 50, 60, 70, 80, 90]);
        assert_eq!(s.point(2).server_timestamp, 1001);
        let tail = s.split_off(4);
        assert_eq!(tail.ts, vec![70, 80, 90]);
        assert_eq!(tail.point(0).value, Value::Float(7.0));
        assert_eq!(tail.point(2).extras.unwrap().quality, Some(9));
        assert_eq!(s.point(3).extras.unwrap().quality, Some(6));
        assert_eq!(s.extras.len(), 2);
        assert_eq!(tail.server_at(0), 1001);
        assert_eq!(tail.server_at(1), 1002);
    }
}
