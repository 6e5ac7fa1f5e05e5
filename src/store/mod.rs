//! The node's chunk store: every chunk the node has fetched, from any image, kept on local
//! disk under its digest, bounded by a quota, checked on every read, and able to open
//! after any crash. It is the first tier of the fetch chain ([`crate::fetch`]).
//!
//! # Layout and why
//!
//! - **Index in RocksDB** (`DIR/index`), keyed by algorithm + digest, so a blake3 and a
//!   sha256 digest can never name the same entry. An entry says where the bytes are (data
//!   file, offset, stored length), the plain length, the codec and the last access time.
//!   Records are described in [`index`].
//! - **Bytes in large append-only data files** (`DIR/data/NNNNNNNN.dat`), not in RocksDB
//!   values or RocksDB's blob files: a chunk is written once and read many times, and an
//!   LSM tree would copy it again at every compaction; a pread from a plain file is the
//!   cheapest read there is, and the kernel's page cache does the caching. Evicted chunks
//!   give their space back at once by punching holes, so nothing ever copies live chunks.
//! - **Bytes before the index entry.** A background writer takes queued chunks in batches,
//!   appends them, fdatasyncs the file once per batch, and only then writes the batch's index
//!   entries, the file's committed length and the store totals in one atomic RocksDB write
//!   batch. A crash can lose a chunk, never make an entry point at bytes that are not there.
//!   The cost of that sync was measured (see "Figures" below) and is small per batch.
//! - **Repair at open costs O(files), not O(chunks)**: bytes past a file's committed length
//!   (a write cut short) are truncated; files the index never committed are deleted; holes
//!   recorded as due but not yet punched are punched. `warren store gc` does the full check
//!   (every entry against the files), and `warren store verify` hashes every chunk.
//! - **Verification on read**: every chunk read from a data file is hashed with its key's
//!   algorithm before it is returned; a bad one is dropped from the index (and its space
//!   freed) and reported as [`Lookup::Corrupt`], so the chain fetches it again and counts it.
//! - **Quota and LRU eviction**: a write that would pass the high-water mark first evicts
//!   down to the low-water mark. Reads record their access time in memory and the writer
//!   persists them about once a second; eviction ranks chunks by access time in two scans
//!   of the index with a fixed-size histogram (memory only for the chunks it evicts), and chunks in a
//!   protected set (a mounted image's prefetch list, [`Store::protect`]) rank after all
//!   others, so they go last.
//! - **Plain bytes by default** ([`StoreCompression::None`]): on Debian /usr data, lz4
//!   stores 1.5-1.7x smaller and zstd 1.9-2.4x, but a hit then costs a decode: verified
//!   1 MiB hits run at 5.6 GiB/s plain, 2.0 GiB/s lz4, 1.4 GiB/s zstd (64 KiB: 3.9, 1.8,
//!   0.5 GiB/s). Hits are the store's whole point and disk is the cheaper resource on a
//!   cache node (the quota can be raised), so plain it is; `compression = "lz4"` or
//!   `"zstd"` trades hit speed for capacity.
//!
//! # Figures
//!
//! `cargo bench --bench store` on the 2-core CI machine (throughput, median), against one
//! plain file per chunk in a directory:
//!
//! | | 4 KiB | 64 KiB | 1 MiB |
//! | --- | --- | --- | --- |
//! | put, store, synced per batch | 135 MiB/s | 314 MiB/s | 190 MiB/s |
//! | put, store, no sync | 213 MiB/s | 300 MiB/s | 258 MiB/s |
//! | put, files, no fsync | 138 MiB/s | 52 MiB/s | 294 MiB/s |
//! | put, files, fsync each | 2.8 MiB/s | 10.7 MiB/s | 165 MiB/s |
//! | get, store, verified | 593 MiB/s | 3.1 GiB/s | 4.1 GiB/s |
//! | get, store, not verified | 885 MiB/s | 8.2 GiB/s | 11.6 GiB/s |
//! | get, files, hashed | 445 MiB/s | 3.0 GiB/s | 4.5 GiB/s |
//! | get, files, not hashed | 592 MiB/s | 6.1 GiB/s | 17.4 GiB/s |
//! | blake3 / sha256 of one chunk | 1.3 / 1.0 GiB/s | 5.8 / 1.3 GiB/s | 7.0 / 1.9 GiB/s |
//!
//! Index lookups: 235,000/s that hit, 600,000/s that miss (the bloom filter answers).
//! The sync costs 0-37% of write throughput, off the read path (the writer is a background
//! thread), and makes the store's promise hold across power loss, so it is on. Verifying a
//! hit costs one blake3 pass, 140 us per MiB; a FUSE read of the same MiB costs more than
//! that, and a bad chunk served is a wrong file in a container, so verification is on.

