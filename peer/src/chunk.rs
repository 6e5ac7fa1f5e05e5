//! What the mesh moves: chunks named by the digest of their uncompressed bytes. A chunk
//! from a peer is only ever handed on after [`ChunkId::matches`] says its bytes are right.

use std::fmt;

/// The digest algorithm of an image (RAFS records one per image).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgo {
    /// BLAKE3, 32 bytes (Nydus's default).
    Blake3,
    /// SHA-256.
    Sha256,
}

impl DigestAlgo {
    /// The algorithm's number on the wire.
    pub fn code(self) -> u8 {
        match self {
            DigestAlgo::Blake3 => 0,
            DigestAlgo::Sha256 => 1,
        }
    }

    /// The algorithm a wire number names, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(DigestAlgo::Blake3),
            1 => Some(DigestAlgo::Sha256),
            _ => None,
        }
    }

    /// The digest of `data` under this algorithm.
    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            DigestAlgo::Blake3 => *blake3::hash(data).as_bytes(),
            DigestAlgo::Sha256 => {
                use sha2::Digest;
                sha2::Sha256::digest(data).into()
            }
        }
    }
}

/// A chunk's name across the cluster: its digest and the algorithm that made it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    /// The algorithm of `digest`.
    pub algo: DigestAlgo,
    /// The digest of the chunk's uncompressed bytes.
    pub digest: [u8; 32],
}

impl ChunkId {
    /// Whether `data` is this chunk's bytes.
    pub fn matches(&self, data: &[u8]) -> bool {
        self.algo.digest(data) == self.digest
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.digest))
    }
}

/// Where an owner finds a chunk at the origin: the blob that holds it and the chunk's
/// index in that blob's chunk table (the same in every image that uses the blob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginHint {
    /// The blob (sha256 hex of the blob file, as RAFS names blobs).
    pub blob_id: String,
    /// The chunk's index in the blob's chunk table.
    pub chunk_index: u32,
}

/// The key a chunk is routed by: its owners are the members that rank highest for it.
pub type RouteKey = [u8; 32];

/// One chunk a node wants from the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkWant {
    /// The chunk.
    pub id: ChunkId,
    /// What the chunk is routed by (not sent: only the asker routes). The chunk's digest,
    /// or the blob segment it lies in (see `MeshConfig::route_segment_bytes`).
    pub route: RouteKey,
    /// Uncompressed size: a peer's answer of any other length is refused unread.
    pub size: u32,
    /// Where an owner finds it at the origin.
    pub origin: OriginHint,
}
