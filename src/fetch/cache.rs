//! The node-local chunk cache: the first place a chunk is looked for. A directory of files
//! named by digest for now; the RocksDB chunk store replaces it behind the same trait.

use crate::rafs::image::ChunkDigest;
use std::path::PathBuf;
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

/// Chunks appended to one data file, with an index log beside it: `chunks.data` holds the
/// bytes, `chunks.idx` one 44-byte record (digest, offset, length) per chunk, appended
/// after its bytes, so a crash can lose a chunk but the index never points past the data.
/// The index lives in memory (a lookup is a hash probe, no syscall); writes happen on a
/// background thread so a read never waits for the disk. The RocksDB chunk store will
/// replace this behind the same trait, with quotas and eviction.
pub struct PackCache {
    data: std::fs::File,
    index: Arc<std::sync::RwLock<std::collections::HashMap<ChunkDigest, (u64, u32)>>>,
    writer: SyncSender<(ChunkDigest, Arc<Vec<u8>>)>,
}

/// Chunks waiting to be written; beyond this, new ones are not cached.
const WRITE_QUEUE: usize = 1024;
const RECORD: usize = 44;

impl PackCache {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        use std::io::{Read, Seek, Write};
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(dir.join(name))
        };
        let data = open("chunks.data")?;
        let mut log = open("chunks.idx")?;
        // One process per cache: offsets in the index assume a single appender.
        // SAFETY: flock on a valid open descriptor.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&log),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("{} is in use by another warren process", dir.display()),
            ));
        }
        let data_len = data.metadata()?.len();
        let mut raw = Vec::new();
        log.read_to_end(&mut raw)?;
        let mut index = std::collections::HashMap::new();
        for rec in raw.chunks_exact(RECORD) {
            let digest = ChunkDigest(rec[..32].try_into().expect("32 bytes"));
            let offset = u64::from_le_bytes(rec[32..40].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(rec[40..44].try_into().expect("4 bytes"));
            if len > 0 && offset + len as u64 <= data_len {
                index.insert(digest, (offset, len));
            }
        }
        // A record cut short by a crash is dropped so the next ones line up again.
        if raw.len() % RECORD != 0 {
            log.set_len((raw.len() - raw.len() % RECORD) as u64)?;
            log.seek(std::io::SeekFrom::End(0))?;
        }
        let index = Arc::new(std::sync::RwLock::new(index));
        let (writer, queue) = sync_channel::<(ChunkDigest, Arc<Vec<u8>>)>(WRITE_QUEUE);
        let (mut out, shared) = (data.try_clone()?, index.clone());
        std::thread::Builder::new()
            .name("warren-cache-writer".into())
            .spawn(move || {
                let mut end = data_len;
                for (digest, bytes) in queue {
                    let mut rec = Vec::with_capacity(RECORD);
                    rec.extend_from_slice(&digest.0);
                    rec.extend_from_slice(&end.to_le_bytes());
                    rec.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    // A full disk only costs a refetch later: the read itself succeeded.
                    match out.write_all(&bytes).and_then(|_| log.write_all(&rec)) {
                        Ok(()) => {
                            shared
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(digest, (end, bytes.len() as u32));
                            end += bytes.len() as u64;
                        }
                        Err(e) => {
                            tracing::warn!(chunk = %digest, error = %e, "cannot cache chunk");
                            end = out.metadata().map(|m| m.len()).unwrap_or(end);
                        }
                    }
                }
            })?;
        Ok(PackCache {
            data,
            index,
            writer,
        })
    }
}

impl ChunkCache for PackCache {
    fn get(&self, digest: &ChunkDigest) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let (offset, len) = *self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)?;
        let mut buf = vec![0u8; len as usize];
        self.data.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    fn put(&self, digest: &ChunkDigest, data: &Arc<Vec<u8>>) {
        if self.contains(digest) {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.writer.try_send((*digest, data.clone())) {
            tracing::debug!(chunk = %digest, "cache write queue full; not caching");
        }
    }

    fn contains(&self, digest: &ChunkDigest) -> bool {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }

    fn remove(&self, digest: &ChunkDigest) {
        // Forgotten now; the bytes stay until the store compacts.
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
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
