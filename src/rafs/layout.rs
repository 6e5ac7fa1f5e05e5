//! Fixed-size on-disk records of a RAFS v6 bootstrap, little-endian, each with a decoder
//! that checks bounds and an encoder that appends exactly its on-disk size.

use super::error::{RafsError, Result};

pub const BLOCK_SIZE: u64 = 4096;
pub const BLOCK_BITS: u8 = 12;
pub const SUPER_OFFSET: u64 = 1024;
pub const EXT_SUPER_OFFSET: u64 = 1152;
pub const DEVICE_TABLE_OFFSET: u64 = 1408;
pub const DEVICE_SLOT_SIZE: u64 = 128;
pub const BLOB_ENTRY_SIZE: u64 = 256;
pub const CHUNK_INFO_SIZE: u64 = 80;
pub const CHUNK_INDEX_SIZE: u64 = 8;
pub const DIRENT_SIZE: u64 = 12;
pub const INODE_SLOT: u64 = 32;
pub const COMPACT_INODE_SIZE: u64 = 32;
pub const EXTENDED_INODE_SIZE: u64 = 64;

pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
pub const FEATURE_COMPAT_RAFS_V6: u32 = 0x4000_0000;
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;
pub const FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x8;

pub const FLAG_EXPLICIT_UID_GID: u64 = 0x10;
pub const FLAG_HAS_XATTR: u64 = 0x20;
pub const FLAG_INLINED_CHUNK_DIGEST: u64 = 0x100;
pub const FLAG_TARFS_MODE: u64 = 0x200;
pub const FLAG_ENCRYPTION_NONE: u64 = 0x0100_0000;

/// Data layouts in bits 1..3 of `i_format`.
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_CHUNK_BASED: u16 = 4;
/// `i_u` low bits of a chunk-based inode: "chunk indexes follow" plus log2(chunk size) - 12.
pub const CHUNK_FORMAT_INDEXES: u32 = 0x20;
pub const CHUNK_FORMAT_BLKBITS_MASK: u32 = 0x1f;

pub const CHUNK_FLAG_COMPRESSED: u32 = 0x1;
pub const CHUNK_FLAG_HAS_CRC32: u32 = 0x10;

pub const BLOB_FEATURE_ALIGNED: u32 = 0x1;
pub const BLOB_FEATURE_CHUNK_INFO_V2: u32 = 0x4;
pub const BLOB_FEATURE_INLINED_CHUNK_DIGEST: u32 = 0x20;
pub const BLOB_FEATURE_HAS_TAR_HEADER: u32 = 0x1000_0000;
pub const BLOB_FEATURE_HAS_TOC: u32 = 0x2000_0000;
pub const BLOB_FEATURE_CAP_TAR_TOC: u32 = 0x4000_0000;

/// A bounds-checked little-endian view of `buf` starting at absolute offset `base`,
/// so errors name the offset in the file.
#[derive(Clone, Copy)]
pub struct Le<'a> {
    buf: &'a [u8],
    base: u64,
}

impl<'a> Le<'a> {
    /// `len` bytes of `data` at `offset`, or a truncation error.
    pub fn at(data: &'a [u8], offset: u64, len: u64) -> Result<Self> {
        let end = offset.checked_add(len).filter(|&e| e <= data.len() as u64);
        match end {
            Some(end) => Ok(Le {
                buf: &data[offset as usize..end as usize],
                base: offset,
            }),
            None => Err(RafsError::Truncated {
                offset,
                need: len,
                have: data.len() as u64,
            }),
        }
    }
    pub fn bytes(&self, off: usize, len: usize) -> &'a [u8] {
        &self.buf[off..off + len]
    }
    pub fn u8(&self, off: usize) -> u8 {
        self.buf[off]
    }
    pub fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.buf[off..off + 2].try_into().unwrap())
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.buf[off..off + 4].try_into().unwrap())
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.buf[off..off + 8].try_into().unwrap())
    }
    pub fn base(&self) -> u64 {
        self.base
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn pad(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, 0);
}

/// The EROFS superblock at offset 1024 (128 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuperBlock {
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub extra_devices: u16,
}

impl SuperBlock {
    pub const SIZE: u64 = 128;

