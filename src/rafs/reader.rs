//! Parses a RAFS v6 bootstrap into an [`Image`]. Every offset, count and index read from
//! the file is checked before use: a corrupt or hostile bootstrap gives an error that names
//! the inode or table at fault, never a panic or an endless walk.

use super::codec::{Compressor, Digester};
use super::dirent::parse_dir_blocks;
use super::error::{RafsError, Result};
use super::image::*;
use super::layout::*;
use super::xattr::read_xattrs;
use std::collections::HashMap;

/// A parsed bootstrap: the image plus the raw tables `inspect` and `check` report on.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub image: Image,
    pub super_block: SuperBlock,
    pub ext_super_block: ExtSuperBlock,
    pub devices: Vec<DeviceSlot>,
    /// Chunks that share their (blob, index) key with another in the chunk table, placed
    /// after the blob's own chunks: their recorded index.
    pub aliased: HashMap<ChunkRef, u32>,
    /// The on-disk nid of each inode, for error messages and prefetch tables.
    pub nids: Vec<u64>,
}

pub fn read_bootstrap_file(path: &std::path::Path) -> Result<Bootstrap> {
    let data = std::fs::read(path).map_err(|e| RafsError::io(path, e))?;
    parse(&data)
}

pub fn parse(data: &[u8]) -> Result<Bootstrap> {
    let sb = SuperBlock::decode(data)?;
    let ext = ExtSuperBlock::decode(data)?;
    if ext.flags & FLAG_TARFS_MODE != 0 {
        return Err(RafsError::unsupported("bootstrap", "tarfs mode images"));
    }
    let compressor = Compressor::from_super_flags(ext.flags)?;
    let digester = Digester::from_super_flags(ext.flags)?;
    let devices = (0..sb.extra_devices as u64)
        .map(|i| DeviceSlot::decode(data, i))
        .collect::<Result<Vec<_>>>()?;
    let (blobs, aliases) = read_blobs(data, &ext)?;
    if blobs.len() != devices.len() {
        return Err(RafsError::corrupt(
            "blob table",
            format!(
                "{} blobs but {} devices in the device table",
                blobs.len(),
                devices.len()
            ),
        ));
    }
    let mut walker = TreeWalker {
        data,
        sb: &sb,
        blobs: &blobs,
        aliases: &aliases,
        chunk_size: ext.chunk_size as u64,
        inodes: Vec::new(),
        nids: Vec::new(),
        by_nid: HashMap::new(),
        dir_bytes: 0,
        xattr_bytes: 0,
    };
    walker.walk(sb.root_nid as u64)?;
    let TreeWalker {
        inodes,
        nids,
        by_nid,
        ..
    } = walker;
    let prefetch = read_prefetch(data, &ext, &by_nid)?;
    let image = Image {
        chunk_size: ext.chunk_size,
        compressor,
        digester,
        blobs,
        inodes,
        prefetch,
    };
    let aliased = aliases
        .iter()
        .flat_map(|(&(blob, idx), positions)| {
            positions
                .iter()
                .filter(move |&&p| p != idx)
                .map(move |&p| (ChunkRef { blob, index: p }, idx))
        })
        .collect();
    Ok(Bootstrap {
        image,
        super_block: sb,
        ext_super_block: ext,
        devices,
        aliased,
        nids,
    })
}

/// Chunk positions that share one (blob, index) key in the chunk table.
type Aliases = HashMap<(u32, u32), Vec<u32>>;

/// How many chunk-table slots, over all blobs, may have no record. A slot costs memory
/// but no bootstrap bytes: holes are the chunks of a lower layer that no file of this
/// image uses any more, so they are real but limited, or one record with a huge index
/// would make the reader allocate gigabytes.
const MAX_CHUNK_HOLES: u64 = 1 << 20;

