//! Writes a native data blob: chunk data, the compressed chunk table with its 4 KiB
//! header and, with the `blob-toc` feature, tar headers, the chunk digest array and a
//! TOC. The blob is named by the sha256 of all its bytes.

use super::chunker::{PooledChunk, Spill};
use super::source::BuildError;
use crate::rafs::blobmeta::{
    encode_ci_v1, tar_header, BlobChunk, BlobMetaHeader, TocEntry, TAR_HEADER_SIZE,
};
use crate::rafs::codec::sha256;
use crate::rafs::image::{BlobInfo, BlobMetaLocation, ChunkDigest, ChunkInfo};
use crate::rafs::layout::*;
use crate::rafs::{Compressor, Digester};
use sha2::Digest as _;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct BlobSpec {
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    pub with_toc: bool,
}

/// Writes `chunks` (in blob order, each with its digest and first file offset; their
/// stored bytes in `spill`) into a new blob in `dir`, and returns its description.
///
/// Every offset is known before a byte is written, so the blob is laid out first and then
/// written and hashed (for its id) at the same time on two threads.
pub fn write_blob(
    dir: &Path,
    spec: &BlobSpec,
    spill: Spill,
    chunks: &[(ChunkDigest, PooledChunk, u64)],
) -> Result<BlobInfo, BuildError> {
    let mut infos = Vec::with_capacity(chunks.len());
    let (mut compressed, mut uncompressed) = (0u64, 0u64);
    for (digest, c, file_offset) in chunks {
        infos.push(ChunkInfo {
            digest: *digest,
            compressed_offset: compressed,
            compressed_size: c.stored_size,
            uncompressed_offset: uncompressed,
            uncompressed_size: c.uncompressed_size,
            compressed: c.compressed,
            crc32: Some(c.crc32),
            file_offset: *file_offset,
        });
        compressed += c.stored_size as u64;
        // Uncompressed offsets are block aligned so chunks map onto EROFS blocks.
        uncompressed += align_up(c.uncompressed_size as u64, BLOCK_SIZE);
    }
    let data_size = compressed;
    let tar_len = if spec.with_toc { TAR_HEADER_SIZE } else { 0 };

    let mut features = BLOB_FEATURE_ALIGNED | BLOB_FEATURE_CAP_TAR_TOC;
    if spec.with_toc {
        features |=
            BLOB_FEATURE_HAS_TOC | BLOB_FEATURE_HAS_TAR_HEADER | BLOB_FEATURE_INLINED_CHUNK_DIGEST;
    }
    let mut table = Vec::with_capacity(infos.len() * 16);
    for c in &infos {
        encode_ci_v1(&BlobChunk::from(c), &mut table);
    }
    let (ci_bytes, ci_compressor) = match spec.compressor.compress(&table) {
        Some(c) => (c, spec.compressor),
        None => (table.clone(), Compressor::None),
    };
    let ci_offset = data_size + tar_len;
    let header_offset = ci_offset + ci_bytes.len() as u64;
    let header = BlobMetaHeader {
        features,
        ci_compressor: ci_compressor.blob_id(),
        ci_entries: infos.len() as u32,
        ci_offset,
        ci_compressed_size: ci_bytes.len() as u64,
        ci_uncompressed_size: table.len() as u64,
    }
    .encode();

    // Optional TOC part: tar headers after each section, the digest array, the TOC.
    let mut tail: Vec<Vec<u8>> = Vec::new();
    let (mut toc_size, mut toc_digest) = (0u32, [0u8; 32]);
    if spec.with_toc {
        let digests: Vec<u8> = infos.iter().flat_map(|c| c.digest.0).collect();
        let digest_offset = header_offset + header.len() as u64 + TAR_HEADER_SIZE;
        let toc_flag = |c: Compressor| match c {
            Compressor::None => 0x1,
            Compressor::Zstd => 0x2,
            Compressor::Lz4Block => 0x4,
        };
        let section = |name: &str, flags, digest, offset, size: u64, usize_: u64| TocEntry {
            flags,
            name: name.into(),
            digest,
            compressed_offset: offset,
            compressed_size: size,
            uncompressed_size: usize_,
        };
        let entries = [
            section("image.blob", 0x1, [0; 32], 0, data_size, uncompressed),
            section(
                "blob.meta",
                toc_flag(ci_compressor),
                sha256(&table),
                ci_offset,
                ci_bytes.len() as u64,
                table.len() as u64,
            ),
            section(
                "blob.meta.header",
                0x1,
                sha256(&header),
                header_offset,
                header.len() as u64,
                header.len() as u64,
            ),
            section(
                "blob.digest",
                0x1,
                sha256(&digests),
                digest_offset,
                digests.len() as u64,
                digests.len() as u64,
            ),
        ];
        let mut toc = Vec::with_capacity(entries.len() * 128 + 512);
        for e in &entries {
            e.encode(&mut toc);
        }
        toc.extend_from_slice(&tar_header("rafs.blob.toc", (entries.len() * 128) as u64));
        toc_size = toc.len() as u32;
        toc_digest = sha256(&toc);
        tail.push(tar_header(
            "blob.meta",
            ci_bytes.len() as u64 + header.len() as u64,
        ));
        tail.push(tar_header("blob.digest", digests.len() as u64));
        tail.insert(1, digests);
        tail.push(toc);
    }
    let data_tar = if spec.with_toc {
        tar_header("image.blob", data_size)
    } else {
        Vec::new()
    };

    let mut tail_pieces: Vec<&[u8]> = vec![&data_tar, &ci_bytes, &header];
    tail_pieces.extend(tail.iter().map(|t| t.as_slice()));

    // The spill file already holds the chunks in blob order (a directory build): the tail
    // goes on its end and it becomes the blob. Otherwise the chunks are copied in order.
    let in_order = spill.len == data_size
        && spill.order.len() == chunks.len()
        && spill.order.iter().zip(chunks).all(|(a, (b, _, _))| a == b);
    let (tmp, size, blob_id) = if in_order {
        let Spill {
            file,
            mut hash,
            len,
            ..
        } = spill;
        let mut out = std::io::BufWriter::new(file.as_file());
        let mut size = len;
        for piece in &tail_pieces {
            out.write_all(piece)
                .map_err(|e| BuildError::io(file.path(), e))?;
            hash.update(piece);
            size += piece.len() as u64;
        }
        out.flush().map_err(|e| BuildError::io(file.path(), e))?;
        drop(out);
        (file, size, hex::encode(hash.finalize()))
    } else {
        let tmp = tempfile::Builder::new()
            .prefix(".warren-blob-")
            .tempfile_in(dir)
            .map_err(|e| BuildError::io(dir, e))?;
        let (size, id) = copy_in_order(&tmp, spill.file.as_file(), chunks, &tail_pieces, dir)?;
        (tmp, size, id)
    };
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

/// Writes the chunks' stored bytes from the spill file in blob order, then the tail,
/// hashing on a second thread while this one writes. Returns the size and the sha256.
fn copy_in_order(
    tmp: &tempfile::NamedTempFile,
    spill: &std::fs::File,
    chunks: &[(ChunkDigest, PooledChunk, u64)],
    tail_pieces: &[&[u8]],
    dir: &Path,
) -> Result<(u64, String), BuildError> {
    let spill_err = |e| BuildError::io(dir.join("(spill file)"), e);
    std::thread::scope(|s| -> Result<(u64, String), BuildError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::sync::Arc<Vec<u8>>>(4);
        let hasher = s.spawn(move || {
            let mut h = sha2::Sha256::new();
            rx.iter().for_each(|b| h.update(b.as_slice()));
            hex::encode(h.finalize())
        });
        let mut out = std::io::BufWriter::with_capacity(4 << 20, tmp.as_file());
        let mut size = 0u64;
        let mut emit = |bytes: Vec<u8>| -> Result<(), BuildError> {
            out.write_all(&bytes)
                .map_err(|e| BuildError::io(tmp.path(), e))?;
            size += bytes.len() as u64;
            tx.send(std::sync::Arc::new(bytes))
                .map_err(|_| BuildError::Option("blob hasher stopped".into()))
        };
        let mut batch = Vec::with_capacity(4 << 20);
        for (_, c, _) in chunks {
            let start = batch.len();
            batch.resize(start + c.stored_size as usize, 0);
            spill
                .read_exact_at(&mut batch[start..], c.spill_offset)
                .map_err(spill_err)?;
            if batch.len() >= 4 << 20 {
                emit(std::mem::replace(&mut batch, Vec::with_capacity(4 << 20)))?;
            }
        }
        emit(batch)?;
        for piece in tail_pieces {
            emit(piece.to_vec())?;
        }
        drop(tx);
        // No fsync: a build is repeatable and a torn blob fails its id check, while
        // syncing 100 MB would double the wall time of a typical layer build.
        out.flush().map_err(|e| BuildError::io(tmp.path(), e))?;
        Ok((size, hasher.join().expect("hasher thread")))
    })
}
