//! Chunk compression and digests, with the numeric ids RAFS stores for them.

use super::error::{RafsError, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

thread_local! {
    // One zstd context per thread: creating one per chunk costs more than compressing a
    // small file.
    static ZSTD_CCTX: std::cell::RefCell<zstd::bulk::Compressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(3).expect("zstd context"));
    static ZSTD_DCTX: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd context"));
}

/// How chunk data (and the blob's chunk table) is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Compressor {
    None,
    #[value(name = "lz4_block")]
    Lz4Block,
    Zstd,
}

impl Compressor {
    /// The id RAFS stores in the blob table (`compression_algo`); gzip (2) is not supported.
    pub fn blob_id(self) -> u32 {
        match self {
            Compressor::None => 0,
            Compressor::Lz4Block => 1,
            Compressor::Zstd => 3,
        }
    }

    pub fn from_blob_id(v: u32) -> Result<Self> {
        match v {
            0 => Ok(Compressor::None),
            1 => Ok(Compressor::Lz4Block),
            3 => Ok(Compressor::Zstd),
            other => Err(RafsError::unsupported(
                "compressor",
                format!("algorithm id {other}"),
            )),
        }
    }

    /// The bit RAFS sets in the superblock flags.
    pub fn super_flag(self) -> u64 {
        match self {
            Compressor::None => 0x1,
            Compressor::Lz4Block => 0x2,
            Compressor::Zstd => 0x80,
        }
    }

    pub fn from_super_flags(flags: u64) -> Result<Self> {
        let found: Vec<Self> = [Compressor::None, Compressor::Lz4Block, Compressor::Zstd]
            .into_iter()
            .filter(|c| flags & c.super_flag() != 0)
            .collect();
        match (found.as_slice(), flags & 0x40) {
            ([one], 0) => Ok(*one),
            (_, gzip) if gzip != 0 => Err(RafsError::unsupported("compressor", "gzip")),
            _ => Err(RafsError::corrupt(
                "superblock flags",
                format!("{flags:#x} must name exactly one compressor"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compressor::None => "none",
            Compressor::Lz4Block => "lz4_block",
            Compressor::Zstd => "zstd",
        }
    }

    /// Compresses `data`; `None` when compression would not make it smaller, in which case
    /// RAFS stores the chunk raw (its compressed flag stays clear).
    pub fn compress(self, data: &[u8]) -> Option<Vec<u8>> {
        let out = match self {
            Compressor::None => return None,
            Compressor::Lz4Block => lz4_flex::block::compress(data),
            Compressor::Zstd => ZSTD_CCTX.with(|c| c.borrow_mut().compress(data)).ok()?,
        };
        (out.len() < data.len()).then_some(out)
    }

    /// Decompresses `data` that must expand to exactly `size` bytes.
    pub fn decompress(self, data: &[u8], size: usize) -> Result<Vec<u8>> {
        let out = match self {
            Compressor::None => data.to_vec(),
            Compressor::Lz4Block => lz4_flex::block::decompress(data, size)
                .map_err(|e| RafsError::corrupt("lz4 data", e.to_string()))?,
            Compressor::Zstd => ZSTD_DCTX
                .with(|d| d.borrow_mut().decompress(data, size))
                .map_err(|e| RafsError::corrupt("zstd data", e.to_string()))?,
        };
        if out.len() != size {
            return Err(RafsError::corrupt(
                "compressed data",
                format!("expands to {} bytes, expected {size}", out.len()),
            ));
        }
        Ok(out)
    }
}

/// The digest algorithm that names chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Digester {
    Blake3,
    Sha256,
}

impl Digester {
    pub fn blob_id(self) -> u32 {
        match self {
            Digester::Blake3 => 0,
            Digester::Sha256 => 1,
        }
    }

    pub fn from_blob_id(v: u32) -> Result<Self> {
        match v {
            0 => Ok(Digester::Blake3),
            1 => Ok(Digester::Sha256),
            other => Err(RafsError::unsupported(
                "digester",
                format!("algorithm id {other}"),
            )),
        }
    }

    pub fn super_flag(self) -> u64 {
        match self {
            Digester::Blake3 => 0x4,
            Digester::Sha256 => 0x8,
        }
    }

    pub fn from_super_flags(flags: u64) -> Result<Self> {
        match (flags & 0x4 != 0, flags & 0x8 != 0) {
            (true, false) => Ok(Digester::Blake3),
            (false, true) => Ok(Digester::Sha256),
            _ => Err(RafsError::corrupt(
                "superblock flags",
                format!("{flags:#x} must name exactly one digester"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Digester::Blake3 => "blake3",
            Digester::Sha256 => "sha256",
        }
    }

    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            Digester::Blake3 => *blake3::hash(data).as_bytes(),
            Digester::Sha256 => sha2::Sha256::digest(data).into(),
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}
