//! Reading a Nydus image out of a registry for mounting: resolve the reference (through an
//! index to this platform's manifest), find the bootstrap layer, and take `image.boot`
//! out of its tar. Data blobs stay in the registry; the mount reads them by range.

use super::client::{short, Client};
use super::manifest::{
    bootstrap_layer, is_nydus, select_platform, Document, PlatformSpec, BOOTSTRAP_PATH,
};
use super::{OciError, Reference};
use oci_spec::image::ImageManifest;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest bootstrap layer fetched (they are metadata: a few MiB for a distribution).
const MAX_BOOTSTRAP_LAYER: u64 = 1 << 30;

/// The manifest a reference resolves to on `platform`, with its digest.
pub fn resolve(
    client: &Client,
    reference: &Reference,
    platform: &PlatformSpec,
) -> Result<(ImageManifest, String), OciError> {
    let f = client.get_manifest(&reference.repository, reference.manifest_ref())?;
    match Document::parse(&f)? {
        Document::Manifest(m) => Ok((*m, f.digest)),
        Document::Index(index) => {
            let nydus = super::manifest::nydus_entries(&f.bytes);
            let d = select_platform(&index, platform, |d| nydus.contains(d.digest().as_ref()))?;
            let digest = d.digest().to_string();
            let f = client.get_manifest(&reference.repository, &digest)?;
            match Document::parse(&f)? {
                Document::Manifest(m) => Ok((*m, f.digest)),
                Document::Index(_) => Err(OciError::Unsupported(format!(
                    "{reference}: the index entry for {platform} is another index"
                ))),
            }
        }
    }
}

/// A Nydus image's bootstrap, fetched and unpacked.
#[derive(Clone, Debug)]
pub struct PulledBootstrap {
    pub path: PathBuf,
    pub manifest_digest: String,
    pub layer_digest: String,
    /// The data blobs the manifest lists, by id (sha256 hex).
    pub blob_ids: Vec<String>,
}

/// Resolves `reference`, fetches its bootstrap layer and writes `image.boot` into `dir`
/// (named by the layer digest, written atomically).
pub fn pull_bootstrap(
    client: &Client,
    reference: &Reference,
    platform: &PlatformSpec,
    dir: &Path,
) -> Result<PulledBootstrap, OciError> {
    let (manifest, manifest_digest) = resolve(client, reference, platform)?;
    if !is_nydus(&manifest) {
        return Err(OciError::Unsupported(format!(
            "{reference} ({}) is not a Nydus image: no layer is annotated {} or has type {} (convert it first: warren convert)",
            short(&manifest_digest),
            super::manifest::ANNOTATION_NYDUS_BOOTSTRAP,
            super::manifest::NYDUS_BLOB
        )));
    }
    let layer = bootstrap_layer(&manifest).ok_or_else(|| {
        OciError::Unsupported(format!(
            "{reference}: the Nydus image has no bootstrap layer"
        ))
    })?;
    let layer_digest = layer.digest().to_string();
    let bytes = client.get_blob(&reference.repository, &layer_digest, MAX_BOOTSTRAP_LAYER)?;
    let boot = extract_bootstrap(&bytes)
        .map_err(|d| OciError::invalid(format!("bootstrap layer {layer_digest}"), d))?;
    std::fs::create_dir_all(dir).map_err(|e| OciError::io(dir, e))?;
    let path = dir.join(format!(
        "{}.boot",
        layer_digest.trim_start_matches("sha256:")
    ));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| OciError::io(dir, e))?;
    std::fs::write(tmp.path(), &boot).map_err(|e| OciError::io(tmp.path(), e))?;
    tmp.persist(&path)
        .map_err(|e| OciError::io(&path, e.error))?;
    let blob_ids = manifest
        .layers()
        .iter()
        .filter(|d| super::manifest::is_nydus_blob(d))
        .map(|d| d.digest().digest().to_string())
        .collect();
    Ok(PulledBootstrap {
        path,
        manifest_digest,
        layer_digest,
        blob_ids,
    })
}

/// `image/image.boot` out of a bootstrap layer (tar, gzip or zstd).
pub fn extract_bootstrap(layer: &[u8]) -> Result<Vec<u8>, String> {
    let stream: Box<dyn Read + '_> = match crate::build::tar::sniff(layer) {
        crate::build::tar::TarCompression::Gzip => Box::new(flate2::read::GzDecoder::new(layer)),
        crate::build::tar::TarCompression::Zstd => {
            Box::new(zstd::Decoder::new(layer).map_err(|e| e.to_string())?)
        }
        crate::build::tar::TarCompression::None => Box::new(layer),
    };
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("bad tar: {e}"))?;
        let path = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&path);
        let path = path.trim_start_matches("./").trim_start_matches('/');
        if path == BOOTSTRAP_PATH && entry.header().entry_type().is_file() {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).map_err(|e| e.to_string())?;
            return Ok(out);
        }
    }
    Err(format!("no {BOOTSTRAP_PATH} in the layer"))
}
