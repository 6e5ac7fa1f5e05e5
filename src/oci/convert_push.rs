//! The push half of `warren convert`: data blobs, the bootstrap layer (a tar.gz holding
//! `image/image.boot`), the config with its new diff_ids, and the manifest with Nydus's
//! media types and annotations; for several platforms, an index over the manifests.

use super::client::Client;
use super::convert::{Converted, LayerRef, Progress};
use super::manifest::*;
use super::{sha256_digest, OciError, Reference};
use crate::backend::BlobUpload;
use crate::rafs::image::Image;
use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType,
};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

pub(crate) struct PushedImage {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub config: String,
    pub bootstrap: LayerRef,
    pub blobs: Vec<LayerRef>,
}

/// Blobs uploaded at the same time.
const UPLOAD_JOBS: usize = 4;

#[allow(clippy::too_many_arguments)]
pub(crate) fn push_image(
    dst: &Client,
    target: &Reference,
    uploader: &dyn BlobUpload,
    image: &Image,
    bootstrap: &[u8],
    blob_dir: &Path,
    config: &mut serde_json::Value,
    tag: Option<&str>,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<PushedImage, OciError> {
    let repo = &target.repository;
    // The bootstrap's blob table, without repeats: the data layers, in that order.
    let mut ids: Vec<&str> = Vec::new();
    for b in &image.blobs {
        if !ids.contains(&b.blob_id.as_str()) {
            ids.push(&b.blob_id);
        }
    }
    let mut blobs = Vec::with_capacity(ids.len());
    for id in &ids {
        let path = blob_dir.join(id);
        let size = std::fs::metadata(&path)
            .map_err(|e| OciError::io(&path, e))?
            .len();
        blobs.push(LayerRef {
            digest: format!("sha256:{id}"),
            size,
        });
    }
    progress(Progress::Step {
        what: "uploading blobs",
    });
    upload_blobs(uploader, &ids, blob_dir)?;

    progress(Progress::Step {
        what: "pushing the bootstrap, config and manifest",
    });
    let (layer, diff_id) =
        bootstrap_layer_tar(bootstrap).map_err(|e| OciError::io("bootstrap layer", e))?;
    let boot = LayerRef {
        digest: sha256_digest(&layer),
        size: layer.len() as u64,
    };
    dst.upload_bytes(repo, &boot.digest, &layer)?;

    // Blobs kept elsewhere (object storage) are not layers of the manifest: the
    // bootstrap names them, and a registry client must not look for them here.
    let in_registry = uploader.kind() == "registry";
    let mut diff_ids: Vec<String> = Vec::new();
    let mut layers: Vec<Descriptor> = Vec::new();
    if in_registry {
        for b in &blobs {
            diff_ids.push(b.digest.clone());
            layers.push(descriptor(
                NYDUS_BLOB,
                &b.digest,
                b.size,
                &[(ANNOTATION_NYDUS_BLOB, "true")],
            )?);
        }
    }
    diff_ids.push(diff_id);
    layers.push(descriptor(
        OCI_LAYER_TAR_GZIP,
        &boot.digest,
        boot.size,
        &[
            (ANNOTATION_NYDUS_BOOTSTRAP, "true"),
            (ANNOTATION_NYDUS_FS_VERSION, "6"),
        ],
    )?);

    set_diff_ids(config, diff_ids)?;
    let config_bytes =
        serde_json::to_vec(config).map_err(|e| OciError::invalid("config", e.to_string()))?;
    let config_digest = sha256_digest(&config_bytes);
    dst.upload_bytes(repo, &config_digest, &config_bytes)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            OCI_CONFIG,
            &config_digest,
            config_bytes.len() as u64,
            &[],
        )?)
        .layers(layers)
        .build()
        .map_err(|e| OciError::invalid("manifest", e.to_string()))?;
    let bytes = canonical_json(&manifest).map_err(|e| OciError::invalid("manifest", e))?;
    let digest = sha256_digest(&bytes);
    dst.put_manifest(repo, tag.unwrap_or(&digest), OCI_MANIFEST, &bytes)?;
    Ok(PushedImage {
        digest,
        media_type: OCI_MANIFEST.into(),
        size: bytes.len() as u64,
        config: config_digest,
        bootstrap: boot,
        blobs,
    })
}

