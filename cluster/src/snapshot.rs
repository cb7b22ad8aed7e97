//! Partition snapshots in JetStream (docs/scale-out.md, "Snapshots").
//!
//! Pieces and manifest pages are messages of the stream `MS_SNAP`, partition `p` on the subject
//! `ms.snap.<p>`; pieces are packed together into messages of up to [`PACK_BYTES`], a manifest
//! entry naming its piece's message, offset and length. The root of partition `p`'s snapshot is the key `p<p>` of the KV bucket
//! `MS_SNAPS` (created by hand, as every bucket here): [`Root`], MessagePack. A root names the
//! pages of its manifest; a page lists pieces ([`Entry`]: key, message sequence, hash). A new
//! root is written by compare-and-set on the revision its round read, so a node that lost the
//! partition meanwhile cannot replace the current holder's root.

use crate::{ClusterError, Result};
use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The stream of pieces and pages.
pub const STREAM: &str = "MS_SNAP";
/// The bucket of roots.
pub const BUCKET: &str = "MS_SNAPS";
/// The size a message of packed pieces is filled to (a piece larger than it has a message of
/// its own).
pub const PACK_BYTES: usize = 256 << 10;
/// Most entries in one manifest page (~80 bytes each: pages stay well under 1 MB).
const PAGE_ENTRIES: usize = 4_000;
/// Pieces fetched at once while restoring.
const FETCH_AHEAD: usize = 32;

/// What a piece is, for the server that made it: kinds and names are the server's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PieceKey {
    /// What the piece belongs to (a stream path, a device id). Pieces of one name are restored
    /// together.
    pub name: String,
    /// Its kind.
    pub kind: u8,
    /// Its place among its name's pieces of that kind (a chunk's first timestamp).
    pub ts: i64,
}

/// One piece as the server hands it over.
#[derive(Debug, Clone)]
pub struct Piece {
    /// What it is.
    pub key: PieceKey,
    /// Where the server holds it (empty: unknown). The same non-empty version means the same
    /// bytes, so a piece the node has by that version is handed over without them.
    pub version: Vec<u8>,
    /// Its bytes, unless the node said it has this version.
    pub bytes: Option<bytes::Bytes>,
}

/// One piece of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// What it is.
    pub key: PieceKey,
    /// The message in [`STREAM`] holding it.
    pub seq: u64,
    /// Where in that message it starts.
    pub offset: u32,
    /// Its length in bytes.
    pub len: u32,
    /// How many pieces that message was published with (for repacking it when most are gone).
    pub packed: u32,
    /// The first 16 bytes of the SHA-256 of its bytes.
    pub hash: [u8; 16],
}

/// The root of a partition's snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// The partition's log position the snapshot covers: applying the log after it over the
    /// pieces gives the partition's state.
    pub covers: u64,
    /// When it was taken, Unix ms.
    pub taken: i64,
    /// The node that took it.
    pub node: String,
    /// The messages of its manifest's pages, in order.
    pub pages: Vec<u64>,
    /// How many pieces it has.
    pub pieces: u64,
    /// Their bytes (without the manifest).
    pub bytes: u64,
}

/// A piece's hash.
pub fn hash(bytes: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    let mut h = [0u8; 16];
    h.copy_from_slice(&d[..16]);
    h
}

async fn direct_get(stream: stream::Stream<()>, seq: u64) -> Result<bytes::Bytes> {
    let m = tokio::time::timeout(Duration::from_secs(5), stream.direct_get(seq))
        .await
        .map_err(|_| ClusterError::nats("reading a snapshot piece", "no answer in 5 s"))?
        .map_err(|e| ClusterError::nats("reading a snapshot piece", e))?;
    Ok(m.payload)
}

fn subject(partition: u32) -> String {
    format!("ms.snap.{partition}")
}

fn key(partition: u32) -> String {
    format!("p{partition}")
}

/// The snapshots on one JetStream context.
pub struct Snapshots {
    js: jetstream::Context,
    roots: kv::Store,
}