fn read_blobs(data: &[u8], ext: &ExtSuperBlock) -> Result<(Vec<BlobInfo>, Aliases)> {
    if ext.blob_table_size as u64 % BLOB_ENTRY_SIZE != 0 {
        return Err(RafsError::corrupt(
            "blob table",
            format!("size {} is not a multiple of 256", ext.blob_table_size),
        ));
    }
    let count = ext.blob_table_size as u64 / BLOB_ENTRY_SIZE;
    // The whole table must be there before its size sets a capacity.
    Le::at(data, ext.blob_table_offset, ext.blob_table_size as u64)?;
    let mut blobs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let e = BlobEntry::decode(data, ext.blob_table_offset + i * BLOB_ENTRY_SIZE)?;
        if e.blob_index as u64 != i {
            return Err(RafsError::corrupt(
                "blob table",
                format!("entry {i} says it is blob {}", e.blob_index),
            ));
        }
        if !valid_chunk_size(e.chunk_size as u64) {
            return Err(RafsError::corrupt(
                "blob table",
                format!("blob {} chunk size {:#x}", e.blob_id, e.chunk_size),
            ));
        }
        if e.chunk_count > 1 << 24 {
            return Err(RafsError::corrupt(
                "blob table",
                format!("blob {} has {} chunks", e.blob_id, e.chunk_count),
            ));
        }
        blobs.push(BlobInfo {
            compressor: Compressor::from_blob_id(e.compression_algo)?,
            digester: Digester::from_blob_id(e.digest_algo)?,
            chunk_size: e.chunk_size,
            features: e.features,
            compressed_size: e.compressed_size,
            uncompressed_size: e.uncompressed_size,
            meta: BlobMetaLocation {
                compressor: e.ci_compressor,
                offset: e.ci_offset,
                compressed_size: e.ci_compressed_size,
                uncompressed_size: e.ci_uncompressed_size,
            },
            toc_size: e.toc_size,
            toc_digest: e.toc_digest,
            // Filled from the chunk table below; `chunk_count` is only a claim.
            chunks: Vec::new(),
            blob_id: e.blob_id,
        });
    }
    // The chunk table lists every chunk once, in digest order; file chunk indexes address
    // them by (blob, index in blob), so place each record at its index.
    if ext.chunk_table_size % CHUNK_INFO_SIZE != 0 {
        return Err(RafsError::corrupt(
            "chunk table",
            format!("size {} is not a multiple of 80", ext.chunk_table_size),
        ));
    }
    let n = ext.chunk_table_size / CHUNK_INFO_SIZE;
    Le::at(data, ext.chunk_table_offset, ext.chunk_table_size)?;
    // Records normally map one to one onto (blob, index). nydus-image 2.x, building a layer
    // with --parent-bootstrap, records the new layer's chunks under blob 0, so one key can
    // name several chunks: keep them all, extra ones after the blob's own, and let each file
    // pick by size (`read_chunks`) and each read by digest (`BlobDir::read_chunk`).
    // First pass: check every record and size each blob's table, so that the holes
    // (indexes below a blob's highest that no record fills) are counted, whatever the
    // record order, before any slot is allocated.
    let mut records = Vec::with_capacity(n as usize);
    let mut lens = vec![0u64; blobs.len()];
    let mut keys = std::collections::HashSet::new();
    for i in 0..n {
        let r = ChunkRecord::decode(data, ext.chunk_table_offset + i * CHUNK_INFO_SIZE)?;
        let blob = r.blob_index as usize;
        if blob >= blobs.len() {
            return Err(RafsError::corrupt(
                "chunk table",
                format!("record {i} names blob {blob}"),
            ));
        }
        let idx = r.index as usize;
        if idx >= 1 << 24 || r.uncompressed_size == 0 || r.uncompressed_size > 0x100_0000 {
            return Err(RafsError::corrupt(
                "chunk table",
                format!("record {i}: index {idx}, size {}", r.uncompressed_size),
            ));
        }
        lens[blob] = lens[blob].max(idx as u64 + 1);
        keys.insert((blob, idx));
        records.push(r);
    }
    let holes = lens.iter().sum::<u64>() - keys.len() as u64;
    if holes > MAX_CHUNK_HOLES {
        let top = lens.iter().max().unwrap_or(&0).saturating_sub(1);
        return Err(RafsError::corrupt(
            "chunk table",
            format!(
                "{holes} chunks below index {top} have no record (at most \
                 {MAX_CHUNK_HOLES} may be missing)"
            ),
        ));
    }
    let mut slots: Vec<Vec<Option<ChunkInfo>>> =
        lens.iter().map(|&len| vec![None; len as usize]).collect();
    let mut extra: Vec<Vec<(u32, ChunkInfo)>> = blobs.iter().map(|_| Vec::new()).collect();
    for r in records {
        let (blob, idx) = (r.blob_index as usize, r.index as usize);
        let info = ChunkInfo {
            digest: ChunkDigest(r.digest),
            compressed_offset: r.compressed_offset,
            compressed_size: r.compressed_size,
            uncompressed_offset: r.uncompressed_offset,
            uncompressed_size: r.uncompressed_size,
            compressed: r.flags & CHUNK_FLAG_COMPRESSED != 0,
            crc32: (r.flags & CHUNK_FLAG_HAS_CRC32 != 0).then_some(r.crc32),
            file_offset: r.file_offset,
        };
        match &slots[blob][idx] {
            Some(prev) if *prev != info => extra[blob].push((idx as u32, info)),
            _ => slots[blob][idx] = Some(info),
        }
    }
    let mut aliases = HashMap::new();
    for (b, (blob, slot)) in blobs.iter_mut().zip(slots).enumerate() {
        for c in slot {
            // A hole in the table is only an error if a file points at it: size 0 marks it.
            blob.chunks.push(c.unwrap_or_else(ChunkInfo::hole));
        }
        for (idx, info) in std::mem::take(&mut extra[b]) {
            aliases
                .entry((b as u32, idx))
                .or_insert_with(|| vec![idx])
                .push(blob.chunks.len() as u32);
            blob.chunks.push(info);
        }
    }
    Ok((blobs, aliases))
}

