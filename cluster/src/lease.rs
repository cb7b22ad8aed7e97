//! Partition leases in a replicated KV bucket (docs/scale-out.md, "Ownership").
//!
//! A lease is the key `p<partition>` holding the owner's node id. The bucket's `max_age` is
//! the lease's time to live: nats-server 2.9 has no per-message TTL (it ignores one), so a
//! lease lives `ttl` from its last write and an owner renews it well before. Taking a lease is
//! a create (no live key) and renewing it a compare-and-set on the revision the owner holds,
//! so of two nodes racing for a partition one wins, and an owner that paused past its TTL
//! learns that it lost the lease at its next renewal.
//!
//! async-nats 0.51 cannot create a KV bucket on a 2.9 server, so the bucket's stream
//! `KV_<bucket>` is created here with the settings a KV bucket has, then opened as a bucket.

use crate::{ClusterError, Result};
use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// The oldest nats-server this design supports (Debian's 2.9).
pub const MIN_SERVER: &str = "2.9.0";

/// A held lease: the partition and the revision of the owner's last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The partition.
    pub partition: u32,
    /// The KV revision the owner wrote; a renewal must find it unchanged.
    pub revision: u64,
}

/// One node's view of the lease bucket.
pub struct Leases {
    kv: kv::Store,
    node: String,
}

/// Whether `version` ("2.9.10") is at least `min` ("2.9.0").
fn at_least(version: &str, min: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> {
        v.split(['.', '-'])
            .take(3)
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parts(version) >= parts(min)
}

fn key(partition: u32) -> String {
    format!("p{partition}")
}

/// Opens the KV bucket `bucket` whose entries live `ttl` from their last write, creating its
/// stream `KV_<bucket>` by hand when missing (the settings a KV bucket has; see the module doc).
pub(crate) async fn open_bucket(
    js: jetstream::Context,
    bucket: &str,
    replicas: usize,
    ttl: Duration,
) -> Result<kv::Store> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        // The duplicate window may not be longer than max_age.
        duplicate_window: ttl.min(Duration::from_secs(120)),
        num_replicas: replicas,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::nats("creating a KV bucket's stream", e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| ClusterError::nats("opening a KV bucket", e))
}

impl Leases {
    /// Opens the bucket `bucket` (creating its stream with `replicas` and `ttl` when missing)
    /// as node `node`. Refuses a server older than [`MIN_SERVER`].
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
        ttl: Duration,
        node: &str,
    ) -> Result<Leases> {
        let version = client.server_info().version;
        if !at_least(&version, MIN_SERVER) {
            return Err(ClusterError::ServerVersion {
                found: version,
                need: MIN_SERVER,
            });
        }
        let kv = open_bucket(jetstream::new(client), bucket, replicas, ttl).await?;
        Ok(Leases {
            kv,
            node: node.to_string(),
        })
    }

    /// Takes `partition` if no live lease holds it: `None` when another node holds it. A live
    /// lease that already names this node (left by its previous run, or a write whose
    /// acknowledgement was lost) is taken over at its revision.
    pub async fn claim(&self, partition: u32) -> Result<Option<Lease>> {
        match self.claim_free(partition).await? {
            Some(l) => Ok(Some(l)),
            None => self.adopt(partition).await,
        }
    }

    /// The lease of `partition` at its current revision if it names this node, renewed by a
    /// compare-and-set on that revision.
    async fn adopt(&self, partition: u32) -> Result<Option<Lease>> {
        let entry = self
            .kv
            .entry(key(partition))
            .await
            .map_err(|e| ClusterError::nats("reading a lease", e))?;
        match entry {
            Some(e)
                if e.operation == kv::Operation::Put
                    && e.value.as_ref() == self.node.as_bytes() =>
            {
                self.write_at(partition, e.revision).await
            }
            _ => Ok(None),
        }
    }

    /// Writes the lease of `partition` for this node if its revision is still `revision`:
    /// `None` when it is not.
    async fn write_at(&self, partition: u32, revision: u64) -> Result<Option<Lease>> {
        match self
            .kv
            .update(key(partition), self.node.clone().into(), revision)
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                partition,
                revision,
            })),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(ClusterError::nats("renewing a lease", e)),
        }
    }

    /// Renews a held lease: `None` when it was lost (expired and taken, or rewritten).
    pub async fn renew(&self, lease: Lease) -> Result<Option<Lease>> {
        if let Some(l) = self.write_at(lease.partition, lease.revision).await? {
            return Ok(Some(l));
        }
        // A renewal whose acknowledgement was lost (a NATS server failing over) moved the
        // revision on with this node's own id: still ours. Another node's id: lost. No key at
        // all (it lapsed and nobody took it): taken again if still free.
        match self.adopt(lease.partition).await? {
            Some(l) => Ok(Some(l)),
            None => self.claim_free(lease.partition).await,
        }
    }

    async fn claim_free(&self, partition: u32) -> Result<Option<Lease>> {
        match self
            .kv
            .create(key(partition), self.node.clone().into())
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                partition,
                revision,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(ClusterError::nats("claiming a lease", e)),
        }
    }

    /// Gives a held lease up at once (instead of letting it lapse), so another node can take
    /// the partition at its next round. A lease already lost is not an error.
    pub async fn release(&self, lease: Lease) -> Result<()> {
        match self
            .kv
            .delete_expect_revision(key(lease.partition), Some(lease.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(ClusterError::nats("releasing a lease", e)),
        }
    }

    /// The holder of every partition below `partitions` (`None` where no live lease is),
    /// read concurrently.
    pub async fn owners(&self, partitions: u32) -> Result<Vec<Option<String>>> {
        let reads = (0..partitions).map(|p| self.owner(p));
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .collect()
    }

    /// The node holding `partition`, if any.
    pub async fn owner(&self, partition: u32) -> Result<Option<String>> {
        let v = self
            .kv
            .get(key(partition))
            .await
            .map_err(|e| ClusterError::nats("reading a lease", e))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare_by_number() {
        assert!(super::at_least("2.9.10", "2.9.0"));
        assert!(super::at_least("2.10.1", "2.9.0"));
        assert!(!super::at_least("2.8.4", "2.9.0"));
        assert!(super::at_least("2.9.0-beta.1", "2.9.0"));
    }
}
