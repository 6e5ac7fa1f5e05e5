//! Repairs images whose chunk records name the wrong blob. nydus-image 2.x, building a
//! layer with `--parent-bootstrap`, records the new layer's chunks under blob 0: readers
//! that check digests still find the bytes (see `BlobDir::locate_chunk`), but the kernel
//! and nydusd follow the records. Moving each such chunk to the blob that holds it lets the
//! image be written again with correct chunk indexes.

use super::blobfile::BlobDir;
use super::error::{RafsError, Result};
use super::image::{ChunkRef, InodeKind};
use super::reader::Bootstrap;
use std::collections::HashMap;

/// Moves every file chunk that verifies only in another blob than recorded; returns how
/// many chunk records moved. Chunks that verify nowhere are left for `check` to report.
pub fn relocate_misplaced(bs: &mut Bootstrap, blobs: &BlobDir) -> Result<usize> {
    let image = &bs.image;
    let mut moves: HashMap<ChunkRef, ChunkRef> = HashMap::new();
    for ino in &image.inodes {
        for &c in ino.chunks() {
            if moves.contains_key(&c) {
                continue;
            }
            if let Ok((found, _)) = blobs.locate_chunk(image, c.blob, c.index) {
                if found != c.blob {
                    // Its index in the blob that holds it is the one the record carries.
                    let index = bs.aliased.get(&c).copied().unwrap_or(c.index);
                    moves.insert(c, ChunkRef { blob: found, index });
                }
            }
        }
    }
    if moves.is_empty() {
        return Ok(0);
    }
    let image = &mut bs.image;
    for (from, to) in &moves {
        let info = image.blobs[from.blob as usize].chunks[from.index as usize];
        let dest = &mut image.blobs[to.blob as usize].chunks;
        if dest.len() <= to.index as usize {
            dest.resize(to.index as usize + 1, super::image::ChunkInfo::hole());
        }
        let slot = &mut dest[to.index as usize];
        if slot.uncompressed_size != 0 && slot.digest != info.digest {
            return Err(RafsError::corrupt(
                "chunk table",
                format!(
                    "chunk {} belongs at index {} of blob {}, which holds another chunk",
                    info.digest, to.index, to.blob
                ),
            ));
        }
        *slot = info;
    }
    for ino in &mut image.inodes {
        if let InodeKind::File(chunks) = &mut ino.kind {
            for c in chunks.iter_mut() {
                if let Some(to) = moves.get(c) {
                    *c = *to;
                }
            }
        }
    }
    // What no file uses any more is dropped from the chunk table.
    let used: std::collections::HashSet<ChunkRef> = image
        .inodes
        .iter()
        .flat_map(|i| i.chunks().iter().copied())
        .collect();
    for from in moves.keys().filter(|c| !used.contains(c)) {
        image.blobs[from.blob as usize].chunks[from.index as usize] =
            super::image::ChunkInfo::hole();
    }
    bs.aliased.clear();
    Ok(moves.len())
}