    pub fn decode(data: &[u8]) -> Result<Self> {
        let r = Le::at(data, SUPER_OFFSET, Self::SIZE)?;
        if r.u32(0) != EROFS_MAGIC {
            return Err(RafsError::corrupt(
                "superblock",
                format!("magic {:#x}, not an EROFS/RAFS v6 bootstrap", r.u32(0)),
            ));
        }
        if r.u32(8) & FEATURE_COMPAT_RAFS_V6 == 0 {
            return Err(RafsError::unsupported(
                "bootstrap",
                "EROFS image without the RAFS v6 feature",
            ));
        }
        if r.u8(12) != BLOCK_BITS {
            return Err(RafsError::unsupported(
                "block size",
                format!("2^{} bytes (only 4096 is supported)", r.u8(12)),
            ));
        }
        if r.u32(44) != 0 {
            return Err(RafsError::unsupported("superblock", "shared xattr area"));
        }
        let incompat = r.u32(80);
        if incompat & !(FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE) != 0 {
            return Err(RafsError::unsupported(
                "superblock",
                format!("incompatible features {incompat:#x}"),
            ));
        }
        if r.u16(88) as u64 * DEVICE_SLOT_SIZE != DEVICE_TABLE_OFFSET && r.u16(86) != 0 {
            return Err(RafsError::corrupt(
                "superblock",
                format!("device table slot offset {}", r.u16(88)),
            ));
        }
        Ok(SuperBlock {
            root_nid: r.u16(14),
            inos: r.u64(16),
            build_time: r.u64(24),
            blocks: r.u32(36),
            meta_blkaddr: r.u32(40),
            extra_devices: r.u16(86),
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put32(out, EROFS_MAGIC);
        put32(out, 0); // checksum: unused by RAFS
        put32(out, FEATURE_COMPAT_RAFS_V6);
        out.push(BLOCK_BITS);
        out.push(0); // extslots
        put16(out, self.root_nid);
        put64(out, self.inos);
        put64(out, 0); // build time: never the clock, builds are reproducible
        put32(out, 0);
        put32(out, self.blocks);
        put32(out, self.meta_blkaddr);
        put32(out, 0); // xattr_blkaddr: no shared xattrs
        pad(out, 32); // uuid, volume name
        put32(
            out,
            FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE,
        );
        put16(out, 0);
        put16(out, self.extra_devices);
        put16(out, (DEVICE_TABLE_OFFSET / DEVICE_SLOT_SIZE) as u16);
        pad(out, 38);
    }
}

/// The RAFS extended superblock at offset 1152 (256 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtSuperBlock {
    pub flags: u64,
    pub blob_table_offset: u64,
    pub blob_table_size: u32,
    pub chunk_size: u32,
    pub chunk_table_offset: u64,
    pub chunk_table_size: u64,
    pub prefetch_table_offset: u64,
    pub prefetch_table_size: u32,
}

impl ExtSuperBlock {
    pub const SIZE: u64 = 256;

    pub fn decode(data: &[u8]) -> Result<Self> {
        let r = Le::at(data, EXT_SUPER_OFFSET, Self::SIZE)?;
        let sb = ExtSuperBlock {
            flags: r.u64(0),
            blob_table_offset: r.u64(8),
            blob_table_size: r.u32(16),
            chunk_size: r.u32(20),
            chunk_table_offset: r.u64(24),
            chunk_table_size: r.u64(32),
            prefetch_table_offset: r.u64(40),
            prefetch_table_size: r.u32(48),
        };
        if !valid_chunk_size(sb.chunk_size as u64) {
            return Err(RafsError::corrupt(
                "extended superblock",
                format!("chunk size {:#x}", sb.chunk_size),
            ));
        }
        Ok(sb)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put64(out, self.flags);
        put64(out, self.blob_table_offset);
        put32(out, self.blob_table_size);
        put32(out, self.chunk_size);
        put64(out, self.chunk_table_offset);
        put64(out, self.chunk_table_size);
        put64(out, self.prefetch_table_offset);
        put32(out, self.prefetch_table_size);
        put32(out, 0);
        pad(out, 200);
    }
}

pub fn valid_chunk_size(v: u64) -> bool {
    v.is_power_of_two() && (0x1000..=0x100_0000).contains(&v)
}

/// One slot of the EROFS device table (128 bytes): a blob as an extra device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSlot {
    pub blob_id: String,
    pub blocks: u32,
    pub mapped_blkaddr: u32,
}

