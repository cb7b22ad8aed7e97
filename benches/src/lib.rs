//! Load generators and benchmarks for meterstream. They drive the `meterstream-server` binary from
//! outside over HTTP, as a user would; nothing here links the server.
//!
//! # Layout
//! - [`workload`]: the standard smart-meter workload, generated deterministically.
//! - [`batch`]: the workload as compact MessagePack batches.
//! - [`server`]: starting and measuring a server process.
//! - [`peer`]: VictoriaMetrics and InfluxDB, the peers measured in the same run.
//! - [`chart`]: SVG charts of the results.
//! - [`receiver`]: a webhook receiver for the alarm and monitor benchmarks.
//! - [`agent`]: the gateway agent's cost and replay speed (it prepares the replay spool with
//!   the agent's own spool code).

pub mod agent;
pub mod batch;
pub mod chart;
pub mod peer;
pub mod receiver;
pub mod server;
pub mod workload;
