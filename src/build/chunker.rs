//! Cuts file data into fixed-size chunks and digests and compresses them on a thread
//! pool while the source is still being read. Each distinct chunk is compressed once;
//! the pool keeps the stored bytes until the blob is written.

use crate::rafs::image::ChunkDigest;
use crate::rafs::{Compressor, Digester};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};

/// One distinct chunk, ready to be written to a blob.
#[derive(Debug)]
pub struct PooledChunk {
    /// Compressed bytes, or the plain bytes when compression did not help.
    pub stored: Vec<u8>,
    pub compressed: bool,
    pub uncompressed_size: u32,
    pub crc32: u32,
}

/// Where a file's chunk went: `(file key, chunk number) -> digest`.
pub type ChunkPlacement = (usize, u32, ChunkDigest);

struct Shared {
    chunks: Mutex<HashMap<ChunkDigest, PooledChunk>>,
    placements: Mutex<Vec<ChunkPlacement>>,
    /// Bytes handed to workers and not yet processed: bounds memory when reading outruns
    /// compression.
    in_flight: Mutex<usize>,
    drained: Condvar,
}

pub struct Chunker {
    chunk_size: usize,
    digester: Digester,
    compressor: Compressor,
    pool: rayon::ThreadPool,
    shared: Arc<Shared>,
    /// Skip compressing digests the parent image already holds.
    known: Arc<std::collections::HashSet<ChunkDigest>>,
    max_in_flight: usize,
}

impl Chunker {
    pub fn new(
        chunk_size: u32,
        digester: Digester,
        compressor: Compressor,
        known: std::collections::HashSet<ChunkDigest>,
    ) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("warren-chunk-{i}"))
            .build()
            .expect("thread pool");
        Chunker {
            chunk_size: chunk_size as usize,
            digester,
            compressor,
            pool,
            shared: Arc::new(Shared {
                chunks: Mutex::new(HashMap::new()),
                placements: Mutex::new(Vec::new()),
                in_flight: Mutex::new(0),
                drained: Condvar::new(),
            }),
            known: Arc::new(known),
            max_in_flight: (threads * 4 * chunk_size as usize).max(64 << 20),
        }
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
            let mut n = self
                .shared
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
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
            let seen = known.contains(&digest)
                || shared
                    .chunks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&digest);
            if !seen {
                let crc32 = crc32c::crc32c(&buf);
                let size = buf.len() as u32;
                let (stored, compressed) = match compressor.compress(&buf) {
                    Some(c) => (c, true),
                    None => (buf, false),
                };
                let chunk = PooledChunk {
                    stored,
                    compressed,
                    uncompressed_size: size,
                    crc32,
                };
                shared
                    .chunks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(digest)
                    .or_insert(chunk);
            }
            shared
                .placements
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key, index, digest));
            let mut n = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            *n -= len;
            shared.drained.notify_all();
        });
    }

    /// Waits for all queued chunks; returns the distinct chunks and every placement.
    pub fn finish(self) -> (HashMap<ChunkDigest, PooledChunk>, Vec<ChunkPlacement>) {
        {
            let mut n = self
                .shared
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            while *n > 0 {
                n = self
                    .shared
                    .drained
                    .wait(n)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        // Workers may still hold their handle for an instant after the count hits zero,
        // so take the results out rather than unwrapping the Arc.
        let chunks =
            std::mem::take(&mut *self.shared.chunks.lock().unwrap_or_else(|p| p.into_inner()));
        let placements = std::mem::take(
            &mut *self
                .shared
                .placements
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        (chunks, placements)
    }
}
