//! The index's records. One RocksDB column family, records told apart by a one-byte prefix
//! so that each kind sorts together and can be scanned alone:
//!
//! | key | value |
//! | --- | --- |
//! | `c` algo digest (34 bytes) | [`Entry`]: data file, offset, stored and plain size, codec, last access |
//! | `f` file id (u32 BE) | [`FileStat`]: committed length, live bytes and chunks |
//! | `m` name | store-wide values: format version, [`Totals`] |
//! | `p` file id, offset (BE) | a hole still to punch after an eviction (stored length) |
//!
//! The algorithm byte is part of the chunk key, so a blake3 digest and a sha256 digest with
//! the same 32 bytes are two different chunks. Numbers in values are little-endian.

use super::error::{Result, StoreError};
use crate::rafs::image::ChunkDigest;
use crate::rafs::{Compressor, Digester};
use std::fmt;

/// The format this code writes; an index with another one is refused, not guessed at.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const CHUNK: u8 = b'c';
pub(crate) const FILE: u8 = b'f';
pub(crate) const PUNCH: u8 = b'p';
pub(crate) const META_VERSION: &[u8] = b"mversion";
pub(crate) const META_TOTALS: &[u8] = b"mtotals";

/// A chunk's name in the store: its digest and the algorithm that made it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub algo: Digester,
    pub digest: ChunkDigest,
}

impl ChunkKey {
    pub fn new(algo: Digester, digest: ChunkDigest) -> Self {
        ChunkKey { algo, digest }
    }

    /// The key of `data` under `algo`.
    pub fn of(algo: Digester, data: &[u8]) -> Self {
        ChunkKey::new(algo, ChunkDigest(algo.digest(data)))
    }

    pub(crate) fn index_key(&self) -> [u8; 34] {
        let mut k = [0u8; 34];
        k[0] = CHUNK;
        k[1] = self.algo.blob_id() as u8;
        k[2..].copy_from_slice(&self.digest.0);
        k
    }

    pub(crate) fn from_index_key(k: &[u8]) -> Result<Self> {
        if k.len() != 34 || k[0] != CHUNK {
            return Err(corrupt("chunk key", format!("{} bytes", k.len())));
        }
        let algo =
            Digester::from_blob_id(k[1] as u32).map_err(|e| corrupt("chunk key", e.to_string()))?;
        Ok(ChunkKey::new(
            algo,
            ChunkDigest(k[2..].try_into().expect("32 bytes")),
        ))
    }

    /// Whether `data` is this chunk's bytes.
    pub fn matches(&self, data: &[u8]) -> bool {
        self.algo.digest(data) == self.digest.0
    }
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo.name(), self.digest)
    }
}

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkKey({self})")
    }
}

pub(crate) fn corrupt(what: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        detail: detail.into(),
    }
}

/// Where a chunk's bytes are and when it was last used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub file: u32,
    pub offset: u64,
    /// Bytes in the data file (compressed, when `codec` is not `None`).
    pub stored_len: u32,
    /// The chunk's own length.
    pub plain_len: u32,
    pub codec: Compressor,
    /// The store's access clock at the last read or write: larger is more recent.
    pub atime: u64,
}

const ENTRY_LEN: usize = 29;

impl Entry {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut v = [0u8; ENTRY_LEN];
        v[0..4].copy_from_slice(&self.file.to_le_bytes());
        v[4..12].copy_from_slice(&self.offset.to_le_bytes());
        v[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        v[16..20].copy_from_slice(&self.plain_len.to_le_bytes());
        v[20] = self.codec.blob_id() as u8;
        v[21..29].copy_from_slice(&self.atime.to_le_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        if v.len() != ENTRY_LEN {
            return Err(corrupt("chunk entry", format!("{} bytes", v.len())));
        }
        let u32_at = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        Ok(Entry {
            file: u32_at(0),
            offset: u64_at(4),
            stored_len: u32_at(12),
            plain_len: u32_at(16),
            codec: Compressor::from_blob_id(v[20] as u32)
                .map_err(|e| corrupt("chunk entry", e.to_string()))?,
            atime: u64_at(21),
        })
    }
}

/// Per data file bookkeeping, updated in the same write batch as the entries it counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStat {
    /// Bytes of the file that index entries may point into; anything after it was being
    /// written when the process died and is cut off at the next open.
    pub committed: u64,
    pub live_bytes: u64,
    pub live_chunks: u64,
}

