//! The replicated log of data points (docs/scale-out.md, "Partitions" and "Ingest").
//!
//! Partition `p` is the subject `ms.points.<p>`, held by the JetStream stream
//! `MS_POINTS_<p mod S>`: several streams rather than one, because a stream is one raft group
//! with one leader, and `S` streams spread the leaders over the NATS nodes. A batch part is
//! published with the header `Nats-Msg-Id` (the gateway's batch id and the partition), so a
//! retried batch inside the streams' duplicate window is stored once.
//!
//! A partition's holder reads it by direct gets of the partition's subject from its own
//! position ([`PointLog::read_from`]); no consumer is created, so `filter_subjects` (which 2.9
//! ignores, delivering every partition of the stream) is never needed.

use crate::{ClusterError, Result};
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// The log's streams on one JetStream context.
pub struct PointLog {
    js: jetstream::Context,
    streams: u32,
}

/// Where an acknowledged part went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The stream holding it.
    pub stream: String,
    /// Its sequence number in that stream.
    pub sequence: u64,
    /// Whether JetStream already had this message id (a retried part).
    pub duplicate: bool,
}

/// The subject of partition `p`.
pub fn subject(partition: u32) -> String {
    format!("ms.points.{partition}")
}

/// A file-backed stream on `subjects` with `replicas` replicas, keeping messages `max_age` (zero:
/// for ever) and recognizing a repeated message id for `duplicate_window` (at most `max_age`),
/// read by direct gets, which any replica answers.
pub(crate) fn direct_stream(
    name: String,
    subjects: Vec<String>,
    replicas: usize,
    max_age: Duration,
    duplicate_window: Duration,
) -> stream::Config {
    stream::Config {
        name,
        subjects,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        max_age,
        duplicate_window: if max_age.is_zero() {
            duplicate_window
        } else {
            duplicate_window.min(max_age)
        },
        allow_direct: true,
        ..Default::default()
    }
}

/// Messages published before their acknowledgements are awaited. The client bounds the
/// acknowledgements outstanding and waits for room while publishing, so sending every message
/// of a long run before awaiting any deadlocks (seen with 9,000 snapshot pieces).
const PUBLISH_AHEAD: usize = 256;

/// Publishes `(subject, message id, body)` in order, [`PUBLISH_AHEAD`] at a time before their
/// acknowledgements are awaited (one connection keeps their order); each one's
/// acknowledgement. `what` names the messages in errors.
pub(crate) async fn publish_windowed(
    js: &jetstream::Context,
    messages: Vec<(String, Option<String>, bytes::Bytes)>,
    what: &'static str,
) -> Result<Vec<jetstream::publish::PublishAck>> {
    let mut out = Vec::with_capacity(messages.len());
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let mut acks = Vec::with_capacity(PUBLISH_AHEAD);
        for (subject, id, body) in messages.by_ref().take(PUBLISH_AHEAD) {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(id) = &id {
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            acks.push(
                js.publish_with_headers(subject, headers, body)
                    .await
                    .map_err(|e| ClusterError::nats(what, e))?,
            );
        }
        for a in acks {
            out.push(a.await.map_err(|e| ClusterError::nats(what, e))?);
        }
    }
    Ok(out)
}

impl PointLog {
    /// Opens (creating when missing) the `streams` streams of `partitions` partitions, each with
    /// `replicas` replicas, keeping messages `max_age` and recognizing a repeated message id for
    /// `duplicate_window`.
    pub async fn open(
        client: async_nats::Client,
        partitions: u32,
        streams: u32,
        replicas: usize,
        max_age: Duration,
        duplicate_window: Duration,
    ) -> Result<PointLog> {
        let streams = streams.clamp(1, partitions.max(1));
        let js = jetstream::new(client);
        for k in 0..streams {
            let subjects = (k..partitions)
                .step_by(streams as usize)
                .map(subject)
                .collect();
            js.get_or_create_stream(direct_stream(
                format!("MS_POINTS_{k}"),
                subjects,
                replicas,
                max_age,
                duplicate_window,
            ))
            .await
            .map_err(|e| ClusterError::nats("creating a point log stream", e))?;
        }
        Ok(PointLog { js, streams })
    }

    /// The stream holding partition `p`.
    pub fn stream_of(&self, partition: u32) -> String {
        format!("MS_POINTS_{}", partition % self.streams)
    }

