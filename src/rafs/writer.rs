//! Serializes an [`Image`] into a RAFS v6 bootstrap that nydusd, nydus-image and the
//! kernel's EROFS driver all read.
//!
//! Layout: superblocks and device table in block 0, then the blob and prefetch tables,
//! then one empty block (so the root's nid is not 0), the inodes in depth-first order
//! (each with its xattrs and inline tail or chunk indexes), directory and symlink blocks
//! too large to inline, and last the 80-byte chunk table. Only the image decides the
//! bytes: no clock, no host state.

use super::dirent::{dir_data, fill_nids};
use super::error::{RafsError, Result};
use super::image::*;
use super::layout::*;
use super::xattr::{xattr_body, xattr_icount};

/// Blocks each device's mapped address is aligned to in the flat "bootstrap + blobs"
/// space, as nydus-image lays it out.
const DEVICE_ALIGN_BLOCKS: u64 = 128;

pub fn write_bootstrap(image: &Image) -> Result<Vec<u8>> {
    check_image(image)?;
    let order = depth_first(image);
    let parents = parents(image, &order);
    let mut slots: Vec<Option<Slot>> = vec![None; image.inodes.len()];

    // Head: superblocks, device table, blob table, prefetch table.
    let nblobs = image.blobs.len() as u64;
    let blob_table_offset = align_up(DEVICE_TABLE_OFFSET + nblobs * DEVICE_SLOT_SIZE, BLOCK_SIZE);
    let blob_table_size = nblobs * BLOB_ENTRY_SIZE;
    let prefetch_offset = align_up(blob_table_offset + blob_table_size, 8);
    let prefetch_size = image.prefetch.len() as u64 * 4;
    let meta_blkaddr = align_up(prefetch_offset + prefetch_size, BLOCK_SIZE) / BLOCK_SIZE;

    // Pass 1: place every inode and decide its data layout.
    let mut cursor = (meta_blkaddr + 1) * BLOCK_SIZE;
    let mut payloads: Vec<Payload> = Vec::with_capacity(order.len());
    for &id in &order {
        let ino = &image.inodes[id];
        let payload = Payload::of(image, id, &parents)?;
        let head = EXTENDED_INODE_SIZE + xattr_body(&ino.xattrs)?.len() as u64;
        cursor = align_up(cursor, INODE_SLOT);
        let (len, keep_in_block) = match &payload {
            Payload::Flat { tail, .. } if !tail.is_empty() => (head + tail.len() as u64, true),
            Payload::Chunks { indexes, .. } => (
                align_up(head, CHUNK_INDEX_SIZE) + indexes.len() as u64 * CHUNK_INDEX_SIZE,
                false,
            ),
            _ => (head, true),
        };
        // The inode with its xattrs (and inline tail, which EROFS requires) stays in one block.
        let must_fit = if keep_in_block { len } else { head };
        if cursor % BLOCK_SIZE + must_fit > BLOCK_SIZE {
            cursor = align_up(cursor, BLOCK_SIZE);
        }
        slots[id] = Some(Slot {
            offset: cursor,
            nid: (cursor - meta_blkaddr * BLOCK_SIZE) / INODE_SLOT,
            data_block: 0,
        });
        cursor += len;
        payloads.push(payload);
    }
    // Whole blocks of large directories and symlinks go after the inodes.
    let mut block = align_up(cursor, BLOCK_SIZE) / BLOCK_SIZE;
    for (k, &id) in order.iter().enumerate() {
        if let Payload::Flat { blocks, .. } = &payloads[k] {
            if !blocks.is_empty() {
                slots[id].as_mut().unwrap().data_block = block;
                block += blocks.len() as u64 / BLOCK_SIZE;
            }
        }
    }
    let chunk_records = chunk_records(image);
    let chunk_table_offset = block * BLOCK_SIZE;
    let chunk_table_size = chunk_records.len() as u64 * CHUNK_INFO_SIZE;
    let total = align_up(chunk_table_offset + chunk_table_size, BLOCK_SIZE);
    if block > u32::MAX as u64 || total > (u32::MAX as u64) * BLOCK_SIZE {
        return Err(RafsError::unsupported(
            "image",
            "bootstrap larger than 16 TiB",
        ));
    }
    let slot = |id: InodeId| slots[id].expect("every reachable inode is placed");
    let root_nid = slot(ROOT).nid;
    if root_nid > u16::MAX as u64 {
        return Err(RafsError::unsupported(
            "image",
            "root nid does not fit 16 bits",
        ));
    }

    // Pass 2: encode.
    let mut out = vec![0u8; total as usize];
    let mut put = |offset: u64, bytes: &[u8]| {
        out[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes)
    };

    let blob_blocks: Vec<u64> = image
        .blobs
        .iter()
        .map(|b| b.uncompressed_size.div_ceil(BLOCK_SIZE))
        .collect();
    let mut buf = Vec::new();
    SuperBlock {
        root_nid: root_nid as u16,
        inos: image.inodes.len() as u64,
        build_time: 0,
        blocks: blob_blocks.iter().sum::<u64>() as u32,
        meta_blkaddr: meta_blkaddr as u32,
        extra_devices: nblobs as u16,
    }
    .encode(&mut buf);
    put(SUPER_OFFSET, &buf);

    buf.clear();
    ext_super(
        image,
        blob_table_offset,
        blob_table_size,
        chunk_table_offset,
        chunk_table_size,
        prefetch_offset,
        prefetch_size,
    )
    .encode(&mut buf);
    put(EXT_SUPER_OFFSET, &buf);

    buf.clear();
    let mut mapped = align_up(total / BLOCK_SIZE, DEVICE_ALIGN_BLOCKS);
    for (b, blocks) in image.blobs.iter().zip(&blob_blocks) {
        DeviceSlot {
            blob_id: b.blob_id.clone(),
            blocks: *blocks as u32,
            mapped_blkaddr: mapped as u32,
        }
        .encode(&mut buf);
        mapped = align_up(mapped + blocks, DEVICE_ALIGN_BLOCKS);
    }
    put(DEVICE_TABLE_OFFSET, &buf);

    buf.clear();
    for (i, b) in image.blobs.iter().enumerate() {
        blob_entry(i as u32, b).encode(&mut buf);
    }
    put(blob_table_offset, &buf);

    buf.clear();
    for &id in &image.prefetch {
        let nid = slots
            .get(id)
            .copied()
            .flatten()
            .ok_or_else(|| {
                RafsError::corrupt("prefetch list", format!("inode {id} is not in the tree"))
            })?
            .nid;
        buf.extend_from_slice(&(nid as u32).to_le_bytes());
    }
    put(prefetch_offset, &buf);

    for (k, (&id, payload)) in order.iter().zip(&payloads).enumerate() {
        let ino = &image.inodes[id];
        let s = slot(id);
        let xattrs = xattr_body(&ino.xattrs)?;
        let (layout, i_u, size) = match payload {
            Payload::Flat { blocks, tail, size } => {
                let layout = if tail.is_empty() {
                    LAYOUT_FLAT_PLAIN
                } else {
                    LAYOUT_FLAT_INLINE
                };
                // With no separate blocks, point at the inode's own block, as nydus-image does.
                let i_u = if blocks.is_empty() {
                    (s.offset / BLOCK_SIZE) as u32
                } else {
                    s.data_block as u32
                };
                (layout, i_u, *size)
            }
            Payload::Chunks { chunk_bits, .. } => (
                LAYOUT_CHUNK_BASED,
                CHUNK_FORMAT_INDEXES | chunk_bits,
                ino.size,
            ),
            Payload::Device => (LAYOUT_FLAT_PLAIN, encode_rdev(ino.rdev.0, ino.rdev.1), 0),
            Payload::Empty => (LAYOUT_FLAT_PLAIN, 0, ino.size),
        };
        buf.clear();
        DiskInode {
            extended: true,
            layout,
            xattr_icount: xattr_icount(&xattrs),
            mode: ino.mode as u16,
            nlink: ino.nlink,
            size,
            i_u,
            ino: (k + 1) as u32,
            uid: ino.uid,
            gid: ino.gid,
            mtime: ino.mtime,
            mtime_nsec: ino.mtime_nsec,
        }
        .encode_extended(&mut buf);
        buf.extend_from_slice(&xattrs);
        match payload {
            Payload::Flat { blocks, tail, .. } => {
                let fill = |bytes: &[u8]| {
                    if ino.is_dir() {
                        fill_nids(bytes, &|id| slot(id).nid)
                    } else {
                        bytes.to_vec()
                    }
                };
                buf.extend_from_slice(&fill(tail));
                if !blocks.is_empty() {
                    put(s.data_block * BLOCK_SIZE, &fill(blocks));
                }
            }
            Payload::Chunks { indexes, .. } => {
                buf.resize(align_up(buf.len() as u64, CHUNK_INDEX_SIZE) as usize, 0);
                for idx in indexes {
                    idx.encode(&mut buf);
                }
            }
            _ => {}
        }
        put(s.offset, &buf);
    }

    buf.clear();
    for r in &chunk_records {
        r.encode(&mut buf);
    }
    put(chunk_table_offset, &buf);
    Ok(out)
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: u64,
    nid: u64,
    data_block: u64,
}