fn read_prefetch(
    data: &[u8],
    ext: &ExtSuperBlock,
    by_nid: &HashMap<u64, InodeId>,
) -> Result<Vec<InodeId>> {
    if ext.prefetch_table_size == 0 {
        return Ok(Vec::new());
    }
    let r = Le::at(
        data,
        ext.prefetch_table_offset,
        ext.prefetch_table_size as u64,
    )?;
    (0..ext.prefetch_table_size as usize / 4)
        .map(|i| {
            let nid = r.u32(i * 4) as u64;
            by_nid.get(&nid).copied().ok_or_else(|| {
                RafsError::corrupt(
                    "prefetch table",
                    format!("entry {i} names unknown nid {nid}"),
                )
            })
        })
        .collect()
}

struct TreeWalker<'a> {
    data: &'a [u8],
    sb: &'a SuperBlock,
    blobs: &'a [BlobInfo],
    aliases: &'a Aliases,
    chunk_size: u64,
    inodes: Vec<Inode>,
    nids: Vec<u64>,
    by_nid: HashMap<u64, InodeId>,
    /// Directory bytes read so far: each directory has blocks of its own, so they all fit
    /// in the bootstrap.
    dir_bytes: u64,
    /// Inline xattr bytes read so far: each inode's follow it, so they all fit too.
    xattr_bytes: u64,
}

