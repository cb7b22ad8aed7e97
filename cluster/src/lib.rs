//! meterstream's scale-out on NATS JetStream, designed in `docs/scale-out.md` (issue 10). The
//! server runs a [`node::Node`] when `cluster.nats_urls` is set; every part is tested against a
//! real `nats-server` 2.9.
//!
//! # Layout
//! - `ask`: questions a node puts to a partition's holder (core NATS request-reply).
//! - `events`: the shared stream of alarm and device events, applied by every node.
//! - `lease`: partition ownership through a replicated KV bucket, created by hand on 2.9 servers.
//! - `log`: the replicated log of data points, partitioned over several JetStream streams.
//! - `members`: the live nodes and the URLs they are reached at.
//! - `node`: one node: its rounds (membership, leases, balance) and its partitions' appliers.
//! - `partition`: which partition a device belongs to.
//! - `registry`: the registries every node shares (credentials, alert rules, monitors).
//! - `snapshot`: partition snapshots in JetStream, so that the log need not be kept for ever.

pub mod ask;
pub mod events;
pub mod lease;
pub mod log;
pub mod members;
pub mod node;
pub mod partition;
pub mod registry;
pub mod snapshot;

/// What can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS server is older than the features this design relies on.
    #[error("nats-server {found} is too old: {need} or newer is needed")]
    ServerVersion {
        /// The version the server reported.
        found: String,
        /// The oldest version supported.
        need: &'static str,
    },
    /// A NATS or JetStream call failed.
    #[error("{what}: {message}")]
    Nats {
        /// The operation.
        what: &'static str,
        /// NATS' message.
        message: String,
    },
}

impl ClusterError {
    fn nats(what: &'static str, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Nats {
            what,
            message: e.to_string(),
        }
    }
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, ClusterError>;
