//! Stream types settled by a partition's holder before a cluster node answers an ingest
//! (docs/scale-out.md, "Stream types before the answer").
//!
//! On one node, a point whose value does not fit its stream's stored type is refused in the
//! answer, item by item. A cluster node publishes a batch to the log and answers once JetStream
//! has it; the stream's type is known only to the holder of its device's partition. So the
//! ingesting node asks the holder ([`KIND`], over [`meterstream_cluster::ask`]) what type each
//! stream of the batch has, and checks the points against that:
//! - a stream the holder stores has its stored type;
//! - a stream it does not store yet has the type first proposed for it in the last
//!   [`RESERVE_FOR`]: the holder keeps that proposal, so two batches racing to create a stream
//!   with different types, through different nodes, are settled as one node would (the first
//!   wins, the other's points are refused in its answer);
//! - otherwise the asker's proposal (the group's `stream_type`, or the type its values imply),
//!   which is then reserved.
//!
//! The asker then publishes each group with the settled type, so whichever record is applied
//! first creates the stream with it.
//!
//! The asker keeps the stored types it was told in a [`TypeCache`] for one to two minutes, so
//! a gateway's next batches need no question; a type settled for a stream not stored yet is
//! cached once the batch that creates the stream with it is in the log. A stored type changes only by a change of the
//! stream (`PutStream`, `DeleteStream`); the node that makes one broadcasts the path
//! ([`FORGET`]) once it is applied, and every node forgets it. A node that misses the
//! broadcast (core NATS keeps nothing) may take points checked against the old type until its
//! entry ages out; the holder refuses at apply what does not fit, as before this check.

use meterstream_storage::{Engine, StreamType};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kind of question.
pub const KIND: &str = "types";

/// How long a proposed type is kept for a stream that is not stored yet: far longer than a
/// batch takes from its question to being applied.
pub const RESERVE_FOR: Duration = Duration::from_secs(60);

/// A question: each stream's path and the type the asker proposes for it (`None`: it has no
/// point that would create it).
pub type Question = Vec<(String, Option<StreamType>)>;

/// The answer: each stream's settled type and whether it is stored (not only reserved), in
/// the question's order (`None`: neither stored, reserved nor proposed).
pub type Answer = Vec<Option<(StreamType, bool)>>;

/// The broadcast topic of streams whose stored type may have changed (their paths).
pub const FORGET: &str = "types.forget";

/// How long a cached type is kept at least (at most twice as long).
pub const CACHE_FOR: Duration = Duration::from_secs(60);

/// Entries a cache generation holds before it is rotated early.
const CACHE_MAX: usize = 500_000;

/// Stored types an ingesting node was told, in two generations: a lookup moves an entry of the
/// older one into the newer; every [`CACHE_FOR`] (or [`CACHE_MAX`] entries) the older one is
/// dropped.
pub struct TypeCache {
    inner: parking_lot::Mutex<Generations>,
}

struct Generations {
    new: HashMap<String, StreamType>,
    old: HashMap<String, StreamType>,
    rotated: Instant,
}

impl Default for TypeCache {
    fn default() -> TypeCache {
        TypeCache {
            inner: parking_lot::Mutex::new(Generations {
                new: HashMap::new(),
                old: HashMap::new(),
                rotated: Instant::now(),
            }),
        }
    }
}

impl TypeCache {
    /// The cached type of `path`.
    pub fn get(&self, path: &str, now: Instant) -> Option<StreamType> {
        self.get_all([path], now).pop().flatten()
    }

    /// The cached types of `paths`, in their order, under one lock.
    pub fn get_all<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Vec<Option<StreamType>> {
        let mut g = self.inner.lock();
        g.rotate(now);
        paths
            .into_iter()
            .map(|path| {
                if let Some(t) = g.new.get(path) {
                    return Some(*t);
                }
                let t = g.old.remove(path)?;
                g.new.insert(path.to_string(), t);
                Some(t)
            })
            .collect()
    }

    /// Keeps `path`'s stored type.
    pub fn put(&self, path: String, t: StreamType, now: Instant) {
        let mut g = self.inner.lock();
        g.rotate(now);
        g.new.insert(path, t);
    }

    /// Forgets `path`.
    pub fn forget(&self, path: &str) {
        let mut g = self.inner.lock();
        g.new.remove(path);
        g.old.remove(path);
    }
}

impl Generations {
    fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) >= CACHE_FOR || self.new.len() >= CACHE_MAX {
            self.old = std::mem::take(&mut self.new);
            self.rotated = now;
        }
    }
}

/// Refuses a question about stream `path` put to the holder of another partition than the
/// stream's (a misrouted question would be answered from a store that may keep what the node
/// held before).
pub fn in_partition(path: &str, partition: u32, partitions: u32) -> Result<(), String> {
    let device = meterstream_storage::path::device_id(path);
    if meterstream_cluster::partition::of_device(device, partitions) != partition {
        return Err(format!("{path:?} is not in partition {partition}"));
    }
    Ok(())
}

/// The holder's side: stored types, and types reserved for streams not stored yet.
pub struct TypeGate {
    engine: Arc<Engine>,
    partitions: u32,
    reserved: parking_lot::Mutex<Reserved>,
}

#[derive(Default)]
struct Reserved {
    map: HashMap<String, (StreamType, Instant)>,
    /// The size after the last sweep; the next sweep runs at twice that.
    swept: usize,
}

