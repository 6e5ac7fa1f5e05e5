use crate::rafs::blobfile::BlobDir;
use crate::rafs::reader::read_bootstrap_file;
use crate::rafs::verify::verify;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The bootstrap to validate.
    #[arg(long, short = 'B')]
    pub bootstrap: PathBuf,
    /// Directory of the data blobs: when given, every chunk is read and verified.
    #[arg(long, short = 'D')]
    pub blob_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CheckArgs, quiet: bool) -> anyhow::Result<()> {
    // Structure: parsing walks and bounds-checks every inode, dirent and chunk index.
    let bs = match read_bootstrap_file(&args.bootstrap) {
        Ok(bs) => bs,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "valid": false, "bootstrap": args.bootstrap, "error": e.to_string() })
                );
            }
            return Err(e)
                .with_context(|| format!("invalid bootstrap {}", args.bootstrap.display()));
        }
    };
    let image = &bs.image;
    let report = args.blob_dir.as_ref().map(|dir| {
        let total: u64 = image
            .blobs
            .iter()
            .flat_map(|b| &b.chunks)
            .map(|c| c.uncompressed_size as u64)
            .sum();
        let bar = super::progress(quiet || args.json, total, "check");
        let r = verify(image, &BlobDir::new(dir), &|n| bar.inc(n));
        bar.finish_and_clear();
        r
    });
    let problems = report.as_ref().map_or(0, |r| r.problems.len());
    if args.json {
        let out = serde_json::json!({
            "valid": problems == 0,
            "bootstrap": args.bootstrap,
            "inodes": image.inodes.len(),
            "blobs": image.blobs.iter().map(|b| &b.blob_id).collect::<Vec<_>>(),
            "verify": report,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for p in report.iter().flat_map(|r| &r.warnings) {
            eprintln!("warning: blob {}: {}", p.blob, p.detail);
        }
        for p in report.iter().flat_map(|r| &r.problems) {
            let chunk = p
                .chunk
                .as_deref()
                .map(|c| format!(" chunk {c}"))
                .unwrap_or_default();
            let path = p
                .path
                .as_deref()
                .map(|c| format!(" (used by {c})"))
                .unwrap_or_default();
            eprintln!("blob {}{chunk}{path}: {}", p.blob, p.detail);
        }
        if !quiet && problems == 0 {
            match &report {
                Some(r) => println!(
                    "{}: valid, {} inodes, {} blobs, {} chunks ({} bytes) verified",
                    args.bootstrap.display(),
                    image.inodes.len(),
                    r.blobs,
                    r.chunks_checked,
                    r.bytes_checked
                ),
                None => println!(
                    "{}: valid structure, {} inodes, {} blobs (pass --blob-dir to verify data)",
                    args.bootstrap.display(),
                    image.inodes.len(),
                    image.blobs.len()
                ),
            }
        }
    }
    if problems > 0 {
        bail!(
            "{problems} problem(s) found in {}",
            args.bootstrap.display()
        );
    }
    Ok(())
}
