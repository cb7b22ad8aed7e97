//! Questions a node puts to the holder of a partition (such as "what type does each of these
//! streams have?"), over core NATS request-reply. Nothing is stored: a question that gets no
//! answer (the partition is moving, the holder is gone) is the caller's to handle.
//!
//! A question is the partition (4 bytes, big-endian) and then the body; it is sent to
//! `ms.ask.<kind>.<holder's node id>`. An answer is one status byte and then the body:
//! [`OK`] and the answer, [`NOT_HELD`] when the node does not hold the partition (applied up to
//! date) any more, [`FAILED`] and a message.

use std::sync::Arc;

/// Answers questions of one kind: (partition, body) → answer. Blocking (it runs on a blocking
/// thread), called only while the node holds the partition and has applied its log.
pub type Answer =
    Arc<dyn Fn(u32, &[u8]) -> std::result::Result<Vec<u8>, String> + Send + Sync + 'static>;

/// The answer's status: answered.
pub const OK: u8 = 0;
/// The answer's status: this node does not hold the partition.
pub const NOT_HELD: u8 = 1;
/// The answer's status: the question could not be answered; a message follows.
pub const FAILED: u8 = 2;

/// Why a question got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// No node holds the partition now, or the one asked no longer does, or it did not answer
    /// in time: ask again later.
    #[error("partition {partition} has no holder that answers now ({why})")]
    Unavailable {
        /// The partition.
        partition: u32,
        /// What happened.
        why: String,
    },
    /// The holder could not answer.
    #[error("the holder of partition {partition} could not answer: {message}")]
    Failed {
        /// The partition.
        partition: u32,
        /// Its message.
        message: String,
    },
}

/// The subject `node` answers questions of `kind` on.
pub fn subject(kind: &str, node: &str) -> String {
    format!("ms.ask.{kind}.{node}")
}

/// A question about `partition`.
pub fn question(partition: u32, body: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(4 + body.len());
    q.extend_from_slice(&partition.to_be_bytes());
    q.extend_from_slice(body);
    q
}

/// The partition and body of a question; `None` when it is too short.
pub fn parse_question(q: &[u8]) -> Option<(u32, &[u8])> {
    let p = u32::from_be_bytes(q.get(..4)?.try_into().ok()?);
    Some((p, &q[4..]))
}

/// An answer with `status` and `body`.
pub fn answer(status: u8, body: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(1 + body.len());
    a.push(status);
    a.extend_from_slice(body);
    a
}

/// What an answer to a question about `partition` says.
pub fn parse_answer(partition: u32, a: &[u8]) -> std::result::Result<Vec<u8>, AskError> {
    match a.split_first() {
        Some((&OK, body)) => Ok(body.to_vec()),
        Some((&NOT_HELD, _)) => Err(AskError::Unavailable {
            partition,
            why: "the node asked no longer holds it".into(),
        }),
        Some((&FAILED, m)) => Err(AskError::Failed {
            partition,
            message: String::from_utf8_lossy(m).into_owned(),
        }),
        _ => Err(AskError::Failed {
            partition,
            message: "an answer the node could not read".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_and_answers_round_trip() {
        let q = question(77, b"abc");
        assert_eq!(parse_question(&q), Some((77, &b"abc"[..])));
        assert_eq!(parse_question(&[0, 1]), None);
        assert_eq!(parse_answer(3, &answer(OK, b"x")), Ok(b"x".to_vec()));
        assert!(matches!(
            parse_answer(3, &answer(NOT_HELD, b"")),
            Err(AskError::Unavailable { partition: 3, .. })
        ));
        assert_eq!(
            parse_answer(3, &answer(FAILED, b"boom")),
            Err(AskError::Failed {
                partition: 3,
                message: "boom".into()
            })
        );
        assert!(parse_answer(3, &[]).is_err());
    }
}
