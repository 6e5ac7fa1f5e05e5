//! The `[store]` settings: how big the store may grow, when eviction starts and stops, how
//! chunk bytes are laid out and protected on disk. Every field has a default, so an empty
//! section (or none) is a working store.

use serde::{Deserialize, Serialize};

/// Default quota: this share of the free space of the store's file system, counted when
/// the store opens (the store's own live bytes count as free, so the figure does not shrink
/// as the store fills). Half leaves room for the images' other users of the disk.
pub const DEFAULT_QUOTA_FREE_PERCENT: u8 = 50;
/// Eviction starts before a write would take the store past this share of the quota.
pub const DEFAULT_HIGH_WATER_PERCENT: u8 = 95;
/// Eviction frees chunks until the store is down to this share of the quota, so it runs
/// once per (high - low) bytes written rather than on every write.
pub const DEFAULT_LOW_WATER_PERCENT: u8 = 80;
/// Size at which a data file is closed and the next one started. Evicted chunks are freed
/// at once by punching holes, so this only bounds how much a dead file keeps until deleted
/// and how many files are open (one per 256 MiB of store).
pub const DEFAULT_DATA_FILE_BYTES: u64 = 256 << 20;
/// Smallest data file size accepted: smaller files only cost more open descriptors.
pub const MIN_DATA_FILE_BYTES: u64 = 1 << 20;

/// How chunk bytes are kept in the data files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreCompression {
    /// As the chunk's plain bytes: a hit is one pread and one hash (the default; see the
    /// module doc of [`crate::store`] for the measurements behind it).
    #[default]
    None,
    /// LZ4 block: about half the disk for text-like data, decoded at several GB/s.
    Lz4,
    /// zstd level 3: the smallest, but decoding costs more than reading plain bytes.
    Zstd,
}

impl StoreCompression {
    pub fn name(self) -> &'static str {
        match self {
            StoreCompression::None => "none",
            StoreCompression::Lz4 => "lz4",
            StoreCompression::Zstd => "zstd",
        }
    }

    pub(crate) fn codec(self) -> crate::rafs::Compressor {
        match self {
            StoreCompression::None => crate::rafs::Compressor::None,
            StoreCompression::Lz4 => crate::rafs::Compressor::Lz4Block,
            StoreCompression::Zstd => crate::rafs::Compressor::Zstd,
        }
    }
}

/// `[store]`: the node's chunk store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Most bytes of chunk data the store keeps. Default: none set, meaning
    /// `quota_free_percent` of the file system's free space when the store opens.
    pub quota_bytes: Option<u64>,
    /// The default quota, as a percentage of free space. Default: 50.
    pub quota_free_percent: u8,
    /// A write that would take the store past this percentage of the quota first evicts
    /// the least recently used chunks. Default: 95.
    pub high_water_percent: u8,
    /// Eviction frees chunks down to this percentage of the quota. Default: 80.
    pub low_water_percent: u8,
    /// Size at which a data file is closed and a new one started. Default: 256 MiB.
    pub data_file_bytes: u64,
    /// How chunks are kept on disk: `none`, `lz4` or `zstd`. Default: `none`.
    pub compression: StoreCompression,
    /// fdatasync chunk bytes before their index entries are written, once per batch of
    /// writes. Off, a power cut can leave entries whose bytes never reached the disk; reads
    /// then fail verification and refetch. Default: true.
    pub sync: bool,
    /// Check each chunk read from the store against its digest; a bad one is dropped and
    /// fetched again. Default: true.
    pub verify_on_read: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            quota_bytes: None,
            quota_free_percent: DEFAULT_QUOTA_FREE_PERCENT,
            high_water_percent: DEFAULT_HIGH_WATER_PERCENT,
            low_water_percent: DEFAULT_LOW_WATER_PERCENT,
            data_file_bytes: DEFAULT_DATA_FILE_BYTES,
            compression: StoreCompression::default(),
            sync: true,
            verify_on_read: true,
        }
    }
}

impl StoreOptions {
    /// Checks what the types do not; the error names the field (under `store.`).
    pub fn validate(&self) -> Result<(), String> {
        let pct = |name: &str, v: u8| {
            if v == 0 || v > 100 {
                Err(format!(
                    "field `store.{name}`: {v} is not a percentage from 1 to 100"
                ))
            } else {
                Ok(())
            }
        };
        pct("quota_free_percent", self.quota_free_percent)?;
        pct("high_water_percent", self.high_water_percent)?;
        pct("low_water_percent", self.low_water_percent)?;
        if self.low_water_percent >= self.high_water_percent {
            return Err(format!(
                "field `store.low_water_percent`: {} must be below high_water_percent ({})",
                self.low_water_percent, self.high_water_percent
            ));
        }
        if self.quota_bytes == Some(0) {
            return Err("field `store.quota_bytes`: must be at least 1".into());
        }
        if self.data_file_bytes < MIN_DATA_FILE_BYTES {
            return Err(format!(
                "field `store.data_file_bytes`: {} is below the minimum {MIN_DATA_FILE_BYTES}",
                self.data_file_bytes
            ));
        }
        Ok(())
    }
}

/// The byte limits derived from the options and the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub quota_bytes: u64,
    pub high_water_bytes: u64,
    pub low_water_bytes: u64,
}

impl Limits {
    pub(crate) fn new(opts: &StoreOptions, free_bytes: u64, live_bytes: u64) -> Limits {
        let quota = opts.quota_bytes.unwrap_or_else(|| {
            ((free_bytes + live_bytes) as u128 * opts.quota_free_percent as u128 / 100) as u64
        });
        let share = |p: u8| (quota as u128 * p as u128 / 100) as u64;
        Limits {
            quota_bytes: quota,
            high_water_bytes: share(opts.high_water_percent),
            low_water_bytes: share(opts.low_water_percent),
        }
    }
}