impl FileStat {
    pub(crate) fn encode(&self) -> [u8; 24] {
        three_u64(self.committed, self.live_bytes, self.live_chunks)
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        let (committed, live_bytes, live_chunks) = from_three_u64(v)
            .ok_or_else(|| corrupt("file record", format!("{} bytes", v.len())))?;
        Ok(FileStat {
            committed,
            live_bytes,
            live_chunks,
        })
    }
}

fn three_u64(a: u64, b: u64, c: u64) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[0..8].copy_from_slice(&a.to_le_bytes());
    v[8..16].copy_from_slice(&b.to_le_bytes());
    v[16..24].copy_from_slice(&c.to_le_bytes());
    v
}

fn from_three_u64(v: &[u8]) -> Option<(u64, u64, u64)> {
    if v.len() != 24 {
        return None;
    }
    let at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
    Some((at(0), at(8), at(16)))
}

pub(crate) fn file_key(id: u32) -> [u8; 5] {
    let mut k = [FILE; 5];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn file_id_of(k: &[u8]) -> Result<u32> {
    match k {
        [FILE, rest @ ..] if rest.len() == 4 => Ok(u32::from_be_bytes(rest.try_into().expect("4"))),
        _ => Err(corrupt("file key", format!("{} bytes", k.len()))),
    }
}

pub(crate) fn punch_key(file: u32, offset: u64) -> [u8; 13] {
    let mut k = [PUNCH; 13];
    k[1..5].copy_from_slice(&file.to_be_bytes());
    k[5..].copy_from_slice(&offset.to_be_bytes());
    k
}

pub(crate) fn punch_of(k: &[u8], v: &[u8]) -> Result<(u32, u64, u32)> {
    if k.len() != 13 || v.len() != 4 {
        return Err(corrupt("punch record", format!("{} bytes", k.len())));
    }
    Ok((
        u32::from_be_bytes(k[1..5].try_into().expect("4")),
        u64::from_be_bytes(k[5..13].try_into().expect("8")),
        u32::from_le_bytes(v.try_into().expect("4")),
    ))
}

/// Store-wide counts, kept exact by writing them in every batch that changes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub live_bytes: u64,
    pub chunks: u64,
    /// The access clock: the next access time to hand out.
    pub clock: u64,
}

impl Totals {
    pub(crate) fn encode(&self) -> [u8; 24] {
        three_u64(self.live_bytes, self.chunks, self.clock)
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        let (live_bytes, chunks, clock) =
            from_three_u64(v).ok_or_else(|| corrupt("totals", format!("{} bytes", v.len())))?;
        Ok(Totals {
            live_bytes,
            chunks,
            clock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let e = Entry {
            file: 7,
            offset: 1 << 40,
            stored_len: 65536,
            plain_len: 100_000,
            codec: Compressor::Zstd,
            atime: 99,
        };
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        let k = ChunkKey::of(Digester::Sha256, b"x");
        assert_eq!(ChunkKey::from_index_key(&k.index_key()).unwrap(), k);
        let b = ChunkKey::new(Digester::Blake3, k.digest);
        assert_ne!(b.index_key(), k.index_key());
        assert_eq!(file_id_of(&file_key(513)).unwrap(), 513);
        let (f, o, l) = punch_of(&punch_key(3, 4096), &5u32.to_le_bytes()).unwrap();
        assert_eq!((f, o, l), (3, 4096, 5));
    }
}
