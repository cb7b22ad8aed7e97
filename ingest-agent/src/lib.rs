//! meterstream-agent: the gateway half of meterstream. It reads three-phase meters over a
//! serial Modbus RTU bus, publishes their readings on named channels, keeps every reading in an
//! on-disk spool until the server has acknowledged it, and uploads them in batches as compact
//! MessagePack. It uses the storage crate's data model only (stream types, path rules); it talks
//! to the server over HTTP.
//!
//! # Layout
//! - [`agent`]: puts the parts together; [`agent::run`] takes the configuration and a shutdown.
//! - [`config`]: the one TOML configuration, validated in one place.
//! - [`profile`]: meter models as register tables, request planning, register decoding.
//! - [`bus`]: one task per serial port reading its meters on time, with timeouts and reconnects.
//! - [`channel`]: the publish/subscribe channel layer between meters and consumers.
//! - [`command`]: registration with the server, and commands from it (long-poll and upload
//!   answers), run and reported.
//! - [`spool`]: the on-disk spool of readings not yet acknowledged by the server.
//! - [`upload`]: the spool writer and the batching uploader.
//! - [`metrics`]: counters and the health metrics published as streams.
//! - [`sim`]: simulated meters answering Modbus RTU on a pseudo-terminal.
//! - [`error`]: the agent's error type.

pub mod agent;
pub mod bus;
pub mod channel;
pub mod command;
pub mod config;
pub mod error;
pub mod metrics;
pub mod profile;
pub mod sim;
pub mod spool;
pub mod upload;

pub use error::{AgentError, Result};

/// Wall-clock time in Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
