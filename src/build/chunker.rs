//! Cuts file data into fixed-size chunks and digests and compresses them on a thread
//! pool while the source is still being read. Each distinct chunk is compressed once and
//! its stored bytes go to a spill file next to the blob, so memory stays bounded by the
//! chunks in flight, not by the size of the layer.

use crate::rafs::image::ChunkDigest;
use crate::rafs::{Compressor, Digester};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// One distinct chunk, its stored bytes waiting in the spill file.
#[derive(Clone, Copy, Debug)]
pub struct PooledChunk {
    pub spill_offset: u64,
    /// Compressed size, or the plain size when compression did not help.
    pub stored_size: u32,
    pub compressed: bool,
    pub uncompressed_size: u32,
    pub crc32: u32,
}

/// Where a file's chunk went: `(file key, chunk number) -> digest`.
pub type ChunkPlacement = (usize, u32, ChunkDigest);

/// What the chunker produced: distinct chunks, every placement, and the spill file that
/// holds the chunks' stored bytes.
pub struct ChunkedData {
    pub chunks: HashMap<ChunkDigest, PooledChunk>,
    pub placements: Vec<ChunkPlacement>,
    pub spill: tempfile::NamedTempFile,
}

struct Shared {
    chunks: Mutex<HashMap<ChunkDigest, PooledChunk>>,
    placements: Mutex<Vec<ChunkPlacement>>,
    /// A handle on the spill file for the workers' positioned writes.
    spill: std::fs::File,
    spill_end: AtomicU64,
    /// The first spill write error (a full disk, say); reported by `finish`.
    error: Mutex<Option<std::io::Error>>,
    /// Bytes handed to workers and not yet processed: bounds memory when reading outruns
    /// compression.
    in_flight: Mutex<usize>,
    drained: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Chunker {
    chunk_size: usize,
    digester: Digester,
    compressor: Compressor,
    pool: rayon::ThreadPool,
    shared: Arc<Shared>,
    spill: tempfile::NamedTempFile,
    /// Digests the parent image already holds: not compressed, not stored again.
    known: Arc<HashSet<ChunkDigest>>,
    max_in_flight: usize,
}

impl Chunker {
    /// `spill_dir` receives the temporary spill file (put it on the blob's file system).
    pub fn new(
        chunk_size: u32,
        digester: Digester,
        compressor: Compressor,
        known: HashSet<ChunkDigest>,
        spill_dir: &Path,
    ) -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("warren-chunk-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        let spill = tempfile::Builder::new()
            .prefix(".warren-spill-")
            .tempfile_in(spill_dir)?;
        Ok(Chunker {
            chunk_size: chunk_size as usize,
            digester,
            compressor,
            pool,
            shared: Arc::new(Shared {
                chunks: Mutex::new(HashMap::new()),
                placements: Mutex::new(Vec::new()),
                spill: spill.as_file().try_clone()?,
                spill_end: AtomicU64::new(0),
                error: Mutex::new(None),
                in_flight: Mutex::new(0),
                drained: Condvar::new(),
            }),
            spill,
            known: Arc::new(known),
            max_in_flight: (threads * 4 * chunk_size as usize).max(16 << 20),
        })
    }

    /// Reads exactly `size` bytes of file `key` and queues its chunks. Returns the number
    /// of chunks.
    pub fn add_file(&self, key: usize, size: u64, data: &mut dyn Read) -> std::io::Result<u32> {
        let mut remaining = size;
        let mut index = 0u32;
        while remaining > 0 {
            let len = remaining.min(self.chunk_size as u64) as usize;
            let mut buf = vec![0u8; len];
            data.read_exact(&mut buf)?;
            remaining -= len as u64;
            self.submit(key, index, buf);
            index += 1;
        }
        Ok(index)
    }

    fn submit(&self, key: usize, index: u32, buf: Vec<u8>) {
        let len = buf.len();
        {
            let mut n = lock(&self.shared.in_flight);
            while *n > self.max_in_flight {
                n = self
                    .shared
                    .drained
                    .wait(n)
                    .unwrap_or_else(|p| p.into_inner());
            }
            *n += len;
        }
        let shared = self.shared.clone();
        let known = self.known.clone();
        let (digester, compressor) = (self.digester, self.compressor);
        self.pool.spawn(move || {
            let digest = ChunkDigest(digester.digest(&buf));
            let seen = known.contains(&digest) || lock(&shared.chunks).contains_key(&digest);
            if !seen {
                store(&shared, digest, &buf, compressor);
            }
            lock(&shared.placements).push((key, index, digest));
            *lock(&shared.in_flight) -= len;
            shared.drained.notify_all();
        });
    }

    /// Waits for all queued chunks and hands over what they produced.
    pub fn finish(self) -> std::io::Result<ChunkedData> {
        {
            let mut n = lock(&self.shared.in_flight);
            while *n > 0 {
                n = self
                    .shared
                    .drained
                    .wait(n)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        // Workers may hold their handle an instant after the count reaches zero: take the
        // results out rather than unwrapping the Arc.
        if let Some(e) = lock(&self.shared.error).take() {
            return Err(e);
        }
        Ok(ChunkedData {
            chunks: std::mem::take(&mut *lock(&self.shared.chunks)),
            placements: std::mem::take(&mut *lock(&self.shared.placements)),
            spill: self.spill,
        })
    }
}

/// Compresses a new chunk and appends its stored bytes to the spill file.
fn store(shared: &Shared, digest: ChunkDigest, data: &[u8], compressor: Compressor) {
    let crc32 = crc32c::crc32c(data);
    let packed = compressor.compress(data);
    let stored = packed.as_deref().unwrap_or(data);
    let offset = shared
        .spill_end
        .fetch_add(stored.len() as u64, Ordering::Relaxed);
    if let Err(e) = shared.spill.write_all_at(stored, offset) {
        lock(&shared.error).get_or_insert(e);
        return;
    }
    let chunk = PooledChunk {
        spill_offset: offset,
        stored_size: stored.len() as u32,
        compressed: packed.is_some(),
        uncompressed_size: data.len() as u32,
        crc32,
    };
    lock(&shared.chunks).entry(digest).or_insert(chunk);
}