impl TypeGate {
    /// The gate of a node whose store is `engine`, in a cluster of `partitions`.
    pub fn new(engine: Arc<Engine>, partitions: u32) -> TypeGate {
        TypeGate {
            engine,
            partitions,
            reserved: parking_lot::Mutex::new(Reserved::default()),
        }
    }

    /// Settles the type of each stream asked about (see the module's documentation).
    pub fn settle(&self, asked: &[(String, Option<StreamType>)], now: Instant) -> Answer {
        let mut r = self.reserved.lock();
        let out = asked
            .iter()
            .map(|(path, proposed)| {
                if let Some(t) = self.engine.stream_type(path) {
                    return Some((t, true));
                }
                match r.map.get(path) {
                    Some((t, until)) if *until > now => Some((*t, false)),
                    _ => {
                        let t = (*proposed)?;
                        r.map.insert(path.clone(), (t, now + RESERVE_FOR));
                        Some((t, false))
                    }
                }
            })
            .collect();
        if r.map.len() > (2 * r.swept).max(1024) {
            // Expired reservations go, and those whose streams are stored now (the stored
            // type answers for them).
            let engine = &self.engine;
            r.map
                .retain(|path, (_, until)| *until > now && engine.stream_type(path).is_none());
            r.swept = r.map.len();
        }
        out
    }

    /// The answer to a question about `partition`, as [`meterstream_cluster::ask`] carries it.
    pub fn answer(&self, partition: u32, body: &[u8]) -> Result<Vec<u8>, String> {
        let asked: Question =
            rmp_serde::from_slice(body).map_err(|e| format!("a question about types: {e}"))?;
        for (path, _) in &asked {
            in_partition(path, partition, self.partitions)?;
        }
        rmp_serde::to_vec(&self.settle(&asked, Instant::now())).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterstream_storage::point::{GroupIn, PointIn};
    use meterstream_storage::value::InValue;
    use meterstream_storage::Store;

    fn engine(dir: &std::path::Path) -> Arc<Engine> {
        Arc::new(Engine::open(meterstream_storage::engine::Config::new(dir)).unwrap())
    }

    #[test]
    fn stored_types_win_then_the_first_proposal_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        e.write(
            vec![GroupIn {
                stream: "d/int".into(),
                stream_type: Some(StreamType::Integer),
                stream_units: None,
                first_index: 0,
                points: vec![PointIn {
                    timestamp: Some(1),
                    value: InValue::Int(1),
                    extras: None,
                }],
            }],
            10,
        )
        .unwrap();
        let gate = TypeGate::new(e, 16);
        let t0 = Instant::now();
        let ask = |path: &str, t: Option<StreamType>| vec![(path.to_string(), t)];
        // Stored: the proposal does not matter.
        assert_eq!(
            gate.settle(&ask("d/int", Some(StreamType::String)), t0),
            vec![Some((StreamType::Integer, true))]
        );
        // Not stored: nothing proposed, nothing settled; the first proposal is kept.
        assert_eq!(gate.settle(&ask("d/new", None), t0), vec![None]);
        assert_eq!(
            gate.settle(&ask("d/new", Some(StreamType::Double)), t0),
            vec![Some((StreamType::Double, false))]
        );
        assert_eq!(
            gate.settle(&ask("d/new", Some(StreamType::String)), t0),
            vec![Some((StreamType::Double, false))]
        );
        assert_eq!(
            gate.settle(&ask("d/new", None), t0 + RESERVE_FOR / 2),
            vec![Some((StreamType::Double, false))]
        );
        // Once it expires, the next proposal is taken.
        let later = t0 + RESERVE_FOR + Duration::from_secs(1);
        assert_eq!(
            gate.settle(&ask("d/new", Some(StreamType::String)), later),
            vec![Some((StreamType::String, false))]
        );
    }

    #[test]
    fn the_cache_keeps_a_type_one_to_two_periods_and_forgets_on_demand() {
        let c = TypeCache::default();
        let t0 = Instant::now();
        c.put("d/a".into(), StreamType::Long, t0);
        c.put("d/b".into(), StreamType::Double, t0);
        assert_eq!(c.get("d/a", t0), Some(StreamType::Long));
        // One period on: the first generation is the older one; a lookup keeps d/a.
        let t1 = t0 + CACHE_FOR;
        assert_eq!(c.get("d/a", t1), Some(StreamType::Long));
        // Two periods on: d/b, not looked up, is gone; d/a was moved into the newer generation.
        let t2 = t1 + CACHE_FOR;
        assert_eq!(c.get("d/b", t2), None);
        assert_eq!(c.get("d/a", t2), Some(StreamType::Long));
        c.forget("d/a");
        assert_eq!(c.get("d/a", t2), None);
    }

    #[test]
    fn questions_travel_and_a_stream_of_another_partition_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gate = TypeGate::new(engine(dir.path()), 16);
        let p = meterstream_cluster::partition::of_device("dev", 16);
        let q: Question = vec![("dev/a".into(), Some(StreamType::Long))];
        let a: Answer =
            rmp_serde::from_slice(&gate.answer(p, &rmp_serde::to_vec(&q).unwrap()).unwrap())
                .unwrap();
        assert_eq!(a, vec![Some((StreamType::Long, false))]);
        let e = gate
            .answer((p + 1) % 16, &rmp_serde::to_vec(&q).unwrap())
            .unwrap_err();
        assert!(e.contains("dev/a"), "{e}");
        assert!(gate.answer(p, b"\xc1").is_err());
    }
}
