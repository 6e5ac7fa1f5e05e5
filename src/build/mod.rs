//! Building images: walk a directory or a layer tar, cut files into chunks, compress and
//! deduplicate them into a blob, and describe the tree in a bootstrap.
//!
//! Data flow: [`source`] entries -> [`layer`] tree, while file bytes go through the
//! [`chunker`] (digest + compress in parallel, one copy per digest) -> chunks placed in
//! tree order -> [`blob`] file -> optional [`overlay`] on a parent -> bootstrap. Chunk
//! placement follows the sorted tree, never the input order, so builds are reproducible.

pub mod blob;
pub mod chunker;
pub mod dir;
pub mod layer;
pub mod overlay;
pub mod source;
pub mod tar;

use crate::rafs::image::*;
use crate::rafs::{writer, Compressor, Digester};
use chunker::Chunker;
use source::{BuildError, EntryKind, Source};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

pub const DEFAULT_CHUNK_SIZE: u32 = 0x10_0000;

#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    pub blob_dir: PathBuf,
    /// Append tar headers, the chunk digest array and a TOC to the blob.
    pub blob_toc: bool,
    /// The image this layer goes on: its chunks are reused, its tree gets the whiteouts.
    pub parent: Option<Image>,
    /// Paths whose data is prefetched first: their chunks lead the blob.
    pub prefetch: Vec<Vec<u8>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            blob_dir: PathBuf::from("."),
            blob_toc: false,
            parent: None,
            prefetch: Vec::new(),
        }
    }
}

/// The result of a build, with the dedup figures nydus-image reports.
#[derive(Clone, Debug)]
pub struct BuildReport {
    pub image: Image,
    pub bootstrap: Vec<u8>,
    /// The blob this build wrote, if any chunk was new.
    pub blob: Option<String>,
    pub entries: u64,
    pub dedup_chunks: u64,
    pub dedup_uncompressed_size: u64,
    /// Sum of the new blob's chunk sizes, before alignment.
    pub blob_uncompressed_size: u64,
}

