//! Manifests, indexes and platforms (over `oci-spec`), with the media types and
//! annotations Nydus images use (as nydusify writes them, so nydus-snapshotter and nydusd
//! read ours, and we read theirs).

use super::client::Fetched;
use super::OciError;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, Platform};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A Nydus data blob layer.
pub const NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
pub const ANNOTATION_NYDUS_BLOB: &str = "containerd.io/snapshot/nydus-blob";
pub const ANNOTATION_NYDUS_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
pub const ANNOTATION_NYDUS_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
/// Where the bootstrap sits inside the bootstrap layer's tar.
pub const BOOTSTRAP_PATH: &str = "image/image.boot";

/// A manifest or an index.
#[derive(Clone, Debug)]
pub enum Document {
    Manifest(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

impl Document {
    /// Parses what a manifest GET returned, by its media type (or, when the registry gave
    /// none, by its shape).
    pub fn parse(f: &Fetched) -> Result<Document, OciError> {
        let bad = |e: &dyn std::fmt::Display| {
            OciError::invalid(format!("manifest {}", f.digest), e.to_string())
        };
        let is_index = match f.media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            other => {
                let v: serde_json::Value = serde_json::from_slice(&f.bytes).map_err(|e| bad(&e))?;
                if v.get("manifests").is_some() {
                    true
                } else if v.get("layers").is_some() {
                    false
                } else {
                    return Err(OciError::Unsupported(format!(
                        "manifest {} has media type {other:?}: not an OCI or Docker v2 image",
                        f.digest
                    )));
                }
            }
        };
        if is_index {
            ImageIndex::from_reader(&f.bytes[..])
                .map(|i| Document::Index(Box::new(i)))
                .map_err(|e| bad(&e))
        } else {
            ImageManifest::from_reader(&f.bytes[..])
                .map(|m| Document::Manifest(Box::new(m)))
                .map_err(|e| bad(&e))
        }
    }
}

/// An `os/arch[/variant]` platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    pub fn parse(s: &str) -> Result<PlatformSpec, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(PlatformSpec {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(PlatformSpec {
                    os: os.to_string(),
                    arch: arch.to_string(),
                    variant: Some(v.to_string()),
                })
            }
            _ => Err(format!("bad platform {s:?} (want os/arch[/variant])")),
        }
    }

    /// This machine's, in Go's names (`linux/amd64`, `linux/arm64`).
    pub fn host() -> PlatformSpec {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        PlatformSpec {
            os: std::env::consts::OS.to_string(),
            arch: arch.to_string(),
            variant: None,
        }
    }

    pub fn matches(&self, p: &Platform) -> bool {
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.arch
            && match (&self.variant, p.variant()) {
                (Some(want), Some(got)) => want == got,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }

    pub fn of(p: &Platform) -> PlatformSpec {
        PlatformSpec {
            os: p.os().to_string(),
            arch: p.architecture().to_string(),
            variant: p.variant().clone(),
        }
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What an index entry of a Nydus image carries (nydusify's merged indexes list the OCI
/// and the Nydus manifest of a platform side by side).
pub const NYDUS_OS_FEATURE: &str = "nydus.remoteimage.v1";
pub const NYDUS_ARTIFACT_TYPE: &str = "application/vnd.nydus.image.manifest.v1+json";

/// The digests of the index entries marked as Nydus images (platform `os.features` with
/// [`NYDUS_OS_FEATURE`], or [`NYDUS_ARTIFACT_TYPE`]). Read from the raw JSON: oci-spec
/// 0.10 names the field `os_features` and so drops `os.features`.
pub fn nydus_entries(raw_index: &[u8]) -> std::collections::HashSet<String> {
    let v: serde_json::Value = serde_json::from_slice(raw_index).unwrap_or_default();
    v.get("manifests")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter(|d| {
            let feature = d
                .pointer("/platform/os.features")
                .and_then(|f| f.as_array())
                .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(NYDUS_OS_FEATURE)));
            feature || d.get("artifactType").and_then(|a| a.as_str()) == Some(NYDUS_ARTIFACT_TYPE)
        })
        .filter_map(|d| d.get("digest")?.as_str().map(str::to_string))
        .collect()
}

/// The index entry for `want`; attestation and other non-image entries are skipped. When
/// the platform has several, the first that `prefer` likes wins.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    want: &PlatformSpec,
    prefer: impl Fn(&Descriptor) -> bool,
) -> Result<&'a Descriptor, OciError> {
    let images = image_entries(index);
    let matching: Vec<&Descriptor> = images
        .iter()
        .copied()
        .filter(|d| d.platform().as_ref().is_some_and(|p| want.matches(p)))
        .collect();
    matching
        .iter()
        .copied()
        .find(|d| prefer(d))
        .or_else(|| matching.first().copied())
        .ok_or_else(|| {
            let have: Vec<String> = images
                .iter()
                .filter_map(|d| {
                    d.platform()
                        .as_ref()
                        .map(|p| PlatformSpec::of(p).to_string())
                })
                .collect();
            OciError::Unsupported(format!(
                "the index has no image for {want} (it has: {})",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ))
        })
}

