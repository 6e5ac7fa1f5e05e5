//! Helpers shared by the peer crate's tests and benchmarks.

pub mod loopback;
