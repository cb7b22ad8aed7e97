//! Integration tests of meterstream-server over real HTTP on 127.0.0.1, with real sled stores in
//! temporary directories. `crash` runs the real binary and kills it with SIGKILL.

mod crash;
mod history;
mod ingest;
mod inventory;
mod service;
mod support;
