//! `warren convert`: an OCI or Docker image in a registry becomes a Nydus image.
//!
//! Each source layer is streamed from the registry (resuming after breaks, checked against
//! its digest) through the tar builder, without touching disk but for the new blob; layers
//! build in parallel, each alone (as nydusify runs `nydus-image create` per layer). The
//! layer bootstraps are then stacked with OCI whiteout semantics into the image bootstrap,
//! and [`convert_push`](super::convert_push) pushes the data blobs (through a
//! [`BlobUpload`]: the target registry, or object storage), the bootstrap layer, the
//! config (diff_ids for the new layers) and the manifest, or an index for several
//! platforms.

use super::client::{short, Client};
use super::convert_push::{push_image, PushedImage};
use super::manifest::{image_entries, nydus_entries, select_platform, Document, PlatformSpec};
use super::{OciError, Reference};
use crate::backend::BlobUpload;
use crate::build::overlay::overlay;
use crate::build::{self, tar::TarSource, BuildOptions};
use crate::rafs::image::{Image, InodeKind};
use crate::rafs::{Compressor, Digester};
use oci_spec::image::{Descriptor, ImageManifest};
use serde::Serialize;
use sha2::Digest as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Which images of an index to convert.
#[derive(Clone, Debug)]
pub enum Platforms {
    One(PlatformSpec),
    All,
}

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub platforms: Platforms,
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    /// Layers built at the same time.
    pub jobs: usize,
    /// Where layer blobs are written before upload (a temporary directory inside it).
    pub work_dir: PathBuf,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            platforms: Platforms::One(PlatformSpec::host()),
            chunk_size: build::DEFAULT_CHUNK_SIZE,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            jobs: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 4),
            work_dir: std::env::temp_dir(),
        }
    }
}

/// What the conversion is doing, for progress bars.
#[derive(Clone, Debug)]
pub enum Progress<'a> {
    /// A layer starts downloading and building (`key` names it in later events).
    LayerStart {
        key: &'a str,
        size: u64,
    },
    LayerBytes {
        key: &'a str,
        bytes: u64,
    },
    LayerDone {
        key: &'a str,
    },
    Step {
        what: &'a str,
    },
}

/// The `--json` summary.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertReport {
    pub source: String,
    pub target: String,
    /// The digest pushed under the target tag (a manifest, or an index).
    pub digest: String,
    pub media_type: String,
    pub images: Vec<ImageReport>,
    pub seconds: f64,
    pub source_registry: super::transport::ClientStats,
    pub target_registry: super::transport::ClientStats,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    pub platform: Option<String>,
    pub source_manifest: String,
    pub manifest: String,
    pub config: String,
    pub bootstrap: LayerRef,
    pub layers: Vec<LayerReport>,
    /// The image's blobs, in the bootstrap's blob table order.
    pub blobs: Vec<LayerRef>,
    pub blob_destination: String,
    pub build_seconds: f64,
    pub push_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerRef {
    pub digest: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub source_digest: String,
    pub source_size: u64,
    /// The layer's new blob (none when it adds no file data).
    pub blob_id: Option<String>,
    pub blob_size: u64,
    pub entries: u64,
    pub dedup_chunks: u64,
    pub seconds: f64,
}