/// Entries of an index that are images (manifests with a platform that is not `unknown`).
pub fn image_entries(index: &ImageIndex) -> Vec<&Descriptor> {
    index
        .manifests()
        .iter()
        .filter(|d| {
            let mt = d.media_type().to_string();
            (mt == OCI_MANIFEST || mt == DOCKER_MANIFEST)
                && d.platform()
                    .as_ref()
                    .is_none_or(|p| p.os().to_string() != "unknown")
        })
        .collect()
}

fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations().as_ref()?.get(key).map(String::as_str)
}

/// The layer holding a Nydus image's bootstrap: the one annotated as such, else (older
/// converters) the last layer when the others are Nydus blobs.
pub fn bootstrap_layer(m: &ImageManifest) -> Option<&Descriptor> {
    if let Some(d) = m
        .layers()
        .iter()
        .find(|d| annotation(d, ANNOTATION_NYDUS_BOOTSTRAP) == Some("true"))
    {
        return Some(d);
    }
    let (last, rest) = m.layers().split_last()?;
    let all_blobs = !rest.is_empty() && rest.iter().all(is_nydus_blob);
    all_blobs.then_some(last)
}

pub fn is_nydus_blob(d: &Descriptor) -> bool {
    d.media_type().to_string() == NYDUS_BLOB || annotation(d, ANNOTATION_NYDUS_BLOB) == Some("true")
}

/// Whether `m` is a Nydus image (has a bootstrap layer).
pub fn is_nydus(m: &ImageManifest) -> bool {
    m.layers()
        .iter()
        .any(|d| annotation(d, ANNOTATION_NYDUS_BOOTSTRAP) == Some("true"))
        || m.layers().iter().any(is_nydus_blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        assert_eq!(
            PlatformSpec::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!(PlatformSpec::parse("linux").is_err());
        assert!(PlatformSpec::parse("linux//").is_err());
        let index: ImageIndex = serde_json::from_str(
            r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
               "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
               "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
               "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
               "platform": {"os": "linux", "architecture": "amd64"}},
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
               "digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
               "platform": {"os": "unknown", "architecture": "unknown"}}]}"#,
        )
        .unwrap();
        let amd = select_platform(&index, &PlatformSpec::parse("linux/amd64").unwrap(), |_| {
            true
        })
        .unwrap();
        assert!(amd.digest().to_string().ends_with("2222"));
        let arm = select_platform(&index, &PlatformSpec::parse("linux/arm64").unwrap(), |_| {
            true
        })
        .unwrap();
        assert!(arm.digest().to_string().ends_with("1111"));
        let e = select_platform(&index, &PlatformSpec::parse("linux/s390x").unwrap(), |_| {
            true
        })
        .unwrap_err();
        assert!(e.to_string().contains("linux/arm64/v8, linux/amd64"), "{e}");
        assert_eq!(image_entries(&index).len(), 2);
    }

    #[test]
    fn merged_indexes_pick_by_kind() {
        let raw = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "1".repeat(64)),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "2".repeat(64)),
             "platform": {"os": "linux", "architecture": "amd64", "os.features": [NYDUS_OS_FEATURE]}},
            {"mediaType": OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "3".repeat(64)),
             "artifactType": NYDUS_ARTIFACT_TYPE,
             "platform": {"os": "linux", "architecture": "arm64"}}]}))
        .unwrap();
        let index: ImageIndex = serde_json::from_slice(&raw).unwrap();
        let marked = nydus_entries(&raw);
        assert_eq!(marked.len(), 2, "{marked:?}");
        let amd = PlatformSpec::parse("linux/amd64").unwrap();
        let nydus =
            select_platform(&index, &amd, |d| marked.contains(d.digest().as_ref())).unwrap();
        assert!(nydus.digest().to_string().ends_with("2222"));
        let plain =
            select_platform(&index, &amd, |d| !marked.contains(d.digest().as_ref())).unwrap();
        assert!(plain.digest().to_string().ends_with("1111"));
    }
}