pub fn build(
    source: &mut dyn Source,
    opts: &BuildOptions,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<BuildReport, BuildError> {
    if !crate::rafs::layout::valid_chunk_size(opts.chunk_size as u64) {
        return Err(BuildError::Option(format!(
            "chunk size {:#x} must be a power of two from 0x1000 to 0x1000000",
            opts.chunk_size
        )));
    }
    let parent_chunks = parent_index(opts)?;
    std::fs::create_dir_all(&opts.blob_dir).map_err(|e| BuildError::io(&opts.blob_dir, e))?;
    let chunker = Chunker::new(
        opts.chunk_size,
        opts.digester,
        opts.compressor,
        parent_chunks.keys().copied().collect::<HashSet<_>>(),
        &opts.blob_dir,
    )
    .map_err(|e| BuildError::io(&opts.blob_dir, e))?;
    let mut tree = layer::LayerTree::new();
    let mut entries = 0u64;
    source.for_each(&mut |entry, data| {
        entries += 1;
        let path = source::display(&entry.path);
        let size = match entry.kind {
            EntryKind::File { size } => Some(size),
            _ => None,
        };
        let id = tree.add(entry)?;
        if let (Some(size), Some(data)) = (size, data) {
            let n = chunker
                .add_file(id, size, data)
                .map_err(|e| BuildError::io(&path, e))?;
            tree.files.insert(id, n);
            on_bytes(size);
        }
        Ok(())
    })?;
    let started = std::time::Instant::now();
    let chunked = chunker
        .finish()
        .map_err(|e| BuildError::io(&opts.blob_dir, e))?;
    tracing::debug!(
        waited_ms = started.elapsed().as_millis() as u64,
        chunks = chunked.chunks.len(),
        "source read and chunked"
    );
    let (pool, placements) = (&chunked.chunks, chunked.placements);
    let files = std::mem::take(&mut tree.files);
    let mut digests: HashMap<InodeId, Vec<ChunkDigest>> = files
        .iter()
        .map(|(&id, &n)| (id, vec![ChunkDigest::default(); n as usize]))
        .collect();
    for (id, idx, d) in placements {
        if let Some(v) = digests.get_mut(&id) {
            v[idx as usize] = d;
        }
    }
    let (mut inodes, map) = tree.finish();
    let digests: HashMap<InodeId, Vec<ChunkDigest>> = digests
        .into_iter()
        .filter_map(|(old, d)| map.get(&old).map(|&new| (new, d)))
        .collect();

    // Place chunks: prefetched files first, then the tree in depth-first name order.
    let parent_blobs = opts.parent.as_ref().map_or(0, |p| p.blobs.len()) as u32;
    let layer_paths = walk_paths(&inodes);
    let mut order: Vec<InodeId> = Vec::new();
    for p in &opts.prefetch {
        if let Some(&(_, id)) = layer_paths.iter().find(|(path, _)| path == p) {
            order.push(id);
        }
    }
    order.extend(0..inodes.len());
    let mut placed: HashMap<ChunkDigest, u32> = HashMap::new();
    let mut blob_chunks: Vec<(ChunkDigest, chunker::PooledChunk, u64)> = Vec::new();
    let (mut dedup_chunks, mut dedup_size, mut blob_size) = (0u64, 0u64, 0u64);
    let mut refs: HashMap<InodeId, Vec<ChunkRef>> = HashMap::new();
    for id in order {
        let Some(list) = digests.get(&id) else {
            continue;
        };
        if refs.contains_key(&id) {
            continue;
        }
        let mut out = Vec::with_capacity(list.len());
        for (k, d) in list.iter().enumerate() {
            let size = inodes[id]
                .size
                .saturating_sub(k as u64 * opts.chunk_size as u64)
                .min(opts.chunk_size as u64);
            if let Some(&r) = parent_chunks.get(d) {
                dedup_chunks += 1;
                dedup_size += size;
                out.push(r);
            } else if let Some(&pos) = placed.get(d) {
                dedup_chunks += 1;
                dedup_size += size;
                out.push(ChunkRef {
                    blob: parent_blobs,
                    index: pos,
                });
            } else {
                let chunk = pool.get(d).ok_or_else(|| {
                    BuildError::Option(format!("chunk {d} missing from the pool"))
                })?;
                placed.insert(*d, blob_chunks.len() as u32);
                out.push(ChunkRef {
                    blob: parent_blobs,
                    index: blob_chunks.len() as u32,
                });
                blob_chunks.push((*d, *chunk, k as u64 * opts.chunk_size as u64));
                blob_size += chunk.uncompressed_size as u64;
            }
        }
        refs.insert(id, out);
    }
    for (id, r) in refs {
        inodes[id].kind = InodeKind::File(r);
    }

    let mut blobs = opts
        .parent
        .as_ref()
        .map(|p| p.blobs.clone())
        .unwrap_or_default();
    let mut blob_id = None;
    if !blob_chunks.is_empty() {
        let spec = blob::BlobSpec {
            chunk_size: opts.chunk_size,
            compressor: opts.compressor,
            digester: opts.digester,
            with_toc: opts.blob_toc,
        };
        let started = std::time::Instant::now();
        let info = blob::write_blob(&opts.blob_dir, &spec, chunked.spill, &blob_chunks)?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            bytes = info.compressed_size,
            "blob written"
        );
        blob_id = Some(info.blob_id.clone());
        blobs.push(info);
    }
    let layer = Image {
        chunk_size: opts.chunk_size,
        compressor: opts.compressor,
        digester: opts.digester,
        blobs,
        inodes,
        prefetch: Vec::new(),
    };
    let mut image = match &opts.parent {
        Some(parent) => overlay::overlay(parent.clone(), layer)?,
        None => layer,
    };
    image.prefetch = opts
        .prefetch
        .iter()
        .filter_map(|p| image.lookup(p))
        .collect();
    let bootstrap = writer::write_bootstrap(&image)?;
    Ok(BuildReport {
        image,
        bootstrap,
        blob: blob_id,
        entries,
        dedup_chunks,
        dedup_uncompressed_size: dedup_size,
        blob_uncompressed_size: blob_size,
    })
}

/// Digest -> chunk of the parent image, for dedup against it.
fn parent_index(opts: &BuildOptions) -> Result<HashMap<ChunkDigest, ChunkRef>, BuildError> {
    let Some(parent) = &opts.parent else {
        return Ok(HashMap::new());
    };
    if parent.chunk_size != opts.chunk_size || parent.digester != opts.digester {
        return Err(BuildError::Option(format!(
            "parent bootstrap uses chunk size {:#x} and {}; this build {:#x} and {}",
            parent.chunk_size,
            parent.digester.name(),
            opts.chunk_size,
            opts.digester.name()
        )));
    }
    let mut out = HashMap::new();
    for (b, blob) in parent.blobs.iter().enumerate() {
        for (i, c) in blob.chunks.iter().enumerate() {
            if c.uncompressed_size > 0 {
                out.entry(c.digest).or_insert(ChunkRef {
                    blob: b as u32,
                    index: i as u32,
                });
            }
        }
    }
    Ok(out)
}

fn walk_paths(inodes: &[Inode]) -> Vec<(Vec<u8>, InodeId)> {
    let image = Image {
        chunk_size: DEFAULT_CHUNK_SIZE,
        compressor: Compressor::None,
        digester: Digester::Blake3,
        blobs: Vec::new(),
        inodes: inodes.to_vec(),
        prefetch: Vec::new(),
    };
    image.walk()
}
