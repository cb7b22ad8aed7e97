//! Load generators and benchmarks for meterstream. They drive the `meterstream-server` binary from
//! outside over HTTP, as a user would; nothing here links the server.
//!
//! # Layout
//! - [`workload`]: the standard smart-meter workload, generated deterministically.

pub mod workload;
