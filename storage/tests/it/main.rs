//! Integration tests of the storage engine on real sled stores in temporary directories.

#![allow(clippy::unwrap_used)] // test helpers: a failure should fail the test loudly

mod engine;
mod feed;
mod model;
mod pieces;
mod rollups;
