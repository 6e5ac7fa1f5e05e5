//! Opening the index, repairing what a killed process left behind, and the two whole-store
//! checks behind `warren store verify` (hash every chunk) and `warren store gc` (every entry
//! against its file, unreferenced space freed, totals recounted).

use super::config::Limits;
use super::error::{Result, StoreError};
use super::files::DataFiles;
use super::index::{self, file_id_of, file_key, punch_of, FileStat, Totals, FORMAT_VERSION};
use super::{ChunkKey, Entry, Inner, WriteState};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;

const META_LIMITS: &[u8] = b"mlimits";

/// What opening the store repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// Data files cut back to their committed length (a write the process died in).
    pub truncated_files: u64,
    pub truncated_bytes: u64,
    /// Data files deleted: never committed, or with no live chunk left.
    pub removed_files: u64,
    /// Holes punched that an eviction had recorded but not yet punched.
    pub punched: u64,
    /// Data files the index counts on but that are gone (their chunks fail on read and are
    /// dropped; `gc` drops them all at once).
    pub missing_files: u64,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub chunks: u64,
    pub bytes: u64,
    /// `algo:digest` and why, for each bad chunk.
    pub bad: Vec<(String, String)>,
    /// Bad chunks dropped from the index (with `repair`).
    pub dropped: u64,
}

/// What `gc` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Entries dropped because their bytes are not in their data file.
    pub dangling_entries: u64,
    pub removed_files: u64,
    /// Whether the saved totals or file records disagreed with the entries (and were fixed).
    pub recounted: bool,
    pub evicted_chunks: u64,
    pub evicted_bytes: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub disk_bytes_before: u64,
    pub disk_bytes_after: u64,
}

fn db_options(create: bool) -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(create);
    // Small memtables and logs: the index is a few dozen bytes per chunk, and a store on a
    // small disk must not lose megabytes to preallocated logs.
    o.set_write_buffer_size(4 << 20);
    o.set_max_total_wal_size(16 << 20);
    o.set_keep_log_file_num(2);
    o.set_max_log_file_size(1 << 20);
    o.set_log_level(rocksdb::LogLevel::Warn);
    // Digests do not compress.
    o.set_compression_type(rocksdb::DBCompressionType::None);
    let mut table = rocksdb::BlockBasedOptions::default();
    // Misses (every chunk not yet fetched) answer from the filter, without a block read.
    table.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&table);
    o
}

