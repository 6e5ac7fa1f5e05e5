//! Stacks one layer on another as a container runtime would: OCI whiteouts
//! (`.wh.NAME` removes NAME, `.wh..wh..opq` hides everything below), directories merged,
//! anything else replaced. Used for `--parent-bootstrap` builds and for `merge`.

use super::layer::compact;
use crate::rafs::image::*;
use crate::rafs::RafsError;

pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// `upper` over `lower`. Blobs are matched by id, so layers that share blobs (or an upper
/// built against this lower) keep one copy in the blob table.
pub fn overlay(lower: Image, upper: Image) -> Result<Image, RafsError> {
    if lower.chunk_size != upper.chunk_size || lower.digester != upper.digester {
        return Err(RafsError::unsupported(
            "layers",
            format!(
                "chunk size {:#x}/{} over {:#x}/{}: all layers must share chunk size and digester",
                upper.chunk_size,
                upper.digester.name(),
                lower.chunk_size,
                lower.digester.name()
            ),
        ));
    }
    let mut blobs = lower.blobs;
    let mut blob_map = Vec::with_capacity(upper.blobs.len());
    for b in upper.blobs {
        let pos = match blobs.iter().position(|x| x.blob_id == b.blob_id) {
            Some(p) => p,
            None => {
                blobs.push(b);
                blobs.len() - 1
            }
        };
        blob_map.push(pos as u32);
    }
    let shift = lower.inodes.len();
    let mut inodes = lower.inodes;
    for mut ino in upper.inodes {
        match &mut ino.kind {
            InodeKind::Dir(list) => list.iter_mut().for_each(|c| c.inode += shift),
            InodeKind::File(chunks) => chunks
                .iter_mut()
                .for_each(|c| c.blob = blob_map[c.blob as usize]),
            _ => {}
        }
        inodes.push(ino);
    }
    merge_dir(&mut inodes, ROOT, ROOT + shift);
    let mut prefetch = lower.prefetch;
    prefetch.extend(upper.prefetch.iter().map(|p| p + shift));
    let (inodes, map) = compact(inodes);
    let prefetch = prefetch
        .into_iter()
        .filter_map(|p| map.get(&p).copied())
        .collect();
    Ok(Image {
        chunk_size: lower.chunk_size,
        compressor: upper.compressor,
        digester: lower.digester,
        blobs,
        inodes,
        prefetch,
    })
}

/// Applies upper directory `up` onto lower directory `low` in place.
fn merge_dir(inodes: &mut [Inode], low: InodeId, up: InodeId) {
    let upper_children = inodes[up].children().to_vec();
    let mut merged = inodes[low].children().to_vec();
    if upper_children.iter().any(|c| c.name == OPAQUE_MARKER) {
        merged.clear();
    }
    for c in &upper_children {
        if let Some(target) = c.name.strip_prefix(WHITEOUT_PREFIX) {
            if c.name != OPAQUE_MARKER {
                merged.retain(|m| m.name != target);
            }
        }
    }
    for c in upper_children
        .into_iter()
        .filter(|c| !c.name.starts_with(WHITEOUT_PREFIX))
    {
        match merged.binary_search_by(|m| m.name.cmp(&c.name)) {
            Ok(i) => {
                let old = merged[i].inode;
                if inodes[old].is_dir() && inodes[c.inode].is_dir() {
                    merge_dir(inodes, old, c.inode);
                } else {
                    strip_whiteouts(inodes, c.inode);
                    merged[i].inode = c.inode;
                }
            }
            Err(i) => {
                strip_whiteouts(inodes, c.inode);
                merged.insert(i, c);
            }
        }
    }
    // The directory takes the upper layer's attributes, keeps the merged entries.
    let mut dir = inodes[up].clone();
    dir.kind = InodeKind::Dir(merged);
    inodes[low] = dir;
}

/// Whiteouts in an upper directory with nothing below it have nothing to hide: drop them.
fn strip_whiteouts(inodes: &mut [Inode], id: InodeId) {
    let mut stack = vec![id];
    while let Some(d) = stack.pop() {
        if let InodeKind::Dir(list) = &mut inodes[d].kind {
            list.retain(|c| !c.name.starts_with(WHITEOUT_PREFIX));
            stack.extend(list.iter().map(|c| c.inode));
        }
    }
}
