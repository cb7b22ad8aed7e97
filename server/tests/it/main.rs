//! Integration tests of meterstream-server over real HTTP on 127.0.0.1, with real sled stores in
//! temporary directories. `crash` runs the real binary and kills it with SIGKILL.

#![allow(clippy::unwrap_used)] // test helpers: a failure should fail the test loudly

mod access;
mod alarms;
mod alerts;
mod browser;
mod crash;
mod csv;
mod csv_upload;
mod devices;
mod history;
mod ingest;
mod inventory;
mod legacy;
mod lineproto;
mod monitors;
mod readme;
mod rollups;
mod service;
mod support;
mod webhooks;
