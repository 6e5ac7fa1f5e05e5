//! Keeping the store within its quota: LRU eviction, dropping entries (evicted or bad),
//! freeing their space, and saving the access times that eviction ranks by.

use super::error::Result;
use super::index::{self, file_key, punch_key, Entry, Totals, META_TOTALS};
use super::{ChunkKey, Inner, WriteState};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

/// Access-time buckets of the eviction histogram: eviction is exact to 1/4096 of the
/// range of access times, with a fixed few kilobytes of memory whatever the store's size.
const BUCKETS: usize = 4096;
/// Entries dropped per index write during eviction.
const DROP_BATCH: usize = 1024;

impl Inner {
    /// Every chunk entry, in key order (undecodable ones skipped with a warning).
    pub(crate) fn scan_chunks(&self) -> Result<Vec<(ChunkKey, Entry)>> {
        let mut out = Vec::new();
        self.for_each_chunk(|k, e| {
            out.push((k, e));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` for every chunk entry, in key order, from a consistent view of the index.
    pub(crate) fn for_each_chunk(
        &self,
        mut f: impl FnMut(ChunkKey, Entry) -> Result<()>,
    ) -> Result<()> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound([index::CHUNK + 1]);
        ro.fill_cache(false);
        let it = self.db.iterator_opt(
            rocksdb::IteratorMode::From(&[index::CHUNK], rocksdb::Direction::Forward),
            ro,
        );
        for item in it {
            let (k, v) = item.map_err(|e| self.index_err(e))?;
            match (ChunkKey::from_index_key(&k), Entry::decode(&v)) {
                (Ok(key), Ok(entry)) => f(key, entry)?,
                (key, entry) => {
                    tracing::warn!(key = %hex::encode(&k), ?key, ?entry, "skipping a bad index record");
                }
            }
        }
        Ok(())
    }

    /// Evicts at least `need` bytes (all chunks if there are fewer): least recently used
    /// first, protected chunks after every unprotected one.
    pub(crate) fn evict_locked(&self, st: &mut WriteState, need: u64) -> Result<(u64, u64)> {
        if need == 0 {
            return Ok((0, 0));
        }
        self.flush_touches_locked(st)?;
        let clock = self.clock.load(Ordering::Relaxed).max(1) as u128;
        let protected = self.protected.read().unwrap_or_else(|p| p.into_inner());
        let rank = |k: &ChunkKey, e: &Entry| {
            let bucket =
                (e.atime.min(clock as u64) as u128 * BUCKETS as u128 / (clock + 1)) as usize;
            usize::from(protected.contains(k)) * BUCKETS + bucket
        };
        // First pass: bytes by rank, to find the rank where eviction stops.
        let mut hist = vec![0u64; 2 * BUCKETS];
        self.for_each_chunk(|k, e| {
            hist[rank(&k, &e)] += e.stored_len as u64;
            Ok(())
        })?;
        let mut below = 0u64;
        let mut cut = hist.len();
        for (i, &b) in hist.iter().enumerate() {
            if below + b >= need {
                cut = i;
                break;
            }
            below += b;
        }
        // Second pass: everything ranked below the cut, and from the cut rank itself only
        // what is still needed.
        let mut at_cut = need.saturating_sub(below);
        let mut victims = Vec::new();
        self.for_each_chunk(|k, e| {
            let r = rank(&k, &e);
            if r < cut || (r == cut && at_cut > 0) {
                if r == cut {
                    at_cut = at_cut.saturating_sub(e.stored_len as u64);
                }
                victims.push((k, e));
            }
            Ok(())
        })?;
        drop(protected);
        let (mut freed, mut count) = (0u64, 0u64);
        for group in victims.chunks(DROP_BATCH) {
            self.drop_entries_locked(st, group, true)?;
            freed += group.iter().map(|(_, e)| e.stored_len as u64).sum::<u64>();
            count += group.len() as u64;
        }
        if count > 0 {
            tracing::debug!(
                chunks = count,
                bytes = freed,
                "evicted least recently used chunks"
            );
        }
        Ok((freed, count))
    }

    /// Deletes entries, then frees their bytes. The deletion (with a note of each hole to
    /// punch) is written before any byte is freed, so a crash in between leaves holes to
    /// punch at the next open, never an entry pointing at freed bytes.
    pub(crate) fn drop_entries_locked(
        &self,
        st: &mut WriteState,
        victims: &[(ChunkKey, Entry)],
        evicted: bool,
    ) -> Result<()> {
        if victims.is_empty() {
            return Ok(());
        }
        let mut files = st.files.clone();
        let mut totals = st.totals;
        let mut touched = BTreeSet::new();
        let mut batch = rocksdb::WriteBatch::default();
        for (k, e) in victims {
            batch.delete(k.index_key());
            batch.put(punch_key(e.file, e.offset), e.stored_len.to_le_bytes());
            let f = files.entry(e.file).or_default();
            f.live_bytes = f.live_bytes.saturating_sub(e.stored_len as u64);
            f.live_chunks = f.live_chunks.saturating_sub(1);
            totals.live_bytes = totals.live_bytes.saturating_sub(e.stored_len as u64);
            totals.chunks = totals.chunks.saturating_sub(1);
            touched.insert(e.file);
        }
        for id in &touched {
            batch.put(file_key(*id), files[id].encode());
        }
        totals.clock = self.clock.load(Ordering::Relaxed);
        batch.put(META_TOTALS, totals.encode());
        self.db.write(batch).map_err(|e| self.index_err(e))?;
        st.files = files;
        st.totals = totals;
        self.publish(st);
        if evicted {
            let c = &self.counters;
            c.evictions
                .fetch_add(victims.len() as u64, Ordering::Relaxed);
            let bytes: u64 = victims.iter().map(|(_, e)| e.stored_len as u64).sum();
            c.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        {
            // Waits for reads in progress: none may be reading these bytes as they go.
            let _exclusive = self.punch.write().unwrap_or_else(|p| p.into_inner());
            for (_, e) in victims {
                if let Err(err) = self
                    .files
                    .punch_chunk(e.file, e.offset, e.stored_len as u64)
                {
                    tracing::warn!(error = %err, "freeing an evicted chunk's space");
                }
            }
        }
        let mut done = rocksdb::WriteBatch::default();
        for (_, e) in victims {
            done.delete(punch_key(e.file, e.offset));
        }
        self.db.write(done).map_err(|e| self.index_err(e))?;
        for id in touched {
            if id != st.active && st.files.get(&id).is_some_and(|f| f.live_chunks == 0) {
                self.delete_file_locked(st, id)?;
            }
        }
        Ok(())
    }

    /// Deletes a data file none of whose chunks is live, then its record.
    pub(crate) fn delete_file_locked(&self, st: &mut WriteState, id: u32) -> Result<()> {
        {
            let _exclusive = self.punch.write().unwrap_or_else(|p| p.into_inner());
            self.files.remove(id)?;
        }
        self.db
            .delete(file_key(id))
            .map_err(|e| self.index_err(e))?;
        st.files.remove(&id);
        Ok(())
    }

    /// Saves the access times recorded by reads (called by the writer about once a second).
    pub(crate) fn save_touches(&self) {
        if self
            .touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return;
        }
        let mut st = self.lock_state();
        if let Err(e) = self.flush_touches_locked(&mut st) {
            tracing::debug!(error = %e, "saving chunk access times");
        }
    }

    pub(crate) fn flush_touches_locked(&self, st: &mut WriteState) -> Result<()> {
        let touched = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()));
        if touched.is_empty() {
            return Ok(());
        }
        let mut batch = rocksdb::WriteBatch::default();
        for (k, t) in touched {
            let Some(raw) = self
                .db
                .get_pinned(k.index_key())
                .map_err(|e| self.index_err(e))?
            else {
                continue;
            };
            let Ok(mut e) = Entry::decode(&raw) else {
                continue;
            };
            if t > e.atime {
                e.atime = t;
                batch.put(k.index_key(), e.encode());
            }
        }
        let totals = Totals {
            clock: self.clock.load(Ordering::Relaxed),
            ..st.totals
        };
        batch.put(META_TOTALS, totals.encode());
        self.db.write(batch).map_err(|e| self.index_err(e))?;
        st.totals = totals;
        Ok(())
    }
}
