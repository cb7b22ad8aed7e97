//! The live nodes of a cluster (docs/scale-out.md, "Ownership"): each node keeps the key of its
//! id in the KV bucket `MS_NODES` (whose entries live one lease TTL from their last write) with
//! the base URL its peers reach it at. A node that stops writing it drops out within the TTL.

use crate::{ClusterError, Result};
use async_nats::jetstream;
use futures_util::StreamExt;
use std::time::Duration;

/// One node's view of the membership bucket.
pub struct Members {
    kv: jetstream::kv::Store,
    stream: jetstream::stream::Stream<()>,
    prefix: String,
}

/// A live node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id (`cluster.node_id`).
    pub id: String,
    /// Its HTTP base URL, as its peers reach it.
    pub url: String,
}

impl Members {
    /// Opens (creating when missing) the bucket `bucket` with `replicas` replicas, whose
    /// entries lapse `ttl` after their last write.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
        ttl: Duration,
    ) -> Result<Members> {
        let js = jetstream::new(client);
        let kv = crate::lease::open_bucket(js.clone(), bucket, replicas, ttl).await?;
        let stream = js
            .get_stream_no_info(format!("KV_{bucket}"))
            .await
            .map_err(|e| ClusterError::nats("opening the node bucket's stream", e))?;
        Ok(Members {
            kv,
            stream,
            prefix: format!("$KV.{bucket}."),
        })
    }

    /// Says that node `id` is alive at `url` (for one TTL).
    pub async fn announce(&self, id: &str, url: &str) -> Result<()> {
        self.kv
            .put(id, url.to_string().into())
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::nats("announcing this node", e))
    }

    /// The live nodes, by id. The keys come from the stream's subjects (one request, where
    /// listing the bucket's keys would create a consumer on a replicated stream each time, which
    /// a cluster electing leaders answers slowly), the values from direct gets.
    pub async fn list(&self) -> Result<Vec<Member>> {
        let mut subjects = self
            .stream
            .info_with_subjects(format!("{}>", self.prefix))
            .await
            .map_err(|e| ClusterError::nats("listing the nodes", e))?;
        let mut ids = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(|e| ClusterError::nats("listing the nodes", e))?;
            if let Some(id) = subject.strip_prefix(&self.prefix) {
                ids.push(id.to_string());
            }
        }
        let mut out = Vec::new();
        for id in ids {
            let url = self
                .kv
                .get(&id)
                .await
                .map_err(|e| ClusterError::nats("reading a node", e))?;
            if let Some(url) = url {
                out.push(Member {
                    id,
                    url: String::from_utf8_lossy(&url).into_owned(),
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
