use crate::build::overlay::overlay;
use crate::rafs::reader::read_bootstrap_file;
use crate::rafs::writer::write_bootstrap;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Per-layer bootstraps, lowest layer first.
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
    /// Where to write the merged bootstrap.
    #[arg(long, short = 'B')]
    pub bootstrap: PathBuf,
    /// An image the layers go on top of.
    #[arg(long)]
    pub parent_bootstrap: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: MergeArgs, quiet: bool) -> anyhow::Result<()> {
    let read = |p: &PathBuf| {
        read_bootstrap_file(p)
            .with_context(|| format!("reading {}", p.display()))
            .map(|b| b.image)
    };
    let mut layers = args.sources.iter().map(read);
    let mut image = match &args.parent_bootstrap {
        Some(p) => read(p)?,
        None => match layers.next() {
            Some(first) => strip_top_whiteouts(first?),
            None => bail!("no bootstraps to merge"),
        },
    };
    for (layer, path) in layers.zip(
        args.sources
            .iter()
            .skip(usize::from(args.parent_bootstrap.is_none())),
    ) {
        image = overlay(image, layer?).with_context(|| format!("applying {}", path.display()))?;
    }
    let bytes = write_bootstrap(&image).context("writing the merged bootstrap")?;
    super::create::write_atomic(&args.bootstrap, &bytes)?;
    let blobs: Vec<&str> = image.blobs.iter().map(|b| b.blob_id.as_str()).collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "bootstrap": args.bootstrap, "blobs": blobs, "inodes": image.inodes.len() })
        );
    } else if !quiet {
        println!(
            "bootstrap: {} ({} bytes, {} inodes, {} blobs)",
            args.bootstrap.display(),
            bytes.len(),
            image.inodes.len(),
            blobs.len()
        );
    }
    Ok(())
}

/// The lowest layer has nothing below it: its whiteouts hide nothing and go away.
fn strip_top_whiteouts(image: crate::rafs::Image) -> crate::rafs::Image {
    let empty = crate::rafs::Image {
        blobs: Vec::new(),
        prefetch: Vec::new(),
        inodes: vec![image.inodes[0].clone()],
        ..image.clone()
    };
    let mut empty = empty;
    empty.inodes[0].kind = crate::rafs::InodeKind::Dir(Vec::new());
    overlay(empty, image).unwrap_or_else(|_| unreachable!("same chunk size and digester"))
}
