//! The shared stream of events (docs/scale-out.md, "Events and webhooks"): alarm status changes
//! and device connection events, each published once by the node that made it, with its
//! deterministic event id as `Nats-Msg-Id`, and applied by every node into its own registry in
//! the stream's order. So every node has the same alarm statuses, history and outbox (numbered
//! by the stream's sequence), and a monitor's events can be delivered by any one node.
//!
//! One stream, `MS_EVENTS`, on one subject: events are rare (transitions, not points), and one
//! order for all of them is what makes every node's outbox the same.

use crate::log::DirectReader;
use crate::{ClusterError, Result};
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// The stream's name.
pub const STREAM: &str = "MS_EVENTS";
/// Its one subject.
pub const SUBJECT: &str = "ms.events";

/// The event stream on one JetStream context.
pub struct EventLog {
    js: jetstream::Context,
}

impl EventLog {
    /// Opens (creating when missing) the stream, with `replicas` replicas, keeping events
    /// `max_age` (zero: for ever) and recognizing a repeated event id for `duplicate_window`.
    pub async fn open(
        client: async_nats::Client,
        replicas: usize,
        max_age: Duration,
        duplicate_window: Duration,
    ) -> Result<EventLog> {
        let js = jetstream::new(client);
        js.get_or_create_stream(crate::log::direct_stream(
            STREAM.into(),
            vec![SUBJECT.into()],
            replicas,
            max_age,
            duplicate_window,
        ))
        .await
        .map_err(|e| ClusterError::nats("creating the event stream", e))?;
        Ok(EventLog { js })
    }

    /// Publishes events under their ids, in order, pipelined (`log::publish_windowed`); for
    /// each, its sequence and whether JetStream already had that id (then the sequence is the
    /// first one's).
    pub async fn publish_all(
        &self,
        events: Vec<(String, bytes::Bytes)>,
    ) -> Result<Vec<(u64, bool)>> {
        let messages = events
            .into_iter()
            .map(|(id, body)| (SUBJECT.to_string(), Some(id), body))
            .collect();
        let acks = crate::log::publish_windowed(&self.js, messages, "publishing an event").await?;
        Ok(acks.iter().map(|a| (a.sequence, a.duplicate)).collect())
    }

    /// The sequence of the last event, 0 when there is none.
    pub async fn last_sequence(&self) -> Result<u64> {
        let stream = self
            .js
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| ClusterError::nats("opening the event stream", e))?;
        match stream.get_last_raw_message_by_subject(SUBJECT).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(ClusterError::nats("reading the last event's sequence", e)),
        }
    }

    /// The events from sequence `from` on, in order, by direct gets.
    pub async fn read_from(&self, from: u64) -> Result<DirectReader> {
        let stream = self
            .js
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| ClusterError::nats("opening the event stream", e))?;
        Ok(DirectReader::new(stream, SUBJECT.into(), from))
    }
}
