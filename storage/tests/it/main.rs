//! Integration tests of the storage engine on real sled stores in temporary directories.

mod engine;
mod model;
