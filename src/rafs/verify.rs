//! Deep validation of an image against its blobs: each blob file is present with the
//! recorded size and id, its own chunk table agrees with the bootstrap, and every chunk
//! expands to bytes with the recorded digest.

use super::blobfile::BlobDir;
use super::blobmeta::{decode_ci, BlobChunk, BlobMetaHeader, HEADER_SIZE};
use super::codec::Compressor;
use super::image::{ChunkRef, Image};
use super::layout::BLOB_FEATURE_CHUNK_INFO_V2;
use rayon::prelude::*;
use sha2::Digest as _;
use std::collections::HashMap;
use std::io::Read;

/// One thing wrong, with the path of a file it affects when there is one.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Problem {
    pub blob: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub detail: String,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub blobs: usize,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<Problem>,
    /// Oddities that do not make the image unreadable.
    pub warnings: Vec<Problem>,
}

pub fn verify(image: &Image, blobs: &BlobDir, on_progress: &(dyn Fn(u64) + Sync)) -> VerifyReport {
    // The first path that uses each chunk, to name what a bad chunk breaks.
    let mut users: HashMap<ChunkRef, String> = HashMap::new();
    for (path, id) in image.walk() {
        for c in image.inodes[id].chunks() {
            users
                .entry(*c)
                .or_insert_with(|| format!("/{}", String::from_utf8_lossy(&path)));
        }
    }
    let mut report = VerifyReport {
        blobs: image.blobs.len(),
        ..Default::default()
    };
    for (b, blob) in image.blobs.iter().enumerate() {
        let problem = |detail: String| Problem {
            blob: blob.blob_id.clone(),
            chunk: None,
            path: None,
            detail,
        };
        let path = blobs.path().join(&blob.blob_id);
        match blob_file_digest(&path) {
            Err(e) => {
                report
                    .problems
                    .push(problem(format!("cannot read {}: {e}", path.display())));
                continue;
            }
            Ok((size, id)) => {
                if size != blob.compressed_size {
                    report.problems.push(problem(format!(
                        "blob file is {size} bytes, the bootstrap says {}",
                        blob.compressed_size
                    )));
                }
                // nydus-image names blob-toc blobs by another digest than the file's sha256.
                if id != blob.blob_id {
                    report.warnings.push(problem(format!(
                        "sha256 of the blob file is {id}, not its id"
                    )));
                }
            }
        }
        // warren reads through the bootstrap's records, so a disagreeing blob table only
        // hurts other readers (nydusd): a warning, not a failure.
        if let Err(detail) = check_blob_table(blobs, blob) {
            report.warnings.push(problem(detail));
        }
        let used: Vec<(u32, &super::image::ChunkInfo)> = blob
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.uncompressed_size > 0)
            .map(|(i, c)| (i as u32, c))
            .collect();
        let bad: Vec<Problem> = used
            .par_iter()
            .filter_map(|(i, c)| {
                let r = blobs.read_chunk(image, b as u32, *i);
                on_progress(c.uncompressed_size as u64);
                let err = r.err()?;
                Some(Problem {
                    blob: blob.blob_id.clone(),
                    chunk: Some(c.digest.to_string()),
                    path: users
                        .get(&ChunkRef {
                            blob: b as u32,
                            index: *i,
                        })
                        .cloned(),
                    detail: err.to_string(),
                })
            })
            .collect();
        report.chunks_checked += used.len() as u64;
        report.bytes_checked += used
            .iter()
            .map(|(_, c)| c.uncompressed_size as u64)
            .sum::<u64>();
        report.problems.extend(bad);
    }
    report
}

fn blob_file_digest(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

/// The blob's own chunk table (what nydusd uses to fetch) must describe the same chunks.
fn check_blob_table(blobs: &BlobDir, blob: &super::image::BlobInfo) -> Result<(), String> {
    let m = &blob.meta;
    if m.compressed_size == 0 {
        return Ok(()); // no table recorded
    }
    let header = blobs
        .read_at(
            &blob.blob_id,
            m.offset + m.compressed_size,
            HEADER_SIZE as usize,
        )
        .map_err(|e| format!("blob meta header: {e}"))?;
    let header = BlobMetaHeader::decode(&header).map_err(|e| e.to_string())?;
    if header.ci_offset != m.offset {
        return Err(format!(
            "blob meta header disagrees with the bootstrap ({} entries at {})",
            header.ci_entries, header.ci_offset
        ));
    }
    if m.uncompressed_size > 1 << 30 {
        return Err(format!("blob chunk table of {} bytes", m.uncompressed_size));
    }
    let stored = blobs
        .read_at(&blob.blob_id, m.offset, m.compressed_size as usize)
        .map_err(|e| format!("blob chunk table: {e}"))?;
    let table = match Compressor::from_blob_id(m.compressor).map_err(|e| e.to_string())? {
        Compressor::None => stored,
        c => c
            .decompress(&stored, m.uncompressed_size as usize)
            .map_err(|e| format!("blob chunk table: {e}"))?,
    };
    let entries = decode_ci(
        &table,
        header.ci_entries as usize,
        blob.features & BLOB_FEATURE_CHUNK_INFO_V2 != 0,
    )
    .map_err(|e| e.to_string())?;
    for (i, (c, e)) in blob.chunks.iter().zip(&entries).enumerate() {
        if c.uncompressed_size > 0 && BlobChunk::from(c) != *e {
            return Err(format!(
                "chunk {i} ({}): blob chunk table says {e:?}, bootstrap says {:?}",
                c.digest,
                BlobChunk::from(c)
            ));
        }
    }
    Ok(())
}