pub(crate) fn open_db(dir: &Path, read_only: bool) -> Result<rocksdb::DB> {
    let path = dir.join("index");
    let opened = if read_only {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no chunk store here"),
            ));
        }
        rocksdb::DB::open_for_read_only(&db_options(false), &path, false)
    } else {
        rocksdb::DB::open(&db_options(true), &path)
    };
    let db = opened.map_err(|source| {
        let s = source.to_string();
        if s.contains("lock") || s.contains("LOCK") {
            StoreError::Busy(dir.to_path_buf())
        } else {
            StoreError::Index {
                path: path.clone(),
                source,
            }
        }
    })?;
    let err = |source| StoreError::Index {
        path: path.clone(),
        source,
    };
    match db.get(index::META_VERSION).map_err(err)? {
        Some(v) => {
            let found = v
                .as_slice()
                .try_into()
                .map(u32::from_le_bytes)
                .map_err(|_| index::corrupt("version", format!("{} bytes", v.len())))?;
            if found != FORMAT_VERSION {
                return Err(StoreError::Version {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
        None if !read_only => db
            .put(index::META_VERSION, FORMAT_VERSION.to_le_bytes())
            .map_err(err)?,
        None => {}
    }
    Ok(db)
}

fn scan_prefix(
    db: &rocksdb::DB,
    prefix: u8,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut ro = rocksdb::ReadOptions::default();
    ro.set_iterate_upper_bound([prefix + 1]);
    let it = db.iterator_opt(
        rocksdb::IteratorMode::From(&[prefix], rocksdb::Direction::Forward),
        ro,
    );
    for item in it {
        let (k, v) = item.map_err(|source| StoreError::Index {
            path: "index".into(),
            source,
        })?;
        f(&k, &v)?;
    }
    Ok(())
}

/// The totals and file records as saved; the append point after the last file's
/// committed bytes.
pub(crate) fn load_state(db: &rocksdb::DB) -> Result<WriteState> {
    let idx = |source| StoreError::Index {
        path: "index".into(),
        source,
    };
    let totals = match db.get(index::META_TOTALS).map_err(idx)? {
        Some(v) => Totals::decode(&v)?,
        None => Totals::default(),
    };
    let mut files = BTreeMap::new();
    scan_prefix(db, index::FILE, |k, v| {
        files.insert(file_id_of(k)?, FileStat::decode(v)?);
        Ok(())
    })?;
    let (active, end) = match files.iter().next_back() {
        Some((id, f)) => (*id, f.committed),
        None => (1, 0),
    };
    Ok(WriteState {
        active,
        end,
        files,
        totals,
    })
}

/// Brings data files in line with the index: punches holes still due, cuts writes that
/// did not commit, deletes files the index does not need. O(files + pending holes).
pub(crate) fn on_open(db: &rocksdb::DB, files: &DataFiles) -> Result<(WriteState, RepairReport)> {
    let mut report = RepairReport::default();
    let idx = |source| StoreError::Index {
        path: "index".into(),
        source,
    };
    let mut punched = rocksdb::WriteBatch::default();
    scan_prefix(db, index::PUNCH, |k, v| {
        let (file, offset, len) = punch_of(k, v)?;
        files.punch_chunk(file, offset, len as u64)?;
        punched.delete(k);
        report.punched += 1;
        Ok(())
    })?;
    db.write(punched).map_err(idx)?;
    let mut st = load_state(db)?;
    let mut on_disk = HashMap::new();
    for (id, len, _) in files.on_disk()? {
        on_disk.insert(id, len);
        match st.files.get(&id) {
            None => {
                files.remove(id)?;
                report.removed_files += 1;
            }
            Some(f) if len > f.committed => {
                files.truncate(id, f.committed)?;
                report.truncated_files += 1;
                report.truncated_bytes += len - f.committed;
            }
            Some(f) if len < f.committed => {
                tracing::warn!(file = %files.path(id).display(), len, committed = f.committed,
                    "data file is shorter than its index says; its last chunks will be dropped as they are read");
            }
            Some(_) => {}
        }
    }
    let ids: Vec<u32> = st.files.keys().copied().collect();
    for id in ids {
        let f = st.files[&id];
        let dead = f.live_chunks == 0 && id != st.active;
        if dead || (!on_disk.contains_key(&id) && f.live_chunks == 0) {
            files.remove(id)?;
            db.delete(file_key(id)).map_err(idx)?;
            st.files.remove(&id);
            if on_disk.contains_key(&id) {
                report.removed_files += 1;
            }
        } else if !on_disk.contains_key(&id) {
            report.missing_files += 1;
            tracing::warn!(file = %files.path(id).display(), chunks = f.live_chunks,
                "data file is missing; its chunks will be fetched again");
        }
    }
    Ok((st, report))
}

pub(crate) fn save_limits(db: &rocksdb::DB, dir: &Path, limits: &Limits) -> Result<()> {
    let mut v = Vec::with_capacity(24);
    for x in [
        limits.quota_bytes,
        limits.high_water_bytes,
        limits.low_water_bytes,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    db.put(META_LIMITS, v).map_err(|source| StoreError::Index {
        path: dir.join("index"),
        source,
    })
}

pub(crate) fn load_limits(db: &rocksdb::DB) -> Result<Option<Limits>> {
    let v = db.get(META_LIMITS).map_err(|source| StoreError::Index {
        path: "index".into(),
        source,
    })?;
    Ok(v.filter(|v| v.len() == 24).map(|v| {
        let at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        Limits {
            quota_bytes: at(0),
            high_water_bytes: at(8),
            low_water_bytes: at(16),
        }
    }))
}

impl Inner {
    pub(crate) fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut bad_keys = Vec::new();
        self.for_each_chunk(|k, e| {
            report.chunks += 1;
            report.bytes += e.plain_len as u64;
            let checked = self
                .files
                .read_at(e.file, e.offset, e.stored_len as usize)
                .and_then(|stored| {
                    let data = e
                        .codec
                        .decompress(&stored, e.plain_len as usize)
                        .map_err(|err| index::corrupt("chunk data", err.to_string()))?;
                    if k.matches(&data) {
                        Ok(())
                    } else {
                        Err(index::corrupt("chunk data", "digest mismatch"))
                    }
                });
            if let Err(err) = checked {
                report.bad.push((k.to_string(), err.to_string()));
                bad_keys.push(k);
            }
            Ok(())
        })?;
        if repair && !self.read_only {
            let mut st = self.lock_state();
            for k in bad_keys {
                if let Some(e) = self.entry(&k)? {
                    self.drop_entries_locked(&mut st, &[(k, e)], false)?;
                    report.dropped += 1;
                }
            }
        }
        Ok(report)
    }

    fn entry(&self, k: &ChunkKey) -> Result<Option<Entry>> {
        match self
            .db
            .get_pinned(k.index_key())
            .map_err(|e| self.index_err(e))?
        {
            Some(v) => Ok(Some(Entry::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn gc(&self, target: Option<u64>) -> Result<GcReport> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.dir.clone()));
        }
        let mut st = self.lock_state();
        let disk_before = self.stats_disk();
        let mut report = GcReport {
            bytes_before: st.totals.live_bytes,
            disk_bytes_before: disk_before,
            ..GcReport::default()
        };
        self.reconcile_locked(&mut st, &mut report)?;
        let target = target.unwrap_or(self.limits.low_water_bytes);
        if st.totals.live_bytes > target {
            let need = st.totals.live_bytes - target;
            let (bytes, chunks) = self.evict_locked(&mut st, need)?;
            report.evicted_bytes = bytes;
            report.evicted_chunks = chunks;
        }
        report.bytes_after = st.totals.live_bytes;
        report.disk_bytes_after = self.stats_disk();
        Ok(report)
    }

    fn stats_disk(&self) -> u64 {
        self.files
            .on_disk()
            .map(|v| v.iter().map(|f| f.2).sum())
            .unwrap_or(0)
            + super::files::disk_usage(&self.dir.join("index"))
    }

    /// Every entry checked against its file; per-file records and totals recounted from
    /// the entries; ranges no entry covers punched; files no entry uses deleted.
    fn reconcile_locked(&self, st: &mut WriteState, report: &mut GcReport) -> Result<()> {
        let lengths: HashMap<u32, u64> = self
            .files
            .on_disk()?
            .into_iter()
            .map(|(id, len, _)| (id, len))
            .collect();
        let mut ranges: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut dangling = Vec::new();
        self.for_each_chunk(|k, e| {
            let end = e.offset + e.stored_len as u64;
            if lengths.get(&e.file).is_some_and(|&len| end <= len) {
                ranges.entry(e.file).or_default().push((e.offset, end));
            } else {
                dangling.push((k, e));
            }
            Ok(())
        })?;
        report.dangling_entries = dangling.len() as u64;
        let mut batch = rocksdb::WriteBatch::default();
        for (k, _) in &dangling {
            batch.delete(k.index_key());
        }
        let mut files = BTreeMap::new();
        let mut totals = Totals {
            clock: self.clock.load(Ordering::Relaxed),
            ..Totals::default()
        };
        for (id, rs) in &ranges {
            let live: u64 = rs.iter().map(|(a, b)| b - a).sum();
            let committed = st.files.get(id).map_or(0, |f| f.committed);
            let committed = committed.max(rs.iter().map(|r| r.1).max().unwrap_or(0));
            files.insert(
                *id,
                FileStat {
                    committed,
                    live_bytes: live,
                    live_chunks: rs.len() as u64,
                },
            );
            totals.live_bytes += live;
            totals.chunks += rs.len() as u64;
        }
        // The active file keeps its record (its append point) even when empty.
        if let Some(f) = st.files.get(&st.active) {
            files.entry(st.active).or_insert(FileStat {
                committed: f.committed,
                live_bytes: 0,
                live_chunks: 0,
            });
        }
        report.recounted = files != st.files
            || totals.live_bytes != st.totals.live_bytes
            || totals.chunks != st.totals.chunks;
        for id in st.files.keys().filter(|id| !files.contains_key(id)) {
            batch.delete(file_key(*id));
        }
        for (id, f) in &files {
            batch.put(file_key(*id), f.encode());
        }
        batch.put(index::META_TOTALS, totals.encode());
        self.db.write(batch).map_err(|e| self.index_err(e))?;
        st.files = files;
        st.totals = totals;
        self.publish(st);
        // Free every byte no entry covers (punching a hole twice is harmless).
        let _exclusive = self.punch.write().unwrap_or_else(|p| p.into_inner());
        for (id, len) in &lengths {
            match ranges.get_mut(id) {
                None if *id != st.active => {
                    self.files.remove(*id)?;
                    report.removed_files += 1;
                }
                None => self.files.punch(*id, 0, *len)?,
                Some(rs) => {
                    rs.sort_unstable();
                    let mut at = 0;
                    for &(a, b) in rs.iter() {
                        if a > at {
                            self.files.punch(*id, at, a - at)?;
                        }
                        at = at.max(b);
                    }
                    if *len > at {
                        self.files.punch(*id, at, len - at)?;
                    }
                }
            }
        }
        Ok(())
    }
}
