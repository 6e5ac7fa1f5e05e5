//! The fetch chain's view of the node's chunk store: the first place a chunk is looked for.
//! A trait rather than the store itself so that a mount can run without one (`none`) and
//! tests can stand in their own.

use crate::store::{Store, StoreStats};
use std::sync::Arc;

pub use crate::store::{ChunkKey, Lookup};

/// Chunks by key (digest and algorithm). An implementation may lose entries at any time;
/// what `get` returns as a hit must be the chunk's bytes (the store checks them against
/// the digest before it answers).
pub trait ChunkCache: Send + Sync {
    /// The chunk's bytes; a copy found bad is dropped and reported as [`Lookup::Corrupt`].
    fn get(&self, key: &ChunkKey) -> Lookup;
    /// Stores a verified chunk; may happen later, or not at all when the store is busy or
    /// full. Never fails the read that fetched it.
    fn put(&self, key: &ChunkKey, data: &Arc<Vec<u8>>);
    fn contains(&self, key: &ChunkKey) -> bool;
    /// Marks the chunks a mounted image will prefetch, so eviction takes them last.
    /// `owner` names the mount; a later call replaces its set.
    fn protect(&self, _owner: u64, _keys: Vec<ChunkKey>) {}
    /// Ends `owner`'s protection.
    fn release(&self, _owner: u64) {}
    /// The store's figures, for metrics; `None` without a store.
    fn stats(&self) -> Option<StoreStats> {
        None
    }
}

impl ChunkCache for Store {
    fn get(&self, key: &ChunkKey) -> Lookup {
        Store::get(self, key)
    }

    fn put(&self, key: &ChunkKey, data: &Arc<Vec<u8>>) {
        Store::put(self, key, data);
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        Store::contains(self, key)
    }

    fn protect(&self, owner: u64, keys: Vec<ChunkKey>) {
        Store::protect(self, owner, keys)
    }

    fn release(&self, owner: u64) {
        Store::release(self, owner)
    }

    fn stats(&self) -> Option<StoreStats> {
        Some(Store::stats(self))
    }
}

/// No store at all: every read goes to the next source.
pub struct NoCache;

impl ChunkCache for NoCache {
    fn get(&self, _: &ChunkKey) -> Lookup {
        Lookup::Miss
    }
    fn put(&self, _: &ChunkKey, _: &Arc<Vec<u8>>) {}
    fn contains(&self, _: &ChunkKey) -> bool {
        false
    }
}
