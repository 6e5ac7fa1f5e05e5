//! `warren export --block`: the image as one raw EROFS disk image (bootstrap, then each
//! blob uncompressed at its mapped block address) that the kernel mounts with
//! `mount -t erofs -o ro,loop`.

use crate::rafs::blobfile::BlobDir;
use crate::rafs::export::{export_block, export_bytes, ExportSummary};
use crate::rafs::reader;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Export a raw block (disk) image; the only kind of export so far, so required.
    #[arg(long)]
    pub block: bool,
    /// The image's bootstrap.
    #[arg(long, short = 'B')]
    pub bootstrap: PathBuf,
    /// Directory holding the image's data blobs, named by blob id.
    #[arg(long, short = 'D')]
    pub blob_dir: PathBuf,
    /// Where to write the disk image.
    #[arg(long, short = 'O')]
    pub output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExportArgs, quiet: bool) -> anyhow::Result<()> {
    if !args.block {
        bail!("only block export exists: pass --block to write a raw EROFS disk image");
    }
    let boot = &args.bootstrap;
    let bytes =
        std::fs::read(boot).with_context(|| format!("reading bootstrap {}", boot.display()))?;
    let mut bytes = bytes;
    let mut bs =
        reader::parse(&bytes).with_context(|| format!("bad bootstrap {}", boot.display()))?;
    for (i, b) in bs.image.blobs.iter().enumerate() {
        let path = args.blob_dir.join(&b.blob_id);
        if !path.is_file() {
            bail!(
                "blob {} (device slot {i}) is missing: no file {}",
                b.blob_id,
                path.display()
            );
        }
    }
    let blobs = BlobDir::new(&args.blob_dir);
    // The kernel follows chunk records blindly: fix records that name the wrong blob and
    // export a bootstrap written anew.
    let moved = crate::rafs::repair::relocate_misplaced(&mut bs, &blobs)
        .with_context(|| format!("repairing chunk records of {}", boot.display()))?;
    if moved > 0 {
        bytes =
            crate::rafs::writer::write_bootstrap(&bs.image).context("rewriting the bootstrap")?;
        bs = reader::parse(&bytes).context("reading the rewritten bootstrap")?;
        if !quiet {
            eprintln!(
                "note: {moved} chunk record(s) of {} named the wrong blob (nydus-image --parent-bootstrap); the export carries a repaired bootstrap",
                boot.display()
            );
        }
    }
    let bar = super::progress(
        quiet || args.json,
        export_bytes(bytes.len() as u64, &bs.image),
        "export",
    );
    let summary =
        export_block(&bytes, &bs, &blobs, &args.output, |n| bar.inc(n)).with_context(|| {
            format!(
                "exporting {} with blobs from {} to {}",
                boot.display(),
                args.blob_dir.display(),
                args.output.display()
            )
        })?;
    bar.finish_and_clear();
    if !summary.misplaced.is_empty() && !quiet {
        warn_misplaced(&summary);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&args, &summary))?
        );
    } else if !quiet {
        println!(
            "wrote {}: {} bytes, bootstrap + {} blob(s)",
            args.output.display(),
            summary.size,
            summary.blobs.len()
        );
    }
    Ok(())
}

fn warn_misplaced(s: &ExportSummary) {
    eprintln!(
        "warren: warning: {} chunk(s) are stored in another blob than the bootstrap's chunk \
         indexes name; the image holds them where they belong, but a kernel mount reads the \
         wrong bytes for:",
        s.misplaced.len()
    );
    for m in &s.misplaced {
        eprintln!(
            "  {} (chunk {}: recorded in blob {}, found in blob {})",
            m.paths.join(", "),
            m.digest,
            m.recorded_blob,
            m.found_blob
        );
    }
}

fn to_json(args: &ExportArgs, s: &ExportSummary) -> serde_json::Value {
    serde_json::json!({
        "output": args.output.display().to_string(),
        "size": s.size,
        "blobs": s.blobs.iter().map(|b| serde_json::json!({
            "blob_id": b.blob_id,
            "mapped_blkaddr": b.mapped_blkaddr,
            "blocks": b.blocks,
            "chunks": b.chunks,
        })).collect::<Vec<_>>(),
        "misplaced_chunks": s.misplaced.iter().map(|m| serde_json::json!({
            "digest": m.digest,
            "recorded_blob": m.recorded_blob,
            "found_blob": m.found_blob,
            "paths": m.paths,
        })).collect::<Vec<_>>(),
    })
}
