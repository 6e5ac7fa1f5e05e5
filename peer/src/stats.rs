//! The mesh's counters, read by the node's metrics at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters of one node's mesh traffic.
#[derive(Debug, Default)]
pub struct MeshStats {
    /// Requests sent to peers.
    pub requests: AtomicU64,
    /// Verified chunks received from peers, and their bytes.
    pub received_chunks: AtomicU64,
    /// Bytes of those chunks.
    pub received_bytes: AtomicU64,
    /// Chunks a peer did not have (or could not fetch).
    pub peer_misses: AtomicU64,
    /// Failed exchanges: no connection, timeouts, protocol errors, busy answers.
    pub peer_errors: AtomicU64,
    /// Requests given up on because an owner was too slow to accept (hedged).
    pub hedges: AtomicU64,
    /// Chunks from a peer that did not match their digest (the peer is then shunned).
    pub bad_chunks: AtomicU64,
    /// Chunks and bytes this node served to others.
    pub served_chunks: AtomicU64,
    /// Bytes of those chunks.
    pub served_bytes: AtomicU64,
    /// Requests refused because a peer was over its limits.
    pub served_busy: AtomicU64,
    /// Chunks this node fetched from the origin as their owner, for others.
    pub owner_fetches: AtomicU64,
    /// Owner asks that joined a fetch already in flight for the same chunk.
    pub owner_dedup: AtomicU64,
    /// Chunks this node answered with a holder to ask instead of the bytes.
    pub redirects: AtomicU64,
}

/// A copy of [`MeshStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MeshStatsSnapshot {
    /// See [`MeshStats::requests`].
    pub requests: u64,
    /// See [`MeshStats::received_chunks`].
    pub received_chunks: u64,
    /// See [`MeshStats::received_bytes`].
    pub received_bytes: u64,
    /// See [`MeshStats::peer_misses`].
    pub peer_misses: u64,
    /// See [`MeshStats::peer_errors`].
    pub peer_errors: u64,
    /// See [`MeshStats::hedges`].
    pub hedges: u64,
    /// See [`MeshStats::bad_chunks`].
    pub bad_chunks: u64,
    /// See [`MeshStats::served_chunks`].
    pub served_chunks: u64,
    /// See [`MeshStats::served_bytes`].
    pub served_bytes: u64,
    /// See [`MeshStats::served_busy`].
    pub served_busy: u64,
    /// See [`MeshStats::owner_fetches`].
    pub owner_fetches: u64,
    /// See [`MeshStats::owner_dedup`].
    pub owner_dedup: u64,
    /// See [`MeshStats::redirects`].
    pub redirects: u64,
}

impl MeshStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters' values now.
    pub fn snapshot(&self) -> MeshStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MeshStatsSnapshot {
            requests: get(&self.requests),
            received_chunks: get(&self.received_chunks),
            received_bytes: get(&self.received_bytes),
            peer_misses: get(&self.peer_misses),
            peer_errors: get(&self.peer_errors),
            hedges: get(&self.hedges),
            bad_chunks: get(&self.bad_chunks),
            served_chunks: get(&self.served_chunks),
            served_bytes: get(&self.served_bytes),
            served_busy: get(&self.served_busy),
            owner_fetches: get(&self.owner_fetches),
            owner_dedup: get(&self.owner_dedup),
            redirects: get(&self.redirects),
        }
    }
}