    /// Publishes one batch part and waits for JetStream's acknowledgement.
    pub async fn publish(
        &self,
        partition: u32,
        msg_id: &str,
        body: bytes::Bytes,
    ) -> Result<Placed> {
        self.publish_part(partition, Some(msg_id), body).await
    }

    /// Publishes one batch part, with the message id `msg_id` when given (a retry of it inside
    /// the duplicate window is then stored once), and waits for JetStream's acknowledgement.
    pub async fn publish_part(
        &self,
        partition: u32,
        msg_id: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<Placed> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert("Nats-Msg-Id", id);
        }
        let ack = self
            .js
            .publish_with_headers(subject(partition), headers, body)
            .await
            .map_err(|e| ClusterError::nats("publishing a batch part", e))?
            .await
            .map_err(|e| ClusterError::nats("awaiting a batch part's acknowledgement", e))?;
        Ok(Placed {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

impl PointLog {
    /// The sequence of the last message of `partition`, 0 when it has none.
    pub async fn last_sequence(&self, partition: u32) -> Result<u64> {
        let stream = self
            .js
            .get_stream_no_info(self.stream_of(partition))
            .await
            .map_err(|e| ClusterError::nats("opening a point log stream", e))?;
        match stream
            .get_last_raw_message_by_subject(&subject(partition))
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(ClusterError::nats("reading a partition's last sequence", e)),
        }
    }

    /// The first sequence the stream holding `partition` still has (messages before it were
    /// removed by its age limit); 0 when it is empty and never had a message.
    pub async fn first_sequence(&self, partition: u32) -> Result<u64> {
        let stream = self
            .js
            .get_stream(self.stream_of(partition))
            .await
            .map_err(|e| ClusterError::nats("reading a point log stream's state", e))?;
        Ok(stream.cached_info().state.first_sequence)
    }

    /// `partition`'s messages from sequence `from` on, in log order, read by direct gets
    /// ("the next message of this subject from this sequence"), which any replica answers:
    /// no consumer is created, so reading goes on while JetStream elects leaders after a
    /// server's loss (consumer creation then timed out for a minute and more, in the test).
    /// The reader, not JetStream, keeps the position (docs/scale-out.md, "Applying").
    pub async fn read_from(&self, partition: u32, from: u64) -> Result<DirectReader> {
        let stream = self
            .js
            .get_stream_no_info(self.stream_of(partition))
            .await
            .map_err(|e| ClusterError::nats("opening a point log stream", e))?;
        Ok(DirectReader::new(stream, subject(partition), from))
    }
}

/// The first pause of a reader that found nothing new; it doubles up to [`IDLE_MAX`].
const IDLE_MIN: Duration = Duration::from_millis(5);
/// The longest pause of an idle reader: what a write waits, at most, to be applied.
const IDLE_MAX: Duration = Duration::from_millis(100);

/// A partition's messages from a position on, in log order.
pub struct DirectReader {
    stream: stream::Stream<()>,
    subject: String,
    next: u64,
    idle: Duration,
}

impl DirectReader {
    /// Reads `subject` of `stream` from sequence `from` on.
    pub(crate) fn new(stream: stream::Stream<()>, subject: String, from: u64) -> DirectReader {
        DirectReader {
            stream,
            subject,
            next: from.max(1),
            idle: IDLE_MIN,
        }
    }

    /// The next message as (sequence, body): `None` when there is none yet, after a pause of at
    /// most `wait` (none when `wait` is zero).
    pub async fn next(&mut self, wait: Duration) -> Result<Option<(u64, bytes::Bytes)>> {
        let got = tokio::time::timeout(
            Duration::from_secs(2),
            self.stream
                .direct_get_next_for_subject(self.subject.clone(), Some(self.next)),
        )
        .await
        .map_err(|_| ClusterError::nats("reading a partition", "no replica answered in 2 s"))?;
        match got {
            Ok(m) => {
                self.next = m.sequence + 1;
                self.idle = IDLE_MIN;
                Ok(Some((m.sequence, m.payload)))
            }
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {
                let pause = self.idle.min(wait);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                    self.idle = (self.idle * 2).min(IDLE_MAX);
                }
                Ok(None)
            }
            Err(e) => Err(ClusterError::nats("reading a partition", e)),
        }
    }
}
