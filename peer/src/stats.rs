//! The mesh's counters, read by the node's metrics at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares the counters once: the live atomics, the plain copy, and the copying.
macro_rules! mesh_counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Monotonic counters of one node's mesh traffic.
        #[derive(Debug, Default)]
        pub struct MeshStats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`MeshStats`] at one moment.
        #[derive(Clone, Copy, Debug, Default, serde::Serialize)]
        pub struct MeshStatsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl MeshStats {
            /// The counters' values now.
            pub fn snapshot(&self) -> MeshStatsSnapshot {
                MeshStatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

mesh_counters! {
    /// Requests sent to peers.
    requests,
    /// Verified chunks received from peers.
    received_chunks,
    /// Bytes of those chunks.
    received_bytes,
    /// Chunks a peer did not have (or could not fetch).
    peer_misses,
    /// Failed exchanges: no connection, timeouts, protocol errors, busy answers.
    peer_errors,
    /// Requests given up on because an owner was too slow to accept (hedged).
    hedges,
    /// Chunks from a peer that did not match their digest (the peer is then shunned).
    bad_chunks,
    /// Chunks this node served to others.
    served_chunks,
    /// Bytes of those chunks.
    served_bytes,
    /// Requests refused because a peer was over its limits.
    served_busy,
    /// Chunks this node fetched from the origin as their owner, for others.
    owner_fetches,
    /// Owner asks that joined a fetch already in flight for the same chunk.
    owner_dedup,
    /// Chunks this node answered with a holder to ask instead of the bytes.
    redirects,
}

impl MeshStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
