//! The blob side of the format: the chunk table ("ci") stored in each data blob with its
//! 4 KiB header, and the optional TOC with tar headers that lets a blob be streamed.

use super::error::{RafsError, Result};
use super::image::ChunkInfo;
use super::layout::{Le, BLOCK_SIZE};

pub const HEADER_SIZE: u64 = 4096;
pub const HEADER_MAGIC: u32 = 0xB10B_B10B;
pub const CI_V1_SIZE: usize = 16;
pub const CI_V2_SIZE: usize = 24;
pub const TOC_ENTRY_SIZE: usize = 128;
pub const TAR_HEADER_SIZE: u64 = 512;

/// The 4096-byte header that ends the compression-context section of a blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobMetaHeader {
    pub features: u32,
    pub ci_compressor: u32,
    pub ci_entries: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
}

impl BlobMetaHeader {
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let r = Le::at(buf, 0, HEADER_SIZE)?;
        if r.u32(0) != HEADER_MAGIC || r.u32(4092) != HEADER_MAGIC {
            return Err(RafsError::corrupt("blob meta header", "magic missing"));
        }
        Ok(BlobMetaHeader {
            features: r.u32(4),
            ci_compressor: r.u32(8),
            ci_entries: r.u32(12),
            ci_offset: r.u64(16),
            ci_compressed_size: r.u64(24),
            ci_uncompressed_size: r.u64(32),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE as usize);
        out.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        out.extend_from_slice(&self.features.to_le_bytes());
        out.extend_from_slice(&self.ci_compressor.to_le_bytes());
        out.extend_from_slice(&self.ci_entries.to_le_bytes());
        out.extend_from_slice(&self.ci_offset.to_le_bytes());
        out.extend_from_slice(&self.ci_compressed_size.to_le_bytes());
        out.extend_from_slice(&self.ci_uncompressed_size.to_le_bytes());
        out.resize(HEADER_SIZE as usize - 4, 0); // no zran context
        out.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        out
    }
}

/// One chunk as the blob's own table describes it: enough to fetch and expand it without
/// the bootstrap (the digest lives in the bootstrap or the optional digest array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobChunk {
    pub compressed_offset: u64,
    pub compressed_size: u32,
    pub uncompressed_offset: u64,
    pub uncompressed_size: u32,
    pub compressed: bool,
}

impl From<&ChunkInfo> for BlobChunk {
    fn from(c: &ChunkInfo) -> Self {
        BlobChunk {
            compressed_offset: c.compressed_offset,
            compressed_size: c.compressed_size,
            uncompressed_offset: c.uncompressed_offset,
            uncompressed_size: c.uncompressed_size,
            compressed: c.compressed,
        }
    }
}

const OFFSET_MASK: u64 = 0xff_ffff_ffff;

/// v1 entry (16 bytes): each u64 holds a 40-bit offset and (size - 1) split as 20 bits at
/// bit 44 and 4 high bits at bit 40. A chunk is compressed when its sizes differ.
pub fn encode_ci_v1(c: &BlobChunk, out: &mut Vec<u8>) {
    let pack = |off: u64, size: u32| {
        let s = (size - 1) as u64;
        (off & OFFSET_MASK) | ((s & 0xf_ffff) << 44) | ((s >> 20) << 40)
    };
    out.extend_from_slice(&pack(c.uncompressed_offset, c.uncompressed_size).to_le_bytes());
    out.extend_from_slice(&pack(c.compressed_offset, c.compressed_size).to_le_bytes());
}

fn unpack_v1(v: u64) -> (u64, u32) {
    let size = ((v >> 44) & 0xf_ffff) | (((v >> 40) & 0xf) << 20);
    (v & OFFSET_MASK, size as u32 + 1)
}