impl Snapshots {
    /// Opens (creating when missing) the stream and the bucket, with `replicas` replicas.
    pub async fn open(client: async_nats::Client, replicas: usize) -> Result<Snapshots> {
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["ms.snap.>".into()],
            num_replicas: replicas,
            storage: stream::StorageType::File,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::nats("creating the snapshot stream", e))?;
        let roots = crate::lease::open_bucket(js.clone(), BUCKET, replicas, Duration::ZERO).await?;
        Ok(Snapshots { js, roots })
    }

    async fn stream(&self) -> Result<stream::Stream<()>> {
        self.js
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| ClusterError::nats("opening the snapshot stream", e))
    }

    /// The partition's root and its revision, `None` if it never had one.
    pub async fn root(&self, partition: u32) -> Result<Option<(Root, u64)>> {
        let e = self
            .roots
            .entry(key(partition))
            .await
            .map_err(|e| ClusterError::nats("reading a snapshot root", e))?;
        match e {
            Some(e) if e.operation == kv::Operation::Put => {
                let root = rmp_serde::from_slice(&e.value)
                    .map_err(|e| ClusterError::nats("reading a snapshot root", e))?;
                Ok(Some((root, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// The manifest a root names, in key order.
    pub async fn manifest(&self, root: &Root) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(root.pieces as usize);
        for seq in &root.pages {
            let page: Vec<Entry> = rmp_serde::from_slice(&self.get(*seq).await?)
                .map_err(|e| ClusterError::nats("reading a manifest page", e))?;
            out.extend(page);
        }
        Ok(out)
    }

    /// The message `seq` of the snapshot stream, by a direct get any replica answers.
    pub async fn get(&self, seq: u64) -> Result<bytes::Bytes> {
        direct_get(self.stream().await?, seq).await
    }

    /// The bytes of `entries`, in their order: each message they are packed in is fetched
    /// once, [`FETCH_AHEAD`] at a time, and each piece is checked against its hash.
    pub async fn fetch(&self, entries: &[Entry]) -> Result<Vec<bytes::Bytes>> {
        let stream = self.stream().await?;
        let mut seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let gets: Vec<_> = seqs
            .iter()
            .map(|s| direct_get(stream.clone(), *s))
            .collect();
        let messages: Vec<bytes::Bytes> = futures_util::stream::iter(gets)
            .buffered(FETCH_AHEAD)
            .collect::<Vec<Result<bytes::Bytes>>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        entries
            .iter()
            .map(|e| {
                let m = &messages[seqs.binary_search(&e.seq).unwrap_or_default()];
                let (a, b) = (e.offset as usize, e.offset as usize + e.len as usize);
                let piece = m.get(a..b).map(|_| m.slice(a..b));
                match piece {
                    Some(p) if hash(&p) == e.hash => Ok(p),
                    _ => Err(ClusterError::nats(
                        "reading a snapshot piece",
                        format!("piece {:?} does not match its hash", e.key),
                    )),
                }
            })
            .collect()
    }

    /// Publishes `pieces` (key, bytes, hash) packed into messages of up to [`PACK_BYTES`];
    /// their manifest entries, in the same order.
    pub async fn publish_packed(
        &self,
        partition: u32,
        pieces: Vec<(PieceKey, bytes::Bytes, [u8; 16])>,
    ) -> Result<Vec<Entry>> {
        // Messages as ranges of `pieces`.
        let mut packs: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut from, mut size) = (0, 0);
        for (i, (_, b, _)) in pieces.iter().enumerate() {
            if i > from && size + b.len() > PACK_BYTES {
                packs.push(from..i);
                (from, size) = (i, 0);
            }
            size += b.len();
        }
        if from < pieces.len() {
            packs.push(from..pieces.len());
        }
        let bodies = packs
            .iter()
            .map(|r| {
                let mut m = bytes::BytesMut::with_capacity(
                    pieces[r.clone()].iter().map(|p| p.1.len()).sum(),
                );
                for (_, b, _) in &pieces[r.clone()] {
                    m.extend_from_slice(b);
                }
                m.freeze()
            })
            .collect();
        let seqs = self.publish(partition, bodies).await?;
        let mut out = Vec::with_capacity(pieces.len());
        let mut pieces = pieces.into_iter();
        for (r, seq) in packs.iter().zip(seqs) {
            let mut offset = 0u32;
            for (key, b, hash) in pieces.by_ref().take(r.len()) {
                out.push(Entry {
                    key,
                    seq,
                    offset,
                    len: b.len() as u32,
                    packed: r.len() as u32,
                    hash,
                });
                offset += b.len() as u32;
            }
        }
        Ok(out)
    }

    /// Publishes bodies to the partition's subject, pipelined (`log::publish_windowed`);
    /// their sequences, in order.
    pub async fn publish(&self, partition: u32, bodies: Vec<bytes::Bytes>) -> Result<Vec<u64>> {
        let messages = bodies
            .into_iter()
            .map(|b| (subject(partition), None, b))
            .collect();
        let acks =
            crate::log::publish_windowed(&self.js, messages, "publishing a snapshot piece").await?;
        Ok(acks.iter().map(|a| a.sequence).collect())
    }

    /// Publishes `manifest` (in key order) as pages; their sequences.
    pub async fn publish_manifest(&self, partition: u32, manifest: &[Entry]) -> Result<Vec<u64>> {
        let mut pages = Vec::new();
        for chunk in manifest.chunks(PAGE_ENTRIES) {
            pages
                .push(bytes::Bytes::from(rmp_serde::to_vec(chunk).map_err(
                    |e| ClusterError::nats("writing a manifest page", e),
                )?));
        }
        self.publish(partition, pages).await
    }

    /// Writes the partition's root if its revision is still `revision` (`None`: if it has none);
    /// the new revision, or `None` when another root was written meanwhile.
    pub async fn write_root(
        &self,
        partition: u32,
        root: &Root,
        revision: Option<u64>,
    ) -> Result<Option<u64>> {
        let body: bytes::Bytes = rmp_serde::to_vec(root)
            .map_err(|e| ClusterError::nats("writing a snapshot root", e))?
            .into();
        match revision {
            None => match self.roots.create(key(partition), body).await {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(ClusterError::nats("writing a snapshot root", e)),
            },
            Some(rev) => match self.roots.update(key(partition), body, rev).await {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(ClusterError::nats("writing a snapshot root", e)),
            },
        }
    }

    /// Deletes messages no root lists any more; one that is already gone is not an error.
    pub async fn delete(&self, seqs: &[u64]) -> Result<()> {
        let stream = self.stream().await?;
        for s in seqs {
            if let Err(e) = stream.delete_message(*s).await {
                if !e.to_string().contains("no message found") {
                    return Err(ClusterError::nats("deleting a snapshot message", e));
                }
            }
        }
        Ok(())
    }

    /// The number of messages and bytes the snapshot stream holds.
    pub async fn usage(&self) -> Result<(u64, u64)> {
        let s = self
            .js
            .get_stream(STREAM)
            .await
            .map_err(|e| ClusterError::nats("reading the snapshot stream", e))?;
        let state = &s.cached_info().state;
        Ok((state.messages, state.bytes))
    }
}
