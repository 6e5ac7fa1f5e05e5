//! The fetch chain: a FUSE read becomes a list of chunks; each is looked up in memory, then
//! in the node's chunk store ([`crate::store`], keyed by digest and algorithm, verified on
//! read), and what is missing is fetched from the blob's origin: adjacent missing chunks of
//! one blob in one ranged request (read amplification), at most one fetch per chunk at a
//! time (in-flight dedup), every chunk verified against its digest before it is used or
//! cached. Prefetch runs through the same chain and gives way to on-demand reads.
//!
//! The peer mesh slots in between the cache and the origin.

mod background;
pub mod cache;
pub mod inflight;
mod origin;
pub mod peers;
pub mod prefetch;
mod readahead;
mod window;

pub use readahead::ReadAheadSink;

use crate::api::metrics::{ChunkSource, Metrics};
use crate::backend::BlobBackend;
use crate::rafs::image::{ChunkDigest, ChunkInfo, ChunkRef, Image, InodeId, InodeKind};
use cache::{ChunkCache, ChunkKey, Lookup};
use inflight::{ChunkResult, Claim, InFlight};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Settings of the fetch chain.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchOptions {
    /// Largest origin request made by merging adjacent missing chunks (bytes).
    pub amplify_bytes: u64,
    /// Check every chunk fetched from the origin against its digest (off only for
    /// measurements; chunks read from the store are checked by the store, `[store]
    /// verify_on_read`).
    pub verify: bool,
    /// Recently used chunks kept decoded and verified in memory (bytes).
    pub memory_cache_bytes: u64,
}

pub const DEFAULT_AMPLIFY_BYTES: u64 = 1 << 20;
pub const DEFAULT_MEMORY_CACHE_BYTES: u64 = 128 << 20;

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            amplify_bytes: DEFAULT_AMPLIFY_BYTES,
            verify: true,
            memory_cache_bytes: DEFAULT_MEMORY_CACHE_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("chunk {digest} of blob {blob}: {detail}")]
    Chunk {
        blob: String,
        digest: ChunkDigest,
        detail: String,
    },
    #[error("inode {0} is not a regular file")]
    NotAFile(InodeId),
}

pub struct FetchChain {
    image: Arc<Image>,
    backend: Arc<dyn BlobBackend>,
    cache: Arc<dyn ChunkCache>,
    inflight: InFlight,
    metrics: Arc<Metrics>,
    opts: FetchOptions,
    /// On-demand reads in progress: prefetch waits while there are any.
    on_demand: AtomicUsize,
    /// Decoded, verified chunks: small reads of a chunk cost a copy, not a decode.
    hot: std::sync::Mutex<HotChunks>,
    /// This chain's name towards the store's protected sets.
    owner: u64,
    /// The peer mesh, when the node is part of one.
    peers: OnceLock<Arc<dyn peers::PeerSource>>,
    /// Where recent reads left off, to tell scans from scattered reads.
    streams: std::sync::Mutex<window::ReadStreams>,
    /// Where chunks fetched ahead of readers are offered (the FUSE layer's page pusher).
    read_ahead: OnceLock<Arc<dyn ReadAheadSink>>,
}

/// Hands out [`FetchChain::owner`] ids.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// An LRU of decoded chunks bounded by bytes.
struct HotChunks {
    lru: lru::LruCache<ChunkDigest, Arc<Vec<u8>>>,
    bytes: u64,
    limit: u64,
}

impl HotChunks {
    fn get(&mut self, d: &ChunkDigest) -> Option<Arc<Vec<u8>>> {
        self.lru.get(d).cloned()
    }

    fn put(&mut self, d: ChunkDigest, data: Arc<Vec<u8>>) {
        if data.len() as u64 > self.limit {
            return;
        }
        self.bytes += data.len() as u64;
        if let Some(old) = self.lru.put(d, data) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > self.limit {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= old.len() as u64,
                None => break,
            }
        }
    }
}

/// What [`FetchChain::claim`] sorted a list of chunks into.
struct Claimed {
    found: HashMap<ChunkDigest, ChunkResult>,
    /// Claimed by this caller, not in memory or the store: to fetch.
    owned: Vec<(ChunkRef, Arc<inflight::Slot>)>,
    /// Being fetched by someone else.
    waiting: Vec<(ChunkDigest, Arc<inflight::Slot>)>,
}