mod config;
mod error;
mod files;
pub mod index;
mod maintain;
mod repair;
mod writer;

pub use config::{
    Limits, StoreCompression, StoreOptions, DEFAULT_DATA_FILE_BYTES, DEFAULT_HIGH_WATER_PERCENT,
    DEFAULT_LOW_WATER_PERCENT, DEFAULT_QUOTA_FREE_PERCENT, MIN_DATA_FILE_BYTES,
};
pub use error::StoreError;
pub use index::ChunkKey;
pub use repair::{GcReport, RepairReport, VerifyReport};

use error::Result;
use files::DataFiles;
use index::{Entry, FileStat, Totals};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The chunk's bytes, checked against its digest (when `verify_on_read` is on).
    Hit(Vec<u8>),
    Miss,
    /// The stored copy was bad (wrong digest, unreadable, cut short); it has been dropped.
    Corrupt,
}

/// The store's figures: persistent ones (size, chunks) and this process's counters.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StoreStats {
    pub chunks: u64,
    /// Bytes of chunk data in the data files (as stored: compressed when compression is on).
    pub bytes: u64,
    pub quota_bytes: u64,
    pub high_water_bytes: u64,
    pub low_water_bytes: u64,
    pub data_files: u64,
    /// Bytes the store takes on disk: data files (holes excluded) and the index.
    pub disk_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub verify_failures: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub written_chunks: u64,
    pub written_bytes: u64,
    pub write_failures: u64,
    /// Chunks not stored because the write queue was full.
    pub dropped_writes: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    verify_failures: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    written_chunks: AtomicU64,
    written_bytes: AtomicU64,
    write_failures: AtomicU64,
    dropped_writes: AtomicU64,
}

/// What only one thread at a time may change: the append point and the totals.
pub(crate) struct WriteState {
    pub(crate) active: u32,
    pub(crate) end: u64,
    pub(crate) files: BTreeMap<u32, FileStat>,
    pub(crate) totals: Totals,
}

/// Chunk keys that eviction takes last, by owner (one owner per mounted image).
#[derive(Default)]
pub(crate) struct Protected {
    owners: HashMap<u64, Vec<ChunkKey>>,
    refs: HashMap<ChunkKey, u32>,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) db: rocksdb::DB,
    pub(crate) opts: StoreOptions,
    pub(crate) limits: Limits,
    pub(crate) files: DataFiles,
    pub(crate) read_only: bool,
    /// Readers hold it shared from the index lookup to the end of their pread; holes are
    /// punched and files deleted only while it is held exclusively, so a reader never sees
    /// bytes freed under it.
    pub(crate) punch: RwLock<()>,
    pub(crate) state: Mutex<WriteState>,
    /// Copies of the totals, readable without the state lock.
    pub(crate) live_bytes: AtomicU64,
    pub(crate) chunks: AtomicU64,
    pub(crate) clock: AtomicU64,
    /// Access times of chunks read since the writer last persisted them.
    pub(crate) touched: Mutex<HashMap<ChunkKey, u64>>,
    pub(crate) protected: RwLock<Protected>,
    pub(crate) counters: Counters,
    /// Bytes waiting in the write queue.
    pub(crate) queued_bytes: AtomicU64,
    /// Set while writes keep failing, so a full disk is logged once, not per chunk.
    pub(crate) failing: AtomicBool,
}

