//! Writes a native data blob: chunk data, the compressed chunk table with its 4 KiB
//! header and, with the `blob-toc` feature, tar headers, the chunk digest array and a
//! TOC. The blob is named by the sha256 of all its bytes.

use super::chunker::PooledChunk;
use super::source::BuildError;
use crate::rafs::blobmeta::{encode_ci_v1, tar_header, BlobChunk, BlobMetaHeader, TocEntry};
use crate::rafs::codec::sha256;
use crate::rafs::image::{BlobInfo, BlobMetaLocation, ChunkDigest, ChunkInfo};
use crate::rafs::layout::*;
use crate::rafs::{Compressor, Digester};
use sha2::Digest as _;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct BlobSpec {
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    pub with_toc: bool,
}

/// Hashes and writes everything that goes into the blob file.
struct HashingWriter {
    file: std::io::BufWriter<std::fs::File>,
    hash: sha2::Sha256,
    written: u64,
    path: PathBuf,
}

impl HashingWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<(), BuildError> {
        self.file
            .write_all(bytes)
            .map_err(|e| BuildError::io(&self.path, e))?;
        self.hash.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Writes `chunks` (in blob order, each with its digest and first file offset) into a new
/// blob in `dir`, and returns its description.
pub fn write_blob(
    dir: &Path,
    spec: &BlobSpec,
    chunks: &[(ChunkDigest, &PooledChunk, u64)],
    on_progress: &dyn Fn(u64),
) -> Result<BlobInfo, BuildError> {
    std::fs::create_dir_all(dir).map_err(|e| BuildError::io(dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".warren-blob-")
        .tempfile_in(dir)
        .map_err(|e| BuildError::io(dir, e))?;
    let file = tmp.reopen().map_err(|e| BuildError::io(tmp.path(), e))?;
    let mut w = HashingWriter {
        file: std::io::BufWriter::with_capacity(4 << 20, file),
        hash: sha2::Sha256::new(),
        written: 0,
        path: tmp.path().to_path_buf(),
    };

    let mut infos = Vec::with_capacity(chunks.len());
    let mut uncompressed = 0u64;
    for (digest, c, file_offset) in chunks {
        infos.push(ChunkInfo {
            digest: *digest,
            compressed_offset: w.written,
            compressed_size: c.stored.len() as u32,
            uncompressed_offset: uncompressed,
            uncompressed_size: c.uncompressed_size,
            compressed: c.compressed,
            crc32: Some(c.crc32),
            file_offset: *file_offset,
        });
        w.put(&c.stored)?;
        on_progress(c.uncompressed_size as u64);
        // Uncompressed offsets are block aligned so chunks map onto EROFS blocks.
        uncompressed += align_up(c.uncompressed_size as u64, BLOCK_SIZE);
    }
    let data_size = w.written;

    let mut features = BLOB_FEATURE_ALIGNED | BLOB_FEATURE_CAP_TAR_TOC;
    if spec.with_toc {
        features |=
            BLOB_FEATURE_HAS_TOC | BLOB_FEATURE_HAS_TAR_HEADER | BLOB_FEATURE_INLINED_CHUNK_DIGEST;
        w.put(&tar_header("image.blob", data_size))?;
    }

    let mut table = Vec::with_capacity(infos.len() * 16);
    for c in &infos {
        encode_ci_v1(&BlobChunk::from(c), &mut table);
    }
    let (ci_bytes, ci_compressor) = match spec.compressor.compress(&table) {
        Some(c) if spec.compressor != Compressor::None => (c, spec.compressor),
        _ => (table.clone(), Compressor::None),
    };
    let ci_offset = w.written;
    let header = BlobMetaHeader {
        features,
        ci_compressor: ci_compressor.blob_id(),
        ci_entries: infos.len() as u32,
        ci_offset,
        ci_compressed_size: ci_bytes.len() as u64,
        ci_uncompressed_size: table.len() as u64,
    }
    .encode();
    w.put(&ci_bytes)?;
    let header_offset = w.written;
    w.put(&header)?;

    let (mut toc_size, mut toc_digest) = (0u32, [0u8; 32]);
    if spec.with_toc {
        w.put(&tar_header(
            "blob.meta",
            ci_bytes.len() as u64 + header.len() as u64,
        ))?;
        let digests: Vec<u8> = infos.iter().flat_map(|c| c.digest.0).collect();
        let digest_offset = w.written;
        w.put(&digests)?;
        w.put(&tar_header("blob.digest", digests.len() as u64))?;
        let toc_flag = |c: Compressor| match c {
            Compressor::None => 0x1,
            Compressor::Zstd => 0x2,
            Compressor::Lz4Block => 0x4,
        };
        let entries = [
            TocEntry {
                flags: 0x1,
                name: "image.blob".into(),
                digest: [0; 32],
                compressed_offset: 0,
                compressed_size: data_size,
                uncompressed_size: uncompressed,
            },
            TocEntry {
                flags: toc_flag(ci_compressor),
                name: "blob.meta".into(),
                digest: sha256(&table),
                compressed_offset: ci_offset,
                compressed_size: ci_bytes.len() as u64,
                uncompressed_size: table.len() as u64,
            },
            TocEntry {
                flags: 0x1,
                name: "blob.meta.header".into(),
                digest: sha256(&header),
                compressed_offset: header_offset,
                compressed_size: header.len() as u64,
                uncompressed_size: header.len() as u64,
            },
            TocEntry {
                flags: 0x1,
                name: "blob.digest".into(),
                digest: sha256(&digests),
                compressed_offset: digest_offset,
                compressed_size: digests.len() as u64,
                uncompressed_size: digests.len() as u64,
            },
        ];
        let mut toc = Vec::with_capacity(entries.len() * 128 + 512);
        for e in &entries {
            e.encode(&mut toc);
        }
        toc.extend_from_slice(&tar_header("rafs.blob.toc", (entries.len() * 128) as u64));
        toc_size = toc.len() as u32;
        toc_digest = sha256(&toc);
        w.put(&toc)?;
    }

    let blob_id = hex::encode(w.hash.clone().finalize());
    let size = w.written;
    w.file.flush().map_err(|e| BuildError::io(tmp.path(), e))?;
    w.file
        .get_ref()
        .sync_all()
        .map_err(|e| BuildError::io(tmp.path(), e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(|e| BuildError::io(tmp.path(), e))?;
    let dest = dir.join(&blob_id);
    tmp.persist(&dest)
        .map_err(|e| BuildError::io(&dest, e.error))?;
    Ok(BlobInfo {
        blob_id,
        chunk_size: spec.chunk_size,
        compressor: spec.compressor,
        digester: spec.digester,
        features,
        compressed_size: size,
        uncompressed_size: uncompressed,
        meta: BlobMetaLocation {
            compressor: ci_compressor.blob_id(),
            offset: ci_offset,
            compressed_size: ci_bytes.len() as u64,
            uncompressed_size: table.len() as u64,
        },
        toc_size,
        toc_digest,
        chunks: infos,
    })
}