impl TreeWalker<'_> {
    /// Reads every inode reachable from the root, breadth first with an explicit queue so a
    /// deep tree cannot overflow the stack. A directory reached twice is a cycle: refused.
    fn walk(&mut self, root_nid: u64) -> Result<()> {
        let root = self.load(root_nid)?;
        if !self.inodes[root].is_dir() {
            return Err(RafsError::BadInode {
                nid: root_nid,
                detail: "root is not a directory".into(),
            });
        }
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(dir) = queue.pop_front() {
            let dir_nid = self.nids[dir];
            let raw = match &self.inodes[dir].kind {
                InodeKind::Dir(_) => self.read_dirents(dir_nid)?,
                _ => continue,
            };
            let mut children = Vec::with_capacity(raw.len());
            for (name, nid, _ftype) in raw {
                if name == b"." || name == b".." {
                    continue;
                }
                let known = self.by_nid.get(&nid).copied();
                let child = match known {
                    Some(id) if self.inodes[id].is_dir() => {
                        return Err(RafsError::BadInode {
                            nid,
                            detail: "directory linked twice (cycle)".into(),
                        })
                    }
                    Some(id) => id,
                    None => {
                        let id = self.load(nid)?;
                        if self.inodes[id].is_dir() {
                            queue.push_back(id);
                        }
                        id
                    }
                };
                children.push(DirEntry { name, inode: child });
            }
            if !children.windows(2).all(|w| w[0].name < w[1].name) {
                return Err(RafsError::BadInode {
                    nid: dir_nid,
                    detail: "directory entries not sorted or duplicated".into(),
                });
            }
            self.inodes[dir].kind = InodeKind::Dir(children);
        }
        Ok(())
    }

    fn inode_offset(&self, nid: u64) -> Result<u64> {
        (self.sb.meta_blkaddr as u64)
            .checked_mul(BLOCK_SIZE)
            .and_then(|b| b.checked_add(nid.checked_mul(INODE_SLOT)?))
            .ok_or_else(|| RafsError::BadInode {
                nid,
                detail: "address overflows".into(),
            })
    }

    fn load(&mut self, nid: u64) -> Result<InodeId> {
        let bad = |detail: String| RafsError::BadInode { nid, detail };
        if self.inodes.len() >= 1 << 31 {
            return Err(bad("too many inodes".into()));
        }
        let off = self.inode_offset(nid)?;
        let di = DiskInode::decode(self.data, off, nid)?;
        let xattr_off = off + di.disk_size();
        // Overlapping xattr areas would let every inode copy up to 256 KiB of its
        // neighbours' bytes.
        self.xattr_bytes += di.xattr_size();
        if self.xattr_bytes > self.data.len() as u64 {
            return Err(bad(format!(
                "xattr areas add up to {} bytes, more than the whole bootstrap ({} bytes)",
                self.xattr_bytes,
                self.data.len()
            )));
        }
        let xattrs = read_xattrs(self.data, xattr_off, di.xattr_icount)
            .map_err(|e| bad(format!("xattrs: {e}")))?;
        let tail_off = xattr_off + di.xattr_size();
        let mode = di.mode as u32;
        let mut rdev = (0, 0);
        let kind = match mode & S_IFMT {
            S_IFDIR => InodeKind::Dir(Vec::new()),
            S_IFREG => InodeKind::File(self.read_chunks(nid, &di, tail_off)?),
            S_IFLNK => {
                if di.size == 0 || di.size > 4096 {
                    return Err(bad(format!("symlink target of {} bytes", di.size)));
                }
                InodeKind::Symlink(self.read_data(nid, &di, tail_off)?)
            }
            S_IFCHR | S_IFBLK => {
                rdev = decode_rdev(di.i_u);
                InodeKind::Special
            }
            S_IFIFO | S_IFSOCK => InodeKind::Special,
            _ => return Err(bad(format!("unknown file type in mode {mode:o}"))),
        };
        let id = self.inodes.len();
        let mtime = if di.extended {
            di.mtime
        } else {
            self.sb.build_time
        };
        self.inodes.push(Inode {
            mode,
            uid: di.uid,
            gid: di.gid,
            mtime,
            mtime_nsec: di.mtime_nsec,
            nlink: di.nlink,
            size: di.size,
            rdev,
            xattrs,
            kind,
        });
        self.nids.push(nid);
        self.by_nid.insert(nid, id);
        Ok(id)
    }

    /// The bytes of a flat (plain or inline) inode: whole blocks at `i_u`, and for the
    /// inline layout the tail right after the inode and its xattrs.
    fn read_data(&self, nid: u64, di: &DiskInode, tail_off: u64) -> Result<Vec<u8>> {
        let bad = |detail: String| RafsError::BadInode { nid, detail };
        if di.size > 1 << 32 {
            return Err(bad(format!("flat data of {} bytes", di.size)));
        }
        let (blocks_len, tail_len) = match di.layout {
            LAYOUT_FLAT_PLAIN => (di.size, 0),
            LAYOUT_FLAT_INLINE => (di.size / BLOCK_SIZE * BLOCK_SIZE, di.size % BLOCK_SIZE),
            other => {
                return Err(bad(format!(
                    "data layout {other} where flat data is expected"
                )))
            }
        };
        // No capacity from `di.size`: it may claim gigabytes the bootstrap does not hold.
        let mut out = Vec::new();
        if blocks_len > 0 {
            let r = Le::at(self.data, di.i_u as u64 * BLOCK_SIZE, blocks_len)
                .map_err(|e| bad(format!("data blocks: {e}")))?;
            out.extend_from_slice(r.bytes(0, blocks_len as usize));
        }
        if tail_len > 0 {
            if tail_off % BLOCK_SIZE + tail_len > BLOCK_SIZE {
                return Err(bad("inline data crosses a block boundary".into()));
            }
            let r = Le::at(self.data, tail_off, tail_len)
                .map_err(|e| bad(format!("inline data: {e}")))?;
            out.extend_from_slice(r.bytes(0, tail_len as usize));
        }
        Ok(out)
    }

    fn read_dirents(&mut self, nid: u64) -> Result<Vec<(Vec<u8>, u64, u8)>> {
        let off = self.inode_offset(nid)?;
        let di = DiskInode::decode(self.data, off, nid)?;
        // Directories pointing at the same blocks would let a small bootstrap unfold into
        // a tree quadratic in its size (2,000 directories sharing 7,000 entries: 14 million).
        self.dir_bytes = self.dir_bytes.saturating_add(di.size);
        if self.dir_bytes > self.data.len() as u64 {
            return Err(RafsError::BadInode {
                nid,
                detail: format!(
                    "directory sizes add up to {} bytes, more than the whole bootstrap \
                     ({} bytes)",
                    self.dir_bytes,
                    self.data.len()
                ),
            });
        }
        let data = self.read_data(nid, &di, off + di.disk_size() + di.xattr_size())?;
        parse_dir_blocks(&data).map_err(|detail| RafsError::BadInode { nid, detail })
    }

    fn read_chunks(&self, nid: u64, di: &DiskInode, tail_off: u64) -> Result<Vec<ChunkRef>> {
        let bad = |detail: String| RafsError::BadInode { nid, detail };
        if di.size == 0 {
            return Ok(Vec::new());
        }
        if di.layout != LAYOUT_CHUNK_BASED {
            return Err(bad(format!("regular file with data layout {}", di.layout)));
        }
        let bits = (di.i_u & CHUNK_FORMAT_BLKBITS_MASK) as u64 + BLOCK_BITS as u64;
        let chunk_size = self.chunk_size;
        if di.i_u & CHUNK_FORMAT_INDEXES == 0 || bits > 40 || 1u64 << bits < chunk_size {
            return Err(bad(format!("chunk format {:#x}", di.i_u)));
        }
        // One index per image chunk. The inode's chunk bits may be wider (when the chunks
        // are contiguous, so the kernel sees one extent), but the indexes are all there.
        let n = di.size.div_ceil(chunk_size);
        let start = align_up(tail_off, CHUNK_INDEX_SIZE);
        let r = Le::at(self.data, start, n.saturating_mul(CHUNK_INDEX_SIZE))
            .map_err(|e| bad(format!("chunk indexes: {e}")))?;
        let mut out = Vec::with_capacity(n as usize);
        for k in 0..n {
            let idx = ChunkIndex::decode(&r, (k * CHUNK_INDEX_SIZE) as usize);
            let blob = idx.device_id as usize;
            let Some(info) = blob.checked_sub(1).and_then(|b| self.blobs.get(b)) else {
                return Err(bad(format!(
                    "chunk index {k} names device {}",
                    idx.device_id
                )));
            };
            let ci = idx.ci_index;
            if info
                .chunks
                .get(ci as usize)
                .is_none_or(|c| c.uncompressed_size == 0)
            {
                return Err(bad(format!(
                    "chunk {ci} of blob {} is not in the chunk table",
                    info.blob_id
                )));
            }
            let key = ((blob - 1) as u32, ci);
            let want = chunk_size.min(di.size - k * chunk_size);
            let index = match self.aliases.get(&key) {
                Some(cands) => *cands
                    .iter()
                    .find(|&&p| info.chunks[p as usize].uncompressed_size as u64 == want)
                    .unwrap_or(&cands[0]),
                None => ci,
            };
            out.push(ChunkRef { blob: key.0, index });
        }
        let total: u64 = out
            .iter()
            .map(|c| self.blobs[c.blob as usize].chunks[c.index as usize].uncompressed_size as u64)
            .sum();
        if total != di.size {
            return Err(bad(format!(
                "chunks hold {total} bytes, file size is {}",
                di.size
            )));
        }
        Ok(out)
    }
}