/// The chunk store. Cheap to share behind an `Arc`; dropping the last handle stops the
/// writer after it has stored what was queued.
pub struct Store {
    inner: Arc<Inner>,
    tx: Option<SyncSender<writer::Msg>>,
    writer: Option<std::thread::JoinHandle<()>>,
    repair: RepairReport,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for reading and writing, repairing
    /// what a killed process left. Fails with [`StoreError::Busy`] while another process
    /// has it open.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Store> {
        opts.validate().map_err(|detail| StoreError::Corrupt {
            what: "options".into(),
            detail,
        })?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| StoreError::io(&data, e))?;
        // The pack cache that came before the store: its chunks are simply fetched again.
        for old in ["chunks.data", "chunks.idx"] {
            let _ = std::fs::remove_file(dir.join(old));
        }
        let db = repair::open_db(dir, false)?;
        let files = DataFiles::new(data);
        let (state, report) = repair::on_open(&db, &files)?;
        if report != RepairReport::default() {
            tracing::info!(dir = %dir.display(), ?report, "chunk store repaired after an unclean stop");
        }
        let free = files::free_space(dir).map_err(|e| StoreError::io(dir, e))?;
        let limits = Limits::new(opts, free, state.totals.live_bytes);
        repair::save_limits(&db, dir, &limits)?;
        let inner = Arc::new(Inner::new(
            dir,
            db,
            opts.clone(),
            limits,
            files,
            state,
            false,
        ));
        // A quota lowered since the last run applies at once.
        let over = inner.live_bytes.load(Ordering::Relaxed);
        if over > limits.high_water_bytes {
            let mut st = inner.lock_state();
            inner.evict_locked(&mut st, over - limits.low_water_bytes)?;
        }
        let (tx, handle) = writer::spawn(inner.clone())?;
        Ok(Store {
            inner,
            tx: Some(tx),
            writer: Some(handle),
            repair: report,
        })
    }

    /// Opens the store for reading only, beside a node that may be writing it: for
    /// `warren store stats` and `verify`. Nothing is repaired, dropped or written.
    pub fn open_read_only(dir: &Path) -> Result<Store> {
        let db = repair::open_db(dir, true)?;
        let files = DataFiles::new(dir.join("data"));
        let state = repair::load_state(&db)?;
        let limits = repair::load_limits(&db)?.unwrap_or(Limits {
            quota_bytes: 0,
            high_water_bytes: 0,
            low_water_bytes: 0,
        });
        let opts = StoreOptions::default();
        let inner = Arc::new(Inner::new(dir, db, opts, limits, files, state, true));
        Ok(Store {
            inner,
            tx: None,
            writer: None,
            repair: RepairReport::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// What opening the store had to repair.
    pub fn repair_report(&self) -> &RepairReport {
        &self.repair
    }

    /// The chunk's bytes, verified; a bad copy is dropped and reported as corrupt.
    pub fn get(&self, key: &ChunkKey) -> Lookup {
        self.inner.get(key)
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        matches!(self.inner.db.get_pinned(key.index_key()), Ok(Some(_)))
    }

    /// Queues a verified chunk for the background writer. Returns false when it was not
    /// queued (the queue is full, or the store is read-only): the chunk is then just not
    /// stored, which costs a refetch later, never a failed read now.
    pub fn put(&self, key: &ChunkKey, data: &Arc<Vec<u8>>) -> bool {
        let Some(tx) = &self.tx else { return false };
        let len = data.len() as u64;
        if self.inner.queued_bytes.load(Ordering::Relaxed) + len > writer::QUEUE_BYTES {
            self.inner
                .counters
                .dropped_writes
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.inner.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if tx.try_send(writer::Msg::Put(*key, data.clone())).is_err() {
            self.inner.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.inner
                .counters
                .dropped_writes
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Stores chunks now, on the caller's thread, as one batch (one sync). Returns how many
    /// were new. The caller vouches that each `data` is the chunk its key names.
    pub fn insert_batch(&self, items: Vec<(ChunkKey, Arc<Vec<u8>>)>) -> Result<usize> {
        self.inner.commit(items)
    }

    /// [`Store::insert_batch`] for one chunk.
    pub fn insert(&self, key: &ChunkKey, data: &[u8]) -> Result<bool> {
        Ok(self.insert_batch(vec![(*key, Arc::new(data.to_vec()))])? == 1)
    }

    /// Drops a chunk. Returns whether it was there.
    pub fn remove(&self, key: &ChunkKey) -> Result<bool> {
        self.inner.remove(key)
    }

    /// Waits until everything queued so far is stored and recent access times are saved.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if tx.send(writer::Msg::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Marks `keys` as needed by `owner` (a mounted image's prefetch set): eviction takes
    /// them only when nothing else is left. Replaces what `owner` protected before.
    pub fn protect(&self, owner: u64, keys: Vec<ChunkKey>) {
        let mut p = self
            .inner
            .protected
            .write()
            .unwrap_or_else(|p| p.into_inner());
        p.release(owner);
        for k in &keys {
            *p.refs.entry(*k).or_insert(0) += 1;
        }
        p.owners.insert(owner, keys);
    }

    /// Ends `owner`'s protection (the image was unmounted).
    pub fn release(&self, owner: u64) {
        self.inner
            .protected
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .release(owner);
    }

    pub fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    /// Where a chunk's stored bytes are: data file, offset, length. For tools and tests.
    pub fn locate(&self, key: &ChunkKey) -> Option<(PathBuf, u64, u32)> {
        let raw = self.inner.db.get_pinned(key.index_key()).ok()??;
        let e = Entry::decode(&raw).ok()?;
        Some((self.inner.files.path(e.file), e.offset, e.stored_len))
    }

    /// Every key in the store, in index order.
    pub fn keys(&self) -> Result<Vec<ChunkKey>> {
        Ok(self
            .inner
            .scan_chunks()?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Hashes every chunk; with `repair` (not on a read-only store) bad ones are dropped.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport> {
        self.inner.verify(repair)
    }

    /// The full check (every entry against its file, holes punched in unreferenced
    /// ranges, unreferenced files deleted, totals recounted), then eviction down to
    /// `target_bytes` (default: the low-water mark) if the store is above it.
    pub fn gc(&self, target_bytes: Option<u64>) -> Result<GcReport> {
        self.inner.gc(target_bytes)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if !self.inner.read_only {
            let mut st = self.inner.lock_state();
            if let Err(e) = self.inner.flush_touches_locked(&mut st) {
                tracing::warn!(error = %e, "saving chunk access times");
            }
        }
    }
}

impl Protected {
    fn release(&mut self, owner: u64) {
        for k in self.owners.remove(&owner).unwrap_or_default() {
            if let Some(n) = self.refs.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&k);
                }
            }
        }
    }

    pub(crate) fn contains(&self, key: &ChunkKey) -> bool {
        self.refs.contains_key(key)
    }
}

impl Inner {
    fn new(
        dir: &Path,
        db: rocksdb::DB,
        opts: StoreOptions,
        limits: Limits,
        files: DataFiles,
        state: WriteState,
        read_only: bool,
    ) -> Inner {
        Inner {
            dir: dir.to_path_buf(),
            db,
            opts,
            limits,
            files,
            read_only,
            punch: RwLock::new(()),
            live_bytes: AtomicU64::new(state.totals.live_bytes),
            chunks: AtomicU64::new(state.totals.chunks),
            clock: AtomicU64::new(state.totals.clock),
            state: Mutex::new(state),
            touched: Mutex::new(HashMap::new()),
            protected: RwLock::new(Protected::default()),
            counters: Counters::default(),
            queued_bytes: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next access time.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes the lock-free copies of the totals match `st`.
    pub(crate) fn publish(&self, st: &WriteState) {
        self.live_bytes
            .store(st.totals.live_bytes, Ordering::Relaxed);
        self.chunks.store(st.totals.chunks, Ordering::Relaxed);
    }

    fn get(&self, key: &ChunkKey) -> Lookup {
        let c = &self.counters;
        let guard = self.punch.read().unwrap_or_else(|p| p.into_inner());
        let entry = match self.db.get_pinned(key.index_key()) {
            Ok(Some(raw)) => Entry::decode(&raw),
            Ok(None) => {
                c.misses.fetch_add(1, Ordering::Relaxed);
                return Lookup::Miss;
            }
            Err(e) => {
                tracing::warn!(chunk = %key, error = %e, "chunk store index read failed");
                c.misses.fetch_add(1, Ordering::Relaxed);
                return Lookup::Miss;
            }
        };
        let read = entry.and_then(|e| {
            let stored = self
                .files
                .read_at(e.file, e.offset, e.stored_len as usize)?;
            Ok((e, stored))
        });
        drop(guard);
        let checked = read.and_then(|(e, stored)| Ok((e, self.decode(key, &e, &stored)?)));
        match checked {
            Ok((_, data)) => {
                c.hits.fetch_add(1, Ordering::Relaxed);
                let t = self.tick();
                self.touched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(*key, t);
                Lookup::Hit(data)
            }
            Err(e) => {
                c.verify_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(chunk = %key, error = %e, "stored chunk is bad; dropping it");
                if !self.read_only {
                    if let Err(e) = self.remove(key) {
                        tracing::warn!(chunk = %key, error = %e, "dropping a bad chunk");
                    }
                }
                Lookup::Corrupt
            }
        }
    }

    /// Expands stored bytes and checks them against the key.
    pub(crate) fn decode(&self, key: &ChunkKey, e: &Entry, stored: &[u8]) -> Result<Vec<u8>> {
        let data = e
            .codec
            .decompress(stored, e.plain_len as usize)
            .map_err(|err| index::corrupt("chunk data", format!("{key}: {err}")))?;
        if self.opts.verify_on_read && !key.matches(&data) {
            return Err(index::corrupt(
                "chunk data",
                format!("{key}: digest mismatch"),
            ));
        }
        Ok(data)
    }

    fn remove(&self, key: &ChunkKey) -> Result<bool> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.dir.clone()));
        }
        let mut st = self.lock_state();
        let raw = self
            .db
            .get_pinned(key.index_key())
            .map_err(|e| self.index_err(e))?;
        let Some(raw) = raw else { return Ok(false) };
        match Entry::decode(&raw) {
            Ok(e) => self.drop_entries_locked(&mut st, &[(*key, e)], false)?,
            // An entry that cannot even be decoded points at nothing: just delete it.
            Err(_) => self
                .db
                .delete(key.index_key())
                .map_err(|e| self.index_err(e))?,
        }
        Ok(true)
    }

    pub(crate) fn index_err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Index {
            path: self.dir.join("index"),
            source,
        }
    }

    fn stats(&self) -> StoreStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let on_disk = self.files.on_disk().unwrap_or_default();
        let data_disk: u64 = on_disk.iter().map(|f| f.2).sum();
        StoreStats {
            chunks: get(&self.chunks),
            bytes: get(&self.live_bytes),
            quota_bytes: self.limits.quota_bytes,
            high_water_bytes: self.limits.high_water_bytes,
            low_water_bytes: self.limits.low_water_bytes,
            data_files: on_disk.len() as u64,
            disk_bytes: data_disk + files::disk_usage(&self.dir.join("index")),
            hits: get(&c.hits),
            misses: get(&c.misses),
            verify_failures: get(&c.verify_failures),
            evictions: get(&c.evictions),
            evicted_bytes: get(&c.evicted_bytes),
            written_chunks: get(&c.written_chunks),
            written_bytes: get(&c.written_bytes),
            write_failures: get(&c.write_failures),
            dropped_writes: get(&c.dropped_writes),
        }
    }
}
