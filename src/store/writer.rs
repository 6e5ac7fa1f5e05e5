//! Writing chunks: a background thread takes queued chunks in batches and commits each batch
//! the safe way round (bytes appended and synced, then the index entries). Batching is what
//! makes the sync affordable: one fdatasync and one RocksDB write per batch, not per chunk.

use super::error::{Result, StoreError};
use super::files::{align, BLOCK};
use super::index::{file_key, Entry, FileStat, Totals, META_TOTALS};
use super::{ChunkKey, Inner, WriteState};
use crate::rafs::Compressor;
use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Chunks waiting in the queue at most; beyond it new chunks are not stored. Room for a
/// whole image of small files read at once (the bytes are bounded by `QUEUE_BYTES`).
const QUEUE_CHUNKS: usize = 16384;
/// Bytes waiting in the queue at most (the queue holds chunks in memory).
pub(crate) const QUEUE_BYTES: u64 = 256 << 20;
/// A batch ends at this many bytes or chunks, so one sync covers a lot but a reader's
/// chunk does not wait behind an unbounded batch.
const BATCH_BYTES: u64 = 16 << 20;
const BATCH_CHUNKS: usize = 1024;
/// How often access times recorded by reads are saved to the index.
const TOUCH_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) enum Msg {
    Put(ChunkKey, Arc<Vec<u8>>),
    /// Answered once everything queued before it is committed.
    Flush(SyncSender<()>),
}

pub(crate) fn spawn(inner: Arc<Inner>) -> Result<(SyncSender<Msg>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = sync_channel(QUEUE_CHUNKS);
    let handle = std::thread::Builder::new()
        .name("warren-store-writer".into())
        .spawn(move || {
            lower_priority();
            run(&inner, rx)
        })
        .map_err(|e| StoreError::io("writer thread", e))?;
    Ok((tx, handle))
}

/// The writer yields the CPU to readers: what it writes is already being served from
/// memory, so under load it falls behind (within the queue's bounds) and catches up after.
fn lower_priority() {
    // SAFETY: plain syscalls on this thread's own id; a failure only leaves the priority as is.
    let rc = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            WRITER_NICE,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the store writer's priority");
    }
}

/// The writer's nice value: well behind readers, not starved.
const WRITER_NICE: libc::c_int = 10;

fn run(inner: &Inner, rx: Receiver<Msg>) {
    let mut last_touch_save = Instant::now();
    loop {
        let first = match rx.recv_timeout(TOUCH_INTERVAL) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                inner.save_touches();
                last_touch_save = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        let mut waiters = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Put(k, d) => {
                    bytes += d.len() as u64;
                    batch.push((k, d));
                }
                Msg::Flush(w) => waiters.push(w),
            }
            if bytes < BATCH_BYTES && batch.len() < BATCH_CHUNKS {
                next = rx.try_recv().ok();
            }
        }
        inner.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        if !batch.is_empty() {
            // Errors are counted and logged inside; the read that fetched these chunks has
            // already been served, so a failed write only costs a later refetch.
            let _ = inner.commit(batch);
        }
        if !waiters.is_empty() || last_touch_save.elapsed() >= TOUCH_INTERVAL {
            inner.save_touches();
            last_touch_save = Instant::now();
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// One chunk ready to append.
struct Encoded {
    key: ChunkKey,
    plain_len: u32,
    codec: Compressor,
    bytes: Stored,
}

/// A chunk's bytes as appended: compressed (new bytes) or plain (the queued chunk itself,
/// not a copy of it).
enum Stored {
    Compressed(Vec<u8>),
    Plain(Arc<Vec<u8>>),
}

impl std::ops::Deref for Stored {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Stored::Compressed(v) => v,
            Stored::Plain(v) => v,
        }
    }
}

