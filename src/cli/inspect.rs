use crate::rafs::image::{Image, InodeKind};
use crate::rafs::reader::read_bootstrap_file;
use anyhow::Context;
use clap::Args;
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The bootstrap to inspect.
    #[arg(long, short = 'B')]
    pub bootstrap: PathBuf,
    /// Print statistics and every entry as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
pub struct ImageStats {
    pub bootstrap_size: u64,
    pub chunk_size: u32,
    pub compressor: &'static str,
    pub digester: &'static str,
    pub inodes: usize,
    pub entries: usize,
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub others: usize,
    pub file_bytes: u64,
    /// Chunk references made by files (a chunk used twice counts twice).
    pub chunks: u64,
    pub unique_chunks: u64,
    /// chunks / unique_chunks.
    pub dedup_ratio: f64,
    pub blobs: Vec<BlobStats>,
}

#[derive(Serialize)]
pub struct BlobStats {
    pub blob_id: String,
    pub chunks: usize,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub compressor: &'static str,
    pub features: u32,
}

#[derive(Serialize)]
struct EntryJson {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
    nlink: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    symlink_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rdev: Option<String>,
    xattrs: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<ChunkJson>,
}

#[derive(Serialize)]
struct ChunkJson {
    blob_index: u32,
    index: u32,
    digest: String,
    compressed_offset: u64,
    compressed_size: u32,
    uncompressed_offset: u64,
    uncompressed_size: u32,
}

pub fn stats(image: &Image, bootstrap_size: u64) -> ImageStats {
    let count = |t: &str| image.inodes.iter().filter(|i| i.type_name() == t).count();
    let chunks: u64 = image.inodes.iter().map(|i| i.chunks().len() as u64).sum();
    let unique: HashSet<_> = image
        .inodes
        .iter()
        .flat_map(|i| {
            i.chunks()
                .iter()
                .filter_map(|c| image.chunk(*c).map(|c| c.digest))
        })
        .collect();
    let (files, dirs, symlinks) = (count("file"), count("dir"), count("symlink"));
    ImageStats {
        bootstrap_size,
        chunk_size: image.chunk_size,
        compressor: image.compressor.name(),
        digester: image.digester.name(),
        inodes: image.inodes.len(),
        entries: image.walk().len() + 1,
        files,
        dirs,
        symlinks,
        others: image.inodes.len() - files - dirs - symlinks,
        file_bytes: image
            .inodes
            .iter()
            .filter(|i| i.type_name() == "file")
            .map(|i| i.size)
            .sum(),
        chunks,
        unique_chunks: unique.len() as u64,
        dedup_ratio: if unique.is_empty() {
            1.0
        } else {
            chunks as f64 / unique.len() as f64
        },
        blobs: image
            .blobs
            .iter()
            .map(|b| BlobStats {
                blob_id: b.blob_id.clone(),
                chunks: b.chunks.len(),
                compressed_size: b.compressed_size,
                uncompressed_size: b.uncompressed_size,
                compressor: b.compressor.name(),
                features: b.features,
            })
            .collect(),
    }
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let bs = read_bootstrap_file(&args.bootstrap)
        .with_context(|| format!("reading {}", args.bootstrap.display()))?;
    let size = std::fs::metadata(&args.bootstrap)?.len();
    let image = &bs.image;
    let st = stats(image, size);
    if !args.json {
        println!(
            "bootstrap:      {} ({} bytes)",
            args.bootstrap.display(),
            st.bootstrap_size
        );
        println!(
            "format:         RAFS v6, chunk size {:#x}, {}, {}",
            st.chunk_size, st.compressor, st.digester
        );
        println!(
            "inodes:         {} ({} entries: {} files, {} dirs, {} symlinks, {} other)",
            st.inodes, st.entries, st.files, st.dirs, st.symlinks, st.others
        );
        println!("file bytes:     {}", st.file_bytes);
        println!("prefetch:       {} entries", image.prefetch.len());
        println!(
            "chunks:         {} ({} unique, dedup ratio {:.3})",
            st.chunks, st.unique_chunks, st.dedup_ratio
        );
        for (i, b) in st.blobs.iter().enumerate() {
            println!(
                "blob {i}:         {} ({} chunks, {} bytes stored, {} uncompressed)",
                b.blob_id, b.chunks, b.compressed_size, b.uncompressed_size
            );
        }
        return Ok(());
    }
    let entries: Vec<EntryJson> = image
        .walk()
        .into_iter()
        .map(|(path, id)| {
            let ino = &image.inodes[id];
            let chunks = ino
                .chunks()
                .iter()
                .filter_map(|c| {
                    image.chunk(*c).map(|i| ChunkJson {
                        blob_index: c.blob,
                        index: c.index,
                        digest: i.digest.to_string(),
                        compressed_offset: i.compressed_offset,
                        compressed_size: i.compressed_size,
                        uncompressed_offset: i.uncompressed_offset,
                        uncompressed_size: i.uncompressed_size,
                    })
                })
                .collect();
            let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            EntryJson {
                path: format!("/{}", lossy(&path)),
                kind: ino.type_name(),
                mode: format!("{:o}", ino.mode & 0o7777),
                uid: ino.uid,
                gid: ino.gid,
                size: ino.size,
                mtime: ino.mtime,
                nlink: ino.nlink,
                symlink_target: match &ino.kind {
                    InodeKind::Symlink(t) => Some(lossy(t)),
                    _ => None,
                },
                rdev: matches!(ino.type_name(), "chr" | "blk")
                    .then(|| format!("{}:{}", ino.rdev.0, ino.rdev.1)),
                xattrs: ino
                    .xattrs
                    .iter()
                    .map(|(k, v)| (lossy(k), lossy(v)))
                    .collect(),
                chunks,
            }
        })
        .collect();
    let paths: std::collections::HashMap<usize, String> = image
        .walk()
        .into_iter()
        .map(|(p, id)| (id, format!("/{}", String::from_utf8_lossy(&p))))
        .collect();
    let prefetch: Vec<&String> = image
        .prefetch
        .iter()
        .filter_map(|id| paths.get(id))
        .collect();
    let out = serde_json::json!({ "stats": st, "prefetch": prefetch, "entries": entries });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