/// Uploads the blob files, a few at a time; the first failure is returned.
fn upload_blobs(uploader: &dyn BlobUpload, ids: &[&str], dir: &Path) -> Result<(), OciError> {
    let queue = Mutex::new(ids.iter());
    let first_err: Mutex<Option<OciError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..UPLOAD_JOBS.min(ids.len()) {
            s.spawn(|| loop {
                let Some(id) = queue.lock().unwrap_or_else(|p| p.into_inner()).next() else {
                    break;
                };
                if first_err
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
                {
                    break;
                }
                let path = dir.join(id);
                if let Err(e) = uploader.upload(id, &path) {
                    let e = OciError::Unsupported(format!(
                        "uploading blob {id} to {}: {e}",
                        uploader.kind()
                    ));
                    first_err
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn descriptor(
    media_type: &str,
    digest: &str,
    size: u64,
    annotations: &[(&str, &str)],
) -> Result<Descriptor, OciError> {
    let digest: oci_spec::image::Digest = digest
        .parse()
        .map_err(|e: oci_spec::OciSpecError| OciError::invalid(digest, e.to_string()))?;
    let mut b = DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest)
        .size(size);
    if !annotations.is_empty() {
        b = b.annotations(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        );
    }
    b.build()
        .map_err(|e| OciError::invalid("descriptor", e.to_string()))
}

/// JSON with every object's keys in order: oci-spec keeps annotations in a `HashMap`,
/// whose order changes from run to run, and the same image must give the same digest.
fn canonical_json(v: &impl serde::Serialize) -> Result<Vec<u8>, String> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    let v = serde_json::to_value(v).map_err(|e| e.to_string())?;
    serde_json::to_vec(&sorted(v)).map_err(|e| e.to_string())
}

/// Replaces `rootfs.diff_ids` (the uncompressed digests of the layers, in order).
fn set_diff_ids(config: &mut serde_json::Value, ids: Vec<String>) -> Result<(), OciError> {
    let obj = config
        .as_object_mut()
        .ok_or_else(|| OciError::invalid("config", "not a JSON object"))?;
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers"}));
    let rootfs = rootfs
        .as_object_mut()
        .ok_or_else(|| OciError::invalid("config", "rootfs is not an object"))?;
    rootfs.insert("type".into(), "layers".into());
    rootfs.insert("diff_ids".into(), serde_json::json!(ids));
    Ok(())
}

/// The bootstrap layer: a gzipped tar holding `image/` and `image/image.boot`, the same
/// bytes for the same bootstrap (no clock time). Returns the layer and its diff_id.
pub fn bootstrap_layer_tar(bootstrap: &[u8]) -> std::io::Result<(Vec<u8>, String)> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_uid(0);
    dir.set_gid(0);
    tar.append_data(&mut dir, "image/", std::io::empty())?;
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o644);
    file.set_size(bootstrap.len() as u64);
    file.set_mtime(0);
    file.set_uid(0);
    file.set_gid(0);
    tar.append_data(&mut file, BOOTSTRAP_PATH, bootstrap)?;
    let raw = tar.into_inner()?;
    let diff_id = sha256_digest(&raw);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)?;
    Ok((gz.finish()?, diff_id))
}

/// Pushes an index over the converted images under `tag`.
pub(crate) fn push_index(
    dst: &Client,
    target: &Reference,
    tag: &str,
    images: &[Converted],
) -> Result<(String, String), OciError> {
    let mut manifests = Vec::new();
    for img in images {
        let mut d = descriptor(OCI_MANIFEST, &img.pushed.digest, img.pushed.size, &[])?;
        d.set_platform(img.platform.clone());
        manifests.push(d);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| OciError::invalid("index", e.to_string()))?;
    let bytes = canonical_json(&index).map_err(|e| OciError::invalid("index", e))?;
    let digest = dst.put_manifest(&target.repository, tag, OCI_INDEX, &bytes)?;
    Ok((digest, OCI_INDEX.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_layer_is_reproducible_and_readable() {
        let boot = vec![7u8; 5000];
        let (a, da) = bootstrap_layer_tar(&boot).unwrap();
        let (b, db) = bootstrap_layer_tar(&boot).unwrap();
        assert_eq!((a.clone(), da), (b, db));
        assert_eq!(super::super::pull::extract_bootstrap(&a).unwrap(), boot);
    }

    #[test]
    fn diff_ids_are_replaced() {
        let mut c = serde_json::json!({"architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": ["sha256:x"]}});
        set_diff_ids(&mut c, vec!["sha256:a".into(), "sha256:b".into()]).unwrap();
        assert_eq!(
            c["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:a", "sha256:b"])
        );
        assert_eq!(c["architecture"], "amd64");
    }
}
