//! Load generators and benchmarks for meterstream. They drive the `meterstream-server` binary from
//! outside over HTTP, as a user would; nothing here links the server.
//!
//! # Layout
//! - [`workload`]: the standard smart-meter workload, generated deterministically.
//! - [`batch`]: the workload as compact MessagePack batches.
//! - [`server`]: starting and measuring a server process.
//! - [`peer`]: VictoriaMetrics, the peer measured in the same run.

pub mod batch;
pub mod peer;
pub mod server;
pub mod workload;