/// The bytes of one read: ranges of verified chunks, in file order.
#[derive(Default)]
pub struct ReadParts {
    pieces: Vec<(Arc<Vec<u8>>, std::ops::Range<usize>)>,
    len: usize,
}

impl ReadParts {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands each piece to `f`, in order, until one fails.
    pub fn try_for_each<E>(&self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        self.pieces
            .iter()
            .try_for_each(|(data, range)| f(&data[range.clone()]))
    }
}

/// Counts an on-demand read for as long as it lives.
struct OnDemand<'a>(&'a AtomicUsize);

impl Drop for OnDemand<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FetchChain {
    pub fn new(
        image: Arc<Image>,
        backend: Arc<dyn BlobBackend>,
        cache: Arc<dyn ChunkCache>,
        opts: FetchOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let hot = HotChunks {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
            limit: opts.memory_cache_bytes,
        };
        FetchChain {
            image,
            backend,
            cache,
            inflight: InFlight::default(),
            metrics,
            opts,
            on_demand: AtomicUsize::new(0),
            hot: std::sync::Mutex::new(hot),
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            peers: OnceLock::new(),
            streams: Default::default(),
            read_ahead: OnceLock::new(),
        }
    }

    /// The store's key of a chunk of this image: its digest under the image's algorithm.
    fn key(&self, digest: ChunkDigest) -> ChunkKey {
        ChunkKey::new(self.image.digester, digest)
    }

    /// Asks the store to evict the chunks of these files and directories (everything
    /// below them) last: the image's prefetch set, needed again at every start. Lasts
    /// until this chain is dropped (the image unmounted).
    pub fn protect_prefetch_set(&self, inodes: &[InodeId]) {
        if inodes.is_empty() {
            return;
        }
        let plan = prefetch::PrefetchPlan {
            inodes: inodes.to_vec(),
            ..Default::default()
        };
        let keys = prefetch::plan_chunks(self, &plan)
            .into_iter()
            .map(|c| self.key(self.info(c).digest))
            .collect();
        self.cache.protect(self.owner, keys);
    }

    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn busy_with_reads(&self) -> bool {
        self.on_demand.load(Ordering::Relaxed) > 0
    }

    /// Up to `size` bytes of regular file `inode` from `offset` (fewer at the end of file),
    /// as ranges of the chunks that hold them: the FUSE reply copies straight from those.
    pub fn read_parts(
        self: &Arc<Self>,
        inode: InodeId,
        offset: u64,
        size: u32,
    ) -> Result<ReadParts, FetchError> {
        self.on_demand.fetch_add(1, Ordering::Relaxed);
        let _guard = OnDemand(&self.on_demand);
        let ino = &self.image.inodes[inode];
        let InodeKind::File(chunks) = &ino.kind else {
            return Err(FetchError::NotAFile(inode));
        };
        if offset >= ino.size || size == 0 {
            return Ok(ReadParts::default());
        }
        let end = ino.size.min(offset + size as u64);
        let cs = self.image.chunk_size as u64;
        let (first, last) = ((offset / cs) as usize, ((end - 1) / cs) as usize);
        let results = match self.all_in_memory(&chunks[first..=last]) {
            Some(hits) => hits,
            None => self.fetch_for_read(chunks, first, last),
        };
        let mut parts = ReadParts::default();
        for (k, result) in results.into_iter().enumerate() {
            let data = result.map_err(|detail| {
                let c = chunks[first + k];
                FetchError::Chunk {
                    blob: self.image.blobs[c.blob as usize].blob_id.clone(),
                    digest: self.info(c).digest,
                    detail,
                }
            })?;
            let chunk_start = (first + k) as u64 * cs;
            let from = offset.saturating_sub(chunk_start) as usize;
            let to = ((end - chunk_start) as usize).min(data.len());
            if from < to {
                parts.len += to - from;
                parts.pieces.push((data, from..to));
            }
        }
        self.metrics.read_bytes.inc_by(parts.len as u64);
        Ok(parts)
    }

