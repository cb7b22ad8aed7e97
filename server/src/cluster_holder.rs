//! What a cluster node asks of another partition's holder about one stream, over
//! [`meterstream_cluster::ask`] (docs/scale-out.md, "Changes of streams through any node"):
//! - [`STREAM`]: the stream's record, as the holder stores it;
//! - [`CHANGE`]: what a change the asker logged (`LogRecord::PutStream`, `DeleteStream`,
//!   `DeleteHistory`) came to when the holder applied it, and the stream's record after it.
//!
//! A request naming one stream in its path is routed to the holder whole; these serve the
//! requests that name streams of several devices in one body (Digi's `POST/PUT /ws/DataStream`).

use crate::cluster::Outcomes;
use meterstream_cluster::node::Node;
use meterstream_storage::{Engine, StorageError, Store, StreamInfo};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The question for a stream's record.
pub const STREAM: &str = "stream";
/// The question for what a logged change came to.
pub const CHANGE: &str = "change";

/// How long the holder waits for a logged change to be applied before it answers.
pub const APPLY_WAIT: Duration = Duration::from_secs(10);

/// The store's answer as it travels between nodes: a result and the stream's record, or the
/// refusal with what the client is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Outcome {
    /// Done: the count the change came to (points deleted), and the stream's record after it
    /// (`None`: there is no such stream now).
    Done(u64, Option<Box<StreamInfo>>),
    /// Refused as a bad path.
    InvalidPath { path: String, reason: String },
    /// Refused as a bad value.
    InvalidValue { stream: String, message: String },
    /// Refused as a bad timestamp.
    InvalidTimestamp { given: String, reason: String },
    /// Refused as a bad argument.
    InvalidArgument { what: String, message: String },
    /// No such stream.
    NotFound { path: String },
    /// It contradicts stored state.
    Conflict { path: String, message: String },
    /// The holder failed (its store, its disk).
    Failed { message: String },
}

impl Outcome {
    /// The outcome of `r`, with the stream's record `info`.
    fn of(r: meterstream_storage::Result<u64>, info: Option<StreamInfo>) -> Outcome {
        match r {
            Ok(n) => Outcome::Done(n, info.map(Box::new)),
            Err(StorageError::InvalidPath { path, reason }) => {
                Outcome::InvalidPath { path, reason }
            }
            Err(StorageError::InvalidValue { stream, message }) => {
                Outcome::InvalidValue { stream, message }
            }
            Err(StorageError::InvalidTimestamp { given, reason }) => {
                Outcome::InvalidTimestamp { given, reason }
            }
            Err(StorageError::InvalidArgument { what, message }) => {
                Outcome::InvalidArgument { what, message }
            }
            Err(StorageError::StreamNotFound { path }) => Outcome::NotFound { path },
            Err(StorageError::Conflict { path, message }) => Outcome::Conflict { path, message },
            Err(e) => Outcome::Failed {
                message: e.to_string(),
            },
        }
    }

    /// Back into the store's terms.
    fn into_result(self) -> meterstream_storage::Result<(u64, Option<StreamInfo>)> {
        Err(match self {
            Outcome::Done(n, info) => return Ok((n, info.map(|b| *b))),
            Outcome::InvalidPath { path, reason } => StorageError::InvalidPath { path, reason },
            Outcome::InvalidValue { stream, message } => {
                StorageError::InvalidValue { stream, message }
            }
            Outcome::InvalidTimestamp { given, reason } => {
                StorageError::InvalidTimestamp { given, reason }
            }
            Outcome::InvalidArgument { what, message } => {
                StorageError::InvalidArgument { what, message }
            }
            Outcome::NotFound { path } => StorageError::StreamNotFound { path },
            Outcome::Conflict { path, message } => StorageError::Conflict { path, message },
            Outcome::Failed { message } => StorageError::Io {
                path: "the holder's store".into(),
                source: std::io::Error::other(message),
            },
        })
    }
}

/// A question about a logged change: its sequence in the partition's stream, and the stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeQuestion {
    /// The record's sequence.
    pub sequence: u64,
    /// The stream it changes.
    pub path: String,
}

