//! The registries every node shares (docs/scale-out.md, "Registries"): credentials, alert
//! rules and monitors, kept in the replicated KV bucket `MS_REGISTRY` and watched by every node
//! into its own registry.
//!
//! A value is the object's JSON; an empty value is a deletion (a put, unlike a KV delete, gives
//! the writer a revision to wait for). A writer publishes, then waits until its own watcher has
//! applied that revision, so what it answers is already in its registry.

use crate::{ClusterError, Result};
use async_nats::jetstream::{self, kv};
use std::time::Duration;

/// The bucket.
pub struct SharedRegistry {
    kv: kv::Store,
    js: jetstream::Context,
    stream: String,
    prefix: String,
}

/// A change seen by the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key (`<kind>.<hex of the id>`).
    pub key: String,
    /// The object's JSON; empty for a deletion.
    pub value: bytes::Bytes,
    /// Its revision.
    pub revision: u64,
}

/// The key of object `id` of `kind`: ids may hold characters a KV key may not, so they are
/// written in hex.
pub fn key(kind: &str, id: &str) -> String {
    let mut k = String::with_capacity(kind.len() + 1 + 2 * id.len());
    k.push_str(kind);
    k.push('.');
    for b in id.bytes() {
        k.push_str(&format!("{b:02x}"));
    }
    k
}

/// The (kind, id) of a key made by [`key`].
pub fn parse_key(key: &str) -> Option<(&str, String)> {
    let (kind, hex) = key.split_once('.')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some((kind, String::from_utf8(bytes?).ok()?))
}

impl SharedRegistry {
    /// Opens (creating when missing) the bucket `bucket` with `replicas` replicas.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
    ) -> Result<SharedRegistry> {
        let js = jetstream::new(client);
        let kv = crate::lease::open_bucket(js.clone(), bucket, replicas, Duration::ZERO).await?;
        Ok(SharedRegistry {
            kv,
            js,
            stream: format!("KV_{bucket}"),
            prefix: format!("$KV.{bucket}."),
        })
    }

    /// Writes `value` (empty: deletes) under `key`; returns its revision.
    pub async fn put(&self, key: &str, value: bytes::Bytes) -> Result<u64> {
        self.kv
            .put(key, value)
            .await
            .map_err(|e| ClusterError::nats("writing the shared registry", e))
    }

    /// The revision of the bucket's last change (0: none).
    pub async fn last_revision(&self) -> Result<u64> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| ClusterError::nats("reading the shared registry's state", e))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Calls `apply` with every change after revision `after` (from 0: every key's latest
    /// value, the bucket keeping one per key), in order, then with each change as it comes,
    /// until reading fails; returns the last revision applied. Read by direct gets, like the
    /// point log, so no consumer is created (see `log::PointLog::read_from`).
    pub async fn watch(&self, after: u64, apply: &(dyn Fn(Change) + Send + Sync)) -> Result<u64> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| ClusterError::nats("opening the shared registry", e))?;
        let all = format!("{}>", self.prefix);
        let mut last = after;
        let mut idle = Duration::from_millis(5);
        loop {
            let got = tokio::time::timeout(
                Duration::from_secs(2),
                stream.direct_get_next_for_subject(all.clone(), Some(last + 1)),
            )
            .await;
            let Ok(got) = got else {
                // No replica answered in time (one not yet told of the stream, or leaders
                // being elected): asked again.
                tokio::time::sleep(idle).await;
                continue;
            };
            match got {
                Ok(m) => {
                    idle = Duration::from_millis(5);
                    let deleted = m
                        .headers
                        .get("KV-Operation")
                        .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"));
                    let key = m.subject.strip_prefix(&self.prefix).unwrap_or_default();
                    apply(Change {
                        key: key.to_string(),
                        value: if deleted {
                            bytes::Bytes::new()
                        } else {
                            m.payload
                        },
                        revision: m.sequence,
                    });
                    last = m.sequence;
                }
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                    tokio::time::sleep(idle).await;
                    idle = (idle * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the shared registry failed");
                    return Ok(last);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_round_trip_any_id() {
        for id in ["ana", "ana@example.com", "x y/z", "ü"] {
            let k = super::key("cred", id);
            assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
            assert_eq!(super::parse_key(&k), Some(("cred", id.to_string())));
        }
        assert_eq!(super::parse_key("cred.6"), None);
    }
}