    /// The warm path: every requested chunk already decoded in memory, so no window, no
    /// claim. `None` as soon as one is missing.
    fn all_in_memory(&self, refs: &[ChunkRef]) -> Option<Vec<ChunkResult>> {
        let mut hot = self.hot();
        let hits = refs
            .iter()
            .map(|c| hot.get(&self.info(*c).digest).map(Ok))
            .collect::<Option<Vec<_>>>()?;
        drop(hot);
        self.metrics.memory_hits.inc_by(hits.len() as u64);
        Some(hits)
    }

    /// The decoded chunks in memory (a panic elsewhere leaves them usable).
    fn hot(&self) -> std::sync::MutexGuard<'_, HotChunks> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_local(&self, d: &ChunkDigest) -> bool {
        self.hot().lru.contains(d) || self.cache.contains(&self.key(*d))
    }

    fn hot_put(&self, d: ChunkDigest, data: &Arc<Vec<u8>>) {
        self.hot().put(d, data.clone());
    }

    fn info(&self, c: ChunkRef) -> &ChunkInfo {
        &self.image.blobs[c.blob as usize].chunks[c.index as usize]
    }

    fn stored_bytes(&self, refs: &[ChunkRef]) -> u64 {
        refs.iter()
            .map(|c| self.info(*c).compressed_size as u64)
            .sum()
    }

    /// The bytes of each chunk in `refs` (same order), from the cache, the peer mesh or
    /// the origin.
    pub fn fetch_many(&self, refs: &[ChunkRef]) -> Vec<ChunkResult> {
        let Claimed {
            mut found,
            owned,
            waiting,
        } = self.claim(refs);
        self.fetch_claimed(owned, true, &mut found);
        for (digest, slot) in waiting {
            found.insert(digest, slot.wait());
        }
        refs.iter()
            .map(|c| found[&self.info(*c).digest].clone())
            .collect()
    }

    /// [`FetchChain::fetch_many`] for `refs[..now]`, the chunks a reader waits for. The
    /// rest (read amplification) is claimed too, so nobody else fetches it, but fetched
    /// by a background thread: the reader's answer does not wait for the whole window.
    /// Waiting on a slot this caller owns is safe: the background job finishes every slot
    /// it was given, with bytes or an error. Without `ask_peers` (an owner serving
    /// members) the mesh is not asked, nor waited on.
    pub(super) fn fetch_window(
        self: &Arc<Self>,
        refs: &[ChunkRef],
        now: usize,
        ask_peers: bool,
    ) -> Vec<ChunkResult> {
        let Claimed {
            mut found,
            owned,
            mut waiting,
        } = self.claim(refs);
        let needed: HashSet<ChunkDigest> =
            refs[..now].iter().map(|c| self.info(*c).digest).collect();
        let mut later = Vec::new();
        let mut reader_runs = Vec::new();
        if self.backend.remote() || self.peers.get().is_some() {
            // One streamed request per run, reader's chunks and read-ahead together: the
            // reader waits only until its own chunks have crossed the link (from the
            // mesh or the origin).
            let mine = owned
                .iter()
                .filter(|(c, _)| needed.contains(&self.info(*c).digest))
                .map(|(c, slot)| (self.info(*c).digest, slot.clone()));
            waiting.extend(mine);
            later = owned;
        } else {
            // Runs with a chunk the reader waits for are read now (and only those chunks
            // expanded now); runs of read-ahead alone go to the background.
            for run in self.runs(owned) {
                if run
                    .iter()
                    .any(|(c, _)| needed.contains(&self.info(*c).digest))
                {
                    reader_runs.push(run);
                } else {
                    later.extend(run);
                }
            }
        }
        if later
            .iter()
            .all(|(c, _)| needed.contains(&self.info(*c).digest))
        {
            // Nothing to read ahead: fetched on the reader's own thread, one hand-off
            // fewer (each costs a time slice on a loaded machine).
            self.fetch_claimed(later, ask_peers, &mut HashMap::new());
        } else {
            // Counted as on-demand work until done, so prefetch keeps out of its way.
            self.on_demand.fetch_add(1, Ordering::Relaxed);
            let chain = self.clone();
            // Offered to this node's own readers only (an owner's window for members is
            // not read here), and only when someone takes read-ahead.
            let ahead: Vec<(ChunkRef, ChunkDigest)> =
                if ask_peers && self.read_ahead.get().is_some() {
                    later
                        .iter()
                        .map(|(c, _)| (*c, self.info(*c).digest))
                        .filter(|(_, d)| !needed.contains(d))
                        .collect()
                } else {
                    Vec::new()
                };
            background::spawn(move || {
                let _guard = OnDemand(&chain.on_demand);
                let mut found = HashMap::new();
                chain.fetch_claimed(later, ask_peers, &mut found);
                chain.read_ahead_done(
                    ahead
                        .into_iter()
                        .filter_map(|(c, d)| found.get(&d).map(|r| (c, r))),
                );
            });
        }
        for run in reader_runs {
            for (c, result) in self.fetch_run_for_reader(run, &needed) {
                found.insert(self.info(c).digest, result);
            }
        }
        for (digest, slot) in waiting {
            if !needed.contains(&digest) {
                continue;
            }
            let result = if ask_peers {
                slot.wait()
            } else {
                // Two owners each waiting on the other's mesh request would hold each
                // other up until the deadline.
                slot.wait_unless_asking_peers()
                    .unwrap_or_else(|| Err("this node is asking the mesh for it too".into()))
            };
            found.insert(digest, result);
        }
        refs[..now]
            .iter()
            .map(|c| found[&self.info(*c).digest].clone())
            .collect()
    }

    /// Looks each chunk up in memory, claims the misses (one fetch per chunk at a time)
    /// and, for the claims this caller owns, reads the store.
    fn claim(&self, refs: &[ChunkRef]) -> Claimed {
        let mut found: HashMap<ChunkDigest, ChunkResult> = HashMap::new();
        let mut owned: Vec<(ChunkRef, Arc<inflight::Slot>)> = Vec::new();
        let mut waiting: Vec<(ChunkDigest, Arc<inflight::Slot>)> = Vec::new();
        let mut seen: HashSet<ChunkDigest> = HashSet::with_capacity(refs.len());
        for &c in refs {
            let digest = self.info(c).digest;
            if !seen.insert(digest) {
                continue;
            }
            if let Some(data) = self.in_memory(&digest) {
                found.insert(digest, Ok(data));
                continue;
            }
            match self.inflight.claim(digest) {
                Claim::Owner(slot) => {
                    // Only the claim's owner reads the store, so concurrent readers make one
                    // store read too. Another reader may have fetched the chunk between our
                    // memory miss and the claim (it caches before letting go): look again.
                    let local = self.in_memory(&digest).or_else(|| self.in_store(c));
                    match local {
                        Some(data) => {
                            self.inflight.finish(&digest, &slot, Ok(data.clone()));
                            found.insert(digest, Ok(data));
                        }
                        None => owned.push((c, slot)),
                    }
                }
                Claim::Waiter(slot) => waiting.push((digest, slot)),
            }
        }
        Claimed {
            found,
            owned,
            waiting,
        }
    }

    fn in_memory(&self, digest: &ChunkDigest) -> Option<Arc<Vec<u8>>> {
        let data = self.hot().get(digest)?;
        // A memory hit is not a fetch: the traffic split counts where chunks came from.
        self.metrics.memory_hits.inc();
        Some(data)
    }

    fn in_store(&self, c: ChunkRef) -> Option<Arc<Vec<u8>>> {
        let info = self.info(c);
        let data = match self.cache.get(&self.key(info.digest)) {
            Lookup::Hit(data) => data,
            Lookup::Miss => return None,
            Lookup::Corrupt => {
                // Self-healing: the store dropped its bad copy; the chunk is fetched again.
                self.metrics.digest_failures.inc();
                tracing::warn!(chunk = %info.digest, "stored chunk failed verification; refetching");
                return None;
            }
        };
        if data.len() != info.uncompressed_size as usize {
            // The image and the digest disagree on the size: let the origin path report it.
            return None;
        }
        self.metrics
            .record_fetch(ChunkSource::Store, data.len() as u64);
        let data = Arc::new(data);
        self.hot_put(info.digest, &data);
        Some(data)
    }
}

impl Drop for FetchChain {
    fn drop(&mut self) {
        self.cache.release(self.owner);
    }
}
