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

/// The answer: each stream's settled type, in the question's order (`None`: neither stored,
/// reserved nor proposed).
pub type Answer = Vec<Option<StreamType>>;

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
                    return Some(t);
                }
                match r.map.get(path) {
                    Some((t, until)) if *until > now => Some(*t),
                    _ => {
                        let t = (*proposed)?;
                        r.map.insert(path.clone(), (t, now + RESERVE_FOR));
                        Some(t)
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
        if let Some((path, _)) = asked.iter().find(|(path, _)| {
            meterstream_cluster::partition::of_device(
                meterstream_storage::path::device_id(path),
                self.partitions,
            ) != partition
        }) {
            return Err(format!("{path:?} is not in partition {partition}"));
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
            vec![Some(StreamType::Integer)]
        );
        // Not stored: nothing proposed, nothing settled; the first proposal is kept.
        assert_eq!(gate.settle(&ask("d/new", None), t0), vec![None]);
        assert_eq!(
            gate.settle(&ask("d/new", Some(StreamType::Double)), t0),
            vec![Some(StreamType::Double)]
        );
        assert_eq!(
            gate.settle(&ask("d/new", Some(StreamType::String)), t0),
            vec![Some(StreamType::Double)]
        );
        assert_eq!(
            gate.settle(&ask("d/new", None), t0 + RESERVE_FOR / 2),
            vec![Some(StreamType::Double)]
        );
        // Once it expires, the next proposal is taken.
        let later = t0 + RESERVE_FOR + Duration::from_secs(1);
        assert_eq!(
            gate.settle(&ask("d/new", Some(StreamType::String)), later),
            vec![Some(StreamType::String)]
        );
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
        assert_eq!(a, vec![Some(StreamType::Long)]);
        let e = gate
            .answer((p + 1) % 16, &rmp_serde::to_vec(&q).unwrap())
            .unwrap_err();
        assert!(e.contains("dev/a"), "{e}");
        assert!(gate.answer(p, b"\xc1").is_err());
    }
}