/// The holder's answers to [`STREAM`] and [`CHANGE`] questions, from its engine and the
/// outcomes of the changes it applied. The node is held weakly (it keeps these answers).
pub struct Answers {
    /// The node's engine.
    pub engine: Arc<Engine>,
    /// Outcomes of applied changes, by sequence.
    pub outcomes: Arc<Outcomes>,
    /// The node.
    pub node: Weak<Node>,
    /// The cluster's number of partitions.
    pub partitions: u32,
}

impl Answers {
    /// The answer to a [`STREAM`] question about `partition`: the path.
    pub fn stream(&self, partition: u32, body: &[u8]) -> Result<Vec<u8>, String> {
        let path = std::str::from_utf8(body).map_err(|e| e.to_string())?;
        crate::cluster_types::in_partition(path, partition, self.partitions)?;
        let info = match self.engine.stream(path) {
            Ok(i) => Some(i),
            Err(StorageError::StreamNotFound { .. }) => None,
            Err(e) => return Err(e.to_string()),
        };
        encode(&Outcome::Done(0, info.map(Box::new)))
    }

    /// The answer to a [`CHANGE`] question, once the change is applied here (at most
    /// [`APPLY_WAIT`]).
    pub fn change(&self, partition: u32, body: &[u8]) -> Result<Vec<u8>, String> {
        let q: ChangeQuestion = rmp_serde::from_slice(body).map_err(|e| e.to_string())?;
        crate::cluster_types::in_partition(&q.path, partition, self.partitions)?;
        let node = self.node.upgrade().ok_or("the node is stopping")?;
        if !node.await_applied(partition, q.sequence, APPLY_WAIT) {
            return Err(format!(
                "the change (sequence {}) was not applied within {APPLY_WAIT:?}; the partition \
                 may be moving, and its next holder applies it",
                q.sequence
            ));
        }
        // A change the holder restored from a snapshot instead of applying has no outcome
        // here: it was applied by the holder before, and its effect is in the record.
        let r = self.outcomes.take(q.sequence).unwrap_or(Ok(0));
        let info = self.engine.stream(&q.path).ok();
        encode(&Outcome::of(r, info))
    }
}

fn encode(o: &Outcome) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(o).map_err(|e| e.to_string())
}

/// Reads an answer to a [`STREAM`] or [`CHANGE`] question.
pub fn decode(body: &[u8]) -> meterstream_storage::Result<(u64, Option<StreamInfo>)> {
    rmp_serde::from_slice::<Outcome>(body)
        .map_err(|e| StorageError::Corrupt {
            what: "an answer from a partition's holder",
            message: e.to_string(),
        })?
        .into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_about_a_stream_of_another_partition_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let answers = Answers {
            engine: Arc::new(
                Engine::open(meterstream_storage::engine::Config::new(dir.path())).unwrap(),
            ),
            outcomes: Arc::new(Outcomes::new(16)),
            node: Weak::new(),
            partitions: 16,
        };
        let p = meterstream_cluster::partition::of_device("dev", 16);
        assert_eq!(
            decode(&answers.stream(p, b"dev/a").unwrap()).unwrap(),
            (0, None),
            "asked of its holder: no such stream"
        );
        let e = answers.stream((p + 1) % 16, b"dev/a").unwrap_err();
        assert!(e.contains("dev/a") && e.contains("partition"), "{e}");
        let q = rmp_serde::to_vec(&ChangeQuestion {
            sequence: 1,
            path: "dev/a".into(),
        })
        .unwrap();
        let e = answers.change((p + 1) % 16, &q).unwrap_err();
        assert!(e.contains("dev/a"), "{e}");
    }

    #[test]
    fn outcomes_travel_with_their_status() {
        let cases = [
            StorageError::StreamNotFound { path: "d/a".into() },
            StorageError::Conflict {
                path: "d/a".into(),
                message: "has data".into(),
            },
            StorageError::invalid("dataType", "no such type"),
        ];
        for e in cases {
            let status = crate::error::storage_status(&e);
            let text = e.to_string();
            let back = decode(&encode(&Outcome::of(Err(e), None)).unwrap()).unwrap_err();
            assert_eq!(crate::error::storage_status(&back), status);
            assert_eq!(back.to_string(), text);
        }
        assert_eq!(
            decode(&encode(&Outcome::of(Ok(7), None)).unwrap()).unwrap(),
            (7, None)
        );
        assert!(decode(b"\xc1").is_err());
    }
}