/// v2 entry (24 bytes): uncompressed offset in 4 KiB units, 24-bit sizes, flags byte.
pub fn encode_ci_v2(c: &BlobChunk, out: &mut Vec<u8>) {
    let flags = c.compressed as u64;
    let uncomp =
        (c.uncompressed_offset >> 12) | (((c.uncompressed_size - 1) as u64) << 32) | (flags << 56);
    let comp = (c.compressed_offset & OFFSET_MASK) | ((c.compressed_size as u64) << 40);
    out.extend_from_slice(&uncomp.to_le_bytes());
    out.extend_from_slice(&comp.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
}

/// Decodes an uncompressed ci table of `entries` records, v1 or v2 by `v2`.
pub fn decode_ci(table: &[u8], entries: usize, v2: bool) -> Result<Vec<BlobChunk>> {
    let size = if v2 { CI_V2_SIZE } else { CI_V1_SIZE };
    if table.len() < entries.saturating_mul(size) {
        return Err(RafsError::corrupt(
            "blob chunk table",
            format!("{} bytes for {entries} entries", table.len()),
        ));
    }
    let r = Le::at(table, 0, table.len() as u64)?;
    Ok((0..entries)
        .map(|i| {
            let (a, b) = (r.u64(i * size), r.u64(i * size + 8));
            if v2 {
                BlobChunk {
                    uncompressed_offset: (a & 0xffff_ffff) << 12,
                    uncompressed_size: ((a >> 32) & 0xff_ffff) as u32 + 1,
                    compressed: (a >> 56) & 1 != 0,
                    compressed_offset: b & OFFSET_MASK,
                    compressed_size: (b >> 40) as u32,
                }
            } else {
                let (uo, us) = unpack_v1(a);
                let (co, cs) = unpack_v1(b);
                BlobChunk {
                    uncompressed_offset: uo,
                    uncompressed_size: us,
                    compressed_offset: co,
                    compressed_size: cs,
                    compressed: cs != us,
                }
            }
        })
        .collect())
}

/// One TOC entry: a named section of the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// 0x1 none, 0x2 zstd, 0x4 lz4.
    pub flags: u32,
    pub name: String,
    pub digest: [u8; 32],
    pub compressed_offset: u64,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

impl TocEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut name = [0u8; 16];
        let n = self.name.len().min(16);
        name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        out.extend_from_slice(&name);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.compressed_offset.to_le_bytes());
        out.extend_from_slice(&self.compressed_size.to_le_bytes());
        out.extend_from_slice(&self.uncompressed_size.to_le_bytes());
        out.resize(out.len() + 48, 0);
    }

    pub fn decode_all(toc: &[u8]) -> Result<Vec<TocEntry>> {
        if toc.len() % TOC_ENTRY_SIZE != 0 {
            return Err(RafsError::corrupt(
                "blob TOC",
                format!("{} bytes", toc.len()),
            ));
        }
        let r = Le::at(toc, 0, toc.len() as u64)?;
        Ok((0..toc.len() / TOC_ENTRY_SIZE)
            .map(|i| {
                let o = i * TOC_ENTRY_SIZE;
                let raw = r.bytes(o + 8, 16);
                let end = raw.iter().position(|&b| b == 0).unwrap_or(16);
                TocEntry {
                    flags: r.u32(o),
                    name: String::from_utf8_lossy(&raw[..end]).into_owned(),
                    digest: r.bytes(o + 24, 32).try_into().unwrap(),
                    compressed_offset: r.u64(o + 56),
                    compressed_size: r.u64(o + 64),
                    uncompressed_size: r.u64(o + 72),
                }
            })
            .filter(|e| !e.name.is_empty())
            .collect())
    }
}

/// A GNU tar header for a section of `size` bytes that precedes it in the blob. Only name,
/// size, type and checksum are set: the fields nydus tools read, and nothing time-dependent.
pub fn tar_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; TAR_HEADER_SIZE as usize];
    h[..name.len().min(100)].copy_from_slice(&name.as_bytes()[..name.len().min(100)]);
    let field = |h: &mut [u8], off: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}", v, width = len - 1);
        h[off..off + len - 1].copy_from_slice(s.as_bytes());
    };
    field(&mut h, 100, 8, 0);
    field(&mut h, 108, 8, 0);
    field(&mut h, 116, 8, 0);
    if size < 1 << 33 {
        field(&mut h, 124, 12, size);
    } else {
        // 11 octal digits stop below 8 GiB (a big layer's `image.blob`): GNU base-256,
        // a 0x80 marker and the size big-endian in the rest of the field.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    field(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

pub fn blocks_of(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section of 8 GiB or more overflowed the 11 octal digits of the size field, and
    /// the header writer panicked on the 12th (seen reading the code while fuzzing).
    #[test]
    fn tar_header_sizes_past_8_gib() {
        for size in [0, 4096, (1 << 33) - 1, 1 << 33, 9 << 30, u64::MAX] {
            let h = tar_header("image.blob", size);
            assert_eq!(h.len(), TAR_HEADER_SIZE as usize);
            let parsed = tar::Header::from_byte_slice(&h);
            assert_eq!(parsed.size().unwrap(), size, "size {size}");
            assert_eq!(parsed.path().unwrap().to_str(), Some("image.blob"));
            let mut blank = h.clone();
            blank[148..156].fill(b' ');
            let sum: u32 = blank.iter().map(|&b| b as u32).sum();
            assert_eq!(parsed.cksum().unwrap(), sum, "size {size}");
        }
    }
}