/// Converts `source` (read with `src`) into a Nydus image at `target` (pushed with `dst`,
/// data blobs through `blobs`).
pub fn convert(
    src: &Client,
    source: &Reference,
    dst: &Client,
    target: &Reference,
    blobs: &dyn BlobUpload,
    opts: &ConvertOptions,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<ConvertReport, OciError> {
    let started = Instant::now();
    if target.digest.is_some() {
        return Err(OciError::Unsupported(format!(
            "target {target}: push to a tag, not a digest"
        )));
    }
    let work = tempfile::Builder::new()
        .prefix("warren-convert-")
        .tempdir_in(&opts.work_dir)
        .map_err(|e| OciError::io(&opts.work_dir, e))?;
    let tag = target.tag.clone().unwrap_or_else(|| "latest".into());
    progress(Progress::Step {
        what: "resolving the source",
    });
    let top = src.get_manifest(&source.repository, source.manifest_ref())?;
    let ctx = Ctx {
        src,
        source,
        dst,
        target,
        blobs,
        opts,
        progress,
        work: work.path(),
    };
    let (digest, media_type, images) = match Document::parse(&top)? {
        Document::Manifest(m) => {
            let img = ctx.one(&m, &top.digest, None, Some(&tag))?;
            (
                img.pushed.digest.clone(),
                img.pushed.media_type.clone(),
                vec![img],
            )
        }
        Document::Index(index) => {
            let nydus = nydus_entries(&top.bytes);
            let plain = |d: &Descriptor| !nydus.contains(d.digest().as_ref());
            let picked: Vec<&Descriptor> = match &opts.platforms {
                Platforms::One(p) => vec![select_platform(&index, p, plain)?],
                // A merged index's Nydus entries are not converted again.
                Platforms::All => image_entries(&index)
                    .into_iter()
                    .filter(|d| plain(d))
                    .collect(),
            };
            if picked.is_empty() {
                return Err(OciError::Unsupported(format!(
                    "{source}: the index lists no images"
                )));
            }
            let mut images = Vec::new();
            for d in &picked {
                let f = src.get_manifest(&source.repository, d.digest().as_ref())?;
                let Document::Manifest(m) = Document::parse(&f)? else {
                    return Err(OciError::Unsupported(format!(
                        "{source}: nested indexes are not supported"
                    )));
                };
                let single = matches!(opts.platforms, Platforms::One(_));
                let img = ctx.one(
                    &m,
                    &f.digest,
                    d.platform().clone(),
                    single.then_some(tag.as_str()),
                )?;
                images.push(img);
            }
            if matches!(opts.platforms, Platforms::One(_)) {
                let img = &images[0];
                (
                    img.pushed.digest.clone(),
                    img.pushed.media_type.clone(),
                    images,
                )
            } else {
                let (digest, mt) = super::convert_push::push_index(dst, target, &tag, &images)?;
                (digest, mt, images)
            }
        }
    };
    Ok(ConvertReport {
        source: source.to_string(),
        target: target.to_string(),
        digest,
        media_type,
        images: images.into_iter().map(|i| i.report).collect(),
        seconds: started.elapsed().as_secs_f64(),
        source_registry: src.stats(),
        target_registry: dst.stats(),
    })
}

pub(crate) struct Converted {
    pub pushed: PushedImage,
    pub platform: Option<oci_spec::image::Platform>,
    pub report: ImageReport,
}

struct Ctx<'a> {
    src: &'a Client,
    source: &'a Reference,
    dst: &'a Client,
    target: &'a Reference,
    blobs: &'a dyn BlobUpload,
    opts: &'a ConvertOptions,
    progress: &'a (dyn Fn(Progress<'_>) + Sync),
    work: &'a Path,
}

/// One layer, built.
struct Built {
    image: Image,
    report: LayerReport,
}

