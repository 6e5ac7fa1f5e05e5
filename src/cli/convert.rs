use super::registry::{hint, RegistryArgs};
use crate::backend::registry::RegistryBackend;
use crate::backend::BlobUpload;
use crate::oci::convert::{convert, ConvertOptions, ConvertReport, Platforms, Progress};
use crate::oci::manifest::PlatformSpec;
use crate::oci::{Client, Reference};
use crate::rafs::{Compressor, Digester};
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where converted data blobs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BlobDestination {
    /// The target registry, as layers of the new manifest.
    Registry,
    /// An S3 bucket (`--s3-config`); the manifest then lists only the bootstrap layer.
    S3,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The image to convert (REGISTRY/REPO[:TAG|@DIGEST]), OCI or Docker, manifest or index.
    #[arg(long)]
    pub source: String,
    /// Where to push the Nydus image (REGISTRY/REPO[:TAG]).
    #[arg(long)]
    pub target: String,
    /// The platform to convert from an index (os/arch[/variant]; default: this machine's).
    #[arg(long, conflicts_with = "all_platforms")]
    pub platform: Option<String>,
    /// Convert every image of an index and push an index of the results.
    #[arg(long)]
    pub all_platforms: bool,
    /// Chunk size: a power of two from 0x1000 to 0x1000000 (hex or decimal).
    #[arg(long, alias = "fs-chunk-size", default_value = "0x100000", value_parser = super::create::parse_size)]
    pub chunk_size: u32,
    #[arg(long, value_enum, default_value = "zstd")]
    pub compressor: Compressor,
    #[arg(long, value_enum, default_value = "blake3")]
    pub digester: Digester,
    /// Layers built at the same time (default: the CPU count, at most 4).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Directory for the new blobs before they are pushed (default: the temp directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Where data blobs go; the bootstrap and manifest always go to the target registry.
    #[arg(long, value_enum, default_value = "registry")]
    pub backend: BlobDestination,
    /// With `--backend s3`: the bucket's settings (JSON or TOML, S3 fields or a whole nydusd
    /// config with an s3 backend); credentials may also come from the AWS environment.
    #[arg(long, required_if_eq("backend", "s3"))]
    pub s3_config: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// The destination of data blobs for `--backend`.
fn blob_upload(
    args: &ConvertArgs,
    dst: &Arc<Client>,
    target: &Reference,
) -> anyhow::Result<Box<dyn BlobUpload>> {
    match args.backend {
        BlobDestination::Registry => Ok(Box::new(RegistryBackend::new(
            dst.clone(),
            target.repository.clone(),
        ))),
        BlobDestination::S3 => {
            let path = args
                .s3_config
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--backend s3 needs --s3-config"))?;
            let cfg = crate::backend::s3::S3Config::from_file(path)?;
            Ok(Box::new(crate::backend::s3::S3Backend::new(&cfg)?))
        }
    }
}

pub fn run(args: ConvertArgs, quiet: bool) -> anyhow::Result<()> {
    let source: Reference = args.source.parse()?;
    let target: Reference = args.target.parse()?;
    let src_opts = args.registry.options_for(&source)?;
    let dst_opts = args.registry.options_for(&target)?;
    let src = Client::for_reference(&source, src_opts.clone())?;
    let dst = Arc::new(Client::for_reference(&target, dst_opts.clone())?);
    let uploader = blob_upload(&args, &dst, &target)?;
    let mut opts = ConvertOptions {
        chunk_size: args.chunk_size,
        compressor: args.compressor,
        digester: args.digester,
        ..ConvertOptions::default()
    };
    if args.all_platforms {
        opts.platforms = Platforms::All;
    } else if let Some(p) = &args.platform {
        opts.platforms = Platforms::One(PlatformSpec::parse(p).map_err(anyhow::Error::msg)?);
    }
    if let Some(j) = args.jobs {
        anyhow::ensure!(j >= 1, "--jobs must be at least 1");
        opts.jobs = j;
    }
    if let Some(w) = &args.work_dir {
        std::fs::create_dir_all(w).with_context(|| format!("creating {}", w.display()))?;
        opts.work_dir = w.clone();
    }
    let bars = Bars::new(quiet);
    let on_progress = |p: Progress<'_>| bars.on(p);
    let report = convert(&src, &source, &dst, &target, uploader.as_ref(), &opts, &on_progress)
        .map_err(|e| {
            let (r, o) = if matches!(&e, crate::oci::OciError::Transport { op, .. } if op.contains(source.api_host())) {
                (&source, &src_opts)
            } else {
                (&target, &dst_opts)
            };
            hint(e, r, o)
        })
        .with_context(|| format!("converting {source} to {target}"))?;
    bars.clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !quiet {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(r: &ConvertReport) {
    for img in &r.images {
        let blob_bytes: u64 = img.blobs.iter().map(|b| b.size).sum();
        let src_bytes: u64 = img.layers.iter().map(|l| l.source_size).sum();
        println!(
            "{}{} layers ({} bytes) -> {} blobs ({} bytes, to {}) + bootstrap {} bytes; manifest {} (build {:.1} s, push {:.1} s)",
            img.platform
                .as_deref()
                .map(|p| format!("{p}: "))
                .unwrap_or_default(),
            img.layers.len(),
            src_bytes,
            img.blobs.len(),
            blob_bytes,
            img.blob_destination,
            img.bootstrap.size,
            img.manifest,
            img.build_seconds,
            img.push_seconds
        );
    }
    println!(
        "converted {} -> {} ({}) in {:.1} s",
        r.source, r.target, r.digest, r.seconds
    );
}

/// One progress bar per layer while it downloads and builds.
struct Bars {
    quiet: bool,
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        Bars {
            quiet,
            multi: indicatif::MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn on(&self, p: Progress<'_>) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match p {
            Progress::LayerStart { key, size } => {
                let bar =
                    self.multi
                        .add(super::progress(self.quiet, size, &format!("layer {key}")));
                bars.insert(key.to_string(), bar);
            }
            Progress::LayerBytes { key, bytes } => {
                if let Some(b) = bars.get(key) {
                    b.inc(bytes);
                }
            }
            Progress::LayerDone { key } => {
                if let Some(b) = bars.get(key) {
                    b.finish();
                }
            }
            Progress::Step { what } => {
                if !self.quiet {
                    let _ = self.multi.println(what);
                }
            }
        }
    }

    fn clear(&self) {
        let _ = self.multi.clear();
    }
}