impl DeviceSlot {
    pub fn decode(data: &[u8], index: u64) -> Result<Self> {
        let r = Le::at(
            data,
            DEVICE_TABLE_OFFSET + index * DEVICE_SLOT_SIZE,
            DEVICE_SLOT_SIZE,
        )?;
        Ok(DeviceSlot {
            blob_id: blob_id_str(r.bytes(0, 64))?,
            blocks: r.u32(64),
            mapped_blkaddr: r.u32(68),
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put_blob_id(out, &self.blob_id);
        put32(out, self.blocks);
        put32(out, self.mapped_blkaddr);
        pad(out, 56);
    }
}

fn blob_id_str(raw: &[u8]) -> Result<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let id = std::str::from_utf8(&raw[..end])
        .ok()
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or_else(|| {
            RafsError::corrupt(
                "blob id",
                format!("{:?}", String::from_utf8_lossy(&raw[..end])),
            )
        })?;
    Ok(id.to_string())
}

fn put_blob_id(out: &mut Vec<u8>, id: &str) {
    let mut raw = [0u8; 64];
    let n = id.len().min(64);
    raw[..n].copy_from_slice(&id.as_bytes()[..n]);
    out.extend_from_slice(&raw);
}

/// One entry of the RAFS blob table (256 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobEntry {
    pub blob_id: String,
    pub blob_index: u32,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub compression_algo: u32,
    pub digest_algo: u32,
    pub features: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub toc_size: u32,
    pub ci_compressor: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    pub toc_digest: [u8; 32],
    pub meta_digest: [u8; 32],
    pub meta_size: u64,
}

impl BlobEntry {
    pub fn decode(data: &[u8], offset: u64) -> Result<Self> {
        let r = Le::at(data, offset, BLOB_ENTRY_SIZE)?;
        Ok(BlobEntry {
            blob_id: blob_id_str(r.bytes(0, 64))?,
            blob_index: r.u32(64),
            chunk_size: r.u32(68),
            chunk_count: r.u32(72),
            compression_algo: r.u32(76),
            digest_algo: r.u32(80),
            features: r.u32(84),
            compressed_size: r.u64(88),
            uncompressed_size: r.u64(96),
            toc_size: r.u32(104),
            ci_compressor: r.u32(108),
            ci_offset: r.u64(112),
            ci_compressed_size: r.u64(120),
            ci_uncompressed_size: r.u64(128),
            toc_digest: r.bytes(136, 32).try_into().unwrap(),
            meta_digest: r.bytes(168, 32).try_into().unwrap(),
            meta_size: r.u64(200),
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put_blob_id(out, &self.blob_id);
        put32(out, self.blob_index);
        put32(out, self.chunk_size);
        put32(out, self.chunk_count);
        put32(out, self.compression_algo);
        put32(out, self.digest_algo);
        put32(out, self.features);
        put64(out, self.compressed_size);
        put64(out, self.uncompressed_size);
        put32(out, self.toc_size);
        put32(out, self.ci_compressor);
        put64(out, self.ci_offset);
        put64(out, self.ci_compressed_size);
        put64(out, self.ci_uncompressed_size);
        out.extend_from_slice(&self.toc_digest);
        out.extend_from_slice(&self.meta_digest);
        put64(out, self.meta_size);
        pad(out, 8 + 4 + 36); // cipher iv, cipher algo, reserved
    }
}

/// The common part of compact and extended on-disk inodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskInode {
    pub extended: bool,
    pub layout: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    /// Block address, rdev, or chunk format, by layout and type.
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
}

impl DiskInode {
    pub fn decode(data: &[u8], offset: u64, nid: u64) -> Result<Self> {
        let head = Le::at(data, offset, COMPACT_INODE_SIZE)
            .map_err(|_| bad_nid(nid, "inode past the end"))?;
        let format = head.u16(0);
        let extended = format & 1 != 0;
        let layout = (format >> 1) & 0x7;
        if format & !0xf != 0 {
            return Err(bad_nid(nid, format!("unknown i_format {format:#x}")));
        }
        let ino = if extended {
            let r = Le::at(data, offset, EXTENDED_INODE_SIZE)
                .map_err(|_| bad_nid(nid, "inode past the end"))?;
            DiskInode {
                extended,
                layout,
                xattr_icount: r.u16(2),
                mode: r.u16(4),
                size: r.u64(8),
                i_u: r.u32(16),
                ino: r.u32(20),
                uid: r.u32(24),
                gid: r.u32(28),
                mtime: r.u64(32),
                mtime_nsec: r.u32(40),
                nlink: r.u32(44),
            }
        } else {
            DiskInode {
                extended,
                layout,
                xattr_icount: head.u16(2),
                mode: head.u16(4),
                nlink: head.u16(6) as u32,
                size: head.u32(8) as u64,
                i_u: head.u32(16),
                ino: head.u32(20),
                uid: head.u16(24) as u32,
                gid: head.u16(26) as u32,
                mtime: 0,
                mtime_nsec: 0,
            }
        };
        Ok(ino)
    }