impl Ctx<'_> {
    /// Converts and pushes one image manifest; tags it when `tag` is given.
    fn one(
        &self,
        m: &ImageManifest,
        digest: &str,
        platform: Option<oci_spec::image::Platform>,
        tag: Option<&str>,
    ) -> Result<Converted, OciError> {
        if super::manifest::is_nydus(m) {
            return Err(OciError::Unsupported(format!(
                "{} ({}) is a Nydus image already",
                self.source,
                short(digest)
            )));
        }
        let build_started = Instant::now();
        let config = self.src.get_blob(
            &self.source.repository,
            m.config().digest().as_ref(),
            16 << 20,
        )?;
        let mut config: serde_json::Value = serde_json::from_slice(&config).map_err(|e| {
            OciError::invalid(format!("config {}", m.config().digest()), e.to_string())
        })?;
        let blob_dir = self.work.join(short(digest));
        let layers = self.build_layers(m.layers(), &blob_dir)?;
        (self.progress)(Progress::Step {
            what: "merging layer bootstraps",
        });
        let image = stack(layers.iter().map(|b| b.image.clone()))?;
        let bootstrap = crate::rafs::writer::write_bootstrap(&image)?;
        let build_seconds = build_started.elapsed().as_secs_f64();
        let push_started = Instant::now();
        let pushed = push_image(
            self.dst,
            self.target,
            self.blobs,
            &image,
            &bootstrap,
            &blob_dir,
            &mut config,
            tag,
            self.progress,
        )?;
        let report = ImageReport {
            platform: platform.as_ref().map(|p| PlatformSpec::of(p).to_string()),
            source_manifest: digest.to_string(),
            manifest: pushed.digest.clone(),
            config: pushed.config.clone(),
            bootstrap: pushed.bootstrap.clone(),
            layers: layers.into_iter().map(|b| b.report).collect(),
            blobs: pushed.blobs.clone(),
            blob_destination: self.blobs.kind().to_string(),
            build_seconds,
            push_seconds: push_started.elapsed().as_secs_f64(),
        };
        Ok(Converted {
            pushed,
            platform,
            report,
        })
    }

    /// Builds every layer, `jobs` at a time; the first failure stops new builds.
    fn build_layers(&self, layers: &[Descriptor], blob_dir: &Path) -> Result<Vec<Built>, OciError> {
        for d in layers {
            check_layer_type(d)?;
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Mutex<Vec<Option<Result<Built, OciError>>>> =
            Mutex::new((0..layers.len()).map(|_| None).collect());
        let jobs = self.opts.jobs.clamp(1, layers.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= layers.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = self.build_layer(&layers[i], blob_dir);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                });
            }
        });
        let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(layers.len());
        // A layer left unstarted (`None`) means another one failed.
        for r in results.into_iter().flatten() {
            out.push(r?);
        }
        if out.len() != layers.len() {
            return Err(OciError::Unsupported("a layer build failed".into()));
        }
        Ok(out)
    }

    fn build_layer(&self, d: &Descriptor, blob_dir: &Path) -> Result<Built, OciError> {
        let started = Instant::now();
        let digest = d.digest().to_string();
        let key = short(&digest).to_string();
        (self.progress)(Progress::LayerStart {
            key: &key,
            size: d.size(),
        });
        let stream = self
            .src
            .blob_stream(&self.source.repository, &digest, d.size());
        let mut reader = Hashing {
            inner: stream,
            hasher: sha2::Sha256::new(),
            bytes: 0,
            on_bytes: &|n| {
                (self.progress)(Progress::LayerBytes {
                    key: &key,
                    bytes: n,
                })
            },
        };
        let opts = BuildOptions {
            chunk_size: self.opts.chunk_size,
            compressor: self.opts.compressor,
            digester: self.opts.digester,
            blob_dir: blob_dir.to_path_buf(),
            ..BuildOptions::default()
        };
        let name = format!("layer {digest}");
        let report = {
            let mut source = TarSource::new(&mut reader, name.clone());
            build::build(&mut source, &opts, &|_| {})
        };
        // The tar ends before the stream does (padding, compression trailers): read the
        // rest so the digest covers every byte.
        let drained = std::io::copy(&mut reader, &mut std::io::sink());
        let report = report.map_err(|source| OciError::Build {
            layer: digest.clone(),
            source,
        })?;
        drained.map_err(|e| OciError::io(&name, e))?;
        let got = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
        if got != digest || reader.bytes != d.size() {
            return Err(OciError::invalid(
                name,
                format!(
                    "the registry sent {} bytes with digest {got}, the manifest says {} bytes",
                    reader.bytes,
                    d.size()
                ),
            ));
        }
        let blob_size = match &report.blob {
            Some(id) => std::fs::metadata(blob_dir.join(id))
                .map_err(|e| OciError::io(blob_dir.join(id), e))?
                .len(),
            None => 0,
        };
        (self.progress)(Progress::LayerDone { key: &key });
        tracing::info!(layer = %digest, entries = report.entries, blob = ?report.blob, ms = started.elapsed().as_millis() as u64, "layer built");
        Ok(Built {
            image: report.image,
            report: LayerReport {
                source_digest: digest,
                source_size: d.size(),
                blob_id: report.blob,
                blob_size,
                entries: report.entries,
                dedup_chunks: report.dedup_chunks,
                seconds: started.elapsed().as_secs_f64(),
            },
        })
    }
}

/// Refuses layers that are not tars (foreign Windows layers, Nydus blobs, artifacts).
fn check_layer_type(d: &Descriptor) -> Result<(), OciError> {
    let mt = d.media_type().to_string();
    let ok = matches!(
        mt.as_str(),
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
    );
    if ok {
        Ok(())
    } else {
        Err(OciError::Unsupported(format!(
            "layer {} has media type {mt:?}: only tar layers (plain, gzip, zstd) convert",
            d.digest()
        )))
    }
}

/// The layers stacked bottom to top, as a container runtime applies them: the lowest
/// layer's whiteouts hide nothing, each layer above applies its own to what is below.
pub fn stack(layers: impl IntoIterator<Item = Image>) -> Result<Image, OciError> {
    let mut acc: Option<Image> = None;
    for layer in layers {
        let lower = match acc.take() {
            Some(a) => a,
            None => {
                let mut root = layer.inodes[0].clone();
                root.kind = InodeKind::Dir(Vec::new());
                Image {
                    blobs: Vec::new(),
                    inodes: vec![root],
                    prefetch: Vec::new(),
                    ..layer.clone()
                }
            }
        };
        acc = Some(overlay(lower, layer)?);
    }
    acc.ok_or_else(|| OciError::Unsupported("the image has no layers".into()))
}

/// A reader that hashes and counts what passes through it.
struct Hashing<'a, R> {
    inner: R,
    hasher: sha2::Sha256,
    bytes: u64,
    on_bytes: &'a dyn Fn(u64),
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if n > 0 {
            (self.on_bytes)(n as u64);
        }
        Ok(n)
    }
}