/// What follows an inode on disk.
enum Payload {
    /// Directory entries or a symlink target: whole blocks stored apart, the tail inline.
    /// Directory entries carry placeholder nids until pass 2 fills them in.
    Flat {
        blocks: Vec<u8>,
        tail: Vec<u8>,
        size: u64,
    },
    Chunks {
        chunk_bits: u32,
        indexes: Vec<ChunkIndex>,
    },
    Device,
    Empty,
}

impl Payload {
    fn of(image: &Image, id: InodeId, parents: &[InodeId]) -> Result<Self> {
        let ino = &image.inodes[id];
        let head = EXTENDED_INODE_SIZE + xattr_body(&ino.xattrs)?.len() as u64;
        let flat = |data: Vec<u8>| {
            let size = data.len() as u64;
            let (mut blocks, tail) = split_tail(data, head);
            if tail.is_empty() {
                blocks.resize(align_up(size, BLOCK_SIZE) as usize, 0);
            }
            Payload::Flat { blocks, tail, size }
        };
        Ok(match &ino.kind {
            InodeKind::Dir(children) => flat(dir_data(image, id, children, parents[id])?),
            InodeKind::Symlink(target) => flat(target.clone()),
            // Empty files are chunk-based too, with no indexes: nydus expects it.
            InodeKind::File(chunks) => file_indexes(image, ino.size, chunks)?,
            InodeKind::Special if matches!(ino.file_type(), S_IFCHR | S_IFBLK) => Payload::Device,
            InodeKind::Special => Payload::Empty,
        })
    }
}

