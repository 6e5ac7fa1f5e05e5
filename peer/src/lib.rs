//! warren's peer mesh: the nodes of a cluster fetch chunks from each other, so the origin
//! sees each chunk about once per cluster, not once per node.
//!
//! - [`membership`]: who is in the cluster (libp2p: gossip heartbeats, identify, ping),
//!   from seeds and DNS names, inside a private network keyed by the cluster secret.
//! - [`routing`]: who owns a chunk (rendezvous hashing over the live members).
//! - [`transfer`]: chunk bytes over QUIC with mutual TLS ([`trust`]), in the framing of
//!   [`wire`]; every chunk checked against its digest before use.
//! - [`health`]: liars and dead peers are skipped for a while; per-peer serving limits.
//! - [`mesh`]: the whole, as the node uses it ([`Mesh`]).
//!
//! A node that misses a chunk asks the chunk's owners in rendezvous order; an owner that
//! lacks it fetches it from the origin once, however many members ask at the same time,
//! and serves them all. When the owners are down, slow to accept (the hedge budget) or
//! lie, the node goes to the origin itself: the mesh can make a read faster or cheaper,
//! never wrong, and never much slower.

#![warn(missing_docs)]

pub mod chunk;
pub mod config;
pub mod health;
pub mod holders;
pub mod membership;
pub mod mesh;
pub mod routing;
pub mod stats;
pub mod transfer;
pub mod trust;
pub mod wire;

pub use chunk::{ChunkId, ChunkWant, DigestAlgo, OriginHint};
pub use config::MeshConfig;
pub use membership::Member;
pub use mesh::{Mesh, MeshError};
pub use stats::MeshStatsSnapshot;
pub use transfer::ChunkProvider;
