use crate::build::source::Source;
use crate::build::{self, dir::DirSource, tar::TarSource, BuildOptions};
use crate::rafs::reader::read_bootstrap_file;
use crate::rafs::{Compressor, Digester};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceType {
    #[value(name = "dir-rafs", alias = "directory")]
    Dir,
    #[value(name = "tar-rafs")]
    Tar,
    #[value(name = "targz-rafs")]
    TarGz,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrefetchPolicy {
    None,
    /// Files listed on stdin, one path per line.
    Fs,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Directory, tar or tar.gz (zstd-compressed tars too) to build from.
    pub source: PathBuf,
    /// Source type; detected from the source when not given.
    #[arg(long = "type", short = 't', value_enum)]
    pub source_type: Option<SourceType>,
    /// Where to write the bootstrap (metadata).
    #[arg(long, short = 'B')]
    pub bootstrap: PathBuf,
    /// Directory for the data blob, named by the sha256 of its bytes.
    #[arg(long, short = 'D')]
    pub blob_dir: PathBuf,
    /// Chunk size: a power of two from 0x1000 to 0x1000000 (hex or decimal).
    #[arg(long, default_value = "0x100000", value_parser = parse_size)]
    pub chunk_size: u32,
    #[arg(long, value_enum, default_value = "zstd")]
    pub compressor: Compressor,
    #[arg(long, value_enum, default_value = "blake3")]
    pub digester: Digester,
    /// RAFS version; only 6 is written.
    #[arg(long, short = 'v', default_value = "6")]
    pub fs_version: u32,
    /// Extra blob features: `blob-toc` appends tar headers and a TOC.
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Build this layer on top of an image: dedup against it and apply whiteouts.
    #[arg(long)]
    pub parent_bootstrap: Option<PathBuf>,
    /// `fs`: read the files to prefetch from stdin, one per line.
    #[arg(long, value_enum, default_value = "none")]
    pub prefetch_policy: PrefetchPolicy,
    /// Whiteout convention of the source; only OCI (`.wh.` files) is applied.
    #[arg(long, default_value = "oci", value_parser = ["oci", "none"])]
    pub whiteout_spec: String,
    /// Write a build report (nydus-image's format) to this file.
    #[arg(long, short = 'J')]
    pub output_json: Option<PathBuf>,
    /// Print the build report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_size(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    }
    .map_err(|e| format!("{s:?}: {e}"))?;
    if !crate::rafs::layout::valid_chunk_size(v) {
        return Err(format!(
            "{s}: chunk size must be a power of two from 0x1000 to 0x1000000"
        ));
    }
    Ok(v as u32)
}

pub fn run(args: CreateArgs, quiet: bool) -> anyhow::Result<()> {
    if args.fs_version != 6 {
        bail!(
            "--fs-version {}: only RAFS v6 images are written",
            args.fs_version
        );
    }
    let mut blob_toc = false;
    for f in &args.features {
        match f.as_str() {
            "blob-toc" => blob_toc = true,
            other => bail!("unknown feature {other:?} (supported: blob-toc)"),
        }
    }
    let parent = match &args.parent_bootstrap {
        Some(p) => Some(
            read_bootstrap_file(p)
                .with_context(|| format!("reading parent bootstrap {}", p.display()))?
                .image,
        ),
        None => None,
    };
    let prefetch = match args.prefetch_policy {
        PrefetchPolicy::None => Vec::new(),
        PrefetchPolicy::Fs => std::io::stdin()
            .lock()
            .lines()
            .map(|l| {
                l.map(|l| crate::build::source::clean_path(l.trim().as_bytes()).unwrap_or_default())
            })
            .filter(|l| l.as_ref().map_or(true, |p| !p.is_empty()))
            .collect::<Result<_, _>>()
            .context("reading the prefetch list from stdin")?,
    };
    let opts = BuildOptions {
        chunk_size: args.chunk_size,
        compressor: args.compressor,
        digester: args.digester,
        blob_dir: args.blob_dir.clone(),
        blob_toc,
        parent,
        prefetch,
    };
    let kind = match args.source_type {
        Some(t) => t,
        None if args.source.is_dir() => SourceType::Dir,
        None => SourceType::Tar, // the tar reader detects gzip and zstd itself
    };
    let bar = super::progress(quiet, 0, "create");
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg}: {bytes} read, {bytes_per_sec}, {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let mut source: Box<dyn Source> = match kind {
        SourceType::Dir => {
            if !args.source.is_dir() {
                bail!("{} is not a directory", args.source.display());
            }
            Box::new(DirSource::new(&args.source))
        }
        SourceType::Tar | SourceType::TarGz => {
            let f = std::fs::File::open(&args.source)
                .with_context(|| format!("opening {}", args.source.display()))?;
            Box::new(TarSource::new(f, args.source.display().to_string()))
        }
    };
    let report = build::build(source.as_mut(), &opts, &|n| bar.inc(n))
        .with_context(|| format!("building from {}", args.source.display()))?;
    bar.finish_and_clear();
    write_atomic(&args.bootstrap, &report.bootstrap)?;

    let json = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "bootstrap": args.bootstrap,
        "blobs": report.image.blobs.iter().map(|b| b.blob_id.clone()).collect::<Vec<_>>(),
        "trace": {
            "registered_events": {
                "blob_uncompressed_size": report.blob_uncompressed_size,
                "dedup_chunks": report.dedup_chunks,
                "dedup_uncompressed_size": report.dedup_uncompressed_size,
                "entries": report.entries,
            }
        },
        "fs_version": "6",
        "compressor": opts.compressor.name(),
    });
    if let Some(path) = &args.output_json {
        write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if !quiet {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "bootstrap: {} ({} bytes)",
            args.bootstrap.display(),
            report.bootstrap.len()
        )?;
        match &report.blob {
            Some(id) => writeln!(out, "blob: {}", args.blob_dir.join(id).display())?,
            None => writeln!(out, "blob: none (no new chunk data)")?,
        }
        writeln!(
            out,
            "entries: {}, dedup chunks: {} ({} bytes)",
            report.entries, report.dedup_chunks, report.dedup_uncompressed_size
        )?;
    }
    Ok(())
}

/// Writes via a temporary file and rename, so a failed run never leaves half a file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".warren-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
