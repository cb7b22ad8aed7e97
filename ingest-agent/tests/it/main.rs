//! The agent against real parts: simulated meters on pseudo-terminal pairs, a real
//! meterstream-server on 127.0.0.1:0 with a temporary store, a real spool directory.

#![allow(clippy::unwrap_used)]

mod commands;
mod crash;
mod dashboards;
mod meters;
mod support;
mod upload;
