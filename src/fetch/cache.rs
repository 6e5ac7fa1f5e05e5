//! The node-local chunk cache: the first place a chunk is looked for. A directory of files
//! named by digest for now; the RocksDB chunk store replaces it behind the same trait.

use crate::rafs::image::ChunkDigest;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Chunks by digest. Implementations may lose entries; callers verify what they get.
pub trait ChunkCache: Send + Sync {
    fn get(&self, digest: &ChunkDigest) -> Option<Vec<u8>>;
    /// Stores a verified chunk; may happen later, or not at all when the cache is busy.
    fn put(&self, digest: &ChunkDigest, data: &Arc<Vec<u8>>);
    fn contains(&self, digest: &ChunkDigest) -> bool;
    /// Drops a chunk that failed verification.
    fn remove(&self, digest: &ChunkDigest);
}

/// One file per chunk under `dir/ab/abcd...`, written to a temporary name and renamed, so a
/// crash leaves either the whole chunk or nothing. Writes happen on a background thread so
/// a read never waits for the disk.
pub struct DirCache {
    dir: PathBuf,
    writer: SyncSender<(ChunkDigest, Arc<Vec<u8>>)>,
}

/// Chunks waiting to be written; beyond this, new ones are not cached.
const WRITE_QUEUE: usize = 512;

impl DirCache {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let (writer, queue) = sync_channel::<(ChunkDigest, Arc<Vec<u8>>)>(WRITE_QUEUE);
        let root = dir.clone();
        std::thread::Builder::new()
            .name("warren-cache-writer".into())
            .spawn(move || {
                for (digest, data) in queue {
                    // A full disk only costs a refetch later: the read itself succeeded.
                    if let Err(e) = write_chunk(&chunk_path(&root, &digest), &data) {
                        tracing::warn!(chunk = %digest, error = %e, "cannot cache chunk");
                    }
                }
            })?;
        Ok(DirCache { dir, writer })
    }
}

fn chunk_path(dir: &Path, digest: &ChunkDigest) -> PathBuf {
    let hex = digest.to_string();
    dir.join(&hex[..2]).join(hex)
}

fn write_chunk(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().expect("fan-out dir");
    std::fs::create_dir_all(parent)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".put-")
        .tempfile_in(parent)?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl ChunkCache for DirCache {
    fn get(&self, digest: &ChunkDigest) -> Option<Vec<u8>> {
        std::fs::read(chunk_path(&self.dir, digest)).ok()
    }

    fn put(&self, digest: &ChunkDigest, data: &Arc<Vec<u8>>) {
        if let Err(TrySendError::Full(_)) = self.writer.try_send((*digest, data.clone())) {
            tracing::debug!(chunk = %digest, "cache write queue full; not caching");
        }
    }

    fn contains(&self, digest: &ChunkDigest) -> bool {
        chunk_path(&self.dir, digest).exists()
    }

    fn remove(&self, digest: &ChunkDigest) {
        let _ = std::fs::remove_file(chunk_path(&self.dir, digest));
    }
}

/// No caching at all: every read goes to the next source.
pub struct NoCache;

impl ChunkCache for NoCache {
    fn get(&self, _: &ChunkDigest) -> Option<Vec<u8>> {
        None
    }
    fn put(&self, _: &ChunkDigest, _: &Arc<Vec<u8>>) {}
    fn contains(&self, _: &ChunkDigest) -> bool {
        false
    }
    fn remove(&self, _: &ChunkDigest) {}
}
