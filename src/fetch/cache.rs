//! The node-local chunk cache: the first place a chunk is looked for. A directory of files
//! named by digest for now; the RocksDB chunk store replaces it behind the same trait.

use crate::rafs::image::ChunkDigest;
use std::path::PathBuf;

/// Chunks by digest. Implementations may lose entries; callers verify what they get.
pub trait ChunkCache: Send + Sync {
    fn get(&self, digest: &ChunkDigest) -> Option<Vec<u8>>;
    fn put(&self, digest: &ChunkDigest, data: &[u8]);
    /// Drops a chunk that failed verification.
    fn remove(&self, digest: &ChunkDigest);
}

/// One file per chunk under `dir/ab/abcd...`, written to a temporary name and renamed, so a
/// crash leaves either the whole chunk or nothing.
pub struct DirCache {
    dir: PathBuf,
}

impl DirCache {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(DirCache { dir })
    }

    fn path(&self, digest: &ChunkDigest) -> PathBuf {
        let hex = digest.to_string();
        self.dir.join(&hex[..2]).join(hex)
    }
}

impl ChunkCache for DirCache {
    fn get(&self, digest: &ChunkDigest) -> Option<Vec<u8>> {
        std::fs::read(self.path(digest)).ok()
    }

    fn put(&self, digest: &ChunkDigest, data: &[u8]) {
        let path = self.path(digest);
        let write = || -> std::io::Result<()> {
            let parent = path.parent().expect("fan-out dir");
            std::fs::create_dir_all(parent)?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".put-")
                .tempfile_in(parent)?;
            std::io::Write::write_all(&mut tmp, data)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        // A full disk only costs a refetch later: the read itself still succeeds.
        if let Err(e) = write() {
            tracing::warn!(chunk = %digest, error = %e, "cannot cache chunk");
        }
    }

    fn remove(&self, digest: &ChunkDigest) {
        let _ = std::fs::remove_file(self.path(digest));
    }
}

/// No caching at all: every read goes to the next source.
pub struct NoCache;

impl ChunkCache for NoCache {
    fn get(&self, _: &ChunkDigest) -> Option<Vec<u8>> {
        None
    }
    fn put(&self, _: &ChunkDigest, _: &[u8]) {}
    fn remove(&self, _: &ChunkDigest) {}
}
