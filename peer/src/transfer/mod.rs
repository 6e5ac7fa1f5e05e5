//! Chunk bytes between members over QUIC ([`quinn`]): one connection per peer, one
//! bidirectional stream per request (so many requests share a connection without
//! blocking each other), the framing of [`crate::wire`], mutual TLS from
//! [`crate::trust`].

pub mod client;
pub mod server;

use crate::chunk::ChunkWant;
use std::sync::Arc;

/// What a node lends the mesh. Both methods block (store reads, origin fetches): the
/// mesh calls them on tokio's blocking pool.
pub trait ChunkProvider: Send + Sync + 'static {
    /// The chunk's bytes if this node holds it (its store), checked against the digest.
    fn held(&self, want: &ChunkWant) -> Option<Arc<Vec<u8>>>;
    /// The chunk's bytes if this node has them in memory; must not block (it runs on the
    /// mesh's async threads). By default none.
    fn in_memory(&self, _want: &ChunkWant) -> Option<Arc<Vec<u8>>> {
        None
    }
    /// [`ChunkProvider::held`], or, when this node is fetching the chunk right now, its
    /// bytes once they are in: asked as a holder, a member may be a step ahead of its own
    /// chunk. By default only what is held.
    fn held_or_arriving(&self, want: &ChunkWant) -> Option<Arc<Vec<u8>>> {
        self.held(want)
    }
    /// As the chunks' owner: fetch them from their origin (through the node's own fetch
    /// chain, which stores them). `None` for a chunk whose blob this node does not know or
    /// whose fetch failed.
    fn fetch_as_owner(&self, wants: &[ChunkWant]) -> Vec<Option<Arc<Vec<u8>>>>;
}

/// One requested chunk's answer from a peer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// The chunk's bytes, already verified against its digest.
    Data(Arc<Vec<u8>>),
    /// The peer does not hold it (or cannot get it).
    Miss,
    /// No usable answer: the peer failed, timed out, or lied.
    Failed,
    /// Ask this member instead: it holds the chunk.
    Holder(std::net::SocketAddr),
}
