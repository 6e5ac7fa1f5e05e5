//! Cuts file data into fixed-size chunks and digests and compresses them on a thread
//! pool while the source is still being read. Each distinct chunk is compressed once; one
//! writer thread appends the stored bytes to a spill file beside the blob, in the order
//! the chunks were submitted, and hashes them as it goes. Memory stays bounded by the
//! chunks in flight; when the blob wants the chunks in that same order (a directory walk
//! is already in tree order), the spill file becomes the blob without a copy.

use crate::rafs::image::ChunkDigest;
use crate::rafs::{Compressor, Digester};
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc::{channel, Sender};
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

/// What the chunker produced.
pub struct ChunkedData {
    pub chunks: HashMap<ChunkDigest, PooledChunk>,
    pub placements: Vec<ChunkPlacement>,
    pub spill: Spill,
}

/// The spill file with the distinct chunks' stored bytes, in submission order.
pub struct Spill {
    pub file: tempfile::NamedTempFile,
    /// Digests in the order their bytes sit in the file.
    pub order: Vec<ChunkDigest>,
    /// sha256 state over the whole file, so it can become a blob without a re-read.
    pub hash: sha2::Sha256,
    pub len: u64,
}

/// A worker's result for one submitted chunk.
struct Done {
    seq: u64,
    key: usize,
    index: u32,
    digest: ChunkDigest,
    len: usize,
    /// Stored bytes, when the worker saw the digest for the first time.
    packed: Option<(Vec<u8>, bool, u32)>,
}

struct Shared {
    /// Distinct chunks written so far (workers skip compressing these).
    chunks: Mutex<HashMap<ChunkDigest, PooledChunk>>,
    /// Bytes submitted and not yet written: bounds memory when reading outruns compression.
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
    results: Sender<Done>,
    writer: std::thread::JoinHandle<std::io::Result<(Vec<ChunkPlacement>, Spill)>>,
    next_seq: std::cell::Cell<u64>,
    /// Digests the parent image already holds: not compressed, not stored again.
    known: Arc<HashSet<ChunkDigest>>,
    max_in_flight: usize,
}

impl Chunker {
    /// `spill_dir` receives the spill file (put it where the blob goes).
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
        let file = tempfile::Builder::new()
            .prefix(".warren-spill-")
            .tempfile_in(spill_dir)?;
        let shared = Arc::new(Shared {
            chunks: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(0),
            drained: Condvar::new(),
        });
        let known = Arc::new(known);
        let (results, rx) = channel::<Done>();
        let writer = {
            let (shared, known) = (shared.clone(), known.clone());
            std::thread::Builder::new()
                .name("warren-spill".into())
                .spawn(move || write_in_order(rx, file, &shared, &known))?
        };
        Ok(Chunker {
            chunk_size: chunk_size as usize,
            digester,
            compressor,
            pool,
            shared,
            results,
            writer,
            next_seq: std::cell::Cell::new(0),
            known,
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
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let (shared, known, results) = (
            self.shared.clone(),
            self.known.clone(),
            self.results.clone(),
        );
        let (digester, compressor) = (self.digester, self.compressor);
        self.pool.spawn(move || {
            let digest = ChunkDigest(digester.digest(&buf));
            let seen = known.contains(&digest) || lock(&shared.chunks).contains_key(&digest);
            let packed = (!seen).then(|| {
                let crc32 = crc32c::crc32c(&buf);
                match compressor.compress(&buf) {
                    Some(c) => (c, true, crc32),
                    None => (buf, false, crc32),
                }
            });
            // The writer is gone only after an error, which `finish` reports.
            let _ = results.send(Done {
                seq,
                key,
                index,
                digest,
                len,
                packed,
            });
        });
    }

    /// Waits for every queued chunk to be written and hands over what they produced.
    pub fn finish(self) -> std::io::Result<ChunkedData> {
        let Chunker {
            pool,
            results,
            writer,
            shared,
            ..
        } = self;
        drop(results);
        drop(pool); // workers finish their queue and drop their senders
        let (placements, spill) = writer
            .join()
            .map_err(|_| std::io::Error::other("spill writer panicked"))??;
        let chunks = std::mem::take(&mut *lock(&shared.chunks));
        Ok(ChunkedData {
            chunks,
            placements,
            spill,
        })
    }
}

/// The writer thread: takes workers' results in any order and writes them in submission
/// order, so the spill file's layout does not depend on thread timing.
fn write_in_order(
    rx: std::sync::mpsc::Receiver<Done>,
    file: tempfile::NamedTempFile,
    shared: &Shared,
    known: &HashSet<ChunkDigest>,
) -> std::io::Result<(Vec<ChunkPlacement>, Spill)> {
    let mut out = std::io::BufWriter::with_capacity(4 << 20, file.as_file().try_clone()?);
    let (mut hash, mut len, mut order) = (sha2::Sha256::new(), 0u64, Vec::new());
    let mut placements = Vec::new();
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next = 0u64;
    let mut error: Option<std::io::Error> = None;
    for done in rx {
        pending.insert(done.seq, done);
        while let Some(d) = pending.remove(&next) {
            next += 1;
            placements.push((d.key, d.index, d.digest));
            if let Some((stored, compressed, crc32)) = d.packed {
                let first =
                    !known.contains(&d.digest) && !lock(&shared.chunks).contains_key(&d.digest);
                if first && error.is_none() {
                    match out.write_all(&stored) {
                        Ok(()) => {
                            hash.update(&stored);
                            let chunk = PooledChunk {
                                spill_offset: len,
                                stored_size: stored.len() as u32,
                                compressed,
                                uncompressed_size: d.len as u32,
                                crc32,
                            };
                            lock(&shared.chunks).insert(d.digest, chunk);
                            order.push(d.digest);
                            len += stored.len() as u64;
                        }
                        // Keep draining so the reader is never left waiting; report at the end.
                        Err(e) => error = Some(e),
                    }
                }
            }
            *lock(&shared.in_flight) -= d.len;
            shared.drained.notify_all();
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    out.flush()?;
    drop(out);
    Ok((
        placements,
        Spill {
            file,
            order,
            hash,
            len,
        },
    ))
}
