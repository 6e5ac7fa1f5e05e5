//! Block export: one raw EROFS disk image the kernel can mount (`mount -t erofs -o loop`).
//!
//! The bootstrap sits at offset 0; each blob (device slot *i*, device id *i + 1*) gets the
//! range `mapped_blkaddr * 4096 ..` of the image, and every chunk of the blob is written there
//! *uncompressed*, at its uncompressed offset. With no `device=` mount option the kernel
//! treats the device table as a map of that one flat address space. Every chunk is read and
//! digest-checked on the way ([`decode_chunk`]), so a bad blob gives an error, never an
//! image with wrong bytes in it.

use super::blobfile::BlobDir;
use super::error::{RafsError, Result};
use super::image::{ChunkInfo, Image};
use super::layout::BLOCK_SIZE;
use super::reader::Bootstrap;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What [`export_block`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Size of the image file in bytes.
    pub size: u64,
    /// One per device slot, in device-table order.
    pub blobs: Vec<ExportedBlob>,
    /// Chunks found, by digest, in another blob than the one the bootstrap records for
    /// them. The image holds them where they really belong, but the kernel follows the
    /// bootstrap's chunk indexes, so the files listed here read wrong bytes under a kernel
    /// mount. Empty for every well-formed image.
    pub misplaced: Vec<MisplacedChunk>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedBlob {
    pub blob_id: String,
    pub mapped_blkaddr: u32,
    pub blocks: u32,
    /// Chunks written into this blob's range.
    pub chunks: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MisplacedChunk {
    pub digest: String,
    /// The blob the bootstrap's chunk index names (the device the kernel reads).
    pub recorded_blob: String,
    /// The blob whose bytes match the digest (where the chunk was written).
    pub found_blob: String,
    /// Files that use the chunk.
    pub paths: Vec<String>,
}

/// Byte range of one blob in the image.
#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    len: u64,
}

/// Bytes [`export_block`] reports through `on_progress`: the bootstrap plus every chunk.
pub fn export_bytes(bootstrap_len: u64, image: &Image) -> u64 {
    bootstrap_len
        + image
            .blobs
            .iter()
            .flat_map(|b| &b.chunks)
            .filter(|c| c.uncompressed_size != 0)
            .map(|c| c.uncompressed_size as u64)
            .sum::<u64>()
}

/// Checks the device table against the blob table and lays the blobs out: each device
/// must name its blob, have a mapped address, and sit after the bootstrap and the device
/// before it. Returns each blob's region and the image size.
fn layout(bootstrap_len: u64, bs: &Bootstrap) -> Result<(Vec<Region>, u64)> {
    let blobs = &bs.image.blobs;
    let bad = |detail: String| RafsError::corrupt("device table", detail);
    if bs.devices.len() != blobs.len() {
        return Err(bad(format!(
            "{} device slots for {} blobs",
            bs.devices.len(),
            blobs.len()
        )));
    }
    let mut end = bootstrap_len;
    let mut regions = Vec::with_capacity(blobs.len());
    for (i, (dev, blob)) in bs.devices.iter().zip(blobs).enumerate() {
        if dev.blob_id != blob.blob_id {
            return Err(bad(format!(
                "slot {i} names blob {} but blob table entry {i} is {}",
                dev.blob_id, blob.blob_id
            )));
        }
        if dev.mapped_blkaddr == 0 {
            return Err(RafsError::unsupported(
                "image for block export",
                format!(
                    "device slot {i} (blob {}) has no mapped block address",
                    dev.blob_id
                ),
            ));
        }
        let region = Region {
            start: dev.mapped_blkaddr as u64 * BLOCK_SIZE,
            len: dev.blocks as u64 * BLOCK_SIZE,
        };
        if region.start < end {
            return Err(bad(format!(
                "slot {i} (blob {}) starts at block {}, inside the bootstrap or the blob before it (which end at byte {end})",
                dev.blob_id, dev.mapped_blkaddr
            )));
        }
        if blob.uncompressed_size > region.len {
            return Err(bad(format!(
                "slot {i} (blob {}) has {} blocks, but the blob holds {} uncompressed bytes",
                dev.blob_id, dev.blocks, blob.uncompressed_size
            )));
        }
        end = region.start + region.len;
        regions.push(region);
    }
    Ok((regions, end))
}

/// Where one chunk went.
struct Placed {
    blob: u32,
    index: u32,
    found: u32,
}

/// Writes the block image of `bs` (parsed from `bootstrap_bytes`) to `out`, reading chunks
/// from `blobs`. `on_progress` gets the bytes done as they are written (see
/// [`export_bytes`] for the total). The image is written under a temporary name next to
/// `out` and renamed at the end, so a failed export leaves no file at `out`.
pub fn export_block(
    bootstrap_bytes: &[u8],
    bs: &Bootstrap,
    blobs: &BlobDir,
    out: &Path,
    on_progress: impl Fn(u64) + Sync,
) -> Result<ExportSummary> {
    let image = &bs.image;
    let (regions, size) = layout(bootstrap_bytes.len() as u64, bs)?;
    for b in &image.blobs {
        let path = blobs.path().join(&b.blob_id);
        std::fs::metadata(&path).map_err(|e| RafsError::io(&path, e))?;
    }
    let tmp = temp_path(out);
    let result = write_image(
        bootstrap_bytes,
        bs,
        blobs,
        &regions,
        size,
        &tmp,
        &on_progress,
    );
    match result {
        Ok(placed) => {
            std::fs::rename(&tmp, out).map_err(|e| RafsError::io(out, e))?;
            Ok(summarize(bs, &placed, size))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    out.with_file_name(format!(".{name}.export-{}", std::process::id()))
}

fn write_image(
    bootstrap_bytes: &[u8],
    bs: &Bootstrap,
    blobs: &BlobDir,
    regions: &[Region],
    size: u64,
    path: &Path,
    on_progress: &(impl Fn(u64) + Sync),
) -> Result<Vec<Placed>> {
    let image = &bs.image;
    let file = std::fs::File::create(path).map_err(|e| RafsError::io(path, e))?;
    let io = |e| RafsError::io(path, e);
    file.set_len(size).map_err(io)?;
    file.write_all_at(bootstrap_bytes, 0).map_err(io)?;
    on_progress(bootstrap_bytes.len() as u64);

    let jobs: Vec<(u32, u32)> = image
        .blobs
        .iter()
        .enumerate()
        .flat_map(|(b, info)| {
            info.chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| c.uncompressed_size != 0)
                .map(move |(i, _)| (b as u32, i as u32))
        })
        .collect();
    let placed = jobs
        .into_par_iter()
        .map(|(blob, index)| {
            let chunk = &image.blobs[blob as usize].chunks[index as usize];
            let (found, data) = blobs.locate_chunk(image, blob, index)?;
            let region = regions[found as usize];
            check_range(chunk, &image.blobs[found as usize].blob_id, region)?;
            file.write_all_at(&data, region.start + chunk.uncompressed_offset)
                .map_err(io)?;
            on_progress(data.len() as u64);
            Ok(Placed { blob, index, found })
        })
        .collect::<Result<Vec<_>>>()?;
    check_overlaps(image, &placed)?;
    file.sync_all().map_err(io)?;
    Ok(placed)
}

/// A chunk must lie inside its blob's device, on a block boundary the kernel can address.
fn check_range(chunk: &ChunkInfo, blob_id: &str, region: Region) -> Result<()> {
    let bad = |detail: String| RafsError::BadChunk {
        blob: blob_id.to_string(),
        digest: chunk.digest.to_string(),
        detail,
    };
    let end = chunk.uncompressed_offset + chunk.uncompressed_size as u64;
    if end > region.len {
        return Err(bad(format!(
            "uncompressed range {}..{end} lies outside the blob's {} device blocks",
            chunk.uncompressed_offset,
            region.len / BLOCK_SIZE
        )));
    }
    if chunk.uncompressed_offset % BLOCK_SIZE != 0 {
        return Err(bad(format!(
            "uncompressed offset {} is not block aligned, the kernel cannot address it",
            chunk.uncompressed_offset
        )));
    }
    Ok(())
}

/// Two different chunks written over the same bytes of one blob would leave whichever was
/// written last: refuse such an image rather than produce a run-dependent one.
fn check_overlaps(image: &Image, placed: &[Placed]) -> Result<()> {
    let end = |c: &ChunkInfo| c.uncompressed_offset + c.uncompressed_size as u64;
    let mut by_blob: BTreeMap<u32, Vec<&ChunkInfo>> = BTreeMap::new();
    for p in placed {
        by_blob
            .entry(p.found)
            .or_default()
            .push(&image.blobs[p.blob as usize].chunks[p.index as usize]);
    }
    for (blob, mut chunks) in by_blob {
        chunks.sort_by_key(|c| (c.uncompressed_offset, c.uncompressed_size));
        // `a` is the chunk reaching furthest so far; any later chunk that starts before its
        // end overlaps it, unless it is the very same chunk listed twice.
        let mut a: Option<&ChunkInfo> = None;
        for b in chunks {
            if let Some(a) = a {
                let same = a.digest == b.digest
                    && a.uncompressed_offset == b.uncompressed_offset
                    && a.uncompressed_size == b.uncompressed_size;
                if !same && end(a) > b.uncompressed_offset {
                    return Err(RafsError::BadChunk {
                        blob: image.blobs[blob as usize].blob_id.clone(),
                        digest: b.digest.to_string(),
                        detail: format!(
                            "its uncompressed range at {} overlaps chunk {} at {}",
                            b.uncompressed_offset, a.digest, a.uncompressed_offset
                        ),
                    });
                }
            }
            if a.is_none_or(|a| end(b) > end(a)) {
                a = Some(b);
            }
        }
    }
    Ok(())
}

fn summarize(bs: &Bootstrap, placed: &[Placed], size: u64) -> ExportSummary {
    let image = &bs.image;
    let mut counts = vec![0u64; image.blobs.len()];
    let mut found = HashMap::with_capacity(placed.len());
    for p in placed {
        counts[p.found as usize] += 1;
        found.insert((p.blob, p.index), p.found);
    }
    // Chunks the kernel will look for on another device than the one they were written to.
    let mut misplaced: BTreeMap<(u32, u32), MisplacedChunk> = BTreeMap::new();
    for (path, id) in image.walk() {
        for r in image.inodes[id].chunks() {
            let Some(&f) = found.get(&(r.blob, r.index)) else {
                continue;
            };
            if f == r.blob {
                continue;
            }
            let chunk = &image.blobs[r.blob as usize].chunks[r.index as usize];
            let m = misplaced
                .entry((r.blob, r.index))
                .or_insert_with(|| MisplacedChunk {
                    digest: chunk.digest.to_string(),
                    recorded_blob: image.blobs[r.blob as usize].blob_id.clone(),
                    found_blob: image.blobs[f as usize].blob_id.clone(),
                    paths: Vec::new(),
                });
            let p = String::from_utf8_lossy(&path).into_owned();
            if !m.paths.contains(&p) {
                m.paths.push(p);
            }
        }
    }
    ExportSummary {
        size,
        blobs: bs
            .devices
            .iter()
            .zip(counts)
            .map(|(d, chunks)| ExportedBlob {
                blob_id: d.blob_id.clone(),
                mapped_blkaddr: d.mapped_blkaddr,
                blocks: d.blocks,
                chunks,
            })
            .collect(),
        misplaced: misplaced.into_values().collect(),
    }
}