    pub fn disk_size(&self) -> u64 {
        if self.extended {
            EXTENDED_INODE_SIZE
        } else {
            COMPACT_INODE_SIZE
        }
    }

    /// Bytes of the inline xattr area that follows the inode.
    pub fn xattr_size(&self) -> u64 {
        xattr_ibody_size(self.xattr_icount)
    }

    /// Always writes the extended form: it carries mtime, 32-bit ids and 64-bit sizes, and is
    /// what nydus-image 2.x writes for every inode of a directory or tar build.
    pub fn encode_extended(&self, out: &mut Vec<u8>) {
        put16(out, 1 | (self.layout << 1));
        put16(out, self.xattr_icount);
        put16(out, self.mode);
        put16(out, 0);
        put64(out, self.size);
        put32(out, self.i_u);
        put32(out, self.ino);
        put32(out, self.uid);
        put32(out, self.gid);
        put64(out, self.mtime);
        put32(out, self.mtime_nsec);
        put32(out, self.nlink);
        pad(out, 16);
    }
}

fn bad_nid(nid: u64, detail: impl Into<String>) -> RafsError {
    RafsError::BadInode {
        nid,
        detail: detail.into(),
    }
}

pub fn xattr_ibody_size(icount: u16) -> u64 {
    if icount == 0 {
        0
    } else {
        12 + 4 * (icount as u64 - 1)
    }
}

/// Kernel "new" dev_t encoding used in `i_u` of device inodes.
pub fn encode_rdev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

pub fn decode_rdev(v: u32) -> (u32, u32) {
    ((v & 0xfff00) >> 8, (v & 0xff) | ((v >> 12) & 0xfff00))
}

/// One 8-byte chunk index after a chunk-based inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkIndex {
    /// Blob index + 1 (device 0 is the bootstrap).
    pub device_id: u8,
    /// Index into that blob's chunk table (24 bits).
    pub ci_index: u32,
    /// Block of the chunk's uncompressed offset in its blob.
    pub blkaddr: u32,
}

impl ChunkIndex {
    pub fn decode(r: &Le<'_>, off: usize) -> Self {
        let lo = r.u16(off) as u32;
        let hi = r.u16(off + 2) as u32;
        ChunkIndex {
            device_id: (hi & 0xff) as u8,
            ci_index: ((hi >> 8) << 16) | lo,
            blkaddr: r.u32(off + 4),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put16(out, (self.ci_index & 0xffff) as u16);
        put16(
            out,
            (((self.ci_index >> 16) & 0xff) << 8) as u16 | self.device_id as u16,
        );
        put32(out, self.blkaddr);
    }
}

/// The 80-byte chunk record of the bootstrap's chunk table (the RAFS v5 layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub digest: [u8; 32],
    pub blob_index: u32,
    pub flags: u32,
    pub compressed_size: u32,
    pub uncompressed_size: u32,
    pub compressed_offset: u64,
    pub uncompressed_offset: u64,
    pub file_offset: u64,
    pub index: u32,
    pub crc32: u32,
}

impl ChunkRecord {
    pub fn decode(data: &[u8], offset: u64) -> Result<Self> {
        let r = Le::at(data, offset, CHUNK_INFO_SIZE)?;
        Ok(ChunkRecord {
            digest: r.bytes(0, 32).try_into().unwrap(),
            blob_index: r.u32(32),
            flags: r.u32(36),
            compressed_size: r.u32(40),
            uncompressed_size: r.u32(44),
            compressed_offset: r.u64(48),
            uncompressed_offset: r.u64(56),
            file_offset: r.u64(64),
            index: r.u32(72),
            crc32: r.u32(76),
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.digest);
        put32(out, self.blob_index);
        put32(out, self.flags);
        put32(out, self.compressed_size);
        put32(out, self.uncompressed_size);
        put64(out, self.compressed_offset);
        put64(out, self.uncompressed_offset);
        put64(out, self.file_offset);
        put32(out, self.index);
        put32(out, self.crc32);
    }
}

pub fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}