/// Splits flat data into whole blocks and an inline tail, or all blocks when the tail
/// cannot share a block with the inode.
fn split_tail(mut data: Vec<u8>, head: u64) -> (Vec<u8>, Vec<u8>) {
    let full = data.len() / BLOCK_SIZE as usize * BLOCK_SIZE as usize;
    let tail_len = data.len() - full;
    if tail_len == 0 || head + tail_len as u64 > BLOCK_SIZE {
        return (data, Vec::new());
    }
    let tail = data.split_off(full);
    (data, tail)
}

/// Chunk indexes of a file, one per image chunk. When the chunks are consecutive in one
/// blob, both in the chunk table and uncompressed, the inode's chunk size is widened to
/// cover the file, so the kernel maps it as one extent (as nydus-image does).
fn file_indexes(image: &Image, size: u64, chunks: &[ChunkRef]) -> Result<Payload> {
    let cs = image.chunk_size as u64;
    let info = |c: &ChunkRef| {
        image
            .chunk(*c)
            .ok_or_else(|| RafsError::corrupt("image", format!("chunk ref {c:?} has no chunk")))
    };
    let index = |c: &ChunkRef| -> Result<ChunkIndex> {
        let i = info(c)?;
        if i.uncompressed_offset % BLOCK_SIZE != 0 {
            return Err(RafsError::unsupported(
                "blob",
                "uncompressed chunk offsets not 4 KiB aligned",
            ));
        }
        Ok(ChunkIndex {
            device_id: (c.blob + 1) as u8,
            ci_index: c.index,
            blkaddr: (i.uncompressed_offset / BLOCK_SIZE) as u32,
        })
    };
    let contiguous = chunks.len() > 1 && chunks.windows(2).all(|w| {
        let (a, b) = (info(&w[0]), info(&w[1]));
        matches!((a, b), (Ok(a), Ok(b)) if w[0].blob == w[1].blob && w[1].index == w[0].index + 1
                && b.uncompressed_offset == a.uncompressed_offset + cs)
    });
    if chunks.is_empty() {
        return Ok(Payload::Chunks {
            chunk_bits: cs.trailing_zeros() - BLOCK_BITS as u32,
            indexes: Vec::new(),
        });
    }
    // Every chunk keeps its own index (nydusd reads one per image chunk); the widened
    // chunk bits only let the kernel map the whole run as one extent.
    let span = if contiguous {
        size.next_power_of_two().max(cs)
    } else {
        cs
    };
    let indexes = chunks.iter().map(index).collect::<Result<Vec<_>>>()?;
    if contiguous {
        return Ok(Payload::Chunks {
            chunk_bits: span.trailing_zeros() - BLOCK_BITS as u32,
            indexes,
        });
    }
    Ok(Payload::Chunks {
        chunk_bits: cs.trailing_zeros() - BLOCK_BITS as u32,
        indexes,
    })
}

