//! Reading chunks out of local blob files: fetch the stored bytes, expand them, and check
//! them against their digest before anyone sees them.

use super::codec::{Compressor, Digester};
use super::error::{RafsError, Result};
use super::image::{BlobInfo, ChunkInfo, Image, InodeId};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Expands a chunk's stored bytes and verifies its digest (and CRC, when recorded).
pub fn decode_chunk(
    blob: &BlobInfo,
    chunk: &ChunkInfo,
    stored: &[u8],
    digester: Digester,
) -> Result<Vec<u8>> {
    let bad = |detail: String| RafsError::BadChunk {
        blob: blob.blob_id.clone(),
        digest: chunk.digest.to_string(),
        detail,
    };
    let compressor = if chunk.compressed {
        blob.compressor
    } else {
        Compressor::None
    };
    let data = compressor
        .decompress(stored, chunk.uncompressed_size as usize)
        .map_err(|e| bad(e.to_string()))?;
    if digester.digest(&data) != chunk.digest.0 {
        return Err(bad("digest mismatch".into()));
    }
    Ok(data)
}

/// Blob files in a local directory, named by blob id, opened on first use.
pub struct BlobDir {
    dir: PathBuf,
    open: Mutex<HashMap<String, std::sync::Arc<File>>>,
}

impl BlobDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BlobDir {
            dir: dir.into(),
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, blob_id: &str) -> Result<std::sync::Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(blob_id) {
            return Ok(f.clone());
        }
        let path = self.dir.join(blob_id);
        let f = std::sync::Arc::new(File::open(&path).map_err(|e| RafsError::io(&path, e))?);
        open.insert(blob_id.to_string(), f.clone());
        Ok(f)
    }

    /// Reads `len` bytes at `offset` of a blob; a short read is an error.
    pub fn read_at(&self, blob_id: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.file(blob_id)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| RafsError::io(self.dir.join(blob_id), e))?;
        Ok(buf)
    }

    /// One chunk, expanded and verified.
    pub fn read_chunk(&self, image: &Image, blob: u32, index: u32) -> Result<Vec<u8>> {
        self.locate_chunk(image, blob, index).map(|(_, data)| data)
    }

    /// One chunk, expanded and verified, with the blob that really holds it: the one
    /// recorded or, for images where nydus-image recorded the wrong blob (layers built with
    /// --parent-bootstrap), the one whose bytes match the digest.
    pub fn locate_chunk(&self, image: &Image, blob: u32, index: u32) -> Result<(u32, Vec<u8>)> {
        let info = &image.blobs[blob as usize];
        let chunk = &info.chunks[index as usize];
        let from = |id: &str| {
            let stored =
                self.read_at(id, chunk.compressed_offset, chunk.compressed_size as usize)?;
            decode_chunk(info, chunk, &stored, image.digester)
        };
        let first = match from(&info.blob_id) {
            Ok(data) => return Ok((blob, data)),
            Err(e) => e,
        };
        for (j, other) in image.blobs.iter().enumerate() {
            if other.blob_id == info.blob_id {
                continue;
            }
            if let Ok(data) = from(&other.blob_id) {
                tracing::debug!(chunk = %chunk.digest, blob = %other.blob_id, "chunk found in another blob than recorded");
                return Ok((j as u32, data));
            }
        }
        Err(first)
    }

    /// A whole regular file's bytes.
    pub fn read_file(&self, image: &Image, inode: InodeId) -> Result<Vec<u8>> {
        let node = &image.inodes[inode];
        let mut out = Vec::with_capacity(node.size as usize);
        for c in node.chunks() {
            out.extend_from_slice(&self.read_chunk(image, c.blob, c.index)?);
        }
        Ok(out)
    }
}