impl Inner {
    /// Stores new chunks of `items` as one batch; returns how many were new.
    pub(crate) fn commit(&self, items: Vec<(ChunkKey, Arc<Vec<u8>>)>) -> Result<usize> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.dir.clone()));
        }
        let mut st = self.lock_state();
        let result = self.commit_locked(&mut st, items);
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %self.dir.display(), "chunk store writes work again");
                }
            }
            Err(e) => {
                self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, full = e.is_disk_full(),
                        "cannot store chunks; reads go on from the origin (logged once until writes work again)");
                }
            }
        }
        result
    }

    fn commit_locked(
        &self,
        st: &mut WriteState,
        items: Vec<(ChunkKey, Arc<Vec<u8>>)>,
    ) -> Result<usize> {
        let mut seen = HashSet::new();
        let mut todo = Vec::new();
        for (key, data) in items {
            if !seen.insert(key) {
                continue;
            }
            if self
                .db
                .get_pinned(key.index_key())
                .map_err(|e| self.index_err(e))?
                .is_some()
            {
                continue;
            }
            let enc = self.encode(key, &data);
            let size = enc.bytes.len() as u64;
            if size > self.limits.low_water_bytes {
                // Evicting for it would empty most of the store for one chunk.
                tracing::debug!(chunk = %key, size, "chunk too large for the store's quota; not stored");
                continue;
            }
            todo.push(enc);
        }
        // A batch larger than the room between the water marks is written in parts, so
        // that making room for it never evicts more than that room (nor protected chunks
        // that a smaller write would have spared).
        let room = (self.limits.high_water_bytes - self.limits.low_water_bytes).max(1);
        let mut stored = 0;
        let mut group = Vec::new();
        let mut group_bytes = 0u64;
        for enc in todo {
            let len = enc.bytes.len() as u64;
            if !group.is_empty() && group_bytes + len > room {
                stored += self.append_locked(st, std::mem::take(&mut group))?;
                group_bytes = 0;
            }
            group_bytes += len;
            group.push(enc);
        }
        if !group.is_empty() {
            stored += self.append_locked(st, group)?;
        }
        Ok(stored)
    }

    /// Appends chunks as one write and one index batch, evicting first if they would take
    /// the store past the high-water mark.
    fn append_locked(&self, st: &mut WriteState, mut todo: Vec<Encoded>) -> Result<usize> {
        let total: u64 = todo.iter().map(|e| e.bytes.len() as u64).sum();
        let high = self.limits.high_water_bytes;
        if st.totals.live_bytes + total > high {
            let target = self.limits.low_water_bytes.saturating_sub(total);
            self.evict_locked(st, st.totals.live_bytes.saturating_sub(target))?;
            // Eviction takes everything if need be, so only chunks beyond the whole quota
            // are still left over.
            while st.totals.live_bytes + todo.iter().map(|e| e.bytes.len() as u64).sum::<u64>()
                > high
            {
                todo.pop();
            }
            if todo.is_empty() {
                return Ok(0);
            }
        }
        let total: u64 = todo.iter().map(|e| e.bytes.len() as u64).sum();
        if st.end >= self.opts.data_file_bytes {
            self.roll_locked(st)?;
        }
        let file = match self.files.get(st.active) {
            Ok(f) => f,
            Err(_) => self.files.create(st.active)?,
        };
        // Chunks of a block or more start on a block boundary, and so does whatever follows
        // them, so their blocks are their own to punch (see `files::BLOCK`); smaller chunks
        // are packed together, as punching one could not free a block anyway.
        let start = align(st.end);
        let mut offsets = Vec::with_capacity(todo.len());
        let mut buf = Vec::with_capacity(total as usize + todo.len() * BLOCK as usize);
        let mut after_big = false;
        for e in &todo {
            let big = e.bytes.len() as u64 >= BLOCK;
            if big || after_big {
                buf.resize(align(buf.len() as u64) as usize, 0);
            }
            after_big = big;
            offsets.push(start + buf.len() as u64);
            buf.extend_from_slice(&e.bytes);
        }
        let written = file.write_all_at(&buf, start).and_then(|_| {
            if self.opts.sync {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Give back whatever part of the write landed: nothing points at it.
            let _ = file.set_len(st.end);
            return Err(StoreError::io(self.files.path(st.active), e));
        }
        let mut batch = rocksdb::WriteBatch::default();
        for (e, &offset) in todo.iter().zip(&offsets) {
            let entry = Entry {
                file: st.active,
                offset,
                stored_len: e.bytes.len() as u32,
                plain_len: e.plain_len,
                codec: e.codec,
                atime: self.tick(),
            };
            batch.put(e.key.index_key(), entry.encode());
        }
        let offset = start + buf.len() as u64;
        let old = st.files.get(&st.active).copied().unwrap_or_default();
        let stat = FileStat {
            committed: offset,
            live_bytes: old.live_bytes + total,
            live_chunks: old.live_chunks + todo.len() as u64,
        };
        let totals = Totals {
            live_bytes: st.totals.live_bytes + total,
            chunks: st.totals.chunks + todo.len() as u64,
            clock: self.clock.load(Ordering::Relaxed),
        };
        batch.put(file_key(st.active), stat.encode());
        batch.put(META_TOTALS, totals.encode());
        if let Err(e) = self.db.write(batch) {
            let _ = file.set_len(st.end);
            return Err(self.index_err(e));
        }
        st.end = offset;
        st.files.insert(st.active, stat);
        st.totals = totals;
        self.publish(st);
        let c = &self.counters;
        c.written_chunks
            .fetch_add(todo.len() as u64, Ordering::Relaxed);
        c.written_bytes.fetch_add(total, Ordering::Relaxed);
        Ok(todo.len())
    }

    /// The bytes to append for a chunk: compressed when the store compresses and that
    /// makes it smaller, else plain.
    fn encode(&self, key: ChunkKey, data: &Arc<Vec<u8>>) -> Encoded {
        let codec = self.opts.compression.codec();
        let (codec, bytes) = match codec.compress(data) {
            Some(c) => (codec, Stored::Compressed(c)),
            None => (Compressor::None, Stored::Plain(data.clone())),
        };
        Encoded {
            key,
            plain_len: data.len() as u32,
            codec,
            bytes,
        }
    }

    /// Starts the next data file; the full one is deleted if nothing in it is live.
    fn roll_locked(&self, st: &mut WriteState) -> Result<()> {
        let old = st.active;
        let next = old + 1;
        self.files.create(next)?;
        st.active = next;
        st.end = 0;
        if st.files.get(&old).is_some_and(|f| f.live_chunks == 0) {
            self.delete_file_locked(st, old)?;
        }
        Ok(())
    }
}