fn ext_super(
    image: &Image,
    bto: u64,
    bts: u64,
    cto: u64,
    cts: u64,
    pto: u64,
    pts: u64,
) -> ExtSuperBlock {
    let mut flags = image.compressor.super_flag()
        | image.digester.super_flag()
        | FLAG_EXPLICIT_UID_GID
        | FLAG_ENCRYPTION_NONE;
    if image.inodes.iter().any(|i| !i.xattrs.is_empty()) {
        flags |= FLAG_HAS_XATTR;
    }
    if image
        .blobs
        .iter()
        .any(|b| b.features & BLOB_FEATURE_INLINED_CHUNK_DIGEST != 0)
    {
        flags |= FLAG_INLINED_CHUNK_DIGEST;
    }
    ExtSuperBlock {
        flags,
        blob_table_offset: bto,
        blob_table_size: bts as u32,
        chunk_size: image.chunk_size,
        chunk_table_offset: cto,
        chunk_table_size: cts,
        prefetch_table_offset: if pts == 0 { 0 } else { pto },
        prefetch_table_size: pts as u32,
    }
}

fn blob_entry(index: u32, b: &BlobInfo) -> BlobEntry {
    BlobEntry {
        blob_id: b.blob_id.clone(),
        blob_index: index,
        chunk_size: b.chunk_size,
        chunk_count: b.chunks.len() as u32,
        compression_algo: b.compressor.blob_id(),
        digest_algo: b.digester.blob_id(),
        features: b.features,
        compressed_size: b.compressed_size,
        uncompressed_size: b.uncompressed_size,
        toc_size: b.toc_size,
        ci_compressor: b.meta.compressor,
        ci_offset: b.meta.offset,
        ci_compressed_size: b.meta.compressed_size,
        ci_uncompressed_size: b.meta.uncompressed_size,
        toc_digest: b.toc_digest,
        meta_digest: [0; 32],
        meta_size: 0,
    }
}

/// Every chunk of every blob, ordered by digest as nydus-image writes the table.
fn chunk_records(image: &Image) -> Vec<ChunkRecord> {
    let mut out: Vec<ChunkRecord> = image
        .blobs
        .iter()
        .enumerate()
        .flat_map(|(b, blob)| {
            blob.chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.is_hole())
                .map(move |(i, c)| ChunkRecord {
                    digest: c.digest.0,
                    blob_index: b as u32,
                    flags: (c.compressed as u32 * CHUNK_FLAG_COMPRESSED)
                        | c.crc32.map_or(0, |_| CHUNK_FLAG_HAS_CRC32),
                    compressed_size: c.compressed_size,
                    uncompressed_size: c.uncompressed_size,
                    compressed_offset: c.compressed_offset,
                    uncompressed_offset: c.uncompressed_offset,
                    file_offset: c.file_offset,
                    index: i as u32,
                    crc32: c.crc32.unwrap_or(0),
                })
        })
        .collect();
    out.sort_by_key(|r| (r.digest, r.blob_index, r.index));
    out
}

fn check_image(image: &Image) -> Result<()> {
    if !valid_chunk_size(image.chunk_size as u64) {
        return Err(RafsError::corrupt(
            "image",
            format!("chunk size {:#x}", image.chunk_size),
        ));
    }
    if image.blobs.len() > 255 {
        return Err(RafsError::unsupported(
            "image",
            format!("{} blobs (at most 255)", image.blobs.len()),
        ));
    }
    if let Some(b) = image
        .blobs
        .iter()
        .find(|b| b.chunk_size != image.chunk_size || b.chunks.len() > 1 << 24)
    {
        return Err(RafsError::unsupported(
            "blob",
            format!(
                "{}: chunk size {:#x} differs from the image's, or too many chunks",
                b.blob_id, b.chunk_size
            ),
        ));
    }
    if image.inodes.first().is_none_or(|r| !r.is_dir()) {
        return Err(RafsError::corrupt("image", "root is not a directory"));
    }
    Ok(())
}

/// Inodes in depth-first order from the root, each once.
fn depth_first(image: &Image) -> Vec<InodeId> {
    let mut seen = vec![false; image.inodes.len()];
    let mut out = Vec::with_capacity(image.inodes.len());
    let mut stack = vec![ROOT];
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut seen[id], true) {
            continue;
        }
        out.push(id);
        for c in image.inodes[id].children().iter().rev() {
            if !seen[c.inode] {
                stack.push(c.inode);
            }
        }
    }
    out
}

fn parents(image: &Image, order: &[InodeId]) -> Vec<InodeId> {
    let mut p: Vec<InodeId> = (0..image.inodes.len()).collect();
    for &id in order {
        for c in image.inodes[id].children() {
            if image.inodes[c.inode].is_dir() {
                p[c.inode] = id;
            }
        }
    }
    p
}
