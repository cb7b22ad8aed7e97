//! The replicated log of data points (docs/scale-out.md, "Partitions" and "Ingest").
//!
//! Partition `p` is the subject `ms.points.<p>`, held by the JetStream stream
//! `MS_POINTS_<p mod S>`: several streams rather than one, because a stream is one raft group
//! with one leader, and `S` streams spread the leaders over the NATS nodes. A batch part is
//! published with the header `Nats-Msg-Id` (the gateway's batch id and the partition), so a
//! retried batch inside the streams' duplicate window is stored once.
//!
//! A partition's owner reads it through the durable pull consumer `p<p>` with the single
//! `filter_subject` of that partition (2.9 ignores the newer `filter_subjects` and would
//! deliver every partition of the stream), acknowledging each message explicitly once applied,
//! so a new owner resumes after the last acknowledged one.

use crate::{ClusterError, Result};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
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
            js.get_or_create_stream(stream::Config {
                name: format!("MS_POINTS_{k}"),
                subjects: (k..partitions)
                    .step_by(streams as usize)
                    .map(subject)
                    .collect(),
                num_replicas: replicas,
                storage: stream::StorageType::File,
                max_age,
                duplicate_window: duplicate_window.min(max_age),
                ..Default::default()
            })
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

    /// The durable consumer of `partition`, created when missing.
    pub async fn consumer(&self, partition: u32) -> Result<PartitionReader> {
        let stream = self
            .js
            .get_stream(self.stream_of(partition))
            .await
            .map_err(|e| ClusterError::nats("opening a point log stream", e))?;
        let name = format!("p{partition}");
        let consumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subject(partition),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ClusterError::nats("creating a partition's consumer", e))?;
        Ok(PartitionReader { consumer })
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

    /// `partition`'s messages from sequence `from` on, in log order, through an ordered
    /// consumer: no acknowledgements, and the client recreates it after a gap or a lost server,
    /// so the reader, not JetStream, keeps the position (docs/scale-out.md, "Applying").
    pub async fn read_from(&self, partition: u32, from: u64) -> Result<OrderedReader> {
        let stream = self
            .js
            .get_stream_no_info(self.stream_of(partition))
            .await
            .map_err(|e| ClusterError::nats("opening a point log stream", e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject(partition),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::nats("creating a partition's reader", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ClusterError::nats("reading a partition", e))?;
        Ok(OrderedReader { messages })
    }
}

/// A partition's messages from a position on, in log order.
pub struct OrderedReader {
    messages: consumer::pull::Ordered,
}

impl OrderedReader {
    /// The next message as (sequence, body), waiting at most `wait`: `None` when none came.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<(u64, bytes::Bytes)>> {
        let m = match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) | Ok(None) => return Ok(None),
            Ok(Some(m)) => m.map_err(|e| ClusterError::nats("reading a partition", e))?,
        };
        let sequence = m
            .info()
            .map_err(|e| ClusterError::nats("reading a message's sequence", e))?
            .stream_sequence;
        Ok(Some((sequence, m.message.payload)))
    }
}

/// One partition's messages in log order.
pub struct PartitionReader {
    consumer: consumer::Consumer<consumer::pull::Config>,
}

/// A message read from a partition; acknowledge it once it is applied.
pub struct Entry {
    /// Its sequence number in the partition's stream.
    pub sequence: u64,
    /// The batch part as published.
    pub body: bytes::Bytes,
    message: jetstream::Message,
}

impl Entry {
    /// Tells JetStream the entry is applied: it is not delivered to this consumer again.
    pub async fn ack(&self) -> Result<()> {
        self.message
            .ack()
            .await
            .map_err(|e| ClusterError::nats("acknowledging a partition's message", e))
    }
}

impl PartitionReader {
    /// Up to `max` entries not yet acknowledged, in log order, waiting at most `wait` for any.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Entry>> {
        let mut messages = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| ClusterError::nats("fetching a partition's messages", e))?;
        let mut out = Vec::new();
        while let Some(m) = messages.next().await {
            let message = m.map_err(|e| ClusterError::nats("reading a partition's message", e))?;
            let sequence = message
                .info()
                .map_err(|e| ClusterError::nats("reading a message's sequence", e))?
                .stream_sequence;
            out.push(Entry {
                sequence,
                body: message.payload.clone(),
                message,
            });
        }
        Ok(out)
    }
}
